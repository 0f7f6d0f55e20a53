/*
 * mcpkeeper-oauth: the oauth child. It does all the OAuth HTTP for the
 * keeper (discovery, registration, the login's code exchange, refresh,
 * revocation) and serves the login's loopback redirect, so that the keeper
 * parses no network input.
 *
 * Started by mcpkeeperd (fork+exec) with its channel on fd 3: a hello, then
 * any number of concurrent requests (common/proto.h has the contract). This
 * file holds main, the channel, the HTTP plumbing every request shares
 * (struct fetch: one libcurl easy handle in multi mode on the one libevent
 * loop, bodies capped and wiped) and oauth.refresh, one refresh_token grant
 * (RFC 6749 section 6) answered with the parsed token response or a
 * classified error. oauth-login.c holds the login and logout steps.
 *
 * What it may touch: fd 3, stderr for logs, the network, and TCP listeners
 * on 127.0.0.1 for login redirects. It holds a refresh token only for the
 * one request it is serving and a login's PKCE verifier, state and code
 * only while that login runs, never the master key or the database; where
 * the kernel offers Landlock it cannot open the state directory at all
 * (read-only access to system paths, no writes; Landlock's network rules
 * are not used, so binding the redirect port is unaffected).
 *
 * Trust: the keeper is a sibling. A message from it that is malformed or
 * unexpected is a keeper bug: log it and exit 1 (the keeper restarts us).
 * Servers and browsers are the network: anything they send ends that one
 * request with an error, and response bodies are never logged, because they
 * may hold tokens. The lifetime belongs to the keeper: termination signals
 * are ignored, and end of stream on fd 3 ends the process.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <sodium.h>

#include "curlev.h"
#include "entry.h"
#include "frame.h"
#include "log.h"
#include "oauth.h"
#include "proto.h"
#include "util.h"

#define CHANNEL_FD CHILD_FD_CHANNEL

struct refresh {
	struct oauth *o;
	struct refresh *next, **pprev;
	struct json_object *id;
	char *server;
	struct fetch *fetch;		/* its form holds the refresh token, maybe the client secret */
};

/* -- buffers -- */

void buf_wipe(struct buf *b)
{
	if (b->data) {
		sodium_memzero(b->data, b->cap);
		free(b->data);
	}
	memset(b, 0, sizeof(*b));
}

/* Makes room for more bytes plus a NUL; a move wipes the old copy (no realloc). */
int buf_reserve(struct buf *b, size_t more)
{
	size_t cap;
	char *data;

	if (b->cap - b->len > more)
		return 0;
	cap = b->cap ? b->cap : 256;
	while (cap - b->len <= more) {
		if (cap > SIZE_MAX / 2)
			return -ENOMEM;
		cap *= 2;
	}
	data = malloc(cap);
	if (!data)
		return -ENOMEM;
	if (b->data) {
		memcpy(data, b->data, b->len);
		sodium_memzero(b->data, b->cap);
		free(b->data);
	}
	b->data = data;
	b->cap = cap;
	b->data[b->len] = '\0';
	return 0;
}

int buf_add(struct buf *b, const void *p, size_t n)
{
	if (buf_reserve(b, n) < 0)
		return -ENOMEM;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

int buf_adds(struct buf *b, const char *s)
{
	return buf_add(b, s, strlen(s));
}

/* application/x-www-form-urlencoded serialisation of one value (WHATWG URL,
 * as RFC 6749 appendix B asks): unreserved bytes as they are, space as '+',
 * everything else percent-encoded. */
int buf_add_form_encoded(struct buf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";

	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		char enc[3];
		int r;

		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
		    *p == '*' || *p == '-' || *p == '.' || *p == '_') {
			r = buf_add(b, p, 1);
		} else if (*p == ' ') {
			r = buf_add(b, "+", 1);
		} else {
			enc[0] = '%';
			enc[1] = hex[*p >> 4];
			enc[2] = hex[*p & 0xf];
			r = buf_add(b, enc, 3);
		}
		if (r < 0)
			return r;
	}
	return 0;
}

int form_add(struct buf *form, const char *key, const char *value)
{
	if ((form->len && buf_add(form, "&", 1) < 0) || buf_adds(form, key) < 0 || buf_add(form, "=", 1) < 0)
		return -ENOMEM;
	return buf_add_form_encoded(form, value);
}

