/*
 * One MCP client connection, handed over by the keeper on fd 4: a stream
 * socket speaking newline-delimited JSON-RPC (MCP's stdio framing), or,
 * for a stdio connect (`mcpctl connect`, proto.h), a socket on which the
 * client's own stdin and stdout arrive: the worker then reads and writes
 * those, mcpctl is out of the data path, and the socket only tells each
 * side when the other has gone (mcpctl's end; session.closed from here).
 *
 * Each client is its own upstream session. This file owns what is the same
 * for every transport: reading and checking the client's messages, the
 * requests in flight (so that every request gets exactly one answer: the
 * upstream's, or an error when the upstream fails, times out or goes away),
 * and passing the upstream's messages back.
 *
 * Messages are checked in one pass without a JSON tree where the scanner
 * is sure of them (common/scan.h: the same verdict, type, id and method as
 * frame_parse_line(), which decides everything else), and forwarded as the
 * bytes that came: json-c builds a tree only for what is unusual, and for
 * the answer to initialize, whose protocolVersion the worker keeps.
 *
 * Trust: the client is untrusted. Garbage gets a JSON-RPC error and the
 * connection goes on; a line over the size limit cannot be resynced and
 * closes that client only. The upstream is untrusted too: what it sends is
 * parsed and checked before it reaches the client, and never logged.
 *
 * The client is read and written here rather than through a bufferevent,
 * for the system calls a request costs: a read is one read() (no FIONREAD
 * before it), and output is written at the end of the loop pass
 * that queued it, straight away; only a client that does not keep up gets
 * a write event, until it has caught up (turned on and off for every
 * reply, one costs two epoll_ctl() calls and an epoll_wait()). Reading
 * stops at the message size limit plus one byte: frame_read() refuses a
 * longer line before more of it is buffered, the client gets an error, and
 * the rest of that line is dropped as it comes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "frame.h"
#include "log.h"
#include "proto.h"
#include "scan.h"
#include "sock.h"
#include "util.h"
#include "worker.h"

/* The most one read takes from a client's socket. */
#define CLIENT_READ_SIZE 16384

/* -- output -- */

/* The client has all we queued: a closing client is done. */
static void client_caught_up(struct client *c)
{
	if (c->closing)
		client_close(c, "closed");
}

/* Writes what the buffer holds; 0, or a negative errno value. */
static int client_write_out(struct client *c)
{
	if (evbuffer_write(c->out, c->wfd) < 0 && errno != EAGAIN && errno != EINTR)
		return -errno;
	return 0;
}

/* A client that closed the reading end of its stdout has ended the session
 * as much as one that closed its stdin: that is not a failure. */
static void client_write_failed(struct client *c, int r)
{
	if (r == -EPIPE && c->conn_ev)
		c->clean = true;
	client_close(c, strerror(-r));
}

/* At the end of the pass that queued something (see client_output_cb). */
static void client_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	int r;

	/* A stdio connect holds its output until its stdout has arrived. */
	if (c->wfd < 0 || evbuffer_get_length(c->out) == 0 || event_pending(c->wev, EV_WRITE, NULL))
		return;
	r = client_write_out(c);
	if (r < 0)
		client_write_failed(c, r);
	else if (evbuffer_get_length(c->out) > 0)
		event_add(c->wev, NULL);
	else
		client_caught_up(c);
}

/* The socket takes more after a write that did not all go. */
static void client_writable_cb(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	int r = client_write_out(c);

	if (r < 0) {
		client_write_failed(c, r);
	} else if (evbuffer_get_length(c->out) == 0) {
		event_del(c->wev);
		client_caught_up(c);
	}
}

/* Anything queued, from anywhere (inside libcurl callbacks too): written
 * once the current callback has returned. */
static void client_output_cb(struct evbuffer *out, const struct evbuffer_cb_info *info, void *arg)
{
	struct client *c = arg;

	if (info->n_added > 0)
		event_active(c->flush, EV_WRITE, 0);
}

static void client_write(struct client *c, struct json_object *msg)
{
	int r = frame_write(c->out, msg, PROTO_MAX_MESSAGE);

	if (r)
		log_warn("client %llu: cannot queue a message: %s", (unsigned long long)c->number,
			 frame_strerror(r));
}

