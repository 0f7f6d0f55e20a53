/*
 * See frame.h. JSON parsing and printing use json-c; the line handling and
 * the JSON-RPC 2.0 validation are ours.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <sodium.h>

#include "frame.h"
#include "proto.h"
#include "util.h"

/* Nesting allowed in one message: MCP tool arguments can be deep-ish. */
#define FRAME_MAX_DEPTH 128

static void set_detail(char *detail, size_t len, const char *fmt, const char *arg)
{
	if (detail && len)
		snprintf(detail, len, fmt, arg ? arg : "");
}

void rpc_msg_clear(struct rpc_msg *m)
{
	if (m->root)
		json_object_put(m->root);
	memset(m, 0, sizeof(*m));
}

size_t frame_utf8_seq(const unsigned char *p, size_t avail)
{
	unsigned char c = p[0];
	size_t n;
	uint32_t cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		n = 1;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 2;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 3;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (avail <= n)
		return 0;
	for (size_t k = 1; k <= n; k++) {
		if ((p[k] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[k] & 0x3f);
	}
	if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n + 1;
}

static int utf8_valid(const unsigned char *s, size_t len)
{
	for (size_t i = 0, n; i < len; i += n)
		if (!(n = frame_utf8_seq(s + i, len - i)))
			return 0;
	return 1;
}

static int id_valid(struct json_object *id)
{
	switch (json_object_get_type(id)) {
	case json_type_null:
	case json_type_string:
	case json_type_int:
		return 1;
	default:
		return 0;
	}
}

int rpc_classify(struct json_object *obj, struct rpc_msg *m, char *detail, size_t detail_len)
{
	struct json_object *v, *method = NULL, *id = NULL, *params = NULL, *result = NULL,
				 *error = NULL;
	int has_id;

	if (!json_object_is_type(obj, json_type_object)) {
		set_detail(detail, detail_len, "message is not a JSON object%s", NULL);
		return FRAME_E_NOT_OBJECT;
	}
	has_id = json_object_object_get_ex(obj, "id", &id);
	if (has_id && id_valid(id))
		m->id = id;

	if (!json_object_object_get_ex(obj, "jsonrpc", &v) || !json_object_is_type(v, json_type_string) ||
	    strcmp(json_object_get_string(v), "2.0") != 0) {
		set_detail(detail, detail_len, "\"jsonrpc\" must be \"2.0\"%s", NULL);
		return FRAME_E_INVALID_RPC;
	}
	if (has_id && !id_valid(id)) {
		set_detail(detail, detail_len, "\"id\" must be a string, an integer or null%s", NULL);
		return FRAME_E_INVALID_RPC;
	}
	json_object_object_get_ex(obj, "method", &method);
	json_object_object_get_ex(obj, "params", &params);
	json_object_object_get_ex(obj, "result", &result);
	json_object_object_get_ex(obj, "error", &error);

	if (method) {
		if (!json_object_is_type(method, json_type_string) || json_object_get_string_len(method) == 0) {
			set_detail(detail, detail_len, "\"method\" must be a non-empty string%s", NULL);
			return FRAME_E_INVALID_RPC;
		}
		if (params && !json_object_is_type(params, json_type_object) &&
		    !json_object_is_type(params, json_type_array)) {
			set_detail(detail, detail_len, "\"params\" must be an object or an array%s", NULL);
			return FRAME_E_INVALID_RPC;
		}
		if (result || error) {
			set_detail(detail, detail_len, "a request carries neither \"result\" nor \"error\"%s", NULL);
			return FRAME_E_INVALID_RPC;
		}
		m->type = has_id ? RPC_REQUEST : RPC_NOTIFICATION;
		m->method = json_object_get_string(method);
		m->params = params;
		return 0;
	}

	if (!has_id || (!result == !error)) {
		set_detail(detail, detail_len,
			   "a message needs \"method\", or \"id\" with exactly one of \"result\" and \"error\"%s",
			   NULL);
		return FRAME_E_INVALID_RPC;
	}
	if (error) {
		struct json_object *code, *msg;

		if (!json_object_is_type(error, json_type_object) ||
		    !json_object_object_get_ex(error, "code", &code) || !json_object_is_type(code, json_type_int) ||
		    !json_object_object_get_ex(error, "message", &msg) ||
		    !json_object_is_type(msg, json_type_string)) {
			set_detail(detail, detail_len,
				   "\"error\" must be an object with an integer \"code\" and a string \"message\"%s",
				   NULL);
			return FRAME_E_INVALID_RPC;
		}
		m->type = RPC_ERROR;
		m->error = error;
	} else {
		m->type = RPC_RESULT;
		m->result = result;
	}
	return 0;
}

int frame_parse_line(const char *line, size_t len, struct rpc_msg *m, char *detail, size_t detail_len)
{
	struct json_tokener *tok;
	struct json_object *obj;
	enum json_tokener_error jerr;
	int r;

	memset(m, 0, sizeof(*m));
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (!utf8_valid((const unsigned char *)line, len)) {
		set_detail(detail, detail_len, "message is not valid UTF-8%s", NULL);
		return FRAME_E_UTF8;
	}
	if (memchr(line, '\0', len)) {
		set_detail(detail, detail_len, "message contains a NUL byte%s", NULL);
		return FRAME_E_JSON;
	}

	tok = json_tokener_new_ex(FRAME_MAX_DEPTH);
	if (!tok)
		return -ENOMEM;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	obj = json_tokener_parse_ex(tok, line, (int)len);
	jerr = json_tokener_get_error(tok);
	if (obj && jerr == json_tokener_success && json_tokener_get_parse_end(tok) != len) {
		/* Two values on one line, or trailing garbage. */
		json_object_put(obj);
		obj = NULL;
		jerr = json_tokener_error_parse_unexpected;
	} else if (!obj && jerr == json_tokener_continue) {
		/* json-c waits for more: a bare number might go on, anything else is
		 * truncated. The line's end settles which. */
		obj = json_tokener_parse_ex(tok, "\n", 1);
		jerr = json_tokener_get_error(tok);
		if (!obj && jerr == json_tokener_continue)
			jerr = json_tokener_error_parse_eof;
	}
	json_tokener_free(tok);
	if (!obj) {
		if (jerr == json_tokener_success) {
			/* The literal null: valid JSON, not an object. */
			set_detail(detail, detail_len, "message is not a JSON object%s", NULL);
			return FRAME_E_NOT_OBJECT;
		}
		set_detail(detail, detail_len, "invalid JSON: %s", json_tokener_error_desc(jerr));
		return FRAME_E_JSON;
	}

	r = rpc_classify(obj, m, detail, detail_len);
	m->root = obj;
	if (r == FRAME_E_NOT_OBJECT)
		rpc_msg_clear(m);
	return r;
}

int frame_next_line(struct evbuffer *in, size_t limit, struct frame_line *l, char *detail, size_t detail_len)
{
	for (;;) {
		size_t avail = evbuffer_get_length(in);
		size_t scan = avail < limit + 1 ? avail : limit + 1;
		struct evbuffer_ptr end, nl;
		unsigned char *line;
		size_t len;

		if (avail == 0)
			return FRAME_NEED_MORE;
		/* Look for the newline only where a message of at most limit bytes could end. */
		if (evbuffer_ptr_set(in, &end, scan, EVBUFFER_PTR_SET) < 0)
			return -EINVAL;
		nl = evbuffer_search_range(in, "\n", 1, NULL, &end);
		if (nl.pos < 0) {
			if (avail > limit) {
				set_detail(detail, detail_len, "message longer than the limit%s", NULL);
				return FRAME_E_TOO_LARGE;
			}
			return FRAME_NEED_MORE;
		}
		len = (size_t)nl.pos;
		if (len > limit) {
			set_detail(detail, detail_len, "message longer than the limit%s", NULL);
			return FRAME_E_TOO_LARGE;
		}
		line = evbuffer_pullup(in, (ev_ssize_t)len + 1);
		if (!line)
			return -ENOMEM;
		if (len == 0 || (len == 1 && line[0] == '\r')) {
			evbuffer_drain(in, len + 1);
			continue;
		}
		l->text = (char *)line;
		l->len = len;
		l->consumed = len + 1;
		return 0;
	}
}

int frame_read(struct evbuffer *in, size_t limit, struct rpc_msg *m, char *detail, size_t detail_len)
{
	struct frame_line l;
	int r;

	memset(m, 0, sizeof(*m));
	r = frame_next_line(in, limit, &l, detail, detail_len);
	if (r)
		return r;
	r = frame_parse_line(l.text, l.len, m, detail, detail_len);
	sodium_memzero(l.text, l.consumed);
	evbuffer_drain(in, l.consumed);
	return r;
}

static void wipe_cleanup(const void *data, size_t len, void *arg)
{
	sodium_memzero((void *)data, len);
	free((void *)data);
}

/* Serialises msg into a malloc'ed line ending in '\n'. */
static int serialize_line(struct json_object *msg, size_t limit, char **out, size_t *out_len)
{
	size_t len;
	const char *s;
	char *copy;

	s = json_object_to_json_string_length(msg, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
					      &len);
	if (!s)
		return -ENOMEM;
	if (len > limit) {
		sodium_memzero((char *)s, len);
		return FRAME_E_TOO_LARGE;
	}
	copy = malloc(len + 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, s, len);
	copy[len] = '\n';
	/* json-c keeps the serialisation in the object; it may hold a token. */
	sodium_memzero((char *)s, len);
	*out = copy;
	*out_len = len + 1;
	return 0;
}

int frame_write(struct evbuffer *out, struct json_object *msg, size_t limit)
{
	char *line;
	size_t len;
	int r;

	r = serialize_line(msg, limit, &line, &len);
	if (r)
		return r;
	if (evbuffer_add_reference(out, line, len, wipe_cleanup, NULL) < 0) {
		wipe_cleanup(line, len, NULL);
		return -ENOMEM;
	}
	return 0;
}

void frame_bev_setup(struct bufferevent *bev, size_t limit)
{
	bufferevent_setwatermark(bev, EV_READ, 0, limit + 1);
}

static int wait_fd(int fd, short events, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = events };
	int r;

	do
		r = poll(&p, 1, timeout_ms);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	if (r == 0)
		return -ETIMEDOUT;
	return 0;
}

