/*
 * mcpctl's side of the control socket: where the keeper's socket is, the
 * connection (bounded by --timeout even when the keeper's backlog is full),
 * and one exchange per connection: a hello with our protocol version,
 * pipelined with the request, then the reply that carries our id. The
 * keeper's errors and every way of not getting a reply become exit codes
 * here, each after one line on stderr.
 */
#include <errno.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "config.h"
#include "ctl.h"
#include "frame.h"
#include "paths.h"
#include "proto.h"
#include "sock.h"

/* One request per connection, so one id is enough to match the reply. */
#define CTL_REQUEST_ID 1
#define CTL_HELLO_ID 0
/* The system user of the packaged unit (systemd/mcpkeeper.sysusers). */
#define CTL_SYSTEM_USER "mcpkeeper"

int64_t ctl_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* What is left of --timeout, for one wait: -1 means no limit. */
int ctl_remaining_ms(const struct ctl *c)
{
	int64_t left;

	if (!c->deadline_ms)
		return -1;
	left = c->deadline_ms - ctl_now_ms();
	return left > 0 ? (int)left : 0;
}

/* ---- Finding the keeper ---- */

static int socket_in(const char *dir, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/control.sock", dir);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

bool ctl_path_missing(const char *path)
{
	struct stat st;

	return stat(path, &st) < 0 && (errno == ENOENT || errno == ENOTDIR);
}

static void keeper_data_dir_set(struct ctl *c, const char *dir)
{
	if (snprintf(c->keeper_data_dir, sizeof(c->keeper_data_dir), "%s", dir) >= (int)sizeof(c->keeper_data_dir))
		c->keeper_data_dir[0] = '\0';
}

/* User mode fell back to the system keeper's socket: its state directory
 * is the system config's data_dir when we may read that, else the default. */
static void system_keeper_found(struct ctl *c)
{
	_cleanup_(config_freep) struct config *cfg = NULL;
	char conf_path[PATH_MAX];

	c->system_keeper = true;
	if (paths_config_file(true, conf_path, sizeof(conf_path)) == 0 &&
	    config_load(conf_path, true, &cfg, NULL, 0) == 0)
		keeper_data_dir_set(c, cfg->data_dir);
	else if (paths_data_dir(true, c->keeper_data_dir, sizeof(c->keeper_data_dir)) < 0)
		c->keeper_data_dir[0] = '\0';
}

/*
 * The order is documented in mcpctl.1 (FINDING THE KEEPER): --socket; the
 * runtime_dir of --config or $MCPKEEPER_CONFIG; the runtime_dir of the mode's
 * config file when there is one; the mode's runtime directory. In user mode,
 * when none of the implicit choices has a socket and the system keeper's
 * does, that one is used: a user in the keeper's group may talk to it.
 * Returns 0, or an exit code after saying why.
 */
int ctl_find_socket(struct ctl *c)
{
	_cleanup_(config_freep) struct config *cfg = NULL;
	char conf_path[PATH_MAX], dir[PATH_MAX], sys_dir[PATH_MAX], sys[PATH_MAX], err[1024];
	struct stat st;
	int r;

	c->system_keeper = c->system_mode;
	if (c->system_mode && paths_data_dir(true, c->keeper_data_dir, sizeof(c->keeper_data_dir)) < 0)
		c->keeper_data_dir[0] = '\0';
	if (c->opt_socket) {
		if (snprintf(c->socket_path, sizeof(c->socket_path), "%s", c->opt_socket) >=
		    (int)sizeof(c->socket_path))
			return ctl_usage_error("--socket: path too long");
		return 0;
	}

	if (c->opt_config) {
		r = config_load(c->opt_config, c->system_mode, &cfg, err, sizeof(err));
		if (r < 0) {
			fprintf(stderr, "mcpctl: %s\n", err);
			return CTL_EXIT_USAGE;
		}
		if (c->system_mode)
			keeper_data_dir_set(c, cfg->data_dir);
		if (socket_in(cfg->runtime_dir, c->socket_path, sizeof(c->socket_path)) < 0) {
			fprintf(stderr, "mcpctl: %s: runtime_dir: path too long\n", c->opt_config);
			return CTL_EXIT_USAGE;
		}
		return 0;
	}

	dir[0] = '\0';
	if (paths_config_file(c->system_mode, conf_path, sizeof(conf_path)) == 0 &&
	    stat(conf_path, &st) == 0) {
		r = config_load(conf_path, c->system_mode, &cfg, err, sizeof(err));
		if (r == 0) {
			snprintf(dir, sizeof(dir), "%s", cfg->runtime_dir);
			if (c->system_mode)
				keeper_data_dir_set(c, cfg->data_dir);
		}
		/* The system config may be readable by the keeper only: that is
		 * no reason to complain to a member of its group. */
		else if (r != -EACCES)
			fprintf(stderr, "mcpctl: warning: %s; trying the default socket\n", err);
	}
	if (!dir[0] && paths_runtime_dir(c->system_mode, dir, sizeof(dir)) < 0)
		dir[0] = '\0';

	if (!dir[0] || socket_in(dir, c->socket_path, sizeof(c->socket_path)) < 0)
		c->socket_path[0] = '\0';

	if (!c->system_mode && (!c->socket_path[0] || ctl_path_missing(c->socket_path)) &&
	    paths_runtime_dir(true, sys_dir, sizeof(sys_dir)) == 0 &&
	    socket_in(sys_dir, sys, sizeof(sys)) == 0 && stat(sys, &st) == 0) {
		snprintf(c->socket_path, sizeof(c->socket_path), "%s", sys);
		system_keeper_found(c);
	}

	if (!c->socket_path[0]) {
		fputs("mcpctl: cannot tell where the keeper's socket is (no usable runtime "
		      "directory); use --socket or --config\n",
		      stderr);
		return CTL_EXIT_UNREACHABLE;
	}
	return 0;
}

/* ---- Talking to the keeper ---- */

/*
 * sock_connect_unix() blocks while the keeper's listen backlog is full (a
 * keeper out of descriptors stops accepting) and retries on EINTR, so the
 * only way to bound that wait is to end the process from the timer.
 */
static void connect_timed_out(int sig)
{
	static const char msg[] = "mcpctl: cannot reach the keeper: timed out connecting "
				  "(it is not accepting connections)\n";
	ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);

	(void)sig;
	(void)w;
	_exit(CTL_EXIT_UNREACHABLE);
}

