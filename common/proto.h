/*
 * The mcpkeeper protocol in one place: version, method names, event names,
 * error codes and error kinds. The keeper, its children and mcpctl all
 * include this header, so they cannot disagree.
 *
 * Every channel carries JSON-RPC 2.0, one compact JSON object per line.
 * The first message on each keeper<->child channel is a hello carrying
 * PROTO_VERSION; a peer speaking another version is refused.
 */
#pragma once

#define PROTO_VERSION 1

/* Largest message on any channel unless a reader is told otherwise. */
#define PROTO_MAX_MESSAGE (1024 * 1024)

/*
 * Largest access token and largest refresh token, in bytes, each. The oauth
 * child refuses a token response with a longer one (reason
 * LOGIN_R_TOKEN_TOO_LARGE), the store refuses to encode or decode a token
 * record holding one, and a worker treats a longer token from the keeper as
 * a keeper bug.
 */
#define PROTO_MAX_TOKEN (16 * 1024)
/* The longest Retry-After (seconds) the oauth child passes on: a day. */
#define PROTO_MAX_RETRY_AFTER 86400

/*
 * Control socket methods (mcpctl and other local clients -> keeper).
 *
 * hello {"version": PROTO_VERSION, "client": "mcpctl 0.1.0" (optional, for
 *   logs)} -> {"version": PROTO_VERSION, "keeper": "mcpkeeperd VERSION"}.
 *   Optional (a person with socat may skip it), and when sent it comes
 *   first. A client naming another version gets an error of kind
 *   KIND_VERSION_MISMATCH whose message names both versions, and the
 *   connection closes. mcpctl sends it on every connection, pipelined with
 *   its request, and refuses a keeper that answers another version (or
 *   knows no hello: older than the version check).
 */
/*
 * status {"server"?, "offset"?, "limit"?}: the keeper and one page of its
 * servers, {"version", "pid", "mode", "config", "servers": [...], "total",
 * "offset", "next_offset": where the next page starts, null on the last,
 * "orphaned_tokens": [...] (on the first page only), "http", "web_ui"}.
 * A page holds at most limit servers and never more than fit in
 * PROTO_MAX_MESSAGE; with "server", that server alone (error not_found when
 * neither it nor an orphaned token of that name exists).
 */
#define METHOD_STATUS "status"
#define METHOD_SERVERS_LIST "servers.list"
#define METHOD_AUTH_LOGIN "auth.login"
#define METHOD_AUTH_LOGOUT "auth.logout"
#define METHOD_AUTH_STATUS "auth.status"
#define METHOD_EVENTS_SUBSCRIBE "events.subscribe"
#define METHOD_CONNECT "connect"

/*
 * Runtime changes of the server list (daemon/servers.c), each checked by
 * the config file's own validation (the same messages) and applied as a
 * reload applies that server (schedule, worker, token; a server removed,
 * renamed or given another URL leaves its token orphaned until a logout).
 * In user mode the config file is rewritten (a temporary file in its
 * directory, fsynced, renamed over the target of a symlink; mode, unknown
 * keys and the form of mcpServers kept) before the reply; in system mode
 * the change goes to the store's overlay (STORE_SERVERS), merged over the
 * file at start and reload, and status's "source" says "runtime".
 *   servers.add {"server": NAME, "config": {the entry as in mcpServers}}
 *   servers.remove {"server"}
 *   servers.update {"server", "set": {key: value, null to remove the key;
 *     "name" renames}}
 *   -> {"server": its name now, "reason": the event's, "previous": the old
 *      name (a rename), "orphaned": the token key left orphaned, if any}
 *   Each emits servers.changed {"reason": "server_added" | "server_removed"
 *   | "server_updated", "server", "previous"?}. Errors: kind forbidden
 *   (disable_management; from the http child, any of command, args, env,
 *   sandbox, allow_insecure_http), not_found, exists (add: the name is
 *   taken; update: a rename to a taken name), invalid_params (the
 *   validation's message), conflict (the file changed since the keeper
 *   read it: reload first), unavailable (the file or the store cannot be written).
 * reload {} -> {"servers": N}: what SIGHUP does; an error of kind
 *   invalid_config with the file's message leaves everything as it was.
 */
