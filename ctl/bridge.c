/*
 * See bridge.h. The bridge is a poll() loop over three descriptors with four
 * plain buffers; per message it does one pass over the bytes (find the
 * newline, scan_message()) and one copy into the output buffer, and per wakeup
 * one read and one write, so that a request costs the client's process little
 * more than the syscalls that move it.
 *
 * Why it still looks at every line: the worker would refuse bad input too,
 * but the bridge must know each request's id to answer it when the worker
 * dies (SIGKILL, a crash, logout), and it must only count as in flight what
 * the worker will count and answer. Both follow from frame_parse_line()'s
 * verdict, which scan_message() reproduces for ordinary messages without
 * building a JSON tree; anything unusual is handed to frame_parse_line().
 *
 * MCP traffic between a client and its worker carries no OAuth token (the
 * worker adds the upstream's credentials itself), so unlike the framing
 * module the bridge does not wipe the bytes it has relayed.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "bridge.h"
#include "ctl.h"
#include "frame.h"
#include "proto.h"
#include "util.h"

#define BRIDGE_LIMIT ((size_t)PROTO_MAX_MESSAGE)
/* Read at least this much at a time; the buffers start at this size. */
#define BRIDGE_CHUNK ((size_t)64 * 1024)
/* Queued for one side before the other side is no longer read. */
#define BRIDGE_BACKLOG (4 * BRIDGE_LIMIT)

static const char too_large_detail[] = "message longer than the limit";

/* ---- requests in flight: a multiset of ids, open addressing ---- */

struct flight {
	uint64_t hash;
	uint32_t count;		/* 0: a free slot */
	size_t len;		/* of the key: tag, then the id's bytes */
	char *heap;		/* the key when it does not fit in short_key */
	char short_key[40];
};

struct flights {
	struct flight *slots;
	size_t n_slots;		/* a power of two */
	size_t n_keys;		/* slots in use */
	size_t n_requests;	/* sum of the counts */
};

static uint64_t id_hash(const struct scan_id *id)
{
	uint64_t h = (0xcbf29ce484222325ull ^ (unsigned char)id->tag) * 0x100000001b3ull;

	for (size_t i = 0; i < id->len; i++)
		h = (h ^ (unsigned char)id->bytes[i]) * 0x100000001b3ull;
	return h;
}

static const char *flight_key(const struct flight *f)
{
	return f->heap ? f->heap : f->short_key;
}

static bool flight_is(const struct flight *f, uint64_t h, const struct scan_id *id)
{
	const char *k = flight_key(f);

	return f->hash == h && f->len == id->len + 1 && k[0] == id->tag && memcmp(k + 1, id->bytes, id->len) == 0;
}

static void flights_grow(struct flights *fl)
{
	size_t n = fl->n_slots ? 2 * fl->n_slots : 16;
	struct flight *slots = calloc(n, sizeof(*slots));

	if (!slots)
		ctl_out_of_memory();
	for (size_t i = 0; i < fl->n_slots; i++) {
		size_t j;

		if (!fl->slots[i].count)
			continue;
		for (j = fl->slots[i].hash & (n - 1); slots[j].count; j = (j + 1) & (n - 1))
			;
		slots[j] = fl->slots[i];
	}
	free(fl->slots);
	fl->slots = slots;
	fl->n_slots = n;
}

static void flights_add(struct flights *fl, const struct scan_id *id)
{
	uint64_t h = id_hash(id);
	struct flight *f;
	size_t i;
	char *k;

	if (2 * (fl->n_keys + 1) > fl->n_slots)
		flights_grow(fl);
	for (i = h & (fl->n_slots - 1); fl->slots[i].count; i = (i + 1) & (fl->n_slots - 1)) {
		if (flight_is(&fl->slots[i], h, id)) {
			fl->slots[i].count++;
			fl->n_requests++;
			return;
		}
	}
	f = &fl->slots[i];
	f->hash = h;
	f->count = 1;
	f->len = id->len + 1;
	f->heap = NULL;
	if (f->len > sizeof(f->short_key)) {
		f->heap = malloc(f->len);
		if (!f->heap)
			ctl_out_of_memory();
	}
	k = f->heap ? f->heap : f->short_key;
	k[0] = id->tag;
	memcpy(k + 1, id->bytes, id->len);
	fl->n_keys++;
	fl->n_requests++;
}

