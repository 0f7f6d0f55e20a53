/*
 * The text/event-stream parser both HTTP transports use: bytes in, events
 * out, incrementally, as they arrive from libcurl. Lines end in LF, CR LF
 * or CR; "data" lines accumulate (joined by LF), "event" names the type,
 * comments (":") and the fields we do not use (id, retry) are skipped, and
 * an empty line dispatches. The limit bounds what one event may buffer.
 */
#include <errno.h>
#include <string.h>

#include <event2/buffer.h>

#include "worker.h"

int sse_init(struct sse *s, size_t limit)
{
	memset(s, 0, sizeof(*s));
	s->limit = limit;
	s->line = evbuffer_new();
	s->data = evbuffer_new();
	if (!s->line || !s->data) {
		sse_clear(s);
		return -ENOMEM;
	}
	return 0;
}

void sse_clear(struct sse *s)
{
	if (s->line)
		evbuffer_free(s->line);
	if (s->data)
		evbuffer_free(s->data);
	s->line = s->data = NULL;
}

static void sse_reset_event(struct sse *s)
{
	evbuffer_drain(s->data, evbuffer_get_length(s->data));
	s->event[0] = '\0';
	s->event_long = false;
	s->has_data = false;
}

static int sse_dispatch(struct sse *s, sse_event_fn fn, void *arg)
{
	size_t len = evbuffer_get_length(s->data);
	char *data;

	if (!s->has_data) {
		sse_reset_event(s);
		return 0;
	}
	/* The data buffer ends with the LF of its last line: that one goes. */
	if (len > 0)
		len--;
	if (evbuffer_add(s->data, "", 1) < 0)
		return -ENOMEM;
	data = (char *)evbuffer_pullup(s->data, -1);
	if (!data)
		return -ENOMEM;
	data[len] = '\0';
	if (!s->event_long)
		fn(arg, s->event[0] ? s->event : "message", data, len);
	sse_reset_event(s);
	return 0;
}

/* One complete line, without its end. */
static int sse_line(struct sse *s, const char *line, size_t len, sse_event_fn fn, void *arg)
{
	const char *colon, *value;
	size_t name_len, value_len;

	if (len == 0)
		return sse_dispatch(s, fn, arg);
	if (line[0] == ':')
		return 0;
	colon = memchr(line, ':', len);
	name_len = colon ? (size_t)(colon - line) : len;
	value = colon ? colon + 1 : line + len;
	value_len = len - (size_t)(value - line);
	if (value_len > 0 && value[0] == ' ') {
		value++;
		value_len--;
	}
	if (name_len == 4 && memcmp(line, "data", 4) == 0) {
		if (evbuffer_get_length(s->data) + value_len + 1 > s->limit + 1)
			return -E2BIG;
		if (evbuffer_add(s->data, value, value_len) < 0 || evbuffer_add(s->data, "\n", 1) < 0)
			return -ENOMEM;
		s->has_data = true;
	} else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
		if (value_len >= sizeof(s->event)) {
			s->event_long = true;
		} else {
			memcpy(s->event, value, value_len);
			s->event[value_len] = '\0';
			s->event_long = memchr(value, '\0', value_len) != NULL;
		}
	}
	return 0;
}

int sse_feed(struct sse *s, const char *p, size_t n, sse_event_fn fn, void *arg)
{
	while (n > 0) {
		size_t i;
		int r;

		if (s->skip_lf) {
			s->skip_lf = false;
			if (*p == '\n') {
				p++;
				n--;
				continue;
			}
		}
		for (i = 0; i < n && p[i] != '\n' && p[i] != '\r'; i++)
			;
		if (evbuffer_get_length(s->line) + i > s->limit + 64)
			return -E2BIG;
		if (i == n)
			return evbuffer_add(s->line, p, n) < 0 ? -ENOMEM : 0;
		if (evbuffer_get_length(s->line) == 0) {
			r = sse_line(s, p, i, fn, arg);
		} else {
			size_t len;
			char *line;

			if (evbuffer_add(s->line, p, i) < 0)
				return -ENOMEM;
			len = evbuffer_get_length(s->line);
			line = (char *)evbuffer_pullup(s->line, -1);
			if (!line)
				return -ENOMEM;
			r = sse_line(s, line, len, fn, arg);
			evbuffer_drain(s->line, len);
		}
		if (r < 0)
			return r;
		s->skip_lf = p[i] == '\r';
		p += i + 1;
		n -= i + 1;
	}
	return 0;
}
