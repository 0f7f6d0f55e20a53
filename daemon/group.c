/*
 * The keeper as a site of a replication group (config "replication",
 * issue 18): opening the store as a group site, following its role, and
 * what it says about the group.
 *
 * Berkeley DB's replication manager runs threads of its own inside the
 * keeper; its event callback only writes an eventfd (common/store/group.c).
 * Everything here runs on the keeper's libevent loop, woken by that eventfd.
 *
 * Only the master refreshes, logs in, logs out and changes servers: a
 * replica's refresh dispatch stays idle (refresh.c asks keeper_is_master())
 * and the control socket refuses the others naming the master. A site that
 * becomes master reads every record again: what the old master left with an
 * intent is interrupted (the rule of a crash on one host), and a site that
 * stops being master forgets tokens it could not store.
 */
#include <errno.h>
#include <sodium.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "config.h"
#include "keeper.h"
#include "log.h"
#include "proto.h"
#include "secret.h"
#include "store.h"
#include "util.h"

/* How long the start waits for this site to find its place in the group
 * before it runs anyway (and then says "no master" in status). */
#define GROUP_START_WAIT_MS 15000
/* How often a replica reads the group's change sequence: the bound on how
 * late its workers get a token the master refreshed (plus replication's
 * own delay). */
#define GROUP_POLL_MS 200
/* How often (in polls: 30 s) a replica compares its server definitions
 * with the master's (group_config_check()). */
#define GROUP_CONFIG_EVERY 150

bool keeper_is_master(struct keeper *k)
{
	return !k->store || store_role(k->store) == STORE_ROLE_MASTER;
}

static void site_text(const struct store_group_state *st, char *buf, size_t len)
{
	if (st->master_host[0])
		snprintf(buf, len, "%s:%d", st->master_host, st->master_port);
	else
		snprintf(buf, len, "none");
}

void group_master_text(struct keeper *k, char *buf, size_t len)
{
	struct store_group_state st;

	if (!k->store || !store_is_group(k->store) || store_group_state(k->store, &st) < 0) {
		snprintf(buf, len, "unknown");
		return;
	}
	if (st.role == STORE_ROLE_MASTER)
		snprintf(buf, len, "this site, %s:%d", k->cfg->replication.local.host, k->cfg->replication.local.port);
	else if (st.master_host[0])
		snprintf(buf, len, "%s:%d", st.master_host, st.master_port);
	else
		snprintf(buf, len, "none (an election is under way, or a majority of the group is unreachable)");
}

static void role_changed(struct keeper *k, enum store_role was, enum store_role now, const struct store_group_state *st)
{
	char master[300];
	struct json_object *data;

	site_text(st, master, sizeof(master));
	if (now == STORE_ROLE_MASTER)
		log_info("replication: this site (%s:%d) is the master now (generation %u, %llu election(s) won)",
			 k->cfg->replication.local.host, k->cfg->replication.local.port, st->generation,
			 st->elections_won);
	else if (now == STORE_ROLE_REPLICA)
		log_info("replication: this site is a replica; the master is %s (generation %u)", master,
			 st->generation);
	else
		log_warn("replication: no master known (an election, or a majority of the group unreachable): "
			 "refreshes, logins and logouts wait");
	data = json_object_new_object();
	json_object_object_add(data, PARAM_KEY_ROLE, json_object_new_string(store_role_name(now)));
	json_object_object_add(data, PARAM_KEY_PREVIOUS_ROLE, json_object_new_string(store_role_name(was)));
	json_object_object_add(data, PARAM_KEY_MASTER, st->master_host[0] ? json_object_new_string(master) : NULL);
	json_object_object_add(data, PARAM_KEY_GENERATION, json_object_new_int64(st->generation));
	events_emit(k, EVENT_REPLICATION_MASTER_CHANGED, data);

	if (was == STORE_ROLE_MASTER && now != STORE_ROLE_MASTER)
		keeper_group_demoted(k);
	if (now == STORE_ROLE_MASTER)
		keeper_reload_tokens(k, "this site became master");
	group_config_check(k);
}

static void key_promoted(struct keeper *k);

/* store_changes()'s callback: a token record changed at the master. */
static int token_changed(const char *key, const struct secret *plain, int status, void *ctx)
{
	struct keeper *k = ctx;
	struct server *s;

	(void)plain;
	(void)status;
	if (keeper_is_master(k))
		return 0;	/* its own commit: already applied */
	if (!key) {
		keeper_reload_tokens(k, "the group's change log moved past what this replica read");
		return 0;
	}
	s = keeper_server_of_key(k, key);
	if (!s || s->in_flight || s->login_active)
		return 0;
	refresh_load(k, s);
	workers_token_changed(k, s);
	log_debug("%s: token record changed at the master; read it again", s->name);
	return 0;
}

