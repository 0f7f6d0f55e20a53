/*
 * See store.h. Everything Berkeley DB is behind this file and backup.c
 * (hot backup and catastrophic recovery); nothing else in mcpkeeper
 * includes db.h (a test tool does, to die inside a transaction on purpose). The store sees only sealed bytes on disk and
 * hands out unsealed records in secret buffers.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <db.h>
#include <sodium.h>

#include "log.h"
#include "paths.h"
#include "proto.h"
#include "secret.h"
#include "store-private.h"
#include "store.h"
#include "util.h"

#define SEAL_VERSION 1
#define SEAL_NONCE crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define SEAL_TAG crypto_aead_xchacha20poly1305_ietf_ABYTES
#define SEAL_OVERHEAD (1 + SEAL_NONCE + SEAL_TAG)

#define SCHEMA_VERSION 1
#define KEY_CHECK_CONTEXT "mcpkeeper key check v1"

/* Largest record accepted (sealed): a token record's two tokens at their
 * largest (token.c refuses longer ones) and room for everything else
 * (endpoints, client, scope). */
#define RECORD_MAX (2 * PROTO_MAX_TOKEN + 32 * 1024)

/* How long one operation keeps retrying while another process holds its locks. */
#define STORE_BUSY_USEC (10 * 1000000)

/*
 * Not DB_FAILCHK: at open it waits on mutexes that a killed process may hold
 * and hangs; DB_REGISTER's recovery rebuilds the regions instead. failchk runs
 * later, when a lock conflict suggests a dead holder.
 */
#define ENV_OPEN_FLAGS                                                                                           \
	(DB_CREATE | DB_INIT_TXN | DB_INIT_LOG | DB_INIT_LOCK | DB_INIT_MPOOL | DB_RECOVER | DB_REGISTER |      \
	 DB_SYSTEM_MEM)

#define STORE_LOCK_FILE "store.lock"
/* Replacements of the state directory an opener sits out (store_lock()). */
#define STORE_LOCK_TRIES 20

static const char *const db_files[STORE_DB_COUNT] = {
	[STORE_TOKENS] = "tokens.db",
	[STORE_CLIENTS] = "clients.db",
	[STORE_SERVERS] = "servers.db",
};

static const char *const db_names[STORE_DB_COUNT] = {
	[STORE_TOKENS] = "tokens",
	[STORE_CLIENTS] = "clients",
	[STORE_SERVERS] = "servers",
};

struct store {
	char *dir;
	struct secret *key;
	DB_ENV *env;
	DB *db[STORE_DB_COUNT];
	DB *meta;
	unsigned reopens;
	long shm_key;
	int lock_fd;	/* store.lock, held shared while open (see store_lock()) */
	/* A site of a replication group (group.c); NULL on a single host. */
	struct store_group_rt *grp;
	bool ready;		/* the databases are open (always, on a single host) */
	bool key_checked;	/* a group site's key passed the group's key check */
	/* A master whose lease Berkeley DB found expired (paused, cut off):
	 * until then it acts as no master, without asking Berkeley DB again
	 * (each ask may block for up to a lease), unless an event says more. */
	uint64_t lease_lost_until;	/* monotonic usec; 0: not lost */
	u_int32_t max_locks;	/* 0: Berkeley DB's default (store_open_locks()) */
	/* A group site's next master key (master.key.next): records sealed
	 * with it open too, and once the group's key check names it, it
	 * becomes the key (store_group_rotate(), store_key_promote()). */
	struct secret *next_key;
	bool key_promoted;	/* the next key became the key: store_key_promoted() */
};

bool store_file_is_db(const char *name)
{
	for (int i = 0; i < STORE_DB_COUNT; i++)
		if (strcmp(name, db_files[i]) == 0)
			return true;
	return strcmp(name, "meta.db") == 0;
}

const char *store_db_name(enum store_db db)
{
	return db < STORE_DB_COUNT ? db_names[db] : "?";
}

const char *store_strerror(int status)
{
	switch (status) {
	case 0:
		return "ok";
	case STORE_E_NOT_FOUND:
		return "no such record";
	case STORE_E_CORRUPT:
		return "record does not open (tampered, moved or damaged)";
	case STORE_E_WRONG_KEY:
		return "wrong master key";
	case STORE_E_CONFLICT:
		return "record changed concurrently";
	case STORE_E_SCHEMA:
		return "store written by a newer mcpkeeper";
	case STORE_E_NOT_MASTER:
		return "this site is a replica: only the group's master writes";
	case STORE_E_GROUP:
		return "the state directory belongs to a replication group";
	case STORE_E_NO_QUORUM:
		return "written here, but a majority of the replication group did not acknowledge it in time";
	case -EAGAIN:
		return "the store is not readable on this site yet (no master, or still catching up)";
	case STORE_E_IN_USE:
		return "another process has the store open";
	case -ENOSPC:
	case -EDQUOT:
		return "the state directory's filesystem is full (no space left on device)";
	case -EIO:
		return "the state directory failed with an I/O error (input/output error)";
	case -EROFS:
		return "the state directory cannot be written (read-only file system)";
	default:
		return status < 0 ? strerror(-status) : "unknown store outcome";
	}
}

