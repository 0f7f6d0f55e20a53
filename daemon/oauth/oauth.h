/*
 * The oauth child's internal header: what its files share, one section per
 * file. oauth.c is main and the channel to the keeper; fetch.c the HTTP
 * plumbing every request uses; login.c the logins and steps every login
 * request builds on; discover.c, register.c, authorize.c and token.c one
 * job each (common/proto.h has the methods). Nothing outside daemon/oauth/
 * includes it.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

#include "addr.h"
#include "channel.h"
#include "util.h"

struct evhttp_request;
struct json_object;
struct rpc_msg;

#define OAUTH_MAX_BODY (1024 * 1024)
#define OAUTH_CONNECT_TIMEOUT_S 10L
/* Far above any sane request timeout; a larger value is a keeper bug. */
#define OAUTH_MAX_TIMEOUT_MS (15L * 60 * 1000)
/* RFC 6749 error codes are short words; anything else is not one. */
#define OAUTH_ERROR_MAX 64

struct refresh;
struct login;
struct step;

/* A server's address policy (common/proto.h), as the keeper's latest
 * request about it said. */
struct policy {
	struct policy *next;
	char *server;
	enum addr_class server_class;	/* of the MCP server URL's host as written */
	bool allow_private;		/* oauth.allow_private_endpoints */
	bool allow_insecure_http;
};

/* The process's one context. */
struct oauth {
	struct event_base *base;
	struct channel chan;		/* fd 3, to the keeper */
	struct curlev *curl;
	struct refresh *refreshes;	/* oauth.refresh in flight */
	struct login *logins;		/* per server: redirect listener, authorize */
	struct step *steps;		/* discover, register, revoke in flight */
	struct policy *policies;	/* one per server the keeper asked about */
	bool hello_done;
	char landlock[128];
};

/* -- fetch.c: byte buffers for bodies that may hold secrets, wiped whenever they move -- */

struct buf {
	char *data;
	size_t len, cap;
};

void buf_wipe(struct buf *b);
int buf_reserve(struct buf *b, size_t more);
int buf_add(struct buf *b, const void *p, size_t n);
int buf_adds(struct buf *b, const char *s);
/* application/x-www-form-urlencoded serialisation of one value. */
int buf_add_form_encoded(struct buf *b, const char *s);
/* Appends key=value (value form-encoded), with '&' after the first. */
int form_add(struct buf *form, const char *key, const char *value);

/* -- fetch.c: one HTTP transfer on the shared multi handle -- */

struct fetch;
/* Runs from the loop when the transfer ends; the owner frees f (now or later). */
typedef void (*fetch_done_fn)(struct fetch *f, void *arg);

struct fetch {
	struct oauth *o;
	CURL *easy;
	struct policy policy;		/* a copy: next and server unset */
	const char *purpose;		/* "the token endpoint"...: for the refusal */
	bool own_origin;		/* the server's own URL or its well-known metadata */
	bool plain_http;
	bool proxied;			/* through the environment's proxy: the policy
					 * judges the URL's host as written (host_class) */
	enum addr_class host_class;
	char refused[320];		/* why a connection was refused, or "" */
	struct curl_slist *headers;	/* wiped at free: may hold Basic credentials */
	struct buf req;			/* request body */
	struct buf body;		/* response body, at most OAUTH_MAX_BODY */
	CURLcode result;
	long status;			/* 0: no HTTP answer */
	bool too_large;
	bool headers_only;		/* stop once the response headers are in */
	bool headers_seen;
	bool event_stream;		/* a document came as text/event-stream: stopped */
	char errbuf[CURL_ERROR_SIZE];
	fetch_done_fn done;
	void *arg;
};

/* proxy.c: the environment's proxy for url, or NULL for none. */
const char *proxy_for_url(const char *url);

/* A GET of url with no redirects, through the environment's proxy when
 * one applies (proxy.c), and no connection reuse, the
 * body capped and timeout_ms for the whole transfer, each connection checked
 * against server's address policy (what it is for names purpose in the
 * refusal). NULL when memory is short or url is refused by libcurl's option
 * (the caller says what it was fetching). */
