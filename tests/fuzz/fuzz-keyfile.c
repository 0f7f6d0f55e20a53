/*
 * Fuzz target for common/keyfile.c: an exported master key as mcpctl key
 * import reads it (KEYFILE_MAX bytes at most), opened with the passphrase
 * "fuzz" (the sealed seed's).
 *
 * KDF limits within bounds but above libsodium's INTERACTIVE ones are
 * lowered to the minimum before the call, so that one input cannot take
 * seconds; limits out of bounds reach keyfile_open() as they are. What opens
 * must read back the same from its clear form, and seal and open again to
 * the same key; what does not open must leave the key wiped.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "fuzz.h"
#include "keyfile.h"
#include "secret.h"

#define OFF_OPS 10
#define OFF_MEM 18

static uint64_t get_be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static bool wiped(const struct secret *s)
{
	for (size_t i = 0; i < s->len; i++)
		if (s->data[i])
			return false;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct secret *key, *again, *pass;
	uint8_t buf[KEYFILE_MAX], sealed[KEYFILE_SEALED_LEN];
	char plain[KEYFILE_PLAIN_LEN + 1];
	int r;

	if (!key) {
		if (sodium_init() < 0)
			abort();
		key = secret_new(32);
		again = secret_new(32);
		pass = secret_from("fuzz", 4);
		if (!key || !again || !pass)
			abort();
	}
	if (size > KEYFILE_MAX)
		size = KEYFILE_MAX;
	memcpy(buf, data, size);
	if (keyfile_kind(buf, size) == KEYFILE_SEALED) {
		uint64_t ops = get_be64(buf + OFF_OPS), mem = get_be64(buf + OFF_MEM);

		if (ops <= crypto_pwhash_OPSLIMIT_SENSITIVE && mem <= crypto_pwhash_MEMLIMIT_SENSITIVE &&
		    (ops > crypto_pwhash_OPSLIMIT_INTERACTIVE || mem > crypto_pwhash_MEMLIMIT_INTERACTIVE)) {
			put_be64(buf + OFF_OPS, crypto_pwhash_OPSLIMIT_MIN);
			put_be64(buf + OFF_MEM, crypto_pwhash_MEMLIMIT_MIN);
		}
	}
	memset(key->data, 0xa5, key->len);
	r = keyfile_open(buf, size, pass, key);
	if (r != 0) {
		if (r != KEYFILE_E_FORMAT && r != KEYFILE_E_PASSPHRASE && r != -ENOMEM)
			abort();
		if (!wiped(key))
			abort();
		return 0;
	}
	keyfile_plain(key, plain);
	if (keyfile_open((const uint8_t *)plain, KEYFILE_PLAIN_LEN, NULL, again) != 0 || !secret_equal(key, again))
		abort();
	if (keyfile_kind(buf, size) == KEYFILE_PLAIN && strncasecmp(plain, (const char *)buf, 64) != 0)
		abort();
	if (keyfile_seal(key, pass, crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_MEMLIMIT_MIN, sealed) != 0 ||
	    keyfile_open(sealed, sizeof(sealed), pass, again) != 0 || !secret_equal(key, again))
		abort();
	return 0;
}
