/*
 * The token store: a Berkeley DB transactional environment in the state
 * directory holding four databases.
 *
 *   tokens   server key -> sealed token record (token.h)
 *   clients  "client:<hash of issuer, redirect URI>" -> sealed registered
 *            OAuth client (token.h); "port:<hash of server key>" -> the
 *            redirect port chosen for that server (decimal text), sealed
 *   servers  system mode's runtime changes of the server list (daemon/
 *            servers.c): server name -> sealed {"config": entry} or
 *            {"removed": true} (a tombstone for a server of the file)
 *   meta     "schema" -> schema version; "key-check" -> key check value
 *
 * Every value in tokens, clients and servers is sealed with XChaCha20-Poly1305
 * (libsodium's IETF construction): version byte | 24-byte nonce | ciphertext,
 * a fresh random nonce per write, and "<database>\0<key>" as associated data
 * so that a record copied under another key or database fails to open.
 *
 * The environment is opened with DB_RECOVER | DB_REGISTER by every opener
 * (keeper and mcpctl), so recovery runs only when a process died inside it.
 * Transactions never wait for locks: a conflict is retried after failchk has
 * released what dead processes held, so a peer that died holding locks cannot
 * wedge the survivors (a live one makes us retry for up to 10 s, then
 * -EBUSY). When recovery ran
 * under a live store (DB_RUNRECOVERY), the store closes and reopens its
 * environment and retries the operation: callers never see it.
 *
 * The environment's regions live in System V shared memory (DB_SYSTEM_MEM),
 * not in memory-mapped files of the state directory, so a full filesystem or
 * a failing disk gives the caller an error (-ENOSPC, -EIO, -EROFS: see
 * store_strerror()), never SIGBUS.
 *
 * Lookups and deletes use the exact key; there is no prefix matching.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct secret;
struct store;

enum store_db {
	STORE_TOKENS,
	STORE_CLIENTS,
	STORE_SERVERS,
	STORE_DB_COUNT,
};

/* Named outcomes (positive) the caller decides on. */
enum {
	STORE_E_NOT_FOUND = 1,	/* no record under that key */
	STORE_E_CORRUPT,	/* the record does not open: tampered, moved or damaged */
	STORE_E_WRONG_KEY,	/* the master key does not match this store */
	STORE_E_CONFLICT,	/* compare-and-swap: the record changed */
	STORE_E_SCHEMA,		/* written by a newer mcpkeeper */
	STORE_E_NOT_MASTER,	/* a write on a replica of a group (group.c) */
	STORE_E_GROUP,		/* store_open() of a group site's directory */
	STORE_E_NO_QUORUM,	/* committed here, not acknowledged by a majority in time */
	STORE_E_IN_USE,		/* key rotation: another process has the store open */
};

#define STORE_KEY_LEN 32	/* master key length (crypto_aead_xchacha20poly1305_ietf_KEYBYTES) */
#define STORE_SERVER_KEY_MAX 96

/*
 * Loads the master key: $CREDENTIALS_DIRECTORY/master-key when that variable
 * is set (systemd LoadCredential[Encrypted]=), else <data_dir>/master.key,
 * created with 32 random bytes and mode 0600 when absent. A key file holds 32
 * raw bytes or 64 hex digits (a trailing newline is allowed). A key file that
 * group or others can read is refused. Returns 0 or a negative errno value
 * with a message in err.
 */
int store_load_master_key(const char *data_dir, struct secret **key, char *err, size_t errlen);

/*
 * Opens (creating when absent) the store in dir with the master key (copied).
 * Returns 0 and *out; STORE_E_WRONG_KEY when the key check fails (nothing is
 * written); STORE_E_SCHEMA for a newer schema; a negative errno value
 * otherwise. err gets a message in every failure case.
 *
 * When the effective uid is root and dir belongs to another user, the
 * process switches to that user (groups, gid, uid) before touching the
 * environment, so that no file in it ends up owned by root. That switch is
 * for the whole process and cannot be undone.
 */
