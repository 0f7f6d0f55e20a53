/*
 * The oauth child, end to end: the real mcpkeeper-oauth started the way the
 * keeper starts it (fork+exec, socketpair on fd 3, stdin /dev/null, stderr
 * to a file), driven over the framing module, refreshing against the real
 * test peer (mcpkeeper-test-peer) with failure injection.
 *
 * Login and logout run against a peer of their own: listen, discover,
 * register, authorize with the test playing the browser (libcurl follows the
 * authorization URL to the peer and its redirect to the child's listener),
 * cancel, timeout and revoke; the peer's /test/config knobs bend its
 * metadata and redirects (PKCE, issuer, iss, denial, discovery order), and
 * canned answers cover what the peer never sends. The WWW-Authenticate
 * parser (common/net/challenge.c) gets known-answer checks here too.
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

#include "challenge.h"
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

static struct peer *peers[16];
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

/* As the keeper does for a server on loopback (the test peer), every
 * request about a server carries the address policy unless the test set
 * its own (proto.h; allow_private_endpoints alone: the test wants none). */
static void child_send(struct child *c, struct json_object *msg)
{
	struct json_object *params;

	if (json_object_object_get_ex(msg, "method", NULL) && json_object_object_get_ex(msg, "id", NULL) &&
	    json_object_object_get_ex(msg, "params", &params) &&
	    json_object_object_get_ex(params, PARAM_KEY_SERVER, NULL) &&
	    !json_object_object_get_ex(params, PARAM_KEY_SERVER_ADDRESS, NULL) &&
	    !json_object_object_get_ex(params, PARAM_KEY_ALLOW_PRIVATE_ENDPOINTS, NULL))
		json_object_object_add(params, PARAM_KEY_SERVER_ADDRESS, json_object_new_string("loopback"));
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

/* A refresh under a given address policy (proto.h); server_address NULL
 * sends none. */
static void refresh_policy(struct child *c, int64_t id, const struct refresh_args *a, const char *server_address,
			   bool allow_private, bool allow_http, struct rpc_msg *m)
{
	struct json_object *p = refresh_params(a);

	json_object_object_add(p, PARAM_KEY_SERVER_ADDRESS,
			       server_address ? json_object_new_string(server_address) : NULL);
	json_object_object_add(p, PARAM_KEY_ALLOW_PRIVATE_ENDPOINTS, json_object_new_boolean(allow_private));
	json_object_object_add(p, PARAM_KEY_ALLOW_INSECURE_HTTP, json_object_new_boolean(allow_http));
	if (!server_address)
		json_object_object_del(p, PARAM_KEY_SERVER_ADDRESS);
	child_send(c, rpc_request(METHOD_OAUTH_REFRESH, p, id));
	child_recv(c, m);
	CHECK(m->id);
	CHECK_EQ(json_object_get_int64(m->id), id);
}

/*
 * The address check of every connection (fetch.c): the addresses are
 * literals, so each refusal happens before any socket exists; the endpoint
 * at 127.0.0.1:1 is refused by the kernel instead once it is allowed, which
 * shows the attempt was made.
 */
static void test_address_policy(struct child *c, const struct peer *p)
{
	struct refresh_args a = { .server = "policy", .client_id = "x", .refresh_token = "policy-refresh-token-1234" };
	char endpoint[256];
	struct rpc_msg m;

	secret_remember(a.refresh_token);

	TEST("address policy: link-local and private token endpoints of a loopback server are refused");
	a.endpoint = "http://169.254.169.254/token";
	refresh_policy(c, 60, &a, "loopback", false, false, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 0);
	/* Plain http to it is refused first: it is not loopback either. */
	CHECK(strstr(rpc_error_message(&m), "refusing plain http to 169.254.169.254 (link-local) for the token endpoint"));
	rpc_msg_clear(&m);
	a.endpoint = "https://169.254.169.254/token";
	refresh_policy(c, 61, &a, "loopback", false, false, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "refusing to connect to 169.254.169.254 (link-local) for the token endpoint: "
					    "the MCP server's own address is loopback; set oauth.allow_private_endpoints"));
	rpc_msg_clear(&m);
	a.endpoint = "https://10.0.0.1/token";
	refresh_policy(c, 62, &a, "loopback", false, false, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "refusing to connect to 10.0.0.1 (private) for the token endpoint"));
	rpc_msg_clear(&m);
	a.endpoint = "https://[::ffff:169.254.169.254]/token";
	refresh_policy(c, 63, &a, "loopback", false, false, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "(link-local) for the token endpoint"));
	rpc_msg_clear(&m);

	TEST("address policy: a public server may not reach loopback, without a policy neither");
	snprintf(endpoint, sizeof(endpoint), "%s/token", p->base);
	a.endpoint = endpoint;
	refresh_policy(c, 64, &a, "public", false, true, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "refusing to connect to 127.0.0.1 (loopback) for the token endpoint: "
					    "the MCP server's own address is public"));
	rpc_msg_clear(&m);
	/* A server the child has no policy for: public https only. */
	a.server = "never-configured";
	refresh_policy(c, 65, &a, NULL, false, false, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "(loopback) for the token endpoint"));
	rpc_msg_clear(&m);
	a.server = "policy";

	TEST("address policy: unspecified and multicast are never destinations");
	a.endpoint = "https://0.0.0.0/token";
	refresh_policy(c, 66, &a, "public", true, true, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "0.0.0.0 (unspecified)"));
	rpc_msg_clear(&m);

	TEST("address policy: allow_private_endpoints lets the request go (and fail otherwise)");
	a.endpoint = "https://127.0.0.1:1/token";
	refresh_policy(c, 67, &a, "public", true, false, &m);
	expect_error(&m, KIND_TRANSIENT, NULL, 0);
	CHECK(!strstr(rpc_error_message(&m), "refusing"));
	CHECK(strstr(rpc_error_message(&m), "network error"));
	rpc_msg_clear(&m);
}

/*
 * A canned token endpoint for what the peer never sends: each connection
 * gets the next response verbatim, then the server closes it. The requests
 * it received are appended to record_path.
 */
/* The listening half, so that responses may name the canned server's port;
 * returns the listening descriptor for canned_serve(). */
static int canned_listen(struct peer *s)
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
	snprintf(s->resource, sizeof(s->resource), "%s/mcp", s->base);
	snprintf(s->token_endpoint, sizeof(s->token_endpoint), "%s/token", s->base);
	return lfd;
}