static void on_group_poll(evutil_socket_t fd, short what, void *arg)
{
	struct keeper *k = arg;
	int r;

	(void)fd;
	(void)what;
	if (store_has_next_key(k->store)) {
		r = store_key_promote(k->store);
		if (r == STORE_E_WRONG_KEY && !k->group_key_warned) {
			log_error("replication: the group's records are sealed with a key this site has neither as "
				  "%s nor as %s: install the group's key", STORE_KEY_FILE, STORE_KEY_NEXT_FILE);
			k->group_key_warned = true;
		}
		key_promoted(k);
	}
	r = store_changes(k->store, &k->group_seq, token_changed, k);
	if (r < 0 && r != -EAGAIN)
		log_debug("replication: reading the change sequence: %s", store_strerror(r));
	if (++k->group_polls % GROUP_CONFIG_EVERY == 0)
		group_config_check(k);
}

static void on_group_event(evutil_socket_t fd, short what, void *arg)
{
	struct keeper *k = arg;
	struct store_group_state st;
	enum store_role now;
	int refused = 0;
	unsigned ev;

	(void)fd;
	(void)what;
	ev = store_group_events(k->store, &refused);
	if (refused)
		fatal("replication: %s: this site cannot take part in the group with its master key "
		      "(see the message above; mcpctl key import installs the group's key)", store_strerror(refused));
	if (ev & STORE_GROUP_EV_PANIC) {
		/* Typically a master whose lease ran out while it committed (its
		 * majority went away): Berkeley DB cannot undo the commit record
		 * and stops the environment. Recovery reopens it; an answer that
		 * was not stored stays in memory (refresh.c) and the intent rule
		 * covers the rest. */
		log_error("replication: Berkeley DB stopped the environment (a commit lost its master lease?); "
			  "recovering it");
		if (store_group_recover(k->store) < 0)
			fatal("replication: recovering the environment failed; restart the keeper");
		/* k->group_role stays: should another site be master now, the
		 * role change drops what this one could not store. */
	}
	if (ev & STORE_GROUP_EV_REMOVED)
		log_warn("replication: this site was removed from the group");
	if (ev & STORE_GROUP_EV_JOIN_FAILURE)
		log_error("replication: joining the group failed (the group's log no longer holds what this site "
			  "needs): move this site's state directory away and start it empty");
	if (ev & STORE_GROUP_EV_DUPMASTER)
		log_warn("replication: two masters met; Berkeley DB holds an election");
	if (ev & STORE_GROUP_EV_ELECTION_FAILED)
		log_info("replication: an election failed (no majority yet); retrying");
	if (ev & STORE_GROUP_EV_PERM_FAILED)
		log_warn("replication: a commit was not acknowledged by a majority in time");
	if (store_group_state(k->store, &st) < 0)
		return;
	now = st.role;
	if ((int)now != k->group_role) {
		enum store_role was = (enum store_role)k->group_role;

		k->group_role = now;
		role_changed(k, was, now, &st);
	} else if ((ev & STORE_GROUP_EV_NEWMASTER) && now == STORE_ROLE_REPLICA) {
		char master[300];

		site_text(&st, master, sizeof(master));
		log_info("replication: the master is %s", master);
	}
	if (ev & STORE_GROUP_EV_READY) {
		log_info("replication: this site's copy of the store is readable");
		keeper_reload_tokens(k, "the store became readable");
	}
}

/* ---- server definitions: each site's file against the master's ----
 *
 * The master stores a digest of each server's effective entry (the file
 * with system mode's overlay) in "clients" under "srvdigest:NAME", sealed
 * like every record; a replica compares its own entries with them and says
 * so in status (group_config) and the log. A replica checks after every
 * configuration it applies, when its role changes, and every
 * GROUP_CONFIG_EVERY polls.
 */
#define DIGEST_PREFIX "srvdigest:"

static void dig_str(crypto_generichash_state *h, char tag, const char *v)
{
	unsigned char t[2] = { (unsigned char)tag, v ? 1 : 0 };

	crypto_generichash_update(h, t, sizeof(t));
	if (v)
		crypto_generichash_update(h, (const unsigned char *)v, strlen(v) + 1);
}

