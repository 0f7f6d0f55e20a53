/*
 * Workers: one mcpkeeper-worker per upstream that has clients (or is
 * "eager"), started at the first connect, stopped once its last client has
 * gone and the idle timeout passed, restarted with backoff when it dies.
 *
 * The keeper hands each connected client descriptor to the worker on fd 4;
 * from then on client and worker talk directly. A worker gets the access
 * token of its own upstream and nothing else: never a refresh token, never a
 * client secret, never another upstream's token.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "config.h"
#include "frame.h"
#include "jail.h"
#include "keeper.h"
#include "log.h"
#include "params.h"
#include "proto.h"
#include "secret.h"
#include "store.h"
#include "token.h"
#include "util.h"

struct pending_fd {
	int fd;
	uint64_t number;
	unsigned flags;			/* CLIENT_F_* */
	struct pending_fd *next;
};

struct token_waiter {
	struct json_object *id;
	struct token_waiter *next;
};

static uint64_t next_client_number = 1;

static struct json_object *kv_object(const struct config_kv *kv, size_t n)
{
	struct json_object *o = json_object_new_object();

	for (size_t i = 0; i < n; i++)
		json_object_object_add(o, kv[i].key, json_object_new_string(kv[i].value));
	return o;
}

/* The upstream as the keeper assigns it: the worker never chooses. */
static void worker_hello(struct child *c, void *ctx, struct json_object *params)
{
	struct server *s = ctx;
	const struct config_server *cs = s->conf;
	struct json_object *t = json_object_new_object(), *args = json_object_new_array();

	json_object_object_add(params, PARAM_KEY_NAME, json_object_new_string(s->name));
	json_object_object_add(t, PARAM_KEY_PROTOCOL, json_object_new_string(config_protocol_name(cs->protocol)));
	if (cs->url)
		json_object_object_add(t, PARAM_KEY_URL, json_object_new_string(cs->url));
	json_object_object_add(t, PARAM_KEY_HEADERS, kv_object(cs->headers, cs->n_headers));
	if (cs->command)
		json_object_object_add(t, PARAM_KEY_COMMAND, json_object_new_string(cs->command));
	for (size_t i = 0; i < cs->n_args; i++)
		json_object_array_add(args, json_object_new_string(cs->args[i]));
	json_object_object_add(t, PARAM_KEY_ARGS, args);
	json_object_object_add(t, PARAM_KEY_ENV, kv_object(cs->env, cs->n_env));
	json_object_object_add(t, PARAM_KEY_REQUEST_TIMEOUT_MS, json_object_new_int(s->k->cfg->request_timeout_sec * 1000));
	json_object_object_add(t, PARAM_KEY_OAUTH, json_object_new_boolean(cs->oauth_enabled));
	json_object_object_add(params, PARAM_KEY_TRANSPORT, t);
}

/* The current access token as token.update params; NULL when there is none. */
static struct json_object *current_token(struct keeper *k, struct server *s)
{
	struct secret *plain = NULL;
	struct json_object *o;
	struct token t;

	if (!s->conf->oauth_enabled || s->status == OAUTH_NONE || s->refused)
		return NULL;
	if (store_get(k->store, STORE_TOKENS, s->key, &plain) != 0 || token_decode(plain, &t) < 0)
		return NULL;
	o = json_object_new_object();
	json_object_object_add(o, PARAM_KEY_ACCESS_TOKEN, json_object_new_string(t.access_token));
	json_object_object_add(o, PARAM_KEY_TOKEN_TYPE, json_object_new_string(t.token_type ? t.token_type : "Bearer"));
	json_object_object_add(o, PARAM_KEY_EXPIRES_AT, t.expires_at ? json_object_new_int64(t.expires_at) : NULL);
	token_clear(&t);
	return o;
}

static void push_token(struct keeper *k, struct server *s)
{
	struct json_object *tok;

	if (!s->worker || !child_ready(s->worker) || !s->conf->oauth_enabled)
		return;
	tok = current_token(k, s);
	if (tok)
		child_notify(s->worker, METHOD_TOKEN_UPDATE, tok);
	else
		child_notify(s->worker, METHOD_TOKEN_CLEAR, json_object_new_object());
}

