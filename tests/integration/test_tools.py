#!/usr/bin/env python3
"""
What the upstream offers (issue 16 part D): `mcpctl tools NAME` and GET
/api/v1/servers/NAME/tools, through the server's worker, against the HTTP
test peer (OAuth: before and after a login) and the stdio test server
(tests/stdio-mcp: --extra-tool offers hostile entries, --tool-pages a list
that never ends).

Played as the attacker: an upstream whose names and descriptions hold
terminal escapes and HTML must reach the terminal cleaned and the REST
client as JSON strings (the UI inserts them as text: the browser test);
an upstream whose nextCursor never ends must not hold the caller: the
listing stops at its bound and says so.
"""
import json
import os
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
from test_http import HttpCase, STDIO_SERVER  # noqa: E402

ESC_TITLE = "\x1b]0;owned\x07"
HOSTILE_DESC = "Clears the screen\x1b[2J\x1b[31m red <img src=x onerror=alert(1)>\nsecond line"
HOSTILE_TOOL = {"name": "evil\x1b[1mtool", "description": HOSTILE_DESC + ESC_TITLE,
                "inputSchema": {"type": "object", "properties": {"<b>x</b>": {"type": "string"},
                                                                 "n": {"type": ["integer", "null"]}},
                                "required": ["<b>x</b>"]}}
PAGES_MAX = 16      # common/toollist.h TOOLLIST_MAX_PAGES
REQUESTS_MAX = 64   # TOOLLIST_MAX_REQUESTS
CURSOR_MAX = 4096   # TOOLLIST_MAX_CURSOR
CALLS_MAX = 16      # daemon/http/tools.c TOOLS_CALLS_MAX
TIMEOUT_S = 30      # TOOLLIST_TIMEOUT_S


class ToolsCase(HttpCase):

    def ctl(self, *args, timeout=60):
        r = subprocess.run([kl.MCPCTL, "--socket", self.k.socket_path] + list(args), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout, env=kl.child_env())
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def stdio_keeper(self, *server_args):
        if not os.path.exists(STDIO_SERVER):
            self.fail("%s is not built" % STDIO_SERVER)
        servers = {"files": {"command": STDIO_SERVER, "args": list(server_args)}}
        self.start(servers=servers, login_servers=())
        return self.run_keeper()

    def assert_clean_text(self, text):
        for c in text:
            self.assertFalse(ord(c) < 0x20 and c != "\n" or ord(c) == 0x7f or 0x80 <= ord(c) <= 0x9f,
                             "a control character %r reached the terminal: %r" % (c, text))