#define errf store_errf
void store_errf(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (!err || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(err, len, fmt, ap);
	va_end(ap);
}

/* Berkeley DB returns errno values and its own negative codes. */
static int db_to_errno(int ret)
{
	if (ret > 0)
		return -ret;
	switch (ret) {
	case 0:
		return 0;
	case DB_NOTFOUND:
	case DB_KEYEMPTY:
		return -ENOENT;
	case DB_LOCK_DEADLOCK:
	case DB_LOCK_NOTGRANTED:
		return -EDEADLK;
	default:
		return -EIO;
	}
}

int store_server_key(const char *name, const char *url, char *buf, size_t len)
{
	unsigned char hash[16];
	int r;

	crypto_generichash(hash, sizeof(hash), (const unsigned char *)(url ? url : ""), url ? strlen(url) : 0,
			   NULL, 0);
	r = snprintf(buf, len, "%s#%02x%02x%02x%02x", name, hash[0], hash[1], hash[2], hash[3]);
	if (r < 0 || (size_t)r >= len)
		return -ENAMETOOLONG;
	return 0;
}

/* ---- sealing ---- */

static int make_ad(enum store_db db, const char *key, unsigned char *ad, size_t adlen, size_t *out)
{
	size_t a = strlen(db_names[db]), b = strlen(key);

	if (a + 1 + b > adlen)
		return -ENAMETOOLONG;
	memcpy(ad, db_names[db], a);
	ad[a] = '\0';
	memcpy(ad + a + 1, key, b);
	*out = a + 1 + b;
	return 0;
}

static int seal(const struct store *s, enum store_db db, const char *key, const struct secret *plain,
		unsigned char **out, size_t *out_len)
{
	unsigned char ad[STORE_SERVER_KEY_MAX + 16];
	unsigned long long clen;
	unsigned char *buf;
	size_t adlen;
	int r;

	r = make_ad(db, key, ad, sizeof(ad), &adlen);
	if (r)
		return r;
	if (plain->len > RECORD_MAX - SEAL_OVERHEAD)
		return -EMSGSIZE;
	buf = malloc(plain->len + SEAL_OVERHEAD);
	if (!buf)
		return -ENOMEM;
	buf[0] = SEAL_VERSION;
	randombytes_buf(buf + 1, SEAL_NONCE);
	crypto_aead_xchacha20poly1305_ietf_encrypt(buf + 1 + SEAL_NONCE, &clen, plain->data, plain->len, ad,
						   adlen, NULL, buf + 1, s->key->data);
	*out = buf;
	*out_len = 1 + SEAL_NONCE + (size_t)clen;
	return 0;
}

/* Opens a sealed record into out (cap bytes). Returns 0 and *out_len. */
static int unseal_into(const struct store *s, enum store_db db, const char *key, const unsigned char *sealed,
		       size_t len, unsigned char *out, size_t cap, size_t *out_len)
{
	unsigned char ad[STORE_SERVER_KEY_MAX + 16];
	unsigned long long mlen;
	size_t adlen;

	if (make_ad(db, key, ad, sizeof(ad), &adlen))
		return STORE_E_CORRUPT;
	if (len < SEAL_OVERHEAD || sealed[0] != SEAL_VERSION || len - SEAL_OVERHEAD > cap)
		return STORE_E_CORRUPT;
	if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, &mlen, NULL, sealed + 1 + SEAL_NONCE,
						       len - 1 - SEAL_NONCE, ad, adlen, sealed + 1,
						       s->key->data) != 0 &&
	    (!s->next_key ||
	     crypto_aead_xchacha20poly1305_ietf_decrypt(out, &mlen, NULL, sealed + 1 + SEAL_NONCE,
							len - 1 - SEAL_NONCE, ad, adlen, sealed + 1,
							s->next_key->data) != 0)) {
		sodium_memzero(out, cap);
		return STORE_E_CORRUPT;
	}
	*out_len = (size_t)mlen;
	return 0;
}

static int unseal(const struct store *s, enum store_db db, const char *key, const unsigned char *sealed,
		  size_t len, struct secret **plain)
{
	struct secret *p;
	size_t n;
	int r;

	if (len < SEAL_OVERHEAD)
		return STORE_E_CORRUPT;
	p = secret_new(len - SEAL_OVERHEAD);
	if (!p)
		return -ENOMEM;
	r = unseal_into(s, db, key, sealed, len, p->data, p->len, &n);
	if (r) {
		secret_free(p);
		return r;
	}
	*plain = p;
	return 0;
}

/* ---- environment ---- */

static void db_errcall(const DB_ENV *env, const char *prefix, const char *msg)
{
	/* Berkeley DB's messages name files and states, never record contents.
	 * A group's replication scans the state directory for databases and
	 * says so of every other file (master.key, store.lock, ...), and each
	 * operation refused during a lockout is said too: noise. */
	if ((strstr(msg, "fop_read_meta") && strstr(msg, "unexpected file type or format")) ||
	    strstr(msg, "BDB3509")) {	/* "Operation locked out": DB_REP_CONF_NOWAIT's -EAGAIN */
		log_debug("store: %s", msg);
		return;
	}
	log_warn("store: %s", msg);
}

static void db_msgcall(const DB_ENV *env, const char *msg)
{
	log_debug("store: %s", msg);
}

static int is_alive(DB_ENV *env, pid_t pid, db_threadid_t tid, u_int32_t flags)
{
	/* Our processes use the store from one thread (a group site's repmgr
	 * threads live and die with their process): the process decides. */
	return kill(pid, 0) == 0 || errno == EPERM;
}

static void dbs_close(struct store *s)
{
	for (int i = 0; i < STORE_DB_COUNT; i++) {
		if (s->db[i])
			s->db[i]->close(s->db[i], 0);
		s->db[i] = NULL;
	}
	if (s->meta)
		s->meta->close(s->meta, 0);
	s->meta = NULL;
	s->ready = false;
}

static void env_close(struct store *s)
{
	dbs_close(s);
	if (s->env)
		s->env->close(s->env, 0);
	s->env = NULL;
}

static int open_db(struct store *s, DB **out, const char *file)
{
	DB *db;
	int ret;

	u_int32_t flags = DB_AUTO_COMMIT;

	/* In a group only the master creates; a replica opens what the
	 * master's log made (ENOENT until then). */
	if (!s->grp)
		flags |= DB_CREATE;
	else if (store_group_role(s->grp) == STORE_ROLE_MASTER)
		flags |= DB_CREATE | DB_THREAD;
	else
		flags |= DB_THREAD;
	ret = db_create(&db, s->env, 0);
	if (ret)
		return ret;
	ret = db->open(db, NULL, file, NULL, DB_BTREE, flags, 0600);
	if (ret) {
		db->close(db, 0);
		return ret;
	}
	*out = db;
	return 0;
}

/* The databases, once the environment is open (again after a group's
 * rollback killed the handles). */
static int dbs_open(struct store *s)
{
	int ret = 0;

	for (int i = 0; ret == 0 && i < STORE_DB_COUNT; i++)
		ret = open_db(s, &s->db[i], db_files[i]);
	if (ret == 0)
		ret = open_db(s, &s->meta, "meta.db");
	if (ret)
		dbs_close(s);
	else
		s->ready = true;
	return ret;
}

static int env_open(struct store *s, char *err, size_t errlen)
{
	u_int32_t flags = ENV_OPEN_FLAGS;
	DB_ENV *env;
	int ret;

	ret = db_env_create(&env, 0);
	if (ret) {
		errf(err, errlen, "store %s: %s", s->dir, db_strerror(ret));
		return db_to_errno(ret);
	}
	s->env = env;
	env->set_errcall(env, db_errcall);
	env->set_msgcall(env, db_msgcall);
	env->set_lk_detect(env, DB_LOCK_DEFAULT);
	env->set_thread_count(env, 256);
	env->set_isalive(env, is_alive);
	env->set_shm_key(env, s->shm_key);
	/* Records are small and read once per refresh; the keeper's resident
	 * memory with 100 000 of them is the budget this cache counts against. */
	env->set_cachesize(env, 0, 4 * 1024 * 1024, 1);
	if (s->max_locks) {
		env->set_lk_max_locks(env, s->max_locks);
		env->set_lk_max_objects(env, s->max_locks);
	}
	env->set_lg_max(env, 4 * 1024 * 1024);
	env->log_set_config(env, DB_LOG_AUTO_REMOVE, 1);
	if (s->grp) {
		flags |= DB_INIT_REP | DB_THREAD;
		store_group_reset(s->grp);
		ret = store_group_configure(env, s->grp, err, errlen);
		if (ret) {
			env_close(s);
			return db_to_errno(ret);
		}
	}

	ret = env->open(env, s->dir, flags, 0600);
	if (ret)
		goto fail;
	if (s->grp) {
		ret = store_group_start(env, err, errlen);
		if (ret) {
			env_close(s);
			return db_to_errno(ret);
		}
		/* A replica's databases open when the master's log has made them:
		 * store_group_events() tries again at every event. */
		if (dbs_open(s) != 0)
			s->ready = false;
		return 0;
	}
	ret = dbs_open(s);
	if (ret)
		goto fail;
	return 0;
fail:
	errf(err, errlen, "store %s: %s", s->dir, db_strerror(ret));
	if (ret == EAGAIN || ret == EEXIST)
		store_shm_explain(s->dir, s->shm_key, err, errlen);
	env_close(s);
	return db_to_errno(ret);
}

