/*
 * The master key's rotation (mcpctl key rotate), settling a rotation that
 * was interrupted (store_load_master_key() calls store_key_settle() for the
 * keeper and mcpctl alike), and installing a key file (mcpctl key import).
 * See store.h for the order of the steps and why. Touches the store's
 * databases through store.c's transactions, and the key files in the state
 * directory; key bytes never reach a message.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "log.h"
#include "paths.h"
#include "secret.h"
#include "store-private.h"
#include "store.h"
#include "util.h"

#define errf store_errf

/*
 * Test knob, honoured by build-tree binaries only (paths_in_build_tree()):
 * $MCPKEEPER_TEST_ROTATE_PAUSE=before-commit (master.key.new synced, the
 * transaction not committed) or after-commit (committed, master.key not yet
 * replaced) makes the rotation say so on stderr with its pid and wait, so
 * that tests/integration/test_keys.py can kill it there.
 */
#define ROTATE_PAUSE_SEC 120

static void test_pause(const char *point)
{
	const char *knob = paths_in_build_tree() ? getenv("MCPKEEPER_TEST_ROTATE_PAUSE") : NULL;
	struct timespec ts = { .tv_sec = ROTATE_PAUSE_SEC };

	if (!knob || strcmp(knob, point) != 0)
		return;
	fprintf(stderr, "key rotation: test pause %s (pid %d)\n", point, (int)getpid());
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int sync_dir(const char *dir)
{
	_cleanup_(closep) int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || fsync(fd) < 0)
		return -errno;
	return 0;
}

/* Writes key to dir/name (replacing it), synced; the directory too. */
static int write_key_file(const char *dir, const char *name, const struct secret *key, char *err, size_t errlen)
{
	_cleanup_(closep) int fd = -1;
	char path[4096];
	int r = 0;

	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path)) {
		errf(err, errlen, "%s/%s: path too long", dir, name);
		return -ENAMETOOLONG;
	}
	if (unlink(path) < 0 && errno != ENOENT)
		r = -errno;
	if (r == 0 && (fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0)
		r = -errno;
	if (r == 0)
		r = fd_write_all(fd, key->data, key->len);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0)
		r = sync_dir(dir);
	if (r < 0) {
		errf(err, errlen, "writing the master key %s: %s", path, store_strerror(r));
		if (fd >= 0)
			unlink(path);
	}
	return r;
}

int store_install_key(const char *dir, const struct secret *key, char *err, size_t errlen)
{
	return store_install_key_as(dir, STORE_KEY_FILE, key, err, errlen);
}

int store_install_key_as(const char *dir, const char *file, const struct secret *key, char *err, size_t errlen)
{
	char name[64], from[4096], to[4096];
	int r;

	snprintf(name, sizeof(name), "%s.tmp.%d", file, (int)getpid());
	r = write_key_file(dir, name, key, err, errlen);
	if (r < 0)
		return r;
	snprintf(from, sizeof(from), "%s/%s", dir, name);
	snprintf(to, sizeof(to), "%s/%s", dir, file);
	if (rename(from, to) < 0 || (r = sync_dir(dir)) < 0) {
		r = r ? r : -errno;
		errf(err, errlen, "installing the master key %s: %s", to, store_strerror(r));
		unlink(from);
		return r;
	}
	return 0;
}

/* ---- rotation ---- */

/*
 * The rotation's one transaction write-locks every page of every database:
 * far more locks than Berkeley DB's default table holds once there are a few
 * thousand records (about 600 bytes of shared memory each). Its opener, the
 * only one (or store_rotate() refuses), sizes the table from the files:
 * twice their pages, and room for the rest.
 */
#define ROTATE_SPARE_LOCKS 10000
#define ROTATE_MAX_LOCKS 4000000

int store_open_for_rotation(const char *dir, const struct secret *key, struct store **out, char *err, size_t errlen)
{
	static const char *const files[] = { "tokens.db", "clients.db", "servers.db", "meta.db" };
	unsigned long long pages = 0;

	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		char path[4096];
		struct stat st;

		if (snprintf(path, sizeof(path), "%s/%s", dir, files[i]) < (int)sizeof(path) && stat(path, &st) == 0) {
			/* Berkeley DB's default page size is the file system's block size. */
			unsigned long long page = st.st_blksize < 512 ? 512 : st.st_blksize > 65536 ? 65536 : st.st_blksize;

			pages += (unsigned long long)st.st_size / page + 1;
		}
	}
	pages = 2 * pages + ROTATE_SPARE_LOCKS;
	return store_open_locks(dir, key, (u_int32_t)(pages > ROTATE_MAX_LOCKS ? ROTATE_MAX_LOCKS : pages), out, err,
				errlen);
}

struct rotate_arg {
	const struct secret *new_key;
	unsigned long records;
	pid_t holder;
	int bad_db;
	char bad_key[STORE_SERVER_KEY_MAX + 1];
	char *err;
	size_t errlen;
};

