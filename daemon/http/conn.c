/*
 * The http child's client connections: at most max_connections of them at
 * once (http.max_connections), and each must send a whole request within
 * header_timeout_ms of its opening or of the end of its previous answer
 * (http.header_timeout). Without these, idle or slow connections that never
 * finish a request would hold descriptors without end and keep the API
 * from everyone else. A connection past the cap gets a fixed 503 and is
 * closed at once; one that is too slow is closed without an answer.
 *
 * libevent 2.1's evhttp accepts by itself and offers no connection cap and
 * no hook at accept time. It does make each new connection's bufferevent
 * through a callback (evhttp_set_bevcb) and gives every connection one
 * close callback. conn_bev_cb makes the bufferevent and keeps a reference to
 * it; conn_adopt_cb runs right after the accept, in the same pass of the
 * loop and so before a byte of the connection is read, and finds the
 * connection as the argument evhttp gives the bufferevent's callbacks. It
 * counts the connection in (close callback, request timer) or refuses it.
 * The reference keeps the bufferevent's memory valid should evhttp have
 * dropped the connection in between: its callbacks are then cleared, and
 * there is nothing to count.
 *
 * A connection has one close callback, and held requests (server.c) need it
 * too: conn_closed passes it on to the held request the connection carries.
 *
 * What it may touch: the listener's clients; nothing they send is read here.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>

#include "http.h"
#include "log.h"
#include "util.h"

/* At most one warning about refused connections per this many ms. */
#define REFUSED_LOG_MS 60000
#define REFUSED_BODY "mcpkeeper: too many connections to the HTTP API; try again later\n"

struct conn {
	LIST_ENTRY(conn) link;
	struct http *h;
	struct evhttp_connection *evcon;
	struct event *timer;	/* the request timeout, while waiting for one */
	struct held *held;	/* the request answered later, if any */
};

static struct conn *conn_find(struct http *h, struct evhttp_connection *evcon)
{
	struct conn *c;

	LIST_FOREACH(c, &h->conns, link)
		if (c->evcon == evcon)
			return c;
	return NULL;
}

/* evhttp is freeing the connection (the client went, a write failed, it
 * was refused or timed out, or the child is exiting). */
static void conn_closed(struct evhttp_connection *evcon, void *arg)
{
	struct conn *c = arg;
	struct http *h = c->h;

	if (c->held)
		held_closed(evcon, c->held);
	LIST_REMOVE(c, link);
	h->n_conns--;
	event_free(c->timer);
	free(c);
}

static void conn_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	log_debug("closing a connection that sent no complete request within %d ms", c->h->header_timeout_ms);
	evhttp_connection_free(c->evcon); /* runs conn_closed: c is gone */
}

static void conn_wait_request(struct conn *c)
{
	struct timeval tv = { .tv_sec = c->h->header_timeout_ms / 1000,
			      .tv_usec = (c->h->header_timeout_ms % 1000) * 1000 };

	if (event_add(c->timer, &tv) < 0)
		fatal("cannot arm a connection's request timer");
}

/* Counts evcon in: its close callback and its request timer. */
static struct conn *conn_track(struct http *h, struct evhttp_connection *evcon)
{
	struct conn *c = xcalloc(1, sizeof(*c));

	c->h = h;
	c->evcon = evcon;
	c->timer = evtimer_new(h->base, conn_timeout_cb, c);
	if (!c->timer)
		fatal("out of memory");
	LIST_INSERT_HEAD(&h->conns, c, link);
	h->n_conns++;
	evhttp_connection_set_closecb(evcon, conn_closed, c);
	conn_wait_request(c);
	return c;
}

/* One more than the cap: a fixed answer, written straight to the fresh
 * socket (its buffer is empty), then the connection goes. A client whose
 * request was already on its way may see a reset instead of the 503. */
