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
