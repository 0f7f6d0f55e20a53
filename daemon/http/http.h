/*
 * The http child's shared state and what its files share. http.c is the
 * process (main, the hello, fd 3 and fd 4: the control connections it
 * borrows from the keeper); control.c is one exchange on such a connection;
 * server.c is the HTTP front door (checks, routes, replies, held requests);
 * api.c is the REST API (tools.c its tools listing); static.c the web UI's files; events.c GET /events
 * and the event subscription behind it; mcp.c MCP over HTTP at /mcp/NAME.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "channel.h"
#include "util.h"

struct bufferevent;
struct event;
struct event_base;
struct evhttp;
struct evhttp_bound_socket;
struct evhttp_connection;
struct evhttp_request;
struct json_object;
struct rpc_msg;
struct secret;

#define HTTP_MAX_HEADERS (16 * 1024)
#define HTTP_MAX_BODY (1024 * 1024)
/* A client with this much output queued and not read is not keeping up. */
#define HTTP_STREAM_OUTPUT_MAX (1024 * 1024)
#define HTTP_EVENT_CLIENTS_MAX 64
#define HTTP_PING_S 30
/* Idle keep-alive connections, and a stream nobody reads, end after this. */
#define HTTP_CONN_TIMEOUT_S 60
/* How long a REST call may wait for the keeper (a logout waits for the
 * provider's revocation, a login for discovery and registration). */
#define HTTP_KEEPER_TIMEOUT_S 120
#define SERVER_NAME_MAX 128

#define MCP_SESSIONS_MAX 64
#define MCP_REQUEST_TIMEOUT_S 120
#define MCP_IDLE_S 600
#define MCP_QUEUE_MAX 256
#define MCP_PENDING_MAX 256

struct http;

/*
 * server.c: a request answered later (a keeper call, an MCP request, a stream). The
 * client may go away first: libevent then frees (or detaches) the request
 * and gone() runs with req already NULL; the owner drops what it holds.
 */
struct held {
	struct http *h;
	struct evhttp_request *req;
	struct event *closed;	/* EV_CLOSED on the client's socket */
	void (*gone)(struct held *hd);
	size_t unsent;		/* for gone(): bytes the client had not read */
	bool dropped;		/* for gone(): held_stream dropped it (and said why) */
};

void held_init(struct held *hd, struct http *h, struct evhttp_request *req, void (*gone)(struct held *hd));
/* Stops watching; returns the request to answer (NULL when it is gone). */
struct evhttp_request *held_release(struct held *hd);
/* Sends a chunk on a streaming reply. Returns 0, or -EPIPE when the client
 * is gone: before, or now for not keeping up (then gone() has run: hd may be
 * freed). */
int held_stream(struct held *hd, const char *data, size_t len, const char *who);

/* server.c: the connection of a held request is going down (conn.c's close
 * callback passes it on). */
void held_closed(struct evhttp_connection *evcon, struct held *hd);

/* -- conn.c: the client connections, their cap and their request timeout -- */

/* After evhttp_new: at most max_conns connections (one more gets 503 and is
 * closed), each closed when it has not sent a whole request within
 * header_timeout_ms of its opening or of its previous answer. */
void conn_setup(struct http *h, int max_conns, int header_timeout_ms);
/* First in http_request_cb: the request is in, its timer stops until the
 * answer has gone. */
void conn_request_started(struct http *h, struct evhttp_request *req);
/* The held request whose gone() the connection's end must run, or NULL. */
void conn_hold(struct http *h, struct evhttp_connection *evcon, struct held *hd);
/* At exit, after evhttp_free(). */
void conn_free_all(struct http *h);

/* -- http.c: control connections from the keeper -- */

struct kwait;

/* Asks for a control connection (control.connect on fd 3, the descriptor on
 * fd 4). fn runs once: with the connection's descriptor (now fn's), or with
 * fd -1 and why the keeper refused it. */
struct kwait *kconn_request(struct http *h, void (*fn)(void *arg, int fd, const char *error), void *arg);
/* Before fn has run: fn will not run; the descriptor is closed when it comes. */
void kconn_cancel(struct kwait *w);

/* -- control.c --
 * A control connection from the keeper with one control-protocol exchange
 * on it. fn runs once: reply is the keeper's result or error, or fail says
 * why there is none. In fn the owner may take the connection over with
 * kcall_take().
 */
struct kfail {
	int status;		/* the HTTP status that reports it */
	const char *kind;
	char message[256];
};

typedef void (*kcall_fn)(void *arg, struct rpc_msg *reply, const struct kfail *fail);
struct kcall;

struct kcall *kcall_start(struct http *h, const char *method, struct json_object *params, int timeout_s,
			  kcall_fn fn, void *arg);
/* Before fn has run: fn will not run, the connection closes. */
void kcall_cancel(struct kcall *c);
/* In fn, after a reply: the connection is the caller's from now on. */
struct bufferevent *kcall_take(struct kcall *c);
/* At exit: every call ends without its fn. */
void kcall_free_all(struct http *h);

