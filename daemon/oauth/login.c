/*
 * The oauth child's login and logout steps (common/proto.h, "Login and
 * logout"): the keeper drives a login as a sequence of requests and keeps
 * everything that must persist; this file does each step's network part.
 *
 *   oauth.listen     binds 127.0.0.1:port for one server's redirect
 *   oauth.discover   probe, RFC 9728 protected resource metadata, RFC 8414 /
 *                    OpenID authorization server metadata, in the order of
 *                    the MCP authorization specification (2025-11-25)
 *   oauth.register   RFC 7591 dynamic client registration
 *   oauth.authorize  PKCE (S256) and state, the URL for the browser, the
 *                    redirect on the listener, the code exchange
 *   oauth.cancel     abandons a server's login
 *   oauth.revoke     RFC 7009
 *
 * Logins are keyed by server and run side by side; discover, register and
 * revoke are independent steps. All HTTP goes through struct fetch (libcurl
 * multi on the loop); the listener is libevent's evhttp on the same loop.
 *
 * Secrets: the PKCE verifier and state live in sodium_malloc'ed memory for
 * one login; the code only inside the exchange's request body; the client
 * secret for one request. Every buffer that held one is wiped. Tokens and
 * codes are never logged, and neither are response bodies. Everything sent
 * back to the keeper is printable ASCII, so nothing a server sends can break
 * the framing. Everything a page echoes to the browser is HTML-escaped.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <sodium.h>

#include "challenge.h"
#include "frame.h"
#include "log.h"
#include "oauth.h"
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
/* How long the result page may take to reach the browser before the keeper
 * is answered anyway. */
#define PAGE_GRACE_MS 2000
/* 32 random bytes in base64url without padding: 43 characters and a NUL. */
#define PKCE_RANDOM_BYTES 32
#define B64_43 sodium_base64_ENCODED_LEN(PKCE_RANDOM_BYTES, sodium_base64_VARIANT_URLSAFE_NO_PADDING)
/* A provider's error_description as a user sees it. */
#define DESCRIPTION_MAX 200
#define URL_MAX 2048
#define MESSAGE_MAX 1024
#define MCP_PROBE_VERSION "2025-11-25"

enum login_phase {
	LOGIN_LISTENING,	/* listener up, no oauth.authorize yet */
	LOGIN_WAITING,		/* the browser's redirect is awaited */
	LOGIN_EXCHANGING,	/* redirect taken, code exchange running */
	LOGIN_ANSWERING,	/* the browser is getting its page; the keeper's reply waits */
};

/* One server's login: its redirect listener and, once authorize came, the
 * authorization in progress. */
struct login {
	struct oauth *o;
	struct login *next, **pprev;
	char *server;
	struct evhttp *http;
	struct evhttp_bound_socket *bound;	/* NULL once no longer accepting */
	int port;
	enum login_phase phase;

	/* oauth.authorize */
	struct json_object *id;
	long timeout_ms;
	int64_t deadline_ms;		/* monotonic */
	struct event *timer;		/* the deadline, then the page's grace */
	struct evhttp_request *browser;	/* the redirect, until it has its page */
	struct fetch *fetch;		/* the code exchange */
	char *token_endpoint, *redirect_uri, *client_id, *auth_method, *resource, *issuer;
	char *client_secret;		/* sodium_malloc */
	bool iss_supported;
	char *verifier, *state;		/* sodium_malloc, B64_43 each */
	struct json_object *reply;	/* for the keeper, once the page is out */
};

enum discover_phase { DISCOVER_PROBE, DISCOVER_PRM, DISCOVER_AS };

/* discover, register or revoke: one request, one fetch at a time. */
struct step {
	struct oauth *o;
	struct step *next, **pprev;
	const char *what;		/* "discovery", "registration", "revocation" */
	struct json_object *id;
	char *server;
	long timeout_ms;
	struct fetch *fetch;

	/* discover */
	enum discover_phase phase;
	CURLU *mcp;			/* the MCP endpoint */
	char *mcp_url;
	const char *protocol;		/* static string */
	struct curl_slist *probe_headers;
	struct challenge_bearer *challenge;
	char *urls[3];			/* this phase's candidates, in order */
	size_t n_urls, next_url;
	char tried[768];		/* what the candidates answered, for the message */
	struct json_object *result;
	char *issuer;

	/* revoke */
	char *hint;
};

/* -- small helpers -- */

static char *secret_dup(const char *s)
{
	size_t n;
	char *d;

	if (!s)
		return NULL;
	n = strlen(s);
	d = sodium_malloc(n + 1);
	if (!d)
		fatal("out of memory for a secret");
	memcpy(d, s, n + 1);
	return d;
}

static void secret_free(char **s)
{
	if (*s)
		sodium_free(*s); /* wipes */
	*s = NULL;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "N s" for a timeout in milliseconds, to the nearest second (the keeper
 * passes what is left of its own deadline, a few ms short of it). */
static void seconds_text(long ms, char *out, size_t len)
{
	if (ms >= 1000)
		snprintf(out, len, "%ld s", (ms + 500) / 1000);
	else
		snprintf(out, len, "%.1f s", (double)ms / 1000.0);
}

/* Visible ASCII, nothing else: what may go back to the keeper as a URL or word. */
static bool visible_ascii(const char *s, size_t max)
{
	size_t n = 0;

	for (; s[n]; n++)
		if ((unsigned char)s[n] < 0x21 || (unsigned char)s[n] > 0x7e || n >= max)
			return false;
	return n > 0;
}

/* RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ). */
static bool scope_token(const char *s, size_t n)
{
	if (n == 0 || n > 256)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x21 || c > 0x7e || c == '"' || c == '\\')
			return false;
	}
	return true;
}

/* A space-separated list of scope tokens. */
static bool scope_list(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > CHALLENGE_MAX_VALUE)
		return false;
	for (const char *p = s; *p;) {
		size_t n = strcspn(p, " ");

		if (!scope_token(p, n))
			return false;
		p += n;
		if (*p == ' ')
			p++;
		if (*p == ' ' || (!*p && p[-1] == ' '))
			return false;
	}
	return true;
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

/* An RPC_APP_ERROR for a login step: data {kind, reason, oauth_error?, http_status?}. */
static struct json_object *login_error_msg(struct json_object *id, const char *kind, const char *reason,
					   const char *oauth_error, long http_status, const char *message)
{
	struct json_object *msg = rpc_error(id, RPC_APP_ERROR, kind, message), *err, *data;

	if (!msg)
		fatal("out of memory");
	if (json_object_object_get_ex(msg, "error", &err) && json_object_object_get_ex(err, "data", &data)) {
		json_object_object_add(data, "reason", json_object_new_string(reason));
		if (oauth_error)
			json_object_object_add(data, "oauth_error", json_object_new_string(oauth_error));
		if (http_status > 0)
			json_object_object_add(data, "http_status", json_object_new_int((int)http_status));
	}
	return msg;
}

/* "the X refused: error: description" with the description made safe. */
static void refusal_text(char *out, size_t len, const char *who, const char *oauth_error, const char *description)
{
	char desc[DESCRIPTION_MAX + 1];

	sanitise_text(description, desc, sizeof(desc), DESCRIPTION_MAX);
	snprintf(out, len, "%s: %s%s%s", who, oauth_error, desc[0] ? ": " : "", desc);
}

/* -- URLs (parsed by libcurl's URL API only) -- */

