/*
 * The refresh engine. Every OAuth server with a token has a wall-clock due
 * time: obtained_at + threshold x lifetime. When it comes, the server joins
 * a ready queue ordered by token expiry (earliest deadline first), and at
 * most refresh.max_in_flight refreshes run at once through the oauth child.
 *
 * Failures: transient ones get refresh.max_retries fast retries (1 s, 2 s,
 * 4 s ...); when the last fast retry fails the server turns `error`, one
 * oauth.refresh_failed is emitted, and retries go on with capped exponential
 * backoff (30 s doubling to 5 min, with jitter) until one succeeds, the
 * provider says invalid_grant, or the user logs out. Terminal failures stop
 * at once: status `expired`, login needed.
 *
 * The floor: whatever asks for a refresh (its due time, a retry, a worker's
 * 401), no token request for a server starts less than refresh.min_interval
 * after its last one; a refresh asked for sooner waits on the timer for
 * the floor's end. A worker that asked meanwhile is answered at once
 * (refresh_now() says REFRESH_NOT_NOW), so its clients get an error instead
 * of waiting, and the refresh after the floor brings the new token.
 *
 * A successful refresh commits the new record with a compare-and-swap
 * against the record the refresh started from, so a logout or login that
 * happened meanwhile is never overwritten, and a rotated refresh token is
 * durable before anything else learns of the new access token.
 *
 * The refresh intent: before a refresh token goes out, the record gets an
 * intent (token.h: intent_at_ms) in a transaction of its own; every answer
 * writes the record without it (the new token, the refusal, or for a
 * transient failure the same record). A record that still holds one when
 * the keeper starts was in flight when it died: the provider may have
 * rotated the refresh token and the new one never reached the store.
 * Presenting the old one again could make the provider revoke the whole
 * grant, so the server turns `interrupted` (login needed; the access token
 * serves while it lives), unless refresh.retry_after_crash says to try the
 * old token once.
 *
 * Unless the state directory refuses the write (full, I/O error, read-only):
 * then the refreshed record is kept in memory (server.unstored), used as the
 * current token (the provider may have rotated the refresh token: the new
 * one is the only one that works, so it must not be dropped), and its commit
 * retried with backoff (1 s doubling to 30 s) until it goes through; the
 * stored record stays the old one, whole. No refresh starts from a record
 * that is not stored. A crash meanwhile loses the new token as any crash
 * before a commit would.
 *
 * Only schedule metadata lives here; a record is unsealed for the duration of
 * one refresh.
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <json-c/json.h>
#include <sodium.h>

#include "config.h"
#include "frame.h"
#include "keeper.h"
#include "log.h"
#include "params.h"
#include "proto.h"
#include "secret.h"
#include "sheap.h"
#include "store.h"
#include "timefmt.h"
#include "token.h"
#include "util.h"

#define FAST_RETRY_BASE_MS 1000
#define SLOW_RETRY_MIN_MS 30000
#define SLOW_RETRY_MAX_MS 300000
/* The longest wait a provider's Retry-After imposes on a retry. */
#define RETRY_AFTER_MAX_MS 3600000
/* How long the keeper waits for the oauth child beyond the request timeout. */
#define CHILD_GRACE_MS 15000

/*
 * Timers: one libevent timer for the whole engine, armed for the earliest
 * wall-clock instant in a min-heap of every server's next instant (its due
 * time, its retry, the deadline of a refresh in flight, or the expiry it
 * watches). One event per server would cost memory and libevent's own heap
 * per server; this costs one index.
 */
#define TIMER_BATCH 256		/* servers handled per timer callback at most */

struct refresh {
	struct keeper *k;
	struct sheap ready;	/* ready queue: on token expiry (heap_idx) */
	int in_flight;
	struct sheap due;	/* timers: on due_at_ms (due_idx) */
	struct event *timer;
	int64_t timer_at_ms;	/* the instant the timer is armed for; 0: none */
};

const char *oauth_status_name(enum oauth_status st)
{
	switch (st) {
	case OAUTH_NONE:
		return "none";
	case OAUTH_AUTHENTICATED:
		return "authenticated";
	case OAUTH_EXPIRED:
		return "expired";
	case OAUTH_ERROR:
		return "error";
	}
	return "?";
}

const char *refresh_state_name(enum refresh_state st)
{
	switch (st) {
	case REFRESH_IDLE:
		return "idle";
	case REFRESH_SCHEDULED:
		return "scheduled";
	case REFRESH_REFRESHING:
		return "refreshing";
	case REFRESH_RETRYING:
		return "retrying";
	case REFRESH_FAILED:
		return "failed";
	case REFRESH_INTERRUPTED:
		return "interrupted";
	}
	return "?";
}

static void timer_cb(evutil_socket_t fd, short what, void *arg);
static void unstored_retry(struct keeper *k, struct server *s);

/* The ready queue's order: earliest expiry first. */
static int64_t deadline(const struct server *s)
{
	return s->expires_at_ms ? s->expires_at_ms : INT64_MAX;
}

static int64_t due_at(const struct server *s)
{
	return s->due_at_ms;
}

struct refresh *refresh_new(struct keeper *k)
{
	struct refresh *r = xcalloc(1, sizeof(struct refresh));

	r->k = k;
	r->ready.key = deadline;
	r->ready.pos_off = offsetof(struct server, heap_idx);
	r->due.key = due_at;
	r->due.pos_off = offsetof(struct server, due_idx);
	r->timer = evtimer_new(k->base, timer_cb, r);
	if (!r->timer) {
		free(r);
		return NULL;
	}
	return r;
}

struct refresh *refresh_free(struct refresh *r)
{
	if (r) {
		event_free(r->timer);
		free(r->ready.v);
		free(r->due.v);
		free(r);
	}
	return NULL;
}

/* ---- the two heaps (sheap.c) ---- */

