/*
 * store-tool: puts tokens into a state directory through the real store API,
 * for tests (until login exists, this is how a test gives the keeper a token)
 * and for the crash tests, which kill it on purpose.
 *
 *   store-tool DIR put-token NAME URL ACCESS REFRESH LIFETIME_SEC [TOKEN_ENDPOINT]
 *                                                ACCESS "-": read the access and the refresh
 *                                                token from two lines of stdin (kept off argv)
 *   store-tool DIR check-token NAME URL ACCESS   exit 0 when the access token matches
 *   store-tool DIR list                          key, status, expiry, whether a refresh
 *                                                token and a refresh intent are there
 *   store-tool DIR shm-key                       the environment's base System V shm key
 *   store-tool DIR delete KEY
 *   store-tool DIR putloop PREFIX                put PREFIX-0, PREFIX-1 ... forever,
 *                                                printing each index once committed
 *   store-tool DIR hold KEY                      write KEY in a transaction, print
 *                                                "holding", never commit (raw Berkeley DB)
 *   store-tool DIR put-many FILE                 one token per line, tab-separated:
 *       NAME URL ACCESS REFRESH OBTAINED_AT EXPIRES_AT TOKEN_ENDPOINT
 *       (unix seconds; REFRESH or TOKEN_ENDPOINT "-" for none); prints the count
 *
 * It prints no token bytes: check-token compares inside the tool.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <db.h>
#include <sodium.h>

#include "log.h"
#include "secret.h"
#include "store.h"
#include "token.h"

static struct store *open_store(const char *dir)
{
	struct secret *key = NULL;
	struct store *s = NULL;
	char err[512];
	int r;

	r = store_load_master_key(dir, &key, err, sizeof(err));
	if (r)
		fatal("%s", err);
	r = store_open(dir, key, &s, err, sizeof(err));
	secret_free(key);
	if (r)
		fatal("%s", err);
	return s;
}

static int put_token(struct store *s, const char *key, const char *access, const char *refresh,
		     long lifetime, const char *endpoint)
{
	struct secret *plain = NULL;
	time_t now = time(NULL);
	struct token t = {
		.access_token = access,
		.refresh_token = refresh && *refresh ? refresh : NULL,
		.token_type = "Bearer",
		.token_endpoint = endpoint,
		.obtained_at = now,
		.expires_at = lifetime ? now + lifetime : 0,
	};
	int r;

	r = token_encode(&t, &plain);
	if (r)
		return r;
	r = store_put(s, STORE_TOKENS, key, plain);
	secret_free(plain);
	return r;
}

static int list_one(const char *key, const struct secret *plain, int status, void *ctx)
{
	struct token t;
	struct secret *copy;

	if (status) {
		printf("%s %s\n", key, "corrupt");
		return 0;
	}
	copy = secret_from(plain->data, plain->len);
	if (!copy || token_decode(copy, &t) < 0) {
		printf("%s undecodable\n", key);
		return 0;
	}
	printf("%s ok expires_at=%lld refresh=%s intent=%s\n", key, (long long)t.expires_at,
	       t.refresh_token ? "yes" : "no", t.intent_at_ms ? "yes" : "no");
	token_clear(&t);
	return 0;
}

/* put-many: each line through store_put, as put-token does, with given times. */
static int put_many(struct store *s, const char *file)
{
	FILE *f = strcmp(file, "-") == 0 ? stdin : fopen(file, "r");
	char *line = NULL;
	size_t cap = 0;
	long n = 0, lineno = 0;
	int r = 0;

	if (!f)
		fatal("%s: %m", file);
	while (getline(&line, &cap, f) >= 0) {
		char *field[7], *save = NULL, *p = line, key[STORE_SERVER_KEY_MAX];
		struct secret *plain = NULL;
		struct token t = { 0 };
		int nf = 0;

		lineno++;
		line[strcspn(line, "\r\n")] = '\0';
		if (!*line)
			continue;
		for (char *tok; nf < 7 && (tok = strtok_r(p, "\t", &save)); p = NULL)
			field[nf++] = tok;
		if (nf != 7 || strtok_r(NULL, "\t", &save))
			fatal("%s:%ld: expected 7 tab-separated fields", file, lineno);
		if (store_server_key(field[0], field[1], key, sizeof(key)))
			fatal("%s:%ld: server name too long", file, lineno);
		t.access_token = field[2];
		t.refresh_token = strcmp(field[3], "-") ? field[3] : NULL;
		t.token_type = "Bearer";
		t.obtained_at = atoll(field[4]);
		t.expires_at = atoll(field[5]);
		t.token_endpoint = strcmp(field[6], "-") ? field[6] : NULL;
		r = token_encode(&t, &plain);
		if (r == 0)
			r = store_put(s, STORE_TOKENS, key, plain);
		secret_free(plain);
		if (r) {
			fprintf(stderr, "store-tool: %s:%ld: %s\n", file, lineno, store_strerror(r));
			break;
		}
		n++;
	}
	if (line)
		sodium_memzero(line, cap);
	free(line);
	if (f != stdin)
		fclose(f);
	if (r == 0)
		printf("%ld\n", n);
	return r;
}