static void connect_timer(int ms)
{
	struct itimerval it = { 0 };

	if (ms > 0) {
		struct sigaction sa = { .sa_handler = connect_timed_out };

		sigemptyset(&sa.sa_mask);
		sigaction(SIGALRM, &sa, NULL);
		it.it_value.tv_sec = ms / 1000;
		it.it_value.tv_usec = (ms % 1000) * 1000;
	}
	setitimer(ITIMER_REAL, &it, NULL);
}

int ctl_unreachable(const struct ctl *c, int err)
{
	switch (err) {
	case -ENOENT:
		fprintf(stderr,
			"mcpctl: cannot reach the keeper at %s: no such file (is mcpkeeperd running?)\n",
			c->socket_path);
		break;
	case -ECONNREFUSED:
		fprintf(stderr,
			"mcpctl: cannot reach the keeper at %s: connection refused (is mcpkeeperd "
			"running?)\n",
			c->socket_path);
		break;
	case -ETIMEDOUT:
		fprintf(stderr, "mcpctl: cannot reach the keeper at %s: no reply within %g s\n",
			c->socket_path, c->timeout_sec);
		break;
	default:
		fprintf(stderr, "mcpctl: cannot reach the keeper at %s: %s\n", c->socket_path,
			strerror(-err));
		break;
	}
	return CTL_EXIT_UNREACHABLE;
}

/*
 * Whom we are about to send our request to (and, for `connect`, hand our
 * stdin and stdout): the kernel's word on the uid that answers on the
 * socket. Trusted are this user and root, and for the system keeper the
 * user that owns its state directory (what the unit runs it as, and what a
 * root start becomes) or, when that cannot be seen, the mcpkeeper user.
 * Never whoever owns the socket or its directory: that proves nothing.
 * Returns 0, or CTL_EXIT_UNTRUSTED after saying why.
 */
