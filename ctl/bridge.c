/*
 * See bridge.h. The bridge is a poll() loop over three descriptors with four
 * plain buffers; per message it does one pass over the bytes (find the
 * newline, bridge_scan()) and one copy into the output buffer, and per wakeup
 * one read and one write, so that a request costs the client's process little
 * more than the syscalls that move it.
 *
 * Why it still looks at every line: the worker would refuse bad input too,
 * but the bridge must know each request's id to answer it when the worker
 * dies (SIGKILL, a crash, logout), and it must only count as in flight what
 * the worker will count and answer. Both follow from frame_parse_line()'s
 * verdict, which bridge_scan() reproduces for ordinary messages without
 * building a JSON tree; anything unusual is handed to frame_parse_line().
 *
 * MCP traffic between a client and its worker carries no OAuth token (the
 * worker adds the upstream's credentials itself), so unlike the framing
 * module the bridge does not wipe the bytes it has relayed.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "bridge.h"
#include "frame.h"
#include "proto.h"
#include "util.h"

#define BRIDGE_LIMIT ((size_t)PROTO_MAX_MESSAGE)
/* Read at least this much at a time; the buffers start at this size. */
#define BRIDGE_CHUNK ((size_t)64 * 1024)
/* Queued for one side before the other side is no longer read. */
#define BRIDGE_BACKLOG (4 * BRIDGE_LIMIT)
/* Nesting the scanner follows; deeper lines go to json-c (which allows 128). */
#define SCAN_MAX_DEPTH 64
/* Integers json-c holds as int64 whatever their digits; longer ones go to json-c. */
#define SCAN_MAX_INT_DIGITS 18
#define SCAN_MAX_NUMBER_LEN 24

static const char too_large_detail[] = "message longer than the limit";

_noreturn_ static void bridge_oom(void)
{
	fputs("mcpctl: out of memory\n", stderr);
	exit(1);
}

/* ---- bridge_scan(): one pass, no allocation ---- */

enum tok_kind { T_STRING, T_INT, T_NUMBER, T_LITERAL, T_NULL, T_OBJECT, T_ARRAY };

struct token {
	enum tok_kind kind;
	const unsigned char *start, *stop;	/* the token's bytes, quotes included */
	bool escaped;				/* a string with a backslash in it */
};

/* What the members of the message object (and of its "error") said. */
enum {
	M_JSONRPC = 1 << 0,
	M_ID = 1 << 1,
	M_METHOD = 1 << 2,
	M_PARAMS = 1 << 3,
	M_RESULT = 1 << 4,
	M_ERROR = 1 << 5,
	M_CODE = 1 << 6,	/* in "error" */
	M_MESSAGE = 1 << 7,	/* in "error" */
};

struct scan {
	const unsigned char *p, *end;
	unsigned members;	/* M_* seen */
	struct token id;
};

enum obj_role { OBJ_PLAIN, OBJ_MESSAGE, OBJ_ERROR };

static int scan_value(struct scan *s, unsigned depth, enum obj_role role, struct token *t);

static void skip_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\r'))
		s->p++;
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static int hex4(const unsigned char *p, const unsigned char *end, unsigned *out)
{
	unsigned v = 0;

	if (end - p < 4)
		return BRIDGE_UNSURE;
	for (int i = 0; i < 4; i++) {
		unsigned char c = p[i];

		v <<= 4;
		if (is_digit(c))
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return BRIDGE_UNSURE;
	}
	*out = v;
	return 0;
}

/*
 * A string at s->p (the opening quote). Control characters, DEL, \u0000 and
 * surrogates that do not pair are left to json-c.
 */
