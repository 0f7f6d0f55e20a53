/*
 * GET /events: the keeper's events as Server-Sent Events.
 *
 * One control connection stays subscribed (events.subscribe) for as long
 * as the child runs, and is asked for again, with backoff, when it drops.
 * Each notification `event` {type, data, timestamp, timestamp_unix} goes to
 * every client as "event: TYPE" and "data: {"payload": DATA, "timestamp":
 * T}", the same DATA, T the event's Unix seconds (the shape mcpproxy's UI
 * reads); a ping every HTTP_PING_S seconds keeps idle streams honest.
 *
 * No event is dropped silently: a client that lets more than
 * HTTP_STREAM_OUTPUT_MAX bytes pile up is disconnected with a log line
 * (it reconnects and reloads the state), and the loss of the subscription
 * itself is logged. The number of clients is capped.
 *
 * What it may touch: the subscription's control connection (taken over
 * from control.c) and its clients' streams. The keeper's notifications are
 * checked before they are passed on: anything else ends the subscription
 * (logged), never the child, and it is asked for again.
 */
#include <errno.h>
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
#include "params.h"
#include "proto.h"
#include "timefmt.h"
#include "util.h"

#define SUBSCRIBE_TIMEOUT_S 30
#define RESUBSCRIBE_MIN_MS 1000
#define RESUBSCRIBE_MAX_MS 30000
#define EVENT_TYPE_MAX 64

struct sse_client {
	struct held held;		/* first: held callbacks cast back */
	LIST_ENTRY(sse_client) link;
	char who[96];
};

/* The keeper's event notification (common/proto.h): {type, data, timestamp,
 * timestamp_unix}. */
struct event_params {
	const char *type;
	struct json_object *data;
	const char *timestamp;
	int64_t timestamp_unix;
};

/* What timestamp_unix holds while the notification has none. */
#define TIMESTAMP_ABSENT INT64_MIN

static const struct param_spec event_spec[] = {
	PARAM_STRING(struct event_params, type, PARAM_KEY_TYPE, PARAM_REQUIRED),
	PARAM_OBJECT(struct event_params, data, PARAM_KEY_DATA, 0),
	PARAM_STRING(struct event_params, timestamp, PARAM_KEY_TIMESTAMP, 0),
	PARAM_INT(struct event_params, timestamp_unix, PARAM_KEY_TIMESTAMP_UNIX, 0, 0, 0),
};

/* events.subscribe's result. */
struct subscribe_result {
	bool subscribed;
};

static const struct param_spec subscribe_spec[] = {
	PARAM_BOOL(struct subscribe_result, subscribed, PARAM_KEY_SUBSCRIBED, PARAM_REQUIRED),
};

static void sub_begin(struct http *h);

/* -- clients -- */

static void sse_free(struct http *h, struct sse_client *c)
{
	LIST_REMOVE(c, link);
	h->n_sse--;
	free(c);
}

static void sse_gone(struct held *hd)
{
	struct sse_client *c = (struct sse_client *)hd;

	/* A client dropped by held_stream has been logged already. */
	if (hd->unsent && !hd->dropped)
		log_warn("%s went away with %zu bytes of events it had not read (it stopped reading, or did not "
			 "read for %d s)",
			 c->who, hd->unsent, HTTP_CONN_TIMEOUT_S);
	else
		log_debug("%s disconnected", c->who);
	sse_free(hd->h, c);
}

