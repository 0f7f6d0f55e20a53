/*
 * mcpkeeper-test-peer: the upstream that mcpkeeper's tests and benchmarks run
 * against. One process, one libevent loop, no threads: an OAuth 2.1
 * authorization server (discovery, dynamic registration, authorization code
 * with PKCE, refresh with rotation and reuse detection, revocation) and an MCP
 * server on streamable HTTP that trusts only the access tokens it issued.
 *
 * It is a test tool, not a product: tokens are random strings held in plain
 * heap memory, state lives only in memory, and running out of memory ends the
 * process. What it must get right is the protocol behaviour the keeper relies
 * on, and it must never block its loop, so that it can take a thousand
 * concurrent refreshes and still report how many it saw at once.
 *
 * Listens on 127.0.0.1 only, so the /test/ endpoints are reachable only from
 * this host. Prints "PORT <n>" on stdout once listening, and with --port-file
 * writes "PORT <n>\nPID <pid>\n" there (atomically, by rename).
 *
 * Endpoints:
 *   GET  /.well-known/oauth-protected-resource[/mcp]   RFC 9728
 *   GET  /.well-known/oauth-authorization-server       RFC 8414
 *   GET  /.well-known/openid-configuration             the same document
 *                     (with issuer_path /P: .../oauth-authorization-server/P,
 *                     .../openid-configuration/P and /P/.well-known/openid-
 *                     configuration instead; the root URLs then 404)
 *   POST /register    RFC 7591; default token_endpoint_auth_method is
 *                     client_secret_basic, as the RFC says
 *   GET  /authorize   auto-approves: 302 to redirect_uri with code, state, iss
 *   POST /token       authorization_code and refresh_token grants
 *   POST /revoke      RFC 7009; a refresh token revokes its whole family
 *   POST|DELETE /mcp  MCP, streamable HTTP
 *   GET  /mcp         with Accept: text/event-stream, a token and a session:
 *                     the session's long-lived SSE stream for server-initiated
 *                     messages (405 when Accept lacks text/event-stream)
 *   GET  /sse         the HTTP+SSE transport (2024-11-05): an event stream
 *                     whose first event is "endpoint" with data
 *                     /messages?session_id=ID; the stream is the session
 *   POST /messages?session_id=ID   a JSON-RPC message for that session:
 *                     202, and a request's response arrives on the stream as
 *                     an "event: message"
 *   GET  /.well-known/oauth-protected-resource/sse   RFC 9728 for /sse
 *   POST /test/fail   {"mode": "500"|"429"|"hang"|"malformed"|"invalid_grant"
 *                      |"429_bare"|"trickle"|"huge"|"wrong_types"
 *                      |"invalid_client", "count": N} queues failures for
 *                     the next token requests: "429" carries Retry-After
 *                     (retry_after), "429_bare" none; "trickle" a 200 whose
 *                     body ("{" then 16 spaces every 100 ms) never ends;
 *                     "huge" a 200 of 10 MiB; "wrong_types" a 200 whose
 *                     access_token and refresh_token are numbers and
 *                     expires_in an object; "invalid_client" a 401
 *   GET  /test/stats  counters; POST /test/reset zeroes them, drops queued
 *                     failures and forgets recorded responses and /test/last
 *                     (it leaves the configuration alone)
 *   POST /test/config  changes any of the settings below (all or nothing: a
 *                     bad value is a 400 naming it, and nothing changes);
 *                     answers with all of them, as GET /test/config does.
 *                     Discovery documents change on the next request.
 *       token_lifetime, grace, rotate, require_resource, hang_seconds, sse:
 *                     as the command-line options
 *       expires_in (null)  an integer: what token responses say as
 *                     expires_in (any value, 0, negative and huge ones
 *                     included) instead of token_lifetime, which still
 *                     decides when the token stops working
 *       access_token_bytes, refresh_token_bytes (0)  the length of the
 *                     tokens issued from now on (16 .. 1000000; 0: the
 *                     usual 43 characters), base64url characters
 *       reject_mcp (false)  /mcp, /sse and /messages answer every request
 *                     401, whatever token it carries
 *       refresh_delay_ms (0)  a successful refresh rotates at arrival, as
 *                     always, and its answer is held this long (0 .. 600000)
 *                     before it goes out: a client killed meanwhile never
 *                     learns the new refresh token
 *       s256 (true)   false: code_challenge_methods_supported is ["plain"]
 *                     (/authorize still requires S256)
 *       iss (true)    false: no authorization_response_iss_parameter_supported
 *                     and no iss on /authorize redirects
 *       wrong_iss (false)  redirects carry iss=https://evil.example (even
 *                     with iss false)
 *       authorize_error (null)  a string: /authorize, once client and
 *                     redirect_uri check out, redirects with that error, an
 *                     error_description, state and iss, and issues no code
 *       challenge_scope (null)  scope="..." in the 401 challenges of /mcp,
 *                     /sse and /messages; its scopes join scopes_supported
 *       challenge_metadata (true)  false: no resource_metadata in them
 *       prm_paths ("both")  "path": only .../oauth-protected-resource/mcp
 *                     and /sse; "root": only .../oauth-protected-resource
 *                     (the /mcp document); the others 404
 *       issuer_path ("")   "/seg[/seg]": the issuer is origin + path (in the
 *                     resource metadata, the AS metadata and iss); endpoints
 *                     stay at the root
 *       as_metadata ("both")  "oauth" or "openid": only that document
 *       metadata_issuer (null)  the issuer the AS metadata claims instead
 *       registration (true)  false: no registration_endpoint, /register 404
 *       revocation (true)  false: no revocation_endpoint (/revoke still works)
 *       revoke_fail (false)  /revoke answers 503 temporarily_unavailable
 *       auth_methods (["none", "client_secret_basic", "client_secret_post"])
 *                     token_endpoint_auth_methods_supported; /register
 *                     refuses any other method, and one the peer does not
 *                     implement
 *       tool_scope (null)  a scope string: a tools/call on /mcp whose
 *                     access token was not granted every scope in it is
 *                     answered 403 with WWW-Authenticate: Bearer
 *                     error="insufficient_scope", scope="<tool_scope>",
 *                     resource_metadata="<the /mcp resource metadata>" and a
 *                     JSON-RPC error body (step-up). Other methods need only a
 *                     valid token. Its scopes do not join scopes_supported: a
 *                     client learns them from the challenge only
 *       grantable_scopes (null)  a list of scope tokens: /authorize grants
 *                     only those of the requested scopes (what the token
 *                     response says); none left: it redirects with
 *                     invalid_scope and issues no code
 *       retry_after (1)  the Retry-After (seconds) of injected 429s
 *       expires_in_json (null)  a JSON text: token responses carry it as
 *                     expires_in ("\"3600\"", "{}" ...); "": no expires_in
 *       omit_refresh_token (false)  refresh answers carry no refresh_token
 *                     and rotate nothing: the presented one stays valid
 *       refresh_scope (null)  a scope string: refresh answers grant and say
 *                     it (a provider that changes the scope on refresh)
 *       issuer_bound (false)  true: the authorization servers are apart.
 *                     Every issuer that was in effect (issuer_path values,
 *                     the first 16) keeps its metadata document and its
 *                     endpoints under its path (ISSUER/authorize, /token,
 *                     /register, /revoke; the AS metadata names those);
 *                     /mcp, /sse and /messages accept only access tokens of
 *                     the issuer in effect now (others: 401 with the usual
 *                     challenge); a client_id registered under one issuer
 *                     (the --client-id client: the issuer at start) is
 *                     refused as invalid_client at another's /authorize,
 *                     /token and /revoke and counted as foreign_client_id
 *   GET  /test/last   what the last request of each kind asked for, never a
 *                     secret: {"authorize", "token", "register", "revoke":
 *                     a record or null, "discovery": [{"path", "status"}]}.
 *                     Each record has "status" and "outcome" ("ok" or the
 *                     OAuth error; "error_description" with an error).
 *                     authorize: client_id, redirect_uri, response_type,
 *                     scope, resource, code_challenge_method (strings or
 *                     null), state (present?), code_challenge_length.
 *                     token: grant_type, client_id, auth_method, resource,
 *                     redirect_uri, scope, pkce_ok (null until a code's PKCE
 *                     check ran), injected (the failure mode, when one
 *                     answered). register: the metadata document received
 *                     (minus any client_secret; {} when it was no JSON
 *                     object) with auth_method, the method granted, on 201.
 *                     revoke: token_type_hint, client_id, auth_method, known
 *                     (a token the peer still holds). discovery: every GET
 *                     of a path holding "/.well-known/" since the reset, in
 *                     order, 404s too (the first 1000).
 *                     authorize_scopes: the scope parameter of every
 *                     /authorize request since the reset, in order (null
 *                     when it had none; the first 1000). grants: every
 *                     grant (token family) issued since start, reset or not:
 *                     {"grant": N (1, 2, ... in order of issue), "client_id",
 *                     "issuer", "scope", "revoked"}. revocations: every
 *                     /revoke since the reset that named a token the peer
 *                     holds: {"grant", "token_type" ("access_token" or
 *                     "refresh_token", what it was, not the hint),
 *                     "issuer" (whose endpoint), "client_id", "revoked"
 *                     (false: the token was another client's)}.
 *                     token_requests: every POST /token since the reset
 *                     (the first 10000), in order, as {"at_ms": the wall
 *                     clock (CLOCK_REALTIME, ms since the epoch) when the
 *                     request reached the peer, "grant_type": string or
 *                     null}, failures injected by /test/fail included: what
 *                     a timing test compares the keeper's schedule with
 *   POST /test/notify  {"session": ID | "*", "method": M, "params": {...}}
 *                     sends a notification on the session's stream (GET /mcp
 *                     or /sse); answers {"delivered": N}, 404 when the named
 *                     session has no open stream
 *   POST /test/request {"session": ID | "*", "method": M, "params": {...},
 *                     "id": optional}: a server-initiated request with a fresh
 *                     integer id (or the given one); answers {"delivered": N,
 *                     "ids": [...]}
 *   GET  /test/responses  the responses clients sent back so far, in order:
 *                     [{"session": ID, "method": M or null, "response": MSG}]
 *   POST /test/revoke-all         revokes every access and refresh token
 *                     issued so far (a provider-side "all sessions revoked")
 *   POST /test/revoke-access-all  revokes every access token issued so far;
 *                     refresh tokens stay valid, so clients recover by refresh
 *
 * Choices a test may rely on:
 * - A dynamically registered confidential client must authenticate the way it
 *   registered (basic or post); the --client-id client may use either.
 * - Rotation: every successful refresh issues a new refresh token and retires
 *   the presented one. Presenting a retired one is reuse: invalid_grant, and
 *   the whole family (every access and refresh token from that login) is
 *   revoked, and counted in /test/stats as reused_refresh_tokens (refresh
 *   tokens presented twice). That is strict rotation, the default (--grace
 *   0): a refresh token works exactly once. With --grace N, the refresh token retired most recently is
 *   accepted once within N seconds of its retirement; that exchange is treated
 *   as a refresh of the family's current token: a fresh access token and a
 *   fresh refresh token, the current one being retired in turn. The keeper
 *   losing a rotated token in a crash thus recovers with a usable pair.
 * - Injected failures apply at arrival, in the order queued, to any POST
 *   /token whose form parses; they consume no code and rotate nothing.
 *   "hang" answers 503 after --hang-seconds; a client normally gives up first.
 * - /mcp requires Mcp-Session-Id after initialize (400 without, 404 unknown);
 *   sessions are not bound to a token, so a refresh mid-session keeps working.
 * - mcp_requests counts every request on /mcp, authorized or not;
 *   sse_requests every request on /sse and /messages. unauthorized counts
 *   the 401s of all three.
 * - Streams (GET /mcp and GET /sse) are authorized when they open and are not
 *   bound to a token afterwards: they survive refresh, expiry and revocation
 *   of the token that opened them. They end (cleanly, with the last chunk) on
 *   DELETE of their session (GET /mcp streams), at shutdown, or when the
 *   client goes; an HTTP+SSE session ends with its stream. A session may hold
 *   several GET streams; each message goes on one of them, the newest, as the
 *   MCP spec asks. get_streams and sse_streams in /test/stats count the open
 *   ones (facts, like in_flight: /test/reset leaves them).
 * - A message for a client (a notification, a request, or an HTTP+SSE
 *   response) goes out as "event: message" with the JSON on one data line.
 *   Events carry no ids: there is no resumption (Last-Event-ID is ignored).
 * - A response a client POSTs (to /mcp or /messages) is answered 202 and
 *   recorded, with the method of the server request whose id and session it
 *   matches (null when it matches none).
 * - Tokens for resource .../mcp and .../sse are accepted on /mcp, /sse and
 *   /messages alike; the resource only has to be one of the two.
 * - /authorize grants any scope as asked ("mcp" when none; grantable_scopes
 *   narrows it); a refresh may ask for a subset of it. Every access token
 *   remembers the scope granted with it (a narrowed refresh: the narrower
 *   one) and the issuer whose token endpoint issued it; every client the
 *   issuer it registered at. token_grants counts successful code exchanges,
 *   code_requests every authorization_code request, authorizations every
 *   code /authorize issued.
 * - The 401 challenge names the resource metadata of the endpoint: the root
 *   document for /mcp and .../sse for /sse and /messages, unless prm_paths
 *   serves only the other kind, then that one.
 * - The --client-id client may authenticate either way whatever
 *   auth_methods says; auth_methods binds dynamic registration only.
 * - revoke_fail answers after client authentication: a client that fails
 *   it still gets 401.
 * - insufficient_scope in /test/stats counts the 403s of tool_scope;
 *   foreign_client_id the client_ids refused at another issuer.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <sodium.h>

#include "frame.h"
#include "log.h"
#include "proto.h"
#include "timefmt.h"
#include "util.h"

#define PEER_NAME "mcpkeeper-test-peer"
#define PEER_MAX_BODY (1024 * 1024)
#define PEER_MAX_HEADERS (64 * 1024)
#define PEER_CONN_TIMEOUT_S 300
#define CODE_LIFETIME_MS 60000
#define SWEEP_INTERVAL_S 10
#define MAX_FORM_PARAMS 32
#define SLOW_MAX_MS 600000
#define LIMIT_SECONDS 10000000L
#define DEFAULT_SCOPE "mcp"
/* Longest string a /test/config knob takes. */
#define KNOB_MAX 256
#define AUTH_METHODS_MAX 8
/* /test/last keeps the first this many discovery requests after a reset. */
#define DISCOVERY_LOG_MAX 1000
/* issuer_bound: how many issuers (issuer_path values) keep their endpoints. */
#define ISSUERS_MAX 16
/* grantable_scopes: at most this many scope tokens. */
#define GRANTABLE_MAX 16
/* ... and the first this many token requests. */
#define TOKEN_LOG_MAX 10000
/* The iss of a redirect with wrong_iss set: an issuer that is not this one. */
#define WRONG_ISS "https://evil.example"
#define PRM_PATH "/.well-known/oauth-protected-resource"
#define AS_OAUTH_PATH "/.well-known/oauth-authorization-server"
#define AS_OPENID_PATH "/.well-known/openid-configuration"
/* An open stream is idle by design: its connection may stay quiet this long. */
#define STREAM_TIMEOUT_S 86400
/* At shutdown, time for the last chunk of every open stream to go out. */
#define SHUTDOWN_FLUSH_MS 200
#define SESSION_CHARS (2 * 16 + 1)
/* 32 random bytes in base64url without padding: 43 characters and a NUL. */
#define TOKEN_CHARS sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_URLSAFE_NO_PADDING)
/* access_token_bytes and refresh_token_bytes: tokens long enough to be
 * unguessable, short enough for one response body. */
#define TOKEN_BYTES_MIN 16
#define TOKEN_BYTES_MAX 1000000

/* The first is the answer to a version it does not know; 2026-07-28 is known
 * so that a worker can be seen sending what that revision asks for. */
static const char *const mcp_versions[] = { "2025-06-18", "2025-03-26", "2024-11-05", "2026-07-28" };

/* ---- state ---------------------------------------------------------- */

/* A string-keyed hash table (chained, SipHash via libsodium). The key is
 * borrowed from the value, which must outlive its entry. */
struct tentry {
	struct tentry *next;
	const char *key;
	void *val;
};

struct table {
	struct tentry **buckets;
	size_t nbuckets;
	size_t count;
	void (*free_val)(void *val);
	unsigned char hkey[crypto_shorthash_KEYBYTES];
};

enum auth_method {
	AUTH_NONE,		/* public client */
	AUTH_BASIC,
	AUTH_POST,
	AUTH_ANY,		/* --client-id: basic or post */
};

struct client {
	char *id;
	char *secret;			/* NULL for a public client */
	enum auth_method method;
	struct json_object *redirect_uris; /* NULL: any loopback URI */
	char *issuer;			/* where it registered */
};

struct code {
	char code[TOKEN_CHARS];
	char *client_id;
	char *redirect_uri;
	char *challenge;
	char *scope;
	char *resource;			/* NULL when authorize had none */
	int64_t expires_ms;
	char *issuer;			/* whose /authorize issued it */
};

struct rtoken;

/* Everything issued from one authorization code: revoking the family
 * invalidates all its access and refresh tokens. Families live until exit,
 * because retired refresh tokens point at them for reuse detection. */
struct family {
	struct family *next;
	char *client_id;
	char *scope;
	char *resource;
	struct rtoken *current;		/* the refresh token the client should hold */
	int revoked;
	long long id;			/* 1, 2, ... in order of issue */
	char *issuer;			/* whose token endpoint issued it */
};

struct atoken {
	struct family *fam;
	int64_t expires_ms;
	int revoked;
	char *scope;			/* granted with it (a refresh may narrow it) */
	char token[];			/* token_new() */
};

/* Refresh tokens are kept until exit, retired ones too: that is what makes
 * reuse detectable. */
struct rtoken {
	struct family *fam;
	struct rtoken *successor;	/* set when rotated away */
	int64_t rotated_ms;
	int grace_used;
	char token[];			/* token_new() */
};

enum fail_mode {
	FAIL_500,
	FAIL_429,
	FAIL_HANG,
	FAIL_MALFORMED,
	FAIL_INVALID_GRANT,
	FAIL_429_BARE,
	FAIL_TRICKLE,
	FAIL_HUGE,
	FAIL_WRONG_TYPES,
	FAIL_INVALID_CLIENT,
};

static const char *const fail_names[] = {
	[FAIL_500] = "500",
	[FAIL_429] = "429",
	[FAIL_HANG] = "hang",
	[FAIL_MALFORMED] = "malformed",
	[FAIL_INVALID_GRANT] = "invalid_grant",
	[FAIL_429_BARE] = "429_bare",
	[FAIL_TRICKLE] = "trickle",
	[FAIL_HUGE] = "huge",
	[FAIL_WRONG_TYPES] = "wrong_types",
	[FAIL_INVALID_CLIENT] = "invalid_client",
};

struct failure {
	struct failure *next;
	enum fail_mode mode;
	long remaining;
};

/* A request answered later from a timer: a hung token request or a slow
 * tool call. Every pending request is answered exactly once, at the latest
 * at shutdown, because libevent frees a request only after its reply. */
enum pending_kind {
	PENDING_HANG,
	PENDING_SLOW,
	PENDING_EVENT,		/* slow over HTTP+SSE: an event for a session's stream */
	PENDING_TRICKLE,	/* an injected trickle: a 200 whose body never ends */
	PENDING_TOKEN,		/* a refresh's answer held for refresh_delay_ms */
};

