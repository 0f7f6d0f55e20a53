/*
 * mcpkeeper-worker: one process per upstream MCP server. It proxies MCP
 * between the clients the keeper hands it and that upstream, and holds the
 * upstream's current access token and nothing else: no refresh token, no
 * client secret, no master key, no database.
 *
 * Started by mcpkeeperd (fork+exec) with fd 3 its JSON-RPC channel to the
 * keeper and fd 4 a SOCK_SEQPACKET socket carrying client descriptors
 * (common/proto.h has the contract). The hello names the upstream and its
 * transport as the keeper assigns them; tokens arrive as token.update and
 * token.clear, and a 401 from the upstream goes back as token.invalid.
 * Each client is one upstream session (client.c; http.c for streamable
 * HTTP and HTTP+SSE, stdio.c for a command per client). One libevent loop;
 * libcurl in multi mode on it (common/net/curlev.c).
 *
 * What it may touch: fd 3, fd 4, the client sockets (and the stdin and
 * stdout that `mcpctl connect` hands over on one), stderr for logs, the
 * network, and for a stdio upstream its command. Where the kernel offers
 * Landlock an HTTP worker restricts itself to reading system paths (no
 * writes, not the state directory) as soon as the hello says what it is.
 * A stdio worker does not: Landlock would bind the command too, and what a
 * configured command needs to read and write (its own files, caches, the
 * directories a filesystem server serves) is not something the worker can
 * know. A stdio worker holds no token, and in system mode the uid keeps it
 * out of the state directory either way.
 *
 * Trust: the keeper is a sibling: a malformed or unexpected message from it
 * is a bug: log it and exit 1 (the keeper restarts us). Clients and the
 * upstream are untrusted: what they send affects only their own session.
 * Termination signals are ignored; end of stream on fd 3 ends the process.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <sodium.h>

#include "curlev.h"
#include "frame.h"
#include "entry.h"
#include "jail-view.h"
#include "log.h"
#include "params.h"
#include "proto.h"
#include "secret.h"
#include "sock.h"
#include "util.h"
#include "worker.h"

#define CHANNEL_FD CHILD_FD_CHANNEL
#define CLIENTS_FD CHILD_FD_DESCRIPTORS
/* At exit, how long DELETEs and stdio children may take to finish. */
#define STOP_GRACE_S 3
#define MAX_NAME 128
/* How long clients wait for the keeper's first word on the token. */
#define TOKEN_GRACE_S 2

static void worker_stop(struct worker *w, int code);

void worker_send(struct worker *w, struct json_object *msg)
{
	int r;

	if (!msg)
		fatal("out of memory");
	if (w->stopping || w->chan.exit_code >= 0) {
		rpc_wipe_put(msg);
		return;
	}
	r = frame_write(bufferevent_get_output(w->chan.bev), msg, PROTO_MAX_MESSAGE);
	/* token.invalid carries a token. */
	rpc_wipe_put(msg);
	if (r) {
		log_error("cannot queue a message to the keeper: %s", frame_strerror(r));
		worker_stop(w, 1);
	}
}

void worker_keeper_bug(struct worker *w, const char *what, const char *detail)
{
	log_error("keeper sent %s%s%s; exiting", what, detail ? ": " : "", detail ? detail : "");
	worker_stop(w, 1);
}

const char *worker_not_logged_in(struct worker *w, char *buf, size_t len)
{
	snprintf(buf, len, "not logged in to %s: run `mcpctl auth login --server %s`", w->name, w->name);
	return buf;
}

void worker_token_invalid(struct worker *w)
{
	struct json_object *params;

	if (w->invalid_id || !w->token)
		return;
	w->invalid_id = ++w->next_id;
	params = json_object_new_object();
	json_object_object_add(params, PARAM_KEY_ACCESS_TOKEN,
			       json_object_new_string_len((const char *)w->token->data, (int)w->token->len));
	log_info("upstream %s refused the token; asking the keeper for a new one", w->name);
	worker_send(w, rpc_request(METHOD_TOKEN_INVALID, params, w->invalid_id));
}

