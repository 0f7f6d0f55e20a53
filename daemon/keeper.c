/*
 * The keeper's life: load the configuration, open the store, take the
 * control socket (systemd's or our own), start the oauth child, load every
 * server's schedule, then run one libevent loop until SIGTERM.
 *
 * SIGHUP reloads the configuration: servers added are scheduled, removed
 * ones unscheduled, changed ones reloaded. Everything new is built before
 * anything is swapped in (keeper_apply_config()), so a bad new file, or a reload
 * that runs out of memory, is logged and the old configuration stays whole.
 *
 * Under systemd: READY=1 once the socket and the store are up, STOPPING=1 on
 * the way out, WATCHDOG=1 at half the watchdog interval.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <json-c/json.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "jail.h"
#include "keeper.h"
#include "log.h"
#include "paths.h"
#include "proto.h"
#include "secret.h"
#include "sock.h"
#include "store.h"
#include "timefmt.h"
#include "token.h"
#include "util.h"

/* Clock checks and log checkpoints. */
#define MAINTENANCE_SEC 2
#define CLOCK_JUMP_MS 1500
#define CHECKPOINT_EVERY 150 /* maintenance ticks: 5 min */
#define DRAIN_MAX_SEC 10 /* a stop waits this long at most for refreshes in flight */

int64_t keeper_now(void)
{
	return (int64_t)time(NULL);
}

int64_t keeper_now_ms(void)
{
	return time_now_ms();
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * The servers by name: open addressing over positions in a server array, so
 * a lookup costs the same for ten servers or a hundred thousand. A reload
 * builds the index of its new array beside the running one.
 */
static size_t name_hash(const char *name)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */

	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 1099511628211ull;
	return (size_t)h;
}

/* 0 with *index and *mask, or -ENOMEM (a reload then keeps the old one). */
static int index_build(struct server *const *servers, size_t n, uint32_t **index, size_t *mask)
{
	size_t slots = 16;
	uint32_t *idx;

	while (slots < 2 * n)
		slots *= 2;
	idx = calloc(slots, sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		size_t j = name_hash(servers[i]->name) & (slots - 1);

		while (idx[j])
			j = (j + 1) & (slots - 1);
		idx[j] = (uint32_t)(i + 1);
	}
	*index = idx;
	*mask = slots - 1;
	return 0;
}

/* index_find(): no server of that name. */
#define INDEX_NONE ((ssize_t)-1)

/* The position of the server called name, or INDEX_NONE. */
static ssize_t index_find(struct server *const *servers, const uint32_t *index, size_t mask, const char *name)
{
	if (!index)
		return INDEX_NONE;
	for (size_t j = name_hash(name) & mask; index[j]; j = (j + 1) & mask) {
		size_t i = index[j] - 1;

		if (strcmp(servers[i]->name, name) == 0)
			return (ssize_t)i;
	}
	return INDEX_NONE;
}

struct server *keeper_find_server(struct keeper *k, const char *name)
{
	ssize_t i = index_find(k->servers, k->index, k->index_mask, name);

	return i < 0 ? NULL : k->servers[i];
}

void server_set_error(struct server *s, const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	free(s->last_error);
	s->last_error = NULL;
	if (!fmt)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	/* Not xstrdup(): this runs inside a reload's swap, which must not die.
	 * Short of memory, the error is not shown. */
	s->last_error = strdup(buf);
}

/* A server for cs, not yet scheduled: 0 with *out, -ENOMEM or -ENAMETOOLONG. */
static int server_new(struct keeper *k, const struct config_server *cs, struct server **out)
{
	char key[STORE_SERVER_KEY_MAX + 1];
	struct server *s;
	int r = store_server_key(cs->name, cs->url, key, sizeof(key));

	if (r < 0)
		return r;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->k = k;
	s->conf = cs;
	s->heap_idx = -1;
	s->due_idx = -1;
	s->name = strdup(cs->name);
	s->key = strdup(key);
	if (!s->name || !s->key) {
		free(s->key);
		free(s->name);
		free(s);
		return -ENOMEM;
	}
	*out = s;
	return 0;
}

