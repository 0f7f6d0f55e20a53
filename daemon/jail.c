/*
 * The sandbox of a stdio upstream (jail.h): its worker and every command
 * the worker runs see the system directories read-only, a private HOME
 * and TMPDIR, what the server's "sandbox" config grants, and nothing of
 * the project: not the state directory (master key, database), the config
 * file, the runtime directory (control socket), the credentials directory
 * or another server's HOME.
 *
 * Two mechanisms, one view:
 *  - namespaces: a user namespace that maps the worker's uid to itself,
 *    mount and pid namespaces; an empty tmpfs root holding bind mounts of
 *    the allowed paths, a fresh /proc, a small /dev and a tmpfs /tmp; the
 *    old root detached. The worker is pid 1 (it reaps what its commands
 *    leave). Before the exec every capability goes (bounding and ambient
 *    sets, SECBIT_NOROOT, no_new_privs), so no mount can be undone.
 *  - landlock: where user namespaces are refused; the same paths as a
 *    Landlock allow-list (plus /proc, whose other processes' mem and
 *    environ Landlock's ptrace rule keeps out), a seccomp filter against
 *    socket(AF_UNIX) (a pathname socket's connect() is not covered by any
 *    Landlock ABI), and scopes for signals and abstract sockets on ABI 6.
 * With neither, a server starts only if its config says "sandbox": false.
 *
 * The keeper side (jail_new) reads the config and the file system and
 * allocates; the child side (jail_enter) runs in the forked child between
 * its uid switch and its exec, and only applies what was prepared.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/capability.h>
#include <linux/securebits.h>

#include "config.h"
#include "jail.h"
#include "keeper.h"
#include "log.h"
#include "paths.h"
#include "sandbox.h"
#include "util.h"

/* Bounds on what one server's view may hold. */
#define JAIL_MAX_PATHS 4096
#define JAIL_MAX_DEPTH 16

/* The mount_setattr() attributes (Linux 5.12), by value: Debian 12's
 * headers and glibc disagree on where they live. */
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
struct jail_mount_attr {
	uint64_t attr_set, attr_clr, propagation, userns_fd;
};
#define JAIL_ATTR_RDONLY 0x1ULL
#define JAIL_ATTR_NOSUID 0x2ULL
#define JAIL_ATTR_NODEV 0x4ULL
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif

/* Read-only in every view (those that exist). */
static const char *const system_dirs[] = { "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32",
					   "/lib64", "/libx32", "/opt" };
/* The devices a program may expect; bound in namespace mode. */
static const char *const devices[] = { "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom" };

const char *jail_mechanism_name(enum jail_mechanism m)
{
	switch (m) {
	case JAIL_NAMESPACES:
		return "namespaces";
	case JAIL_LANDLOCK:
		return "landlock";
	case JAIL_OFF:
		break;
	}
	return "off";
}

char *jail_root_of(const char *data_dir)
{
	size_t len = strlen(data_dir);
	char *root;

	while (len > 1 && data_dir[len - 1] == '/')
		len--;
	if (asprintf(&root, "%.*s-sandbox", (int)len, data_dir) < 0)
		fatal("out of memory");
	return root;
}

int jail_root_prepare(const char *data_dir, unsigned uid, unsigned gid, char *err, size_t len)
{
	_cleanup_(freep) char *root = jail_root_of(data_dir);
	struct stat st;

	if (mkdir(root, 0700) < 0 && errno != EEXIST) {
		int r = -errno;

		snprintf(err, len, "cannot create the sandbox directory %s: %s", root, strerror(-r));
		return r;
	}
	if (lstat(root, &st) < 0 || !S_ISDIR(st.st_mode)) {
		snprintf(err, len, "%s: not a directory", root);
		return -ENOTDIR;
	}
	if (geteuid() == 0 && (st.st_uid != uid || st.st_gid != gid) && chown(root, uid, gid) < 0) {
		int r = -errno;

		snprintf(err, len, "cannot hand %s to uid %u: %s", root, uid, strerror(-r));
		return r;
	}
	return 0;
}

/* ---- the keeper side ---- */

/* What the view must never show, resolved. */
struct hidden {
	char *path[8];
	const char *what[8];
	size_t n;
};

