/*
 * The keeper's readers of its children's answers that need no store (see
 * childmsg.h): each a param table and the checks after it. What may touch:
 * nothing but the message it is given and the log.
 */
#include <errno.h>
#include <stdio.h>

#include "childmsg.h"
#include "log.h"
#include "params.h"
#include "proto.h"
#include "util.h"

static const struct param_spec token_result_spec[] = {
	PARAM_STRING(struct token_result, access_token, PARAM_KEY_ACCESS_TOKEN, PARAM_REQUIRED),
	PARAM_STRING(struct token_result, token_type, PARAM_KEY_TOKEN_TYPE, 0),
	PARAM_STRING(struct token_result, refresh_token, PARAM_KEY_REFRESH_TOKEN, 0),
	PARAM_STRING(struct token_result, scope, PARAM_KEY_SCOPE, 0),
	PARAM_INT(struct token_result, expires_in, PARAM_KEY_EXPIRES_IN, 0, 0, 0),
};

/* What expires_in holds while the response has none. */
#define EXPIRES_IN_ABSENT INT64_MIN

int refresh_result_parse(struct json_object *result, const char *server, struct token_result *tr, char *why,
			 size_t len)
{
	const char *bad;
	char what[160];
	int64_t given;

	*tr = (struct token_result){ .expires_in = EXPIRES_IN_ABSENT };
	if (params_parse(result, token_result_spec, ARRAY_SIZE(token_result_spec), tr, &bad) == 0) {
		given = tr->expires_in;
		if (given == EXPIRES_IN_ABSENT) {
			tr->expires_in = 0;
			return 0;
		}
		tr->expires_in = given < TOKEN_EXPIRES_IN_MIN	? TOKEN_EXPIRES_IN_MIN
				 : given > TOKEN_EXPIRES_IN_MAX ? TOKEN_EXPIRES_IN_MAX
								: given;
		if (tr->expires_in != given)
			log_warn("%s: the token endpoint gave expires_in %lld s, outside 1 s .. 1 year; using %lld s",
				 server, (long long)given, (long long)tr->expires_in);
		return 0;
	}
	tr->expires_in = 0;
	snprintf(why, len, "the oauth child's token response: %s",
		 params_strerror(token_result_spec, ARRAY_SIZE(token_result_spec), bad, what, sizeof(what)));
	return -EINVAL;
}

static const struct param_spec token_invalid_spec[] = {
	PARAM_STRING(struct token_invalid_params, access_token, PARAM_KEY_ACCESS_TOKEN, PARAM_REQUIRED),
	PARAM_STRING(struct token_invalid_params, scope, PARAM_KEY_SCOPE, PARAM_NONEMPTY),
	PARAM_BOOL(struct token_invalid_params, scope_union, PARAM_KEY_SCOPE_UNION, 0),
};

int token_invalid_parse(struct json_object *params, struct token_invalid_params *p)
{
	const char *bad;

	*p = (struct token_invalid_params){ 0 };
	if (params_parse(params, token_invalid_spec, ARRAY_SIZE(token_invalid_spec), p, &bad) < 0)
		return -EPROTO;
	if (p->scope && !oauth_scope_valid(p->scope))
		return -EPROTO;
	return 0;
}
