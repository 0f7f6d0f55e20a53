/*
 * The arena of one config (config-private.h): every string and array a
 * struct config points to but the servers array, carved from 64 KiB blocks
 * and freed together by config_free(). A config of 100 000 servers would
 * otherwise be half a million small mallocs, each paying for its header and
 * rounding (a 10-byte string takes a 32-byte chunk). Memory comes zeroed. A
 * request larger than a quarter block gets a block of its own, so the current
 * block is not wasted.
 *
 * Touches nothing but the heap; out of memory is fatal, as everywhere.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config-private.h"
#include "log.h"

#define MEM_BLOCK_SIZE (64 * 1024)

struct mem_block {
	struct mem_block *next;
	size_t used;
	size_t size;
	char data[];
};

struct config_mem {
	struct mem_block *head;	/* the block being filled; older ones follow */
};

struct config_mem *config_mem_new(void)
{
	return xcalloc(1, sizeof(struct config_mem));
}

void config_mem_free(struct config_mem *m)
{
	struct mem_block *b, *next;

	if (!m)
		return;
	for (b = m->head; b; b = next) {
		next = b->next;
		free(b);
	}
	free(m);
}

static void *mem_alloc(struct config_mem *m, size_t size, size_t align)
{
	struct mem_block *b = m->head;
	size_t pad, bsize;

	if (b) {
		pad = -(uintptr_t)(b->data + b->used) & (align - 1);
		if (size <= b->size - b->used && pad <= b->size - b->used - size) {
			void *ptr = b->data + b->used + pad;

			b->used += pad + size;
			return ptr;
		}
	}
	/* More than malloc could ever give: what xcalloc() would say. */
	if (size > SIZE_MAX / 2)
		fatal("out of memory");
	bsize = size > MEM_BLOCK_SIZE / 4 ? size + align : MEM_BLOCK_SIZE;
	b = xcalloc(1, sizeof(*b) + bsize);
	b->size = bsize;
	pad = -(uintptr_t)b->data & (align - 1);
	b->used = pad + size;
	if (size > MEM_BLOCK_SIZE / 4 && m->head) {
		b->next = m->head->next;
		m->head->next = b;
	} else {
		b->next = m->head;
		m->head = b;
	}
	return b->data + pad;
}

/* n zeroed elements of size bytes; the arrays of a config hold pointers. */
void *config_mem_array(struct config_mem *m, size_t n, size_t size)
{
	if (size && n > SIZE_MAX / 2 / size)
		fatal("out of memory");
	return mem_alloc(m, n * size, _Alignof(void *));
}

char *config_mem_strndup(struct config_mem *m, const char *s, size_t len)
{
	char *d = mem_alloc(m, len + 1, 1);

	memcpy(d, s, len);
	return d;
}

char *config_mem_strdup(struct config_mem *m, const char *s)
{
	return config_mem_strndup(m, s, strlen(s));
}