static int scan_string(struct scan *s, struct token *t)
{
	const unsigned char *p = s->p + 1, *end = s->end;

	t->kind = T_STRING;
	t->start = s->p;
	t->escaped = false;
	for (;;) {
		unsigned cp, lo;
		size_t n;

		while (p < end && *p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\')
			p++;
		if (p >= end)
			return BRIDGE_UNSURE;
		if (*p == '"')
			break;
		if (*p == '\\') {
			t->escaped = true;
			if (end - p < 2)
				return BRIDGE_UNSURE;
			switch (p[1]) {
			case '"':
			case '\\':
			case '/':
			case 'b':
			case 'f':
			case 'n':
			case 'r':
			case 't':
				p += 2;
				continue;
			case 'u':
				if (hex4(p + 2, end, &cp) || cp == 0 || (cp >= 0xdc00 && cp <= 0xdfff))
					return BRIDGE_UNSURE;
				p += 6;
				if (cp >= 0xd800 && cp <= 0xdbff) {
					if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, end, &lo) ||
					    lo < 0xdc00 || lo > 0xdfff)
						return BRIDGE_UNSURE;
					p += 6;
				}
				continue;
			default:
				return BRIDGE_UNSURE;
			}
		}
		if (*p < 0x80)
			return BRIDGE_UNSURE;
		n = frame_utf8_seq(p, (size_t)(end - p));
		if (!n)
			return BRIDGE_UNSURE;
		p += n;
	}
	s->p = p + 1;
	t->stop = s->p;
	return 0;
}

/* RFC 8259 numbers without an exponent, short enough that json-c reads them as they are. */
static int scan_number(struct scan *s, struct token *t)
{
	const unsigned char *p = s->p, *end = s->end, *digits;

	t->start = p;
	if (*p == '-')
		p++;
	digits = p;
	if (p < end && *p == '0') {
		p++;
	} else if (p < end && *p >= '1' && *p <= '9') {
		while (p < end && is_digit(*p))
			p++;
	} else {
		return BRIDGE_UNSURE;
	}
	t->kind = T_INT;
	if (p - digits > SCAN_MAX_INT_DIGITS)
		return BRIDGE_UNSURE;
	if (p < end && *p == '.') {
		p++;
		if (p >= end || !is_digit(*p))
			return BRIDGE_UNSURE;
		while (p < end && is_digit(*p))
			p++;
		t->kind = T_NUMBER;
	}
	if ((p < end && (*p == 'e' || *p == 'E')) || p - t->start > SCAN_MAX_NUMBER_LEN)
		return BRIDGE_UNSURE;
	s->p = t->stop = p;
	return 0;
}

static int scan_literal(struct scan *s, struct token *t, const char *word, enum tok_kind kind)
{
	size_t n = strlen(word);

	if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
		return BRIDGE_UNSURE;
	t->kind = kind;
	t->start = s->p;
	s->p += n;
	t->stop = s->p;
	return 0;
}

static bool key_is(const struct token *k, const char *name)
{
	size_t n = strlen(name);

	return (size_t)(k->stop - k->start) == n + 2 && memcmp(k->start + 1, name, n) == 0;
}

/* Notes a member that matters; a second one of the same name is json-c's to settle. */
static int scan_note(struct scan *s, unsigned member)
{
	if (s->members & member)
		return BRIDGE_UNSURE;
	s->members |= member;
	return 0;
}

/*
 * A member of the message object, or of its "error": only what
 * rpc_classify() looks at. Failing a rule is BRIDGE_UNSURE: json-c then
 * says which rule.
 */
static int scan_member(struct scan *s, enum obj_role role, const struct token *k, const struct token *v)
{
	if (role == OBJ_ERROR) {
		if (key_is(k, "code") && (scan_note(s, M_CODE) || v->kind != T_INT))
			return BRIDGE_UNSURE;
		if (key_is(k, "message") && (scan_note(s, M_MESSAGE) || v->kind != T_STRING))
			return BRIDGE_UNSURE;
		return 0;
	}
	if (key_is(k, "jsonrpc")) {
		if (scan_note(s, M_JSONRPC) || v->kind != T_STRING || v->stop - v->start != 5 ||
		    memcmp(v->start, "\"2.0\"", 5) != 0)
			return BRIDGE_UNSURE;
	} else if (key_is(k, "id")) {
		if (scan_note(s, M_ID))
			return BRIDGE_UNSURE;
		/* Keys compare decoded bytes: an escaped string id, or -0 (json-c's 0), go the long way. */
		if ((v->kind == T_STRING && v->escaped) || (v->kind == T_INT && v->start[0] == '-' && v->start[1] == '0') ||
		    (v->kind != T_STRING && v->kind != T_INT && v->kind != T_NULL))
			return BRIDGE_UNSURE;
		s->id = *v;
	} else if (key_is(k, "method")) {
		if (scan_note(s, M_METHOD) || v->kind != T_STRING || v->stop - v->start < 3)
			return BRIDGE_UNSURE;
	} else if (key_is(k, "params")) {
		if (scan_note(s, M_PARAMS) || (v->kind != T_OBJECT && v->kind != T_ARRAY))
			return BRIDGE_UNSURE;
	} else if (key_is(k, "result")) {
		/* json-c holds null as no object at all: rpc_classify() sees no result. */
		if (scan_note(s, M_RESULT) || v->kind == T_NULL)
			return BRIDGE_UNSURE;
	} else if (key_is(k, "error")) {
		/* scan_object() noted M_ERROR and scanned the value in OBJ_ERROR role. */
		if (v->kind != T_OBJECT || (s->members & (M_CODE | M_MESSAGE)) != (M_CODE | M_MESSAGE))
			return BRIDGE_UNSURE;
	}
	return 0;
}

