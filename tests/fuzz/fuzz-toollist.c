/*
 * Fuzz target for common/toollist.c, which reduces what an untrusted
 * upstream answers to initialize and tools/list (mcpctl tools, GET
 * /api/v1/servers/NAME/tools).
 *
 * Each line of the input that parses as a JSON-RPC message is fed to
 * toollist_feed(), once after a well-formed answer to initialize (so that
 * mutations reach the tools/list pages) and once as it is. Whatever it
 * does, the listing must keep its bounds: at most TOOLLIST_MAX_PAGES pages
 * and TOOLLIST_MAX_TOOLS tools, every kept tool an object with a string
 * name and an array of arguments, at most two messages to send per input
 * message, and a failure always says why. A broken promise abort()s.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "frame.h"
#include "fuzz.h"
#include "toollist.h"

static const char init_answer[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocolVersion\":\"2025-11-25\"}}";

static _Noreturn void die(const char *what)
{
	fprintf(stderr, "fuzz-toollist: %s\n", what);
	abort();
}

static void check_result(struct toollist *t)
{
	struct json_object *r = toollist_result(t), *tools, *v;

	if (!json_object_object_get_ex(r, "tools", &tools) || !json_object_is_type(tools, json_type_array))
		die("the result has no tools array");
	if (json_object_array_length(tools) > TOOLLIST_MAX_TOOLS)
		die("more tools kept than TOOLLIST_MAX_TOOLS");
	for (size_t i = 0; i < json_object_array_length(tools); i++) {
		struct json_object *tool = json_object_array_get_idx(tools, i);

		if (!json_object_object_get_ex(tool, "name", &v) || !json_object_is_type(v, json_type_string))
			die("a kept tool has no string name");
		if (!json_object_object_get_ex(tool, "arguments", &v) || !json_object_is_type(v, json_type_array))
			die("a kept tool has no arguments array");
	}
	json_object_put(r);
}

/* Returns the status after the message; TOOLLIST_MORE when it did not parse. */
static int feed_line(struct toollist *t, const char *line, size_t len)
{
	struct json_object *out[2] = { NULL, NULL };
	struct rpc_msg m;
	char detail[128];
	size_t n = 3;
	int st;

	if (frame_parse_line(line, len, &m, detail, sizeof(detail)) != 0) {
		rpc_msg_clear(&m);
		return TOOLLIST_MORE;
	}
	st = toollist_feed(t, &m, out, &n);
	rpc_msg_clear(&m);
	if (n > 2)
		die("more than two messages to send");
	for (size_t i = 0; i < n; i++) {
		if (!out[i])
			die("a message to send is NULL");
		json_object_put(out[i]);
	}
	if (t->pages > TOOLLIST_MAX_PAGES)
		die("more pages followed than TOOLLIST_MAX_PAGES");
	if (st == TOOLLIST_FAILED && (!t->kind || !t->error[0]))
		die("a failure without a kind or a message");
	return st;
}

static void run(const char *data, size_t size, bool initialized)
{
	struct toollist t;
	struct json_object *req = toollist_start(&t, "fuzz", "fuzz-toollist");
	int st = TOOLLIST_MORE;

	json_object_put(req);
	if (initialized && feed_line(&t, init_answer, sizeof(init_answer) - 1) != TOOLLIST_MORE)
		die("a well-formed initialize answer did not lead to tools/list");
	for (size_t start = 0; start < size && st == TOOLLIST_MORE;) {
		const char *nl = memchr(data + start, '\n', size - start);
		size_t end = nl ? (size_t)(nl - data) : size;

		if (end > start)
			st = feed_line(&t, data + start, end - start);
		start = end + 1;
	}
	if (st == TOOLLIST_DONE)
		check_result(&t);
	toollist_clear(&t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	run((const char *)data, size, true);
	run((const char *)data, size, false);
	return 0;
}
