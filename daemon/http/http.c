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
 * This file holds main, the two keeper channels, the control connections,
 * the HTTP front door (Host and Origin against DNS rebinding, the API key),
 * the static UI and the REST API. http-events.c is GET /events and
 * http-mcp.c is MCP over HTTP.
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
#include <stdarg.h>
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
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <json-c/json.h>
#include <sodium.h>

#include "frame.h"
#include "http.h"
#include "entry.h"
#include "log.h"
#include "params.h"
#include "proto.h"
#include "request.h"
#include "secret.h"
#include "sock.h"
#include "util.h"

#define CHANNEL_FD CHILD_FD_CHANNEL
#define DESC_FD CHILD_FD_DESCRIPTORS
/* Descriptors that arrived before the reply naming them. */
#define STASH_MAX 64
#define API_KEY_MIN 32
#define API_KEY_MAX 1024
/* The UI's files are small; anything bigger is not ours. */
#define UI_FILE_MAX (8 * 1024 * 1024)
#define IDLE_CHECK_S 60
#define ACCEPT_RETRY_MS 500

#define CSP_UI                                                                                           \
	"default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; " \
	"frame-ancestors 'none'"
#define CSP_API "default-src 'none'; frame-ancestors 'none'"

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

enum api_what { API_SERVERS, API_SERVER, API_LOGIN, API_LOGOUT };

struct api_call {
	struct held held;		/* first: held_* callbacks cast back */
	LIST_ENTRY(api_call) link;
	struct kcall *kc;
	enum api_what what;
	char server[SERVER_NAME_MAX + 1];
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

int http_status_for_kind(const char *kind)
{
	static const struct {
		const char *kind;
		int status;
	} map[] = {
		{ KIND_NOT_FOUND, 404 },      { KIND_NOT_OAUTH, 400 },     { KIND_FORBIDDEN, 403 },
		{ KIND_INVALID_PARAMS, 400 }, { KIND_BUSY, 409 },	   { KIND_LOGIN_FAILED, 502 },
		{ KIND_UNAVAILABLE, 503 },
	};

	for (size_t i = 0; kind && i < ARRAY_SIZE(map); i++)
		if (strcmp(kind, map[i].kind) == 0)
			return map[i].status;
	return 500;
}

static bool name_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
	       c == '-';
}

int http_server_name(const char *raw, char *out, size_t len)
{
	char *dec;
	size_t n;
	int r = -1;

	/* Each name byte is at most three bytes percent-encoded. */
	if (!*raw || strlen(raw) > 3 * SERVER_NAME_MAX)
		return -1;
	dec = evhttp_uridecode(raw, 0, &n);
	if (!dec)
		fatal("out of memory");
	if (n > 0 && n <= SERVER_NAME_MAX && n < len && strlen(dec) == n) {
		r = 0;
		for (size_t i = 0; i < n; i++)
			if (!name_char(dec[i]))
				r = -1;
		if (r == 0)
			memcpy(out, dec, n + 1);
	}
	free(dec);
	return r;
}

static const char *method_name(enum evhttp_cmd_type cmd)
{
	switch (cmd) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_HEAD:
		return "HEAD";
	case EVHTTP_REQ_PUT:
		return "PUT";
	case EVHTTP_REQ_DELETE:
		return "DELETE";
	case EVHTTP_REQ_OPTIONS:
		return "OPTIONS";
	case EVHTTP_REQ_TRACE:
		return "TRACE";
	case EVHTTP_REQ_CONNECT:
		return "CONNECT";
	case EVHTTP_REQ_PATCH:
		return "PATCH";
	}
	return "?";
}

/* -- replies -- */

void http_log_request(struct evhttp_request *req, int status, const char *note)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	char clean[256];

	/* The path only: the query may hold the API key. */
	http_clean(path ? path : "?", clean, sizeof(clean));
	log_msg(status >= 500 ? LOG_LEVEL_WARN : LOG_LEVEL_DEBUG, "%s %s %d%s%s",
		method_name(evhttp_request_get_command(req)), clean, status, note ? " " : "", note ? note : "");
}

void http_common_headers(struct evhttp_request *req)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);

	evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
	evhttp_add_header(out, "Referrer-Policy", "no-referrer");
	evhttp_add_header(out, "X-Frame-Options", "DENY");
}

