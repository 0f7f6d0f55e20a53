/*
 * What store.c shares with backup.c (the environment handle of an open
 * store), rotate.c (transactions, sealing, the key) and masterkey.c, and
 * nothing else. Not for the store's users (they include store.h).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <db.h>

#include "util.h"

struct secret;
struct store;

DB_ENV *store_db_env(struct store *s);

/* Formats a message into err (len bytes; nothing when err is NULL). */
void store_errf(char *err, size_t len, const char *fmt, ...) _printf_(3, 4);

/* Creates dir (0700) when missing and checks it is private (masterkey.c,
 * store.c). 0 or a negative errno, with err set. */
int store_ensure_dir(const char *dir, char *err, size_t errlen);

/*
 * The environment's regions live in System V shared memory (DB_SYSTEM_MEM),
 * not in files of the state directory: a memory-mapped region file on a full
 * filesystem kills its process with SIGBUS where a write would have said
 * ENOSPC. Every opener of one state directory reads the same base key from
 * its store.shmkey (shmkey.c: a random slot, made by the first opener;
 * Berkeley DB uses the base and the next few keys, one per region);
 * __db.001 then only records the segment ids. Keys are spaced SHM_KEY_STRIDE
 * apart over about 2^26 slots, so two state directories share a slot with
 * odds of about one in 67 million per pair.
 */
#define SHM_KEY_BASE 0x10000L
#define SHM_KEY_STRIDE 32L
#define SHM_KEY_SLOTS ((0x7fff0000L - SHM_KEY_BASE) / SHM_KEY_STRIDE)

/* After an environment open failed because a region's segment exists:
 * names the segment's owner and how to remove it in err (shmkey.c). */
void store_shm_explain(const char *dir, long base, char *err, size_t errlen);

/* Whether name is one of the store's database files (store.c). */
bool store_file_is_db(const char *name);

/* group.c: the replication side of a store (store.h, store_open_group()). */
struct store_group;
struct store_group_rt;
struct store_group_state;
struct store_group_rt *store_group_rt_new(const struct store_group *conf);
void store_group_rt_free(struct store_group_rt *g);
int store_group_configure(DB_ENV *env, struct store_group_rt *g, char *err, size_t errlen);
int store_group_start(DB_ENV *env, char *err, size_t errlen);
/* A fresh environment: no role known until its events say. */
void store_group_reset(struct store_group_rt *g);
int store_group_role(struct store_group_rt *g);
bool store_group_startup_done(struct store_group_rt *g);
unsigned long store_group_perm_failed(struct store_group_rt *g);
int store_group_lease_ms(struct store_group_rt *g);
/* Whether this site reaches a majority of the group (itself included). */
bool store_group_majority(DB_ENV *env, struct store_group_rt *g);
unsigned store_group_take_events(struct store_group_rt *g);
int store_group_read_state(DB_ENV *env, struct store_group_rt *g, struct store_group_state *st);

/* ---- what rotate.c needs of store.c and masterkey.c ---- */

/*
 * store_open() with a lock table for max_locks locks and locked objects (0:
 * Berkeley DB's default), for a transaction that writes every record. Only
 * the opener that creates the environment's regions sizes them.
 */
int store_open_locks(const char *dir, const struct secret *key, u_int32_t max_locks, struct store **out, char *err,
		     size_t errlen);

/* A transaction as store.c runs them (retried on lock conflicts, after
 * recovery): op returns a Berkeley DB code and may set *outcome. */
typedef int (*store_txn_fn)(struct store *s, DB_TXN *txn, void *arg, int *outcome);
int store_run_txn(struct store *s, store_txn_fn op, void *arg);

/* The handle of database db (an enum store_db), or of meta for STORE_DB_COUNT. */
DB *store_db_handle(struct store *s, int db);
const char *store_dir(const struct store *s);

/* Sealing and unsealing with the store's current key (store.c's own). */
int store_seal_record(const struct store *s, int db, const char *key, const struct secret *plain,
		      unsigned char **out, size_t *out_len);
int store_unseal_record(const struct store *s, int db, const char *key, const unsigned char *sealed, size_t len,
			struct secret **plain);
/* Makes key the store's key; returns the one it had (the caller owns it). */
struct secret *store_swap_key(struct store *s, struct secret *key);
/* meta's "key-check" value of key: crypto_generichash_BYTES bytes. */
void store_key_check_value(const struct secret *key, unsigned char *out);


/* In transaction txn: every record of tokens, clients and servers re-sealed
 * with new_key, and the key check moved to it (rotate.c). A Berkeley DB
 * code; *outcome STORE_E_CORRUPT for a record that does not open. */
int store_reseal_op(struct store *s, DB_TXN *txn, const struct secret *new_key, unsigned long *records,
		    int *outcome);

/* After reading <data_dir>/master.key into *key: settles a key rotation
 * that was interrupted (rotate.c). */
int store_key_settle(const char *data_dir, struct secret **key, char *err, size_t errlen);
