/*
 * The HTTP plumbing every request of the oauth child shares: byte buffers
 * for bodies that may hold secrets (wiped whenever they move), struct
 * fetch (one libcurl easy handle in multi mode on the one libevent loop,
 * no redirects, http and https only, the response body capped at
 * OAUTH_MAX_BODY) and the checks every response body goes through before
 * anything of it reaches the keeper or a user.
 *
 * Every connection a fetch opens is checked first (CURLOPT_OPENSOCKETFUNCTION)
 * against its server's address policy (common/proto.h): the address libcurl
 * is about to connect to, after resolution, not the host name. A refused
 * one never gets a socket; the fetch then fails with why. Through the
 * environment's proxy (proxy.c) the connection is the proxy's, which the
 * administrator chose, and the proxy resolves the name: the policy then
 * judges the URL's host as written, as the keeper judges a server's URL.
 *
 * What it may touch: the network, through libcurl, and nothing else. It
 * never logs: request and response bodies may hold tokens and secrets.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <curl/curl.h>
#include <json-c/json.h>
#include <sodium.h>

#include "curlev.h"
#include "frame.h"
#include "log.h"
#include "oauth.h"
#include "params.h"
#include "proto.h"

/* -- buffers -- */

void buf_wipe(struct buf *b)
{
	if (b->data) {
		sodium_memzero(b->data, b->cap);
		free(b->data);
	}
	memset(b, 0, sizeof(*b));
}

/* Makes room for more bytes plus a NUL; a move wipes the old copy (no realloc). */
int buf_reserve(struct buf *b, size_t more)
{
	size_t cap;
	char *data;

	if (b->cap - b->len > more)
		return 0;
	cap = b->cap ? b->cap : 256;
	while (cap - b->len <= more) {
		if (cap > SIZE_MAX / 2)
			return -ENOMEM;
		cap *= 2;
	}
	data = malloc(cap);
	if (!data)
		return -ENOMEM;
	if (b->data) {
		memcpy(data, b->data, b->len);
		sodium_memzero(b->data, b->cap);
		free(b->data);
	}
	b->data = data;
	b->cap = cap;
	b->data[b->len] = '\0';
	return 0;
}

int buf_add(struct buf *b, const void *p, size_t n)
{
	if (buf_reserve(b, n) < 0)
		return -ENOMEM;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

int buf_adds(struct buf *b, const char *s)
{
	return buf_add(b, s, strlen(s));
}

/* application/x-www-form-urlencoded serialisation of one value (WHATWG URL,
 * as RFC 6749 appendix B asks): unreserved bytes as they are, space as '+',
 * everything else percent-encoded. */
int buf_add_form_encoded(struct buf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";

	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		char enc[3];
		int r;

		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
		    *p == '*' || *p == '-' || *p == '.' || *p == '_') {
			r = buf_add(b, p, 1);
		} else if (*p == ' ') {
			r = buf_add(b, "+", 1);
		} else {
			enc[0] = '%';
			enc[1] = hex[*p >> 4];
			enc[2] = hex[*p & 0xf];
			r = buf_add(b, enc, 3);
		}
		if (r < 0)
			return r;
	}
	return 0;
}

int form_add(struct buf *form, const char *key, const char *value)
{
	if ((form->len && buf_add(form, "&", 1) < 0) || buf_adds(form, key) < 0 || buf_add(form, "=", 1) < 0)
		return -ENOMEM;
	return buf_add_form_encoded(form, value);
}

/* -- transfers -- */

static size_t fetch_write_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct fetch *f = arg;
	size_t n = size * nmemb;

	if (n > OAUTH_MAX_BODY - f->body.len) {
		f->too_large = true;
		return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
	}
	if (buf_add(&f->body, p, n) < 0)
		return 0;
	return n;
}

/* The empty line after a final response's headers: for headers_only it
 * stops the transfer (an event stream would otherwise stay open); libcurl
 * has stored every header by then, for curl_easy_header(). A document that
 * comes as an event stream (a server that answers every GET with one)
 * stops it too: it would never end, and it is no document. */
static size_t fetch_header_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct fetch *f = arg;
	size_t n = size * nmemb;
	long status = 0;

	if ((n == 2 && p[0] == '\r' && p[1] == '\n') || (n == 1 && p[0] == '\n')) {
		curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &status);
		if (status >= 200 && f->headers_only) {
			f->headers_seen = true;
			return 0;
		}
		if (status >= 200) {
			char *type = NULL;

			curl_easy_getinfo(f->easy, CURLINFO_CONTENT_TYPE, &type);
			if (type && strncasecmp(type, "text/event-stream", 17) == 0) {
				f->event_stream = true;
				return 0;
			}
		}
	}
	return n;
}