static int ctl_check_peer(const struct ctl *c, int fd)
{
	uid_t peer, keeper = (uid_t)-1;
	struct passwd *pw;
	struct stat st;
	pid_t pid;
	gid_t gid;
	int r;

	r = sock_peer_cred(fd, &pid, &peer, &gid);
	if (r < 0) {
		fprintf(stderr, "mcpctl: cannot tell who answers on %s (SO_PEERCRED: %s): not talking to it\n",
			c->socket_path, strerror(-r));
		return CTL_EXIT_UNTRUSTED;
	}
	if (peer == getuid() || peer == 0)
		return 0;
	if (c->system_keeper) {
		if (c->keeper_data_dir[0] && stat(c->keeper_data_dir, &st) == 0)
			keeper = st.st_uid;
		else if ((pw = getpwnam(CTL_SYSTEM_USER)) != NULL)
			keeper = pw->pw_uid;
		if (peer == keeper)
			return 0;
		if (keeper == (uid_t)-1)
			fprintf(stderr,
				"mcpctl: refusing the keeper at %s: it runs as uid %u, which is not root, and the "
				"system keeper's user is unknown (no state directory %s, no user %s)\n",
				c->socket_path, (unsigned)peer, c->keeper_data_dir, CTL_SYSTEM_USER);
		else
			fprintf(stderr,
				"mcpctl: refusing the keeper at %s: it runs as uid %u, which is neither root nor the "
				"system keeper's user (uid %u); another user may be serving that socket\n",
				c->socket_path, (unsigned)peer, (unsigned)keeper);
		return CTL_EXIT_UNTRUSTED;
	}
	fprintf(stderr,
		"mcpctl: refusing the keeper at %s: it runs as uid %u, which is neither this user (uid %u) "
		"nor root; another user may be serving that socket (use --system for the system keeper)\n",
		c->socket_path, (unsigned)peer, (unsigned)getuid());
	return CTL_EXIT_UNTRUSTED;
}

static int ctl_connect(struct ctl *c, int *fd)
{
	int r;

	if (c->deadline_ms) {
		int ms = ctl_remaining_ms(c);

		connect_timer(ms > 0 ? ms : 1);
	}
	r = sock_connect_unix(c->socket_path, 1, fd);
	if (c->deadline_ms)
		connect_timer(0);
	if (r == -EACCES || r == -EPERM) {
		fprintf(stderr,
			"mcpctl: the keeper refused this user (uid %u): permission denied on %s "
			"(not in the keeper's group?)\n",
			(unsigned)getuid(), c->socket_path);
		return CTL_EXIT_REFUSED;
	}
	if ((r == -ENOENT || r == -ECONNREFUSED) && c->quiet_unreachable) {
		c->keeper_absent = true;
		c->last_error = r;
		return CTL_EXIT_UNREACHABLE;
	}
	if (r < 0)
		return ctl_unreachable(c, r);
	r = ctl_check_peer(c, *fd);
	if (r) {
		close(*fd);
		*fd = -1;
	}
	return r;
}


static void ctl_print_error(const struct rpc_msg *m, const char *prefix)
{
	_cleanup_(freep) char *msg = NULL, *kind = NULL;
	const char *s;

	s = rpc_error_message(m);
	msg = text_clean(s ? s : "error without a message");
	s = rpc_error_kind(m);
	if (s) {
		kind = text_clean(s);
		fprintf(stderr, "mcpctl: %s%s (%s)\n", prefix, msg, kind);
	} else {
		fprintf(stderr, "mcpctl: %s%s (code %d)\n", prefix, msg, rpc_error_code(m));
	}
}

static bool id_is_ours(struct json_object *id)
{
	return id && json_object_is_type(id, json_type_int) &&
	       json_object_get_int64(id) == CTL_REQUEST_ID;
}

static bool id_is_hello(struct json_object *id)
{
	return id && json_object_is_type(id, json_type_int) && json_object_get_int64(id) == CTL_HELLO_ID;
}