static void flush_fds(struct server *s)
{
	while (s->pending_fds && child_ready(s->worker)) {
		struct pending_fd *p = s->pending_fds;
		int r = child_send_client(s->worker, p->number, p->flags, p->fd);

		if (r == -EAGAIN)
			return; /* the descriptor channel is full: next time */
		if (r < 0)
			log_warn("%s: handing client %llu to the worker failed: %s", s->name,
				 (unsigned long long)p->number, strerror(-r));
		close(p->fd);
		s->pending_fds = p->next;
		free(p);
		s->clients++;
	}
}

static void worker_ready(struct child *c, void *ctx)
{
	struct server *s = ctx;

	push_token(s->k, s);
	flush_fds(s);
}

/* Answers every token.invalid waiting: with the current token when error
 * is NULL, else with an error of kind (KIND_UNAVAILABLE: login needed, which
 * the worker tells its clients as such; others carry error as it is). */
static void reply_waiters(struct keeper *k, struct server *s, const char *kind, const char *error)
{
	struct token_waiter *w = s->token_waiters;

	s->token_waiters = NULL;
	while (w) {
		struct token_waiter *next = w->next;
		struct json_object *tok = error ? NULL : current_token(k, s);

		if (s->worker) {
			if (tok) {
				child_reply(s->worker, w->id, tok, NULL);
			} else {
				char msg[300];

				if (!error || strcmp(kind, KIND_UNAVAILABLE) == 0)
					snprintf(msg, sizeof(msg), "no current token for %s%s%s", s->name,
						 error ? ": " : "", error ? error : "");
				else
					snprintf(msg, sizeof(msg), "%s", error);
				child_reply(s->worker, w->id, NULL,
					    rpc_error(w->id, RPC_APP_ERROR, error ? kind : KIND_UNAVAILABLE, msg));
			}
		} else {
			rpc_wipe_put(tok);
		}
		json_object_put(w->id);
		free(w);
		w = next;
	}
}

/*
 * The worker's messages, each checked through its table: a worker that sends
 * something else is broken, and worker_message() says so (-EPROTO: the
 * keeper restarts it).
 */

/*
 * token.invalid {access_token, scope?, scope_union?}. A 401 (no scope):
 * when the rejected token is the current one, first whether the upstream
 * now names another authorization server (reauth.c), else a refresh. A 403
 * insufficient_scope (scope): reauth.c decides on a new login. A token that
 * is no longer current gets the current one at once.
 */
/* (struct token_invalid_params and its table: childmsg.c) */

void workers_token_rejected(struct keeper *k, struct server *s)
{
	char why[256];

	if (!keeper_is_master(k)) {
		char master[320], msg[512];

		/* A replica refreshes nothing: the master's new token reaches
		 * this worker through the change sequence (group.c). */
		group_master_text(k, master, sizeof(master));
		snprintf(msg, sizeof(msg), "the upstream rejected the token; this keeper is a replica and the "
			 "master (%s) refreshes it: try again shortly", master);
		reply_waiters(k, s, KIND_BUSY, msg);
		return;
	}
	if (s->refused || !s->has_refresh) {
		reply_waiters(k, s, KIND_UNAVAILABLE, "the token was rejected and cannot be refreshed: log in again");
		return;
	}
	if (refresh_now(k, s, why, sizeof(why)) == REFRESH_NOT_NOW) {
		/* Its clients get the error now, not after the floor: the
		 * refresh that follows it arrives as token.update. */
		log_debug("%s: the worker's token was rejected upstream; not refreshing yet: %s", s->name, why);
		reply_waiters(k, s, KIND_BUSY, why);
	} else {
		log_info("%s: the worker's token was rejected upstream; refreshing now", s->name);
	}
}

