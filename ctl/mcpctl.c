/*
 * mcpctl: the operator's client of the keeper's control socket.
 *
 * It finds the socket (--socket, a config file, or the mode's default),
 * sends one JSON-RPC request through the framing module, waits for the reply
 * that carries the same id and prints it, as a table or as the keeper's own
 * JSON. It holds no token and opens nothing but the config file and the
 * socket: status replies carry metadata only, and mcpctl prints no field it
 * was not given.
 *
 * The exit codes are an interface that scripts test: they are listed in
 * usage() and in mcpctl.1 and must stay in step with both.
 */
#include <errno.h>
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
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "config.h"
#include "frame.h"
#include "log.h"
#include "paths.h"
#include "proto.h"
#include "sock.h"
#include "util.h"

enum {
	CTL_EXIT_OK = 0,
	CTL_EXIT_KEEPER_ERROR = 1,	/* also: mcpctl itself failed (memory, output) */
	CTL_EXIT_USAGE = 2,
	CTL_EXIT_UNREACHABLE = 3,
	CTL_EXIT_REFUSED = 4,
	CTL_EXIT_PROTOCOL = 5,
};

#define CTL_DEFAULT_TIMEOUT_SEC 10
#define CTL_MAX_TIMEOUT_SEC 86400.0
/* One request per connection, so one id is enough to match the reply. */
#define CTL_REQUEST_ID 1

struct ctl {
	/* Parsed options. */
	const char *opt_socket;
	const char *opt_config;		/* --config, else $MCPKEEPER_CONFIG */
	bool system_mode;
	double timeout_sec;		/* 0: wait forever */

	char socket_path[PATH_MAX];
	int64_t deadline_ms;		/* CLOCK_MONOTONIC; 0: none */
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: mcpctl [OPTIONS] COMMAND [ARGS]\n"
		"\n"
		"Talks to the mcpkeeper keeper (mcpkeeperd) over its control socket.\n"
		"\n"
		"Commands:\n"
		"  status [--json]     the keeper and each server: OAuth status, token\n"
		"                      expiry, refresh schedule, worker\n"
		"  servers [--json]    the configured servers\n"
		"  connect NAME        the stdio bridge an MCP client runs: relays stdin and\n"
		"                      stdout to NAME's worker (MCP client config:\n"
		"                      \"command\": \"mcpctl\", \"args\": [\"connect\", \"NAME\"])\n"
		"\n"
		"  --json prints the keeper's reply as JSON instead of a table.\n"
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
		"\n"
		"See mcpctl(1) for how the socket is found.\n",
		CTL_DEFAULT_TIMEOUT_SEC);
}

static int usage_error(const char *fmt, ...) _printf_(1, 2);

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
	struct json_object *req;
	char detail[256];
	int r;

	r = ctl_connect(c, &fd);
	if (r) {
		json_object_put(params);
		return r;
	}

	req = rpc_request(method, params, CTL_REQUEST_ID);
	if (!req)
		out_of_memory();
	r = frame_write_fd(fd, req, PROTO_MAX_MESSAGE, ctl_remaining_ms(c));
	json_object_put(req);
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
			rpc_msg_clear(&m);
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
			ctl_print_error(&m, "");
			rpc_msg_clear(&m);
			return CTL_EXIT_KEEPER_ERROR;
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