/* -- one HTTP transfer -- */

static size_t fetch_write_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct fetch *f = arg;
	size_t n = size * nmemb;

	if (n > OAUTH_MAX_BODY - f->body.len) {
		f->too_large = true;
		return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
	}
	if (buf_add(&f->body, p, n) < 0)
		return 0;
	return n;
}

/* For headers_only: the empty line after a final response's headers stops
 * the transfer (an event stream would otherwise stay open). libcurl has
 * stored every header by then, for curl_easy_header(). */
static size_t fetch_header_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct fetch *f = arg;
	size_t n = size * nmemb;
	long status = 0;

	if ((n == 2 && p[0] == '\r' && p[1] == '\n') || (n == 1 && p[0] == '\n')) {
		curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &status);
		if (status >= 200) {
			f->headers_seen = true;
			return 0;
		}
	}
	return n;
}

struct fetch *fetch_new(struct oauth *o, const char *url, long timeout_ms, fetch_done_fn done, void *arg)
{
	struct fetch *f = calloc(1, sizeof(*f));
	CURL *e;

	if (!f)
		return NULL;
	f->o = o;
	f->done = done;
	f->arg = arg;
	e = f->easy = curl_easy_init();
	if (!e || curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, OAUTH_CONNECT_TIMEOUT_S) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)OAUTH_MAX_BODY) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_USERAGENT, "mcpkeeper/" MCPKEEPER_VERSION) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, fetch_write_cb) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_WRITEDATA, f) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, f->errbuf) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_PRIVATE, f) != CURLE_OK)
		return fetch_free(f);
	return f;
}

int fetch_header(struct fetch *f, const char *line)
{
	struct curl_slist *l = curl_slist_append(f->headers, line);

	if (!l)
		return -ENOMEM;
	f->headers = l;
	return 0;
}

int fetch_post(struct fetch *f, const char *content_type)
{
	char line[96];

	snprintf(line, sizeof(line), "Content-Type: %s", content_type);
	/* An empty body until fetch_start() hands libcurl f->req: never stdin. */
	if (fetch_header(f, line) < 0 || fetch_header(f, "Expect:") < 0 ||
	    curl_easy_setopt(f->easy, CURLOPT_POSTFIELDS, "") != CURLE_OK ||
	    curl_easy_setopt(f->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0) != CURLE_OK)
		return -ENOMEM;
	return 0;
}

/* Basic credentials of RFC 6749 2.3.1: both parts form-urlencoded first. */
static int fetch_basic_auth(struct fetch *f, const char *client_id, const char *client_secret)
{
	struct buf cred = { 0 }, header = { 0 };
	size_t b64_len;
	int ret = -ENOMEM;

	if (buf_add_form_encoded(&cred, client_id) < 0 || buf_add(&cred, ":", 1) < 0 ||
	    buf_add_form_encoded(&cred, client_secret) < 0)
		goto out;
	b64_len = sodium_base64_ENCODED_LEN(cred.len, sodium_base64_VARIANT_ORIGINAL);
	if (buf_adds(&header, "Authorization: Basic ") < 0 || buf_reserve(&header, b64_len) < 0)
		goto out;
	sodium_bin2base64(header.data + header.len, b64_len, (const unsigned char *)cred.data, cred.len,
			  sodium_base64_VARIANT_ORIGINAL);
	ret = fetch_header(f, header.data);
out:
	buf_wipe(&cred);
	buf_wipe(&header);
	return ret;
}

int fetch_client_auth(struct fetch *f, const char *auth_method, const char *client_id, const char *client_secret)
{
	if (strcmp(auth_method, "client_secret_basic") == 0)
		return fetch_basic_auth(f, client_id, client_secret);
	if (form_add(&f->req, "client_id", client_id) < 0)
		return -ENOMEM;
	if (strcmp(auth_method, "client_secret_post") == 0 && form_add(&f->req, "client_secret", client_secret) < 0)
		return -ENOMEM;
	return 0;
}

