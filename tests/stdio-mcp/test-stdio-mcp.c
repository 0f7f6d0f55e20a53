/*
 * stdio-mcp: starts the stdio test server with pipes and walks it through
 * what the worker's stdio tests lean on: its start line on stderr,
 * initialize, the tools, server-initiated messages, errors, exit 0 at end of
 * input, and --crash-after. Every read has a deadline.
 *
 * Usage: test-stdio-mcp PATH-TO-mcpkeeper-test-stdio-server
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "frame.h"
#include "proto.h"
#include "util.h"
#include "../test.h"

#define WAIT_MS 10000

struct server {
	pid_t pid;
	int in;			/* its stdin */
	int out;		/* its stdout */
	int err;		/* its stderr */
	struct evbuffer *buf;	/* what was read from out */
	char log[8192];		/* what was read from err */
	size_t loglen;
};

static const char *server_path;
static pid_t live_pid = -1;

static void kill_at_exit(void)
{
	if (live_pid > 0) {
		kill(live_pid, SIGKILL);
		waitpid(live_pid, NULL, 0);
	}
}

static int streq(const char *a, const char *b)
{
	return a && b && strcmp(a, b) == 0;
}

/* Starts the server with args (NULL-terminated, after argv[0]) and env;
 * with extra_fd >= 0 that descriptor becomes its fd 3. Nothing else leaks. */
