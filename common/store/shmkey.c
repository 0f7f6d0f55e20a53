/*
 * The System V shared memory key of a state directory's environment regions
 * (see store.c: DB_SYSTEM_MEM). The base key is a random slot kept in the
 * private state directory (store.shmkey, 0600), written once by the first
 * opener, so that no other local user can predict it and pre-create a
 * segment there (which would keep the keeper from starting), and every
 * opener of the directory (the keeper, mcpctl as the same user) finds the
 * same key. A restored directory is a new directory: its file is made fresh
 * (backups never carry it). Touches only that file and, to explain a
 * failure, the kernel's table of segments.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "store-private.h"
#include "store.h"

#define SHM_KEY_FILE "store.shmkey"
#define SHM_KEY_FILE_MAX 32
/* How long a loser of the creation race waits for the winner's one write. */
#define SHM_KEY_WAIT_TRIES 200
#define SHM_KEY_WAIT_NS (5 * 1000 * 1000L)

/* Reads the slot from fd: 0 with *slot, -EAGAIN while the file is empty,
 * -EINVAL when it holds anything but a slot number. */
static int slot_read(int fd, unsigned long *slot)
{
	char buf[SHM_KEY_FILE_MAX + 1], *end;
	ssize_t n;

	do
		n = pread(fd, buf, SHM_KEY_FILE_MAX, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (n == 0)
		return -EAGAIN;
	buf[n] = '\0';
	if (buf[n - 1] != '\n' || buf[0] < '0' || buf[0] > '9')
		return -EINVAL;
	errno = 0;
	*slot = strtoul(buf, &end, 10);
	if (errno || *end != '\n' || *slot >= (unsigned long)SHM_KEY_SLOTS)
		return -EINVAL;
	return 0;
}

/* Creates the file with a fresh random slot: 0, -EEXIST or another errno. */
static int slot_create(const char *path, unsigned long *slot)
{
	char buf[SHM_KEY_FILE_MAX];
	int fd, n, r = 0;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	*slot = randombytes_uniform((uint32_t)SHM_KEY_SLOTS);
	n = snprintf(buf, sizeof(buf), "%lu\n", *slot);
	errno = 0;
	if (write(fd, buf, (size_t)n) != n || fsync(fd) < 0)
		r = errno ? -errno : -EIO;
	close(fd);
	if (r < 0)
		unlink(path);
	return r;
}

long store_shm_key(const char *dir)
{
	struct timespec ts = { 0, SHM_KEY_WAIT_NS };
	char path[4096];
	unsigned long slot = 0;
	int r = -ENOENT;

	if (snprintf(path, sizeof(path), "%s/" SHM_KEY_FILE, dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	for (int i = 0; i < SHM_KEY_WAIT_TRIES; i++) {
		int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

		if (fd < 0 && errno == ENOENT) {
			r = slot_create(path, &slot);
			if (r != -EEXIST)
				break;
			continue;	/* another opener made it meanwhile: read theirs */
		}
		if (fd < 0)
			return -errno;
		r = slot_read(fd, &slot);
		close(fd);
		if (r != -EAGAIN)
			break;
		nanosleep(&ts, NULL);	/* the creator has not written it yet */
	}
	if (r == -EAGAIN)
		return -ETIMEDOUT;
	if (r < 0)
		return r;
	return SHM_KEY_BASE + (long)slot * SHM_KEY_STRIDE;
}

/* The owner of the segment at key: 0 with *uid, or a negative errno value.
 * shmctl() first; a segment we may not read is still in /proc. */
static int segment_owner(long key, uid_t *uid)
{
	struct shmid_ds ds;
	char line[512];
	FILE *f;
	int id = shmget((key_t)key, 0, 0);

	if (id >= 0 && shmctl(id, IPC_STAT, &ds) == 0) {
		*uid = ds.shm_perm.uid;
		return 0;
	}
	if (id < 0 && errno == ENOENT)
		return -ENOENT;
	f = fopen("/proc/sysvipc/shm", "re");
	if (!f)
		return -errno;
	/* key shmid perms size cpid lpid nattch uid ... */
	while (fgets(line, sizeof(line), f)) {
		long k;
		unsigned u;

		if (sscanf(line, "%ld %*d %*o %*u %*d %*d %*u %u", &k, &u) == 2 && k == key) {
			*uid = u;
			fclose(f);
			return 0;
		}
	}
	fclose(f);
	return -ENOENT;
}

void store_shm_explain(const char *dir, long base, char *err, size_t errlen)
{
	uid_t uid;

	/* Berkeley DB takes the base key and the next ones, one per region. */
	for (long key = base; key < base + SHM_KEY_STRIDE; key++) {
		if (segment_owner(key, &uid) < 0)
			continue;
		store_errf(err, errlen,
			   "store %s: a shared memory segment at its key 0x%lx already exists, owned by uid %u%s; "
			   "if no mcpkeeper of this state directory runs, remove it with `ipcrm -M 0x%lx`",
			   dir, key, (unsigned)uid, uid == geteuid() ? "" : " (another user)", key);
		return;
	}
}
