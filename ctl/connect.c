/*
 * mcpctl connect NAME: what an MCP client runs as its stdio server. The
 * keeper connects us to NAME's worker; pipes and sockets are then handed to
 * the worker (SCM_RIGHTS) and mcpctl only waits for the end of the session,
 * while a terminal, a file or --bridge is relayed by bridge.c. When the
 * keeper cannot connect us, the requests the client already sent are
 * answered with an error.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "bridge.h"
#include "ctl.h"
#include "frame.h"
#include "proto.h"
#include "sock.h"
#include "util.h"

#define RELAY_LIMIT PROTO_MAX_MESSAGE

static void write_all_fd(int fd, struct evbuffer *b)
{
	while (evbuffer_get_length(b) > 0) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };

		if (evbuffer_write(b, fd) < 0 && errno != EAGAIN && errno != EINTR)
			return;
		if (evbuffer_get_length(b) > 0)
			poll(&p, 1, 1000);
	}
}

/* The keeper could not connect us: answer what the client already asked. */
static void answer_pending_stdin(const char *server, const char *why)
{
	struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
	struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
	char msg[512];

	if (!in || !out)
		return;
	snprintf(msg, sizeof(msg), "mcpkeeper: cannot connect to %s: %s", server, why);
	fd_set_nonblock(STDIN_FILENO, 1);
	while (poll(&p, 1, 100) > 0 && evbuffer_read(in, STDIN_FILENO, 65536) > 0) {
		struct rpc_msg m;

		while (frame_read(in, RELAY_LIMIT, &m, NULL, 0) != FRAME_NEED_MORE) {
			if (m.root && m.type == RPC_REQUEST) {
				struct json_object *e = rpc_error(m.id, RPC_INTERNAL_ERROR, KIND_UNAVAILABLE, msg);

				frame_write(out, e, RELAY_LIMIT);
				json_object_put(e);
			}
			rpc_msg_clear(&m);
			if (!evbuffer_get_length(in))
				break;
		}
	}
	write_all_fd(STDOUT_FILENO, out);
	evbuffer_free(in);
	evbuffer_free(out);
}

/* Pipes or sockets, which the worker can wait on; a terminal or a file is
 * bridged (and a terminal must not be made non-blocking under its shell). */
static bool stdio_can_hand_over(void)
{
	struct stat in, out;

	return fstat(STDIN_FILENO, &in) == 0 && fstat(STDOUT_FILENO, &out) == 0 &&
	       (S_ISFIFO(in.st_mode) || S_ISSOCK(in.st_mode)) && (S_ISFIFO(out.st_mode) || S_ISSOCK(out.st_mode));
}

/*
 * After the handover: nothing to relay, only the end of the session to
 * wait for. The worker says session.closed; a socket that closes without
 * it lost its worker.
 */
static int connect_wait_end(const char *server, int sock)
{
	_cleanup_(evbuffer_freep) struct evbuffer *in = evbuffer_new();
	struct json_object *v;
	struct rpc_msg m = { 0 };
	char detail[128] = "";
	int r;

	if (!in)
		ctl_out_of_memory();
	r = frame_read_fd(sock, in, 4096, &m, -1, detail, sizeof(detail));
	if (r == -EPIPE || r == -ECONNRESET) {
		fprintf(stderr, "mcpctl: connect %s: the worker closed the connection (it was killed or crashed); "
				"requests in flight were not answered\n", server);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (r < 0) {
		fprintf(stderr, "mcpctl: connect %s: %s\n", server, strerror(-r));
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (r > 0 || m.type != RPC_NOTIFICATION || strcmp(m.method, METHOD_SESSION_CLOSED) != 0 || !m.params ||
	    !json_object_object_get_ex(m.params, PARAM_KEY_CLEAN, &v) || !json_object_is_type(v, json_type_boolean)) {
		fprintf(stderr, "mcpctl: connect %s: the worker sent something other than the end of the session\n",
			server);
		rpc_msg_clear(&m);
		return CTL_EXIT_PROTOCOL;
	}
	if (json_object_get_boolean(v)) {
		rpc_msg_clear(&m);
		return CTL_EXIT_OK;
	}
	if (!json_object_object_get_ex(m.params, PARAM_KEY_REASON, &v) || !json_object_is_type(v, json_type_string))
		v = NULL;
	fprintf(stderr, "mcpctl: connect %s: the session ended: %s\n", server,
		v ? json_object_get_string(v) : "(no reason given)");
	rpc_msg_clear(&m);
	return CTL_EXIT_KEEPER_ERROR;
}

/* Gives stdin and stdout to the worker on sock (proto.h, connect). */
static int connect_hand_over(const char *server, int sock)
{
	static const unsigned char byte = CONNECT_STDIO_BYTE;
	const int fds[2] = { STDIN_FILENO, STDOUT_FILENO };
	int r = sock_send_fds(sock, fds, 2, &byte, 1), null;

	if (r < 0) {
		fprintf(stderr, "mcpctl: connect %s: cannot hand stdin and stdout to the worker: %s\n", server,
			strerror(-r));
		answer_pending_stdin(server, "its worker went away");
		return CTL_EXIT_KEEPER_ERROR;
	}
	/* Ours would hold the client's pipes open after the worker is done. */
	null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(null, STDOUT_FILENO) < 0) {
		fprintf(stderr, "mcpctl: connect %s: /dev/null: %s\n", server, strerror(errno));
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (null > STDOUT_FILENO)
		close(null);
	return connect_wait_end(server, sock);
}

int cmd_connect(struct ctl *c, int argc, char **argv)
{
	_cleanup_(closep) int sock = -1;
	_cleanup_(evbuffer_freep) struct evbuffer *early = NULL;
	struct rpc_msg reply = { 0 };
	struct json_object *params;
	bool bridge = false, hand_over;
	const char *server;
	int r;

	r = ctl_parse_name_opts("connect", argc, argv, "bridge", &bridge, &server);
	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	hand_over = !bridge && stdio_can_hand_over();
	r = ctl_find_socket(c);
	if (r) {
		answer_pending_stdin(server, "the keeper's socket cannot be found");
		return r;
	}
	params = json_object_new_object();
	json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(server));
	if (hand_over)
		json_object_object_add(params, PARAM_KEY_STDIO, json_object_new_boolean(1));
	r = ctl_exchange(c, METHOD_CONNECT, params, &reply, &sock, &early);
	if (r) {
		answer_pending_stdin(server, r == CTL_EXIT_UNREACHABLE ? "the keeper is not running"
					     : "the keeper refused the connection (see mcpctl's stderr)");
		return r;
	}
	rpc_msg_clear(&reply);
	/* From here on the keeper is out of the path: this socket is the worker's. */
	c->deadline_ms = 0;
	if (hand_over) {
		/* The worker holds its output until it has our stdout. */
		if (early && evbuffer_get_length(early) > 0) {
			fprintf(stderr, "mcpctl: connect %s: the worker wrote before it had stdout\n", server);
			return CTL_EXIT_PROTOCOL;
		}
		return connect_hand_over(server, sock);
	}
	r = bridge_run(server, sock, early);
	if (r == BRIDGE_DONE)
		return CTL_EXIT_OK;
	if (r == BRIDGE_E_PROTOCOL)
		return CTL_EXIT_PROTOCOL;
	if (r < 0)
		fprintf(stderr, "mcpctl: connect %s: %s\n", server, strerror(-r));
	return CTL_EXIT_KEEPER_ERROR;
}
