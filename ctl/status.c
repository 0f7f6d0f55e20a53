/*
 * mcpctl status and mcpctl servers: the keeper's status and server list as
 * tables, or as the keeper's JSON. The server table is shared with auth
 * status, which shows its OAuth columns only.
 */
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "ctl.h"
#include "frame.h"
#include "proto.h"

static void expires_cell(struct json_object *srv, int64_t now, char *buf, size_t len)
{
	char d[32];
	int64_t at;

	if (!field_int(srv, PARAM_KEY_TOKEN_EXPIRES_AT_UNIX, &at) || at <= 0) {
		snprintf(buf, len, "-");
		return;
	}
	duration_format(at > now ? at - now : now - at, d, sizeof(d));
	snprintf(buf, len, at > now ? "in %s" : "expired %s ago", d);
}

/* "in 32m", "retrying in 4s (retry 2)", "failed", "-". */
static void refresh_cell(struct json_object *srv, int64_t now, char *buf, size_t len)
{
	struct json_object *rf = field_child(srv, PARAM_KEY_REFRESH, json_type_object);
	const char *state = rf ? field_str(rf, PARAM_KEY_STATE) : NULL;
	char retry[32] = "", d[32];
	int64_t n;

	if (!state || strcmp(state, "idle") == 0) {
		snprintf(buf, len, "-");
		return;
	}
	if (field_int(rf, PARAM_KEY_RETRY_COUNT, &n) && n > 0)
		snprintf(retry, sizeof(retry), " (retry %lld)", (long long)n);
	if (strcmp(state, "refreshing") == 0 || strcmp(state, "failed") == 0) {
		snprintf(buf, len, "%s%s", state, retry);
		return;
	}
	if (!field_int(rf, PARAM_KEY_NEXT_AT_UNIX, &n) || n <= 0) {
		snprintf(buf, len, "%s%s", state, retry);
		return;
	}
	if (n <= now) {
		snprintf(buf, len, "%s%s", strcmp(state, "retrying") == 0 ? "retrying now" : "due now", retry);
		return;
	}
	duration_format(n - now, d, sizeof(d));
	snprintf(buf, len, "%sin %s%s", strcmp(state, "retrying") == 0 ? "retrying " : "", d, retry);
}

/* authenticated / expired / error / none; "logging in" while a login runs;
 * "needs login (scope ...)" when the upstream wants another grant (a larger
 * scope, or another authorization server); "-" for a server without OAuth;
 * "disabled" for a disabled server, with what it still stores. */
static const char *auth_cell(struct json_object *srv, char *buf, size_t len)
{
	const char *st = field_str(srv, PARAM_KEY_OAUTH_STATUS);
	struct json_object *lr = field_child(srv, PARAM_KEY_LOGIN_REQUIRED, json_type_object);
	bool b;

	if (field_bool(srv, PARAM_KEY_ENABLED, &b) && !b) {
		if (!st || strcmp(st, "none") == 0)
			return "disabled";
		snprintf(buf, len, "disabled (token %s)", st);
		return buf;
	}
	if (!st)
		return "-";
	if (field_bool(srv, PARAM_KEY_LOGIN_IN_PROGRESS, &b) && b)
		return "logging in";
	if (lr && field_str(lr, PARAM_KEY_SCOPE)) {
		snprintf(buf, len, "needs login (scope %s)", field_str(lr, PARAM_KEY_SCOPE));
		return buf;
	}
	if (lr && field_str(lr, PARAM_KEY_ISSUER)) {
		snprintf(buf, len, "needs login (at %s)", field_str(lr, PARAM_KEY_ISSUER));
		return buf;
	}
	if (lr)
		return "needs login";
	return st;
}

static const char *last_error_of(struct json_object *srv)
{
	struct json_object *rf = field_child(srv, PARAM_KEY_REFRESH, json_type_object);
	const char *e = rf ? field_str(rf, PARAM_KEY_LAST_ERROR) : NULL;

	return e && *e ? e : NULL;
}

