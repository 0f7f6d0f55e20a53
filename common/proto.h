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

/* Control socket methods (mcpctl and other local clients -> keeper). */
#define METHOD_STATUS "status"
#define METHOD_SERVERS_LIST "servers.list"
#define METHOD_AUTH_LOGIN "auth.login"
#define METHOD_AUTH_LOGOUT "auth.logout"
#define METHOD_AUTH_STATUS "auth.status"
#define METHOD_EVENTS_SUBSCRIBE "events.subscribe"
#define METHOD_CONNECT "connect"

/* Notifications from the keeper to a subscribed control client. */
#define METHOD_EVENT "event"

/*
 * Keeper <-> child channel (fd 3).
 *
 * hello (keeper -> child, request), the first message on the channel:
 *   params {"version": PROTO_VERSION, "role": "oauth"|"http"|"worker",
 *           "name": upstream name (workers), "log_level": "info"|"debug"|...}
 *   result {"version": PROTO_VERSION, "pid": N,
 *           "landlock": "enforced"|"unavailable"}
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
 *                "http_status": N (when there was a response)}
 *
 * Workers (one per upstream; the keeper -> worker hello carries the upstream
 * as the keeper assigns it, never as the worker would claim it):
 *   hello params add {"name": NAME, "transport": {"protocol":
 *           "streamable-http"|"sse"|"stdio", "url", "headers": {..},
 *           "command", "args": [..], "env": {..}, "request_timeout_ms",
 *           "oauth": bool}}
 *   fd 4 of a worker is a SOCK_SEQPACKET socket that carries nothing but
 *   client descriptors: each packet is the 8-byte little-endian client
 *   number with one descriptor attached (SCM_RIGHTS). The client on it has
 *   already had its `connect` reply from the keeper; its next bytes are MCP.
 *   token.update (keeper -> worker, notification):
 *           {"access_token", "token_type", "expires_at"}: use from now on.
 *   token.clear (keeper -> worker, notification) {}: logged out; end the
 *           upstream sessions, answer calls with a "not logged in" error
 *           naming `mcpctl auth login --server NAME`.
 *   token.invalid (worker -> keeper, request) {"access_token": the one that
 *           got a 401}: the result is {"access_token", "token_type",
 *           "expires_at"} once a current token exists (after a refresh when
 *           the rejected one was current), or an error (kind
 *           "unavailable": no login).
 *   client.closed (worker -> keeper, notification) {"clients": N}: how many
 *           clients remain, for the idle timeout.
 *   upstream.needs_login (worker -> keeper, notification) {}: an upstream
 *           configured with "oauth": false answered 401 with a Bearer
 *           challenge; status can say that it needs a login.
 */
#define METHOD_HELLO "hello"
#define METHOD_CLIENT_CLOSED "client.closed"
#define METHOD_TOKEN_UPDATE "token.update"
#define METHOD_TOKEN_CLEAR "token.clear"
#define METHOD_TOKEN_INVALID "token.invalid"
#define METHOD_UPSTREAM_NEEDS_LOGIN "upstream.needs_login"
#define METHOD_OAUTH_REFRESH "oauth.refresh"

#define ROLE_OAUTH "oauth"
#define ROLE_HTTP "http"
#define ROLE_WORKER "worker"

/* Event types: the same payload on the control socket and over SSE. */
#define EVENT_TOKEN_REFRESHED "oauth.token_refreshed"
#define EVENT_REFRESH_FAILED "oauth.refresh_failed"
#define EVENT_SERVERS_CHANGED "servers.changed"

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