static void conn_refuse(struct http *h, struct evhttp_connection *evcon)
{
	int fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
	char reply[256];
	int n = snprintf(reply, sizeof(reply),
			 "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
			 "Content-Length: %zu\r\nRetry-After: 1\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n%s",
			 sizeof(REFUSED_BODY) - 1, REFUSED_BODY);
	int64_t now = http_now_ms();

	h->n_refused++;
	if (!h->refused_logged_ms || now - h->refused_logged_ms >= REFUSED_LOG_MS) {
		log_warn("%zu HTTP connections open, the most http.max_connections allows: refusing more with 503 "
			 "(%lu refused so far)",
			 h->n_conns, h->n_refused);
		h->refused_logged_ms = now;
	}
	if (fd >= 0 && n > 0 && (size_t)n < sizeof(reply))
		(void)send(fd, reply, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
	evhttp_connection_free(evcon);
}

/* Right after the accepts: count in or refuse each new connection. */
static void conn_adopt_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http *h = arg;

	for (size_t i = 0; i < h->n_fresh; i++) {
		struct bufferevent *bev = h->fresh[i];
		bufferevent_data_cb readcb = NULL;
		void *cbarg = NULL;

		bufferevent_getcb(bev, &readcb, NULL, NULL, &cbarg);
		/* No callbacks: evhttp already dropped the connection. */
		if (readcb && cbarg && !conn_find(h, cbarg)) {
			if (h->n_conns >= (size_t)h->max_conns)
				conn_refuse(h, cbarg);
			else
				conn_track(h, cbarg);
		}
		bufferevent_decref(bev);
		h->fresh[i] = NULL;
	}
	h->n_fresh = 0;
}

/* evhttp's accept asks for the new connection's bufferevent (evhttp's own
 * choice of options: none, it closes the socket itself). */
static struct bufferevent *conn_bev_cb(struct event_base *base, void *arg)
{
	struct http *h = arg;
	struct bufferevent *bev = bufferevent_socket_new(base, -1, 0);

	if (!bev)
		fatal("out of memory");
	if (h->n_fresh == h->fresh_cap) {
		h->fresh_cap = h->fresh_cap ? 2 * h->fresh_cap : 16;
		h->fresh = xrealloc(h->fresh, h->fresh_cap * sizeof(*h->fresh));
	}
	bufferevent_incref(bev);
	h->fresh[h->n_fresh++] = bev;
	event_active(h->adopt_ev, EV_TIMEOUT, 0);
	return bev;
}

void conn_setup(struct http *h, int max_conns, int header_timeout_ms)
{
	h->max_conns = max_conns;
	h->header_timeout_ms = header_timeout_ms;
	h->adopt_ev = event_new(h->base, -1, 0, conn_adopt_cb, h);
	if (!h->adopt_ev)
		fatal("out of memory");
	evhttp_set_bevcb(h->evh, conn_bev_cb, h);
}

/* The request is answered: the next one on this connection (kept alive)
 * has header_timeout_ms again. */
static void conn_request_done(struct evhttp_request *req, void *arg)
{
	struct http *h = arg;
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct conn *c = evcon ? conn_find(h, evcon) : NULL;

	if (c)
		conn_wait_request(c);
}

void conn_request_started(struct http *h, struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct conn *c;

	if (!evcon)
		return;
	/* Not yet counted (conn_adopt_cb has not run): counted now. */
	c = conn_find(h, evcon);
	if (!c)
		c = conn_track(h, evcon);
	event_del(c->timer);
	evhttp_request_set_on_complete_cb(req, conn_request_done, h);
}

void conn_hold(struct http *h, struct evhttp_connection *evcon, struct held *hd)
{
	struct conn *c = conn_find(h, evcon);

	if (!c) {
		if (!hd)
			return;
		c = conn_track(h, evcon);
		event_del(c->timer);
	}
	c->held = hd;
}

void conn_free_all(struct http *h)
{
	for (size_t i = 0; i < h->n_fresh; i++)
		bufferevent_decref(h->fresh[i]);
	h->n_fresh = 0;
	free(h->fresh);
	h->fresh = NULL;
	if (h->adopt_ev)
		event_free(h->adopt_ev);
	h->adopt_ev = NULL;
}
