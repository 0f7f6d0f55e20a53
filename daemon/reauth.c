/*
 * When an upstream wants a grant the stored token is not: more scope (a 403
 * with error="insufficient_scope", step-up) or another authorization server
 * (a 401 after which the protected resource metadata names a new issuer,
 * migration). Neither is a refresh: a refresh cannot widen a grant (RFC 6749
 * section 6), and a refresh token belongs to its issuer. Both take a new
 * authorization-code login.
 *
 * Everyone is told: the event oauth.login_required, and status's
 * "login_required" (mcpctl status: "needs login (scope ...)"). The keeper
 * opens the login itself only with an opener (config login.browser) and,
 * for a migration, only with login.browser_on_migration: the metadata comes
 * from the upstream, and opening a new provider's page unasked would help a
 * hostile upstream phish. Otherwise the waiting calls fail at once with an
 * error naming `mcpctl auth login --server NAME`, and that login asks for
 * what is wanted. Step-ups are bounded: REAUTH_MAX_STEP_UPS per server and
 * challenged scope within the login timeout. The old token stays until the
 * new one is stored; then its grant is revoked at its own issuer with its
 * own client.
 *
 * May touch: the server's reauth state, the oauth child's discover and
 * revoke requests, login_start(), events, the worker's waiting requests
 * (through workers_refresh_done()).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "browser.h"
#include "config.h"
#include "flow.h"
#include "keeper.h"
#include "log.h"
#include "params.h"
#include "proto.h"
#include "token.h"
#include "util.h"

/* At most this many logins the keeper opens for one challenged scope within
 * LOGIN_DEFAULT_TIMEOUT_SEC (with the user's first login, three attempts). */
#define REAUTH_MAX_STEP_UPS 2

struct reauth {
	char *reason;		/* REAUTH_R_*; NULL: no new login wanted */
	char *scope;		/* what the next login asks for; NULL: as usual */
	char *issuer;		/* migration: the authorization server now named */
	char *bound_scope;	/* the challenged scope the bound counts for */
	int64_t bound_since_ms;
	int step_ups;
	bool checking;		/* an issuer check is out */
	int64_t check_id;
	int64_t checked_ms;	/* when the last one started */
	struct flow *flow;	/* the login the keeper opened itself */
};

static struct reauth *reauth_of(struct server *s)
{
	if (!s->reauth)
		s->reauth = xcalloc(1, sizeof(*s->reauth));
	return s->reauth;
}

static void set_str(char **slot, const char *v)
{
	free(*slot);
	*slot = v ? xstrdup(v) : NULL;
}

