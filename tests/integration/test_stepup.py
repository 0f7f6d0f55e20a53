#!/usr/bin/env python3
"""
Scope step-up and authorization-server migration (issue 15, part A), end to
end: an MCP client on `mcpctl connect demo`, the keeper and its worker, the
oauth child, and the C test peer as upstream and authorization server(s).

The peer plays the upstream that asks for more: tool_scope answers a
tools/call 403 insufficient_scope until the token holds that scope,
grantable_scopes makes a scope that is never granted, and issuer_bound moves
the resource to another authorization server whose endpoints live under its
own path, refusing (and counting as foreign_client_id) any client_id that was
registered at the other one. Logins go through the non-interactive browser
(browser.py), started by `mcpctl auth login` or by the keeper itself
(login.browser, or $BROWSER in the keeper's environment).

What the tests hold the keeper to:
- a step-up is a new authorization-code login with the challenged scope (with
  the current one under the 2026-07-28 revision), after which the waiting call
  is replayed; without an opener the call fails at once naming
  `mcpctl auth login --server demo`, status shows the need, and that login
  then asks for the scope; the superseded grant is revoked;
- a scope the server never grants costs at most 2 step-ups (3 authorization
  requests with the first login), and the client gets an error, not a hang;
- after a migration the old client_id never reaches the new issuer, the new
  login is never opened unasked (login.browser_on_migration), the old grant
  is kept until the new login succeeds and is then revoked at the old issuer;
  a configured oauth.client_id is not carried to the new issuer at all.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
from test_login import BROWSER, LoginCase  # noqa: E402
from test_workers import WorkerCase, text_of  # noqa: E402

EV_LOGIN_REQUIRED = "oauth.login_required"
DRAFT = "2026-07-28"
OLDER = "2025-11-25"
# A step-up with an opener is a whole login; generous, far below the
# keeper's login timeout (120 s).
STEPUP_WAIT = 90
# "At once": what a client may wait for an error that needs no login.
AT_ONCE = 20


def scopes(s):
    return set((s or "").split())


class StepupCase(LoginCase, WorkerCase):
    """LoginCase's mcpctl and peer helpers, WorkerCase's clients."""

    def setup_stepup(self, login=None, keeper_env=None, oauth=None, peer_args=None, peer_config=None):
        """The peer, a keeper with server demo (login: the config's "login"
        object, None: none), and a first login through mcpctl (scope mcp)."""
        self.peer = self.start_peer(lifetime=3600, extra_args=peer_args)
        if peer_config:
            self.peer.config(**peer_config)
        conf = {"url": self.peer.mcp_url}
        if oauth is not None:
            conf["oauth"] = dict(oauth)
        self.browser_log = os.path.join(self.tmp, "browser.jsonl")
        env = {"BROWSER": "", "MCPKEEPER_TEST_BROWSER_LOG": self.browser_log}
        env.update(keeper_env or {})
        self.k = self.make_keeper(servers={"demo": conf},
                                  extra_config={"login": login} if login is not None else None, env=env)
        self.k.start()
        self.sub = self.k.subscribe()
        self.assert_logged_in(self.ctl("auth", "login", "--server", "demo"))
        self.logged_in_at = time.monotonic()
        self.assertEqual(self.authorize_scopes(), ["mcp"], "the first login asked for scopes_supported")
        return self.k

    def connect(self, version):
        c = self.client("demo")
        r = c.call("initialize", {"protocolVersion": version, "capabilities": {},
                                  "clientInfo": {"name": "stepup-test", "version": "1"}}, 30)
        self.assertIn("result", r, r)
        c.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return c

    def echo(self, c, text, timeout):
        """tools/call echo: (response, seconds it took)."""
        t0 = time.monotonic()
        r = c.call("tools/call", {"name": "echo", "arguments": {"text": text}}, timeout)
        return r, time.monotonic() - t0

    def assert_echoed(self, r, text):
        self.assertIn("result", r, "the call should succeed: %r" % (r,))
        self.assertEqual(text_of(r), text)

    def assert_login_error(self, r, took):
        """A JSON-RPC error at once that tells the user what to run."""
        self.assertIn("error", r, "the call should fail without a login: %r" % (r,))
        self.assertLess(took, AT_ONCE, "the error came at once, not after a wait")
        self.assertIn("mcpctl auth login --server demo", r["error"].get("message", ""), r)

    # -- what the peer saw --
    def authorize_scopes(self):
        return self.last()["authorize_scopes"]

    def grants(self):
        return self.last()["grants"]

    def wait_revoked(self, grant, what):
        def revoked():
            g = self.grants()[grant - 1]
            return g if g["revoked"] else None
        return kl.wait_until(revoked, 20, 0.2, what)

    def login_required(self, name="demo"):
        return self.k.server(name).get("login_required")


# ---------------------------------------------------------------------------

class TestStepUp(StepupCase):

    def test_a_draft_union_opened_by_browser_env(self):
        """$BROWSER in the keeper's environment is the default opener: a 403
        insufficient_scope under 2026-07-28 starts a login for the union of
        the current and the challenged scope, the call is replayed, and the
        superseded grant is revoked."""
        self.setup_stepup(keeper_env={"BROWSER": BROWSER})
        c = self.connect(DRAFT)
        self.assert_echoed(self.echo(c, "before", 30)[0], "before")
        self.peer.config(tool_scope="tools:write")

        r, _ = self.echo(c, "stepped up", STEPUP_WAIT)
        self.assert_echoed(r, "stepped up")
        ev = self.sub.wait_for(EV_LOGIN_REQUIRED, lambda d: d.get("server_name") == "demo", 10)
        self.assertEqual(ev["data"]["reason"], "insufficient_scope", ev)
        self.assertEqual(scopes(ev["data"]["scope"]), {"mcp", "tools:write"}, ev)
        asked = self.authorize_scopes()
        self.assertEqual(len(asked), 2, "one step-up login: %r" % (asked,))
        self.assertEqual(scopes(asked[1]), {"mcp", "tools:write"}, "the union under the draft revision")
        rec = self.browser_records_at_least(2)
        self.assertEqual(len(rec), 2, "mcpctl's login and the keeper's: %r" % (rec,))
        self.assertEqual(rec[1]["callback_status"], 200, rec[1])
        st = self.peer.stats()
        self.assertEqual(st["insufficient_scope"], 1, st)

        grants = self.grants()
        self.assertEqual(len(grants), 2, grants)
        self.assertEqual(scopes(grants[1]["scope"]), {"mcp", "tools:write"})
        self.wait_revoked(1, "the superseded grant to be revoked")
        self.assertFalse(self.grants()[1]["revoked"], "the new grant is kept")
        # The new token serves further calls without another login.
        stepped_up_at = time.monotonic()
        self.assert_echoed(self.echo(c, "again", 30)[0], "again")
        self.assertEqual(len(self.authorize_scopes()), 2)
        self.assertIsNone(self.login_required(), "nothing left to do for the user")
        # Its refresh keeps the wider grant: no scope lost, no login again.
        # (Not within refresh.min_interval of the login, issue 9's floor.)
        time.sleep(max(0.0, stepped_up_at + 2.5 - time.monotonic()))
        self.peer._json("POST", "/test/revoke-access-all", {})
        self.assert_echoed(self.echo(c, "refreshed", 30)[0], "refreshed")
        self.assertGreaterEqual(self.peer.stats()["refresh_grants"], 1)
        self.assertEqual(len(self.authorize_scopes()), 2, "the refreshed token still holds tools:write")

    def test_b_older_revision_configured_opener(self):
        """login.browser: alternatives separated by ':' (the first does not
        exist), the URL in place of "%s". Under 2025-11-25 the new login asks
        for the challenged scope alone."""
        opener = "/nonexistent/mcpkeeper-opener %s:" + BROWSER + " %s --opened-by-keeper"
        self.setup_stepup(login={"browser": opener}, keeper_env={"BROWSER": "/nonexistent/other-browser"})
        c = self.connect(OLDER)
        self.peer.config(tool_scope="tools:write")

        r, _ = self.echo(c, "stepped up", STEPUP_WAIT)
        self.assert_echoed(r, "stepped up")
        ev = self.sub.wait_for(EV_LOGIN_REQUIRED, lambda d: d.get("server_name") == "demo", 10)
        self.assertEqual(ev["data"]["reason"], "insufficient_scope", ev)
        self.assertEqual(ev["data"]["scope"], "tools:write", ev)
        self.assertEqual(self.authorize_scopes(), ["mcp", "tools:write"], "the challenged scope alone")
        rec = self.browser_records_at_least(2)
        self.assertEqual(len(rec), 2, rec)
        self.assertEqual(rec[1]["argv"], [rec[1]["url"], "--opened-by-keeper"], "%s replaced by the URL")
        self.assertTrue(rec[1]["url"].startswith(self.peer.url + "/authorize?"), rec[1])
        self.wait_revoked(1, "the superseded grant to be revoked")

    def test_c_without_opener_the_user_logs_in(self):
        """login.browser false wins over $BROWSER: the call fails at once
        naming `mcpctl auth login --server demo`, status shows the need, and
        that login asks for the scope; then the call goes through."""
        self.setup_stepup(login={"browser": False}, keeper_env={"BROWSER": BROWSER})
        c = self.connect(DRAFT)
        self.peer.config(tool_scope="tools:write")

        r, took = self.echo(c, "too early", STEPUP_WAIT)
        self.assert_login_error(r, took)
        ev = self.sub.wait_for(EV_LOGIN_REQUIRED, lambda d: d.get("server_name") == "demo", 10)
        self.assertEqual(ev["data"]["reason"], "insufficient_scope", ev)
        self.assertEqual(scopes(ev["data"]["scope"]), {"mcp", "tools:write"}, ev)
        self.assertEqual(self.authorize_scopes(), ["mcp"], "nothing was opened for the user")
        self.assertEqual(len(self.browser_records()), 1)

        lr = self.login_required()
        self.assertIsInstance(lr, dict, self.k.server("demo"))
        self.assertEqual(lr["reason"], "insufficient_scope", lr)
        self.assertEqual(scopes(lr["scope"]), {"mcp", "tools:write"}, lr)
        out = self.ctl("status")
        self.assertEqual(out.returncode, 0, out.err)
        line = [x for x in out.out.splitlines() if x.startswith("demo ")]
        self.assertTrue(line and "needs login (scope " in line[0] and "tools:write" in line[0], out.out)
        js = json.loads(self.ctl("status", "--json", "--server", "demo").out)
        self.assertEqual(js["login_required"]["reason"], "insufficient_scope", js)
        # The same call again: still refused at once, still nothing opened.
        r, took = self.echo(c, "still too early", STEPUP_WAIT)
        self.assert_login_error(r, took)
        self.assertEqual(len(self.authorize_scopes()), 1)

        self.assert_logged_in(self.ctl("auth", "login", "--server", "demo"))
        asked = self.authorize_scopes()
        self.assertEqual(len(asked), 2, asked)
        self.assertEqual(scopes(asked[1]), {"mcp", "tools:write"}, "mcpctl's login asks for the scope needed")
        self.assert_echoed(self.echo(c, "after login", 30)[0], "after login")
        self.wait_revoked(1, "the superseded grant to be revoked")
        self.assertIsNone(self.login_required())
        self.assertNotIn("needs login", self.ctl("status").out)

    def test_d_never_granted_scope_is_bounded(self):
        """The attacker: an upstream that keeps asking for a scope that is
        never granted. At most 2 step-ups (3 authorization requests with the
        first login), then an error; a later call opens nothing more."""
        self.setup_stepup(login={"browser": BROWSER})
        self.peer.config(tool_scope="admin", grantable_scopes=["mcp"])
        c = self.connect(DRAFT)

        r, took = self.echo(c, "never", 110)
        self.assertIn("error", r, "the call must fail: %r" % (r,))
        asked = self.authorize_scopes()
        self.assertGreaterEqual(len(asked), 2, "a step-up was tried: %r" % (asked,))
        self.assertLessEqual(len(asked), 3, "at most 2 step-ups: %r" % (asked,))
        for a in asked[1:]:
            self.assertEqual(scopes(a), {"mcp", "admin"}, asked)
        r, took = self.echo(c, "still never", 60)
        self.assertIn("error", r, r)
        self.assertLess(took, AT_ONCE, "no more logins within the login timeout")
        self.assertEqual(self.authorize_scopes(), asked, "no further authorization request")
        self.assertLessEqual(len(self.browser_records()), 3)
        self.k.assert_alive()


class TestMigration(StepupCase):

    def migrate(self, c):
        """Works at the first issuer, then the resource names another one.
        Not within refresh.min_interval (2 s) of the login: a 401 that soon
        may be answered "busy" (issue 9's floor), which is not under test."""
        self.assert_echoed(self.echo(c, "before", 30)[0], "before")
        time.sleep(max(0.0, self.logged_in_at + 2.5 - time.monotonic()))
        self.first_client = self.grants()[0]["client_id"]
        self.peer.config(issuer_path="/tenant2")
        self.new_issuer = self.peer.url + "/tenant2"

    def test_e_migration_waits_for_the_user(self):
        """An opener exists but browser_on_migration is off: the call fails
        at once naming the login command, the old grant stays until the new
        login at the new issuer succeeds (a fresh registration there), then
        it is revoked at the old issuer."""
        self.setup_stepup(login={"browser": BROWSER}, peer_config={"issuer_bound": True})
        c = self.connect(OLDER)
        self.migrate(c)

        r, took = self.echo(c, "moved", STEPUP_WAIT)
        self.assert_login_error(r, took)
        ev = self.sub.wait_for(EV_LOGIN_REQUIRED, lambda d: d.get("server_name") == "demo", 10)
        self.assertEqual(ev["data"]["reason"], "authorization_server_changed", ev)
        self.assertEqual(self.authorize_scopes(), ["mcp"], "no login was opened unasked")
        self.assertEqual(len(self.browser_records()), 1)
        self.assertEqual(self.login_required()["reason"], "authorization_server_changed")
        self.assertFalse(self.grants()[0]["revoked"], "the old grant is kept until the new login")
        self.assertTrue(self.stored_keys(), "the old token is still stored")
        self.assertEqual(self.peer.stats()["foreign_client_id"], 0)

        self.assert_logged_in(self.ctl("auth", "login", "--server", "demo", "--timeout", "30"))
        grants = self.grants()
        self.assertEqual(len(grants), 2, grants)
        self.assertEqual(grants[1]["issuer"], self.new_issuer)
        self.assertNotEqual(grants[1]["client_id"], self.first_client, "registered afresh at the new issuer")
        self.assertEqual(self.peer.stats()["foreign_client_id"], 0, "the old client_id never reached it")
        self.wait_revoked(1, "the old grant to be revoked")
        revs = [x for x in self.last()["revocations"] if x["grant"] == 1 and x["revoked"]]
        self.assertTrue(revs, self.last()["revocations"])
        self.assertTrue(all(x["issuer"] == self.peer.url for x in revs), "revoked at its own issuer: %r" % revs)
        self.assert_echoed(self.echo(c, "after login", 30)[0], "after login")
        self.assertIsNone(self.login_required())
        self.assertEqual(self.peer.stats()["foreign_client_id"], 0, "nor did the revocation go there")

    def test_f_migration_opened_when_allowed(self):
        """login.browser_on_migration: the keeper registers and logs in at the
        new issuer itself and replays the call."""
        self.setup_stepup(login={"browser": BROWSER, "browser_on_migration": True},
                          peer_config={"issuer_bound": True})
        c = self.connect(DRAFT)
        self.migrate(c)

        r, _ = self.echo(c, "moved", STEPUP_WAIT)
        self.assert_echoed(r, "moved")
        ev = self.sub.wait_for(EV_LOGIN_REQUIRED, lambda d: d.get("server_name") == "demo", 10)
        self.assertEqual(ev["data"]["reason"], "authorization_server_changed", ev)
        grants = self.grants()
        self.assertEqual(len(grants), 2, grants)
        self.assertEqual(grants[1]["issuer"], self.new_issuer)
        self.assertNotEqual(grants[1]["client_id"], self.first_client)
        self.assertEqual(self.peer.stats()["foreign_client_id"], 0)
        self.wait_revoked(1, "the old grant to be revoked")
        self.assertEqual(self.peer.stats()["foreign_client_id"], 0, "nor did the revocation go there")
        self.assertEqual(len(self.browser_records_at_least(2)), 2)

    def test_g_configured_client_is_not_carried_over(self):
        """A configured oauth.client_id belongs to the old issuer: after a
        migration it is refused with a clear error, even where the keeper may
        open logins by itself, and never sent to the new issuer."""
        self.setup_stepup(login={"browser": BROWSER, "browser_on_migration": True},
                          oauth={"client_id": "conf-client"}, peer_args=["--client-id", "conf-client"],
                          peer_config={"issuer_bound": True})
        c = self.connect(OLDER)
        self.migrate(c)
        self.assertEqual(self.first_client, "conf-client")

        r, _ = self.echo(c, "moved", STEPUP_WAIT)
        self.assertIn("error", r, "the call must fail: %r" % (r,))
        self.assertIn("client", r["error"].get("message", "").lower(), r)
        # Bounded: a keeper that sent conf-client over would wait for a
        # browser that never gets a code.
        r = self.ctl("auth", "login", "--server", "demo", "--timeout", "15")
        self.assertNotEqual(r.returncode, 0, "a login with the old issuer's client_id: %s%s" % (r.out, r.err))
        self.assertIn("client", r.err.lower(), r.err)
        st = self.peer.stats()
        self.assertEqual(st["foreign_client_id"], 0, "conf-client never reached the new issuer")
        self.assertEqual(self.authorize_scopes(), ["mcp"], "no authorization request anywhere")
        self.assertEqual(len(self.grants()), 1)
        self.k.assert_alive()


if __name__ == "__main__":
    kl.main()
