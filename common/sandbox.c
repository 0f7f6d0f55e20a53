/*
 * See sandbox.h. Landlock through its system calls (glibc has no wrappers).
 * The rights we handle are those of the running kernel's ABI, capped at the
 * ones this file knows: a right the kernel does not know makes the ruleset
 * invalid, and a right we do not handle stays allowed, so the cap is what
 * keeps an older kernel working and a newer one no weaker than ABI 5.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/socket.h>

#include "sandbox.h"
#include "util.h"

#include <linux/openat2.h>

int sandbox_open_nofollow(const char *path)
{
	struct open_how how = { .flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_NO_SYMLINKS };
	long fd = syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof(how));

	return fd < 0 ? -errno : (int)fd;
}

#if defined(__has_include)
#if __has_include(<linux/landlock.h>)
#include <linux/landlock.h>
#endif
#endif

#if defined(LANDLOCK_CREATE_RULESET_VERSION) && defined(SYS_landlock_create_ruleset)
#define HAVE_LANDLOCK 1
#endif

static void set_status(char *status, size_t len, const char *fmt, const char *arg, int err)
{
	if (status && len) {
		char what[96];

		snprintf(what, sizeof(what), fmt, arg ? arg : "");
		if (err)
			snprintf(status, len, "%s: %s", what, strerror(err));
		else
			snprintf(status, len, "%s", what);
	}
}

#ifdef HAVE_LANDLOCK

/* Rights added after the header this system ships (Debian 12: ABI 2). */
#ifndef LANDLOCK_ACCESS_FS_REFER
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
#endif
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif
#ifndef LANDLOCK_ACCESS_FS_IOCTL_DEV
#define LANDLOCK_ACCESS_FS_IOCTL_DEV (1ULL << 15)
#endif

#define FS_ABI1                                                                                      \
	(LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_READ_FILE |  \
	 LANDLOCK_ACCESS_FS_READ_DIR | LANDLOCK_ACCESS_FS_REMOVE_DIR | LANDLOCK_ACCESS_FS_REMOVE_FILE | \
	 LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG |    \
	 LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO | LANDLOCK_ACCESS_FS_MAKE_BLOCK | \
	 LANDLOCK_ACCESS_FS_MAKE_SYM)

/* Rights that a rule on a non-directory may carry. */
#define FS_FILE_RIGHTS                                                                             \
	(LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_READ_FILE | \
	 LANDLOCK_ACCESS_FS_TRUNCATE | LANDLOCK_ACCESS_FS_IOCTL_DEV)

/* What the read paths grant: read and list; execute so that programs and
 * libraries beneath them stay usable (mapping a library needs only read). */
#define FS_READ_RIGHTS (LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR)

static uint64_t handled_for_abi(long abi)
{
	uint64_t handled = FS_ABI1;

	if (abi >= 2)
		handled |= LANDLOCK_ACCESS_FS_REFER;
	if (abi >= 3)
		handled |= LANDLOCK_ACCESS_FS_TRUNCATE;
	if (abi >= 5)
		handled |= LANDLOCK_ACCESS_FS_IOCTL_DEV;
	return handled;
}

/* The ruleset attribute as of ABI 6; the kernel takes a prefix of it. */
struct ruleset_attr_v6 {
	uint64_t handled_access_fs;
	uint64_t handled_access_net;
	uint64_t scoped;
};

#define SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)
#define SCOPE_SIGNAL (1ULL << 1)

/*
 * The two sandboxes this file makes. A child's own (sandbox_landlock_
 * readonly): system paths read, links followed (/etc/resolv.conf may be
 * one), no file executable, no scopes. A stdio server's (sandbox_landlock):
 * links never followed, granted files executable, read or write rules,
 * scopes where the ABI has them.
 */
enum kind {
	KIND_CHILD,
	KIND_JAIL,
};

/* Adds rule's path; 0 also when there is nothing there (or, for a jail,
 * a link where the keeper saw none). */
static int add_rule(int ruleset, const struct sandbox_rule *rule, enum kind kind, uint64_t handled, char *status,
		    size_t len)
{
	struct landlock_path_beneath_attr attr = { 0 };
	struct stat st;
	int fd, r;

	if (kind == KIND_JAIL) {
		fd = sandbox_open_nofollow(rule->path);
	} else {
		fd = open(rule->path, O_PATH | O_CLOEXEC);
		if (fd < 0)
			fd = -errno;
	}
	if (fd < 0) {
		if (fd == -ENOENT || fd == -ENOTDIR || fd == -EACCES || (kind == KIND_JAIL && fd == -ELOOP))
			return 0; /* nothing there to grant, or nothing we could reach anyway */
		set_status(status, len, "cannot open %s", rule->path, -fd);
		return fd;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		fd_close(fd);
		set_status(status, len, "cannot stat %s", rule->path, -r);
		return r;
	}
	attr.parent_fd = fd;
	attr.allowed_access = (rule->write ? handled : FS_READ_RIGHTS) & handled;
	if (!S_ISDIR(st.st_mode))
		attr.allowed_access &= FS_FILE_RIGHTS & (kind == KIND_JAIL ? ~0ULL : ~LANDLOCK_ACCESS_FS_EXECUTE);
	r = (int)syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &attr, 0);
	if (r < 0) {
		r = -errno;
		set_status(status, len, "landlock rule for %s", rule->path, -r);
	}
	fd_close(fd);
	return r < 0 ? r : 0;
}