int store_open(const char *dir, const struct secret *key, struct store **out, char *err, size_t errlen);
struct store *store_close(struct store *s);
void store_closep(struct store **s);

/*
 * Reads and unseals the record under key. Returns 0 and *plain (a secret the
 * caller frees), STORE_E_NOT_FOUND, STORE_E_CORRUPT, or a negative errno value.
 */
int store_get(struct store *s, enum store_db db, const char *key, struct secret **plain);

/* Seals and writes plain under key, replacing any record, in one synced
 * transaction. */
int store_put(struct store *s, enum store_db db, const char *key, const struct secret *plain);

/*
 * Compare-and-swap in one transaction: writes plain only when the current
 * record equals expected (NULL: only when there is no record). Returns 0,
 * STORE_E_CONFLICT, STORE_E_CORRUPT (the current record does not open), or a
 * negative errno value.
 */
int store_update(struct store *s, enum store_db db, const char *key, const struct secret *expected,
		 const struct secret *plain);

/* Deletes the record under exactly key. Returns 0 or STORE_E_NOT_FOUND. */
int store_delete(struct store *s, enum store_db db, const char *key);

/*
 * Calls fn for every record in key order with its unsealed content, or with
 * plain NULL and status STORE_E_CORRUPT for a record that does not open (the
 * others are still listed). plain lives in one buffer reused for every
 * record and wiped after each call: fn copies what it keeps. fn returns 0 to
 * go on, non-zero to stop (that value is returned). Memory stays bounded
 * however many records there are (they are read in batches). Returns 0 or a
 * negative errno value.
 */
typedef int (*store_list_fn)(const char *key, const struct secret *plain, int status, void *ctx);
int store_list(struct store *s, enum store_db db, store_list_fn fn, void *ctx);

/* The same walk without unsealing: fn gets plain NULL and status 0. */
int store_list_keys(struct store *s, enum store_db db, store_list_fn fn, void *ctx);

/* Writes a checkpoint and lets the environment remove log files it no
 * longer needs. Also done at close. */
int store_checkpoint(struct store *s);

/*
 * The base System V shared memory key of dir's environment regions, a
 * random slot kept in dir/store.shmkey (made on first use, shmkey.c), or a
 * negative errno value. For tests
 * that open the environment with raw Berkeley DB: they add DB_SYSTEM_MEM,
 * set_shm_key() this and hold store.lock shared (flock) while open.
 */
long store_shm_key(const char *dir);

/* How many times this handle reopened its environment after recovery. */
unsigned store_reopen_count(const struct store *s);

const char *store_db_name(enum store_db db);
const char *store_strerror(int status);

/*
 * The server key: "<name>#<8 hex digits of a BLAKE2b hash of url>". Distinct
 * URLs under one name get distinct keys; the name stays readable in the
 * database for people running db_dump. Returns 0 or -ENAMETOOLONG.
 */
int store_server_key(const char *name, const char *url, char *buf, size_t len);

/*
 * Keys of the other records in "clients": prefix + 32 hex digits of a
 * BLAKE2b hash of a and b. Registered OAuth clients live under
 * ("client:", issuer, redirect URI), so a registration is reused exactly
 * where it is valid; a server's automatically chosen redirect port under
 * ("port:", server key, NULL). Returns 0 or -ENAMETOOLONG.
 */
int store_derived_key(const char *prefix, const char *a, const char *b, char *buf, size_t len);

/* ---- replication groups (group.c) ----
 *
 * A site of a Berkeley DB replication group (issue 18): the same store, its
 * environment opened with DB_INIT_REP | DB_THREAD and the replication
 * manager started. Only the master writes: a write elsewhere returns
 * STORE_E_NOT_MASTER. repmgr's own threads run inside the opening process;
 * they only write notify_fd (an eventfd the opener's loop reads: then call
 * store_group_events()). A directory that belongs to a group is refused by
 * store_open() with STORE_E_GROUP: only its keeper opens it.
 */

