/*
 * oauth.discover: where a server's authorization lives, in the order of the
 * MCP authorization specification (2025-11-25). An unauthenticated probe of
 * the MCP endpoint for its 401 and Bearer challenge; RFC 9728 protected
 * resource metadata (from the challenge's resource_metadata, else the
 * well-known URIs); then RFC 8414 / OpenID Connect discovery for the
 * authorization server it names, whose issuer must be the expected one and
 * which must advertise PKCE S256. The answer is what the keeper needs for
 * the next steps (common/proto.h).
 *
 * What it may touch: the network through struct fetch, one document at a
 * time. The probe carries the server's static headers, which may hold API
 * keys: they are wiped with the step. Metadata is checked before anything
 * of it reaches the keeper: URLs with url_check(), words as visible ASCII.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "challenge.h"
#include "frame.h"
#include "log.h"
#include "oauth.h"
#include "params.h"
#include "proto.h"
#include "util.h"

#define MCP_PROBE_VERSION "2025-11-25"
/* The longest Mcp-Session-Id the second probe carries back. */
#define DISCOVER_SESSION_MAX 256

/* What a check that may end the step returns when it did: the keeper has
 * its error and the step is freed. */
#define DISCOVER_ENDED 1

/* RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ). */
static bool scope_token(const char *s, size_t n)
{
	if (n == 0 || n > 256)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x21 || c > 0x7e || c == '"' || c == '\\')
			return false;
	}
	return true;
}

/* A space-separated list of scope tokens. */
static bool scope_list(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > CHALLENGE_MAX_VALUE)
		return false;
	for (const char *p = s; *p;) {
		size_t n = strcspn(p, " ");

		if (!scope_token(p, n))
			return false;
		p += n;
		if (*p == ' ')
			p++;
		if (*p == ' ' || (!*p && p[-1] == ' '))
			return false;
	}
	return true;
}

/* The path of u without trailing slashes ("" for none). */
static char *url_path_trimmed(CURLU *u)
{
	char *path = url_part(u, CURLUPART_PATH, 0);
	size_t n;

	if (!path)
		return xstrdup("");
	n = strlen(path);
	while (n > 0 && path[n - 1] == '/')
		path[--n] = '\0';
	return path;
}

/* u's origin with path, no query, fragment or user info. */
static char *url_with_path(CURLU *base, const char *path)
{
	CURLU *u = curl_url_dup(base);
	char *s = NULL;

	if (!u)
		fatal("out of memory");
	if (curl_url_set(u, CURLUPART_PATH, path, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_QUERY, NULL, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_USER, NULL, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_PASSWORD, NULL, 0) == CURLUE_OK)
		s = url_part(u, CURLUPART_URL, 0);
	curl_url_cleanup(u);
	if (!s)
		fatal("out of memory building a URL");
	return s;
}

/* The same scheme, host and port (r may be NULL: false). */
static bool same_origin(CURLU *r, CURLU *mcp)
{
	static const CURLUPart parts[] = { CURLUPART_SCHEME, CURLUPART_HOST, CURLUPART_PORT };
	bool ok = r != NULL;

	for (size_t i = 0; ok && i < ARRAY_SIZE(parts); i++) {
		char *a = url_part(r, parts[i], CURLU_DEFAULT_PORT), *b = url_part(mcp, parts[i], CURLU_DEFAULT_PORT);

		ok = a && b && strcasecmp(a, b) == 0;
		free(a);
		free(b);
	}
	return ok;
}

/* RFC 9728 3.3 and 7.3: the resource names the endpoint we asked for, or a
 * path above it on a segment boundary, at the same scheme, host and port. */
static bool resource_covers(const char *resource, CURLU *mcp)
{
	CURLU *r = url_parse(resource);
	char *rpath = NULL, *upath = NULL, *frag = NULL;
	bool ok = same_origin(r, mcp);

	if (ok) {
		frag = url_part(r, CURLUPART_FRAGMENT, 0);
		rpath = url_path_trimmed(r);
		upath = url_part(mcp, CURLUPART_PATH, 0);
		if (!upath)
			upath = xstrdup("/");
		ok = !frag && (strncmp(upath, rpath, strlen(rpath)) == 0) &&
		     (upath[strlen(rpath)] == '\0' || upath[strlen(rpath)] == '/');
	}
	free(rpath);
	free(upath);
	free(frag);
	curl_url_cleanup(r);
	return ok;
}