/* Ends what runs for the server (login, worker, refresh) and frees it; a
 * server that was never scheduled is only freed. */
static void server_free(struct keeper *k, struct server *s)
{
	login_forget(k, s, "the server left the configuration");
	workers_forget(k, s);
	refresh_forget(k, s);
	refresh_unstored_last(k, s);
	reauth_free(k, s);
	free(s->last_error);
	free(s->key);
	free(s->name);
	free(s);
}

bool server_token_read(struct keeper *k, const struct server *s, struct token *t)
{
	struct secret *plain = NULL;

	/* A refreshed token the store could not take yet is the current one. */
	if (s->unstored) {
		plain = secret_from(s->unstored->data, s->unstored->len);
		return plain && token_decode(plain, t) == 0;
	}
	if (store_get(k->store, STORE_TOKENS, s->key, &plain) != 0) {
		secret_free(plain);
		return false;
	}
	return token_decode(plain, t) == 0;
}

void keeper_orphan_name(const char *key, char *buf, size_t len)
{
	const char *hash = strrchr(key, '#');
	size_t n = hash ? (size_t)(hash - key) : strlen(key);

	snprintf(buf, len, "%.*s", (int)n, key);
}

static void orphans_free(char **orphans, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(orphans[i]);
	free(orphans);
}

void keeper_orphan_drop(struct keeper *k, const char *key)
{
	for (size_t i = 0; i < k->n_orphans; i++) {
		if (strcmp(k->orphans[i], key) == 0) {
			free(k->orphans[i]);
			k->orphans[i] = k->orphans[--k->n_orphans];
			return;
		}
	}
}

/* Whether a server's OAuth identity (and so its schedule) survives a reload. */
static bool same_oauth(const struct config_server *a, const struct config_server *b)
{
	return a->oauth_enabled == b->oauth_enabled && a->enabled == b->enabled &&
	       !strcmp(a->url ? a->url : "", b->url ? b->url : "");
}

/*
 * What a configuration needs besides itself, built while the running state
 * is only read. Allocations here are checked, not x*: a reload that runs out
 * of memory is refused and the keeper goes on as it was.
 */
struct build {
	struct config *cfg;
	struct server **servers;	/* one per cfg->servers[i], in that order */
	size_t n;
	uint32_t *index;
	size_t index_mask;
	ssize_t *from;			/* per servers[i]: its position in k->servers when
					 * taken over (same OAuth identity), else -1 (new) */
	bool *kept;			/* per k->servers[j]: taken over */
	char **orphans;			/* token keys of no server in servers */
	size_t n_orphans;
	size_t pending;			/* new servers with a record to read */
	struct child_users users;	/* system mode: cfg's users, looked up */
};

/* Frees what build made; the running state never saw any of it. */
static void build_free(struct keeper *k, struct build *b)
{
	for (size_t i = 0; b->servers && i < b->n; i++)
		if (b->servers[i] && b->from[i] < 0)
			server_free(k, b->servers[i]);
	free(b->servers);
	free(b->index);
	free(b->from);
	free(b->kept);
	orphans_free(b->orphans, b->n_orphans);
	config_free(b->cfg);
}

static int orphan_add(struct build *b, const char *key)
{
	if ((b->n_orphans & (b->n_orphans - 1)) == 0) {
		/* Grows at powers of two. */
		char **more = realloc(b->orphans, (b->n_orphans ? 2 * b->n_orphans : 1) * sizeof(*more));

		if (!more)
			return -ENOMEM;
		b->orphans = more;
	}
	b->orphans[b->n_orphans] = strdup(key);
	if (!b->orphans[b->n_orphans])
		return -ENOMEM;
	b->n_orphans++;
	return 0;
}