static void hide(struct hidden *h, const char *path, const char *what)
{
	char real[PATH_MAX];

	if (!path || !*path || h->n >= ARRAY_SIZE(h->path))
		return;
	/* A path that does not exist yet is hidden as written. */
	h->path[h->n] = xstrdup(realpath(path, real) ? real : path);
	h->what[h->n++] = what;
}

static void hidden_clear(struct hidden *h)
{
	for (size_t i = 0; i < h->n; i++)
		free(h->path[i]);
	h->n = 0;
}

/* a is b or beneath it. */
static bool path_within(const char *a, const char *b)
{
	size_t n = strlen(b);

	if (n == 1 && b[0] == '/')
		return true;
	return strncmp(a, b, n) == 0 && (a[n] == '\0' || a[n] == '/');
}

struct builder {
	struct jail *j;
	const struct hidden *h;
	size_t cap;
	char *err;
	size_t errlen;
};

static int add_path(struct builder *b, const char *path, bool write)
{
	struct jail *j = b->j;

	if (j->n_paths >= JAIL_MAX_PATHS) {
		snprintf(b->err, b->errlen, "more than %d paths in the sandbox (the grants hold too many entries "
			 "beside the project's own directories)", JAIL_MAX_PATHS);
		return -E2BIG;
	}
	if (j->n_paths == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 32;
		j->paths = xrealloc(j->paths, b->cap * sizeof(*j->paths));
	}
	j->paths[j->n_paths].path = xstrdup(path);
	j->paths[j->n_paths++].write = write;
	return 0;
}

/*
 * Grants path, which contains none of the hidden paths, or else each of
 * its entries but the hidden ones, recursively: the project's directories
 * never appear, whichever parent of theirs a config names.
 */
static int grant(struct builder *b, const char *path, bool write, int depth)
{
	bool contains = false;
	DIR *d;
	struct dirent *e;
	int r = 0;

	for (size_t i = 0; i < b->h->n; i++) {
		if (path_within(path, b->h->path[i]))
			return 0; /* a hidden path itself (reached through a parent) */
		if (path_within(b->h->path[i], path))
			contains = true;
	}
	if (!contains)
		return add_path(b, path, write);
	if (depth >= JAIL_MAX_DEPTH) {
		snprintf(b->err, b->errlen, "%s: nested too deep around the project's directories", path);
		return -ELOOP;
	}
	d = opendir(path);
	if (!d)
		return 0; /* nothing the keeper can list: nothing to grant */
	while (r == 0 && (e = readdir(d))) {
		char *child;
		struct stat st;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (asprintf(&child, "%s%s%s", path, strcmp(path, "/") == 0 ? "" : "/", e->d_name) < 0)
			fatal("out of memory");
		/* Only real directories are walked into: a symbolic link is
		 * granted as a link (jail_enter copies it, Landlock skips it). */
		if (lstat(child, &st) == 0 && S_ISDIR(st.st_mode))
			r = grant(b, child, write, depth + 1);
		else if (lstat(child, &st) == 0)
			r = add_path(b, child, write);
		free(child);
	}
	closedir(d);
	return r;
}

/* A path from the config: resolved; inside the project's directories it
 * is an error (the server would get what it must never see). */
static int grant_configured(struct builder *b, const struct config_server *cs, const char *key, const char *path,
			    bool write)
{
	char real[PATH_MAX];

	if (!realpath(path, real)) {
		log_warn("%s: sandbox.%s %s: %s; not granted", cs->name, key, path, strerror(errno));
		return 0;
	}
	for (size_t i = 0; i < b->h->n; i++)
		if (path_within(real, b->h->path[i])) {
			snprintf(b->err, b->errlen, "sandbox.%s %s is inside the %s (%s): a stdio server may not see it",
				 key, path, b->h->what[i], b->h->path[i]);
			return -EACCES;
		}
	return grant(b, real, write, 0);
}

