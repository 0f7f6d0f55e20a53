/*
 * A one-pass check of one JSON-RPC line that builds no JSON tree: for the
 * ordinary messages it answers what frame_parse_line() would (accepted or
 * not, the type, the id, the method), without allocating; for anything
 * unusual it says SCAN_UNSURE and frame_parse_line() must decide. Used
 * where every message passes through and is forwarded as it is: the
 * bridge of `mcpctl connect --bridge` and the worker, in both directions.
 * fuzz-scan proves the agreement with frame_parse_line().
 */
#pragma once

#include <stddef.h>

#include "frame.h"

struct json_object;

/*
 * A message's id as a table of requests in flight keys it: tag 'n' (null),
 * 'i' (an integer: its decimal digits, as json-c writes it) or 's' (a string:
 * its decoded bytes, not NUL-terminated); tag 0 when the message has none.
 * bytes is never NULL when tag is set.
 */
struct scan_id {
	char tag;
	const char *bytes;
	size_t len;
};

struct scan_msg {
	enum rpc_type type;
	struct scan_id id;	/* requests and responses */
	const char *method;	/* requests and notifications: its bytes (no escapes), not NUL-terminated */
	size_t method_len;
};

/* scan_message()'s answer when frame_parse_line() must decide. */
#define SCAN_UNSURE 1

/*
 * Checks one line (no newline, no trailing '\r', not blank). Returns 0 when
 * it is a JSON-RPC 2.0 message that frame_parse_line() accepts as the same
 * type with the same id and method (*out filled, its pointers into line),
 * SCAN_UNSURE otherwise: bad input, and good input that is rare (escaped
 * keys, ids or methods, exponents, very long numbers, deep nesting,
 * duplicate members that matter).
 */
int scan_message(const char *line, size_t len, struct scan_msg *out);

/* The key of a parsed message's id (m->id of struct rpc_msg, NULL for a
 * JSON null); its pointers borrow from id. */
void scan_id_of(struct json_object *id, struct scan_id *out);
