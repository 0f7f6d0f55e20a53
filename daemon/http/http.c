/*
 * mcpkeeper-http: the http child. It serves, on one loopback address, the
 * REST API (/api/v1/servers...), the event stream (/events), MCP over HTTP
 * (/mcp/NAME) and the web UI's static files, so that the keeper parses no
 * network input.
 *
 * Started by mcpkeeperd (fork+exec) with fd 3 its JSON-RPC channel to the
 * keeper and fd 4 a SOCK_SEQPACKET socket that carries descriptors
 * (common/proto.h, "http child"), and fd 5 the listening socket, which the
 * keeper bound once so that its address outlives this child. The hello
 * gives the listen address, the API key, the UI directory and whether
 * management (login, logout) is allowed; the child checks the socket
 * against the address, restricts itself and answers with the port.
 * For everything it needs from the keeper it asks for a control connection
 * (control.connect on fd 3; the descriptor arrives on fd 4 under the number
 * of the reply) and speaks the control protocol on it exactly as mcpctl
 * does: one exchange per connection (status, auth.login, auth.logout), one
 * long-lived events.subscribe, and `connect` for each MCP session.
 *
 * This file holds main, the hello and the start-up (listener, Landlock),
 * and the two keeper channels: fd 3, and the control connections it asks
 * for there and receives on fd 4 (kconn_*). control.c runs one exchange on
 * such a connection (kcall_*); server.c is the HTTP front door (Host and
 * Origin against DNS rebinding, the API key, routes); api.c is the REST
 * API, static.c the web UI's files, events.c GET /events and mcp.c MCP over
 * HTTP, conn.c the client connections' cap and request timeout.
 *
 * What it may touch: fd 3, fd 4, the control connections, the listening
 * socket and its clients, stderr for logs, and reading the UI directory.
 * It holds the API key (sodium_malloc'ed) and no token, no master key, no
 * database. Where the kernel offers Landlock it restricts itself right
 * after the hello (which names the UI directory) to reading system paths
 * and the UI directory; TCP is not restricted.
 *
 * Trust: the keeper is a sibling. A malformed or unexpected message on
 * fd 3 or fd 4 is a keeper bug: log it and exit 1 (the keeper restarts us);
 * on a control connection it is logged and ends that connection. Browsers
 * and HTTP clients are untrusted: what they send affects their own request
 * only, and is never logged beyond method, path (no query) and status.
 * Termination signals are ignored; end of stream on fd 3 ends the process.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <json-c/json.h>
#include <sodium.h>

#include "frame.h"
#include "listen.h"
#include "entry.h"
#include "http.h"
#include "log.h"
#include "params.h"
#include "proto.h"
#include "secret.h"
#include "sock.h"
#include "util.h"

#define CHANNEL_FD CHILD_FD_CHANNEL
#define DESC_FD CHILD_FD_DESCRIPTORS
/* Descriptors that arrived before the reply naming them. */
#define STASH_MAX 64
#define API_KEY_MIN 32
#define API_KEY_MAX 1024
#define IDLE_CHECK_S 60
#define ACCEPT_RETRY_MS 500

/* A control.connect on its way: the reply and the descriptor may come in either order. */
struct kwait {
	LIST_ENTRY(kwait) link;
	int64_t id;
	bool answered;
	uint64_t number;
	void (*fn)(void *arg, int fd, const char *error);	/* NULL: cancelled */
	void *arg;
};

struct kfd {
	LIST_ENTRY(kfd) link;
	uint64_t number;
	int fd;
};

static void http_stop(struct http *h, int code);

/* -- small helpers -- */

