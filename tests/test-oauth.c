/*
 * The oauth child, end to end: the real mcpkeeper-oauth started the way the
 * keeper starts it (fork+exec, socketpair on fd 3, stdin /dev/null, stderr
 * to a file), driven over the framing module, refreshing against the real
 * test peer (mcpkeeper-test-peer) with failure injection.
 *
 * Usage: test-oauth PATH-TO-mcpkeeper-oauth PATH-TO-mcpkeeper-test-peer
 *
 * Every case asserts what the keeper relies on: the classification
 * (transient / terminal, oauth_error, http_status), matching ids, exit codes,
 * and that no token or secret used here ever reaches the child's log.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <json-c/json.h>
#include <linux/landlock.h>
#include <sodium.h>

#include "frame.h"
#include "proto.h"
#include "sandbox.h"
#include "test.h"
#include "util.h"

#define IO_TIMEOUT_MS 30000
#define PUBLIC_CLIENT "pub-client"
#define CONF_CLIENT "conf-client"
/* Characters that form-encoding must get right, in Basic and in the body. */
#define CONF_SECRET "s3 cr:t+/&=%~x"
#define WRONG_SECRET "wrong-secret-9f8e7d"

static const char *oauth_bin;
static const char *peer_bin;
static char tmpdir[64];
static char child_log[128];
static bool finished;

/* Every token and secret the test handles: none may appear in the log. */
static char *secrets[256];
static size_t n_secrets;

static void secret_remember(const char *s)
{
	CHECK(n_secrets < ARRAY_SIZE(secrets));
	secrets[n_secrets] = strdup(s);
	CHECK(secrets[n_secrets]);
	n_secrets++;
}

/* -- peers -- */

struct peer {
	pid_t pid;
	int port;
	char base[64];		/* http://127.0.0.1:PORT */
	char resource[96];
	char token_endpoint[96];
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
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed test */
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
	snprintf(p->resource, sizeof(p->resource), "%s/mcp", p->base);
	snprintf(p->token_endpoint, sizeof(p->token_endpoint), "%s/token", p->base);
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

/* -- HTTP to the peer (the test's own side: login, failure injection) -- */

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
	char header[128];
	char *loc = NULL;

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
	struct json_object *o;
	char *copy = strndup(s ? s : "", len);

	o = json_tokener_parse(copy);
	free(copy);
	CHECK(json_object_is_type(o, json_type_object));
	return o;
}

