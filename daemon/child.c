/*
 * Children of the keeper: fork+exec with the channel on fd 3, a cleaned
 * environment, in system mode the uid of their role (checked before the
 * exec, which leaves them non-dumpable); a hello handshake before any
 * other message; requests matched to replies by id; restart with backoff
 * when a child dies (0.1 s doubling to 30 s, reset after 60 s of health).
 *
 * Between fork and exec: the keeper runs threads it does not control
 * (Berkeley DB's replication manager), and in the forked copy of a threaded
 * process a lock that another thread held at the fork is never released.
 * So the forked child makes async-signal-safe calls only: no malloc or
 * free (nor strdup, asprintf, snprintf, which allocate or take the locale),
 * no stdio, no log line, no getenv, setenv, strerror or localtime, no NSS
 * (getpwnam), no glibc setres*id (it signals the other threads), no exit()
 * (atexit handlers): raw system calls, and _exit(). Everything it needs is
 * prepared here before the fork (plan_child(): the environment as pointers
 * into environ, argv, descriptors, the role's ids resolved at start and
 * reload; the sandbox as a memfd) and carried out by daemon/spawn.c. A step
 * that fails comes back as a fixed-size record on a close-on-exec pipe and
 * is logged here (log_spawn_failure()). tests/forkcheck-shim.c checks it.
 *
 * Trust: a child is a sibling. A malformed message from it is a bug: it is
 * logged and the child is killed, and the restart logic brings it back.
 */
#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "config.h"
#include "frame.h"
#include "jail.h"
#include "keeper.h"
#include "log.h"
#include "paths.h"
#include "proto.h"
#include "sock.h"
#include "spawn.h"
#include "util.h"

#define RESTART_MIN_MS 100
#define RESTART_MAX_MS 30000
#define HEALTHY_MS 60000

struct pending {
	int64_t id;
	child_reply_fn fn;
	void *ctx;
	struct pending *next;
};

enum child_state { CHILD_STOPPED, CHILD_STARTING, CHILD_READY, CHILD_RESTARTING };

struct child {
	struct keeper *k;
	struct child *next;		/* in k->children */
	const struct child_ops *ops;
	void *ctx;
	char *role;
	char *label;			/* for logs: "oauth", "github worker" */
	struct child_binary *binary;
	enum child_state state;
	pid_t pid;
	struct bufferevent *bev;
	int desc_fd;			/* keeper end of fd 4, or -1 */
	int64_t next_id;
	int64_t hello_id;
	struct pending *pending;
	struct event *restart_timer;
	int restart_ms;
	unsigned restarts;
	int64_t started_ms;
	char last_exit[320];
};

static void child_lost(struct child *c, const char *why);

/*
 * A child program: its path and, once opened, its directory. The child runs
 * it with execveat() relative to that directory: only the directory itself
 * must be searchable by the child's user, not its parents (a build tree
 * under /root). (fexecve() of the file itself would need nothing, but on
 * kernels before 6.14 it names the process after the descriptor's number.)
 */
struct child_binary {
	const char *name;		/* CHILD_*_BIN: also the file's name */
	char *path;			/* NULL: the path is too long */
	int dir_fd;			/* O_PATH of its directory, or -1 */
};

static const char *const binary_names[] = { CHILD_OAUTH_BIN, CHILD_HTTP_BIN, CHILD_WORKER_BIN };

/* Opens the directory of b->path and checks that b->name in it is a regular
 * file that someone may execute. 0 or a negative errno value. */
static int binary_open(struct child_binary *b)
{
	_cleanup_(freep) char *dir = NULL;
	struct stat st;
	char *slash;
	int fd;

	if (!b->path)
		return -ENAMETOOLONG;
	dir = strdup(b->path);
	if (!dir)
		return -ENOMEM;
	slash = strrchr(dir, '/');
	if (!slash || strcmp(slash + 1, b->name) != 0)
		return -EINVAL; /* paths_child_binary() always ends in the name */
	*slash = '\0';
	fd = open(dir[0] ? dir : "/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstatat(fd, b->name, &st, 0) < 0) {
		int r = -errno;

		close(fd);
		return r;
	}
	if (!S_ISREG(st.st_mode) || !(st.st_mode & 0111)) {
		close(fd);
		return S_ISDIR(st.st_mode) ? -EISDIR : -EACCES;
	}
	b->dir_fd = fd;
	return 0;
}

