/*
 * mcpctl: the operator's client of the keeper's control socket.
 *
 * It finds the socket (--socket, a config file, or the mode's default),
 * sends one JSON-RPC request through the framing module, waits for the reply
 * that carries the same id and prints it, as a table or as the keeper's own
 * JSON. Status replies carry metadata only, and mcpctl prints no field it
 * was not given. It never holds a token: where it opens the store (auth
 * logout while the keeper is not running, backup, restore, key) it deletes
 * records or copies them sealed (restore opens each once, to check it, and
 * key rotate to seal it again, in memory it wipes, and prints nothing of
 * it).
 *
 * This file holds the global options, the command table and usage; ctl.h
 * lists what the other files do. The exit codes are an interface that
 * scripts test: they are listed in ctl_usage() and in mcpctl.1 and must stay in
 * step with both.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "log.h"
#include "toollist.h"
#include "util.h"

void ctl_usage(FILE *f)
{
	fprintf(f,
		"Usage: mcpctl [OPTIONS] COMMAND [ARGS]\n"
		"\n"
		"Talks to the mcpkeeper keeper (mcpkeeperd) over its control socket.\n"
		"\n"
		"Commands:\n"
		"  status [--json] [-s NAME]\n"
		"                      the keeper and each server: transport, worker, OAuth\n"
		"                      status, token expiry, next refresh, last error\n"
		"  servers [--json]    the configured servers\n"
		"  servers add NAME --url URL [--protocol P] [--scope S] [--client-id ID]\n"
		"          [--no-oauth] [--disabled] [--header-file FILE] [--header NAME]\n"
		"  servers add NAME [--disabled] -- COMMAND [ARGS...]\n"
		"                      add a server (written to the config file); a header's\n"
		"                      value comes from FILE (\"Name: value\" lines) or, with\n"
		"                      --header NAME, from stdin: never from the command line\n"
		"  servers remove|enable|disable NAME\n"
		"  servers set NAME KEY=VALUE... [--header-file FILE] [--header NAME]\n"
		"                      change fields (VALUE is JSON or text; null removes;\n"
		"                      name=NEW renames)\n"
		"  reload              reload the config file (what SIGHUP does)\n"
		"  auth login (-s NAME | --all) [--no-browser] [--timeout SEC]\n"
		"                      log in: prints the authorization URL, opens it with\n"
		"                      $BROWSER or xdg-open, waits (default 120 s); --all logs\n"
		"                      in every OAuth server that is not authenticated\n"
		"  auth logout (-s NAME | --all)\n"
		"                      delete the token (and revoke it at the provider); with\n"
		"                      the keeper stopped, deletes it from the store directly\n"
		"  auth status [-s NAME] [--json]\n"
		"                      OAuth status of the OAuth servers\n"
		"  events [--json]     follow the keeper's events until interrupted\n"
		"  connect [--bridge] NAME\n"
		"                      what an MCP client runs as its stdio server (config:\n"
		"                      \"command\": \"mcpctl\", \"args\": [\"connect\", \"NAME\"]):\n"
		"                      hands stdin and stdout (pipes or sockets) to NAME's\n"
		"                      worker and waits; --bridge (and any other stdin or\n"
		"                      stdout) relays them instead, and answers requests\n"
		"                      in flight should the worker die\n"
		"  tools [--json] NAME the tools NAME's upstream offers (name, description,\n"
		"                      arguments; '?' marks an optional one), asked through\n"
		"                      its worker; without --timeout it waits up to %d s\n"
		"  backup FILE         a hot copy of the store (sealed, without the master\n"
		"                      key) into FILE, mode 0600; the keeper may run\n"
		"  restore [--force] FILE\n"
		"                      put a backup back into the state directory (the\n"
		"                      master key must be there); refuses while a keeper\n"
		"                      runs; --force replaces a store (kept beside it)\n"
		"  replication status [--json]\n"
		"                      this keeper's replication group: its role, the\n"
		"                      master, the other sites, the lease and the log\n"
		"  key export [--plain | --passphrase-file F] FILE\n"
		"                      the master key into FILE (mode 0600), sealed with a\n"
		"                      passphrase, or --plain in clear for systemd-creds\n"
		"  key import [--force | --next] [--passphrase-file F] FILE\n"
		"                      install an exported key as the state directory's\n"
		"                      master.key (no keeper running; it must open the store);\n"
		"                      --next: a group site's next key (master.key.next)\n"
		"  key rotate          re-seal every record with a new master key (no keeper);\n"
		"                      on a group site, the master's keeper does it\n"
		"\n"
		"  --json prints the keeper's reply as JSON instead of a table;\n"
		"  -s is short for --server.\n"
		"\n"
		"Options (before the command):\n"
		"  --socket PATH       the keeper's control socket\n"
		"  -c, --config FILE   find the socket through this config file's runtime_dir\n"
		"                      (default: $MCPKEEPER_CONFIG, then the mode's config.json)\n"
		"  --system            talk to the system keeper (/etc/mcpkeeper, /run/mcpkeeper)\n"
		"  --timeout SEC       give up after SEC seconds (default %d; 0: wait forever)\n"
		"  -V, --version       print the version and exit\n"
		"  -h, --help          print this help and exit\n"
		"\n"
		"Exit status:\n"
		"  0  success\n"
		"  1  the keeper answered with an error (or mcpctl could not write its output)\n"
		"  2  usage error: bad option, command or config file\n"
		"  3  the keeper is unreachable: no socket, connection refused, timeout\n"
		"  4  the keeper refused this user\n"
		"  5  protocol error: malformed reply, connection closed before the reply\n"
		"  6  no such server\n"
		"  7  the server does not use OAuth\n"
		"  8  the socket is served by a process this user does not trust\n"
		"  9  restore, key import, key rotate: a keeper is running, or a process has\n"
		"     the store open\n"
		"\n"
		"See mcpctl(1) for how the socket is found.\n",
		TOOLLIST_TIMEOUT_S, CTL_DEFAULT_TIMEOUT_SEC);
}

int ctl_usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("mcpctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'mcpctl --help'.\n", stderr);
	return CTL_EXIT_USAGE;
}

_noreturn_ void ctl_out_of_memory(void)
{
	fputs("mcpctl: out of memory\n", stderr);
	exit(CTL_EXIT_KEEPER_ERROR);
}

/* mcpctl's own options, which go before the command. */
static bool global_option(const char *arg)
{
	static const char *const names[] = { "--socket", "--config", "--system", "--timeout" };
	size_t n = strcspn(arg, "=");

	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (strlen(names[i]) == n && strncmp(arg, names[i], n) == 0)
			return true;
	return false;
}

