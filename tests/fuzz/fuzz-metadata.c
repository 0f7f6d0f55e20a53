/*
 * Fuzz target for the oauth child's reading of metadata documents
 * (daemon/oauth/discover.c, included here for its static functions): RFC
 * 9728 protected resource metadata and RFC 8414 / OpenID Connect
 * authorization server metadata, each as it arrives: a finished transfer
 * handed to discover_fetched(), which parses the body and checks it.
 * Untrusted network input.
 *
 * The input's first byte picks the phase (bit 0: protected resource or
 * authorization server metadata), whether the 401's challenge named a scope
 * (bit 1) and the HTTP status (bits 2-4); the rest is the body. The MCP
 * server is https://mcp.example.com/mcp, the expected issuer
 * https://auth.example.com/tenant1 (the seeds use both).
 *
 * Promises checked (abort() when broken): a document ends the step with one
 * message to the keeper, or (a usable protected resource metadata
 * document) moves it to the authorization server phase with candidate URLs
 * and an issuer that url_check() accepts; a result names an authorization
 * and a token endpoint that url_check() accepts, and the issuer and
 * resource are visible ASCII; an error is an error.
 */
#include "../../daemon/oauth/discover.c"

#include "fuzz.h"
#include "oauth-harness.h"

#define MCP_URL "https://mcp.example.com/mcp"
#define ISSUER "https://auth.example.com/tenant1"

static const long statuses[] = { 200, 200, 200, 200, 200, 404, 500, 429 };

static void fail(const char *what)
{
	fuzz_fail("fuzz-metadata", what);
}

static void check_url(struct json_object *result, const char *key, bool required)
{
	struct json_object *v;
	char why[512];

	if (!json_object_object_get_ex(result, key, &v)) {
		if (required)
			fail("a result without a required endpoint");
		return;
	}
	if (!json_object_is_type(v, json_type_string) ||
	    url_check(json_object_get_string(v), NULL, why, sizeof(why)) < 0)
		fail("a result with an endpoint url_check() refuses");
}

static void check_reply(struct rpc_msg *m, void *arg)
{
	struct json_object *v;

	(void)arg;
	if (m->type == RPC_ERROR)
		return;
	if (m->type != RPC_RESULT)
		fail("the keeper got neither a result nor an error");
	check_url(m->result, PARAM_KEY_AUTHORIZATION_ENDPOINT, true);
	check_url(m->result, PARAM_KEY_TOKEN_ENDPOINT, true);
	check_url(m->result, PARAM_KEY_REGISTRATION_ENDPOINT, false);
	check_url(m->result, PARAM_KEY_REVOCATION_ENDPOINT, false);
	if (json_object_object_get_ex(m->result, PARAM_KEY_SCOPE, &v) &&
	    (!json_object_is_type(v, json_type_string) || !scope_list(json_object_get_string(v))))
		fail("a result with a scope that is not a scope list");
}

static struct step *step_for(struct oauth *o, uint8_t how)
{
	struct step *s = xcalloc(1, sizeof(*s));

	s->o = o;
	s->what = "discovery";
	s->id = json_object_new_int(1);
	s->server = xstrdup("fuzz");
	s->timeout_ms = 1000;
	s->protocol = "streamable-http";
	s->challenge = xcalloc(1, sizeof(*s->challenge));
	if (how & 2)
		snprintf(s->challenge->scope, sizeof(s->challenge->scope), "files:read files:write");
	s->result = json_object_new_object();
	s->mcp = url_parse(MCP_URL);
	s->mcp_url = xstrdup(MCP_URL);
	if (!s->mcp)
		fail("the MCP URL does not parse");
	if (how & 1) {
		/* As discover_prm() leaves it for the second phase. */
		CURLU *issuer = url_parse(ISSUER);

		s->phase = DISCOVER_AS;
		s->issuer = xstrdup(ISSUER);
		json_object_object_add(s->result, PARAM_KEY_RESOURCE, json_object_new_string(MCP_URL));
		json_object_object_add(s->result, PARAM_KEY_ISSUER, json_object_new_string(ISSUER));
		discover_as_urls(s, issuer);
		curl_url_cleanup(issuer);
	} else {
		s->phase = DISCOVER_PRM;
		s->urls[0] = xstrdup("https://mcp.example.com/.well-known/oauth-protected-resource/mcp");
		s->n_urls = 1;
		s->own_urls = true;
	}
	step_link(s);
	return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct oauth *o = fuzz_oauth();
	struct step *s;
	struct fetch *f;
	size_t sent;
	char why[512];

	if (size < 1)
		return 0;
	s = step_for(o, data[0]);
	/* The transfer as it ends: a fetch of the step's first candidate. */
	f = step_fetch(s, "the metadata", s->urls[s->next_url++], discover_fetched);
	f->result = CURLE_OK;
	f->status = statuses[(data[0] >> 2) % ARRAY_SIZE(statuses)];
	if (buf_add(&f->body, data + 1, size - 1) < 0)
		fail("out of memory");
	discover_fetched(f, s);

	sent = fuzz_oauth_drain(check_reply, NULL);
	if (sent > 1)
		fail("more than one message to the keeper");
	if (sent == 0) {
		/* Still running: the next candidate, or the second phase. */
		s = o->steps;
		if (!s || s->next || !s->fetch)
			fail("a step that neither answered nor fetches");
		if (s->phase == DISCOVER_AS && (!s->issuer || url_check(s->issuer, NULL, why, sizeof(why)) < 0))
			fail("the second phase with an issuer url_check() refuses");
	} else if (o->steps) {
		fail("a step that answered is still linked");
	}
	while (o->steps)
		step_free(o->steps);
	return 0;
}