struct pending {
	struct pending *next, *prev;
	struct peer *peer;
	struct evhttp_request *req;
	struct event *timer;
	enum pending_kind kind;
	int sse;			/* slow: the SSE stream has been started */
	struct json_object *reply;	/* slow, event: the JSON-RPC response to send;
					 * token: the token response */
	char *session;			/* event: the HTTP+SSE session (req is NULL) */
};

/*
 * A long-lived SSE stream: a GET /mcp stream of a streamable-HTTP session, or
 * the event stream of an HTTP+SSE session (legacy), which is that session.
 * The connection is remembered apart from the request because libevent
 * detaches the request from a connection the client closed.
 */
struct stream {
	TAILQ_ENTRY(stream) link;
	struct peer *peer;
	struct evhttp_request *req;
	struct evhttp_connection *evcon;
	char session[SESSION_CHARS];
	int legacy;
};

TAILQ_HEAD(stream_list, stream);

/* A server-initiated request still waiting for its response. */
struct srv_request {
	struct srv_request *next;
	char session[SESSION_CHARS];
	struct json_object *id;
	char *method;
};

struct stats {
	long long token_grants;
	long long refresh_grants;
	long long refresh_requests;
	long long failures_injected;
	long long reused_refresh_tokens;
	long long unauthorized;
	long long mcp_requests;
	long long in_flight;
	long long max_in_flight;
	long long registrations;
	long long revocations;
	long long sse_requests;
	long long get_streams;		/* open GET /mcp streams (a fact) */
	long long sse_streams;		/* open GET /sse streams (a fact) */
	long long notifications_sent;
	long long requests_sent;
	long long responses_received;
	long long revoke_all;
	long long revoke_access_all;
	long long authorizations;	/* codes issued by /authorize */
	long long code_requests;	/* authorization_code token requests */
	long long insufficient_scope;	/* 403s of tool_scope */
	long long foreign_client_id;	/* client_ids refused at another issuer */
};

/* Which RFC 9728 documents are served: the path-specific ones
 * (.../oauth-protected-resource/mcp and /sse), the root one, or all. */
enum prm_serve {
	PRM_BOTH,
	PRM_PATH_ONLY,
	PRM_ROOT_ONLY,
};

static const char *const prm_serve_names[] = {
	[PRM_BOTH] = "both",
	[PRM_PATH_ONLY] = "path",
	[PRM_ROOT_ONLY] = "root",
};

/* Which authorization server metadata documents are served. */
enum as_serve {
	AS_BOTH,
	AS_OAUTH_ONLY,
	AS_OPENID_ONLY,
};

static const char *const as_serve_names[] = {
	[AS_BOTH] = "both",
	[AS_OAUTH_ONLY] = "oauth",
	[AS_OPENID_ONLY] = "openid",
};

/*
 * How the login looks to a client: the knobs of /test/config that shape
 * discovery, /authorize, /register, /revoke and the 401 challenge. Strings
 * are owned; NULL means unset. /test/reset leaves them alone.
 */
struct login_config {
	int s256;			/* advertise S256 (else only "plain") */
	int iss;			/* RFC 9207: advertise and send iss */
	int wrong_iss;			/* send iss = WRONG_ISS */
	char *authorize_error;		/* /authorize redirects with this error */
	char *challenge_scope;		/* scope="..." in the 401 challenge */
	int challenge_metadata;		/* resource_metadata="..." in it */
	enum prm_serve prm_paths;
	char *issuer_path;		/* "" or "/seg[/seg...]" (never NULL) */
	enum as_serve as_metadata;
	char *metadata_issuer;		/* the issuer the AS documents claim */
	int registration;
	int revocation;			/* advertise the revocation endpoint */
	int revoke_fail;		/* /revoke answers 503 */
	struct json_object *auth_methods; /* token_endpoint_auth_methods_supported */
	char *tool_scope;		/* tools/call needs these scopes */
	struct json_object *grantable_scopes; /* NULL: any */
	int issuer_bound;		/* tokens and clients bound to their issuer */
};

/* What GET /test/last shows: the last request of each kind, without any
 * secret, and the discovery requests since the last reset. */
struct recordings {
	struct json_object *authorize, *token, *registration, *revoke;
	struct json_object *discovery;	/* [{"path", "status"}] */
	struct json_object *authorize_scopes; /* [scope or null] */
	struct json_object *revocations; /* [{"grant", "token_type", ...}] */
	struct json_object *token_requests; /* [{"at_ms", "grant_type"}] */
};

struct peer_options {
	long port;
	const char *port_file;
	long token_lifetime;
	long grace;
	long hang_seconds;
	int rotate;
	int require_resource;
	int sse;
	int verbose;
	const char *client_id;
	const char *client_secret;
	/* /test/config only */
	int has_expires_in;
	int64_t expires_in;
	long access_token_bytes, refresh_token_bytes;	/* 0: TOKEN_CHARS - 1 */
	int reject_mcp;
	long retry_after;		/* the Retry-After of injected 429s */
	int has_expires_in_json;	/* expires_in_json: "" leaves expires_in out */
	char expires_in_json[KNOB_MAX + 1];
	int omit_refresh_token;
	int has_refresh_scope;
	char refresh_scope[KNOB_MAX + 1];
	long refresh_delay_ms;
};

struct peer {
	struct peer_options opt;
	struct event_base *base;
	struct evhttp *http;
	struct event *sigterm, *sigint, *sweep;
	int port;
	char origin[32];		/* http://127.0.0.1:PORT */
	char issuer[sizeof("http://127.0.0.1:65535") + KNOB_MAX]; /* origin + issuer_path */
	char resource[80];
	char resource_sse[80];		/* the HTTP+SSE endpoint, also a resource */
	struct login_config login;
	char *prm_json;			/* RFC 9728 document */
	char *prm_sse_json;		/* the same for /sse */
	char *as_json;			/* RFC 8414 document */
	struct recordings last;
	/* The /test/last record the request being handled fills in (borrowed
	 * from last); its first outcome ends it. NULL between requests. */
	struct json_object *rec;
	struct table clients, codes, atokens, rtokens, sessions;
	struct family *families;
	struct failure *fail_head, *fail_tail;
	struct pending *pending;
	struct stream_list streams;
	struct srv_request *srv_requests;
	struct json_object *responses;	/* what /test/responses shows */
	char *init_version_header;	/* MCP-Protocol-Version of the last initialize, or NULL */
	/* Every issuer_path that was in effect, the first one "" (issuer_bound
	 * keeps their endpoints), and the issuer whose endpoint the request
	 * being handled came to (the issuer in effect unless issuer_bound). */
	char *issuer_paths[ISSUERS_MAX];
	size_t nissuers;
	char req_issuer[sizeof("http://127.0.0.1:65535") + KNOB_MAX];
	long long next_grant;
	int64_t next_request_id;
	int stopping;
	struct stats stats;
};

/* ---- small helpers -------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* nbytes random bytes as base64url without padding into out. */
static void random_b64(char *out, size_t outlen, size_t nbytes)
{
	unsigned char bin[32];

	if (nbytes > sizeof(bin))
		nbytes = sizeof(bin);
	randombytes_buf(bin, nbytes);
	sodium_bin2base64(out, outlen, bin, nbytes, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

static int streq(const char *a, const char *b)
{
	return a && b && strcmp(a, b) == 0;
}

static int str_in_array(struct json_object *arr, const char *s)
{
	size_t n = json_object_array_length(arr);

	for (size_t i = 0; i < n; i++)
		if (streq(json_object_get_string(json_object_array_get_idx(arr, i)), s))
			return 1;
	return 0;
}

static int parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

/* ---- hash table ----------------------------------------------------- */

static void table_init(struct table *t, void (*free_val)(void *))
{
	t->nbuckets = 64;
	t->buckets = xcalloc(1, t->nbuckets * sizeof(*t->buckets));
	t->count = 0;
	t->free_val = free_val;
	crypto_shorthash_keygen(t->hkey);
}

static size_t table_slot(const struct table *t, const char *key, size_t nbuckets)
{
	unsigned char h[crypto_shorthash_BYTES];
	uint64_t v;

	crypto_shorthash(h, (const unsigned char *)key, strlen(key), t->hkey);
	memcpy(&v, h, sizeof(v));
	return (size_t)(v % nbuckets);
}

static struct tentry **table_find(struct table *t, const char *key)
{
	struct tentry **e = &t->buckets[table_slot(t, key, t->nbuckets)];

	while (*e && strcmp((*e)->key, key) != 0)
		e = &(*e)->next;
	return e;
}

static void *table_get(struct table *t, const char *key)
{
	struct tentry *e;

	if (!key)
		return NULL;
	e = *table_find(t, key);
	return e ? e->val : NULL;
}

static void table_put(struct table *t, const char *key, void *val)
{
	struct tentry *e;
	size_t slot;

	if (t->count >= t->nbuckets) {
		size_t n = t->nbuckets * 2;
		struct tentry **b = xcalloc(1, n * sizeof(*b));

		for (size_t i = 0; i < t->nbuckets; i++) {
			while ((e = t->buckets[i])) {
				t->buckets[i] = e->next;
				slot = table_slot(t, e->key, n);
				e->next = b[slot];
				b[slot] = e;
			}
		}
		free(t->buckets);
		t->buckets = b;
		t->nbuckets = n;
	}
	e = xcalloc(1, sizeof(*e));
	e->key = key;
	e->val = val;
	slot = table_slot(t, key, t->nbuckets);
	e->next = t->buckets[slot];
	t->buckets[slot] = e;
	t->count++;
}

/* Removes key's entry and hands its value to the caller. */
static void *table_take(struct table *t, const char *key)
{
	struct tentry **pe = table_find(t, key), *e = *pe;
	void *val;

	if (!e)
		return NULL;
	*pe = e->next;
	val = e->val;
	free(e);
	t->count--;
	return val;
}

/* Frees every entry for which dead() says so (all of them when dead is NULL). */
static void table_sweep(struct table *t, int (*dead)(const void *val, int64_t now), int64_t now)
{
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct tentry **pe = &t->buckets[i];

		while (*pe) {
			struct tentry *e = *pe;

			if (dead && !dead(e->val, now)) {
				pe = &e->next;
				continue;
			}
			*pe = e->next;
			t->free_val(e->val);
			free(e);
			t->count--;
		}
	}
}

static void table_foreach(struct table *t, void (*fn)(void *val, void *arg), void *arg)
{
	for (size_t i = 0; i < t->nbuckets; i++)
		for (struct tentry *e = t->buckets[i]; e; e = e->next)
			fn(e->val, arg);
}

static void table_free(struct table *t)
{
	table_sweep(t, NULL, 0);
	free(t->buckets);
	t->buckets = NULL;
}

static void client_free(void *v)
{
	struct client *c = v;

	free(c->id);
	free(c->secret);
	json_object_put(c->redirect_uris);
	free(c->issuer);
	free(c);
}

static void code_free(void *v)
{
	struct code *c = v;

	if (!c)
		return;
	free(c->client_id);
	free(c->redirect_uri);
	free(c->challenge);
	free(c->scope);
	free(c->resource);
	free(c->issuer);
	free(c);
}

static void atoken_free(void *v)
{
	struct atoken *a = v;

	free(a->scope);
	free(a);
}

static int code_dead(const void *v, int64_t now)
{
	return ((const struct code *)v)->expires_ms <= now;
}

static int atoken_dead(const void *v, int64_t now)
{
	const struct atoken *a = v;

	return a->revoked || a->fam->revoked || a->expires_ms <= now;
}

/* ---- replies -------------------------------------------------------- */

static const char *method_name(enum evhttp_cmd_type cmd)
{
	switch (cmd) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_HEAD:
		return "HEAD";
	case EVHTTP_REQ_PUT:
		return "PUT";
	case EVHTTP_REQ_DELETE:
		return "DELETE";
	default:
		return "OTHER";
	}
}

static const char *request_path(struct evhttp_request *req)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;

	return path && *path ? path : "/";
}

/* Method, path (never the query: it may carry a code) and status only. */
static void log_request(struct evhttp_request *req, int code)
{
	if (log_get_level() >= LOG_LEVEL_INFO)
		log_info("%s %s %d", method_name(evhttp_request_get_command(req)), request_path(req), code);
}

static void add_header(struct evhttp_request *req, const char *key, const char *value)
{
	evhttp_add_header(evhttp_request_get_output_headers(req), key, value);
}

static void reply_raw(struct evhttp_request *req, int code, const char *ctype, const char *body, size_t len)
{
	if (ctype)
		add_header(req, "Content-Type", ctype);
	if (body && len)
		evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
	log_request(req, code);
	evhttp_send_reply(req, code, NULL, NULL);
}

static void reply_text(struct evhttp_request *req, int code, const char *text)
{
	reply_raw(req, code, "text/plain; charset=utf-8", text, strlen(text));
}

/* Sends obj as the JSON body and drops the caller's reference. */
static void reply_json(struct evhttp_request *req, int code, struct json_object *obj)
{
	const char *s;

	if (!obj) {
		reply_text(req, 500, "out of memory\n");
		return;
	}
	s = json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	reply_raw(req, code, "application/json", s, strlen(s));
	json_object_put(obj);
}

/* ---- /test/last records ----------------------------------------------- */

/* Replaces *slot with a fresh record and makes it the one this request fills. */
static struct json_object *record_start(struct peer *p, struct json_object **slot)
{
	json_object_put(*slot);
	*slot = json_object_new_object();
	if (!*slot)
		fatal("out of memory");
	p->rec = *slot;
	return *slot;
}

/* A string field of the record in progress; NULL is recorded as null. */
static void record_str(struct peer *p, const char *key, const char *value)
{
	if (p->rec)
		json_object_object_add(p->rec, key, value ? json_object_new_string(value) : NULL);
}

static void record_bool(struct peer *p, const char *key, int value)
{
	if (p->rec)
		json_object_object_add(p->rec, key, json_object_new_boolean(value));
}

/* The answer: status and "ok" or the OAuth error sent. The first outcome of
 * a request is the one that counts; it ends the record. */
static void record_outcome(struct peer *p, int status, const char *error, const char *description)
{
	if (!p->rec)
		return;
	json_object_object_add(p->rec, "status", json_object_new_int(status));
	json_object_object_add(p->rec, "outcome", json_object_new_string(error ? error : "ok"));
	if (error && description)
		json_object_object_add(p->rec, "error_description", json_object_new_string(description));
	p->rec = NULL;
}

static void recordings_free(struct recordings *r)
{
	json_object_put(r->authorize);
	json_object_put(r->token);
	json_object_put(r->registration);
	json_object_put(r->revoke);
	json_object_put(r->discovery);
	json_object_put(r->authorize_scopes);
	json_object_put(r->revocations);
	json_object_put(r->token_requests);
	memset(r, 0, sizeof(*r));
}

/* Nothing recorded: what a start and /test/reset leave. */
static void recordings_reset(struct recordings *r)
{
	recordings_free(r);
	r->discovery = json_object_new_array();
	r->authorize_scopes = json_object_new_array();
	r->revocations = json_object_new_array();
	r->token_requests = json_object_new_array();
	if (!r->discovery || !r->authorize_scopes || !r->revocations || !r->token_requests)
		fatal("out of memory");
}

/* RFC 6749 5.2 error; token-endpoint answers are never cached. */
static void oauth_error(struct peer *p, struct evhttp_request *req, int code, const char *error,
			const char *description)
{
	struct json_object *o = json_object_new_object();

	record_outcome(p, code, error, description);
	json_object_object_add(o, "error", json_object_new_string(error));
	if (description)
		json_object_object_add(o, "error_description", json_object_new_string(description));
	add_header(req, "Cache-Control", "no-store");
	add_header(req, "Pragma", "no-cache");
	if (code == 401)
		add_header(req, "WWW-Authenticate", "Basic realm=\"" PEER_NAME "\"");
	reply_json(req, code, o);
}

static void reply_method_not_allowed(struct evhttp_request *req, const char *allow)
{
	add_header(req, "Allow", allow);
	reply_text(req, 405, "method not allowed\n");
}

/* ---- request bodies ------------------------------------------------- */

/*
 * The body as a NUL-terminated copy. libevent already refuses bodies over
 * PEER_MAX_BODY with 413 before buffering them (evhttp_set_max_body_size);
 * the check here keeps that true should the server setup ever change.
 * Returns 0, or the HTTP status to answer with.
 */
static int body_string(struct evhttp_request *req, char **out, size_t *len_out)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	char *s;

	*out = NULL;
	if (len > PEER_MAX_BODY)
		return 413;
	s = xcalloc(1, len + 1);
	if (evbuffer_copyout(in, s, len) != (ev_ssize_t)len) {
		free(s);
		return 500;
	}
	s[len] = '\0';
	*out = s;
	if (len_out)
		*len_out = len;
	return 0;
}

static int has_duplicates(const struct evkeyvalq *q)
{
	const struct evkeyval *a, *b;
	int n = 0;

	TAILQ_FOREACH(a, q, next) {
		if (++n > MAX_FORM_PARAMS)
			return 1;
		for (b = TAILQ_NEXT(a, next); b; b = TAILQ_NEXT(b, next))
			if (strcmp(a->key, b->key) == 0)
				return 1;
	}
	return 0;
}

/* RFC 6749 3.1: a parameter sent without a value counts as omitted. */
static const char *form_get(const struct evkeyvalq *q, const char *key)
{
	const char *v = evhttp_find_header(q, key);

	return v && *v ? v : NULL;
}

/* Parses an application/x-www-form-urlencoded body into q (always
 * initialised; clear it with evhttp_clear_headers). Returns 0 or a status. */
static int form_parse(struct evhttp_request *req, struct evkeyvalq *q)
{
	const char *ctype = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
	_cleanup_(freep) char *body = NULL;
	size_t len;
	int r;

	TAILQ_INIT(q);
	if (!ctype || strncasecmp(ctype, "application/x-www-form-urlencoded", 33) != 0)
		return 415;
	r = body_string(req, &body, &len);
	if (r)
		return r;
	if (strlen(body) != len)
		return 400;
	if (evhttp_parse_query_str(body, q) < 0 || has_duplicates(q))
		return 400;
	return 0;
}

/* A JSON object body, or NULL with *status set. */
static struct json_object *json_body(struct evhttp_request *req, int *status)
{
	_cleanup_(freep) char *body = NULL;
	struct json_tokener *tok;
	struct json_object *obj;
	size_t len;

	*status = body_string(req, &body, &len);
	if (*status)
		return NULL;
	while (len > 0 && strchr(" \t\r\n", body[len - 1]))
		len--;
	*status = 400;
	if (len == 0 || len > INT32_MAX)
		return NULL;
	tok = json_tokener_new_ex(64);
	if (!tok)
		return NULL;
	obj = json_tokener_parse_ex(tok, body, (int)len);
	if (obj && json_tokener_get_parse_end(tok) != len) {
		json_object_put(obj);
		obj = NULL;
	}
	json_tokener_free(tok);
	if (obj && !json_object_is_type(obj, json_type_object)) {
		json_object_put(obj);
		obj = NULL;
	}
	if (obj)
		*status = 0;
	return obj;
}

/* ---- discovery ------------------------------------------------------ */

static struct json_object *string_array(const char *const *items, size_t n)
{
	struct json_object *a = json_object_new_array();

	for (size_t i = 0; i < n; i++)
		json_object_array_add(a, json_object_new_string(items[i]));
	return a;
}