/*
 * The keeper's answer to our hello: 0 when it speaks our protocol version,
 * else an exit code after saying which versions differ. A keeper that knows
 * no hello is older than the version check itself.
 */
static int ctl_check_hello(struct ctl *c, const struct rpc_msg *m)
{
	struct json_object *v;
	const char *kind;

	if (m->type == RPC_RESULT) {
		if (json_object_object_get_ex(m->result, PARAM_KEY_VERSION, &v) &&
		    json_object_is_type(v, json_type_int) && json_object_get_int64(v) == PROTO_VERSION)
			return 0;
		fprintf(stderr, "mcpctl: the keeper at %s speaks control protocol version %s, this mcpctl (%s) "
				"version %d: use the mcpctl of the keeper's release\n",
			c->socket_path, v ? json_object_to_json_string(v) : "(none)", MCPKEEPER_VERSION, PROTO_VERSION);
		return CTL_EXIT_PROTOCOL;
	}
	kind = rpc_error_kind(m);
	if (kind && strcmp(kind, KIND_UNKNOWN_METHOD) == 0) {
		fprintf(stderr, "mcpctl: the keeper at %s is older than this mcpctl (%s, control protocol version %d): "
				"it speaks no protocol version; use the mcpctl of the keeper's release\n",
			c->socket_path, MCPKEEPER_VERSION, PROTO_VERSION);
		return CTL_EXIT_PROTOCOL;
	}
	ctl_print_error(m, "");
	return CTL_EXIT_PROTOCOL;
}

/*
 * One request, one reply: sends method with params (taken over; may be
 * NULL) after the hello and waits for the reply with our id, passing
 * notifications to c->on_note. Returns 0 with the result in *reply (the
 * caller clears it), or an exit code after saying why. keep_fd/keep_buf
 * (both or neither) receive the connection and whatever arrived after the
 * reply, for `connect` and `events`.
 */
