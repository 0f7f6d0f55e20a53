/*
 * mcpkeeper-oauth: the oauth child. It does the token-endpoint HTTP for the
 * keeper, so that the keeper parses no network input.
 *
 * Started by mcpkeeperd (fork+exec) with its channel on fd 3: a hello, then
 * any number of concurrent oauth.refresh requests, each one refresh_token
 * grant (RFC 6749 section 6) answered with the parsed token response or a
 * classified error (common/proto.h has the contract). libcurl runs in multi
 * mode driven by the one libevent loop.
 *
 * What it may touch: fd 3, stderr for logs and the network. It holds a
 * refresh token only for the one request it is serving, never the master
 * key or the database; where the kernel offers Landlock it cannot open the
 * state directory at all (read-only access to system paths, no writes).
 *
 * Trust: the keeper is a sibling. A message from it that is malformed or
 * unexpected is a keeper bug: log it and exit 1 (the keeper restarts us).
 * A token endpoint is the network: anything it sends ends that one request
 * with an error, and its response body is never logged, because it may hold
 * tokens. The lifetime belongs to the keeper: termination signals are
 * ignored, and end of stream on fd 3 ends the process.
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
#include "frame.h"
#include "log.h"
#include "proto.h"
#include "sandbox.h"
#include "util.h"

#define CHANNEL_FD 3
#define OAUTH_MAX_BODY (1024 * 1024)
#define OAUTH_CONNECT_TIMEOUT_S 10L
/* Far above any sane refresh.timeout; a larger value is a keeper bug. */
#define OAUTH_MAX_TIMEOUT_MS (15L * 60 * 1000)
/* RFC 6749 error codes are short words; anything else is not one. */
#define OAUTH_ERROR_MAX 64

struct refresh;

struct oauth {
	struct event_base *base;
	struct bufferevent *bev;
	struct curlev *curl;
	struct refresh *refreshes;	/* in flight */
	bool hello_done;
	int exit_code;			/* -1 while running */
	char landlock[128];
};

/* A byte buffer for bodies that may hold secrets: wiped whenever it moves. */
struct buf {
	char *data;
	size_t len, cap;
};

struct refresh {
	struct oauth *o;
	struct refresh *next, **pprev;
	struct json_object *id;
	char *server;
	long timeout_ms;
	CURL *easy;
	struct curl_slist *headers;
	struct buf form;		/* request body: refresh token, maybe the client secret */
	struct buf body;		/* response body: tokens */
	bool too_large;
	char errbuf[CURL_ERROR_SIZE];
};

static void oauth_stop(struct oauth *o, int code);

/* -- buffers -- */

static void buf_wipe(struct buf *b)
{
	if (b->data) {
		sodium_memzero(b->data, b->cap);
		free(b->data);
	}
	memset(b, 0, sizeof(*b));
}

/* Makes room for more bytes plus a NUL; a move wipes the old copy (no realloc). */
static int buf_reserve(struct buf *b, size_t more)
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