static bool loopback_host(const char *host)
{
	struct in_addr a;

	if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0)
		return true;
	return inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

static char *url_part(CURLU *u, CURLUPart part, unsigned flags)
{
	char *p = NULL, *copy;

	if (curl_url_get(u, part, &p, flags) != CURLUE_OK)
		return NULL;
	copy = xstrdup(p);
	curl_free(p);
	return copy;
}

/* Parses an http or https URL. NULL when it is not one. */
static CURLU *url_parse(const char *url)
{
	CURLU *u;
	char *scheme;
	bool ok;

	if (!visible_ascii(url, URL_MAX))
		return NULL;
	u = curl_url();
	if (!u)
		fatal("out of memory");
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
		curl_url_cleanup(u);
		return NULL;
	}
	scheme = url_part(u, CURLUPART_SCHEME, 0);
	ok = scheme && (strcmp(scheme, "https") == 0 || strcmp(scheme, "http") == 0);
	free(scheme);
	if (!ok) {
		curl_url_cleanup(u);
		return NULL;
	}
	return u;
}

/*
 * A URL taken from metadata: https, or http to a loopback host only, with
 * neither user info nor fragment. 0 (and *out when asked), or -EINVAL with
 * why filled.
 */
static int url_check(const char *url, CURLU **out, char *why, size_t len)
{
	CURLU *u = url_parse(url);
	char *scheme = NULL, *host = NULL, *user = NULL, *fragment = NULL;
	int r = -EINVAL;

	if (!u) {
		snprintf(why, len, "%.200s is not an http(s) URL", url);
		return -EINVAL;
	}
	scheme = url_part(u, CURLUPART_SCHEME, 0);
	host = url_part(u, CURLUPART_HOST, 0);
	user = url_part(u, CURLUPART_USER, 0);
	fragment = url_part(u, CURLUPART_FRAGMENT, 0);
	if (!scheme || !host)
		snprintf(why, len, "%.200s is not an http(s) URL", url);
	else if (strcmp(scheme, "https") != 0 && !loopback_host(host))
		snprintf(why, len, "%.200s is not https (plain http is allowed only to a loopback host)", url);
	else if (user || fragment)
		snprintf(why, len, "%.200s carries user information or a fragment", url);
	else
		r = 0;
	free(scheme);
	free(host);
	free(user);
	free(fragment);
	if (r == 0 && out)
		*out = u;
	else
		curl_url_cleanup(u);
	return r;
}

/* The path of u without trailing slashes ("" for none). */
static char *url_path_trimmed(CURLU *u)
{
	char *path = url_part(u, CURLUPART_PATH, 0);
	size_t n;

	if (!path)
		return xstrdup("");
	n = strlen(path);
	while (n > 0 && path[n - 1] == '/')
		path[--n] = '\0';
	return path;
}

/* u's origin with path, no query, fragment or user info. */
static char *url_with_path(CURLU *base, const char *path)
{
	CURLU *u = curl_url_dup(base);
	char *s = NULL;

	if (!u)
		fatal("out of memory");
	if (curl_url_set(u, CURLUPART_PATH, path, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_QUERY, NULL, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_USER, NULL, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_PASSWORD, NULL, 0) == CURLUE_OK)
		s = url_part(u, CURLUPART_URL, 0);
	curl_url_cleanup(u);
	if (!s)
		fatal("out of memory building a URL");
	return s;
}

/* RFC 9728 3.3 and 7.3: the resource names the endpoint we asked for, or a
 * path above it on a segment boundary, at the same scheme, host and port. */
static bool resource_covers(const char *resource, CURLU *mcp)
{
	static const CURLUPart parts[] = { CURLUPART_SCHEME, CURLUPART_HOST, CURLUPART_PORT };
	CURLU *r = url_parse(resource);
	char *rpath = NULL, *upath = NULL, *frag = NULL;
	bool ok = r != NULL;

	for (size_t i = 0; ok && i < ARRAY_SIZE(parts); i++) {
		char *a = url_part(r, parts[i], CURLU_DEFAULT_PORT), *b = url_part(mcp, parts[i], CURLU_DEFAULT_PORT);

		ok = a && b && strcasecmp(a, b) == 0;
		free(a);
		free(b);
	}
	if (ok) {
		frag = url_part(r, CURLUPART_FRAGMENT, 0);
		rpath = url_path_trimmed(r);
		upath = url_part(mcp, CURLUPART_PATH, 0);
		if (!upath)
			upath = xstrdup("/");
		ok = !frag && (strncmp(upath, rpath, strlen(rpath)) == 0) &&
		     (upath[strlen(rpath)] == '\0' || upath[strlen(rpath)] == '/');
	}
	free(rpath);
	free(upath);
	free(frag);
	curl_url_cleanup(r);
	return ok;
}

/* -- the browser's pages -- */

static void page_send(struct evhttp_request *req, int status, const char *title, const char *text)
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

/* -- logins: one per server -- */

/* This server's login; one that is only delivering its last page counts
 * when ending_too says so. */
static struct login *login_find(struct oauth *o, const char *server, bool ending_too)
{
	for (struct login *l = o->logins; l; l = l->next)
		if (strcmp(l->server, server) == 0 && (ending_too || l->phase != LOGIN_ANSWERING))
			return l;
	return NULL;
}

static void login_wipe_secrets(struct login *l)
{
	secret_free(&l->verifier);
	secret_free(&l->state);
	secret_free(&l->client_secret);
}

static struct login *login_free(struct login *l)
{
	if (!l)
		return NULL;
	if (l->pprev) {
		*l->pprev = l->next;
		if (l->next)
			l->next->pprev = l->pprev;
	}
	/* A request libevent detached from its closed connection is ours to
	 * finish; one still connected goes with the connection below. */
	if (l->browser)
		evhttp_send_error(l->browser, 503, "Service Unavailable");
	if (l->http)
		evhttp_free(l->http);
	if (l->timer)
		event_free(l->timer);
	fetch_free(l->fetch);
	login_wipe_secrets(l);
	rpc_wipe_put(l->reply);
	if (l->id)
		json_object_put(l->id);
	free(l->server);
	free(l->token_endpoint);
	free(l->redirect_uri);
	free(l->client_id);
	free(l->auth_method);
	free(l->resource);
	free(l->issuer);
	free(l);
	return NULL;
}

/* Stops accepting connections (the port is free again); connections
 * already accepted keep going until the login is freed. */
static void login_close_listener(struct login *l)
{
	if (l->bound) {
		evhttp_del_accept_socket(l->http, l->bound);
		l->bound = NULL;
		log_debug("oauth: %s: redirect listener on 127.0.0.1:%d closed", l->server, l->port);
	}
}

/* The keeper's reply, once; a token response too large for the channel
 * becomes an error. */
static void login_send_reply(struct login *l)
{
	struct json_object *msg = TAKE_PTR(l->reply);
	int r;

	if (!msg)
		return;
	r = frame_write(bufferevent_get_output(l->o->chan.bev), msg, PROTO_MAX_MESSAGE);
	rpc_wipe_put(msg);
	if (r == FRAME_E_TOO_LARGE) {
		log_warn("oauth: %s: login failed: token response too large (%s)", l->server, LOGIN_R_EXCHANGE);
		msg = login_error_msg(l->id, KIND_TRANSIENT, LOGIN_R_EXCHANGE, NULL, 0, "token response too large");
		oauth_send(l->o, msg);
		json_object_put(msg);
	} else if (r) {
		log_error("cannot queue a reply to the keeper: %s", r < 0 ? strerror(-r) : frame_strerror(r));
		oauth_stop(l->o, 1);
	}
}