void http_send_json(struct evhttp_request *req, int status, struct json_object *body, const char *session_id)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct evbuffer *b = evbuffer_new();
	const char *s;
	size_t len = 0;

	if (!b || !body)
		fatal("out of memory");
	s = json_object_to_json_string_length(body, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	if (!s || evbuffer_add(b, s, len) < 0)
		fatal("out of memory");
	json_object_put(body);
	http_common_headers(req);
	evhttp_add_header(out, "Content-Type", "application/json");
	evhttp_add_header(out, "Cache-Control", "no-store");
	evhttp_add_header(out, "Content-Security-Policy", CSP_API);
	if (session_id)
		evhttp_add_header(out, "Mcp-Session-Id", session_id);
	http_log_request(req, status, NULL);
	evhttp_send_reply(req, status, NULL, b);
	evbuffer_free(b);
}

static void send_data(struct evhttp_request *req, struct json_object *data)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "success", json_object_new_boolean(1));
	json_object_object_add(o, "data", data);
	http_send_json(req, 200, o, NULL);
}

void http_send_error(struct evhttp_request *req, int status, const char *kind, const char *fmt, ...)
{
	struct json_object *o = json_object_new_object(), *e = json_object_new_object();
	char message[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	json_object_object_add(e, "kind", json_object_new_string(kind));
	json_object_object_add(e, "message", json_object_new_string(message));
	json_object_object_add(o, "success", json_object_new_boolean(0));
	json_object_object_add(o, "error", e);
	http_send_json(req, status, o, NULL);
}

/* -- requests answered later -- */

/* The client's connection is going down (it closed, a write failed, or we
 * dropped it). A request libevent detached from the connection is ours to
 * free; one still attached goes with the connection. */
static void held_closed(struct evhttp_connection *evcon, void *arg)
{
	struct held *hd = arg;
	struct evhttp_request *req = hd->req;

	if (hd->closed) {
		event_free(hd->closed);
		hd->closed = NULL;
	}
	hd->unsent = evbuffer_get_length(bufferevent_get_output(evhttp_connection_get_bufferevent(evcon)));
	hd->req = NULL;
	if (req && !evhttp_request_get_connection(req))
		evhttp_request_free(req);
	hd->gone(hd);
}

/* libevent stops reading while a request waits for its answer, so a client
 * that goes away would only be noticed at the next write: watch for it. */
static void held_watch_cb(evutil_socket_t fd, short what, void *arg)
{
	struct held *hd = arg;
	struct evhttp_connection *evcon = hd->req ? evhttp_request_get_connection(hd->req) : NULL;

	if (evcon)
		evhttp_connection_free(evcon); /* runs held_closed */
}

void held_init(struct held *hd, struct http *h, struct evhttp_request *req, void (*gone)(struct held *hd))
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);

	hd->h = h;
	hd->req = req;
	hd->gone = gone;
	evhttp_connection_set_closecb(evcon, held_closed, hd);
	hd->closed = event_new(h->base, bufferevent_getfd(bev), EV_CLOSED, held_watch_cb, hd);
	if (!hd->closed)
		fatal("out of memory");
	if (event_add(hd->closed, NULL) < 0) {
		event_free(hd->closed);
		hd->closed = NULL;
	}
}

struct evhttp_request *held_release(struct held *hd)
{
	struct evhttp_request *req = hd->req;

	if (hd->closed) {
		event_free(hd->closed);
		hd->closed = NULL;
	}
	if (req && evhttp_request_get_connection(req))
		evhttp_connection_set_closecb(evhttp_request_get_connection(req), NULL, NULL);
	hd->req = NULL;
	return req;
}