void events_handle(struct http *h, struct evhttp_request *req)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct sse_client *c;
	char *addr = NULL;
	ev_uint16_t port = 0;

	if (h->n_sse >= HTTP_EVENT_CLIENTS_MAX) {
		http_send_error(req, 503, KIND_UNAVAILABLE, "too many event streams are open (at most %d)",
				HTTP_EVENT_CLIENTS_MAX);
		return;
	}
	c = xcalloc(1, sizeof(*c));
	evhttp_connection_get_peer(evhttp_request_get_connection(req), &addr, &port);
	snprintf(c->who, sizeof(c->who), "events client #%lu (%.48s port %u)", ++h->next_client,
		 addr ? addr : "?", (unsigned)port);
	http_common_headers(req);
	evhttp_add_header(out, "Content-Type", "text/event-stream");
	evhttp_add_header(out, "Cache-Control", "no-cache");
	http_log_request(req, 200, "(event stream)");
	held_init(&c->held, h, req, sse_gone);
	LIST_INSERT_HEAD(&h->sse, c, link);
	h->n_sse++;
	evhttp_send_reply_start(req, 200, NULL);
	if (!h->sub_bev)
		log_info("%s connected while the event subscription is down; events resume once it is back", c->who);
	else
		log_debug("%s connected", c->who);
}

static void events_broadcast(struct http *h, const char *chunk, size_t len)
{
	struct sse_client *c, *next;

	for (c = LIST_FIRST(&h->sse); c; c = next) {
		next = LIST_NEXT(c, link);
		/* May disconnect c (and free it), never another client. */
		held_stream(&c->held, chunk, len, c->who);
	}
}

