/*
 * WWW-Authenticate parsing (RFC 9110 section 11.6.1): the one place that
 * reads an authentication challenge from the network. The oauth child uses
 * it on the 401 of an MCP server to find the Bearer challenge's
 * resource_metadata (RFC 9728 section 5.1) and scope (RFC 6750 section 3).
 *
 * A field value is a comma-separated list of challenges; each is an
 * auth-scheme, then either a token68 or comma-separated auth-params
 * (name = token / quoted-string), so one line may hold several challenges
 * and commas separate both. challenge_parse() is a pure function: bytes in,
 * the first Bearer challenge's parameters out, nothing allocated.
 *
 * What comes out is safe to pass on: values are unescaped, NUL-terminated,
 * printable ASCII (space included) and at most CHALLENGE_MAX_VALUE bytes. A
 * parameter whose value is longer or holds other bytes counts as absent;
 * an empty value counts as absent too.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Longest field value read at all: a longer one is refused unread. */
#define CHALLENGE_MAX_INPUT 8192
/* Longest parameter value kept. */
#define CHALLENGE_MAX_VALUE 2048

enum {
	CHALLENGE_E_SYNTAX = 1,	/* not a list of challenges */
	CHALLENGE_E_TOO_LONG,	/* over CHALLENGE_MAX_INPUT bytes */
};

struct challenge_bearer {
	bool found;		/* the value holds a Bearer challenge */
	char resource_metadata[CHALLENGE_MAX_VALUE + 1];
	char scope[CHALLENGE_MAX_VALUE + 1];
	char error[CHALLENGE_MAX_VALUE + 1];
};

/*
 * Parses one WWW-Authenticate field value of len bytes (no NUL needed).
 * Returns 0 with *out filled (out->found false when no challenge is
 * Bearer), or CHALLENGE_E_SYNTAX / CHALLENGE_E_TOO_LONG with *out cleared.
 * The scheme matches case-insensitively, and so do parameter names; a
 * parameter repeated within the Bearer challenge is a syntax error. When
 * several Bearer challenges appear, the first one counts.
 */
int challenge_parse(const char *value, size_t len, struct challenge_bearer *out);
