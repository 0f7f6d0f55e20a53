#!/usr/bin/env python3
"""
The refresh schedule asserted to the millisecond (issue 15, part C), without
deadlines: a slow machine makes every wait longer, never a check false.

What the keeper promises, and what is checked here against the C test peer,
which records the wall-clock instant (ms) of every token request
(/test/last token_requests):
- obtained_at is the instant the keeper received the token response, so it
  comes after the peer received that token request;
- the refresh is due at obtained_at + floor(threshold x lifetime), in ms,
  exactly, and status (refresh.next_at) and the oauth.token_refreshed event
  (next_refresh_at) say that instant;
- never earlier than the floor: refresh.min_interval after the last token
  request;
- no refresh reaches the peer before its instant;
- retries after 500s come at least 1 s, 2 s, 4 s apart (lower bounds only).

Times on the keeper's side are RFC 3339 UTC with milliseconds beside their
*_unix seconds; both clocks are the same host's CLOCK_REALTIME.
"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
from keeperlib import EV_FAILED, EV_REFRESHED  # noqa: E402
from test_login import LoginCase  # noqa: E402


def due(obtained_ms, expires_ms, threshold):
    """The instant the keeper owes: obtained_at + threshold x lifetime, rounded
    down to the millisecond (the same IEEE double product the keeper takes)."""
    return obtained_ms + int(math.floor(threshold * float(expires_ms - obtained_ms)))


class TimingCase(LoginCase):

    def login(self, lifetime, refresh):
        """A keeper with server "demo", logged in through mcpctl against a peer
        issuing lifetime-second tokens; returns the server's status."""
        self.setup_login(lifetime=lifetime, refresh=refresh)
        self.assert_logged_in(self.ctl("auth", "login", "--server", "demo"))
        return self.k.server("demo")

    def token_requests(self, grant="refresh_token"):
        """The instants (ms) at which the peer received token requests of grant."""
        return [r["at_ms"] for r in self.last()["token_requests"] if r["grant_type"] == grant]

    def times(self, st):
        """(obtained_at, expires_at, next_at) of a status entry, in ms, each
        checked against its *_unix."""
        r = st["refresh"]
        kl.assert_time_text(self, st["token_obtained_at"], st["token_obtained_at_unix"])
        kl.assert_time_text(self, st["token_expires_at"], st["token_expires_at_unix"])
        kl.assert_time_text(self, r["next_at"], r["next_at_unix"])
        return kl.time_ms(st["token_obtained_at"]), kl.time_ms(st["token_expires_at"]), kl.time_ms(r["next_at"])

    def event_times(self, ev):
        d = ev["data"]
        for key in ("obtained_at", "expires_at", "next_refresh_at"):
            kl.assert_time_text(self, d[key], d[key + "_unix"])
        kl.assert_time_text(self, ev["timestamp"], ev["timestamp_unix"])
        return kl.time_ms(d["obtained_at"]), kl.time_ms(d["expires_at"]), kl.time_ms(d["next_refresh_at"])


