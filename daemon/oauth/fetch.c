/*
 * The HTTP plumbing every request of the oauth child shares: byte buffers
 * for bodies that may hold secrets (wiped whenever they move), struct
 * fetch (one libcurl easy handle in multi mode on the one libevent loop,
 * no redirects, http and https only, the response body capped at
 * OAUTH_MAX_BODY) and the checks every response body goes through before
 * anything of it reaches the keeper or a user.
 *
 * What it may touch: the network, through libcurl, and nothing else. It
 * never logs: request and response bodies may hold tokens and secrets.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>
#include <json-c/json.h>
#include <sodium.h>

#include "curlev.h"
#include "frame.h"
#include "log.h"
#include "oauth.h"
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

/* -- one HTTP transfer -- */

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

/* For headers_only: the empty line after a final response's headers stops
 * the transfer (an event stream would otherwise stay open). libcurl has
 * stored every header by then, for curl_easy_header(). */
static size_t fetch_header_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct fetch *f = arg;
	size_t n = size * nmemb;
	long status = 0;

	if ((n == 2 && p[0] == '\r' && p[1] == '\n') || (n == 1 && p[0] == '\n')) {
		curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &status);
		if (status >= 200) {
			f->headers_seen = true;
			return 0;
		}
	}
	return n;
}

struct fetch *fetch_new(struct oauth *o, const char *url, long timeout_ms, fetch_done_fn done, void *arg)
{
	struct fetch *f = calloc(1, sizeof(*f));
	CURL *e;

	if (!f)
		return NULL;
	f->o = o;
	f->done = done;
	f->arg = arg;
	e = f->easy = curl_easy_init();
	if (!e || curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK ||
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
	if (f->headers_only && (curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, fetch_header_cb) != CURLE_OK ||
				curl_easy_setopt(e, CURLOPT_HEADERDATA, f) != CURLE_OK))
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
	if (f->too_large || f->result == CURLE_FILESIZE_EXCEEDED)
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
