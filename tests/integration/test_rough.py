#!/usr/bin/env python3
"""
Issue 16, part C: the rough edges a new user hits on a first try, each with
the attack or mistake that showed it.

- mcpctl's options: -c FILE like mcpkeeperd, an option given to the wrong
  command named by its name (not by the value getopt consumed with it), the
  standalone `auth logout --all` naming servers, not store keys.
- A disabled server says "disabled" in status and auth status (JSON and
  tables), not "idle none", whether or not it still stores a token.
- A status of more servers than fit in one message (4 000 here) is paged:
  the control method by offset and limit with total and next_offset,
  mcpctl status fetching every page, the REST list by ?offset=&limit=, and
  one server found by name beyond the first page.
- The HTTP address survives: the keeper binds the listening socket once and
  hands it to every http child, so with "listen": "127.0.0.1:0" neither a
  killed http child nor a reload that restarts it moves the web UI; a reload
  that changes "listen" binds the new address.
- The proxy variables reach the worker: an upstream whose name only the
  proxy knows (mcp.rough.test) is reached through a recording proxy on
  127.0.0.1, which forwards to the test peer.
"""

import http.client
import pwd
import shutil
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402


def ctl(*args, env=None, timeout=60):
    e = {"MCPKEEPER_CONFIG": "/nonexistent/mcpkeeper-rough.json"}
    e.update(env or {})
    r = subprocess.run([kl.MCPCTL] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout, env=kl.child_env(e))
    r.out = r.stdout.decode(errors="replace")
    r.err = r.stderr.decode(errors="replace")
    return r


class TestCtlOptions(kl.KeeperTestCase):
    def test_short_config_option(self):
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        k.start()
        r = ctl("-c", k.config_path, "status")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        self.assertRegex(r.out, r"(?m)^files\s")
        r = ctl("-c", k.config_path, "--timeout", "5", "servers", "--json")
        self.assertEqual(r.returncode, 0, r.out + r.err)

    def test_wrong_option_named_not_its_value(self):
        cases = [
            (("auth", "logout", "--all", "--timeout", "30"), "--timeout"),
            (("auth", "logout", "--timeout=30", "--all"), "--timeout"),
            (("servers", "--server", "secret-looking-value"), "--server"),
            (("servers", "-s", "secret-looking-value"), "-s"),
            (("status", "--timeout", "30"), "--timeout"),
            (("status", "--socket=/x"), "--socket"),
            (("status", "-c", "/x"), "-c"),
        ]
        for args, name in cases:
            r = ctl(*args)
            self.assertEqual(r.returncode, 2, "%s: %s%s" % (args, r.out, r.err))
            self.assertIn("'%s'" % name, r.err, args)
            for value in ("30", "secret-looking-value", "/x"):
                self.assertNotIn(value, r.err, args)
        r = ctl("status", "--timeout", "30")
        self.assertIn("before the command", r.err)

    def test_standalone_logout_all_names_servers(self):
        k = self.make_keeper(servers={
            "demo": {"url": "http://127.0.0.1:9/mcp", "oauth": {"client_id": "c"}},
        })
        key = k.put_token("demo", "http://127.0.0.1:9/mcp", "acc-1", "ref-1", 3600, "http://127.0.0.1:9/token")
        okey = k.put_token("gone", "http://127.0.0.1:9/old", "acc-2", "ref-2", 3600, "http://127.0.0.1:9/token")
        self.assertIn("#", key)
        r = ctl("-c", k.config_path, "auth", "logout", "--all")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        self.assertIn("not running", r.out)
        self.assertIn("demo: deleted the stored token\n", r.out)
        self.assertIn("gone: deleted the stored token (orphaned)\n", r.out)
        self.assertNotIn(key, r.out + r.err)
        self.assertNotIn(okey, r.out + r.err)
        self.assertIn("deleted 2 stored tokens", r.out)
        self.assertEqual(k.store_tool("list").stdout.decode().strip(), "")


