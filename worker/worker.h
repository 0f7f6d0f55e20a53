/*
 * mcpkeeper-worker: the shared state of one worker process and the
 * interfaces between its files.
 *
 *   mcpkeeper-worker.c  start-up, the keeper channel (fd 3: hello, tokens),
 *                       the descriptor channel (fd 4), shutdown
 *   client.c            one MCP client connection: framing, requests in
 *                       flight and their timeouts, answers and errors
 *   http.c              the HTTP transports: streamable HTTP and the older
 *                       HTTP+SSE, with the bearer token and 401 handling
 *   sse.c               the text/event-stream parser
 *   stdio.c             stdio upstreams: a child process per client
 *
 * One context struct (struct worker) is passed explicitly; there are no
 * other mutable globals.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/types.h>

#include <curl/curl.h>

#include "channel.h"

/* The first revision whose requests carry Mcp-Method and Mcp-Name, and
 * whose initialize carries MCP-Protocol-Version (SEP-2243). */
#define MCP_HEADERS_REVISION "2026-07-28"

struct event_base;
struct event;
struct bufferevent;
struct evbuffer;
struct json_object;
struct rpc_msg;
struct secret;
struct curlev;
struct client;
struct hreq;
struct headers;
struct proc;

/* Response bodies larger than this end the request with an error. */
#define WORKER_MAX_BODY (16 * 1024 * 1024)
#define WORKER_DEFAULT_TIMEOUT_MS 60000L
#define WORKER_MAX_TIMEOUT_MS (24L * 3600 * 1000)
#define WORKER_CONNECT_TIMEOUT_S 10L

enum transport {
	TRANSPORT_HTTP,		/* streamable HTTP */
	TRANSPORT_SSE,		/* HTTP+SSE (2024-11-05) */
	TRANSPORT_STDIO,
};

LIST_HEAD(client_list, client);
LIST_HEAD(hreq_list, hreq);
LIST_HEAD(proc_list, proc);
LIST_HEAD(pending_list, pending);

struct worker {
	struct event_base *base;
	struct channel chan;		/* fd 3, to the keeper */
	struct event *fd4_ev;		/* fd 4: client descriptors */
	struct event *sigchld;
	struct event *stop_timer;	/* bounds the wait for DELETEs at exit */
	struct curlev *curl;
	bool hello_done;
	bool stopping;
	char landlock[128];
	char sandbox[16];		/* stdio: the keeper's sandbox ("namespaces", "landlock", "off") */

	/* The upstream, as the keeper assigned it in the hello. */
	char *name;
	enum transport transport;
	char *url;
	char **headers;			/* "Name: value", NULL-terminated */
	char *command;
	char **argv;			/* command first, NULL-terminated */
	char **envp;			/* clean base merged with the configured env */
	long timeout_ms;
	bool oauth;

	/* The access token: only ever the current one, wiped when replaced. */
	struct secret *token;
	uint64_t token_gen;		/* bumped whenever the token changes */
	bool needs_login_sent;
	/* Until the keeper has said whether there is a token (token.update or
	 * token.clear; fd 3 and fd 4 race), clients are not read: their first
	 * request would get a "not logged in" it does not deserve. */
	bool token_known;
	struct event *token_grace;
	int64_t next_id;		/* requests to the keeper */
	int64_t invalid_id;		/* token.invalid in flight, 0 when none */
	struct hreq_list token_waiters;	/* requests that got a 401, waiting */

	struct client_list clients;
	size_t n_clients;
	struct hreq_list hreqs;		/* every HTTP transfer, with or without client */
	struct proc_list procs;		/* stdio children, also those still exiting */
};

/* A request a client sent upstream that awaits its response. */
struct pending {
	LIST_ENTRY(pending) link;
	struct client *c;
	struct json_object *id;
	struct event *timer;
	char method[64];
};

struct client {
	LIST_ENTRY(client) link;
	struct worker *w;
	uint64_t number;
	int fd;				/* the socket the keeper handed over */
	/* Where MCP comes in and goes out (client.c reads and writes them):
	 * fd itself, or, for a stdio connect, the client's own stdin and
	 * stdout that arrive on fd (-1 until then). */
	int rfd, wfd;
	struct event *conn_ev;		/* stdio connect: fd, for the descriptors, then for its end */
	bool skipping;			/* dropping the rest of a line over the size limit */
	bool clean;			/* the client ended its input and had every answer */
	char end[128];			/* why the session ended, for session.closed */
	struct evbuffer *in, *out;
	struct event *rev;		/* reading, while we read */
	struct event *wev;		/* writing, while output waits for room */
	struct event *flush;		/* writes what was queued, at the end of the pass */
	struct pending_list pending;
	struct event *kick;		/* deferred work decided inside libcurl callbacks */
	bool closing;			/* flushing its last replies */
	bool input_done;		/* the client closed its side: finish, then close */
	struct event *drained;		/* deferred close once the last answer is out */

