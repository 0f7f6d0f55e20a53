/*
 * mcpctl: the operator's client of the keeper's control socket, and the
 * interfaces between its files.
 *
 *   mcpctl.c   global options, the command table, usage and usage errors
 *   keeper.c   finding the socket, connecting within --timeout, the hello
 *              (protocol version check) pipelined with one request, the
 *              reply and the keeper's errors as exit codes
 *   output.c   reading reply fields, tables, --json, and text_clean(),
 *              which every string from the keeper passes before printing
 *   status.c   status and servers
 *   auth.c     auth login, logout (also without a keeper: then it opens
 *              the store and only deletes records) and status
 *   manage.c   servers add|remove|enable|disable|set, reload: changes of
 *              the server list (header values from a file or stdin only)
 *   events.c   events: follow the keeper's event stream
 *   connect.c  connect: hand stdin and stdout to a worker, or bridge them
 *              (bridge.c)
 *   tools.c    tools: list what an upstream offers through its worker
 *              (common/toollist.c speaks the MCP)
 *   backup.c   backup and restore: a hot copy of the store in one file
 *              (records stay sealed), and putting one back with no keeper
 *   key.c      key export, import and rotate: the master key sealed with a
 *              passphrase (or for systemd-creds), installed, replaced
 *
 * mcpctl never holds a token. One context struct (struct ctl) is passed
 * explicitly.
 *
 * The exit codes are an interface that scripts test: they are listed in
 * usage() and in mcpctl.1 and must stay in step with both.
 */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "util.h"

struct rpc_msg;

enum {
	CTL_EXIT_OK = 0,
	CTL_EXIT_KEEPER_ERROR = 1,	/* also: mcpctl itself failed (memory, output) */
	CTL_EXIT_USAGE = 2,
	CTL_EXIT_UNREACHABLE = 3,
	CTL_EXIT_REFUSED = 4,
	CTL_EXIT_PROTOCOL = 5,
	CTL_EXIT_NOT_FOUND = 6,		/* no such server */
	CTL_EXIT_NOT_OAUTH = 7,		/* the server does not use OAuth */
	CTL_EXIT_UNTRUSTED = 8,		/* the socket is served by a uid we do not trust */
	CTL_EXIT_KEEPER_RUNNING = 9,	/* restore, key import|rotate: a keeper (or another process) has the store */
};

/* What an option parser returns, besides 0 and an exit code, when it
 * printed the help: the command is done and succeeded. Not an exit code. */
#define CTL_HELP_SHOWN 256

#define CTL_DEFAULT_TIMEOUT_SEC 10
#define CTL_MAX_TIMEOUT_SEC 86400.0

struct ctl {
	/* Parsed options. */
	const char *opt_socket;
	const char *opt_config;		/* --config, else $MCPKEEPER_CONFIG */
	bool system_mode;
	double timeout_sec;		/* 0: wait forever */

	char socket_path[PATH_MAX];
	/* Whose keeper answers there: the system keeper (--system, or the
	 * system socket found from user mode), whose user owns keeper_data_dir,
	 * or this user's. */
	bool system_keeper;
	char keeper_data_dir[PATH_MAX];
	int64_t deadline_ms;		/* CLOCK_MONOTONIC; 0: none */
	bool timeout_given;		/* --timeout on the command line */

	/* Notifications that arrive while waiting for a reply (auth.login_url,
	 * event); NULL: skipped. */
	void (*on_note)(struct ctl *c, const struct rpc_msg *m);
	bool no_browser;
	/* auth logout: a keeper that is not running means standalone mode. */
	bool quiet_unreachable, keeper_absent;
	int last_error;
};

/* mcpctl.c */
void ctl_usage(FILE *f);
/* Says "mcpctl: " fmt and where help is; returns CTL_EXIT_USAGE. */
int ctl_usage_error(const char *fmt, ...) _printf_(1, 2);
/* "mcpctl: out of memory", exit 1: mcpctl's one way to die of it (common's
 * fatal() would print a log line instead). */
_noreturn_ void ctl_out_of_memory(void);
/* SEC from 0 to CTL_MAX_TIMEOUT_SEC: 0 or -EINVAL. */
int ctl_parse_timeout(const char *s, double *out);
int ctl_option_error(const char *cmd, int o, int argc, char **argv);
struct option;
int ctl_option_misplaced(const char *cmd, const struct option *opts, int longindex, int o);
int ctl_parse_query_opts(const char *cmd, int argc, char **argv, bool *json, const char **server);
int ctl_parse_name_opts(const char *cmd, int argc, char **argv, const char *flag, bool *flag_set, const char **name);

