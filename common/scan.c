/*
 * See scan.h. A recursive descent over RFC 8259 that allocates nothing: it
 * follows the members rpc_classify() looks at (jsonrpc, id, method, params,
 * result, error with its code and message) and only checks the rest for
 * well-formedness. Whatever json-c might read differently from a plain
 * reading (escapes in names and ids, exponents, long numbers, control
 * characters, lone surrogates, deep nesting, duplicate members that matter)
 * is SCAN_UNSURE, so that frame_parse_line() decides.
 */
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include <json-c/json.h>

#include "frame.h"
#include "scan.h"

/* Nesting the scanner follows; deeper lines go to json-c (which allows 128). */
#define SCAN_MAX_DEPTH 64
/* Integers json-c holds as int64 whatever their digits; longer ones go to json-c. */
#define SCAN_MAX_INT_DIGITS 18
#define SCAN_MAX_NUMBER_LEN 24

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
	struct token id, method;
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
		return SCAN_UNSURE;
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
			return SCAN_UNSURE;
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
			return SCAN_UNSURE;
		if (*p == '"')
			break;
		if (*p == '\\') {
			t->escaped = true;
			if (end - p < 2)
				return SCAN_UNSURE;
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
					return SCAN_UNSURE;
				p += 6;
				if (cp >= 0xd800 && cp <= 0xdbff) {
					if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, end, &lo) ||
					    lo < 0xdc00 || lo > 0xdfff)
						return SCAN_UNSURE;
					p += 6;
				}
				continue;
			default:
				return SCAN_UNSURE;
			}
		}
		if (*p < 0x80)
			return SCAN_UNSURE;
		n = frame_utf8_seq(p, (size_t)(end - p));
		if (!n)
			return SCAN_UNSURE;
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
		return SCAN_UNSURE;
	}
	t->kind = T_INT;
	if (p - digits > SCAN_MAX_INT_DIGITS)
		return SCAN_UNSURE;
	if (p < end && *p == '.') {
		p++;
		if (p >= end || !is_digit(*p))
			return SCAN_UNSURE;
		while (p < end && is_digit(*p))
			p++;
		t->kind = T_NUMBER;
	}
	if ((p < end && (*p == 'e' || *p == 'E')) || p - t->start > SCAN_MAX_NUMBER_LEN)
		return SCAN_UNSURE;
	s->p = t->stop = p;
	return 0;
}

static int scan_literal(struct scan *s, struct token *t, const char *word, enum tok_kind kind)
{
	size_t n = strlen(word);

	if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
		return SCAN_UNSURE;
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
		return SCAN_UNSURE;
	s->members |= member;
	return 0;
}

/*
 * A member of the message object, or of its "error": only what
 * rpc_classify() looks at. Failing a rule is SCAN_UNSURE: json-c then
 * says which rule.
 */
static int scan_member(struct scan *s, enum obj_role role, const struct token *k, const struct token *v)
{
	if (role == OBJ_ERROR) {
		if (key_is(k, "code") && (scan_note(s, M_CODE) || v->kind != T_INT))
			return SCAN_UNSURE;
		if (key_is(k, "message") && (scan_note(s, M_MESSAGE) || v->kind != T_STRING))
			return SCAN_UNSURE;
		return 0;
	}
	if (key_is(k, "jsonrpc")) {
		if (scan_note(s, M_JSONRPC) || v->kind != T_STRING || v->stop - v->start != 5 ||
		    memcmp(v->start, "\"2.0\"", 5) != 0)
			return SCAN_UNSURE;
	} else if (key_is(k, "id")) {
		if (scan_note(s, M_ID))
			return SCAN_UNSURE;
		/* Keys compare decoded bytes: an escaped string id, or -0 (json-c's 0), go the long way. */
		if ((v->kind == T_STRING && v->escaped) || (v->kind == T_INT && v->start[0] == '-' && v->start[1] == '0') ||
		    (v->kind != T_STRING && v->kind != T_INT && v->kind != T_NULL))
			return SCAN_UNSURE;
		s->id = *v;
	} else if (key_is(k, "method")) {
		/* An escaped name is json-c's to decode. */
		if (scan_note(s, M_METHOD) || v->kind != T_STRING || v->stop - v->start < 3 || v->escaped)
			return SCAN_UNSURE;
		s->method = *v;
	} else if (key_is(k, "params")) {
		if (scan_note(s, M_PARAMS) || (v->kind != T_OBJECT && v->kind != T_ARRAY))
			return SCAN_UNSURE;
	} else if (key_is(k, "result")) {
		/* json-c holds null as no object at all: rpc_classify() sees no result. */
		if (scan_note(s, M_RESULT) || v->kind == T_NULL)
			return SCAN_UNSURE;
	} else if (key_is(k, "error")) {
		/* scan_object() noted M_ERROR and scanned the value in OBJ_ERROR role. */
		if (v->kind != T_OBJECT || (s->members & (M_CODE | M_MESSAGE)) != (M_CODE | M_MESSAGE))
			return SCAN_UNSURE;
	}
	return 0;
}

