/*
 * The http child, end to end: the real mcpkeeper-http started the way the
 * keeper starts it (fork+exec, a stream socketpair on fd 3, a SOCK_SEQPACKET
 * socketpair on fd 4, stdin /dev/null, stderr to a file).
 *
 * A thread of the test plays the keeper: it answers control.connect by
 * creating a socket pair, answering {"number": N} and passing one end on
 * fd 4 under N (the descriptor goes before the reply for odd numbers and
 * after it for even ones), then answers the control protocol on its end
 * with canned replies: status, auth.login, auth.logout, events.subscribe
 * (and events when the test asks), and connect, after which its end plays
 * an MCP worker. The main thread is the HTTP client, on raw sockets, so
 * that it decides every header.
 *
 * Usage: test-http MCPKEEPER-HTTP [OPENAPI-JSON]
 *
 * At the end the children's logs must hold neither the API key nor a query
 * string, and every child must exit 0 when fd 3 closes (under the
 * sanitizers, that includes no leak).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "frame.h"
#include "listen.h"
#include "proto.h"
#include "sock.h"
#include "timefmt.h"
#include "test.h"
#include "util.h"

#define IO_TIMEOUT_MS 20000
#define KEY "test-api-key-0123456789abcdefghijklmnopqrstuvwxyz"
#define KEY_HEADER "X-API-Key: " KEY "\r\n"
#define CSP_UI                                                                                           \
	"default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; " \
	"frame-ancestors 'none'"
#define INDEX_HTML "<!DOCTYPE html><title>mcpkeeper test page</title>\n"
#define APP_JS "console.log('test');\n"
#define STYLE_CSS "body { color: black; }\n"
#define LOGIN_URL "https://auth.example/authorize?client_id=abc&state=xyz"

static const char *http_bin, *openapi_src;
static char tmpdir[64], ui_dir[96];
static bool finished;

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_file(const char *dir, const char *name, const char *text)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	CHECK(f);
	CHECK(fputs(text, f) >= 0);
	CHECK(fclose(f) == 0);
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "r");
	struct stat st;
	char *buf;

	if (!f)
		return NULL;
	CHECK(fstat(fileno(f), &st) == 0);
	buf = malloc((size_t)st.st_size + 1);
	CHECK(buf);
	*len = fread(buf, 1, (size_t)st.st_size, f);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

/* -- the keeper (a thread) -- */

/* The keeper's end of one control connection. */
struct kconn {
	int fd;
	struct evbuffer *in, *out;
	bool dead;
	bool subscribed;
	bool worker;		/* after connect: it plays the server's worker */
	char server[64];
};

struct child {
	pid_t pid;
	int fd3, fd4;
	struct evbuffer *in, *out;
	bool eof;
	char log[128];
	int port;
	uint64_t next_number;
	int connects;		/* control.connect requests */
	struct kconn *conns[512];
	size_t n_conns;
};

static struct {
	pthread_mutex_t lock;
	pthread_t thread;
	bool running, stop;
	int wake[2];
	struct child *children[8];
	size_t n_children;
	/* What the keeper saw. */
	int logins;
	bool login_wait_false;
	int logouts;
	int mcp_notes;
	int mcp_responses;
	int mcp_initialized;
	bool refuse_connect;	/* answer control.connect with an error */
} K = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void kwake(void)
{
	CHECK_EQ(write(K.wake[1], "x", 1), 1);
}

static struct json_object *canned_servers(void)
{
	return json_tokener_parse(
		"[{\"name\":\"alpha\",\"protocol\":\"streamable-http\",\"url\":\"https://mcp.example/alpha\","
		"\"enabled\":true,\"oauth\":true,\"oauth_status\":\"authenticated\",\"token_expires_at\":1767225600,"
		"\"worker\":null,\"refresh\":{\"state\":\"scheduled\",\"retry_count\":0,\"next_at\":1767225000,"
		"\"last_error\":null},\"login_in_progress\":false},"
		"{\"name\":\"beta\",\"protocol\":\"stdio\",\"url\":null,\"enabled\":true,\"oauth\":false,"
		"\"oauth_status\":null,\"token_expires_at\":null,\"worker\":null,\"refresh\":{\"state\":\"idle\","
		"\"retry_count\":0,\"next_at\":null,\"last_error\":null}}]");
}

static void ksend(struct evbuffer *out, struct json_object *msg)
{
	CHECK(msg);
	CHECK_EQ(frame_write(out, msg, PROTO_MAX_MESSAGE), 0);
	json_object_put(msg);
}

