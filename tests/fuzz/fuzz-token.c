/*
 * Fuzz target for common/store/token.c: the decoder of the plain token and client
 * records the store unseals. A sealed record is authenticated before it is
 * decoded, so this input is only hostile if the store file or the master
 * key is; it is still a parser of bytes from disk, and a record written by
 * an older or newer mcpkeeper must decode or be refused cleanly.
 *
 * Each input is decoded as a token and as a client. What decodes must point
 * its strings into its own secret buffer, encode again, decode to the same
 * fields, and encode to the same bytes a second time; anything else is a
 * disagreement between encoder and decoder and abort()s.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "secret.h"
#include "token.h"

static _Noreturn void die(const char *what, const char *field)
{
	fprintf(stderr, "fuzz-token: %s%s%s\n", what, field ? ": " : "", field ? field : "");
	abort();
}

static struct secret *copy_of(const uint8_t *data, size_t size)
{
	struct secret *s = secret_from(data, size);

	if (!s)
		abort();
	return s;
}

/* A decoded string lies, with its NUL, inside the record that owns it. */
static void check_inside(const struct secret *plain, const char *s, const char *field)
{
	const char *begin = (const char *)plain->data;

	if (!s)
		return;
	if (s < begin || s >= begin + plain->len)
		die("a decoded string points outside its record", field);
	if (!memchr(s, '\0', (size_t)(begin + plain->len - s)))
		die("a decoded string runs past its record", field);
}

static void check_same(const char *a, const char *b, const char *field)
{
	if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0))
		die("a string field changed on the round trip", field);
}

/* Encoding is deterministic: encoding the re-decoded record gives the same bytes. */
static void check_stable(const struct secret *first, struct secret *second)
{
	if (!secret_equal(first, second))
		die("encoding is not stable", NULL);
	secret_free(second);
}

#define TOKEN_STRINGS(X)                                                                   \
	X(access_token) X(refresh_token) X(token_type) X(scope) X(token_endpoint)          \
	X(revocation_endpoint) X(resource) X(issuer)

#define CLIENT_STRINGS(X) X(client_id) X(client_secret) X(auth_method) X(issuer)

static void fuzz_token(const uint8_t *data, size_t size)
{
	struct token t, again;
	struct secret *enc = NULL, *enc2 = NULL, *first;
	int r;

	r = token_decode(copy_of(data, size), &t);
	if (r != 0) {
		if (r != -EBADMSG || t.plain || t.access_token)
			die("token_decode() failed without clearing the token", NULL);
		return;
	}
	if (!t.access_token)
		die("a decoded token without an access token", NULL);
#define X(f) check_inside(t.plain, t.f, #f);
	TOKEN_STRINGS(X)
#undef X

	r = token_encode(&t, &enc);
	if (r != 0 || !enc)
		die("token_encode() refused a decoded token", NULL);
	first = copy_of(enc->data, enc->len);
	if (token_decode(enc, &again) != 0)
		die("token_decode() refused what token_encode() wrote", NULL);
#define X(f) check_same(t.f, again.f, #f);
	TOKEN_STRINGS(X)
#undef X
	if (t.obtained_at != again.obtained_at || t.expires_at != again.expires_at ||
	    t.obtained_at_ms != again.obtained_at_ms || t.expires_at_ms != again.expires_at_ms)
		die("an integer field changed on the round trip", NULL);
	if (token_encode(&again, &enc2) != 0)
		die("token_encode() refused a re-decoded token", NULL);
	check_stable(first, enc2);
	secret_free(first);
	token_clear(&again);
	token_clear(&t);
}

static void fuzz_client(const uint8_t *data, size_t size)
{
	struct oauth_client c, again;
	struct secret *enc = NULL, *enc2 = NULL, *first;
	int r;

	r = client_decode(copy_of(data, size), &c);
	if (r != 0) {
		if (r != -EBADMSG || c.plain || c.client_id)
			die("client_decode() failed without clearing the client", NULL);
		return;
	}
	if (!c.client_id)
		die("a decoded client without a client_id", NULL);
#define X(f) check_inside(c.plain, c.f, #f);
	CLIENT_STRINGS(X)
#undef X

	r = client_encode(&c, &enc);
	if (r != 0 || !enc)
		die("client_encode() refused a decoded client", NULL);
	first = copy_of(enc->data, enc->len);
	if (client_decode(enc, &again) != 0)
		die("client_decode() refused what client_encode() wrote", NULL);
#define X(f) check_same(c.f, again.f, #f);
	CLIENT_STRINGS(X)
#undef X
	if (c.registered_at != again.registered_at || c.secret_expires_at != again.secret_expires_at)
		die("an integer field changed on the round trip", NULL);
	if (client_encode(&again, &enc2) != 0)
		die("client_encode() refused a re-decoded client", NULL);
	check_stable(first, enc2);
	secret_free(first);
	client_clear(&again);
	client_clear(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_token(data, size);
	fuzz_client(data, size);
	return 0;
}
