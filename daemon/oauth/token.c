/*
 * The oauth child's requests to a token endpoint and its neighbour, the
 * revocation endpoint: oauth.refresh (a refresh_token grant, RFC 6749
 * section 6), the login's code exchange (RFC 6749 4.1.3 with the PKCE
 * verifier of RFC 7636) and oauth.revoke (RFC 7009), and the one
 * classification of a token response both grants share (RFC 6749 5.1 and
 * 5.2).
 *
 * What it may touch: the network through struct fetch. It holds a refresh
 * token, a code or a client secret only inside one request's form, which
 * fetch_free() wipes; token responses are parsed into objects the reply
 * shares and wiped with it. Messages name the HTTP status and the OAuth
 * error code, never a response body. A token longer than PROTO_MAX_TOKEN
 * never reaches the keeper: the response is refused here, by its length.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/bufferevent.h>
#include <json-c/json.h>

#include "frame.h"
#include "log.h"
#include "oauth.h"
#include "params.h"
#include "proto.h"
#include "util.h"

struct refresh {
	struct oauth *o;
	struct refresh *next, **pprev;
	struct json_object *id;
	char *server;
	struct fetch *fetch;		/* its form holds the refresh token, maybe the client secret */
};

/*
 * The verdict on a finished token-endpoint transfer, the same for a refresh
 * and a code exchange: a result object for the keeper (access_token,
 * token_type, expires_in?, refresh_token?, scope?, http_status), or kind,
 * reason (when it is more specific than the kind), oauth_error and message.
 * message never holds token bytes; oauth_error and description point into
 * body.
 */
struct token_verdict {
	struct json_object *result;	/* success */
	struct json_object *body;
	const char *kind;		/* KIND_TRANSIENT / KIND_TERMINAL on failure */
	const char *reason;		/* LOGIN_R_TOKEN_TOO_LARGE, or NULL */
	const char *oauth_error;
	const char *description;	/* the provider's error_description, raw */
	bool answered;			/* there was an HTTP answer */
	bool expires_in_unusable;	/* an expires_in that is no number: ignored */
	long http_status;
	long retry_after;		/* seconds the provider asked us to wait, or 0 */
	char message[CURL_ERROR_SIZE + 64];
};

/* -- token responses -- */

/* expires_in as an integer or a numeric string: 0 and *out, or -EINVAL
 * when it is unusable. Values out of range (0, negative, huge) go to the
 * keeper as they are: it clamps them, and says so. */
static int expires_in_of(struct json_object *v, int64_t *out)
{
	switch (json_object_get_type(v)) {
	case json_type_int:
		*out = json_object_get_int64(v);
		return 0;
	case json_type_double: {
		double d = json_object_get_double(v);

		if (!(d > -1e15 && d < 1e15))
			return -EINVAL;
		*out = (int64_t)d;
		return 0;
	}
	case json_type_string: {
		const char *s = json_object_get_string(v);
		int64_t n = 0;

		if (!*s || strlen(s) > 15)
			return -EINVAL;
		for (; *s; s++) {
			if (*s < '0' || *s > '9')
				return -EINVAL;
			n = n * 10 + (*s - '0');
		}
		*out = n;
		return 0;
	}
	default:
		return -EINVAL;
	}
}

/* The name of the first token in a token response that is longer than
 * PROTO_MAX_TOKEN, with its length in *len; NULL when none is. */
static const char *token_too_large(struct json_object *body, size_t *len)
{
	static const char *const fields[] = { "access_token", "refresh_token" };
	struct json_object *v;

	for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
		if (!json_object_object_get_ex(body, fields[i], &v) || !json_object_is_type(v, json_type_string))
			continue;
		*len = (size_t)json_object_get_string_len(v);
		if (*len > PROTO_MAX_TOKEN)
			return fields[i];
	}
	return NULL;
}

/* The keeper's result for a 2xx token response (RFC 6749 5.1), or NULL when
 * it is malformed. The token strings are shared with body. */
static struct json_object *token_result(struct json_object *body, long http_status, bool *expires_in_unusable)
{
	struct json_object *v, *result;
	int64_t expires_in;

