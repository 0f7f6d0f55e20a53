/*
 * peer-smoke: starts the real test peer and walks it through what later
 * integration tests lean on — discovery, registration, the authorization code
 * flow with PKCE, MCP over JSON and SSE, refresh rotation with reuse
 * detection, failure injection, revocation, size limits, server-initiated
 * messages on the GET stream, the older HTTP+SSE transport, mass revocation,
 * the login knobs of /test/config and what /test/last records — and checks
 * its counters exactly. Every request is sequential, so the counts are exact
 * and no step depends on timing except bounded waits (an injected hang, a
 * closed stream being noticed). /test/reset starts the expected counts over.
 *
 * Long-lived event streams run on a curl multi handle that the test pumps
 * itself, next to the ordinary blocking requests: what the peer writes on a
 * stream waits in the socket until the test reads it, and every wait for an
 * event has a deadline.
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
#define EVENT_WAIT_MS 10000
#define QUIET_MS 300

static char base[64];
static CURL *curl;
static long timeout_ms = 20000;
static pid_t peer_pid = -1;
/* The issuer path whose endpoints the OAuth helpers use: "" but while
 * issuer_bound puts an issuer's endpoints under its path. */
static char as_path[64] = "";

/* What /test/stats must say, kept in step with every request sent. */
static struct {
	long long token_grants, refresh_grants, refresh_requests, failures_injected, reused_refresh_tokens,
		unauthorized, mcp_requests, registrations, revocations, sse_requests, notifications_sent,
		requests_sent, responses_received, revoke_all, revoke_access_all, authorizations, code_requests,
		insufficient_scope, foreign_client_id;
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

/* RFC 7636: a verifier and its S256 challenge. */
struct pkce {
	char verifier[64];
	char challenge[64];
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

/* POST /token with client_secret_basic, or for a public client (no secret)
 * with client_id in the form. r->cc tells whether it completed. */
static void token_request(struct resp *r, const struct client *c, const char *form)
{
	char creds[300], b64[420], header[450], path[128];
	const char *headers[] = { header, NULL };

	snprintf(path, sizeof(path), "%s/token", as_path);
	if (!c->secret[0]) {
		char public_form[2200];

		CHECK(strlen(form) < 2000);
		strcpy(public_form, form);
		form_add(public_form, sizeof(public_form), "client_id", c->id);
		http(r, "POST", path, "application/x-www-form-urlencoded", public_form, strlen(public_form), NULL);
		return;
	}
	snprintf(creds, sizeof(creds), "%s:%s", c->id, c->secret);
	sodium_bin2base64(b64, sizeof(b64), (const unsigned char *)creds, strlen(creds),
			  sodium_base64_VARIANT_ORIGINAL);
	snprintf(header, sizeof(header), "Authorization: Basic %s", b64);
	http(r, "POST", path, "application/x-www-form-urlencoded", form, strlen(form), headers);
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

/* A refresh asking for scope, which must be within the grant's (RFC 6749 6). */
static void refresh_scoped(struct resp *r, const struct client *c, const char *refresh, const char *scope)
{
	char form[1024] = "";

	form_add(form, sizeof(form), "grant_type", "refresh_token");
	form_add(form, sizeof(form), "refresh_token", refresh);
	form_add(form, sizeof(form), "scope", scope);
	token_request(r, c, form);
	expect.refresh_requests++;
}

/* A 200 token response: Bearer, no-store, the expected lifetime and scope. */
static void tokens_scoped(const struct resp *r, struct tokens *t, long long lifetime, const char *scope)
{
	struct json_object *o;

	CHECK_EQ(r->cc, CURLE_OK);
	CHECK_EQ(r->status, 200);
	o = json_of(r);
	CHECK(strstr(r->cache, "no-store") != NULL);
	CHECK(streq(jstr(o, "token_type"), "Bearer"));
	CHECK_EQ(jint(o, "expires_in"), lifetime);
	CHECK(streq(jstr(o, "scope"), scope));
	copy(t->access, sizeof(t->access), jstr(o, "access_token"));
	copy(t->refresh, sizeof(t->refresh), jstr(o, "refresh_token"));
	CHECK_EQ(strlen(t->access), 43);
	json_object_put(o);
}

static void tokens_from(const struct resp *r, struct tokens *t, long long lifetime)
{
	tokens_scoped(r, t, lifetime, "mcp");
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

static void pkce_new(struct pkce *k)
{
	unsigned char rnd[32], hash[crypto_hash_sha256_BYTES];

	randombytes_buf(rnd, sizeof(rnd));
	sodium_bin2base64(k->verifier, sizeof(k->verifier), rnd, sizeof(rnd), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	crypto_hash_sha256(hash, (const unsigned char *)k->verifier, strlen(k->verifier));
	sodium_bin2base64(k->challenge, sizeof(k->challenge), hash, sizeof(hash),
			  sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

/*
 * GET /authorize (auto-approved, the redirect not followed) for client_id
 * with state "st-42", resource .../mcp, the challenge and its method, and
 * scope (NULL: none). A redirect with a code counts as an authorization.
 */
static void authorize(struct resp *r, const char *client_id, const char *challenge, const char *method,
		      const char *scope)
{
	char query[2048] = "", path[2200], resource[128];
	char *code;

	snprintf(resource, sizeof(resource), "%s/mcp", base);
	form_add(query, sizeof(query), "response_type", "code");
	form_add(query, sizeof(query), "client_id", client_id);
	form_add(query, sizeof(query), "redirect_uri", REDIRECT_URI);
	form_add(query, sizeof(query), "code_challenge", challenge);
	form_add(query, sizeof(query), "code_challenge_method", method);
	form_add(query, sizeof(query), "state", "st-42");
	if (scope)
		form_add(query, sizeof(query), "scope", scope);
	form_add(query, sizeof(query), "resource", resource);
	snprintf(path, sizeof(path), "%s/authorize?%s", as_path, query);
	get(r, path);
	code = r->status == 302 ? query_param(r->location, "code") : NULL;
	if (code)
		expect.authorizations++;
	free(code);
}

/* The code's redirect target is ours: REDIRECT_URI with a query. */
static int redirected_to_us(const struct resp *r)
{
	return r->status == 302 && strncmp(r->location, REDIRECT_URI "?", strlen(REDIRECT_URI) + 1) == 0;
}

/* POST /token: the authorization_code grant for code with verifier. */
static void code_exchange(struct resp *r, const struct client *c, const char *code, const char *verifier)
{
	char form[2048] = "", resource[128];

	snprintf(resource, sizeof(resource), "%s/mcp", base);
	form_add(form, sizeof(form), "grant_type", "authorization_code");
	form_add(form, sizeof(form), "code", code);
	form_add(form, sizeof(form), "redirect_uri", REDIRECT_URI);
	form_add(form, sizeof(form), "code_verifier", verifier);
	form_add(form, sizeof(form), "resource", resource);
	token_request(r, c, form);
	CHECK_EQ(r->cc, CURLE_OK);
	expect.code_requests++;
}

/*
 * The authorization code flow with PKCE and scope: /authorize, then the
 * code exchange. The code is single-use.
 */
static void login_scoped(const struct client *c, struct tokens *t, const char *scope)
{
	struct pkce k;
	char *code, *state, *iss, issuer[128];
	struct resp r = { 0 };

	snprintf(issuer, sizeof(issuer), "%s%s", base, as_path);
	pkce_new(&k);
	authorize(&r, c->id, k.challenge, "S256", scope);
	CHECK(redirected_to_us(&r));
	code = query_param(r.location, "code");
	state = query_param(r.location, "state");
	iss = query_param(r.location, "iss");
	CHECK(code != NULL);
	CHECK(streq(state, "st-42"));
	CHECK(streq(iss, issuer));

	code_exchange(&r, c, code, k.verifier);
	tokens_scoped(&r, t, 3600, scope);
	expect.token_grants++;

	/* Single use: the same exchange again is refused. */
	code_exchange(&r, c, code, k.verifier);
	oauth_error_is(&r, 400, "invalid_grant");

	free(code);
	free(state);
	free(iss);
	resp_clear(&r);
}

static void login(const struct client *c, struct tokens *t)
{
	login_scoped(c, t, "mcp");
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

/* ---- event streams (curl multi) ------------------------------------------ */

static CURLM *multi;

struct stream {
	CURL *easy;
	struct curl_slist *headers;
	struct resp r;
	int headers_done;
	int done;
	CURLcode result;
	size_t parsed;		/* bytes of r.body already taken as events */
};

static size_t stream_on_header(char *line, size_t size, size_t n, void *arg)
{
	struct stream *s = arg;
	size_t len = size * n;

	on_header(line, size, n, &s->r);
	if (len <= 2 && (line[0] == '\r' || line[0] == '\n'))
		s->headers_done = 1;
	return len;
}

/* Lets curl move data for up to ms, and notes finished transfers. */
static void pump(int ms)
{
	CURLMsg *msg;
	int running, left;

	CHECK(curl_multi_perform(multi, &running) == CURLM_OK);
	if (ms > 0 && running) {
		CHECK(curl_multi_poll(multi, NULL, 0, ms, NULL) == CURLM_OK);
		CHECK(curl_multi_perform(multi, &running) == CURLM_OK);
	}
	while ((msg = curl_multi_info_read(multi, &left))) {
		struct stream *s;

		if (msg->msg != CURLMSG_DONE)
			continue;
		CHECK(curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s) == CURLE_OK);
		s->done = 1;
		s->result = msg->data.result;
	}
}

static long long ms_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * GET path as an event stream with a bearer token (may be NULL) and an
 * Mcp-Session-Id (may be NULL); waits (bounded) until the response headers
 * are in, or the transfer ended. s->r.status is the HTTP status.
 */
static void stream_open(struct stream *s, const char *path, const char *token, const char *session)
{
	char url[512], line[256];
	long long deadline = ms_now() + EVENT_WAIT_MS;

	memset(s, 0, sizeof(*s));
	CHECK(snprintf(url, sizeof(url), "%s%s", base, path) < (int)sizeof(url));
	s->easy = curl_easy_init();
	CHECK(s->easy != NULL);
	curl_easy_setopt(s->easy, CURLOPT_URL, url);
	curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(s->easy, CURLOPT_TIMEOUT_MS, 40000L);
	curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, &s->r);
	curl_easy_setopt(s->easy, CURLOPT_HEADERFUNCTION, stream_on_header);
	curl_easy_setopt(s->easy, CURLOPT_HEADERDATA, s);
	curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s);
	s->headers = curl_slist_append(s->headers, "Accept: text/event-stream");
	if (token) {
		snprintf(line, sizeof(line), "Authorization: Bearer %s", token);
		s->headers = curl_slist_append(s->headers, line);
	}
	if (session) {
		snprintf(line, sizeof(line), "Mcp-Session-Id: %s", session);
		s->headers = curl_slist_append(s->headers, line);
	}
	curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, s->headers);
	CHECK(curl_multi_add_handle(multi, s->easy) == CURLM_OK);
	while (!s->headers_done && !s->done) {
		CHECK(ms_now() < deadline);
		pump(100);
	}
	curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->r.status);
}

/* Drops the stream from this side (the connection closes). */
static void stream_close(struct stream *s)
{
	curl_multi_remove_handle(multi, s->easy);
	curl_easy_cleanup(s->easy);
	curl_slist_free_all(s->headers);
	resp_clear(&s->r);
	memset(s, 0, sizeof(*s));
}

/*
 * The next event: its name (default "message") in event and its data
 * (data lines joined by newlines) as the return value, which the caller
 * frees. NULL when none arrives within wait_ms or the stream ended.
 */
static char *stream_next(struct stream *s, char *event, size_t evlen, int wait_ms)
{
	long long deadline = ms_now() + wait_ms;

	for (;;) {
		char *start = s->r.body ? s->r.body + s->parsed : NULL, *end, *line, *data = NULL;
		size_t dlen = 0;

		end = start ? strstr(start, "\n\n") : NULL;
		if (end) {
			*end = '\0';
			s->parsed = (size_t)(end + 2 - s->r.body);
			snprintf(event, evlen, "message");
			for (line = start; line && *line;) {
				char *nl = strchr(line, '\n');

				if (nl)
					*nl = '\0';
				if (strncmp(line, "event:", 6) == 0) {
					snprintf(event, evlen, "%s", line + 6 + (line[6] == ' '));
				} else if (strncmp(line, "data:", 5) == 0) {
					const char *d = line + 5 + (line[5] == ' ');
					size_t n = strlen(d);

					data = realloc(data, dlen + n + 2);
					CHECK(data != NULL);
					if (dlen)
						data[dlen++] = '\n';
					memcpy(data + dlen, d, n + 1);
					dlen += n;
				}
				/* Comments (":...") and other fields are skipped. */
				line = nl ? nl + 1 : NULL;
			}
			if (!data)
				continue; /* an event without data is no event */
			return data;
		}
		if (s->done || ms_now() >= deadline)
			return NULL;
		pump(50);
	}
}

/* The next event must be a "message" with a JSON object. */
static struct json_object *stream_message(struct stream *s)
{
	char event[64];
	char *data = stream_next(s, event, sizeof(event), EVENT_WAIT_MS);
	struct json_object *o;

	if (!data)
		fprintf(stderr, "no event within %d ms (stream %s)\n", EVENT_WAIT_MS, s->done ? "ended" : "open");
	CHECK(data != NULL);
	CHECK(streq(event, "message"));
	o = json_tokener_parse(data);
	CHECK(o != NULL && json_object_is_type(o, json_type_object));
	free(data);
	return o;
}

/* Nothing more arrives for a while. */
static void stream_quiet(struct stream *s)
{
	char event[64];
	char *data = stream_next(s, event, sizeof(event), QUIET_MS);

	if (data)
		fprintf(stderr, "unexpected event %s: %s\n", event, data);
	CHECK(data == NULL);
	CHECK(!s->done);
}

/* Waits for the peer to end the stream; it must end cleanly (last chunk). */
static void stream_wait_end(struct stream *s)
{
	long long deadline = ms_now() + EVENT_WAIT_MS;

	while (!s->done) {
		CHECK(ms_now() < deadline);
		pump(100);
	}
	if (s->result != CURLE_OK)
		fprintf(stderr, "stream ended with %s\n", curl_easy_strerror(s->result));
	CHECK_EQ(s->result, CURLE_OK);
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

/* ---- server-initiated messages, HTTP+SSE, mass revocation ----------------- */

static long long stat_of(const char *name)
{
	struct json_object *o = stats();
	long long v = jint(o, name);

	json_object_put(o);
	return v;
}

/* Waits (bounded) until a stats counter reaches want, pumping the streams
 * meanwhile: the peer learns of a closed stream asynchronously. */
static void wait_stat(const char *name, long long want)
{
	long long deadline = ms_now() + EVENT_WAIT_MS, v;

	while ((v = stat_of(name)) != want) {
		if (ms_now() >= deadline)
			fprintf(stderr, "%s is %lld, waited for %lld\n", name, v, want);
		CHECK(ms_now() < deadline);
		pump(50);
	}
}

/* initialize (+ notifications/initialized) on /mcp; the session id lands in session. */
static void mcp_session(const char *token, char *session, size_t len)
{
	struct resp r = { 0 };
	struct json_object *o;

	o = mcp(&r, token, NULL, NULL,
		"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-06-18\","
		"\"capabilities\":{\"sampling\":{}},\"clientInfo\":{\"name\":\"smoke\",\"version\":\"1\"}}}");
	CHECK(o != NULL);
	json_object_put(o);
	copy(session, len, r.session);
	CHECK(mcp(&r, token, session, NULL, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}") == NULL);
	CHECK_EQ(r.status, 202);
	resp_clear(&r);
}

static void mcp_delete(const char *token, const char *session)
{
	char authz[200], sid[200];
	const char *headers[] = { authz, sid, NULL };
	struct resp r = { 0 };

	snprintf(authz, sizeof(authz), "Authorization: Bearer %s", token);
	snprintf(sid, sizeof(sid), "Mcp-Session-Id: %s", session);
	http(&r, "DELETE", "/mcp", NULL, NULL, 0, headers);
	CHECK_EQ(r.cc, CURLE_OK);
	CHECK_EQ(r.status, 200);
	expect.mcp_requests++;
	resp_clear(&r);
}

/* POST /test/notify or /test/request; returns the parsed answer. */
static struct json_object *push(const char *what, const char *session, const char *method, const char *params,
				long want_status)
{
	char path[64], body[1024];
	struct resp r = { 0 };
	struct json_object *o;

	snprintf(path, sizeof(path), "/test/%s", what);
	snprintf(body, sizeof(body), "{\"session\":\"%s\",\"method\":\"%s\"%s%s}", session, method,
		 params ? ",\"params\":" : "", params ? params : "");
	post_json(&r, path, body);
	CHECK_EQ(r.status, want_status);
	o = json_of(&r);
	resp_clear(&r);
	return o;
}

/* A notification with params.data == data, as a stream message. */
static void expect_notification(struct stream *s, const char *method, const char *data)
{
	struct json_object *o = stream_message(s), *params, *v;

	CHECK(streq(jstr(o, "jsonrpc"), "2.0"));
	CHECK(streq(jstr(o, "method"), method));
	CHECK(!json_object_object_get_ex(o, "id", &v));
	CHECK(json_object_object_get_ex(o, "params", &params));
	CHECK(streq(jstr(params, "data"), data));
	json_object_put(o);
}

/* A server request as a stream message; returns its id (a copy, caller puts). */
static struct json_object *expect_request(struct stream *s, const char *method)
{
	struct json_object *o = stream_message(s), *id;

	CHECK(streq(jstr(o, "method"), method));
	CHECK(json_object_object_get_ex(o, "id", &id));
	id = json_object_get(id);
	json_object_put(o);
	return id;
}

static struct json_object *responses(void)
{
	struct resp r = { 0 };
	struct json_object *o;

	get(&r, "/test/responses");
	CHECK_EQ(r.status, 200);
	o = json_of(&r);
	CHECK(json_object_is_type(o, json_type_array));
	resp_clear(&r);
	return o;
}

static void test_get_stream(const struct tokens *t)
{
	static const char sampling[] =
		"{\"messages\":[{\"role\":\"user\",\"content\":{\"type\":\"text\",\"text\":\"2+2?\"}}],\"maxTokens\":10}";
	struct stream a = { 0 }, a2 = { 0 }, b = { 0 };
	char session_a[128], session_b[128], body[512];
	struct json_object *o, *id, *v, *list, *e;
	struct resp r = { 0 };
	long long req_id;

	TEST("GET /mcp without Accept: text/event-stream stays 405; without a token 401");
	mcp_session(t->access, session_a, sizeof(session_a));
	{
		char authz[200], sid[200];
		const char *headers[] = { authz, sid, "Accept: application/json", NULL };

		snprintf(authz, sizeof(authz), "Authorization: Bearer %s", t->access);
		snprintf(sid, sizeof(sid), "Mcp-Session-Id: %s", session_a);
		http(&r, "GET", "/mcp", NULL, NULL, 0, headers);
		CHECK_EQ(r.cc, CURLE_OK);
		CHECK_EQ(r.status, 405);
		expect.mcp_requests++;
	}
	stream_open(&a, "/mcp", NULL, session_a);
	CHECK_EQ(a.r.status, 401);
	CHECK(strstr(a.r.www_auth, "resource_metadata=") != NULL);
	stream_close(&a);
	expect.mcp_requests++;
	expect.unauthorized++;

	TEST("GET /mcp stream: 400 without a session, 404 for an unknown one");
	stream_open(&a, "/mcp", t->access, NULL);
	CHECK_EQ(a.r.status, 400);
	stream_close(&a);
	stream_open(&a, "/mcp", t->access, "0123456789abcdef");
	CHECK_EQ(a.r.status, 404);
	stream_close(&a);
	expect.mcp_requests += 2;

	TEST("GET /mcp stream opens: 200 text/event-stream, counted in get_streams");
	stream_open(&a, "/mcp", t->access, session_a);
	expect.mcp_requests++;
	CHECK_EQ(a.r.status, 200);
	CHECK(strncmp(a.r.ctype, "text/event-stream", 17) == 0);
	CHECK(!a.done);
	CHECK_EQ(stat_of("get_streams"), 1);

	TEST("/test/notify: the notification arrives on the GET stream");
	o = push("notify", session_a, "notifications/message", "{\"level\":\"info\",\"data\":\"hello stream\"}", 200);
	CHECK_EQ(jint(o, "delivered"), 1);
	json_object_put(o);
	expect.notifications_sent++;
	expect_notification(&a, "notifications/message", "hello stream");

	TEST("/test/request: a sampling request with a fresh id arrives; the POSTed response is recorded");
	o = push("request", session_a, "sampling/createMessage", sampling, 200);
	CHECK_EQ(jint(o, "delivered"), 1);
	req_id = jint(o, "id");
	json_object_put(o);
	expect.requests_sent++;
	id = expect_request(&a, "sampling/createMessage");
	CHECK(json_object_is_type(id, json_type_int));
	CHECK_EQ(json_object_get_int64(id), req_id);
	json_object_put(id);
	snprintf(body, sizeof(body),
		 "{\"jsonrpc\":\"2.0\",\"id\":%lld,\"result\":{\"role\":\"assistant\",\"content\":{\"type\":\"text\","
		 "\"text\":\"4\"},\"model\":\"smoke-model\"}}",
		 req_id);
	CHECK(mcp(&r, t->access, session_a, NULL, body) == NULL);
	CHECK_EQ(r.status, 202);
	expect.responses_received++;

	TEST("/test/request with a given string id; an error response and an unsolicited one are recorded too");
	post_json(&r, "/test/request",
		  "{\"session\":\"*\",\"method\":\"elicitation/create\",\"id\":\"srv-1\",\"params\":{\"message\":\"name?\"}}");
	CHECK_EQ(r.status, 200);
	o = json_of(&r);
	CHECK_EQ(jint(o, "delivered"), 1);
	CHECK(streq(jstr(o, "id"), "srv-1"));
	json_object_put(o);
	expect.requests_sent++;
	id = expect_request(&a, "elicitation/create");
	CHECK(streq(json_object_get_string(id), "srv-1"));
	json_object_put(id);
	CHECK(mcp(&r, t->access, session_a, NULL,
		  "{\"jsonrpc\":\"2.0\",\"id\":\"srv-1\",\"error\":{\"code\":-32601,\"message\":\"no elicitation\"}}") ==
	      NULL);
	CHECK_EQ(r.status, 202);
	CHECK(mcp(&r, t->access, session_a, NULL, "{\"jsonrpc\":\"2.0\",\"id\":424242,\"result\":{}}") == NULL);
	CHECK_EQ(r.status, 202);
	expect.responses_received += 2;
	list = responses();
	CHECK_EQ(json_object_array_length(list), 3);
	e = json_object_array_get_idx(list, 0);
	CHECK(streq(jstr(e, "session"), session_a));
	CHECK(streq(jstr(e, "method"), "sampling/createMessage"));
	CHECK(json_object_object_get_ex(e, "response", &v));
	CHECK_EQ(jint(v, "id"), req_id);
	CHECK(json_object_object_get_ex(v, "result", &v));
	CHECK(streq(jstr(v, "model"), "smoke-model"));
	e = json_object_array_get_idx(list, 1);
	CHECK(streq(jstr(e, "method"), "elicitation/create"));
	CHECK(json_object_object_get_ex(e, "response", &v));
	CHECK(json_object_object_get_ex(v, "error", &v));
	e = json_object_array_get_idx(list, 2);
	CHECK(json_object_object_get_ex(e, "method", &v));
	CHECK(v == NULL);
	json_object_put(list);

	TEST("\"*\" reaches every session once; a session with two streams gets it on the newer only");
	mcp_session(t->access, session_b, sizeof(session_b));
	stream_open(&b, "/mcp", t->access, session_b);
	CHECK_EQ(b.r.status, 200);
	stream_open(&a2, "/mcp", t->access, session_a);
	CHECK_EQ(a2.r.status, 200);
	expect.mcp_requests += 2;
	CHECK_EQ(stat_of("get_streams"), 3);
	o = push("notify", "*", "notifications/message", "{\"level\":\"info\",\"data\":\"to all\"}", 200);
	CHECK_EQ(jint(o, "delivered"), 2);
	json_object_put(o);
	expect.notifications_sent += 2;
	expect_notification(&b, "notifications/message", "to all");
	expect_notification(&a2, "notifications/message", "to all");
	stream_quiet(&a);

	TEST("a stream the client drops is noticed and no longer counted");
	stream_close(&a2);
	wait_stat("get_streams", 2);
	o = push("notify", session_a, "notifications/message", "{\"data\":\"back to the first\"}", 200);
	CHECK_EQ(jint(o, "delivered"), 1);
	json_object_put(o);
	expect.notifications_sent++;
	expect_notification(&a, "notifications/message", "back to the first");

	TEST("DELETE of the session ends its GET stream cleanly; /test/notify then answers 404");
	mcp_delete(t->access, session_a);
	stream_wait_end(&a);
	stream_close(&a);
	CHECK_EQ(stat_of("get_streams"), 1);
	o = push("notify", session_a, "notifications/message", "{\"data\":\"nobody\"}", 404);
	CHECK_EQ(jint(o, "delivered"), 0);
	json_object_put(o);
	mcp_delete(t->access, session_b);
	stream_wait_end(&b);
	stream_close(&b);
	CHECK_EQ(stat_of("get_streams"), 0);
	o = push("notify", "*", "notifications/message", "{\"data\":\"nobody\"}", 200);
	CHECK_EQ(jint(o, "delivered"), 0);
	json_object_put(o);

	TEST("/test/notify and /test/request refuse a body without session or method");
	post_json(&r, "/test/notify", "{\"method\":\"x\"}");
	CHECK_EQ(r.status, 400);
	post_json(&r, "/test/request", "{\"session\":\"*\",\"method\":\"x\",\"params\":[1]}");
	CHECK_EQ(r.status, 400);
	resp_clear(&r);
}

/* POST /messages?session_id=session (session may be NULL: no query). */
static void messages(struct resp *r, const char *token, const char *session, const char *body)
{
	char authz[200], path[256];
	const char *headers[] = { authz, NULL };

	snprintf(authz, sizeof(authz), "Authorization: Bearer %s", token ? token : "");
	if (session)
		snprintf(path, sizeof(path), "/messages?session_id=%s", session);
	else
		snprintf(path, sizeof(path), "/messages");
	http(r, "POST", path, "application/json", body, strlen(body), token ? headers : NULL);
	CHECK_EQ(r->cc, CURLE_OK);
	expect.sse_requests++;
	if (r->status == 401)
		expect.unauthorized++;
}

/* A request over HTTP+SSE: 202 for the POST, the response as a message event. */
static struct json_object *sse_call(struct stream *s, const char *token, const char *session, const char *body)
{
	struct resp r = { 0 };

	messages(&r, token, session, body);
	CHECK_EQ(r.status, 202);
	resp_clear(&r);
	return stream_message(s);
}

static void test_sse_transport(const struct tokens *t)
{
	struct stream s = { 0 };
	struct json_object *o, *result, *tools, *id, *list, *e;
	char event[64], session[128], expected[256], body[256];
	struct resp r = { 0 };
	char *data;

	TEST("HTTP+SSE: GET /sse without a token is 401 naming the /sse resource metadata");
	stream_open(&s, "/sse", NULL, NULL);
	CHECK_EQ(s.r.status, 401);
	snprintf(expected, sizeof(expected), "Bearer resource_metadata=\"%s/.well-known/oauth-protected-resource/sse\"",
		 base);
	CHECK(streq(s.r.www_auth, expected));
	stream_close(&s);
	expect.sse_requests++;
	expect.unauthorized++;
	get(&r, "/.well-known/oauth-protected-resource/sse");
	CHECK_EQ(r.status, 200);
	o = json_of(&r);
	snprintf(expected, sizeof(expected), "%s/sse", base);
	CHECK(streq(jstr(o, "resource"), expected));
	json_object_put(o);

	TEST("HTTP+SSE: the first event is the endpoint with the session id");
	stream_open(&s, "/sse", t->access, NULL);
	expect.sse_requests++;
	CHECK_EQ(s.r.status, 200);
	CHECK(strncmp(s.r.ctype, "text/event-stream", 17) == 0);
	data = stream_next(&s, event, sizeof(event), EVENT_WAIT_MS);
	CHECK(data != NULL);
	CHECK(streq(event, "endpoint"));
	CHECK(strncmp(data, "/messages?session_id=", 21) == 0);
	copy(session, sizeof(session), data + 21);
	CHECK_EQ(strlen(session), 32);
	free(data);
	CHECK_EQ(stat_of("sse_streams"), 1);
	CHECK_EQ(stat_of("get_streams"), 0);

	TEST("HTTP+SSE: initialize, tools/list, echo, add and slow answer as message events");
	o = sse_call(&s, t->access, session,
		     "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2024-11-05\","
		     "\"capabilities\":{},\"clientInfo\":{\"name\":\"smoke\",\"version\":\"1\"}}}");
	CHECK_EQ(jint(o, "id"), 1);
	CHECK(json_object_object_get_ex(o, "result", &result));
	CHECK(streq(jstr(result, "protocolVersion"), "2024-11-05"));
	json_object_put(o);
	messages(&r, t->access, session, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}");
	CHECK_EQ(r.status, 202);
	o = sse_call(&s, t->access, session, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}");
	CHECK(json_object_object_get_ex(o, "result", &result));
	CHECK(json_object_object_get_ex(result, "tools", &tools));
	CHECK(json_object_array_length(tools) == 3);
	json_object_put(o);
	o = sse_call(&s, t->access, session,
		     "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\","
		     "\"arguments\":{\"text\":\"old transport\"}}}");
	CHECK_EQ(jint(o, "id"), 3);
	CHECK(streq(tool_text(o), "old transport"));
	json_object_put(o);
	o = sse_call(&s, t->access, session,
		     "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{\"name\":\"add\","
		     "\"arguments\":{\"a\":20,\"b\":22}}}");
	CHECK(streq(tool_text(o), "42"));
	json_object_put(o);
	o = sse_call(&s, t->access, session,
		     "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/call\",\"params\":{\"name\":\"slow\","
		     "\"arguments\":{\"ms\":30}}}");
	CHECK_EQ(jint(o, "id"), 5);
	CHECK(streq(tool_text(o), "slept 30 ms"));
	json_object_put(o);
	o = sse_call(&s, t->access, session, "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"ping\"}");
	CHECK_EQ(jint(o, "id"), 6);
	CHECK(json_object_object_get_ex(o, "result", &result));
	json_object_put(o);

	TEST("HTTP+SSE: POST without a token 401, without session_id 400, unknown session 404, bad JSON 400");
	messages(&r, NULL, session, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"ping\"}");
	CHECK_EQ(r.status, 401);
	CHECK(strstr(r.www_auth, "oauth-protected-resource/sse") != NULL);
	messages(&r, t->access, NULL, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"ping\"}");
	CHECK_EQ(r.status, 400);
	messages(&r, t->access, "0123456789abcdef0123456789abcdef", "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"ping\"}");
	CHECK_EQ(r.status, 404);
	messages(&r, t->access, session, "{\"jsonrpc\":");
	CHECK_EQ(r.status, 400);
	o = json_of(&r);
	CHECK(json_object_object_get_ex(o, "error", &result));
	CHECK_EQ(jint(result, "code"), -32700);
	json_object_put(o);
	stream_quiet(&s);

	TEST("HTTP+SSE: /test/notify and /test/request reach the session; the response comes back by POST");
	o = push("notify", session, "notifications/tools/list_changed", "{\"data\":\"changed\"}", 200);
	CHECK_EQ(jint(o, "delivered"), 1);
	json_object_put(o);
	expect.notifications_sent++;
	expect_notification(&s, "notifications/tools/list_changed", "changed");
	o = push("request", "*", "roots/list", NULL, 200);
	CHECK_EQ(jint(o, "delivered"), 1);
	json_object_put(o);
	expect.requests_sent++;
	id = expect_request(&s, "roots/list");
	snprintf(body, sizeof(body), "{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{\"roots\":[]}}",
		 json_object_to_json_string(id));
	messages(&r, t->access, session, body);
	CHECK_EQ(r.status, 202);
	expect.responses_received++;
	list = responses();
	e = json_object_array_get_idx(list, json_object_array_length(list) - 1);
	CHECK(streq(jstr(e, "session"), session));
	CHECK(streq(jstr(e, "method"), "roots/list"));
	json_object_put(list);
	json_object_put(id);

	TEST("HTTP+SSE: the session ends with its stream");
	stream_close(&s);
	wait_stat("sse_streams", 0);
	messages(&r, t->access, session, "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"ping\"}");
	CHECK_EQ(r.status, 404);
	resp_clear(&r);
}

/* ping on a fresh session must be refused as invalid_token. */
static void mcp_refused(const char *token)
{
	struct resp r = { 0 };

	CHECK(mcp(&r, token, NULL, NULL, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{}}") ==
	      NULL);
	CHECK_EQ(r.status, 401);
	CHECK(strstr(r.www_auth, "error=\"invalid_token\"") != NULL);
	resp_clear(&r);
}

static void mcp_accepted(const char *token)
{
	char session[128];

	mcp_session(token, session, sizeof(session));
	mcp_delete(token, session);
}

/* Leaves fresh tokens in *out for what follows. */
static void test_revoke_all(const struct client *c, struct tokens *out)
{
	struct tokens t1, t1b, t2, t2b, t3;
	struct stream s = { 0 };
	struct resp r = { 0 };
	struct json_object *o;
	char session[128];

	TEST("/test/revoke-access-all: every access token fails, refresh tokens still refresh");
	login(c, &t1);
	refresh_request(&r, c, t1.refresh);
	tokens_from(&r, &t1b, 3600);
	expect.refresh_grants++;
	login(c, &t2);
	mcp_session(t2.access, session, sizeof(session));
	stream_open(&s, "/mcp", t2.access, session);
	CHECK_EQ(s.r.status, 200);
	expect.mcp_requests++;
	post_json(&r, "/test/revoke-access-all", "{}");
	CHECK_EQ(r.status, 200);
	o = json_of(&r);
	CHECK(jint(o, "access_tokens") >= 3);
	json_object_put(o);
	expect.revoke_access_all++;
	mcp_refused(t1b.access);
	mcp_refused(t2.access);
	refresh_request(&r, c, t2.refresh);
	tokens_from(&r, &t2b, 3600);
	expect.refresh_grants++;
	mcp_accepted(t2b.access);

	TEST("an open stream survives the revocation of the token that opened it");
	o = push("notify", session, "notifications/message", "{\"data\":\"still here\"}", 200);
	json_object_put(o);
	expect.notifications_sent++;
	expect_notification(&s, "notifications/message", "still here");

	TEST("/test/revoke-all: access and refresh tokens all fail; a new login works");
	post_json(&r, "/test/revoke-all", "{}");
	CHECK_EQ(r.status, 200);
	o = json_of(&r);
	CHECK_EQ(jint(o, "access_tokens"), 1);	/* t2b: the others were revoked already */
	CHECK(jint(o, "families") >= 2);
	json_object_put(o);
	expect.revoke_all++;
	mcp_refused(t2b.access);
	refresh_request(&r, c, t2b.refresh);
	oauth_error_is(&r, 400, "invalid_grant");
	refresh_request(&r, c, t1b.refresh);
	oauth_error_is(&r, 400, "invalid_grant");
	/* A retired token is no reuse now: its family is simply revoked. */
	CHECK_EQ(stat_of("reused_refresh_tokens"), expect.reused_refresh_tokens);
	login(c, &t3);
	mcp_accepted(t3.access);
	refresh_request(&r, c, t3.refresh);
	tokens_from(&r, out, 3600);
	expect.refresh_grants++;
	mcp_delete(out->access, session);
	stream_wait_end(&s);
	stream_close(&s);
	CHECK_EQ(stat_of("get_streams"), 0);
	resp_clear(&r);
}

static void test_shutdown_with_streams(const struct tokens *t, pid_t pid)
{
	struct stream g = { 0 }, l = { 0 };
	char session[128], event[64];
	char *data;

	TEST("SIGTERM with a GET stream and an SSE stream open: both end cleanly, the peer exits 0");
	mcp_session(t->access, session, sizeof(session));
	stream_open(&g, "/mcp", t->access, session);
	CHECK_EQ(g.r.status, 200);
	stream_open(&l, "/sse", t->access, NULL);
	CHECK_EQ(l.r.status, 200);
	data = stream_next(&l, event, sizeof(event), EVENT_WAIT_MS);
	CHECK(data != NULL && streq(event, "endpoint"));
	free(data);
	peer_stop(pid);
	stream_wait_end(&g);
	stream_wait_end(&l);
	stream_close(&g);
	stream_close(&l);
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

/* ---- login knobs and /test/last ------------------------------------------- */

/* Every knob of the login at its default, as /test/config echoes it. */
static const char login_defaults[] =
	"{\"s256\":true,\"iss\":true,\"wrong_iss\":false,\"authorize_error\":null,\"challenge_scope\":null,"
	"\"challenge_metadata\":true,\"prm_paths\":\"both\",\"issuer_path\":\"\",\"as_metadata\":\"both\","
	"\"metadata_issuer\":null,\"registration\":true,\"revocation\":true,\"revoke_fail\":false,"
	"\"auth_methods\":[\"none\",\"client_secret_basic\",\"client_secret_post\"],\"tool_scope\":null,"
	"\"grantable_scopes\":null,\"issuer_bound\":false}";

/* POST /test/reset: the peer's counters and recordings start over, and so
 * do the expected counts. */
static void peer_reset(void)
{
	struct resp r = { 0 };

	post_json(&r, "/test/reset", "{}");
	CHECK_EQ(r.status, 200);
	memset(&expect, 0, sizeof(expect));
	resp_clear(&r);
}

/* POST /test/config; returns the configuration it answers with. */
static struct json_object *config(const char *json)
{
	struct resp r = { 0 };
	struct json_object *o;

	post_json(&r, "/test/config", json);
	if (r.status != 200)
		fprintf(stderr, "config %s: %ld %s\n", json, r.status, r.body ? r.body : "");
	CHECK_EQ(r.status, 200);
	o = json_of(&r);
	resp_clear(&r);
	return o;
}

static void configure(const char *json)
{
	json_object_put(config(json));
}

static struct json_object *last(void)
{
	struct resp r = { 0 };
	struct json_object *o;

	get(&r, "/test/last");
	CHECK_EQ(r.status, 200);
	o = json_of(&r);
	resp_clear(&r);
	return o;
}

/* The member key of o, which must be there (possibly null). */
static struct json_object *member(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v))
		fprintf(stderr, "no member \"%s\" in %s\n", key, json_object_to_json_string(o));
	CHECK(json_object_object_get_ex(o, key, &v));
	return v;
}

static int jbool(struct json_object *o, const char *key)
{
	struct json_object *v = member(o, key);

	CHECK(json_object_is_type(v, json_type_boolean));
	return json_object_get_boolean(v);
}

/* o's key is a JSON array of exactly the n strings of items, in order. */
static int jstrings_are(struct json_object *o, const char *key, const char *const *items, size_t n)
{
	struct json_object *a;

	if (!json_object_object_get_ex(o, key, &a) || !json_object_is_type(a, json_type_array) ||
	    json_object_array_length(a) != n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!streq(json_object_get_string(json_object_array_get_idx(a, i)), items[i]))
			return 0;
	return 1;
}

static long status_of(const char *path)
{
	struct resp r = { 0 };
	long status;

	get(&r, path);
	status = r.status;
	resp_clear(&r);
	return status;
}

/* GET path: 200 with a JSON object. */
static struct json_object *document(const char *path)
{
	struct resp r = { 0 };
	struct json_object *o;

	get(&r, path);
	if (r.status != 200)
		fprintf(stderr, "GET %s: %ld\n", path, r.status);
	CHECK_EQ(r.status, 200);
	o = json_of(&r);
	resp_clear(&r);
	return o;
}

/* base + path, in buf. */
static const char *url_of(char *buf, size_t len, const char *path)
{
	CHECK(snprintf(buf, len, "%s%s", base, path) < (int)len);
	return buf;
}

/* The redirect's query parameter key (caller frees; NULL when absent). */
static char *redirect_param(const struct resp *r, const char *key)
{
	CHECK(redirected_to_us(r));
	return query_param(r->location, key);
}

static int redirect_param_is(const struct resp *r, const char *key, const char *want)
{
	char *v = redirect_param(r, key);
	int ok = want ? streq(v, want) : v == NULL;

	if (!ok)
		fprintf(stderr, "redirect %s=%s, expected %s\n", key, v ? v : "(none)", want ? want : "(none)");
	free(v);
	return ok;
}

static int redirect_has(const struct resp *r, const char *key)
{
	char *v = redirect_param(r, key);
	int has = v != NULL;

	free(v);
	return has;
}

/* Registers a client with the given token_endpoint_auth_method (NULL: none
 * sent); on 201 fills *c and returns the method the peer chose. */
static long register_client(struct client *c, const char *method, char *chosen, size_t chosen_len)
{
	char body[512], path[128];
	struct resp r = { 0 };
	long status;

	snprintf(body, sizeof(body), "{\"redirect_uris\":[\"" REDIRECT_URI "\"],\"client_name\":\"smoke knobs\"%s%s%s}",
		 method ? ",\"token_endpoint_auth_method\":\"" : "", method ? method : "", method ? "\"" : "");
	snprintf(path, sizeof(path), "%s/register", as_path);
	post_json(&r, path, body);
	status = r.status;
	if (status == 201) {
		struct json_object *o = json_of(&r);

		copy(c->id, sizeof(c->id), jstr(o, "client_id"));
		c->secret[0] = '\0';
		if (jstr(o, "client_secret"))
			copy(c->secret, sizeof(c->secret), jstr(o, "client_secret"));
		if (chosen)
			copy(chosen, chosen_len, jstr(o, "token_endpoint_auth_method"));
		json_object_put(o);
		expect.registrations++;
	} else {
		oauth_error_is(&r, 400, "invalid_client_metadata");
	}
	resp_clear(&r);
	return status;
}

/* POST /revoke of token by c (client_secret_basic). */
static void revoke_token(struct resp *r, const struct client *c, const char *token)
{
	char form[512] = "", creds[300], b64[420], header[450], path[128];
	const char *headers[] = { header, NULL };

	snprintf(creds, sizeof(creds), "%s:%s", c->id, c->secret);
	sodium_bin2base64(b64, sizeof(b64), (const unsigned char *)creds, strlen(creds),
			  sodium_base64_VARIANT_ORIGINAL);
	snprintf(header, sizeof(header), "Authorization: Basic %s", b64);
	form_add(form, sizeof(form), "token", token);
	form_add(form, sizeof(form), "token_type_hint", "access_token");
	snprintf(path, sizeof(path), "%s/revoke", as_path);
	http(r, "POST", path, "application/x-www-form-urlencoded", form, strlen(form), headers);
	CHECK_EQ(r->cc, CURLE_OK);
}

static void test_config_knobs(void)
{
	static const char *const auths[] = { "none", "client_secret_basic", "client_secret_post" };
	struct json_object *o, *want, *v;
	struct resp r = { 0 };

	TEST("GET /test/config shows every login knob at its default");
	get(&r, "/test/config");
	CHECK_EQ(r.status, 200);
	o = json_of(&r);
	want = json_tokener_parse(login_defaults);
	CHECK(want != NULL);
	json_object_object_foreach(want, key, val) {
		CHECK(json_object_object_get_ex(o, key, &v));
		if (!json_object_equal(v, val))
			fprintf(stderr, "%s is %s\n", key, json_object_to_json_string(v));
		CHECK(json_object_equal(v, val));
	}
	CHECK(jstrings_are(o, "auth_methods", auths, 3));
	json_object_put(want);
	json_object_put(o);

	TEST("/test/config refuses a bad knob value and then changes nothing at all");
	{
		static const char *const bad[] = {
			"{\"s256\":false,\"prm_paths\":\"sideways\"}",
			"{\"s256\":false,\"as_metadata\":\"saml\"}",
			"{\"s256\":false,\"issuer_path\":\"tenant1\"}",
			"{\"s256\":false,\"issuer_path\":\"/tenant1/\"}",
			"{\"s256\":false,\"issuer_path\":\"/../x\"}",
			"{\"s256\":false,\"issuer_path\":null}",
			"{\"s256\":false,\"challenge_scope\":\"mcp \\\"x\"}",
			"{\"s256\":false,\"challenge_scope\":\"\"}",
			"{\"s256\":false,\"authorize_error\":\"\"}",
			"{\"s256\":false,\"auth_methods\":[]}",
			"{\"s256\":false,\"auth_methods\":[\"none\",\"none\"]}",
			"{\"s256\":false,\"auth_methods\":\"none\"}",
			"{\"s256\":false,\"registration\":\"no\"}",
			"{\"s256\":false,\"metadata_issuer\":7}",
			"{\"s256\":false,\"tool_scope\":\"\"}",
			"{\"s256\":false,\"tool_scope\":\"mcp  admin\"}",
			"{\"s256\":false,\"tool_scope\":[\"admin\"]}",
			"{\"s256\":false,\"grantable_scopes\":[]}",
			"{\"s256\":false,\"grantable_scopes\":\"mcp\"}",
			"{\"s256\":false,\"grantable_scopes\":[\"mcp admin\"]}",
			"{\"s256\":false,\"grantable_scopes\":[\"mcp\",\"mcp\"]}",
			"{\"s256\":false,\"issuer_bound\":\"yes\"}",
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			post_json(&r, "/test/config", bad[i]);
			if (r.status != 400)
				fprintf(stderr, "accepted %s\n", bad[i]);
			CHECK_EQ(r.status, 400);
		}
	}
	get(&r, "/test/config");
	o = json_of(&r);
	CHECK(jbool(o, "s256"));
	json_object_put(o);
	resp_clear(&r);
}

static void test_discovery_knobs(const struct client *c)
{
	static const char *const plain[] = { "plain" };
	struct json_object *o, *v;
	struct resp r = { 0 };
	struct pkce k;
	char url[256], url2[256];

	TEST("s256 off: the metadata offers [\"plain\"] only; /authorize still wants S256, and says why");
	configure("{\"s256\":false}");
	o = document("/.well-known/oauth-authorization-server");
	CHECK(jstrings_are(o, "code_challenge_methods_supported", plain, 1));
	json_object_put(o);
	pkce_new(&k);
	authorize(&r, c->id, k.verifier, "plain", "mcp");
	CHECK(redirect_param_is(&r, "error", "invalid_request"));
	CHECK(redirect_param_is(&r, "error_description",
				"PKCE is required: code_challenge_method S256 and a 43-character code_challenge"));
	CHECK(redirect_param_is(&r, "state", "st-42"));
	CHECK(redirect_param_is(&r, "iss", base));
	CHECK(redirect_param_is(&r, "code", NULL));
	configure("{\"s256\":true}");

	TEST("iss off: the metadata does not promise RFC 9207, and the redirect has no iss");
	configure("{\"iss\":false}");
	o = document("/.well-known/openid-configuration");
	CHECK(!json_object_object_get_ex(o, "authorization_response_iss_parameter_supported", &v));
	json_object_put(o);
	authorize(&r, c->id, k.challenge, "S256", "mcp");
	CHECK(redirect_has(&r, "code"));
	CHECK(redirect_param_is(&r, "iss", NULL));
	configure("{\"iss\":true}");
	o = document("/.well-known/openid-configuration");
	CHECK(jbool(o, "authorization_response_iss_parameter_supported"));
	json_object_put(o);

	TEST("wrong_iss: the redirect's iss names another issuer");
	configure("{\"wrong_iss\":true}");
	authorize(&r, c->id, k.challenge, "S256", "mcp");
	CHECK(redirect_param_is(&r, "iss", "https://evil.example"));
	configure("{\"wrong_iss\":false}");

	TEST("issuer_path: RFC 8414 path-inserted and OpenID issuer-relative URLs serve it; the root ones 404");
	configure("{\"issuer_path\":\"/tenant1\"}");
	o = document("/.well-known/oauth-protected-resource/mcp");
	url_of(url, sizeof(url), "/tenant1");
	CHECK(jstrings_are(o, "authorization_servers", (const char *const[]){ url }, 1));
	json_object_put(o);
	{
		static const char *const served[] = { "/.well-known/oauth-authorization-server/tenant1",
						      "/.well-known/openid-configuration/tenant1",
						      "/tenant1/.well-known/openid-configuration" };

		for (size_t i = 0; i < 3; i++) {
			o = document(served[i]);
			CHECK(streq(jstr(o, "issuer"), url_of(url, sizeof(url), "/tenant1")));
			/* The endpoints stay at the root. */
			CHECK(streq(jstr(o, "token_endpoint"), url_of(url, sizeof(url), "/token")));
			json_object_put(o);
		}
	}
	CHECK_EQ(status_of("/.well-known/oauth-authorization-server"), 404);
	CHECK_EQ(status_of("/.well-known/openid-configuration"), 404);
	CHECK_EQ(status_of("/tenant1/.well-known/oauth-authorization-server"), 404);
	CHECK_EQ(status_of("/.well-known/oauth-authorization-server/tenant2"), 404);
	authorize(&r, c->id, k.challenge, "S256", "mcp");
	CHECK(redirect_param_is(&r, "iss", url_of(url, sizeof(url), "/tenant1")));

	TEST("as_metadata: oauth or openid alone, the other 404s (with and without an issuer path)");
	configure("{\"as_metadata\":\"openid\"}");
	CHECK_EQ(status_of("/.well-known/oauth-authorization-server/tenant1"), 404);
	CHECK_EQ(status_of("/.well-known/openid-configuration/tenant1"), 200);
	CHECK_EQ(status_of("/tenant1/.well-known/openid-configuration"), 200);
	configure("{\"issuer_path\":\"\",\"as_metadata\":\"oauth\"}");
	CHECK_EQ(status_of("/.well-known/oauth-authorization-server"), 200);
	CHECK_EQ(status_of("/.well-known/openid-configuration"), 404);
	configure("{\"as_metadata\":\"openid\"}");
	CHECK_EQ(status_of("/.well-known/oauth-authorization-server"), 404);
	CHECK_EQ(status_of("/.well-known/openid-configuration"), 200);
	configure("{\"as_metadata\":\"both\"}");
	CHECK_EQ(status_of("/.well-known/oauth-authorization-server"), 200);

	TEST("metadata_issuer: the documents claim another issuer; the resource metadata and iss keep the real one");
	configure("{\"metadata_issuer\":\"http://127.0.0.1:1/other\"}");
	o = document("/.well-known/oauth-authorization-server");
	CHECK(streq(jstr(o, "issuer"), "http://127.0.0.1:1/other"));
	json_object_put(o);
	o = document("/.well-known/oauth-protected-resource");
	CHECK(jstrings_are(o, "authorization_servers", (const char *const[]){ base }, 1));
	json_object_put(o);
	authorize(&r, c->id, k.challenge, "S256", "mcp");
	CHECK(redirect_param_is(&r, "iss", base));
	configure("{\"metadata_issuer\":null}");
	o = document("/.well-known/oauth-authorization-server");
	CHECK(streq(jstr(o, "issuer"), base));
	json_object_put(o);

	TEST("prm_paths: path or root alone, the other 404s; the 401 challenge names a served document");
	configure("{\"prm_paths\":\"path\"}");
	CHECK_EQ(status_of("/.well-known/oauth-protected-resource"), 404);
	CHECK_EQ(status_of("/.well-known/oauth-protected-resource/mcp"), 200);
	CHECK_EQ(status_of("/.well-known/oauth-protected-resource/sse"), 200);
	CHECK(mcp(&r, NULL, NULL, NULL, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}") == NULL);
	CHECK_EQ(r.status, 401);
	snprintf(url2, sizeof(url2), "Bearer resource_metadata=\"%s\"",
		 url_of(url, sizeof(url), "/.well-known/oauth-protected-resource/mcp"));
	CHECK(streq(r.www_auth, url2));
	configure("{\"prm_paths\":\"root\"}");
	CHECK_EQ(status_of("/.well-known/oauth-protected-resource"), 200);
	CHECK_EQ(status_of("/.well-known/oauth-protected-resource/mcp"), 404);
	CHECK_EQ(status_of("/.well-known/oauth-protected-resource/sse"), 404);
	messages(&r, NULL, "0123", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}");
	CHECK_EQ(r.status, 401);
	snprintf(url2, sizeof(url2), "Bearer resource_metadata=\"%s\"",
		 url_of(url, sizeof(url), "/.well-known/oauth-protected-resource"));
	CHECK(streq(r.www_auth, url2));
	configure("{\"prm_paths\":\"both\"}");
	CHECK_EQ(status_of("/.well-known/oauth-protected-resource"), 200);
	CHECK_EQ(status_of("/.well-known/oauth-protected-resource/mcp"), 200);

	TEST("registration off: no registration_endpoint, and POST /register is 404");
	configure("{\"registration\":false}");
	o = document("/.well-known/oauth-authorization-server");
	CHECK(!json_object_object_get_ex(o, "registration_endpoint", &v));
	json_object_put(o);
	post_json(&r, "/register", "{\"redirect_uris\":[\"" REDIRECT_URI "\"]}");
	CHECK_EQ(r.status, 404);
	o = last();
	v = member(o, "register");
	CHECK_EQ(jint(v, "status"), 404);
	CHECK(streq(jstr(v, "outcome"), "not_found"));
	json_object_put(o);
	configure("{\"registration\":true}");
	o = document("/.well-known/oauth-authorization-server");
	CHECK(streq(jstr(o, "registration_endpoint"), url_of(url, sizeof(url), "/register")));
	json_object_put(o);
	resp_clear(&r);
}

static void test_challenge_knobs(const struct client *c)
{
	static const char *const scopes[] = { "mcp", "tools:read" };
	struct tokens t, t2;
	char expected[512], session[128];
	struct json_object *o;
	struct resp r = { 0 };

	TEST("challenge_scope: the 401 challenge carries scope=\"...\"; scopes_supported lists its scopes");
	configure("{\"challenge_scope\":\"mcp tools:read\"}");
	CHECK(mcp(&r, NULL, NULL, NULL, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}") == NULL);
	CHECK_EQ(r.status, 401);
	snprintf(expected, sizeof(expected),
		 "Bearer resource_metadata=\"%s/.well-known/oauth-protected-resource\", scope=\"mcp tools:read\"",
		 base);
	CHECK(streq(r.www_auth, expected));
	o = document("/.well-known/oauth-protected-resource/mcp");
	CHECK(jstrings_are(o, "scopes_supported", scopes, 2));
	json_object_put(o);
	o = document("/.well-known/oauth-authorization-server");
	CHECK(jstrings_are(o, "scopes_supported", scopes, 2));
	json_object_put(o);

	TEST("challenge_metadata off: no resource_metadata, only scope (and error with a bad token)");
	configure("{\"challenge_metadata\":false}");
	CHECK(mcp(&r, NULL, NULL, NULL, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}") == NULL);
	CHECK(streq(r.www_auth, "Bearer scope=\"mcp tools:read\""));
	CHECK(mcp(&r, "not-a-token", NULL, NULL, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}") == NULL);
	CHECK(streq(r.www_auth, "Bearer scope=\"mcp tools:read\", error=\"invalid_token\""));
	messages(&r, NULL, "0123", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}");
	CHECK(streq(r.www_auth, "Bearer scope=\"mcp tools:read\""));
	configure("{\"challenge_scope\":null}");
	CHECK(mcp(&r, NULL, NULL, NULL, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}") == NULL);
	CHECK(streq(r.www_auth, "Bearer"));

	TEST("a login with the challenge's scope \"mcp tools:read\" works end to end; refresh may narrow it");
	configure("{\"challenge_metadata\":true,\"challenge_scope\":\"mcp tools:read\"}");
	login_scoped(c, &t, "mcp tools:read");
	mcp_session(t.access, session, sizeof(session));
	mcp_delete(t.access, session);
	refresh_scoped(&r, c, t.refresh, "tools:read");
	tokens_scoped(&r, &t2, 3600, "tools:read");
	expect.refresh_grants++;
	refresh_scoped(&r, c, t2.refresh, "tools:write");
	oauth_error_is(&r, 400, "invalid_scope");
	configure("{\"challenge_scope\":null}");
	resp_clear(&r);
}

static void test_authorize_error(const struct client *c)
{
	struct resp r = { 0 };
	struct pkce k;
	struct json_object *o, *a;

	TEST("authorize_error: a redirect with error, a readable error_description, state and iss; no code");
	pkce_new(&k);
	configure("{\"authorize_error\":\"access_denied\"}");
	authorize(&r, c->id, k.challenge, "S256", "mcp");
	CHECK(redirect_param_is(&r, "error", "access_denied"));
	CHECK(redirect_param_is(&r, "error_description", "The user denied the authorization request."));
	CHECK(redirect_param_is(&r, "state", "st-42"));
	CHECK(redirect_param_is(&r, "iss", base));
	CHECK(redirect_param_is(&r, "code", NULL));
	o = last();
	a = member(o, "authorize");
	CHECK_EQ(jint(a, "status"), 302);
	CHECK(streq(jstr(a, "outcome"), "access_denied"));
	json_object_put(o);
	configure("{\"authorize_error\":\"temporarily_unavailable\",\"iss\":false}");
	authorize(&r, c->id, k.challenge, "S256", "mcp");
	CHECK(redirect_param_is(&r, "error", "temporarily_unavailable"));
	CHECK(redirect_param_is(&r, "iss", NULL));

	TEST("authorize_error: an unknown client is still answered 400 here, never redirected");
	authorize(&r, "no-such-client", k.challenge, "S256", "mcp");
	CHECK_EQ(r.status, 400);
	CHECK(r.location[0] == '\0');
	configure("{\"authorize_error\":null,\"iss\":true}");
	authorize(&r, c->id, k.challenge, "S256", "mcp");
	CHECK(redirect_has(&r, "code"));
	resp_clear(&r);
}

static void test_client_knobs(const struct client *c)
{
	static const char *const post_none[] = { "client_secret_post", "none" };
	struct client d;
	struct tokens t;
	struct resp r = { 0 };
	struct json_object *o, *v;
	char chosen[64], session[128];

	TEST("auth_methods: the metadata lists them; /register refuses another and defaults to the first");
	configure("{\"auth_methods\":[\"client_secret_post\",\"none\"]}");
	o = document("/.well-known/oauth-authorization-server");
	CHECK(jstrings_are(o, "token_endpoint_auth_methods_supported", post_none, 2));
	CHECK(jstrings_are(o, "revocation_endpoint_auth_methods_supported", post_none, 2));
	json_object_put(o);
	CHECK_EQ(register_client(&d, "client_secret_basic", NULL, 0), 400);
	o = last();
	v = member(o, "register");
	CHECK(streq(jstr(v, "token_endpoint_auth_method"), "client_secret_basic"));
	CHECK(streq(jstr(v, "client_name"), "smoke knobs"));
	CHECK(streq(jstr(v, "outcome"), "invalid_client_metadata"));
	CHECK(!json_object_object_get_ex(v, "auth_method", NULL));
	json_object_put(o);
	CHECK_EQ(register_client(&d, NULL, chosen, sizeof(chosen)), 201);
	CHECK(streq(chosen, "client_secret_post"));
	o = last();
	v = member(o, "register");
	CHECK(!json_object_object_get_ex(v, "token_endpoint_auth_method", NULL));
	CHECK(streq(jstr(v, "auth_method"), "client_secret_post"));
	CHECK_EQ(jint(v, "status"), 201);
	CHECK(streq(jstr(v, "outcome"), "ok"));
	json_object_put(o);
	CHECK(d.secret[0] != '\0');
	CHECK_EQ(register_client(&d, "none", chosen, sizeof(chosen)), 201);
	CHECK(streq(chosen, "none"));
	CHECK(d.secret[0] == '\0');

	TEST("a public client's login shows in /test/last as auth_method none");
	login(&d, &t);
	o = last();
	v = member(o, "token");
	CHECK(streq(jstr(v, "client_id"), d.id));
	CHECK(streq(jstr(v, "auth_method"), "none"));
	json_object_put(o);
	mcp_session(t.access, session, sizeof(session));
	mcp_delete(t.access, session);

	TEST("auth_methods: without basic listed the default is the first; an unimplemented one is refused");
	configure("{\"auth_methods\":[\"none\",\"client_secret_basic\"]}");
	CHECK_EQ(register_client(&d, NULL, chosen, sizeof(chosen)), 201);
	CHECK(streq(chosen, "client_secret_basic"));
	configure("{\"auth_methods\":[\"private_key_jwt\"]}");
	CHECK_EQ(register_client(&d, "private_key_jwt", NULL, 0), 400);
	CHECK_EQ(register_client(&d, NULL, NULL, 0), 400);
	configure("{\"auth_methods\":[\"none\",\"client_secret_basic\",\"client_secret_post\"]}");

	TEST("revocation off: no revocation_endpoint in the metadata (the endpoint still answers)");
	configure("{\"revocation\":false}");
	o = document("/.well-known/oauth-authorization-server");
	CHECK(!json_object_object_get_ex(o, "revocation_endpoint", &v));
	CHECK(!json_object_object_get_ex(o, "revocation_endpoint_auth_methods_supported", &v));
	json_object_put(o);
	configure("{\"revocation\":true}");

	TEST("revoke_fail: /revoke answers 503 temporarily_unavailable and revokes nothing");
	login(c, &t);
	configure("{\"revoke_fail\":true}");
	revoke_token(&r, c, t.access);
	oauth_error_is(&r, 503, "temporarily_unavailable");
	o = last();
	v = member(o, "revoke");
	CHECK(streq(jstr(v, "token_type_hint"), "access_token"));
	CHECK(streq(jstr(v, "client_id"), c->id));
	CHECK(streq(jstr(v, "auth_method"), "client_secret_basic"));
	CHECK(jbool(v, "known"));
	CHECK_EQ(jint(v, "status"), 503);
	CHECK(streq(jstr(v, "outcome"), "temporarily_unavailable"));
	json_object_put(o);
	mcp_session(t.access, session, sizeof(session));
	configure("{\"revoke_fail\":false}");
	revoke_token(&r, c, t.access);
	CHECK_EQ(r.status, 200);
	expect.revocations++;
	o = last();
	v = member(o, "revoke");
	CHECK(jbool(v, "known"));
	CHECK(streq(jstr(v, "outcome"), "ok"));
	json_object_put(o);
	mcp_refused(t.access);
	revoke_token(&r, c, "never-issued");
	CHECK_EQ(r.status, 200);
	expect.revocations++;
	o = last();
	CHECK(!jbool(member(o, "revoke"), "known"));
	json_object_put(o);
	resp_clear(&r);
}

/* /test/last holds none of the secrets of a login. */
static void last_has_no_secret(const char *const *secrets, size_t n)
{
	struct resp r = { 0 };

	get(&r, "/test/last");
	CHECK_EQ(r.status, 200);
	for (size_t i = 0; i < n; i++) {
		if (strstr(r.body, secrets[i]))
			fprintf(stderr, "/test/last shows secret #%zu\n", i);
		CHECK(strstr(r.body, secrets[i]) == NULL);
	}
	resp_clear(&r);
}

static void test_last(const struct client *c)
{
	struct json_object *o, *v, *d, *e;
	struct resp r = { 0 };
	struct tokens t;
	struct pkce k, wrong;
	char url[256];
	char *code;

	TEST("/test/reset clears /test/last but keeps the config knobs");
	configure("{\"challenge_scope\":\"mcp\"}");
	login(c, &t);
	CHECK_EQ(status_of("/.well-known/oauth-protected-resource"), 200);
	peer_reset();
	o = last();
	CHECK(member(o, "authorize") == NULL);
	CHECK(member(o, "token") == NULL);
	CHECK(member(o, "register") == NULL);
	CHECK(member(o, "revoke") == NULL);
	CHECK(json_object_array_length(member(o, "discovery")) == 0);
	json_object_put(o);
	o = config("{}");
	CHECK(streq(jstr(o, "challenge_scope"), "mcp"));
	json_object_put(o);
	configure(login_defaults);

	TEST("/test/last after a code flow with PKCE: discovery in order, authorize, token with pkce_ok true");
	CHECK_EQ(status_of("/.well-known/oauth-protected-resource/mcp"), 200);
	CHECK_EQ(status_of("/.well-known/oauth-authorization-server/nope"), 404);
	CHECK_EQ(status_of("/.well-known/oauth-authorization-server"), 200);
	pkce_new(&k);
	authorize(&r, c->id, k.challenge, "S256", "mcp");
	code = redirect_param(&r, "code");
	CHECK(code != NULL);
	code_exchange(&r, c, code, k.verifier);
	tokens_from(&r, &t, 3600);
	expect.token_grants++;
	o = last();
	d = member(o, "discovery");
	CHECK(json_object_array_length(d) == 3);
	e = json_object_array_get_idx(d, 0);
	CHECK(streq(jstr(e, "path"), "/.well-known/oauth-protected-resource/mcp"));
	CHECK_EQ(jint(e, "status"), 200);
	e = json_object_array_get_idx(d, 1);
	CHECK(streq(jstr(e, "path"), "/.well-known/oauth-authorization-server/nope"));
	CHECK_EQ(jint(e, "status"), 404);
	e = json_object_array_get_idx(d, 2);
	CHECK(streq(jstr(e, "path"), "/.well-known/oauth-authorization-server"));
	v = member(o, "authorize");
	CHECK(streq(jstr(v, "client_id"), c->id));
	CHECK(streq(jstr(v, "redirect_uri"), REDIRECT_URI));
	CHECK(streq(jstr(v, "response_type"), "code"));
	CHECK(streq(jstr(v, "scope"), "mcp"));
	CHECK(streq(jstr(v, "resource"), url_of(url, sizeof(url), "/mcp")));
	CHECK(jbool(v, "state"));
	CHECK(streq(jstr(v, "code_challenge_method"), "S256"));
	CHECK_EQ(jint(v, "code_challenge_length"), 43);
	CHECK_EQ(jint(v, "status"), 302);
	CHECK(streq(jstr(v, "outcome"), "ok"));
	v = member(o, "token");
	CHECK(streq(jstr(v, "grant_type"), "authorization_code"));
	CHECK(streq(jstr(v, "client_id"), c->id));
	CHECK(streq(jstr(v, "auth_method"), "client_secret_basic"));
	CHECK(streq(jstr(v, "resource"), url_of(url, sizeof(url), "/mcp")));
	CHECK(streq(jstr(v, "redirect_uri"), REDIRECT_URI));
	CHECK(member(v, "scope") == NULL);
	CHECK(jbool(v, "pkce_ok"));
	CHECK_EQ(jint(v, "status"), 200);
	CHECK(streq(jstr(v, "outcome"), "ok"));
	json_object_put(o);
	last_has_no_secret((const char *const[]){ code, k.verifier, k.challenge, t.access, t.refresh, c->secret }, 6);
	free(code);

	TEST("a wrong code_verifier: invalid_grant with a readable description; /test/last says pkce_ok false");
	pkce_new(&k);
	pkce_new(&wrong);
	authorize(&r, c->id, k.challenge, "S256", NULL);
	code = redirect_param(&r, "code");
	CHECK(code != NULL);
	code_exchange(&r, c, code, wrong.verifier);
	oauth_error_is(&r, 400, "invalid_grant");
	o = json_of(&r);
	CHECK(streq(jstr(o, "error_description"),
		    "PKCE verification failed (code_verifier does not match code_challenge)"));
	json_object_put(o);
	o = last();
	v = member(o, "authorize");
	CHECK(member(v, "scope") == NULL);
	v = member(o, "token");
	CHECK(!jbool(v, "pkce_ok"));
	CHECK_EQ(jint(v, "status"), 400);
	CHECK(streq(jstr(v, "outcome"), "invalid_grant"));
	CHECK(streq(jstr(v, "error_description"),
		    "PKCE verification failed (code_verifier does not match code_challenge)"));
	json_object_put(o);
	last_has_no_secret((const char *const[]){ code, k.verifier, wrong.verifier, k.challenge }, 4);

	TEST("the failed attempt spent the code: the right verifier now gets invalid_grant, pkce_ok null");
	code_exchange(&r, c, code, k.verifier);
	oauth_error_is(&r, 400, "invalid_grant");
	o = last();
	CHECK(member(member(o, "token"), "pkce_ok") == NULL);
	json_object_put(o);
	free(code);
	resp_clear(&r);
}

/* ---- step-up and issuer migration knobs ------------------------------------ */

#define ECHO_CALL "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\"," \
		  "\"arguments\":{\"text\":\"hi\"}}}"

/* A tools/call with token on session: 1 when it was answered (200), 0 when
 * tool_scope refused it with the challenge it must carry. */
static int echo_allowed(const char *token, const char *session, const char *need)
{
	char expected[512];
	struct json_object *o;
	struct resp r = { 0 };

	o = mcp(&r, token, session, NULL, ECHO_CALL);
	if (o) {
		CHECK(streq(tool_text(o), "hi"));
		json_object_put(o);
		resp_clear(&r);
		return 1;
	}
	CHECK_EQ(r.status, 403);
	expect.insufficient_scope++;
	snprintf(expected, sizeof(expected),
		 "Bearer error=\"insufficient_scope\", scope=\"%s\", resource_metadata=\"%s/.well-known/oauth-protected-resource\"",
		 need, base);
	if (!streq(r.www_auth, expected))
		fprintf(stderr, "challenge: %s\n", r.www_auth);
	CHECK(streq(r.www_auth, expected));
	o = json_of(&r);
	CHECK(json_object_object_get_ex(o, "error", NULL));
	CHECK_EQ(jint(o, "id"), 2);
	json_object_put(o);
	resp_clear(&r);
	return 0;
}

/* The one entry of /test/last's grants whose key is value. */
static struct json_object *grant_where(struct json_object *last_o, const char *key, const char *value)
{
	struct json_object *grants = member(last_o, "grants"), *found = NULL;
	size_t n = json_object_array_length(grants), matches = 0;

	for (size_t i = 0; i < n; i++) {
		struct json_object *g = json_object_array_get_idx(grants, i);

		CHECK_EQ(jint(g, "grant"), (long long)i + 1);
		if (streq(jstr(g, key), value)) {
			found = g;
			matches++;
		}
	}
	if (matches != 1)
		fprintf(stderr, "%zu grants with %s %s\n", matches, key, value);
	CHECK_EQ(matches, 1);
	return found;
}

static void test_stepup_knobs(const struct client *c)
{
	static const char *const mcp_only[] = { "mcp" };
	struct tokens t, wide, narrow, refreshed;
	char session[128], *code;
	struct json_object *o, *g, *v;
	struct resp r = { 0 };
	struct pkce k;

	TEST("tool_scope: a tools/call whose token lacks a scope of it gets 403 insufficient_scope; others pass");
	peer_reset();
	configure("{\"tool_scope\":\"mcp tools:write\"}");
	o = document("/.well-known/oauth-protected-resource");
	CHECK(jstrings_are(o, "scopes_supported", mcp_only, 1));
	json_object_put(o);
	login(c, &t);
	mcp_session(t.access, session, sizeof(session));
	CHECK(!echo_allowed(t.access, session, "mcp tools:write"));
	o = mcp(&r, t.access, session, NULL, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/list\"}");
	CHECK(o != NULL);
	json_object_put(o);

	TEST("tool_scope: a token granted the scope passes; its refresh keeps the grant's scope, a narrowed one not");
	login_scoped(c, &wide, "tools:write mcp");
	CHECK(echo_allowed(wide.access, session, "mcp tools:write"));
	refresh_request(&r, c, wide.refresh);
	tokens_scoped(&r, &refreshed, 3600, "tools:write mcp");
	expect.refresh_grants++;
	CHECK(echo_allowed(refreshed.access, session, "mcp tools:write"));
	refresh_scoped(&r, c, refreshed.refresh, "mcp");
	tokens_scoped(&r, &narrow, 3600, "mcp");
	expect.refresh_grants++;
	CHECK(!echo_allowed(narrow.access, session, "mcp tools:write"));
	CHECK(echo_allowed(refreshed.access, session, "mcp tools:write"));

	TEST("grantable_scopes: /authorize grants only those of the scopes asked; none left: invalid_scope, no code");
	configure("{\"grantable_scopes\":[\"mcp\",\"tools:read\"]}");
	pkce_new(&k);
	authorize(&r, c->id, k.challenge, "S256", "mcp admin tools:read");
	code = redirect_param(&r, "code");
	CHECK(code != NULL);
	code_exchange(&r, c, code, k.verifier);
	tokens_scoped(&r, &t, 3600, "mcp tools:read");
	expect.token_grants++;
	free(code);
	CHECK(!echo_allowed(t.access, session, "mcp tools:write"));
	authorize(&r, c->id, k.challenge, "S256", "admin");
	CHECK(redirect_param_is(&r, "error", "invalid_scope"));
	CHECK(!redirect_has(&r, "code"));
	CHECK(redirect_param_is(&r, "state", "st-42"));
	authorize(&r, c->id, k.challenge, "S256", NULL);
	CHECK(redirect_has(&r, "code"));
	configure("{\"grantable_scopes\":null,\"tool_scope\":null}");
	CHECK(echo_allowed(t.access, session, NULL));

	TEST("/test/last: authorize_scopes has every /authorize's scope since the reset, in order");
	o = last();
	v = member(o, "authorize_scopes");
	CHECK_EQ(json_object_array_length(v), 5);
	CHECK(streq(json_object_get_string(json_object_array_get_idx(v, 0)), "mcp"));
	CHECK(streq(json_object_get_string(json_object_array_get_idx(v, 1)), "tools:write mcp"));
	CHECK(streq(json_object_get_string(json_object_array_get_idx(v, 2)), "mcp admin tools:read"));
	CHECK(streq(json_object_get_string(json_object_array_get_idx(v, 3)), "admin"));
	CHECK(json_object_array_get_idx(v, 4) == NULL);
	CHECK_EQ(json_object_array_length(member(o, "revocations")), 0);
	g = grant_where(o, "scope", "tools:write mcp");
	CHECK(!jbool(g, "revoked"));
	CHECK(streq(jstr(g, "client_id"), c->id));
	CHECK(streq(jstr(g, "issuer"), base));
	json_object_put(o);

	TEST("/test/last: revocations and grants name the grant a /revoke ended, never a token");
	revoke_token(&r, c, narrow.refresh);
	CHECK_EQ(r.status, 200);
	expect.revocations++;
	o = last();
	g = grant_where(o, "scope", "tools:write mcp");
	CHECK(jbool(g, "revoked"));
	v = json_object_array_get_idx(member(o, "revocations"), 0);
	CHECK(v != NULL);
	CHECK_EQ(jint(v, "grant"), jint(g, "grant"));
	CHECK(streq(jstr(v, "token_type"), "refresh_token"));
	CHECK(streq(jstr(v, "issuer"), base));
	CHECK(streq(jstr(v, "client_id"), c->id));
	CHECK(jbool(v, "revoked"));
	json_object_put(o);
	/* The whole grant went: the access tokens of its refreshes too. */
	CHECK(mcp(&r, refreshed.access, session, NULL, ECHO_CALL) == NULL);
	CHECK_EQ(r.status, 401);
	last_has_no_secret((const char *const[]){ t.access, wide.access, wide.refresh, narrow.refresh, refreshed.access,
						   c->secret },
			   6);
	mcp_delete(t.access, session);
	resp_clear(&r);
}

/* initialize on /mcp with token: the HTTP status. */
static long mcp_init_status(const char *token)
{
	struct json_object *o;
	struct resp r = { 0 };
	long status;

	o = mcp(&r, token, NULL, NULL,
		"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-06-18\","
		"\"capabilities\":{},\"clientInfo\":{\"name\":\"smoke\",\"version\":\"1\"}}}");
	json_object_put(o);
	status = r.status;
	resp_clear(&r);
	return status;
}

static void test_issuer_bound(void)
{
	struct client a, b;
	struct tokens ta, tb, tr;
	struct json_object *o;
	struct resp r = { 0 };
	struct pkce k;
	char url[256];

	TEST("issuer_bound: a client registered and logged in at the first issuer works there");
	peer_reset();
	configure("{\"issuer_bound\":true}");
	CHECK_EQ(register_client(&a, "client_secret_basic", NULL, 0), 201);
	login(&a, &ta);
	CHECK_EQ(mcp_init_status(ta.access), 200);

	TEST("issuer_bound: after a move each issuer has its metadata and endpoints under its path");
	configure("{\"issuer_path\":\"/tenant2\"}");
	o = document("/.well-known/oauth-protected-resource");
	CHECK(jstrings_are(o, "authorization_servers", (const char *const[]){ url_of(url, sizeof(url), "/tenant2") },
			   1));
	json_object_put(o);
	o = document("/.well-known/oauth-authorization-server/tenant2");
	CHECK(streq(jstr(o, "issuer"), url_of(url, sizeof(url), "/tenant2")));
	CHECK(streq(jstr(o, "authorization_endpoint"), url_of(url, sizeof(url), "/tenant2/authorize")));
	CHECK(streq(jstr(o, "token_endpoint"), url_of(url, sizeof(url), "/tenant2/token")));
	CHECK(streq(jstr(o, "registration_endpoint"), url_of(url, sizeof(url), "/tenant2/register")));
	CHECK(streq(jstr(o, "revocation_endpoint"), url_of(url, sizeof(url), "/tenant2/revoke")));
	json_object_put(o);
	o = document("/.well-known/oauth-authorization-server");
	CHECK(streq(jstr(o, "issuer"), base));
	CHECK(streq(jstr(o, "token_endpoint"), url_of(url, sizeof(url), "/token")));
	json_object_put(o);
	CHECK_EQ(status_of("/nope/token"), 404);

	TEST("issuer_bound: /mcp refuses the earlier issuer's tokens, refreshed ones too");
	CHECK_EQ(mcp_init_status(ta.access), 401);
	refresh_request(&r, &a, ta.refresh);
	tokens_from(&r, &tr, 3600);
	expect.refresh_grants++;
	CHECK_EQ(mcp_init_status(tr.access), 401);

	TEST("issuer_bound: the earlier issuer's client_id is invalid_client at the new one, and counted");
	strcpy(as_path, "/tenant2");
	pkce_new(&k);
	authorize(&r, a.id, k.challenge, "S256", "mcp");
	CHECK_EQ(r.status, 400);
	CHECK(strstr(r.body, "another issuer") != NULL);
	expect.foreign_client_id++;
	refresh_request(&r, &a, tr.refresh);
	oauth_error_is(&r, 401, "invalid_client");
	expect.foreign_client_id++;
	CHECK_EQ(stat_of("foreign_client_id"), 2);

	TEST("issuer_bound: a client registered at the new issuer logs in there (iss is the new issuer)");
	CHECK_EQ(register_client(&b, "client_secret_basic", NULL, 0), 201);
	login(&b, &tb);
	CHECK_EQ(mcp_init_status(tb.access), 200);
	revoke_token(&r, &a, ta.access);
	oauth_error_is(&r, 401, "invalid_client");
	expect.foreign_client_id++;

	TEST("issuer_bound: the earlier issuer still revokes its own grant; the new client is foreign there");
	strcpy(as_path, "");
	revoke_token(&r, &a, tr.refresh);
	CHECK_EQ(r.status, 200);
	expect.revocations++;
	authorize(&r, b.id, k.challenge, "S256", "mcp");
	CHECK_EQ(r.status, 400);
	expect.foreign_client_id++;
	o = last();
	CHECK(jbool(grant_where(o, "client_id", a.id), "revoked"));
	CHECK(streq(jstr(grant_where(o, "client_id", a.id), "issuer"), base));
	CHECK(!jbool(grant_where(o, "client_id", b.id), "revoked"));
	CHECK(streq(jstr(grant_where(o, "client_id", b.id), "issuer"), url_of(url, sizeof(url), "/tenant2")));
	CHECK(streq(jstr(json_object_array_get_idx(member(o, "revocations"), 0), "issuer"), base));
	json_object_put(o);
	CHECK_EQ(stat_of("foreign_client_id"), expect.foreign_client_id);

	TEST("issuer_bound off: one authorization server at the root again");
	configure("{\"issuer_bound\":false,\"issuer_path\":\"\"}");
	CHECK_EQ(status_of("/tenant2/token"), 404);
	CHECK_EQ(mcp_init_status(ta.access), 401);
	CHECK_EQ(mcp_init_status(tb.access), 200);
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
	STAT_IS(sse_requests);
	STAT_IS(notifications_sent);
	STAT_IS(requests_sent);
	STAT_IS(responses_received);
	STAT_IS(revoke_all);
	STAT_IS(revoke_access_all);
	STAT_IS(authorizations);
	STAT_IS(code_requests);
	STAT_IS(insufficient_scope);
	STAT_IS(foreign_client_id);
#undef STAT_IS
	CHECK_EQ(jint(o, "get_streams"), 0);
	CHECK_EQ(jint(o, "sse_streams"), 0);
	CHECK_EQ(jint(o, "in_flight"), 0);
	/* Every request was sequential. */
	CHECK_EQ(jint(o, "max_in_flight"), 1);
	json_object_put(o);

	TEST("/test/reset zeroes the counters");
	peer_reset();
	o = stats();
	json_object_object_foreach(o, key, val) {
		if (json_object_get_int64(val) != 0)
			fprintf(stderr, "%s is %lld after reset\n", key, (long long)json_object_get_int64(val));
		CHECK_EQ(json_object_get_int64(val), 0);
	}
	json_object_put(o);
	o = responses();
	CHECK_EQ(json_object_array_length(o), 0);
	json_object_put(o);
	resp_clear(&r);
}

int main(int argc, char **argv)
{
	struct client c;
	struct tokens t, fresh;
	pid_t pid;
	int port;

	CHECK(argc == 2);
	CHECK(sodium_init() >= 0);
	CHECK(curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK);
	curl = curl_easy_init();
	CHECK(curl != NULL);
	multi = curl_multi_init();
	CHECK(multi != NULL);

	pid = peer_start(argv[1], &port);
	snprintf(base, sizeof(base), "http://127.0.0.1:%d", port);
	printf("# peer pid %d at %s\n", (int)pid, base);

	test_discovery();
	test_register(&c);
	test_unauthorized();
	TEST("authorization code flow with PKCE; the code is single-use");
	login(&c, &t);
	test_mcp(&t);
	test_get_stream(&t);
	test_sse_transport(&t);
	test_rotation(&c);
	test_injection(&c);
	test_revoke_all(&c, &fresh);
	test_oversize(&t);
	test_stats();
	test_config_knobs();
	test_discovery_knobs(&c);
	test_challenge_knobs(&c);
	test_authorize_error(&c);
	test_client_knobs(&c);
	test_last(&c);
	test_stepup_knobs(&c);
	test_issuer_bound();
	test_stats();
	test_shutdown_with_streams(&fresh, pid);

	curl_multi_cleanup(multi);
	curl_easy_cleanup(curl);
	curl_global_cleanup();
	printf("all peer smoke tests passed\n");
	return 0;
}
