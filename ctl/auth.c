/*
 * mcpctl auth login, logout and status. A login prints the authorization
 * URL the keeper sends and opens a browser; the keeper does the rest. With
 * the keeper stopped, logout opens the store itself (the one time mcpctl
 * does): it only deletes records, and never creates a store or a master key.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "browser.h"
#include "config.h"
#include "ctl.h"
#include "frame.h"
#include "paths.h"
#include "proto.h"
#include "secret.h"
#include "store.h"

static int auth_status_print(struct json_object *result, const char *only)
{
	return status_print_servers(result, METHOD_AUTH_STATUS, false, NULL);
}

static int cmd_auth_status(struct ctl *c, int argc, char **argv)
{
	struct json_object *params = NULL;
	const char *only = NULL;
	bool json = false;
	int r = ctl_parse_query_opts("auth status", argc, argv, &json, &only);

	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	if (only) {
		params = json_object_new_object();
		json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(only));
	}
	return ctl_query(c, METHOD_AUTH_STATUS, params, json, only, auth_status_print);
}

static void login_note(struct ctl *c, const struct rpc_msg *m)
{
	struct json_object *v;
	_cleanup_(freep) char *url = NULL, *name = NULL;

	if (strcmp(m->method, METHOD_AUTH_LOGIN_URL) != 0 || !json_object_object_get_ex(m->params, PARAM_KEY_URL, &v) ||
	    !json_object_is_type(v, json_type_string))
		return;
	url = text_clean(json_object_get_string(v));
	name = text_clean(json_object_object_get_ex(m->params, PARAM_KEY_SERVER, &v) ? json_object_get_string(v) : "?");
	printf("To log in to %s, open this URL in a browser:\n\n  %s\n\n", name, url);
	fflush(stdout);
	if (c->no_browser)
		return;
	if (browser_open(getenv("BROWSER"), url) < 0) {
		const char *b = getenv("BROWSER");

		fprintf(stderr, "mcpctl: could not start a browser (%s%s); open the URL yourself\n",
			b && *b ? "BROWSER=" : "xdg-open", b && *b ? b : "");
	} else {
		printf("Opened the browser; waiting for the login to finish...\n");
		fflush(stdout);
	}
}

static int login_one(struct ctl *c, const char *server, int timeout)
{
	struct rpc_msg reply = { 0 };
	struct json_object *params = json_object_new_object();
	char when[64] = "";
	int64_t exp;
	int r;

	json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(server));
	json_object_object_add(params, PARAM_KEY_TIMEOUT, json_object_new_int(timeout));
	/* The login decides how long it may take; --timeout still bounds it. */
	if (!c->timeout_given)
		c->deadline_ms = ctl_now_ms() + ((int64_t)timeout + 30) * 1000;
	c->on_note = login_note;
	signal(SIGPIPE, SIG_IGN);
	r = ctl_exchange(c, METHOD_AUTH_LOGIN, params, &reply, NULL, NULL);
	signal(SIGPIPE, SIG_DFL);
	c->on_note = NULL;
	if (r)
		return r;
	if (field_int(reply.result, PARAM_KEY_TOKEN_EXPIRES_AT_UNIX, &exp) && exp > 0) {
		char d[32];

		duration_format(exp - (int64_t)time(NULL), d, sizeof(d));
		snprintf(when, sizeof(when), ", token expires in %s", d);
	}
	printf("%s: authenticated%s\n", server, when);
	rpc_msg_clear(&reply);
	return CTL_EXIT_OK;
}

/* Names of the OAuth servers that need a login (--all), from auth.status. */
static int login_targets(struct ctl *c, struct json_object **names)
{
	struct rpc_msg reply = { 0 };
	struct json_object *servers;
	int r;

	r = ctl_exchange(c, METHOD_AUTH_STATUS, NULL, &reply, NULL, NULL);
	if (r)
		return r;
	r = output_servers(reply.result, METHOD_AUTH_STATUS, &servers);
	if (r) {
		rpc_msg_clear(&reply);
		return r;
	}
	*names = json_object_new_array();
	for (size_t i = 0; i < json_object_array_length(servers); i++) {
		struct json_object *srv = json_object_array_get_idx(servers, i);
		const char *st = field_str(srv, PARAM_KEY_OAUTH_STATUS);

		bool enabled = true;

		if (field_bool(srv, PARAM_KEY_ENABLED, &enabled) && !enabled)
			continue;
		if (st && strcmp(st, "authenticated") == 0 && !field_child(srv, PARAM_KEY_LOGIN_REQUIRED, json_type_object)) {
			_cleanup_(freep) char *n = text_clean(field_str(srv, PARAM_KEY_NAME));

			printf("%s: already authenticated (log in again with --server %s)\n", n, n);
			continue;
		}
		json_object_array_add(*names, json_object_new_string(field_str(srv, PARAM_KEY_NAME)));
	}
	rpc_msg_clear(&reply);
	return 0;
}