static void canned_serve(struct peer *s, int lfd, char **responses, size_t n, const char *record_path)
{
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

static void canned_start(struct peer *s, char **responses, size_t n, const char *record_path)
{
	int lfd = canned_listen(s);

	canned_serve(s, lfd, responses, n, record_path);
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

/* -- login and logout -- */

#define LOGIN_TIMEOUT_MS 20000

/* A request whose reply is the next message (no notification in between). */
static void call(struct child *c, const char *method, struct json_object *params, int64_t id, struct rpc_msg *m)
{
	child_send(c, rpc_request(method, params, id));
	child_recv(c, m);
	if (m->type == RPC_NOTIFICATION)
		fprintf(stderr, "expected the reply to %s, got the notification %s\n", method, m->method);
	CHECK(m->type == RPC_RESULT || m->type == RPC_ERROR);
	CHECK(m->id);
	CHECK_EQ(json_object_get_int64(m->id), id);
}

static const char *str_of(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static bool str_is(struct json_object *o, const char *key, const char *want)
{
	const char *s = str_of(o, key);

	if (!s || strcmp(s, want) != 0)
		fprintf(stderr, "%s: got %s, want %s\n", key, s ? s : "(none)", want);
	return s && strcmp(s, want) == 0;
}

/* An error of a login step: kind, reason, and oauth_error / http_status when
 * given (NULL / 0: must be absent; -1: not checked). */
static void expect_login_error(const struct rpc_msg *m, const char *kind, const char *reason, const char *oauth_error,
			       int http_status)
{
	struct json_object *data, *v;

	if (m->type != RPC_ERROR)
		fprintf(stderr, "expected a %s error, got %s\n", reason, json_object_to_json_string(m->root));
	CHECK_EQ(m->type, RPC_ERROR);
	CHECK_EQ(rpc_error_code(m), RPC_APP_ERROR);
	CHECK(json_object_object_get_ex(m->error, "data", &data));
	if (!str_is(data, "reason", reason))
		fprintf(stderr, "message: %s\n", rpc_error_message(m));
	CHECK(str_is(data, "reason", reason));
	CHECK(str_is(data, "kind", kind));
	CHECK(rpc_error_message(m) && *rpc_error_message(m));
	if (oauth_error)
		CHECK(str_is(data, "oauth_error", oauth_error));
	else
		CHECK(!json_object_object_get_ex(data, "oauth_error", NULL));
	if (http_status > 0) {
		CHECK(json_object_object_get_ex(data, "http_status", &v));
		CHECK_EQ(json_object_get_int(v), http_status);
	} else if (http_status == 0) {
		CHECK(!json_object_object_get_ex(data, "http_status", NULL));
	}
}

static void peer_config(struct peer *p, const char *json)
{
	struct http_reply r;
	char url[128];

	snprintf(url, sizeof(url), "%s/test/config", p->base);
	http(url, "application/json", json, &r);
	if (r.status != 200)
		fprintf(stderr, "peer config %s: HTTP %ld\n", json, r.status);
	CHECK_EQ(r.status, 200);
	http_reply_clear(&r);
}

/* The login knobs' defaults: every case starts from them. */
static bool login_knobs;

static void peer_config_reset(struct peer *p)
{
	struct http_reply r;
	char url[128];

	if (login_knobs)
		peer_config(p, "{\"s256\":true,\"iss\":true,\"wrong_iss\":false,\"authorize_error\":null,"
		       "\"challenge_scope\":null,\"challenge_metadata\":true,\"prm_paths\":\"both\","
		       "\"issuer_path\":\"\",\"as_metadata\":\"both\",\"metadata_issuer\":null,"
		       "\"registration\":true,\"revocation\":true,\"revoke_fail\":false,"
		       "\"auth_methods\":[\"none\",\"client_secret_basic\",\"client_secret_post\"]}");
	snprintf(url, sizeof(url), "%s/test/reset", p->base);
	http(url, "application/json", "{}", &r);
	CHECK_EQ(r.status, 200);
	http_reply_clear(&r);
}

static struct json_object *peer_get_json(struct peer *p, const char *path)
{
	struct http_reply r;
	struct json_object *o;
	char url[128];

	snprintf(url, sizeof(url), "%s%s", p->base, path);
	http(url, NULL, NULL, &r);
	CHECK_EQ(r.status, 200);
	o = http_json(&r);
	http_reply_clear(&r);
	return o;
}

/* Whether the peer has the login knobs (another change adds them). */
static bool peer_has_login_knobs(struct peer *p)
{
	struct http_reply r;
	struct json_object *o;
	char url[128];
	bool ok;

	snprintf(url, sizeof(url), "%s/test/config", p->base);
	http(url, NULL, NULL, &r);
	if (r.status != 200) {
		http_reply_clear(&r);
		return false;
	}
	o = http_json(&r);
	ok = json_object_object_get_ex(o, "s256", NULL) && json_object_object_get_ex(o, "issuer_path", NULL);
	json_object_put(o);
	http_reply_clear(&r);
	return ok;
}

/* The paths of the discovery requests the peer saw since its reset, joined by spaces. */
static void peer_discovery_paths(struct peer *p, char *out, size_t len)
{
	struct json_object *o = peer_get_json(p, "/test/last"), *d;
	size_t off = 0;

	out[0] = '\0';
	CHECK(json_object_object_get_ex(o, "discovery", &d));
	for (size_t i = 0; i < json_object_array_length(d); i++) {
		const char *path = str_of(json_object_array_get_idx(d, i), "path");

		CHECK(path);
		off += (size_t)snprintf(out + off, len - off, "%s%s", off ? " " : "", path);
		CHECK(off < len);
	}
	json_object_put(o);
}

/* A GET that may fail to connect: the libcurl code; status, page and
 * Location in r. */
static CURLcode http_try(const char *url, struct http_reply *r)
{
	CURL *e = curl_easy_init();
	CURLcode code;
	char *loc = NULL;

	CHECK(e);
	memset(r, 0, sizeof(*r));
	r->body = evbuffer_new();
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, http_collect);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r->body);
	code = curl_easy_perform(e);
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
	curl_easy_getinfo(e, CURLINFO_REDIRECT_URL, &loc);
	if (loc)
		r->location = strdup(loc);
	curl_easy_cleanup(e);
	return code;
}

static bool body_has(struct http_reply *r, const char *s)
{
	size_t len = evbuffer_get_length(r->body);
	char *b = strndup((char *)evbuffer_pullup(r->body, (ev_ssize_t)len), len);
	bool found;

	CHECK(b);
	found = strstr(b, s) != NULL;
	if (!found)
		fprintf(stderr, "page lacks \"%s\":\n%s\n", s, b);
	free(b);
	return found;
}

/* Nothing listens on 127.0.0.1:port any more. */
static void expect_port_closed(int port)
{
	struct http_reply r;
	char url[96];

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/oauth/callback", port);
	CHECK_EQ(http_try(url, &r), CURLE_COULDNT_CONNECT);
	http_reply_clear(&r);
}

/* POST initialize to the peer's /mcp with a bearer token: the HTTP status. */
static long mcp_with_token(struct peer *p, const char *token)
{
	static const char body[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{"
				   "\"protocolVersion\":\"2025-06-18\",\"capabilities\":{},"
				   "\"clientInfo\":{\"name\":\"test-oauth\",\"version\":\"0\"}}}";
	struct evbuffer *out = evbuffer_new();
	struct curl_slist *h = NULL;
	CURL *e = curl_easy_init();
	char authz[256];
	long status = 0;

	CHECK(e && out);
	snprintf(authz, sizeof(authz), "Authorization: Bearer %s", token);
	h = curl_slist_append(h, authz);
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Accept: application/json, text/event-stream");
	curl_easy_setopt(e, CURLOPT_URL, p->resource);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, http_collect);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, out);
	CHECK_EQ(curl_easy_perform(e), CURLE_OK);
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(h);
	curl_easy_cleanup(e);
	evbuffer_free(out);
	return status;
}

static int listen_on(struct child *c, const char *server, int port, int64_t id)
{
	struct json_object *p = json_object_new_object(), *v;
	struct rpc_msg m;
	int bound;

	json_object_object_add(p, "server", json_object_new_string(server));
	json_object_object_add(p, "port", json_object_new_int(port));
	call(c, METHOD_OAUTH_LISTEN, p, id, &m);
	if (m.type != RPC_RESULT)
		fprintf(stderr, "listen: %s\n", json_object_to_json_string(m.root));
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(json_object_object_get_ex(m.result, "port", &v));
	bound = json_object_get_int(v);
	CHECK(bound > 0 && bound < 65536);
	if (port)
		CHECK_EQ(bound, port);
	rpc_msg_clear(&m);
	return bound;
}

static void discover_call(struct child *c, const char *server, const char *url, const char *protocol, int64_t id,
			  struct rpc_msg *m)
{
	struct json_object *p = json_object_new_object(), *h = json_object_new_object();

	json_object_object_add(p, "server", json_object_new_string(server));
	json_object_object_add(p, "url", json_object_new_string(url));
	json_object_object_add(p, "protocol", json_object_new_string(protocol));
	json_object_object_add(h, "X-Test-Static", json_object_new_string("static header value"));
	json_object_object_add(p, "headers", h);
	json_object_object_add(p, "timeout_ms", json_object_new_int(10000));
	call(c, METHOD_OAUTH_DISCOVER, p, id, m);
}

/* What a login needs from discovery and registration. */
struct login_setup {
	const char *server;
	char resource[128];
	char issuer[128];
	char authorization_endpoint[160];
	char token_endpoint[160];
	char revocation_endpoint[160];
	char scope[128];
	bool iss_supported;
	char redirect_uri[96];
	int port;
	char *client_id;
	char *client_secret;
	char auth_method[32];
	int timeout_ms;
};

static void copy_str(char *dst, size_t len, struct json_object *o, const char *key)
{
	const char *s = str_of(o, key);

	snprintf(dst, len, "%s", s ? s : "");
}

/* Discovery against the peer, checking every field of the result. */
static void discover_peer(struct child *c, struct peer *p, struct login_setup *ls, int64_t id)
{
	struct rpc_msg m;
	struct json_object *v;
	char want[160];

	discover_call(c, ls->server, p->resource, "streamable-http", id, &m);
	if (m.type != RPC_RESULT)
		fprintf(stderr, "discover: %s\n", json_object_to_json_string(m.root));
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(str_is(m.result, "resource", p->resource));
	CHECK(str_is(m.result, "issuer", p->base));
	snprintf(want, sizeof(want), "%s/authorize", p->base);
	CHECK(str_is(m.result, "authorization_endpoint", want));
	snprintf(want, sizeof(want), "%s/token", p->base);
	CHECK(str_is(m.result, "token_endpoint", want));
	snprintf(want, sizeof(want), "%s/register", p->base);
	CHECK(str_is(m.result, "registration_endpoint", want));
	snprintf(want, sizeof(want), "%s/revoke", p->base);
	CHECK(str_is(m.result, "revocation_endpoint", want));
	CHECK(str_is(m.result, "scope", "mcp"));
	CHECK(json_object_object_get_ex(m.result, "iss_supported", &v) && json_object_get_boolean(v));
	CHECK(json_object_object_get_ex(m.result, "token_endpoint_auth_methods", &v));
	CHECK_EQ(json_object_array_length(v), 3);
	CHECK(strcmp(json_object_get_string(json_object_array_get_idx(v, 0)), "none") == 0);
	copy_str(ls->resource, sizeof(ls->resource), m.result, "resource");
	copy_str(ls->issuer, sizeof(ls->issuer), m.result, "issuer");
	copy_str(ls->authorization_endpoint, sizeof(ls->authorization_endpoint), m.result, "authorization_endpoint");
	copy_str(ls->token_endpoint, sizeof(ls->token_endpoint), m.result, "token_endpoint");
	copy_str(ls->revocation_endpoint, sizeof(ls->revocation_endpoint), m.result, "revocation_endpoint");
	copy_str(ls->scope, sizeof(ls->scope), m.result, "scope");
	ls->iss_supported = true;
	rpc_msg_clear(&m);
}

/* oauth.register; methods is a JSON array text or NULL. */
static void register_call(struct child *c, struct peer *p, const char *server, const char *redirect_uri,
			  const char *methods, int64_t id, struct rpc_msg *m)
{
	struct json_object *params = json_object_new_object();
	char endpoint[128];

	snprintf(endpoint, sizeof(endpoint), "%s/register", p->base);
	json_object_object_add(params, "server", json_object_new_string(server));
	json_object_object_add(params, "registration_endpoint", json_object_new_string(endpoint));
	json_object_object_add(params, "redirect_uri", json_object_new_string(redirect_uri));
	json_object_object_add(params, "scope", json_object_new_string("mcp"));
	if (methods)
		json_object_object_add(params, "token_endpoint_auth_methods", json_tokener_parse(methods));
	json_object_object_add(params, "timeout_ms", json_object_new_int(10000));
	call(c, METHOD_OAUTH_REGISTER, params, id, m);
}

/* Listen, register (methods as for register_call): ls ready for authorize. */
static void login_prepare(struct child *c, struct peer *p, struct login_setup *ls, const char *methods, int64_t id)
{
	struct rpc_msg m;
	struct json_object *v;

	ls->port = listen_on(c, ls->server, 0, id);
	snprintf(ls->redirect_uri, sizeof(ls->redirect_uri), "http://127.0.0.1:%d/oauth/callback", ls->port);
	register_call(c, p, ls->server, ls->redirect_uri, methods, id + 1, &m);
	if (m.type != RPC_RESULT)
		fprintf(stderr, "register: %s\n", json_object_to_json_string(m.root));
	CHECK_EQ(m.type, RPC_RESULT);
	free(ls->client_id);
	free(ls->client_secret);
	ls->client_id = strdup(str_of(m.result, "client_id"));
	ls->client_secret = str_of(m.result, "client_secret") ? strdup(str_of(m.result, "client_secret")) : NULL;
	if (ls->client_secret)
		secret_remember(ls->client_secret);
	copy_str(ls->auth_method, sizeof(ls->auth_method), m.result, "auth_method");
	CHECK(json_object_object_get_ex(m.result, "client_secret_expires_at", &v));
	CHECK(json_object_is_type(v, json_type_int));
	rpc_msg_clear(&m);
}

static void login_setup_clear(struct login_setup *ls)
{
	free(ls->client_id);
	free(ls->client_secret);
	ls->client_id = ls->client_secret = NULL;
}

/* Sends oauth.authorize and returns the URL of the oauth.login_url that follows. */
static char *authorize_start(struct child *c, const struct login_setup *ls, int64_t id)
{
	struct json_object *p = json_object_new_object();
	struct rpc_msg m;
	char *url;

#define ADD(key, val)                                                              \
	do {                                                                       \
		if (val)                                                           \
			json_object_object_add(p, key, json_object_new_string(val)); \
	} while (0)
	ADD("server", ls->server);
	ADD("authorization_endpoint", ls->authorization_endpoint);
	ADD("token_endpoint", ls->token_endpoint);
	ADD("redirect_uri", ls->redirect_uri);
	ADD("client_id", ls->client_id);
	ADD("client_secret", ls->client_secret);
	ADD("auth_method", ls->auth_method);
	ADD("resource", ls->resource[0] ? ls->resource : NULL);
	ADD("scope", ls->scope[0] ? ls->scope : NULL);
	ADD("issuer", ls->issuer);
#undef ADD
	json_object_object_add(p, "iss_supported", json_object_new_boolean(ls->iss_supported));
	json_object_object_add(p, "timeout_ms", json_object_new_int(ls->timeout_ms ? ls->timeout_ms : LOGIN_TIMEOUT_MS));
	child_send(c, rpc_request(METHOD_OAUTH_AUTHORIZE, p, id));

	child_recv(c, &m);
	if (m.type != RPC_NOTIFICATION)
		fprintf(stderr, "expected oauth.login_url, got %s\n", json_object_to_json_string(m.root));
	CHECK_EQ(m.type, RPC_NOTIFICATION);
	CHECK(strcmp(m.method, METHOD_OAUTH_LOGIN_URL) == 0);
	CHECK(str_is(m.params, "server", ls->server));
	url = strdup(str_of(m.params, "url"));
	CHECK(url);
	rpc_msg_clear(&m);
	return url;
}

/* The value of a query parameter of url (percent-decoded), or NULL. */
static char *url_param(const char *url, const char *key)
{
	CURLU *u = curl_url();
	char *query = NULL, *found = NULL;

	CHECK(u);
	CHECK_EQ(curl_url_set(u, CURLUPART_URL, url, 0), CURLUE_OK);
	if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK) {
		char *save = NULL;

		for (char *kv = strtok_r(query, "&", &save); kv && !found; kv = strtok_r(NULL, "&", &save)) {
			size_t n = strlen(key);

			if (strncmp(kv, key, n) == 0 && kv[n] == '=') {
				int len = 0;
				char *dec = curl_easy_unescape(NULL, kv + n + 1, 0, &len);

				found = strndup(dec, (size_t)len);
				curl_free(dec);
			}
		}
	}
	curl_free(query);
	curl_url_cleanup(u);
	return found;
}

