/* See token.h. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proto.h"
#include "secret.h"
#include "token.h"
#include "util.h"

#define RECORD_VERSION 1
#define FIELD_HEADER 5

enum field_kind { FIELD_STR, FIELD_INT };

struct field {
	unsigned char tag;
	enum field_kind kind;
	size_t offset;
};

static const struct field token_fields[] = {
	{ 1, FIELD_STR, offsetof(struct token, access_token) },
	{ 2, FIELD_STR, offsetof(struct token, refresh_token) },
	{ 3, FIELD_STR, offsetof(struct token, token_type) },
	{ 4, FIELD_STR, offsetof(struct token, scope) },
	{ 5, FIELD_STR, offsetof(struct token, token_endpoint) },
	{ 6, FIELD_STR, offsetof(struct token, revocation_endpoint) },
	{ 7, FIELD_STR, offsetof(struct token, resource) },
	{ 8, FIELD_STR, offsetof(struct token, issuer) },
	{ 9, FIELD_STR, offsetof(struct token, client_id) },
	{ 10, FIELD_STR, offsetof(struct token, client_secret) },
	{ 11, FIELD_STR, offsetof(struct token, auth_method) },
	{ 64, FIELD_INT, offsetof(struct token, obtained_at) },
	{ 65, FIELD_INT, offsetof(struct token, expires_at) },
	{ 66, FIELD_INT, offsetof(struct token, refused_at) },
	{ 67, FIELD_INT, offsetof(struct token, obtained_at_ms) },
	{ 68, FIELD_INT, offsetof(struct token, expires_at_ms) },
	{ 69, FIELD_INT, offsetof(struct token, intent_at_ms) },
};

static const struct field client_fields[] = {
	{ 1, FIELD_STR, offsetof(struct oauth_client, client_id) },
	{ 2, FIELD_STR, offsetof(struct oauth_client, client_secret) },
	{ 3, FIELD_STR, offsetof(struct oauth_client, auth_method) },
	{ 4, FIELD_STR, offsetof(struct oauth_client, issuer) },
	{ 64, FIELD_INT, offsetof(struct oauth_client, registered_at) },
	{ 65, FIELD_INT, offsetof(struct oauth_client, secret_expires_at) },
};

static const char **str_at(const void *rec, const struct field *f)
{
	return (const char **)((const char *)rec + f->offset);
}

static int64_t *int_at(const void *rec, const struct field *f)
{
	return (int64_t *)((char *)rec + f->offset);
}

static void put_u32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int encode(const void *rec, const struct field *fields, size_t n, struct secret **out)
{
	struct secret *s;
	size_t len = 1, off = 1;

	for (size_t i = 0; i < n; i++) {
		const char *v = *str_at(rec, &fields[i]);

		if (fields[i].kind == FIELD_INT)
			len += FIELD_HEADER + 8;
		else if (v)
			len += FIELD_HEADER + strlen(v) + 1;
	}
	s = secret_new(len);
	if (!s)
		return -ENOMEM;
	s->data[0] = RECORD_VERSION;
	for (size_t i = 0; i < n; i++) {
		const struct field *f = &fields[i];

		if (f->kind == FIELD_INT) {
			uint64_t v = (uint64_t)*int_at(rec, f);

			s->data[off] = f->tag;
			put_u32(s->data + off + 1, 8);
			for (int b = 0; b < 8; b++)
				s->data[off + FIELD_HEADER + b] = (unsigned char)(v >> (8 * b));
			off += FIELD_HEADER + 8;
		} else {
			const char *v = *str_at(rec, f);
			size_t vl;

			if (!v)
				continue;
			vl = strlen(v) + 1;
			s->data[off] = f->tag;
			put_u32(s->data + off + 1, (uint32_t)vl);
			memcpy(s->data + off + FIELD_HEADER, v, vl);
			off += FIELD_HEADER + vl;
		}
	}
	*out = s;
	return 0;
}

static const struct field *find_field(const struct field *fields, size_t n, unsigned char tag)
{
	for (size_t i = 0; i < n; i++)
		if (fields[i].tag == tag)
			return &fields[i];
	return NULL;
}

static int decode(const struct secret *plain, void *rec, const struct field *fields, size_t n)
{
	const unsigned char *p = plain->data;
	size_t len = plain->len, off = 1;

	if (len < 1 || p[0] != RECORD_VERSION)
		return -EBADMSG;
	while (off < len) {
		const struct field *f;
		uint32_t vl;

		if (len - off < FIELD_HEADER)
			return -EBADMSG;
		vl = get_u32(p + off + 1);
		f = find_field(fields, n, p[off]);
		off += FIELD_HEADER;
		if (len - off < vl)
			return -EBADMSG;
		if (!f) {
			/* A field of a newer writer: skip it. */
			off += vl;
			continue;
		}
		if (f->kind == FIELD_INT) {
			uint64_t v = 0;

			if (vl != 8)
				return -EBADMSG;
			for (int b = 0; b < 8; b++)
				v |= (uint64_t)p[off + b] << (8 * b);
			*int_at(rec, f) = (int64_t)v;
			off += 8;
		} else {
			if (vl == 0 || p[off + vl - 1] != '\0' || memchr(p + off, '\0', vl - 1))
				return -EBADMSG;
			*str_at(rec, f) = (const char *)p + off;
			off += vl;
		}
	}
	return 0;
}