	/* HTTP transports */
	struct hreq_list hreqs;		/* this client's transfers */
	char *session_id;		/* Mcp-Session-Id once the server gave one */
	char *protocol_version;		/* negotiated at initialize */
	struct hreq *stream;		/* the GET stream (either transport) */
	char *endpoint;			/* HTTP+SSE: where to POST, once announced */
	bool initialized;		/* streamable: the client sent notifications/initialized */
	/* Kept between its requests (http.c): a handle for the next POST, and
	 * the header lines of its POSTs while token and session hold. */
	CURL *post_easy;
	struct headers *post_headers;

	/* stdio */
	struct proc *proc;
};

/* -- mcpkeeper-worker.c -- */
void worker_send(struct worker *w, struct json_object *msg);
void worker_keeper_bug(struct worker *w, const char *what, const char *detail);
/* Sends token.invalid for the current token unless one is in flight. */
void worker_token_invalid(struct worker *w);
void worker_needs_login(struct worker *w);
/* A 403 insufficient_scope for scope: token.invalid with it (want_union:
 * the client's revision keeps the current scope, SEP-2350). */
void worker_token_scope(struct worker *w, const char *scope, bool want_union);
/* While stopping: ends the loop once no transfer and no child is left. */
void worker_check_stop(struct worker *w);
/* The message a client gets when there is no token. */
const char *worker_not_logged_in(struct worker *w, char *buf, size_t len);

/* -- client.c -- */
/* Starts reading a client (at once, or once the token is known). */
void client_start_reading(struct client *c);
/* flags: CLIENT_F_* of the descriptor packet. */
int client_new(struct worker *w, uint64_t number, unsigned flags, int fd);
/* Closes the connection and the client's upstream session; frees c. */
void client_close(struct client *c, const char *why);
/* Closes once the replies already queued have gone out; the upstream side
 * ends at once. */
void client_shutdown(struct client *c, const char *why);
/* A message from upstream, as text: parsed, checked and passed on. */
void client_deliver_text(struct client *c, const char *text, size_t len);
/* A parsed message from upstream: a response answers its pending request
 * (and is dropped when none is pending), anything else goes on as it is. */
void client_deliver(struct client *c, const struct rpc_msg *m);
/* Answers a pending request with an error (nothing when not pending). */
void client_fail(struct client *c, struct json_object *id, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Answers every pending request with the same error. */
void client_fail_all(struct client *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
bool client_is_pending(struct client *c, struct json_object *id);
/* Restarts the timeout of the request id: in full, or with hold, long
 * enough for a login (LOGIN_WAIT_MAX_SEC): while it waits for a new token,
 * the user's time is not the upstream's. */
void client_pending_hold(struct client *c, struct json_object *id, bool hold);

/* -- http.c -- */
/* m and the text it was parsed from, which goes upstream as it is. */
int http_send(struct client *c, const struct rpc_msg *m, const char *text, size_t len);
void http_client_close(struct client *c);
void http_kick(struct client *c);
void http_transfer_done(CURL *easy, CURLcode result, void *arg);
/* The token changed (or went): replay the requests waiting for it. */
void http_token_changed(struct worker *w);
/* The keeper has no token: fail the waiting requests. */
void http_token_unavailable(struct worker *w, const char *message);
/* token.clear: end every upstream session. */
void http_logout(struct worker *w);
/* Worker exit: abort every transfer. */
void http_abort_all(struct worker *w);

/* -- stdio.c -- */
int stdio_open(struct client *c);
int stdio_send(struct client *c, const char *text, size_t len);
void stdio_client_close(struct client *c);
void stdio_reap(struct worker *w);
/* Exit: SIGKILL to every child still running, and forget them all. */
void stdio_free_all(struct worker *w);

/* -- sse.c: text/event-stream (the HTML living standard's parsing rules) -- */
struct sse {
	struct evbuffer *line;		/* the incomplete line */
	struct evbuffer *data;		/* data of the event being built */
	char event[32];			/* its type; "" means "message" */
	bool event_long;		/* a type too long to be one we know */
	bool has_data;
	bool skip_lf;			/* the last line ended in '\r' */
	size_t limit;			/* largest data of one event */
};

/* Called for each complete event; data is NUL-terminated. */
typedef void (*sse_event_fn)(void *arg, const char *event, const char *data, size_t len);

int sse_init(struct sse *s, size_t limit);
void sse_clear(struct sse *s);
/* Returns 0, -E2BIG when an event or a line is longer than the limit, or
 * -ENOMEM. */
int sse_feed(struct sse *s, const char *p, size_t n, sse_event_fn fn, void *arg);