static void discover_next(struct step *s);

static void discover_reply(struct step *s)
{
	log_debug("oauth: %s: discovery done", s->server);
	step_reply(s, TAKE_PTR(s->result));
}

/* An endpoint of the authorization server metadata, key: absent when not
 * required, or a URL that passes url_check(), which goes into the result as
 * result_key. 0, or DISCOVER_ENDED. */
static int discover_endpoint(struct step *s, struct json_object *meta, const char *key, const char *result_key,
			     bool required, const char *from)
{
	struct json_object *v;
	char why[512];

	if (!json_object_object_get_ex(meta, key, &v) || json_object_is_type(v, json_type_null)) {
		if (!required)
			return 0;
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
			  "the authorization server metadata at %s has no %s", from, key);
		return DISCOVER_ENDED;
	}
	if (!json_object_is_type(v, json_type_string)) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
			  "the authorization server metadata at %s has a %s that is not a string", from, key);
		return DISCOVER_ENDED;
	}
	if (url_check(json_object_get_string(v), NULL, why, sizeof(why)) < 0) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0, "%s of %s: %s", key, s->issuer, why);
		return DISCOVER_ENDED;
	}
	json_object_object_add(s->result, result_key, json_object_new_string(json_object_get_string(v)));
	return 0;
}

/* RFC 8414 / OpenID Connect Discovery document for s->issuer. */
static void discover_as(struct step *s, struct json_object *meta, const char *from)
{
	struct json_object *v, *methods;
	char got[DESCRIPTION_MAX + 1];
	bool iss_supported;

	if (!json_object_object_get_ex(meta, "issuer", &v) || !json_object_is_type(v, json_type_string) ||
	    strcmp(json_object_get_string(v), s->issuer) != 0) {
		sanitise_text(json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "(none)", got,
			      sizeof(got), DESCRIPTION_MAX);
		step_fail(s, KIND_TERMINAL, LOGIN_R_ISSUER, NULL, 0,
			  "the authorization server metadata at %s names issuer %s, expected %s", from, got, s->issuer);
		return;
	}
	if (discover_endpoint(s, meta, "authorization_endpoint", PARAM_KEY_AUTHORIZATION_ENDPOINT, true, from) ||
	    discover_endpoint(s, meta, "token_endpoint", PARAM_KEY_TOKEN_ENDPOINT, true, from) ||
	    discover_endpoint(s, meta, "registration_endpoint", PARAM_KEY_REGISTRATION_ENDPOINT, false, from) ||
	    discover_endpoint(s, meta, "revocation_endpoint", PARAM_KEY_REVOCATION_ENDPOINT, false, from))
		return;
	/* MCP authorization: clients MUST refuse without S256 advertised. */
	if (!json_object_object_get_ex(meta, "code_challenge_methods_supported", &v) || !login_string_in_array(v, "S256")) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_PKCE, NULL, 0,
			  "the authorization server %s does not advertise PKCE S256 "
			  "(code_challenge_methods_supported); refusing to log in",
			  s->issuer);
		return;
	}
	iss_supported = json_object_object_get_ex(meta, "authorization_response_iss_parameter_supported", &v) &&
			json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
	json_object_object_add(s->result, PARAM_KEY_ISS_SUPPORTED, json_object_new_boolean(iss_supported));
	if (json_object_object_get_ex(meta, "token_endpoint_auth_methods_supported", &v) &&
	    json_object_is_type(v, json_type_array)) {
		methods = json_object_new_array();
		for (size_t i = 0; i < json_object_array_length(v); i++) {
			struct json_object *e = json_object_array_get_idx(v, i);

			if (json_object_is_type(e, json_type_string) && login_visible_ascii(json_object_get_string(e), 64))
				json_object_array_add(methods, json_object_new_string(json_object_get_string(e)));
		}
		json_object_object_add(s->result, PARAM_KEY_TOKEN_ENDPOINT_AUTH_METHODS, methods);
	}
	log_info("oauth: %s: authorization server metadata from %s (PKCE S256%s)", s->server, from,
		 iss_supported ? ", RFC 9207 iss" : "");
	discover_reply(s);
}

