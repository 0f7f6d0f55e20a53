/*
 * The one framing module: newline-delimited JSON-RPC 2.0, as MCP's stdio
 * transport frames it. Used on the control socket, on every keeper<->child
 * channel and by mcpctl; nothing else in the project splits lines of JSON.
 *
 * Reading is incremental over a libevent evbuffer: frame_read() takes one
 * complete line off the front of the buffer, or says it needs more. A line
 * longer than the limit is refused as soon as more than limit bytes are
 * buffered without a newline, so a reader never holds more than limit + 1
 * bytes of one message; frame_bev_setup() makes a bufferevent stop reading at
 * that point. The consumed bytes are wiped, because lines on keeper<->child
 * channels may carry access tokens.
 *
 * Outcomes follow the project's convention: 0 for a message, positive named
 * outcomes (FRAME_*) the caller must decide on, negative errno values for
 * system failures. After FRAME_E_TOO_LARGE the stream cannot be resynced and
 * must be closed; after the other errors the bad line has been consumed.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct bufferevent;
struct json_object;

enum {
	FRAME_NEED_MORE = 1,	/* no complete line buffered yet */
	FRAME_E_TOO_LARGE,	/* a line longer than the limit */
	FRAME_E_UTF8,		/* a line that is not valid UTF-8 */
	FRAME_E_JSON,		/* not JSON */
	FRAME_E_NOT_OBJECT,	/* JSON, but not an object */
	FRAME_E_INVALID_RPC,	/* an object, but not a JSON-RPC 2.0 message */
};

enum rpc_type {
	RPC_REQUEST,		/* method and id */
	RPC_NOTIFICATION,	/* method, no id */
	RPC_RESULT,		/* id and result */
	RPC_ERROR,		/* id and error */
};

/*
 * One received message. root owns the JSON; the other pointers borrow from
 * it. After FRAME_E_INVALID_RPC root is still set (and id when one could be
 * read) so that the caller can answer with the request's id.
 */
struct rpc_msg {
	struct json_object *root;
	enum rpc_type type;
	const char *method;
	struct json_object *id;		/* NULL for notifications */
	struct json_object *params;	/* NULL when absent */
	struct json_object *result;
	struct json_object *error;
};

void rpc_msg_clear(struct rpc_msg *m);

/* The length of the RFC 3629 UTF-8 sequence at p (1 for ASCII; no overlong
 * forms, no surrogates, nothing above U+10FFFF), 0 when it is not one;
 * avail bytes are readable (at least 1). */
size_t frame_utf8_seq(const unsigned char *p, size_t avail);

/*
 * Takes one line off in and parses it as a JSON-RPC 2.0 message.
 * Blank lines are skipped; a trailing '\r' is ignored.
 * Returns 0 with *m filled, or FRAME_NEED_MORE / FRAME_E_*; on FRAME_E_*
 * detail (when not NULL) gets a short description safe to send back.
 */
int frame_read(struct evbuffer *in, size_t limit, struct rpc_msg *m, char *detail, size_t detail_len);

/*
 * frame_read() without the parse, for a reader that wants the line's bytes
 * too (the worker forwards what it accepted as it is): 0 with *l the next
 * line that is not blank, pulled up in in (text, len: without the newline,
 * maybe ending in '\r'), which stays there until the caller drains
 * l->consumed bytes; or FRAME_NEED_MORE, FRAME_E_TOO_LARGE (nothing taken)
 * or a negative errno value. Unlike frame_read() it does not wipe the line.
 */
struct frame_line {
	char *text;
	size_t len;
	size_t consumed;	/* len plus the newline */
};
int frame_next_line(struct evbuffer *in, size_t limit, struct frame_line *l, char *detail, size_t detail_len);

/* Parses one line that is already separated (no newline in it). */
int frame_parse_line(const char *line, size_t len, struct rpc_msg *m, char *detail, size_t detail_len);

/* Validates a parsed object as JSON-RPC 2.0 and fills *m (root borrowed). */
int rpc_classify(struct json_object *obj, struct rpc_msg *m, char *detail, size_t detail_len);

/*
 * Appends msg as one compact line to out. Returns 0, FRAME_E_TOO_LARGE when
 * its serialisation exceeds limit, or -ENOMEM. The copy handed to libevent
 * is wiped when libevent releases it.
 */
int frame_write(struct evbuffer *out, struct json_object *msg, size_t limit);

/* Limits a bufferevent's input to limit + 1 bytes so frame_read() can refuse
 * an oversized line before more of it is buffered. */
void frame_bev_setup(struct bufferevent *bev, size_t limit);

/*
 * Blocking helpers for simple clients (mcpctl) and tests on a descriptor that
 * may be non-blocking: frame_write_fd() writes the whole line, waiting with
 * poll() on EAGAIN; frame_read_fd() reads into buf until one message is
 * complete. timeout_ms bounds each wait for the descriptor (< 0: forever). Both return 0, a FRAME_* outcome,
 * -EPIPE / -ECONNRESET at end of stream (read: -EPIPE for a clean EOF),
 * -ETIMEDOUT, or another negative errno value.
 */
int frame_write_fd(int fd, struct json_object *msg, size_t limit, int timeout_ms);
int frame_read_fd(int fd, struct evbuffer *buf, size_t limit, struct rpc_msg *m, int timeout_ms,
		  char *detail, size_t detail_len);

/* A short English description of a FRAME_* outcome. */
const char *frame_strerror(int status);

/*
 * Builders. Each returns a new object (NULL only on allocation failure) and
 * takes ownership of the params/result object passed in; id is borrowed
 * (a new reference is taken).
 */
struct json_object *rpc_request(const char *method, struct json_object *params, int64_t id);
struct json_object *rpc_notification(const char *method, struct json_object *params);
struct json_object *rpc_result(struct json_object *id, struct json_object *result);
/* error.data.kind = kind (may be NULL to omit data). */
struct json_object *rpc_error(struct json_object *id, int code, const char *kind, const char *message);
/* The JSON-RPC error that answers a FRAME_E_* outcome (with id null). */
struct json_object *rpc_error_for_frame(int status, const char *detail);

/*
 * Zeroes every string inside obj (recursively), then drops the reference.
 * For messages that carried tokens: json-c frees its strings unwiped.
 */
void rpc_wipe_put(struct json_object *obj);

/* Accessors for error responses: code, data.kind and message (NULL when absent). */
int rpc_error_code(const struct rpc_msg *m);
const char *rpc_error_kind(const struct rpc_msg *m);
const char *rpc_error_message(const struct rpc_msg *m);
