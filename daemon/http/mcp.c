/*
 * MCP over HTTP at /mcp/NAME: the streamable HTTP transport of the MCP
 * specification (2025-06-18) in front of the keeper's workers.
 *
 * Each session is one control connection on which the child sent
 * `connect` {"server": NAME}; after the keeper's reply the connection
 * belongs to the server's worker and carries newline-delimited JSON-RPC,
 * exactly as for `mcpctl connect`. A POST of "initialize" without a session
 * creates one (its answer carries Mcp-Session-Id, 128 random bits in hex);
 * every later request names it. A request waits for the worker's response
 * with the same id and gets it as application/json; notifications and
 * responses from the client get 202. What the worker sends that answers no
 * pending POST (its requests and notifications) goes to the session's GET
 * stream as "event: message", or waits in a bounded queue until one opens.
 * DELETE ends a session; so do the worker closing the connection and ten
 * minutes without a request or a stream.
 *
 * Trust: HTTP clients are untrusted: their messages are parsed and checked
 * (JSON-RPC 2.0, one object: batches were removed from MCP in 2025-06-18)
 * before they reach the worker, and errors go back as JSON-RPC errors. The
 * worker is a sibling relaying an untrusted upstream: a malformed message
 * from it ends that session. Message bodies are never logged.
 *
 * What it may touch: its sessions' connections to the workers (taken over
 * from control.c after `connect`) and the requests and streams of their
 * clients.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <json-c/json.h>
#include <sodium.h>

#include "frame.h"
#include "http.h"
#include "log.h"
#include "proto.h"
#include "util.h"

#define SESSION_ID_BYTES 16
#define SESSION_ID_LEN (2 * SESSION_ID_BYTES)
#define CONNECT_TIMEOUT_S 30
/* A worker that reads nothing: refuse more than this waiting for it. */
#define WORKER_OUTPUT_MAX (8 * 1024 * 1024)
/* parse_body(): the body was refused, and the client has its error. */
#define MCP_ANSWERED 1

struct mcp_pending {
	struct held held;		/* first: held callbacks cast back */
	LIST_ENTRY(mcp_pending) link;
	struct mcp_session *s;
	struct json_object *id;
	struct event *timer;
	bool initialize;
	char method[64];		/* for logs */
};

struct mcp_stream {
	struct held held;		/* first */
	struct mcp_session *s;
};

struct mcp_queued {
	STAILQ_ENTRY(mcp_queued) link;
	size_t len;
	char chunk[];			/* "event: message\ndata: ...\n\n" */
};

struct mcp_session {
	struct http *h;
	LIST_ENTRY(mcp_session) link;
	char id[SESSION_ID_LEN + 1];
	char server[SERVER_NAME_MAX + 1];
	struct kcall *kc;		/* connect in progress */
	struct bufferevent *bev;	/* to the worker, once connected */
	struct json_object *init;	/* the initialize request until then */
	LIST_HEAD(, mcp_pending) pending;
	size_t n_pending;
	struct mcp_stream *stream;
	STAILQ_HEAD(, mcp_queued) queue;
	size_t n_queued;
	int64_t active_ms;
};

static void mcp_send_error(struct evhttp_request *req, int status, struct json_object *id, int code,
			   const char *kind, const char *fmt, ...) _printf_(6, 7);
