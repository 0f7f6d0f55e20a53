/*
 * The HTTP front door of the http child: what every request goes through
 * before a route sees it, and the replies every route sends.
 *
 * In order, a request is refused when the child is shutting down, when its
 * Host (and Origin, if any) does not name this server's own address (DNS
 * rebinding: a page elsewhere must not reach the API through a name that
 * resolves to loopback), or when its target is not a path. The static UI
 * needs nothing more; every other route needs the API key (X-API-Key, or
 * ?apikey= for tools), which is compared in constant time and then wiped
 * from the request with the rest of the query. Then the route and its
 * method are checked and the request goes to api.c, static.c, events.c or
 * mcp.c. libevent's evhttp enforces the header and body limits and the
 * idle timeout (http.c sets them with the listener); conn.c caps the
 * connections and the time each may take to send its request.
 *
 * A request answered later (a keeper call, an MCP request, a stream) is
 * "held": the client may go away first, and held_* tell the owner.
 *
 * What it may touch: the listening socket's clients. Everything a client
 * sends is untrusted and affects its own request only; logs carry the
 * method, the path (never the query: it may hold the key) and the status.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <sodium.h>

#include "http.h"
#include "log.h"
#include "proto.h"
#include "request.h"
#include "secret.h"
#include "util.h"

#define CSP_API "default-src 'none'; frame-ancestors 'none'"

enum route_id {
	ROUTE_NONE,
	ROUTE_STATIC,
	ROUTE_API,
	ROUTE_EVENTS,
	ROUTE_MCP,
	ROUTE_TOOLS,
};

struct route {
	enum route_id id;
	unsigned methods;	/* EVHTTP_REQ_* allowed */
	const char *allow;	/* the Allow header for 405 */
	const struct ui_file *file;	/* ROUTE_STATIC */
	enum api_what api;	/* ROUTE_API */
	char raw_name[3 * SERVER_NAME_MAX + 1];
	bool bad_name;		/* a name segment too long to be one */
};

/* -- small helpers -- */