void worker_token_scope(struct worker *w, const char *scope, bool want_union)
{
	struct json_object *params;

	if (w->invalid_id || !w->token)
		return;	/* the answer in flight replays it; a 403 again asks again */
	w->invalid_id = ++w->next_id;
	params = json_object_new_object();
	json_object_object_add(params, PARAM_KEY_ACCESS_TOKEN,
			       json_object_new_string_len((const char *)w->token->data, (int)w->token->len));
	json_object_object_add(params, PARAM_KEY_SCOPE, json_object_new_string(scope));
	json_object_object_add(params, PARAM_KEY_SCOPE_UNION, json_object_new_boolean(want_union));
	log_info("upstream %s wants scope \"%s\" the token lacks; asking the keeper", w->name, scope);
	worker_send(w, rpc_request(METHOD_TOKEN_INVALID, params, w->invalid_id));
}

void worker_needs_login(struct worker *w)
{
	if (w->needs_login_sent)
		return;
	w->needs_login_sent = true;
	log_warn("upstream %s asks for an OAuth login, but it is configured without OAuth", w->name);
	worker_send(w, rpc_notification(METHOD_UPSTREAM_NEEDS_LOGIN, json_object_new_object()));
}

void worker_check_stop(struct worker *w)
{
	if (w->stopping && LIST_EMPTY(&w->hreqs) && LIST_EMPTY(&w->procs))
		event_base_loopbreak(w->base);
}

/* -- tokens -- */

/* The keeper has spoken about the token (or kept quiet too long): clients
 * that were held may be read now. */
static void token_known(struct worker *w)
{
	struct client *c;

	if (w->token_known)
		return;
	w->token_known = true;
	if (w->token_grace)
		evtimer_del(w->token_grace);
	LIST_FOREACH(c, &w->clients, link)
		client_start_reading(c);
}

static void token_grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	log_info("no token for %s from the keeper yet", w->name);
	token_known(w);
}

/*
 * token.update params and the token.invalid result: {access_token,
 * token_type, expires_at}. The worker uses the token alone; it must be
 * visible ASCII, as RFC 6750 has it, and at most PROTO_MAX_TOKEN long (the
 * oauth child and the store refuse longer ones before the keeper has them,
 * so a longer one is a keeper bug).
 */
struct token_params {
	const char *access_token;
};

static const struct param_spec token_spec[] = {
	PARAM_STRING(struct token_params, access_token, PARAM_KEY_ACCESS_TOKEN, PARAM_REQUIRED | PARAM_NONEMPTY),
};

static const char *token_param(struct json_object *params, size_t *len)
{
	struct token_params p = { 0 };
	const char *bad;

	if (params_parse(params, token_spec, ARRAY_SIZE(token_spec), &p, &bad) < 0)
		return NULL;
	*len = strlen(p.access_token);
	if (*len > PROTO_MAX_TOKEN)
		return NULL;
	for (size_t i = 0; i < *len; i++)
		if ((unsigned char)p.access_token[i] <= 0x20 || (unsigned char)p.access_token[i] > 0x7e)
			return NULL;
	return p.access_token;
}

/* Takes the token on; returns whether it differs from the one held. */
static bool token_set(struct worker *w, const char *token, size_t len)
{
	if (w->token && secret_equal_bytes(w->token, token, len))
		return false;
	secret_free(w->token);
	w->token = secret_from(token, len);
	if (!w->token)
		fatal("out of memory"); /* sodium_malloc: no x* for it */
	w->token_gen++;
	return true;
}

static void token_update(struct worker *w, struct rpc_msg *m)
{
	const char *token;
	size_t len;

	token = token_param(m->params, &len);
	if (!token) {
		worker_keeper_bug(w, "token.update without a usable access_token", NULL);
		return;
	}
	token_known(w);
	if (token_set(w, token, len)) {
		log_info("new access token for %s", w->name);
		w->needs_login_sent = false;
		http_token_changed(w);
	}
}

