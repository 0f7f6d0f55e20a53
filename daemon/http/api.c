/*
 * The REST API: GET /api/v1/servers, GET /api/v1/servers/NAME and POST
 * /api/v1/servers/NAME/login and .../logout; POST /api/v1/servers, PATCH and
 * DELETE /api/v1/servers/NAME with their params from manage.c. GET
 * /api/v1/servers is one page of the keeper's status (?offset=N&limit=M;
 * "total", "offset" and "next_offset" beside "data"). Each request is one exchange
 * with the keeper on a control connection (status, auth.login with "wait":
 * false, auth.logout), exactly as mcpctl would make it, and its answer is
 * the keeper's result in {"success": true, "data": ...} or the keeper's
 * error kind as an HTTP status.
 *
 * server.c has checked the Host, the API key, the route, the method and the
 * server name before a request gets here. What it may touch: its control
 * connections (through control.c) and the requests it holds. The keeper's
 * result is checked before any of it reaches a browser: a malformed one is
 * a 500 and a log line, never passed on.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <sodium.h>

#include "frame.h"
#include "http.h"
#include "log.h"
#include "params.h"
#include "proto.h"
#include "util.h"

/* api_data(): the keeper's status does not list the server. */
#define API_NOT_LISTED 1

struct api_call {
	struct held held;		/* first: held_* callbacks cast back */
	LIST_ENTRY(api_call) link;
	struct kcall *kc;
	enum api_what what;
	char server[SERVER_NAME_MAX + 1];
};

/* The results this file reads (common/proto.h): status {"servers": [{"name",
 * ...}]}, auth.login without waiting {"server", "url"}. */
struct status_result {
	struct json_object *servers;
};

static const struct param_spec status_spec[] = {
	PARAM_ARRAY(struct status_result, servers, PARAM_KEY_SERVERS, PARAM_REQUIRED),
};

struct status_server {
	const char *name;
};

static const struct param_spec status_server_spec[] = {
	PARAM_STRING(struct status_server, name, PARAM_KEY_NAME, PARAM_REQUIRED),
};

struct login_result {
	const char *server, *url;
};

static const struct param_spec login_spec[] = {
	PARAM_STRING(struct login_result, server, PARAM_KEY_SERVER, 0),
	PARAM_STRING(struct login_result, url, PARAM_KEY_URL, PARAM_REQUIRED),
};

/* What a logout's data passes on of the keeper's result, as it came. */
static const char *const logout_fields[] = {
	PARAM_KEY_SERVER,	PARAM_KEY_LOGGED_OUT, PARAM_KEY_HAD_TOKEN, PARAM_KEY_REVOKED,
	PARAM_KEY_REVOKE_ERROR, PARAM_KEY_REVOCATION, PARAM_KEY_ORPHANED,
};

static const char *api_method(enum api_what what)
{
	switch (what) {
	case API_LOGIN:
		return METHOD_AUTH_LOGIN;
	case API_LOGOUT:
		return METHOD_AUTH_LOGOUT;
	case API_CREATE:
		return METHOD_SERVERS_ADD;
	case API_UPDATE:
		return METHOD_SERVERS_UPDATE;
	case API_DELETE:
		return METHOD_SERVERS_REMOVE;
	case API_SERVERS:
	case API_SERVER:
		break;
	}
	return METHOD_STATUS;
}

/* The paging fields of a status result, next to "data" (GET /api/v1/servers). */
static const char *const page_fields[] = { PARAM_KEY_TOTAL, PARAM_KEY_OFFSET, PARAM_KEY_NEXT_OFFSET };

static void send_data(struct evhttp_request *req, int status, struct json_object *data, struct json_object *page)
{
	struct json_object *o = json_object_new_object(), *v;

	json_object_object_add(o, "success", json_object_new_boolean(1));
	json_object_object_add(o, "data", data);
	for (size_t i = 0; page && i < ARRAY_SIZE(page_fields); i++)
		if (json_object_object_get_ex(page, page_fields[i], &v) &&
		    (!v || json_object_is_type(v, json_type_int)))
			json_object_object_add(o, page_fields[i], json_object_get(v));
	/* A site of a replication group: its role, the master, its position. */
	if (page && json_object_object_get_ex(page, PARAM_KEY_REPLICATION, &v) && json_object_is_type(v, json_type_object))
		json_object_object_add(o, PARAM_KEY_REPLICATION, json_object_get(v));
	http_send_json(req, status, o, NULL);
}

static void api_free(struct api_call *a)
{
	LIST_REMOVE(a, link);
	if (a->kc)
		kcall_cancel(a->kc);
	held_release(&a->held);
	free(a);
}

