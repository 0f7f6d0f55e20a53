/*
 * Reading the text of a config file (config-private.h): its syntax, its
 * keys, and the values handed on to config-server.c and config-globals.c.
 *
 * A config may name 100 000 servers, and a json-c tree costs some 25 times
 * the text it was parsed from (a hash table per object). So the file is
 * never one tree: a small reader here walks the top-level object and the
 * "mcpServers" container itself (keys, ':', ',' and the brackets) and hands
 * every value in them to json-c on its own, with the same strict flags and
 * the depth limit less the levels already walked. Each server's tree is
 * converted and freed before the next one is read; the other top-level values
 * are small and kept for config_globals_parse(). Memory is the text and the
 * result, and the tree of one value at a time.
 *
 * Read in one pass, a file must still fail as it did when it was parsed whole
 * first: with the first syntax error in it, else the first duplicate key,
 * else the first wrong field in the order config_globals_parse() checks them.
 * So a duplicate key or a wrong server found on the way is deferred (the
 * first of each kind is kept) while the rest of the text is still read for
 * syntax; servers are no longer converted once something is wrong.
 *
 * json-c keeps the last of two equal keys in an object without a word; a
 * second "github" entry pasted into "mcpServers" would silently replace the
 * first. The reader compares the keys it walks itself, and a small scan over
 * the raw text of each value (run only after json-c accepted it) finds
 * duplicate keys inside, so they can be reported with their line.
 *
 * Touches the text (read only), the parser's walk state and the config's
 * servers array, which it grows; what a field means is for the other files.
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config-private.h"
#include "log.h"

#define CONFIG_JSON_DEPTH 32

static void json_putp(struct json_object **o)
{
	if (*o)
		json_object_put(*o);
}

/* A strict tokener, for values nested at most depth deep. */
static struct json_tokener *tokener_new(int depth, int flags)
{
	struct json_tokener *tok = json_tokener_new_ex(depth);

	if (!tok)
		fatal("out of memory");
	json_tokener_set_flags(tok, flags);
	return tok;
}

static uint64_t name_hash(const char *s)
{
	uint64_t h = 0xcbf29ce484222325u;	/* FNV-1a */

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3u;
	return h;
}

static void names_free(struct name_set *set)
{
	free(set->slot);
	*set = (struct name_set){ 0 };
}

int config_names_add(struct name_set *set, const char *name)
{
	size_t i;

	if (2 * (set->n + 1) > set->cap) {
		size_t cap = set->cap ? 2 * set->cap : 64;
		const char **slot = xcalloc(cap, sizeof(*slot));

		for (size_t j = 0; j < set->cap; j++) {
			if (!set->slot[j])
				continue;
			for (i = name_hash(set->slot[j]) & (cap - 1); slot[i]; i = (i + 1) & (cap - 1))
				;
			slot[i] = set->slot[j];
		}
		free(set->slot);
		set->slot = slot;
		set->cap = cap;
	}
	for (i = name_hash(name) & (set->cap - 1); set->slot[i]; i = (i + 1) & (set->cap - 1))
		if (strcmp(set->slot[i], name) == 0)
			return CONFIG_NAME_DUPLICATE;
	set->slot[i] = name;
	set->n++;
	return 0;
}

unsigned config_line_at(const char *text, size_t off)
{
	unsigned line = 1;

	for (size_t i = 0; i < off; i++)
		if (text[i] == '\n')
			line++;
	return line;
}

static bool blank(const char *text, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!strchr(" \t\r\n", text[i]))
			return false;
	return true;
}