int fetch_start(struct fetch *f)
{
	CURL *e = f->easy;

	/* The body and the header list are final only now. */
	if (curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->headers) != CURLE_OK)
		return -ENOMEM;
	if (f->req.data && (curl_easy_setopt(e, CURLOPT_POSTFIELDS, f->req.data) != CURLE_OK ||
			    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)f->req.len) != CURLE_OK))
		return -ENOMEM;
	if (f->headers_only && (curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, fetch_header_cb) != CURLE_OK ||
				curl_easy_setopt(e, CURLOPT_HEADERDATA, f) != CURLE_OK))
		return -ENOMEM;
	if (curl_multi_add_handle(curlev_multi(f->o->curl), e) != CURLM_OK)
		fatal("curl_multi_add_handle failed");
	return 0;
}

struct fetch *fetch_free(struct fetch *f)
{
	if (!f)
		return NULL;
	if (f->easy) {
		curl_multi_remove_handle(curlev_multi(f->o->curl), f->easy);
		curl_easy_cleanup(f->easy);
	}
	for (struct curl_slist *h = f->headers; h; h = h->next)
		sodium_memzero(h->data, strlen(h->data));
	curl_slist_free_all(f->headers);
	buf_wipe(&f->req);
	buf_wipe(&f->body);
	free(f);
	return NULL;
}

bool fetch_answered(const struct fetch *f)
{
	return f->result == CURLE_OK || (f->headers_only && f->headers_seen);
}

void fetch_describe_failure(const struct fetch *f, char *out, size_t len)
{
	if (f->too_large || f->result == CURLE_FILESIZE_EXCEEDED)
		snprintf(out, len, "response larger than %d bytes", OAUTH_MAX_BODY);
	else if (f->result == CURLE_OPERATION_TIMEDOUT)
		snprintf(out, len, "timed out: %s", f->errbuf[0] ? f->errbuf : curl_easy_strerror(f->result));
	else
		snprintf(out, len, "network error: %s", f->errbuf[0] ? f->errbuf : curl_easy_strerror(f->result));
}

/* -- response bodies -- */

/* RFC 6749 5.2: error = 1*( %x20-21 / %x23-5B / %x5D-7E ). Anything else is
 * not an OAuth error code and is neither logged nor passed on. */
const char *oauth_error_of(struct json_object *obj)
{
	struct json_object *e;
	const char *s;
	size_t len;

	if (!json_object_is_type(obj, json_type_object) || !json_object_object_get_ex(obj, "error", &e) ||
	    !json_object_is_type(e, json_type_string))
		return NULL;
	s = json_object_get_string(e);
	len = (size_t)json_object_get_string_len(e);
	if (len == 0 || len > OAUTH_ERROR_MAX)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
			return NULL;
	}
	return s;
}

/* Token values travel back to the keeper as JSON strings: only visible ASCII
 * (RFC 6749's VSCHAR), so nothing a provider sends can break the framing. */
