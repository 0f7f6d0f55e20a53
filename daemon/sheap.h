/*
 * A min-heap of servers on a key of theirs (the refresh engine's ready queue
 * and its timers, refresh.c). Each server keeps its position in the heap in
 * a field of its own, so that it can leave from anywhere in O(log n).
 */
#ifndef MCPKEEPER_SHEAP_H
#define MCPKEEPER_SHEAP_H

#include <stddef.h>

#include "keeper.h"

/* A min-heap of servers; each keeps its position in the field at pos_off
 * (-1: not in it), so it can leave from anywhere. */
struct sheap {
	struct server **v;
	size_t n, cap;
	int64_t (*key)(const struct server *s);
	size_t pos_off;
};

/* Adds s, or moves it to where its key now says when it is in already. */
void sheap_put(struct sheap *h, struct server *s);
/* Takes s out (nothing when it is not in). */
void sheap_remove(struct sheap *h, struct server *s);
/* The server with the smallest key, or NULL. */
struct server *sheap_top(const struct sheap *h);

#endif
