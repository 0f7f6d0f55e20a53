/*
 * A child's side of its start: every program the keeper execs (the oauth
 * child, the http child, the workers) enters through these, so the three
 * cannot drift apart. The keeper's side is daemon/child.c.
 *
 *	int main(int argc, char **argv)
 *	{
 *		entry_start(&oauth_entry, argc, argv);	fd 3 (and 4), dumpable, signals
 *		...event base, channel_open(CHILD_FD_CHANNEL)...
 *	}
 *	static void oauth_hello(struct oauth *o, struct rpc_msg *m)
 *	{
 *		if (entry_hello_check(&oauth_entry, &o->chan, m) != 0)
 *			return;				refused and stopping
 *		...the role's own hello params (entry_hello_refuse() on error)...
 *		entry_sandbox(extra_paths, o->landlock, sizeof(o->landlock));
 *		entry_hello_reply(&o->chan, m, o->landlock, extra_result);
 *	}
 *
 * What a child may touch before the hello: its fds 0-4 and nothing else.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct channel;
struct json_object;
struct rpc_msg;

struct entry {
	const char *program;	/* "mcpkeeper-oauth": the log name, --version */
	const char *role;	/* ROLE_*: what the keeper's hello must name */
	bool descriptors;	/* fd 4 (CHILD_FD_DESCRIPTORS) carries descriptors */
};

/* entry_hello_check(): the hello was answered with an error (or was no
 * hello at all) and the channel is stopping with status 1. */
#define ENTRY_REFUSED 1

/*
 * At the top of main(): --version and --help; the log's name; no other
 * argument; not dumpable and no core file (exec reset both); fd 3 must be
 * the keeper's Unix stream socket and, with e->descriptors, fd 4 its
 * SOCK_SEQPACKET socket, both made close-on-exec and non-blocking before
 * anything is spawned; SIGTERM, SIGINT and SIGHUP ignored (the keeper ends
 * us by closing fd 3), SIGPIPE ignored; libsodium initialised. Any failure
 * is fatal(): a child that cannot start cleanly must not start.
 */
void entry_start(const struct entry *e, int argc, char **argv);

/*
 * The part of the hello every role shares: m must be the hello request,
 * with PROTO_VERSION and role e->role; its log_level applies from now on.
 * Returns 0, or ENTRY_REFUSED after answering (or, for a message that is
 * not a request, logging) why and stopping the channel.
 */
int entry_hello_check(const struct entry *e, struct channel *ch, const struct rpc_msg *m);

/* Refuses the hello: logs "hello refused: WHY; exiting", answers m with
 * error code and kind, and stops the channel with status 1. */
void entry_hello_refuse(struct channel *ch, const struct rpc_msg *m, int code, const char *kind, const char *why);

/* Answers the hello: {"version", "pid", "landlock"} plus the members of
 * extra (an object, consumed; NULL for none). */
void entry_hello_reply(struct channel *ch, const struct rpc_msg *m, const char *landlock, struct json_object *extra);

/*
 * Landlock for a child: read-only access beneath the system paths every
 * child needs (/etc, /usr, /lib, /lib64, /bin, /sbin, /dev/urandom), the CA
 * locations in $SSL_CERT_FILE and $SSL_CERT_DIR, our own /proc entry in
 * sanitizer builds (LeakSanitizer lists our threads at exit), and the
 * NULL-terminated extra paths (may be NULL); nothing writable, never the
 * state directory. Call it before any thread exists (curl's resolver makes
 * them, and they inherit it).
 *
 * Returns 0 when enforced or when the kernel has no Landlock (logged once:
 * the child then relies on its uid and file modes), or a negative errno
 * value. status gets "enforced", "unavailable" or what failed.
 */
int entry_sandbox(const char *const *extra, char *status, size_t len);