/* The server of servers a token key belongs to, or NULL (an orphan). */
static struct server *server_of_key(struct server *const *servers, const uint32_t *index, size_t mask,
				    const char *key)
{
	char name[STORE_SERVER_KEY_MAX + 1];
	ssize_t i;

	keeper_orphan_name(key, name, sizeof(name));
	i = index_find(servers, index, mask, name);
	return i >= 0 && strcmp(servers[i]->key, key) == 0 ? servers[i] : NULL;
}

struct server *keeper_server_of_key(struct keeper *k, const char *key)
{
	return server_of_key(k->servers, k->index, k->index_mask, key);
}

static int find_orphan(const char *key, const struct secret *plain, int status, void *ctx)
{
	struct build *b = ctx;

	return server_of_key(b->servers, b->index, b->index_mask, key) ? 0 : orphan_add(b, key);
}

/*
 * The build phase: the server array of cfg (servers whose OAuth identity did
 * not change are taken over as they are, the others made anew), its index,
 * the orphaned tokens among the stored ones, and room in the refresh queues
 * for every server. 0, or a negative errno value with nothing changed.
 */
static int build_config(struct keeper *k, struct build *b)
{
	size_t n = b->cfg->n_servers;
	int r;

	/* The users now, not at a child's start: who they are may have changed. */
	if (k->system_mode) {
		r = child_users_resolve(b->cfg, &b->users);
		if (r < 0)
			return r;
	}
	b->n = n;
	b->servers = calloc(n ? n : 1, sizeof(*b->servers));
	b->from = calloc(n ? n : 1, sizeof(*b->from));
	b->kept = calloc(k->n_servers ? k->n_servers : 1, sizeof(*b->kept));
	if (!b->servers || !b->from || !b->kept)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const struct config_server *cs = &b->cfg->servers[i];
		ssize_t j = index_find(k->servers, k->index, k->index_mask, cs->name);

		b->from[i] = -1;
		if (j >= 0 && !b->kept[j] && same_oauth(k->servers[j]->conf, cs)) {
			b->kept[j] = true;
			b->from[i] = j;
			b->servers[i] = k->servers[j];
			continue;
		}
		r = server_new(k, cs, &b->servers[i]);
		if (r < 0)
			return r;
		/* New servers (and changed ones) read their record at the swap. */
		b->servers[i]->load_pending = refresh_reset(k, b->servers[i]);
		b->pending += b->servers[i]->load_pending;
	}
	r = index_build(b->servers, n, &b->index, &b->index_mask);
	if (r < 0)
		return r;
	r = store_list_keys(k->store, STORE_TOKENS, find_orphan, b);
	if (r == -ENOMEM)
		return r;
	if (r < 0)
		log_warn("listing stored tokens failed: %s; the orphaned tokens shown may be incomplete",
			 store_strerror(r));
	return refresh_reserve(k, n > k->n_servers ? n : k->n_servers);
}

static int load_one(const char *key, const struct secret *plain, int status, void *ctx)
{
	struct keeper *k = ctx;
	struct server *s = server_of_key(k->servers, k->index, k->index_mask, key);

	if (s && s->load_pending) {
		s->load_pending = false;
		refresh_take_record(k, s, plain, status);
	}
	return 0;
}

/*
 * Reads the records of the servers marked load_pending, in one walk over the
 * store (a read per server would cost a transaction each). Servers without a
 * record are scheduled as such.
 */
static void load_tokens(struct keeper *k, size_t pending)
{
	int r = 0;

	if (pending)
		r = store_list(k->store, STORE_TOKENS, load_one, k);
	if (r < 0)
		log_warn("listing stored tokens failed: %s; reading each server's record instead",
			 store_strerror(r));
	for (size_t i = 0; pending && i < k->n_servers; i++) {
		struct server *s = k->servers[i];

		if (!s->load_pending)
			continue;
		s->load_pending = false;
		if (r < 0)
			refresh_load(k, s);
		else
			refresh_take_record(k, s, NULL, STORE_E_NOT_FOUND);
	}
	for (size_t i = 0; i < k->n_orphans; i++)
		log_info("token %s belongs to no configured server: kept, shown as orphaned", k->orphans[i]);
}