/* Recovery ran under us (another opener found a dead process): start over. */
static int env_reopen(struct store *s)
{
	char err[256];
	int r;

	env_close(s);
	r = env_open(s, err, sizeof(err));
	if (r < 0) {
		log_error("store: reopening after recovery failed: %s", err);
		return r;
	}
	s->reopens++;
	log_warn("store %s: another process died inside the database environment; reopened it", s->dir);
	return 0;
}

static uint64_t now_usec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* A group site that is master and has not found its lease expired lately. */
static bool acting_master(struct store *s)
{
	if (store_group_role(s->grp) != STORE_ROLE_MASTER)
		return false;
	if (s->lease_lost_until && now_usec() >= s->lease_lost_until)
		s->lease_lost_until = 0;	/* ask Berkeley DB again */
	return s->lease_lost_until == 0;
}

/*
 * Runs op in a transaction. op returns a Berkeley DB code (0, DB_*, or a
 * positive errno value) and may set *outcome to a STORE_E_* value: the
 * transaction commits when both are 0 and aborts otherwise.
 *
 * Transactions never wait for a lock (DB_TXN_NOWAIT). Berkeley DB wakes a
 * waiter only when another locker runs deadlock detection, so a lock held by
 * a process that died would block us forever; instead a conflict returns at
 * once, failchk releases what dead processes held (aborting their
 * transactions), and we retry after a short, growing pause. Recovery run
 * under us (DB_RUNRECOVERY) leads to a reopen and a retry.
 * Returns 0, the outcome, -EBUSY after STORE_BUSY_USEC of conflicts, or
 * another negative errno value.
 */
typedef int (*txn_op)(struct store *s, DB_TXN *txn, void *arg, int *outcome);

static int store_txn(struct store *s, txn_op op, void *arg, u_int32_t txn_flags)
{
	uint64_t deadline = now_usec() + STORE_BUSY_USEC;
	useconds_t pause_us = 200;
	int ret = 0;

	for (;;) {
		DB_TXN *txn = NULL;
		int outcome = 0;

		if (!s->env) {
			int r = env_reopen(s);

			if (r < 0)
				return r;
		}
		if (!s->ready && (!s->grp || dbs_open(s) != 0))
			return -EAGAIN;
		/* A master that lost its lease: every read would wait on it. */
		if (s->grp && store_group_role(s->grp) == STORE_ROLE_MASTER && !acting_master(s))
			return STORE_E_NOT_MASTER;
		ret = s->env->txn_begin(s->env, NULL, &txn, txn_flags | DB_TXN_NOWAIT);
		if (ret == 0) {
			ret = op(s, txn, arg, &outcome);
			if (ret == 0 && outcome == 0) {
				ret = txn->commit(txn, 0);
			} else {
				txn->abort(txn);
				if (ret == 0)
					return outcome;
			}
			if (ret == 0)
				return 0;
		}
		switch (ret) {
		case DB_LOCK_DEADLOCK:
		case DB_LOCK_NOTGRANTED:
			/* Someone holds what we need: a live writer, or a dead one. */
			if (s->env->failchk(s->env, 0) == DB_RUNRECOVERY)
				env_close(s);
			break;
		case DB_RUNRECOVERY:
			env_close(s);
			continue;
		case DB_REP_HANDLE_DEAD:
			/* A group's new master rolled back what these handles saw. */
			dbs_close(s);
			continue;
		case DB_REP_LOCKOUT:
		case DB_REP_UNAVAIL:
			return -EAGAIN;
		case DB_REP_LEASE_EXPIRED:
			log_warn("store %s: this master's lease has expired (paused, or cut off from the group's "
				 "majority): it acts as no master for now", s->dir);
			s->lease_lost_until = now_usec() + (uint64_t)store_group_lease_ms(s->grp) * 1000;
			return STORE_E_NOT_MASTER;
		default:
			if (s->grp && store_group_role(s->grp) != STORE_ROLE_MASTER && (ret == EACCES || ret == EINVAL))
				return STORE_E_NOT_MASTER;
			log_warn("store %s: %s", s->dir, db_strerror(ret));
			return db_to_errno(ret);
		}
		if (now_usec() > deadline) {
			log_warn("store %s: still locked by another process; giving up", s->dir);
			return -EBUSY;
		}
		usleep(pause_us);
		if (pause_us < 20000)
			pause_us *= 2;
	}
}

/* ---- key check ---- */

struct key_check_arg {
	const unsigned char *kcv;
	const unsigned char *next_kcv;	/* NULL: no next key */
	bool next_matched;		/* the store's check names the next key */
	bool readonly;		/* a group's replica: no check value yet is STORE_E_NOT_FOUND */
};

static int key_check_op(struct store *s, DB_TXN *txn, void *varg, int *outcome)
{
	struct key_check_arg *arg = varg;
	char schema_buf[16];
	DBT k = { 0 }, v = { 0 }, sk = { 0 }, sv = { 0 };
	unsigned char stored[crypto_generichash_BYTES];
	DBC *cur;
	int ret, schema;

	sk.data = "schema";
	sk.size = 6;
	sv.data = schema_buf;
	sv.ulen = sizeof(schema_buf) - 1;
	sv.flags = DB_DBT_USERMEM;
	ret = s->meta->get(s->meta, txn, &sk, &sv, DB_RMW);
	if (ret == 0) {
		schema_buf[sv.size] = '\0';
		schema = atoi(schema_buf);
		if (schema > SCHEMA_VERSION) {
			*outcome = STORE_E_SCHEMA;
			return 0;
		}
	} else if (ret != DB_NOTFOUND) {
		return ret;
	}

	k.data = "key-check";
	k.size = 9;
	v.data = stored;
	v.ulen = sizeof(stored);
	v.flags = DB_DBT_USERMEM;
	ret = s->meta->get(s->meta, txn, &k, &v, DB_RMW);
	if (ret == 0) {
		if (v.size != sizeof(stored) || sodium_memcmp(stored, arg->kcv, sizeof(stored)) != 0) {
			if (arg->next_kcv && v.size == sizeof(stored) &&
			    sodium_memcmp(stored, arg->next_kcv, sizeof(stored)) == 0)
				arg->next_matched = true;
			else
				*outcome = STORE_E_WRONG_KEY;
		}
		return 0;
	}
	if (ret != DB_NOTFOUND)
		return ret;
	if (arg->readonly) {
		*outcome = STORE_E_NOT_FOUND;
		return 0;
	}

	/* No key check value: only a store with no records may get one now. */
	for (int i = 0; i < STORE_DB_COUNT; i++) {
		DBT ck = { 0 }, cv = { 0 };

		ret = s->db[i]->cursor(s->db[i], txn, &cur, 0);
		if (ret)
			return ret;
		ck.flags = DB_DBT_MALLOC;
		cv.flags = DB_DBT_PARTIAL | DB_DBT_USERMEM;
		ret = cur->get(cur, &ck, &cv, DB_FIRST);
		cur->close(cur);
		if (ret == 0)
			free(ck.data);
		if (ret == 0) {
			*outcome = STORE_E_CORRUPT;
			return 0;
		}
		if (ret != DB_NOTFOUND)
			return ret;
	}
	v.data = (void *)arg->kcv;
	v.size = crypto_generichash_BYTES;
	v.flags = 0;
	ret = s->meta->put(s->meta, txn, &k, &v, 0);
	if (ret)
		return ret;
	snprintf(schema_buf, sizeof(schema_buf), "%d", SCHEMA_VERSION);
	sv.data = schema_buf;
	sv.size = (u_int32_t)strlen(schema_buf);
	sv.flags = 0;
	return s->meta->put(s->meta, txn, &sk, &sv, 0);
}

