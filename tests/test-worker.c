/*
 * The worker, end to end: the real mcpkeeper-worker started the way the
 * keeper starts it (fork+exec, a stream socketpair on fd 3, a SOCK_SEQPACKET
 * socketpair on fd 4, stdin /dev/null, stderr to a file). The test plays the
 * keeper: the hello, token.update / token.clear, and answers to token.invalid
 * (by a real refresh at the peer, or "unavailable"). It hands the worker
 * client sockets the way the keeper does and drives MCP through them against
 * the real test peer (streamable HTTP with JSON and SSE answers, HTTP+SSE)
 * and the real stdio test server, and against a scripted upstream of its
 * own that reports which connection and which headers each request came
 * with.
 *
 * Usage: test-worker WORKER TEST-PEER [STDIO-SERVER]
 *
 * Everything the test sends to the worker and receives from it on fd 3 is
 * recorded: the record must hold the access tokens (so it records) and no
 * refresh token; the worker's log must hold no token at all.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <json-c/json.h>
#include <sodium.h>

#include "frame.h"
#include "jail-view.h"
#include "proto.h"
#include "sock.h"
#include "test.h"
#include "util.h"

#define IO_TIMEOUT_MS 20000
#define CLIENT_ID "worker-test-client"
#define NAME "peer"

static const char *worker_bin, *peer_bin, *stdio_bin;
static char tmpdir[64], worker_log[128];
/* A sandbox description for the next worker_start() (fd 5), or -1. The
 * protocol is under test here: stdio workers get "mode off"; the sandbox
 * itself is attacked in tests/integration/test_sandbox.py. */
static int next_jail_fd = -1;
static bool finished;
static struct evbuffer *record;		/* everything on fd 3, both ways */
static char *secrets[512];		/* tokens: none may be in the log */
static size_t n_secrets;
static char *refresh_tokens[256];	/* none may be on fd 3 */
static size_t n_refresh;

static void remember(char **list, size_t *n, size_t cap, const char *s)
{
	CHECK(*n < cap);
	list[*n] = strdup(s);
	CHECK(list[*n]);
	(*n)++;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* -- the peer -- */

struct peer {
	pid_t pid;
	int port;
	char base[64];
	char mcp[96];
	char sse[96];
};

static struct peer *peers[4];
static size_t n_peers;

static void peer_start(struct peer *p, const char *const *args)
{
	const char *argv[16] = { peer_bin };
	size_t n = 1;
	int out[2];
	FILE *f;

	for (; args && *args; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	CHECK(pipe2(out, O_CLOEXEC) == 0);
	p->pid = fork();
	CHECK(p->pid >= 0);
	if (p->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(out[1], STDOUT_FILENO);
		execv(peer_bin, (char *const *)argv);
		_exit(127);
	}
	close(out[1]);
	f = fdopen(out[0], "r");
	CHECK(f);
	CHECK_EQ(fscanf(f, "PORT %d", &p->port), 1);
	fclose(f);
	snprintf(p->base, sizeof(p->base), "http://127.0.0.1:%d", p->port);
	snprintf(p->mcp, sizeof(p->mcp), "%s/mcp", p->base);
	snprintf(p->sse, sizeof(p->sse), "%s/sse", p->base);
	peers[n_peers++] = p;
}

static void peer_stop(struct peer *p)
{
	int status;

	if (p->pid <= 0)
		return;
	kill(p->pid, SIGTERM);
	waitpid(p->pid, &status, 0);
	p->pid = 0;
}

/* -- a scripted upstream -- */

/*
 * A small streamable-HTTP upstream the test controls, for what the peer
 * does not show: which connection each request came on and which headers
 * it carried. A forked child serving HTTP/1.1 with keep-alive on
 * 127.0.0.1 (it stops like a peer). A POSTed request gets a result that
 * says so: {"connection": N (the Nth connection it accepted),
 * "authorization", "session" (Mcp-Session-Id), "version"
 * (MCP-Protocol-Version): header values or null}. Methods steer it:
 *   initialize    a new session, "fake-session-K", and protocolVersion
 *   test/drop     closes the connection without an answer
 *   test/status   answers HTTP params.status, without a body
 *   test/big      the result has "data", params.size bytes of 'x'
 * Notifications get 202, GET 405, DELETE 200.
 */

/* In the forked child: CHECK() would run the test's exit handler there. */
#define FAKE_CHECK(expr)                 \
	do {                             \
		if (!(expr))             \
			_exit(3);        \
	} while (0)

struct fake_conn {
	int fd;
	int number;
	struct evbuffer *in;
};

/* The value of a header in a request head, or NULL. */
static char *fake_header(const char *head, const char *name, char *out, size_t len)
{
	size_t n = strlen(name);

	for (const char *p = strstr(head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
		const char *v = p + 2, *end;

		if (strncasecmp(v, name, n) != 0 || v[n] != ':')
			continue;
		for (v += n + 1; *v == ' '; v++)
			;
		end = strstr(v, "\r\n");
		snprintf(out, len, "%.*s", (int)(end - v), v);
		return out;
	}
	return NULL;
}

static void fake_reply(int fd, int status, const char *headers, const char *body)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add_printf(b, "HTTP/1.1 %d Whatever\r\nContent-Length: %zu\r\n%s%s\r\n", status,
			    body ? strlen(body) : 0, body ? "Content-Type: application/json\r\n" : "",
			    headers ? headers : "");
	if (body)
		evbuffer_add(b, body, strlen(body));
	while (evbuffer_get_length(b) > 0 && evbuffer_write(b, fd) > 0)
		;
	evbuffer_free(b);
}

static struct json_object *header_json(const char *head, const char *name)
{
	char value[512];

	return fake_header(head, name, value, sizeof(value)) ? json_object_new_string(value) : NULL;
}

/* One request; false: close the connection. */
static bool fake_handle(struct fake_conn *fc, const char *head, const char *body, int *sessions)
{
	struct json_object *req, *id = NULL, *params = NULL, *v, *result, *msg;
	const char *method = "";
	char extra[128] = "";
	bool keep = true;

	if (strncmp(head, "GET ", 4) == 0 || strncmp(head, "DELETE ", 7) == 0) {
		fake_reply(fc->fd, head[0] == 'G' ? 405 : 200, NULL, NULL);
		return true;
	}
	req = json_tokener_parse(body);
	if (!req) {
		fake_reply(fc->fd, 400, NULL, NULL);
		return true;
	}
	json_object_object_get_ex(req, "id", &id);
	if (json_object_object_get_ex(req, "method", &v))
		method = json_object_get_string(v);
	json_object_object_get_ex(req, "params", &params);
	if (!id) {
		fake_reply(fc->fd, 202, NULL, NULL);
	} else if (strcmp(method, "test/drop") == 0) {
		keep = false;
	} else if (strcmp(method, "test/status") == 0) {
		FAKE_CHECK(json_object_object_get_ex(params, "status", &v));
		fake_reply(fc->fd, json_object_get_int(v), NULL, NULL);
	} else {
		result = json_object_new_object();
		json_object_object_add(result, "connection", json_object_new_int(fc->number));
		json_object_object_add(result, "authorization", header_json(head, "authorization"));
		json_object_object_add(result, "session", header_json(head, "mcp-session-id"));
		json_object_object_add(result, "version", header_json(head, "mcp-protocol-version"));
		if (strcmp(method, "initialize") == 0) {
			snprintf(extra, sizeof(extra), "Mcp-Session-Id: fake-session-%d\r\n", ++*sessions);
			json_object_object_add(result, "protocolVersion", json_object_new_string("2025-06-18"));
		} else if (strcmp(method, "test/big") == 0) {
			size_t n;
			char *data;

			FAKE_CHECK(json_object_object_get_ex(params, "size", &v));
			n = (size_t)json_object_get_int(v);
			data = malloc(n);
			FAKE_CHECK(data);
			memset(data, 'x', n);
			json_object_object_add(result, "data", json_object_new_string_len(data, (int)n));
			free(data);
		}
		msg = json_object_new_object();
		json_object_object_add(msg, "jsonrpc", json_object_new_string("2.0"));
		json_object_object_add(msg, "id", json_object_get(id));
		json_object_object_add(msg, "result", result);
		fake_reply(fc->fd, 200, extra, json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN));
		json_object_put(msg);
	}
	json_object_put(req);
	return keep;
}

/* Every complete request buffered on fc; false: close it. */
static bool fake_requests(struct fake_conn *fc, int *sessions)
{
	for (;;) {
		struct evbuffer_ptr end = evbuffer_search(fc->in, "\r\n\r\n", 4, NULL);
		char head[8192], value[32], *body;
		size_t hlen, blen = 0;
		bool keep;

		if (end.pos < 0)
			return true;
		hlen = (size_t)end.pos + 4;
		if (hlen >= sizeof(head))
			return false;
		evbuffer_copyout(fc->in, head, hlen);
		head[hlen] = '\0';
		if (fake_header(head, "content-length", value, sizeof(value)))
			blen = strtoul(value, NULL, 10);
		if (evbuffer_get_length(fc->in) < hlen + blen)
			return true;
		evbuffer_drain(fc->in, hlen);
		body = calloc(1, blen + 1);
		FAKE_CHECK(body);
		evbuffer_remove(fc->in, body, blen);
		keep = fake_handle(fc, head, body, sessions);
		free(body);
		if (!keep)
			return false;
	}
}

static void fake_serve(int lfd)
{
	struct fake_conn conns[64];
	struct pollfd p[65];
	int n = 0, accepted = 0, sessions = 0;

	for (;;) {
		p[0] = (struct pollfd){ .fd = lfd, .events = POLLIN };
		for (int i = 0; i < n; i++)
			p[i + 1] = (struct pollfd){ .fd = conns[i].fd, .events = POLLIN };
		if (poll(p, (nfds_t)n + 1, -1) < 0)
			continue;
		for (int i = n - 1; i >= 0; i--) {
			if (!p[i + 1].revents)
				continue;
			if (evbuffer_read(conns[i].in, conns[i].fd, 65536) <= 0 || !fake_requests(&conns[i], &sessions)) {
				close(conns[i].fd);
				evbuffer_free(conns[i].in);
				conns[i] = conns[--n];
			}
		}
		if ((p[0].revents & POLLIN) && n < (int)ARRAY_SIZE(conns)) {
			int fd = accept(lfd, NULL, NULL);

			if (fd >= 0)
				conns[n++] = (struct fake_conn){ .fd = fd, .number = ++accepted, .in = evbuffer_new() };
		}
	}
}

/* Started like a peer (and stopped with them). */
static void fake_start(struct peer *p)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sin);
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	CHECK(lfd >= 0);
	CHECK(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	CHECK(listen(lfd, 64) == 0);
	CHECK(getsockname(lfd, (struct sockaddr *)&sin, &len) == 0);
	p->port = ntohs(sin.sin_port);
	p->pid = fork();
	CHECK(p->pid >= 0);
	if (p->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		fake_serve(lfd);
		_exit(0);
	}
	close(lfd);
	snprintf(p->base, sizeof(p->base), "http://127.0.0.1:%d", p->port);
	snprintf(p->mcp, sizeof(p->mcp), "%s/mcp", p->base);
	peers[n_peers++] = p;
}