/* The browser: follows the authorization URL to the peer, returns the
 * redirect it gets (to the listener), remembering code and state. */
static char *browser_authorize(const char *url)
{
	struct http_reply r;
	char *location, *code, *state;

	CHECK_EQ(http_try(url, &r), CURLE_OK);
	if (r.status != 302)
		fprintf(stderr, "authorize answered HTTP %ld\n", r.status);
	CHECK_EQ(r.status, 302);
	CHECK(r.location);
	location = strdup(r.location);
	http_reply_clear(&r);
	code = url_param(location, "code");
	state = url_param(location, "state");
	if (code)
		secret_remember(code);
	if (state)
		secret_remember(state);
	free(code);
	free(state);
	return location;
}

/* The browser back at the listener: the page, which must be complete. */
static void browser_callback(const char *location, long status, const char *text)
{
	struct http_reply r;

	CHECK_EQ(http_try(location, &r), CURLE_OK);
	if (r.status != status)
		fprintf(stderr, "callback answered HTTP %ld, want %ld\n", r.status, status);
	CHECK_EQ(r.status, status);
	CHECK(body_has(&r, text));
	CHECK(body_has(&r, "</html>"));
	http_reply_clear(&r);
}

/* The token result of a login; returns the access token. */
static char *expect_login_tokens(const struct rpc_msg *m)
{
	struct json_object *v;
	char *at;

	if (m->type != RPC_RESULT)
		fprintf(stderr, "expected tokens, got %s\n", json_object_to_json_string(m->root));
	CHECK_EQ(m->type, RPC_RESULT);
	CHECK(json_object_object_get_ex(m->result, "access_token", &v));
	at = strdup(json_object_get_string(v));
	secret_remember(at);
	CHECK(json_object_object_get_ex(m->result, "refresh_token", &v));
	secret_remember(json_object_get_string(v));
	CHECK(str_is(m->result, "token_type", "Bearer"));
	CHECK(json_object_object_get_ex(m->result, "expires_in", &v) && json_object_get_int(v) > 0);
	CHECK(str_is(m->result, "scope", "mcp"));
	CHECK(json_object_object_get_ex(m->result, "http_status", &v));
	CHECK_EQ(json_object_get_int(v), 200);
	return at;
}

/* A whole login through the browser; returns the access token. */
static char *login_through_browser(struct child *c, const struct login_setup *ls, int64_t id)
{
	char *url = authorize_start(c, ls, id), *location, *at, text[128];
	struct rpc_msg m;

	location = browser_authorize(url);
	snprintf(text, sizeof(text), "Logged in to %s. You can close this tab.", ls->server);
	browser_callback(location, 200, text);
	child_recv(c, &m);
	CHECK_EQ(json_object_get_int64(m.id), id);
	at = expect_login_tokens(&m);
	rpc_msg_clear(&m);
	expect_port_closed(ls->port);
	free(url);
	free(location);
	return at;
}

