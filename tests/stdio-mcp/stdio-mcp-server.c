/*
 * mcpkeeper-test-stdio-server: a small MCP server on stdio, the upstream that
 * the worker's stdio transport is tested against. Newline-delimited JSON-RPC
 * on stdin and stdout through common/frame.h, one client, no event loop: it
 * reads a message, answers it, reads the next. Not installed.
 *
 * Methods: initialize (negotiates 2025-06-18, 2025-03-26 or 2024-11-05;
 * capabilities {tools}), ping, tools/list, tools/call. Notifications and
 * unmatched responses are accepted silently; other methods get -32601.
 *
 * Tools (the first three as on the HTTP test peer, same arguments, same
 * answers):
 *   echo {text}          returns text
 *   add {a, b}           returns the sum as text
 *   slow {ms}            sleeps ms (0..600000) and returns "slept <ms> ms";
 *                        nothing else is read meanwhile
 *   env {name}           returns the variable's value; isError when unset
 *   fds {}               returns the open descriptors above 2, as
 *                        space-separated numbers ("" when none): a test can
 *                        see that nothing leaked into the command
 *   notify {text}        sends notifications/message {level: "info", logger:
 *                        "stdio-mcp", data: text} first, then returns "notified"
 *   sample {text}        sends sampling/createMessage to the client (id
 *                        "stdio-mcp-N") and answers the call once the client's
 *                        response arrives: the response's content text, or
 *                        isError with the error message
 *
 * Stderr: "stdio-mcp: started (pid N)" at start, "stdio-mcp: crashing after N
 * requests" before a --crash-after exit, "stdio-mcp: end of input" at EOF.
 *
 * Exit status: 0 at end of stdin (a partial last line is dropped), 3 for
 * --crash-after, 1 when stdout fails, a message is too large (the stream
 * cannot be resynced) or stdin fails, 2 for bad usage.
 *
 * --extra-tool JSON (up to 8 times): that JSON value, as given, is one more
 * entry of the first tools/list page (a test offers hostile names and
 * descriptions, or entries that are no tools).
 *
 * --tool-pages N: tools/list is N pages: the first as above with nextCursor
 * "1", page K (cursor "K") holds one tool "page-K" and, while K + 1 < N,
 * nextCursor "K+1". A huge N is a list that never ends.
 *
 * --tools-reply JSON: tools/list answers with that JSON value as its result,
 * whatever the cursor (a nextCursor too long, tools that are no list...).
 *
 * --list-delay MS: each tools/list is answered after MS milliseconds
 * (0..600000), nothing else read meanwhile.
 *
 * --pings N: before each tools/list answer, N ping requests to the client
 * (ids "stdio-mcp-ping-K"); their answers are accepted silently.
 *
 * --crash-after N: the N+1th request (a message with an id and a method) makes
 * the process exit 3 without answering it, so that the client has exactly
 * that request in flight when the server dies. N = 0 dies at the first
 * request.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "frame.h"
#include "proto.h"
#include "util.h"

#define SERVER_NAME "mcpkeeper-test-stdio-server"
#define SLOW_MAX_MS 600000
#define LOGGER "stdio-mcp"

static const char *const versions[] = { "2025-06-18", "2025-03-26", "2024-11-05" };

/* A tools/call of "sample" waiting for the client's answer to our request. */
struct waiting {
	struct waiting *next;
	int64_t srv_id;
	struct json_object *call_id;
};

static struct waiting *waiting;
static int64_t next_srv_id;

static int streq(const char *a, const char *b)
{
	return a && b && strcmp(a, b) == 0;
}

/* Writes msg as one line on stdout and drops it; a failing stdout ends us. */
static void send_msg(struct json_object *msg)
{
	int r;

	if (!msg) {
		fprintf(stderr, LOGGER ": out of memory\n");
		exit(1);
	}
	r = frame_write_fd(STDOUT_FILENO, msg, PROTO_MAX_MESSAGE, -1);
	json_object_put(msg);
	if (r != 0) {
		fprintf(stderr, LOGGER ": cannot write to stdout: %s\n", frame_strerror(r));
		exit(1);
	}
}

