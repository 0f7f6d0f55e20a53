/*
 * The keeper's readers of what its children send that need no store: the
 * param tables of the oauth child's token response and of a worker's
 * token.invalid, with the checks that follow each table. Split from
 * refresh.c and workers.c so that tests/fuzz/fuzz-childmsg.c compiles the
 * same readers without the store (the link rule).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;

/* The token response of oauth.refresh and oauth.authorize (proto.h); the
 * strings are borrowed from the result. An expires_in outside
 * TOKEN_EXPIRES_IN_MIN .. TOKEN_EXPIRES_IN_MAX is clamped into it, with a
 * warning naming server, so that now + expires_in cannot overflow. 0, or
 * -EINVAL with why saying which field is wrong. */
#define TOKEN_EXPIRES_IN_MIN 1
#define TOKEN_EXPIRES_IN_MAX (365 * 24 * 3600)
struct token_result {
	const char *access_token;
	const char *token_type;		/* NULL: not given */
	const char *refresh_token;	/* NULL: not given */
	const char *scope;		/* NULL: not given */
	int64_t expires_in;		/* 0: not given, else within the bounds above */
};
int refresh_result_parse(struct json_object *result, const char *server, struct token_result *tr, char *why,
			 size_t len);

/* token.invalid {access_token, scope?, scope_union?} from a worker (proto.h):
 * 0, or -EPROTO for a message that breaks the protocol (a worker bug). The
 * strings are borrowed from params. */
struct token_invalid_params {
	const char *access_token, *scope;
	bool scope_union;
};
int token_invalid_parse(struct json_object *params, struct token_invalid_params *p);
