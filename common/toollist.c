/*
 * What an upstream offers: the MCP client of `mcpctl tools NAME` and GET
 * /api/v1/servers/NAME/tools. On a connection the keeper handed to the
 * server's worker (`connect`, as for `mcpctl connect`) it sends initialize
 * (revision TOOLLIST_PROTOCOL), notifications/initialized and tools/list,
 * follows nextCursor, and reduces each tool to what is shown: name, title,
 * description, the input schema's arguments (name, type, required) and the
 * schema itself. The caller then closes the connection, which ends the
 * session at the worker.
 *
 * No I/O here: ctl/tools.c drives it on a blocking socket, daemon/http/
 * tools.c on its event loop. Everything fed in comes from an untrusted
 * upstream through the worker: shapes are checked, a tool that is not an
 * object with a string name is skipped (and counted), and the listing is
 * bounded (TOOLLIST_MAX_PAGES, _TOOLS, _BYTES; each message is bounded by
 * the caller's frame reader). Strings stay as they came, JSON-escaped in
 * replies; whoever prints them cleans them (text_clean, textContent). Error
 * messages quoted from the upstream are cleaned and shortened here.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include "frame.h"
#include "proto.h"
#include "toollist.h"
#include "util.h"

#define QUOTE_MAX 200
#define TYPE_MAX 64

_Static_assert(TOOLLIST_MAX_PAGES == 16 && TOOLLIST_MAX_TOOLS == 1000 && TOOLLIST_MAX_BYTES == 4 * 1024 * 1024,
	       "the truncation reasons below name these bounds");

/* Control characters become '?', and at most QUOTE_MAX bytes are kept. */
static void quote_clean(const char *s, char *out, size_t len)
{
	size_t n = 0;

	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p && n + 1 < len && n < QUOTE_MAX; p++)
		out[n++] = (*p < 0x20 || *p == 0x7f) ? '?' : (char)*p;
	out[n] = '\0';
}

void toollist_fail(struct toollist *t, const char *kind, const char *fmt, ...)
{
	va_list ap;

	t->kind = kind;
	va_start(ap, fmt);
	vsnprintf(t->error, sizeof(t->error), fmt, ap);
	va_end(ap);
}

struct json_object *toollist_start(struct toollist *t, const char *server, const char *client_name)
{
	struct json_object *params = json_object_new_object(), *info = json_object_new_object();

	memset(t, 0, sizeof(*t));
	snprintf(t->server, sizeof(t->server), "%s", server);
	t->tools = json_object_new_array();
	t->want_id = 1;
	json_object_object_add(info, "name", json_object_new_string(client_name));
	json_object_object_add(info, "version", json_object_new_string(MCPKEEPER_VERSION));
	json_object_object_add(params, "protocolVersion", json_object_new_string(TOOLLIST_PROTOCOL));
	json_object_object_add(params, "capabilities", json_object_new_object());
	json_object_object_add(params, "clientInfo", info);
	return rpc_request("initialize", params, t->want_id);
}

