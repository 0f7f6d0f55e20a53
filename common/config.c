/*
 * See config.h. Turns one JSON file into a validated struct config.
 *
 * The file is written by people, often pasted from an MCP desktop client's
 * config, so every message names the file, the field path and what is wrong,
 * and two shapes of "mcpServers" are accepted. A config that loads is
 * complete: defaults are filled in here, so no other module needs to know
 * them.
 *
 * A config may name 100 000 servers, and a json-c tree costs some 25 times
 * the text it was parsed from (a hash table per object). So the file is
 * never one tree: a small reader here walks the top-level object and the
 * "mcpServers" container itself (keys, ':', ',' and the brackets) and hands
 * every value in them to json-c on its own, with the same strict flags and
 * the depth limit less the levels already walked. Each server's tree is
 * converted and freed before the next one is read; the other top-level values
 * are small and kept for globals_parse(). Memory is the text and the result,
 * and the tree of one value at a time.
 *
 * Read in one pass, a file must still fail as it did when it was parsed whole
 * first: with the first syntax error in it, else the first duplicate key,
 * else the first wrong field in the order globals_parse() checks them. So a
 * duplicate key or a wrong server found on the way is deferred (the first of
 * each kind is kept) while the rest of the text is still read for syntax;
 * servers are no longer converted once something is wrong.
 *
 * json-c keeps the last of two equal keys in an object without a word; a
 * second "github" entry pasted into "mcpServers" would silently replace the
 * first. The reader compares the keys it walks itself, and a small scan over
 * the raw text of each value (run only after json-c accepted it) finds
 * duplicate keys inside, so they can be reported with their line.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "paths.h"

#define CONFIG_MAX_SIZE (16u * 1024 * 1024)
#define CONFIG_MAX_SIZE_TEXT "16 MiB"
#define CONFIG_NAME_MAX 64
#define CONFIG_PATH_MAX 384	/* field paths in messages; longer ones are cut */
#define CONFIG_JSON_DEPTH 32
#define CONFIG_URL_MAX 4096

#define DEFAULT_LISTEN "127.0.0.1:8080"
#define DEFAULT_WORKER_USER "mcpkeeper-worker"
#define DEFAULT_IDLE_TIMEOUT 300
#define DEFAULT_THRESHOLD 0.8
#define DEFAULT_MAX_RETRIES 3
#define DEFAULT_REFRESH_TIMEOUT 30
#define DEFAULT_MAX_IN_FLIGHT 16

/* The first error of one kind, kept while the rest of the file is read. */
struct deferred {
	int r;
	char *msg;		/* NULL when the caller passed no err buffer */
};

/* Names of the servers read so far: open addressing, strings in c->mem. */
struct name_set {
	const char **slot;
	size_t cap;		/* a power of two, or 0 */
	size_t n;
};

struct parser {
	const char *name;	/* what messages call the file */
	char *err;
	size_t errlen;
	struct config *c;

	/* The walk over the text (which holds no NUL); see the top of the file. */
	const char *text;
	size_t len;
	size_t pos;
	struct json_tokener *tok[2];	/* values 1 and 2 containers deep */
	struct json_object *root;	/* the top-level values but mcpServers */
	struct name_set names;
	size_t cap_servers;
	struct deferred dup;		/* a duplicate or single-quoted key */
	struct deferred servers;	/* a wrong field in mcpServers */
};

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

static int fail(struct parser *p, int r, const char *path, const char *fmt, ...) _printf_(4, 5);

static int fail(struct parser *p, int r, const char *path, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (!p->err || !p->errlen)
		return r;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (path && *path)
		snprintf(p->err, p->errlen, "%s: %s: %s", p->name, path, msg);
	else
		snprintf(p->err, p->errlen, "%s: %s", p->name, msg);
	return r;
}

/* Keeps error r (just written to p->err) if it is the first of its kind. */
static void defer(struct parser *p, struct deferred *d, int r)
{
	if (d->r)
		return;
	d->r = r;
	if (p->err && p->errlen)
		d->msg = xstrdup(p->err);
}

static int deferred_report(struct parser *p, const struct deferred *d)
{
	if (p->err && p->errlen && d->msg)
		snprintf(p->err, p->errlen, "%s", d->msg);
	return d->r;
}

/*
 * The strings and arrays of one config, carved from 64 KiB blocks and freed
 * together: a config of 100 000 servers would otherwise be half a million
 * small mallocs, each paying for its header and rounding (a 10-byte string
 * takes a 32-byte chunk). Memory comes zeroed. A request larger than a quarter
 * block gets a block of its own, so the current block is not wasted.
 */
#define MEM_BLOCK_SIZE (64 * 1024)

struct mem_block {
	struct mem_block *next;
	size_t used;
	size_t size;
	char data[];
};

struct config_mem {
	struct mem_block *head;	/* the block being filled; older ones follow */
};

static void mem_free(struct config_mem *m)
{
	struct mem_block *b, *next;

	if (!m)
		return;
	for (b = m->head; b; b = next) {
		next = b->next;
		free(b);
	}
	free(m);
}

