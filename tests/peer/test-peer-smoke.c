/*
 * peer-smoke: starts the real test peer and walks it through what later
 * integration tests lean on — discovery, registration, the authorization code
 * flow with PKCE, MCP over JSON and SSE, refresh rotation with reuse
 * detection, failure injection, revocation, size limits — and checks its
 * counters exactly. Every request is sequential, so the counts are exact and
 * no step depends on timing except the bounded wait for an injected hang.
 *
 * Usage: test-peer-smoke PATH-TO-mcpkeeper-test-peer
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <sodium.h>

#include "../test.h"

extern char **environ;

#define HANG_SECONDS 2
#define REDIRECT_URI "http://127.0.0.1:8765/callback"

static char base[64];
static CURL *curl;
static long timeout_ms = 20000;
static pid_t peer_pid = -1;

/* What /test/stats must say, kept in step with every request sent. */
static struct {
	long long token_grants, refresh_grants, refresh_requests, failures_injected, reused_refresh_tokens,
		unauthorized, mcp_requests, registrations, revocations;
} expect;

struct resp {
	CURLcode cc;
	long status;
	char *body;
	size_t len;
	char location[2048];
	char www_auth[512];
	char session[128];
	char ctype[128];
	char cache[128];
	char retry_after[32];
};

struct client {
	char id[128];
	char secret[128];
};

struct tokens {
	char access[128];
	char refresh[128];
};

/* ---- HTTP --------------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct resp *r = arg;
	size_t add = size * n;
	char *b = realloc(r->body, r->len + add + 1);

	CHECK(b != NULL);
	memcpy(b + r->len, data, add);
	r->len += add;
	b[r->len] = '\0';
	r->body = b;
	return add;
}

static void header_copy(char *dst, size_t dstlen, const char *line, size_t len, const char *name)
{
	size_t n = strlen(name);

	if (len <= n + 1 || strncasecmp(line, name, n) != 0 || line[n] != ':')
		return;
	line += n + 1;
	len -= n + 1;
	while (len && (*line == ' ' || *line == '\t'))
		line++, len--;
	while (len && (line[len - 1] == '\r' || line[len - 1] == '\n'))
		len--;
	if (len >= dstlen)
		len = dstlen - 1;
	memcpy(dst, line, len);
	dst[len] = '\0';
}

static size_t on_header(char *line, size_t size, size_t n, void *arg)
{
	struct resp *r = arg;
	size_t len = size * n;

	header_copy(r->location, sizeof(r->location), line, len, "Location");
	header_copy(r->www_auth, sizeof(r->www_auth), line, len, "WWW-Authenticate");
	header_copy(r->session, sizeof(r->session), line, len, "Mcp-Session-Id");
	header_copy(r->ctype, sizeof(r->ctype), line, len, "Content-Type");
	header_copy(r->cache, sizeof(r->cache), line, len, "Cache-Control");
	header_copy(r->retry_after, sizeof(r->retry_after), line, len, "Retry-After");
	return len;
}

static void resp_clear(struct resp *r)
{
	free(r->body);
	memset(r, 0, sizeof(*r));
}

/*
 * One request; the reply lands in *r (cleared first). body may be NULL;
 * headers is a NULL-terminated list of extra "Name: value" lines.
 * Never follows redirects.
 */
static void http(struct resp *r, const char *method, const char *path, const char *ctype, const char *body,
		 size_t body_len, const char *const *headers)
{
	struct curl_slist *h = NULL;
	char url[4096], line[256];

	resp_clear(r);
	CHECK(snprintf(url, sizeof(url), "%s%s", base, path) < (int)sizeof(url));
	curl_easy_reset(curl);
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(curl, CURLOPT_HEADERDATA, r);
	/* No "Expect: 100-continue" pause on large bodies. */
	h = curl_slist_append(h, "Expect:");
	if (ctype) {
		snprintf(line, sizeof(line), "Content-Type: %s", ctype);
		h = curl_slist_append(h, line);
	}
	for (size_t i = 0; headers && headers[i]; i++)
		h = curl_slist_append(h, headers[i]);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
	if (strcmp(method, "POST") == 0) {
		curl_easy_setopt(curl, CURLOPT_POST, 1L);
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body ? body : "");
		curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? body_len : 0));
	} else if (strcmp(method, "GET") != 0) {
		curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
	}
	r->cc = curl_easy_perform(curl);
	if (r->cc == CURLE_OK)
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r->status);
	curl_slist_free_all(h);
}

