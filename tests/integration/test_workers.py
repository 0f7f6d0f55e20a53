#!/usr/bin/env python3
"""Workers end to end: an MCP client's stdio through `mcpctl connect NAME`, the
keeper handing the connection to the upstream's mcpkeeper-worker, the worker
talking to the upstream (the C test peer over streamable HTTP, or the stdio
test server) with the access token the keeper pushed to it.

By default `mcpctl connect` hands its stdin and stdout (pipes here) to the
worker and only waits; with --bridge it relays them itself. Both are tested:
TestBridge runs the framing cases through the bridge, TestHandover the same
cases with the worker reading the client's pipes."""
import base64
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402

STDIO_SERVER = os.path.join(kl.BUILD_ROOT, "tests", "stdio-mcp", "mcpkeeper-test-stdio-server")
WORKER = os.path.join(kl.BUILD_ROOT, "worker", "mcpkeeper-worker")


class Client:
    """An MCP client at the stdio end of `mcpctl connect NAME`."""

    def __init__(self, keeper, name, bridge=False):
        self.proc = subprocess.Popen([kl.MCPCTL, "--socket", keeper.socket_path, "connect"] +
                                     (["--bridge"] if bridge else []) + [name],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=kl.child_env())
        self.next_id = 1
        self.buf = b""

    def send(self, obj):
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def read(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise kl.WaitTimeout("no message from mcpctl connect within %.0f s" % timeout)
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise EOFError("mcpctl connect closed its stdout")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def call(self, method, params=None, timeout=20.0):
        rid = self.next_id
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        while True:
            m = self.read(timeout)
            if m.get("id") == rid:
                return m

    def initialize(self):
        r = self.call("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                     "clientInfo": {"name": "test", "version": "1"}})
        assert "result" in r, r
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return r["result"]

    def echo(self, text, timeout=20.0):
        return self.call("tools/call", {"name": "echo", "arguments": {"text": text}}, timeout)

    def close(self, timeout=10.0):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def text_of(resp):
    return resp["result"]["content"][0]["text"]


class WorkerCase(kl.KeeperTestCase):

    def setUp(self):
        super().setUp()
        for path in (WORKER, kl.MCPCTL):
            if not os.path.exists(path):
                self.skipTest("%s not built" % path)
        self.clients = []
        self.addCleanup(self._close_clients)

    def _close_clients(self):
        for c in self.clients:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()

    def client(self, name, bridge=False):
        c = Client(self.k, name, bridge)
        self.clients.append(c)
        return c

    def setup_http(self, lifetime=3600, extra_config=None, peer_args=None):
        self.peer = self.start_peer(lifetime=lifetime, extra_args=peer_args)
        cid = self.peer.register()
        self.k = self.make_keeper(servers={"gh": self.peer.server_conf(cid)}, extra_config=extra_config)
        access, refresh = self.peer.login(cid)
        self.secrets = [access, refresh]
        self.k.put_token("gh", self.peer.mcp_url, access, refresh, lifetime, self.peer.token_endpoint)
        self.k.start()


class TestWorkers(WorkerCase):

    def test_s_standard_headers(self):
        """SEP-2243, under the 2026-07-28 revision: Mcp-Method and Mcp-Name on
        every POST, MCP-Protocol-Version on its initialize; a name an HTTP
        header cannot carry as it is goes base64, one with a line break is
        refused. Older revisions get none of it."""
        self.setup_http()

        def headers(c, name):
            r = c.call("tools/call", {"name": name, "arguments": {}})
            self.assertIn("result", r, r)
            return json.loads(text_of(r))

        old = self.client("gh")
        old.initialize()  # 2025-06-18: none of the 2026-07-28 headers
        h = headers(old, "headers")
        self.assertEqual((h["mcp_method"], h["mcp_name"]), (None, None))
        self.assertIsNone(h["initialize_protocol_version"])
        self.assertEqual(h["protocol_version"], "2025-06-18")  # negotiated, on what follows
        # A request that names its revision in _meta (the stateless lifecycle) says so.
        meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
        r = old.call("tools/call", {"name": "headers", "arguments": {}, "_meta": meta})
        h = json.loads(text_of(r))
        self.assertEqual((h["protocol_version"], h["mcp_method"], h["mcp_name"]),
                         ("2026-07-28", "tools/call", "headers"))
        r = old.call("tools/call", {"name": "headers", "arguments": {},
                                    "_meta": {"io.modelcontextprotocol/protocolVersion": "2026\r\nX: 1"}})
        self.assertEqual(r["error"]["code"], -32600, r)
        old.close()

        c = self.client("gh")
        r = c.call("initialize", {"protocolVersion": "2026-07-28", "capabilities": {},
                                  "clientInfo": {"name": "test", "version": "1"}})
        self.assertIn("result", r, r)
        h = headers(c, "headers")
        self.assertEqual(h["initialize_protocol_version"], "2026-07-28")
        # The same tool twice: the same lines (the reused list); another name, its own.
        self.assertEqual(headers(c, "headers")["mcp_name"], "headers")
        self.assertEqual(headers(c, "headers-other")["mcp_name"], "headers-other")
        name = "headers-t\u00f6\u00f6l"
        self.assertEqual(headers(c, name)["mcp_name"],
                         "=?base64?%s?=" % base64.b64encode(name.encode()).decode())
        self.assertEqual(headers(c, "headers ")["mcp_name"], "=?base64?aGVhZGVycyA=?=")
        for bad in ("headers\r\nX-Injected: 1", "headers\nx", "headers\tx"):
            r = c.call("tools/call", {"name": bad, "arguments": {}})
            self.assertEqual(r["error"]["code"], -32600, r)
            self.assertIn("control character", r["error"]["message"])
        self.assertEqual(text_of(c.echo("still fine")), "still fine")

    def test_a_streamable_http_through_connect(self):
        self.setup_http()
        c = self.client("gh")
        info = c.initialize()
        self.assertIn("serverInfo", info)
        tools = c.call("tools/list")["result"]["tools"]
        self.assertEqual(sorted(t["name"] for t in tools)[:2], ["add", "echo"])
        self.assertEqual(text_of(c.echo("hello through the keeper")), "hello through the keeper")
        add = c.call("tools/call", {"name": "add", "arguments": {"a": 2, "b": 40}})
        self.assertIn("42", text_of(add))
        st = self.k.server("gh")
        self.assertEqual(st["worker"]["state"], "running", st)
        self.assertEqual(c.close(), 0)
        kl.assert_no_secrets(self.k.log(), self.secrets, "keeper and worker log")

    def test_b_stdio_through_connect(self):
        if not os.path.exists(STDIO_SERVER):
            self.skipTest("stdio test server not built")
        self.k = self.make_keeper(servers={"files": {"command": STDIO_SERVER}})
        self.k.start()
        c = self.client("files")
        c.initialize()
        self.assertEqual(text_of(c.echo("over stdio")), "over stdio")
        self.assertEqual(c.close(), 0)
        kl.wait_until(lambda: "stdio-mcp: started" in self.k.log(), 10, 0.1, "the server's stderr in the log")
        # Pipes: handed over (the worker says so), not bridged.
        self.assertIn("client 1 connected (stdio)", self.k.log())

    def test_c_logout_while_connected(self):
        self.setup_http()
        c = self.client("gh")
        c.initialize()
        self.assertEqual(text_of(c.echo("before")), "before")
        self.k.rpc("auth.logout", {"server": "gh"})
        r = c.echo("after")
        self.assertIn("error", r)
        self.assertIn("mcpctl auth login --server gh", r["error"]["message"])

    def test_d_worker_killed_mid_session(self):
        # Through the bridge: mcpctl answers the request the worker took with it.
        self.setup_http()
        c = self.client("gh", bridge=True)
        c.initialize()
        c.echo("warm")
        pid = self.k.server("gh")["worker"]["pid"]
        c.send({"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                "params": {"name": "slow", "arguments": {"ms": 5000}}})
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        r = c.read(20)
        self.assertEqual(r.get("id"), 99, r)
        self.assertIn("error", r)
        self.assertNotEqual(c.close(), 0)
        kl.wait_until(lambda: self.k.server("gh")["worker"]["restarts"] >= 1, 20, 0.1, "a restart")
        c2 = self.client("gh")
        c2.initialize()
        self.assertEqual(text_of(c2.echo("again")), "again")

    def test_d2_worker_killed_after_handover(self):
        # Handed over: the client's stdout ends (as when a stdio server dies)
        # and mcpctl exits 1 saying why; the next connect gets a new worker.
        self.setup_http()
        c = self.client("gh")
        c.initialize()
        c.echo("warm")
        pid = self.k.server("gh")["worker"]["pid"]
        c.send({"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                "params": {"name": "slow", "arguments": {"ms": 5000}}})
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        with self.assertRaises(EOFError):
            c.read(20)
        self.assertEqual(c.close(), 1)
        self.assertIn("killed or crashed", c.proc.stderr.read().decode(errors="replace"))
        kl.wait_until(lambda: self.k.server("gh")["worker"]["restarts"] >= 1, 20, 0.1, "a restart")
        c2 = self.client("gh")
        c2.initialize()
        self.assertEqual(text_of(c2.echo("again")), "again")

    def test_e_fifty_clients(self):
        self.setup_http()
        clients = [self.client("gh") for _ in range(50)]
        for c in clients:
            c.initialize()
        for i, c in enumerate(clients):
            self.assertEqual(text_of(c.echo("client %d" % i)), "client %d" % i)
        # Each client is its own upstream session, each with its own GET stream.
        kl.wait_until(lambda: self.peer.stats()["get_streams"] == 50, 30, 0.2, "50 upstream sessions")
        for c in clients:
            self.assertEqual(c.close(), 0)

    def test_f_unknown_and_disabled(self):
        self.k = self.make_keeper(servers={"off": {"command": "/bin/cat", "enabled": False}})
        self.k.start()
        for name, word in (("nope", "no server named"), ("off", "disabled")):
            c = self.client(name)
            c.send({"jsonrpc": "2.0", "id": 1, "method": "initialize"})
            r = c.read(10)
            self.assertEqual(r.get("id"), 1)
            self.assertIn("error", r)
            rc = c.close()
            self.assertNotEqual(rc, 0)
            self.assertIn(word, c.proc.stderr.read().decode(errors="replace"))

    def test_g_idle_worker_stops(self):
        self.setup_http(extra_config={"idle_timeout": 1})
        c = self.client("gh")
        c.initialize()
        self.assertEqual(c.close(), 0)
        kl.wait_until(lambda: self.k.server("gh")["worker"]["state"] == "idle", 20, 0.2, "the idle worker to stop")

    def test_h_tokens_refreshed_under_load(self):
        # 10 s tokens, a call every 100 ms for 40 s: the client sees no error.
        self.setup_http(lifetime=10)
        c = self.client("gh")
        c.initialize()
        errors, calls = [], 0
        end = time.monotonic() + 40
        while time.monotonic() < end:
            r = c.echo("tick %d" % calls)
            calls += 1
            if "error" in r:
                errors.append(r)
            time.sleep(0.1)
        self.assertEqual(errors, [], "%d calls" % calls)
        self.assertGreaterEqual(self.peer.stats()["refresh_grants"], 3)


WRAPPER = """#!/usr/bin/env python3
# Records what the keeper sends a worker on fd 3, then runs the real worker.
import os, socket, sys, threading
# (The keeper gives children a cleaned environment: the log path is written in.)
real, log = sys.argv[0] + ".real", LOG_PATH
keeper = socket.socket(fileno=3)
ours, theirs = socket.socketpair()
pid = os.fork()
if pid == 0:
    os.dup2(theirs.fileno(), 3)
    os.execv(real, [real])
theirs.close()
def pump(src, dst, record):
    while True:
        data = src.recv(65536)
        if not data:
            dst.shutdown(socket.SHUT_WR)
            return
        if record:
            with open(log, "ab") as f:
                f.write(data)
        dst.sendall(data)
t = threading.Thread(target=pump, args=(ours, keeper, False), daemon=True)
t.start()
pump(keeper, ours, True)
os.waitpid(pid, 0)
"""


class TestWorkerPaths(WorkerCase):

    def test_i_sse_transport_through_connect(self):
        self.peer = self.start_peer(lifetime=3600)
        cid = self.peer.register()
        conf = self.peer.server_conf(cid, protocol="sse")
        conf["url"] = self.peer.url + "/sse"
        self.k = self.make_keeper(servers={"legacy": conf})
        access, refresh = self.peer.login(cid)
        self.k.put_token("legacy", conf["url"], access, refresh, 3600, self.peer.token_endpoint)
        self.k.start()
        c = self.client("legacy")
        c.initialize()
        self.assertEqual(text_of(c.echo("old transport")), "old transport")
        self.assertEqual(c.close(), 0)

    def test_j_revoked_access_tokens_recover(self):
        self.setup_http()
        c = self.client("gh")
        c.initialize()
        self.assertEqual(text_of(c.echo("before")), "before")
        grants = self.peer.stats()["refresh_grants"]
        kl.http("POST", self.peer.url + "/test/revoke-access-all", b"{}", {"Content-Type": "application/json"})
        for i in range(5):
            r = c.echo("after %d" % i)
            self.assertNotIn("error", r, r)
        self.assertEqual(self.peer.stats()["refresh_grants"], grants + 1, "one refresh for the 401")

    def test_k_server_initiated_notification(self):
        self.setup_http()
        c = self.client("gh")
        c.initialize()
        c.echo("session up")
        body = json.dumps({"session": "*", "method": "notifications/message",
                           "params": {"level": "info", "data": "hello from upstream"}}).encode()

        def delivered():
            r = kl.http("POST", self.peer.url + "/test/notify", body, {"Content-Type": "application/json"})
            return r.status == 200 and r.json().get("delivered", 0) >= 1
        kl.wait_until(delivered, 20, 0.2, "the worker's GET stream")
        m = c.read(20)
        self.assertEqual(m.get("method"), "notifications/message", m)
        self.assertEqual(m["params"]["data"], "hello from upstream")

    def test_l_connect_refuses_read_ahead(self):
        self.k = self.make_keeper(servers={"files": {"command": STDIO_SERVER}})
        self.k.start()
        with kl.LineConn(self.k.socket_path) as conn:
            conn.send(b'{"jsonrpc":"2.0","id":1,"method":"connect","params":{"server":"files"}}\n'
                      b'{"jsonrpc":"2.0","id":2,"method":"initialize"}\n')
            r = conn.read_json()
            self.assertEqual(r["error"]["data"]["kind"], "invalid_request", r)
            conn.wait_closed()
        self.assertEqual(self.k.server("files")["worker"]["state"], "idle")

    def test_m_eager_worker_and_reload(self):
        self.k = self.make_keeper(servers={"files": {"command": STDIO_SERVER, "eager": True}})
        self.k.start()
        kl.wait_until(lambda: self.k.server("files")["worker"]["state"] == "running", 20, 0.1, "the eager worker")
        pid = self.k.server("files")["worker"]["pid"]
        # Changed settings restart exactly that worker.
        self.k.servers["files"]["args"] = ["--crash-after", "100"]
        self.k.write_config()
        self.k.signal(signal.SIGHUP)
        kl.wait_until(lambda: self.k.server("files")["worker"]["pid"] not in (None, pid), 20, 0.1,
                      "a new worker after the reload")

    def test_o_request_timeout(self):
        self.setup_http(extra_config={"request_timeout": 1})
        c = self.client("gh")
        c.initialize()
        r = c.call("tools/call", {"name": "slow", "arguments": {"ms": 4000}}, timeout=30)
        self.assertIn("error", r, r)
        self.assertEqual(text_of(c.echo("still here")), "still here")

    def test_q_end_of_input_still_answered(self):
        # An MCP client that ends its input right after a request still gets
        # the answer; then mcpctl exits 0.
        self.setup_http()
        c = self.client("gh")
        c.initialize()
        c.send({"jsonrpc": "2.0", "id": 42, "method": "tools/call",
                "params": {"name": "slow", "arguments": {"ms": 1000}}})
        c.proc.stdin.close()
        r = c.read(20)
        self.assertEqual(r.get("id"), 42, r)
        self.assertIn("result", r, r)
        self.assertEqual(c.proc.wait(20), 0)

    def test_p_keeper_not_running(self):
        c = Client(type("K", (), {"socket_path": os.path.join(self.tmp, "none.sock")})(), "gh")
        self.clients.append(c)
        c.send({"jsonrpc": "2.0", "id": 5, "method": "initialize"})
        r = c.read(10)
        self.assertEqual(r.get("id"), 5, r)
        self.assertIn("not running", r["error"]["message"])
        self.assertEqual(c.close(), 3)

    def test_n_worker_channel_holds_no_refresh_token(self):
        self.peer = self.start_peer(lifetime=10)
        cid = self.peer.register()
        libexec = os.path.join(self.tmp, "libexec")
        os.makedirs(libexec)
        os.symlink(os.path.join(kl.BUILD_ROOT, "daemon", "oauth", "mcpkeeper-oauth"), os.path.join(libexec, "mcpkeeper-oauth"))
        os.symlink(WORKER, os.path.join(libexec, "mcpkeeper-worker.real"))
        record = os.path.join(self.tmp, "channel.log")
        with open(os.path.join(libexec, "mcpkeeper-worker"), "w") as f:
            f.write(WRAPPER.replace("LOG_PATH", repr(record)))
        os.chmod(os.path.join(libexec, "mcpkeeper-worker"), 0o755)
        self.k = self.make_keeper(servers={"gh": self.peer.server_conf(cid)},
                                  env={"MCPKEEPER_LIBEXECDIR": libexec})
        access, refresh = self.peer.login(cid)
        self.k.put_token("gh", self.peer.mcp_url, access, refresh, 10, self.peer.token_endpoint)
        self.k.start()
        sub = self.k.subscribe()
        c = self.client("gh")
        c.initialize()
        c.echo("one")
        sub.wait_for(kl.EV_REFRESHED, lambda d: d.get("server_name") == "gh", 40)
        c.echo("two")
        c.close()
        channel = kl.read_text(record)
        self.assertIn("token.update", channel)
        self.assertIn(access, channel)
        self.assertNotIn(refresh, channel)
        self.assertNotIn("refresh_token", channel)
        self.assertNotIn("client_secret", channel)


LIMIT = 1024 * 1024    # common/proto.h PROTO_MAX_MESSAGE


def call_line(rid, tool, arguments, pad=None):
    """A tools/call as compact JSON bytes (no newline); pad: total length wanted."""
    args = dict(arguments)
    line = json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                       "params": {"name": tool, "arguments": args}}, separators=(",", ":")).encode()
    if pad is not None:
        args["pad"] = ""
        base = len(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                               "params": {"name": tool, "arguments": args}}, separators=(",", ":")))
        args["pad"] = "p" * (pad - base)
        line = json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                           "params": {"name": tool, "arguments": args}}, separators=(",", ":")).encode()
        assert len(line) == pad, (len(line), pad)
    return line