/* Room for n servers in each queue (checked: a reload that cannot have it
 * is refused before it changes anything). 0 or -ENOMEM. */
int refresh_reserve(struct keeper *k, size_t n)
{
	struct sheap *heaps[] = { &k->refresh->ready, &k->refresh->due };

	for (size_t i = 0; i < ARRAY_SIZE(heaps); i++) {
		struct sheap *h = heaps[i];
		struct server **v;

		if (h->cap >= n)
			continue;
		v = realloc(h->v, n * sizeof(*v));
		if (!v)
			return -ENOMEM;
		h->v = v;
		h->cap = n;
	}
	return 0;
}

static struct server *heap_pop(struct refresh *r)
{
	struct server *s = sheap_top(&r->ready);

	if (s)
		sheap_remove(&r->ready, s);
	return s;
}

/* ---- timers ---- */

/* Arms the one timer for the earliest instant in the heap (or none). */
static void timer_update(struct refresh *r)
{
	int64_t at, delay;
	struct timeval tv;

	if (!sheap_top(&r->due)) {
		evtimer_del(r->timer);
		r->timer_at_ms = 0;
		return;
	}
	at = sheap_top(&r->due)->due_at_ms;
	if (at == r->timer_at_ms && evtimer_pending(r->timer, NULL))
		return;
	delay = at - keeper_now_ms();
	if (delay < 0)
		delay = 0;
	tv.tv_sec = delay / 1000;
	tv.tv_usec = (delay % 1000) * 1000;
	evtimer_add(r->timer, &tv);
	r->timer_at_ms = at;
}

static void arm_at(struct server *s, int64_t at_ms)
{
	struct refresh *r = s->k->refresh;

	s->due_at_ms = at_ms;
	sheap_put(&r->due, s);
	timer_update(r);
}

static void disarm(struct server *s)
{
	struct refresh *r = s->k->refresh;

	if (s->due_idx < 0)
		return;
	sheap_remove(&r->due, s);
	timer_update(r);
}

static void dispatch(struct keeper *k);
static void interrupted_emit(struct keeper *k, const struct server *s);
static void settle_record(struct keeper *k, struct server *s, const struct secret *started, bool refused);

/*
 * The instant a token is due for its refresh: obtained_at + threshold x
 * lifetime, rounded down to the millisecond, and never before the floor
 * (refresh.min_interval after the last token request) ends.
 */
static int64_t due_instant(struct keeper *k, const struct server *s)
{
	int64_t lifetime = s->expires_at_ms - s->obtained_at_ms;
	int64_t due = s->obtained_at_ms + (int64_t)(k->cfg->refresh.threshold * (double)lifetime);
	int64_t end = s->last_request_ms + k->cfg->refresh.min_interval_ms;

	if (s->last_request_ms && s->last_request_ms <= keeper_now_ms() && due < end)
		due = end;
	return due;
}

/* Puts the server on its regular schedule from its token's times. */
static void schedule(struct keeper *k, struct server *s)
{
	char at[TIME_TEXT_MAX];

	s->next_at_ms = 0;
	disarm(s);
	if (!s->conf->enabled || s->status == OAUTH_NONE) {
		s->rstate = REFRESH_IDLE;
		return;
	}
	if (s->refused) {
		/* The provider refused the refresh token earlier: login needed. */
		s->rstate = REFRESH_FAILED;
		return;
	}
	if (s->interrupted) {
		/* The old refresh token is not presented again: watch expiry. */
		s->rstate = REFRESH_INTERRUPTED;
		if (s->expires_at_ms && s->status == OAUTH_AUTHENTICATED)
			arm_at(s, s->expires_at_ms);
		return;
	}
	if (!s->has_refresh || s->expires_at_ms == 0) {
		/* Nothing to refresh with (or nothing expires): only watch expiry. */
		s->rstate = REFRESH_IDLE;
		if (s->expires_at_ms && s->status == OAUTH_AUTHENTICATED)
			arm_at(s, s->expires_at_ms);
		return;
	}
	s->next_at_ms = due_instant(k, s);
	s->rstate = REFRESH_SCHEDULED;
	arm_at(s, s->next_at_ms);
	log_info("%s: Proactive refresh scheduled at %s (in %lld ms)", s->name, time_text(s->next_at_ms, at),
		 (long long)(s->next_at_ms - keeper_now_ms()));
}

/* The instant (ms) before which no token request for s may start, when
 * that is still to come; 0 when one may start now. A clock that went back
 * past the last request does not hold the server up. */
static int64_t floor_end(struct keeper *k, const struct server *s, int64_t now)
{
	int64_t end = s->last_request_ms + k->cfg->refresh.min_interval_ms;

	if (!s->last_request_ms || s->last_request_ms > now || end <= now)
		return 0;
	return end;
}

static void enqueue(struct keeper *k, struct server *s)
{
	int64_t end;

	if (s->in_flight || s->heap_idx >= 0)
		return;
	end = floor_end(k, s, keeper_now_ms());
	if (end) {
		/* Too soon after the last token request: the timer brings it
		 * back (server_due(): its state still says scheduled or retrying). */
		s->next_at_ms = end;
		arm_at(s, end);
		return;
	}
	sheap_put(&k->refresh->ready, s);
	dispatch(k);
}