struct store_site {
	const char *host;
	int port;
};

struct store_group {
	struct store_site local;
	const struct store_site *peers;
	size_t n_peers;
	int priority;		/* 0: never master */
	bool create;		/* DB_GROUP_CREATOR at the first start */
	int lease_timeout_ms;
	int heartbeat_ms;	/* the master sends; replicas call an election after 3 missed */
	int ack_timeout_ms;
	int notify_fd;		/* eventfd (EFD_NONBLOCK) the event callback writes */
	const struct secret *next_key;	/* master.key.next, or NULL (store_set_next_key()) */
};

/* Clocks of the sites may run apart by this much (DB_ENV->rep_set_clockskew). */
#define STORE_GROUP_CLOCK_SKEW_PCT 1
#define STORE_GROUP_SITES_MAX 32

enum store_role {
	STORE_ROLE_UNKNOWN,	/* no master known yet: an election, or no majority */
	STORE_ROLE_MASTER,
	STORE_ROLE_REPLICA,
};

/* Event bits store_group_events() returns. */
enum {
	STORE_GROUP_EV_MASTER = 1u << 0,	/* this site became master */
	STORE_GROUP_EV_CLIENT = 1u << 1,	/* this site became a replica */
	STORE_GROUP_EV_NEWMASTER = 1u << 2,	/* a (new) master is known */
	STORE_GROUP_EV_STARTUPDONE = 1u << 3,	/* this replica caught up */
	STORE_GROUP_EV_PERM_FAILED = 1u << 4,	/* a commit missed its quorum */
	STORE_GROUP_EV_DUPMASTER = 1u << 5,
	STORE_GROUP_EV_ELECTION_FAILED = 1u << 6,
	STORE_GROUP_EV_CONNECTION = 1u << 7,	/* a link came up or went down */
	STORE_GROUP_EV_JOIN_FAILURE = 1u << 8,
	STORE_GROUP_EV_REMOVED = 1u << 9,	/* this site was removed from the group */
	STORE_GROUP_EV_MEMBERSHIP = 1u << 10,	/* a site joined or left */
	STORE_GROUP_EV_PANIC = 1u << 11,	/* the environment needs recovery */
	STORE_GROUP_EV_OTHER = 1u << 12,
	STORE_GROUP_EV_READY = 1u << 13,	/* the store's databases just opened */
};

struct store_group_site {
	char host[256];
	int port;
	int eid;
	bool connected;
	bool master;
};

struct store_group_state {
	enum store_role role;
	bool ready;			/* databases open: records readable here */
	bool startup_done;		/* a replica that has caught up with its master */
	int self_eid, master_eid;
	char master_host[256];		/* empty: no master known */
	int master_port;
	unsigned generation;
	unsigned long long elections, elections_won, master_changes;
	unsigned next_lsn_file, next_lsn_offset;
	unsigned long long log_queued;
	unsigned long long lease_checks_missed;
	unsigned long perm_failed;	/* commits that missed their quorum */
	struct store_group_site sites[STORE_GROUP_SITES_MAX];	/* the others */
	size_t n_sites;
};

/*
 * Opens dir as a site of the group g (strings copied) and starts the
 * replication manager. Waits up to wait_ms for this site to become master,
 * or a replica with its databases readable; after that it returns anyway
 * with the store not ready (reads return -EAGAIN until an event makes it
 * ready). Refuses (STORE_E_CORRUPT, with err) a directory that holds a store
 * of its own but no group unless g->create: a joining site starts empty,
 * since joining replaces its records with the group's. STORE_E_WRONG_KEY
 * when the key does not open the group's records.
 */
int store_open_group(const char *dir, const struct secret *key, const struct store_group *g, int wait_ms,
		     struct store **out, char *err, size_t errlen);

