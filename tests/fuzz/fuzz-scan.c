/*
 * Fuzz target for scan_message() (common/scan.c), the one-pass check with
 * which `mcpctl connect --bridge` and the worker forward a line without
 * parsing it into a tree.
 *
 * scan_message() promises to agree with frame_parse_line() wherever it
 * answers: a line it accepts must parse, as the same kind of message, with
 * an id that keys the same (so that a response clears the request it
 * answers) and the same method. Each line of the input is tried as it is and inside three
 * envelopes that make a well-formed message around it, as "params" of a
 * request, as the "id" of a result and as the "error" of a response, so that mutations of any JSON reach
 * the scanner's accepting paths. A disagreement abort()s like a crash.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "frame.h"
#include "fuzz.h"
#include "scan.h"

static _Noreturn void die(const char *what, const char *line, size_t len)
{
	fprintf(stderr, "fuzz-scan: %s\nline: %.*s\n", what, (int)len, line);
	abort();
}

static void check_line(const char *line, size_t len)
{
	size_t body = len > 0 && line[len - 1] == '\r' ? len - 1 : len;
	struct scan_msg l;
	struct scan_id id;
	struct rpc_msg m;
	char detail[128];
	int r;

	if (body == 0 || scan_message(line, body, &l) != 0)
		return;
	r = frame_parse_line(line, len, &m, detail, sizeof(detail));
	if (r != 0)
		die("scan_message() accepted a line frame_parse_line() refuses", line, len);
	if (m.type != l.type)
		die("scan_message() saw another type of message", line, len);
	if (m.type != RPC_NOTIFICATION) {
		scan_id_of(m.id, &id);
		if (id.tag != l.id.tag || id.len != l.id.len || (id.len && memcmp(id.bytes, l.id.bytes, id.len) != 0))
			die("scan_message() read another id", line, len);
	} else if (l.id.tag) {
		die("scan_message() gave a notification an id", line, len);
	}
	if (m.method ? !l.method || strlen(m.method) != l.method_len || memcmp(m.method, l.method, l.method_len) != 0
		     : l.method != NULL)
		die("scan_message() read another method", line, len);
	rpc_msg_clear(&m);
}

static void check_wrapped(const char *head, const char *data, size_t size, const char *tail)
{
	size_t hl = strlen(head), tl = strlen(tail);
	char *line = malloc(hl + size + tl);

	if (!line)
		abort();
	memcpy(line, head, hl);
	memcpy(line + hl, data, size);
	memcpy(line + hl + size, tail, tl);
	check_line(line, hl + size + tl);
	free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data, *end = p + size;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);

		check_line(p, len);
		check_wrapped("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"params\":[", p, len, "]}");
		check_wrapped("{\"jsonrpc\":\"2.0\",\"id\":", p, len, ",\"result\":{}}");
		check_wrapped("{\"jsonrpc\":\"2.0\",\"id\":\"e\",\"error\":", p, len, "}");
		p += len + 1;
	}
	return 0;
}