static void *mem_alloc(struct config_mem *m, size_t size, size_t align)
{
	struct mem_block *b = m->head;
	size_t pad, bsize;

	if (b) {
		pad = -(uintptr_t)(b->data + b->used) & (align - 1);
		if (size <= b->size - b->used && pad <= b->size - b->used - size) {
			void *ptr = b->data + b->used + pad;

			b->used += pad + size;
			return ptr;
		}
	}
	/* More than malloc could ever give: what xcalloc() would say. */
	if (size > SIZE_MAX / 2)
		fatal("out of memory");
	bsize = size > MEM_BLOCK_SIZE / 4 ? size + align : MEM_BLOCK_SIZE;
	b = xcalloc(1, sizeof(*b) + bsize);
	b->size = bsize;
	pad = -(uintptr_t)b->data & (align - 1);
	b->used = pad + size;
	if (size > MEM_BLOCK_SIZE / 4 && m->head) {
		b->next = m->head->next;
		m->head->next = b;
	} else {
		b->next = m->head;
		m->head = b;
	}
	return b->data + pad;
}

/* n zeroed elements of size bytes; the arrays of a config hold pointers. */
static void *mem_array(struct config_mem *m, size_t n, size_t size)
{
	if (size && n > SIZE_MAX / 2 / size)
		fatal("out of memory");
	return mem_alloc(m, n * size, _Alignof(void *));
}

static char *mem_strndup(struct config_mem *m, const char *s, size_t len)
{
	char *d = mem_alloc(m, len + 1, 1);

	memcpy(d, s, len);
	return d;
}

static char *mem_strdup(struct config_mem *m, const char *s)
{
	return mem_strndup(m, s, strlen(s));
}

/*
 * Keys come from the file and may hold anything; they end up in log lines
 * and error messages, so they are made printable and cut short here.
 */
static void path_append(char *buf, size_t len, const char *s)
{
	size_t n = strlen(buf);
	size_t i;

	for (i = 0; s[i] && n + 1 < len; i++) {
		if (i == CONFIG_NAME_MAX) {
			snprintf(buf + n, len - n, "...");
			return;
		}
		buf[n++] = (s[i] > 0x20 && s[i] < 0x7f) ? s[i] : '?';
	}
	buf[n] = '\0';
}

static void path_join(char *buf, size_t len, const char *prefix, const char *key)
{
	size_t n = 0;

	/* Cut rather than fail: a path only ever ends up in a message. */
	if (prefix && *prefix) {
		n = strnlen(prefix, len - 2);
		memcpy(buf, prefix, n);
		buf[n++] = '.';
	}
	buf[n] = '\0';
	path_append(buf, len, key);
}

static void path_index(char *buf, size_t len, const char *prefix, size_t i)
{
	size_t n = strnlen(prefix, len - 1);
	char idx[24];
	size_t m;

	memcpy(buf, prefix, n);
	snprintf(idx, sizeof(idx), "[%zu]", i);
	m = strlen(idx);
	if (m > len - 1 - n)
		m = len - 1 - n;
	memcpy(buf + n, idx, m);
	buf[n + m] = '\0';
}

static void warn_unknown(struct parser *p, struct json_object *obj, const char *prefix,
			 const char *const *known)
{
	struct json_object_iterator it = json_object_iter_begin(obj);
	struct json_object_iterator end = json_object_iter_end(obj);
	char path[CONFIG_PATH_MAX];

	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
		const char *key = json_object_iter_peek_name(&it);
		bool found = false;

		for (size_t i = 0; known[i]; i++) {
			if (strcmp(key, known[i]) == 0) {
				found = true;
				break;
			}
		}
		if (!found) {
			path_join(path, sizeof(path), prefix, key);
			log_warn("%s: %s: unknown field, ignored", p->name, path);
		}
	}
}

/*
 * A string value, checked; it points into v. JSON strings may carry \u0000;
 * C strings cannot.
 */
static int string_peek(struct parser *p, struct json_object *v, const char *path, bool nonempty,
		       const char **out)
{
	const char *s;
	size_t len;

	if (!json_object_is_type(v, json_type_string))
		return fail(p, -EINVAL, path, "must be a string");
	s = json_object_get_string(v);
	len = (size_t)json_object_get_string_len(v);
	if (strlen(s) != len)
		return fail(p, -EINVAL, path, "must not contain NUL characters");
	if (nonempty && len == 0)
		return fail(p, -EINVAL, path, "must not be empty");
	*out = s;
	return 0;
}

/* The same, copied into the config. */
static int string_value(struct parser *p, struct json_object *v, const char *path, bool nonempty,
			char **out)
{
	const char *s;
	int r;

	r = string_peek(p, v, path, nonempty, &s);
	if (r < 0)
		return r;
	*out = mem_strdup(p->c->mem, s);
	return 0;
}

static int get_string(struct parser *p, struct json_object *obj, const char *prefix,
		      const char *key, bool nonempty, char **out)
{
	char path[CONFIG_PATH_MAX];
	struct json_object *v;

	if (!json_object_object_get_ex(obj, key, &v))
		return 0;
	path_join(path, sizeof(path), prefix, key);
	return string_value(p, v, path, nonempty, out);
}

static int get_bool(struct parser *p, struct json_object *obj, const char *prefix,
		    const char *key, bool *out)
{
	char path[CONFIG_PATH_MAX];
	struct json_object *v;

	if (!json_object_object_get_ex(obj, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_boolean)) {
		path_join(path, sizeof(path), prefix, key);
		return fail(p, -EINVAL, path, "must be a boolean");
	}
	*out = json_object_get_boolean(v);
	return 0;
}

static int get_int(struct parser *p, struct json_object *obj, const char *prefix,
		   const char *key, int min, int max, int *out)
{
	char path[CONFIG_PATH_MAX];
	struct json_object *v;
	int64_t n;

	if (!json_object_object_get_ex(obj, key, &v))
		return 0;
	/* json-c saturates integers beyond int64, which the range check catches. */
	n = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : INT64_MIN;
	if (n < min || n > max) {
		path_join(path, sizeof(path), prefix, key);
		return fail(p, -EINVAL, path, "must be an integer between %d and %d", min, max);
	}
	*out = (int)n;
	return 0;
}

