/*
 * Shared between the two files of the oauth child: oauth.c (main, the
 * channel to the keeper, oauth.refresh, and the HTTP plumbing below) and
 * oauth-login.c (oauth.listen, discover, register, authorize, cancel and
 * revoke). Nothing outside daemon/oauth/ includes it.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

#include "channel.h"

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

/* The process's one context. */
struct oauth {
	struct event_base *base;
	struct channel chan;		/* fd 3, to the keeper */
	struct curlev *curl;
	struct refresh *refreshes;	/* oauth.refresh in flight */
	struct login *logins;		/* per server: redirect listener, authorize */
	struct step *steps;		/* discover, register, revoke in flight */
	bool hello_done;
	char landlock[128];
};

/* -- byte buffers for bodies that may hold secrets: wiped whenever they move -- */

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

/* -- one HTTP transfer on the shared multi handle -- */

struct fetch;
/* Runs from the loop when the transfer ends; the owner frees f (now or later). */
typedef void (*fetch_done_fn)(struct fetch *f, void *arg);

struct fetch {
	struct oauth *o;
	CURL *easy;
	struct curl_slist *headers;	/* wiped at free: may hold Basic credentials */
	struct buf req;			/* request body */
	struct buf body;		/* response body, at most OAUTH_MAX_BODY */
	CURLcode result;
	long status;			/* 0: no HTTP answer */
	bool too_large;
	bool headers_only;		/* stop once the response headers are in */
	bool headers_seen;
	char errbuf[CURL_ERROR_SIZE];
	fetch_done_fn done;
	void *arg;
};

/* A GET of url with no redirects, the body capped and timeout_ms for the
 * whole transfer. NULL when memory is short or url is refused by libcurl's
 * option (the caller says what it was fetching). */
struct fetch *fetch_new(struct oauth *o, const char *url, long timeout_ms, fetch_done_fn done, void *arg);
int fetch_header(struct fetch *f, const char *line);
/* Turns the request into a POST with the given Content-Type; its body is
 * f->req as it stands when fetch_start() runs. */
int fetch_post(struct fetch *f, const char *content_type);
/* Client authentication of RFC 6749 2.3.1: "client_secret_basic" adds an
 * Authorization header, "client_secret_post" adds client_id and
 * client_secret to the form, "none" only client_id. */
int fetch_client_auth(struct fetch *f, const char *auth_method, const char *client_id, const char *client_secret);
int fetch_start(struct fetch *f);
struct fetch *fetch_free(struct fetch *f);
/* A transfer that got no complete HTTP answer (result != CURLE_OK and not a
 * headers_only stop): "network error: ...", "timed out: ..." or the size
 * limit. Never holds response bytes. */
void fetch_describe_failure(const struct fetch *f, char *out, size_t len);
/* True when the transfer ended with an HTTP answer we may look at. */
bool fetch_answered(const struct fetch *f);

/* -- response bodies -- */

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

/*
 * The verdict on a finished token-endpoint transfer, as oauth.refresh
 * classifies it: a result object for the keeper (access_token, token_type,
 * expires_in?, refresh_token?, scope?, http_status), or kind, oauth_error
 * and message. message never holds token bytes; oauth_error and
 * description point into body.
 */
struct token_verdict {
	struct json_object *result;	/* success */
	struct json_object *body;
	const char *kind;		/* KIND_TRANSIENT / KIND_TERMINAL on failure */
	const char *oauth_error;
	const char *description;	/* the provider's error_description, raw */
	bool answered;			/* there was an HTTP answer */
	long http_status;
	char message[CURL_ERROR_SIZE + 64];
};
void token_verdict(const struct fetch *f, struct token_verdict *v);
/* Wipes and drops result and body. */
void token_verdict_clear(struct token_verdict *v);

/* -- the channel to the keeper -- */

void oauth_send(struct oauth *o, struct json_object *msg);
/* Ends the loop with code once every queued reply is written. */
void oauth_stop(struct oauth *o, int code);
/* A keeper bug: say what, and end (the keeper restarts us). */
void keeper_bug(struct oauth *o, const char *what, const char *detail);
/* An optional string parameter: 0 (and *out NULL when absent or null), or
 * -EINVAL when it is there with another type. */
int param_string(struct json_object *params, const char *key, const char **out);
/* timeout_ms: an integer in 1..max. */
int param_timeout(struct json_object *params, long max, long *out);

/* -- oauth-login.c -- */

void login_listen(struct oauth *o, struct rpc_msg *m);
void login_discover(struct oauth *o, struct rpc_msg *m);
void login_register(struct oauth *o, struct rpc_msg *m);
void login_authorize(struct oauth *o, struct rpc_msg *m);
void login_revoke(struct oauth *o, struct rpc_msg *m);
/* oauth.cancel, a notification. */
void login_cancel(struct oauth *o, struct rpc_msg *m);
/* At exit: drops every login and step without answering. */
void login_free_all(struct oauth *o);