static void mcp_send_error(struct evhttp_request *req, int status, struct json_object *id, int code,
			   const char *kind, const char *fmt, ...)
{
	char message[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	http_send_json(req, status, rpc_error(id, code, kind, message), NULL);
}

/* -- sessions -- */

static void pending_free(struct mcp_pending *p)
{
	LIST_REMOVE(p, link);
	p->s->n_pending--;
	p->s->active_ms = http_now_ms();
	held_release(&p->held);
	event_free(p->timer);
	json_object_put(p->id);
	free(p);
}

static void stream_free(struct mcp_session *s, bool end_reply)
{
	struct mcp_stream *st = s->stream;
	struct evhttp_request *req;

	if (!st)
		return;
	s->stream = NULL;
	req = held_release(&st->held);
	if (req && end_reply)
		evhttp_send_reply_end(req);
	free(st);
}

/*
 * Ends a session. Requests still waiting get a JSON-RPC error with that
 * HTTP status (reply false: nobody is answered, the process is exiting).
 */
static void session_end(struct mcp_session *s, bool reply, int status, int code, const char *kind,
			const char *message)
{
	struct http *h = s->h;

	LIST_REMOVE(s, link);
	h->n_sessions--;
	if (s->kc)
		kcall_cancel(s->kc);
	if (s->bev)
		bufferevent_free(s->bev);
	while (!LIST_EMPTY(&s->pending)) {
		struct mcp_pending *p = LIST_FIRST(&s->pending);
		struct evhttp_request *req = held_release(&p->held);

		if (req && reply)
			mcp_send_error(req, status, p->id, code, kind, "%s", message);
		pending_free(p);
	}
	stream_free(s, reply);
	while (!STAILQ_EMPTY(&s->queue)) {
		struct mcp_queued *q = STAILQ_FIRST(&s->queue);

		STAILQ_REMOVE_HEAD(&s->queue, link);
		free(q);
	}
	json_object_put(s->init);
	free(s);
}

static struct mcp_session *session_find(struct http *h, const char *id)
{
	struct mcp_session *s;

	if (!id || strlen(id) != SESSION_ID_LEN)
		return NULL;
	LIST_FOREACH(s, &h->sessions, link)
		if (sodium_memcmp(s->id, id, SESSION_ID_LEN) == 0)
			return s;
	return NULL;
}

/* -- messages from the worker -- */

static int queue_push(struct mcp_session *s, const char *chunk, size_t len)
{
	struct mcp_queued *q;

	if (s->n_queued >= MCP_QUEUE_MAX) {
		q = STAILQ_FIRST(&s->queue);
		STAILQ_REMOVE_HEAD(&s->queue, link);
		s->n_queued--;
		free(q);
		log_warn("%s: MCP session %.8s: no GET stream is open and %d server messages are waiting; "
			 "dropped the oldest",
			 s->server, s->id, MCP_QUEUE_MAX);
	}
	q = xmalloc(sizeof(*q) + len);
	q->len = len;
	memcpy(q->chunk, chunk, len);
	STAILQ_INSERT_TAIL(&s->queue, q, link);
	s->n_queued++;
	return 0;
}

/* Sends what waits; stops when the stream goes away. */
static void queue_flush(struct mcp_session *s)
{
	char who[192];

	snprintf(who, sizeof(who), "%s: MCP session %.8s: the GET stream", s->server, s->id);
	while (s->stream && !STAILQ_EMPTY(&s->queue)) {
		struct mcp_queued *q = STAILQ_FIRST(&s->queue);

		if (held_stream(&s->stream->held, q->chunk, q->len, who) < 0)
			return;
		STAILQ_REMOVE_HEAD(&s->queue, link);
		s->n_queued--;
		free(q);
	}
}

static void to_stream(struct mcp_session *s, struct json_object *msg)
{
	struct evbuffer *b = evbuffer_new();
	const char *json;
	size_t len;

	json = json_object_to_json_string_length(msg, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	if (!b || !json || evbuffer_add(b, "event: message\ndata: ", 21) < 0 || evbuffer_add(b, json, len) < 0 ||
	    evbuffer_add(b, "\n\n", 2) < 0)
		fatal("out of memory");
	len = evbuffer_get_length(b);
	queue_push(s, (const char *)evbuffer_pullup(b, -1), len);
	evbuffer_free(b);
	queue_flush(s);
}

static struct mcp_pending *pending_find(struct mcp_session *s, struct json_object *id)
{
	struct mcp_pending *p;

	if (!id)
		return NULL;
	LIST_FOREACH(p, &s->pending, link)
		if (json_object_equal(p->id, id))
			return p;
	return NULL;
}

static void worker_read_cb(struct bufferevent *bev, void *arg)
{
	struct mcp_session *s = arg;

	for (;;) {
		struct rpc_msg m;
		char detail[128] = "";
		int r = frame_read(bufferevent_get_input(bev), PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));
		struct mcp_pending *p;

		if (r == FRAME_NEED_MORE)
			return;
		if (r != 0) {
			rpc_msg_clear(&m);
			log_warn("%s: MCP session %.8s: the worker sent a malformed message (%s); ending the session",
				 s->server, s->id, r < 0 ? strerror(-r) : detail);
			session_end(s, true, 502, RPC_INTERNAL_ERROR, KIND_UNAVAILABLE,
				    "mcpkeeper: the connection to the server failed; start a new session");
			return;
		}
		if (m.type == RPC_RESULT || m.type == RPC_ERROR) {
			p = pending_find(s, m.id);
			if (p && p->initialize && m.type == RPC_ERROR) {
				/* No session comes of a failed initialize. */
				struct evhttp_request *req = held_release(&p->held);

				log_info("%s: MCP session %.8s: the server refused initialize; the session ends",
					 s->server, s->id);
				if (req)
					http_send_json(req, 200, json_object_get(m.root), NULL);
				rpc_msg_clear(&m);
				session_end(s, false, 0, 0, NULL, NULL);
				return;
			} else if (p) {
				struct evhttp_request *req = held_release(&p->held);

				if (req)
					http_send_json(req, 200, json_object_get(m.root), p->initialize ? s->id : NULL);
				if (p->initialize && req)
					log_info("%s: MCP session %.8s opened", s->server, s->id);
				pending_free(p);
			} else {
				log_debug("%s: MCP session %.8s: a response to no waiting request (timed out or "
					  "abandoned) was dropped",
					  s->server, s->id);
			}
		} else {
			to_stream(s, m.root);
		}
		rpc_msg_clear(&m);
	}
}

static void worker_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct mcp_session *s = arg;

	if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
		return;
	log_info("%s: MCP session %.8s: the worker closed the connection; the session ends", s->server, s->id);
	session_end(s, true, 502, RPC_INTERNAL_ERROR, KIND_UNAVAILABLE,
		    "mcpkeeper: the connection to the server was lost; start a new session");
}