/* b's directory, opened now if it was not yet; 0 or a negative errno value,
 * logged with the path. */
static int binary_ready(struct child_binary *b, const char *label)
{
	int r;

	if (b->dir_fd >= 0)
		return 0;
	r = binary_open(b);
	if (r < 0)
		log_error("%s child: cannot run %s: %s", label, b->path ? b->path : b->name, strerror(-r));
	return r;
}

/*
 * System mode: a child whose user may read its binary is dumpable from the
 * exec until its main() says otherwise, and in that window another process
 * of the same user may open its memory. The kernel makes a process that
 * execs a file it cannot read non-dumpable, hence mode 0711 at install.
 */
static void binary_check_mode(const struct child_binary *b)
{
	struct stat st;

	if (b->dir_fd >= 0 && fstatat(b->dir_fd, b->name, &st, 0) == 0 && (st.st_mode & (S_IRGRP | S_IROTH)))
		log_warn("%s is readable by its child's user (mode %04o): install it mode 0711, or the child is "
			 "dumpable until its main() runs", b->path, (unsigned)(st.st_mode & 07777));
}

int child_binaries_open(struct keeper *k)
{
	k->binaries = calloc(ARRAY_SIZE(binary_names), sizeof(*k->binaries));
	if (!k->binaries)
		return -ENOMEM;
	for (size_t i = 0; i < ARRAY_SIZE(binary_names); i++) {
		struct child_binary *b = &k->binaries[i];
		char path[PATH_MAX];

		b->name = binary_names[i];
		b->dir_fd = -1;
		if (paths_child_binary(b->name, path, sizeof(path)) == 0) {
			b->path = strdup(path);
			if (!b->path)
				return -ENOMEM;
		}
		if (binary_ready(b, b->name) == 0 && k->system_mode)
			binary_check_mode(b);
	}
	return 0;
}

void child_binaries_close(struct keeper *k)
{
	for (size_t i = 0; k->binaries && i < ARRAY_SIZE(binary_names); i++) {
		fd_close(k->binaries[i].dir_fd);
		free(k->binaries[i].path);
	}
	free(k->binaries);
	k->binaries = NULL;
}

/* One setting of "users" into *out: 0, or a negative errno value, logged. */
static int user_lookup(const char *setting, const char *name, struct child_user *out)
{
	struct passwd *pw;
	int e;

	errno = 0;
	pw = getpwnam(name);
	if (!pw) {
		e = errno;
		/* getpwnam(3): not found may come with any of these, or none. */
		if (e == 0 || e == ENOENT || e == ESRCH || e == EBADF || e == EPERM) {
			log_error("system mode: %s: there is no user %s (systemd-sysusers creates the default "
				  "ones from sysusers.d/mcpkeeper.conf)", setting, name);
			return -ENOENT;
		}
		log_error("system mode: %s: cannot look up user %s: %s", setting, name, strerror(e));
		return -e;
	}
	out->uid = pw->pw_uid;
	out->gid = pw->pw_gid;
	return 0;
}

int child_users_resolve(const struct config *cfg, struct child_users *out)
{
	const char *const settings[] = { "users.oauth", "users.http", "users.worker" };
	const char *const names[] = { cfg->users.oauth, cfg->users.http, cfg->users.worker };
	struct child_user *const ids[] = { &out->oauth, &out->http, &out->worker };

	for (size_t i = 0; i < ARRAY_SIZE(ids); i++) {
		int r = user_lookup(settings[i], names[i], ids[i]);

		if (r < 0)
			return r;
		if (ids[i]->uid == 0)
			log_warn("system mode: %s is %s, uid 0: those children run as root", settings[i], names[i]);
		for (size_t j = 0; j < i; j++)
			if (ids[j]->uid == ids[i]->uid)
				log_warn("system mode: %s and %s are both uid %u: those children can read each "
					 "other's memory", settings[j], settings[i], (unsigned)ids[i]->uid);
	}
	return 0;
}

/* The ids role's children switch to, with the user's name for messages;
 * NULL for a role without a user (a keeper bug). */
