#!/usr/bin/env python3
"""
Login, logout and status through mcpctl (issue 5), end to end: mcpctl asks
the real keeper, the keeper drives the real oauth child, the oauth child
talks to the C test peer, and a non-interactive $BROWSER (browser.py) plays
the user's browser. Every outcome is checked where it lands: mcpctl's exit
status and output, the keeper's status, the token store (store-tool), and
what the peer saw (/test/last, /test/stats).
"""
import json
import os
import select
import signal
import subprocess
import sys
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
from keeperlib import EV_CHANGED, EV_REFRESHED  # noqa: E402

BROWSER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser.py")


class LoginCase(kl.KeeperTestCase):

    def setup_login(self, names=("demo",), lifetime=3600, oauth=None, extra_servers=None, peer_args=None,
                    refresh=None, start=True):
        self.peer = self.start_peer(lifetime=lifetime, extra_args=peer_args)
        servers = {}
        for n in names:
            conf = {"url": self.peer.mcp_url}
            if oauth is not None:
                conf["oauth"] = dict(oauth)
            servers[n] = conf
        servers.update(extra_servers or {})
        self.k = self.make_keeper(servers=servers, refresh=refresh)
        self.browser_log = os.path.join(self.tmp, "browser.jsonl")
        self.sub = None
        if start:
            self.k.start()
            self.sub = self.k.subscribe()
        return self.k

    def ctl(self, *args, mode="follow", timeout=90, env=None, config=True):
        e = {"BROWSER": BROWSER, "MCPKEEPER_TEST_BROWSER_MODE": mode,
             "MCPKEEPER_TEST_BROWSER_LOG": self.browser_log,
             "MCPKEEPER_CONFIG": self.k.config_path if config else "/nonexistent/mcpkeeper-it.json"}
        e.update(env or {})
        r = subprocess.run([kl.MCPCTL] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout, env=kl.child_env(e))
        r.out = r.stdout.decode(errors="replace")
        r.err = r.stderr.decode(errors="replace")
        return r

    def browser_records(self):
        if not os.path.exists(self.browser_log):
            return []
        with open(self.browser_log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def browser_records_at_least(self, n, timeout=10):
        """The opener's records once there are n of them (or what there is
        after timeout): the opener writes its record after the callback page
        came back, which may be after the login itself completed."""
        deadline = time.monotonic() + timeout
        rec = self.browser_records()
        while len(rec) < n and time.monotonic() < deadline:
            time.sleep(0.05)
            rec = self.browser_records()
        return rec

    def last(self):
        return self.peer._json("GET", "/test/last")

    def stored_keys(self):
        out = self.k.store_tool("list").stdout.decode()
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def assert_logged_in(self, r, name="demo"):
        self.assertEqual(r.returncode, 0, "mcpctl auth login: %s%s" % (r.out, r.err))
        self.assertIn("%s: authenticated" % name, r.out)
        self.assertEqual(self.k.server(name)["oauth_status"], "authenticated")

    def assert_login_failed(self, r, *words, name="demo"):
        self.assertEqual(r.returncode, 1, "mcpctl auth login should fail: %s%s" % (r.out, r.err))
        for w in words:
            self.assertIn(w, r.err, "the error names %r" % w)
        s = self.k.server(name)
        self.assertFalse(s["login_in_progress"], s)
        self.k.assert_alive()


# ---------------------------------------------------------------------------

class TestLogin(LoginCase):

    def test_a_full_login_dynamic_registration(self):
        k = self.setup_login(lifetime=8, refresh={"threshold": 0.5})
        self.assertEqual(k.server("demo")["oauth_status"], "none")
        r = self.ctl("auth", "login", "--server", "demo")
        self.assert_logged_in(r)
        # The URL was printed, and the browser got it and a success page.
        rec = self.browser_records()
        self.assertEqual(len(rec), 1, rec)
        self.assertIn(rec[0]["url"], r.out)
        self.assertTrue(rec[0]["url"].startswith(self.peer.url + "/authorize?"), rec[0]["url"])
        self.assertEqual(rec[0]["callback_status"], 200, rec[0])
        self.assertIn("demo", rec[0]["page"])
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(rec[0]["url"]).query))
        self.assertEqual(q["code_challenge_method"], "S256")
        self.assertEqual(q["resource"], self.peer.mcp_url, "resource exactly as the metadata names it")
        self.assertEqual(q["scope"], "mcp", "scopes_supported of the resource metadata")
        self.assertRegex(q["redirect_uri"], r"^http://127\.0\.0\.1:\d+/oauth/callback$")
        self.assertGreaterEqual(len(q["state"]), 32)
        # What the peer saw: a native public client, the resource on the token request, PKCE checked.
        last = self.last()
        self.assertEqual(last["register"]["application_type"], "native")
        self.assertEqual(sorted(last["register"]["grant_types"]), ["authorization_code", "refresh_token"])
        self.assertEqual(last["register"]["redirect_uris"], [q["redirect_uri"]])
        self.assertEqual(last["token"]["grant_type"], "authorization_code")
        self.assertEqual(last["token"]["resource"], self.peer.mcp_url)
        self.assertIs(last["token"]["pkce_ok"], True)
        paths = [d["path"] for d in last["discovery"]]
        self.assertIn("/.well-known/oauth-authorization-server", paths)
        # servers.changed, then the proactive refresh of the new token (threshold 0.5 of 8 s).
        ev = self.sub.wait_for(EV_CHANGED, lambda d: d.get("reason") == "oauth_login", 10)
        self.assertEqual(ev["data"]["server"], "demo")
        ev = self.sub.wait_for(EV_REFRESHED, None, 30)
        self.assertEqual(ev["data"]["server_name"], "demo")
        st = self.peer.stats()
        self.assertGreaterEqual(st["refresh_grants"], 1, st)
        last = self.last()
        self.assertEqual(last["token"]["grant_type"], "refresh_token")
        self.assertEqual(last["token"]["resource"], self.peer.mcp_url, "resource on the refresh too")

        # Logging in again reuses the registration and the redirect port.
        regs = st["registrations"]
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_logged_in(r)
        self.assertEqual(self.peer.stats()["registrations"], regs, "the stored client was reused")
        rec = self.browser_records()
        q2 = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(rec[-1]["url"]).query))
        self.assertEqual(q2["redirect_uri"], q["redirect_uri"], "the redirect port is stable")
        self.assertEqual(q2["client_id"], q["client_id"])
        # Nothing secret in the keeper's log, mcpctl's output or the browser's URL.
        self.assertNotIn("code_verifier", k.log())
        kl.assert_no_secrets(k.log(), [q["state"], q2["state"]], "keeper log")

    def test_b_token_reaches_the_worker(self):
        k = self.setup_login()
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_logged_in(r)
        p = subprocess.Popen([kl.MCPCTL, "--socket", k.socket_path, "connect", "demo"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kl.child_env())
        msgs = [{"jsonrpc": "2.0", "id": 1, "method": "initialize",
                 "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                            "clientInfo": {"name": "t", "version": "1"}}},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                 "params": {"name": "echo", "arguments": {"text": "after login"}}}]
        # An MCP client waits for the initialize result before it goes on.
        p.stdin.write((json.dumps(msgs[0]) + "\n").encode())
        p.stdin.flush()
        ready, _, _ = select.select([p.stdout], [], [], 30)
        self.assertTrue(ready, "the initialize result within 30 s")
        first = json.loads(p.stdout.readline())
        self.assertIn("result", first)
        out, err = p.communicate(("\n".join(json.dumps(m) for m in msgs[1:]) + "\n").encode(), timeout=60)
        replies = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        call = [m for m in replies if m.get("id") == 2]
        self.assertTrue(call and "result" in call[0], (replies, err))
        self.assertIn("after login", json.dumps(call[0]["result"]))

    def test_c_configured_client_basic_auth(self):
        self.setup_login(peer_args=["--client-id", "conf-client", "--client-secret", "conf-secret"],
                         oauth={"client_id": "conf-client", "client_secret": "conf-secret", "redirect_port": 0})
        self.peer.config(auth_methods=["client_secret_basic", "client_secret_post"])
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_logged_in(r)
        last = self.last()
        self.assertEqual(self.peer.stats()["registrations"], 0, "no registration with a configured client")
        self.assertEqual(last["token"]["client_id"], "conf-client")
        self.assertEqual(last["token"]["auth_method"], "client_secret_basic")
        kl.assert_no_secrets(self.k.log(), ["conf-secret"], "keeper log")

    def test_d_scope_from_challenge_and_config(self):
        self.setup_login()
        self.peer.config(challenge_scope="mcp tools:read")
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_logged_in(r)
        self.assertEqual(self.last()["authorize"]["scope"], "mcp tools:read", "the challenge's scope wins")
        # Configured scopes override (reload with an oauth block).
        self.k.servers["demo"]["oauth"] = {"scopes": ["mcp"]}
        self.k.write_config()
        self.k.signal(signal.SIGHUP)
        kl.wait_until(lambda: "configuration reloaded" in self.k.log(), 20, 0.1, "the reload")
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_logged_in(r)
        self.assertEqual(self.last()["authorize"]["scope"], "mcp")

    def test_e_issuer_with_path_discovery_order(self):
        self.setup_login()
        self.peer.config(issuer_path="/tenant1", as_metadata="openid", prm_paths="root",
                         challenge_metadata=False)
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_logged_in(r)
        paths = [(d["path"], d["status"]) for d in self.last()["discovery"]]
        expect = [("/.well-known/oauth-protected-resource/mcp", 404),
                  ("/.well-known/oauth-protected-resource", 200),
                  ("/.well-known/oauth-authorization-server/tenant1", 404),
                  ("/.well-known/openid-configuration/tenant1", 200)]
        self.assertEqual(paths[:len(expect)], expect, paths)

    def test_f_login_all(self):
        self.setup_login(names=("one", "two"), extra_servers={"files": {"command": "/bin/cat"}})
        r = self.ctl("auth", "login", "--all")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        for n in ("one", "two"):
            self.assertIn("%s: authenticated" % n, r.out)
            self.assertEqual(self.k.server(n)["oauth_status"], "authenticated")
        self.assertEqual(len(self.browser_records()), 2)
        r = self.ctl("auth", "login", "--all")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        self.assertIn("already authenticated", r.out)
        self.assertEqual(len(self.browser_records()), 2, "nobody needed a login")


    def test_g_other_authorization_server_registers_again(self):
        self.setup_login()
        self.assert_logged_in(self.ctl("auth", "login", "-s", "demo"))
        first = self.last()["token"]["client_id"]
        regs = self.peer.stats()["registrations"]
        # The resource metadata now names another authorization server.
        self.peer.config(issuer_path="/tenant2")
        self.assert_logged_in(self.ctl("auth", "login", "-s", "demo"))
        self.assertEqual(self.peer.stats()["registrations"], regs + 1, "registered at the new server")
        second = self.last()["token"]["client_id"]
        self.assertNotEqual(second, first, "the old credentials are not reused")
        self.assertEqual(self.last()["register"]["redirect_uris"], [self.last()["token"]["redirect_uri"]])
        # Back at the first one, its own registration is reused.
        self.peer.config(issuer_path="")
        self.assert_logged_in(self.ctl("auth", "login", "-s", "demo"))
        self.assertEqual(self.peer.stats()["registrations"], regs + 1)
        self.assertEqual(self.last()["token"]["client_id"], first)


class TestLoginFailures(LoginCase):

    def test_a_state_mismatch(self):
        # A redirect with another state gets a 400 page and does not end the
        # login (anyone could send one): it waits for the real one until its
        # deadline (test_limits.py sends that one too).
        self.setup_login()
        r = self.ctl("auth", "login", "-s", "demo", "--timeout", "3", mode="tamper-state")
        self.assert_login_failed(r, "no answer from the browser within 3")
        self.assertEqual(self.k.server("demo")["oauth_status"], "none")
        rec = self.browser_records()[0]
        self.assertEqual(rec["callback_status"], 400, rec)
        self.assertIn("does not belong to the login in progress", rec["page"])
        self.assertEqual(self.peer.stats()["token_grants"], 0, "no code exchange after a state mismatch")
        self.assertEqual(self.stored_keys(), [])

    def test_b_pkce_wrong(self):
        self.setup_login()
        r = self.ctl("auth", "login", "-s", "demo", mode="tamper-challenge")
        self.assert_login_failed(r, "invalid_grant", "PKCE")
        self.assertIs(self.last()["token"]["pkce_ok"], False)
        self.assertEqual(self.k.server("demo")["oauth_status"], "none")

    def test_c_resource_wrong(self):
        self.setup_login(oauth={"resource": "http://127.0.0.1:1/elsewhere"})
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_login_failed(r, "invalid_target")

    def test_d_authorization_server_error(self):
        self.setup_login()
        self.peer.config(authorize_error="access_denied")
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_login_failed(r, "access_denied")
        self.assertIn("failed", self.browser_records()[0]["page"].lower())

    def test_e_no_s256(self):
        self.setup_login()
        self.peer.config(s256=False)
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_login_failed(r, "S256")
        self.assertEqual(self.browser_records(), [], "no browser was opened")
        self.assertIsNone(self.last()["authorize"])

    def test_f_issuer_mismatch_and_iss(self):
        self.setup_login()
        self.peer.config(metadata_issuer="http://127.0.0.1:1")
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_login_failed(r, "issuer")
        self.peer.config(metadata_issuer=None, wrong_iss=True)
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_login_failed(r, "iss")
        self.assertEqual(self.peer.stats()["token_grants"], 0)

    def test_g_timeout_then_success(self):
        self.setup_login()
        r = self.ctl("auth", "login", "-s", "demo", "--timeout", "3", mode="ignore")
        self.assert_login_failed(r, "no answer from the browser within 3")
        self.assertEqual(len(self.browser_records()), 1)
        # The port is free again and a new login works.
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_logged_in(r)

    def test_h_caller_goes_away(self):
        self.setup_login()
        p = subprocess.Popen([kl.MCPCTL, "--config", self.k.config_path, "auth", "login", "-s", "demo",
                              "--no-browser"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=kl.child_env())
        kl.wait_until(lambda: self.k.server("demo")["login_in_progress"], 20, 0.1, "the login to start")
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        kl.wait_until(lambda: not self.k.server("demo")["login_in_progress"], 20, 0.1, "the login to end")
        self.assertIn("login cancelled", self.k.log())
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_logged_in(r)

    def test_i_errors(self):
        self.setup_login(extra_servers={"files": {"command": "/bin/cat"},
                                        "static": {"url": "http://127.0.0.1:1/mcp", "oauth": False}})
        r = self.ctl("auth", "login", "-s", "nosuch")
        self.assertEqual(r.returncode, 6, r.err)
        self.assertIn("nosuch", r.err)
        for n in ("files", "static"):
            r = self.ctl("auth", "login", "-s", n)
            self.assertEqual(r.returncode, 7, r.err)
            self.assertIn("does not use OAuth", r.err)
        r = self.ctl("auth", "login")
        self.assertEqual(r.returncode, 2)
        r = self.ctl("auth", "login", "-s", "demo", "--all")
        self.assertEqual(r.returncode, 2)

    def test_j_login_during_pending_refresh(self):
        k = self.setup_login(lifetime=6, refresh={"threshold": 0.5, "timeout": 20})
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_logged_in(r)
        self.peer.config(hang_seconds=15)
        self.peer.fail("hang", 1)
        kl.wait_until(lambda: k.server("demo")["refresh"]["state"] == "refreshing", 20, 0.1, "a refresh in flight")
        r = self.ctl("auth", "login", "-s", "demo")
        self.assert_logged_in(r)
        s = k.server("demo")
        self.assertIn(s["refresh"]["state"], ("scheduled", "refreshing"), s)
        # The new token is refreshed on its own schedule afterwards.
        ev = self.sub.wait_for(EV_REFRESHED, None, 40)
        self.assertEqual(ev["data"]["server_name"], "demo")
        self.assertEqual(k.server("demo")["oauth_status"], "authenticated")
        k.assert_alive()


class TestLogout(LoginCase):

    def login(self, name="demo"):
        self.assert_logged_in(self.ctl("auth", "login", "-s", name), name)

    def orphan_other(self, k):
        """Logs in to demo and other, then takes other out of the config: its
        token is kept and shown as orphaned."""
        self.login("demo")
        self.login("other")
        del k.servers["other"]
        k.write_config()
        k.signal(signal.SIGHUP)
        kl.wait_until(lambda: k.status().get("orphaned_tokens"), 20, 0.1, "the orphan to show")

    def test_a_logout_revokes(self):
        self.setup_login()
        self.login()
        before = self.peer.stats()["revocations"]
        r = self.ctl("auth", "logout", "-s", "demo")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        self.assertIn("demo: logged out", r.out)
        self.assertIn("revoked", r.out)
        self.assertEqual(self.peer.stats()["revocations"], before + 2, "refresh and access token revoked")
        self.assertEqual(self.last()["revoke"]["token_type_hint"], "access_token")
        self.assertEqual(self.k.server("demo")["oauth_status"], "none")
        self.assertEqual(self.stored_keys(), [])
        ev = self.sub.wait_for(EV_CHANGED, lambda d: d.get("reason") == "oauth_logout", 10)
        self.assertEqual(ev["data"]["server"], "demo")

    def test_b_revocation_fails_logout_does_not(self):
        self.setup_login()
        self.login()
        self.peer.config(revoke_fail=True)
        r = self.ctl("auth", "logout", "-s", "demo")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        self.assertIn("did not revoke", r.err)
        self.assertEqual(self.stored_keys(), [])

    def test_c_logout_without_keeper_and_orphans(self):
        k = self.setup_login(names=("demo", "other"))
        self.orphan_other(k)
        st = k.status()
        self.assertEqual([o["name"] for o in st["orphaned_tokens"]], ["other"])
        r = self.ctl("status")
        self.assertRegex(r.out, r"(?m)^other\s.*orphaned")
        k.stop()
        # Standalone: the keeper is not running.
        r = self.ctl("auth", "logout", "-s", "demo")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        self.assertIn("not running", r.out)
        self.assertIn("directly", r.out)
        self.assertEqual([x.split("#")[0] for x in self.stored_keys()], ["other"])
        r = self.ctl("auth", "logout", "-s", "demo")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        self.assertIn("no stored token", r.out)
        r = self.ctl("auth", "logout", "--all")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        self.assertIn("deleted 1 stored token", r.out)
        self.assertEqual(self.stored_keys(), [])

    def test_d_logout_all_with_keeper_takes_orphans(self):
        k = self.setup_login(names=("demo", "other"))
        self.orphan_other(k)
        r = self.ctl("auth", "logout", "--all")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        self.assertIn("demo: logged out", r.out)
        self.assertIn("other: logged out (orphaned token deleted)", r.out)
        self.assertEqual(self.stored_keys(), [])
        self.assertEqual(k.status()["orphaned_tokens"], [])

    def test_e_logout_errors(self):
        k = self.setup_login(extra_servers={"files": {"command": "/bin/cat"}})
        for running in (True, False):
            r = self.ctl("auth", "logout", "-s", "files")
            self.assertEqual(r.returncode, 7, r.err)
            self.assertIn("not_oauth", r.err)
            r = self.ctl("auth", "logout", "-s", "nosuch")
            self.assertEqual(r.returncode, 6, r.err)
            self.assertIn("not_found", r.err)
            if running:
                k.stop()

    def test_f_logout_during_login(self):
        self.setup_login()
        p = subprocess.Popen([kl.MCPCTL, "--config", self.k.config_path, "auth", "login", "-s", "demo",
                              "--no-browser"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=kl.child_env())
        kl.wait_until(lambda: self.k.server("demo")["login_in_progress"], 20, 0.1, "the login to start")
        r = self.ctl("auth", "logout", "-s", "demo")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn("cancelled", err.decode())


class TestStatus(LoginCase):

    SERVER_KEYS = {"name", "protocol", "url", "enabled", "oauth", "source", "oauth_status", "token_expires_at",
                   "token_expires_at_unix", "token_obtained_at", "token_obtained_at_unix", "worker", "refresh",
                   "login_in_progress", "login_required"}

    def test_a_status_json_shape(self):
        self.setup_login(extra_servers={"files": {"command": "/bin/cat"}})
        self.assert_logged_in(self.ctl("auth", "login", "-s", "demo"))
        r = self.ctl("status", "--json")
        self.assertEqual(r.returncode, 0, r.err)
        st = json.loads(r.out)
        # Every page in one document, next_offset null (issue 16).
        self.assertEqual(set(st), {"version", "pid", "mode", "config", "servers", "orphaned_tokens", "http",
                                   "web_ui", "total", "offset", "next_offset"})
        self.assertIsNone(st["next_offset"])
        self.assertEqual(set(st["http"]), {"state", "pid", "url"})
        demo = [s for s in st["servers"] if s["name"] == "demo"][0]
        self.assertEqual(set(demo), self.SERVER_KEYS)
        self.assertEqual(demo["oauth_status"], "authenticated")
        self.assertIsNone(demo["login_required"])
        kl.assert_time_text(self, demo["token_expires_at"], demo["token_expires_at_unix"])
        kl.assert_time_text(self, demo["token_obtained_at"], demo["token_obtained_at_unix"])
        self.assertIsNotNone(demo["token_expires_at"])
        self.assertEqual(set(demo["refresh"]), {"state", "retry_count", "next_at", "next_at_unix", "last_error"})
        kl.assert_time_text(self, demo["refresh"]["next_at"], demo["refresh"]["next_at_unix"])
        self.assertEqual(set(demo["worker"]) >= {"state"}, True, demo["worker"])
        files = [s for s in st["servers"] if s["name"] == "files"][0]
        self.assertIsNone(files["oauth_status"])
        self.assertNotIn("login_in_progress", files)
        # One server, as the same object.
        r = self.ctl("status", "--json", "-s", "demo")
        self.assertEqual(json.loads(r.out)["name"], "demo")
        r = self.ctl("status", "-s", "nosuch")
        self.assertEqual(r.returncode, 6)

    def test_b_status_table(self):
        self.setup_login(extra_servers={"files": {"command": "/bin/cat"}})
        r = self.ctl("status")
        self.assertEqual(r.returncode, 0, r.err)
        head = [line for line in r.out.splitlines() if line.startswith("NAME")][0]
        self.assertEqual(head.split(), ["NAME", "TRANSPORT", "WORKER", "AUTH", "EXPIRES", "NEXT", "REFRESH",
                                        "LAST", "ERROR"])
        self.assertRegex(r.out, r"(?m)^demo\s+streamable-http\s+\S+\s+none\s")
        self.assert_logged_in(self.ctl("auth", "login", "-s", "demo"))
        r = self.ctl("auth", "status")
        self.assertRegex(r.out, r"(?m)^demo\s+authenticated\s+in \d+[hm]")
        r = self.ctl("auth", "status", "--json", "-s", "demo")
        self.assertEqual(json.loads(r.out)["servers"][0]["oauth_status"], "authenticated")

    def test_d_status_of_many_servers_is_paged(self):
        # More servers than one 1 MiB reply holds: pages (issue 16), which
        # mcpctl status fetches all of.
        servers = {"s%04d" % i: {"url": "http://127.0.0.1:1/mcp/%04d" % i} for i in range(4000)}
        self.k = self.make_keeper(servers=servers)
        self.browser_log = os.path.join(self.tmp, "browser.jsonl")
        self.k.start(wait=False)

        def up():
            try:
                return self.k.rpc("servers.list", timeout=5)
            except (OSError, kl.RpcError, kl.WaitTimeout):
                return None
        kl.wait_until(up, 60, 0.2, "the keeper to answer servers.list")
        st = self.k.rpc("status", timeout=30)
        self.assertEqual(st["total"], 4000)
        self.assertEqual(st["next_offset"], len(st["servers"]))
        r = self.ctl("status", timeout=60)
        self.assertEqual(r.returncode, 0, r.err)
        self.assertTrue(", 4000 servers\n" in r.out, r.out[:200])
        self.assertEqual(self.k.auth_status("s0001")["name"], "s0001", "one server still answers")

    def test_c_events(self):
        self.setup_login()
        p = subprocess.Popen([kl.MCPCTL, "--config", self.k.config_path, "events", "--json"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=kl.child_env())
        try:
            time.sleep(0.5)
            self.assert_logged_in(self.ctl("auth", "login", "-s", "demo"))
            ready, _, _ = select.select([p.stdout], [], [], 20)
            self.assertTrue(ready, "an event line within 20 s")
            ev = json.loads(p.stdout.readline())
            self.assertEqual(ev["type"], "servers.changed")
            self.assertEqual(ev["data"], {"reason": "oauth_login", "server": "demo"})
        finally:
            p.kill()
            p.wait(10)


if __name__ == "__main__":
    kl.main()
