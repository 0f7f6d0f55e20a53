/*
 * The control socket: local clients (mcpctl, scripts via socat) speak
 * newline-delimited JSON-RPC 2.0 with the keeper.
 *
 * Peers are authorised by the kernel's credentials (SO_PEERCRED and
 * SO_PEERGROUPS), never by anything they send: root, the keeper's own uid
 * and members of the configured group may do everything; anyone else gets
 * one "forbidden" error line and the connection closes. Each uid may hold a
 * limited number of connections, and when descriptors run out the keeper
 * stops accepting for a moment instead of spinning.
 *
 * A client is untrusted: a bad message gets a JSON-RPC error and at most
 * closes that connection. Replies and events carry metadata only, never
 * token bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "config.h"
#include "frame.h"
#include "keeper.h"
#include "log.h"
#include "params.h"
#include "proto.h"
#include "sock.h"
#include "store.h"
#include "timefmt.h"
#include "util.h"

/* A subscriber that lets this much pile up is not reading: drop it. */
#define CONN_OUTPUT_MAX (4 * 1024 * 1024)
#define ACCEPT_RETRY_MS 500

struct conn {
	struct control *ctl;
	struct bufferevent *bev;
	uid_t uid;
	pid_t pid;
	bool subscribed;
	bool closing;
	bool handed_off;	/* its descriptor now belongs to a worker */
	struct flow *flow;	/* a login or logout answering this connection */
	struct json_object *flow_id;
	bool login_nowait;	/* auth.login "wait": false: reply with the URL */
	bool internal;		/* from control_adopt(): the http child's */
	struct conn *prev, *next;
};

struct control {
	struct keeper *k;
	int fd;
	struct event *accept_ev;
	struct event *retry_timer;
	struct conn *conns;
	bool have_group;
	gid_t group;
};

static void conn_free(struct conn *c)
{
	struct control *ctl = c->ctl;

	if (c->subscribed)
		events_unsubscribe(ctl->k, c);
	if (c->flow)
		flow_detach(c->flow);
	json_object_put(c->flow_id);
	if (c->prev)
		c->prev->next = c->next;
	else
		ctl->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	bufferevent_free(c->bev);
	free(c);
}

static size_t conns_of_uid(struct control *ctl, uid_t uid)
{
	size_t n = 0;

	for (struct conn *c = ctl->conns; c; c = c->next)
		if (c->uid == uid && !c->closing && !c->internal)
			n++;
	return n;
}

static void send_msg(struct conn *c, struct json_object *msg)
{
	int r = frame_write(bufferevent_get_output(c->bev), msg, PROTO_MAX_MESSAGE);

	if (r)
		log_warn("control: reply to pid %d not sent: %s", (int)c->pid, frame_strerror(r));
}

