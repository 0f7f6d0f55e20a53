/*
 * The HTTP transports of a worker, on libcurl's multi interface.
 *
 * Streamable HTTP: every client message is POSTed to the upstream URL; the
 * answer is JSON (one message or a batch), an event stream (each "message"
 * event one JSON-RPC message) or 202. The session id the server gives at
 * initialize travels on every later request, with the negotiated protocol
 * version; once the client has sent notifications/initialized a GET stream
 * carries server-initiated messages; a DELETE ends the session when the
 * client goes.
 *
 * HTTP+SSE (2024-11-05): a GET event stream per client is the session; its
 * first event ("endpoint") says where to POST messages (it must stay on the
 * upstream's origin: the token goes there); responses arrive as "message"
 * events on the stream. Messages sent before the endpoint is known wait.
 *
 * Tokens: each transfer carries the worker's current access token. A 401
 * sends token.invalid with that token to the keeper (once per token: the
 * transfers that meet the same 401 wait together) and replays each waiting
 * transfer once with the token the keeper answers; a second 401 is an error.
 * The Authorization line is built in a buffer that is wiped at once; the
 * header list that holds it is wiped when dropped (struct headers). Neither
 * tokens nor bodies are logged.
 *
 * Per request, a session reuses what it can: its POSTs share one header
 * list and one easy handle between them (built at its first request, again
 * when the token or the session changes), and libcurl's connection cache
 * keeps the connection to the upstream open between requests.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <sodium.h>

#include "challenge.h"
#include "curlev.h"
#include "frame.h"
#include "log.h"
#include "proto.h"
#include "secret.h"
#include "util.h"
#include "worker.h"

/* An error response worth reading is short; more is dropped unread. */
#define HTTP_MAX_ERROR_BODY (64 * 1024)
#define HTTP_MAX_SESSION_ID 256

enum hreq_kind {
	HREQ_POST,		/* one client message */
	HREQ_STREAM,		/* the GET event stream */
	HREQ_DELETE,		/* ends a session; may outlive its client */
};

enum hreq_state {
	HREQ_QUEUED,		/* HTTP+SSE: waiting for the endpoint */
	HREQ_RUNNING,
	HREQ_WAITING,		/* got a 401, waiting for the keeper's new token */
};

struct hreq {
	LIST_ENTRY(hreq) link;		/* worker->hreqs */
	LIST_ENTRY(hreq) clink;		/* client->hreqs, when c */
	LIST_ENTRY(hreq) wlink;		/* worker->token_waiters, when HREQ_WAITING */
	struct worker *w;
	struct client *c;
	enum hreq_kind kind;
	enum hreq_state state;
	char *url;
	char *body;
	size_t body_len;
	struct json_object *id;		/* the request's id; NULL when no answer is due */
	bool initialize;
	bool initialized_notif;
	char *session_id;		/* DELETE: the session it ends */
	/* Streamable HTTP, SEP-2243: the Mcp-Method and Mcp-Name values (encoded),
	 * and the MCP-Protocol-Version the request names itself (its _meta, or a
	 * 2026-07-28 initialize); NULL when not sent. */
	char *mcp_method, *mcp_name, *init_version;
	uint64_t token_gen;		/* the token this transfer carried */
	bool replayed;
	int step_ups;			/* 403 insufficient_scope answers it has had */

	CURL *easy;
	struct headers *headers;
	long status;
	bool started;			/* the first body bytes came */
	bool event_stream;
	bool too_large;
	bool bearer;			/* WWW-Authenticate: Bearer ... */
	char *step_scope;		/* its error="insufficient_scope" challenge's scope */
	char *new_session;		/* Mcp-Session-Id of the response */
	struct evbuffer *resp;
	struct sse sse;
	char why[160];			/* why the write callback ended the transfer */
	char errbuf[CURL_ERROR_SIZE];
};

