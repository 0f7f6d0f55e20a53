/*
 * What the store keeps per server, as plain records: the token record (in
 * "tokens") and the registered OAuth client (in "clients"). Encoding is a
 * small tag-length-value format written into a secret buffer; decoding
 * points the string fields into that buffer, so a decoded record makes no
 * copies of its secrets outside sodium_malloc'ed memory.
 *
 * Format: version byte 1, then fields: tag (1 byte), length (4 bytes, little
 * endian), value. A string value ends in a NUL that the length counts;
 * integer values are 8 bytes little endian. Unknown tags are
 * skipped, so a newer writer's extra fields do not break an older reader.
 */
#pragma once

#include <stdint.h>

struct secret;

struct token {
	const char *access_token;
	const char *refresh_token;	/* NULL: none issued */
	const char *token_type;		/* "Bearer" */
	const char *scope;
	const char *token_endpoint;	/* where refreshes go */
	const char *revocation_endpoint;/* NULL: provider has none (RFC 7009) */
	const char *resource;		/* RFC 8707 resource indicator */
	const char *issuer;
	/* The client the token was issued to: a refresh or a revocation must
	 * present the same one. NULL in records from before logins existed:
	 * then the configured client applies. */
	const char *client_id;
	const char *client_secret;
	const char *auth_method;
	int64_t obtained_at;		/* unix seconds */
	int64_t expires_at;		/* unix seconds; 0: no expiry given */
	/* The same in milliseconds (obtained_at_ms: when the keeper received
	 * the token response). Records from before they existed decode with
	 * the seconds x 1000; writers set both. */
	int64_t obtained_at_ms;
	int64_t expires_at_ms;
	int64_t refused_at;		/* the provider refused the refresh token
					 * (invalid_grant): login needed; 0: no */
	/* The refresh intent: when (unix ms) the keeper sent this record's
	 * refresh token to the token endpoint, written in a transaction of its
	 * own before the request goes out; 0: no refresh in flight. The
	 * answer's record carries none, so its commit removes the intent in
	 * the same transaction; a login's record has none either, and a logout
	 * deletes the record. A record found with one at start was in flight
	 * when the keeper died: the provider may have rotated the refresh
	 * token and we never learnt the new one (daemon/refresh.c). */
	int64_t intent_at_ms;
	struct secret *plain;		/* owns the strings after token_decode() */
};

struct oauth_client {
	const char *client_id;
	const char *client_secret;	/* NULL: public client */
	const char *auth_method;	/* client_secret_basic, client_secret_post, none */
	const char *issuer;
	int64_t registered_at;
	int64_t secret_expires_at;	/* 0: does not expire */
	struct secret *plain;
};

/* Encode into a new secret. Returns 0 or -ENOMEM / -EINVAL (no access token)
 * / -EMSGSIZE (an access or refresh token longer than PROTO_MAX_TOKEN,
 * which decoding refuses too: -EBADMSG). */
int token_encode(const struct token *t, struct secret **out);
/* Decode plain (ownership passes to t, also on failure). Returns 0 or -EBADMSG. */
int token_decode(struct secret *plain, struct token *t);
/* Decode without taking plain: the strings point into it and last as long
 * as it does; t->plain stays NULL. Returns 0 or -EBADMSG. */
int token_view(const struct secret *plain, struct token *t);
/* Sets the times of a token the keeper received at now_ms (wall clock)
 * with expires_in seconds (0 or less: no expiry given). */
void token_set_times(struct token *t, int64_t now_ms, int64_t expires_in);
void token_clear(struct token *t);

int client_encode(const struct oauth_client *c, struct secret **out);
int client_decode(struct secret *plain, struct oauth_client *c);
void client_clear(struct oauth_client *c);
