/*
 * Fuzz target for the keeper's reading of its children's messages: a line
 * as it comes off a child's channel (frame_parse_line(), common/frame.c),
 * then the keeper's own readers with their real param tables
 * (daemon/childmsg.c): the oauth child's token response (the result of
 * oauth.refresh, oauth.authorize) and a worker's token.invalid, as
 * refresh.c, login.c and workers.c call them.
 *
 * A child is trusted less than the keeper: whatever it sends, the keeper
 * must refuse it cleanly. Promises checked (abort() when broken): a token
 * result that parses has an access token, an expires_in of 0 (absent) or
 * within TOKEN_EXPIRES_IN_MIN .. MAX, strings that point into the message;
 * a refusal says why in one NUL-terminated line; a token.invalid that
 * parses has an access token and a scope that is a valid scope list or
 * none; both readers are deterministic.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "childmsg.h"
#include "frame.h"
#include "fuzz.h"
#include "log.h"
#include "util.h"

static void fail(const char *what)
{
	fprintf(stderr, "fuzz-childmsg: %s\n", what);
	abort();
}

static void check_token_result(struct json_object *result)
{
	struct token_result a, b;
	char why[256], why2[256];
	int r;

	memset(why, 'x', sizeof(why));
	r = refresh_result_parse(result, "fuzz", &a, why, sizeof(why));
	if (refresh_result_parse(result, "fuzz", &b, why2, sizeof(why2)) != r)
		fail("two parses of the same token result differ");
	if (r != 0) {
		if (r != -EINVAL)
			fail("token result: unknown outcome");
		if (!memchr(why, '\0', sizeof(why)) || strchr(why, '\n') || !why[0])
			fail("token result: a refusal without a one-line reason");
		return;
	}
	if (!a.access_token)
		fail("token result without an access token");
	if (a.expires_in != 0 && (a.expires_in < TOKEN_EXPIRES_IN_MIN || a.expires_in > TOKEN_EXPIRES_IN_MAX))
		fail("expires_in outside its bounds");
	if (a.expires_in != b.expires_in || strcmp(a.access_token, b.access_token) != 0)
		fail("two parses of the same token result differ");
}

static void check_token_invalid(struct json_object *params)
{
	struct token_invalid_params p;

	if (token_invalid_parse(params, &p) != 0)
		return;
	if (!p.access_token)
		fail("token.invalid without an access token");
	if (p.scope && (!*p.scope || !oauth_scope_valid(p.scope)))
		fail("token.invalid with an invalid scope let through");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool quiet;
	struct rpc_msg m = { 0 };
	char detail[256];

	if (!quiet) {
		log_set_level(LOG_LEVEL_ERROR); /* the clamp's warning is expected */
		quiet = true;
	}
	if (frame_parse_line((const char *)data, size, &m, detail, sizeof(detail)) != 0) {
		rpc_msg_clear(&m);
		return 0;
	}
	/* As the keeper reads them: a result for oauth.refresh, params of a
	 * request for token.invalid; and either part as the other, since a
	 * confused child may send anything where. */
	if (m.type == RPC_RESULT)
		check_token_result(m.result);
	if (m.params) {
		check_token_invalid(m.params);
		check_token_result(m.params);
	}
	if (m.type == RPC_RESULT)
		check_token_invalid(m.result);
	rpc_msg_clear(&m);
	return 0;
}