static void dig_int(crypto_generichash_state *h, char tag, long long v)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%lld", v);
	dig_str(h, tag, buf);
}

static void server_digest(const struct config_server *cs, unsigned char out[32])
{
	const struct config_oauth *o = &cs->oauth;
	crypto_generichash_state h;

	crypto_generichash_init(&h, NULL, 0, 32);
	dig_str(&h, 'n', cs->name);
	dig_int(&h, 'p', cs->protocol);
	dig_str(&h, 'u', cs->url);
	dig_str(&h, 'c', cs->command);
	for (size_t i = 0; i < cs->n_args; i++)
		dig_str(&h, 'a', cs->args[i]);
	for (size_t i = 0; i < cs->n_env; i++) {
		dig_str(&h, 'e', cs->env[i].key);
		dig_str(&h, 'E', cs->env[i].value);
	}
	for (size_t i = 0; i < cs->n_headers; i++) {
		dig_str(&h, 'h', cs->headers[i].key);
		dig_str(&h, 'H', cs->headers[i].value);
	}
	dig_int(&h, 'f', (cs->enabled ? 1 : 0) | (cs->eager ? 2 : 0) | (cs->oauth_enabled ? 4 : 0) |
				 (cs->allow_insecure_http ? 8 : 0) | (cs->sandbox ? 16 : 0) |
				 (o->allow_private_endpoints ? 32 : 0));
	dig_str(&h, 'i', o->client_id);
	dig_str(&h, 's', o->client_secret);
	for (size_t i = 0; i < o->n_scopes; i++)
		dig_str(&h, 'S', o->scopes[i]);
	dig_int(&h, 'r', o->redirect_port);
	dig_str(&h, 'R', o->resource);
	for (size_t i = 0; i < cs->n_sandbox_read; i++)
		dig_str(&h, 'x', cs->sandbox_read[i]);
	for (size_t i = 0; i < cs->n_sandbox_write; i++)
		dig_str(&h, 'w', cs->sandbox_write[i]);
	crypto_generichash_final(&h, out, 32);
}

const char *group_config_name(int state)
{
	return state == GROUP_CONFIG_SAME ? "same" : state == GROUP_CONFIG_DIFFERS ? "differs" : "unknown";
}

void group_config_check(struct keeper *k)
{
	bool master;
	size_t differ = 0;

	if (!k->store || !store_is_group(k->store))
		return;
	group_next_key_load(k);
	master = keeper_is_master(k);
	for (size_t i = 0; i < k->n_servers; i++) {
		struct server *s = k->servers[i];
		char key[STORE_SERVER_KEY_MAX + 1];
		unsigned char mine[32];
		struct secret *theirs = NULL;
		int r, was = s->group_config;

		if (snprintf(key, sizeof(key), DIGEST_PREFIX "%s", s->name) >= (int)sizeof(key))
			continue;
		server_digest(s->conf, mine);
		r = store_get(k->store, STORE_CLIENTS, key, &theirs);
		if (master) {
			if (r != 0 || !secret_equal_bytes(theirs, mine, sizeof(mine))) {
				struct secret *d = secret_from(mine, sizeof(mine));

				if (d && store_put(k->store, STORE_CLIENTS, key, d) != 0)
					log_debug("%s: publishing its definition to the group failed", s->name);
				secret_free(d);
			}
			s->group_config = GROUP_CONFIG_SAME;
		} else if (r == 0) {
			s->group_config = secret_equal_bytes(theirs, mine, sizeof(mine)) ? GROUP_CONFIG_SAME
											      : GROUP_CONFIG_DIFFERS;
		} else {
			s->group_config = GROUP_CONFIG_UNKNOWN;
		}
		secret_free(theirs);
		if (s->group_config == GROUP_CONFIG_DIFFERS) {
			differ++;
			if (was != GROUP_CONFIG_DIFFERS)
				log_warn("%s: this site's definition of the server differs from the master's (compare "
					 "the config files of the sites)", s->name);
		}
	}
	k->group_differing = differ;
}

/* ---- the group's master key rotation ---- */

/* master.key.next into *key when it is there; 0 (none), 1, or -errno. */
static int next_key_read(struct keeper *k, struct secret **key)
{
	char err[512];
	int r = store_next_key_read(k->cfg->data_dir, key, err, sizeof(err));

	if (r < 0)
		log_error("replication: %s", err);
	return r;
}

