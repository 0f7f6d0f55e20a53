/*
 * Entering a stdio upstream's sandbox (jail-view.h), in the worker before
 * it reads anything: the worker and every command it runs see the system
 * directories read-only, a private HOME and TMPDIR, what the server's
 * "sandbox" config grants, and nothing of the project: not the state
 * directory (master key, database), the config file, the runtime directory
 * (control socket), the credentials directory or another server's HOME.
 *
 * Two mechanisms, one view:
 *  - namespaces: a user namespace that maps the worker's uid to itself,
 *    mount and pid namespaces; an empty tmpfs root holding bind mounts of
 *    the allowed paths, a fresh /proc, a small /dev and a tmpfs /tmp; the
 *    old root detached. The worker is pid 1 (it reaps what its commands
 *    leave). Before anything runs every capability goes (bounding and
 *    ambient sets, SECBIT_NOROOT, no_new_privs), so no mount can be undone.
 *  - landlock: where user namespaces are refused; the same paths as a
 *    Landlock allow-list (plus /proc, whose other processes' mem and
 *    environ Landlock's ptrace rule keeps out), a seccomp filter against
 *    socket(AF_UNIX) (a pathname socket's connect() is not covered by any
 *    Landlock ABI), and scopes for signals and abstract sockets on ABI 6.
 * The keeper decides which may be tried (daemon/jail.c); with neither, a
 * server starts only if its config says "sandbox": false.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/capability.h>
#include <linux/securebits.h>

#include "jail-view.h"
#include "log.h"
#include "sandbox.h"
#include "util.h"

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

/* ---- the blob: "K\tVALUE\0" records ---- */

static int put(int fd, const char *key, const char *value)
{
	size_t klen = strlen(key), vlen = strlen(value);
	char *rec = xmalloc(klen + vlen + 2);
	size_t off = 0;

	memcpy(rec, key, klen);
	rec[klen] = '\t';
	memcpy(rec + klen + 1, value, vlen + 1);
	while (off < klen + vlen + 2) {
		ssize_t n = write(fd, rec + off, klen + vlen + 2 - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			free(rec);
			return n < 0 ? -errno : -EIO;
		}
		off += (size_t)n;
	}
	free(rec);
	return 0;
}

int jail_to_memfd(const struct jail *j)
{
	const char *mode = !j->enabled ? "off" :
			   j->try_namespaces && j->try_landlock ? "any" :
			   j->try_namespaces ? "namespaces" : "landlock";
	int fd = (int)syscall(SYS_memfd_create, "mcpkeeper-jail", 1U /* MFD_CLOEXEC */);
	int r;

	if (fd < 0)
		return -errno;
	r = put(fd, "mode", mode);
	if (r == 0 && j->enabled) {
		r = put(fd, "dir", j->dir);
		if (r == 0)
			r = put(fd, "home", j->home);
		if (r == 0)
			r = put(fd, "tmp", j->tmp);
		if (r == 0)
			r = put(fd, "base", j->base);
		for (size_t i = 0; r == 0 && i < j->n_paths; i++)
			r = put(fd, j->paths[i].write ? "w" : "r", j->paths[i].path);
	}
	if (r == 0 && lseek(fd, 0, SEEK_SET) < 0)
		r = -errno;
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

void jail_clear(struct jail *j)
{
	for (size_t i = 0; i < j->n_paths; i++)
		free(j->paths[i].path);
	free(j->paths);
	free(j->dir);
	free(j->home);
	free(j->tmp);
	free(j->base);
	memset(j, 0, sizeof(*j));
}

/* Parses a blob; -EINVAL with why for anything but what jail_to_memfd() writes. */
static int jail_parse(char *blob, size_t size, struct jail *j, char *why, size_t len)
{
	size_t cap = 0;
	bool moded = false;

	for (size_t off = 0; off < size;) {
		char *rec = blob + off, *tab, *value;
		size_t rlen = strnlen(rec, size - off);

		if (rlen == size - off) {
			snprintf(why, len, "the sandbox description is cut short");
			return -EINVAL;
		}
		off += rlen + 1;
		tab = strchr(rec, '\t');
		if (!tab) {
			snprintf(why, len, "a sandbox record without a value");
			return -EINVAL;
		}
		*tab = '\0';
		value = tab + 1;
		if (strcmp(rec, "mode") == 0) {
			moded = true;
			j->enabled = strcmp(value, "off") != 0;
			j->try_namespaces = strcmp(value, "any") == 0 || strcmp(value, "namespaces") == 0;
			j->try_landlock = strcmp(value, "any") == 0 || strcmp(value, "landlock") == 0;
			if (j->enabled && !j->try_namespaces && !j->try_landlock) {
				snprintf(why, len, "unknown sandbox mode %.32s", value);
				return -EINVAL;
			}
			continue;
		}
		if (value[0] != '/') {
			snprintf(why, len, "sandbox %.8s: not an absolute path", rec);
			return -EINVAL;
		}
		if (strcmp(rec, "dir") == 0 && !j->dir) {
			j->dir = xstrdup(value);
		} else if (strcmp(rec, "home") == 0 && !j->home) {
			j->home = xstrdup(value);
		} else if (strcmp(rec, "tmp") == 0 && !j->tmp) {
			j->tmp = xstrdup(value);
		} else if (strcmp(rec, "base") == 0 && !j->base) {
			j->base = xstrdup(value);
		} else if (strcmp(rec, "r") == 0 || strcmp(rec, "w") == 0) {
			if (j->n_paths == cap) {
				cap = cap ? cap * 2 : 64;
				j->paths = xrealloc(j->paths, cap * sizeof(*j->paths));
			}
			j->paths[j->n_paths].path = xstrdup(value);
			j->paths[j->n_paths++].write = rec[0] == 'w';
		} else {
			snprintf(why, len, "unexpected sandbox record %.16s", rec);
			return -EINVAL;
		}
	}
	if (!moded || (j->enabled && (!j->dir || !j->home || !j->tmp || !j->base))) {
		snprintf(why, len, "the sandbox description is incomplete");
		return -EINVAL;
	}
	return 0;
}

/* ---- entering ---- */

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
	int r, fd, src_fd;

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
	/*
	 * The source as the keeper resolved it, no component a link: one that a
	 * sandboxed command planted since in a folder it may write (a relative
	 * link would lead out of /oldroot's subtree it was granted) is skipped.
	 */
	src_fd = sandbox_open_nofollow(src);
	if (src_fd == -ELOOP) {
		log_warn("sandbox: %s has become a symbolic link since the keeper resolved it; not shown", path);
		return 0;
	}
	if (src_fd < 0)
		return src_fd == -ENOENT ? 0 : src_fd;
	r = mkdir_parents(path, S_ISDIR(st.st_mode));
	/* A file inside a path shown before exists already (maybe read-only). */
	if (r == 0 && !S_ISDIR(st.st_mode) && access(path, F_OK) < 0) {
		fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (fd < 0 && errno != EEXIST)
			r = -errno;
		if (fd >= 0)
			close(fd);
	}
	/* The very object opened, through the old /proc (ours is not there yet). */
	snprintf(src, sizeof(src), "/oldroot/proc/self/fd/%d", src_fd);
	if (r == 0 && mount(src, path, NULL, MS_BIND | MS_REC, NULL) < 0)
		r = -errno;
	close(src_fd);
	if (r < 0)
		return r;
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
	/*
	 * A non-dumpable process's /proc files belong to root, its own uid_map
	 * too: dumpable for the writes. Nothing here is worth reading yet (the
	 * worker has read nothing), and no one else of our uid can reach us
	 * (a stdio command is in a sandbox of its own; an HTTP worker under
	 * Landlock may not ptrace outside its domain).
	 */
	if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
		return -errno;
	/* The worker's uid stays itself: never root inside. */
	snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)uid, (unsigned)uid);
	r = write_text("/proc/self/uid_map", map);
	if (r == 0)
		r = write_text("/proc/self/setgroups", "deny");
	snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)gid, (unsigned)gid);
	if (r == 0)
		r = write_text("/proc/self/gid_map", map);
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 && r == 0)
		r = -errno;
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