/* One server (only) when name is given: CTL_EXIT_NOT_FOUND when absent. */
int status_print_servers(struct json_object *result, const char *method, bool full, const char *only)
{
	struct table t = { 0 };
	struct json_object *servers, *orphans;
	int64_t now = (int64_t)time(NULL);
	size_t col = 0, n_rows = 0;
	int r;

	r = output_servers(result, method, &servers);
	if (r)
		return r;
	t.head[col++] = "NAME";
	if (full) {
		t.head[col++] = "TRANSPORT";
		t.head[col++] = "WORKER";
	}
	t.head[col++] = "AUTH";
	t.head[col++] = "EXPIRES";
	t.head[col++] = "NEXT REFRESH";
	t.head[col++] = "LAST ERROR";
	t.n_cols = col;

	for (size_t i = 0; i < json_object_array_length(servers); i++) {
		struct json_object *srv = json_object_array_get_idx(servers, i), *w;
		struct table_row *row;
		char cell[320];

		if (only && strcmp(field_str(srv, PARAM_KEY_NAME), only) != 0)
			continue;
		row = table_add_row(&t);
		col = 0;
		table_set(row, col++, field_str(srv, PARAM_KEY_NAME));
		if (full) {
			bool insecure = false;

			const char *sandbox;

			w = field_child(srv, PARAM_KEY_WORKER, json_type_object);
			sandbox = w ? field_str(w, PARAM_KEY_SANDBOX) : NULL;
			table_set(row, col++, field_str(srv, PARAM_KEY_PROTOCOL));
			/* A stdio worker: which sandbox it runs in. */
			if (sandbox) {
				snprintf(cell, sizeof(cell), "%.32s (sandbox %.16s)",
					 field_str(w, PARAM_KEY_STATE) ? field_str(w, PARAM_KEY_STATE) : "?", sandbox);
				table_set(row, col++, cell);
			} else {
				table_set(row, col++, w ? field_str(w, PARAM_KEY_STATE) : NULL);
			}
			if (sandbox && strcmp(sandbox, "off") == 0)
				row->note = xstrdup("warning: \"sandbox\": false: the command runs with the keeper's user's "
						    "access, the master key included");
			if (w && field_bool(w, PARAM_KEY_INSECURE_HTTP, &insecure) && insecure)
				row->note = xstrdup("warning: OAuth over plain http (allow_insecure_http): the bearer "
						    "token travels in clear");
		}
		table_set(row, col++, auth_cell(srv, cell, sizeof(cell)));
		expires_cell(srv, now, cell, sizeof(cell));
		table_set(row, col++, cell);
		refresh_cell(srv, now, cell, sizeof(cell));
		table_set(row, col++, cell);
		table_set(row, col++, last_error_of(srv));
		n_rows++;
	}
	orphans = field_child(result, PARAM_KEY_ORPHANED_TOKENS, json_type_array);
	for (size_t i = 0; orphans && i < json_object_array_length(orphans); i++) {
		struct json_object *o = json_object_array_get_idx(orphans, i);
		struct table_row *row;

		if (!field_str(o, PARAM_KEY_NAME) || (only && strcmp(field_str(o, PARAM_KEY_NAME), only) != 0))
			continue;
		row = table_add_row(&t);
		col = 0;
		table_set(row, col++, field_str(o, PARAM_KEY_NAME));
		if (full) {
			table_set(row, col++, NULL);
			table_set(row, col++, NULL);
		}
		table_set(row, col++, "orphaned");
		for (; col < t.n_cols; col++)
			table_set(row, col, NULL);
		if (asprintf(&row->note, "a stored token whose server left the config; "
					 "`mcpctl auth logout --server %s` deletes it",
			     field_str(o, PARAM_KEY_NAME)) < 0) {
			row->note = NULL;
			ctl_out_of_memory();
		}
		n_rows++;
	}
	if (only && !n_rows) {
		table_clear(&t);
		fprintf(stderr, "mcpctl: no server named \"%s\"\n", only);
		return CTL_EXIT_NOT_FOUND;
	}
	if (n_rows)
		table_print(&t);
	table_clear(&t);
	return 0;
}

static int status_print(struct json_object *result, const char *only)
{
	struct json_object *servers;
	_cleanup_(freep) char *version = NULL, *mode = NULL;
	const char *s;
	int64_t pid;
	size_t n;
	int r;

	r = output_servers(result, METHOD_STATUS, &servers);
	if (r)
		return r;
	n = json_object_array_length(servers);
	s = field_str(result, PARAM_KEY_VERSION);
	version = text_clean(s ? s : "?");
	s = field_str(result, PARAM_KEY_MODE);
	mode = text_clean(s ? s : "?");
	if (!only) {
		struct json_object *http = field_child(result, PARAM_KEY_HTTP, json_type_object);

		if (field_int(result, PARAM_KEY_PID, &pid))
			printf("mcpkeeperd %s, pid %lld, %s mode, %zu server%s\n", version, (long long)pid, mode, n,
			       n == 1 ? "" : "s");
		else
			printf("mcpkeeperd %s, %s mode, %zu server%s\n", version, mode, n, n == 1 ? "" : "s");
		/* The key is in the URL's fragment, which browsers never send. */
		if (field_str(result, PARAM_KEY_WEB_UI)) {
			_cleanup_(freep) char *ui = text_clean(field_str(result, PARAM_KEY_WEB_UI));

			printf("web UI: %s\n", ui);
		} else if (http && field_str(http, PARAM_KEY_STATE)) {
			_cleanup_(freep) char *st = text_clean(field_str(http, PARAM_KEY_STATE));

			printf("web UI: not available (http child %s)\n", st);
		}
	}
	return status_print_servers(result, METHOD_STATUS, true, only);
}

