/*
 * What the oauth child's login requests share (common/proto.h, "Login and
 * logout"). The keeper drives a login as a sequence of requests and keeps
 * everything that must persist; the child does each one's network part:
 *
 *   oauth.listen, oauth.authorize, oauth.cancel   authorize.c
 *   oauth.discover                                 discover.c
 *   oauth.register                                 register.c
 *   oauth.revoke, and the login's code exchange    token.c
 *
 * Two kinds of state live here. A login (struct login, one per server) is
 * a redirect listener and, once oauth.authorize came, the authorization in
 * progress; it ends with a page for the browser, then the port closes, then
 * the keeper gets its answer. A step (struct step) is one discover,
 * register or revoke request with one fetch at a time. Beside them: the
 * error every step answers with, the URL checks for anything taken from
 * metadata, and the secrets' memory.
 *
 * Secrets: the PKCE verifier and state live in sodium_malloc'ed memory for
 * one login; the code only inside the exchange's request body; the client
 * secret for one request. Every buffer that held one is wiped. Tokens and
 * codes are never logged, and neither are response bodies. Everything sent
 * back to the keeper is printable ASCII, so nothing a server sends can break
 * the framing. Everything a page echoes to the browser is HTML-escaped.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <json-c/json.h>
#include <sodium.h>

#include "frame.h"
#include "log.h"
#include "oauth.h"
#include "proto.h"
#include "util.h"

/* How long the result page may take to reach the browser before the keeper
 * is answered anyway. */
#define PAGE_GRACE_MS 2000

/* -- small helpers -- */

char *secret_dup(const char *s)
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

void secret_free(char **s)
{
	if (*s)
		sodium_free(*s); /* wipes */
	*s = NULL;
}

int64_t login_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Visible ASCII, nothing else: what may go back to the keeper as a URL or word. */
bool login_visible_ascii(const char *s, size_t max)
{
	size_t n = 0;

	for (; s[n]; n++)
		if ((unsigned char)s[n] < 0x21 || (unsigned char)s[n] > 0x7e || n >= max)
			return false;
	return n > 0;
}

/* An RPC_APP_ERROR for a login step: data {kind, reason, oauth_error?, http_status?}. */
struct json_object *login_error_msg(struct json_object *id, const char *kind, const char *reason,
				    const char *oauth_error, long http_status, const char *message)
{
	struct json_object *msg = rpc_error(id, RPC_APP_ERROR, kind, message), *err, *data;

	if (!msg)
		fatal("out of memory");
	if (json_object_object_get_ex(msg, "error", &err) && json_object_object_get_ex(err, "data", &data)) {
		json_object_object_add(data, PARAM_KEY_REASON, json_object_new_string(reason));
		if (oauth_error)
			json_object_object_add(data, PARAM_KEY_OAUTH_ERROR, json_object_new_string(oauth_error));
		if (http_status > 0)
			json_object_object_add(data, PARAM_KEY_HTTP_STATUS, json_object_new_int((int)http_status));
	}
	return msg;
}

/* "WHO: error: description" with the description made safe. */
void login_refusal_text(char *out, size_t len, const char *who, const char *oauth_error, const char *description)
{
	char desc[DESCRIPTION_MAX + 1];

	sanitise_text(description, desc, sizeof(desc), DESCRIPTION_MAX);
	snprintf(out, len, "%s: %s%s%s", who, oauth_error, desc[0] ? ": " : "", desc);
}

bool login_string_in_array(struct json_object *a, const char *s)
{
	size_t n = json_object_is_type(a, json_type_array) ? json_object_array_length(a) : 0;

	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(a, i);

		if (json_object_is_type(e, json_type_string) && strcmp(json_object_get_string(e), s) == 0)
			return true;
	}
	return false;
}

/* -- URLs (parsed by libcurl's URL API only) -- */

static bool loopback_host(const char *host)
{
	struct in_addr a;

	if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0)
		return true;
	return inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

char *url_part(CURLU *u, CURLUPart part, unsigned flags)
{
	char *p = NULL, *copy;

	if (curl_url_get(u, part, &p, flags) != CURLUE_OK)
		return NULL;
	copy = xstrdup(p);
	curl_free(p);
	return copy;
}