#define METHOD_SERVERS_ADD "servers.add"
#define METHOD_SERVERS_REMOVE "servers.remove"
#define METHOD_SERVERS_UPDATE "servers.update"
#define METHOD_RELOAD "reload"
#define SERVERS_R_ADDED "server_added"
#define SERVERS_R_REMOVED "server_removed"
#define SERVERS_R_UPDATED "server_updated"

/* Notifications from the keeper to a subscribed control client. */
#define METHOD_EVENT "event"
/*
 * auth.login {"server", "timeout": seconds (default 120)}: the keeper sends
 * auth.login_url {"server", "url"} on the same connection as soon as the
 * authorization URL exists, then the reply once the login has ended:
 * {"server", "oauth_status", "token_expires_at", "token_expires_at_unix",
 * "refresh_token": bool}, or
 * an error whose data carries "reason" (LOGIN_R_* below). Closing the
 * connection cancels the login.
 * With "wait": false the reply comes as soon as the URL exists, {"server",
 * "url"}, and the login goes on in the keeper whatever the connection does;
 * its end is an event: servers.changed {"reason": "oauth_login", "server"}
 * or {"reason": "oauth_login_failed", "server", "error": message}.
 * auth.logout {"server"} | {"all": true}: the record goes at once; the reply
 * waits for the provider's revocation: per server {"server", "logged_out",
 * "had_token", "revoked": bool (absent when not attempted), "revoke_error",
 * "revocation": why it was not attempted, "orphaned": true for a token whose
 * server left the config}; with all, {"results": [...]}.
 */
#define METHOD_AUTH_LOGIN_URL "auth.login_url"

/*
 * connect {"server", "stdio": bool}: the reply is {"server"}, and from then
 * on the connection belongs to the server's worker; its next bytes are MCP.
 * With "stdio": true the client steps out of the data path instead: right
 * after the reply it sends one byte, 0, with two descriptors attached
 * (SCM_RIGHTS): where the worker reads MCP (mcpctl's stdin) and where it
 * writes it (mcpctl's stdout), each a pipe or a socket. The connection then
 * carries nothing but the end of the session: one line from the worker,
 * session.closed {"clean": bool, "reason": text}, and the close. "clean"
 * means the client's input ended and every request was answered. A
 * connection that closes without that line lost its worker (killed,
 * crashed): the requests in flight are not answered.
 */
#define METHOD_SESSION_CLOSED "session.closed"
/* The byte that carries the two descriptors. */
#define CONNECT_STDIO_BYTE 0