/* ---- shared memory ---- */

/*
 * Every opener holds store.lock shared (flock) while its environment is open;
 * the last one out, the one that gets it exclusive at close, removes the
 * shared memory segments, so that closed stores leave none behind. An opener
 * waits while a closer removes them. The kernel drops the lock of a process
 * that dies, whose segments the next opener's recovery replaces (same keys).
 */
static int store_lock(struct store *s, char *err, size_t errlen)
{
	char path[4096];
	struct stat st;

	if (snprintf(path, sizeof(path), "%s/" STORE_LOCK_FILE, s->dir) >= (int)sizeof(path)) {
		errf(err, errlen, "store %s: path too long", s->dir);
		return -ENAMETOOLONG;
	}
	/* mcpctl restore renames another directory in while holding the old
	 * one's lock exclusive: a lock taken on a file that is no longer the
	 * one at path belongs to a directory gone, so try again. */
	for (int tries = 0; tries < STORE_LOCK_TRIES; tries++) {
		struct stat fst;
		bool gone = false;

		s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (s->lock_fd < 0 || flock(s->lock_fd, LOCK_SH) < 0 || fstat(s->lock_fd, &fst) < 0 ||
		    (stat(path, &st) < 0 && !(gone = errno == ENOENT))) {
			int e = errno;

			errf(err, errlen, "store %s: %s: %s", s->dir, path, strerror(e));
			if (s->lock_fd >= 0)
				close(s->lock_fd);
			s->lock_fd = -1;
			return -e;
		}
		if (!gone && st.st_dev == fst.st_dev && st.st_ino == fst.st_ino) {
			long key = store_shm_key(s->dir);

			if (key < 0) {
				errf(err, errlen, "store %s: its shared memory key (store.shmkey): %s", s->dir,
				     strerror((int)-key));
				close(s->lock_fd);
				s->lock_fd = -1;
				return (int)key;
			}
			s->shm_key = key;
			return 0;
		}
		close(s->lock_fd);
		s->lock_fd = -1;
	}
	errf(err, errlen, "store %s: the state directory keeps being replaced under us", s->dir);
	return -EAGAIN;
}

/* After env_close(): the last process out removes the segments. */
static void store_unlock(struct store *s)
{
	DB_ENV *env;
	int ret;

	if (s->lock_fd < 0)
		return;
	if (flock(s->lock_fd, LOCK_EX | LOCK_NB) == 0 && db_env_create(&env, 0) == 0) {
		env->set_errcall(env, db_errcall);
		env->set_shm_key(env, s->shm_key);
		ret = env->remove(env, s->dir, DB_FORCE);
		if (ret)
			log_warn("store %s: removing its shared memory: %s", s->dir, db_strerror(ret));
	}
	close(s->lock_fd);
	s->lock_fd = -1;
}

/* ---- ownership ---- */

/* A root opener of another user's state directory becomes that user. */
static int switch_to_owner(const char *dir, char *err, size_t errlen)
{
	struct passwd *pw;
	struct stat st;
	gid_t gid;

	if (geteuid() != 0 || stat(dir, &st) < 0 || st.st_uid == 0)
		return 0;
	pw = getpwuid(st.st_uid);
	gid = pw ? pw->pw_gid : st.st_gid;
	if ((pw ? initgroups(pw->pw_name, gid) : setgroups(0, NULL)) < 0 || setgid(gid) < 0 ||
	    setuid(st.st_uid) < 0) {
		int e = errno;

		errf(err, errlen, "store %s: cannot switch to its owner (uid %u): %s", dir,
		     (unsigned)st.st_uid, strerror(e));
		return -e;
	}
	if (setuid(0) == 0) {
		errf(err, errlen, "store %s: dropping root failed", dir);
		return -EPERM;
	}
	log_debug("store %s: switched to its owner, uid %u", dir, (unsigned)st.st_uid);
	return 0;
}

/* ---- open / close ---- */

/* The master key against the store's key check value (written by the first
 * opener of an empty store). readonly: a group's replica, which cannot
 * write it: STORE_E_NOT_FOUND until the master's has arrived. */
static int key_check(struct store *s, bool readonly, char *err, size_t errlen)
{
	struct key_check_arg kc = { .readonly = readonly };
	unsigned char kcv[crypto_generichash_BYTES], next_kcv[crypto_generichash_BYTES];
	int r;

	store_key_check_value(s->key, kcv);
	kc.kcv = kcv;
	if (s->next_key) {
		store_key_check_value(s->next_key, next_kcv);
		kc.next_kcv = next_kcv;
	}
	r = store_txn(s, key_check_op, &kc, 0);
	if (r == STORE_E_WRONG_KEY)
		errf(err, errlen, "store %s: wrong master key%s", s->dir,
		     s->grp ? ": it does not open the group's records (import the group's key: mcpctl key import)"
			    : "");
	else if (r == STORE_E_SCHEMA)
		errf(err, errlen, "store %s: written by a newer mcpkeeper (schema above %d)", s->dir,
		     SCHEMA_VERSION);
	else if (r == STORE_E_CORRUPT)
		errf(err, errlen, "store %s: holds records but no key check value", s->dir);
	else if (r < 0)
		errf(err, errlen, "store %s: %s", s->dir, store_strerror(r));
	if (r == 0)
		s->key_checked = true;
	if (r == 0 && kc.next_matched) {
		/* The group rotated to the next key while this site was away. */
		secret_free(s->key);
		s->key = s->next_key;
		s->next_key = NULL;
		s->key_promoted = true;
	}
	return r;
}

