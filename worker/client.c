/*
 * One MCP client connection, handed over by the keeper on fd 4: a stream
 * socket speaking newline-delimited JSON-RPC (MCP's stdio framing).
 *
 * Each client is its own upstream session. This file owns what is the same
 * for every transport: reading and checking the client's messages, the
 * requests in flight (so that every request gets exactly one answer: the
 * upstream's, or an error when the upstream fails, times out or goes away),
 * and passing the upstream's messages back.
 *
 * Trust: the client is untrusted. Garbage gets a JSON-RPC error and the
 * connection goes on; a line over the size limit cannot be resynced and
 * closes that client only. The upstream is untrusted too: what it sends is
 * parsed and checked before it reaches the client, and never logged.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "frame.h"
#include "log.h"
#include "proto.h"
#include "util.h"
#include "worker.h"

static void client_write(struct client *c, struct json_object *msg)
{
	int r = frame_write(bufferevent_get_output(c->bev), msg, PROTO_MAX_MESSAGE);

	if (r)
		log_warn("client %llu: cannot queue a message: %s", (unsigned long long)c->number,
			 frame_strerror(r));
}

static void client_send_error(struct client *c, struct json_object *id, int code, const char *message)
{
	struct json_object *msg = rpc_error(id, code, KIND_UNAVAILABLE, message);

	if (!msg)
		fatal("out of memory");
	client_write(c, msg);
	json_object_put(msg);
}

/* -- requests in flight -- */

static struct pending *pending_free(struct pending *p)
{
	LIST_REMOVE(p, link);
	event_free(p->timer);
	json_object_put(p->id);
	free(p);
	return NULL;
}

static struct pending *pending_find(struct client *c, struct json_object *id)
{
	struct pending *p;

	if (!id)
		return NULL;
	LIST_FOREACH(p, &c->pending, link)
		if (json_object_equal(p->id, id))
			return p;
	return NULL;
}

bool client_is_pending(struct client *c, struct json_object *id)
{
	return pending_find(c, id) != NULL;
}

static void drained_cb(evutil_socket_t fd, short what, void *arg)
{
	client_shutdown(arg, "end of input, every request answered");
}

/*
 * A client that closed its sending side (an MCP client at the end of its
 * input) still gets the answers to what it asked; once the last one is out,
 * the connection closes. Deferred: this runs inside libcurl callbacks.
 */
static void client_check_drained(struct client *c)
{
	static const struct timeval now = { 0, 0 };

	if (!c->input_done || c->closing || !LIST_EMPTY(&c->pending))
		return;
	if (!c->drained)
		c->drained = evtimer_new(c->w->base, drained_cb, c);
	if (c->drained)
		evtimer_add(c->drained, &now);
}

static void pending_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pending *p = arg;
	struct client *c = p->c;
	char message[256];

	snprintf(message, sizeof(message), "upstream %s did not answer %s within %ld ms", c->w->name, p->method,
		 c->w->timeout_ms);
	log_warn("client %llu: %s", (unsigned long long)c->number, message);
	client_send_error(c, p->id, RPC_APP_ERROR, message);
	pending_free(p);
	client_check_drained(c);
}

static int pending_add(struct client *c, const struct rpc_msg *m)
{
	struct pending *p = calloc(1, sizeof(*p));
	struct timeval tv = { .tv_sec = c->w->timeout_ms / 1000, .tv_usec = (c->w->timeout_ms % 1000) * 1000 };

	if (!p)
		return -ENOMEM;
	p->c = c;
	p->id = json_object_get(m->id);
	snprintf(p->method, sizeof(p->method), "%s", m->method);
	p->timer = evtimer_new(c->w->base, pending_timeout_cb, p);
	if (!p->timer || evtimer_add(p->timer, &tv) < 0) {
		if (p->timer)
			event_free(p->timer);
		json_object_put(p->id);
		free(p);
		return -ENOMEM;
	}
	LIST_INSERT_HEAD(&c->pending, p, link);
	return 0;
}

void client_fail(struct client *c, struct json_object *id, int code, const char *fmt, ...)
{
	struct pending *p = pending_find(c, id);
	char message[512];
	va_list ap;

	if (!p)
		return;
	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	log_info("client %llu: %s: %s", (unsigned long long)c->number, p->method, message);
	client_send_error(c, p->id, code, message);
	pending_free(p);
	client_check_drained(c);
}

void client_fail_all(struct client *c, int code, const char *fmt, ...)
{
	char message[512];
	va_list ap;

	if (LIST_EMPTY(&c->pending))
		return;
	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	log_info("client %llu: %s", (unsigned long long)c->number, message);
	while (!LIST_EMPTY(&c->pending)) {
		struct pending *p = LIST_FIRST(&c->pending);

		client_send_error(c, p->id, code, message);
		pending_free(p);
	}
}