/* token.clear: logged out. */
static void token_clear(struct worker *w)
{
	char message[256];

	token_known(w);
	log_info("logged out of %s: ending upstream sessions", w->name);
	if (w->transport != TRANSPORT_STDIO)
		http_logout(w); /* DELETEs still carry the old token */
	w->token = secret_free(w->token);
	w->token_gen++;
	if (w->transport != TRANSPORT_STDIO)
		http_token_unavailable(w, worker_not_logged_in(w, message, sizeof(message)));
}

/* token.clear {}, a notification or a request: the keeper waits for the
 * answer to a request before it tells the user that the logout is done. */
static void on_token_clear(struct worker *w, struct rpc_msg *m)
{
	const char *bad;

	if (params_parse(m->params, NULL, 0, NULL, &bad) < 0) {
		worker_keeper_bug(w, "token.clear with params that are not an object", NULL);
		return;
	}
	token_clear(w);
	if (m->type == RPC_REQUEST)
		worker_send(w, rpc_result(m->id, json_object_new_object()));
}

static void token_invalid_reply(struct worker *w, struct rpc_msg *m)
{
	int64_t id = json_object_get_int64(m->id);
	bool latest = id == w->invalid_id;

	if (m->type == RPC_RESULT) {
		const char *token;
		size_t len;
		bool changed;

		token = token_param(m->result, &len);
		if (!token) {
			worker_keeper_bug(w, "a token.invalid result without a usable access_token", NULL);
			return;
		}
		changed = token_set(w, token, len);
		if (latest)
			w->invalid_id = 0;
		if (changed || latest)
			http_token_changed(w);
		return;
	}
	if (!latest)
		return; /* an older question; the latest one decides */
	w->invalid_id = 0;
	{
		char message[512];
		const char *kind = rpc_error_kind(m), *msg = rpc_error_message(m);

		if (kind && strcmp(kind, KIND_UNAVAILABLE) == 0)
			worker_not_logged_in(w, message, sizeof(message));
		else if (kind && strcmp(kind, KIND_LOGIN_REQUIRED) == 0)
			snprintf(message, sizeof(message), "%.400s", msg ? msg : "");
		else
			snprintf(message, sizeof(message), "no new token for %s: %.200s", w->name, msg ? msg : "");
		log_warn("the keeper has no new token for %s", w->name);
		http_token_unavailable(w, message);
	}
}

/* -- hello -- */

static int param_string(struct json_object *o, const char *key, const char **out)
{
	struct json_object *v;

	*out = NULL;
	if (!json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_null))
		return 0;
	if (!json_object_is_type(v, json_type_string))
		return -EINVAL;
	*out = json_object_get_string(v);
	return 0;
}

static bool printable(const char *s, size_t max)
{
	size_t len = strlen(s);

	if (len == 0 || len > max)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	return true;
}