/* -- requests from the client -- */

static void pending_gone(struct held *hd)
{
	struct mcp_pending *p = (struct mcp_pending *)hd;
	struct mcp_session *s = p->s;

	log_debug("%s: MCP session %.8s: the client went away before the answer to %s", s->server, s->id,
		  p->method);
	/* Nobody learns the id of a session whose initialize was abandoned. */
	if (p->initialize)
		session_end(s, false, 0, 0, NULL, NULL);
	else
		pending_free(p);
}

static void pending_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mcp_pending *p = arg;
	struct mcp_session *s = p->s;
	struct evhttp_request *req = held_release(&p->held);

	log_warn("%s: MCP session %.8s: no answer to %s within %d s", s->server, s->id, p->method,
		 MCP_REQUEST_TIMEOUT_S);
	if (req)
		mcp_send_error(req, 504, p->id, RPC_APP_ERROR, KIND_UNAVAILABLE,
			       "mcpkeeper: %s did not answer %s within %d s", s->server, p->method,
			       MCP_REQUEST_TIMEOUT_S);
	if (p->initialize)
		session_end(s, false, 0, 0, NULL, NULL);
	else
		pending_free(p);
}

static void pending_add(struct mcp_session *s, struct evhttp_request *req, struct rpc_msg *m, bool initialize)
{
	struct mcp_pending *p = xcalloc(1, sizeof(*p));
	struct timeval tv = { .tv_sec = MCP_REQUEST_TIMEOUT_S };

	p->s = s;
	p->id = json_object_get(m->id);
	p->initialize = initialize;
	http_clean(m->method, p->method, sizeof(p->method));
	p->timer = evtimer_new(s->h->base, pending_timeout_cb, p);
	if (!p->timer || evtimer_add(p->timer, &tv) < 0)
		fatal("out of memory");
	held_init(&p->held, s->h, req, pending_gone);
	LIST_INSERT_HEAD(&s->pending, p, link);
	s->n_pending++;
}

