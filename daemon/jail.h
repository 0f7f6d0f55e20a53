/*
 * The keeper's side of a stdio upstream's sandbox (jail.c): the sandbox
 * root beside the state directory, and the view each server gets
 * (struct jail, common/jail-view.h), handed to its worker on fd
 * CHILD_FD_JAIL.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "jail-view.h"

struct keeper;
struct config_server;

/* The sibling of the state directory that holds each server's HOME:
 * "<data_dir>-sandbox". Returns a new string. */
char *jail_root_of(const char *data_dir);

/*
 * Creates the sandbox root (jail_root_of()) when missing: 0700, and when
 * the keeper runs as root, owned by uid/gid (the workers' user); a keeper
 * that is not root refuses one that uid does not own. Called at keeper
 * start, before root is dropped. 0 or a negative errno value with err.
 */
int jail_root_prepare(const char *data_dir, unsigned uid, unsigned gid, char *err, size_t len);

/*
 * What server cs's worker may see: system directories and the config's
 * "sandbox" read and write lists, resolved, with the project's own paths
 * (state directory, runtime directory, config file, the credentials
 * directory, the sandbox root) taken out of them. NULL with err when the
 * server must not start: a granted path inside one of the project's, or
 * no sandbox mechanism this system offers.
 */
struct jail *jail_new(const struct keeper *k, const struct config_server *cs, char *err, size_t len);
struct jail *jail_free(struct jail *j);