static bool header_name_ok(const char *s)
{
	if (!*s || strlen(s) > 128)
		return false;
	for (; *s; s++)
		if (!(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z') && !(*s >= '0' && *s <= '9') &&
		    !strchr("!#$%&'*+-.^_`|~", *s))
			return false;
	return true;
}

static char **strv_new(size_t n)
{
	return xcalloc(n + 1, sizeof(char *));
}

/* The environment of a stdio command: PATH, HOME, TMPDIR and LANG from
 * ours (HOME and TMPDIR are the sandbox's), with the configured env merged
 * over them. */
static int hello_env(struct worker *w, struct json_object *env, const char **bad)
{
	static const char *const base[] = { "PATH", "HOME", "TMPDIR", "LANG" };
	size_t n = 0, cap = ARRAY_SIZE(base) + (env ? (size_t)json_object_object_length(env) : 0);

	w->envp = strv_new(cap);
	if (env) {
		json_object_object_foreach(env, key, val) {
			if (!*key || strchr(key, '=') || !json_object_is_type(val, json_type_string)) {
				*bad = "transport.env";
				return -EINVAL;
			}
			if (asprintf(&w->envp[n++], "%s=%s", key, json_object_get_string(val)) < 0)
				fatal("out of memory");
		}
	}
	for (size_t i = 0; i < ARRAY_SIZE(base); i++) {
		const char *v = getenv(base[i]);
		bool set = false;

		if (!v && strcmp(base[i], "PATH") == 0)
			v = "/usr/local/bin:/usr/bin:/bin";
		for (size_t k = 0; k < n; k++)
			if (strncmp(w->envp[k], base[i], strlen(base[i])) == 0 && w->envp[k][strlen(base[i])] == '=')
				set = true;
		if (v && !set && asprintf(&w->envp[n++], "%s=%s", base[i], v) < 0)
			fatal("out of memory");
	}
	return 0;
}

/* The transport object of the hello; -EINVAL names the bad field. */
static int hello_transport(struct worker *w, struct json_object *t, const char **bad)
{
	struct json_object *v, *headers = NULL, *args = NULL, *env = NULL;
	const char *protocol, *url, *command;

#define REQUIRE(cond, field)            \
	do {                            \
		if (!(cond)) {          \
			*bad = (field); \
			return -EINVAL; \
		}                       \
	} while (0)

	REQUIRE(json_object_is_type(t, json_type_object), "transport");
	REQUIRE(param_string(t, "protocol", &protocol) == 0 && protocol, "transport.protocol");
	if (strcmp(protocol, "streamable-http") == 0)
		w->transport = TRANSPORT_HTTP;
	else if (strcmp(protocol, "sse") == 0)
		w->transport = TRANSPORT_SSE;
	else if (strcmp(protocol, "stdio") == 0)
		w->transport = TRANSPORT_STDIO;
	else
		REQUIRE(false, "transport.protocol");

	w->timeout_ms = WORKER_DEFAULT_TIMEOUT_MS;
	if (json_object_object_get_ex(t, PARAM_KEY_REQUEST_TIMEOUT_MS, &v) && !json_object_is_type(v, json_type_null)) {
		REQUIRE(json_object_is_type(v, json_type_int) && json_object_get_int64(v) > 0 &&
				json_object_get_int64(v) <= WORKER_MAX_TIMEOUT_MS,
			"transport.request_timeout_ms");
		w->timeout_ms = (long)json_object_get_int64(v);
	}

	if (w->transport == TRANSPORT_STDIO) {
		size_t n;

		REQUIRE(param_string(t, "command", &command) == 0 && command && printable(command, 4096),
			"transport.command");
		if (json_object_object_get_ex(t, PARAM_KEY_ARGS, &args) && !json_object_is_type(args, json_type_null))
			REQUIRE(json_object_is_type(args, json_type_array), "transport.args");
		else
			args = NULL;
		n = args ? json_object_array_length(args) : 0;
		w->argv = strv_new(n + 1);
		w->argv[0] = xstrdup(command);
		for (size_t i = 0; i < n; i++) {
			v = json_object_array_get_idx(args, i);
			REQUIRE(json_object_is_type(v, json_type_string), "transport.args");
			w->argv[i + 1] = xstrdup(json_object_get_string(v));
		}
		w->command = xstrdup(command);
		if (json_object_object_get_ex(t, PARAM_KEY_ENV, &env) && !json_object_is_type(env, json_type_null))
			REQUIRE(json_object_is_type(env, json_type_object), "transport.env");
		else
			env = NULL;
		if (hello_env(w, env, bad) < 0)
			return -EINVAL;
		w->oauth = false; /* stdio servers never use OAuth */
		return 0;
	}

	REQUIRE(param_string(t, "url", &url) == 0 && url && printable(url, 8192) &&
			(strncmp(url, "http://", 7) == 0 || strncmp(url, "https://", 8) == 0) && !strchr(url, ' '),
		"transport.url");
	w->url = xstrdup(url);
	w->oauth = true;
	if (json_object_object_get_ex(t, PARAM_KEY_OAUTH, &v) && !json_object_is_type(v, json_type_null)) {
		REQUIRE(json_object_is_type(v, json_type_boolean), "transport.oauth");
		w->oauth = json_object_get_boolean(v);
	}
	if (json_object_object_get_ex(t, PARAM_KEY_HEADERS, &headers) && !json_object_is_type(headers, json_type_null)) {
		size_t n = 0;

		REQUIRE(json_object_is_type(headers, json_type_object), "transport.headers");
		w->headers = strv_new((size_t)json_object_object_length(headers));
		json_object_object_foreach(headers, key, val) {
			const char *s;

			REQUIRE(header_name_ok(key) && json_object_is_type(val, json_type_string), "transport.headers");
			s = json_object_get_string(val);
			REQUIRE(!strpbrk(s, "\r\n") && strlen(s) == (size_t)json_object_get_string_len(val),
				"transport.headers");
			if (asprintf(&w->headers[n++], "%s: %s", key, s) < 0)
				fatal("out of memory");
		}
	}
	return 0;
#undef REQUIRE
}

static const struct entry worker_entry = {
	.program = "mcpkeeper-worker",
	.role = ROLE_WORKER,
	.descriptors = true,
};

/*
 * Landlock for an HTTP worker: system paths for libraries, CA certificates
 * and name resolution, read-only (as the oauth child). A stdio worker
 * entered the sandbox the keeper described on fd CHILD_FD_JAIL before
 * anything else (main()), and its commands share it; one without a
 * sandbox runs no command.
 */
static void worker_sandbox(struct worker *w)
{
	if (w->transport == TRANSPORT_STDIO) {
		if (!w->sandbox[0])
			fatal("a stdio worker needs the keeper's sandbox description on fd %d", CHILD_FD_JAIL);
		snprintf(w->landlock, sizeof(w->landlock), "%s",
			 strcmp(w->sandbox, "landlock") == 0 ? "enforced" : "not applied: the keeper's sandbox");
		return;
	}
	if (w->sandbox[0])
		fatal("an HTTP worker got a stdio sandbox description");
	if (entry_sandbox(NULL, w->landlock, sizeof(w->landlock)) < 0)
		fatal("cannot apply the Landlock sandbox: %s", w->landlock);
}

/* Before anything is read: the sandbox, for a stdio worker (fd CHILD_FD_JAIL). */
static void worker_enter_jail(struct worker *w)
{
	char why[256];
	int r;

	if (fcntl(CHILD_FD_JAIL, F_GETFD) < 0)
		return;
	r = jail_enter_blob(CHILD_FD_JAIL, why, sizeof(why));
	if (r < 0)
		fatal("%s", why);
	snprintf(w->sandbox, sizeof(w->sandbox), "%s", jail_mechanism_name((enum jail_mechanism)r));
}

static void fd4_read_cb(evutil_socket_t fd, short what, void *arg);

struct worker_hello_params {
	const char *name;
	struct json_object *transport;
};

static const struct param_spec worker_hello_spec[] = {
	PARAM_STRING(struct worker_hello_params, name, PARAM_KEY_NAME, PARAM_REQUIRED),
	PARAM_OBJECT(struct worker_hello_params, transport, PARAM_KEY_TRANSPORT, PARAM_REQUIRED),
};

static void worker_hello(struct worker *w, struct rpc_msg *m)
{
	struct worker_hello_params p = { 0 };
	const char *bad = NULL, *name;
	char why[160], procname[64];

	if (entry_hello_check(&worker_entry, &w->chan, m) != 0)
		return;
	why[0] = '\0';
	if (params_parse(m->params, worker_hello_spec, ARRAY_SIZE(worker_hello_spec), &p, &bad) < 0 &&
	    strcmp(bad, PARAM_KEY_NAME) != 0)
		snprintf(why, sizeof(why), "bad %s", bad);
	else if (!p.name || !printable(p.name, MAX_NAME) || strchr(p.name, ' '))
		snprintf(why, sizeof(why), "a worker needs a name");
	else if (hello_transport(w, p.transport, &bad) < 0)
		snprintf(why, sizeof(why), "bad %s", bad);
	if (why[0]) {
		entry_hello_refuse(&w->chan, m, RPC_INVALID_PARAMS, KIND_INVALID_PARAMS, why);
		return;
	}
	name = p.name;
	w->name = xstrdup(name);
	/* The log's process name holds 31 characters: cut the name, keep the bracket. */
	snprintf(procname, sizeof(procname), "mcpkeeper-worker[%.13s]", name);
	log_init(procname);
	/* Before any transfer: libcurl's resolver threads inherit it. */
	worker_sandbox(w);

	{
		struct json_object *extra = NULL;

		if (w->sandbox[0]) {
			extra = json_object_new_object();
			json_object_object_add(extra, PARAM_KEY_SANDBOX, json_object_new_string(w->sandbox));
		}
		entry_hello_reply(&w->chan, m, w->landlock, extra);
	}
	w->hello_done = true;
	if (w->transport == TRANSPORT_STDIO)
		log_info("ready: stdio upstream %s, sandbox %s", w->command, w->sandbox);
	else
		log_info("ready: %s upstream %s%s, Landlock %s",
			 w->transport == TRANSPORT_HTTP ? "streamable-http" : "sse", w->url, w->oauth ? " (OAuth)" : "",
			 w->landlock);

	if (w->oauth) {
		struct timeval tv = { .tv_sec = TOKEN_GRACE_S };

		w->token_grace = evtimer_new(w->base, token_grace_cb, w);
		if (!w->token_grace || evtimer_add(w->token_grace, &tv) < 0)
			fatal("out of memory");
	}
	w->fd4_ev = event_new(w->base, CLIENTS_FD, EV_READ | EV_PERSIST, fd4_read_cb, w);
	if (!w->fd4_ev || event_add(w->fd4_ev, NULL) < 0)
		fatal("cannot watch fd %d", CLIENTS_FD);
}

/* -- the keeper channel -- */

static void worker_dispatch(struct worker *w, struct rpc_msg *m)
{
	if (!w->hello_done) {
		worker_hello(w, m);
		return;
	}
	switch (m->type) {
	case RPC_NOTIFICATION:
		if (strcmp(m->method, METHOD_TOKEN_UPDATE) == 0)
			token_update(w, m);
		else if (strcmp(m->method, METHOD_TOKEN_CLEAR) == 0)
			on_token_clear(w, m);
		else
			worker_keeper_bug(w, "an unknown notification", m->method);
		break;
	case RPC_RESULT:
	case RPC_ERROR:
		if (!json_object_is_type(m->id, json_type_int) || json_object_get_int64(m->id) <= 0 ||
		    json_object_get_int64(m->id) > w->next_id)
			worker_keeper_bug(w, "a reply to no request", NULL);
		else
			token_invalid_reply(w, m);
		break;
	case RPC_REQUEST:
		if (strcmp(m->method, METHOD_TOKEN_CLEAR) == 0) {
			on_token_clear(w, m);
			break;
		}
		worker_send(w, rpc_error(m->id, RPC_METHOD_NOT_FOUND, KIND_UNKNOWN_METHOD, "unknown method"));
		worker_keeper_bug(w, "an unknown request", m->method);
		break;
	}
}

static void stop_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	event_base_loopbreak(w->base);
}