/*
 * Keeper <-> child channel (fd 3).
 *
 * hello (keeper -> child, request), the first message on the channel:
 *   params {"version": PROTO_VERSION, "role": "oauth"|"http"|"worker",
 *           "name": upstream name (workers), "log_level": "info"|"debug"|...}
 *   result {"version": PROTO_VERSION, "pid": N,
 *           "landlock": "enforced"|"unavailable",
 *           "sandbox": "namespaces"|"landlock"|"off" (stdio workers: the
 *           sandbox daemon/jail.c put it in)}
 *   A child that sees another version answers an error and exits.
 *
 * oauth.refresh (keeper -> oauth child, request): one refresh_token grant.
 *   params {"server": name, "token_endpoint": url, "refresh_token": ...,
 *           "client_id": ..., "client_secret": ... (optional),
 *           "auth_method": "client_secret_basic"|"client_secret_post"|"none",
 *           "resource": ... (optional, RFC 8707), "scope": ... (optional),
 *           "timeout_ms": total request timeout}
 *   result {"access_token", "token_type", "expires_in" (optional),
 *           "refresh_token" (optional: absent means keep the old one),
 *           "scope" (optional), "http_status"}
 *   error  code RPC_APP_ERROR, a message without token bytes, and
 *          data {"kind": KIND_TRANSIENT|KIND_TERMINAL,
 *                "oauth_error": "invalid_grant"... (when the provider said),
 *                "reason": LOGIN_R_TOKEN_TOO_LARGE (an access or refresh
 *                token longer than PROTO_MAX_TOKEN: kind transient),
 *                "http_status": N (when there was a response),
 *                "retry_after": seconds (a 429 or 5xx with Retry-After,
 *                at most PROTO_MAX_RETRY_AFTER; the keeper waits at least
 *                that long before its next try, within its own cap)}
 *
 * Login and logout (keeper -> oauth child). The keeper drives a login as
 * a sequence of requests, one step each, and keeps everything that must
 * persist (registered clients, the redirect port, the token); the child
 * holds a login's secrets (PKCE verifier, state, code) only in memory and
 * never sends them back. Every request carries "server" (the upstream name,
 * for logs) and "timeout_ms". Errors are RPC_APP_ERROR with a message meant
 * for the user (never token bytes) and data {"kind": KIND_TRANSIENT |
 * KIND_TERMINAL, "reason": one of the LOGIN_R_* words below,
 * "oauth_error": the provider's error code when it gave one,
 * "http_status": N when there was a response}.
 *
 * Every oauth.refresh, oauth.discover, oauth.register, oauth.authorize and
 * oauth.revoke also carries the server's address policy, which the child
 * keeps per server (the login's code exchange uses the one of its
 * oauth.authorize): "server_address", the class (common/addr.h) of the MCP
 * server URL's host as written ("public" for a name); "allow_private_endpoints"
 * and "allow_insecure_http" from the server's config. The child checks the
 * address every connection is about to go to: public is always allowed;
 * loopback, private and link-local only when the server's own address is of
 * that class or allow_private_endpoints says so (reserved only then);
 * unspecified and multicast never. The discovery probe of the server's own
 * URL and protected resource metadata at its origin are not checked (the
 * worker goes there anyway). Plain http must reach a loopback address unless
 * allow_insecure_http. Without a policy the child allows public https only.
 *
 * oauth.listen {server, port (0: any free port)} -> {"port": N}
 *   Binds 127.0.0.1:port for the redirect and keeps it for this server's
 *   login (a second oauth.listen for the same server replaces it). Until
 *   oauth.authorize, a request to it gets a "no login waiting" page.
 * oauth.discover {server, url (the MCP endpoint), protocol, headers {..}}
 *   -> {"resource", "issuer", "authorization_endpoint", "token_endpoint",
 *       "registration_endpoint"?, "revocation_endpoint"?, "scope"? (from the
 *       401 challenge, else the resource's scopes_supported), "iss_supported"
 *       (RFC 9207), "token_endpoint_auth_methods" [..]?}
 *   RFC 9728 then RFC 8414 / OpenID discovery in the MCP specification's
 *   order; the fetched issuer must equal the expected one; an authorization
 *   server that does not advertise S256 is refused (reason "pkce").
 * oauth.register {server, registration_endpoint, redirect_uri, scope?,
 *       token_endpoint_auth_methods [..]?}
 *   -> {"client_id", "client_secret"?, "auth_method",
 *       "client_secret_expires_at" (0: never)}   RFC 7591.
 * oauth.authorize {server, authorization_endpoint, token_endpoint,
 *       redirect_uri, client_id, client_secret?, auth_method, resource?,
 *       scope?, issuer, iss_supported}
 *   Needs this server's oauth.listen. Sends the notification
 *   oauth.login_url {server, url} once the authorization URL exists, then
 *   waits (up to timeout_ms) for the browser's redirect, checks state (and
 *   iss), exchanges the code with the PKCE verifier and answers with the
 *   token response, as oauth.refresh does, after the browser got its page.
 * oauth.cancel (notification) {server}: abandons that server's login: the
 *   pending oauth.authorize fails (reason "cancelled"), the port closes.
 * oauth.revoke {server, revocation_endpoint, token, token_type_hint,
 *       client_id, client_secret?, auth_method} -> {"http_status"}  RFC 7009.
 *
 * The http child (role "http"): the REST API, the event stream, the web UI
 * and MCP over HTTP, on loopback. It holds no token and no master key.
 *   hello params add {"listen": "127.0.0.1:PORT" (port 0: any), "api_key":
 *           the key every API route requires, "ui_dir": absolute path of
 *           the web UI's static files, "management": false when the config
 *           says disable_management, "max_connections": HTTP connections
 *           it may hold at once (http.max_connections), "header_timeout_ms":
 *           how long a connection may take to send a whole request
 *           (http.header_timeout)}
 *   hello result adds {"port": the port it bound}. A child that cannot
 *           bind answers the hello with an error (kind "unavailable") and
 *           exits; the keeper restarts it with backoff.
 *   control.connect (http -> keeper, request) {}: the keeper creates a
 *           connected pair of Unix stream sockets, treats one end as a
 *           control-socket client with the keeper's own credentials, and
 *           sends the other on the child's fd 4 (the descriptor channel, as
 *           for workers) under the number it answers: result {"number": N}.
 *           On it the child speaks the control protocol exactly as mcpctl
 *           does: status, auth.login, auth.logout, events.subscribe, and
 *           connect (the MCP-over-HTTP sessions and GET .../tools: the end
 *           then belongs to the server's worker). The child may hold at most
 *           API_CONTROL_CONNS_MAX (64) of them at once (not counting those
 *           handed to a worker); past that the request gets an error (kind
 *           "unavailable") and no descriptor.
 *
 * Workers (one per upstream; the keeper -> worker hello carries the upstream
 * as the keeper assigns it, never as the worker would claim it):
 *   hello params add {"name": NAME, "transport": {"protocol":
 *           "streamable-http"|"sse"|"stdio", "url", "headers": {..},
 *           "command", "args": [..], "env": {..}, "request_timeout_ms",
 *           "oauth": bool}}
 *   fd 4 of a worker is a SOCK_SEQPACKET socket that carries nothing but
 *   client descriptors: each packet is the 8-byte little-endian client
 *   number and one byte of flags (CLIENT_F_*) with one descriptor attached
 *   (SCM_RIGHTS). The client on it has already had its `connect` reply
 *   from the keeper; its next bytes are MCP, or, with CLIENT_F_STDIO, the
 *   two descriptors of a "stdio" connect (see connect above).
 *   token.update (keeper -> worker, notification):
 *           {"access_token", "token_type", "expires_at"}: use from now on.
 *   token.clear (keeper -> worker, notification or request) {}: logged
 *           out; end the upstream sessions, answer calls with a "not logged
 *           in" error naming `mcpctl auth login --server NAME`. As a request
 *           (a logout) the worker answers {} once the token is gone, and
 *           the keeper answers the logout only then.
 *   token.invalid (worker -> keeper, request) {"access_token": the one that
 *           got a 401, or with "scope" a 403 insufficient_scope whose
 *           challenge named that scope (step-up), "scope_union": bool (the
 *           client speaks a revision that wants the current scope kept)}:
 *           the result is {"access_token", "token_type",
 *           "expires_at"} once a current token exists (after a refresh when
 *           the rejected one was current; after a new login for a step-up,
 *           or for a 401 whose resource metadata names another
 *           authorization server: see daemon/reauth.c), or an error (kind
 *           "login_required": a new login is needed and the keeper does not
 *           open it itself; the message names `mcpctl auth login`; kind
 *           "unavailable": no login; kind "busy": the server's last token
 *           request is less than refresh.min_interval old, so none is made
 *           now: the answer comes at once, and the refresh that follows the
 *           interval arrives as token.update).
 *   client.closed (worker -> keeper, notification) {"clients": N}: how many
 *           clients remain, for the idle timeout.
 *   upstream.needs_login (worker -> keeper, notification) {}: an upstream
 *           configured with "oauth": false answered 401 with a Bearer
 *           challenge; status can say that it needs a login.
 */