static const struct child_user *role_user(const struct keeper *k, const char *role, const char **name)
{
	if (strcmp(role, ROLE_OAUTH) == 0) {
		*name = k->cfg->users.oauth;
		return &k->users.oauth;
	}
	if (strcmp(role, ROLE_HTTP) == 0) {
		*name = k->cfg->users.http;
		return &k->users.http;
	}
	if (strcmp(role, ROLE_WORKER) == 0) {
		*name = k->cfg->users.worker;
		return &k->users.worker;
	}
	return NULL;
}

static struct child_binary *binary_find(struct keeper *k, const char *name)
{
	for (size_t i = 0; k->binaries && i < ARRAY_SIZE(binary_names); i++)
		if (strcmp(k->binaries[i].name, name) == 0)
			return &k->binaries[i];
	return NULL;
}

struct child *child_new(struct keeper *k, const char *role, const char *binary, const struct child_ops *ops,
			void *ctx)
{
	struct child *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->k = k;
	c->ops = ops;
	c->ctx = ctx;
	c->role = strdup(role);
	c->label = strdup(role);
	c->binary = binary_find(k, binary);
	if (!c->binary)
		fatal("no child binary named %s", binary); /* a keeper bug: CHILD_*_BIN only */
	c->pid = -1;
	c->desc_fd = -1;
	c->next_id = 1;
	c->restart_ms = RESTART_MIN_MS;
	c->next = k->children;
	k->children = c;
	return c;
}

unsigned child_restarts(const struct child *c)
{
	return c->restarts;
}

const char *child_last_exit(const struct child *c)
{
	return c->last_exit[0] ? c->last_exit : NULL;
}

const char *child_state_name(const struct child *c)
{
	switch (c->state) {
	case CHILD_STOPPED:
		return "stopped";
	case CHILD_STARTING:
		return "starting";
	case CHILD_READY:
		return "running";
	case CHILD_RESTARTING:
		return "restarting";
	}
	return "?";
}

