/*
 * One control-protocol exchange with the keeper (kcall_*): the REST API's
 * status, auth.login and auth.logout, the event subscription and each MCP
 * session's connect all go through here.
 *
 * A call asks http.c for a control connection (kconn_request: control.connect
 * on fd 3, the descriptor on fd 4), sends its request on it as mcpctl would,
 * and reports once: the keeper's reply, or why there is none (the keeper
 * refused the connection, closed it, sent something malformed, or did not
 * answer in time). The owner may then take the connection over
 * (kcall_take): a subscription or an MCP session lives on it.
 *
 * What it may touch: the control connections it was given, and nothing of
 * the HTTP side. Trust: the keeper is a sibling, but a malformed message on
 * a control connection ends only that call (logged, answered 500), not the
 * child: fd 3 is what the keeper's bugs end the process on.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "frame.h"
#include "http.h"
#include "log.h"
#include "proto.h"
#include "util.h"

struct kcall {
	struct http *h;
	LIST_ENTRY(kcall) link;
	const char *method;
	struct json_object *msg;	/* the request, sent once connected */
	struct kwait *wait;
	struct bufferevent *bev;
	struct event *timer;
	int timeout_s;
	kcall_fn fn;
	void *arg;
};

static void kcall_free(struct kcall *c)
{
	LIST_REMOVE(c, link);
	if (c->wait)
		kconn_cancel(c->wait);
	if (c->bev)
		bufferevent_free(c->bev);
	if (c->timer)
		event_free(c->timer);
	json_object_put(c->msg);
	free(c);
}

static void kcall_finish(struct kcall *c, struct rpc_msg *reply, const struct kfail *fail)
{
	c->fn(c->arg, reply, fail);
	kcall_free(c);
}

static void kcall_fail(struct kcall *c, int status, const char *kind, const char *fmt, ...) _printf_(4, 5);
static void kcall_fail(struct kcall *c, int status, const char *kind, const char *fmt, ...)
{
	struct kfail f = { .status = status, .kind = kind };
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(f.message, sizeof(f.message), fmt, ap);
	va_end(ap);
	kcall_finish(c, NULL, &f);
}

static void kcall_read_cb(struct bufferevent *bev, void *arg)
{
	struct kcall *c = arg;

	for (;;) {
		struct rpc_msg m;
		char detail[128] = "";
		int r = frame_read(bufferevent_get_input(bev), PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			return;
		if (r != 0) {
			rpc_msg_clear(&m);
			log_error("keeper sent a malformed reply to %s: %s", c->method,
				  r < 0 ? strerror(-r) : detail);
			kcall_fail(c, 500, KIND_INTERNAL, "the keeper sent a malformed reply");
			return;
		}
		if (m.type == RPC_NOTIFICATION) {
			/* auth.login_url and the like: the reply says it all. */
			rpc_msg_clear(&m);
			continue;
		}
		if (m.type == RPC_REQUEST || !json_object_is_type(m.id, json_type_int) ||
		    json_object_get_int64(m.id) != 1) {
			log_error("keeper sent %s on a control connection waiting for %s",
				  m.type == RPC_REQUEST ? "a request" : "a reply to no request", c->method);
			rpc_msg_clear(&m);
			kcall_fail(c, 500, KIND_INTERNAL, "the keeper sent an unexpected message");
			return;
		}
		kcall_finish(c, &m, NULL);
		rpc_msg_clear(&m);
		return;
	}
}

static void kcall_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct kcall *c = arg;

	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		kcall_fail(c, 502, KIND_UNAVAILABLE, "the keeper closed the control connection before answering %s",
			   c->method);
}

static void kcall_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct kcall *c = arg;

	log_warn("the keeper did not answer %s within %d s", c->method, c->timeout_s);
	kcall_fail(c, 504, KIND_UNAVAILABLE, "the keeper did not answer %s within %d s", c->method, c->timeout_s);
}

static void kcall_connected(void *arg, int fd, const char *error)
{
	struct kcall *c = arg;
	int r;

	c->wait = NULL;
	if (fd < 0) {
		kcall_fail(c, 503, KIND_UNAVAILABLE, "the keeper could not open a control connection: %s", error);
		return;
	}
	c->bev = bufferevent_socket_new(c->h->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev)
		fatal("out of memory");
	frame_bev_setup(c->bev, PROTO_MAX_MESSAGE);
	bufferevent_setcb(c->bev, kcall_read_cb, NULL, kcall_event_cb, c);
	if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) < 0)
		fatal("cannot watch a control connection");
	r = frame_write(bufferevent_get_output(c->bev), c->msg, PROTO_MAX_MESSAGE);
	if (r)
		kcall_fail(c, 500, KIND_INTERNAL, "cannot send %s: %s", c->method,
			   r < 0 ? strerror(-r) : frame_strerror(r));
}

struct kcall *kcall_start(struct http *h, const char *method, struct json_object *params, int timeout_s,
			  kcall_fn fn, void *arg)
{
	struct kcall *c = xcalloc(1, sizeof(*c));
	struct timeval tv = { .tv_sec = timeout_s };

	c->h = h;
	c->method = method;
	c->fn = fn;
	c->arg = arg;
	c->timeout_s = timeout_s;
	c->msg = rpc_request(method, params, 1);
	c->timer = evtimer_new(h->base, kcall_timeout_cb, c);
	if (!c->msg || !c->timer || evtimer_add(c->timer, &tv) < 0)
		fatal("out of memory");
	LIST_INSERT_HEAD(&h->calls, c, link);
	c->wait = kconn_request(h, kcall_connected, c);
	return c;
}

void kcall_cancel(struct kcall *c)
{
	if (c)
		kcall_free(c);
}

struct bufferevent *kcall_take(struct kcall *c)
{
	struct bufferevent *bev = c->bev;

	c->bev = NULL;
	if (bev)
		bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
	return bev;
}

void kcall_free_all(struct http *h)
{
	while (!LIST_EMPTY(&h->calls))
		kcall_free(LIST_FIRST(&h->calls));
}