static int ctl_call(struct ctl *c, const char *method, struct rpc_msg *reply)
{
	return ctl_exchange(c, method, NULL, reply, NULL, NULL);
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

/* "41s", "41m", "5h12m", "3d4h": coarse on purpose, a table is read at a glance. */
static void duration_format(int64_t s, char *buf, size_t len)
{
	long long v = s < 0 ? 0 : (long long)s;

	if (v < 60)
		snprintf(buf, len, "%llds", v);
	else if (v < 3600)
		snprintf(buf, len, "%lldm", v / 60);
	else if (v < 86400 && (v % 3600) / 60)
		snprintf(buf, len, "%lldh%lldm", v / 3600, (v % 3600) / 60);
	else if (v < 86400)
		snprintf(buf, len, "%lldh", v / 3600);
	else if ((v % 86400) / 3600)
		snprintf(buf, len, "%lldd%lldh", v / 86400, (v % 86400) / 3600);
	else
		snprintf(buf, len, "%lldd", v / 86400);
}

/*
 * A table of text cells, columns as wide as their widest cell, and under a
 * row an optional note line. Every cell is cleaned of control characters.
 */
#define TABLE_MAX_COLS 6

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

/* "scheduled in 32m", "retrying (retry 2) in 4s", "failed". */
static void refresh_cell(struct json_object *srv, int64_t now, char *buf, size_t len)
{
	struct json_object *rf = field_child(srv, "refresh", json_type_object);
	const char *state = rf ? field_str(rf, "state") : NULL;
	char retry[32] = "", next[48] = "", d[32];
	int64_t n;

	if (!state) {
		snprintf(buf, len, "-");
		return;
	}
	if (field_int(rf, "retry_count", &n) && n > 0)
		snprintf(retry, sizeof(retry), " (retry %lld)", (long long)n);
	if (field_int(rf, "next_at", &n) && n > 0) {
		if (n > now) {
			duration_format(n - now, d, sizeof(d));
			snprintf(next, sizeof(next), " in %s", d);
		} else {
			snprintf(next, sizeof(next), " due now");
		}
	}
	snprintf(buf, len, "%s%s%s", state, retry, next);
}

static int status_print(struct json_object *result)
{
	struct table t = {
		.n_cols = 6,
		.head = { "NAME", "PROTOCOL", "OAUTH", "EXPIRES", "REFRESH", "WORKER" },
	};
	struct json_object *servers, *worker;
	_cleanup_(freep) char *version = NULL, *mode = NULL;
	const char *s;
	int64_t pid, now = (int64_t)time(NULL);
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
	if (field_int(result, "pid", &pid))
		printf("mcpkeeperd %s, pid %lld, %s mode, %zu server%s\n", version, (long long)pid,
		       mode, n, n == 1 ? "" : "s");
	else
		printf("mcpkeeperd %s, %s mode, %zu server%s\n", version, mode, n,
		       n == 1 ? "" : "s");
	if (!n)
		return 0;

	for (size_t i = 0; i < n; i++) {
		struct json_object *srv = json_object_array_get_idx(servers, i);
		struct table_row *row = table_add_row(&t);
		char cell[128];

		table_set(row, 0, field_str(srv, "name"));
		table_set(row, 1, field_str(srv, "protocol"));
		table_set(row, 2, field_str(srv, "oauth_status"));
		expires_cell(srv, now, cell, sizeof(cell));
		table_set(row, 3, cell);
		refresh_cell(srv, now, cell, sizeof(cell));
		table_set(row, 4, cell);
		worker = field_child(srv, "worker", json_type_object);
		table_set(row, 5, worker ? field_str(worker, "state") : NULL);

		worker = field_child(srv, "refresh", json_type_object);
		s = worker ? field_str(worker, "last_error") : NULL;
		if (s && *s) {
			_cleanup_(freep) char *e = text_clean(s);

			if (asprintf(&row->note, "last error: %s", e) < 0) {
				row->note = NULL;
				out_of_memory();
			}
		}
	}
	table_print(&t);
	table_clear(&t);
	return 0;
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

/* The options every read-only command takes: --json and --help. */
static int parse_json_flag(const char *cmd, int argc, char **argv, bool *json)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int o;

	optind = 0;	/* glibc: start over on the command's own arguments */
	opterr = 0;
	while ((o = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
		switch (o) {
		case 'j':
			*json = true;
			break;
		case 'h':
			usage(stdout);
			return -1;
		default:
			if (optopt)
				return usage_error("%s: unknown option '-%c'", cmd, optopt);
			return usage_error("%s: unknown option '%s'", cmd, argv[optind - 1]);
		}
	}
	if (optind < argc)
		return usage_error("%s: unexpected argument '%s'", cmd, argv[optind]);
	return 0;
}

/* Runs a method without params and prints its result with print(). */
static int run_query(struct ctl *c, int argc, char **argv, const char *method,
		     int (*print)(struct json_object *result))
{
	struct rpc_msg reply = { 0 };
	bool json = false;
	int r;

	r = parse_json_flag(argv[0], argc, argv, &json);
	if (r)
		return r < 0 ? CTL_EXIT_OK : r;
	r = ctl_find_socket(c);
	if (r)
		return r;

	/* Only while the socket is open: a keeper that closes early must not
	 * kill us before we read its reason. Afterwards, a closed stdout pipe
	 * ends mcpctl quietly as it does any filter. */
	signal(SIGPIPE, SIG_IGN);
	r = ctl_call(c, method, &reply);
	signal(SIGPIPE, SIG_DFL);
	if (r)
		return r;

	if (!json_object_is_type(reply.result, json_type_object))
		r = malformed(method, "the result is not an object");
	else if (json)
		print_json(reply.result);
	else
		r = print(reply.result);
	rpc_msg_clear(&reply);
	return r;
}

static int cmd_status(struct ctl *c, int argc, char **argv)
{
	return run_query(c, argc, argv, METHOD_STATUS, status_print);
}

static int cmd_servers(struct ctl *c, int argc, char **argv)
{
	return run_query(c, argc, argv, METHOD_SERVERS_LIST, servers_print);
}


/* ---- connect: the stdio bridge an MCP client launches ---- */

#define RELAY_LIMIT PROTO_MAX_MESSAGE

struct relay {
	const char *server;
	int sock;
	struct evbuffer *from_client, *to_sock, *from_sock, *to_client;
	struct json_object *in_flight;	/* requests sent upstream, keyed by their id's JSON */
	bool client_eof, sock_eof;
};

static const char *id_key(struct json_object *id)
{
	return json_object_to_json_string_ext(id, JSON_C_TO_STRING_PLAIN);
}

/* An error response for id on stdout (written by the relay loop). */
static void relay_error(struct relay *rl, struct json_object *id, int code, const char *message)
{
	struct json_object *e = rpc_error(id, code, KIND_UNAVAILABLE, message);

	if (e)
		frame_write(rl->to_client, e, RELAY_LIMIT);
	json_object_put(e);
}

static void relay_from_client(struct relay *rl)
{
	for (;;) {
		struct rpc_msg m;
		char detail[160] = "";
		int r = frame_read(rl->from_client, RELAY_LIMIT, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			return;
		if (r) {
			struct json_object *e = rpc_error_for_frame(r, detail);

			frame_write(rl->to_client, e, RELAY_LIMIT);
			json_object_put(e);
			rpc_msg_clear(&m);
			if (r == FRAME_E_TOO_LARGE)
				evbuffer_drain(rl->from_client, evbuffer_get_length(rl->from_client));
			continue;
		}
		if (m.type == RPC_REQUEST)
			json_object_object_add(rl->in_flight, id_key(m.id), NULL);
		frame_write(rl->to_sock, m.root, RELAY_LIMIT);
		rpc_msg_clear(&m);
	}
}

static int relay_from_sock(struct relay *rl)
{
	for (;;) {
		struct rpc_msg m;
		int r = frame_read(rl->from_sock, RELAY_LIMIT, &m, NULL, 0);

		if (r == FRAME_NEED_MORE)
			return 0;
		if (r) {
			rpc_msg_clear(&m);
			fprintf(stderr, "mcpctl: connect %s: the worker sent a malformed message (%s)\n", rl->server,
				frame_strerror(r));
			return -1;
		}
		if ((m.type == RPC_RESULT || m.type == RPC_ERROR) && m.id)
			json_object_object_del(rl->in_flight, id_key(m.id));
		frame_write(rl->to_client, m.root, RELAY_LIMIT);
		rpc_msg_clear(&m);
	}
}

/* The worker side went away: every request still in flight gets an error. */
static void relay_fail_in_flight(struct relay *rl, const char *why)
{
	char msg[256];

	snprintf(msg, sizeof(msg), "mcpkeeper: the connection to %s was lost (%s); retry", rl->server, why);
	json_object_object_foreach(rl->in_flight, key, val) {
		struct json_object *id = json_tokener_parse(key);

		(void)val;
		relay_error(rl, id, RPC_INTERNAL_ERROR, msg);
		json_object_put(id);
	}
}

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

static int relay_run(struct relay *rl)
{
	fd_set_nonblock(STDIN_FILENO, 1);
	fd_set_nonblock(STDOUT_FILENO, 1);
	fd_set_nonblock(rl->sock, 1);
	if (relay_from_sock(rl) < 0)
		return CTL_EXIT_PROTOCOL;
	while (!rl->sock_eof) {
		struct pollfd p[3] = {
			{ .fd = rl->client_eof ? -1 : STDIN_FILENO, .events = POLLIN },
			{ .fd = rl->sock, .events = POLLIN | (evbuffer_get_length(rl->to_sock) ? POLLOUT : 0) },
			{ .fd = evbuffer_get_length(rl->to_client) ? STDOUT_FILENO : -1, .events = POLLOUT },
		};

		/* Do not read more of one side than the other side can take. */
		if (evbuffer_get_length(rl->to_sock) > 4 * RELAY_LIMIT)
			p[0].fd = -1;
		if (evbuffer_get_length(rl->to_client) > 4 * RELAY_LIMIT)
			p[1].events &= ~POLLIN;
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return CTL_EXIT_KEEPER_ERROR;
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			int n = evbuffer_read(rl->from_client, STDIN_FILENO, 65536);

			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
				rl->client_eof = true;
				write_all_fd(rl->sock, rl->to_sock);
				shutdown(rl->sock, SHUT_WR);
			}
			relay_from_client(rl);
		}
		if (p[1].revents & POLLOUT)
			evbuffer_write(rl->to_sock, rl->sock);
		if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
			int n = evbuffer_read(rl->from_sock, rl->sock, 65536);

			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				rl->sock_eof = true;
			if (relay_from_sock(rl) < 0)
				rl->sock_eof = true;
		}
		if (p[2].revents & POLLOUT)
			evbuffer_write(rl->to_client, STDOUT_FILENO);
		if (p[2].revents & (POLLHUP | POLLERR))
			return CTL_EXIT_OK; /* the MCP client is gone */
	}
	if (json_object_object_length(rl->in_flight) > 0 || !rl->client_eof) {
		relay_fail_in_flight(rl, "the worker closed the connection");
		write_all_fd(STDOUT_FILENO, rl->to_client);
		fprintf(stderr, "mcpctl: connect %s: the worker closed the connection\n", rl->server);
		return CTL_EXIT_KEEPER_ERROR;
	}
	write_all_fd(STDOUT_FILENO, rl->to_client);
	return CTL_EXIT_OK;
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

static int cmd_connect(struct ctl *c, int argc, char **argv)
{
	struct relay rl = { 0 };
	struct rpc_msg reply = { 0 };
	struct json_object *params;
	int r;

	if (argc != 2)
		return usage_error("connect takes one server name");
	rl.server = argv[1];
	r = ctl_find_socket(c);
	if (r) {
		answer_pending_stdin(rl.server, "the keeper's socket cannot be found");
		return r;
	}
	params = json_object_new_object();
	json_object_object_add(params, "server", json_object_new_string(rl.server));
	rl.from_sock = NULL;
	r = ctl_exchange(c, METHOD_CONNECT, params, &reply, &rl.sock, &rl.from_sock);
	if (r) {
		answer_pending_stdin(rl.server, r == CTL_EXIT_UNREACHABLE ? "the keeper is not running"
						: "the keeper refused the connection (see mcpctl's stderr)");
		return r;
	}
	rpc_msg_clear(&reply);
	/* From here on the keeper is out of the path: this socket is the worker's. */
	c->deadline_ms = 0;
	rl.from_client = evbuffer_new();
	rl.to_sock = evbuffer_new();
	rl.to_client = evbuffer_new();
	rl.in_flight = json_object_new_object();
	if (!rl.from_client || !rl.to_sock || !rl.to_client || !rl.in_flight)
		out_of_memory();
	r = relay_run(&rl);
	close(rl.sock);
	evbuffer_free(rl.from_client);
	evbuffer_free(rl.to_sock);
	evbuffer_free(rl.from_sock);
	evbuffer_free(rl.to_client);
	json_object_put(rl.in_flight);
	return r;
}

static const struct {
	const char *name;
	int (*run)(struct ctl *c, int argc, char **argv);
} commands[] = {
	{ "status", cmd_status },
	{ "servers", cmd_servers },
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
