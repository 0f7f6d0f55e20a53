/*
 * mcpctl servers add|remove|enable|disable|set and mcpctl reload: changes of
 * the keeper's server list (servers.add, servers.remove, servers.update and
 * reload in common/proto.h). The keeper checks and persists each change; this
 * file only turns the command line into the entry of mcpServers it sends.
 *
 * Header values are often credentials, and a command line is visible to
 * every user (/proc/PID/cmdline) and kept in shell histories: they come
 * from a file (--header-file, "Name: value" lines) or from stdin (--header
 * NAME), never from an argument.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "ctl.h"
#include "frame.h"
#include "proto.h"

/* A header file or stdin: at most this much. */
#define HEADERS_MAX (64 * 1024)

static int read_bounded(FILE *f, const char *what, char *buf, size_t cap, size_t *len)
{
	*len = fread(buf, 1, cap, f);
	if (ferror(f)) {
		fprintf(stderr, "mcpctl: cannot read %s: %m\n", what);
		return CTL_EXIT_USAGE;
	}
	if (*len == cap) {
		fprintf(stderr, "mcpctl: %s is larger than %d bytes\n", what, HEADERS_MAX - 1);
		return CTL_EXIT_USAGE;
	}
	buf[*len] = '\0';
	if (memchr(buf, '\0', *len)) {
		fprintf(stderr, "mcpctl: %s holds a NUL byte\n", what);
		return CTL_EXIT_USAGE;
	}
	return 0;
}

static char *trim(char *s)
{
	char *e = s + strlen(s);

	while (*s == ' ' || *s == '\t')
		s++;
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
		*--e = '\0';
	return s;
}

/* "Name: value" lines (blank lines and # comments skipped) into headers. */
static int headers_from_file(const char *path, struct json_object *headers)
{
	static char buf[HEADERS_MAX];
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "re");
	size_t len;
	char *line, *save = NULL;
	int r;

	if (!f) {
		fprintf(stderr, "mcpctl: --header-file %s: %m\n", path);
		return CTL_EXIT_USAGE;
	}
	r = read_bounded(f, path, buf, sizeof(buf), &len);
	if (f != stdin)
		fclose(f);
	for (line = strtok_r(buf, "\n", &save); !r && line; line = strtok_r(NULL, "\n", &save)) {
		char *colon, *name = trim(line);

		if (!*name || *name == '#')
			continue;
		colon = strchr(name, ':');
		if (!colon) {
			fprintf(stderr, "mcpctl: --header-file %s: a line without \"Name: value\"\n", path);
			r = CTL_EXIT_USAGE;
			break;
		}
		*colon = '\0';
		json_object_object_add(headers, trim(name), json_object_new_string(trim(colon + 1)));
	}
	explicit_bzero(buf, sizeof(buf));
	return r;
}

/* --header NAME: its value is the first line of stdin. */
static int header_from_stdin(const char *name, struct json_object *headers)
{
	static char buf[HEADERS_MAX];
	size_t len;
	int r = read_bounded(stdin, "stdin", buf, sizeof(buf), &len);

	if (r == 0) {
		buf[strcspn(buf, "\r\n")] = '\0';
		json_object_object_add(headers, name, json_object_new_string(buf));
	}
	explicit_bzero(buf, sizeof(buf));
	return r;
}

/* A VALUE of KEY=VALUE: JSON when it parses as JSON (true, 3, null, [..],
 * {..}, "text"), else the text itself. */
static struct json_object *value_parse(const char *s)
{
	struct json_tokener *tok = json_tokener_new();
	struct json_object *v;
	size_t len = strlen(s);

	if (!tok)
		ctl_out_of_memory();
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	/* With the NUL: a number or a literal ends only where the input does. */
	v = len < INT_MAX ? json_tokener_parse_ex(tok, s, (int)len + 1) : NULL;
	/* All of it, or it is text ("8080abc" is not 8080). */
	if (json_tokener_get_error(tok) != json_tokener_success || json_tokener_get_parse_end(tok) != len) {
		json_object_put(v);
		v = json_object_new_string(s);
	}
	json_tokener_free(tok);
	return v;
}