/* Each token within PROTO_MAX_TOKEN: what the oauth child lets in, and
 * what a worker takes. */
static bool token_sizes_ok(const struct token *t)
{
	return strlen(t->access_token) <= PROTO_MAX_TOKEN &&
	       (!t->refresh_token || strlen(t->refresh_token) <= PROTO_MAX_TOKEN);
}

int token_encode(const struct token *t, struct secret **out)
{
	if (!t->access_token)
		return -EINVAL;
	if (!token_sizes_ok(t))
		return -EMSGSIZE;
	return encode(t, token_fields, ARRAY_SIZE(token_fields), out);
}

/* A record without the millisecond fields (written before they existed):
 * the seconds x 1000, where that fits. */
static void token_times(struct token *t)
{
	if (!t->obtained_at_ms && t->obtained_at > 0 && t->obtained_at < INT64_MAX / 1000)
		t->obtained_at_ms = t->obtained_at * 1000;
	if (!t->expires_at_ms && t->expires_at > 0 && t->expires_at < INT64_MAX / 1000)
		t->expires_at_ms = t->expires_at * 1000;
}

int token_decode(struct secret *plain, struct token *t)
{
	memset(t, 0, sizeof(*t));
	t->plain = plain;
	if (decode(plain, t, token_fields, ARRAY_SIZE(token_fields)) < 0 || !t->access_token ||
	    !token_sizes_ok(t)) {
		token_clear(t);
		return -EBADMSG;
	}
	token_times(t);
	return 0;
}

int token_view(const struct secret *plain, struct token *t)
{
	memset(t, 0, sizeof(*t));
	if (decode(plain, t, token_fields, ARRAY_SIZE(token_fields)) < 0 || !t->access_token || !token_sizes_ok(t)) {
		memset(t, 0, sizeof(*t));
		return -EBADMSG;
	}
	token_times(t);
	return 0;
}

void token_set_times(struct token *t, int64_t now_ms, int64_t expires_in)
{
	t->obtained_at_ms = now_ms;
	t->obtained_at = now_ms / 1000;
	t->expires_at_ms = expires_in > 0 ? now_ms + expires_in * 1000 : 0;
	t->expires_at = t->expires_at_ms / 1000;
}

void token_clear(struct token *t)
{
	secret_free(t->plain);
	memset(t, 0, sizeof(*t));
}

int client_encode(const struct oauth_client *c, struct secret **out)
{
	if (!c->client_id)
		return -EINVAL;
	return encode(c, client_fields, ARRAY_SIZE(client_fields), out);
}

int client_decode(struct secret *plain, struct oauth_client *c)
{
	memset(c, 0, sizeof(*c));
	c->plain = plain;
	if (decode(plain, c, client_fields, ARRAY_SIZE(client_fields)) < 0 || !c->client_id) {
		client_clear(c);
		return -EBADMSG;
	}
	return 0;
}

void client_clear(struct oauth_client *c)
{
	secret_free(c->plain);
	memset(c, 0, sizeof(*c));
}