static int json_parse(struct parser *p, const char *text, size_t len, struct json_object **out)
{
	struct json_tokener *tok;
	enum json_tokener_error e;
	struct json_object *root;
	size_t end;

	tok = tokener_new(CONFIG_JSON_DEPTH, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	root = json_tokener_parse_ex(tok, text, (int)len);
	e = json_tokener_get_error(tok);
	end = json_tokener_get_parse_end(tok);
	if (e == json_tokener_continue) {
		/* A NUL tells the tokener that the input ends here. */
		root = json_tokener_parse_ex(tok, "", 1);
		e = json_tokener_get_error(tok);
		end = len;
	}
	json_tokener_free(tok);
	if (e != json_tokener_success) {
		json_object_put(root);
		if (blank(text, len))
			return config_fail(p, -EINVAL, NULL, "file is empty");
		return config_fail(p, -EINVAL, NULL, "line %u: %s",
				   config_line_at(text, end < len ? end : len),
				   json_tokener_error_desc(e));
	}
	*out = root;
	return 0;
}

/*
 * Duplicate key scan over text that json-c has accepted, so the grammar is
 * known to be good; every step still checks bounds and gives up cleanly if
 * something does not fit. json-c in strict mode still takes single-quoted
 * object keys: the scan finds them and refuses them.
 */
struct dupscan {
	struct parser *p;
	const char *text;
	size_t len;
	size_t pos;
};

static void dup_ws(struct dupscan *d)
{
	while (d->pos < d->len && strchr(" \t\r\n", d->text[d->pos]) && d->text[d->pos])
		d->pos++;
}

static int dup_string(struct dupscan *d, size_t *start, size_t *end, bool *escaped)
{
	char quote;

	if (d->pos >= d->len || (d->text[d->pos] != '"' && d->text[d->pos] != '\''))
		return -EINVAL;
	quote = d->text[d->pos];
	*start = d->pos++;
	*escaped = false;
	while (d->pos < d->len && d->text[d->pos] != quote) {
		if (d->text[d->pos] == '\\') {
			*escaped = true;
			d->pos++;
		}
		d->pos++;
	}
	if (d->pos >= d->len)
		return -EINVAL;
	*end = ++d->pos;
	return 0;
}

/* The decoded key; escapes are left to json-c rather than decoded twice. */
static char *dup_key(const char *raw, size_t len, bool escaped)
{
	struct json_tokener *tok;
	struct json_object *o;
	char *key = NULL;

	if (!escaped)
		return xstrndup(raw + 1, len - 2);
	tok = tokener_new(JSON_TOKENER_DEFAULT_DEPTH, JSON_TOKENER_STRICT);
	o = json_tokener_parse_ex(tok, raw, (int)len);
	json_tokener_free(tok);
	if (o && json_object_is_type(o, json_type_string))
		key = xstrdup(json_object_get_string(o));
	json_object_put(o);
	return key;
}

static int dup_value(struct dupscan *d, const char *path, unsigned depth);

static int dup_object(struct dupscan *d, const char *path, unsigned depth)
{
	_cleanup_(json_putp) struct json_object *keys = NULL;
	char sub[CONFIG_PATH_MAX];

	keys = json_object_new_object();
	if (!keys)
		fatal("out of memory");
	d->pos++;
	dup_ws(d);
	if (d->pos < d->len && d->text[d->pos] == '}') {
		d->pos++;
		return 0;
	}
	for (;;) {
		_cleanup_(freep) char *key = NULL;
		size_t start, end;
		bool escaped;
		int r;

		dup_ws(d);
		if (dup_string(d, &start, &end, &escaped) < 0)
			return -EINVAL;
		/* json-c lets single-quoted keys through; JSON does not. */
		if (d->text[start] == '\'')
			return config_fail(d->p, -EINVAL, NULL,
					   "line %u: keys must be in double quotes",
					   config_line_at(d->text, start));
		key = dup_key(d->text + start, end - start, escaped);
		if (!key)
			return -EINVAL;
		config_path_join(sub, sizeof(sub), path, key);
		if (json_object_object_get_ex(keys, key, NULL))
			return config_fail(d->p, -EINVAL, sub, "duplicate key (line %u)",
					   config_line_at(d->text, start));
		if (json_object_object_add(keys, key, NULL) < 0)
			fatal("out of memory");
		dup_ws(d);
		if (d->pos >= d->len || d->text[d->pos] != ':')
			return -EINVAL;
		d->pos++;
		r = dup_value(d, sub, depth + 1);
		if (r < 0)
			return r;
		dup_ws(d);
		if (d->pos >= d->len)
			return -EINVAL;
		if (d->text[d->pos++] == '}')
			return 0;
	}
}

static int dup_array(struct dupscan *d, const char *path, unsigned depth)
{
	char sub[CONFIG_PATH_MAX];

	d->pos++;
	dup_ws(d);
	if (d->pos < d->len && d->text[d->pos] == ']') {
		d->pos++;
		return 0;
	}
	for (size_t i = 0;; i++) {
		int r;

		config_path_index(sub, sizeof(sub), path, i);
		r = dup_value(d, sub, depth + 1);
		if (r < 0)
			return r;
		dup_ws(d);
		if (d->pos >= d->len)
			return -EINVAL;
		if (d->text[d->pos++] == ']')
			return 0;
	}
}

static int dup_value(struct dupscan *d, const char *path, unsigned depth)
{
	size_t start, end;
	bool escaped;

	if (depth > CONFIG_JSON_DEPTH)
		return -EINVAL;
	dup_ws(d);
	if (d->pos >= d->len)
		return -EINVAL;
	switch (d->text[d->pos]) {
	case '{':
		return dup_object(d, path, depth);
	case '[':
		return dup_array(d, path, depth);
	case '"':
	case '\'':
		return dup_string(d, &start, &end, &escaped);
	default:
		/* Numbers and literals: up to the next delimiter. */
		while (d->pos < d->len && !strchr(" \t\r\n,]}", d->text[d->pos]))
			d->pos++;
		return 0;
	}
}

/*
 * Duplicate and single-quoted keys inside the value json-c has just accepted
 * (start to p->pos); only the first of them in the file is kept.
 */
static void value_dupcheck(struct parser *p, size_t start, const char *path, unsigned depth)
{
	struct dupscan d = { .p = p, .text = p->text, .len = p->pos, .pos = start };
	int r;

	/* Only objects have keys. */
	if (p->dup.r || !memchr(p->text + start, '{', p->pos - start))
		return;
	if (p->err && p->errlen)
		p->err[0] = '\0';
	r = dup_value(&d, path, depth);
	if (r >= 0)
		return;
	if (p->err && p->errlen && !p->err[0])
		config_fail(p, r, NULL, "cannot scan the JSON text for duplicate keys");
	config_defer(p, &p->dup, r);
}

/* White space as json-c's strict mode (and RFC 8259) knows it. */
static void skip_ws(struct parser *p)
{
	for (; p->pos < p->len; p->pos++) {
		char ch = p->text[p->pos];

		if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r')
			return;
	}
}

static bool at(const struct parser *p, char ch)
{
	return p->pos < p->len && p->text[p->pos] == ch;
}

static int syntax_error(struct parser *p, size_t off, enum json_tokener_error e)
{
	return config_fail(p, -EINVAL, NULL, "line %u: %s", config_line_at(p->text, off),
			   json_tokener_error_desc(e));
}

/*
 * The walk found something else where it expected one of its own characters:
 * json-c's message for the state it would have been in. The end of the text
 * is the end, and json-c's UTF-8 check fails a non-ASCII byte first.
 */
static int unexpected(struct parser *p, enum json_tokener_error e)
{
	if (p->pos >= p->len)
		return syntax_error(p, p->len, json_tokener_error_parse_eof);
	if ((unsigned char)p->text[p->pos] >= 0x80)
		return syntax_error(p, p->pos, json_tokener_error_parse_utf8_string);
	return syntax_error(p, p->pos, e);
}

/*
 * After the top-level object json-c has one more rule: a byte that starts a
 * UTF-8 sequence is merely unexpected there, any other non-ASCII byte is bad
 * UTF-8.
 */
static int trailing(struct parser *p)
{
	unsigned char ch = (unsigned char)p->text[p->pos];

	if (ch >= 0x80 && !(ch >= 0xc0 && ch <= 0xf7))
		return syntax_error(p, p->pos, json_tokener_error_parse_utf8_string);
	return syntax_error(p, p->pos, json_tokener_error_parse_unexpected);
}

/*
 * json-c parses the value at p->pos, level containers deep in the file, and
 * p->pos moves past it and the white space after it. json-c stops there
 * (JSON_TOKENER_ALLOW_TRAILING_CHARS): what follows is for the walk to check.
 * *out may be NULL, for a JSON null.
 */
static int value_parse(struct parser *p, unsigned level, struct json_object **out)
{
	struct json_tokener *tok = p->tok[level - 1];
	struct json_object *v;
	enum json_tokener_error e;
	size_t end;

	json_tokener_reset(tok);
	v = json_tokener_parse_ex(tok, p->text + p->pos, (int)(p->len - p->pos));
	e = json_tokener_get_error(tok);
	end = p->pos + json_tokener_get_parse_end(tok);
	if (e == json_tokener_continue) {
		/*
		 * The text ends inside the top-level object. A NUL tells json-c
		 * so, for its message (bad UTF-8 if a sequence was cut).
		 */
		json_object_put(json_tokener_parse_ex(tok, "", 1));
		e = json_tokener_get_error(tok);
		return syntax_error(p, p->len,
				    e == json_tokener_success ? json_tokener_error_parse_eof : e);
	}
	if (e != json_tokener_success)
		return syntax_error(p, end, e);
	/*
	 * Inside a container json-c refuses a number followed straight by
	 * anything but , ] } / I i or white space; at the top of a parse of its
	 * own it does not look, so the check is made here.
	 */
	if (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)) {
		size_t n = p->pos;

		while (n < end && strchr("0123456789.eE+-", p->text[n]))
			n++;
		if (n == end && end < p->len && !strchr(",]}/Ii", p->text[end])) {
			json_object_put(v);
			return syntax_error(p, end, json_tokener_error_parse_number);
		}
	}
	p->pos = end;
	*out = v;
	return 0;
}