/* Write what is queued, then close. */
static void conn_close_after_flush(struct conn *c)
{
	c->closing = true;
	bufferevent_disable(c->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_free(c);
}

static void reply_error(struct conn *c, struct json_object *id, int code, const char *kind, const char *fmt, ...)
	_printf_(5, 6);
static void reply_error(struct conn *c, struct json_object *id, int code, const char *kind, const char *fmt, ...)
{
	char msg[512];
	struct json_object *e;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	e = rpc_error(id, code, kind, msg);
	send_msg(c, e);
	json_object_put(e);
}

static void reply_result(struct conn *c, struct json_object *id, struct json_object *result)
{
	struct json_object *r = rpc_result(id, result);
	int ret = frame_write(bufferevent_get_output(c->bev), r, PROTO_MAX_MESSAGE);

	if (ret == FRAME_E_TOO_LARGE) {
		/* The client must not wait for a reply that never comes. */
		log_warn("control: a reply to pid %d exceeds %d bytes; answered with an error", (int)c->pid,
			 PROTO_MAX_MESSAGE);
		reply_error(c, id, RPC_APP_ERROR, KIND_TOO_LARGE,
			    "the reply would exceed %d bytes (too many servers): ask for one server", PROTO_MAX_MESSAGE);
	} else if (ret) {
		log_warn("control: reply to pid %d not sent: %s", (int)c->pid, frame_strerror(ret));
	}
	json_object_put(r);
}

/* ---- the JSON of a server ---- */

struct json_object *control_server_json(const struct server *s, bool full)
{
	const struct config_server *cs = s->conf;
	struct json_object *o = json_object_new_object(), *r, *w;

	json_object_object_add(o, PARAM_KEY_NAME, json_object_new_string(s->name));
	if (!full)
		json_object_object_add(o, PARAM_KEY_ENABLED, json_object_new_boolean(cs->enabled));
	if (full) {
		json_object_object_add(o, PARAM_KEY_PROTOCOL,
				       json_object_new_string(config_protocol_name(cs->protocol)));
		json_object_object_add(o, PARAM_KEY_URL, cs->url ? json_object_new_string(cs->url) : NULL);
		json_object_object_add(o, PARAM_KEY_ENABLED, json_object_new_boolean(cs->enabled));
		json_object_object_add(o, PARAM_KEY_OAUTH, json_object_new_boolean(cs->oauth_enabled));
		/* Where it comes from: the file, or system mode's runtime overlay. */
		json_object_object_add(o, PARAM_KEY_SOURCE, json_object_new_string(servers_source(s->k, s->name)));
		/* A replication group site: this entry against the master's. */
		if (store_is_group(s->k->store))
			json_object_object_add(o, PARAM_KEY_GROUP_CONFIG,
					       json_object_new_string(group_config_name(s->group_config)));
	}
	json_object_object_add(o, PARAM_KEY_OAUTH_STATUS,
			       cs->oauth_enabled ? json_object_new_string(oauth_status_name(s->status)) : NULL);
	time_json_add(o, PARAM_KEY_TOKEN_EXPIRES_AT, PARAM_KEY_TOKEN_EXPIRES_AT_UNIX, s->expires_at_ms);
	time_json_add(o, PARAM_KEY_TOKEN_OBTAINED_AT, PARAM_KEY_TOKEN_OBTAINED_AT_UNIX, s->obtained_at_ms);
	if (full) {
		w = workers_status_json(s);
		json_object_object_add(o, PARAM_KEY_WORKER, w);
	}
	r = json_object_new_object();
	json_object_object_add(r, PARAM_KEY_STATE, json_object_new_string(refresh_state_name(s->rstate)));
	json_object_object_add(r, PARAM_KEY_RETRY_COUNT, json_object_new_int(s->retry_count));
	time_json_add(r, PARAM_KEY_NEXT_AT, PARAM_KEY_NEXT_AT_UNIX, s->next_at_ms);
	json_object_object_add(r, PARAM_KEY_LAST_ERROR, s->last_error ? json_object_new_string(s->last_error) : NULL);
	json_object_object_add(o, PARAM_KEY_REFRESH, r);
	if (cs->oauth_enabled) {
		json_object_object_add(o, PARAM_KEY_LOGIN_IN_PROGRESS, json_object_new_boolean(s->login_active));
		reauth_json(s, o);
	}
	return o;
}

/* ---- methods ---- */

/* Tokens whose server left the config: names only, nothing unsealed;
 * only those of that name when only is set. */
static struct json_object *orphans_named_json(const struct keeper *k, const char *only)
{
	struct json_object *arr = json_object_new_array();

	for (size_t i = 0; i < k->n_orphans; i++) {
		struct json_object *o;
		char name[STORE_SERVER_KEY_MAX + 1];

		keeper_orphan_name(k->orphans[i], name, sizeof(name));
		if (only && strcmp(name, only) != 0)
			continue;
		o = json_object_new_object();
		json_object_object_add(o, PARAM_KEY_NAME, json_object_new_string(name));
		json_object_object_add(o, PARAM_KEY_KEY, json_object_new_string(k->orphans[i]));
		json_object_object_add(o, PARAM_KEY_OAUTH_STATUS, json_object_new_string("orphaned"));
		json_object_array_add(arr, o);
	}
	return arr;
}

static struct json_object *orphans_json(const struct keeper *k)
{
	return orphans_named_json(k, NULL);
}

static void do_servers_list(struct conn *c, struct json_object *id)
{
	struct keeper *k = c->ctl->k;
	struct json_object *res = json_object_new_object(), *arr = json_object_new_array();

	for (size_t i = 0; i < k->n_servers; i++) {
		const struct config_server *cs = k->servers[i]->conf;
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, PARAM_KEY_NAME, json_object_new_string(cs->name));
		json_object_object_add(o, PARAM_KEY_PROTOCOL,
				       json_object_new_string(config_protocol_name(cs->protocol)));
		json_object_object_add(o, PARAM_KEY_URL, cs->url ? json_object_new_string(cs->url) : NULL);
		json_object_object_add(o, PARAM_KEY_ENABLED, json_object_new_boolean(cs->enabled));
		json_object_object_add(o, PARAM_KEY_OAUTH, json_object_new_boolean(cs->oauth_enabled));
		json_object_array_add(arr, o);
	}
	json_object_object_add(res, PARAM_KEY_SERVERS, arr);
	reply_result(c, id, res);
}

/*
 * A check that fails answers the request itself and returns CONTROL_ANSWERED:
 * the handler then only returns.
 */
#define CONTROL_ANSWERED 1

/* params through the method's table; invalid_params names the bad key. */
static int check_params(struct conn *c, struct json_object *id, const char *method, struct json_object *params,
			const struct param_spec *spec, size_t n, void *out)
{
	const char *bad;
	char why[160];

	if (params_parse(params, spec, n, out, &bad) == 0)
		return 0;
	reply_error(c, id, RPC_INVALID_PARAMS, KIND_INVALID_PARAMS, "%s: %s", method,
		    params_strerror(spec, n, bad, why, sizeof(why)));
	return CONTROL_ANSWERED;
}

/* The server a "server" parameter names: 0 with *s, or CONTROL_ANSWERED
 * (not_found; not_oauth when need_oauth and it has no OAuth). */
static int find_server(struct conn *c, struct json_object *id, const char *name, bool need_oauth, struct server **s)
{
	*s = keeper_find_server(c->ctl->k, name);
	if (!*s) {
		reply_error(c, id, RPC_APP_ERROR, KIND_NOT_FOUND, "no server named \"%.64s\"", name);
		return CONTROL_ANSWERED;
	}
	if (need_oauth && !(*s)->conf->oauth_enabled) {
		reply_error(c, id, RPC_APP_ERROR, KIND_NOT_OAUTH, "server \"%s\" does not use OAuth", (*s)->name);
		return CONTROL_ANSWERED;
	}
	return 0;
}

/*
 * status {server?, offset?, limit?}: one page of the servers, from offset,
 * at most limit of them and never more than fit in one message with the
 * rest of the reply; "total" and "next_offset" (null on the last page) say
 * what is left. The orphaned tokens come with the first page. With server,
 * that server alone (and an orphan of that name).
 */
struct status_params {
	const char *server;
	int64_t offset, limit;
};

static const struct param_spec status_spec[] = {
	PARAM_STRING(struct status_params, server, PARAM_KEY_SERVER, PARAM_NONEMPTY),
	PARAM_INT(struct status_params, offset, PARAM_KEY_OFFSET, 0, 0, INT32_MAX),
	PARAM_INT(struct status_params, limit, PARAM_KEY_LIMIT, 0, 1, INT32_MAX),
};