static const char *param(struct json_object *params, const char *key)
{
	struct json_object *v;

	if (!params || !json_object_object_get_ex(params, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* An error reply as the keeper's control socket gives it. */
static struct json_object *kerror(struct json_object *id, const char *kind, const char *message)
{
	return rpc_error(id, RPC_APP_ERROR, kind, message);
}

static void kconn_control(struct kconn *k, struct rpc_msg *m)
{
	const char *server = param(m->params, "server");
	struct json_object *res, *v;

	CHECK_EQ(m->type, RPC_REQUEST);
	if (strcmp(m->method, METHOD_STATUS) == 0) {
		res = json_object_new_object();
		json_object_object_add(res, "version", json_object_new_string("0.1.0"));
		json_object_object_add(res, "servers", canned_servers());
		ksend(k->out, rpc_result(m->id, res));
	} else if (strcmp(m->method, METHOD_AUTH_LOGIN) == 0) {
		K.logins++;
		K.login_wait_false = json_object_object_get_ex(m->params, "wait", &v) &&
				     json_object_is_type(v, json_type_boolean) && !json_object_get_boolean(v);
		CHECK(server);
		if (strcmp(server, "alpha") == 0) {
			res = json_object_new_object();
			json_object_object_add(res, "server", json_object_new_string("alpha"));
			json_object_object_add(res, "url", json_object_new_string(LOGIN_URL));
			ksend(k->out, rpc_result(m->id, res));
		} else if (strcmp(server, "beta") == 0) {
			ksend(k->out, kerror(m->id, KIND_NOT_OAUTH, "server \"beta\" does not use OAuth"));
		} else if (strcmp(server, "busy1") == 0) {
			ksend(k->out, kerror(m->id, KIND_BUSY, "a login for \"busy1\" is already running"));
		} else if (strcmp(server, "locked") == 0) {
			ksend(k->out, kerror(m->id, KIND_FORBIDDEN, "management is disabled in the configuration"));
		} else if (strcmp(server, "denied") == 0) {
			ksend(k->out, kerror(m->id, KIND_LOGIN_FAILED, "the provider refused"));
		} else if (strcmp(server, "odd") == 0) {
			ksend(k->out, kerror(m->id, "something_new", "an unknown kind"));
		} else if (strcmp(server, "hang") == 0) {
			/* No answer: the test's client gives up first. */
		} else if (strcmp(server, "garbled") == 0) {
			/* A keeper bug: the child must answer 500, not crash. */
			evbuffer_add(k->out, "this is not json\n", 17);
		} else {
			ksend(k->out, kerror(m->id, KIND_NOT_FOUND, "no server named that"));
		}
	} else if (strcmp(m->method, METHOD_AUTH_LOGOUT) == 0) {
		K.logouts++;
		CHECK(server);
		if (strcmp(server, "alpha") == 0) {
			res = json_object_new_object();
			json_object_object_add(res, "server", json_object_new_string("alpha"));
			json_object_object_add(res, "logged_out", json_object_new_boolean(1));
			json_object_object_add(res, "had_token", json_object_new_boolean(1));
			json_object_object_add(res, "revoked", json_object_new_boolean(0));
			json_object_object_add(res, "revoke_error", json_object_new_string("HTTP 503"));
			ksend(k->out, rpc_result(m->id, res));
		} else if (strcmp(server, "beta") == 0) {
			ksend(k->out, kerror(m->id, KIND_NOT_OAUTH, "server \"beta\" does not use OAuth"));
		} else {
			ksend(k->out, kerror(m->id, KIND_NOT_FOUND, "no server named that"));
		}
	} else if (strcmp(m->method, METHOD_EVENTS_SUBSCRIBE) == 0) {
		k->subscribed = true;
		res = json_object_new_object();
		json_object_object_add(res, "subscribed", json_object_new_boolean(1));
		ksend(k->out, rpc_result(m->id, res));
	} else if (strcmp(m->method, METHOD_CONNECT) == 0) {
		CHECK(server);
		if (strcmp(server, "alpha") == 0) {
			res = json_object_new_object();
			json_object_object_add(res, "server", json_object_new_string(server));
			ksend(k->out, rpc_result(m->id, res));
			k->worker = true;
			snprintf(k->server, sizeof(k->server), "%s", server);
		} else if (strcmp(server, "slow") == 0) {
			/* No answer: the client gives up first. */
		} else if (strcmp(server, "off") == 0) {
			ksend(k->out, kerror(m->id, KIND_UNAVAILABLE, "server \"off\" is disabled in the configuration"));
		} else {
			ksend(k->out, kerror(m->id, KIND_NOT_FOUND, "no server named that"));
		}
	} else {
		fprintf(stderr, "unexpected control method %s\n", m->method);
		CHECK(0);
	}
}

/* The fake worker: MCP over the connection that `connect` handed over. */
static void kconn_worker(struct kconn *k, struct rpc_msg *m)
{
	struct json_object *res;

	if (m->type == RPC_NOTIFICATION) {
		K.mcp_notes++;
		if (strcmp(m->method, "notifications/initialized") == 0)
			K.mcp_initialized++;
		return;
	}
	if (m->type == RPC_RESULT || m->type == RPC_ERROR) {
		K.mcp_responses++;
		return;
	}
	if (strcmp(m->method, "initialize") == 0 && m->params &&
	    json_object_object_get_ex(m->params, "clientInfo", &res) && json_object_object_get_ex(res, "name", &res) &&
	    strcmp(json_object_get_string(res), "refuse") == 0) {
		ksend(k->out, rpc_error(m->id, -32602, NULL, "unsupported protocol version"));
	} else if (strcmp(m->method, "initialize") == 0) {
		res = json_tokener_parse("{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{\"tools\":{}},"
					 "\"serverInfo\":{\"name\":\"fake\",\"version\":\"1\"}}");
		ksend(k->out, rpc_result(m->id, res));
	} else if (strcmp(m->method, "tools/list") == 0) {
		ksend(k->out, rpc_result(m->id, json_tokener_parse("{\"tools\":[{\"name\":\"echo\"}]}")));
	} else if (strcmp(m->method, "test/notify") == 0) {
		/* A notification and a request of the server's own, then the answer. */
		ksend(k->out, rpc_notification("notifications/message",
					       json_tokener_parse("{\"level\":\"info\",\"data\":\"hello\"}")));
		evbuffer_add_printf(k->out, "{\"jsonrpc\":\"2.0\",\"id\":\"s1\",\"method\":\"sampling/createMessage\","
					    "\"params\":{}}\n");
		ksend(k->out, rpc_result(m->id, json_tokener_parse("{\"ok\":true}")));
	} else if (strcmp(m->method, "test/close") == 0) {
		k->dead = true;
	} else if (strcmp(m->method, "test/hang") == 0) {
		/* No answer. */
	} else {
		res = json_object_new_object();
		json_object_object_add(res, "echo", json_object_new_string(m->method));
		ksend(k->out, rpc_result(m->id, res));
	}
}

static void kconn_close(struct kconn *k)
{
	close(k->fd);
	k->fd = -1;
	k->dead = true;
}

static void kconn_service(struct kconn *k, short revents)
{
	if (revents & POLLOUT)
		evbuffer_write(k->out, k->fd);
	if (!(revents & (POLLIN | POLLHUP | POLLERR)))
		return;
	for (;;) {
		int n = evbuffer_read(k->in, k->fd, 65536);

		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			kconn_close(k);
			return;
		}
		if (n < 0)
			break;
	}
	while (!k->dead) {
		struct rpc_msg m;
		char detail[128];
		int r = frame_read(k->in, PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			break;
		if (r != 0) {
			fprintf(stderr, "the child sent a malformed message on a control connection: %s\n", detail);
			CHECK(0);
		}
		if (k->worker)
			kconn_worker(k, &m);
		else
			kconn_control(k, &m);
		rpc_msg_clear(&m);
	}
	if (k->dead && k->fd >= 0)
		kconn_close(k);
	else if (evbuffer_get_length(k->out))
		evbuffer_write(k->out, k->fd);
}

static void flush_fd(int fd, struct evbuffer *out)
{
	while (evbuffer_get_length(out) > 0) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };

		if (evbuffer_write(out, fd) < 0 && errno != EAGAIN && errno != EINTR)
			CHECK(0);
		if (evbuffer_get_length(out) > 0)
			CHECK(poll(&p, 1, IO_TIMEOUT_MS) == 1);
	}
}

/* control.connect: a socket pair, {"number": N} and the descriptor on fd 4. */
static void child_control_connect(struct child *c, struct rpc_msg *m)
{
	struct kconn *k = calloc(1, sizeof(*k));
	struct json_object *res = json_object_new_object();
	unsigned char num[8];
	uint64_t n = ++c->next_number;
	int sv[2];

	CHECK(k);
	CHECK(c->n_conns < ARRAY_SIZE(c->conns));
	c->connects++;
	if (K.refuse_connect) {
		free(k);
		json_object_put(res);
		ksend(c->out, rpc_error(m->id, RPC_APP_ERROR, KIND_UNAVAILABLE, "cannot create a socket pair"));
		return;
	}
	CHECK_EQ(sock_pair(0, sv), 0);
	CHECK_EQ(fd_set_nonblock(sv[0], 1), 0);
	k->fd = sv[0];
	k->in = evbuffer_new();
	k->out = evbuffer_new();
	c->conns[c->n_conns++] = k;
	for (int i = 0; i < 8; i++)
		num[i] = (unsigned char)(n >> (8 * i));
	json_object_object_add(res, "number", json_object_new_int64((int64_t)n));
	ksend(c->out, rpc_result(m->id, res));
	if (n % 2) {
		CHECK_EQ(sock_send_fd(c->fd4, sv[1], num, sizeof(num)), 0);
		flush_fd(c->fd3, c->out);
	} else {
		flush_fd(c->fd3, c->out);
		CHECK_EQ(sock_send_fd(c->fd4, sv[1], num, sizeof(num)), 0);
	}
	close(sv[1]);
}

/* Handles what is buffered (the hello's reader may have taken more than the reply). */
static void child_input(struct child *c)
{
	for (;;) {
		struct rpc_msg m;
		char detail[128];
		int r = frame_read(c->in, PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			break;
		CHECK_EQ(r, 0);
		if (m.type == RPC_REQUEST && strcmp(m.method, METHOD_CONTROL_CONNECT) == 0) {
			child_control_connect(c, &m);
		} else {
			fprintf(stderr, "unexpected message from the child on fd 3: %s\n", m.method ? m.method : "reply");
			CHECK(0);
		}
		rpc_msg_clear(&m);
	}
}

static void child_service(struct child *c, short revents)
{
	int n;

	if (revents & POLLOUT)
		evbuffer_write(c->out, c->fd3);
	if (!(revents & (POLLIN | POLLHUP | POLLERR)))
		return;
	n = evbuffer_read(c->in, c->fd3, 65536);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		c->eof = true;
		return;
	}
	child_input(c);
}

static void *keeper_main(void *arg)
{
	struct pollfd p[1024];
	void *who[1024];
	bool is_child[1024];
	char buf[64];

	for (;;) {
		size_t n = 0;

		pthread_mutex_lock(&K.lock);
		if (K.stop) {
			pthread_mutex_unlock(&K.lock);
			return NULL;
		}
		p[n] = (struct pollfd){ .fd = K.wake[0], .events = POLLIN };
		is_child[n] = false;
		who[n++] = NULL;
		for (size_t i = 0; i < K.n_children; i++) {
			struct child *c = K.children[i];

			if (!c->eof) {
				p[n] = (struct pollfd){ .fd = c->fd3,
							.events = POLLIN | (evbuffer_get_length(c->out) ? POLLOUT : 0) };
				is_child[n] = true;
				who[n++] = c;
			}
			for (size_t j = 0; j < c->n_conns && n < ARRAY_SIZE(p); j++) {
				struct kconn *k = c->conns[j];

				if (k->dead)
					continue;
				p[n] = (struct pollfd){ .fd = k->fd,
							.events = POLLIN | (evbuffer_get_length(k->out) ? POLLOUT : 0) };
				is_child[n] = false;
				who[n++] = k;
			}
		}
		pthread_mutex_unlock(&K.lock);
		if (poll(p, n, 100) <= 0)
			p[0].revents = 0;
		pthread_mutex_lock(&K.lock);
		for (size_t i = 0; i < K.n_children; i++)
			if (!K.children[i]->eof)
				child_input(K.children[i]);
		for (size_t i = 0; i < n; i++) {
			if (!p[i].revents)
				continue;
			if (i == 0) {
				while (read(K.wake[0], buf, sizeof(buf)) == (ssize_t)sizeof(buf))
					;
				continue;
			}
			if (is_child[i])
				child_service(who[i], p[i].revents);
			else if (!((struct kconn *)who[i])->dead)
				kconn_service(who[i], p[i].revents);
		}
		/* Output queued by the main thread (events) goes when the socket takes it. */
		for (size_t i = 0; i < K.n_children; i++)
			for (size_t j = 0; j < K.children[i]->n_conns; j++) {
				struct kconn *k = K.children[i]->conns[j];

				if (!k->dead && evbuffer_get_length(k->out))
					evbuffer_write(k->out, k->fd);
			}
		pthread_mutex_unlock(&K.lock);
	}
}

static void keeper_start(void)
{
	CHECK(pipe2(K.wake, O_CLOEXEC | O_NONBLOCK) == 0);
	CHECK(pthread_create(&K.thread, NULL, keeper_main, NULL) == 0);
	K.running = true;
}

static void keeper_stop(void)
{
	if (!K.running)
		return;
	pthread_mutex_lock(&K.lock);
	K.stop = true;
	pthread_mutex_unlock(&K.lock);
	kwake();
	pthread_join(K.thread, NULL);
	K.running = false;
}

/* Sends an event notification on every subscribed connection. */
static void keeper_emit(const char *type, struct json_object *data, int64_t timestamp)
{
	struct json_object *p = json_object_new_object(), *msg;

	json_object_object_add(p, "type", json_object_new_string(type));
	json_object_object_add(p, "data", data);
	time_json_add(p, PARAM_KEY_TIMESTAMP, PARAM_KEY_TIMESTAMP_UNIX, timestamp * 1000);
	msg = rpc_notification(METHOD_EVENT, p);
	pthread_mutex_lock(&K.lock);
	for (size_t i = 0; i < K.n_children; i++)
		for (size_t j = 0; j < K.children[i]->n_conns; j++) {
			struct kconn *k = K.children[i]->conns[j];

			if (!k->dead && k->subscribed)
				CHECK_EQ(frame_write(k->out, msg, PROTO_MAX_MESSAGE), 0);
		}
	pthread_mutex_unlock(&K.lock);
	json_object_put(msg);
	kwake();
}

/* Closes the keeper's end of every subscription: the child must come back. */
static void keeper_drop_subscriptions(struct child *c)
{
	pthread_mutex_lock(&K.lock);
	for (size_t j = 0; j < c->n_conns; j++)
		if (!c->conns[j]->dead && c->conns[j]->subscribed)
			kconn_close(c->conns[j]);
	pthread_mutex_unlock(&K.lock);
	kwake();
}

static int subscriptions(struct child *c)
{
	int n = 0;

	pthread_mutex_lock(&K.lock);
	for (size_t j = 0; j < c->n_conns; j++)
		n += !c->conns[j]->dead && c->conns[j]->subscribed;
	pthread_mutex_unlock(&K.lock);
	return n;
}

static int locked_int(const int *v)
{
	int n;

	pthread_mutex_lock(&K.lock);
	n = *v;
	pthread_mutex_unlock(&K.lock);
	return n;
}

#define WAIT_FOR(cond)                                                      \
	do {                                                                \
		int64_t _end = now_ms() + IO_TIMEOUT_MS;                    \
		while (!(cond)) {                                           \
			if (now_ms() > _end) {                              \
				fprintf(stderr, "timed out waiting for %s\n", #cond); \
				CHECK(0);                                   \
			}                                                   \
			usleep(10000);                                      \
		}                                                           \
	} while (0)

/* -- children -- */

/* RLIMIT_NOFILE for the next child (0: inherit). */
static rlim_t next_nofile;
/* The next child gets no listening socket on fd 5. */
static bool next_no_listener;

static void child_start(struct child *c, bool with_fds)
{
	int sv[2], dv[2], logfd, lfd = -1, bound;
	static int serial;
	rlim_t nofile = next_nofile;

	memset(c, 0, sizeof(*c));
	/* As the keeper does: the listening socket is bound by the parent. */
	if (with_fds && !next_no_listener) {
		lfd = listen_open("127.0.0.1", 0, &bound);
		CHECK(lfd >= 0);
	}
	next_no_listener = false;
	snprintf(c->log, sizeof(c->log), "%s/child-%d.log", tmpdir, ++serial);
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, dv) == 0);
	logfd = open(c->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	CHECK(logfd >= 0);
	c->pid = fork();
	CHECK(c->pid >= 0);
	if (c->pid == 0) {
		int devnull = open("/dev/null", O_RDONLY);
		int a = fcntl(sv[1], F_DUPFD_CLOEXEC, 10), b = fcntl(dv[1], F_DUPFD_CLOEXEC, 10);
		int l = lfd >= 0 ? fcntl(lfd, F_DUPFD_CLOEXEC, 10) : -1;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (nofile) {
			struct rlimit rl = { nofile, nofile };

			setrlimit(RLIMIT_NOFILE, &rl);
		}
		dup2(devnull, STDIN_FILENO);
		dup2(logfd, STDERR_FILENO);
		if (with_fds) {
			dup2(a, 3); /* dup2 clears close-on-exec */
			dup2(b, 4);
			if (l >= 0)
				dup2(l, CHILD_FD_LISTEN);
		} else {
			close(3);
			close(4);
		}
		execl(http_bin, http_bin, (char *)NULL);
		_exit(127);
	}
	close(sv[1]);
	close(dv[1]);
	close(logfd);
	fd_close(lfd);
	c->fd3 = sv[0];
	c->fd4 = dv[0];
	c->in = evbuffer_new();
	c->out = evbuffer_new();
}

static int child_wait(struct child *c)
{
	int status = 0;
	pid_t r = 0;

	for (int i = 0; i < 2000 && (r = waitpid(c->pid, &status, WNOHANG)) == 0; i++)
		usleep(10000);
	if (r == 0) {
		kill(c->pid, SIGKILL);
		waitpid(c->pid, &status, 0);
		fprintf(stderr, "child %d did not exit\n", (int)c->pid);
		CHECK(0);
	}
	c->pid = 0;
	if (c->fd3 >= 0)
		close(c->fd3);
	close(c->fd4);
	c->fd3 = c->fd4 = -1;
	CHECK(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static struct json_object *hello_params(const char *listen, const char *key, bool management)
{
	struct json_object *p = json_object_new_object();

	json_object_object_add(p, "version", json_object_new_int(PROTO_VERSION));
	json_object_object_add(p, "role", json_object_new_string(ROLE_HTTP));
	json_object_object_add(p, "log_level", json_object_new_string("debug"));
	json_object_object_add(p, "listen", json_object_new_string(listen));
	json_object_object_add(p, "api_key", json_object_new_string(key));
	json_object_object_add(p, "ui_dir", json_object_new_string(ui_dir));
	json_object_object_add(p, "management", json_object_new_boolean(management));
	json_object_object_add(p, "max_connections", json_object_new_int(256));
	json_object_object_add(p, "header_timeout_ms", json_object_new_int(10000));
	return p;
}

/* Sends the hello; returns the reply (the caller clears it). */
static void child_hello(struct child *c, struct json_object *params, struct rpc_msg *m)
{
	struct json_object *msg = rpc_request(METHOD_HELLO, params, 1);
	char detail[128];

	CHECK_EQ(frame_write_fd(c->fd3, msg, PROTO_MAX_MESSAGE, IO_TIMEOUT_MS), 0);
	json_object_put(msg);
	CHECK_EQ(frame_read_fd(c->fd3, c->in, PROTO_MAX_MESSAGE, m, IO_TIMEOUT_MS, detail, sizeof(detail)), 0);
	CHECK(m->type == RPC_RESULT || m->type == RPC_ERROR);
}

static void child_ready_ex(struct child *c, bool management, bool serve)
{
	struct json_object *v;
	struct rpc_msg m;

	child_start(c, true);
	child_hello(c, hello_params("127.0.0.1:0", KEY, management), &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(json_object_object_get_ex(m.result, "version", &v));
	CHECK_EQ(json_object_get_int(v), PROTO_VERSION);
	CHECK(json_object_object_get_ex(m.result, "pid", &v));
	CHECK_EQ(json_object_get_int(v), c->pid);
	CHECK(json_object_object_get_ex(m.result, "landlock", &v));
	printf("# child pid %d, Landlock: %s\n", (int)c->pid, json_object_get_string(v));
	CHECK(json_object_object_get_ex(m.result, "port", &v));
	c->port = json_object_get_int(v);
	CHECK(c->port > 0 && c->port < 65536);
	rpc_msg_clear(&m);
	if (!serve)
		return;
	CHECK_EQ(fd_set_nonblock(c->fd3, 1), 0);
	pthread_mutex_lock(&K.lock);
	K.children[K.n_children++] = c;
	pthread_mutex_unlock(&K.lock);
}

static void child_ready(struct child *c, bool management)
{
	child_ready_ex(c, management, true);
}

static bool log_has(struct child *c, const char *needle)
{
	size_t len;
	char *log = read_file(c->log, &len);
	bool found = log && strstr(log, needle);

	free(log);
	return found;
}

/* -- HTTP client (raw sockets) -- */

struct resp {
	int status;
	char head[16384];	/* "\r\n" + the header lines */
	char *body;
	size_t body_len;
};

static int tcp_connect(int port, int rcvbuf)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	CHECK(fd >= 0);
	if (rcvbuf > 0)
		CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) == 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	return fd;
}

static void send_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		CHECK(n > 0);
		data += n;
		len -= (size_t)n;
	}
}