static void client_send_error(struct client *c, struct json_object *id, int code, const char *message)
{
	struct json_object *msg = rpc_error(id, code, KIND_UNAVAILABLE, message);

	if (!msg)
		fatal("out of memory");
	client_write(c, msg);
	json_object_put(msg);
}

/* -- requests in flight -- */

static struct pending *pending_free(struct pending *p)
{
	LIST_REMOVE(p, link);
	event_free(p->timer);
	json_object_put(p->id);
	free(p);
	return NULL;
}

static struct pending *pending_find(struct client *c, struct json_object *id)
{
	struct pending *p;

	if (!id)
		return NULL;
	LIST_FOREACH(p, &c->pending, link)
		if (json_object_equal(p->id, id))
			return p;
	return NULL;
}

void client_pending_hold(struct client *c, struct json_object *id, bool hold)
{
	struct pending *p = pending_find(c, id);
	struct timeval tv = { .tv_sec = c->w->timeout_ms / 1000, .tv_usec = (c->w->timeout_ms % 1000) * 1000 };

	if (!p)
		return;
	if (hold && tv.tv_sec < LOGIN_WAIT_MAX_SEC)
		tv = (struct timeval){ .tv_sec = LOGIN_WAIT_MAX_SEC };
	evtimer_add(p->timer, &tv);
}

bool client_is_pending(struct client *c, struct json_object *id)
{
	return pending_find(c, id) != NULL;
}

static void drained_cb(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;

	c->clean = true;
	client_shutdown(c, "end of input, every request answered");
}

/*
 * A client that closed its sending side (an MCP client at the end of its
 * input) still gets the answers to what it asked; once the last one is out,
 * the connection closes. Deferred: this runs inside libcurl callbacks.
 */
static void client_check_drained(struct client *c)
{
	static const struct timeval now = { 0, 0 };

	if (!c->input_done || c->closing || !LIST_EMPTY(&c->pending))
		return;
	if (!c->drained)
		c->drained = evtimer_new(c->w->base, drained_cb, c);
	if (c->drained)
		evtimer_add(c->drained, &now);
}

static void pending_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pending *p = arg;
	struct client *c = p->c;
	char message[256];

	snprintf(message, sizeof(message), "upstream %s did not answer %s within %ld ms", c->w->name, p->method,
		 c->w->timeout_ms);
	log_warn("client %llu: %s", (unsigned long long)c->number, message);
	client_send_error(c, p->id, RPC_APP_ERROR, message);
	pending_free(p);
	client_check_drained(c);
}

static int pending_add(struct client *c, const struct rpc_msg *m)
{
	struct pending *p = xcalloc(1, sizeof(*p));
	struct timeval tv = { .tv_sec = c->w->timeout_ms / 1000, .tv_usec = (c->w->timeout_ms % 1000) * 1000 };

	p->c = c;
	p->id = json_object_get(m->id);
	snprintf(p->method, sizeof(p->method), "%s", m->method);
	p->timer = evtimer_new(c->w->base, pending_timeout_cb, p);
	if (!p->timer || evtimer_add(p->timer, &tv) < 0) {
		if (p->timer)
			event_free(p->timer);
		json_object_put(p->id);
		free(p);
		return -ENOMEM;
	}
	LIST_INSERT_HEAD(&c->pending, p, link);
	return 0;
}

void client_fail(struct client *c, struct json_object *id, int code, const char *fmt, ...)
{
	struct pending *p = pending_find(c, id);
	char message[512];
	va_list ap;

	if (!p)
		return;
	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	log_info("client %llu: %s: %s", (unsigned long long)c->number, p->method, message);
	client_send_error(c, p->id, code, message);
	pending_free(p);
	client_check_drained(c);
}

void client_fail_all(struct client *c, int code, const char *fmt, ...)
{
	char message[512];
	va_list ap;

	if (LIST_EMPTY(&c->pending))
		return;
	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	log_info("client %llu: %s", (unsigned long long)c->number, message);
	while (!LIST_EMPTY(&c->pending)) {
		struct pending *p = LIST_FIRST(&c->pending);

		client_send_error(c, p->id, code, message);
		pending_free(p);
	}
}

/* -- upstream -> client -- */

/* The protocol version negotiated at initialize, for MCP-Protocol-Version:
 * a header value, so visible ASCII only. */