bool vschar_string(struct json_object *v, bool allow_empty)
{
	const char *s;
	size_t len;

	if (!json_object_is_type(v, json_type_string))
		return false;
	s = json_object_get_string(v);
	len = (size_t)json_object_get_string_len(v);
	if (len == 0 && !allow_empty)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

void sanitise_text(const char *s, char *out, size_t len, size_t max_chars)
{
	size_t n = 0, i;

	if (len == 0)
		return;
	if (max_chars > len - 1)
		max_chars = len - 1;
	for (i = 0; s && s[i] && n < max_chars; i++) {
		unsigned char c = (unsigned char)s[i];

		out[n++] = c >= 0x20 && c <= 0x7e ? (char)c : '?';
	}
	if (s && s[i] && max_chars >= 3)
		memcpy(out + max_chars - 3, "...", 3);
	out[n] = '\0';
}

/* The response body as a JSON object, or NULL. */
struct json_object *parse_body(const struct buf *body)
{
	struct json_tokener *tok;
	struct json_object *obj;
	size_t end;

	if (body->len == 0)
		return NULL;
	tok = json_tokener_new();
	if (!tok)
		return NULL;
	obj = json_tokener_parse_ex(tok, body->data, (int)body->len);
	end = json_tokener_get_parse_end(tok);
	if (obj && json_tokener_get_error(tok) == json_tokener_success) {
		/* Only whitespace may follow the object. */
		for (size_t i = end; i < body->len; i++) {
			if (!strchr(" \t\r\n", body->data[i])) {
				rpc_wipe_put(obj);
				obj = NULL;
				break;
			}
		}
	} else if (obj) {
		rpc_wipe_put(obj);
		obj = NULL;
	}
	json_tokener_free(tok);
	if (obj && !json_object_is_type(obj, json_type_object)) {
		rpc_wipe_put(obj);
		obj = NULL;
	}
	return obj;
}

/* expires_in as an integer or a numeric string; -1 when absent or unusable. */
static int64_t expires_in_of(struct json_object *v)
{
	switch (json_object_get_type(v)) {
	case json_type_int: {
		int64_t n = json_object_get_int64(v);

		return n >= 0 ? n : -1;
	}
	case json_type_double: {
		double d = json_object_get_double(v);

		return d >= 0 && d < 1e15 ? (int64_t)d : -1;
	}
	case json_type_string: {
		const char *s = json_object_get_string(v);
		int64_t n = 0;

		if (!*s || strlen(s) > 15)
			return -1;
		for (; *s; s++) {
			if (*s < '0' || *s > '9')
				return -1;
			n = n * 10 + (*s - '0');
		}
		return n;
	}
	default:
		return -1;
	}
}

/* The keeper's result for a 2xx token response (RFC 6749 5.1), or NULL when
 * it is malformed. The token strings are shared with body. */
static struct json_object *token_result(struct json_object *body, long http_status)
{
	struct json_object *v, *result;

	if (!body || !json_object_object_get_ex(body, "access_token", &v) || !vschar_string(v, false))
		return NULL;
	result = json_object_new_object();
	if (!result)
		fatal("out of memory");
	json_object_object_add(result, "access_token", json_object_get(v));
	if (json_object_object_get_ex(body, "token_type", &v) && vschar_string(v, false))
		json_object_object_add(result, "token_type", json_object_get(v));
	else
		json_object_object_add(result, "token_type", json_object_new_string("Bearer"));
	if (json_object_object_get_ex(body, "expires_in", &v) && expires_in_of(v) >= 0)
		json_object_object_add(result, "expires_in", json_object_new_int64(expires_in_of(v)));
	if (json_object_object_get_ex(body, "refresh_token", &v) && vschar_string(v, false))
		json_object_object_add(result, "refresh_token", json_object_get(v));
	if (json_object_object_get_ex(body, "scope", &v) && vschar_string(v, true))
		json_object_object_add(result, "scope", json_object_get(v));
	json_object_object_add(result, "http_status", json_object_new_int((int)http_status));
	return result;
}

void token_verdict(const struct fetch *f, struct token_verdict *v)
{
	long status = f->status;
	struct json_object *d;

	memset(v, 0, sizeof(*v));
	v->http_status = status;
	if (f->result != CURLE_OK) {
		v->kind = KIND_TRANSIENT;
		fetch_describe_failure(f, v->message, sizeof(v->message));
		return;
	}
	v->answered = true;
	v->body = parse_body(&f->body);
	v->oauth_error = oauth_error_of(v->body);
	if (v->oauth_error && json_object_object_get_ex(v->body, "error_description", &d) &&
	    json_object_is_type(d, json_type_string))
		v->description = json_object_get_string(d);

	if (status >= 200 && status < 300 && v->oauth_error && !json_object_object_get_ex(v->body, "access_token", NULL)) {
		/* Some providers (GitHub among them) answer a refused grant with
		 * 200 and an "error" field: the verdict is the same as a 400's. */
		v->kind = KIND_TERMINAL;
		snprintf(v->message, sizeof(v->message), "HTTP %ld: %s", status, v->oauth_error);
	} else if (status >= 200 && status < 300) {
		v->result = token_result(v->body, status);
		if (!v->result) {
			/* Status and length only: the body may hold tokens. */
			v->kind = KIND_TRANSIENT;
			snprintf(v->message, sizeof(v->message), "HTTP %ld: malformed token response, %zu bytes",
				 status, f->body.len);
		}
	} else if (status == 429 || status >= 500) {
		v->kind = KIND_TRANSIENT;
		snprintf(v->message, sizeof(v->message), "HTTP %ld%s%s", status, v->oauth_error ? ": " : "",
			 v->oauth_error ? v->oauth_error : "");
	} else if (status >= 400 && v->oauth_error) {
		/* invalid_grant, invalid_client and every other OAuth error the
		 * provider gives: retrying the same grant cannot help. */
		v->kind = KIND_TERMINAL;
		snprintf(v->message, sizeof(v->message), "HTTP %ld: %s", status, v->oauth_error);
	} else {
		/* Redirects (not followed) and 4xx without an OAuth error: not the
		 * provider's verdict on the grant, so worth another try later. */
		v->kind = KIND_TRANSIENT;
		snprintf(v->message, sizeof(v->message), "HTTP %ld without an OAuth error response", status);
	}
}

void token_verdict_clear(struct token_verdict *v)
{
	/* The result shares the token strings with body: wiping one wipes both. */
	rpc_wipe_put(v->result);
	rpc_wipe_put(v->body);
	memset(v, 0, sizeof(*v));
}

/* -- the channel to the keeper -- */

void oauth_send(struct oauth *o, struct json_object *msg)
{
	int r = frame_write(bufferevent_get_output(o->chan.bev), msg, PROTO_MAX_MESSAGE);

	if (r) {
		log_error("cannot queue a reply to the keeper: %s", r < 0 ? strerror(-r) : frame_strerror(r));
		oauth_stop(o, 1);
	}
}

void keeper_bug(struct oauth *o, const char *what, const char *detail)
{
	log_error("keeper sent %s%s%s; exiting", what, detail ? ": " : "", detail ? detail : "");
	oauth_stop(o, 1);
}

int param_string(struct json_object *params, const char *key, const char **out)
{
	struct json_object *v;

	*out = NULL;
	if (!json_object_object_get_ex(params, key, &v) || json_object_is_type(v, json_type_null))
		return 0;
	if (!json_object_is_type(v, json_type_string))
		return -EINVAL;
	*out = json_object_get_string(v);
	return 0;
}

int param_timeout(struct json_object *params, long max, long *out)
{
	struct json_object *v;
	int64_t t;

	if (!json_object_object_get_ex(params, "timeout_ms", &v) || !json_object_is_type(v, json_type_int))
		return -EINVAL;
	t = json_object_get_int64(v);
	if (t <= 0 || t > max)
		return -EINVAL;
	*out = (long)t;
	return 0;
}

/* -- oauth.refresh -- */

static struct refresh *refresh_free(struct refresh *r)
{
	if (!r)
		return NULL;
	if (r->pprev) {
		*r->pprev = r->next;
		if (r->next)
			r->next->pprev = r->pprev;
	}
	fetch_free(r->fetch);
	if (r->id)
		json_object_put(r->id);
	free(r->server);
	free(r);
	return NULL;
}

static void refresh_freep(struct refresh **r)
{
	*r = refresh_free(*r);
}

static void refresh_reply_error(struct refresh *r, const char *kind, const char *oauth_error, long http_status,
				const char *message)
{
	struct json_object *msg, *err, *data;

	log_warn("oauth: %s: refresh failed: %s (%s)", r->server, message, kind);
	msg = rpc_error(r->id, RPC_APP_ERROR, kind, message);
	if (!msg)
		fatal("out of memory");
	if (json_object_object_get_ex(msg, "error", &err) && json_object_object_get_ex(err, "data", &data)) {
		if (oauth_error)
			json_object_object_add(data, "oauth_error", json_object_new_string(oauth_error));
		if (http_status > 0)
			json_object_object_add(data, "http_status", json_object_new_int((int)http_status));
	}
	oauth_send(r->o, msg);
	json_object_put(msg);
}

static void refresh_reply_tokens(struct refresh *r, struct token_verdict *v)
{
	struct json_object *msg;
	bool rotated = json_object_object_get_ex(v->result, "refresh_token", NULL);
	int ret;

	msg = rpc_result(r->id, v->result);
	v->result = NULL;
	if (!msg)
		fatal("out of memory");
	ret = frame_write(bufferevent_get_output(r->o->chan.bev), msg, PROTO_MAX_MESSAGE);
	/* The reply shares the token strings with v->body, which the caller wipes. */
	json_object_put(msg);
	if (ret == FRAME_E_TOO_LARGE) {
		refresh_reply_error(r, KIND_TRANSIENT, NULL, v->http_status, "token response too large");
		return;
	}
	if (ret) {
		log_error("cannot queue a reply to the keeper: %s", ret < 0 ? strerror(-ret) : frame_strerror(ret));
		oauth_stop(r->o, 1);
		return;
	}
	log_info("oauth: %s: refreshed (HTTP %ld%s)", r->server, v->http_status,
		 rotated ? ", refresh token rotated" : "");
}

/* The transfer is over: classify it and answer the keeper. */
static void refresh_done(struct fetch *f, void *arg)
{
	struct refresh *r = arg;
	struct token_verdict v;

	token_verdict(f, &v);
	if (v.result)
		refresh_reply_tokens(r, &v);
	else
		refresh_reply_error(r, v.kind, v.oauth_error, v.http_status, v.message);
	token_verdict_clear(&v);
	refresh_free(r);
}

/* Builds the request from the keeper's params; -EINVAL names the bad field. */
static int refresh_prepare(struct refresh *r, struct json_object *params, const char **bad)
{
	const char *endpoint, *refresh_token, *client_id, *client_secret, *auth_method, *resource, *scope,
		*server;
	long timeout_ms;
	struct fetch *f;

#define REQUIRE(cond, field)            \
	do {                            \
		if (!(cond)) {          \
			*bad = (field); \
			return -EINVAL; \
		}                       \
	} while (0)

	REQUIRE(json_object_is_type(params, json_type_object), "params");
	REQUIRE(param_string(params, "server", &server) == 0 && server && *server, "server");
	r->server = strdup(server);
	if (!r->server)
		return -ENOMEM;
	REQUIRE(param_string(params, "token_endpoint", &endpoint) == 0 && endpoint && *endpoint,
		"token_endpoint");
	REQUIRE(param_string(params, "refresh_token", &refresh_token) == 0 && refresh_token && *refresh_token,
		"refresh_token");
	REQUIRE(param_string(params, "client_id", &client_id) == 0 && client_id && *client_id, "client_id");
	REQUIRE(param_string(params, "client_secret", &client_secret) == 0, "client_secret");
	REQUIRE(param_string(params, "auth_method", &auth_method) == 0 && auth_method, "auth_method");
	REQUIRE(strcmp(auth_method, "none") == 0 || strcmp(auth_method, "client_secret_basic") == 0 ||
			strcmp(auth_method, "client_secret_post") == 0,
		"auth_method");
	REQUIRE(strcmp(auth_method, "none") == 0 || client_secret, "client_secret");
	REQUIRE(param_string(params, "resource", &resource) == 0, "resource");
	REQUIRE(param_string(params, "scope", &scope) == 0, "scope");
	REQUIRE(param_timeout(params, OAUTH_MAX_TIMEOUT_MS, &timeout_ms) == 0, "timeout_ms");
#undef REQUIRE

	f = r->fetch = fetch_new(r->o, endpoint, timeout_ms, refresh_done, r);
	if (!f)
		return -ENOMEM;
	if (form_add(&f->req, "grant_type", "refresh_token") < 0 ||
	    form_add(&f->req, "refresh_token", refresh_token) < 0 ||
	    fetch_client_auth(f, auth_method, client_id, client_secret) < 0 ||
	    (resource && form_add(&f->req, "resource", resource) < 0) ||
	    (scope && form_add(&f->req, "scope", scope) < 0) || fetch_header(f, "Accept: application/json") < 0 ||
	    fetch_post(f, "application/x-www-form-urlencoded") < 0)
		return -ENOMEM;
	return 0;
}

static void oauth_refresh(struct oauth *o, struct rpc_msg *m)
{
	_cleanup_(refresh_freep) struct refresh *r = NULL;
	const char *bad = NULL;
	int ret;

	r = calloc(1, sizeof(*r));
	if (!r)
		fatal("out of memory");
	r->o = o;
	r->id = json_object_get(m->id);
	ret = refresh_prepare(r, m->params, &bad);
	if (ret == -EINVAL) {
		keeper_bug(o, "oauth.refresh with bad params", bad);
		return;
	}
	if (ret < 0 || fetch_start(r->fetch) < 0)
		fatal("out of memory preparing a refresh");
	log_debug("oauth: %s: refreshing", r->server);
	r->next = o->refreshes;
	if (r->next)
		r->next->pprev = &r->next;
	r->pprev = &o->refreshes;
	o->refreshes = TAKE_PTR(r);
}

/* -- libcurl multi on the libevent loop (common/curlev.c) -- */

static void oauth_transfer_done(CURL *easy, CURLcode result, void *arg)
{
	struct oauth *o = arg;
	struct fetch *f;
	char *priv = NULL;

	curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
	f = (struct fetch *)priv;
	f->result = result;
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &f->status);
	/* While exiting nobody is answered; main frees every owner. */
	if (o->chan.exit_code < 0)
		f->done(f, f->arg);
	else
		curl_multi_remove_handle(curlev_multi(o->curl), easy);
}

