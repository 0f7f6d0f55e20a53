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

#include "sandbox.h"
#include "util.h"

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

/* Adds a read-only rule for path; 0 also when the path does not exist. */
static int add_read_rule(int ruleset, const char *path, uint64_t handled, char *status, size_t len)
{
	struct landlock_path_beneath_attr rule = { 0 };
	struct stat st;
	int fd, r;

	fd = open(path, O_PATH | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT || errno == ENOTDIR || errno == EACCES)
			return 0; /* nothing there to read, or nothing we could read anyway */
		r = -errno;
		set_status(status, len, "cannot open %s", path, -r);
		return r;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		fd_close(fd);
		set_status(status, len, "cannot stat %s", path, -r);
		return r;
	}
	rule.parent_fd = fd;
	rule.allowed_access = FS_READ_RIGHTS & handled;
	if (!S_ISDIR(st.st_mode))
		rule.allowed_access &= FS_FILE_RIGHTS & ~LANDLOCK_ACCESS_FS_EXECUTE;
	r = (int)syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0);
	if (r < 0) {
		r = -errno;
		set_status(status, len, "landlock rule for %s", path, -r);
	}
	fd_close(fd);
	return r < 0 ? r : 0;
}

int sandbox_landlock_readonly(const char *const *read_paths, char *status, size_t len)
{
	struct landlock_ruleset_attr attr = { 0 };
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
		if (errno == ENOSYS || errno == EOPNOTSUPP) {
			set_status(status, len, "unavailable%s", NULL, 0);
			return SANDBOX_UNAVAILABLE;
		}
		r = -errno;
		set_status(status, len, "landlock ABI query%s", NULL, -r);
		return r;
	}

	attr.handled_access_fs = handled_for_abi(abi);
	ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0);
	if (ruleset < 0) {
		r = -errno;
		set_status(status, len, "landlock_create_ruleset%s", NULL, -r);
		return r;
	}
	for (size_t i = 0; read_paths && read_paths[i]; i++) {
		r = add_read_rule(ruleset, read_paths[i], attr.handled_access_fs, status, len);
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
	set_status(status, len, "enforced%s", NULL, 0);
	return 0;
}

#else /* !HAVE_LANDLOCK */

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