void keeper_reload_tokens(struct keeper *k, const char *why)
{
	size_t pending = 0;

	log_info("reading every token record again: %s", why);
	for (size_t i = 0; i < k->n_servers; i++) {
		struct server *s = k->servers[i];

		if (s->in_flight || s->login_active)
			continue;	/* their answer or login settles them */
		refresh_pause(k, s);
		s->load_pending = refresh_reset(k, s);
		pending += s->load_pending;
	}
	load_tokens(k, pending);
	/* Running workers get what the store holds now. */
	for (size_t i = 0; i < k->n_servers; i++)
		workers_token_changed(k, k->servers[i]);
}

void keeper_group_demoted(struct keeper *k)
{
	for (size_t i = 0; i < k->n_servers; i++) {
		struct server *s = k->servers[i];

		if (s->unstored) {
			log_warn("%s: a refreshed token this site could not store is dropped: the new master's "
				 "record decides", s->name);
			refresh_unstored_drop(s);
		}
		refresh_pause(k, s);
	}
}

/*
 * Applies cfg (taking it) at the start and at every reload, in this order:
 *
 * 1. Build (build_config()): the new configuration and every new in-memory
 *    structure, complete, while the running state is only read. A failure
 *    here (out of memory, a server key too long) frees what was built and
 *    returns it: the old configuration, servers and schedules stay exactly
 *    as they were.
 * 2. Swap, with steps that cannot fail: the new array, index and orphan
 *    list go in, servers taken over get their new settings (a worker whose
 *    upstream changed restarts), removed and replaced servers are ended,
 *    the configuration is exchanged, new servers read their records.
 *
 * So the keeper never stops half-way through a reload.
 */
int keeper_apply_config(struct keeper *k, struct config *cfg)
{
	struct build b = { .cfg = cfg };
	struct config *old = k->cfg;
	struct server **old_servers = k->servers;
	size_t old_n = k->n_servers, old_mask = k->index_mask;
	uint32_t *old_index = k->index;
	int r = build_config(k, &b);

	if (r < 0) {
		build_free(k, &b);
		return r;
	}

	/* The swap: from here on nothing fails. Children started from here on
	 * (eager workers below) run as the new users; running ones keep theirs. */
	k->users = b.users;
	k->servers = TAKE_PTR(b.servers);
	k->n_servers = b.n;
	k->index = TAKE_PTR(b.index);
	k->index_mask = b.index_mask;
	orphans_free(k->orphans, k->n_orphans);
	k->orphans = TAKE_PTR(b.orphans);
	k->n_orphans = b.n_orphans;
	b.n_orphans = 0;
	for (size_t i = 0; i < k->n_servers; i++) {
		struct server *s = k->servers[i];
		const struct config_server *cs = &cfg->servers[i];

		if (b.from[i] >= 0) {
			if (!workers_settings_equal(s->conf, cs) && s->worker) {
				log_info("%s: upstream settings changed; restarting its worker", cs->name);
				workers_forget(k, s);
			}
			s->conf = cs;
		} else if (index_find(old_servers, old_index, old_mask, cs->name) >= 0) {
			log_info("%s: settings changed; reloading its token", cs->name);
		} else if (old) {
			log_info("%s: added", cs->name);
		}
	}
	for (size_t j = 0; j < old_n; j++) {
		if (b.kept[j])
			continue;
		if (!keeper_find_server(k, old_servers[j]->name))
			log_info("%s: removed", old_servers[j]->name);
		server_free(k, old_servers[j]);
	}
	free(old_servers);
	free(old_index);
	k->cfg = cfg;
	load_tokens(k, b.pending);
	group_config_check(k);
	api_config_changed(k, old);
	config_free(old);
	workers_start_eager(k);
	b.cfg = NULL;
	build_free(k, &b);
	return 0;
}