struct conn;
struct mcp_session;
struct sse_client;
struct api_call;
struct tools_call;
struct kfd;

struct http {
	struct event_base *base;
	struct channel chan;		/* fd 3, to the keeper */
	struct event *fd4_ev;
	bool hello_done;
	char landlock[128];

	/* From the hello. */
	struct secret *api_key;
	char *ui_dir;
	bool management;
	char listen_host[48];		/* "127.0.0.1" or "::1" */
	int port;
	char hosts[2][64];		/* the Host values we answer to */

	struct evhttp *evh;

	/* conn.c: the client connections. */
	int max_conns;			/* from the hello */
	int header_timeout_ms;		/* from the hello */
	LIST_HEAD(, conn) conns;
	size_t n_conns;
	struct bufferevent **fresh;	/* accepted, not yet counted in */
	size_t n_fresh, fresh_cap;
	struct event *adopt_ev;
	unsigned long n_refused;
	int64_t refused_logged_ms;

	int64_t next_id;		/* requests on fd 3 */
	LIST_HEAD(, kwait) waits;	/* control.connect not yet completed */
	LIST_HEAD(, kfd) stash;		/* descriptors that came before their reply */
	size_t n_stash;
	LIST_HEAD(, kcall) calls;
	LIST_HEAD(, api_call) api_calls;
	LIST_HEAD(, tools_call) tools_calls;
	size_t n_tools_calls;

	/* Events: one subscription, many SSE clients. */
	struct kcall *sub_call;
	struct bufferevent *sub_bev;
	struct event *sub_retry;
	int sub_backoff_ms;
	LIST_HEAD(, sse_client) sse;
	size_t n_sse;
	unsigned long next_client;
	struct event *ping;

	/* MCP over HTTP. */
	LIST_HEAD(, mcp_session) sessions;
	size_t n_sessions;
	struct event *idle_timer;
};

/* -- http.c: helpers -- */

int64_t http_now_ms(void);
/* Printable copy of untrusted text for a log line. */
void http_clean(const char *s, char *out, size_t len);

/* -- server.c: the front door, and the replies every route sends -- */

/* evhttp's callback for every request (http.c installs it with the listener). */
void http_request_cb(struct evhttp_request *req, void *arg);
/* HTTP status for a keeper error kind (error.data.kind). */
int http_status_for_kind(const char *kind);
void http_log_request(struct evhttp_request *req, int status, const char *note);
/* Headers every response carries. */
void http_common_headers(struct evhttp_request *req);
/* Sends a JSON body (takes body). */
void http_send_json(struct evhttp_request *req, int status, struct json_object *body, const char *session_id);
/* {"success": false, "error": message, "kind": kind} (the shape the
 * quickstart's UI reads as error.error). */
void http_send_error(struct evhttp_request *req, int status, const char *kind, const char *fmt, ...)
	_printf_(4, 5);

/* -- api.c: the REST API, after server.c checked the route and the name -- */

enum api_what { API_SERVERS, API_SERVER, API_LOGIN, API_LOGOUT, API_CREATE, API_UPDATE, API_DELETE };

/* server is NULL for API_SERVERS. */
void api_handle(struct http *h, struct evhttp_request *req, enum api_what what, const char *server);

/* GET /api/v1/servers?offset=N&limit=M: a page of the keeper's status. */
struct api_page {
	int64_t offset, limit;	/* -1: not given */
	char error[96];		/* why the query is refused, or "" */
};
/* Reads offset and limit from req's query (before it is wiped). */
void api_page_parse(struct evhttp_request *req, struct api_page *pg);
void api_list(struct http *h, struct evhttp_request *req, const struct api_page *pg);
void api_free_all(struct http *h);
/* -- manage.c: POST /api/v1/servers, PATCH and DELETE /api/v1/servers/NAME -- */
/* The route's what for a method: API_SERVERS with POST is API_CREATE, API_SERVER
 * with PATCH or DELETE API_UPDATE or API_DELETE. */
enum api_what manage_what(enum api_what what, int cmd);
/* The keeper's params for a change (servers.add, .update, .remove) from the
 * request: 0 with *params, or 1 when the request was answered (a bad body). */
int manage_params(struct evhttp_request *req, enum api_what what, const char *server, struct json_object **params);

/* -- tools.c: GET /api/v1/servers/NAME/tools, through NAME's worker -- */
void tools_handle(struct http *h, struct evhttp_request *req, const char *server);
void tools_free_all(struct http *h);

/* -- static.c: the web UI's files -- */

struct ui_file;

/* The UI file served at path, or NULL. */
const struct ui_file *static_find(const char *path);
void static_serve(struct http *h, struct evhttp_request *req, const struct ui_file *f);

/* -- events.c -- */
void events_start(struct http *h);
void events_handle(struct http *h, struct evhttp_request *req);
void events_ping(struct http *h);
void events_free_all(struct http *h);

/* -- mcp.c -- */
void mcp_handle(struct http *h, struct evhttp_request *req, const char *name);
void mcp_ping(struct http *h);
void mcp_idle_check(struct http *h);
void mcp_free_all(struct http *h);