/*
 * json-c takes a single-quoted key, and the file may not have one: the first
 * such key is an error of the same kind as a duplicate. Whether the key is
 * well-formed, and json-c's message if not, is still json-c's to say, as in
 * one parse of the file: "{" and the key go to json-c, then ":0}" or, if the
 * text ends inside the key, a NUL.
 */
static int quoted_key_read(struct parser *p, char **out)
{
	_cleanup_(json_putp) struct json_object *o = NULL;
	struct json_object_iterator it;
	struct json_tokener *tok;
	enum json_tokener_error e;
	size_t start = p->pos, end = p->pos + 1, off;
	bool closed = false;
	char *buf;

	while (end < p->len && !closed) {
		closed = p->text[end] == '\'';
		end += p->text[end] == '\\' && end + 1 < p->len ? 2 : 1;
	}
	buf = xmalloc(end - start + 1);
	buf[0] = '{';
	memcpy(buf + 1, p->text + start, end - start);
	tok = tokener_new(2, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	o = json_tokener_parse_ex(tok, buf, (int)(end - start + 1));
	e = json_tokener_get_error(tok);
	off = json_tokener_get_parse_end(tok);
	free(buf);
	if (e == json_tokener_continue) {
		o = json_tokener_parse_ex(tok, closed ? ":0}" : "", closed ? 3 : 1);
		e = json_tokener_get_error(tok);
		/* Only a key cut off by the end of the text fails here. */
		off = SIZE_MAX;
	}
	json_tokener_free(tok);
	if (e != json_tokener_success && off == SIZE_MAX)
		return syntax_error(p, p->len, e == json_tokener_continue ?
					       json_tokener_error_parse_eof : e);
	if (e != json_tokener_success)
		return syntax_error(p, start + (off ? off - 1 : 0), e);

	it = json_object_iter_begin(o);
	*out = config_mem_strdup(p->c->mem, json_object_iter_peek_name(&it));
	p->pos = end;
	skip_ws(p);
	config_defer(p, &p->dup,
		     config_fail(p, -EINVAL, NULL, "line %u: keys must be in double quotes",
				 config_line_at(p->text, start)));
	return 0;
}

/*
 * The key at p->pos, decoded by json-c as the string it is, and the ':' after
 * it. *out is kept in the config (a server's name) and, like json-c's own
 * keys, ends at a \u0000.
 */
static int key_read(struct parser *p, char **out, size_t *off)
{
	struct json_object *k = NULL;
	int r;

	*off = p->pos;
	if (at(p, '\'')) {
		r = quoted_key_read(p, out);
		if (r < 0)
			return r;
	} else if (at(p, '"')) {
		r = value_parse(p, 1, &k);
		if (r < 0)
			return r;
		*out = config_mem_strdup(p->c->mem, json_object_get_string(k));
		json_object_put(k);
	} else {
		return unexpected(p, json_tokener_error_parse_object_key_name);
	}
	if (!at(p, ':'))
		return unexpected(p, json_tokener_error_parse_object_key_sep);
	p->pos++;
	skip_ws(p);
	return 0;
}

/* Called with p->pos at each value of a container; moves past it. */
typedef int (*entry_fn)(struct parser *p, char *key, size_t key_off, size_t index);

/*
 * Walks the object or array at p->pos by json-c's grammar, with its messages:
 * the levels of the file that are never one json-c tree.
 */
static int container_read(struct parser *p, entry_fn entry)
{
	bool object = at(p, '{');
	char close = object ? '}' : ']';
	int r;

	p->pos++;
	skip_ws(p);
	if (at(p, close)) {
		p->pos++;
		return 0;
	}
	for (size_t i = 0;; i++) {
		char *key = NULL;
		size_t key_off = 0;

		if (object) {
			r = key_read(p, &key, &key_off);
			if (r < 0)
				return r;
		}
		r = entry(p, key, key_off, i);
		if (r < 0)
			return r;
		skip_ws(p);
		if (at(p, close)) {
			p->pos++;
			return 0;
		}
		if (!at(p, ','))
			return unexpected(p, object ? json_tokener_error_parse_object_value_sep :
						      json_tokener_error_parse_array);
		p->pos++;
		skip_ws(p);
		/* Strict: no comma before the closing bracket. */
		if (at(p, close))
			return unexpected(p, json_tokener_error_parse_unexpected);
	}
}

/*
 * Converts one entry of mcpServers into the next struct config_server; a
 * wrong one is kept for config_globals_parse() to report.
 */
static void server_add(struct parser *p, struct json_object *v, char *key, size_t index)
{
	struct config *c = p->c;
	struct config_server *s;
	int r;

	if (c->n_servers == p->cap_servers) {
		/* The size limit of the text keeps the count far from overflowing this. */
		p->cap_servers = p->cap_servers ? 2 * p->cap_servers : 16;
		c->servers = xrealloc(c->servers, p->cap_servers * sizeof(*c->servers));
	}
	s = &c->servers[c->n_servers];
	memset(s, 0, sizeof(*s));
	r = config_server_parse(p, v, key, index, s);
	if (r < 0) {
		config_defer(p, &p->servers, r);
		return;
	}
	c->n_servers++;
}

/* One entry of mcpServers: its own json-c tree, converted, then freed. */
static int server_read(struct parser *p, char *key, size_t key_off, size_t index)
{
	char path[CONFIG_PATH_MAX];
	struct json_object *v = NULL;
	size_t start = p->pos;
	int r;

	if (key) {
		config_path_join(path, sizeof(path), "mcpServers", key);
		if (config_names_add(&p->names, key) == CONFIG_NAME_DUPLICATE)
			config_defer(p, &p->dup, config_fail(p, -EINVAL, path,
							     "duplicate server name (line %u)",
							     config_line_at(p->text, key_off)));
	} else {
		config_path_index(path, sizeof(path), "mcpServers", index);
	}
	r = value_parse(p, 2, &v);
	if (r < 0)
		return r;
	value_dupcheck(p, start, path, 2);
	/* Once something is wrong, the rest is only read for its syntax. */
	if (!p->dup.r && !p->servers.r)
		server_add(p, v, key, index);
	json_object_put(v);
	return 0;
}

static int servers_read(struct parser *p)
{
	struct json_object *v = NULL;
	int r;

	if (at(p, '{') || at(p, '['))
		return container_read(p, server_read);
	/* json-c judges the syntax of anything else; then it is the wrong type. */
	r = value_parse(p, 1, &v);
	if (r < 0)
		return r;
	json_object_put(v);
	config_defer(p, &p->servers,
		     config_fail(p, -EINVAL, "mcpServers", "must be an object or an array"));
	return 0;
}

/* One member of the top-level object. */
static int member_read(struct parser *p, char *key, size_t key_off, size_t index)
{
	char path[CONFIG_PATH_MAX];
	struct json_object *v = NULL;
	size_t start = p->pos;
	int r;

	config_path_join(path, sizeof(path), NULL, key);
	if (json_object_object_get_ex(p->root, key, NULL))
		config_defer(p, &p->dup, config_fail(p, -EINVAL, path, "duplicate key (line %u)",
						     config_line_at(p->text, key_off)));
	if (strcmp(key, "mcpServers") == 0) {
		/* A place holder: a second one is a duplicate, and the key is known. */
		if (json_object_object_add(p->root, key, NULL) < 0)
			fatal("out of memory");
		return servers_read(p);
	}
	r = value_parse(p, 1, &v);
	if (r < 0)
		return r;
	value_dupcheck(p, start, path, 1);
	if (json_object_object_add(p->root, key, v) < 0)
		fatal("out of memory");
	return 0;
}

int config_read_text(struct parser *p)
{
	struct config *c = p->c;
	int r;

	p->root = json_object_new_object();
	if (!p->root)
		fatal("out of memory");
	for (size_t i = 0; i < ARRAY_SIZE(p->tok); i++) {
		/* Values i + 1 containers deep: what is left of the file's depth limit. */
		p->tok[i] = tokener_new(CONFIG_JSON_DEPTH - 1 - (int)i,
					JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8 |
					JSON_TOKENER_ALLOW_TRAILING_CHARS);
	}

	skip_ws(p);
	if (p->pos >= p->len)
		return config_fail(p, -EINVAL, NULL, "file is empty");
	if (!at(p, '{')) {
		_cleanup_(json_putp) struct json_object *root = NULL;

		/* Not an object, so wrong anyway; json-c whole finds any syntax error first. */
		r = json_parse(p, p->text, p->len, &root);
		if (r < 0)
			return r;
		return config_fail(p, -EINVAL, NULL, "the top level must be a JSON object");
	}
	r = container_read(p, member_read);
	if (r < 0)
		return r;
	skip_ws(p);
	if (p->pos < p->len)
		return trailing(p);
	if (p->dup.r)
		return config_deferred_report(p, &p->dup);

	/* The array grew by doubling; give back the rest. */
	if (c->n_servers == 0) {
		free(c->servers);
		c->servers = NULL;
	} else if (c->n_servers < p->cap_servers) {
		c->servers = xrealloc(c->servers, c->n_servers * sizeof(*c->servers));
	}
	return 0;
}

void config_read_done(struct parser *p)
{
	for (size_t i = 0; i < ARRAY_SIZE(p->tok); i++) {
		if (p->tok[i])
			json_tokener_free(p->tok[i]);
		p->tok[i] = NULL;
	}
	json_putp(&p->root);
	p->root = NULL;
	names_free(&p->names);
	free(p->dup.msg);
	p->dup.msg = NULL;
	free(p->servers.msg);
	p->servers.msg = NULL;
}
