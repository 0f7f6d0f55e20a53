/*
 * Fuzz target for common/net/challenge.c: the WWW-Authenticate parser the oauth
 * child runs on the 401 of an MCP server (untrusted network input).
 *
 * Promises of challenge.h that abort() when broken: a refusal leaves the
 * result cleared; every value is NUL-terminated, printable ASCII and within
 * CHALLENGE_MAX_VALUE; nothing is set without a Bearer challenge; parsing
 * is deterministic. And a round trip: the values found, written back as a
 * Bearer challenge of quoted-strings (behind another challenge, to exercise
 * the list rule), must parse to the same values.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "challenge.h"
#include "fuzz.h"

static void fail(const char *what)
{
	fprintf(stderr, "fuzz-challenge: %s\n", what);
	abort();
}

static void check_value(const char *v)
{
	size_t n = strnlen(v, CHALLENGE_MAX_VALUE + 1);

	if (n > CHALLENGE_MAX_VALUE)
		fail("value not terminated within the limit");
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e)
			fail("value not printable ASCII");
}

/* Appends name="value" with '"' and '\' escaped. */
static size_t put_param(char *out, size_t off, const char *name, const char *value)
{
	if (!*value)
		return off;
	off += (size_t)sprintf(out + off, ", %s=\"", name);
	for (const char *p = value; *p; p++) {
		if (*p == '"' || *p == '\\')
			out[off++] = '\\';
		out[off++] = *p;
	}
	out[off++] = '"';
	return off;
}

static bool same(const struct challenge_bearer *a, const struct challenge_bearer *b)
{
	return a->found == b->found && strcmp(a->resource_metadata, b->resource_metadata) == 0 &&
	       strcmp(a->scope, b->scope) == 0 && strcmp(a->error, b->error) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct challenge_bearer a, b, c;
	/* Three values, each at worst doubled by escapes, plus the framing. */
	static char rebuilt[6 * CHALLENGE_MAX_VALUE + 256];
	size_t off;
	int r;

	r = challenge_parse((const char *)data, size, &a);
	if (r != 0 && r != CHALLENGE_E_SYNTAX && r != CHALLENGE_E_TOO_LONG)
		fail("unknown outcome");
	if (challenge_parse((const char *)data, size, &b) != r || memcmp(&a, &b, sizeof(a)) != 0)
		fail("two parses of the same input differ");
	check_value(a.resource_metadata);
	check_value(a.scope);
	check_value(a.error);
	if ((r != 0 || !a.found) && (a.found || a.resource_metadata[0] || a.scope[0] || a.error[0]))
		fail("a value without a Bearer challenge");
	if (r != 0 || !a.found)
		return 0;

	off = (size_t)sprintf(rebuilt, "Basic realm=\"x\", Bearer realm=\"y\"");
	off = put_param(rebuilt, off, "resource_metadata", a.resource_metadata);
	off = put_param(rebuilt, off, "scope", a.scope);
	off = put_param(rebuilt, off, "error", a.error);
	if (off > CHALLENGE_MAX_INPUT)
		return 0; /* over the input limit by construction: nothing to compare */
	if (challenge_parse(rebuilt, off, &c) != 0 || !same(&a, &c))
		fail("the values written back as a challenge parse differently");
	return 0;
}