static struct json_object *text_result(const char *text, int is_error)
{
	struct json_object *r = json_object_new_object(), *content = json_object_new_array(),
			   *item = json_object_new_object();

	json_object_object_add(item, "type", json_object_new_string("text"));
	json_object_object_add(item, "text", json_object_new_string(text));
	json_object_array_add(content, item);
	json_object_object_add(r, "content", content);
	if (is_error)
		json_object_object_add(r, "isError", json_object_new_boolean(1));
	return r;
}

static struct json_object *tool_def(const char *name, const char *description, const char *schema)
{
	struct json_object *t = json_object_new_object();

	json_object_object_add(t, "name", json_object_new_string(name));
	json_object_object_add(t, "description", json_object_new_string(description));
	json_object_object_add(t, "inputSchema", json_tokener_parse(schema));
	return t;
}

#define EXTRA_TOOLS_MAX 8

static struct json_object *extra_tools[EXTRA_TOOLS_MAX];
static size_t n_extra_tools;
static long long tool_pages = 1;
static struct json_object *tools_reply;
static long long pings, list_delay_ms;

/* Page K > 0 of --tool-pages. */
static struct json_object *tools_page(long long k)
{
	struct json_object *r = json_object_new_object(), *list = json_object_new_array();
	char name[32], next[32];

	snprintf(name, sizeof(name), "page-%lld", k);
	json_object_array_add(list, tool_def(name, "A tool on a later page.", "{\"type\":\"object\"}"));
	json_object_object_add(r, "tools", list);
	if (k + 1 < tool_pages) {
		snprintf(next, sizeof(next), "%lld", k + 1);
		json_object_object_add(r, "nextCursor", json_object_new_string(next));
	}
	return r;
}

static struct json_object *tools_list(struct json_object *params)
{
	static const struct {
		const char *name, *description, *schema;
	} tools[] = {
		{ "echo", "Returns its text.",
		  "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}},\"required\":[\"text\"]}" },
		{ "add", "Adds two numbers.",
		  "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"number\"},\"b\":{\"type\":\"number\"}},"
		  "\"required\":[\"a\",\"b\"]}" },
		{ "slow", "Answers after ms milliseconds.",
		  "{\"type\":\"object\",\"properties\":{\"ms\":{\"type\":\"integer\",\"minimum\":0,"
		  "\"maximum\":600000}},\"required\":[\"ms\"]}" },
		{ "env", "Returns the value of an environment variable.",
		  "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"}},\"required\":[\"name\"]}" },
		{ "fds", "Lists the open file descriptors above 2.", "{\"type\":\"object\",\"properties\":{}}" },
		{ "notify", "Sends a log notification with text, then answers.",
		  "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}},\"required\":[\"text\"]}" },
		{ "sample", "Asks the client to sample a message for text and returns its answer.",
		  "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}},\"required\":[\"text\"]}" },
	};
	struct json_object *r = json_object_new_object(), *list = json_object_new_array();

	struct json_object *cursor;
	long long k;

	if (params && json_object_object_get_ex(params, "cursor", &cursor) &&
	    json_object_is_type(cursor, json_type_string) && (k = atoll(json_object_get_string(cursor))) > 0 &&
	    k < tool_pages) {
		json_object_put(r);
		json_object_put(list);
		return tools_page(k);
	}
	for (size_t i = 0; i < ARRAY_SIZE(tools); i++)
		json_object_array_add(list, tool_def(tools[i].name, tools[i].description, tools[i].schema));
	for (size_t i = 0; i < n_extra_tools; i++)
		json_object_array_add(list, json_object_get(extra_tools[i]));
	json_object_object_add(r, "tools", list);
	if (tool_pages > 1)
		json_object_object_add(r, "nextCursor", json_object_new_string("1"));
	return r;
}

