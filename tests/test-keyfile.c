/*
 * keyfile.c: the exported master key's two forms. Sealing and opening
 * round trips, every byte of a sealed file changed, KDF limits out of
 * bounds refused before any work, sizes of neither form, the clear form.
 * The KDF runs at libsodium's minimum limits here, except where a case
 * checks the exporter's.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include <sodium.h>

#include "keyfile.h"
#include "secret.h"
#include "test.h"

#define OPS crypto_pwhash_OPSLIMIT_MIN
#define MEM crypto_pwhash_MEMLIMIT_MIN

static struct secret *pass_of(const char *s)
{
	struct secret *p = secret_from(s, strlen(s));

	CHECK(p);
	return p;
}

static void put_be64(unsigned char *p, unsigned long long v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static bool all_zero(const struct secret *s)
{
	for (size_t i = 0; i < s->len; i++)
		if (s->data[i])
			return false;
	return true;
}

int main(void)
{
	struct secret *key = secret_new(32), *out = secret_new(32), *pass = pass_of("a passphrase");
	struct secret *other = pass_of("another one"), *empty = secret_new(0);
	unsigned char sealed[KEYFILE_SEALED_LEN], copy[KEYFILE_MAX + 1];
	char plain[KEYFILE_PLAIN_LEN + 1];

	CHECK(sodium_init() >= 0);
	CHECK(key && out && empty);
	randombytes_buf(key->data, key->len);

	TEST("sealed: round trip");
	CHECK_EQ(keyfile_seal(key, pass, OPS, MEM, sealed), 0);
	CHECK(memcmp(sealed, "MCPKKEY\0", 8) == 0);
	CHECK_EQ(sealed[8], KEYFILE_VERSION);
	CHECK(memmem(sealed, sizeof(sealed), key->data, 8) == NULL);
	CHECK_EQ(keyfile_kind(sealed, sizeof(sealed)), KEYFILE_SEALED);
	CHECK_EQ(keyfile_open(sealed, sizeof(sealed), pass, out), 0);
	CHECK(secret_equal(key, out));

	TEST("sealed: a fresh salt and nonce each time");
	CHECK_EQ(keyfile_seal(key, pass, OPS, MEM, copy), 0);
	CHECK(memcmp(copy, sealed, sizeof(sealed)) != 0);

	TEST("sealed: the wrong passphrase, none, an empty one");
	CHECK_EQ(keyfile_open(sealed, sizeof(sealed), other, out), KEYFILE_E_PASSPHRASE);
	CHECK(all_zero(out));
	CHECK_EQ(keyfile_open(sealed, sizeof(sealed), NULL, out), KEYFILE_E_PASSPHRASE);
	CHECK_EQ(keyfile_open(sealed, sizeof(sealed), empty, out), KEYFILE_E_PASSPHRASE);
	CHECK_EQ(keyfile_seal(key, empty, OPS, MEM, copy), -EINVAL);

	TEST("sealed: every byte changed is refused");
	for (size_t i = 0; i < sizeof(sealed); i++) {
		int r;

		memcpy(copy, sealed, sizeof(sealed));
		copy[i] ^= 0x01;
		r = keyfile_open(copy, sizeof(sealed), pass, out);
		CHECK(r == KEYFILE_E_FORMAT || r == KEYFILE_E_PASSPHRASE);
		/* The magic, the version and the KDF are read as a format. */
		if (i < 10)
			CHECK_EQ(r, KEYFILE_E_FORMAT);
		CHECK(all_zero(out));
	}

	TEST("sealed: KDF limits out of bounds, refused before any work");
	memcpy(copy, sealed, sizeof(sealed));
	put_be64(copy + 18, (unsigned long long)crypto_pwhash_MEMLIMIT_SENSITIVE + 1);
	CHECK_EQ(keyfile_open(copy, sizeof(sealed), pass, out), KEYFILE_E_FORMAT);
	put_be64(copy + 18, 1ULL << 62);
	CHECK_EQ(keyfile_open(copy, sizeof(sealed), pass, out), KEYFILE_E_FORMAT);
	put_be64(copy + 18, MEM);
	put_be64(copy + 10, (unsigned long long)crypto_pwhash_OPSLIMIT_SENSITIVE + 1);
	CHECK_EQ(keyfile_open(copy, sizeof(sealed), pass, out), KEYFILE_E_FORMAT);
	put_be64(copy + 10, 0);
	CHECK_EQ(keyfile_open(copy, sizeof(sealed), pass, out), KEYFILE_E_FORMAT);

	TEST("sealed: the exporter's limits (MODERATE) open");
	CHECK_EQ(keyfile_seal(key, pass, crypto_pwhash_OPSLIMIT_MODERATE, crypto_pwhash_MEMLIMIT_MODERATE, copy), 0);
	CHECK_EQ(keyfile_open(copy, sizeof(sealed), pass, out), 0);
	CHECK(secret_equal(key, out));

	TEST("sizes of neither form");
	memset(copy, 'a', sizeof(copy));
	memcpy(copy, sealed, sizeof(sealed));
	for (size_t n = 0; n <= KEYFILE_MAX; n++) {
		if (n == KEYFILE_SEALED_LEN || n == 64)
			continue;
		CHECK_EQ(keyfile_kind(copy, n), 0);
		CHECK_EQ(keyfile_open(copy, n, pass, out), KEYFILE_E_FORMAT);
	}

	TEST("clear: 64 hex digits, with or without a newline, either case");
	keyfile_plain(key, plain);
	CHECK_EQ(strlen(plain), KEYFILE_PLAIN_LEN);
	CHECK_EQ(plain[64], '\n');
	CHECK_EQ(keyfile_kind((unsigned char *)plain, 65), KEYFILE_PLAIN);
	CHECK_EQ(keyfile_open((unsigned char *)plain, 65, NULL, out), 0);
	CHECK(secret_equal(key, out));
	CHECK_EQ(keyfile_open((unsigned char *)plain, 64, NULL, out), 0);
	CHECK(secret_equal(key, out));
	for (int i = 0; i < 64; i++)
		if (plain[i] >= 'a')
			plain[i] = (char)(plain[i] - 'a' + 'A');
	CHECK_EQ(keyfile_open((unsigned char *)plain, 65, NULL, out), 0);
	CHECK(secret_equal(key, out));

	TEST("clear: anything else is refused");
	keyfile_plain(key, plain);
	plain[10] = 'g';
	CHECK_EQ(keyfile_open((unsigned char *)plain, 65, NULL, out), KEYFILE_E_FORMAT);
	CHECK(all_zero(out));
	keyfile_plain(key, plain);
	plain[64] = '\r';
	CHECK_EQ(keyfile_open((unsigned char *)plain, 65, NULL, out), KEYFILE_E_FORMAT);
	CHECK_EQ(keyfile_open((unsigned char *)plain, 63, NULL, out), KEYFILE_E_FORMAT);

	TEST("a key of the wrong size");
	CHECK_EQ(keyfile_open(sealed, sizeof(sealed), pass, empty), -EINVAL);
	CHECK_EQ(keyfile_seal(empty, pass, OPS, MEM, copy), -EINVAL);

	secret_free(key);
	secret_free(out);
	secret_free(pass);
	secret_free(other);
	secret_free(empty);
	return 0;
}