static char *json_dup(struct json_object *o)
{
	char *s = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));

	json_object_put(o);
	return s;
}

static void add_endpoint(struct json_object *o, const char *key, const char *origin, const char *path)
{
	char url[sizeof("http://127.0.0.1:65535") + KNOB_MAX + 32];

	snprintf(url, sizeof(url), "%s%s", origin, path);
	json_object_object_add(o, key, json_object_new_string(url));
}

/* DEFAULT_SCOPE and every scope of challenge_scope, once each: a client that
 * picks its scope from the metadata picks one the challenge would accept. */
static struct json_object *scopes_supported(const struct peer *p)
{
	struct json_object *a = string_array((const char *const[]){ DEFAULT_SCOPE }, 1);
	_cleanup_(freep) char *copy = xstrdup(p->login.challenge_scope);
	char *save = NULL;

	for (char *t = copy ? strtok_r(copy, " ", &save) : NULL; t; t = strtok_r(NULL, " ", &save))
		if (!str_in_array(a, t))
			json_object_array_add(a, json_object_new_string(t));
	return a;
}

/*
 * The RFC 8414 document of the issuer at issuer_path (the one in effect or,
 * with issuer_bound, an earlier one): its endpoints sit under that path with
 * issuer_bound, else at the root; metadata_issuer applies to the issuer in
 * effect only.
 */
static char *as_document(const struct peer *p, const char *issuer_path)
{
	static const char *const grants[] = { "authorization_code", "refresh_token" };
	static const char *const code[] = { "code" };
	const struct login_config *l = &p->login;
	char issuer[sizeof(p->issuer)], base[sizeof(p->issuer)];
	struct json_object *o = json_object_new_object();

	snprintf(issuer, sizeof(issuer), "%s%s", p->origin, issuer_path);
	snprintf(base, sizeof(base), "%s%s", p->origin, l->issuer_bound ? issuer_path : "");
	if (l->metadata_issuer && strcmp(issuer_path, l->issuer_path) == 0)
		json_object_object_add(o, "issuer", json_object_new_string(l->metadata_issuer));
	else
		json_object_object_add(o, "issuer", json_object_new_string(issuer));
	add_endpoint(o, "authorization_endpoint", base, "/authorize");
	add_endpoint(o, "token_endpoint", base, "/token");
	if (l->registration)
		add_endpoint(o, "registration_endpoint", base, "/register");
	if (l->revocation)
		add_endpoint(o, "revocation_endpoint", base, "/revoke");
	json_object_object_add(o, "response_types_supported", string_array(code, 1));
	json_object_object_add(o, "grant_types_supported", string_array(grants, ARRAY_SIZE(grants)));
	json_object_object_add(o, "code_challenge_methods_supported",
			       string_array((const char *const[]){ l->s256 ? "S256" : "plain" }, 1));
	json_object_object_add(o, "token_endpoint_auth_methods_supported", json_object_get(l->auth_methods));
	if (l->revocation)
		json_object_object_add(o, "revocation_endpoint_auth_methods_supported",
				       json_object_get(l->auth_methods));
	json_object_object_add(o, "scopes_supported", scopes_supported(p));
	if (l->iss)
		json_object_object_add(o, "authorization_response_iss_parameter_supported",
				       json_object_new_boolean(1));
	return json_dup(o);
}

static int issuer_known(const struct peer *p, const char *issuer_path)
{
	for (size_t i = 0; i < p->nissuers; i++)
		if (strcmp(p->issuer_paths[i], issuer_path) == 0)
			return 1;
	return 0;
}

/* The documents as the configuration has them now: built at start and again
 * on every /test/config, so that a change shows on the next request. The
 * issuer in effect joins the issuers remembered (test_config keeps room). */
static void discovery_build(struct peer *p)
{
	static const char *const header[] = { "header" };
	const struct login_config *l = &p->login;
	struct json_object *o;

	free(p->prm_json);
	free(p->prm_sse_json);
	free(p->as_json);
	snprintf(p->issuer, sizeof(p->issuer), "%s%s", p->origin, l->issuer_path);

	for (int i = 0; i < 2; i++) {
		o = json_object_new_object();
		json_object_object_add(o, "resource", json_object_new_string(i ? p->resource_sse : p->resource));
		json_object_object_add(o, "authorization_servers",
				       string_array((const char *const[]){ p->issuer }, 1));
		json_object_object_add(o, "bearer_methods_supported", string_array(header, 1));
		json_object_object_add(o, "scopes_supported", scopes_supported(p));
		*(i ? &p->prm_sse_json : &p->prm_json) = json_dup(o);
	}

	p->as_json = as_document(p, l->issuer_path);
	if (!issuer_known(p, l->issuer_path) && p->nissuers < ISSUERS_MAX)
		p->issuer_paths[p->nissuers++] = xstrdup(l->issuer_path);
}

/* s past prefix when s starts with it, else NULL. */
static const char *after_prefix(const char *s, const char *prefix)
{
	size_t n = strlen(prefix);

	return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

/*
 * Whether path is where the metadata of the issuer at issuer_path is served.
 * It sits where RFC 8414 3.1 puts it: the well-known segment between host
 * and the issuer's path; OpenID Connect Discovery 4 appends it to the
 * issuer, and that form is served too (as_metadata may drop either kind).
 */
static int as_metadata_at(const struct peer *p, const char *path, const char *issuer_path)
{
	const struct login_config *l = &p->login;
	int oauth = l->as_metadata != AS_OPENID_ONLY, openid = l->as_metadata != AS_OAUTH_ONLY;
	const char *rest;

	if ((rest = after_prefix(path, AS_OAUTH_PATH)) && strcmp(rest, issuer_path) == 0)
		return oauth;
	if ((rest = after_prefix(path, AS_OPENID_PATH)) && strcmp(rest, issuer_path) == 0)
		return openid;
	if (*issuer_path && (rest = after_prefix(path, issuer_path)) && strcmp(rest, AS_OPENID_PATH) == 0)
		return openid;
	return 0;
}

/* The document served at path, or NULL (404). */
static const char *well_known_doc(const struct peer *p, const char *path)
{
	const struct login_config *l = &p->login;
	int prm_root = l->prm_paths != PRM_PATH_ONLY, prm_path = l->prm_paths != PRM_ROOT_ONLY;

	if (strcmp(path, PRM_PATH) == 0)
		return prm_root ? p->prm_json : NULL;
	if (strcmp(path, PRM_PATH "/mcp") == 0)
		return prm_path ? p->prm_json : NULL;
	if (strcmp(path, PRM_PATH "/sse") == 0)
		return prm_path ? p->prm_sse_json : NULL;
	return as_metadata_at(p, path, l->issuer_path) ? p->as_json : NULL;
}

/* With issuer_bound, an earlier issuer's metadata is still served (that
 * authorization server did not go away): a document to free, or NULL. */
static char *earlier_issuer_doc(const struct peer *p, const char *path)
{
	if (!p->login.issuer_bound)
		return NULL;
	for (size_t i = 0; i < p->nissuers; i++)
		if (strcmp(p->issuer_paths[i], p->login.issuer_path) != 0 && as_metadata_at(p, path, p->issuer_paths[i]))
			return as_document(p, p->issuer_paths[i]);
	return NULL;
}

/* Every GET of a well-known path is recorded for /test/last, 404s too: the
 * order a client tried the URLs in is what a discovery test checks. */
static void handle_well_known(struct peer *p, struct evhttp_request *req, const char *path)
{
	_cleanup_(freep) char *earlier = NULL;
	const char *doc = well_known_doc(p, path);
	int get = evhttp_request_get_command(req) == EVHTTP_REQ_GET;
	int status;

	if (!doc)
		doc = earlier = earlier_issuer_doc(p, path);
	status = doc ? 200 : 404;

	if (get && json_object_array_length(p->last.discovery) < DISCOVERY_LOG_MAX) {
		struct json_object *e = json_object_new_object();

		json_object_object_add(e, "path", json_object_new_string(path));
		json_object_object_add(e, "status", json_object_new_int(status));
		json_object_array_add(p->last.discovery, e);
	}
	if (!doc)
		reply_text(req, 404, "not found\n");
	else if (!get)
		reply_method_not_allowed(req, "GET");
	else
		reply_raw(req, 200, "application/json", doc, strlen(doc));
}

/* One of the two endpoints this server protects (RFC 8707). */
static int resource_known(const struct peer *p, const char *resource)
{
	return streq(resource, p->resource) || streq(resource, p->resource_sse);
}

/* ---- issuers (issuer_bound) ----------------------------------------- */

/* The authorization server's endpoints, which issuer_bound puts under each
 * issuer's path. */
static const char *const as_endpoints[] = { "/authorize", "/token", "/register", "/revoke" };

/*
 * Sets p->req_issuer to the issuer whose endpoint path is and returns the
 * path as dispatch knows it: with issuer_bound, an endpoint under a
 * remembered issuer's path belongs to that issuer (and loses the issuer's
 * part); everything else belongs to the issuer in effect.
 */
static const char *issuer_route(struct peer *p, const char *path)
{
	snprintf(p->req_issuer, sizeof(p->req_issuer), "%s", p->issuer);
	if (!p->login.issuer_bound)
		return path;
	for (size_t i = 0; i < p->nissuers; i++) {
		const char *rest = after_prefix(path, p->issuer_paths[i]);

		for (size_t j = 0; rest && j < ARRAY_SIZE(as_endpoints); j++) {
			if (strcmp(rest, as_endpoints[j]) == 0) {
				snprintf(p->req_issuer, sizeof(p->req_issuer), "%s%s", p->origin, p->issuer_paths[i]);
				return rest;
			}
		}
	}
	return path;
}

/* With issuer_bound, a client_id registered at another issuer than the one
 * asked is refused by the caller (invalid_client), and counted: a test
 * asserts that none reached the new issuer after a migration. */
static int client_foreign(struct peer *p, const struct client *c)
{
	if (!p->login.issuer_bound || streq(c->issuer, p->req_issuer))
		return 0;
	p->stats.foreign_client_id++;
	log_info("a client_id registered at %s refused at %s", c->issuer, p->req_issuer);
	return 1;
}

/* With issuer_bound, the MCP endpoints trust only the issuer in effect. */
static int atoken_issuer_ok(const struct peer *p, const struct atoken *at)
{
	return !p->login.issuer_bound || streq(at->fam->issuer, p->issuer);
}

/* ---- clients and redirect URIs -------------------------------------- */

/* OAuth for native apps (RFC 8252 7.3): plain http on a loopback host only. */
static int loopback_uri(const char *s, struct evhttp_uri **out)
{
	struct evhttp_uri *u = evhttp_uri_parse(s);
	const char *host;

	if (!u)
		return 0;
	host = evhttp_uri_get_host(u);
	if (!streq(evhttp_uri_get_scheme(u), "http") || !host || evhttp_uri_get_fragment(u) ||
	    evhttp_uri_get_userinfo(u) ||
	    !(streq(host, "127.0.0.1") || streq(host, "localhost") || streq(host, "[::1]") || streq(host, "::1"))) {
		evhttp_uri_free(u);
		return 0;
	}
	if (out)
		*out = u;
	else
		evhttp_uri_free(u);
	return 1;
}

static int same_part(const char *a, const char *b)
{
	return strcmp(a ? a : "", b ? b : "") == 0;
}

/* A registered loopback redirect matches whatever port the client picks
 * (RFC 8252 7.3); everything else about it must be equal. */
static int redirect_matches(const char *registered, const char *given)
{
	struct evhttp_uri *r = NULL, *g = NULL;
	int ok;

	if (strcmp(registered, given) == 0)
		return 1;
	if (!loopback_uri(registered, &r))
		return 0;
	if (!loopback_uri(given, &g)) {
		evhttp_uri_free(r);
		return 0;
	}
	ok = same_part(evhttp_uri_get_host(r), evhttp_uri_get_host(g)) &&
	     same_part(evhttp_uri_get_path(r), evhttp_uri_get_path(g)) &&
	     same_part(evhttp_uri_get_query(r), evhttp_uri_get_query(g));
	evhttp_uri_free(r);
	evhttp_uri_free(g);
	return ok;
}

static int client_redirect_ok(const struct client *c, const char *uri)
{
	size_t n;

	if (!loopback_uri(uri, NULL))
		return 0;
	if (!c->redirect_uris)
		return 1;
	n = json_object_array_length(c->redirect_uris);
	for (size_t i = 0; i < n; i++) {
		const char *r = json_object_get_string(json_object_array_get_idx(c->redirect_uris, i));

		if (r && redirect_matches(r, uri))
			return 1;
	}
	return 0;
}

static const char *auth_method_name(enum auth_method m)
{
	switch (m) {
	case AUTH_NONE:
		return "none";
	case AUTH_POST:
		return "client_secret_post";
	case AUTH_BASIC:
	case AUTH_ANY:
		break;
	}
	return "client_secret_basic";
}

/* The methods the peer implements; 0 or -EINVAL. */
static int auth_method_parse(const char *name, enum auth_method *out)
{
	if (streq(name, "none"))
		*out = AUTH_NONE;
	else if (streq(name, "client_secret_basic"))
		*out = AUTH_BASIC;
	else if (streq(name, "client_secret_post"))
		*out = AUTH_POST;
	else
		return -EINVAL;
	return 0;
}

/*
 * The token_endpoint_auth_method a registration gets: the one asked for,
 * which must be among auth_methods; without one client_secret_basic (RFC
 * 7591 2) when listed, else the first listed. NULL: refuse, with *why.
 */
static const char *register_auth_method(const struct peer *p, struct json_object *meta, const char **why)
{
	struct json_object *methods = p->login.auth_methods, *v;
	const char *name;

	if (json_object_object_get_ex(meta, "token_endpoint_auth_method", &v)) {
		name = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
		if (!name || !str_in_array(methods, name)) {
			*why = "token_endpoint_auth_method is not among token_endpoint_auth_methods_supported";
			return NULL;
		}
		return name;
	}
	if (str_in_array(methods, "client_secret_basic"))
		return "client_secret_basic";
	return json_object_get_string(json_object_array_get_idx(methods, 0));
}

/* The record is the metadata document as received (the outcome is added
 * to it); it holds no secret unless a client sends one, and that is left out. */
static void register_record(struct peer *p, struct json_object *meta)
{
	record_start(p, &p->last.registration);
	if (!meta)
		return;
	json_object_object_foreach(meta, key, val) {
		if (strcmp(key, "client_secret") != 0)
			json_object_object_add(p->rec, key, json_object_get(val));
	}
}

static void handle_register(struct peer *p, struct evhttp_request *req)
{
	struct json_object *meta, *v, *uris, *o;
	enum auth_method method;
	const char *method_str, *why = NULL;
	struct client *c;
	char id[TOKEN_CHARS], secret[TOKEN_CHARS];
	int status;
	size_t n;

	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		reply_method_not_allowed(req, "POST");
		return;
	}
	meta = json_body(req, &status);
	register_record(p, meta);
	/* Switched off: the endpoint is not there, as for any unknown path. */
	if (!p->login.registration) {
		record_outcome(p, 404, "not_found", "registration is switched off");
		reply_text(req, 404, "not found\n");
		goto out;
	}
	if (!meta) {
		oauth_error(p, req, status, "invalid_client_metadata", "body must be a JSON object");
		return;
	}
	if (!json_object_object_get_ex(meta, "redirect_uris", &uris) || !json_object_is_type(uris, json_type_array) ||
	    (n = json_object_array_length(uris)) == 0) {
		oauth_error(p, req, 400, "invalid_redirect_uri", "redirect_uris must be a non-empty array");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct json_object *u = json_object_array_get_idx(uris, i);

		if (!json_object_is_type(u, json_type_string) || !loopback_uri(json_object_get_string(u), NULL)) {
			oauth_error(p, req, 400, "invalid_redirect_uri", "redirect URIs must be loopback http URIs");
			goto out;
		}
	}
	method_str = register_auth_method(p, meta, &why);
	if (!method_str || auth_method_parse(method_str, &method) < 0) {
		oauth_error(p, req, 400, "invalid_client_metadata",
			    why ? why : "token_endpoint_auth_method is not one this server implements");
		goto out;
	}
	if (json_object_object_get_ex(meta, "grant_types", &v)) {
		if (!json_object_is_type(v, json_type_array))
			goto bad_grants;
		n = json_object_array_length(v);
		for (size_t i = 0; i < n; i++) {
			const char *g = json_object_get_string(json_object_array_get_idx(v, i));

			if (!streq(g, "authorization_code") && !streq(g, "refresh_token"))
				goto bad_grants;
		}
	}
	if (json_object_object_get_ex(meta, "response_types", &v) &&
	    (!json_object_is_type(v, json_type_array) || json_object_array_length(v) != 1 ||
	     !str_in_array(v, "code"))) {
		oauth_error(p, req, 400, "invalid_client_metadata", "response_types must be [\"code\"]");
		goto out;
	}

	random_b64(id, sizeof(id), 16);
	c = xcalloc(1, sizeof(*c));
	c->id = xstrdup(id);
	c->method = method;
	c->redirect_uris = json_object_get(uris);
	c->issuer = xstrdup(p->req_issuer);
	if (method != AUTH_NONE) {
		random_b64(secret, sizeof(secret), 32);
		c->secret = xstrdup(secret);
	}
	table_put(&p->clients, c->id, c);
	p->stats.registrations++;
	record_str(p, "auth_method", auth_method_name(method));
	record_outcome(p, 201, NULL, NULL);

	/* RFC 7591 3.2.1: the registered metadata, plus what the server chose. */
	o = json_object_new_object();
	json_object_object_foreach(meta, key, val) {
		if (strcmp(key, "client_id") != 0 && strcmp(key, "client_secret") != 0)
			json_object_object_add(o, key, json_object_get(val));
	}
	json_object_object_add(o, "client_id", json_object_new_string(c->id));
	json_object_object_add(o, "client_id_issued_at", json_object_new_int64((int64_t)time(NULL)));
	json_object_object_add(o, "token_endpoint_auth_method", json_object_new_string(auth_method_name(method)));
	if (c->secret) {
		json_object_object_add(o, "client_secret", json_object_new_string(c->secret));
		json_object_object_add(o, "client_secret_expires_at", json_object_new_int(0));
	}
	add_header(req, "Cache-Control", "no-store");
	reply_json(req, 201, o);
	sodium_memzero(secret, sizeof(secret));
	goto out;

bad_grants:
	oauth_error(p, req, 400, "invalid_client_metadata",
		    "grant_types may hold authorization_code and refresh_token");
out:
	json_object_put(meta);
}

/* ---- /authorize ----------------------------------------------------- */

/* uri + (? or &) + key=value pairs, each value percent-encoded. */
static char *uri_with_params(const char *uri, const char *const *kv, size_t n)
{
	struct evbuffer *b = evbuffer_new();
	char sep = strchr(uri, '?') ? '&' : '?';
	char *s;
	size_t len;

	if (!b)
		fatal("out of memory");
	evbuffer_add_printf(b, "%s", uri);
	for (size_t i = 0; i + 1 < n; i += 2) {
		char *enc;

		if (!kv[i + 1])
			continue;
		enc = evhttp_encode_uri(kv[i + 1]);
		if (!enc)
			fatal("out of memory");
		evbuffer_add_printf(b, "%c%s=%s", sep, kv[i], enc);
		free(enc);
		sep = '&';
	}
	len = evbuffer_get_length(b);
	s = xcalloc(1, len + 1);
	evbuffer_remove(b, s, len);
	evbuffer_free(b);
	return s;
}

