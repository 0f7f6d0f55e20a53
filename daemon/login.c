/*
 * Login, the keeper's side.
 *
 * A login is a short sequence of requests to the oauth child, one step each
 * (common/proto.h, "Login and logout"): listen on the redirect port,
 * discover the authorization server, find or register a client, then
 * authorize, which hands the user an URL and comes back with tokens. The
 * child does every HTTP exchange; the keeper keeps what must outlive the
 * login: the redirect port chosen for a server, registered clients (keyed by
 * authorization server and redirect URI, so a registration is reused exactly
 * where it is valid and never carried to another server), and the token.
 *
 * While a login runs, the server's proactive refresh is paused. Success
 * stores the token, schedules it, hands it to the worker and emits
 * servers.changed; failure, timeout or a caller that went away puts the old
 * schedule back.
 *
 * May touch: the store (clients, redirect ports, the token), the refresh
 * schedule of the server, the oauth child's requests. (logout.c: logouts;
 * flow.c: what logins and logouts share.)
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "config.h"
#include "flow.h"
#include "keeper.h"
#include "log.h"
#include "params.h"
#include "proto.h"
#include "secret.h"
#include "store.h"
#include "timefmt.h"
#include "token.h"
#include "util.h"

#define LOGIN_MAX_TIMEOUT_SEC 3600
/* How long the keeper waits for the oauth child beyond a step's own timeout. */
#define LOGIN_GRACE_MS 15000
/* A registered client whose secret expires sooner than this is registered anew. */
#define CLIENT_EXPIRY_MARGIN_SEC 60
/* How often a login waiting for the oauth child looks again. */
#define CHILD_WAIT_STEP_MS 100

/* ---- helpers ---- */