class TestSchedule(TimingCase):

    def test_a_due_to_the_millisecond(self):
        # 0.77 x 7000 ms is 5390.000000000001 as a double: floor, not round
        # up, and not whole seconds.
        threshold, lifetime = 0.77, 7
        st = self.login(lifetime, {"threshold": threshold})
        obtained, expires, next_at = self.times(st)
        code_at = self.token_requests("authorization_code")
        self.assertEqual(len(code_at), 1, self.last()["token_requests"])
        self.assertGreaterEqual(obtained, code_at[0], "obtained_at is when the response came, after the request")
        self.assertEqual(expires - obtained, lifetime * 1000, st)
        self.assertEqual(st["refresh"]["state"], "scheduled", st)
        self.assertEqual(next_at, due(obtained, expires, threshold), st)
        self.assertIn("demo: Proactive refresh scheduled at %s" % st["refresh"]["next_at"], self.k.log())

        # Two refreshes, each at or after its instant, each scheduling the
        # next one from its own response.
        for i in range(2):
            ev = self.sub.wait_for(EV_REFRESHED, lambda d: d.get("server_name") == "demo", lifetime * 3 + 10)
            refreshes = self.token_requests()
            self.assertEqual(len(refreshes), i + 1, self.last()["token_requests"])
            self.assertGreaterEqual(refreshes[i], next_at, "refresh %d reached the peer %d ms before its instant" %
                                    (i + 1, next_at - refreshes[i]))
            obtained, expires, next_at = self.event_times(ev)
            self.assertGreaterEqual(obtained, refreshes[i], ev)
            self.assertEqual(expires - obtained, lifetime * 1000, ev)
            self.assertEqual(next_at, due(obtained, expires, threshold), ev)
            st = self.k.server("demo")
            self.assertEqual(self.times(st), (obtained, expires, next_at), "status and event agree: %r" % st)
        self.assertIn("demo: Proactive refresh succeeded", self.k.log())
        self.assertEqual(self.sub.of_type(EV_FAILED), [])

        # The milliseconds are the stored record's: a restarted keeper has
        # the same instants.
        # (Compared only when no refresh came in between, which the next
        # one, due 5.39 s after the last, would on a very slow machine.)
        self.k.stop()
        self.k.start()
        after = self.times(self.k.server("demo"))
        if len(self.token_requests()) == 2:
            self.assertEqual(after, (obtained, expires, next_at))

        # Logout: no schedule, and the line the quickstart's script greps.
        r = self.ctl("auth", "logout", "--server", "demo")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        st = self.k.server("demo")
        self.assertEqual(st["oauth_status"], "none", st)
        self.assertEqual(self.times(st), (None, None, None), st)
        self.assertIn("demo: OAuth logout completed", self.k.log())

    def test_b_never_before_the_floor(self):
        # A tenth of a 1 s lifetime is 100 ms; the floor (2 s after the last
        # token request) comes later and wins: after the login (whose floor
        # counts from the token's arrival) always, after a refresh (from the
        # request's start) unless the request took over 1.9 s.
        threshold, floor_ms = 0.1, 2000
        st = self.login(1, {"threshold": threshold, "min_interval": floor_ms})
        obtained, expires, next_at = self.times(st)
        self.assertGreaterEqual(next_at, obtained + floor_ms, "the floor moved the instant: %r" % st)
        floored = 0
        for i in range(3):
            ev = self.sub.wait_for(EV_REFRESHED, lambda d: d.get("server_name") == "demo", 20)
            at = self.token_requests()[i]
            self.assertGreaterEqual(at, next_at, "refresh %d came %d ms before its instant" % (i + 1, next_at - at))
            obtained, expires, next_at = self.event_times(ev)
            self.assertGreaterEqual(obtained, at, ev)
            # Never before the threshold's instant; later only up to the
            # floor's end, which counts from before the peer got the request.
            self.assertGreaterEqual(next_at, due(obtained, expires, threshold), ev)
            self.assertLessEqual(next_at, max(due(obtained, expires, threshold), at + floor_ms), ev)
            floored += next_at > due(obtained, expires, threshold)
        self.assertGreater(floored, 0, "the floor never decided an instant")


class TestRetries(TimingCase):

    def test_a_500s_spaced_1_2_4_seconds(self):
        # A floor of 100 ms leaves the backoff alone to space the retries.
        st = self.login(10, {"threshold": 0.5, "max_retries": 3, "min_interval": 100})
        _, _, next_at = self.times(st)
        self.peer.fail("500", 4)
        # The first attempt and three fast retries fail: one refresh_failed.
        ev = self.sub.wait_for(EV_FAILED, lambda d: d.get("server_name") == "demo", 60)
        self.assertTrue(ev["data"]["error"], ev)
        at = self.token_requests()
        self.assertEqual(len(at), 4, self.last()["token_requests"])
        self.assertGreaterEqual(at[0], next_at, "the first attempt came before its instant")
        gaps = [b - a for a, b in zip(at, at[1:])]
        for gap, least in zip(gaps, (1000, 2000, 4000)):
            self.assertGreaterEqual(gap, least, "retries %r ms apart, want at least 1 s, 2 s, 4 s" % gaps)
        st = self.k.server("demo")
        self.assertEqual((st["oauth_status"], st["refresh"]["state"], st["refresh"]["retry_count"]),
                         ("error", "retrying", 4), st)
        _, _, retry_at = self.times(st)
        self.assertGreaterEqual(retry_at - at[3], 27000, "then the slow backoff (30 s +-10 %%): %r" % st)
        self.assertIn("demo: Proactive refresh failed after max retries (3)", self.k.log())
        self.assertEqual(self.k.log().count("Proactive refresh failed after max retries"), 1)


if __name__ == "__main__":
    kl.main()