static int on_token_invalid(struct keeper *k, struct server *s, struct rpc_msg *m)
{
	struct token_invalid_params p = { 0 };
	struct token_waiter *w;
	struct token t = { 0 };
	bool current = false, has_issuer = false;
	char *granted = NULL;

	if (m->type != RPC_REQUEST || token_invalid_parse(m->params, &p) < 0)
		return -EPROTO;
	if (server_token_read(k, s, &t)) {
		size_t n = strlen(t.access_token);

		current = n == strlen(p.access_token) &&
			  secret_equal_bytes(&(struct secret){ n, (unsigned char *)t.access_token }, p.access_token, n);
		has_issuer = t.issuer != NULL;
		granted = t.scope ? xstrdup(t.scope) : NULL;
		token_clear(&t);
	}
	w = xcalloc(1, sizeof(*w));
	w->id = json_object_get(m->id);
	w->next = s->token_waiters;
	s->token_waiters = w;
	if (!current) {
		/* An older token, or none: answer at once. */
		reply_waiters(k, s, KIND_UNAVAILABLE, NULL);
	} else if (p.scope) {
		reauth_step_up(k, s, granted, p.scope, p.scope_union);
	} else if (s->login) {
		/* a login is under way: its end answers */
	} else if (!has_issuer || !reauth_check_issuer(k, s)) {
		workers_token_rejected(k, s);
	}
	free(granted);
	return 0;
}

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	if (s->clients > 0 || s->pending_fds || !s->worker || s->conf->eager)
		return;
	log_info("%s: no clients for %d s; stopping its worker", s->name, s->k->cfg->idle_timeout_sec);
	child_stop(s->worker);
}

static void arm_idle(struct server *s)
{
	struct timeval tv = { s->k->cfg->idle_timeout_sec, 0 };

	if (s->conf->eager)
		return;
	if (!s->idle_timer)
		s->idle_timer = evtimer_new(s->k->base, idle_cb, s);
	evtimer_add(s->idle_timer, &tv);
}

/* client.closed {clients}: how many remain, for the idle timeout. */
struct client_closed_params {
	int64_t clients;
};

static const struct param_spec client_closed_spec[] = {
	PARAM_INT(struct client_closed_params, clients, PARAM_KEY_CLIENTS, PARAM_REQUIRED, 0, INT_MAX),
};

static int on_client_closed(struct server *s, struct rpc_msg *m)
{
	struct client_closed_params p = { 0 };
	const char *bad;

	if (params_parse(m->params, client_closed_spec, ARRAY_SIZE(client_closed_spec), &p, &bad) < 0)
		return -EPROTO;
	s->clients = (int)p.clients;
	if (s->clients <= 0 && !s->pending_fds)
		arm_idle(s);
	return 0;
}

/* upstream.needs_login {}: an upstream without OAuth configured asked for it. */
static int on_needs_login(struct server *s, struct rpc_msg *m)
{
	const char *bad;

	if (params_parse(m->params, NULL, 0, NULL, &bad) < 0)
		return -EPROTO;
	if (!s->needs_login)
		log_warn("%s: the upstream asks for OAuth; run: mcpctl auth login --server %s", s->name, s->name);
	s->needs_login = true;
	return 0;
}

static int worker_message(struct child *c, void *ctx, struct rpc_msg *m)
{
	struct server *s = ctx;

	if (strcmp(m->method, METHOD_TOKEN_INVALID) == 0)
		return on_token_invalid(s->k, s, m);
	if (strcmp(m->method, METHOD_CLIENT_CLOSED) == 0)
		return on_client_closed(s, m);
	if (strcmp(m->method, METHOD_UPSTREAM_NEEDS_LOGIN) == 0)
		return on_needs_login(s, m);
	return -EPROTO;
}

static void worker_lost(struct child *c, void *ctx)
{
	struct server *s = ctx;

	/* Its clients went with it; waiting descriptors stay for the restart. */
	s->clients = 0;
	reply_waiters(s->k, s, KIND_UNAVAILABLE, "the worker restarted");
}