static void api_gone(struct held *hd)
{
	struct api_call *a = (struct api_call *)hd;

	log_debug("a client went away before the keeper answered");
	api_free(a);
}

static struct json_object *find_server(struct json_object *servers, const char *name)
{
	for (size_t i = 0; i < json_object_array_length(servers); i++) {
		struct json_object *s = json_object_array_get_idx(servers, i);
		struct status_server p = { NULL };
		const char *bad;

		if (params_parse(s, status_server_spec, ARRAY_SIZE(status_server_spec), &p, &bad) == 0 &&
		    strcmp(p.name, name) == 0)
			return s;
	}
	return NULL;
}

/* The keeper's result as the API's data in *data: 0, API_NOT_LISTED for a
 * server the status does not list, or -EPROTO when the result is not what
 * the protocol says (a keeper bug: the caller answers 500). */
static int api_data(struct api_call *a, struct json_object *result, struct json_object **data)
{
	struct status_result st = { NULL };
	struct login_result login = { .server = a->server };
	struct json_object *v, *d, *s;
	const char *bad;

	*data = NULL;
	if (!json_object_is_type(result, json_type_object))
		return -EPROTO;
	switch (a->what) {
	case API_SERVERS:
	case API_SERVER:
		if (params_parse(result, status_spec, ARRAY_SIZE(status_spec), &st, &bad) < 0)
			return -EPROTO;
		if (a->what == API_SERVERS) {
			*data = json_object_get(st.servers);
			return 0;
		}
		s = find_server(st.servers, a->server);
		if (!s)
			return API_NOT_LISTED;
		*data = json_object_get(s);
		return 0;
	case API_LOGIN:
		if (params_parse(result, login_spec, ARRAY_SIZE(login_spec), &login, &bad) < 0)
			return -EPROTO;
		d = json_object_new_object();
		json_object_object_add(d, "action", json_object_new_string("login"));
		json_object_object_add(d, "server", json_object_new_string(login.server));
		json_object_object_add(d, "url", json_object_new_string(login.url));
		*data = d;
		return 0;
	case API_LOGOUT:
		d = json_object_new_object();
		json_object_object_add(d, "action", json_object_new_string("logout"));
		json_object_object_add(d, "server", json_object_new_string(a->server));
		for (size_t i = 0; i < ARRAY_SIZE(logout_fields); i++)
			if (json_object_object_get_ex(result, logout_fields[i], &v))
				json_object_object_add(d, logout_fields[i], json_object_get(v));
		*data = d;
		return 0;
	case API_CREATE:
	case API_UPDATE:
	case API_DELETE:
		/* {server, reason, previous?, orphaned?}: names and a token key. */
		*data = json_object_get(result);
		return 0;
	}
	return -EPROTO;
}

static void api_done(void *arg, struct rpc_msg *reply, const struct kfail *fail)
{
	struct api_call *a = arg;
	struct evhttp_request *req = held_release(&a->held);
	struct json_object *data;
	int r;

	a->kc = NULL;
	if (!req) {
		api_free(a);
		return;
	}
	if (fail) {
		http_send_error(req, fail->status, fail->kind, "%s", fail->message);
	} else if (reply->type == RPC_ERROR) {
		const char *kind = rpc_error_kind(reply), *message = rpc_error_message(reply);

		http_send_error(req, http_status_for_kind(kind), kind ? kind : KIND_INTERNAL, "%s",
				message ? message : "the keeper refused");
	} else if ((r = api_data(a, reply->result, &data)) < 0) {
		log_error("keeper sent a malformed result for %s", api_method(a->what));
		http_send_error(req, 500, KIND_INTERNAL, "the keeper sent a malformed reply");
	} else if (r == API_NOT_LISTED) {
		http_send_error(req, 404, KIND_NOT_FOUND, "no server named \"%s\"", a->server);
	} else {
		send_data(req, a->what == API_CREATE ? 201 : 200, data, a->what == API_SERVERS ? reply->result : NULL);
	}
	api_free(a);
}

static void api_start(struct http *h, struct evhttp_request *req, enum api_what what, const char *server,
		      struct json_object *params)
{
	struct api_call *a = xcalloc(1, sizeof(*a));

	a->what = what;
	if (server)
		snprintf(a->server, sizeof(a->server), "%s", server);
	/* One server: asked for by name, wherever its page would be. */
	if (what == API_SERVER) {
		params = json_object_new_object();
		json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(server));
	}
	if (what == API_LOGIN || what == API_LOGOUT) {
		params = json_object_new_object();
		json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(server));
		if (what == API_LOGIN)
			json_object_object_add(params, PARAM_KEY_WAIT, json_object_new_boolean(0));
	}
	held_init(&a->held, h, req, api_gone);
	LIST_INSERT_HEAD(&h->api_calls, a, link);
	a->kc = kcall_start(h, api_method(what), params, HTTP_KEEPER_TIMEOUT_S, api_done, a);
}