static void client_note_version(struct client *c, const struct rpc_msg *m)
{
	struct json_object *v;
	const char *s;

	if (!m->result || !json_object_object_get_ex(m->result, "protocolVersion", &v) ||
	    !json_object_is_type(v, json_type_string))
		return;
	s = json_object_get_string(v);
	if (strlen(s) == 0 || strlen(s) > 64)
		return;
	for (const char *p = s; *p; p++)
		if (*p <= 0x20 || *p > 0x7e)
			return;
	free(c->protocol_version);
	c->protocol_version = xstrdup(s);
}

/*
 * Queues a message from upstream: its own text when that is one line
 * already (it has been parsed and checked: only the framing matters here),
 * else serialised by the framing module. text may be NULL.
 */
static int client_queue(struct client *c, const struct rpc_msg *m, const char *text, size_t len)
{
	struct evbuffer *out = c->out;

	if (!text || memchr(text, '\n', len) || memchr(text, '\r', len))
		return frame_write(out, m->root, PROTO_MAX_MESSAGE);
	if (len > PROTO_MAX_MESSAGE)
		return FRAME_E_TOO_LARGE;
	if (evbuffer_expand(out, len + 1) < 0 || evbuffer_add(out, text, len) < 0 || evbuffer_add(out, "\n", 1) < 0)
		return -ENOMEM;
	return 0;
}

/* A scanned id as the table of requests in flight holds ids: what json-c
 * would have parsed (NULL for a JSON null or no id). */
static struct json_object *id_from_scan(const struct scan_id *id)
{
	char digits[32];
	struct json_object *o = NULL;

	if (id->tag == 's') {
		o = json_object_new_string_len(id->bytes, (int)id->len);
	} else if (id->tag == 'i' && id->len < sizeof(digits)) {
		/* At most 18 digits and a sign: an int64 (scan.c). */
		memcpy(digits, id->bytes, id->len);
		digits[id->len] = '\0';
		o = json_object_new_int64(strtoll(digits, NULL, 10));
	} else {
		return NULL;
	}
	if (!o)
		fatal("out of memory");
	return o;
}

/* client_deliver, with the message's text when there is one. */
static void client_pass(struct client *c, const struct rpc_msg *m, const char *text, size_t len)
{
	int r;

	if (m->type == RPC_RESULT || m->type == RPC_ERROR) {
		struct pending *p = pending_find(c, m->id);

		if (!p) {
			/* Timed out already (the client has its error), or never asked. */
			log_debug("client %llu: dropping a response to no request in flight",
				  (unsigned long long)c->number);
			return;
		}
		if (strcmp(p->method, "initialize") == 0 && m->type == RPC_RESULT)
			client_note_version(c, m);
		r = client_queue(c, m, text, len);
		if (r == FRAME_E_TOO_LARGE) {
			char message[128];

			snprintf(message, sizeof(message), "the response of upstream %s is larger than %d bytes",
				 c->w->name, PROTO_MAX_MESSAGE);
			client_send_error(c, p->id, RPC_INTERNAL_ERROR, message);
		} else if (r) {
			log_warn("client %llu: cannot queue a response: %s", (unsigned long long)c->number,
				 frame_strerror(r));
		}
		pending_free(p);
		client_check_drained(c);
		return;
	}
	/* A server-initiated request or notification. */
	r = client_queue(c, m, text, len);
	if (r)
		log_warn("client %llu: dropping a message from upstream %s: %s", (unsigned long long)c->number,
			 c->w->name, frame_strerror(r));
}

void client_deliver(struct client *c, const struct rpc_msg *m)
{
	client_pass(c, m, NULL, 0);
}

/*
 * The common case without a tree: a message the scanner is sure of, with no
 * '\r' in it (the line passes as it is). False when the long way must
 * decide, and for the answer to initialize (its result is wanted).
 */
static bool client_deliver_scanned(struct client *c, const char *text, size_t len)
{
	struct rpc_msg m = { 0 };
	struct scan_msg sm;
	struct pending *p;

	if (memchr(text, '\r', len) || scan_message(text, len, &sm) != 0)
		return false;
	m.type = sm.type;
	m.id = id_from_scan(&sm.id);
	if (m.type == RPC_RESULT && (p = pending_find(c, m.id)) && strcmp(p->method, "initialize") == 0) {
		json_object_put(m.id);
		return false;
	}
	client_pass(c, &m, text, len);
	json_object_put(m.id);
	return true;
}

