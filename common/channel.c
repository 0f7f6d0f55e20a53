/* See channel.h. */
#include <errno.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "channel.h"
#include "frame.h"
#include "log.h"
#include "proto.h"

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct channel *ch = arg;

	/* Until the child stops reading: an exit, or a worker winding down. */
	while (ch->exit_code < 0 && (bufferevent_get_enabled(bev) & EV_READ)) {
		struct rpc_msg m;
		char detail[128];
		int r = frame_read(bufferevent_get_input(bev), PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			return;
		if (r != 0) {
			rpc_msg_clear(&m);
			ch->ops->bug(ch->ctx, "a malformed message", r < 0 ? strerror(-r) : detail);
			return;
		}
		ch->ops->dispatch(ch->ctx, &m);
		rpc_wipe_put(json_object_get(ch->ops->wipe_all ? m.root : m.params));
		rpc_msg_clear(&m);
	}
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct channel *ch = arg;

	/* Output drained: an exit waiting for its last message may go now. */
	if (ch->exit_code >= 0)
		event_base_loopbreak(ch->base);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct channel *ch = arg;
	int err = EVUTIL_SOCKET_ERROR();
	bool gone;

	if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
		return;
	/* A keeper that closes with our messages unread resets the stream, and
	 * one that closed before our last write breaks the pipe: both are the
	 * same end of the channel as EOF. */
	gone = (what & BEV_EVENT_EOF) || err == ECONNRESET || err == EPIPE;
	if (gone)
		log_debug("channel closed by the keeper; exiting");
	else
		log_error("channel to the keeper: %s; exiting", evutil_socket_error_to_string(err));
	bufferevent_disable(bev, EV_READ | EV_WRITE);
	if (ch->ops->closed) {
		ch->ops->closed(ch->ctx, gone ? 0 : 1);
		return;
	}
	if (!gone)
		ch->exit_code = 1;
	else if (ch->exit_code < 0)
		ch->exit_code = 0;
	event_base_loopbreak(ch->base);
}

int channel_open(struct channel *ch, struct event_base *base, int fd, const struct channel_ops *ops, void *ctx)
{
	ch->base = base;
	ch->ops = ops;
	ch->ctx = ctx;
	ch->exit_code = -1;
	ch->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!ch->bev)
		return -ENOMEM;
	frame_bev_setup(ch->bev, PROTO_MAX_MESSAGE);
	bufferevent_setcb(ch->bev, read_cb, write_cb, event_cb, ch);
	return bufferevent_enable(ch->bev, EV_READ | EV_WRITE) < 0 ? -ENOMEM : 0;
}

void channel_close(struct channel *ch)
{
	if (ch->bev)
		bufferevent_free(ch->bev);
	ch->bev = NULL;
}

void channel_stop(struct channel *ch, int code)
{
	if (ch->exit_code < 0)
		ch->exit_code = code;
	bufferevent_disable(ch->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(ch->bev)) == 0)
		event_base_loopbreak(ch->base);
}

int channel_send(struct channel *ch, struct json_object *msg)
{
	int r = msg ? frame_write(bufferevent_get_output(ch->bev), msg, PROTO_MAX_MESSAGE) : -ENOMEM;

	rpc_wipe_put(msg);
	if (r) {
		log_error("cannot queue a message to the keeper: %s", r < 0 ? strerror(-r) : frame_strerror(r));
		channel_stop(ch, 1);
		return r < 0 ? r : -EMSGSIZE;
	}
	return 0;
}