static void hreq_fail(struct hreq *h, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static size_t hreq_header_cb(char *p, size_t size, size_t nmemb, void *arg);
static size_t hreq_write_cb(char *p, size_t size, size_t nmemb, void *arg);

/* -- request headers -- */

/*
 * The header lines of a transfer. Transfers that send the same lines share
 * one list: a session's POSTs send the same ones until the token, the
 * session id or the negotiated protocol version changes, so their list
 * (with its copy of the token) is built once for all of them. Reference
 * counted: a transfer holds the list it started with for as long as
 * libcurl may read it. Wiped when the last holder lets go; a client drops
 * its own as soon as the token changes.
 */
struct headers {
	unsigned refs;
	uint64_t token_gen;		/* the token in the Authorization line */
	char *session;			/* the Mcp-Session-Id sent, or NULL */
	char *version;			/* the MCP-Protocol-Version sent, or NULL */
	char *method, *name;		/* the Mcp-Method and Mcp-Name sent, or NULL */
	struct curl_slist *list;
};

static void slist_wipe_free(struct curl_slist *l)
{
	for (struct curl_slist *h = l; h; h = h->next)
		sodium_memzero(h->data, strlen(h->data));
	curl_slist_free_all(l);
}

static struct headers *headers_unref(struct headers *hd)
{
	if (hd && --hd->refs == 0) {
		slist_wipe_free(hd->list);
		free(hd->session);
		free(hd->version);
		free(hd->method);
		free(hd->name);
		free(hd);
	}
	return NULL;
}

static bool same_string(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

/* What a request says besides the token: the lines a list may be reused for. */
struct header_values {
	const char *session, *version, *method, *name;
};

/* Whether hd still says what a request of this session must say (a client
 * calling one tool again and again keeps its list). */
static bool headers_hold(const struct headers *hd, const struct worker *w, const struct header_values *v)
{
	return hd->token_gen == w->token_gen && same_string(hd->session, v->session) &&
	       same_string(hd->version, v->version) && same_string(hd->method, v->method) &&
	       same_string(hd->name, v->name);
}

static int slist_add(struct curl_slist **l, const char *s)
{
	struct curl_slist *n = curl_slist_append(*l, s);

	if (!n)
		return -ENOMEM;
	*l = n;
	return 0;
}

static int slist_addf(struct curl_slist **l, const char *fmt, const char *v)
{
	char *line;
	int r;

	if (asprintf(&line, fmt, v) < 0)
		return -ENOMEM;
	r = slist_add(l, line);
	free(line);
	return r;
}

/*
 * "Authorization: Bearer TOKEN". The line is built in ordinary memory and
 * wiped: curl_slist_append copies it into curl's own memory at once, so a
 * guarded sodium_malloc buffer here would protect nothing and cost nine
 * system calls (measured by tests/bench: a third of the worker's time
 * under load, when every request built its own).
 */
static int slist_add_token(struct curl_slist **l, const struct secret *token)
{
	static const char prefix[] = "Authorization: Bearer ";
	size_t len = sizeof(prefix) - 1 + token->len + 1;
	char *line = xmalloc(len);
	int r;

	memcpy(line, prefix, sizeof(prefix) - 1);
	memcpy(line + sizeof(prefix) - 1, token->data, token->len);
	line[len - 1] = '\0';
	r = slist_add(l, line);
	sodium_memzero(line, len);
	free(line);
	return r;
}

/* The lines of a kind of request with the current token; session and
 * version when the transport sends them. NULL when libcurl is short of
 * memory. */
static struct headers *headers_new(struct worker *w, enum hreq_kind kind, const struct header_values *v)
{
	const char *session = v->session, *version = v->version;
	struct headers *hd = xcalloc(1, sizeof(*hd));
	struct curl_slist **l;

	hd->refs = 1;
	hd->token_gen = w->token_gen;
	l = &hd->list;
	hd->session = xstrdup(session);
	hd->version = xstrdup(version);
	hd->method = xstrdup(v->method);
	hd->name = xstrdup(v->name);
	switch (kind) {
	case HREQ_POST:
		if (slist_add(l, "Content-Type: application/json") < 0 ||
		    slist_add(l, "Accept: application/json, text/event-stream") < 0)
			return headers_unref(hd);
		break;
	case HREQ_STREAM:
		if (slist_add(l, "Accept: text/event-stream") < 0)
			return headers_unref(hd);
		break;
	case HREQ_DELETE:
		break;
	}
	if ((session && slist_addf(l, "Mcp-Session-Id: %s", session) < 0) ||
	    (version && slist_addf(l, "MCP-Protocol-Version: %s", version) < 0) ||
	    (v->method && slist_addf(l, "Mcp-Method: %s", v->method) < 0) ||
	    (v->name && slist_addf(l, "Mcp-Name: %s", v->name) < 0) || slist_add(l, "Expect:") < 0)
		return headers_unref(hd);
	for (char **line = w->headers; line && *line; line++)
		if (slist_add(l, *line) < 0)
			return headers_unref(hd);
	if (w->oauth && slist_add_token(l, w->token) < 0)
		return headers_unref(hd);
	return hd;
}

/* -- transfers -- */

/* A handle with what every transfer of a kind has in common; a POST handle
 * serves one request after another. NULL when memory is short. */
static CURL *easy_new(struct worker *w, enum hreq_kind kind)
{
	CURL *e = curl_easy_init();

	if (!e)
		return NULL;
	if (curlev_easy_setup(w->curl, e) < 0 ||
	    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, WORKER_CONNECT_TIMEOUT_S) != CURLE_OK ||
	    /* The client's request timer answers first; this only bounds the transfer. */
	    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, kind == HREQ_STREAM ? 0L : w->timeout_ms + 1000) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_USERAGENT, "mcpkeeper/" MCPKEEPER_VERSION) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, hreq_header_cb) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, hreq_write_cb) != CURLE_OK ||
	    (kind == HREQ_POST && curl_easy_setopt(e, CURLOPT_POST, 1L) != CURLE_OK) ||
	    (kind == HREQ_DELETE && curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE") != CURLE_OK)) {
		curl_easy_cleanup(e);
		return NULL;
	}
	return e;
}

/* Between two requests a handle points at nothing of the last one. */
static void easy_park(CURL *e)
{
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, NULL);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, NULL);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);
	curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
}

/* A POST of a client: it shares the client's handle and header list. */
static bool hreq_session_post(const struct hreq *h)
{
	return h->kind == HREQ_POST && h->c;
}