/* getopt's complaint (o is ':' or '?'), or with o 0 an argument left over,
 * as a usage error naming the command and the option, never its value. */
int ctl_option_error(const char *cmd, int o, int argc, char **argv)
{
	const char *arg = argv[optind - 1];

	if (o == 0)
		return ctl_usage_error("%s: unexpected argument '%s'", cmd, argv[optind]);
	if (o == ':')
		return ctl_usage_error("%s: option '%s' needs an argument", cmd, arg);
	if (optopt && optopt != '?')
		return ctl_usage_error("%s: unknown option '-%c'%s", cmd, optopt,
				       optopt == 'c' ? " (an option of mcpctl itself: give it before the command)" : "");
	if (global_option(arg))
		return ctl_usage_error("%s: '%.*s' is an option of mcpctl itself: give it before the command",
				       cmd, (int)strcspn(arg, "="), arg);
	return ctl_usage_error("%s: unknown option '%.*s'", cmd, (int)strcspn(arg, "="), arg);
}

/* An option getopt_long knows but this command does not take: named as
 * the user spelled it (its value may already be consumed). */
int ctl_option_misplaced(const char *cmd, const struct option *opts, int longindex, int o)
{
	if (longindex >= 0)
		return ctl_usage_error("%s: option '--%s' does not apply here", cmd, opts[longindex].name);
	return ctl_usage_error("%s: option '-%c' does not apply here", cmd, o);
}

/* The options of the read-only commands: --json, --help and, where a
 * server can be picked, -s/--server NAME. Returns 0, CTL_HELP_SHOWN, or
 * an exit code after saying why. */