/* The command's own file, when it lives outside the system directories. */
static int grant_command(struct builder *b, const struct config_server *cs)
{
	char real[PATH_MAX], *found = NULL;
	const char *path = getenv("PATH");
	int r;

	for (size_t i = 0; i < cs->n_env; i++)
		if (strcmp(cs->env[i].key, "PATH") == 0)
			path = cs->env[i].value;
	if (strchr(cs->command, '/')) {
		found = xstrdup(cs->command);
	} else {
		for (const char *p = path ? path : "/usr/local/bin:/usr/bin:/bin"; *p && !found;) {
			size_t n = strcspn(p, ":");
			char *full;

			if (asprintf(&full, "%.*s/%s", (int)n, p, cs->command) < 0)
				fatal("out of memory");
			if (n > 0 && access(full, X_OK) == 0)
				found = full;
			else
				free(full);
			p += n;
			if (*p == ':')
				p++;
		}
	}
	if (!found || !realpath(found, real)) {
		free(found);
		return 0; /* the worker reports a missing command itself */
	}
	free(found);
	for (size_t i = 0; i < ARRAY_SIZE(system_dirs); i++)
		if (path_within(real, system_dirs[i]))
			return 0;
	for (size_t i = 0; i < b->h->n; i++)
		if (path_within(real, b->h->path[i])) {
			snprintf(b->err, b->errlen, "the command %s is inside the %s: a stdio server may not see it",
				 real, b->h->what[i]);
			return -EACCES;
		}
	r = grant(b, real, false, 0);
	return r;
}

/* Can the workers' user create a user namespace here? Asked once, in a
 * child that becomes that user first (system mode). */
static bool namespaces_available(const struct keeper *k)
{
	static int known = -1;
	pid_t pid;
	int status;

	if (known >= 0)
		return known;
	pid = fork();
	if (pid < 0)
		return false;
	if (pid == 0) {
		const struct child_user *u = &k->users.worker;

		if (k->system_mode && (setgroups(0, NULL) < 0 || setresgid(u->gid, u->gid, u->gid) < 0 ||
				       setresuid(u->uid, u->uid, u->uid) < 0))
			_exit(2);
		_exit(unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID) == 0 ? 0 : 1);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	known = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	log_info("sandbox: user namespaces are %s to the workers' user", known ? "available" : "not available");
	return known;
}

static bool landlock_available(void)
{
#ifdef SYS_landlock_create_ruleset
	return syscall(SYS_landlock_create_ruleset, NULL, 0, 1 /* LANDLOCK_CREATE_RULESET_VERSION */) >= 1;
#else
	return false;
#endif
}

struct jail *jail_new(const struct keeper *k, const struct config_server *cs, const char *binary, char *err,
		     size_t len)
{
	struct jail *j = xcalloc(1, sizeof(*j));
	struct hidden h = { .n = 0 };
	struct builder b = { .j = j, .h = &h, .err = err, .errlen = len };
	_cleanup_(freep) char *root = jail_root_of(k->cfg->data_dir);
	const char *knob = paths_dev_tree() ? getenv("MCPKEEPER_TEST_SANDBOX") : NULL;
	int r = 0;

	err[0] = '\0';
	j->enabled = cs->sandbox;
	if (!j->enabled)
		return j;
	if (knob && *knob) {
		j->try_namespaces = strcmp(knob, "namespaces") == 0;
		j->try_landlock = strcmp(knob, "landlock") == 0;
		if (!j->try_namespaces && !j->try_landlock && strcmp(knob, "none") != 0) {
			snprintf(err, len, "MCPKEEPER_TEST_SANDBOX=%s: expected namespaces, landlock or none", knob);
			return jail_free(j);
		}
	} else {
		j->try_namespaces = namespaces_available(k);
		j->try_landlock = landlock_available();
	}
	if (!j->try_namespaces && !j->try_landlock) {
		snprintf(err, len, "no sandbox is available on this system (neither user namespaces nor Landlock); "
			 "the server starts only with \"sandbox\": false in its config");
		return jail_free(j);
	}

	if (asprintf(&j->dir, "%s/%s", root, cs->name) < 0 || asprintf(&j->home, "%s/home", j->dir) < 0 ||
	    asprintf(&j->tmp, "%s/tmp", j->dir) < 0 || asprintf(&j->base, "%s/.root", j->dir) < 0)
		fatal("out of memory");

	hide(&h, k->cfg->data_dir, "state directory");
	hide(&h, k->cfg->runtime_dir, "runtime directory");
	hide(&h, k->cfg->path, "configuration file");
	hide(&h, getenv("CREDENTIALS_DIRECTORY"), "credentials directory");
	hide(&h, root, "sandbox directory");

	for (size_t i = 0; r == 0 && i < ARRAY_SIZE(system_dirs); i++) {
		struct stat st;

		if (lstat(system_dirs[i], &st) == 0)
			r = grant(&b, system_dirs[i], false, 0);
	}
	for (size_t i = 0; r == 0 && i < cs->n_sandbox_read; i++)
		r = grant_configured(&b, cs, "read", cs->sandbox_read[i], false);
	for (size_t i = 0; r == 0 && i < cs->n_sandbox_write; i++)
		r = grant_configured(&b, cs, "write", cs->sandbox_write[i], true);
	if (r == 0)
		r = grant_command(&b, cs);
	/* Landlock checks the exec of the worker itself (a build tree's). */
	if (r == 0 && binary)
		r = grant(&b, binary, false, 0);
	hidden_clear(&h);
	if (r < 0)
		return jail_free(j);
	return j;
}