/* A stdio server's worker runs sandboxed (jail.c); an HTTP one confines
 * itself with Landlock. */
static int worker_jail(struct child *c, void *ctx, struct jail **out, char *why, size_t len)
{
	struct server *s = ctx;

	*out = NULL;
	if (s->conf->protocol != CONFIG_PROTOCOL_STDIO)
		return 0;
	s->sandbox[0] = '\0';
	*out = jail_new(s->k, s->conf, why, len);
	return *out ? 0 : -EPERM;
}

/* The sandbox the worker found itself in, as the hello reports it. */
static void worker_hello_result(struct child *c, void *ctx, struct json_object *result)
{
	struct server *s = ctx;
	struct json_object *got;

	if (json_object_object_get_ex(result, PARAM_KEY_SANDBOX, &got) && json_object_is_type(got, json_type_string))
		snprintf(s->sandbox, sizeof(s->sandbox), "%s", json_object_get_string(got));
	if (s->conf->protocol == CONFIG_PROTOCOL_STDIO)
		log_info("%s: the stdio worker runs with sandbox %s", s->name, s->sandbox[0] ? s->sandbox : "unknown");
}

static const struct child_ops worker_ops = {
	.hello = worker_hello,
	.hello_result = worker_hello_result,
	.jail = worker_jail,
	.ready = worker_ready,
	.lost = worker_lost,
	.message = worker_message,
	.desc_channel = true,
};

static int ensure_worker(struct keeper *k, struct server *s)
{
	if (!s->worker) {
		char label[128];

		s->worker = child_new(k, ROLE_WORKER, CHILD_WORKER_BIN, &worker_ops, s);
		if (!s->worker)
			return -ENOMEM;
		snprintf(label, sizeof(label), "%s worker", s->name);
		child_set_label(s->worker, label);
	}
	if (strcmp(child_state_name(s->worker), "stopped") == 0)
		return child_start(s->worker);
	return 0;
}

int workers_can_start(struct keeper *k, struct server *s, char *why, size_t len)
{
	struct jail *j;

	if (s->conf->protocol != CONFIG_PROTOCOL_STDIO || (s->worker && child_pid(s->worker) > 0))
		return 0;
	j = jail_new(k, s->conf, why, len);
	if (!j)
		return -EPERM;
	jail_free(j);
	return 0;
}

int workers_connect(struct keeper *k, struct server *s, int fd, unsigned flags)
{
	struct pending_fd *p, **tail;
	int r;

	r = ensure_worker(k, s);
	if (r < 0) {
		close(fd);
		return r;
	}
	p = xcalloc(1, sizeof(*p));
	p->fd = fd;
	p->number = next_client_number++;
	p->flags = flags;
	for (tail = &s->pending_fds; *tail; tail = &(*tail)->next)
		;
	*tail = p;
	if (s->idle_timer)
		evtimer_del(s->idle_timer);
	flush_fds(s);
	return 0;
}

void workers_start_eager(struct keeper *k)
{
	for (size_t i = 0; i < k->n_servers; i++) {
		struct server *s = k->servers[i];

		if (s->conf->eager && s->conf->enabled && ensure_worker(k, s) < 0)
			log_error("%s: the eager worker did not start", s->name);
	}
}

void workers_token_changed(struct keeper *k, struct server *s)
{
	push_token(k, s);
}

int workers_token_cleared(struct keeper *k, struct server *s, child_reply_fn fn, void *ctx, int64_t *id)
{
	int r = 0;

	if (s->worker && child_ready(s->worker)) {
		/* As a request: the worker answers once it has dropped the token,
		 * so a logout can answer its caller only after that. */
		if (fn && child_request(s->worker, METHOD_TOKEN_CLEAR, json_object_new_object(), fn, ctx, id) == 0)
			r = WORKERS_CLEAR_PENDING;
		else if (!fn)
			child_notify(s->worker, METHOD_TOKEN_CLEAR, json_object_new_object());
	}
	reply_waiters(k, s, KIND_UNAVAILABLE, "logged out");
	return r;
}