static void peer_fail(struct peer *p, const char *mode, int count)
{
	struct http_reply r;
	char url[128], body[96];

	snprintf(url, sizeof(url), "%s/test/fail", p->base);
	snprintf(body, sizeof(body), "{\"mode\":\"%s\",\"count\":%d}", mode, count);
	http(url, "application/json", body, &r);
	CHECK_EQ(r.status, 200);
	http_reply_clear(&r);
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

/* Waits until the peer has answered (or is holding) the n-th injected failure. */
static void peer_wait_injected(struct peer *p, long long n)
{
	for (int i = 0; i < 3000 && peer_stat(p, "failures_injected") < n; i++)
		usleep(10000);
	CHECK(peer_stat(p, "failures_injected") >= n);
}

static char *url_escape(const char *s)
{
	char *e = curl_easy_escape(NULL, s, 0);
	char *copy;

	CHECK(e);
	copy = strdup(e);
	curl_free(e);
	return copy;
}

struct tokens {
	char *access;
	char *refresh;
};

/* The authorization code flow with PKCE against the peer, as a user's
 * browser and mcpctl would do it: returns a fresh pair of tokens. */
static void peer_login(struct peer *p, const char *client_id, const char *secret, struct tokens *t)
{
	const char *redirect = "http://127.0.0.1:9/callback";
	unsigned char raw[32], hash[crypto_hash_sha256_BYTES];
	char verifier[64], challenge[64], url[1024], body[1024], *code, *amp, *cid, *res, *red, *sec = NULL;
	struct http_reply r;
	struct json_object *o, *v;

	randombytes_buf(raw, sizeof(raw));
	sodium_bin2base64(verifier, sizeof(verifier), raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	crypto_hash_sha256(hash, (const unsigned char *)verifier, strlen(verifier));
	sodium_bin2base64(challenge, sizeof(challenge), hash, sizeof(hash), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	cid = url_escape(client_id);
	res = url_escape(p->resource);
	red = url_escape(redirect);

	snprintf(url, sizeof(url),
		 "%s/authorize?response_type=code&client_id=%s&redirect_uri=%s&state=st8&scope=mcp"
		 "&code_challenge=%s&code_challenge_method=S256&resource=%s",
		 p->base, cid, red, challenge, res);
	http(url, NULL, NULL, &r);
	CHECK_EQ(r.status, 302);
	CHECK(r.location);
	code = strstr(r.location, "?code=");
	CHECK(code);
	code = strdup(code + 6);
	amp = strchr(code, '&');
	if (amp)
		*amp = '\0';
	CHECK(strstr(r.location, "state=st8"));
	http_reply_clear(&r);

	if (secret)
		sec = url_escape(secret);
	snprintf(body, sizeof(body),
		 "grant_type=authorization_code&code=%s&code_verifier=%s&redirect_uri=%s&client_id=%s%s%s"
		 "&resource=%s",
		 code, verifier, red, cid, sec ? "&client_secret=" : "", sec ? sec : "", res);
	snprintf(url, sizeof(url), "%s/token", p->base);
	http(url, "application/x-www-form-urlencoded", body, &r);
	CHECK_EQ(r.status, 200);
	o = http_json(&r);
	CHECK(json_object_object_get_ex(o, "access_token", &v));
	t->access = strdup(json_object_get_string(v));
	CHECK(json_object_object_get_ex(o, "refresh_token", &v));
	t->refresh = strdup(json_object_get_string(v));
	secret_remember(t->access);
	secret_remember(t->refresh);
	json_object_put(o);
	http_reply_clear(&r);
	free(code);
	free(cid);
	free(res);
	free(red);
	free(sec);
}

static void tokens_clear(struct tokens *t)
{
	free(t->access);
	free(t->refresh);
	t->access = t->refresh = NULL;
}

/* -- the child -- */

struct child {
	pid_t pid;
	int fd;
	struct evbuffer *in;
};

/* As the keeper does it; with_channel false leaves fd 3 closed. */
static void child_start(struct child *c, bool with_channel)
{
	int sv[2], logfd;

	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	logfd = open(child_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	CHECK(logfd >= 0);
	c->pid = fork();
	CHECK(c->pid >= 0);
	if (c->pid == 0) {
		int devnull = open("/dev/null", O_RDONLY);

		dup2(devnull, STDIN_FILENO);
		dup2(logfd, STDERR_FILENO);
		if (with_channel && sv[1] == 3)
			fcntl(3, F_SETFD, 0);
		else if (with_channel)
			dup2(sv[1], 3); /* dup2 clears close-on-exec */
		else
			close(3);
		execl(oauth_bin, oauth_bin, (char *)NULL);
		_exit(127);
	}
	close(sv[1]);
	close(logfd);
	c->fd = sv[0];
	c->in = evbuffer_new();
	CHECK(c->in);
}

/* Exit status of the child, waiting up to 30 s; it must exit on its own. */
static int child_wait(struct child *c)
{
	int status = 0;
	pid_t r = 0;

	for (int i = 0; i < 3000 && (r = waitpid(c->pid, &status, WNOHANG)) == 0; i++)
		usleep(10000);
	if (r == 0) {
		kill(c->pid, SIGKILL);
		waitpid(c->pid, &status, 0);
		fprintf(stderr, "child %d did not exit\n", (int)c->pid);
		CHECK(0);
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	evbuffer_free(c->in);
	c->in = NULL;
	CHECK(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static void child_send(struct child *c, struct json_object *msg)
{
	CHECK_EQ(frame_write_fd(c->fd, msg, PROTO_MAX_MESSAGE, IO_TIMEOUT_MS), 0);
	json_object_put(msg);
}

static void child_recv(struct child *c, struct rpc_msg *m)
{
	char detail[128] = "";
	int r = frame_read_fd(c->fd, c->in, PROTO_MAX_MESSAGE, m, IO_TIMEOUT_MS, detail, sizeof(detail));

	if (r != 0)
		fprintf(stderr, "reading from the child: %d %s\n", r, detail);
	CHECK_EQ(r, 0);
}

static struct json_object *hello_params(int version, const char *role)
{
	struct json_object *p = json_object_new_object();

	json_object_object_add(p, "version", json_object_new_int(version));
	json_object_object_add(p, "role", json_object_new_string(role));
	json_object_object_add(p, "log_level", json_object_new_string("debug"));
	return p;
}

static const char *expected_landlock(void)
{
	long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);

	return abi >= 1 ? "enforced" : "unavailable";
}

/* Starts a child and completes the hello. */
static void child_ready(struct child *c)
{
	struct rpc_msg m;
	struct json_object *v;

	child_start(c, true);
	child_send(c, rpc_request(METHOD_HELLO, hello_params(PROTO_VERSION, ROLE_OAUTH), 1));
	child_recv(c, &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK_EQ(json_object_get_int(m.id), 1);
	CHECK(json_object_object_get_ex(m.result, "version", &v));
	CHECK_EQ(json_object_get_int(v), PROTO_VERSION);
	CHECK(json_object_object_get_ex(m.result, "pid", &v));
	CHECK_EQ(json_object_get_int(v), c->pid);
	CHECK(json_object_object_get_ex(m.result, "landlock", &v));
	CHECK(strcmp(json_object_get_string(v), expected_landlock()) == 0);
	rpc_msg_clear(&m);
}

struct refresh_args {
	const char *server;
	const char *endpoint;
	const char *refresh_token;
	const char *client_id;
	const char *client_secret;
	const char *auth_method;
	const char *resource;
	const char *scope;
	int timeout_ms;
};

static struct json_object *refresh_params(const struct refresh_args *a)
{
	struct json_object *p = json_object_new_object();

#define ADD(key, val)                                                              \
	do {                                                                       \
		if (val)                                                           \
			json_object_object_add(p, key, json_object_new_string(val)); \
	} while (0)
	ADD("server", a->server);
	ADD("token_endpoint", a->endpoint);
	ADD("refresh_token", a->refresh_token);
	ADD("client_id", a->client_id);
	ADD("client_secret", a->client_secret);
	ADD("auth_method", a->auth_method ? a->auth_method : "none");
	ADD("resource", a->resource);
	ADD("scope", a->scope);
#undef ADD
	json_object_object_add(p, "timeout_ms", json_object_new_int(a->timeout_ms ? a->timeout_ms : 10000));
	return p;
}

/* One refresh, answered before anything else is sent. */
static void refresh(struct child *c, int64_t id, const struct refresh_args *a, struct rpc_msg *m)
{
	child_send(c, rpc_request(METHOD_OAUTH_REFRESH, refresh_params(a), id));
	child_recv(c, m);
	CHECK(m->id);
	CHECK_EQ(json_object_get_int64(m->id), id);
}

static void expect_error(const struct rpc_msg *m, const char *kind, const char *oauth_error, int http_status)
{
	struct json_object *data, *v;

	if (m->type != RPC_ERROR)
		fprintf(stderr, "expected an error, got %s\n", json_object_to_json_string(m->root));
	CHECK_EQ(m->type, RPC_ERROR);
	CHECK_EQ(rpc_error_code(m), RPC_APP_ERROR);
	CHECK(strcmp(rpc_error_kind(m), kind) == 0);
	CHECK(rpc_error_message(m) && *rpc_error_message(m));
	CHECK(json_object_object_get_ex(m->error, "data", &data));
	if (oauth_error) {
		CHECK(json_object_object_get_ex(data, "oauth_error", &v));
		CHECK(strcmp(json_object_get_string(v), oauth_error) == 0);
	} else {
		CHECK(!json_object_object_get_ex(data, "oauth_error", NULL));
	}
	if (http_status) {
		CHECK(json_object_object_get_ex(data, "http_status", &v));
		CHECK_EQ(json_object_get_int(v), http_status);
	} else {
		CHECK(!json_object_object_get_ex(data, "http_status", NULL));
	}
}

/* A successful refresh: remembers the new tokens, returns the new refresh token. */
static char *expect_tokens(const struct rpc_msg *m, const char *old_refresh, int lifetime)
{
	struct json_object *v;
	char *rt;

	if (m->type != RPC_RESULT)
		fprintf(stderr, "expected a result, got %s\n", json_object_to_json_string(m->root));
	CHECK_EQ(m->type, RPC_RESULT);
	CHECK(json_object_object_get_ex(m->result, "access_token", &v));
	CHECK(json_object_get_string_len(v) > 0);
	secret_remember(json_object_get_string(v));
	CHECK(json_object_object_get_ex(m->result, "token_type", &v));
	CHECK(strcmp(json_object_get_string(v), "Bearer") == 0);
	CHECK(json_object_object_get_ex(m->result, "expires_in", &v));
	CHECK(json_object_is_type(v, json_type_int));
	CHECK_EQ(json_object_get_int(v), lifetime);
	CHECK(json_object_object_get_ex(m->result, "scope", &v));
	CHECK(strcmp(json_object_get_string(v), "mcp") == 0);
	CHECK(json_object_object_get_ex(m->result, "http_status", &v));
	CHECK_EQ(json_object_get_int(v), 200);
	CHECK(json_object_object_get_ex(m->result, "refresh_token", &v));
	CHECK(strcmp(json_object_get_string(v), old_refresh) != 0);
	rt = strdup(json_object_get_string(v));
	secret_remember(rt);
	return rt;
}

/* -- cases -- */

static void test_sandbox(void)
{
	char secret_file[128], new_file[128];
	int fd, status;
	pid_t pid;

	TEST("sandbox: read-only beneath the given paths, nothing elsewhere, no writes");
	snprintf(secret_file, sizeof(secret_file), "%s/state-secret", tmpdir);
	snprintf(new_file, sizeof(new_file), "%s/new-file", tmpdir);
	fd = open(secret_file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0);
	CHECK_EQ(write(fd, "key", 3), 3);
	close(fd);

	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		const char *paths[] = { "/usr", "/dev/urandom", "/nonexistent/path", NULL };
		char st[128], byte;
		int r = sandbox_landlock_readonly(paths, st, sizeof(st));

		if (r == SANDBOX_UNAVAILABLE)
			_exit(strcmp(st, "unavailable") == 0 ? 77 : 10);
		if (r != 0 || strcmp(st, "enforced") != 0)
			_exit(11);
		if (open("/usr/bin", O_RDONLY | O_DIRECTORY) < 0)
			_exit(12);
		fd = open("/dev/urandom", O_RDONLY);
		if (fd < 0 || read(fd, &byte, 1) != 1)
			_exit(13);
		if (open(secret_file, O_RDONLY) >= 0 || errno != EACCES)
			_exit(14);
		if (open(new_file, O_WRONLY | O_CREAT, 0600) >= 0 || errno != EACCES)
			_exit(15);
		/* Not even where reading is allowed (/dev/urandom is writable by
		 * anyone without the sandbox). */
		if (open("/dev/urandom", O_WRONLY) >= 0 || errno != EACCES)
			_exit(16);
		if (open("/usr/.mcpkeeper-test-oauth", O_WRONLY | O_CREAT | O_EXCL, 0600) >= 0 || errno != EACCES)
			_exit(18);
		if (open("/dev/null", O_WRONLY) >= 0 || errno != EACCES)
			_exit(17);
		_exit(0);
	}
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status));
	if (strcmp(expected_landlock(), "enforced") == 0) {
		CHECK_EQ(WEXITSTATUS(status), 0);
	} else {
		CHECK_EQ(WEXITSTATUS(status), 77);
		printf("# Landlock unavailable on this kernel: enforcement not checked\n");
	}
	unlink(secret_file);
}

static void test_not_started_by_keeper(void)
{
	struct child c;
	FILE *f;
	char line[512];
	bool found = false;

	TEST("without a socket on fd 3 the child refuses to run");
	child_start(&c, false);
	CHECK_EQ(child_wait(&c), 1);
	f = fopen(child_log, "r");
	CHECK(f);
	while (fgets(line, sizeof(line), f))
		found = found || strstr(line, "must be started by mcpkeeperd");
	fclose(f);
	CHECK(found);
}

static void test_hello(void)
{
	struct child c;
	struct rpc_msg m;

	TEST("hello with another protocol version: error, exit 1");
	child_start(&c, true);
	child_send(&c, rpc_request(METHOD_HELLO, hello_params(PROTO_VERSION + 1, ROLE_OAUTH), 1));
	child_recv(&c, &m);
	CHECK_EQ(m.type, RPC_ERROR);
	CHECK_EQ(json_object_get_int(m.id), 1);
	CHECK_EQ(rpc_error_code(&m), RPC_INVALID_PARAMS);
	rpc_msg_clear(&m);
	CHECK_EQ(child_wait(&c), 1);

	TEST("hello for another role: error, exit 1");
	child_start(&c, true);
	child_send(&c, rpc_request(METHOD_HELLO, hello_params(PROTO_VERSION, ROLE_WORKER), 1));
	child_recv(&c, &m);
	CHECK_EQ(m.type, RPC_ERROR);
	rpc_msg_clear(&m);
	CHECK_EQ(child_wait(&c), 1);

	TEST("a refresh before the hello: error, exit 1");
	child_start(&c, true);
	child_send(&c, rpc_request(METHOD_OAUTH_REFRESH, json_object_new_object(), 5));
	child_recv(&c, &m);
	CHECK_EQ(m.type, RPC_ERROR);
	CHECK_EQ(json_object_get_int(m.id), 5);
	rpc_msg_clear(&m);
	CHECK_EQ(child_wait(&c), 1);

	TEST("hello: version, pid and the Landlock state");
	child_ready(&c);
	close(c.fd);
	c.fd = -1;
	CHECK_EQ(child_wait(&c), 0);
}

static void test_refresh_and_reuse(struct child *c, struct peer *p)
{
	struct refresh_args a = { .server = "peer-a", .endpoint = p->token_endpoint, .client_id = PUBLIC_CLIENT,
				  .resource = p->resource, .scope = "mcp" };
	struct tokens t;
	struct rpc_msg m;
	char *rt1, *rt2;

	TEST("refresh: new access token, rotated refresh token, expires_in");
	peer_login(p, PUBLIC_CLIENT, NULL, &t);
	a.refresh_token = t.refresh;
	refresh(c, 10, &a, &m);
	rt1 = expect_tokens(&m, t.refresh, 600);
	rpc_msg_clear(&m);

	TEST("refresh again with the rotated token (no scope, host name endpoint)");
	{
		char endpoint[96];

		snprintf(endpoint, sizeof(endpoint), "http://localhost:%d/token", p->port);
		a.endpoint = endpoint;
		a.scope = NULL;
		a.refresh_token = rt1;
		refresh(c, 11, &a, &m);
		rt2 = expect_tokens(&m, rt1, 600);
		rpc_msg_clear(&m);
		a.endpoint = p->token_endpoint;
	}

	TEST("reusing a retired refresh token: terminal invalid_grant");
	a.refresh_token = t.refresh;
	refresh(c, 12, &a, &m);
	expect_error(&m, KIND_TERMINAL, "invalid_grant", 400);
	rpc_msg_clear(&m);
	CHECK_EQ(peer_stat(p, "reused_refresh_tokens"), 1);

	TEST("after reuse the whole family is revoked: the current token is refused too");
	a.refresh_token = rt2;
	refresh(c, 13, &a, &m);
	expect_error(&m, KIND_TERMINAL, "invalid_grant", 400);
	rpc_msg_clear(&m);

	free(rt1);
	free(rt2);
	tokens_clear(&t);
}

static void test_injected_failures(struct child *c, struct peer *p)
{
	struct refresh_args a = { .server = "peer-a", .endpoint = p->token_endpoint, .client_id = PUBLIC_CLIENT,
				  .resource = p->resource };
	struct tokens t;
	struct rpc_msg m;
	long long injected = peer_stat(p, "failures_injected");
	char *rt;

	peer_login(p, PUBLIC_CLIENT, NULL, &t);
	a.refresh_token = t.refresh;

	TEST("HTTP 500: transient, http_status 500");
	peer_fail(p, "500", 1);
	refresh(c, 20, &a, &m);
	expect_error(&m, KIND_TRANSIENT, "server_error", 500);
	rpc_msg_clear(&m);

	TEST("HTTP 429: transient, http_status 429");
	peer_fail(p, "429", 1);
	refresh(c, 21, &a, &m);
	expect_error(&m, KIND_TRANSIENT, "slow_down", 429);
	rpc_msg_clear(&m);

	TEST("a malformed 200 response: transient");
	peer_fail(p, "malformed", 1);
	refresh(c, 22, &a, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 200);
	CHECK(strstr(rpc_error_message(&m), "malformed"));
	rpc_msg_clear(&m);

	TEST("an injected invalid_grant: terminal");
	peer_fail(p, "invalid_grant", 1);
	refresh(c, 23, &a, &m);
	expect_error(&m, KIND_TERMINAL, "invalid_grant", 400);
	rpc_msg_clear(&m);

	TEST("a hanging token endpoint with timeout_ms 1000: transient timeout");
	peer_fail(p, "hang", 1);
	a.timeout_ms = 1000;
	refresh(c, 24, &a, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "timed out"));
	rpc_msg_clear(&m);
	a.timeout_ms = 0;
	CHECK_EQ(peer_stat(p, "failures_injected"), injected + 5);

	TEST("injected failures rotate nothing: the same refresh token still works");
	refresh(c, 25, &a, &m);
	rt = expect_tokens(&m, t.refresh, 600);
	rpc_msg_clear(&m);
	free(rt);
	tokens_clear(&t);
}

static void test_concurrent(struct child *c, struct peer *p)
{
	struct refresh_args a = { .server = "peer-a", .endpoint = p->token_endpoint, .client_id = PUBLIC_CLIENT };
	struct tokens t[10], hung;
	bool seen[10] = { false };
	struct rpc_msg m;
	long long injected = peer_stat(p, "failures_injected");

	TEST("a hung refresh does not hold up 10 concurrent ones; every reply has its id");
	for (int i = 0; i < 10; i++)
		peer_login(p, PUBLIC_CLIENT, NULL, &t[i]);
	peer_login(p, PUBLIC_CLIENT, NULL, &hung);

	peer_fail(p, "hang", 1);
	a.refresh_token = hung.refresh;
	a.timeout_ms = 6000;
	child_send(c, rpc_request(METHOD_OAUTH_REFRESH, refresh_params(&a), 99));
	peer_wait_injected(p, injected + 1);

	a.timeout_ms = 0;
	for (int i = 0; i < 10; i++) {
		struct json_object *req;

		a.refresh_token = t[i].refresh;
		req = rpc_request(METHOD_OAUTH_REFRESH, refresh_params(&a), 0);
		if (i % 2) {
			/* String ids too: the child must echo whatever it got. */
			char id[16];

			snprintf(id, sizeof(id), "r-%d", i);
			json_object_object_add(req, "id", json_object_new_string(id));
		} else {
			json_object_object_add(req, "id", json_object_new_int(100 + i));
		}
		child_send(c, req);
	}
	for (int n = 0; n < 10; n++) {
		int i;
		char *rt;

		child_recv(c, &m);
		if (json_object_is_type(m.id, json_type_string)) {
			CHECK(sscanf(json_object_get_string(m.id), "r-%d", &i) == 1);
			CHECK(i % 2 == 1);
		} else {
			i = json_object_get_int(m.id) - 100;
			CHECK(i % 2 == 0);
		}
		CHECK(i >= 0 && i < 10 && !seen[i]);
		seen[i] = true;
		rt = expect_tokens(&m, t[i].refresh, 600);
		free(rt);
		rpc_msg_clear(&m);
	}
	child_recv(c, &m);
	CHECK_EQ(json_object_get_int(m.id), 99);
	expect_error(&m, KIND_TRANSIENT, NULL, 0);
	rpc_msg_clear(&m);
	for (int i = 0; i < 10; i++)
		tokens_clear(&t[i]);
	tokens_clear(&hung);
}

static void test_client_auth(struct child *c, struct peer *p)
{
	struct refresh_args a = { .server = "peer-b", .endpoint = p->token_endpoint, .client_id = CONF_CLIENT,
				  .client_secret = CONF_SECRET };
	struct tokens t;
	struct rpc_msg m;
	char *rt1, *rt2;

	peer_login(p, CONF_CLIENT, CONF_SECRET, &t);

	TEST("client_secret_basic (id and secret form-encoded before base64)");
	a.auth_method = "client_secret_basic";
	a.refresh_token = t.refresh;
	refresh(c, 30, &a, &m);
	rt1 = expect_tokens(&m, t.refresh, 600);
	rpc_msg_clear(&m);

	TEST("client_secret_post");
	a.auth_method = "client_secret_post";
	a.refresh_token = rt1;
	refresh(c, 31, &a, &m);
	rt2 = expect_tokens(&m, rt1, 600);
	rpc_msg_clear(&m);

	TEST("a wrong secret, basic and post: terminal invalid_client");
	a.client_secret = WRONG_SECRET;
	a.refresh_token = rt2;
	a.auth_method = "client_secret_basic";
	refresh(c, 32, &a, &m);
	expect_error(&m, KIND_TERMINAL, "invalid_client", 401);
	rpc_msg_clear(&m);
	a.auth_method = "client_secret_post";
	refresh(c, 33, &a, &m);
	expect_error(&m, KIND_TERMINAL, "invalid_client", 401);
	rpc_msg_clear(&m);

	TEST("a confidential client without its secret: terminal invalid_client");
	a.auth_method = "none";
	a.client_secret = NULL;
	refresh(c, 34, &a, &m);
	expect_error(&m, KIND_TERMINAL, "invalid_client", 401);
	rpc_msg_clear(&m);

	free(rt1);
	free(rt2);
	tokens_clear(&t);
}

static void test_unreachable(struct child *c)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sin);
	char endpoint[64];
	struct refresh_args a = { .server = "nowhere", .endpoint = endpoint, .client_id = "x",
				  .refresh_token = "unreachable-refresh-token-1234" };
	struct rpc_msg m;
	int fd;

	TEST("an endpoint nobody listens on: transient, no http_status");
	/* A port that was just free: bound, read back, closed, not listened on. */
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0);
	CHECK(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	CHECK(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
	close(fd);
	snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d/token", ntohs(sin.sin_port));
	secret_remember(a.refresh_token);
	refresh(c, 40, &a, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "network error"));
	rpc_msg_clear(&m);

	TEST("a non-HTTP endpoint is refused: transient, nothing read");
	a.endpoint = "file:///etc/passwd";
	refresh(c, 41, &a, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 0);
	rpc_msg_clear(&m);
}

/*
 * A canned token endpoint for what the peer never sends: each connection
 * gets the next response verbatim, then the server closes it. The requests
 * it received are appended to record_path.
 */
static void canned_start(struct peer *s, char **responses, size_t n, const char *record_path)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sin);
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	CHECK(lfd >= 0);
	CHECK(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	CHECK(listen(lfd, 16) == 0);
	CHECK(getsockname(lfd, (struct sockaddr *)&sin, &len) == 0);
	s->port = ntohs(sin.sin_port);
	snprintf(s->base, sizeof(s->base), "http://127.0.0.1:%d", s->port);
	snprintf(s->token_endpoint, sizeof(s->token_endpoint), "%s/token", s->base);
	s->pid = fork();
	CHECK(s->pid >= 0);
	if (s->pid == 0) {
		FILE *rec = fopen(record_path, "w");

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (!rec)
			_exit(1);

		for (size_t i = 0; i < n; i++) {
			char req[16384], *end, *cl;
			size_t got = 0, want = 0;
			int fd = accept(lfd, NULL, NULL);

			if (fd < 0)
				_exit(1);
			/* Headers, then Content-Length bytes of body. */
			for (;;) {
				ssize_t r = read(fd, req + got, sizeof(req) - 1 - got);

				if (r <= 0)
					break;
				got += (size_t)r;
				req[got] = '\0';
				end = strstr(req, "\r\n\r\n");
				if (!end)
					continue;
				cl = strcasestr(req, "\r\nContent-Length:");
				want = (size_t)(end + 4 - req) + (cl ? strtoul(cl + 17, NULL, 10) : 0);
				if (got >= want)
					break;
			}
			fwrite(req, 1, got, rec);
			fputs("\n----\n", rec);
			fflush(rec);
			for (size_t off = 0, total = strlen(responses[i]); off < total;) {
				ssize_t w = write(fd, responses[i] + off, total - off);

				if (w <= 0)
					break; /* the client gave up: that is what some cases test */
				off += (size_t)w;
			}
			close(fd);
		}
		fclose(rec);
		_exit(0);
	}
	close(lfd);
	peers[n_peers++] = s;
}

