/*
 * Store tests against the real Berkeley DB environment in a temporary
 * directory. Crash cases run tests/store-tool as a separate process and kill
 * it with SIGKILL; argv[1] is the path of that tool.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <db.h>
#include <sodium.h>

#include "log.h"
#include "proto.h"
#include "secret.h"
#include "store.h"
#include "test.h"
#include "token.h"

extern char **environ;

static const char *tool;
static char root[] = "/tmp/test-store-XXXXXX";

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void rm_rf(const char *path)
{
	nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static char *subdir(const char *name)
{
	static char buf[8][512];
	static int next;
	char *p = buf[next++ % 8];

	snprintf(p, 512, "%s/%s", root, name);
	return p;
}

static struct secret *random_key(void)
{
	struct secret *k = secret_new(STORE_KEY_LEN);

	randombytes_buf(k->data, k->len);
	return k;
}

static struct store *open_ok(const char *dir, const struct secret *key)
{
	struct store *s = NULL;
	char err[512] = "";
	int r = store_open(dir, key, &s, err, sizeof(err));

	if (r)
		fprintf(stderr, "store_open: %d %s\n", r, err);
	CHECK_EQ(r, 0);
	return s;
}

static void put_token(struct store *s, const char *key, const char *access, const char *refresh)
{
	struct token t = {
		.access_token = access,
		.refresh_token = refresh,
		.token_type = "Bearer",
		.scope = "read write",
		.token_endpoint = "https://auth.example/token",
		.obtained_at = 1700000000,
		.expires_at = 1700003600,
	};
	struct secret *plain = NULL;

	CHECK_EQ(token_encode(&t, &plain), 0);
	CHECK_EQ(store_put(s, STORE_TOKENS, key, plain), 0);
	secret_free(plain);
}

/* 0 and the decoded token, or the store's outcome. */
static int get_token(struct store *s, const char *key, struct token *t)
{
	struct secret *plain = NULL;
	int r = store_get(s, STORE_TOKENS, key, &plain);

	if (r)
		return r;
	CHECK_EQ(token_decode(plain, t), 0);
	return 0;
}

static void check_access(struct store *s, const char *key, const char *access)
{
	struct token t;

	CHECK_EQ(get_token(s, key, &t), 0);
	CHECK(strcmp(t.access_token, access) == 0);
	token_clear(&t);
}

struct counted {
	int ok, corrupt;
	char corrupt_key[128];
};

static int count_one(const char *key, const struct secret *plain, int status, void *ctx)
{
	struct counted *c = ctx;

	if (status == 0) {
		c->ok++;
	} else {
		CHECK_EQ(status, STORE_E_CORRUPT);
		CHECK(plain == NULL);
		c->corrupt++;
		snprintf(c->corrupt_key, sizeof(c->corrupt_key), "%s", key);
	}
	return 0;
}

static struct counted count(struct store *s, enum store_db db)
{
	struct counted c = { 0 };

	CHECK_EQ(store_list(s, db, count_one, &c), 0);
	return c;
}

/* Raw Berkeley DB access, to play the attacker who edits the files. */
struct raw {
	DB_ENV *env;
	DB *db;
	int lock_fd;
	const char *dir;
};

/* As store.h says of store_shm_key(): the store's regions and lock. */
static void raw_open(struct raw *r, const char *dir, const char *file)
{
	char lock[4096];

	r->dir = dir;
	snprintf(lock, sizeof(lock), "%s/store.lock", dir);
	r->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	CHECK(r->lock_fd >= 0 && flock(r->lock_fd, LOCK_SH) == 0);
	CHECK_EQ(db_env_create(&r->env, 0), 0);
	CHECK_EQ(r->env->set_shm_key(r->env, store_shm_key(dir)), 0);
	CHECK_EQ(r->env->set_thread_count(r->env, 256), 0);
	CHECK_EQ(r->env->open(r->env, dir,
			      DB_CREATE | DB_INIT_TXN | DB_INIT_LOG | DB_INIT_LOCK | DB_INIT_MPOOL | DB_RECOVER |
				      DB_REGISTER | DB_SYSTEM_MEM,
			      0600),
		 0);
	CHECK_EQ(db_create(&r->db, r->env, 0), 0);
	CHECK_EQ(r->db->open(r->db, NULL, file, NULL, DB_BTREE, DB_AUTO_COMMIT, 0600), 0);
}

static void raw_close(struct raw *r)
{
	r->db->close(r->db, 0);
	r->env->close(r->env, 0);
	r->env = NULL;
	if (flock(r->lock_fd, LOCK_EX | LOCK_NB) == 0 && db_env_create(&r->env, 0) == 0) {
		CHECK_EQ(r->env->set_shm_key(r->env, store_shm_key(r->dir)), 0);
		CHECK_EQ(r->env->remove(r->env, r->dir, DB_FORCE), 0);
	}
	close(r->lock_fd);
}

static void raw_get(struct raw *r, const char *key, unsigned char **val, size_t *len)
{
	DBT k = { .data = (void *)key, .size = (u_int32_t)strlen(key) }, v = { .flags = DB_DBT_MALLOC };

	CHECK_EQ(r->db->get(r->db, NULL, &k, &v, 0), 0);
	*val = v.data;
	*len = v.size;
}