struct http_reply {
	long status;
	struct evbuffer *body;
	char *location;
};

static size_t http_collect(char *p, size_t size, size_t nmemb, void *arg)
{
	evbuffer_add(arg, p, size * nmemb);
	return size * nmemb;
}

static void http_reply_clear(struct http_reply *r)
{
	if (r->body)
		evbuffer_free(r->body);
	free(r->location);
	memset(r, 0, sizeof(*r));
}

static void http(const char *url, const char *ctype, const char *body, struct http_reply *r)
{
	CURL *e = curl_easy_init();
	struct curl_slist *h = NULL;
	char header[128], *loc = NULL;

	CHECK(e);
	memset(r, 0, sizeof(*r));
	r->body = evbuffer_new();
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, http_collect);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r->body);
	if (body) {
		snprintf(header, sizeof(header), "Content-Type: %s", ctype);
		h = curl_slist_append(h, header);
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
	}
	CHECK_EQ(curl_easy_perform(e), CURLE_OK);
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
	curl_easy_getinfo(e, CURLINFO_REDIRECT_URL, &loc);
	if (loc)
		r->location = strdup(loc);
	curl_slist_free_all(h);
	curl_easy_cleanup(e);
}

static struct json_object *http_json(struct http_reply *r)
{
	size_t len = evbuffer_get_length(r->body);
	char *s = (char *)evbuffer_pullup(r->body, (ev_ssize_t)len);
	char *copy = strndup(s ? s : "", len);
	struct json_object *o = json_tokener_parse(copy);

	free(copy);
	CHECK(o);
	return o;
}

/* POST path (JSON body) to the peer; returns the parsed answer. */
static struct json_object *peer_post(struct peer *p, const char *path, const char *body)
{
	struct http_reply r;
	struct json_object *o;
	char url[160];

	snprintf(url, sizeof(url), "%s%s", p->base, path);
	http(url, "application/json", body, &r);
	if (r.status != 200)
		fprintf(stderr, "POST %s: HTTP %ld\n", path, r.status);
	CHECK_EQ(r.status, 200);
	o = evbuffer_get_length(r.body) ? http_json(&r) : json_object_new_object();
	http_reply_clear(&r);
	return o;
}

static long long peer_stat(struct peer *p, const char *name)
{
	struct http_reply r;
	struct json_object *o, *v;
	char url[128];
	long long n;

	snprintf(url, sizeof(url), "%s/test/stats", p->base);
	http(url, NULL, NULL, &r);
	CHECK_EQ(r.status, 200);
	o = http_json(&r);
	CHECK(json_object_object_get_ex(o, name, &v));
	n = json_object_get_int64(v);
	json_object_put(o);
	http_reply_clear(&r);
	return n;
}

static char *url_escape(const char *s)
{
	char *e = curl_easy_escape(NULL, s, 0), *copy;

	CHECK(e);
	copy = strdup(e);
	curl_free(e);
	return copy;
}

struct tokens {
	char access[128];
	char refresh[128];
};

static void tokens_from(struct http_reply *r, struct tokens *t)
{
	struct json_object *o = http_json(r), *v;

	CHECK(json_object_object_get_ex(o, "access_token", &v));
	snprintf(t->access, sizeof(t->access), "%s", json_object_get_string(v));
	CHECK(json_object_object_get_ex(o, "refresh_token", &v));
	snprintf(t->refresh, sizeof(t->refresh), "%s", json_object_get_string(v));
	remember(secrets, &n_secrets, ARRAY_SIZE(secrets), t->access);
	remember(secrets, &n_secrets, ARRAY_SIZE(secrets), t->refresh);
	remember(refresh_tokens, &n_refresh, ARRAY_SIZE(refresh_tokens), t->refresh);
	json_object_put(o);
}

