/*
 * The keeper's shared context. One struct keeper per process, passed
 * explicitly; each module of mcpkeeperd (control.c, refresh.c, events.c,
 * child.c) works on it through the functions declared here.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "childmsg.h"
#include "store.h"

struct event;
struct event_base;
struct json_object;
struct config;
struct config_server;
struct secret;
struct control;
struct child;
struct jail;

struct keeper;
/* child.c: a child's answer to a request (or the error when it went away). */
typedef void (*child_reply_fn)(struct keeper *k, void *ctx, struct json_object *result,
			       struct json_object *error);

enum oauth_status {
	OAUTH_NONE,		/* never logged in (no token record) */
	OAUTH_AUTHENTICATED,
	OAUTH_EXPIRED,		/* login needed */
	OAUTH_ERROR,		/* refreshing keeps failing */
};

enum refresh_state {
	REFRESH_IDLE,		/* nothing to refresh */
	REFRESH_SCHEDULED,
	REFRESH_REFRESHING,
	REFRESH_RETRYING,
	REFRESH_FAILED,		/* terminal: login needed */
	REFRESH_INTERRUPTED,	/* a refresh was in flight when the keeper died: login needed */
};

/* Runtime state of one configured server. Schedule metadata only: token
 * bytes stay sealed in the store until a refresh needs them. */
struct server {
	struct keeper *k;
	char *name;
	char *key;				/* its token record's key, "name#hash" */
	const struct config_server *conf;	/* points into k->cfg */

	/* refresh.c (fields grouped by size: a keeper may hold 100 000 of these) */
	int64_t obtained_at_ms, expires_at_ms;	/* wall clock, ms; 0: unknown */
	enum oauth_status status;
	enum refresh_state rstate;
	int retry_count;			/* failed attempts since the last success */
	bool has_refresh;
	bool refused;				/* provider refused the refresh token: login needed */
	bool interrupted;			/* its record holds a refresh intent from before a crash */
	signed char group_config;		/* group.c: GROUP_CONFIG_*, this site's entry against the master's */
	bool failed_reported;			/* oauth.refresh_failed sent for this run */
	bool in_flight;
	int64_t next_at_ms;			/* wall-clock due time; 0: none */
	ssize_t heap_idx;			/* position in the ready queue; -1: not queued */
	ssize_t due_idx;			/* timers: position in their heap; -1: not armed */
	int64_t due_at_ms;
	/* When its last token request started (a refresh, or the login that
	 * brought the token): none starts before refresh.min_interval has
	 * passed since. 0: none since the keeper started. */
	int64_t last_request_ms;
	/* The provider's Retry-After: no token request before this instant,
	 * whoever asks. 0: none. */
	int64_t not_before_ms;
	int64_t request_id;			/* outstanding oauth.refresh */
	struct secret *request_plain;		/* the record the refresh started from */
	struct secret *unstored;		/* refresh.c: a refreshed record the store refused */
	struct secret *unstored_base;		/* ... and the stored record it replaces */
	int unstored_tries;
	char *last_error;			/* NULL: none; server_set_error() */

	struct flow *login;			/* login.c: the login running, if any */
	bool login_active;
	bool load_pending;			/* keeper.c: its record is still to be read */
	bool needs_login;			/* workers.c: upstream answered 401 without an oauth block */
	int clients;				/* workers.c: as the worker last reported */

	/* workers.c */
	struct child *worker;			/* NULL until the first connect (or eager) */
	struct event *idle_timer;
	struct pending_fd *pending_fds;		/* clients waiting for the worker's hello */
	struct token_waiter *token_waiters;	/* token.invalid requests waiting for a refresh */
	char sandbox[16];			/* stdio: the running worker's ("namespaces", "landlock", "off") */
	struct reauth *reauth;			/* reauth.c: a new login wanted; NULL: never was */
};

/* child.c: the ids one role's children run as in system mode (config
 * "users"), looked up by the keeper at start and reload: a forked child
 * does not call into NSS. */
struct child_user {
	uid_t uid;
	gid_t gid;
};

struct child_users {
	struct child_user oauth, http, worker;
};