void client_deliver_text(struct client *c, const char *text, size_t len)
{
	char detail[128] = "";
	struct rpc_msg m;
	int r;

	while (len > 0 && strchr(" \t\r\n", text[0])) {
		text++;
		len--;
	}
	while (len > 0 && strchr(" \t\r\n", text[len - 1]))
		len--;
	if (len == 0)
		return;
	if (text[0] == '[') {
		/* A JSON-RPC batch: each element on its own line. */
		struct json_tokener *tok = json_tokener_new();
		struct json_object *arr;

		if (!tok)
			fatal("out of memory");
		arr = json_tokener_parse_ex(tok, text, (int)len);
		if (!arr || json_tokener_get_parse_end(tok) != len || !json_object_is_type(arr, json_type_array)) {
			log_warn("client %llu: upstream %s sent a malformed batch", (unsigned long long)c->number,
				 c->w->name);
		} else {
			for (size_t i = 0; i < json_object_array_length(arr); i++) {
				memset(&m, 0, sizeof(m));
				if (rpc_classify(json_object_array_get_idx(arr, i), &m, detail, sizeof(detail)) == 0)
					client_deliver(c, &m);
				else
					log_warn("client %llu: upstream %s sent a bad message: %s",
						 (unsigned long long)c->number, c->w->name, detail);
			}
		}
		json_object_put(arr);
		json_tokener_free(tok);
		return;
	}
	if (client_deliver_scanned(c, text, len))
		return;
	r = frame_parse_line(text, len, &m, detail, sizeof(detail));
	if (r == 0)
		client_pass(c, &m, text, len);
	else
		log_warn("client %llu: upstream %s sent a bad message: %s", (unsigned long long)c->number, c->w->name,
			 r < 0 ? strerror(-r) : detail);
	rpc_msg_clear(&m);
}

/* -- client -> upstream -- */

/* m parsed from text (len bytes, a trailing '\r' at most): what goes
 * upstream is text itself, byte for byte, not m serialised again. */
static void client_handle(struct client *c, const struct rpc_msg *m, const char *text, size_t len)
{
	int r;

	if (len > 0 && text[len - 1] == '\r')
		len--;
	if (m->type == RPC_REQUEST) {
		if (pending_find(c, m->id)) {
			struct json_object *msg = rpc_error(m->id, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST,
							    "a request with this id is already in flight");

			client_write(c, msg);
			json_object_put(msg);
			return;
		}
		if (pending_add(c, m) < 0)
			fatal("out of memory");
	}
	if (c->w->transport == TRANSPORT_STDIO)
		r = stdio_send(c, text, len);
	else
		r = http_send(c, m, text, len);
	if (r < 0 && m->type == RPC_REQUEST)
		client_fail(c, m->id, RPC_INTERNAL_ERROR, "upstream %s: %s", c->w->name, strerror(-r));
}

/* The first reason given is the one session.closed tells. */
static void client_note_end(struct client *c, const char *why)
{
	if (!c->end[0])
		snprintf(c->end, sizeof(c->end), "%s", why);
}

void client_shutdown(struct client *c, const char *why)
{
	if (c->closing)
		return;
	log_info("client %llu: closing: %s", (unsigned long long)c->number, why);
	client_note_end(c, why);
	c->closing = true;
	if (c->w->transport == TRANSPORT_STDIO)
		stdio_client_close(c);
	else
		http_client_close(c);
	if (c->rev)
		event_del(c->rev);
	/* What is queued goes out first (client_caught_up closes). */
	if (evbuffer_get_length(c->out) == 0)
		client_close(c, "closed");
}

/* Drops the rest of a line over the limit: false while its end has not come. */
static bool client_skip(struct client *c)
{
	struct evbuffer_ptr nl = evbuffer_search(c->in, "\n", 1, NULL);

	if (nl.pos < 0) {
		evbuffer_drain(c->in, evbuffer_get_length(c->in));
		return false;
	}
	evbuffer_drain(c->in, (size_t)nl.pos + 1);
	c->skipping = false;
	return true;
}

/*
 * A line the scanner is sure of, as a message without a tree: type, method
 * (copied into method[size]) and id (the caller puts *id). False when
 * frame_parse_line() must decide, or (http) when the request headers need
 * the params.
 */
