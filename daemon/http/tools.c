/*
 * GET /api/v1/servers/NAME/tools: what the upstream offers. Like an MCP
 * session (mcp.c) the call asks the keeper to `connect` it to NAME's
 * worker, then runs common/toollist.c's exchange on that connection
 * (initialize, notifications/initialized, tools/list pages) and closes it.
 * The keeper only hands the connection over; what the upstream says is
 * parsed here, in the unprivileged child.
 *
 * The answer is {"success": true, "data": {"server", "tools", "truncated",
 * "skipped"}}, or the REST error shape: 404 for an unknown server, 503 when
 * the keeper cannot connect us (disabled, cannot start) or the server needs
 * a login (kind login_required, the message names `mcpctl auth login`),
 * 502 when the upstream or its worker fails, 504 when it does not answer
 * within TOOLLIST_TIMEOUT_S, 503 busy when TOOLS_CALLS_MAX listings are in
 * progress. Bounded: that timeout for the whole exchange,
 * PROTO_MAX_MESSAGE per message, toollist.h's limits for the listing.
 * Strings from the upstream stay JSON strings; the web UI inserts them as
 * text. What it may touch: its control connections and the requests it
 * holds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <json-c/json.h>

#include "frame.h"
#include "http.h"
#include "log.h"
#include "proto.h"
#include "toollist.h"
#include "util.h"

/* Listings in progress at once: each holds a control connection of the
 * keeper's API_CONTROL_CONNS_MAX for up to TOOLLIST_TIMEOUT_S. */
#define TOOLS_CALLS_MAX 16

struct tools_call {
	struct held held;		/* first: held callbacks cast back */
	LIST_ENTRY(tools_call) link;
	struct http *h;
	struct kcall *kc;		/* connect in progress */
	struct bufferevent *bev;	/* to the worker, once connected */
	struct event *timer;
	struct toollist t;
	char server[SERVER_NAME_MAX + 1];
};

static void tools_free(struct tools_call *tc)
{
	LIST_REMOVE(tc, link);
	tc->h->n_tools_calls--;
	if (tc->kc)
		kcall_cancel(tc->kc);
	if (tc->bev)
		bufferevent_free(tc->bev);
	event_free(tc->timer);
	held_release(&tc->held);
	toollist_clear(&tc->t);
	free(tc);
}

/* Answers with the listing's failure (t.kind, t.error) and ends the call. */
static void tools_failed(struct tools_call *tc, int status)
{
	struct evhttp_request *req = held_release(&tc->held);
	char clean[256];

	http_clean(tc->t.error, clean, sizeof(clean));
	log_info("%s: tools: %s", tc->server, clean);
	if (req)
		http_send_error(req, status, tc->t.kind ? tc->t.kind : KIND_INTERNAL, "%s", tc->t.error);
	tools_free(tc);
}

static int status_of_failure(const char *kind)
{
	if (kind && strcmp(kind, KIND_LOGIN_REQUIRED) == 0)
		return 503;
	return 502;
}

static void worker_read_cb(struct bufferevent *bev, void *arg)
{
	struct tools_call *tc = arg;

	for (;;) {
		struct json_object *out[2];
		struct rpc_msg m;
		char detail[128] = "";
		size_t n = 0;
		int r = frame_read(bufferevent_get_input(bev), PROTO_MAX_MESSAGE, &m, detail, sizeof(detail)), st;

		if (r == FRAME_NEED_MORE)
			return;
		if (r != 0) {
			rpc_msg_clear(&m);
			toollist_fail(&tc->t, KIND_UNAVAILABLE, "the worker of %s sent a malformed message: %s",
				      tc->server, detail[0] ? detail : frame_strerror(r));
			tools_failed(tc, 502);
			return;
		}
		st = toollist_feed(&tc->t, &m, out, &n);
		rpc_msg_clear(&m);
		for (size_t i = 0; i < n; i++) {
			/* An answer to the upstream's request echoes its id: it may not fit. */
			if (st == TOOLLIST_MORE && (r = frame_write(bufferevent_get_output(bev), out[i], PROTO_MAX_MESSAGE))) {
				toollist_fail(&tc->t, KIND_UNAVAILABLE, "a message to %s cannot be sent: %s", tc->server,
					      frame_strerror(r));
				st = TOOLLIST_FAILED;
			}
			json_object_put(out[i]);
		}
		if (st == TOOLLIST_FAILED) {
			tools_failed(tc, status_of_failure(tc->t.kind));
			return;
		}
		if (st == TOOLLIST_DONE) {
			struct evhttp_request *req = held_release(&tc->held);

			if (req) {
				struct json_object *o = json_object_new_object();

				json_object_object_add(o, "success", json_object_new_boolean(1));
				json_object_object_add(o, "data", toollist_result(&tc->t));
				http_send_json(req, 200, o, NULL);
			}
			tools_free(tc);
			return;
		}
	}
}