static const char *meta_str(const struct flow *f, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(f->meta, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static int64_t step_timeout_ms(const struct flow *f)
{
	int64_t step = (int64_t)f->k->cfg->refresh.timeout_sec * 1000;
	int64_t left = f->deadline_ms - keeper_now_ms();

	if (left < 1000)
		left = 1000;
	return step < left ? step : left;
}

/* ---- login ---- */

static void login_step(struct flow *f);

/* Ends a login: the caller hears the outcome, the schedule comes back. */
static void login_end(struct flow *f, struct json_object *result, struct json_object *error)
{
	struct keeper *k = f->k;
	struct server *s = f->s;

	if (f->listening && child_ready(k->oauth)) {
		struct json_object *p = json_object_new_object();

		flow_add_str(p, PARAM_KEY_SERVER, s->name);
		child_notify(k->oauth, METHOD_OAUTH_CANCEL, p);
	}
	f->listening = false;
	s->login = NULL;
	s->login_active = false;
	if (error) {
		const char *msg = flow_error_field(error, PARAM_KEY_MESSAGE);
		struct json_object *d = json_object_new_object();

		log_warn("%s: login failed: %s", s->name, msg ? msg : "unknown error");
		flow_add_str(d, PARAM_KEY_REASON, "oauth_login_failed");
		flow_add_str(d, PARAM_KEY_SERVER, s->name);
		flow_add_str(d, PARAM_KEY_ERROR, msg ? msg : "unknown error");
		events_emit(k, EVENT_SERVERS_CHANGED, d);
		/* Back on the old schedule; a refresh in flight settles it itself. */
		if (!s->in_flight)
			refresh_load(k, s);
	}
	if (f->done_fn)
		f->done_fn(f->ctx, result, error);
	if (error) {
		/* Calls that waited for this login (reauth.c) learn why not. */
		const char *msg = flow_error_field(error, PARAM_KEY_MESSAGE);
		char what[700];

		snprintf(what, sizeof(what), "the login for %s did not succeed (%.400s): run `mcpctl auth login --server %s`",
			 s->name, msg ? msg : "unknown error", s->name);
		workers_refresh_done(k, s, KIND_LOGIN_REQUIRED, what);
	}
	json_object_put(result);
	json_object_put(error);
	flow_free(f);
}

static void login_fail(struct flow *f, const char *kind, const char *reason, const char *fmt, ...) _printf_(4, 5);
static void login_fail(struct flow *f, const char *kind, const char *reason, const char *fmt, ...)
{
	char msg[600];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	login_end(f, NULL, flow_error_json(kind, reason, msg));
}

/* A failed step: the child's message is for the user, its reason for tests. */
static void login_fail_child(struct flow *f, const char *what, struct json_object *error)
{
	const char *msg = flow_error_field(error, PARAM_KEY_MESSAGE), *reason = flow_error_field(error, PARAM_KEY_REASON);
	const char *kind = flow_error_field(error, PARAM_KEY_KIND);

	login_fail(f, kind && strcmp(kind, KIND_TRANSIENT) == 0 ? KIND_UNAVAILABLE : KIND_LOGIN_FAILED,
		   reason ? reason : "oauth", "%s: %s", what, msg ? msg : "failed");
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	login_step(arg);
}

static void guard_cb(evutil_socket_t fd, short what, void *arg)
{
	struct flow *f = arg;

	login_fail(f, KIND_UNAVAILABLE, LOGIN_R_TIMEOUT, "the oauth child did not finish the login in time");
}

static int login_request(struct flow *f, const char *method, struct json_object *params, int64_t timeout_ms,
			 child_reply_fn fn)
{
	struct timeval tv;
	int r;

	flow_add_str(params, PARAM_KEY_SERVER, f->s->name);
	flow_add_policy(params, f->s->conf, NULL);
	json_object_object_add(params, PARAM_KEY_TIMEOUT_MS, json_object_new_int64(timeout_ms));
	r = child_request(f->k->oauth, method, params, fn, f, &f->request_id);
	if (r < 0)
		return r;
	f->requesting = true;
	tv.tv_sec = (timeout_ms + LOGIN_GRACE_MS) / 1000;
	tv.tv_usec = (timeout_ms + LOGIN_GRACE_MS) % 1000 * 1000;
	evtimer_add(f->guard, &tv);
	return 0;
}

/* Port records are decimal text, sealed like everything else. */
static int stored_port(struct keeper *k, const char *key)
{
	struct secret *plain = NULL;
	char buf[8];
	int port = 0;

	if (store_get(k->store, STORE_CLIENTS, key, &plain) != 0)
		return 0;
	if (plain->len > 0 && plain->len < sizeof(buf)) {
		memcpy(buf, plain->data, plain->len);
		buf[plain->len] = '\0';
		port = atoi(buf);
	}
	secret_free(plain);
	return port > 0 && port < 65536 ? port : 0;
}

static void store_port(struct keeper *k, struct server *s, const char *key, int port)
{
	char buf[8];
	struct secret *plain;
	int r;

	snprintf(buf, sizeof(buf), "%d", port);
	plain = secret_from(buf, strlen(buf));
	if (!plain)
		return;
	r = store_put(k->store, STORE_CLIENTS, key, plain);
	secret_free(plain);
	if (r != 0)
		log_warn("%s: could not remember redirect port %d: %s", s->name, port, store_strerror(r));
	else
		log_info("%s: redirect port %d chosen and stored", s->name, port);
}

/*
 * The results of the login steps, each checked through its table: what the
 * oauth child answers is trusted no further than its types.
 */

/* oauth.listen -> {port} */
struct listen_result {
	int64_t port;
};

static const struct param_spec listen_result_spec[] = {
	PARAM_INT(struct listen_result, port, PARAM_KEY_PORT, PARAM_REQUIRED, 1, 65535),
};

static void on_listen(struct keeper *k, void *ctx, struct json_object *result, struct json_object *error)
{
	struct flow *f = ctx;
	struct listen_result lr = { 0 };
	char key[STORE_SERVER_KEY_MAX + 1];
	const char *bad;
	int port;

	f->requesting = false;
	evtimer_del(f->guard);
	if (error) {
		login_fail_child(f, "cannot listen for the redirect", error);
		return;
	}
	if (params_parse(result, listen_result_spec, ARRAY_SIZE(listen_result_spec), &lr, &bad) < 0) {
		login_fail(f, KIND_INTERNAL, "oauth", "the oauth child reported no port");
		return;
	}
	port = (int)lr.port;
	f->listening = true;
	if (!f->s->conf->oauth.redirect_port && port != f->port &&
	    store_derived_key("port:", f->s->key, NULL, key, sizeof(key)) == 0)
		store_port(k, f->s, key, port);
	f->port = port;
	snprintf(f->redirect_uri, sizeof(f->redirect_uri), "http://127.0.0.1:%d/oauth/callback", port);
	f->step = STEP_DISCOVER;
	login_step(f);
}

/* oauth.discover -> {issuer, authorization_endpoint, token_endpoint, ...}:
 * kept whole as f->meta (meta_str() reads the optional fields), these three
 * must be there. */
struct discover_result {
	const char *issuer, *authorization_endpoint, *token_endpoint;
};

static const struct param_spec discover_result_spec[] = {
	PARAM_STRING(struct discover_result, issuer, PARAM_KEY_ISSUER, PARAM_REQUIRED),
	PARAM_STRING(struct discover_result, authorization_endpoint, PARAM_KEY_AUTHORIZATION_ENDPOINT, PARAM_REQUIRED),
	PARAM_STRING(struct discover_result, token_endpoint, PARAM_KEY_TOKEN_ENDPOINT, PARAM_REQUIRED),
};

static void on_discover(struct keeper *k, void *ctx, struct json_object *result, struct json_object *error)
{
	struct flow *f = ctx;
	struct discover_result dr;
	const char *bad;

	f->requesting = false;
	evtimer_del(f->guard);
	if (error) {
		login_fail_child(f, "discovery failed", error);
		return;
	}
	/* The child's messages are wiped once handled: keep a copy. */
	if (json_object_deep_copy(result, &f->meta, NULL) < 0) {
		login_fail(f, KIND_INTERNAL, LOGIN_R_DISCOVERY, "out of memory");
		return;
	}
	if (params_parse(f->meta, discover_result_spec, ARRAY_SIZE(discover_result_spec), &dr, &bad) < 0) {
		login_fail(f, KIND_INTERNAL, LOGIN_R_DISCOVERY, "the oauth child's discovery result is incomplete");
		return;
	}
	log_info("%s: authorization server %s", f->s->name, dr.issuer);
	f->step = STEP_REGISTER;
	login_step(f);
}

/* Keeps a client record for this login (copied into a secret it owns). */
static int client_take(struct flow *f, const struct oauth_client *c)
{
	struct secret *plain = NULL;
	int r = client_encode(c, &plain);

	if (r < 0)
		return r;
	client_clear(&f->client);
	return client_decode(plain, &f->client);
}

/* oauth.register -> {client_id, client_secret?, auth_method,
 * client_secret_expires_at} */
static const struct param_spec register_result_spec[] = {
	PARAM_STRING(struct oauth_client, client_id, PARAM_KEY_CLIENT_ID, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct oauth_client, client_secret, PARAM_KEY_CLIENT_SECRET, 0),
	PARAM_STRING(struct oauth_client, auth_method, PARAM_KEY_AUTH_METHOD, PARAM_REQUIRED),
	PARAM_INT(struct oauth_client, secret_expires_at, PARAM_KEY_CLIENT_SECRET_EXPIRES_AT, 0, 0, 0),
};

static void on_register(struct keeper *k, void *ctx, struct json_object *result, struct json_object *error)
{
	struct flow *f = ctx;
	struct oauth_client c = { 0 };
	struct secret *plain = NULL;
	const char *bad;
	int r;

	f->requesting = false;
	evtimer_del(f->guard);
	if (error) {
		login_fail_child(f, "dynamic client registration failed", error);
		return;
	}
	if (params_parse(result, register_result_spec, ARRAY_SIZE(register_result_spec), &c, &bad) < 0) {
		login_fail(f, KIND_INTERNAL, LOGIN_R_REGISTRATION, "the oauth child's registration result is incomplete");
		return;
	}
	c.issuer = meta_str(f, PARAM_KEY_ISSUER);
	c.registered_at = keeper_now();
	r = client_encode(&c, &plain);
	if (r == 0)
		r = store_put(k->store, STORE_CLIENTS, f->client_key, plain);
	secret_free(plain);
	if (r != 0) {
		login_fail(f, KIND_UNAVAILABLE, LOGIN_R_REGISTRATION, "storing the registered client failed: %s",
			   store_strerror(r));
		return;
	}
	if (client_take(f, &c) < 0) {
		login_fail(f, KIND_INTERNAL, LOGIN_R_REGISTRATION, "out of memory");
		return;
	}
	f->client_registered = true;
	log_info("%s: registered as a new client at %s", f->s->name, c.issuer);
	f->step = STEP_AUTHORIZE;
	login_step(f);
}

static bool method_listed(struct json_object *methods, const char *m)
{
	if (!json_object_is_type(methods, json_type_array))
		return false;
	for (size_t i = 0; i < json_object_array_length(methods); i++)
		if (strcmp(json_object_get_string(json_object_array_get_idx(methods, i)), m) == 0)
			return true;
	return false;
}

/* The configured client, or a stored registration; 1 when neither exists. */
static int login_find_client(struct flow *f)
{
	const struct config_oauth *co = &f->s->conf->oauth;
	struct secret *plain = NULL;
	struct oauth_client c = { 0 };
	int r;

	if (co->client_id) {
		struct json_object *methods = NULL;

		json_object_object_get_ex(f->meta, PARAM_KEY_TOKEN_ENDPOINT_AUTH_METHODS, &methods);
		c.client_id = co->client_id;
		c.client_secret = co->client_secret;
		c.auth_method = !co->client_secret ? "none"
				: methods && !method_listed(methods, "client_secret_basic") &&
						  method_listed(methods, "client_secret_post")
					? "client_secret_post"
					: "client_secret_basic";
		c.issuer = meta_str(f, PARAM_KEY_ISSUER);
		return client_take(f, &c);
	}
	r = store_derived_key("client:", meta_str(f, PARAM_KEY_ISSUER), f->redirect_uri, f->client_key,
			      sizeof(f->client_key));
	if (r < 0)
		return r;
	r = store_get(f->k->store, STORE_CLIENTS, f->client_key, &plain);
	if (r == STORE_E_NOT_FOUND)
		return 1;
	if (r != 0) {
		log_warn("%s: stored client registration unusable (%s); registering again", f->s->name,
			 store_strerror(r));
		return 1;
	}
	if (client_decode(plain, &f->client) < 0 || !f->client.client_id || !f->client.auth_method ||
	    (f->client.secret_expires_at && f->client.secret_expires_at < keeper_now() + CLIENT_EXPIRY_MARGIN_SEC)) {
		client_clear(&f->client);
		log_info("%s: stored client registration expired or unusable; registering again", f->s->name);
		return 1;
	}
	f->client_registered = true;
	log_info("%s: reusing the client registered at %s", f->s->name, meta_str(f, PARAM_KEY_ISSUER));
	return 0;
}

/* The scope to ask for: what a step-up wants (reauth.c), else the
 * configured scopes, else what discovery found. */
static char *login_scope(const struct flow *f)
{
	const struct config_oauth *co = &f->s->conf->oauth;
	size_t len = 1;
	char *out;

	if (reauth_scope(f->s))
		return xstrdup(reauth_scope(f->s));
	if (!co->n_scopes)
		return xstrdup(meta_str(f, PARAM_KEY_SCOPE));
	for (size_t i = 0; i < co->n_scopes; i++)
		len += strlen(co->scopes[i]) + 1;
	out = xcalloc(1, len);
	for (size_t i = 0; i < co->n_scopes; i++) {
		if (i)
			strcat(out, " ");
		strcat(out, co->scopes[i]);
	}
	return out;
}

static const char *login_resource(const struct flow *f)
{
	return f->s->conf->oauth.resource ? f->s->conf->oauth.resource : meta_str(f, PARAM_KEY_RESOURCE);
}

static void on_authorize(struct keeper *k, void *ctx, struct json_object *result, struct json_object *error);

static void login_step(struct flow *f)
{
	struct keeper *k = f->k;
	struct json_object *p = json_object_new_object();
	child_reply_fn fn = NULL;
	const char *method = NULL;
	int64_t timeout = step_timeout_ms(f);
	int r;

	if (!child_ready(k->oauth)) {
		json_object_put(p);
		/* Starting or restarting: wait for it within the login's time
		 * (a keeper that just started has not finished its hello). */
		if (keeper_now_ms() + CHILD_WAIT_STEP_MS < f->deadline_ms) {
			struct timeval tv = { 0, CHILD_WAIT_STEP_MS * 1000 };

			evtimer_add(f->retry, &tv);
			return;
		}
		login_fail(f, KIND_UNAVAILABLE, LOGIN_R_NETWORK, "the oauth child is not running (it is being restarted)");
		return;
	}
	switch (f->step) {
	case STEP_LISTEN:
		json_object_object_add(p, PARAM_KEY_PORT, json_object_new_int(f->port));
		method = METHOD_OAUTH_LISTEN;
		fn = on_listen;
		break;
	case STEP_DISCOVER:
		flow_discover_params(p, f->s->conf);
		method = METHOD_OAUTH_DISCOVER;
		fn = on_discover;
		break;
	case STEP_REGISTER: {
		struct json_object *methods = NULL;
		char *scope;

		if (f->s->conf->oauth.client_id) {
			/* A configured client was issued by one authorization server:
			 * it never goes to another (SEP-2352), which a hostile
			 * upstream's metadata could name. */
			struct token old = { 0 };
			const char *now = meta_str(f, PARAM_KEY_ISSUER);

			if (server_token_read(k, f->s, &old) && old.issuer && now && strcmp(old.issuer, now) != 0) {
				json_object_put(p);
				login_fail(f, KIND_LOGIN_FAILED, LOGIN_R_REGISTRATION,
					   "the authorization server of \"%s\" changed from %s to %s, and the configured "
					   "oauth.client_id belongs to the first: register a client at the new one and "
					   "configure it (or log out first to use this one there)",
					   f->s->name, old.issuer, now);
				token_clear(&old);
				return;
			}
			token_clear(&old);
		}
		r = login_find_client(f);
		if (r < 0) {
			json_object_put(p);
			login_fail(f, KIND_INTERNAL, LOGIN_R_REGISTRATION, "cannot prepare the client: %s", strerror(-r));
			return;
		}
		if (r == 0) {
			json_object_put(p);
			f->step = STEP_AUTHORIZE;
			login_step(f);
			return;
		}
		if (!meta_str(f, PARAM_KEY_REGISTRATION_ENDPOINT)) {
			json_object_put(p);
			login_fail(f, KIND_LOGIN_FAILED, LOGIN_R_REGISTRATION,
				   "the authorization server %s offers no dynamic client registration: "
				   "register a client there and set oauth.client_id for \"%s\"",
				   meta_str(f, PARAM_KEY_ISSUER), f->s->name);
			return;
		}
		flow_add_str(p, PARAM_KEY_REGISTRATION_ENDPOINT, meta_str(f, PARAM_KEY_REGISTRATION_ENDPOINT));
		flow_add_str(p, PARAM_KEY_REDIRECT_URI, f->redirect_uri);
		scope = login_scope(f);
		flow_add_str(p, PARAM_KEY_SCOPE, scope);
		free(scope);
		if (json_object_object_get_ex(f->meta, PARAM_KEY_TOKEN_ENDPOINT_AUTH_METHODS, &methods))
			json_object_object_add(p, PARAM_KEY_TOKEN_ENDPOINT_AUTH_METHODS, json_object_get(methods));
		method = METHOD_OAUTH_REGISTER;
		fn = on_register;
		break;
	}
	case STEP_AUTHORIZE: {
		struct json_object *iss = NULL;
		char *scope = login_scope(f);

		flow_add_str(p, PARAM_KEY_AUTHORIZATION_ENDPOINT, meta_str(f, PARAM_KEY_AUTHORIZATION_ENDPOINT));
		flow_add_str(p, PARAM_KEY_TOKEN_ENDPOINT, meta_str(f, PARAM_KEY_TOKEN_ENDPOINT));
		flow_add_str(p, PARAM_KEY_REDIRECT_URI, f->redirect_uri);
		flow_add_str(p, PARAM_KEY_CLIENT_ID, f->client.client_id);
		flow_add_str(p, PARAM_KEY_CLIENT_SECRET, f->client.client_secret);
		flow_add_str(p, PARAM_KEY_AUTH_METHOD, f->client.auth_method);
		flow_add_str(p, PARAM_KEY_RESOURCE, login_resource(f));
		flow_add_str(p, PARAM_KEY_SCOPE, scope);
		free(scope);
		flow_add_str(p, PARAM_KEY_ISSUER, meta_str(f, PARAM_KEY_ISSUER));
		json_object_object_get_ex(f->meta, PARAM_KEY_ISS_SUPPORTED, &iss);
		json_object_object_add(p, PARAM_KEY_ISS_SUPPORTED,
				       json_object_new_boolean(iss && json_object_get_boolean(iss)));
		timeout = f->deadline_ms - keeper_now_ms();
		if (timeout < 1000)
			timeout = 1000;
		method = METHOD_OAUTH_AUTHORIZE;
		fn = on_authorize;
		break;
	}
	}
	r = login_request(f, method, p, timeout, fn);
	if (r < 0)
		login_fail(f, KIND_UNAVAILABLE, LOGIN_R_NETWORK, "the oauth child is not reachable: %s", strerror(-r));
}

static void on_authorize(struct keeper *k, void *ctx, struct json_object *result, struct json_object *error)
{
	struct flow *f = ctx;
	struct server *s = f->s;
	struct token t = { 0 }, old = { 0 };
	struct token_result tr;
	struct secret *plain = NULL;
	struct json_object *res, *d;
	bool had_old;
	/* obtained_at: the instant the token response reached the keeper. */
	int64_t now_ms = keeper_now_ms(), expires_in;
	char *scope, why[256];
	int r;

	f->requesting = false;
	f->listening = false;	/* the child closes the port when authorize ends */
	evtimer_del(f->guard);
	if (error) {
		const char *oerr = flow_error_field(error, PARAM_KEY_OAUTH_ERROR);

		if (f->client_registered && oerr && strcmp(oerr, "invalid_client") == 0) {
			/* The provider forgot the registration: the next login registers anew. */
			store_delete(k->store, STORE_CLIENTS, f->client_key);
			log_info("%s: the stored client registration was refused; dropped", s->name);
		}
		login_fail_child(f, "login failed", error);
		return;
	}
	if (refresh_result_parse(result, s->name, &tr, why, sizeof(why)) < 0) {
		login_fail(f, KIND_INTERNAL, LOGIN_R_EXCHANGE, "%s", why);
		return;
	}
	had_old = server_token_read(k, s, &old);
	scope = login_scope(f);
	t.access_token = tr.access_token;
	t.token_type = tr.token_type ? tr.token_type : "Bearer";
	t.refresh_token = tr.refresh_token;
	t.scope = tr.scope ? tr.scope : scope;
	expires_in = tr.expires_in;
	t.token_endpoint = meta_str(f, PARAM_KEY_TOKEN_ENDPOINT);
	t.revocation_endpoint = meta_str(f, PARAM_KEY_REVOCATION_ENDPOINT);
	t.resource = login_resource(f);
	t.issuer = meta_str(f, PARAM_KEY_ISSUER);
	t.client_id = f->client.client_id;
	t.client_secret = f->client.client_secret;
	t.auth_method = f->client.auth_method;
	token_set_times(&t, now_ms, expires_in);
	r = token_encode(&t, &plain);
	free(scope);
	if (r == 0)
		r = store_put(k->store, STORE_TOKENS, s->key, plain);
	secret_free(plain);
	if (r != 0) {
		token_clear(&old);
		login_fail(f, KIND_UNAVAILABLE, "store", "storing the token failed: %s", store_strerror(r));
		return;
	}

	/* The new token replaces whatever a refresh in flight would bring, and
	 * a refreshed token the store had refused. */
	refresh_forget(k, s);
	refresh_unstored_drop(s);
	s->retry_count = 0;
	s->failed_reported = false;
	server_set_error(s, NULL);
	s->needs_login = false;
	s->login_active = false;
	/* The code exchange was a token request: the floor counts from it. */
	s->last_request_ms = keeper_now_ms();
	refresh_load(k, s);
	log_info("%s: logged in%s, token expires in %lld s", s->name, t.refresh_token ? "" : " (no refresh token)",
		 (long long)expires_in);
	workers_token_changed(k, s);
	workers_refresh_done(k, s, NULL, NULL);
	keeper_orphan_drop(k, s->key);
	reauth_login_done(k, s, had_old ? &old : NULL, &t);
	token_clear(&old);

	d = json_object_new_object();
	flow_add_str(d, PARAM_KEY_REASON, "oauth_login");
	flow_add_str(d, PARAM_KEY_SERVER, s->name);
	events_emit(k, EVENT_SERVERS_CHANGED, d);

	res = json_object_new_object();
	flow_add_str(res, PARAM_KEY_SERVER, s->name);
	flow_add_str(res, "oauth_status", oauth_status_name(s->status));
	time_json_add(res, PARAM_KEY_TOKEN_EXPIRES_AT, PARAM_KEY_TOKEN_EXPIRES_AT_UNIX, s->expires_at_ms);
	json_object_object_add(res, PARAM_KEY_REFRESH_TOKEN, json_object_new_boolean(t.refresh_token != NULL));
	login_end(f, res, NULL);
}

int login_start(struct keeper *k, struct server *s, int timeout_sec, flow_url_fn url_fn, flow_done_fn done_fn,
		void *ctx, struct flow **slot)
{
	struct flow *f;
	char key[STORE_SERVER_KEY_MAX + 1];

	if (s->login)
		return -EBUSY;
	if (!keeper_is_master(k))
		return -EROFS;	/* a replica of a replication group: the master logs in */
	if (timeout_sec <= 0)
		timeout_sec = LOGIN_DEFAULT_TIMEOUT_SEC;
	if (timeout_sec > LOGIN_MAX_TIMEOUT_SEC)
		timeout_sec = LOGIN_MAX_TIMEOUT_SEC;
	f = xcalloc(1, sizeof(*f));
	f->k = k;
	f->type = FLOW_LOGIN;
	f->s = s;
	f->url_fn = url_fn;
	f->done_fn = done_fn;
	f->ctx = ctx;
	f->deadline_ms = keeper_now_ms() + (int64_t)timeout_sec * 1000;
	f->guard = evtimer_new(k->base, guard_cb, f);
	f->retry = evtimer_new(k->base, retry_cb, f);
	if (!f->guard || !f->retry) {
		if (f->guard)
			event_free(f->guard);
		if (f->retry)
			event_free(f->retry);
		free(f);
		return -ENOMEM;
	}
	f->port = s->conf->oauth.redirect_port;
	if (!f->port && store_derived_key("port:", s->key, NULL, key, sizeof(key)) == 0)
		f->port = stored_port(k, key);
	flow_link(k, f);
	s->login = f;
	s->login_active = true;
	refresh_pause(k, s);
	log_info("%s: login started (timeout %d s)", s->name, timeout_sec);
	f->slot = slot;
	*slot = f;
	f->step = STEP_LISTEN;
	login_step(f);
	return 0;
}

/* oauth.login_url {server, url} */
struct login_url_params {
	const char *server, *url;
};

static const struct param_spec login_url_spec[] = {
	PARAM_STRING(struct login_url_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED),
	PARAM_STRING(struct login_url_params, url, PARAM_KEY_URL, PARAM_REQUIRED),
};

int login_url(struct keeper *k, struct json_object *params)
{
	struct login_url_params p = { 0 };
	struct server *s;
	const char *bad;

	if (params_parse(params, login_url_spec, ARRAY_SIZE(login_url_spec), &p, &bad) < 0)
		return -EINVAL;
	/* A login that ended meanwhile, or an URL the browser must not open. */
	s = keeper_find_server(k, p.server);
	if (!s || !s->login || s->login->step != STEP_AUTHORIZE ||
	    (strncmp(p.url, "https://", 8) != 0 && strncmp(p.url, "http://", 7) != 0))
		return 0;
	if (s->login->url_fn)
		s->login->url_fn(s->login->ctx, s->name, p.url);
	return 0;
}

void login_forget(struct keeper *k, struct server *s, const char *why)
{
	if (s->login)
		login_fail(s->login, KIND_UNAVAILABLE, LOGIN_R_CANCELLED, "login cancelled: %s", why);
}

void login_abandon(struct flow *f, const char *why)
{
	login_fail(f, KIND_UNAVAILABLE, LOGIN_R_CANCELLED, "%s", why);
}

/* store_list()'s callback for login_client_rejected(): the keys of the stored
 * registrations of one client_id at one issuer. */
struct rejected_client {
	const char *client_id, *issuer;
	char **keys;
	size_t n;
};

static int rejected_client_find(const char *key, const struct secret *plain, int status, void *ctx)
{
	struct rejected_client *rc = ctx;
	struct oauth_client c;
	struct secret *copy;

	/* Port records and the API key share the table: they do not decode. */
	if (status != 0 || !plain || !(copy = secret_from(plain->data, plain->len)))
		return 0;
	if (client_decode(copy, &c) == 0 && strcmp(c.client_id, rc->client_id) == 0 &&
	    (!c.issuer || !rc->issuer || strcmp(c.issuer, rc->issuer) == 0)) {
		rc->keys = xrealloc(rc->keys, (rc->n + 1) * sizeof(*rc->keys));
		rc->keys[rc->n++] = xstrdup(key);
	}
	client_clear(&c);
	return 0;
}

/*
 * The token endpoint answered invalid_client: the client the token was
 * issued to is gone. A dynamically registered one (stored under its issuer)
 * is dropped, so that the next login registers anew. Returns what status
 * and the log say.
 */
const char *login_client_rejected(struct keeper *k, struct server *s, const struct secret *started)
{
	struct rejected_client rc = { 0 };
	struct token t;
	int r;

	if (token_view(started, &t) < 0 || !t.client_id)
		return "the client was rejected (invalid_client): log in again";
	rc.client_id = t.client_id;
	rc.issuer = t.issuer;
	r = store_list(k->store, STORE_CLIENTS, rejected_client_find, &rc);
	if (r != 0)
		log_warn("%s: listing the stored client registrations failed: %s", s->name, store_strerror(r));
	for (size_t i = 0; i < rc.n; i++) {
		r = store_delete(k->store, STORE_CLIENTS, rc.keys[i]);
		if (r < 0)
			log_warn("%s: dropping the rejected client registration failed: %s", s->name,
				 store_strerror(r));
		else
			log_info("%s: the client registration at %s was rejected; dropped", s->name,
				 t.issuer ? t.issuer : "the token endpoint");
		free(rc.keys[i]);
	}
	free(rc.keys);
	token_clear(&t);
	if (s->conf->oauth.client_id && !rc.n)
		return "the client was rejected (invalid_client): check oauth.client_id and oauth.client_secret";
	return "the client registration was rejected: log in again to register anew";
}
