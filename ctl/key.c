/*
 * mcpctl key export FILE, key import FILE, key rotate: the master key
 * carried between the sites of a replication group (and kept beside
 * backups), and replaced.
 *
 * export reads the key the way the keeper loads it (store_load_master_key:
 * $CREDENTIALS_DIRECTORY/master-key or <data_dir>/master.key) and writes it
 * sealed with a passphrase or, with --plain, as hex for systemd-creds
 * (common/keyfile.h has the format); a keeper may run. import reads either
 * form and installs it as <data_dir>/master.key, only with no keeper
 * running and only when it opens the store there. rotate re-seals every
 * record with a new key (common/store/rotate.c), also with no keeper.
 *
 * The passphrase comes from the terminal (no echo; asked twice on export)
 * or from the first line of --passphrase-file. As in backup.c, the store's
 * part runs in a forked child that becomes the state directory's owner when
 * mcpctl runs as root, while the parent keeps the caller's identity for the
 * files the caller names. No key byte is ever printed.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <sodium.h>

#include "ctl.h"
#include "frame.h"
#include "keyfile.h"
#include "paths.h"
#include "proto.h"
#include "secret.h"
#include "store.h"

#define PASS_MAX 1024
/* Argon2id at libsodium's MODERATE limits: about a second and 256 MiB,
 * once per export or import. */
#define EXPORT_OPSLIMIT crypto_pwhash_OPSLIMIT_MODERATE
#define EXPORT_MEMLIMIT crypto_pwhash_MEMLIMIT_MODERATE

struct key_opts {
	const char *pass_file;
	bool plain, force, next;
	const char *file;
};

enum { OPT_PLAIN = 'p', OPT_FORCE = 'f', OPT_PASS_FILE = 'P', OPT_NEXT = 'n' };

/* A subcommand's options (allowed: the letters it takes; files: 0 or 1)
 * and the state directory's paths. 0, CTL_HELP_SHOWN or an exit code. */