int frame_write_fd(int fd, struct json_object *msg, size_t limit, int timeout_ms)
{
	char *line;
	size_t len, off = 0;
	int r;

	r = serialize_line(msg, limit, &line, &len);
	if (r)
		return r;
	while (off < len) {
		ssize_t n = write(fd, line + off, len - off);

		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			r = wait_fd(fd, POLLOUT, timeout_ms);
			if (r < 0)
				break;
			continue;
		}
		r = n < 0 ? -errno : -EPIPE;
		break;
	}
	wipe_cleanup(line, len, NULL);
	return off == len ? 0 : r;
}

int frame_read_fd(int fd, struct evbuffer *buf, size_t limit, struct rpc_msg *m, int timeout_ms,
		  char *detail, size_t detail_len)
{
	for (;;) {
		size_t have;
		int r, n;

		r = frame_read(buf, limit, m, detail, detail_len);
		if (r != FRAME_NEED_MORE)
			return r;
		/* Poll first so that a blocking descriptor honours the timeout too. */
		r = wait_fd(fd, POLLIN, timeout_ms);
		if (r < 0)
			return r;
		have = evbuffer_get_length(buf);
		/* Never buffer more than limit + 1 bytes of one message. */
		n = evbuffer_read(buf, fd, (int)(limit + 1 - have));
		if (n > 0)
			continue;
		if (n == 0)
			return -EPIPE;
		if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
	}
}