/* Re-seals every record of db under the transaction's write locks. */
static int reseal_db(struct store *s, DB_TXN *txn, int db, struct rotate_arg *a, int *outcome)
{
	DB *h = store_db_handle(s, db);
	DBT k = { .flags = DB_DBT_REALLOC }, v = { .flags = DB_DBT_REALLOC };
	DBC *cur;
	int ret;

	ret = h->cursor(h, txn, &cur, 0);
	if (ret)
		return ret;
	while ((ret = cur->get(cur, &k, &v, DB_NEXT | DB_RMW)) == 0) {
		_cleanup_(secret_freep) struct secret *plain = NULL;
		struct secret *old;
		unsigned char *sealed = NULL;
		DBT nv = { 0 };
		size_t len;
		int r;

		a->bad_db = db;
		snprintf(a->bad_key, sizeof(a->bad_key), "%.*s", (int)(k.size < STORE_SERVER_KEY_MAX ? k.size : STORE_SERVER_KEY_MAX),
			 (const char *)k.data);
		r = k.size > 0 && k.size <= STORE_SERVER_KEY_MAX
			    ? store_unseal_record(s, db, a->bad_key, v.data, v.size, &plain)
			    : STORE_E_CORRUPT;
		if (r > 0) {
			*outcome = r;
			break;
		}
		old = store_swap_key(s, (struct secret *)a->new_key);
		if (r == 0)
			r = store_seal_record(s, db, a->bad_key, plain, &sealed, &len);
		store_swap_key(s, old);
		if (r < 0) {
			ret = -r;
			break;
		}
		nv.data = sealed;
		nv.size = (u_int32_t)len;
		ret = cur->put(cur, &k, &nv, DB_CURRENT);
		free(sealed);
		if (ret)
			break;
		a->records++;
	}
	free(k.data);
	free(v.data);
	cur->close(cur);
	return ret == DB_NOTFOUND ? 0 : ret;
}

/* Every record re-sealed with a->new_key and the key check moved to it. */
static int reseal_all(struct store *s, DB_TXN *txn, struct rotate_arg *a, int *outcome)
{
	DB *meta = store_db_handle(s, STORE_DB_COUNT);
	unsigned char kcv[crypto_generichash_BYTES];
	DBT k = { .data = "key-check", .size = 9 }, v = { .data = kcv, .size = sizeof(kcv) };
	int ret;

	for (int db = 0; db < STORE_DB_COUNT && *outcome == 0; db++) {
		ret = reseal_db(s, txn, db, a, outcome);
		if (ret)
			return ret;
	}
	if (*outcome)
		return 0;
	store_key_check_value(a->new_key, kcv);
	return meta->put(meta, txn, &k, &v, 0);
}

int store_reseal_op(struct store *s, DB_TXN *txn, const struct secret *new_key, unsigned long *records,
		    int *outcome)
{
	struct rotate_arg a = { .new_key = new_key };
	int ret = reseal_all(s, txn, &a, outcome);

	*records = a.records;
	return ret;
}

static int rotate_op(struct store *s, DB_TXN *txn, void *varg, int *outcome)
{
	struct rotate_arg *a = varg;
	DB *meta = store_db_handle(s, STORE_DB_COUNT);
	unsigned char cur_kcv[64];
	DBT k = { .data = "key-check", .size = 9 };
	DBT v = { .data = cur_kcv, .ulen = sizeof(cur_kcv), .flags = DB_DBT_USERMEM };
	int ret, r;

	/* Retried from the start after a conflict. */
	a->records = 0;
	/* First the key check's write lock: an opener arriving now waits for
	 * the outcome, one that came before is in the registry. */
	ret = meta->get(meta, txn, &k, &v, DB_RMW);
	if (ret && ret != DB_NOTFOUND)
		return ret;
	r = store_in_use(store_dir(s), &a->holder);
	if (r < 0)
		return -r;
	if (r == 1) {
		*outcome = STORE_E_IN_USE;
		return 0;
	}
	ret = reseal_all(s, txn, a, outcome);
	if (ret || *outcome)
		return ret;
	/* The new key on disk before the records that need it commit. */
	r = write_key_file(store_dir(s), STORE_KEY_NEW_FILE, a->new_key, a->err, a->errlen);
	if (r < 0)
		return -r;
	test_pause("before-commit");
	return 0;
}

