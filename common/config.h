/*
 * The JSON configuration: global settings and the list of MCP servers.
 *
 * config_load() reads one file and either returns a complete, validated
 * struct config or fails with a message that names the file, the field path
 * and what is wrong ("config.json: mcpServers.github.url: must be an http or
 * https URL"). Unknown fields are warned about through log_warn() with the
 * same file/path naming, and otherwise ignored.
 *
 * Secrets in the config (oauth.client_secret, header values) are ordinary
 * heap strings here: the config file itself holds them in clear.
 *
 * Every string and array a struct config points to belongs to it and goes
 * with config_free(); none may be freed, or kept past it, on its own.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct config_mem;

#define CONFIG_DIGEST_LEN 32

enum config_protocol {
	CONFIG_PROTOCOL_STREAMABLE_HTTP,
	CONFIG_PROTOCOL_SSE,
	CONFIG_PROTOCOL_STDIO,
};

struct config_kv {
	char *key;
	char *value;
};

struct config_oauth {
	char *client_id;	/* NULL: dynamic client registration */
	char *client_secret;	/* NULL: public client */
	char **scopes;		/* NULL-terminated; NULL when none configured */
	size_t n_scopes;
	int redirect_port;	/* 0: choose a free port */
	char *resource;		/* NULL: the server URL (RFC 8707) */
	/* Discovery, registration, token and revocation requests may go to
	 * private, link-local and loopback addresses, whatever the server
	 * URL's own class (an identity provider on an internal network). */
	bool allow_private_endpoints;
};

struct config_server {
	char *name;
	char *url;		/* http(s) servers; NULL for stdio */
	char *command;		/* stdio servers; NULL otherwise */
	char **args;		/* NULL-terminated, possibly empty (never NULL for stdio) */
	size_t n_args;
	struct config_kv *env;	/* stdio: extra environment */
	size_t n_env;
	struct config_kv *headers; /* http: static request headers */
	size_t n_headers;
	/* Beside the flags rather than after name: one padding hole less per server. */
	enum config_protocol protocol;
	bool enabled;		/* default true */
	bool eager;		/* default false */
	/*
	 * OAuth applies to streamable-http and sse servers unless "oauth": false;
	 * never to stdio. oauth_enabled says whether it applies; oauth holds the
	 * optional settings (all defaults when no "oauth" object was given).
	 */
	bool oauth_enabled;
	/* "allow_insecure_http": OAuth over plain http:// to a host that is
	 * not loopback is refused without it; insecure_http says the server
	 * is such a one (its bearer token travels in clear). */
	bool allow_insecure_http;
	bool insecure_http;
	struct config_oauth oauth;
	/*
	 * stdio servers run sandboxed (daemon/jail.c) unless "sandbox": false.
	 * The paths the configuration grants beyond the system directories:
	 * absolute, NULL-terminated, never NULL for stdio servers.
	 */
	bool sandbox;
	char **sandbox_read;
	size_t n_sandbox_read;
	char **sandbox_write;
	size_t n_sandbox_write;
};

struct config_refresh {
	double threshold;	/* fraction of lifetime, (0, 1); default 0.8 */
	int max_retries;	/* fast retries after the first attempt; default 3 */
	int timeout_sec;	/* total timeout of one token request; default 30 */
	int max_in_flight;	/* global cap on concurrent refreshes; default 16 */
	int min_interval_ms;	/* floor between two token requests of one server,
				 * 100 ms .. 1 h; default 2000 */
	bool retry_after_crash;	/* a refresh interrupted by a crash presents its
				 * refresh token once more; default false */
};

/* System mode: the user each kind of child runs as, one uid per role so that
 * none can reach another's memory. Ignored in user mode. */
struct config_users {
	char *oauth;		/* default mcpkeeper-oauth */
	char *http;		/* default mcpkeeper-http */
	char *worker;		/* default mcpkeeper-worker; the deprecated "worker_user" */
};

/* The http child's front door ("http" in the file). */
struct config_http {
	int max_connections;	/* client connections held at once; default 256 */
	int header_timeout_sec;	/* to send a whole request; default 10 */
};

