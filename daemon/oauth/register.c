/*
 * oauth.register: RFC 7591 dynamic client registration of mcpkeeper as a
 * native client with a loopback redirect, for servers that have no client
 * configured. The answer is the client the keeper stores: client_id, the
 * secret when the server issued one, the token endpoint auth method and the
 * secret's expiry.
 *
 * What it may touch: the network through struct fetch, one request. The
 * response may hold a client secret: it goes back to the keeper only and is
 * wiped with the body; messages name the HTTP status and the OAuth error
 * code, never the body.
 */
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "frame.h"
#include "log.h"
#include "oauth.h"
#include "params.h"
#include "proto.h"
#include "util.h"

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
			login_refusal_text(message, sizeof(message), "the registration endpoint refused", oauth_error,
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
	json_object_object_add(result, PARAM_KEY_CLIENT_ID, json_object_new_string(client_id));
	if (secret && strcmp(method, "none") != 0)
		json_object_object_add(result, PARAM_KEY_CLIENT_SECRET, json_object_new_string(secret));
	json_object_object_add(result, PARAM_KEY_AUTH_METHOD, json_object_new_string(method));
	json_object_object_add(result, PARAM_KEY_CLIENT_SECRET_EXPIRES_AT, json_object_new_int64(expires));
	log_info("oauth: %s: registered a client (HTTP %ld, %s)", s->server, status, method);
	rpc_wipe_put(body);
	step_reply(s, result);
}

/* oauth.register's params (common/proto.h). */
struct register_params {
	const char *server, *registration_endpoint, *redirect_uri, *scope;
	int64_t timeout_ms;
	struct json_object *methods;
};

static const struct param_spec register_spec[] = {
	PARAM_STRING(struct register_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct register_params, registration_endpoint, PARAM_KEY_REGISTRATION_ENDPOINT, PARAM_REQUIRED),
	PARAM_STRING(struct register_params, redirect_uri, PARAM_KEY_REDIRECT_URI, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct register_params, scope, PARAM_KEY_SCOPE, 0),
	PARAM_INT(struct register_params, timeout_ms, PARAM_KEY_TIMEOUT_MS, PARAM_REQUIRED, 1, OAUTH_MAX_TIMEOUT_MS),
	PARAM_ARRAY(struct register_params, methods, PARAM_KEY_TOKEN_ENDPOINT_AUTH_METHODS, 0),
};

void register_start(struct oauth *o, struct rpc_msg *m)
{
	_cleanup_(step_freep) struct step *s = NULL;
	struct register_params p = { 0 };
	struct json_object *meta, *a;
	const char *method, *bad = NULL;
	char why[512];
	struct fetch *f;
	const char *body;

	if (params_parse(m->params, register_spec, ARRAY_SIZE(register_spec), &p, &bad) < 0) {
		keeper_bug(o, "oauth.register with bad params", bad);
		return;
	}
	s = step_new(o, m, "registration");
	s->timeout_ms = (long)p.timeout_ms;
	s->server = xstrdup(p.server);
	if (url_check(p.registration_endpoint, NULL, why, sizeof(why)) < 0) {
		step_fail(TAKE_PTR(s), KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0, "registration_endpoint: %s", why);
		return;
	}
	/* A public client when the server takes one (no secret to keep), else
	 * RFC 7591's default, else the only other one we speak. */
	if (p.methods && login_string_in_array(p.methods, "none"))
		method = "none";
	else if (!p.methods || login_string_in_array(p.methods, "client_secret_basic"))
		method = "client_secret_basic";
	else
		method = "client_secret_post";

	meta = json_object_new_object();
	json_object_object_add(meta, "client_name", json_object_new_string("mcpkeeper"));
	json_object_object_add(meta, "application_type", json_object_new_string("native"));
	a = json_object_new_array();
	json_object_array_add(a, json_object_new_string(p.redirect_uri));
	json_object_object_add(meta, "redirect_uris", a);
	a = json_object_new_array();
	json_object_array_add(a, json_object_new_string("authorization_code"));
	json_object_array_add(a, json_object_new_string("refresh_token"));
	json_object_object_add(meta, "grant_types", a);
	a = json_object_new_array();
	json_object_array_add(a, json_object_new_string("code"));
	json_object_object_add(meta, "response_types", a);
	json_object_object_add(meta, "token_endpoint_auth_method", json_object_new_string(method));
	if (p.scope)
		json_object_object_add(meta, "scope", json_object_new_string(p.scope));

	f = step_fetch(s, "the registration endpoint", p.registration_endpoint, register_done);
	body = json_object_to_json_string_ext(meta, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	if (!body || buf_adds(&f->req, body) < 0 || fetch_header(f, "Accept: application/json") < 0 ||
	    fetch_post(f, "application/json") < 0 || fetch_start(f) < 0)
		fatal("out of memory");
	json_object_put(meta);
	log_debug("oauth: %s: registering a client (%s)", s->server, method);
	step_link(TAKE_PTR(s));
}
