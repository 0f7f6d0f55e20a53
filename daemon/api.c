/*
 * The keeper's side of the http child (mcpkeeper-http): the REST API, the
 * event stream, the web UI and MCP over HTTP, on loopback.
 *
 * The child parses every byte of HTTP; the keeper only starts it, tells it
 * where to listen and which API key to require, and gives it control
 * connections: on control.connect the keeper makes a pair of connected Unix
 * sockets, keeps one end as a control client with its own credentials and
 * passes the other on the child's descriptor channel. Through those the
 * child asks exactly what mcpctl asks, and an MCP-over-HTTP session is
 * handed to a worker by the same `connect` that mcpctl uses.
 *
 * The listening socket is the keeper's: bound once (or taken from systemd,
 * the socket named "http") and handed to every http child it starts, so a
 * restart of the child or a reload keeps the address, a port 0 picked by
 * the kernel included. Only a reload that changes "listen" binds anew.
 *
 * The API key is generated at the first start and kept sealed in the store
 * (the clients database, key "api-key"), so it survives restarts; mcpctl
 * status shows the web UI's address with the key in the URL fragment.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>
#include <sodium.h>

#include "config.h"
#include "frame.h"
#include "keeper.h"
#include "listen.h"
#include "log.h"
#include "params.h"
#include "paths.h"
#include "proto.h"
#include "secret.h"
#include "store.h"
#include "util.h"

#define API_KEY_RECORD "api-key"
#define API_KEY_BYTES 32

/* The stored key, or a new one stored now. */
static int api_key_load(struct keeper *k)
{
	unsigned char raw[API_KEY_BYTES];
	char text[sodium_base64_ENCODED_LEN(API_KEY_BYTES, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
	struct secret *plain = NULL;
	int r;

	r = store_get(k->store, STORE_CLIENTS, API_KEY_RECORD, &plain);
	if (r == 0 && plain->len >= 32) {
		k->api_key = plain;
		return 0;
	}
	secret_free(plain);
	if (r != 0 && r != STORE_E_NOT_FOUND && !(r == -EAGAIN && store_is_group(k->store)))
		log_warn("the stored API key is unusable (%s); generating a new one", store_strerror(r));
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2base64(text, sizeof(text), raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	sodium_memzero(raw, sizeof(raw));
	plain = secret_from(text, strlen(text));
	sodium_memzero(text, sizeof(text));
	if (!plain)
		return -ENOMEM;
	r = store_put(k->store, STORE_CLIENTS, API_KEY_RECORD, plain);
	if (r != 0 && store_is_group(k->store)) {
		/* A replica, or a site with no master yet: the key of this run
		 * only (the master's stored one is read at the next start). */
		log_warn("the HTTP API key cannot be stored here now (%s); using one for this run only",
			 store_strerror(r));
		k->api_key = plain;
		return 0;
	}
	if (r != 0) {
		secret_free(plain);
		log_error("storing the API key failed: %s", store_strerror(r));
		return r < 0 ? r : -EIO;
	}
	log_info("generated the HTTP API key (mcpctl status shows the web UI address with it)");
	k->api_key = plain;
	return 0;
}

static bool is_dir(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The web UI's files: paths_ui_dir() (the build tree's for a keeper run
 * from the tree, the installed data directory otherwise). 0 or
 * -ENAMETOOLONG. */
static int ui_dir_find(char **dir)
{
	char path[PATH_MAX];
	int r = paths_ui_dir(path, sizeof(path));

	if (r < 0)
		return r;
	*dir = xstrdup(path);
	return 0;
}

/* The socket every http child gets: systemd's, or bound here for the
 * config's listen, again only when that changes. A new address that
 * cannot be bound leaves the old one in use. 0, or a negative errno value. */
static int api_listen(struct keeper *k)
{
	char host[64];
	int port, bound, fd;

	if (k->http_fd >= 0 && (!k->http_listen_conf || strcmp(k->http_listen_conf, k->cfg->listen) == 0))
		return 0;
	if (listen_parse(k->cfg->listen, host, sizeof(host), &port) < 0)
		return -EINVAL;
	fd = listen_open(host, port, &bound);
	if (fd < 0 && k->http_fd >= 0) {
		log_error("cannot listen on %s: %s; the HTTP API stays on %s", k->cfg->listen, strerror(-fd),
			  k->http_listen);
		free(k->http_listen_conf);
		k->http_listen_conf = xstrdup(k->cfg->listen);	/* said once */
		return 0;
	}
	if (fd < 0)
		return fd;
	fd_close(k->http_fd);
	k->http_fd = fd;
	free(k->http_listen_conf);
	k->http_listen_conf = xstrdup(k->cfg->listen);
	listen_format(host, bound, k->http_listen, sizeof(k->http_listen));
	return 0;
}

int api_adopt_socket(struct keeper *k, int fd)
{
	char host[64];
	int port, r = listen_describe(fd, host, sizeof(host), &port);

	if (r < 0) {
		log_error("socket activation: the socket named \"http\" is not a listening TCP socket on "
			  "127.0.0.1 or ::1 (%s); binding the configured listen address instead", strerror(-r));
		close(fd);
		return r;
	}
	k->http_fd = fd;
	listen_format(host, port, k->http_listen, sizeof(k->http_listen));
	log_info("HTTP socket from systemd: %s (the configured listen is not used)", k->http_listen);
	return 0;
}

static int api_listen_fd(struct child *c, void *ctx, char *why, size_t len)
{
	struct keeper *k = ctx;
	int r = api_listen(k);

	if (r < 0) {
		snprintf(why, len, "cannot listen on %s: %s", k->cfg->listen, strerror(-r));
		return r;
	}
	return k->http_fd;
}

static void api_hello(struct child *c, void *ctx, struct json_object *params)
{
	struct keeper *k = ctx;

	json_object_object_add(params, PARAM_KEY_LISTEN, json_object_new_string(k->http_listen));
	json_object_object_add(params, PARAM_KEY_API_KEY,
			       json_object_new_string_len((const char *)k->api_key->data, (int)k->api_key->len));
	json_object_object_add(params, PARAM_KEY_UI_DIR, json_object_new_string(k->ui_dir));
	json_object_object_add(params, PARAM_KEY_MANAGEMENT, json_object_new_boolean(!k->cfg->disable_management));
	json_object_object_add(params, PARAM_KEY_MAX_CONNECTIONS, json_object_new_int(k->cfg->http.max_connections));
	json_object_object_add(params, PARAM_KEY_HEADER_TIMEOUT_MS,
			       json_object_new_int64((int64_t)k->cfg->http.header_timeout_sec * 1000));
}

static void api_hello_result(struct child *c, void *ctx, struct json_object *result)
{
	struct keeper *k = ctx;
	struct json_object *v;

	k->http_port = 0;
	if (json_object_object_get_ex(result, PARAM_KEY_PORT, &v))
		k->http_port = json_object_get_int(v);
	if (k->http_port <= 0 || k->http_port > 65535) {
		log_error("http child reported no port");
		k->http_port = 0;
		return;
	}
	log_info("HTTP API and web UI on %s", k->http_listen);
}

static void api_lost(struct child *c, void *ctx)
{
	struct keeper *k = ctx;

	k->http_port = 0;
}

/* control.connect {}: one more control connection for the child, up to
 * API_CONTROL_CONNS_MAX at once: each costs the keeper a descriptor, and a
 * compromised child must not be able to take them all. Past the cap the
 * child gets an error and no descriptor. Anything else the child sends is
 * a bug (-EPROTO: the keeper restarts it). */
static int api_message(struct child *c, void *ctx, struct rpc_msg *m)
{
	struct keeper *k = ctx;
	struct json_object *res;
	const char *bad;
	uint64_t number;
	int sv[2], r;

	if (m->type != RPC_REQUEST || strcmp(m->method, METHOD_CONTROL_CONNECT) != 0 ||
	    params_parse(m->params, NULL, 0, NULL, &bad) < 0)
		return -EPROTO;
	if (control_internal_conns(k->control) >= API_CONTROL_CONNS_MAX) {
		char why[160];

		if (!k->http_cap_warned)
			log_warn("http child: control.connect refused: it holds %d control connections, the most it may",
				 API_CONTROL_CONNS_MAX);
		k->http_cap_warned = true;
		snprintf(why, sizeof(why),
			 "too many control connections: the http child holds %d, the most it may; close one first",
			 API_CONTROL_CONNS_MAX);
		child_reply(c, m->id, NULL, rpc_error(m->id, RPC_APP_ERROR, KIND_UNAVAILABLE, why));
		return 0;
	}
	k->http_cap_warned = false;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		log_warn("http child: control.connect: %m");
		child_reply(c, m->id, NULL,
			    rpc_error(m->id, RPC_APP_ERROR, KIND_UNAVAILABLE, "cannot create a socket pair"));
		return 0;
	}
	r = control_adopt(k->control, sv[0]);
	if (r < 0) {
		close(sv[1]);
		log_warn("http child: control.connect: %s", strerror(-r));
		child_reply(c, m->id, NULL,
			    rpc_error(m->id, RPC_APP_ERROR, KIND_UNAVAILABLE, "cannot add a control connection"));
		return 0;
	}
	number = ++k->http_next_number;
	res = json_object_new_object();
	json_object_object_add(res, PARAM_KEY_NUMBER, json_object_new_int64((int64_t)number));
	child_reply(c, m->id, res, NULL);
	r = child_send_fd(c, number, sv[1]);
	close(sv[1]);
	if (r < 0)
		log_warn("http child: passing a control connection failed: %s", strerror(-r));
	return 0;
}

static const struct child_ops api_ops = {
	.hello = api_hello,
	.hello_result = api_hello_result,
	.lost = api_lost,
	.message = api_message,
	.desc_channel = true,
	.listen_fd = api_listen_fd,
};

int api_start(struct keeper *k)
{
	int r;

	if (!k->api_key) {
		r = api_key_load(k);
		if (r < 0)
			return r;
	}
	if (!k->ui_dir) {
		r = ui_dir_find(&k->ui_dir);
		if (r < 0)
			return r;
		if (!is_dir(k->ui_dir))
			log_warn("web UI files not found in %s (set MCPKEEPER_UI_DIR); the API works without them",
				 k->ui_dir);
	}
	if (!k->http) {
		k->http = child_new(k, ROLE_HTTP, CHILD_HTTP_BIN, &api_ops, k);
		if (!k->http)
			return -ENOMEM;
	}
	r = child_start(k->http);
	if (r < 0)
		log_error("http child did not start; retrying with backoff");
	return 0;
}

void api_stop(struct keeper *k)
{
	k->http = child_free(k->http);
	k->http_port = 0;
	k->http_fd = fd_close(k->http_fd);
	free(k->http_listen_conf);
	k->http_listen_conf = NULL;
	k->api_key = secret_free(k->api_key);
	free(k->ui_dir);
	k->ui_dir = NULL;
}

void api_config_changed(struct keeper *k, const struct config *old)
{
	if (!k->http || !old)
		return;
	if (strcmp(old->listen, k->cfg->listen) == 0 && old->disable_management == k->cfg->disable_management &&
	    old->http.max_connections == k->cfg->http.max_connections &&
	    old->http.header_timeout_sec == k->cfg->http.header_timeout_sec)
		return;
	if (strcmp(old->listen, k->cfg->listen) != 0 && !k->http_listen_conf && k->http_fd >= 0)
		log_warn("listen changed to %s, but the HTTP socket is systemd's: it stays %s", k->cfg->listen,
			 k->http_listen);
	log_info("HTTP API settings changed; restarting the http child");
	child_stop(k->http);
	k->http_port = 0;
	if (child_start(k->http) < 0)
		log_error("http child did not start; retrying with backoff");
}

/* "127.0.0.1:PORT" or "[::1]:PORT" with the bound port. */
static void api_authority(const struct keeper *k, char *buf, size_t len)
{
	snprintf(buf, len, "%s", k->http_listen);
}

struct json_object *api_status_json(const struct keeper *k)
{
	struct json_object *o = json_object_new_object();
	char auth[96], url[128];

	json_object_object_add(o, PARAM_KEY_STATE, json_object_new_string(k->http ? child_state_name(k->http) : "stopped"));
	json_object_object_add(o, PARAM_KEY_PID,
			       k->http && child_pid(k->http) > 0 ? json_object_new_int(child_pid(k->http)) : NULL);
	if (k->http_port) {
		api_authority(k, auth, sizeof(auth));
		snprintf(url, sizeof(url), "http://%s/", auth);
		json_object_object_add(o, PARAM_KEY_URL, json_object_new_string(url));
	} else {
		json_object_object_add(o, PARAM_KEY_URL, NULL);
	}
	return o;
}

struct json_object *api_web_ui_url(const struct keeper *k)
{
	char auth[96], url[256];

	if (!k->http_port || !k->api_key)
		return NULL;
	api_authority(k, auth, sizeof(auth));
	/* The key travels in the fragment: browsers never send it. */
	snprintf(url, sizeof(url), "http://%s/#key=%.*s", auth, (int)k->api_key->len, (const char *)k->api_key->data);
	return json_object_new_string(url);
}
