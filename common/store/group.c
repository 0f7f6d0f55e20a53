/*
 * The store of a replication group site (store.h, store_open_group()):
 * Berkeley DB's replication manager over the same environment.
 *
 * repmgr runs threads of its own (its listener, message and election
 * threads) inside the opening process, so the environment and every handle
 * are opened with DB_THREAD. Its event callback runs on those threads and
 * does exactly two things: it ORs the event's bit into an atomic word and
 * writes the group's eventfd. Everything else (reading the site's role,
 * logging elections, reopening handles) happens on the opener's own thread
 * when it reads that eventfd (store_group_events(), store_group_state()).
 *
 * The one exception is DB_EVENT_REP_PERM_FAILED: repmgr raises it in the
 * thread that commits, when a commit did not gather its acknowledgements
 * within the ack timeout. The callback also bumps a counter for it, which
 * store_txn() compares around a commit that needs a quorum.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <db.h>

#include "log.h"
#include "store-private.h"
#include "store.h"

/* Berkeley DB 5.3's replication system database (group membership): a directory that has it holds
 * a site of a replication group. */
#define MEMBERSHIP_FILE "__db.rep.system"

struct store_group_rt {
	struct store_group conf;	/* strings copied below */
	char *strings;
	int notify_fd;
	atomic_uint pending;		/* STORE_GROUP_EV_* bits since the last read */
	atomic_ulong perm_failed;	/* DB_EVENT_REP_PERM_FAILED count */
	atomic_int role;		/* what the last role event said */
	atomic_int startup_done;
};

static unsigned event_bit(u_int32_t event)
{
	switch (event) {
	case DB_EVENT_REP_MASTER:
	case DB_EVENT_REP_ELECTED:
		return STORE_GROUP_EV_MASTER;
	case DB_EVENT_REP_CLIENT:
		return STORE_GROUP_EV_CLIENT;
	case DB_EVENT_REP_NEWMASTER:
		return STORE_GROUP_EV_NEWMASTER;
	case DB_EVENT_REP_STARTUPDONE:
		return STORE_GROUP_EV_STARTUPDONE;
	case DB_EVENT_REP_PERM_FAILED:
		return STORE_GROUP_EV_PERM_FAILED;
	case DB_EVENT_REP_DUPMASTER:
		return STORE_GROUP_EV_DUPMASTER;
	case DB_EVENT_REP_ELECTION_FAILED:
		return STORE_GROUP_EV_ELECTION_FAILED;
	case DB_EVENT_REP_CONNECT_ESTD:
	case DB_EVENT_REP_CONNECT_BROKEN:
	case DB_EVENT_REP_CONNECT_TRY_FAILED:
	case DB_EVENT_REP_MASTER_FAILURE:
		return STORE_GROUP_EV_CONNECTION;
	case DB_EVENT_REP_JOIN_FAILURE:
		return STORE_GROUP_EV_JOIN_FAILURE;
	case DB_EVENT_REP_LOCAL_SITE_REMOVED:
		return STORE_GROUP_EV_REMOVED;
	case DB_EVENT_REP_SITE_ADDED:
	case DB_EVENT_REP_SITE_REMOVED:
		return STORE_GROUP_EV_MEMBERSHIP;
	case DB_EVENT_PANIC:
		return STORE_GROUP_EV_PANIC;
	default:
		return STORE_GROUP_EV_OTHER;
	}
}

