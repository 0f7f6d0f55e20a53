/*
 * Fuzz target for the oauth child's redirect listener
 * (daemon/oauth/authorize.c, included here for its static functions): the
 * query of the browser's request to /callback, parsed and checked in the
 * order that keeps forged answers out (state, iss, error, code) by
 * authorize_redirect(). libevent parsed the request line; the query's
 * bytes are whatever a page in the browser made it send.
 *
 * The input's first byte says whether the authorization server advertised
 * RFC 9207's iss (bit 0); the rest is the query. The login waits with
 * state STATE and issuer ISSUER (the seeds use both). The page goes to a
 * request without a connection, which libevent frees once answered; a
 * login that ended is then finished as login_page_sent() does.
 *
 * Promises checked (abort() when broken): a query without the login's
 * state (as a value, once) never ends the login nor tells the keeper
 * anything; a login that ended tells the keeper exactly one error; a
 * login that goes on to the code exchange has a transfer and no message.
 */
#include "../../daemon/oauth/authorize.c"

#include "fuzz.h"
#include "oauth-harness.h"

#define STATE "fuzzstate0123456789abcdefghijklmnopqrstuvwx"
#define ISSUER "https://auth.example.com/tenant1"

static void fail(const char *what)
{
	fuzz_fail("fuzz-redirect", what);
}

static void check_reply(struct rpc_msg *m, void *arg)
{
	(void)arg;
	if (m->type != RPC_ERROR)
		fail("a login that ended at the redirect told the keeper something other than an error");
}

static struct login *login_for(struct oauth *o, bool iss_supported)
{
	struct login *l = xcalloc(1, sizeof(*l));

	l->o = o;
	l->server = xstrdup("fuzz");
	l->phase = LOGIN_WAITING;
	l->id = json_object_new_int(1);
	l->timeout_ms = 60000;
	l->token_endpoint = xstrdup("https://auth.example.com/tenant1/token");
	l->redirect_uri = xstrdup("http://127.0.0.1:8976/callback");
	l->client_id = xstrdup("client-1");
	l->auth_method = xstrdup("none");
	l->resource = xstrdup("https://mcp.example.com/mcp");
	l->issuer = xstrdup(ISSUER);
	l->iss_supported = iss_supported;
	l->verifier = secret_dup("verifier0123456789abcdefghijklmnopqrstuvwxy");
	l->state = secret_dup(STATE);
	l->timer = evtimer_new(o->base, authorize_deadline_cb, l);
	if (!l->timer)
		fail("out of memory");
	l->next = o->logins;
	if (l->next)
		l->next->pprev = &l->next;
	l->pprev = &o->logins;
	o->logins = l;
	return l;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct oauth *o = fuzz_oauth();
	struct evhttp_request *req;
	struct login *l;
	char *query;
	bool has_state;
	size_t sent;

	if (size < 1)
		return 0;
	query = xstrndup((const char *)data + 1, size - 1);
	has_state = strstr(query, STATE) != NULL;
	l = login_for(o, data[0] & 1);
	req = evhttp_request_new(NULL, NULL);
	if (!req)
		fail("out of memory");
	/* The query may be cut at a NUL, as libevent's would be. */
	authorize_redirect(l, req, query);
	free(query);

	if (l->phase == LOGIN_ANSWERING) {
		/* The page is out: what login_page_sent() does. */
		login_close_listener(l);
		login_send_reply(l);
	}
	sent = fuzz_oauth_drain(check_reply, NULL);
	if (!has_state && (sent || l->phase != LOGIN_WAITING))
		fail("a query without the login's state changed the login");
	if (l->phase == LOGIN_WAITING && (sent || l->n_foreign != 1))
		fail("a foreign request was not counted as one");
	if (l->phase == LOGIN_ANSWERING && sent != 1)
		fail("a login that ended did not tell the keeper once");
	if (l->phase == LOGIN_EXCHANGING && (sent || !l->fetch))
		fail("a code exchange without its transfer");
	login_free(l);
	return 0;
}
