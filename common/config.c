/*
 * See config.h. Turns one JSON file into a validated struct config.
 *
 * The file is written by people, often pasted from an MCP desktop client's
 * config, so every message names the file, the field path and what is wrong,
 * and two shapes of "mcpServers" are accepted. A config that loads is
 * complete: defaults are filled in here, so no other module needs to know
 * them.
 *
 * json-c keeps the last of two equal keys in an object without a word; a
 * second "github" entry pasted into "mcpServers" would silently replace the
 * first. A small scan over the raw text (run only after json-c accepted it)
 * finds duplicate keys so they can be reported with their line.
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

#define CONFIG_MAX_SIZE (4u * 1024 * 1024)
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

struct parser {
	const char *name;	/* what messages call the file */
	char *err;
	size_t errlen;
	struct config *c;
};

static void json_putp(struct json_object **o)
{
	if (*o)
		json_object_put(*o);
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

static int fail_oom(struct parser *p)
{
	return fail(p, -ENOMEM, NULL, "out of memory");
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

/* JSON strings may carry \u0000; C strings cannot. */
static int string_value(struct parser *p, struct json_object *v, const char *path, bool nonempty,
			char **out)
{
	const char *s;
	size_t len;
	char *dup;

	if (!json_object_is_type(v, json_type_string))
		return fail(p, -EINVAL, path, "must be a string");
	s = json_object_get_string(v);
	len = (size_t)json_object_get_string_len(v);
	if (strlen(s) != len)
		return fail(p, -EINVAL, path, "must not contain NUL characters");
	if (nonempty && len == 0)
		return fail(p, -EINVAL, path, "must not be empty");
	dup = strdup(s);
	if (!dup)
		return fail_oom(p);
	free(*out);
	*out = dup;
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

static void strv_free(char **v)
{
	if (!v)
		return;
	for (char **s = v; *s; s++)
		free(*s);
	free(v);
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
	strv = calloc(n + 1, sizeof(*strv));
	if (!strv)
		return fail_oom(p);
	for (size_t i = 0; i < n; i++) {
		int r;

		path_index(elem, sizeof(elem), path, i);
		r = string_value(p, json_object_array_get_idx(v, i), elem, false, &strv[i]);
		if (r < 0) {
			strv_free(strv);
			return r;
		}
	}
	strv_free(*out);
	*out = strv;
	*n_out = n;
	return 0;
}

static void kv_free(struct config_kv *kv, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(kv[i].key);
		free(kv[i].value);
	}
	free(kv);
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
	kv = calloc(json_object_object_length(v) + 1, sizeof(*kv));
	if (!kv)
		return fail_oom(p);

	it = json_object_iter_begin(v);
	end = json_object_iter_end(v);
	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it), n++) {
		const char *key = json_object_iter_peek_name(&it);

		path_join(elem, sizeof(elem), path, key);
		if (kind == KV_HEADERS && !header_name_valid(key)) {
			r = fail(p, -EINVAL, elem, "not a valid HTTP header name");
			goto err;
		}
		if (kind == KV_ENV && (!*key || strchr(key, '='))) {
			r = fail(p, -EINVAL, elem,
				 "not a valid environment variable name (empty or contains '=')");
			goto err;
		}
		r = string_value(p, json_object_iter_peek_value(&it), elem, false, &kv[n].value);
		if (r < 0)
			goto err;
		/* A line break in a header value would let the file inject headers. */
		if (kind == KV_HEADERS && strpbrk(kv[n].value, "\r\n")) {
			r = fail(p, -EINVAL, elem, "must not contain line breaks");
			goto err;
		}
		kv[n].key = strdup(key);
		if (!kv[n].key) {
			r = fail_oom(p);
			goto err;
		}
	}
	kv_free(*out, *n_out);
	*out = kv;
	*n_out = n;
	return 0;
err:
	kv_free(kv, n + 1);
	return r;
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
static int listen_check(struct parser *p, const char *s)
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
			return fail(p, -EINVAL, "listen", "%s", msg);
		hlen = (size_t)(close - s - 1);
		if (hlen >= sizeof(host))
			return fail(p, -EINVAL, "listen", "%s", msg);
		memcpy(host, s + 1, hlen);
		host[hlen] = '\0';
		if (inet_pton(AF_INET6, host, &a6) != 1 || !IN6_IS_ADDR_LOOPBACK(&a6))
			return fail(p, -EINVAL, "listen", "%s", msg);
		port_s = close + 2;
	} else {
		const char *colon = strrchr(s, ':');
		struct in_addr a4;

		if (!colon)
			return fail(p, -EINVAL, "listen", "%s", msg);
		hlen = (size_t)(colon - s);
		if (hlen >= sizeof(host))
			return fail(p, -EINVAL, "listen", "%s", msg);
		memcpy(host, s, hlen);
		host[hlen] = '\0';
		if (inet_pton(AF_INET, host, &a4) != 1 || (ntohl(a4.s_addr) >> 24) != 127)
			return fail(p, -EINVAL, "listen", "%s", msg);
		port_s = colon + 1;
	}
	if (!port_parse(port_s, strlen(port_s), &port))
		return fail(p, -EINVAL, "listen", "%s", msg);
	if (port > 65535)
		return fail(p, -EINVAL, "listen", "port must be between 0 and 65535");
	return 0;
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
	_cleanup_(freep) char *first = NULL;
	char path[CONFIG_PATH_MAX];

	*found = false;
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		_cleanup_(freep) char *s = NULL;
		enum config_protocol proto;
		int r;

		r = get_string(p, obj, prefix, keys[i], false, &s);
		if (r < 0)
			return r;
		if (!s)
			continue;
		path_join(path, sizeof(path), prefix, keys[i]);
		if (protocol_parse(s, &proto) < 0)
			return fail(p, -EINVAL, path,
				    "must be one of \"streamable-http\" (or \"http\"), \"sse\", \"stdio\"");
		if (*found && proto != *out)
			return fail(p, -EINVAL, path, "\"%s\" conflicts with protocol \"%s\"", s,
				    first);
		if (!*found)
			first = TAKE_PTR(s);
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
	strv = calloc(n + 1, sizeof(*strv));
	if (!strv)
		return fail_oom(p);
	n = 0;
	for (const char *q = s + strspn(s, ws); *q; q += strspn(q, ws)) {
		size_t len = strcspn(q, ws);

		strv[n] = strndup(q, len);
		if (!strv[n]) {
			strv_free(strv);
			return fail_oom(p);
		}
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
	_cleanup_(freep) char *s = NULL;
	int r;

	if (!json_object_object_get_ex(obj, "scopes", &v))
		return 0;
	path_join(path, sizeof(path), prefix, "scopes");

	if (json_object_is_type(v, json_type_string)) {
		r = string_value(p, v, path, false, &s);
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
	if (o->n_scopes == 0) {
		strv_free(o->scopes);
		o->scopes = NULL;
	}
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
		s->args = calloc(1, sizeof(*s->args));
		if (!s->args)
			return fail_oom(p);
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

/*
 * One entry of mcpServers. key is the name in the object form, NULL in the
 * list form (where index locates the entry until its name is known).
 */
static int server_parse(struct parser *p, struct json_object *obj, const char *key, size_t index,
			struct json_object *seen, struct config_server *s)
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
		s->name = strdup(key);
		if (!s->name)
			return fail_oom(p);
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
		/* The object form cannot repeat a name: the raw scan already refused it. */
		if (json_object_object_get_ex(seen, s->name, NULL))
			return fail(p, -EINVAL, path, "duplicate server name \"%s\"", s->name);
		path_join(prefix, sizeof(prefix), "mcpServers", s->name);
	}
	if (json_object_object_add(seen, s->name, NULL) < 0)
		return fail_oom(p);
	if (!json_object_is_type(obj, json_type_object))
		return fail(p, -EINVAL, prefix, "must be an object");

	/* "name" inside the object form is not ours: the key is the name. */
	warn_unknown(p, obj, prefix, key ? known + 1 : known);
	return server_fields(p, obj, prefix, s);
}