static void raw_put(struct raw *r, const char *key, const unsigned char *val, size_t len)
{
	DBT k = { .data = (void *)key, .size = (u_int32_t)strlen(key) },
	    v = { .data = (void *)val, .size = (u_int32_t)len };

	CHECK_EQ(r->db->put(r->db, NULL, &k, &v, DB_AUTO_COMMIT), 0);
}

/* Listing goes in batches (LIST_BATCH in store.c, 512): a walk over more
 * than two batches sees every record once, in key order, with its content,
 * reports a corrupt one in the middle and goes on, may change the store
 * from the callback, and stops when the callback says so. */
#define LIST_RECORDS 1300

struct walk {
	struct store *s;
	char last[64];
	int seen, corrupt, keys_only;
	int stop_at;		/* return 7 at this record; 0: never */
	bool deleted_ahead;
};

static int walk_one(const char *key, const struct secret *plain, int status, void *ctx)
{
	struct walk *w = ctx;
	char want[64];
	struct token t;

	CHECK(strcmp(w->last, key) < 0);
	snprintf(w->last, sizeof(w->last), "%s", key);
	w->seen++;
	if (w->keys_only) {
		CHECK(plain == NULL && status == 0);
		return 0;
	}
	if (strcmp(key, "list#00000777") == 0) {
		CHECK_EQ(status, STORE_E_CORRUPT);
		CHECK(plain == NULL);
		w->corrupt++;
		return 0;
	}
	CHECK_EQ(status, 0);
	CHECK_EQ(token_view(plain, &t), 0);
	CHECK(t.plain == NULL);
	snprintf(want, sizeof(want), "access-%s", key);
	CHECK(strcmp(t.access_token, want) == 0);
	if (!w->deleted_ahead && w->seen == 10) {
		/* Far ahead (another batch): never listed. */
		CHECK_EQ(store_delete(w->s, STORE_TOKENS, "list#00001200"), 0);
		w->deleted_ahead = true;
	}
	return w->seen == w->stop_at ? 7 : 0;
}

static void test_list_batches(void)
{
	const char *dir = subdir("list");
	struct secret *key = random_key();
	struct store *s = open_ok(dir, key);
	struct walk w = { .s = s };
	struct raw raw;
	char k[32], access[64];
	unsigned char junk[64];

	for (int i = 0; i < LIST_RECORDS; i++) {
		snprintf(k, sizeof(k), "list#%08d", i);
		snprintf(access, sizeof(access), "access-%s", k);
		put_token(s, k, access, "refresh");
	}
	s = store_close(s);
	randombytes_buf(junk, sizeof(junk));
	raw_open(&raw, dir, "tokens.db");
	raw_put(&raw, "list#00000777", junk, sizeof(junk));
	raw_close(&raw);

	s = open_ok(dir, key);
	w.s = s;
	CHECK_EQ(store_list(s, STORE_TOKENS, walk_one, &w), 0);
	CHECK_EQ(w.seen, LIST_RECORDS - 1); /* one deleted ahead of the walk */
	CHECK_EQ(w.corrupt, 1);

	memset(&w, 0, sizeof(w));
	w.s = s;
	w.keys_only = 1;
	CHECK_EQ(store_list_keys(s, STORE_TOKENS, walk_one, &w), 0);
	CHECK_EQ(w.seen, LIST_RECORDS - 1);

	memset(&w, 0, sizeof(w));
	w.s = s;
	w.deleted_ahead = true;
	w.stop_at = 600; /* in the second batch */
	CHECK_EQ(store_list(s, STORE_TOKENS, walk_one, &w), 7);
	CHECK_EQ(w.seen, 600);
	store_close(s);
	secret_free(key);
}

static void test_round_trip(void)
{
	const char *dir = subdir("roundtrip");
	struct secret *key = random_key();
	struct store *s = open_ok(dir, key);
	struct oauth_client c = { .client_id = "cid-1", .client_secret = "csecret", .auth_method = "client_secret_post" };
	struct oauth_client c2;
	struct secret *plain = NULL;
	struct token t;

	TEST("round trip: put, get, replace, client record, reopen");
	put_token(s, "github#00000001", "access-one", "refresh-one");
	CHECK_EQ(get_token(s, "github#00000001", &t), 0);
	CHECK(strcmp(t.access_token, "access-one") == 0);
	CHECK(strcmp(t.refresh_token, "refresh-one") == 0);
	CHECK(strcmp(t.token_type, "Bearer") == 0);
	CHECK(strcmp(t.scope, "read write") == 0);
	CHECK(t.revocation_endpoint == NULL);
	CHECK_EQ(t.obtained_at, 1700000000);
	CHECK_EQ(t.expires_at, 1700003600);
	/* A record without the millisecond fields: the seconds x 1000. */
	CHECK_EQ(t.obtained_at_ms, 1700000000000LL);
	CHECK_EQ(t.expires_at_ms, 1700003600000LL);
	token_clear(&t);

	put_token(s, "github#00000001", "access-two", NULL);
	CHECK_EQ(get_token(s, "github#00000001", &t), 0);
	CHECK(strcmp(t.access_token, "access-two") == 0);
	CHECK(t.refresh_token == NULL);
	token_clear(&t);

	CHECK_EQ(get_token(s, "missing#00000000", &t), STORE_E_NOT_FOUND);

	CHECK_EQ(client_encode(&c, &plain), 0);
	CHECK_EQ(store_put(s, STORE_CLIENTS, "github#00000001", plain), 0);
	secret_free(plain);
	plain = NULL;
	CHECK_EQ(store_get(s, STORE_CLIENTS, "github#00000001", &plain), 0);
	CHECK_EQ(client_decode(plain, &c2), 0);
	CHECK(strcmp(c2.client_id, "cid-1") == 0 && strcmp(c2.client_secret, "csecret") == 0);
	client_clear(&c2);

	store_close(s);
	s = open_ok(dir, key);
	check_access(s, "github#00000001", "access-two");
	store_close(s);
	secret_free(key);
}