#define CLIENT_F_STDIO 0x01
/* A login ends after this long unless its caller gives another time; a
 * worker's call that waits for a login the keeper opened (step-up) waits
 * at most that and a grace. */
#define LOGIN_DEFAULT_TIMEOUT_SEC 120
#define LOGIN_WAIT_MAX_SEC (LOGIN_DEFAULT_TIMEOUT_SEC + 15)
/* The descriptors a child starts with (besides 0-2). */
#define CHILD_FD_CHANNEL 3	/* the JSON-RPC channel to the keeper */
#define CHILD_FD_DESCRIPTORS 4	/* workers and the http child: descriptors */
#define CHILD_FD_JAIL 5		/* stdio workers: their sandbox (common/jail-view.h) */
#define CHILD_FD_LISTEN 5	/* the http child: the HTTP listening socket (common/listen.h) */
#define METHOD_HELLO "hello"
#define METHOD_CLIENT_CLOSED "client.closed"
#define METHOD_TOKEN_UPDATE "token.update"
#define METHOD_TOKEN_CLEAR "token.clear"
#define METHOD_TOKEN_INVALID "token.invalid"
#define METHOD_UPSTREAM_NEEDS_LOGIN "upstream.needs_login"
#define METHOD_OAUTH_REFRESH "oauth.refresh"
#define METHOD_OAUTH_LISTEN "oauth.listen"
#define METHOD_OAUTH_DISCOVER "oauth.discover"
#define METHOD_OAUTH_REGISTER "oauth.register"
#define METHOD_OAUTH_AUTHORIZE "oauth.authorize"
#define METHOD_OAUTH_LOGIN_URL "oauth.login_url"
#define METHOD_OAUTH_CANCEL "oauth.cancel"
#define METHOD_OAUTH_REVOKE "oauth.revoke"
#define METHOD_CONTROL_CONNECT "control.connect"