int64_t http_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void http_clean(const char *s, char *out, size_t len)
{
	size_t n = 0;

	if (!len)
		return;
	for (; s && *s && n + 1 < len; s++)
		out[n++] = (unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f ? *s : '?';
	if (s && *s && n >= 3)
		memcpy(out + n - 3, "...", 3);
	out[n] = '\0';
}

/* -- the channel to the keeper (fd 3) -- */

static void chan_send(struct http *h, struct json_object *msg)
{
	if (!msg)
		fatal("out of memory");
	channel_send(&h->chan, msg);
}

static void keeper_bug(struct http *h, const char *what, const char *detail)
{
	log_error("keeper sent %s%s%s; exiting", what, detail ? ": " : "", detail ? detail : "");
	http_stop(h, 1);
}

static void http_stop(struct http *h, int code)
{
	channel_stop(&h->chan, code);
}

/* -- control connections: control.connect on fd 3, the descriptor on fd 4 -- */

/* control.connect's result {"number"}: where the descriptor comes on fd 4. */
struct connect_result {
	int64_t number;
};

static const struct param_spec connect_result_spec[] = {
	PARAM_INT(struct connect_result, number, PARAM_KEY_NUMBER, PARAM_REQUIRED, 0, INT64_MAX),
};

struct kwait *kconn_request(struct http *h, void (*fn)(void *arg, int fd, const char *error), void *arg)
{
	struct kwait *w = xcalloc(1, sizeof(*w));

	w->id = ++h->next_id;
	w->fn = fn;
	w->arg = arg;
	LIST_INSERT_HEAD(&h->waits, w, link);
	chan_send(h, rpc_request(METHOD_CONTROL_CONNECT, json_object_new_object(), w->id));
	return w;
}

/* The waiter stays until its descriptor came, which is then closed. */
void kconn_cancel(struct kwait *w)
{
	w->fn = NULL;
}

static void kconn_deliver(struct kwait *w, int fd)
{
	LIST_REMOVE(w, link);
	if (w->fn)
		w->fn(w->arg, fd, NULL);
	else
		fd_close(fd);
	free(w);
}

static void kconn_reply(struct http *h, struct rpc_msg *m)
{
	struct kwait *w;
	struct kfd *s;
	struct connect_result res;
	const char *bad;
	int64_t id = json_object_is_type(m->id, json_type_int) ? json_object_get_int64(m->id) : -1;
	uint64_t n;

	LIST_FOREACH(w, &h->waits, link)
		if (w->id == id && !w->answered)
			break;
	if (!w) {
		keeper_bug(h, "a reply to no request", NULL);
		return;
	}
	if (m->type == RPC_ERROR) {
		const char *message = rpc_error_message(m);
		char clean[256];

		http_clean(message ? message : "refused", clean, sizeof(clean));
		log_warn("the keeper refused a control connection: %s", clean);
		LIST_REMOVE(w, link);
		if (w->fn)
			w->fn(w->arg, -1, clean);
		free(w);
		return;
	}
	if (params_parse(m->result, connect_result_spec, ARRAY_SIZE(connect_result_spec), &res, &bad) < 0) {
		keeper_bug(h, "a control.connect reply without a number", NULL);
		return;
	}
	n = (uint64_t)res.number;
	for (struct kwait *o = LIST_FIRST(&h->waits); o; o = LIST_NEXT(o, link)) {
		if (o->answered && o->number == n) {
			keeper_bug(h, "the same descriptor number twice", NULL);
			return;
		}
	}
	LIST_FOREACH(s, &h->stash, link) {
		if (s->number == n) {
			int fd = s->fd;

			LIST_REMOVE(s, link);
			h->n_stash--;
			free(s);
			kconn_deliver(w, fd);
			return;
		}
	}
	w->answered = true;
	w->number = n;
}

static void kconn_arrived(struct http *h, uint64_t number, int fd)
{
	struct kwait *w;
	struct kfd *s;

	LIST_FOREACH(w, &h->waits, link) {
		if (w->answered && w->number == number) {
			kconn_deliver(w, fd);
			return;
		}
	}
	LIST_FOREACH(s, &h->stash, link) {
		if (s->number == number) {
			fd_close(fd);
			keeper_bug(h, "the same descriptor number twice", NULL);
			return;
		}
	}
	if (h->n_stash >= STASH_MAX) {
		fd_close(fd);
		keeper_bug(h, "descriptors that no control.connect reply names", NULL);
		return;
	}
	s = xcalloc(1, sizeof(*s));
	s->number = number;
	s->fd = fd;
	LIST_INSERT_HEAD(&h->stash, s, link);
	h->n_stash++;
}

static void fd4_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http *h = arg;

	while (h->chan.exit_code < 0) {
		uint64_t number;
		unsigned flags;
		int cfd, r = sock_recv_numbered(DESC_FD, 0, &number, &flags, &cfd);

		if (r == -EAGAIN || r == -EINTR)
			return;
		if (r == SOCK_END) {
			log_debug("descriptor channel closed by the keeper; exiting");
			event_del(h->fd4_ev);
			http_stop(h, 0);
			return;
		}
		if (r < 0) {
			keeper_bug(h, sock_numbered_strerror(r), strerror(-r));
			return;
		}
		if (fd_set_nonblock(cfd, 1) < 0)
			fatal("cannot set up a control connection: %m");
		kconn_arrived(h, number, cfd);
	}
}

