/*
 * Fuzz target for common/frame.c, the reader every line from a client, a
 * child or the network goes through.
 *
 * The input is fed to frame_read() in chunks whose sizes come from a hash of
 * the input, so the same bytes are also tried split at many places, and is
 * parsed whole by frame_parse_line(). Every message that parses is written
 * back with frame_write() and read again: the second read must succeed, give
 * the same kind of message, and serialise to the same line. A difference
 * means the writer produces what the reader refuses (or changes meaning on
 * the way), so it abort()s like a crash would.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "frame.h"
#include "fuzz.h"

#define FUZZ_LIMIT 4096

static _Noreturn void die(const char *what, int r)
{
	fprintf(stderr, "fuzz-frame: %s (%d: %s)\n", what, r, frame_strerror(r));
	abort();
}

static uint64_t fnv1a(const uint8_t *data, size_t size)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < size; i++)
		h = (h ^ data[i]) * 0x100000001b3ull;
	return h;
}

static uint64_t xorshift64(uint64_t *s)
{
	uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/*
 * frame_write()'s line for root, as a malloc'ed copy. json-c escapes a
 * control character as \u00XX, so a line grows at most six-fold; the limit
 * leaves room for that and nothing more.
 */
static char *write_line(struct json_object *root, size_t limit, size_t *len)
{
	struct evbuffer *out = evbuffer_new();
	char *line;
	int r;

	if (!out)
		abort();
	r = frame_write(out, root, limit);
	if (r != 0)
		die("frame_write() refused a message frame_read() accepted", r);
	*len = evbuffer_get_length(out);
	line = malloc(*len);
	if (!line || evbuffer_copyout(out, line, *len) != (ev_ssize_t)*len)
		abort();
	evbuffer_free(out);
	if (*len == 0 || line[*len - 1] != '\n' || memchr(line, '\n', *len - 1))
		die("frame_write() did not produce exactly one line", 0);
	return line;
}

static void check_parsed(const struct rpc_msg *m)
{
	if (!m->root)
		die("a parsed message has no root", 0);
	switch (m->type) {
	case RPC_REQUEST:
	case RPC_NOTIFICATION:
		if (!m->method || !*m->method)
			die("a request without a method", 0);
		/* A request's id may be JSON null, which json-c holds as NULL. */
		if (m->type == RPC_NOTIFICATION && m->id)
			die("a notification with an id", 0);
		break;
	case RPC_RESULT:
		if (!m->result)
			die("a result without a result", 0);
		break;
	case RPC_ERROR:
		if (!m->error || !rpc_error_message(m))
			die("an error without an error message", 0);
		(void)rpc_error_code(m);
		(void)rpc_error_kind(m);
		break;
	default:
		die("unknown message type", (int)m->type);
	}
}

/* Writes m back out, reads it again and insists on the same message. */
static void roundtrip(const struct rpc_msg *m, size_t in_len)
{
	size_t limit = 8 * in_len + 64;
	struct evbuffer *in;
	struct rpc_msg again;
	char detail[128] = "";
	char *line1, *line2;
	size_t len1, len2;
	int r;

	check_parsed(m);
	line1 = write_line(m->root, limit, &len1);

	in = evbuffer_new();
	if (!in || evbuffer_add(in, line1, len1) < 0)
		abort();
	r = frame_read(in, limit, &again, detail, sizeof(detail));
	if (r != 0) {
		fprintf(stderr, "fuzz-frame: written line: %.*s", (int)len1, line1);
		fprintf(stderr, "fuzz-frame: detail: %s\n", detail);
		die("frame_read() refused what frame_write() wrote", r);
	}
	check_parsed(&again);
	if (again.type != m->type)
		die("the message type changed on the round trip", (int)again.type);
	if ((m->method || again.method) &&
	    (!m->method || !again.method || strcmp(m->method, again.method) != 0))
		die("the method changed on the round trip", 0);
	if (!json_object_equal(m->id, again.id))
		die("the id changed on the round trip", 0);

	line2 = write_line(again.root, limit, &len2);
	if (len1 != len2 || memcmp(line1, line2, len1) != 0) {
		fprintf(stderr, "fuzz-frame: first:  %.*s", (int)len1, line1);
		fprintf(stderr, "fuzz-frame: second: %.*s", (int)len2, line2);
		die("the serialisation is not stable", 0);
	}
	rpc_msg_clear(&again);
	r = frame_read(in, limit, &again, detail, sizeof(detail));
	if (r != FRAME_NEED_MORE)
		die("frame_write() wrote more than one message", r);
	rpc_msg_clear(&again);
	evbuffer_free(in);
	free(line1);
	free(line2);
}