static int buf_add(struct buf *b, const void *p, size_t n)
{
	if (buf_reserve(b, n) < 0)
		return -ENOMEM;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

static int buf_adds(struct buf *b, const char *s)
{
	return buf_add(b, s, strlen(s));
}

/* application/x-www-form-urlencoded serialisation of one value (WHATWG URL,
 * as RFC 6749 appendix B asks): unreserved bytes as they are, space as '+',
 * everything else percent-encoded. */
static int buf_add_form_encoded(struct buf *b, const char *s)
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

static int form_add(struct buf *form, const char *key, const char *value)
{
	if ((form->len && buf_add(form, "&", 1) < 0) || buf_adds(form, key) < 0 || buf_add(form, "=", 1) < 0)
		return -ENOMEM;
	return buf_add_form_encoded(form, value);
}

/* -- one refresh -- */

static struct refresh *refresh_free(struct refresh *r)
{
	if (!r)
		return NULL;
	if (r->pprev) {
		*r->pprev = r->next;
		if (r->next)
			r->next->pprev = r->pprev;
	}
	if (r->easy) {
		curl_multi_remove_handle(curlev_multi(r->o->curl), r->easy);
		curl_easy_cleanup(r->easy);
	}
	/* The Authorization header holds the client secret. */
	for (struct curl_slist *h = r->headers; h; h = h->next)
		sodium_memzero(h->data, strlen(h->data));
	curl_slist_free_all(r->headers);
	buf_wipe(&r->form);
	buf_wipe(&r->body);
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

static size_t refresh_write_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct refresh *r = arg;
	size_t n = size * nmemb;

	if (n > OAUTH_MAX_BODY - r->body.len) {
		r->too_large = true;
		return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
	}
	if (buf_add(&r->body, p, n) < 0)
		return 0;
	return n;
}

/* RFC 6749 5.2: error = 1*( %x20-21 / %x23-5B / %x5D-7E ). Anything else is
 * not an OAuth error code and is neither logged nor passed on. */
static const char *oauth_error_of(struct json_object *obj)
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
static bool vschar_string(struct json_object *v, bool allow_empty)
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

/* The response body as a JSON object, or NULL. */
static struct json_object *parse_body(const struct buf *body)
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

static void oauth_send(struct oauth *o, struct json_object *msg)
{
	int r = frame_write(bufferevent_get_output(o->bev), msg, PROTO_MAX_MESSAGE);

	if (r) {
		log_error("cannot queue a reply to the keeper: %s", r < 0 ? strerror(-r) : frame_strerror(r));
		oauth_stop(o, 1);
	}
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

/* A 2xx response: the token response of RFC 6749 5.1, or a transient error. */
static void refresh_reply_tokens(struct refresh *r, struct json_object *body, long http_status)
{
	struct json_object *v, *result, *msg;
	bool rotated;
	int ret;

	if (!body || !json_object_object_get_ex(body, "access_token", &v) || !vschar_string(v, false)) {
		char message[96];

		/* Status and length only: the body may hold tokens. */
		snprintf(message, sizeof(message), "HTTP %ld: malformed token response, %zu bytes", http_status,
			 r->body.len);
		refresh_reply_error(r, KIND_TRANSIENT, NULL, http_status, message);
		return;
	}
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
	rotated = json_object_object_get_ex(result, "refresh_token", NULL);

	msg = rpc_result(r->id, result);
	if (!msg)
		fatal("out of memory");
	ret = frame_write(bufferevent_get_output(r->o->bev), msg, PROTO_MAX_MESSAGE);
	/* The reply shares the token strings with body: the caller wipes those. */
	json_object_put(msg);
	if (ret == FRAME_E_TOO_LARGE) {
		refresh_reply_error(r, KIND_TRANSIENT, NULL, http_status, "token response too large");
		return;
	}
	if (ret) {
		log_error("cannot queue a reply to the keeper: %s", ret < 0 ? strerror(-ret) : frame_strerror(ret));
		oauth_stop(r->o, 1);
		return;
	}
	log_info("oauth: %s: refreshed (HTTP %ld%s)", r->server, http_status,
		 rotated ? ", refresh token rotated" : "");
}

/* One transfer is over: classify it and answer the keeper. */
static void refresh_done(struct refresh *r, CURLcode code)
{
	struct json_object *body = NULL;
	const char *oauth_error;
	long status = 0;
	char message[CURL_ERROR_SIZE + 64];

	curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
	if (code != CURLE_OK) {
		if (r->too_large || code == CURLE_FILESIZE_EXCEEDED)
			snprintf(message, sizeof(message), "response larger than %d bytes", OAUTH_MAX_BODY);
		else if (code == CURLE_OPERATION_TIMEDOUT)
			snprintf(message, sizeof(message), "timed out: %s",
				 r->errbuf[0] ? r->errbuf : curl_easy_strerror(code));
		else
			snprintf(message, sizeof(message), "network error: %s",
				 r->errbuf[0] ? r->errbuf : curl_easy_strerror(code));
		refresh_reply_error(r, KIND_TRANSIENT, NULL, status, message);
		return;
	}

	body = parse_body(&r->body);
	oauth_error = oauth_error_of(body);
	if (status >= 200 && status < 300 && oauth_error && !json_object_object_get_ex(body, "access_token", NULL)) {
		/* Some providers (GitHub among them) answer a refused grant with
		 * 200 and an "error" field: the verdict is the same as a 400's. */
		snprintf(message, sizeof(message), "HTTP %ld: %s", status, oauth_error);
		refresh_reply_error(r, KIND_TERMINAL, oauth_error, status, message);
	} else if (status >= 200 && status < 300) {
		refresh_reply_tokens(r, body, status);
	} else if (status == 429 || status >= 500) {
		snprintf(message, sizeof(message), "HTTP %ld%s%s", status, oauth_error ? ": " : "",
			 oauth_error ? oauth_error : "");
		refresh_reply_error(r, KIND_TRANSIENT, oauth_error, status, message);
	} else if (status >= 400 && oauth_error) {
		/* invalid_grant, invalid_client and every other OAuth error the
		 * provider gives: retrying the same grant cannot help. */
		snprintf(message, sizeof(message), "HTTP %ld: %s", status, oauth_error);
		refresh_reply_error(r, KIND_TERMINAL, oauth_error, status, message);
	} else {
		/* Redirects (not followed) and 4xx without an OAuth error: not the
		 * provider's verdict on the grant, so worth another try later. */
		snprintf(message, sizeof(message), "HTTP %ld without an OAuth error response", status);
		refresh_reply_error(r, KIND_TRANSIENT, NULL, status, message);
	}
	rpc_wipe_put(body);
}

/* -- libcurl multi on the libevent loop (common/curlev.c) -- */

static void oauth_transfer_done(CURL *easy, CURLcode result, void *arg)
{
	struct oauth *o = arg;
	struct refresh *r;
	char *priv = NULL;

	curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
	r = (struct refresh *)priv;
	if (o->exit_code < 0)
		refresh_done(r, result);
	refresh_free(r);
}

/* -- messages from the keeper -- */

/* A keeper bug: say what, and end (the keeper restarts us). */
static void keeper_bug(struct oauth *o, const char *what, const char *detail)
{
	log_error("keeper sent %s%s%s; exiting", what, detail ? ": " : "", detail ? detail : "");
	oauth_stop(o, 1);
}

/* Reads an optional string parameter: 0 (and *out NULL when absent or null),
 * or -EINVAL when it is there with another type. */
static int param_string(struct json_object *params, const char *key, const char **out)
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

/* Basic credentials of RFC 6749 2.3.1: both parts form-urlencoded first. */
static int add_basic_auth(struct refresh *r, const char *client_id, const char *client_secret)
{
	struct buf cred = { 0 }, header = { 0 };
	size_t b64_len;
	struct curl_slist *h;
	int ret = -ENOMEM;

	if (buf_add_form_encoded(&cred, client_id) < 0 || buf_add(&cred, ":", 1) < 0 ||
	    buf_add_form_encoded(&cred, client_secret) < 0)
		goto out;
	b64_len = sodium_base64_ENCODED_LEN(cred.len, sodium_base64_VARIANT_ORIGINAL);
	if (buf_adds(&header, "Authorization: Basic ") < 0 || buf_reserve(&header, b64_len) < 0)
		goto out;
	sodium_bin2base64(header.data + header.len, b64_len, (const unsigned char *)cred.data, cred.len,
			  sodium_base64_VARIANT_ORIGINAL);
	h = curl_slist_append(r->headers, header.data);
	if (!h)
		goto out;
	r->headers = h;
	ret = 0;
out:
	buf_wipe(&cred);
	buf_wipe(&header);
	return ret;
}

/* Builds the request from the keeper's params; -EINVAL names the bad field. */
static int refresh_prepare(struct refresh *r, struct json_object *params, const char **bad)
{
	const char *endpoint, *refresh_token, *client_id, *client_secret, *auth_method, *resource, *scope,
		*server;
	struct json_object *v;
	CURL *e;
	int64_t timeout;

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
	REQUIRE(json_object_object_get_ex(params, "timeout_ms", &v) && json_object_is_type(v, json_type_int),
		"timeout_ms");
	timeout = json_object_get_int64(v);
	REQUIRE(timeout > 0 && timeout <= OAUTH_MAX_TIMEOUT_MS, "timeout_ms");
	r->timeout_ms = (long)timeout;
#undef REQUIRE

	if (form_add(&r->form, "grant_type", "refresh_token") < 0 ||
	    form_add(&r->form, "refresh_token", refresh_token) < 0)
		return -ENOMEM;
	if (strcmp(auth_method, "client_secret_basic") == 0) {
		if (add_basic_auth(r, client_id, client_secret) < 0)
			return -ENOMEM;
	} else {
		if (form_add(&r->form, "client_id", client_id) < 0)
			return -ENOMEM;
		if (strcmp(auth_method, "client_secret_post") == 0 &&
		    form_add(&r->form, "client_secret", client_secret) < 0)
			return -ENOMEM;
	}
	if (resource && form_add(&r->form, "resource", resource) < 0)
		return -ENOMEM;
	if (scope && form_add(&r->form, "scope", scope) < 0)
		return -ENOMEM;

	for (const char *const *h = (const char *const[]){ "Accept: application/json",
							   "Content-Type: application/x-www-form-urlencoded",
							   "Expect:", NULL };
	     *h; h++) {
		struct curl_slist *l = curl_slist_append(r->headers, *h);

		if (!l)
			return -ENOMEM;
		r->headers = l;
	}

	e = r->easy = curl_easy_init();
	if (!e)
		return -ENOMEM;
	if (curl_easy_setopt(e, CURLOPT_URL, endpoint) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, OAUTH_CONNECT_TIMEOUT_S) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, r->timeout_ms) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)OAUTH_MAX_BODY) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_POST, 1L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->form.data) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->form.len) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_USERAGENT, "mcpkeeper/" MCPKEEPER_VERSION) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, refresh_write_cb) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_WRITEDATA, r) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_PRIVATE, r) != CURLE_OK)
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
	if (ret < 0)
		fatal("out of memory preparing a refresh");
	if (curl_multi_add_handle(curlev_multi(o->curl), r->easy) != CURLM_OK)
		fatal("curl_multi_add_handle failed");
	log_debug("oauth: %s: refreshing", r->server);
	r->next = o->refreshes;
	if (r->next)
		r->next->pprev = &r->next;
	r->pprev = &o->refreshes;
	o->refreshes = TAKE_PTR(r);
}

