/*
 * The keeper's side of a stdio upstream's sandbox (jail.h): which
 * mechanisms may be tried, and what the view shows: the system directories
 * read-only, the config's "sandbox" read and write lists, the command's own
 * file, with the project's paths (state directory, runtime directory,
 * config file, credentials directory, the sandbox root) taken out of them,
 * whichever parent of theirs a config names. The worker enters it
 * (common/jail-view.c).
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "jail.h"
#include "keeper.h"
#include "log.h"
#include "paths.h"
#include "spawn.h"
#include "util.h"

/* Bounds on what one server's view may hold. */
#define JAIL_MAX_PATHS 4096
#define JAIL_MAX_DEPTH 16

/* Read-only in every view (those that exist). */
static const char *const system_dirs[] = { "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32",
					   "/lib64", "/libx32", "/opt" };

char *jail_root_of(const char *data_dir)
{
	size_t len = strlen(data_dir);
	char *root;

	while (len > 1 && data_dir[len - 1] == '/')
		len--;
	if (asprintf(&root, "%.*s-sandbox", (int)len, data_dir) < 0)
		fatal("out of memory");
	return root;
}

int jail_root_prepare(const char *data_dir, unsigned uid, unsigned gid, char *err, size_t len)
{
	_cleanup_(freep) char *root = jail_root_of(data_dir);
	struct stat st;

	if (mkdir(root, 0700) < 0 && errno != EEXIST) {
		int r = -errno;

		snprintf(err, len, "cannot create the sandbox directory %s: %s", root, strerror(-r));
		return r;
	}
	if (lstat(root, &st) < 0 || !S_ISDIR(st.st_mode)) {
		snprintf(err, len, "%s: not a directory", root);
		return -ENOTDIR;
	}
	if (geteuid() == 0 && (st.st_uid != uid || st.st_gid != gid) && chown(root, uid, gid) < 0) {
		int r = -errno;

		snprintf(err, len, "cannot hand %s to uid %u: %s", root, uid, strerror(-r));
		return r;
	}
	/* Someone else's directory would let them plant or read a server's HOME. */
	if (geteuid() != 0 && st.st_uid != uid) {
		snprintf(err, len, "%s belongs to uid %u, not to the workers' uid %u", root, (unsigned)st.st_uid, uid);
		return -EPERM;
	}
	return 0;
}

/* What the view must never show, resolved. */
struct hidden {
	char *path[8];
	const char *what[8];
	size_t n;
};

static void hide(struct hidden *h, const char *path, const char *what)
{
	char real[PATH_MAX];

	if (!path || !*path || h->n >= ARRAY_SIZE(h->path))
		return;
	/* A path that does not exist yet is hidden as written. */
	h->path[h->n] = xstrdup(realpath(path, real) ? real : path);
	h->what[h->n++] = what;
}

static void hidden_clear(struct hidden *h)
{
	for (size_t i = 0; i < h->n; i++)
		free(h->path[i]);
	h->n = 0;
}

/* a is b or beneath it. */
static bool path_within(const char *a, const char *b)
{
	size_t n = strlen(b);

	if (n == 1 && b[0] == '/')
		return true;
	return strncmp(a, b, n) == 0 && (a[n] == '\0' || a[n] == '/');
}

struct builder {
	struct jail *j;
	const struct hidden *h;
	size_t cap;
	char *err;
	size_t errlen;
};

static int add_path(struct builder *b, const char *path, bool write)
{
	struct jail *j = b->j;

	/* Already shown, with these rights or more: a second mount point inside
	 * a read-only one could not even be made. */
	for (size_t i = 0; i < j->n_paths; i++)
		if (path_within(path, j->paths[i].path) && (j->paths[i].write || !write))
			return 0;
	log_debug("sandbox: %s %s", write ? "write" : "read", path);

	if (j->n_paths >= JAIL_MAX_PATHS) {
		snprintf(b->err, b->errlen, "more than %d paths in the sandbox (the grants hold too many entries "
			 "beside the project's own directories)", JAIL_MAX_PATHS);
		return -E2BIG;
	}
	if (j->n_paths == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 32;
		j->paths = xrealloc(j->paths, b->cap * sizeof(*j->paths));
	}
	j->paths[j->n_paths].path = xstrdup(path);
	j->paths[j->n_paths++].write = write;
	return 0;
}

