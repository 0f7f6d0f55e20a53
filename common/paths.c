/*
 * See paths.h. Decides where the config, the state and the runtime
 * directory live. The only directory created here is the /tmp fallback for
 * the runtime directory, because /tmp is shared with every other user: a
 * path there may only be used after checking that we made it and nobody
 * else can reach into it.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "config-paths.h"
#include "log.h"
#include "paths.h"
#include "proto.h"

#define PATHS_SYSTEM_CONFIG "/etc/mcpkeeper/config.json"
#define PATHS_SYSTEM_DATA "/var/lib/mcpkeeper"
#define PATHS_SYSTEM_RUNTIME "/run/mcpkeeper"

static bool env_set(const char *name)
{
	const char *v = getenv(name);

	return v && *v;
}

/* systemd sets LISTEN_PID for the process it handed sockets to; an inherited
 * value names some other process and means nothing to us. */
static bool listen_pid_is_ours(void)
{
	const char *v = getenv("LISTEN_PID");
	unsigned long pid;
	char *end;

	if (!v || !*v)
		return false;
	errno = 0;
	pid = strtoul(v, &end, 10);
	if (errno || *end || v[0] == '-')
		return false;
	return pid == (unsigned long)getpid();
}

bool paths_system_mode(bool flag_system)
{
	if (flag_system)
		return true;
	/*
	 * A user manager (systemctl --user) starts its services with
	 * XDG_RUNTIME_DIR set; the system manager does not. That tells a user
	 * service, which stays in user mode, from the system service.
	 */
	if (env_set("XDG_RUNTIME_DIR"))
		return false;
	return env_set("INVOCATION_ID") || env_set("NOTIFY_SOCKET") || listen_pid_is_ours();
}

static int path_format(char *buf, size_t len, const char *fmt, ...) _printf_(3, 4);

static int path_format(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (len == 0)
		return -ENAMETOOLONG;
	va_start(ap, fmt);
	n = vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	if ((size_t)n >= len) {
		buf[0] = '\0';
		return -ENAMETOOLONG;
	}
	return 0;
}

/* The XDG base directory spec says relative values are to be ignored. */
static const char *env_absolute(const char *name)
{
	const char *v = getenv(name);

	return v && v[0] == '/' ? v : NULL;
}

/* $XDG_VAR/mcpkeeper[/leaf], else $HOME/home_rel/mcpkeeper[/leaf]. */
static int user_path(const char *xdg_var, const char *home_rel, const char *leaf, char *buf,
		     size_t len)
{
	const char *base = env_absolute(xdg_var);
	const char *sep = leaf ? "/" : "";

	if (!leaf)
		leaf = "";
	if (base)
		return path_format(buf, len, "%s/mcpkeeper%s%s", base, sep, leaf);

	base = env_absolute("HOME");
	if (!base)
		return -ENOENT;
	return path_format(buf, len, "%s/%s/mcpkeeper%s%s", base, home_rel, sep, leaf);
}

int paths_config_file(bool system_mode, char *buf, size_t len)
{
	if (system_mode)
		return path_format(buf, len, "%s", PATHS_SYSTEM_CONFIG);
	return user_path("XDG_CONFIG_HOME", ".config", "config.json", buf, len);
}

int paths_data_dir(bool system_mode, char *buf, size_t len)
{
	if (system_mode)
		return path_format(buf, len, "%s", PATHS_SYSTEM_DATA);
	return user_path("XDG_STATE_HOME", ".local/state", NULL, buf, len);
}

