/*
 * The stdio bridge of `mcpctl connect --bridge NAME` (and of a plain
 * `connect` whose stdin or stdout is a terminal or a file, which the worker
 * cannot take over): an MCP client's stdin and stdout on one side, the
 * control socket that the keeper handed to the upstream's worker on the
 * other, one JSON-RPC message per line both ways.
 *
 * The bridge gives the client the guarantees of the framing module (a line
 * over the size limit, bad UTF-8, bad JSON and what is not JSON-RPC 2.0 get a
 * JSON-RPC error and never reach the worker) and remembers the requests in
 * flight, so that each one is answered even when the worker goes away. It
 * does so without rebuilding messages: bridge_scan() checks a line in one
 * pass and finds its id, and a line it accepts is forwarded byte for byte.
 * What it is not sure of goes through frame_parse_line(), whose verdict is
 * the one that counts (and the one the worker applies to the same bytes).
 */
#pragma once

#include <stddef.h>

#include "frame.h"

struct evbuffer;
struct json_object;

/* How bridge_run() ends. */
enum {
	BRIDGE_DONE = 0,	/* the client is done and every request was answered */
	BRIDGE_E_LOST,		/* the worker side went away: requests in flight got errors */
	BRIDGE_E_PROTOCOL,	/* what the worker sent first was malformed */
};

/*
 * Relays stdin and stdout to sock until the worker closes it (or the client
 * closes its stdout). early holds what arrived after the keeper's reply
 * (may be NULL). Returns BRIDGE_DONE, BRIDGE_E_*, or a negative errno value.
 */
int bridge_run(const char *server, int sock, struct evbuffer *early);

/*
 * A message's id as the table of requests in flight keys it: tag 'n' (null),
 * 'i' (an integer: its decimal digits, as json-c writes it) or 's' (a string:
 * its decoded bytes, not NUL-terminated); tag 0 when the message has none.
 * bytes is never NULL when tag is set.
 */
struct bridge_id {
	char tag;
	const char *bytes;
	size_t len;
};

struct bridge_line {
	enum rpc_type type;
	struct bridge_id id;	/* requests and responses */
};

/* bridge_scan()'s answer when frame_parse_line() must decide. */
#define BRIDGE_UNSURE 1

/*
 * Checks one line (no newline, no trailing '\r', not blank). Returns 0 when
 * it is a JSON-RPC 2.0 message that frame_parse_line() accepts as the same
 * type with the same id (*out filled, its pointers into line), BRIDGE_UNSURE
 * otherwise: bad input, and good input that is rare (escaped keys or ids,
 * exponents, very long numbers, deep nesting, duplicate members that matter).
 */
int bridge_scan(const char *line, size_t len, struct bridge_line *out);

/* The key of a parsed message's id (m->id of struct rpc_msg, NULL for a
 * JSON null); its pointers borrow from id. */
void bridge_id_of(struct json_object *id, struct bridge_id *out);