void group_next_key_load(struct keeper *k)
{
	struct secret *key = NULL;
	int r;

	if (!k->store || !store_is_group(k->store) || store_has_next_key(k->store))
		return;
	if (next_key_read(k, &key) == 1) {
		r = store_set_next_key(k->store, key);
		if (r == 0)
			log_info("replication: the next master key (%s) is loaded: records sealed with it open, and "
				 "the master's key.rotate moves the group to it", STORE_KEY_NEXT_FILE);
		else if (r == -EEXIST)
			log_info("replication: %s holds the current key already", STORE_KEY_NEXT_FILE);
	}
	secret_free(key);
}

/* After the next key became the key (here or at the master): the file too. */
static void key_promoted(struct keeper *k)
{
	char err[600];

	if (!store_key_promoted(k->store))
		return;
	if (getenv("CREDENTIALS_DIRECTORY")) {
		log_error("replication: the group now uses the key of %s; this keeper takes its key from systemd "
			  "credentials: update the credential (mcpctl key export --plain, systemd-creds encrypt)",
			  STORE_KEY_NEXT_FILE);
		return;
	}
	if (store_next_key_adopt(k->cfg->data_dir, err, sizeof(err)) < 0) {
		log_error("replication: the group now uses the next master key, but %s", err);
		return;
	}
	log_info("replication: the group's master key was rotated; this site uses the new one (%s)", STORE_KEY_FILE);
}

int group_key_rotate(struct keeper *k, unsigned long *records, char *err, size_t errlen)
{
	int r;

	group_next_key_load(k);
	if (!store_has_next_key(k->store)) {
		snprintf(err, errlen, "no next master key here: install it on every site first (mcpctl key import "
			 "--next FILE), then run this again");
		return -ENOENT;
	}
	r = store_group_rotate(k->store, records);
	key_promoted(k);
	if (r == STORE_E_NO_QUORUM) {
		log_warn("replication: the key rotation committed here but no majority acknowledged it in time");
		return 0;
	}
	if (r != 0)
		snprintf(err, errlen, "the rotation failed: %s; nothing changed", store_strerror(r));
	else
		log_info("replication: re-sealed %lu record(s) with the next master key", *records);
	return r == 0 ? 0 : r < 0 ? r : -EIO;
}

static int skip_change(const char *key, const struct secret *plain, int status, void *ctx)
{
	return 0;
}

int group_open_store(struct keeper *k, char *err, size_t errlen)
{
	const struct config_replication *rc = &k->cfg->replication;
	struct store_site peers[32];
	struct store_group g = {
		.local = { rc->local.host, rc->local.port },
		.peers = peers,
		.n_peers = rc->n_peers,
		.priority = rc->priority,
		.create = rc->create,
		.lease_timeout_ms = rc->lease_timeout_ms,
		.heartbeat_ms = rc->heartbeat_ms,
		.ack_timeout_ms = rc->ack_timeout_ms,
	};
	struct store_group_state st;
	struct secret *next = NULL;
	int r;

	if (rc->n_peers > ARRAY_SIZE(peers)) {
		snprintf(err, errlen, "replication.peers: too many sites");
		return -EINVAL;
	}
	for (size_t i = 0; i < rc->n_peers; i++)
		peers[i] = (struct store_site){ rc->peers[i].host, rc->peers[i].port };
	k->group_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (k->group_fd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		return -errno;
	}
	g.notify_fd = k->group_fd;
	if (next_key_read(k, &next) == 1)
		g.next_key = next;
	log_info("replication: site %s:%d%s, %zu peer(s), priority %d; joining the group", rc->local.host,
		 rc->local.port, rc->create ? " (creates the group)" : "", rc->n_peers, rc->priority);
	r = store_open_group(k->cfg->data_dir, k->master_key, &g, GROUP_START_WAIT_MS, &k->store, err, errlen);
	secret_free(next);
	if (r != 0)
		return r;
	key_promoted(k);
	k->group_ev = event_new(k->base, k->group_fd, EV_READ | EV_PERSIST, on_group_event, k);
	k->group_poll = event_new(k->base, -1, EV_PERSIST, on_group_poll, k);
	if (!k->group_ev || event_add(k->group_ev, NULL) < 0 || !k->group_poll ||
	    event_add(k->group_poll, &(struct timeval){ 0, GROUP_POLL_MS * 1000 }) < 0) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	/* What the start reads is current up to here. */
	store_changes(k->store, &k->group_seq, skip_change, NULL);
	if (store_group_state(k->store, &st) == 0) {
		char master[300];

		k->group_role = st.role;
		site_text(&st, master, sizeof(master));
		log_info("replication: started as %s; master %s; %s", store_role_name(st.role), master,
			 st.ready ? "the store is readable" : "the store is not readable yet");
	}
	return 0;
}