/* What store_open() and store_open_group() share: up to an open
 * environment (of a group site when g is not NULL). */
static int store_new(const char *dir, const struct secret *key, const struct store_group *g, u_int32_t max_locks,
		     struct store **out, char *err, size_t errlen)
{
	struct store *s;
	int r;

	if (sodium_init() < 0) {
		errf(err, errlen, "libsodium failed to initialise");
		return -EIO;
	}
	if (key->len != STORE_KEY_LEN) {
		errf(err, errlen, "store %s: master key must be %d bytes", dir, STORE_KEY_LEN);
		return -EINVAL;
	}
	r = switch_to_owner(dir, err, errlen);
	if (r < 0)
		return r;
	r = store_ensure_dir(dir, err, errlen);
	if (r < 0)
		return r;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->lock_fd = -1;
	s->max_locks = max_locks;
	s->dir = strdup(dir);
	s->key = secret_from(key->data, key->len);
	if (g)
		s->grp = store_group_rt_new(g);
	if (!s->dir || !s->key || (g && !s->grp)) {
		store_close(s);
		return -ENOMEM;
	}
	r = store_lock(s, err, errlen);
	if (r == 0)
		r = env_open(s, err, errlen);
	if (r < 0) {
		store_close(s);
		return r;
	}
	*out = s;
	return 0;
}

int store_open_locks(const char *dir, const struct secret *key, u_int32_t max_locks, struct store **out, char *err,
		     size_t errlen)
{
	struct store *s;
	int r;

	if (store_dir_is_group(dir)) {
		errf(err, errlen,
		     "store %s: belongs to a replication group; only its keeper opens it (run mcpctl with the keeper up)",
		     dir);
		return STORE_E_GROUP;
	}
	r = store_new(dir, key, NULL, max_locks, &s, err, errlen);
	if (r < 0)
		return r;
	r = key_check(s, false, err, errlen);
	if (r) {
		store_close(s);
		return r;
	}
	*out = s;
	return 0;
}

/* Whether dir holds a store of its own (any of its database files). */
static bool has_databases(const char *dir)
{
	for (int i = 0; i <= STORE_DB_COUNT; i++) {
		char path[4096];
		struct stat st;

		snprintf(path, sizeof(path), "%s/%s", dir, i < STORE_DB_COUNT ? db_files[i] : "meta.db");
		if (stat(path, &st) == 0)
			return true;
	}
	return false;
}

/* A group site whose databases just opened: the key against the group's. */
static int group_check_key(struct store *s, char *err, size_t errlen)
{
	bool replica = store_group_role(s->grp) != STORE_ROLE_MASTER;
	int r = key_check(s, replica, err, errlen);

	return r == STORE_E_NOT_FOUND ? 0 : r;	/* the master has not written it yet */
}

int store_open_group(const char *dir, const struct secret *key, const struct store_group *g, int wait_ms,
		     struct store **out, char *err, size_t errlen)
{
	struct store *s;
	int r;

	if (!store_dir_is_group(dir) && !g->create && has_databases(dir)) {
		errf(err, errlen,
		     "store %s: holds a store of its own and no group: a site joins a group with an empty state "
		     "directory (joining replaces its records with the group's); move them away, or make this "
		     "the site that creates the group (replication.create)", dir);
		return STORE_E_CORRUPT;
	}
	r = store_new(dir, key, g, 0, &s, err, errlen);
	if (r < 0)
		return r;
	if (g->next_key && store_set_next_key(s, g->next_key) == -ENOMEM) {
		store_close(s);
		return -ENOMEM;
	}
	for (int waited = 0; waited < wait_ms; waited += 50) {
		int role = store_group_role(s->grp);

		if (role == STORE_ROLE_MASTER || (role == STORE_ROLE_REPLICA && store_group_startup_done(s->grp)))
			break;
		usleep(50 * 1000);
	}
	if (!s->ready)
		dbs_open(s);
	if (s->ready) {
		r = group_check_key(s, err, errlen);
		if (r) {
			store_close(s);
			return r;
		}
	}
	*out = s;
	return 0;
}

bool store_is_group(const struct store *s)
{
	return s->grp != NULL;
}

enum store_role store_role(struct store *s)
{
	int role;

	if (!s->grp)
		return STORE_ROLE_MASTER;
	role = store_group_role(s->grp);
	if (role == STORE_ROLE_MASTER && !acting_master(s))
		return STORE_ROLE_UNKNOWN;
	return (enum store_role)role;
}

const char *store_role_name(enum store_role r)
{
	switch (r) {
	case STORE_ROLE_MASTER:
		return "master";
	case STORE_ROLE_REPLICA:
		return "replica";
	default:
		return "none";
	}
}

unsigned store_group_events(struct store *s, int *fatal)
{
	unsigned ev;

	*fatal = 0;
	if (!s->grp)
		return 0;
	ev = store_group_take_events(s->grp);
	if (ev & (STORE_GROUP_EV_MASTER | STORE_GROUP_EV_CLIENT | STORE_GROUP_EV_NEWMASTER))
		s->lease_lost_until = 0;	/* the group has spoken: ask again */
	if (!s->env)
		return ev;
	if (!s->ready && dbs_open(s) == 0)
		ev |= STORE_GROUP_EV_READY;
	if (s->ready && !s->key_checked) {
		char err[512];
		int r = group_check_key(s, err, sizeof(err));

		if (r == STORE_E_WRONG_KEY || r == STORE_E_SCHEMA) {
			log_error("%s", err);
			*fatal = r;
		}
	}
	return ev;
}

int store_set_next_key(struct store *s, const struct secret *key)
{
	struct secret *copy;

	if (key->len != STORE_KEY_LEN)
		return -EINVAL;
	if (secret_equal(key, s->key))
		return -EEXIST;
	copy = secret_from(key->data, key->len);
	if (!copy)
		return -ENOMEM;
	secret_free(s->next_key);
	s->next_key = copy;
	return 0;
}

bool store_has_next_key(const struct store *s)
{
	return s->next_key != NULL;
}

static int write_txn(struct store *s, txn_op op, void *arg);

struct group_rotate_arg {
	unsigned long records;
};

static int group_rotate_op(struct store *s, DB_TXN *txn, void *varg, int *outcome)
{
	struct group_rotate_arg *a = varg;

	return store_reseal_op(s, txn, s->next_key, &a->records, outcome);
}

int store_group_rotate(struct store *s, unsigned long *records)
{
	struct group_rotate_arg a = { 0 };
	int r;

	if (!s->grp || !s->next_key)
		return -EINVAL;
	r = write_txn(s, group_rotate_op, &a);
	if (r == 0 || r == STORE_E_NO_QUORUM) {
		/* Committed here either way: the records need the new key now. */
		secret_free(s->key);
		s->key = s->next_key;
		s->next_key = NULL;
		s->key_promoted = true;
	}
	*records = a.records;
	return r;
}

