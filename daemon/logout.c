/*
 * Logout, the keeper's side. A logout deletes the exact record first — that
 * part never waits for the network — then tells the server's worker to drop
 * the token (and waits for it to confirm), then asks the provider to revoke
 * the tokens it held (RFC 7009) when it offers revocation, and reports what
 * the provider said. One server, an orphaned token, or all of them.
 * May touch: the store (the token records), the workers and the oauth
 * child's revoke requests.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "config.h"
#include "flow.h"
#include "keeper.h"
#include "log.h"
#include "proto.h"
#include "secret.h"
#include "store.h"
#include "token.h"
#include "util.h"

/* ---- logout ---- */

static void logout_maybe_done(struct flow *f)
{
	struct json_object *res;

	if (f->pending > 0)
		return;
	res = TAKE_PTR(f->results);
	if (f->done_fn)
		f->done_fn(f->ctx, res, NULL);
	json_object_put(res);
	flow_free(f);
}

struct revoke_ctx {
	struct flow *f;
	struct json_object *target;	/* borrowed from f->results */
};

static void on_revoke(struct keeper *k, void *ctx, struct json_object *result, struct json_object *error)
{
	struct revoke_ctx *rc = ctx;
	struct flow *f = rc->f;

	if (error) {
		const char *msg = flow_error_field(error, PARAM_KEY_MESSAGE);

		json_object_object_add(rc->target, PARAM_KEY_REVOKED, json_object_new_boolean(0));
		if (!json_object_object_get_ex(rc->target, PARAM_KEY_REVOKE_ERROR, NULL))
			flow_add_str(rc->target, PARAM_KEY_REVOKE_ERROR, msg ? msg : "revocation failed");
	}
	free(rc);
	f->pending--;
	logout_maybe_done(f);
}

static int revoke_send(struct flow *f, struct json_object *target, const char *name, const struct token *t,
		       const char *token, const char *hint, const char *client_id, const char *secret,
		       const char *method)
{
	struct keeper *k = f->k;
	struct json_object *p = json_object_new_object();
	struct revoke_ctx *rc = xcalloc(1, sizeof(*rc));
	int64_t id;

	rc->f = f;
	rc->target = target;
	flow_add_str(p, PARAM_KEY_SERVER, name);
	flow_add_str(p, PARAM_KEY_REVOCATION_ENDPOINT, t->revocation_endpoint);
	flow_add_str(p, PARAM_KEY_TOKEN, token);
	flow_add_str(p, PARAM_KEY_TOKEN_TYPE_HINT, hint);
	flow_add_str(p, PARAM_KEY_CLIENT_ID, client_id);
	flow_add_str(p, PARAM_KEY_CLIENT_SECRET, secret);
	flow_add_str(p, PARAM_KEY_AUTH_METHOD, method);
	flow_add_policy(p, config_find_server(k->cfg, name), t->resource);
	json_object_object_add(p, PARAM_KEY_TIMEOUT_MS,
			       json_object_new_int64((int64_t)k->cfg->refresh.timeout_sec * 1000));
	if (child_request(k->oauth, METHOD_OAUTH_REVOKE, p, on_revoke, rc, &id) < 0) {
		free(rc);
		return -ENOTCONN;
	}
	if (f->n_revoke_ids == f->cap_revoke_ids) {
		f->cap_revoke_ids = f->cap_revoke_ids ? 2 * f->cap_revoke_ids : 4;
		f->revoke_ids = xrealloc(f->revoke_ids, f->cap_revoke_ids * sizeof(*f->revoke_ids));
	}
	f->revoke_ids[f->n_revoke_ids++] = id;
	f->pending++;
	return 0;
}

static void on_cleared(struct keeper *k, void *ctx, struct json_object *result, struct json_object *error)
{
	struct clear_ack *a = ctx;
	struct flow *f = a->f;

	/* An error means the worker went away: its token went with it. */
	for (struct clear_ack **p = &f->acks; *p; p = &(*p)->next) {
		if (*p == a) {
			*p = a->next;
			break;
		}
	}
	free(a);
	f->pending--;
	logout_maybe_done(f);
}

/*
 * One target: delete its record (through the refresh engine for a
 * configured server, directly for an orphan), then revoke what it held.
 */