/* Methods whose params an HTTP upstream's request headers carry (SEP-2243:
 * Mcp-Name, and MCP-Protocol-Version on initialize), and any request that
 * names its protocol version in _meta: parsed in full. */
#define META_PROTOCOL_VERSION "io.modelcontextprotocol/protocolVersion"
static bool params_for_headers(const char *method, size_t len)
{
	static const char *const names[] = { "tools/call", "prompts/get", "resources/read", "initialize" };

	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (len == strlen(names[i]) && memcmp(method, names[i], len) == 0)
			return true;
	return len > 6 && memcmp(method, "tasks/", 6) == 0;
}

/* 0: the scanner will do; 1: an initialize or a request naming its
 * revision needs its params; 2: (2026-07-28 and later) so do the methods
 * whose params give Mcp-Name. */
static int client_headers(const struct client *c)
{
	if (c->w->transport != TRANSPORT_HTTP)
		return 0;
	return c->protocol_version && strcmp(c->protocol_version, MCP_HEADERS_REVISION) >= 0 ? 2 : 1;
}

static bool client_scan(const char *text, size_t len, struct rpc_msg *m, char *method, size_t size,
			struct json_object **id, int http)
{
	struct scan_msg sm;

	if (len > 0 && text[len - 1] == '\r')
		len--;
	if (scan_message(text, len, &sm) != 0 || (sm.method && sm.method_len >= size) ||
	    (http && sm.method && sm.method_len == 10 && memcmp(sm.method, "initialize", 10) == 0) ||
	    (http == 2 && sm.method && params_for_headers(sm.method, sm.method_len)) ||
	    (http && memmem(text, len, META_PROTOCOL_VERSION, sizeof(META_PROTOCOL_VERSION) - 1)))
		return false;
	m->type = sm.type;
	if (sm.method) {
		memcpy(method, sm.method, sm.method_len);
		method[sm.method_len] = '\0';
		m->method = method;
	}
	m->id = *id = id_from_scan(&sm.id);
	return true;
}

/* Every complete message in the input buffer. */
static void client_take(struct client *c)
{
	for (;;) {
		struct frame_line l = { 0 };
		struct json_object *msg, *scanned_id = NULL;
		struct rpc_msg m = { 0 };
		char detail[128] = "", method[256];
		int r;

		if (c->skipping && !client_skip(c))
			return;
		r = frame_next_line(c->in, PROTO_MAX_MESSAGE, &l, detail, sizeof(detail));
		if (r == FRAME_NEED_MORE)
			return;
		if (r == 0 && !client_scan(l.text, l.len, &m, method, sizeof(method), &scanned_id, client_headers(c)))
			r = frame_parse_line(l.text, l.len, &m, detail, sizeof(detail));
		if (r < 0) {
			rpc_msg_clear(&m);
			client_close(c, strerror(-r));
			return;
		}
		if (r > 0) {
			log_info("client %llu: %s", (unsigned long long)c->number, detail[0] ? detail : frame_strerror(r));
			msg = rpc_error_for_frame(r, detail);
			if (!msg)
				fatal("out of memory");
			if (m.id)
				json_object_object_add(msg, "id", json_object_get(m.id));
			client_write(c, msg);
			json_object_put(msg);
			rpc_msg_clear(&m);
			/* Nothing of that line was taken: the next one starts after its newline. */
			if (r == FRAME_E_TOO_LARGE)
				c->skipping = true;
		} else {
			client_handle(c, &m, l.text, l.len);
		}
		rpc_msg_clear(&m);
		json_object_put(scanned_id);
		evbuffer_drain(c->in, l.consumed);
	}
}

/*
 * One read of what the socket has, up to the message size limit plus one
 * byte buffered: bytes read, 0 at the end of the stream, or a negative
 * errno value (-EAGAIN: nothing there now). Through a buffer on the stack:
 * reserving the room in the evbuffer instead would allocate (and, once
 * the line is taken, free) a chain that large for every message.
 */
static ssize_t client_fill(struct client *c)
{
	char buf[CLIENT_READ_SIZE];
	size_t room = PROTO_MAX_MESSAGE + 1 - evbuffer_get_length(c->in);
	ssize_t n = read(c->rfd, buf, room < sizeof(buf) ? room : sizeof(buf));

	if (n <= 0)
		return n < 0 ? -errno : 0;
	if (evbuffer_add(c->in, buf, (size_t)n) < 0)
		return -ENOMEM;
	return n;
}

