/*
 * mcpctl tools NAME: what the upstream offers. The keeper connects us to
 * NAME's worker (`connect`, as for `mcpctl connect`); on that connection
 * common/toollist.c's MCP exchange runs (initialize, tools/list pages) and
 * the connection closes, which ends the session. The keeper only hands the
 * connection over: it never parses what the upstream says.
 *
 * Bounded: the whole exchange by --timeout (default TOOLLIST_TIMEOUT_S
 * here, since an upstream may take a while to start), each message by
 * PROTO_MAX_MESSAGE, the listing by toollist.h's limits. Every string from
 * the upstream passes text_clean() in the table; --json prints the
 * reduced list as JSON (control characters escaped).
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "ctl.h"
#include "frame.h"
#include "proto.h"
#include "toollist.h"
#include "util.h"

/* The table's description: the first line, at most this many characters. */
#define DESCRIPTION_MAX 100

/* The first line of s, at most DESCRIPTION_MAX characters (UTF-8). */
static void one_line(const char *s, char *out, size_t len)
{
	size_t n = 0, chars = 0;

	while (s[n] && s[n] != '\n' && s[n] != '\r' && n + 4 < len) {
		if (((unsigned char)s[n] & 0xc0) != 0x80 && ++chars > DESCRIPTION_MAX)
			break;
		n++;
	}
	memcpy(out, s, n);
	if (s[n])
		memcpy(out + n, "...", 4);
	else
		out[n] = '\0';
}

/* "text: string, count?: integer": optional arguments carry a '?'. */
static void arguments_summary(struct json_object *args, char *out, size_t len)
{
	out[0] = '\0';
	for (size_t i = 0; args && i < json_object_array_length(args); i++) {
		struct json_object *a = json_object_array_get_idx(args, i);
		const char *type = field_str(a, "type");
		bool required = false;
		size_t used = strlen(out);

		field_bool(a, "required", &required);
		snprintf(out + used, len - used, "%s%s%s: %s", used ? ", " : "", field_str(a, "name") ?: "?",
			 required ? "" : "?", type ? type : "any");
	}
	if (!out[0])
		snprintf(out, len, "-");
}

static int tools_print(struct json_object *result)
{
	struct json_object *tools = field_child(result, "tools", json_type_array);
	struct table t = { .n_cols = 3, .head = { "NAME", "DESCRIPTION", "ARGUMENTS" } };
	const char *truncated = field_str(result, "truncated");
	int64_t skipped = 0;
	char line[DESCRIPTION_MAX * 4 + 8], args[2048];

	for (size_t i = 0; tools && i < json_object_array_length(tools); i++) {
		struct json_object *tool = json_object_array_get_idx(tools, i);
		struct table_row *row = table_add_row(&t);
		const char *d = field_str(tool, "description");

		table_set(row, 0, field_str(tool, "name"));
		one_line(d ? d : "-", line, sizeof(line));
		table_set(row, 1, line);
		arguments_summary(field_child(tool, "arguments", json_type_array), args, sizeof(args));
		table_set(row, 2, args);
	}
	if (t.n_rows)
		table_print(&t);
	else
		printf("%s offers no tools\n", field_str(result, "server") ?: "the server");
	table_clear(&t);
	if (truncated) {
		_cleanup_(freep) char *why = text_clean(truncated);

		fprintf(stderr, "mcpctl: the listing stopped early: %s\n", why);
	}
	if (field_int(result, "skipped", &skipped) && skipped > 0)
		fprintf(stderr, "mcpctl: %lld entries of the upstream's list were not tools (no name) and are not shown\n",
			(long long)skipped);
	return CTL_EXIT_OK;
}

static int send_msg(const char *server, int sock, struct json_object *msg, const struct ctl *c)
{
	int r = frame_write_fd(sock, msg, PROTO_MAX_MESSAGE, ctl_remaining_ms(c));

	json_object_put(msg);
	if (r) {
		fprintf(stderr, "mcpctl: tools %s: cannot write to the worker: %s\n", server, frame_strerror(r));
		return CTL_EXIT_KEEPER_ERROR;
	}
	return 0;
}

/* The MCP exchange on the worker's connection; *result on success. */
static int tools_exchange(struct ctl *c, const char *server, int sock, struct evbuffer *in,
			  struct json_object **result)
{
	_cleanup_(toollist_clear) struct toollist t = { 0 };
	int r, st;

	r = send_msg(server, sock, toollist_start(&t, server, "mcpctl"), c);
	for (st = TOOLLIST_MORE; !r && st == TOOLLIST_MORE;) {
		struct json_object *out[2];
		struct rpc_msg m = { 0 };
		char detail[128] = "";
		size_t n = 0;

		r = frame_read_fd(sock, in, PROTO_MAX_MESSAGE, &m, ctl_remaining_ms(c), detail, sizeof(detail));
		if (r == -ETIMEDOUT)
			toollist_fail(&t, KIND_UNAVAILABLE, "%s did not answer within %g s (see --timeout)", server,
				      c->timeout_sec);
		else if (r == -EPIPE || r == -ECONNRESET)
			toollist_fail(&t, KIND_UNAVAILABLE, "the worker of %s closed the connection", server);
		else if (r)
			toollist_fail(&t, KIND_UNAVAILABLE, "the worker of %s sent a malformed message: %s", server,
				      detail[0] ? detail : frame_strerror(r));
		if (r) {
			rpc_msg_clear(&m);
			st = TOOLLIST_FAILED;
			break;
		}
		st = toollist_feed(&t, &m, out, &n);
		rpc_msg_clear(&m);
		for (size_t i = 0; i < n; i++)
			if (r)
				json_object_put(out[i]);
			else
				r = send_msg(server, sock, out[i], c);
	}
	if (r && st != TOOLLIST_FAILED)
		return r;
	if (st == TOOLLIST_FAILED) {
		_cleanup_(freep) char *why = text_clean(t.error);

		fprintf(stderr, "mcpctl: tools %s: %s (%s)\n", server, why, t.kind);
		return CTL_EXIT_KEEPER_ERROR;
	}
	*result = toollist_result(&t);
	return 0;
}

int cmd_tools(struct ctl *c, int argc, char **argv)
{
	_cleanup_(closep) int sock = -1;
	_cleanup_(evbuffer_freep) struct evbuffer *in = NULL;
	struct json_object *params, *result = NULL;
	struct rpc_msg reply = { 0 };
	bool json = false;
	const char *server;
	int r;

	r = ctl_parse_name_opts("tools", argc, argv, "json", &json, &server);
	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	if (!c->timeout_given) {
		c->timeout_sec = TOOLLIST_TIMEOUT_S;
		c->deadline_ms = ctl_now_ms() + TOOLLIST_TIMEOUT_S * 1000;
	}
	r = ctl_find_socket(c);
	if (r)
		return r;
	params = json_object_new_object();
	json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(server));
	signal(SIGPIPE, SIG_IGN);
	r = ctl_exchange(c, METHOD_CONNECT, params, &reply, &sock, &in);
	if (!r) {
		rpc_msg_clear(&reply);
		r = tools_exchange(c, server, sock, in, &result);
	}
	signal(SIGPIPE, SIG_DFL);
	if (r)
		return r;
	if (json)
		output_json(result);
	else
		r = tools_print(result);
	json_object_put(result);
	return r;
}
