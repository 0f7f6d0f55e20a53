/*
 * An exported master key (mcpctl key export / import): the 32-byte key
 * sealed with a passphrase, or in clear as 64 hex digits and a newline (for
 * `systemd-creds encrypt`, which seals it to the host).
 *
 * The sealed form, KEYFILE_SEALED_LEN bytes, integers big-endian:
 *
 *   "MCPKKEY\0"   8   magic
 *   version       1   KEYFILE_VERSION
 *   kdf           1   1: Argon2id v1.3 (crypto_pwhash_ALG_ARGON2ID13)
 *   opslimit      8   the KDF's limits as the exporter chose them
 *   memlimit      8   (bytes)
 *   salt         16   crypto_pwhash_SALTBYTES
 *   nonce        24   XChaCha20-Poly1305 (IETF)
 *   ciphertext   48   the key and the 16-byte tag; the 66 bytes before it
 *                     are its associated data, so no header field can be
 *                     changed without the file failing to open
 *
 * Readers take at most KEYFILE_MAX bytes; a file the size of neither form
 * is refused before any work, and so are KDF limits outside libsodium's
 * minimum and its SENSITIVE limits (a crafted file cannot ask for more
 * than 1 GiB or hours of work).
 */
#pragma once

#include <stddef.h>

struct secret;

#define KEYFILE_MAX 4096
#define KEYFILE_VERSION 1
#define KEYFILE_MAGIC "MCPKKEY"	/* and its NUL: 8 bytes */
#define KEYFILE_MAGIC_LEN 8
#define KEYFILE_SEALED_LEN 114
#define KEYFILE_PLAIN_LEN 65	/* 64 hex digits and "\n" */

/* Outcomes (positive) of keyfile_open(). */
enum {
	KEYFILE_E_FORMAT = 1,	/* neither form, a version or KDF we do not know, bad limits */
	KEYFILE_E_PASSPHRASE,	/* the passphrase does not open it (or the file was altered) */
};

enum keyfile_kind {
	KEYFILE_SEALED = 1,
	KEYFILE_PLAIN,
};

/* Which form buf holds, or 0 when it is neither: the magic and the size
 * for the sealed form, 64 hex digits (and an optional newline) for the
 * clear one. */
enum keyfile_kind keyfile_kind(const unsigned char *buf, size_t len);

/*
 * Seals key (STORE_KEY_LEN bytes) with pass into out (KEYFILE_SEALED_LEN
 * bytes), with Argon2id at the given limits. Returns 0, -EINVAL (empty
 * passphrase, bad key length) or -ENOMEM (the KDF's memory).
 */
int keyfile_seal(const struct secret *key, const struct secret *pass, unsigned long long opslimit,
		 size_t memlimit, unsigned char *out);

/* The clear form of key into out (KEYFILE_PLAIN_LEN + 1 bytes, NUL-terminated). */
void keyfile_plain(const struct secret *key, char *out);

/*
 * Reads buf (len bytes, either form) into key (a secret of 32 bytes). pass
 * is needed for the sealed form only (NULL: KEYFILE_E_PASSPHRASE). Returns
 * 0, KEYFILE_E_FORMAT, KEYFILE_E_PASSPHRASE, or -ENOMEM. key is wiped on
 * every failure.
 */
int keyfile_open(const unsigned char *buf, size_t len, const struct secret *pass, struct secret *key);