/* What servers and orphans of one status page may take: the envelope
 * (version, the config path, the http child's state) fits in the rest. */
#define STATUS_PAGE_BUDGET ((size_t)PROTO_MAX_MESSAGE - 64 * 1024)

static size_t json_size(struct json_object *o)
{
	size_t len = 0;

	json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	return len + 1;
}

static void do_status(struct conn *c, struct json_object *id, struct json_object *params)
{
	struct keeper *k = c->ctl->k;
	struct status_params p = { .limit = INT32_MAX };
	struct json_object *res, *arr, *orphans = NULL;
	struct server *one = NULL;
	size_t i = 0, total = k->n_servers, used = 0;

	if (check_params(c, id, METHOD_STATUS, params, status_spec, ARRAY_SIZE(status_spec), &p))
		return;
	if (p.server) {
		one = keeper_find_server(k, p.server);
		orphans = orphans_named_json(k, p.server);
		if (!one && json_object_array_length(orphans) == 0) {
			json_object_put(orphans);
			reply_error(c, id, RPC_APP_ERROR, KIND_NOT_FOUND, "no server named \"%.64s\"", p.server);
			return;
		}
		total = one ? 1 : 0;
	} else if (p.offset == 0) {
		orphans = orphans_json(k);
		used = json_size(orphans);
	}
	res = json_object_new_object();
	arr = json_object_new_array();
	json_object_object_add(res, PARAM_KEY_VERSION, json_object_new_string(MCPKEEPER_VERSION));
	json_object_object_add(res, PARAM_KEY_PID, json_object_new_int((int)getpid()));
	json_object_object_add(res, PARAM_KEY_MODE, json_object_new_string(k->system_mode ? "system" : "user"));
	json_object_object_add(res, PARAM_KEY_CONFIG, json_object_new_string(k->config_path));
	if (one) {
		json_object_array_add(arr, control_server_json(one, true));
		i = 1;
	} else if (!p.server) {
		for (i = (size_t)p.offset; i < total && (int64_t)(i - (size_t)p.offset) < p.limit; i++) {
			struct json_object *o = control_server_json(k->servers[i], true);
			size_t len = json_size(o);

			/* One server always goes: one alone fits (config limits). */
			if (i > (size_t)p.offset && used + len > STATUS_PAGE_BUDGET) {
				json_object_put(o);
				break;
			}
			used += len;
			json_object_array_add(arr, o);
		}
	}
	json_object_object_add(res, PARAM_KEY_SERVERS, arr);
	json_object_object_add(res, PARAM_KEY_TOTAL, json_object_new_int64((int64_t)total));
	json_object_object_add(res, PARAM_KEY_OFFSET, json_object_new_int64(p.server ? 0 : p.offset));
	json_object_object_add(res, PARAM_KEY_NEXT_OFFSET, i < total ? json_object_new_int64((int64_t)i) : NULL);
	if (orphans)
		json_object_object_add(res, PARAM_KEY_ORPHANED_TOKENS, orphans);
	json_object_object_add(res, PARAM_KEY_HTTP, api_status_json(k));
	json_object_object_add(res, PARAM_KEY_WEB_UI, api_web_ui_url(k));
	if (store_is_group(k->store))
		json_object_object_add(res, PARAM_KEY_REPLICATION, group_status_json(k));
	reply_result(c, id, res);
}

static void do_replication_status(struct conn *c, struct json_object *id)
{
	struct json_object *o = group_status_json(c->ctl->k);

	if (!o) {
		reply_error(c, id, RPC_APP_ERROR, KIND_UNAVAILABLE,
			    "this keeper is not a site of a replication group (no \"replication\" in its config)");
		return;
	}
	reply_result(c, id, o);
}

/* In a replication group, changes happen on the master only. */
static int check_master(struct conn *c, struct json_object *id)
{
	char master[320];

	if (keeper_is_master(c->ctl->k))
		return 0;
	group_master_text(c->ctl->k, master, sizeof(master));
	reply_error(c, id, RPC_APP_ERROR, KIND_NOT_MASTER,
		    "this keeper is a replica of its replication group: logins, logouts and server changes run on "
		    "the master (master: %s)", master);
	return CONTROL_ANSWERED;
}

/* Login and logout change what the keeper holds: the config may forbid it. */
static int check_management(struct conn *c, struct json_object *id)
{
	if (!c->ctl->k->cfg->disable_management)
		return 0;
	reply_error(c, id, RPC_APP_ERROR, KIND_FORBIDDEN, "management is disabled in the configuration");
	return CONTROL_ANSWERED;
}

static void do_key_rotate(struct conn *c, struct json_object *id)
{
	struct keeper *k = c->ctl->k;
	struct json_object *res;
	unsigned long n = 0;
	char err[512];

	if (check_management(c, id) || check_master(c, id))
		return;
	if (!store_is_group(k->store)) {
		reply_error(c, id, RPC_APP_ERROR, KIND_UNAVAILABLE,
			    "key.rotate is for a replication group's master; on a single host stop the keeper and run "
			    "mcpctl key rotate");
		return;
	}
	log_info("control: key.rotate by pid %d uid %u", (int)c->pid, (unsigned)c->uid);
	if (group_key_rotate(k, &n, err, sizeof(err)) < 0) {
		reply_error(c, id, RPC_APP_ERROR, KIND_UNAVAILABLE, "%s", err);
		return;
	}
	res = json_object_new_object();
	json_object_object_add(res, PARAM_KEY_RECORDS, json_object_new_int64((int64_t)n));
	reply_result(c, id, res);
}