/* An object; absent is fine (*out stays NULL). */
static int get_object(struct parser *p, struct json_object *obj, const char *prefix,
		      const char *key, struct json_object **out)
{
	char path[CONFIG_PATH_MAX];
	struct json_object *v;

	*out = NULL;
	if (!json_object_object_get_ex(obj, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_object)) {
		path_join(path, sizeof(path), prefix, key);
		return fail(p, -EINVAL, path, "must be an object");
	}
	*out = v;
	return 0;
}

/* A NULL-terminated copy of an array of strings. */
static int strv_from_array(struct parser *p, struct json_object *v, const char *path,
			   char ***out, size_t *n_out)
{
	char elem[CONFIG_PATH_MAX];
	size_t n;
	char **strv;

	if (!json_object_is_type(v, json_type_array))
		return fail(p, -EINVAL, path, "must be an array of strings");
	n = json_object_array_length(v);
	strv = mem_array(p->c->mem, n + 1, sizeof(*strv));
	for (size_t i = 0; i < n; i++) {
		int r;

		path_index(elem, sizeof(elem), path, i);
		r = string_value(p, json_object_array_get_idx(v, i), elem, false, &strv[i]);
		if (r < 0)
			return r;
	}
	*out = strv;
	*n_out = n;
	return 0;
}

/* RFC 9110 token characters: what a header field name may consist of. */
static bool header_name_valid(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
			continue;
		if (!strchr("!#$%&'*+-.^_`|~", ch))
			return false;
	}
	return true;
}

enum kv_kind {
	KV_ENV,
	KV_HEADERS,
};

static int kv_from_object(struct parser *p, struct json_object *v, const char *path,
			  enum kv_kind kind, struct config_kv **out, size_t *n_out)
{
	struct json_object_iterator it, end;
	struct config_kv *kv;
	char elem[CONFIG_PATH_MAX];
	size_t n = 0;
	int r;

	if (!json_object_is_type(v, json_type_object))
		return fail(p, -EINVAL, path, "must be an object of strings");
	kv = mem_array(p->c->mem, (size_t)json_object_object_length(v) + 1, sizeof(*kv));

	it = json_object_iter_begin(v);
	end = json_object_iter_end(v);
	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it), n++) {
		const char *key = json_object_iter_peek_name(&it);

		path_join(elem, sizeof(elem), path, key);
		if (kind == KV_HEADERS && !header_name_valid(key))
			return fail(p, -EINVAL, elem, "not a valid HTTP header name");
		if (kind == KV_ENV && (!*key || strchr(key, '=')))
			return fail(p, -EINVAL, elem,
				    "not a valid environment variable name (empty or contains '=')");
		r = string_value(p, json_object_iter_peek_value(&it), elem, false, &kv[n].value);
		if (r < 0)
			return r;
		/* A line break in a header value would let the file inject headers. */
		if (kind == KV_HEADERS && strpbrk(kv[n].value, "\r\n"))
			return fail(p, -EINVAL, elem, "must not contain line breaks");
		kv[n].key = mem_strdup(p->c->mem, key);
	}
	*out = kv;
	*n_out = n;
	return 0;
}

static bool port_parse(const char *s, size_t len, int *port)
{
	int v = 0;

	if (len == 0 || len > 5)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*port = v;
	return true;
}

/* NULL when u is usable as an upstream or resource URL, else the problem. */
static const char *url_problem(const char *u)
{
	const char *host, *end, *colon = NULL;
	int port;

	if (strncasecmp(u, "http://", 7) == 0)
		host = u + 7;
	else if (strncasecmp(u, "https://", 8) == 0)
		host = u + 8;
	else
		return "must be an http or https URL";
	if (strlen(u) > CONFIG_URL_MAX)
		return "must be an http or https URL of at most 4096 characters";
	for (const char *q = u; *q; q++)
		if ((unsigned char)*q <= 0x20 || *q == 0x7f)
			return "must be an http or https URL (no spaces or control characters)";

	end = host + strcspn(host, "/?#");
	if (end == host)
		return "must be an http or https URL (no host)";
	/* Credentials in the URL would end up in every log line naming it. */
	if (memchr(host, '@', (size_t)(end - host)))
		return "must not contain credentials; use headers or oauth";
	if (strchr(u, '#'))
		return "must not contain a fragment";

	if (*host == '[') {
		const char *close = memchr(host, ']', (size_t)(end - host));

		if (!close || close == host + 1)
			return "must be an http or https URL (bad IPv6 address)";
		if (close + 1 < end) {
			if (close[1] != ':')
				return "must be an http or https URL (bad host)";
			colon = close + 1;
		}
	} else {
		colon = memchr(host, ':', (size_t)(end - host));
		if (colon == host)
			return "must be an http or https URL (no host)";
	}
	if (colon && (!port_parse(colon + 1, (size_t)(end - colon - 1), &port) || port > 65535))
		return "must be an http or https URL (bad port)";
	return NULL;
}

/*
 * The HTTP API must only be reachable from this machine, and its Host check
 * compares against the address itself, so a numeric loopback address is
 * required (not "localhost", whose resolution varies).
 */