/* -- start-up: the hello, the listener, the sandbox -- */

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	evconnlistener_enable(arg);
}

/* accept() failed for a reason that does not go away by itself (out of
 * descriptors): stop accepting for a moment instead of spinning. The
 * listener's argument is libevent's evhttp, so the timer carries the
 * listener itself. */
static void accept_error_cb(struct evconnlistener *listener, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { .tv_sec = 0, .tv_usec = ACCEPT_RETRY_MS * 1000 };

	log_warn("cannot accept a connection: %s; pausing for %d ms", evutil_socket_error_to_string(err),
		 ACCEPT_RETRY_MS);
	evconnlistener_disable(listener);
	if (event_base_once(evconnlistener_get_base(listener), -1, EV_TIMEOUT, accept_retry_cb, listener, &tv) < 0)
		fatal("out of memory");
}

static const struct entry http_entry = {
	.program = "mcpkeeper-http",
	.role = ROLE_HTTP,
	.descriptors = true,
};

/* The http child's own hello params (the shared ones: entry.c). */
struct http_hello_params {
	const char *listen;
	const char *api_key;
	const char *ui_dir;
	bool management;
	int64_t max_connections, header_timeout_ms;
};

static const struct param_spec http_hello_spec[] = {
	PARAM_STRING(struct http_hello_params, listen, PARAM_KEY_LISTEN, PARAM_REQUIRED),
	PARAM_STRING(struct http_hello_params, api_key, PARAM_KEY_API_KEY, PARAM_REQUIRED),
	PARAM_STRING(struct http_hello_params, ui_dir, PARAM_KEY_UI_DIR, PARAM_REQUIRED),
	PARAM_BOOL(struct http_hello_params, management, PARAM_KEY_MANAGEMENT, 0),
	/* The config's ranges (http.max_connections, http.header_timeout). */
	PARAM_INT(struct http_hello_params, max_connections, PARAM_KEY_MAX_CONNECTIONS, PARAM_REQUIRED, 1, 1024),
	PARAM_INT(struct http_hello_params, header_timeout_ms, PARAM_KEY_HEADER_TIMEOUT_MS, PARAM_REQUIRED, 1,
		  300 * 1000),
};

static bool api_key_ok(const char *key)
{
	size_t len = key ? strlen(key) : 0;

	if (len < API_KEY_MIN || len > API_KEY_MAX)
		return false;
	/* It travels in a header and a query: visible ASCII only. */
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)key[i] <= 0x20 || (unsigned char)key[i] >= 0x7f)
			return false;
	return true;
}

/* The evhttp server with our limits (tests/fuzz/fuzz-httpreq.c builds it
 * the same way). */