static void authorize_redirect(struct evhttp_request *req, const char *redirect_uri, const char *const *kv,
			       size_t n)
{
	_cleanup_(freep) char *location = uri_with_params(redirect_uri, kv, n);

	add_header(req, "Location", location);
	add_header(req, "Cache-Control", "no-store");
	reply_raw(req, 302, NULL, NULL, 0);
}

/* RFC 9207: the iss a redirect carries, or NULL for none. */
static const char *authorize_iss(const struct peer *p)
{
	if (p->login.wrong_iss)
		return WRONG_ISS;
	return p->login.iss ? p->req_issuer : NULL;
}

/* RFC 6749 4.1.2.1: once client and redirect URI are trusted, errors go back
 * to the client through the redirect. */
static void authorize_error(struct peer *p, struct evhttp_request *req, const char *redirect_uri,
			    const char *error, const char *description, const char *state)
{
	const char *kv[] = { "error", error, "error_description", description, "state", state,
			     "iss", authorize_iss(p) };

	record_outcome(p, 302, error, description);
	authorize_redirect(req, redirect_uri, kv, ARRAY_SIZE(kv));
}

/* An error answered here, not redirected: client or redirect URI untrusted. */
static void authorize_refuse(struct peer *p, struct evhttp_request *req, const char *error, const char *text)
{
	char line[128];

	snprintf(line, sizeof(line), "%s\n", text);
	record_outcome(p, 400, error, text);
	reply_text(req, 400, line);
}

/* The error_description of an authorize_error set by /test/config. */
static const char *injected_error_description(const char *error)
{
	static const struct {
		const char *error, *description;
	} known[] = {
		{ "access_denied", "The user denied the authorization request." },
		{ "invalid_scope", "The requested scope is invalid, unknown or malformed." },
		{ "unauthorized_client", "This client may not request an authorization code." },
		{ "server_error", "The authorization server met an unexpected condition." },
		{ "temporarily_unavailable", "The authorization server is temporarily unable to handle the request." },
		{ "invalid_request", "The authorization request is invalid." },
	};

	for (size_t i = 0; i < ARRAY_SIZE(known); i++)
		if (strcmp(error, known[i].error) == 0)
			return known[i].description;
	return "The authorization server refused the request.";
}

static int b64url_chars(const char *s, size_t min, size_t max)
{
	size_t n = strlen(s);

	if (n < min || n > max)
		return 0;
	return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == n;
}

/* authorize_scopes of /test/last: every request's scope parameter. */
static void authorize_scope_record(struct peer *p, const char *scope)
{
	if (json_object_array_length(p->last.authorize_scopes) < DISCOVERY_LOG_MAX)
		json_object_array_add(p->last.authorize_scopes, scope ? json_object_new_string(scope) : NULL);
}

/* The request as /test/last shows it: parameters, not the challenge itself. */
static void authorize_record(struct peer *p, const struct evkeyvalq *q)
{
	static const char *const keys[] = { "client_id", "redirect_uri", "response_type", "scope", "resource",
					    "code_challenge_method" };
	const char *challenge = form_get(q, "code_challenge");

	record_start(p, &p->last.authorize);
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
		record_str(p, keys[i], form_get(q, keys[i]));
	record_bool(p, "state", form_get(q, "state") != NULL);
	json_object_object_add(p->rec, "code_challenge_length",
			       challenge ? json_object_new_int64((int64_t)strlen(challenge)) : NULL);
	authorize_scope_record(p, form_get(q, "scope"));
}

/*
 * The scope an authorization grants for asked (DEFAULT_SCOPE when none):
 * all of it, or with grantable_scopes only those of its scopes, in the
 * order asked. Owned; NULL when nothing is left to grant.
 */
static char *scope_grant(const struct peer *p, const char *asked)
{
	_cleanup_(freep) char *copy = xstrdup(asked ? asked : DEFAULT_SCOPE);
	struct json_object *grantable = p->login.grantable_scopes;
	char *save = NULL, *out;
	size_t len = 0;

	if (!grantable)
		return TAKE_PTR(copy);
	out = xcalloc(1, strlen(copy) + 1);
	for (char *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
		if (!str_in_array(grantable, t))
			continue;
		len += (size_t)sprintf(out + len, "%s%s", len ? " " : "", t);
	}
	if (len == 0) {
		free(out);
		return NULL;
	}
	return out;
}

static void handle_authorize(struct peer *p, struct evhttp_request *req)
{
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	const char *redirect_uri, *state, *challenge, *resource;
	char *granted;
	struct evkeyvalq q;
	struct client *c;
	struct code *code;

	TAILQ_INIT(&q);
	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		reply_method_not_allowed(req, "GET");
		return;
	}
	if (!query || evhttp_parse_query_str(query, &q) < 0 || has_duplicates(&q)) {
		evhttp_clear_headers(&q);
		authorize_record(p, &q);
		authorize_refuse(p, req, "invalid_request", "malformed authorization request");
		goto out;
	}
	authorize_record(p, &q);
	/* An unknown client or a redirect URI it did not register must not be
	 * redirected to (RFC 6749 4.1.2.1): answer here instead. */
	c = table_get(&p->clients, form_get(&q, "client_id"));
	if (!c) {
		authorize_refuse(p, req, "invalid_client", "unknown client_id");
		goto out;
	}
	if (client_foreign(p, c)) {
		authorize_refuse(p, req, "invalid_client", "client_id registered at another issuer");
		goto out;
	}
	redirect_uri = form_get(&q, "redirect_uri");
	if (!redirect_uri || !client_redirect_ok(c, redirect_uri)) {
		authorize_refuse(p, req, "invalid_request",
				 "redirect_uri missing, not loopback http, or not registered");
		goto out;
	}
	state = form_get(&q, "state");
	if (p->login.authorize_error) {
		authorize_error(p, req, redirect_uri, p->login.authorize_error,
				injected_error_description(p->login.authorize_error), state);
		goto out;
	}
	if (!streq(form_get(&q, "response_type"), "code")) {
		authorize_error(p, req, redirect_uri, "unsupported_response_type", "response_type must be code", state);
		goto out;
	}
	challenge = form_get(&q, "code_challenge");
	if (!state) {
		authorize_error(p, req, redirect_uri, "invalid_request", "state is required", state);
		goto out;
	}
	if (!challenge || !b64url_chars(challenge, 43, 43) || !streq(form_get(&q, "code_challenge_method"), "S256")) {
		authorize_error(p, req, redirect_uri, "invalid_request",
				"PKCE is required: code_challenge_method S256 and a 43-character code_challenge",
				state);
		goto out;
	}
	resource = form_get(&q, "resource");
	if (resource && !resource_known(p, resource)) {
		authorize_error(p, req, redirect_uri, "invalid_target", "resource is not one this server protects",
				state);
		goto out;
	}
	/* The scope is granted as asked (grantable_scopes permitting): a test
	 * that sets challenge_scope logs in with it, and the token response
	 * names it. */
	granted = scope_grant(p, form_get(&q, "scope"));
	if (!granted) {
		authorize_error(p, req, redirect_uri, "invalid_scope", "none of the requested scopes can be granted",
				state);
		goto out;
	}

	code = xcalloc(1, sizeof(*code));
	random_b64(code->code, sizeof(code->code), 32);
	code->client_id = xstrdup(c->id);
	code->redirect_uri = xstrdup(redirect_uri);
	code->challenge = xstrdup(challenge);
	code->scope = granted;
	code->resource = xstrdup(resource);
	code->issuer = xstrdup(p->req_issuer);
	code->expires_ms = now_ms() + CODE_LIFETIME_MS;
	table_put(&p->codes, code->code, code);
	p->stats.authorizations++;
	record_outcome(p, 302, NULL, NULL);
	{
		const char *kv[] = { "code", code->code, "state", state, "iss", authorize_iss(p) };

		authorize_redirect(req, redirect_uri, kv, ARRAY_SIZE(kv));
	}
out:
	evhttp_clear_headers(&q);
}

/* ---- /token: client authentication ----------------------------------- */

static int secret_equal(const char *a, const char *b)
{
	size_t n = strlen(a);

	return n == strlen(b) && sodium_memcmp(a, b, n) == 0;
}

/* Splits "Basic base64(id:secret)" (RFC 6749 2.3.1: each part form-encoded). */
static int basic_credentials(const char *header, char **id, char **secret)
{
	unsigned char bin[1024];
	size_t binlen;
	const char *b64 = header + 6;
	char *colon, *raw;

	*id = *secret = NULL;
	if (strncasecmp(header, "Basic ", 6) != 0)
		return -EINVAL;
	while (*b64 == ' ')
		b64++;
	if (sodium_base642bin(bin, sizeof(bin) - 1, b64, strlen(b64), NULL, &binlen, NULL,
			      sodium_base64_VARIANT_ORIGINAL) < 0)
		return -EINVAL;
	bin[binlen] = '\0';
	raw = (char *)bin;
	colon = strchr(raw, ':');
	if (!colon || memchr(bin, '\0', binlen))
		return -EINVAL;
	*colon = '\0';
	*id = evhttp_uridecode(raw, 1, NULL);
	*secret = evhttp_uridecode(colon + 1, 1, NULL);
	sodium_memzero(bin, sizeof(bin));
	if (!*id || !*secret) {
		free(*id);
		free(*secret);
		*id = *secret = NULL;
		return -ENOMEM;
	}
	return 0;
}

/*
 * Identifies and authenticates the client of a token or revocation request:
 * client_secret_basic, client_secret_post, or a public client's client_id.
 * On failure answers the request itself and returns NULL.
 */
static struct client *client_authenticate(struct peer *p, struct evhttp_request *req, const struct evkeyvalq *form)
{
	const char *authz = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	const char *form_id = form_get(form, "client_id"), *form_secret = form_get(form, "client_secret");
	_cleanup_(freep) char *basic_id = NULL;
	char *basic_secret = NULL;
	const char *id, *secret;
	enum auth_method used;
	struct client *c = NULL;

	if (authz) {
		record_str(p, "auth_method", auth_method_name(AUTH_BASIC));
		if (basic_credentials(authz, &basic_id, &basic_secret) < 0) {
			record_str(p, "client_id", NULL);
			oauth_error(p, req, 401, "invalid_client", "malformed Basic credentials");
			return NULL;
		}
		/* RFC 6749 2.3: one authentication method per request. */
		if (form_secret || (form_id && !streq(form_id, basic_id))) {
			oauth_error(p, req, 400, "invalid_request", "more than one client authentication method");
			goto out;
		}
		id = basic_id;
		secret = basic_secret;
		used = AUTH_BASIC;
	} else {
		id = form_id;
		secret = form_secret;
		used = secret ? AUTH_POST : AUTH_NONE;
	}
	/* Who and how, never the secret. */
	record_str(p, "client_id", id);
	record_str(p, "auth_method", auth_method_name(used));

	c = table_get(&p->clients, id);
	if (!c) {
		oauth_error(p, req, 401, "invalid_client", "unknown client");
		goto out;
	}
	if (client_foreign(p, c)) {
		oauth_error(p, req, 401, "invalid_client", "client_id registered at another issuer");
		c = NULL;
		goto out;
	}
	if (!c->secret) {
		if (used != AUTH_NONE) {
			oauth_error(p, req, 401, "invalid_client", "public client presented a secret");
			c = NULL;
		}
		goto out;
	}
	if (used == AUTH_NONE || (c->method != AUTH_ANY && c->method != used) || !secret_equal(c->secret, secret)) {
		oauth_error(p, req, 401, "invalid_client", "client authentication failed");
		c = NULL;
	}
out:
	if (basic_secret) {
		sodium_memzero(basic_secret, strlen(basic_secret));
		free(basic_secret);
	}
	return c;
}

/* ---- /token: grants -------------------------------------------------- */

