/*
 * See curlev.h. libcurl tells us which sockets to watch and when its next
 * timeout is (CURLMOPT_SOCKETFUNCTION, CURLMOPT_TIMERFUNCTION); libevent
 * tells libcurl when a socket is ready or the timer fired.
 *
 * Two things keep a busy process (a worker proxying thousands of requests
 * a second over a few kept-alive connections) from paying system calls
 * for nothing:
 * - Every transfer starts with libcurl asking to be run "as soon as
 *   possible" (a timeout of 0): that run happens later in the same pass
 *   of the loop, not after one more epoll_wait().
 * - libcurl forgets a socket whenever its connection goes back to the
 *   cache, and asks for it again at the next transfer: epoll_ctl() twice
 *   per request. The sockets of handles set up with curlev_easy_setup()
 *   stay registered ("parked") while idle, watched for reading only; since
 *   such sockets are opened and closed through curlev, none stays
 *   registered past its close. A parked socket that becomes readable (the
 *   server closed the connection) stops being watched; libcurl finds out
 *   itself before it reuses the connection.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "curlev.h"

/* A socket libcurl asked us to watch, or one it may ask for again. */
struct curlev_sock {
	struct curlev *c;
	curl_socket_t fd;
	struct event *ev;		/* NULL while not watched at all */
	bool ours;			/* opened by curlev_open_cb: parked when idle */
	bool parked;			/* ours, idle in libcurl's connection cache */
};

struct curlev {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	bool in_timeout;		/* inside curlev_timeout_cb, done callbacks included */
	curlev_done_fn done;
	void *arg;
	struct curlev_sock **ours;	/* by descriptor: the sockets curlev opened */
	size_t n_ours;
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

static void curlev_unwatch(struct curlev_sock *s)
{
	if (s->ev)
		event_free(s->ev);
	s->ev = NULL;
}

static void curlev_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct curlev_sock *s = arg;
	struct curlev *c = s->c;
	int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
	int running;

	if (s->parked) {
		/* Nothing is expected on an idle connection: most likely its
		 * end. Level-triggered, it would wake us on every pass. */
		curlev_unwatch(s);
		return;
	}
	curl_multi_socket_action(c->multi, fd, action, &running);
	curlev_check_done(c);
}

static void curlev_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct curlev *c = arg;
	int running;

	c->in_timeout = true;
	curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	curlev_check_done(c);
	c->in_timeout = false;
}

/* Watches s for events (EV_PERSIST and EV_READ and/or EV_WRITE). */
static int curlev_watch(struct curlev_sock *s, short events)
{
	if (s->ev) {
		if (event_get_events(s->ev) == events)
			return 0;
		event_del(s->ev);
		event_assign(s->ev, s->c->base, s->fd, events, curlev_event_cb, s);
	} else {
		s->ev = event_new(s->c->base, s->fd, events, curlev_event_cb, s);
		if (!s->ev)
			return -ENOMEM;
	}
	return event_add(s->ev, NULL) < 0 ? -ENOMEM : 0;
}

static struct curlev_sock *curlev_ours(struct curlev *c, curl_socket_t fd)
{
	return fd >= 0 && (size_t)fd < c->n_ours ? c->ours[fd] : NULL;
}

/* CURLMOPT_SOCKETFUNCTION: one persistent event per socket; its struct
 * curlev_sock in curl's per-socket pointer. libcurl wants 0 or -1. */
static int curlev_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct curlev *c = userp;
	struct curlev_sock *s = socketp;
	short events;

	if (what == CURL_POLL_REMOVE) {
		if (!s)
			return 0;
		if (s->ours) {
			s->parked = true;
			return s->ev && curlev_watch(s, EV_PERSIST | EV_READ) < 0 ? -1 : 0;
		}
		curlev_unwatch(s);
		free(s);
		return 0;
	}
	if (!s) {
		s = curlev_ours(c, fd);
		if (!s) {
			s = calloc(1, sizeof(*s));
			if (!s)
				return -1;
			s->c = c;
			s->fd = fd;
		}
		s->parked = false;
		curl_multi_assign(c->multi, fd, s);
	}
	events = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
	return curlev_watch(s, events) < 0 ? -1 : 0;
}

/* CURLOPT_OPENSOCKETFUNCTION of the handles set up by curlev_easy_setup(). */
static curl_socket_t curlev_open_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	struct curlev *c = clientp;
	struct curlev_sock *s;
	int fd;

	fd = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
	if (fd < 0)
		return CURL_SOCKET_BAD;
	if ((size_t)fd >= c->n_ours) {
		size_t n = (size_t)fd + 16;
		struct curlev_sock **v = realloc(c->ours, n * sizeof(*v));

		if (!v) {
			close(fd);
			return CURL_SOCKET_BAD;
		}
		memset(v + c->n_ours, 0, (n - c->n_ours) * sizeof(*v));
		c->ours = v;
		c->n_ours = n;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		close(fd);
		return CURL_SOCKET_BAD;
	}
	s->c = c;
	s->fd = fd;
	s->ours = true;
	if (c->ours[fd]) {
		/* A descriptor closed behind curlev_close_cb's back: forget it. */
		curlev_unwatch(c->ours[fd]);
		free(c->ours[fd]);
	}
	c->ours[fd] = s;
	return fd;
}

/* CURLOPT_CLOSESOCKETFUNCTION: the socket leaves epoll before it closes. */
static int curlev_close_cb(void *clientp, curl_socket_t fd)
{
	struct curlev *c = clientp;
	struct curlev_sock *s = curlev_ours(c, fd);

	if (s) {
		curlev_unwatch(s);
		c->ours[fd] = NULL;
		free(s);
	}
	return close(fd);
}

/* CURLMOPT_TIMERFUNCTION: -1 cancels, 0 means as soon as possible (from the
 * loop, never from inside this callback). */
static int curlev_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct curlev *c = userp;
	struct timeval tv;

	evtimer_del(c->timer);
	if (timeout_ms < 0)
		return 0;
	if (timeout_ms == 0 && !c->in_timeout) {
		/* Run once the current callback returns, in this pass. Asked
		 * again from that very run, it waits for the next pass: the
		 * loop still polls between runs. */
		event_active(c->timer, EV_TIMEOUT, 0);
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

int curlev_easy_setup(struct curlev *c, CURL *easy)
{
	if (curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, curlev_open_cb) != CURLE_OK ||
	    curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, c) != CURLE_OK ||
	    curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION, curlev_close_cb) != CURLE_OK ||
	    curl_easy_setopt(easy, CURLOPT_CLOSESOCKETDATA, c) != CURLE_OK)
		return -EINVAL;
	return 0;
}

struct curlev *curlev_free(struct curlev *c)
{
	if (!c)
		return NULL;
	/* Closes the cached connections, through curlev_close_cb. */
	if (c->multi)
		curl_multi_cleanup(c->multi);
	if (c->timer)
		event_free(c->timer);
	for (size_t i = 0; i < c->n_ours; i++) {
		if (c->ours[i]) {
			curlev_unwatch(c->ours[i]);
			free(c->ours[i]);
		}
	}
	free(c->ours);
	free(c);
	return NULL;
}

CURLM *curlev_multi(struct curlev *c)
{
	return c->multi;
}