static void resp_clear(struct resp *r)
{
	free(r->body);
	memset(r, 0, sizeof(*r));
}

/* The value of a response header (first one), or NULL. */
static const char *resp_header(const struct resp *r, const char *name, char *buf, size_t len)
{
	size_t nlen = strlen(name);

	for (const char *p = r->head; (p = strstr(p, "\r\n")); p += 2) {
		if (strncasecmp(p + 2, name, nlen) == 0 && p[2 + nlen] == ':') {
			const char *v = p + 3 + nlen, *end;

			while (*v == ' ')
				v++;
			end = strstr(v, "\r\n");
			snprintf(buf, len, "%.*s", (int)(end ? end - v : (ptrdiff_t)strlen(v)), v);
			return buf;
		}
	}
	return NULL;
}

/* Moves the complete chunks of raw into out; 1 once the last chunk came. */
static int dechunk(struct evbuffer *raw, struct evbuffer *out)
{
	for (;;) {
		size_t eol_len = 0, size;
		struct evbuffer_ptr eol = evbuffer_search_eol(raw, NULL, &eol_len, EVBUFFER_EOL_CRLF_STRICT);
		char line[32];

		if (eol.pos < 0)
			return 0;
		CHECK(eol.pos < (ev_ssize_t)sizeof(line));
		evbuffer_copyout(raw, line, (size_t)eol.pos);
		line[eol.pos] = '\0';
		size = strtoul(line, NULL, 16);
		if (evbuffer_get_length(raw) < (size_t)eol.pos + 2 + size + 2)
			return 0;
		evbuffer_drain(raw, (size_t)eol.pos + 2);
		if (size == 0)
			return 1;
		evbuffer_remove_buffer(raw, out, size);
		evbuffer_drain(raw, 2);
	}
}

/* Splits a complete response (headers and all of the body). */
static void resp_parse(struct evbuffer *all, struct resp *r, bool with_body)
{
	size_t len = evbuffer_get_length(all), hlen;
	char *data = (char *)evbuffer_pullup(all, -1), *end, buf[64];
	struct evbuffer *body = evbuffer_new();

	CHECK(len > 12 && data);
	end = memmem(data, len, "\r\n\r\n", 4);
	CHECK(end);
	CHECK(sscanf(data, "HTTP/1.%*d %d", &r->status) == 1);
	hlen = (size_t)(end - data);
	{
		char *first = memmem(data, hlen + 2, "\r\n", 2);

		snprintf(r->head, sizeof(r->head), "%.*s\r\n", (int)(hlen - (size_t)(first - data)), first);
	}
	evbuffer_drain(all, hlen + 4);
	if (!with_body)
		; /* a stream: the caller reads the body */
	else if (resp_header(r, "Transfer-Encoding", buf, sizeof(buf)) && strcasecmp(buf, "chunked") == 0)
		CHECK_EQ(dechunk(all, body), 1);
	else
		evbuffer_add_buffer(body, all);
	r->body_len = evbuffer_get_length(body);
	r->body = malloc(r->body_len + 1);
	CHECK(r->body);
	evbuffer_remove(body, r->body, r->body_len);
	r->body[r->body_len] = '\0';
	evbuffer_free(body);
}

/*
 * One request on its own connection (Connection: close). host NULL: the
 * right Host; "": none. headers: more header lines, each ending in CRLF.
 */
static void http_req(int port, const char *method, const char *path, const char *host, const char *headers,
		     const char *body, size_t body_len, struct resp *r)
{
	struct evbuffer *req = evbuffer_new(), *all = evbuffer_new();
	int fd = tcp_connect(port, 0);
	int64_t end = now_ms() + IO_TIMEOUT_MS;

	memset(r, 0, sizeof(*r));
	evbuffer_add_printf(req, "%s %s HTTP/1.1\r\n", method, path);
	if (!host)
		evbuffer_add_printf(req, "Host: 127.0.0.1:%d\r\n", port);
	else if (*host)
		evbuffer_add_printf(req, "Host: %s\r\n", host);
	evbuffer_add_printf(req, "Connection: close\r\n%s", headers ? headers : "");
	if (body)
		evbuffer_add_printf(req, "Content-Length: %zu\r\n", body_len);
	evbuffer_add(req, "\r\n", 2);
	if (body)
		evbuffer_add(req, body, body_len);
	send_all(fd, (const char *)evbuffer_pullup(req, -1), evbuffer_get_length(req));
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int n;

		CHECK(poll(&p, 1, (int)(end - now_ms())) == 1);
		n = evbuffer_read(all, fd, 65536);
		if (n == 0 || (n < 0 && errno == ECONNRESET))
			break;
		CHECK(n > 0 || errno == EINTR);
	}
	close(fd);
	resp_parse(all, r, true);
	evbuffer_free(req);
	evbuffer_free(all);
}

static void get(int port, const char *path, const char *headers, struct resp *r)
{
	http_req(port, "GET", path, NULL, headers, NULL, 0, r);
}

static void post(int port, const char *path, const char *headers, const char *body, struct resp *r)
{
	http_req(port, "POST", path, NULL, headers, body, body ? strlen(body) : 0, r);
}

static struct json_object *resp_json(const struct resp *r)
{
	struct json_object *o = json_tokener_parse(r->body);

	if (!o)
		fprintf(stderr, "not JSON (HTTP %d): %s\n", r->status, r->body);
	CHECK(o);
	return o;
}

static struct json_object *path_get(struct json_object *o, const char *a, const char *b)
{
	struct json_object *v = NULL;

	CHECK(json_object_object_get_ex(o, a, &v));
	if (b)
		CHECK(json_object_object_get_ex(v, b, &v));
	return v;
}

static const char *path_str(struct json_object *o, const char *a, const char *b)
{
	struct json_object *v = path_get(o, a, b);

	CHECK(json_object_is_type(v, json_type_string));
	return json_object_get_string(v);
}