/*
 * Parameter and result keys of the channels above (control socket and
 * keeper<->child), named once. JSON-RPC's own members (jsonrpc, id, method,
 * params, result, error, code) and the fields of outside protocols (OAuth
 * and MCP bodies) are not channel keys.
 */
#define PARAM_KEY_SERVER "server"
#define PARAM_KEY_TIMEOUT "timeout"
#define PARAM_KEY_WAIT "wait"
#define PARAM_KEY_ALL "all"
#define PARAM_KEY_STDIO "stdio"
#define PARAM_KEY_URL "url"
#define PARAM_KEY_CLEAN "clean"
#define PARAM_KEY_REASON "reason"
#define PARAM_KEY_VERSION "version"
#define PARAM_KEY_CLIENT "client"
#define PARAM_KEY_ROLE "role"
#define PARAM_KEY_NAME "name"
#define PARAM_KEY_LOG_LEVEL "log_level"
#define PARAM_KEY_PID "pid"
#define PARAM_KEY_LANDLOCK "landlock"
#define PARAM_KEY_SANDBOX "sandbox"
#define PARAM_KEY_TOKEN_ENDPOINT "token_endpoint"
#define PARAM_KEY_REFRESH_TOKEN "refresh_token"
#define PARAM_KEY_CLIENT_ID "client_id"
#define PARAM_KEY_CLIENT_SECRET "client_secret"
#define PARAM_KEY_AUTH_METHOD "auth_method"
#define PARAM_KEY_RESOURCE "resource"
#define PARAM_KEY_SCOPE "scope"
#define PARAM_KEY_SCOPE_UNION "scope_union"
#define PARAM_KEY_LOGIN_REQUIRED "login_required"
#define PARAM_KEY_TIMEOUT_MS "timeout_ms"
#define PARAM_KEY_ACCESS_TOKEN "access_token"
#define PARAM_KEY_TOKEN_TYPE "token_type"
#define PARAM_KEY_EXPIRES_IN "expires_in"
#define PARAM_KEY_HTTP_STATUS "http_status"
#define PARAM_KEY_KIND "kind"
#define PARAM_KEY_OAUTH_ERROR "oauth_error"
#define PARAM_KEY_PORT "port"
#define PARAM_KEY_PROTOCOL "protocol"
#define PARAM_KEY_HEADERS "headers"
#define PARAM_KEY_ISSUER "issuer"
#define PARAM_KEY_AUTHORIZATION_ENDPOINT "authorization_endpoint"
#define PARAM_KEY_REGISTRATION_ENDPOINT "registration_endpoint"
#define PARAM_KEY_REVOCATION_ENDPOINT "revocation_endpoint"
#define PARAM_KEY_ISS_SUPPORTED "iss_supported"
#define PARAM_KEY_TOKEN_ENDPOINT_AUTH_METHODS "token_endpoint_auth_methods"
#define PARAM_KEY_SERVER_ADDRESS "server_address"
#define PARAM_KEY_ALLOW_PRIVATE_ENDPOINTS "allow_private_endpoints"
#define PARAM_KEY_ALLOW_INSECURE_HTTP "allow_insecure_http"
#define PARAM_KEY_INSECURE_HTTP "insecure_http"
#define PARAM_KEY_REDIRECT_URI "redirect_uri"
#define PARAM_KEY_CLIENT_SECRET_EXPIRES_AT "client_secret_expires_at"
#define PARAM_KEY_TOKEN "token"
#define PARAM_KEY_TOKEN_TYPE_HINT "token_type_hint"
#define PARAM_KEY_LISTEN "listen"
#define PARAM_KEY_API_KEY "api_key"
#define PARAM_KEY_UI_DIR "ui_dir"
#define PARAM_KEY_MANAGEMENT "management"
#define PARAM_KEY_MAX_CONNECTIONS "max_connections"
#define PARAM_KEY_HEADER_TIMEOUT_MS "header_timeout_ms"
#define PARAM_KEY_NUMBER "number"
#define PARAM_KEY_TRANSPORT "transport"
#define PARAM_KEY_COMMAND "command"
#define PARAM_KEY_ARGS "args"
#define PARAM_KEY_ENV "env"
#define PARAM_KEY_REQUEST_TIMEOUT_MS "request_timeout_ms"
#define PARAM_KEY_OAUTH "oauth"
#define PARAM_KEY_EXPIRES_AT "expires_at"
#define PARAM_KEY_CLIENTS "clients"
#define PARAM_KEY_TYPE "type"
#define PARAM_KEY_DATA "data"
#define PARAM_KEY_TIMESTAMP "timestamp"
#define PARAM_KEY_SERVER_NAME "server_name"
#define PARAM_KEY_ERROR "error"
#define PARAM_KEY_RESULTS "results"
#define PARAM_KEY_LOGGED_OUT "logged_out"
#define PARAM_KEY_HAD_TOKEN "had_token"
#define PARAM_KEY_REVOKED "revoked"
#define PARAM_KEY_REVOKE_ERROR "revoke_error"
#define PARAM_KEY_REVOCATION "revocation"
#define PARAM_KEY_ORPHANED "orphaned"
#define PARAM_KEY_MESSAGE "message"
#define PARAM_KEY_SERVERS "servers"
#define PARAM_KEY_OFFSET "offset"
#define PARAM_KEY_LIMIT "limit"
#define PARAM_KEY_TOTAL "total"
#define PARAM_KEY_NEXT_OFFSET "next_offset"
#define PARAM_KEY_SUBSCRIBED "subscribed"
#define PARAM_KEY_KEEPER "keeper"
#define PARAM_KEY_ORPHANED_TOKENS "orphaned_tokens"
#define PARAM_KEY_WEB_UI "web_ui"
/* replication.status and status's "replication" (daemon/group.c) */
#define METHOD_REPLICATION_STATUS "replication.status"
/* key.rotate {} -> {"records"}: a group's master re-seals every record with
 * the next key every site installed (master.key.next); see daemon/group.c. */