class TestDisabled(kl.KeeperTestCase):
    def test_disabled_everywhere(self):
        url = "http://127.0.0.1:9/mcp"
        k = self.make_keeper(servers={
            "off": {"url": url, "enabled": False},
            "offtok": {"url": url + "2", "enabled": False},
            "on": {"url": url + "3"},
        })
        k.put_token("offtok", url + "2", "acc-1", "ref-1", 3600, "http://127.0.0.1:9/token")
        k.start()
        st = {s["name"]: s for s in k.status()["servers"]}
        self.assertEqual(st["off"]["worker"]["state"], "disabled")
        self.assertEqual(st["offtok"]["worker"]["state"], "disabled")
        self.assertEqual(st["on"]["worker"]["state"], "idle")
        for args in (("status",), ("auth", "status")):
            r = ctl("-c", k.config_path, *args)
            self.assertEqual(r.returncode, 0, r.out + r.err)
            rows = {line.split()[0]: line for line in r.out.splitlines() if line.strip()}
            self.assertNotRegex(rows["off"], r"\b(idle|none)\b", args)
            self.assertRegex(rows["off"], r"\bdisabled\b", args)
            self.assertIn("disabled (token authenticated)", rows["offtok"], args)
            self.assertRegex(rows["on"], r"\bnone\b", args)
        r = ctl("-c", k.config_path, "status")
        self.assertRegex(r.out, r"(?m)^off\s+streamable-http\s+disabled\s+disabled\s")


def web_ui(k):
    st = kl.wait_until(lambda: (lambda s: s if s.get("web_ui") else None)(k.rpc("status", {"limit": 1})),
                       30, 0.1, "the http child to listen (status web_ui)")
    m = re.fullmatch(r"(http://127\.0\.0\.1:\d+)/#key=([A-Za-z0-9_\-]+)", st["web_ui"])
    return m.group(1), m.group(2)