int held_stream(struct held *hd, const char *data, size_t len, const char *who)
{
	struct evhttp_connection *evcon = hd->req ? evhttp_request_get_connection(hd->req) : NULL;
	struct evbuffer *chunk;
	size_t queued;

	if (!evcon)
		return -1;
	queued = evbuffer_get_length(bufferevent_get_output(evhttp_connection_get_bufferevent(evcon)));
	/* One message bigger than the limit still goes to a client that has
	 * read everything so far. */
	if (queued > 0 && queued + len > HTTP_STREAM_OUTPUT_MAX) {
		log_warn("%s is not keeping up (%zu bytes it has not read, %zu more to send, limit %d); disconnecting it",
			 who, queued, len, HTTP_STREAM_OUTPUT_MAX);
		hd->dropped = true;
		evhttp_connection_free(evcon);
		return -1;
	}
	chunk = evbuffer_new();
	if (!chunk || evbuffer_add(chunk, data, len) < 0)
		fatal("out of memory");
	evhttp_send_reply_chunk(hd->req, chunk);
	evbuffer_free(chunk);
	return 0;
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

static struct kwait *kconn_request(struct http *h, void (*fn)(void *arg, int fd, const char *error), void *arg)
{
	struct kwait *w = calloc(1, sizeof(*w));

	if (!w)
		fatal("out of memory");
	w->id = ++h->next_id;
	w->fn = fn;
	w->arg = arg;
	LIST_INSERT_HEAD(&h->waits, w, link);
	chan_send(h, rpc_request(METHOD_CONTROL_CONNECT, json_object_new_object(), w->id));
	return w;
}

/* The waiter stays until its descriptor came, which is then closed. */
static void kconn_cancel(struct kwait *w)
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
	struct json_object *v;
	int64_t id = json_object_is_type(m->id, json_type_int) ? json_object_get_int64(m->id) : -1, n;

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
	if (!json_object_is_type(m->result, json_type_object) || !json_object_object_get_ex(m->result, "number", &v) ||
	    !json_object_is_type(v, json_type_int) || (n = json_object_get_int64(v)) < 0) {
		keeper_bug(h, "a control.connect reply without a number", NULL);
		return;
	}
	for (struct kwait *o = LIST_FIRST(&h->waits); o; o = LIST_NEXT(o, link)) {
		if (o->answered && o->number == (uint64_t)n) {
			keeper_bug(h, "the same descriptor number twice", NULL);
			return;
		}
	}
	LIST_FOREACH(s, &h->stash, link) {
		if (s->number == (uint64_t)n) {
			int fd = s->fd;

			LIST_REMOVE(s, link);
			h->n_stash--;
			free(s);
			kconn_deliver(w, fd);
			return;
		}
	}
	w->answered = true;
	w->number = (uint64_t)n;
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
	s = calloc(1, sizeof(*s));
	if (!s)
		fatal("out of memory");
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

/* -- one exchange on a control connection -- */

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
	struct kcall *c = calloc(1, sizeof(*c));
	struct timeval tv = { .tv_sec = timeout_s };

	if (!c)
		fatal("out of memory");
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

/* -- the front door: rebinding, API key, routes -- */

/* Host must name our address and port; an Origin, when sent, must be the
 * page's own (http:// and that Host). */
static bool host_allowed(struct http *h, struct evhttp_request *req)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *host = NULL, *origin = NULL;
	int n_host = 0, n_origin = 0;
	struct evkeyval *kv;
	bool ok = false;

	TAILQ_FOREACH(kv, in, next) {
		if (evutil_ascii_strcasecmp(kv->key, "Host") == 0) {
			host = kv->value;
			n_host++;
		} else if (evutil_ascii_strcasecmp(kv->key, "Origin") == 0) {
			origin = kv->value;
			n_origin++;
		}
	}
	if (n_host != 1 || n_origin > 1)
		return false;
	for (size_t i = 0; i < ARRAY_SIZE(h->hosts); i++)
		if (h->hosts[i][0] && evutil_ascii_strcasecmp(host, h->hosts[i]) == 0)
			ok = true;
	if (ok && origin)
		ok = evutil_ascii_strncasecmp(origin, "http://", 7) == 0 && evutil_ascii_strcasecmp(origin + 7, host) == 0;
	return ok;
}

static bool key_matches(struct http *h, const char *key)
{
	return key && secret_equal_bytes(h->api_key, key, strlen(key));
}

