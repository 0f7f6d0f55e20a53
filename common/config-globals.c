/*
 * The top-level settings of the config file (everything but mcpServers)
 * and their defaults: a config that loads is complete, so no other module
 * needs to know them (a server's own defaults are config-server.c's). What
 * the settings mean is config.h's and mcpkeeper-config(5)'s.
 *
 * Touches the config it fills, its arena, and paths.h for the default
 * directories (the user-mode runtime default may create /tmp/mcpkeeper-UID,
 * which is why the directories come last).
 */
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "config-private.h"
#include "log.h"
#include "paths.h"

#define DEFAULT_LISTEN "127.0.0.1:8080"
#define DEFAULT_OAUTH_USER "mcpkeeper-oauth"
#define DEFAULT_HTTP_USER "mcpkeeper-http"
#define DEFAULT_WORKER_USER "mcpkeeper-worker"
#define DEFAULT_IDLE_TIMEOUT 300
#define DEFAULT_MAX_CONNS_PER_UID 128
#define DEFAULT_REQUEST_TIMEOUT 60
#define DEFAULT_THRESHOLD 0.8
#define DEFAULT_MAX_RETRIES 3
#define DEFAULT_REFRESH_TIMEOUT 30
#define DEFAULT_MAX_IN_FLIGHT 16
#define DEFAULT_MIN_INTERVAL_MS 2000
/* refresh.min_interval: below 100 ms it is no floor; above an hour a
 * rejected token would keep a server unusable too long. */
#define MIN_INTERVAL_MIN_MS 100
#define MIN_INTERVAL_MAX_MS (3600 * 1000)
#define DEFAULT_HTTP_MAX_CONNECTIONS 256
#define DEFAULT_HTTP_HEADER_TIMEOUT 10

void config_globals_init(struct config *c)
{
	c->idle_timeout_sec = DEFAULT_IDLE_TIMEOUT;
	c->max_conns_per_uid = DEFAULT_MAX_CONNS_PER_UID;
	c->request_timeout_sec = DEFAULT_REQUEST_TIMEOUT;
	c->refresh = (struct config_refresh){
		.threshold = DEFAULT_THRESHOLD,
		.max_retries = DEFAULT_MAX_RETRIES,
		.timeout_sec = DEFAULT_REFRESH_TIMEOUT,
		.max_in_flight = DEFAULT_MAX_IN_FLIGHT,
		.min_interval_ms = DEFAULT_MIN_INTERVAL_MS,
	};
	config_replication_init(&c->replication);
	c->http = (struct config_http){
		.max_connections = DEFAULT_HTTP_MAX_CONNECTIONS,
		.header_timeout_sec = DEFAULT_HTTP_HEADER_TIMEOUT,
	};
}

static int refresh_parse(struct parser *p, struct json_object *root)
{
	static const char *const known[] = {
		"threshold", "max_retries", "timeout", "max_in_flight", "min_interval", "retry_after_crash", NULL,
	};
	struct config_refresh *rf = &p->c->refresh;
	struct json_object *obj, *v;
	int r;

	r = config_get_object(p, root, NULL, "refresh", &obj);
	if (r < 0 || !obj)
		return r;
	config_warn_unknown(p, obj, "refresh", known);

	if (json_object_object_get_ex(obj, "threshold", &v)) {
		bool number = json_object_is_type(v, json_type_double) ||
			      json_object_is_type(v, json_type_int);
		double t = number ? json_object_get_double(v) : 0.0;

		/* Written so that NaN, which json-c accepts, fails too. */
		if (!(t > 0.0 && t < 1.0))
			return config_fail(p, -EINVAL, "refresh.threshold",
					   "must be a number greater than 0 and less than 1");
		rf->threshold = t;
	}
	r = config_get_int(p, obj, "refresh", "max_retries", 0, 20, &rf->max_retries);
	if (r < 0)
		return r;
	r = config_get_int(p, obj, "refresh", "timeout", 1, 600, &rf->timeout_sec);
	if (r < 0)
		return r;
	r = config_get_int(p, obj, "refresh", "max_in_flight", 1, 4096, &rf->max_in_flight);
	if (r < 0)
		return r;
	r = config_get_int(p, obj, "refresh", "min_interval", MIN_INTERVAL_MIN_MS, MIN_INTERVAL_MAX_MS,
			   &rf->min_interval_ms);
	if (r < 0)
		return r;
	return config_get_bool(p, obj, "refresh", "retry_after_crash", &rf->retry_after_crash);
}