static void get(struct resp *r, const char *path)
{
	http(r, "GET", path, NULL, NULL, 0, NULL);
	CHECK_EQ(r->cc, CURLE_OK);
}

static void post_json(struct resp *r, const char *path, const char *json)
{
	http(r, "POST", path, "application/json", json, strlen(json), NULL);
	CHECK_EQ(r->cc, CURLE_OK);
}

static struct json_object *json_of(const struct resp *r)
{
	struct json_object *o;

	CHECK(r->body != NULL);
	o = json_tokener_parse(r->body);
	if (!o)
		fprintf(stderr, "not JSON (status %ld, %zu bytes)\n", r->status, r->len);
	CHECK(o != NULL);
	return o;
}

static const char *jstr(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static long long jint(struct json_object *o, const char *key)
{
	struct json_object *v;

	CHECK(json_object_object_get_ex(o, key, &v));
	CHECK(json_object_is_type(v, json_type_int));
	return json_object_get_int64(v);
}

static void copy(char *dst, size_t len, const char *src)
{
	CHECK(src != NULL);
	CHECK(strlen(src) < len);
	strcpy(dst, src);
}

static int streq(const char *a, const char *b)
{
	return a && b && strcmp(a, b) == 0;
}

/* ---- OAuth -------------------------------------------------------------- */

/* Appends &key=value (value percent-encoded) to a form body. */
static void form_add(char *form, size_t len, const char *key, const char *value)
{
	char *enc = curl_easy_escape(curl, value, 0);

	CHECK(enc != NULL);
	CHECK(strlen(form) + strlen(key) + strlen(enc) + 3 < len);
	if (*form)
		strcat(form, "&");
	strcat(form, key);
	strcat(form, "=");
	strcat(form, enc);
	curl_free(enc);
}

/* POST /token with client_secret_basic. r->cc tells whether it completed. */
static void token_request(struct resp *r, const struct client *c, const char *form)
{
	char creds[300], b64[420], header[450];
	const char *headers[] = { header, NULL };

	snprintf(creds, sizeof(creds), "%s:%s", c->id, c->secret);
	sodium_bin2base64(b64, sizeof(b64), (const unsigned char *)creds, strlen(creds),
			  sodium_base64_VARIANT_ORIGINAL);
	snprintf(header, sizeof(header), "Authorization: Basic %s", b64);
	http(r, "POST", "/token", "application/x-www-form-urlencoded", form, strlen(form), headers);
}

static void refresh_request(struct resp *r, const struct client *c, const char *refresh)
{
	char form[1024] = "";
	char resource[128];

	snprintf(resource, sizeof(resource), "%s/mcp", base);
	form_add(form, sizeof(form), "grant_type", "refresh_token");
	form_add(form, sizeof(form), "refresh_token", refresh);
	form_add(form, sizeof(form), "resource", resource);
	token_request(r, c, form);
	expect.refresh_requests++;
}

/* A 200 token response: Bearer, no-store, the expected lifetime. */
static void tokens_from(const struct resp *r, struct tokens *t, long long lifetime)
{
	struct json_object *o;

	CHECK_EQ(r->cc, CURLE_OK);
	CHECK_EQ(r->status, 200);
	o = json_of(r);
	CHECK(strstr(r->cache, "no-store") != NULL);
	CHECK(streq(jstr(o, "token_type"), "Bearer"));
	CHECK_EQ(jint(o, "expires_in"), lifetime);
	CHECK(streq(jstr(o, "scope"), "mcp"));
	copy(t->access, sizeof(t->access), jstr(o, "access_token"));
	copy(t->refresh, sizeof(t->refresh), jstr(o, "refresh_token"));
	CHECK_EQ(strlen(t->access), 43);
	json_object_put(o);
}

static void oauth_error_is(const struct resp *r, long status, const char *error)
{
	struct json_object *o;

	CHECK_EQ(r->cc, CURLE_OK);
	CHECK_EQ(r->status, status);
	o = json_of(r);
	if (!streq(jstr(o, "error"), error))
		fprintf(stderr, "expected error %s, got %s\n", error, jstr(o, "error"));
	CHECK(streq(jstr(o, "error"), error));
	json_object_put(o);
}

/* Value of key in the query of a URL; NULL when absent. Caller frees. */
static char *query_param(const char *url, const char *key)
{
	struct evkeyvalq q;
	const char *v;
	char *out;

	CHECK(evhttp_parse_query(url, &q) == 0);
	v = evhttp_find_header(&q, key);
	out = v ? strdup(v) : NULL;
	evhttp_clear_headers(&q);
	return out;
}

/*
 * The authorization code flow: /authorize (auto-approved, redirect not
 * followed), then the code exchange with PKCE. The code is single-use.
 */
static void login(const struct client *c, struct tokens *t)
{
	unsigned char rnd[32], hash[crypto_hash_sha256_BYTES];
	char verifier[64], challenge[64], query[2048] = "", path[2100], form[2048] = "", resource[128];
	char *code, *state, *iss;
	struct resp r = { 0 };

	randombytes_buf(rnd, sizeof(rnd));
	sodium_bin2base64(verifier, sizeof(verifier), rnd, sizeof(rnd), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	crypto_hash_sha256(hash, (const unsigned char *)verifier, strlen(verifier));
	sodium_bin2base64(challenge, sizeof(challenge), hash, sizeof(hash), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	snprintf(resource, sizeof(resource), "%s/mcp", base);

	form_add(query, sizeof(query), "response_type", "code");
	form_add(query, sizeof(query), "client_id", c->id);
	form_add(query, sizeof(query), "redirect_uri", REDIRECT_URI);
	form_add(query, sizeof(query), "code_challenge", challenge);
	form_add(query, sizeof(query), "code_challenge_method", "S256");
	form_add(query, sizeof(query), "state", "st-42");
	form_add(query, sizeof(query), "scope", "mcp");
	form_add(query, sizeof(query), "resource", resource);
	snprintf(path, sizeof(path), "/authorize?%s", query);
	get(&r, path);
	CHECK_EQ(r.status, 302);
	CHECK(strncmp(r.location, REDIRECT_URI "?", strlen(REDIRECT_URI) + 1) == 0);
	code = query_param(r.location, "code");
	state = query_param(r.location, "state");
	iss = query_param(r.location, "iss");
	CHECK(code != NULL);
	CHECK(streq(state, "st-42"));
	CHECK(streq(iss, base));

	form_add(form, sizeof(form), "grant_type", "authorization_code");
	form_add(form, sizeof(form), "code", code);
	form_add(form, sizeof(form), "redirect_uri", REDIRECT_URI);
	form_add(form, sizeof(form), "code_verifier", verifier);
	form_add(form, sizeof(form), "resource", resource);
	token_request(&r, c, form);
	tokens_from(&r, t, 3600);
	expect.token_grants++;

	/* Single use: the same exchange again is refused. */
	token_request(&r, c, form);
	oauth_error_is(&r, 400, "invalid_grant");

	free(code);
	free(state);
	free(iss);
	resp_clear(&r);
}

/* ---- MCP ------------------------------------------------------------------ */

/*
 * POST /mcp with a bearer token (may be NULL) and a session (may be NULL).
 * accept selects the response format. Returns the parsed JSON-RPC message
 * for a 200, whether sent as JSON or as one SSE event, else NULL.
 */
static struct json_object *mcp(struct resp *r, const char *token, const char *session, const char *accept,
			       const char *body)
{
	char authz[200], sid[200], acc[200];
	const char *headers[4] = { NULL };
	size_t n = 0;

	snprintf(acc, sizeof(acc), "Accept: %s", accept ? accept : "application/json, text/event-stream");
	headers[n++] = acc;
	if (token) {
		snprintf(authz, sizeof(authz), "Authorization: Bearer %s", token);
		headers[n++] = authz;
	}
	if (session) {
		snprintf(sid, sizeof(sid), "Mcp-Session-Id: %s", session);
		headers[n++] = sid;
	}
	http(r, "POST", "/mcp", "application/json", body, strlen(body), headers);
	CHECK_EQ(r->cc, CURLE_OK);
	expect.mcp_requests++;
	if (r->status == 401)
		expect.unauthorized++;
	if (r->status != 200)
		return NULL;
	if (strncmp(r->ctype, "text/event-stream", 17) == 0) {
		static const char prefix[] = "event: message\ndata: ";
		struct json_object *o;
		char *end;

		CHECK(strncmp(r->body, prefix, sizeof(prefix) - 1) == 0);
		end = strstr(r->body, "\n\n");
		CHECK(end != NULL && end[2] == '\0');
		*end = '\0';
		o = json_tokener_parse(r->body + sizeof(prefix) - 1);
		CHECK(o != NULL);
		return o;
	}
	CHECK(strncmp(r->ctype, "application/json", 16) == 0);
	return json_of(r);
}

/* The text of a tools/call result's first content item. */
static const char *tool_text(struct json_object *msg)
{
	struct json_object *result, *content, *item;

	CHECK(json_object_object_get_ex(msg, "result", &result));
	CHECK(json_object_object_get_ex(result, "content", &content));
	CHECK(json_object_array_length(content) == 1);
	item = json_object_array_get_idx(content, 0);
	CHECK(streq(jstr(item, "type"), "text"));
	return jstr(item, "text");
}

/* ---- the peer process ----------------------------------------------------- */

/* A failed CHECK exits: take the peer down too, so that nothing outlives the
 * test (and meson is not left waiting on the peer's inherited stderr). */
static void peer_kill_at_exit(void)
{
	if (peer_pid > 0) {
		kill(peer_pid, SIGKILL);
		waitpid(peer_pid, NULL, 0);
	}
}

/* Starts the peer and waits (bounded) for its "PORT n" line. */
static pid_t peer_start(const char *path, int *port)
{
	char hang[16];
	const char *argv[] = { path, "--hang-seconds", hang, NULL };
	posix_spawn_file_actions_t fa;
	char line[64];
	size_t len = 0;
	int pipefd[2];
	pid_t pid;

	snprintf(hang, sizeof(hang), "%d", HANG_SECONDS);
	CHECK(pipe2(pipefd, O_CLOEXEC) == 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
	CHECK_EQ(posix_spawn(&pid, path, &fa, NULL, (char **)argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	peer_pid = pid;
	atexit(peer_kill_at_exit);

	for (;;) {
		struct pollfd pfd = { .fd = pipefd[0], .events = POLLIN };
		ssize_t n;

		CHECK(poll(&pfd, 1, 15000) == 1);
		n = read(pipefd[0], line + len, sizeof(line) - 1 - len);
		CHECK(n > 0);
		len += (size_t)n;
		line[len] = '\0';
		if (strchr(line, '\n'))
			break;
		CHECK(len < sizeof(line) - 1);
	}
	CHECK(sscanf(line, "PORT %d\n", port) == 1);
	CHECK(*port > 0 && *port < 65536);
	close(pipefd[0]);
	return pid;
}

static void peer_stop(pid_t pid)
{
	int status;

	CHECK(kill(pid, SIGTERM) == 0);
	CHECK(waitpid(pid, &status, 0) == pid);
	peer_pid = -1;
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
}

static struct json_object *stats(void)
{
	struct resp r = { 0 };
	struct json_object *o;

	get(&r, "/test/stats");
	CHECK_EQ(r.status, 200);
	o = json_of(&r);
	resp_clear(&r);
	return o;
}

/* ---- the cases ------------------------------------------------------------ */

static void test_discovery(void)
{
	static const char *const prm_paths[] = { "/.well-known/oauth-protected-resource",
						 "/.well-known/oauth-protected-resource/mcp" };
	static const char *const as_paths[] = { "/.well-known/oauth-authorization-server",
						"/.well-known/openid-configuration" };
	struct resp r = { 0 };
	char url[128];

	TEST("discovery: protected resource (RFC 9728) and authorization server (RFC 8414)");
	for (size_t i = 0; i < 2; i++) {
		struct json_object *o, *as;

		get(&r, prm_paths[i]);
		CHECK_EQ(r.status, 200);
		o = json_of(&r);
		snprintf(url, sizeof(url), "%s/mcp", base);
		CHECK(streq(jstr(o, "resource"), url));
		CHECK(json_object_object_get_ex(o, "authorization_servers", &as));
		CHECK(json_object_array_length(as) == 1);
		CHECK(streq(json_object_get_string(json_object_array_get_idx(as, 0)), base));
		json_object_put(o);
	}
	for (size_t i = 0; i < 2; i++) {
		struct json_object *o, *methods;

		get(&r, as_paths[i]);
		CHECK_EQ(r.status, 200);
		o = json_of(&r);
		CHECK(streq(jstr(o, "issuer"), base));
		snprintf(url, sizeof(url), "%s/token", base);
		CHECK(streq(jstr(o, "token_endpoint"), url));
		snprintf(url, sizeof(url), "%s/authorize", base);
		CHECK(streq(jstr(o, "authorization_endpoint"), url));
		snprintf(url, sizeof(url), "%s/register", base);
		CHECK(streq(jstr(o, "registration_endpoint"), url));
		snprintf(url, sizeof(url), "%s/revoke", base);
		CHECK(streq(jstr(o, "revocation_endpoint"), url));
		CHECK(json_object_object_get_ex(o, "code_challenge_methods_supported", &methods));
		CHECK(json_object_array_length(methods) == 1);
		CHECK(streq(json_object_get_string(json_object_array_get_idx(methods, 0)), "S256"));
		json_object_put(o);
	}
	resp_clear(&r);
}

static void test_register(struct client *c)
{
	struct resp r = { 0 };
	struct json_object *o;

	TEST("dynamic registration (RFC 7591): confidential client, client_secret_basic");
	post_json(&r, "/register",
		  "{\"redirect_uris\":[\"" REDIRECT_URI "\"],\"client_name\":\"smoke\","
		  "\"grant_types\":[\"authorization_code\",\"refresh_token\"],"
		  "\"token_endpoint_auth_method\":\"client_secret_basic\"}");
	CHECK_EQ(r.status, 201);
	o = json_of(&r);
	copy(c->id, sizeof(c->id), jstr(o, "client_id"));
	copy(c->secret, sizeof(c->secret), jstr(o, "client_secret"));
	CHECK(streq(jstr(o, "token_endpoint_auth_method"), "client_secret_basic"));
	json_object_put(o);
	expect.registrations++;

	/* A redirect URI off the loopback interface is refused. */
	post_json(&r, "/register", "{\"redirect_uris\":[\"https://example.com/cb\"]}");
	oauth_error_is(&r, 400, "invalid_redirect_uri");
	resp_clear(&r);
}

static void test_unauthorized(void)
{
	char expected[256];
	struct resp r = { 0 };

	TEST("/mcp without a token: 401 and a challenge naming the resource metadata");
	snprintf(expected, sizeof(expected), "Bearer resource_metadata=\"%s/.well-known/oauth-protected-resource\"",
		 base);
	CHECK(mcp(&r, NULL, NULL, NULL, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}") == NULL);
	CHECK_EQ(r.status, 401);
	CHECK(streq(r.www_auth, expected));

	TEST("/mcp with an unknown token: 401 with error=\"invalid_token\"");
	CHECK(mcp(&r, "not-a-token", NULL, NULL, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}") == NULL);
	CHECK_EQ(r.status, 401);
	CHECK(strncmp(r.www_auth, expected, strlen(expected)) == 0);
	CHECK(strstr(r.www_auth, "error=\"invalid_token\"") != NULL);
	resp_clear(&r);
}

static void test_mcp(const struct tokens *t)
{
	struct resp r = { 0 };
	struct json_object *o, *result, *tools;
	char session[128];

	TEST("MCP: initialize gives a session; notifications get 202");
	o = mcp(&r, t->access, NULL, NULL,
		"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-03-26\","
		"\"capabilities\":{},\"clientInfo\":{\"name\":\"smoke\",\"version\":\"1\"}}}");
	CHECK(o != NULL);
	CHECK(json_object_object_get_ex(o, "result", &result));
	CHECK(streq(jstr(result, "protocolVersion"), "2025-03-26"));
	CHECK_EQ(jint(o, "id"), 1);
	json_object_put(o);
	CHECK(r.session[0] != '\0');
	copy(session, sizeof(session), r.session);
	CHECK(mcp(&r, t->access, session, NULL, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}") ==
	      NULL);
	CHECK_EQ(r.status, 202);

	TEST("MCP: tools/list names echo, add and slow");
	o = mcp(&r, t->access, session, NULL, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}");
	CHECK(o != NULL);
	CHECK(json_object_object_get_ex(o, "result", &result));
	CHECK(json_object_object_get_ex(result, "tools", &tools));
	CHECK(json_object_array_length(tools) == 3);
	CHECK(streq(jstr(json_object_array_get_idx(tools, 0), "name"), "echo"));
	CHECK(streq(jstr(json_object_array_get_idx(tools, 1), "name"), "add"));
	CHECK(streq(jstr(json_object_array_get_idx(tools, 2), "name"), "slow"));
	json_object_put(o);

	TEST("MCP: tools/call echo and add, as JSON");
	o = mcp(&r, t->access, session, NULL,
		"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\","
		"\"arguments\":{\"text\":\"hello, peer\"}}}");
	CHECK(o != NULL);
	CHECK(streq(tool_text(o), "hello, peer"));
	json_object_put(o);
	o = mcp(&r, t->access, session, NULL,
		"{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{\"name\":\"add\","
		"\"arguments\":{\"a\":2,\"b\":40}}}");
	CHECK(o != NULL);
	CHECK(streq(tool_text(o), "42"));
	json_object_put(o);

	TEST("MCP: Accept: text/event-stream only gets one SSE message event");
	o = mcp(&r, t->access, session, "text/event-stream",
		"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\","
		"\"arguments\":{\"text\":\"over sse\"}}}");
	CHECK(o != NULL);
	CHECK(strncmp(r.ctype, "text/event-stream", 17) == 0);
	CHECK(streq(tool_text(o), "over sse"));
	CHECK_EQ(jint(o, "id"), 5);
	json_object_put(o);

	TEST("MCP: slow answers from a timer, as JSON and as SSE");
	o = mcp(&r, t->access, session, NULL,
		"{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"tools/call\",\"params\":{\"name\":\"slow\","
		"\"arguments\":{\"ms\":50}}}");
	CHECK(o != NULL);
	CHECK(streq(tool_text(o), "slept 50 ms"));
	json_object_put(o);
	o = mcp(&r, t->access, session, "text/event-stream",
		"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"slow\","
		"\"arguments\":{\"ms\":20}}}");
	CHECK(o != NULL);
	CHECK(streq(tool_text(o), "slept 20 ms"));
	json_object_put(o);

	TEST("MCP: unknown tool and unknown method are JSON-RPC errors");
	o = mcp(&r, t->access, session, NULL,
		"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"tools/call\",\"params\":{\"name\":\"nope\"}}");
	CHECK(o != NULL);
	CHECK(json_object_object_get_ex(o, "error", &result));
	CHECK_EQ(jint(result, "code"), -32602);
	json_object_put(o);
	o = mcp(&r, t->access, session, NULL, "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"nope\"}");
	CHECK(o != NULL);
	CHECK(json_object_object_get_ex(o, "error", &result));
	CHECK_EQ(jint(result, "code"), -32601);
	json_object_put(o);

	TEST("MCP: missing session 400, unknown session 404, DELETE ends it, GET 405");
	CHECK(mcp(&r, t->access, NULL, NULL, "{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"ping\"}") == NULL);
	CHECK_EQ(r.status, 400);
	CHECK(mcp(&r, t->access, "0123456789abcdef", NULL, "{\"jsonrpc\":\"2.0\",\"id\":11,\"method\":\"ping\"}") ==
	      NULL);
	CHECK_EQ(r.status, 404);
	{
		char authz[200], sid[200];
		const char *headers[] = { authz, sid, NULL };

		snprintf(authz, sizeof(authz), "Authorization: Bearer %s", t->access);
		snprintf(sid, sizeof(sid), "Mcp-Session-Id: %s", session);
		http(&r, "DELETE", "/mcp", NULL, NULL, 0, headers);
		CHECK_EQ(r.cc, CURLE_OK);
		CHECK_EQ(r.status, 200);
		http(&r, "GET", "/mcp", NULL, NULL, 0, headers);
		CHECK_EQ(r.cc, CURLE_OK);
		CHECK_EQ(r.status, 405);
		expect.mcp_requests += 2;
	}
	CHECK(mcp(&r, t->access, session, NULL, "{\"jsonrpc\":\"2.0\",\"id\":12,\"method\":\"ping\"}") == NULL);
	CHECK_EQ(r.status, 404);

	TEST("MCP: a body that is not JSON is a 400 with a JSON-RPC parse error");
	CHECK(mcp(&r, t->access, NULL, NULL, "{\"jsonrpc\":") == NULL);
	CHECK_EQ(r.status, 400);
	o = json_of(&r);
	CHECK(json_object_object_get_ex(o, "error", &result));
	CHECK_EQ(jint(result, "code"), -32700);
	json_object_put(o);
	resp_clear(&r);
}

static void test_rotation(const struct client *c)
{
	struct tokens t0, t1, t2, dummy;
	struct resp r = { 0 };

	TEST("refresh twice: each refresh rotates the refresh token");
	login(c, &t0);
	refresh_request(&r, c, t0.refresh);
	tokens_from(&r, &t1, 3600);
	expect.refresh_grants++;
	refresh_request(&r, c, t1.refresh);
	tokens_from(&r, &t2, 3600);
	expect.refresh_grants++;
	CHECK(strcmp(t0.refresh, t1.refresh) != 0);
	CHECK(strcmp(t1.refresh, t2.refresh) != 0);
	CHECK(strcmp(t0.access, t1.access) != 0);

	TEST("reusing the first refresh token: invalid_grant, and the family is revoked");
	refresh_request(&r, c, t0.refresh);
	oauth_error_is(&r, 400, "invalid_grant");
	expect.reused_refresh_tokens++;
	refresh_request(&r, c, t2.refresh);
	oauth_error_is(&r, 400, "invalid_grant");
	CHECK(mcp(&r, t2.access, NULL, NULL, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}") == NULL);
	CHECK_EQ(r.status, 401);
	CHECK(strstr(r.www_auth, "error=\"invalid_token\"") != NULL);

	TEST("a client that registered client_secret_basic may not use client_secret_post");
	login(c, &t0);
	{
		char form[1024] = "";

		form_add(form, sizeof(form), "grant_type", "refresh_token");
		form_add(form, sizeof(form), "refresh_token", t0.refresh);
		form_add(form, sizeof(form), "client_id", c->id);
		form_add(form, sizeof(form), "client_secret", c->secret);
		http(&r, "POST", "/token", "application/x-www-form-urlencoded", form, strlen(form), NULL);
		CHECK_EQ(r.cc, CURLE_OK);
		expect.refresh_requests++;
		oauth_error_is(&r, 401, "invalid_client");
		CHECK(strncmp(r.www_auth, "Basic", 5) == 0);
	}
	/* That refused request spent nothing: the token still refreshes. */
	refresh_request(&r, c, t0.refresh);
	tokens_from(&r, &dummy, 3600);
	expect.refresh_grants++;
	resp_clear(&r);
}

static void inject(const char *mode, int count)
{
	char body[128];
	struct resp r = { 0 };

	snprintf(body, sizeof(body), "{\"mode\":\"%s\",\"count\":%d}", mode, count);
	post_json(&r, "/test/fail", body);
	CHECK_EQ(r.status, 200);
	resp_clear(&r);
	expect.failures_injected += count;
}

static void test_injection(const struct client *c)
{
	struct resp r = { 0 };
	struct tokens t, t1;
	struct json_object *o;

	TEST("failure injection: 500 x2, then the refresh succeeds");
	login(c, &t);
	inject("500", 2);
	refresh_request(&r, c, t.refresh);
	CHECK_EQ(r.status, 500);
	refresh_request(&r, c, t.refresh);
	CHECK_EQ(r.status, 500);
	refresh_request(&r, c, t.refresh);
	tokens_from(&r, &t1, 3600);
	expect.refresh_grants++;

	TEST("failure injection: malformed (200, not JSON), 429 with Retry-After, invalid_grant, in order");
	inject("malformed", 1);
	inject("429", 1);
	inject("invalid_grant", 1);
	refresh_request(&r, c, t1.refresh);
	CHECK_EQ(r.status, 200);
	o = json_tokener_parse(r.body ? r.body : "");
	CHECK(o == NULL || !json_object_is_type(o, json_type_object));
	json_object_put(o);
	refresh_request(&r, c, t1.refresh);
	CHECK_EQ(r.status, 429);
	CHECK(streq(r.retry_after, "1"));
	refresh_request(&r, c, t1.refresh);
	oauth_error_is(&r, 400, "invalid_grant");
	/* None of them spent the refresh token. */
	refresh_request(&r, c, t1.refresh);
	tokens_from(&r, &t, 3600);
	expect.refresh_grants++;

	TEST("failure injection: hang holds the request without blocking the peer");
	inject("hang", 1);
	timeout_ms = 300;
	refresh_request(&r, c, t.refresh);
	timeout_ms = 20000;
	CHECK_EQ(r.cc, CURLE_OPERATION_TIMEDOUT);
	o = stats();
	CHECK_EQ(jint(o, "in_flight"), 1);
	json_object_put(o);
	/* The peer answers the hung request after HANG_SECONDS: wait for that,
	 * bounded, rather than assume a deadline. */
	for (int i = 0;; i++) {
		long long n;

		o = stats();
		n = jint(o, "in_flight");
		json_object_put(o);
		if (n == 0)
			break;
		CHECK(i < 200);
		usleep(100 * 1000);
	}
	refresh_request(&r, c, t.refresh);
	tokens_from(&r, &t1, 3600);
	expect.refresh_grants++;

	TEST("/test/config: a new token lifetime applies to the next grant");
	post_json(&r, "/test/config", "{\"token_lifetime\":10}");
	CHECK_EQ(r.status, 200);
	refresh_request(&r, c, t1.refresh);
	tokens_from(&r, &t, 10);
	expect.refresh_grants++;
	post_json(&r, "/test/config", "{\"token_lifetime\":3600}");
	CHECK_EQ(r.status, 200);

	TEST("revocation (RFC 7009): the access token stops working; unknown tokens get 200 too");
	{
		char form[512] = "", creds[300], b64[420], header[450];
		const char *headers[] = { header, NULL };

		snprintf(creds, sizeof(creds), "%s:%s", c->id, c->secret);
		sodium_bin2base64(b64, sizeof(b64), (const unsigned char *)creds, strlen(creds),
				  sodium_base64_VARIANT_ORIGINAL);
		snprintf(header, sizeof(header), "Authorization: Basic %s", b64);
		form_add(form, sizeof(form), "token", t.access);
		http(&r, "POST", "/revoke", "application/x-www-form-urlencoded", form, strlen(form), headers);
		CHECK_EQ(r.cc, CURLE_OK);
		CHECK_EQ(r.status, 200);
		expect.revocations++;
		form[0] = '\0';
		form_add(form, sizeof(form), "token", "never-issued");
		http(&r, "POST", "/revoke", "application/x-www-form-urlencoded", form, strlen(form), headers);
		CHECK_EQ(r.cc, CURLE_OK);
		CHECK_EQ(r.status, 200);
		expect.revocations++;
	}
	CHECK(mcp(&r, t.access, NULL, NULL, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}") == NULL);
	CHECK_EQ(r.status, 401);
	/* Revoking an access token leaves its refresh token alone. */
	refresh_request(&r, c, t.refresh);
	tokens_from(&r, &t1, 3600);
	expect.refresh_grants++;
	resp_clear(&r);
}

static void test_oversize(const struct tokens *t)
{
	size_t len = 2 * 1024 * 1024;
	char *big = malloc(len + 1);
	struct resp r = { 0 };

	TEST("a body over 1 MiB gets 413 on /mcp and on /token, before any handler");
	CHECK(big != NULL);
	memset(big, ' ', len);
	big[0] = '{';
	big[len - 1] = '}';
	big[len] = '\0';
	CHECK(mcp(&r, t->access, NULL, NULL, big) == NULL);
	CHECK_EQ(r.status, 413);
	/* Refused before the handler ran: not counted as an MCP request. */
	expect.mcp_requests--;
	http(&r, "POST", "/token", "application/x-www-form-urlencoded", big, len, NULL);
	CHECK_EQ(r.cc, CURLE_OK);
	CHECK_EQ(r.status, 413);
	free(big);
	resp_clear(&r);
}

static void test_stats(void)
{
	struct json_object *o = stats();
	struct resp r = { 0 };

	TEST("/test/stats counts exactly what was sent");
#define STAT_IS(name)                                                                                     \
	do {                                                                                              \
		if (jint(o, #name) != expect.name)                                                        \
			fprintf(stderr, "%s: peer says %lld, expected %lld\n", #name, jint(o, #name),     \
				expect.name);                                                             \
		CHECK_EQ(jint(o, #name), expect.name);                                                    \
	} while (0)
	STAT_IS(token_grants);
	STAT_IS(refresh_grants);
	STAT_IS(refresh_requests);
	STAT_IS(failures_injected);
	STAT_IS(reused_refresh_tokens);
	STAT_IS(unauthorized);
	STAT_IS(mcp_requests);
	STAT_IS(registrations);
	STAT_IS(revocations);
#undef STAT_IS
	CHECK_EQ(jint(o, "in_flight"), 0);
	/* Every request was sequential. */
	CHECK_EQ(jint(o, "max_in_flight"), 1);
	json_object_put(o);

	TEST("/test/reset zeroes the counters");
	post_json(&r, "/test/reset", "{}");
	CHECK_EQ(r.status, 200);
	o = stats();
	json_object_object_foreach(o, key, val) {
		if (json_object_get_int64(val) != 0)
			fprintf(stderr, "%s is %lld after reset\n", key, (long long)json_object_get_int64(val));
		CHECK_EQ(json_object_get_int64(val), 0);
	}
	json_object_put(o);
	resp_clear(&r);
}

int main(int argc, char **argv)
{
	struct client c;
	struct tokens t;
	pid_t pid;
	int port;

	CHECK(argc == 2);
	CHECK(sodium_init() >= 0);
	CHECK(curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK);
	curl = curl_easy_init();
	CHECK(curl != NULL);

	pid = peer_start(argv[1], &port);
	snprintf(base, sizeof(base), "http://127.0.0.1:%d", port);
	printf("# peer pid %d at %s\n", (int)pid, base);

	test_discovery();
	test_register(&c);
	test_unauthorized();
	TEST("authorization code flow with PKCE; the code is single-use");
	login(&c, &t);
	test_mcp(&t);
	test_rotation(&c);
	test_injection(&c);
	test_oversize(&t);
	test_stats();

	TEST("SIGTERM: the peer exits 0");
	peer_stop(pid);

	curl_easy_cleanup(curl);
	curl_global_cleanup();
	printf("all peer smoke tests passed\n");
	return 0;
}