/* -- the address policy -- */

struct policy_params {
	const char *server, *server_address;
	bool allow_private, allow_insecure_http;
};

static const struct param_spec policy_spec[] = {
	PARAM_STRING(struct policy_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_STRING(struct policy_params, server_address, PARAM_KEY_SERVER_ADDRESS, 0),
	PARAM_BOOL(struct policy_params, allow_private, PARAM_KEY_ALLOW_PRIVATE_ENDPOINTS, 0),
	PARAM_BOOL(struct policy_params, allow_insecure_http, PARAM_KEY_ALLOW_INSECURE_HTTP, 0),
};

int policy_note(struct oauth *o, struct rpc_msg *m, const char **bad)
{
	struct policy_params p = { 0 };
	enum addr_class c;
	struct policy *pol;

	if (!json_object_object_get_ex(m->params, PARAM_KEY_SERVER_ADDRESS, NULL))
		return 0;
	if (params_parse(m->params, policy_spec, ARRAY_SIZE(policy_spec), &p, bad) < 0)
		return -EINVAL;
	if (addr_class_parse(p.server_address, &c) < 0) {
		*bad = PARAM_KEY_SERVER_ADDRESS;
		return -EINVAL;
	}
	for (pol = o->policies; pol; pol = pol->next)
		if (strcmp(pol->server, p.server) == 0)
			break;
	if (!pol) {
		pol = xcalloc(1, sizeof(*pol));
		pol->server = xstrdup(p.server);
		pol->next = o->policies;
		o->policies = pol;
	}
	pol->server_class = c;
	pol->allow_private = p.allow_private;
	pol->allow_insecure_http = p.allow_insecure_http;
	return 0;
}

const struct policy *policy_of(const struct oauth *o, const char *server)
{
	static const struct policy strict = { .server_class = ADDR_PUBLIC };

	for (const struct policy *pol = o->policies; pol; pol = pol->next)
		if (server && strcmp(pol->server, server) == 0)
			return pol;
	return &strict;
}

void policy_free_all(struct oauth *o)
{
	while (o->policies) {
		struct policy *pol = o->policies;

		o->policies = pol->next;
		free(pol->server);
		free(pol);
	}
}

/* Whether class c may be connected to under pol (proto.h): NULL, or what
 * to tell the user. */
static const char *policy_refuses(const struct policy *pol, enum addr_class c)
{
	switch (c) {
	case ADDR_PUBLIC:
		return NULL;
	case ADDR_LOOPBACK:
	case ADDR_PRIVATE:
	case ADDR_LINK_LOCAL:
		if (c == pol->server_class || pol->allow_private)
			return NULL;
		return "set oauth.allow_private_endpoints for an identity provider on an internal network";
	case ADDR_RESERVED:
		if (pol->allow_private)
			return NULL;
		return "set oauth.allow_private_endpoints if it really is one of your networks";
	default:
		return "never a destination";
	}
}

static curl_socket_t fetch_open_socket(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
	struct fetch *f = arg;
	enum addr_class c = addr_class_sockaddr(&a->addr, a->addrlen);
	const char *why = NULL, *what = f->purpose ? f->purpose : "an OAuth request";
	char text[INET6_ADDRSTRLEN] = "?";
	int fd;

	(void)purpose;
	if (f->proxied) {
		c = f->host_class;
		snprintf(text, sizeof(text), "the host of its URL");
	} else if (a->family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)&a->addr)->sin_addr, text, sizeof(text));
	else if (a->family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)&a->addr)->sin6_addr, text, sizeof(text));

	if (f->plain_http && !f->policy.allow_insecure_http && c != ADDR_LOOPBACK) {
		/* The first refusal is the one worth telling (of several addresses). */
		if (!f->refused[0])
			snprintf(f->refused, sizeof(f->refused),
				 "refusing plain http to %s (%s) for %s: it would travel in clear; use https, or "
				 "set allow_insecure_http for this server",
				 text, addr_class_name(c), what);
		return CURL_SOCKET_BAD;
	}
	if (!f->own_origin && (why = policy_refuses(&f->policy, c)) != NULL) {
		if (!f->refused[0])
			snprintf(f->refused, sizeof(f->refused),
				 "refusing to connect to %s (%s) for %s: the MCP server's own address is %s; %s", text,
				 addr_class_name(c), what, addr_class_name(f->policy.server_class), why);
		return CURL_SOCKET_BAD;
	}
	fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
	return fd < 0 ? CURL_SOCKET_BAD : fd;
}

/* -- one HTTP transfer -- */

