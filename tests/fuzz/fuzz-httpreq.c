/*
 * Fuzz target for the http child's handling of a request
 * (daemon/http/: http.c is included here for its statics, the child's other
 * files are linked): the input is the bytes a client sends on a
 * connection, head and body. libevent's evhttp parses the head, as in the
 * child; everything on top of it is ours: the Host and Origin checks and
 * the API key (server.c), the routes and server names, the page query of
 * GET /api/v1/servers (api.c), the bodies of POST and PATCH (manage.c),
 * MCP over HTTP (mcp.c), the event stream and the UI's files.
 *
 * The child is set up as its hello leaves it: a real evhttp on a loopback
 * listener, answering to Host 127.0.0.1:8731 and localhost:8731 (whatever
 * port it really has; the seeds use these), API key API_KEY, management
 * on. Its keeper is played by the harness: each request on fd 3 gets an
 * error, as from a keeper that has no control connection to give. Each
 * input is one connection: written, the loop run until nothing moves, the
 * connection closed and the loop run again so the child sees the close.
 *
 * Promises checked (abort() when broken): a request without the API key
 * never reaches the keeper; what comes back starts as an HTTP response.
 */
#include <poll.h>

int http_child_main(int argc, char **argv);
#define main http_child_main
#include "../../daemon/http/http.c"
#undef main

#include "fuzz.h"

#define API_KEY "fuzz-api-key-0123456789abcdef0123"
#define FUZZ_PORT 8731
/* Rounds of the loop without progress before the exchange counts as over. */
#define IDLE_ROUNDS 4

static struct http the_http = { .chan.exit_code = -1, .management = true };
static int keeper_fd = -1;
static struct sockaddr_in listen_addr;

static _Noreturn void fail(const char *what)
{
	fprintf(stderr, "fuzz-httpreq: %s\n", what);
	abort();
}

static void setup(void)
{
	struct http *h = &the_http;
	struct evhttp_bound_socket *bound;
	socklen_t alen = sizeof(listen_addr);
	int sv[2], fd;

	if (!getenv("FUZZ_VERBOSE"))
		log_set_level(LOG_LEVEL_ERROR);
	if (sodium_init() < 0)
		fail("libsodium initialisation failed");
	signal(SIGPIPE, SIG_IGN);
	LIST_INIT(&h->waits);
	LIST_INIT(&h->stash);
	LIST_INIT(&h->calls);
	LIST_INIT(&h->api_calls);
	LIST_INIT(&h->tools_calls);
	LIST_INIT(&h->sse);
	LIST_INIT(&h->sessions);
	LIST_INIT(&h->conns);
	h->base = event_base_new();
	if (!h->base || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ||
	    channel_open(&h->chan, h->base, sv[0], &channel_ops, h) < 0)
		fail("no event base or channel");
	keeper_fd = sv[1];
	if (fd_set_nonblock(keeper_fd, 1) < 0)
		fail("cannot make the keeper's end non-blocking");

	/* What http_hello() does with the hello and fd 5. */
	h->api_key = secret_from(API_KEY, strlen(API_KEY));
	h->ui_dir = xstrdup(getenv("MCPKEEPER_SOURCE_ROOT") ? getenv("MCPKEEPER_SOURCE_ROOT") : "/nonexistent");
	if (!h->api_key)
		fail("out of memory");
	snprintf(h->listen_host, sizeof(h->listen_host), "127.0.0.1");
	h->port = FUZZ_PORT;
	snprintf(h->hosts[0], sizeof(h->hosts[0]), "127.0.0.1:%d", FUZZ_PORT);
	snprintf(h->hosts[1], sizeof(h->hosts[1]), "localhost:%d", FUZZ_PORT);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	listen_addr.sin_family = AF_INET;
	listen_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&listen_addr, sizeof(listen_addr)) < 0 || listen(fd, 16) < 0 ||
	    getsockname(fd, (struct sockaddr *)&listen_addr, &alen) < 0)
		fail("cannot listen on 127.0.0.1");
	http_server_new(h, 16, 10000);
	bound = evhttp_accept_socket_with_handle(h->evh, fd);
	if (!bound)
		fail("cannot accept connections");
	h->hello_done = true;
}

/* The keeper: every request the child sends gets an error. Returns the
 * number of messages read. */