void workers_refresh_done(struct keeper *k, struct server *s, const char *kind, const char *error)
{
	if (s->token_waiters)
		reply_waiters(k, s, kind, error);
}

void workers_forget(struct keeper *k, struct server *s)
{
	reply_waiters(k, s, KIND_UNAVAILABLE, "server removed");
	while (s->pending_fds) {
		struct pending_fd *p = s->pending_fds;

		s->pending_fds = p->next;
		close(p->fd);
		free(p);
	}
	if (s->idle_timer) {
		event_free(s->idle_timer);
		s->idle_timer = NULL;
	}
	s->worker = child_free(s->worker);
}

static bool kv_equal(const struct config_kv *a, size_t na, const struct config_kv *b, size_t nb)
{
	if (na != nb)
		return false;
	for (size_t i = 0; i < na; i++)
		if (strcmp(a[i].key, b[i].key) || strcmp(a[i].value, b[i].value))
			return false;
	return true;
}

static bool str_equal(const char *a, const char *b)
{
	return !strcmp(a ? a : "", b ? b : "");
}

static bool strv_equal(char *const *a, size_t na, char *const *b, size_t nb)
{
	if (na != nb)
		return false;
	for (size_t i = 0; i < na; i++)
		if (strcmp(a[i], b[i]))
			return false;
	return true;
}

bool workers_settings_equal(const struct config_server *a, const struct config_server *b)
{
	if (a->protocol != b->protocol || !str_equal(a->url, b->url) || !str_equal(a->command, b->command) ||
	    a->n_args != b->n_args || a->oauth_enabled != b->oauth_enabled || a->enabled != b->enabled ||
	    !kv_equal(a->env, a->n_env, b->env, b->n_env) ||
	    !kv_equal(a->headers, a->n_headers, b->headers, b->n_headers) || a->sandbox != b->sandbox ||
	    !strv_equal(a->sandbox_read, a->n_sandbox_read, b->sandbox_read, b->n_sandbox_read) ||
	    !strv_equal(a->sandbox_write, a->n_sandbox_write, b->sandbox_write, b->n_sandbox_write))
		return false;
	return strv_equal(a->args, a->n_args, b->args, b->n_args);
}

struct json_object *workers_status_json(const struct server *s)
{
	struct json_object *w = json_object_new_object();
	const char *exit_reason = s->worker ? child_last_exit(s->worker) : NULL;
	bool running = s->worker && child_pid(s->worker) > 0;

	const char *state = s->worker ? child_state_name(s->worker) : "idle";

	/* A stopped worker is simply not running: idle until the next client;
	 * a disabled server's never starts, which idle would hide. */
	if (!s->conf->enabled)
		state = "disabled";
	else if (strcmp(state, "stopped") == 0)
		state = "idle";
	json_object_object_add(w, PARAM_KEY_STATE, json_object_new_string(state));
	json_object_object_add(w, PARAM_KEY_PID, running ? json_object_new_int((int)child_pid(s->worker)) : NULL);
	json_object_object_add(w, PARAM_KEY_RESTARTS, json_object_new_int(s->worker ? (int)child_restarts(s->worker) : 0));
	json_object_object_add(w, PARAM_KEY_LAST_EXIT, exit_reason ? json_object_new_string(exit_reason) : NULL);
	json_object_object_add(w, PARAM_KEY_CLIENTS, json_object_new_int(s->clients));
	if (s->needs_login)
		json_object_object_add(w, PARAM_KEY_NEEDS_LOGIN, json_object_new_boolean(1));
	if (s->conf->protocol == CONFIG_PROTOCOL_STDIO)
		json_object_object_add(w, PARAM_KEY_SANDBOX,
				       s->sandbox[0] ? json_object_new_string(s->sandbox) : NULL);
	/* allow_insecure_http in use: said wherever the worker's state is. */
	if (s->conf->insecure_http)
		json_object_object_add(w, PARAM_KEY_INSECURE_HTTP, json_object_new_boolean(1));
	return w;
}