/* keeper.c */
int64_t ctl_now_ms(void);
int ctl_remaining_ms(const struct ctl *c);
bool ctl_path_missing(const char *path);
int ctl_find_socket(struct ctl *c);
int ctl_unreachable(const struct ctl *c, int err);
int ctl_exchange(struct ctl *c, const char *method, struct json_object *params, struct rpc_msg *reply,
		 int *keep_fd, struct evbuffer **keep_buf);
int ctl_query(struct ctl *c, const char *method, struct json_object *params, bool json, const char *only,
	      int (*print)(struct json_object *result, const char *only));

static inline void evbuffer_freep(struct evbuffer **b)
{
	if (*b)
		evbuffer_free(*b);
}

/* output.c */
char *text_clean(const char *s);
void output_json(struct json_object *o);
int output_malformed(const char *method, const char *what);
int output_servers(struct json_object *result, const char *method, struct json_object **out);
const char *field_str(struct json_object *o, const char *key);
bool field_int(struct json_object *o, const char *key, int64_t *out);
bool field_bool(struct json_object *o, const char *key, bool *out);
struct json_object *field_child(struct json_object *o, const char *key, enum json_type type);
void duration_format(int64_t s, char *buf, size_t len);

/*
 * A table of text cells, columns as wide as their widest cell, and under a
 * row an optional note line. Every cell is cleaned of control characters.
 */
#define TABLE_MAX_COLS 8

struct table_row {
	char *cell[TABLE_MAX_COLS];
	char *note;
};

struct table {
	size_t n_cols;
	const char *head[TABLE_MAX_COLS];
	struct table_row *rows;
	size_t n_rows;
};

struct table_row *table_add_row(struct table *t);
void table_set(struct table_row *row, size_t col, const char *text);
void table_print(const struct table *t);
void table_clear(struct table *t);

/* status.c */
int status_print_servers(struct json_object *result, const char *method, bool full, const char *only);

/* The commands: each returns an exit code. */
int cmd_status(struct ctl *c, int argc, char **argv);
int cmd_servers(struct ctl *c, int argc, char **argv);
int cmd_auth(struct ctl *c, int argc, char **argv);
int cmd_events(struct ctl *c, int argc, char **argv);
int cmd_connect(struct ctl *c, int argc, char **argv);
int cmd_reload(struct ctl *c, int argc, char **argv);
/* manage.c: `servers VERB ...`, argv[0] the verb. */
int servers_manage(struct ctl *c, int argc, char **argv);
int cmd_tools(struct ctl *c, int argc, char **argv);
/* backup.c: backup FILE, restore [--force] FILE */
struct config;
/* The config file for a command that works without the keeper: --config
 * ($MCPKEEPER_CONFIG), else the mode's default, its name in path. why
 * begins the messages. Returns 0, or an exit code after saying why
 * (CTL_EXIT_UNREACHABLE: no config file can be found). */
int ctl_config_standalone(struct ctl *c, const char *why, struct config **cfg, char *path, size_t len);
/* The state directory and the master key's file, from the config file as
 * the keeper would read it (ctl_state_paths: 0 or an exit code). */
struct state_paths {
	char data_dir[PATH_MAX];
	char key[PATH_MAX];
	bool key_in_state;	/* master.key in the state directory, not a credential */
};
int ctl_state_paths(struct ctl *c, struct state_paths *p);
/* CTL_EXIT_KEEPER_RUNNING after saying so when a keeper answers on the
 * socket or a process has the store open ("stop it before DOING"), else 0. */
int ctl_refuse_if_live(struct ctl *c, const struct state_paths *p, const char *doing);
/* Runs fn in a child (which may become the store's owner for good) and
 * returns its exit code. */
int ctl_in_child(int (*fn)(void *arg), void *arg);
/* Writes file as the caller: fn runs in ctl_in_child() with *fd a new
 * temporary file beside it (mode 0600), which is synced and renamed over
 * file (replace) or linked to it (an existing file stays). fn's exit code,
 * or an exit code after saying why. */
int ctl_write_file(const char *file, bool replace, int *fd, int (*fn)(void *arg), void *arg);
int cmd_backup(struct ctl *c, int argc, char **argv);
int cmd_restore(struct ctl *c, int argc, char **argv);
/* replication.c */
int cmd_replication(struct ctl *c, int argc, char **argv);
/* key.c: key export|import|rotate */
int cmd_key(struct ctl *c, int argc, char **argv);