/* -- messages from the keeper -- */

static const struct entry oauth_entry = {
	.program = "mcpkeeper-oauth",
	.role = ROLE_OAUTH,
};

/* The oauth child's hello has no params of its own: the sandbox is in
 * place since main(), before any thread existed. */
static void oauth_hello(struct oauth *o, struct rpc_msg *m)
{
	if (entry_hello_check(&oauth_entry, &o->chan, m) != 0)
		return;
	entry_hello_reply(&o->chan, m, o->landlock, NULL);
	o->hello_done = true;
	log_debug("hello: protocol version %d, Landlock %s", PROTO_VERSION, o->landlock);
}

static void oauth_dispatch(struct oauth *o, struct rpc_msg *m)
{
	static const struct {
		const char *method;
		void (*fn)(struct oauth *o, struct rpc_msg *m);
	} requests[] = {
		{ METHOD_OAUTH_REFRESH, oauth_refresh },     { METHOD_OAUTH_LISTEN, login_listen },
		{ METHOD_OAUTH_DISCOVER, login_discover },   { METHOD_OAUTH_REGISTER, login_register },
		{ METHOD_OAUTH_AUTHORIZE, login_authorize }, { METHOD_OAUTH_REVOKE, login_revoke },
	};

	if (!o->hello_done) {
		oauth_hello(o, m);
		return;
	}
	if (m->type == RPC_NOTIFICATION && strcmp(m->method, METHOD_OAUTH_CANCEL) == 0) {
		login_cancel(o, m);
		return;
	}
	if (m->type != RPC_REQUEST) {
		keeper_bug(o, m->type == RPC_NOTIFICATION ? "an unknown notification" : "a reply to no request",
			   m->type == RPC_NOTIFICATION ? m->method : NULL);
		return;
	}
	for (size_t i = 0; i < ARRAY_SIZE(requests); i++) {
		if (strcmp(m->method, requests[i].method) == 0) {
			requests[i].fn(o, m);
			return;
		}
	}
	keeper_bug(o, "an unknown method", m->method);
}