static int servers_parse(struct parser *p, struct json_object *v)
{
	_cleanup_(json_putp) struct json_object *seen = NULL;
	struct config *c = p->c;
	size_t n;
	int r;

	seen = json_object_new_object();
	if (!seen)
		return fail_oom(p);

	if (json_object_is_type(v, json_type_array))
		n = json_object_array_length(v);
	else if (json_object_is_type(v, json_type_object))
		n = (size_t)json_object_object_length(v);
	else
		return fail(p, -EINVAL, "mcpServers", "must be an object or an array");
	if (n == 0)
		return 0;
	c->servers = calloc(n, sizeof(*c->servers));
	if (!c->servers)
		return fail_oom(p);

	if (json_object_is_type(v, json_type_array)) {
		for (size_t i = 0; i < n; i++) {
			/* Counted before parsing so config_free sees partial entries. */
			struct config_server *s = &c->servers[c->n_servers++];

			r = server_parse(p, json_object_array_get_idx(v, i), NULL, i, seen, s);
			if (r < 0)
				return r;
		}
	} else {
		struct json_object_iterator it = json_object_iter_begin(v);
		struct json_object_iterator end = json_object_iter_end(v);

		for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
			struct config_server *s = &c->servers[c->n_servers++];

			r = server_parse(p, json_object_iter_peek_value(&it),
					 json_object_iter_peek_name(&it), 0, seen, s);
			if (r < 0)
				return r;
		}
	}
	return 0;
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
	*out = strdup(buf);
	if (!*out)
		return fail_oom(p);
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
	struct json_object *v;
	int r;

	warn_unknown(p, root, NULL, known);

	r = get_string(p, root, NULL, "listen", false, &c->listen);
	if (r < 0)
		return r;
	if (c->listen) {
		r = listen_check(p, c->listen);
		if (r < 0)
			return r;
	} else {
		c->listen = strdup(DEFAULT_LISTEN);
		if (!c->listen)
			return fail_oom(p);
	}
	r = get_string(p, root, NULL, "group", true, &c->group);
	if (r < 0)
		return r;
	r = get_string(p, root, NULL, "worker_user", true, &c->worker_user);
	if (r < 0)
		return r;
	if (!c->worker_user) {
		c->worker_user = strdup(DEFAULT_WORKER_USER);
		if (!c->worker_user)
			return fail_oom(p);
	}
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
	if (json_object_object_get_ex(root, "mcpServers", &v)) {
		r = servers_parse(p, v);
		if (r < 0)
			return r;
	}
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

	tok = json_tokener_new_ex(CONFIG_JSON_DEPTH);
	if (!tok)
		return fail_oom(p);
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
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
		return strndup(raw + 1, len - 2);
	tok = json_tokener_new();
	if (!tok)
		return NULL;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	o = json_tokener_parse_ex(tok, raw, (int)len);
	json_tokener_free(tok);
	if (o && json_object_is_type(o, json_type_string))
		key = strdup(json_object_get_string(o));
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
		return fail_oom(d->p);
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
			return fail_oom(d->p);
		path_join(sub, sizeof(sub), path, key);
		if (json_object_object_get_ex(keys, key, NULL)) {
			bool server = depth == 1 && strcmp(path, "mcpServers") == 0;

			return fail(d->p, -EINVAL, sub, "duplicate %s (line %u)",
				    server ? "server name" : "key", line_at(d->text, start));
		}
		if (json_object_object_add(keys, key, NULL) < 0)
			return fail_oom(d->p);
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