/* X-API-Key, or else ?apikey= (for tools). Both are wiped once checked. */
static bool authorized(struct http *h, struct evhttp_request *req)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
	const char *header = NULL;
	int n_header = 0;
	struct evkeyval *kv;
	bool ok = false;

	TAILQ_FOREACH(kv, in, next) {
		if (evutil_ascii_strcasecmp(kv->key, "X-API-Key") == 0) {
			header = kv->value;
			n_header++;
		}
	}
	if (n_header == 1) {
		ok = key_matches(h, header);
	} else if (n_header == 0 && query && *query) {
		struct evkeyvalq q;
		const char *key = NULL;
		int n_key = 0;

		TAILQ_INIT(&q);
		if (evhttp_parse_query_str(query, &q) == 0) {
			TAILQ_FOREACH(kv, &q, next) {
				if (strcmp(kv->key, "apikey") == 0) {
					key = kv->value;
					n_key++;
				}
			}
			ok = n_key == 1 && key_matches(h, key);
		}
		TAILQ_FOREACH(kv, &q, next)
			sodium_memzero(kv->value, strlen(kv->value));
		evhttp_clear_headers(&q);
	}
	TAILQ_FOREACH(kv, in, next)
		if (evutil_ascii_strcasecmp(kv->key, "X-API-Key") == 0)
			sodium_memzero(kv->value, strlen(kv->value));
	request_wipe_query(req);
	return ok;
}

enum route_id {
	ROUTE_NONE,
	ROUTE_STATIC,
	ROUTE_SERVERS,
	ROUTE_SERVER,
	ROUTE_LOGIN,
	ROUTE_LOGOUT,
	ROUTE_EVENTS,
	ROUTE_MCP,
};

struct route {
	enum route_id id;
	unsigned methods;	/* EVHTTP_REQ_* allowed */
	const char *allow;	/* the Allow header for 405 */
	const char *file;	/* ROUTE_STATIC */
	const char *ctype;
	char raw_name[3 * SERVER_NAME_MAX + 1];
	bool bad_name;		/* a name segment too long to be one */
};

/* The static files, all public: they carry no data and the page loads
 * before it can send the key. Nothing outside this list is served. */
static const struct {
	const char *path, *file, *ctype;
} static_files[] = {
	{ "/", "index.html", "text/html; charset=utf-8" },
	{ "/ui/app.js", "app.js", "text/javascript; charset=utf-8" },
	{ "/ui/style.css", "style.css", "text/css; charset=utf-8" },
	{ "/openapi.json", "openapi.json", "application/json" },
};

/* Takes the segment at *p up to the next '/' or the end. */
static void take_segment(const char **p, struct route *r)
{
	size_t n = strcspn(*p, "/");

	if (n == 0 || n >= sizeof(r->raw_name)) {
		r->bad_name = true;
	} else {
		memcpy(r->raw_name, *p, n);
		r->raw_name[n] = '\0';
	}
	*p += n;
}

static void route_parse(const char *path, struct route *r)
{
	static const char servers[] = "/api/v1/servers";
	const char *p;

	memset(r, 0, sizeof(*r));
	for (size_t i = 0; i < ARRAY_SIZE(static_files); i++) {
		if (strcmp(path, static_files[i].path) == 0) {
			r->id = ROUTE_STATIC;
			r->methods = EVHTTP_REQ_GET;
			r->allow = "GET";
			r->file = static_files[i].file;
			r->ctype = static_files[i].ctype;
			return;
		}
	}
	if (strcmp(path, "/events") == 0) {
		r->id = ROUTE_EVENTS;
		r->methods = EVHTTP_REQ_GET;
		r->allow = "GET";
		return;
	}
	if (strncmp(path, "/mcp/", 5) == 0) {
		p = path + 5;
		take_segment(&p, r);
		if (*p)
			return;
		r->id = ROUTE_MCP;
		r->methods = EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE;
		r->allow = "GET, POST, DELETE";
		return;
	}
	if (strcmp(path, servers) == 0) {
		r->id = ROUTE_SERVERS;
		r->methods = EVHTTP_REQ_GET;
		r->allow = "GET";
		return;
	}
	if (strncmp(path, servers, sizeof(servers) - 1) != 0 || path[sizeof(servers) - 1] != '/')
		return;
	p = path + sizeof(servers);
	take_segment(&p, r);
	if (!*p) {
		r->id = ROUTE_SERVER;
		r->methods = EVHTTP_REQ_GET;
		r->allow = "GET";
	} else if (strcmp(p, "/login") == 0) {
		r->id = ROUTE_LOGIN;
		r->methods = EVHTTP_REQ_POST;
		r->allow = "POST";
	} else if (strcmp(p, "/logout") == 0) {
		r->id = ROUTE_LOGOUT;
		r->methods = EVHTTP_REQ_POST;
		r->allow = "POST";
	}
}