/* The page is out (or its grace ran out): close the port, answer the
 * keeper, drop the login. Freeing the evhttp must not happen inside
 * libevent's request completion, hence the timer. */
static void login_grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct login *l = arg;

	login_close_listener(l);
	login_send_reply(l);
	login_free(l);
}

static void login_page_sent(struct evhttp_request *req, void *arg)
{
	struct login *l = arg;
	struct timeval now = { 0, 0 };

	/* The port closes before the keeper hears, so that it can rely on it. */
	login_close_listener(l);
	login_send_reply(l);
	evtimer_add(l->timer, &now);
}

/*
 * Ends an authorization. The browser, when its redirect is here, gets its
 * page first; once that is out (or PAGE_GRACE_MS passed) the port closes,
 * then the keeper gets reply. Secrets go at once.
 */
static void login_end(struct login *l, struct json_object *reply, int status, const char *title, const char *text)
{
	struct timeval grace = { PAGE_GRACE_MS / 1000, (PAGE_GRACE_MS % 1000) * 1000 };
	struct evhttp_request *req = TAKE_PTR(l->browser);

	event_del(l->timer);
	l->fetch = fetch_free(l->fetch);
	login_wipe_secrets(l);
	l->reply = reply;
	if (!req) {
		login_close_listener(l);
		login_send_reply(l);
		login_free(l);
		return;
	}
	l->phase = LOGIN_ANSWERING;
	event_free(l->timer);
	l->timer = evtimer_new(l->o->base, login_grace_cb, l);
	if (!l->timer)
		fatal("out of memory");
	evhttp_request_set_on_complete_cb(req, login_page_sent, l);
	page_send(req, status, title, text);
	evtimer_add(l->timer, &grace);
}

static void login_fail(struct login *l, const char *kind, const char *reason, const char *oauth_error,
		       long http_status, const char *message)
{
	char text[MESSAGE_MAX + 128];

	log_warn("oauth: %s: login failed: %s (%s)", l->server, message, reason);
	snprintf(text, sizeof(text), "Login to %s failed: %s", l->server, message);
	login_end(l, login_error_msg(l->id, kind, reason, oauth_error, http_status, message), 400,
		  "mcpkeeper: login failed", text);
}

static void login_deadline_cb(evutil_socket_t fd, short what, void *arg)
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

/* The code exchange is over. */
static void login_exchange_done(struct fetch *f, void *arg)
{
	struct login *l = arg;
	struct token_verdict v;
	struct json_object *copy = NULL;
	char text[MESSAGE_MAX];

	l->fetch = NULL;
	token_verdict(f, &v);
	fetch_free(f);
	if (!v.result) {
		char message[MESSAGE_MAX];
		const char *reason = v.answered ? LOGIN_R_EXCHANGE : LOGIN_R_NETWORK;

		if (v.oauth_error && strcmp(v.kind, KIND_TERMINAL) == 0) {
			refusal_text(message, sizeof(message), "the token endpoint refused the code", v.oauth_error,
				     v.description);
		} else if (v.oauth_error) {
			char who[64];

			snprintf(who, sizeof(who), "the token endpoint answered HTTP %ld", v.http_status);
			refusal_text(message, sizeof(message), who, v.oauth_error, v.description);
		} else {
			snprintf(message, sizeof(message), "token endpoint: %s", v.message);
		}
		login_fail(l, v.kind, reason, v.oauth_error, v.http_status, message);
		token_verdict_clear(&v);
		return;
	}
	/* The reply waits for the page: give it its own copy of the tokens, so
	 * that the response body can be wiped now. */
	if (json_object_deep_copy(v.result, &copy, NULL) < 0)
		fatal("out of memory");
	log_info("oauth: %s: logged in (HTTP %ld%s)", l->server, v.http_status,
		 json_object_object_get_ex(copy, "refresh_token", NULL) ? ", with a refresh token" : "");
	token_verdict_clear(&v);
	snprintf(text, sizeof(text), "Logged in to %s. You can close this tab.", l->server);
	login_end(l, rpc_result(l->id, copy), 200, "mcpkeeper: logged in", text);
}

static void login_exchange_start(struct login *l, const char *code)
{
	int64_t left = l->deadline_ms - now_ms();
	struct fetch *f;

	f = l->fetch = fetch_new(l->o, l->token_endpoint, left > 0 ? (long)left : 1, login_exchange_done, l);
	if (!f || form_add(&f->req, "grant_type", "authorization_code") < 0 || form_add(&f->req, "code", code) < 0 ||
	    form_add(&f->req, "redirect_uri", l->redirect_uri) < 0 ||
	    form_add(&f->req, "code_verifier", l->verifier) < 0 ||
	    fetch_client_auth(f, l->auth_method, l->client_id, l->client_secret) < 0 ||
	    (l->resource && form_add(&f->req, "resource", l->resource) < 0) ||
	    fetch_header(f, "Accept: application/json") < 0 ||
	    fetch_post(f, "application/x-www-form-urlencoded") < 0 || fetch_start(f) < 0)
		fatal("out of memory preparing a code exchange");
	log_debug("oauth: %s: exchanging the authorization code", l->server);
}

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

/* The browser's redirect (RFC 6749 4.1.2, RFC 9207): checked in the order
 * that keeps forged answers out: state, then iss, then error, then code. */
static void login_redirect(struct login *l, struct evhttp_request *req, const char *query)
{
	struct evkeyvalq q;
	const char *state, *iss, *error, *code;
	int n_state, n_iss, n_error, n_code, n_desc;
	char message[MESSAGE_MAX];

	TAILQ_INIT(&q);
	l->browser = req;
	l->phase = LOGIN_EXCHANGING;
	if (!query || evhttp_parse_query_str(query, &q) < 0) {
		login_fail(l, KIND_TERMINAL, LOGIN_R_STATE, NULL, 0,
			   "the redirect carried no state (a stale or forged redirect); start the login again");
		goto out;
	}
	state = query_get(&q, "state", &n_state);
	iss = query_get(&q, "iss", &n_iss);
	error = query_get(&q, "error", &n_error);
	code = query_get(&q, "code", &n_code);
	query_get(&q, "error_description", &n_desc);
	if (!state || n_state != 1 || strlen(state) != strlen(l->state) ||
	    sodium_memcmp(state, l->state, strlen(l->state)) != 0) {
		login_fail(l, KIND_TERMINAL, LOGIN_R_STATE, NULL, 0,
			   "the redirect's state does not match this login (a stale or forged redirect); "
			   "start the login again");
		goto out;
	}
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
			refusal_text(message, sizeof(message), "the authorization server refused", oauth_error,
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
	login_exchange_start(l, code);
out:
	query_wipe(&q);
	request_wipe_query(req);
}

static void login_http_cb(struct evhttp_request *req, void *arg)
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
	login_redirect(l, req, evhttp_uri_get_query(uri));
}

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