/* An API error: status, the envelope, the kind. */
static void check_api_error(const struct resp *r, int status, const char *kind)
{
	struct json_object *o;
	char buf[64];

	if (r->status != status)
		fprintf(stderr, "expected HTTP %d, got %d: %s\n", status, r->status, r->body);
	CHECK_EQ(r->status, status);
	CHECK(resp_header(r, "Content-Type", buf, sizeof(buf)) && strcmp(buf, "application/json") == 0);
	CHECK(resp_header(r, "Cache-Control", buf, sizeof(buf)) && strcmp(buf, "no-store") == 0);
	o = resp_json(r);
	CHECK(!json_object_get_boolean(path_get(o, "success", NULL)));
	/* {"success": false, "error": message, "kind": kind}: the quickstart's
	 * UI shows error.error. */
	CHECK_EQ(json_object_object_length(o), 3);
	CHECK(strcmp(path_str(o, "kind", NULL), kind) == 0);
	CHECK(json_object_is_type(path_get(o, "error", NULL), json_type_string));
	CHECK(*path_str(o, "error", NULL));
	json_object_put(o);
}

/* A success envelope; returns data (a new reference). */
static struct json_object *check_api_ok(const struct resp *r)
{
	struct json_object *o, *data;

	if (r->status != 200)
		fprintf(stderr, "expected HTTP 200, got %d: %s\n", r->status, r->body);
	CHECK_EQ(r->status, 200);
	o = resp_json(r);
	CHECK(json_object_get_boolean(path_get(o, "success", NULL)));
	data = json_object_get(path_get(o, "data", NULL));
	json_object_put(o);
	return data;
}

/* -- streams (SSE) -- */

struct stream {
	int fd;
	int status;
	struct resp head;
	struct evbuffer *raw, *data;
	bool chunked, ended;
};

static void stream_open(struct stream *s, int port, const char *path, const char *headers)
{
	struct evbuffer *req = evbuffer_new();
	int64_t end = now_ms() + IO_TIMEOUT_MS;
	char buf[64];

	memset(s, 0, sizeof(*s));
	s->raw = evbuffer_new();
	s->data = evbuffer_new();
	s->fd = tcp_connect(port, 0);
	evbuffer_add_printf(req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n", path, port, headers);
	send_all(s->fd, (const char *)evbuffer_pullup(req, -1), evbuffer_get_length(req));
	evbuffer_free(req);
	for (;;) {
		struct evbuffer_ptr p = evbuffer_search(s->raw, "\r\n\r\n", 4, NULL);
		struct pollfd pf = { .fd = s->fd, .events = POLLIN };
		int n;

		if (p.pos >= 0) {
			struct evbuffer *head = evbuffer_new();

			evbuffer_remove_buffer(s->raw, head, (size_t)p.pos + 4);
			evbuffer_add(head, "", 0);
			resp_parse(head, &s->head, false);
			evbuffer_free(head);
			break;
		}
		CHECK(poll(&pf, 1, (int)(end - now_ms())) == 1);
		n = evbuffer_read(s->raw, s->fd, 65536);
		if (n == 0) {
			s->ended = true;
			CHECK(evbuffer_get_length(s->raw) > 0);
			resp_parse(s->raw, &s->head, true);
			break;
		}
		CHECK(n > 0);
	}
	s->status = s->head.status;
	s->chunked = resp_header(&s->head, "Transfer-Encoding", buf, sizeof(buf)) && strcasecmp(buf, "chunked") == 0;
}

static void stream_close(struct stream *s)
{
	close(s->fd);
	evbuffer_free(s->raw);
	evbuffer_free(s->data);
	resp_clear(&s->head);
}

/* The next event (comments skipped): 0, -ETIMEDOUT, or -EPIPE at the end. */
static int stream_next(struct stream *s, int timeout_ms, char *event, size_t elen, char **data)
{
	int64_t end = now_ms() + timeout_ms;

	for (;;) {
		struct evbuffer_ptr p;
		struct pollfd pf = { .fd = s->fd, .events = POLLIN };
		int n;

		/* Headers and the first chunks may have come in one read. */
		if (s->chunked) {
			if (dechunk(s->raw, s->data))
				s->ended = true;
		} else {
			evbuffer_add_buffer(s->data, s->raw);
		}
		p = evbuffer_search(s->data, "\n\n", 2, NULL);
		if (p.pos >= 0) {
			size_t len = (size_t)p.pos + 2;
			char *block = malloc(len + 1), *line, *save = NULL;

			CHECK(block);
			evbuffer_remove(s->data, block, len);
			block[len] = '\0';
			event[0] = '\0';
			*data = NULL;
			for (line = strtok_r(block, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
				if (strncmp(line, "event: ", 7) == 0)
					snprintf(event, elen, "%s", line + 7);
				else if (strncmp(line, "data: ", 6) == 0) {
					CHECK(!*data); /* one data line per event */
					*data = strdup(line + 6);
				}
			}
			free(block);
			if (!event[0] && !*data)
				continue; /* a comment */
			return 0;
		}
		if (s->ended)
			return -EPIPE;
		if (now_ms() >= end)
			return -ETIMEDOUT;
		if (poll(&pf, 1, (int)(end - now_ms())) != 1)
			return -ETIMEDOUT;
		n = evbuffer_read(s->raw, s->fd, 65536);
		if (n <= 0)
			s->ended = true;
	}
}

/* -- the tests -- */

static void test_not_started_by_keeper(void)
{
	struct child c;

	TEST("without sockets on fd 3 and fd 4 the child refuses to run");
	child_start(&c, false);
	CHECK_EQ(child_wait(&c), 1);
	CHECK(log_has(&c, "must be started by mcpkeeperd"));
	evbuffer_free(c.in);
	evbuffer_free(c.out);
}

static void test_hello_refused(void)
{
	struct child c;
	struct rpc_msg m;

	TEST("hello with a short API key: error invalid_params, exit 1");
	child_start(&c, true);
	child_hello(&c, hello_params("127.0.0.1:0", "short-key", true), &m);
	CHECK_EQ(m.type, RPC_ERROR);
	CHECK(strcmp(rpc_error_kind(&m), KIND_INVALID_PARAMS) == 0);
	rpc_msg_clear(&m);
	CHECK_EQ(child_wait(&c), 1);
	CHECK(!log_has(&c, "short-key"));
	evbuffer_free(c.in);
	evbuffer_free(c.out);

	TEST("hello with a listen address that is not loopback: refused");
	child_start(&c, true);
	child_hello(&c, hello_params("0.0.0.0:0", KEY, true), &m);
	CHECK_EQ(m.type, RPC_ERROR);
	CHECK(strcmp(rpc_error_kind(&m), KIND_INVALID_PARAMS) == 0);
	rpc_msg_clear(&m);
	CHECK_EQ(child_wait(&c), 1);
	evbuffer_free(c.in);
	evbuffer_free(c.out);
}

static void test_keeper_bugs(void)
{
	struct child c;
	unsigned char num[8] = { 1 };

	TEST("a malformed message on fd 3 is a keeper bug: exit 1");
	child_ready_ex(&c, true, false);
	CHECK_EQ(fd_set_nonblock(c.fd3, 0), 0);
	CHECK_EQ(write(c.fd3, "{not json\n", 10), 10);
	CHECK_EQ(child_wait(&c), 1);
	CHECK(log_has(&c, "keeper sent a malformed message"));
	evbuffer_free(c.in);
	evbuffer_free(c.out);

	TEST("a reply to no request on fd 3: exit 1");
	child_ready_ex(&c, true, false);
	CHECK_EQ(fd_set_nonblock(c.fd3, 0), 0);
	{
		static const char stray[] = "{\"jsonrpc\":\"2.0\",\"id\":99,\"result\":{}}\n";

		CHECK_EQ(write(c.fd3, stray, sizeof(stray) - 1), (ssize_t)sizeof(stray) - 1);
	}
	CHECK_EQ(child_wait(&c), 1);
	evbuffer_free(c.in);
	evbuffer_free(c.out);

	TEST("a packet on fd 4 without a descriptor: exit 1");
	child_ready_ex(&c, true, false);
	CHECK_EQ(send(c.fd4, num, sizeof(num), 0), (ssize_t)sizeof(num));
	CHECK_EQ(child_wait(&c), 1);
	CHECK(log_has(&c, "without its number, flags or descriptor"));
	evbuffer_free(c.in);
	evbuffer_free(c.out);
}

static void test_bind_in_use(int port)
{
	struct child c;
	struct rpc_msg m;
	char listen[64], addr[64];
	const char *msg;

	/* The keeper binds; the child only checks what fd 5 is. */
	TEST("a hello naming another port than fd 5's: an error (unavailable), exit 1");
	snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
	child_start(&c, true);
	child_hello(&c, hello_params(listen, KEY, true), &m);
	CHECK_EQ(m.type, RPC_ERROR);
	CHECK_EQ(rpc_error_code(&m), RPC_APP_ERROR);
	CHECK(strcmp(rpc_error_kind(&m), KIND_UNAVAILABLE) == 0);
	msg = rpc_error_message(&m);
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	printf("# %s\n", msg);
	CHECK(strstr(msg, addr));
	CHECK(strstr(msg, strerror(EADDRNOTAVAIL)));
	rpc_msg_clear(&m);
	CHECK_EQ(child_wait(&c), 1);
	evbuffer_free(c.in);
	evbuffer_free(c.out);

	TEST("no listening socket on fd 5: an error (unavailable), exit 1");
	next_no_listener = true;
	child_start(&c, true);
	child_hello(&c, hello_params("127.0.0.1:0", KEY, true), &m);
	CHECK_EQ(m.type, RPC_ERROR);
	CHECK(strcmp(rpc_error_kind(&m), KIND_UNAVAILABLE) == 0);
	printf("# %s\n", rpc_error_message(&m));
	CHECK(strstr(rpc_error_message(&m), "fd 5 is not the listening socket"));
	rpc_msg_clear(&m);
	CHECK_EQ(child_wait(&c), 1);
	evbuffer_free(c.in);
	evbuffer_free(c.out);
}

static void test_rebinding(struct child *c)
{
	struct resp r;
	char host[64], origin[128], buf[128];

	TEST("Host must name the listen address and port");
	http_req(c->port, "GET", "/api/v1/servers", "evil.example", KEY_HEADER, NULL, 0, &r);
	check_api_error(&r, 403, KIND_FORBIDDEN);
	resp_clear(&r);
	snprintf(host, sizeof(host), "127.0.0.1:%d", c->port + 1);
	http_req(c->port, "GET", "/", host, NULL, NULL, 0, &r);
	check_api_error(&r, 403, KIND_FORBIDDEN);
	resp_clear(&r);
	http_req(c->port, "GET", "/", "127.0.0.1", NULL, NULL, 0, &r);
	check_api_error(&r, 403, KIND_FORBIDDEN);
	resp_clear(&r);
	http_req(c->port, "GET", "/", "", NULL, NULL, 0, &r);
	check_api_error(&r, 403, KIND_FORBIDDEN);
	resp_clear(&r);
	snprintf(buf, sizeof(buf), "Host: 127.0.0.1:%d\r\n", c->port);
	http_req(c->port, "GET", "/", NULL, buf, NULL, 0, &r); /* two Host headers */
	check_api_error(&r, 403, KIND_FORBIDDEN);
	resp_clear(&r);

	TEST("localhost:PORT is accepted for 127.0.0.1");
	snprintf(host, sizeof(host), "localhost:%d", c->port);
	http_req(c->port, "GET", "/api/v1/servers", host, KEY_HEADER, NULL, 0, &r);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);

	TEST("an Origin must be http:// and the Host");
	snprintf(origin, sizeof(origin), "Origin: http://evil.example\r\n" KEY_HEADER);
	get(c->port, "/api/v1/servers", origin, &r);
	check_api_error(&r, 403, KIND_FORBIDDEN);
	resp_clear(&r);
	snprintf(origin, sizeof(origin), "Origin: https://127.0.0.1:%d\r\n" KEY_HEADER, c->port);
	get(c->port, "/api/v1/servers", origin, &r);
	check_api_error(&r, 403, KIND_FORBIDDEN);
	resp_clear(&r);
	snprintf(origin, sizeof(origin), "Origin: null\r\n" KEY_HEADER);
	get(c->port, "/api/v1/servers", origin, &r);
	check_api_error(&r, 403, KIND_FORBIDDEN);
	resp_clear(&r);
	snprintf(origin, sizeof(origin), "Origin: http://localhost:%d\r\n" KEY_HEADER, c->port);
	get(c->port, "/api/v1/servers", origin, &r); /* Host is 127.0.0.1:PORT */
	check_api_error(&r, 403, KIND_FORBIDDEN);
	resp_clear(&r);
	snprintf(origin, sizeof(origin), "Origin: http://127.0.0.1:%d\r\n" KEY_HEADER, c->port);
	get(c->port, "/api/v1/servers", origin, &r);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);
}