static void test_challenge_parse(void)
{
	struct challenge_bearer b;

	TEST("challenge: the Bearer challenge among several, escapes, case, token68, limits");
	{
		const char *h = "Basic realm=\"x\", Bearer error=\"invalid_token\", "
				"resource_metadata=\"https://a.example/prm\", scope=\"a b\"";

		CHECK_EQ(challenge_parse(h, strlen(h), &b), 0);
		CHECK(b.found);
		CHECK(strcmp(b.resource_metadata, "https://a.example/prm") == 0);
		CHECK(strcmp(b.scope, "a b") == 0);
		CHECK(strcmp(b.error, "invalid_token") == 0);
		/* Cut inside a quoted-string: a syntax error, nothing kept. */
		CHECK_EQ(challenge_parse(h, strlen(h) - 3, &b), CHALLENGE_E_SYNTAX);
		CHECK(!b.found && !b.scope[0]);
	}
	{
		const char *h = "Negotiate abc+/==, bEaReR Scope=mcp ,RESOURCE_METADATA = \"x\\\"y\\\\z\"";

		CHECK_EQ(challenge_parse(h, strlen(h), &b), 0);
		CHECK(b.found);
		CHECK(strcmp(b.scope, "mcp") == 0);
		CHECK(strcmp(b.resource_metadata, "x\"y\\z") == 0);
	}
	{
		const char *h = "Bearer, Bearer scope=\"second\"";

		CHECK_EQ(challenge_parse(h, strlen(h), &b), 0);
		CHECK(b.found && !b.scope[0]);
	}
	{
		/* "scope=" alone is a token68, not a parameter without a value. */
		const char *h = "Bearer scope=";

		CHECK_EQ(challenge_parse(h, strlen(h), &b), 0);
		CHECK(b.found && !b.scope[0]);
	}
	{
		const char *h = "Basic realm=\"only\"";

		CHECK_EQ(challenge_parse(h, strlen(h), &b), 0);
		CHECK(!b.found);
	}
	{
		const char *bad[] = { "Bearer scope=\"a\", scope=\"b\"", "Bearer scope=\"a\",, =b", "Bearer =x", "\"Bearer\"",
				      "Bearer scope=\"a\" junk", "Bearer a==, b=c" };

		for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
			CHECK_EQ(challenge_parse(bad[i], strlen(bad[i]), &b), CHALLENGE_E_SYNTAX);
			CHECK(!b.found);
		}
	}
	{
		const char *h = "Bearer scope=\"caf\xc3\xa9\", error=x";

		CHECK_EQ(challenge_parse(h, strlen(h), &b), 0);
		CHECK(b.found && !b.scope[0] && strcmp(b.error, "x") == 0); /* not printable ASCII: absent */
	}
	{
		char big[CHALLENGE_MAX_INPUT + 2];

		memset(big, 'a', sizeof(big));
		memcpy(big, "Bearer ", 7);
		CHECK_EQ(challenge_parse(big, sizeof(big), &b), CHALLENGE_E_TOO_LONG);
	}
}