/* -- upstream -> client -- */

/* The protocol version negotiated at initialize, for MCP-Protocol-Version:
 * a header value, so visible ASCII only. */
static void client_note_version(struct client *c, const struct rpc_msg *m)
{
	struct json_object *v;
	const char *s;

	if (!m->result || !json_object_object_get_ex(m->result, "protocolVersion", &v) ||
	    !json_object_is_type(v, json_type_string))
		return;
	s = json_object_get_string(v);
	if (strlen(s) == 0 || strlen(s) > 64)
		return;
	for (const char *p = s; *p; p++)
		if (*p <= 0x20 || *p > 0x7e)
			return;
	free(c->protocol_version);
	c->protocol_version = strdup(s);
}

void client_deliver(struct client *c, const struct rpc_msg *m)
{
	int r;

	if (m->type == RPC_RESULT || m->type == RPC_ERROR) {
		struct pending *p = pending_find(c, m->id);

		if (!p) {
			/* Timed out already (the client has its error), or never asked. */
			log_debug("client %llu: dropping a response to no request in flight",
				  (unsigned long long)c->number);
			return;
		}
		if (strcmp(p->method, "initialize") == 0 && m->type == RPC_RESULT)
			client_note_version(c, m);
		r = frame_write(bufferevent_get_output(c->bev), m->root, PROTO_MAX_MESSAGE);
		if (r == FRAME_E_TOO_LARGE) {
			char message[128];

			snprintf(message, sizeof(message), "the response of upstream %s is larger than %d bytes",
				 c->w->name, PROTO_MAX_MESSAGE);
			client_send_error(c, p->id, RPC_INTERNAL_ERROR, message);
		} else if (r) {
			log_warn("client %llu: cannot queue a response: %s", (unsigned long long)c->number,
				 frame_strerror(r));
		}
		pending_free(p);
		client_check_drained(c);
		return;
	}
	/* A server-initiated request or notification. */
	r = frame_write(bufferevent_get_output(c->bev), m->root, PROTO_MAX_MESSAGE);
	if (r)
		log_warn("client %llu: dropping a message from upstream %s: %s", (unsigned long long)c->number,
			 c->w->name, frame_strerror(r));
}

void client_deliver_text(struct client *c, const char *text, size_t len)
{
	char detail[128] = "";
	struct rpc_msg m;
	int r;

	while (len > 0 && strchr(" \t\r\n", text[0])) {
		text++;
		len--;
	}
	while (len > 0 && strchr(" \t\r\n", text[len - 1]))
		len--;
	if (len == 0)
		return;
	if (text[0] == '[') {
		/* A JSON-RPC batch: each element on its own line. */
		struct json_tokener *tok = json_tokener_new();
		struct json_object *arr;

		if (!tok)
			fatal("out of memory");
		arr = json_tokener_parse_ex(tok, text, (int)len);
		if (!arr || json_tokener_get_parse_end(tok) != len || !json_object_is_type(arr, json_type_array)) {
			log_warn("client %llu: upstream %s sent a malformed batch", (unsigned long long)c->number,
				 c->w->name);
		} else {
			for (size_t i = 0; i < json_object_array_length(arr); i++) {
				memset(&m, 0, sizeof(m));
				if (rpc_classify(json_object_array_get_idx(arr, i), &m, detail, sizeof(detail)) == 0)
					client_deliver(c, &m);
				else
					log_warn("client %llu: upstream %s sent a bad message: %s",
						 (unsigned long long)c->number, c->w->name, detail);
			}
		}
		json_object_put(arr);
		json_tokener_free(tok);
		return;
	}
	r = frame_parse_line(text, len, &m, detail, sizeof(detail));
	if (r == 0)
		client_deliver(c, &m);
	else
		log_warn("client %llu: upstream %s sent a bad message: %s", (unsigned long long)c->number, c->w->name,
			 r < 0 ? strerror(-r) : detail);
	rpc_msg_clear(&m);
}

/* -- client -> upstream -- */

static void client_handle(struct client *c, const struct rpc_msg *m)
{
	int r;

	if (m->type == RPC_REQUEST) {
		if (pending_find(c, m->id)) {
			struct json_object *msg = rpc_error(m->id, RPC_INVALID_REQUEST, KIND_INVALID_REQUEST,
							    "a request with this id is already in flight");

			client_write(c, msg);
			json_object_put(msg);
			return;
		}
		if (pending_add(c, m) < 0)
			fatal("out of memory");
	}
	if (c->w->transport == TRANSPORT_STDIO)
		r = stdio_send(c, m->root);
	else
		r = http_send(c, m, m->root);
	if (r < 0 && m->type == RPC_REQUEST)
		client_fail(c, m->id, RPC_INTERNAL_ERROR, "upstream %s: %s", c->w->name, strerror(-r));
}