/* Dies inside a write transaction on purpose, the way a crashed peer would. */
static int hold(const char *dir, const char *key)
{
	DB_ENV *env;
	DB *db;
	DB_TXN *txn;
	DBT k = { 0 }, v = { 0 };
	int ret;

	char lock[4096];
	int fd;

	/* As store.h says of store_shm_key(); the lock goes when we die. */
	snprintf(lock, sizeof(lock), "%s/store.lock", dir);
	fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || flock(fd, LOCK_SH) < 0)
		fatal("hold: %s: %s", lock, strerror(errno));
	ret = db_env_create(&env, 0);
	/* Should this open run recovery, the regions it creates must match the store's. */
	if (!ret)
		ret = env->set_thread_count(env, 256);
	if (!ret)
		ret = env->set_shm_key(env, store_shm_key(dir));
	if (!ret)
		ret = env->open(env, dir,
				DB_CREATE | DB_INIT_TXN | DB_INIT_LOG | DB_INIT_LOCK | DB_INIT_MPOOL | DB_RECOVER |
					DB_REGISTER | DB_SYSTEM_MEM,
				0600);
	if (!ret)
		ret = db_create(&db, env, 0);
	if (!ret)
		ret = db->open(db, NULL, "tokens.db", NULL, DB_BTREE, DB_CREATE | DB_AUTO_COMMIT, 0600);
	if (!ret)
		ret = env->txn_begin(env, NULL, &txn, 0);
	if (!ret) {
		k.data = (void *)key;
		k.size = (u_int32_t)strlen(key);
		v.data = "uncommitted";
		v.size = 11;
		ret = db->put(db, txn, &k, &v, 0);
	}
	if (ret)
		fatal("hold: %s", db_strerror(ret));
	printf("holding\n");
	fflush(stdout);
	for (;;)
		pause();
}

int main(int argc, char **argv)
{
	char key[STORE_SERVER_KEY_MAX];
	struct store *s;
	const char *dir, *cmd;
	int r = 0;

	log_init("store-tool");
	if (argc < 3) {
		fprintf(stderr, "usage: store-tool DIR put-token|check-token|list|delete|putloop|hold ...\n");
		return 2;
	}
	dir = argv[1];
	cmd = argv[2];

	if (strcmp(cmd, "hold") == 0 && argc == 4)
		return hold(dir, argv[3]);
	if (strcmp(cmd, "shm-key") == 0 && argc == 3) {
		long k = store_shm_key(dir);

		if (k < 0)
			fatal("shm-key: %s: %s", dir, strerror((int)-k));
		printf("0x%08lx\n", k);
		return 0;
	}

	s = open_store(dir);
	if (strcmp(cmd, "put-token") == 0 && (argc == 8 || argc == 9)) {
		if (store_server_key(argv[3], argv[4], key, sizeof(key)))
			fatal("server name too long");
		if (strcmp(argv[5], "-") == 0) {
			char access[4096], refresh[4096];

			if (!fgets(access, sizeof(access), stdin) || !fgets(refresh, sizeof(refresh), stdin))
				fatal("put-token: expected the access and the refresh token on two lines of stdin");
			access[strcspn(access, "\n")] = '\0';
			refresh[strcspn(refresh, "\n")] = '\0';
			r = put_token(s, key, access, refresh, atol(argv[7]), argc == 9 ? argv[8] : NULL);
			explicit_bzero(access, sizeof(access));
			explicit_bzero(refresh, sizeof(refresh));
		} else {
			r = put_token(s, key, argv[5], argv[6], atol(argv[7]), argc == 9 ? argv[8] : NULL);
		}
		if (r == 0)
			printf("%s\n", key);
	} else if (strcmp(cmd, "check-token") == 0 && argc == 6) {
		struct secret *plain = NULL;
		struct token t;

		if (store_server_key(argv[3], argv[4], key, sizeof(key)))
			fatal("server name too long");
		r = store_get(s, STORE_TOKENS, key, &plain);
		if (r == 0) {
			r = token_decode(plain, &t);
			if (r == 0) {
				r = strcmp(t.access_token, argv[5]) == 0 ? 0 : 1;
				printf("%s\n", r ? "mismatch" : "match");
				token_clear(&t);
			}
		}
	} else if (strcmp(cmd, "list") == 0 && argc == 3) {
		r = store_list(s, STORE_TOKENS, list_one, NULL);
	} else if (strcmp(cmd, "delete") == 0 && argc == 4) {
		r = store_delete(s, STORE_TOKENS, argv[3]);
	} else if (strcmp(cmd, "put-many") == 0 && argc == 4) {
		r = put_many(s, argv[3]);
	} else if (strcmp(cmd, "putloop") == 0 && argc == 4) {
		setvbuf(stdout, NULL, _IOLBF, 0);
		for (long i = 0;; i++) {
			char access[64];

			snprintf(key, sizeof(key), "%s-%ld", argv[3], i);
			snprintf(access, sizeof(access), "loop-access-%ld", i);
			r = put_token(s, key, access, "loop-refresh", 3600, NULL);
			if (r)
				break;
			printf("%ld\n", i);
		}
	} else {
		fprintf(stderr, "store-tool: bad command or arguments\n");
		store_close(s);
		return 2;
	}
	store_close(s);
	if (r && r != 1)
		fprintf(stderr, "store-tool: %s: %s\n", cmd, store_strerror(r));
	return r == 0 ? 0 : 1;
}