class TestStdio(ToolsCase):

    def test_a_table_json_and_rest(self):
        self.stdio_keeper()
        rc, out, err = self.ctl("tools", "files")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["NAME", "DESCRIPTION", "ARGUMENTS"], out)
        echo = [ln for ln in lines if ln.startswith("echo ")]
        self.assertEqual(len(echo), 1, out)
        self.assertIn("Returns its text.", echo[0])
        self.assertTrue(echo[0].rstrip().endswith("text: string"), echo[0])
        fds = [ln for ln in lines if ln.startswith("fds ")][0]
        self.assertTrue(fds.rstrip().endswith("-"), fds)
        self.assertEqual(len(lines), 1 + 7, out)

        rc, out, err = self.ctl("tools", "--json", "files")
        self.assertEqual(rc, 0, err)
        data = json.loads(out)
        self.assertEqual(data["server"], "files")
        self.assertIsNone(data["truncated"])
        add = [t for t in data["tools"] if t["name"] == "add"][0]
        self.assertEqual(add["description"], "Adds two numbers.")
        self.assertEqual(sorted((a["name"], a["type"], a["required"]) for a in add["arguments"]),
                         [("a", "number", True), ("b", "number", True)])
        self.assertEqual(add["inputSchema"]["required"], ["a", "b"])

        rest = self.assert_ok(self.req("GET", "/api/v1/servers/files/tools"))
        self.assertEqual(rest, data)
        # openapi.json describes the route.
        doc = self.req("GET", "/openapi.json", key=None).json()
        self.assertIn("get", doc["paths"]["/api/v1/servers/{id}/tools"])
        self.assertIn("ToolList", doc["components"]["schemas"])
        self.assertEqual(set(doc["components"]["schemas"]["ToolList"]["properties"]), set(rest))
        # The API key is required, and only GET is allowed.
        self.assertEqual(self.req("GET", "/api/v1/servers/files/tools", key=None).status, 401)
        self.assertEqual(self.req("POST", "/api/v1/servers/files/tools", body={}).status, 405)
        self.k.assert_alive()

    def test_b_errors(self):
        if not os.path.exists(STDIO_SERVER):
            self.fail("%s is not built" % STDIO_SERVER)
        self.start(servers={"files": {"command": STDIO_SERVER},
                            "off": {"command": STDIO_SERVER, "enabled": False}}, login_servers=())
        self.run_keeper()
        rc, _, err = self.ctl("tools", "off")
        self.assertEqual(rc, 1, err)
        self.assertIn("disabled", err)
        self.assert_err(self.req("GET", "/api/v1/servers/off/tools"), 503, "unavailable")
        rc, _, err = self.ctl("tools", "nosuch")
        self.assertEqual(rc, 6, err)
        self.assertIn("nosuch", err)
        self.assert_err(self.req("GET", "/api/v1/servers/nosuch/tools"), 404, "not_found")
        rc, _, err = self.ctl("tools")
        self.assertEqual(rc, 2, err)
        rc, _, err = self.ctl("tools", "files", "--bogus")
        self.assertEqual(rc, 2, err)

    def test_c_hostile_descriptions(self):
        self.stdio_keeper("--extra-tool", json.dumps(HOSTILE_TOOL), "--extra-tool", '{"description": "no name"}',
                          "--extra-tool", '"not even an object"')
        rc, out, err = self.ctl("tools", "files")
        self.assertEqual(rc, 0, err)
        self.assert_clean_text(out)
        self.assert_clean_text(err)
        row = [ln for ln in out.splitlines() if ln.startswith("evil")]
        self.assertEqual(len(row), 1, out)
        self.assertIn("evil?[1mtool", row[0])
        # One line: the description's first line only, cleaned, marked as cut.
        self.assertIn("Clears the screen?[2J?[31m red <img src=x onerror=alert(1)>...", row[0])
        self.assertNotIn("second line", out)
        self.assertIn("<b>x</b>: string", row[0])
        self.assertIn("n?: integer|null", row[0])
        self.assertIn("2 entries", err)
        # JSON: the strings as the upstream sent them, escaped.
        rc, out, err = self.ctl("tools", "--json", "files")
        self.assertEqual(rc, 0, err)
        self.assertNotIn("\x1b", out)
        evil = [t for t in json.loads(out)["tools"] if t["name"].startswith("evil")][0]
        self.assertEqual(evil["description"], HOSTILE_DESC + ESC_TITLE)
        r = self.req("GET", "/api/v1/servers/files/tools")
        self.assertNotIn(b"\x1b", r.body)
        data = self.assert_ok(r)
        self.assertEqual(data["skipped"], 2)
        self.assertIn(HOSTILE_TOOL["name"], [t["name"] for t in data["tools"]])

    def test_d_pages_followed_and_bounded(self):
        self.stdio_keeper("--tool-pages", "5")
        rc, out, err = self.ctl("tools", "--json", "files")
        self.assertEqual(rc, 0, err)
        names = [t["name"] for t in json.loads(out)["tools"]]
        self.assertEqual(names[-4:], ["page-1", "page-2", "page-3", "page-4"])
        self.assertIsNone(json.loads(out)["truncated"])

    def test_e_endless_pages(self):
        self.stdio_keeper("--tool-pages", "1000000000")
        rc, out, err = self.ctl("tools", "files")
        self.assertEqual(rc, 0, err)
        self.assertIn("page-%d " % (PAGES_MAX - 1), out)
        self.assertNotIn("page-%d " % PAGES_MAX, out)
        self.assertIn("stopped early: more than %d pages" % PAGES_MAX, err)
        data = self.assert_ok(self.req("GET", "/api/v1/servers/files/tools"))
        self.assertEqual(data["truncated"], "more than %d pages" % PAGES_MAX)
        self.assertEqual(len(data["tools"]), 7 + PAGES_MAX - 1)
        self.k.assert_alive()

    def test_f_pings_answered_and_bounded(self):
        # A few requests from the upstream are answered (ping) on the way...
        self.stdio_keeper("--pings", "3")
        rc, out, err = self.ctl("tools", "files")
        self.assertEqual(rc, 0, err)
        self.assertIn("echo ", out)
        self.assert_ok(self.req("GET", "/api/v1/servers/files/tools"))

    def test_g_request_flood(self):
        # ...a flood of them fails the listing instead of keeping it busy.
        self.stdio_keeper("--pings", "500")
        rc, _, err = self.ctl("tools", "files")
        self.assertEqual(rc, 1, err)
        self.assertIn("more than %d requests" % REQUESTS_MAX, err)
        e = self.assert_err(self.req("GET", "/api/v1/servers/files/tools"), 502, "unavailable")
        self.assertIn("more than %d requests" % REQUESTS_MAX, e["message"])
        self.k.assert_alive()

    def test_h_malformed_lists(self):
        cases = [
            ({"tools": [], "nextCursor": "c" * (CURSOR_MAX + 1)}, "nextCursor longer than %d bytes" % CURSOR_MAX),
            ({"tools": {"name": "x"}}, "without a list of tools"),
            (["not", "an", "object"], "without a list of tools"),
        ]
        for reply, why in cases:
            with self.subTest(reply=json.dumps(reply)[:60]):
                self.stdio_keeper("--tools-reply", json.dumps(reply))
                rc, _, err = self.ctl("tools", "files")
                self.assertEqual(rc, 1, err)
                self.assertIn(why, err)
                e = self.assert_err(self.req("GET", "/api/v1/servers/files/tools"), 502, "unavailable")
                self.assertIn(why, e["message"])
                self.k.assert_alive()
                self.k.stop()

    def test_i_concurrent_listings_capped(self):
        # Listings of an upstream that takes its time: the 17th finds 16 in
        # progress and is refused at once; the 16 then complete.
        self.stdio_keeper("--list-delay", "8000")
        results = [None] * CALLS_MAX

        def listing(i):
            results[i] = self.req("GET", "/api/v1/servers/files/tools", timeout=60)
        threads = [threading.Thread(target=listing, args=(i,)) for i in range(CALLS_MAX)]
        try:
            for t in threads:
                t.start()
            kl.wait_until(lambda: (self.k.server("files").get("worker") or {}).get("clients", 0) >= CALLS_MAX,
                          10, 0.1, "the worker to hold %d listings" % CALLS_MAX)
            busy = self.req("GET", "/api/v1/servers/files/tools", timeout=60)
        finally:
            for t in threads:
                t.join(60)
        e = self.assert_err(busy, 503, "busy")
        self.assertIn("at most %d" % CALLS_MAX, e["message"])
        for r in results:
            self.assertEqual(len(self.assert_ok(r)["tools"]), 7)

    def test_j_timeouts(self):
        # An upstream that never lists: mcpctl gives up at --timeout, the API
        # at its 30 s, both saying so; the keeper and the http child go on.
        self.stdio_keeper("--list-delay", "600000")
        rc, _, err = self.ctl("--timeout", "1", "tools", "files")
        self.assertEqual(rc, 1, err)
        self.assertIn("files did not answer within 1 s (see --timeout)", err)
        e = self.assert_err(self.req("GET", "/api/v1/servers/files/tools", timeout=90), 504, "unavailable")
        self.assertIn("did not list its tools within %d s" % TIMEOUT_S, e["message"])
        self.assert_ok(self.req("GET", "/api/v1/servers"))
        self.k.assert_alive()