/* A server's instant came. */
static void server_due(struct keeper *k, struct server *s)
{
	if (s->in_flight) {
		/* The oauth child has not answered well past its own timeout. */
		log_error("%s: the oauth child did not answer a refresh; restarting it", s->name);
		if (k->oauth && child_pid(k->oauth) > 0)
			kill(child_pid(k->oauth), SIGKILL);
		return;
	}
	if (s->login_active)
		return; /* the login's end reschedules */
	if (s->unstored) {
		unstored_retry(k, s);
		return;
	}
	if (s->rstate == REFRESH_SCHEDULED || s->rstate == REFRESH_RETRYING) {
		enqueue(k, s);
		return;
	}
	if (s->status == OAUTH_AUTHENTICATED && s->expires_at_ms && s->expires_at_ms <= keeper_now_ms()) {
		s->status = OAUTH_EXPIRED;
		if (s->interrupted) {
			log_warn("%s: access token expired; %s", s->name, REFRESH_INTERRUPTED_MESSAGE);
			interrupted_emit(k, s);
			return;
		}
		log_info("%s: access token expired and there is no refresh token: login needed", s->name);
	}
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct refresh *r = arg;
	int64_t now = keeper_now_ms();

	r->timer_at_ms = 0;
	/* A bounded batch per callback: what a handler arms for now waits for
	 * the next turn of the loop, as a timer of its own would. */
	for (int n = 0; n < TIMER_BATCH; n++) {
		struct server *s = sheap_top(&r->due);

		if (!s || s->due_at_ms > now)
			break;
		sheap_remove(&r->due, s);
		server_due(r->k, s);
	}
	timer_update(r);
}

int refresh_now(struct keeper *k, struct server *s, char *why, size_t len)
{
	int64_t now = keeper_now_ms(), end;

	if (s->in_flight || s->heap_idx >= 0)
		return 0; /* single flight: the waiters get its outcome */
	if (s->interrupted) {
		snprintf(why, len, "%s", REFRESH_INTERRUPTED_MESSAGE);
		return REFRESH_NOT_NOW;
	}
	if (s->login_active) {
		snprintf(why, len, "a login is under way");
		return REFRESH_NOT_NOW;
	}
	if (!s->conf->enabled) {
		snprintf(why, len, "the server is disabled");
		return REFRESH_NOT_NOW;
	}
	if (s->unstored) {
		snprintf(why, len, "%s", s->last_error ? s->last_error : "the last refreshed token is not stored yet");
		return REFRESH_NOT_NOW;
	}
	if (s->not_before_ms > now) {
		/* The retry stays armed for that instant. */
		snprintf(why, len, "the token endpoint asked for no request before %lld ms from now (Retry-After)",
			 (long long)(s->not_before_ms - now));
		return REFRESH_NOT_NOW;
	}
	disarm(s);
	s->rstate = REFRESH_SCHEDULED;
	end = floor_end(k, s, now);
	if (end) {
		s->next_at_ms = end;
		arm_at(s, end);
		snprintf(why, len,
			 "the token was rejected %lld ms after the last token request; the next one is in %lld ms "
			 "(refresh.min_interval)",
			 (long long)(now - s->last_request_ms), (long long)(end - now));
		return REFRESH_NOT_NOW;
	}
	s->next_at_ms = now;
	enqueue(k, s);
	return 0;
}

/*
 * The wall clock moved by delta_ms against the monotonic one (keeper.c's
 * maintenance tick sees it). Real time never goes back: after a backward
 * jump every instant of every server (token times, due times, the floor)
 * moves back with the clock, so each refresh keeps its real distance and
 * none comes late. A forward jump is a resume (real time passed) or a
 * clock set right: token instants stay, and what the jump made due is
 * refreshed once; only the watchdog of a refresh in flight, a duration,
 * moves with the clock, so the oauth child is not taken for hung.
 */
static void shift(int64_t *at, int64_t delta_ms)
{
	if (*at)
		*at += delta_ms;
}

void refresh_clock_moved(struct keeper *k, int64_t delta_ms)
{
	struct refresh *r = k->refresh;

	for (size_t i = 0; i < k->n_servers; i++) {
		struct server *s = k->servers[i];
		bool armed = s->due_idx >= 0;

		if (delta_ms > 0 && !s->in_flight)
			continue;
		/* Keys of both heaps change: take the server out and put it back. */
		if (armed)
			sheap_remove(&r->due, s);
		if (delta_ms < 0) {
			bool queued = s->heap_idx >= 0;

			if (queued)
				sheap_remove(&r->ready, s);
			shift(&s->obtained_at_ms, delta_ms);
			shift(&s->expires_at_ms, delta_ms);
			shift(&s->last_request_ms, delta_ms);
			shift(&s->next_at_ms, delta_ms);
			shift(&s->not_before_ms, delta_ms);
			if (queued)
				sheap_put(&r->ready, s);
		}
		if (armed) {
			s->due_at_ms += delta_ms;
			sheap_put(&r->due, s);
		}
	}
	refresh_rearm_all(k);
}

void refresh_rearm_all(struct keeper *k)
{
	/* Instants are wall-clock: only the delay to the first one changed. */
	k->refresh->timer_at_ms = 0;
	evtimer_del(k->refresh->timer);
	timer_update(k->refresh);
}

/* ---- outcomes ---- */

static struct json_object *event_data(const struct server *s)
{
	struct json_object *d = json_object_new_object();

	json_object_object_add(d, PARAM_KEY_SERVER_NAME, json_object_new_string(s->name));
	return d;
}

/* Ends the in-flight state; returns the record the refresh started from. */
static struct secret *finish_request(struct keeper *k, struct server *s)
{
	struct secret *plain = s->request_plain;

	s->request_plain = NULL;
	if (s->in_flight) {
		s->in_flight = false;
		k->refresh->in_flight--;
	}
	disarm(s);
	return plain;
}

/* The retry's delay: the backoff's, or the provider's Retry-After when that
 * is longer (capped), which *asked then says for the log. */
static int64_t retry_delay(int64_t backoff_ms, int64_t wait_ms, char *asked, size_t len)
{
	if (wait_ms <= backoff_ms)
		return backoff_ms;
	snprintf(asked, len, " (the provider's Retry-After: %lld s%s)", (long long)(wait_ms / 1000),
		 wait_ms > RETRY_AFTER_MAX_MS ? ", capped at 1 hour" : "");
	return wait_ms > RETRY_AFTER_MAX_MS ? RETRY_AFTER_MAX_MS : wait_ms;
}