/* The authorization server metadata URLs for issuer, in the MCP order. */
static void discover_as_urls(struct step *s, CURLU *issuer)
{
	char *path = url_path_trimmed(issuer), *p;

	for (size_t i = 0; i < ARRAY_SIZE(s->urls); i++)
		s->urls[i] = (free(s->urls[i]), NULL);
	s->n_urls = s->next_url = 0;
	s->own_urls = false;
	s->tried[0] = '\0';
	if (*path) {
		if (asprintf(&p, "/.well-known/oauth-authorization-server%s", path) < 0)
			fatal("out of memory");
		s->urls[s->n_urls++] = url_with_path(issuer, p);
		free(p);
		if (asprintf(&p, "/.well-known/openid-configuration%s", path) < 0)
			fatal("out of memory");
		s->urls[s->n_urls++] = url_with_path(issuer, p);
		free(p);
		if (asprintf(&p, "%s/.well-known/openid-configuration", path) < 0)
			fatal("out of memory");
		s->urls[s->n_urls++] = url_with_path(issuer, p);
		free(p);
	} else {
		s->urls[s->n_urls++] = url_with_path(issuer, "/.well-known/oauth-authorization-server");
		s->urls[s->n_urls++] = url_with_path(issuer, "/.well-known/openid-configuration");
	}
	free(path);
}

/* RFC 9728 protected resource metadata. */
static void discover_prm(struct step *s, struct json_object *meta, const char *from)
{
	struct json_object *v, *as;
	const char *resource, *issuer;
	CURLU *issuer_url = NULL;
	struct buf scopes = { 0 };
	char why[512];

	if (!json_object_object_get_ex(meta, "resource", &v) || !json_object_is_type(v, json_type_string) ||
	    !login_visible_ascii(json_object_get_string(v), URL_MAX)) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
			  "the protected resource metadata at %s has no usable resource", from);
		return;
	}
	resource = json_object_get_string(v);
	if (!resource_covers(resource, s->mcp)) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
			  "the protected resource metadata at %s is for %s, which is not %s (RFC 9728 7.3)", from,
			  resource, s->mcp_url);
		return;
	}
	if (!json_object_object_get_ex(meta, "authorization_servers", &as) ||
	    !json_object_is_type(as, json_type_array) || json_object_array_length(as) == 0 ||
	    !json_object_is_type(json_object_array_get_idx(as, 0), json_type_string)) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
			  "the protected resource metadata at %s names no authorization server", from);
		return;
	}
	issuer = json_object_get_string(json_object_array_get_idx(as, 0));
	if (url_check(issuer, &issuer_url, why, sizeof(why)) < 0) {
		step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0, "authorization server of %s: %s", resource,
			  why);
		return;
	}
	{
		char *query = url_part(issuer_url, CURLUPART_QUERY, 0);

		if (query) {
			free(query);
			curl_url_cleanup(issuer_url);
			step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
				  "the issuer %s has a query component (RFC 8414 2)", issuer);
			return;
		}
	}
	s->issuer = xstrdup(issuer);
	json_object_object_add(s->result, PARAM_KEY_RESOURCE, json_object_new_string(resource));
	json_object_object_add(s->result, PARAM_KEY_ISSUER, json_object_new_string(issuer));

	/* The challenge's scope first (MCP scope selection), else everything
	 * the resource supports. */
	if (s->challenge->scope[0] && scope_list(s->challenge->scope)) {
		json_object_object_add(s->result, PARAM_KEY_SCOPE, json_object_new_string(s->challenge->scope));
	} else if (json_object_object_get_ex(meta, "scopes_supported", &v) && json_object_is_type(v, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(v); i++) {
			struct json_object *e = json_object_array_get_idx(v, i);

			if (!json_object_is_type(e, json_type_string) ||
			    !scope_token(json_object_get_string(e), (size_t)json_object_get_string_len(e)) ||
			    scopes.len + (size_t)json_object_get_string_len(e) + 1 > CHALLENGE_MAX_VALUE)
				continue;
			if ((scopes.len && buf_add(&scopes, " ", 1) < 0) || buf_adds(&scopes, json_object_get_string(e)) < 0)
				fatal("out of memory");
		}
		if (scopes.len)
			json_object_object_add(s->result, PARAM_KEY_SCOPE, json_object_new_string(scopes.data));
		buf_wipe(&scopes);
	}
	log_info("oauth: %s: protected resource metadata from %s: resource %s, authorization server %s", s->server,
		 from, resource, issuer);
	s->phase = DISCOVER_AS;
	discover_as_urls(s, issuer_url);
	curl_url_cleanup(issuer_url);
	discover_next(s);
}

