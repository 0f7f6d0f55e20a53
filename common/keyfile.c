/*
 * The exported master key's two forms (keyfile.h): sealing with a
 * passphrase, and reading either form back. No I/O: mcpctl reads and
 * writes the files (ctl/key.c), tests and the fuzz target call these
 * directly.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <sodium.h>

#include "keyfile.h"
#include "secret.h"
#include "util.h"

#define KEY_LEN crypto_aead_xchacha20poly1305_ietf_KEYBYTES
#define KDF_ARGON2ID13 1

#define OFF_VERSION 8
#define OFF_KDF 9
#define OFF_OPS 10
#define OFF_MEM 18
#define OFF_SALT 26
#define OFF_NONCE (OFF_SALT + crypto_pwhash_SALTBYTES)
#define OFF_CIPHER (OFF_NONCE + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES)

_Static_assert(OFF_CIPHER + KEY_LEN + crypto_aead_xchacha20poly1305_ietf_ABYTES == KEYFILE_SEALED_LEN,
	       "the sealed key file's layout");
_Static_assert(sizeof(KEYFILE_MAGIC) == KEYFILE_MAGIC_LEN, "the magic and its NUL");

static void put_be64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static uint64_t get_be64(const unsigned char *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static bool all_hex(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f') || (p[i] >= 'A' && p[i] <= 'F')))
			return false;
	return true;
}

enum keyfile_kind keyfile_kind(const unsigned char *buf, size_t len)
{
	if (len == KEYFILE_SEALED_LEN && memcmp(buf, KEYFILE_MAGIC, KEYFILE_MAGIC_LEN) == 0)
		return KEYFILE_SEALED;
	if ((len == 2 * KEY_LEN || (len == KEYFILE_PLAIN_LEN && buf[len - 1] == '\n')) && all_hex(buf, 2 * KEY_LEN))
		return KEYFILE_PLAIN;
	return 0;
}

/* The passphrase's key for the secretbox, from the salt and limits in hdr. */
static int derive(struct secret *out, const struct secret *pass, const unsigned char *hdr)
{
	if (crypto_pwhash(out->data, out->len, (const char *)pass->data, pass->len, hdr + OFF_SALT,
			  get_be64(hdr + OFF_OPS), (size_t)get_be64(hdr + OFF_MEM), crypto_pwhash_ALG_ARGON2ID13) != 0)
		return -ENOMEM;
	return 0;
}

int keyfile_seal(const struct secret *key, const struct secret *pass, unsigned long long opslimit,
		 size_t memlimit, unsigned char *out)
{
	_cleanup_(secret_freep) struct secret *wrap = NULL;
	unsigned long long clen;
	int r;

	if (key->len != KEY_LEN || pass->len == 0)
		return -EINVAL;
	wrap = secret_new(KEY_LEN);
	if (!wrap)
		return -ENOMEM;
	memcpy(out, KEYFILE_MAGIC, KEYFILE_MAGIC_LEN);
	out[OFF_VERSION] = KEYFILE_VERSION;
	out[OFF_KDF] = KDF_ARGON2ID13;
	put_be64(out + OFF_OPS, opslimit);
	put_be64(out + OFF_MEM, memlimit);
	randombytes_buf(out + OFF_SALT, crypto_pwhash_SALTBYTES);
	randombytes_buf(out + OFF_NONCE, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
	r = derive(wrap, pass, out);
	if (r < 0)
		return r;
	crypto_aead_xchacha20poly1305_ietf_encrypt(out + OFF_CIPHER, &clen, key->data, KEY_LEN, out, OFF_CIPHER,
						   NULL, out + OFF_NONCE, wrap->data);
	return 0;
}

void keyfile_plain(const struct secret *key, char *out)
{
	sodium_bin2hex(out, KEYFILE_PLAIN_LEN, key->data, KEY_LEN);
	out[KEYFILE_PLAIN_LEN - 1] = '\n';
	out[KEYFILE_PLAIN_LEN] = '\0';
}

static int open_sealed(const unsigned char *buf, const struct secret *pass, struct secret *key)
{
	_cleanup_(secret_freep) struct secret *wrap = NULL;
	uint64_t ops = get_be64(buf + OFF_OPS), mem = get_be64(buf + OFF_MEM);
	unsigned long long mlen;
	int r;

	if (buf[OFF_VERSION] != KEYFILE_VERSION || buf[OFF_KDF] != KDF_ARGON2ID13 ||
	    ops < crypto_pwhash_OPSLIMIT_MIN || ops > crypto_pwhash_OPSLIMIT_SENSITIVE ||
	    mem < crypto_pwhash_MEMLIMIT_MIN || mem > crypto_pwhash_MEMLIMIT_SENSITIVE)
		return KEYFILE_E_FORMAT;
	if (!pass || pass->len == 0)
		return KEYFILE_E_PASSPHRASE;
	wrap = secret_new(KEY_LEN);
	if (!wrap)
		return -ENOMEM;
	r = derive(wrap, pass, buf);
	if (r < 0)
		return r;
	if (crypto_aead_xchacha20poly1305_ietf_decrypt(key->data, &mlen, NULL, buf + OFF_CIPHER,
						       KEYFILE_SEALED_LEN - OFF_CIPHER, buf, OFF_CIPHER,
						       buf + OFF_NONCE, wrap->data) != 0 ||
	    mlen != KEY_LEN)
		return KEYFILE_E_PASSPHRASE;
	return 0;
}

int keyfile_open(const unsigned char *buf, size_t len, const struct secret *pass, struct secret *key)
{
	size_t bin_len = 0;
	int r = KEYFILE_E_FORMAT;

	if (key->len != KEY_LEN)
		return -EINVAL;
	switch (keyfile_kind(buf, len)) {
	case KEYFILE_SEALED:
		r = open_sealed(buf, pass, key);
		break;
	case KEYFILE_PLAIN:
		r = sodium_hex2bin(key->data, KEY_LEN, (const char *)buf, 2 * KEY_LEN, NULL, &bin_len, NULL) == 0 &&
				    bin_len == KEY_LEN
			    ? 0
			    : KEYFILE_E_FORMAT;
		break;
	}
	if (r)
		sodium_memzero(key->data, key->len);
	return r;
}