static void refresh_failed_wait(struct keeper *k, struct server *s, bool terminal, const char *error,
				int64_t wait_ms)
{
	struct json_object *d;
	int64_t delay;
	int max = k->cfg->refresh.max_retries;
	char asked[80] = "";

	server_set_error(s, "%s", error);
	if (terminal) {
		log_warn("%s: refresh refused (%s): login needed", s->name, error);
		s->status = OAUTH_EXPIRED;
		s->rstate = REFRESH_FAILED;
		s->next_at_ms = 0;
		d = event_data(s);
		json_object_object_add(d, PARAM_KEY_ERROR, json_object_new_string(error));
		events_emit(k, EVENT_REFRESH_FAILED, d);
		workers_refresh_done(k, s, KIND_UNAVAILABLE, error);
		return;
	}

	s->retry_count++;
	if (s->retry_count <= max) {
		delay = retry_delay((int64_t)FAST_RETRY_BASE_MS << (s->retry_count - 1), wait_ms, asked,
				    sizeof(asked));
		log_warn("%s: refresh failed (%s); retry %d of %d in %lld s%s", s->name, error, s->retry_count,
			 max, (long long)(delay / 1000), asked);
	} else {
		int slow = s->retry_count - max - 1;

		delay = SLOW_RETRY_MIN_MS;
		while (slow-- > 0 && delay < SLOW_RETRY_MAX_MS)
			delay *= 2;
		if (delay > SLOW_RETRY_MAX_MS)
			delay = SLOW_RETRY_MAX_MS;
		/* +-10 % so that many servers failing together do not retry together. */
		delay += (int64_t)randombytes_uniform((uint32_t)(delay / 5)) - delay / 10;
		delay = retry_delay(delay, wait_ms, asked, sizeof(asked));
		s->status = OAUTH_ERROR;
		if (!s->failed_reported) {
			s->failed_reported = true;
			log_warn("%s: Proactive refresh failed after max retries (%d): %s; next try in %lld s%s",
				 s->name, max, error, (long long)(delay / 1000), asked);
			d = event_data(s);
			json_object_object_add(d, PARAM_KEY_ERROR, json_object_new_string(error));
			events_emit(k, EVENT_REFRESH_FAILED, d);
		} else {
			log_warn("%s: refresh failed (%s) after %d attempts; next try in %lld s%s", s->name, error,
				 s->retry_count, (long long)(delay / 1000), asked);
		}
	}
	s->rstate = REFRESH_RETRYING;
	s->next_at_ms = keeper_now_ms() + delay;
	/* wait_ms: what the provider's Retry-After asked for (0: nothing). No
	 * token request goes out before it ends (up to RETRY_AFTER_MAX_MS), not
	 * even a worker's, also when the backoff's retry comes later anyway. */
	s->not_before_ms = wait_ms > 0 ? keeper_now_ms() + (wait_ms > RETRY_AFTER_MAX_MS ? RETRY_AFTER_MAX_MS : wait_ms)
				       : 0;
	arm_at(s, s->next_at_ms);
	/* A worker waiting for this refresh answers its clients now; the retry
	 * that succeeds brings it the token. */
	workers_refresh_done(k, s, KIND_TRANSIENT, error);
}

static void refresh_failed(struct keeper *k, struct server *s, bool terminal, const char *error)
{
	refresh_failed_wait(k, s, terminal, error, 0);
}

static void apply_token(struct server *s, const struct token *t)
{
	s->obtained_at_ms = t->obtained_at_ms;
	s->expires_at_ms = t->expires_at_ms;
	s->has_refresh = t->refresh_token != NULL && !t->refused_at;
	s->refused = t->refused_at != 0;
	s->interrupted = t->intent_at_ms != 0 && !s->k->cfg->refresh.retry_after_crash;
	if (s->refused) {
		s->status = OAUTH_EXPIRED;
		server_set_error(s, "invalid_grant");
		return;
	}
	if (t->expires_at_ms && t->expires_at_ms <= keeper_now_ms())
		s->status = t->refresh_token && !s->interrupted ? OAUTH_AUTHENTICATED : OAUTH_EXPIRED;
	else
		s->status = OAUTH_AUTHENTICATED;
}

/* ---- a refreshed record the store refused ---- */

#define UNSTORED_RETRY_MAX_MS 30000

void refresh_unstored_drop(struct server *s)
{
	s->unstored = secret_free(s->unstored);
	s->unstored_base = secret_free(s->unstored_base);
	s->unstored_tries = 0;
}

/* The next try at committing s->unstored: 1 s, doubling to 30 s. */
static void unstored_arm(struct keeper *k, struct server *s)
{
	int64_t delay = FAST_RETRY_BASE_MS;

	for (int i = 0; i < s->unstored_tries && delay < UNSTORED_RETRY_MAX_MS; i++)
		delay *= 2;
	if (delay > UNSTORED_RETRY_MAX_MS)
		delay = UNSTORED_RETRY_MAX_MS;
	s->unstored_tries++;
	disarm(s);
	s->rstate = REFRESH_RETRYING;
	s->next_at_ms = keeper_now_ms() + delay;
	arm_at(s, s->next_at_ms);
}

/*
 * The store refused the refreshed record (status r < 0): keep it (taking
 * plain) and the record it replaces, say why, retry. 0, or -ENOMEM when the
 * copy of base cannot be made (then the caller fails the refresh as before).
 */
static int unstored_keep(struct keeper *k, struct server *s, const struct secret *base, struct secret *plain,
			 int r)
{
	struct secret *b = s->unstored_base ? NULL : secret_from(base->data, base->len);

	if (!s->unstored_base && !b)
		return -ENOMEM;
	if (b)
		s->unstored_base = b;
	secret_free(s->unstored);
	s->unstored = plain;
	s->unstored_tries = 0;
	log_error("%s: storing the refreshed token failed: %s; it is kept in memory and stored when the state "
		  "directory takes writes again",
		  s->name, store_strerror(r));
	server_set_error(s, "%s: the refreshed token is kept in memory until it can be stored", store_strerror(r));
	unstored_arm(k, s);
	return 0;
}