static void hreq_reset(struct hreq *h)
{
	if (h->easy) {
		curl_multi_remove_handle(curlev_multi(h->w->curl), h->easy);
		if (hreq_session_post(h) && !h->c->post_easy) {
			easy_park(h->easy);
			h->c->post_easy = h->easy;
		} else {
			curl_easy_cleanup(h->easy);
		}
		h->easy = NULL;
	}
	h->headers = headers_unref(h->headers);
	h->status = 0;
	h->started = h->event_stream = h->too_large = h->bearer = false;
	free(h->step_scope);
	h->step_scope = NULL;
	free(h->new_session);
	h->new_session = NULL;
	if (h->resp)
		evbuffer_drain(h->resp, evbuffer_get_length(h->resp));
	sse_clear(&h->sse);
	h->why[0] = '\0';
	h->errbuf[0] = '\0';
}

static struct hreq *hreq_free(struct hreq *h)
{
	struct worker *w = h->w;

	hreq_reset(h);
	LIST_REMOVE(h, link);
	if (h->c) {
		LIST_REMOVE(h, clink);
		if (h->c->stream == h)
			h->c->stream = NULL;
	}
	if (h->state == HREQ_WAITING)
		LIST_REMOVE(h, wlink);
	if (h->resp)
		evbuffer_free(h->resp);
	json_object_put(h->id);
	free(h->url);
	free(h->body);
	free(h->session_id);
	free(h->mcp_method);
	free(h->mcp_name);
	free(h->init_version);
	free(h);
	worker_check_stop(w);
	return NULL;
}

static struct hreq *hreq_new(struct worker *w, struct client *c, enum hreq_kind kind, const char *url)
{
	struct hreq *h = xcalloc(1, sizeof(*h));

	h->url = xstrdup(url);
	h->resp = evbuffer_new();
	if (!h->resp)
		fatal("out of memory");
	h->w = w;
	h->c = c;
	h->kind = kind;
	h->state = HREQ_QUEUED;
	LIST_INSERT_HEAD(&w->hreqs, h, link);
	if (c)
		LIST_INSERT_HEAD(&c->hreqs, h, clink);
	return h;
}

/* A header value we put on the wire: visible ASCII only. */
static bool header_value_ok(const char *s, size_t len, size_t max)
{
	if (len == 0 || len > max)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

static size_t hreq_header_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct hreq *h = arg;
	size_t n = size * nmemb, len = n;
	static const char sid[] = "mcp-session-id:", www[] = "www-authenticate:";

	while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == '\n'))
		len--;
	if (len > sizeof(sid) - 1 && strncasecmp(p, sid, sizeof(sid) - 1) == 0) {
		const char *v = p + sizeof(sid) - 1;
		size_t vlen = len - (sizeof(sid) - 1);

		while (vlen > 0 && (*v == ' ' || *v == '\t')) {
			v++;
			vlen--;
		}
		free(h->new_session);
		h->new_session = header_value_ok(v, vlen, HTTP_MAX_SESSION_ID) ? xstrndup(v, vlen) : NULL;
	} else if (len > sizeof(www) - 1 && strncasecmp(p, www, sizeof(www) - 1) == 0) {
		const char *v = p + sizeof(www) - 1;
		struct challenge_bearer cb;

		while (*v == ' ' || *v == '\t')
			v++;
		if ((size_t)(v - p) + 6 <= len && strncasecmp(v, "bearer", 6) == 0)
			h->bearer = true;
		/* RFC 6750 section 3.1: the token is good but its scope is not
		 * enough; the challenge names the scope wanted (the parser keeps
		 * printable ASCII only, so it can go on to the keeper). */
		if (!h->step_scope && challenge_parse(v, len - (size_t)(v - p), &cb) == 0 && cb.found &&
		    strcmp(cb.error, "insufficient_scope") == 0 && cb.scope[0])
			h->step_scope = xstrdup(cb.scope);
	}
	return n;
}

/* Same scheme, host and port as the upstream URL: where the token may go. */
static bool same_origin(const char *a, const char *b)
{
	CURLU *ua = curl_url(), *ub = curl_url();
	const CURLUPart parts[] = { CURLUPART_SCHEME, CURLUPART_HOST, CURLUPART_PORT };
	bool same = ua && ub && curl_url_set(ua, CURLUPART_URL, a, 0) == CURLUE_OK &&
		    curl_url_set(ub, CURLUPART_URL, b, 0) == CURLUE_OK;

	for (size_t i = 0; same && i < ARRAY_SIZE(parts); i++) {
		char *pa = NULL, *pb = NULL;

		same = curl_url_get(ua, parts[i], &pa, CURLU_DEFAULT_PORT) == CURLUE_OK &&
		       curl_url_get(ub, parts[i], &pb, CURLU_DEFAULT_PORT) == CURLUE_OK && strcasecmp(pa, pb) == 0;
		curl_free(pa);
		curl_free(pb);
	}
	curl_url_cleanup(ua);
	curl_url_cleanup(ub);
	return same;
}