static const char *listen_problem(const char *s)
{
	static const char *const msg =
		"must be a loopback address and port, e.g. 127.0.0.1:0 or [::1]:8080";
	char host[INET6_ADDRSTRLEN + 1];
	const char *port_s;
	size_t hlen;
	int port;

	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		struct in6_addr a6;

		if (!close || close[1] != ':')
			return msg;
		hlen = (size_t)(close - s - 1);
		if (hlen >= sizeof(host))
			return msg;
		memcpy(host, s + 1, hlen);
		host[hlen] = '\0';
		if (inet_pton(AF_INET6, host, &a6) != 1 || !IN6_IS_ADDR_LOOPBACK(&a6))
			return msg;
		port_s = close + 2;
	} else {
		const char *colon = strrchr(s, ':');
		struct in_addr a4;

		if (!colon)
			return msg;
		hlen = (size_t)(colon - s);
		if (hlen >= sizeof(host))
			return msg;
		memcpy(host, s, hlen);
		host[hlen] = '\0';
		if (inet_pton(AF_INET, host, &a4) != 1 || (ntohl(a4.s_addr) >> 24) != 127)
			return msg;
		port_s = colon + 1;
	}
	if (!port_parse(port_s, strlen(port_s), &port))
		return msg;
	if (port > 65535)
		return "port must be between 0 and 65535";
	return NULL;
}

static bool name_valid(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > CONFIG_NAME_MAX || s[0] == '.' || s[0] == '-')
		return false;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
			return false;
	}
	return true;
}

#define NAME_RULE "must be 1 to 64 characters of A-Z a-z 0-9 . _ -, not starting with . or -"

static int protocol_parse(const char *s, enum config_protocol *out)
{
	/* Desktop clients spell streamable HTTP "http" or "streamableHttp". */
	static const struct {
		const char *name;
		enum config_protocol protocol;
	} names[] = {
		{ "streamable-http", CONFIG_PROTOCOL_STREAMABLE_HTTP },
		{ "streamableHttp", CONFIG_PROTOCOL_STREAMABLE_HTTP },
		{ "http", CONFIG_PROTOCOL_STREAMABLE_HTTP },
		{ "sse", CONFIG_PROTOCOL_SSE },
		{ "stdio", CONFIG_PROTOCOL_STDIO },
	};

	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		if (strcmp(s, names[i].name) == 0) {
			*out = names[i].protocol;
			return 0;
		}
	}
	return -EINVAL;
}

const char *config_protocol_name(enum config_protocol p)
{
	switch (p) {
	case CONFIG_PROTOCOL_STREAMABLE_HTTP:
		return "streamable-http";
	case CONFIG_PROTOCOL_SSE:
		return "sse";
	case CONFIG_PROTOCOL_STDIO:
		return "stdio";
	}
	return "unknown";
}

/* "protocol" and its desktop-client alias "type"; *found says whether either was set. */
static int server_protocol(struct parser *p, struct json_object *obj, const char *prefix,
			   enum config_protocol *out, bool *found)
{
	static const char *const keys[] = { "protocol", "type" };
	const char *first = NULL;
	char path[CONFIG_PATH_MAX];

	*found = false;
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		struct json_object *v;
		enum config_protocol proto;
		const char *s;
		int r;

		if (!json_object_object_get_ex(obj, keys[i], &v))
			continue;
		path_join(path, sizeof(path), prefix, keys[i]);
		r = string_peek(p, v, path, false, &s);
		if (r < 0)
			return r;
		if (protocol_parse(s, &proto) < 0)
			return fail(p, -EINVAL, path,
				    "must be one of \"streamable-http\" (or \"http\"), \"sse\", \"stdio\"");
		if (*found && proto != *out)
			return fail(p, -EINVAL, path, "\"%s\" conflicts with protocol \"%s\"", s,
				    first);
		if (!*found)
			first = s;
		*out = proto;
		*found = true;
	}
	return 0;
}

static int scopes_from_string(struct parser *p, const char *s, struct config_oauth *o)
{
	static const char *const ws = " \t\r\n";
	size_t n = 0;
	char **strv;

	for (const char *q = s + strspn(s, ws); *q; q += strspn(q, ws)) {
		n++;
		q += strcspn(q, ws);
	}
	if (n == 0)
		return 0;
	strv = mem_array(p->c->mem, n + 1, sizeof(*strv));
	n = 0;
	for (const char *q = s + strspn(s, ws); *q; q += strspn(q, ws)) {
		size_t len = strcspn(q, ws);

		strv[n] = mem_strndup(p->c->mem, q, len);
		n++;
		q += len;
	}
	o->scopes = strv;
	o->n_scopes = n;
	return 0;
}

static int oauth_scopes(struct parser *p, struct json_object *obj, const char *prefix,
			struct config_oauth *o)
{
	char path[CONFIG_PATH_MAX], elem[CONFIG_PATH_MAX];
	struct json_object *v;
	const char *s;
	int r;

	if (!json_object_object_get_ex(obj, "scopes", &v))
		return 0;
	path_join(path, sizeof(path), prefix, "scopes");

	if (json_object_is_type(v, json_type_string)) {
		r = string_peek(p, v, path, false, &s);
		if (r < 0)
			return r;
		return scopes_from_string(p, s, o);
	}
	if (!json_object_is_type(v, json_type_array))
		return fail(p, -EINVAL, path,
			    "must be an array of strings or a space-separated string");
	r = strv_from_array(p, v, path, &o->scopes, &o->n_scopes);
	if (r < 0)
		return r;
	/* A scope token cannot hold spaces (RFC 6749 3.3); one that does is a typo. */
	for (size_t i = 0; i < o->n_scopes; i++) {
		if (!o->scopes[i][0] || strpbrk(o->scopes[i], " \t\r\n")) {
			path_index(elem, sizeof(elem), path, i);
			return fail(p, -EINVAL, elem, "must be a non-empty scope without spaces");
		}
	}
	if (o->n_scopes == 0)
		o->scopes = NULL;
	return 0;
}