#define SCAN_MORE 2	/* scan_next(): another member or element follows */

/* After a member or element: the container's end (0), a ',' (SCAN_MORE), or
 * anything else (BRIDGE_UNSURE). */
static int scan_next(struct scan *s, char close)
{
	skip_ws(s);
	if (s->p >= s->end)
		return BRIDGE_UNSURE;
	if (*s->p == close) {
		s->p++;
		return 0;
	}
	if (*s->p != ',')
		return BRIDGE_UNSURE;
	s->p++;
	skip_ws(s);
	return SCAN_MORE;
}

static int scan_object(struct scan *s, unsigned depth, enum obj_role role)
{
	int r;

	if (depth > SCAN_MAX_DEPTH)
		return BRIDGE_UNSURE;
	s->p++;
	skip_ws(s);
	if (s->p < s->end && *s->p == '}') {
		s->p++;
		return 0;
	}
	for (;;) {
		struct token k, v;
		enum obj_role inner = OBJ_PLAIN;

		if (s->p >= s->end || *s->p != '"' || scan_string(s, &k))
			return BRIDGE_UNSURE;
		/* An escaped name might spell one that matters. */
		if (role != OBJ_PLAIN && k.escaped)
			return BRIDGE_UNSURE;
		skip_ws(s);
		if (s->p >= s->end || *s->p != ':')
			return BRIDGE_UNSURE;
		s->p++;
		skip_ws(s);
		if (role == OBJ_MESSAGE && key_is(&k, "error")) {
			if (scan_note(s, M_ERROR))
				return BRIDGE_UNSURE;
			inner = OBJ_ERROR;
		}
		if (scan_value(s, depth + 1, inner, &v))
			return BRIDGE_UNSURE;
		if (role != OBJ_PLAIN && scan_member(s, role, &k, &v))
			return BRIDGE_UNSURE;
		r = scan_next(s, '}');
		if (r != SCAN_MORE)
			return r;
	}
}

static int scan_array(struct scan *s, unsigned depth)
{
	int r;

	if (depth > SCAN_MAX_DEPTH)
		return BRIDGE_UNSURE;
	s->p++;
	skip_ws(s);
	if (s->p < s->end && *s->p == ']') {
		s->p++;
		return 0;
	}
	for (;;) {
		struct token v;

		if (scan_value(s, depth + 1, OBJ_PLAIN, &v))
			return BRIDGE_UNSURE;
		r = scan_next(s, ']');
		if (r != SCAN_MORE)
			return r;
	}
}

/* One value at s->p; depth is the nesting a container here would have. */
static int scan_value(struct scan *s, unsigned depth, enum obj_role role, struct token *t)
{
	if (s->p >= s->end)
		return BRIDGE_UNSURE;
	t->escaped = false;
	t->start = s->p;
	switch (*s->p) {
	case '{':
		t->kind = T_OBJECT;
		if (scan_object(s, depth, role))
			return BRIDGE_UNSURE;
		break;
	case '[':
		t->kind = T_ARRAY;
		if (scan_array(s, depth))
			return BRIDGE_UNSURE;
		break;
	case '"':
		return scan_string(s, t);
	case 't':
		return scan_literal(s, t, "true", T_LITERAL);
	case 'f':
		return scan_literal(s, t, "false", T_LITERAL);
	case 'n':
		return scan_literal(s, t, "null", T_NULL);
	default:
		return scan_number(s, t);
	}
	t->stop = s->p;
	return 0;
}