/* HTTP+SSE: the endpoint event, resolved against the upstream URL. */
static void hreq_endpoint(struct hreq *h, const char *data)
{
	struct client *c = h->c;
	CURLU *u = curl_url();
	char *url = NULL;

	if (!u)
		fatal("out of memory");
	if (c->endpoint) {
		log_debug("client %llu: ignoring a second endpoint event", (unsigned long long)c->number);
	} else if (curl_url_set(u, CURLUPART_URL, h->w->url, 0) != CURLUE_OK ||
		   curl_url_set(u, CURLUPART_URL, data, 0) != CURLUE_OK ||
		   curl_url_get(u, CURLUPART_URL, &url, 0) != CURLUE_OK) {
		snprintf(h->why, sizeof(h->why), "upstream %s announced an invalid endpoint", h->w->name);
	} else if (!same_origin(h->w->url, url)) {
		snprintf(h->why, sizeof(h->why), "upstream %s announced an endpoint on another origin", h->w->name);
	} else {
		c->endpoint = xstrdup(url);
		log_debug("client %llu: HTTP+SSE session ready", (unsigned long long)c->number);
		/* Posting is for the loop: this runs inside libcurl. */
		event_active(c->kick, 0, 0);
	}
	curl_free(url);
	curl_url_cleanup(u);
}

static void hreq_event(void *arg, const char *event, const char *data, size_t len)
{
	struct hreq *h = arg;

	if (!h->c || h->why[0])
		return;
	if (strcmp(event, "message") == 0)
		client_deliver_text(h->c, data, len);
	else if (strcmp(event, "endpoint") == 0 && h->kind == HREQ_STREAM && h->w->transport == TRANSPORT_SSE)
		hreq_endpoint(h, data);
}

static size_t hreq_write_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct hreq *h = arg;
	size_t n = size * nmemb;

	if (!h->started) {
		char *ctype = NULL;

		h->started = true;
		curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &h->status);
		curl_easy_getinfo(h->easy, CURLINFO_CONTENT_TYPE, &ctype);
		h->event_stream = h->status >= 200 && h->status < 300 && ctype &&
				  strncasecmp(ctype, "text/event-stream", 17) == 0;
		if (h->event_stream && sse_init(&h->sse, PROTO_MAX_MESSAGE) < 0)
			return 0;
	}
	if (h->event_stream) {
		int r = sse_feed(&h->sse, p, n, hreq_event, h);

		if (r < 0) {
			h->too_large = true;
			return 0;
		}
		/* An invalid endpoint ends the stream. */
		return h->why[0] ? 0 : n;
	}
	if (h->status < 200 || h->status >= 300) {
		size_t room = HTTP_MAX_ERROR_BODY - evbuffer_get_length(h->resp);

		evbuffer_add(h->resp, p, n < room ? n : room);
		return n;
	}
	if (n > WORKER_MAX_BODY - evbuffer_get_length(h->resp)) {
		h->too_large = true;
		return 0;
	}
	return evbuffer_add(h->resp, p, n) < 0 ? 0 : n;
}

/* Starts (or restarts) the transfer with the current token. -EACCES when
 * the upstream needs a token and there is none. */
static int hreq_start(struct hreq *h)
{
	struct worker *w = h->w;
	struct client *c = h->c;
	struct header_values v = { .method = h->mcp_method, .name = h->mcp_name };
	CURL *e;

	hreq_reset(h);
	if (w->oauth && !w->token)
		return -EACCES;
	if (w->transport == TRANSPORT_HTTP) {
		v.session = c ? c->session_id : h->session_id;
		v.version = h->init_version ? h->init_version : c ? c->protocol_version : NULL;
	}
	if (hreq_session_post(h)) {
		if (c->post_headers && !headers_hold(c->post_headers, w, &v))
			c->post_headers = headers_unref(c->post_headers);
		if (!c->post_headers && !(c->post_headers = headers_new(w, h->kind, &v)))
			return -ENOMEM;
		h->headers = c->post_headers;
		h->headers->refs++;
		e = c->post_easy ? TAKE_PTR(c->post_easy) : easy_new(w, h->kind);
	} else {
		if (!(h->headers = headers_new(w, h->kind, &v)))
			return -ENOMEM;
		e = easy_new(w, h->kind);
	}
	h->token_gen = w->token_gen;
	h->easy = e;
	if (!e)
		return -ENOMEM;
	if (curl_easy_setopt(e, CURLOPT_URL, h->url) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->headers->list) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_HEADERDATA, h) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_WRITEDATA, h) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, h->errbuf) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_PRIVATE, h) != CURLE_OK)
		return -ENOMEM;
	if (h->kind == HREQ_POST &&
	    (curl_easy_setopt(e, CURLOPT_POSTFIELDS, h->body) != CURLE_OK ||
	     curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)h->body_len) != CURLE_OK))
		return -ENOMEM;
	if (curl_multi_add_handle(curlev_multi(w->curl), e) != CURLM_OK)
		return -ENOMEM;
	h->state = HREQ_RUNNING;
	return 0;
}