static void session_connected(void *arg, struct rpc_msg *reply, const struct kfail *fail)
{
	struct mcp_session *s = arg;
	struct kcall *kc = s->kc;
	int r;

	s->kc = NULL;
	if (fail) {
		log_warn("%s: MCP session %.8s: cannot connect: %s", s->server, s->id, fail->message);
		session_end(s, true, fail->status, RPC_APP_ERROR, fail->kind, fail->message);
		return;
	}
	if (reply->type == RPC_ERROR) {
		const char *kind = rpc_error_kind(reply), *message = rpc_error_message(reply);
		char clean[256];

		http_clean(message ? message : "refused", clean, sizeof(clean));
		log_info("%s: MCP session %.8s: the keeper refused the connection: %s", s->server, s->id, clean);
		session_end(s, true, http_status_for_kind(kind), RPC_APP_ERROR, kind ? kind : KIND_INTERNAL,
			    message ? message : "the keeper refused the connection");
		return;
	}
	s->bev = kcall_take(kc);
	bufferevent_setcb(s->bev, worker_read_cb, NULL, worker_event_cb, s);
	if (bufferevent_enable(s->bev, EV_READ | EV_WRITE) < 0)
		fatal("cannot watch an MCP connection");
	r = frame_write(bufferevent_get_output(s->bev), s->init, PROTO_MAX_MESSAGE);
	json_object_put(s->init);
	s->init = NULL;
	if (r) {
		session_end(s, true, r == FRAME_E_TOO_LARGE ? 413 : 500, RPC_INVALID_REQUEST,
			    r == FRAME_E_TOO_LARGE ? KIND_TOO_LARGE : KIND_INTERNAL, "the message cannot be sent");
		return;
	}
	log_debug("%s: MCP session %.8s: connected to the worker", s->server, s->id);
	/* Whatever came right behind the reply is the worker's already. */
	worker_read_cb(s->bev, s);
}

static void session_create(struct http *h, struct evhttp_request *req, const char *name, struct rpc_msg *m)
{
	struct mcp_session *s;
	unsigned char raw[SESSION_ID_BYTES];
	struct json_object *params;

	if (h->n_sessions >= MCP_SESSIONS_MAX) {
		mcp_send_error(req, 503, m->id, RPC_APP_ERROR, KIND_UNAVAILABLE,
			       "too many MCP sessions are open (at most %d); end one with DELETE", MCP_SESSIONS_MAX);
		return;
	}
	s = xcalloc(1, sizeof(*s));
	s->h = h;
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2hex(s->id, sizeof(s->id), raw, sizeof(raw));
	snprintf(s->server, sizeof(s->server), "%s", name);
	s->init = json_object_get(m->root);
	s->active_ms = http_now_ms();
	LIST_INIT(&s->pending);
	STAILQ_INIT(&s->queue);
	LIST_INSERT_HEAD(&h->sessions, s, link);
	h->n_sessions++;
	pending_add(s, req, m, true);
	params = json_object_new_object();
	json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(name));
	s->kc = kcall_start(h, METHOD_CONNECT, params, CONNECT_TIMEOUT_S, session_connected, s);
	log_debug("%s: MCP session %.8s: connecting", s->server, s->id);
}

static void forward(struct mcp_session *s, struct evhttp_request *req, struct rpc_msg *m)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	int r;

	s->active_ms = http_now_ms();
	if (evbuffer_get_length(out) > WORKER_OUTPUT_MAX) {
		mcp_send_error(req, 503, m->id, RPC_APP_ERROR, KIND_BUSY, "the server is not reading; try again later");
		return;
	}
	if (m->type == RPC_REQUEST) {
		if (s->n_pending >= MCP_PENDING_MAX) {
			mcp_send_error(req, 503, m->id, RPC_APP_ERROR, KIND_BUSY,
				       "too many requests are waiting in this session (at most %d)", MCP_PENDING_MAX);
			return;
		}
		if (pending_find(s, m->id)) {
			mcp_send_error(req, 400, m->id, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST,
				       "a request with this id is already waiting for its answer");
			return;
		}
	}
	r = frame_write(out, m->root, PROTO_MAX_MESSAGE);
	if (r) {
		mcp_send_error(req, r == FRAME_E_TOO_LARGE ? 413 : 500, m->id, RPC_INVALID_REQUEST,
			       r == FRAME_E_TOO_LARGE ? KIND_TOO_LARGE : KIND_INTERNAL, "the message cannot be sent");
		return;
	}
	if (m->type == RPC_REQUEST) {
		pending_add(s, req, m, false);
		return;
	}
	/* A notification, or the client's answer to a server request. */
	http_common_headers(req);
	http_log_request(req, 202, NULL);
	evhttp_send_reply(req, 202, NULL, NULL);
}