void login_listen(struct oauth *o, struct rpc_msg *m)
{
	const char *server;
	struct json_object *v, *result, *msg;
	struct login *l, *old;
	long timeout_ms;
	int port, fd, bound = 0;

	if (!json_object_is_type(m->params, json_type_object) || param_string(m->params, "server", &server) < 0 ||
	    !server || !*server || !json_object_object_get_ex(m->params, "port", &v) ||
	    !json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0 ||
	    json_object_get_int64(v) > 65535 ||
	    (json_object_object_get_ex(m->params, "timeout_ms", NULL) &&
	     param_timeout(m->params, OAUTH_MAX_TIMEOUT_MS, &timeout_ms) < 0)) {
		keeper_bug(o, "oauth.listen with bad params", NULL);
		return;
	}
	port = json_object_get_int(v);

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
	l = calloc(1, sizeof(*l));
	if (!l)
		fatal("out of memory");
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
	evhttp_set_gencb(l->http, login_http_cb, l);
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
	json_object_object_add(result, "port", json_object_new_int(bound));
	msg = rpc_result(m->id, result);
	oauth_send(o, msg);
	json_object_put(msg);
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

void login_authorize(struct oauth *o, struct rpc_msg *m)
{
	const char *server, *authorization_endpoint, *token_endpoint, *redirect_uri, *client_id, *client_secret,
		*auth_method, *resource, *scope, *issuer, *bad = NULL;
	struct json_object *p = m->params, *v, *params, *note;
	unsigned char hash[crypto_hash_sha256_BYTES];
	char challenge[B64_43], why[512], secs[32];
	struct buf url = { 0 };
	struct timeval tv;
	struct login *l;
	bool iss_supported = false;
	long timeout_ms = 0;

#define REQUIRE(cond, field)        \
	do {                        \
		if (!(cond)) {      \
			bad = field; \
			goto bug;   \
		}                   \
	} while (0)
	REQUIRE(json_object_is_type(p, json_type_object), "params");
	REQUIRE(param_string(p, "server", &server) == 0 && server && *server, "server");
	REQUIRE(param_string(p, "authorization_endpoint", &authorization_endpoint) == 0 && authorization_endpoint,
		"authorization_endpoint");
	REQUIRE(param_string(p, "token_endpoint", &token_endpoint) == 0 && token_endpoint, "token_endpoint");
	REQUIRE(param_string(p, "redirect_uri", &redirect_uri) == 0 && redirect_uri && *redirect_uri,
		"redirect_uri");
	REQUIRE(param_string(p, "client_id", &client_id) == 0 && client_id && *client_id, "client_id");
	REQUIRE(param_string(p, "client_secret", &client_secret) == 0, "client_secret");
	REQUIRE(param_string(p, "auth_method", &auth_method) == 0 && auth_method &&
			(strcmp(auth_method, "none") == 0 || strcmp(auth_method, "client_secret_basic") == 0 ||
			 strcmp(auth_method, "client_secret_post") == 0),
		"auth_method");
	REQUIRE(strcmp(auth_method, "none") == 0 || client_secret, "client_secret");
	REQUIRE(param_string(p, "resource", &resource) == 0, "resource");
	REQUIRE(param_string(p, "scope", &scope) == 0, "scope");
	REQUIRE(param_string(p, "issuer", &issuer) == 0 && issuer && *issuer, "issuer");
	REQUIRE(!json_object_object_get_ex(p, "iss_supported", &v) || json_object_is_type(v, json_type_boolean),
		"iss_supported");
	if (json_object_object_get_ex(p, "iss_supported", &v))
		iss_supported = json_object_get_boolean(v);
	REQUIRE(param_timeout(p, AUTHORIZE_MAX_TIMEOUT_MS, &timeout_ms) == 0, "timeout_ms");
#undef REQUIRE

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
	l->deadline_ms = now_ms() + timeout_ms;
	l->token_endpoint = xstrdup(token_endpoint);
	l->redirect_uri = xstrdup(redirect_uri);
	l->client_id = xstrdup(client_id);
	l->auth_method = xstrdup(auth_method);
	l->resource = xstrdup(resource);
	l->issuer = xstrdup(issuer);
	l->client_secret = secret_dup(client_secret);
	l->iss_supported = iss_supported;
	l->timer = evtimer_new(o->base, login_deadline_cb, l);
	if (!l->timer)
		fatal("out of memory");

	if (url_check(authorization_endpoint, NULL, why, sizeof(why)) < 0 ||
	    url_check(token_endpoint, NULL, why, sizeof(why)) < 0) {
		login_fail(l, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0, why);
		return;
	}

	/* RFC 7636 4.1-4.2: verifier from 32 random bytes, challenge its SHA-256. */
	l->verifier = random_b64();
	l->state = random_b64();
	crypto_hash_sha256(hash, (const unsigned char *)l->verifier, strlen(l->verifier));
	sodium_bin2base64(challenge, sizeof(challenge), hash, sizeof(hash), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	if (authorize_url(l, authorization_endpoint, challenge, scope, &url) < 0)
		fatal("out of memory building the authorization URL");

	/* The URL holds the challenge and the state, neither of which lets
	 * anyone but this process finish the login. */
	params = json_object_new_object();
	json_object_object_add(params, "server", json_object_new_string(server));
	json_object_object_add(params, "url", json_object_new_string_len(url.data, (int)url.len));
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
	return;
bug:
	keeper_bug(o, "oauth.authorize with bad params", bad);
}

void login_cancel(struct oauth *o, struct rpc_msg *m)
{
	const char *server = NULL;
	struct login *l;

	if (!json_object_is_type(m->params, json_type_object) || param_string(m->params, "server", &server) < 0 ||
	    !server) {
		keeper_bug(o, "oauth.cancel with bad params", NULL);
		return;
	}
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

/* -- steps: discover, register, revoke -- */

static struct step *step_free(struct step *s)
{
	if (!s)
		return NULL;
	if (s->pprev) {
		*s->pprev = s->next;
		if (s->next)
			s->next->pprev = s->pprev;
	}
	fetch_free(s->fetch);
	if (s->id)
		json_object_put(s->id);
	free(s->server);
	curl_url_cleanup(s->mcp);
	free(s->mcp_url);
	for (struct curl_slist *h = s->probe_headers; h; h = h->next)
		sodium_memzero(h->data, strlen(h->data)); /* static headers may hold API keys */
	curl_slist_free_all(s->probe_headers);
	free(s->challenge);
	for (size_t i = 0; i < ARRAY_SIZE(s->urls); i++)
		free(s->urls[i]);
	rpc_wipe_put(s->result);
	free(s->issuer);
	free(s->hint);
	free(s);
	return NULL;
}

static void step_freep(struct step **s)
{
	*s = step_free(*s);
}

static struct step *step_new(struct oauth *o, struct rpc_msg *m, const char *what)
{
	struct step *s = calloc(1, sizeof(*s));

	if (!s)
		fatal("out of memory");
	s->o = o;
	s->what = what;
	s->id = json_object_get(m->id);
	return s;
}

static void step_link(struct step *s)
{
	struct oauth *o = s->o;

	s->next = o->steps;
	if (s->next)
		s->next->pprev = &s->next;
	s->pprev = &o->steps;
	o->steps = s;
}

_printf_(6, 7) static void step_fail(struct step *s, const char *kind, const char *reason, const char *oauth_error,
				     long http_status, const char *fmt, ...)
{
	char message[MESSAGE_MAX];
	struct json_object *msg;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	log_warn("oauth: %s: %s failed: %s (%s)", s->server, s->what, message, reason);
	msg = login_error_msg(s->id, kind, reason, oauth_error, http_status, message);
	oauth_send(s->o, msg);
	json_object_put(msg);
	step_free(s);
}

/* Sends result (taken) and ends the step; the result may hold secrets. */
static void step_reply(struct step *s, struct json_object *result)
{
	struct json_object *msg = rpc_result(s->id, result);

	if (!msg)
		fatal("out of memory");
	oauth_send(s->o, msg);
	rpc_wipe_put(msg);
	step_free(s);
}

/* A fetch for s; the caller adds what it needs and starts it. */
static struct fetch *step_fetch(struct step *s, const char *url, fetch_done_fn done)
{
	struct fetch *f = fetch_new(s->o, url, s->timeout_ms, done, s);

	if (!f)
		fatal("out of memory");
	s->fetch = f;
	return f;
}

/* -- oauth.discover -- */

static void discover_next(struct step *s);

static void discover_reply(struct step *s)
{
	log_debug("oauth: %s: discovery done", s->server);
	step_reply(s, TAKE_PTR(s->result));
}

/* An optional endpoint of the authorization server metadata: absent, or a
 * URL that passes url_check(). -EINVAL after answering the keeper. */
static int discover_endpoint(struct step *s, struct json_object *meta, const char *key, bool required,
			     const char *from)
{
	struct json_object *v;
	char why[512];

	if (!json_object_object_get_ex(meta, key, &v) || json_object_is_type(v, json_type_null)) {
		if (!required)
			return 0;
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
			  "the authorization server metadata at %s has no %s", from, key);
		return -EINVAL;
	}
	if (!json_object_is_type(v, json_type_string)) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
			  "the authorization server metadata at %s has a %s that is not a string", from, key);
		return -EINVAL;
	}
	if (url_check(json_object_get_string(v), NULL, why, sizeof(why)) < 0) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0, "%s of %s: %s", key, s->issuer, why);
		return -EINVAL;
	}
	json_object_object_add(s->result, key, json_object_new_string(json_object_get_string(v)));
	return 0;
}