/* Starts h; a failure to start is answered like any other. */
static void hreq_go(struct hreq *h)
{
	char message[256];
	int r = hreq_start(h);

	if (r == -EACCES)
		hreq_fail(h, RPC_APP_ERROR, "%s", worker_not_logged_in(h->w, message, sizeof(message)));
	else if (r < 0)
		hreq_fail(h, RPC_INTERNAL_ERROR, "upstream %s: cannot start a request: %s", h->w->name, strerror(-r));
}

/* HTTP+SSE: the session is gone; what waited for it fails with it. */
static void sse_session_lost(struct client *c, const char *message)
{
	struct hreq *h, *next;

	free(c->endpoint);
	c->endpoint = NULL;
	for (h = LIST_FIRST(&c->hreqs); h; h = next) {
		next = LIST_NEXT(h, clink);
		if (h->kind == HREQ_POST && h->state != HREQ_RUNNING) {
			if (h->id)
				client_fail(c, h->id, RPC_INTERNAL_ERROR, "%s", message);
			hreq_free(h);
		}
	}
	client_fail_all(c, RPC_INTERNAL_ERROR, "%s", message);
}

static void hreq_fail(struct hreq *h, int code, const char *fmt, ...)
{
	char message[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	if (h->c && h->kind == HREQ_POST && h->id) {
		client_fail(h->c, h->id, code, "%s", message);
	} else if (h->c && h->kind == HREQ_STREAM && h->w->transport == TRANSPORT_SSE) {
		struct client *c = h->c;

		hreq_free(h);
		sse_session_lost(c, message);
		return;
	} else {
		log_info("%s", message);
	}
	hreq_free(h);
}

/* -- 401 -- */

static void hreq_unauthorized(struct hreq *h)
{
	struct worker *w = h->w;
	char message[256];

	if (!w->oauth) {
		if (h->bearer) {
			worker_needs_login(w);
			hreq_fail(h, RPC_APP_ERROR,
				  "upstream %s requires an OAuth login: run `mcpctl auth login --server %s`", w->name,
				  w->name);
		} else {
			hreq_fail(h, RPC_APP_ERROR, "upstream %s answered HTTP 401 (unauthorized)", w->name);
		}
		return;
	}
	if (h->replayed) {
		hreq_fail(h, RPC_APP_ERROR, "upstream %s rejected the new token", w->name);
		return;
	}
	if (!w->token) {
		hreq_fail(h, RPC_APP_ERROR, "%s", worker_not_logged_in(w, message, sizeof(message)));
		return;
	}
	hreq_reset(h);
	if (h->token_gen != w->token_gen) {
		/* A newer token came while this one was out: that is the replay. */
		h->replayed = true;
		hreq_go(h);
		return;
	}
	h->state = HREQ_WAITING;
	LIST_INSERT_HEAD(&w->token_waiters, h, wlink);
	if (h->c && h->id)
		client_pending_hold(h->c, h->id, true);
	worker_token_invalid(w);
}

/*
 * -- 403 insufficient_scope: step-up --
 * A refresh cannot widen a grant (RFC 6749 section 6): the keeper decides
 * whether a new login happens (daemon/reauth.c bounds them) and answers
 * with the new token, or with an error naming `mcpctl auth login`. The
 * request waits like one that got a 401, its own timeout stopped meanwhile
 * (a login takes the user's time), and a new token replays it. Bounded
 * here too, in case the upstream never takes what the keeper brings.
 */
#define STEP_UPS_PER_REQUEST 3

static void hreq_insufficient_scope(struct hreq *h)
{
	struct worker *w = h->w;
	_cleanup_(freep) char *scope = TAKE_PTR(h->step_scope);
	const char *rev;
	char message[256];

	if (!oauth_scope_valid(scope)) {
		hreq_fail(h, RPC_APP_ERROR, "upstream %s answered HTTP 403 insufficient_scope with a scope that is no "
			  "OAuth scope list", w->name);
		return;
	}
	if (!w->oauth || h->kind != HREQ_POST || !h->c) {
		hreq_fail(h, RPC_APP_ERROR, "upstream %s answered HTTP 403: the token lacks scope \"%.200s\"", w->name,
			  scope);
		return;
	}
	if (!w->token) {
		hreq_fail(h, RPC_APP_ERROR, "%s", worker_not_logged_in(w, message, sizeof(message)));
		return;
	}
	if (++h->step_ups > STEP_UPS_PER_REQUEST) {
		hreq_fail(h, RPC_APP_ERROR, "upstream %s still refuses the token after %d logins for scope \"%.200s\"",
			  w->name, STEP_UPS_PER_REQUEST, scope);
		return;
	}
	rev = h->init_version ? h->init_version : h->c->protocol_version;
	hreq_reset(h);
	if (h->token_gen != w->token_gen) {
		hreq_go(h);	/* a newer token came meanwhile: try it first */
		return;
	}
	h->state = HREQ_WAITING;
	LIST_INSERT_HEAD(&w->token_waiters, h, wlink);
	if (h->id)
		client_pending_hold(h->c, h->id, true);
	worker_token_scope(w, scope, rev && strcmp(rev, MCP_HEADERS_REVISION) >= 0);
}

void http_token_changed(struct worker *w)
{
	struct client *c;

	/* Lists with the old token go once no transfer holds them. */
	LIST_FOREACH(c, &w->clients, link)
		c->post_headers = headers_unref(c->post_headers);
	while (!LIST_EMPTY(&w->token_waiters)) {
		struct hreq *h = LIST_FIRST(&w->token_waiters);

		LIST_REMOVE(h, wlink);
		h->state = HREQ_QUEUED;
		h->replayed = true;
		if (h->c && h->id)
			client_pending_hold(h->c, h->id, false);
		hreq_go(h);
	}
}

void http_token_unavailable(struct worker *w, const char *message)
{
	while (!LIST_EMPTY(&w->token_waiters)) {
		struct hreq *h = LIST_FIRST(&w->token_waiters);

		LIST_REMOVE(h, wlink);
		h->state = HREQ_QUEUED;
		hreq_fail(h, RPC_APP_ERROR, "%s", message);
	}
}

/* -- transfer results -- */

static void stream_open(struct client *c)
{
	struct hreq *h;

	if (c->stream)
		return;
	h = hreq_new(c->w, c, HREQ_STREAM, c->w->url);
	c->stream = h;
	hreq_go(h);
}

/* Whether the transfer got as far as a connection (a timeout after that is
 * the upstream being slow, not unreachable). */
static bool hreq_connected(struct hreq *h)
{
	curl_off_t t = 0;

	/* PRETRANSFER is set also on a reused connection (CONNECT_TIME is 0). */
	return h->started || (curl_easy_getinfo(h->easy, CURLINFO_PRETRANSFER_TIME_T, &t) == CURLE_OK && t > 0);
}

static void post_done(struct hreq *h, CURLcode result)
{
	struct worker *w = h->w;
	struct client *c = h->c;

	if (result != CURLE_OK) {
		if (h->too_large)
			hreq_fail(h, RPC_INTERNAL_ERROR, "the response of upstream %s is larger than %d bytes",
				  w->name, h->event_stream ? PROTO_MAX_MESSAGE : WORKER_MAX_BODY);
		else if (result == CURLE_OPERATION_TIMEDOUT && hreq_connected(h))
			hreq_fail(h, RPC_APP_ERROR, "upstream %s did not answer within %ld ms", w->name, w->timeout_ms);
		else
			hreq_fail(h, RPC_INTERNAL_ERROR, "upstream %s unreachable: %s", w->name,
				  h->errbuf[0] ? h->errbuf : curl_easy_strerror(result));
		return;
	}
	if (h->status >= 200 && h->status < 300) {
		if (h->initialize && w->transport == TRANSPORT_HTTP && h->new_session) {
			free(c->session_id);
			c->session_id = TAKE_PTR(h->new_session);
			log_info("client %llu: session started", (unsigned long long)c->number);
		}
		if (!h->event_stream && evbuffer_get_length(h->resp) > 0) {
			size_t len = evbuffer_get_length(h->resp);

			client_deliver_text(c, (const char *)evbuffer_pullup(h->resp, -1), len);
		}
		if (w->transport == TRANSPORT_HTTP && h->id && client_is_pending(c, h->id))
			client_fail(c, h->id, RPC_INTERNAL_ERROR, "upstream %s answered HTTP %ld without a response",
				    w->name, h->status);
		if (h->initialized_notif && w->transport == TRANSPORT_HTTP && c->session_id)
			stream_open(c);
		hreq_free(h);
		return;
	}
	if (h->status == 404 && w->transport == TRANSPORT_HTTP && c->session_id) {
		free(c->session_id);
		c->session_id = NULL;
		hreq_fail(h, RPC_APP_ERROR, "upstream %s ended the session: initialize again", w->name);
		return;
	}
	hreq_fail(h, RPC_INTERNAL_ERROR, "upstream %s answered HTTP %ld", w->name, h->status);
}

static void stream_done(struct hreq *h, CURLcode result)
{
	struct worker *w = h->w;
	struct client *c = h->c;

	if (w->transport == TRANSPORT_SSE) {
		if (h->why[0])
			hreq_fail(h, RPC_INTERNAL_ERROR, "%s", h->why);
		else if (result != CURLE_OK && h->too_large)
			hreq_fail(h, RPC_INTERNAL_ERROR, "upstream %s sent an event larger than %d bytes", w->name,
				  PROTO_MAX_MESSAGE);
		else if (result != CURLE_OK)
			hreq_fail(h, RPC_INTERNAL_ERROR, "upstream %s unreachable: %s", w->name,
				  h->errbuf[0] ? h->errbuf : curl_easy_strerror(result));
		else if (h->status < 200 || h->status >= 300)
			hreq_fail(h, RPC_INTERNAL_ERROR, "upstream %s answered HTTP %ld to the event stream", w->name,
				  h->status);
		else
			hreq_fail(h, RPC_INTERNAL_ERROR, "upstream %s closed the event stream", w->name);
		return;
	}
	if (result == CURLE_OK && h->status == 405)
		log_debug("client %llu: upstream %s offers no GET stream", (unsigned long long)c->number, w->name);
	else if (result != CURLE_OK)
		log_info("client %llu: GET stream of upstream %s ended: %s", (unsigned long long)c->number, w->name,
			 h->errbuf[0] ? h->errbuf : curl_easy_strerror(result));
	else
		log_info("client %llu: GET stream of upstream %s ended (HTTP %ld)", (unsigned long long)c->number,
			 w->name, h->status);
	hreq_free(h);
}

void http_transfer_done(CURL *easy, CURLcode result, void *arg)
{
	struct hreq *h;
	char *priv = NULL;

	curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
	h = (struct hreq *)priv;
	if (!h->started)
		curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &h->status);
	if (h->kind == HREQ_DELETE) {
		log_debug("session ended at upstream %s: %s", h->w->name,
			  result == CURLE_OK ? "done" : curl_easy_strerror(result));
		hreq_free(h);
		return;
	}
	if (result == CURLE_OK && h->status == 401) {
		hreq_unauthorized(h);
		return;
	}
	if (result == CURLE_OK && h->status == 403 && h->step_scope) {
		hreq_insufficient_scope(h);
		return;
	}
	if (h->kind == HREQ_POST)
		post_done(h, result);
	else
		stream_done(h, result);
}