/* One metadata document fetched (or not). */
static void discover_fetched(struct fetch *f, void *arg)
{
	struct step *s = arg;
	const char *url = s->urls[s->next_url - 1];
	const char *what = s->phase == DISCOVER_PRM ? "protected resource metadata" : "authorization server metadata";
	struct json_object *meta = NULL;
	size_t used = strlen(s->tried);

	s->fetch = NULL;
	if (f->result != CURLE_OK && !f->too_large) {
		char why[CURL_ERROR_SIZE + 64];

		fetch_describe_failure(f, why, sizeof(why));
		fetch_free(f);
		step_fail(s, KIND_TRANSIENT, LOGIN_R_NETWORK, NULL, 0, "%s from %s: %s", what, url, why);
		return;
	}
	if (f->status >= 500 || f->status == 429) {
		long status = f->status;

		fetch_free(f);
		step_fail(s, KIND_TRANSIENT, LOGIN_R_DISCOVERY, NULL, status, "%s from %s: HTTP %ld", what, url, status);
		return;
	}
	if (f->status == 200 && !f->too_large)
		meta = parse_body(&f->body);
	snprintf(s->tried + used, sizeof(s->tried) - used, "%s%s (%s%ld)", used ? ", " : "", url,
		 f->too_large ? "too large, HTTP " : f->status == 200 ? "not a JSON object, HTTP " : "HTTP ",
		 f->status);
	fetch_free(f);
	if (!meta) {
		discover_next(s);
		return;
	}
	if (s->phase == DISCOVER_PRM)
		discover_prm(s, meta, url);
	else
		discover_as(s, meta, url);
	json_object_put(meta);
}

/* Fetches the next candidate of this phase, or fails when none is left. */
static void discover_next(struct step *s)
{
	struct fetch *f;

	if (s->next_url >= s->n_urls) {
		if (s->phase == DISCOVER_PRM)
			step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
				  "no protected resource metadata for %s: %s", s->mcp_url, s->tried);
		else
			step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0,
				  "no authorization server metadata for %s: %s", s->issuer, s->tried);
		return;
	}
	f = step_fetch(s, s->phase == DISCOVER_PRM ? "the protected resource metadata" : "the authorization server metadata",
		       s->urls[s->next_url++], discover_fetched);
	f->own_origin = s->own_urls;
	if (fetch_header(f, "Accept: application/json") < 0 || fetch_start(f) < 0)
		fatal("out of memory");
	log_debug("oauth: %s: fetching %s", s->server, s->urls[s->next_url - 1]);
}

/* The first Bearer challenge among the response's WWW-Authenticate fields. */
static void discover_challenge(struct step *s, CURL *easy)
{
	struct curl_header *h;
	size_t amount = 1;

	for (size_t i = 0; i < amount; i++) {
		struct challenge_bearer *b = s->challenge;

		if (curl_easy_header(easy, "WWW-Authenticate", i, CURLH_HEADER, -1, &h) != CURLHE_OK)
			break;
		amount = h->amount;
		if (challenge_parse(h->value, strlen(h->value), b) == 0 && b->found)
			return;
	}
	memset(s->challenge, 0, sizeof(*s->challenge));
}

static void discover_probed(struct fetch *f, void *arg);

/*
 * MCP authorization: an unauthenticated request, to see the 401. Only its
 * status and headers matter, so the transfer stops after them. The first
 * is an initialize (an event stream's GET for HTTP+SSE); the second, after
 * an initialize that was let through, a tools/list on the session it
 * started (session_id, or NULL).
 */
