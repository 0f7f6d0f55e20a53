/*
 * See curlev.h. libcurl tells us which sockets to watch and when its next
 * timeout is (CURLMOPT_SOCKETFUNCTION, CURLMOPT_TIMERFUNCTION); libevent
 * tells libcurl when a socket is ready or the timer fired.
 */
#include <stdlib.h>

#include <event2/event.h>

#include "curlev.h"

struct curlev {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	curlev_done_fn done;
	void *arg;
};

static void curlev_check_done(struct curlev *c)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(c->multi, &left))) {
		if (msg->msg == CURLMSG_DONE)
			c->done(msg->easy_handle, msg->data.result, c->arg);
	}
}

static void curlev_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct curlev *c = arg;
	int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
	int running;

	curl_multi_socket_action(c->multi, fd, action, &running);
	curlev_check_done(c);
}

static void curlev_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct curlev *c = arg;
	int running;

	curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	curlev_check_done(c);
}

/* CURLMOPT_SOCKETFUNCTION: one persistent event per socket, kept in curl's
 * per-socket pointer. */
static int curlev_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct curlev *c = userp;
	struct event *ev = socketp;
	short events;

	if (what == CURL_POLL_REMOVE) {
		if (ev)
			event_free(ev);
		return 0;
	}
	events = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
	if (ev) {
		event_del(ev);
		event_assign(ev, c->base, s, events, curlev_event_cb, c);
	} else {
		ev = event_new(c->base, s, events, curlev_event_cb, c);
		if (!ev)
			return -1;
		curl_multi_assign(c->multi, s, ev);
	}
	return event_add(ev, NULL) < 0 ? -1 : 0;
}

/* CURLMOPT_TIMERFUNCTION: -1 cancels, 0 means as soon as possible (from the
 * loop, never from inside this callback). */
static int curlev_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct curlev *c = userp;
	struct timeval tv;

	if (timeout_ms < 0) {
		evtimer_del(c->timer);
		return 0;
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	return evtimer_add(c->timer, &tv) < 0 ? -1 : 0;
}

struct curlev *curlev_new(struct event_base *base, curlev_done_fn done, void *arg)
{
	struct curlev *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->base = base;
	c->done = done;
	c->arg = arg;
	c->multi = curl_multi_init();
	c->timer = evtimer_new(base, curlev_timeout_cb, c);
	if (!c->multi || !c->timer)
		return curlev_free(c);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, curlev_socket_cb);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, curlev_timer_cb);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
	return c;
}

struct curlev *curlev_free(struct curlev *c)
{
	if (!c)
		return NULL;
	if (c->multi)
		curl_multi_cleanup(c->multi);
	if (c->timer)
		event_free(c->timer);
	free(c);
	return NULL;
}

CURLM *curlev_multi(struct curlev *c)
{
	return c->multi;
}