int bridge_scan(const char *line, size_t len, struct bridge_line *out)
{
	struct scan s = { .p = (const unsigned char *)line, .end = (const unsigned char *)line + len };
	struct token top;
	unsigned m;

	if (len == 0 || line[0] != '{' || scan_value(&s, 1, OBJ_MESSAGE, &top) || s.p != s.end)
		return BRIDGE_UNSURE;
	m = s.members;
	if (!(m & M_JSONRPC))
		return BRIDGE_UNSURE;
	if (m & M_METHOD) {
		if (m & (M_RESULT | M_ERROR))
			return BRIDGE_UNSURE;
		out->type = m & M_ID ? RPC_REQUEST : RPC_NOTIFICATION;
	} else {
		if (!(m & M_ID) || !(m & M_RESULT) == !(m & M_ERROR))
			return BRIDGE_UNSURE;
		out->type = m & M_RESULT ? RPC_RESULT : RPC_ERROR;
	}
	memset(&out->id, 0, sizeof(out->id));
	if (m & M_ID) {
		const struct token *id = &s.id;

		if (id->kind == T_NULL) {
			out->id.tag = 'n';
			out->id.bytes = "";
		} else if (id->kind == T_INT) {
			out->id.tag = 'i';
			out->id.bytes = (const char *)id->start;
			out->id.len = (size_t)(id->stop - id->start);
		} else {
			out->id.tag = 's';
			out->id.bytes = (const char *)id->start + 1;
			out->id.len = (size_t)(id->stop - id->start) - 2;
		}
	}
	return 0;
}

void bridge_id_of(struct json_object *id, struct bridge_id *out)
{
	memset(out, 0, sizeof(*out));
	switch (json_object_get_type(id)) {
	case json_type_string:
		out->tag = 's';
		out->bytes = json_object_get_string(id);
		out->len = (size_t)json_object_get_string_len(id);
		break;
	case json_type_int:
		/* As json-c writes it: int64 and uint64 alike. */
		out->tag = 'i';
		out->bytes = json_object_to_json_string_ext(id, JSON_C_TO_STRING_PLAIN);
		out->len = strlen(out->bytes);
		break;
	default:
		out->tag = 'n';
		out->bytes = "";
		break;
	}
}

/* ---- requests in flight: a multiset of ids, open addressing ---- */

struct flight {
	uint64_t hash;
	uint32_t count;		/* 0: a free slot */
	size_t len;		/* of the key: tag, then the id's bytes */
	char *heap;		/* the key when it does not fit in short_key */
	char short_key[40];
};

struct flights {
	struct flight *slots;
	size_t n_slots;		/* a power of two */
	size_t n_keys;		/* slots in use */
	size_t n_requests;	/* sum of the counts */
};

static uint64_t id_hash(const struct bridge_id *id)
{
	uint64_t h = (0xcbf29ce484222325ull ^ (unsigned char)id->tag) * 0x100000001b3ull;

	for (size_t i = 0; i < id->len; i++)
		h = (h ^ (unsigned char)id->bytes[i]) * 0x100000001b3ull;
	return h;
}

static const char *flight_key(const struct flight *f)
{
	return f->heap ? f->heap : f->short_key;
}

static bool flight_is(const struct flight *f, uint64_t h, const struct bridge_id *id)
{
	const char *k = flight_key(f);

	return f->hash == h && f->len == id->len + 1 && k[0] == id->tag && memcmp(k + 1, id->bytes, id->len) == 0;
}

static void flights_grow(struct flights *fl)
{
	size_t n = fl->n_slots ? 2 * fl->n_slots : 16;
	struct flight *slots = calloc(n, sizeof(*slots));

	if (!slots)
		bridge_oom();
	for (size_t i = 0; i < fl->n_slots; i++) {
		size_t j;

		if (!fl->slots[i].count)
			continue;
		for (j = fl->slots[i].hash & (n - 1); slots[j].count; j = (j + 1) & (n - 1))
			;
		slots[j] = fl->slots[i];
	}
	free(fl->slots);
	fl->slots = slots;
	fl->n_slots = n;
}