static void discover_probe(struct step *s, const char *session_id)
{
	struct fetch *f = step_fetch(s, "the MCP server", s->mcp_url, discover_probed);

	f->headers_only = true;
	f->own_origin = true;
	for (struct curl_slist *h = s->probe_headers; h; h = h->next)
		if (fetch_header(f, h->data) < 0)
			fatal("out of memory");
	if (strcmp(s->protocol, "sse") == 0) {
		if (fetch_header(f, "Accept: text/event-stream") < 0)
			fatal("out of memory");
	} else if (s->phase == DISCOVER_PROBE) {
		if (buf_adds(&f->req, "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{"
				      "\"protocolVersion\":\"" MCP_PROBE_VERSION "\",\"capabilities\":{},"
				      "\"clientInfo\":{\"name\":\"mcpkeeper\",\"version\":\"" MCPKEEPER_VERSION
				      "\"}}}") < 0 ||
		    fetch_header(f, "Accept: application/json, text/event-stream") < 0 ||
		    fetch_header(f, "MCP-Protocol-Version: " MCP_PROBE_VERSION) < 0 ||
		    fetch_post(f, "application/json") < 0)
			fatal("out of memory");
	} else {
		char line[DISCOVER_SESSION_MAX + 32];

		if (buf_adds(&f->req, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}") < 0 ||
		    fetch_header(f, "Accept: application/json, text/event-stream") < 0 ||
		    fetch_header(f, "MCP-Protocol-Version: " MCP_PROBE_VERSION) < 0 ||
		    fetch_post(f, "application/json") < 0)
			fatal("out of memory");
		if (session_id) {
			snprintf(line, sizeof(line), "Mcp-Session-Id: %s", session_id);
			if (fetch_header(f, line) < 0)
				fatal("out of memory");
		}
	}
	if (fetch_start(f) < 0)
		fatal("out of memory");
	log_debug("oauth: %s: discovery: probing %s (%s)", s->server, s->mcp_url, s->protocol);
}

static void discover_probed(struct fetch *f, void *arg)
{
	struct step *s = arg;
	char why[512];
	long status = f->status;

	s->fetch = NULL;
	if (!fetch_answered(f)) {
		fetch_describe_failure(f, why, sizeof(why));
		fetch_free(f);
		step_fail(s, KIND_TRANSIENT, LOGIN_R_NETWORK, NULL, 0, "%s: %s", s->mcp_url, why);
		return;
	}
	if (status == 401)
		discover_challenge(s, f->easy);
	if (((status >= 200 && status < 300) || status == 400) && s->phase == DISCOVER_PROBE &&
	    strcmp(s->protocol, "sse") != 0) {
		/* Servers that let initialize through unauthenticated, or refuse
		 * it as such (2026-07-28's stateless servers may do either),
		 * challenge the first request that needs a token, and the scope
		 * the login should ask for is in that challenge: ask as a client
		 * would, on the session the server may have started. */
		struct curl_header *h = NULL;
		char *sid = NULL;

		if (curl_easy_header(f->easy, "Mcp-Session-Id", 0, CURLH_HEADER, -1, &h) == CURLHE_OK &&
		    login_visible_ascii(h->value, DISCOVER_SESSION_MAX))
			sid = xstrdup(h->value);
		fetch_free(f);
		log_info("oauth: %s: %s answered initialize with HTTP %ld; probing with tools/list", s->server, s->mcp_url,
			 status);
		s->phase = DISCOVER_PROBE2;
		discover_probe(s, sid);
		free(sid);
		return;
	}
	fetch_free(f);
	log_info("oauth: %s: %s answered HTTP %ld%s", s->server, s->mcp_url, status,
		 s->challenge->found ? " with a Bearer challenge" : status == 401 ? " without a usable challenge" : "");

	s->phase = DISCOVER_PRM;
	if (s->challenge->resource_metadata[0]) {
		/* RFC 9728 5.1: the challenge says where the metadata is. */
		if (url_check(s->challenge->resource_metadata, NULL, why, sizeof(why)) < 0) {
			step_fail(s, KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0, "resource_metadata in the 401 of %s: %s",
				  s->mcp_url, why);
			return;
		}
		CURLU *u = url_parse(s->challenge->resource_metadata);

		/* At the server's own origin, it is where the worker goes anyway. */
		s->own_urls = same_origin(u, s->mcp);
		curl_url_cleanup(u);
		s->urls[s->n_urls++] = xstrdup(s->challenge->resource_metadata);
	} else {
		/* RFC 9728 3.1: the well-known URI, path-specific first, at the
		 * server's own origin (the address check lets it be). */
		char *path = url_path_trimmed(s->mcp), *p;

		s->own_urls = true;
		if (*path) {
			if (asprintf(&p, "/.well-known/oauth-protected-resource%s", path) < 0)
				fatal("out of memory");
			s->urls[s->n_urls++] = url_with_path(s->mcp, p);
			free(p);
		}
		s->urls[s->n_urls++] = url_with_path(s->mcp, "/.well-known/oauth-protected-resource");
		free(path);
	}
	discover_next(s);
}