/* End of fd 3: close every client (sessions end upstream), give the DELETEs
 * and the stdio children a moment, then go. */
static void worker_shutdown(struct worker *w)
{
	struct timeval tv = { .tv_sec = STOP_GRACE_S };

	w->stopping = true;
	if (w->chan.exit_code < 0)
		w->chan.exit_code = 0;
	if (w->fd4_ev)
		event_del(w->fd4_ev);
	/* Nobody reads what we would still write. */
	bufferevent_disable(w->chan.bev, EV_READ | EV_WRITE);
	while (!LIST_EMPTY(&w->clients)) {
		struct client *c = LIST_FIRST(&w->clients);

		client_fail_all(c, RPC_APP_ERROR, "the worker of %s is stopping", w->name);
		client_close(c, "the worker is stopping");
	}
	w->stop_timer = evtimer_new(w->base, stop_timer_cb, w);
	if (!w->stop_timer || evtimer_add(w->stop_timer, &tv) < 0)
		event_base_loopbreak(w->base);
	worker_check_stop(w);
}

static void channel_dispatch(void *ctx, struct rpc_msg *m)
{
	worker_dispatch(ctx, m);
}

static void channel_bug(void *ctx, const char *what, const char *detail)
{
	worker_keeper_bug(ctx, what, detail);
}

