/*
 * mcpctl: the operator's client of the keeper's control socket.
 *
 * It finds the socket (--socket, a config file, or the mode's default),
 * sends one JSON-RPC request through the framing module, waits for the reply
 * that carries the same id and prints it, as a table or as the keeper's own
 * JSON. Status replies carry metadata only, and mcpctl prints no field it
 * was not given. It never holds a token: the one time it opens the store
 * (auth logout while the keeper is not running) it only deletes records.
 *
 * The exit codes are an interface that scripts test: they are listed in
 * usage() and in mcpctl.1 and must stay in step with both.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "bridge.h"
#include "config.h"
#include "frame.h"
#include "log.h"
#include "paths.h"
#include "proto.h"
#include "secret.h"
#include "sock.h"
#include "store.h"
#include "util.h"

enum {
	CTL_EXIT_OK = 0,
	CTL_EXIT_KEEPER_ERROR = 1,	/* also: mcpctl itself failed (memory, output) */
	CTL_EXIT_USAGE = 2,
	CTL_EXIT_UNREACHABLE = 3,
	CTL_EXIT_REFUSED = 4,
	CTL_EXIT_PROTOCOL = 5,
	CTL_EXIT_NOT_FOUND = 6,		/* no such server */
	CTL_EXIT_NOT_OAUTH = 7,		/* the server does not use OAuth */
};

#define CTL_DEFAULT_TIMEOUT_SEC 10
#define CTL_MAX_TIMEOUT_SEC 86400.0
/* One request per connection, so one id is enough to match the reply. */
#define CTL_REQUEST_ID 1
#define CTL_HELLO_ID 0

struct ctl {
	/* Parsed options. */
	const char *opt_socket;
	const char *opt_config;		/* --config, else $MCPKEEPER_CONFIG */
	bool system_mode;
	double timeout_sec;		/* 0: wait forever */

	char socket_path[PATH_MAX];
	int64_t deadline_ms;		/* CLOCK_MONOTONIC; 0: none */
	bool timeout_given;		/* --timeout on the command line */

	/* Notifications that arrive while waiting for a reply (auth.login_url,
	 * event); NULL: skipped. */
	void (*on_note)(struct ctl *c, const struct rpc_msg *m);
	bool no_browser;
	/* auth logout: a keeper that is not running means standalone mode. */
	bool quiet_unreachable, keeper_absent;
	int last_error;
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: mcpctl [OPTIONS] COMMAND [ARGS]\n"
		"\n"
		"Talks to the mcpkeeper keeper (mcpkeeperd) over its control socket.\n"
		"\n"
		"Commands:\n"
		"  status [--json] [-s NAME]\n"
		"                      the keeper and each server: transport, worker, OAuth\n"
		"                      status, token expiry, next refresh, last error\n"
		"  servers [--json]    the configured servers\n"
		"  auth login (-s NAME | --all) [--no-browser] [--timeout SEC]\n"
		"                      log in: prints the authorization URL, opens it with\n"
		"                      $BROWSER or xdg-open, waits (default 120 s); --all logs\n"
		"                      in every OAuth server that is not authenticated\n"
		"  auth logout (-s NAME | --all)\n"
		"                      delete the token (and revoke it at the provider); with\n"
		"                      the keeper stopped, deletes it from the store directly\n"
		"  auth status [-s NAME] [--json]\n"
		"                      OAuth status of the OAuth servers\n"
		"  events [--json]     follow the keeper's events until interrupted\n"
		"  connect [--bridge] NAME\n"
		"                      what an MCP client runs as its stdio server (config:\n"
		"                      \"command\": \"mcpctl\", \"args\": [\"connect\", \"NAME\"]):\n"
		"                      hands stdin and stdout (pipes or sockets) to NAME's\n"
		"                      worker and waits; --bridge (and any other stdin or\n"
		"                      stdout) relays them instead, and answers requests\n"
		"                      in flight should the worker die\n"
		"\n"
		"  --json prints the keeper's reply as JSON instead of a table;\n"
		"  -s is short for --server.\n"
		"\n"
		"Options (before the command):\n"
		"  --socket PATH       the keeper's control socket\n"
		"  --config FILE       find the socket through this config file's runtime_dir\n"
		"                      (default: $MCPKEEPER_CONFIG, then the mode's config.json)\n"
		"  --system            talk to the system keeper (/etc/mcpkeeper, /run/mcpkeeper)\n"
		"  --timeout SEC       give up after SEC seconds (default %d; 0: wait forever)\n"
		"  -V, --version       print the version and exit\n"
		"  -h, --help          print this help and exit\n"
		"\n"
		"Exit status:\n"
		"  0  success\n"
		"  1  the keeper answered with an error (or mcpctl could not write its output)\n"
		"  2  usage error: bad option, command or config file\n"
		"  3  the keeper is unreachable: no socket, connection refused, timeout\n"
		"  4  the keeper refused this user\n"
		"  5  protocol error: malformed reply, connection closed before the reply\n"
		"  6  no such server\n"
		"  7  the server does not use OAuth\n"
		"\n"
		"See mcpctl(1) for how the socket is found.\n",
		CTL_DEFAULT_TIMEOUT_SEC);
}

static int usage_error(const char *fmt, ...) _printf_(1, 2);
static int parse_timeout(const char *s, double *out);

static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("mcpctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'mcpctl --help'.\n", stderr);
	return CTL_EXIT_USAGE;
}

_noreturn_ static void out_of_memory(void)
{
	fputs("mcpctl: out of memory\n", stderr);
	exit(CTL_EXIT_KEEPER_ERROR);
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* What is left of --timeout, for one wait: -1 means no limit. */
static int ctl_remaining_ms(const struct ctl *c)
{
	int64_t left;

	if (!c->deadline_ms)
		return -1;
	left = c->deadline_ms - now_ms();
	return left > 0 ? (int)left : 0;
}

/* ---- Finding the keeper ---- */

static int socket_in(const char *dir, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/control.sock", dir);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static bool path_missing(const char *path)
{
	struct stat st;

	return stat(path, &st) < 0 && (errno == ENOENT || errno == ENOTDIR);
}

/*
 * The order is documented in mcpctl.1 (FINDING THE KEEPER): --socket; the
 * runtime_dir of --config or $MCPKEEPER_CONFIG; the runtime_dir of the mode's
 * config file when there is one; the mode's runtime directory. In user mode,
 * when none of the implicit choices has a socket and the system keeper's
 * does, that one is used: a user in the keeper's group may talk to it.
 * Returns 0, or an exit code after saying why.
 */
static int ctl_find_socket(struct ctl *c)
{
	_cleanup_(config_freep) struct config *cfg = NULL;
	char conf_path[PATH_MAX], dir[PATH_MAX], sys_dir[PATH_MAX], sys[PATH_MAX], err[1024];
	struct stat st;
	int r;

	if (c->opt_socket) {
		if (snprintf(c->socket_path, sizeof(c->socket_path), "%s", c->opt_socket) >=
		    (int)sizeof(c->socket_path))
			return usage_error("--socket: path too long");
		return 0;
	}

	if (c->opt_config) {
		r = config_load(c->opt_config, c->system_mode, &cfg, err, sizeof(err));
		if (r < 0) {
			fprintf(stderr, "mcpctl: %s\n", err);
			return CTL_EXIT_USAGE;
		}
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
		if (r == 0)
			snprintf(dir, sizeof(dir), "%s", cfg->runtime_dir);
		/* The system config may be readable by the keeper only: that is
		 * no reason to complain to a member of its group. */
		else if (r != -EACCES)
			fprintf(stderr, "mcpctl: warning: %s; trying the default socket\n", err);
	}
	if (!dir[0] && paths_runtime_dir(c->system_mode, dir, sizeof(dir)) < 0)
		dir[0] = '\0';

	if (!dir[0] || socket_in(dir, c->socket_path, sizeof(c->socket_path)) < 0)
		c->socket_path[0] = '\0';

	if (!c->system_mode && (!c->socket_path[0] || path_missing(c->socket_path)) &&
	    paths_runtime_dir(true, sys_dir, sizeof(sys_dir)) == 0 &&
	    socket_in(sys_dir, sys, sizeof(sys)) == 0 && stat(sys, &st) == 0)
		snprintf(c->socket_path, sizeof(c->socket_path), "%s", sys);

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

static int ctl_unreachable(const struct ctl *c, int err)
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
	return 0;
}

/* Control characters in a string from the keeper would reach the terminal:
 * print '?' instead of C0, DEL and (UTF-8 encoded) C1 codes. */
static char *text_clean(const char *s)
{
	char *out = malloc(strlen(s) + 1), *o = out;

	if (!out)
		out_of_memory();
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p < 0x20 || *p == 0x7f) {
			*o++ = '?';
		} else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
			*o++ = '?';
			p++;
		} else {
			*o++ = (char)*p;
		}
	}
	*o = '\0';
	return out;
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