static void serve_static(struct http *h, struct evhttp_request *req, const char *file, const char *ctype)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct evbuffer *b;
	struct stat st;
	char path[PATH_MAX];
	int fd;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", h->ui_dir, file) >= sizeof(path)) {
		http_send_error(req, 404, KIND_NOT_FOUND, "the web UI is not installed");
		return;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > UI_FILE_MAX) {
		if (fd < 0 && errno != ENOENT)
			log_warn("web UI: cannot open %s: %m", path);
		fd_close(fd);
		http_send_error(req, 404, KIND_NOT_FOUND, "%s is not installed", file);
		return;
	}
	b = evbuffer_new();
	if (!b)
		fatal("out of memory");
	for (;;) {
		int n = evbuffer_read(b, fd, 65536);

		if (n == 0)
			break;
		if ((n < 0 && errno != EINTR) || evbuffer_get_length(b) > UI_FILE_MAX) {
			log_warn("web UI: cannot read %s: %s", path, n < 0 ? strerror(errno) : "it grew too large");
			fd_close(fd);
			evbuffer_free(b);
			http_send_error(req, 500, KIND_INTERNAL, "cannot read %s", file);
			return;
		}
	}
	fd_close(fd);
	http_common_headers(req);
	evhttp_add_header(out, "Content-Type", ctype);
	evhttp_add_header(out, "Cache-Control", "no-cache");
	evhttp_add_header(out, "Content-Security-Policy", CSP_UI);
	http_log_request(req, 200, NULL);
	evhttp_send_reply(req, 200, NULL, b);
	evbuffer_free(b);
}

/* -- the REST API -- */

static void api_free(struct api_call *a)
{
	LIST_REMOVE(a, link);
	if (a->kc)
		kcall_cancel(a->kc);
	held_release(&a->held);
	free(a);
}

static void api_gone(struct held *hd)
{
	struct api_call *a = (struct api_call *)hd;

	log_debug("a client went away before the keeper answered");
	api_free(a);
}

static struct json_object *find_server(struct json_object *servers, const char *name)
{
	for (size_t i = 0; i < json_object_array_length(servers); i++) {
		struct json_object *s = json_object_array_get_idx(servers, i), *v;

		if (json_object_object_get_ex(s, "name", &v) && json_object_is_type(v, json_type_string) &&
		    strcmp(json_object_get_string(v), name) == 0)
			return s;
	}
	return NULL;
}

/* The keeper's result as the API's data in *data: 0, or 404 for a server
 * the status does not list, or -1 when the result is not what the protocol
 * says (a keeper bug: the caller answers 500). */
static int api_data(struct api_call *a, struct json_object *result, struct json_object **data)
{
	static const char *const logout_fields[] = { "server",	    "logged_out", "had_token", "revoked",
						     "revoke_error", "revocation", "orphaned" };
	struct json_object *v, *d, *s;

	*data = NULL;
	if (!json_object_is_type(result, json_type_object))
		return -1;
	switch (a->what) {
	case API_SERVERS:
	case API_SERVER:
		if (!json_object_object_get_ex(result, "servers", &v) || !json_object_is_type(v, json_type_array))
			return -1;
		if (a->what == API_SERVERS) {
			*data = json_object_get(v);
			return 0;
		}
		s = find_server(v, a->server);
		if (!s)
			return 404;
		*data = json_object_get(s);
		return 0;
	case API_LOGIN:
		if (!json_object_object_get_ex(result, "url", &v) || !json_object_is_type(v, json_type_string))
			return -1;
		d = json_object_new_object();
		json_object_object_add(d, "action", json_object_new_string("login"));
		if (json_object_object_get_ex(result, "server", &s) && json_object_is_type(s, json_type_string))
			json_object_object_add(d, "server", json_object_get(s));
		else
			json_object_object_add(d, "server", json_object_new_string(a->server));
		json_object_object_add(d, "url", json_object_get(v));
		*data = d;
		return 0;
	case API_LOGOUT:
		d = json_object_new_object();
		json_object_object_add(d, "action", json_object_new_string("logout"));
		json_object_object_add(d, "server", json_object_new_string(a->server));
		for (size_t i = 0; i < ARRAY_SIZE(logout_fields); i++)
			if (json_object_object_get_ex(result, logout_fields[i], &v))
				json_object_object_add(d, logout_fields[i], json_object_get(v));
		*data = d;
		return 0;
	}
	return -1;
}