/* The answer a reader would send for a bad line: it must build. */
static void check_refusal(int r, const char *detail)
{
	struct json_object *reply;

	if (r < FRAME_E_TOO_LARGE || r > FRAME_E_INVALID_RPC)
		die("unexpected outcome", r);
	if (!detail[0])
		die("a refusal without a detail", r);
	reply = rpc_error_for_frame(r, detail);
	if (!reply)
		abort();
	json_object_put(reply);
}

/*
 * Reads every complete line in. Returns false when the stream must be closed
 * (a line over the limit), true when it waits for more.
 */
static bool drain(struct evbuffer *in)
{
	for (;;) {
		struct rpc_msg m;
		char detail[128] = "";
		size_t before = evbuffer_get_length(in);
		int r;

		r = frame_read(in, FUZZ_LIMIT, &m, detail, sizeof(detail));
		if (r == 0) {
			if (evbuffer_get_length(in) >= before)
				die("frame_read() returned a message without consuming a line", 0);
			roundtrip(&m, before - evbuffer_get_length(in));
			rpc_msg_clear(&m);
			continue;
		}
		rpc_msg_clear(&m);
		if (r == FRAME_NEED_MORE) {
			/* A reader never holds more than limit bytes of an unfinished line. */
			if (evbuffer_get_length(in) > FUZZ_LIMIT)
				die("more than the limit buffered without a refusal", r);
			return true;
		}
		if (r < 0)
			die("a system error from an in-memory buffer", r);
		check_refusal(r, detail);
		if (r == FRAME_E_TOO_LARGE)
			return false;
		if (evbuffer_get_length(in) >= before)
			die("a bad line was not consumed", r);
	}
}

/*
 * Largest piece fed at once, picked per piece: tiny ones, about one read,
 * and more than the limit at once. frame_read() scans a partial line from
 * its start on each call, so tiny pieces of a long line cost quadratic time;
 * they are kept to a quarter of the pieces.
 */
static const size_t max_chunk[] = { 16, 512, 512, 2 * FUZZ_LIMIT };

static void fuzz_stream(const uint8_t *data, size_t size)
{
	struct evbuffer *in = evbuffer_new();
	uint64_t seed = fnv1a(data, size);
	size_t off = 0;
	bool reading = true;

	if (!in)
		abort();
	while (reading && off < size) {
		uint64_t x = xorshift64(&seed);
		size_t chunk = 1 + (x >> 8) % max_chunk[x & 3];

		if (chunk > size - off)
			chunk = size - off;
		if (evbuffer_add(in, data + off, chunk) < 0)
			abort();
		off += chunk;
		reading = drain(in);
	}
	/* The end of the stream ends the last line too. */
	if (reading) {
		if (evbuffer_add(in, "\n", 1) < 0)
			abort();
		drain(in);
		if (evbuffer_get_length(in) != 0)
			die("a terminated line was left in the buffer", 0);
	}
	evbuffer_free(in);
}

static void fuzz_line(const uint8_t *data, size_t size)
{
	struct rpc_msg m;
	char detail[128] = "";
	int r;

	r = frame_parse_line((const char *)data, size, &m, detail, sizeof(detail));
	if (r == 0)
		roundtrip(&m, size);
	else if (r < 0)
		die("a system error from frame_parse_line()", r);
	else
		check_refusal(r, detail);
	rpc_msg_clear(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_stream(data, size);
	fuzz_line(data, size);
	return 0;
}
