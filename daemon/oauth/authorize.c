/*
 * The browser's half of a login: oauth.listen binds 127.0.0.1:port for one
 * server's redirect (libevent's evhttp on the one loop); oauth.authorize
 * makes the PKCE verifier (S256) and the state, sends the keeper the URL
 * for the browser and waits for the redirect; the redirect is checked
 * (state, then RFC 9207 iss, then error, then code) before token.c
 * exchanges the code; oauth.cancel abandons the login. The browser gets one
 * short page whatever happens. A request without this login's state, or to
 * another path, gets its page and changes nothing: only the real redirect
 * (or the deadline, or oauth.cancel) ends a login.
 *
 * What it may touch: TCP listeners on 127.0.0.1 and the connections a
 * browser makes to them, with small limits on what it may send (head
 * LISTEN_MAX_HEADERS, body LISTEN_MAX_BODY, GET only, every connection
 * closed after its one answer, LISTEN_CONN_TIMEOUT_S idle). The
 * verifier and state live in sodium_malloc'ed memory; the redirect's query,
 * which holds the code, is wiped once read. Everything a page echoes is
 * HTML-escaped.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <sodium.h>

#include "frame.h"
#include "log.h"
#include "oauth.h"
#include "params.h"
#include "proto.h"
#include "request.h"
#include "util.h"

#define CALLBACK_PATH "/oauth/callback"
/* Limits for what a browser may send to the listener. */
#define LISTEN_MAX_HEADERS 8192
#define LISTEN_MAX_BODY 1024
#define LISTEN_CONN_TIMEOUT_S 60
#define LISTEN_BACKLOG 16
/* A person at a browser may take a while; longer is a keeper bug. */
#define AUTHORIZE_MAX_TIMEOUT_MS (60L * 60 * 1000)
/* 32 random bytes in base64url without padding: 43 characters and a NUL. */
#define PKCE_RANDOM_BYTES 32
#define B64_43 sodium_base64_ENCODED_LEN(PKCE_RANDOM_BYTES, sodium_base64_VARIANT_URLSAFE_NO_PADDING)

/* -- small helpers -- */

/* "N s" for a timeout in milliseconds, to the nearest second (the keeper
 * passes what is left of its own deadline, a few ms short of it). */
static void seconds_text(long ms, char *out, size_t len)
{
	if (ms >= 1000)
		snprintf(out, len, "%ld s", (ms + 500) / 1000);
	else
		snprintf(out, len, "%.1f s", (double)ms / 1000.0);
}

/* RFC 3986 percent-encoding of one query value: unreserved stays. */
static int buf_add_uri_encoded(struct buf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";

	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		char enc[3] = { '%', hex[*p >> 4], hex[*p & 0xf] };
		int r;

		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
		    *p == '-' || *p == '.' || *p == '_' || *p == '~')
			r = buf_add(b, p, 1);
		else
			r = buf_add(b, enc, 3);
		if (r < 0)
			return r;
	}
	return 0;
}

/* -- the browser's pages -- */

void page_send(struct evhttp_request *req, int status, const char *title, const char *text)
{
	static const char *const headers[][2] = {
		{ "Content-Type", "text/html; charset=utf-8" },
		{ "Cache-Control", "no-store" },
		{ "Referrer-Policy", "no-referrer" },
		{ "X-Content-Type-Options", "nosniff" },
		{ "X-Frame-Options", "DENY" },
		{ "Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'" },
		{ "Connection", "close" },
	};
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct evbuffer *b = evbuffer_new();
	char *t = evhttp_htmlescape(title), *x = evhttp_htmlescape(text);
	const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found" : "Bad Request";

	if (!b || !t || !x)
		fatal("out of memory");
	for (size_t i = 0; i < ARRAY_SIZE(headers); i++)
		evhttp_add_header(out, headers[i][0], headers[i][1]);
	evbuffer_add_printf(b,
			    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>%s</title>"
			    "<style>body{font-family:sans-serif;margin:3em auto;max-width:40em}</style></head>\n"
			    "<body><h1>%s</h1>\n<p>%s</p></body></html>\n",
			    t, t, x);
	evhttp_send_reply(req, status, reason, b);
	evbuffer_free(b);
	free(t);
	free(x);
}

static void page_no_login(struct evhttp_request *req)
{
	page_send(req, 400, "No login is waiting",
		  "No login is waiting on this port. Start one with mcpctl auth login, then use the link it gives.");
}

