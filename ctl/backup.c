/*
 * mcpctl backup FILE and mcpctl restore [--force] FILE.
 *
 * backup joins the store's Berkeley DB environment itself, as any opener
 * may (DB_REGISTER: a live keeper keeps running, no recovery is run), and
 * has Berkeley DB copy it hot into one archive file (common/store/backup.c).
 * It does not ask the keeper to write the file: in system mode the keeper
 * runs as its own user, and a file it wrote would belong to that user in a
 * place it may not write to. The store work runs in a forked child, which
 * becomes the state directory's owner when mcpctl runs as root; the parent
 * keeps the caller's identity, and so the file is the caller's, mode 0600,
 * written under a temporary name and renamed when complete. Records stay
 * sealed in the file; the master key is not in it (see mcpctl(1)).
 *
 * restore holds the state directory's store.lock exclusive from before its
 * checks until after the swap (every opener holds it shared, store.c), so
 * no keeper can start on the directory it replaces; it refuses to run while
 * a keeper serves the socket or any process has the environment open (the
 * lock, and the DB_REGISTER registry's locks), checks the
 * whole archive, builds the new state directory beside the old one
 * (extracted files, the master key, catastrophic recovery, the key check
 * and every record unsealed, in a forked child as the owner) and only then
 * swaps it in with one rename.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "config.h"
#include "ctl.h"
#include "paths.h"
#include "secret.h"
#include "sock.h"
#include "store.h"

int ctl_config_standalone(struct ctl *c, const char *why, struct config **cfg, char *path, size_t len)
{
	char err[1024];
	const char *file = c->opt_config;
	int r;

	if (!file) {
		if (paths_config_file(c->system_mode, path, len) < 0) {
			fprintf(stderr, "mcpctl: %s no config file can be found; use --config\n", why);
			return CTL_EXIT_UNREACHABLE;
		}
	} else if (snprintf(path, len, "%s", file) >= (int)len) {
		return ctl_usage_error("--config: path too long");
	}
	r = config_load(path, c->system_mode, cfg, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "mcpctl: %s the config cannot be read: %s\n", why, err);
		return CTL_EXIT_USAGE;
	}
	return 0;
}

int ctl_state_paths(struct ctl *c, struct state_paths *p)
{
	_cleanup_(config_freep) struct config *cfg = NULL;
	char conf_path[PATH_MAX];
	const char *creds = getenv("CREDENTIALS_DIRECTORY");
	int r;

	r = ctl_config_standalone(c, "to find the store,", &cfg, conf_path, sizeof(conf_path));
	if (r)
		return r == CTL_EXIT_UNREACHABLE ? CTL_EXIT_USAGE : r;
	if (snprintf(p->data_dir, sizeof(p->data_dir), "%s", cfg->data_dir) >= (int)sizeof(p->data_dir))
		return ctl_usage_error("data_dir: path too long");
	/* restore renames the directory: no trailing slash. */
	for (size_t n = strlen(p->data_dir); n > 1 && p->data_dir[n - 1] == '/'; n--)
		p->data_dir[n - 1] = '\0';
	p->key_in_state = !(creds && *creds);
	r = p->key_in_state ? snprintf(p->key, sizeof(p->key), "%s/master.key", p->data_dir)
			    : snprintf(p->key, sizeof(p->key), "%s/master-key", creds);
	if (r >= (int)sizeof(p->key))
		return ctl_usage_error("master key path too long");
	return 0;
}

int ctl_in_child(int (*fn)(void *arg), void *arg)
{
	int status;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "mcpctl: fork: %m\n");
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (pid == 0) {
		int r = fn(arg);

		fflush(NULL);
		_exit(r);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			fprintf(stderr, "mcpctl: waitpid: %m\n");
			return CTL_EXIT_KEEPER_ERROR;
		}
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : CTL_EXIT_KEEPER_ERROR;
}