struct keeper {
	struct event_base *base;
	char *config_path;
	bool system_mode;
	struct config *cfg;
	struct store *store;
	struct secret *master_key;

	struct server **servers;
	size_t n_servers;
	uint32_t *index;		/* by name: position + 1 in servers; 0: empty */
	size_t index_mask;		/* slots - 1 (a power of two minus one) */

	struct control *control;
	struct child_binary *binaries;	/* child.c: opened before a root start drops */
	struct child_users users;	/* system mode: of cfg->users, swapped with cfg */
	char *sandbox_error;		/* why stdio servers cannot start (jail.h), or NULL */
	struct child *oauth;
	struct child *http;		/* api.c: REST API, events, web UI */
	struct secret *api_key;
	int http_port;			/* as the http child bound it; 0: not listening */
	int http_fd;			/* api.c: the listening socket every http child gets; -1 */
	char http_listen[64];		/* its address, "127.0.0.1:PORT" with the bound port */
	char *http_listen_conf;		/* the config's listen it was bound for; NULL: systemd's */
	uint64_t http_next_number;	/* control.connect: numbers the passed sockets */
	bool http_cap_warned;		/* control.connect: the cap was reached and said so */
	char *ui_dir;
	struct child *children;		/* every child, for reaping */
	struct refresh *refresh;
	struct events *events;
	struct flow *flows;		/* login.c: logins and logouts under way */
	struct json_object *runtime_servers;	/* servers.c: names the store's overlay defines */
	char **orphans;			/* token keys of servers no longer configured */
	size_t n_orphans;

	struct event *sig_term, *sig_int, *sig_hup, *sig_chld;
	struct event *watchdog, *maintenance;
	struct event *drain;		/* the deadline of a stop's wait for refreshes */
	uint64_t watchdog_usec;
	bool running;			/* past the start: its event loop runs */
	bool stopping;

	/* group.c: a site of a replication group ("replication" in the config) */
	int group_fd;			/* the store's eventfd; -1 on a single host */
	struct event *group_ev;
	int group_role;			/* enum store_role last seen */
	struct event *group_poll;	/* a replica's watch of the change sequence */
	uint64_t group_seq;		/* the change sequence read last */
	unsigned group_polls;
	size_t group_differing;		/* servers whose entry differs from the master's */
	bool group_key_warned;		/* said that the group moved to a key this site lacks */
};

/* keeper.c */
int keeper_run(const char *config_path, bool system_mode);
/* Every server's record read again (a site that became master, or whose
 * store became readable); why goes to the log. */
void keeper_reload_tokens(struct keeper *k, const char *why);
/* This site stopped being its group's master: refreshes in flight and
 * tokens it could not store are forgotten (the new master decides). */
void keeper_group_demoted(struct keeper *k);
/* The configured server whose token record key is key, or NULL. */
struct server *keeper_server_of_key(struct keeper *k, const char *key);

/* group.c */
/* Whether this keeper may refresh, log in, log out and change servers:
 * always on a single host; on a group site, when it is the master. */
bool keeper_is_master(struct keeper *k);
/* Opens k->store as a site of the configured group. 0 or an error with err. */
int group_open_store(struct keeper *k, char *err, size_t errlen);
void group_close(struct keeper *k);
/* status's "replication" object; NULL on a single host. */
struct json_object *group_status_json(struct keeper *k);
/* server.group_config: this site's config entry of a server against the
 * one the master published (group.c). */
enum { GROUP_CONFIG_UNKNOWN, GROUP_CONFIG_SAME, GROUP_CONFIG_DIFFERS };
/* After a configuration was applied: the master publishes a digest of each
 * server's entry, a replica compares its own with them. */
void group_config_check(struct keeper *k);
const char *group_config_name(int state);
/* master.key.next, when present, handed to the store (once). */
void group_next_key_load(struct keeper *k);
/* key.rotate on the master: 0 with *records, or -errno with err. */
int group_key_rotate(struct keeper *k, unsigned long *records, char *err, size_t errlen);
/* Who the master is, for messages: "this site, H:P", "H:P" or "none (...)". */
void group_master_text(struct keeper *k, char *buf, size_t len);
struct server *keeper_find_server(struct keeper *k, const char *name);
int64_t keeper_now(void);	/* wall clock, unix seconds */
/* Applies cfg (taken either way) as a reload does: 0, or -errno with the
 * running configuration and servers as they were. */