/*
 * "users": {"oauth", "http", "worker"}, each a user name, with the old
 * top-level "worker_user" read as users.worker (and a warning). Whether the
 * users exist is the keeper's to check when it starts: the file may be
 * validated on another machine.
 */
static int users_parse(struct parser *p, struct json_object *root)
{
	static const char *const known[] = { "oauth", "http", "worker", NULL };
	struct config_users *u = &p->c->users;
	struct json_object *obj;
	int r;

	r = config_get_string(p, root, NULL, "worker_user", true, &u->worker);
	if (r < 0)
		return r;
	r = config_get_object(p, root, NULL, "users", &obj);
	if (r < 0)
		return r;
	if (u->worker) {
		if (obj && json_object_object_get_ex(obj, "worker", NULL))
			return config_fail(p, -EINVAL, "worker_user",
					   "is the old name of users.worker: give only users.worker");
		log_warn("%s: worker_user: deprecated, read as users.worker", p->name);
	}
	if (obj) {
		config_warn_unknown(p, obj, "users", known);
		r = config_get_string(p, obj, "users", "oauth", true, &u->oauth);
		if (r < 0)
			return r;
		r = config_get_string(p, obj, "users", "http", true, &u->http);
		if (r < 0)
			return r;
		r = config_get_string(p, obj, "users", "worker", true, &u->worker);
		if (r < 0)
			return r;
	}
	if (!u->oauth)
		u->oauth = config_mem_strdup(p->c->mem, DEFAULT_OAUTH_USER);
	if (!u->http)
		u->http = config_mem_strdup(p->c->mem, DEFAULT_HTTP_USER);
	if (!u->worker)
		u->worker = config_mem_strdup(p->c->mem, DEFAULT_WORKER_USER);
	return 0;
}

/* The bounds keep what the http child may hold below the descriptors the
 * unit grants (LimitNOFILE= in systemd/mcpkeeper.service.in). */
static int http_parse(struct parser *p, struct json_object *root)
{
	static const char *const known[] = { "max_connections", "header_timeout", NULL };
	struct config_http *hc = &p->c->http;
	struct json_object *obj;
	int r;

	r = config_get_object(p, root, NULL, "http", &obj);
	if (r < 0 || !obj)
		return r;
	config_warn_unknown(p, obj, "http", known);
	r = config_get_int(p, obj, "http", "max_connections", 1, 1024, &hc->max_connections);
	if (r < 0)
		return r;
	return config_get_int(p, obj, "http", "header_timeout", 1, 300, &hc->header_timeout_sec);
}