static struct json_object *initialize(struct json_object *id, struct json_object *params)
{
	struct json_object *r = json_object_new_object(), *caps = json_object_new_object(),
			   *info = json_object_new_object(), *v;
	const char *version = versions[0];

	if (params && json_object_object_get_ex(params, "protocolVersion", &v)) {
		for (size_t i = 0; i < ARRAY_SIZE(versions); i++)
			if (streq(json_object_get_string(v), versions[i]))
				version = versions[i];
	}
	json_object_object_add(caps, "tools", json_object_new_object());
	json_object_object_add(info, "name", json_object_new_string(SERVER_NAME));
	json_object_object_add(info, "version", json_object_new_string(MCPKEEPER_VERSION));
	json_object_object_add(r, "protocolVersion", json_object_new_string(version));
	json_object_object_add(r, "capabilities", caps);
	json_object_object_add(r, "serverInfo", info);
	return rpc_result(id, r);
}

static int is_number(struct json_object *v)
{
	return json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double);
}

/* The string argument key of args, or NULL. */
static const char *arg_string(struct json_object *args, const char *key)
{
	struct json_object *v;

	if (!args || !json_object_object_get_ex(args, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static struct json_object *tool_fds(struct json_object *id)
{
	DIR *d = opendir("/proc/self/fd");
	char list[4096] = "";
	size_t len = 0;
	struct dirent *e;

	if (!d)
		return rpc_result(id, text_result("cannot read /proc/self/fd", 1));
	while ((e = readdir(d))) {
		char *end;
		long fd = strtol(e->d_name, &end, 10);

		if (*end || end == e->d_name || fd <= 2 || fd == dirfd(d))
			continue;
		len += (size_t)snprintf(list + len, len < sizeof(list) ? sizeof(list) - len : 0, "%s%ld",
					len ? " " : "", fd);
		if (len >= sizeof(list))
			break;
	}
	closedir(d);
	return rpc_result(id, text_result(list, 0));
}

/* The "sample" tool: our request goes out now, the call is answered later. */
static struct json_object *tool_sample(struct json_object *id, const char *text)
{
	struct json_object *params = json_object_new_object(), *messages = json_object_new_array(),
			   *msg = json_object_new_object(), *content = json_object_new_object(), *req;
	struct waiting *w = calloc(1, sizeof(*w));
	char sid[32];

	if (!w)
		exit(1);
	json_object_object_add(content, "type", json_object_new_string("text"));
	json_object_object_add(content, "text", json_object_new_string(text));
	json_object_object_add(msg, "role", json_object_new_string("user"));
	json_object_object_add(msg, "content", content);
	json_object_array_add(messages, msg);
	json_object_object_add(params, "messages", messages);
	json_object_object_add(params, "maxTokens", json_object_new_int(100));
	w->srv_id = ++next_srv_id;
	w->call_id = json_object_get(id);
	w->next = waiting;
	waiting = w;
	req = rpc_request("sampling/createMessage", params, 0);
	snprintf(sid, sizeof(sid), LOGGER "-%" PRId64, w->srv_id);
	if (req)
		json_object_object_add(req, "id", json_object_new_string(sid));
	send_msg(req);
	return NULL;
}

/* A client response: the answer to a "sample" call when it matches one. */
static void client_response(const struct rpc_msg *m)
{
	const char *id = m->id && json_object_is_type(m->id, json_type_string) ? json_object_get_string(m->id) : NULL;
	struct waiting **pw, *w = NULL;
	struct json_object *content, *v;
	const char *text;
	int64_t n;
	char *end;

	if (!id || strncmp(id, LOGGER "-", sizeof(LOGGER)) != 0)
		return;
	n = strtoll(id + sizeof(LOGGER), &end, 10);
	if (*end)
		return;
	for (pw = &waiting; *pw; pw = &(*pw)->next) {
		if ((*pw)->srv_id == n) {
			w = *pw;
			*pw = w->next;
			break;
		}
	}
	if (!w)
		return;
	if (m->type == RPC_ERROR) {
		text = rpc_error_message(m);
		send_msg(rpc_result(w->call_id, text_result(text ? text : "the client refused", 1)));
	} else if (json_object_object_get_ex(m->result, "content", &content) &&
		   json_object_object_get_ex(content, "text", &v) && json_object_is_type(v, json_type_string)) {
		send_msg(rpc_result(w->call_id, text_result(json_object_get_string(v), 0)));
	} else {
		send_msg(rpc_result(w->call_id, text_result("the client's answer had no text content", 1)));
	}
	json_object_put(w->call_id);
	free(w);
}

/* tools/call: the response, or NULL when it is sent later (sample). */
static struct json_object *tools_call(struct json_object *id, struct json_object *params)
{
	struct json_object *name, *args = NULL, *a, *b, *v;
	const char *tool, *s;
	char text[64];

	if (!params || !json_object_object_get_ex(params, "name", &name) ||
	    !json_object_is_type(name, json_type_string))
		return rpc_error(id, RPC_INVALID_PARAMS, NULL, "params.name must be a string");
	tool = json_object_get_string(name);
	json_object_object_get_ex(params, "arguments", &args);
	if (args && !json_object_is_type(args, json_type_object))
		return rpc_error(id, RPC_INVALID_PARAMS, NULL, "params.arguments must be an object");

	if (strcmp(tool, "echo") == 0) {
		if (!(s = arg_string(args, "text")))
			return rpc_error(id, RPC_INVALID_PARAMS, NULL, "echo needs a string \"text\"");
		return rpc_result(id, text_result(s, 0));
	}
	if (strcmp(tool, "add") == 0) {
		if (!args || !json_object_object_get_ex(args, "a", &a) || !json_object_object_get_ex(args, "b", &b) ||
		    !is_number(a) || !is_number(b))
			return rpc_error(id, RPC_INVALID_PARAMS, NULL, "add needs numbers \"a\" and \"b\"");
		if (json_object_is_type(a, json_type_int) && json_object_is_type(b, json_type_int)) {
			int64_t sum;

			if (__builtin_add_overflow(json_object_get_int64(a), json_object_get_int64(b), &sum))
				return rpc_error(id, RPC_INVALID_PARAMS, NULL, "sum overflows");
			snprintf(text, sizeof(text), "%" PRId64, sum);
		} else {
			snprintf(text, sizeof(text), "%.17g", json_object_get_double(a) + json_object_get_double(b));
		}
		return rpc_result(id, text_result(text, 0));
	}
	if (strcmp(tool, "slow") == 0) {
		struct timespec ts;
		int64_t ms;

		if (!args || !json_object_object_get_ex(args, "ms", &v) || !json_object_is_type(v, json_type_int) ||
		    (ms = json_object_get_int64(v)) < 0 || ms > SLOW_MAX_MS)
			return rpc_error(id, RPC_INVALID_PARAMS, NULL, "slow needs an integer \"ms\" in 0..600000");
		ts.tv_sec = (time_t)(ms / 1000);
		ts.tv_nsec = (long)(ms % 1000) * 1000000L;
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		snprintf(text, sizeof(text), "slept %" PRId64 " ms", ms);
		return rpc_result(id, text_result(text, 0));
	}
	if (strcmp(tool, "env") == 0) {
		const char *value;

		if (!(s = arg_string(args, "name")))
			return rpc_error(id, RPC_INVALID_PARAMS, NULL, "env needs a string \"name\"");
		value = getenv(s);
		if (!value) {
			_cleanup_(freep) char *msg = NULL;

			if (asprintf(&msg, "%s is not set", s) < 0)
				exit(1);
			return rpc_result(id, text_result(msg, 1));
		}
		return rpc_result(id, text_result(value, 0));
	}
	if (strcmp(tool, "fds") == 0)
		return tool_fds(id);
	if (strcmp(tool, "notify") == 0) {
		struct json_object *p;

		if (!(s = arg_string(args, "text")))
			return rpc_error(id, RPC_INVALID_PARAMS, NULL, "notify needs a string \"text\"");
		p = json_object_new_object();
		json_object_object_add(p, "level", json_object_new_string("info"));
		json_object_object_add(p, "logger", json_object_new_string(LOGGER));
		json_object_object_add(p, "data", json_object_new_string(s));
		send_msg(rpc_notification("notifications/message", p));
		return rpc_result(id, text_result("notified", 0));
	}
	if (strcmp(tool, "sample") == 0) {
		if (!(s = arg_string(args, "text")))
			return rpc_error(id, RPC_INVALID_PARAMS, NULL, "sample needs a string \"text\"");
		return tool_sample(id, s);
	}
	return rpc_error(id, RPC_INVALID_PARAMS, NULL, "unknown tool");
}

static struct json_object *handle_request(const struct rpc_msg *m)
{
	if (strcmp(m->method, "initialize") == 0)
		return initialize(m->id, m->params);
	if (strcmp(m->method, "ping") == 0)
		return rpc_result(m->id, NULL);
	if (strcmp(m->method, "tools/list") == 0) {
		struct timespec ts = { .tv_sec = (time_t)(list_delay_ms / 1000),
				       .tv_nsec = (long)(list_delay_ms % 1000) * 1000000L };

		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		for (long long k = 0; k < pings; k++) {
			char id[48];
			struct json_object *ping;

			snprintf(id, sizeof(id), "stdio-mcp-ping-%lld", k);
			ping = rpc_request("ping", NULL, 0);
			json_object_object_add(ping, "id", json_object_new_string(id));
			send_msg(ping);
		}
		if (tools_reply)
			return rpc_result(m->id, json_object_get(tools_reply));
		return rpc_result(m->id, tools_list(m->params));
	}
	if (strcmp(m->method, "tools/call") == 0)
		return tools_call(m->id, m->params);
	return rpc_error(m->id, RPC_METHOD_NOT_FOUND, NULL, "method not found");
}

static void usage(FILE *out)
{
	fprintf(out, "usage: " SERVER_NAME " [--crash-after N] [--extra-tool JSON]... [--tool-pages N]\n"
		     "  an MCP server on stdin/stdout (newline-delimited JSON-RPC) for tests\n"
		     "  --crash-after N   exit 3, unanswered, at the request after the first N\n"
		     "  --extra-tool JSON one more entry of tools/list, as given (up to 8)\n"
		     "  --tool-pages N    tools/list is N pages long\n"
		     "  --tools-reply JSON  tools/list answers with this result\n"
		     "  --pings N         N ping requests before each tools/list answer\n"
		     "  --list-delay MS   answer each tools/list after MS milliseconds\n");
}

int main(int argc, char **argv)
{
	enum { OPT_CRASH = 256, OPT_HELP, OPT_VERSION, OPT_EXTRA_TOOL, OPT_TOOL_PAGES, OPT_TOOLS_REPLY, OPT_PINGS, OPT_LIST_DELAY };
	static const struct option longopts[] = {
		{ "crash-after", required_argument, NULL, OPT_CRASH },
		{ "extra-tool", required_argument, NULL, OPT_EXTRA_TOOL },
		{ "tool-pages", required_argument, NULL, OPT_TOOL_PAGES },
		{ "tools-reply", required_argument, NULL, OPT_TOOLS_REPLY },
		{ "pings", required_argument, NULL, OPT_PINGS },
		{ "list-delay", required_argument, NULL, OPT_LIST_DELAY },
		{ "help", no_argument, NULL, OPT_HELP },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	long long crash_after = -1, requests = 0;
	struct evbuffer *in;
	char *end;
	int c;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_CRASH:
			errno = 0;
			crash_after = strtoll(optarg, &end, 10);
			if (errno || end == optarg || *end || crash_after < 0) {
				fprintf(stderr, LOGGER ": --crash-after: expected a count >= 0, got \"%s\"\n", optarg);
				return 2;
			}
			break;
		case OPT_EXTRA_TOOL:
			if (n_extra_tools == EXTRA_TOOLS_MAX ||
			    !(extra_tools[n_extra_tools++] = json_tokener_parse(optarg))) {
				fprintf(stderr, LOGGER ": --extra-tool: at most %d, each a JSON value\n", EXTRA_TOOLS_MAX);
				return 2;
			}
			break;
		case OPT_TOOL_PAGES:
			errno = 0;
			tool_pages = strtoll(optarg, &end, 10);
			if (errno || end == optarg || *end || tool_pages < 1) {
				fprintf(stderr, LOGGER ": --tool-pages: expected a count >= 1, got \"%s\"\n", optarg);
				return 2;
			}
			break;
		case OPT_TOOLS_REPLY:
			tools_reply = json_tokener_parse(optarg);
			if (!tools_reply) {
				fprintf(stderr, LOGGER ": --tools-reply: expected a JSON value\n");
				return 2;
			}
			break;
		case OPT_LIST_DELAY:
			errno = 0;
			list_delay_ms = strtoll(optarg, &end, 10);
			if (errno || end == optarg || *end || list_delay_ms < 0 || list_delay_ms > SLOW_MAX_MS) {
				fprintf(stderr, LOGGER ": --list-delay: expected milliseconds in 0..600000, got \"%s\"\n",
					optarg);
				return 2;
			}
			break;
		case OPT_PINGS:
			errno = 0;
			pings = strtoll(optarg, &end, 10);
			if (errno || end == optarg || *end || pings < 0 || pings > 100000) {
				fprintf(stderr, LOGGER ": --pings: expected a count in 0..100000, got \"%s\"\n", optarg);
				return 2;
			}
			break;
		case OPT_HELP:
			usage(stdout);
			return 0;
		case OPT_VERSION:
			printf(SERVER_NAME " " MCPKEEPER_VERSION "\n");
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, LOGGER ": unexpected argument \"%s\"\n", argv[optind]);
		return 2;
	}
	/* A reader that went away is a write error, not a signal. */
	signal(SIGPIPE, SIG_IGN);
	fprintf(stderr, LOGGER ": started (pid %d)\n", (int)getpid());
	fflush(stderr);

	in = evbuffer_new();
	if (!in)
		return 1;
	for (;;) {
		struct rpc_msg m = { 0 };
		char detail[128] = "";
		int r = frame_read_fd(STDIN_FILENO, in, PROTO_MAX_MESSAGE, &m, -1, detail, sizeof(detail));

		if (r == -EPIPE)
			break;
		if (r < 0) {
			fprintf(stderr, LOGGER ": cannot read stdin: %s\n", frame_strerror(r));
			return 1;
		}
		if (r > 0) {
			/* An invalid message that has an id gets its error with that id. */
			if (r == FRAME_E_INVALID_RPC && m.id)
				send_msg(rpc_error(m.id, RPC_INVALID_REQUEST, NULL, detail));
			else
				send_msg(rpc_error_for_frame(r, detail));
			rpc_msg_clear(&m);
			if (r == FRAME_E_TOO_LARGE) {
				fprintf(stderr, LOGGER ": a message over the size limit: giving up\n");
				return 1;
			}
			continue;
		}
		switch (m.type) {
		case RPC_REQUEST: {
			struct json_object *reply;

			if (crash_after >= 0 && requests >= crash_after) {
				fprintf(stderr, LOGGER ": crashing after %lld requests\n", requests);
				fflush(stderr);
				exit(3);
			}
			requests++;
			reply = handle_request(&m);
			if (reply)
				send_msg(reply);
			break;
		}
		case RPC_RESULT:
		case RPC_ERROR:
			client_response(&m);
			break;
		case RPC_NOTIFICATION:
			break;
		}
		rpc_msg_clear(&m);
	}
	fprintf(stderr, LOGGER ": end of input\n");
	evbuffer_free(in);
	while (waiting) {
		struct waiting *w = waiting;

		waiting = w->next;
		json_object_put(w->call_id);
		free(w);
	}
	return 0;
}