/* The authorization code flow with PKCE, as mcpctl auth login does it. */
static void peer_login(struct peer *p, struct tokens *t)
{
	const char *redirect = "http://127.0.0.1:9/callback";
	unsigned char raw[32], hash[crypto_hash_sha256_BYTES];
	char verifier[64], challenge[64], url[1024], body[1024], *code, *amp, *res, *red;
	struct http_reply r;

	randombytes_buf(raw, sizeof(raw));
	sodium_bin2base64(verifier, sizeof(verifier), raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	crypto_hash_sha256(hash, (const unsigned char *)verifier, strlen(verifier));
	sodium_bin2base64(challenge, sizeof(challenge), hash, sizeof(hash), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	res = url_escape(p->mcp);
	red = url_escape(redirect);
	snprintf(url, sizeof(url),
		 "%s/authorize?response_type=code&client_id=" CLIENT_ID "&redirect_uri=%s&state=st8&scope=mcp"
		 "&code_challenge=%s&code_challenge_method=S256&resource=%s",
		 p->base, red, challenge, res);
	http(url, NULL, NULL, &r);
	CHECK_EQ(r.status, 302);
	CHECK(r.location && strstr(r.location, "?code="));
	code = strdup(strstr(r.location, "?code=") + 6);
	amp = strchr(code, '&');
	if (amp)
		*amp = '\0';
	http_reply_clear(&r);
	snprintf(body, sizeof(body),
		 "grant_type=authorization_code&code=%s&code_verifier=%s&redirect_uri=%s&client_id=" CLIENT_ID
		 "&resource=%s",
		 code, verifier, red, res);
	snprintf(url, sizeof(url), "%s/token", p->base);
	http(url, "application/x-www-form-urlencoded", body, &r);
	CHECK_EQ(r.status, 200);
	tokens_from(&r, t);
	http_reply_clear(&r);
	free(code);
	free(res);
	free(red);
}

/* What the keeper (with the oauth child) does on token.invalid. */
static void peer_refresh(struct peer *p, struct tokens *t)
{
	char url[128], body[512], *res = url_escape(p->mcp);
	struct http_reply r;

	snprintf(body, sizeof(body), "grant_type=refresh_token&refresh_token=%s&client_id=" CLIENT_ID "&resource=%s",
		 t->refresh, res);
	snprintf(url, sizeof(url), "%s/token", p->base);
	http(url, "application/x-www-form-urlencoded", body, &r);
	CHECK_EQ(r.status, 200);
	tokens_from(&r, t);
	http_reply_clear(&r);
	free(res);
}

/* -- the test as the keeper -- */

enum answer {
	ANSWER_REFRESH,		/* refresh at the peer, answer the new token */
	ANSWER_UNAVAILABLE,	/* no login: error kind unavailable */
};

struct keeper {
	pid_t pid;
	int fd;			/* fd 3's other end */
	int fd4;		/* fd 4's other end */
	struct evbuffer *in;
	struct peer *peer;
	struct tokens tok;
	enum answer answer;
	int invalid_count;
	int closed_count;
	long long last_clients;
	int needs_login;
	uint64_t next_client;
};

struct tclient {
	int fd;
	struct evbuffer *in;
	int64_t next_id;
};

static void record_add(const char *dir, struct json_object *msg)
{
	evbuffer_add_printf(record, "%s %s\n", dir,
			    json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
}

static void keeper_send(struct keeper *k, struct json_object *msg)
{
	record_add(">", msg);
	CHECK_EQ(frame_write_fd(k->fd, msg, PROTO_MAX_MESSAGE, IO_TIMEOUT_MS), 0);
	json_object_put(msg);
}

static struct json_object *token_params(const char *access)
{
	struct json_object *p = json_object_new_object();

	json_object_object_add(p, "access_token", json_object_new_string(access));
	json_object_object_add(p, "token_type", json_object_new_string("Bearer"));
	json_object_object_add(p, "expires_at", json_object_new_int64((int64_t)time(NULL) + 600));
	return p;
}

static void keeper_pump(struct keeper *k, int ms);

/* fd 3 and the client sockets are separate streams: a notification has no
 * answer to wait for, so give the worker a moment to take it in before a
 * client relies on it. */
static void keeper_token_update(struct keeper *k)
{
	keeper_send(k, rpc_notification(METHOD_TOKEN_UPDATE, token_params(k->tok.access)));
	keeper_pump(k, 100);
}

static void keeper_handle(struct keeper *k, struct rpc_msg *m)
{
	struct json_object *v;

	record_add("<", m->root);
	CHECK(m->type == RPC_REQUEST || m->type == RPC_NOTIFICATION);
	if (strcmp(m->method, METHOD_TOKEN_INVALID) == 0) {
		CHECK_EQ(m->type, RPC_REQUEST);
		k->invalid_count++;
		/* The worker reports the token it used: the one we gave it. */
		CHECK(json_object_object_get_ex(m->params, "access_token", &v));
		CHECK(strcmp(json_object_get_string(v), k->tok.access) == 0);
		if (k->answer == ANSWER_REFRESH) {
			peer_refresh(k->peer, &k->tok);
			keeper_send(k, rpc_result(m->id, token_params(k->tok.access)));
		} else {
			keeper_send(k, rpc_error(m->id, RPC_APP_ERROR, KIND_UNAVAILABLE, "not logged in"));
		}
	} else if (strcmp(m->method, METHOD_CLIENT_CLOSED) == 0) {
		CHECK(json_object_object_get_ex(m->params, "clients", &v));
		k->closed_count++;
		k->last_clients = json_object_get_int64(v);
	} else if (strcmp(m->method, METHOD_UPSTREAM_NEEDS_LOGIN) == 0) {
		k->needs_login++;
	} else {
		fprintf(stderr, "unexpected message from the worker: %s\n", m->method);
		CHECK(0);
	}
}

/* Reads what the worker sent on fd 3 and handles all of it; -EPIPE at EOF. */
static int keeper_service(struct keeper *k)
{
	int n = evbuffer_read(k->in, k->fd, 65536);

	if (n == 0)
		return -EPIPE;
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -errno;
	for (;;) {
		struct rpc_msg m;
		char detail[128];
		int r = frame_read(k->in, PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			return 0;
		CHECK_EQ(r, 0);
		keeper_handle(k, &m);
		rpc_msg_clear(&m);
	}
}

/* Serves fd 3 for ms milliseconds. */
static void keeper_pump(struct keeper *k, int ms)
{
	int64_t end = now_ms() + ms;

	while (now_ms() < end) {
		struct pollfd p = { .fd = k->fd, .events = POLLIN };

		if (poll(&p, 1, (int)(end - now_ms())) > 0)
			CHECK_EQ(keeper_service(k), 0);
	}
}

static void worker_start(struct keeper *k, bool with_fds)
{
	int sv[2], dv[2], logfd;

	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, dv) == 0);
	logfd = open(worker_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	CHECK(logfd >= 0);
	k->pid = fork();
	CHECK(k->pid >= 0);
	if (k->pid == 0) {
		int devnull = open("/dev/null", O_RDONLY);
		int a = fcntl(sv[1], F_DUPFD_CLOEXEC, 10), b = fcntl(dv[1], F_DUPFD_CLOEXEC, 10);
		int j = next_jail_fd >= 0 ? fcntl(next_jail_fd, F_DUPFD_CLOEXEC, 10) : -1;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(devnull, STDIN_FILENO);
		dup2(logfd, STDERR_FILENO);
		if (with_fds) {
			dup2(a, 3); /* dup2 clears close-on-exec */
			dup2(b, 4);
			if (j >= 0)
				dup2(j, CHILD_FD_JAIL);
			else
				close(CHILD_FD_JAIL);
		} else {
			close(3);
			close(4);
		}
		execl(worker_bin, worker_bin, (char *)NULL);
		_exit(127);
	}
	close(sv[1]);
	close(dv[1]);
	close(logfd);
	if (next_jail_fd >= 0) {
		close(next_jail_fd);
		next_jail_fd = -1;
	}
	k->fd = sv[0];
	k->fd4 = dv[0];
	k->in = evbuffer_new();
	k->next_client = 1;
}

static int worker_wait(struct keeper *k)
{
	int status = 0;
	pid_t r = 0;

	for (int i = 0; i < 2000 && (r = waitpid(k->pid, &status, WNOHANG)) == 0; i++) {
		if (k->fd >= 0) {
			struct pollfd p = { .fd = k->fd, .events = POLLIN };

			if (poll(&p, 1, 10) > 0 && keeper_service(k) < 0) {
				close(k->fd);
				k->fd = -1;
			}
		} else {
			usleep(10000);
		}
	}
	if (r == 0) {
		kill(k->pid, SIGKILL);
		waitpid(k->pid, &status, 0);
		fprintf(stderr, "worker %d did not exit\n", (int)k->pid);
		CHECK(0);
	}
	if (k->fd >= 0)
		close(k->fd);
	close(k->fd4);
	k->fd = k->fd4 = -1;
	evbuffer_free(k->in);
	k->in = NULL;
	CHECK(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static struct json_object *transport(const char *protocol, const char *url, bool oauth, int timeout_ms)
{
	struct json_object *t = json_object_new_object();

	json_object_object_add(t, "protocol", json_object_new_string(protocol));
	if (url)
		json_object_object_add(t, "url", json_object_new_string(url));
	json_object_object_add(t, "oauth", json_object_new_boolean(oauth));
	json_object_object_add(t, "request_timeout_ms", json_object_new_int(timeout_ms));
	return t;
}

/* Starts a worker and completes the hello; returns the hello result's landlock. */
static void worker_ready(struct keeper *k, struct json_object *t)
{
	struct json_object *p = json_object_new_object(), *v;
	struct rpc_msg m;
	char detail[128];

	worker_start(k, true);
	json_object_object_add(p, "version", json_object_new_int(PROTO_VERSION));
	json_object_object_add(p, "role", json_object_new_string(ROLE_WORKER));
	json_object_object_add(p, "name", json_object_new_string(NAME));
	json_object_object_add(p, "log_level", json_object_new_string("debug"));
	json_object_object_add(p, "transport", t);
	keeper_send(k, rpc_request(METHOD_HELLO, p, 1));
	CHECK_EQ(frame_read_fd(k->fd, k->in, PROTO_MAX_MESSAGE, &m, IO_TIMEOUT_MS, detail, sizeof(detail)), 0);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(json_object_object_get_ex(m.result, "pid", &v));
	CHECK_EQ(json_object_get_int(v), k->pid);
	CHECK(json_object_object_get_ex(m.result, "version", &v));
	CHECK_EQ(json_object_get_int(v), PROTO_VERSION);
	CHECK(json_object_object_get_ex(m.result, "landlock", &v));
	printf("# worker pid %d, Landlock: %s\n", (int)k->pid, json_object_get_string(v));
	rpc_msg_clear(&m);
}

static void worker_end(struct keeper *k)
{
	close(k->fd);
	k->fd = -1;
	CHECK_EQ(worker_wait(k), 0);
}

/* -- clients -- */

/* As the keeper hands a `connect` client over: 8-byte number, flags (none)
 * and the descriptor. */
static void client_connect(struct keeper *k, struct tclient *c)
{
	int sv[2];
	unsigned char num[9] = { 0 };
	uint64_t n = k->next_client++;

	for (int i = 0; i < 8; i++)
		num[i] = (unsigned char)(n >> (8 * i));
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	CHECK_EQ(sock_send_fd(k->fd4, sv[1], num, sizeof(num)), 0);
	close(sv[1]);
	c->fd = sv[0];
	c->in = evbuffer_new();
	c->next_id = 1;
}

static void client_close(struct tclient *c)
{
	close(c->fd);
	evbuffer_free(c->in);
	c->fd = -1;
}

static void client_write(struct tclient *c, struct json_object *msg)
{
	CHECK_EQ(frame_write_fd(c->fd, msg, PROTO_MAX_MESSAGE, IO_TIMEOUT_MS), 0);
	json_object_put(msg);
}

static void client_write_raw(struct tclient *c, const char *s)
{
	CHECK_EQ(write(c->fd, s, strlen(s)), (ssize_t)strlen(s));
}

/* The next message from the worker on c, serving fd 3 meanwhile.
 * Returns 0, or -EPIPE when the worker closed the client. */
static int client_recv(struct keeper *k, struct tclient *c, struct rpc_msg *m, int timeout_ms)
{
	int64_t end = now_ms() + timeout_ms;

	for (;;) {
		char detail[128] = "";
		struct pollfd p[2] = { { .fd = c->fd, .events = POLLIN }, { .fd = k->fd, .events = POLLIN } };
		int r = frame_read(c->in, PROTO_MAX_MESSAGE, m, detail, sizeof(detail));

		if (r == 0)
			return 0;
		CHECK_EQ(r, FRAME_NEED_MORE);
		if (now_ms() >= end) {
			fprintf(stderr, "no message from the worker within %d ms\n", timeout_ms);
			CHECK(0);
		}
		if (poll(p, 2, (int)(end - now_ms())) <= 0)
			continue;
		if (p[1].revents)
			CHECK_EQ(keeper_service(k), 0);
		if (p[0].revents) {
			int n = evbuffer_read(c->in, c->fd, 65536);

			if (n == 0)
				return -EPIPE;
			CHECK(n > 0 || errno == EAGAIN);
		}
	}
}

static int64_t client_request(struct tclient *c, const char *method, struct json_object *params)
{
	int64_t id = c->next_id++;

	client_write(c, rpc_request(method, params, id));
	return id;
}

/* Waits for the response to id, skipping other messages. */
static void client_response(struct keeper *k, struct tclient *c, int64_t id, struct rpc_msg *m)
{
	for (;;) {
		CHECK_EQ(client_recv(k, c, m, IO_TIMEOUT_MS), 0);
		if ((m->type == RPC_RESULT || m->type == RPC_ERROR) && json_object_is_type(m->id, json_type_int) &&
		    json_object_get_int64(m->id) == id)
			return;
		rpc_msg_clear(m);
	}
}

static void client_call(struct keeper *k, struct tclient *c, const char *method, struct json_object *params,
			struct rpc_msg *m)
{
	client_response(k, c, client_request(c, method, params), m);
}

static struct json_object *call_params(const char *tool, const char *args)
{
	struct json_object *p = json_object_new_object();

	json_object_object_add(p, "name", json_object_new_string(tool));
	json_object_object_add(p, "arguments", json_tokener_parse(args));
	return p;
}

/* The text of a tools/call result. */
static const char *result_text(const struct rpc_msg *m)
{
	struct json_object *content, *item, *text;

	if (m->type != RPC_RESULT) {
		fprintf(stderr, "expected a result, got %s\n", json_object_to_json_string(m->root));
		CHECK(0);
	}
	CHECK(json_object_object_get_ex(m->result, "content", &content));
	item = json_object_array_get_idx(content, 0);
	CHECK(item && json_object_object_get_ex(item, "text", &text));
	return json_object_get_string(text);
}

static void expect_echo(struct keeper *k, struct tclient *c, const char *text)
{
	struct rpc_msg m;
	char args[256];

	snprintf(args, sizeof(args), "{\"text\":\"%s\"}", text);
	client_call(k, c, "tools/call", call_params("echo", args), &m);
	CHECK(strcmp(result_text(&m), text) == 0);
	rpc_msg_clear(&m);
}

static void expect_error(const struct rpc_msg *m, const char *needle)
{
	const char *msg;

	if (m->type != RPC_ERROR) {
		fprintf(stderr, "expected an error, got %s\n", json_object_to_json_string(m->root));
		CHECK(0);
	}
	msg = rpc_error_message(m);
	if (!msg || !strstr(msg, needle)) {
		fprintf(stderr, "error \"%s\" lacks \"%s\"\n", msg ? msg : "(none)", needle);
		CHECK(0);
	}
}

/* initialize + notifications/initialized: an MCP session. */
static void mcp_init(struct keeper *k, struct tclient *c)
{
	struct json_object *p = json_object_new_object(), *v;
	struct rpc_msg m;

	json_object_object_add(p, "protocolVersion", json_object_new_string("2025-06-18"));
	json_object_object_add(p, "capabilities", json_object_new_object());
	json_object_object_add(p, "clientInfo", json_tokener_parse("{\"name\":\"test-worker\",\"version\":\"1\"}"));
	client_call(k, c, "initialize", p, &m);
	if (m.type != RPC_RESULT)
		fprintf(stderr, "initialize: %s\n", json_object_to_json_string(m.root));
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(json_object_object_get_ex(m.result, "protocolVersion", &v));
	rpc_msg_clear(&m);
	client_write(c, rpc_notification("notifications/initialized", NULL));
}

static void expect_tools(struct keeper *k, struct tclient *c, size_t at_least)
{
	struct json_object *tools;
	struct rpc_msg m;

	client_call(k, c, "tools/list", NULL, &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(json_object_object_get_ex(m.result, "tools", &tools));
	CHECK(json_object_array_length(tools) >= at_least);
	rpc_msg_clear(&m);
}

static void expect_add(struct keeper *k, struct tclient *c)
{
	struct rpc_msg m;

	client_call(k, c, "tools/call", call_params("add", "{\"a\":40,\"b\":2}"), &m);
	CHECK(strcmp(result_text(&m), "42") == 0);
	rpc_msg_clear(&m);
}

/* Waits until the peer counts want open GET streams. */
static void wait_stat(struct keeper *k, struct peer *p, const char *name, long long want)
{
	for (int i = 0; i < 500 && peer_stat(p, name) != want; i++)
		keeper_pump(k, 20);
	if (peer_stat(p, name) != want)
		fprintf(stderr, "%s: %lld, want %lld\n", name, peer_stat(p, name), want);
	CHECK_EQ(peer_stat(p, name), want);
}

/* -- cases -- */

static void test_not_started_by_keeper(void)
{
	struct keeper k = { 0 };
	char line[512];
	bool found = false;
	FILE *f;

	TEST("without sockets on fd 3 and fd 4 the worker refuses to run");
	worker_start(&k, false);
	CHECK_EQ(worker_wait(&k), 1);
	f = fopen(worker_log, "r");
	CHECK(f);
	while (fgets(line, sizeof(line), f))
		found = found || strstr(line, "must be started by mcpkeeperd");
	fclose(f);
	CHECK(found);
}

static void test_hello_refused(void)
{
	struct keeper k = { 0 };
	struct json_object *p = json_object_new_object();
	struct rpc_msg m;
	char detail[128];

	TEST("hello with another protocol version: error, exit 1");
	worker_start(&k, true);
	json_object_object_add(p, "version", json_object_new_int(PROTO_VERSION + 1));
	json_object_object_add(p, "role", json_object_new_string(ROLE_WORKER));
	json_object_object_add(p, "name", json_object_new_string(NAME));
	keeper_send(&k, rpc_request(METHOD_HELLO, p, 1));
	CHECK_EQ(frame_read_fd(k.fd, k.in, PROTO_MAX_MESSAGE, &m, IO_TIMEOUT_MS, detail, sizeof(detail)), 0);
	CHECK_EQ(m.type, RPC_ERROR);
	rpc_msg_clear(&m);
	CHECK_EQ(worker_wait(&k), 1);

	TEST("a malformed message from the keeper ends the worker with 1");
	worker_ready(&k, transport("streamable-http", "http://127.0.0.1:9/mcp", true, 5000));
	CHECK_EQ(write(k.fd, "{not json\n", 10), 10);
	CHECK_EQ(worker_wait(&k), 1);
}

static void test_streamable(struct peer *p, const char *what)
{
	struct keeper k = { .peer = p, .answer = ANSWER_REFRESH };
	struct tclient c[10], d;
	int64_t ids[10];
	struct json_object *o, *v;
	struct rpc_msg m;

	printf("# streamable-http, %s\n", what);
	peer_login(p, &k.tok);
	worker_ready(&k, transport("streamable-http", p->mcp, true, 3000));
	keeper_token_update(&k);

	TEST("initialize, tools/list, tools/call echo and add");
	client_connect(&k, &c[0]);
	mcp_init(&k, &c[0]);
	expect_tools(&k, &c[0], 3);
	expect_echo(&k, &c[0], "hello through the worker");
	expect_add(&k, &c[0]);

	TEST("client garbage: an error reply, and the session goes on");
	client_write_raw(&c[0], "this is not json\n");
	CHECK_EQ(client_recv(&k, &c[0], &m, IO_TIMEOUT_MS), 0);
	CHECK_EQ(m.type, RPC_ERROR);
	CHECK_EQ(rpc_error_code(&m), RPC_PARSE_ERROR);
	rpc_msg_clear(&m);
	client_write_raw(&c[0], "{\"jsonrpc\":\"2.0\",\"id\":77}\n");
	CHECK_EQ(client_recv(&k, &c[0], &m, IO_TIMEOUT_MS), 0);
	CHECK_EQ(m.type, RPC_ERROR);
	CHECK_EQ(rpc_error_code(&m), RPC_INVALID_REQUEST);
	CHECK_EQ(json_object_get_int(m.id), 77);
	rpc_msg_clear(&m);
	expect_echo(&k, &c[0], "still here");

	TEST("10 concurrent clients, each its own session");
	for (int i = 1; i < 10; i++) {
		client_connect(&k, &c[i]);
		mcp_init(&k, &c[i]);
	}
	/* Every client has its GET stream open, on a session of its own. */
	wait_stat(&k, p, "get_streams", 10);
	o = peer_post(p, "/test/notify", "{\"session\":\"*\",\"method\":\"notifications/tools/list_changed\"}");
	CHECK(json_object_object_get_ex(o, "delivered", &v));
	CHECK_EQ(json_object_get_int(v), 10);
	json_object_put(o);
	for (int i = 0; i < 10; i++) {
		char args[64];

		snprintf(args, sizeof(args), "{\"text\":\"client %d\"}", i);
		ids[i] = client_request(&c[i], "tools/call", call_params("echo", args));
	}
	for (int i = 0; i < 10; i++) {
		bool notified = false, answered = false;
		char want[32];

		/* The notification (GET stream) and the response (POST) race. */
		snprintf(want, sizeof(want), "client %d", i);
		while (!notified || !answered) {
			CHECK_EQ(client_recv(&k, &c[i], &m, IO_TIMEOUT_MS), 0);
			if (m.type == RPC_NOTIFICATION) {
				CHECK(!notified);
				CHECK(strcmp(m.method, "notifications/tools/list_changed") == 0);
				notified = true;
			} else {
				CHECK(!answered);
				CHECK_EQ(json_object_get_int64(m.id), ids[i]);
				CHECK(strcmp(result_text(&m), want) == 0);
				answered = true;
			}
			rpc_msg_clear(&m);
		}
	}

	TEST("a server-initiated request reaches the client; its response reaches the server");
	o = peer_post(p, "/test/request", "{\"session\":\"*\",\"method\":\"ping\",\"id\":\"srv-1\"}");
	CHECK(json_object_object_get_ex(o, "delivered", &v));
	CHECK_EQ(json_object_get_int(v), 10);
	json_object_put(o);
	for (int i = 0; i < 10; i++) {
		CHECK_EQ(client_recv(&k, &c[i], &m, IO_TIMEOUT_MS), 0);
		CHECK_EQ(m.type, RPC_REQUEST);
		CHECK(strcmp(m.method, "ping") == 0);
		client_write(&c[i], rpc_result(m.id, NULL));
		rpc_msg_clear(&m);
	}
	wait_stat(&k, p, "responses_received", 10);

	TEST("the upstream takes too long: an error for that request, not a hang");
	{
		int64_t t0 = now_ms();

		client_call(&k, &c[1], "tools/call", call_params("slow", "{\"ms\":8000}"), &m);
		expect_error(&m, "did not answer");
		CHECK(now_ms() - t0 < 7000);
		rpc_msg_clear(&m);
		expect_echo(&k, &c[1], "after a timeout");
	}

	TEST("revoked access tokens: one token.invalid, a refresh, transparent replay");
	json_object_put(peer_post(p, "/test/revoke-access-all", "{}"));
	for (int i = 0; i < 5; i++)
		ids[i] = client_request(&c[i], "tools/call", call_params("add", "{\"a\":1,\"b\":2}"));
	for (int i = 0; i < 5; i++) {
		client_response(&k, &c[i], ids[i], &m);
		CHECK(strcmp(result_text(&m), "3") == 0);
		rpc_msg_clear(&m);
	}
	CHECK_EQ(k.invalid_count, 1);

	TEST("the keeper has no token: \"not logged in\" naming mcpctl auth login");
	json_object_put(peer_post(p, "/test/revoke-access-all", "{}"));
	k.answer = ANSWER_UNAVAILABLE;
	client_call(&k, &c[2], "tools/call", call_params("echo", "{\"text\":\"x\"}"), &m);
	expect_error(&m, "mcpctl auth login --server " NAME);
	rpc_msg_clear(&m);
	CHECK_EQ(k.invalid_count, 2);
	k.answer = ANSWER_REFRESH;
	peer_refresh(p, &k.tok);
	keeper_token_update(&k);
	expect_echo(&k, &c[2], "with a new token");

	TEST("a client that goes: client.closed with the count, its session deleted");
	{
		int closed = k.closed_count;

		for (int i = 5; i < 10; i++)
			client_close(&c[i]);
		for (int i = 0; i < 500 && k.closed_count < closed + 5; i++)
			keeper_pump(&k, 20);
		CHECK_EQ(k.closed_count, closed + 5);
		CHECK_EQ(k.last_clients, 5);
		wait_stat(&k, p, "get_streams", 5);
	}

	TEST("token.clear: sessions end, calls get \"not logged in\"");
	keeper_send(&k, rpc_notification(METHOD_TOKEN_CLEAR, json_object_new_object()));
	keeper_pump(&k, 100);
	wait_stat(&k, p, "get_streams", 0);
	client_call(&k, &c[0], "tools/call", call_params("echo", "{\"text\":\"x\"}"), &m);
	expect_error(&m, "not logged in to " NAME ": run `mcpctl auth login --server " NAME "`");
	rpc_msg_clear(&m);
	client_connect(&k, &d);
	client_call(&k, &d, "tools/list", NULL, &m);
	expect_error(&m, "mcpctl auth login --server " NAME);
	rpc_msg_clear(&m);

	TEST("a login later: a new session works");
	peer_login(p, &k.tok);
	keeper_token_update(&k);
	mcp_init(&k, &d);
	expect_echo(&k, &d, "logged in again");

	TEST("closing fd 3 ends the worker with 0 and its sessions upstream");
	for (int i = 0; i < 5; i++)
		client_close(&c[i]);
	worker_end(&k);
	client_close(&d);
	CHECK_EQ(peer_stat(p, "get_streams"), 0);
}

static void test_unreachable(void)
{
	struct keeper k = { .answer = ANSWER_UNAVAILABLE };
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sin);
	struct tclient c;
	struct rpc_msg m;
	char url[96];
	int s;

	TEST("upstream down: an error naming it, not a hang");
	/* A port that was just free: bound, read back, closed, not listened on. */
	s = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(bind(s, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	CHECK(getsockname(s, (struct sockaddr *)&sin, &len) == 0);
	close(s);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/mcp", ntohs(sin.sin_port));
	snprintf(k.tok.access, sizeof(k.tok.access), "unreachable-access-token-1");
	remember(secrets, &n_secrets, ARRAY_SIZE(secrets), k.tok.access);
	worker_ready(&k, transport("streamable-http", url, true, 10000));
	keeper_token_update(&k);
	client_connect(&k, &c);
	client_call(&k, &c, "initialize", json_object_new_object(), &m);
	expect_error(&m, "upstream " NAME " unreachable");
	rpc_msg_clear(&m);
	client_call(&k, &c, "tools/list", NULL, &m);
	expect_error(&m, "unreachable");
	rpc_msg_clear(&m);
	client_close(&c);
	worker_end(&k);
}

static void test_no_oauth_challenge(struct peer *p)
{
	struct keeper k = { .peer = p };
	struct tclient c;
	struct rpc_msg m;

	TEST("oauth false, but the upstream asks for a Bearer token: login hint, upstream.needs_login");
	worker_ready(&k, transport("streamable-http", p->mcp, false, 10000));
	client_connect(&k, &c);
	client_call(&k, &c, "initialize", json_object_new_object(), &m);
	expect_error(&m, "mcpctl auth login --server " NAME);
	rpc_msg_clear(&m);
	keeper_pump(&k, 100);
	CHECK_EQ(k.needs_login, 1);
	CHECK_EQ(k.invalid_count, 0);
	client_close(&c);
	worker_end(&k);
}

static void test_legacy_sse(struct peer *p)
{
	struct keeper k = { .peer = p, .answer = ANSWER_REFRESH };
	struct tclient c[3];
	struct json_object *o, *v;
	struct rpc_msg m;

	TEST("HTTP+SSE transport: initialize, tools/list, tools/call, sessions of their own");
	peer_login(p, &k.tok);
	worker_ready(&k, transport("sse", p->sse, true, 10000));
	keeper_token_update(&k);
	for (int i = 0; i < 3; i++) {
		client_connect(&k, &c[i]);
		mcp_init(&k, &c[i]);
	}
	expect_tools(&k, &c[0], 3);
	expect_echo(&k, &c[1], "over the old transport");
	expect_add(&k, &c[2]);
	wait_stat(&k, p, "sse_streams", 3);

	TEST("HTTP+SSE: a server notification reaches every session");
	o = peer_post(p, "/test/notify", "{\"session\":\"*\",\"method\":\"notifications/message\"}");
	CHECK(json_object_object_get_ex(o, "delivered", &v));
	CHECK_EQ(json_object_get_int(v), 3);
	json_object_put(o);
	for (int i = 0; i < 3; i++) {
		CHECK_EQ(client_recv(&k, &c[i], &m, IO_TIMEOUT_MS), 0);
		CHECK_EQ(m.type, RPC_NOTIFICATION);
		rpc_msg_clear(&m);
	}

	TEST("HTTP+SSE: revoked token, refresh, replay");
	json_object_put(peer_post(p, "/test/revoke-access-all", "{}"));
	expect_echo(&k, &c[0], "after revocation");
	CHECK_EQ(k.invalid_count, 1);

	TEST("HTTP+SSE: a client that goes ends its stream");
	client_close(&c[2]);
	wait_stat(&k, p, "sse_streams", 2);
	client_close(&c[0]);
	client_close(&c[1]);
	worker_end(&k);
	wait_stat(&k, p, "sse_streams", 0);
}

static void test_stdio(void)
{
	struct keeper k = { 0 };
	struct json_object *t = transport("stdio", NULL, false, 10000), *env = json_object_new_object();
	struct tclient c[3];
	int64_t id;
	struct rpc_msg m;
	char line[1024];
	bool started = false;
	FILE *f;

	TEST("stdio: a worker without its sandbox description runs no command");
	{
		struct json_object *bare = transport("stdio", NULL, false, 10000), *p = json_object_new_object();

		json_object_object_add(bare, "command", json_object_new_string(stdio_bin));
		worker_start(&k, true);
		json_object_object_add(p, "version", json_object_new_int(PROTO_VERSION));
		json_object_object_add(p, "role", json_object_new_string(ROLE_WORKER));
		json_object_object_add(p, "name", json_object_new_string(NAME));
		json_object_object_add(p, "transport", bare);
		keeper_send(&k, rpc_request(METHOD_HELLO, p, 1));
		CHECK_EQ(worker_wait(&k), 1);
		k = (struct keeper){ 0 };
	}

	TEST("stdio: initialize, tools/call, the command's stderr in the log");
	{
		struct jail off = { .enabled = false };

		next_jail_fd = jail_to_memfd(&off);
		CHECK(next_jail_fd >= 0);
	}
	json_object_object_add(t, "command", json_object_new_string(stdio_bin));
	json_object_object_add(t, "args", json_tokener_parse("[\"--crash-after\",\"6\"]"));
	json_object_object_add(env, "WORKER_TEST_VAR", json_object_new_string("from the config"));
	json_object_object_add(t, "env", env);
	worker_ready(&k, t);
	for (int i = 0; i < 3; i++)
		client_connect(&k, &c[i]);
	mcp_init(&k, &c[0]);
	expect_echo(&k, &c[0], "through a pipe");
	expect_add(&k, &c[0]);
	mcp_init(&k, &c[1]);

	TEST("stdio: env merged, nothing of the worker's descriptors leaked");
	client_call(&k, &c[1], "tools/call", call_params("env", "{\"name\":\"WORKER_TEST_VAR\"}"), &m);
	CHECK(strcmp(result_text(&m), "from the config") == 0);
	rpc_msg_clear(&m);
	client_call(&k, &c[1], "tools/call", call_params("env", "{\"name\":\"PATH\"}"), &m);
	CHECK(strlen(result_text(&m)) > 0);
	rpc_msg_clear(&m);
	client_call(&k, &c[1], "tools/call", call_params("fds", "{}"), &m);
	CHECK(strcmp(result_text(&m), "") == 0);
	rpc_msg_clear(&m);

	TEST("stdio: the command dies mid-request: an error for it, the client closed");
	/* --crash-after 6, per command: the seventh request of c[0]
	 * (initialize, echo, add, then three tools/list). */
	for (int i = 0; i < 3; i++)
		expect_tools(&k, &c[0], 3);
	id = client_request(&c[0], "tools/call", call_params("echo", "{\"text\":\"never\"}"));
	client_response(&k, &c[0], id, &m);
	expect_error(&m, "upstream " NAME ": the command exited");
	rpc_msg_clear(&m);
	CHECK_EQ(client_recv(&k, &c[0], &m, IO_TIMEOUT_MS), -EPIPE);
	client_close(&c[0]);
	/* The others go on. */
	expect_echo(&k, &c[1], "unaffected");
	mcp_init(&k, &c[2]);
	expect_echo(&k, &c[2], "a new one");

	client_close(&c[1]);
	client_close(&c[2]);
	worker_end(&k);
	f = fopen(worker_log, "r");
	CHECK(f);
	while (fgets(line, sizeof(line), f))
		started = started || (strstr(line, "mcpkeeper-worker[" NAME "]") && strstr(line, NAME ": stdio-mcp: started"));
	fclose(f);
	CHECK(started);
}

/* A string (or null) of a scripted upstream's result. */
static const char *fake_result(const struct rpc_msg *m, const char *key)
{
	struct json_object *v;

	if (m->type != RPC_RESULT) {
		fprintf(stderr, "expected a result, got %s\n", json_object_to_json_string(m->root));
		CHECK(0);
	}
	CHECK(json_object_object_get_ex(m->result, key, &v));
	return json_object_is_type(v, json_type_null) ? "(null)" : json_object_get_string(v);
}

static int fake_connection(const struct rpc_msg *m)
{
	return atoi(fake_result(m, "connection"));
}

static void fake_call(struct keeper *k, struct tclient *c, const char *method, const char *params,
		      struct rpc_msg *m)
{
	client_call(k, c, method, params ? json_tokener_parse(params) : NULL, m);
}

/* A session's requests reuse what they can (the upstream connection, the
 * handle, the header lines): never at the cost of a stale header or of
 * a request after an error. */
static void test_session_reuse(struct peer *f)
{
	struct keeper k = { .answer = ANSWER_UNAVAILABLE };
	struct tclient c;
	struct rpc_msg m;
	int conns[50], distinct = 0, last = 0;

	printf("# streamable-http against a scripted upstream\n");
	snprintf(k.tok.access, sizeof(k.tok.access), "scripted-access-token-1");
	remember(secrets, &n_secrets, ARRAY_SIZE(secrets), k.tok.access);
	worker_ready(&k, transport("streamable-http", f->mcp, true, 10000));
	keeper_token_update(&k);
	client_connect(&k, &c);
	mcp_init(&k, &c);

	/* The GET stream that notifications/initialized opens may overlap
	 * the first request and hold a second connection for a moment. */
	TEST("one session, 50 requests in a row: kept-alive upstream connections, the session's headers on each");
	for (int i = 0; i < 50; i++) {
		bool known = false;

		fake_call(&k, &c, "test/echo", NULL, &m);
		last = fake_connection(&m);
		for (int j = 0; j < distinct; j++)
			known = known || conns[j] == last;
		if (!known)
			conns[distinct++] = last;
		CHECK(strcmp(fake_result(&m, "authorization"), "Bearer scripted-access-token-1") == 0);
		CHECK(strcmp(fake_result(&m, "session"), "fake-session-1") == 0);
		CHECK(strcmp(fake_result(&m, "version"), "2025-06-18") == 0);
		rpc_msg_clear(&m);
	}
	printf("# %d upstream connection(s) for 50 requests\n", distinct);
	CHECK(distinct <= 2);

	TEST("the upstream drops the connection mid-request: an error for it; the next request works");
	fake_call(&k, &c, "test/drop", NULL, &m);
	expect_error(&m, "upstream " NAME);
	rpc_msg_clear(&m);
	fake_call(&k, &c, "test/echo", NULL, &m);
	last = fake_connection(&m);
	CHECK(strcmp(fake_result(&m, "session"), "fake-session-1") == 0);
	rpc_msg_clear(&m);

	TEST("an HTTP error: an error for it; the connection stays in use");
	fake_call(&k, &c, "test/status", "{\"status\":500}", &m);
	expect_error(&m, "answered HTTP 500");
	rpc_msg_clear(&m);
	for (int i = 0; i < 5; i++) {
		fake_call(&k, &c, "test/echo", NULL, &m);
		/* No new connection: the numbers go up with each one accepted. */
		CHECK(fake_connection(&m) <= last);
		rpc_msg_clear(&m);
	}

	TEST("a new token: the next request carries it, in the same session");
	snprintf(k.tok.access, sizeof(k.tok.access), "scripted-access-token-2");
	remember(secrets, &n_secrets, ARRAY_SIZE(secrets), k.tok.access);
	keeper_token_update(&k);
	fake_call(&k, &c, "test/echo", NULL, &m);
	CHECK(strcmp(fake_result(&m, "authorization"), "Bearer scripted-access-token-2") == 0);
	CHECK(strcmp(fake_result(&m, "session"), "fake-session-1") == 0);
	rpc_msg_clear(&m);

	TEST("a new initialize: the next request carries the new session");
	mcp_init(&k, &c);
	fake_call(&k, &c, "test/echo", NULL, &m);
	CHECK(strcmp(fake_result(&m, "session"), "fake-session-2") == 0);
	CHECK(strcmp(fake_result(&m, "authorization"), "Bearer scripted-access-token-2") == 0);
	rpc_msg_clear(&m);

	TEST("five requests in flight on one session: five answers");
	{
		bool seen[5] = { false };
		int64_t first = c.next_id;

		for (int i = 0; i < 5; i++)
			client_request(&c, "test/echo", NULL);
		for (int i = 0; i < 5; i++) {
			int64_t id;

			CHECK_EQ(client_recv(&k, &c, &m, IO_TIMEOUT_MS), 0);
			CHECK_EQ(m.type, RPC_RESULT);
			id = json_object_get_int64(m.id) - first;
			CHECK(id >= 0 && id < 5 && !seen[id]);
			seen[id] = true;
			rpc_msg_clear(&m);
		}
	}

	TEST("twenty requests in one write: twenty answers");
	{
		struct evbuffer *b = evbuffer_new();
		int64_t first = c.next_id;
		bool seen[20] = { false };
		size_t len;

		for (int i = 0; i < 20; i++) {
			struct json_object *r = rpc_request("test/echo", NULL, c.next_id++);

			evbuffer_add_printf(b, "%s\n", json_object_to_json_string_ext(r, JSON_C_TO_STRING_PLAIN));
			json_object_put(r);
		}
		len = evbuffer_get_length(b);
		CHECK_EQ(write(c.fd, evbuffer_pullup(b, -1), len), (ssize_t)len);
		evbuffer_free(b);
		/* In flight together: answers in any order. */
		for (int i = 0; i < 20; i++) {
			int64_t id;

			CHECK_EQ(client_recv(&k, &c, &m, IO_TIMEOUT_MS), 0);
			CHECK_EQ(m.type, RPC_RESULT);
			id = json_object_get_int64(m.id) - first;
			CHECK(id >= 0 && id < 20 && !seen[id]);
			seen[id] = true;
			rpc_msg_clear(&m);
		}
	}

	TEST("a reply larger than the socket takes at once: all of it, then the next");
	{
		struct json_object *v;

		fake_call(&k, &c, "test/big", "{\"size\":900000}", &m);
		CHECK_EQ(m.type, RPC_RESULT);
		CHECK(json_object_object_get_ex(m.result, "data", &v));
		CHECK_EQ(json_object_get_string_len(v), 900000);
		rpc_msg_clear(&m);
		fake_call(&k, &c, "test/echo", NULL, &m);
		CHECK_EQ(m.type, RPC_RESULT);
		rpc_msg_clear(&m);
	}

	TEST("end of input with a request in flight: its answer, then the worker closes");
	{
		int64_t id = client_request(&c, "test/echo", NULL);

		CHECK(shutdown(c.fd, SHUT_WR) == 0);
		CHECK_EQ(client_recv(&k, &c, &m, IO_TIMEOUT_MS), 0);
		CHECK_EQ(json_object_get_int64(m.id), id);
		CHECK_EQ(m.type, RPC_RESULT);
		rpc_msg_clear(&m);
		CHECK_EQ(client_recv(&k, &c, &m, IO_TIMEOUT_MS), -EPIPE);
	}
	client_close(&c);
	worker_end(&k);
}

static void test_record_and_log(void)
{
	size_t len = evbuffer_get_length(record);
	char *rec = strndup((const char *)evbuffer_pullup(record, -1), len), *log;
	struct stat st;
	FILE *f;

	TEST("fd 3 carried access tokens and never a refresh token");
	CHECK(rec);
	CHECK(n_refresh > 0);
	/* The recorder works: the access tokens handed over are in it. */
	CHECK(strstr(rec, METHOD_TOKEN_UPDATE) && strstr(rec, METHOD_TOKEN_INVALID));
	for (size_t i = 0; i < n_refresh; i++)
		CHECK(!strstr(rec, refresh_tokens[i]));
	CHECK(!strstr(rec, "refresh_token") && !strstr(rec, "client_secret"));

	TEST("the worker's log holds no token");
	CHECK(stat(worker_log, &st) == 0);
	log = calloc(1, (size_t)st.st_size + 1);
	f = fopen(worker_log, "r");
	CHECK(log && f);
	CHECK_EQ(fread(log, 1, (size_t)st.st_size, f), (size_t)st.st_size);
	fclose(f);
	CHECK(strstr(log, "refused the token"));
	for (size_t i = 0; i < n_secrets; i++) {
		if (strstr(log, secrets[i])) {
			fprintf(stderr, "the worker's log contains a token (#%zu)\n", i);
			CHECK(0);
		}
	}
	printf("# checked %zu tokens against %lld bytes of log and %zu bytes of fd 3\n", n_secrets,
	       (long long)st.st_size, len);
	free(log);
	free(rec);
}

static void cleanup(void)
{
	for (size_t i = 0; i < n_peers; i++)
		peer_stop(peers[i]);
	if ((!finished || getenv("TEST_WORKER_SHOW_LOG")) && worker_log[0]) {
		FILE *f = fopen(worker_log, "r");
		char line[2048];

		fprintf(stderr, "---- worker log (%s) ----\n", worker_log);
		while (f && fgets(line, sizeof(line), f))
			fputs(line, stderr);
		if (f)
			fclose(f);
	}
	if (worker_log[0])
		unlink(worker_log);
	if (tmpdir[0])
		rmdir(tmpdir);
	for (size_t i = 0; i < n_secrets; i++)
		free(secrets[i]);
	for (size_t i = 0; i < n_refresh; i++)
		free(refresh_tokens[i]);
}

int main(int argc, char **argv)
{
	struct peer pj = { 0 }, ps = { 0 }, fake = { 0 };

	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: %s MCPKEEPER-WORKER TEST-PEER [STDIO-SERVER]\n", argv[0]);
		return 2;
	}
	worker_bin = argv[1];
	peer_bin = argv[2];
	stdio_bin = argc > 3 ? argv[3] : NULL;
	signal(SIGPIPE, SIG_IGN);
	CHECK(sodium_init() >= 0);
	CHECK_EQ(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test-worker.XXXXXX");
	CHECK(mkdtemp(tmpdir));
	snprintf(worker_log, sizeof(worker_log), "%s/worker.log", tmpdir);
	record = evbuffer_new();
	atexit(cleanup);

	test_not_started_by_keeper();
	test_hello_refused();

	peer_start(&pj, (const char *const[]){ "--client-id", CLIENT_ID, "--token-lifetime", "600", NULL });
	peer_start(&ps, (const char *const[]){ "--client-id", CLIENT_ID, "--token-lifetime", "600", "--sse", NULL });
	test_streamable(&pj, "JSON answers");
	test_streamable(&ps, "SSE answers");
	test_unreachable();
	test_no_oauth_challenge(&pj);
	test_legacy_sse(&pj);
	fake_start(&fake);
	test_session_reuse(&fake);
	if (stdio_bin)
		test_stdio();
	else
		test_skip("stdio transport", "no stdio server given");
	test_record_and_log();

	evbuffer_free(record);
	curl_global_cleanup();
	test_sanitizer_check(worker_log);
	finished = true;
	printf("# all worker tests passed\n");
	return 0;
}