struct fetch *fetch_new(struct oauth *o, const char *server, const char *purpose, const char *url, long timeout_ms,
			fetch_done_fn done, void *arg)
{
	struct fetch *f = calloc(1, sizeof(*f));
	const char *proxy, *host;
	size_t host_len;
	bool https;
	CURL *e;

	if (!f)
		return NULL;
	f->o = o;
	f->done = done;
	f->arg = arg;
	f->purpose = purpose;
	f->policy = *policy_of(o, server);
	f->policy.next = NULL;
	f->policy.server = NULL;
	f->plain_http = strncasecmp(url, "http://", 7) == 0;
	proxy = proxy_for_url(url);
	if (proxy && addr_url_host(url, &host, &host_len, &https) == 0) {
		f->proxied = true;
		f->host_class = addr_class_host(host, host_len);
	}
	e = f->easy = curl_easy_init();
	/* The proxy chosen here or none (libcurl must not pick another one),
	 * and no reuse (a connection one server's policy allowed is not
	 * another's). */
	if (!e || curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_PROXY, f->proxied ? proxy : "") != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, fetch_open_socket) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, f) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, OAUTH_CONNECT_TIMEOUT_S) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)OAUTH_MAX_BODY) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_USERAGENT, "mcpkeeper/" MCPKEEPER_VERSION) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, fetch_write_cb) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_WRITEDATA, f) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, f->errbuf) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_PRIVATE, f) != CURLE_OK)
		return fetch_free(f);
	return f;
}

int fetch_header(struct fetch *f, const char *line)
{
	struct curl_slist *l = curl_slist_append(f->headers, line);

	if (!l)
		return -ENOMEM;
	f->headers = l;
	return 0;
}

int fetch_post(struct fetch *f, const char *content_type)
{
	char line[96];

	snprintf(line, sizeof(line), "Content-Type: %s", content_type);
	/* An empty body until fetch_start() hands libcurl f->req: never stdin. */
	if (fetch_header(f, line) < 0 || fetch_header(f, "Expect:") < 0 ||
	    curl_easy_setopt(f->easy, CURLOPT_POSTFIELDS, "") != CURLE_OK ||
	    curl_easy_setopt(f->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0) != CURLE_OK)
		return -ENOMEM;
	return 0;
}

/* Basic credentials of RFC 6749 2.3.1: both parts form-urlencoded first. */
static int fetch_basic_auth(struct fetch *f, const char *client_id, const char *client_secret)
{
	struct buf cred = { 0 }, header = { 0 };
	size_t b64_len;
	int ret = -ENOMEM;

	if (buf_add_form_encoded(&cred, client_id) < 0 || buf_add(&cred, ":", 1) < 0 ||
	    buf_add_form_encoded(&cred, client_secret) < 0)
		goto out;
	b64_len = sodium_base64_ENCODED_LEN(cred.len, sodium_base64_VARIANT_ORIGINAL);
	if (buf_adds(&header, "Authorization: Basic ") < 0 || buf_reserve(&header, b64_len) < 0)
		goto out;
	sodium_bin2base64(header.data + header.len, b64_len, (const unsigned char *)cred.data, cred.len,
			  sodium_base64_VARIANT_ORIGINAL);
	ret = fetch_header(f, header.data);
out:
	buf_wipe(&cred);
	buf_wipe(&header);
	return ret;
}

int fetch_client_auth_check(const char *auth_method, const char *client_secret, const char **bad)
{
	if (strcmp(auth_method, "none") != 0 && strcmp(auth_method, "client_secret_basic") != 0 &&
	    strcmp(auth_method, "client_secret_post") != 0) {
		*bad = PARAM_KEY_AUTH_METHOD;
		return -EINVAL;
	}
	if (strcmp(auth_method, "none") != 0 && !client_secret) {
		*bad = PARAM_KEY_CLIENT_SECRET;
		return -EINVAL;
	}
	return 0;
}

int fetch_client_auth(struct fetch *f, const char *auth_method, const char *client_id, const char *client_secret)
{
	if (strcmp(auth_method, "client_secret_basic") == 0)
		return fetch_basic_auth(f, client_id, client_secret);
	if (form_add(&f->req, "client_id", client_id) < 0)
		return -ENOMEM;
	if (strcmp(auth_method, "client_secret_post") == 0 && form_add(&f->req, "client_secret", client_secret) < 0)
		return -ENOMEM;
	return 0;
}