static int server_oauth(struct parser *p, struct json_object *v, const char *prefix,
			struct config_server *s)
{
	static const char *const known[] = {
		"client_id", "client_secret", "scopes", "redirect_port", "resource", NULL,
	};
	struct config_oauth *o = &s->oauth;
	char path[CONFIG_PATH_MAX];
	const char *problem;
	int r;

	path_join(path, sizeof(path), prefix, "oauth");
	if (json_object_is_type(v, json_type_boolean)) {
		if (!json_object_get_boolean(v)) {
			s->oauth_enabled = false;
			return 0;
		}
		if (s->protocol == CONFIG_PROTOCOL_STDIO)
			return fail(p, -EINVAL, path, "OAuth does not apply to stdio servers");
		return 0;
	}
	if (!json_object_is_type(v, json_type_object))
		return fail(p, -EINVAL, path, "must be an object or false");
	if (s->protocol == CONFIG_PROTOCOL_STDIO)
		return fail(p, -EINVAL, path, "OAuth does not apply to stdio servers");

	warn_unknown(p, v, path, known);
	r = get_string(p, v, path, "client_id", true, &o->client_id);
	if (r < 0)
		return r;
	r = get_string(p, v, path, "client_secret", true, &o->client_secret);
	if (r < 0)
		return r;
	if (o->client_secret && !o->client_id) {
		char sub[CONFIG_PATH_MAX];

		path_join(sub, sizeof(sub), path, "client_secret");
		return fail(p, -EINVAL, sub, "requires client_id");
	}
	r = oauth_scopes(p, v, path, o);
	if (r < 0)
		return r;
	r = get_int(p, v, path, "redirect_port", 0, 65535, &o->redirect_port);
	if (r < 0)
		return r;
	r = get_string(p, v, path, "resource", false, &o->resource);
	if (r < 0)
		return r;
	if (o->resource && (problem = url_problem(o->resource))) {
		char sub[CONFIG_PATH_MAX];

		path_join(sub, sizeof(sub), path, "resource");
		return fail(p, -EINVAL, sub, "%s", problem);
	}
	return 0;
}

/* Fields that only make sense for one kind of server are errors on the other. */
static int server_reject(struct parser *p, struct json_object *obj, const char *prefix,
			 const char *key, const char *why)
{
	char path[CONFIG_PATH_MAX];

	if (!json_object_object_get_ex(obj, key, NULL))
		return 0;
	path_join(path, sizeof(path), prefix, key);
	return fail(p, -EINVAL, path, "%s", why);
}

static int server_fields(struct parser *p, struct json_object *obj, const char *prefix,
			 struct config_server *s)
{
	struct json_object *v;
	char path[CONFIG_PATH_MAX];
	const char *problem;
	bool explicit;
	int r;

	r = get_string(p, obj, prefix, "url", false, &s->url);
	if (r < 0)
		return r;
	r = get_string(p, obj, prefix, "command", true, &s->command);
	if (r < 0)
		return r;
	r = server_protocol(p, obj, prefix, &s->protocol, &explicit);
	if (r < 0)
		return r;

	if (s->url && s->command)
		return fail(p, -EINVAL, prefix,
			    "has both url and command; an http server needs url, a stdio server command");
	if (!explicit) {
		if (!s->url && !s->command)
			return fail(p, -EINVAL, prefix,
				    "needs url (http servers) or command (stdio servers)");
		s->protocol = s->url ? CONFIG_PROTOCOL_STREAMABLE_HTTP : CONFIG_PROTOCOL_STDIO;
	}

	if (s->protocol == CONFIG_PROTOCOL_STDIO) {
		if (s->url)
			return server_reject(p, obj, prefix, "url",
					     "not used by stdio servers (they run command)");
		if (!s->command) {
			path_join(path, sizeof(path), prefix, "command");
			return fail(p, -EINVAL, path, "missing, required for stdio servers");
		}
		r = server_reject(p, obj, prefix, "headers", "only for http servers");
		if (r < 0)
			return r;
		/* args is never NULL for stdio: the worker execs it as is. */
		s->args = mem_array(p->c->mem, 1, sizeof(*s->args));
		if (json_object_object_get_ex(obj, "args", &v)) {
			path_join(path, sizeof(path), prefix, "args");
			r = strv_from_array(p, v, path, &s->args, &s->n_args);
			if (r < 0)
				return r;
		}
		if (json_object_object_get_ex(obj, "env", &v)) {
			path_join(path, sizeof(path), prefix, "env");
			r = kv_from_object(p, v, path, KV_ENV, &s->env, &s->n_env);
			if (r < 0)
				return r;
		}
	} else {
		const char *pname = config_protocol_name(s->protocol);

		if (s->command)
			return server_reject(p, obj, prefix, "command",
					     "not used by http servers (they use url)");
		path_join(path, sizeof(path), prefix, "url");
		if (!s->url)
			return fail(p, -EINVAL, path, "missing, required for %s servers", pname);
		problem = url_problem(s->url);
		if (problem)
			return fail(p, -EINVAL, path, "%s", problem);
		r = server_reject(p, obj, prefix, "args", "only for stdio servers");
		if (r < 0)
			return r;
		r = server_reject(p, obj, prefix, "env", "only for stdio servers");
		if (r < 0)
			return r;
		if (json_object_object_get_ex(obj, "headers", &v)) {
			path_join(path, sizeof(path), prefix, "headers");
			r = kv_from_object(p, v, path, KV_HEADERS, &s->headers, &s->n_headers);
			if (r < 0)
				return r;
		}
	}