static void channel_dispatch(void *ctx, struct rpc_msg *m)
{
	oauth_dispatch(ctx, m);
}

static void channel_bug(void *ctx, const char *what, const char *detail)
{
	keeper_bug(ctx, what, detail);
}

static const struct channel_ops channel_ops = {
	.dispatch = channel_dispatch,
	.bug = channel_bug,
};

void oauth_stop(struct oauth *o, int code)
{
	channel_stop(&o->chan, code);
}

/* -- start-up -- */

int main(int argc, char **argv)
{
	struct oauth o = { .chan.exit_code = -1 };

	entry_start(&oauth_entry, argc, argv);
	/* Landlock before any thread exists (curl's resolver makes them): they
	 * inherit it. System paths and CA certificates only; TCP bind and
	 * connect stay allowed (the ruleset handles file access). */
	if (entry_sandbox(NULL, o.landlock, sizeof(o.landlock)) < 0)
		fatal("cannot apply the Landlock sandbox: %s", o.landlock);

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		fatal("libcurl initialisation failed");

	o.base = event_base_new();
	if (!o.base)
		fatal("out of memory");
	o.curl = curlev_new(o.base, oauth_transfer_done, &o);
	if (!o.curl)
		fatal("out of memory");
	if (channel_open(&o.chan, o.base, CHANNEL_FD, &channel_ops, &o) < 0)
		fatal("cannot watch fd %d", CHANNEL_FD);

	event_base_dispatch(o.base);

	while (o.refreshes)
		refresh_free(o.refreshes);
	login_free_all(&o);
	curlev_free(o.curl);
	curl_global_cleanup();
	channel_close(&o.chan);
	event_base_free(o.base);
	return o.chan.exit_code < 0 ? 0 : o.chan.exit_code;
}