int ctl_exchange(struct ctl *c, const char *method, struct json_object *params, struct rpc_msg *reply,
		 int *keep_fd, struct evbuffer **keep_buf)
{
	_cleanup_(closep) int fd = -1;
	_cleanup_(evbuffer_freep) struct evbuffer *buf = NULL;
	struct json_object *req, *hello;
	char detail[256];
	int r;

	r = ctl_connect(c, &fd);
	if (r) {
		json_object_put(params);
		return r;
	}

	/* The hello goes first, pipelined with the request: no extra round trip. */
	hello = json_object_new_object();
	json_object_object_add(hello, PARAM_KEY_VERSION, json_object_new_int(PROTO_VERSION));
	json_object_object_add(hello, PARAM_KEY_CLIENT, json_object_new_string("mcpctl " MCPKEEPER_VERSION));
	req = rpc_request(METHOD_HELLO, hello, CTL_HELLO_ID);
	if (!req)
		ctl_out_of_memory();
	r = frame_write_fd(fd, req, PROTO_MAX_MESSAGE, ctl_remaining_ms(c));
	json_object_put(req);
	if (r == 0) {
		req = rpc_request(method, params, CTL_REQUEST_ID);
		if (!req)
			ctl_out_of_memory();
		r = frame_write_fd(fd, req, PROTO_MAX_MESSAGE, ctl_remaining_ms(c));
		json_object_put(req);
	} else {
		json_object_put(params);
	}
	if (r == -ETIMEDOUT)
		return ctl_unreachable(c, r);
	/* A keeper that refuses a peer writes one error and closes: our write
	 * may then fail, but the refusal is still there to be read. */
	if (r && r != -EPIPE && r != -ECONNRESET) {
		fprintf(stderr, "mcpctl: cannot send the request to %s: %s\n", c->socket_path,
			frame_strerror(r));
		return CTL_EXIT_PROTOCOL;
	}

	buf = evbuffer_new();
	if (!buf)
		ctl_out_of_memory();
	for (;;) {
		struct rpc_msg m = { 0 };

		detail[0] = '\0';
		r = frame_read_fd(fd, buf, PROTO_MAX_MESSAGE, &m, ctl_remaining_ms(c), detail,
				  sizeof(detail));
		if (r == -ETIMEDOUT)
			return ctl_unreachable(c, r);
		if (r == -EPIPE || r == -ECONNRESET) {
			fprintf(stderr, "mcpctl: the keeper at %s closed the connection before replying\n",
				c->socket_path);
			return CTL_EXIT_PROTOCOL;
		}
		if (r) {
			_cleanup_(freep) char *d = text_clean(detail);

			rpc_msg_clear(&m);
			fprintf(stderr, "mcpctl: malformed reply from the keeper: %s\n",
				d[0] ? d : frame_strerror(r));
			return CTL_EXIT_PROTOCOL;
		}
		if (m.type == RPC_NOTIFICATION) {
			if (c->on_note)
				c->on_note(c, &m);
			rpc_msg_clear(&m);
			continue;
		}
		if (id_is_hello(m.id)) {
			r = ctl_check_hello(c, &m);
			rpc_msg_clear(&m);
			if (r)
				return r;
			continue;
		}
		if (m.type == RPC_RESULT && id_is_ours(m.id)) {
			*reply = m;
			if (keep_fd) {
				*keep_fd = TAKE_FD(fd);
				*keep_buf = TAKE_PTR(buf);
			}
			return 0;
		}
		if (m.type == RPC_ERROR && id_is_ours(m.id)) {
			/* Also kind "forbidden": then a method is refused (management
			 * disabled), not this user. */
			const char *kind = rpc_error_kind(&m);
			int code = CTL_EXIT_KEEPER_ERROR;

			if (kind && strcmp(kind, KIND_NOT_FOUND) == 0)
				code = CTL_EXIT_NOT_FOUND;
			else if (kind && strcmp(kind, KIND_NOT_OAUTH) == 0)
				code = CTL_EXIT_NOT_OAUTH;
			ctl_print_error(&m, "");
			rpc_msg_clear(&m);
			return code;
		}
		if (m.type == RPC_ERROR && (!m.id || json_object_is_type(m.id, json_type_null))) {
			/* Not an answer to a method: the connection itself was refused
			 * (credential check at accept, per-uid cap) or our line was. */
			const char *kind = rpc_error_kind(&m);
			int code = CTL_EXIT_KEEPER_ERROR;

			if (kind && strcmp(kind, KIND_FORBIDDEN) == 0) {
				char prefix[64];

				snprintf(prefix, sizeof(prefix), "the keeper refused this user (uid %u): ",
					 (unsigned)getuid());
				ctl_print_error(&m, prefix);
				code = CTL_EXIT_REFUSED;
			} else {
				ctl_print_error(&m, "");
			}
			rpc_msg_clear(&m);
			return code;
		}
		fprintf(stderr, "mcpctl: protocol error: the keeper sent a %s that does not answer "
				"request %d\n",
			m.type == RPC_REQUEST ? "request" : "reply", CTL_REQUEST_ID);
		rpc_msg_clear(&m);
		return CTL_EXIT_PROTOCOL;
	}
}


/* Runs a method and prints its result with print(), or as JSON. */
int ctl_query(struct ctl *c, const char *method, struct json_object *params, bool json, const char *only,
	      int (*print)(struct json_object *result, const char *only))
{
	struct rpc_msg reply = { 0 };
	int r;

	r = ctl_find_socket(c);
	if (r) {
		json_object_put(params);
		return r;
	}

	/* Only while the socket is open: a keeper that closes early must not
	 * kill us before we read its reason. Afterwards, a closed stdout pipe
	 * ends mcpctl quietly as it does any filter. */
	signal(SIGPIPE, SIG_IGN);
	r = ctl_exchange(c, method, params, &reply, NULL, NULL);
	signal(SIGPIPE, SIG_DFL);
	if (r)
		return r;

	if (!json_object_is_type(reply.result, json_type_object))
		r = output_malformed(method, "the result is not an object");
	else if (json)
		output_json(reply.result);
	else
		r = print(reply.result, only);
	rpc_msg_clear(&reply);
	return r;
}