static void oauth_hello(struct oauth *o, struct rpc_msg *m)
{
	struct json_object *v, *result, *msg;
	const char *role = NULL, *level = NULL;
	char why[128];
	int version = -1;

	if (m->type != RPC_REQUEST || strcmp(m->method, METHOD_HELLO) != 0) {
		log_error("keeper sent %s before the hello; exiting", m->method ? m->method : "a reply");
		if (m->type == RPC_REQUEST) {
			msg = rpc_error(m->id, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST, "hello expected");
			oauth_send(o, msg);
			json_object_put(msg);
		}
		oauth_stop(o, 1);
		return;
	}
	if (json_object_is_type(m->params, json_type_object)) {
		if (json_object_object_get_ex(m->params, "version", &v) && json_object_is_type(v, json_type_int))
			version = json_object_get_int(v);
		param_string(m->params, "role", &role);
		param_string(m->params, "log_level", &level);
	}
	why[0] = '\0';
	if (version != PROTO_VERSION)
		snprintf(why, sizeof(why), "protocol version %d not supported (this child speaks %d)", version,
			 PROTO_VERSION);
	else if (!role || strcmp(role, ROLE_OAUTH) != 0)
		snprintf(why, sizeof(why), "this is the %s child, not %.32s", ROLE_OAUTH, role ? role : "(none)");
	if (why[0]) {
		log_error("hello refused: %s; exiting", why);
		msg = rpc_error(m->id, RPC_INVALID_PARAMS, KIND_INVALID_PARAMS, why);
		oauth_send(o, msg);
		json_object_put(msg);
		oauth_stop(o, 1);
		return;
	}
	if (level) {
		enum log_level l;

		if (log_level_parse(level, &l) == 0)
			log_set_level(l);
		else
			log_warn("hello: unknown log_level %.32s, keeping the default", level);
	}

	result = json_object_new_object();
	json_object_object_add(result, "version", json_object_new_int(PROTO_VERSION));
	json_object_object_add(result, "pid", json_object_new_int((int)getpid()));
	json_object_object_add(result, "landlock", json_object_new_string(o->landlock));
	msg = rpc_result(m->id, result);
	oauth_send(o, msg);
	json_object_put(msg);
	o->hello_done = true;
	log_debug("hello: protocol version %d, Landlock %s", PROTO_VERSION, o->landlock);
}