static bool string_in_array(struct json_object *a, const char *s)
{
	size_t n = json_object_is_type(a, json_type_array) ? json_object_array_length(a) : 0;

	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(a, i);

		if (json_object_is_type(e, json_type_string) && strcmp(json_object_get_string(e), s) == 0)
			return true;
	}
	return false;
}

/* RFC 8414 / OpenID Connect Discovery document for s->issuer. */
static void discover_as(struct step *s, struct json_object *meta, const char *from)
{
	struct json_object *v, *methods;
	char got[DESCRIPTION_MAX + 1];
	bool iss_supported;

	if (!json_object_object_get_ex(meta, "issuer", &v) || !json_object_is_type(v, json_type_string) ||
	    strcmp(json_object_get_string(v), s->issuer) != 0) {
		sanitise_text(json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "(none)", got,
			      sizeof(got), DESCRIPTION_MAX);
		step_fail(s, KIND_TERMINAL, LOGIN_R_ISSUER, NULL, 0,
			  "the authorization server metadata at %s names issuer %s, expected %s", from, got, s->issuer);
		return;
	}
	if (discover_endpoint(s, meta, "authorization_endpoint", true, from) < 0 ||
	    discover_endpoint(s, meta, "token_endpoint", true, from) < 0 ||
	    discover_endpoint(s, meta, "registration_endpoint", false, from) < 0 ||
	    discover_endpoint(s, meta, "revocation_endpoint", false, from) < 0)
		return;
	/* MCP authorization: clients MUST refuse without S256 advertised. */
	if (!json_object_object_get_ex(meta, "code_challenge_methods_supported", &v) || !string_in_array(v, "S256")) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_PKCE, NULL, 0,
			  "the authorization server %s does not advertise PKCE S256 "
			  "(code_challenge_methods_supported); refusing to log in",
			  s->issuer);
		return;
	}
	iss_supported = json_object_object_get_ex(meta, "authorization_response_iss_parameter_supported", &v) &&
			json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
	json_object_object_add(s->result, "iss_supported", json_object_new_boolean(iss_supported));
	if (json_object_object_get_ex(meta, "token_endpoint_auth_methods_supported", &v) &&
	    json_object_is_type(v, json_type_array)) {
		methods = json_object_new_array();
		for (size_t i = 0; i < json_object_array_length(v); i++) {
			struct json_object *e = json_object_array_get_idx(v, i);

			if (json_object_is_type(e, json_type_string) && visible_ascii(json_object_get_string(e), 64))
				json_object_array_add(methods, json_object_new_string(json_object_get_string(e)));
		}
		json_object_object_add(s->result, "token_endpoint_auth_methods", methods);
	}
	log_info("oauth: %s: authorization server metadata from %s (PKCE S256%s)", s->server, from,
		 iss_supported ? ", RFC 9207 iss" : "");
	discover_reply(s);
}

/* The authorization server metadata URLs for issuer, in the MCP order. */
static void discover_as_urls(struct step *s, CURLU *issuer)
{
	char *path = url_path_trimmed(issuer), *p;

	for (size_t i = 0; i < ARRAY_SIZE(s->urls); i++)
		s->urls[i] = (free(s->urls[i]), NULL);
	s->n_urls = s->next_url = 0;
	s->tried[0] = '\0';
	if (*path) {
		if (asprintf(&p, "/.well-known/oauth-authorization-server%s", path) < 0)
			fatal("out of memory");
		s->urls[s->n_urls++] = url_with_path(issuer, p);
		free(p);
		if (asprintf(&p, "/.well-known/openid-configuration%s", path) < 0)
			fatal("out of memory");
		s->urls[s->n_urls++] = url_with_path(issuer, p);
		free(p);
		if (asprintf(&p, "%s/.well-known/openid-configuration", path) < 0)
			fatal("out of memory");
		s->urls[s->n_urls++] = url_with_path(issuer, p);
		free(p);
	} else {
		s->urls[s->n_urls++] = url_with_path(issuer, "/.well-known/oauth-authorization-server");
		s->urls[s->n_urls++] = url_with_path(issuer, "/.well-known/openid-configuration");
	}
	free(path);
}