int store_key_promote(struct store *s)
{
	int r;

	if (!s->next_key || !s->ready)
		return 0;
	r = key_check(s, true, NULL, 0);
	return r < 0 || r == STORE_E_WRONG_KEY ? r : 0;
}

bool store_key_promoted(struct store *s)
{
	bool p = s->key_promoted;

	s->key_promoted = false;
	return p;
}

int store_group_recover(struct store *s)
{
	if (!s->grp)
		return -EINVAL;
	env_close(s);
	s->key_checked = false;
	s->lease_lost_until = 0;
	return env_reopen(s);
}

int store_group_state(struct store *s, struct store_group_state *st)
{
	int ret;

	if (!s->grp || !s->env)
		return -EINVAL;
	ret = store_group_read_state(s->env, s->grp, st);
	st->ready = s->ready;
	return ret ? db_to_errno(ret) : 0;
}

int store_checkpoint(struct store *s)
{
	int ret;

	if (!s->env)
		return -EIO;
	if (s->grp && !acting_master(s))
		return 0;	/* a replica checkpoints when the master's log says so */
	ret = s->env->txn_checkpoint(s->env, 0, 0, 0);
	return db_to_errno(ret);
}

struct store *store_close(struct store *s)
{
	if (!s)
		return NULL;
	if (s->env && (!s->grp || store_group_role(s->grp) == STORE_ROLE_MASTER))
		s->env->txn_checkpoint(s->env, 0, 0, 0);
	env_close(s);
	store_unlock(s);
	store_group_rt_free(s->grp);
	secret_free(s->next_key);
	secret_free(s->key);
	free(s->dir);
	free(s);
	return NULL;
}

void store_closep(struct store **s)
{
	*s = store_close(*s);
}

/* backup.c copies the environment with Berkeley DB's own hot backup. */
DB_ENV *store_db_env(struct store *s)
{
	return s->env;
}

/* rotate.c's access (store-private.h). */
int store_run_txn(struct store *s, store_txn_fn op, void *arg)
{
	return store_txn(s, op, arg, 0);
}

DB *store_db_handle(struct store *s, int db)
{
	return db == STORE_DB_COUNT ? s->meta : s->db[db];
}

const char *store_dir(const struct store *s)
{
	return s->dir;
}

int store_seal_record(const struct store *s, int db, const char *key, const struct secret *plain,
		      unsigned char **out, size_t *out_len)
{
	return seal(s, (enum store_db)db, key, plain, out, out_len);
}

int store_unseal_record(const struct store *s, int db, const char *key, const unsigned char *sealed, size_t len,
			struct secret **plain)
{
	return unseal(s, (enum store_db)db, key, sealed, len, plain);
}

struct secret *store_swap_key(struct store *s, struct secret *key)
{
	struct secret *old = s->key;

	s->key = key;
	return old;
}

void store_key_check_value(const struct secret *key, unsigned char *out)
{
	crypto_generichash(out, crypto_generichash_BYTES, (const unsigned char *)KEY_CHECK_CONTEXT,
			   strlen(KEY_CHECK_CONTEXT), key->data, key->len);
}

int store_open(const char *dir, const struct secret *key, struct store **out, char *err, size_t errlen)
{
	return store_open_locks(dir, key, 0, out, err, errlen);
}

int store_become_owner(const char *dir, char *err, size_t errlen)
{
	return switch_to_owner(dir, err, errlen);
}

unsigned store_reopen_count(const struct store *s)
{
	return s->reopens;
}

/* ---- records ---- */

static int check_key(enum store_db db, const char *key)
{
	size_t n;

	if (db >= STORE_DB_COUNT || !key)
		return -EINVAL;
	n = strlen(key);
	if (n == 0 || n > STORE_SERVER_KEY_MAX)
		return -EINVAL;
	return 0;
}

struct get_arg {
	enum store_db db;
	const char *key;
	u_int32_t flags;
	unsigned char *sealed; /* malloc'ed by Berkeley DB */
	size_t len;
};

static int get_op(struct store *s, DB_TXN *txn, void *varg, int *outcome)
{
	struct get_arg *a = varg;
	DBT k = { 0 }, v = { 0 };
	int ret;

	k.data = (void *)a->key;
	k.size = (u_int32_t)strlen(a->key);
	v.flags = DB_DBT_MALLOC;
	free(a->sealed);
	a->sealed = NULL;
	ret = s->db[a->db]->get(s->db[a->db], txn, &k, &v, a->flags);
	if (ret == DB_NOTFOUND) {
		*outcome = STORE_E_NOT_FOUND;
		return 0;
	}
	if (ret)
		return ret;
	a->sealed = v.data;
	a->len = v.size;
	return 0;
}

int store_get(struct store *s, enum store_db db, const char *key, struct secret **plain)
{
	struct get_arg a = { .db = db, .key = key };
	int r;

	r = check_key(db, key);
	if (r)
		return r;
	r = store_txn(s, get_op, &a, 0);
	if (r == 0)
		r = unseal(s, db, key, a.sealed, a.len, plain);
	free(a.sealed);
	return r;
}

static int change_bump(struct store *s, DB_TXN *txn, const char *key);

struct put_arg {
	enum store_db db;
	const char *key;
	const unsigned char *sealed;
	size_t len;
	const struct secret *expected;
	int cas;
};

static int put_op(struct store *s, DB_TXN *txn, void *varg, int *outcome)
{
	struct put_arg *a = varg;
	DBT k = { 0 }, v = { 0 };
	int ret;

	k.data = (void *)a->key;
	k.size = (u_int32_t)strlen(a->key);
	if (a->cas) {
		struct get_arg g = { .db = a->db, .key = a->key, .flags = DB_RMW };
		struct secret *cur = NULL;
		int found = 0, r;

		ret = get_op(s, txn, &g, &found);
		if (ret)
			return ret;
		if (found == STORE_E_NOT_FOUND) {
			if (a->expected)
				*outcome = STORE_E_CONFLICT;
		} else {
			r = unseal(s, a->db, a->key, g.sealed, g.len, &cur);
			free(g.sealed);
			if (r < 0)
				return -r;
			if (r > 0)
				*outcome = r;
			else if (!a->expected || !secret_equal(cur, a->expected))
				*outcome = STORE_E_CONFLICT;
			secret_free(cur);
		}
		if (*outcome)
			return 0;
	}
	v.data = (void *)a->sealed;
	v.size = (u_int32_t)a->len;
	ret = s->db[a->db]->put(s->db[a->db], txn, &k, &v, 0);
	if (ret == 0 && s->grp && a->db == STORE_TOKENS)
		ret = change_bump(s, txn, a->key);
	return ret;
}

/*
 * A transaction that writes. In a group: only on the master, and a commit
 * that did not gather a quorum's acknowledgements within the ack timeout
 * (DB_EVENT_REP_PERM_FAILED, raised in this thread while it commits) counts
 * as failed: repmgr's commit itself returns success without them.
 */