static void evbuffer_freep(struct evbuffer **b)
{
	if (*b)
		evbuffer_free(*b);
}

/*
 * Sends method (no params) and waits for the reply with our id, skipping
 * notifications. Returns 0 with the result in *reply (the caller clears it),
 * or an exit code after saying why.
 */
/*
 * One request, one reply. keep_fd/keep_buf (both or neither) receive the
 * connection and whatever arrived after the reply, for `connect`.
 */
static int ctl_exchange(struct ctl *c, const char *method, struct json_object *params, struct rpc_msg *reply,
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
		out_of_memory();
	r = frame_write_fd(fd, req, PROTO_MAX_MESSAGE, ctl_remaining_ms(c));
	json_object_put(req);
	if (r == 0) {
		req = rpc_request(method, params, CTL_REQUEST_ID);
		if (!req)
			out_of_memory();
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
		out_of_memory();
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


/* ---- Output ---- */

static void print_json(struct json_object *o)
{
	puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
						       JSON_C_TO_STRING_NOSLASHESCAPE));
}

static const char *field_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* Absent, null or not a number: false. */
static bool field_int(struct json_object *o, const char *key, int64_t *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
		return false;
	*out = json_object_get_int64(v);
	return true;
}

static bool field_bool(struct json_object *o, const char *key, bool *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_boolean))
		return false;
	*out = json_object_get_boolean(v);
	return true;
}

static struct json_object *field_child(struct json_object *o, const char *key, enum json_type type)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, type))
		return NULL;
	return v;
}

/* "41s", "4m 10s", "5h 12m", "3d 4h": two units at most, read at a glance. */
static void duration_format(int64_t s, char *buf, size_t len)
{
	long long v = s < 0 ? 0 : (long long)s;

	if (v < 60)
		snprintf(buf, len, "%llds", v);
	else if (v < 3600 && v % 60)
		snprintf(buf, len, "%lldm %llds", v / 60, v % 60);
	else if (v < 3600)
		snprintf(buf, len, "%lldm", v / 60);
	else if (v < 86400 && (v % 3600) / 60)
		snprintf(buf, len, "%lldh %lldm", v / 3600, (v % 3600) / 60);
	else if (v < 86400)
		snprintf(buf, len, "%lldh", v / 3600);
	else if ((v % 86400) / 3600)
		snprintf(buf, len, "%lldd %lldh", v / 86400, (v % 86400) / 3600);
	else
		snprintf(buf, len, "%lldd", v / 86400);
}

/*
 * A table of text cells, columns as wide as their widest cell, and under a
 * row an optional note line. Every cell is cleaned of control characters.
 */
#define TABLE_MAX_COLS 8

struct table_row {
	char *cell[TABLE_MAX_COLS];
	char *note;
};

struct table {
	size_t n_cols;
	const char *head[TABLE_MAX_COLS];
	struct table_row *rows;
	size_t n_rows;
};

static struct table_row *table_add_row(struct table *t)
{
	struct table_row *rows = reallocarray(t->rows, t->n_rows + 1, sizeof(*rows));

	if (!rows)
		out_of_memory();
	t->rows = rows;
	memset(&rows[t->n_rows], 0, sizeof(rows[0]));
	return &rows[t->n_rows++];
}

static void table_set(struct table_row *row, size_t col, const char *text)
{
	free(row->cell[col]);
	row->cell[col] = text_clean(text ? text : "-");
}

/* Terminal columns of UTF-8 text, counting one per character. */
static size_t text_width(const char *s)
{
	size_t w = 0;

	for (; *s; s++)
		if (((unsigned char)*s & 0xc0) != 0x80)
			w++;
	return w;
}

static void table_print_line(const struct table *t, const char *const *cells, const size_t *width)
{
	for (size_t i = 0; i < t->n_cols; i++) {
		const char *s = cells[i] ? cells[i] : "-";

		if (i + 1 == t->n_cols) {
			printf("%s\n", s);
			break;
		}
		printf("%s%*s", s, (int)(width[i] - text_width(s) + 2), "");
	}
}

static void table_print(const struct table *t)
{
	size_t width[TABLE_MAX_COLS] = { 0 };

	for (size_t i = 0; i < t->n_cols; i++) {
		width[i] = text_width(t->head[i]);
		for (size_t r = 0; r < t->n_rows; r++)
			if (t->rows[r].cell[i] && text_width(t->rows[r].cell[i]) > width[i])
				width[i] = text_width(t->rows[r].cell[i]);
	}
	table_print_line(t, t->head, width);
	for (size_t r = 0; r < t->n_rows; r++) {
		table_print_line(t, (const char *const *)t->rows[r].cell, width);
		if (t->rows[r].note)
			printf("  %s\n", t->rows[r].note);
	}
}

static void table_clear(struct table *t)
{
	for (size_t r = 0; r < t->n_rows; r++) {
		for (size_t i = 0; i < TABLE_MAX_COLS; i++)
			free(t->rows[r].cell[i]);
		free(t->rows[r].note);
	}
	free(t->rows);
	t->rows = NULL;
	t->n_rows = 0;
}

static int malformed(const char *method, const char *what)
{
	fprintf(stderr, "mcpctl: malformed %s reply from the keeper: %s\n", method, what);
	return CTL_EXIT_PROTOCOL;
}