/* Enters j; the mechanism, or a negative errno value (logged). */
static int enter(const struct jail *j)
{
	enum jail_mechanism got = JAIL_OFF;
	int r;

	if (!j->enabled)
		return JAIL_OFF;
	r = make_dirs(j);
	if (r < 0) {
		log_error("sandbox directory %s: %s", j->dir, strerror(-r));
		return r;
	}
	r = -EOPNOTSUPP;
	if (j->try_namespaces) {
		r = enter_namespaces(j);
		if (r == 0)
			got = JAIL_NAMESPACES;
		else if (j->try_landlock)
			log_warn("sandbox: user namespaces refused (%s); using Landlock", strerror(-r));
		else
			log_error("sandbox: user namespaces refused: %s", strerror(-r));
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
		log_error("sandbox: dropping capabilities: %s", strerror(-r));
		return r;
	}
	if (setenv("HOME", j->home, 1) < 0 || setenv("TMPDIR", got == JAIL_NAMESPACES ? "/tmp" : j->tmp, 1) < 0)
		return -ENOMEM;
	return (int)got;
}

int jail_enter_blob(int fd, char *why, size_t len)
{
	struct jail j = { 0 };
	size_t size = 0, cap = 4096;
	char *blob = xmalloc(cap);
	int r;

	snprintf(why, len, "cannot read the sandbox description");
	for (;;) {
		ssize_t n;

		if (size == cap) {
			if (cap >= JAIL_BLOB_MAX) {
				snprintf(why, len, "the sandbox description is over %u bytes", JAIL_BLOB_MAX);
				free(blob);
				close(fd);
				return -E2BIG;
			}
			cap *= 2;
			blob = xrealloc(blob, cap);
		}
		n = read(fd, blob + size, cap - size);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			snprintf(why, len, "cannot read the sandbox description on fd %d: %s", fd, strerror(-r));
			free(blob);
			close(fd);
			return r;
		}
		if (n == 0)
			break;
		size += (size_t)n;
	}
	close(fd);
	r = jail_parse(blob, size, &j, why, len);
	free(blob);
	if (r == 0) {
		r = enter(&j);
		if (r < 0)
			snprintf(why, len, "cannot enter the sandbox: %s (the log says where)", strerror(-r));
	}
	jail_clear(&j);
	return r;
}