int paths_runtime_dir(bool system_mode, char *buf, size_t len)
{
	const char *xdg;
	char err[512];
	int r;

	if (system_mode)
		return path_format(buf, len, "%s", PATHS_SYSTEM_RUNTIME);

	xdg = env_absolute("XDG_RUNTIME_DIR");
	if (xdg)
		return path_format(buf, len, "%s/mcpkeeper", xdg);

	/*
	 * No login session gave us a private runtime directory. A fixed name
	 * in /tmp can be squatted by another user, so it is only returned once
	 * it has been checked; the caller has no error buffer, hence the log.
	 */
	r = path_format(buf, len, "/tmp/mcpkeeper-%u", (unsigned)geteuid());
	if (r < 0)
		return r;
	r = paths_ensure_private_dir(buf, err, sizeof(err));
	if (r < 0) {
		log_error("%s", err);
		buf[0] = '\0';
		return r;
	}
	return 0;
}

static int dir_error(char *err, size_t errlen, int r, const char *fmt, ...) _printf_(4, 5);

static int dir_error(char *err, size_t errlen, int r, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return r;
}

/* mkdir -p, every missing component 0700: parents we create hold nothing
 * but our directory, so there is no reason to open them up. */
static int mkdir_parents(char *path)
{
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0700) < 0 && errno != EEXIST) {
			int r = -errno;

			*p = '/';
			return r;
		}
		*p = '/';
	}
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* A copy of dir without trailing slashes into *out ("a/b/" names "a/b";
 * lstat on the slash form would follow a symlink), err cleared: 0, or a
 * negative errno value with err saying why. */
static int dir_path(const char *dir, char **out, char *err, size_t errlen)
{
	size_t n;

	if (err && errlen)
		err[0] = '\0';
	if (!dir || !*dir)
		return dir_error(err, errlen, -EINVAL, "empty directory path");
	*out = strdup(dir);
	if (!*out)
		return dir_error(err, errlen, -ENOMEM, "%s: out of memory", dir);
	n = strlen(*out);
	while (n > 1 && (*out)[n - 1] == '/')
		(*out)[--n] = '\0';
	return 0;
}

int paths_ensure_private_dir(const char *dir, char *err, size_t errlen)
{
	_cleanup_(freep) char *path = NULL;
	struct stat st;
	int r;

	r = dir_path(dir, &path, err, errlen);
	if (r < 0)
		return r;
	r = mkdir_parents(path);
	if (r < 0)
		return dir_error(err, errlen, r, "%s: cannot create directory: %s", path,
				 strerror(-r));

	if (lstat(path, &st) < 0) {
		r = -errno;
		return dir_error(err, errlen, r, "%s: cannot stat: %s", path, strerror(-r));
	}
	if (S_ISLNK(st.st_mode))
		return dir_error(err, errlen, -ELOOP,
				 "%s: is a symbolic link, refusing to use it as a private directory",
				 path);
	if (!S_ISDIR(st.st_mode))
		return dir_error(err, errlen, -ENOTDIR, "%s: exists and is not a directory", path);
	if (st.st_uid != geteuid())
		return dir_error(err, errlen, -EPERM,
				 "%s: owned by uid %u, not by uid %u; refusing to use it", path,
				 (unsigned)st.st_uid, (unsigned)geteuid());
	if (st.st_mode & 077)
		return dir_error(err, errlen, -EACCES,
				 "%s: mode %04o gives group or others access, expected 0700; "
				 "refusing to use it",
				 path, (unsigned)(st.st_mode & 07777));
	return 0;
}