/*
 * Grants path, which contains none of the hidden paths, or else each of
 * its entries but the hidden ones, recursively: the project's directories
 * never appear, whichever parent of theirs a config names.
 */
static int grant(struct builder *b, const char *path, bool write, int depth)
{
	bool contains = false;
	DIR *d;
	struct dirent *e;
	int r = 0;

	for (size_t i = 0; i < b->h->n; i++) {
		if (path_within(path, b->h->path[i]))
			return 0; /* a hidden path itself (reached through a parent) */
		if (path_within(b->h->path[i], path))
			contains = true;
	}
	if (!contains)
		return add_path(b, path, write);
	if (depth >= JAIL_MAX_DEPTH) {
		snprintf(b->err, b->errlen, "%s: nested too deep around the project's directories", path);
		return -ELOOP;
	}
	d = opendir(path);
	if (!d)
		return 0; /* nothing the keeper can list: nothing to grant */
	while (r == 0 && (e = readdir(d))) {
		char *child;
		struct stat st;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (asprintf(&child, "%s%s%s", path, strcmp(path, "/") == 0 ? "" : "/", e->d_name) < 0)
			fatal("out of memory");
		/* Hidden paths are realpaths: a symbolic link is never walked
		 * into, it is shown as a link (Landlock skips it). */
		if (lstat(child, &st) == 0)
			r = grant(b, child, write, depth + 1);
		free(child);
	}
	closedir(d);
	return r;
}

/* A path from the config: resolved; inside the project's directories it
 * is an error (the server would get what it must never see). */
static int grant_configured(struct builder *b, const struct config_server *cs, const char *key, const char *path,
			    bool write)
{
	char real[PATH_MAX];

	if (!realpath(path, real)) {
		log_warn("%s: sandbox.%s %s: %s; not granted", cs->name, key, path, strerror(errno));
		return 0;
	}
	for (size_t i = 0; i < b->h->n; i++)
		if (path_within(real, b->h->path[i])) {
			snprintf(b->err, b->errlen, "sandbox.%s %s is inside the %s (%s): a stdio server may not see it",
				 key, path, b->h->what[i], b->h->path[i]);
			return -EACCES;
		}
	return grant(b, real, write, 0);
}

/* The command's own file, when it lives outside the system directories. */
static int grant_command(struct builder *b, const struct config_server *cs)
{
	char real[PATH_MAX], *found = NULL;
	const char *path = getenv("PATH");
	int r;

	for (size_t i = 0; i < cs->n_env; i++)
		if (strcmp(cs->env[i].key, "PATH") == 0)
			path = cs->env[i].value;
	if (strchr(cs->command, '/')) {
		found = xstrdup(cs->command);
	} else {
		for (const char *p = path ? path : "/usr/local/bin:/usr/bin:/bin"; *p && !found;) {
			size_t n = strcspn(p, ":");
			char *full;

			if (asprintf(&full, "%.*s/%s", (int)n, p, cs->command) < 0)
				fatal("out of memory");
			if (n > 0 && access(full, X_OK) == 0)
				found = full;
			else
				free(full);
			p += n;
			if (*p == ':')
				p++;
		}
	}
	if (!found || !realpath(found, real)) {
		free(found);
		return 0; /* the worker reports a missing command itself */
	}
	free(found);
	for (size_t i = 0; i < ARRAY_SIZE(system_dirs); i++)
		if (path_within(real, system_dirs[i]))
			return 0;
	for (size_t i = 0; i < b->h->n; i++)
		if (path_within(real, b->h->path[i])) {
			snprintf(b->err, b->errlen, "the command %s is inside the %s: a stdio server may not see it",
				 real, b->h->what[i]);
			return -EACCES;
		}
	r = grant(b, real, false, 0);
	return r;
}