const char *frame_strerror(int status)
{
	switch (status) {
	case 0:
		return "ok";
	case FRAME_NEED_MORE:
		return "incomplete message";
	case FRAME_E_TOO_LARGE:
		return "message too large";
	case FRAME_E_UTF8:
		return "message is not valid UTF-8";
	case FRAME_E_JSON:
		return "invalid JSON";
	case FRAME_E_NOT_OBJECT:
		return "message is not a JSON object";
	case FRAME_E_INVALID_RPC:
		return "not a JSON-RPC 2.0 message";
	default:
		return status < 0 ? strerror(-status) : "unknown framing outcome";
	}
}

static struct json_object *rpc_base(void)
{
	struct json_object *o = json_object_new_object();

	if (o)
		json_object_object_add(o, "jsonrpc", json_object_new_string("2.0"));
	return o;
}

struct json_object *rpc_request(const char *method, struct json_object *params, int64_t id)
{
	struct json_object *o = rpc_base();

	if (!o) {
		json_object_put(params);
		return NULL;
	}
	json_object_object_add(o, "id", json_object_new_int64(id));
	json_object_object_add(o, "method", json_object_new_string(method));
	if (params)
		json_object_object_add(o, "params", params);
	return o;
}

struct json_object *rpc_notification(const char *method, struct json_object *params)
{
	struct json_object *o = rpc_base();