/* A string of n copies of c, for tokens at and past the limit. */
static char *repeat(char c, size_t n)
{
	char *s = malloc(n + 1);

	CHECK(s != NULL);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

/* The keeper's token times: milliseconds survive the record, the seconds
 * beside them are the same instants rounded down (for an older reader). */
static void test_token_times(void)
{
	struct token t = { .access_token = "a", .token_type = "Bearer" }, got;
	struct secret *plain = NULL;

	TEST("token times: ms survive encoding, seconds beside them, no expiry stays 0");
	token_set_times(&t, 1796661601123LL, 30);
	CHECK_EQ(t.obtained_at, 1796661601);
	CHECK_EQ(t.expires_at, 1796661631);
	CHECK_EQ(token_encode(&t, &plain), 0);
	CHECK_EQ(token_decode(plain, &got), 0);
	CHECK_EQ(got.obtained_at_ms, 1796661601123LL);
	CHECK_EQ(got.expires_at_ms, 1796661631123LL);
	CHECK_EQ(got.obtained_at, 1796661601);
	CHECK_EQ(got.expires_at, 1796661631);
	token_clear(&got);

	token_set_times(&t, 1796661601999LL, 0);
	CHECK_EQ(t.expires_at_ms, 0);
	CHECK_EQ(t.expires_at, 0);
	CHECK_EQ(token_encode(&t, &plain), 0);
	CHECK_EQ(token_decode(plain, &got), 0);
	CHECK_EQ(got.obtained_at_ms, 1796661601999LL);
	CHECK_EQ(got.expires_at_ms, 0);
	CHECK_EQ(got.intent_at_ms, 0);
	token_clear(&got);

	TEST("token record: the refresh intent survives encoding");
	t.intent_at_ms = 1796661602345LL;
	CHECK_EQ(token_encode(&t, &plain), 0);
	CHECK_EQ(token_decode(plain, &got), 0);
	CHECK_EQ(got.intent_at_ms, 1796661602345LL);
	token_clear(&got);
}

static void test_token_size(void)
{
	const char *dir = subdir("tokensize");
	struct secret *key = random_key();
	struct store *s = open_ok(dir, key);
	char *at_limit = repeat('a', PROTO_MAX_TOKEN), *refresh_at_limit = repeat('r', PROTO_MAX_TOKEN);
	char *over = repeat('o', PROTO_MAX_TOKEN + 1), *secret = repeat('s', 8192);
	struct token t = { .access_token = at_limit, .refresh_token = refresh_at_limit, .token_type = "Bearer",
			   .token_endpoint = "https://auth.example/token", .client_id = "cid",
			   .client_secret = secret, .obtained_at = 1700000000, .expires_at = 1700003600 };
	struct secret *plain = NULL, *forged;
	size_t n = PROTO_MAX_TOKEN + 2;	/* the token and its NUL */
	struct token got;

	TEST("tokens of PROTO_MAX_TOKEN bytes each are stored; one byte more is refused both ways");
	CHECK_EQ(token_encode(&t, &plain), 0);
	CHECK_EQ(store_put(s, STORE_TOKENS, "big#00000001", plain), 0);
	secret_free(plain);
	plain = NULL;
	CHECK_EQ(get_token(s, "big#00000001", &got), 0);
	CHECK(strcmp(got.access_token, at_limit) == 0 && strcmp(got.refresh_token, refresh_at_limit) == 0);
	token_clear(&got);

	t.access_token = over;
	CHECK_EQ(token_encode(&t, &plain), -EMSGSIZE);
	CHECK(plain == NULL);
	t.access_token = at_limit;
	t.refresh_token = over;
	CHECK_EQ(token_encode(&t, &plain), -EMSGSIZE);
	CHECK(plain == NULL);

	/* A record written by hand (version 1, tag 1: access_token) with a
	 * token one byte over the limit does not decode. */
	forged = secret_new(1 + 5 + n);
	CHECK(forged != NULL);
	forged->data[0] = 1;
	forged->data[1] = 1;
	for (int i = 0; i < 4; i++)
		forged->data[2 + i] = (unsigned char)(n >> (8 * i));
	memcpy(forged->data + 6, over, n);
	CHECK_EQ(token_view(forged, &got), -EBADMSG);
	CHECK_EQ(token_decode(forged, &got), -EBADMSG);

	free(at_limit);
	free(refresh_at_limit);
	free(over);
	free(secret);
	store_close(s);
	secret_free(key);
}

static void test_server_key(void)
{
	char a[STORE_SERVER_KEY_MAX], b[STORE_SERVER_KEY_MAX], c[STORE_SERVER_KEY_MAX];
	char longname[200];

	TEST("server key: name plus URL hash, stable, distinct per URL");
	CHECK_EQ(store_server_key("github", "https://api.github.example/mcp", a, sizeof(a)), 0);
	CHECK_EQ(store_server_key("github", "https://api.github.example/mcp", b, sizeof(b)), 0);
	CHECK_EQ(store_server_key("github", "https://other.example/mcp", c, sizeof(c)), 0);
	CHECK(strcmp(a, b) == 0);
	CHECK(strcmp(a, c) != 0);
	CHECK(strncmp(a, "github#", 7) == 0 && strlen(a) == 15);
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	CHECK_EQ(store_server_key(longname, "u", a, sizeof(a)), -ENAMETOOLONG);
}

static void test_exact_delete(void)
{
	const char *dir = subdir("delete");
	struct secret *key = random_key();
	struct store *s = open_ok(dir, key);
	char gh[STORE_SERVER_KEY_MAX], ghe[STORE_SERVER_KEY_MAX];
	struct token t;

	TEST("delete by exact key: github does not touch github-enterprise");
	store_server_key("github", "https://gh.example/mcp", gh, sizeof(gh));
	store_server_key("github-enterprise", "https://ghe.example/mcp", ghe, sizeof(ghe));
	put_token(s, gh, "gh-access", "gh-refresh");
	put_token(s, ghe, "ghe-access", "ghe-refresh");
	CHECK_EQ(store_delete(s, STORE_TOKENS, "github"), STORE_E_NOT_FOUND);
	CHECK_EQ(store_delete(s, STORE_TOKENS, "github#"), STORE_E_NOT_FOUND);
	CHECK_EQ(store_delete(s, STORE_TOKENS, gh), 0);
	CHECK_EQ(get_token(s, gh, &t), STORE_E_NOT_FOUND);
	check_access(s, ghe, "ghe-access");
	CHECK_EQ(store_delete(s, STORE_TOKENS, gh), STORE_E_NOT_FOUND);
	CHECK_EQ(count(s, STORE_TOKENS).ok, 1);
	store_close(s);
	secret_free(key);
}

static void test_wrong_key(void)
{
	const char *dir = subdir("wrongkey");
	struct secret *key = random_key(), *other = random_key(), *shortkey = secret_new(16);
	struct store *s = open_ok(dir, key), *bad = NULL;
	char err[512] = "";

	TEST("wrong master key: refused, nothing changed");
	put_token(s, "a#00000000", "access-a", "refresh-a");
	put_token(s, "b#00000000", "access-b", "refresh-b");
	store_close(s);

	CHECK_EQ(store_open(dir, other, &bad, err, sizeof(err)), STORE_E_WRONG_KEY);
	CHECK(bad == NULL);
	CHECK(strstr(err, "wrong master key") != NULL);
	CHECK_EQ(store_open(dir, shortkey, &bad, err, sizeof(err)), -EINVAL);

	s = open_ok(dir, key);
	CHECK_EQ(count(s, STORE_TOKENS).ok, 2);
	check_access(s, "a#00000000", "access-a");
	check_access(s, "b#00000000", "access-b");
	store_close(s);
	secret_free(key);
	secret_free(other);
	secret_free(shortkey);
}

static void test_tamper(void)
{
	const char *dir = subdir("tamper");
	struct secret *key = random_key();
	struct store *s = open_ok(dir, key);
	unsigned char *val;
	size_t len;
	struct raw raw;
	struct token t;
	struct counted c;

	TEST("tampered ciphertext and moved records are rejected by name");
	put_token(s, "alpha#00000000", "access-alpha", "refresh-alpha");
	put_token(s, "beta#00000000", "access-beta", "refresh-beta");
	put_token(s, "gamma#00000000", "access-gamma", "refresh-gamma");
	store_close(s);

	raw_open(&raw, dir, "tokens.db");
	/* Flip one ciphertext bit of beta. */
	raw_get(&raw, "beta#00000000", &val, &len);
	val[len - 5] ^= 0x01;
	raw_put(&raw, "beta#00000000", val, len);
	free(val);
	/* Copy alpha's sealed record under a new key. */
	raw_get(&raw, "alpha#00000000", &val, &len);
	raw_put(&raw, "delta#00000000", val, len);
	free(val);
	raw_close(&raw);

	s = open_ok(dir, key);
	CHECK_EQ(get_token(s, "beta#00000000", &t), STORE_E_CORRUPT);
	CHECK_EQ(get_token(s, "delta#00000000", &t), STORE_E_CORRUPT);
	check_access(s, "alpha#00000000", "access-alpha");
	check_access(s, "gamma#00000000", "access-gamma");
	c = count(s, STORE_TOKENS);
	CHECK_EQ(c.ok, 2);
	CHECK_EQ(c.corrupt, 2);
	store_close(s);

	/* A record moved from tokens into clients under the same key fails too. */
	raw_open(&raw, dir, "tokens.db");
	raw_get(&raw, "gamma#00000000", &val, &len);
	raw_close(&raw);
	raw_open(&raw, dir, "clients.db");
	raw_put(&raw, "gamma#00000000", val, len);
	raw_close(&raw);
	free(val);
	s = open_ok(dir, key);
	{
		struct secret *plain = NULL;

		CHECK_EQ(store_get(s, STORE_CLIENTS, "gamma#00000000", &plain), STORE_E_CORRUPT);
		CHECK(plain == NULL);
	}
	check_access(s, "gamma#00000000", "access-gamma");
	store_close(s);
	secret_free(key);
}

static int file_contains(const char *path, const void *needle, size_t nlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	unsigned char *buf;
	int found = 0;

	CHECK(fd >= 0);
	CHECK(fstat(fd, &st) == 0);
	buf = malloc((size_t)st.st_size + 1);
	CHECK(buf != NULL);
	CHECK(read(fd, buf, (size_t)st.st_size) == st.st_size);
	close(fd);
	found = memmem(buf, (size_t)st.st_size, needle, nlen) != NULL;
	free(buf);
	return found;
}

static void test_no_clear_bytes(void)
{
	const char *dir = subdir("clear");
	struct secret *key = random_key();
	struct store *s = open_ok(dir, key);
	static const char access[] = "AccessTokenBytes-9f8e7d6c5b4a-must-not-appear";
	static const char refresh[] = "RefreshTokenBytes-0a1b2c3d4e5f-must-not-appear";
	static const char csecret[] = "ClientSecretBytes-77aa88bb99cc-must-not-appear";
	struct oauth_client c = { .client_id = "cid", .client_secret = csecret };
	struct secret *plain = NULL;
	struct dirent *de;
	DIR *d;
	int files = 0;

	TEST("database, log and region files never hold token bytes in clear");
	for (int i = 0; i < 20; i++)
		put_token(s, "secret#00000000", access, refresh);
	CHECK_EQ(client_encode(&c, &plain), 0);
	CHECK_EQ(store_put(s, STORE_CLIENTS, "secret#00000000", plain), 0);
	secret_free(plain);
	CHECK_EQ(store_checkpoint(s), 0);
	/* Look while the environment is open (regions, cache) and after close. */
	for (int pass = 0; pass < 2; pass++) {
		d = opendir(dir);
		CHECK(d != NULL);
		while ((de = readdir(d))) {
			char path[1024];

			if (de->d_name[0] == '.' || strcmp(de->d_name, "master.key") == 0)
				continue;
			snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
			CHECK(!file_contains(path, access, strlen(access)));
			CHECK(!file_contains(path, refresh, strlen(refresh)));
			CHECK(!file_contains(path, csecret, strlen(csecret)));
			CHECK(!file_contains(path, key->data, key->len));
			files++;
		}
		closedir(d);
		if (pass == 0)
			store_close(s);
	}
	CHECK(files >= 8); /* tokens.db, clients.db, meta.db, a log, regions, twice */
	secret_free(key);
}

static void test_update(void)
{
	const char *dir = subdir("update");
	struct secret *key = random_key();
	struct store *s = open_ok(dir, key);
	struct token t1 = { .access_token = "one" }, t2 = { .access_token = "two" }, t3 = { .access_token = "three" };
	struct secret *p1, *p2, *p3;

	TEST("compare-and-swap update");
	token_encode(&t1, &p1);
	token_encode(&t2, &p2);
	token_encode(&t3, &p3);
	CHECK_EQ(store_update(s, STORE_TOKENS, "k#00000000", p1, p2), STORE_E_CONFLICT); /* absent */
	CHECK_EQ(store_update(s, STORE_TOKENS, "k#00000000", NULL, p1), 0);		 /* create */
	CHECK_EQ(store_update(s, STORE_TOKENS, "k#00000000", NULL, p2), STORE_E_CONFLICT); /* exists */
	CHECK_EQ(store_update(s, STORE_TOKENS, "k#00000000", p2, p3), STORE_E_CONFLICT);  /* stale */
	check_access(s, "k#00000000", "one");
	CHECK_EQ(store_update(s, STORE_TOKENS, "k#00000000", p1, p2), 0);
	check_access(s, "k#00000000", "two");
	secret_free(p1);
	secret_free(p2);
	secret_free(p3);
	store_close(s);
	secret_free(key);
}

static void test_master_key_file(void)
{
	const char *dir = subdir("masterkey");
	struct secret *k1 = NULL, *k2 = NULL;
	char err[512], path[600];
	struct stat st;
	FILE *f;

	TEST("master key: created 0600 once, reloaded, hex accepted, open modes refused");
	unsetenv("CREDENTIALS_DIRECTORY");
	CHECK_EQ(store_load_master_key(dir, &k1, err, sizeof(err)), 0);
	snprintf(path, sizeof(path), "%s/master.key", dir);
	CHECK(stat(path, &st) == 0);
	CHECK_EQ(st.st_mode & 0777, 0600);
	CHECK_EQ(st.st_size, STORE_KEY_LEN);
	CHECK_EQ(store_load_master_key(dir, &k2, err, sizeof(err)), 0);
	CHECK(secret_equal(k1, k2));
	secret_free(k2);

	CHECK(chmod(path, 0644) == 0);
	CHECK_EQ(store_load_master_key(dir, &k2, err, sizeof(err)), -EACCES);
	CHECK(strstr(err, "master.key") != NULL);

	/* systemd credential, as hex with a newline. */
	{
		char cred[512], hex[2 * STORE_KEY_LEN + 1], cpath[600];

		snprintf(cred, sizeof(cred), "%s/creds", root);
		mkdir(cred, 0700);
		snprintf(cpath, sizeof(cpath), "%s/master-key", cred);
		sodium_bin2hex(hex, sizeof(hex), k1->data, k1->len);
		f = fopen(cpath, "w");
		fprintf(f, "%s\n", hex);
		fclose(f);
		setenv("CREDENTIALS_DIRECTORY", cred, 1);
		CHECK_EQ(store_load_master_key(dir, &k2, err, sizeof(err)), 0);
		CHECK(secret_equal(k1, k2));
		secret_free(k2);
		f = fopen(cpath, "w");
		fprintf(f, "not a key\n");
		fclose(f);
		CHECK_EQ(store_load_master_key(dir, &k2, err, sizeof(err)), -EINVAL);
		unlink(cpath);
		CHECK_EQ(store_load_master_key(dir, &k2, err, sizeof(err)), -ENOENT);
		CHECK(strstr(err, "master-key") != NULL);
		unsetenv("CREDENTIALS_DIRECTORY");
	}
	secret_free(k1);
}

/* ---- processes ---- */

static pid_t spawn_tool(int *out_fd, const char *dir, const char *cmd, const char *arg)
{
	const char *argv[] = { tool, dir, cmd, arg, NULL };
	posix_spawn_file_actions_t fa;
	int pipefd[2];
	pid_t pid;

	CHECK(pipe2(pipefd, O_CLOEXEC) == 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
	CHECK_EQ(posix_spawn(&pid, tool, &fa, NULL, (char **)argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	*out_fd = pipefd[0];
	return pid;
}

/* Reads whole lines from fd until n lines came or EOF; returns the last number seen. */
static long read_acks(FILE *f, int n, long last)
{
	char line[64];

	for (int i = 0; i < n && fgets(line, sizeof(line), f); i++)
		last = atol(line);
	return last;
}

static void test_kill_writer_loop(void)
{
	const char *dir = subdir("killloop");
	struct secret *key = NULL;
	char err[512];
	long committed[50];
	unsigned seed = (unsigned)time(NULL);

	TEST("writer killed with SIGKILL mid put loop, 50 times: every committed record intact");
	printf("# seed %u\n", seed);
	srand(seed);
	CHECK_EQ(store_load_master_key(dir, &key, err, sizeof(err)), 0);
	for (int it = 0; it < 50; it++) {
		char prefix[32];
		int fd, status;
		FILE *f;
		pid_t pid;

		snprintf(prefix, sizeof(prefix), "it%d", it);
		pid = spawn_tool(&fd, dir, "putloop", prefix);
		f = fdopen(fd, "r");
		/* Let it commit a random number of records, then kill it at a random moment. */
		committed[it] = read_acks(f, 1 + rand() % 12, -1);
		usleep((useconds_t)(rand() % 3000));
		kill(pid, SIGKILL);
		CHECK(waitpid(pid, &status, 0) == pid);
		CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
		/* Acks printed before the kill but not yet read are commits too. */
		committed[it] = read_acks(f, 1 << 20, committed[it]);
		fclose(f);
		CHECK(committed[it] >= 0);
	}

	{
		struct store *s = open_ok(dir, key);
		struct counted c;
		long total = 0;

		for (int it = 0; it < 50; it++) {
			for (long i = 0; i <= committed[it]; i++) {
				char k[32], access[64];

				snprintf(k, sizeof(k), "it%d-%ld", it, i);
				snprintf(access, sizeof(access), "loop-access-%ld", i);
				struct token t;

				if (get_token(s, k, &t) != 0)
					fprintf(stderr, "missing %s (run %d acknowledged up to %ld)\n", k, it, committed[it]);
				token_clear(&t);
				check_access(s, k, access);
			}
			total += committed[it] + 1;
		}
		c = count(s, STORE_TOKENS);
		CHECK_EQ(c.corrupt, 0);
		/* At most one record per run may have committed after its last ack. */
		CHECK(c.ok >= total && c.ok <= total + 50);
		printf("# %ld acknowledged records intact, %d present\n", total, c.ok);
		store_close(s);
	}
	secret_free(key);
}

static void counter_child(const char *dir, const struct secret *key, int id, int rounds)
{
	struct store *s = open_ok(dir, key);

	for (int i = 0; i < rounds; i++) {
		char own[32], access[32];

		for (;;) {
			struct secret *cur = NULL, *next = NULL;
			struct token t, n = { 0 };
			int r;

			CHECK_EQ(store_get(s, STORE_TOKENS, "counter#00000000", &cur), 0);
			CHECK_EQ(token_decode(secret_from(cur->data, cur->len), &t), 0);
			snprintf(access, sizeof(access), "%ld", atol(t.access_token) + 1);
			token_clear(&t);
			n.access_token = access;
			CHECK_EQ(token_encode(&n, &next), 0);
			r = store_update(s, STORE_TOKENS, "counter#00000000", cur, next);
			secret_free(cur);
			secret_free(next);
			if (r == 0)
				break;
			CHECK_EQ(r, STORE_E_CONFLICT);
		}
		snprintf(own, sizeof(own), "w%d-%d", id, i);
		put_token(s, own, own, "r");
	}
	store_close(s);
	_exit(0);
}

static void test_two_writers(void)
{
	const char *dir = subdir("twowriters");
	struct secret *key = random_key();
	struct store *s = open_ok(dir, key);
	struct token t;
	pid_t pids[2];
	const int rounds = 150;

	TEST("two processes writing at once: no lost update, no lost record");
	{
		struct token zero = { .access_token = "0" };
		struct secret *p = NULL;

		token_encode(&zero, &p);
		CHECK_EQ(store_put(s, STORE_TOKENS, "counter#00000000", p), 0);
		secret_free(p);
	}
	store_close(s);
	for (int i = 0; i < 2; i++) {
		pids[i] = fork();
		CHECK(pids[i] >= 0);
		if (pids[i] == 0)
			counter_child(dir, key, i, rounds);
	}
	for (int i = 0; i < 2; i++) {
		int status;

		CHECK(waitpid(pids[i], &status, 0) == pids[i]);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	s = open_ok(dir, key);
	CHECK_EQ(get_token(s, "counter#00000000", &t), 0);
	CHECK_EQ(atol(t.access_token), 2 * rounds);
	token_clear(&t);
	CHECK_EQ(count(s, STORE_TOKENS).ok, 2 * rounds + 1);
	store_close(s);
	secret_free(key);
}

static void wait_holding(int fd)
{
	char line[32] = "";
	FILE *f = fdopen(fd, "r");

	CHECK(f != NULL);
	CHECK(fgets(line, sizeof(line), f) != NULL);
	CHECK(strcmp(line, "holding\n") == 0);
	fclose(f);
}

static void test_peer_dies_inside(void)
{
	const char *dir = subdir("peerdies");
	struct secret *key = NULL;
	struct store *s;
	char err[512];
	int fd, status;
	pid_t pid;
	struct token t;

	TEST("a second process killed inside a transaction: the first recovers and loses nothing");
	CHECK_EQ(store_load_master_key(dir, &key, err, sizeof(err)), 0);
	s = open_ok(dir, key);
	for (int i = 0; i < 10; i++) {
		char k[32];

		snprintf(k, sizeof(k), "keep-%d", i);
		put_token(s, k, k, "r");
	}

	/* Case 1: the dead process still holds write locks; we trip over them. */
	pid = spawn_tool(&fd, dir, "hold", "keep-3");
	wait_holding(fd);
	kill(pid, SIGKILL);
	CHECK(waitpid(pid, &status, 0) == pid);
	check_access(s, "keep-3", "keep-3");
	put_token(s, "keep-3", "keep-3b", "r");
	check_access(s, "keep-3", "keep-3b");
	printf("# reopened %u time(s) after the holder died\n", store_reopen_count(s));

	/* Case 2: a third opener runs recovery under us; our next call reopens. */
	{
		unsigned before = store_reopen_count(s);
		int lfd;
		FILE *f;
		char line[256];
		int lines = 0;

		pid = spawn_tool(&fd, dir, "hold", "other-key");
		wait_holding(fd);
		kill(pid, SIGKILL);
		CHECK(waitpid(pid, &status, 0) == pid);
		pid = spawn_tool(&lfd, dir, "list", NULL);
		f = fdopen(lfd, "r");
		while (fgets(line, sizeof(line), f))
			lines++;
		fclose(f);
		CHECK(waitpid(pid, &status, 0) == pid);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		CHECK_EQ(lines, 10);
		for (int i = 0; i < 10; i++) {
			char k[32];

			snprintf(k, sizeof(k), "keep-%d", i);
			check_access(s, k, i == 3 ? "keep-3b" : k);
		}
		CHECK(store_reopen_count(s) > before);
		CHECK_EQ(get_token(s, "other-key", &t), STORE_E_NOT_FOUND);
	}
	CHECK_EQ(count(s, STORE_TOKENS).ok, 10);
	store_close(s);
	secret_free(key);
}

/* A state directory of uid 65534 that a process of that uid can reach. */
static void make_nobodys(const char *dir)
{
	CHECK(mkdir(dir, 0700) == 0);
	CHECK(chown(dir, 65534, 65534) == 0);
	CHECK(chmod(root, 0755) == 0);
}

static void test_root_switches_to_owner(void)
{
	const char *dir = subdir("owned");
	struct secret *key = random_key();
	struct stat st;
	struct dirent *de;
	DIR *d;
	pid_t pid;
	int status;

	TEST("root opening another user's state directory becomes that user");
	if (test_needs_root(NULL)) {
		secret_free(key);
		return;
	}
	make_nobodys(dir);
	pid = fork();
	if (pid == 0) {
		struct store *s = open_ok(dir, key);

		CHECK(geteuid() == 65534);
		put_token(s, "x#00000000", "x", "y");
		store_close(s);
		_exit(0);
	}
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	d = opendir(dir);
	while ((de = readdir(d))) {
		char path[1024];

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		CHECK(lstat(path, &st) == 0);
		if (st.st_uid != 65534)
			fprintf(stderr, "%s is owned by %u\n", path, (unsigned)st.st_uid);
		CHECK_EQ(st.st_uid, 65534);
	}
	closedir(d);
	CHECK(chmod(root, 0700) == 0);
	secret_free(key);
}

/* The key store.c derived from the directory's device and inode before the
 * key moved into store.shmkey: anyone could compute it and squat on it. */
static long old_shm_key(const char *dir)
{
	static const char ctx[] = "mcpkeeper store shm key v1";
	unsigned char in[sizeof(ctx) + 2 * sizeof(uint64_t)], h[8];
	struct stat st;
	uint64_t dev, ino;
	uint32_t v;

	CHECK_EQ(stat(dir, &st), 0);
	dev = st.st_dev;
	ino = st.st_ino;
	memcpy(in, ctx, sizeof(ctx));
	memcpy(in + sizeof(ctx), &dev, sizeof(dev));
	memcpy(in + sizeof(ctx) + sizeof(dev), &ino, sizeof(ino));
	crypto_generichash(h, sizeof(h), in, sizeof(in), NULL, 0);
	memcpy(&v, h, sizeof(v));
	return 0x10000L + (long)(v % ((0x7fff0000L - 0x10000L) / 32L)) * 32L;
}

static void test_shm_key_file(void)
{
	char *a = subdir("shm-a"), *b = subdir("shm-b"), path[600];
	struct stat st;
	long ka, kb;
	int fd;

	TEST("each state directory keeps its own random shm key in a 0600 file");
	CHECK_EQ(mkdir(a, 0700), 0);
	CHECK_EQ(mkdir(b, 0700), 0);
	ka = store_shm_key(a);
	kb = store_shm_key(b);
	CHECK(ka > 0 && kb > 0);
	CHECK(ka != kb);
	CHECK(ka != old_shm_key(a));
	CHECK_EQ(store_shm_key(a), ka);
	snprintf(path, sizeof(path), "%s/store.shmkey", a);
	CHECK_EQ(lstat(path, &st), 0);
	CHECK(S_ISREG(st.st_mode));
	CHECK_EQ(st.st_mode & 07777, 0600);

	/* A damaged key file is an error, not a silent new key. */
	snprintf(path, sizeof(path), "%s/store.shmkey", b);
	CHECK_EQ(unlink(path), 0);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	CHECK(fd >= 0);
	CHECK_EQ(write(fd, "junk\n", 5), 5);
	close(fd);
	CHECK_EQ(store_shm_key(b), -EINVAL);
}

/* A segment at key made by uid 65533 (someone else), 0600: its id. */
static int squat(long key)
{
	int pfd[2], id = -1, status;
	pid_t pid;

	CHECK_EQ(pipe(pfd), 0);
	pid = fork();
	if (pid == 0) {
		close(pfd[0]);
		if (setgid(65533) < 0 || setuid(65533) < 0)
			_exit(2);
		id = shmget((key_t)key, 4096, IPC_CREAT | IPC_EXCL | 0600);
		_exit(write(pfd[1], &id, sizeof(id)) == sizeof(id) ? 0 : 3);
	}
	close(pfd[1]);
	CHECK_EQ(read(pfd[0], &id, sizeof(id)), (ssize_t)sizeof(id));
	close(pfd[0]);
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(id >= 0);
	return id;
}

/* In a child (which becomes the owner of dir): opens the store; with
 * squatted set, expects the refusal that names the squatter. */
static void open_as_owner(const char *dir, const struct secret *key, bool squatted)
{
	pid_t pid;
	int status;

	pid = fork();
	if (pid == 0) {
		struct store *s = NULL;
		char err[512] = "";

		if (!squatted) {
			s = open_ok(dir, key);
			put_token(s, "one", "access-1", "refresh-1");
			check_access(s, "one", "access-1");
			store_close(s);
			_exit(0);
		}
		CHECK(store_open(dir, key, &s, err, sizeof(err)) != 0);
		fprintf(stderr, "squatted key: %s\n", err);
		CHECK(strstr(err, "owned by uid 65533 (another user)") != NULL);
		CHECK(strstr(err, "ipcrm -M 0x") != NULL);
		_exit(0);
	}
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_shm_key_squatted(void)
{
	const char *dir = subdir("shm-owned");
	struct secret *key;
	int id;

	TEST("another user's segment at the store's shm key");
	if (test_needs_root(NULL))
		return;
	key = random_key();
	make_nobodys(dir);
	/* At the key the device and inode gave: the store opens all the same. */
	id = squat(old_shm_key(dir));
	open_as_owner(dir, key, false);
	CHECK_EQ(shmctl(id, IPC_RMID, NULL), 0);
	/* At the key in store.shmkey (someone who learnt it): a clear refusal. */
	id = squat(store_shm_key(dir));
	open_as_owner(dir, key, true);
	CHECK_EQ(shmctl(id, IPC_RMID, NULL), 0);
	open_as_owner(dir, key, false);
	CHECK(chmod(root, 0700) == 0);
	secret_free(key);
}

int main(int argc, char **argv)
{
	log_init("test-store");
	CHECK(argc == 2);
	tool = argv[1];
	CHECK(sodium_init() >= 0);
	CHECK(mkdtemp(root) != NULL);

	test_server_key();
	test_round_trip();
	test_token_times();
	test_token_size();
	test_exact_delete();
	test_list_batches();
	test_wrong_key();
	test_tamper();
	test_no_clear_bytes();
	test_update();
	test_master_key_file();
	test_two_writers();
	test_peer_dies_inside();
	test_kill_writer_loop();
	test_root_switches_to_owner();
	test_shm_key_file();
	test_shm_key_squatted();

	rm_rf(root);
	printf("all store tests passed\n");
	return 0;
}
