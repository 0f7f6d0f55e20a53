/*
 * What a stdio upstream's sandbox shows, and entering it (jail-view.c).
 *
 * The keeper prepares a struct jail (daemon/jail.c: the system directories,
 * the config's grants, the project's own paths taken out) and hands it to
 * the worker it starts as a blob on fd CHILD_FD_JAIL; the worker, freshly
 * exec'd and holding nothing yet, reads it and enters the sandbox before
 * anything else (jail_enter()). Entering happens after the exec, not in the
 * keeper's forked child, because a process must be dumpable to write its
 * own uid_map, and a forked keeper holds the keeper's memory.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

enum jail_mechanism {
	JAIL_OFF = 0,		/* "sandbox": false */
	JAIL_NAMESPACES,	/* user, mount and pid namespaces, an empty root */
	JAIL_LANDLOCK,		/* Landlock allow-list and a seccomp filter */
};

/* One path the sandbox shows: read-only, or writable. */
struct jail_path {
	char *path;
	bool write;
};

struct jail {
	bool enabled;			/* false: "sandbox": false */
	bool try_namespaces;		/* the mechanisms this start may use */
	bool try_landlock;
	char *dir;			/* the server's own directory: SANDBOX_ROOT/NAME */
	char *home, *tmp, *base;	/* dir/home, dir/tmp, dir/.root */
	struct jail_path *paths;	/* what it may see, after hiding the project */
	size_t n_paths;
};

/* At most this much of a serialised jail is read. */
#define JAIL_BLOB_MAX (8u << 20)

const char *jail_mechanism_name(enum jail_mechanism m);

/* The jail as a blob in a new memory file, positioned at its start:
 * the descriptor, or a negative errno value. */
int jail_to_memfd(const struct jail *j);

/*
 * In the worker, first thing: reads the blob on fd (and closes it), makes
 * the server's directories, enters the sandbox and drops every capability;
 * sets HOME and TMPDIR. In namespace mode the calling process stays
 * outside as a waiter that exits as its child does and never returns; the
 * child, pid 1 of the new namespaces, returns here. Returns the mechanism
 * (JAIL_OFF for "sandbox": false) or a negative errno value with why.
 */
int jail_enter_blob(int fd, char *why, size_t len);

void jail_clear(struct jail *j);
