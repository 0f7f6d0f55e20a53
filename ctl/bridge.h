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
 * does so without rebuilding messages: scan_message() checks a line in one
 * pass and finds its id, and a line it accepts is forwarded byte for byte.
 * What it is not sure of goes through frame_parse_line(), whose verdict is
 * the one that counts (and the one the worker applies to the same bytes).
 */
#pragma once

#include <stddef.h>

#include "frame.h"
#include "scan.h"

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