void refresh_unstored_last(struct keeper *k, struct server *s)
{
	int r;

	if (!s->unstored)
		return;
	r = store_update(k->store, STORE_TOKENS, s->key, s->unstored_base, s->unstored);
	if (r == 0)
		log_info("%s: the refreshed token is stored now", s->name);
	else
		log_error("%s: the refreshed token the state directory did not take is lost (%s); the stored one "
			  "is older: if the provider rotated it, log in again",
			  s->name, store_strerror(r));
	refresh_unstored_drop(s);
}

static void unstored_retry(struct keeper *k, struct server *s)
{
	int r = store_update(k->store, STORE_TOKENS, s->key, s->unstored_base, s->unstored);

	if (r == STORE_E_CONFLICT) {
		log_warn("%s: the token record changed while the refreshed token waited to be stored (login or "
			 "logout); the refreshed token is dropped",
			 s->name);
		refresh_unstored_drop(s);
		refresh_load(k, s);
		workers_token_changed(k, s);
		return;
	}
	if (r != 0) {
		log_warn("%s: storing the refreshed token still fails (try %d): %s", s->name, s->unstored_tries,
			 store_strerror(r));
		server_set_error(s, "%s: the refreshed token is kept in memory until it can be stored",
				 store_strerror(r));
		unstored_arm(k, s);
		return;
	}
	log_info("%s: the refreshed token is stored now (after %d tries)", s->name, s->unstored_tries);
	refresh_unstored_drop(s);
	s->retry_count = 0;
	s->failed_reported = false;
	server_set_error(s, NULL);
	schedule(k, s);
}

static void refresh_succeeded(struct keeper *k, struct server *s, const struct secret *started,
			      struct json_object *result)
{
	struct secret *plain = NULL;
	struct token_result tr;
	struct token old, t;
	/* obtained_at: the instant the token response reached the keeper. */
	int64_t now_ms = keeper_now_ms(), expires_in;
	char why[256];
	int r;

	if (token_view(started, &old) < 0) {
		refresh_failed(k, s, false, "internal error decoding the token record");
		return;
	}
	if (refresh_result_parse(result, s->name, &tr, why, sizeof(why)) < 0) {
		token_clear(&old);
		settle_record(k, s, started, false);
		refresh_failed(k, s, false, why);
		return;
	}
	t = old;
	t.plain = NULL;
	t.intent_at_ms = 0;	/* this commit ends the intent */
	t.access_token = tr.access_token;
	if (tr.token_type)
		t.token_type = tr.token_type;
	/* No refresh_token in the response: keep the one we have (RFC 6749 6). */
	if (tr.refresh_token)
		t.refresh_token = tr.refresh_token;
	if (tr.scope && (!old.scope || strcmp(tr.scope, old.scope) != 0))
		log_info("%s: the token endpoint granted scope \"%s\" (was %s%s%s)", s->name, tr.scope,
			 old.scope ? "\"" : "", old.scope ? old.scope : "none", old.scope ? "\"" : "");
	if (tr.scope)
		t.scope = tr.scope;
	expires_in = tr.expires_in;
	token_set_times(&t, now_ms, expires_in);

	r = token_encode(&t, &plain);
	if (r == 0)
		r = store_update(k->store, STORE_TOKENS, s->key, started, plain);
	if (r < 0 && plain && unstored_keep(k, s, started, plain, r) == 0) {
		apply_token(s, &t);
		token_clear(&old);
		workers_token_changed(k, s);
		workers_refresh_done(k, s, NULL, NULL);
		return;
	}
	secret_free(plain);
	if (r == STORE_E_CONFLICT) {
		token_clear(&old);
		log_info("%s: the token record changed during the refresh (logout or login); result dropped",
			 s->name);
		refresh_load(k, s);
		return;
	}
	if (r != 0) {
		token_clear(&old);
		log_error("%s: storing the refreshed token failed: %s", s->name, store_strerror(r));
		refresh_failed(k, s, false, "storing the refreshed token failed");
		return;
	}
	apply_token(s, &t);
	token_clear(&old);
	s->not_before_ms = 0;
	s->retry_count = 0;
	s->failed_reported = false;
	server_set_error(s, NULL);
	if (expires_in)
		log_info("%s: Proactive refresh succeeded: token refreshed, expires in %lld s", s->name,
			 (long long)expires_in);
	else
		log_info("%s: Proactive refresh succeeded: token refreshed, no expires_in given: used until the "
			 "upstream rejects it", s->name);
	schedule(k, s);
	/* Committed above: only now may a worker use the new token. */
	workers_token_changed(k, s);
	workers_refresh_done(k, s, NULL, NULL);
	{
		struct json_object *d = event_data(s);

		time_json_add(d, PARAM_KEY_OBTAINED_AT, PARAM_KEY_OBTAINED_AT_UNIX, s->obtained_at_ms);
		time_json_add(d, PARAM_KEY_EXPIRES_AT, PARAM_KEY_EXPIRES_AT_UNIX, s->expires_at_ms);
		time_json_add(d, PARAM_KEY_NEXT_REFRESH_AT, PARAM_KEY_NEXT_REFRESH_AT_UNIX,
			      s->rstate == REFRESH_SCHEDULED ? s->next_at_ms : 0);
		json_object_object_add(d, PARAM_KEY_SCOPE, t.scope ? json_object_new_string(t.scope) : NULL);
		events_emit(k, EVENT_TOKEN_REFRESHED, d);
	}
}

