#!/usr/bin/env python3
"""
Faults at the token endpoint (issue 17, part B): one test per row of the
README's table "When the token endpoint misbehaves". The C test peer answers
a refresh with the fault (/test/fail queues one for the next token requests,
/test/config shapes the successful answers); each test checks where the
outcome lands: the peer's counters and request log, the keeper's status,
events and log, and the token store.

Short timeouts and fast retries come from the config (refresh.timeout 2 s,
refresh.max_retries 3: retries after 1 s, 2 s, 4 s), so the file runs in
about a minute. Waits are bounded and generous; the only time compared is a
lower bound (a retry that must not come before the provider's Retry-After).
"""
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
from keeperlib import EV_FAILED, EV_REFRESHED  # noqa: E402
from test_keeper_a import OAuthKeeperCase, for_server  # noqa: E402
from test_login import LoginCase  # noqa: E402
from test_workers import Client, text_of  # noqa: E402

FAST = {"max_retries": 3, "timeout": 2, "min_interval": 200}
MAX_BODY = 1024 * 1024


class FaultCase(OAuthKeeperCase):
    """A keeper with one server "gh" whose stored token is due for refresh
    at once (stored_lifetime < 0) or soon, and the peer's faults queued
    before the keeper starts."""

    def start_with(self, failures=(), peer_config=None, stored_lifetime=-5, refresh=None, lifetime=3600):
        self.setup_oauth(lifetime=lifetime, stored_lifetime=stored_lifetime, refresh=dict(FAST, **(refresh or {})),
                         start=False)
        if peer_config:
            self.peer.config(**peer_config)
        for mode, count in failures:
            self.peer.fail(mode, count)
        self.k.start(wait=False)
        self.sub = self.k.subscribe_when_up()
        self.k.wait_ready()
        return self.k

    def refreshed(self, timeout=40):
        return self.sub.wait_for(EV_REFRESHED, for_server("gh"), timeout)

    def status_when(self, pred, timeout=30, what="the server's status"):
        return kl.wait_until(lambda: (lambda st: st if pred(st) else None)(self.k.server("gh")), timeout, 0.1, what)

    def token_requests(self):
        return [r for r in self.peer._json("GET", "/test/last")["token_requests"]
                if r["grant_type"] == "refresh_token"]

    def assert_recovered(self, requests):
        """The retry after the fault got a token: nothing left of the failure."""
        self.refreshed()
        stats = self.peer.stats()
        self.assertEqual(stats["refresh_requests"], requests, stats)
        self.assertEqual(stats["refresh_grants"], 1, stats)
        st = self.k.server("gh")
        self.assertEqual(st["oauth_status"], "authenticated", st)
        self.assertEqual(st["refresh"]["retry_count"], 0, st)
        self.assertIsNone(st["refresh"]["last_error"], st)
        self.assert_log_clean()

    def echo_after_revocation(self):
        """A call through the worker after the peer revoked every access
        token: the upstream answers 401, so the worker asks for a refresh."""
        c = Client(self.k, "gh")
        try:
            c.initialize()
            kl.http("POST", self.peer.url + "/test/revoke-access-all", b"{}", {"Content-Type": "application/json"})
            return c.echo("after the revocation")
        finally:
            c.close()

    def assert_transient(self, error_part):
        """The first attempt failed transiently with error_part in last_error."""
        st = self.status_when(lambda s: s["refresh"]["retry_count"] >= 1, what="the first failure")
        self.assertIn(error_part, st["refresh"]["last_error"] or "", st)
        self.assertIn(st["refresh"]["state"], ("retrying", "refreshing"), st)
        return st


