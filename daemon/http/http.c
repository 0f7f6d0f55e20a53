/*
 * mcpkeeper-http: the http child. It serves, on one loopback address, the
 * REST API (/api/v1/servers...), the event stream (/events), MCP over HTTP
 * (/mcp/NAME) and the web UI's static files, so that the keeper parses no
 * network input.
 *
 * Started by mcpkeeperd (fork+exec) with fd 3 its JSON-RPC channel to the
 * keeper and fd 4 a SOCK_SEQPACKET socket that carries descriptors
 * (common/proto.h, "http child"). The hello gives the listen address, the
 * API key, the UI directory and whether management (login, logout) is
 * allowed; the child binds, restricts itself and answers with the port.
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
 * HTTP.
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
#include "http.h"
#include "log.h"
#include "params.h"
#include "proto.h"
#include "sandbox.h"
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

void http_timestamp(char *buf, size_t len)
{
	struct timespec ts;
	struct tm tm;
	char base[32];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, len, "%s.%03dZ", base, (int)(ts.tv_nsec / 1000000));
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
	int r;

	if (!msg)
		fatal("out of memory");
	r = frame_write(bufferevent_get_output(h->chan.bev), msg, PROTO_MAX_MESSAGE);
	json_object_put(msg);
	if (r) {
		log_error("cannot queue a message to the keeper: %s", r < 0 ? strerror(-r) : frame_strerror(r));
		http_stop(h, 1);
	}
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
		unsigned char num[8];
		uint64_t number = 0;
		size_t received = 0;
		int cfd = -1, type = 0, domain = 0, r;
		socklen_t len = sizeof(type), dlen = sizeof(domain);

		r = sock_recv_fd(DESC_FD, num, sizeof(num), &received, &cfd);
		if (r == -EAGAIN || r == -EINTR)
			return;
		if (r < 0) {
			keeper_bug(h, "an unreadable descriptor packet", strerror(-r));
			return;
		}
		if (received == 0) {
			log_debug("descriptor channel closed by the keeper; exiting");
			event_del(h->fd4_ev);
			http_stop(h, 0);
			return;
		}
		if (received != sizeof(num) || cfd < 0) {
			fd_close(cfd);
			keeper_bug(h, "a descriptor packet without a number and a descriptor", NULL);
			return;
		}
		if (getsockopt(cfd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM ||
		    getsockopt(cfd, SOL_SOCKET, SO_DOMAIN, &domain, &dlen) < 0 || domain != AF_UNIX) {
			fd_close(cfd);
			keeper_bug(h, "a descriptor that is not a Unix stream socket", NULL);
			return;
		}
		for (int i = 7; i >= 0; i--)
			number = (number << 8) | num[i];
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

/* "127.0.0.1:PORT" or "[::1]:PORT"; loopback only. */
static int parse_listen(const char *listen, char *host, size_t host_len, int *port)
{
	const char *colon;
	char *end;
	long p;

	if (strncmp(listen, "127.0.0.1:", 10) == 0) {
		snprintf(host, host_len, "127.0.0.1");
		colon = listen + 9;
	} else if (strncmp(listen, "[::1]:", 6) == 0) {
		snprintf(host, host_len, "::1");
		colon = listen + 5;
	} else {
		return -EINVAL;
	}
	if (colon[1] < '0' || colon[1] > '9')
		return -EINVAL;
	errno = 0;
	p = strtol(colon + 1, &end, 10);
	if (errno || *end || p < 0 || p > 65535)
		return -EINVAL;
	*port = (int)p;
	return 0;
}