/* The servers array of a result, each element checked to be an object. */
static int result_servers(struct json_object *result, const char *method, struct json_object **out)
{
	struct json_object *servers = field_child(result, "servers", json_type_array);

	if (!servers)
		return malformed(method, "no \"servers\" array");
	for (size_t i = 0; i < json_object_array_length(servers); i++) {
		struct json_object *s = json_object_array_get_idx(servers, i);

		if (!json_object_is_type(s, json_type_object) || !field_str(s, "name"))
			return malformed(method, "a server entry without a name");
	}
	*out = servers;
	return 0;
}

static void expires_cell(struct json_object *srv, int64_t now, char *buf, size_t len)
{
	char d[32];
	int64_t at;

	if (!field_int(srv, "token_expires_at", &at) || at <= 0) {
		snprintf(buf, len, "-");
		return;
	}
	duration_format(at > now ? at - now : now - at, d, sizeof(d));
	snprintf(buf, len, at > now ? "in %s" : "expired %s ago", d);
}

/* "in 32m", "retrying in 4s (retry 2)", "failed", "-". */
static void refresh_cell(struct json_object *srv, int64_t now, char *buf, size_t len)
{
	struct json_object *rf = field_child(srv, "refresh", json_type_object);
	const char *state = rf ? field_str(rf, "state") : NULL;
	char retry[32] = "", d[32];
	int64_t n;

	if (!state || strcmp(state, "idle") == 0) {
		snprintf(buf, len, "-");
		return;
	}
	if (field_int(rf, "retry_count", &n) && n > 0)
		snprintf(retry, sizeof(retry), " (retry %lld)", (long long)n);
	if (strcmp(state, "refreshing") == 0 || strcmp(state, "failed") == 0) {
		snprintf(buf, len, "%s%s", state, retry);
		return;
	}
	if (!field_int(rf, "next_at", &n) || n <= 0) {
		snprintf(buf, len, "%s%s", state, retry);
		return;
	}
	if (n <= now) {
		snprintf(buf, len, "%s%s", strcmp(state, "retrying") == 0 ? "retrying now" : "due now", retry);
		return;
	}
	duration_format(n - now, d, sizeof(d));
	snprintf(buf, len, "%sin %s%s", strcmp(state, "retrying") == 0 ? "retrying " : "", d, retry);
}

/* authenticated / expired / error / none; "logging in" while a login runs;
 * "-" for a server without OAuth. */
static const char *auth_cell(struct json_object *srv)
{
	const char *st = field_str(srv, "oauth_status");
	bool b;

	if (!st)
		return "-";
	if (field_bool(srv, "login_in_progress", &b) && b)
		return "logging in";
	return st;
}

static const char *last_error_of(struct json_object *srv)
{
	struct json_object *rf = field_child(srv, "refresh", json_type_object);
	const char *e = rf ? field_str(rf, "last_error") : NULL;

	return e && *e ? e : NULL;
}

/* One server (only) when name is given: CTL_EXIT_NOT_FOUND when absent. */
static int status_print_servers(struct json_object *result, const char *method, bool full, const char *only)
{
	struct table t = { 0 };
	struct json_object *servers, *orphans;
	int64_t now = (int64_t)time(NULL);
	size_t col = 0, n_rows = 0;
	int r;

	r = result_servers(result, method, &servers);
	if (r)
		return r;
	t.head[col++] = "NAME";
	if (full) {
		t.head[col++] = "TRANSPORT";
		t.head[col++] = "WORKER";
	}
	t.head[col++] = "AUTH";
	t.head[col++] = "EXPIRES";
	t.head[col++] = "NEXT REFRESH";
	t.head[col++] = "LAST ERROR";
	t.n_cols = col;

	for (size_t i = 0; i < json_object_array_length(servers); i++) {
		struct json_object *srv = json_object_array_get_idx(servers, i), *w;
		struct table_row *row;
		char cell[128];

		if (only && strcmp(field_str(srv, "name"), only) != 0)
			continue;
		row = table_add_row(&t);
		col = 0;
		table_set(row, col++, field_str(srv, "name"));
		if (full) {
			w = field_child(srv, "worker", json_type_object);
			table_set(row, col++, field_str(srv, "protocol"));
			table_set(row, col++, w ? field_str(w, "state") : NULL);
		}
		table_set(row, col++, auth_cell(srv));
		expires_cell(srv, now, cell, sizeof(cell));
		table_set(row, col++, cell);
		refresh_cell(srv, now, cell, sizeof(cell));
		table_set(row, col++, cell);
		table_set(row, col++, last_error_of(srv));
		n_rows++;
	}
	orphans = field_child(result, "orphaned_tokens", json_type_array);
	for (size_t i = 0; orphans && i < json_object_array_length(orphans); i++) {
		struct json_object *o = json_object_array_get_idx(orphans, i);
		struct table_row *row;

		if (!field_str(o, "name") || (only && strcmp(field_str(o, "name"), only) != 0))
			continue;
		row = table_add_row(&t);
		col = 0;
		table_set(row, col++, field_str(o, "name"));
		if (full) {
			table_set(row, col++, NULL);
			table_set(row, col++, NULL);
		}
		table_set(row, col++, "orphaned");
		for (; col < t.n_cols; col++)
			table_set(row, col, NULL);
		if (asprintf(&row->note, "a stored token whose server left the config; "
					 "`mcpctl auth logout --server %s` deletes it",
			     field_str(o, "name")) < 0) {
			row->note = NULL;
			out_of_memory();
		}
		n_rows++;
	}
	if (only && !n_rows) {
		table_clear(&t);
		fprintf(stderr, "mcpctl: no server named \"%s\"\n", only);
		return CTL_EXIT_NOT_FOUND;
	}
	if (n_rows)
		table_print(&t);
	table_clear(&t);
	return 0;
}

static int status_print(struct json_object *result, const char *only)
{
	struct json_object *servers;
	_cleanup_(freep) char *version = NULL, *mode = NULL;
	const char *s;
	int64_t pid;
	size_t n;
	int r;

	r = result_servers(result, METHOD_STATUS, &servers);
	if (r)
		return r;
	n = json_object_array_length(servers);
	s = field_str(result, "version");
	version = text_clean(s ? s : "?");
	s = field_str(result, "mode");
	mode = text_clean(s ? s : "?");
	if (!only) {
		struct json_object *http = field_child(result, "http", json_type_object);

		if (field_int(result, "pid", &pid))
			printf("mcpkeeperd %s, pid %lld, %s mode, %zu server%s\n", version, (long long)pid, mode, n,
			       n == 1 ? "" : "s");
		else
			printf("mcpkeeperd %s, %s mode, %zu server%s\n", version, mode, n, n == 1 ? "" : "s");
		/* The key is in the URL's fragment, which browsers never send. */
		if (field_str(result, "web_ui")) {
			_cleanup_(freep) char *ui = text_clean(field_str(result, "web_ui"));

			printf("web UI: %s\n", ui);
		} else if (http && field_str(http, "state")) {
			_cleanup_(freep) char *st = text_clean(field_str(http, "state"));

			printf("web UI: not available (http child %s)\n", st);
		}
	}
	return status_print_servers(result, METHOD_STATUS, true, only);
}

