#!/usr/bin/env python3
"""
The floor under token requests (refresh.min_interval), the clamp of
expires_in, and the one token size limit (issue 14, part C), played as an
attacker would: a provider that hands out one-second tokens, an upstream
that answers every call with 401, a token endpoint whose tokens are one byte
too long.

The floor is 2 s (the default): over T seconds a server may see at most
T / 2 + 2 token requests (the first one is free, and one more may straddle
the end). Waits are bounded and generous; the counts are what is asserted.
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
from keeperlib import EV_REFRESHED  # noqa: E402
from test_login import LoginCase  # noqa: E402
from test_workers import WorkerCase, text_of  # noqa: E402

FLOOR_S = 2.0           # refresh.min_interval's default, in seconds
MAX_TOKEN = 16384       # PROTO_MAX_TOKEN
YEAR = 31536000
# A call through a worker must be answered within this, error or not.
ANSWER_BOUND_S = 10.0


def for_server(name):
    return lambda d: d.get("server_name", d.get("server")) == name


def within_floor(requests, elapsed):
    return requests <= elapsed / FLOOR_S + 2


class FloorCase(WorkerCase):
    """test_workers' clients (self.client(NAME)) with a keeper of our own."""

    def setup_keeper(self, lifetime=3600, stored_lifetime=3600, peer_config=None, refresh=None, start=True,
                     grace=0):
        """A peer, a keeper with one server "gh" whose stored token (from a
        real login) expires in stored_lifetime seconds (negative: already
        expired, refreshed at start), then the peer's peer_config."""
        self.peer = self.start_peer(lifetime=lifetime, grace=grace)
        cid = self.peer.register()
        self.k = self.make_keeper(servers={"gh": self.peer.server_conf(cid)}, refresh=refresh)
        access, refresh_token = self.peer.login(cid)
        self.secrets = [access, refresh_token]
        self.k.put_token("gh", self.peer.mcp_url, access, refresh_token, stored_lifetime, self.peer.token_endpoint)
        if peer_config:
            self.peer.config(**peer_config)
        self.peer.reset()
        self.t0 = time.monotonic()
        if start:
            self.k.start()
        return self.k

    def watch_rate(self, seconds):
        """Watches the token requests for seconds with the keeper alive
        throughout; returns (requests, elapsed since the keeper started)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.k.assert_alive()
            requests, elapsed = self.peer.stats()["refresh_requests"], time.monotonic() - self.t0
            self.assertTrue(within_floor(requests, elapsed),
                            "%d token requests in %.1f s: the floor of %.0f s did not hold" %
                            (requests, elapsed, FLOOR_S))
            time.sleep(0.25)
        return self.peer.stats()["refresh_requests"], time.monotonic() - self.t0

    def assert_log_clean(self):
        log = self.k.log()
        kl.assert_no_secrets(log, self.secrets, "keeper log")
        # No token of the peer's, whatever its length, went into the log:
        # base64url runs of 200 characters are tokens, not words.
        m = re.search(r"[A-Za-z0-9_-]{200,}", log)
        self.assertIsNone(m, "the keeper log holds a long token-like run: %r" % (m and m.group(0)[:40]))


class TestFloor(FloorCase):

    def test_a_expires_in_one(self):
        # A provider whose tokens live 1 s: without a floor the keeper
        # refreshes as fast as the provider answers.
        self.setup_keeper(lifetime=1, stored_lifetime=-5)
        requests, elapsed = self.watch_rate(6.0)
        self.assertGreaterEqual(requests, 2, "refreshes go on at the floor's pace")
        self.assertTrue(within_floor(requests, elapsed), (requests, elapsed))
        st = self.k.server("gh")
        self.assertIn(st["oauth_status"], ("authenticated", "expired"), st)
        self.assert_log_clean()

    def test_b_expires_in_zero_is_clamped(self):
        # expires_in 0 (and what the keeper would make of it: "no expiry",
        # or now + 0) is clamped to 1 s and logged; the floor holds.
        self.setup_keeper(stored_lifetime=-5, peer_config={"expires_in": 0})
        kl.wait_until(lambda: "gh: the token endpoint gave expires_in 0 s" in self.k.log(), 20, 0.1,
                      "the clamp in the log")
        self.assertIn("gh: the token endpoint gave expires_in 0 s, outside 1 s .. 1 year; using 1 s", self.k.log())
        requests, elapsed = self.watch_rate(5.0)
        self.assertGreaterEqual(requests, 2, "a 1 s token is refreshed again")
        self.assert_log_clean()

    def test_c_huge_expires_in_is_clamped(self):
        # INT64_MAX seconds: now + expires_in would overflow.
        self.setup_keeper(stored_lifetime=-5, peer_config={"expires_in": 2 ** 63 - 1})
        kl.wait_until(lambda: "gh: Proactive refresh succeeded" in self.k.log(), 20, 0.1, "the refresh")
        expires_at = self.k.server("gh")["token_expires_at_unix"]
        now = time.time()
        self.assertTrue(expires_at and now + YEAR - 60 <= expires_at <= now + YEAR + 60, (expires_at, now))
        self.assertIn("gh: the token endpoint gave expires_in %d s, outside 1 s .. 1 year; using %d s" %
                      (2 ** 63 - 1, YEAR), self.k.log())
        self.k.assert_alive()
        self.assert_log_clean()

    def test_c2_negative_expires_in_is_clamped(self):
        # Negative: the same clamp to 1 s, never "no expiry".
        self.setup_keeper(stored_lifetime=-5, peer_config={"expires_in": -100})
        kl.wait_until(lambda: "gh: Proactive refresh succeeded" in self.k.log(), 20, 0.1, "the refresh")
        expires_at = self.k.server("gh")["token_expires_at_unix"]
        self.assertIsNotNone(expires_at, "a negative expires_in is no \"never expires\"")
        self.assertLessEqual(expires_at, time.time() + 5)
        self.assertIn("gh: the token endpoint gave expires_in -100 s, outside 1 s .. 1 year; using 1 s",
                      self.k.log())
        self.assert_log_clean()

    def test_d_upstream_always_401(self):
        # An upstream that answers every call with 401: each call makes the
        # worker report token.invalid. Without a floor every call costs a
        # token request; with it the calls get an error at once.
        self.setup_keeper()
        c = self.client("gh")
        c.initialize()
        self.assertEqual(text_of(c.echo("before")), "before")
        pid = self.k.server("gh")["worker"]["pid"]
        self.peer.config(reject_mcp=True)
        self.peer.reset()
        self.t0 = time.monotonic()
        errors = []
        for i in range(20):
            t = time.monotonic()
            r = c.echo("call %d" % i, timeout=ANSWER_BOUND_S + 5)
            took = time.monotonic() - t
            self.assertLess(took, ANSWER_BOUND_S, "call %d took %.1f s" % (i, took))
            self.assertIn("error", r, r)
            errors.append(r["error"]["message"])
            requests, elapsed = self.peer.stats()["refresh_requests"], time.monotonic() - self.t0
            self.assertTrue(within_floor(requests, elapsed),
                            "%d token requests in %.1f s after %d calls: the floor did not hold" %
                            (requests, elapsed, i + 1))
            time.sleep(0.3)
        self.assertTrue(any("refresh.min_interval" in e for e in errors),
                        "some calls were answered by the floor: %r" % errors)
        requests, elapsed = self.watch_rate(3.0)
        self.assertGreaterEqual(requests, 2, "the floor delays refreshes, it does not stop them")
        self.assertGreaterEqual(self.peer.stats()["unauthorized"], 20)
        st = self.k.server("gh")
        self.assertEqual(st["worker"]["pid"], pid, st)
        self.assertEqual(st["worker"]["restarts"], 0, st)

        # The upstream takes tokens again: the token the floor's refresh
        # brought works.
        self.peer.config(reject_mcp=False)
        self.assertEqual(text_of(c.echo("after")), "after")
        self.assert_log_clean()


class TestTokenSize(FloorCase):

    def test_a_oversized_tokens_refused_exact_limit_works(self):
        # First without rotation, so that the refused response does not cost
        # the stored refresh token; then with rotation, for an oversized
        # refresh token, which the peer's grace lets the keeper get past once.
        # A floor of 4 s leaves room for the checks between two attempts.
        self.setup_keeper(stored_lifetime=2, refresh={"max_retries": 10, "min_interval": 4000}, grace=120,
                          peer_config={"rotate": False, "access_token_bytes": MAX_TOKEN + 1})
        c = self.client("gh")
        c.initialize()
        self.assertEqual(text_of(c.echo("old token")), "old token")
        pid = self.k.server("gh")["worker"]["pid"]
        sub = self.k.subscribe()

        want = "the access_token is %d bytes long, more than the %d bytes mcpkeeper accepts" % (MAX_TOKEN + 1,
                                                                                                 MAX_TOKEN)
        kl.wait_until(lambda: want in self.k.log(), 20, 0.1, "the access_token refusal in the log")
        self.assertIn("gh: refresh failed (HTTP 200: %s)" % want, self.k.log())
        st = kl.wait_until(lambda: (lambda s: s if want in (s["refresh"]["last_error"] or "") else None)(
            self.k.server("gh")), 10, 0.1, "the refusal as the server's last error")
        self.assertEqual(st["refresh"]["state"], "retrying", st)

        self.peer.config(rotate=True, access_token_bytes=0, refresh_token_bytes=MAX_TOKEN + 1)
        want = "the refresh_token is %d bytes long, more than the %d bytes mcpkeeper accepts" % (MAX_TOKEN + 1,
                                                                                                  MAX_TOKEN)
        kl.wait_until(lambda: want in self.k.log(), 20, 0.1, "the refresh_token refusal in the log")

        # Neither reached the worker: it runs, as it did, with the old token.
        self.assertEqual(text_of(c.echo("still old")), "still old")
        st = self.k.server("gh")
        self.assertEqual(st["worker"]["pid"], pid, st)
        self.assertEqual(st["worker"]["restarts"], 0, st)
        self.assertEqual(sub.of_type(EV_REFRESHED, "gh"), [])

        # Exactly at the limit: stored, pushed, and used (every older access
        # token is revoked first, so only the new one can work).
        self.peer.config(access_token_bytes=MAX_TOKEN, refresh_token_bytes=MAX_TOKEN)
        self.peer._json("POST", "/test/revoke-access-all", {})
        sub.wait_for(EV_REFRESHED, for_server("gh"), 30)
        self.assertEqual(self.peer.stats()["reused_refresh_tokens"], 0)
        self.assertEqual(text_of(c.echo("at the limit")), "at the limit")
        st = self.k.server("gh")
        self.assertEqual(st["oauth_status"], "authenticated", st)
        self.assertEqual(st["worker"]["pid"], pid, st)
        self.assertEqual(st["worker"]["restarts"], 0, st)
        self.k.assert_alive()
        self.assert_log_clean()


class TestLoginLimits(LoginCase):

    def test_a_login_refuses_oversized_token_and_clamps(self):
        # The code exchange goes through the same check: a login whose token
        # is one byte too long fails saying so, and stores nothing.
        self.setup_login()
        self.peer.config(access_token_bytes=MAX_TOKEN + 1)
        r = self.ctl("auth", "login", "--server", "demo")
        self.assert_login_failed(r, "the access_token is %d bytes long, more than the %d bytes" %
                                 (MAX_TOKEN + 1, MAX_TOKEN))
        self.assertEqual(self.stored_keys(), [])
        self.assertEqual(self.k.server("demo")["oauth_status"], "none")

        # Exactly at the limit, with an expires_in of 0: logged in, and the
        # clamp is logged by the login too.
        self.peer.config(access_token_bytes=MAX_TOKEN, refresh_token_bytes=MAX_TOKEN, expires_in=0)
        r = self.ctl("auth", "login", "--server", "demo")
        self.assert_logged_in(r)
        self.assertIn("demo: the token endpoint gave expires_in 0 s, outside 1 s .. 1 year; using 1 s",
                      self.k.log())
        self.k.assert_alive()


if __name__ == "__main__":
    kl.main()