static void client_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	ssize_t n;

	if (evbuffer_get_length(c->in) > PROTO_MAX_MESSAGE) {
		/* Cannot happen: frame_read() refuses that much without a newline. */
		event_del(c->rev);
		return;
	}
	n = client_fill(c);
	if (n == -EAGAIN || n == -EINTR)
		return;
	if (n == 0 && evbuffer_get_length(c->in) > 0 && !c->skipping)
		log_info("client %llu: input ended inside a message (%zu bytes dropped)", (unsigned long long)c->number,
			 evbuffer_get_length(c->in));
	if (n < 0) {
		client_close(c, strerror((int)-n));
	} else if (n > 0) {
		client_take(c);
	} else if (!LIST_EMPTY(&c->pending)) {
		log_info("client %llu: end of input; answering what is in flight", (unsigned long long)c->number);
		c->input_done = true;
		event_del(c->rev);
	} else {
		c->clean = true;
		client_close(c, "disconnected");
	}
}

static void client_kick_cb(evutil_socket_t fd, short what, void *arg)
{
	http_kick(arg);
}

/*
 * A stdio connect's end, told to mcpctl on the socket: whether the client
 * ended it (its input closed, every request answered) and why, also when
 * its descriptors were refused. Best effort: the socket is idle, so the
 * line fits; an mcpctl that has gone does not read it.
 */
static void client_say_end(struct client *c)
{
	struct json_object *params = json_object_new_object(), *msg;

	if (!params)
		return;
	json_object_object_add(params, PARAM_KEY_CLEAN, json_object_new_boolean(c->clean));
	json_object_object_add(params, PARAM_KEY_REASON, json_object_new_string(c->end));
	msg = rpc_notification(METHOD_SESSION_CLOSED, params);
	if (msg)
		(void)frame_write_fd(c->fd, msg, PROTO_MAX_MESSAGE, 0);
	json_object_put(msg);
}

/* The descriptors and what serves them. */
static void client_free_io(struct client *c)
{
	bool stdio = c->conn_ev != NULL;

	if (c->out)
		evbuffer_remove_cb(c->out, client_output_cb, c);
	if (c->rev)
		event_free(c->rev);
	if (c->wev)
		event_free(c->wev);
	if (c->conn_ev)
		event_free(c->conn_ev);
	if (c->kick)
		event_free(c->kick);
	if (c->flush)
		event_free(c->flush);
	if (c->in)
		evbuffer_free(c->in);
	/* Queued replies hold nothing secret, but frame_write() wipes its
	 * lines when they are freed: that happens here too. */
	if (c->out)
		evbuffer_free(c->out);
	/* The client's stdout closes before mcpctl hears of the end, so that
	 * the client has seen everything by the time mcpctl exits. */
	if (c->wfd != c->fd && c->wfd != c->rfd)
		fd_close(c->wfd);
	if (c->rfd != c->fd)
		fd_close(c->rfd);
	c->rfd = c->wfd = -1;
	if (stdio)
		client_say_end(c);
	c->fd = fd_close(c->fd);
}

/* Read and write events on rfd and wfd. */
static int client_io_new(struct client *c)
{
	c->rev = event_new(c->w->base, c->rfd, EV_READ | EV_PERSIST, client_read_cb, c);
	c->wev = event_new(c->w->base, c->wfd, EV_WRITE | EV_PERSIST, client_writable_cb, c);
	return c->rev && c->wev ? 0 : -ENOMEM;
}

/* A pipe or a socket, open for reading (want O_RDONLY) or for writing. */
static bool stdio_fd_ok(int fd, int want)
{
	struct stat st;
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fstat(fd, &st) < 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
		return false;
	if ((fl & O_ACCMODE) != O_RDWR && (fl & O_ACCMODE) != want)
		return false;
	return fd_set_nonblock(fd, 1) == 0;
}

/*
 * A stdio connect's socket: first the byte with the client's stdin and
 * stdout on it; after that mcpctl sends nothing, so anything readable is
 * its end (the MCP client stopped it, or it died): the session ends.
 */