static int servers_print(struct json_object *result)
{
	struct table t = {
		.n_cols = 5,
		.head = { "NAME", "PROTOCOL", "ENABLED", "OAUTH", "URL" },
	};
	struct json_object *servers;
	int r;

	r = result_servers(result, METHOD_SERVERS_LIST, &servers);
	if (r)
		return r;
	for (size_t i = 0; i < json_object_array_length(servers); i++) {
		struct json_object *srv = json_object_array_get_idx(servers, i);
		struct table_row *row = table_add_row(&t);
		bool b;

		table_set(row, 0, field_str(srv, "name"));
		table_set(row, 1, field_str(srv, "protocol"));
		table_set(row, 2, field_bool(srv, "enabled", &b) ? (b ? "yes" : "no") : NULL);
		table_set(row, 3, field_bool(srv, "oauth", &b) ? (b ? "yes" : "no") : NULL);
		table_set(row, 4, field_str(srv, "url"));
	}
	table_print(&t);
	table_clear(&t);
	return 0;
}

/* ---- Commands ---- */

/* getopt's complaint (o is ':' or '?'), or with o 0 an argument left over,
 * as a usage error naming the command. */
static int option_error(const char *cmd, int o, int argc, char **argv)
{
	if (o == 0)
		return usage_error("%s: unexpected argument '%s'", cmd, argv[optind]);
	if (o == ':')
		return usage_error("%s: option '%s' needs an argument", cmd, argv[optind - 1]);
	if (optopt)
		return usage_error("%s: unknown option '-%c'", cmd, optopt);
	return usage_error("%s: unknown option '%s'", cmd, argv[optind - 1]);
}

/* The options of the read-only commands: --json, --help and, where a
 * server can be picked, -s/--server NAME. */
static int parse_query_opts(const char *cmd, int argc, char **argv, bool *json, const char **server)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "server", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int o;

	optind = 0;	/* glibc: start over on the command's own arguments */
	opterr = 0;
	while ((o = getopt_long(argc, argv, "+:hs:", opts, NULL)) != -1) {
		switch (o) {
		case 'j':
			*json = true;
			break;
		case 's':
			if (!server)
				return usage_error("%s: unknown option '%s'", cmd, argv[optind - 1]);
			*server = optarg;
			break;
		case 'h':
			usage(stdout);
			return -1;
		default:
			return option_error(cmd, o, argc, argv);
		}
	}
	if (optind < argc)
		return option_error(cmd, 0, argc, argv);
	return 0;
}

/* Runs a method and prints its result with print(), or as JSON. */
static int run_query(struct ctl *c, const char *method, struct json_object *params, bool json, const char *only,
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
		r = malformed(method, "the result is not an object");
	else if (json)
		print_json(reply.result);
	else
		r = print(reply.result, only);
	rpc_msg_clear(&reply);
	return r;
}

static int cmd_status(struct ctl *c, int argc, char **argv)
{
	const char *only = NULL;
	bool json = false;
	int r = parse_query_opts(argv[0], argc, argv, &json, &only);

	if (r)
		return r < 0 ? CTL_EXIT_OK : r;
	if (json && only) {
		/* The JSON of one server: filtered here, the keeper's shape kept. */
		struct rpc_msg reply = { 0 };
		struct json_object *servers, *one = NULL;

		r = ctl_find_socket(c);
		if (!r)
			r = ctl_exchange(c, METHOD_STATUS, NULL, &reply, NULL, NULL);
		if (r)
			return r;
		r = result_servers(reply.result, METHOD_STATUS, &servers);
		for (size_t i = 0; !r && i < json_object_array_length(servers); i++)
			if (strcmp(field_str(json_object_array_get_idx(servers, i), "name"), only) == 0)
				one = json_object_array_get_idx(servers, i);
		if (!r && !one) {
			fprintf(stderr, "mcpctl: no server named \"%s\"\n", only);
			r = CTL_EXIT_NOT_FOUND;
		} else if (!r) {
			print_json(one);
		}
		rpc_msg_clear(&reply);
		return r;
	}
	return run_query(c, METHOD_STATUS, NULL, json, only, status_print);
}

static int servers_print_only(struct json_object *result, const char *only)
{
	return servers_print(result);
}

static int cmd_servers(struct ctl *c, int argc, char **argv)
{
	bool json = false;
	int r = parse_query_opts(argv[0], argc, argv, &json, NULL);

	if (r)
		return r < 0 ? CTL_EXIT_OK : r;
	return run_query(c, METHOD_SERVERS_LIST, NULL, json, NULL, servers_print_only);
}

/* ---- auth ---- */

static int auth_status_print(struct json_object *result, const char *only)
{
	return status_print_servers(result, METHOD_AUTH_STATUS, false, NULL);
}

static int cmd_auth_status(struct ctl *c, int argc, char **argv)
{
	struct json_object *params = NULL;
	const char *only = NULL;
	bool json = false;
	int r = parse_query_opts("auth status", argc, argv, &json, &only);

	if (r)
		return r < 0 ? CTL_EXIT_OK : r;
	if (only) {
		params = json_object_new_object();
		json_object_object_add(params, "server", json_object_new_string(only));
	}
	return run_query(c, METHOD_AUTH_STATUS, params, json, only, auth_status_print);
}

/*
 * Opens url in a browser without a shell: each entry of $BROWSER (':'
 * separated; "%s" in an entry stands for the URL, else the URL is appended;
 * words split on spaces), else xdg-open. The browser is not waited for: a
 * short-lived intermediate child tries the candidates and reports whether
 * one could be executed, and the browser it leaves behind is reparented.
 * Returns 0 when a program was started.
 */
static int browser_open(const char *url)
{
	const char *env = getenv("BROWSER");
	int pfd[2], status;
	pid_t pid;
	char ok;

	if (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0)
		return -EINVAL;
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		return -errno;
	}
	if (pid == 0) {
		_cleanup_(freep) char *list = strdup(env && *env ? env : "xdg-open");
		char *save = NULL;
		int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

		close(pfd[0]);
		if (!list)
			_exit(1);
		if (devnull >= 0) {
			dup2(devnull, STDIN_FILENO);
			dup2(devnull, STDOUT_FILENO);
		}
		setsid();
		for (char *entry = strtok_r(list, ":", &save); entry; entry = strtok_r(NULL, ":", &save)) {
			char *argv[32], *wsave = NULL;
			int argc = 0, ep[2];
			bool had_url = false;
			pid_t g;

			for (char *w = strtok_r(entry, " \t", &wsave); w && argc < 30; w = strtok_r(NULL, " \t", &wsave)) {
				if (strcmp(w, "%s") == 0) {
					argv[argc++] = (char *)url;
					had_url = true;
				} else {
					argv[argc++] = w;
				}
			}
			if (!argc)
				continue;
			if (!had_url)
				argv[argc++] = (char *)url;
			argv[argc] = NULL;
			if (pipe2(ep, O_CLOEXEC) < 0)
				_exit(1);
			g = fork();
			if (g == 0) {
				execvp(argv[0], argv);
				ok = 0;
				if (write(ep[1], &ok, 1) < 0)
					_exit(127);
				_exit(127);
			}
			close(ep[1]);
			if (g > 0 && read(ep[0], &ok, 1) == 0) {
				/* exec succeeded: the pipe closed without a byte. */
				ok = 1;
				if (write(pfd[1], &ok, 1) < 0)
					_exit(1);
				_exit(0);
			}
			close(ep[0]);
			if (g > 0)
				waitpid(g, NULL, 0);
		}
		_exit(1);
	}
	close(pfd[1]);
	ok = 0;
	if (read(pfd[0], &ok, 1) != 1)
		ok = 0;
	close(pfd[0]);
	waitpid(pid, &status, 0);
	return ok ? 0 : -ENOENT;
}

