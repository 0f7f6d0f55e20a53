/*
 * What an upstream offers: the MCP client behind `mcpctl tools NAME` and
 * GET /api/v1/servers/NAME/tools. The caller moves the messages (ctl/tools.c
 * waits on its socket, daemon/http/tools.c on its event loop); this module
 * decides what to send and what the answers mean. See toollist.c.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;
struct rpc_msg;

/* The revision sent in initialize: stateful sessions (2025-11-25). */
#define TOOLLIST_PROTOCOL "2025-11-25"
/* Bounds on what one listing follows and keeps. */
#define TOOLLIST_MAX_PAGES 16
#define TOOLLIST_MAX_TOOLS 1000
#define TOOLLIST_MAX_BYTES (4 * 1024 * 1024)
/* A longer nextCursor fails the listing: our request must stay small. */
#define TOOLLIST_MAX_CURSOR 4096
/* Requests from the upstream answered (ping) or refused in one listing. */
#define TOOLLIST_MAX_REQUESTS 64
/* The whole exchange, connect included (the REST call; mcpctl: --timeout). */
#define TOOLLIST_TIMEOUT_S 30

enum {
	TOOLLIST_MORE = 0,	/* send what *out holds, wait for the next message */
	TOOLLIST_DONE = 1,	/* toollist_result() has the list */
	TOOLLIST_FAILED = 2,	/* t->kind and t->error say why */
};

struct toollist {
	char server[129];
	bool listing;			/* initialize answered: tools/list pages now */
	int64_t want_id;		/* the request whose answer we wait for */
	struct json_object *tools;	/* the reduced tools so far */
	size_t pages, bytes, skipped, requests;
	const char *truncated;		/* why the listing stopped early, or NULL */
	const char *kind;		/* proto.h KIND_* when it failed */
	char error[512];
};

/* Starts a listing of server's tools; returns the initialize request to send. */
struct json_object *toollist_start(struct toollist *t, const char *server, const char *client_name);
/*
 * One message from the worker. Returns TOOLLIST_MORE, TOOLLIST_DONE or
 * TOOLLIST_FAILED; out[0..*n_out) are messages to send first (taken over).
 */
int toollist_feed(struct toollist *t, const struct rpc_msg *m, struct json_object *out[2], size_t *n_out);
/* After TOOLLIST_DONE: {"server", "tools", "truncated", "skipped"}. */
struct json_object *toollist_result(struct toollist *t);
/* Sets a failure of the caller's own (connection lost, timeout). */
void toollist_fail(struct toollist *t, const char *kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void toollist_clear(struct toollist *t);
