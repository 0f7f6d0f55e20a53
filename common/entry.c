/*
 * The start of every child of the keeper (entry.h): descriptors, dumpable,
 * signals, the shared part of the hello and the Landlock path list. It may
 * touch fds 3 and 4, signal dispositions and the process's own limits.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>
#include <sodium.h>

#include "channel.h"
#include "entry.h"
#include "frame.h"
#include "log.h"
#include "params.h"
#include "proto.h"
#include "sandbox.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define ENTRY_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ENTRY_SANITIZER 1
#endif
#endif

/* At most this many extra Landlock paths per role. */
#define ENTRY_EXTRA_MAX 8

static void fd_check(int fd, int want_type)
{
	struct stat st;
	int domain = 0, type = 0;
	socklen_t len = sizeof(domain), tlen = sizeof(type);

	if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode) ||
	    getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 || domain != AF_UNIX ||
	    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != want_type)
		fatal("fd %d is not the expected Unix socket: this program must be started by mcpkeeperd", fd);
	/* Before anything is spawned: a stdio command must not inherit them. */
	if (fd_set_cloexec(fd, 1) < 0 || fd_set_nonblock(fd, 1) < 0)
		fatal("cannot set up fd %d: %m", fd);
}

void entry_start(const struct entry *e, int argc, char **argv)
{
	if (argc == 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
		printf("%s %s\n", e->program, MCPKEEPER_VERSION);
		exit(0);
	}
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		printf("Usage: %s --version | --help\n"
		       "The keeper (mcpkeeperd) starts its %s child itself; it is not run by hand.\n",
		       e->program, e->role);
		exit(0);
	}
	log_init(e->program);
	if (argc > 1)
		fatal("takes no arguments: this program must be started by mcpkeeperd");
	/* exec reset both: no core file, no ptrace, no /proc/PID/mem for our peers. */
	if (proc_no_core_dumps() < 0)
		fatal("cannot disable core dumps: %m");
	fd_check(CHILD_FD_CHANNEL, SOCK_STREAM);
	if (e->descriptors)
		fd_check(CHILD_FD_DESCRIPTORS, SOCK_SEQPACKET);
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	if (sodium_init() < 0)
		fatal("libsodium initialisation failed");
}

void entry_hello_refuse(struct channel *ch, const struct rpc_msg *m, int code, const char *kind, const char *why)
{
	log_error("hello refused: %s; exiting", why);
	channel_send(ch, rpc_error(m->id, code, kind, why));
	channel_stop(ch, 1);
}

struct hello_params {
	int64_t version;
	const char *role;
	const char *log_level;
};

static const struct param_spec hello_spec[] = {
	PARAM_INT(struct hello_params, version, PARAM_KEY_VERSION, PARAM_REQUIRED, 0, 0),
	PARAM_STRING(struct hello_params, role, PARAM_KEY_ROLE, PARAM_REQUIRED),
	PARAM_STRING(struct hello_params, log_level, PARAM_KEY_LOG_LEVEL, 0),
};

int entry_hello_check(const struct entry *e, struct channel *ch, const struct rpc_msg *m)
{
	struct hello_params p = { .version = -1 };
	const char *bad;
	char why[160];

	if (m->type != RPC_REQUEST || strcmp(m->method, METHOD_HELLO) != 0) {
		log_error("keeper sent %s before the hello; exiting", m->method ? m->method : "a reply");
		if (m->type == RPC_REQUEST)
			channel_send(ch, rpc_error(m->id, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST, "hello expected"));
		channel_stop(ch, 1);
		return ENTRY_REFUSED;
	}
	if (params_parse(m->params, hello_spec, ARRAY_SIZE(hello_spec), &p, &bad) < 0 &&
	    strcmp(bad, PARAM_KEY_VERSION) != 0 && strcmp(bad, "params") != 0) {
		entry_hello_refuse(ch, m, RPC_INVALID_PARAMS, KIND_INVALID_PARAMS,
				   params_strerror(hello_spec, ARRAY_SIZE(hello_spec), bad, why, sizeof(why)));
		return ENTRY_REFUSED;
	}
	/* The version first: a keeper of another release may send anything else. */
	if (p.version != PROTO_VERSION) {
		snprintf(why, sizeof(why), "protocol version %lld not supported (this child speaks %d)",
			 (long long)p.version, PROTO_VERSION);
		entry_hello_refuse(ch, m, RPC_INVALID_PARAMS, KIND_INVALID_PARAMS, why);
		return ENTRY_REFUSED;
	}
	if (strcmp(p.role, e->role) != 0) {
		snprintf(why, sizeof(why), "this is the %s child, not %.32s", e->role, p.role);
		entry_hello_refuse(ch, m, RPC_INVALID_PARAMS, KIND_INVALID_PARAMS, why);
		return ENTRY_REFUSED;
	}
	if (p.log_level) {
		enum log_level l;

		if (log_level_parse(p.log_level, &l) == 0)
			log_set_level(l);
		else
			log_warn("hello: unknown log_level %.32s, keeping the default", p.log_level);
	}
	return 0;
}

void entry_hello_reply(struct channel *ch, const struct rpc_msg *m, const char *landlock, struct json_object *extra)
{
	struct json_object *result = json_object_new_object();

	json_object_object_add(result, PARAM_KEY_VERSION, json_object_new_int(PROTO_VERSION));
	json_object_object_add(result, PARAM_KEY_PID, json_object_new_int((int)getpid()));
	json_object_object_add(result, PARAM_KEY_LANDLOCK, json_object_new_string(landlock));
	if (extra) {
		json_object_object_foreach(extra, key, val)
			json_object_object_add(result, key, json_object_get(val));
		json_object_put(extra);
	}
	channel_send(ch, rpc_result(m->id, result));
}

int entry_sandbox(const char *const *extra, char *status, size_t len)
{
	const char *base[] = { "/etc", "/usr", "/lib", "/lib64", "/bin", "/sbin", "/dev/urandom",
			       getenv("SSL_CERT_FILE"), getenv("SSL_CERT_DIR"),
#ifdef ENTRY_SANITIZER
			       "/proc/self",
#endif
	};
	const char *paths[ARRAY_SIZE(base) + ENTRY_EXTRA_MAX + 1];
	size_t n = 0;
	int r;

	/* Only absolute paths: an empty or relative $SSL_CERT_DIR is no grant. */
	for (size_t i = 0; i < ARRAY_SIZE(base); i++)
		if (base[i] && base[i][0] == '/')
			paths[n++] = base[i];
	for (size_t i = 0; extra && extra[i]; i++) {
		if (i >= ENTRY_EXTRA_MAX)
			fatal("more than %d extra Landlock paths", ENTRY_EXTRA_MAX);
		if (extra[i][0] == '/')
			paths[n++] = extra[i];
	}
	paths[n] = NULL;
	r = sandbox_landlock_readonly(paths, status, len);
	if (r == SANDBOX_UNAVAILABLE) {
		log_info("Landlock is not available on this kernel; relying on uid and file modes");
		return 0;
	}
	return r;
}