	if (!body || !json_object_object_get_ex(body, "access_token", &v) || !vschar_string(v, false))
		return NULL;
	result = json_object_new_object();
	if (!result)
		fatal("out of memory");
	json_object_object_add(result, PARAM_KEY_ACCESS_TOKEN, json_object_get(v));
	if (json_object_object_get_ex(body, "token_type", &v) && vschar_string(v, false))
		json_object_object_add(result, PARAM_KEY_TOKEN_TYPE, json_object_get(v));
	else
		json_object_object_add(result, PARAM_KEY_TOKEN_TYPE, json_object_new_string("Bearer"));
	/* One that is no number is left out, as if absent: the tokens are good,
	 * and a rotated refresh token must not be lost over it. */
	if (json_object_object_get_ex(body, "expires_in", &v) && v) {
		if (expires_in_of(v, &expires_in) == 0)
			json_object_object_add(result, PARAM_KEY_EXPIRES_IN, json_object_new_int64(expires_in));
		else
			*expires_in_unusable = true;
	}
	if (json_object_object_get_ex(body, "refresh_token", &v) && vschar_string(v, false))
		json_object_object_add(result, PARAM_KEY_REFRESH_TOKEN, json_object_get(v));
	if (json_object_object_get_ex(body, "scope", &v) && vschar_string(v, true))
		json_object_object_add(result, PARAM_KEY_SCOPE, json_object_get(v));
	json_object_object_add(result, PARAM_KEY_HTTP_STATUS, json_object_new_int((int)http_status));
	return result;
}