/*
 * SIGHUP and the control method reload. The new file is loaded into a configuration of its own,  then
 * keeper_apply_config() builds everything it needs before it swaps anything in:
 * a file that does not load, or a build that fails, leaves the running
 * configuration and every server as they were.
 */
int keeper_reload(struct keeper *k, char *err, size_t errlen)
{
	struct config *cfg = NULL;
	int r;

	log_info("reloading %s", k->config_path);
	if (servers_load_config(k, &cfg, err, errlen) < 0) {
		log_error("reload refused, keeping the running configuration: %s", err);
		return -EINVAL;
	}
	if (strcmp(cfg->data_dir, k->cfg->data_dir) != 0 || strcmp(cfg->runtime_dir, k->cfg->runtime_dir) != 0)
		log_warn("reload: data_dir and runtime_dir changes take effect at the next start");
	if (k->system_mode && (strcmp(cfg->users.oauth, k->cfg->users.oauth) != 0 ||
			       strcmp(cfg->users.http, k->cfg->users.http) != 0 ||
			       strcmp(cfg->users.worker, k->cfg->users.worker) != 0))
		log_warn("reload: a change of users takes effect for each child at its next start");
	sd_notify(0, "RELOADING=1");
	r = keeper_apply_config(k, cfg);
	sd_notify(0, "READY=1");
	if (r < 0) {
		snprintf(err, errlen, "%s", strerror(-r));
		log_error("reload refused, keeping the running configuration: %s", err);
		return r;
	}
	log_info("configuration reloaded: %zu server(s)", k->n_servers);
	return 0;
}

static void on_drain_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct keeper *k = arg;

	log_warn("stopping with refreshes still in flight: their servers will need a login");
	event_base_loopexit(k->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct keeper *k = arg;

	switch (sig) {
	case SIGTERM:
	case SIGINT: {
		/* A refresh in flight gets its answer committed first: a keeper
		 * that left it would find its intent at the next start and could
		 * not present the refresh token again. A second signal, or
		 * DRAIN_MAX_SEC, ends the wait. */
		struct timeval tv = { k->cfg->refresh.timeout_sec < DRAIN_MAX_SEC ? k->cfg->refresh.timeout_sec + 1
										  : DRAIN_MAX_SEC, 0 };
		int n;

		if (k->stopping) {
			log_info("stopping now (signal %d)", (int)sig);
			event_base_loopexit(k->base, NULL);
			break;
		}
		log_info("stopping (signal %d)", (int)sig);
		sd_notify(0, "STOPPING=1");
		n = refresh_drain(k);
		if (n > 0) {
			log_info("waiting up to %ld s for %d refresh(es) in flight", (long)tv.tv_sec, n);
			k->drain = evtimer_new(k->base, on_drain_deadline, k);
			if (k->drain)
				evtimer_add(k->drain, &tv);
			else
				event_base_loopexit(k->base, NULL);
		}
		break;
	}
	case SIGHUP: {
		char err[1024];

		keeper_reload(k, err, sizeof(err));
		break;
	}
	case SIGCHLD:
		child_reap(k);
		break;
	}
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	sd_notify(0, "WATCHDOG=1");
}

static void on_maintenance(evutil_socket_t fd, short what, void *arg)
{
	static int64_t offset;
	static bool have_offset;
	static unsigned ticks;
	struct keeper *k = arg;
	int64_t now = keeper_now_ms() - mono_ms();

	/* The wall clock moved against the monotonic one: a jump or a resume. */
	if (have_offset && llabs(now - offset) > CLOCK_JUMP_MS) {
		log_info("wall clock moved by %+lld s; re-arming refresh timers", (long long)((now - offset) / 1000));
		refresh_clock_moved(k, now - offset);
	}
	offset = now;
	have_offset = true;
	if (++ticks % CHECKPOINT_EVERY == 0)
		store_checkpoint(k->store);
}