struct fetch *fetch_new(struct oauth *o, const char *server, const char *purpose, const char *url, long timeout_ms,
			fetch_done_fn done, void *arg);
int fetch_header(struct fetch *f, const char *line);
/* Turns the request into a POST with the given Content-Type; its body is
 * f->req as it stands when fetch_start() runs. */
int fetch_post(struct fetch *f, const char *content_type);
/* Client authentication of RFC 6749 2.3.1: "client_secret_basic" adds an
 * Authorization header, "client_secret_post" adds client_id and
 * client_secret to the form, "none" only client_id. */
int fetch_client_auth(struct fetch *f, const char *auth_method, const char *client_id, const char *client_secret);
/* An auth_method fetch_client_auth() speaks, with the client_secret it
 * needs: 0, or -EINVAL with *bad naming the key (auth_method,
 * client_secret) at fault. */
int fetch_client_auth_check(const char *auth_method, const char *client_secret, const char **bad);
int fetch_start(struct fetch *f);
struct fetch *fetch_free(struct fetch *f);
/* A transfer that got no complete HTTP answer (result != CURLE_OK and not a
 * headers_only stop): "network error: ...", "timed out: ..." or the size
 * limit. Never holds response bytes. */
void fetch_describe_failure(const struct fetch *f, char *out, size_t len);
/* True when the transfer ended with an HTTP answer we may look at. */
bool fetch_answered(const struct fetch *f);

/* -- fetch.c: the address policy of each server -- */

/* Keeps the policy a request from the keeper carries (m's params), if it
 * carries one: 0, or -EINVAL with *bad naming the key at fault. */
int policy_note(struct oauth *o, struct rpc_msg *m, const char **bad);
/* server's policy; without one, public https only. */
const struct policy *policy_of(const struct oauth *o, const char *server);
void policy_free_all(struct oauth *o);

/* -- fetch.c: response bodies -- */

/* The response body as a JSON object, or NULL. Wipe it with rpc_wipe_put(). */
struct json_object *parse_body(const struct buf *body);
/* The RFC 6749 5.2 "error" of obj when it is a well-formed error code. */
const char *oauth_error_of(struct json_object *obj);
/* A JSON string of visible ASCII (VSCHAR), so it cannot break our framing. */
bool vschar_string(struct json_object *v, bool allow_empty);
/* Copies s into out as printable ASCII (others become '?'), at most
 * max_chars characters, "..." marking a cut. For provider-sent
 * descriptions that reach a user. */
void sanitise_text(const char *s, char *out, size_t len, size_t max_chars);

/* -- oauth.c: the channel to the keeper -- */

void oauth_send(struct oauth *o, struct json_object *msg);
/* Ends the loop with code once every queued reply is written. */
void oauth_stop(struct oauth *o, int code);
/* A keeper bug: say what, and end (the keeper restarts us). */
void keeper_bug(struct oauth *o, const char *what, const char *detail);

/* -- login.c: logins and steps, and what every login request shares -- */

/* A provider's error_description as a user sees it. */
#define DESCRIPTION_MAX 200
#define URL_MAX 2048
#define MESSAGE_MAX 1024

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
	unsigned n_foreign;		/* callbacks without this login's state */
	char *verifier, *state;		/* sodium_malloc, B64_43 each (authorize.c) */
	struct json_object *reply;	/* for the keeper, once the page is out */
};

/* DISCOVER_PROBE2: the initialize probe was let through, so a request that
 * needs authorization is tried for the challenge (see discover.c). */
enum discover_phase { DISCOVER_PROBE, DISCOVER_PROBE2, DISCOVER_PRM, DISCOVER_AS };

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
	bool own_urls;			/* this phase's candidates are at the server's own origin */
	char tried[768];		/* what the candidates answered, for the message */
	struct json_object *result;
	char *issuer;

	/* revoke */
	char *hint;
};

/* A copy of s in sodium_malloc'ed memory (NULL for NULL); secret_free()
 * wipes it and sets *s to NULL. */
char *secret_dup(const char *s);
void secret_free(char **s);
/* CLOCK_MONOTONIC in milliseconds. */
int64_t login_now_ms(void);
/* Visible ASCII, 1..max characters: what may go back to the keeper as a
 * URL or word. */