static void logout_target(struct flow *f, struct server *s, const char *key, const char *name)
{
	struct keeper *k = f->k;
	struct json_object *o = json_object_new_object();
	struct secret *plain = NULL;
	struct token t = { 0 };
	bool have = false;
	int r;

	flow_add_str(o, PARAM_KEY_SERVER, name);
	if (!s)
		json_object_object_add(o, PARAM_KEY_ORPHANED, json_object_new_boolean(1));
	json_object_array_add(f->results, o);

	/* A configured server's current token may be one the store has not
	 * taken yet (refresh.c: unstored). */
	if (s)
		have = server_token_read(k, s, &t);
	else if (store_get(k->store, STORE_TOKENS, key, &plain) == 0)
		have = token_decode(plain, &t) == 0;
	else
		secret_free(plain);

	if (s) {
		struct clear_ack *a;

		login_forget(k, s, "logged out");
		reauth_logout(s);
		r = refresh_logout(k, s);
		a = xcalloc(1, sizeof(*a));
		a->f = f;
		a->s = s;
		if (workers_token_cleared(k, s, on_cleared, a, &a->id) == WORKERS_CLEAR_PENDING) {
			a->next = f->acks;
			f->acks = a;
			f->pending++;
		} else {
			free(a);
		}
	} else {
		r = store_delete(k->store, STORE_TOKENS, key);
		if (r >= 0) {
			struct json_object *d = json_object_new_object();

			log_info("%s: orphaned token deleted", name);
			flow_add_str(d, PARAM_KEY_REASON, "oauth_logout");
			flow_add_str(d, PARAM_KEY_SERVER, name);
			json_object_object_add(d, PARAM_KEY_ORPHANED, json_object_new_boolean(1));
			events_emit(k, EVENT_SERVERS_CHANGED, d);
			keeper_orphan_drop(k, key);
		}
	}
	if (r < 0) {
		char why[200];

		snprintf(why, sizeof(why), "deleting the token failed: %s", store_strerror(r));
		json_object_object_add(o, PARAM_KEY_ERROR, flow_error_json(KIND_UNAVAILABLE, "store", why));
		token_clear(&t);
		return;
	}
	json_object_object_add(o, PARAM_KEY_LOGGED_OUT, json_object_new_boolean(1));
	json_object_object_add(o, PARAM_KEY_HAD_TOKEN, json_object_new_boolean(r == 0));
	if (!have || r != 0) {
		token_clear(&t);
		return;
	}
	if (!t.revocation_endpoint) {
		flow_add_str(o, PARAM_KEY_REVOCATION, "not offered by the provider");
		token_clear(&t);
		return;
	}
	{
		const char *id = t.client_id, *secret = t.client_secret, *method = t.auth_method;

		if (!id && s && s->conf->oauth.client_id) {
			id = s->conf->oauth.client_id;
			secret = s->conf->oauth.client_secret;
			method = secret ? "client_secret_basic" : "none";
		}
		if (!id) {
			flow_add_str(o, PARAM_KEY_REVOCATION, "not attempted: the record names no client");
			token_clear(&t);
			return;
		}
		if (!child_ready(k->oauth)) {
			json_object_object_add(o, PARAM_KEY_REVOKED, json_object_new_boolean(0));
			flow_add_str(o, PARAM_KEY_REVOKE_ERROR, "the oauth child is not running");
			token_clear(&t);
			return;
		}
		/* "revoked" turns false when any revocation fails. The refresh
		 * token first: revoking it usually takes its access tokens too. */
		json_object_object_add(o, PARAM_KEY_REVOKED, json_object_new_boolean(1));
		if ((t.refresh_token && revoke_send(f, o, name, &t, t.refresh_token, "refresh_token", id, secret,
						    method) < 0) ||
		    revoke_send(f, o, name, &t, t.access_token, "access_token", id, secret, method) < 0) {
			json_object_object_add(o, PARAM_KEY_REVOKED, json_object_new_boolean(0));
			flow_add_str(o, PARAM_KEY_REVOKE_ERROR, "the oauth child is not reachable");
		}
	}
	token_clear(&t);
}

void logout_start(struct keeper *k, struct server *one, const char *orphan_name, bool all, flow_done_fn done_fn,
		  void *ctx, struct flow **slot)
{
	struct flow *f = xcalloc(1, sizeof(*f));

	f->k = k;
	f->type = FLOW_LOGOUT;
	f->done_fn = done_fn;
	f->ctx = ctx;
	f->results = json_object_new_array();
	flow_link(k, f);
	f->slot = slot;
	*slot = f;
	if (one) {
		logout_target(f, one, one->key, one->name);
		orphan_name = one->name;	/* its tokens under an older URL go too */
	}
	{
		for (size_t i = 0; all && i < k->n_servers; i++)
			if (k->servers[i]->conf->oauth_enabled)
				logout_target(f, k->servers[i], k->servers[i]->key, k->servers[i]->name);
		/* Orphans: every one with --all, else those under the given name. */
		for (size_t i = 0; i < k->n_orphans;) {
			char name[STORE_SERVER_KEY_MAX + 1], key[STORE_SERVER_KEY_MAX + 1];
			size_t before = k->n_orphans;

			keeper_orphan_name(k->orphans[i], name, sizeof(name));
			if (all || (orphan_name && strcmp(name, orphan_name) == 0)) {
				snprintf(key, sizeof(key), "%s", k->orphans[i]);
				logout_target(f, NULL, key, name);
			}
			if (k->n_orphans == before)
				i++;
		}
	}
	logout_maybe_done(f);
}