static char *canned_response(const char *status, const char *headers, const char *body)
{
	char *r;

	CHECK(asprintf(&r, "HTTP/1.1 %s\r\nConnection: close\r\n%s%sContent-Length: %zu\r\n\r\n%s", status,
		       headers ? headers : "", headers ? "\r\n" : "", strlen(body), body) > 0);
	return r;
}

static void test_canned(struct child *c)
{
	char record[128], big_body[64];
	char *responses[12];
	struct peer s = { 0 };
	struct refresh_args a = { .server = "canned", .client_id = "canned client", .client_secret = "canned&secret",
				  .auth_method = "client_secret_post", .refresh_token = "canned-rt/+= 1",
				  .resource = "https://mcp.example/x?y=1", .scope = "read write" };
	struct rpc_msg m;
	struct json_object *v;
	size_t n = 0, big = 2 * 1024 * 1024;
	char *huge, *rec;
	struct stat st;
	FILE *f;
	int status;

	snprintf(record, sizeof(record), "%s/canned-requests", tmpdir);
	secret_remember("canned-at-1");
	secret_remember("canned-at-2");
	secret_remember("canned-rt/+= 1");
	secret_remember("canned&secret");
	responses[n++] = canned_response("200 OK", "Content-Type: application/json",
					 "{\"access_token\":\"canned-at-1\",\"expires_in\":\"3600\"}");
	responses[n++] = canned_response("302 Found", "Location: http://127.0.0.1:9/elsewhere",
					 "{\"access_token\":\"canned-at-2\"}");
	/* 2 MiB with no Content-Length: only the running count can stop it. */
	huge = malloc(big + 128);
	CHECK(huge);
	{
		int head = snprintf(huge, 128, "HTTP/1.1 200 OK\r\nConnection: close\r\n"
						"Content-Type: application/json\r\n\r\n");

		memset(huge + head, 'x', big);
		huge[head + big] = '\0';
	}
	responses[n++] = huge;
	/* A Content-Length over the cap: refused before reading the body. */
	snprintf(big_body, sizeof(big_body), "Content-Length: %zu\r\n\r\n", big);
	CHECK(asprintf(&responses[n], "HTTP/1.1 200 OK\r\nConnection: close\r\n%sxyz", big_body) > 0);
	n++;
	responses[n++] = canned_response("200 OK", NULL, "{\"access_token\":\"bad\\u0001token\"}");
	responses[n++] = canned_response("400 Bad Request", NULL,
					 "{\"error\":\"invalid_scope\",\"error_description\":\"canned-at-2\"}");
	responses[n++] = canned_response("404 Not Found", "Content-Type: text/html", "<html>not here</html>");
	responses[n++] = canned_response("503 Service Unavailable", NULL, "");
	responses[n++] = canned_response("200 OK", NULL, "{\"error\":\"bad_refresh_token\"}");
	canned_start(&s, responses, n, record);
	a.endpoint = s.token_endpoint;

	TEST("canned: expires_in as a string, token_type defaulted, no refresh token means keep the old one");
	refresh(c, 60, &a, &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(json_object_object_get_ex(m.result, "access_token", &v));
	CHECK(strcmp(json_object_get_string(v), "canned-at-1") == 0);
	CHECK(json_object_object_get_ex(m.result, "token_type", &v));
	CHECK(strcmp(json_object_get_string(v), "Bearer") == 0);
	CHECK(json_object_object_get_ex(m.result, "expires_in", &v));
	CHECK(json_object_is_type(v, json_type_int));
	CHECK_EQ(json_object_get_int(v), 3600);
	CHECK(!json_object_object_get_ex(m.result, "refresh_token", NULL));
	CHECK(!json_object_object_get_ex(m.result, "scope", NULL));
	rpc_msg_clear(&m);

	TEST("canned: a redirect is not followed: transient, http_status 302");
	refresh(c, 61, &a, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 302);
	rpc_msg_clear(&m);

	TEST("canned: a body over 1 MiB is cut off: transient (streamed, and by Content-Length)");
	refresh(c, 62, &a, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 200);
	CHECK(strstr(rpc_error_message(&m), "larger than"));
	rpc_msg_clear(&m);
	refresh(c, 63, &a, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 200);
	CHECK(strstr(rpc_error_message(&m), "larger than"));
	rpc_msg_clear(&m);

	TEST("canned: a token with a control character is malformed: transient");
	refresh(c, 64, &a, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 200);
	rpc_msg_clear(&m);

	TEST("canned: another OAuth error on a 4xx is terminal; a 4xx without one and a bare 503 are transient");
	refresh(c, 65, &a, &m);
	expect_error(&m, KIND_TERMINAL, "invalid_scope", 400);
	CHECK(!strstr(rpc_error_message(&m), "canned-at-2")); /* error_description is not passed on */
	rpc_msg_clear(&m);
	refresh(c, 66, &a, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 404);
	rpc_msg_clear(&m);
	refresh(c, 67, &a, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 503);
	rpc_msg_clear(&m);

	TEST("canned: a 200 carrying an OAuth error and no token (GitHub's way) is terminal");
	refresh(c, 68, &a, &m);
	expect_error(&m, KIND_TERMINAL, "bad_refresh_token", 200);
	rpc_msg_clear(&m);

	TEST("canned: the request is a form POST with every parameter encoded");
	CHECK_EQ(waitpid(s.pid, &status, 0), s.pid);
	s.pid = 0;
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(stat(record, &st) == 0);
	rec = calloc(1, (size_t)st.st_size + 1);
	f = fopen(record, "r");
	CHECK(rec && f);
	CHECK_EQ(fread(rec, 1, (size_t)st.st_size, f), (size_t)st.st_size);
	fclose(f);
	CHECK(strncmp(rec, "POST /token HTTP/1.1\r\n", 22) == 0);
	CHECK(strcasestr(rec, "\r\nAccept: application/json\r\n"));
	CHECK(strcasestr(rec, "\r\nContent-Type: application/x-www-form-urlencoded\r\n"));
	CHECK(!strcasestr(rec, "\r\nAuthorization:"));
	CHECK(strstr(rec, "\r\n\r\ngrant_type=refresh_token&refresh_token=canned-rt%2F%2B%3D+1"
			  "&client_id=canned+client&client_secret=canned%26secret"
			  "&resource=https%3A%2F%2Fmcp.example%2Fx%3Fy%3D1&scope=read+write\n"));
	free(rec);
	unlink(record);
	for (size_t i = 0; i < n; i++)
		free(responses[i]);
}

static void test_keeper_bugs(void)
{
	static const char *const bad[] = {
		"{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n",
		"{\"jsonrpc\":\"2.0\",\"method\":\"oauth.refresh\",\"params\":{}}\n",
		"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"no.such.method\",\"params\":{}}\n",
		"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"oauth.refresh\",\"params\":{\"server\":\"x\"}}\n",
		"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"oauth.refresh\",\"params\":{\"server\":\"x\","
		"\"token_endpoint\":\"http://127.0.0.1:9/\",\"refresh_token\":\"bug-token-5678\",\"client_id\":\"x\","
		"\"auth_method\":\"client_secret_basic\",\"timeout_ms\":1000}}\n",
		"this is not json\n",
	};

	secret_remember("bug-token-5678");
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		struct child c;
		struct rpc_msg m;
		char what[96];

		snprintf(what, sizeof(what), "a malformed message from the keeper (%zu): exit 1, no reply", i);
		TEST(what);
		child_ready(&c);
		CHECK_EQ(write(c.fd, bad[i], strlen(bad[i])), (ssize_t)strlen(bad[i]));
		CHECK_EQ(frame_read_fd(c.fd, c.in, PROTO_MAX_MESSAGE, &m, IO_TIMEOUT_MS, NULL, 0), -EPIPE);
		CHECK_EQ(child_wait(&c), 1);
	}
}

