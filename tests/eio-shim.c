/*
 * eio-shim: a test-only LD_PRELOAD library that makes writes, syncs, renames
 * and truncations under one directory fail on command, the way a dying disk
 * (EIO) or a filesystem remounted read-only (EROFS) would. Built for the
 * tests only, never installed; tests/integration/test_disk.py puts it into
 * the keeper alone (the keeper's children get a cleaned environment).
 *
 *   MCPKEEPER_EIO_DIR=DIR        the directory (the state directory), as given
 *   MCPKEEPER_EIO_TRIGGER=FILE   while FILE exists, calls on files under DIR
 *                                fail; its first line names the error: "EIO"
 *                                (also when empty) or "EROFS"
 *
 * The calls are those Berkeley DB 5.3 makes when it writes (strace of a
 * store write: write, pwrite64, fdatasync, fsync, rename) and their
 * siblings. A descriptor's path comes from /proc/self/fd.
 */
/* Both pwrite and pwrite64 must be defined here, so no redirection of one
 * to the other (meson passes -D_FILE_OFFSET_BITS=64 and -D_GNU_SOURCE). */
#undef _FILE_OFFSET_BITS
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static bool under_dir(const char *path)
{
	const char *dir = getenv("MCPKEEPER_EIO_DIR");
	size_t n;

	if (!dir || !*dir || !path)
		return false;
	n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/')
		n--;
	return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* The errno to fail with while the trigger file exists, else 0. */
static int armed(void)
{
	const char *trigger = getenv("MCPKEEPER_EIO_TRIGGER");
	char word[16] = "";
	int saved = errno, fd, e = 0;
	ssize_t n;

	if (!trigger || !*trigger)
		return 0;
	fd = open(trigger, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = read(fd, word, sizeof(word) - 1);
		word[n > 0 ? n : 0] = '\0';
		close(fd);
		e = strncmp(word, "EROFS", 5) == 0 ? EROFS : EIO;
	}
	errno = saved;
	return e;
}

static int fd_fails(int fd)
{
	char link[64], path[4096];
	ssize_t n;
	int saved = errno, e;

	if (fd < 0 || !(e = armed()))
		return 0;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, path, sizeof(path) - 1);
	errno = saved;
	if (n <= 0)
		return 0;
	path[n] = '\0';
	return under_dir(path) ? e : 0;
}

static int path_fails(int dirfd, const char *path)
{
	char full[8192], link[64], base[4096];
	ssize_t n;
	int saved = errno, e;

	if (!path || !(e = armed()))
		return 0;
	if (path[0] == '/' || dirfd == AT_FDCWD) {
		if (path[0] == '/')
			snprintf(full, sizeof(full), "%s", path);
		else if (getcwd(base, sizeof(base)))
			snprintf(full, sizeof(full), "%s/%s", base, path);
		else
			full[0] = '\0';
	} else {
		snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
		n = readlink(link, base, sizeof(base) - 1);
		if (n <= 0)
			n = 0;
		base[n] = '\0';
		snprintf(full, sizeof(full), "%s/%s", base, path);
	}
	errno = saved;
	return under_dir(full) ? e : 0;
}

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))
#define FAIL_FD(fd)                                                                                              \
	do {                                                                                                     \
		int e_ = fd_fails(fd);                                                                           \
		if (e_) {                                                                                        \
			errno = e_;                                                                              \
			return -1;                                                                               \
		}                                                                                                \
	} while (0)
#define FAIL_PATH(dirfd, path)                                                                                   \
	do {                                                                                                     \
		int e_ = path_fails(dirfd, path);                                                                \
		if (e_) {                                                                                        \
			errno = e_;                                                                              \
			return -1;                                                                               \
		}                                                                                                \
	} while (0)

ssize_t write(int fd, const void *buf, size_t len)
{
	FAIL_FD(fd);
	return REAL(write)(fd, buf, len);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
	FAIL_FD(fd);
	return REAL(pwrite)(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t off)
{
	FAIL_FD(fd);
	return REAL(pwrite64)(fd, buf, len, off);
}

ssize_t writev(int fd, const struct iovec *iov, int n)
{
	FAIL_FD(fd);
	return REAL(writev)(fd, iov, n);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
	FAIL_FD(fd);
	return REAL(pwritev)(fd, iov, n, off);
}

int fsync(int fd)
{
	FAIL_FD(fd);
	return REAL(fsync)(fd);
}

int fdatasync(int fd)
{
	FAIL_FD(fd);
	return REAL(fdatasync)(fd);
}

int ftruncate(int fd, off_t len)
{
	FAIL_FD(fd);
	return REAL(ftruncate)(fd, len);
}

int rename(const char *from, const char *to)
{
	FAIL_PATH(AT_FDCWD, from);
	FAIL_PATH(AT_FDCWD, to);
	return REAL(rename)(from, to);
}

int renameat(int fromfd, const char *from, int tofd, const char *to)
{
	FAIL_PATH(fromfd, from);
	FAIL_PATH(tofd, to);
	return REAL(renameat)(fromfd, from, tofd, to);
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned flags)
{
	FAIL_PATH(fromfd, from);
	FAIL_PATH(tofd, to);
	return REAL(renameat2)(fromfd, from, tofd, to, flags);
}