/* The control socket: systemd's (LISTEN_FDS, name "control") or our own;
 * systemd's socket named "http" goes to the HTTP API (api.c). */
static int control_socket(struct keeper *k, int *fd)
{
	char **names = NULL, path[4096];
	int n, r;

	n = sd_listen_fds_with_names(1, &names);
	if (n < 0)
		log_warn("socket activation: %s", strerror(-n));
	for (int i = 0; i < n; i++) {
		bool http = names && strcmp(names[i], "http") == 0;
		bool take = !http && *fd < 0 && (n == 1 || (names && strcmp(names[i], "control") == 0));

		if (http && k->http_fd < 0)
			api_adopt_socket(k, SD_LISTEN_FDS_START + i);
		else if (take)
			*fd = SD_LISTEN_FDS_START + i;
		else
			close(SD_LISTEN_FDS_START + i);
	}
	if (names) {
		for (int i = 0; i < n; i++)
			free(names[i]);
		free(names);
	}
	if (*fd >= 0) {
		log_info("control socket from systemd");
		return 0;
	}

	{
		/* A root start in system mode becomes the state directory's owner
		 * (drop_root()): a runtime directory of that user's is ours too. */
		struct stat st;
		uid_t keeper_user = k->system_mode && stat(k->cfg->data_dir, &st) == 0 ? st.st_uid : geteuid();
		char err[768];

		if (paths_check_runtime_dir(k->cfg->runtime_dir, k->system_mode, keeper_user, err, sizeof(err)) < 0)
			fatal("%s", err);
	}
	if (snprintf(path, sizeof(path), "%s/control.sock", k->cfg->runtime_dir) >= (int)sizeof(path))
		fatal("runtime directory path too long");
	r = sock_listen_unix(path, 0660, 128, fd);
	if (r == SOCK_E_IN_USE)
		fatal("another mcpkeeperd already answers on %s", path);
	if (r < 0)
		fatal("control socket %s: %s", path, strerror(-r));
	log_info("control socket %s", path);
	return 0;
}

/*
 * A keeper started as root in system mode (by hand: the unit starts it as
 * mcpkeeper with CAP_SETUID and CAP_SETGID only) holds no more than the unit
 * would give it. At once it keeps what it uses until drop_root(): reading
 * the configuration and the children's directories wherever they are,
 * making the runtime directory, handing the sandbox directory to the
 * workers' user (CAP_CHOWN), CAP_SETPCAP to narrow the set further; after
 * drop_root() only CAP_SETUID and CAP_SETGID, to start the children under
 * their users. The bounding set goes with the rest, so no exec of the keeper
 * or a child gets any other back, and no_new_privs stops setuid binaries and
 * file capabilities (a setuid() by a holder of CAP_SETUID still works).
 */
#define CAP_BIT(c) (UINT64_C(1) << (c))
#define CAPS_CHILDREN (CAP_BIT(CAP_SETUID) | CAP_BIT(CAP_SETGID))
#define CAPS_START                                                                                   \
	(CAPS_CHILDREN | CAP_BIT(CAP_SETPCAP) | CAP_BIT(CAP_DAC_OVERRIDE) | CAP_BIT(CAP_DAC_READ_SEARCH) | \
	 CAP_BIT(CAP_CHOWN))

static void caps_set(uint64_t caps)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2] = { { 0 } };

	data[0].permitted = data[0].effective = (uint32_t)caps;
	data[1].permitted = data[1].effective = (uint32_t)(caps >> 32);
	if (syscall(SYS_capset, &hdr, data) < 0)
		fatal("capset: %m");
}

/* Bounding, permitted and effective sets down to keep, nothing inheritable
 * or ambient. The permitted set must hold keep and CAP_SETPCAP. */