/* Whether dir holds a site of a replication group. */
bool store_dir_is_group(const char *dir);
bool store_is_group(const struct store *s);

/*
 * After notify_fd became readable: the STORE_GROUP_EV_* bits since the last
 * call. Opens the databases when this site can now read them (then
 * STORE_GROUP_EV_READY is among the bits), and checks the master key
 * against the group's records once they are there (STORE_E_WRONG_KEY in
 * *fatal then: the caller must stop).
 */
unsigned store_group_events(struct store *s, int *fatal);

/*
 * A group's change sequence: every commit of a token record on the master
 * bumps it, in the same transaction, and names the record's key. Calls fn
 * (plain NULL, status 0) with each key changed after *seq, in order, and
 * sets *seq to the current value; fn gets key NULL once instead when the
 * changes since *seq are no longer all kept (then read everything). A
 * replica polls this to learn of new tokens. 0, fn's non-zero, or -errno.
 */
int store_changes(struct store *s, uint64_t *seq, store_list_fn fn, void *ctx);

/*
 * After Berkeley DB panicked the environment (STORE_GROUP_EV_PANIC: for
 * instance a master whose lease ran out in the middle of a commit, which
 * Berkeley DB cannot undo): closes it and opens it again with recovery, and
 * starts replication again. 0 or -errno.
 */
int store_group_recover(struct store *s);

/*
 * A group's key rotation (issue 18). Every site installs the next key
 * (<data_dir>/master.key.next, mcpctl key import --next) and its keeper
 * hands it to the store: records sealed with it open as well as those
 * sealed with the key. store_group_rotate() (the master) re-seals every
 * record with the next key and moves the key check to it in one
 * transaction acknowledged by a majority; each replica's store_key_promote()
 * then finds the key check naming its next key, which becomes its key.
 * store_key_promoted() tells (once) that the next key became the key: the
 * caller renames master.key.next to master.key. A site that starts with the
 * old key and the next one present promotes at its key check.
 */
/* A key file (masterkey.c's reader): 32 bytes raw or 64 hex digits; with
 * check_mode, refused when group or others may read it. */
int store_read_key_file(const char *path, int check_mode, struct secret **out, char *err, size_t errlen);
/* dir's master.key.next into *key: 0 (there is none), 1, or -errno with err. */
int store_next_key_read(const char *dir, struct secret **key, char *err, size_t errlen);
/* master.key.next renamed over master.key, the directory synced (after the
 * group moved to the next key). 0 or -errno with err. */
int store_next_key_adopt(const char *dir, char *err, size_t errlen);
int store_set_next_key(struct store *s, const struct secret *key);	/* 0, -EEXIST (it is the key) */
bool store_has_next_key(const struct store *s);
/* 0 (records re-sealed), STORE_E_NOT_MASTER, STORE_E_NO_QUORUM (committed
 * here, the key swapped anyway), STORE_E_CORRUPT, or -errno. */
int store_group_rotate(struct store *s, unsigned long *records);
/* 0 (promoted or not yet), STORE_E_WRONG_KEY (the group moved to a key this
 * site does not have), or -errno. */
int store_key_promote(struct store *s);
bool store_key_promoted(struct store *s);

/* Role, master, sites and counters of this site, now. 0 or -errno. */
int store_group_state(struct store *s, struct store_group_state *st);
/* MASTER on a single host; in a group, UNKNOWN also for a master that
 * found its lease expired, until the lease timeout passed or an event came. */
enum store_role store_role(struct store *s);
const char *store_role_name(enum store_role r);