/* Does the Accept header list type (or a wildcard covering it)? */
static bool accepts(struct evhttp_request *req, const char *type)
{
	const char *accept = evhttp_find_header(evhttp_request_get_input_headers(req), "Accept");
	const char *slash = strchr(type, '/');

	while (accept && *accept) {
		size_t n = strcspn(accept, ",");
		const char *end = accept + n, *p = accept;
		size_t len;

		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		len = strcspn(p, ";,");
		while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if ((len == strlen(type) && evutil_ascii_strncasecmp(p, type, len) == 0) ||
		    (len == 3 && strncmp(p, "*/*", 3) == 0) ||
		    (len == (size_t)(slash - type) + 2 && evutil_ascii_strncasecmp(p, type, len - 1) == 0 &&
		     p[len - 1] == '*'))
			return true;
		accept = *end ? end + 1 : end;
	}
	return false;
}

/* The body as one JSON-RPC message in *m: 0, or MCP_ANSWERED when it is
 * refused (the error has been sent; *m holds nothing). */
static int parse_body(struct evhttp_request *req, struct rpc_msg *m)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in), start = 0;
	const char *p;
	char detail[128] = "";
	int r;

	memset(m, 0, sizeof(*m));
	p = len ? (const char *)evbuffer_pullup(in, -1) : "";
	while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t' || p[len - 1] == '\r' || p[len - 1] == '\n'))
		len--;
	while (start < len && (p[start] == ' ' || p[start] == '\t' || p[start] == '\r' || p[start] == '\n'))
		start++;
	if (start == len) {
		mcp_send_error(req, 400, NULL, RPC_PARSE_ERROR, KIND_PARSE_ERROR, "the body must be a JSON-RPC message");
		return MCP_ANSWERED;
	}
	if (p[start] == '[') {
		mcp_send_error(req, 400, NULL, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST,
			       "JSON-RPC batches are not supported (MCP 2025-06-18): send one message per POST");
		return MCP_ANSWERED;
	}
	r = frame_parse_line(p + start, len - start, m, detail, sizeof(detail));
	if (r) {
		struct json_object *e = r == FRAME_E_INVALID_RPC && m->id ?
						rpc_error(m->id, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST, detail) :
						rpc_error_for_frame(r, detail);

		http_send_json(req, 400, e, NULL);
		rpc_msg_clear(m);
		return MCP_ANSWERED;
	}
	return 0;
}

static void mcp_post(struct http *h, struct evhttp_request *req, const char *name)
{
	const char *sid = evhttp_find_header(evhttp_request_get_input_headers(req), "Mcp-Session-Id");
	struct mcp_session *s;
	struct rpc_msg m;

	if (!accepts(req, "application/json") && !accepts(req, "text/event-stream")) {
		mcp_send_error(req, 406, NULL, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST,
			       "Accept must list application/json and text/event-stream");
		return;
	}
	if (parse_body(req, &m) != 0)
		return;
	if (!sid) {
		if (m.type == RPC_REQUEST && strcmp(m.method, "initialize") == 0)
			session_create(h, req, name, &m);
		else
			mcp_send_error(req, 400, m.id, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST,
				       "an Mcp-Session-Id header is required (a session starts with initialize)");
		rpc_msg_clear(&m);
		return;
	}
	s = session_find(h, sid);
	if (!s || strcmp(s->server, name) != 0 || !s->bev)
		mcp_send_error(req, 404, m.id, RPC_INVALID_REQUEST, KIND_NOT_FOUND,
			       "no such session (it may have ended): start a new one with initialize");
	else
		forward(s, req, &m);
	rpc_msg_clear(&m);
}

static void stream_gone(struct held *hd)
{
	struct mcp_stream *st = (struct mcp_stream *)hd;
	struct mcp_session *s = st->s;

	log_debug("%s: MCP session %.8s: the GET stream closed", s->server, s->id);
	s->stream = NULL;
	s->active_ms = http_now_ms();
	free(st);
}

/* The live session of server name that req's Mcp-Session-Id names (GET
 * and DELETE), or NULL after answering 400 (no header) or 404. */