/* Parses an http or https URL. NULL when it is not one. */
CURLU *url_parse(const char *url)
{
	CURLU *u;
	char *scheme;
	bool ok;

	if (!login_visible_ascii(url, URL_MAX))
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
int url_check(const char *url, CURLU **out, char *why, size_t len)
{
	CURLU *u = url_parse(url);
	char *scheme = NULL, *host = NULL, *user = NULL, *fragment = NULL;
	char shown[DESCRIPTION_MAX + 1];
	int r = -EINVAL;

	/* The URL goes back to the keeper in why: printable ASCII only (a
	 * metadata document's bytes need not even be UTF-8). */
	sanitise_text(url, shown, sizeof(shown), DESCRIPTION_MAX);
	if (!u) {
		snprintf(why, len, "%s is not an http(s) URL", shown);
		return -EINVAL;
	}
	scheme = url_part(u, CURLUPART_SCHEME, 0);
	host = url_part(u, CURLUPART_HOST, 0);
	user = url_part(u, CURLUPART_USER, 0);
	fragment = url_part(u, CURLUPART_FRAGMENT, 0);
	if (!scheme || !host)
		snprintf(why, len, "%s is not an http(s) URL", shown);
	else if (strcmp(scheme, "https") != 0 && !loopback_host(host))
		snprintf(why, len, "%s is not https (plain http is allowed only to a loopback host)", shown);
	else if (user || fragment)
		snprintf(why, len, "%s carries user information or a fragment", shown);
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

/* -- logins: one per server -- */

/* This server's login; one that is only delivering its last page counts
 * when ending_too says so. */
struct login *login_find(struct oauth *o, const char *server, bool ending_too)
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

struct login *login_free(struct login *l)
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
void login_close_listener(struct login *l)
{
	if (l->bound) {
		evhttp_del_accept_socket(l->http, l->bound);
		l->bound = NULL;
		log_debug("oauth: %s: redirect listener on 127.0.0.1:%d closed", l->server, l->port);
	}
}

/* The keeper's reply, once; a token response too large for the channel
 * becomes an error. */
void login_send_reply(struct login *l)
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
void login_end(struct login *l, struct json_object *reply, int status, const char *title, const char *text)
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

void login_fail(struct login *l, const char *kind, const char *reason, const char *oauth_error,
		long http_status, const char *message)
{
	char text[MESSAGE_MAX + 128];

	log_warn("oauth: %s: login failed: %s (%s)", l->server, message, reason);
	snprintf(text, sizeof(text), "Login to %s failed: %s", l->server, message);
	login_end(l, login_error_msg(l->id, kind, reason, oauth_error, http_status, message), 400,
		  "mcpkeeper: login failed", text);
}

/* -- steps: discover, register, revoke -- */

struct step *step_free(struct step *s)
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

void step_freep(struct step **s)
{
	*s = step_free(*s);
}

struct step *step_new(struct oauth *o, struct rpc_msg *m, const char *what)
{
	struct step *s = xcalloc(1, sizeof(*s));

	s->o = o;
	s->what = what;
	s->id = json_object_get(m->id);
	return s;
}

void step_link(struct step *s)
{
	struct oauth *o = s->o;

	s->next = o->steps;
	if (s->next)
		s->next->pprev = &s->next;
	s->pprev = &o->steps;
	o->steps = s;
}

void step_fail(struct step *s, const char *kind, const char *reason, const char *oauth_error, long http_status,
	       const char *fmt, ...)
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
void step_reply(struct step *s, struct json_object *result)
{
	struct json_object *msg = rpc_result(s->id, result);

	if (!msg)
		fatal("out of memory");
	oauth_send(s->o, msg);
	rpc_wipe_put(msg);
	step_free(s);
}

/* A fetch for s under its server's policy; the caller adds what it needs
 * and starts it. */
struct fetch *step_fetch(struct step *s, const char *purpose, const char *url, fetch_done_fn done)
{
	struct fetch *f = fetch_new(s->o, s->server, purpose, url, s->timeout_ms, done, s);

	if (!f)
		fatal("out of memory");
	s->fetch = f;
	return f;
}

void login_free_all(struct oauth *o)
{
	while (o->logins)
		login_free(o->logins);
	while (o->steps)
		step_free(o->steps);
}