class TestTokenEndpointFaults(FaultCase):

    def test_500_retried_old_token_kept(self):
        # A living token (30 s), due after 1.5 s: three failures (1 s, 2 s
        # and 4 s apart), and an MCP client served meanwhile with the old token.
        self.start_with([("500", 3)], stored_lifetime=30, refresh={"threshold": 0.05})
        st = self.assert_transient("HTTP 500: server_error")
        self.assertEqual(st["oauth_status"], "authenticated", "the old token still lives: %r" % st)
        rc, out = self.k.check_token("gh", self.peer.mcp_url, self.tokens["gh"][0])
        self.assertEqual((rc, out.strip()), (0, "match"), "the old access token is kept while retrying")
        c = Client(self.k, "gh")
        try:
            c.initialize()
            self.assertEqual(text_of(c.echo("during the retries")), "during the retries")
        finally:
            c.close()
        stats = self.peer.stats()
        self.assertEqual(stats["refresh_grants"], 0, "no new token yet: the client got the old one: %r" % stats)
        self.assertEqual(stats["unauthorized"], 0, stats)
        self.assertGreater(stats["mcp_requests"], 0, stats)
        self.assert_recovered(4)
        self.assertIn("gh: refresh failed (HTTP 500: server_error); retry 1 of 3 in 1 s", self.k.log())
        self.assertEqual(self.sub.of_type(EV_FAILED), [], "three failures stay within the fast retries")

    def test_429_retry_after_honoured(self):
        self.start_with([("429", 1)], peer_config={"retry_after": 3})
        self.assert_recovered(2)
        first, second = self.token_requests()[:2]
        self.assertGreaterEqual(second["at_ms"] - first["at_ms"], 3000,
                                "the retry came before the provider's Retry-After: 3 (not the 1 s backoff)")
        self.assertIn("gh: refresh failed (HTTP 429: slow_down); retry 1 of 3 in 3 s (the provider's "
                      "Retry-After: 3 s)", self.k.log())

    def test_429_retry_after_capped(self):
        self.start_with([("429", 1)], peer_config={"retry_after": 100000})
        st = self.status_when(lambda s: s["refresh"]["retry_count"] >= 1 and s["refresh"]["next_at_unix"],
                              what="the retry after the 429")
        next_at = st["refresh"]["next_at_unix"]
        wait = next_at - time.time()
        self.assertTrue(3000 < wait <= 3601, "Retry-After 100000 s is capped at 1 hour: next try in %r s" % wait)
        self.assertIn("(the provider's Retry-After: 86400 s, capped at 1 hour)", self.k.log())
        self.assertEqual(st["oauth_status"], "authenticated", st)
        # A worker whose upstream rejects the token does not hurry the retry.
        r = self.echo_after_revocation()
        self.assertIn("error", r, r)
        self.assertIn("Retry-After", json.dumps(r), r)
        self.assertEqual(self.peer.stats()["refresh_requests"], 1, "no token request before the Retry-After")
        st = self.k.server("gh")
        self.assertEqual(st["refresh"]["next_at_unix"], next_at, "the retry stays where Retry-After put it")

    def test_429_retry_after_shorter_than_backoff(self):
        # In the slow phase (no fast retries) the backoff (30 s) outlasts a
        # Retry-After of 20 s: the retry comes with the backoff, and until the
        # Retry-After ends no token request goes out, not even a worker's.
        self.start_with([("429", 1)], peer_config={"retry_after": 20}, refresh={"max_retries": 0})
        st = self.status_when(lambda s: s["refresh"]["retry_count"] >= 1 and s["refresh"]["next_at_unix"],
                              what="the retry after the 429")
        self.assertGreater(st["refresh"]["next_at_unix"] - time.time(), 20, st)
        r = self.echo_after_revocation()
        self.assertIn("error", r, r)
        self.assertIn("Retry-After", json.dumps(r), r)
        self.assertEqual(self.peer.stats()["refresh_requests"], 1, "no token request before the Retry-After ends")

    def test_429_without_retry_after_backoff(self):
        self.start_with([("429_bare", 1)])
        self.assert_recovered(2)
        self.assertIn("gh: refresh failed (HTTP 429: slow_down); retry 1 of 3 in 1 s\n", self.k.log())
        self.assertNotIn("Retry-After", self.k.log())

    def test_hang_past_timeout(self):
        self.start_with([("hang", 1)], peer_config={"hang_seconds": 20})
        self.assert_transient("timed out: ")
        self.assert_recovered(2)
        self.assertRegex(self.k.log(), r"oauth: gh: refresh failed: timed out: .*\(transient\)")

    def test_body_never_ends(self):
        self.start_with([("trickle", 1)])
        self.assert_transient("timed out: ")
        self.assert_recovered(2)
        # The keeper's side closed the trickle: the peer holds no request.
        kl.wait_until(lambda: self.peer.stats()["in_flight"] == 0, 10, 0.1, "the trickle to end")

    def test_10_mib_body_refused(self):
        self.start_with([("huge", 1)])
        self.assert_transient("response larger than %d bytes" % MAX_BODY)
        self.assert_recovered(2)

    def test_non_json(self):
        self.start_with([("malformed", 1)])
        self.assert_transient("HTTP 200: malformed token response, 40 bytes")
        self.assert_recovered(2)
        rc, out = self.k.check_token("gh", self.peer.mcp_url, self.tokens["gh"][0])
        self.assertEqual(out.strip(), "mismatch", "the token of the retry replaced the old one")

    def test_wrong_types_refused(self):
        # access_token and refresh_token numbers, expires_in an object.
        self.start_with([("wrong_types", 1)], stored_lifetime=30, refresh={"threshold": 0.05})
        st = self.assert_transient("HTTP 200: malformed token response")
        rc, out = self.k.check_token("gh", self.peer.mcp_url, self.tokens["gh"][0])
        self.assertEqual((rc, out.strip()), (0, "match"), "nothing of the malformed answer is stored")
        self.assertEqual(st["oauth_status"], "authenticated", st)
        self.assert_recovered(2)

    def test_expires_in_not_a_number(self):
        self.start_with(peer_config={"expires_in_json": '{"seconds": 60}'})
        ev = self.refreshed()
        self.assertIsNone(ev["data"]["expires_at"], ev)
        self.assertIn("oauth: gh: the token response's expires_in is not a number; taken as absent", self.k.log())
        st = self.k.server("gh")
        self.assertEqual((st["oauth_status"], st["refresh"]["state"]), ("authenticated", "idle"), st)
        self.sub.drain(2.0)
        self.assertEqual(self.peer.stats()["refresh_requests"], 1, "no proactive refresh without an expiry")
        self.assert_log_clean()

    def test_no_expires_in(self):
        self.start_with(peer_config={"expires_in_json": ""})
        ev = self.refreshed()
        self.assertIsNone(ev["data"]["expires_at"], ev)
        st = self.k.server("gh")
        self.assertIsNone(st["token_expires_at"], st)
        self.assertEqual((st["oauth_status"], st["refresh"]["state"]), ("authenticated", "idle"), st)
        self.assertIn("gh: Proactive refresh succeeded: token refreshed, no expires_in given: used until the "
                      "upstream rejects it", self.k.log())
        self.sub.drain(2.0)
        self.assertEqual(self.peer.stats()["refresh_requests"], 1, "no proactive refresh without an expiry")
        # Used until the upstream rejects it: that 401 brings a refresh.
        c = Client(self.k, "gh")
        try:
            c.initialize()
            kl.http("POST", self.peer.url + "/test/revoke-access-all", b"{}", {"Content-Type": "application/json"})
            r = c.echo("after the revocation")
            self.assertNotIn("error", r, r)
        finally:
            c.close()
        self.assertEqual(self.peer.stats()["refresh_grants"], 2, "one refresh for the 401")

    def test_negative_expires_in(self):
        self.start_with(peer_config={"expires_in": -60}, refresh={"min_interval": 1500})
        ev = self.refreshed()
        self.assertIn("gh: the token endpoint gave expires_in -60 s, outside 1 s .. 1 year; using 1 s", self.k.log())
        self.assertIn(ev["data"]["expires_at_unix"] - ev["data"]["obtained_at_unix"], (0, 1, 2), ev)
        # Treated as expiring at once: refreshed again, but never sooner
        # than refresh.min_interval after the last request (no storm).
        self.refreshed()
        times = [r["at_ms"] for r in self.token_requests()]
        self.assertGreaterEqual(len(times), 2)
        for a, b in zip(times, times[1:]):
            self.assertGreaterEqual(b - a, 1500 - 50, "token requests %r closer than min_interval" % times)

    def test_no_refresh_token_keeps_old(self):
        # Every answer lacks refresh_token; the peer keeps the presented one valid.
        self.start_with(peer_config={"omit_refresh_token": True, "token_lifetime": 3},
                        refresh={"min_interval": 500})
        self.refreshed()
        self.refreshed()
        stats = self.peer.stats()
        self.assertGreaterEqual(stats["refresh_grants"], 2, "the second refresh used the old refresh token: %r"
                                % stats)
        self.assertEqual(stats["refresh_grants"], stats["refresh_requests"], stats)
        self.assertEqual(stats["reused_refresh_tokens"], 0, stats)
        self.assertEqual(self.sub.of_type(EV_FAILED), [])

    def test_new_scope_stored_and_shown(self):
        self.start_with(peer_config={"refresh_scope": "mcp files:read"})
        ev = self.refreshed()
        self.assertEqual(ev["data"]["scope"], "mcp files:read", ev)
        self.assertIn('gh: the token endpoint granted scope "mcp files:read" (was none)', self.k.log())

    def test_invalid_grant_terminal(self):
        self.start_with([("invalid_grant", 1)])
        ev = self.sub.wait_for(EV_FAILED, for_server("gh"), 30)
        self.assertEqual(ev["data"]["error"], "invalid_grant", ev)
        st = self.k.server("gh")
        self.assertEqual((st["oauth_status"], st["refresh"]["state"]), ("expired", "failed"), st)
        self.assertIn("gh: refresh refused (invalid_grant): login needed", self.k.log())
        self.sub.drain(3.0)
        self.assertEqual(self.peer.stats()["refresh_requests"], 1, "no retry after invalid_grant")


