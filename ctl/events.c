/*
 * mcpctl events: subscribes and prints the keeper's events, one line each
 * (--json: the event's JSON on one line), until the keeper goes away.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "ctl.h"
#include "frame.h"
#include "proto.h"
#include "util.h"

static bool events_json;

static void event_note(struct ctl *c, const struct rpc_msg *m)
{
	struct json_object *type, *data, *ts = NULL;
	char when[40] = "?";

	if (strcmp(m->method, METHOD_EVENT) != 0)
		return;
	if (events_json) {
		/* One event per line, for line-reading scripts. */
		printf("%s\n", json_object_to_json_string_ext(m->params, JSON_C_TO_STRING_PLAIN));
		fflush(stdout);
		return;
	}
	if (!json_object_object_get_ex(m->params, PARAM_KEY_TYPE, &type) ||
	    !json_object_object_get_ex(m->params, PARAM_KEY_DATA, &data))
		return;
	if (json_object_object_get_ex(m->params, PARAM_KEY_TIMESTAMP, &ts) && json_object_is_type(ts, json_type_string))
		snprintf(when, sizeof(when), "%s", json_object_get_string(ts));
	else if (ts && json_object_is_type(ts, json_type_int)) {
		time_t t = (time_t)json_object_get_int64(ts);
		struct tm tm;

		if (gmtime_r(&t, &tm))
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	}
	{
		_cleanup_(freep) char *ty = text_clean(json_object_get_string(type));

		printf("%s  %s", when, ty);
	}
	json_object_object_foreach(data, key, val) {
		_cleanup_(freep) char *k = text_clean(key), *v = text_clean(val ? json_object_get_string(val) : "null");

		printf("  %s=%s", k, v);
	}
	printf("\n");
	fflush(stdout);
}

/* Subscribes, then prints every event until the keeper goes away. */
int cmd_events(struct ctl *c, int argc, char **argv)
{
	struct rpc_msg reply = { 0 };
	_cleanup_(closep) int fd = -1;
	_cleanup_(evbuffer_freep) struct evbuffer *buf = NULL;
	bool json = false;
	int r = ctl_parse_query_opts("events", argc, argv, &json, NULL);

	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	events_json = json;
	r = ctl_find_socket(c);
	if (r)
		return r;
	signal(SIGPIPE, SIG_IGN);
	r = ctl_exchange(c, METHOD_EVENTS_SUBSCRIBE, NULL, &reply, &fd, &buf);
	if (r)
		return r;
	rpc_msg_clear(&reply);
	if (!json) {
		printf("following events from %s (Ctrl-C ends)\n", c->socket_path);
		fflush(stdout);
	}
	for (;;) {
		struct rpc_msg m = { 0 };
		char detail[256] = "";

		r = frame_read_fd(fd, buf, PROTO_MAX_MESSAGE, &m, -1, detail, sizeof(detail));
		if (r == -EPIPE || r == -ECONNRESET) {
			fprintf(stderr, "mcpctl: the keeper closed the event stream\n");
			return CTL_EXIT_UNREACHABLE;
		}
		if (r) {
			rpc_msg_clear(&m);
			fprintf(stderr, "mcpctl: malformed event from the keeper: %s\n",
				detail[0] ? detail : frame_strerror(r));
			return CTL_EXIT_PROTOCOL;
		}
		if (m.type == RPC_NOTIFICATION)
			event_note(c, &m);
		rpc_msg_clear(&m);
		if (ferror(stdout))
			return CTL_EXIT_KEEPER_ERROR;
	}
}