static void test_close(struct peer *p)
{
	struct refresh_args a = { .server = "peer-a", .endpoint = p->token_endpoint, .client_id = PUBLIC_CLIENT,
				  .timeout_ms = 60000 };
	long long injected = peer_stat(p, "failures_injected");
	struct tokens t;
	struct child c;

	TEST("closing fd 3 ends the child with 0, also with a refresh in flight");
	peer_login(p, PUBLIC_CLIENT, NULL, &t);
	child_ready(&c);
	peer_fail(p, "hang", 1);
	a.refresh_token = t.refresh;
	child_send(&c, rpc_request(METHOD_OAUTH_REFRESH, refresh_params(&a), 50));
	peer_wait_injected(p, injected + 1);
	close(c.fd);
	c.fd = -1;
	CHECK_EQ(child_wait(&c), 0);
	tokens_clear(&t);

	TEST("termination signals are ignored: the channel decides");
	child_ready(&c);
	kill(c.pid, SIGTERM);
	kill(c.pid, SIGHUP);
	kill(c.pid, SIGINT);
	{
		struct rpc_msg m;
		struct refresh_args u = { .server = "x", .endpoint = "file:///", .client_id = "x",
					  .refresh_token = "unreachable-refresh-token-1234" };

		refresh(&c, 51, &u, &m); /* still answering */
		rpc_msg_clear(&m);
	}
	close(c.fd);
	c.fd = -1;
	CHECK_EQ(child_wait(&c), 0);
}