static void channel_closed(void *ctx, int code)
{
	struct worker *w = ctx;

	if (w->stopping)
		return;
	if (code)
		w->chan.exit_code = code;
	worker_shutdown(w);
}

static const struct channel_ops channel_ops = {
	.dispatch = channel_dispatch,
	.bug = channel_bug,
	.closed = channel_closed,
	.wipe_all = true,	/* tokens come in token.set and in token.invalid replies */
};

/* Ends the loop with code once every queued message is written. */
static void worker_stop(struct worker *w, int code)
{
	channel_stop(&w->chan, code);
}

/* -- client descriptors (fd 4) -- */

static void fd4_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	while (w->chan.exit_code < 0 && !w->stopping) {
		uint64_t number;
		unsigned flags;
		int cfd, r = sock_recv_numbered(CLIENTS_FD, 1, &number, &flags, &cfd);

		if (r == -EAGAIN || r == -EINTR)
			return;
		if (r == SOCK_END) {
			log_debug("descriptor channel closed by the keeper");
			event_del(w->fd4_ev);
			return;
		}
		if (r < 0) {
			worker_keeper_bug(w, sock_numbered_strerror(r), strerror(-r));
			return;
		}
		if (fd_set_nonblock(cfd, 1) < 0 || client_new(w, number, flags, cfd) < 0)
			fatal("cannot take on client %llu", (unsigned long long)number);
	}
}