/* -- what client.c and the keeper channel call -- */

/* The longest Mcp-Method or Mcp-Name value we send, encoded. */
#define MCP_HEADER_MAX 4096

/*
 * A value for Mcp-Method or Mcp-Name (SEP-2243): printable ASCII as it is;
 * non-ASCII text, leading or trailing spaces, or a value that would read as
 * the sentinel, as "=?base64?B64(UTF-8)?=". Control characters (CR and LF
 * above all: they would end the header) are refused, as is a value over
 * MCP_HEADER_MAX once encoded: -EINVAL with why.
 */
static int header_value_encode(const char *what, const char *s, size_t len, char **out, char *why, size_t wlen)
{
	static const char open[] = "=?base64?", close_[] = "?=";
	bool plain = len > 0 && s[0] != ' ' && s[len - 1] != ' ' && strncmp(s, open, sizeof(open) - 1) != 0;
	size_t b64;

	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch < 0x20 || ch == 0x7f) {
			snprintf(why, wlen, "the %s holds a control character, which no HTTP header may carry", what);
			return -EINVAL;
		}
		if (ch > 0x7e)
			plain = false;
	}
	if (plain) {
		if (len > MCP_HEADER_MAX)
			goto too_long;
		*out = xstrndup(s, len);
		return 0;
	}
	b64 = sodium_base64_encoded_len(len, sodium_base64_VARIANT_ORIGINAL);
	if (b64 + sizeof(open) + sizeof(close_) > MCP_HEADER_MAX)
		goto too_long;
	*out = xmalloc(sizeof(open) - 1 + b64 + sizeof(close_));
	memcpy(*out, open, sizeof(open) - 1);
	sodium_bin2base64(*out + sizeof(open) - 1, b64, (const unsigned char *)s, len, sodium_base64_VARIANT_ORIGINAL);
	strcat(*out, close_);
	return 0;