static void print_result(struct json_object *res, bool json)
{
	const char *server = field_str(res, PARAM_KEY_SERVER), *reason = field_str(res, PARAM_KEY_REASON);
	const char *previous = field_str(res, PARAM_KEY_PREVIOUS), *orphan = field_str(res, PARAM_KEY_ORPHANED);
	_cleanup_(freep) char *name = text_clean(server ? server : "?");

	if (json) {
		output_json(res);
		return;
	}
	if (reason && strcmp(reason, SERVERS_R_ADDED) == 0)
		printf("%s: added\n", name);
	else if (reason && strcmp(reason, SERVERS_R_REMOVED) == 0)
		printf("%s: removed\n", name);
	else if (previous) {
		_cleanup_(freep) char *was = text_clean(previous);

		printf("%s: updated (was %s)\n", name, was);
	} else {
		printf("%s: updated\n", name);
	}
	if (orphan) {
		_cleanup_(freep) char *key = text_clean(orphan);
		_cleanup_(freep) char *old = text_clean(previous ? previous : name);

		printf("its token (%s) is kept as orphaned until `mcpctl auth logout -s %s`\n", key, old);
	}
}

static int send_change(struct ctl *c, const char *method, struct json_object *params, bool json)
{
	struct rpc_msg reply = { 0 };
	int r = ctl_find_socket(c);

	if (r) {
		json_object_put(params);
		return r;
	}
	r = ctl_exchange(c, method, params, &reply, NULL, NULL);
	if (r)
		return r;
	print_result(reply.result, json);
	rpc_msg_clear(&reply);
	return CTL_EXIT_OK;
}

/*
 * The options add and set share. entry collects the fields; headers, when
 * any are given, goes in as "headers". Leaves optind at the first argument
 * that is not an option.
 */
static int entry_options(const char *cmd, int argc, char **argv, struct json_object *entry, bool *json)
{
	static const struct option opts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "protocol", required_argument, NULL, 'p' },
		{ "scope", required_argument, NULL, 'S' },
		{ "client-id", required_argument, NULL, 'C' },
		{ "no-oauth", no_argument, NULL, 'O' },
		{ "disabled", no_argument, NULL, 'D' },
		{ "header-file", required_argument, NULL, 'H' },
		{ "header", required_argument, NULL, 'N' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct json_object *headers = NULL, *oauth = NULL;
	bool stdin_used = false;
	int o, r = 0;

	optind = 0;
	opterr = 0;
	while (!r && (o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (o) {
		case 'u':
			json_object_object_add(entry, PARAM_KEY_URL, json_object_new_string(optarg));
			break;
		case 'p':
			json_object_object_add(entry, PARAM_KEY_PROTOCOL, json_object_new_string(optarg));
			break;
		case 'S':
		case 'C':
			if (!oauth)
				oauth = json_object_new_object();
			json_object_object_add(oauth, o == 'S' ? "scopes" : PARAM_KEY_CLIENT_ID,
					       json_object_new_string(optarg));
			break;
		case 'O':
			json_object_object_add(entry, PARAM_KEY_OAUTH, json_object_new_boolean(false));
			break;
		case 'D':
			json_object_object_add(entry, PARAM_KEY_ENABLED, json_object_new_boolean(false));
			break;
		case 'H':
		case 'N':
			if (!headers)
				headers = json_object_new_object();
			if ((o == 'N' || strcmp(optarg, "-") == 0) && stdin_used) {
				r = ctl_usage_error("%s: stdin gives one header value only", cmd);
				break;
			}
			stdin_used |= o == 'N' || strcmp(optarg, "-") == 0;
			r = o == 'H' ? headers_from_file(optarg, headers) : header_from_stdin(optarg, headers);
			break;
		case 'j':
			*json = true;
			break;
		case 'h':
			ctl_usage(stdout);
			r = CTL_HELP_SHOWN;
			break;
		default:
			r = ctl_option_error(cmd, o, argc, argv);
			break;
		}
	}
	if (oauth && json_object_object_get_ex(entry, PARAM_KEY_OAUTH, NULL) && !r)
		r = ctl_usage_error("%s: --no-oauth with --scope or --client-id", cmd);
	if (oauth)
		json_object_object_add(entry, PARAM_KEY_OAUTH, oauth);
	if (headers)
		json_object_object_add(entry, PARAM_KEY_HEADERS, headers);
	return r;
}

/* servers add NAME [--url URL ...] [-- COMMAND ARGS...] */
static int servers_add(struct ctl *c, int argc, char **argv)
{
	struct json_object *entry = json_object_new_object(), *params;
	int n_opts = argc, r;
	bool json = false;

	/* What follows "--" is the stdio server's command line, untouched. */
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			n_opts = i;
			break;
		}
	}
	r = entry_options("servers add", n_opts, argv, entry, &json);
	if (r == 0 && optind != n_opts - 1)
		r = optind >= n_opts ? ctl_usage_error("servers add: which server? (servers add NAME ...)")
				     : ctl_option_error("servers add", 0, n_opts, argv);
	if (r == 0 && n_opts < argc) {
		struct json_object *args = json_object_new_array();

		if (n_opts + 1 >= argc)
			r = ctl_usage_error("servers add: a command after --");
		for (int i = n_opts + 2; i < argc; i++)
			json_object_array_add(args, json_object_new_string(argv[i]));
		if (n_opts + 1 < argc)
			json_object_object_add(entry, PARAM_KEY_COMMAND, json_object_new_string(argv[n_opts + 1]));
		json_object_object_add(entry, PARAM_KEY_ARGS, args);
	}
	if (r) {
		json_object_put(entry);
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	}
	params = json_object_new_object();
	json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(argv[optind]));
	json_object_object_add(params, PARAM_KEY_CONFIG, entry);
	return send_change(c, METHOD_SERVERS_ADD, params, json);
}

