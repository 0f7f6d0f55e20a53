/*
 * A login or a logout in the keeper (flow.c, login.c, logout.c): what both
 * kinds of flow share. Nothing outside those files and reauth.c (which
 * starts logins and revokes) includes it; the rest of the keeper sees flows
 * through keeper.h.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "keeper.h"
#include "store.h"
#include "token.h"

enum flow_type { FLOW_LOGIN, FLOW_LOGOUT };

enum login_step { STEP_LISTEN, STEP_DISCOVER, STEP_REGISTER, STEP_AUTHORIZE };

struct flow {
	struct keeper *k;
	enum flow_type type;
	flow_url_fn url_fn;
	flow_done_fn done_fn;
	void *ctx;
	struct flow **slot;		/* the caller's pointer to us: NULLed when we end */
	struct flow *next;		/* k->flows */

	/* login */
	struct server *s;
	enum login_step step;
	int64_t request_id;
	bool requesting;
	bool listening;
	int64_t deadline_ms;		/* wall clock */
	struct event *guard;
	struct event *retry;		/* waiting for the oauth child to be ready */
	int port;
	char redirect_uri[64];
	struct json_object *meta;	/* the discovery result */
	char client_key[STORE_SERVER_KEY_MAX + 1];
	bool client_registered;		/* from the clients database (not the config) */
	struct oauth_client client;	/* owns its strings through client.plain */

	/* logout */
	struct json_object *results;	/* one object per target */
	int pending;			/* revocations outstanding */
	int64_t *revoke_ids;
	size_t n_revoke_ids, cap_revoke_ids;
	struct clear_ack *acks;		/* workers yet to confirm token.clear */
};

struct clear_ack {
	struct clear_ack *next;
	struct flow *f;
	struct server *s;
	int64_t id;
};

/* flow.c */
void flow_link(struct keeper *k, struct flow *f);
/* Unlinks, cancels what the flow still waits for, and frees it. */
void flow_free(struct flow *f);
/* Adds key: val to o unless val is NULL. */
void flow_add_str(struct json_object *o, const char *key, const char *val);
/* {"kind", "reason", "message"}: what a flow reports when it fails. */
struct json_object *flow_error_json(const char *kind, const char *reason, const char *message);
/* "message", or a member of "data", of a child's JSON-RPC error. */
const char *flow_error_field(struct json_object *error, const char *key);

/* login.c: ends a login that nobody waits for any more (its caller went
 * away, the keeper stops), with why as the message. */
void login_abandon(struct flow *f, const char *why);