static void caps_limit(uint64_t keep)
{
	/* Effective: CAP_SETPCAP to shrink the bounding set (after a setuid()
	 * with PR_SET_KEEPCAPS the effective set is empty). */
	caps_set(keep | CAP_BIT(CAP_SETPCAP));
	/* Up to the kernel's last capability, whichever that is. */
	for (int cap = 0; cap < 64 && prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++)
		if (!(keep & CAP_BIT(cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
			fatal("cannot drop capability %d from the bounding set: %m", cap);
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
		fatal("cannot clear the ambient capabilities: %m");
	caps_set(keep);
}

/* At the start of a root keeper in system mode: CAPS_START and no_new_privs. */
static void limit_root_start(void)
{
	if (geteuid() != 0)
		return;
	caps_limit(CAPS_START);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		fatal("cannot set no_new_privs: %m");
}

/*
 * Started as root in system mode: become the owner of the state directory
 * as the unit would have made us (or stay root when root owns it), keeping
 * only CAP_SETUID and CAP_SETGID so that children can still be started as
 * their users. Without this the store would switch to the owner itself and
 * drop every capability with root.
 */
static void drop_root(const char *data_dir)
{
	struct passwd *pw;
	struct stat st;

	if (geteuid() != 0)
		return;
	if (stat(data_dir, &st) < 0 || st.st_uid == 0) {
		caps_limit(CAPS_CHILDREN);
		log_info("running as root with CAP_SETUID and CAP_SETGID only");
		return;
	}
	pw = getpwuid(st.st_uid);
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 ||
	    (pw ? initgroups(pw->pw_name, pw->pw_gid) : setgroups(0, NULL)) < 0 ||
	    setgid(pw ? pw->pw_gid : st.st_gid) < 0 || setuid(st.st_uid) < 0)
		fatal("cannot switch to the owner of %s (uid %u): %m", data_dir, (unsigned)st.st_uid);
	caps_limit(CAPS_CHILDREN);
	prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
	log_info("running as uid %u (owner of %s) with CAP_SETUID and CAP_SETGID only", (unsigned)st.st_uid,
		 data_dir);
}

/* The stdio servers' HOMEs live beside the state directory (jail.h): made
 * here, and handed to the workers' user while the keeper may still chown. */
static void sandbox_root(struct keeper *k)
{
	unsigned uid = (unsigned)geteuid(), gid = (unsigned)getegid();
	char err[512];

	if (k->system_mode) {
		struct passwd *pw = getpwnam(k->cfg->users.worker);

		if (!pw)
			fatal("users.worker: no user %s", k->cfg->users.worker);
		uid = (unsigned)pw->pw_uid;
		gid = (unsigned)pw->pw_gid;
	}
	if (jail_root_prepare(k->cfg->data_dir, uid, gid, err, sizeof(err)) < 0) {
		log_warn("%s; stdio servers will not start", err);
		k->sandbox_error = xstrdup(err);
	}
}

int keeper_run(const char *config_path, bool system_mode)
{
	struct keeper k = { .system_mode = system_mode, .http_fd = -1, .group_fd = -1 };
	struct config *cfg = NULL;
	char err[1024];
	int lfd = -1, r;

	if (proc_no_core_dumps() < 0)
		fatal("cannot disable core dumps: %m");
	if (system_mode)
		limit_root_start();
	signal(SIGPIPE, SIG_IGN);
	k.config_path = xstrdup(config_path);
	if (config_load(config_path, system_mode, &cfg, err, sizeof(err)) < 0)
		fatal("%s", err);

	k.base = event_base_new();
	if (!k.base)
		fatal("event_base_new failed");
	k.cfg = cfg;
	/* The socket first: a second keeper must stop before touching the store. */
	control_socket(&k, &lfd);

	if (child_binaries_open(&k) < 0)
		fatal("out of memory");
	sandbox_root(&k);
	if (system_mode)
		drop_root(cfg->data_dir);
	if (store_load_master_key(cfg->data_dir, &k.master_key, err, sizeof(err)) < 0)
		fatal("%s", err);
	if (cfg->replication.enabled)
		r = group_open_store(&k, err, sizeof(err));
	else
		r = store_open(cfg->data_dir, k.master_key, &k.store, err, sizeof(err));
	if (r)
		fatal("%s", err);

	k.events = events_new(&k);
	k.refresh = refresh_new(&k);
	k.oauth = child_new(&k, ROLE_OAUTH, CHILD_OAUTH_BIN, &refresh_oauth_ops, &k);
	if (!k.events || !k.refresh || !k.oauth)
		fatal("out of memory");

	k.sig_term = evsignal_new(k.base, SIGTERM, on_signal, &k);
	k.sig_int = evsignal_new(k.base, SIGINT, on_signal, &k);
	k.sig_hup = evsignal_new(k.base, SIGHUP, on_signal, &k);
	k.sig_chld = evsignal_new(k.base, SIGCHLD, on_signal, &k);
	evsignal_add(k.sig_term, NULL);
	evsignal_add(k.sig_int, NULL);
	evsignal_add(k.sig_hup, NULL);
	evsignal_add(k.sig_chld, NULL);

	if (system_mode) {
		struct config *merged = NULL;

		/* The runtime changes (servers.c) over the file, as at a reload. */
		if (servers_load_config(&k, &merged, err, sizeof(err)) < 0) {
			log_error("starting with %s alone: %s", config_path, err);
		} else {
			config_free(cfg);
			cfg = merged;
		}
	}
	k.cfg = NULL;
	r = keeper_apply_config(&k, cfg);
	if (r < 0)
		fatal("cannot set up the configured servers: %s", strerror(-r));
	if (control_start(&k, lfd) < 0)
		fatal("control socket: out of memory");
	if (child_start(k.oauth) < 0)
		log_error("oauth child did not start; retrying with backoff");
	if (api_start(&k) < 0)
		fatal("cannot set up the HTTP API (API key)");

	{
		struct timeval tv = { MAINTENANCE_SEC, 0 };

		k.maintenance = event_new(k.base, -1, EV_PERSIST, on_maintenance, &k);
		event_add(k.maintenance, &tv);
		on_maintenance(-1, 0, &k);	/* the clock's offset from the start: a jump before the first tick counts */
	}
	if (sd_watchdog_enabled(0, &k.watchdog_usec) > 0) {
		struct timeval tv = { (time_t)(k.watchdog_usec / 2 / 1000000),
				      (suseconds_t)(k.watchdog_usec / 2 % 1000000) };

		k.watchdog = event_new(k.base, -1, EV_PERSIST, on_watchdog, &k);
		event_add(k.watchdog, &tv);
	}
	sd_notifyf(0, "READY=1\nSTATUS=%zu server(s)\nMAINPID=%d", k.n_servers, (int)getpid());
	log_info("mcpkeeperd %s ready: %zu server(s), %s mode", MCPKEEPER_VERSION, k.n_servers,
		 system_mode ? "system" : "user");

	k.running = true;
	event_base_dispatch(k.base);

	k.stopping = true;
	k.control = control_free(k.control);
	flows_free_all(&k);
	for (size_t i = 0; i < k.n_servers; i++)
		server_free(&k, k.servers[i]);
	free(k.servers);
	free(k.index);
	orphans_free(k.orphans, k.n_orphans);
	json_object_put(k.runtime_servers);
	api_stop(&k);
	k.oauth = child_free(k.oauth);
	k.refresh = refresh_free(k.refresh);
	k.events = events_free(k.events);
	k.store = store_close(k.store);
	group_close(&k);
	k.master_key = secret_free(k.master_key);
	if (k.watchdog)
		event_free(k.watchdog);
	if (k.drain)
		event_free(k.drain);
	event_free(k.maintenance);
	event_free(k.sig_term);
	event_free(k.sig_int);
	event_free(k.sig_hup);
	event_free(k.sig_chld);
	child_binaries_close(&k);
	event_base_free(k.base);
	config_free(k.cfg);
	free(k.config_path);
	free(k.sandbox_error);
	log_info("stopped");
	return 0;
}