static int dup_check(struct parser *p, const char *text, size_t len)
{
	struct dupscan d = { .p = p, .text = text, .len = len };
	int r;

	r = dup_value(&d, "", 0);
	if (r < 0 && p->err && p->errlen && !p->err[0])
		fail(p, r, NULL, "cannot scan the JSON text for duplicate keys");
	return r;
}

static void server_clear(struct config_server *s)
{
	free(s->name);
	free(s->url);
	free(s->command);
	strv_free(s->args);
	kv_free(s->env, s->n_env);
	kv_free(s->headers, s->n_headers);
	free(s->oauth.client_id);
	free(s->oauth.client_secret);
	strv_free(s->oauth.scopes);
	free(s->oauth.resource);
}

struct config *config_free(struct config *c)
{
	if (!c)
		return NULL;
	for (size_t i = 0; i < c->n_servers; i++)
		server_clear(&c->servers[i]);
	free(c->servers);
	free(c->path);
	free(c->data_dir);
	free(c->runtime_dir);
	free(c->listen);
	free(c->group);
	free(c->worker_user);
	free(c);
	return NULL;
}

void config_freep(struct config **c)
{
	*c = config_free(*c);
}

int config_parse(const char *name, const char *text, size_t len, bool system_mode,
		 struct config **out, char *err, size_t errlen)
{
	_cleanup_(json_putp) struct json_object *root = NULL;
	_cleanup_(config_freep) struct config *c = NULL;
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
		return fail(&p, -EFBIG, NULL, "file is larger than the 4 MiB limit");
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

