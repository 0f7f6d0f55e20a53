/*
 * mcpkeeperd: the keeper's command line. keeper.c is the process itself;
 * --check validates a configuration and the store without starting it.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "config.h"
#include "keeper.h"
#include "log.h"
#include "paths.h"
#include "secret.h"
#include "store.h"

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: mcpkeeperd [--config FILE] [--system] [--verbose] [--check]\n"
		"       mcpkeeperd --version | --help\n"
		"\n"
		"Runs the keeper in the foreground, logging to stderr.\n"
		"\n"
		"  -c, --config FILE   configuration file (default: the mode's config.json)\n"
		"      --system        system mode (/etc/mcpkeeper, /var/lib/mcpkeeper)\n"
		"      --check         validate the configuration, open the token store,\n"
		"                      print what was found and exit\n"
		"  -v, --verbose       log debug messages\n"
		"  -V, --version       print the version and exit\n");
}

static int count_token(const char *key, const struct secret *plain, int status, void *ctx)
{
	int *n = ctx;

	if (status)
		log_warn("token record %s: %s", key, store_strerror(status));
	else
		n[0]++;
	return 0;
}

static int check(const char *config_path, bool system_mode)
{
	_cleanup_(config_freep) struct config *cfg = NULL;
	_cleanup_(secret_freep) struct secret *key = NULL;
	_cleanup_(store_closep) struct store *store = NULL;
	char err[1024];
	int tokens = 0;

	if (config_load(config_path, system_mode, &cfg, err, sizeof(err)) < 0) {
		log_error("%s", err);
		return 1;
	}
	if (system_mode) {
		struct child_users users;

		if (child_users_resolve(cfg, &users) < 0)
			return 1;
	}
	if (store_load_master_key(cfg->data_dir, &key, err, sizeof(err)) < 0 ||
	    store_open(cfg->data_dir, key, &store, err, sizeof(err)) != 0) {
		log_error("%s", err);
		return 1;
	}
	if (store_list(store, STORE_TOKENS, count_token, &tokens) < 0) {
		log_error("store %s: listing tokens failed", cfg->data_dir);
		return 1;
	}
	printf("config %s: %zu server(s), %s mode\n", cfg->path, cfg->n_servers,
	       cfg->system_mode ? "system" : "user");
	for (size_t i = 0; i < cfg->n_servers; i++) {
		const struct config_server *sv = &cfg->servers[i];

		printf("  %-20s %-15s %s%s%s\n", sv->name, config_protocol_name(sv->protocol),
		       sv->url ? sv->url : sv->command, sv->oauth_enabled ? " (oauth)" : "",
		       sv->enabled ? "" : " (disabled)");
	}
	printf("store %s: open, %d token record(s)\n", cfg->data_dir, tokens);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "system", no_argument, NULL, 'S' },
		{ "check", no_argument, NULL, 'C' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{},
	};
	const char *config_path = NULL;
	bool system_flag = false, do_check = false;
	char path[4096];
	int c;

	log_init("mcpkeeperd");
	while ((c = getopt_long(argc, argv, "c:vVh", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config_path = optarg;
			break;
		case 'S':
			system_flag = true;
			break;
		case 'C':
			do_check = true;
			break;
		case 'v':
			log_set_level(LOG_LEVEL_DEBUG);
			break;
		case 'V':
			printf("mcpkeeperd %s\n", MCPKEEPER_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	bool system_mode = paths_system_mode(system_flag);

	if (!config_path) {
		if (paths_config_file(system_mode, path, sizeof(path)) < 0)
			fatal("cannot work out the default configuration path (is HOME set?)");
		config_path = path;
	}
	if (do_check) {
		if (proc_no_core_dumps() < 0)
			fatal("cannot disable core dumps: %m");
		return check(config_path, system_mode);
	}
	return keeper_run(config_path, system_mode);
}