static void flights_add(struct flights *fl, const struct bridge_id *id)
{
	uint64_t h = id_hash(id);
	struct flight *f;
	size_t i;
	char *k;

	if (2 * (fl->n_keys + 1) > fl->n_slots)
		flights_grow(fl);
	for (i = h & (fl->n_slots - 1); fl->slots[i].count; i = (i + 1) & (fl->n_slots - 1)) {
		if (flight_is(&fl->slots[i], h, id)) {
			fl->slots[i].count++;
			fl->n_requests++;
			return;
		}
	}
	f = &fl->slots[i];
	f->hash = h;
	f->count = 1;
	f->len = id->len + 1;
	f->heap = NULL;
	if (f->len > sizeof(f->short_key)) {
		f->heap = malloc(f->len);
		if (!f->heap)
			bridge_oom();
	}
	k = f->heap ? f->heap : f->short_key;
	k[0] = id->tag;
	memcpy(k + 1, id->bytes, id->len);
	fl->n_keys++;
	fl->n_requests++;
}

/* One request with this id is answered; false when none was in flight. */
static bool flights_take(struct flights *fl, const struct bridge_id *id)
{
	uint64_t h = id_hash(id);
	size_t mask = fl->n_slots - 1, i, j;

	if (!fl->n_keys)
		return false;
	for (i = h & mask; !flight_is(&fl->slots[i], h, id); i = (i + 1) & mask)
		if (!fl->slots[i].count)
			return false;
	fl->n_requests--;
	if (--fl->slots[i].count)
		return true;
	free(fl->slots[i].heap);
	fl->n_keys--;
	/* Close the gap so that every key stays reachable from its home slot. */
	for (j = (i + 1) & mask; fl->slots[j].count; j = (j + 1) & mask) {
		size_t home = fl->slots[j].hash & mask;

		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			fl->slots[i] = fl->slots[j];
			i = j;
		}
	}
	memset(&fl->slots[i], 0, sizeof(fl->slots[i]));
	return true;
}

static void flights_free(struct flights *fl)
{
	for (size_t i = 0; i < fl->n_slots; i++)
		free(fl->slots[i].heap);
	free(fl->slots);
	memset(fl, 0, sizeof(*fl));
}

/* The JSON of a key, for an error reply (NULL: the JSON null). */
static struct json_object *flight_id_json(const struct flight *f)
{
	const char *k = flight_key(f);
	struct json_object *id;

	switch (k[0]) {
	case 's':
		id = json_object_new_string_len(k + 1, (int)(f->len - 1));
		break;
	case 'i': {
		/* Digits, at most uint64's: json-c reads them back as it wrote them. */
		char digits[32];

		snprintf(digits, sizeof(digits), "%.*s", (int)(f->len - 1), k + 1);
		id = json_tokener_parse(digits);
		break;
	}
	default:
		return NULL;
	}
	if (!id)
		bridge_oom();
	return id;
}

/* ---- buffers ---- */

struct buf {
	char *data;
	size_t off, len, cap;	/* pending bytes are data[off, len) */
};

static size_t buf_pending(const struct buf *b)
{
	return b->len - b->off;
}

/* Room for more bytes at the end: compacts first, grows when that is not enough. */
static void buf_reserve(struct buf *b, size_t more)
{
	size_t cap;
	char *p;

	if (b->off == b->len)
		b->off = b->len = 0;
	if (b->cap - b->len >= more)
		return;
	if (b->off) {
		memmove(b->data, b->data + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
		if (b->cap - b->len >= more)
			return;
	}
	for (cap = b->cap ? b->cap : BRIDGE_CHUNK; cap - b->len < more; cap *= 2)
		;
	p = realloc(b->data, cap);
	if (!p)
		bridge_oom();
	b->data = p;
	b->cap = cap;
}

static void buf_add_line(struct buf *b, const char *line, size_t len)
{
	buf_reserve(b, len + 1);
	memcpy(b->data + b->len, line, len);
	b->data[b->len + len] = '\n';
	b->len += len + 1;
}

static void buf_drop(struct buf *b)
{
	b->off = b->len = 0;
}

static void buf_free(struct buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

/* Reads once into b: the count, 0 at the end, -1 with errno. */
static ssize_t buf_read(struct buf *b, int fd)
{
	ssize_t n;

	/* A partial line is at most BRIDGE_LIMIT bytes here (a longer one has been
	 * refused), so b never grows past 2 * BRIDGE_LIMIT. */
	buf_reserve(b, BRIDGE_CHUNK);
	do
		n = read(fd, b->data + b->len, b->cap - b->len);
	while (n < 0 && errno == EINTR);
	if (n > 0)
		b->len += (size_t)n;
	return n;
}

/*
 * Writes what b holds: 0 when done or when fd would block (*blocked), else
 * -errno. A socket gets MSG_NOSIGNAL; for stdout, bridge_run() ignores SIGPIPE.
 */
static int buf_write(struct buf *b, int fd, bool is_socket, bool *blocked)
{
	*blocked = false;
	while (b->off < b->len) {
		ssize_t n = is_socket ? send(fd, b->data + b->off, b->len - b->off, MSG_NOSIGNAL)
				      : write(fd, b->data + b->off, b->len - b->off);

		if (n > 0) {
			b->off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			*blocked = true;
			return 0;
		}
		return n < 0 ? -errno : -EPIPE;
	}
	buf_drop(b);
	return 0;
}

/* Until b is written out to stdout or that fails; for the last words before exit. */
static void buf_write_all(struct buf *b, int fd)
{
	bool blocked;

	while (buf_write(b, fd, false, &blocked) == 0 && blocked) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };

		poll(&p, 1, 1000);
	}
}