#define SCAN_MORE 2	/* scan_next(): another member or element follows */

/* After a member or element: the container's end (0), a ',' (SCAN_MORE), or
 * anything else (SCAN_UNSURE). */
static int scan_next(struct scan *s, char close)
{
	skip_ws(s);
	if (s->p >= s->end)
		return SCAN_UNSURE;
	if (*s->p == close) {
		s->p++;
		return 0;
	}
	if (*s->p != ',')
		return SCAN_UNSURE;
	s->p++;
	skip_ws(s);
	return SCAN_MORE;
}

static int scan_object(struct scan *s, unsigned depth, enum obj_role role)
{
	int r;

	if (depth > SCAN_MAX_DEPTH)
		return SCAN_UNSURE;
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
			return SCAN_UNSURE;
		/* An escaped name might spell one that matters. */
		if (role != OBJ_PLAIN && k.escaped)
			return SCAN_UNSURE;
		skip_ws(s);
		if (s->p >= s->end || *s->p != ':')
			return SCAN_UNSURE;
		s->p++;
		skip_ws(s);
		if (role == OBJ_MESSAGE && key_is(&k, "error")) {
			if (scan_note(s, M_ERROR))
				return SCAN_UNSURE;
			inner = OBJ_ERROR;
		}
		if (scan_value(s, depth + 1, inner, &v))
			return SCAN_UNSURE;
		if (role != OBJ_PLAIN && scan_member(s, role, &k, &v))
			return SCAN_UNSURE;
		r = scan_next(s, '}');
		if (r != SCAN_MORE)
			return r;
	}
}

static int scan_array(struct scan *s, unsigned depth)
{
	int r;

	if (depth > SCAN_MAX_DEPTH)
		return SCAN_UNSURE;
	s->p++;
	skip_ws(s);
	if (s->p < s->end && *s->p == ']') {
		s->p++;
		return 0;
	}
	for (;;) {
		struct token v;

		if (scan_value(s, depth + 1, OBJ_PLAIN, &v))
			return SCAN_UNSURE;
		r = scan_next(s, ']');
		if (r != SCAN_MORE)
			return r;
	}
}

/* One value at s->p; depth is the nesting a container here would have. */
static int scan_value(struct scan *s, unsigned depth, enum obj_role role, struct token *t)
{
	if (s->p >= s->end)
		return SCAN_UNSURE;
	t->escaped = false;
	t->start = s->p;
	switch (*s->p) {
	case '{':
		t->kind = T_OBJECT;
		if (scan_object(s, depth, role))
			return SCAN_UNSURE;
		break;
	case '[':
		t->kind = T_ARRAY;
		if (scan_array(s, depth))
			return SCAN_UNSURE;
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

int scan_message(const char *line, size_t len, struct scan_msg *out)
{
	struct scan s = { .p = (const unsigned char *)line, .end = (const unsigned char *)line + len };
	struct token top;
	unsigned m;

	if (len == 0 || line[0] != '{' || scan_value(&s, 1, OBJ_MESSAGE, &top) || s.p != s.end)
		return SCAN_UNSURE;
	m = s.members;
	if (!(m & M_JSONRPC))
		return SCAN_UNSURE;
	if (m & M_METHOD) {
		if (m & (M_RESULT | M_ERROR))
			return SCAN_UNSURE;
		out->type = m & M_ID ? RPC_REQUEST : RPC_NOTIFICATION;
	} else {
		if (!(m & M_ID) || !(m & M_RESULT) == !(m & M_ERROR))
			return SCAN_UNSURE;
		out->type = m & M_RESULT ? RPC_RESULT : RPC_ERROR;
	}
	memset(&out->id, 0, sizeof(out->id));
	out->method = NULL;
	out->method_len = 0;
	if (m & M_METHOD) {
		out->method = (const char *)s.method.start + 1;
		out->method_len = (size_t)(s.method.stop - s.method.start) - 2;
	}
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

void scan_id_of(struct json_object *id, struct scan_id *out)
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