/* Static headers from the server's config, for the probe only: -EINVAL
 * when one is not a valid header line. */
static int discover_headers(struct step *s, struct json_object *headers)
{
	if (!headers)
		return 0;
	json_object_object_foreach(headers, name, value) {
		struct buf line = { 0 };
		struct curl_slist *l;
		const char *v;

		if (!json_object_is_type(value, json_type_string) || !*name || strlen(name) > 128)
			return -EINVAL;
		for (const char *c = name; *c; c++)
			if (!(isalnum((unsigned char)*c) || strchr("!#$%&'*+-.^_`|~", *c)))
				return -EINVAL;
		v = json_object_get_string(value);
		for (const char *c = v; *c; c++)
			if ((unsigned char)*c < 0x20 && *c != '\t')
				return -EINVAL;
		if (buf_adds(&line, name) < 0 || buf_adds(&line, ": ") < 0 || buf_adds(&line, v) < 0)
			fatal("out of memory");
		l = curl_slist_append(s->probe_headers, line.data);
		buf_wipe(&line);
		if (!l)
			fatal("out of memory");
		s->probe_headers = l;
	}
	return 0;
}

/* oauth.discover's params (common/proto.h). */
struct discover_params {
	const char *server, *url, *protocol;
	int64_t timeout_ms;
	struct json_object *headers;
};

static const struct param_spec discover_spec[] = {
	PARAM_STRING(struct discover_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct discover_params, url, PARAM_KEY_URL, PARAM_REQUIRED),
	PARAM_STRING(struct discover_params, protocol, PARAM_KEY_PROTOCOL, PARAM_REQUIRED),
	PARAM_INT(struct discover_params, timeout_ms, PARAM_KEY_TIMEOUT_MS, PARAM_REQUIRED, 1, OAUTH_MAX_TIMEOUT_MS),
	PARAM_OBJECT(struct discover_params, headers, PARAM_KEY_HEADERS, 0),
};

void discover_start(struct oauth *o, struct rpc_msg *m)
{
	_cleanup_(step_freep) struct step *s = NULL;
	struct discover_params p = { 0 };
	const char *bad = NULL;

	if (params_parse(m->params, discover_spec, ARRAY_SIZE(discover_spec), &p, &bad) < 0)
		goto bug;
	if (strcmp(p.protocol, "streamable-http") != 0 && strcmp(p.protocol, "sse") != 0) {
		bad = PARAM_KEY_PROTOCOL;
		goto bug;
	}
	s = step_new(o, m, "discovery");
	if (discover_headers(s, p.headers) < 0) {
		bad = PARAM_KEY_HEADERS;
		goto bug;
	}
	s->timeout_ms = (long)p.timeout_ms;
	s->server = xstrdup(p.server);
	s->protocol = strcmp(p.protocol, "sse") == 0 ? "sse" : "streamable-http";
	s->challenge = xcalloc(1, sizeof(*s->challenge));
	s->result = json_object_new_object();
	if (!s->result)
		fatal("out of memory");
	s->mcp = url_parse(p.url);
	if (!s->mcp) {
		char shown[DESCRIPTION_MAX + 1];

		sanitise_text(p.url, shown, sizeof(shown), DESCRIPTION_MAX);
		s->mcp_url = xstrdup(shown);
		step_fail(TAKE_PTR(s), KIND_TERMINAL, LOGIN_R_DISCOVERY, NULL, 0, "%s is not an http(s) URL", shown);
		return;
	}
	s->mcp_url = url_part(s->mcp, CURLUPART_URL, 0);
	if (!s->mcp_url)
		fatal("out of memory");

	discover_probe(s, NULL);
	step_link(TAKE_PTR(s));
	return;
bug:
	keeper_bug(o, "oauth.discover with bad params", bad);
}