class TestBridge(WorkerCase):
    """The framing between the client's stdio and the worker, done by
    `mcpctl connect --bridge` (TestHandover: by the worker itself)."""

    BRIDGE = True

    def setUp(self):
        super().setUp()
        if not os.path.exists(STDIO_SERVER):
            self.skipTest("stdio test server not built")
        self.stderr_seen = {}
        self.addCleanup(self._check_stderr)

    def stderr_of(self, c):
        """mcpctl's stderr once it has exited (read once, kept)."""
        if c not in self.stderr_seen:
            self.stderr_seen[c] = c.proc.stderr.read().decode(errors="replace")
        return self.stderr_seen[c]

    def _check_stderr(self):
        # Runs before WorkerCase's cleanup kills what is left: only finished clients.
        for c in self.clients:
            if c.proc.poll() is not None:
                report = kl.sanitizer_report(self.stderr_of(c))
                self.assertIsNone(report, "sanitizer report from mcpctl connect:\n%s" % report)

    def start(self, args=None):
        conf = {"command": STDIO_SERVER}
        if args:
            conf["args"] = args
        self.k = self.make_keeper(servers={"files": conf})
        self.k.start()
        c = self.client("files", bridge=self.BRIDGE)
        c.initialize()
        return c

    def write(self, c, data):
        c.proc.stdin.write(data)
        c.proc.stdin.flush()

    def read_all(self, c, n, timeout=20.0):
        return [c.read(timeout) for _ in range(n)]

    def no_more_output(self, c, seconds=0.5):
        r, _, _ = select.select([c.proc.stdout], [], [], seconds)
        self.assertFalse(r and (c.buf or os.read(c.proc.stdout.fileno(), 65536)), "unexpected output")

    def test_r_line_split_across_writes(self):
        c = self.start()
        text = "split \u00e9 \u2603 \U0001f600 / \\ \" end".encode().decode("unicode_escape")
        line = call_line(1, "echo", {"text": text}) + b"\n"
        for i in range(0, len(line), 3):
            self.write(c, line[i:i + 3])
            time.sleep(0.002)
        r = c.read()
        self.assertEqual(r.get("id"), 1, r)
        self.assertEqual(text_of(r), text)
        # A large message in pieces of a few KiB, with the next one starting in its last piece.
        big = "b" * 300000
        data = call_line(2, "echo", {"text": big}) + b"\n" + call_line(3, "echo", {"text": "next"}) + b"\n"
        for i in range(0, len(data), 4000):
            self.write(c, data[i:i + 4000])
        r2, r3 = self.read_all(c, 2)
        self.assertEqual((r2["id"], text_of(r2)), (2, big))
        self.assertEqual((r3["id"], text_of(r3)), (3, "next"))
        self.assertEqual(c.close(), 0)

    def test_s_several_messages_in_one_write(self):
        c = self.start()
        ids = [10, -3, 0, "plain", "esc\u00e9\"q", 18446744073709551615, ""]
        texts = ["t%d \u00e9 \\u00e9 / \\/" % i for i in range(len(ids))]
        parts = []
        for rid, text in zip(ids, texts):
            parts.append(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                                     "params": {"name": "echo", "arguments": {"text": text}}}).encode())
        # Python's default json.dumps: spaces after separators, \uXXXX escapes, one more with
        # a raw UTF-8 text, a CRLF line, a blank line and a notification in the same write.
        parts.append(b'{"jsonrpc":"2.0","id":"raw","method":"tools/call","params":{"name":"echo",'
                     b'"arguments":{"text":"\xc3\xa9\xe2\x98\x83"}}}\r')
        parts.append(b"")
        parts.append(b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}')
        self.write(c, b"\n".join(parts) + b"\n")
        got = {json.dumps(m["id"]): m for m in self.read_all(c, len(ids) + 1)}
        for rid, text in zip(ids, texts):
            m = got.pop(json.dumps(rid))
            self.assertEqual(text_of(m), text, m)
        self.assertEqual(text_of(got.pop('"raw"')), "\u00e9\u2603")
        self.assertEqual(got, {})
        # A request from the server (sampling) and the client's answer pass both ways.
        c.send({"jsonrpc": "2.0", "id": 50, "method": "tools/call",
                "params": {"name": "sample", "arguments": {"text": "q"}}})
        req = c.read()
        self.assertEqual(req.get("method"), "sampling/createMessage", req)
        c.send({"jsonrpc": "2.0", "id": req["id"], "result": {"role": "assistant", "model": "m",
                                                             "content": {"type": "text", "text": "answer"}}})
        r = c.read()
        self.assertEqual((r.get("id"), text_of(r)), (50, "answer"))
        self.no_more_output(c)
        self.assertEqual(c.close(), 0)

    def test_t_message_size_limit(self):
        c = self.start()
        # Exactly at the limit (the newline not counted): passed on and answered.
        self.write(c, call_line(1, "add", {"a": 1, "b": 2}, pad=LIMIT) + b"\n")
        r = c.read(60)
        self.assertEqual((r.get("id"), text_of(r)), (1, "3"))
        # One byte over: one error, nothing for the rest of that line, and the
        # connection goes on (the next message is in the same write).
        self.write(c, call_line(2, "add", {"a": 1, "b": 2}, pad=LIMIT + 1) + b"\n" +
                   call_line(3, "echo", {"text": "after"}) + b"\n")
        e, r3 = self.read_all(c, 2, 60)
        self.assertEqual(e["error"]["code"], -32600, e)
        self.assertEqual(e["error"]["data"]["kind"], "too_large", e)
        self.assertIsNone(e["id"])
        self.assertEqual((r3.get("id"), text_of(r3)), (3, "after"))
        # Over the limit by far, arriving in pieces without a newline for a while.
        huge = call_line(4, "echo", {"text": "h" * (2 * LIMIT)})
        for i in range(0, len(huge), 65536):
            self.write(c, huge[i:i + 65536])
        self.write(c, b"\n" + call_line(5, "echo", {"text": "still here"}) + b"\n")
        e, r5 = self.read_all(c, 2, 60)
        self.assertEqual(e["error"]["data"]["kind"], "too_large", e)
        self.assertEqual((r5.get("id"), text_of(r5)), (5, "still here"))
        self.no_more_output(c)
        self.assertEqual(c.close(), 0)

    def test_u_not_json_rpc(self):
        c = self.start()
        bad = [
            (b"hello", -32700, None),
            (b'{"jsonrpc":"2.0","id":1,"method":"tools/list"} trailing', -32700, None),
            (b'{"jsonrpc":"2.0","id":"x","method":"echo","params":{"t":"\xff"}}', -32700, None),
            (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600, None),
            (b'{"jsonrpc":"2.0","id":7}', -32600, 7),
            (b'{"jsonrpc":"1.0","id":"v1","method":"ping"}', -32600, "v1"),
            (b'{"jsonrpc":"2.0","id":8,"method":"ping","params":3}', -32600, 8),
            (b'{"jsonrpc":"2.0","id":9,"result":null}', -32600, 9),
        ]
        for line, _, _ in bad:
            self.write(c, line + b"\n")
        for line, code, rid in bad:
            e = c.read()
            self.assertEqual(e.get("error", {}).get("code"), code, (line, e))
            self.assertEqual(e.get("id"), rid, (line, e))
        r = c.call("ping")
        self.assertIn("result", r)
        self.no_more_output(c)
        self.assertEqual(c.close(), 0)
        self.check_who_answered_bad_input()

    def check_who_answered_bad_input(self):
        # The bridge answered them: none of them reached the worker.
        for detail in ("invalid JSON", "not a JSON object", "must be", "not valid UTF-8"):
            self.assertNotIn(detail, self.k.log())

    def test_v_end_of_input_inside_a_line(self):
        c = self.start()
        self.write(c, call_line(1, "echo", {"text": "whole"}) + b"\n" + call_line(2, "echo", {"text": "cut"})[:40])
        c.proc.stdin.close()
        r = c.read()
        self.assertEqual(r.get("id"), 1, r)
        self.assertEqual(text_of(r), "whole")
        self.assertEqual(c.proc.wait(20), 0)
        self.assertEqual(c.proc.stdout.read(), b"")
        self.check_cut_message_noted(c)

    def check_cut_message_noted(self, c):
        self.assertIn("ended inside a message", self.stderr_of(c))

    def test_w_worker_gone_mid_request(self):
        c = self.start()
        ids = [1, -3, "plain", "esc\u00e9", 18446744073709551615, None]
        c.send({"jsonrpc": "2.0", "id": 100, "method": "tools/call",
                "params": {"name": "slow", "arguments": {"ms": 20000}}})
        for rid in ids:
            c.send({"jsonrpc": "2.0", "id": rid, "method": "ping"})
        # The same id twice: the worker refuses the second at once; the first stays in flight.
        c.send({"jsonrpc": "2.0", "id": 100, "method": "ping"})
        dup = c.read()
        self.assertEqual(dup.get("id"), 100, dup)
        self.assertIn("already in flight", dup["error"]["message"])
        # Half a message from the client when the worker dies changes nothing.
        self.write(c, b'{"jsonrpc":"2.0","id":555,"meth')
        time.sleep(0.3)
        os.kill(self.k.server("files")["worker"]["pid"], signal.SIGKILL)
        errors = self.read_all(c, len(ids) + 1)
        self.assertEqual(sorted(json.dumps(e["id"]) for e in errors),
                         sorted(json.dumps(i) for i in ids + [100]))
        for e in errors:
            self.assertEqual(e["error"]["data"]["kind"], "unavailable", e)
            self.assertIn("was lost", e["error"]["message"])
        self.assertEqual(c.proc.wait(20), 1)
        self.assertEqual(c.proc.stdout.read(), b"")
        self.assertIn("the worker closed the connection", self.stderr_of(c))