static void api_done(void *arg, struct rpc_msg *reply, const struct kfail *fail)
{
	struct api_call *a = arg;
	struct evhttp_request *req = held_release(&a->held);
	struct json_object *data;
	int r;

	a->kc = NULL;
	if (!req) {
		api_free(a);
		return;
	}
	if (fail) {
		http_send_error(req, fail->status, fail->kind, "%s", fail->message);
	} else if (reply->type == RPC_ERROR) {
		const char *kind = rpc_error_kind(reply), *message = rpc_error_message(reply);

		http_send_error(req, http_status_for_kind(kind), kind ? kind : KIND_INTERNAL, "%s",
				message ? message : "the keeper refused");
	} else if ((r = api_data(a, reply->result, &data)) < 0) {
		log_error("keeper sent a malformed result for %s", a->what == API_LOGIN	 ? METHOD_AUTH_LOGIN :
								  a->what == API_LOGOUT ? METHOD_AUTH_LOGOUT :
											  METHOD_STATUS);
		http_send_error(req, 500, KIND_INTERNAL, "the keeper sent a malformed reply");
	} else if (r == 404) {
		http_send_error(req, 404, KIND_NOT_FOUND, "no server named \"%s\"", a->server);
	} else {
		send_data(req, data);
	}
	api_free(a);
}

static void api_start(struct http *h, struct evhttp_request *req, enum api_what what, const char *server)
{
	struct api_call *a = calloc(1, sizeof(*a));
	struct json_object *params = NULL;
	const char *method = METHOD_STATUS;

	if (!a)
		fatal("out of memory");
	a->what = what;
	if (server)
		snprintf(a->server, sizeof(a->server), "%s", server);
	if (what == API_LOGIN || what == API_LOGOUT) {
		params = json_object_new_object();
		json_object_object_add(params, "server", json_object_new_string(server));
		if (what == API_LOGIN) {
			method = METHOD_AUTH_LOGIN;
			json_object_object_add(params, "wait", json_object_new_boolean(0));
		} else {
			method = METHOD_AUTH_LOGOUT;
		}
	}
	held_init(&a->held, h, req, api_gone);
	LIST_INSERT_HEAD(&h->api_calls, a, link);
	a->kc = kcall_start(h, method, params, HTTP_KEEPER_TIMEOUT_S, api_done, a);
}

/* A login or logout body is optional: nothing, or a JSON object. */
static bool body_acceptable(struct evhttp_request *req)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in), start = 0, end;
	const char *p = len ? (const char *)evbuffer_pullup(in, -1) : "";
	struct json_tokener *tok;
	struct json_object *o;
	bool ok;

	while (start < len && strchr(" \t\r\n", p[start]) && p[start])
		start++;
	end = len;
	while (end > start && strchr(" \t\r\n", p[end - 1]) && p[end - 1])
		end--;
	if (start == end)
		return true;
	if (memchr(p + start, '\0', end - start))
		return false;
	tok = json_tokener_new_ex(32);
	if (!tok)
		fatal("out of memory");
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	o = json_tokener_parse_ex(tok, p + start, (int)(end - start));
	ok = o && json_tokener_get_error(tok) == json_tokener_success &&
	     json_tokener_get_parse_end(tok) == end - start && json_object_is_type(o, json_type_object);
	json_object_put(o);
	json_tokener_free(tok);
	return ok;
}

static void api_server_route(struct http *h, struct evhttp_request *req, const struct route *r)
{
	char name[SERVER_NAME_MAX + 1];

	if (r->bad_name || http_server_name(r->raw_name, name, sizeof(name)) < 0) {
		char clean[64];

		http_clean(r->raw_name, clean, sizeof(clean));
		http_send_error(req, 404, KIND_NOT_FOUND, "no server named \"%s\"", clean);
		return;
	}
	if (r->id == ROUTE_SERVER) {
		api_start(h, req, API_SERVER, name);
		return;
	}
	if (!h->management) {
		http_send_error(req, 403, KIND_FORBIDDEN, "management is disabled in the configuration");
		return;
	}
	if (!body_acceptable(req)) {
		http_send_error(req, 400, KIND_INVALID_REQUEST, "the body must be empty or a JSON object");
		return;
	}
	api_start(h, req, r->id == ROUTE_LOGIN ? API_LOGIN : API_LOGOUT, name);
}