struct jail *jail_free(struct jail *j)
{
	if (!j)
		return NULL;
	for (size_t i = 0; i < j->n_paths; i++)
		free(j->paths[i].path);
	free(j->paths);
	free(j->dir);
	free(j->home);
	free(j->tmp);
	free(j->base);
	free(j);
	return NULL;
}

/* ---- the child side: runs between fork and exec ---- */

/* The server's directory and its parts, owned by the user we now are. */
static int make_dirs(const struct jail *j)
{
	const char *const dirs[] = { j->dir, j->home, j->tmp, j->base };

	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		struct stat st;

		if (mkdir(dirs[i], 0700) < 0 && errno != EEXIST)
			return -errno;
		if (lstat(dirs[i], &st) < 0)
			return -errno;
		if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
			log_error("sandbox: %s is not a directory of uid %u", dirs[i], (unsigned)geteuid());
			return -EPERM;
		}
	}
	return 0;
}

static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, text, strlen(text));
	close(fd);
	return n == (ssize_t)strlen(text) ? 0 : -EIO;
}

/* Every directory of path, in the new root (a tmpfs of ours). */
static int mkdir_parents(const char *path, bool last)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);

	if (n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (last && mkdir(buf, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int set_flags(const char *path, bool write, bool devices_ok)
{
	struct jail_mount_attr attr = {
		.attr_set = JAIL_ATTR_NOSUID | (devices_ok ? 0 : JAIL_ATTR_NODEV) | (write ? 0 : JAIL_ATTR_RDONLY),
	};

	if (syscall(SYS_mount_setattr, AT_FDCWD, path, AT_RECURSIVE, &attr, sizeof(attr)) == 0)
		return 0;
	/* Before Linux 5.12: the top mount only; the locked flags it has must stay. */
	if (mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | (devices_ok ? 0 : MS_NODEV) | (write ? 0 : MS_RDONLY),
		  NULL) < 0)
		return -errno;
	return 0;
}

/* Shows /oldroot/PATH at PATH: a directory or file by a bind mount, a
 * symbolic link as a copy of the link. */
static int show(const char *path, bool write, bool devices_ok)
{
	char src[PATH_MAX + 16], target[PATH_MAX];
	struct stat st;
	ssize_t n;
	int r, fd;

	snprintf(src, sizeof(src), "/oldroot%s", path);
	if (lstat(src, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (S_ISLNK(st.st_mode)) {
		n = readlink(src, target, sizeof(target) - 1);
		if (n < 0)
			return -errno;
		target[n] = '\0';
		r = mkdir_parents(path, false);
		if (r < 0)
			return r;
		return symlink(target, path) < 0 && errno != EEXIST ? -errno : 0;
	}
	r = mkdir_parents(path, S_ISDIR(st.st_mode));
	if (r < 0)
		return r;
	if (!S_ISDIR(st.st_mode)) {
		fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (fd < 0 && errno != EEXIST)
			return -errno;
		if (fd >= 0)
			close(fd);
	}
	if (mount(src, path, NULL, MS_BIND | MS_REC, NULL) < 0)
		return -errno;
	return set_flags(path, write, devices_ok);
}

static int build_dev(void)
{
	static const char *const links[][2] = {
		{ "/dev/fd", "/proc/self/fd" },	 { "/dev/stdin", "/proc/self/fd/0" },
		{ "/dev/stdout", "/proc/self/fd/1" }, { "/dev/stderr", "/proc/self/fd/2" },
	};
	int r;

	if (mkdir("/dev", 0755) < 0 ||
	    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k") < 0)
		return -errno;
	for (size_t i = 0; i < ARRAY_SIZE(devices); i++) {
		r = show(devices[i], true, true);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < ARRAY_SIZE(links); i++)
		if (symlink(links[i][1], links[i][0]) < 0)
			return -errno;
	if (mkdir("/dev/shm", 01777) < 0 ||
	    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777") < 0)
		return -errno;
	return 0;
}

/* The new root: a tmpfs holding what the server may see, the old one gone. */
static int build_root(const struct jail *j)
{
	int r;

#define STEP(call, what)                                                       \
	do {                                                                   \
		if ((call) < 0) {                                              \
			r = -errno;                                            \
			log_error("sandbox: %s: %s", what, strerror(-r));      \
			return r;                                              \
		}                                                              \
	} while (0)

	STEP(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), "making the mounts private");
	STEP(mount("tmpfs", j->base, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m"), "tmpfs for the new root");
	STEP(chdir(j->base), "entering the new root");
	STEP(mkdir("oldroot", 0700), "mkdir oldroot");
	STEP(syscall(SYS_pivot_root, ".", "oldroot"), "pivot_root");
	STEP(chdir("/"), "chdir /");
	/* First: paths granted beneath /tmp are shown on top of it. */
	STEP(mkdir("/tmp", 01777), "mkdir /tmp");
	STEP(mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"), "tmpfs for /tmp");

	for (size_t i = 0; i < j->n_paths; i++) {
		r = show(j->paths[i].path, j->paths[i].write, false);
		if (r < 0) {
			log_error("sandbox: showing %s: %s", j->paths[i].path, strerror(-r));
			return r;
		}
	}
	r = show(j->home, true, false);
	if (r < 0) {
		log_error("sandbox: showing %s: %s", j->home, strerror(-r));
		return r;
	}
	r = build_dev();
	if (r < 0) {
		log_error("sandbox: /dev: %s", strerror(-r));
		return r;
	}
	/* While the old /proc is still there: the kernel wants one fully visible. */
	STEP(mkdir("/proc", 0555), "mkdir /proc");
	STEP(mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), "a fresh /proc");
	STEP(umount2("/oldroot", MNT_DETACH), "detaching the old root");
	STEP(rmdir("/oldroot"), "removing /oldroot");
	STEP(mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL),
	     "the new root read-only");
	/* An inherited working directory would survive the pivot. */
	STEP(chdir(j->home), "entering HOME");
#undef STEP
	return 0;
}

/*
 * No capability survives the exec, and none can come back. Without
 * CAP_SETPCAP (Landlock mode, not root) there is nothing to drop but the
 * ambient set: the exec of a non-root uid under no_new_privs gains none.
 */
static int drop_capabilities(void)
{
	bool privileged = true;

	for (int cap = 0; cap <= 63 && privileged; cap++) {
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 || errno == EINVAL)
			continue;
		if (errno != EPERM || geteuid() == 0)
			return -errno;
		privileged = false;
	}
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
		return -errno;
	if (privileged &&
	    prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
					     SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
					     SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
		  0, 0, 0) < 0)
		return -errno;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -errno;
	return 0;
}

/* The process that stays outside: waits for pid 1 of the new namespaces
 * and exits as it did. Killing it kills them (PR_SET_PDEATHSIG). */
static _noreturn_ void wait_for(pid_t pid)
{
	int status;

	close_range(0, ~0U, 0);
	prctl(PR_SET_NAME, "mcpkeeper-jail", 0, 0, 0);
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			_exit(127);
	if (WIFSIGNALED(status))
		_exit(128 + WTERMSIG(status));
	_exit(WEXITSTATUS(status));
}

static int enter_namespaces(const struct jail *j)
{
	char map[64];
	uid_t uid = geteuid();
	gid_t gid = getegid();
	pid_t pid;
	int r;

	if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID) < 0)
		return -errno;
	/* The worker's uid stays itself: never root inside. */
	snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)uid, (unsigned)uid);
	r = write_text("/proc/self/uid_map", map);
	if (r == 0)
		r = write_text("/proc/self/setgroups", "deny");
	snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)gid, (unsigned)gid);
	if (r == 0)
		r = write_text("/proc/self/gid_map", map);
	if (r < 0) {
		log_error("sandbox: writing the id maps: %s", strerror(-r));
		_exit(127);
	}
	pid = fork();
	if (pid < 0) {
		log_error("sandbox: fork into the pid namespace: %m");
		_exit(127);
	}
	if (pid > 0)
		wait_for(pid);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0 || build_root(j) < 0)
		_exit(127);
	return 0;
}

