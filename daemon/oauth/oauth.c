/*
 * mcpkeeper-oauth: the oauth child. It does all the OAuth HTTP for the
 * keeper (discovery, registration, the login's code exchange, refresh,
 * revocation) and serves the login's loopback redirect, so that the keeper
 * parses no network input.
 *
 * Started by mcpkeeperd (fork+exec) with its channel on fd 3: a hello, then
 * any number of concurrent requests (common/proto.h has the contract). This
 * file holds main, the channel and the dispatch of the keeper's requests;
 * the work is in one file per job: fetch.c (the HTTP plumbing: one libcurl
 * easy handle per request in multi mode on the one libevent loop, bodies
 * capped and wiped), login.c (logins and steps), discover.c, register.c,
 * authorize.c (the redirect listener) and token.c (refresh, code exchange,
 * revocation).
 *
 * What it may touch: fd 3, stderr for logs, the network, and TCP listeners
 * on 127.0.0.1 for login redirects. It holds a refresh token only for the
 * one request it is serving and a login's PKCE verifier, state and code
 * only while that login runs, never the master key or the database; where
 * the kernel offers Landlock it cannot open the state directory at all
 * (read-only access to system paths, no writes; Landlock's network rules
 * are not used, so binding the redirect port is unaffected).
 *
 * Trust: the keeper is a sibling. A message from it that is malformed or
 * unexpected is a keeper bug: log it and exit 1 (the keeper restarts us).
 * Servers and browsers are the network: anything they send ends that one
 * request with an error, and response bodies are never logged, because they
 * may hold tokens. The lifetime belongs to the keeper: termination signals
 * are ignored, and end of stream on fd 3 ends the process.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <sodium.h>

#include "curlev.h"
#include "entry.h"
#include "frame.h"
#include "log.h"
#include "oauth.h"
#include "proto.h"
#include "util.h"

#define CHANNEL_FD CHILD_FD_CHANNEL

/* -- the channel to the keeper -- */

void oauth_send(struct oauth *o, struct json_object *msg)
{
	int r = frame_write(bufferevent_get_output(o->chan.bev), msg, PROTO_MAX_MESSAGE);

	if (r) {
		log_error("cannot queue a reply to the keeper: %s", r < 0 ? strerror(-r) : frame_strerror(r));
		oauth_stop(o, 1);
	}
}

void keeper_bug(struct oauth *o, const char *what, const char *detail)
{
	log_error("keeper sent %s%s%s; exiting", what, detail ? ": " : "", detail ? detail : "");
	oauth_stop(o, 1);
}

/* -- libcurl multi on the libevent loop (common/net/curlev.c) -- */

static void oauth_transfer_done(CURL *easy, CURLcode result, void *arg)
{
	struct oauth *o = arg;
	struct fetch *f;
	char *priv = NULL;

	curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
	f = (struct fetch *)priv;
	f->result = result;
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &f->status);
	/* While exiting nobody is answered; main frees every owner. */
	if (o->chan.exit_code < 0)
		f->done(f, f->arg);
	else
		curl_multi_remove_handle(curlev_multi(o->curl), easy);
}

/* -- messages from the keeper -- */

static const struct entry oauth_entry = {
	.program = "mcpkeeper-oauth",
	.role = ROLE_OAUTH,
};

/* The oauth child's hello has no params of its own: the sandbox is in
 * place since main(), before any thread existed. */
static void oauth_hello(struct oauth *o, struct rpc_msg *m)
{
	if (entry_hello_check(&oauth_entry, &o->chan, m) != 0)
		return;
	entry_hello_reply(&o->chan, m, o->landlock, NULL);
	o->hello_done = true;
	log_debug("hello: protocol version %d, Landlock %s", PROTO_VERSION, o->landlock);
}

static void oauth_dispatch(struct oauth *o, struct rpc_msg *m)
{
	static const struct {
		const char *method;
		void (*fn)(struct oauth *o, struct rpc_msg *m);
	} requests[] = {
		{ METHOD_OAUTH_REFRESH, token_refresh },       { METHOD_OAUTH_LISTEN, authorize_listen },
		{ METHOD_OAUTH_DISCOVER, discover_start },     { METHOD_OAUTH_REGISTER, register_start },
		{ METHOD_OAUTH_AUTHORIZE, authorize_start },   { METHOD_OAUTH_REVOKE, token_revoke },
	};

	if (!o->hello_done) {
		oauth_hello(o, m);
		return;
	}
	if (m->type == RPC_NOTIFICATION && strcmp(m->method, METHOD_OAUTH_CANCEL) == 0) {
		authorize_cancel(o, m);
		return;
	}
	if (m->type != RPC_REQUEST) {
		keeper_bug(o, m->type == RPC_NOTIFICATION ? "an unknown notification" : "a reply to no request",
			   m->type == RPC_NOTIFICATION ? m->method : NULL);
		return;
	}
	for (size_t i = 0; i < ARRAY_SIZE(requests); i++) {
		if (strcmp(m->method, requests[i].method) == 0) {
			const char *bad = NULL;

			if (policy_note(o, m, &bad) < 0) {
				keeper_bug(o, "a request with a bad address policy", bad);
				return;
			}
			requests[i].fn(o, m);
			return;
		}
	}
	keeper_bug(o, "an unknown method", m->method);
}

static void channel_dispatch(void *ctx, struct rpc_msg *m)
{
	oauth_dispatch(ctx, m);
}

static void channel_bug(void *ctx, const char *what, const char *detail)
{
	keeper_bug(ctx, what, detail);
}

static const struct channel_ops channel_ops = {
	.dispatch = channel_dispatch,
	.bug = channel_bug,
};

void oauth_stop(struct oauth *o, int code)
{
	channel_stop(&o->chan, code);
}

/* -- start-up -- */

int main(int argc, char **argv)
{
	struct oauth o = { .chan.exit_code = -1 };

	entry_start(&oauth_entry, argc, argv);
	/* Landlock before any thread exists (curl's resolver makes them): they
	 * inherit it. System paths and CA certificates only; TCP bind and
	 * connect stay allowed (the ruleset handles file access). */
	if (entry_sandbox(NULL, o.landlock, sizeof(o.landlock)) < 0)
		fatal("cannot apply the Landlock sandbox: %s", o.landlock);

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		fatal("libcurl initialisation failed");

	o.base = event_base_new();
	if (!o.base)
		fatal("out of memory");
	o.curl = curlev_new(o.base, oauth_transfer_done, &o);
	if (!o.curl)
		fatal("out of memory");
	if (channel_open(&o.chan, o.base, CHANNEL_FD, &channel_ops, &o) < 0)
		fatal("cannot watch fd %d", CHANNEL_FD);

	event_base_dispatch(o.base);

	while (o.refreshes)
		refresh_free(o.refreshes);
	login_free_all(&o);
	policy_free_all(&o);
	curlev_free(o.curl);
	curl_global_cleanup();
	channel_close(&o.chan);
	event_base_free(o.base);
	return o.chan.exit_code < 0 ? 0 : o.chan.exit_code;
}