/* auth.status {server?}: every OAuth server (and the orphans), or one. */
struct auth_status_params {
	const char *server;
};

static const struct param_spec auth_status_spec[] = {
	PARAM_STRING(struct auth_status_params, server, PARAM_KEY_SERVER, 0),
};

static void do_auth_status(struct conn *c, struct json_object *id, struct json_object *params)
{
	struct keeper *k = c->ctl->k;
	struct auth_status_params p = { 0 };
	struct json_object *res, *arr;
	struct server *one = NULL;

	if (check_params(c, id, METHOD_AUTH_STATUS, params, auth_status_spec, ARRAY_SIZE(auth_status_spec), &p) ||
	    (p.server && find_server(c, id, p.server, true, &one)))
		return;
	res = json_object_new_object();
	arr = json_object_new_array();
	for (size_t i = 0; i < k->n_servers; i++) {
		struct server *s = k->servers[i];

		if ((one && s != one) || !s->conf->oauth_enabled)
			continue;
		json_object_array_add(arr, control_server_json(s, false));
	}
	json_object_object_add(res, PARAM_KEY_SERVERS, arr);
	if (!one)
		json_object_object_add(res, PARAM_KEY_ORPHANED_TOKENS, orphans_json(k));
	reply_result(c, id, res);
}

/* ---- login and logout: answered when their flow ends ---- */

static void flow_reply_error(struct conn *c, struct json_object *error)
{
	struct json_object *v, *msg, *err, *data;
	const char *kind = KIND_INTERNAL, *message = "failed";

	if (json_object_object_get_ex(error, PARAM_KEY_KIND, &v))
		kind = json_object_get_string(v);
	if (json_object_object_get_ex(error, PARAM_KEY_MESSAGE, &v))
		message = json_object_get_string(v);
	msg = rpc_error(c->flow_id, RPC_APP_ERROR, kind, message);
	if (json_object_object_get_ex(error, PARAM_KEY_REASON, &v) && json_object_object_get_ex(msg, "error", &err) &&
	    json_object_object_get_ex(err, PARAM_KEY_DATA, &data))
		json_object_object_add(data, PARAM_KEY_REASON, json_object_get(v));
	send_msg(c, msg);
	json_object_put(msg);
}

static void flow_url(void *ctx, const char *server, const char *url)
{
	struct conn *c = ctx;
	struct json_object *p = json_object_new_object(), *n;

	if (c->login_nowait) {
		/* The login goes on without this connection. */
		json_object_object_add(p, PARAM_KEY_SERVER, json_object_new_string(server));
		json_object_object_add(p, PARAM_KEY_URL, json_object_new_string(url));
		reply_result(c, c->flow_id, p);
		json_object_put(c->flow_id);
		c->flow_id = NULL;
		c->login_nowait = false;
		flow_release(c->flow);
		c->flow = NULL;
		return;
	}

	json_object_object_add(p, PARAM_KEY_SERVER, json_object_new_string(server));
	json_object_object_add(p, PARAM_KEY_URL, json_object_new_string(url));
	n = rpc_notification(METHOD_AUTH_LOGIN_URL, p);
	send_msg(c, n);
	json_object_put(n);
}

static void login_done(void *ctx, struct json_object *result, struct json_object *error)
{
	struct conn *c = ctx;

	if (error)
		flow_reply_error(c, error);
	else
		reply_result(c, c->flow_id, json_object_get(result));
	json_object_put(c->flow_id);
	c->flow_id = NULL;
}

/* auth.login {server, timeout, wait}: the URL comes as an auth.login_url
 * notification, the reply when the login has ended. */
struct auth_login_params {
	const char *server;
	int64_t timeout;	/* seconds; 0: login.c's default */
	bool wait;
};

static const struct param_spec auth_login_spec[] = {
	PARAM_STRING(struct auth_login_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED),
	PARAM_INT(struct auth_login_params, timeout, PARAM_KEY_TIMEOUT, 0, 1, 3600),
	PARAM_BOOL(struct auth_login_params, wait, PARAM_KEY_WAIT, 0),
};

static void do_auth_login(struct conn *c, struct json_object *id, struct json_object *params)
{
	struct keeper *k = c->ctl->k;
	struct auth_login_params p = { .wait = true };
	struct server *s;
	int r;

	if (check_management(c, id) || check_master(c, id) ||
	    check_params(c, id, METHOD_AUTH_LOGIN, params, auth_login_spec, ARRAY_SIZE(auth_login_spec), &p) ||
	    find_server(c, id, p.server, true, &s))
		return;
	if (!s->conf->enabled) {
		reply_error(c, id, RPC_APP_ERROR, KIND_UNAVAILABLE, "server \"%s\" is disabled in the configuration",
			    s->name);
		return;
	}
	if (c->flow) {
		reply_error(c, id, RPC_APP_ERROR, KIND_BUSY, "this connection is already waiting for a login or logout");
		return;
	}
	if (s->login) {
		reply_error(c, id, RPC_APP_ERROR, KIND_BUSY, "a login for \"%s\" is already running", s->name);
		return;
	}
	log_info("control: auth.login %s by pid %d uid %u%s", s->name, (int)c->pid, (unsigned)c->uid,
		 c->internal ? " (http child)" : "");
	c->flow_id = json_object_get(id);
	c->login_nowait = !p.wait;
	r = login_start(k, s, (int)p.timeout, flow_url, login_done, c, &c->flow);
	if (r < 0) {
		json_object_put(c->flow_id);
		c->flow_id = NULL;
		reply_error(c, id, RPC_APP_ERROR, KIND_UNAVAILABLE, "cannot start the login: %s", strerror(-r));
	}
}