static void server_start(struct server *s, const char *const *args, char *const *env, int extra_fd)
{
	const char *argv[8] = { server_path };
	posix_spawn_file_actions_t fa;
	int pin[2], pout[2], perr[2];
	size_t n = 1;

	memset(s, 0, sizeof(*s));
	for (size_t i = 0; args && args[i]; i++) {
		CHECK(n < ARRAY_SIZE(argv) - 1);
		argv[n++] = args[i];
	}
	CHECK(pipe2(pin, O_CLOEXEC) == 0);
	CHECK(pipe2(pout, O_CLOEXEC) == 0);
	CHECK(pipe2(perr, O_CLOEXEC) == 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pin[0], STDIN_FILENO);
	posix_spawn_file_actions_adddup2(&fa, pout[1], STDOUT_FILENO);
	posix_spawn_file_actions_adddup2(&fa, perr[1], STDERR_FILENO);
	if (extra_fd >= 0)
		posix_spawn_file_actions_adddup2(&fa, extra_fd, 3);
	posix_spawn_file_actions_addclosefrom_np(&fa, extra_fd >= 0 ? 4 : 3);
	CHECK_EQ(posix_spawn(&s->pid, server_path, &fa, NULL, (char **)argv, env), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(pin[0]);
	close(pout[1]);
	close(perr[1]);
	s->in = pin[1];
	s->out = pout[0];
	s->err = perr[0];
	s->buf = evbuffer_new();
	CHECK(s->buf != NULL);
	live_pid = s->pid;
}

/* Reads stderr until it holds text (bounded), or to its end when text is NULL. */
static void server_log_wait(struct server *s, const char *text)
{
	while (!text || !strstr(s->log, text)) {
		struct pollfd pfd = { .fd = s->err, .events = POLLIN };
		ssize_t n;

		if (poll(&pfd, 1, WAIT_MS) != 1) {
			fprintf(stderr, "stderr so far: %s\n", s->log);
			CHECK(!"stderr line in time");
		}
		n = read(s->err, s->log + s->loglen, sizeof(s->log) - 1 - s->loglen);
		CHECK(n >= 0);
		if (n == 0) {
			if (text)
				fprintf(stderr, "stderr ended without \"%s\": %s\n", text, s->log);
			CHECK(!text);
			return;
		}
		s->loglen += (size_t)n;
		s->log[s->loglen] = '\0';
		CHECK(s->loglen < sizeof(s->log) - 1);
	}
}

static void send_line(struct server *s, const char *line)
{
	size_t len = strlen(line);

	CHECK(write(s->in, line, len) == (ssize_t)len);
}

static void send_json(struct server *s, const char *json)
{
	struct json_object *o = json_tokener_parse(json);

	CHECK(o != NULL);
	CHECK_EQ(frame_write_fd(s->in, o, PROTO_MAX_MESSAGE, WAIT_MS), 0);
	json_object_put(o);
}

/* The next message from the server (a new reference). */
static struct json_object *recv_msg(struct server *s)
{
	struct rpc_msg m = { 0 };
	char detail[128] = "";
	int r = frame_read_fd(s->out, s->buf, PROTO_MAX_MESSAGE, &m, WAIT_MS, detail, sizeof(detail));
	struct json_object *o;

	if (r != 0)
		fprintf(stderr, "reading the server: %s (%s)\n", frame_strerror(r), detail);
	CHECK_EQ(r, 0);
	o = json_object_get(m.root);
	rpc_msg_clear(&m);
	return o;
}

/* Sends a request and returns the response, which must carry its id. */
static struct json_object *call(struct server *s, int id, const char *json)
{
	struct json_object *o, *v;

	send_json(s, json);
	o = recv_msg(s);
	CHECK(json_object_object_get_ex(o, "id", &v));
	CHECK_EQ(json_object_get_int(v), id);
	return o;
}

static const char *jstr(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static struct json_object *jget(struct json_object *o, const char *key)
{
	struct json_object *v = NULL;

	CHECK(o && json_object_object_get_ex(o, key, &v));
	return v;
}

/* The text of a tools/call result; *is_error tells whether it is flagged. */
static const char *tool_text(struct json_object *msg, int *is_error)
{
	struct json_object *result = jget(msg, "result"), *content = jget(result, "content"), *v;

	*is_error = json_object_object_get_ex(result, "isError", &v) && json_object_get_boolean(v);
	CHECK(json_object_array_length(content) == 1);
	CHECK(streq(jstr(json_object_array_get_idx(content, 0), "type"), "text"));
	return jstr(json_object_array_get_idx(content, 0), "text");
}

/* tools/call NAME with ARGS (JSON): the result text, which must be (not) an error. */
static void tool_is(struct server *s, int id, const char *name, const char *args, const char *want, int want_error)
{
	char req[1024];
	struct json_object *o;
	const char *text;
	int is_error;

	snprintf(req, sizeof(req),
		 "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"tools/call\",\"params\":{\"name\":\"%s\",\"arguments\":%s}}",
		 id, name, args);
	o = call(s, id, req);
	text = tool_text(o, &is_error);
	if (!streq(text, want) || is_error != want_error)
		fprintf(stderr, "%s: got \"%s\"%s, expected \"%s\"%s\n", name, text, is_error ? " (error)" : "", want,
			want_error ? " (error)" : "");
	CHECK(streq(text, want));
	CHECK_EQ(is_error, want_error);
	json_object_put(o);
}

static int error_code(struct json_object *msg)
{
	return json_object_get_int(jget(jget(msg, "error"), "code"));
}

/* Closes stdin; the server must end its output and exit with status. */
static void server_finish(struct server *s, int status)
{
	struct rpc_msg m = { 0 };
	int r, ws;

	if (s->in >= 0)
		close(s->in);
	s->in = -1;
	r = frame_read_fd(s->out, s->buf, PROTO_MAX_MESSAGE, &m, WAIT_MS, NULL, 0);
	if (r == 0)
		fprintf(stderr, "unexpected message: %s\n", json_object_to_json_string(m.root));
	CHECK_EQ(r, -EPIPE);
	server_log_wait(s, NULL);
	CHECK(waitpid(s->pid, &ws, 0) == s->pid);
	live_pid = -1;
	if (!WIFEXITED(ws) || WEXITSTATUS(ws) != status)
		fprintf(stderr, "exit status %#x, stderr: %s\n", ws, s->log);
	CHECK(WIFEXITED(ws));
	CHECK_EQ(WEXITSTATUS(ws), status);
	close(s->out);
	close(s->err);
	evbuffer_free(s->buf);
}

static void test_session(void)
{
	char *env[] = { "STDIO_MCP_TEST=from the test", "PATH=/usr/bin:/bin", NULL };
	struct server s;
	struct json_object *o, *result, *tools, *v;

	TEST("the server says it started on stderr");
	server_start(&s, NULL, env, -1);
	server_log_wait(&s, "stdio-mcp: started");

	TEST("initialize negotiates the protocol version and names the server");
	o = call(&s, 1,
		 "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-03-26\","
		 "\"capabilities\":{},\"clientInfo\":{\"name\":\"test\",\"version\":\"1\"}}}");
	result = jget(o, "result");
	CHECK(streq(jstr(result, "protocolVersion"), "2025-03-26"));
	CHECK(json_object_object_get_ex(jget(result, "capabilities"), "tools", &v));
	CHECK(streq(jstr(jget(result, "serverInfo"), "name"), "mcpkeeper-test-stdio-server"));
	json_object_put(o);
	/* A notification gets no answer: the next message answers id 2. */
	send_json(&s, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}");

	TEST("tools/list starts with echo, add and slow");
	o = call(&s, 2, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}");
	tools = jget(jget(o, "result"), "tools");
	CHECK(json_object_array_length(tools) >= 3);
	CHECK(streq(jstr(json_object_array_get_idx(tools, 0), "name"), "echo"));
	CHECK(streq(jstr(json_object_array_get_idx(tools, 1), "name"), "add"));
	CHECK(streq(jstr(json_object_array_get_idx(tools, 2), "name"), "slow"));
	json_object_put(o);

	TEST("tools/call echo, add, slow; ping");
	tool_is(&s, 3, "echo", "{\"text\":\"hello, stdio\"}", "hello, stdio", 0);
	tool_is(&s, 4, "add", "{\"a\":2,\"b\":40}", "42", 0);
	tool_is(&s, 5, "add", "{\"a\":0.5,\"b\":1}", "1.5", 0);
	tool_is(&s, 6, "slow", "{\"ms\":20}", "slept 20 ms", 0);
	o = call(&s, 7, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"ping\"}");
	CHECK(json_object_object_get_ex(o, "result", &v));
	json_object_put(o);

	TEST("env reads the environment it was given; fds shows that nothing leaked");
	tool_is(&s, 8, "env", "{\"name\":\"STDIO_MCP_TEST\"}", "from the test", 0);
	tool_is(&s, 9, "env", "{\"name\":\"NOT_SET_HERE\"}", "NOT_SET_HERE is not set", 1);
	tool_is(&s, 10, "fds", "{}", "", 0);

	TEST("errors: unknown method, unknown tool, bad arguments, a line that is not JSON");
	o = call(&s, 11, "{\"jsonrpc\":\"2.0\",\"id\":11,\"method\":\"resources/list\"}");
	CHECK_EQ(error_code(o), RPC_METHOD_NOT_FOUND);
	json_object_put(o);
	o = call(&s, 12, "{\"jsonrpc\":\"2.0\",\"id\":12,\"method\":\"tools/call\",\"params\":{\"name\":\"nope\"}}");
	CHECK_EQ(error_code(o), RPC_INVALID_PARAMS);
	json_object_put(o);
	o = call(&s, 13,
		 "{\"jsonrpc\":\"2.0\",\"id\":13,\"method\":\"tools/call\",\"params\":{\"name\":\"slow\","
		 "\"arguments\":{\"ms\":-1}}}");
	CHECK_EQ(error_code(o), RPC_INVALID_PARAMS);
	json_object_put(o);
	send_line(&s, "{not json\n");
	o = recv_msg(&s);
	CHECK_EQ(error_code(o), RPC_PARSE_ERROR);
	CHECK(json_object_object_get_ex(o, "id", &v) && v == NULL);
	json_object_put(o);

	TEST("notify: a notifications/message comes before the tool's result");
	send_json(&s, "{\"jsonrpc\":\"2.0\",\"id\":14,\"method\":\"tools/call\",\"params\":{\"name\":\"notify\","
		      "\"arguments\":{\"text\":\"psst\"}}}");
	o = recv_msg(&s);
	CHECK(streq(jstr(o, "method"), "notifications/message"));
	CHECK(!json_object_object_get_ex(o, "id", &v));
	CHECK(streq(jstr(jget(o, "params"), "data"), "psst"));
	json_object_put(o);
	o = recv_msg(&s);
	CHECK_EQ(json_object_get_int(jget(o, "id")), 14);
	json_object_put(o);

	TEST("sample: a server request goes out; the client's answer becomes the tool's result");
	send_json(&s, "{\"jsonrpc\":\"2.0\",\"id\":15,\"method\":\"tools/call\",\"params\":{\"name\":\"sample\","
		      "\"arguments\":{\"text\":\"2+2?\"}}}");
	o = recv_msg(&s);
	CHECK(streq(jstr(o, "method"), "sampling/createMessage"));
	CHECK(streq(jstr(o, "id"), "stdio-mcp-1"));
	json_object_put(o);
	/* Other traffic meanwhile is served. */
	o = call(&s, 16, "{\"jsonrpc\":\"2.0\",\"id\":16,\"method\":\"ping\"}");
	json_object_put(o);
	send_json(&s, "{\"jsonrpc\":\"2.0\",\"id\":\"stdio-mcp-1\",\"result\":{\"role\":\"assistant\","
		      "\"content\":{\"type\":\"text\",\"text\":\"4\"},\"model\":\"m\"}}");
	o = recv_msg(&s);
	{
		int is_error;

		CHECK_EQ(json_object_get_int(jget(o, "id")), 15);
		CHECK(streq(tool_text(o, &is_error), "4"));
		CHECK(!is_error);
	}
	json_object_put(o);
	send_json(&s, "{\"jsonrpc\":\"2.0\",\"id\":17,\"method\":\"tools/call\",\"params\":{\"name\":\"sample\","
		      "\"arguments\":{\"text\":\"again\"}}}");
	o = recv_msg(&s);
	CHECK(streq(jstr(o, "id"), "stdio-mcp-2"));
	json_object_put(o);
	send_json(&s, "{\"jsonrpc\":\"2.0\",\"id\":\"stdio-mcp-2\",\"error\":{\"code\":-1,\"message\":\"declined\"}}");
	o = recv_msg(&s);
	{
		int is_error;

		CHECK_EQ(json_object_get_int(jget(o, "id")), 17);
		CHECK(streq(tool_text(o, &is_error), "declined"));
		CHECK(is_error);
	}
	json_object_put(o);

	TEST("end of stdin: the server exits 0");
	server_finish(&s, 0);
	CHECK(strstr(s.log, "stdio-mcp: end of input") != NULL);
}

static void test_crash(void)
{
	const char *args[] = { "--crash-after", "2", NULL };
	struct server s;
	struct json_object *o;
	int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	TEST("--crash-after 2: two requests answered, the third kills it with status 3");
	CHECK(null_fd >= 0);
	server_start(&s, args, (char *[]){ NULL }, null_fd);
	close(null_fd);
	o = call(&s, 1, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{}}");
	json_object_put(o);
	send_json(&s, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}");
	/* A descriptor given as fd 3 shows up. */
	tool_is(&s, 2, "fds", "{}", "3", 0);
	send_json(&s, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"ping\"}");
	server_finish(&s, 3);
	CHECK(strstr(s.log, "stdio-mcp: crashing after 2 requests") != NULL);

	TEST("--crash-after 0: the first request kills it");
	args[1] = "0";
	server_start(&s, args, (char *[]){ NULL }, -1);
	send_json(&s, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{}}");
	server_finish(&s, 3);

	TEST("a bad --crash-after is a usage error (status 2)");
	args[1] = "many";
	server_start(&s, args, (char *[]){ NULL }, -1);
	server_finish(&s, 2);
}

int main(int argc, char **argv)
{
	CHECK(argc == 2);
	server_path = argv[1];
	signal(SIGPIPE, SIG_IGN);
	atexit(kill_at_exit);
	test_session();
	test_crash();
	printf("all stdio-mcp tests passed\n");
	return 0;
}