/* -- the redirect -- */

/* The value of key in q, counting how often it appears. */
static const char *query_get(struct evkeyvalq *q, const char *key, int *count)
{
	const char *v = NULL;
	struct evkeyval *kv;

	*count = 0;
	TAILQ_FOREACH(kv, q, next) {
		if (strcmp(kv->key, key) == 0) {
			if (!v)
				v = kv->value;
			(*count)++;
		}
	}
	return v;
}

static void query_wipe(struct evkeyvalq *q)
{
	struct evkeyval *kv;

	TAILQ_FOREACH(kv, q, next)
		sodium_memzero(kv->value, strlen(kv->value));
	evhttp_clear_headers(q);
}

/* A request to the callback that is not this login's redirect: its state
 * is missing, repeated or another one (a stale tab, or a page elsewhere
 * that made the browser send it). It gets a 400 page that echoes nothing,
 * and the login keeps waiting for the real redirect until its deadline:
 * anyone who can make a browser send a request must not be able to end
 * a login. The first one per login is a warning, the rest debug lines. */
static void authorize_not_this_login(struct login *l, struct evhttp_request *req)
{
	l->n_foreign++;
	log_msg(l->n_foreign == 1 ? LOG_LEVEL_WARN : LOG_LEVEL_DEBUG,
		"oauth: %s: a request to the redirect listener without this login's state (%u so far); "
		"answered 400, still waiting for the real redirect",
		l->server, l->n_foreign);
	page_send(req, 400, "Not this login",
		  "This request does not belong to the login in progress: its state is missing or wrong. "
		  "The login is still waiting for the authorization server's redirect; nothing was changed.");
}

/* The browser's redirect (RFC 6749 4.1.2, RFC 9207): checked in the order
 * that keeps forged answers out: state, then iss, then error, then code.
 * Only a redirect that carries this login's state may end the login. */
static void authorize_redirect(struct login *l, struct evhttp_request *req, const char *query)
{
	struct evkeyvalq q;
	const char *state, *iss, *error, *code;
	int n_state = 0, n_iss, n_error, n_code, n_desc;
	char message[MESSAGE_MAX];

	TAILQ_INIT(&q);
	state = query && evhttp_parse_query_str(query, &q) == 0 ? query_get(&q, "state", &n_state) : NULL;
	/* q has what we need: the request's copies go now, before any answer,
	 * which may free the request (libevent frees one without a connection
	 * at once). */
	request_wipe_query(req);
	if (!state || n_state != 1 || strlen(state) != strlen(l->state) ||
	    sodium_memcmp(state, l->state, strlen(l->state)) != 0) {
		query_wipe(&q);
		authorize_not_this_login(l, req);
		return;
	}
	l->browser = req;
	l->phase = LOGIN_EXCHANGING;
	iss = query_get(&q, "iss", &n_iss);
	error = query_get(&q, "error", &n_error);
	code = query_get(&q, "code", &n_code);
	query_get(&q, "error_description", &n_desc);
	if (n_iss > 1 || n_error > 1 || n_code > 1 || n_desc > 1) {
		login_fail(l, KIND_TERMINAL, LOGIN_R_DENIED, NULL, 0, "the redirect repeats a parameter");
		goto out;
	}
	if (iss && strcmp(iss, l->issuer) != 0) {
		char got[DESCRIPTION_MAX + 1];

		sanitise_text(iss, got, sizeof(got), DESCRIPTION_MAX);
		snprintf(message, sizeof(message), "the redirect names issuer %s, expected %s (RFC 9207)", got,
			 l->issuer);
		login_fail(l, KIND_TERMINAL, LOGIN_R_ISS, NULL, 0, message);
		goto out;
	}
	if (!iss && l->iss_supported) {
		snprintf(message, sizeof(message),
			 "the redirect carries no iss, but %s advertises it (RFC 9207); refusing the answer", l->issuer);
		login_fail(l, KIND_TERMINAL, LOGIN_R_ISS, NULL, 0, message);
		goto out;
	}
	if (error) {
		struct json_object *e = json_object_new_object();
		const char *oauth_error;

		/* The same validation as for token endpoint errors. */
		json_object_object_add(e, "error", json_object_new_string(error));
		oauth_error = oauth_error_of(e);
		if (oauth_error)
			login_refusal_text(message, sizeof(message), "the authorization server refused", oauth_error,
				     query_get(&q, "error_description", &n_desc));
		else
			snprintf(message, sizeof(message), "the authorization server refused (with a malformed error)");
		login_fail(l, KIND_TERMINAL, LOGIN_R_DENIED, oauth_error, 0, message);
		json_object_put(e);
		goto out;
	}
	if (!code || !*code) {
		login_fail(l, KIND_TERMINAL, LOGIN_R_DENIED, NULL, 0, "the redirect carries no authorization code");
		goto out;
	}
	log_info("oauth: %s: the browser came back; exchanging the code", l->server);
	token_exchange(l, code);
out:
	query_wipe(&q);
}