static int pkce_verify(const char *verifier, const char *challenge)
{
	unsigned char hash[crypto_hash_sha256_BYTES];
	char expect[sodium_base64_ENCODED_LEN(crypto_hash_sha256_BYTES, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
	size_t n = strlen(verifier);

	/* RFC 7636 4.1: 43 to 128 unreserved characters. */
	if (n < 43 || n > 128 ||
	    strspn(verifier, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~") != n)
		return 0;
	crypto_hash_sha256(hash, (const unsigned char *)verifier, n);
	sodium_bin2base64(expect, sizeof(expect), hash, sizeof(hash), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	return secret_equal(expect, challenge);
}

/* RFC 8707: a resource, when given or required, must name our MCP endpoint.
 * Returns 0 when acceptable, or answers invalid_target and returns -1. */
static int resource_check(struct peer *p, struct evhttp_request *req, const char *resource, const char *bound)
{
	const char *why = NULL;

	if (!resource && p->opt.require_resource)
		why = "resource is required";
	else if (resource && !resource_known(p, resource))
		why = "unknown resource";
	else if (resource && bound && !streq(resource, bound))
		why = "resource differs from the authorization";
	if (!why)
		return 0;
	oauth_error(p, req, 400, "invalid_target", why);
	return -1;
}

/* Each space-separated scope of asked appears in granted. */
static int scope_subset(const char *asked, const char *granted)
{
	_cleanup_(freep) char *a = xstrdup(asked);
	char *save = NULL;

	for (char *s = strtok_r(a, " ", &save); s; s = strtok_r(NULL, " ", &save)) {
		size_t n = strlen(s);
		const char *g = granted;
		int found = 0;

		while (!found && (g = strstr(g, s))) {
			found = (g == granted || g[-1] == ' ') && (g[n] == '\0' || g[n] == ' ');
			g += n;
		}
		if (!found)
			return 0;
	}
	return 1;
}

/* A struct of size bytes whose flexible token[] member, at offset off,
 * holds a fresh random token of bytes characters (0: the usual 43). */
static void *token_new(size_t size, size_t off, long bytes)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t n = bytes > 0 ? (size_t)bytes : TOKEN_CHARS - 1;
	char *v = xcalloc(1, size + n + 1), *t = v + off;

	if (bytes <= 0) {
		random_b64(t, TOKEN_CHARS, 32);
		return v;
	}
	randombytes_buf(t, n);
	for (size_t i = 0; i < n; i++)
		t[i] = alphabet[(unsigned char)t[i] % 64];
	return v;
}

static struct rtoken *rtoken_new(struct peer *p, struct family *fam)
{
	struct rtoken *rt = token_new(sizeof(*rt), offsetof(struct rtoken, token), p->opt.refresh_token_bytes);

	rt->fam = fam;
	table_put(&p->rtokens, rt->token, rt);
	return rt;
}

/* expires_in_json: the value of expires_in as that JSON text, or none. */
static void expires_in_override(const struct peer *p, struct json_object *o)
{
	if (!p->opt.has_expires_in_json)
		return;
	json_object_object_del(o, "expires_in");
	if (p->opt.expires_in_json[0])
		json_object_object_add(o, "expires_in", json_tokener_parse(p->opt.expires_in_json));
}

static struct pending *pending_add(struct peer *p, struct evhttp_request *req, enum pending_kind kind,
				   long delay_ms);

/*
 * Issues an access token for fam and answers the token request. base is the
 * refresh token being exchanged (NULL for a new login): with rotation on it
 * is retired in favour of a new one. Returns 1 when the answer is held
 * (refresh_delay_ms), 0 once sent.
 */
static int tokens_issue(struct peer *p, struct evhttp_request *req, struct family *fam, struct rtoken *base,
			const char *scope)
{
	struct atoken *at = token_new(sizeof(*at), offsetof(struct atoken, token), p->opt.access_token_bytes);
	struct json_object *o = json_object_new_object();
	int64_t now = now_ms();

	if (base && p->opt.has_refresh_scope)
		scope = p->opt.refresh_scope;
	at->fam = fam;
	at->scope = xstrdup(scope ? scope : fam->scope);
	at->expires_ms = now + p->opt.token_lifetime * 1000;
	table_put(&p->atokens, at->token, at);

	/* A refresh answer without a refresh token must leave the old one usable. */
	if (!base || (p->opt.rotate && !p->opt.omit_refresh_token)) {
		struct rtoken *rt = rtoken_new(p, fam);

		if (base) {
			base->successor = rt;
			base->rotated_ms = now;
		}
		fam->current = rt;
	}

	json_object_object_add(o, "access_token", json_object_new_string(at->token));
	json_object_object_add(o, "token_type", json_object_new_string("Bearer"));
	json_object_object_add(o, "expires_in", json_object_new_int64(p->opt.has_expires_in ? p->opt.expires_in
										      : p->opt.token_lifetime));
	expires_in_override(p, o);
	if (!base || !p->opt.omit_refresh_token)
		json_object_object_add(o, "refresh_token", json_object_new_string(fam->current->token));
	json_object_object_add(o, "scope", json_object_new_string(scope ? scope : fam->scope));
	add_header(req, "Cache-Control", "no-store");
	add_header(req, "Pragma", "no-cache");
	record_outcome(p, 200, NULL, NULL);
	if (base && p->opt.refresh_delay_ms > 0) {
		pending_add(p, req, PENDING_TOKEN, p->opt.refresh_delay_ms)->reply = o;
		return 1;
	}
	reply_json(req, 200, o);
	return 0;
}

static void grant_code(struct peer *p, struct evhttp_request *req, const struct evkeyvalq *form,
		       const struct client *c)
{
	const char *code_str = form_get(form, "code"), *verifier = form_get(form, "code_verifier");
	const char *redirect_uri = form_get(form, "redirect_uri"), *resource = form_get(form, "resource");
	struct code *code;
	struct family *fam;
	int pkce_ok;

	if (!code_str || !verifier || !redirect_uri) {
		oauth_error(p, req, 400, "invalid_request", "code, code_verifier and redirect_uri are required");
		return;
	}
	/* Taken out first: a code is spent by any attempt, failed or not. */
	code = table_take(&p->codes, code_str);
	if (!code) {
		oauth_error(p, req, 400, "invalid_grant", "authorization code unknown or already used");
		goto out;
	}
	if (code->expires_ms <= now_ms()) {
		oauth_error(p, req, 400, "invalid_grant", "authorization code expired");
		goto out;
	}
	if (!streq(code->client_id, c->id)) {
		oauth_error(p, req, 400, "invalid_grant", "authorization code was issued to another client");
		goto out;
	}
	if (!streq(code->issuer, p->req_issuer)) {
		oauth_error(p, req, 400, "invalid_grant", "authorization code was issued by another issuer");
		goto out;
	}
	/* Checked before the redirect URI so that /test/last tells both. */
	pkce_ok = pkce_verify(verifier, code->challenge);
	record_bool(p, "pkce_ok", pkce_ok);
	if (!streq(code->redirect_uri, redirect_uri)) {
		oauth_error(p, req, 400, "invalid_grant", "redirect_uri differs from the authorization request");
		goto out;
	}
	if (!pkce_ok) {
		oauth_error(p, req, 400, "invalid_grant",
			    "PKCE verification failed (code_verifier does not match code_challenge)");
		goto out;
	}
	if (resource_check(p, req, resource, code->resource) < 0)
		goto out;

	fam = xcalloc(1, sizeof(*fam));
	fam->client_id = xstrdup(c->id);
	fam->scope = TAKE_PTR(code->scope);
	fam->resource = xstrdup(resource ? resource : code->resource);
	fam->issuer = TAKE_PTR(code->issuer);
	fam->id = ++p->next_grant;
	fam->next = p->families;
	p->families = fam;
	p->stats.token_grants++;
	(void)tokens_issue(p, req, fam, NULL, NULL);
out:
	code_free(code);
}

/* Returns 1 when the answer is held (refresh_delay_ms), 0 once sent. */
static int grant_refresh(struct peer *p, struct evhttp_request *req, const struct evkeyvalq *form,
			  const struct client *c)
{
	struct rtoken *rt = table_get(&p->rtokens, form_get(form, "refresh_token"));
	const char *scope = form_get(form, "scope");
	struct family *fam;

	if (!form_get(form, "refresh_token")) {
		oauth_error(p, req, 400, "invalid_request", "refresh_token is required");
		return 0;
	}
	fam = rt ? rt->fam : NULL;
	if (!rt || fam->revoked || !streq(fam->client_id, c->id)) {
		oauth_error(p, req, 400, "invalid_grant",
			    "refresh token unknown, revoked, or issued to another client");
		return 0;
	}
	if (resource_check(p, req, form_get(form, "resource"), fam->resource) < 0)
		return 0;
	if (scope && !scope_subset(scope, fam->scope)) {
		oauth_error(p, req, 400, "invalid_scope", "scope exceeds what was granted");
		return 0;
	}
	if (rt->successor) {
		int64_t age = now_ms() - rt->rotated_ms;

		if (p->opt.grace > 0 && !rt->grace_used && rt->successor == fam->current &&
		    age <= p->opt.grace * 1000) {
			rt->grace_used = 1;
			rt = fam->current;
		} else {
			/* Reuse: someone holds a token they should not. Like real
			 * providers, distrust the whole grant. */
			p->stats.reused_refresh_tokens++;
			fam->revoked = 1;
			log_info("refresh token reuse: token family revoked");
			oauth_error(p, req, 400, "invalid_grant", "refresh token reused");
			return 0;
		}
	}
	p->stats.refresh_grants++;
	return tokens_issue(p, req, fam, rt, scope);
}

/* ---- /token: failure injection -------------------------------------- */

static int failure_take(struct peer *p, enum fail_mode *mode)
{
	struct failure *f = p->fail_head;

	if (!f)
		return 0;
	*mode = f->mode;
	if (--f->remaining == 0) {
		p->fail_head = f->next;
		if (!p->fail_head)
			p->fail_tail = NULL;
		free(f);
	}
	return 1;
}

static void failures_clear(struct peer *p)
{
	enum fail_mode m;

	while (failure_take(p, &m))
		;
}

static void token_done(struct peer *p)
{
	p->stats.in_flight--;
}

static void pending_fire(evutil_socket_t fd, short what, void *arg);

static struct pending *pending_add(struct peer *p, struct evhttp_request *req, enum pending_kind kind,
				   long delay_ms)
{
	struct pending *pd = xcalloc(1, sizeof(*pd));
	struct timeval tv = { .tv_sec = delay_ms / 1000, .tv_usec = (delay_ms % 1000) * 1000 };

	pd->peer = p;
	pd->req = req;
	pd->kind = kind;
	pd->timer = evtimer_new(p->base, pending_fire, pd);
	if (!pd->timer || evtimer_add(pd->timer, &tv) < 0)
		fatal("cannot arm a timer");
	pd->next = p->pending;
	if (p->pending)
		p->pending->prev = pd;
	p->pending = pd;
	return pd;
}

/* huge: a 200 whose body (a JSON object with one long string) is 10 MiB. */
#define HUGE_BODY_BYTES (10 * 1024 * 1024)

static void reply_huge(struct evhttp_request *req)
{
	static const char head[] = "{\"access_token\": \"", tail[] = "\"}";
	char *body = xmalloc(HUGE_BODY_BYTES);

	memset(body, 'a', HUGE_BODY_BYTES);
	memcpy(body, head, sizeof(head) - 1);
	memcpy(body + HUGE_BODY_BYTES - (sizeof(tail) - 1), tail, sizeof(tail) - 1);
	reply_raw(req, 200, "application/json", body, HUGE_BODY_BYTES);
	free(body);
}

/* trickle: a 200 that sends TRICKLE_BYTES of JSON whitespace every
 * TRICKLE_MS after its first "{" and never ends, until the client goes
 * (trickle_closed) or the peer stops (pending_fire at shutdown). */
#define TRICKLE_MS 100
#define TRICKLE_BYTES 16

static void trickle_closed(struct evhttp_connection *evcon, void *arg);

static void trickle_start(struct peer *p, struct evhttp_request *req)
{
	struct pending *pd = pending_add(p, req, PENDING_TRICKLE, TRICKLE_MS);
	struct evbuffer *b = evbuffer_new();

	if (!b)
		fatal("out of memory");
	add_header(req, "Content-Type", "application/json");
	evhttp_send_reply_start(req, 200, NULL);
	evbuffer_add(b, "{", 1);
	evhttp_send_reply_chunk(req, b);
	evbuffer_free(b);
	evhttp_connection_set_closecb(evhttp_request_get_connection(req), trickle_closed, pd);
}

/* Answers with an injected failure. Returns 1 when the request is held. */
static int failure_apply(struct peer *p, struct evhttp_request *req, enum fail_mode mode)
{
	static const char malformed[] = "<html><body>502 upstream confused</body>";

	p->stats.failures_injected++;
	record_str(p, "injected", fail_names[mode]);
	switch (mode) {
	case FAIL_500:
		oauth_error(p, req, 500, "server_error", "injected failure");
		break;
	case FAIL_429: {
		char seconds[24];

		snprintf(seconds, sizeof(seconds), "%ld", p->opt.retry_after);
		add_header(req, "Retry-After", seconds);
		oauth_error(p, req, 429, "slow_down", "injected failure");
		break;
	}
	case FAIL_MALFORMED:
		record_outcome(p, 200, "malformed", "injected failure: a 200 whose body is not JSON");
		reply_raw(req, 200, "application/json", malformed, sizeof(malformed) - 1);
		break;
	case FAIL_INVALID_GRANT:
		oauth_error(p, req, 400, "invalid_grant", "injected failure");
		break;
	case FAIL_HANG:
		/* Recorded now: the answer, when it comes, is this one. */
		record_outcome(p, 503, "temporarily_unavailable", "injected hang");
		pending_add(p, req, PENDING_HANG, p->opt.hang_seconds * 1000);
		return 1;
	case FAIL_429_BARE:
		oauth_error(p, req, 429, "slow_down", "injected failure without Retry-After");
		break;
	case FAIL_TRICKLE:
		record_outcome(p, 200, "trickle", "injected failure: a 200 whose body never ends");
		trickle_start(p, req);
		return 1;
	case FAIL_HUGE:
		record_outcome(p, 200, "huge", "injected failure: a 200 with a 10 MiB body");
		reply_huge(req);
		break;
	case FAIL_WRONG_TYPES: {
		static const char wrong[] = "{\"access_token\": 12345, \"token_type\": \"Bearer\", "
					    "\"expires_in\": {\"seconds\": 60}, \"refresh_token\": 678}";

		record_outcome(p, 200, "wrong_types", "injected failure: a 200 with fields of the wrong types");
		reply_raw(req, 200, "application/json", wrong, sizeof(wrong) - 1);
		break;
	}
	case FAIL_INVALID_CLIENT:
		oauth_error(p, req, 401, "invalid_client", "injected failure: client unknown");
		break;
	}
	return 0;
}

/* The request as /test/last shows it: no code, verifier, token or secret.
 * client_id and auth_method are what authentication saw (form values until
 * then); pkce_ok is null until a code's PKCE check has run. */
static void token_record(struct peer *p, const struct evkeyvalq *form)
{
	static const char *const keys[] = { "grant_type", "client_id", "resource", "redirect_uri", "scope" };

	for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
		record_str(p, keys[i], form_get(form, keys[i]));
	record_str(p, "auth_method", NULL);
	json_object_object_add(p->rec, "pkce_ok", NULL);
}

/* The instant a token request arrived, for /test/last's token_requests. */
static void token_log(struct peer *p, const char *grant)
{
	struct json_object *e;

	if (json_object_array_length(p->last.token_requests) >= TOKEN_LOG_MAX)
		return;
	e = json_object_new_object();
	json_object_object_add(e, "at_ms", json_object_new_int64(time_now_ms()));
	json_object_object_add(e, "grant_type", grant ? json_object_new_string(grant) : NULL);
	json_object_array_add(p->last.token_requests, e);
}

/* Returns 1 when the request is held (a hang), 0 once it has been answered. */
static int token_process(struct peer *p, struct evhttp_request *req)
{
	struct evkeyvalq form;
	const struct client *c;
	const char *grant;
	enum fail_mode mode;
	int held = 0, r;

	TAILQ_INIT(&form);
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		reply_method_not_allowed(req, "POST");
		return 0;
	}
	record_start(p, &p->last.token);
	r = form_parse(req, &form);
	if (r)
		evhttp_clear_headers(&form);
	token_record(p, &form);
	token_log(p, form_get(&form, "grant_type"));
	if (r) {
		oauth_error(p, req, r, "invalid_request", "body must be a form with each parameter once");
		goto out;
	}
	grant = form_get(&form, "grant_type");
	if (streq(grant, "refresh_token"))
		p->stats.refresh_requests++;
	else if (streq(grant, "authorization_code"))
		p->stats.code_requests++;
	if (failure_take(p, &mode)) {
		held = failure_apply(p, req, mode);
		goto out;
	}
	if (!grant) {
		oauth_error(p, req, 400, "invalid_request", "grant_type is required");
		goto out;
	}
	if (!streq(grant, "authorization_code") && !streq(grant, "refresh_token")) {
		oauth_error(p, req, 400, "unsupported_grant_type",
			    "grant_type must be authorization_code or refresh_token");
		goto out;
	}
	c = client_authenticate(p, req, &form);
	if (!c)
		goto out;
	if (streq(grant, "authorization_code"))
		grant_code(p, req, &form, c);
	else
		held = grant_refresh(p, req, &form, c);
out:
	evhttp_clear_headers(&form);
	return held;
}

/* A token request is in flight from its arrival to its reply, hangs included:
 * that is what lets a test check the keeper's cap on concurrent refreshes. */
static void handle_token(struct peer *p, struct evhttp_request *req)
{
	if (++p->stats.in_flight > p->stats.max_in_flight)
		p->stats.max_in_flight = p->stats.in_flight;
	if (!token_process(p, req))
		token_done(p);
}

/* ---- /revoke --------------------------------------------------------- */

/* revocations of /test/last: which grant a /revoke named, by its number and
 * never by the token, and whether it took effect (the token was c's). */
static void revocation_record(struct peer *p, const struct atoken *at, const struct rtoken *rt,
			      const struct client *c)
{
	const struct family *fam = at ? at->fam : rt ? rt->fam : NULL;
	struct json_object *e;

	if (!fam || json_object_array_length(p->last.revocations) >= DISCOVERY_LOG_MAX)
		return;
	e = json_object_new_object();
	json_object_object_add(e, "grant", json_object_new_int64(fam->id));
	json_object_object_add(e, "token_type", json_object_new_string(at ? "access_token" : "refresh_token"));
	json_object_object_add(e, "issuer", json_object_new_string(p->req_issuer));
	json_object_object_add(e, "client_id", json_object_new_string(c->id));
	json_object_object_add(e, "revoked", json_object_new_boolean(streq(fam->client_id, c->id)));
	json_object_array_add(p->last.revocations, e);
}

static void handle_revoke(struct peer *p, struct evhttp_request *req)
{
	struct evkeyvalq form;
	const struct client *c;
	const char *token;
	struct atoken *at;
	struct rtoken *rt;
	int r;

	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		reply_method_not_allowed(req, "POST");
		return;
	}
	record_start(p, &p->last.revoke);
	r = form_parse(req, &form);
	if (r)
		evhttp_clear_headers(&form);
	token = form_get(&form, "token");
	/* "known": a token the peer issued and still holds (access tokens are
	 * forgotten a sweep after they expire or are revoked). */
	at = table_get(&p->atokens, token);
	rt = table_get(&p->rtokens, token);
	record_str(p, "token_type_hint", form_get(&form, "token_type_hint"));
	record_str(p, "client_id", form_get(&form, "client_id"));
	record_str(p, "auth_method", NULL);
	record_bool(p, "known", at || rt);
	if (r || !token) {
		oauth_error(p, req, r ? r : 400, "invalid_request", "a form with a token parameter is required");
		goto out;
	}
	/* RFC 7009 2.1: the client authenticates as for the token endpoint. */
	c = client_authenticate(p, req, &form);
	if (!c)
		goto out;
	if (p->login.revoke_fail) {
		oauth_error(p, req, 503, "temporarily_unavailable", "revocation is temporarily unavailable");
		goto out;
	}
	/* 2.2: unknown tokens, and other clients' tokens, get 200 all the same.
	 * A refresh token takes its access tokens with it (the family). */
	if (at && streq(at->fam->client_id, c->id))
		at->revoked = 1;
	if (rt && streq(rt->fam->client_id, c->id))
		rt->fam->revoked = 1;
	revocation_record(p, at, rt, c);
	p->stats.revocations++;
	record_outcome(p, 200, NULL, NULL);
	add_header(req, "Cache-Control", "no-store");
	reply_raw(req, 200, NULL, NULL, 0);
out:
	evhttp_clear_headers(&form);
}

/* ---- MCP -------------------------------------------------------------- */

static void mcp_headers(struct evhttp_request *req, const char *session, int sse)
{
	if (session)
		add_header(req, "Mcp-Session-Id", session);
	if (sse) {
		add_header(req, "Content-Type", "text/event-stream");
		add_header(req, "Cache-Control", "no-cache");
	}
}

/* SSE replies go out chunked, as a streaming server would send them. */
static void mcp_sse_start(struct evhttp_request *req, const char *session)
{
	mcp_headers(req, session, 1);
	log_request(req, 200);
	evhttp_send_reply_start(req, 200, NULL);
}

static void mcp_sse_finish(struct evhttp_request *req, struct json_object *msg)
{
	struct evbuffer *b = evbuffer_new();

	if (!b)
		fatal("out of memory");
	evbuffer_add_printf(b, "event: message\ndata: %s\n\n",
			    json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	evhttp_send_reply_chunk(req, b);
	evbuffer_free(b);
	evhttp_send_reply_end(req);
	json_object_put(msg);
}

static void mcp_send(struct evhttp_request *req, struct json_object *msg, const char *session, int sse)
{
	if (!msg) {
		reply_text(req, 500, "out of memory\n");
		return;
	}
	if (sse) {
		mcp_sse_start(req, session);
		mcp_sse_finish(req, msg);
	} else {
		mcp_headers(req, session, 0);
		reply_json(req, 200, msg);
	}
}

/* SSE when the client accepts only an event stream, or when told to. */
static int mcp_wants_sse(struct peer *p, struct evhttp_request *req)
{
	const char *accept = evhttp_find_header(evhttp_request_get_input_headers(req), "Accept");

	if (p->opt.sse)
		return 1;
	return accept && strcasestr(accept, "text/event-stream") && !strcasestr(accept, "application/json") &&
	       !strstr(accept, "*/*");
}

/* The resource metadata a challenge names: for /mcp the root document (the
 * path-specific one when only that is served), for /sse its own (the root
 * one when only that is served). */
static const char *challenge_prm_path(const struct peer *p, int sse)
{
	if (sse)
		return p->login.prm_paths == PRM_ROOT_ONLY ? PRM_PATH : PRM_PATH "/sse";
	return p->login.prm_paths == PRM_PATH_ONLY ? PRM_PATH "/mcp" : PRM_PATH;
}

/* The access token a request's Bearer credentials name, or NULL. */
static struct atoken *bearer_atoken(struct peer *p, struct evhttp_request *req)
{
	const char *authz = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	const char *token = NULL;

	if (authz && strncasecmp(authz, "Bearer ", 7) == 0) {
		token = authz + 7;
		while (*token == ' ')
			token++;
	}
	return table_get(&p->atokens, token);
}

/* RFC 6750 3 and RFC 9728 5.1: the challenge names the resource metadata of
 * the endpoint asked for (sse: /sse and /messages), and the scope when
 * challenge_scope is set. */
static int mcp_authorized(struct peer *p, struct evhttp_request *req, int sse)
{
	const char *authz = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	const char *sep = " ";
	struct atoken *at = bearer_atoken(p, req);
	char challenge[128 + 2 * KNOB_MAX];
	size_t n;

	if (at && !at->revoked && !at->fam->revoked && at->expires_ms > now_ms() && !p->opt.reject_mcp &&
	    atoken_issuer_ok(p, at))
		return 1;

	/* Every part is bounded (KNOB_MAX), so the buffer always holds them. */
	n = (size_t)snprintf(challenge, sizeof(challenge), "Bearer");
	if (p->login.challenge_metadata) {
		n += (size_t)snprintf(challenge + n, sizeof(challenge) - n, "%sresource_metadata=\"%s%s\"", sep,
				      p->origin, challenge_prm_path(p, sse));
		sep = ", ";
	}
	if (p->login.challenge_scope) {
		n += (size_t)snprintf(challenge + n, sizeof(challenge) - n, "%sscope=\"%s\"", sep,
				      p->login.challenge_scope);
		sep = ", ";
	}
	if (authz)
		snprintf(challenge + n, sizeof(challenge) - n, "%serror=\"invalid_token\"", sep);
	add_header(req, "WWW-Authenticate", challenge);
	p->stats.unauthorized++;
	reply_json(req, 401, rpc_error(NULL, RPC_APP_ERROR, NULL, "unauthorized"));
	return 0;
}

/*
 * tool_scope: a tools/call whose access token was not granted every scope
 * of it is answered 403 insufficient_scope (RFC 6750 3.1) naming the scope
 * needed and the resource metadata, as the MCP authorization spec's scope
 * challenges do. Returns 1 when it answered.
 */
static int mcp_scope_refused(struct peer *p, struct evhttp_request *req, const struct rpc_msg *m)
{
	const char *need = p->login.tool_scope;
	const struct atoken *at;
	char challenge[128 + 2 * KNOB_MAX];

	if (!need || m->type != RPC_REQUEST || strcmp(m->method, "tools/call") != 0)
		return 0;
	at = bearer_atoken(p, req);
	if (at && scope_subset(need, at->scope))
		return 0;
	snprintf(challenge, sizeof(challenge),
		 "Bearer error=\"insufficient_scope\", scope=\"%s\", resource_metadata=\"%s%s\"", need, p->origin,
		 challenge_prm_path(p, 0));
	add_header(req, "WWW-Authenticate", challenge);
	p->stats.insufficient_scope++;
	reply_json(req, 403, rpc_error(m->id, RPC_APP_ERROR, NULL, "insufficient_scope"));
	return 1;
}

static struct json_object *text_content(const char *text)
{
	struct json_object *r = json_object_new_object(), *content = json_object_new_array(),
			   *item = json_object_new_object();

	json_object_object_add(item, "type", json_object_new_string("text"));
	json_object_object_add(item, "text", json_object_new_string(text));
	json_object_array_add(content, item);
	json_object_object_add(r, "content", content);
	return r;
}

static struct json_object *tool_def(const char *name, const char *description, const char *schema)
{
	struct json_object *t = json_object_new_object();

	json_object_object_add(t, "name", json_object_new_string(name));
	json_object_object_add(t, "description", json_object_new_string(description));
	json_object_object_add(t, "inputSchema", json_tokener_parse(schema));
	return t;
}

static struct json_object *mcp_tools_list(void)
{
	struct json_object *r = json_object_new_object(), *tools = json_object_new_array();

	json_object_array_add(tools, tool_def("echo", "Returns its text.",
					      "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}},"
					      "\"required\":[\"text\"]}"));
	json_object_array_add(tools, tool_def("add", "Adds two numbers.",
					      "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"number\"},"
					      "\"b\":{\"type\":\"number\"}},\"required\":[\"a\",\"b\"]}"));
	json_object_array_add(tools, tool_def("slow", "Answers after ms milliseconds.",
					      "{\"type\":\"object\",\"properties\":{\"ms\":{\"type\":\"integer\","
					      "\"minimum\":0,\"maximum\":600000}},\"required\":[\"ms\"]}"));
	json_object_object_add(r, "tools", tools);
	return r;
}

static int is_number(struct json_object *v)
{
	return json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double);
}

/*
 * tools/call. Returns the response to send now, or NULL for the slow tool:
 * then *later is the response to send after *delay_ms.
 */
static struct json_object *mcp_tools_call(struct json_object *id, struct json_object *params, long *delay_ms,
					  struct json_object **later)
{
	struct json_object *name, *args = NULL, *a, *b, *v;
	const char *tool;
	char text[64];

	if (!params || !json_object_object_get_ex(params, "name", &name) ||
	    !json_object_is_type(name, json_type_string))
		return rpc_error(id, RPC_INVALID_PARAMS, NULL, "params.name must be a string");
	tool = json_object_get_string(name);
	json_object_object_get_ex(params, "arguments", &args);
	if (args && !json_object_is_type(args, json_type_object))
		return rpc_error(id, RPC_INVALID_PARAMS, NULL, "params.arguments must be an object");

	if (strcmp(tool, "echo") == 0) {
		if (!args || !json_object_object_get_ex(args, "text", &v) || !json_object_is_type(v, json_type_string))
			return rpc_error(id, RPC_INVALID_PARAMS, NULL, "echo needs a string \"text\"");
		return rpc_result(id, text_content(json_object_get_string(v)));
	}
	if (strcmp(tool, "add") == 0) {
		if (!args || !json_object_object_get_ex(args, "a", &a) || !json_object_object_get_ex(args, "b", &b) ||
		    !is_number(a) || !is_number(b))
			return rpc_error(id, RPC_INVALID_PARAMS, NULL, "add needs numbers \"a\" and \"b\"");
		if (json_object_is_type(a, json_type_int) && json_object_is_type(b, json_type_int)) {
			int64_t sum;

			if (__builtin_add_overflow(json_object_get_int64(a), json_object_get_int64(b), &sum))
				return rpc_error(id, RPC_INVALID_PARAMS, NULL, "sum overflows");
			snprintf(text, sizeof(text), "%" PRId64, sum);
		} else {
			snprintf(text, sizeof(text), "%.17g", json_object_get_double(a) + json_object_get_double(b));
		}
		return rpc_result(id, text_content(text));
	}
	if (strcmp(tool, "slow") == 0) {
		int64_t ms;

		if (!args || !json_object_object_get_ex(args, "ms", &v) || !json_object_is_type(v, json_type_int) ||
		    (ms = json_object_get_int64(v)) < 0 || ms > SLOW_MAX_MS)
			return rpc_error(id, RPC_INVALID_PARAMS, NULL, "slow needs an integer \"ms\" in 0..600000");
		snprintf(text, sizeof(text), "slept %" PRId64 " ms", ms);
		*delay_ms = (long)ms;
		*later = rpc_result(id, text_content(text));
		return NULL;
	}
	return rpc_error(id, RPC_INVALID_PARAMS, NULL, "unknown tool");
}

static struct json_object *mcp_initialize(struct json_object *id, struct json_object *params)
{
	struct json_object *r = json_object_new_object(), *caps = json_object_new_object(),
			   *info = json_object_new_object(), *v;
	const char *version = mcp_versions[0];

	if (params && json_object_object_get_ex(params, "protocolVersion", &v)) {
		for (size_t i = 0; i < ARRAY_SIZE(mcp_versions); i++)
			if (streq(json_object_get_string(v), mcp_versions[i]))
				version = mcp_versions[i];
	}
	json_object_object_add(caps, "tools", json_object_new_object());
	json_object_object_add(info, "name", json_object_new_string(PEER_NAME));
	json_object_object_add(info, "version", json_object_new_string(MCPKEEPER_VERSION));
	json_object_object_add(r, "protocolVersion", json_object_new_string(version));
	json_object_object_add(r, "capabilities", caps);
	json_object_object_add(r, "serverInfo", info);
	return rpc_result(id, r);
}

/* Returns 0 when the request names a live session (then *sid_out, when not
 * NULL, is that id, borrowed from the request), else answers it. */
static int mcp_session_check(struct peer *p, struct evhttp_request *req, const char **sid_out)
{
	const char *sid = evhttp_find_header(evhttp_request_get_input_headers(req), "Mcp-Session-Id");

	if (sid_out)
		*sid_out = sid;
	if (!sid) {
		reply_json(req, 400, rpc_error(NULL, RPC_INVALID_REQUEST, NULL, "Mcp-Session-Id required"));
		return -1;
	}
	if (!table_get(&p->sessions, sid)) {
		reply_json(req, 404, rpc_error(NULL, RPC_INVALID_REQUEST, NULL, "unknown session"));
		return -1;
	}
	return 0;
}

static void session_new(char out[SESSION_CHARS])
{
	unsigned char bin[16];

	randombytes_buf(bin, sizeof(bin));
	sodium_bin2hex(out, SESSION_CHARS, bin, sizeof(bin));
}

/*
 * Reads a JSON-RPC message body into *m. Returns 0, or answers the request
 * (400 with a JSON-RPC error for a bad message) and returns -1.
 */
static int rpc_body(struct evhttp_request *req, struct rpc_msg *m)
{
	_cleanup_(freep) char *body = NULL;
	char detail[128] = "";
	size_t len;
	int r;

	r = body_string(req, &body, &len);
	if (r) {
		reply_text(req, r, "cannot read body\n");
		return -1;
	}
	while (len > 0 && strchr(" \t\r\n", body[len - 1]))
		len--;
	r = frame_parse_line(body, len, m, detail, sizeof(detail));
	if (r) {
		reply_json(req, 400, rpc_error_for_frame(r, detail));
		rpc_msg_clear(m);
		return -1;
	}
	return 0;
}

/*
 * Answers a request other than initialize: the response to send now, or NULL
 * for the slow tool, with *later to send after *delay_ms.
 */
static struct json_object *mcp_request(const struct rpc_msg *m, long *delay_ms, struct json_object **later)
{
	if (strcmp(m->method, "ping") == 0)
		return rpc_result(m->id, NULL);
	if (strcmp(m->method, "tools/list") == 0)
		return rpc_result(m->id, mcp_tools_list());
	if (strcmp(m->method, "tools/call") == 0)
		return mcp_tools_call(m->id, m->params, delay_ms, later);
	return rpc_error(m->id, RPC_METHOD_NOT_FOUND, NULL, "method not found");
}

/* ---- streams and server-initiated messages ------------------------------ */

static void stream_count(struct peer *p, const struct stream *s, long long delta)
{
	if (s->legacy)
		p->stats.sse_streams += delta;
	else
		p->stats.get_streams += delta;
}

static void stream_unlink(struct stream *s)
{
	TAILQ_REMOVE(&s->peer->streams, s, link);
	stream_count(s->peer, s, -1);
}

/* The client went away and libevent is freeing the connection. */
static void stream_closed(struct evhttp_connection *evcon, void *arg)
{
	struct stream *s = arg;

	log_info("%s stream of a session closed by the client", s->legacy ? "SSE" : "GET");
	stream_unlink(s);
	/* A request the connection let go of is ours to free (ending a reply
	 * without a connection frees it); one still attached goes with it. */
	if (!evhttp_request_get_connection(s->req))
		evhttp_send_reply_end(s->req);
	free(s);
}

/* Ends a stream from this side: the last chunk, and the connection is an
 * ordinary one again. */
static void stream_end(struct stream *s)
{
	stream_unlink(s);
	evhttp_connection_set_closecb(s->evcon, NULL, NULL);
	evhttp_connection_set_timeout(s->evcon, PEER_CONN_TIMEOUT_S);
	evhttp_send_reply_end(s->req);
	free(s);
}

/* Ends the streams of session (of that transport), or all when NULL.
 * Returns how many. */
static int streams_end(struct peer *p, const char *session, int legacy)
{
	struct stream *s, *next;
	int n = 0;

	for (s = TAILQ_FIRST(&p->streams); s; s = next) {
		next = TAILQ_NEXT(s, link);
		if (!session || (streq(s->session, session) && s->legacy == legacy)) {
			stream_end(s);
			n++;
		}
	}
	return n;
}

/* The newest open stream of session; legacy < 0: of either transport. */
static struct stream *stream_find(struct peer *p, const char *session, int legacy)
{
	struct stream *s;

	TAILQ_FOREACH_REVERSE(s, &p->streams, stream_list, link)
		if (streq(s->session, session) && (legacy < 0 || s->legacy == legacy))
			return s;
	return NULL;
}

static void stream_event(struct stream *s, const char *event, const char *data)
{
	struct evbuffer *b = evbuffer_new();

	if (!b)
		fatal("out of memory");
	evbuffer_add_printf(b, "event: %s\ndata: %s\n\n", event, data);
	evhttp_send_reply_chunk(s->req, b);
	evbuffer_free(b);
}

/* Sends msg as one "message" event and drops the caller's reference. */
static void stream_send(struct stream *s, struct json_object *msg)
{
	if (!msg)
		fatal("out of memory");
	stream_event(s, "message",
		     json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(msg);
}

/* Starts the event stream that answers req. An HTTP+SSE stream first tells
 * the client where to post its messages. */
static void stream_open(struct peer *p, struct evhttp_request *req, const char *session, int legacy)
{
	struct stream *s = xcalloc(1, sizeof(*s));

	s->peer = p;
	s->req = req;
	s->evcon = evhttp_request_get_connection(req);
	s->legacy = legacy;
	snprintf(s->session, sizeof(s->session), "%s", session);
	TAILQ_INSERT_TAIL(&p->streams, s, link);
	stream_count(p, s, 1);
	evhttp_connection_set_closecb(s->evcon, stream_closed, s);
	evhttp_connection_set_timeout(s->evcon, STREAM_TIMEOUT_S);
	mcp_sse_start(req, NULL);
	if (legacy) {
		char endpoint[64];

		snprintf(endpoint, sizeof(endpoint), "/messages?session_id=%s", session);
		stream_event(s, "endpoint", endpoint);
	}
}

static void srv_request_free(struct srv_request *r)
{
	json_object_put(r->id);
	free(r->method);
	free(r);
}

/* Records a response a client sent back, with the method of the server
 * request it answers (matched by session and id). */
static void response_record(struct peer *p, const char *session, const struct rpc_msg *m)
{
	struct json_object *e = json_object_new_object();
	struct srv_request **pr, *r = NULL;

	for (pr = &p->srv_requests; *pr; pr = &(*pr)->next) {
		if (streq((*pr)->session, session) && json_object_equal((*pr)->id, m->id)) {
			r = *pr;
			*pr = r->next;
			break;
		}
	}
	json_object_object_add(e, "session", json_object_new_string(session));
	json_object_object_add(e, "method", r ? json_object_new_string(r->method) : NULL);
	json_object_object_add(e, "response", json_object_get(m->root));
	json_object_array_add(p->responses, e);
	p->stats.responses_received++;
	if (r)
		srv_request_free(r);
}

/* ---- MCP over streamable HTTP ------------------------------------------- */

/*
 * tools/call of a tool whose name starts with "headers" (any name: the
 * point is what the client made of it): its text is a JSON object of the
 * SEP-2243 headers this request carried and the MCP-Protocol-Version of the
 * session's initialize. NULL for any other request.
 */
static struct json_object *mcp_headers_tool(struct peer *p, struct evhttp_request *req, const struct rpc_msg *m)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *names[][2] = { { "mcp_method", "Mcp-Method" }, { "mcp_name", "Mcp-Name" },
				  { "protocol_version", "MCP-Protocol-Version" } };
	struct json_object *name, *o, *r;

	if (strcmp(m->method, "tools/call") != 0 || !m->params || !json_object_object_get_ex(m->params, "name", &name) ||
	    !json_object_is_type(name, json_type_string) || strncmp(json_object_get_string(name), "headers", 7) != 0)
		return NULL;
	o = json_object_new_object();
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		const char *v = evhttp_find_header(in, names[i][1]);

		json_object_object_add(o, names[i][0], v ? json_object_new_string(v) : NULL);
	}
	json_object_object_add(o, "initialize_protocol_version",
			       p->init_version_header ? json_object_new_string(p->init_version_header) : NULL);
	r = rpc_result(m->id, text_content(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN)));
	json_object_put(o);
	return r;
}