static int write_txn(struct store *s, txn_op op, void *arg)
{
	unsigned long perm_failed = 0;
	int r;

	if (s->grp) {
		/* A master cut off from the majority: its lease may run out in
		 * the middle of the commit, which Berkeley DB answers with a
		 * panic of the environment. */
		if (!acting_master(s) || !store_group_majority(s->env, s->grp))
			return STORE_E_NOT_MASTER;
		perm_failed = store_group_perm_failed(s->grp);
	}
	r = store_txn(s, op, arg, 0);
	if (r == 0 && s->grp && store_group_perm_failed(s->grp) != perm_failed)
		return STORE_E_NO_QUORUM;
	/* Checkpoint once enough log has accumulated; old log files then go. */
	if (r == 0 && s->env)
		s->env->txn_checkpoint(s->env, 1024, 0, 0);
	return r;
}

/* ---- the change sequence of a group's token records ----
 *
 * Berkeley DB tells a replica nothing per record, so every commit of a
 * token record on a group's master also bumps "change-seq" in meta (an
 * 8-byte big-endian counter) and writes "chg:<seq, 16 hex digits>" -> the
 * record's key, in the same transaction; the last CHANGE_KEEP entries are
 * kept. A replica polls the counter (store_changes()) and reads the keys
 * that changed since the value it saw last.
 */
#define CHANGE_SEQ_KEY "change-seq"
#define CHANGE_PREFIX "chg:"
#define CHANGE_KEEP 4096

static void change_key(uint64_t seq, char buf[24])
{
	snprintf(buf, 24, CHANGE_PREFIX "%016llx", (unsigned long long)seq);
}

static int change_seq_get(struct store *s, DB_TXN *txn, u_int32_t flags, uint64_t *seq)
{
	unsigned char be[8];
	DBT k = { .data = CHANGE_SEQ_KEY, .size = sizeof(CHANGE_SEQ_KEY) - 1 };
	DBT v = { .data = be, .ulen = sizeof(be), .flags = DB_DBT_USERMEM };
	int ret = s->meta->get(s->meta, txn, &k, &v, flags);

	*seq = 0;
	if (ret == DB_NOTFOUND)
		return 0;
	if (ret)
		return ret;
	if (v.size != sizeof(be))
		return EINVAL;
	for (int i = 0; i < 8; i++)
		*seq = *seq << 8 | be[i];
	return 0;
}

static int change_bump(struct store *s, DB_TXN *txn, const char *key)
{
	unsigned char be[8];
	char ck[24];
	DBT k = { .data = CHANGE_SEQ_KEY, .size = sizeof(CHANGE_SEQ_KEY) - 1 }, v = { 0 };
	uint64_t seq;
	int ret = change_seq_get(s, txn, DB_RMW, &seq);

	if (ret)
		return ret;
	seq++;
	for (int i = 0; i < 8; i++)
		be[i] = (unsigned char)(seq >> (56 - 8 * i));
	v.data = be;
	v.size = sizeof(be);
	ret = s->meta->put(s->meta, txn, &k, &v, 0);
	if (ret)
		return ret;
	change_key(seq, ck);
	k.data = ck;
	k.size = (u_int32_t)strlen(ck);
	v.data = (void *)key;
	v.size = (u_int32_t)strlen(key);
	ret = s->meta->put(s->meta, txn, &k, &v, 0);
	if (ret || seq <= CHANGE_KEEP)
		return ret;
	change_key(seq - CHANGE_KEEP, ck);
	k.size = (u_int32_t)strlen(ck);
	ret = s->meta->del(s->meta, txn, &k, 0);
	return ret == DB_NOTFOUND ? 0 : ret;
}

struct changes_arg {
	uint64_t after, now;
	bool gap;			/* entries after "after" were pruned */
	char (*keys)[STORE_SERVER_KEY_MAX + 1];
	size_t n, cap;
};

static int changes_op(struct store *s, DB_TXN *txn, void *varg, int *outcome)
{
	struct changes_arg *a = varg;
	char ck[24], kbuf[32], vbuf[STORE_SERVER_KEY_MAX + 1];
	DBT k = { .data = kbuf, .ulen = sizeof(kbuf), .flags = DB_DBT_USERMEM };
	DBT v = { .data = vbuf, .ulen = sizeof(vbuf) - 1, .flags = DB_DBT_USERMEM };
	uint64_t expect;
	DBC *cur;
	int ret = change_seq_get(s, txn, 0, &a->now);

	a->n = 0;
	a->gap = false;
	if (ret || a->now <= a->after)
		return ret;
	ret = s->meta->cursor(s->meta, txn, &cur, 0);
	if (ret)
		return ret;
	change_key(a->after + 1, ck);
	memcpy(kbuf, ck, strlen(ck));
	k.size = (u_int32_t)strlen(ck);
	expect = a->after + 1;
	for (u_int32_t how = DB_SET_RANGE; (ret = cur->get(cur, &k, &v, how)) == 0; how = DB_NEXT) {
		char name[24];

		if (k.size != strlen(ck) || memcmp(kbuf, CHANGE_PREFIX, strlen(CHANGE_PREFIX)) != 0)
			break;
		change_key(expect, name);
		if (memcmp(kbuf, name, k.size) != 0) {
			a->gap = true;	/* pruned (or out of order): read everything */
			break;
		}
		if (a->n == a->cap) {
			size_t cap = a->cap ? a->cap * 2 : 64;
			void *nk = realloc(a->keys, cap * sizeof(*a->keys));

			if (!nk) {
				ret = ENOMEM;
				break;
			}
			a->keys = nk;
			a->cap = cap;
		}
		vbuf[v.size] = '\0';
		memcpy(a->keys[a->n++], vbuf, v.size + 1);
		if (expect++ == a->now)
			break;
	}
	cur->close(cur);
	if (ret == DB_NOTFOUND)
		ret = 0;
	if (ret == 0 && expect <= a->now && !a->gap)
		a->gap = true;	/* entries missing up to the counter */
	(void)outcome;
	return ret;
}

int store_changes(struct store *s, uint64_t *seq, store_list_fn fn, void *ctx)
{
	struct changes_arg a = { .after = *seq };
	int r;

	if (!s->grp)
		return -EINVAL;
	r = store_txn(s, changes_op, &a, DB_READ_COMMITTED);
	if (r == 0 && a.now != *seq) {
		if (a.gap || a.now < *seq)
			r = fn(NULL, NULL, 0, ctx);
		else
			for (size_t i = 0; r == 0 && i < a.n; i++)
				r = fn(a.keys[i], NULL, 0, ctx);
		if (r == 0)
			*seq = a.now;
	}
	free(a.keys);
	return r;
}

static int write_record(struct store *s, enum store_db db, const char *key, const struct secret *expected,
			const struct secret *plain, int cas)
{
	struct put_arg a = { .db = db, .key = key, .expected = expected, .cas = cas };
	unsigned char *sealed;
	int r;

	r = check_key(db, key);
	if (r)
		return r;
	r = seal(s, db, key, plain, &sealed, &a.len);
	if (r)
		return r;
	a.sealed = sealed;
	r = write_txn(s, put_op, &a);
	free(sealed);
	return r;
}