static void test_listen(struct child *c)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sin);
	struct json_object *p;
	struct http_reply r;
	struct rpc_msg m;
	char url[128];
	int port, port2, fd;

	TEST("listen on port 0: the kernel's port; before authorize the callback says no login is waiting");
	port = listen_on(c, "listen-a", 0, 200);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/oauth/callback?code=x&state=y", port);
	CHECK_EQ(http_try(url, &r), CURLE_OK);
	CHECK_EQ(r.status, 400);
	CHECK(body_has(&r, "No login is waiting"));
	http_reply_clear(&r);

	TEST("listen: any other path is 404, and only GET is served");
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/favicon.ico", port);
	CHECK_EQ(http_try(url, &r), CURLE_OK);
	CHECK_EQ(r.status, 404);
	http_reply_clear(&r);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/oauth/callback", port);
	http(url, "application/x-www-form-urlencoded", "code=x&state=y", &r);
	CHECK(r.status >= 400 && r.status != 400 && r.status < 600);
	http_reply_clear(&r);

	TEST("listen: a busy port is a terminal \"listen\" error naming the address");
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0);
	CHECK(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	CHECK(listen(fd, 1) == 0);
	CHECK(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
	p = json_object_new_object();
	json_object_object_add(p, "server", json_object_new_string("listen-b"));
	json_object_object_add(p, "port", json_object_new_int(ntohs(sin.sin_port)));
	json_object_object_add(p, "timeout_ms", json_object_new_int(5000));
	call(c, METHOD_OAUTH_LISTEN, p, 201, &m);
	expect_login_error(&m, KIND_TERMINAL, LOGIN_R_LISTEN, NULL, 0);
	snprintf(url, sizeof(url), "127.0.0.1:%d: Address already in use", ntohs(sin.sin_port));
	if (strcmp(rpc_error_message(&m), url) != 0)
		fprintf(stderr, "message: %s\n", rpc_error_message(&m));
	CHECK(strcmp(rpc_error_message(&m), url) == 0);
	rpc_msg_clear(&m);
	close(fd);

	TEST("listen: a second listen for the same server replaces the first; a fixed port works");
	port2 = listen_on(c, "listen-a", 0, 202);
	CHECK(port2 != port);
	expect_port_closed(port);
	port = listen_on(c, "listen-a", port, 203); /* the old port, free again */

	TEST("listen: cancel closes a listener without a login; a cancel for no login is ignored");
	expect_port_closed(port2);
	p = json_object_new_object();
	json_object_object_add(p, "server", json_object_new_string("listen-a"));
	child_send(c, rpc_notification(METHOD_OAUTH_CANCEL, p));
	p = json_object_new_object();
	json_object_object_add(p, "server", json_object_new_string("nobody"));
	child_send(c, rpc_notification(METHOD_OAUTH_CANCEL, p));
	listen_on(c, "listen-c", 0, 204); /* still answering, in order */
	expect_port_closed(port);
	p = json_object_new_object();
	json_object_object_add(p, "server", json_object_new_string("listen-c"));
	child_send(c, rpc_notification(METHOD_OAUTH_CANCEL, p));
}

static void test_discover(struct child *c, struct peer *p)
{
	struct login_setup ls = { .server = "disc" };
	struct rpc_msg m;
	char url[128], paths[1024];

	TEST("discover: probe, resource metadata from the challenge, authorization server metadata");
	peer_config_reset(p);
	discover_peer(c, p, &ls, 300);
	if (login_knobs) {
		peer_discovery_paths(p, paths, sizeof(paths));
		if (strcmp(paths, "/.well-known/oauth-protected-resource /.well-known/oauth-authorization-server") != 0)
		fprintf(stderr, "discovery paths: %s\n", paths);
		CHECK(strcmp(paths, "/.well-known/oauth-protected-resource /.well-known/oauth-authorization-server") == 0);
	}

	TEST("discover: the older SSE transport (GET, stopped after the headers)");
	snprintf(url, sizeof(url), "%s/sse", p->base);
	discover_call(c, "disc-sse", url, "sse", 301, &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(str_is(m.result, "resource", url));
	rpc_msg_clear(&m);

	TEST("discover: an MCP server nobody answers for is a transient network error");
	discover_call(c, "disc-none", "http://127.0.0.1:9/mcp", "streamable-http", 302, &m);
	expect_login_error(&m, KIND_TRANSIENT, LOGIN_R_NETWORK, NULL, 0);
	rpc_msg_clear(&m);
	login_setup_clear(&ls);
}

static void test_register(struct child *c, struct peer *p)
{
	struct rpc_msg m;
	struct json_object *last, *reg;

	TEST("register: a public client when the server takes \"none\"");
	peer_config_reset(p);
	register_call(c, p, "reg", "http://127.0.0.1:7/oauth/callback",
		      "[\"none\",\"client_secret_basic\",\"client_secret_post\"]", 400, &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(str_of(m.result, "client_id"));
	CHECK(!str_of(m.result, "client_secret"));
	CHECK(str_is(m.result, "auth_method", "none"));
	rpc_msg_clear(&m);
	last = login_knobs ? peer_get_json(p, "/test/last") : NULL;
	CHECK(!last || (json_object_object_get_ex(last, "register", &reg) && json_object_is_type(reg, json_type_object)));
	if (last) {
		CHECK(str_is(reg, "client_name", "mcpkeeper"));
		CHECK(str_is(reg, "application_type", "native"));
		CHECK(str_is(reg, "token_endpoint_auth_method", "none"));
		CHECK(str_is(reg, "scope", "mcp"));
		json_object_put(last);
	}

	TEST("register: client_secret_basic when \"none\" is not offered, or without a list");
	register_call(c, p, "reg", "http://127.0.0.1:7/oauth/callback", "[\"client_secret_post\",\"client_secret_basic\"]",
		      401, &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(str_is(m.result, "auth_method", "client_secret_basic"));
	CHECK(str_of(m.result, "client_secret"));
	secret_remember(str_of(m.result, "client_secret"));
	rpc_msg_clear(&m);
	register_call(c, p, "reg", "http://127.0.0.1:7/oauth/callback", NULL, 402, &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(str_is(m.result, "auth_method", "client_secret_basic"));
	secret_remember(str_of(m.result, "client_secret"));
	rpc_msg_clear(&m);

	TEST("register: client_secret_post when it is the only one");
	register_call(c, p, "reg", "http://127.0.0.1:7/oauth/callback", "[\"client_secret_post\"]", 403, &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(str_is(m.result, "auth_method", "client_secret_post"));
	secret_remember(str_of(m.result, "client_secret"));
	rpc_msg_clear(&m);

	TEST("register: a refusal carries the provider's error and description");
	register_call(c, p, "reg", "https://evil.example/cb", NULL, 404, &m);
	expect_login_error(&m, KIND_TERMINAL, LOGIN_R_REGISTRATION, "invalid_redirect_uri", 400);
	CHECK(strstr(rpc_error_message(&m), "invalid_redirect_uri: redirect URIs must be loopback"));
	rpc_msg_clear(&m);
}

static void test_authorize(struct child *c, struct peer *p)
{
	struct login_setup ls = { .server = "login-a" };
	struct json_object *last, *rec;
	char *url, *at, *v;

	TEST("authorize: the URL carries PKCE S256, state, resource and scope; nothing secret");
	peer_config_reset(p);
	discover_peer(c, p, &ls, 500);
	login_prepare(c, p, &ls, "[\"none\",\"client_secret_basic\"]", 501);
	CHECK(strcmp(ls.auth_method, "none") == 0);
	url = authorize_start(c, &ls, 503);
	CHECK(strncmp(url, ls.authorization_endpoint, strlen(ls.authorization_endpoint)) == 0);
	CHECK(url[strlen(ls.authorization_endpoint)] == '?');
	v = url_param(url, "response_type");
	CHECK(v && strcmp(v, "code") == 0);
	free(v);
	v = url_param(url, "code_challenge_method");
	CHECK(v && strcmp(v, "S256") == 0);
	free(v);
	v = url_param(url, "code_challenge");
	CHECK(v && strlen(v) == 43);
	free(v);
	v = url_param(url, "state");
	CHECK(v && strlen(v) == 43);
	free(v);
	v = url_param(url, "client_id");
	CHECK(v && strcmp(v, ls.client_id) == 0);
	free(v);
	v = url_param(url, "redirect_uri");
	CHECK(v && strcmp(v, ls.redirect_uri) == 0);
	free(v);
	v = url_param(url, "resource");
	CHECK(v && strcmp(v, p->resource) == 0);
	free(v);
	v = url_param(url, "scope");
	CHECK(v && strcmp(v, "mcp") == 0);
	free(v);

	TEST("authorize: the browser's round trip, the page, then the token response; the port closes");
	{
		char *location = browser_authorize(url);
		struct rpc_msg m;

		browser_callback(location, 200, "Logged in to login-a. You can close this tab.");
		child_recv(c, &m);
		CHECK_EQ(json_object_get_int64(m.id), 503);
		at = expect_login_tokens(&m);
		rpc_msg_clear(&m);
		expect_port_closed(ls.port);
		free(location);
	}
	free(url);

	TEST("authorize: the access token works on the MCP endpoint; the exchange was PKCE-checked");
	CHECK_EQ(mcp_with_token(p, at), 200);
	if (login_knobs) {
		last = peer_get_json(p, "/test/last");
		CHECK(json_object_object_get_ex(last, "token", &rec));
		CHECK(str_is(rec, "grant_type", "authorization_code"));
		CHECK(str_is(rec, "auth_method", "none"));
		CHECK(str_is(rec, "resource", p->resource));
		CHECK(json_object_object_get_ex(rec, "pkce_ok", &rec) && json_object_get_boolean(rec));
		json_object_put(last);
	}

	TEST("revoke: the access token (RFC 7009), then the MCP endpoint refuses it");
	{
		struct json_object *params = json_object_new_object(), *hs;
		struct rpc_msg m;

		json_object_object_add(params, "server", json_object_new_string(ls.server));
		json_object_object_add(params, "revocation_endpoint", json_object_new_string(ls.revocation_endpoint));
		json_object_object_add(params, "token", json_object_new_string(at));
		json_object_object_add(params, "token_type_hint", json_object_new_string("access_token"));
		json_object_object_add(params, "client_id", json_object_new_string(ls.client_id));
		json_object_object_add(params, "auth_method", json_object_new_string("none"));
		json_object_object_add(params, "timeout_ms", json_object_new_int(10000));
		call(c, METHOD_OAUTH_REVOKE, params, 504, &m);
		CHECK_EQ(m.type, RPC_RESULT);
		CHECK(json_object_object_get_ex(m.result, "http_status", &hs));
		CHECK_EQ(json_object_get_int(hs), 200);
		rpc_msg_clear(&m);
		CHECK_EQ(mcp_with_token(p, at), 401);
	}
	free(at);

	TEST("authorize: a confidential client (client_secret_basic) logs in the same way");
	login_prepare(c, p, &ls, "[\"client_secret_basic\"]", 505);
	CHECK(strcmp(ls.auth_method, "client_secret_basic") == 0 && ls.client_secret);
	at = login_through_browser(c, &ls, 507);
	CHECK_EQ(mcp_with_token(p, at), 200);
	free(at);

	TEST("authorize: client_secret_post");
	login_prepare(c, p, &ls, "[\"client_secret_post\"]", 508);
	CHECK(strcmp(ls.auth_method, "client_secret_post") == 0);
	at = login_through_browser(c, &ls, 510);
	if (login_knobs) {
		last = peer_get_json(p, "/test/last");
		CHECK(json_object_object_get_ex(last, "token", &rec));
		CHECK(str_is(rec, "auth_method", "client_secret_post"));
		json_object_put(last);
	}
	free(at);
	login_setup_clear(&ls);
}

/* Two logins at once, for two servers; the second finishes first. */
static void test_two_logins(struct child *c, struct peer *p)
{
	struct login_setup a = { .server = "two-a" }, b = { .server = "two-b" };
	char *url_a, *url_b, *loc_a, *loc_b, *at;
	struct rpc_msg m;

	TEST("authorize: two servers' logins at once, each on its own port, in any order");
	discover_peer(c, p, &a, 600);
	discover_peer(c, p, &b, 601);
	login_prepare(c, p, &a, NULL, 602);
	login_prepare(c, p, &b, "[\"none\"]", 604);
	url_a = authorize_start(c, &a, 606);
	url_b = authorize_start(c, &b, 607);
	loc_a = browser_authorize(url_a);
	loc_b = browser_authorize(url_b);
	browser_callback(loc_b, 200, "Logged in to two-b.");
	child_recv(c, &m);
	CHECK_EQ(json_object_get_int64(m.id), 607);
	at = expect_login_tokens(&m);
	free(at);
	rpc_msg_clear(&m);
	browser_callback(loc_a, 200, "Logged in to two-a.");
	child_recv(c, &m);
	CHECK_EQ(json_object_get_int64(m.id), 606);
	at = expect_login_tokens(&m);
	CHECK_EQ(mcp_with_token(p, at), 200);
	free(at);
	rpc_msg_clear(&m);
	free(url_a);
	free(url_b);
	free(loc_a);
	free(loc_b);
	login_setup_clear(&a);
	login_setup_clear(&b);
}

/* Replaces the value of state in a URL with a forged one. */
static char *tamper_state(const char *location)
{
	char *t = strdup(location), *s = strstr(t, "state=");

	CHECK(s);
	s += 6;
	CHECK(*s);
	*s = *s == 'A' ? 'B' : 'A';
	return t;
}

static void test_authorize_failures(struct child *c, struct peer *p)
{
	struct login_setup ls = { .server = "login-f" };
	struct rpc_msg m;
	char *url, *location, *forged;

	peer_config_reset(p);
	discover_peer(c, p, &ls, 700);

	TEST("authorize: a forged, missing or repeated state and another path get their page (400, 404) and end "
	     "nothing; the real redirect then completes the login");
	login_prepare(c, p, &ls, NULL, 701);
	url = authorize_start(c, &ls, 703);
	location = browser_authorize(url);
	forged = tamper_state(location);
	browser_callback(forged, 400, "This request does not belong to the login in progress");
	{
		char base[256], text[128], *q = strchr(location, '?');

		CHECK(q && (size_t)(q - location) < sizeof(base) - 64);
		snprintf(base, sizeof(base), "%.*s", (int)(q - location), location);
		browser_callback(base, 400, "does not belong to the login in progress");
		snprintf(base, sizeof(base), "%.*s?code=x&error=access_denied", (int)(q - location), location);
		browser_callback(base, 400, "does not belong to the login in progress");
		snprintf(base, sizeof(base), "%s&state=again", location);
		browser_callback(base, 400, "does not belong to the login in progress");
		snprintf(base, sizeof(base), "http://127.0.0.1:%d/favicon.ico", ls.port);
		browser_callback(base, 404, "Nothing is here.");
		snprintf(text, sizeof(text), "Logged in to %s. You can close this tab.", ls.server);
		browser_callback(location, 200, text);
	}
	child_recv(c, &m);
	CHECK_EQ(json_object_get_int64(m.id), 703);
	free(expect_login_tokens(&m));
	rpc_msg_clear(&m);
	expect_port_closed(ls.port);
	free(url);
	free(location);
	free(forged);

	TEST("authorize: cancel ends the login (cancelled) and closes the port");
	login_prepare(c, p, &ls, NULL, 704);
	url = authorize_start(c, &ls, 706);
	{
		struct json_object *params = json_object_new_object();

		json_object_object_add(params, "server", json_object_new_string(ls.server));
		child_send(c, rpc_notification(METHOD_OAUTH_CANCEL, params));
	}
	child_recv(c, &m);
	CHECK_EQ(json_object_get_int64(m.id), 706);
	expect_login_error(&m, KIND_TERMINAL, LOGIN_R_CANCELLED, NULL, 0);
	rpc_msg_clear(&m);
	expect_port_closed(ls.port);
	free(url);

	TEST("authorize: no browser within timeout_ms: timeout, \"no answer from the browser within 1 s\"");
	login_prepare(c, p, &ls, NULL, 707);
	ls.timeout_ms = 1000;
	url = authorize_start(c, &ls, 709);
	child_recv(c, &m);
	CHECK_EQ(json_object_get_int64(m.id), 709);
	expect_login_error(&m, KIND_TRANSIENT, LOGIN_R_TIMEOUT, NULL, 0);
	CHECK(strcmp(rpc_error_message(&m), "no answer from the browser within 1 s") == 0);
	rpc_msg_clear(&m);
	expect_port_closed(ls.port);
	ls.timeout_ms = 0;
	free(url);

	TEST("authorize: a code the token endpoint refuses: exchange, with the provider's error");
	login_prepare(c, p, &ls, NULL, 710);
	url = authorize_start(c, &ls, 712);
	location = browser_authorize(url);
	peer_fail(p, "invalid_grant", 1);
	browser_callback(location, 400, "Login to login-f failed: the token endpoint refused the code: invalid_grant");
	child_recv(c, &m);
	CHECK_EQ(json_object_get_int64(m.id), 712);
	expect_login_error(&m, KIND_TERMINAL, LOGIN_R_EXCHANGE, "invalid_grant", 400);
	CHECK(strncmp(rpc_error_message(&m), "the token endpoint refused the code: invalid_grant", 50) == 0);
	rpc_msg_clear(&m);
	free(url);
	free(location);

	TEST("authorize: a second redirect while the first is being exchanged gets \"no login is waiting\"");
	peer_config(p, "{\"hang_seconds\":1}");
	login_prepare(c, p, &ls, NULL, 713);
	url = authorize_start(c, &ls, 715);
	location = browser_authorize(url);
	peer_fail(p, "hang", 1);
	{
		/* The first redirect on a raw connection, its answer read later. */
		struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)ls.port),
					   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		const char *path = strstr(location + 7, "/");
		char req[1024], page[8192];
		struct http_reply r;
		size_t got = 0;
		ssize_t n;
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		long long injected = peer_stat(p, "failures_injected");

		CHECK(fd >= 0 && path);
		CHECK(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
		snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n", path,
			 ls.port);
		CHECK_EQ(write(fd, req, strlen(req)), (ssize_t)strlen(req));
		peer_wait_injected(p, injected + 1);
		CHECK_EQ(http_try(location, &r), CURLE_OK);
		CHECK_EQ(r.status, 400);
		CHECK(body_has(&r, "No login is waiting"));
		http_reply_clear(&r);
		while (got < sizeof(page) - 1 && (n = read(fd, page + got, sizeof(page) - 1 - got)) > 0)
			got += (size_t)n;
		page[got] = '\0';
		close(fd);
		CHECK(strncmp(page, "HTTP/1.1 400 ", 13) == 0);
		CHECK(strstr(page, "Login to login-f failed: the token endpoint answered HTTP 503: "
				   "temporarily_unavailable: injected hang"));
	}
	child_recv(c, &m);
	CHECK_EQ(json_object_get_int64(m.id), 715);
	expect_login_error(&m, KIND_TRANSIENT, LOGIN_R_EXCHANGE, "temporarily_unavailable", 503);
	rpc_msg_clear(&m);
	free(url);
	free(location);

	TEST("authorize: a browser that leaves during the exchange: the keeper still gets its answer");
	login_prepare(c, p, &ls, NULL, 716);
	url = authorize_start(c, &ls, 718);
	location = browser_authorize(url);
	peer_fail(p, "hang", 1);
	{
		struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)ls.port),
					   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		const char *path = strstr(location + 7, "/");
		long long injected = peer_stat(p, "failures_injected");
		char req[1024];
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

		CHECK(fd >= 0 && path);
		CHECK(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
		snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", path, ls.port);
		CHECK_EQ(write(fd, req, strlen(req)), (ssize_t)strlen(req));
		peer_wait_injected(p, injected + 1);
		close(fd);
	}
	child_recv(c, &m);
	CHECK_EQ(json_object_get_int64(m.id), 718);
	expect_login_error(&m, KIND_TRANSIENT, LOGIN_R_EXCHANGE, "temporarily_unavailable", 503);
	rpc_msg_clear(&m);
	expect_port_closed(ls.port);
	peer_config(p, "{\"hang_seconds\":60}");
	free(url);
	free(location);
	login_setup_clear(&ls);
}

static void test_revoke_failures(struct child *c, struct peer *p, bool knobs)
{
	struct json_object *params;
	struct rpc_msg m;
	char endpoint[128];

	TEST("revoke: an endpoint nobody answers for: transient \"revoke\"");
	params = json_object_new_object();
	json_object_object_add(params, "server", json_object_new_string("rev"));
	json_object_object_add(params, "revocation_endpoint", json_object_new_string("http://127.0.0.1:9/revoke"));
	json_object_object_add(params, "token", json_object_new_string("revoke-me-token-4321"));
	json_object_object_add(params, "token_type_hint", json_object_new_string("refresh_token"));
	json_object_object_add(params, "client_id", json_object_new_string("some-client"));
	json_object_object_add(params, "client_secret", json_object_new_string("revoke-secret-8765"));
	json_object_object_add(params, "auth_method", json_object_new_string("client_secret_basic"));
	json_object_object_add(params, "timeout_ms", json_object_new_int(10000));
	secret_remember("revoke-me-token-4321");
	secret_remember("revoke-secret-8765");
	call(c, METHOD_OAUTH_REVOKE, json_object_get(params), 800, &m);
	expect_login_error(&m, KIND_TRANSIENT, LOGIN_R_REVOKE, NULL, 0);
	rpc_msg_clear(&m);

	TEST("revoke: a client the provider does not know: terminal, with its error");
	snprintf(endpoint, sizeof(endpoint), "%s/revoke", p->base);
	json_object_object_add(params, "revocation_endpoint", json_object_new_string(endpoint));
	call(c, METHOD_OAUTH_REVOKE, json_object_get(params), 801, &m);
	expect_login_error(&m, KIND_TERMINAL, LOGIN_R_REVOKE, "invalid_client", 401);
	CHECK(strcmp(rpc_error_message(&m), "HTTP 401: invalid_client") == 0);
	rpc_msg_clear(&m);

	if (knobs) {
		TEST("revoke: 503 from the provider: transient, \"HTTP 503\"");
		register_call(c, p, "rev", "http://127.0.0.1:7/oauth/callback", "[\"none\"]", 802, &m);
		CHECK_EQ(m.type, RPC_RESULT);
		json_object_object_add(params, "client_id", json_object_new_string(str_of(m.result, "client_id")));
		rpc_msg_clear(&m);
		peer_config(p, "{\"revoke_fail\":true}");
		json_object_object_add(params, "auth_method", json_object_new_string("none"));
		call(c, METHOD_OAUTH_REVOKE, json_object_get(params), 803, &m);
		expect_login_error(&m, KIND_TRANSIENT, LOGIN_R_REVOKE, "temporarily_unavailable", 503);
		CHECK(strncmp(rpc_error_message(&m), "HTTP 503", 8) == 0);
		rpc_msg_clear(&m);
		peer_config(p, "{\"revoke_fail\":false}");
	}
	json_object_put(params);
}

/* Discovery and login cases that need the peer's login knobs. */
static void test_login_knobs(struct child *c, struct peer *p)
{
	struct login_setup ls = { .server = "knob" };
	struct rpc_msg m;
	struct json_object *v;
	char paths[2048], want[512], *url, *location, *at;

	TEST("discover: no S256 advertised: refused (pkce)");
	peer_config_reset(p);
	peer_config(p, "{\"s256\":false}");
	discover_call(c, "knob", p->resource, "streamable-http", 900, &m);
	expect_login_error(&m, KIND_TERMINAL, LOGIN_R_PKCE, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "does not advertise PKCE S256 (code_challenge_methods_supported); "
					    "refusing to log in"));
	rpc_msg_clear(&m);

	TEST("discover: metadata claiming another issuer: issuer_mismatch naming both");
	peer_config_reset(p);
	peer_config(p, "{\"metadata_issuer\":\"http://x\"}");
	discover_call(c, "knob", p->resource, "streamable-http", 901, &m);
	expect_login_error(&m, KIND_TERMINAL, LOGIN_R_ISSUER, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "http://x") && strstr(rpc_error_message(&m), p->base));
	rpc_msg_clear(&m);

	TEST("discover: the challenge's scope wins over scopes_supported");
	peer_config_reset(p);
	peer_config(p, "{\"challenge_scope\":\"mcp extra\"}");
	discover_call(c, "knob", p->resource, "streamable-http", 902, &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(str_is(m.result, "scope", "mcp extra"));
	rpc_msg_clear(&m);

	TEST("discover: without resource_metadata, the path-specific then the root well-known URL");
	peer_config_reset(p);
	peer_config(p, "{\"challenge_metadata\":false,\"prm_paths\":\"root\"}");
	discover_call(c, "knob", p->resource, "streamable-http", 903, &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(str_is(m.result, "resource", p->resource));
	rpc_msg_clear(&m);
	peer_discovery_paths(p, paths, sizeof(paths));
	CHECK(strcmp(paths, "/.well-known/oauth-protected-resource/mcp /.well-known/oauth-protected-resource "
			    "/.well-known/oauth-authorization-server") == 0);

	TEST("discover: an issuer with a path: the MCP order of well-known URLs (OpenID only here)");
	peer_config_reset(p);
	peer_config(p, "{\"issuer_path\":\"/tenant1\",\"as_metadata\":\"openid\"}");
	discover_call(c, "knob", p->resource, "streamable-http", 904, &m);
	if (m.type != RPC_RESULT)
		fprintf(stderr, "discover: %s\n", json_object_to_json_string(m.root));
	CHECK_EQ(m.type, RPC_RESULT);
	snprintf(want, sizeof(want), "%s/tenant1", p->base);
	CHECK(str_is(m.result, "issuer", want));
	rpc_msg_clear(&m);
	peer_discovery_paths(p, paths, sizeof(paths));
	if (strcmp(paths, "/.well-known/oauth-protected-resource /.well-known/oauth-authorization-server/tenant1 "
			  "/.well-known/openid-configuration/tenant1") != 0)
		fprintf(stderr, "discovery paths: %s\n", paths);
	CHECK(strcmp(paths, "/.well-known/oauth-protected-resource /.well-known/oauth-authorization-server/tenant1 "
			    "/.well-known/openid-configuration/tenant1") == 0);

	TEST("discover: no registration or revocation endpoint, a narrower auth method list");
	peer_config_reset(p);
	peer_config(p, "{\"registration\":false,\"revocation\":false,\"auth_methods\":[\"client_secret_post\"]}");
	discover_call(c, "knob", p->resource, "streamable-http", 905, &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(!json_object_object_get_ex(m.result, "registration_endpoint", NULL));
	CHECK(!json_object_object_get_ex(m.result, "revocation_endpoint", NULL));
	CHECK(json_object_object_get_ex(m.result, "token_endpoint_auth_methods", &v));
	CHECK_EQ(json_object_array_length(v), 1);
	rpc_msg_clear(&m);

	peer_config_reset(p);
	discover_peer(c, p, &ls, 906);

	TEST("authorize: a redirect naming another issuer: iss_mismatch");
	peer_config(p, "{\"wrong_iss\":true}");
	login_prepare(c, p, &ls, NULL, 907);
	url = authorize_start(c, &ls, 909);
	location = browser_authorize(url);
	browser_callback(location, 400, "Login to knob failed:");
	child_recv(c, &m);
	expect_login_error(&m, KIND_TERMINAL, LOGIN_R_ISS, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "https://evil.example"));
	rpc_msg_clear(&m);
	free(url);
	free(location);

	TEST("authorize: iss advertised but missing: iss_mismatch; not advertised and missing: fine");
	peer_config_reset(p);
	peer_config(p, "{\"iss\":false}");
	login_prepare(c, p, &ls, NULL, 910);
	url = authorize_start(c, &ls, 912); /* ls.iss_supported is still true */
	location = browser_authorize(url);
	browser_callback(location, 400, "Login to knob failed:");
	child_recv(c, &m);
	expect_login_error(&m, KIND_TERMINAL, LOGIN_R_ISS, NULL, 0);
	rpc_msg_clear(&m);
	free(url);
	free(location);
	discover_call(c, "knob", p->resource, "streamable-http", 913, &m);
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(json_object_object_get_ex(m.result, "iss_supported", &v) && !json_object_get_boolean(v));
	rpc_msg_clear(&m);
	ls.iss_supported = false;
	login_prepare(c, p, &ls, NULL, 914);
	at = login_through_browser(c, &ls, 916);
	free(at);
	ls.iss_supported = true;

	TEST("authorize: the user says no: denied, access_denied, with the description");
	peer_config_reset(p);
	peer_config(p, "{\"authorize_error\":\"access_denied\"}");
	login_prepare(c, p, &ls, NULL, 917);
	url = authorize_start(c, &ls, 919);
	location = browser_authorize(url);
	browser_callback(location, 400, "Login to knob failed: the authorization server refused: access_denied");
	child_recv(c, &m);
	expect_login_error(&m, KIND_TERMINAL, LOGIN_R_DENIED, "access_denied", 0);
	CHECK(strncmp(rpc_error_message(&m), "the authorization server refused: access_denied", 47) == 0);
	rpc_msg_clear(&m);
	free(url);
	free(location);
	peer_config_reset(p);
	login_setup_clear(&ls);
}

/* A record of the canned server: the request lines in order, space-separated. */
static void canned_paths(const char *record, char *out, size_t len)
{
	FILE *f = fopen(record, "r");
	char line[4096];
	size_t off = 0;

	CHECK(f);
	out[0] = '\0';
	while (fgets(line, sizeof(line), f)) {
		char method[16], path[1024];

		if (strstr(line, " HTTP/1.1\r\n") && sscanf(line, "%15[A-Z] %1023s HTTP/1.1", method, path) == 2)
			off += (size_t)snprintf(out + off, len - off, "%s%s %s", off ? ", " : "", method, path);
		CHECK(off < len);
	}
	fclose(f);
}

/* The requests a canned server recorded, as they came (at most len - 1 bytes). */
static void canned_read(const char *record, char *out, size_t len)
{
	FILE *f = fopen(record, "r");
	size_t got;

	CHECK(f);
	got = fread(out, 1, len - 1, f);
	out[got] = '\0';
	fclose(f);
}

/* Discovery against canned answers: what the peer never sends. */
static void test_discover_canned(struct child *c)
{
	struct peer s = { 0 };
	char record[128], paths[2048], hdr[512], prm[512], as[1024], *responses[8];
	const char *headers;
	struct rpc_msg m;
	size_t n = 0;
	int lfd, status;

	snprintf(record, sizeof(record), "%s/canned-discovery", tmpdir);

	TEST("discover (canned): several challenges in one header, an issuer path, the third AS URL");
	lfd = canned_listen(&s);
	snprintf(hdr, sizeof(hdr),
		 "WWW-Authenticate: Basic realm=\"x\", Bearer error=\"invalid_token\", "
		 "resource_metadata=\"%s/meta/prm\", scope=\"read write\"\r\nContent-Type: application/json",
		 s.base);
	responses[n++] = canned_response("401 Unauthorized", hdr, "{}");
	snprintf(prm, sizeof(prm), "{\"resource\":\"%s/\",\"authorization_servers\":[\"%s/tenant/\"]}", s.base, s.base);
	responses[n++] = canned_response("200 OK", "Content-Type: application/json", prm);
	responses[n++] = canned_response("404 Not Found", NULL, "");
	responses[n++] = canned_response("404 Not Found", NULL, "");
	snprintf(as, sizeof(as),
		 "{\"issuer\":\"%s/tenant/\",\"authorization_endpoint\":\"%s/a\",\"token_endpoint\":\"%s/t\","
		 "\"code_challenge_methods_supported\":[\"plain\",\"S256\"]}",
		 s.base, s.base, s.base);
	responses[n++] = canned_response("200 OK", "Content-Type: application/json", as);
	canned_serve(&s, lfd, responses, n, record);
	discover_call(c, "canned-d", s.resource, "streamable-http", 1000, &m);
	if (m.type != RPC_RESULT)
		fprintf(stderr, "discover: %s\n", json_object_to_json_string(m.root));
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(str_is(m.result, "scope", "read write"));
	CHECK(!json_object_object_get_ex(m.result, "registration_endpoint", NULL));
	CHECK(!json_object_object_get_ex(m.result, "token_endpoint_auth_methods", NULL));
	rpc_msg_clear(&m);
	CHECK_EQ(waitpid(s.pid, &status, 0), s.pid);
	s.pid = 0;
	canned_paths(record, paths, sizeof(paths));
	if (strcmp(paths, "POST /mcp, GET /meta/prm, GET /.well-known/oauth-authorization-server/tenant, "
			  "GET /.well-known/openid-configuration/tenant, GET /tenant/.well-known/openid-configuration") != 0)
		fprintf(stderr, "requests: %s\n", paths);
	CHECK(strcmp(paths, "POST /mcp, GET /meta/prm, GET /.well-known/oauth-authorization-server/tenant, "
			    "GET /.well-known/openid-configuration/tenant, GET /tenant/.well-known/openid-configuration") ==
	      0);
	{
		/* The probe: initialize, both Accept types, the static header. */
		char rec[8192];

		canned_read(record, rec, sizeof(rec));
		CHECK(strcasestr(rec, "\r\nAccept: application/json, text/event-stream\r\n"));
		CHECK(strcasestr(rec, "\r\nX-Test-Static: static header value\r\n"));
		CHECK(strstr(rec, "\"method\":\"initialize\""));
		CHECK(!strcasestr(rec, "\r\nAuthorization:"));
	}
	for (size_t i = 0; i < n; i++)
		free(responses[i]);
	n = 0;

	TEST("discover (canned): resource metadata for another resource is refused");
	lfd = canned_listen(&s);
	responses[n++] = canned_response("404 Not Found", NULL, "");
	snprintf(prm, sizeof(prm), "{\"resource\":\"%s/mcp-other\",\"authorization_servers\":[\"%s\"]}", s.base, s.base);
	responses[n++] = canned_response("200 OK", "Content-Type: application/json", prm);
	canned_serve(&s, lfd, responses, n, record);
	discover_call(c, "canned-d", s.resource, "streamable-http", 1001, &m);
	expect_login_error(&m, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "mcp-other"));
	rpc_msg_clear(&m);
	CHECK_EQ(waitpid(s.pid, &status, 0), s.pid);
	s.pid = 0;
	for (size_t i = 0; i < n; i++)
		free(responses[i]);
	n = 0;

	TEST("discover (canned): plain http to a non-loopback endpoint is refused");
	lfd = canned_listen(&s);
	responses[n++] = canned_response("404 Not Found", NULL, "");
	snprintf(prm, sizeof(prm), "{\"resource\":\"%s/mcp\",\"authorization_servers\":[\"%s\"]}", s.base, s.base);
	responses[n++] = canned_response("200 OK", "Content-Type: application/json", prm);
	snprintf(as, sizeof(as),
		 "{\"issuer\":\"%s\",\"authorization_endpoint\":\"%s/a\",\"token_endpoint\":\"http://auth.example/t\","
		 "\"code_challenge_methods_supported\":[\"S256\"]}",
		 s.base, s.base);
	responses[n++] = canned_response("200 OK", "Content-Type: application/json", as);
	canned_serve(&s, lfd, responses, n, record);
	discover_call(c, "canned-d", s.resource, "streamable-http", 1002, &m);
	expect_login_error(&m, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0);
	CHECK(strstr(rpc_error_message(&m), "http://auth.example/t is not https"));
	rpc_msg_clear(&m);
	CHECK_EQ(waitpid(s.pid, &status, 0), s.pid);
	s.pid = 0;
	canned_paths(record, paths, sizeof(paths));
	CHECK(strcmp(paths, "POST /mcp, GET /.well-known/oauth-protected-resource/mcp, "
			    "GET /.well-known/oauth-authorization-server") == 0);
	for (size_t i = 0; i < n; i++)
		free(responses[i]);
	n = 0;

	TEST("discover (canned): an initialize let through: tools/list on its session, whose challenge counts");
	lfd = canned_listen(&s);
	responses[n++] = canned_response("200 OK", "Content-Type: application/json\r\nMcp-Session-Id: sess-42",
					 "{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{}}");
	snprintf(hdr, sizeof(hdr), "WWW-Authenticate: Bearer resource_metadata=\"%s/meta/prm\", scope=\"mcp:basic\"",
		 s.base);
	responses[n++] = canned_response("401 Unauthorized", hdr, "");
	snprintf(prm, sizeof(prm), "{\"resource\":\"%s/mcp\",\"authorization_servers\":[\"%s\"]}", s.base, s.base);
	responses[n++] = canned_response("200 OK", "Content-Type: application/json", prm);
	snprintf(as, sizeof(as),
		 "{\"issuer\":\"%s\",\"authorization_endpoint\":\"%s/a\",\"token_endpoint\":\"%s/t\","
		 "\"code_challenge_methods_supported\":[\"S256\"]}",
		 s.base, s.base, s.base);
	responses[n++] = canned_response("200 OK", "Content-Type: application/json", as);
	canned_serve(&s, lfd, responses, n, record);
	discover_call(c, "canned-d", s.resource, "streamable-http", 1004, &m);
	if (m.type != RPC_RESULT)
		fprintf(stderr, "discover: %s\n", json_object_to_json_string(m.root));
	CHECK_EQ(m.type, RPC_RESULT);
	CHECK(str_is(m.result, "scope", "mcp:basic"));
	rpc_msg_clear(&m);
	CHECK_EQ(waitpid(s.pid, &status, 0), s.pid);
	s.pid = 0;
	canned_paths(record, paths, sizeof(paths));
	CHECK(strcmp(paths, "POST /mcp, POST /mcp, GET /meta/prm, GET /.well-known/oauth-authorization-server") == 0);
	{
		char rec[8192];

		canned_read(record, rec, sizeof(rec));
		CHECK(strstr(rec, "\"method\":\"tools/list\""));
		CHECK(strcasestr(rec, "\r\nMcp-Session-Id: sess-42\r\n"));
		CHECK(strcasestr(rec, "\r\nMCP-Protocol-Version: 2025-11-25\r\n"));
		CHECK(!strcasestr(rec, "\r\nAuthorization:"));
	}
	for (size_t i = 0; i < n; i++)
		free(responses[i]);
	n = 0;

	TEST("discover (canned): metadata that comes as an event stream fails at once, saying so");
	lfd = canned_listen(&s);
	responses[n++] = canned_response("401 Unauthorized", NULL, "");
	responses[n++] = canned_response("200 OK", "Content-Type: text/event-stream", "data: {}\n\n");
	canned_serve(&s, lfd, responses, n, record);
	discover_call(c, "canned-d", s.resource, "streamable-http", 1005, &m);
	CHECK_EQ(m.type, RPC_ERROR);
	if (!strstr(rpc_error_message(&m), "event stream"))
		fprintf(stderr, "discover: %s\n", rpc_error_message(&m));
	CHECK(strstr(rpc_error_message(&m), "answered with an event stream instead of a document"));
	rpc_msg_clear(&m);
	CHECK_EQ(waitpid(s.pid, &status, 0), s.pid);
	s.pid = 0;
	for (size_t i = 0; i < n; i++)
		free(responses[i]);
	n = 0;

	TEST("discover (canned): a 503 on resource metadata is transient; an unusable challenge falls back");
	lfd = canned_listen(&s);
	headers = "WWW-Authenticate: Bearer scope=\"unterminated";
	responses[n++] = canned_response("401 Unauthorized", headers, "");
	responses[n++] = canned_response("503 Service Unavailable", NULL, "");
	canned_serve(&s, lfd, responses, n, record);
	discover_call(c, "canned-d", s.resource, "streamable-http", 1003, &m);
	expect_login_error(&m, KIND_TRANSIENT, LOGIN_R_DISCOVERY, NULL, 503);
	rpc_msg_clear(&m);
	CHECK_EQ(waitpid(s.pid, &status, 0), s.pid);
	s.pid = 0;
	canned_paths(record, paths, sizeof(paths));
	CHECK(strcmp(paths, "POST /mcp, GET /.well-known/oauth-protected-resource/mcp") == 0);
	for (size_t i = 0; i < n; i++)
		free(responses[i]);
	unlink(record);
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
		/* A login step without its listener, and a cancel that names nobody. */
		"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"oauth.authorize\",\"params\":{\"server\":\"x\","
		"\"authorization_endpoint\":\"http://127.0.0.1:9/a\",\"token_endpoint\":\"http://127.0.0.1:9/t\","
		"\"redirect_uri\":\"http://127.0.0.1:9/oauth/callback\",\"client_id\":\"x\",\"auth_method\":\"none\","
		"\"issuer\":\"http://127.0.0.1:9\",\"iss_supported\":true,\"timeout_ms\":1000}}\n",
		"{\"jsonrpc\":\"2.0\",\"method\":\"oauth.cancel\",\"params\":{}}\n",
		"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"oauth.listen\",\"params\":{\"server\":\"x\",\"port\":70000}}\n",
		"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"oauth.revoke\",\"params\":{\"server\":\"x\","
		"\"revocation_endpoint\":\"http://127.0.0.1:9/r\",\"token\":\"bug-token-9876\",\"client_id\":\"x\","
		"\"auth_method\":\"client_secret_post\",\"timeout_ms\":1000}}\n",
		/* An address policy that names no class (proto.h). */
		"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"oauth.refresh\",\"params\":{\"server\":\"x\","
		"\"token_endpoint\":\"http://127.0.0.1:9/\",\"refresh_token\":\"bug-token-5678\",\"client_id\":\"x\","
		"\"auth_method\":\"none\",\"timeout_ms\":1000,\"server_address\":\"intranet\"}}\n",
	};

	secret_remember("bug-token-5678");
	secret_remember("bug-token-9876");
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
	struct peer pa = { 0 }, pb = { 0 }, pc = { 0 };
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
	test_address_policy(&c, &pa);
	test_canned(&c);
	close(c.fd);
	c.fd = -1;
	CHECK_EQ(child_wait(&c), 0);

	/* Login and logout: a peer of their own, since they change its settings. */
	test_challenge_parse();
	peer_start(&pc, (const char *const[]){ "--token-lifetime", "600", NULL });
	login_knobs = peer_has_login_knobs(&pc);
	if (!login_knobs)
		test_skip("login knobs", "the test peer lacks them (POST /test/config s256, iss, ...)");
	child_ready(&c);
	test_listen(&c);
	test_discover(&c, &pc);
	test_discover_canned(&c);
	test_register(&c, &pc);
	test_authorize(&c, &pc);
	test_two_logins(&c, &pc);
	test_authorize_failures(&c, &pc);
	test_revoke_failures(&c, &pc, login_knobs);
	if (login_knobs)
		test_login_knobs(&c, &pc);
	close(c.fd);
	c.fd = -1;
	CHECK_EQ(child_wait(&c), 0);

	test_keeper_bugs();
	test_close(&pa);
	test_log_clean();
	test_sanitizer_check(child_log);

	curl_global_cleanup();
	finished = true;
	printf("# all oauth child tests passed\n");
	return 0;
}
