#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "secret.h"

struct secret *secret_new(size_t len)
{
	struct secret *s;

	if (sodium_init() < 0)
		return NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	/* One byte more so that text secrets can be used as C strings. */
	s->data = sodium_malloc(len + 1);
	if (!s->data) {
		free(s);
		return NULL;
	}
	sodium_memzero(s->data, len + 1);
	s->len = len;
	return s;
}

struct secret *secret_from(const void *data, size_t len)
{
	struct secret *s = secret_new(len);

	if (s && len)
		memcpy(s->data, data, len);
	return s;
}

struct secret *secret_free(struct secret *s)
{
	if (s) {
		sodium_free(s->data); /* wipes before unmapping */
		free(s);
	}
	return NULL;
}

void secret_freep(struct secret **s)
{
	*s = secret_free(*s);
}

int secret_equal_bytes(const struct secret *a, const void *data, size_t len)
{
	if (a->len != len)
		return 0;
	if (len == 0)
		return 1;
	return sodium_memcmp(a->data, data, len) == 0;
}

int secret_equal(const struct secret *a, const struct secret *b)
{
	return secret_equal_bytes(a, b->data, b->len);
}