static void sigchld_cb(evutil_socket_t fd, short what, void *arg)
{
	stdio_reap(arg);
}

/* -- start-up -- */

static void worker_free(struct worker *w)
{
	w->stopping = true;
	while (!LIST_EMPTY(&w->clients))
		client_close(LIST_FIRST(&w->clients), "the worker is stopping");
	stdio_free_all(w);
	http_abort_all(w);
	w->token = secret_free(w->token);
	curlev_free(w->curl);
	channel_close(&w->chan);
	if (w->fd4_ev)
		event_free(w->fd4_ev);
	if (w->sigchld)
		event_free(w->sigchld);
	if (w->stop_timer)
		event_free(w->stop_timer);
	if (w->token_grace)
		event_free(w->token_grace);
	event_base_free(w->base);
	free(w->name);
	free(w->url);
	free(w->command);
	for (char **v = w->headers; v && *v; v++) {
		sodium_memzero(*v, strlen(*v));
		free(*v);
	}
	free(w->headers);
	for (char **v = w->argv; v && *v; v++)
		free(*v);
	free(w->argv);
	for (char **v = w->envp; v && *v; v++)
		free(*v);
	free(w->envp);
}

int main(int argc, char **argv)
{
	struct worker w = { .chan.exit_code = -1 };

	entry_start(&worker_entry, argc, argv);
	worker_enter_jail(&w);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		fatal("libcurl initialisation failed");
	LIST_INIT(&w.token_waiters);
	LIST_INIT(&w.clients);
	LIST_INIT(&w.hreqs);
	LIST_INIT(&w.procs);
	w.base = event_base_new();
	if (!w.base)
		fatal("out of memory");
	w.curl = curlev_new(w.base, http_transfer_done, &w);
	w.sigchld = evsignal_new(w.base, SIGCHLD, sigchld_cb, &w);
	if (!w.curl || !w.sigchld || evsignal_add(w.sigchld, NULL) < 0)
		fatal("out of memory");
	if (channel_open(&w.chan, w.base, CHANNEL_FD, &channel_ops, &w) < 0)
		fatal("cannot watch fd %d", CHANNEL_FD);

	event_base_dispatch(w.base);

	worker_free(&w);
	curl_global_cleanup();
	return w.chan.exit_code < 0 ? 0 : w.chan.exit_code;
}
