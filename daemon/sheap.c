/*
 * A min-heap of servers (sheap.h), for the refresh engine. Touches nothing
 * but the heap and the position field of the servers in it.
 */
#include <sys/types.h>

#include "sheap.h"
#include "util.h"

static ssize_t *sheap_pos(const struct sheap *h, struct server *s)
{
	return (ssize_t *)((char *)s + h->pos_off);
}

static void sheap_swap(struct sheap *h, size_t a, size_t b)
{
	struct server *t = h->v[a];

	h->v[a] = h->v[b];
	h->v[b] = t;
	*sheap_pos(h, h->v[a]) = (ssize_t)a;
	*sheap_pos(h, h->v[b]) = (ssize_t)b;
}

static void sheap_up(struct sheap *h, size_t i)
{
	while (i > 0 && h->key(h->v[(i - 1) / 2]) > h->key(h->v[i])) {
		sheap_swap(h, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static void sheap_down(struct sheap *h, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, m = i;

		if (l < h->n && h->key(h->v[l]) < h->key(h->v[m]))
			m = l;
		if (l + 1 < h->n && h->key(h->v[l + 1]) < h->key(h->v[m]))
			m = l + 1;
		if (m == i)
			return;
		sheap_swap(h, i, m);
		i = m;
	}
}

void sheap_put(struct sheap *h, struct server *s)
{
	ssize_t pos = *sheap_pos(h, s);

	if (pos >= 0) {
		sheap_down(h, (size_t)pos);
		sheap_up(h, (size_t)*sheap_pos(h, s));
		return;
	}
	if (h->n == h->cap) {
		h->cap = h->cap ? h->cap * 2 : 64;
		h->v = xrealloc(h->v, h->cap * sizeof(*h->v));
	}
	h->v[h->n] = s;
	*sheap_pos(h, s) = (ssize_t)h->n++;
	sheap_up(h, h->n - 1);
}

void sheap_remove(struct sheap *h, struct server *s)
{
	ssize_t pos = *sheap_pos(h, s);
	size_t i;

	if (pos < 0)
		return;
	i = (size_t)pos;
	*sheap_pos(h, s) = -1;
	if (i != --h->n) {
		h->v[i] = h->v[h->n];
		*sheap_pos(h, h->v[i]) = (ssize_t)i;
		sheap_down(h, i);
		sheap_up(h, (size_t)*sheap_pos(h, h->v[i]));
	}
}

struct server *sheap_top(const struct sheap *h)
{
	return h->n ? h->v[0] : NULL;
}