static int servers_print(struct json_object *result)
{
	struct table t = {
		.n_cols = 5,
		.head = { "NAME", "PROTOCOL", "ENABLED", "OAUTH", "URL" },
	};
	struct json_object *servers;
	int r;

	r = output_servers(result, METHOD_SERVERS_LIST, &servers);
	if (r)
		return r;
	for (size_t i = 0; i < json_object_array_length(servers); i++) {
		struct json_object *srv = json_object_array_get_idx(servers, i);
		struct table_row *row = table_add_row(&t);
		bool b;

		table_set(row, 0, field_str(srv, PARAM_KEY_NAME));
		table_set(row, 1, field_str(srv, PARAM_KEY_PROTOCOL));
		table_set(row, 2, field_bool(srv, PARAM_KEY_ENABLED, &b) ? (b ? "yes" : "no") : NULL);
		table_set(row, 3, field_bool(srv, PARAM_KEY_OAUTH, &b) ? (b ? "yes" : "no") : NULL);
		table_set(row, 4, field_str(srv, PARAM_KEY_URL));
	}
	table_print(&t);
	table_clear(&t);
	return 0;
}

/* More pages than this is a keeper that does not move on. */
#define STATUS_MAX_PAGES 100000

/*
 * The keeper's status with every page of its servers (one server with
 * only): the first page's result, the others' servers appended, and
 * next_offset null. 0 with *out (the caller puts it), or an exit code after
 * saying why.
 */
static int status_fetch(struct ctl *c, const char *only, struct json_object **out)
{
	struct json_object *all = NULL, *servers = NULL;
	int64_t offset = 0, next;
	int r;

	*out = NULL;
	r = ctl_find_socket(c);
	if (r)
		return r;
	signal(SIGPIPE, SIG_IGN);
	for (size_t page = 0;; page++) {
		struct rpc_msg reply = { 0 };
		struct json_object *params = json_object_new_object(), *got;
		bool more;

		if (only)
			json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(only));
		else
			json_object_object_add(params, PARAM_KEY_OFFSET, json_object_new_int64(offset));
		r = ctl_exchange(c, METHOD_STATUS, params, &reply, NULL, NULL);
		if (!r && !json_object_is_type(reply.result, json_type_object))
			r = output_malformed(METHOD_STATUS, "the result is not an object");
		if (!r)
			r = output_servers(reply.result, METHOD_STATUS, &got);
		if (r) {
			rpc_msg_clear(&reply);
			break;
		}
		if (!all) {
			all = json_object_get(reply.result);
			servers = got;
		} else {
			for (size_t i = 0; i < json_object_array_length(got); i++)
				json_object_array_add(servers, json_object_get(json_object_array_get_idx(got, i)));
		}
		/* null or absent (a keeper that does not page): the last page */
		more = !only && field_int(reply.result, PARAM_KEY_NEXT_OFFSET, &next);
		rpc_msg_clear(&reply);
		if (!more)
			break;
		if (next <= offset || page >= STATUS_MAX_PAGES) {
			r = output_malformed(METHOD_STATUS, "its next_offset does not move on");
			break;
		}
		offset = next;
	}
	signal(SIGPIPE, SIG_DFL);
	if (r) {
		json_object_put(all);
		return r;
	}
	/* Every page is in: as the last page says it. */
	json_object_object_add(all, PARAM_KEY_NEXT_OFFSET, NULL);
	*out = all;
	return 0;
}

int cmd_status(struct ctl *c, int argc, char **argv)
{
	struct json_object *result = NULL, *servers;
	const char *only = NULL;
	bool json = false;
	int r = ctl_parse_query_opts(argv[0], argc, argv, &json, &only);

	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	r = status_fetch(c, only, &result);
	if (r)
		return r;
	if (json && only) {
		/* The JSON of one server, the keeper's shape kept. */
		r = output_servers(result, METHOD_STATUS, &servers);
		if (!r && json_object_array_length(servers) == 0) {
			fprintf(stderr, "mcpctl: no server named \"%s\" (an orphaned token only)\n", only);
			r = CTL_EXIT_NOT_FOUND;
		} else if (!r) {
			output_json(json_object_array_get_idx(servers, 0));
		}
	} else if (json) {
		output_json(result);
	} else {
		r = status_print(result, only);
	}
	json_object_put(result);
	return r;
}

static int servers_print_only(struct json_object *result, const char *only)
{
	return servers_print(result);
}

int cmd_servers(struct ctl *c, int argc, char **argv)
{
	bool json = false;
	int r;

	if (argc > 1 && argv[1][0] != '-')
		return servers_manage(c, argc - 1, argv + 1);
	r = ctl_parse_query_opts(argv[0], argc, argv, &json, NULL);

	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	return ctl_query(c, METHOD_SERVERS_LIST, NULL, json, NULL, servers_print_only);
}