	r = get_bool(p, obj, prefix, "enabled", &s->enabled);
	if (r < 0)
		return r;
	r = get_bool(p, obj, prefix, "eager", &s->eager);
	if (r < 0)
		return r;

	s->oauth_enabled = s->protocol != CONFIG_PROTOCOL_STDIO;
	if (json_object_object_get_ex(obj, "oauth", &v)) {
		r = server_oauth(p, v, prefix, s);
		if (r < 0)
			return r;
	}
	return 0;
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

/* names_add(): the name was in the set already. */
#define NAME_DUPLICATE 1

/* Adds name (which must outlive the set): 0 or NAME_DUPLICATE. */
static int names_add(struct name_set *set, const char *name)
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
			return NAME_DUPLICATE;
	set->slot[i] = name;
	set->n++;
	return 0;
}

/*
 * One entry of mcpServers. key is the name in the object form (already in
 * p->names: a repeated key is the reader's to report), NULL in the list form
 * (where index locates the entry until its name is known).
 */
static int server_parse(struct parser *p, struct json_object *obj, char *key, size_t index,
			struct config_server *s)
{
	static const char *const known[] = {
		"name", "url", "protocol", "type", "command", "args", "env",
		"headers", "enabled", "eager", "oauth", NULL,
	};
	char prefix[CONFIG_PATH_MAX], path[CONFIG_PATH_MAX];
	int r;

	s->enabled = true;
	if (key) {
		path_join(prefix, sizeof(prefix), "mcpServers", key);
		if (!name_valid(key))
			return fail(p, -EINVAL, prefix, "invalid server name: " NAME_RULE);
		s->name = key;
	} else {
		path_index(prefix, sizeof(prefix), "mcpServers", index);
		if (!json_object_is_type(obj, json_type_object))
			return fail(p, -EINVAL, prefix, "must be an object");
		path_join(path, sizeof(path), prefix, "name");
		if (!json_object_object_get_ex(obj, "name", NULL))
			return fail(p, -EINVAL, path, "missing");
		r = get_string(p, obj, prefix, "name", false, &s->name);
		if (r < 0)
			return r;
		if (!name_valid(s->name))
			return fail(p, -EINVAL, path, NAME_RULE);
		if (names_add(&p->names, s->name) == NAME_DUPLICATE)
			return fail(p, -EINVAL, path, "duplicate server name \"%s\"", s->name);
		path_join(prefix, sizeof(prefix), "mcpServers", s->name);
	}
	if (!json_object_is_type(obj, json_type_object))
		return fail(p, -EINVAL, prefix, "must be an object");

	/* "name" inside the object form is not ours: the key is the name. */
	warn_unknown(p, obj, prefix, key ? known + 1 : known);
	return server_fields(p, obj, prefix, s);
}

static int refresh_parse(struct parser *p, struct json_object *root)
{
	static const char *const known[] = {
		"threshold", "max_retries", "timeout", "max_in_flight", NULL,
	};
	struct config_refresh *rf = &p->c->refresh;
	struct json_object *obj, *v;
	int r;

	r = get_object(p, root, NULL, "refresh", &obj);
	if (r < 0 || !obj)
		return r;
	warn_unknown(p, obj, "refresh", known);

	if (json_object_object_get_ex(obj, "threshold", &v)) {
		bool number = json_object_is_type(v, json_type_double) ||
			      json_object_is_type(v, json_type_int);
		double t = number ? json_object_get_double(v) : 0.0;

		/* Written so that NaN, which json-c accepts, fails too. */
		if (!(t > 0.0 && t < 1.0))
			return fail(p, -EINVAL, "refresh.threshold",
				    "must be a number greater than 0 and less than 1");
		rf->threshold = t;
	}
	r = get_int(p, obj, "refresh", "max_retries", 0, 20, &rf->max_retries);
	if (r < 0)
		return r;
	r = get_int(p, obj, "refresh", "timeout", 1, 600, &rf->timeout_sec);
	if (r < 0)
		return r;
	return get_int(p, obj, "refresh", "max_in_flight", 1, 4096, &rf->max_in_flight);
}

static int dir_parse(struct parser *p, struct json_object *obj, const char *key, char **out,
		     int (*fallback)(bool, char *, size_t))
{
	char buf[PATH_MAX];
	int r;

	r = get_string(p, obj, NULL, key, false, out);
	if (r < 0)
		return r;
	if (*out) {
		if ((*out)[0] != '/')
			return fail(p, -EINVAL, key, "must be an absolute path");
		return 0;
	}
	r = fallback(p->c->system_mode, buf, sizeof(buf));
	if (r == -ENOENT)
		return fail(p, r, key, "not set, and there is no default without HOME");
	if (r < 0)
		return fail(p, r, key, "not set, and the default cannot be used: %s", strerror(-r));
	*out = mem_strdup(p->c->mem, buf);
	return 0;
}