class TestStatusPages(kl.KeeperTestCase):
    N = 4000

    def test_status_pages(self):
        servers = {"srv-%04d" % i: {"command": "/bin/cat", "args": ["--a-long-argument-%04d" % i]}
                   for i in range(self.N)}
        k = self.make_keeper(servers=servers)
        k.start(timeout=60)
        # Page by page over the control socket: every server once, in order.
        names, offset, pages = [], 0, 0
        while offset is not None:
            res = k.rpc("status", {"offset": offset}, timeout=30)
            self.assertEqual(res["total"], self.N)
            self.assertEqual(res["offset"], offset)
            self.assertEqual("orphaned_tokens" in res, offset == 0)
            self.assertLessEqual(len(json.dumps(res, separators=(",", ":"))), 1024 * 1024)
            names += [s["name"] for s in res["servers"]]
            self.assertTrue(res["servers"])
            offset, pages = res["next_offset"], pages + 1
        self.assertGreater(pages, 1)
        self.assertEqual(names, sorted(servers))
        res = k.rpc("status", {"offset": 10, "limit": 3})
        self.assertEqual([s["name"] for s in res["servers"]], ["srv-0010", "srv-0011", "srv-0012"])
        self.assertEqual(res["next_offset"], 13)
        res = k.rpc("status", {"offset": self.N - 2, "limit": 5})
        self.assertEqual(len(res["servers"]), 2)
        self.assertIsNone(res["next_offset"])
        res = k.rpc("status", {"server": "srv-3999"})
        self.assertEqual([s["name"] for s in res["servers"]], ["srv-3999"])
        for bad in ({"offset": -1}, {"limit": 0}, {"offset": "x"}):
            with self.assertRaises(kl.RpcError) as e:
                k.rpc("status", bad)
            self.assertEqual(e.exception.kind, "invalid_params", bad)
        with self.assertRaises(kl.RpcError) as e:
            k.rpc("status", {"server": "nosuch"})
        self.assertEqual(e.exception.kind, "not_found")

        # mcpctl status: every page, one table.
        r = ctl("-c", k.config_path, "status", timeout=120)
        self.assertEqual(r.returncode, 0, r.err)
        self.assertTrue("%d servers" % self.N in r.out, r.out[:300])
        rows = [line.split()[0] for line in r.out.splitlines() if line.startswith("srv-")]
        self.assertTrue(rows == sorted(servers), "%d rows" % len(rows))
        r = ctl("-c", k.config_path, "status", "--json", timeout=120)
        self.assertEqual(r.returncode, 0, r.err)
        doc = json.loads(r.out)
        self.assertEqual(len(doc["servers"]), self.N)
        self.assertIsNone(doc["next_offset"])
        r = ctl("-c", k.config_path, "status", "--json", "-s", "srv-3999")
        self.assertEqual(r.returncode, 0, r.err)
        self.assertEqual(json.loads(r.out)["name"], "srv-3999")

        # REST: ?offset=&limit=, and one server beyond the first page.
        base, key = web_ui(k)
        hdr = {"X-API-Key": key}
        r = kl.http("GET", base + "/api/v1/servers?offset=3998&limit=5", headers=hdr)
        self.assertEqual(r.status, 200, r.body)
        body = r.json()
        self.assertEqual([s["name"] for s in body["data"]][:3], ["srv-3998", "srv-3999"])
        self.assertEqual((body["total"], body["offset"], body["next_offset"]), (self.N, 3998, None))
        r = kl.http("GET", base + "/api/v1/servers", headers=hdr, timeout=60)
        self.assertEqual(r.status, 200, r.body[:200])
        body = r.json()
        self.assertEqual(body["total"], self.N)
        self.assertLess(len(body["data"]), self.N)
        self.assertEqual(body["next_offset"], len(body["data"]))
        r = kl.http("GET", base + "/api/v1/servers/srv-3999", headers=hdr)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["data"]["name"], "srv-3999")
        for q in ("limit=0", "offset=-1", "offset=x", "limit=1&limit=2", "offset=99999999999"):
            r = kl.http("GET", base + "/api/v1/servers?" + q, headers=hdr)
            self.assertEqual(r.status, 400, q)
            self.assertEqual(r.json()["kind"], "invalid_request", q)