static void client_flush_close_cb(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;

	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		client_close(c, "closed");
}

static void client_closing_event_cb(struct bufferevent *bev, short what, void *arg)
{
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		client_close(arg, "closed");
}

void client_shutdown(struct client *c, const char *why)
{
	if (c->closing)
		return;
	log_info("client %llu: closing: %s", (unsigned long long)c->number, why);
	c->closing = true;
	if (c->w->transport == TRANSPORT_STDIO)
		stdio_client_close(c);
	else
		http_client_close(c);
	bufferevent_disable(c->bev, EV_READ);
	bufferevent_setcb(c->bev, NULL, client_flush_close_cb, client_closing_event_cb, c);
	bufferevent_enable(c->bev, EV_WRITE);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		client_close(c, "closed");
}

static void client_read_cb(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;

	for (;;) {
		struct json_object *msg;
		struct rpc_msg m;
		char detail[128] = "";
		int r = frame_read(bufferevent_get_input(bev), PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			return;
		if (r < 0) {
			rpc_msg_clear(&m);
			client_close(c, strerror(-r));
			return;
		}
		if (r > 0) {
			log_info("client %llu: %s", (unsigned long long)c->number, detail[0] ? detail : frame_strerror(r));
			msg = rpc_error_for_frame(r, detail);
			if (!msg)
				fatal("out of memory");
			if (m.id)
				json_object_object_add(msg, "id", json_object_get(m.id));
			client_write(c, msg);
			json_object_put(msg);
			rpc_msg_clear(&m);
			if (r == FRAME_E_TOO_LARGE) {
				/* No resync possible: say why, then close. */
				client_shutdown(c, "message too large");
				return;
			}
			continue;
		}
		client_handle(c, &m);
		rpc_msg_clear(&m);
	}
}

static void client_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct client *c = arg;

	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && !LIST_EMPTY(&c->pending)) {
		log_info("client %llu: end of input; answering what is in flight", (unsigned long long)c->number);
		c->input_done = true;
		bufferevent_disable(bev, EV_READ);
	} else if (what & BEV_EVENT_EOF)
		client_close(c, "disconnected");
	else if (what & BEV_EVENT_ERROR)
		client_close(c, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void client_kick_cb(evutil_socket_t fd, short what, void *arg)
{
	http_kick(arg);
}

int client_new(struct worker *w, uint64_t number, int fd)
{
	struct client *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	c->w = w;
	c->number = number;
	LIST_INIT(&c->pending);
	LIST_INIT(&c->hreqs);
	c->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
	c->kick = event_new(w->base, -1, 0, client_kick_cb, c);
	if (!c->bev || !c->kick) {
		if (c->bev)
			bufferevent_free(c->bev);
		else
			fd_close(fd);
		if (c->kick)
			event_free(c->kick);
		free(c);
		return -ENOMEM;
	}
	frame_bev_setup(c->bev, PROTO_MAX_MESSAGE);
	bufferevent_setcb(c->bev, client_read_cb, NULL, client_event_cb, c);
	LIST_INSERT_HEAD(&w->clients, c, link);
	w->n_clients++;
	log_info("client %llu connected (%zu now)", (unsigned long long)number, w->n_clients);
	if (w->transport == TRANSPORT_STDIO && stdio_open(c) < 0) {
		client_close(c, "cannot start the command");
		return 0;
	}
	client_start_reading(c);
	return 0;
}

void client_start_reading(struct client *c)
{
	if (c->closing)
		return;
	bufferevent_enable(c->bev, EV_WRITE);
	if (!c->w->oauth || c->w->token_known)
		bufferevent_enable(c->bev, EV_READ);
}

void client_close(struct client *c, const char *why)
{
	struct worker *w = c->w;

	log_info("client %llu: %s", (unsigned long long)c->number, why);
	if (c->closing)
		; /* the upstream side has ended already */
	else if (w->transport == TRANSPORT_STDIO)
		stdio_client_close(c);
	else
		http_client_close(c);
	while (!LIST_EMPTY(&c->pending))
		pending_free(LIST_FIRST(&c->pending));
	bufferevent_free(c->bev);
	event_free(c->kick);
	if (c->drained)
		event_free(c->drained);
	free(c->session_id);
	free(c->protocol_version);
	free(c->endpoint);
	LIST_REMOVE(c, link);
	w->n_clients--;
	free(c);
	if (!w->stopping) {
		struct json_object *params = json_object_new_object();

		json_object_object_add(params, "clients", json_object_new_int64((int64_t)w->n_clients));
		worker_send(w, rpc_notification(METHOD_CLIENT_CLOSED, params));
	}
}
