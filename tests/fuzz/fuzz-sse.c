/*
 * Fuzz target for worker/sse.c: the text/event-stream parser the worker runs
 * on bytes from upstream MCP servers (untrusted network input).
 *
 * The input is parsed twice: whole, and in pieces whose sizes come from the
 * input itself. Both must give the same events (type and data) and the same
 * outcome; every event's data must be NUL-terminated at its length and never
 * longer than the limit. A difference abort()s.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "worker.h"

#define LIMIT 4096

struct record {
	char *log;
	size_t len, cap;
	unsigned events;
};

static void add(struct record *r, const void *p, size_t n)
{
	if (r->len + n + 1 > r->cap) {
		r->cap = (r->len + n + 1) * 2;
		r->log = realloc(r->log, r->cap);
		if (!r->log)
			abort();
	}
	memcpy(r->log + r->len, p, n);
	r->len += n;
}

static void on_event(void *arg, const char *event, const char *data, size_t len)
{
	struct record *r = arg;

	if (len > LIMIT || data[len] != '\0' || strlen(event) >= 32) {
		fprintf(stderr, "fuzz-sse: event over the limit or not terminated\n");
		abort();
	}
	add(r, event, strlen(event) + 1);
	add(r, &len, sizeof(len));
	add(r, data, len);
	r->events++;
}

static int parse(const uint8_t *data, size_t size, size_t (*piece)(const uint8_t *, size_t, size_t),
		 struct record *r)
{
	struct sse s;
	size_t off = 0;
	int ret = 0;

	if (sse_init(&s, LIMIT) < 0)
		abort();
	while (off < size && ret == 0) {
		size_t n = piece ? piece(data, size, off) : size;

		if (n > size - off)
			n = size - off;
		ret = sse_feed(&s, (const char *)data + off, n, on_event, r);
		off += n;
	}
	sse_clear(&s);
	return ret;
}

static size_t piece_from_input(const uint8_t *data, size_t size, size_t off)
{
	return 1 + (size_t)(data[(off * 7) % size] % 17);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct record whole = { 0 }, split = { 0 };
	int a, b;

	if (size == 0)
		return 0;
	a = parse(data, size, NULL, &whole);
	b = parse(data, size, piece_from_input, &split);
	if (a != 0 && a != -E2BIG)
		abort();
	/* An over-limit stream stops where the limit is crossed, which may differ
	 * by piece boundaries; only complete parses must agree exactly. */
	if (a == 0 && (b != 0 || whole.len != split.len || whole.events != split.events ||
		       (whole.len && memcmp(whole.log, split.log, whole.len) != 0))) {
		fprintf(stderr, "fuzz-sse: whole and split parses differ (%u vs %u events)\n", whole.events,
			split.events);
		abort();
	}
	free(whole.log);
	free(split.log);
	return 0;
}