/* RFC 9728 protected resource metadata. */
static void discover_prm(struct step *s, struct json_object *meta, const char *from)
{
	struct json_object *v, *as;
	const char *resource, *issuer;
	CURLU *issuer_url = NULL;
	struct buf scopes = { 0 };
	char why[512];

	if (!json_object_object_get_ex(meta, "resource", &v) || !json_object_is_type(v, json_type_string) ||
	    !visible_ascii(json_object_get_string(v), URL_MAX)) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
			  "the protected resource metadata at %s has no usable resource", from);
		return;
	}
	resource = json_object_get_string(v);
	if (!resource_covers(resource, s->mcp)) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
			  "the protected resource metadata at %s is for %s, which is not %s (RFC 9728 7.3)", from,
			  resource, s->mcp_url);
		return;
	}
	if (!json_object_object_get_ex(meta, "authorization_servers", &as) ||
	    !json_object_is_type(as, json_type_array) || json_object_array_length(as) == 0 ||
	    !json_object_is_type(json_object_array_get_idx(as, 0), json_type_string)) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
			  "the protected resource metadata at %s names no authorization server", from);
		return;
	}
	issuer = json_object_get_string(json_object_array_get_idx(as, 0));
	if (url_check(issuer, &issuer_url, why, sizeof(why)) < 0) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0, "authorization server of %s: %s", resource,
			  why);
		return;
	}
	{
		char *query = url_part(issuer_url, CURLUPART_QUERY, 0);

		if (query) {
			free(query);
			curl_url_cleanup(issuer_url);
			step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
				  "the issuer %s has a query component (RFC 8414 2)", issuer);
			return;
		}
	}
	s->issuer = xstrdup(issuer);
	json_object_object_add(s->result, "resource", json_object_new_string(resource));
	json_object_object_add(s->result, "issuer", json_object_new_string(issuer));

	/* The challenge's scope first (MCP scope selection), else everything
	 * the resource supports. */
	if (s->challenge->scope[0] && scope_list(s->challenge->scope)) {
		json_object_object_add(s->result, "scope", json_object_new_string(s->challenge->scope));
	} else if (json_object_object_get_ex(meta, "scopes_supported", &v) && json_object_is_type(v, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(v); i++) {
			struct json_object *e = json_object_array_get_idx(v, i);

			if (!json_object_is_type(e, json_type_string) ||
			    !scope_token(json_object_get_string(e), (size_t)json_object_get_string_len(e)) ||
			    scopes.len + (size_t)json_object_get_string_len(e) + 1 > CHALLENGE_MAX_VALUE)
				continue;
			if ((scopes.len && buf_add(&scopes, " ", 1) < 0) || buf_adds(&scopes, json_object_get_string(e)) < 0)
				fatal("out of memory");
		}
		if (scopes.len)
			json_object_object_add(s->result, "scope", json_object_new_string(scopes.data));
		buf_wipe(&scopes);
	}
	log_info("oauth: %s: protected resource metadata from %s: resource %s, authorization server %s", s->server,
		 from, resource, issuer);
	s->phase = DISCOVER_AS;
	discover_as_urls(s, issuer_url);
	curl_url_cleanup(issuer_url);
	discover_next(s);
}

/* One metadata document fetched (or not). */
static void discover_fetched(struct fetch *f, void *arg)
{
	struct step *s = arg;
	const char *url = s->urls[s->next_url - 1];
	const char *what = s->phase == DISCOVER_PRM ? "protected resource metadata" : "authorization server metadata";
	struct json_object *meta = NULL;
	size_t used = strlen(s->tried);

	s->fetch = NULL;
	if (f->result != CURLE_OK && !f->too_large) {
		char why[CURL_ERROR_SIZE + 64];

		fetch_describe_failure(f, why, sizeof(why));
		fetch_free(f);
		step_fail(s, KIND_TRANSIENT, LOGIN_R_NETWORK, NULL, 0, "%s from %s: %s", what, url, why);
		return;
	}
	if (f->status >= 500 || f->status == 429) {
		long status = f->status;

		fetch_free(f);
		step_fail(s, KIND_TRANSIENT, LOGIN_R_DISCOVERY, NULL, status, "%s from %s: HTTP %ld", what, url, status);
		return;
	}
	if (f->status == 200 && !f->too_large)
		meta = parse_body(&f->body);
	snprintf(s->tried + used, sizeof(s->tried) - used, "%s%s (%s%ld)", used ? ", " : "", url,
		 f->too_large ? "too large, HTTP " : f->status == 200 ? "not a JSON object, HTTP " : "HTTP ",
		 f->status);
	fetch_free(f);
	if (!meta) {
		discover_next(s);
		return;
	}
	if (s->phase == DISCOVER_PRM)
		discover_prm(s, meta, url);
	else
		discover_as(s, meta, url);
	json_object_put(meta);
}

/* Fetches the next candidate of this phase, or fails when none is left. */
static void discover_next(struct step *s)
{
	struct fetch *f;

	if (s->next_url >= s->n_urls) {
		if (s->phase == DISCOVER_PRM)
			step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
				  "no protected resource metadata for %s: %s", s->mcp_url, s->tried);
		else
			step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
				  "no authorization server metadata for %s: %s", s->issuer, s->tried);
		return;
	}
	f = step_fetch(s, s->urls[s->next_url++], discover_fetched);
	if (fetch_header(f, "Accept: application/json") < 0 || fetch_start(f) < 0)
		fatal("out of memory");
	log_debug("oauth: %s: fetching %s", s->server, s->urls[s->next_url - 1]);
}

/* The first Bearer challenge among the response's WWW-Authenticate fields. */
static void discover_challenge(struct step *s, CURL *easy)
{
	struct curl_header *h;
	size_t amount = 1;

	for (size_t i = 0; i < amount; i++) {
		struct challenge_bearer *b = s->challenge;

		if (curl_easy_header(easy, "WWW-Authenticate", i, CURLH_HEADER, -1, &h) != CURLHE_OK)
			break;
		amount = h->amount;
		if (challenge_parse(h->value, strlen(h->value), b) == 0 && b->found)
			return;
	}
	memset(s->challenge, 0, sizeof(*s->challenge));
}

static void discover_probed(struct fetch *f, void *arg)
{
	struct step *s = arg;
	char why[512];
	long status = f->status;

	s->fetch = NULL;
	if (!fetch_answered(f)) {
		fetch_describe_failure(f, why, sizeof(why));
		fetch_free(f);
		step_fail(s, KIND_TRANSIENT, LOGIN_R_NETWORK, NULL, 0, "%s: %s", s->mcp_url, why);
		return;
	}
	if (status == 401)
		discover_challenge(s, f->easy);
	fetch_free(f);
	log_info("oauth: %s: %s answered HTTP %ld%s", s->server, s->mcp_url, status,
		 s->challenge->found ? " with a Bearer challenge" : status == 401 ? " without a usable challenge" : "");

	s->phase = DISCOVER_PRM;
	if (s->challenge->resource_metadata[0]) {
		/* RFC 9728 5.1: the challenge says where the metadata is. */
		if (url_check(s->challenge->resource_metadata, NULL, why, sizeof(why)) < 0) {
			step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0, "resource_metadata in the 401 of %s: %s",
				  s->mcp_url, why);
			return;
		}
		s->urls[s->n_urls++] = xstrdup(s->challenge->resource_metadata);
	} else {
		/* RFC 9728 3.1: the well-known URI, path-specific first. */
		char *path = url_path_trimmed(s->mcp), *p;

		if (*path) {
			if (asprintf(&p, "/.well-known/oauth-protected-resource%s", path) < 0)
				fatal("out of memory");
			s->urls[s->n_urls++] = url_with_path(s->mcp, p);
			free(p);
		}
		s->urls[s->n_urls++] = url_with_path(s->mcp, "/.well-known/oauth-protected-resource");
		free(path);
	}
	discover_next(s);
}

/* Static headers from the server's config, for the probe only. */
static int discover_headers(struct step *s, struct json_object *headers)
{
	if (!headers || json_object_is_type(headers, json_type_null))
		return 0;
	if (!json_object_is_type(headers, json_type_object))
		return -EINVAL;
	json_object_object_foreach(headers, name, value) {
		struct buf line = { 0 };
		struct curl_slist *l;
		const char *v;

		if (!json_object_is_type(value, json_type_string) || !*name || strlen(name) > 128)
			return -EINVAL;
		for (const char *c = name; *c; c++)
			if (!(isalnum((unsigned char)*c) || strchr("!#$%&'*+-.^_`|~", *c)))
				return -EINVAL;
		v = json_object_get_string(value);
		for (const char *c = v; *c; c++)
			if ((unsigned char)*c < 0x20 && *c != '\t')
				return -EINVAL;
		if (buf_adds(&line, name) < 0 || buf_adds(&line, ": ") < 0 || buf_adds(&line, v) < 0)
			fatal("out of memory");
		l = curl_slist_append(s->probe_headers, line.data);
		buf_wipe(&line);
		if (!l)
			fatal("out of memory");
		s->probe_headers = l;
	}
	return 0;
}

