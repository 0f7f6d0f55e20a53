/*
 * The sandbox of a stdio upstream's worker and everything it starts
 * (jail.c). The keeper prepares it (jail_new(), in the keeper) and the
 * forked child enters it before it execs mcpkeeper-worker (jail_enter()).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct keeper;
struct config_server;

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

/* The sibling of the state directory that holds each server's HOME:
 * "<data_dir>-sandbox". Returns a new string. */
char *jail_root_of(const char *data_dir);

/*
 * Creates the sandbox root (jail_root_of()) when missing: 0700, and when
 * the keeper runs as root, owned by uid/gid (the workers' user). Called at
 * keeper start, before root is dropped. 0 or a negative errno value.
 */
int jail_root_prepare(const char *data_dir, unsigned uid, unsigned gid, char *err, size_t len);

/*
 * What server cs's worker may see: system directories and the config's
 * "sandbox" read and write lists, resolved, with the project's own paths
 * (state directory, runtime directory, config file, the credentials
 * directory, the sandbox root) taken out of them, and binary (the worker
 * to exec, which Landlock checks). NULL with err when the
 * server must not start: a granted path inside one of the project's, or
 * no sandbox mechanism this system offers.
 */
struct jail *jail_new(const struct keeper *k, const struct config_server *cs, const char *binary, char *err,
		     size_t len);
struct jail *jail_free(struct jail *j);

/*
 * In the forked child, after its uid switch and before exec: enters the
 * sandbox and sets HOME, TMPDIR and MCPKEEPER_JAIL (the mechanism's name,
 * for the worker's hello) in the environment. In namespace mode this
 * process becomes a waiter that never returns, and its child, pid 1 of
 * the new namespaces, returns here. Returns 0 or a negative errno value
 * (logged).
 */
int jail_enter(const struct jail *j, const char *label);

const char *jail_mechanism_name(enum jail_mechanism m);