static void test_api_key(struct child *c)
{
	struct resp r;
	char path[160];

	TEST("API key: missing or wrong is 401; header and query are accepted");
	get(c->port, "/api/v1/servers", NULL, &r);
	check_api_error(&r, 401, "unauthorized");
	resp_clear(&r);
	get(c->port, "/api/v1/servers", "X-API-Key: " KEY "x\r\n", &r);
	check_api_error(&r, 401, "unauthorized");
	resp_clear(&r);
	get(c->port, "/api/v1/servers", "X-API-Key: test-api-key-0123456789abcdefghijklmnopqrstuvwxyZ\r\n", &r);
	check_api_error(&r, 401, "unauthorized");
	resp_clear(&r);
	get(c->port, "/api/v1/servers?apikey=nope", NULL, &r);
	check_api_error(&r, 401, "unauthorized");
	resp_clear(&r);
	get(c->port, "/events", NULL, &r);
	check_api_error(&r, 401, "unauthorized");
	resp_clear(&r);
	post(c->port, "/mcp/alpha", "Accept: application/json\r\n", "{}", &r);
	check_api_error(&r, 401, "unauthorized");
	resp_clear(&r);
	get(c->port, "/api/v1/servers", KEY_HEADER, &r);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);
	snprintf(path, sizeof(path), "/api/v1/servers?apikey=%s", KEY);
	get(c->port, path, NULL, &r);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);
	snprintf(path, sizeof(path), "/api/v1/servers?x=1&apikey=%s&y=2", KEY);
	get(c->port, path, NULL, &r);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);
}

static void check_static(struct child *c, const char *path, const char *ctype, const char *body)
{
	struct resp r;
	char buf[256];

	get(c->port, path, NULL, &r);
	if (r.status != 200)
		fprintf(stderr, "GET %s: HTTP %d %s\n", path, r.status, r.body);
	CHECK_EQ(r.status, 200);
	CHECK(resp_header(&r, "Content-Type", buf, sizeof(buf)) && strcmp(buf, ctype) == 0);
	CHECK(resp_header(&r, "Cache-Control", buf, sizeof(buf)) && strcmp(buf, "no-cache") == 0);
	CHECK(resp_header(&r, "Content-Security-Policy", buf, sizeof(buf)) && strcmp(buf, CSP_UI) == 0);
	CHECK(resp_header(&r, "X-Content-Type-Options", buf, sizeof(buf)) && strcmp(buf, "nosniff") == 0);
	if (body)
		CHECK(r.body_len == strlen(body) && memcmp(r.body, body, r.body_len) == 0);
	resp_clear(&r);
}

static void test_static(struct child *c)
{
	struct json_object *o;
	struct resp r;
	char buf[64];

	TEST("static UI: no key needed, right types, no-cache, strict CSP, nosniff");
	check_static(c, "/", "text/html; charset=utf-8", INDEX_HTML);
	check_static(c, "/ui/app.js", "text/javascript; charset=utf-8", APP_JS);
	check_static(c, "/ui/style.css", "text/css; charset=utf-8", STYLE_CSS);

	TEST("/openapi.json is public and is the OpenAPI document");
	check_static(c, "/openapi.json", "application/json", NULL);
	get(c->port, "/openapi.json", NULL, &r);
	o = resp_json(&r);
	CHECK(strncmp(path_str(o, "openapi", NULL), "3.0", 3) == 0);
	CHECK(json_object_object_get_ex(path_get(o, "paths", NULL), "/api/v1/servers/{id}/logout", NULL));
	CHECK(json_object_object_get_ex(path_get(o, "paths", NULL), "/events", NULL));
	CHECK(json_object_object_get_ex(path_get(o, "paths", NULL), "/mcp/{name}", NULL));
	json_object_put(o);
	resp_clear(&r);

	TEST("only the allow-listed files: nothing else under /ui, no traversal");
	get(c->port, "/ui/secret.txt", NULL, &r);
	check_api_error(&r, 401, "unauthorized");
	resp_clear(&r);
	get(c->port, "/ui/secret.txt", KEY_HEADER, &r);
	check_api_error(&r, 404, KIND_NOT_FOUND);
	resp_clear(&r);
	get(c->port, "/ui/../secret.txt", KEY_HEADER, &r);
	check_api_error(&r, 404, KIND_NOT_FOUND);
	resp_clear(&r);
	get(c->port, "/ui/%2e%2e/secret.txt", KEY_HEADER, &r);
	check_api_error(&r, 404, KIND_NOT_FOUND);
	resp_clear(&r);
	get(c->port, "/index.html", KEY_HEADER, &r);
	check_api_error(&r, 404, KIND_NOT_FOUND);
	resp_clear(&r);

	TEST("a static file with the wrong method: 405 with Allow");
	post(c->port, "/", NULL, "x", &r);
	check_api_error(&r, 405, "method_not_allowed");
	CHECK(resp_header(&r, "Allow", buf, sizeof(buf)) && strcmp(buf, "GET") == 0);
	resp_clear(&r);
}

static void test_servers(struct child *c)
{
	struct json_object *data, *want = canned_servers();
	struct resp r;
	char buf[64];

	TEST("GET /api/v1/servers: the keeper's servers array as is");
	get(c->port, "/api/v1/servers", KEY_HEADER, &r);
	CHECK(resp_header(&r, "Content-Type", buf, sizeof(buf)) && strcmp(buf, "application/json") == 0);
	CHECK(resp_header(&r, "Cache-Control", buf, sizeof(buf)) && strcmp(buf, "no-store") == 0);
	data = check_api_ok(&r);
	CHECK(json_object_equal(data, want));
	json_object_put(data);
	resp_clear(&r);

	TEST("GET /api/v1/servers/{id}: one server; percent-decoded name; 404 unknown");
	get(c->port, "/api/v1/servers/beta", KEY_HEADER, &r);
	data = check_api_ok(&r);
	CHECK(json_object_equal(data, json_object_array_get_idx(want, 1)));
	json_object_put(data);
	resp_clear(&r);
	get(c->port, "/api/v1/servers/al%70ha", KEY_HEADER, &r);
	data = check_api_ok(&r);
	CHECK(strcmp(path_str(data, "name", NULL), "alpha") == 0);
	json_object_put(data);
	resp_clear(&r);
	get(c->port, "/api/v1/servers/gamma", KEY_HEADER, &r);
	check_api_error(&r, 404, KIND_NOT_FOUND);
	resp_clear(&r);
	get(c->port, "/api/v1/servers/bad%20name", KEY_HEADER, &r);
	check_api_error(&r, 404, KIND_NOT_FOUND);
	resp_clear(&r);
	get(c->port, "/api/v1/servers/a%00b", KEY_HEADER, &r);
	check_api_error(&r, 404, KIND_NOT_FOUND);
	resp_clear(&r);
	json_object_put(want);

	TEST("wrong method on a known path: 405 with Allow; unknown path: 404");
	http_req(c->port, "DELETE", "/api/v1/servers", NULL, KEY_HEADER, NULL, 0, &r);
	check_api_error(&r, 405, "method_not_allowed");
	CHECK(resp_header(&r, "Allow", buf, sizeof(buf)) && strcmp(buf, "GET, POST") == 0);
	resp_clear(&r);
	http_req(c->port, "PUT", "/api/v1/servers/alpha", NULL, KEY_HEADER, "{}", 2, &r);
	check_api_error(&r, 405, "method_not_allowed");
	CHECK(resp_header(&r, "Allow", buf, sizeof(buf)) && strcmp(buf, "GET, PATCH, DELETE") == 0);
	resp_clear(&r);

	TEST("POST and PATCH of servers: a body that is not a JSON object, or no name, never reaches the keeper");
	http_req(c->port, "POST", "/api/v1/servers", NULL, KEY_HEADER, "[1]", 3, &r);
	check_api_error(&r, 400, KIND_INVALID_REQUEST);
	resp_clear(&r);
	http_req(c->port, "POST", "/api/v1/servers", NULL, KEY_HEADER, "{\"url\": \"https://x\"} x", 22, &r);
	check_api_error(&r, 400, KIND_INVALID_REQUEST);
	resp_clear(&r);
	http_req(c->port, "POST", "/api/v1/servers", NULL, KEY_HEADER, "{\"url\": \"https://x\"}", 20, &r);
	check_api_error(&r, 400, KIND_INVALID_PARAMS);
	resp_clear(&r);
	http_req(c->port, "PATCH", "/api/v1/servers/alpha", NULL, KEY_HEADER, "", 0, &r);
	check_api_error(&r, 400, KIND_INVALID_REQUEST);
	resp_clear(&r);
	get(c->port, "/api/v1/servers/alpha/login", KEY_HEADER, &r);
	check_api_error(&r, 405, "method_not_allowed");
	CHECK(resp_header(&r, "Allow", buf, sizeof(buf)) && strcmp(buf, "POST") == 0);
	resp_clear(&r);
	http_req(c->port, "PUT", "/mcp/alpha", NULL, KEY_HEADER, "{}", 2, &r);
	check_api_error(&r, 405, "method_not_allowed");
	CHECK(resp_header(&r, "Allow", buf, sizeof(buf)) && strcmp(buf, "GET, POST, DELETE") == 0);
	resp_clear(&r);
	http_req(c->port, "OPTIONS", "/api/v1/servers", NULL, KEY_HEADER, NULL, 0, &r);
	check_api_error(&r, 405, "method_not_allowed");
	resp_clear(&r);
	get(c->port, "/api/v2/servers", KEY_HEADER, &r);
	check_api_error(&r, 404, KIND_NOT_FOUND);
	resp_clear(&r);
	get(c->port, "/api/v1/servers/alpha/extra", KEY_HEADER, &r);
	check_api_error(&r, 404, KIND_NOT_FOUND);
	resp_clear(&r);
}