static void http_server_new(struct http *h, int max_conns, int header_timeout_ms)
{
	h->evh = evhttp_new(h->base);
	if (!h->evh)
		fatal("out of memory");
	evhttp_set_max_headers_size(h->evh, HTTP_MAX_HEADERS);
	evhttp_set_max_body_size(h->evh, HTTP_MAX_BODY);
	evhttp_set_timeout(h->evh, HTTP_CONN_TIMEOUT_S);
	/* Read what is left of a refused body, so the client sees the 413. */
	evhttp_set_flags(h->evh, EVHTTP_SERVER_LINGERING_CLOSE);
	/* Every method reaches us, so a wrong one gets 405 and Allow. */
	evhttp_set_allowed_methods(h->evh, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
						   EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
						   EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_gencb(h->evh, http_request_cb, h);
	conn_setup(h, max_conns, header_timeout_ms);
}

static void http_hello(struct http *h, struct rpc_msg *m)
{
	struct http_hello_params p = { .management = true };
	struct json_object *extra;
	const char *bad;
	char why[256], host[64];
	int port = 0, fd, r;
	struct evhttp_bound_socket *bound;
	struct stat st;

	if (entry_hello_check(&http_entry, &h->chan, m) != 0)
		return;
	/* Types first (the table), then what each value must look like. */
	bad = NULL;
	if (params_parse(m->params, http_hello_spec, ARRAY_SIZE(http_hello_spec), &p, &bad) == 0) {
		if (listen_parse(p.listen, h->listen_host, sizeof(h->listen_host), &port) < 0)
			bad = PARAM_KEY_LISTEN;
		else if (!api_key_ok(p.api_key))
			bad = PARAM_KEY_API_KEY;
		else if (p.ui_dir[0] != '/' || strlen(p.ui_dir) > PATH_MAX / 2)
			bad = PARAM_KEY_UI_DIR;
	}
	if (bad) {
		if (strcmp(bad, PARAM_KEY_LISTEN) == 0)
			snprintf(why, sizeof(why), "\"listen\" must be \"127.0.0.1:PORT\" or \"[::1]:PORT\"");
		else if (strcmp(bad, PARAM_KEY_API_KEY) == 0)
			snprintf(why, sizeof(why), "\"api_key\" must be %d to %d visible ASCII characters",
				 API_KEY_MIN, API_KEY_MAX);
		else if (strcmp(bad, PARAM_KEY_UI_DIR) == 0)
			snprintf(why, sizeof(why), "\"ui_dir\" must be an absolute path");
		else
			params_strerror(http_hello_spec, ARRAY_SIZE(http_hello_spec), bad, why, sizeof(why));
		entry_hello_refuse(&h->chan, m, RPC_INVALID_PARAMS, KIND_INVALID_PARAMS, why);
		return;
	}
	h->management = p.management;
	h->api_key = secret_from(p.api_key, strlen(p.api_key));
	h->ui_dir = xstrdup(p.ui_dir);
	if (!h->api_key)
		fatal("out of memory");
	if (stat(h->ui_dir, &st) < 0 || !S_ISDIR(st.st_mode))
		log_warn("web UI directory %s is missing: the page will not load", h->ui_dir);

	/* The keeper's listening socket: bound once, so the address outlives
	 * this child. It must be what the hello names. */
	fd = CHILD_FD_LISTEN;
	r = listen_describe(fd, host, sizeof(host), &h->port);
	if (r == 0 && (strcmp(host, h->listen_host) != 0 || (port && port != h->port)))
		r = -EADDRNOTAVAIL;
	if (r < 0 || fd_set_nonblock(fd, 1) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
		snprintf(why, sizeof(why), "fd %d is not the listening socket of %s: %s", fd, p.listen,
			 strerror(r < 0 ? -r : errno));
		log_error("%s", why);
		channel_send(&h->chan, rpc_error(m->id, RPC_APP_ERROR, KIND_UNAVAILABLE, why));
		http_stop(h, 1);
		return;
	}
	if (strchr(h->listen_host, ':'))
		snprintf(h->hosts[0], sizeof(h->hosts[0]), "[%s]:%d", h->listen_host, h->port);
	else
		snprintf(h->hosts[0], sizeof(h->hosts[0]), "%s:%d", h->listen_host, h->port);
	snprintf(h->hosts[1], sizeof(h->hosts[1]), "localhost:%d", h->port);

	http_server_new(h, (int)p.max_connections, (int)p.header_timeout_ms);
	bound = evhttp_accept_socket_with_handle(h->evh, fd);
	if (!bound) {
		fd_close(fd);
		fatal("cannot accept connections on %s", h->hosts[0]);
	}
	evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(bound), accept_error_cb);

	/* Landlock: the system paths and the UI directory, read-only; not the
	 * state directory, nothing writable. The listener and its clients are
	 * unaffected (the ruleset handles file access only). */
	if (entry_sandbox((const char *const[]){ h->ui_dir, NULL }, h->landlock, sizeof(h->landlock)) < 0) {
		snprintf(why, sizeof(why), "cannot apply the Landlock sandbox: %s", h->landlock);
		entry_hello_refuse(&h->chan, m, RPC_APP_ERROR, KIND_UNAVAILABLE, why);
		return;
	}

	extra = json_object_new_object();
	json_object_object_add(extra, PARAM_KEY_PORT, json_object_new_int(h->port));
	entry_hello_reply(&h->chan, m, h->landlock, extra);
	h->hello_done = true;
	log_info("listening on http://%s/ (management %s, Landlock %s)", h->hosts[0],
		 h->management ? "enabled" : "disabled", h->landlock);
	events_start(h);
}