/* A login or logout body is optional: nothing, or a JSON object. */
static bool body_acceptable(struct evhttp_request *req)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in), start = 0, end;
	const char *p = len ? (const char *)evbuffer_pullup(in, -1) : "";
	struct json_tokener *tok;
	struct json_object *o;
	bool ok;

	while (start < len && strchr(" \t\r\n", p[start]) && p[start])
		start++;
	end = len;
	while (end > start && strchr(" \t\r\n", p[end - 1]) && p[end - 1])
		end--;
	if (start == end)
		return true;
	if (memchr(p + start, '\0', end - start))
		return false;
	tok = json_tokener_new_ex(32);
	if (!tok)
		fatal("out of memory");
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	o = json_tokener_parse_ex(tok, p + start, (int)(end - start));
	ok = o && json_tokener_get_error(tok) == json_tokener_success &&
	     json_tokener_get_parse_end(tok) == end - start && json_object_is_type(o, json_type_object);
	json_object_put(o);
	json_tokener_free(tok);
	return ok;
}

void api_handle(struct http *h, struct evhttp_request *req, enum api_what what, const char *server)
{
	struct json_object *params = NULL;

	if (what == API_CREATE || what == API_UPDATE || what == API_DELETE) {
		if (!h->management) {
			http_send_error(req, 403, KIND_FORBIDDEN, "management is disabled in the configuration");
			return;
		}
		if (manage_params(req, what, server, &params))
			return;
	}
	if (what == API_LOGIN || what == API_LOGOUT) {
		if (!h->management) {
			http_send_error(req, 403, KIND_FORBIDDEN, "management is disabled in the configuration");
			return;
		}
		if (!body_acceptable(req)) {
			http_send_error(req, 400, KIND_INVALID_REQUEST, "the body must be empty or a JSON object");
			return;
		}
	}
	api_start(h, req, what, server, params);
}

/* A whole number from lo to INT32_MAX: 0 and *out, or -EINVAL. */
static int page_number(const char *s, int64_t lo, int64_t *out)
{
	int64_t v = 0;

	if (!*s || strlen(s) > 10)
		return -EINVAL;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -EINVAL;
		v = v * 10 + (*s - '0');
	}
	if (v < lo || v > INT32_MAX)
		return -EINVAL;
	*out = v;
	return 0;
}

void api_page_parse(struct evhttp_request *req, struct api_page *pg)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
	struct evkeyvalq q;
	struct evkeyval *kv;

	*pg = (struct api_page){ -1, -1, "" };
	if (!query || !*query)
		return;
	TAILQ_INIT(&q);
	if (evhttp_parse_query_str(query, &q) < 0) {
		snprintf(pg->error, sizeof(pg->error), "the query string cannot be parsed");
		return;
	}
	TAILQ_FOREACH(kv, &q, next) {
		bool offset = strcmp(kv->key, PARAM_KEY_OFFSET) == 0;

		if (!offset && strcmp(kv->key, PARAM_KEY_LIMIT) != 0)
			continue;	/* apikey among others: not ours to read */
		if ((offset ? pg->offset : pg->limit) >= 0)
			snprintf(pg->error, sizeof(pg->error), "%s: given twice", kv->key);
		else if (page_number(kv->value, offset ? 0 : 1, offset ? &pg->offset : &pg->limit) < 0)
			snprintf(pg->error, sizeof(pg->error), "%s: a whole number from %d to %d", kv->key,
				 offset ? 0 : 1, INT32_MAX);
		if (pg->error[0])
			break;
	}
	TAILQ_FOREACH(kv, &q, next)
		sodium_memzero(kv->value, strlen(kv->value));	/* may hold the API key */
	evhttp_clear_headers(&q);
}

void api_list(struct http *h, struct evhttp_request *req, const struct api_page *pg)
{
	struct json_object *params = json_object_new_object();

	if (pg->offset >= 0)
		json_object_object_add(params, PARAM_KEY_OFFSET, json_object_new_int64(pg->offset));
	if (pg->limit >= 0)
		json_object_object_add(params, PARAM_KEY_LIMIT, json_object_new_int64(pg->limit));
	api_start(h, req, API_SERVERS, NULL, params);
}

void api_free_all(struct http *h)
{
	while (!LIST_EMPTY(&h->api_calls))
		api_free(LIST_FIRST(&h->api_calls));
}
