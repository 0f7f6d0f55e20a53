/*
 * See challenge.h. A cursor walks the bytes once; nothing is allocated and
 * no byte past len is read. The grammar (RFC 9110 11.6.1 and 5.6):
 *
 *   WWW-Authenticate = #challenge
 *   challenge   = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
 *   auth-param  = token BWS "=" BWS ( token / quoted-string )
 *   token68     = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
 *
 * The list rule's commas separate challenges and auth-params alike, so after
 * a comma a token followed by "=" continues the current challenge and any
 * other token starts the next one.
 */
#include <string.h>
#include <strings.h>

#include "challenge.h"

struct cursor {
	const unsigned char *p;
	size_t len, pos;
};

/* Where one parameter's unescaped value goes; dst NULL: syntax only. */
struct sink {
	char *dst;
	size_t n;
	bool bad;	/* too long or not printable: the value counts as absent */
};

static bool at_end(const struct cursor *c)
{
	return c->pos >= c->len;
}

static bool is_ows(unsigned char ch)
{
	return ch == ' ' || ch == '\t';
}

static bool is_tchar(unsigned char ch)
{
	if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
		return true;
	return ch && strchr("!#$%&'*+-.^_`|~", ch);
}

static bool is_token68_char(unsigned char ch)
{
	if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
		return true;
	return ch && strchr("-._~+/", ch);
}

static void skip_ows(struct cursor *c)
{
	while (!at_end(c) && is_ows(c->p[c->pos]))
		c->pos++;
}

static size_t token_len_at(const struct cursor *c, size_t pos)
{
	size_t n = 0;

	while (pos + n < c->len && is_tchar(c->p[pos + n]))
		n++;
	return n;
}

static void sink_put(struct sink *s, unsigned char ch)
{
	if (!s->dst || s->bad)
		return;
	if (ch < 0x20 || ch > 0x7e || s->n >= CHALLENGE_MAX_VALUE) {
		s->bad = true;
		return;
	}
	s->dst[s->n++] = (char)ch;
}

static void sink_finish(struct sink *s)
{
	if (!s->dst)
		return;
	if (s->bad)
		s->n = 0;
	s->dst[s->n] = '\0';
}

/* quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE, the cursor on
 * the opening quote. obs-text is syntax, but not printable ASCII. */
static int read_quoted(struct cursor *c, struct sink *s)
{
	c->pos++;
	for (;;) {
		unsigned char ch;

		if (at_end(c))
			return CHALLENGE_E_SYNTAX;
		ch = c->p[c->pos++];
		if (ch == '"')
			return 0;
		if (ch == '\\') {
			if (at_end(c))
				return CHALLENGE_E_SYNTAX;
			ch = c->p[c->pos++];
			if (!(is_ows(ch) || (ch >= 0x21 && ch != 0x7f)))
				return CHALLENGE_E_SYNTAX;
		} else if (!(is_ows(ch) || ch == 0x21 || (ch >= 0x23 && ch <= 0x5b) || (ch >= 0x5d && ch != 0x7f))) {
			return CHALLENGE_E_SYNTAX;
		}
		sink_put(s, ch);
	}
}

/* The Bearer parameter a name selects, or NULL for one we do not keep. */
static char *bearer_slot(struct challenge_bearer *b, const unsigned char *name, size_t n, unsigned *bit)
{
	static const char *const names[] = { "resource_metadata", "scope", "error" };
	char *slots[] = { b->resource_metadata, b->scope, b->error };

	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strlen(names[i]) == n && strncasecmp((const char *)name, names[i], n) == 0) {
			*bit = 1u << i;
			return slots[i];
		}
	}
	return NULL;
}

/* auth-params, the cursor on the first name. Leaves the cursor at the end
 * or on the scheme of the next challenge. */