/* Binds and listens; returns the socket, or a negative errno value. */
static int listen_socket(const char *host, int port, int *bound)
{
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} a;
	socklen_t alen;
	int fd, one = 1, r;
	bool v6 = strchr(host, ':') != NULL;

	memset(&a, 0, sizeof(a));
	if (v6) {
		a.in6.sin6_family = AF_INET6;
		a.in6.sin6_port = htons((uint16_t)port);
		inet_pton(AF_INET6, host, &a.in6.sin6_addr);
		alen = sizeof(a.in6);
	} else {
		a.in.sin_family = AF_INET;
		a.in.sin_port = htons((uint16_t)port);
		inet_pton(AF_INET, host, &a.in.sin_addr);
		alen = sizeof(a.in);
	}
	fd = socket(a.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	/* SO_REUSEADDR lets a restart bind over TIME_WAIT; a live listener
	 * on the port still gives EADDRINUSE. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    (v6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(fd, &a.sa, alen) < 0 || listen(fd, 128) < 0)
		goto fail;
	alen = sizeof(a);
	if (getsockname(fd, &a.sa, &alen) < 0)
		goto fail;
	*bound = ntohs(v6 ? a.in6.sin6_port : a.in.sin_port);
	return fd;
fail:
	r = -errno;
	fd_close(fd);
	return r;
}

#if defined(__SANITIZE_ADDRESS__)
#define HTTP_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HTTP_SANITIZER 1
#endif
#endif

/* Landlock: system paths and the UI directory, read-only; not the state
 * directory, nothing writable. LeakSanitizer reads /proc/PID/task at exit,
 * so sanitizer builds add our own /proc entry. The ruleset handles file
 * access only: the listener and its clients are unaffected. */
static int http_sandbox(struct http *h)
{
	const char *paths[] = { "/etc", "/usr", "/lib", "/lib64", "/bin", "/sbin", "/dev/urandom", h->ui_dir,
#ifdef HTTP_SANITIZER
				"/proc/self",
#endif
				NULL };
	int r = sandbox_landlock_readonly(paths, h->landlock, sizeof(h->landlock));

	if (r == SANDBOX_UNAVAILABLE)
		log_info("Landlock is not available on this kernel; relying on uid and file modes");
	return r < 0 ? r : 0;
}

static void hello_refuse(struct http *h, struct rpc_msg *m, int code, const char *kind, const char *why)
{
	log_error("hello refused: %s; exiting", why);
	chan_send(h, rpc_error(m->id, code, kind, why));
	http_stop(h, 1);
}

static const char *param_str(struct json_object *params, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(params, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

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

static void http_hello(struct http *h, struct rpc_msg *m)
{
	struct json_object *p = m->params, *v, *result;
	const char *role, *level, *listen, *key, *ui_dir;
	char why[256];
	int version = -1, port = 0, fd, r;
	struct evhttp_bound_socket *bound;
	struct stat st;

	if (m->type != RPC_REQUEST || strcmp(m->method, METHOD_HELLO) != 0) {
		log_error("keeper sent %s before the hello; exiting", m->method ? m->method : "a reply");
		if (m->type == RPC_REQUEST)
			chan_send(h, rpc_error(m->id, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST, "hello expected"));
		http_stop(h, 1);
		return;
	}
	if (!json_object_is_type(p, json_type_object)) {
		hello_refuse(h, m, RPC_INVALID_PARAMS, KIND_INVALID_PARAMS, "hello params must be an object");
		return;
	}
	if (json_object_object_get_ex(p, "version", &v) && json_object_is_type(v, json_type_int))
		version = json_object_get_int(v);
	role = param_str(p, "role");
	level = param_str(p, "log_level");
	listen = param_str(p, "listen");
	key = param_str(p, "api_key");
	ui_dir = param_str(p, "ui_dir");
	why[0] = '\0';
	if (version != PROTO_VERSION)
		snprintf(why, sizeof(why), "protocol version %d not supported (this child speaks %d)", version,
			 PROTO_VERSION);
	else if (!role || strcmp(role, ROLE_HTTP) != 0)
		snprintf(why, sizeof(why), "this is the %s child, not %.32s", ROLE_HTTP, role ? role : "(none)");
	else if (!listen || parse_listen(listen, h->listen_host, sizeof(h->listen_host), &port) < 0)
		snprintf(why, sizeof(why), "\"listen\" must be \"127.0.0.1:PORT\" or \"[::1]:PORT\"");
	else if (!api_key_ok(key))
		snprintf(why, sizeof(why), "\"api_key\" must be %d to %d visible ASCII characters", API_KEY_MIN,
			 API_KEY_MAX);
	else if (!ui_dir || ui_dir[0] != '/' || strlen(ui_dir) > PATH_MAX / 2)
		snprintf(why, sizeof(why), "\"ui_dir\" must be an absolute path");
	else if (json_object_object_get_ex(p, "management", &v) && !json_object_is_type(v, json_type_boolean))
		snprintf(why, sizeof(why), "\"management\" must be true or false");
	if (why[0]) {
		hello_refuse(h, m, RPC_INVALID_PARAMS, KIND_INVALID_PARAMS, why);
		return;
	}
	if (level) {
		enum log_level l;

		if (log_level_parse(level, &l) == 0)
			log_set_level(l);
		else
			log_warn("hello: unknown log_level %.32s, keeping the default", level);
	}
	h->management = !json_object_object_get_ex(p, "management", &v) || json_object_get_boolean(v);
	h->api_key = secret_from(key, strlen(key));
	h->ui_dir = strdup(ui_dir);
	if (!h->api_key || !h->ui_dir)
		fatal("out of memory");
	if (stat(h->ui_dir, &st) < 0 || !S_ISDIR(st.st_mode))
		log_warn("web UI directory %s is missing: the page will not load", h->ui_dir);

	fd = listen_socket(h->listen_host, port, &h->port);
	if (fd < 0) {
		log_error("cannot listen on %s: %s", listen, strerror(-fd));
		snprintf(why, sizeof(why), "cannot listen on %s: %s", listen, strerror(-fd));
		chan_send(h, rpc_error(m->id, RPC_APP_ERROR, KIND_UNAVAILABLE, why));
		http_stop(h, 1);
		return;
	}
	if (strchr(h->listen_host, ':'))
		snprintf(h->hosts[0], sizeof(h->hosts[0]), "[%s]:%d", h->listen_host, h->port);
	else
		snprintf(h->hosts[0], sizeof(h->hosts[0]), "%s:%d", h->listen_host, h->port);
	snprintf(h->hosts[1], sizeof(h->hosts[1]), "localhost:%d", h->port);

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
	bound = evhttp_accept_socket_with_handle(h->evh, fd);
	if (!bound) {
		fd_close(fd);
		fatal("cannot accept connections on %s", h->hosts[0]);
	}
	evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(bound), accept_error_cb);

	r = http_sandbox(h);
	if (r < 0) {
		snprintf(why, sizeof(why), "cannot apply the Landlock sandbox: %s", h->landlock);
		hello_refuse(h, m, RPC_APP_ERROR, KIND_UNAVAILABLE, why);
		return;
	}

	result = json_object_new_object();
	json_object_object_add(result, "version", json_object_new_int(PROTO_VERSION));
	json_object_object_add(result, "pid", json_object_new_int((int)getpid()));
	json_object_object_add(result, "landlock", json_object_new_string(h->landlock));
	json_object_object_add(result, "port", json_object_new_int(h->port));
	chan_send(h, rpc_result(m->id, result));
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

static void fd_check(int fd, int want_type)
{
	struct stat st;
	int domain = 0, type = 0;
	socklen_t len = sizeof(domain), tlen = sizeof(type);

	if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode) ||
	    getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 || domain != AF_UNIX ||
	    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != want_type)
		fatal("fd %d is not the expected Unix socket: this program must be started by mcpkeeperd", fd);
	if (fd_set_cloexec(fd, 1) < 0 || fd_set_nonblock(fd, 1) < 0)
		fatal("cannot set up fd %d: %m", fd);
}

static void http_free(struct http *h)
{
	/* Our own objects first, so that freeing the server's connections
	 * below finds no close callback of ours. */
	mcp_free_all(h);
	events_free_all(h);
	api_free_all(h);
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

	if (argc == 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
		printf("mcpkeeper-http %s\n", MCPKEEPER_VERSION);
		return 0;
	}
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		printf("Usage: mcpkeeper-http --version | --help\n"
		       "The keeper starts its http child itself; it is not run by hand.\n");
		return 0;
	}
	log_init("mcpkeeper-http");
	if (argc > 1)
		fatal("takes no arguments: this program must be started by mcpkeeperd");
	/* exec reset both: no core file, no ptrace, no /proc/PID/mem for our peers. */
	if (proc_no_core_dumps() < 0)
		fatal("cannot disable core dumps: %m");
	fd_check(CHANNEL_FD, SOCK_STREAM);
	fd_check(DESC_FD, SOCK_SEQPACKET);
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);

	if (sodium_init() < 0)
		fatal("libsodium initialisation failed");
	event_set_log_callback(libevent_log);
	LIST_INIT(&h.waits);
	LIST_INIT(&h.stash);
	LIST_INIT(&h.calls);
	LIST_INIT(&h.api_calls);
	LIST_INIT(&h.sse);
	LIST_INIT(&h.sessions);
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
