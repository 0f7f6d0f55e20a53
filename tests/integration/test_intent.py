#!/usr/bin/env python3
"""The refresh intent (issue 17 A): a keeper killed while a refresh is in
flight must not present that refresh token again after its restart.

The C peer runs in strict rotation (no grace window: a refresh token works
once; a second presentation is counted in reused_refresh_tokens and revokes
the grant). Its refresh_delay_ms knob rotates at arrival and holds the
answer, so a keeper killed meanwhile never learns the new refresh token:
exactly the crash window the intent marks.

- a: killed inside the window, restarted: refresh.state `interrupted`, the
  message in last_error and the log, the access token still served while it
  lives, then `expired` with the event; the old refresh token never goes out
  again (peer counters); a login clears it all.
- b: refresh.retry_after_crash: the old refresh token is presented exactly
  once more (in strict rotation the peer calls that reuse: invalid_grant).
- c: killed with no refresh in flight: no intent, refreshing goes on.
- d: stopped (SIGTERM) with a refresh in flight: the keeper waits for the
  answer and commits it before it exits, so the next start is not
  interrupted and the new refresh token works.
"""
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
import test_workers  # noqa: E402  (its MCP client at `mcpctl connect`)

BROWSER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser.py")
MESSAGE = "refresh interrupted by a crash: log in again"
EV_INTERRUPTED = "oauth.refresh_interrupted"
LIFETIME = 16           # s; with threshold 0.25 the refresh is due 4 s after the login