static void authorize_http_cb(struct evhttp_request *req, void *arg)
{
	struct login *l = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;

	if (!path || strcmp(path, CALLBACK_PATH) != 0) {
		page_send(req, 404, "Not found", "Nothing is here.");
		return;
	}
	if (l->phase != LOGIN_WAITING) {
		page_no_login(req);
		return;
	}
	authorize_redirect(l, req, evhttp_uri_get_query(uri));
}

/* -- oauth.listen -- */

/* Binds 127.0.0.1:port; the descriptor, or -errno. */
static int listen_socket(int port, int *bound)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sin);
	int one = 1, r;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	/* A stable port stays usable while an earlier login's connections
	 * linger in TIME_WAIT; a live listener still refuses the bind. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(fd, LISTEN_BACKLOG) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sin, &len) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	*bound = ntohs(sin.sin_port);
	return fd;
}

/* oauth.listen's params (common/proto.h); timeout_ms is checked, not used:
 * the listener lives until the login ends or a new one replaces it. */
struct listen_params {
	const char *server;
	int64_t port, timeout_ms;
};

static const struct param_spec listen_spec[] = {
	PARAM_STRING(struct listen_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_INT(struct listen_params, port, PARAM_KEY_PORT, PARAM_REQUIRED, 0, 65535),
	PARAM_INT(struct listen_params, timeout_ms, PARAM_KEY_TIMEOUT_MS, 0, 1, OAUTH_MAX_TIMEOUT_MS),
};

void authorize_listen(struct oauth *o, struct rpc_msg *m)
{
	struct listen_params p = { 0 };
	struct json_object *result, *msg;
	struct login *l, *old;
	const char *server, *bad = NULL;
	int port, fd, bound = 0;

	if (params_parse(m->params, listen_spec, ARRAY_SIZE(listen_spec), &p, &bad) < 0) {
		keeper_bug(o, "oauth.listen with bad params", bad);
		return;
	}
	server = p.server;
	port = (int)p.port;

	/* A second listen replaces the first; a login still running on the
	 * old port ends now, so that the port is free for the bind. */
	old = login_find(o, server, true);
	if (old) {
		if (old->phase == LOGIN_WAITING || old->phase == LOGIN_EXCHANGING)
			login_fail(old, KIND_TERMINAL, LOGIN_R_CANCELLED, NULL, 0,
				   "replaced by a new login for this server");
		old = login_find(o, server, true);
		if (old) {
			login_close_listener(old);
			login_send_reply(old);
			login_free(old);
		}
	}

	fd = listen_socket(port, &bound);
	if (fd < 0) {
		char message[128];

		snprintf(message, sizeof(message), "127.0.0.1:%d: %s", port, strerror(-fd));
		log_warn("oauth: %s: cannot listen for the login redirect: %s", server, message);
		msg = login_error_msg(m->id, KIND_TERMINAL, LOGIN_R_LISTEN, NULL, 0, message);
		oauth_send(o, msg);
		json_object_put(msg);
		return;
	}
	l = xcalloc(1, sizeof(*l));
	l->o = o;
	l->server = xstrdup(server);
	l->port = bound;
	l->http = evhttp_new(o->base);
	if (!l->http)
		fatal("out of memory");
	evhttp_set_max_headers_size(l->http, LISTEN_MAX_HEADERS);
	evhttp_set_max_body_size(l->http, LISTEN_MAX_BODY);
	evhttp_set_allowed_methods(l->http, EVHTTP_REQ_GET);
	evhttp_set_timeout(l->http, LISTEN_CONN_TIMEOUT_S);
	evhttp_set_gencb(l->http, authorize_http_cb, l);
	l->bound = evhttp_accept_socket_with_handle(l->http, fd);
	if (!l->bound)
		fatal("cannot accept connections on 127.0.0.1:%d", bound);
	l->next = o->logins;
	if (l->next)
		l->next->pprev = &l->next;
	l->pprev = &o->logins;
	o->logins = l;

	log_info("oauth: %s: listening for the login redirect on 127.0.0.1:%d", server, bound);
	result = json_object_new_object();
	json_object_object_add(result, PARAM_KEY_PORT, json_object_new_int(bound));
	msg = rpc_result(m->id, result);
	oauth_send(o, msg);
	json_object_put(msg);
}

/* -- oauth.authorize -- */

/* The deadline passed: no redirect yet, or the code exchange still running. */
static void authorize_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct login *l = arg;
	char secs[32], message[128];

	seconds_text(l->timeout_ms, secs, sizeof(secs));
	if (l->phase == LOGIN_WAITING)
		snprintf(message, sizeof(message), "no answer from the browser within %s", secs);
	else
		snprintf(message, sizeof(message), "the login did not complete within %s", secs);
	login_fail(l, KIND_TRANSIENT, LOGIN_R_TIMEOUT, NULL, 0, message);
}