static int key_start(struct ctl *c, const char *cmd, int argc, char **argv, const char *allowed, int files,
		     struct key_opts *ko, struct state_paths *p)
{
	static const struct option opts[] = {
		{ "plain", no_argument, NULL, OPT_PLAIN },
		{ "force", no_argument, NULL, OPT_FORCE },
		{ "passphrase-file", required_argument, NULL, OPT_PASS_FILE },
		{ "next", no_argument, NULL, OPT_NEXT },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int o, li = -1;

	optind = 0;
	opterr = 0;
	while ((o = getopt_long(argc, argv, "+:h", opts, &li)) != -1) {
		if (o == 'h') {
			ctl_usage(stdout);
			return CTL_HELP_SHOWN;
		}
		if (o != OPT_PLAIN && o != OPT_FORCE && o != OPT_PASS_FILE && o != OPT_NEXT)
			return ctl_option_error(cmd, o, argc, argv);
		if (!strchr(allowed, o))
			return ctl_option_misplaced(cmd, opts, li, o);
		if (o == OPT_PLAIN)
			ko->plain = true;
		else if (o == OPT_FORCE)
			ko->force = true;
		else if (o == OPT_NEXT)
			ko->next = true;
		else
			ko->pass_file = optarg;
		li = -1;
	}
	if (ko->plain && ko->pass_file)
		return ctl_usage_error("%s: --plain writes no passphrase: drop --passphrase-file", cmd);
	if (argc - optind != files)
		return files ? ctl_usage_error("%s takes one FILE", cmd) : ctl_usage_error("%s takes no argument", cmd);
	ko->file = files ? argv[optind] : NULL;
	return ctl_state_paths(c, p);
}

/* ---- the passphrase ---- */

/* Reads one line from fd into buf (PASS_MAX bytes); its length, or -1 when
 * it does not fit, or a negative errno value (-ERANGE: too long). */
static ssize_t read_line(int fd, unsigned char *buf)
{
	size_t n = 0;

	for (;;) {
		unsigned char ch;
		ssize_t r = read(fd, &ch, 1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0 || ch == '\n')
			break;
		if (n == PASS_MAX)
			return -ERANGE;
		buf[n++] = ch;
	}
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	return (ssize_t)n;
}

static int pass_from_file(const char *path, struct secret **out)
{
	_cleanup_(secret_freep) struct secret *buf = secret_new(PASS_MAX);
	_cleanup_(closep) int fd = -1;
	ssize_t n;

	if (!buf)
		ctl_out_of_memory();
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		fprintf(stderr, "mcpctl: cannot open the passphrase file %s: %m\n", path);
		return CTL_EXIT_KEEPER_ERROR;
	}
	n = read_line(fd, buf->data);
	if (n < 0) {
		fprintf(stderr, "mcpctl: the passphrase file %s: %s\n", path,
			n == -ERANGE ? "its first line is longer than 1024 bytes" : strerror((int)-n));
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (n == 0) {
		fprintf(stderr, "mcpctl: the passphrase file %s: its first line is empty; an empty passphrase is "
			"refused\n", path);
		return CTL_EXIT_USAGE;
	}
	*out = secret_from(buf->data, (size_t)n);
	if (!*out)
		ctl_out_of_memory();
	return 0;
}

/* Asks on the terminal with echo off. */
static int pass_ask(int tty, const char *prompt, struct secret **out)
{
	_cleanup_(secret_freep) struct secret *buf = secret_new(PASS_MAX);
	struct termios saved, quiet;
	ssize_t n;

	if (!buf)
		ctl_out_of_memory();
	if (tcgetattr(tty, &saved) < 0) {
		fprintf(stderr, "mcpctl: the terminal: %m\n");
		return CTL_EXIT_KEEPER_ERROR;
	}
	quiet = saved;
	quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
	quiet.c_lflag |= ICANON;
	if (write(tty, prompt, strlen(prompt)) < 0 || tcsetattr(tty, TCSAFLUSH, &quiet) < 0) {
		fprintf(stderr, "mcpctl: the terminal: %m\n");
		return CTL_EXIT_KEEPER_ERROR;
	}
	n = read_line(tty, buf->data);
	tcsetattr(tty, TCSAFLUSH, &saved);
	if (write(tty, "\n", 1) < 0) {
		/* The line break only tidies the terminal. */
	}
	if (n < 0) {
		fprintf(stderr, "mcpctl: reading the passphrase: %s\n",
			n == -ERANGE ? "longer than 1024 bytes" : strerror((int)-n));
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (n == 0) {
		fprintf(stderr, "mcpctl: an empty passphrase is refused\n");
		return CTL_EXIT_USAGE;
	}
	*out = secret_from(buf->data, (size_t)n);
	if (!*out)
		ctl_out_of_memory();
	return 0;
}

/* The passphrase from --passphrase-file or the terminal (twice with confirm). */
static int passphrase(const struct key_opts *ko, bool confirm, struct secret **out)
{
	_cleanup_(secret_freep) struct secret *again = NULL;
	_cleanup_(closep) int tty = -1;
	int r;

	if (ko->pass_file)
		return pass_from_file(ko->pass_file, out);
	tty = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
	if (tty < 0) {
		fprintf(stderr, "mcpctl: no terminal to ask for the passphrase on (%m): use --passphrase-file FILE\n");
		return CTL_EXIT_USAGE;
	}
	r = pass_ask(tty, confirm ? "Passphrase for the exported key: " : "Passphrase of the key file: ", out);
	if (r || !confirm)
		return r;
	r = pass_ask(tty, "The same passphrase again: ", &again);
	if (r == 0 && !secret_equal(*out, again)) {
		fprintf(stderr, "mcpctl: the two passphrases differ; nothing was written\n");
		r = CTL_EXIT_USAGE;
	}
	if (r)
		*out = secret_free(*out);
	return r;
}

/* The directory of path, synced (after a link or rename in it). */
static void sync_parent(const char *path)
{
	char copy[PATH_MAX];
	int fd;

	snprintf(copy, sizeof(copy), "%s", path);
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

/* Loads the key as the keeper would; 0 or an exit code after saying why. */
static int load_key(const struct state_paths *p, struct secret **key)
{
	char err[1024];

	if (ctl_path_missing(p->key)) {
		fprintf(stderr, "mcpctl: the master key %s is missing\n", p->key);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (store_load_master_key(p->data_dir, key, err, sizeof(err)) < 0) {
		fprintf(stderr, "mcpctl: %s\n", err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	return 0;
}

/* What a command's child works on. */
struct key_job {
	const struct state_paths *p;
	const struct key_opts *ko;
	const struct secret *pass;	/* export: the passphrase (NULL with --plain) */
	const struct secret *key;	/* import: the key read from FILE */
	int fd;				/* export: the file being written */
};

/* ---- export ---- */

static int export_child(void *arg)
{
	struct key_job *j = arg;
	_cleanup_(secret_freep) struct secret *key = NULL;
	unsigned char sealed[KEYFILE_SEALED_LEN];
	char plain[KEYFILE_PLAIN_LEN + 1];
	int r;

	r = load_key(j->p, &key);
	if (r)
		return r;
	if (j->ko->plain) {
		keyfile_plain(key, plain);
		r = fd_write_all(j->fd, plain, KEYFILE_PLAIN_LEN);
		sodium_memzero(plain, sizeof(plain));
	} else {
		r = keyfile_seal(key, j->pass, EXPORT_OPSLIMIT, EXPORT_MEMLIMIT, sealed);
		if (r == 0)
			r = fd_write_all(j->fd, sealed, sizeof(sealed));
	}
	if (r < 0) {
		fprintf(stderr, "mcpctl: writing %s: %s\n", j->ko->file, strerror(-r));
		return CTL_EXIT_KEEPER_ERROR;
	}
	return CTL_EXIT_OK;
}

static int key_export(struct ctl *c, int argc, char **argv)
{
	_cleanup_(secret_freep) struct secret *pass = NULL;
	struct key_opts ko = { 0 };
	struct state_paths p;
	struct key_job j = { .p = &p, .ko = &ko };
	int r;

	r = key_start(c, "key export", argc, argv, "pP", 1, &ko, &p);
	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	if (!ctl_path_missing(ko.file)) {
		fprintf(stderr, "mcpctl: %s exists: key export writes a new file only\n", ko.file);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (ctl_path_missing(p.key)) {
		fprintf(stderr, "mcpctl: the master key %s is missing: nothing to export\n", p.key);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (!ko.plain && (r = passphrase(&ko, true, &pass)))
		return r;
	j.pass = pass;
	/* Linked, not renamed: a file that appeared meanwhile stays. */
	r = ctl_write_file(ko.file, false, &j.fd, export_child, &j);
	if (r)
		return r;
	sync_parent(ko.file);
	if (ko.plain)
		printf("wrote %s (mode 0600): the master key IN CLEAR, for systemd-creds encrypt; delete it once "
		       "encrypted\n", ko.file);
	else
		printf("wrote %s (mode 0600): the master key sealed with the passphrase (Argon2id); "
		       "mcpctl key import reads it\n", ko.file);
	return CTL_EXIT_OK;
}

/* ---- import ---- */

/* The key in FILE (either form); 0 or an exit code after saying why. */
static int read_key_file(const struct key_opts *ko, struct secret **out)
{
	_cleanup_(secret_freep) struct secret *buf = secret_new(KEYFILE_MAX + 1);
	_cleanup_(secret_freep) struct secret *pass = NULL, *key = secret_new(STORE_KEY_LEN);
	_cleanup_(closep) int fd = -1;
	size_t n = 0;
	int r;

	if (!buf || !key)
		ctl_out_of_memory();
	fd = open(ko->file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		fprintf(stderr, "mcpctl: cannot open %s: %m\n", ko->file);
		return CTL_EXIT_KEEPER_ERROR;
	}
	while (n <= KEYFILE_MAX) {
		ssize_t got = read(fd, buf->data + n, KEYFILE_MAX + 1 - n);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			fprintf(stderr, "mcpctl: reading %s: %m\n", ko->file);
			return CTL_EXIT_KEEPER_ERROR;
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	if (n > KEYFILE_MAX || !keyfile_kind(buf->data, n)) {
		fprintf(stderr, "mcpctl: %s is not an exported master key (neither a file of mcpctl key export "
			"nor 64 hex digits); nothing was installed\n", ko->file);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (keyfile_kind(buf->data, n) == KEYFILE_SEALED) {
		r = passphrase(ko, false, &pass);
		if (r)
			return r;
	} else if (ko->pass_file) {
		fprintf(stderr, "mcpctl: note: %s holds the key in clear; --passphrase-file is not used\n", ko->file);
	}
	r = keyfile_open(buf->data, n, pass, key);
	if (r == KEYFILE_E_PASSPHRASE) {
		fprintf(stderr, "mcpctl: the passphrase does not open %s (or the file was altered); nothing was "
			"installed\n", ko->file);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (r) {
		fprintf(stderr, "mcpctl: %s: %s; nothing was installed\n", ko->file,
			r < 0 ? strerror(-r) : "an unknown version, KDF or KDF limits");
		return CTL_EXIT_KEEPER_ERROR;
	}
	*out = TAKE_PTR(key);
	return 0;
}

static int count_one(const char *key, const struct secret *plain, int status, void *ctx)
{
	(*(unsigned long *)ctx)++;
	return 0;
}

/* Records in the store that cur opens, or a negative errno value. */
static long records_of(const char *dir, const struct secret *cur, struct store **out)
{
	char err[1024];
	unsigned long n = 0;
	int r = store_open(dir, cur, out, err, sizeof(err));

	for (int db = 0; r == 0 && db < STORE_DB_COUNT; db++)
		r = store_list_keys(*out, (enum store_db)db, count_one, &n);
	return r ? (r < 0 ? r : -EINVAL) : (long)n;
}

/* A store is in dir and key does not open it. */
static int import_over_store(const struct key_job *j, const struct secret *cur)
{
	_cleanup_(store_closep) struct store *s = NULL;
	const char *dir = j->p->data_dir;
	unsigned long n = 0;
	char err[1024];
	long records = cur ? records_of(dir, cur, &s) : -1;

	if (records != 0) {
		fprintf(stderr, "mcpctl: this key does not open the store in %s (its records are sealed with another "
			"key); nothing was installed\n", dir);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (!j->ko->force) {
		fprintf(stderr, "mcpctl: %s holds another key, and the store in %s has no records: "
			"key import --force replaces it\n", j->p->key, dir);
		return CTL_EXIT_KEEPER_ERROR;
	}
	/* The store's key check moves to the new key, crash-safe. */
	if (store_rotate(s, j->key, &n, err, sizeof(err)) != 0) {
		fprintf(stderr, "mcpctl: %s; nothing was installed\n", err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	printf("replaced the master key %s (the store in %s had no records)\n", j->p->key, dir);
	return CTL_EXIT_OK;
}

static int import_child(void *arg)
{
	struct key_job *j = arg;
	_cleanup_(secret_freep) struct secret *cur = NULL;
	const char *dir = j->p->data_dir;
	char meta[PATH_MAX + 16], err[1024];
	struct store *s = NULL;
	int r;

	if (paths_ensure_private_dir(dir, err, sizeof(err)) < 0 || store_become_owner(dir, err, sizeof(err)) < 0) {
		fprintf(stderr, "mcpctl: the state directory %s\n", err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (!ctl_path_missing(j->p->key) && (r = load_key(j->p, &cur)))
		return r;
	if (cur && secret_equal(cur, j->key)) {
		printf("%s already holds this key; nothing changed\n", j->p->key);
		return CTL_EXIT_OK;
	}
	snprintf(meta, sizeof(meta), "%s/meta.db", dir);
	if (!ctl_path_missing(meta)) {
		r = store_open(dir, j->key, &s, err, sizeof(err));
		s = store_close(s);
		if (r == STORE_E_WRONG_KEY)
			return import_over_store(j, cur);
		if (r) {
			fprintf(stderr, "mcpctl: the store in %s cannot be opened: %s; nothing was installed\n", dir, err);
			return CTL_EXIT_KEEPER_ERROR;
		}
	} else if (cur && !j->ko->force) {
		fprintf(stderr, "mcpctl: %s holds another key: key import --force replaces it (there is no store in "
			"%s)\n", j->p->key, dir);
		return CTL_EXIT_KEEPER_ERROR;
	}
	if (store_install_key(dir, j->key, err, sizeof(err)) < 0) {
		fprintf(stderr, "mcpctl: %s\n", err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	printf("installed the key from %s as %s (mode 0600)\n", j->ko->file, j->p->key);
	return CTL_EXIT_OK;
}

/* key import --next: a group site's next key, beside the current one; the
 * keeper may run (it loads the file within 30 s, or at mcpctl reload). */
static int import_next_child(void *arg)
{
	struct key_job *j = arg;
	char err[1024];

	if (store_install_key_as(j->p->data_dir, STORE_KEY_NEXT_FILE, j->key, err, sizeof(err)) < 0) {
		fprintf(stderr, "mcpctl: %s\n", err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	printf("installed the key from %s as %s/%s: the keeper loads it within 30 s (or at mcpctl reload); once "
	       "every site has it, mcpctl key rotate on the master moves the group to it\n", j->ko->file,
	       j->p->data_dir, STORE_KEY_NEXT_FILE);
	return CTL_EXIT_OK;
}

static int import_next(struct key_opts *ko, struct state_paths *p)
{
	_cleanup_(secret_freep) struct secret *key = NULL;
	struct key_job j = { .p = p, .ko = ko };
	int r;

	if (ko->force)
		return ctl_usage_error("key import --next replaces nothing: drop --force");
	if (!store_dir_is_group(p->data_dir)) {
		fprintf(stderr, "mcpctl: --next is for the sites of a replication group; %s is none (a single host: "
			"stop the keeper and run mcpctl key rotate)\n", p->data_dir);
		return CTL_EXIT_USAGE;
	}
	r = read_key_file(ko, &key);
	if (r)
		return r;
	j.key = key;
	return ctl_in_child(import_next_child, &j);
}

static const char creds_note[] =
	"the master key comes from systemd's credentials ($CREDENTIALS_DIRECTORY): change it there "
	"(see mcpctl(1), KEYS)";

static int key_import(struct ctl *c, int argc, char **argv)
{
	_cleanup_(secret_freep) struct secret *key = NULL;
	struct key_opts ko = { 0 };
	struct state_paths p;
	struct key_job j = { .p = &p, .ko = &ko };
	int r;

	r = key_start(c, "key import", argc, argv, "fPn", 1, &ko, &p);
	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	if (ko.next)
		return import_next(&ko, &p);
	if (!p.key_in_state) {
		fprintf(stderr, "mcpctl: key import writes no key: %s\n", creds_note);
		return CTL_EXIT_USAGE;
	}
	r = ctl_refuse_if_live(c, &p, "importing a key");
	if (r)
		return r;
	r = read_key_file(&ko, &key);
	if (r)
		return r;
	j.key = key;
	return ctl_in_child(import_child, &j);
}

/* ---- rotate ---- */

static int rotate_child(void *arg)
{
	const struct state_paths *p = arg;
	_cleanup_(store_closep) struct store *s = NULL;
	_cleanup_(secret_freep) struct secret *key = NULL, *fresh = secret_new(STORE_KEY_LEN);
	unsigned long n = 0;
	char err[1024];
	int r;

	if (!fresh)
		ctl_out_of_memory();
	r = load_key(p, &key);
	if (r)
		return r;
	r = store_open_for_rotation(p->data_dir, key, &s, err, sizeof(err));
	if (r) {
		fprintf(stderr, "mcpctl: the store cannot be opened: %s; nothing changed\n", err);
		return CTL_EXIT_KEEPER_ERROR;
	}
	randombytes_buf(fresh->data, fresh->len);
	r = store_rotate(s, fresh, &n, err, sizeof(err));
	if (r == STORE_E_IN_USE) {
		fprintf(stderr, "mcpctl: %s: stop it before rotating the key; nothing changed\n", err);
		return CTL_EXIT_KEEPER_RUNNING;
	}
	if (r) {
		fprintf(stderr, "mcpctl: %s%s\n", err, r == STORE_E_CORRUPT ? "; nothing changed" : "");
		return CTL_EXIT_KEEPER_ERROR;
	}
	printf("re-sealed %lu record%s with a new master key, now in %s\n", n, n == 1 ? "" : "s", p->key);
	printf("backups made before now need the old key; the other sites of a group need the new one "
	       "(mcpctl key export)\n");
	return CTL_EXIT_OK;
}

/* A group's key: its master's keeper re-seals (key.rotate). */
static int rotate_group(struct ctl *c)
{
	struct rpc_msg reply = { 0 };
	int64_t n = 0;
	int r;

	r = ctl_find_socket(c);
	if (r) {
		fprintf(stderr, "mcpctl: a replication group's key is rotated by its master's keeper: it must run\n");
		return r;
	}
	r = ctl_exchange(c, METHOD_KEY_ROTATE, NULL, &reply, NULL, NULL);
	if (r)
		return r;
	field_int(reply.result, PARAM_KEY_RECORDS, &n);
	printf("re-sealed %lld record%s with the group's next master key; every site that has it as %s switches "
	       "to it (a site without it stops reading the records: install it there)\n", (long long)n,
	       n == 1 ? "" : "s", STORE_KEY_NEXT_FILE);
	rpc_msg_clear(&reply);
	return CTL_EXIT_OK;
}

static int key_rotate(struct ctl *c, int argc, char **argv)
{
	struct key_opts ko = { 0 };
	struct state_paths p;
	char path[PATH_MAX + 16];
	int r;

	r = key_start(c, "key rotate", argc, argv, "", 0, &ko, &p);
	if (r)
		return r == CTL_HELP_SHOWN ? CTL_EXIT_OK : r;
	if (!p.key_in_state) {
		fprintf(stderr, "mcpctl: key rotate cannot replace a credential: %s. Rotate on a copy of the state "
			"directory with its key in master.key, then key export --plain and systemd-creds encrypt "
			"the new key\n", creds_note);
		return CTL_EXIT_USAGE;
	}
	if (store_dir_is_group(p.data_dir))
		return rotate_group(c);
	snprintf(path, sizeof(path), "%s/tokens.db", p.data_dir);
	if (ctl_path_missing(path)) {
		fprintf(stderr, "mcpctl: no token store in %s: nothing to rotate\n", p.data_dir);
		return CTL_EXIT_KEEPER_ERROR;
	}
	r = ctl_refuse_if_live(c, &p, "rotating the key");
	if (r)
		return r;
	return ctl_in_child(rotate_child, &p);
}

int cmd_key(struct ctl *c, int argc, char **argv)
{
	if (argc < 2)
		return ctl_usage_error("key needs a subcommand: export, import or rotate");
	if (strcmp(argv[1], "export") == 0)
		return key_export(c, argc - 1, argv + 1);
	if (strcmp(argv[1], "import") == 0)
		return key_import(c, argc - 1, argv + 1);
	if (strcmp(argv[1], "rotate") == 0)
		return key_rotate(c, argc - 1, argv + 1);
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		ctl_usage(stdout);
		return CTL_EXIT_OK;
	}
	return ctl_usage_error("key: unknown subcommand '%s' (export, import or rotate)", argv[1]);
}
