/*
 * "replication": the Berkeley DB replication group this keeper is a site of
 * (issue 18; daemon/group.c runs it, common/store/group.c opens the store
 * for it). Absent: a single host, exactly as without it.
 *
 *   "replication": {
 *     "listen": "HOST:PORT",          this site's replication address
 *     "peers": ["HOST:PORT", ...],    every other site of the group
 *     "priority": N,                  election priority; 0: never master
 *     "create": true,                 this site creates the group at its
 *                                     first start (one site only)
 *     "lease_timeout": MS, "heartbeat": MS, "ack_timeout": MS
 *   }
 *
 * A group has 3 or more sites, an odd number: with master leases a group
 * that lost its majority stops refreshing rather than risk two masters. The
 * link is neither encrypted nor authenticated (libdb 5.3), so the address is
 * never a wildcard.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "config-private.h"

#define DEFAULT_PRIORITY 100
#define DEFAULT_LEASE_TIMEOUT_MS 5000
#define DEFAULT_HEARTBEAT_MS 1000
#define DEFAULT_ACK_TIMEOUT_MS 2000
#define REPLICATION_PEERS_MAX 31

void config_replication_init(struct config_replication *rc)
{
	*rc = (struct config_replication){
		.priority = DEFAULT_PRIORITY,
		.lease_timeout_ms = DEFAULT_LEASE_TIMEOUT_MS,
		.heartbeat_ms = DEFAULT_HEARTBEAT_MS,
		.ack_timeout_ms = DEFAULT_ACK_TIMEOUT_MS,
	};
}

static bool host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-';
}

const char *config_site_parse(const char *s, char *host, size_t hostlen, int *port)
{
	const char *h, *port_s;
	size_t hlen;
	char *end;
	long n;

	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		struct in6_addr a6;

		if (!close || close[1] != ':')
			return "must be HOST:PORT ([ADDRESS]:PORT for IPv6)";
		h = s + 1;
		hlen = (size_t)(close - h);
		port_s = close + 2;
		if (hlen == 0 || hlen >= hostlen)
			return "has no valid IPv6 address";
		memcpy(host, h, hlen);
		host[hlen] = '\0';
		if (inet_pton(AF_INET6, host, &a6) != 1)
			return "has no valid IPv6 address";
		if (IN6_IS_ADDR_UNSPECIFIED(&a6))
			return "is a wildcard address: name the one address to bind and reach";
	} else {
		const char *colon = strrchr(s, ':');
		struct in_addr a4;

		if (!colon || colon == s)
			return "must be HOST:PORT";
		hlen = (size_t)(colon - s);
		if (hlen >= hostlen)
			return "has a host name that is too long";
		for (size_t i = 0; i < hlen; i++)
			if (!host_char(s[i]))
				return "has a host that is neither an address nor a host name";
		memcpy(host, s, hlen);
		host[hlen] = '\0';
		port_s = colon + 1;
		if (inet_pton(AF_INET, host, &a4) == 1 && a4.s_addr == htonl(INADDR_ANY))
			return "is a wildcard address: name the one address to bind and reach";
	}
	if (*port_s < '0' || *port_s > '9')
		return "has no port";
	errno = 0;
	n = strtol(port_s, &end, 10);
	if (errno || *end || n < 1 || n > 65535)
		return "has a port outside 1..65535";
	*port = (int)n;
	return NULL;
}

static int site_value(struct parser *p, struct json_object *v, const char *path, struct config_site *site)
{
	char host[256];
	const char *s, *problem;
	int r = config_string_peek(p, v, path, true, &s);

	if (r < 0)
		return r;
	problem = config_site_parse(s, host, sizeof(host), &site->port);
	if (problem)
		return config_fail(p, -EINVAL, path, "%s", problem);
	site->host = config_mem_strdup(p->c->mem, host);
	return 0;
}

static bool same_site(const struct config_site *a, const struct config_site *b)
{
	return a->port == b->port && strcmp(a->host, b->host) == 0;
}

int config_replication_parse(struct parser *p, struct json_object *root)
{
	static const char *const known[] = {
		"listen", "peers", "priority", "create", "lease_timeout", "heartbeat", "ack_timeout", NULL,
	};
	struct config_replication *rc = &p->c->replication;
	struct json_object *obj, *v;
	char path[CONFIG_PATH_MAX];
	size_t n, sites;
	int r;

	r = config_get_object(p, root, NULL, "replication", &obj);
	if (r < 0 || !obj)
		return r;
	config_warn_unknown(p, obj, "replication", known);
	rc->enabled = true;

	if (!json_object_object_get_ex(obj, "listen", &v))
		return config_fail(p, -EINVAL, "replication.listen", "is required (this site's HOST:PORT)");
	r = site_value(p, v, "replication.listen", &rc->local);
	if (r < 0)
		return r;
	if (!json_object_object_get_ex(obj, "peers", &v) || !json_object_is_type(v, json_type_array))
		return config_fail(p, -EINVAL, "replication.peers",
				   "is required: an array of the other sites' HOST:PORT");
	n = json_object_array_length(v);
	sites = n + 1;
	if (sites < 3 || sites % 2 == 0 || n > REPLICATION_PEERS_MAX)
		return config_fail(p, -EINVAL, "replication.peers",
				   "names %zu other site(s): a group has 3 or more sites, an odd number "
				   "(at most %d), so that a majority can always be told apart",
				   n, REPLICATION_PEERS_MAX + 1);
	rc->peers = config_mem_array(p->c->mem, n, sizeof(*rc->peers));
	rc->n_peers = n;
	for (size_t i = 0; i < n; i++) {
		config_path_index(path, sizeof(path), "replication.peers", i);
		r = site_value(p, json_object_array_get_idx(v, i), path, &rc->peers[i]);
		if (r < 0)
			return r;
		if (same_site(&rc->peers[i], &rc->local))
			return config_fail(p, -EINVAL, path, "is this site's own listen address");
		for (size_t j = 0; j < i; j++)
			if (same_site(&rc->peers[i], &rc->peers[j]))
				return config_fail(p, -EINVAL, path, "names a site twice");
	}
	r = config_get_int(p, obj, "replication", "priority", 0, 1000000, &rc->priority);
	if (r < 0)
		return r;
	r = config_get_bool(p, obj, "replication", "create", &rc->create);
	if (r < 0)
		return r;
	r = config_get_int(p, obj, "replication", "lease_timeout", 500, 600000, &rc->lease_timeout_ms);
	if (r < 0)
		return r;
	r = config_get_int(p, obj, "replication", "heartbeat", 100, 60000, &rc->heartbeat_ms);
	if (r < 0)
		return r;
	r = config_get_int(p, obj, "replication", "ack_timeout", 100, 60000, &rc->ack_timeout_ms);
	if (r < 0)
		return r;
	/* A master paused longer than the lease loses it; heartbeats must
	 * notice a silent master well within one lease. */
	if (rc->heartbeat_ms * 2 > rc->lease_timeout_ms)
		return config_fail(p, -EINVAL, "replication.heartbeat",
				   "must be at most half of replication.lease_timeout (%d ms)", rc->lease_timeout_ms);
	return 0;
}