/* One request with this id is answered; false when none was in flight. */
static bool flights_take(struct flights *fl, const struct scan_id *id)
{
	uint64_t h = id_hash(id);
	size_t mask = fl->n_slots - 1, i, j;

	if (!fl->n_keys)
		return false;
	for (i = h & mask; !flight_is(&fl->slots[i], h, id); i = (i + 1) & mask)
		if (!fl->slots[i].count)
			return false;
	fl->n_requests--;
	if (--fl->slots[i].count)
		return true;
	free(fl->slots[i].heap);
	fl->n_keys--;
	/* Close the gap so that every key stays reachable from its home slot. */
	for (j = (i + 1) & mask; fl->slots[j].count; j = (j + 1) & mask) {
		size_t home = fl->slots[j].hash & mask;

		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			fl->slots[i] = fl->slots[j];
			i = j;
		}
	}
	memset(&fl->slots[i], 0, sizeof(fl->slots[i]));
	return true;
}

static void flights_free(struct flights *fl)
{
	for (size_t i = 0; i < fl->n_slots; i++)
		free(fl->slots[i].heap);
	free(fl->slots);
	memset(fl, 0, sizeof(*fl));
}

/* The JSON of a key, for an error reply (NULL: the JSON null). */
static struct json_object *flight_id_json(const struct flight *f)
{
	const char *k = flight_key(f);
	struct json_object *id;

	switch (k[0]) {
	case 's':
		id = json_object_new_string_len(k + 1, (int)(f->len - 1));
		break;
	case 'i': {
		/* Digits, at most uint64's: json-c reads them back as it wrote them. */
		char digits[32];

		snprintf(digits, sizeof(digits), "%.*s", (int)(f->len - 1), k + 1);
		id = json_tokener_parse(digits);
		break;
	}
	default:
		return NULL;
	}
	if (!id)
		ctl_out_of_memory();
	return id;
}

/* ---- buffers ---- */

struct buf {
	char *data;
	size_t off, len, cap;	/* pending bytes are data[off, len) */
};

static size_t buf_pending(const struct buf *b)
{
	return b->len - b->off;
}

/* Room for more bytes at the end: compacts first, grows when that is not enough. */
static void buf_reserve(struct buf *b, size_t more)
{
	size_t cap;
	char *p;

	if (b->off == b->len)
		b->off = b->len = 0;
	if (b->cap - b->len >= more)
		return;
	if (b->off) {
		memmove(b->data, b->data + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
		if (b->cap - b->len >= more)
			return;
	}
	for (cap = b->cap ? b->cap : BRIDGE_CHUNK; cap - b->len < more; cap *= 2)
		;
	p = realloc(b->data, cap);
	if (!p)
		ctl_out_of_memory();
	b->data = p;
	b->cap = cap;
}

static void buf_add_line(struct buf *b, const char *line, size_t len)
{
	buf_reserve(b, len + 1);
	memcpy(b->data + b->len, line, len);
	b->data[b->len + len] = '\n';
	b->len += len + 1;
}

static void buf_drop(struct buf *b)
{
	b->off = b->len = 0;
}

static void buf_free(struct buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

/* Reads once into b: the count, 0 at the end, -1 with errno. */
static ssize_t buf_read(struct buf *b, int fd)
{
	ssize_t n;

	/* A partial line is at most BRIDGE_LIMIT bytes here (a longer one has been
	 * refused), so b never grows past 2 * BRIDGE_LIMIT. */
	buf_reserve(b, BRIDGE_CHUNK);
	do
		n = read(fd, b->data + b->len, b->cap - b->len);
	while (n < 0 && errno == EINTR);
	if (n > 0)
		b->len += (size_t)n;
	return n;
}

/*
 * Writes what b holds: 0 when done or when fd would block (*blocked), else
 * -errno. A socket gets MSG_NOSIGNAL; for stdout, bridge_run() ignores SIGPIPE.
 */
static int buf_write(struct buf *b, int fd, bool is_socket, bool *blocked)
{
	*blocked = false;
	while (b->off < b->len) {
		ssize_t n = is_socket ? send(fd, b->data + b->off, b->len - b->off, MSG_NOSIGNAL)
				      : write(fd, b->data + b->off, b->len - b->off);

		if (n > 0) {
			b->off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			*blocked = true;
			return 0;
		}
		return n < 0 ? -errno : -EPIPE;
	}
	buf_drop(b);
	return 0;
}

/* Until b is written out to stdout or that fails; for the last words before exit. */
static void buf_write_all(struct buf *b, int fd)
{
	bool blocked;

	while (buf_write(b, fd, false, &blocked) == 0 && blocked) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };

		poll(&p, 1, 1000);
	}
}