static int restrict_self(const struct sandbox_rule *rules, size_t n, enum kind kind, char *status, size_t len)
{
	struct ruleset_attr_v6 attr = { 0 };
	size_t attr_size = sizeof(attr.handled_access_fs);
	long abi;
	int ruleset, r;

	/* Required for an unprivileged landlock_restrict_self(); wanted anyway. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		r = -errno;
		set_status(status, len, "PR_SET_NO_NEW_PRIVS%s", NULL, -r);
		return r;
	}
	abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
	if (abi < 0) {
		r = -errno;
		if (r == -ENOSYS || r == -EOPNOTSUPP) {
			set_status(status, len, "unavailable%s", NULL, 0);
			return SANDBOX_UNAVAILABLE;
		}
		set_status(status, len, "landlock ABI query%s", NULL, -r);
		return r;
	}
	attr.handled_access_fs = handled_for_abi(abi);
	if (kind == KIND_JAIL && abi >= 6) {
		attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL;
		attr_size = sizeof(attr);
	}
	ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, attr_size, 0);
	if (ruleset < 0) {
		r = -errno;
		set_status(status, len, "landlock_create_ruleset%s", NULL, -r);
		return r;
	}
	for (size_t i = 0; i < n; i++) {
		r = add_rule(ruleset, &rules[i], kind, attr.handled_access_fs, status, len);
		if (r < 0) {
			fd_close(ruleset);
			return r;
		}
	}
	r = (int)syscall(SYS_landlock_restrict_self, ruleset, 0);
	if (r < 0) {
		r = -errno;
		fd_close(ruleset);
		set_status(status, len, "landlock_restrict_self%s", NULL, -r);
		return r;
	}
	fd_close(ruleset);
	if (kind == KIND_CHILD)
		set_status(status, len, "enforced%s", NULL, 0);
	else if (abi >= 6)
		set_status(status, len, "enforced, with signal and abstract socket scopes%s", NULL, 0);
	else
		set_status(status, len, "enforced, without scopes (Landlock ABI below 6)%s", NULL, 0);
	return 0;
}

int sandbox_landlock_readonly(const char *const *read_paths, char *status, size_t len)
{
	struct sandbox_rule rules[64];
	size_t n = 0;

	for (; read_paths && read_paths[n]; n++) {
		if (n == ARRAY_SIZE(rules)) {
			set_status(status, len, "more than 64 Landlock paths%s", NULL, 0);
			return -E2BIG;
		}
		rules[n] = (struct sandbox_rule){ read_paths[n], false };
	}
	return restrict_self(rules, n, KIND_CHILD, status, len);
}

int sandbox_landlock(const struct sandbox_rule *rules, size_t n, char *status, size_t len)
{
	return restrict_self(rules, n, KIND_JAIL, status, len);
}

#else /* !HAVE_LANDLOCK */

int sandbox_landlock(const struct sandbox_rule *rules, size_t n, char *status, size_t len)
{
	(void)rules;
	(void)n;
	return sandbox_landlock_readonly(NULL, status, len);
}


int sandbox_landlock_readonly(const char *const *read_paths, char *status, size_t len)
{
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		int r = -errno;

		set_status(status, len, "PR_SET_NO_NEW_PRIVS%s", NULL, -r);
		return r;
	}
	set_status(status, len, "unavailable%s", NULL, 0);
	return SANDBOX_UNAVAILABLE;
}

#endif

#if defined(__x86_64__)
#define SECCOMP_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SECCOMP_ARCH AUDIT_ARCH_AARCH64
#endif

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif

int sandbox_deny_unix_sockets(void)
{
#ifdef SECCOMP_ARCH
	struct sock_filter filter[] = {
		/* Another architecture's system call numbers mean something else. */
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SECCOMP_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
#if defined(__x86_64__)
		/* The x32 ABI: the same calls under other numbers. */
		BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
#endif
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		/* The low 32 bits of the first argument: the domain. */
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EACCES),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = ARRAY_SIZE(filter), .filter = filter };

	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
		return -errno;
	return 0;
#else
	return -ENOTSUP;
#endif
}