/* One server: its object as the result; --all: {"results": [...]}. */
static void logout_done_one(void *ctx, struct json_object *result, struct json_object *error)
{
	struct conn *c = ctx;
	struct json_object *o = json_object_array_get_idx(result, 0), *v, *e, *m = NULL;

	if (!o) {
		reply_error(c, c->flow_id, RPC_APP_ERROR, KIND_NOT_FOUND, "no token to log out");
	} else if (json_object_object_get_ex(o, PARAM_KEY_ERROR, &e)) {
		json_object_object_get_ex(o, PARAM_KEY_SERVER, &v);
		json_object_object_get_ex(e, PARAM_KEY_MESSAGE, &m);
		reply_error(c, c->flow_id, RPC_APP_ERROR, KIND_UNAVAILABLE, "logout of \"%s\" failed: %s",
			    json_object_get_string(v), m ? json_object_get_string(m) : "the token store failed");
	} else {
		reply_result(c, c->flow_id, json_object_get(o));
	}
	json_object_put(c->flow_id);
	c->flow_id = NULL;
}

static void logout_done_all(void *ctx, struct json_object *result, struct json_object *error)
{
	struct conn *c = ctx;
	struct json_object *res = json_object_new_object();

	json_object_object_add(res, PARAM_KEY_RESULTS, json_object_get(result));
	reply_result(c, c->flow_id, res);
	json_object_put(c->flow_id);
	c->flow_id = NULL;
}

static bool orphan_named(const struct keeper *k, const char *name)
{
	char n[STORE_SERVER_KEY_MAX + 1];

	for (size_t i = 0; i < k->n_orphans; i++) {
		keeper_orphan_name(k->orphans[i], n, sizeof(n));
		if (strcmp(n, name) == 0)
			return true;
	}
	return false;
}

/* auth.logout {server} | {all: true}. "all": false counts as not given. */
struct auth_logout_params {
	const char *server;
	bool all;
};

static const struct param_spec auth_logout_spec[] = {
	PARAM_STRING(struct auth_logout_params, server, PARAM_KEY_SERVER, 0),
	PARAM_BOOL(struct auth_logout_params, all, PARAM_KEY_ALL, 0),
};

static void do_auth_logout(struct conn *c, struct json_object *id, struct json_object *params)
{
	struct keeper *k = c->ctl->k;
	struct auth_logout_params p = { 0 };
	const char *orphan = NULL;
	struct server *s = NULL;

	if (check_management(c, id) || check_master(c, id) ||
	    check_params(c, id, METHOD_AUTH_LOGOUT, params, auth_logout_spec, ARRAY_SIZE(auth_logout_spec), &p))
		return;
	/* A name that left the config may still have a token: that one goes too. */
	if (p.server && !keeper_find_server(k, p.server) && orphan_named(k, p.server))
		orphan = p.server;
	else if (p.server && find_server(c, id, p.server, true, &s))
		return;
	if (!p.server == !p.all) {
		reply_error(c, id, RPC_INVALID_PARAMS, KIND_INVALID_PARAMS,
			    "give either \"server\": NAME or \"all\": true");
		return;
	}
	if (c->flow) {
		reply_error(c, id, RPC_APP_ERROR, KIND_BUSY, "this connection is already waiting for a login or logout");
		return;
	}
	log_info("control: auth.logout %s by pid %d uid %u%s", p.all ? "(all)" : p.server, (int)c->pid,
		 (unsigned)c->uid, c->internal ? " (http child)" : "");
	c->flow_id = json_object_get(id);
	logout_start(k, s, orphan, p.all, p.all ? logout_done_all : logout_done_one, c, &c->flow);
}

static void event_sink(void *ctx, struct json_object *note)
{
	struct conn *c = ctx;

	if (c->closing)
		return;
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) > CONN_OUTPUT_MAX) {
		log_warn("control: subscriber pid %d is not reading events; closing it", (int)c->pid);
		events_unsubscribe(c->ctl->k, c);
		c->subscribed = false;
		conn_close_after_flush(c);
		return;
	}
	send_msg(c, note);
}

static void do_subscribe(struct conn *c, struct json_object *id)
{
	struct json_object *res = json_object_new_object();

	if (!c->subscribed) {
		events_subscribe(c->ctl->k, event_sink, c);
		c->subscribed = true;
	}
	json_object_object_add(res, PARAM_KEY_SUBSCRIBED, json_object_new_boolean(c->subscribed));
	reply_result(c, id, res);
}

/* Copies what the bufferevent has queued into out. Its output may not be
 * drained or copied out by anyone else (libevent freezes its start), but it
 * may be looked at. */
static int copy_queued(struct conn *c, struct evbuffer *out)
{
	struct evbuffer *queued = bufferevent_get_output(c->bev);
	struct evbuffer_iovec v[16];
	int n = evbuffer_peek(queued, -1, NULL, NULL, 0);

	if (n > (int)ARRAY_SIZE(v))
		return -EMSGSIZE; /* never: one pipelined hello reply at most */
	n = evbuffer_peek(queued, -1, NULL, v, n);
	for (int i = 0; i < n; i++)
		if (evbuffer_add(out, v[i].iov_base, v[i].iov_len) < 0)
			return -ENOMEM;
	return 0;
}

/*
 * Writes what the bufferevent has queued and then msg straight to the
 * socket, waiting a little if it is full: the connection is about to leave
 * the keeper, so nothing may stay behind in the bufferevent.
 */
