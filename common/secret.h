/*
 * Secret buffers: the master key and the few secrets alive at a time
 * (an unsealed token record during a refresh, a key being loaded).
 *
 * Memory comes from sodium_malloc: guard pages around it, locked against
 * swapping where the system allows, wiped when freed. Each allocation maps
 * pages of its own and the kernel's limit on memory maps ends that after
 * roughly 16 000 live allocations, so never keep one per stored record.
 */
#pragma once

#include <stddef.h>

struct secret {
	size_t len;
	unsigned char *data;	/* len bytes, plus one NUL past the end */
};

/* A new zeroed secret of len bytes; NULL when memory is short. */
struct secret *secret_new(size_t len);
/* A new secret holding a copy of len bytes of data. */
struct secret *secret_from(const void *data, size_t len);
struct secret *secret_free(struct secret *s);
void secret_freep(struct secret **s);

/* Constant-time for equal lengths; 1 when equal, 0 otherwise. */
int secret_equal(const struct secret *a, const struct secret *b);
int secret_equal_bytes(const struct secret *a, const void *data, size_t len);