class IntentCase(kl.KeeperTestCase):

    def setup_keeper(self, refresh=None):
        self.peer = self.start_peer(lifetime=LIFETIME, grace=0)
        conf = dict({"threshold": 0.25}, **(refresh or {}))
        self.k = self.make_keeper(servers={"demo": {"url": self.peer.mcp_url}}, refresh=conf)
        self.k.start()
        self.login()
        return self.k

    def login(self):
        env = {"BROWSER": BROWSER, "MCPKEEPER_TEST_BROWSER_MODE": "follow",
               "MCPKEEPER_TEST_BROWSER_LOG": os.path.join(self.tmp, "browser.jsonl"),
               "MCPKEEPER_CONFIG": self.k.config_path}
        r = subprocess.run([kl.MCPCTL, "auth", "login", "-s", "demo"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=90, env=kl.child_env(env))
        self.assertEqual(r.returncode, 0, "mcpctl auth login: %s%s" % (r.stdout, r.stderr))
        self.assertEqual(self.k.server("demo")["oauth_status"], "authenticated")

    def intent(self):
        """store-tool list's intent=yes|no for demo (the keeper must be stopped)."""
        recs = [line for line in self.k.store_tool("list").stdout.decode().splitlines() if line.startswith("demo#")]
        self.assertEqual(len(recs), 1, recs)
        self.assertIn(" ok ", recs[0])
        return "intent=yes" in recs[0].split()

    def kill_in_window(self):
        """Holds the next refresh's answer at the peer (rotated already) and
        kills the keeper while it waits for it."""
        self.peer.config(refresh_delay_ms=120000)
        kl.wait_until(lambda: self.peer.stats()["refresh_grants"] == 1, 30, 0.05,
                      "the peer to rotate the refresh token")
        self.k.kill()
        self.assertFalse(self.k.running())
        self.peer.config(refresh_delay_ms=0)
        self.assertTrue(self.intent(), "the intent is in the store after the kill")

    def echo(self, text):
        c = test_workers.Client(self.k, "demo")
        try:
            c.initialize()
            return c.echo(text)
        finally:
            c.close()

    def test_a_interrupted_not_presented_again(self):
        k = self.setup_keeper()
        self.kill_in_window()
        k.start()
        sub = k.subscribe()
        s = k.server("demo")
        self.assertEqual(s["refresh"]["state"], "interrupted", s)
        self.assertEqual(s["oauth_status"], "authenticated", s)
        self.assertEqual(s["refresh"]["last_error"], MESSAGE, s)
        self.assertIn(MESSAGE, k.log())
        # mcpctl status shows the state too.
        r = subprocess.run([kl.MCPCTL, "--socket", k.socket_path, "status"], capture_output=True, timeout=30,
                           env=kl.child_env())
        self.assertIn("interrupted", r.stdout.decode(), r.stdout)

        # The access token from before the crash still serves while it lives.
        reply = self.echo("still served")
        self.assertIn("still served", test_workers.text_of(reply), reply)

        # Then it expires: status expired, the event, and still no refresh.
        ev = sub.wait_for(EV_INTERRUPTED, lambda d: d.get("server_name") == "demo", LIFETIME + 15)
        self.assertEqual(ev["data"]["oauth_status"], "expired", ev)
        s = k.server("demo")
        self.assertEqual(s["oauth_status"], "expired", s)
        self.assertEqual(s["refresh"]["state"], "interrupted", s)
        stats = self.peer.stats()
        self.assertEqual(stats["refresh_requests"], 1, "the old refresh token was presented again: %r" % stats)
        self.assertEqual(stats["reused_refresh_tokens"], 0, stats)

        # A login clears the intent: refreshing goes on from the new token.
        self.login()
        s = k.server("demo")
        self.assertEqual(s["refresh"]["state"], "scheduled", s)
        self.assertIsNone(s["refresh"]["last_error"], s)
        sub.wait_for(kl.EV_REFRESHED, lambda d: d.get("server_name") == "demo", 20)
        self.assertEqual(k.stop(), 0)
        self.assertFalse(self.intent(), "no intent once the refresh was answered")
        self.assertEqual(self.peer.stats()["reused_refresh_tokens"], 0)

    def test_b_retry_after_crash_presents_it_once(self):
        k = self.setup_keeper(refresh={"retry_after_crash": True})
        self.kill_in_window()
        k.start()
        self.assertIn("refresh.retry_after_crash", k.log())

        def refused():
            s = k.server("demo")
            return s if s["refresh"]["state"] == "failed" else None
        s = kl.wait_until(refused, 30, 0.1, "the retried refresh token to be refused")
        self.assertEqual(s["refresh"]["last_error"], "invalid_grant", s)
        time.sleep(3)
        stats = self.peer.stats()
        # Once more, and only once: strict rotation calls it reuse.
        self.assertEqual(stats["refresh_requests"], 2, stats)
        self.assertEqual(stats["reused_refresh_tokens"], 1, stats)
        self.assertEqual(k.stop(), 0)
        self.assertFalse(self.intent(), "the refused refresh's answer removed the intent")

    def test_c_kill_outside_the_window(self):
        k = self.setup_keeper()
        sub = k.subscribe()
        sub.wait_for(kl.EV_REFRESHED, lambda d: d.get("server_name") == "demo", 20)
        k.kill()
        self.assertFalse(self.intent(), "a refresh that was answered leaves no intent")
        k.start()
        sub = k.subscribe()
        s = k.server("demo")
        self.assertEqual(s["refresh"]["state"], "scheduled", s)
        self.assertIsNone(s["refresh"]["last_error"], s)
        sub.wait_for(kl.EV_REFRESHED, lambda d: d.get("server_name") == "demo", 20)
        self.assertNotIn(MESSAGE, k.log())
        self.assertEqual(self.peer.stats()["reused_refresh_tokens"], 0)

    def test_d_stop_waits_for_the_answer(self):
        k = self.setup_keeper()
        self.peer.config(refresh_delay_ms=3000)
        kl.wait_until(lambda: self.peer.stats()["refresh_grants"] == 1, 30, 0.05,
                      "the peer to rotate the refresh token")
        self.assertEqual(k.stop(), 0)
        self.assertIn("waiting up to", k.log())
        self.assertFalse(self.intent(), "the stop committed the refresh's answer")
        self.peer.config(refresh_delay_ms=0)
        k.start()
        sub = k.subscribe()
        s = k.server("demo")
        self.assertEqual(s["refresh"]["state"], "scheduled", s)
        sub.wait_for(kl.EV_REFRESHED, lambda d: d.get("server_name") == "demo", 20)
        stats = self.peer.stats()
        self.assertEqual(stats["reused_refresh_tokens"], 0, stats)
        self.assertEqual(stats["refresh_grants"], 2, stats)


if __name__ == "__main__":
    kl.main()