int store_put(struct store *s, enum store_db db, const char *key, const struct secret *plain)
{
	return write_record(s, db, key, NULL, plain, 0);
}

int store_update(struct store *s, enum store_db db, const char *key, const struct secret *expected,
		 const struct secret *plain)
{
	return write_record(s, db, key, expected, plain, 1);
}

struct delete_arg {
	enum store_db db;
	const char *key;
};

static int delete_op(struct store *s, DB_TXN *txn, void *varg, int *outcome)
{
	struct delete_arg *a = varg;
	DBT k = { 0 };
	int ret;

	k.data = (void *)a->key;
	k.size = (u_int32_t)strlen(a->key);
	ret = s->db[a->db]->del(s->db[a->db], txn, &k, 0);
	if (ret == DB_NOTFOUND) {
		*outcome = STORE_E_NOT_FOUND;
		return 0;
	}
	if (ret == 0 && s->grp && a->db == STORE_TOKENS)
		ret = change_bump(s, txn, a->key);
	return ret;
}

int store_delete(struct store *s, enum store_db db, const char *key)
{
	struct delete_arg a = { .db = db, .key = key };
	int r;

	r = check_key(db, key);
	if (r)
		return r;
	return write_txn(s, delete_op, &a);
}

/* ---- listing ---- */

struct list_entry {
	char *key;
	unsigned char *sealed;
	size_t len;
};

/*
 * Records are read in batches of LIST_BATCH, each batch in a transaction of
 * its own that resumes after the last key of the one before: memory stays
 * bounded whatever the store holds, and fn runs outside any transaction, so
 * it may use the store itself. A record put or deleted while the listing
 * runs may or may not be seen, as with any read-committed listing.
 */
#define LIST_BATCH 512

struct list_arg {
	enum store_db db;
	struct list_entry *e;
	size_t n, cap;
	char *after;		/* resume after this key; NULL: from the start */
	bool more;		/* the batch filled up: there may be more */
};

static void list_arg_reset(struct list_arg *a)
{
	for (size_t i = 0; i < a->n; i++) {
		free(a->e[i].key);
		free(a->e[i].sealed);
	}
	a->n = 0;
}

static int list_op(struct store *s, DB_TXN *txn, void *varg, int *outcome)
{
	struct list_arg *a = varg;
	DBT k = { 0 }, v = { 0 };
	u_int32_t how = DB_FIRST;
	DBC *cur;
	int ret;

	/* A retry starts the batch over. */
	list_arg_reset(a);
	a->more = false;
	ret = s->db[a->db]->cursor(s->db[a->db], txn, &cur, DB_READ_COMMITTED);
	if (ret)
		return ret;
	k.flags = DB_DBT_REALLOC;
	v.flags = DB_DBT_REALLOC;
	if (a->after) {
		k.data = strdup(a->after);
		if (!k.data) {
			cur->close(cur);
			return ENOMEM;
		}
		k.size = (u_int32_t)strlen(a->after);
		how = DB_SET_RANGE;
	}
	while ((ret = cur->get(cur, &k, &v, how)) == 0) {
		struct list_entry *e;

		how = DB_NEXT;
		if (a->after && k.size == strlen(a->after) && memcmp(k.data, a->after, k.size) == 0)
			continue;
		if (a->n == LIST_BATCH) {
			a->more = true;
			break;
		}
		if (a->n == a->cap) {
			size_t cap = a->cap ? a->cap * 2 : 64;
			struct list_entry *ne = realloc(a->e, cap * sizeof(*ne));

			if (!ne) {
				ret = ENOMEM;
				break;
			}
			a->e = ne;
			a->cap = cap;
		}
		e = &a->e[a->n];
		e->key = strndup(k.data, k.size);
		e->sealed = malloc(v.size ? v.size : 1);
		if (!e->key || !e->sealed) {
			free(e->key);
			free(e->sealed);
			ret = ENOMEM;
			break;
		}
		memcpy(e->sealed, v.data, v.size);
		e->len = v.size;
		a->n++;
	}
	free(k.data);
	free(v.data);
	cur->close(cur);
	return ret == DB_NOTFOUND ? 0 : ret;
}

static int list(struct store *s, enum store_db db, bool unsealed, store_list_fn fn, void *ctx)
{
	struct list_arg a = { .db = db };
	struct secret *scratch = NULL;
	int r = 0;

	if (db >= STORE_DB_COUNT)
		return -EINVAL;
	/* One guarded buffer for every record: a sodium_malloc per record
	 * costs several system calls each (and the maps run out). */
	if (unsealed && !(scratch = secret_new(RECORD_MAX)))
		return -ENOMEM;
	do {
		r = store_txn(s, list_op, &a, DB_READ_COMMITTED);
		for (size_t i = 0; r == 0 && i < a.n; i++) {
			struct secret view = { 0 };
			int status = 0;

			if (unsealed) {
				status = unseal_into(s, db, a.e[i].key, a.e[i].sealed, a.e[i].len, scratch->data,
						     scratch->len, &view.len);
				if (status < 0) {
					r = status;
					break;
				}
				if (status == 0) {
					view.data = scratch->data;
					view.data[view.len] = '\0';
				}
			}
			r = fn(a.e[i].key, status == 0 && unsealed ? &view : NULL, status, ctx);
			if (view.data)
				sodium_memzero(view.data, view.len);
		}
		if (r == 0 && a.more) {
			free(a.after);
			a.after = strdup(a.e[a.n - 1].key);
			if (!a.after)
				r = -ENOMEM;
		}
	} while (r == 0 && a.more);
	list_arg_reset(&a);
	free(a.e);
	free(a.after);
	secret_free(scratch);
	return r;
}

int store_list(struct store *s, enum store_db db, store_list_fn fn, void *ctx)
{
	return list(s, db, true, fn, ctx);
}

int store_list_keys(struct store *s, enum store_db db, store_list_fn fn, void *ctx)
{
	return list(s, db, false, fn, ctx);
}

int store_derived_key(const char *prefix, const char *a, const char *b, char *buf, size_t len)
{
	crypto_generichash_state st;
	unsigned char hash[16];
	char hex[2 * sizeof(hash) + 1];
	int r;

	crypto_generichash_init(&st, NULL, 0, sizeof(hash));
	crypto_generichash_update(&st, (const unsigned char *)a, strlen(a) + 1);
	crypto_generichash_update(&st, (const unsigned char *)(b ? b : ""), b ? strlen(b) + 1 : 0);
	crypto_generichash_final(&st, hash, sizeof(hash));
	sodium_bin2hex(hex, sizeof(hex), hash, sizeof(hash));
	r = snprintf(buf, len, "%s%s", prefix, hex);
	if (r < 0 || (size_t)r >= len || (size_t)r > STORE_SERVER_KEY_MAX)
		return -ENAMETOOLONG;
	return 0;
}