static int globals_parse(struct parser *p, struct json_object *root)
{
	static const char *const known[] = {
		"data_dir", "runtime_dir", "listen", "group", "worker_user", "idle_timeout",
		"max_connections_per_uid", "request_timeout",
		"refresh", "disable_management", "mcpServers", NULL,
	};
	struct config *c = p->c;
	int r;

	warn_unknown(p, root, NULL, known);

	r = get_string(p, root, NULL, "listen", false, &c->listen);
	if (r < 0)
		return r;
	if (c->listen) {
		const char *problem = listen_problem(c->listen);

		if (problem)
			return fail(p, -EINVAL, "listen", "%s", problem);
	} else {
		c->listen = mem_strdup(c->mem, DEFAULT_LISTEN);
	}
	r = get_string(p, root, NULL, "group", true, &c->group);
	if (r < 0)
		return r;
	r = get_string(p, root, NULL, "worker_user", true, &c->worker_user);
	if (r < 0)
		return r;
	if (!c->worker_user)
		c->worker_user = mem_strdup(c->mem, DEFAULT_WORKER_USER);
	r = get_int(p, root, NULL, "idle_timeout", 0, 86400, &c->idle_timeout_sec);
	if (r < 0)
		return r;
	r = get_int(p, root, NULL, "max_connections_per_uid", 1, 65536, &c->max_conns_per_uid);
	if (r < 0)
		return r;
	r = get_int(p, root, NULL, "request_timeout", 1, 3600, &c->request_timeout_sec);
	if (r < 0)
		return r;
	r = get_bool(p, root, NULL, "disable_management", &c->disable_management);
	if (r < 0)
		return r;
	r = refresh_parse(p, root);
	if (r < 0)
		return r;
	/* The servers were converted as they were read; here is their turn to fail. */
	if (p->servers.r)
		return deferred_report(p, &p->servers);
	/* Last: the user-mode runtime default may create /tmp/mcpkeeper-UID. */
	r = dir_parse(p, root, "data_dir", &c->data_dir, paths_data_dir);
	if (r < 0)
		return r;
	return dir_parse(p, root, "runtime_dir", &c->runtime_dir, paths_runtime_dir);
}