/* On repmgr's threads (and in a committing thread): atomics and write(2) only. */
static void on_event(DB_ENV *env, u_int32_t event, void *info)
{
	struct store_group_rt *g = env->app_private;
	uint64_t one = 1;
	unsigned bit = event_bit(event);

	(void)info;
	if (!g)
		return;
	if (bit == STORE_GROUP_EV_PERM_FAILED)
		atomic_fetch_add(&g->perm_failed, 1);
	if (bit == STORE_GROUP_EV_MASTER)
		atomic_store(&g->role, STORE_ROLE_MASTER);
	else if (bit == STORE_GROUP_EV_CLIENT)
		atomic_store(&g->role, STORE_ROLE_REPLICA);
	else if (bit == STORE_GROUP_EV_STARTUPDONE)
		atomic_store(&g->startup_done, 1);
	atomic_fetch_or(&g->pending, bit);
	if (g->notify_fd >= 0 && write(g->notify_fd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is full, the reader is woken anyway. */
	}
}

bool store_dir_is_group(const char *dir)
{
	char path[4096];
	struct stat st;

	if (snprintf(path, sizeof(path), "%s/" MEMBERSHIP_FILE, dir) >= (int)sizeof(path))
		return false;
	return stat(path, &st) == 0;
}

struct store_group_rt *store_group_rt_new(const struct store_group *conf)
{
	struct store_group_rt *g = calloc(1, sizeof(*g));
	size_t need = strlen(conf->local.host) + 1;
	char *p;

	if (!g)
		return NULL;
	for (size_t i = 0; i < conf->n_peers; i++)
		need += strlen(conf->peers[i].host) + 1;
	g->strings = malloc(need);
	g->conf = *conf;
	g->conf.peers = calloc(conf->n_peers ? conf->n_peers : 1, sizeof(*conf->peers));
	if (!g->strings || !g->conf.peers) {
		store_group_rt_free(g);
		return NULL;
	}
	p = g->strings;
	g->conf.local.host = strcpy(p, conf->local.host);
	p += strlen(p) + 1;
	for (size_t i = 0; i < conf->n_peers; i++) {
		((struct store_site *)g->conf.peers)[i] = conf->peers[i];
		((struct store_site *)g->conf.peers)[i].host = strcpy(p, conf->peers[i].host);
		p += strlen(p) + 1;
	}
	g->notify_fd = conf->notify_fd;
	atomic_init(&g->pending, 0);
	atomic_init(&g->perm_failed, 0);
	atomic_init(&g->role, STORE_ROLE_UNKNOWN);
	atomic_init(&g->startup_done, 0);
	return g;
}

void store_group_rt_free(struct store_group_rt *g)
{
	if (!g)
		return;
	free((void *)g->conf.peers);
	free(g->strings);
	free(g);
}

/* A remote site, as a helper to join the group through. */
static int helper_site(DB_ENV *env, const struct store_site *at, char *err, size_t errlen)
{
	DB_SITE *ds = NULL;
	int ret;

	ret = env->repmgr_site(env, at->host, (u_int)at->port, &ds, 0);
	if (ret == 0)
		ret = ds->set_config(ds, DB_BOOTSTRAP_HELPER, 1);
	if (ds)
		ds->close(ds);
	if (ret)
		store_errf(err, errlen, "replication peer %s:%d: %s", at->host, at->port, db_strerror(ret));
	return ret;
}

/* Before DB_ENV->open: the sites, the policy and the timeouts. */
int store_group_configure(DB_ENV *env, struct store_group_rt *g, char *err, size_t errlen)
{
	const struct store_group *c = &g->conf;
	DB_SITE *ds = NULL;
	int ret;

	env->app_private = g;
	ret = env->set_event_notify(env, on_event);
	if (ret)
		goto fail;
	ret = env->repmgr_site(env, c->local.host, (u_int)c->local.port, &ds, 0);
	if (ret == 0)
		ret = ds->set_config(ds, DB_LOCAL_SITE, 1);
	if (ret == 0 && c->create)
		ret = ds->set_config(ds, DB_GROUP_CREATOR, 1);
	if (ds)
		ds->close(ds);
	if (ret) {
		store_errf(err, errlen, "replication.listen %s:%d: %s", c->local.host, c->local.port,
			   db_strerror(ret));
		return ret;
	}
	for (size_t i = 0; i < c->n_peers; i++) {
		ret = helper_site(env, &c->peers[i], err, errlen);
		if (ret)
			return ret;
	}
	/* Majority acknowledgements for every commit that matters, leases so
	 * that at most one site acts as master at a time, heartbeats so that a
	 * paused master (its TCP connections still open) is replaced. */
	ret = env->repmgr_set_ack_policy(env, DB_REPMGR_ACKS_QUORUM);
	if (ret == 0)
		ret = env->rep_set_priority(env, (u_int32_t)c->priority);
	if (ret == 0)
		ret = env->rep_set_config(env, DB_REP_CONF_LEASE, 1);
	/* While the master brings a joining site up to date, Berkeley DB
	 * holds every other operation back (seconds): on the keeper's loop
	 * that must be an error at once (DB_REP_LOCKOUT: -EAGAIN), retried
	 * later, not a wait. */
	if (ret == 0)
		ret = env->rep_set_config(env, DB_REP_CONF_NOWAIT, 1);
	if (ret == 0)
		ret = env->rep_set_timeout(env, DB_REP_LEASE_TIMEOUT, (db_timeout_t)c->lease_timeout_ms * 1000);
	/* Clocks may run apart by up to 1 % (STORE_GROUP_CLOCK_SKEW_PCT). */
	if (ret == 0)
		ret = env->rep_set_clockskew(env, 100 + STORE_GROUP_CLOCK_SKEW_PCT, 100);
	if (ret == 0)
		ret = env->rep_set_timeout(env, DB_REP_ACK_TIMEOUT, (db_timeout_t)c->ack_timeout_ms * 1000);
	if (ret == 0)
		ret = env->rep_set_timeout(env, DB_REP_HEARTBEAT_SEND, (db_timeout_t)c->heartbeat_ms * 1000);
	if (ret == 0)
		ret = env->rep_set_timeout(env, DB_REP_HEARTBEAT_MONITOR, (db_timeout_t)c->heartbeat_ms * 3 * 1000);
	/* A master's checkpoint otherwise sleeps 30 s (by default) for the
	 * replicas to flush first: on the keeper's loop, never. */
	if (ret == 0)
		ret = env->rep_set_timeout(env, DB_REP_CHECKPOINT_DELAY, 0);
	if (ret == 0)
		ret = env->rep_set_timeout(env, DB_REP_CONNECTION_RETRY, 1000000);
	if (ret == 0)
		ret = env->rep_set_timeout(env, DB_REP_ELECTION_RETRY, 2000000);
	if (ret == 0)
		ret = env->rep_set_timeout(env, DB_REP_ELECTION_TIMEOUT, 2000000);
	if (ret == 0)
		return 0;
fail:
	store_errf(err, errlen, "replication settings: %s", db_strerror(ret));
	return ret;
}

void store_group_reset(struct store_group_rt *g)
{
	atomic_store(&g->role, STORE_ROLE_UNKNOWN);
	atomic_store(&g->startup_done, 0);
}

/* After DB_ENV->open: listen, connect, hold an election. */
int store_group_start(DB_ENV *env, char *err, size_t errlen)
{
	int ret = env->repmgr_start(env, 3, DB_REP_ELECTION);

	if (ret && ret != DB_REP_IGNORE) {
		store_errf(err, errlen, "starting replication: %s", db_strerror(ret));
		return ret;
	}
	return 0;
}

int store_group_role(struct store_group_rt *g)
{
	return atomic_load(&g->role);
}

bool store_group_startup_done(struct store_group_rt *g)
{
	return atomic_load(&g->startup_done) != 0;
}

bool store_group_majority(DB_ENV *env, struct store_group_rt *g)
{
	DB_REPMGR_SITE *list = NULL;
	DB_REP_STAT *rs = NULL;
	u_int count = 0, members;
	size_t connected = 0;

	/* The group's size as Berkeley DB knows it (its membership grows as
	 * sites join: a creator alone is a majority of one). */
	if (env->rep_stat(env, &rs, 0) != 0)
		return false;
	members = rs->st_nsites ? rs->st_nsites : 1;
	free(rs);
	if (env->repmgr_site_list(env, &count, &list) != 0)
		return false;
	for (u_int i = 0; i < count; i++)
		connected += list[i].status == DB_REPMGR_CONNECTED;
	free(list);
	(void)g;
	return (connected + 1) * 2 > members;
}

int store_group_lease_ms(struct store_group_rt *g)
{
	return g->conf.lease_timeout_ms;
}

unsigned long store_group_perm_failed(struct store_group_rt *g)
{
	return atomic_load(&g->perm_failed);
}

unsigned store_group_take_events(struct store_group_rt *g)
{
	uint64_t n;

	if (g->notify_fd >= 0 && read(g->notify_fd, &n, sizeof(n)) < 0) {
		/* EAGAIN: nothing counted since the last read. */
	}
	return atomic_exchange(&g->pending, 0);
}

int store_group_read_state(DB_ENV *env, struct store_group_rt *g, struct store_group_state *st)
{
	DB_REPMGR_SITE *list = NULL;
	DB_REP_STAT *rs = NULL;
	u_int count = 0;
	int ret;

	memset(st, 0, sizeof(*st));
	st->master_eid = -1;
	ret = env->rep_stat(env, &rs, 0);
	if (ret)
		return ret;
	st->role = rs->st_status == DB_REP_MASTER	? STORE_ROLE_MASTER
		   : rs->st_status == DB_REP_CLIENT ? STORE_ROLE_REPLICA
						    : STORE_ROLE_UNKNOWN;
	st->master_eid = (int)rs->st_master;
	/* A client with no master (an election, no majority) is no replica
	 * of anything yet. */
	if (st->role == STORE_ROLE_REPLICA && rs->st_master == DB_EID_INVALID)
		st->role = STORE_ROLE_UNKNOWN;
	st->self_eid = (int)rs->st_env_id;
	st->startup_done = rs->st_startup_complete != 0;
	st->generation = rs->st_gen;
	st->elections = rs->st_elections;
	st->elections_won = rs->st_elections_won;
	st->master_changes = rs->st_master_changes;
	st->next_lsn_file = rs->st_next_lsn.file;
	st->next_lsn_offset = rs->st_next_lsn.offset;
	st->log_queued = rs->st_log_queued;
	st->lease_checks_missed = rs->st_lease_chk_misses;
	free(rs);
	st->perm_failed = store_group_perm_failed(g);

	ret = env->repmgr_site_list(env, &count, &list);
	if (ret)
		return ret;
	for (u_int i = 0; i < count && st->n_sites < STORE_GROUP_SITES_MAX; i++) {
		struct store_group_site *s = &st->sites[st->n_sites++];

		snprintf(s->host, sizeof(s->host), "%s", list[i].host);
		s->port = (int)list[i].port;
		s->eid = list[i].eid;
		s->connected = list[i].status == DB_REPMGR_CONNECTED;
		s->master = list[i].eid == st->master_eid;
	}
	free(list);
	if (st->role == STORE_ROLE_MASTER) {
		snprintf(st->master_host, sizeof(st->master_host), "%s", g->conf.local.host);
		st->master_port = g->conf.local.port;
	} else {
		for (size_t i = 0; i < st->n_sites; i++)
			if (st->sites[i].master) {
				snprintf(st->master_host, sizeof(st->master_host), "%s", st->sites[i].host);
				st->master_port = st->sites[i].port;
			}
	}
	return 0;
}