int paths_check_runtime_dir(const char *dir, bool system_mode, uid_t keeper_user, char *err, size_t errlen)
{
	_cleanup_(freep) char *path = NULL;
	uid_t me = geteuid();
	struct stat st;
	int r;

	r = dir_path(dir, &path, err, errlen);
	if (r < 0)
		return r;

	/* Absent: ours to create, as private as its use allows (the system
	 * keeper's group reaches the socket through it). */
	if (lstat(path, &st) < 0) {
		if (errno != ENOENT)
			return dir_error(err, errlen, -errno, "runtime directory %s: cannot stat: %s", path,
					 strerror(errno));
		r = system_mode ? (mkdir(path, 0750) < 0 && errno != EEXIST ? -errno : 0) : mkdir_parents(path);
		if (r < 0)
			return dir_error(err, errlen, r, "runtime directory %s: cannot create it: %s", path,
					 strerror(-r));
		if (lstat(path, &st) < 0)
			return dir_error(err, errlen, -errno, "runtime directory %s: cannot stat: %s", path,
					 strerror(errno));
	}
	if (S_ISLNK(st.st_mode))
		return dir_error(err, errlen, -ELOOP,
				 "runtime directory %s is a symbolic link: refusing to put the control socket "
				 "where it points (make it a real directory, or set runtime_dir)",
				 path);
	if (!S_ISDIR(st.st_mode))
		return dir_error(err, errlen, -ENOTDIR, "runtime directory %s exists and is not a directory", path);
	if (st.st_uid != me && !(system_mode && (st.st_uid == 0 || st.st_uid == keeper_user))) {
		if (system_mode)
			return dir_error(err, errlen, -EPERM,
					 "runtime directory %s is owned by uid %u, not by root or the keeper's "
					 "user (uid %u): refusing to use it",
					 path, (unsigned)st.st_uid, (unsigned)keeper_user);
		return dir_error(err, errlen, -EPERM,
				 "runtime directory %s is owned by uid %u, not by the keeper's user (uid %u): "
				 "refusing to use it",
				 path, (unsigned)st.st_uid, (unsigned)me);
	}
	if (st.st_mode & (S_IWGRP | S_IWOTH))
		return dir_error(err, errlen, -EACCES,
				 "runtime directory %s has mode %04o: group or others may write to it (and "
				 "replace the control socket); refusing to use it (chmod go-w, or 0700)",
				 path, (unsigned)(st.st_mode & 07777));
	return 0;
}

bool paths_dev_tree(void)
{
#if DEV_PATHS
	static int known = -1;

	if (known < 0) {
		char self[PATH_MAX], mine[PATH_MAX];

		known = realpath("/proc/self/exe", self) && realpath(BUILD_ROOT "/daemon/mcpkeeperd", mine) &&
			strcmp(self, mine) == 0;
	}
	return known;
#else
	return false;
#endif
}

/* The build tree's folder of each child: the folders are the processes. */
static const char *dev_tree_dir(const char *name)
{
	if (strcmp(name, CHILD_OAUTH_BIN) == 0)
		return BUILD_ROOT "/daemon/oauth";
	if (strcmp(name, CHILD_HTTP_BIN) == 0)
		return BUILD_ROOT "/daemon/http";
	if (strcmp(name, CHILD_WORKER_BIN) == 0)
		return BUILD_ROOT "/worker";
	return NULL;
}

bool paths_in_build_tree(void)
{
#if DEV_PATHS
	static int known = -1;

	if (known < 0) {
		char self[PATH_MAX], root[PATH_MAX];
		size_t n;

		known = realpath("/proc/self/exe", self) && realpath(BUILD_ROOT, root) && (n = strlen(root)) > 1 &&
			strncmp(self, root, n) == 0 && self[n] == '/';
	}
	return known;
#else
	return false;
#endif
}

int paths_child_binary(const char *name, char *buf, size_t len)
{
	if (paths_dev_tree()) {
		const char *env = getenv("MCPKEEPER_LIBEXECDIR");
		const char *dir = dev_tree_dir(name);

		if (env && *env && path_format(buf, len, "%s/%s", env, name) == 0 && access(buf, F_OK) == 0)
			return 0;
		if (dir)
			return path_format(buf, len, "%s/%s", dir, name);
	}
	return path_format(buf, len, "%s/%s", LIBEXECDIR, name);
}

int paths_ui_dir(char *buf, size_t len)
{
	if (paths_dev_tree()) {
		const char *env = getenv("MCPKEEPER_UI_DIR");

		if (env && *env)
			return path_format(buf, len, "%s", env);
		return path_format(buf, len, "%s", BUILD_ROOT "/daemon/http/ui");
	}
	return path_format(buf, len, "%s/mcpkeeper/ui", DATADIR);
}