static int read_params(struct cursor *c, struct challenge_bearer *bearer)
{
	unsigned seen = 0;

	for (;;) {
		const unsigned char *name = c->p + c->pos;
		size_t n = token_len_at(c, c->pos), look;
		struct sink s = { 0 };
		unsigned bit = 0;
		int r;

		if (n == 0)
			return CHALLENGE_E_SYNTAX;
		c->pos += n;
		if (bearer) {
			s.dst = bearer_slot(bearer, name, n, &bit);
			if (seen & bit)
				return CHALLENGE_E_SYNTAX; /* RFC 9110: each name once */
			seen |= bit;
		}
		skip_ows(c);
		if (at_end(c) || c->p[c->pos] != '=')
			return CHALLENGE_E_SYNTAX;
		c->pos++;
		skip_ows(c);
		if (at_end(c))
			return CHALLENGE_E_SYNTAX;
		if (c->p[c->pos] == '"') {
			r = read_quoted(c, &s);
			if (r)
				return r;
		} else {
			size_t v = token_len_at(c, c->pos);

			if (v == 0)
				return CHALLENGE_E_SYNTAX;
			for (size_t i = 0; i < v; i++)
				sink_put(&s, c->p[c->pos + i]);
			c->pos += v;
		}
		sink_finish(&s);

		skip_ows(c);
		if (at_end(c))
			return 0;
		if (c->p[c->pos] != ',')
			return CHALLENGE_E_SYNTAX;
		while (!at_end(c) && (c->p[c->pos] == ',' || is_ows(c->p[c->pos])))
			c->pos++;
		if (at_end(c))
			return 0;
		/* name "=" continues this challenge; anything else starts the next. */
		n = token_len_at(c, c->pos);
		if (n == 0)
			return CHALLENGE_E_SYNTAX;
		look = c->pos + n;
		while (look < c->len && is_ows(c->p[look]))
			look++;
		if (look >= c->len || c->p[look] != '=')
			return 0;
	}
}

/* What follows an auth-scheme: nothing, a token68 or auth-params. */
static int read_challenge_rest(struct cursor *c, struct challenge_bearer *bearer)
{
	size_t n, after;

	if (at_end(c) || c->p[c->pos] == ',')
		return 0;
	if (!is_ows(c->p[c->pos]))
		return CHALLENGE_E_SYNTAX;
	skip_ows(c);
	if (at_end(c) || c->p[c->pos] == ',')
		return 0;

	/* token68: its characters, trailing '='s, then the end of the element. */
	n = 0;
	while (c->pos + n < c->len && is_token68_char(c->p[c->pos + n]))
		n++;
	after = c->pos + n;
	while (after < c->len && c->p[after] == '=')
		after++;
	while (after < c->len && is_ows(c->p[after]))
		after++;
	if (n > 0 && (after >= c->len || c->p[after] == ',')) {
		c->pos = after;
		return 0;
	}
	return read_params(c, bearer);
}

int challenge_parse(const char *value, size_t len, struct challenge_bearer *out)
{
	struct cursor c = { (const unsigned char *)value, len, 0 };
	int r = 0;

	memset(out, 0, sizeof(*out));
	if (len > CHALLENGE_MAX_INPUT)
		return CHALLENGE_E_TOO_LONG;
	for (;;) {
		const unsigned char *scheme;
		bool bearer;
		size_t n;

		while (!at_end(&c) && (c.p[c.pos] == ',' || is_ows(c.p[c.pos])))
			c.pos++;
		if (at_end(&c))
			break;
		scheme = c.p + c.pos;
		n = token_len_at(&c, c.pos);
		if (n == 0) {
			r = CHALLENGE_E_SYNTAX;
			break;
		}
		c.pos += n;
		bearer = !out->found && n == 6 && strncasecmp((const char *)scheme, "Bearer", 6) == 0;
		r = read_challenge_rest(&c, bearer ? out : NULL);
		if (r)
			break;
		if (bearer)
			out->found = true;
	}
	if (r)
		memset(out, 0, sizeof(*out));
	return r;
}