static int parse_file_opts(const char *cmd, int argc, char **argv, bool *force, const char **file)
{
	static const struct option opts[] = {
		{ "force", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int o, li = -1;

	optind = 0;
	opterr = 0;
	while ((o = getopt_long(argc, argv, "+:h", opts, &li)) != -1) {
		switch (o) {
		case 'f':
			if (!force)
				return ctl_option_misplaced(cmd, opts, li, o);
			*force = true;
			break;
		case 'h':
			ctl_usage(stdout);
			return CTL_HELP_SHOWN;
		default:
			return ctl_option_error(cmd, o, argc, argv);
		}
		li = -1;
	}
	if (argc - optind != 1)
		return ctl_usage_error("%s takes one FILE", cmd);
	*file = argv[optind];
	return 0;
}

/* ---- backup ---- */

struct backup_job {
	const struct state_paths *p;
	int fd;
};

static int backup_child(void *arg)
{
	struct backup_job *j = arg;
	_cleanup_(store_closep) struct store *store = NULL;
	struct secret *key = NULL;
	unsigned long long bytes = 0;
	unsigned files = 0;
	char err[1024];
	int r;

	if (store_load_master_key(j->p->data_dir, &key, err, sizeof(err)) < 0 ||
	    (r = store_open(j->p->data_dir, key, &store, err, sizeof(err))) != 0) {
		secret_free(key);
		fprintf(stderr, "mcpctl: the store cannot be opened: %s\n", err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	secret_free(key);
	r = store_backup(store, j->fd, &files, &bytes, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "mcpctl: %s\n", err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	printf("backed up %u files of %s (%llu bytes)\n", files, j->p->data_dir, bytes);
	return CTL_EXIT_OK;
}

int ctl_write_file(const char *file, bool replace, int *fd, int (*fn)(void *arg), void *arg)
{
	char tmp[PATH_MAX + 32];
	int r;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", file, (int)getpid()) >= (int)sizeof(tmp))
		return ctl_usage_error("%s: path too long", file);
	*fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (*fd < 0) {
		fprintf(stderr, "mcpctl: cannot create %s: %m\n", tmp);
		return CTL_EXIT_KEEPER_ERROR;
	}
	r = ctl_in_child(fn, arg);
	if (r == 0 && fsync(*fd) < 0) {
		fprintf(stderr, "mcpctl: writing %s: %m\n", tmp);
		r = CTL_EXIT_KEEPER_ERROR;
	}
	close(*fd);
	*fd = -1;
	/* link() fails on an existing file where rename() would replace it. */
	if (r == 0 && (replace ? rename(tmp, file) : link(tmp, file)) < 0) {
		fprintf(stderr, "mcpctl: cannot %s %s to %s: %m\n", replace ? "rename" : "link", tmp, file);
		r = CTL_EXIT_KEEPER_ERROR;
	}
	if (r || !replace)
		unlink(tmp);
	return r;
}

int cmd_backup(struct ctl *c, int argc, char **argv)
{
	struct state_paths p;
	struct backup_job j;
	char path[PATH_MAX + 32];
	const char *file;
	int r;

	r = parse_file_opts("backup", argc, argv, NULL, &file);
	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	r = ctl_state_paths(c, &p);
	if (r)
		return r;
	snprintf(path, sizeof(path), "%s/tokens.db", p.data_dir);
	if (ctl_path_missing(path)) {
		fprintf(stderr, "mcpctl: no token store in %s: nothing to back up\n", p.data_dir);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (ctl_path_missing(p.key)) {
		fprintf(stderr, "mcpctl: the master key %s is missing\n", p.key);
		return CTL_EXIT_KEEPER_ERROR;
	}
	j.p = &p;
	r = ctl_write_file(file, true, &j.fd, backup_child, &j);
	if (r)
		return r;
	printf("wrote %s (mode 0600); it holds no master key: keep a copy of %s apart from it\n", file, p.key);
	return CTL_EXIT_OK;
}

/* ---- restore ---- */

int ctl_refuse_if_live(struct ctl *c, const struct state_paths *p, const char *doing)
{
	pid_t pid = 0;
	int fd = -1, r;

	c->quiet_unreachable = true;
	r = ctl_find_socket(c);
	c->quiet_unreachable = false;
	if (r == 0 && c->socket_path[0]) {
		r = sock_connect_unix(c->socket_path, 0, &fd);
		if (r == 0) {
			close(fd);
			fprintf(stderr, "mcpctl: a keeper is running (it answers on %s): stop it before %s\n",
				c->socket_path, doing);
			return CTL_EXIT_KEEPER_RUNNING;
		}
		if (r != -ENOENT && r != -ECONNREFUSED) {
			fprintf(stderr, "mcpctl: cannot tell whether a keeper is running on %s (%s): "
				"stop it before %s\n", c->socket_path, strerror(-r), doing);
			return CTL_EXIT_KEEPER_RUNNING;
		}
	}
	r = store_in_use(p->data_dir, &pid);
	if (r == 1) {
		fprintf(stderr, "mcpctl: process %d has the store in %s open: stop it before %s\n", (int)pid,
			p->data_dir, doing);
		return CTL_EXIT_KEEPER_RUNNING;
	}
	if (r < 0) {
		fprintf(stderr, "mcpctl: cannot tell whether the store in %s is in use: %s\n", p->data_dir,
			strerror(-r));
		return CTL_EXIT_KEEPER_ERROR;
	}
	return 0;
}

/* A store lives in dir: a database or a log file. */
static bool holds_store(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	bool found = false;

	if (!d)
		return false;
	while (!found && (e = readdir(d))) {
		size_t n = strlen(e->d_name);

		found = strncmp(e->d_name, "log.", 4) == 0 || (n > 3 && strcmp(e->d_name + n - 3, ".db") == 0);
	}
	closedir(d);
	return found;
}

/* Removes dir and the files in it (a flat directory of ours). */
static void remove_flat(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (d) {
		while ((e = readdir(d)))
			if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
				unlinkat(dirfd(d), e->d_name, 0);
		closedir(d);
	}
	rmdir(dir);
}

static int copy_key(const char *from, const char *dir)
{
	char to[PATH_MAX + 64], buf[1024];
	_cleanup_(closep) int in = -1, out = -1;
	ssize_t n;

	if (snprintf(to, sizeof(to), "%s/master.key", dir) >= (int)sizeof(to))
		return -ENAMETOOLONG;
	in = open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (in < 0 || out < 0)
		return -errno;
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)n) != n) {
			sodium_memzero(buf, sizeof(buf));
			return -EIO;
		}
	sodium_memzero(buf, sizeof(buf));
	if (n < 0 || fsync(out) < 0)
		return -errno;
	return 0;
}

/* Gives the files of dir to the owner of the state directory (root only). */
static int chown_flat(const char *dir, uid_t uid, gid_t gid)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int r = 0;

	if (!d)
		return -errno;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, "..") && fchownat(dirfd(d), e->d_name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
			r = -errno;
	closedir(d);
	return r;
}

struct check_job {
	const char *dir;
	unsigned records, broken;
};

static int count_record(const char *key, const struct secret *plain, int status, void *ctx)
{
	struct check_job *j = ctx;

	if (status)
		j->broken++;
	else
		j->records++;
	return 0;
}

/* In the child: recovery, the key check, and every record unsealed. */
static int restore_child(void *arg)
{
	struct check_job *j = arg;
	_cleanup_(store_closep) struct store *store = NULL;
	struct secret *key = NULL;
	char err[1024];
	int r;

	if (store_become_owner(j->dir, err, sizeof(err)) < 0 || store_recover_fatal(j->dir, err, sizeof(err)) < 0) {
		fprintf(stderr, "mcpctl: %s\n", err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (store_load_master_key(j->dir, &key, err, sizeof(err)) < 0 ||
	    (r = store_open(j->dir, key, &store, err, sizeof(err))) != 0) {
		secret_free(key);
		fprintf(stderr, "mcpctl: the restored store does not open: %s%s\n", err,
			strstr(err, "wrong master key") ? " (the backup belongs to another master key)" : "");
		return CTL_EXIT_KEEPER_ERROR;
	}
	secret_free(key);
	for (int db = 0; db < STORE_DB_COUNT; db++) {
		r = store_list(store, (enum store_db)db, count_record, j);
		if (r < 0) {
			fprintf(stderr, "mcpctl: reading the restored %s: %s\n", store_db_name((enum store_db)db),
				store_strerror(r));
			return CTL_EXIT_KEEPER_ERROR;
		}
	}
	if (j->broken) {
		fprintf(stderr, "mcpctl: %u restored records do not open\n", j->broken);
		return CTL_EXIT_KEEPER_ERROR;
	}
	store = store_close(store);
	/* The check opened an environment: leave no region behind. */
	if (store_recover_fatal(j->dir, err, sizeof(err)) < 0) {
		fprintf(stderr, "mcpctl: %s\n", err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	printf("restored %u records\n", j->records);
	return CTL_EXIT_OK;
}

/* Puts dir (complete) where the state directory is. */
static int swap_in(const char *tmp, const char *data_dir, bool had_store)
{
	char old[PATH_MAX + 64];

	if (rename(tmp, data_dir) == 0)
		return 0;
	if (errno != EEXIST && errno != ENOTEMPTY) {
		fprintf(stderr, "mcpctl: cannot move the restored store into %s: %m\n", data_dir);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, data_dir, RENAME_EXCHANGE) < 0) {
		fprintf(stderr, "mcpctl: cannot swap the restored store into %s: %m\n", data_dir);
		return CTL_EXIT_KEEPER_ERROR;
	}
	/* tmp now names the previous state directory. */
	if (!had_store) {
		remove_flat(tmp);
		return 0;
	}
	snprintf(old, sizeof(old), "%s.replaced-%lld", data_dir, (long long)time(NULL));
	if (rename(tmp, old) == 0) {
		printf("the store it replaced is in %s\n", old);
		return 0;
	}
	printf("the store it replaced is in %s\n", tmp);
	return 0;
}

/* store.lock of a state directory, held exclusive by restore. */
struct dir_lock {
	int fd;
	bool made_file, made_dir;
	char path[PATH_MAX + 32];
};

/* Opens dir/store.lock (made 0600 and given to dir's owner when missing)
 * and locks it exclusive without waiting. CTL_EXIT_KEEPER_RUNNING, with no
 * message, when another process holds it. */
static int dir_lock_take(struct dir_lock *l, const char *dir, bool make_dir)
{
	struct stat st;

	if (make_dir && mkdir(dir, 0700) == 0)
		l->made_dir = true;
	else if (make_dir && errno != EEXIST) {
		fprintf(stderr, "mcpctl: cannot make the state directory %s: %m\n", dir);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (snprintf(l->path, sizeof(l->path), "%s/store.lock", dir) >= (int)sizeof(l->path))
		return ctl_usage_error("data_dir: path too long");
	for (int i = 0; i < 2 && l->fd < 0; i++) {
		l->fd = open(l->path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
		if (l->fd >= 0 || errno != ENOENT)
			break;
		l->fd = open(l->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
		l->made_file = l->fd >= 0;
		if (l->fd < 0 && errno != EEXIST)
			break;
	}
	if (l->fd < 0) {
		fprintf(stderr, "mcpctl: cannot open %s: %m\n", l->path);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (flock(l->fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;

		close(l->fd);
		l->fd = -1;
		l->made_file = false;	/* another process holds it: not ours to remove */
		if (e == EWOULDBLOCK)
			return CTL_EXIT_KEEPER_RUNNING;
		fprintf(stderr, "mcpctl: cannot lock %s: %s\n", l->path, strerror(e));
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (l->made_file && geteuid() == 0 && stat(dir, &st) == 0 && st.st_uid != 0 &&
	    fchown(l->fd, st.st_uid, st.st_gid) < 0) {
		fprintf(stderr, "mcpctl: giving %s to uid %u: %m\n", l->path, (unsigned)st.st_uid);
		return CTL_EXIT_KEEPER_ERROR;
	}
	return 0;
}

/* Unlocks; unless the restore went through, removes what taking it made
 * (an opener waiting on the removed file sees that and takes the new one). */
static void dir_lock_drop(struct dir_lock *l, const char *dir, bool restored)
{
	if (l->fd >= 0 && !restored && l->made_file)
		unlink(l->path);
	if (l->fd >= 0)
		close(l->fd);
	if (!restored && l->made_dir)
		rmdir(dir);
	l->fd = -1;
}

/* With the state directory's lock held: the checks, the new directory, the
 * swap. */
static int restore_locked(struct ctl *c, const struct state_paths *pp, const char *file, bool force)
{
	_cleanup_(closep) int fd = -1;
	struct dir_lock new_lock = { .fd = -1 };
	const struct state_paths p = *pp;
	struct check_job j = { 0 };
	struct stat st;
	char tmp[PATH_MAX + 32], err[1024];
	bool had_store;
	int r;

	r = ctl_refuse_if_live(c, &p, "restoring");
	if (r)
		return r;
	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "mcpctl: cannot open %s: %m\n", file);
		return CTL_EXIT_KEEPER_ERROR;
	}
	r = store_backup_extract(fd, NULL, err, sizeof(err));
	if (r) {
		fprintf(stderr, "mcpctl: %s is not a usable backup: %s; nothing was restored\n", file, err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (store_dir_is_group(p.data_dir)) {
		fprintf(stderr, "mcpctl: %s belongs to a replication group: a site gets its records from the group "
			"(start it with an empty state directory); to restore a whole group, move this directory "
			"away, restore here, and start this site with replication.create\n", p.data_dir);
		return CTL_EXIT_KEEPER_ERROR;
	}
	had_store = holds_store(p.data_dir);
	if (had_store && !force) {
		fprintf(stderr, "mcpctl: %s already holds a store: restore --force replaces it "
			"(the old one is kept beside it)\n", p.data_dir);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (ctl_path_missing(p.key)) {
		fprintf(stderr, "mcpctl: the master key %s is missing: the backup holds none; copy the key of "
			"the backed-up store there (mode 0600) first\n", p.key);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (snprintf(tmp, sizeof(tmp), "%s.restore-XXXXXX", p.data_dir) >= (int)sizeof(tmp) || !mkdtemp(tmp)) {
		fprintf(stderr, "mcpctl: cannot make a directory beside %s: %m\n", p.data_dir);
		return CTL_EXIT_KEEPER_ERROR;
	}
	r = store_backup_extract(fd, tmp, err, sizeof(err));
	if (r) {
		fprintf(stderr, "mcpctl: restoring from %s failed: %s; nothing was restored\n", file, err);
		goto fail;
	}
	if (p.key_in_state && (r = copy_key(p.key, tmp)) < 0) {
		fprintf(stderr, "mcpctl: copying the master key %s: %s\n", p.key, strerror(-r));
		goto fail;
	}
	if (geteuid() == 0 && stat(p.data_dir, &st) == 0 && st.st_uid != 0 &&
	    (r = chown_flat(tmp, st.st_uid, st.st_gid)) < 0) {
		fprintf(stderr, "mcpctl: giving the restored files to uid %u: %s\n", (unsigned)st.st_uid,
			strerror(-r));
		goto fail;
	}
	j.dir = tmp;
	r = ctl_in_child(restore_child, &j);
	if (r)
		goto fail;
	/* An opener that finds the new directory before this returns waits
	 * for it to be complete where it is. */
	r = dir_lock_take(&new_lock, tmp, false);
	if (r == CTL_EXIT_KEEPER_RUNNING)
		fprintf(stderr, "mcpctl: another process has the new state directory %s open\n", tmp);
	if (r)
		goto fail;
	r = swap_in(tmp, p.data_dir, had_store);
	if (r)
		goto fail;
	dir_lock_drop(&new_lock, tmp, true);
	printf("restored %s into %s\n", file, p.data_dir);
	return CTL_EXIT_OK;
fail:
	dir_lock_drop(&new_lock, tmp, true);
	remove_flat(tmp);
	return r > 0 ? r : CTL_EXIT_KEEPER_ERROR;	/* r may be a negative errno value */
}

int cmd_restore(struct ctl *c, int argc, char **argv)
{
	struct dir_lock lock = { .fd = -1 };
	struct state_paths p;
	bool force = false;
	const char *file;
	int r;

	r = parse_file_opts("restore", argc, argv, &force, &file);
	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	r = ctl_state_paths(c, &p);
	if (r)
		return r;
	/* Held until the new directory is in place: no keeper starts on the
	 * old one meanwhile (store.c's openers hold it shared). */
	r = dir_lock_take(&lock, p.data_dir, true);
	if (r == CTL_EXIT_KEEPER_RUNNING && ctl_refuse_if_live(c, &p, "restoring") != CTL_EXIT_KEEPER_RUNNING)
		fprintf(stderr, "mcpctl: a keeper or another mcpctl has the store in %s open (%s is locked): "
			"stop it before restoring\n", p.data_dir, lock.path);
	if (r == 0)
		r = restore_locked(c, &p, file, force);
	dir_lock_drop(&lock, p.data_dir, r == CTL_EXIT_OK);
	return r;
}