int store_rotate(struct store *s, const struct secret *new_key, unsigned long *records, char *err, size_t errlen)
{
	struct rotate_arg a = { .new_key = new_key, .err = err, .errlen = errlen };
	const char *dir = store_dir(s);
	char from[4096], to[4096];
	struct secret *copy;
	int r;

	if (new_key->len != STORE_KEY_LEN) {
		errf(err, errlen, "store %s: a master key is %d bytes", dir, STORE_KEY_LEN);
		return -EINVAL;
	}
	if (snprintf(from, sizeof(from), "%s/" STORE_KEY_NEW_FILE, dir) >= (int)sizeof(from) ||
	    snprintf(to, sizeof(to), "%s/" STORE_KEY_FILE, dir) >= (int)sizeof(to)) {
		errf(err, errlen, "store %s: path too long", dir);
		return -ENAMETOOLONG;
	}
	copy = secret_from(new_key->data, new_key->len);
	if (!copy)
		return -ENOMEM;
	if (err && errlen)
		err[0] = '\0';
	r = store_run_txn(s, rotate_op, &a);
	if (r) {
		secret_free(copy);
		unlink(from);
		if (r == STORE_E_IN_USE)
			errf(err, errlen, "store %s: process %d has it open", dir, (int)a.holder);
		else if (r == STORE_E_CORRUPT)
			errf(err, errlen, "store %s: the record %s in %s does not open with the current key", dir,
			     a.bad_key, store_db_name((enum store_db)a.bad_db));
		else if (r == -ENOMEM)
			errf(err, errlen, "store %s: the rotation's one transaction ran out of locks or memory; "
			     "nothing changed", dir);
		else if (!err || !err[0])
			errf(err, errlen, "store %s: %s", dir, store_strerror(r));
		return r;
	}
	test_pause("after-commit");
	secret_free(store_swap_key(s, copy));
	/* ENOENT: an opener found the committed rotation and adopted the file. */
	if (rename(from, to) < 0 && errno != ENOENT) {
		r = -errno;
		errf(err, errlen, "store %s: the rotation committed, but renaming %s to %s failed: %s; the next "
			     "opener adopts it", dir, from, to, strerror(-r));
		return r;
	}
	r = sync_dir(dir);
	if (r < 0) {
		errf(err, errlen, "store %s: syncing the directory: %s", dir, strerror(-r));
		return r;
	}
	store_checkpoint(s);
	*records = a.records;
	return 0;
}

/* ---- an interrupted rotation, at the next load ---- */

/* Whether key passes dir's key check: 0, STORE_E_WRONG_KEY, or another outcome. */
static int key_opens(const char *dir, const struct secret *key)
{
	char err[512];
	struct store *s = NULL;
	int r = store_open(dir, key, &s, err, sizeof(err));

	store_close(s);
	return r;
}

int store_key_settle(const char *data_dir, struct secret **key, char *err, size_t errlen)
{
	_cleanup_(secret_freep) struct secret *fresh = NULL;
	char path[4096], meta[4096], to[4096], msg[512];
	struct stat st;
	int r;

	if (snprintf(path, sizeof(path), "%s/" STORE_KEY_NEW_FILE, data_dir) >= (int)sizeof(path) ||
	    snprintf(meta, sizeof(meta), "%s/meta.db", data_dir) >= (int)sizeof(meta) ||
	    snprintf(to, sizeof(to), "%s/" STORE_KEY_FILE, data_dir) >= (int)sizeof(to))
		return 0;	/* the caller's open says what is too long */
	if (lstat(path, &st) < 0)
		return 0;
	r = lstat(meta, &st) < 0 ? 0 : key_opens(data_dir, *key);
	if (r != 0 && r != STORE_E_WRONG_KEY)
		return 0;	/* the caller's own open says what is wrong */
	if (r == 0) {
		/* Written before a rotation's transaction that never committed. */
		if (unlink(path) == 0)
			log_warn("store %s: removed %s, left by a key rotation that did not commit (%s stays the key)",
				 data_dir, path, to);
		return 0;
	}
	if (store_read_key_file(path, 1, &fresh, msg, sizeof(msg)) < 0) {
		log_warn("store %s: %s does not open the store, and %s cannot be read: %s", data_dir, to, path, msg);
		return 0;
	}
	r = key_opens(data_dir, fresh);
	if (r != 0) {
		log_warn("store %s: neither %s nor %s opens the store (%s)", data_dir, to, path, store_strerror(r));
		return 0;
	}
	if (rename(path, to) < 0 || (r = sync_dir(data_dir)) < 0) {
		r = r ? r : -errno;
		errf(err, errlen, "store %s: adopting %s (a key rotation committed, then stopped): %s", data_dir, path,
		     strerror(-r));
		return r;
	}
	log_warn("store %s: adopted %s as %s: a key rotation committed and stopped before it renamed the file",
		 data_dir, path, to);
	secret_free(*key);
	*key = TAKE_PTR(fresh);
	return 0;
}

/* ---- a group site's next key (master.key.next) ---- */

int store_next_key_read(const char *dir, struct secret **key, char *err, size_t errlen)
{
	char path[4096];
	int r;

	if (snprintf(path, sizeof(path), "%s/" STORE_KEY_NEXT_FILE, dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	if (access(path, F_OK) < 0)
		return 0;
	r = store_read_key_file(path, 1, key, err, errlen);
	return r < 0 ? r : 1;
}

int store_next_key_adopt(const char *dir, char *err, size_t errlen)
{
	char from[4096], to[4096];
	int r;

	if (snprintf(from, sizeof(from), "%s/" STORE_KEY_NEXT_FILE, dir) >= (int)sizeof(from) ||
	    snprintf(to, sizeof(to), "%s/" STORE_KEY_FILE, dir) >= (int)sizeof(to)) {
		errf(err, errlen, "store %s: path too long", dir);
		return -ENAMETOOLONG;
	}
	if (rename(from, to) < 0 || (r = sync_dir(dir)) < 0) {
		r = -errno;
		errf(err, errlen, "%s could not replace %s: %s", from, to, strerror(-r));
		return r;
	}
	return 0;
}