static void mcp_post(struct peer *p, struct evhttp_request *req)
{
	struct rpc_msg m = { 0 };
	struct json_object *reply = NULL, *later = NULL;
	const char *session = NULL;
	int sse = mcp_wants_sse(p, req);
	long delay_ms = 0;

	if (rpc_body(req, &m) < 0)
		return;
	if (m.type == RPC_REQUEST && strcmp(m.method, "initialize") == 0) {
		char *sid = xcalloc(1, SESSION_CHARS);
		const char *pv = evhttp_find_header(evhttp_request_get_input_headers(req), "MCP-Protocol-Version");

		free(p->init_version_header);
		p->init_version_header = pv ? xstrdup(pv) : NULL;

		session_new(sid);
		table_put(&p->sessions, sid, sid);
		session = sid;
		reply = mcp_initialize(m.id, m.params);
	} else {
		const char *sid;

		if (mcp_session_check(p, req, &sid) < 0)
			goto out;
		if (m.type == RPC_RESULT || m.type == RPC_ERROR)
			response_record(p, sid, &m);
		if (m.type != RPC_REQUEST) {
			/* Notifications and responses: accepted, nothing to say. */
			reply_raw(req, 202, NULL, NULL, 0);
			goto out;
		}
		if (mcp_scope_refused(p, req, &m))
			goto out;
		reply = mcp_headers_tool(p, req, &m);
		if (!reply)
			reply = mcp_request(&m, &delay_ms, &later);
	}
	if (later) {
		struct pending *pd = pending_add(p, req, PENDING_SLOW, delay_ms);

		pd->reply = later;
		if (sse) {
			/* Headers now, the event when the tool is done. */
			pd->sse = 1;
			mcp_sse_start(req, NULL);
		}
		goto out;
	}
	mcp_send(req, reply, session, sse);
out:
	rpc_msg_clear(&m);
}

static int accepts_event_stream(struct evhttp_request *req)
{
	const char *accept = evhttp_find_header(evhttp_request_get_input_headers(req), "Accept");

	return accept && strcasestr(accept, "text/event-stream");
}

static void handle_mcp(struct peer *p, struct evhttp_request *req)
{
	const char *sid;

	p->stats.mcp_requests++;
	if (!mcp_authorized(p, req, 0))
		return;
	switch (evhttp_request_get_command(req)) {
	case EVHTTP_REQ_POST:
		mcp_post(p, req);
		break;
	case EVHTTP_REQ_DELETE:
		if (mcp_session_check(p, req, &sid) == 0) {
			streams_end(p, sid, 0);
			free(table_take(&p->sessions, sid));
			reply_raw(req, 200, NULL, NULL, 0);
		}
		break;
	case EVHTTP_REQ_GET:
		/* The server-initiated stream is for clients that can read one. */
		if (!accepts_event_stream(req)) {
			reply_method_not_allowed(req, "GET, POST, DELETE");
			break;
		}
		if (p->stopping) {
			reply_text(req, 503, "shutting down\n");
			break;
		}
		if (mcp_session_check(p, req, &sid) == 0)
			stream_open(p, req, sid, 0);
		break;
	default:
		reply_method_not_allowed(req, "GET, POST, DELETE");
		break;
	}
}

/* ---- MCP over HTTP+SSE (2024-11-05) --------------------------------------- */

static void handle_sse(struct peer *p, struct evhttp_request *req)
{
	char sid[SESSION_CHARS];

	p->stats.sse_requests++;
	if (!mcp_authorized(p, req, 1))
		return;
	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		reply_method_not_allowed(req, "GET");
		return;
	}
	if (p->stopping) {
		reply_text(req, 503, "shutting down\n");
		return;
	}
	session_new(sid);
	stream_open(p, req, sid, 1);
}

static void handle_messages(struct peer *p, struct evhttp_request *req)
{
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	struct json_object *reply = NULL, *later = NULL;
	struct rpc_msg m = { 0 };
	const char *sid;
	struct stream *s;
	struct evkeyvalq q;
	long delay_ms = 0;

	TAILQ_INIT(&q);
	p->stats.sse_requests++;
	if (!mcp_authorized(p, req, 1))
		return;
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		reply_method_not_allowed(req, "POST");
		return;
	}
	if (!query || evhttp_parse_query_str(query, &q) < 0 || !(sid = form_get(&q, "session_id"))) {
		reply_json(req, 400, rpc_error(NULL, RPC_INVALID_REQUEST, NULL, "session_id required"));
		goto out;
	}
	s = stream_find(p, sid, 1);
	if (!s) {
		reply_json(req, 404, rpc_error(NULL, RPC_INVALID_REQUEST, NULL, "unknown session"));
		goto out;
	}
	if (rpc_body(req, &m) < 0)
		goto out;
	reply_raw(req, 202, NULL, NULL, 0);
	switch (m.type) {
	case RPC_RESULT:
	case RPC_ERROR:
		response_record(p, sid, &m);
		break;
	case RPC_NOTIFICATION:
		break;
	case RPC_REQUEST:
		if (strcmp(m.method, "initialize") == 0)
			reply = mcp_initialize(m.id, m.params);
		else
			reply = mcp_request(&m, &delay_ms, &later);
		if (later) {
			struct pending *pd = pending_add(p, NULL, PENDING_EVENT, delay_ms);

			pd->reply = later;
			pd->session = xstrdup(sid);
		} else {
			stream_send(s, reply);
		}
		break;
	}
	rpc_msg_clear(&m);
out:
	evhttp_clear_headers(&q);
}

/* ---- pending replies -------------------------------------------------- */

static void pending_unlink(struct pending *pd)
{
	struct peer *p = pd->peer;

	if (pd->prev)
		pd->prev->next = pd->next;
	else
		p->pending = pd->next;
	if (pd->next)
		pd->next->prev = pd->prev;
	event_free(pd->timer);
	free(pd);
}

/* A trickle's timer (what: EV_TIMEOUT): more whitespace, and 1 (it goes
 * on). At shutdown (what 0): the end of the reply, and 0. */
static int trickle_more(struct pending *pd, short what)
{
	static const char spaces[TRICKLE_BYTES + 1] = "                ";
	struct timeval tv = { .tv_usec = TRICKLE_MS * 1000 };
	struct evbuffer *b;

	if (!(what & EV_TIMEOUT)) {
		evhttp_connection_set_closecb(evhttp_request_get_connection(pd->req), NULL, NULL);
		evhttp_send_reply_end(pd->req);
		token_done(pd->peer);
		return 0;
	}
	b = evbuffer_new();
	if (!b)
		fatal("out of memory");
	evbuffer_add(b, spaces, TRICKLE_BYTES);
	evhttp_send_reply_chunk(pd->req, b);
	evbuffer_free(b);
	evtimer_add(pd->timer, &tv);
	return 1;
}

