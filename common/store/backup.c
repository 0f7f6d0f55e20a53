/*
 * Backup and restore of the store (see store.h for the file format). The
 * copy is Berkeley DB's hot backup (DB_ENV->backup) with callbacks that
 * write each file as an entry of one archive file instead of a directory;
 * the restore side checks the whole archive before it writes a byte, writes
 * the files into a directory the caller prepared, and runs catastrophic
 * recovery there. Touches only the descriptors and directories it is given;
 * never unseals a record.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <db.h>
#include <sodium.h>

#include "store-private.h"
#include "store.h"
#include "util.h"

#define BACKUP_MAGIC "MCPKBAK"	/* with its terminating NUL: 8 bytes */
#define BACKUP_MAGIC_LEN 8
#define BACKUP_VERSION 1
#define BACKUP_HEAD_LEN (BACKUP_MAGIC_LEN + 4)
#define BACKUP_HASH_LEN 32
#define BACKUP_NAME_MAX 255
#define BACKUP_FILES_MAX 4096
#define BACKUP_CHUNK (64 * 1024)

static void put_be(unsigned char *p, uint64_t v, int n)
{
	for (int i = n - 1; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static uint64_t get_be(const unsigned char *p, int n)
{
	uint64_t v = 0;

	for (int i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

static int pwrite_all(int fd, const void *data, size_t len, off_t off)
{
	const unsigned char *p = data;

	while (len) {
		ssize_t w = pwrite(fd, p, len, off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		off += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Reads exactly len bytes at off: 0, -ENODATA at the end of the file, or
 * another negative errno value. */
static int pread_all(int fd, void *data, size_t len, off_t off)
{
	unsigned char *p = data;

	while (len) {
		ssize_t r = pread(fd, p, len, off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ENODATA;
		p += r;
		off += r;
		len -= (size_t)r;
	}
	return 0;
}

/* A file name the store holds: one of its databases or a log file
 * ("log." and 10 digits). Nothing else goes into or comes out of a backup. */
static bool name_ok(const char *name, size_t len)
{
	char buf[BACKUP_NAME_MAX + 1];

	if (len == 0 || len > BACKUP_NAME_MAX || memchr(name, '\0', len))
		return false;
	if (len == 14 && memcmp(name, "log.", 4) == 0) {
		for (size_t i = 4; i < len; i++)
			if (name[i] < '0' || name[i] > '9')
				return false;
		return true;
	}
	memcpy(buf, name, len);
	buf[len] = '\0';
	return store_file_is_db(buf);
}

/* ---- writing ---- */

struct backup_ctx {
	int fd;
	off_t pos;		/* where the next entry starts */
	off_t data;		/* the current entry's first data byte */
	off_t end;		/* the current entry's end so far */
	unsigned files;
	long first_log;		/* the lowest log file number copied; 0: none */
	int error;		/* first failure, a negative errno value */
	char name[BACKUP_NAME_MAX + 1];
};

static struct backup_ctx *ctx_of(DB_ENV *env)
{
	return env->app_private;
}

static int cb_open(DB_ENV *env, const char *dbname, const char *target, void **handle)
{
	struct backup_ctx *c = ctx_of(env);
	const char *base = strrchr(dbname, '/') ? strrchr(dbname, '/') + 1 : dbname;
	size_t n = strlen(base);
	unsigned char head[2 + BACKUP_NAME_MAX + 8];
	int r;

	if (!name_ok(base, n) || c->files >= BACKUP_FILES_MAX) {
		c->error = -EINVAL;
		return EINVAL;
	}
	memcpy(c->name, base, n + 1);
	if (strncmp(base, "log.", 4) == 0) {
		long num = strtol(base + 4, NULL, 10);

		if (num > 0 && (c->first_log == 0 || num < c->first_log))
			c->first_log = num;
	}
	put_be(head, n, 2);
	memcpy(head + 2, base, n);
	put_be(head + 2 + n, 0, 8);	/* the length, set at close */
	r = pwrite_all(c->fd, head, 2 + n + 8, c->pos);
	if (r < 0) {
		c->error = r;
		return -r;
	}
	c->data = c->end = c->pos + 2 + (off_t)n + 8;
	*handle = c;
	return 0;
}

static int cb_write(DB_ENV *env, u_int32_t gigs, u_int32_t off, u_int32_t size, u_int8_t *buf, void *handle)
{
	struct backup_ctx *c = handle;
	off_t at = c->data + (off_t)gigs * 1024 * 1024 * 1024 + off;
	int r = pwrite_all(c->fd, buf, size, at);

	if (r < 0) {
		c->error = r;
		return -r;
	}
	if (at + (off_t)size > c->end)
		c->end = at + (off_t)size;
	return 0;
}

static int cb_close(DB_ENV *env, const char *dbname, void *handle)
{
	struct backup_ctx *c = ctx_of(env);
	unsigned char len[8];
	int r;

	if (!handle)
		return 0;
	put_be(len, (uint64_t)(c->end - c->data), 8);
	r = pwrite_all(c->fd, len, 8, c->data - 8);
	if (r < 0) {
		c->error = r;
		return -r;
	}
	c->pos = c->end;
	c->files++;
	return 0;
}

/* The hash of the first len bytes of fd. */
static int hash_file(int fd, off_t len, unsigned char out[BACKUP_HASH_LEN])
{
	crypto_generichash_state st;
	unsigned char buf[BACKUP_CHUNK];
	off_t at = 0;

	crypto_generichash_init(&st, NULL, 0, BACKUP_HASH_LEN);
	while (at < len) {
		size_t n = len - at < (off_t)sizeof(buf) ? (size_t)(len - at) : sizeof(buf);
		int r = pread_all(fd, buf, n, at);

		if (r < 0)
			return r;
		crypto_generichash_update(&st, buf, n);
		at += (off_t)n;
	}
	crypto_generichash_final(&st, out, BACKUP_HASH_LEN);
	return 0;
}

/* The lowest log file number in the environment now; 0: none or unknown. */
static long first_log_now(DB_ENV *env)
{
	char **list = NULL;
	long first = 0;

	if (env->log_archive(env, &list, DB_ARCH_LOG) != 0 || !list)
		return 0;
	for (char **p = list; *p; p++) {
		const char *base = strrchr(*p, '/') ? strrchr(*p, '/') + 1 : *p;
		long num = strncmp(base, "log.", 4) == 0 ? strtol(base + 4, NULL, 10) : 0;

		if (num > 0 && (first == 0 || num < first))
			first = num;
	}
	free(list);
	return first;
}

/*
 * One attempt. The checkpoint first puts every change before it into the
 * database files, so the copy needs every log file from the checkpoint's
 * on; the keeper removes log files it no longer needs (DB_LOG_AUTO_REMOVE)
 * at its own checkpoints, and Berkeley DB's hot backup does not hold that
 * off: an attempt during which one went missing is -EAGAIN.
 */
static int backup_once(DB_ENV *env, struct backup_ctx *c, char *err, size_t errlen)
{
	long first;
	int ret;

	env->txn_checkpoint(env, 0, 0, DB_FORCE);
	first = first_log_now(env);
	env->app_private = c;
	env->set_backup_callbacks(env, cb_open, cb_write, cb_close);
	/* The target is only handed to cb_open; no directory is made. */
	ret = env->backup(env, "backup", 0);
	env->set_backup_callbacks(env, NULL, NULL, NULL);
	env->app_private = NULL;
	if (ret || c->error) {
		store_errf(err, errlen, "hot backup of the store failed: %s",
			   c->error ? strerror(-c->error) : db_strerror(ret));
		return c->error ? c->error : (ret == ENOENT ? -EAGAIN : -EIO);
	}
	if (c->files == 0) {
		store_errf(err, errlen, "hot backup of the store copied no file");
		return -EIO;
	}
	if (first && (c->first_log == 0 || c->first_log > first)) {
		store_errf(err, errlen, "log files were removed while they were copied");
		return -EAGAIN;
	}
	return 0;
}

int store_backup(struct store *s, int fd, unsigned *files, unsigned long long *bytes, char *err, size_t errlen)
{
	DB_ENV *env = store_db_env(s);
	struct backup_ctx c = { .fd = fd, .pos = BACKUP_HEAD_LEN };
	unsigned char head[BACKUP_HEAD_LEN], tail[2 + BACKUP_HASH_LEN] = { 0 };
	int r;

	if (!env) {
		store_errf(err, errlen, "the store's environment is closed");
		return -EIO;
	}
	memcpy(head, BACKUP_MAGIC, BACKUP_MAGIC_LEN);
	put_be(head + BACKUP_MAGIC_LEN, BACKUP_VERSION, 4);
	r = pwrite_all(fd, head, sizeof(head), 0);
	if (r < 0) {
		store_errf(err, errlen, "writing the backup: %s", strerror(-r));
		return r;
	}
	for (int attempt = 1;; attempt++) {
		r = backup_once(env, &c, err, errlen);
		if (r != -EAGAIN || attempt == 3)
			break;
		/* Start the entries over. */
		c = (struct backup_ctx){ .fd = fd, .pos = BACKUP_HEAD_LEN };
		if (ftruncate(fd, BACKUP_HEAD_LEN) < 0) {
			r = -errno;
			store_errf(err, errlen, "writing the backup: %s", strerror(-r));
			break;
		}
	}
	if (r < 0)
		return r;
	r = pwrite_all(fd, tail, 2, c.pos);
	if (r == 0)
		r = hash_file(fd, c.pos + 2, tail + 2);
	if (r == 0)
		r = pwrite_all(fd, tail + 2, BACKUP_HASH_LEN, c.pos + 2);
	if (r < 0) {
		store_errf(err, errlen, "writing the backup: %s", strerror(-r));
		return r;
	}
	*files = c.files;
	*bytes = (unsigned long long)(c.pos + 2 + BACKUP_HASH_LEN);
	return 0;
}

/* ---- reading ---- */

static int copy_range(int from, off_t at, uint64_t len, int to, char *err, size_t errlen, const char *name)
{
	unsigned char buf[BACKUP_CHUNK];
	off_t out = 0;

	while (len) {
		size_t n = len < sizeof(buf) ? (size_t)len : sizeof(buf);
		int r = pread_all(from, buf, n, at);

		if (r == 0)
			r = pwrite_all(to, buf, n, out);
		if (r < 0) {
			store_errf(err, errlen, "restoring %s: %s", name, strerror(-r));
			return r;
		}
		at += (off_t)n;
		out += (off_t)n;
		len -= n;
	}
	if (fsync(to) < 0) {
		int e = errno;

		store_errf(err, errlen, "restoring %s: %s", name, strerror(e));
		return -e;
	}
	return 0;
}

/* One pass over the entries: with dirfd >= 0 each is written there. */
static int walk(int fd, off_t size, int dirfd, char *err, size_t errlen)
{
	off_t at = BACKUP_HEAD_LEN;
	unsigned files = 0;

	for (;;) {
		unsigned char lenb[8];
		char name[BACKUP_NAME_MAX + 1];
		uint64_t nlen, dlen;
		int r;

		if (size - at < 2)
			goto truncated;
		r = pread_all(fd, lenb, 2, at);
		if (r < 0)
			goto io;
		nlen = get_be(lenb, 2);
		at += 2;
		if (nlen == 0)
			break;
		if (nlen > BACKUP_NAME_MAX || size - at < (off_t)nlen + 8)
			goto truncated;
		r = pread_all(fd, name, nlen, at);
		if (r == 0)
			r = pread_all(fd, lenb, 8, at + (off_t)nlen);
		if (r < 0)
			goto io;
		name[nlen] = '\0';
		if (!name_ok(name, nlen) || strlen(name) != nlen) {
			store_errf(err, errlen, "entry %u has a name no store file has", files + 1);
			return STORE_E_CORRUPT;
		}
		at += (off_t)nlen + 8;
		dlen = get_be(lenb, 8);
		if (dlen > (uint64_t)(size - at))
			goto truncated;
		if (++files > BACKUP_FILES_MAX) {
			store_errf(err, errlen, "more than %d files", BACKUP_FILES_MAX);
			return STORE_E_CORRUPT;
		}
		if (dirfd >= 0) {
			_cleanup_(closep) int out =
				openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);

			if (out < 0) {
				int e = errno;

				store_errf(err, errlen, "restoring %s: %s", name,
				     e == EEXIST ? "the backup holds it twice" : strerror(e));
				return e == EEXIST ? STORE_E_CORRUPT : -e;
			}
			r = copy_range(fd, at, dlen, out, err, errlen, name);
			if (r < 0)
				return r;
		}
		at += (off_t)dlen;
	}
	if (size - at != BACKUP_HASH_LEN)
		goto truncated;
	if (files == 0) {
		store_errf(err, errlen, "it holds no file");
		return STORE_E_CORRUPT;
	}
	return 0;
truncated:
	store_errf(err, errlen, "it is truncated or its sizes are damaged");
	return STORE_E_CORRUPT;
io:
	store_errf(err, errlen, "reading it: %s", strerror(EIO));
	return -EIO;
}

int store_backup_extract(int fd, const char *dir, char *err, size_t errlen)
{
	unsigned char head[BACKUP_HEAD_LEN], want[BACKUP_HASH_LEN], got[BACKUP_HASH_LEN];
	_cleanup_(closep) int dirfd = -1;
	struct stat st;
	off_t size;
	int r;

	if (sodium_init() < 0) {
		store_errf(err, errlen, "libsodium failed to initialise");
		return -EIO;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		store_errf(err, errlen, "not a regular file");
		return STORE_E_CORRUPT;
	}
	size = st.st_size;
	if (size < BACKUP_HEAD_LEN + 2 + BACKUP_HASH_LEN || pread_all(fd, head, sizeof(head), 0) < 0 ||
	    memcmp(head, BACKUP_MAGIC, BACKUP_MAGIC_LEN) != 0) {
		store_errf(err, errlen, "not an mcpkeeper backup (no header)");
		return STORE_E_CORRUPT;
	}
	if (get_be(head + BACKUP_MAGIC_LEN, 4) != BACKUP_VERSION) {
		store_errf(err, errlen, "backup format version %u: this mcpctl reads version %d",
		     (unsigned)get_be(head + BACKUP_MAGIC_LEN, 4), BACKUP_VERSION);
		return STORE_E_CORRUPT;
	}
	r = hash_file(fd, size - BACKUP_HASH_LEN, got);
	if (r == 0)
		r = pread_all(fd, want, BACKUP_HASH_LEN, size - BACKUP_HASH_LEN);
	if (r < 0) {
		store_errf(err, errlen, "reading it: %s", strerror(-r));
		return r;
	}
	r = walk(fd, size, -1, err, errlen);
	if (r)
		return r;
	if (sodium_memcmp(want, got, BACKUP_HASH_LEN) != 0) {
		store_errf(err, errlen, "its checksum does not match: the file is damaged");
		return STORE_E_CORRUPT;
	}
	if (!dir)
		return 0;
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dirfd < 0) {
		int e = errno;

		store_errf(err, errlen, "%s: %s", dir, strerror(e));
		return -e;
	}
	r = walk(fd, size, dirfd, err, errlen);
	if (r == 0 && fsync(dirfd) < 0) {
		r = -errno;
		store_errf(err, errlen, "%s: %s", dir, strerror(-r));
	}
	return r;
}

/* ---- recovery and liveness ---- */

int store_recover_fatal(const char *dir, char *err, size_t errlen)
{
	char path[4096];
	DB_ENV *env;
	int ret;

	/* Regions in shared memory, as store.c keeps them: never memory-mapped
	 * files that a full disk turns into SIGBUS. */
	long shm_key = store_shm_key(dir);

	if (shm_key < 0) {
		store_errf(err, errlen, "%s: %s", dir, strerror((int)-shm_key));
		return (int)shm_key;
	}
	ret = db_env_create(&env, 0);
	if (ret == 0) {
		env->set_shm_key(env, shm_key);
		ret = env->open(env, dir,
				DB_CREATE | DB_INIT_TXN | DB_INIT_LOG | DB_INIT_LOCK | DB_INIT_MPOOL | DB_RECOVER_FATAL |
					DB_SYSTEM_MEM,
				0600);
		if (ret == 0)
			ret = env->txn_checkpoint(env, 0, 0, DB_FORCE);
		env->close(env, 0);
	}
	if (ret == 0 && (ret = db_env_create(&env, 0)) == 0) {
		env->set_shm_key(env, shm_key);
		ret = env->remove(env, dir, DB_FORCE);
	}
	if (ret) {
		store_errf(err, errlen, "recovery of %s: %s", dir, db_strerror(ret));
		return ret > 0 ? -ret : -EIO;
	}
	/* The registry is not a region: remove() leaves it. */
	if (snprintf(path, sizeof(path), "%s/__db.register", dir) < (int)sizeof(path) && unlink(path) < 0 &&
	    errno != ENOENT) {
		int e = errno;

		store_errf(err, errlen, "%s: %s", path, strerror(e));
		return -e;
	}
	return 0;
}

int store_in_use(const char *dir, pid_t *pid)
{
	char path[4096];
	_cleanup_(closep) int fd = -1;
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };

	if (snprintf(path, sizeof(path), "%s/__db.register", dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (fcntl(fd, F_GETLK, &fl) < 0)
		return -errno;
	if (fl.l_type == F_UNLCK)
		return 0;
	*pid = fl.l_pid;
	return 1;
}