int http_status_for_kind(const char *kind)
{
	static const struct {
		const char *kind;
		int status;
	} map[] = {
		{ KIND_NOT_FOUND, 404 },      { KIND_NOT_OAUTH, 400 },     { KIND_FORBIDDEN, 403 },
		{ KIND_INVALID_PARAMS, 400 }, { KIND_BUSY, 409 },	   { KIND_LOGIN_FAILED, 502 },
		{ KIND_UNAVAILABLE, 503 },   { KIND_EXISTS, 409 },	   { KIND_CONFLICT, 409 },
		{ KIND_INVALID_CONFIG, 400 },
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

/* A server name from the path, percent-decoded and checked: 0 or -EINVAL. */
static int server_name_decode(const char *raw, char *out, size_t len)
{
	char *dec;
	size_t n;
	int r = -EINVAL;

	/* Each name byte is at most three bytes percent-encoded. */
	if (!*raw || strlen(raw) > 3 * SERVER_NAME_MAX)
		return -EINVAL;
	dec = evhttp_uridecode(raw, 0, &n);
	if (!dec)
		fatal("out of memory");
	if (n > 0 && n <= SERVER_NAME_MAX && n < len && strlen(dec) == n) {
		r = 0;
		for (size_t i = 0; i < n; i++)
			if (!name_char(dec[i]))
				r = -EINVAL;
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

void http_send_error(struct evhttp_request *req, int status, const char *kind, const char *fmt, ...)
{
	struct json_object *o = json_object_new_object();
	char message[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	json_object_object_add(o, "success", json_object_new_boolean(0));
	json_object_object_add(o, "error", json_object_new_string(message));
	json_object_object_add(o, "kind", json_object_new_string(kind));
	http_send_json(req, status, o, NULL);
}

/* -- requests answered later: the client may go first -- */

/* The client's connection is going down (it closed, a write failed, or we
 * dropped it). A request libevent detached from the connection is ours to
 * free; one still attached goes with the connection. */
void held_closed(struct evhttp_connection *evcon, struct held *hd)
{
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
		evhttp_connection_free(evcon); /* runs held_closed (through conn.c) */
}

void held_init(struct held *hd, struct http *h, struct evhttp_request *req, void (*gone)(struct held *hd))
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);

	hd->h = h;
	hd->req = req;
	hd->gone = gone;
	conn_hold(h, evcon, hd);
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
		conn_hold(hd->h, evhttp_request_get_connection(req), NULL);
	hd->req = NULL;
	return req;
}

int held_stream(struct held *hd, const char *data, size_t len, const char *who)
{
	struct evhttp_connection *evcon = hd->req ? evhttp_request_get_connection(hd->req) : NULL;
	struct evbuffer *chunk;
	size_t queued;

	if (!evcon)
		return -EPIPE;
	queued = evbuffer_get_length(bufferevent_get_output(evhttp_connection_get_bufferevent(evcon)));
	/* One message bigger than the limit still goes to a client that has
	 * read everything so far. */
	if (queued > 0 && queued + len > HTTP_STREAM_OUTPUT_MAX) {
		log_warn("%s is not keeping up (%zu bytes it has not read, %zu more to send, limit %d); disconnecting it",
			 who, queued, len, HTTP_STREAM_OUTPUT_MAX);
		hd->dropped = true;
		evhttp_connection_free(evcon);
		return -EPIPE;
	}
	chunk = evbuffer_new();
	if (!chunk || evbuffer_add(chunk, data, len) < 0)
		fatal("out of memory");
	evhttp_send_reply_chunk(hd->req, chunk);
	evbuffer_free(chunk);
	return 0;
}

/* -- the checks: rebinding, API key -- */

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

/* -- routes -- */

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
	r->file = static_find(path);
	if (r->file) {
		r->id = ROUTE_STATIC;
		r->methods = EVHTTP_REQ_GET;
		r->allow = "GET";
		return;
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
		r->id = ROUTE_API;
		r->api = API_SERVERS;
		r->methods = EVHTTP_REQ_GET | EVHTTP_REQ_POST;
		r->allow = "GET, POST";
		return;
	}
	if (strncmp(path, servers, sizeof(servers) - 1) != 0 || path[sizeof(servers) - 1] != '/')
		return;
	p = path + sizeof(servers);
	take_segment(&p, r);
	if (!*p) {
		r->id = ROUTE_API;
		r->api = API_SERVER;
		r->methods = EVHTTP_REQ_GET | EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE;
		r->allow = "GET, PATCH, DELETE";
	} else if (strcmp(p, "/login") == 0) {
		r->id = ROUTE_API;
		r->api = API_LOGIN;
		r->methods = EVHTTP_REQ_POST;
		r->allow = "POST";
	} else if (strcmp(p, "/logout") == 0) {
		r->id = ROUTE_API;
		r->api = API_LOGOUT;
		r->methods = EVHTTP_REQ_POST;
		r->allow = "POST";
	} else if (strcmp(p, "/tools") == 0) {
		r->id = ROUTE_TOOLS;
		r->methods = EVHTTP_REQ_GET;
		r->allow = "GET";
	}
}

/* The route's server name, percent-decoded and checked: 0 or -EINVAL. */
static int route_name(const struct route *r, char *name, size_t len)
{
	return r->bad_name ? -EINVAL : server_name_decode(r->raw_name, name, len);
}

void http_request_cb(struct evhttp_request *req, void *arg)
{
	struct http *h = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	char name[SERVER_NAME_MAX + 1];
	struct api_page page = { -1, -1, "" };
	struct route r;

	conn_request_started(h, req);
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
	if (r.id == ROUTE_API && r.api == API_SERVERS)
		api_page_parse(req, &page);
	if (r.id == ROUTE_STATIC) {
		if (cmd != EVHTTP_REQ_GET) {
			evhttp_add_header(out, "Allow", r.allow);
			http_send_error(req, 405, "method_not_allowed", "%s is not allowed here", method_name(cmd));
			return;
		}
		static_serve(h, req, r.file);
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
	case ROUTE_API:
		r.api = manage_what(r.api, cmd);
		if (r.api == API_SERVERS && page.error[0]) {
			http_send_error(req, 400, KIND_INVALID_REQUEST, "%s", page.error);
		} else if (r.api == API_SERVERS) {
			api_list(h, req, &page);
		} else if (r.api == API_CREATE) {
			api_handle(h, req, r.api, NULL);
		} else if (route_name(&r, name, sizeof(name)) < 0) {
			char clean[64];

			http_clean(r.raw_name, clean, sizeof(clean));
			http_send_error(req, 404, KIND_NOT_FOUND, "no server named \"%s\"", clean);
		} else {
			api_handle(h, req, r.api, name);
		}
		break;
	case ROUTE_EVENTS:
		events_handle(h, req);
		break;
	case ROUTE_TOOLS:
		if (route_name(&r, name, sizeof(name)) < 0)
			http_send_error(req, 404, KIND_NOT_FOUND, "no server by that name");
		else
			tools_handle(h, req, name);
		break;
	case ROUTE_MCP:
		if (route_name(&r, name, sizeof(name)) < 0)
			http_send_error(req, 404, KIND_NOT_FOUND, "no server by that name");
		else
			mcp_handle(h, req, name);
		break;
	default:
		http_send_error(req, 404, KIND_NOT_FOUND, "no such route");
		break;
	}
}