static void test_login_logout(struct child *c)
{
	static const struct {
		const char *server;
		int status;
		const char *kind;
	} errors[] = {
		{ "beta", 400, KIND_NOT_OAUTH },     { "ghost", 404, KIND_NOT_FOUND },
		{ "locked", 403, KIND_FORBIDDEN },   { "busy1", 409, KIND_BUSY },
		{ "denied", 502, KIND_LOGIN_FAILED }, { "odd", 500, "something_new" },
	};
	struct json_object *data;
	struct resp r;
	char path[96];

	TEST("POST login: auth.login with wait false; data {action, server, url}");
	post(c->port, "/api/v1/servers/alpha/login", KEY_HEADER, NULL, &r);
	data = check_api_ok(&r);
	CHECK(strcmp(path_str(data, "action", NULL), "login") == 0);
	CHECK(strcmp(path_str(data, "server", NULL), "alpha") == 0);
	CHECK(strcmp(path_str(data, "url", NULL), LOGIN_URL) == 0);
	CHECK_EQ(json_object_object_length(data), 3);
	json_object_put(data);
	resp_clear(&r);
	pthread_mutex_lock(&K.lock);
	CHECK(K.login_wait_false);
	pthread_mutex_unlock(&K.lock);

	TEST("the keeper's error kinds map to HTTP statuses");
	for (size_t i = 0; i < ARRAY_SIZE(errors); i++) {
		snprintf(path, sizeof(path), "/api/v1/servers/%s/login", errors[i].server);
		post(c->port, path, KEY_HEADER, NULL, &r);
		check_api_error(&r, errors[i].status, errors[i].kind);
		resp_clear(&r);
	}

	TEST("a malformed reply from the keeper: 500, and the child carries on");
	post(c->port, "/api/v1/servers/garbled/login", KEY_HEADER, NULL, &r);
	check_api_error(&r, 500, KIND_INTERNAL);
	resp_clear(&r);
	CHECK(log_has(c, "keeper sent a malformed reply to auth.login"));

	TEST("a body is optional: empty or a JSON object; anything else 400");
	post(c->port, "/api/v1/servers/alpha/login", KEY_HEADER, "{\"anything\": [1, 2]}", &r);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);
	post(c->port, "/api/v1/servers/alpha/login", KEY_HEADER, "  \r\n", &r);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);
	post(c->port, "/api/v1/servers/alpha/login", KEY_HEADER, "not json", &r);
	check_api_error(&r, 400, KIND_INVALID_REQUEST);
	resp_clear(&r);
	post(c->port, "/api/v1/servers/alpha/logout", KEY_HEADER, "[1]", &r);
	check_api_error(&r, 400, KIND_INVALID_REQUEST);
	resp_clear(&r);
	post(c->port, "/api/v1/servers/alpha/logout", KEY_HEADER, "{} {}", &r);
	check_api_error(&r, 400, KIND_INVALID_REQUEST);
	resp_clear(&r);

	TEST("POST logout: the keeper's result next to action");
	post(c->port, "/api/v1/servers/alpha/logout", KEY_HEADER, "{}", &r);
	data = check_api_ok(&r);
	CHECK(strcmp(path_str(data, "action", NULL), "logout") == 0);
	CHECK(strcmp(path_str(data, "server", NULL), "alpha") == 0);
	CHECK(json_object_get_boolean(path_get(data, "had_token", NULL)));
	CHECK(!json_object_get_boolean(path_get(data, "revoked", NULL)));
	CHECK(strcmp(path_str(data, "revoke_error", NULL), "HTTP 503") == 0);
	json_object_put(data);
	resp_clear(&r);
	post(c->port, "/api/v1/servers/beta/logout", KEY_HEADER, NULL, &r);
	check_api_error(&r, 400, KIND_NOT_OAUTH);
	resp_clear(&r);
	post(c->port, "/api/v1/servers/ghost/logout", KEY_HEADER, NULL, &r);
	check_api_error(&r, 404, KIND_NOT_FOUND);
	resp_clear(&r);

	TEST("a body over 1 MiB: 413");
	{
		size_t len = 1024 * 1024 + 1;
		char *big = malloc(len);

		CHECK(big);
		memset(big, ' ', len);
		big[0] = '{';
		big[len - 1] = '}';
		http_req(c->port, "POST", "/api/v1/servers/alpha/login", NULL, KEY_HEADER, big, len, &r);
		CHECK_EQ(r.status, 413);
		resp_clear(&r);
		/* Exactly 1 MiB is fine. */
		http_req(c->port, "POST", "/api/v1/servers/alpha/login", NULL, KEY_HEADER, big, len - 1, &r);
		check_api_error(&r, 400, KIND_INVALID_REQUEST);
		resp_clear(&r);
		big[len - 2] = '}';
		http_req(c->port, "POST", "/api/v1/servers/alpha/login", NULL, KEY_HEADER, big, len - 1, &r);
		CHECK_EQ(r.status, 200);
		resp_clear(&r);
		free(big);
	}
}

/* Sends a request and closes the connection without reading the answer. */
static void send_and_leave(int port, const char *method, const char *path, const char *headers, const char *body)
{
	char req[2048];
	int fd = tcp_connect(port, 0), n;

	n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: %zu\r\n\r\n%s",
		     method, path, port, headers, body ? strlen(body) : 0, body ? body : "");
	send_all(fd, req, (size_t)n);
	usleep(100000);
	close(fd);
}

static void test_keeper_trouble(struct child *c)
{
	struct resp r;
	int connects;

	TEST("the keeper refuses control.connect: 503 unavailable");
	pthread_mutex_lock(&K.lock);
	K.refuse_connect = true;
	pthread_mutex_unlock(&K.lock);
	get(c->port, "/api/v1/servers", KEY_HEADER, &r);
	check_api_error(&r, 503, KIND_UNAVAILABLE);
	resp_clear(&r);
	pthread_mutex_lock(&K.lock);
	K.refuse_connect = false;
	pthread_mutex_unlock(&K.lock);
	get(c->port, "/api/v1/servers", KEY_HEADER, &r);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);

	TEST("a client that leaves before the keeper answers: the call is dropped");
	connects = locked_int(&c->connects);
	send_and_leave(c->port, "POST", "/api/v1/servers/hang/login", KEY_HEADER, NULL);
	WAIT_FOR(log_has(c, "a client went away before the keeper answered"));
	CHECK_EQ(locked_int(&c->connects), connects + 1);
	get(c->port, "/api/v1/servers/alpha", KEY_HEADER, &r);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);

	TEST("the event subscription drops: the child subscribes again");
	WAIT_FOR(subscriptions(c) == 1);
	keeper_drop_subscriptions(c);
	WAIT_FOR(log_has(c, "the keeper closed the event subscription"));
	WAIT_FOR(subscriptions(c) == 1);
}

static void test_out_of_descriptors(struct child *c)
{
	int fds[64];
	struct resp r;

	TEST("out of descriptors: the child pauses accepting, and accepts again once some are free");
	for (size_t i = 0; i < ARRAY_SIZE(fds); i++)
		fds[i] = tcp_connect(c->port, 0);
	WAIT_FOR(log_has(c, "cannot accept a connection"));
	for (size_t i = 0; i < ARRAY_SIZE(fds); i++)
		close(fds[i]);
	{
		int64_t end = now_ms() + IO_TIMEOUT_MS;

		/* Connections accepted but not yet seen closed still hold descriptors. */
		for (;;) {
			get(c->port, "/api/v1/servers", KEY_HEADER, &r);
			if (r.status == 200 || now_ms() > end)
				break;
			resp_clear(&r);
			usleep(50000);
		}
		CHECK_EQ(r.status, 200);
		resp_clear(&r);
	}
}

static void test_management_disabled(struct child *c)
{
	struct resp r;
	int connects, logins = locked_int(&K.logins), logouts = locked_int(&K.logouts);

	TEST("management false: login and logout are 403 without asking the keeper");
	WAIT_FOR(subscriptions(c) == 1);
	connects = locked_int(&c->connects);
	post(c->port, "/api/v1/servers/alpha/login", KEY_HEADER, NULL, &r);
	check_api_error(&r, 403, KIND_FORBIDDEN);
	resp_clear(&r);
	post(c->port, "/api/v1/servers/alpha/logout", KEY_HEADER, NULL, &r);
	check_api_error(&r, 403, KIND_FORBIDDEN);
	resp_clear(&r);
	CHECK_EQ(locked_int(&c->connects), connects);
	CHECK_EQ(locked_int(&K.logins), logins);
	CHECK_EQ(locked_int(&K.logouts), logouts);
	/* Reading is still allowed. */
	get(c->port, "/api/v1/servers", KEY_HEADER, &r);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);
}

static void check_event(struct stream *s, const char *type, const char *payload, int64_t timestamp)
{
	struct json_object *d, *want = json_tokener_parse(payload);
	char event[64], *data = NULL;

	CHECK_EQ(stream_next(s, IO_TIMEOUT_MS, event, sizeof(event), &data), 0);
	CHECK(strcmp(event, type) == 0);
	d = json_tokener_parse(data);
	CHECK(d);
	CHECK_EQ(json_object_object_length(d), 2);
	CHECK(json_object_equal(path_get(d, "payload", NULL), want));
	/* Unix seconds, the shape mcpproxy's UI reads. */
	CHECK(json_object_is_type(path_get(d, "timestamp", NULL), json_type_int));
	CHECK_EQ(json_object_get_int64(path_get(d, "timestamp", NULL)), timestamp);
	json_object_put(d);
	json_object_put(want);
	free(data);
}