static size_t keeper_answer(void)
{
	static char line[PROTO_MAX_MESSAGE + 1];
	static size_t used;
	size_t n = 0;
	ssize_t r;

	while ((r = read(keeper_fd, line + used, sizeof(line) - 1 - used)) > 0) {
		char *nl;

		used += (size_t)r;
		while ((nl = memchr(line, '\n', used))) {
			struct rpc_msg m = { 0 };
			char detail[128];
			size_t len = (size_t)(nl - line);

			if (frame_parse_line(line, len, &m, detail, sizeof(detail)) != 0)
				fail("the child sent the keeper a line it cannot read");
			if (m.type == RPC_REQUEST) {
				struct json_object *e = rpc_error(m.id, RPC_APP_ERROR, KIND_UNAVAILABLE,
								  "fuzz: no control connection");
				if (!e || frame_write_fd(keeper_fd, e, PROTO_MAX_MESSAGE, 1000) != 0)
					fail("cannot answer the child");
				json_object_put(e);
			}
			rpc_msg_clear(&m);
			n++;
			used -= len + 1;
			memmove(line, nl + 1, used);
		}
		if (used == sizeof(line) - 1)
			fail("the child sent the keeper a line longer than PROTO_MAX_MESSAGE");
	}
	return n;
}

/* One round of the loop; the bytes moved and the keeper's messages. */
static size_t round_once(int client, const uint8_t **data, size_t *left, char *head, size_t *head_len,
			 size_t *to_keeper, bool *eof)
{
	size_t moved = 0;
	ssize_t r;
	char buf[4096];

	if (*left) {
		r = write(client, *data, *left);
		if (r > 0) {
			*data += r;
			*left -= (size_t)r;
			moved += (size_t)r;
		}
	}
	event_base_loop(the_http.base, EVLOOP_NONBLOCK);
	*to_keeper += keeper_answer();
	event_base_loop(the_http.base, EVLOOP_NONBLOCK);
	while (!*eof) {
		r = read(client, buf, sizeof(buf));
		if (r <= 0) {
			/* 0: the child closed; a reset is a close too. */
			*eof = r == 0 || errno == ECONNRESET;
			break;
		}
		if (*head_len < 9) {
			size_t n = (size_t)r < 9 - *head_len ? (size_t)r : 9 - *head_len;

			memcpy(head + *head_len, buf, n);
			*head_len += n;
		}
		moved += (size_t)r;
	}
	return moved;
}

/*
 * connect(), finished when a signal interrupts it (EINTR: the connection
 * goes on, and poll says when it is made). The recorded run of 2026-12-08
 * found this harness aborting on such an EINTR after 629 505 inputs.
 */
static int connect_whole(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLOUT };
	socklen_t len = sizeof(int);
	int err = 0, r;

	if (connect(fd, (struct sockaddr *)&listen_addr, sizeof(listen_addr)) == 0)
		return 0;
	if (errno != EINTR)
		return -1;
	do
		r = poll(&pfd, 1, 5000);
	while (r < 0 && errno == EINTR);
	if (r <= 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return -1;
	errno = err;
	return err ? -1 : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	const uint8_t *p = data;
	size_t left = size, head_len = 0, to_keeper = 0;
	char head[9];
	bool eof = false, with_key = false;
	int client, idle = 0;

	if (!ready) {
		setup();
		ready = true;
	}
	for (size_t i = 0; i + strlen(API_KEY) <= size && !with_key; i++)
		with_key = memcmp(data + i, API_KEY, strlen(API_KEY)) == 0;

	client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	/* Closed with a reset, not a FIN: millions of connections in TIME_WAIT
	 * would use up the ephemeral ports (the recorded run's first finding
	 * was that, in this harness). */
	if (client < 0 || setsockopt(client, SOL_SOCKET, SO_LINGER, &(struct linger){ 1, 0 }, sizeof(struct linger)) < 0 ||
	    connect_whole(client) < 0 || fd_set_nonblock(client, 1) < 0) {
		fprintf(stderr, "fuzz-httpreq: connect: %s\n", strerror(errno));
		fail("cannot connect to the child");
	}
	for (int rounds = 0; rounds < 10000 && !eof && idle < IDLE_ROUNDS; rounds++)
		idle = round_once(client, &p, &left, head, &head_len, &to_keeper, &eof) ? 0 : idle + 1;
	close(client);
	/* The child sees the close: held requests end, the connection goes. */
	for (int rounds = 0; rounds < IDLE_ROUNDS; rounds++) {
		event_base_loop(the_http.base, EVLOOP_NONBLOCK);
		to_keeper += keeper_answer();
	}
	if (!with_key && to_keeper)
		fail("a request without the API key reached the keeper");
	/* (libevent answers in the version the request named, however odd.) */
	if (head_len >= 5 && memcmp(head, "HTTP/", 5) != 0)
		fail("the answer is not an HTTP response");
	return 0;
}
