#!/usr/bin/env python3
"""
The http child (mcpkeeper-http) end to end: the real keeper starts it on
127.0.0.1 port 0, and the tests talk HTTP to it the way the web UI, a tool
with ?apikey= and an MCP client over streamable HTTP would. Each outcome is
checked where it lands: the HTTP status and JSON envelope, the keeper's
status and event stream on the control socket, the token store, what the
test peer saw, and the logs (the API key never appears there).

The address and the key come from the keeper's status ("web_ui":
http://127.0.0.1:PORT/#key=KEY), as mcpctl shows them.
"""
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
from keeperlib import EV_CHANGED, EV_FAILED, EV_REFRESHED  # noqa: E402

HTTP_BIN = os.path.join(kl.BUILD_ROOT, "daemon", "http", "mcpkeeper-http")
STDIO_SERVER = os.path.join(kl.BUILD_ROOT, "tests", "stdio-mcp", "mcpkeeper-test-stdio-server")

MIB = 1024 * 1024
MCP_ACCEPT = "application/json, text/event-stream"
PROTOCOL_VERSION = "2025-06-18"


# ---------------------------------------------------------------------------
# HTTP helpers (standard library only)

def raw_request(port, data, timeout=15.0, body=b"", wait_before_body=2.0):
    """Sends data (a request head, bytes) on a fresh connection, then body
    unless the server answered first; returns (status, headers dict with
    lower-case names, body bytes) of the response, read until the connection
    closes or Content-Length is complete. Bounded by timeout."""
    deadline = time.monotonic() + timeout
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    buf = b""
    try:
        s.sendall(data)
        if body:
            # A server may refuse from the head alone (Content-Length too
            # big) and close: read that answer before pushing the body.
            r, _, _ = select.select([s], [], [], wait_before_body)
            if not r:
                try:
                    s.sendall(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end >= 0:
                head = buf[:head_end].decode("latin-1")
                lines = head.split("\r\n")
                status = int(lines[0].split()[1])
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                rest = buf[head_end + 4:]
                if "content-length" in headers and len(rest) >= int(headers["content-length"]):
                    return status, headers, rest[:int(headers["content-length"])]
            left = deadline - time.monotonic()
            if left <= 0:
                raise kl.WaitTimeout("no complete HTTP response within %.0f s (got %r)" % (timeout, buf[:200]))
            r, _, _ = select.select([s], [], [], left)
            if not r:
                continue
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if head_end < 0:
                    raise AssertionError("connection closed without a complete response (got %r)" % buf[:200])
                return status, headers, rest
            buf += chunk
    finally:
        s.close()


class SSE:
    """A client of GET /events: the response head, then events one by one.
    Decodes chunked transfer coding itself; every read is bounded."""

    def __init__(self, port, path="/events", headers=None, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        hdrs = {"Host": "127.0.0.1:%d" % port, "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        hdrs.update(headers or {})
        req = "GET %s HTTP/1.1\r\n" % path + "".join("%s: %s\r\n" % kv for kv in hdrs.items()) + "\r\n"
        self.sock.sendall(req.encode())
        self.raw = b""          # bytes received after the head, still encoded
        self.text = b""         # decoded body not yet parsed into events
        self.eof = False
        self.events = []        # every (type, data string) received, in order
        self.status, self.headers = self._read_head(timeout)
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            return False
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.raw += chunk
        return True

    def _read_head(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.raw:
            if self.eof or not self._recv(deadline):
                if self.eof or time.monotonic() >= deadline:
                    raise AssertionError("GET /events: no response head (got %r)" % self.raw[:200])
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    def _decode(self):
        if not self.chunked:
            self.text += self.raw
            self.raw = b""
            return
        while True:
            nl = self.raw.find(b"\r\n")
            if nl < 0:
                return
            size = int(self.raw[:nl].split(b";")[0], 16)
            if size == 0:
                self.eof = True
                self.raw = b""
                return
            if len(self.raw) < nl + 2 + size + 2:
                return
            self.text += self.raw[nl + 2:nl + 2 + size]
            self.raw = self.raw[nl + 2 + size + 2:]

    def body(self, timeout=10.0):
        """The whole body of a non-stream answer (an error), as JSON."""
        deadline = time.monotonic() + timeout
        n = int(self.headers.get("content-length", "-1"))
        while not self.eof and (n < 0 or len(self.raw) < n) and time.monotonic() < deadline:
            self._recv(deadline)
        self._decode()
        return json.loads(self.text[:n] if n >= 0 else self.text)

    def next(self, timeout=10.0):
        """The next event as (type, data string); comments are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            self._decode()
            norm = self.text.replace(b"\r\n", b"\n")
            if b"\n\n" in norm:
                block, rest = norm.split(b"\n\n", 1)
                self.text = rest
                etype, data = "message", []
                for line in block.decode("utf-8").split("\n"):
                    if line.startswith(":") or not line:
                        continue
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "event":
                        etype = value
                    elif name == "data":
                        data.append(value)
                if not data and etype == "message":
                    continue        # a comment-only block (keep-alive)
                ev = (etype, "\n".join(data))
                self.events.append(ev)
                return ev
            if self.eof:
                raise AssertionError("the event stream ended")
            if not self._recv(deadline) and not self.eof and time.monotonic() >= deadline:
                raise kl.WaitTimeout("no event on /events within %.1f s; got %r" % (timeout, self.events))

    def wait_for(self, etype, pred=None, timeout=10.0):
        """The next event of etype (its envelope as a dict) whose payload satisfies pred."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise kl.WaitTimeout("no %s on /events within %.1f s; got %r" % (etype, timeout, self.events))
            try:
                t, data = self.next(left)
            except kl.WaitTimeout:
                continue
            if t != etype:
                continue
            env = json.loads(data)
            if pred is None or pred(env.get("payload")):
                return env

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def follow_authorization(url):
    """What a browser does after an instant approval: the peer's /authorize
    redirects to the oauth child's loopback callback, which shows a page.
    Returns (callback status, page text)."""
    r = kl.http("GET", url)
    if r.status not in (302, 303) or not r.headers.get("Location"):
        raise AssertionError("authorize: HTTP %d %r" % (r.status, r.body[:300]))
    loc = r.headers["Location"]
    if not loc.startswith("http://127.0.0.1:"):
        raise AssertionError("the redirect goes to %r, not to a loopback callback" % loc)
    cb = kl.http("GET", loc, timeout=30)
    return cb.status, cb.body.decode(errors="replace")


def mcp_messages(r):
    """The JSON-RPC messages of an MCP POST answer (JSON or an event stream)."""
    ctype = (r.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype == "text/event-stream":
        out = []
        for block in r.body.decode("utf-8").replace("\r\n", "\n").split("\n\n"):
            data = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
            if data:
                out.append(json.loads("\n".join(data)))
        return out
    if ctype != "application/json":
        raise AssertionError("MCP answer with Content-Type %r: %r" % (ctype, r.body[:200]))
    msg = json.loads(r.body)
    return msg if isinstance(msg, list) else [msg]


# ---------------------------------------------------------------------------

class HttpCase(kl.KeeperTestCase):

    def setUp(self):
        super().setUp()
        if not os.path.exists(HTTP_BIN):
            self.fail("%s is not built: the HTTP API cannot be tested" % HTTP_BIN)
        self.sses = []
        self.addCleanup(self._end_checks)

    def _end_checks(self):
        for s in self.sses:
            s.close()
        # The key travels in headers and query strings; it never reaches a log.
        for k in self._keepers:
            key = getattr(k, "api_key", None)
            if key:
                kl.assert_no_secrets(k.log(), [key], "the keeper's log (http child included)")

    def start(self, servers=None, lifetime=3600, refresh=None, extra_config=None, peer_args=None,
              login_servers=("demo",), client_id=None):
        """A peer and a keeper (not started: run_keeper) whose servers are
        those of login_servers at the peer's /mcp, plus servers."""
        self.peer = self.start_peer(lifetime=lifetime, extra_args=peer_args)
        conf = {}
        for n in login_servers:
            conf[n] = {"url": self.peer.mcp_url}
            if client_id:
                conf[n]["oauth"] = {"client_id": client_id}
        conf.update(servers or {})
        self.k = self.make_keeper(servers=conf, refresh=refresh, extra_config=extra_config)
        self.sub = None
        return self.k

    def run_keeper(self, k=None):
        k = k or self.k
        k.start()
        self.sub = k.subscribe()
        self.wait_http(k)
        return k

    def wait_http(self, k=None, timeout=30.0):
        k = k or self.k

        def listening():
            st = k.status()
            return st if st.get("web_ui") else None
        st = kl.wait_until(listening, timeout, 0.1, "the http child to listen (status web_ui)")
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/#key=([A-Za-z0-9_\-]+)", st["web_ui"])
        self.assertTrue(m, "web_ui %r" % st["web_ui"])
        k.http_port = int(m.group(1))
        k.api_key = m.group(2)
        self.port = k.http_port
        self.key = k.api_key
        self.base = "http://127.0.0.1:%d" % self.port
        return st

    # -- requests --
    def req(self, method, path, body=None, key=True, headers=None, timeout=30.0):
        """One request to the http child; key True: X-API-Key with the real
        key, a string: that key, None/False: no key."""
        h = {}
        if key is True:
            h["X-API-Key"] = self.key
        elif key:
            h["X-API-Key"] = key
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        return kl.http(method, self.base + path, body, h, timeout=timeout)

    def assert_ok(self, r, status=200):
        self.assertEqual(r.status, status, "HTTP %d %r" % (r.status, r.body[:300]))
        self.assertEqual((r.headers.get("Content-Type") or "").split(";")[0].strip(), "application/json")
        env = r.json()
        self.assertIs(env.get("success"), True, env)
        self.assertIn("data", env)
        return env["data"]

    def assert_err(self, r, status, kind=None):
        """The error envelope {"success": false, "error": message, "kind": kind}
        (the quickstart's UI shows error.error); returns {"kind", "message"}."""
        self.assertEqual(r.status, status, "expected HTTP %d, got %d %r" % (status, r.status, r.body[:300]))
        self.assertEqual((r.headers.get("Content-Type") or "").split(";")[0].strip(), "application/json",
                         "HTTP %d answers JSON: %r" % (status, r.body[:200]))
        env = r.json()
        self.assertIs(env.get("success"), False, env)
        self.assertEqual(set(env), {"success", "error", "kind"}, env)
        self.assertIsInstance(env["error"], str, env)
        self.assertTrue(env["error"], env)
        self.assertIsInstance(env["kind"], str, env)
        self.assertTrue(env["kind"], env)
        err = {"kind": env["kind"], "message": env["error"]}
        if kind:
            self.assertEqual(err["kind"], kind, env)
        return err

    def sse(self, key=True, query=False, headers=None):
        h = dict(headers or {})
        path = "/events"
        if query:
            path += "?apikey=" + urllib.parse.quote(self.key if key is True else key)
        elif key is True:
            h["X-API-Key"] = self.key
        elif key:
            h["X-API-Key"] = key
        s = SSE(self.port, path, h)
        self.sses.append(s)
        return s

    def open_stream(self, **kw):
        s = self.sse(**kw)
        self.assertEqual(s.status, 200, "GET /events: HTTP %d" % s.status)
        self.assertEqual(s.headers.get("content-type", "").split(";")[0].strip(), "text/event-stream")
        return s

    # -- login through the API --
    def api_login(self, name="demo"):
        """POST .../login, then the browser's part; returns the URL."""
        self.sub.drain(0.1)     # older events are not this login's end
        data = self.assert_ok(self.req("POST", "/api/v1/servers/%s/login" % name))
        self.assertEqual(data.get("action"), "login", data)
        self.assertEqual(data.get("server"), name, data)
        url = data.get("url")
        self.assertTrue(url and url.startswith(self.peer.url + "/authorize?"), data)
        status, page = follow_authorization(url)
        self.assertEqual(status, 200, page[:300])
        ev = self.sub.wait_for(EV_CHANGED, lambda d: d.get("server") == name and
                               d.get("reason") in ("oauth_login", "oauth_login_failed"), 30)
        self.assertEqual(ev["data"]["reason"], "oauth_login", ev)
        return url

    def check_sse_matches(self, env, etype):
        """An SSE envelope carries the same payload as the control socket's
        event of the same type."""
        self.assertEqual(set(env), {"payload", "timestamp"}, env)
        # Unix seconds, the shape mcpproxy's UI reads.
        self.assertIsInstance(env["timestamp"], int, env)
        self.assertLessEqual(abs(env["timestamp"] - time.time()), 300, env)
        self.sub.drain(0.2)
        seen = [e for e in self.sub.events if e.get("type") == etype and e.get("data") == env["payload"]]
        ev = seen[-1] if seen else self.sub.wait_for(etype, lambda d: d == env["payload"], 10)
        self.assertEqual(ev["data"], env["payload"])
        self.assertEqual(ev["timestamp_unix"], env["timestamp"], (ev, env))
        kl.assert_time_text(self, ev["timestamp"], ev["timestamp_unix"])
        return ev

    # -- MCP over HTTP --
    def mcp(self, name, msg, session=None, key=True, accept=MCP_ACCEPT, method="POST"):
        h = {"Accept": accept}
        if session:
            h["Mcp-Session-Id"] = session
        if method == "POST":
            h["MCP-Protocol-Version"] = PROTOCOL_VERSION
        return self.req(method, "/mcp/%s" % name, msg, key=key, headers=h)

    def mcp_initialize(self, name):
        r = self.mcp(name, {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                            "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                                       "clientInfo": {"name": "test_http", "version": "1"}}})
        self.assertEqual(r.status, 200, "initialize: HTTP %d %r" % (r.status, r.body[:300]))
        session = r.headers.get("Mcp-Session-Id")
        self.assertTrue(session, "initialize answers with an Mcp-Session-Id")
        msgs = mcp_messages(r)
        resp = [m for m in msgs if m.get("id") == 1]
        self.assertTrue(resp and "result" in resp[0], msgs)
        self.assertIn("serverInfo", resp[0]["result"])
        r = self.mcp(name, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
        self.assertEqual(r.status, 202, "notifications/initialized: HTTP %d %r" % (r.status, r.body[:200]))
        return session, resp[0]["result"]

    def mcp_call(self, name, session, id, method, params=None):
        msg = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            msg["params"] = params
        r = self.mcp(name, msg, session)
        self.assertEqual(r.status, 200, "%s: HTTP %d %r" % (method, r.status, r.body[:300]))
        resp = [m for m in mcp_messages(r) if m.get("id") == id]
        self.assertEqual(len(resp), 1, r.body[:300])
        return resp[0], r


# ---------------------------------------------------------------------------

class TestAddressAndPublic(HttpCase):

    def test_a_status_and_mcpctl(self):
        k = self.start()
        self.run_keeper()
        st = k.status()
        self.assertEqual(set(st["http"]), {"state", "pid", "url"})
        self.assertEqual(st["http"]["state"], "running")
        self.assertIsInstance(st["http"]["pid"], int)
        self.assertEqual(st["http"]["url"], "http://127.0.0.1:%d/" % self.port)
        self.assertTrue(st["web_ui"].startswith(st["http"]["url"] + "#key="))
        self.assertGreaterEqual(len(self.key), 32)
        # The http child is a separate process of the keeper.
        self.assertNotEqual(st["http"]["pid"], k.proc.pid)
        with open("/proc/%d/stat" % st["http"]["pid"]) as f:
            self.assertEqual(int(f.read().rsplit(")", 1)[1].split()[1]), k.proc.pid, "the keeper's child")
        r = subprocess.run([kl.MCPCTL, "--socket", k.socket_path, "status"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30, env=kl.child_env())
        out = r.stdout.decode(errors="replace")
        self.assertEqual(r.returncode, 0, out + r.stderr.decode(errors="replace"))
        self.assertIn("web UI: %s\n" % st["web_ui"], out)
        # The key is kept (sealed) in the store: the same after a restart.
        key = self.key
        k.stop()
        self.assertEqual(k.terminated_rc, 0)
        self.run_keeper(k)
        self.assertEqual(self.key, key, "the API key survives a restart")
        self.assert_ok(self.req("GET", "/api/v1/servers"))

    def test_b_public_routes(self):
        self.start()
        self.run_keeper()
        r = self.req("GET", "/", key=None)
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(r.headers.get("Content-Type", "").split(";")[0], "text/html")
        self.assertIn(b"<html", r.body.lower())
        self.assertIn(b"app.js", r.body)
        csp = r.headers.get("Content-Security-Policy")
        self.assertTrue(csp, "the page has a Content-Security-Policy")
        self.assertIn("default-src", csp)
        # The page's scripts come from its own files only.
        self.assertNotIn("'unsafe-inline'", csp)
        self.assertNotIn("'unsafe-eval'", csp)
        for path, ctype in (("/ui/app.js", ("application/javascript", "text/javascript")),
                            ("/ui/style.css", ("text/css",))):
            r = self.req("GET", path, key=None)
            self.assertEqual(r.status, 200, "%s: HTTP %d" % (path, r.status))
            self.assertIn(r.headers.get("Content-Type", "").split(";")[0], ctype, path)
            self.assertGreater(len(r.body), 100, path)
            self.assertTrue(r.headers.get("Content-Security-Policy"), "%s has a Content-Security-Policy" % path)
            with open(os.path.join(kl.SOURCE_ROOT, "daemon", "http", "ui", path[4:]), "rb") as f:
                self.assertEqual(r.body, f.read(), "%s is the file from daemon/http/ui" % path)
        # Nothing else of the file system: traversal and unknown files.
        # (The UI directory is BUILD/daemon/http/ui: ../mcpkeeper-http and ../../../build.ninja exist.)
        for path in ("/ui/../mcpkeeper-http", "/ui/%2e%2e/mcpkeeper-http", "/ui/%2e%2e%2fmcpkeeper-http",
                     "/ui/..%2f..%2f..%2fbuild.ninja", "/ui/%2e%2e/%2e%2e/%2e%2e/build.ninja", "/ui//etc/passwd",
                     "/ui/nosuch.js", "/ui/", "/ui/.", "/ui/app.js%00.png"):
            r = self.req("GET", path, key=None)
            self.assertIn(r.status, (400, 401, 403, 404), "%s: HTTP %d %r" % (path, r.status, r.body[:100]))
            self.assertNotIn(b"ELF", r.body[:4])
            self.assertNotIn(b"ninja", r.body)
            self.assertNotIn(b"root:", r.body)

    def test_c_openapi(self):
        self.start()
        self.run_keeper()
        r = self.req("GET", "/openapi.json", key=None)
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(r.headers.get("Content-Type", "").split(";")[0], "application/json")
        doc = r.json()
        self.assertRegex(doc.get("openapi", ""), r"^3\.\d+\.\d+$")
        self.assertTrue(doc["info"]["title"] and doc["info"]["version"], doc.get("info"))
        paths = {re.sub(r"\{[^}]+\}", "{}", p): ops for p, ops in doc["paths"].items()}
        want = {"/api/v1/servers": ["get"], "/api/v1/servers/{}": ["get"],
                "/api/v1/servers/{}/login": ["post"], "/api/v1/servers/{}/logout": ["post"],
                "/events": ["get"], "/mcp/{}": ["post", "delete"]}
        for p, methods in want.items():
            self.assertIn(p, paths, "openapi.json lists %s (it has %s)" % (p, sorted(doc["paths"])))
            for m in methods:
                self.assertIn(m, paths[p], "%s %s in openapi.json" % (m.upper(), p))
        methods = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
        for p, ops in doc["paths"].items():
            self.assertTrue(p.startswith("/"), p)
            for m, op in ops.items():
                if m in methods:
                    self.assertIsInstance(op.get("responses"), dict, "%s %s has responses" % (m, p))
                    self.assertTrue(op["responses"], "%s %s has responses" % (m, p))
                    for ref in re.findall(r'"\$ref":\s*"#/([^"]+)"', json.dumps(op)):
                        node = doc
                        for part in ref.split("/"):
                            self.assertIn(part, node, "the $ref #/%s of %s %s resolves" % (ref, m, p))
                            node = node[part]
        schemes = doc.get("components", {}).get("securitySchemes", {})
        self.assertTrue(any(s.get("type") == "apiKey" and s.get("in") == "header" and
                            s.get("name", "").lower() == "x-api-key" for s in schemes.values()),
                        "an apiKey security scheme in the X-API-Key header: %r" % schemes)

    def test_d_host_and_origin(self):
        self.start()
        self.run_keeper()
        own = "127.0.0.1:%d" % self.port
        # Good Host names: the listen address and localhost, same port.
        for host in (own, "localhost:%d" % self.port):
            self.assert_ok(self.req("GET", "/api/v1/servers", headers={"Host": host}))
            r = self.req("GET", "/", key=None, headers={"Host": host})
            self.assertEqual(r.status, 200, host)
        # DNS rebinding: any other name or port, public routes too, key or not.
        for host in ("evil.example", "evil.example:%d" % self.port, "127.0.0.1", "127.0.0.1:%d" % (self.port + 1),
                     "localhost", "127.0.0.2:%d" % self.port, "[::1]:%d" % self.port, "LOCALHOST.evil:%d" % self.port):
            for path, key in (("/api/v1/servers", True), ("/", None), ("/openapi.json", None),
                              ("/api/v1/servers/demo", True)):
                r = self.req("GET", path, key=key, headers={"Host": host})
                self.assertEqual(r.status, 403, "Host %r on %s: HTTP %d %r" % (host, path, r.status, r.body[:100]))
            self.assert_err(self.req("POST", "/api/v1/servers/demo/login", headers={"Host": host}), 403)
        # No Host at all (HTTP/1.0 allows it): not the listen address either.
        status, _, body = raw_request(self.port, b"GET /api/v1/servers HTTP/1.0\r\nX-API-Key: " +
                                      self.key.encode() + b"\r\n\r\n")
        self.assertIn(status, (400, 403), body[:200])
        # Origin: absent or the page's own origin, nothing else.
        self.assert_ok(self.req("GET", "/api/v1/servers", headers={"Origin": "http://" + own}))
        self.assertEqual(self.req("GET", "/", key=None, headers={"Origin": "http://" + own}).status, 200)
        for origin in ("http://evil.example", "null", "https://" + own, "http://" + own + ".evil.example",
                       "http://localhost:%d" % self.port, "http://127.0.0.1:%d" % (self.port + 1)):
            r = self.req("GET", "/api/v1/servers", headers={"Origin": origin})
            self.assert_err(r, 403)
            self.assertNotIn(b"\"servers\"", r.body)
            self.assertNotIn("Access-Control-Allow-Origin", r.headers)
            self.assertEqual(self.req("GET", "/", key=None, headers={"Origin": origin}).status, 403, origin)
            r = self.req("POST", "/api/v1/servers/demo/login", headers={"Origin": origin})
            self.assert_err(r, 403)
        # localhost:PORT as Host with the matching Origin is fine.
        self.assert_ok(self.req("GET", "/api/v1/servers", headers={"Host": "localhost:%d" % self.port,
                                                                   "Origin": "http://localhost:%d" % self.port}))
        # Nothing of that started a login.
        self.assertFalse(self.k.server("demo")["login_in_progress"])
        s = self.sse(headers={"Origin": "http://evil.example"})
        self.assertEqual(s.status, 403)
        s = self.sse(headers={"Host": "evil.example"})
        self.assertEqual(s.status, 403)


class TestKeyAndErrors(HttpCase):

    def test_a_api_key(self):
        self.start(servers={"files": {"command": "/bin/cat"}})
        self.run_keeper()
        wrong = self.key[:-4] + ("AAAA" if not self.key.endswith("AAAA") else "BBBB")
        # Header and query both work.
        self.assert_ok(self.req("GET", "/api/v1/servers"))
        self.assert_ok(self.req("GET", "/api/v1/servers?apikey=" + urllib.parse.quote(self.key), key=None))
        self.assert_ok(self.req("GET", "/api/v1/servers/demo?apikey=" + self.key, key=None))
        # Missing, wrong, empty, a prefix, the key plus more: 401 on every protected route.
        for path, method in (("/api/v1/servers", "GET"), ("/api/v1/servers/demo", "GET"),
                             ("/api/v1/servers/nosuch", "GET"), ("/api/v1/servers/demo/login", "POST"),
                             ("/api/v1/servers/demo/logout", "POST"), ("/api/v1/nosuch", "GET"),
                             ("/mcp/demo", "POST"), ("/mcp/nosuch", "POST")):
            for key in (None, wrong, self.key[:-1], self.key + "x", self.key.upper()):
                if key == self.key:
                    continue
                r = self.req(method, path, key=key)
                self.assert_err(r, 401)
                self.assertNotIn(self.key.encode(), r.body)
            for q in ("?apikey=" + wrong, "?apikey=", "?apikey=" + self.key[:-1], "?x=" + self.key):
                self.assert_err(self.req(method, path + q, key=None), 401)
        # Nothing happened on the keeper's side.
        self.assertFalse(self.k.server("demo")["login_in_progress"])
        self.assertEqual(self.peer.stats()["registrations"], 0)
        s = self.sse(key=None)
        self.assertEqual(s.status, 401)
        self.assertIs(s.body()["success"], False)
        self.assertEqual(self.sse(key=wrong).status, 401)
        self.assertEqual(self.sse(key=wrong, query=True).status, 401)
        self.assertEqual(self.open_stream(query=True).status, 200)
        # The key (and the near misses) never reach a log; checked again at the end.
        self.k.stop()
        kl.assert_no_secrets(self.k.log(), [self.key, wrong, self.key[:-1]], "keeper log")

    def test_b_servers(self):
        self.start(servers={"files": {"command": "/bin/cat"},
                            "static": {"url": "http://127.0.0.1:1/mcp", "oauth": False}})
        self.run_keeper()
        data = self.assert_ok(self.req("GET", "/api/v1/servers"))
        self.assertEqual(data, self.k.status()["servers"])
        self.assertEqual(sorted(s["name"] for s in data), ["demo", "files", "static"])
        for name in ("demo", "files", "static"):
            one = self.assert_ok(self.req("GET", "/api/v1/servers/" + name))
            self.assertEqual(one, self.k.server(name))
        demo = self.assert_ok(self.req("GET", "/api/v1/servers/demo"))
        self.assertEqual(demo["oauth_status"], "none")
        for name in ("nosuch", "dem", "demo2", "DEMO"):
            self.assert_err(self.req("GET", "/api/v1/servers/" + name), 404)
        # Names that cannot be servers: not found, or refused as a bad request.
        for name in ("demo%2f", "files%00", "a" * 300, "%ff"):
            r = self.req("GET", "/api/v1/servers/" + name)
            self.assertIn(r.status, (400, 404), "%s: HTTP %d" % (name, r.status))
            self.assert_err(r, r.status)
        self.assert_err(self.req("GET", "/api/v1/nosuch"), 404)
        self.assert_err(self.req("GET", "/api/v2/servers"), 404)
        self.assert_err(self.req("GET", "/nosuch"), 404)
        self.assert_err(self.req("GET", "/api/v1/servers/demo/nosuch"), 404)
        self.assert_err(self.req("POST", "/api/v1/servers/nosuch/login"), 404)
        self.assert_err(self.req("POST", "/api/v1/servers/nosuch/logout"), 404)

    def test_c_methods_and_bodies(self):
        self.start(servers={"files": {"command": "/bin/cat"}})
        self.run_keeper()
        # POST /api/v1/servers, PATCH and DELETE /api/v1/servers/NAME change
        # the server list (test_servers.py).
        for method, path in (("PUT", "/api/v1/servers"), ("DELETE", "/api/v1/servers"),
                             ("PUT", "/api/v1/servers/demo"), ("PATCH", "/api/v1/servers"),
                             ("POST", "/api/v1/servers/demo"), ("GET", "/api/v1/servers/demo/login"),
                             ("DELETE", "/api/v1/servers/demo/logout"), ("GET", "/api/v1/servers/demo/logout"),
                             ("POST", "/events"), ("PUT", "/mcp/demo")):
            self.assert_err(self.req(method, path, b"{}" if method in ("POST", "PUT", "PATCH") else None), 405)
        for method, path in (("POST", "/"), ("DELETE", "/ui/app.js"), ("PUT", "/openapi.json")):
            r = self.req(method, path, b"{}" if method != "DELETE" else None, key=None)
            self.assertEqual(r.status, 405, "%s %s: HTTP %d" % (method, path, r.status))
        # Bodies that are not a JSON object.
        for action in ("login", "logout"):
            for body in (b"[]", b"\"demo\"", b"42", b"null", b"{", b"not json", b"{\"a\":1}x", b"\xff\xfe"):
                r = self.req("POST", "/api/v1/servers/demo/%s" % action, body,
                             headers={"Content-Type": "application/json"})
                self.assert_err(r, 400)
        self.assertFalse(self.k.server("demo")["login_in_progress"])
        # More than 1 MiB: refused, from the Content-Length or while reading.
        head = ("POST /api/v1/servers/demo/login HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-API-Key: %s\r\n"
                "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n")
        body = b"{\"pad\": \"" + b"x" * (MIB + 16) + b"\"}"
        status, headers, rbody = raw_request(self.port, (head % (self.port, self.key, len(body))).encode(),
                                             body=body, timeout=30)
        self.assertEqual(status, 413, rbody[:200])
        # Just as big without the key: refused too (401 or 413), and the child lives on.
        status, _, _ = raw_request(self.port, (head.replace("X-API-Key: %s\r\n", "") %
                                               (self.port, len(body))).encode(), body=body, timeout=30)
        self.assertIn(status, (401, 413))
        # A body just under the limit is parsed (and is a JSON object).
        r = self.req("POST", "/api/v1/servers/files/logout", b"{\"pad\": \"" + b"x" * (MIB - 64) + b"\"}",
                     headers={"Content-Type": "application/json"})
        self.assert_err(r, 400, "not_oauth")
        self.assertFalse(self.k.server("demo")["login_in_progress"])
        self.assert_ok(self.req("GET", "/api/v1/servers"))


class TestLoginLogout(HttpCase):

    def test_a_login_through_the_api(self):
        self.start(servers={"files": {"command": "/bin/cat"},
                            "static": {"url": "http://127.0.0.1:1/mcp", "oauth": False}})
        self.run_keeper()
        stream = self.open_stream()
        # Not OAuth, unknown.
        for name in ("files", "static"):
            self.assert_err(self.req("POST", "/api/v1/servers/%s/login" % name), 400, "not_oauth")
        self.assert_err(self.req("POST", "/api/v1/servers/nosuch/login"), 404)
        # The URL comes back at once; the login goes on in the keeper.
        r = self.req("POST", "/api/v1/servers/demo/login", {})
        data = self.assert_ok(r)
        self.assertEqual({k: data[k] for k in ("action", "server")}, {"action": "login", "server": "demo"})
        url = data["url"]
        self.assertTrue(url.startswith(self.peer.url + "/authorize?"), url)
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        self.assertEqual(q["code_challenge_method"], "S256")
        self.assertRegex(q["redirect_uri"], r"^http://127\.0\.0\.1:\d+/oauth/callback$")
        self.assertTrue(self.k.server("demo")["login_in_progress"])
        api = self.assert_ok(self.req("GET", "/api/v1/servers/demo"))
        self.assertIs(api["login_in_progress"], True)
        # A second login while this one runs: 409, and the first is untouched.
        self.assert_err(self.req("POST", "/api/v1/servers/demo/login"), 409)
        self.assertTrue(self.k.server("demo")["login_in_progress"])
        # The browser's part ends it.
        status, page = follow_authorization(url)
        self.assertEqual(status, 200, page[:300])
        self.assertIn("demo", page)
        env = stream.wait_for(EV_CHANGED, lambda p: p.get("reason") == "oauth_login", 30)
        self.assertEqual(env["payload"], {"reason": "oauth_login", "server": "demo"})
        self.check_sse_matches(env, EV_CHANGED)
        api = self.assert_ok(self.req("GET", "/api/v1/servers/demo"))
        self.assertEqual(api["oauth_status"], "authenticated")
        self.assertIs(api["login_in_progress"], False)
        kl.assert_time_text(self, api["token_expires_at"], api["token_expires_at_unix"])
        self.assertGreater(api["token_expires_at_unix"], time.time())
        last = self.peer._json("GET", "/test/last")
        self.assertEqual(last["token"]["grant_type"], "authorization_code")
        self.assertIs(last["token"]["pkce_ok"], True)
        # The state never reaches a log.
        kl.assert_no_secrets(self.k.log(), [q["state"]], "keeper log")

    def test_b_login_failure_and_logout_during_login(self):
        self.start()
        self.run_keeper()
        stream = self.open_stream()
        self.peer.config(authorize_error="access_denied")
        data = self.assert_ok(self.req("POST", "/api/v1/servers/demo/login"))
        status, page = follow_authorization(data["url"])
        env = stream.wait_for(EV_CHANGED, lambda p: p.get("reason") == "oauth_login_failed", 30)
        self.assertEqual(env["payload"]["server"], "demo")
        self.assertIn("access_denied", env["payload"]["error"])
        self.assertEqual(set(env["payload"]), {"reason", "server", "error"})
        self.check_sse_matches(env, EV_CHANGED)
        self.assertEqual(self.k.server("demo")["oauth_status"], "none")
        self.assertFalse(self.k.server("demo")["login_in_progress"])
        # A login nobody completes: logout cancels it (failed event), and a new login works.
        self.peer.config(authorize_error=None)
        self.assert_ok(self.req("POST", "/api/v1/servers/demo/login"))
        data = self.assert_ok(self.req("POST", "/api/v1/servers/demo/logout"))
        self.assertEqual(data["action"], "logout")
        env = stream.wait_for(EV_CHANGED, lambda p: p.get("reason") == "oauth_login_failed", 30)
        self.assertEqual(env["payload"]["server"], "demo")
        kl.wait_until(lambda: not self.k.server("demo")["login_in_progress"], 20, 0.1, "the login to end")
        self.api_login()
        self.assertEqual(self.k.server("demo")["oauth_status"], "authenticated")

    def test_c_logout_through_the_api(self):
        k = self.start(servers={"files": {"command": "/bin/cat"},
                                "static": {"url": "http://127.0.0.1:1/mcp", "oauth": False}})
        self.run_keeper()
        stream = self.open_stream()
        self.api_login()
        # The worker adds the token: a session over /mcp/demo works.
        session, _ = self.mcp_initialize("demo")
        resp, _ = self.mcp_call("demo", session, 2, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
        self.assertEqual(resp["result"]["content"][0]["text"], "x")
        # Not OAuth, unknown.
        for name in ("files", "static"):
            self.assert_err(self.req("POST", "/api/v1/servers/%s/logout" % name), 400, "not_oauth")
        self.assert_err(self.req("POST", "/api/v1/servers/nosuch/logout"), 404)
        before = self.peer.stats()
        data = self.assert_ok(self.req("POST", "/api/v1/servers/demo/logout", {}))
        self.assertEqual(data["action"], "logout")
        self.assertEqual(data["server"], "demo")
        self.assertIs(data.get("revoked"), True, data)
        env = stream.wait_for(EV_CHANGED, lambda p: p.get("reason") == "oauth_logout", 20)
        self.assertEqual(env["payload"], {"reason": "oauth_logout", "server": "demo"})
        self.check_sse_matches(env, EV_CHANGED)
        self.assertEqual(self.assert_ok(self.req("GET", "/api/v1/servers/demo"))["oauth_status"], "none")
        self.assertEqual(k.store_tool("list").stdout.decode().strip(), "", "the record is gone")
        # Revoked at the provider while it still held them (refresh and
        # access token): from now on the provider refuses them.
        after = self.peer.stats()
        self.assertEqual(after["revocations"], before["revocations"] + 2)
        last = self.peer._json("GET", "/test/last")["revoke"]
        self.assertIs(last["known"], True, last)
        # Upstream: the session through /mcp/demo now gets an error that says to log in.
        msg = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": "echo", "arguments": {"text": "y"}}}
        r = self.mcp("demo", msg, session)
        if r.status == 200:
            resp = [m for m in mcp_messages(r) if m.get("id") == 3]
            self.assertTrue(resp and "error" in resp[0], r.body[:300])
            self.assertIn("login", resp[0]["error"]["message"])
        else:
            self.assertIn(r.status, (401, 404, 502, 503), r.body[:300])
        self.assertEqual(self.peer.stats()["refresh_grants"], after["refresh_grants"])
        # Logging out again: nothing stored, still a 200.
        data = self.assert_ok(self.req("POST", "/api/v1/servers/demo/logout"))
        self.assertIs(data.get("had_token"), False, data)

    def test_e_known_token_never_shown(self):
        # A token the test knows: the keeper hands it to the worker only;
        # nothing that the API, /mcp or /events answers carries it.
        k = self.start(login_servers=())
        cid = self.peer.register()
        k.servers["demo"] = self.peer.server_conf(cid)
        k.write_config()
        access, refresh = self.peer.login(cid)
        k.put_token("demo", self.peer.mcp_url, access, refresh, 3600, self.peer.token_endpoint)
        self.run_keeper()
        stream = self.open_stream()
        seen = []
        r = self.req("GET", "/api/v1/servers")
        seen.append(r.body.decode())
        self.assertEqual(self.assert_ok(self.req("GET", "/api/v1/servers/demo"))["oauth_status"], "authenticated")
        session, _ = self.mcp_initialize("demo")
        resp, r = self.mcp_call("demo", session, 2, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
        self.assertEqual(resp["result"]["content"][0]["text"], "x")
        seen.append(r.body.decode() + str(dict(r.headers)))
        r = self.req("POST", "/api/v1/servers/demo/logout")
        self.assert_ok(r)
        seen.append(r.body.decode())
        stream.wait_for(EV_CHANGED, lambda p: p.get("reason") == "oauth_logout", 20)
        seen.extend(data for _, data in stream.events)
        kl.assert_no_secrets("\n".join(seen), [access, refresh], "the HTTP answers")
        kl.assert_no_secrets(k.log(), [access, refresh], "keeper log")

    def test_d_management_disabled(self):
        k = self.start(servers={"files": {"command": "/bin/cat"}}, extra_config={"disable_management": True})
        self.run_keeper()
        stream = self.open_stream()
        for action in ("login", "logout"):
            self.assert_err(self.req("POST", "/api/v1/servers/demo/%s" % action), 403)
            self.assert_err(self.req("POST", "/api/v1/servers/demo/%s" % action, {}), 403)
        self.assertFalse(k.server("demo")["login_in_progress"])
        self.assertEqual(self.peer.stats()["registrations"], 0)
        self.assertEqual(self.peer.stats()["authorizations"], 0)
        # Reading still works.
        self.assert_ok(self.req("GET", "/api/v1/servers"))
        self.assert_ok(self.req("GET", "/api/v1/servers/demo"))
        # Turned on again by a reload: the child restarts and login works.
        k.extra_config = {}
        k.write_config()
        k.signal(signal.SIGHUP)
        kl.wait_until(lambda: "configuration reloaded" in k.log(), 20, 0.1, "the reload")

        def login_allowed():
            try:
                self.wait_http(k, 5)
            except kl.WaitTimeout:
                return False
            r = self.req("POST", "/api/v1/servers/demo/login")
            return r if r.status == 200 else False
        r = kl.wait_until(login_allowed, 30, 0.3, "login allowed after the reload")
        status, _ = follow_authorization(r.json()["data"]["url"])
        self.assertEqual(status, 200)
        self.sub.wait_for(EV_CHANGED, lambda d: d.get("reason") == "oauth_login", 30)
        stream.close()


class TestEvents(HttpCase):

    def test_a_refreshed_failed_and_ping(self):
        k = self.start(login_servers=(), lifetime=4, refresh={"threshold": 0.5})
        cid = self.peer.register()
        k.servers["demo"] = self.peer.server_conf(cid)
        k.write_config()
        access, refresh = self.peer.login(cid)
        k.put_token("demo", self.peer.mcp_url, access, refresh, 4, self.peer.token_endpoint)
        k.start()
        self.sub = k.subscribe()
        self.wait_http(k)
        opened = time.monotonic()
        by_header = self.open_stream()
        by_query = self.open_stream(query=True)
        # oauth.token_refreshed on both streams, equal to the control socket's event.
        for stream in (by_header, by_query):
            env = stream.wait_for(EV_REFRESHED, lambda p: p.get("server_name") == "demo", 30)
            self.assertEqual(set(env["payload"]), {"server_name", "obtained_at", "obtained_at_unix", "expires_at",
                                                   "expires_at_unix", "next_refresh_at", "next_refresh_at_unix", "scope"})
            for key in ("obtained_at", "expires_at", "next_refresh_at"):
                kl.assert_time_text(self, env["payload"][key], env["payload"][key + "_unix"])
            self.check_sse_matches(env, EV_REFRESHED)
        # oauth.refresh_failed: invalid_grant at the next refresh.
        self.peer.fail("invalid_grant", 5)
        env = by_header.wait_for(EV_FAILED, lambda p: p.get("server_name") == "demo", 30)
        self.assertEqual(set(env["payload"]), {"server_name", "error"})
        self.assertIn("invalid_grant", env["payload"]["error"])
        self.check_sse_matches(env, EV_FAILED)
        env2 = by_query.wait_for(EV_FAILED, None, 10)
        self.assertEqual(env2["payload"], env["payload"])
        api = self.assert_ok(self.req("GET", "/api/v1/servers/demo"))
        self.assertEqual(api["oauth_status"], "expired")
        # Every event so far was one of the documented types, its data an envelope.
        for etype, data in by_header.events:
            self.assertIn(etype, (EV_REFRESHED, EV_FAILED, EV_CHANGED, "ping"), (etype, data))
            if etype != "ping":
                self.assertEqual(set(json.loads(data)), {"payload", "timestamp"})
        # A ping within 30 s (and a bit) of opening.
        left = 33 - (time.monotonic() - opened)
        by_header.wait_for("ping", None, max(left, 1))
        self.assertLessEqual(time.monotonic() - opened, 34)
        # Many streams at once, and streams that go away, do not hurt the keeper.
        extra = [self.open_stream() for _ in range(20)]
        for s in extra[:10]:
            s.close()
        self.assert_ok(self.req("POST", "/api/v1/servers/demo/logout"))
        for s in extra[10:] + [by_header, by_query]:
            env = s.wait_for(EV_CHANGED, lambda p: p.get("reason") == "oauth_logout", 10)
            self.assertEqual(env["payload"], {"reason": "oauth_logout", "server": "demo"})
        k.assert_alive()
        kl.assert_no_secrets(k.log(), [access, refresh], "keeper log")


class TestMcp(HttpCase):

    def test_a_mcp_session_after_login(self):
        self.start()
        self.run_keeper()
        self.api_login()
        session, info = self.mcp_initialize("demo")
        self.assertIn("capabilities", info)
        resp, _ = self.mcp_call("demo", session, 2, "tools/list")
        names = [t["name"] for t in resp["result"]["tools"]]
        self.assertIn("echo", names)
        resp, r = self.mcp_call("demo", session, 3, "tools/call",
                                {"name": "echo", "arguments": {"text": "over HTTP through the keeper"}})
        self.assertEqual(resp["result"]["content"][0]["text"], "over HTTP through the keeper")
        self.assertNotIn("Authorization", r.headers)
        # A second session is its own.
        other, _ = self.mcp_initialize("demo")
        self.assertNotEqual(other, session)
        resp, _ = self.mcp_call("demo", other, 4, "tools/call", {"name": "add", "arguments": {"a": 2, "b": 40}})
        self.assertEqual(resp["result"]["content"][0]["text"], "42")
        # Missing and unknown sessions.
        msg = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
        self.assertEqual(self.mcp("demo", msg).status, 400)
        self.assertEqual(self.mcp("demo", msg, "no-such-session").status, 404)
        self.assertEqual(self.mcp("nosuch", msg, session).status, 404)
        # Without the key: 401, session or not.
        self.assertEqual(self.mcp("demo", msg, session, key=None).status, 401)
        # DELETE ends the session; then it is unknown.
        r = self.mcp("demo", None, session, method="DELETE")
        self.assertIn(r.status, (200, 202, 204), r.body[:200])
        self.assertEqual(self.mcp("demo", msg, session).status, 404)
        self.assertEqual(self.mcp("demo", None, session, method="DELETE").status, 404)
        # The other session goes on.
        resp, _ = self.mcp_call("demo", other, 6, "tools/call", {"name": "echo", "arguments": {"text": "still"}})
        self.assertEqual(resp["result"]["content"][0]["text"], "still")
        self.assertIn(self.mcp("demo", None, other, method="DELETE").status, (200, 202, 204))
        self.k.assert_alive()

    def test_b_mcp_stdio_and_bad_requests(self):
        if not os.path.exists(STDIO_SERVER):
            self.skipTest("stdio test server not built")
        self.start(servers={"files": {"command": STDIO_SERVER}}, login_servers=())
        self.run_keeper()
        session, _ = self.mcp_initialize("files")
        resp, _ = self.mcp_call("files", session, 2, "tools/call", {"name": "echo", "arguments": {"text": "stdio"}})
        self.assertEqual(resp["result"]["content"][0]["text"], "stdio")
        # Not JSON, and too big: refused without harm to the session.
        r = self.req("POST", "/mcp/files", b"{not json", headers={"Content-Type": "application/json",
                                                                 "Accept": MCP_ACCEPT, "Mcp-Session-Id": session})
        self.assertIn(r.status, (400,), r.body[:200])
        head = ("POST /mcp/files HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-API-Key: %s\r\nMcp-Session-Id: %s\r\n"
                "Accept: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n")
        body = b"[" + b"0," * (MIB // 2 + 8) + b"0]"
        status, _, _ = raw_request(self.port, (head % (self.port, self.key, session, MCP_ACCEPT, len(body))).encode(),
                                   body=body, timeout=30)
        self.assertEqual(status, 413)
        resp, _ = self.mcp_call("files", session, 3, "tools/call", {"name": "echo", "arguments": {"text": "again"}})
        self.assertEqual(resp["result"]["content"][0]["text"], "again")
        self.assertIn(self.mcp("files", None, session, method="DELETE").status, (200, 202, 204))


class TestSupervision(HttpCase):

    def test_a_http_child_restarted(self):
        k = self.start()
        self.run_keeper()
        pid = k.status()["http"]["pid"]
        key = self.key
        os.kill(pid, signal.SIGKILL)

        def new_child():
            st = k.status()
            return st if st["http"]["pid"] not in (None, pid) and st.get("web_ui") else None
        kl.wait_until(new_child, 30, 0.2, "a new http child")
        self.wait_http(k)
        self.assertEqual(self.key, key)
        self.assert_ok(self.req("GET", "/api/v1/servers"))
        k.assert_alive()
        # Stopping the keeper stops the child.
        new_pid = k.status()["http"]["pid"]
        k.stop()
        self.assertEqual(k.terminated_rc, 0)
        kl.wait_until(lambda: not os.path.exists("/proc/%d" % new_pid) or
                      open("/proc/%d/stat" % new_pid).read().rsplit(")", 1)[1].split()[0] == "Z",
                      10, 0.1, "the http child to exit with the keeper")


if __name__ == "__main__":
    kl.main()
