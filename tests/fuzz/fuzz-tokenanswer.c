/*
 * Fuzz target for the oauth child's reading of a token endpoint's answer
 * (daemon/oauth/token.c, included here for its static functions): the
 * verdict on a finished transfer that both the refresh and the code
 * exchange use (RFC 6749 5.1 and 5.2), and the reply to the keeper built
 * from it. Untrusted network input: the provider's status and body.
 *
 * The input's first byte picks the HTTP status (and whether the transfer
 * ended in a network error), the rest is the body. Promises checked
 * (abort() when broken): a verdict is a result or a kind, never both or
 * neither; a result carries an access token of visible ASCII no longer than
 * PROTO_MAX_TOKEN, a token_type, an integer expires_in when there is one,
 * and the HTTP status; the message is one line and never holds the access
 * or refresh token of the body; the reply the keeper gets is one message
 * its frame reader accepts and that refresh_result_parse()'s table would
 * see as the same token; both verdicts of the same input agree.
 */
#include "../../daemon/oauth/token.c"

#include "fuzz.h"
#include "oauth-harness.h"

static const long statuses[] = { 200, 201, 204, 299, 302, 400, 401, 403, 404, 429, 500, 503, 100, 0 };

static void fail(const char *what)
{
	fuzz_fail("fuzz-tokenanswer", what);
}

/* Whether the body's field key is a string that contains s. */
static bool field_holds(struct json_object *body, const char *key, const char *s)
{
	struct json_object *v;

	return json_object_object_get_ex(body, key, &v) && json_object_is_type(v, json_type_string) &&
	       strstr(json_object_get_string(v), s);
}

/* The body's token strings must not show up in the message, unless the
 * provider itself put them into the fields the message quotes (its error
 * and error_description, shown by design). */
static void check_secret_absent(struct json_object *body, const char *key, const char *message)
{
	struct json_object *v;
	const char *s;

	if (!body || !json_object_object_get_ex(body, key, &v) || !json_object_is_type(v, json_type_string))
		return;
	s = json_object_get_string(v);
	/* A token as short as an error word could appear by coincidence. */
	if (strlen(s) >= 12 && strstr(message, s) && !field_holds(body, "error", s) &&
	    !field_holds(body, "error_description", s))
		fail("the message holds a token from the body");
}

static void check_result(struct json_object *result)
{
	struct json_object *v;

	if (!json_object_object_get_ex(result, PARAM_KEY_ACCESS_TOKEN, &v) || !vschar_string(v, false) ||
	    json_object_get_string_len(v) > PROTO_MAX_TOKEN)
		fail("a result without a usable access token");
	if (!json_object_object_get_ex(result, PARAM_KEY_TOKEN_TYPE, &v) || !vschar_string(v, false))
		fail("a result without a token_type");
	if (json_object_object_get_ex(result, PARAM_KEY_EXPIRES_IN, &v) && !json_object_is_type(v, json_type_int))
		fail("a result whose expires_in is not an integer");
	if (json_object_object_get_ex(result, PARAM_KEY_REFRESH_TOKEN, &v) &&
	    (!vschar_string(v, false) || json_object_get_string_len(v) > PROTO_MAX_TOKEN))
		fail("a result with an unusable refresh token");
	if (!json_object_object_get_ex(result, PARAM_KEY_HTTP_STATUS, &v) || !json_object_is_type(v, json_type_int))
		fail("a result without the HTTP status");
}

struct expect {
	bool success;
	size_t seen;
};

static void check_reply(struct rpc_msg *m, void *arg)
{
	struct expect *e = arg;

	e->seen++;
	/* A result too large for the channel goes out as an error instead. */
	if (m->type == RPC_ERROR && !e->success)
		return;
	if (m->type == RPC_ERROR && strcmp(rpc_error_message(m), "token response too large") == 0)
		return;
	if (!e->success || m->type != RPC_RESULT)
		fail("the keeper got a reply of the wrong type");
	check_result(m->result);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct oauth *o = fuzz_oauth();
	struct fetch f = { .o = o };
	struct token_verdict v, again;
	struct refresh *r;
	struct expect e = { 0 };

	if (size < 1)
		return 0;
	f.status = statuses[data[0] % ARRAY_SIZE(statuses)];
	f.result = data[0] >= 0xf0 ? CURLE_OPERATION_TIMEDOUT : data[0] >= 0xe0 ? CURLE_RECV_ERROR : CURLE_OK;
	if (f.result != CURLE_OK)
		f.status = 0;
	if (buf_add(&f.body, data + 1, size - 1) < 0)
		fail("out of memory");

	token_verdict(&f, &v);
	token_verdict(&f, &again);
	if ((v.result != NULL) == (v.kind != NULL))
		fail("a verdict must be a result or a kind");
	if ((again.result != NULL) != (v.result != NULL) || (v.kind && strcmp(v.kind, again.kind) != 0) ||
	    strcmp(v.message, again.message) != 0)
		fail("two verdicts on the same answer differ");
	if (v.kind && strcmp(v.kind, KIND_TRANSIENT) != 0 && strcmp(v.kind, KIND_TERMINAL) != 0)
		fail("a verdict of an unknown kind");
	if (!memchr(v.message, '\0', sizeof(v.message)) || strchr(v.message, '\n'))
		fail("the message is not one line");
	if (v.kind && !v.message[0])
		fail("a failure without a message");
	check_secret_absent(v.body, "access_token", v.message);
	check_secret_absent(v.body, "refresh_token", v.message);
	if (v.result)
		check_result(v.result);
	e.success = v.result != NULL;
	token_verdict_clear(&again);
	token_verdict_clear(&v);

	/* The reply to the keeper, as a refresh's transfer ends. */
	r = xcalloc(1, sizeof(*r));
	r->o = o;
	r->id = json_object_new_int(1);
	r->server = xstrdup("fuzz");
	refresh_done(&f, r);
	if (fuzz_oauth_drain(check_reply, &e) != 1)
		fail("the keeper did not get exactly one reply");
	buf_wipe(&f.body);
	return 0;
}
