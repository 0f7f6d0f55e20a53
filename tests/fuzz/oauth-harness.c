/*
 * The oauth child's context for its fuzz targets (oauth-harness.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <sodium.h>

#include "curlev.h"
#include "frame.h"
#include "log.h"
#include "oauth-harness.h"
#include "oauth.h"
#include "proto.h"

static struct oauth the_oauth = { .chan.exit_code = -1 };
static int keeper_fd = -1;

_Noreturn void fuzz_fail(const char *name, const char *what)
{
	fprintf(stderr, "%s: %s\n", name, what);
	abort();
}

/* The loop never runs, so the keeper never talks and no transfer ends. */
static void never_dispatch(void *ctx, struct rpc_msg *m)
{
	(void)ctx;
	(void)m;
	fuzz_fail("oauth-harness", "a message from the keeper while the loop never runs");
}

static void never_bug(void *ctx, const char *what, const char *detail)
{
	(void)ctx;
	(void)what;
	(void)detail;
	fuzz_fail("oauth-harness", "a keeper bug while the loop never runs");
}

static const struct channel_ops ops = {
	.dispatch = never_dispatch,
	.bug = never_bug,
};

static void never_done(CURL *easy, CURLcode result, void *arg)
{
	(void)easy;
	(void)result;
	(void)arg;
	fuzz_fail("oauth-harness", "a transfer ended while the loop never runs");
}

struct oauth *fuzz_oauth(void)
{
	struct oauth *o = &the_oauth;
	int sv[2];

	if (o->base)
		return o;
	/* Refusals are the point of fuzzing: their warnings would drown the
	 * output (FUZZ_VERBOSE=1 keeps them). */
	if (!getenv("FUZZ_VERBOSE"))
		log_set_level(LOG_LEVEL_ERROR);
	/* What entry_start() and main() do before the loop. */
	if (sodium_init() < 0)
		fuzz_fail("oauth-harness", "libsodium initialisation failed");
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		fuzz_fail("oauth-harness", "libcurl initialisation failed");
	o->base = event_base_new();
	if (!o->base || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		fuzz_fail("oauth-harness", "no event base or socketpair");
	o->curl = curlev_new(o->base, never_done, o);
	if (!o->curl || channel_open(&o->chan, o->base, sv[0], &ops, o) < 0)
		fuzz_fail("oauth-harness", "cannot set up libcurl or the channel");
	keeper_fd = sv[1];
	return o;
}

size_t fuzz_oauth_drain(void (*check)(struct rpc_msg *m, void *arg), void *arg)
{
	struct evbuffer *out = bufferevent_get_output(the_oauth.chan.bev);
	size_t n = 0;

	/* A socket bufferevent freezes the front of its output: only its own
	 * writes drain it. The loop never runs, so the keeper reads here. */
	evbuffer_unfreeze(out, 1);
	for (;;) {
		struct rpc_msg m = { 0 };
		char detail[256];
		int r = frame_read(out, PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			break;
		if (r != 0)
			fuzz_fail("oauth-harness: the child queued a message the keeper cannot read", detail);
		if (check)
			check(&m, arg);
		rpc_msg_clear(&m);
		n++;
	}
	evbuffer_freeze(out, 1);
	if (evbuffer_get_length(out))
		fuzz_fail("oauth-harness", "the child queued a message without its newline");
	return n;
}