static bool same_str(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

/* Whether space-separated list holds word. */
static bool scope_has(const char *list, const char *word, size_t len)
{
	for (const char *p = list; p && *p;) {
		size_t n;

		while (*p == ' ')
			p++;
		n = strcspn(p, " ");
		if (n == len && strncmp(p, word, len) == 0)
			return true;
		p += n;
	}
	return false;
}

/* The scopes of a, then those of b not in a (SEP-2350's union). */
static char *scope_union(const char *a, const char *b)
{
	size_t cap = (a ? strlen(a) : 0) + strlen(b) + 2, len = 0;
	char *out = xcalloc(1, cap);

	for (int pass = 0; pass < 2; pass++) {
		for (const char *p = pass ? b : a; p && *p;) {
			size_t n;

			while (*p == ' ')
				p++;
			n = strcspn(p, " ");
			if (n && !scope_has(out, p, n)) {
				if (len)
					out[len++] = ' ';
				memcpy(out + len, p, n);
				len += n;
				out[len] = '\0';
			}
			p += n;
		}
	}
	return out;
}

/* Records what is wanted and tells everyone once per change. */
static void want(struct keeper *k, struct server *s, const char *reason, const char *scope, const char *issuer)
{
	struct reauth *r = reauth_of(s);
	struct json_object *d;

	if (same_str(r->reason, reason) && same_str(r->scope, scope) && same_str(r->issuer, issuer))
		return;
	set_str(&r->reason, reason);
	set_str(&r->scope, scope);
	set_str(&r->issuer, issuer);
	if (issuer)
		log_warn("%s: the upstream now names the authorization server %s: a login there is needed", s->name,
			 issuer);
	else
		log_warn("%s: the upstream wants scope \"%s\": a login for it is needed", s->name, scope);
	d = json_object_new_object();
	json_object_object_add(d, PARAM_KEY_SERVER_NAME, json_object_new_string(s->name));
	json_object_object_add(d, PARAM_KEY_REASON, json_object_new_string(reason));
	json_object_object_add(d, PARAM_KEY_SCOPE, scope ? json_object_new_string(scope) : NULL);
	if (issuer)
		json_object_object_add(d, PARAM_KEY_ISSUER, json_object_new_string(issuer));
	events_emit(k, EVENT_LOGIN_REQUIRED, d);
}

/* The waiting calls fail now, with what the user can do. */
static void tell_waiters(struct keeper *k, struct server *s, const char *what)
{
	char msg[1024];

	snprintf(msg, sizeof(msg), "%.700s: run `mcpctl auth login --server %.200s`", what, s->name);
	workers_refresh_done(k, s, KIND_LOGIN_REQUIRED, msg);
}

static void opened_url(void *ctx, const char *server, const char *url)
{
	struct server *s = ctx;
	int r = browser_open(s->k->cfg->login.browser, url);

	if (r == 0) {
		log_info("%s: opened the login page with login.browser", s->name);
		return;
	}
	log_warn("%s: login.browser could not open the login page (%s)", s->name,
		 r == -ENOENT ? "no program could be started" : strerror(-r));
	if (s->login)
		login_abandon(s->login, "login.browser could not open the login page");
}

static void opened_done(void *ctx, struct json_object *result, struct json_object *error)
{
	struct server *s = ctx;
	char what[600];

	if (!error)
		return;	/* the login answered the waiting calls with its token */
	snprintf(what, sizeof(what), "the new login for %s did not succeed (%s)", s->name,
		 flow_error_field(error, PARAM_KEY_MESSAGE) ? flow_error_field(error, PARAM_KEY_MESSAGE) : "failed");
	tell_waiters(s->k, s, what);
}

/* Opens the wanted login with login.browser; false when there is none. */
static bool open_login(struct keeper *k, struct server *s)
{
	struct reauth *r = reauth_of(s);
	int e;

	if (!k->cfg->login.browser)
		return false;
	if (s->login)
		return true;	/* its end answers the waiting calls */
	e = login_start(k, s, 0, opened_url, opened_done, s, &r->flow);
	if (e < 0) {
		char what[300];

		snprintf(what, sizeof(what), "%s needs a new login, and it could not start (%s)", s->name, strerror(-e));
		tell_waiters(k, s, what);
	}
	return true;
}

void reauth_step_up(struct keeper *k, struct server *s, const char *granted, const char *challenged, bool want_union)
{
	struct reauth *r = reauth_of(s);
	int64_t now = keeper_now_ms();
	_cleanup_(freep) char *scope = want_union ? scope_union(granted, challenged) : xstrdup(challenged);
	char what[700];

	if (!same_str(r->bound_scope, challenged) || now - r->bound_since_ms >= LOGIN_DEFAULT_TIMEOUT_SEC * 1000LL) {
		set_str(&r->bound_scope, challenged);
		r->bound_since_ms = now;
		r->step_ups = 0;
	}
	if (s->login)
		return;	/* a login is under way: its end answers */
	if (r->step_ups >= REAUTH_MAX_STEP_UPS) {
		log_warn("%s: the upstream still wants scope \"%s\" after %d new logins; not opening another", s->name,
			 challenged, r->step_ups);
		snprintf(what, sizeof(what),
			 "upstream %s still refuses the token after %d new logins for scope \"%.200s\"; "
			 "the keeper opens no other for %d s",
			 s->name, r->step_ups, challenged, LOGIN_DEFAULT_TIMEOUT_SEC);
		tell_waiters(k, s, what);
		return;
	}
	want(k, s, REAUTH_R_SCOPE, scope, NULL);
	if (k->cfg->login.browser) {
		r->step_ups++;
		open_login(k, s);
		return;
	}
	snprintf(what, sizeof(what), "upstream %s needs a login with scope \"%.300s\"", s->name, scope);
	tell_waiters(k, s, what);
}

/* ---- migration ---- */

/* oauth.discover -> {issuer, ...}: only the issuer matters here. */
struct issuer_result {
	const char *issuer;
};

static const struct param_spec issuer_result_spec[] = {
	PARAM_STRING(struct issuer_result, issuer, PARAM_KEY_ISSUER, PARAM_REQUIRED | PARAM_NONEMPTY),
};

static void on_issuer(struct keeper *k, void *ctx, struct json_object *result, struct json_object *error)
{
	struct server *s = ctx;
	struct reauth *r = reauth_of(s);
	struct issuer_result ir = { 0 };
	struct token t = { 0 };
	const char *bad;
	char what[700];
	bool moved;

	r->checking = false;
	if (s->login)
		return;	/* a login started meanwhile: its end answers */
	if (error || params_parse(result, issuer_result_spec, ARRAY_SIZE(issuer_result_spec), &ir, &bad) < 0) {
		const char *msg = error ? flow_error_field(error, PARAM_KEY_MESSAGE) : "no issuer in the result";

		log_info("%s: could not re-read the resource metadata after a 401 (%s); refreshing as usual", s->name,
			 msg ? msg : "failed");
		workers_token_rejected(k, s);
		return;
	}
	if (!server_token_read(k, s, &t)) {
		workers_token_rejected(k, s);
		return;
	}
	moved = t.issuer && strcmp(t.issuer, ir.issuer) != 0;
	token_clear(&t);
	if (!moved) {
		workers_token_rejected(k, s);
		return;
	}
	want(k, s, REAUTH_R_ISSUER, NULL, ir.issuer);
	if (k->cfg->login.browser_on_migration && open_login(k, s))
		return;
	snprintf(what, sizeof(what), "upstream %s now names the authorization server %.300s: a login there is needed",
		 s->name, ir.issuer);
	tell_waiters(k, s, what);
}

int reauth_check_issuer(struct keeper *k, struct server *s)
{
	struct reauth *r = reauth_of(s);
	struct json_object *p;

	if (r->checking)
		return 1;
	/* An upstream that keeps answering 401 gets no more checks than
	 * refreshes: at most one per refresh.min_interval. */
	if (!child_ready(k->oauth) || (r->checked_ms && keeper_now_ms() - r->checked_ms < k->cfg->refresh.min_interval_ms))
		return 0;
	p = json_object_new_object();
	flow_discover_params(p, s->conf);
	json_object_object_add(p, PARAM_KEY_TIMEOUT_MS, json_object_new_int64((int64_t)k->cfg->refresh.timeout_sec * 1000));
	if (child_request(k->oauth, METHOD_OAUTH_DISCOVER, p, on_issuer, s, &r->check_id) < 0)
		return 0;
	r->checking = true;
	r->checked_ms = keeper_now_ms();
	log_info("%s: the upstream refused the token; re-reading its resource metadata", s->name);
	return 1;
}

/* ---- after the login ---- */

const char *reauth_scope(const struct server *s)
{
	return s->reauth ? s->reauth->scope : NULL;
}

bool reauth_wanted(const struct server *s)
{
	return s->reauth && s->reauth->reason;
}

static void on_revoked(struct keeper *k, void *ctx, struct json_object *result, struct json_object *error)
{
	char *name = ctx;

	if (error) {
		const char *msg = flow_error_field(error, PARAM_KEY_MESSAGE);

		log_warn("%s: revoking the superseded grant failed: %s", name, msg ? msg : "failed");
	} else {
		log_info("%s: the superseded grant was revoked", name);
	}
	free(name);
}

/* The old grant at its own issuer, with its own client: the refresh token
 * (which takes its access tokens with it where the provider links them),
 * else the access token. Never one the new token reuses. */
static void revoke_old(struct keeper *k, struct server *s, const struct token *old, const struct token *now)
{
	const char *tok = old->refresh_token, *hint = "refresh_token";
	struct json_object *p;
	int64_t id;

	if (!tok || same_str(tok, now->refresh_token)) {
		tok = old->access_token;
		hint = "access_token";
	}
	if (!tok || same_str(tok, now->access_token) || same_str(tok, now->refresh_token))
		return;
	if (!old->revocation_endpoint || !old->client_id) {
		log_info("%s: the superseded grant cannot be revoked (%s)", s->name,
			 old->revocation_endpoint ? "its record names no client" : "its provider offers no revocation");
		return;
	}
	p = json_object_new_object();
	flow_add_str(p, PARAM_KEY_SERVER, s->name);
	flow_add_str(p, PARAM_KEY_REVOCATION_ENDPOINT, old->revocation_endpoint);
	flow_add_str(p, PARAM_KEY_TOKEN, tok);
	flow_add_str(p, PARAM_KEY_TOKEN_TYPE_HINT, hint);
	flow_add_str(p, PARAM_KEY_CLIENT_ID, old->client_id);
	flow_add_str(p, PARAM_KEY_CLIENT_SECRET, old->client_secret);
	flow_add_str(p, PARAM_KEY_AUTH_METHOD, old->auth_method);
	flow_add_policy(p, s->conf, old->resource);
	json_object_object_add(p, PARAM_KEY_TIMEOUT_MS, json_object_new_int64((int64_t)k->cfg->refresh.timeout_sec * 1000));
	if (!child_ready(k->oauth) || child_request(k->oauth, METHOD_OAUTH_REVOKE, p, on_revoked, xstrdup(s->name), &id) < 0)
		log_warn("%s: the superseded grant could not be revoked: the oauth child is not running", s->name);
}

void reauth_login_done(struct keeper *k, struct server *s, const struct token *old, const struct token *now)
{
	struct reauth *r = s->reauth;

	if (!r || !r->reason)
		return;
	log_info("%s: the new login replaces the grant the upstream no longer took", s->name);
	if (old)
		revoke_old(k, s, old, now);
	set_str(&r->reason, NULL);
	set_str(&r->scope, NULL);
	set_str(&r->issuer, NULL);
}

void reauth_logout(struct server *s)
{
	if (s->reauth) {
		set_str(&s->reauth->reason, NULL);
		set_str(&s->reauth->scope, NULL);
		set_str(&s->reauth->issuer, NULL);
	}
}

void reauth_json(const struct server *s, struct json_object *o)
{
	const struct reauth *r = s->reauth;
	struct json_object *lr;

	if (!r || !r->reason) {
		json_object_object_add(o, PARAM_KEY_LOGIN_REQUIRED, NULL);
		return;
	}
	lr = json_object_new_object();
	json_object_object_add(lr, PARAM_KEY_REASON, json_object_new_string(r->reason));
	json_object_object_add(lr, PARAM_KEY_SCOPE, r->scope ? json_object_new_string(r->scope) : NULL);
	json_object_object_add(lr, PARAM_KEY_ISSUER, r->issuer ? json_object_new_string(r->issuer) : NULL);
	json_object_object_add(o, PARAM_KEY_LOGIN_REQUIRED, lr);
}

void reauth_free(struct keeper *k, struct server *s)
{
	struct reauth *r = s->reauth;

	if (!r)
		return;
	if (r->checking && k->oauth)
		child_cancel(k->oauth, r->check_id);
	free(r->reason);
	free(r->scope);
	free(r->issuer);
	free(r->bound_scope);
	free(r);
	s->reauth = NULL;
}