static struct mcp_session *session_of_request(struct http *h, struct evhttp_request *req, const char *name)
{
	const char *sid = evhttp_find_header(evhttp_request_get_input_headers(req), "Mcp-Session-Id");
	struct mcp_session *s;

	if (!sid) {
		mcp_send_error(req, 400, NULL, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST,
			       "an Mcp-Session-Id header is required");
		return NULL;
	}
	s = session_find(h, sid);
	if (!s || strcmp(s->server, name) != 0 || !s->bev) {
		mcp_send_error(req, 404, NULL, RPC_INVALID_REQUEST, KIND_NOT_FOUND,
			       "no such session (it may have ended)");
		return NULL;
	}
	return s;
}

static void mcp_get(struct http *h, struct evhttp_request *req, const char *name)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct mcp_session *s;
	struct mcp_stream *st;

	if (!accepts(req, "text/event-stream")) {
		mcp_send_error(req, 406, NULL, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST,
			       "the GET stream is text/event-stream: Accept must list it");
		return;
	}
	s = session_of_request(h, req, name);
	if (!s)
		return;
	/* A client that opens a new stream has given up on the old one. */
	if (s->stream) {
		log_info("%s: MCP session %.8s: a new GET stream replaces the open one", s->server, s->id);
		stream_free(s, true);
	}
	st = xcalloc(1, sizeof(*st));
	st->s = s;
	s->active_ms = http_now_ms();
	http_common_headers(req);
	evhttp_add_header(out, "Content-Type", "text/event-stream");
	evhttp_add_header(out, "Cache-Control", "no-cache");
	evhttp_add_header(out, "Mcp-Session-Id", s->id);
	http_log_request(req, 200, "(MCP stream)");
	held_init(&st->held, h, req, stream_gone);
	s->stream = st;
	evhttp_send_reply_start(req, 200, NULL);
	queue_flush(s);
}

static void mcp_delete(struct http *h, struct evhttp_request *req, const char *name)
{
	struct mcp_session *s;

	s = session_of_request(h, req, name);
	if (!s)
		return;
	log_info("%s: MCP session %.8s ended by the client", s->server, s->id);
	session_end(s, true, 404, RPC_INVALID_REQUEST, KIND_NOT_FOUND, "the session was ended with DELETE");
	http_common_headers(req);
	http_log_request(req, 204, NULL);
	evhttp_send_reply(req, 204, NULL, NULL);
}

void mcp_handle(struct http *h, struct evhttp_request *req, const char *name)
{
	switch (evhttp_request_get_command(req)) {
	case EVHTTP_REQ_POST:
		mcp_post(h, req, name);
		break;
	case EVHTTP_REQ_GET:
		mcp_get(h, req, name);
		break;
	case EVHTTP_REQ_DELETE:
		mcp_delete(h, req, name);
		break;
	default:
		/* server.c answers 405 before we get here. */
		http_send_error(req, 405, "method_not_allowed", "not allowed here");
		break;
	}
}

void mcp_ping(struct http *h)
{
	struct mcp_session *s;

	/* An SSE comment: clients ignore it, dead connections show. */
	LIST_FOREACH(s, &h->sessions, link) {
		char who[192];

		if (!s->stream)
			continue;
		snprintf(who, sizeof(who), "%s: MCP session %.8s: the GET stream", s->server, s->id);
		held_stream(&s->stream->held, ": ping\n\n", 8, who);
	}
}

void mcp_idle_check(struct http *h)
{
	struct mcp_session *s, *next;
	int64_t now = http_now_ms();

	for (s = LIST_FIRST(&h->sessions); s; s = next) {
		next = LIST_NEXT(s, link);
		if (!s->bev || s->n_pending || s->stream || now - s->active_ms < (int64_t)MCP_IDLE_S * 1000)
			continue;
		log_info("%s: MCP session %.8s: idle for %d minutes; ending it", s->server, s->id, MCP_IDLE_S / 60);
		session_end(s, false, 0, 0, NULL, NULL);
	}
}

void mcp_free_all(struct http *h)
{
	while (!LIST_EMPTY(&h->sessions))
		session_end(LIST_FIRST(&h->sessions), false, 0, 0, NULL, NULL);
}