/* The authorization request URL (RFC 6749 4.1.1, RFC 7636, RFC 8707). */
static int authorize_url(struct login *l, const char *endpoint, const char *challenge, const char *scope,
			 struct buf *url)
{
	const char *kv[] = {
		"response_type", "code", "client_id", l->client_id, "redirect_uri", l->redirect_uri,
		"code_challenge", challenge, "code_challenge_method", "S256", "state", l->state,
		"resource", l->resource, "scope", scope,
	};
	CURLU *u = url_parse(endpoint);
	char *query = u ? url_part(u, CURLUPART_QUERY, 0) : NULL;
	char sep = query ? '&' : '?';

	free(query);
	curl_url_cleanup(u);
	if (buf_adds(url, endpoint) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < ARRAY_SIZE(kv); i += 2) {
		if (!kv[i + 1])
			continue;
		if (buf_add(url, &sep, 1) < 0 || buf_adds(url, kv[i]) < 0 || buf_add(url, "=", 1) < 0 ||
		    buf_add_uri_encoded(url, kv[i + 1]) < 0)
			return -ENOMEM;
		sep = '&';
	}
	return 0;
}

/* 32 random bytes, base64url without padding, into sodium_malloc'ed memory. */
static char *random_b64(void)
{
	unsigned char raw[PKCE_RANDOM_BYTES];
	char *s = sodium_malloc(B64_43);

	if (!s)
		fatal("out of memory for a secret");
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2base64(s, B64_43, raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	sodium_memzero(raw, sizeof(raw));
	return s;
}

/* oauth.authorize's params (common/proto.h). */
struct authorize_params {
	const char *server, *authorization_endpoint, *token_endpoint, *redirect_uri, *client_id, *client_secret,
		*auth_method, *resource, *scope, *issuer;
	bool iss_supported;
	int64_t timeout_ms;
};

static const struct param_spec authorize_spec[] = {
	PARAM_STRING(struct authorize_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct authorize_params, authorization_endpoint, PARAM_KEY_AUTHORIZATION_ENDPOINT, PARAM_REQUIRED),
	PARAM_STRING(struct authorize_params, token_endpoint, PARAM_KEY_TOKEN_ENDPOINT, PARAM_REQUIRED),
	PARAM_STRING(struct authorize_params, redirect_uri, PARAM_KEY_REDIRECT_URI, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct authorize_params, client_id, PARAM_KEY_CLIENT_ID, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct authorize_params, client_secret, PARAM_KEY_CLIENT_SECRET, 0),
	PARAM_STRING(struct authorize_params, auth_method, PARAM_KEY_AUTH_METHOD, PARAM_REQUIRED),
	PARAM_STRING(struct authorize_params, resource, PARAM_KEY_RESOURCE, 0),
	PARAM_STRING(struct authorize_params, scope, PARAM_KEY_SCOPE, 0),
	PARAM_STRING(struct authorize_params, issuer, PARAM_KEY_ISSUER, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_BOOL(struct authorize_params, iss_supported, PARAM_KEY_ISS_SUPPORTED, 0),
	PARAM_INT(struct authorize_params, timeout_ms, PARAM_KEY_TIMEOUT_MS, PARAM_REQUIRED, 1,
		  AUTHORIZE_MAX_TIMEOUT_MS),
};

void authorize_start(struct oauth *o, struct rpc_msg *m)
{
	struct authorize_params p = { 0 };
	struct json_object *params, *note;
	unsigned char hash[crypto_hash_sha256_BYTES];
	char challenge[B64_43], why[512], secs[32];
	const char *server, *bad = NULL;
	struct buf url = { 0 };
	struct timeval tv;
	struct login *l;
	long timeout_ms;

	if (params_parse(m->params, authorize_spec, ARRAY_SIZE(authorize_spec), &p, &bad) < 0 ||
	    fetch_client_auth_check(p.auth_method, p.client_secret, &bad) < 0) {
		keeper_bug(o, "oauth.authorize with bad params", bad);
		return;
	}
	server = p.server;
	timeout_ms = (long)p.timeout_ms;

	l = login_find(o, server, false);
	if (!l) {
		keeper_bug(o, "oauth.authorize without oauth.listen for", server);
		return;
	}
	if (l->phase != LOGIN_LISTENING) {
		keeper_bug(o, "a second oauth.authorize for", server);
		return;
	}
	l->id = json_object_get(m->id);
	l->phase = LOGIN_WAITING;
	l->timeout_ms = timeout_ms;
	l->deadline_ms = login_now_ms() + timeout_ms;
	l->token_endpoint = xstrdup(p.token_endpoint);
	l->redirect_uri = xstrdup(p.redirect_uri);
	l->client_id = xstrdup(p.client_id);
	l->auth_method = xstrdup(p.auth_method);
	l->resource = xstrdup(p.resource);
	l->issuer = xstrdup(p.issuer);
	l->client_secret = secret_dup(p.client_secret);
	l->iss_supported = p.iss_supported;
	l->timer = evtimer_new(o->base, authorize_deadline_cb, l);
	if (!l->timer)
		fatal("out of memory");

	if (url_check(p.authorization_endpoint, NULL, why, sizeof(why)) < 0 ||
	    url_check(p.token_endpoint, NULL, why, sizeof(why)) < 0) {
		login_fail(l, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0, why);
		return;
	}

	/* RFC 7636 4.1-4.2: verifier from 32 random bytes, challenge its SHA-256. */
	l->verifier = random_b64();
	l->state = random_b64();
	crypto_hash_sha256(hash, (const unsigned char *)l->verifier, strlen(l->verifier));
	sodium_bin2base64(challenge, sizeof(challenge), hash, sizeof(hash), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	if (authorize_url(l, p.authorization_endpoint, challenge, p.scope, &url) < 0)
		fatal("out of memory building the authorization URL");

	/* The URL holds the challenge and the state, neither of which lets
	 * anyone but this process finish the login. */
	params = json_object_new_object();
	json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(server));
	json_object_object_add(params, PARAM_KEY_URL, json_object_new_string_len(url.data, (int)url.len));
	note = rpc_notification(METHOD_OAUTH_LOGIN_URL, params);
	if (!note)
		fatal("out of memory");
	oauth_send(o, note);
	rpc_wipe_put(note);
	buf_wipe(&url);

	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	evtimer_add(l->timer, &tv);
	seconds_text(timeout_ms, secs, sizeof(secs));
	log_info("oauth: %s: waiting for the browser's redirect to 127.0.0.1:%d (up to %s)", server, l->port, secs);
}

/* -- oauth.cancel -- */

/* oauth.cancel's params (common/proto.h). */
struct cancel_params {
	const char *server;
};

static const struct param_spec cancel_spec[] = {
	PARAM_STRING(struct cancel_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED),
};

void authorize_cancel(struct oauth *o, struct rpc_msg *m)
{
	struct cancel_params p = { 0 };
	const char *server, *bad = NULL;
	struct login *l;

	if (params_parse(m->params, cancel_spec, ARRAY_SIZE(cancel_spec), &p, &bad) < 0) {
		keeper_bug(o, "oauth.cancel with bad params", bad);
		return;
	}
	server = p.server;
	l = login_find(o, server, false);
	if (!l) {
		log_debug("oauth: %s: cancel for no login in progress; ignored", server);
		return;
	}
	if (l->phase == LOGIN_LISTENING) {
		log_info("oauth: %s: login cancelled; redirect listener on 127.0.0.1:%d closed", server, l->port);
		login_free(l);
		return;
	}
	login_fail(l, KIND_TERMINAL, LOGIN_R_CANCELLED, NULL, 0, "the login was cancelled");
}