	r = json_parse(&p, text, len, &root);
	if (r < 0)
		return r;
	if (!json_object_is_type(root, json_type_object))
		return fail(&p, -EINVAL, NULL, "the top level must be a JSON object");
	r = dup_check(&p, text, len);
	if (r < 0)
		return r;

	c = calloc(1, sizeof(*c));
	if (!c)
		return fail_oom(&p);
	c->path = strdup(p.name);
	if (!c->path)
		return fail_oom(&p);
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
	p.c = c;
	r = globals_parse(&p, root);
	if (r < 0)
		return r;

	*out = TAKE_PTR(c);
	return 0;
}

static int read_all(int fd, char **out, size_t *out_len)
{
	_cleanup_(freep) char *buf = NULL;
	size_t len = 0, cap = 0;

	for (;;) {
		ssize_t n;

		if (len == cap) {
			/* One byte past the limit is enough to know it is too large. */
			size_t ncap = cap ? cap * 2 : 64 * 1024;
			char *nbuf;

			if (cap > CONFIG_MAX_SIZE)
				return -EFBIG;
			if (ncap > CONFIG_MAX_SIZE + 1)
				ncap = CONFIG_MAX_SIZE + 1;
			nbuf = realloc(buf, ncap);
			if (!nbuf)
				return -ENOMEM;
			buf = nbuf;
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
	char *dup;
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
		return fail(&p, -EFBIG, NULL, "file is larger than the 4 MiB limit (%lld bytes)",
			    (long long)st.st_size);
	r = read_all(fd, &text, &len);
	if (r == -EFBIG)
		return fail(&p, r, NULL, "file is larger than the 4 MiB limit");
	if (r < 0)
		return fail(&p, r, NULL, "cannot read: %s", strerror(-r));

	r = config_parse(base, text, len, system_mode, out, err, errlen);
	if (r < 0)
		return r;
	dup = strdup(path);
	if (!dup) {
		*out = config_free(*out);
		return fail_oom(&p);
	}
	free((*out)->path);
	(*out)->path = dup;
	return 0;
}

const struct config_server *config_find_server(const struct config *c, const char *name)
{
	for (size_t i = 0; i < c->n_servers; i++)
		if (strcmp(c->servers[i].name, name) == 0)
			return &c->servers[i];
	return NULL;
}