too_long:
	snprintf(why, wlen, "the %s is longer than an HTTP header of %d bytes may carry", what, MCP_HEADER_MAX);
	return -EINVAL;
}

/*
 * The standard headers of a message sent under the 2026-07-28 revision or a
 * later one (SEP-2243): Mcp-Method for every request and notification; Mcp-Name from params.name (tools/call,
 * prompts/get), params.uri (resources/read) or params.taskId (tasks/...);
 * MCP-Protocol-Version from the request's own _meta
 * ("io.modelcontextprotocol/protocolVersion", the stateless lifecycle of
 * 2026-07-28), else for an initialize that asks for 2026-07-28 or later
 * (older servers get none there).
 */
static int standard_headers(const struct rpc_msg *m, const char *negotiated, char **method, char **name,
			    char **init_version, char *why, size_t wlen)
{
	const char *field = NULL, *rev;
	struct json_object *v, *meta;

	*method = *name = *init_version = NULL;
	if (!m->method)
		return 0; /* a response to the server: no method to name */
	/* The revision this request is sent under: its own _meta's, what an
	 * initialize asks for, or the session's. Before 2026-07-28: no
	 * Mcp-Method or Mcp-Name (and the scanner's fast path, client.c). */
	rev = negotiated;
	if (m->params && json_object_object_get_ex(m->params, "_meta", &meta) &&
	    json_object_is_type(meta, json_type_object) &&
	    json_object_object_get_ex(meta, "io.modelcontextprotocol/protocolVersion", &v) &&
	    json_object_is_type(v, json_type_string)) {
		rev = json_object_get_string(v);
		if (!header_value_ok(rev, (size_t)json_object_get_string_len(v), 64)) {
			snprintf(why, wlen, "the protocol version in _meta is not one an HTTP header can carry");
			return -EINVAL;
		}
	} else if (strcmp(m->method, "initialize") == 0 && m->params &&
		 json_object_object_get_ex(m->params, "protocolVersion", &v) && json_object_is_type(v, json_type_string))
		rev = json_object_get_string(v);
	if (!rev || strcmp(rev, MCP_HEADERS_REVISION) < 0)
		return 0;
	if (header_value_encode("method", m->method, strlen(m->method), method, why, wlen) < 0)
		return -EINVAL;
	if (strcmp(m->method, "tools/call") == 0 || strcmp(m->method, "prompts/get") == 0)
		field = "name";
	else if (strcmp(m->method, "resources/read") == 0)
		field = "uri";
	else if (strncmp(m->method, "tasks/", 6) == 0)
		field = "taskId";
	if (field && m->params && json_object_object_get_ex(m->params, field, &v) &&
	    json_object_is_type(v, json_type_string) &&
	    header_value_encode(strcmp(field, "uri") == 0 ? "resource URI" : "name", json_object_get_string(v),
				(size_t)json_object_get_string_len(v), name, why, wlen) < 0) {
		free(*method);
		*method = NULL;
		return -EINVAL;
	}
	/* MCP-Protocol-Version: what the request names itself (its _meta, or
	 * an initialize: rev is then that request's). */
	if (rev != negotiated && header_value_ok(rev, strlen(rev), 64))
		*init_version = xstrdup(rev);
	return 0;
}