static void interrupted_emit(struct keeper *k, const struct server *s)
{
	struct json_object *d = event_data(s);

	json_object_object_add(d, PARAM_KEY_OAUTH_STATUS, json_object_new_string(oauth_status_name(s->status)));
	events_emit(k, EVENT_REFRESH_INTERRUPTED, d);
}

/*
 * Writes the record the refresh started from back without its intent, the
 * request having been answered without a new token; with refused, it also
 * remembers that the provider refused the refresh token, so a restarted
 * keeper does not present the dead token again: login needed.
 */
static void settle_record(struct keeper *k, struct server *s, const struct secret *started, bool refused)
{
	struct secret *plain = NULL;
	struct token t;
	int r;

	if (token_view(started, &t) < 0)
		return;
	if (refused)
		t.refused_at = keeper_now();
	t.intent_at_ms = 0;
	r = token_encode(&t, &plain);
	if (r == 0)
		r = store_update(k->store, STORE_TOKENS, s->key, started, plain);
	if (r != 0 && r != STORE_E_CONFLICT)
		log_warn("%s: could not record %s: %s (the record keeps its refresh intent: a keeper that died "
			 "before the next refresh is stored would take this server for interrupted)",
			 s->name, refused ? "that the refresh token was refused" : "the end of the refresh",
			 store_strerror(r));
	secret_free(plain);
	token_clear(&t);
}

static void on_reply(struct keeper *k, void *ctx, struct json_object *result, struct json_object *error)
{
	struct server *s = ctx;
	struct secret *started;

	if (!s->in_flight)
		return;
	started = finish_request(k, s);
	if (result) {
		refresh_succeeded(k, s, started, result);
	} else {
		struct json_object *data = NULL, *kind = NULL, *oerr = NULL, *msg = NULL, *after = NULL;
		bool terminal;
		const char *why;
		int64_t wait_ms = 0;

		json_object_object_get_ex(error, PARAM_KEY_DATA, &data);
		json_object_object_get_ex(data, PARAM_KEY_KIND, &kind);
		json_object_object_get_ex(data, PARAM_KEY_OAUTH_ERROR, &oerr);
		json_object_object_get_ex(error, PARAM_KEY_MESSAGE, &msg);
		if (json_object_object_get_ex(data, PARAM_KEY_RETRY_AFTER, &after) &&
		    json_object_is_type(after, json_type_int) && json_object_get_int64(after) > 0 &&
		    json_object_get_int64(after) <= PROTO_MAX_RETRY_AFTER)
			wait_ms = json_object_get_int64(after) * 1000;
		terminal = kind && strcmp(json_object_get_string(kind), KIND_TERMINAL) == 0;
		/* A refusal is named by its OAuth error; a transient failure by the
		 * child's message, which has the HTTP status too ("HTTP 429: slow_down"). */
		why = oerr && (terminal || !msg) ? json_object_get_string(oerr)
		      : msg			   ? json_object_get_string(msg)
						   : "unknown error";
		if (terminal && oerr && strcmp(why, "invalid_client") == 0)
			why = login_client_rejected(k, s, started);
		settle_record(k, s, started, terminal);
		refresh_failed_wait(k, s, terminal, why, wait_ms);
	}
	secret_free(started);
	dispatch(k);
}

/* ---- starting a refresh ---- */

static void add_str(struct json_object *o, const char *key, const char *val)
{
	if (val)
		json_object_object_add(o, key, json_object_new_string(val));
}

/* Starts one refresh, or settles why it cannot run. */
/*
 * The store answered -EAGAIN: a group site whose master is bringing a
 * joining site up to date holds operations back for a few seconds
 * (DB_REP_CONF_NOWAIT makes that an error instead of a wait). The refresh
 * keeps its state and comes back shortly, without counting as a retry.
 */
#define STORE_BUSY_RETRY_MS 500

static void store_busy(struct keeper *k, struct server *s)
{
	log_debug("%s: the store is busy (replication); refreshing in %d ms", s->name, STORE_BUSY_RETRY_MS);
	s->next_at_ms = keeper_now_ms() + STORE_BUSY_RETRY_MS;
	arm_at(s, s->next_at_ms);
	workers_refresh_done(k, s, KIND_BUSY, "the store is busy (replication): try again shortly");
}

/*
 * In a replication group, the intent just committed (with a majority's
 * acknowledgement) is read back: on the master, Berkeley DB checks its lease
 * for the read, so a master that lost its lease (paused, cut off: another
 * may be master by now) learns it here (STORE_E_NOT_MASTER) and does not
 * send. Leases cannot cover a pause between this read and the send; the
 * acknowledged intent is what keeps a new master from presenting the same
 * refresh token.
 */
static int intent_confirm(struct keeper *k, struct server *s, const struct secret *intent)
{
	struct secret *now = NULL;
	int r = store_get(k->store, STORE_TOKENS, s->key, &now);

	if (r == 0 && !secret_equal(now, intent))
		r = STORE_E_CONFLICT;
	secret_free(now);
	return r;
}

