/*
 * Where things live, per mode (DESIGN.md, Configuration).
 *
 * System mode (--system, or started by the system's systemd: INVOCATION_ID,
 * NOTIFY_SOCKET or our LISTEN_PID set, and no XDG_RUNTIME_DIR, which a user
 * manager would have set): /etc/mcpkeeper/config.json,
 * /var/lib/mcpkeeper, /run/mcpkeeper.
 * User mode: $XDG_CONFIG_HOME/mcpkeeper/config.json (~/.config),
 * $XDG_STATE_HOME/mcpkeeper (~/.local/state), $XDG_RUNTIME_DIR/mcpkeeper.
 * Without XDG_RUNTIME_DIR, a private directory /tmp/mcpkeeper-UID that the user
 * owns, created 0700 and checked (owner, mode, not a symlink); a directory
 * that fails the check is refused, never used.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* True when --system was given or systemd started this process. */
bool paths_system_mode(bool flag_system);

/* Each returns 0 and writes a NUL-terminated path into buf, or a negative
 * errno value (-ENAMETOOLONG, -ENOENT when HOME is needed and unset). */
int paths_config_file(bool system_mode, char *buf, size_t len);
int paths_data_dir(bool system_mode, char *buf, size_t len);
int paths_runtime_dir(bool system_mode, char *buf, size_t len);

/*
 * Creates dir (and missing parents) 0700 if absent, then checks that it is a
 * real directory (not a symlink), owned by the effective uid and not
 * accessible to group or others. Returns 0, or a negative errno value with a
 * message in err: -EPERM wrong owner, -EACCES mode too open, -ELOOP symlink,
 * -ENOTDIR not a directory.
 */
int paths_ensure_private_dir(const char *dir, char *err, size_t errlen);

/*
 * The keeper's runtime directory (where it binds control.sock), created when
 * absent (user mode: with its parents, 0700; system mode: 0750, so that the
 * keeper's group can reach the socket), then checked: a real directory (not
 * a symlink), owned by the effective uid (system mode also: root or
 * keeper_user, the user a root start becomes), with no write bit for group
 * or others. Returns 0, or a negative errno value with a message naming the
 * directory and the problem in err: -ELOOP symlink, -ENOTDIR, -EPERM owner,
 * -EACCES mode.
 */
int paths_check_runtime_dir(const char *dir, bool system_mode, uid_t keeper_user, char *err, size_t errlen);

/*
 * Where the keeper's children and the web UI are.
 *
 * An installed keeper uses only the install paths: LIBEXECDIR/NAME and
 * DATADIR/mcpkeeper/ui. A keeper that is this build tree's own
 * daemon/mcpkeeperd (built with -Ddev_paths=true, the default) uses the
 * tree's binaries (daemon/oauth/, daemon/http/, worker/) and daemon/http/ui,
 * and for tests honours $MCPKEEPER_UI_DIR and $MCPKEEPER_LIBEXECDIR (a child
 * binary that exists there wins over the tree's).
 * Packagers build with -Ddev_paths=false, which leaves all of that out.
 *
 * paths_child_binary() writes the path of child binary name (CHILD_*_BIN)
 * and paths_ui_dir() the web UI's directory; both return 0 or
 * -ENAMETOOLONG. Whether the file exists is the caller's check, made as the
 * keeper (child_start() opens it before any uid switch).
 */
bool paths_dev_tree(void);
/* Whether this program is one of the build tree's (any of them, under
 * BUILD_ROOT; always false with -Ddev_paths=false): mcpctl's test knobs. */
bool paths_in_build_tree(void);
int paths_child_binary(const char *name, char *buf, size_t len);
int paths_ui_dir(char *buf, size_t len);