/* "login": how the keeper may bring a login to the user by itself. */
struct config_login {
	/* The command that opens a login URL ($BROWSER syntax: ':'-separated
	 * alternatives, words split on spaces, "%s" for the URL, else appended).
	 * The keeper runs it for the step-up and migration logins it starts
	 * itself. NULL: none. Default: the keeper's $BROWSER in user mode, none
	 * in system mode; false in the file: none. */
	char *browser;
	/* Whether it also opens the login at an authorization server the
	 * upstream's metadata newly names (a phishing aid when the upstream is
	 * hostile, hence default false). */
	bool browser_on_migration;
};

/* One site of a replication group: a host (name or address) and a port. */
struct config_site {
	char *host;
	int port;
};

/* "replication" (common/config-replication.c, mcpkeeper-config(5)). */
struct config_replication {
	bool enabled;		/* the object is present */
	struct config_site local;	/* "listen" */
	struct config_site *peers;	/* every other site; 2 or more, total odd */
	size_t n_peers;
	int priority;		/* election priority, 0 (never master) .. 1000000; 100 */
	bool create;		/* this site creates the group at its first start */
	int lease_timeout_ms;	/* master lease; default 5000 */
	int heartbeat_ms;	/* master's heartbeat; clients call an election
				 * after 3 missed; default 1000 */
	int ack_timeout_ms;	/* a commit waits this long for a quorum; 2000 */
};

struct config {
	char *path;		/* the file this was loaded from */
	bool system_mode;
	char *data_dir;		/* state: database, master.key */
	char *runtime_dir;	/* control.sock */
	char *listen;		/* HTTP API "127.0.0.1:PORT" (port may be 0) */
	char *group;		/* control socket group allowed everything; NULL: none */
	struct config_users users;
	int idle_timeout_sec;	/* worker idle timeout; default 300 */
	int max_conns_per_uid;	/* control connections one uid may hold; default 128 */
	int request_timeout_sec;/* one upstream MCP request, in a worker; default 60 */
	bool disable_management;
	struct config_refresh refresh;
	struct config_http http;
	struct config_login login;
	struct config_replication replication;
	struct config_server *servers;
	size_t n_servers;
	struct config_mem *mem;	/* holds every string and array above but servers */
	/* BLAKE2b of the text this was parsed from: daemon/servers.c refuses to
	 * rewrite a file whose content someone else changed since. */
	unsigned char digest[CONFIG_DIGEST_LEN];
};

/*
 * Loads and validates path. system_mode selects the defaults for data_dir and
 * runtime_dir when the file does not set them (see paths.h).
 * Returns 0 and *out, or a negative errno value with a one-line message in
 * err (always NUL-terminated) naming the file, field and problem.
 */
int config_load(const char *path, bool system_mode, struct config **out, char *err, size_t errlen);

/* Same, from a string; name stands for the file name in messages. */
int config_parse(const char *name, const char *text, size_t len, bool system_mode,
		 struct config **out, char *err, size_t errlen);

/* The whole file at path (at most the loader's 16 MiB), into *text
 * (malloc'd, not NUL-terminated). 0, or -errno with the message in err. */
int config_read_file(const char *path, char **text, size_t *len, char *err, size_t errlen);
/* config_parse(), for text read from path (messages name its base name, as
 * config_load() does; c->path is path). */
int config_parse_path(const char *path, const char *text, size_t len, bool system_mode,
		      struct config **out, char *err, size_t errlen);
/* The digest config_parse() records of text. */
void config_digest(const char *text, size_t len, unsigned char out[CONFIG_DIGEST_LEN]);

struct config *config_free(struct config *c);
void config_freep(struct config **c);

/* Exact name match; NULL when absent. */
const struct config_server *config_find_server(const struct config *c, const char *name);

const char *config_protocol_name(enum config_protocol p);

/* "HOST:PORT" or "[IPV6]:PORT", not a wildcard: NULL and host, port, or
 * what is wrong with s. */
const char *config_site_parse(const char *s, char *host, size_t hostlen, int *port);