static void pending_fire(evutil_socket_t fd, short what, void *arg)
{
	struct pending *pd = arg;
	struct peer *p = pd->peer;

	switch (pd->kind) {
	case PENDING_HANG:
		oauth_error(p, pd->req, 503, "temporarily_unavailable", "injected hang");
		token_done(p);
		break;
	case PENDING_TRICKLE:
		if (trickle_more(pd, what))
			return;
		break;
	case PENDING_SLOW:
		if (pd->sse)
			mcp_sse_finish(pd->req, pd->reply);
		else
			mcp_send(pd->req, pd->reply, NULL, 0);
		break;
	case PENDING_TOKEN:
		reply_json(pd->req, 200, pd->reply);
		token_done(p);
		break;
	case PENDING_EVENT: {
		/* The session may have ended meanwhile: then nobody waits. */
		struct stream *s = stream_find(p, pd->session, 1);

		if (s)
			stream_send(s, pd->reply);
		else
			json_object_put(pd->reply);
		free(pd->session);
		break;
	}
	}
	pending_unlink(pd);
}

/* A trickle's client went away: libevent frees the request with the
 * connection unless the connection let go of it (as in stream_closed). */
static void trickle_closed(struct evhttp_connection *evcon, void *arg)
{
	struct pending *pd = arg;

	(void)evcon;
	if (!evhttp_request_get_connection(pd->req))
		evhttp_send_reply_end(pd->req);
	token_done(pd->peer);
	pending_unlink(pd);
}

/* ---- /test ------------------------------------------------------------ */

static struct json_object *stats_json(const struct stats *s)
{
	struct json_object *o = json_object_new_object();

#define STAT(name) json_object_object_add(o, #name, json_object_new_int64(s->name))
	STAT(token_grants);
	STAT(refresh_grants);
	STAT(refresh_requests);
	STAT(failures_injected);
	STAT(reused_refresh_tokens);
	STAT(unauthorized);
	STAT(mcp_requests);
	STAT(in_flight);
	STAT(max_in_flight);
	STAT(registrations);
	STAT(revocations);
	STAT(sse_requests);
	STAT(get_streams);
	STAT(sse_streams);
	STAT(notifications_sent);
	STAT(requests_sent);
	STAT(responses_received);
	STAT(revoke_all);
	STAT(revoke_access_all);
	STAT(authorizations);
	STAT(code_requests);
	STAT(insufficient_scope);
	STAT(foreign_client_id);
#undef STAT
	return o;
}

static struct json_object *string_or_null(const char *s)
{
	return s ? json_object_new_string(s) : NULL;
}

static struct json_object *config_json(const struct peer *p)
{
	const struct login_config *l = &p->login;
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "token_lifetime", json_object_new_int64(p->opt.token_lifetime));
	json_object_object_add(o, "grace", json_object_new_int64(p->opt.grace));
	json_object_object_add(o, "hang_seconds", json_object_new_int64(p->opt.hang_seconds));
	json_object_object_add(o, "rotate", json_object_new_boolean(p->opt.rotate));
	json_object_object_add(o, "require_resource", json_object_new_boolean(p->opt.require_resource));
	json_object_object_add(o, "sse", json_object_new_boolean(p->opt.sse));
	json_object_object_add(o, "expires_in",
			       p->opt.has_expires_in ? json_object_new_int64(p->opt.expires_in) : NULL);
	json_object_object_add(o, "access_token_bytes", json_object_new_int64(p->opt.access_token_bytes));
	json_object_object_add(o, "refresh_token_bytes", json_object_new_int64(p->opt.refresh_token_bytes));
	json_object_object_add(o, "reject_mcp", json_object_new_boolean(p->opt.reject_mcp));
	json_object_object_add(o, "refresh_delay_ms", json_object_new_int64(p->opt.refresh_delay_ms));
	json_object_object_add(o, "s256", json_object_new_boolean(l->s256));
	json_object_object_add(o, "iss", json_object_new_boolean(l->iss));
	json_object_object_add(o, "wrong_iss", json_object_new_boolean(l->wrong_iss));
	json_object_object_add(o, "authorize_error", string_or_null(l->authorize_error));
	json_object_object_add(o, "challenge_scope", string_or_null(l->challenge_scope));
	json_object_object_add(o, "challenge_metadata", json_object_new_boolean(l->challenge_metadata));
	json_object_object_add(o, "prm_paths", json_object_new_string(prm_serve_names[l->prm_paths]));
	json_object_object_add(o, "issuer_path", json_object_new_string(l->issuer_path));
	json_object_object_add(o, "as_metadata", json_object_new_string(as_serve_names[l->as_metadata]));
	json_object_object_add(o, "metadata_issuer", string_or_null(l->metadata_issuer));
	json_object_object_add(o, "registration", json_object_new_boolean(l->registration));
	json_object_object_add(o, "revocation", json_object_new_boolean(l->revocation));
	json_object_object_add(o, "revoke_fail", json_object_new_boolean(l->revoke_fail));
	json_object_object_add(o, "auth_methods", json_object_get(l->auth_methods));
	json_object_object_add(o, "tool_scope", string_or_null(l->tool_scope));
	json_object_object_add(o, "grantable_scopes", json_object_get(l->grantable_scopes));
	json_object_object_add(o, "issuer_bound", json_object_new_boolean(l->issuer_bound));
	json_object_object_add(o, "retry_after", json_object_new_int64(p->opt.retry_after));
	json_object_object_add(o, "expires_in_json",
			       string_or_null(p->opt.has_expires_in_json ? p->opt.expires_in_json : NULL));
	json_object_object_add(o, "omit_refresh_token", json_object_new_boolean(p->opt.omit_refresh_token));
	json_object_object_add(o, "refresh_scope",
			       string_or_null(p->opt.has_refresh_scope ? p->opt.refresh_scope : NULL));
	return o;
}

static int json_long(struct json_object *o, const char *key, long min, long max, long *out)
{
	struct json_object *v;
	int64_t n;

	if (!json_object_object_get_ex(o, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_int) || (n = json_object_get_int64(v)) < min || n > max)
		return -EINVAL;
	*out = (long)n;
	return 0;
}

static int json_flag(struct json_object *o, const char *key, int *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_boolean))
		return -EINVAL;
	*out = json_object_get_boolean(v);
	return 0;
}

/* expires_in: an integer (any), or null for token_lifetime. */
static int json_expires_in(struct json_object *o, struct peer_options *opt)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, "expires_in", &v))
		return 0;
	if (!v) {
		opt->has_expires_in = 0;
		return 0;
	}
	if (!json_object_is_type(v, json_type_int))
		return -EINVAL;
	opt->has_expires_in = 1;
	opt->expires_in = json_object_get_int64(v);
	return 0;
}

/* A string knob kept in a fixed buffer of peer_options (null: none). */
static int json_opt_text(struct json_object *o, const char *key, int (*valid)(const char *), int *has,
			 char *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v))
		return 0;
	if (!v) {
		*has = 0;
		return 0;
	}
	if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) > KNOB_MAX ||
	    strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v) ||
	    !valid(json_object_get_string(v)))
		return -EINVAL;
	*has = 1;
	snprintf(out, KNOB_MAX + 1, "%s", json_object_get_string(v));
	return 0;
}

/* expires_in_json: "" (leave expires_in out) or one JSON value. */
static int valid_json_value(const char *s)
{
	struct json_object *v;

	if (!*s)
		return 1;
	v = json_tokener_parse(s);
	if (!v)
		return 0;
	json_object_put(v);
	return 1;
}

/* A token length knob: 0 (the usual) or TOKEN_BYTES_MIN .. TOKEN_BYTES_MAX. */
static int json_token_bytes(struct json_object *o, const char *key, long *out)
{
	long n = *out;

	if (json_long(o, key, 0, TOKEN_BYTES_MAX, &n) < 0 || (n > 0 && n < TOKEN_BYTES_MIN))
		return -EINVAL;
	*out = n;
	return 0;
}

/* One of names, by its string. */
static int json_choice(struct json_object *o, const char *key, const char *const *names, size_t n, int *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v))
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (json_object_is_type(v, json_type_string) && streq(json_object_get_string(v), names[i])) {
			*out = (int)i;
			return 0;
		}
	}
	return -EINVAL;
}

/* A string knob of at most KNOB_MAX bytes that valid() accepts; null unsets
 * it when nullable. *out is owned and replaced. */
static int json_knob(struct json_object *o, const char *key, int nullable, int (*valid)(const char *), char **out)
{
	struct json_object *v;
	const char *s;

	if (!json_object_object_get_ex(o, key, &v))
		return 0;
	if (!v) {
		if (!nullable)
			return -EINVAL;
		free(*out);
		*out = NULL;
		return 0;
	}
	if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) > KNOB_MAX)
		return -EINVAL;
	s = json_object_get_string(v);
	if (strlen(s) != (size_t)json_object_get_string_len(v) || !valid(s))
		return -EINVAL;
	free(*out);
	*out = xstrdup(s);
	return 0;
}

/* RFC 6749 A.7: an error code, which goes into a redirect. */
static int valid_error_code(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (*s < 0x20 || *s > 0x7e || *s == '"' || *s == '\\')
			return 0;
	return 1;
}

/* RFC 6749 3.3: scope tokens separated by single spaces; also what may go
 * between the quotes of a challenge's auth-param. */
static int valid_scope(const char *s)
{
	int prev_space = 1;

	for (; *s; s++) {
		if (*s == ' ') {
			if (prev_space)
				return 0;
			prev_space = 1;
		} else if (*s < 0x21 || *s > 0x7e || *s == '"' || *s == '\\') {
			return 0;
		} else {
			prev_space = 0;
		}
	}
	return !prev_space;
}

/* "" or "/seg[/seg...]": segments of unreserved characters, none "." or "..". */
static int valid_issuer_path(const char *s)
{
	while (*s) {
		size_t n;

		if (*s++ != '/')
			return 0;
		n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~");
		if (n == 0 || (s[0] == '.' && (n == 1 || (n == 2 && s[1] == '.'))))
			return 0;
		s += n;
	}
	return 1;
}

static int valid_nonempty(const char *s)
{
	return *s != '\0';
}

/*
 * The list knob key: a non-empty array of at most max distinct words (scope
 * tokens: printable, no space or quote, 64 bytes at most); null unsets it
 * when nullable. *out is owned and replaced.
 */
static int json_words(struct json_object *o, const char *key, size_t max, int nullable, struct json_object **out)
{
	struct json_object *v, *a;
	size_t n;

	if (!json_object_object_get_ex(o, key, &v))
		return 0;
	if (!v && nullable) {
		json_object_put(*out);
		*out = NULL;
		return 0;
	}
	if (!json_object_is_type(v, json_type_array) || (n = json_object_array_length(v)) == 0 || n > max)
		return -EINVAL;
	a = json_object_new_array();
	for (size_t i = 0; i < n; i++) {
		struct json_object *m = json_object_array_get_idx(v, i);
		const char *name = json_object_get_string(m);

		if (!json_object_is_type(m, json_type_string) || !valid_scope(name) || strchr(name, ' ') ||
		    strlen(name) > 64 || str_in_array(a, name)) {
			json_object_put(a);
			return -EINVAL;
		}
		json_object_array_add(a, json_object_new_string(name));
	}
	json_object_put(*out);
	*out = a;
	return 0;
}

static void login_config_init(struct login_config *l)
{
	static const char *const auths[] = { "none", "client_secret_basic", "client_secret_post" };

	*l = (struct login_config){
		.s256 = 1,
		.iss = 1,
		.challenge_metadata = 1,
		.prm_paths = PRM_BOTH,
		.issuer_path = xstrdup(""),
		.as_metadata = AS_BOTH,
		.registration = 1,
		.revocation = 1,
		.auth_methods = string_array(auths, ARRAY_SIZE(auths)),
	};
}

static void login_config_copy(struct login_config *dst, const struct login_config *src)
{
	*dst = *src;
	dst->authorize_error = xstrdup(src->authorize_error);
	dst->challenge_scope = xstrdup(src->challenge_scope);
	dst->issuer_path = xstrdup(src->issuer_path);
	dst->metadata_issuer = xstrdup(src->metadata_issuer);
	dst->auth_methods = json_object_get(src->auth_methods);
	dst->tool_scope = xstrdup(src->tool_scope);
	dst->grantable_scopes = json_object_get(src->grantable_scopes);
}

static void login_config_clear(struct login_config *l)
{
	free(l->authorize_error);
	free(l->challenge_scope);
	free(l->issuer_path);
	free(l->metadata_issuer);
	json_object_put(l->auth_methods);
	free(l->tool_scope);
	json_object_put(l->grantable_scopes);
	memset(l, 0, sizeof(*l));
}

/* The login knobs of body into *l; the name of the first bad one, or NULL. */
static const char *login_config_parse(struct login_config *l, struct json_object *body)
{
	int prm = (int)l->prm_paths, as = (int)l->as_metadata;

	if (json_flag(body, "s256", &l->s256) < 0)
		return "s256";
	if (json_flag(body, "iss", &l->iss) < 0)
		return "iss";
	if (json_flag(body, "wrong_iss", &l->wrong_iss) < 0)
		return "wrong_iss";
	if (json_knob(body, "authorize_error", 1, valid_error_code, &l->authorize_error) < 0)
		return "authorize_error";
	if (json_knob(body, "challenge_scope", 1, valid_scope, &l->challenge_scope) < 0)
		return "challenge_scope";
	if (json_flag(body, "challenge_metadata", &l->challenge_metadata) < 0)
		return "challenge_metadata";
	if (json_choice(body, "prm_paths", prm_serve_names, ARRAY_SIZE(prm_serve_names), &prm) < 0)
		return "prm_paths";
	if (json_knob(body, "issuer_path", 0, valid_issuer_path, &l->issuer_path) < 0)
		return "issuer_path";
	if (json_choice(body, "as_metadata", as_serve_names, ARRAY_SIZE(as_serve_names), &as) < 0)
		return "as_metadata";
	if (json_knob(body, "metadata_issuer", 1, valid_nonempty, &l->metadata_issuer) < 0)
		return "metadata_issuer";
	if (json_flag(body, "registration", &l->registration) < 0)
		return "registration";
	if (json_flag(body, "revocation", &l->revocation) < 0)
		return "revocation";
	if (json_flag(body, "revoke_fail", &l->revoke_fail) < 0)
		return "revoke_fail";
	/* Any method names: a test may offer one the peer does not
	 * implement, which /register then refuses. */
	if (json_words(body, "auth_methods", AUTH_METHODS_MAX, 0, &l->auth_methods) < 0)
		return "auth_methods";
	if (json_knob(body, "tool_scope", 1, valid_scope, &l->tool_scope) < 0)
		return "tool_scope";
	if (json_words(body, "grantable_scopes", GRANTABLE_MAX, 1, &l->grantable_scopes) < 0)
		return "grantable_scopes";
	if (json_flag(body, "issuer_bound", &l->issuer_bound) < 0)
		return "issuer_bound";
	l->prm_paths = (enum prm_serve)prm;
	l->as_metadata = (enum as_serve)as;
	return NULL;
}

static void test_fail(struct peer *p, struct evhttp_request *req, struct json_object *body)
{
	struct json_object *v;
	struct failure *f;
	long count = 1;
	size_t mode;

	for (mode = 0; mode < ARRAY_SIZE(fail_names); mode++)
		if (json_object_object_get_ex(body, "mode", &v) && streq(json_object_get_string(v), fail_names[mode]))
			break;
	if (mode == ARRAY_SIZE(fail_names) || json_long(body, "count", 1, 1000000, &count) < 0) {
		reply_text(req, 400, "need mode (500, 429, hang, malformed, invalid_grant, 429_bare, trickle, huge, "
				     "wrong_types, invalid_client) and count 1..1000000\n");
		return;
	}
	f = xcalloc(1, sizeof(*f));
	f->mode = (enum fail_mode)mode;
	f->remaining = count;
	if (p->fail_tail)
		p->fail_tail->next = f;
	else
		p->fail_head = f;
	p->fail_tail = f;
	reply_json(req, 200, json_object_new_object());
}

/* All or nothing: a body with one bad value changes nothing. */
static void test_config(struct peer *p, struct evhttp_request *req, struct json_object *body)
{
	struct peer_options o = p->opt;
	struct login_config l;
	const char *bad = NULL;
	char text[64];

	login_config_copy(&l, &p->login);
	if (json_long(body, "token_lifetime", 1, LIMIT_SECONDS, &o.token_lifetime) < 0)
		bad = "token_lifetime";
	else if (json_long(body, "grace", 0, LIMIT_SECONDS, &o.grace) < 0)
		bad = "grace";
	else if (json_long(body, "hang_seconds", 0, LIMIT_SECONDS, &o.hang_seconds) < 0)
		bad = "hang_seconds";
	else if (json_flag(body, "rotate", &o.rotate) < 0)
		bad = "rotate";
	else if (json_flag(body, "require_resource", &o.require_resource) < 0)
		bad = "require_resource";
	else if (json_flag(body, "sse", &o.sse) < 0)
		bad = "sse";
	else if (json_expires_in(body, &o) < 0)
		bad = "expires_in";
	else if (json_token_bytes(body, "access_token_bytes", &o.access_token_bytes) < 0)
		bad = "access_token_bytes";
	else if (json_token_bytes(body, "refresh_token_bytes", &o.refresh_token_bytes) < 0)
		bad = "refresh_token_bytes";
	else if (json_flag(body, "reject_mcp", &o.reject_mcp) < 0)
		bad = "reject_mcp";
	else if (json_long(body, "retry_after", 0, LIMIT_SECONDS, &o.retry_after) < 0)
		bad = "retry_after";
	else if (json_opt_text(body, "expires_in_json", valid_json_value, &o.has_expires_in_json,
			       o.expires_in_json) < 0)
		bad = "expires_in_json";
	else if (json_flag(body, "omit_refresh_token", &o.omit_refresh_token) < 0)
		bad = "omit_refresh_token";
	else if (json_opt_text(body, "refresh_scope", valid_scope, &o.has_refresh_scope, o.refresh_scope) < 0)
		bad = "refresh_scope";
	else if (json_long(body, "refresh_delay_ms", 0, 600000, &o.refresh_delay_ms) < 0)
		bad = "refresh_delay_ms";
	else
		bad = login_config_parse(&l, body);
	/* Every issuer keeps its place (issuer_bound serves its endpoints). */
	if (!bad && !issuer_known(p, l.issuer_path) && p->nissuers == ISSUERS_MAX)
		bad = "issuer_path";
	if (bad) {
		login_config_clear(&l);
		snprintf(text, sizeof(text), "bad config value: %s\n", bad);
		reply_text(req, 400, text);
		return;
	}
	p->opt = o;
	login_config_clear(&p->login);
	p->login = l;
	discovery_build(p);
	reply_json(req, 200, config_json(p));
}

/* grants of /test/last: every token family, in order of issue. */
static struct json_object *grants_json(const struct peer *p)
{
	struct json_object *a = json_object_new_array();

	for (const struct family *f = p->families; f; f = f->next) {
		struct json_object *e = json_object_new_object();

		json_object_object_add(e, "grant", json_object_new_int64(f->id));
		json_object_object_add(e, "client_id", json_object_new_string(f->client_id));
		json_object_object_add(e, "issuer", json_object_new_string(f->issuer));
		json_object_object_add(e, "scope", json_object_new_string(f->scope));
		json_object_object_add(e, "revoked", json_object_new_boolean(f->revoked));
		/* Families are kept newest first. */
		json_object_array_put_idx(a, (size_t)(f->id - 1), e);
	}
	return a;
}