/* ---- the relay ---- */

struct bridge {
	const char *server;
	int sock;
	struct buf from_client, to_sock, from_sock, to_client;
	/* Bytes of the partial line at the front of from_* already searched for a newline. */
	size_t client_searched, sock_searched;
	struct flights flights;
	bool client_eof;	/* stdin ended */
	bool skipping;		/* dropping the rest of a client line over the limit */
	bool sock_eof;		/* the worker's side ended or broke the framing */
	bool sock_broken;	/* writing to the worker failed: what is left for it is dropped */
	bool sock_shut;		/* our sending side is shut down (the client ended) */
	bool sock_blocked, client_blocked;	/* the last write would have blocked */
	bool client_gone;	/* stdout is closed */
};

static void bridge_reply(struct bridge *b, struct json_object *msg)
{
	const char *s;
	size_t len;

	if (!msg)
		bridge_oom();
	s = json_object_to_json_string_length(msg, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	if (!s)
		bridge_oom();
	buf_add_line(&b->to_client, s, len);
	json_object_put(msg);
}

/* A line the bridge refuses: the framing module's error, with the id when one could be read. */
static void bridge_refuse_line(struct bridge *b, int status, const char *detail, struct json_object *id)
{
	struct json_object *e = rpc_error_for_frame(status, detail);

	if (e && id)
		json_object_object_add(e, "id", json_object_get(id));
	bridge_reply(b, e);
}

/* One line from the client: len counts a trailing '\r' (frame_parse_line() drops it). */
static void bridge_client_line(struct bridge *b, const char *line, size_t len)
{
	size_t body = len > 0 && line[len - 1] == '\r' ? len - 1 : len;
	struct bridge_line l;
	struct bridge_id id;
	struct rpc_msg m;
	char detail[160] = "";
	int r;

	if (body == 0)
		return;
	if (bridge_scan(line, body, &l) == 0) {
		if (l.type == RPC_REQUEST)
			flights_add(&b->flights, &l.id);
		buf_add_line(&b->to_sock, line, body);
		return;
	}
	r = frame_parse_line(line, len, &m, detail, sizeof(detail));
	if (r < 0)
		bridge_oom();
	if (r > 0) {
		bridge_refuse_line(b, r, detail, m.id);
	} else {
		if (m.type == RPC_REQUEST) {
			bridge_id_of(m.id, &id);
			flights_add(&b->flights, &id);
		}
		buf_add_line(&b->to_sock, line, body);
	}
	rpc_msg_clear(&m);
}

/* One line from the worker; -1 when it is not a message (the worker broke the framing). */
static int bridge_sock_line(struct bridge *b, const char *line, size_t len)
{
	size_t body = len > 0 && line[len - 1] == '\r' ? len - 1 : len;
	struct bridge_line l;
	struct bridge_id id;
	struct rpc_msg m;
	int r;

	if (body == 0)
		return 0;
	if (bridge_scan(line, body, &l) == 0) {
		if (l.type == RPC_RESULT || l.type == RPC_ERROR)
			flights_take(&b->flights, &l.id);
		buf_add_line(&b->to_client, line, body);
		return 0;
	}
	r = frame_parse_line(line, len, &m, NULL, 0);
	if (r < 0)
		bridge_oom();
	if (r > 0) {
		rpc_msg_clear(&m);
		fprintf(stderr, "mcpctl: connect %s: the worker sent a malformed message (%s)\n", b->server,
			frame_strerror(r));
		return -1;
	}
	if (m.type == RPC_RESULT || m.type == RPC_ERROR) {
		bridge_id_of(m.id, &id);
		flights_take(&b->flights, &id);
	}
	buf_add_line(&b->to_client, line, body);
	rpc_msg_clear(&m);
	return 0;
}

/*
 * Handles every complete line in from the client's side: a line over the
 * limit is answered with an error and dropped up to its newline (the
 * connection goes on).
 */
static void bridge_client_lines(struct bridge *b)
{
	struct buf *in = &b->from_client;

	for (;;) {
		size_t avail = buf_pending(in), len;
		char *start, *nl;

		if (avail == 0)
			return;
		start = in->data + in->off;
		if (b->skipping) {
			nl = memchr(start, '\n', avail);
			if (!nl) {
				buf_drop(in);
				return;
			}
			in->off += (size_t)(nl - start) + 1;
			b->skipping = false;
			continue;
		}
		nl = avail > b->client_searched ? memchr(start + b->client_searched, '\n', avail - b->client_searched)
						: NULL;
		if (!nl) {
			b->client_searched = avail;
			if (avail > BRIDGE_LIMIT) {
				bridge_refuse_line(b, FRAME_E_TOO_LARGE, too_large_detail, NULL);
				buf_drop(in);
				b->client_searched = 0;
				b->skipping = true;
			}
			return;
		}
		b->client_searched = 0;
		len = (size_t)(nl - start);
		in->off += len + 1;
		if (len > BRIDGE_LIMIT)
			bridge_refuse_line(b, FRAME_E_TOO_LARGE, too_large_detail, NULL);
		else
			bridge_client_line(b, start, len);
	}
}

/* Every complete line from the worker; -1 when it broke the framing. */
static int bridge_sock_lines(struct bridge *b)
{
	struct buf *in = &b->from_sock;

	for (;;) {
		size_t avail = buf_pending(in), len;
		char *start, *nl;

		if (avail == 0)
			return 0;
		start = in->data + in->off;
		nl = avail > b->sock_searched ? memchr(start + b->sock_searched, '\n', avail - b->sock_searched) : NULL;
		if (!nl) {
			b->sock_searched = avail;
			if (avail > BRIDGE_LIMIT) {
				fprintf(stderr, "mcpctl: connect %s: the worker sent a malformed message (%s)\n",
					b->server, frame_strerror(FRAME_E_TOO_LARGE));
				return -1;
			}
			return 0;
		}
		b->sock_searched = 0;
		len = (size_t)(nl - start);
		in->off += len + 1;
		if (len > BRIDGE_LIMIT) {
			fprintf(stderr, "mcpctl: connect %s: the worker sent a malformed message (%s)\n", b->server,
				frame_strerror(FRAME_E_TOO_LARGE));
			return -1;
		}
		if (bridge_sock_line(b, start, len) < 0)
			return -1;
	}
}

static void bridge_read_client(struct bridge *b)
{
	ssize_t n = buf_read(&b->from_client, STDIN_FILENO);

	if (n > 0) {
		bridge_client_lines(b);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return;
	/* The end of the client's input (a read error ends it just the same). */
	b->client_eof = true;
	if (buf_pending(&b->from_client) > 0 && !b->skipping)
		fprintf(stderr, "mcpctl: connect %s: the client's input ended inside a message (%zu bytes without "
				"a newline); it was dropped\n",
			b->server, buf_pending(&b->from_client));
	buf_drop(&b->from_client);
}

static void bridge_read_sock(struct bridge *b)
{
	ssize_t n = buf_read(&b->from_sock, b->sock);

	if (n > 0) {
		if (bridge_sock_lines(b) < 0)
			b->sock_eof = true;
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return;
	b->sock_eof = true;
}

static void bridge_flush_sock(struct bridge *b)
{
	int r = 0;

	if (!b->sock_broken && buf_pending(&b->to_sock) && !b->sock_blocked)
		r = buf_write(&b->to_sock, b->sock, true, &b->sock_blocked);
	if (r < 0) {
		/* The worker is gone. Its last answers may still wait to be read:
		 * the end of the stream comes after them. */
		b->sock_broken = true;
		if (r != -EPIPE && r != -ECONNRESET)
			b->sock_eof = true;
	}
	if (b->sock_broken)
		buf_drop(&b->to_sock);
	if (b->client_eof && !b->sock_shut && !buf_pending(&b->to_sock)) {
		/* The worker answers what is in flight, then closes. */
		shutdown(b->sock, SHUT_WR);
		b->sock_shut = true;
	}
}

static void bridge_flush_client(struct bridge *b)
{
	if (buf_pending(&b->to_client) && !b->client_blocked &&
	    buf_write(&b->to_client, STDOUT_FILENO, false, &b->client_blocked) < 0)
		b->client_gone = true;
}

/* The worker side went away: every request still in flight gets an error. */
static void bridge_fail_in_flight(struct bridge *b, const char *why)
{
	char msg[256];

	snprintf(msg, sizeof(msg), "mcpkeeper: the connection to %s was lost (%s); retry", b->server, why);
	for (size_t i = 0; i < b->flights.n_slots; i++) {
		const struct flight *f = &b->flights.slots[i];

		for (uint32_t n = 0; n < f->count; n++) {
			struct json_object *id = flight_id_json(f);

			bridge_reply(b, rpc_error(id, RPC_INTERNAL_ERROR, KIND_UNAVAILABLE, msg));
			json_object_put(id);
		}
	}
}

static int bridge_loop(struct bridge *b)
{
	while (!b->sock_eof) {
		struct pollfd p[3] = {
			{ .fd = -1, .events = POLLIN },
			{ .fd = b->sock, .events = 0 },
			{ .fd = -1, .events = POLLOUT },
		};

		/* Do not read more of one side than the other side can take. */
		if (!b->client_eof && buf_pending(&b->to_sock) <= BRIDGE_BACKLOG)
			p[0].fd = STDIN_FILENO;
		if (buf_pending(&b->to_client) <= BRIDGE_BACKLOG)
			p[1].events |= POLLIN;
		if (buf_pending(&b->to_sock))
			p[1].events |= POLLOUT;
		if (buf_pending(&b->to_client))
			p[2].fd = STDOUT_FILENO;
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
			bridge_read_client(b);
		if (p[1].revents & (POLLIN | POLLHUP | POLLERR))
			bridge_read_sock(b);
		if (p[1].revents & (POLLOUT | POLLHUP | POLLERR))
			b->sock_blocked = false;
		if (p[2].revents & (POLLOUT | POLLHUP | POLLERR))
			b->client_blocked = false;
		/* Written at once: a poll for POLLOUT only after a write would have blocked. */
		bridge_flush_sock(b);
		bridge_flush_client(b);
		if (b->client_gone || (p[2].revents & (POLLHUP | POLLERR)))
			return BRIDGE_DONE; /* the MCP client is gone */
	}
	if (b->flights.n_requests > 0 || !b->client_eof) {
		bridge_fail_in_flight(b, "the worker closed the connection");
		buf_write_all(&b->to_client, STDOUT_FILENO);
		fprintf(stderr, "mcpctl: connect %s: the worker closed the connection\n", b->server);
		return BRIDGE_E_LOST;
	}
	buf_write_all(&b->to_client, STDOUT_FILENO);
	return BRIDGE_DONE;
}

int bridge_run(const char *server, int sock, struct evbuffer *early)
{
	struct bridge b = { .server = server, .sock = sock };
	void (*old_pipe)(int);
	int r;

	fd_set_nonblock(STDIN_FILENO, 1);
	fd_set_nonblock(STDOUT_FILENO, 1);
	fd_set_nonblock(sock, 1);
	/* A client that closed its stdout is seen as EPIPE, not as a signal that kills mcpctl. */
	old_pipe = signal(SIGPIPE, SIG_IGN);
	if (early && evbuffer_get_length(early) > 0) {
		size_t n = evbuffer_get_length(early);

		buf_reserve(&b.from_sock, n);
		evbuffer_remove(early, b.from_sock.data + b.from_sock.len, n);
		b.from_sock.len += n;
	}
	if (bridge_sock_lines(&b) < 0)
		r = BRIDGE_E_PROTOCOL;
	else
		r = bridge_loop(&b);
	signal(SIGPIPE, old_pipe);
	buf_free(&b.from_client);
	buf_free(&b.to_sock);
	buf_free(&b.from_sock);
	buf_free(&b.to_client);
	flights_free(&b.flights);
	return r;
}