/* "login": {"browser": "command" | false, "browser_on_migration": bool} */
static int login_parse(struct parser *p, struct json_object *root)
{
	static const char *const known[] = { "browser", "browser_on_migration", NULL };
	struct config_login *lc = &p->c->login;
	struct json_object *obj = NULL, *v;
	bool off = false;
	int r;

	r = config_get_object(p, root, NULL, "login", &obj);
	if (r < 0)
		return r;
	if (obj) {
		config_warn_unknown(p, obj, "login", known);
		if (json_object_object_get_ex(obj, "browser", &v) && json_object_is_type(v, json_type_boolean)) {
			if (json_object_get_boolean(v))
				return config_fail(p, -EINVAL, "login.browser",
						   "must be a command or false (true names no command)");
			off = true;
		} else {
			r = config_get_string(p, obj, "login", "browser", true, &lc->browser);
			if (r < 0)
				return r;
		}
		r = config_get_bool(p, obj, "login", "browser_on_migration", &lc->browser_on_migration);
		if (r < 0)
			return r;
	}
	if (lc->browser) {
		for (const char *c = lc->browser; *c; c++)
			if ((unsigned char)*c < 0x20 || *c == 0x7f)
				return config_fail(p, -EINVAL, "login.browser", "holds a control character");
	} else if (!off && !p->c->system_mode) {
		const char *env = getenv("BROWSER");

		if (env && *env)
			lc->browser = config_mem_strdup(p->c->mem, env);
	}
	return 0;
}

static int dir_parse(struct parser *p, struct json_object *obj, const char *key, char **out,
		     int (*fallback)(bool, char *, size_t))
{
	char buf[PATH_MAX];
	int r;

	r = config_get_string(p, obj, NULL, key, false, out);
	if (r < 0)
		return r;
	if (*out) {
		if ((*out)[0] != '/')
			return config_fail(p, -EINVAL, key, "must be an absolute path");
		return 0;
	}
	r = fallback(p->c->system_mode, buf, sizeof(buf));
	if (r == -ENOENT)
		return config_fail(p, r, key, "not set, and there is no default without HOME");
	if (r < 0)
		return config_fail(p, r, key,
				   "not set, and the default cannot be used: %s", strerror(-r));
	*out = config_mem_strdup(p->c->mem, buf);
	return 0;
}

int config_globals_parse(struct parser *p, struct json_object *root)
{
	static const char *const known[] = {
		"data_dir", "runtime_dir", "listen", "group", "users", "worker_user", "idle_timeout",
		"max_connections_per_uid", "request_timeout",
		"refresh", "http", "login", "replication", "disable_management", "mcpServers", NULL,
	};
	struct config *c = p->c;
	int r;

	config_warn_unknown(p, root, NULL, known);

	r = config_get_string(p, root, NULL, "listen", false, &c->listen);
	if (r < 0)
		return r;
	if (c->listen) {
		const char *problem = config_listen_problem(c->listen);

		if (problem)
			return config_fail(p, -EINVAL, "listen", "%s", problem);
	} else {
		c->listen = config_mem_strdup(c->mem, DEFAULT_LISTEN);
	}
	r = config_get_string(p, root, NULL, "group", true, &c->group);
	if (r < 0)
		return r;
	r = users_parse(p, root);
	if (r < 0)
		return r;
	r = config_get_int(p, root, NULL, "idle_timeout", 0, 86400, &c->idle_timeout_sec);
	if (r < 0)
		return r;
	r = config_get_int(p, root, NULL, "max_connections_per_uid", 1, 65536,
			   &c->max_conns_per_uid);
	if (r < 0)
		return r;
	r = config_get_int(p, root, NULL, "request_timeout", 1, 3600, &c->request_timeout_sec);
	if (r < 0)
		return r;
	r = config_get_bool(p, root, NULL, "disable_management", &c->disable_management);
	if (r < 0)
		return r;
	r = refresh_parse(p, root);
	if (r < 0)
		return r;
	r = http_parse(p, root);
	if (r < 0)
		return r;
	r = login_parse(p, root);
	if (r < 0)
		return r;
	r = config_replication_parse(p, root);
	if (r < 0)
		return r;
	/* The servers were converted as they were read; here is their turn to fail. */
	if (p->servers.r)
		return config_deferred_report(p, &p->servers);
	/* Last: the user-mode runtime default may create /tmp/mcpkeeper-UID. */
	r = dir_parse(p, root, "data_dir", &c->data_dir, paths_data_dir);
	if (r < 0)
		return r;
	return dir_parse(p, root, "runtime_dir", &c->runtime_dir, paths_runtime_dir);
}