static unsigned line_at(const char *text, size_t off)
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
			return fail(p, -EINVAL, NULL, "file is empty");
		return fail(p, -EINVAL, NULL, "line %u: %s", line_at(text, end < len ? end : len),
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
			return fail(d->p, -EINVAL, NULL, "line %u: keys must be in double quotes",
				    line_at(d->text, start));
		key = dup_key(d->text + start, end - start, escaped);
		if (!key)
			return -EINVAL;
		path_join(sub, sizeof(sub), path, key);
		if (json_object_object_get_ex(keys, key, NULL))
			return fail(d->p, -EINVAL, sub, "duplicate key (line %u)",
				    line_at(d->text, start));
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

		path_index(sub, sizeof(sub), path, i);
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
		fail(p, r, NULL, "cannot scan the JSON text for duplicate keys");
	defer(p, &p->dup, r);
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
	return fail(p, -EINVAL, NULL, "line %u: %s", line_at(p->text, off),
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
	*out = mem_strdup(p->c->mem, json_object_iter_peek_name(&it));
	p->pos = end;
	skip_ws(p);
	defer(p, &p->dup, fail(p, -EINVAL, NULL, "line %u: keys must be in double quotes",
			       line_at(p->text, start)));
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
		*out = mem_strdup(p->c->mem, json_object_get_string(k));
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
 * wrong one is kept for globals_parse() to report.
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
	r = server_parse(p, v, key, index, s);
	if (r < 0) {
		defer(p, &p->servers, r);
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
		path_join(path, sizeof(path), "mcpServers", key);
		if (names_add(&p->names, key) == NAME_DUPLICATE)
			defer(p, &p->dup, fail(p, -EINVAL, path, "duplicate server name (line %u)",
					       line_at(p->text, key_off)));
	} else {
		path_index(path, sizeof(path), "mcpServers", index);
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
	defer(p, &p->servers, fail(p, -EINVAL, "mcpServers", "must be an object or an array"));
	return 0;
}

/* One member of the top-level object. */
static int member_read(struct parser *p, char *key, size_t key_off, size_t index)
{
	char path[CONFIG_PATH_MAX];
	struct json_object *v = NULL;
	size_t start = p->pos;
	int r;

	path_join(path, sizeof(path), NULL, key);
	if (json_object_object_get_ex(p->root, key, NULL))
		defer(p, &p->dup, fail(p, -EINVAL, path, "duplicate key (line %u)",
				       line_at(p->text, key_off)));
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

/* The whole text, for its syntax and keys; servers converted on the way. */
static int text_read(struct parser *p)
{
	struct config *c = p->c;
	int r;

	skip_ws(p);
	if (p->pos >= p->len)
		return fail(p, -EINVAL, NULL, "file is empty");
	if (!at(p, '{')) {
		_cleanup_(json_putp) struct json_object *root = NULL;

		/* Not an object, so wrong anyway; json-c whole finds any syntax error first. */
		r = json_parse(p, p->text, p->len, &root);
		if (r < 0)
			return r;
		return fail(p, -EINVAL, NULL, "the top level must be a JSON object");
	}
	r = container_read(p, member_read);
	if (r < 0)
		return r;
	skip_ws(p);
	if (p->pos < p->len)
		return trailing(p);
	if (p->dup.r)
		return deferred_report(p, &p->dup);

	/* The array grew by doubling; give back the rest. */
	if (c->n_servers == 0) {
		free(c->servers);
		c->servers = NULL;
	} else if (c->n_servers < p->cap_servers) {
		c->servers = xrealloc(c->servers, c->n_servers * sizeof(*c->servers));
	}
	return 0;
}

struct config *config_free(struct config *c)
{
	if (!c)
		return NULL;
	free(c->servers);
	mem_free(c->mem);
	free(c);
	return NULL;
}

void config_freep(struct config **c)
{
	*c = config_free(*c);
}

static int parse(struct parser *p, bool system_mode)
{
	struct config *c;
	int r;

	c = p->c = xcalloc(1, sizeof(*c));
	c->mem = xcalloc(1, sizeof(*c->mem));
	c->path = mem_strdup(c->mem, p->name);
	c->system_mode = system_mode;
	c->idle_timeout_sec = DEFAULT_IDLE_TIMEOUT;
	c->max_conns_per_uid = 128;
	c->request_timeout_sec = 60;
	c->refresh = (struct config_refresh){
		.threshold = DEFAULT_THRESHOLD,
		.max_retries = DEFAULT_MAX_RETRIES,
		.timeout_sec = DEFAULT_REFRESH_TIMEOUT,
		.max_in_flight = DEFAULT_MAX_IN_FLIGHT,
	};

	p->root = json_object_new_object();
	if (!p->root)
		fatal("out of memory");
	for (size_t i = 0; i < ARRAY_SIZE(p->tok); i++) {
		/* Values i + 1 containers deep: what is left of the file's depth limit. */
		p->tok[i] = tokener_new(CONFIG_JSON_DEPTH - 1 - (int)i,
					JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8 |
					JSON_TOKENER_ALLOW_TRAILING_CHARS);
	}
	r = text_read(p);
	if (r < 0)
		return r;
	return globals_parse(p, p->root);
}

int config_parse(const char *name, const char *text, size_t len, bool system_mode,
		 struct config **out, char *err, size_t errlen)
{
	struct parser p = {
		.name = name && *name ? name : "config",
		.err = err,
		.errlen = errlen,
	};
	const char *nul;
	int r;

	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	if (len > CONFIG_MAX_SIZE)
		return fail(&p, -EFBIG, NULL, "file is larger than the " CONFIG_MAX_SIZE_TEXT " limit");
	/* Editors on some systems start UTF-8 files with a byte order mark. */
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0) {
		text += 3;
		len -= 3;
	}
	/* json-c would stop at a NUL and report the rest as missing. */
	nul = memchr(text, '\0', len);
	if (nul)
		return fail(&p, -EINVAL, NULL, "line %u: NUL byte in the file",
			    line_at(text, (size_t)(nul - text)));

	p.text = text;
	p.len = len;
	r = parse(&p, system_mode);
	for (size_t i = 0; i < ARRAY_SIZE(p.tok); i++)
		if (p.tok[i])
			json_tokener_free(p.tok[i]);
	json_putp(&p.root);
	names_free(&p.names);
	free(p.dup.msg);
	free(p.servers.msg);
	if (r < 0) {
		config_free(p.c);
		return r;
	}
	*out = p.c;
	return 0;
}

/* size is what fstat() said: one read usually does, but the file may grow. */
static int read_all(int fd, size_t size, char **out, size_t *out_len)
{
	_cleanup_(freep) char *buf = NULL;
	size_t len = 0, cap = 0;

	for (;;) {
		ssize_t n;

		if (len == cap) {
			/* One byte past the limit is enough to know it is too large. */
			size_t ncap = cap ? cap * 2 : size + 1;

			if (cap > CONFIG_MAX_SIZE)
				return -EFBIG;
			if (ncap < 4096)
				ncap = 4096;
			if (ncap > CONFIG_MAX_SIZE + 1)
				ncap = CONFIG_MAX_SIZE + 1;
			buf = xrealloc(buf, ncap);
			cap = ncap;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > CONFIG_MAX_SIZE)
			return -EFBIG;
	}
	*out = TAKE_PTR(buf);
	*out_len = len;
	return 0;
}

int config_load(const char *path, bool system_mode, struct config **out, char *err, size_t errlen)
{
	_cleanup_(closep) int fd = -1;
	_cleanup_(freep) char *text = NULL;
	const char *slash = strrchr(path, '/');
	const char *base = slash && slash[1] ? slash + 1 : path;
	struct parser p = { .name = path, .err = err, .errlen = errlen };
	struct stat st;
	size_t len = 0;
	int r;

	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	/* O_NONBLOCK: a FIFO in place of the file must not hang start-up. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		r = -errno;
		return fail(&p, r, NULL, "cannot open: %s", strerror(-r));
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		return fail(&p, r, NULL, "cannot stat: %s", strerror(-r));
	}
	if (!S_ISREG(st.st_mode))
		return fail(&p, -EINVAL, NULL, "not a regular file");
	if (st.st_size > (off_t)CONFIG_MAX_SIZE)
		return fail(&p, -EFBIG, NULL,
			    "file is larger than the " CONFIG_MAX_SIZE_TEXT " limit (%lld bytes)",
			    (long long)st.st_size);
	r = read_all(fd, (size_t)st.st_size, &text, &len);
	if (r == -EFBIG)
		return fail(&p, r, NULL, "file is larger than the " CONFIG_MAX_SIZE_TEXT " limit");
	if (r < 0)
		return fail(&p, r, NULL, "cannot read: %s", strerror(-r));

	r = config_parse(base, text, len, system_mode, out, err, errlen);
	if (r < 0)
		return r;
	(*out)->path = mem_strdup((*out)->mem, path);
	return 0;
}

const struct config_server *config_find_server(const struct config *c, const char *name)
{
	for (size_t i = 0; i < c->n_servers; i++)
		if (strcmp(c->servers[i].name, name) == 0)
			return &c->servers[i];
	return NULL;
}
