/*
 * One entry of mcpServers, as its own small json-c tree, into one struct
 * config_server: the name, url or command, the protocol and its desktop
 * client aliases, args and env for stdio servers, headers for http ones,
 * the flags, and the optional oauth object. Fields that only make sense for
 * one kind of server are errors on the other, and the defaults a server
 * gets (enabled, OAuth for http servers, empty args for stdio) are set here.
 *
 * Touches the entry's tree, the server it fills and the config's arena;
 * reading the text and growing the servers array are config-read.c's.
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <string.h>

#include "addr.h"
#include "config-private.h"
#include "log.h"

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
		return config_fail(p, -EINVAL, path, "must be an object of strings");
	kv = config_mem_array(p->c->mem, (size_t)json_object_object_length(v) + 1, sizeof(*kv));

	it = json_object_iter_begin(v);
	end = json_object_iter_end(v);
	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it), n++) {
		const char *key = json_object_iter_peek_name(&it);

		config_path_join(elem, sizeof(elem), path, key);
		if (kind == KV_HEADERS && !config_header_name_valid(key))
			return config_fail(p, -EINVAL, elem, "not a valid HTTP header name");
		if (kind == KV_ENV && (!*key || strchr(key, '=')))
			return config_fail(p, -EINVAL, elem,
					   "not a valid environment variable name (empty or contains '=')");
		r = config_string_value(p, json_object_iter_peek_value(&it), elem, false,
					&kv[n].value);
		if (r < 0)
			return r;
		/* A line break in a header value would let the file inject headers. */
		if (kind == KV_HEADERS && strpbrk(kv[n].value, "\r\n"))
			return config_fail(p, -EINVAL, elem, "must not contain line breaks");
		kv[n].key = config_mem_strdup(p->c->mem, key);
	}
	*out = kv;
	*n_out = n;
	return 0;
}

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
		config_path_join(path, sizeof(path), prefix, keys[i]);
		r = config_string_peek(p, v, path, false, &s);
		if (r < 0)
			return r;
		if (protocol_parse(s, &proto) < 0)
			return config_fail(p, -EINVAL, path,
					   "must be one of \"streamable-http\" (or \"http\"), \"sse\", \"stdio\"");
		if (*found && proto != *out)
			return config_fail(p, -EINVAL, path,
					   "\"%s\" conflicts with protocol \"%s\"",
					   s, first);
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
	strv = config_mem_array(p->c->mem, n + 1, sizeof(*strv));
	n = 0;
	for (const char *q = s + strspn(s, ws); *q; q += strspn(q, ws)) {
		size_t len = strcspn(q, ws);

		strv[n] = config_mem_strndup(p->c->mem, q, len);
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
	config_path_join(path, sizeof(path), prefix, "scopes");

	if (json_object_is_type(v, json_type_string)) {
		r = config_string_peek(p, v, path, false, &s);
		if (r < 0)
			return r;
		return scopes_from_string(p, s, o);
	}
	if (!json_object_is_type(v, json_type_array))
		return config_fail(p, -EINVAL, path,
				   "must be an array of strings or a space-separated string");
	r = config_strv_from_array(p, v, path, &o->scopes, &o->n_scopes);
	if (r < 0)
		return r;
	/* A scope token cannot hold spaces (RFC 6749 3.3); one that does is a typo. */
	for (size_t i = 0; i < o->n_scopes; i++) {
		if (!o->scopes[i][0] || strpbrk(o->scopes[i], " \t\r\n")) {
			config_path_index(elem, sizeof(elem), path, i);
			return config_fail(p, -EINVAL, elem,
					   "must be a non-empty scope without spaces");
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
		"client_id", "client_secret", "scopes", "redirect_port", "resource", "allow_private_endpoints",
		NULL,
	};
	struct config_oauth *o = &s->oauth;
	char path[CONFIG_PATH_MAX];
	const char *problem;
	int r;

	config_path_join(path, sizeof(path), prefix, "oauth");
	if (json_object_is_type(v, json_type_boolean)) {
		if (!json_object_get_boolean(v)) {
			s->oauth_enabled = false;
			return 0;
		}
		if (s->protocol == CONFIG_PROTOCOL_STDIO)
			return config_fail(p, -EINVAL, path,
					   "OAuth does not apply to stdio servers");
		return 0;
	}
	if (!json_object_is_type(v, json_type_object))
		return config_fail(p, -EINVAL, path, "must be an object or false");
	if (s->protocol == CONFIG_PROTOCOL_STDIO)
		return config_fail(p, -EINVAL, path, "OAuth does not apply to stdio servers");

	config_warn_unknown(p, v, path, known);
	r = config_get_string(p, v, path, "client_id", true, &o->client_id);
	if (r < 0)
		return r;
	r = config_get_string(p, v, path, "client_secret", true, &o->client_secret);
	if (r < 0)
		return r;
	if (o->client_secret && !o->client_id) {
		char sub[CONFIG_PATH_MAX];

		config_path_join(sub, sizeof(sub), path, "client_secret");
		return config_fail(p, -EINVAL, sub, "requires client_id");
	}
	r = oauth_scopes(p, v, path, o);
	if (r < 0)
		return r;
	r = config_get_int(p, v, path, "redirect_port", 0, 65535, &o->redirect_port);
	if (r < 0)
		return r;
	r = config_get_string(p, v, path, "resource", false, &o->resource);
	if (r < 0)
		return r;
	if (o->resource && (problem = config_url_problem(o->resource))) {
		char sub[CONFIG_PATH_MAX];

		config_path_join(sub, sizeof(sub), path, "resource");
		return config_fail(p, -EINVAL, sub, "%s", problem);
	}
	return config_get_bool(p, v, path, "allow_private_endpoints", &o->allow_private_endpoints);
}

/* Fields that only make sense for one kind of server are errors on the other. */
static int server_reject(struct parser *p, struct json_object *obj, const char *prefix,
			 const char *key, const char *why)
{
	char path[CONFIG_PATH_MAX];

	if (!json_object_object_get_ex(obj, key, NULL))
		return 0;
	config_path_join(path, sizeof(path), prefix, key);
	return config_fail(p, -EINVAL, path, "%s", why);
}

/* One list of "sandbox": absolute paths, none of them "/" or with a ".."
 * component (the keeper resolves symbolic links when it starts the server). */
static int sandbox_paths(struct parser *p, struct json_object *sb, const char *prefix, const char *key,
			 char ***out, size_t *n_out)
{
	char path[CONFIG_PATH_MAX], elem[CONFIG_PATH_MAX];
	struct json_object *v;
	int r;

	*out = config_mem_array(p->c->mem, 1, sizeof(**out));
	*n_out = 0;
	if (!json_object_object_get_ex(sb, key, &v))
		return 0;
	config_path_join(path, sizeof(path), prefix, key);
	r = config_strv_from_array(p, v, path, out, n_out);
	if (r < 0)
		return r;
	for (size_t i = 0; i < *n_out; i++) {
		const char *s = (*out)[i], *dots = strstr(s, "..");

		config_path_index(elem, sizeof(elem), path, i);
		if (s[0] != '/')
			return config_fail(p, -EINVAL, elem, "must be an absolute path");
		if (strspn(s, "/") == strlen(s))
			return config_fail(p, -EINVAL, elem, "must not be / (name the folders the server needs)");
		for (; dots; dots = strstr(dots + 1, ".."))
			if (dots[-1] == '/' && (dots[2] == '/' || dots[2] == '\0'))
				return config_fail(p, -EINVAL, elem, "must not contain a .. component");
	}
	return 0;
}

/* "sandbox": true (the default), false, or {"read": [...], "write": [...]}. */
static int server_sandbox(struct parser *p, struct json_object *obj, const char *prefix, struct config_server *s)
{
	static const char *const known[] = { "read", "write", NULL };
	char path[CONFIG_PATH_MAX];
	struct json_object *v;
	int r;

	s->sandbox = true;
	s->sandbox_read = config_mem_array(p->c->mem, 1, sizeof(*s->sandbox_read));
	s->sandbox_write = config_mem_array(p->c->mem, 1, sizeof(*s->sandbox_write));
	if (!json_object_object_get_ex(obj, "sandbox", &v))
		return 0;
	config_path_join(path, sizeof(path), prefix, "sandbox");
	if (json_object_is_type(v, json_type_boolean)) {
		s->sandbox = json_object_get_boolean(v);
		return 0;
	}
	if (!json_object_is_type(v, json_type_object))
		return config_fail(p, -EINVAL, path, "must be false or an object with read and write lists");
	config_warn_unknown(p, v, path, known);
	r = sandbox_paths(p, v, path, "read", &s->sandbox_read, &s->n_sandbox_read);
	if (r < 0)
		return r;
	return sandbox_paths(p, v, path, "write", &s->sandbox_write, &s->n_sandbox_write);
}

/*
 * OAuth over plain http:// to a host that is not loopback puts the bearer
 * token (and the login's code and refresh token) on the wire in clear:
 * refused unless the server says allow_insecure_http, and then warned about
 * at every load.
 */
static int server_insecure_http(struct parser *p, struct json_object *obj, const char *prefix,
				struct config_server *s)
{
	char path[CONFIG_PATH_MAX];
	int r;

	r = config_get_bool(p, obj, prefix, "allow_insecure_http", &s->allow_insecure_http);
	if (r < 0)
		return r;
	if (s->protocol == CONFIG_PROTOCOL_STDIO)
		return server_reject(p, obj, prefix, "allow_insecure_http", "only for http servers");
	s->insecure_http = s->oauth_enabled && addr_url_insecure_http(s->url);
	if (!s->insecure_http)
		return 0;
	config_path_join(path, sizeof(path), prefix, "url");
	if (!s->allow_insecure_http)
		return config_fail(p, -EINVAL, path,
				   "plain http to a host that is not loopback would send the OAuth bearer token "
				   "in clear: use https, or set \"allow_insecure_http\": true (\"oauth\": false "
				   "for a server without OAuth)");
	log_warn("%s: %s: plain http with OAuth (allow_insecure_http): the bearer token and the login's "
		 "secrets travel in clear",
		 p->name, path);
	return 0;
}

static int server_fields(struct parser *p, struct json_object *obj, const char *prefix,
			 struct config_server *s)
{
	struct json_object *v;
	char path[CONFIG_PATH_MAX];
	const char *problem;
	bool explicit;
	int r;

	r = config_get_string(p, obj, prefix, "url", false, &s->url);
	if (r < 0)
		return r;
	r = config_get_string(p, obj, prefix, "command", true, &s->command);
	if (r < 0)
		return r;
	r = server_protocol(p, obj, prefix, &s->protocol, &explicit);
	if (r < 0)
		return r;

	if (s->url && s->command)
		return config_fail(p, -EINVAL, prefix,
				   "has both url and command; an http server needs url, a stdio server command");
	if (!explicit) {
		if (!s->url && !s->command)
			return config_fail(p, -EINVAL, prefix,
					   "needs url (http servers) or command (stdio servers)");
		s->protocol = s->url ? CONFIG_PROTOCOL_STREAMABLE_HTTP : CONFIG_PROTOCOL_STDIO;
	}

	if (s->protocol == CONFIG_PROTOCOL_STDIO) {
		if (s->url)
			return server_reject(p, obj, prefix, "url",
					     "not used by stdio servers (they run command)");
		if (!s->command) {
			config_path_join(path, sizeof(path), prefix, "command");
			return config_fail(p, -EINVAL, path, "missing, required for stdio servers");
		}
		r = server_reject(p, obj, prefix, "headers", "only for http servers");
		if (r < 0)
			return r;
		/* args is never NULL for stdio: the worker execs it as is. */
		s->args = config_mem_array(p->c->mem, 1, sizeof(*s->args));
		if (json_object_object_get_ex(obj, "args", &v)) {
			config_path_join(path, sizeof(path), prefix, "args");
			r = config_strv_from_array(p, v, path, &s->args, &s->n_args);
			if (r < 0)
				return r;
		}
		if (json_object_object_get_ex(obj, "env", &v)) {
			config_path_join(path, sizeof(path), prefix, "env");
			r = kv_from_object(p, v, path, KV_ENV, &s->env, &s->n_env);
			if (r < 0)
				return r;
		}
		r = server_sandbox(p, obj, prefix, s);
		if (r < 0)
			return r;
	} else {
		const char *pname = config_protocol_name(s->protocol);

		if (s->command)
			return server_reject(p, obj, prefix, "command",
					     "not used by http servers (they use url)");
		config_path_join(path, sizeof(path), prefix, "url");
		if (!s->url)
			return config_fail(p, -EINVAL, path,
					   "missing, required for %s servers", pname);
		problem = config_url_problem(s->url);
		if (problem)
			return config_fail(p, -EINVAL, path, "%s", problem);
		r = server_reject(p, obj, prefix, "args", "only for stdio servers");
		if (r < 0)
			return r;
		r = server_reject(p, obj, prefix, "env", "only for stdio servers");
		if (r < 0)
			return r;
		r = server_reject(p, obj, prefix, "sandbox",
				  "only for stdio servers (an http server runs no command of its own)");
		if (r < 0)
			return r;
		if (json_object_object_get_ex(obj, "headers", &v)) {
			config_path_join(path, sizeof(path), prefix, "headers");
			r = kv_from_object(p, v, path, KV_HEADERS, &s->headers, &s->n_headers);
			if (r < 0)
				return r;
		}
	}

	r = config_get_bool(p, obj, prefix, "enabled", &s->enabled);
	if (r < 0)
		return r;
	r = config_get_bool(p, obj, prefix, "eager", &s->eager);
	if (r < 0)
		return r;

	s->oauth_enabled = s->protocol != CONFIG_PROTOCOL_STDIO;
	if (json_object_object_get_ex(obj, "oauth", &v)) {
		r = server_oauth(p, v, prefix, s);
		if (r < 0)
			return r;
	}
	return server_insecure_http(p, obj, prefix, s);
}

int config_server_parse(struct parser *p, struct json_object *obj, char *key, size_t index,
			struct config_server *s)
{
	static const char *const known[] = {
		"name", "url", "protocol", "type", "command", "args", "env",
		"headers", "enabled", "eager", "oauth", "sandbox", "allow_insecure_http", NULL,
	};
	char prefix[CONFIG_PATH_MAX], path[CONFIG_PATH_MAX];
	int r;

	s->enabled = true;
	if (key) {
		config_path_join(prefix, sizeof(prefix), "mcpServers", key);
		if (!config_name_valid(key))
			return config_fail(p, -EINVAL, prefix,
					   "invalid server name: " CONFIG_NAME_RULE);
		s->name = key;
	} else {
		config_path_index(prefix, sizeof(prefix), "mcpServers", index);
		if (!json_object_is_type(obj, json_type_object))
			return config_fail(p, -EINVAL, prefix, "must be an object");
		config_path_join(path, sizeof(path), prefix, "name");
		if (!json_object_object_get_ex(obj, "name", NULL))
			return config_fail(p, -EINVAL, path, "missing");
		r = config_get_string(p, obj, prefix, "name", false, &s->name);
		if (r < 0)
			return r;
		if (!config_name_valid(s->name))
			return config_fail(p, -EINVAL, path, CONFIG_NAME_RULE);
		if (config_names_add(&p->names, s->name) == CONFIG_NAME_DUPLICATE)
			return config_fail(p, -EINVAL, path,
					   "duplicate server name \"%s\"", s->name);
		config_path_join(prefix, sizeof(prefix), "mcpServers", s->name);
	}
	if (!json_object_is_type(obj, json_type_object))
		return config_fail(p, -EINVAL, prefix, "must be an object");

	/* "name" inside the object form is not ours: the key is the name. */
	config_warn_unknown(p, obj, prefix, key ? known + 1 : known);
	return server_fields(p, obj, prefix, s);
}