static void http_dispatch(struct http *h, struct rpc_msg *m)
{
	if (!h->hello_done) {
		http_hello(h, m);
		return;
	}
	if (m->type == RPC_RESULT || m->type == RPC_ERROR) {
		kconn_reply(h, m);
		return;
	}
	keeper_bug(h, m->type == RPC_NOTIFICATION ? "an unknown notification" : "an unknown method", m->method);
}

static void channel_dispatch(void *ctx, struct rpc_msg *m)
{
	http_dispatch(ctx, m);
}

static void channel_bug(void *ctx, const char *what, const char *detail)
{
	keeper_bug(ctx, what, detail);
}

static const struct channel_ops channel_ops = {
	.dispatch = channel_dispatch,
	.bug = channel_bug,
};

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
	events_ping(arg);
}

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
	mcp_idle_check(arg);
}

/* libevent's own warnings: the request parser's words, never a query. */
static void libevent_log(int severity, const char *msg)
{
	char clean[256];

	http_clean(msg, clean, sizeof(clean));
	log_debug("libevent: %s", clean);
}

static void http_free(struct http *h)
{
	/* Our own objects first, so that freeing the server's connections
	 * below finds no close callback of ours. */
	mcp_free_all(h);
	events_free_all(h);
	api_free_all(h);
	tools_free_all(h);
	kcall_free_all(h);
	while (!LIST_EMPTY(&h->waits)) {
		struct kwait *w = LIST_FIRST(&h->waits);

		LIST_REMOVE(w, link);
		free(w);
	}
	while (!LIST_EMPTY(&h->stash)) {
		struct kfd *s = LIST_FIRST(&h->stash);

		LIST_REMOVE(s, link);
		fd_close(s->fd);
		free(s);
	}
	if (h->evh)
		evhttp_free(h->evh);
	conn_free_all(h);
	if (h->ping)
		event_free(h->ping);
	if (h->idle_timer)
		event_free(h->idle_timer);
	if (h->fd4_ev)
		event_free(h->fd4_ev);
	fd_close(DESC_FD);
	channel_close(&h->chan);
	event_base_free(h->base);
	h->api_key = secret_free(h->api_key);
	free(h->ui_dir);
}

int main(int argc, char **argv)
{
	struct http h = { .chan.exit_code = -1, .management = true };
	struct timeval ping = { .tv_sec = HTTP_PING_S }, idle = { .tv_sec = IDLE_CHECK_S };

	entry_start(&http_entry, argc, argv);
	event_set_log_callback(libevent_log);
	LIST_INIT(&h.waits);
	LIST_INIT(&h.stash);
	LIST_INIT(&h.calls);
	LIST_INIT(&h.api_calls);
	LIST_INIT(&h.tools_calls);
	LIST_INIT(&h.sse);
	LIST_INIT(&h.sessions);
	LIST_INIT(&h.conns);
	h.base = event_base_new();
	if (!h.base)
		fatal("out of memory");
	h.fd4_ev = event_new(h.base, DESC_FD, EV_READ | EV_PERSIST, fd4_read_cb, &h);
	h.ping = event_new(h.base, -1, EV_PERSIST, ping_cb, &h);
	h.idle_timer = event_new(h.base, -1, EV_PERSIST, idle_cb, &h);
	if (!h.fd4_ev || !h.ping || !h.idle_timer || event_add(h.fd4_ev, NULL) < 0 ||
	    event_add(h.ping, &ping) < 0 || event_add(h.idle_timer, &idle) < 0)
		fatal("out of memory");
	if (channel_open(&h.chan, h.base, CHANNEL_FD, &channel_ops, &h) < 0)
		fatal("cannot watch fd %d", CHANNEL_FD);

	event_base_dispatch(h.base);

	http_free(&h);
	return h.chan.exit_code < 0 ? 0 : h.chan.exit_code;
}