/* Can the workers' user create a user namespace here? Asked once, in a
 * child that becomes that user first (system mode). The child makes system
 * calls only (spawn.h: the keeper runs threads). */
static bool namespaces_available(const struct keeper *k)
{
	static int known = -1;
	pid_t pid;
	int status;

	if (known >= 0)
		return known;
	pid = fork();
	if (pid < 0)
		return false;
	if (pid == 0) {
		struct spawn_report rep;

		if (k->system_mode && spawn_become(k->users.worker.uid, k->users.worker.gid, &rep) != SPAWN_STEP_NONE)
			_exit(2);
		_exit(unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID) == 0 ? 0 : 1);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	known = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	log_info("sandbox: user namespaces are %s to the workers' user", known ? "available" : "not available");
	return known;
}

static bool landlock_available(void)
{
#ifdef SYS_landlock_create_ruleset
	return syscall(SYS_landlock_create_ruleset, NULL, 0, 1 /* LANDLOCK_CREATE_RULESET_VERSION */) >= 1;
#else
	return false;
#endif
}

struct jail *jail_new(const struct keeper *k, const struct config_server *cs, char *err, size_t len)
{
	struct jail *j = xcalloc(1, sizeof(*j));
	struct hidden h = { .n = 0 };
	struct builder b = { .j = j, .h = &h, .err = err, .errlen = len };
	_cleanup_(freep) char *root = jail_root_of(k->cfg->data_dir);
	const char *knob = paths_dev_tree() ? getenv("MCPKEEPER_TEST_SANDBOX") : NULL;
	int r = 0;

	err[0] = '\0';
	j->enabled = cs->sandbox;
	if (!j->enabled)
		return j;
	if (k->sandbox_error) {
		snprintf(err, len, "%s", k->sandbox_error);
		return jail_free(j);
	}
	if (knob && *knob) {
		j->try_namespaces = strcmp(knob, "namespaces") == 0;
		j->try_landlock = strcmp(knob, "landlock") == 0;
		if (!j->try_namespaces && !j->try_landlock && strcmp(knob, "none") != 0) {
			snprintf(err, len, "MCPKEEPER_TEST_SANDBOX=%s: expected namespaces, landlock or none", knob);
			return jail_free(j);
		}
	} else {
		j->try_namespaces = namespaces_available(k);
		j->try_landlock = landlock_available();
	}
	if (!j->try_namespaces && !j->try_landlock) {
		snprintf(err, len, "no sandbox is available on this system (neither user namespaces nor Landlock); "
			 "the server starts only with \"sandbox\": false in its config");
		return jail_free(j);
	}

	if (asprintf(&j->dir, "%s/%s", root, cs->name) < 0 || asprintf(&j->home, "%s/home", j->dir) < 0 ||
	    asprintf(&j->tmp, "%s/tmp", j->dir) < 0 || asprintf(&j->base, "%s/.root", j->dir) < 0)
		fatal("out of memory");

	hide(&h, k->cfg->data_dir, "state directory");
	hide(&h, k->cfg->runtime_dir, "runtime directory");
	hide(&h, k->cfg->path, "configuration file");
	hide(&h, getenv("CREDENTIALS_DIRECTORY"), "credentials directory");
	hide(&h, root, "sandbox directory");

	for (size_t i = 0; r == 0 && i < ARRAY_SIZE(system_dirs); i++) {
		struct stat st;

		if (lstat(system_dirs[i], &st) == 0)
			r = grant(&b, system_dirs[i], false, 0);
	}
	for (size_t i = 0; r == 0 && i < cs->n_sandbox_read; i++)
		r = grant_configured(&b, cs, "read", cs->sandbox_read[i], false);
	for (size_t i = 0; r == 0 && i < cs->n_sandbox_write; i++)
		r = grant_configured(&b, cs, "write", cs->sandbox_write[i], true);
	if (r == 0)
		r = grant_command(&b, cs);
	hidden_clear(&h);
	if (r < 0)
		return jail_free(j);
	return j;
}

struct jail *jail_free(struct jail *j)
{
	if (j) {
		jail_clear(j);
		free(j);
	}
	return NULL;
}