static void worker_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct tools_call *tc = arg;

	if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
		return;
	toollist_fail(&tc->t, KIND_UNAVAILABLE, "the worker of %s closed the connection before the list came",
		      tc->server);
	tools_failed(tc, 502);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tools_call *tc = arg;

	toollist_fail(&tc->t, KIND_UNAVAILABLE, "%s did not list its tools within %d s", tc->server, TOOLLIST_TIMEOUT_S);
	tools_failed(tc, 504);
}

static void connected(void *arg, struct rpc_msg *reply, const struct kfail *fail)
{
	struct tools_call *tc = arg;
	struct kcall *kc = tc->kc;
	struct evhttp_request *req;
	struct json_object *init;

	tc->kc = NULL;
	if (fail || reply->type == RPC_ERROR) {
		const char *kind = fail ? fail->kind : rpc_error_kind(reply);
		const char *message = fail ? fail->message : rpc_error_message(reply);

		req = held_release(&tc->held);
		if (req)
			http_send_error(req, fail ? fail->status : http_status_for_kind(kind), kind ? kind : KIND_INTERNAL,
					"%s", message ? message : "the keeper refused the connection");
		tools_free(tc);
		return;
	}
	tc->bev = kcall_take(kc);
	bufferevent_setcb(tc->bev, worker_read_cb, NULL, worker_event_cb, tc);
	init = toollist_start(&tc->t, tc->server, "mcpkeeper-http");
	if (bufferevent_enable(tc->bev, EV_READ | EV_WRITE) < 0 ||
	    frame_write(bufferevent_get_output(tc->bev), init, PROTO_MAX_MESSAGE) != 0)
		fatal("cannot start a tools listing");
	json_object_put(init);
	/* Whatever came right behind the reply is the worker's already. */
	worker_read_cb(tc->bev, tc);
}

static void tools_gone(struct held *hd)
{
	struct tools_call *tc = (struct tools_call *)hd;

	log_debug("%s: tools: the client went away before the list came", tc->server);
	tools_free(tc);
}

void tools_handle(struct http *h, struct evhttp_request *req, const char *server)
{
	struct timeval tv = { .tv_sec = TOOLLIST_TIMEOUT_S };
	struct json_object *params;
	struct tools_call *tc;

	if (h->n_tools_calls >= TOOLS_CALLS_MAX) {
		http_send_error(req, 503, KIND_BUSY, "too many tools listings are in progress (at most %d); try again",
				TOOLS_CALLS_MAX);
		return;
	}
	tc = xcalloc(1, sizeof(*tc));
	tc->h = h;
	h->n_tools_calls++;
	params = json_object_new_object();
	snprintf(tc->server, sizeof(tc->server), "%s", server);
	tc->timer = evtimer_new(h->base, timeout_cb, tc);
	if (!tc->timer || evtimer_add(tc->timer, &tv) < 0)
		fatal("out of memory");
	held_init(&tc->held, h, req, tools_gone);
	LIST_INSERT_HEAD(&h->tools_calls, tc, link);
	json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(server));
	tc->kc = kcall_start(h, METHOD_CONNECT, params, TOOLLIST_TIMEOUT_S, connected, tc);
}

void tools_free_all(struct http *h)
{
	while (!LIST_EMPTY(&h->tools_calls))
		tools_free(LIST_FIRST(&h->tools_calls));
}