static void start_refresh(struct keeper *k, struct server *s)
{
	const struct config_oauth *co = &s->conf->oauth;
	struct secret *plain = NULL, *intent = NULL;
	struct json_object *params;
	struct token t;
	const char *client_id, *client_secret, *method;
	int r;

	/* Every way out without a request answers the workers waiting for
	 * one (workers_refresh_done() does nothing when none waits). */
	if (s->unstored) {
		/* Its record is not stored: no refresh may start from the old one. */
		workers_refresh_done(k, s, KIND_TRANSIENT, "the last refreshed token is not stored yet");
		return;
	}
	if (s->login_active || !s->conf->enabled) {
		/* login will reschedule; disabled servers wait */
		if (s->login_active)
			workers_refresh_done(k, s, KIND_BUSY, "a login is under way");
		else
			workers_refresh_done(k, s, KIND_UNAVAILABLE, "the server is disabled");
		return;
	}

	r = store_get(k->store, STORE_TOKENS, s->key, &plain);
	if (r == -EAGAIN) {
		store_busy(k, s);
		return;
	}
	if (r == STORE_E_NOT_FOUND) {
		s->status = OAUTH_NONE;
		s->rstate = REFRESH_IDLE;
		workers_refresh_done(k, s, KIND_UNAVAILABLE, "logged out");
		return;
	}
	if (r != 0) {
		log_error("%s: token record %s: %s", s->name, s->key, store_strerror(r));
		server_set_error(s, "token record: %s", store_strerror(r));
		s->status = OAUTH_ERROR;
		s->rstate = REFRESH_FAILED;
		workers_refresh_done(k, s, KIND_INTERNAL, "the token record cannot be read");
		return;
	}
	/* t points into plain, which the refresh keeps (request_plain). */
	if (token_view(plain, &t) < 0) {
		secret_free(plain);
		log_error("%s: token record %s does not decode", s->name, s->key);
		s->status = OAUTH_ERROR;
		s->rstate = REFRESH_FAILED;
		server_set_error(s, "token record does not decode");
		workers_refresh_done(k, s, KIND_INTERNAL, "the token record does not decode");
		return;
	}
	if (!t.refresh_token || !t.token_endpoint) {
		apply_token(s, &t);
		token_clear(&t);
		secret_free(plain);
		schedule(k, s);
		workers_refresh_done(k, s, KIND_UNAVAILABLE, "there is no refresh token: log in again");
		return;
	}

	/* The client the token was issued to; older records name none: then
	 * the configured one. */
	client_id = t.client_id ? t.client_id : co->client_id;
	client_secret = t.client_id ? t.client_secret : co->client_secret;
	method = t.client_id && t.auth_method ? t.auth_method : client_secret ? "client_secret_basic" : "none";
	if (!client_id) {
		token_clear(&t);
		secret_free(plain);
		refresh_failed(k, s, true, "no client_id (configure oauth.client_id or log in again)");
		return;
	}

	params = json_object_new_object();
	add_str(params, PARAM_KEY_SERVER, s->name);
	add_str(params, PARAM_KEY_TOKEN_ENDPOINT, t.token_endpoint);
	add_str(params, PARAM_KEY_REFRESH_TOKEN, t.refresh_token);
	add_str(params, PARAM_KEY_CLIENT_ID, client_id);
	add_str(params, PARAM_KEY_CLIENT_SECRET, client_secret);
	add_str(params, PARAM_KEY_AUTH_METHOD, method);
	add_str(params, PARAM_KEY_RESOURCE, t.resource ? t.resource : co->resource ? co->resource : s->conf->url);
	flow_add_policy(params, s->conf, NULL);
	json_object_object_add(params, PARAM_KEY_TIMEOUT_MS,
			       json_object_new_int64((int64_t)k->cfg->refresh.timeout_sec * 1000));

	/* The intent is durable before the refresh token leaves. */
	t.intent_at_ms = keeper_now_ms();
	r = token_encode(&t, &intent);
	if (r == 0)
		r = store_update(k->store, STORE_TOKENS, s->key, plain, intent);
	token_clear(&t);
	secret_free(plain);
	plain = NULL;
	if (r == STORE_E_NO_QUORUM) {
		/* Committed here but not acknowledged by a majority: the refresh
		 * does not go out, and the intent goes again (it may have reached
		 * no replica). */
		settle_record(k, s, intent, false);
	} else if (r == 0 && store_is_group(k->store)) {
		r = intent_confirm(k, s, intent);
	}
	if (r != 0) {
		rpc_wipe_put(params);
		secret_free(intent);
		if (r == -EAGAIN) {
			/* Nothing was written, nothing went out. */
			store_busy(k, s);
			return;
		}
		if (r == STORE_E_CONFLICT) {
			/* A login or logout came first: its record decides. */
			refresh_load(k, s);
			workers_refresh_done(k, s, KIND_BUSY, "the token record changed");
			return;
		}
		char why[200];

		snprintf(why, sizeof(why), "storing the refresh intent failed: %s", store_strerror(r));
		log_error("%s: %s", s->name, why);
		refresh_failed(k, s, false, why);
		return;
	}

	r = child_request(k->oauth, METHOD_OAUTH_REFRESH, params, on_reply, s, &s->request_id);
	if (r < 0) {
		/* Nothing went out: the record goes back without the intent. */
		settle_record(k, s, intent, false);
		secret_free(intent);
		/* The child went away between dispatch and now: wait for it. */
		sheap_put(&k->refresh->ready, s);
		return;
	}
	s->request_plain = intent;
	s->in_flight = true;
	s->last_request_ms = keeper_now_ms();
	s->rstate = REFRESH_REFRESHING;
	k->refresh->in_flight++;
	log_debug("%s: refreshing (attempt %d)", s->name, s->retry_count + 1);
	/* Watch the child: it owes an answer within its own timeout. */
	arm_at(s, keeper_now_ms() + (int64_t)k->cfg->refresh.timeout_sec * 1000 + CHILD_GRACE_MS);
}

static void dispatch(struct keeper *k)
{
	struct refresh *r = k->refresh;

	if (k->stopping) {
		/* A stop waits for the answers in flight (refresh_drain()). */
		if (r->in_flight == 0)
			event_base_loopexit(k->base, NULL);
		return;
	}
	/* In a replication group only the master refreshes: the servers due
	 * wait in the ready heap until this site is master (group.c). */
	if (!keeper_is_master(k))
		return;
	while (r->in_flight < k->cfg->refresh.max_in_flight && child_ready(k->oauth)) {
		struct server *s = heap_pop(r);

		if (!s)
			return;
		start_refresh(k, s);
	}
}

static void oauth_ready(struct child *c, void *ctx)
{
	dispatch(ctx);
}