static void close_channels(struct child *c)
{
	if (c->bev) {
		/* libevent may defer the close past this loop's end: shut the
		 * channel now so that the child sees end of stream and exits. */
		shutdown(bufferevent_getfd(c->bev), SHUT_RDWR);
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	if (c->desc_fd >= 0) {
		close(c->desc_fd);
		c->desc_fd = -1;
	}
}

static void fail_pending(struct child *c, const char *why)
{
	struct pending *p = c->pending;

	c->pending = NULL;
	while (p) {
		struct pending *next = p->next;

		if (p->fn) {
			struct json_object *err = rpc_error(NULL, RPC_APP_ERROR, KIND_TRANSIENT, why);
			struct json_object *e = NULL;

			json_object_object_get_ex(err, "error", &e);
			p->fn(c->k, p->ctx, NULL, e);
			json_object_put(err);
		}
		free(p);
		p = next;
	}
}

struct child *child_free(struct child *c)
{
	if (!c)
		return NULL;
	close_channels(c);
	if (c->pid > 0) {
		int status;

		for (int i = 0; i < 100 && waitpid(c->pid, &status, WNOHANG) == 0; i++)
			usleep(20000);
		if (waitpid(c->pid, &status, WNOHANG) == 0) {
			/* Under another uid our SIGKILL may be refused: then leave it,
			 * it has lost its channel and ends by itself. */
			if (kill(c->pid, SIGKILL) == 0)
				waitpid(c->pid, &status, 0);
			else
				log_warn("%s child %d did not exit: %m", c->label, (int)c->pid);
		}
	}
	fail_pending(c, "keeper stopping");
	for (struct child **pp = &c->k->children; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	if (c->restart_timer)
		event_free(c->restart_timer);
	free(c->role);
	free(c->label);
	free(c);
	return NULL;
}

void child_set_label(struct child *c, const char *label)
{
	char *l = strdup(label);

	if (l) {
		free(c->label);
		c->label = l;
	}
}

void child_stop(struct child *c)
{
	close_channels(c);
	if (c->restart_timer)
		evtimer_del(c->restart_timer);
	c->state = CHILD_STOPPED;
	fail_pending(c, "child stopped");
	/* The child exits at end of stream; child_reap() collects it. */
}

bool child_ready(const struct child *c)
{
	return c && c->state == CHILD_READY;
}

pid_t child_pid(const struct child *c)
{
	return c ? c->pid : -1;
}

static int send_msg(struct child *c, struct json_object *msg)
{
	int r = frame_write(bufferevent_get_output(c->bev), msg, PROTO_MAX_MESSAGE);

	if (r)
		log_error("%s child: cannot queue a message: %s", c->label, frame_strerror(r));
	return r ? -EIO : 0;
}

static struct pending *take_pending(struct child *c, int64_t id)
{
	for (struct pending **pp = &c->pending; *pp; pp = &(*pp)->next) {
		if ((*pp)->id == id) {
			struct pending *p = *pp;

			*pp = p->next;
			return p;
		}
	}
	return NULL;
}

static void handle_message(struct child *c, struct rpc_msg *m)
{
	int64_t id;

	if (m->type == RPC_REQUEST || m->type == RPC_NOTIFICATION) {
		if (c->state != CHILD_READY || !c->ops || !c->ops->message || c->ops->message(c, c->ctx, m) < 0) {
			log_error("%s child sent an unexpected %s; restarting it", c->label, m->method);
			child_lost(c, "protocol violation");
		}
		return;
	}
	if (!m->id || !json_object_is_type(m->id, json_type_int)) {
		log_error("%s child answered without a valid id; restarting it", c->label);
		child_lost(c, "protocol violation");
		return;
	}
	id = json_object_get_int64(m->id);
	if (c->state == CHILD_STARTING && id == c->hello_id) {
		struct json_object *v, *ll;

		if (m->type == RPC_ERROR || !json_object_object_get_ex(m->result, PARAM_KEY_VERSION, &v) ||
		    json_object_get_int(v) != PROTO_VERSION) {
			const char *why = m->type == RPC_ERROR ? rpc_error_message(m) : NULL;

			if (why)
				log_error("%s child refused the hello: %s", c->label, why);
			else
				log_error("%s child refused the hello or speaks another protocol version", c->label);
			child_lost(c, "handshake failed");
			return;
		}
		c->state = CHILD_READY;
		if (c->ops && c->ops->hello_result)
			c->ops->hello_result(c, c->ctx, m->result);
		/* A stdio worker's confinement is the keeper's sandbox (jail.c). */
		if (!json_object_object_get_ex(m->result, PARAM_KEY_SANDBOX, NULL) &&
		    json_object_object_get_ex(m->result, PARAM_KEY_LANDLOCK, &ll) &&
		    strcmp(json_object_get_string(ll), "enforced") != 0)
			log_info("%s child: Landlock %s on this kernel: it relies on its uid and file modes",
				 c->label, json_object_get_string(ll));
		log_info("%s child ready, pid %d", c->label, (int)c->pid);
		if (c->ops && c->ops->ready)
			c->ops->ready(c, c->ctx);
		return;
	}
	{
		struct pending *p = take_pending(c, id);

		if (!p) {
			log_debug("%s child: reply to a forgotten request %lld", c->label, (long long)id);
			return;
		}
		if (p->fn)
			p->fn(c->k, p->ctx, m->type == RPC_RESULT ? m->result : NULL,
			      m->type == RPC_ERROR ? m->error : NULL);
		free(p);
	}
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct child *c = arg;

	for (;;) {
		struct rpc_msg m;
		char detail[128];
		int r = frame_read(bufferevent_get_input(bev), PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			return;
		if (r != 0) {
			log_error("%s child sent a bad message (%s); restarting it", c->label, detail);
			rpc_msg_clear(&m);
			child_lost(c, "protocol violation");
			return;
		}
		handle_message(c, &m);
		/* Replies may carry tokens. */
		rpc_wipe_put(m.root);
		m.root = NULL;
		if (c->bev != bev)
			return; /* the child was lost while handling */
	}
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct child *c = arg;

	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		child_lost(c, "channel closed");
}

static void restart_cb(evutil_socket_t fd, short what, void *arg)
{
	struct child *c = arg;

	if (child_start(c) < 0)
		child_lost(c, "could not start");
}

/* The channel is gone or untrustworthy: stop talking, kill, schedule a restart. */
static void child_lost(struct child *c, const char *why)
{
	struct timeval tv;

	close_channels(c);
	if (c->pid > 0)
		kill(c->pid, SIGKILL); /* reaped in child_reap(); under another uid the EOF ends it */
	if (c->state == CHILD_READY || c->state == CHILD_STARTING)
		log_warn("%s child lost (%s)", c->label, why);
	snprintf(c->last_exit, sizeof(c->last_exit), "%s", why);
	fail_pending(c, "child exited");
	if (c->ops && c->ops->lost)
		c->ops->lost(c, c->ctx);
	if (c->k->stopping) {
		c->state = CHILD_STOPPED;
		return;
	}
	if (c->state != CHILD_RESTARTING) {
		if (keeper_now_ms() - c->started_ms > HEALTHY_MS)
			c->restart_ms = RESTART_MIN_MS;
		c->state = CHILD_RESTARTING;
		if (!c->restart_timer)
			c->restart_timer = evtimer_new(c->k->base, restart_cb, c);
		tv.tv_sec = c->restart_ms / 1000;
		tv.tv_usec = (c->restart_ms % 1000) * 1000;
		evtimer_add(c->restart_timer, &tv);
		c->restart_ms = c->restart_ms * 2 > RESTART_MAX_MS ? RESTART_MAX_MS : c->restart_ms * 2;
		c->restarts++;
	}
}

/*
 * The child's start, prepared before the fork (spawn.h: the forked child
 * only carries it out): its descriptors, its binary, a cleaned environment
 * and in system mode the role's user (ids looked up by the keeper: NSS is
 * not for a forked child). In user mode every child keeps the keeper's user.
 * 0, or -EPERM with the reason logged.
 */
static int plan_child(struct child *c, struct spawn_plan *p, const char **user)
{
	static const char *const keep[] = { "PATH", "LANG", "LC_ALL", "TZ", "JOURNAL_STREAM",
					    "SSL_CERT_FILE", "SSL_CERT_DIR", "HOME", "USER", NULL };
	/* What libcurl reads to go through a proxy: for the children that
	 * make HTTP requests (mcpkeeperd(8), ENVIRONMENT). */
	static const char *const proxy[] = { "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY",
					     "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY", NULL };
	/* A build-tree keeper's children keep the sanitizers' settings of
	 * the test that started it (suppressions, halt_on_error). */
	static const char *const sanitizer[] = { "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS",
						 "ASAN_SYMBOLIZER_PATH", NULL };

	p->dir_fd = c->binary->dir_fd;
	p->name = c->binary->name;
	p->argv[0] = c->binary->path;
	p->argv[1] = NULL;
	spawn_env_keep(p, keep);
	if (strcmp(c->role, ROLE_OAUTH) == 0 || strcmp(c->role, ROLE_WORKER) == 0)
		spawn_env_keep(p, proxy);
	if (paths_dev_tree())
		spawn_env_keep(p, sanitizer);
	*user = NULL;
	if (c->k->system_mode) {
		const struct child_user *u = role_user(c->k, c->role, user);

		if (!u) {
			log_error("%s child: no user is configured for role %s", c->label, c->role);
			return -EPERM;
		}
		p->switch_user = true;
		p->uid = u->uid;
		p->gid = u->gid;
	}
	return 0;
}

/* Whether the ids a child reported are the plan's (then its groups are not). */
static bool ids_match(const struct spawn_plan *p, const struct spawn_report *rep)
{
	for (int i = 0; i < 3; i++)
		if (rep->uids[i] != (uint32_t)p->uid || rep->gids[i] != (uint32_t)p->gid)
			return false;
	return true;
}

/* What the forked child said went wrong before its exec (it exits 127,
 * and child_reap() restarts it as for any exit). */
static void log_spawn_failure(const struct child *c, const struct spawn_plan *p, const struct spawn_report *rep,
			      const char *user)
{
	const char *step = spawn_step_name(rep->step);

	switch (rep->step) {
	case SPAWN_STEP_EXEC:
		if (user)
			log_error("%s child: cannot run %s as user %s: %s: %s", c->label, c->binary->path, user, step,
				  strerror(rep->err));
		else
			log_error("%s child: cannot run %s: %s: %s", c->label, c->binary->path, step, strerror(rep->err));
		break;
	case SPAWN_STEP_SETGROUPS:
	case SPAWN_STEP_SETRESGID:
	case SPAWN_STEP_SETRESUID:
		log_error("%s child: cannot switch to user %s (uid %u, gid %u): %s: %s", c->label, user ? user : "?",
			  (unsigned)p->uid, (unsigned)p->gid, step, strerror(rep->err));
		break;
	case SPAWN_STEP_IDS:
		if (ids_match(p, rep))
			log_error("%s child: the switch to user %s (uid %u, gid %u) is incomplete: it keeps "
				  "supplementary groups (%d); not starting it", c->label, user ? user : "?",
				  (unsigned)p->uid, (unsigned)p->gid, (int)rep->groups);
		else
			log_error("%s child: the switch to user %s (uid %u, gid %u) is incomplete: its uids are "
				  "%u/%u/%u and gids %u/%u/%u (real/effective/saved); not starting it", c->label,
				  user ? user : "?", (unsigned)p->uid, (unsigned)p->gid, rep->uids[0], rep->uids[1],
				  rep->uids[2], rep->gids[0], rep->gids[1], rep->gids[2]);
		break;
	default:
		log_error("%s child: not started: %s: %s", c->label, step, strerror(rep->err));
		break;
	}
}

int child_start(struct child *c)
{
	struct json_object *params, *hello;
	struct spawn_plan plan = { .channel = -1 };
	struct spawn_report rep;
	const char *user = NULL;
	int sv[2], dv[2] = { -1, -1 }, jail_fd = -1, r;
	pid_t pid;

	/* Opened by the keeper (child_binaries_open()): the child's user need
	 * not reach its path, only execute the file itself. */
	r = binary_ready(c->binary, c->label);
	if (r < 0)
		return r;
	if (c->ops && c->ops->jail) {
		struct jail *j = NULL;
		char why[256];

		if (c->ops->jail(c, c->ctx, &j, why, sizeof(why)) < 0) {
			log_error("%s child: not started: %s", c->label, why);
			snprintf(c->last_exit, sizeof(c->last_exit), "not started: %s", why);
			return -EPERM;
		}
		if (j) {
			jail_fd = jail_to_memfd(j);
			jail_free(j);
			if (jail_fd < 0) {
				log_error("%s child: the sandbox description: %s", c->label, strerror(-jail_fd));
				return jail_fd;
			}
		}
	}
	if (c->ops && c->ops->listen_fd) {
		char why[256];
		int fd = c->ops->listen_fd(c, c->ctx, why, sizeof(why));

		/* fd 5 is the jail's for a worker, the listener's for the http child. */
		if (fd < 0 || jail_fd >= 0 || (jail_fd = fcntl(fd, F_DUPFD_CLOEXEC, 10)) < 0) {
			if (fd >= 0)
				snprintf(why, sizeof(why), "cannot pass the listening socket: %s",
					 jail_fd >= 0 ? "fd 5 is taken" : strerror(errno));
			fd_close(jail_fd);
			log_error("%s child: not started: %s", c->label, why);
			/* As if it had failed to listen itself: retried with backoff
			 * (a port in use may be freed). */
			c->state = CHILD_STARTING;
			c->started_ms = keeper_now_ms();	/* the backoff grows */
			child_lost(c, "could not listen");
			snprintf(c->last_exit, sizeof(c->last_exit), "not started: %s", why);
			return fd < 0 ? fd : -EBADF;
		}
	}
	r = sock_pair(0, sv);
	if (r < 0) {
		fd_close(jail_fd);
		log_error("%s child: socketpair: %s", c->label, strerror(-r));
		return r;
	}
	if (c->ops && c->ops->desc_channel &&
	    socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, dv) < 0) {
		r = -errno;
		close(sv[0]);
		close(sv[1]);
		fd_close(jail_fd);
		log_error("%s child: socketpair: %s", c->label, strerror(-r));
		return r;
	}
	plan.channel = sv[1];
	plan.descriptors = dv[1];
	plan.fd5 = jail_fd;
	r = plan_child(c, &plan, &user);
	pid = r < 0 ? r : spawn_run(&plan, &rep);
	if (pid < 0) {
		close(sv[0]);
		close(sv[1]);
		fd_close(dv[0]);
		fd_close(dv[1]);
		fd_close(jail_fd);
		if (r == 0)
			log_error("%s child: fork: %s", c->label, strerror(-pid));
		return pid;
	}
	if (rep.step != SPAWN_STEP_NONE)
		log_spawn_failure(c, &plan, &rep, user);
	close(sv[1]);
	fd_close(dv[1]);
	fd_close(jail_fd);
	c->desc_fd = dv[0];
	fd_set_nonblock(sv[0], 1);
	c->pid = pid;
	c->started_ms = keeper_now_ms();
	c->state = CHILD_STARTING;
	c->bev = bufferevent_socket_new(c->k->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev) {
		close(sv[0]);
		return -ENOMEM;
	}
	frame_bev_setup(c->bev, PROTO_MAX_MESSAGE);
	bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);

	params = json_object_new_object();
	json_object_object_add(params, PARAM_KEY_VERSION, json_object_new_int(PROTO_VERSION));
	json_object_object_add(params, PARAM_KEY_ROLE, json_object_new_string(c->role));
	json_object_object_add(params, PARAM_KEY_LOG_LEVEL,
			       json_object_new_string(log_get_level() == LOG_LEVEL_DEBUG ? "debug" : "info"));
	if (c->ops && c->ops->hello)
		c->ops->hello(c, c->ctx, params);
	c->hello_id = c->next_id++;
	hello = rpc_request(METHOD_HELLO, params, c->hello_id);
	r = send_msg(c, hello);
	json_object_put(hello);
	log_debug("%s child started, pid %d", c->label, (int)pid);
	return r;
}

int child_request(struct child *c, const char *method, struct json_object *params, child_reply_fn fn,
		  void *ctx, int64_t *id)
{
	struct json_object *req;
	struct pending *p;
	int r;

	if (!child_ready(c)) {
		rpc_wipe_put(params);
		return -EAGAIN;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		rpc_wipe_put(params);
		return -ENOMEM;
	}
	p->id = c->next_id++;
	p->fn = fn;
	p->ctx = ctx;
	req = rpc_request(method, params, p->id);
	r = send_msg(c, req);
	rpc_wipe_put(req);
	if (r < 0) {
		free(p);
		return r;
	}
	p->next = c->pending;
	c->pending = p;
	if (id)
		*id = p->id;
	return 0;
}

int child_notify(struct child *c, const char *method, struct json_object *params)
{
	struct json_object *msg;
	int r;

	if (!child_ready(c)) {
		rpc_wipe_put(params);
		return -EAGAIN;
	}
	msg = rpc_notification(method, params);
	r = msg ? send_msg(c, msg) : -ENOMEM;
	rpc_wipe_put(msg);
	return r;
}

int child_reply(struct child *c, struct json_object *id, struct json_object *result, struct json_object *error)
{
	struct json_object *msg;
	int r;

	if (!child_ready(c)) {
		rpc_wipe_put(result);
		json_object_put(error);
		return -EAGAIN;
	}
	msg = error ? error : rpc_result(id, result);
	r = msg ? send_msg(c, msg) : -ENOMEM;
	rpc_wipe_put(msg);
	return r;
}

int child_send_fd(struct child *c, uint64_t number, int fd)
{
	if (!child_ready(c) || c->desc_fd < 0)
		return -EAGAIN;
	return sock_send_numbered(c->desc_fd, number, NULL, 0, fd);
}

int child_send_client(struct child *c, uint64_t number, unsigned flags, int fd)
{
	unsigned char f = (unsigned char)flags;

	if (!child_ready(c) || c->desc_fd < 0)
		return -EAGAIN;
	return sock_send_numbered(c->desc_fd, number, &f, 1, fd);
}

void child_cancel(struct child *c, int64_t id)
{
	for (struct pending *p = c->pending; p; p = p->next)
		if (p->id == id)
			p->fn = NULL;
}

void child_reap(struct keeper *k)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		char why[64];

		if (WIFEXITED(status))
			snprintf(why, sizeof(why), "exited with status %d", WEXITSTATUS(status));
		else
			snprintf(why, sizeof(why), "killed by signal %d", WTERMSIG(status));
		for (struct child *c = k->children; c; c = c->next) {
			if (c->pid != pid)
				continue;
			c->pid = -1;
			if (c->state == CHILD_STOPPED) {
				snprintf(c->last_exit, sizeof(c->last_exit), "%s", why);
				break;
			}
			if (c->state != CHILD_RESTARTING)
				log_warn("%s child %s", c->label, why);
			child_lost(c, why);
			break;
		}
	}
}
