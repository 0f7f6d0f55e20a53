/*
 * Self-imposed filesystem sandbox for children (Landlock).
 *
 * In user mode every process shares the user's uid, so file modes do not
 * keep a child out of the state directory (master key, database). A child
 * that talks to the network restricts itself, before it reads any input,
 * to reading (and mapping libraries) beneath a few system paths; it can
 * write nowhere. Descriptors it already holds keep working.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

enum {
	SANDBOX_UNAVAILABLE = 1, /* the kernel has no Landlock, or it is disabled */
};

/*
 * Sets PR_SET_NO_NEW_PRIVS, then allows only read access (files and
 * directory listings, and execute for directories) beneath each of the
 * NULL-terminated read_paths; a path naming a file gets a file rule, a path
 * that does not exist is skipped. Applies to the calling thread and to
 * threads and processes it creates afterwards: call it before creating any.
 *
 * Returns 0 when enforced, SANDBOX_UNAVAILABLE when the kernel lacks
 * Landlock, or a negative errno value. status (when not NULL) gets
 * "enforced", "unavailable" or a short description of the failure.
 */
int sandbox_landlock_readonly(const char *const *read_paths, char *status, size_t len);

/* One Landlock grant: a path and whether it may be written (and executed). */
struct sandbox_rule {
	const char *path;
	bool write;
};

/*
 * The sandbox of a stdio upstream without namespaces (daemon/jail.c): sets
 * PR_SET_NO_NEW_PRIVS, then allows beneath each rule's path reading,
 * listing and executing, and for write rules every change as well; on
 * kernels with Landlock ABI 6 or newer also scopes signals and abstract
 * Unix sockets to the sandbox. Paths that do not exist are skipped.
 * Returns 0, SANDBOX_UNAVAILABLE, or a negative errno value (with status).
 */
int sandbox_landlock(const struct sandbox_rule *rules, size_t n, char *status, size_t len);

/*
 * A seccomp filter that makes socket(AF_UNIX, ...) fail with EACCES (no
 * Landlock ABI covers connect() to a pathname socket; socketpair() stays)
 * and io_uring_setup() fail with ENOSYS (its requests would bypass the
 * filter). Needs PR_SET_NO_NEW_PRIVS, which sandbox_landlock() sets.
 */
int sandbox_deny_unix_sockets(void);

/*
 * O_PATH of path when no component of it is a symbolic link (openat2 with
 * RESOLVE_NO_SYMLINKS): a path the keeper resolved that has turned into a
 * link since (planted by a sandboxed command in a folder it may write) is
 * not followed. The descriptor, or a negative errno value (-ELOOP then).
 */
int sandbox_open_nofollow(const char *path);