class TestPeer(ToolsCase):

    def test_a_login_required_then_listed(self):
        self.start()
        self.run_keeper()
        rc, _, err = self.ctl("tools", "demo")
        self.assertEqual(rc, 1, err)
        self.assertIn("mcpctl auth login --server demo", err)
        e = self.assert_err(self.req("GET", "/api/v1/servers/demo/tools"), 503, "login_required")
        self.assertIn("mcpctl auth login --server demo", e["message"])
        self.api_login()
        rc, out, err = self.ctl("tools", "demo")
        self.assertEqual(rc, 0, err)
        self.assertEqual(sorted(ln.split()[0] for ln in out.splitlines()[1:]), ["add", "echo", "slow"])
        data = self.assert_ok(self.req("GET", "/api/v1/servers/demo/tools"))
        self.assertEqual(data["server"], "demo")
        slow = [t for t in data["tools"] if t["name"] == "slow"][0]
        self.assertEqual(slow["arguments"], [{"name": "ms", "type": "integer", "required": True}])

    def test_b_unreachable_upstream(self):
        # Nothing listens there once the peer is gone: 502, and mcpctl says why.
        self.start()
        self.run_keeper()
        self.api_login()
        self.peer.stop()
        rc, _, err = self.ctl("tools", "demo")
        self.assertEqual(rc, 1, err)
        self.assertIn("tools demo:", err)
        self.assert_err(self.req("GET", "/api/v1/servers/demo/tools"), 502, "unavailable")
        self.k.assert_alive()


if __name__ == "__main__":
    kl.main()
