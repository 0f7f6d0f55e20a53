/*
 * mcpctl replication status [--json]: this keeper's place in its
 * replication group (daemon/group.c's replication.status), through the
 * keeper only: a group site's store is never opened without its keeper.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "ctl.h"
#include "proto.h"

static bool yes(struct json_object *o, const char *key)
{
	bool v = false;

	return field_bool(o, key, &v) && v;
}

static const char *text(struct json_object *o, const char *key, const char *none)
{
	const char *s = field_str(o, key);

	return s ? s : none;
}

static int print_status(struct json_object *r, const char *only)
{
	struct json_object *sites;
	int64_t gen = 0, elections = 0, changes = 0, queued = 0, missed = 0, lease_ms = 0, differing = 0;
	const char *role = text(r, PARAM_KEY_ROLE, "unknown"), *lease = text(r, PARAM_KEY_LEASE, "none");
	char *site = text_clean(text(r, PARAM_KEY_SITE, "?")), *master = text_clean(text(r, PARAM_KEY_MASTER, ""));

	(void)only;
	field_int(r, PARAM_KEY_GENERATION, &gen);
	field_int(r, PARAM_KEY_ELECTIONS, &elections);
	field_int(r, PARAM_KEY_MASTER_CHANGES, &changes);
	field_int(r, PARAM_KEY_LOG_QUEUED, &queued);
	field_int(r, PARAM_KEY_QUORUM_MISSED, &missed);
	field_int(r, PARAM_KEY_LEASE_TIMEOUT_MS, &lease_ms);
	printf("site        %s (%s)\n", site, role);
	printf("master      %s\n", master && *master ? master : "none: an election, or no majority reachable");
	printf("store       %s, %s\n", yes(r, PARAM_KEY_READY) ? "readable" : "not readable yet",
	       yes(r, PARAM_KEY_CAUGHT_UP) ? "caught up" : "catching up");
	printf("log         %s (%lld record(s) queued)\n", text(r, PARAM_KEY_LOG_POSITION, "?"), (long long)queued);
	printf("lease       %s (timeout %lld ms); majority %s\n", lease, (long long)lease_ms,
	       yes(r, PARAM_KEY_MAJORITY) ? "reachable" : "NOT reachable: no refreshes, logins or logouts");
	printf("elections   %lld; master changes %lld; generation %lld; commits short of a quorum %lld\n",
	       (long long)elections, (long long)changes, (long long)gen, (long long)missed);
	if (field_int(r, PARAM_KEY_SERVERS_DIFFERING, &differing) && differing)
		printf("servers     %lld defined otherwise than on the master (see status: group_config)\n",
		       (long long)differing);
	if (json_object_object_get_ex(r, PARAM_KEY_SITES, &sites) && json_object_is_type(sites, json_type_array)) {
		printf("other sites\n");
		for (size_t i = 0; i < json_object_array_length(sites); i++) {
			struct json_object *s = json_object_array_get_idx(sites, i);
			char *addr = text_clean(text(s, PARAM_KEY_SITE, "?"));

			printf("  %-28s %-8s %s\n", addr ? addr : "?", text(s, PARAM_KEY_ROLE, "?"),
			       yes(s, PARAM_KEY_CONNECTED) ? "connected" : "disconnected");
			free(addr);
		}
	}
	free(site);
	free(master);
	return CTL_EXIT_OK;
}

int cmd_replication(struct ctl *c, int argc, char **argv)
{
	bool json = false;
	int r;

	if (argc < 2 || strcmp(argv[1], "status") != 0)
		return ctl_usage_error("replication: expected \"status\" (mcpctl replication status [--json])");
	r = ctl_parse_query_opts("replication status", argc - 1, argv + 1, &json, NULL);
	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	return ctl_query(c, METHOD_REPLICATION_STATUS, NULL, json, NULL, print_status);
}