static void client_conn_cb(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	unsigned char byte = 1;
	size_t received = 0, n = 0;
	int fds[2] = { -1, -1 }, r;
	const char *bad;

	if (c->rfd >= 0) {
		client_close(c, "mcpctl connect went away");
		return;
	}
	r = sock_recv_fds(c->fd, &byte, 1, &received, fds, 2, &n);
	if (r == -EAGAIN || r == -EINTR)
		return;
	if (r < 0)
		bad = strerror(-r);
	else if (received == 0)
		bad = "closed before its descriptors came";
	else if (byte != CONNECT_STDIO_BYTE || n != 2)
		bad = "a stdio connect without its stdin and stdout";
	else if (!stdio_fd_ok(fds[0], O_RDONLY) || !stdio_fd_ok(fds[1], O_WRONLY))
		bad = "a stdio connect whose stdin or stdout is not a pipe or socket open that way";
	else
		bad = NULL;
	if (bad) {
		for (size_t i = 0; i < n; i++)
			fd_close(fds[i]);
		client_close(c, bad);
		return;
	}
	c->rfd = fds[0];
	c->wfd = fds[1];
	if (client_io_new(c) < 0)
		fatal("out of memory");
	log_debug("client %llu: reading its stdin, writing its stdout", (unsigned long long)c->number);
	client_start_reading(c);
	if (evbuffer_get_length(c->out) > 0)
		event_active(c->flush, EV_WRITE, 0);
}

int client_new(struct worker *w, uint64_t number, unsigned flags, int fd)
{
	struct client *c = xcalloc(1, sizeof(*c));
	bool stdio = flags & CLIENT_F_STDIO;
	int r;

	c->w = w;
	c->number = number;
	c->fd = fd;
	c->rfd = c->wfd = stdio ? -1 : fd;
	LIST_INIT(&c->pending);
	LIST_INIT(&c->hreqs);
	c->in = evbuffer_new();
	c->out = evbuffer_new();
	if (stdio) {
		c->conn_ev = event_new(w->base, fd, EV_READ | EV_PERSIST, client_conn_cb, c);
		r = c->conn_ev && event_add(c->conn_ev, NULL) == 0 ? 0 : -ENOMEM;
	} else {
		r = client_io_new(c);
	}
	c->kick = event_new(w->base, -1, 0, client_kick_cb, c);
	c->flush = event_new(w->base, -1, 0, client_flush_cb, c);
	if (r < 0 || !c->in || !c->out || !c->kick || !c->flush || evbuffer_add_cb(c->out, client_output_cb, c) == NULL) {
		client_free_io(c);
		free(c);
		return -ENOMEM;
	}
	LIST_INSERT_HEAD(&w->clients, c, link);
	w->n_clients++;
	log_info("client %llu connected%s (%zu now)", (unsigned long long)number, stdio ? " (stdio)" : "",
		 w->n_clients);
	if (w->transport == TRANSPORT_STDIO && stdio_open(c) < 0) {
		client_close(c, "cannot start the command");
		return 0;
	}
	client_start_reading(c);
	return 0;
}

void client_start_reading(struct client *c)
{
	if (c->closing || c->input_done || !c->rev)
		return;
	if (!c->w->oauth || c->w->token_known)
		event_add(c->rev, NULL);
}

void client_close(struct client *c, const char *why)
{
	struct worker *w = c->w;

	log_info("client %llu: %s", (unsigned long long)c->number, why);
	client_note_end(c, why);
	/* What is queued (errors for what was in flight) gets one try. */
	if (c->wfd >= 0 && c->out && evbuffer_get_length(c->out) > 0)
		(void)client_write_out(c);
	if (c->closing)
		; /* the upstream side has ended already */
	else if (w->transport == TRANSPORT_STDIO)
		stdio_client_close(c);
	else
		http_client_close(c);
	while (!LIST_EMPTY(&c->pending))
		pending_free(LIST_FIRST(&c->pending));
	client_free_io(c);
	if (c->drained)
		event_free(c->drained);
	free(c->session_id);
	free(c->protocol_version);
	free(c->endpoint);
	LIST_REMOVE(c, link);
	w->n_clients--;
	free(c);
	if (!w->stopping) {
		struct json_object *params = json_object_new_object();

		json_object_object_add(params, PARAM_KEY_CLIENTS, json_object_new_int64((int64_t)w->n_clients));
		worker_send(w, rpc_notification(METHOD_CLIENT_CLOSED, params));
	}
}