/* ---- backup and restore (backup.c) ----
 *
 * A backup is one file: "MCPKBAK\0", a 4-byte big-endian format version (1),
 * then entries (2-byte big-endian name length, the name, 8-byte big-endian
 * length, the bytes), an entry with an empty name as the end, and a 32-byte
 * BLAKE2b hash (crypto_generichash) of everything before it. The entries are
 * the store's database files and log files as Berkeley DB's hot backup
 * (DB_ENV->backup) copies them from a live environment: databases first, then
 * every log, so that catastrophic recovery on the copy makes it consistent.
 * Records stay sealed; the master key is not in it.
 */

/*
 * Writes a hot backup of the open store to fd (an empty regular file,
 * written with pwrite from offset 0; the caller syncs and names it). A
 * keeper may be running on the same store. Returns 0 and the number of
 * files and bytes, or a negative errno value with a message in err.
 */
int store_backup(struct store *s, int fd, unsigned *files, unsigned long long *bytes, char *err, size_t errlen);

/*
 * Checks a backup read from fd (format, sizes, names, the hash) and with dir
 * non-NULL writes its files into dir (an existing, empty directory), each
 * with mode 0600. Nothing is written unless the whole file checks out.
 * Returns 0, STORE_E_CORRUPT (the message in err says what is wrong), or a
 * negative errno value.
 */
int store_backup_extract(int fd, const char *dir, char *err, size_t errlen);

/* Catastrophic recovery (DB_RECOVER_FATAL) of the environment in dir, which
 * no process may have open; then its region files are removed. Returns 0 or
 * a negative errno value with a message in err. */
int store_recover_fatal(const char *dir, char *err, size_t errlen);

/*
 * Whether a live process has the environment in dir open: Berkeley DB's
 * DB_REGISTER registry (__db.register) holds a lock per open process.
 * Returns 0 (none), 1 with *pid, or a negative errno value.
 */
int store_in_use(const char *dir, pid_t *pid);

/* What store_open does to a root opener: becomes the owner of dir when dir
 * belongs to another user (for the whole process). 0 or a negative errno. */
int store_become_owner(const char *dir, char *err, size_t errlen);

/* ---- the master key's rotation and installation (rotate.c) ----
 *
 * A rotation re-seals every record of tokens, clients and servers with a new
 * key and writes the new key's check value into meta, all in one
 * transaction, which first locks meta's key check (an opener's key check
 * then waits for the outcome) and refuses when any other process has the
 * environment open. The new key is written to <dir>/master.key.new and
 * synced before the transaction commits, and renamed over master.key after.
 * store_load_master_key() settles a rotation interrupted in between: when
 * master.key.new is there, the key of the two that passes the store's key
 * check stays as master.key and the other file goes (logged).
 */
#define STORE_KEY_FILE "master.key"
#define STORE_KEY_NEW_FILE "master.key.new"
/* A group site's next master key, until the group rotates to it. */
#define STORE_KEY_NEXT_FILE "master.key.next"

/*
 * Rotates s (opened with its current key from <dir>/master.key, best with
 * store_open_for_rotation()) to new_key:
 * afterwards s works with new_key and master.key holds it. Returns 0 and
 * the number of records re-sealed; STORE_E_IN_USE (err names the process),
 * STORE_E_CORRUPT (a record does not open with the current key: err names
 * it; nothing changed), or a negative errno value, each with a message.
 */
/* store_open() for store_rotate(): a lock table big enough for its one
 * transaction (sized from the database files). */
int store_open_for_rotation(const char *dir, const struct secret *key, struct store **out, char *err, size_t errlen);

int store_rotate(struct store *s, const struct secret *new_key, unsigned long *records, char *err, size_t errlen);

/* Writes key (STORE_KEY_LEN bytes) as <dir>/master.key, mode 0600: a
 * temporary file synced, renamed over it, the directory synced. 0 or a
 * negative errno value with a message in err. */
int store_install_key(const char *dir, const struct secret *key, char *err, size_t errlen);
/* The same under another name in dir (STORE_KEY_NEXT_FILE). */
int store_install_key_as(const char *dir, const char *file, const struct secret *key, char *err, size_t errlen);