static bool type_valid(const char *s, size_t len)
{
	if (len == 0 || len > EVENT_TYPE_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
		      c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* One keeper notification to every client; -EINVAL when it is malformed. */
static int events_deliver(struct http *h, struct json_object *params)
{
	struct event_params p = { .timestamp_unix = TIMESTAMP_ABSENT };
	struct json_object *env;
	struct evbuffer *b;
	const char *json, *bad;
	size_t len;

	if (params_parse(params, event_spec, ARRAY_SIZE(event_spec), &p, &bad) < 0 ||
	    !type_valid(p.type, strlen(p.type)))
		return -EINVAL;
	if (p.timestamp_unix == TIMESTAMP_ABSENT)
		p.timestamp_unix = time_now_ms() / 1000;
	/* The envelope is what browsers read, not a channel message. */
	env = json_object_new_object();
	json_object_object_add(env, "payload", p.data ? json_object_get(p.data) : json_object_new_object());
	json_object_object_add(env, "timestamp", json_object_new_int64(p.timestamp_unix));
	/* Compact JSON has no raw line break: one data line per event. */
	json = json_object_to_json_string_length(env, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	b = evbuffer_new();
	if (!json || !b || evbuffer_add_printf(b, "event: %s\ndata: ", p.type) < 0 ||
	    evbuffer_add(b, json, len) < 0 || evbuffer_add(b, "\n\n", 2) < 0)
		fatal("out of memory");
	json_object_put(env);
	log_debug("event %s to %zu client%s", p.type, h->n_sse, h->n_sse == 1 ? "" : "s");
	len = evbuffer_get_length(b);
	events_broadcast(h, (const char *)evbuffer_pullup(b, -1), len);
	evbuffer_free(b);
	return 0;
}

void events_ping(struct http *h)
{
	char chunk[96];
	int n;

	n = snprintf(chunk, sizeof(chunk), "event: ping\ndata: {\"timestamp\":%lld}\n\n",
		     (long long)(time_now_ms() / 1000));
	events_broadcast(h, chunk, (size_t)n);
	mcp_ping(h);
}

/* -- the subscription -- */

static void sub_drop(struct http *h)
{
	if (h->sub_bev) {
		bufferevent_free(h->sub_bev);
		h->sub_bev = NULL;
	}
}

static void sub_schedule(struct http *h)
{
	struct timeval tv;
	int ms;

	if (h->chan.exit_code >= 0)
		return;
	ms = h->sub_backoff_ms ? h->sub_backoff_ms : RESUBSCRIBE_MIN_MS;
	h->sub_backoff_ms = ms * 2 > RESUBSCRIBE_MAX_MS ? RESUBSCRIBE_MAX_MS : ms * 2;
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	evtimer_add(h->sub_retry, &tv);
}

static void sub_lost(struct http *h, const char *why)
{
	sub_drop(h);
	log_warn("events: %s; %zu client%s will miss events until the subscription is back", why, h->n_sse,
		 h->n_sse == 1 ? "" : "s");
	sub_schedule(h);
}

static void sub_read_cb(struct bufferevent *bev, void *arg)
{
	struct http *h = arg;

	while (h->sub_bev) {
		struct rpc_msg m;
		char detail[128] = "", why[192];
		int r = frame_read(bufferevent_get_input(bev), PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			return;
		if (r != 0) {
			rpc_msg_clear(&m);
			log_error("keeper sent a malformed message on the event subscription: %s",
				  r < 0 ? strerror(-r) : detail);
			sub_lost(h, "the subscription was closed after a malformed message");
			return;
		}
		if (m.type != RPC_NOTIFICATION || strcmp(m.method, METHOD_EVENT) != 0 ||
		    events_deliver(h, m.params) < 0) {
			snprintf(why, sizeof(why), "keeper sent %s on the event subscription",
				 m.type == RPC_NOTIFICATION ? "a malformed or unknown notification" : "an unexpected message");
			log_error("%s", why);
			rpc_msg_clear(&m);
			sub_lost(h, "the subscription was closed after an unexpected message");
			return;
		}
		rpc_msg_clear(&m);
	}
}

static void sub_event_cb(struct bufferevent *bev, short what, void *arg)
{
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		sub_lost(arg, "the keeper closed the event subscription");
}

static void sub_done(void *arg, struct rpc_msg *reply, const struct kfail *fail)
{
	struct http *h = arg;
	struct kcall *kc = h->sub_call;
	struct subscribe_result res = { false };
	const char *bad;

	h->sub_call = NULL;
	if (fail) {
		log_warn("events: cannot subscribe: %s; retrying", fail->message);
		sub_schedule(h);
		return;
	}
	if (reply->type == RPC_ERROR ||
	    params_parse(reply->result, subscribe_spec, ARRAY_SIZE(subscribe_spec), &res, &bad) < 0 ||
	    !res.subscribed) {
		const char *message = reply->type == RPC_ERROR ? rpc_error_message(reply) : NULL;
		char clean[160];

		http_clean(message ? message : "not subscribed", clean, sizeof(clean));
		log_warn("events: the keeper refused the subscription: %s; retrying", clean);
		sub_schedule(h);
		return;
	}
	h->sub_bev = kcall_take(kc);
	h->sub_backoff_ms = 0;
	bufferevent_setcb(h->sub_bev, sub_read_cb, NULL, sub_event_cb, h);
	if (bufferevent_enable(h->sub_bev, EV_READ | EV_WRITE) < 0)
		fatal("cannot watch the event subscription");
	log_debug("events: subscribed");
	/* Events that came with the reply are already buffered. */
	sub_read_cb(h->sub_bev, h);
}

static void sub_begin(struct http *h)
{
	if (h->chan.exit_code >= 0 || h->sub_call || h->sub_bev)
		return;
	h->sub_call = kcall_start(h, METHOD_EVENTS_SUBSCRIBE, NULL, SUBSCRIBE_TIMEOUT_S, sub_done, h);
}

static void sub_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	sub_begin(arg);
}

void events_start(struct http *h)
{
	h->sub_retry = evtimer_new(h->base, sub_retry_cb, h);
	if (!h->sub_retry)
		fatal("out of memory");
	sub_begin(h);
}

void events_free_all(struct http *h)
{
	while (!LIST_EMPTY(&h->sse)) {
		struct sse_client *c = LIST_FIRST(&h->sse);

		held_release(&c->held);
		sse_free(h, c);
	}
	if (h->sub_call)
		kcall_cancel(h->sub_call);
	h->sub_call = NULL;
	sub_drop(h);
	if (h->sub_retry)
		event_free(h->sub_retry);
	h->sub_retry = NULL;
}