class TestHandover(TestBridge):
    """The same framing cases with stdin and stdout handed to the worker
    (mcpctl's default for pipes), and what only the handover has."""

    BRIDGE = False

    def check_who_answered_bad_input(self):
        # The worker read the client's pipe itself and answered each one.
        for detail in ("invalid JSON", "not a JSON object", "must be", "not valid UTF-8"):
            self.assertIn(detail, self.k.log())
        self.assertIn("client 1 connected (stdio)", self.k.log())

    def check_cut_message_noted(self, c):
        self.assertIn("input ended inside a message", self.k.log())

    def assert_ended(self, c, why):
        """The client's stdout ends with nothing more; mcpctl exits 1 saying why."""
        with self.assertRaises(EOFError):
            c.read()
        self.assertEqual(c.proc.wait(20), 1)
        self.assertIn(why, self.stderr_of(c))

    def test_w_worker_gone_mid_request(self):
        # Nobody is left who knows what was in flight: the client's stdout
        # ends, as when a stdio server dies, and mcpctl says why.
        c = self.start()
        c.send({"jsonrpc": "2.0", "id": 100, "method": "tools/call",
                "params": {"name": "slow", "arguments": {"ms": 20000}}})
        c.send({"jsonrpc": "2.0", "id": 100, "method": "ping"})
        dup = c.read()
        self.assertIn("already in flight", dup["error"]["message"])
        self.write(c, b'{"jsonrpc":"2.0","id":555,"meth')
        time.sleep(0.3)
        os.kill(self.k.server("files")["worker"]["pid"], signal.SIGKILL)
        self.assert_ended(c, "the worker closed the connection (it was killed or crashed)")

    def test_x_worker_stopping_answers_in_flight(self):
        # A worker that stops (here: its settings changed) answers what it
        # holds, closes the client's stdout, and mcpctl exits 1 with the reason.
        c = self.start()
        c.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "slow", "arguments": {"ms": 20000}}})
        time.sleep(0.3)
        self.k.servers["files"]["args"] = ["--crash-after", "100"]
        self.k.write_config()
        self.k.signal(signal.SIGHUP)
        e = c.read()
        self.assertEqual(e.get("id"), 7, e)
        self.assertEqual(e["error"]["data"]["kind"], "unavailable", e)
        self.assertIn("is stopping", e["error"]["message"])
        self.assert_ended(c, "the session ended: the worker is stopping")

    def test_y_mcpctl_gone_ends_the_session(self):
        # The MCP client kills its server process: the worker ends that
        # session (and its stdio upstream) although the pipes stay open.
        c = self.start()
        self.assertEqual(text_of(c.echo("one")), "one")
        c.proc.kill()
        c.proc.wait()
        kl.wait_until(lambda: "client 1: mcpctl connect went away" in self.k.log(), 10, 0.1,
                      "the worker noticing mcpctl's end")
        kl.wait_until(lambda: "stdio-mcp: end of input" in self.k.log(), 10, 0.1, "the upstream's end")

    def test_z_bad_handovers(self):
        self.start()
        conn_line = b'{"jsonrpc":"2.0","id":1,"method":"connect","params":{"server":"files","stdio":true}}\n'
        with kl.LineConn(self.k.socket_path) as conn:
            conn.send(b'{"jsonrpc":"2.0","id":1,"method":"connect","params":{"server":"files","stdio":1}}\n')
            r = conn.read_json()
            self.assertEqual(r["error"]["data"]["kind"], "invalid_params", r)
        # The byte without descriptors; then descriptors that are files: the
        # worker says why in session.closed and closes that connection only.
        def refused(conn, why):
            m = conn.read_json()
            self.assertEqual(m.get("method"), "session.closed", m)
            self.assertFalse(m["params"]["clean"], m)
            self.assertIn(why, m["params"]["reason"])
            self.assertIsNone(conn.read_line())
        with kl.LineConn(self.k.socket_path) as conn:
            conn.send(conn_line)
            self.assertIn("result", conn.read_json())
            conn.send(b"\0")
            refused(conn, "a stdio connect without its stdin and stdout")
        with open(os.devnull, "rb") as a, open(os.devnull, "wb") as b:
            with kl.LineConn(self.k.socket_path) as conn:
                conn.send(conn_line)
                self.assertIn("result", conn.read_json())
                socket.send_fds(conn.sock, [b"\0"], [a.fileno(), b.fileno()])
                refused(conn, "is not a pipe or socket")
        # The worker goes on serving.
        c = self.client("files")
        c.initialize()
        self.assertEqual(text_of(c.echo("fine")), "fine")
        self.assertEqual(c.close(), 0)

    def test_za_files_are_bridged(self):
        # stdin a regular file: no worker can wait on it, so mcpctl relays it.
        self.start()
        path = os.path.join(self.tmp, "requests")
        with open(path, "wb") as f:
            f.write(call_line(1, "echo", {"text": "from a file"}) + b"\n")
        with open(path, "rb") as f:
            p = subprocess.run([kl.MCPCTL, "--socket", self.k.socket_path, "connect", "files"], stdin=f,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kl.child_env(), timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        r = json.loads(p.stdout.splitlines()[0])
        self.assertEqual(text_of(r), "from a file")
        self.assertIn("client 2 connected (", self.k.log())
        self.assertNotIn("client 2 connected (stdio)", self.k.log())


if __name__ == "__main__":
    kl.main()