class TestLoginFaults(LoginCase):

    def test_invalid_client_registers_anew(self):
        self.setup_login(lifetime=4, refresh=dict(FAST))
        r = self.ctl("auth", "login", "--server", "demo")
        self.assert_logged_in(r)
        self.assertEqual(self.peer.stats()["registrations"], 1)
        self.peer.fail("invalid_client", 1)
        ev = self.sub.wait_for(EV_FAILED, lambda d: d.get("server_name") == "demo", 30)
        message = "the client registration was rejected: log in again to register anew"
        self.assertEqual(ev["data"]["error"], message, ev)
        st = self.k.server("demo")
        self.assertEqual((st["oauth_status"], st["refresh"]["state"]), ("expired", "failed"), st)
        self.assertEqual(st["refresh"]["last_error"], message, st)
        self.assertIn("demo: the client registration at %s was rejected; dropped" % self.peer.url, self.k.log())
        self.assertEqual(self.peer.stats()["refresh_requests"], 1, "no retry after invalid_client")
        # The next login registers a new client at the peer.
        r = self.ctl("auth", "login", "--server", "demo")
        self.assert_logged_in(r)
        self.assertEqual(self.peer.stats()["registrations"], 2, "the next login registered anew")

    def test_code_exchange_faults(self):
        # The login's code exchange meets the same answers: the login fails
        # with what happened, stores nothing, and the next login works.
        self.setup_login()
        for mode, words in (("500", ["HTTP 500", "server_error"]),
                            ("huge", ["response larger than %d bytes" % MAX_BODY]),
                            ("wrong_types", ["HTTP 200: malformed token response"])):
            self.peer.fail(mode, 1)
            r = self.ctl("auth", "login", "--server", "demo")
            self.assert_login_failed(r, *words)
            self.assertEqual(self.stored_keys(), [], "nothing stored after %s" % mode)
        self.peer.config(expires_in_json="")
        r = self.ctl("auth", "login", "--server", "demo")
        self.assert_logged_in(r)
        st = self.k.server("demo")
        self.assertIsNone(st["token_expires_at"], "no expires_in: no known expiry: %r" % st)
        # expires_in as a numeric string is a number.
        self.peer.config(expires_in_json='"120"')
        r = self.ctl("auth", "login", "--server", "demo")
        self.assert_logged_in(r)
        st = self.k.server("demo")
        self.assertIn(st["token_expires_at_unix"] - st["token_obtained_at_unix"], (119, 120, 121), st)
        self.assertEqual(self.peer.stats()["code_requests"], 5)


if __name__ == "__main__":
    kl.main()