/* oauth.login_url is all the oauth child may send unasked. */
static int oauth_message(struct child *c, void *ctx, struct rpc_msg *m)
{
	if (m->type == RPC_NOTIFICATION && strcmp(m->method, METHOD_OAUTH_LOGIN_URL) == 0)
		return login_url(ctx, m->params) < 0 ? -EPROTO : 0;
	return -EPROTO;
}

/* Outstanding requests fail through their callbacks (transient). */
const struct child_ops refresh_oauth_ops = {
	.ready = oauth_ready,
	.message = oauth_message,
};

/* ---- loading, forgetting, logout ---- */

bool refresh_reset(struct keeper *k, struct server *s)
{
	s->status = OAUTH_NONE;
	s->obtained_at_ms = s->expires_at_ms = 0;
	s->has_refresh = false;
	s->refused = false;
	if (!s->conf->oauth_enabled) {
		s->rstate = REFRESH_IDLE;
		return false;
	}
	return true;
}

/* A record holds an intent: the keeper died with its refresh in flight. */
static void intent_found(struct keeper *k, struct server *s, int64_t intent_at_ms, bool known)
{
	char at[TIME_TEXT_MAX];

	/* At start the keeper died with the refresh in flight; later (a reload
	 * that brought the server back, changed or enabled) it may also have been
	 * this keeper cancelling it when the server changed. */
	const char *how = k->running ? " (the keeper died, or a reload cancelled it, while it was in flight)" : "";

	if (!s->interrupted) {
		log_warn("%s: a refresh sent at %s was interrupted by a crash%s; presenting its refresh token once "
			 "more (refresh.retry_after_crash)", s->name, time_text(intent_at_ms, at), how);
		return;
	}
	server_set_error(s, "%s", REFRESH_INTERRUPTED_MESSAGE);
	if (known)
		return;
	log_warn("%s: %s (the refresh sent at %s got no stored answer%s; the provider may have rotated its "
		 "refresh token, which is not presented again)", s->name, REFRESH_INTERRUPTED_MESSAGE,
		 time_text(intent_at_ms, at), how);
	interrupted_emit(k, s);
}

void refresh_take_record(struct keeper *k, struct server *s, const struct secret *plain, int status)
{
	struct token t;
	bool was_interrupted = s->interrupted;

	if (!plain && status == STORE_E_NOT_FOUND) {
		s->interrupted = false;
		schedule(k, s);
		return;
	}
	if (!plain || token_view(plain, &t) < 0) {
		log_error("%s: token record %s: %s", s->name, s->key,
			  plain ? "does not decode" : store_strerror(status));
		server_set_error(s, "token record: %s", plain ? "does not decode" : store_strerror(status));
		s->status = OAUTH_ERROR;
		s->rstate = REFRESH_FAILED;
		return;
	}
	/* A replica of a replication group: an intent in the record is the
	 * master's refresh under way, not a crash; a site that becomes master
	 * reads every record again and then takes it for one. */
	if (t.intent_at_ms && !keeper_is_master(k))
		t.intent_at_ms = 0;
	apply_token(s, &t);
	schedule(k, s);
	if (t.intent_at_ms)
		intent_found(k, s, t.intent_at_ms, was_interrupted);
	else if (s->expires_at_ms && s->expires_at_ms <= keeper_now_ms() && s->has_refresh)
		log_info("%s: token expired while the keeper was away; refreshing now", s->name);
}

void refresh_load(struct keeper *k, struct server *s)
{
	struct secret *plain = NULL;
	int r;

	if (!refresh_reset(k, s))
		return;
	if (s->unstored) {
		/* The newest record is the one the store has not taken yet. */
		refresh_take_record(k, s, s->unstored, 0);
		unstored_arm(k, s);
		return;
	}
	r = store_get(k->store, STORE_TOKENS, s->key, &plain);
	refresh_take_record(k, s, r == 0 ? plain : NULL, r == 0 ? 0 : r);
	secret_free(plain);
}

void refresh_pause(struct keeper *k, struct server *s)
{
	sheap_remove(&k->refresh->ready, s);
	if (!s->in_flight)
		disarm(s);
}

void refresh_forget(struct keeper *k, struct server *s)
{
	sheap_remove(&k->refresh->ready, s);
	if (s->in_flight) {
		if (!k->stopping)
			log_warn("%s: its refresh in flight is cancelled (the server changed or left); if the provider "
				 "rotated the refresh token meanwhile, the server will need a login", s->name);
		child_cancel(k->oauth, s->request_id);
		secret_free(finish_request(k, s));
		dispatch(k);
	}
	disarm(s);
	s->next_at_ms = 0;
	s->not_before_ms = 0;
}

int refresh_drain(struct keeper *k)
{
	int n = k->refresh->in_flight;

	k->stopping = true;
	dispatch(k);
	return n;
}

int refresh_logout(struct keeper *k, struct server *s)
{
	struct json_object *d;
	int r;

	refresh_forget(k, s);
	r = store_delete(k->store, STORE_TOKENS, s->key);
	if (r < 0) {
		log_error("%s: deleting the token record failed: %s", s->name, store_strerror(r));
		refresh_load(k, s);
		return r;
	}
	refresh_unstored_drop(s);
	s->status = OAUTH_NONE;
	s->rstate = REFRESH_IDLE;
	s->obtained_at_ms = s->expires_at_ms = 0;
	s->has_refresh = false;
	s->refused = false;
	s->interrupted = false;
	s->retry_count = 0;
	s->failed_reported = false;
	server_set_error(s, NULL);
	log_info("%s: OAuth logout completed%s", s->name, r == STORE_E_NOT_FOUND ? " (there was no token)" : "");
	d = json_object_new_object();
	json_object_object_add(d, PARAM_KEY_REASON, json_object_new_string("oauth_logout"));
	json_object_object_add(d, PARAM_KEY_SERVER, json_object_new_string(s->name));
	events_emit(k, EVENT_SERVERS_CHANGED, d);
	return r;
}