class TestHttpAddress(kl.KeeperTestCase):
    def http_state(self, k, old_pid=None):
        """(pid, base URL, key) once an http child other than old_pid listens."""
        def up():
            st = k.rpc("status", {"limit": 1})
            pid = st["http"]["pid"]
            return st if pid and pid != old_pid and st.get("web_ui") and \
                st["http"]["state"] == "running" else None
        st = kl.wait_until(up, 30, 0.1, "an http child (not pid %s) to listen" % old_pid)
        m = re.fullmatch(r"(http://127\.0\.0\.1:\d+)/#key=([A-Za-z0-9_\-]+)", st["web_ui"])
        self.assertTrue(m, st["web_ui"])
        return st["http"]["pid"], m.group(1), m.group(2)

    def assert_serves(self, base, key):
        r = kl.http("GET", base + "/api/v1/servers", headers={"X-API-Key": key})
        self.assertEqual(r.status, 200, r.body)

    def test_address_survives_restarts_and_reloads(self):
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        k.start()
        pid, base, key = self.http_state(k)
        self.assert_serves(base, key)

        # The http child dies: the keeper restarts it on the same address.
        os.kill(pid, signal.SIGKILL)
        pid2, base2, _ = self.http_state(k, pid)
        self.assertEqual(base2, base)
        self.assert_serves(base, key)

        # A reload that restarts the http child (its settings changed) and
        # keeps "listen": the same address.
        k.extra_config = {"http": {"max_connections": 33}}
        k.write_config()
        k.signal(signal.SIGHUP)
        pid3, base3, _ = self.http_state(k, pid2)
        self.assertEqual(base3, base)
        self.assert_serves(base, key)

        # A reload that changes "listen": the new address, the old one closed.
        free = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
        free.close()
        k.extra_config = {"http": {"max_connections": 33}, "listen": "127.0.0.1:%d" % port}
        k.write_config()
        k.signal(signal.SIGHUP)
        pid4, base4, _ = self.http_state(k, pid3)
        self.assertEqual(base4, "http://127.0.0.1:%d" % port)
        self.assert_serves(base4, key)
        with self.assertRaises(OSError):
            kl.http("GET", base + "/api/v1/servers", headers={"X-API-Key": key}, timeout=5)

        # A taken address: the reload keeps the old one, and says why.
        taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        k.extra_config = {"http": {"max_connections": 34}, "listen": "127.0.0.1:%d" % taken.getsockname()[1]}
        k.write_config()
        k.signal(signal.SIGHUP)
        pid5, base5, _ = self.http_state(k, pid4)
        self.assertEqual(base5, base4)
        self.assert_serves(base4, key)
        self.assertIn("cannot listen on 127.0.0.1:%d" % taken.getsockname()[1], k.log())

    def test_port_in_use_at_start_is_retried(self):
        taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        try:
            k = self.make_keeper(servers={"files": {"command": "/bin/cat"}},
                                 extra_config={"listen": "127.0.0.1:%d" % port})
            k.start()
            kl.wait_until(lambda: "cannot listen on 127.0.0.1:%d" % port in k.log(), 30, 0.1,
                          "the keeper to say the port is taken")
            self.assertIsNone(k.rpc("status", {"limit": 1})["web_ui"])
        finally:
            taken.close()
        # Freed: a retry (with backoff) listens there.
        _, base, key = self.http_state(k)
        self.assertEqual(base, "http://127.0.0.1:%d" % port)
        self.assert_serves(base, key)

    def test_socket_from_systemd(self):
        """systemd's socket named "http" (a second socket of the unit) is the
        HTTP API's, whatever "listen" says, and survives a child restart."""
        act = shutil.which("systemd-socket-activate")
        if not act:
            self.skipTest("systemd-socket-activate is not installed")
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}},
                             extra_config={"users": dict.fromkeys(("oauth", "http", "worker"),
                                                              pwd.getpwuid(os.geteuid()).pw_name)})
        os.makedirs(k.runtime_dir, mode=0o700, exist_ok=True)
        free = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
        free.close()
        argv = [act, "-l", k.socket_path, "-l", "127.0.0.1:%d" % port, "--fdname=control:http"]
        for name, val in sorted(os.environ.items()):
            if name.endswith("SAN_OPTIONS"):
                argv += ["-E", "%s=%s" % (name, val)]
        argv += [kl.KEEPERD, "--config", k.config_path]
        logf = open(k.log_path, "ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=kl.child_env())
        logf.close()
        kl._register(proc)
        self.addCleanup(kl.stop_process, proc)
        kl.wait_until(lambda: os.path.exists(k.socket_path) or proc.poll() is not None, 30, 0.05,
                      "systemd-socket-activate to listen")
        self.assertIsNone(proc.poll(), kl.tail(k.log()))
        k.rpc("status", {"limit": 1}, timeout=60)
        pid, base, key = self.http_state(k)
        self.assertEqual(base, "http://127.0.0.1:%d" % port)
        self.assertIn("HTTP socket from systemd: 127.0.0.1:%d" % port, k.log())
        self.assert_serves(base, key)
        os.kill(pid, signal.SIGKILL)
        _, base2, _ = self.http_state(k, pid)
        self.assertEqual(base2, base)
        self.assert_serves(base, key)


class RecordingProxy(http.server.ThreadingHTTPServer):
    """An HTTP forward proxy on 127.0.0.1 that records each request's
    absolute URL and sends it on to one upstream (the peer), whatever host
    the URL names: mcp.rough.test resolves nowhere else."""
    daemon_threads = True

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.seen = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server_address[1]

    def stop(self):
        self.shutdown()
        self.server_close()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    HOP = {"connection", "proxy-connection", "keep-alive", "transfer-encoding", "te", "trailer",
           "upgrade", "proxy-authorization"}

    def log_message(self, *a):
        pass

    def _forward(self):
        u = urllib.parse.urlsplit(self.path)
        with self.server.lock:
            self.server.seen.append((self.command, self.path, self.headers.get("User-Agent", "")))
        if not u.scheme or not u.hostname:
            self.send_error(400, "not a proxy request")
            return
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in self.HOP}
        up = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        try:
            up.request(self.command, (u.path or "/") + ("?" + u.query if u.query else ""), body, headers)
            resp = up.getresponse()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in self.HOP:
                    self.send_header(k, v)
            if resp.getheader("Content-Length") is None:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    break
                self.wfile.write(chunk)
                self.wfile.flush()
        finally:
            up.close()

    do_GET = do_POST = do_DELETE = _forward