static void test_log_clean(void)
{
	struct stat st;
	char *log;
	FILE *f;

	TEST("the child's log names servers and holds no token or secret");
	CHECK(stat(child_log, &st) == 0);
	log = calloc(1, (size_t)st.st_size + 1);
	CHECK(log);
	f = fopen(child_log, "r");
	CHECK(f);
	CHECK_EQ(fread(log, 1, (size_t)st.st_size, f), (size_t)st.st_size);
	fclose(f);
	CHECK(strstr(log, "oauth: peer-a: refresh failed: HTTP 500"));
	CHECK(strstr(log, "oauth: peer-a: refresh failed: HTTP 400: invalid_grant"));
	CHECK(strstr(log, "oauth: peer-b: refreshed"));
	CHECK(strstr(log, "keeper sent"));
	secret_remember(CONF_SECRET);
	secret_remember(WRONG_SECRET);
	for (size_t i = 0; i < n_secrets; i++) {
		if (strstr(log, secrets[i])) {
			fprintf(stderr, "the child's log contains a secret (#%zu)\n", i);
			CHECK(0);
		}
	}
	printf("# checked %zu tokens and secrets against %lld bytes of log\n", n_secrets, (long long)st.st_size);
	free(log);
}

static void cleanup(void)
{
	for (size_t i = 0; i < n_peers; i++)
		peer_stop(peers[i]);
	if ((!finished || getenv("TEST_OAUTH_SHOW_LOG")) && child_log[0]) {
		/* Show what the children said; it helps more than the check line. */
		FILE *f = fopen(child_log, "r");
		char line[1024];

		fprintf(stderr, "---- child log (%s) ----\n", child_log);
		while (f && fgets(line, sizeof(line), f))
			fputs(line, stderr);
		if (f)
			fclose(f);
	}
	if (child_log[0])
		unlink(child_log);
	if (tmpdir[0])
		rmdir(tmpdir);
	for (size_t i = 0; i < n_secrets; i++)
		free(secrets[i]);
}

