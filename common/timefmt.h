/*
 * Times as the outside sees them: RFC 3339 UTC with milliseconds
 * ("2026-12-07T16:40:01.123Z") in event payloads, REST bodies, status
 * replies and the SSE envelope's neighbours, with the seconds since the
 * epoch beside them under a *_unix key. One formatter for every process.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct json_object;

/* Room for any time_text() result, the NUL included. */
#define TIME_TEXT_MAX 32

/* The wall clock (CLOCK_REALTIME) in milliseconds since the epoch. */
int64_t time_now_ms(void);

/* ms since the epoch as RFC 3339 UTC with milliseconds, into buf (which
 * it returns). Times before the epoch are written as the epoch. */
const char *time_text(int64_t ms, char buf[TIME_TEXT_MAX]);

/* Adds key: time_text(ms) and key_unix: ms / 1000 (whole seconds, rounded
 * down) to o; both null when ms is 0 (no such time). */
void time_json_add(struct json_object *o, const char *key, const char *key_unix, int64_t ms);