bool login_visible_ascii(const char *s, size_t max);
/* Whether the JSON array a holds the string s. */
bool login_string_in_array(struct json_object *a, const char *s);
/* An RPC_APP_ERROR for a login step: data {kind, reason, oauth_error?, http_status?}. */
struct json_object *login_error_msg(struct json_object *id, const char *kind, const char *reason,
				    const char *oauth_error, long http_status, const char *message);
/* "WHO: error: description" with the description made safe. */
void login_refusal_text(char *out, size_t len, const char *who, const char *oauth_error, const char *description);

/* URLs, parsed by libcurl's URL API only. url_parse(): an http or https
 * URL, or NULL. url_part(): a copy of one part, or NULL. url_check(): a URL
 * taken from metadata: https, or http to a loopback host only, with neither
 * user info nor fragment; 0 (and *out when asked), or -EINVAL with why
 * filled. */
CURLU *url_parse(const char *url);
char *url_part(CURLU *u, CURLUPart part, unsigned flags);
int url_check(const char *url, CURLU **out, char *why, size_t len);

/* This server's login; one that is only delivering its last page counts
 * when ending_too says so. */
struct login *login_find(struct oauth *o, const char *server, bool ending_too);
/* Unlinks and frees l (a browser still waiting gets a 503); NULL. */
struct login *login_free(struct login *l);
/* Stops accepting connections; those accepted stay until login_free(). */
void login_close_listener(struct login *l);
/* Sends l->reply to the keeper, once. */
void login_send_reply(struct login *l);
/* Ends an authorization: the browser's page, then the port, then reply
 * (taken) for the keeper. */
void login_end(struct login *l, struct json_object *reply, int status, const char *title, const char *text);
/* login_end() with an error for the keeper and a failure page. */
void login_fail(struct login *l, const char *kind, const char *reason, const char *oauth_error,
		long http_status, const char *message);
/* At exit: drops every login and step without answering. */
void login_free_all(struct oauth *o);

/* A step for request m, not yet linked; what names it in logs. */
struct step *step_new(struct oauth *o, struct rpc_msg *m, const char *what);
struct step *step_free(struct step *s);
void step_freep(struct step **s);
/* Makes s one of o's steps in flight. */
void step_link(struct step *s);
/* Answers the keeper with an error and frees s. */
_printf_(6, 7) void step_fail(struct step *s, const char *kind, const char *reason, const char *oauth_error,
			      long http_status, const char *fmt, ...);
/* Sends result (taken) and frees s; the result may hold secrets. */
void step_reply(struct step *s, struct json_object *result);
/* A fetch for s with its timeout and its server's policy, for purpose; the
 * caller adds what it needs and starts it. */
struct fetch *step_fetch(struct step *s, const char *purpose, const char *url, fetch_done_fn done);

/* -- discover.c -- */

/* oauth.discover: RFC 9728, then RFC 8414 / OpenID discovery. */
void discover_start(struct oauth *o, struct rpc_msg *m);

/* -- register.c -- */

/* oauth.register: RFC 7591 dynamic client registration. */
void register_start(struct oauth *o, struct rpc_msg *m);

/* -- authorize.c -- */

void authorize_listen(struct oauth *o, struct rpc_msg *m);
void authorize_start(struct oauth *o, struct rpc_msg *m);
/* oauth.cancel, a notification. */
void authorize_cancel(struct oauth *o, struct rpc_msg *m);
/* The one HTML page the listener serves, title and text HTML-escaped. */
void page_send(struct evhttp_request *req, int status, const char *title, const char *text);

/* -- token.c -- */

void token_refresh(struct oauth *o, struct rpc_msg *m);
void token_revoke(struct oauth *o, struct rpc_msg *m);
/* The login's code exchange (RFC 6749 4.1.3 with the PKCE verifier); it
 * ends l with login_end() or login_fail(). */
void token_exchange(struct login *l, const char *code);
/* Drops a refresh in flight without answering; NULL. */
struct refresh *refresh_free(struct refresh *r);