static int enter_landlock(const struct jail *j)
{
	static const char *const extra_read[] = { "/proc", "/dev/random", "/dev/urandom" };
	static const char *const extra_write[] = { "/dev/null", "/dev/zero", "/dev/full" };
	size_t n = 0, cap = j->n_paths + ARRAY_SIZE(extra_read) + ARRAY_SIZE(extra_write) + 2;
	struct sandbox_rule *rules = calloc(cap, sizeof(*rules));
	char status[160] = "";
	int r;

	if (!rules)
		return -ENOMEM;
	for (size_t i = 0; i < j->n_paths; i++) {
		struct stat st;

		/* A rule on a link would grant its target, wherever it is. */
		if (lstat(j->paths[i].path, &st) == 0 && !S_ISLNK(st.st_mode))
			rules[n++] = (struct sandbox_rule){ j->paths[i].path, j->paths[i].write };
	}
	for (size_t i = 0; i < ARRAY_SIZE(extra_read); i++)
		rules[n++] = (struct sandbox_rule){ extra_read[i], false };
	for (size_t i = 0; i < ARRAY_SIZE(extra_write); i++)
		rules[n++] = (struct sandbox_rule){ extra_write[i], true };
	rules[n++] = (struct sandbox_rule){ j->home, true };
	rules[n++] = (struct sandbox_rule){ j->tmp, true };
	r = sandbox_landlock(rules, n, status, sizeof(status));
	free(rules);
	if (r == SANDBOX_UNAVAILABLE)
		r = -EOPNOTSUPP;
	if (r < 0) {
		log_error("sandbox: Landlock: %s", status);
		return r;
	}
	r = sandbox_deny_unix_sockets();
	if (r < 0) {
		log_error("sandbox: seccomp filter: %s", strerror(-r));
		return r;
	}
	if (chdir(j->home) < 0) {
		r = -errno;
		log_error("sandbox: entering HOME: %s", strerror(-r));
		return r;
	}
	return 0;
}