int main(int argc, char **argv)
{
	struct peer pa = { 0 }, pb = { 0 };
	struct child c;

	if (argc != 3) {
		fprintf(stderr, "usage: %s MCPKEEPER-OAUTH TEST-PEER\n", argv[0]);
		return 2;
	}
	oauth_bin = argv[1];
	peer_bin = argv[2];
	signal(SIGPIPE, SIG_IGN);
	CHECK(sodium_init() >= 0);
	CHECK_EQ(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test-oauth.XXXXXX");
	CHECK(mkdtemp(tmpdir));
	snprintf(child_log, sizeof(child_log), "%s/child.log", tmpdir);
	atexit(cleanup);
	printf("# Landlock on this kernel: %s\n", expected_landlock());

	test_sandbox();
	test_not_started_by_keeper();
	test_hello();

	peer_start(&pa, (const char *const[]){ "--client-id", PUBLIC_CLIENT, "--token-lifetime", "600", NULL });
	peer_start(&pb, (const char *const[]){ "--client-id", CONF_CLIENT, "--client-secret", CONF_SECRET,
					       "--token-lifetime", "600", NULL });

	child_ready(&c);
	test_refresh_and_reuse(&c, &pa);
	test_injected_failures(&c, &pa);
	test_concurrent(&c, &pa);
	test_client_auth(&c, &pb);
	test_unreachable(&c);
	test_canned(&c);
	close(c.fd);
	c.fd = -1;
	CHECK_EQ(child_wait(&c), 0);

	test_keeper_bugs();
	test_close(&pa);
	test_log_clean();

	curl_global_cleanup();
	finished = true;
	printf("# all oauth child tests passed\n");
	return 0;
}