static int write_now(struct conn *c, struct json_object *msg)
{
	struct evbuffer *out = evbuffer_new();
	int fd = bufferevent_getfd(c->bev), r = 0;

	if (!out)
		return -ENOMEM;
	/* What is queued before it (the answer to a pipelined hello) goes first;
	 * the bufferevent is freed unwritten once the connection is handed on. */
	if (copy_queued(c, out) < 0 || frame_write(out, msg, PROTO_MAX_MESSAGE) != 0)
		r = -EMSGSIZE;
	for (int tries = 0; r == 0 && evbuffer_get_length(out) > 0 && tries < 100; tries++) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };

		if (evbuffer_write(out, fd) < 0 && errno != EAGAIN && errno != EINTR)
			r = -errno;
		else if (evbuffer_get_length(out) > 0)
			poll(&p, 1, 10);
	}
	if (r == 0 && evbuffer_get_length(out) > 0)
		r = -ETIMEDOUT;
	evbuffer_free(out);
	return r;
}

/*
 * connect {server, stdio}: the client's socket goes to the server's worker.
 * The client sends nothing more until this reply, so the keeper has read
 * exactly the one line; anything else already buffered is refused. After
 * the reply the keeper hands the descriptor over and forgets the
 * connection. "stdio" only tells the worker what comes first on it (the
 * client's own descriptors, proto.h): the keeper never reads them.
 */
struct connect_params {
	const char *server;
	bool stdio;
};

static const struct param_spec connect_spec[] = {
	PARAM_STRING(struct connect_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED),
	PARAM_BOOL(struct connect_params, stdio, PARAM_KEY_STDIO, 0),
};

static void do_connect(struct conn *c, struct json_object *id, struct json_object *params)
{
	struct keeper *k = c->ctl->k;
	struct connect_params p = { 0 };
	struct json_object *res, *reply;
	struct server *s;
	int fd, r;

	if (check_params(c, id, METHOD_CONNECT, params, connect_spec, ARRAY_SIZE(connect_spec), &p) ||
	    find_server(c, id, p.server, false, &s))
		return;
	if (!s->conf->enabled) {
		reply_error(c, id, RPC_APP_ERROR, KIND_UNAVAILABLE, "server \"%s\" is disabled in the configuration",
			    s->name);
		return;
	}
	if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0) {
		reply_error(c, id, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST,
			    "send nothing after connect until its reply");
		conn_close_after_flush(c);
		return;
	}
	{
		char why[256];

		/* A worker that cannot start (no sandbox for a stdio server): said
		 * here, while the client still reads JSON-RPC from us. */
		if (workers_can_start(k, s, why, sizeof(why)) < 0) {
			reply_error(c, id, RPC_APP_ERROR, KIND_UNAVAILABLE, "%s cannot start: %s", s->name, why);
			conn_close_after_flush(c);
			return;
		}
	}
	bufferevent_disable(c->bev, EV_READ);
	res = json_object_new_object();
	json_object_object_add(res, PARAM_KEY_SERVER, json_object_new_string(s->name));
	reply = rpc_result(id, res);
	r = write_now(c, reply);
	json_object_put(reply);
	if (r < 0) {
		log_info("control: connect %s: the reply could not be written: %s", s->name, strerror(-r));
		conn_close_after_flush(c);
		return;
	}
	fd = fcntl(bufferevent_getfd(c->bev), F_DUPFD_CLOEXEC, 3);
	c->handed_off = true;
	c->closing = true;
	if (fd < 0) {
		log_error("control: connect %s: %m", s->name);
		return;
	}
	r = workers_connect(k, s, fd, p.stdio ? CLIENT_F_STDIO : 0);
	if (r < 0)
		log_error("%s: could not hand a client to its worker: %s", s->name, strerror(-r));
	else
		log_debug("%s: client pid %d handed to the worker", s->name, (int)c->pid);
}

/* hello {version, client}: refuses another protocol version, by name. */
struct hello_params {
	int64_t version;
	const char *client;
};

static const struct param_spec hello_spec[] = {
	PARAM_INT(struct hello_params, version, PARAM_KEY_VERSION, PARAM_REQUIRED, 0, 0),
	PARAM_STRING(struct hello_params, client, PARAM_KEY_CLIENT, 0),
};

static void do_hello(struct conn *c, struct json_object *id, struct json_object *params)
{
	struct hello_params p = { 0 };
	struct json_object *res;

	if (check_params(c, id, METHOD_HELLO, params, hello_spec, ARRAY_SIZE(hello_spec), &p))
		return;
	if (p.version != PROTO_VERSION) {
		log_info("control: pid %d uid %u speaks protocol version %lld, not %d; closing", (int)c->pid,
			 (unsigned)c->uid, (long long)p.version, PROTO_VERSION);
		reply_error(c, id, RPC_APP_ERROR, KIND_VERSION_MISMATCH,
			    "this keeper (mcpkeeperd %s) speaks control protocol version %d, the client version %lld: "
			    "use the mcpctl of the same release",
			    MCPKEEPER_VERSION, PROTO_VERSION, (long long)p.version);
		conn_close_after_flush(c);
		return;
	}
	res = json_object_new_object();
	json_object_object_add(res, PARAM_KEY_VERSION, json_object_new_int(PROTO_VERSION));
	json_object_object_add(res, PARAM_KEY_KEEPER, json_object_new_string("mcpkeeperd " MCPKEEPER_VERSION));
	reply_result(c, id, res);
}

/* ---- changes of the server list (servers.c) and reload ---- */

/* servers.add {server, config}, servers.remove {server}, servers.update {server, set}. */
struct servers_params {
	const char *server;
	struct json_object *config;
	struct json_object *set;
};