static void token_verdict(const struct fetch *f, struct token_verdict *v)
{
	long status = f->status;
	struct json_object *d;
	const char *big;
	size_t big_len;

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
	} else if (status >= 200 && status < 300 && (big = token_too_large(v->body, &big_len))) {
		/* Not the provider's verdict on the grant (the refresh token is
		 * not refused): transient, with a reason of its own. */
		v->kind = KIND_TRANSIENT;
		v->reason = LOGIN_R_TOKEN_TOO_LARGE;
		snprintf(v->message, sizeof(v->message),
			 "HTTP %ld: the %s is %zu bytes long, more than the %d bytes mcpkeeper accepts", status, big,
			 big_len, PROTO_MAX_TOKEN);
	} else if (status >= 200 && status < 300) {
		v->result = token_result(v->body, status, &v->expires_in_unusable);
		if (!v->result) {
			/* Status and length only: the body may hold tokens. */
			v->kind = KIND_TRANSIENT;
			snprintf(v->message, sizeof(v->message), "HTTP %ld: malformed token response, %zu bytes",
				 status, f->body.len);
		}
	} else if (status == 429 || status >= 500) {
		curl_off_t wait = 0;

		v->kind = KIND_TRANSIENT;
		/* Retry-After (seconds or an HTTP date, RFC 9110 10.2.3): the
		 * keeper waits at least that long, within its cap. */
		if (curl_easy_getinfo(f->easy, CURLINFO_RETRY_AFTER, &wait) == CURLE_OK && wait > 0)
			v->retry_after = wait > PROTO_MAX_RETRY_AFTER ? PROTO_MAX_RETRY_AFTER : (long)wait;
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

/* Wipes and drops result and body. */
static void token_verdict_clear(struct token_verdict *v)
{
	/* The result shares the token strings with body: wiping one wipes both. */
	rpc_wipe_put(v->result);
	rpc_wipe_put(v->body);
	memset(v, 0, sizeof(*v));
}

/* -- oauth.refresh -- */

struct refresh *refresh_free(struct refresh *r)
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

static void refresh_reply_error(struct refresh *r, const char *kind, const char *reason, const char *oauth_error,
				long http_status, long retry_after, const char *message)
{
	struct json_object *msg, *err, *data;

	log_warn("oauth: %s: refresh failed: %s (%s)", r->server, message, kind);
	msg = rpc_error(r->id, RPC_APP_ERROR, kind, message);
	if (!msg)
		fatal("out of memory");
	if (json_object_object_get_ex(msg, "error", &err) && json_object_object_get_ex(err, "data", &data)) {
		if (oauth_error)
			json_object_object_add(data, PARAM_KEY_OAUTH_ERROR, json_object_new_string(oauth_error));
		if (reason)
			json_object_object_add(data, PARAM_KEY_REASON, json_object_new_string(reason));
		if (http_status > 0)
			json_object_object_add(data, PARAM_KEY_HTTP_STATUS, json_object_new_int((int)http_status));
		if (retry_after > 0)
			json_object_object_add(data, PARAM_KEY_RETRY_AFTER, json_object_new_int64(retry_after));
	}
	oauth_send(r->o, msg);
	json_object_put(msg);
}

static void refresh_reply_tokens(struct refresh *r, struct token_verdict *v)
{
	struct json_object *msg;
	bool rotated = json_object_object_get_ex(v->result, PARAM_KEY_REFRESH_TOKEN, NULL);
	int ret;

	msg = rpc_result(r->id, v->result);
	v->result = NULL;
	if (!msg)
		fatal("out of memory");
	ret = frame_write(bufferevent_get_output(r->o->chan.bev), msg, PROTO_MAX_MESSAGE);
	/* The reply shares the token strings with v->body, which the caller wipes. */
	json_object_put(msg);
	if (ret == FRAME_E_TOO_LARGE) {
		refresh_reply_error(r, KIND_TRANSIENT, NULL, NULL, v->http_status, 0, "token response too large");
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
	if (v.expires_in_unusable)
		log_warn("oauth: %s: the token response's expires_in is not a number; taken as absent", r->server);
	if (v.result)
		refresh_reply_tokens(r, &v);
	else
		refresh_reply_error(r, v.kind, v.reason, v.oauth_error, v.http_status, v.retry_after, v.message);
	token_verdict_clear(&v);
	refresh_free(r);
}

/* oauth.refresh's params (common/proto.h). */
struct refresh_params {
	const char *server, *token_endpoint, *refresh_token, *client_id, *client_secret, *auth_method, *resource,
		*scope;
	int64_t timeout_ms;
};

static const struct param_spec refresh_spec[] = {
	PARAM_STRING(struct refresh_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct refresh_params, token_endpoint, PARAM_KEY_TOKEN_ENDPOINT, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct refresh_params, refresh_token, PARAM_KEY_REFRESH_TOKEN, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct refresh_params, client_id, PARAM_KEY_CLIENT_ID, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct refresh_params, client_secret, PARAM_KEY_CLIENT_SECRET, 0),
	PARAM_STRING(struct refresh_params, auth_method, PARAM_KEY_AUTH_METHOD, PARAM_REQUIRED),
	PARAM_STRING(struct refresh_params, resource, PARAM_KEY_RESOURCE, 0),
	PARAM_STRING(struct refresh_params, scope, PARAM_KEY_SCOPE, 0),
	PARAM_INT(struct refresh_params, timeout_ms, PARAM_KEY_TIMEOUT_MS, PARAM_REQUIRED, 1, OAUTH_MAX_TIMEOUT_MS),
};

void token_refresh(struct oauth *o, struct rpc_msg *m)
{
	_cleanup_(refresh_freep) struct refresh *r = NULL;
	struct refresh_params p = { 0 };
	const char *bad = NULL;
	struct fetch *f;

	if (params_parse(m->params, refresh_spec, ARRAY_SIZE(refresh_spec), &p, &bad) < 0 ||
	    fetch_client_auth_check(p.auth_method, p.client_secret, &bad) < 0) {
		keeper_bug(o, "oauth.refresh with bad params", bad);
		return;
	}
	r = xcalloc(1, sizeof(*r));
	r->o = o;
	r->id = json_object_get(m->id);
	r->server = xstrdup(p.server);
	f = r->fetch = fetch_new(o, p.server, "the token endpoint", p.token_endpoint, (long)p.timeout_ms, refresh_done, r);
	if (!f || form_add(&f->req, "grant_type", "refresh_token") < 0 ||
	    form_add(&f->req, "refresh_token", p.refresh_token) < 0 ||
	    fetch_client_auth(f, p.auth_method, p.client_id, p.client_secret) < 0 ||
	    (p.resource && form_add(&f->req, "resource", p.resource) < 0) ||
	    (p.scope && form_add(&f->req, "scope", p.scope) < 0) || fetch_header(f, "Accept: application/json") < 0 ||
	    fetch_post(f, "application/x-www-form-urlencoded") < 0 || fetch_start(f) < 0)
		fatal("out of memory preparing a refresh");
	log_debug("oauth: %s: refreshing", r->server);
	r->next = o->refreshes;
	if (r->next)
		r->next->pprev = &r->next;
	r->pprev = &o->refreshes;
	o->refreshes = TAKE_PTR(r);
}

/* -- the login's code exchange -- */

/* The code exchange is over. */
static void token_exchange_done(struct fetch *f, void *arg)
{
	struct login *l = arg;
	struct token_verdict v;
	struct json_object *copy = NULL;
	char text[MESSAGE_MAX];

	l->fetch = NULL;
	token_verdict(f, &v);
	fetch_free(f);
	if (v.expires_in_unusable)
		log_warn("oauth: %s: the token response's expires_in is not a number; taken as absent", l->server);
	if (!v.result) {
		char message[MESSAGE_MAX];
		const char *reason = v.reason ? v.reason : v.answered ? LOGIN_R_EXCHANGE : LOGIN_R_NETWORK;
		/* The code is spent: a token too large for us ends this login. */
		const char *kind = v.reason ? KIND_TERMINAL : v.kind;

		if (v.oauth_error && strcmp(v.kind, KIND_TERMINAL) == 0) {
			login_refusal_text(message, sizeof(message), "the token endpoint refused the code", v.oauth_error,
				     v.description);
		} else if (v.oauth_error) {
			char who[64];

			snprintf(who, sizeof(who), "the token endpoint answered HTTP %ld", v.http_status);
			login_refusal_text(message, sizeof(message), who, v.oauth_error, v.description);
		} else {
			snprintf(message, sizeof(message), "token endpoint: %s", v.message);
		}
		login_fail(l, kind, reason, v.oauth_error, v.http_status, message);
		token_verdict_clear(&v);
		return;
	}
	/* The reply waits for the page: give it its own copy of the tokens, so
	 * that the response body can be wiped now. */
	if (json_object_deep_copy(v.result, &copy, NULL) < 0)
		fatal("out of memory");
	log_info("oauth: %s: logged in (HTTP %ld%s)", l->server, v.http_status,
		 json_object_object_get_ex(copy, PARAM_KEY_REFRESH_TOKEN, NULL) ? ", with a refresh token" : "");
	token_verdict_clear(&v);
	snprintf(text, sizeof(text), "Logged in to %s. You can close this tab.", l->server);
	login_end(l, rpc_result(l->id, copy), 200, "mcpkeeper: logged in", text);
}

void token_exchange(struct login *l, const char *code)
{
	int64_t left = l->deadline_ms - login_now_ms();
	struct fetch *f;

	f = l->fetch = fetch_new(l->o, l->server, "the token endpoint", l->token_endpoint, left > 0 ? (long)left : 1,
				 token_exchange_done, l);
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
		json_object_object_add(result, PARAM_KEY_HTTP_STATUS, json_object_new_int(200));
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

/* oauth.revoke's params (common/proto.h). */
struct revoke_params {
	const char *server, *revocation_endpoint, *token, *token_type_hint, *client_id, *client_secret, *auth_method;
	int64_t timeout_ms;
};

static const struct param_spec revoke_spec[] = {
	PARAM_STRING(struct revoke_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct revoke_params, revocation_endpoint, PARAM_KEY_REVOCATION_ENDPOINT, PARAM_REQUIRED),
	PARAM_STRING(struct revoke_params, token, PARAM_KEY_TOKEN, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct revoke_params, token_type_hint, PARAM_KEY_TOKEN_TYPE_HINT, 0),
	PARAM_STRING(struct revoke_params, client_id, PARAM_KEY_CLIENT_ID, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct revoke_params, client_secret, PARAM_KEY_CLIENT_SECRET, 0),
	PARAM_STRING(struct revoke_params, auth_method, PARAM_KEY_AUTH_METHOD, PARAM_REQUIRED),
	PARAM_INT(struct revoke_params, timeout_ms, PARAM_KEY_TIMEOUT_MS, PARAM_REQUIRED, 1, OAUTH_MAX_TIMEOUT_MS),
};

void token_revoke(struct oauth *o, struct rpc_msg *m)
{
	_cleanup_(step_freep) struct step *s = NULL;
	struct revoke_params p = { 0 };
	const char *bad = NULL;
	char why[512];
	struct fetch *f;

	if (params_parse(m->params, revoke_spec, ARRAY_SIZE(revoke_spec), &p, &bad) < 0 ||
	    fetch_client_auth_check(p.auth_method, p.client_secret, &bad) < 0)
		goto bug;
	if (p.token_type_hint && !login_visible_ascii(p.token_type_hint, 64)) {
		bad = PARAM_KEY_TOKEN_TYPE_HINT;
		goto bug;
	}
	s = step_new(o, m, "revocation");
	s->timeout_ms = (long)p.timeout_ms;
	s->server = xstrdup(p.server);
	s->hint = xstrdup(p.token_type_hint);
	if (url_check(p.revocation_endpoint, NULL, why, sizeof(why)) < 0) {
		step_fail(TAKE_PTR(s), KIND_TERMINAL, LOGIN_R_REVOKE, NULL, 0, "revocation_endpoint: %s", why);
		return;
	}
	f = step_fetch(s, "the revocation endpoint", p.revocation_endpoint, revoke_done);
	if (form_add(&f->req, "token", p.token) < 0 ||
	    (s->hint && form_add(&f->req, "token_type_hint", s->hint) < 0) ||
	    fetch_client_auth(f, p.auth_method, p.client_id, p.client_secret) < 0 ||
	    fetch_header(f, "Accept: application/json") < 0 ||
	    fetch_post(f, "application/x-www-form-urlencoded") < 0 || fetch_start(f) < 0)
		fatal("out of memory");
	log_debug("oauth: %s: revoking a token%s%s", s->server, s->hint ? ": " : "", s->hint ? s->hint : "");
	step_link(TAKE_PTR(s));
	return;
bug:
	keeper_bug(o, "oauth.revoke with bad params", bad);
}