static void oauth_dispatch(struct oauth *o, struct rpc_msg *m)
{
	if (!o->hello_done) {
		oauth_hello(o, m);
		return;
	}
	if (m->type != RPC_REQUEST) {
		keeper_bug(o, m->type == RPC_NOTIFICATION ? "a notification" : "a reply to no request",
			   m->type == RPC_NOTIFICATION ? m->method : NULL);
		return;
	}
	if (strcmp(m->method, METHOD_OAUTH_REFRESH) == 0)
		oauth_refresh(o, m);
	else
		keeper_bug(o, "an unknown method", m->method);
}

static void channel_read_cb(struct bufferevent *bev, void *arg)
{
	struct oauth *o = arg;

	while (o->exit_code < 0) {
		struct rpc_msg m;
		char detail[128];
		int r = frame_read(bufferevent_get_input(bev), PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			return;
		if (r != 0) {
			rpc_msg_clear(&m);
			keeper_bug(o, "a malformed message", r < 0 ? strerror(-r) : detail);
			return;
		}
		oauth_dispatch(o, &m);
		/* The request carried a refresh token and maybe a client secret. */
		rpc_wipe_put(json_object_get(m.params));
		rpc_msg_clear(&m);
	}
}

static void channel_write_cb(struct bufferevent *bev, void *arg)
{
	struct oauth *o = arg;

	/* Output drained: an exit waiting for its last reply may go now. */
	if (o->exit_code >= 0)
		event_base_loopbreak(o->base);
}

static void channel_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct oauth *o = arg;

	if (what & BEV_EVENT_EOF) {
		log_debug("channel closed by the keeper; exiting");
		o->exit_code = o->exit_code > 0 ? o->exit_code : 0;
	} else if (what & BEV_EVENT_ERROR) {
		log_error("channel to the keeper: %s; exiting", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		o->exit_code = 1;
	} else {
		return;
	}
	event_base_loopbreak(o->base);
}

/* Ends the loop with code once every queued reply is written. */
static void oauth_stop(struct oauth *o, int code)
{
	if (o->exit_code < 0)
		o->exit_code = code;
	bufferevent_disable(o->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(o->bev)) == 0)
		event_base_loopbreak(o->base);
}