static const struct param_spec servers_add_spec[] = {
	PARAM_STRING(struct servers_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_OBJECT(struct servers_params, config, PARAM_KEY_CONFIG, PARAM_REQUIRED),
};

static const struct param_spec servers_remove_spec[] = {
	PARAM_STRING(struct servers_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED | PARAM_NONEMPTY),
};

static const struct param_spec servers_update_spec[] = {
	PARAM_STRING(struct servers_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_OBJECT(struct servers_params, set, PARAM_KEY_SET, PARAM_REQUIRED),
};

static void do_servers_change(struct conn *c, struct json_object *id, const char *method, struct json_object *params)
{
	struct servers_params p = { 0 };
	struct servers_change ch = { .method = method, .restricted = c->internal, .uid = c->uid, .pid = c->pid };
	struct json_object *res;
	const char *kind;
	char err[1024];
	int r;

	if (strcmp(method, METHOD_SERVERS_ADD) == 0)
		r = check_params(c, id, method, params, servers_add_spec, ARRAY_SIZE(servers_add_spec), &p);
	else if (strcmp(method, METHOD_SERVERS_REMOVE) == 0)
		r = check_params(c, id, method, params, servers_remove_spec, ARRAY_SIZE(servers_remove_spec), &p);
	else
		r = check_params(c, id, method, params, servers_update_spec, ARRAY_SIZE(servers_update_spec), &p);
	if (r || check_master(c, id))
		return;
	ch.server = p.server;
	ch.fields = p.config ? p.config : p.set;
	kind = servers_change(c->ctl->k, &ch, &res, err, sizeof(err));
	if (kind) {
		reply_error(c, id, RPC_APP_ERROR, kind, "%s", err);
		return;
	}
	reply_result(c, id, res);
}

static void do_reload(struct conn *c, struct json_object *id)
{
	struct keeper *k = c->ctl->k;
	struct json_object *res;
	char err[1024];

	if (check_management(c, id))
		return;
	log_info("control: reload by pid %d uid %u%s", (int)c->pid, (unsigned)c->uid, c->internal ? " (http child)" : "");
	if (keeper_reload(k, err, sizeof(err)) < 0) {
		reply_error(c, id, RPC_APP_ERROR, KIND_INVALID_CONFIG, "%s", err);
		return;
	}
	res = json_object_new_object();
	json_object_object_add(res, PARAM_KEY_SERVERS, json_object_new_int64((int64_t)k->n_servers));
	reply_result(c, id, res);
}

static void dispatch(struct conn *c, struct rpc_msg *m)
{
	const char *method = m->method;

	if (m->type != RPC_REQUEST) {
		/* Notifications and stray responses need no answer. */
		return;
	}
	if (m->params && !json_object_is_type(m->params, json_type_object)) {
		reply_error(c, m->id, RPC_INVALID_PARAMS, KIND_INVALID_PARAMS, "params must be an object");
		return;
	}
	if (strcmp(method, METHOD_HELLO) == 0)
		do_hello(c, m->id, m->params);
	else if (strcmp(method, METHOD_STATUS) == 0)
		do_status(c, m->id, m->params);
	else if (strcmp(method, METHOD_SERVERS_LIST) == 0)
		do_servers_list(c, m->id);
	else if (strcmp(method, METHOD_AUTH_STATUS) == 0)
		do_auth_status(c, m->id, m->params);
	else if (strcmp(method, METHOD_AUTH_LOGIN) == 0)
		do_auth_login(c, m->id, m->params);
	else if (strcmp(method, METHOD_AUTH_LOGOUT) == 0)
		do_auth_logout(c, m->id, m->params);
	else if (strcmp(method, METHOD_EVENTS_SUBSCRIBE) == 0)
		do_subscribe(c, m->id);
	else if (strcmp(method, METHOD_CONNECT) == 0)
		do_connect(c, m->id, m->params);
	else if (strcmp(method, METHOD_SERVERS_ADD) == 0 || strcmp(method, METHOD_SERVERS_REMOVE) == 0 ||
		 strcmp(method, METHOD_SERVERS_UPDATE) == 0)
		do_servers_change(c, m->id, method, m->params);
	else if (strcmp(method, METHOD_RELOAD) == 0)
		do_reload(c, m->id);
	else if (strcmp(method, METHOD_REPLICATION_STATUS) == 0)
		do_replication_status(c, m->id);
	else if (strcmp(method, METHOD_KEY_ROTATE) == 0)
		do_key_rotate(c, m->id);
	else
		reply_error(c, m->id, RPC_METHOD_NOT_FOUND, KIND_UNKNOWN_METHOD, "unknown method \"%.64s\"", method);
}

/* ---- connections ---- */

static void on_read(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	while (!c->closing) {
		struct rpc_msg m;
		char detail[160] = "";
		int r = frame_read(bufferevent_get_input(bev), PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			return;
		if (r != 0) {
			struct json_object *e = rpc_error_for_frame(r, detail);

			/* Answer with the request's id when it could be read. */
			if (r == FRAME_E_INVALID_RPC && m.id) {
				json_object_put(e);
				e = rpc_error(m.id, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST, detail);
			}
			log_info("control: pid %d uid %u: %s; closing", (int)c->pid, (unsigned)c->uid,
				 detail[0] ? detail : frame_strerror(r));
			send_msg(c, e);
			json_object_put(e);
			rpc_msg_clear(&m);
			conn_close_after_flush(c);
			return;
		}
		dispatch(c, &m);
		rpc_msg_clear(&m);
		if (c->handed_off) {
			conn_free(c);
			return;
		}
	}
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		conn_free(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		conn_free(c);
}

static bool peer_allowed(struct control *ctl, int fd, uid_t uid, gid_t gid)
{
	gid_t *groups = NULL;
	size_t n = 0;
	bool ok = false;

	if (uid == 0 || uid == geteuid())
		return true;
	if (!ctl->have_group)
		return false;
	if (gid == ctl->group)
		return true;
	if (sock_peer_groups(fd, &groups, &n) == 0) {
		for (size_t i = 0; i < n && !ok; i++)
			ok = groups[i] == ctl->group;
		free(groups);
	}
	return ok;
}

static void refuse(struct conn *c, const char *kind, const char *msg)
{
	struct json_object *e = rpc_error(NULL, RPC_APP_ERROR, kind, msg);

	send_msg(c, e);
	json_object_put(e);
	conn_close_after_flush(c);
}

static void retry_accept(evutil_socket_t fd, short what, void *arg)
{
	struct control *ctl = arg;

	event_add(ctl->accept_ev, NULL);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
	struct control *ctl = arg;

	for (int burst = 0; burst < 64; burst++) {
		struct conn *c;
		pid_t pid;
		uid_t uid;
		gid_t gid;
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				struct timeval tv = { 0, ACCEPT_RETRY_MS * 1000 };

				log_warn("control: cannot accept (%m); pausing for %d ms", ACCEPT_RETRY_MS);
				event_del(ctl->accept_ev);
				evtimer_add(ctl->retry_timer, &tv);
			}
			return;
		}
		if (sock_peer_cred(fd, &pid, &uid, &gid) < 0) {
			close(fd);
			continue;
		}
		c = xcalloc(1, sizeof(*c));
		c->ctl = ctl;
		c->uid = uid;
		c->pid = pid;
		c->bev = bufferevent_socket_new(ctl->k->base, fd, BEV_OPT_CLOSE_ON_FREE);
		if (!c->bev) {
			close(fd);
			free(c);
			continue;
		}
		frame_bev_setup(c->bev, PROTO_MAX_MESSAGE);
		bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
		c->next = ctl->conns;
		if (ctl->conns)
			ctl->conns->prev = c;
		ctl->conns = c;

		if (!peer_allowed(ctl, fd, uid, gid)) {
			log_warn("control: refused pid %d uid %u (not root, not uid %u, not in the configured group)",
				 (int)pid, (unsigned)uid, (unsigned)geteuid());
			bufferevent_enable(c->bev, EV_WRITE);
			refuse(c, KIND_FORBIDDEN, "permission denied: this user may not use the keeper");
			continue;
		}
		if (conns_of_uid(ctl, uid) > (size_t)ctl->k->cfg->max_conns_per_uid) {
			log_warn("control: uid %u holds too many connections; refused pid %d", (unsigned)uid, (int)pid);
			bufferevent_enable(c->bev, EV_WRITE);
			refuse(c, KIND_BUSY, "too many connections from this user");
			continue;
		}
		bufferevent_enable(c->bev, EV_READ | EV_WRITE);
		log_debug("control: pid %d uid %u connected", (int)pid, (unsigned)uid);
	}
}

size_t control_internal_conns(const struct control *ctl)
{
	size_t n = 0;

	/* Closing ones too: a child that never reads its end keeps them. */
	for (const struct conn *c = ctl ? ctl->conns : NULL; c; c = c->next)
		if (c->internal)
			n++;
	return n;
}

int control_adopt(struct control *ctl, int fd)
{
	struct conn *c;

	if (!ctl) {
		close(fd);
		return -ENOTCONN;
	}
	if (fd_set_nonblock(fd, 1) < 0) {
		int e = errno;

		close(fd);
		return -e;
	}
	c = xcalloc(1, sizeof(*c));
	c->ctl = ctl;
	c->uid = geteuid();
	c->internal = true;
	c->bev = bufferevent_socket_new(ctl->k->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev) {
		close(fd);
		free(c);
		return -ENOMEM;
	}
	frame_bev_setup(c->bev, PROTO_MAX_MESSAGE);
	bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
	c->next = ctl->conns;
	if (ctl->conns)
		ctl->conns->prev = c;
	ctl->conns = c;
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	return 0;
}

int control_start(struct keeper *k, int listen_fd)
{
	struct control *ctl = xcalloc(1, sizeof(*ctl));

	ctl->k = k;
	ctl->fd = listen_fd;
	if (k->cfg->group) {
		struct group *gr = getgrnam(k->cfg->group);

		if (!gr) {
			log_error("control: group \"%s\" does not exist; only root and uid %u may connect",
				  k->cfg->group, (unsigned)geteuid());
		} else {
			ctl->have_group = true;
			ctl->group = gr->gr_gid;
		}
	}
	fd_set_nonblock(listen_fd, 1);
	fd_set_cloexec(listen_fd, 1);
	ctl->accept_ev = event_new(k->base, listen_fd, EV_READ | EV_PERSIST, on_accept, ctl);
	ctl->retry_timer = evtimer_new(k->base, retry_accept, ctl);
	if (!ctl->accept_ev || !ctl->retry_timer || event_add(ctl->accept_ev, NULL) < 0) {
		control_free(ctl);
		return -ENOMEM;
	}
	k->control = ctl;
	return 0;
}

struct control *control_free(struct control *ctl)
{
	if (!ctl)
		return NULL;
	while (ctl->conns)
		conn_free(ctl->conns);
	if (ctl->accept_ev)
		event_free(ctl->accept_ev);
	if (ctl->retry_timer)
		event_free(ctl->retry_timer);
	if (ctl->fd >= 0)
		close(ctl->fd);
	free(ctl);
	return NULL;
}