/* ---- the relay ---- */

struct bridge {
	const char *server;
	int sock;
	struct buf from_client, to_sock, from_sock, to_client;
	/* Bytes of the partial line at the front of from_* already searched for a newline. */
	size_t client_searched, sock_searched;
	struct flights flights;
	bool client_eof;	/* stdin ended */
	bool skipping;		/* dropping the rest of a client line over the limit */
	bool sock_eof;		/* the worker's side ended or broke the framing */
	bool sock_broken;	/* writing to the worker failed: what is left for it is dropped */
	bool sock_shut;		/* our sending side is shut down (the client ended) */
	bool sock_blocked, client_blocked;	/* the last write would have blocked */
	bool client_gone;	/* stdout is closed */
};

static void bridge_reply(struct bridge *b, struct json_object *msg)
{
	const char *s;
	size_t len;

	if (!msg)
		ctl_out_of_memory();
	s = json_object_to_json_string_length(msg, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	if (!s)
		ctl_out_of_memory();
	buf_add_line(&b->to_client, s, len);
	json_object_put(msg);
}

/* A line the bridge refuses: the framing module's error, with the id when one could be read. */
static void bridge_refuse_line(struct bridge *b, int status, const char *detail, struct json_object *id)
{
	struct json_object *e = rpc_error_for_frame(status, detail);

	if (e && id)
		json_object_object_add(e, "id", json_object_get(id));
	bridge_reply(b, e);
}

/* One line from the client: len counts a trailing '\r' (frame_parse_line() drops it). */
static void bridge_client_line(struct bridge *b, const char *line, size_t len)
{
	size_t body = len > 0 && line[len - 1] == '\r' ? len - 1 : len;
	struct scan_msg l;
	struct scan_id id;
	struct rpc_msg m;
	char detail[160] = "";
	int r;

	if (body == 0)
		return;
	if (scan_message(line, body, &l) == 0) {
		if (l.type == RPC_REQUEST)
			flights_add(&b->flights, &l.id);
		buf_add_line(&b->to_sock, line, body);
		return;
	}
	r = frame_parse_line(line, len, &m, detail, sizeof(detail));
	if (r < 0)
		ctl_out_of_memory();
	if (r > 0) {
		bridge_refuse_line(b, r, detail, m.id);
	} else {
		if (m.type == RPC_REQUEST) {
			scan_id_of(m.id, &id);
			flights_add(&b->flights, &id);
		}
		buf_add_line(&b->to_sock, line, body);
	}
	rpc_msg_clear(&m);
}

/* One line from the worker; BRIDGE_E_PROTOCOL when it is not a message (the
 * worker broke the framing). */
static int bridge_sock_line(struct bridge *b, const char *line, size_t len)
{
	size_t body = len > 0 && line[len - 1] == '\r' ? len - 1 : len;
	struct scan_msg l;
	struct scan_id id;
	struct rpc_msg m;
	int r;

	if (body == 0)
		return 0;
	if (scan_message(line, body, &l) == 0) {
		if (l.type == RPC_RESULT || l.type == RPC_ERROR)
			flights_take(&b->flights, &l.id);
		buf_add_line(&b->to_client, line, body);
		return 0;
	}
	r = frame_parse_line(line, len, &m, NULL, 0);
	if (r < 0)
		ctl_out_of_memory();
	if (r > 0) {
		rpc_msg_clear(&m);
		fprintf(stderr, "mcpctl: connect %s: the worker sent a malformed message (%s)\n", b->server,
			frame_strerror(r));
		return BRIDGE_E_PROTOCOL;
	}
	if (m.type == RPC_RESULT || m.type == RPC_ERROR) {
		scan_id_of(m.id, &id);
		flights_take(&b->flights, &id);
	}
	buf_add_line(&b->to_client, line, body);
	rpc_msg_clear(&m);
	return 0;
}

/*
 * Handles every complete line in from the client's side: a line over the
 * limit is answered with an error and dropped up to its newline (the
 * connection goes on).
 */
static void bridge_client_lines(struct bridge *b)
{
	struct buf *in = &b->from_client;

	for (;;) {
		size_t avail = buf_pending(in), len;
		char *start, *nl;

		if (avail == 0)
			return;
		start = in->data + in->off;
		if (b->skipping) {
			nl = memchr(start, '\n', avail);
			if (!nl) {
				buf_drop(in);
				return;
			}
			in->off += (size_t)(nl - start) + 1;
			b->skipping = false;
			continue;
		}
		nl = avail > b->client_searched ? memchr(start + b->client_searched, '\n', avail - b->client_searched)
						: NULL;
		if (!nl) {
			b->client_searched = avail;
			if (avail > BRIDGE_LIMIT) {
				bridge_refuse_line(b, FRAME_E_TOO_LARGE, too_large_detail, NULL);
				buf_drop(in);
				b->client_searched = 0;
				b->skipping = true;
			}
			return;
		}
		b->client_searched = 0;
		len = (size_t)(nl - start);
		in->off += len + 1;
		if (len > BRIDGE_LIMIT)
			bridge_refuse_line(b, FRAME_E_TOO_LARGE, too_large_detail, NULL);
		else
			bridge_client_line(b, start, len);
	}
}

/* Every complete line from the worker: 0, or BRIDGE_E_PROTOCOL when it
 * broke the framing. */
static int bridge_sock_lines(struct bridge *b)
{
	struct buf *in = &b->from_sock;

	for (;;) {
		size_t avail = buf_pending(in), len;
		char *start, *nl;

		if (avail == 0)
			return 0;
		start = in->data + in->off;
		nl = avail > b->sock_searched ? memchr(start + b->sock_searched, '\n', avail - b->sock_searched) : NULL;
		if (!nl) {
			b->sock_searched = avail;
			if (avail > BRIDGE_LIMIT) {
				fprintf(stderr, "mcpctl: connect %s: the worker sent a malformed message (%s)\n",
					b->server, frame_strerror(FRAME_E_TOO_LARGE));
				return BRIDGE_E_PROTOCOL;
			}
			return 0;
		}
		b->sock_searched = 0;
		len = (size_t)(nl - start);
		in->off += len + 1;
		if (len > BRIDGE_LIMIT) {
			fprintf(stderr, "mcpctl: connect %s: the worker sent a malformed message (%s)\n", b->server,
				frame_strerror(FRAME_E_TOO_LARGE));
			return BRIDGE_E_PROTOCOL;
		}
		if (bridge_sock_line(b, start, len))
			return BRIDGE_E_PROTOCOL;
	}
}

static void bridge_read_client(struct bridge *b)
{
	ssize_t n = buf_read(&b->from_client, STDIN_FILENO);

	if (n > 0) {
		bridge_client_lines(b);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return;
	/* The end of the client's input (a read error ends it just the same). */
	b->client_eof = true;
	if (buf_pending(&b->from_client) > 0 && !b->skipping)
		fprintf(stderr, "mcpctl: connect %s: the client's input ended inside a message (%zu bytes without "
				"a newline); it was dropped\n",
			b->server, buf_pending(&b->from_client));
	buf_drop(&b->from_client);
}

static void bridge_read_sock(struct bridge *b)
{
	ssize_t n = buf_read(&b->from_sock, b->sock);

	if (n > 0) {
		if (bridge_sock_lines(b))
			b->sock_eof = true;
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return;
	b->sock_eof = true;
}

static void bridge_flush_sock(struct bridge *b)
{
	int r = 0;

	if (!b->sock_broken && buf_pending(&b->to_sock) && !b->sock_blocked)
		r = buf_write(&b->to_sock, b->sock, true, &b->sock_blocked);
	if (r < 0) {
		/* The worker is gone. Its last answers may still wait to be read:
		 * the end of the stream comes after them. */
		b->sock_broken = true;
		if (r != -EPIPE && r != -ECONNRESET)
			b->sock_eof = true;
	}
	if (b->sock_broken)
		buf_drop(&b->to_sock);
	if (b->client_eof && !b->sock_shut && !buf_pending(&b->to_sock)) {
		/* The worker answers what is in flight, then closes. */
		shutdown(b->sock, SHUT_WR);
		b->sock_shut = true;
	}
}

static void bridge_flush_client(struct bridge *b)
{
	if (buf_pending(&b->to_client) && !b->client_blocked &&
	    buf_write(&b->to_client, STDOUT_FILENO, false, &b->client_blocked) < 0)
		b->client_gone = true;
}

/* The worker side went away: every request still in flight gets an error. */
static void bridge_fail_in_flight(struct bridge *b, const char *why)
{
	char msg[256];

	snprintf(msg, sizeof(msg), "mcpkeeper: the connection to %s was lost (%s); retry", b->server, why);
	for (size_t i = 0; i < b->flights.n_slots; i++) {
		const struct flight *f = &b->flights.slots[i];

		for (uint32_t n = 0; n < f->count; n++) {
			struct json_object *id = flight_id_json(f);

			bridge_reply(b, rpc_error(id, RPC_INTERNAL_ERROR, KIND_UNAVAILABLE, msg));
			json_object_put(id);
		}
	}
}

static int bridge_loop(struct bridge *b)
{
	while (!b->sock_eof) {
		struct pollfd p[3] = {
			{ .fd = -1, .events = POLLIN },
			{ .fd = b->sock, .events = 0 },
			{ .fd = -1, .events = POLLOUT },
		};

		/* Do not read more of one side than the other side can take. */
		if (!b->client_eof && buf_pending(&b->to_sock) <= BRIDGE_BACKLOG)
			p[0].fd = STDIN_FILENO;
		if (buf_pending(&b->to_client) <= BRIDGE_BACKLOG)
			p[1].events |= POLLIN;
		if (buf_pending(&b->to_sock))
			p[1].events |= POLLOUT;
		if (buf_pending(&b->to_client))
			p[2].fd = STDOUT_FILENO;
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
			bridge_read_client(b);
		if (p[1].revents & (POLLIN | POLLHUP | POLLERR))
			bridge_read_sock(b);
		if (p[1].revents & (POLLOUT | POLLHUP | POLLERR))
			b->sock_blocked = false;
		if (p[2].revents & (POLLOUT | POLLHUP | POLLERR))
			b->client_blocked = false;
		/* Written at once: a poll for POLLOUT only after a write would have blocked. */
		bridge_flush_sock(b);
		bridge_flush_client(b);
		if (b->client_gone || (p[2].revents & (POLLHUP | POLLERR)))
			return BRIDGE_DONE; /* the MCP client is gone */
	}
	if (b->flights.n_requests > 0 || !b->client_eof) {
		bridge_fail_in_flight(b, "the worker closed the connection");
		buf_write_all(&b->to_client, STDOUT_FILENO);
		fprintf(stderr, "mcpctl: connect %s: the worker closed the connection\n", b->server);
		return BRIDGE_E_LOST;
	}
	buf_write_all(&b->to_client, STDOUT_FILENO);
	return BRIDGE_DONE;
}

int bridge_run(const char *server, int sock, struct evbuffer *early)
{
	struct bridge b = { .server = server, .sock = sock };
	void (*old_pipe)(int);
	int r;

	fd_set_nonblock(STDIN_FILENO, 1);
	fd_set_nonblock(STDOUT_FILENO, 1);
	fd_set_nonblock(sock, 1);
	/* A client that closed its stdout is seen as EPIPE, not as a signal that kills mcpctl. */
	old_pipe = signal(SIGPIPE, SIG_IGN);
	if (early && evbuffer_get_length(early) > 0) {
		size_t n = evbuffer_get_length(early);

		buf_reserve(&b.from_sock, n);
		evbuffer_remove(early, b.from_sock.data + b.from_sock.len, n);
		b.from_sock.len += n;
	}
	if (bridge_sock_lines(&b))
		r = BRIDGE_E_PROTOCOL;
	else
		r = bridge_loop(&b);
	signal(SIGPIPE, old_pipe);
	buf_free(&b.from_client);
	buf_free(&b.to_sock);
	buf_free(&b.from_sock);
	buf_free(&b.to_client);
	flights_free(&b.flights);
	return r;
}