/* -- start-up -- */

static void channel_check(void)
{
	struct stat st;
	int domain = 0;
	socklen_t len = sizeof(domain);

	if (fstat(CHANNEL_FD, &st) < 0 || !S_ISSOCK(st.st_mode) ||
	    getsockopt(CHANNEL_FD, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 || domain != AF_UNIX)
		fatal("fd %d is not a Unix socket: this program must be started by mcpkeeperd", CHANNEL_FD);
	if (fd_set_cloexec(CHANNEL_FD, 1) < 0 || fd_set_nonblock(CHANNEL_FD, 1) < 0)
		fatal("cannot set up fd %d: %m", CHANNEL_FD);
}

#if defined(__SANITIZE_ADDRESS__)
#define OAUTH_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define OAUTH_SANITIZER 1
#endif
#endif

/* Landlock: system paths for libraries, CA certificates and name
 * resolution, read-only; nothing else, in particular not the state
 * directory. SSL_CERT_FILE / SSL_CERT_DIR (which the keeper passes on) name
 * other CA locations the TLS library will read. Nothing here needs /proc;
 * LeakSanitizer does (it lists our threads in /proc/PID/task at exit), so
 * sanitizer builds add our own /proc/PID directory. */
static void oauth_sandbox(struct oauth *o)
{
	const char *paths[] = { "/etc", "/usr", "/lib", "/lib64", "/bin", "/sbin", "/dev/urandom",
				getenv("SSL_CERT_FILE"), getenv("SSL_CERT_DIR"),
#ifdef OAUTH_SANITIZER
				"/proc/self",
#endif
				NULL };
	const char *compact[ARRAY_SIZE(paths)];
	size_t n = 0;
	int r;

	for (size_t i = 0; i < ARRAY_SIZE(paths); i++)
		if (paths[i] && paths[i][0] == '/')
			compact[n++] = paths[i];
	compact[n] = NULL;

	r = sandbox_landlock_readonly(compact, o->landlock, sizeof(o->landlock));
	if (r < 0)
		fatal("cannot apply the Landlock sandbox: %s", o->landlock);
	if (r == SANDBOX_UNAVAILABLE)
		log_info("Landlock is not available on this kernel; relying on uid and file modes");
}

int main(int argc, char **argv)
{
	struct oauth o = { .exit_code = -1 };

	log_init("mcpkeeper-oauth");
	if (argc > 1)
		fatal("takes no arguments: this program must be started by mcpkeeperd");
	/* exec reset both: no core file, no ptrace, no /proc/PID/mem for our peers. */
	if (proc_no_core_dumps() < 0)
		fatal("cannot disable core dumps: %m");
	channel_check();
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);

	/* Before any thread exists (curl's resolver makes them): they inherit it. */
	oauth_sandbox(&o);

	if (sodium_init() < 0)
		fatal("libsodium initialisation failed");
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		fatal("libcurl initialisation failed");

	o.base = event_base_new();
	if (!o.base)
		fatal("out of memory");
	o.curl = curlev_new(o.base, oauth_transfer_done, &o);
	o.bev = bufferevent_socket_new(o.base, CHANNEL_FD, BEV_OPT_CLOSE_ON_FREE);
	if (!o.curl || !o.bev)
		fatal("out of memory");

	frame_bev_setup(o.bev, PROTO_MAX_MESSAGE);
	bufferevent_setcb(o.bev, channel_read_cb, channel_write_cb, channel_event_cb, &o);
	if (bufferevent_enable(o.bev, EV_READ | EV_WRITE) < 0)
		fatal("cannot watch fd %d", CHANNEL_FD);

	event_base_dispatch(o.base);

	while (o.refreshes)
		refresh_free(o.refreshes);
	curlev_free(o.curl);
	curl_global_cleanup();
	bufferevent_free(o.bev);
	event_base_free(o.base);
	return o.exit_code < 0 ? 0 : o.exit_code;
}