class TestProxy(kl.KeeperTestCase):
    def test_worker_goes_through_the_proxy(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_workers import Client, text_of  # noqa: E402
        peer = self.start_peer(lifetime=3600)
        proxy = RecordingProxy(int(urllib.parse.urlsplit(peer.url).port))
        self.addCleanup(proxy.stop)
        url = "http://mcp.rough.test:%d/mcp" % urllib.parse.urlsplit(peer.url).port
        cid = peer.register()
        access, refresh = peer.login(cid)
        env = {"http_proxy": proxy.url, "HTTP_PROXY": proxy.url, "https_proxy": proxy.url, "NO_PROXY": ""}
        k = self.make_keeper(servers={"gh": {"url": url, "oauth": {"client_id": cid}, "allow_insecure_http": True}}, env=env)
        k.put_token("gh", url, access, refresh, 3600, peer.token_endpoint)
        k.start()
        self.k = k
        c = Client(k, "gh")
        self.addCleanup(lambda: c.close() if c.proc.poll() is None else None)
        c.initialize()
        r = c.echo("through the proxy")
        self.assertEqual(text_of(r), "through the proxy", r)
        with proxy.lock:
            seen = list(proxy.seen)
        self.assertTrue([m for m, u, ua in seen if m == "POST" and u == url], seen)

    def test_oauth_child_goes_through_the_proxy(self):
        peer = self.start_peer(lifetime=3600)
        port = urllib.parse.urlsplit(peer.url).port
        proxy = RecordingProxy(port)
        self.addCleanup(proxy.stop)
        url = "http://mcp.rough.test:%d/mcp" % port
        env = {"http_proxy": proxy.url, "NO_PROXY": "example.org,.other.test"}
        k = self.make_keeper(servers={"gh": {"url": url, "allow_insecure_http": True},
                                      "local": {"url": peer.mcp_url}}, env=env)
        k.start()
        for name in ("gh", "local"):
            ctl("-c", k.config_path, "--timeout", "20", "auth", "login", "-s", name, "--no-browser",
                "--timeout", "3")
        with proxy.lock:
            seen = list(proxy.seen)
        discovery = [(m, u) for m, u, ua in seen if ua.startswith("mcpkeeper/")]
        # The oauth child's probe of the server (no worker runs: no token).
        self.assertIn(("POST", url), discovery, seen)
        # Loopback never goes through a proxy: the proxy saw nothing of "local".
        self.assertFalse([u for m, u in discovery if "127.0.0.1" in u], seen)
        # The peer's challenge names its metadata at 127.0.0.1: for a server
        # whose address is public, the policy still refuses it.
        self.assertIn("refusing to connect to 127.0.0.1 (loopback)", k.log())


if __name__ == "__main__":
    kl.main()