	if (!o) {
		json_object_put(params);
		return NULL;
	}
	json_object_object_add(o, "method", json_object_new_string(method));
	if (params)
		json_object_object_add(o, "params", params);
	return o;
}

struct json_object *rpc_result(struct json_object *id, struct json_object *result)
{
	struct json_object *o = rpc_base();

	if (!o) {
		json_object_put(result);
		return NULL;
	}
	json_object_object_add(o, "id", id ? json_object_get(id) : NULL);
	json_object_object_add(o, "result", result ? result : json_object_new_object());
	return o;
}

struct json_object *rpc_error(struct json_object *id, int code, const char *kind, const char *message)
{
	struct json_object *o = rpc_base(), *err;

	if (!o)
		return NULL;
	err = json_object_new_object();
	json_object_object_add(err, "code", json_object_new_int(code));
	json_object_object_add(err, "message", json_object_new_string(message ? message : ""));
	if (kind) {
		struct json_object *data = json_object_new_object();

		json_object_object_add(data, "kind", json_object_new_string(kind));
		json_object_object_add(err, "data", data);
	}
	json_object_object_add(o, "id", id ? json_object_get(id) : NULL);
	json_object_object_add(o, "error", err);
	return o;
}

struct json_object *rpc_error_for_frame(int status, const char *detail)
{
	const char *msg = detail && *detail ? detail : frame_strerror(status);

	switch (status) {
	case FRAME_E_TOO_LARGE:
		return rpc_error(NULL, RPC_INVALID_REQUEST, KIND_TOO_LARGE, msg);
	case FRAME_E_UTF8:
	case FRAME_E_JSON:
		return rpc_error(NULL, RPC_PARSE_ERROR, KIND_PARSE_ERROR, msg);
	case FRAME_E_NOT_OBJECT:
	case FRAME_E_INVALID_RPC:
		return rpc_error(NULL, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST, msg);
	default:
		return rpc_error(NULL, RPC_INTERNAL_ERROR, KIND_INTERNAL, msg);
	}
}

static void wipe_strings(struct json_object *obj)
{
	switch (json_object_get_type(obj)) {
	case json_type_string:
		sodium_memzero((char *)json_object_get_string(obj), (size_t)json_object_get_string_len(obj));
		break;
	case json_type_object: {
		json_object_object_foreach(obj, key, val) {
			(void)key;
			wipe_strings(val);
		}
		break;
	}
	case json_type_array:
		for (size_t i = 0; i < json_object_array_length(obj); i++)
			wipe_strings(json_object_array_get_idx(obj, i));
		break;
	default:
		break;
	}
}

void rpc_wipe_put(struct json_object *obj)
{
	if (!obj)
		return;
	wipe_strings(obj);
	json_object_put(obj);
}

int rpc_error_code(const struct rpc_msg *m)
{
	struct json_object *code;

	if (!m->error || !json_object_object_get_ex(m->error, "code", &code))
		return 0;
	return json_object_get_int(code);
}

const char *rpc_error_kind(const struct rpc_msg *m)
{
	struct json_object *data, *kind;

	if (!m->error || !json_object_object_get_ex(m->error, "data", &data) ||
	    !json_object_object_get_ex(data, "kind", &kind) || !json_object_is_type(kind, json_type_string))
		return NULL;
	return json_object_get_string(kind);
}

const char *rpc_error_message(const struct rpc_msg *m)
{
	struct json_object *msg;

	if (!m->error || !json_object_object_get_ex(m->error, "message", &msg))
		return NULL;
	return json_object_get_string(msg);
}
