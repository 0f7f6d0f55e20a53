/*
 * The REST API's changes of the server list: POST /api/v1/servers (the
 * quickstart's body: {"name", "url", "protocol", "oauth", ...}), PATCH
 * /api/v1/servers/NAME (the fields to change; null removes one, "name"
 * renames) and DELETE /api/v1/servers/NAME. This file only turns the body
 * into the params of servers.add, servers.update and servers.remove; api.c
 * makes the call and answers (201 for a new server, else 200, or the
 * keeper's error kind as a status).
 *
 * What a change may contain is the keeper's to decide, not this child's:
 * the keeper refuses command, args, env, sandbox and allow_insecure_http on
 * every connection of the http child (an API key is not a shell), so a
 * child that were made to skip a check here would gain nothing.
 *
 * Touches the request's body only.
 */
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <json-c/json.h>

#include "http.h"
#include "log.h"
#include "proto.h"

/* Nesting of a body: a server entry is an object of objects at most. */
#define MANAGE_JSON_DEPTH 8

enum api_what manage_what(enum api_what what, int cmd)
{
	if (what == API_SERVERS && cmd == EVHTTP_REQ_POST)
		return API_CREATE;
	if (what == API_SERVER && cmd == EVHTTP_REQ_PATCH)
		return API_UPDATE;
	if (what == API_SERVER && cmd == EVHTTP_REQ_DELETE)
		return API_DELETE;
	return what;
}

/* The body as a JSON object, or NULL. */
static struct json_object *body_object(struct evhttp_request *req)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in), start = 0, end;
	const char *p = len ? (const char *)evbuffer_pullup(in, -1) : "";
	struct json_tokener *tok;
	struct json_object *o;

	/* The body is not NUL-terminated: every scan is bounded by len. */
	if (len > HTTP_MAX_BODY || (len && memchr(p, '\0', len)))
		return NULL;
	while (start < len && strchr(" \t\r\n", p[start]))
		start++;
	end = len;
	while (end > start && strchr(" \t\r\n", p[end - 1]))
		end--;
	if (start == end)
		return NULL;
	tok = json_tokener_new_ex(MANAGE_JSON_DEPTH);
	if (!tok)
		fatal("out of memory");
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	o = json_tokener_parse_ex(tok, p + start, (int)(end - start));
	if (!o || json_tokener_get_error(tok) != json_tokener_success ||
	    json_tokener_get_parse_end(tok) != end - start || !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	return o;
}

int manage_params(struct evhttp_request *req, enum api_what what, const char *server, struct json_object **params)
{
	struct json_object *body, *name;

	*params = json_object_new_object();
	if (what == API_DELETE) {
		json_object_object_add(*params, PARAM_KEY_SERVER, json_object_new_string(server));
		return 0;
	}
	body = body_object(req);
	if (!body) {
		json_object_put(*params);
		*params = NULL;
		http_send_error(req, 400, KIND_INVALID_REQUEST, "the body must be a JSON object");
		return 1;
	}
	if (what == API_UPDATE) {
		json_object_object_add(*params, PARAM_KEY_SERVER, json_object_new_string(server));
		json_object_object_add(*params, PARAM_KEY_SET, body);
		return 0;
	}
	if (!json_object_object_get_ex(body, PARAM_KEY_NAME, &name) || !json_object_is_type(name, json_type_string) ||
	    !*json_object_get_string(name)) {
		json_object_put(body);
		json_object_put(*params);
		*params = NULL;
		http_send_error(req, 400, KIND_INVALID_PARAMS, "\"name\" (a string) is required");
		return 1;
	}
	json_object_object_add(*params, PARAM_KEY_SERVER, json_object_get(name));
	json_object_object_del(body, PARAM_KEY_NAME);
	json_object_object_add(*params, PARAM_KEY_CONFIG, body);
	return 0;
}