void login_discover(struct oauth *o, struct rpc_msg *m)
{
	_cleanup_(step_freep) struct step *s = step_new(o, m, "discovery");
	struct json_object *p = m->params, *headers = NULL;
	const char *server, *url, *protocol, *bad = NULL;
	struct fetch *f;

	if (!json_object_is_type(p, json_type_object))
		bad = "params";
	else if (param_string(p, "server", &server) < 0 || !server || !*server)
		bad = "server";
	else if (param_string(p, "url", &url) < 0 || !url)
		bad = "url";
	else if (param_string(p, "protocol", &protocol) < 0 || !protocol ||
		 (strcmp(protocol, "streamable-http") != 0 && strcmp(protocol, "sse") != 0))
		bad = "protocol";
	else if (param_timeout(p, OAUTH_MAX_TIMEOUT_MS, &s->timeout_ms) < 0)
		bad = "timeout_ms";
	else if ((json_object_object_get_ex(p, "headers", &headers), discover_headers(s, headers) < 0))
		bad = "headers";
	if (bad) {
		keeper_bug(o, "oauth.discover with bad params", bad);
		return;
	}
	s->server = xstrdup(server);
	s->protocol = strcmp(protocol, "sse") == 0 ? "sse" : "streamable-http";
	s->challenge = calloc(1, sizeof(*s->challenge));
	s->result = json_object_new_object();
	if (!s->challenge || !s->result)
		fatal("out of memory");
	s->mcp = url_parse(url);
	if (!s->mcp) {
		char shown[DESCRIPTION_MAX + 1];

		sanitise_text(url, shown, sizeof(shown), DESCRIPTION_MAX);
		s->mcp_url = xstrdup(shown);
		step_fail(TAKE_PTR(s), KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0, "%s is not an http(s) URL", shown);
		return;
	}
	s->mcp_url = url_part(s->mcp, CURLUPART_URL, 0);
	if (!s->mcp_url)
		fatal("out of memory");

	/* MCP authorization: an unauthenticated request, to see the 401. Only
	 * its status and headers matter, so the transfer stops after them. */
	f = step_fetch(s, s->mcp_url, discover_probed);
	f->headers_only = true;
	for (struct curl_slist *h = s->probe_headers; h; h = h->next)
		if (fetch_header(f, h->data) < 0)
			fatal("out of memory");
	if (strcmp(s->protocol, "sse") == 0) {
		if (fetch_header(f, "Accept: text/event-stream") < 0)
			fatal("out of memory");
	} else {
		if (buf_adds(&f->req, "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{"
				      "\"protocolVersion\":\"" MCP_PROBE_VERSION "\",\"capabilities\":{},"
				      "\"clientInfo\":{\"name\":\"mcpkeeper\",\"version\":\"" MCPKEEPER_VERSION
				      "\"}}}") < 0 ||
		    fetch_header(f, "Accept: application/json, text/event-stream") < 0 ||
		    fetch_post(f, "application/json") < 0)
			fatal("out of memory");
	}
	if (fetch_start(f) < 0)
		fatal("out of memory");
	log_debug("oauth: %s: discovery: probing %s (%s)", s->server, s->mcp_url, s->protocol);
	step_link(TAKE_PTR(s));
}

/* -- oauth.register -- */

static void register_done(struct fetch *f, void *arg)
{
	struct step *s = arg;
	struct json_object *body = NULL, *v, *result;
	const char *oauth_error, *method = NULL, *secret = NULL, *client_id;
	char message[MESSAGE_MAX];
	long status = f->status;
	int64_t expires = 0;

	s->fetch = NULL;
	if (f->result != CURLE_OK) {
		fetch_describe_failure(f, message, sizeof(message));
		fetch_free(f);
		step_fail(s, KIND_TRANSIENT, LOGIN_R_NETWORK, NULL, 0, "registration endpoint: %s", message);
		return;
	}
	body = parse_body(&f->body);
	fetch_free(f);
	oauth_error = oauth_error_of(body);
	if (status != 200 && status != 201) {
		const char *kind = status == 429 || status >= 500 ? KIND_TRANSIENT : KIND_TERMINAL;
		struct json_object *d = NULL;

		if (oauth_error) {
			json_object_object_get_ex(body, "error_description", &d);
			refusal_text(message, sizeof(message), "the registration endpoint refused", oauth_error,
				     json_object_is_type(d, json_type_string) ? json_object_get_string(d) : NULL);
		} else {
			snprintf(message, sizeof(message), "the registration endpoint answered HTTP %ld", status);
		}
		step_fail(s, kind, LOGIN_R_REGISTRATION, oauth_error, status, "%s", message);
		rpc_wipe_put(body);
		return;
	}
	if (!body || !json_object_object_get_ex(body, "client_id", &v) || !vschar_string(v, false)) {
		rpc_wipe_put(body);
		step_fail(s, KIND_TERMINAL, LOGIN_R_REGISTRATION, NULL, status,
			  "the registration endpoint answered HTTP %ld without a client_id", status);
		return;
	}
	client_id = json_object_get_string(v);
	if (json_object_object_get_ex(body, "client_secret", &v) && vschar_string(v, false))
		secret = json_object_get_string(v);
	if (json_object_object_get_ex(body, "token_endpoint_auth_method", &v) &&
	    json_object_is_type(v, json_type_string))
		method = json_object_get_string(v);
	else
		method = secret ? "client_secret_basic" : "none";
	if (strcmp(method, "none") != 0 && strcmp(method, "client_secret_basic") != 0 &&
	    strcmp(method, "client_secret_post") != 0) {
		char shown[65];

		sanitise_text(method, shown, sizeof(shown), 64);
		rpc_wipe_put(body);
		step_fail(s, KIND_TERMINAL, LOGIN_R_REGISTRATION, NULL, status,
			  "the client was registered for token_endpoint_auth_method %s, which mcpkeeper does not "
			  "support", shown);
		return;
	}
	if (strcmp(method, "none") != 0 && !secret) {
		rpc_wipe_put(body);
		step_fail(s, KIND_TERMINAL, LOGIN_R_REGISTRATION, NULL, status,
			  "the client was registered for %s without a client_secret", method);
		return;
	}
	if (json_object_object_get_ex(body, "client_secret_expires_at", &v) && json_object_is_type(v, json_type_int) &&
	    json_object_get_int64(v) > 0)
		expires = json_object_get_int64(v);

	result = json_object_new_object();
	json_object_object_add(result, "client_id", json_object_new_string(client_id));
	if (secret && strcmp(method, "none") != 0)
		json_object_object_add(result, "client_secret", json_object_new_string(secret));
	json_object_object_add(result, "auth_method", json_object_new_string(method));
	json_object_object_add(result, "client_secret_expires_at", json_object_new_int64(expires));
	log_info("oauth: %s: registered a client (HTTP %ld, %s)", s->server, status, method);
	rpc_wipe_put(body);
	step_reply(s, result);
}