static void test_events(struct child *c)
{
	struct stream s, many[64];
	char buf[64], event[64], *data;
	char path[160];

	TEST("GET /events: two events in order, with the envelope");
	WAIT_FOR(subscriptions(c) == 1);
	stream_open(&s, c->port, "/events", KEY_HEADER);
	CHECK_EQ(s.status, 200);
	CHECK(resp_header(&s.head, "Content-Type", buf, sizeof(buf)) && strcmp(buf, "text/event-stream") == 0);
	CHECK(resp_header(&s.head, "Cache-Control", buf, sizeof(buf)) && strcmp(buf, "no-cache") == 0);
	keeper_emit(EVENT_SERVERS_CHANGED, json_tokener_parse("{\"reason\":\"oauth_login\",\"server\":\"alpha\"}"),
		    1748779200);
	keeper_emit(EVENT_TOKEN_REFRESHED,
		    json_tokener_parse("{\"server_name\":\"alpha\",\"expires_at\":1767225600,\"note\":\"a\\nb\"}"),
		    1748779201);
	check_event(&s, EVENT_SERVERS_CHANGED, "{\"reason\":\"oauth_login\",\"server\":\"alpha\"}",
		    1748779200);
	check_event(&s, EVENT_TOKEN_REFRESHED, "{\"server_name\":\"alpha\",\"expires_at\":1767225600,\"note\":\"a\\nb\"}",
		    1748779201);
	CHECK_EQ(stream_next(&s, 200, event, sizeof(event), &data), -ETIMEDOUT);
	stream_close(&s);

	TEST("the event stream with ?apikey=");
	snprintf(path, sizeof(path), "/events?apikey=%s", KEY);
	stream_open(&s, c->port, path, "");
	CHECK_EQ(s.status, 200);
	keeper_emit(EVENT_REFRESH_FAILED, json_tokener_parse("{\"server_name\":\"alpha\",\"error\":\"x\"}"),
		    1748779202);
	check_event(&s, EVENT_REFRESH_FAILED, "{\"server_name\":\"alpha\",\"error\":\"x\"}", 1748779202);
	stream_close(&s);

	TEST("at most 64 event streams; closed ones free their place");
	for (size_t i = 0; i < ARRAY_SIZE(many); i++) {
		int64_t end = now_ms() + IO_TIMEOUT_MS;

		/* The streams closed above go away asynchronously. */
		for (;;) {
			stream_open(&many[i], c->port, "/events", KEY_HEADER);
			if (many[i].status == 200 || now_ms() > end)
				break;
			stream_close(&many[i]);
			usleep(20000);
		}
		CHECK_EQ(many[i].status, 200);
	}
	stream_open(&s, c->port, "/events", KEY_HEADER);
	CHECK_EQ(s.status, 503);
	stream_close(&s);
	for (size_t i = 0; i < ARRAY_SIZE(many); i++)
		stream_close(&many[i]);
	{
		int64_t end = now_ms() + IO_TIMEOUT_MS;

		for (;;) {
			stream_open(&s, c->port, "/events", KEY_HEADER);
			if (s.status == 200 || now_ms() > end)
				break;
			stream_close(&s);
			usleep(20000);
		}
		CHECK_EQ(s.status, 200);
		stream_close(&s);
	}
}

static void test_slow_client(struct child *c)
{
	struct stream fast;
	char request[256], *blob, event[64], *data = NULL;
	size_t blob_len = 256 * 1024, sent = 0, drained = 0;
	int fd, n_events = 0, got = 0;
	bool seen = false;

	TEST("a client that does not read is disconnected after the limit, with a log line");
	stream_open(&fast, c->port, "/events", KEY_HEADER);
	CHECK_EQ(fast.status, 200);
	fd = tcp_connect(c->port, 4096);
	snprintf(request, sizeof(request), "GET /events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" KEY_HEADER "\r\n", c->port);
	send_all(fd, request, strlen(request));
	usleep(200000);
	blob = malloc(blob_len + 1);
	CHECK(blob);
	memset(blob, 'x', blob_len);
	blob[blob_len] = '\0';
	while (!seen && sent < 256u * 1024 * 1024) {
		for (int i = 0; i < 4; i++) {
			struct json_object *d = json_object_new_object();

			json_object_object_add(d, "blob", json_object_new_string(blob));
			keeper_emit(EVENT_SERVERS_CHANGED, d, 1748779203);
			sent += blob_len;
			n_events++;
		}
		/* The other client reads everything: it must get every event. */
		while (got < n_events) {
			CHECK_EQ(stream_next(&fast, IO_TIMEOUT_MS, event, sizeof(event), &data), 0);
			CHECK(strcmp(event, EVENT_SERVERS_CHANGED) == 0);
			CHECK(strlen(data) > blob_len);
			free(data);
			got++;
		}
		seen = log_has(c, "is not keeping up");
	}
	printf("# %zu MiB of events sent before the slow client was dropped\n", sent >> 20);
	CHECK(seen);
	/* What was queued for it is gone; the connection ends. */
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		char buf[65536];
		ssize_t n;

		CHECK(poll(&p, 1, IO_TIMEOUT_MS) == 1);
		n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		drained += (size_t)n;
	}
	CHECK(drained < sent);
	close(fd);
	free(blob);
	stream_close(&fast);
}

/* A POST to /mcp/NAME with the MCP headers. */
static void mcp_post(int port, const char *name, const char *session, const char *body, struct resp *r)
{
	char path[96], headers[512];

	snprintf(path, sizeof(path), "/mcp/%s", name);
	snprintf(headers, sizeof(headers),
		 KEY_HEADER "Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n"
			    "%s%s%s",
		 session ? "Mcp-Session-Id: " : "", session ? session : "", session ? "\r\n" : "");
	post(port, path, headers, body, r);
}

static void check_rpc_error(const struct resp *r, int status, int code)
{
	struct json_object *o;

	if (r->status != status)
		fprintf(stderr, "expected HTTP %d, got %d: %s\n", status, r->status, r->body);
	CHECK_EQ(r->status, status);
	o = resp_json(r);
	CHECK(strcmp(path_str(o, "jsonrpc", NULL), "2.0") == 0);
	CHECK_EQ(json_object_get_int(path_get(o, "error", "code")), code);
	json_object_put(o);
}

static const char *initialize_body =
	"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-06-18\","
	"\"capabilities\":{},\"clientInfo\":{\"name\":\"test\",\"version\":\"1\"}}}";

static void mcp_initialize(struct child *c, char *session, size_t len)
{
	struct json_object *o;
	struct resp r;
	char buf[64];

	mcp_post(c->port, "alpha", NULL, initialize_body, &r);
	if (r.status != 200)
		fprintf(stderr, "initialize: HTTP %d %s\n", r.status, r.body);
	CHECK_EQ(r.status, 200);
	CHECK(resp_header(&r, "Content-Type", buf, sizeof(buf)) && strcmp(buf, "application/json") == 0);
	CHECK(resp_header(&r, "Mcp-Session-Id", session, len));
	CHECK_EQ(strlen(session), 32);
	CHECK_EQ(strspn(session, "0123456789abcdef"), 32);
	o = resp_json(&r);
	CHECK_EQ(json_object_get_int(path_get(o, "id", NULL)), 1);
	CHECK(strcmp(path_str(path_get(o, "result", NULL), "serverInfo", "name"), "fake") == 0);
	json_object_put(o);
	resp_clear(&r);
}