int http_send(struct client *c, const struct rpc_msg *m, const char *text, size_t len)
{
	struct worker *w = c->w;
	char *mcp_method = NULL, *mcp_name = NULL, *init_version = NULL;
	struct hreq *h;

	if (w->oauth && !w->token) {
		char message[256];

		if (m->type == RPC_REQUEST)
			client_fail(c, m->id, RPC_APP_ERROR, "%s", worker_not_logged_in(w, message, sizeof(message)));
		else
			log_info("client %llu: not logged in: dropping a message", (unsigned long long)c->number);
		return 0;
	}
	if (w->transport == TRANSPORT_HTTP) {
		char why[160];

		if (standard_headers(m, c->protocol_version, &mcp_method, &mcp_name, &init_version, why, sizeof(why)) <
		    0) {
			if (m->type == RPC_REQUEST)
				client_fail(c, m->id, RPC_INVALID_REQUEST, "%s", why);
			else
				log_info("client %llu: dropping a notification: %s", (unsigned long long)c->number, why);
			return 0;
		}
	}
	h = hreq_new(w, c, HREQ_POST, c->endpoint ? c->endpoint : w->url);
	h->mcp_method = mcp_method;
	h->mcp_name = mcp_name;
	h->init_version = init_version;
	h->body = xmalloc(len + 1);
	memcpy(h->body, text, len);
	h->body[len] = '\0';
	h->body_len = len;
	if (m->type == RPC_REQUEST) {
		h->id = json_object_get(m->id);
		h->initialize = strcmp(m->method, "initialize") == 0;
	}
	h->initialized_notif = m->type == RPC_NOTIFICATION && strcmp(m->method, "notifications/initialized") == 0;

	if (w->transport == TRANSPORT_HTTP) {
		if (h->initialize && c->session_id) {
			/* A new initialize starts a new session. */
			free(c->session_id);
			free(c->protocol_version);
			c->session_id = c->protocol_version = NULL;
			if (c->stream)
				hreq_free(c->stream);
		}
		hreq_go(h);
		return 0;
	}
	/* HTTP+SSE */
	if (c->endpoint) {
		hreq_go(h);
		return 0;
	}
	stream_open(c);
	return 0;
}

/* HTTP+SSE: the endpoint is known; post what waited for it. */
void http_kick(struct client *c)
{
	struct hreq *h;
	bool again = true;

	while (again && c->endpoint) {
		again = false;
		LIST_FOREACH(h, &c->hreqs, clink) {
			if (h->kind == HREQ_POST && h->state == HREQ_QUEUED) {
				free(h->url);
				h->url = xstrdup(c->endpoint);
				hreq_go(h);
				again = true; /* the list may have changed */
				break;
			}
		}
	}
}

static void session_delete(struct worker *w, const char *session)
{
	struct hreq *h;

	if (w->oauth && !w->token)
		return;
	h = hreq_new(w, NULL, HREQ_DELETE, w->url);
	h->session_id = xstrdup(session);
	hreq_go(h);
}

/* Drops every transfer of c and ends its upstream session. */
static void http_client_end(struct client *c)
{
	while (!LIST_EMPTY(&c->hreqs))
		hreq_free(LIST_FIRST(&c->hreqs));
	if (c->post_easy) {
		curl_easy_cleanup(c->post_easy);
		c->post_easy = NULL;
	}
	c->post_headers = headers_unref(c->post_headers);
	if (c->w->transport == TRANSPORT_HTTP && c->session_id)
		session_delete(c->w, c->session_id);
	free(c->session_id);
	free(c->protocol_version);
	free(c->endpoint);
	c->session_id = c->protocol_version = c->endpoint = NULL;
}

void http_client_close(struct client *c)
{
	http_client_end(c);
}

void http_logout(struct worker *w)
{
	struct client *c;
	char message[256];

	worker_not_logged_in(w, message, sizeof(message));
	LIST_FOREACH(c, &w->clients, link) {
		http_client_end(c);
		client_fail_all(c, RPC_APP_ERROR, "%s", message);
	}
}

void http_abort_all(struct worker *w)
{
	while (!LIST_EMPTY(&w->hreqs))
		hreq_free(LIST_FIRST(&w->hreqs));
}
