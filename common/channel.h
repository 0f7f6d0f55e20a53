/*
 * A child's end of its channel to the keeper (fd 3): newline-delimited
 * JSON-RPC in both directions through a bufferevent, one loop of reading
 * and dispatching, and the way the child ends. The oauth child, the http
 * child and the workers share it; what differs is their ops.
 *
 * The keeper is trusted: a malformed message from it is a bug, reported
 * through ops->bug (which normally stops the child with status 1). Every
 * message's params are wiped after dispatch (refresh tokens, client
 * secrets, access tokens, the API key); with wipe_all the whole message.
 */
#pragma once

#include <stdbool.h>

struct bufferevent;
struct event_base;
struct json_object;
struct rpc_msg;

struct channel_ops {
	/* One message (borrowed: wiped and freed when dispatch returns). */
	void (*dispatch)(void *ctx, struct rpc_msg *m);
	/* The keeper sent something that is not a message. */
	void (*bug)(void *ctx, const char *what, const char *detail);
	/* The channel ended: code 0 when the keeper closed it (EOF, or a reset
	 * or broken pipe when it went away with our messages unread), 1 on
	 * another error. NULL: the loop ends at once with that code. */
	void (*closed)(void *ctx, int code);
	/* Wipe every string of the message, not only its params: for a child
	 * that gets secrets in replies too and keeps no part of a message. */
	bool wipe_all;
};

struct channel {
	struct event_base *base;
	struct bufferevent *bev;
	int exit_code;			/* -1 while running */
	const struct channel_ops *ops;
	void *ctx;
};

/* Sets up ch on fd (owned from now on) with the message size limit.
 * Returns 0 or -ENOMEM (out of memory, or the fd cannot be watched). */
int channel_open(struct channel *ch, struct event_base *base, int fd, const struct channel_ops *ops, void *ctx);
void channel_close(struct channel *ch);
/* Ends the loop with code (the first code set wins) once every queued
 * message is written; nothing more is read. */
void channel_stop(struct channel *ch, int code);
/* Queues msg (consumed: wiped and freed, it may carry a token) for the
 * keeper. A message that cannot be queued is a fault of ours: logged, and
 * the channel stops with status 1. Returns 0 or a negative errno value. */
int channel_send(struct channel *ch, struct json_object *msg);