int ctl_parse_query_opts(const char *cmd, int argc, char **argv, bool *json, const char **server)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "server", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int o, li = -1;

	optind = 0;	/* glibc: start over on the command's own arguments */
	opterr = 0;
	while ((o = getopt_long(argc, argv, "+:hs:", opts, &li)) != -1) {
		switch (o) {
		case 'j':
			*json = true;
			break;
		case 's':
			if (!server)
				return ctl_option_misplaced(cmd, opts, li, o);
			*server = optarg;
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
	return 0;
}

/* The options of a command on one server NAME (connect, tools): one flag
 * (--bridge, --json), --help and the name. Returns 0, CTL_HELP_SHOWN, or
 * an exit code after saying why. */
int ctl_parse_name_opts(const char *cmd, int argc, char **argv, const char *flag, bool *flag_set, const char **name)
{
	const struct option opts[] = {
		{ flag, no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int o;

	optind = 0;
	opterr = 0;
	while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (o) {
		case 'f':
			*flag_set = true;
			break;
		case 'h':
			ctl_usage(stdout);
			return CTL_HELP_SHOWN;
		default:
			return ctl_option_error(cmd, o, argc, argv);
		}
	}
	if (argc - optind != 1)
		return ctl_usage_error("%s takes one server name", cmd);
	*name = argv[optind];
	return 0;
}

int ctl_parse_timeout(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < 0 || v > CTL_MAX_TIMEOUT_SEC)
		return -EINVAL;
	*out = v;
	return 0;
}

static int cmd_help(struct ctl *c, int argc, char **argv)
{
	ctl_usage(stdout);
	return CTL_EXIT_OK;
}

static const struct {
	const char *name;
	int (*run)(struct ctl *c, int argc, char **argv);
} commands[] = {
	{ "help", cmd_help },
	{ "status", cmd_status },
	{ "servers", cmd_servers },
	{ "auth", cmd_auth },
	{ "events", cmd_events },
	{ "connect", cmd_connect },
	{ "reload", cmd_reload },
	{ "tools", cmd_tools },
	{ "backup", cmd_backup },
	{ "restore", cmd_restore },
	{ "replication", cmd_replication },
	{ "key", cmd_key },
};

int main(int argc, char **argv)
{
	enum { OPT_SOCKET = 256, OPT_SYSTEM, OPT_TIMEOUT };
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "config", required_argument, NULL, 'c' },
		{ "system", no_argument, NULL, OPT_SYSTEM },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct ctl c = { .timeout_sec = CTL_DEFAULT_TIMEOUT_SEC };
	const char *env;
	int o, r;

	log_init("mcpctl");
	/* Config warnings (unknown fields) are the keeper's to report. */
	log_set_level(LOG_LEVEL_ERROR);

	opterr = 0;
	while ((o = getopt_long(argc, argv, "+:hVc:", opts, NULL)) != -1) {
		switch (o) {
		case OPT_SOCKET:
			c.opt_socket = optarg;
			break;
		case 'c':
			c.opt_config = optarg;
			break;
		case OPT_SYSTEM:
			c.system_mode = true;
			break;
		case OPT_TIMEOUT:
			if (ctl_parse_timeout(optarg, &c.timeout_sec) < 0)
				return ctl_usage_error("--timeout: '%s' is not a number of seconds "
						       "between 0 and %.0f",
						       optarg, CTL_MAX_TIMEOUT_SEC);
			c.timeout_given = true;
			break;
		case 'V':
			printf("mcpctl %s\n", MCPKEEPER_VERSION);
			return CTL_EXIT_OK;
		case 'h':
			ctl_usage(stdout);
			return CTL_EXIT_OK;
		case ':':
			return ctl_usage_error("option '%s' needs an argument", argv[optind - 1]);
		default:
			if (optopt)
				return ctl_usage_error("unknown option '-%c'", optopt);
			return ctl_usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (!c.opt_config) {
		env = getenv("MCPKEEPER_CONFIG");
		if (env && *env)
			c.opt_config = env;
	}
	if (optind >= argc) {
		ctl_usage(stderr);
		return CTL_EXIT_USAGE;
	}
	if (c.timeout_sec > 0)
		c.deadline_ms = ctl_now_ms() + (int64_t)(c.timeout_sec * 1000 + 0.5);

	for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
		if (strcmp(argv[optind], commands[i].name) != 0)
			continue;
		r = commands[i].run(&c, argc - optind, argv + optind);
		if (fflush(stdout) != 0 || ferror(stdout)) {
			fprintf(stderr, "mcpctl: cannot write the output: %m\n");
			return r ? r : CTL_EXIT_KEEPER_ERROR;
		}
		return r;
	}
	return ctl_usage_error("unknown command '%s'", argv[optind]);
}