struct auth_opts {
	const char *server;
	bool all, no_browser;
	int timeout;
};

/* Returns 0, CTL_HELP_SHOWN, or an exit code after saying why. */
static int parse_auth_opts(const char *cmd, int argc, char **argv, bool login, struct auth_opts *a)
{
	static const struct option opts[] = {
		{ "server", required_argument, NULL, 's' },
		{ "all", no_argument, NULL, 'a' },
		{ "no-browser", no_argument, NULL, 'n' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	double t;
	int o, li = -1;

	*a = (struct auth_opts){ .timeout = 120 };
	optind = 0;
	opterr = 0;
	while ((o = getopt_long(argc, argv, "+:hs:", opts, &li)) != -1) {
		switch (o) {
		case 's':
			a->server = optarg;
			break;
		case 'a':
			a->all = true;
			break;
		case 'n':
		case 't':
			if (!login)
				return ctl_option_misplaced(cmd, opts, li, o);
			if (o == 'n') {
				a->no_browser = true;
				break;
			}
			if (ctl_parse_timeout(optarg, &t) < 0 || t < 1 || t > 3600)
				return ctl_usage_error("%s: --timeout: '%s' is not a number of seconds from 1 to 3600",
						       cmd, optarg);
			a->timeout = (int)t;
			break;
		case 'h':
			ctl_usage(stdout);
			return CTL_HELP_SHOWN;
		default:
			return ctl_option_error(cmd, o, argc, argv);
		}
		li = -1;
	}
	if (optind < argc)
		return ctl_option_error(cmd, 0, argc, argv);
	if (!a->server == !a->all)
		return ctl_usage_error("%s: give --server NAME or --all", cmd);
	return 0;
}

static int cmd_auth_login(struct ctl *c, int argc, char **argv)
{
	struct auth_opts a;
	struct json_object *names = NULL;
	int r, worst = CTL_EXIT_OK;

	r = parse_auth_opts("auth login", argc, argv, true, &a);
	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	c->no_browser = a.no_browser;
	r = ctl_find_socket(c);
	if (r)
		return r;
	if (a.server)
		return login_one(c, a.server, a.timeout);
	r = login_targets(c, &names);
	if (r)
		return r;
	for (size_t i = 0; i < json_object_array_length(names); i++) {
		r = login_one(c, json_object_get_string(json_object_array_get_idx(names, i)), a.timeout);
		if (r == CTL_EXIT_UNREACHABLE || r == CTL_EXIT_REFUSED || r == CTL_EXIT_PROTOCOL) {
			worst = r;
			break;
		}
		if (r)
			worst = CTL_EXIT_KEEPER_ERROR;
	}
	if (!json_object_array_length(names))
		printf("no server needs a login\n");
	json_object_put(names);
	return worst;
}

static void logout_print(struct json_object *o)
{
	_cleanup_(freep) char *name = text_clean(field_str(o, PARAM_KEY_SERVER) ? field_str(o, PARAM_KEY_SERVER) : "?");
	const char *why;
	bool b, had = true, orphan = false;
	struct json_object *failed = field_child(o, PARAM_KEY_ERROR, json_type_object);

	field_bool(o, PARAM_KEY_HAD_TOKEN, &had);
	field_bool(o, PARAM_KEY_ORPHANED, &orphan);
	if (failed) {
		const char *m = field_str(failed, PARAM_KEY_MESSAGE);
		_cleanup_(freep) char *msg = text_clean(m ? m : "the token store failed");

		fprintf(stderr, "mcpctl: %s: logout failed: %s\n", name, msg);
		return;
	}
	printf("%s: %s%s\n", name, had ? "logged out" : "logged out (there was no token)",
	       orphan ? " (orphaned token deleted)" : "");
	if (field_bool(o, PARAM_KEY_REVOKED, &b)) {
		if (b) {
			printf("%s: tokens revoked at the provider\n", name);
		} else {
			const char *err = field_str(o, PARAM_KEY_REVOKE_ERROR);
			_cleanup_(freep) char *e = text_clean(err ? err : "unknown error");

			fprintf(stderr, "mcpctl: %s: warning: the provider did not revoke the token: %s "
					"(the local token is deleted)\n",
				name, e);
		}
	} else if ((why = field_str(o, PARAM_KEY_REVOCATION)) && had) {
		_cleanup_(freep) char *w = text_clean(why);

		printf("%s: revocation %s\n", name, w);
	}
}

/* ---- standalone logout: the keeper is not running ---- */

struct standalone {
	struct store *store;
	const struct config *cfg;
	int deleted, failed;
};

/* The server a token key belongs to, by name (the key is the name plus a
 * hash of the URL): true if the config still has that server at that URL,
 * false for an orphan, whose name is the key's name part. */
static bool standalone_key_name(const struct config *cfg, const char *key, char *name, size_t len)
{
	const char *hash = strrchr(key, '#');
	char skey[STORE_SERVER_KEY_MAX];

	snprintf(name, len, "%.*s", (int)(hash ? (size_t)(hash - key) : strlen(key)), key);
	for (size_t i = 0; i < cfg->n_servers; i++) {
		const struct config_server *cs = &cfg->servers[i];

		if (strcmp(cs->name, name) == 0 &&
		    store_server_key(cs->name, cs->url, skey, sizeof(skey)) == 0 && strcmp(skey, key) == 0)
			return true;
	}
	return false;
}

static int standalone_delete_all(const char *key, const struct secret *plain, int status, void *ctx)
{
	struct standalone *st = ctx;
	char name[STORE_SERVER_KEY_MAX];
	bool configured = standalone_key_name(st->cfg, key, name, sizeof(name));
	int r = store_delete(st->store, STORE_TOKENS, key);

	if (r < 0) {
		fprintf(stderr, "mcpctl: deleting the token of %s failed: %s\n", name, store_strerror(r));
		st->failed++;
	} else if (r == 0) {
		printf("%s: deleted the stored token%s\n", name, configured ? "" : " (orphaned)");
		st->deleted++;
	}
	return 0;
}

static int logout_standalone(struct ctl *c, const struct auth_opts *a)
{
	_cleanup_(config_freep) struct config *cfg = NULL;
	_cleanup_(store_closep) struct store *store = NULL;
	struct secret *key = NULL;
	struct standalone st = { 0 };
	char file[PATH_MAX], err[1024], path[PATH_MAX + 32];
	const char *creds = getenv("CREDENTIALS_DIRECTORY");
	int r;

	r = ctl_config_standalone(c, "the keeper is not running, and", &cfg, file, sizeof(file));
	if (r)
		return r;
	if (a->server) {
		const struct config_server *cs = config_find_server(cfg, a->server);

		if (cs && !cs->oauth_enabled) {
			fprintf(stderr, "mcpctl: server \"%s\" does not use OAuth (not_oauth)\n", a->server);
			return CTL_EXIT_NOT_OAUTH;
		}
		if (!cs) {
			fprintf(stderr, "mcpctl: no server named \"%s\" in %s (not_found)\n", a->server, file);
			return CTL_EXIT_NOT_FOUND;
		}
	}
	/* Never create a store (or a master key) just to find it empty. */
	snprintf(path, sizeof(path), "%s/tokens.db", cfg->data_dir);
	if (ctl_path_missing(path)) {
		printf("the keeper is not running; no token store in %s: nothing to delete\n", cfg->data_dir);
		return CTL_EXIT_OK;
	}
	if (!(creds && *creds))
		snprintf(path, sizeof(path), "%s/master.key", cfg->data_dir);
	else
		snprintf(path, sizeof(path), "%s/master-key", creds);
	if (ctl_path_missing(path)) {
		fprintf(stderr, "mcpctl: the keeper is not running, and the master key %s is missing\n", path);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (store_load_master_key(cfg->data_dir, &key, err, sizeof(err)) < 0 ||
	    (r = store_open(cfg->data_dir, key, &store, err, sizeof(err))) != 0) {
		secret_free(key);
		fprintf(stderr, "mcpctl: the keeper is not running, and its store cannot be opened: %s\n", err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	secret_free(key);
	st.store = store;
	st.cfg = cfg;
	if (a->all) {
		r = store_list_keys(store, STORE_TOKENS, standalone_delete_all, &st);
		if (r < 0) {
			fprintf(stderr, "mcpctl: listing the stored tokens failed: %s\n", store_strerror(r));
			return CTL_EXIT_KEEPER_ERROR;
		}
		printf("the keeper is not running: deleted %d stored token%s directly in %s "
		       "(not revoked at the provider)\n",
		       st.deleted, st.deleted == 1 ? "" : "s", cfg->data_dir);
		return st.failed ? CTL_EXIT_KEEPER_ERROR : CTL_EXIT_OK;
	}
	{
		const struct config_server *cs = config_find_server(cfg, a->server);
		char skey[STORE_SERVER_KEY_MAX];

		if (store_server_key(cs->name, cs->url, skey, sizeof(skey)) < 0) {
			fprintf(stderr, "mcpctl: server name too long\n");
			return CTL_EXIT_USAGE;
		}
		r = store_delete(store, STORE_TOKENS, skey);
		if (r < 0) {
			fprintf(stderr, "mcpctl: deleting the token of %s failed: %s\n", a->server, store_strerror(r));
			return CTL_EXIT_KEEPER_ERROR;
		}
		if (r == STORE_E_NOT_FOUND)
			printf("the keeper is not running; %s had no stored token\n", a->server);
		else
			printf("the keeper is not running: deleted the stored token of %s directly in %s "
			       "(not revoked at the provider)\n",
			       a->server, cfg->data_dir);
	}
	return CTL_EXIT_OK;
}

static int cmd_auth_logout(struct ctl *c, int argc, char **argv)
{
	struct rpc_msg reply = { 0 };
	struct json_object *params, *results;
	struct auth_opts a;
	int r;

	r = parse_auth_opts("auth logout", argc, argv, false, &a);
	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	r = ctl_find_socket(c);
	if (r == CTL_EXIT_UNREACHABLE)
		return logout_standalone(c, &a);
	if (r)
		return r;
	params = json_object_new_object();
	if (a.server)
		json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(a.server));
	else
		json_object_object_add(params, PARAM_KEY_ALL, json_object_new_boolean(1));
	if (!c->timeout_given)
		c->deadline_ms = ctl_now_ms() + 120 * 1000;	/* revocation may take a while */
	c->quiet_unreachable = true;
	signal(SIGPIPE, SIG_IGN);
	r = ctl_exchange(c, METHOD_AUTH_LOGOUT, params, &reply, NULL, NULL);
	signal(SIGPIPE, SIG_DFL);
	c->quiet_unreachable = false;
	if (r == CTL_EXIT_UNREACHABLE && c->keeper_absent)
		return logout_standalone(c, &a);
	if (r == CTL_EXIT_UNREACHABLE)
		return ctl_unreachable(c, c->last_error);
	if (r)
		return r;
	results = field_child(reply.result, PARAM_KEY_RESULTS, json_type_array);
	r = CTL_EXIT_OK;
	if (results) {
		for (size_t i = 0; i < json_object_array_length(results); i++) {
			struct json_object *o = json_object_array_get_idx(results, i);

			logout_print(o);
			if (field_child(o, PARAM_KEY_ERROR, json_type_object))
				r = CTL_EXIT_KEEPER_ERROR;
		}
		if (!json_object_array_length(results))
			printf("no OAuth server to log out\n");
	} else {
		logout_print(reply.result);
	}
	rpc_msg_clear(&reply);
	return r;
}

int cmd_auth(struct ctl *c, int argc, char **argv)
{
	if (argc < 2)
		return ctl_usage_error("auth needs a subcommand: login, logout or status");
	if (strcmp(argv[1], "login") == 0)
		return cmd_auth_login(c, argc - 1, argv + 1);
	if (strcmp(argv[1], "logout") == 0)
		return cmd_auth_logout(c, argc - 1, argv + 1);
	if (strcmp(argv[1], "status") == 0)
		return cmd_auth_status(c, argc - 1, argv + 1);
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		ctl_usage(stdout);
		return CTL_EXIT_OK;
	}
	return ctl_usage_error("auth: unknown subcommand '%s' (login, logout or status)", argv[1]);
}