int jail_enter(const struct jail *j, const char *label)
{
	enum jail_mechanism got = JAIL_OFF;
	int r;

	if (!j->enabled) {
		setenv("MCPKEEPER_JAIL", "off", 1);
		return 0;
	}
	r = make_dirs(j);
	if (r < 0) {
		log_error("%s: sandbox directory %s: %s", label, j->dir, strerror(-r));
		return r;
	}
	r = -EOPNOTSUPP;
	if (j->try_namespaces) {
		r = enter_namespaces(j);
		if (r == 0)
			got = JAIL_NAMESPACES;
		else if (j->try_landlock)
			log_warn("%s: user namespaces refused (%s); using Landlock", label, strerror(-r));
		else
			log_error("%s: user namespaces refused: %s", label, strerror(-r));
	}
	if (got == JAIL_OFF && j->try_landlock) {
		/* Namespace mode chdir()s into its root; here HOME is the real one. */
		r = enter_landlock(j);
		if (r == 0)
			got = JAIL_LANDLOCK;
	}
	if (got == JAIL_OFF)
		return r < 0 ? r : -EOPNOTSUPP;
	r = drop_capabilities();
	if (r < 0) {
		log_error("%s: dropping capabilities: %s", label, strerror(-r));
		return r;
	}
	if (setenv("HOME", j->home, 1) < 0 || setenv("TMPDIR", got == JAIL_NAMESPACES ? "/tmp" : j->tmp, 1) < 0 ||
	    setenv("MCPKEEPER_JAIL", jail_mechanism_name(got), 1) < 0)
		return -ENOMEM;
	return 0;
}