void group_close(struct keeper *k)
{
	if (k->group_ev)
		event_free(k->group_ev);
	k->group_ev = NULL;
	if (k->group_poll)
		event_free(k->group_poll);
	k->group_poll = NULL;
	if (k->group_fd >= 0)
		close(k->group_fd);
	k->group_fd = -1;
}

struct json_object *group_status_json(struct keeper *k)
{
	const struct config_replication *rc = &k->cfg->replication;
	struct store_group_state st;
	struct json_object *o, *sites;
	char buf[300];
	size_t connected = 0, total;

	if (!k->store || !store_is_group(k->store))
		return NULL;
	o = json_object_new_object();
	snprintf(buf, sizeof(buf), "%s:%d", rc->local.host, rc->local.port);
	json_object_object_add(o, PARAM_KEY_SITE, json_object_new_string(buf));
	if (store_group_state(k->store, &st) < 0) {
		json_object_object_add(o, PARAM_KEY_ROLE, json_object_new_string("unknown"));
		return o;
	}
	json_object_object_add(o, PARAM_KEY_ROLE, json_object_new_string(store_role_name(st.role)));
	if (st.role == STORE_ROLE_MASTER)
		json_object_object_add(o, PARAM_KEY_MASTER, json_object_new_string(buf));
	else if (st.master_host[0]) {
		site_text(&st, buf, sizeof(buf));
		json_object_object_add(o, PARAM_KEY_MASTER, json_object_new_string(buf));
	} else {
		json_object_object_add(o, PARAM_KEY_MASTER, NULL);
	}
	json_object_object_add(o, PARAM_KEY_READY, json_object_new_boolean(st.ready));
	json_object_object_add(o, PARAM_KEY_CAUGHT_UP,
			       json_object_new_boolean(st.role == STORE_ROLE_MASTER || st.startup_done));
	json_object_object_add(o, PARAM_KEY_GENERATION, json_object_new_int64(st.generation));
	json_object_object_add(o, PARAM_KEY_ELECTIONS, json_object_new_int64((int64_t)st.elections));
	json_object_object_add(o, PARAM_KEY_MASTER_CHANGES, json_object_new_int64((int64_t)st.master_changes));
	snprintf(buf, sizeof(buf), "%u/%u", st.next_lsn_file, st.next_lsn_offset);
	json_object_object_add(o, PARAM_KEY_LOG_POSITION, json_object_new_string(buf));
	json_object_object_add(o, PARAM_KEY_LOG_QUEUED, json_object_new_int64((int64_t)st.log_queued));
	json_object_object_add(o, PARAM_KEY_QUORUM_MISSED, json_object_new_int64((int64_t)st.perm_failed));
	sites = json_object_new_array();
	for (size_t i = 0; i < st.n_sites; i++) {
		struct json_object *s = json_object_new_object();

		snprintf(buf, sizeof(buf), "%s:%d", st.sites[i].host, st.sites[i].port);
		json_object_object_add(s, PARAM_KEY_SITE, json_object_new_string(buf));
		json_object_object_add(s, PARAM_KEY_CONNECTED, json_object_new_boolean(st.sites[i].connected));
		json_object_object_add(s, PARAM_KEY_ROLE,
				       json_object_new_string(st.sites[i].master ? "master" : "replica"));
		json_object_array_add(sites, s);
		connected += st.sites[i].connected;
	}
	json_object_object_add(o, PARAM_KEY_SITES, sites);
	json_object_object_add(o, PARAM_KEY_SERVERS_DIFFERING, json_object_new_int64((int64_t)k->group_differing));
	/* Leases: the master holds its lease while a majority (itself
	 * included) answers; a site cut off from the majority cannot act. */
	total = rc->n_peers + 1;
	json_object_object_add(o, PARAM_KEY_MAJORITY, json_object_new_boolean((connected + 1) * 2 > total));
	json_object_object_add(o, PARAM_KEY_LEASE_TIMEOUT_MS, json_object_new_int(rc->lease_timeout_ms));
	json_object_object_add(o, PARAM_KEY_LEASE,
			       json_object_new_string(st.role != STORE_ROLE_MASTER ? "none"
						      : (connected + 1) * 2 > total ? "held"
										: "lost"));
	return o;
}
