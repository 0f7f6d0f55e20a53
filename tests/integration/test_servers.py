#!/usr/bin/env python3
"""
Managing upstreams at runtime (issue 16, parts A and B): servers.add,
servers.remove, servers.update and reload on the control socket, the same
through mcpctl and through the REST API, against the real keeper and its
http child. Each change is checked where it lands: the reply, the
servers.changed event, status, the config file on disk (also after a kill -9
right after the reply) and the keeper's log.

The attacker's side: an edit of the file by someone else is not overwritten
(even with the mtime put back), the API key cannot make the keeper run a
command or send a token in clear, disable_management refuses every change,
and header values never travel on mcpctl's command line.
"""
import json
import os
import re
import signal
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
from keeperlib import EV_CHANGED  # noqa: E402

HTTP_SERVER = {"url": "http://127.0.0.1:9/mcp", "oauth": False}
TOKEN_URL = "http://127.0.0.1:9/token"


def read_json(path):
    with open(path) as f:
        return json.load(f)


class ServersTest(kl.KeeperTestCase):
    def keeper(self, servers=None, extra=None, http=False):
        k = self.make_keeper(servers=servers if servers is not None else {"a": dict(HTTP_SERVER)},
                             extra_config=extra)
        os.chmod(k.config_path, 0o600)
        k.start()
        if http:
            k.wait_http()
        return k

    def api(self, k):
        st = kl.wait_until(lambda: k.status().get("web_ui") and k.status(), 30, 0.1, "web_ui in status")
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/#key=([A-Za-z0-9_\-]+)", st["web_ui"])
        self.assertTrue(m, st["web_ui"])
        base = "http://127.0.0.1:%s/api/v1/servers" % m.group(1)
        headers = {"X-API-Key": m.group(2), "Content-Type": "application/json"}

        def call(method, path="", body=None):
            data = json.dumps(body).encode() if body is not None else None
            r = kl.http(method, base + path, data, headers)
            return r.status, r.json()
        call.base = base
        return call

    def ctl(self, k, *args, stdin=None):
        r = subprocess.run([kl.MCPCTL, "--socket", k.socket_path] + list(args), input=stdin,
                           capture_output=True, text=True, timeout=30, env=kl.child_env())
        return r.returncode, r.stdout, r.stderr

    def assert_refused(self, k, kind, method, params):
        with self.assertRaises(kl.RpcError) as cm:
            k.rpc(method, params)
        self.assertEqual(cm.exception.kind, kind, str(cm.exception))
        return str(cm.exception)

    # ---- control socket ----

    def test_control_add_update_remove(self):
        """Each method changes status and the file and emits its event; the
        validation is the config file's own, message and all."""
        k = self.keeper(extra={"x_unknown_setting": {"kept": [1, 2.5]}})
        sub = k.subscribe()

        res = k.rpc("servers.add", {"server": "b", "config": {"url": "https://example.com/mcp"}})
        self.assertEqual(res, {"server": "b", "reason": "server_added"})
        sub.wait_for(EV_CHANGED, lambda d: d.get("reason") == "server_added" and d.get("server") == "b")
        b = k.server("b")
        self.assertEqual((b["url"], b["enabled"], b["oauth"], b["source"]),
                         ("https://example.com/mcp", True, True, "config"))

        res = k.rpc("servers.update", {"server": "b", "set": {"enabled": False}})
        self.assertEqual(res["reason"], "server_updated")
        sub.wait_for(EV_CHANGED, lambda d: d.get("reason") == "server_updated" and d.get("server") == "b")
        self.assertFalse(k.server("b")["enabled"])

        res = k.rpc("servers.remove", {"server": "a"})
        self.assertEqual(res["reason"], "server_removed")
        sub.wait_for(EV_CHANGED, lambda d: d.get("reason") == "server_removed" and d.get("server") == "a")
        self.assertEqual([s["name"] for s in k.status()["servers"]], ["b"])

        cfg = read_json(k.config_path)
        self.assertEqual(cfg["mcpServers"], {"b": {"url": "https://example.com/mcp", "enabled": False}})
        self.assertEqual(cfg["x_unknown_setting"], {"kept": [1, 2.5]}, "an unknown key was lost")
        self.assertEqual(stat.S_IMODE(os.stat(k.config_path).st_mode), 0o600)

        # The refusals, each with its kind.
        self.assert_refused(k, "exists", "servers.add", {"server": "b", "config": {"url": "https://x.example/"}})
        self.assert_refused(k, "not_found", "servers.remove", {"server": "zz"})
        self.assert_refused(k, "not_found", "servers.update", {"server": "zz", "set": {"enabled": True}})
        self.assert_refused(k, "invalid_params", "servers.add", {"server": "c"})
        msg = self.assert_refused(k, "invalid_params", "servers.add",
                                  {"server": "c", "config": {"url": "ftp://x.example/"}})
        self.assertIn("config.json: mcpServers.c.url: must be an http or https URL", msg)
        # The same entry written by hand: the reload names it in the same words.
        text = open(k.config_path).read()
        bad = read_json(k.config_path)
        bad["mcpServers"]["c"] = {"url": "ftp://x.example/"}
        k.write_config(json.dumps(bad))
        reload_msg = self.assert_refused(k, "invalid_config", "reload", None)
        self.assertIn("mcpServers.c.url: must be an http or https URL", reload_msg)
        k.write_config(text)
        self.assertEqual(k.rpc("reload"), {"servers": 1})

        log = k.log()
        for what in ("b: server_added by pid", "a: server_removed by pid", "control: reload by pid"):
            self.assertRegex(log, re.escape(what) + r" \d+ uid %d" % os.getuid())

    def test_rename_and_url_change_orphan_the_token(self):
        """The server key is name plus URL hash: a rename, a new URL and a
        removal each leave the stored token orphaned, and status says so."""
        url = "http://127.0.0.1:9/mcp"
        k = self.make_keeper(servers={"gh": {"url": url}, "gl": {"url": url}})
        k.put_token("gh", url, "at-gh", "rt-gh", 3600, TOKEN_URL)
        k.put_token("gl", url, "at-gl", "rt-gl", 3600, TOKEN_URL)
        k.start()
        self.assertEqual(k.server("gh")["oauth_status"], "authenticated")

        res = k.rpc("servers.update", {"server": "gh", "set": {"name": "github"}})
        self.assertEqual((res["server"], res["previous"]), ("github", "gh"))
        self.assertTrue(res["orphaned"].startswith("gh#"), res)
        self.assertEqual(k.server("github")["oauth_status"], "none")
        res = k.rpc("servers.update", {"server": "gl", "set": {"url": "http://127.0.0.1:9/other"}})
        self.assertTrue(res["orphaned"].startswith("gl#"), res)
        self.assertEqual(k.server("gl")["oauth_status"], "none")
        orphans = sorted(o["name"] for o in k.status()["orphaned_tokens"])
        self.assertEqual(orphans, ["gh", "gl"])
        self.assertEqual(list(read_json(k.config_path)["mcpServers"]), ["github", "gl"], "order kept")

        res = k.rpc("servers.remove", {"server": "github"})
        self.assertNotIn("orphaned", res, "github never had a token of its own")
        rc, out, err = self.ctl(k, "auth", "logout", "-s", "gh")
        self.assertEqual(rc, 0, out + err)
        self.assertRegex(k.log(), r"control: auth\.logout gh by pid \d+ uid %d\n" % os.getuid())
        self.assertEqual(sorted(o["name"] for o in k.status()["orphaned_tokens"]), ["gl"])

    def test_persisted_before_the_reply(self):
        """kill -9 right after each reply: the change is in the file, written
        through the symlink, the list form and the mode kept."""
        k = self.make_keeper(extra_config={"mcpServers": [dict(HTTP_SERVER, name="a")]})
        target = os.path.join(k.dir, "real-config.json")
        os.rename(k.config_path, target)
        os.chmod(target, 0o640)
        os.symlink("real-config.json", k.config_path)
        k.start()

        k.rpc("servers.add", {"server": "b", "config": {"url": "https://example.com/mcp", "headers": {"X-A": "1"}}})
        k.kill()
        self.assertTrue(os.path.islink(k.config_path), "the symlink was replaced by a file")
        cfg = read_json(target)
        self.assertEqual([s["name"] for s in cfg["mcpServers"]], ["a", "b"])
        self.assertEqual(cfg["mcpServers"][1]["headers"], {"X-A": "1"})
        self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o640)
        self.assertEqual([f for f in os.listdir(k.dir) if f.startswith(".real-config")], [], "temporary file left")

        k.start()
        self.assertEqual([s["name"] for s in k.status()["servers"]], ["a", "b"])
        k.rpc("servers.remove", {"server": "a"})
        k.kill()
        self.assertEqual([s["name"] for s in read_json(target)["mcpServers"]], ["b"])

    def test_concurrent_edit_is_not_overwritten(self):
        """Someone edits the file after the keeper read it, and puts the mtime
        back: the change is refused (by content, not mtime) and the edit stays."""
        k = self.keeper()
        st = os.stat(k.config_path)
        edited = read_json(k.config_path)
        edited["mcpServers"]["by-hand"] = {"url": "https://hand.example/mcp"}
        with open(k.config_path, "w") as f:  # in place, same inode
            json.dump(edited, f)
        os.utime(k.config_path, ns=(st.st_atime_ns, st.st_mtime_ns))

        msg = self.assert_refused(k, "conflict", "servers.add", {"server": "b", "config": {"url": "https://b.example/"}})
        self.assertIn("changed since the keeper read it", msg)
        self.assert_refused(k, "conflict", "servers.remove", {"server": "a"})
        self.assertEqual(read_json(k.config_path), edited, "the edit by hand was overwritten")
        self.assertEqual([s["name"] for s in k.status()["servers"]], ["a"])

        k.rpc("reload")
        k.rpc("servers.add", {"server": "b", "config": {"url": "https://b.example/"}})
        self.assertEqual(sorted(read_json(k.config_path)["mcpServers"]), ["a", "b", "by-hand"])

    # ---- mcpctl ----

    def test_cli(self):
        k = self.keeper(servers={"a": dict(HTTP_SERVER)})
        headers = os.path.join(self.tmp, "headers")
        with open(headers, "w") as f:
            f.write("# a comment\nX-Api-Key: file-secret-1\n")
        rc, out, err = self.ctl(k, "servers", "add", "b", "--url", "https://example.com/mcp", "--scope", "read write",
                                "--header-file", headers)
        self.assertEqual((rc, out), (0, "b: added\n"), err)
        rc, out, err = self.ctl(k, "servers", "add", "c", "--url", "https://example.com/c", "--no-oauth",
                                "--header", "Authorization", stdin="Bearer stdin-secret-2\n")
        self.assertEqual(rc, 0, err)
        stdio = os.path.join(kl.BUILD_ROOT, "tests", "stdio-mcp", "mcpkeeper-test-stdio-server")
        rc, out, err = self.ctl(k, "servers", "add", "s", "--disabled", "--", stdio, "--flag", "x")
        self.assertEqual(rc, 0, err)
        servers = read_json(k.config_path)["mcpServers"]
        self.assertEqual(servers["b"]["oauth"], {"scopes": "read write"})
        self.assertEqual(servers["b"]["headers"], {"X-Api-Key": "file-secret-1"})
        self.assertEqual(servers["c"]["headers"], {"Authorization": "Bearer stdin-secret-2"})
        self.assertEqual((servers["s"]["command"], servers["s"]["args"], servers["s"]["enabled"]),
                         (stdio, ["--flag", "x"], False))
        for secret in ("file-secret-1", "stdin-secret-2"):
            self.assertNotIn(secret, k.log())

        self.assertEqual(self.ctl(k, "servers", "enable", "s")[:2], (0, "s: updated\n"))
        self.assertTrue(k.server("s")["enabled"])
        rc, out, err = self.ctl(k, "servers", "set", "b", "name=bb", "eager=true", "oauth=null")
        self.assertEqual((rc, out), (0, "bb: updated (was b)\n"), err)
        self.assertEqual(read_json(k.config_path)["mcpServers"]["bb"],
                         {"url": "https://example.com/mcp", "headers": {"X-Api-Key": "file-secret-1"}, "eager": True})
        rc, out, err = self.ctl(k, "servers", "set", "bb", "eager=1x")
        self.assertEqual(rc, 1, "'1x' was taken for JSON")
        self.assertIn("mcpServers.bb.eager", err)
        rc, out, err = self.ctl(k, "servers", "set", "bb", "headers={\"X\":\"on-the-command-line\"}")
        self.assertEqual(rc, 2, "a header value on the command line was accepted")
        rc, out, err = self.ctl(k, "servers", "add", "bad", "--url", "nope")
        self.assertEqual(rc, 1)
        self.assertIn("mcpServers.bad.url: must be an http or https URL", err)
        self.assertEqual(self.ctl(k, "servers", "remove", "nope")[0], 6)
        self.assertEqual(self.ctl(k, "servers", "disable", "c")[:2], (0, "c: updated\n"))
        self.assertEqual(self.ctl(k, "servers", "remove", "c")[:2], (0, "c: removed\n"))
        rc, out, err = self.ctl(k, "reload")
        self.assertEqual((rc, out), (0, "reloaded: 3 server(s)\n"), err)
        self.assertEqual(sorted(s["name"] for s in k.status()["servers"]), ["a", "bb", "s"])

    # ---- REST ----

    def test_rest(self):
        stdio = os.path.join(kl.BUILD_ROOT, "tests", "stdio-mcp", "mcpkeeper-test-stdio-server")
        k = self.keeper(servers={"a": dict(HTTP_SERVER), "s": {"command": stdio}}, http=True)
        call = self.api(k)
        sub = k.subscribe()

        # The quickstart's body.
        body = {"name": "test-oauth", "url": "http://localhost:9000", "protocol": "http", "oauth": {"scopes": ["mcp"]}}
        self.assertEqual(call("POST", "", body), (201, {"success": True, "data": {"server": "test-oauth",
                                                                                   "reason": "server_added"}}))
        sub.wait_for(EV_CHANGED, lambda d: d.get("reason") == "server_added")
        self.assertEqual(read_json(k.config_path)["mcpServers"]["test-oauth"],
                         {"url": "http://localhost:9000", "protocol": "http", "oauth": {"scopes": ["mcp"]}})
        status, got = call("GET", "/test-oauth")
        self.assertEqual((status, got["data"]["oauth_status"]), (200, "none"))

        status, got = call("POST", "", body)
        self.assertEqual((status, got["success"], got["kind"]), (409, False, "exists"))
        status, got = call("POST", "", {"name": "bad", "url": "ftp://x.example/"})
        self.assertEqual((status, got["kind"]), (400, "invalid_params"))
        self.assertIn("mcpServers.bad.url: must be an http or https URL", got["error"])
        self.assertEqual(call("POST", "", {"url": "https://x.example/"})[0], 400)
        self.assertEqual(call("PATCH", "/nope", {"enabled": False})[0], 404)
        self.assertEqual(call("DELETE", "/nope")[0], 404)

        status, got = call("PATCH", "/s", {"enabled": False})
        self.assertEqual((status, got["data"]["reason"]), (200, "server_updated"))
        self.assertFalse(k.server("s")["enabled"])
        status, got = call("DELETE", "/test-oauth")
        self.assertEqual((status, got["data"]["reason"]), (200, "server_removed"))

        # The attacks: an API key is not a shell.
        before = open(k.config_path).read()
        attacks = [
            ("POST", "", {"name": "evil", "command": "/bin/sh", "args": ["-c", "touch /tmp/pwned"]}),
            ("POST", "", {"name": "evil", "protocol": "stdio", "command": "/bin/sh"}),
            ("PATCH", "/s", {"command": "/bin/sh"}),
            ("PATCH", "/s", {"args": ["-c", "id"]}),
            ("PATCH", "/s", {"env": {"LD_PRELOAD": "/tmp/x.so"}}),
            ("PATCH", "/s", {"sandbox": False}),
            ("PATCH", "/a", {"allow_insecure_http": True}),
            ("POST", "", {"name": "clear", "url": "http://10.0.0.1/mcp", "allow_insecure_http": True}),
        ]
        for method, path, body in attacks:
            status, got = call(method, path, body)
            self.assertEqual((status, got["kind"]), (403, "forbidden"), "%s %s %r: %r" % (method, path, body, got))
            self.assertIn("control socket", got["error"])
        self.assertEqual(open(k.config_path).read(), before, "a refused change reached the file")
        self.assertEqual(sorted(s["name"] for s in k.status()["servers"]), ["a", "s"])
        # The document says so.
        doc = kl.http("GET", call.base.replace("/api/v1/servers", "/openapi.json")).json()
        self.assertIn("post", doc["paths"]["/api/v1/servers"])
        self.assertIn("patch", doc["paths"]["/api/v1/servers/{id}"])
        self.assertIn("delete", doc["paths"]["/api/v1/servers/{id}"])
        # The same through the control socket is the operator's right.
        k.rpc("servers.update", {"server": "s", "set": {"args": ["--quiet"]}})
        self.assertEqual(read_json(k.config_path)["mcpServers"]["s"]["args"], ["--quiet"])

    def test_system_mode_overlay(self):
        """System mode: /etc's file stays the administrator's; the changes go
        to the sealed overlay in the store, survive a kill -9 and a reload,
        and status says where each server comes from."""
        kl.needs_root(self, "system mode needs root (children run as other users)")
        users = {"oauth": "daemon", "http": "bin", "worker": "nobody"}
        k = self.make_keeper(servers={"a": dict(HTTP_SERVER), "b": dict(HTTP_SERVER, url="http://127.0.0.1:9/b")},
                             extra_config={"users": users})
        k.start(args=["--system"])
        before = open(k.config_path).read()
        k.rpc("servers.add", {"server": "c", "config": {"url": "https://example.com/mcp"}})
        k.rpc("servers.remove", {"server": "a"})
        k.rpc("servers.update", {"server": "b", "set": {"enabled": False}})
        k.kill()
        self.assertEqual(open(k.config_path).read(), before, "system mode wrote the administrator's file")
        store = open(os.path.join(k.data_dir, "servers.db"), "rb").read()
        self.assertNotIn(b"example.com", store, "the overlay is not sealed")

        k.start(args=["--system"])
        want = [("b", False, "runtime"), ("c", True, "runtime")]
        self.assertEqual([(x["name"], x["enabled"], x["source"]) for x in k.status()["servers"]], want)
        # The administrator adds a server to the file: the reload keeps the
        # overlay over it, and the tombstone keeps "a" removed.
        cfg = read_json(k.config_path)
        cfg["mcpServers"]["d"] = dict(HTTP_SERVER, url="http://127.0.0.1:9/d")
        k.write_config(json.dumps(cfg))
        k.rpc("reload")
        self.assertEqual(sorted((x["name"], x["enabled"], x["source"]) for x in k.status()["servers"]),
                         want + [("d", True, "config")])
        # Added again at runtime: the tombstone goes.
        k.rpc("servers.add", {"server": "a", "config": dict(HTTP_SERVER)})
        self.assertEqual(k.server("a")["source"], "runtime")

    def test_disable_management(self):
        k = self.keeper(extra={"disable_management": True}, http=True)
        call = self.api(k)
        before = open(k.config_path).read()
        for method, params in (("servers.add", {"server": "b", "config": {"url": "https://b.example/"}}),
                               ("servers.remove", {"server": "a"}),
                               ("servers.update", {"server": "a", "set": {"enabled": False}}),
                               ("reload", None)):
            self.assert_refused(k, "forbidden", method, params)
        self.assertEqual(call("POST", "", {"name": "b", "url": "https://b.example/"})[0], 403)
        self.assertEqual(call("PATCH", "/a", {"enabled": False})[0], 403)
        self.assertEqual(call("DELETE", "/a")[0], 403)
        rc, out, err = self.ctl(k, "servers", "remove", "a")
        self.assertEqual(rc, 1)
        self.assertIn("management is disabled", err)
        self.assertEqual(open(k.config_path).read(), before)
        self.assertEqual([s["name"] for s in k.status()["servers"]], ["a"])


if __name__ == "__main__":
    kl.main()