/* servers set NAME KEY=VALUE... (and the options add takes) */
static int servers_set(struct ctl *c, int argc, char **argv)
{
	struct json_object *set = json_object_new_object(), *params;
	const char *name = NULL;
	bool json = false;
	int r = entry_options("servers set", argc, argv, set, &json);

	for (int i = optind; r == 0 && i < argc; i++) {
		const char *eq = strchr(argv[i], '=');
		char key[128];

		if (!name) {
			name = argv[i];
			continue;
		}
		if (!eq || eq == argv[i] || (size_t)(eq - argv[i]) >= sizeof(key)) {
			r = ctl_usage_error("servers set: '%s' is not KEY=VALUE", argv[i]);
			break;
		}
		snprintf(key, sizeof(key), "%.*s", (int)(eq - argv[i]), argv[i]);
		if (strcmp(key, PARAM_KEY_HEADERS) == 0) {
			r = ctl_usage_error("servers set: header values do not go on the command line: use "
					    "--header-file FILE or --header NAME (the value on stdin)");
			break;
		}
		json_object_object_add(set, key, value_parse(eq + 1));
	}
	if (r == 0 && !name)
		r = ctl_usage_error("servers set: which server? (servers set NAME KEY=VALUE...)");
	if (r == 0 && json_object_object_length(set) == 0)
		r = ctl_usage_error("servers set: nothing to set (KEY=VALUE, null removes a key)");
	if (r) {
		json_object_put(set);
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	}
	params = json_object_new_object();
	json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(name));
	json_object_object_add(params, PARAM_KEY_SET, set);
	return send_change(c, METHOD_SERVERS_UPDATE, params, json);
}

/* servers remove|enable|disable NAME, and add and set. */
int servers_manage(struct ctl *c, int argc, char **argv)
{
	const char *verb = argv[0];
	struct json_object *params, *set;
	bool json = false;

	if (strcmp(verb, "add") == 0)
		return servers_add(c, argc, argv);
	if (strcmp(verb, "set") == 0)
		return servers_set(c, argc, argv);
	if (strcmp(verb, "remove") != 0 && strcmp(verb, "enable") != 0 && strcmp(verb, "disable") != 0)
		return ctl_usage_error("servers: unknown subcommand '%s' (add, remove, enable, disable, set)", verb);
	if (argc >= 3 && strcmp(argv[2], "--json") == 0) {
		json = true;
		argc--;
	}
	if (argc != 2 || argv[1][0] == '-')
		return ctl_usage_error("servers %s: give the server's name (servers %s NAME [--json])", verb, verb);
	params = json_object_new_object();
	json_object_object_add(params, PARAM_KEY_SERVER, json_object_new_string(argv[1]));
	if (strcmp(verb, "remove") == 0)
		return send_change(c, METHOD_SERVERS_REMOVE, params, json);
	set = json_object_new_object();
	json_object_object_add(set, PARAM_KEY_ENABLED, json_object_new_boolean(strcmp(verb, "enable") == 0));
	json_object_object_add(params, PARAM_KEY_SET, set);
	return send_change(c, METHOD_SERVERS_UPDATE, params, json);
}

int cmd_reload(struct ctl *c, int argc, char **argv)
{
	struct rpc_msg reply = { 0 };
	bool json = false;
	int64_t n = 0;
	int r = ctl_parse_query_opts(argv[0], argc, argv, &json, NULL);

	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	r = ctl_find_socket(c);
	if (r)
		return r;
	r = ctl_exchange(c, METHOD_RELOAD, NULL, &reply, NULL, NULL);
	if (r)
		return r;
	if (json)
		output_json(reply.result);
	else if (field_int(reply.result, PARAM_KEY_SERVERS, &n))
		printf("reloaded: %lld server(s)\n", (long long)n);
	else
		printf("reloaded\n");
	rpc_msg_clear(&reply);
	return CTL_EXIT_OK;
}