static struct json_object *last_json(const struct peer *p)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "authorize", json_object_get(p->last.authorize));
	json_object_object_add(o, "token", json_object_get(p->last.token));
	json_object_object_add(o, "register", json_object_get(p->last.registration));
	json_object_object_add(o, "revoke", json_object_get(p->last.revoke));
	json_object_object_add(o, "discovery", json_object_get(p->last.discovery));
	json_object_object_add(o, "authorize_scopes", json_object_get(p->last.authorize_scopes));
	json_object_object_add(o, "revocations", json_object_get(p->last.revocations));
	json_object_object_add(o, "grants", grants_json(p));
	json_object_object_add(o, "token_requests", json_object_get(p->last.token_requests));
	return o;
}

/*
 * /test/notify and /test/request: one message for the newest stream of the
 * named session, or of every session that has one ("*"). Requests get a fresh
 * id each (or the one given) and are remembered until their response.
 */
static void test_push(struct peer *p, struct evhttp_request *req, struct json_object *body, int request)
{
	struct json_object *v, *params = NULL, *given_id = NULL, *ids, *o;
	const char *session = NULL, *method = NULL;
	long long delivered = 0;
	struct stream *s;
	int all;

	if (json_object_object_get_ex(body, "session", &v) && json_object_is_type(v, json_type_string))
		session = json_object_get_string(v);
	if (json_object_object_get_ex(body, "method", &v) && json_object_is_type(v, json_type_string))
		method = json_object_get_string(v);
	if (!session || !*session || !method || !*method ||
	    (json_object_object_get_ex(body, "params", &params) && !json_object_is_type(params, json_type_object)) ||
	    (request && json_object_object_get_ex(body, "id", &given_id) &&
	     !json_object_is_type(given_id, json_type_int) && !json_object_is_type(given_id, json_type_string))) {
		reply_text(req, 400, "need session (an id or \"*\"), method, optional params (an object)"
				     " and for a request an optional id (integer or string)\n");
		return;
	}
	all = strcmp(session, "*") == 0;
	ids = json_object_new_array();
	TAILQ_FOREACH(s, &p->streams, link) {
		struct json_object *msg, *id;

		/* One stream per session: the newest (MCP: never broadcast). */
		if ((!all && !streq(s->session, session)) || stream_find(p, s->session, -1) != s)
			continue;
		if (!request) {
			msg = rpc_notification(method, json_object_get(params));
			p->stats.notifications_sent++;
		} else {
			struct srv_request *r = xcalloc(1, sizeof(*r));

			id = given_id ? json_object_get(given_id) : json_object_new_int64(++p->next_request_id);
			msg = rpc_request(method, json_object_get(params), 0);
			if (!msg || !id)
				fatal("out of memory");
			json_object_object_add(msg, "id", json_object_get(id));
			snprintf(r->session, sizeof(r->session), "%s", s->session);
			r->id = json_object_get(id);
			r->method = xstrdup(method);
			r->next = p->srv_requests;
			p->srv_requests = r;
			json_object_array_add(ids, id);
			p->stats.requests_sent++;
		}
		stream_send(s, msg);
		delivered++;
	}
	o = json_object_new_object();
	json_object_object_add(o, "delivered", json_object_new_int64(delivered));
	if (request) {
		if (delivered == 1)
			json_object_object_add(o, "id", json_object_get(json_object_array_get_idx(ids, 0)));
		json_object_object_add(o, "ids", ids);
	} else {
		json_object_put(ids);
	}
	if (!all && !delivered)
		json_object_object_add(o, "error", json_object_new_string("no open stream for that session"));
	reply_json(req, all || delivered ? 200 : 404, o);
}

static void atoken_revoke(void *val, void *arg)
{
	struct atoken *a = val;
	long long *n = arg;

	if (!a->revoked) {
		a->revoked = 1;
		(*n)++;
	}
}

/* A provider-side mass revocation: every access token issued so far, and
 * with refresh every token family (so every refresh token) too. */
static void test_revoke_all(struct peer *p, struct evhttp_request *req, int refresh)
{
	struct json_object *o = json_object_new_object();
	long long access = 0, families = 0;

	table_foreach(&p->atokens, atoken_revoke, &access);
	json_object_object_add(o, "access_tokens", json_object_new_int64(access));
	if (refresh) {
		for (struct family *f = p->families; f; f = f->next) {
			if (!f->revoked) {
				f->revoked = 1;
				families++;
			}
		}
		json_object_object_add(o, "families", json_object_new_int64(families));
		p->stats.revoke_all++;
	} else {
		p->stats.revoke_access_all++;
	}
	log_info("revoked every access token%s (%lld access tokens, %lld families)",
		 refresh ? " and refresh token" : "", access, families);
	reply_json(req, 200, o);
}

static void handle_test(struct peer *p, struct evhttp_request *req, const char *what)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct json_object *body;
	char *addr = NULL;
	ev_uint16_t port;
	int status;

	/* Bound to loopback already; checked again so that a change of the
	 * listen address can never expose the control endpoints. */
	evhttp_connection_get_peer(evhttp_request_get_connection(req), &addr, &port);
	if (!streq(addr, "127.0.0.1")) {
		reply_text(req, 403, "forbidden\n");
		return;
	}
	if (strcmp(what, "stats") == 0) {
		if (cmd != EVHTTP_REQ_GET)
			reply_method_not_allowed(req, "GET");
		else
			reply_json(req, 200, stats_json(&p->stats));
		return;
	}
	if (strcmp(what, "reset") == 0) {
		if (cmd != EVHTTP_REQ_POST) {
			reply_method_not_allowed(req, "POST");
			return;
		}
		/* in_flight and the open streams are facts, not counters:
		 * requests held and streams open now stay counted. */
		long long in_flight = p->stats.in_flight;
		long long get_streams = p->stats.get_streams, sse_streams = p->stats.sse_streams;

		memset(&p->stats, 0, sizeof(p->stats));
		p->stats.in_flight = p->stats.max_in_flight = in_flight;
		p->stats.get_streams = get_streams;
		p->stats.sse_streams = sse_streams;
		failures_clear(p);
		json_object_put(p->responses);
		p->responses = json_object_new_array();
		recordings_reset(&p->last);
		reply_json(req, 200, json_object_new_object());
		return;
	}
	if (strcmp(what, "last") == 0) {
		if (cmd != EVHTTP_REQ_GET)
			reply_method_not_allowed(req, "GET");
		else
			reply_json(req, 200, last_json(p));
		return;
	}
	if (strcmp(what, "config") == 0 && cmd == EVHTTP_REQ_GET) {
		reply_json(req, 200, config_json(p));
		return;
	}
	if (strcmp(what, "responses") == 0) {
		if (cmd != EVHTTP_REQ_GET)
			reply_method_not_allowed(req, "GET");
		else
			reply_json(req, 200, json_object_get(p->responses));
		return;
	}
	if (strcmp(what, "revoke-all") == 0 || strcmp(what, "revoke-access-all") == 0) {
		if (cmd != EVHTTP_REQ_POST)
			reply_method_not_allowed(req, "POST");
		else
			test_revoke_all(p, req, strcmp(what, "revoke-all") == 0);
		return;
	}
	if (strcmp(what, "fail") != 0 && strcmp(what, "config") != 0 && strcmp(what, "notify") != 0 &&
	    strcmp(what, "request") != 0) {
		reply_text(req, 404, "not found\n");
		return;
	}
	if (cmd != EVHTTP_REQ_POST) {
		reply_method_not_allowed(req, strcmp(what, "config") == 0 ? "GET, POST" : "POST");
		return;
	}
	body = json_body(req, &status);
	if (!body) {
		reply_text(req, status, "body must be a JSON object\n");
		return;
	}
	if (strcmp(what, "fail") == 0)
		test_fail(p, req, body);
	else if (strcmp(what, "config") == 0)
		test_config(p, req, body);
	else
		test_push(p, req, body, strcmp(what, "request") == 0);
	json_object_put(body);
}

/* ---- dispatch and main ------------------------------------------------ */

static void peer_dispatch(struct evhttp_request *req, void *arg)
{
	struct peer *p = arg;
	const char *path = issuer_route(p, request_path(req));

	if (strcmp(path, "/mcp") == 0)
		handle_mcp(p, req);
	else if (strcmp(path, "/sse") == 0)
		handle_sse(p, req);
	else if (strcmp(path, "/messages") == 0)
		handle_messages(p, req);
	else if (strcmp(path, "/token") == 0)
		handle_token(p, req);
	else if (strcmp(path, "/authorize") == 0)
		handle_authorize(p, req);
	else if (strcmp(path, "/register") == 0)
		handle_register(p, req);
	else if (strcmp(path, "/revoke") == 0)
		handle_revoke(p, req);
	else if (strstr(path, "/.well-known/"))
		handle_well_known(p, req, path);
	else if (strncmp(path, "/test/", 6) == 0)
		handle_test(p, req, path + 6);
	else
		reply_text(req, 404, "not found\n");
	/* A record not ended by an outcome (a reply elsewhere) ends here. */
	p->rec = NULL;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct peer *p = arg;

	log_info("signal %d: stopping", (int)sig);
	p->stopping = 1;
	/* Open streams end cleanly; give their last chunks a moment to leave. */
	if (streams_end(p, NULL, 0) > 0) {
		struct timeval tv = { .tv_usec = SHUTDOWN_FLUSH_MS * 1000 };

		event_base_loopexit(p->base, &tv);
	} else {
		event_base_loopexit(p->base, NULL);
	}
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct peer *p = arg;
	int64_t now = now_ms();

	table_sweep(&p->atokens, atoken_dead, now);
	table_sweep(&p->codes, code_dead, now);
}

static void write_port_file(const char *path, int port)
{
	_cleanup_(freep) char *tmp = NULL;
	FILE *f;

	if (asprintf(&tmp, "%s.tmp", path) < 0)
		fatal("out of memory");
	f = fopen(tmp, "we");
	if (!f)
		fatal("cannot write %s: %m", tmp);
	fprintf(f, "PORT %d\nPID %d\n", port, (int)getpid());
	if (fclose(f) != 0 || rename(tmp, path) < 0)
		fatal("cannot write %s: %m", path);
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: " PEER_NAME " [options]\n"
		"  --port N               listen on 127.0.0.1:N (default 0: any free port)\n"
		"  --port-file FILE       write \"PORT n\" and \"PID p\" lines to FILE\n"
		"  --token-lifetime SEC   access token expires_in (default 3600)\n"
		"  --grace SEC            accept the previous refresh token once for SEC after\n"
		"                         rotation (default 0)\n"
		"  --rotate, --no-rotate  rotate refresh tokens (default: rotate)\n"
		"  --require-resource     refuse token requests without an RFC 8707 resource\n"
		"  --client-id ID         a pre-registered client (public unless --client-secret)\n"
		"  --client-secret S      its secret (client_secret_basic or client_secret_post)\n"
		"  --hang-seconds N       how long an injected hang holds a request (default 60)\n"
		"  --sse                  answer MCP requests as SSE streams\n"
		"  --verbose              one log line per request (method, path, status)\n"
		"Everything else about the login (discovery, /authorize, /register, /revoke)\n"
		"is set at run time by POST /test/config; see the top of oauth-peer.c.\n");
}

static void options_parse(struct peer_options *o, int argc, char **argv)
{
	enum { OPT_PORT = 256, OPT_PORT_FILE, OPT_LIFETIME, OPT_GRACE, OPT_ROTATE, OPT_NO_ROTATE, OPT_REQ_RES,
	       OPT_CLIENT_ID, OPT_CLIENT_SECRET, OPT_HANG, OPT_SSE, OPT_VERBOSE, OPT_HELP, OPT_VERSION };
	static const struct option longopts[] = {
		{ "port", required_argument, NULL, OPT_PORT },
		{ "port-file", required_argument, NULL, OPT_PORT_FILE },
		{ "token-lifetime", required_argument, NULL, OPT_LIFETIME },
		{ "grace", required_argument, NULL, OPT_GRACE },
		{ "rotate", no_argument, NULL, OPT_ROTATE },
		{ "no-rotate", no_argument, NULL, OPT_NO_ROTATE },
		{ "require-resource", no_argument, NULL, OPT_REQ_RES },
		{ "client-id", required_argument, NULL, OPT_CLIENT_ID },
		{ "client-secret", required_argument, NULL, OPT_CLIENT_SECRET },
		{ "hang-seconds", required_argument, NULL, OPT_HANG },
		{ "sse", no_argument, NULL, OPT_SSE },
		{ "verbose", no_argument, NULL, OPT_VERBOSE },
		{ "help", no_argument, NULL, OPT_HELP },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	*o = (struct peer_options){ .token_lifetime = 3600, .hang_seconds = 60, .rotate = 1, .retry_after = 1 };
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_PORT:
			if (parse_long(optarg, 0, 65535, &o->port) < 0)
				fatal("--port: expected 0..65535, got \"%s\"", optarg);
			break;
		case OPT_PORT_FILE:
			o->port_file = optarg;
			break;
		case OPT_LIFETIME:
			if (parse_long(optarg, 1, LIMIT_SECONDS, &o->token_lifetime) < 0)
				fatal("--token-lifetime: expected seconds >= 1, got \"%s\"", optarg);
			break;
		case OPT_GRACE:
			if (parse_long(optarg, 0, LIMIT_SECONDS, &o->grace) < 0)
				fatal("--grace: expected seconds >= 0, got \"%s\"", optarg);
			break;
		case OPT_ROTATE:
			o->rotate = 1;
			break;
		case OPT_NO_ROTATE:
			o->rotate = 0;
			break;
		case OPT_REQ_RES:
			o->require_resource = 1;
			break;
		case OPT_CLIENT_ID:
			o->client_id = optarg;
			break;
		case OPT_CLIENT_SECRET:
			o->client_secret = optarg;
			break;
		case OPT_HANG:
			if (parse_long(optarg, 0, LIMIT_SECONDS, &o->hang_seconds) < 0)
				fatal("--hang-seconds: expected seconds >= 0, got \"%s\"", optarg);
			break;
		case OPT_SSE:
			o->sse = 1;
			break;
		case OPT_VERBOSE:
			o->verbose = 1;
			break;
		case OPT_HELP:
			usage(stdout);
			exit(0);
		case OPT_VERSION:
			printf(PEER_NAME " " MCPKEEPER_VERSION "\n");
			exit(0);
		default:
			usage(stderr);
			exit(2);
		}
	}
	if (optind < argc)
		fatal("unexpected argument \"%s\"", argv[optind]);
	if (o->client_secret && !o->client_id)
		fatal("--client-secret needs --client-id");
}

static void peer_listen(struct peer *p)
{
	struct evhttp_bound_socket *bound;
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);

	p->http = evhttp_new(p->base);
	if (!p->http)
		fatal("evhttp_new failed");
	evhttp_set_allowed_methods(p->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE |
						    EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT);
	/* Sizes are refused before buffering: 413 for a body, 400 for headers.
	 * Lingering close reads the rest of an oversized body first, so the
	 * client sees the 413 rather than a reset. */
	evhttp_set_max_body_size(p->http, PEER_MAX_BODY);
	evhttp_set_max_headers_size(p->http, PEER_MAX_HEADERS);
	evhttp_set_flags(p->http, EVHTTP_SERVER_LINGERING_CLOSE);
	evhttp_set_timeout(p->http, PEER_CONN_TIMEOUT_S);
	evhttp_set_gencb(p->http, peer_dispatch, p);

	bound = evhttp_bind_socket_with_handle(p->http, "127.0.0.1", (ev_uint16_t)p->opt.port);
	if (!bound)
		fatal("cannot listen on 127.0.0.1:%ld: %m", p->opt.port);
	if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sin, &len) < 0)
		fatal("getsockname: %m");
	p->port = ntohs(sin.sin_port);
}

static void peer_free(struct peer *p)
{
	/* Answer whatever is still held, then let libevent free the requests. */
	while (p->pending)
		pending_fire(-1, 0, p->pending);
	streams_end(p, NULL, 0);
	evhttp_free(p->http);
	event_free(p->sigterm);
	event_free(p->sigint);
	event_free(p->sweep);
	event_base_free(p->base);
	table_free(&p->clients);
	table_free(&p->codes);
	table_free(&p->atokens);
	table_free(&p->rtokens);
	table_free(&p->sessions);
	while (p->families) {
		struct family *f = p->families;

		p->families = f->next;
		free(f->client_id);
		free(f->scope);
		free(f->resource);
		free(f->issuer);
		free(f);
	}
	failures_clear(p);
	while (p->srv_requests) {
		struct srv_request *r = p->srv_requests;

		p->srv_requests = r->next;
		srv_request_free(r);
	}
	json_object_put(p->responses);
	free(p->init_version_header);
	recordings_free(&p->last);
	login_config_clear(&p->login);
	free(p->prm_json);
	free(p->prm_sse_json);
	free(p->as_json);
	for (size_t i = 0; i < p->nissuers; i++)
		free(p->issuer_paths[i]);
}

int main(int argc, char **argv)
{
	struct peer p = { 0 };
	struct timeval sweep = { .tv_sec = SWEEP_INTERVAL_S };

	log_init(PEER_NAME);
	options_parse(&p.opt, argc, argv);
	log_set_level(p.opt.verbose ? LOG_LEVEL_INFO : LOG_LEVEL_WARN);
	if (sodium_init() < 0)
		fatal("libsodium failed to initialise");
	signal(SIGPIPE, SIG_IGN);

	table_init(&p.clients, client_free);
	table_init(&p.codes, code_free);
	table_init(&p.atokens, atoken_free);
	table_init(&p.rtokens, free);
	table_init(&p.sessions, free);
	TAILQ_INIT(&p.streams);
	p.responses = json_object_new_array();
	recordings_reset(&p.last);
	login_config_init(&p.login);
	if (p.opt.client_id) {
		struct client *c = xcalloc(1, sizeof(*c));

		c->id = xstrdup(p.opt.client_id);
		c->secret = xstrdup(p.opt.client_secret);
		c->method = c->secret ? AUTH_ANY : AUTH_NONE;
		table_put(&p.clients, c->id, c);
	}

	p.base = event_base_new();
	if (!p.base)
		fatal("event_base_new failed");
	peer_listen(&p);
	snprintf(p.origin, sizeof(p.origin), "http://127.0.0.1:%d", p.port);
	snprintf(p.resource, sizeof(p.resource), "%s/mcp", p.origin);
	snprintf(p.resource_sse, sizeof(p.resource_sse), "%s/sse", p.origin);
	discovery_build(&p);
	if (p.opt.client_id)
		((struct client *)table_get(&p.clients, p.opt.client_id))->issuer = xstrdup(p.issuer);

	p.sigterm = evsignal_new(p.base, SIGTERM, on_signal, &p);
	p.sigint = evsignal_new(p.base, SIGINT, on_signal, &p);
	p.sweep = event_new(p.base, -1, EV_PERSIST, on_sweep, &p);
	if (!p.sigterm || !p.sigint || !p.sweep || evsignal_add(p.sigterm, NULL) < 0 ||
	    evsignal_add(p.sigint, NULL) < 0 || evtimer_add(p.sweep, &sweep) < 0)
		fatal("cannot set up signal and timer events");

	if (p.opt.port_file)
		write_port_file(p.opt.port_file, p.port);
	printf("PORT %d\n", p.port);
	fflush(stdout);
	log_info("listening on %s", p.origin);

	event_base_dispatch(p.base);

	peer_free(&p);
	return 0;
}