static void test_mcp(struct child *c)
{
	struct json_object *o;
	struct stream s;
	struct resp r;
	char session[64], other[64], event[64], *data, headers[512];
	int notes;

	TEST("MCP: initialize creates a session (Mcp-Session-Id, the worker's answer)");
	mcp_initialize(c, session, sizeof(session));
	mcp_initialize(c, other, sizeof(other));
	CHECK(strcmp(session, other) != 0);

	TEST("MCP: a request gets the response with its id as application/json");
	mcp_post(c->port, "alpha", session, "{\"jsonrpc\":\"2.0\",\"id\":\"abc\",\"method\":\"tools/list\"}", &r);
	CHECK_EQ(r.status, 200);
	o = resp_json(&r);
	CHECK(strcmp(path_str(o, "id", NULL), "abc") == 0);
	CHECK(strcmp(path_str(json_object_array_get_idx(path_get(o, "result", "tools"), 0), "name", NULL), "echo") ==
	      0);
	json_object_put(o);
	resp_clear(&r);
	mcp_post(c->port, "alpha", other, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"other/method\"}", &r);
	CHECK_EQ(r.status, 200);
	o = resp_json(&r);
	CHECK_EQ(json_object_get_int(path_get(o, "id", NULL)), 7);
	CHECK(strcmp(path_str(o, "result", "echo"), "other/method") == 0);
	json_object_put(o);
	resp_clear(&r);

	TEST("MCP: a notification gets 202 and no body; the worker gets it");
	notes = locked_int(&K.mcp_initialized);
	mcp_post(c->port, "alpha", session, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}", &r);
	CHECK_EQ(r.status, 202);
	CHECK_EQ(r.body_len, 0);
	CHECK(resp_header(&r, "Content-Length", event, sizeof(event)) && strcmp(event, "0") == 0);
	resp_clear(&r);
	WAIT_FOR(locked_int(&K.mcp_initialized) == notes + 1);

	TEST("MCP: server messages wait for the GET stream, then arrive there");
	mcp_post(c->port, "alpha", session, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"test/notify\"}", &r);
	CHECK_EQ(r.status, 200);
	o = resp_json(&r);
	CHECK(json_object_get_boolean(path_get(o, "result", "ok")));
	json_object_put(o);
	resp_clear(&r);
	snprintf(headers, sizeof(headers), KEY_HEADER "Accept: text/event-stream\r\nMcp-Session-Id: %s\r\n", session);
	stream_open(&s, c->port, "/mcp/alpha", headers);
	CHECK_EQ(s.status, 200);
	CHECK_EQ(stream_next(&s, IO_TIMEOUT_MS, event, sizeof(event), &data), 0);
	CHECK(strcmp(event, "message") == 0);
	o = json_tokener_parse(data);
	CHECK(strcmp(path_str(o, "method", NULL), "notifications/message") == 0);
	json_object_put(o);
	free(data);
	CHECK_EQ(stream_next(&s, IO_TIMEOUT_MS, event, sizeof(event), &data), 0);
	o = json_tokener_parse(data);
	CHECK(strcmp(path_str(o, "method", NULL), "sampling/createMessage") == 0);
	CHECK(strcmp(path_str(o, "id", NULL), "s1") == 0);
	json_object_put(o);
	free(data);

	TEST("MCP: the client's response to a server request gets 202");
	notes = locked_int(&K.mcp_responses);
	mcp_post(c->port, "alpha", session, "{\"jsonrpc\":\"2.0\",\"id\":\"s1\",\"result\":{}}", &r);
	CHECK_EQ(r.status, 202);
	resp_clear(&r);
	WAIT_FOR(locked_int(&K.mcp_responses) == notes + 1);

	TEST("MCP: with the stream open, server messages arrive at once");
	mcp_post(c->port, "alpha", session, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"test/notify\"}", &r);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);
	CHECK_EQ(stream_next(&s, IO_TIMEOUT_MS, event, sizeof(event), &data), 0);
	CHECK(strstr(data, "notifications/message"));
	free(data);
	CHECK_EQ(stream_next(&s, IO_TIMEOUT_MS, event, sizeof(event), &data), 0);
	CHECK(strstr(data, "sampling/createMessage"));
	free(data);

	TEST("MCP: missing session 400, unknown session 404, batch 400, bad JSON 400, Accept 406");
	mcp_post(c->port, "alpha", NULL, "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/list\"}", &r);
	check_rpc_error(&r, 400, RPC_INVALID_REQUEST);
	resp_clear(&r);
	mcp_post(c->port, "alpha", "0123456789abcdef0123456789abcdef",
		 "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/list\"}", &r);
	check_rpc_error(&r, 404, RPC_INVALID_REQUEST);
	resp_clear(&r);
	mcp_post(c->port, "beta", session, "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/list\"}", &r);
	check_rpc_error(&r, 404, RPC_INVALID_REQUEST);
	resp_clear(&r);
	mcp_post(c->port, "alpha", session, "[{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/list\"}]", &r);
	check_rpc_error(&r, 400, RPC_INVALID_REQUEST);
	resp_clear(&r);
	mcp_post(c->port, "alpha", session, "{\"jsonrpc\":\"2.0\",", &r);
	check_rpc_error(&r, 400, RPC_PARSE_ERROR);
	resp_clear(&r);
	mcp_post(c->port, "alpha", session, "{\"id\":5,\"method\":\"x\"}", &r);
	check_rpc_error(&r, 400, RPC_INVALID_REQUEST);
	resp_clear(&r);
	snprintf(headers, sizeof(headers), KEY_HEADER "Accept: text/html\r\nMcp-Session-Id: %s\r\n", session);
	post(c->port, "/mcp/alpha", headers, "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"tools/list\"}", &r);
	check_rpc_error(&r, 406, RPC_INVALID_REQUEST);
	resp_clear(&r);
	get(c->port, "/mcp/alpha", KEY_HEADER "Accept: text/event-stream\r\n", &r);
	check_rpc_error(&r, 400, RPC_INVALID_REQUEST);
	resp_clear(&r);
	get(c->port, "/mcp/alpha", KEY_HEADER "Accept: text/event-stream\r\nMcp-Session-Id: nope\r\n", &r);
	check_rpc_error(&r, 404, RPC_INVALID_REQUEST);
	resp_clear(&r);

	TEST("MCP: initialize for an unknown server 404, a disabled one 503");
	mcp_post(c->port, "ghost", NULL, initialize_body, &r);
	check_rpc_error(&r, 404, RPC_APP_ERROR);
	CHECK(!resp_header(&r, "Mcp-Session-Id", headers, sizeof(headers)));
	resp_clear(&r);
	mcp_post(c->port, "off", NULL, initialize_body, &r);
	check_rpc_error(&r, 503, RPC_APP_ERROR);
	resp_clear(&r);

	TEST("MCP: an initialize the server refuses: its error, and no session");
	mcp_post(c->port, "alpha", NULL,
		 "{\"jsonrpc\":\"2.0\",\"id\":\"i\",\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"1999-01-01\","
		 "\"capabilities\":{},\"clientInfo\":{\"name\":\"refuse\",\"version\":\"1\"}}}",
		 &r);
	check_rpc_error(&r, 200, -32602);
	CHECK(!resp_header(&r, "Mcp-Session-Id", headers, sizeof(headers)));
	resp_clear(&r);

	TEST("MCP: DELETE ends the session: 204, the stream ends, later requests 404");
	snprintf(headers, sizeof(headers), KEY_HEADER "Mcp-Session-Id: %s\r\n", session);
	http_req(c->port, "DELETE", "/mcp/alpha", NULL, headers, NULL, 0, &r);
	CHECK_EQ(r.status, 204);
	resp_clear(&r);
	CHECK_EQ(stream_next(&s, IO_TIMEOUT_MS, event, sizeof(event), &data), -EPIPE);
	stream_close(&s);
	mcp_post(c->port, "alpha", session, "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"tools/list\"}", &r);
	check_rpc_error(&r, 404, RPC_INVALID_REQUEST);
	resp_clear(&r);
	http_req(c->port, "DELETE", "/mcp/alpha", NULL, headers, NULL, 0, &r);
	check_rpc_error(&r, 404, RPC_INVALID_REQUEST);
	resp_clear(&r);

	TEST("MCP: a client that leaves before the answer; the session goes on");
	snprintf(headers, sizeof(headers),
		 KEY_HEADER "Accept: application/json, text/event-stream\r\nMcp-Session-Id: %s\r\n", other);
	send_and_leave(c->port, "POST", "/mcp/alpha", headers,
		       "{\"jsonrpc\":\"2.0\",\"id\":\"h\",\"method\":\"test/hang\"}");
	WAIT_FOR(log_has(c, "the client went away before the answer to test/hang"));
	mcp_post(c->port, "alpha", other, "{\"jsonrpc\":\"2.0\",\"id\":\"h\",\"method\":\"tools/list\"}", &r);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);

	TEST("MCP: an initialize abandoned while the keeper has not answered connect");
	send_and_leave(c->port, "POST", "/mcp/slow", KEY_HEADER "Accept: application/json\r\n", initialize_body);
	WAIT_FOR(log_has(c, "the client went away before the answer to initialize"));

	TEST("MCP: the worker closing the connection ends the session; the waiting POST gets 502");
	mcp_post(c->port, "alpha", other, "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"test/close\"}", &r);
	check_rpc_error(&r, 502, RPC_INTERNAL_ERROR);
	o = resp_json(&r);
	CHECK_EQ(json_object_get_int(path_get(o, "id", NULL)), 9);
	json_object_put(o);
	resp_clear(&r);
	mcp_post(c->port, "alpha", other, "{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"tools/list\"}", &r);
	check_rpc_error(&r, 404, RPC_INVALID_REQUEST);
	resp_clear(&r);
}

static void test_logs(struct child *c)
{
	size_t len;
	char *log = read_file(c->log, &len);

	TEST("the log: request lines, never the API key, never a query string");
	CHECK(log);
	CHECK(strstr(log, "GET /api/v1/servers 200"));
	CHECK(strstr(log, "POST /api/v1/servers/alpha/login 200"));
	CHECK(!strstr(log, KEY));
	CHECK(!strstr(log, "apikey="));
	CHECK(!strstr(log, "x=1"));
	CHECK(!strstr(log, "tools/list"));
	free(log);
}

static struct child *children_to_stop[8];
static size_t n_to_stop;

static void stop_children(void)
{
	keeper_stop();
	for (size_t i = 0; i < n_to_stop; i++) {
		struct child *c = children_to_stop[i];

		if (c->pid > 0) {
			close(c->fd3);
			c->fd3 = -1;
			CHECK_EQ(child_wait(c), 0);
		}
	}
}

static void cleanup(void)
{
	char path[256];

	for (size_t i = 0; i < n_to_stop; i++) {
		struct child *c = children_to_stop[i];

		if (c->pid > 0) {
			kill(c->pid, SIGKILL);
			waitpid(c->pid, NULL, 0);
		}
		if (!finished || getenv("TEST_HTTP_SHOW_LOG")) {
			FILE *f = fopen(c->log, "r");
			char line[4096];

			fprintf(stderr, "---- child log (%s) ----\n", c->log);
			while (f && fgets(line, sizeof(line), f))
				fputs(line, stderr);
			if (f)
				fclose(f);
		}
	}
	if (!tmpdir[0])
		return;
	for (int i = 1; i <= 16; i++) {
		snprintf(path, sizeof(path), "%s/child-%d.log", tmpdir, i);
		unlink(path);
	}
	for (size_t i = 0; i < 5; i++) {
		static const char *const files[] = { "index.html", "app.js", "style.css", "openapi.json", "secret.txt" };

		snprintf(path, sizeof(path), "%s/%s", ui_dir, files[i]);
		unlink(path);
	}
	rmdir(ui_dir);
	rmdir(tmpdir);
}

int main(int argc, char **argv)
{
	static struct child a, b, d;
	size_t len;
	char *openapi;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s MCPKEEPER-HTTP [OPENAPI-JSON]\n", argv[0]);
		return 2;
	}
	http_bin = argv[1];
	openapi_src = argc > 2 ? argv[2] : NULL;
	signal(SIGPIPE, SIG_IGN);
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test-http.XXXXXX");
	CHECK(mkdtemp(tmpdir));
	snprintf(ui_dir, sizeof(ui_dir), "%s/ui", tmpdir);
	CHECK(mkdir(ui_dir, 0700) == 0);
	write_file(ui_dir, "index.html", INDEX_HTML);
	write_file(ui_dir, "app.js", APP_JS);
	write_file(ui_dir, "style.css", STYLE_CSS);
	write_file(ui_dir, "secret.txt", "not to be served\n");
	openapi = openapi_src ? read_file(openapi_src, &len) : NULL;
	write_file(ui_dir, "openapi.json",
		   openapi ? openapi : "{\"openapi\":\"3.0.3\",\"paths\":{\"/api/v1/servers/{id}/logout\":{},"
				       "\"/events\":{},\"/mcp/{name}\":{}}}");
	free(openapi);
	atexit(cleanup);

	test_not_started_by_keeper();
	test_hello_refused();

	/* Children are started (fork) before the keeper thread exists. */
	TEST("hello with port 0: the child reports the port it bound");
	child_ready(&a, true);
	children_to_stop[n_to_stop++] = &a;
	test_bind_in_use(a.port);
	test_keeper_bugs();
	child_ready(&b, false);
	children_to_stop[n_to_stop++] = &b;
	next_nofile = 32;
	child_ready(&d, true);
	next_nofile = 0;
	children_to_stop[n_to_stop++] = &d;
	keeper_start();

	test_rebinding(&a);
	test_api_key(&a);
	test_static(&a);
	test_servers(&a);
	test_login_logout(&a);
	test_keeper_trouble(&a);
	test_out_of_descriptors(&d);
	test_management_disabled(&b);
	test_events(&a);
	test_slow_client(&a);
	test_mcp(&a);
	test_logs(&a);

	TEST("closing fd 3 ends each child with 0");
	stop_children();
	for (int i = 1; i <= 16; i++) {
		char path[256];

		snprintf(path, sizeof(path), "%s/child-%d.log", tmpdir, i);
		test_sanitizer_check(path);
	}
	finished = true;
	printf("# all http child tests passed\n");
	return 0;
}
