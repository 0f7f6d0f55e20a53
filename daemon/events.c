/*
 * The event bus: one payload per event, delivered to every subscriber as a
 * JSON-RPC notification `event` {type, data, timestamp, timestamp_unix}.
 * Subscribers are control connections and the http child's SSE stream;
 * events never carry token bytes (callers put names, times and error words
 * in data).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <json-c/json.h>

#include "frame.h"
#include "keeper.h"
#include "log.h"
#include "proto.h"
#include "timefmt.h"
#include "util.h"

struct sink {
	events_sink_fn fn;
	void *ctx;
};

struct events {
	struct sink *sinks;
	size_t n, cap;
};

struct events *events_new(struct keeper *k)
{
	return xcalloc(1, sizeof(struct events));
}

struct events *events_free(struct events *ev)
{
	if (ev) {
		free(ev->sinks);
		free(ev);
	}
	return NULL;
}

void events_subscribe(struct keeper *k, events_sink_fn fn, void *ctx)
{
	struct events *ev = k->events;

	if (ev->n == ev->cap) {
		ev->cap = ev->cap ? ev->cap * 2 : 8;
		ev->sinks = xrealloc(ev->sinks, ev->cap * sizeof(*ev->sinks));
	}
	ev->sinks[ev->n++] = (struct sink){ fn, ctx };
}

void events_unsubscribe(struct keeper *k, void *ctx)
{
	struct events *ev = k->events;

	for (size_t i = 0; i < ev->n;) {
		if (ev->sinks[i].ctx == ctx)
			ev->sinks[i] = ev->sinks[--ev->n];
		else
			i++;
	}
}

void events_emit(struct keeper *k, const char *type, struct json_object *data)
{
	struct events *ev = k->events;
	struct json_object *params, *note;

	params = json_object_new_object();
	json_object_object_add(params, PARAM_KEY_TYPE, json_object_new_string(type));
	json_object_object_add(params, PARAM_KEY_DATA, data ? data : json_object_new_object());
	time_json_add(params, PARAM_KEY_TIMESTAMP, PARAM_KEY_TIMESTAMP_UNIX, time_now_ms());
	note = rpc_notification(METHOD_EVENT, params);
	if (!note)
		return;
	log_debug("event %s", type);
	/* A sink may unsubscribe itself (a dead connection); walk a snapshot. */
	for (size_t i = ev->n; i > 0; i--) {
		if (i <= ev->n)
			ev->sinks[i - 1].fn(ev->sinks[i - 1].ctx, note);
	}
	json_object_put(note);
}