#define METHOD_KEY_ROTATE "key.rotate"
#define PARAM_KEY_RECORDS "records"
#define PARAM_KEY_REPLICATION "replication"
#define PARAM_KEY_PREVIOUS_ROLE "previous_role"
#define PARAM_KEY_MASTER "master"
#define PARAM_KEY_GENERATION "generation"
#define PARAM_KEY_SITE "site"
#define PARAM_KEY_SITES "sites"
#define PARAM_KEY_READY "ready"
#define PARAM_KEY_CAUGHT_UP "caught_up"
#define PARAM_KEY_ELECTIONS "elections"
#define PARAM_KEY_MASTER_CHANGES "master_changes"
#define PARAM_KEY_LOG_POSITION "log_position"
#define PARAM_KEY_LOG_QUEUED "log_queued"
#define PARAM_KEY_QUORUM_MISSED "quorum_missed"
#define PARAM_KEY_CONNECTED "connected"
#define PARAM_KEY_MAJORITY "majority"
#define PARAM_KEY_LEASE "lease"
#define PARAM_KEY_LEASE_TIMEOUT_MS "lease_timeout_ms"
#define KIND_NOT_MASTER "not_master"
/* status: a group site's server entry against the master's: "same",
 * "differs" or "unknown" (the master published none) */
