/*
 * The master key: read from $CREDENTIALS_DIRECTORY or the key file in the
 * data directory, created there (0600) on the first start. The store's
 * module for the key file; touches only that file and its directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "log.h"
#include "paths.h"
#include "secret.h"
#include "store-private.h"
#include "store.h"
#include "util.h"

#define KEY_FILE_MAX 1024
#define errf store_errf

static int parse_key(const unsigned char *raw, size_t n, struct secret *key)
{
	size_t bin_len = 0;

	if (n == STORE_KEY_LEN) {
		memcpy(key->data, raw, STORE_KEY_LEN);
		return 0;
	}
	while (n > 0 && (raw[n - 1] == '\n' || raw[n - 1] == '\r'))
		n--;
	if (n != 2 * STORE_KEY_LEN)
		return -EINVAL;
	if (sodium_hex2bin(key->data, STORE_KEY_LEN, (const char *)raw, n, NULL, &bin_len, NULL) != 0 ||
	    bin_len != STORE_KEY_LEN)
		return -EINVAL;
	return 0;
}

static int read_key_file(const char *path, int check_mode, struct secret **out, char *err, size_t errlen)
{
	_cleanup_(closep) int fd = -1;
	_cleanup_(secret_freep) struct secret *raw = NULL, *key = NULL;
	struct stat st;
	size_t n = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
	if (fd < 0) {
		int e = errno;

		errf(err, errlen, "master key %s: %s", path, strerror(e));
		return -e;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		errf(err, errlen, "master key %s: not a regular file", path);
		return -EINVAL;
	}
	if (check_mode && (st.st_mode & 077)) {
		errf(err, errlen, "master key %s: readable by group or others (mode %04o); chmod 600 it",
		     path, (unsigned)(st.st_mode & 07777));
		return -EACCES;
	}
	raw = secret_new(KEY_FILE_MAX);
	key = secret_new(STORE_KEY_LEN);
	if (!raw || !key)
		return -ENOMEM;
	for (;;) {
		ssize_t r = read(fd, raw->data + n, KEY_FILE_MAX - n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;

			errf(err, errlen, "master key %s: %s", path, strerror(e));
			return -e;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n == KEY_FILE_MAX) {
			errf(err, errlen, "master key %s: file too large", path);
			return -EINVAL;
		}
	}
	if (parse_key(raw->data, n, key) < 0) {
		errf(err, errlen, "master key %s: must hold 32 bytes, raw or as 64 hex digits", path);
		return -EINVAL;
	}
	*out = TAKE_PTR(key);
	return 0;
}

/* The state directory holds the master key and the database: ours alone. */
int store_ensure_dir(const char *dir, char *err, size_t errlen)
{
	char msg[512];
	int r = paths_ensure_private_dir(dir, msg, sizeof(msg));

	if (r < 0)
		errf(err, errlen, "state directory %s", msg);
	return r;
}

/*
 * A new key is written to a temporary file and linked into place, so that two
 * processes starting at once agree on one key and neither reads a half-written
 * file.
 */
static int create_key_file(const char *path, char *err, size_t errlen)
{
	_cleanup_(secret_freep) struct secret *key = secret_new(STORE_KEY_LEN);
	char tmp[4096];
	int fd, r;

	if (!key)
		return -ENOMEM;
	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	randombytes_buf(key->data, STORE_KEY_LEN);
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		r = -errno;
		errf(err, errlen, "master key %s: %s", tmp, strerror(-r));
		return r;
	}
	r = fd_write_all(fd, key->data, STORE_KEY_LEN);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	close(fd);
	if (r == 0 && link(tmp, path) < 0 && errno != EEXIST)
		r = -errno;
	unlink(tmp);
	if (r < 0)
		errf(err, errlen, "master key %s: %s", path, strerror(-r));
	return r;
}

int store_load_master_key(const char *data_dir, struct secret **key, char *err, size_t errlen)
{
	const char *creds = getenv("CREDENTIALS_DIRECTORY");
	char path[4096];
	int r;

	if (sodium_init() < 0) {
		errf(err, errlen, "libsodium failed to initialise");
		return -EIO;
	}
	if (creds && *creds) {
		if (snprintf(path, sizeof(path), "%s/master-key", creds) >= (int)sizeof(path))
			return -ENAMETOOLONG;
		/* systemd owns that directory and the file's mode. */
		return read_key_file(path, 0, key, err, errlen);
	}
	if (snprintf(path, sizeof(path), "%s/master.key", data_dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	r = read_key_file(path, 1, key, err, errlen);
	if (r == 0)
		return store_key_settle(data_dir, key, err, errlen);
	if (r != -ENOENT)
		return r;
	r = store_ensure_dir(data_dir, err, errlen);
	if (r < 0)
		return r;
	r = create_key_file(path, err, errlen);
	if (r < 0)
		return r;
	log_info("created a new master key in %s", path);
	return read_key_file(path, 1, key, err, errlen);
}

int store_read_key_file(const char *path, int check_mode, struct secret **out, char *err, size_t errlen)
{
	return read_key_file(path, check_mode, out, err, errlen);
}