static void login_note(struct ctl *c, const struct rpc_msg *m)
{
	struct json_object *v;
	_cleanup_(freep) char *url = NULL, *name = NULL;

	if (strcmp(m->method, METHOD_AUTH_LOGIN_URL) != 0 || !json_object_object_get_ex(m->params, "url", &v) ||
	    !json_object_is_type(v, json_type_string))
		return;
	url = text_clean(json_object_get_string(v));
	name = text_clean(json_object_object_get_ex(m->params, "server", &v) ? json_object_get_string(v) : "?");
	printf("To log in to %s, open this URL in a browser:\n\n  %s\n\n", name, url);
	fflush(stdout);
	if (c->no_browser)
		return;
	if (browser_open(url) < 0) {
		const char *b = getenv("BROWSER");

		fprintf(stderr, "mcpctl: could not start a browser (%s%s); open the URL yourself\n",
			b && *b ? "BROWSER=" : "xdg-open", b && *b ? b : "");
	} else {
		printf("Opened the browser; waiting for the login to finish...\n");
		fflush(stdout);
	}
}

static int login_one(struct ctl *c, const char *server, int timeout)
{
	struct rpc_msg reply = { 0 };
	struct json_object *params = json_object_new_object();
	char when[64] = "";
	int64_t exp;
	int r;

	json_object_object_add(params, "server", json_object_new_string(server));
	json_object_object_add(params, "timeout", json_object_new_int(timeout));
	/* The login decides how long it may take; --timeout still bounds it. */
	if (!c->timeout_given)
		c->deadline_ms = now_ms() + ((int64_t)timeout + 30) * 1000;
	c->on_note = login_note;
	signal(SIGPIPE, SIG_IGN);
	r = ctl_exchange(c, METHOD_AUTH_LOGIN, params, &reply, NULL, NULL);
	signal(SIGPIPE, SIG_DFL);
	c->on_note = NULL;
	if (r)
		return r;
	if (field_int(reply.result, "token_expires_at", &exp) && exp > 0) {
		char d[32];

		duration_format(exp - (int64_t)time(NULL), d, sizeof(d));
		snprintf(when, sizeof(when), ", token expires in %s", d);
	}
	printf("%s: authenticated%s\n", server, when);
	rpc_msg_clear(&reply);
	return CTL_EXIT_OK;
}

/* Names of the OAuth servers that need a login (--all), from auth.status. */
static int login_targets(struct ctl *c, struct json_object **names)
{
	struct rpc_msg reply = { 0 };
	struct json_object *servers;
	int r;

	r = ctl_exchange(c, METHOD_AUTH_STATUS, NULL, &reply, NULL, NULL);
	if (r)
		return r;
	r = result_servers(reply.result, METHOD_AUTH_STATUS, &servers);
	if (r) {
		rpc_msg_clear(&reply);
		return r;
	}
	*names = json_object_new_array();
	for (size_t i = 0; i < json_object_array_length(servers); i++) {
		struct json_object *srv = json_object_array_get_idx(servers, i);
		const char *st = field_str(srv, "oauth_status");

		bool enabled = true;

		if (field_bool(srv, "enabled", &enabled) && !enabled)
			continue;
		if (st && strcmp(st, "authenticated") == 0) {
			_cleanup_(freep) char *n = text_clean(field_str(srv, "name"));

			printf("%s: already authenticated (log in again with --server %s)\n", n, n);
			continue;
		}
		json_object_array_add(*names, json_object_new_string(field_str(srv, "name")));
	}
	rpc_msg_clear(&reply);
	return 0;
}

struct auth_opts {
	const char *server;
	bool all, no_browser;
	int timeout;
};