#define PARAM_KEY_GROUP_CONFIG "group_config"
#define PARAM_KEY_SERVERS_DIFFERING "servers_differing"
#define PARAM_KEY_MODE "mode"
#define PARAM_KEY_HTTP "http"
#define PARAM_KEY_STATE "state"
#define PARAM_KEY_OAUTH_STATUS "oauth_status"
#define PARAM_KEY_TOKEN_EXPIRES_AT "token_expires_at"
/* Times (common/timefmt.h): RFC 3339 UTC with milliseconds under the key,
 * whole seconds since the epoch under the same key + "_unix". */
#define PARAM_KEY_TOKEN_EXPIRES_AT_UNIX "token_expires_at_unix"
#define PARAM_KEY_TOKEN_OBTAINED_AT "token_obtained_at"
#define PARAM_KEY_TOKEN_OBTAINED_AT_UNIX "token_obtained_at_unix"
#define PARAM_KEY_EXPIRES_AT_UNIX "expires_at_unix"
#define PARAM_KEY_OBTAINED_AT "obtained_at"
#define PARAM_KEY_OBTAINED_AT_UNIX "obtained_at_unix"
#define PARAM_KEY_NEXT_REFRESH_AT "next_refresh_at"
#define PARAM_KEY_NEXT_REFRESH_AT_UNIX "next_refresh_at_unix"
#define PARAM_KEY_NEXT_AT_UNIX "next_at_unix"
#define PARAM_KEY_TIMESTAMP_UNIX "timestamp_unix"
#define PARAM_KEY_REFRESH "refresh"
#define PARAM_KEY_RETRY_COUNT "retry_count"
#define PARAM_KEY_NEXT_AT "next_at"
#define PARAM_KEY_LAST_ERROR "last_error"
#define PARAM_KEY_LOGIN_IN_PROGRESS "login_in_progress"
#define PARAM_KEY_WORKER "worker"
#define PARAM_KEY_ENABLED "enabled"
#define PARAM_KEY_NEEDS_LOGIN "needs_login"
#define PARAM_KEY_CONFIG "config"
#define PARAM_KEY_RESTARTS "restarts"
#define PARAM_KEY_LAST_EXIT "last_exit"
#define PARAM_KEY_KEY "key"
#define PARAM_KEY_SET "set"
#define PARAM_KEY_PREVIOUS "previous"
#define PARAM_KEY_SOURCE "source"
#define PARAM_KEY_RETRY_AFTER "retry_after"

/* Control connections the http child may hold at once (control.connect). */
#define API_CONTROL_CONNS_MAX 64

/* error.data.reason of login steps: what went wrong, for tests and UIs. */
#define LOGIN_R_NETWORK "network"	/* no answer, timeout, TLS */
#define LOGIN_R_DISCOVERY "discovery"	/* metadata missing or malformed */
#define LOGIN_R_ISSUER "issuer_mismatch"
#define LOGIN_R_PKCE "pkce"		/* no S256 */
#define LOGIN_R_REGISTRATION "registration"
#define LOGIN_R_LISTEN "listen"		/* redirect port unavailable */
#define LOGIN_R_DENIED "denied"		/* the authorization server answered error= */
#define LOGIN_R_ISS "iss_mismatch"
#define LOGIN_R_EXCHANGE "exchange"	/* the token endpoint refused the code */
#define LOGIN_R_TIMEOUT "timeout"
#define LOGIN_R_CANCELLED "cancelled"
#define LOGIN_R_REVOKE "revoke"
/* A token response whose access or refresh token is over PROTO_MAX_TOKEN
 * (also in oauth.refresh errors). */
#define LOGIN_R_TOKEN_TOO_LARGE "token_too_large"

#define ROLE_OAUTH "oauth"
#define ROLE_HTTP "http"
#define ROLE_WORKER "worker"