static const char *str_field(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* A property's JSON Schema type: "string", "string|null", "" when unsaid. */
static void schema_type(struct json_object *prop, char *out, size_t len)
{
	struct json_object *v;

	out[0] = '\0';
	if (!json_object_object_get_ex(prop, "type", &v))
		return;
	if (json_object_is_type(v, json_type_string)) {
		snprintf(out, len, "%.*s", TYPE_MAX, json_object_get_string(v));
		return;
	}
	if (!json_object_is_type(v, json_type_array))
		return;
	for (size_t i = 0; i < json_object_array_length(v); i++) {
		struct json_object *e = json_object_array_get_idx(v, i);
		size_t used = strlen(out);

		if (json_object_is_type(e, json_type_string) && used < TYPE_MAX)
			snprintf(out + used, len - used, "%s%.*s", used ? "|" : "", TYPE_MAX,
				 json_object_get_string(e));
	}
}

static bool listed(struct json_object *required, const char *name)
{
	for (size_t i = 0; required && i < json_object_array_length(required); i++) {
		struct json_object *e = json_object_array_get_idx(required, i);

		if (json_object_is_type(e, json_type_string) && strcmp(json_object_get_string(e), name) == 0)
			return true;
	}
	return false;
}

/* [{"name", "type", "required"}] of an input schema's properties. */
static struct json_object *schema_arguments(struct json_object *schema)
{
	struct json_object *args = json_object_new_array(), *props, *required = NULL;
	char type[TYPE_MAX + 2];

	if (!json_object_is_type(schema, json_type_object) || !json_object_object_get_ex(schema, "properties", &props) ||
	    !json_object_is_type(props, json_type_object))
		return args;
	if (json_object_object_get_ex(schema, "required", &required) && !json_object_is_type(required, json_type_array))
		required = NULL;
	json_object_object_foreach(props, name, prop) {
		struct json_object *a = json_object_new_object();

		schema_type(prop, type, sizeof(type));
		json_object_object_add(a, "name", json_object_new_string(name));
		json_object_object_add(a, "type", type[0] ? json_object_new_string(type) : NULL);
		json_object_object_add(a, "required", json_object_new_boolean(listed(required, name)));
		json_object_array_add(args, a);
	}
	return args;
}

static struct json_object *tool_reduce(struct json_object *tool)
{
	struct json_object *o, *schema = NULL;
	const char *name = str_field(tool, "name"), *s;

	if (!name)
		return NULL;
	o = json_object_new_object();
	json_object_object_add(o, "name", json_object_new_string(name));
	s = str_field(tool, "title");
	json_object_object_add(o, "title", s ? json_object_new_string(s) : NULL);
	s = str_field(tool, "description");
	json_object_object_add(o, "description", s ? json_object_new_string(s) : NULL);
	if (json_object_object_get_ex(tool, "inputSchema", &schema) && !json_object_is_type(schema, json_type_object))
		schema = NULL;
	json_object_object_add(o, "arguments", schema_arguments(schema));
	json_object_object_add(o, "inputSchema", schema ? json_object_get(schema) : NULL);
	return o;
}

/* One page of tools/list: kept, and the next page asked for when there is one. */
static int page(struct toollist *t, struct json_object *result, struct json_object *out[2], size_t *n_out)
{
	struct json_object *tools, *params;
	const char *cursor;
	size_t len = 0;

	if (!json_object_is_type(result, json_type_object) || !json_object_object_get_ex(result, "tools", &tools) ||
	    !json_object_is_type(tools, json_type_array)) {
		toollist_fail(t, KIND_UNAVAILABLE, "%s answered tools/list without a list of tools", t->server);
		return TOOLLIST_FAILED;
	}
	json_object_to_json_string_length(result, JSON_C_TO_STRING_PLAIN, &len);
	t->pages++;
	t->bytes += len;
	if (t->bytes > TOOLLIST_MAX_BYTES) {
		/* Not the first page: one message is at most PROTO_MAX_MESSAGE. */
		t->truncated = "the tools take more than 4 MiB";
		return TOOLLIST_DONE;
	}
	for (size_t i = 0; i < json_object_array_length(tools); i++) {
		struct json_object *r;

		if (json_object_array_length(t->tools) >= TOOLLIST_MAX_TOOLS) {
			t->truncated = "more than 1000 tools";
			return TOOLLIST_DONE;
		}
		r = tool_reduce(json_object_array_get_idx(tools, i));
		if (r)
			json_object_array_add(t->tools, r);
		else
			t->skipped++;
	}
	cursor = str_field(result, "nextCursor");
	if (!cursor || !*cursor)
		return TOOLLIST_DONE;
	if (strlen(cursor) > TOOLLIST_MAX_CURSOR) {
		toollist_fail(t, KIND_UNAVAILABLE, "%s answered tools/list with a nextCursor longer than %d bytes",
			      t->server, TOOLLIST_MAX_CURSOR);
		return TOOLLIST_FAILED;
	}
	if (t->pages >= TOOLLIST_MAX_PAGES) {
		t->truncated = "more than 16 pages";
		return TOOLLIST_DONE;
	}
	params = json_object_new_object();
	json_object_object_add(params, "cursor", json_object_new_string(cursor));
	out[(*n_out)++] = rpc_request("tools/list", params, ++t->want_id);
	return TOOLLIST_MORE;
}

/* A request from the upstream (ping, sampling...): nobody here answers it
 * but ping. */
static struct json_object *server_request(const struct rpc_msg *m)
{
	if (strcmp(m->method, "ping") == 0)
		return rpc_result(m->id, json_object_new_object());
	return rpc_error(m->id, RPC_METHOD_NOT_FOUND, NULL, "a tools listing answers no requests");
}

int toollist_feed(struct toollist *t, const struct rpc_msg *m, struct json_object *out[2], size_t *n_out)
{
	char quote[QUOTE_MAX + 1];
	const char *msg;

	*n_out = 0;
	if (m->type == RPC_NOTIFICATION)
		return TOOLLIST_MORE;
	if (m->type == RPC_REQUEST) {
		if (++t->requests > TOOLLIST_MAX_REQUESTS) {
			toollist_fail(t, KIND_UNAVAILABLE, "%s sent more than %d requests instead of its tools", t->server,
				      TOOLLIST_MAX_REQUESTS);
			return TOOLLIST_FAILED;
		}
		out[(*n_out)++] = server_request(m);
		return TOOLLIST_MORE;
	}
	if (!m->id || !json_object_is_type(m->id, json_type_int) || json_object_get_int64(m->id) != t->want_id)
		return TOOLLIST_MORE;	/* an answer to nothing we wait for */
	if (m->type == RPC_ERROR) {
		msg = rpc_error_message(m);
		quote_clean(msg, quote, sizeof(quote));
		/* The worker's own refusal for want of a token names the command. */
		toollist_fail(t, msg && strstr(msg, "mcpctl auth login") ? KIND_LOGIN_REQUIRED : KIND_UNAVAILABLE,
			      "%s answered %s with an error: %s", t->server, t->listing ? "tools/list" : "initialize",
			      quote[0] ? quote : "(no message)");
		return TOOLLIST_FAILED;
	}
	if (!t->listing) {
		if (!json_object_is_type(m->result, json_type_object)) {
			toollist_fail(t, KIND_UNAVAILABLE, "%s answered initialize with something other than an object",
				      t->server);
			return TOOLLIST_FAILED;
		}
		t->listing = true;
		out[(*n_out)++] = rpc_notification("notifications/initialized", NULL);
		out[(*n_out)++] = rpc_request("tools/list", NULL, ++t->want_id);
		return TOOLLIST_MORE;
	}
	return page(t, m->result, out, n_out);
}

struct json_object *toollist_result(struct toollist *t)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "server", json_object_new_string(t->server));
	json_object_object_add(o, "tools", t->tools);
	t->tools = NULL;
	json_object_object_add(o, "truncated", t->truncated ? json_object_new_string(t->truncated) : NULL);
	json_object_object_add(o, "skipped", json_object_new_int64((int64_t)t->skipped));
	return o;
}

void toollist_clear(struct toollist *t)
{
	json_object_put(t->tools);
	t->tools = NULL;
}