static int parse_auth_opts(const char *cmd, int argc, char **argv, bool login, struct auth_opts *a)
{
	static const struct option opts[] = {
		{ "server", required_argument, NULL, 's' },
		{ "all", no_argument, NULL, 'a' },
		{ "no-browser", no_argument, NULL, 'n' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	double t;
	int o;

	*a = (struct auth_opts){ .timeout = 120 };
	optind = 0;
	opterr = 0;
	while ((o = getopt_long(argc, argv, "+:hs:", opts, NULL)) != -1) {
		switch (o) {
		case 's':
			a->server = optarg;
			break;
		case 'a':
			a->all = true;
			break;
		case 'n':
		case 't':
			if (!login)
				return usage_error("%s: unknown option '%s'", cmd, argv[optind - 1]);
			if (o == 'n') {
				a->no_browser = true;
				break;
			}
			if (parse_timeout(optarg, &t) < 0 || t < 1 || t > 3600)
				return usage_error("%s: --timeout: '%s' is not a number of seconds from 1 to 3600", cmd,
						   optarg);
			a->timeout = (int)t;
			break;
		case 'h':
			usage(stdout);
			return -1;
		default:
			return option_error(cmd, o, argc, argv);
		}
	}
	if (optind < argc)
		return option_error(cmd, 0, argc, argv);
	if (!a->server == !a->all)
		return usage_error("%s: give --server NAME or --all", cmd);
	return 0;
}

static int cmd_auth_login(struct ctl *c, int argc, char **argv)
{
	struct auth_opts a;
	struct json_object *names = NULL;
	int r, worst = CTL_EXIT_OK;

	r = parse_auth_opts("auth login", argc, argv, true, &a);
	if (r)
		return r < 0 ? CTL_EXIT_OK : r;
	c->no_browser = a.no_browser;
	r = ctl_find_socket(c);
	if (r)
		return r;
	if (a.server)
		return login_one(c, a.server, a.timeout);
	r = login_targets(c, &names);
	if (r)
		return r;
	for (size_t i = 0; i < json_object_array_length(names); i++) {
		r = login_one(c, json_object_get_string(json_object_array_get_idx(names, i)), a.timeout);
		if (r == CTL_EXIT_UNREACHABLE || r == CTL_EXIT_REFUSED || r == CTL_EXIT_PROTOCOL) {
			worst = r;
			break;
		}
		if (r)
			worst = CTL_EXIT_KEEPER_ERROR;
	}
	if (!json_object_array_length(names))
		printf("no server needs a login\n");
	json_object_put(names);
	return worst;
}

static void logout_print(struct json_object *o)
{
	_cleanup_(freep) char *name = text_clean(field_str(o, "server") ? field_str(o, "server") : "?");
	const char *why;
	bool b, had = true, orphan = false;

	field_bool(o, "had_token", &had);
	field_bool(o, "orphaned", &orphan);
	if (field_child(o, "error", json_type_object)) {
		fprintf(stderr, "mcpctl: %s: logout failed: the token store failed\n", name);
		return;
	}
	printf("%s: %s%s\n", name, had ? "logged out" : "logged out (there was no token)",
	       orphan ? " (orphaned token deleted)" : "");
	if (field_bool(o, "revoked", &b)) {
		if (b) {
			printf("%s: tokens revoked at the provider\n", name);
		} else {
			_cleanup_(freep) char *e = text_clean(field_str(o, "revoke_error") ? field_str(o, "revoke_error")
											   : "unknown error");

			fprintf(stderr, "mcpctl: %s: warning: the provider did not revoke the token: %s "
					"(the local token is deleted)\n",
				name, e);
		}
	} else if ((why = field_str(o, "revocation")) && had) {
		_cleanup_(freep) char *w = text_clean(why);

		printf("%s: revocation %s\n", name, w);
	}
}

static int logout_standalone(struct ctl *c, const struct auth_opts *a);

static int cmd_auth_logout(struct ctl *c, int argc, char **argv)
{
	struct rpc_msg reply = { 0 };
	struct json_object *params, *results;
	struct auth_opts a;
	int r;

	r = parse_auth_opts("auth logout", argc, argv, false, &a);
	if (r)
		return r < 0 ? CTL_EXIT_OK : r;
	r = ctl_find_socket(c);
	if (r == CTL_EXIT_UNREACHABLE)
		return logout_standalone(c, &a);
	if (r)
		return r;
	params = json_object_new_object();
	if (a.server)
		json_object_object_add(params, "server", json_object_new_string(a.server));
	else
		json_object_object_add(params, "all", json_object_new_boolean(1));
	if (!c->timeout_given)
		c->deadline_ms = now_ms() + 120 * 1000;	/* revocation may take a while */
	c->quiet_unreachable = true;
	signal(SIGPIPE, SIG_IGN);
	r = ctl_exchange(c, METHOD_AUTH_LOGOUT, params, &reply, NULL, NULL);
	signal(SIGPIPE, SIG_DFL);
	c->quiet_unreachable = false;
	if (r == CTL_EXIT_UNREACHABLE && c->keeper_absent)
		return logout_standalone(c, &a);
	if (r == CTL_EXIT_UNREACHABLE)
		return ctl_unreachable(c, c->last_error);
	if (r)
		return r;
	results = field_child(reply.result, "results", json_type_array);
	r = CTL_EXIT_OK;
	if (results) {
		for (size_t i = 0; i < json_object_array_length(results); i++) {
			struct json_object *o = json_object_array_get_idx(results, i);

			logout_print(o);
			if (field_child(o, "error", json_type_object))
				r = CTL_EXIT_KEEPER_ERROR;
		}
		if (!json_object_array_length(results))
			printf("no OAuth server to log out\n");
	} else {
		logout_print(reply.result);
	}
	rpc_msg_clear(&reply);
	return r;
}

/* ---- standalone logout: the keeper is not running ---- */

struct standalone {
	struct store *store;
	int deleted, failed;
};

static int standalone_delete_all(const char *key, const struct secret *plain, int status, void *ctx)
{
	struct standalone *st = ctx;
	int r = store_delete(st->store, STORE_TOKENS, key);

	if (r < 0) {
		fprintf(stderr, "mcpctl: deleting %s failed: %s\n", key, store_strerror(r));
		st->failed++;
	} else if (r == 0) {
		printf("deleted the stored token %s\n", key);
		st->deleted++;
	}
	return 0;
}

static int logout_standalone(struct ctl *c, const struct auth_opts *a)
{
	_cleanup_(config_freep) struct config *cfg = NULL;
	_cleanup_(store_closep) struct store *store = NULL;
	struct secret *key = NULL;
	struct standalone st = { 0 };
	char conf_path[PATH_MAX], err[1024], path[PATH_MAX + 32];
	const char *file = c->opt_config;
	const char *creds = getenv("CREDENTIALS_DIRECTORY");
	int r;

	if (!file) {
		if (paths_config_file(c->system_mode, conf_path, sizeof(conf_path)) < 0) {
			fputs("mcpctl: the keeper is not running and no config file can be found; use --config\n", stderr);
			return CTL_EXIT_UNREACHABLE;
		}
		file = conf_path;
	}
	r = config_load(file, c->system_mode, &cfg, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "mcpctl: the keeper is not running, and the config cannot be read: %s\n", err);
		return CTL_EXIT_USAGE;
	}
	if (a->server) {
		const struct config_server *cs = config_find_server(cfg, a->server);

		if (cs && !cs->oauth_enabled) {
			fprintf(stderr, "mcpctl: server \"%s\" does not use OAuth (not_oauth)\n", a->server);
			return CTL_EXIT_NOT_OAUTH;
		}
		if (!cs) {
			fprintf(stderr, "mcpctl: no server named \"%s\" in %s (not_found)\n", a->server, file);
			return CTL_EXIT_NOT_FOUND;
		}
	}
	/* Never create a store (or a master key) just to find it empty. */
	snprintf(path, sizeof(path), "%s/tokens.db", cfg->data_dir);
	if (path_missing(path)) {
		printf("the keeper is not running; no token store in %s: nothing to delete\n", cfg->data_dir);
		return CTL_EXIT_OK;
	}
	if (!(creds && *creds))
		snprintf(path, sizeof(path), "%s/master.key", cfg->data_dir);
	else
		snprintf(path, sizeof(path), "%s/master-key", creds);
	if (path_missing(path)) {
		fprintf(stderr, "mcpctl: the keeper is not running, and the master key %s is missing\n", path);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (store_load_master_key(cfg->data_dir, &key, err, sizeof(err)) < 0 ||
	    (r = store_open(cfg->data_dir, key, &store, err, sizeof(err))) != 0) {
		secret_free(key);
		fprintf(stderr, "mcpctl: the keeper is not running, and its store cannot be opened: %s\n", err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	secret_free(key);
	st.store = store;
	if (a->all) {
		r = store_list_keys(store, STORE_TOKENS, standalone_delete_all, &st);
		if (r < 0) {
			fprintf(stderr, "mcpctl: listing the stored tokens failed: %s\n", store_strerror(r));
			return CTL_EXIT_KEEPER_ERROR;
		}
		printf("the keeper is not running: deleted %d stored token%s directly in %s "
		       "(not revoked at the provider)\n",
		       st.deleted, st.deleted == 1 ? "" : "s", cfg->data_dir);
		return st.failed ? CTL_EXIT_KEEPER_ERROR : CTL_EXIT_OK;
	}
	{
		const struct config_server *cs = config_find_server(cfg, a->server);
		char skey[STORE_SERVER_KEY_MAX];

		if (store_server_key(cs->name, cs->url, skey, sizeof(skey)) < 0) {
			fprintf(stderr, "mcpctl: server name too long\n");
			return CTL_EXIT_USAGE;
		}
		r = store_delete(store, STORE_TOKENS, skey);
		if (r < 0) {
			fprintf(stderr, "mcpctl: deleting the token of %s failed: %s\n", a->server, store_strerror(r));
			return CTL_EXIT_KEEPER_ERROR;
		}
		if (r == STORE_E_NOT_FOUND)
			printf("the keeper is not running; %s had no stored token\n", a->server);
		else
			printf("the keeper is not running: deleted the stored token of %s directly in %s "
			       "(not revoked at the provider)\n",
			       a->server, cfg->data_dir);
	}
	return CTL_EXIT_OK;
}

static int cmd_auth(struct ctl *c, int argc, char **argv)
{
	if (argc < 2)
		return usage_error("auth needs a subcommand: login, logout or status");
	if (strcmp(argv[1], "login") == 0)
		return cmd_auth_login(c, argc - 1, argv + 1);
	if (strcmp(argv[1], "logout") == 0)
		return cmd_auth_logout(c, argc - 1, argv + 1);
	if (strcmp(argv[1], "status") == 0)
		return cmd_auth_status(c, argc - 1, argv + 1);
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return CTL_EXIT_OK;
	}
	return usage_error("auth: unknown subcommand '%s' (login, logout or status)", argv[1]);
}

/* ---- events ---- */

static bool events_json;

static void event_note(struct ctl *c, const struct rpc_msg *m)
{
	struct json_object *type, *data, *ts = NULL;
	char when[40] = "?";

	if (strcmp(m->method, METHOD_EVENT) != 0)
		return;
	if (events_json) {
		/* One event per line, for line-reading scripts. */
		printf("%s\n", json_object_to_json_string_ext(m->params, JSON_C_TO_STRING_PLAIN));
		fflush(stdout);
		return;
	}
	if (!json_object_object_get_ex(m->params, "type", &type) || !json_object_object_get_ex(m->params, "data", &data))
		return;
	if (json_object_object_get_ex(m->params, "timestamp", &ts) && json_object_is_type(ts, json_type_string))
		snprintf(when, sizeof(when), "%s", json_object_get_string(ts));
	else if (ts && json_object_is_type(ts, json_type_int)) {
		time_t t = (time_t)json_object_get_int64(ts);
		struct tm tm;

		if (gmtime_r(&t, &tm))
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	}
	{
		_cleanup_(freep) char *ty = text_clean(json_object_get_string(type));

		printf("%s  %s", when, ty);
	}
	json_object_object_foreach(data, key, val) {
		_cleanup_(freep) char *k = text_clean(key), *v = text_clean(val ? json_object_get_string(val) : "null");

		printf("  %s=%s", k, v);
	}
	printf("\n");
	fflush(stdout);
}

/* Subscribes, then prints every event until the keeper goes away. */
static int cmd_events(struct ctl *c, int argc, char **argv)
{
	struct rpc_msg reply = { 0 };
	_cleanup_(closep) int fd = -1;
	_cleanup_(evbuffer_freep) struct evbuffer *buf = NULL;
	bool json = false;
	int r = parse_query_opts("events", argc, argv, &json, NULL);

	if (r)
		return r < 0 ? CTL_EXIT_OK : r;
	events_json = json;
	r = ctl_find_socket(c);
	if (r)
		return r;
	signal(SIGPIPE, SIG_IGN);
	r = ctl_exchange(c, METHOD_EVENTS_SUBSCRIBE, NULL, &reply, &fd, &buf);
	if (r)
		return r;
	rpc_msg_clear(&reply);
	if (!json) {
		printf("following events from %s (Ctrl-C ends)\n", c->socket_path);
		fflush(stdout);
	}
	for (;;) {
		struct rpc_msg m = { 0 };
		char detail[256] = "";

		r = frame_read_fd(fd, buf, PROTO_MAX_MESSAGE, &m, -1, detail, sizeof(detail));
		if (r == -EPIPE || r == -ECONNRESET) {
			fprintf(stderr, "mcpctl: the keeper closed the event stream\n");
			return CTL_EXIT_UNREACHABLE;
		}
		if (r) {
			rpc_msg_clear(&m);
			fprintf(stderr, "mcpctl: malformed event from the keeper: %s\n",
				detail[0] ? detail : frame_strerror(r));
			return CTL_EXIT_PROTOCOL;
		}
		if (m.type == RPC_NOTIFICATION)
			event_note(c, &m);
		rpc_msg_clear(&m);
		if (ferror(stdout))
			return CTL_EXIT_KEEPER_ERROR;
	}
}

/* ---- connect: the stdio bridge an MCP client launches ---- */

#define RELAY_LIMIT PROTO_MAX_MESSAGE

static void write_all_fd(int fd, struct evbuffer *b)
{
	while (evbuffer_get_length(b) > 0) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };

		if (evbuffer_write(b, fd) < 0 && errno != EAGAIN && errno != EINTR)
			return;
		if (evbuffer_get_length(b) > 0)
			poll(&p, 1, 1000);
	}
}

/* The keeper could not connect us: answer what the client already asked. */
static void answer_pending_stdin(const char *server, const char *why)
{
	struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
	struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
	char msg[512];

	if (!in || !out)
		return;
	snprintf(msg, sizeof(msg), "mcpkeeper: cannot connect to %s: %s", server, why);
	fd_set_nonblock(STDIN_FILENO, 1);
	while (poll(&p, 1, 100) > 0 && evbuffer_read(in, STDIN_FILENO, 65536) > 0) {
		struct rpc_msg m;

		while (frame_read(in, RELAY_LIMIT, &m, NULL, 0) != FRAME_NEED_MORE) {
			if (m.root && m.type == RPC_REQUEST) {
				struct json_object *e = rpc_error(m.id, RPC_INTERNAL_ERROR, KIND_UNAVAILABLE, msg);

				frame_write(out, e, RELAY_LIMIT);
				json_object_put(e);
			}
			rpc_msg_clear(&m);
			if (!evbuffer_get_length(in))
				break;
		}
	}
	write_all_fd(STDOUT_FILENO, out);
	evbuffer_free(in);
	evbuffer_free(out);
}

/* Pipes or sockets, which the worker can wait on; a terminal or a file is
 * bridged (and a terminal must not be made non-blocking under its shell). */
static bool stdio_can_hand_over(void)
{
	struct stat in, out;

	return fstat(STDIN_FILENO, &in) == 0 && fstat(STDOUT_FILENO, &out) == 0 &&
	       (S_ISFIFO(in.st_mode) || S_ISSOCK(in.st_mode)) && (S_ISFIFO(out.st_mode) || S_ISSOCK(out.st_mode));
}

/*
 * After the handover: nothing to relay, only the end of the session to
 * wait for. The worker says session.closed; a socket that closes without
 * it lost its worker.
 */
static int connect_wait_end(const char *server, int sock)
{
	_cleanup_(evbuffer_freep) struct evbuffer *in = evbuffer_new();
	struct json_object *v;
	struct rpc_msg m = { 0 };
	char detail[128] = "";
	int r;

	if (!in)
		out_of_memory();
	r = frame_read_fd(sock, in, 4096, &m, -1, detail, sizeof(detail));
	if (r == -EPIPE || r == -ECONNRESET) {
		fprintf(stderr, "mcpctl: connect %s: the worker closed the connection (it was killed or crashed); "
				"requests in flight were not answered\n", server);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (r < 0) {
		fprintf(stderr, "mcpctl: connect %s: %s\n", server, strerror(-r));
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (r > 0 || m.type != RPC_NOTIFICATION || strcmp(m.method, METHOD_SESSION_CLOSED) != 0 || !m.params ||
	    !json_object_object_get_ex(m.params, "clean", &v) || !json_object_is_type(v, json_type_boolean)) {
		fprintf(stderr, "mcpctl: connect %s: the worker sent something other than the end of the session\n",
			server);
		rpc_msg_clear(&m);
		return CTL_EXIT_PROTOCOL;
	}
	if (json_object_get_boolean(v)) {
		rpc_msg_clear(&m);
		return CTL_EXIT_OK;
	}
	if (!json_object_object_get_ex(m.params, "reason", &v) || !json_object_is_type(v, json_type_string))
		v = NULL;
	fprintf(stderr, "mcpctl: connect %s: the session ended: %s\n", server,
		v ? json_object_get_string(v) : "(no reason given)");
	rpc_msg_clear(&m);
	return CTL_EXIT_KEEPER_ERROR;
}

/* Gives stdin and stdout to the worker on sock (proto.h, connect). */
static int connect_hand_over(const char *server, int sock)
{
	static const unsigned char byte = CONNECT_STDIO_BYTE;
	const int fds[2] = { STDIN_FILENO, STDOUT_FILENO };
	int r = sock_send_fds(sock, fds, 2, &byte, 1), null;

	if (r < 0) {
		fprintf(stderr, "mcpctl: connect %s: cannot hand stdin and stdout to the worker: %s\n", server,
			strerror(-r));
		answer_pending_stdin(server, "its worker went away");
		return CTL_EXIT_KEEPER_ERROR;
	}
	/* Ours would hold the client's pipes open after the worker is done. */
	null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(null, STDOUT_FILENO) < 0) {
		fprintf(stderr, "mcpctl: connect %s: /dev/null: %s\n", server, strerror(errno));
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (null > STDOUT_FILENO)
		close(null);
	return connect_wait_end(server, sock);
}

static int cmd_connect(struct ctl *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "bridge", no_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	_cleanup_(closep) int sock = -1;
	_cleanup_(evbuffer_freep) struct evbuffer *early = NULL;
	struct rpc_msg reply = { 0 };
	struct json_object *params;
	bool bridge = false, hand_over;
	const char *server;
	int o, r;

	optind = 0;
	opterr = 0;
	while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (o) {
		case 'b':
			bridge = true;
			break;
		case 'h':
			usage(stdout);
			return CTL_EXIT_OK;
		default:
			return option_error("connect", o, argc, argv);
		}
	}
	if (argc - optind != 1)
		return usage_error("connect takes one server name");
	server = argv[optind];
	hand_over = !bridge && stdio_can_hand_over();
	r = ctl_find_socket(c);
	if (r) {
		answer_pending_stdin(server, "the keeper's socket cannot be found");
		return r;
	}
	params = json_object_new_object();
	json_object_object_add(params, "server", json_object_new_string(server));
	if (hand_over)
		json_object_object_add(params, "stdio", json_object_new_boolean(1));
	r = ctl_exchange(c, METHOD_CONNECT, params, &reply, &sock, &early);
	if (r) {
		answer_pending_stdin(server, r == CTL_EXIT_UNREACHABLE ? "the keeper is not running"
					     : "the keeper refused the connection (see mcpctl's stderr)");
		return r;
	}
	rpc_msg_clear(&reply);
	/* From here on the keeper is out of the path: this socket is the worker's. */
	c->deadline_ms = 0;
	if (hand_over) {
		/* The worker holds its output until it has our stdout. */
		if (early && evbuffer_get_length(early) > 0) {
			fprintf(stderr, "mcpctl: connect %s: the worker wrote before it had stdout\n", server);
			return CTL_EXIT_PROTOCOL;
		}
		return connect_hand_over(server, sock);
	}
	r = bridge_run(server, sock, early);
	if (r == BRIDGE_DONE)
		return CTL_EXIT_OK;
	if (r == BRIDGE_E_PROTOCOL)
		return CTL_EXIT_PROTOCOL;
	if (r < 0)
		fprintf(stderr, "mcpctl: connect %s: %s\n", server, strerror(-r));
	return CTL_EXIT_KEEPER_ERROR;
}

static int cmd_help(struct ctl *c, int argc, char **argv)
{
	usage(stdout);
	return CTL_EXIT_OK;
}

static const struct {
	const char *name;
	int (*run)(struct ctl *c, int argc, char **argv);
} commands[] = {
	{ "help", cmd_help },
	{ "status", cmd_status },
	{ "servers", cmd_servers },
	{ "auth", cmd_auth },
	{ "events", cmd_events },
	{ "connect", cmd_connect },
};

static int parse_timeout(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < 0 || v > CTL_MAX_TIMEOUT_SEC)
		return -EINVAL;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	enum { OPT_SOCKET = 256, OPT_CONFIG, OPT_SYSTEM, OPT_TIMEOUT };
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "config", required_argument, NULL, OPT_CONFIG },
		{ "system", no_argument, NULL, OPT_SYSTEM },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct ctl c = { .timeout_sec = CTL_DEFAULT_TIMEOUT_SEC };
	const char *env;
	int o, r;

	log_init("mcpctl");
	/* Config warnings (unknown fields) are the keeper's to report. */
	log_set_level(LOG_LEVEL_ERROR);

	opterr = 0;
	while ((o = getopt_long(argc, argv, "+:hV", opts, NULL)) != -1) {
		switch (o) {
		case OPT_SOCKET:
			c.opt_socket = optarg;
			break;
		case OPT_CONFIG:
			c.opt_config = optarg;
			break;
		case OPT_SYSTEM:
			c.system_mode = true;
			break;
		case OPT_TIMEOUT:
			if (parse_timeout(optarg, &c.timeout_sec) < 0)
				return usage_error("--timeout: '%s' is not a number of seconds "
						   "between 0 and %.0f",
						   optarg, CTL_MAX_TIMEOUT_SEC);
			c.timeout_given = true;
			break;
		case 'V':
			printf("mcpctl %s\n", MCPKEEPER_VERSION);
			return CTL_EXIT_OK;
		case 'h':
			usage(stdout);
			return CTL_EXIT_OK;
		case ':':
			return usage_error("option '%s' needs an argument", argv[optind - 1]);
		default:
			if (optopt)
				return usage_error("unknown option '-%c'", optopt);
			return usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (!c.opt_config) {
		env = getenv("MCPKEEPER_CONFIG");
		if (env && *env)
			c.opt_config = env;
	}
	if (optind >= argc) {
		usage(stderr);
		return CTL_EXIT_USAGE;
	}
	if (c.timeout_sec > 0)
		c.deadline_ms = now_ms() + (int64_t)(c.timeout_sec * 1000 + 0.5);

	for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
		if (strcmp(argv[optind], commands[i].name) != 0)
			continue;
		r = commands[i].run(&c, argc - optind, argv + optind);
		if (fflush(stdout) != 0 || ferror(stdout)) {
			fprintf(stderr, "mcpctl: cannot write the output: %m\n");
			return r ? r : CTL_EXIT_KEEPER_ERROR;
		}
		return r;
	}
	return usage_error("unknown command '%s'", argv[optind]);
}
