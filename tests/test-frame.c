/*
 * Framing and JSON-RPC tests: split and coalesced reads, the size limit at
 * and past its edge, every error class, partial writes on a full socket.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "frame.h"
#include "log.h"
#include "proto.h"
#include "test.h"

static int feed(struct evbuffer *b, const char *s)
{
	return evbuffer_add(b, s, strlen(s));
}

static void test_split_and_coalesced(void)
{
	struct evbuffer *b = evbuffer_new();
	const char *msg = "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"status\",\"params\":{}}\n";
	struct rpc_msg m;

	TEST("a message split byte by byte completes only at its newline");
	for (size_t i = 0; i < strlen(msg); i++) {
		CHECK_EQ(frame_read(b, 1024, &m, NULL, 0), FRAME_NEED_MORE);
		evbuffer_add(b, msg + i, 1);
	}
	CHECK_EQ(frame_read(b, 1024, &m, NULL, 0), 0);
	CHECK_EQ(m.type, RPC_REQUEST);
	CHECK(strcmp(m.method, "status") == 0);
	CHECK_EQ(json_object_get_int(m.id), 7);
	CHECK(json_object_is_type(m.params, json_type_object));
	rpc_msg_clear(&m);
	CHECK_EQ(evbuffer_get_length(b), 0);

	TEST("coalesced messages come out one at a time, in order, blank lines skipped");
	feed(b, "{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":{\"n\":1}}\n\n\r\n"
		"{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{\"ok\":true}}\r\n"
		"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32000,\"message\":\"no\",\"data\":{\"kind\":\"busy\"}}}\n"
		"{\"jsonrpc\":\"2.0\",\"id\":3,\"met");
	CHECK_EQ(frame_read(b, 1024, &m, NULL, 0), 0);
	CHECK_EQ(m.type, RPC_NOTIFICATION);
	CHECK(m.id == NULL);
	rpc_msg_clear(&m);
	CHECK_EQ(frame_read(b, 1024, &m, NULL, 0), 0);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(strcmp(json_object_get_string(m.id), "a") == 0);
	rpc_msg_clear(&m);
	CHECK_EQ(frame_read(b, 1024, &m, NULL, 0), 0);
	CHECK_EQ(m.type, RPC_ERROR);
	CHECK_EQ(rpc_error_code(&m), -32000);
	CHECK(strcmp(rpc_error_kind(&m), "busy") == 0);
	CHECK(strcmp(rpc_error_message(&m), "no") == 0);
	rpc_msg_clear(&m);
	CHECK_EQ(frame_read(b, 1024, &m, NULL, 0), FRAME_NEED_MORE);
	feed(b, "hod\":\"x\"}\n");
	CHECK_EQ(frame_read(b, 1024, &m, NULL, 0), 0);
	CHECK(strcmp(m.method, "x") == 0);
	rpc_msg_clear(&m);
	evbuffer_free(b);
}

/* A valid request of exactly len bytes (without the newline). */
static char *message_of_size(size_t len)
{
	const char *head = "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":{\"p\":\"";
	const char *tail = "\"}}";
	char *s = malloc(len + 2);
	size_t h = strlen(head), t = strlen(tail);

	CHECK(len > h + t);
	memcpy(s, head, h);
	memset(s + h, 'x', len - h - t);
	memcpy(s + len - t, tail, t);
	s[len] = '\n';
	s[len + 1] = '\0';
	return s;
}

static void test_limits(void)
{
	const size_t limit = 4096;
	struct evbuffer *b = evbuffer_new();
	struct rpc_msg m;
	char detail[128];
	char *s;

	TEST("a message of exactly the limit is accepted");
	s = message_of_size(limit);
	feed(b, s);
	CHECK_EQ(frame_read(b, limit, &m, NULL, 0), 0);
	rpc_msg_clear(&m);
	free(s);

	TEST("one byte over the limit is refused, with or without its newline buffered");
	s = message_of_size(limit + 1);
	evbuffer_add(b, s, limit); /* not yet over */
	CHECK_EQ(frame_read(b, limit, &m, NULL, 0), FRAME_NEED_MORE);
	evbuffer_add(b, s + limit, 1); /* limit + 1 bytes, no newline */
	CHECK_EQ(frame_read(b, limit, &m, detail, sizeof(detail)), FRAME_E_TOO_LARGE);
	CHECK(strstr(detail, "limit") != NULL);
	evbuffer_drain(b, evbuffer_get_length(b));
	feed(b, s); /* the whole line at once */
	CHECK_EQ(frame_read(b, limit, &m, NULL, 0), FRAME_E_TOO_LARGE);
	free(s);
	evbuffer_free(b);

	TEST("frame_write refuses to produce an over-limit line");
	b = evbuffer_new();
	{
		struct json_object *o = json_object_new_object();
		char big[200];

		memset(big, 'y', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		json_object_object_add(o, "v", json_object_new_string(big));
		CHECK_EQ(frame_write(b, o, 100), FRAME_E_TOO_LARGE);
		CHECK_EQ(evbuffer_get_length(b), 0);
		CHECK_EQ(frame_write(b, o, 1000), 0);
		CHECK(evbuffer_get_length(b) > 200);
		json_object_put(o);
	}
	evbuffer_free(b);
}

static void expect_error(const char *line, int want, const char *what)
{
	struct evbuffer *b = evbuffer_new();
	struct rpc_msg m;
	char detail[256] = "";
	int r;

	feed(b, line);
	r = frame_read(b, 4096, &m, detail, sizeof(detail));
	if (r != want)
		fprintf(stderr, "line %s: got %d (%s), want %d\n", line, r, detail, want);
	CHECK_EQ(r, want);
	CHECK(detail[0] != '\0');
	/* The bad line is consumed; the stream continues after it. */
	CHECK_EQ(evbuffer_get_length(b), 0);
	printf("#   %s: %s\n", what, detail);
	rpc_msg_clear(&m);
	evbuffer_free(b);
}

static void test_errors(void)
{
	TEST("invalid JSON, bad UTF-8, non-objects and invalid JSON-RPC have distinct errors");
	expect_error("{\"jsonrpc\":\"2.0\",\n", FRAME_E_JSON, "truncated");
	expect_error("not json at all\n", FRAME_E_JSON, "garbage");
	expect_error("{\"a\":1} {\"b\":2}\n", FRAME_E_JSON, "two values");
	expect_error("{\"a\":1,}\n", FRAME_E_JSON, "trailing comma");
	expect_error("{\"a\":\"\xff\xfe\"}\n", FRAME_E_UTF8, "invalid bytes");
	expect_error("{\"a\":\"\xc0\xaf\"}\n", FRAME_E_UTF8, "overlong");
	expect_error("{\"a\":\"\xed\xa0\x80\"}\n", FRAME_E_UTF8, "surrogate");
	expect_error("[1,2]\n", FRAME_E_NOT_OBJECT, "array");
	expect_error("42\n", FRAME_E_NOT_OBJECT, "number");
	expect_error("null\n", FRAME_E_NOT_OBJECT, "null");
	expect_error("{\"id\":1,\"method\":\"x\"}\n", FRAME_E_INVALID_RPC, "no jsonrpc");
	expect_error("{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"x\"}\n", FRAME_E_INVALID_RPC, "wrong version");
	expect_error("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":5}\n", FRAME_E_INVALID_RPC, "method not string");
	expect_error("{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"x\"}\n", FRAME_E_INVALID_RPC, "object id");
	expect_error("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":3}\n", FRAME_E_INVALID_RPC,
		     "scalar params");
	expect_error("{\"jsonrpc\":\"2.0\",\"id\":1}\n", FRAME_E_INVALID_RPC, "neither result nor error");
	expect_error("{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":1,\"error\":{\"code\":1,\"message\":\"m\"}}\n",
		     FRAME_E_INVALID_RPC, "both result and error");
	expect_error("{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":\"x\",\"message\":\"m\"}}\n",
		     FRAME_E_INVALID_RPC, "error code not integer");

	TEST("an invalid request keeps its id so that the answer can carry it");
	{
		struct evbuffer *b = evbuffer_new();
		struct rpc_msg m;

		feed(b, "{\"jsonrpc\":\"2.0\",\"id\":42,\"method\":\"x\",\"params\":\"bad\"}\n");
		CHECK_EQ(frame_read(b, 4096, &m, NULL, 0), FRAME_E_INVALID_RPC);
		CHECK(m.root != NULL && m.id != NULL);
		CHECK_EQ(json_object_get_int(m.id), 42);
		rpc_msg_clear(&m);
		evbuffer_free(b);
	}
}

static void test_builders(void)
{
	struct evbuffer *b = evbuffer_new();
	struct json_object *o;
	struct rpc_msg m;

	TEST("builders produce messages the reader accepts, one line each");
	o = json_object_new_object();
	json_object_object_add(o, "text", json_object_new_string("line one\nline two \"quoted\" / slash"));
	o = rpc_request(METHOD_STATUS, o, 5);
	CHECK_EQ(frame_write(b, o, PROTO_MAX_MESSAGE), 0);
	json_object_put(o);
	o = rpc_notification(METHOD_EVENT, NULL);
	CHECK_EQ(frame_write(b, o, PROTO_MAX_MESSAGE), 0);
	json_object_put(o);
	{
		struct json_object *id = json_object_new_string("req-9");

		o = rpc_result(id, json_object_new_int(3));
		CHECK_EQ(frame_write(b, o, PROTO_MAX_MESSAGE), 0);
		json_object_put(o);
		o = rpc_error(id, RPC_APP_ERROR, KIND_NOT_FOUND, "no such server: x");
		CHECK_EQ(frame_write(b, o, PROTO_MAX_MESSAGE), 0);
		json_object_put(o);
		json_object_put(id);
	}
	o = rpc_error_for_frame(FRAME_E_TOO_LARGE, NULL);
	CHECK_EQ(frame_write(b, o, PROTO_MAX_MESSAGE), 0);
	json_object_put(o);

	CHECK_EQ(frame_read(b, PROTO_MAX_MESSAGE, &m, NULL, 0), 0);
	CHECK_EQ(m.type, RPC_REQUEST);
	CHECK(strcmp(m.method, "status") == 0);
	{
		struct json_object *t;

		CHECK(json_object_object_get_ex(m.params, "text", &t));
		CHECK(strcmp(json_object_get_string(t), "line one\nline two \"quoted\" / slash") == 0);
	}
	rpc_msg_clear(&m);
	CHECK_EQ(frame_read(b, PROTO_MAX_MESSAGE, &m, NULL, 0), 0);
	CHECK_EQ(m.type, RPC_NOTIFICATION);
	rpc_msg_clear(&m);
	CHECK_EQ(frame_read(b, PROTO_MAX_MESSAGE, &m, NULL, 0), 0);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK_EQ(json_object_get_int(m.result), 3);
	rpc_msg_clear(&m);
	CHECK_EQ(frame_read(b, PROTO_MAX_MESSAGE, &m, NULL, 0), 0);
	CHECK_EQ(m.type, RPC_ERROR);
	CHECK(strcmp(rpc_error_kind(&m), KIND_NOT_FOUND) == 0);
	CHECK(strcmp(json_object_get_string(m.id), "req-9") == 0);
	rpc_msg_clear(&m);
	CHECK_EQ(frame_read(b, PROTO_MAX_MESSAGE, &m, NULL, 0), 0);
	CHECK_EQ(m.type, RPC_ERROR);
	CHECK(json_object_is_type(m.id, json_type_null));
	CHECK(strcmp(rpc_error_kind(&m), KIND_TOO_LARGE) == 0);
	rpc_msg_clear(&m);
	CHECK_EQ(frame_read(b, PROTO_MAX_MESSAGE, &m, NULL, 0), FRAME_NEED_MORE);
	evbuffer_free(b);
}

static void test_partial_writes(void)
{
	int sv[2], sndbuf = 4096;
	struct evbuffer *out = evbuffer_new(), *in = evbuffer_new();
	const int count = 200;
	int got = 0, partial = 0;

	TEST("partial writes on a full non-blocking socket deliver every message intact");
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	for (int i = 0; i < count; i++) {
		struct json_object *p = json_object_new_object();
		char pad[1000];

		memset(pad, 'a' + i % 26, sizeof(pad) - 1);
		pad[sizeof(pad) - 1] = '\0';
		json_object_object_add(p, "i", json_object_new_int(i));
		json_object_object_add(p, "pad", json_object_new_string(pad));
		p = rpc_request("m", p, i);
		CHECK_EQ(frame_write(out, p, PROTO_MAX_MESSAGE), 0);
		json_object_put(p);
	}
	while (got < count) {
		size_t before = evbuffer_get_length(out);
		struct rpc_msg m;

		if (before) {
			int n = evbuffer_write(out, sv[0]);

			CHECK(n > 0 || errno == EAGAIN);
			if (n > 0 && (size_t)n < before)
				partial++;
		}
		/* Read in small pieces to split messages across reads too. */
		CHECK(evbuffer_read(in, sv[1], 777) > 0 || errno == EAGAIN);
		while (frame_read(in, PROTO_MAX_MESSAGE, &m, NULL, 0) == 0) {
			struct json_object *iv;

			CHECK(json_object_object_get_ex(m.params, "i", &iv));
			CHECK_EQ(json_object_get_int(iv), got);
			got++;
			rpc_msg_clear(&m);
		}
	}
	CHECK(partial > 0);
	printf("#   %d messages, %d partial writes\n", got, partial);
	close(sv[0]);
	close(sv[1]);
	evbuffer_free(out);
	evbuffer_free(in);
}

static void test_fd_helpers(void)
{
	int sv[2];
	struct evbuffer *buf = evbuffer_new();
	struct json_object *o;
	struct rpc_msg m;
	char big[3000];

	TEST("blocking helpers: write, read, oversize refusal, EOF");
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	o = rpc_request("ping", NULL, 1);
	CHECK_EQ(frame_write_fd(sv[0], o, PROTO_MAX_MESSAGE, 1000), 0);
	json_object_put(o);
	CHECK_EQ(frame_read_fd(sv[1], buf, PROTO_MAX_MESSAGE, &m, 1000, NULL, 0), 0);
	CHECK(strcmp(m.method, "ping") == 0);
	rpc_msg_clear(&m);

	memset(big, 'z', sizeof(big));
	CHECK(write(sv[0], big, sizeof(big)) == (ssize_t)sizeof(big));
	CHECK_EQ(frame_read_fd(sv[1], buf, 1024, &m, 1000, NULL, 0), FRAME_E_TOO_LARGE);
	/* The reader buffered at most limit + 1 bytes of it. */
	CHECK(evbuffer_get_length(buf) <= 1025);
	evbuffer_drain(buf, evbuffer_get_length(buf));

	CHECK_EQ(frame_read_fd(sv[1], buf, 1 << 20, &m, 50, NULL, 0), -ETIMEDOUT);
	close(sv[0]);
	CHECK_EQ(frame_read_fd(sv[1], buf, 1 << 20, &m, 1000, NULL, 0), -EPIPE);
	close(sv[1]);
	evbuffer_free(buf);
}

static void test_next_line(void)
{
	struct evbuffer *b = evbuffer_new();
	struct frame_line l;
	char big[64];

	TEST("frame_next_line: the next line that is not blank, left in place until drained");
	feed(b, "\n\r\n{\"a\": 1}\r\n{\"b\"");
	CHECK_EQ(frame_next_line(b, 1024, &l, NULL, 0), 0);
	CHECK_EQ(l.len, 9);
	CHECK(memcmp(l.text, "{\"a\": 1}\r", 9) == 0);
	CHECK_EQ(l.consumed, 10);
	CHECK_EQ(evbuffer_get_length(b), 14);	/* the blank lines went; this one stays */
	evbuffer_drain(b, l.consumed);
	CHECK_EQ(frame_next_line(b, 1024, &l, NULL, 0), FRAME_NEED_MORE);
	evbuffer_drain(b, evbuffer_get_length(b));

	TEST("frame_next_line: a line over the limit takes nothing");
	memset(big, 'x', sizeof(big));
	evbuffer_add(b, big, sizeof(big));
	CHECK_EQ(frame_next_line(b, 32, &l, NULL, 0), FRAME_E_TOO_LARGE);
	CHECK_EQ(evbuffer_get_length(b), sizeof(big));
	evbuffer_free(b);
}

int main(void)
{
	log_init("test-frame");
	test_split_and_coalesced();
	test_limits();
	test_errors();
	test_builders();
	test_partial_writes();
	test_fd_helpers();
	test_next_line();
	printf("all framing tests passed\n");
	return 0;
}