void login_register(struct oauth *o, struct rpc_msg *m)
{
	_cleanup_(step_freep) struct step *s = step_new(o, m, "registration");
	struct json_object *p = m->params, *methods = NULL, *meta, *a;
	const char *server, *endpoint, *redirect_uri, *scope, *method, *bad = NULL;
	char why[512];
	struct fetch *f;
	const char *body;

	if (!json_object_is_type(p, json_type_object))
		bad = "params";
	else if (param_string(p, "server", &server) < 0 || !server || !*server)
		bad = "server";
	else if (param_string(p, "registration_endpoint", &endpoint) < 0 || !endpoint)
		bad = "registration_endpoint";
	else if (param_string(p, "redirect_uri", &redirect_uri) < 0 || !redirect_uri || !*redirect_uri)
		bad = "redirect_uri";
	else if (param_string(p, "scope", &scope) < 0)
		bad = "scope";
	else if (param_timeout(p, OAUTH_MAX_TIMEOUT_MS, &s->timeout_ms) < 0)
		bad = "timeout_ms";
	else if (json_object_object_get_ex(p, "token_endpoint_auth_methods", &methods) &&
		 !json_object_is_type(methods, json_type_array) && !json_object_is_type(methods, json_type_null))
		bad = "token_endpoint_auth_methods";
	if (bad) {
		keeper_bug(o, "oauth.register with bad params", bad);
		return;
	}
	s->server = xstrdup(server);
	if (url_check(endpoint, NULL, why, sizeof(why)) < 0) {
		step_fail(TAKE_PTR(s), KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0, "registration_endpoint: %s", why);
		return;
	}
	/* A public client when the server takes one (no secret to keep), else
	 * RFC 7591's default, else the only other one we speak. */
	if (json_object_is_type(methods, json_type_array) && string_in_array(methods, "none"))
		method = "none";
	else if (!json_object_is_type(methods, json_type_array) || string_in_array(methods, "client_secret_basic"))
		method = "client_secret_basic";
	else
		method = "client_secret_post";

	meta = json_object_new_object();
	json_object_object_add(meta, "client_name", json_object_new_string("mcpkeeper"));
	json_object_object_add(meta, "application_type", json_object_new_string("native"));
	a = json_object_new_array();
	json_object_array_add(a, json_object_new_string(redirect_uri));
	json_object_object_add(meta, "redirect_uris", a);
	a = json_object_new_array();
	json_object_array_add(a, json_object_new_string("authorization_code"));
	json_object_array_add(a, json_object_new_string("refresh_token"));
	json_object_object_add(meta, "grant_types", a);
	a = json_object_new_array();
	json_object_array_add(a, json_object_new_string("code"));
	json_object_object_add(meta, "response_types", a);
	json_object_object_add(meta, "token_endpoint_auth_method", json_object_new_string(method));
	if (scope)
		json_object_object_add(meta, "scope", json_object_new_string(scope));

	f = step_fetch(s, endpoint, register_done);
	body = json_object_to_json_string_ext(meta, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	if (!body || buf_adds(&f->req, body) < 0 || fetch_header(f, "Accept: application/json") < 0 ||
	    fetch_post(f, "application/json") < 0 || fetch_start(f) < 0)
		fatal("out of memory");
	json_object_put(meta);
	log_debug("oauth: %s: registering a client (%s)", s->server, method);
	step_link(TAKE_PTR(s));
}

/* -- oauth.revoke -- */

static void revoke_done(struct fetch *f, void *arg)
{
	struct step *s = arg;
	struct json_object *body, *result;
	const char *oauth_error, *kind;
	char message[MESSAGE_MAX];
	long status = f->status;

	s->fetch = NULL;
	if (f->result != CURLE_OK) {
		fetch_describe_failure(f, message, sizeof(message));
		fetch_free(f);
		step_fail(s, KIND_TRANSIENT, LOGIN_R_REVOKE, NULL, 0, "revocation endpoint: %s", message);
		return;
	}
	if (status == 200) {
		fetch_free(f);
		log_info("oauth: %s: token revoked (HTTP 200%s%s)", s->server, s->hint ? ", " : "", s->hint ? s->hint : "");
		result = json_object_new_object();
		json_object_object_add(result, "http_status", json_object_new_int(200));
		step_reply(s, result);
		return;
	}
	body = parse_body(&f->body);
	fetch_free(f);
	oauth_error = oauth_error_of(body);
	kind = status == 429 || status >= 500 ? KIND_TRANSIENT : KIND_TERMINAL;
	if (oauth_error)
		snprintf(message, sizeof(message), "HTTP %ld: %s", status, oauth_error);
	else
		snprintf(message, sizeof(message), "HTTP %ld", status);
	step_fail(s, kind, LOGIN_R_REVOKE, oauth_error, status, "%s", message);
	rpc_wipe_put(body);
}

void login_revoke(struct oauth *o, struct rpc_msg *m)
{
	_cleanup_(step_freep) struct step *s = step_new(o, m, "revocation");
	struct json_object *p = m->params;
	const char *server, *endpoint, *token, *hint, *client_id, *client_secret, *auth_method, *bad = NULL;
	char why[512];
	struct fetch *f;

	if (!json_object_is_type(p, json_type_object))
		bad = "params";
	else if (param_string(p, "server", &server) < 0 || !server || !*server)
		bad = "server";
	else if (param_string(p, "revocation_endpoint", &endpoint) < 0 || !endpoint)
		bad = "revocation_endpoint";
	else if (param_string(p, "token", &token) < 0 || !token || !*token)
		bad = "token";
	else if (param_string(p, "token_type_hint", &hint) < 0 || (hint && !visible_ascii(hint, 64)))
		bad = "token_type_hint";
	else if (param_string(p, "client_id", &client_id) < 0 || !client_id || !*client_id)
		bad = "client_id";
	else if (param_string(p, "client_secret", &client_secret) < 0)
		bad = "client_secret";
	else if (param_string(p, "auth_method", &auth_method) < 0 || !auth_method ||
		 (strcmp(auth_method, "none") != 0 && strcmp(auth_method, "client_secret_basic") != 0 &&
		  strcmp(auth_method, "client_secret_post") != 0) ||
		 (strcmp(auth_method, "none") != 0 && !client_secret))
		bad = "auth_method";
	else if (param_timeout(p, OAUTH_MAX_TIMEOUT_MS, &s->timeout_ms) < 0)
		bad = "timeout_ms";
	if (bad) {
		keeper_bug(o, "oauth.revoke with bad params", bad);
		return;
	}
	s->server = xstrdup(server);
	s->hint = xstrdup(hint);
	if (url_check(endpoint, NULL, why, sizeof(why)) < 0) {
		step_fail(TAKE_PTR(s), KIND_TERMINAL, LOGIN_R_REVOKE, NULL, 0, "revocation_endpoint: %s", why);
		return;
	}
	f = step_fetch(s, endpoint, revoke_done);
	if (form_add(&f->req, "token", token) < 0 || (hint && form_add(&f->req, "token_type_hint", hint) < 0) ||
	    fetch_client_auth(f, auth_method, client_id, client_secret) < 0 ||
	    fetch_header(f, "Accept: application/json") < 0 ||
	    fetch_post(f, "application/x-www-form-urlencoded") < 0 || fetch_start(f) < 0)
		fatal("out of memory");
	log_debug("oauth: %s: revoking a token%s%s", s->server, hint ? ": " : "", hint ? hint : "");
	step_link(TAKE_PTR(s));
}

void login_free_all(struct oauth *o)
{
	while (o->logins)
		login_free(o->logins);
	while (o->steps)
		step_free(o->steps);
}