int keeper_apply_config(struct keeper *k, struct config *cfg);
/* SIGHUP: reloads the file. 0, or -errno with the reason in err. */
int keeper_reload(struct keeper *k, char *err, size_t errlen);
int64_t keeper_now_ms(void);

/* Sets (fmt non-NULL) or clears a server's last error. */
void server_set_error(struct server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
struct token;
/* The token record stored for s, decoded into *t (token_clear() it): true,
 * or false when there is none or it cannot be read. */
bool server_token_read(struct keeper *k, const struct server *s, struct token *t);

/* Tokens whose server left the config: kept, shown as orphaned, deleted
 * only by a logout. */
void keeper_orphan_drop(struct keeper *k, const char *key);
/* The server name part of a token key ("name#hash"). */
void keeper_orphan_name(const char *key, char *buf, size_t len);

/*
 * login.c: login and logout flows. A flow ends by calling done with a
 * result or an error object {kind, reason, message} (both borrowed), then
 * sets *slot to NULL. The caller may go away first: flow_detach() cancels a
 * login and lets a logout finish unobserved.
 */
struct flow;
typedef void (*flow_url_fn)(void *ctx, const char *server, const char *url);
typedef void (*flow_done_fn)(void *ctx, struct json_object *result, struct json_object *error);
/* 0, or -EBUSY when the server's login is already running. */
int login_start(struct keeper *k, struct server *s, int timeout_sec, flow_url_fn url_fn, flow_done_fn done_fn,
		void *ctx, struct flow **slot);
/* The oauth child's oauth.login_url notification: 0, or -EINVAL when its
 * params do not pass their table. */
int login_url(struct keeper *k, struct json_object *params);
/* Ends the server's login, if one runs (server removed, logout). */
void login_forget(struct keeper *k, struct server *s, const char *why);
/* The token endpoint refused the client a refresh token was issued to
 * (invalid_client): drops its stored registration, so that the next login
 * registers anew. Returns what status and the log say. */
const char *login_client_rejected(struct keeper *k, struct server *s, const struct secret *started);
/* Logout of one server, or of every OAuth server (all), and of orphaned
 * tokens (every one with all, else those named orphan_name). The result is
 * an array of per-server objects. */
void logout_start(struct keeper *k, struct server *one, const char *orphan_name, bool all, flow_done_fn done_fn,
		  void *ctx, struct flow **slot);
void flow_detach(struct flow *f);
/* flow.c: adds the address policy every oauth.* request about server cs
 * carries (common/proto.h); for cs NULL (an orphaned token), the class of
 * orphan_url's host alone, or nothing without it. */
void flow_add_policy(struct json_object *params, const struct config_server *cs, const char *orphan_url);
/* The params of oauth.discover for cs: its URL, transport, headers, name
 * and address policy (the caller adds the timeout). */
void flow_discover_params(struct json_object *params, const struct config_server *cs);
/* Forgets the caller without cancelling: the flow runs to its end. */
void flow_release(struct flow *f);
void flows_free_all(struct keeper *k);

/*
 * reauth.c: an upstream wants another grant (a 403 insufficient_scope, or
 * a 401 after which its metadata names another authorization server).
 */
struct token;
/* token.invalid with a scope for the current token: granted is its scope. */
void reauth_step_up(struct keeper *k, struct server *s, const char *granted, const char *challenged,
		    bool want_union);
/* token.invalid (401) for the current token, whose record names an issuer:
 * 1 when a check of the resource metadata runs (its end answers the
 * waiting requests), 0 when none can (go on with a refresh). */
int reauth_check_issuer(struct keeper *k, struct server *s);
/* The scope the next login asks for instead of the usual; NULL: the usual. */
const char *reauth_scope(const struct server *s);
bool reauth_wanted(const struct server *s);
/* A login stored now in place of old (NULL: none): when a new login was
 * wanted, old's grant is revoked and the want is over. */
void reauth_login_done(struct keeper *k, struct server *s, const struct token *old, const struct token *now);
void reauth_logout(struct server *s);
/* Adds "login_required": {reason, scope, issuer} or null to a status object. */
void reauth_json(const struct server *s, struct json_object *o);
void reauth_free(struct keeper *k, struct server *s);

/* events.c: one payload, delivered to control subscribers (and later SSE). */
struct events *events_new(struct keeper *k);
struct events *events_free(struct events *ev);
/* Takes ownership of data. */
void events_emit(struct keeper *k, const char *type, struct json_object *data);
typedef void (*events_sink_fn)(void *ctx, struct json_object *notification);
void events_subscribe(struct keeper *k, events_sink_fn fn, void *ctx);
void events_unsubscribe(struct keeper *k, void *ctx);

/* servers.c: servers.add, servers.remove, servers.update (proto.h). */
struct servers_change {
	const char *method;		/* METHOD_SERVERS_* */
	const char *server;		/* the server's name */
	struct json_object *fields;	/* add: the new entry; update: keys to set (null: unset) */
	bool restricted;		/* the http child's: none of SERVERS_SHELL_KEYS */
	uid_t uid;			/* the caller, for the log */
	pid_t pid;
};
/* NULL with *result, or the error's KIND_* with its message in err. */
const char *servers_change(struct keeper *k, const struct servers_change *ch, struct json_object **result,
			   char *err, size_t errlen);
/* Start (once the store is open) and reload: the config file, in system mode
 * with the runtime changes kept in the store merged over it. 0 or -errno
 * with the message in err. */
int servers_load_config(struct keeper *k, struct config **out, char *err, size_t errlen);
/* Where a server comes from: "runtime" (system mode's overlay) or "config". */
const char *servers_source(const struct keeper *k, const char *name);

/* control.c */
int control_start(struct keeper *k, int listen_fd);
/* A connected socket from inside (the http child's control.connect): a
 * client with the keeper's own credentials. Takes fd. 0 or -errno. */
int control_adopt(struct control *ctl, int fd);
/* The connections control_adopt() made that are still open (the http
 * child's, which api.c caps at API_CONTROL_CONNS_MAX). */
size_t control_internal_conns(const struct control *ctl);
struct control *control_free(struct control *c);
/* The JSON of one server as status / auth.status report it. */
struct json_object *control_server_json(const struct server *s, bool full);

/* refresh.c */
struct refresh *refresh_new(struct keeper *k);
struct refresh *refresh_free(struct refresh *r);
/* Reads the server's token record and puts it on its schedule. */
void refresh_load(struct keeper *k, struct server *s);
/* The same in two steps, for a walk over the whole store: reset the
 * server's token state (false: it has no OAuth, nothing to read), then hand
 * it its record (plain NULL with the store's status when there is none or it
 * does not open; plain is only read during the call). */
bool refresh_reset(struct keeper *k, struct server *s);
void refresh_take_record(struct keeper *k, struct server *s, const struct secret *plain, int status);
/* Room in the queues for n servers, so that scheduling them later does not
 * allocate (a reload reserves before it swaps). 0 or -ENOMEM. */
int refresh_reserve(struct keeper *k, size_t n);
/* A login started: take the server off the queue (a refresh in flight ends
 * on its own); refresh_load() puts it back. */
void refresh_pause(struct keeper *k, struct server *s);
/* Drops a server from every queue and cancels what is in flight. */
void refresh_forget(struct keeper *k, struct server *s);
/* The keeper is stopping: no refresh starts any more; the event loop ends
 * once those in flight have their answers committed (or at the deadline the
 * caller sets). Returns how many were in flight. */
int refresh_drain(struct keeper *k);
/* A refreshed record the state directory could not take (full, I/O
 * error) is kept in memory and its commit retried (refresh.c); drop: a login
 * or logout replaced it, or the server left. */
void refresh_unstored_drop(struct server *s);
/* The server goes (stop, reload): one last try at storing such a record,
 * then it is dropped, with an error in the log when it was not stored. */
void refresh_unstored_last(struct keeper *k, struct server *s);
/* Re-arms every timer from wall-clock due times (clock jump, resume). */
void refresh_rearm_all(struct keeper *k);
/* The wall clock jumped by delta_ms (not a resume's monotonic gap): moves
 * the instants a jump must not move in real time, then re-arms. */
void refresh_clock_moved(struct keeper *k, int64_t delta_ms);
/* Logout: delete the exact record, cancel, emit (the caller tells the
 * worker: workers_token_cleared). 0, STORE_E_NOT_FOUND or -errno. */
int refresh_logout(struct keeper *k, struct server *s);
/* How the oauth child's life reaches the engine (ctx: the keeper). */
extern const struct child_ops refresh_oauth_ops;
const char *oauth_status_name(enum oauth_status st);
const char *refresh_state_name(enum refresh_state st);

/* api.c: the http child (REST API, event stream, web UI, MCP over HTTP). */
int api_start(struct keeper *k);
void api_stop(struct keeper *k);
/* After a reload: restarts the child when its settings changed. */
void api_config_changed(struct keeper *k, const struct config *old);
/* Socket activation: systemd's socket named "http" becomes the listening
 * socket, whatever the config's listen says (0), or is closed when it is
 * not a loopback TCP listener (a negative errno value, logged). */
int api_adopt_socket(struct keeper *k, int fd);
/* {"state", "pid", "url"} for status; "web_ui" adds the key fragment. */
struct json_object *api_status_json(const struct keeper *k);
struct json_object *api_web_ui_url(const struct keeper *k);

/* workers.c: one mcpkeeper-worker per upstream, started on demand. */
/* Hands a connected client descriptor (ownership passes) to the server's
 * worker, starting it when needed, with the CLIENT_F_* flags of its
 * connect. 0 or a negative errno value. */
int workers_connect(struct keeper *k, struct server *s, int fd, unsigned flags);
/* 0 when s's worker runs or could start now; else -EPERM with why (a stdio
 * server without a sandbox it may use). */
int workers_can_start(struct keeper *k, struct server *s, char *why, size_t len);
void workers_start_eager(struct keeper *k);
/* The server's access token changed (refresh, login) or went away (logout). */
void workers_token_changed(struct keeper *k, struct server *s);
/* Logged out: the worker drops its token. With fn, the worker is asked to
 * confirm: returns WORKERS_CLEAR_PENDING and fn runs once with its answer
 * (or the error when it goes away); 0 when there is nothing to wait for. */
#define WORKERS_CLEAR_PENDING 1
int workers_token_cleared(struct keeper *k, struct server *s, child_reply_fn fn, void *ctx, int64_t *id);
/* A refresh the workers may be waiting for ended (or will not run): error
 * NULL on success, else its words and kind (KIND_UNAVAILABLE when a login
 * is needed, KIND_TRANSIENT when a retry is coming, KIND_BUSY ...). */
void workers_refresh_done(struct keeper *k, struct server *s, const char *kind, const char *error);
/* The current token was refused (401) and the authorization server is the
 * same: refresh it, or answer the waiting requests why not. */
void workers_token_rejected(struct keeper *k, struct server *s);
/* Server removed or its transport changed (reload), or keeper stopping. */
void workers_forget(struct keeper *k, struct server *s);
struct json_object *workers_status_json(const struct server *s);
bool workers_settings_equal(const struct config_server *a, const struct config_server *b);
/* refresh.c: refresh now (a worker saw a 401 with the current token).
 * 0: a refresh runs or is queued, and workers_refresh_done() reports how it
 * ended; REFRESH_NOT_NOW: none can start now (within refresh.min_interval
 * of the last token request, or during a login), why says so, and a refresh
 * that is due later still comes. */
#define REFRESH_NOT_NOW 1
int refresh_now(struct keeper *k, struct server *s, char *why, size_t len);

/*
 * child.c: fork+exec'd children with a JSON-RPC channel on fd 3 (and, for
 * workers, a descriptor channel on fd 4), a hello handshake, replies matched
 * by id, and restart with backoff while the child is wanted.
 */
struct rpc_msg;
struct child_ops {
	/* Extra hello params (name, transport) before the hello is sent. */
	void (*hello)(struct child *c, void *ctx, struct json_object *params);
	/* The hello's result, before ready (e.g. the http child's port). */
	void (*hello_result)(struct child *c, void *ctx, struct json_object *result);
	void (*ready)(struct child *c, void *ctx);
	/* The channel is gone; pending requests have already failed. */
	void (*lost)(struct child *c, void *ctx);
	/* A request or notification from the child: 0, or a negative errno
	 * value (-EPROTO) for a message the child had no business sending or
	 * whose params do not pass its table (the child is then restarted). */
	int (*message)(struct child *c, void *ctx, struct rpc_msg *m);
	/* The sandbox to start it in (jail.h), made before each start and
	 * handed over on fd CHILD_FD_JAIL: 0 and *out (NULL: none), or a
	 * negative errno value with why: it must not start. */
	int (*jail)(struct child *c, void *ctx, struct jail **out, char *why, size_t len);
	bool desc_channel;	/* fd 4: SOCK_SEQPACKET for client descriptors */
	/* A socket the keeper keeps, handed to every start on fd
	 * CHILD_FD_LISTEN (a duplicate): >= 0, or a negative errno value with
	 * why it must not start. */
	int (*listen_fd)(struct child *c, void *ctx, char *why, size_t len);
};

/*
 * Opens the children's binaries (CHILD_*_BIN, where paths_child_binary()
 * places them) once, at start, while the keeper still has the identity it
 * was started with: a keeper started as root drops to the state directory's
 * owner next, which may not reach the build tree (under /root, say). Each
 * child is later run relative to its directory's descriptor (execveat), so
 * neither the keeper's new user nor the child's needs to reach the parents
 * of that directory. A binary that cannot
 * be opened is logged with its path and the reason, and opened again at its
 * child's next start. 0 or -ENOMEM.
 */
int child_binaries_open(struct keeper *k);
/*
 * System mode: looks up the users of cfg ("users": oauth, http, worker).
 * 0 with *out, or a negative errno value (-ENOENT: no such user) logged
 * with the setting and the name. A user shared by two roles, or root, is
 * logged as a warning: it undoes the separation of those children.
 */
int child_users_resolve(const struct config *cfg, struct child_users *out);
void child_binaries_close(struct keeper *k);
struct child *child_new(struct keeper *k, const char *role, const char *binary, const struct child_ops *ops,
			void *ctx);
struct child *child_free(struct child *c);
int child_start(struct child *c);
void child_set_label(struct child *c, const char *label);
/* Closes the channel and lets the child end; no restart until child_start(). */
void child_stop(struct child *c);
bool child_ready(const struct child *c);
pid_t child_pid(const struct child *c);
unsigned child_restarts(const struct child *c);
const char *child_last_exit(const struct child *c);
const char *child_state_name(const struct child *c);
/* Sends a request; fn runs once with the result or the error (also when the
 * child dies: error kind "transient"). Takes ownership of params. */
int child_request(struct child *c, const char *method, struct json_object *params, child_reply_fn fn,
		  void *ctx, int64_t *id);
/* Sends a notification, or a reply to the child's request. Takes ownership. */
int child_notify(struct child *c, const char *method, struct json_object *params);
int child_reply(struct child *c, struct json_object *id, struct json_object *result, struct json_object *error);
/* Passes a client descriptor on fd 4 with its 8-byte number (the http
 * child's control connections), or with the number and a byte of
 * CLIENT_F_* flags (a worker's clients). */
int child_send_fd(struct child *c, uint64_t number, int fd);
int child_send_client(struct child *c, uint64_t number, unsigned flags, int fd);
/* Forgets the callback of an outstanding request (its reply is dropped). */
void child_cancel(struct child *c, int64_t id);
/* SIGCHLD: reap and restart with backoff. */
void child_reap(struct keeper *k);