/*
 * Event types: the same payload on the control socket and over SSE. The
 * control socket's notification is event {type, data, timestamp: RFC 3339
 * UTC with milliseconds, timestamp_unix: seconds}; /events sends each as
 * "event: TYPE" with data {"payload": data, "timestamp": Unix seconds}.
 *   oauth.token_refreshed {server_name, obtained_at: when the keeper got the
 *     token response, expires_at, next_refresh_at: the refresh it scheduled
 *     (null when none), each with its *_unix, scope: the scope the token
 *     was granted (null when unknown)}
 *   oauth.refresh_failed {server_name, error}
 *   servers.changed {reason, server, ...}
 */
#define EVENT_TOKEN_REFRESHED "oauth.token_refreshed"
#define EVENT_REFRESH_FAILED "oauth.refresh_failed"
#define EVENT_SERVERS_CHANGED "servers.changed"
/* {"server_name", "reason": REAUTH_R_*, "scope": the scope the new login
 * asks for, or null}: an upstream wants a grant the stored token is not. */
#define EVENT_LOGIN_REQUIRED "oauth.login_required"
#define REAUTH_R_SCOPE "insufficient_scope"
#define REAUTH_R_ISSUER "authorization_server_changed"
/* {"server_name", "oauth_status"}: the keeper died with that refresh in flight, so the
 * provider may have rotated a refresh token it never stored; it does not
 * present the old one again (unless refresh.retry_after_crash): login
 * needed. Sent when the keeper finds the interrupted refresh at start
 * (oauth_status "authenticated" while the access token lives) and again
 * when that access token expires (oauth_status "expired"). */
#define EVENT_REFRESH_INTERRUPTED "oauth.refresh_interrupted"
#define REFRESH_INTERRUPTED_MESSAGE "refresh interrupted by a crash: log in again"
/* {"role": "master" | "replica" | "none", "previous_role", "master":
 * "HOST:PORT" or null, "generation"}: this site's place in its replication
 * group changed (daemon/group.c). */
#define EVENT_REPLICATION_MASTER_CHANGED "replication.master_changed"

/* JSON-RPC 2.0 error codes. */
#define RPC_PARSE_ERROR -32700
#define RPC_INVALID_REQUEST -32600
#define RPC_METHOD_NOT_FOUND -32601
#define RPC_INVALID_PARAMS -32602
#define RPC_INTERNAL_ERROR -32603
/* Application errors; error.data.kind tells which. */
#define RPC_APP_ERROR -32000

/* Stable error kinds, in error.data.kind. */
#define KIND_NOT_FOUND "not_found"
#define KIND_NOT_OAUTH "not_oauth"
#define KIND_FORBIDDEN "forbidden"
#define KIND_INVALID_PARAMS "invalid_params"
#define KIND_BUSY "busy"
#define KIND_UNAVAILABLE "unavailable"
/* auth.login: the provider refused, or the login was not safe to finish. */
#define KIND_LOGIN_FAILED "login_failed"
/* token.invalid: the upstream wants a new login (step-up, migration). */
#define KIND_LOGIN_REQUIRED "login_required"
/* servers.add: the name is taken; servers.*: the file changed under us;
 * reload: the file does not load. */
#define KIND_EXISTS "exists"
#define KIND_CONFLICT "conflict"
#define KIND_INVALID_CONFIG "invalid_config"
/* hello: the peer speaks another protocol version. */
#define KIND_VERSION_MISMATCH "version_mismatch"
/* Framing-level kinds: the message never reached a method. */
#define KIND_PARSE_ERROR "parse_error"
#define KIND_TOO_LARGE "too_large"
#define KIND_INVALID_REQUEST "invalid_request"
#define KIND_UNKNOWN_METHOD "unknown_method"
#define KIND_INTERNAL "internal"
/* oauth.refresh failures: retry later, or give up until the next login. */
#define KIND_TRANSIENT "transient"
#define KIND_TERMINAL "terminal"

/* Child processes (libexec). */
#define CHILD_OAUTH_BIN "mcpkeeper-oauth"
#define CHILD_WORKER_BIN "mcpkeeper-worker"
#define CHILD_HTTP_BIN "mcpkeeper-http"