int fetch_start(struct fetch *f)
{
	CURL *e = f->easy;

	/* The body and the header list are final only now. */
	if (curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->headers) != CURLE_OK)
		return -ENOMEM;
	if (f->req.data && (curl_easy_setopt(e, CURLOPT_POSTFIELDS, f->req.data) != CURLE_OK ||
			    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)f->req.len) != CURLE_OK))
		return -ENOMEM;
	if (curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, fetch_header_cb) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_HEADERDATA, f) != CURLE_OK)
		return -ENOMEM;
	if (curl_multi_add_handle(curlev_multi(f->o->curl), e) != CURLM_OK)
		fatal("curl_multi_add_handle failed");
	return 0;
}

struct fetch *fetch_free(struct fetch *f)
{
	if (!f)
		return NULL;
	if (f->easy) {
		curl_multi_remove_handle(curlev_multi(f->o->curl), f->easy);
		curl_easy_cleanup(f->easy);
	}
	for (struct curl_slist *h = f->headers; h; h = h->next)
		sodium_memzero(h->data, strlen(h->data));
	curl_slist_free_all(f->headers);
	buf_wipe(&f->req);
	buf_wipe(&f->body);
	free(f);
	return NULL;
}

bool fetch_answered(const struct fetch *f)
{
	return f->result == CURLE_OK || (f->headers_only && f->headers_seen);
}

void fetch_describe_failure(const struct fetch *f, char *out, size_t len)
{
	if (f->refused[0])
		snprintf(out, len, "%s", f->refused);
	else if (f->event_stream)
		snprintf(out, len, "answered with an event stream instead of a document");
	else if (f->too_large || f->result == CURLE_FILESIZE_EXCEEDED)
		snprintf(out, len, "response larger than %d bytes", OAUTH_MAX_BODY);
	else if (f->result == CURLE_OPERATION_TIMEDOUT)
		snprintf(out, len, "timed out: %s", f->errbuf[0] ? f->errbuf : curl_easy_strerror(f->result));
	else
		snprintf(out, len, "network error: %s", f->errbuf[0] ? f->errbuf : curl_easy_strerror(f->result));
}

/* -- response bodies -- */

/* RFC 6749 5.2: error = 1*( %x20-21 / %x23-5B / %x5D-7E ). Anything else is
 * not an OAuth error code and is neither logged nor passed on. */
const char *oauth_error_of(struct json_object *obj)
{
	struct json_object *e;
	const char *s;
	size_t len;

	if (!json_object_is_type(obj, json_type_object) || !json_object_object_get_ex(obj, "error", &e) ||
	    !json_object_is_type(e, json_type_string))
		return NULL;
	s = json_object_get_string(e);
	len = (size_t)json_object_get_string_len(e);
	if (len == 0 || len > OAUTH_ERROR_MAX)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
			return NULL;
	}
	return s;
}

/* Token values travel back to the keeper as JSON strings: only visible ASCII
 * (RFC 6749's VSCHAR), so nothing a provider sends can break the framing. */
bool vschar_string(struct json_object *v, bool allow_empty)
{
	const char *s;
	size_t len;

	if (!json_object_is_type(v, json_type_string))
		return false;
	s = json_object_get_string(v);
	len = (size_t)json_object_get_string_len(v);
	if (len == 0 && !allow_empty)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

void sanitise_text(const char *s, char *out, size_t len, size_t max_chars)
{
	size_t n = 0, i;

	if (len == 0)
		return;
	if (max_chars > len - 1)
		max_chars = len - 1;
	for (i = 0; s && s[i] && n < max_chars; i++) {
		unsigned char c = (unsigned char)s[i];

		out[n++] = c >= 0x20 && c <= 0x7e ? (char)c : '?';
	}
	if (s && s[i] && max_chars >= 3)
		memcpy(out + max_chars - 3, "...", 3);
	out[n] = '\0';
}

/* The response body as a JSON object, or NULL. */
struct json_object *parse_body(const struct buf *body)
{
	struct json_tokener *tok;
	struct json_object *obj;
	size_t end;

	if (body->len == 0)
		return NULL;
	tok = json_tokener_new();
	if (!tok)
		return NULL;
	obj = json_tokener_parse_ex(tok, body->data, (int)body->len);
	end = json_tokener_get_parse_end(tok);
	if (obj && json_tokener_get_error(tok) == json_tokener_success) {
		/* Only whitespace may follow the object. */
		for (size_t i = end; i < body->len; i++) {
			if (!strchr(" \t\r\n", body->data[i])) {
				rpc_wipe_put(obj);
				obj = NULL;
				break;
			}
		}
	} else if (obj) {
		rpc_wipe_put(obj);
		obj = NULL;
	}
	json_tokener_free(tok);
	if (obj && !json_object_is_type(obj, json_type_object)) {
		rpc_wipe_put(obj);
		obj = NULL;
	}
	return obj;
}