static void http_request_cb(struct evhttp_request *req, void *arg)
{
	struct http *h = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct route r;

	if (h->chan.exit_code >= 0) {
		http_send_error(req, 503, KIND_UNAVAILABLE, "shutting down");
		return;
	}
	if (!host_allowed(h, req)) {
		http_send_error(req, 403, KIND_FORBIDDEN,
				"the Host (and Origin) of a request must name this server's own address");
		return;
	}
	if (!path || path[0] != '/') {
		http_send_error(req, 400, KIND_INVALID_REQUEST, "the request target must be a path");
		return;
	}
	route_parse(path, &r);
	if (r.id == ROUTE_STATIC) {
		if (cmd != EVHTTP_REQ_GET) {
			evhttp_add_header(out, "Allow", r.allow);
			http_send_error(req, 405, "method_not_allowed", "%s is not allowed here", method_name(cmd));
			return;
		}
		serve_static(h, req, r.file, r.ctype);
		return;
	}
	if (!authorized(h, req)) {
		http_send_error(req, 401, "unauthorized",
				"a valid API key is required (X-API-Key header or apikey query parameter)");
		return;
	}
	if (r.id == ROUTE_NONE) {
		http_send_error(req, 404, KIND_NOT_FOUND, "no such route");
		return;
	}
	if (!(r.methods & cmd)) {
		evhttp_add_header(out, "Allow", r.allow);
		http_send_error(req, 405, "method_not_allowed", "%s is not allowed here", method_name(cmd));
		return;
	}
	switch (r.id) {
	case ROUTE_SERVERS:
		api_start(h, req, API_SERVERS, NULL);
		break;
	case ROUTE_SERVER:
	case ROUTE_LOGIN:
	case ROUTE_LOGOUT:
		api_server_route(h, req, &r);
		break;
	case ROUTE_EVENTS:
		events_handle(h, req);
		break;
	case ROUTE_MCP: {
		char name[SERVER_NAME_MAX + 1];

		if (r.bad_name || http_server_name(r.raw_name, name, sizeof(name)) < 0)
			http_send_error(req, 404, KIND_NOT_FOUND, "no server by that name");
		else
			mcp_handle(h, req, name);
		break;
	}
	default:
		http_send_error(req, 404, KIND_NOT_FOUND, "no such route");
		break;
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
};

static const struct param_spec http_hello_spec[] = {
	PARAM_STRING(struct http_hello_params, listen, PARAM_KEY_LISTEN, PARAM_REQUIRED),
	PARAM_STRING(struct http_hello_params, api_key, PARAM_KEY_API_KEY, PARAM_REQUIRED),
	PARAM_STRING(struct http_hello_params, ui_dir, PARAM_KEY_UI_DIR, PARAM_REQUIRED),
	PARAM_BOOL(struct http_hello_params, management, PARAM_KEY_MANAGEMENT, 0),
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

static void http_hello(struct http *h, struct rpc_msg *m)
{
	struct http_hello_params p = { .management = true };
	struct json_object *extra;
	const char *bad;
	char why[256];
	int port = 0, fd;
	struct evhttp_bound_socket *bound;
	struct stat st;

	if (entry_hello_check(&http_entry, &h->chan, m) != 0)
		return;
	/* Types first (the table), then what each value must look like. */
	bad = NULL;
	if (params_parse(m->params, http_hello_spec, ARRAY_SIZE(http_hello_spec), &p, &bad) == 0) {
		if (parse_listen(p.listen, h->listen_host, sizeof(h->listen_host), &port) < 0)
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

	fd = listen_socket(h->listen_host, port, &h->port);
	if (fd < 0) {
		log_error("cannot listen on %s: %s", p.listen, strerror(-fd));
		snprintf(why, sizeof(why), "cannot listen on %s: %s", p.listen, strerror(-fd));
		channel_send(&h->chan, rpc_error(m->id, RPC_APP_ERROR, KIND_UNAVAILABLE, why));
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
	while (!LIST_EMPTY(&h->api_calls))
		api_free(LIST_FIRST(&h->api_calls));
	while (!LIST_EMPTY(&h->calls))
		kcall_free(LIST_FIRST(&h->calls));
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

	entry_start(&http_entry, argc, argv);
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
