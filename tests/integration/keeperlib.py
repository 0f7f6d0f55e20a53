"""
keeperlib: the harness of mcpkeeper's integration tests.

The tests start the real binaries (mcpkeeperd, the test peer, store-tool,
mcpctl) from the build tree named by MCPKEEPER_BUILD_ROOT (meson's test_env
sets it; the ASan build tree works unchanged), each test in its own
temporary directory, and stop everything they start, by PID. Every wait is
bounded. Standard library only.

    class MyTest(keeperlib.KeeperTestCase):
        def test_something(self):
            peer = self.start_peer(lifetime=10)
            cid = peer.register()
            access, refresh = peer.login(cid)
            k = self.make_keeper(servers={"gh": peer.server_conf(cid)})
            k.put_token("gh", peer.mcp_url, access, refresh, 10, peer.token_endpoint)
            k.start()
            sub = k.subscribe()
            ev = sub.wait_for("oauth.token_refreshed", lambda d: d["server_name"] == "gh", 40)

    if __name__ == "__main__":
        keeperlib.main()

Environment:
    MCPKEEPER_BUILD_ROOT   build tree (default: <source>/build)
    MCPKEEPER_SOURCE_ROOT  source tree (default: two levels above this file)
    KEEP_TMP=1             keep every test's temporary directory (path printed)
"""

import base64
import calendar
import hashlib
import json
import os
import re
import secrets as _secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.environ.get("MCPKEEPER_SOURCE_ROOT") or os.path.dirname(os.path.dirname(HERE))
BUILD_ROOT = os.environ.get("MCPKEEPER_BUILD_ROOT") or os.path.join(SOURCE_ROOT, "build")

KEEPERD = os.path.join(BUILD_ROOT, "daemon", "mcpkeeperd")
STORE_TOOL = os.path.join(BUILD_ROOT, "tests", "store-tool")
PEER_BIN = os.path.join(BUILD_ROOT, "tests", "peer", "mcpkeeper-test-peer")
MCPCTL = os.path.join(BUILD_ROOT, "ctl", "mcpctl")

# Event and error names (common/proto.h).
EV_REFRESHED = "oauth.token_refreshed"
EV_FAILED = "oauth.refresh_failed"
EV_CHANGED = "servers.changed"

KEEP_TMP = bool(os.environ.get("KEEP_TMP"))

# Slow runs (valgrind, tests/reliability/part-valgrind): every bounded wait of
# this library lasts $MCPKEEPER_TEST_SLOW times as long.
SLOW = float(os.environ.get("MCPKEEPER_TEST_SLOW") or 1)
# $MCPKEEPER_TEST_VALGRIND=DIR: the keeper and every child it execs (but not
# the test's own programs) run under memcheck. Its reports go to stderr, the
# keeper's log, which every child shares (--log-file would leave each forked
# child's log file open at a low descriptor across its exec, valgrind 3.19);
# at the end of a test the ==PID== lines are copied to DIR.
VALGRIND_DIR = os.environ.get("MCPKEEPER_TEST_VALGRIND")


def valgrind_argv():
    skip = ["/usr/*", "/bin/*", "/sbin/*", "/tmp/*", os.path.join(BUILD_ROOT, "tests", "*")]
    return ["valgrind", "--tool=memcheck", "--trace-children=yes", "--trace-children-skip=" + ",".join(skip),
            "--leak-check=full", "--show-leak-kinds=definite", "--errors-for-leak-kinds=definite",
            "--num-callers=30", "--suppressions=" + os.path.join(SOURCE_ROOT, "tests", "valgrind.supp"),
            "--log-fd=2"]


def valgrind_save(log_path):
    if not VALGRIND_DIR:
        return
    lines = [l for l in read_text(log_path).splitlines(True) if l.startswith("==")]
    if lines:
        fd, _ = tempfile.mkstemp(prefix="vg-", suffix=".log", dir=VALGRIND_DIR)
        with os.fdopen(fd, "w") as f:
            f.writelines(lines)

# Every process the harness started and has not reaped yet: killed at exit
# whatever happens, so a failing test never leaves a keeper behind.
_live = {}
_live_lock = threading.Lock()


def _register(proc):
    with _live_lock:
        _live[proc.pid] = proc


def _unregister(proc):
    with _live_lock:
        _live.pop(proc.pid, None)


def _kill_all_live():
    with _live_lock:
        procs = list(_live.values())
    for p in procs:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        _unregister(p)


def child_env(extra=None):
    """The environment for processes we start: ours without proxies."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(extra or {})
    return env


def stop_process(proc, timeout=20.0, sig=signal.SIGTERM):
    """SIGTERM (or sig), wait up to timeout, then SIGKILL. Returns the exit status."""
    timeout *= SLOW
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    _unregister(proc)
    return proc.returncode


class WaitTimeout(AssertionError):
    """A bounded wait ran out: a test failure, not an error of the harness."""


def wait_until(fn, timeout, interval=0.1, what=None):
    """Calls fn until it returns something true and returns that; fails after timeout s."""
    timeout *= SLOW
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last_exc = None
        except (OSError, RpcError, ValueError) as e:
            last_exc = e
        if time.monotonic() >= deadline:
            msg = "timed out after %.1f s waiting for %s" % (timeout, what or getattr(fn, "__name__", "a condition"))
            if last_exc:
                msg += " (last error: %r)" % (last_exc,)
            raise WaitTimeout(msg)
        time.sleep(interval)


def time_ms(text):
    """ms since the epoch of an RFC 3339 UTC time with milliseconds, as the
    keeper writes them ("2026-12-07T16:40:01.123Z"); None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z", str(text))
    if not m:
        raise AssertionError("not an RFC 3339 UTC time with milliseconds: %r" % (text,))
    y, mo, d, h, mi, sec, ms = map(int, m.groups())
    return calendar.timegm((y, mo, d, h, mi, sec)) * 1000 + ms


def assert_time_text(case, text, unix):
    """text is an RFC 3339 UTC time with milliseconds and unix its whole
    seconds since the epoch; or both are None."""
    if text is None or unix is None:
        case.assertIsNone(text, "%r without its _unix %r" % (text, unix))
        case.assertIsNone(unix, "%r without its RFC 3339 text %r" % (unix, text))
        return
    case.assertIsInstance(unix, int, unix)
    case.assertEqual(time_ms(text) // 1000, unix, (text, unix))


def assert_no_secrets(text, secrets, where="log"):
    """Fails when text contains any of the secrets (empty ones are ignored)."""
    for s in secrets:
        if s and s in text:
            at = text.index(s)
            line_start = text.rfind("\n", 0, at) + 1
            raise AssertionError("%s contains a token (%s...) at offset %d, line: %r" %
                                 (where, s[:6], at, text[line_start:line_start + 120].replace(s, "<TOKEN>")))


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer", "ERROR: MemorySanitizer")


def sanitizer_report(text):
    """The first sanitizer report in text (up to 40 lines), or None."""
    for m in SANITIZER_MARKERS:
        at = text.find(m)
        if at >= 0:
            start = text.rfind("\n", 0, at) + 1
            return "\n".join(text[start:].splitlines()[:40])
    return None


def read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def tail(text, lines=60):
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------
# The OAuth test peer

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


class HttpResult:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body.decode("utf-8"))


def http(method, url, body=None, headers=None, timeout=15.0):
    """One HTTP request without proxies or redirects; HTTP errors are results."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _opener.open(req, timeout=timeout * SLOW) as r:
            return HttpResult(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        try:
            data = e.read()
        finally:
            e.close()
        return HttpResult(e.code, e.headers, data)


class Peer:
    """mcpkeeper-test-peer on 127.0.0.1, a port of its choosing."""

    REDIRECT_URI = "http://127.0.0.1:9/callback"

    def __init__(self, lifetime=10, grace=0, extra_args=None, log_path=None, start_timeout=20.0):
        self.lifetime = lifetime
        self.grace = grace
        self.extra_args = list(extra_args or [])
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.proc = None
        self.port = None
        self._log_file = None

    # -- lifecycle --
    def start(self):
        if not os.path.exists(PEER_BIN):
            raise unittest.SkipTest("test peer not built: %s" % PEER_BIN)
        args = [PEER_BIN, "--port", "0", "--token-lifetime", str(self.lifetime),
                "--grace", str(self.grace)] + self.extra_args
        self._log_file = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._log_file, env=child_env())
        _register(self.proc)
        try:
            self.port = self._read_port()
        except BaseException:
            self.stop()
            raise
        # Keep draining stdout so the peer never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _read_port(self):
        deadline = time.monotonic() + self.start_timeout
        fd = self.proc.stdout.fileno()
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout("test peer printed no PORT line within %.0f s" % self.start_timeout)
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError("test peer exited before listening (status %s); log:\n%s" %
                                         (self.proc.wait(timeout=5), tail(read_text(self.log_path or "/dev/null"))))
                buf += chunk
                for line in buf.split(b"\n")[:-1]:
                    if line.startswith(b"PORT "):
                        return int(line.split()[1])
            elif self.proc.poll() is not None:
                raise AssertionError("test peer exited with status %s before listening" % self.proc.returncode)

    def _drain(self):
        try:
            while self.proc.stdout.read(4096):
                pass
        except (OSError, ValueError):
            pass

    def stop(self, timeout=10.0):
        if self.proc:
            stop_process(self.proc, timeout)
            try:
                self.proc.stdout.close()
            except OSError:
                pass
        if self._log_file not in (None, subprocess.DEVNULL):
            self._log_file.close()
            self._log_file = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- addresses --
    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def mcp_url(self):
        """The MCP endpoint, which is also the peer's RFC 8707 resource."""
        return self.url + "/mcp"

    @property
    def token_endpoint(self):
        return self.url + "/token"

    def server_conf(self, client_id, **extra):
        """A keeper config entry for this peer's MCP endpoint with a configured client."""
        conf = {"url": self.mcp_url, "oauth": {"client_id": client_id}}
        conf.update(extra)
        return conf

    # -- /test --
    def _json(self, method, path, obj=None):
        body = json.dumps(obj).encode() if obj is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        r = http(method, self.url + path, body, headers)
        if r.status // 100 != 2:
            raise AssertionError("peer %s %s: HTTP %d %r" % (method, path, r.status, r.body[:200]))
        return r.json() if r.body.strip() else None

    def fail(self, mode, count=1):
        """Queues count failures of mode (500, 429, hang, malformed, invalid_grant)."""
        return self._json("POST", "/test/fail", {"mode": str(mode), "count": int(count)})

    def stats(self):
        return self._json("GET", "/test/stats")

    def reset(self):
        return self._json("POST", "/test/reset", {})

    def config(self, **settings):
        return self._json("POST", "/test/config", settings)

    # -- OAuth --
    def register(self, redirect_uri=None, auth_method="none"):
        """Dynamic registration of a public client; returns its client_id."""
        meta = {"redirect_uris": [redirect_uri or self.REDIRECT_URI],
                "token_endpoint_auth_method": auth_method,
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"], "client_name": "mcpkeeper integration test"}
        r = http("POST", self.url + "/register", json.dumps(meta).encode(),
                 {"Content-Type": "application/json"})
        if r.status not in (200, 201):
            raise AssertionError("register: HTTP %d %r" % (r.status, r.body[:200]))
        return r.json()["client_id"]

    def login(self, client_id, redirect_uri=None, resource=None, scope=None):
        """Authorization code with PKCE S256; returns (access_token, refresh_token)."""
        redirect_uri = redirect_uri or self.REDIRECT_URI
        resource = resource or self.mcp_url
        verifier = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = _secrets.token_urlsafe(16)
        q = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
             "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
             "resource": resource}
        if scope:
            q["scope"] = scope
        r = http("GET", self.url + "/authorize?" + urllib.parse.urlencode(q))
        if r.status not in (302, 303) or not r.headers.get("Location"):
            raise AssertionError("authorize: HTTP %d %r" % (r.status, r.body[:200]))
        loc = urllib.parse.urlsplit(r.headers["Location"])
        params = dict(urllib.parse.parse_qsl(loc.query))
        if params.get("state") != state or "code" not in params:
            raise AssertionError("authorize redirect without code or with a wrong state: %r" % (sorted(params),))
        form = {"grant_type": "authorization_code", "code": params["code"], "redirect_uri": redirect_uri,
                "client_id": client_id, "code_verifier": verifier, "resource": resource}
        r = http("POST", self.token_endpoint, urllib.parse.urlencode(form).encode(),
                 {"Content-Type": "application/x-www-form-urlencoded"})
        if r.status != 200:
            raise AssertionError("token (authorization_code): HTTP %d %r" % (r.status, r.body[:200]))
        tok = r.json()
        return tok["access_token"], tok.get("refresh_token")


# --------------------------------------------------------------------------
# The keeper

class RpcError(Exception):
    def __init__(self, code, kind, message, data=None):
        super().__init__("%s (%s): %s" % (kind, code, message))
        self.code = code
        self.kind = kind
        self.message = message
        self.data = data


def _error_of(msg):
    e = msg.get("error") or {}
    data = e.get("data") if isinstance(e.get("data"), dict) else {}
    return RpcError(e.get("code"), data.get("kind"), e.get("message"), data)


class LineConn:
    """A raw control-socket connection: send bytes, read lines, bounded."""

    def __init__(self, path, timeout=10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.eof = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def send_json(self, obj):
        self.send(json.dumps(obj, separators=(",", ":")) + "\n")

    def read_line(self, timeout=10.0):
        """The next line (bytes, without newline), or None at EOF. Fails after timeout."""
        timeout *= SLOW
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout("no line from the keeper within %.1f s" % timeout)
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def read_json(self, timeout=10.0):
        line = self.read_line(timeout)
        return None if line is None else json.loads(line)

    def wait_closed(self, timeout=10.0):
        """True once the keeper closed the connection (data before EOF is dropped)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
            self.buf += chunk
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Subscription:
    """A connection subscribed to events. Received events are kept in .events."""

    def __init__(self, path, timeout=10.0):
        self.conn = LineConn(path, timeout)
        self.conn.send_json({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe"})
        self.events = []        # every event params {type, data, timestamp}, in order
        self._pending = []      # received but not yet returned by next()
        while True:
            msg = self.conn.read_json(timeout)
            if msg is None:
                raise AssertionError("keeper closed the connection on events.subscribe")
            if msg.get("id") == 1:
                if "error" in msg:
                    raise _error_of(msg)
                if not (msg.get("result") or {}).get("subscribed"):
                    raise AssertionError("events.subscribe: %r" % (msg,))
                break
            self._take(msg)

    def _take(self, msg):
        if msg.get("method") == "event" and isinstance(msg.get("params"), dict):
            self.events.append(msg["params"])
            self._pending.append(msg["params"])

    def next(self, timeout=10.0):
        """The next event's params {type, data, timestamp}; fails after timeout."""
        timeout *= SLOW
        deadline = time.monotonic() + timeout
        while not self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout("no event within %.1f s" % timeout)
            msg = self.conn.read_json(left)
            if msg is None:
                raise AssertionError("keeper closed the event subscription")
            self._take(msg)
        return self._pending.pop(0)

    def wait_for(self, type, pred=None, timeout=10.0):
        """The next event of type whose data satisfies pred; others are skipped (kept in .events)."""
        timeout *= SLOW
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout("no %s event%s within %.1f s; got %r" %
                                  (type, " matching" if pred else "", timeout,
                                   [(e.get("type"), e.get("data")) for e in self.events]))
            try:
                ev = self.next(left)
            except WaitTimeout:
                continue
            if ev.get("type") == type and (pred is None or pred(ev.get("data") or {})):
                return ev

    def drain(self, seconds=0.0):
        """Collects whatever arrives within seconds; returns those events."""
        got = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0 and not self._pending:
                return got
            try:
                got.append(self.next(max(left, 0.01)))
            except WaitTimeout:
                return got

    def of_type(self, type, server=None):
        return [e for e in self.events if e.get("type") == type and
                (server is None or (e.get("data") or {}).get("server_name", (e.get("data") or {}).get("server")) == server)]

    def close(self):
        self.conn.close()


class Keeper:
    """mcpkeeperd with its own config, data_dir and runtime_dir under tmpdir."""

    def __init__(self, tmpdir, servers=None, refresh=None, extra_config=None, env=None, name="keeper"):
        self.dir = os.path.join(tmpdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.data_dir = os.path.join(self.dir, "data")
        self.runtime_dir = os.path.join(self.dir, "run")
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self.config_path = os.path.join(self.dir, "config.json")
        self.log_path = os.path.join(self.dir, "keeper.log")
        self.socket_path = os.path.join(self.runtime_dir, "control.sock")
        self.servers = dict(servers or {})
        self.refresh = dict(refresh or {})
        self.extra_config = dict(extra_config or {})
        self.env = dict(env or {})
        self.proc = None
        self.terminated_rc = None   # exit status after our last SIGTERM to a running keeper
        self._log_file = None
        self._subs = []
        self.write_config()

    # -- config --
    def config(self):
        # Port 0: keepers of parallel tests never compete for the API port.
        cfg = {"data_dir": self.data_dir, "runtime_dir": self.runtime_dir, "listen": "127.0.0.1:0",
               "mcpServers": self.servers}
        if self.refresh:
            cfg["refresh"] = self.refresh
        cfg.update(self.extra_config)
        return cfg

    def write_config(self, raw=None):
        """Writes the config file (atomically); raw (str) replaces it verbatim."""
        text = raw if raw is not None else json.dumps(self.config(), indent=2)
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.config_path)

    # -- store --
    def store_tool(self, *args, timeout=60.0, check=True):
        r = subprocess.run([STORE_TOOL, self.data_dir] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout, env=child_env())
        if check and r.returncode != 0:
            raise AssertionError("store-tool %s: exit %d: %s" % (args[0], r.returncode, r.stderr.decode(errors="replace")))
        return r

    def put_token(self, name, url, access, refresh, lifetime, token_endpoint):
        """Stores a token record through the real store API (run it before start())."""
        return self.store_tool("put-token", name, url, access, refresh or "", int(lifetime), token_endpoint).stdout.decode().strip()

    def check_token(self, name, url, access):
        """store-tool check-token: (exit status, output)."""
        r = self.store_tool("check-token", name, url, access, check=False)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")

    # -- process --
    def start(self, wait=True, timeout=30.0, args=None, command=None):
        """command: what runs before --config (default: the build's keeper)."""
        self._log_file = open(self.log_path, "ab")
        argv = list(command or [KEEPERD]) + ["--config", self.config_path] + list(args or [])
        if VALGRIND_DIR and not command:
            argv = valgrind_argv() + argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=self._log_file, env=child_env(self.env))
        _register(self.proc)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=30.0):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("mcpkeeperd exited with status %d during start; log:\n%s" %
                                     (self.proc.returncode, tail(self.log())))
            try:
                return self.rpc("status", timeout=5) is not None
            except (OSError, RpcError, WaitTimeout):
                return False
        wait_until(ready, timeout, 0.1, "the keeper to answer status")

    def wait_http(self, timeout=30.0):
        """Until the http child runs and the keeper's descriptors settle (the
        child opens its event subscription right after its hello)."""
        wait_until(lambda: (self.rpc("status", timeout=5).get("http") or {}).get("state") == "running",
                   timeout, 0.1, "the http child")
        last = [None]

        def settled():
            n = self.fd_count()
            same, last[0] = n == last[0], n
            return same
        wait_until(settled, timeout, 0.5, "the keeper's descriptors to settle")

    def assert_alive(self, grace=0.0):
        """Fails (not retried by wait_until) when the keeper process has exited."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=grace) if grace else None
        except subprocess.TimeoutExpired:
            pass
        rc = self.proc.poll()
        if rc is not None:
            how = "killed by signal %d" % -rc if rc < 0 else "exit status %d" % rc
            raise AssertionError("mcpkeeperd (pid %d) is not running: %s" % (self.proc.pid, how))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, timeout=30.0):
        """SIGTERM and wait; returns the exit status."""
        for s in self._subs:
            s.close()
        self._subs = []
        if self.proc and self.proc.poll() is None:
            self.terminated_rc = stop_process(self.proc, timeout)
            rc = self.terminated_rc
        else:
            rc = stop_process(self.proc, timeout) if self.proc else None
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return rc

    def kill(self):
        return self.stop_with(signal.SIGKILL)

    def stop_with(self, sig, timeout=30.0):
        rc = stop_process(self.proc, timeout, sig) if self.proc else None
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return rc

    def log(self):
        return read_text(self.log_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- control socket --
    def connect(self, timeout=10.0):
        return LineConn(self.socket_path, timeout)

    def rpc(self, method, params=None, timeout=10.0):
        """One request on a fresh connection: the result, or raises RpcError."""
        req = {"jsonrpc": "2.0", "id": 1, "method": method}
        if params is not None:
            req["params"] = params
        self.assert_alive()
        try:
            with self.connect(timeout) as c:
                c.send_json(req)
                msg = c.read_json(timeout)
        except OSError:
            self.assert_alive()
            raise
        if msg is None:
            self.assert_alive(0.5)
            raise AssertionError("keeper closed the connection without answering %s" % method)
        if "error" in msg:
            raise _error_of(msg)
        return msg.get("result")

    def status(self):
        return self.rpc("status")

    def server(self, name):
        """This server's entry in status."""
        for s in self.status()["servers"]:
            if s["name"] == name:
                return s
        raise AssertionError("no server %r in status" % name)

    def auth_status(self, name=None):
        res = self.rpc("auth.status", {"server": name} if name else None)
        return res["servers"][0] if name else res["servers"]

    def subscribe(self, timeout=10.0):
        s = Subscription(self.socket_path, timeout)
        self._subs.append(s)
        return s

    def subscribe_when_up(self, timeout=30.0):
        """After start(wait=False): subscribes as soon as the socket accepts.

        The connection waits in the listen backlog with its request already
        sent, so the keeper handles it on its first loop iterations, before
        anything that needs the oauth child (events at start are not missed).
        """
        def attempt():
            if self.proc.poll() is not None:
                raise AssertionError("mcpkeeperd exited with status %d during start; log:\n%s" %
                                     (self.proc.returncode, tail(self.log())))
            try:
                return Subscription(self.socket_path, timeout)
            except (FileNotFoundError, ConnectionRefusedError):
                return None
        s = wait_until(attempt, timeout, 0.005, "the control socket")
        self._subs.append(s)
        return s

    def fd_count(self):
        """Descriptors the keeper holds (from /proc)."""
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))


def proc_status(pid):
    """/proc/PID/status as {field: [words]}."""
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, val = line.partition(":")
            fields[key] = val.split()
    return fields


def children_of(pid, name=None):
    """The keeper's children; with name, only those that already exec'd that
    program (before the exec a child is still a copy of the keeper)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = proc_status(int(entry))
                if int(st["PPid"][0]) == pid and (name is None or st["Name"][0] == name[:15]):
                    kids.append(int(entry))
            except (OSError, KeyError, IndexError):
                pass
    return kids


# --------------------------------------------------------------------------
# Test case base and runner

def remove_store_segments(data_dir):
    """The store's regions are System V shared memory (common/store/store.c):
    a keeper that was killed or died at start leaves them behind (its
    successor would replace them). With nothing running on data_dir any
    more, remove those of its key that no process has attached."""
    if not os.path.exists(os.path.join(data_dir, "store.lock")):
        return
    r = subprocess.run([STORE_TOOL, data_dir, "shm-key"], capture_output=True, text=True, timeout=20)
    try:
        base = int(r.stdout.strip(), 16)
        out = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, timeout=20).stdout
    except (ValueError, OSError):
        return
    for f in (line.split() for line in out.splitlines()):
        if len(f) >= 6 and f[0].startswith("0x") and base <= int(f[0], 16) < base + 32 and f[5] == "0":
            subprocess.run(["ipcrm", "-m", f[1]], capture_output=True, timeout=20)


class KeeperTestCase(unittest.TestCase):
    """A temporary directory per test; peers and keepers stopped at the end."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mcpkeeper-it-")
        self._peers = []
        self._keepers = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        problems = []
        for k in self._keepers:
            try:
                k.stop()
            except Exception as e:  # keep cleaning up
                print("cleanup: keeper: %r" % (e,), file=sys.stderr)
            remove_store_segments(k.data_dir)
            if k.terminated_rc not in (None, 0):
                problems.append("%s: mcpkeeperd exited with status %d on SIGTERM" %
                                (os.path.basename(k.dir), k.terminated_rc))
            valgrind_save(k.log_path)
            report = sanitizer_report(k.log())
            if report:
                problems.append("%s: sanitizer report in the keeper log:\n%s" % (os.path.basename(k.dir), report))
        for p in self._peers:
            try:
                p.stop()
            except Exception as e:
                print("cleanup: peer: %r" % (e,), file=sys.stderr)
            report = sanitizer_report(read_text(p.log_path)) if p.log_path else None
            if report:  # the peer is a test tool: say so, but do not fail the keeper's test
                print("cleanup: sanitizer report in the test peer's log %s:\n%s" % (p.log_path, report),
                      file=sys.stderr)
        if KEEP_TMP:
            print("\nKEEP_TMP: kept %s for %s" % (self.tmp, self.id()), file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if problems:
            raise AssertionError("\n".join(problems))

    def start_peer(self, lifetime=10, grace=0, extra_args=None):
        n = len(self._peers)
        p = Peer(lifetime, grace, extra_args, log_path=os.path.join(self.tmp, "peer%d.log" % n))
        self._peers.append(p)
        return p.start()

    def make_keeper(self, servers=None, refresh=None, extra_config=None, env=None, name=None):
        k = Keeper(self.tmp, servers, refresh, extra_config, env, name or "keeper%d" % len(self._keepers))
        self._keepers.append(k)
        return k

    def dump_logs(self, out=sys.stderr):
        """Called by the runner when this test failed: the tails of every log."""
        for k in getattr(self, "_keepers", []):
            print("---- %s (%s) ----\n%s" % (os.path.basename(k.dir), k.log_path, tail(k.log(), 80)), file=out)
        for p in getattr(self, "_peers", []):
            if p.log_path:
                print("---- peer (%s) ----\n%s" % (p.log_path, tail(read_text(p.log_path), 30)), file=out)


class _Result(unittest.TextTestResult):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.durations = []
        self._t0 = {}
        self.skip_reasons = []   # (case, reason), for the SKIPPED lines

    def startTest(self, test):
        self._t0[test.id()] = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        t0 = self._t0.pop(test.id(), None)
        if t0 is not None:
            self.durations.append((test.id(), time.monotonic() - t0))
            self.stream.write("    (%.1f s)\n" % self.durations[-1][1])
            self.stream.flush()
        super().stopTest(test)

    def _dump(self, test):
        dump = getattr(test, "dump_logs", None)
        if dump:
            try:
                dump(self.stream)
            except Exception as e:
                self.stream.write("dump_logs failed: %r\n" % (e,))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.skip_reasons.append((_case_name(test), reason))

    def addError(self, test, err):
        super().addError(test, err)
        self._dump(test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._dump(test)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._dump(test)


def needs_root(case, why="needs root"):
    """Skips case when not root; with $CI set (CI runs as root) fails it instead."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            raise AssertionError("%s, and CI is set: run the suite as root (no silent skip)" % why)
        case.skipTest(why)


def _case_name(test):
    """Class.method of a test (or what unittest names a failed setUpClass)."""
    tid = test.id()
    return tid[len("__main__."):] if tid.startswith("__main__.") else tid


def print_cases(res, program=None):
    """The counts scripts/test collects from testlog.json (HACKING.md, "No
    silent skips"): a SKIPPED line per skipped case with its reason, then
    CASES PROGRAM passed=N failed=N skipped=N."""
    program = program or os.path.splitext(os.path.basename(sys.argv[0]))[0]
    failed = {_case_name(t) for t, _ in res.failures + res.errors} | \
        {_case_name(t) for t in res.unexpectedSuccesses}
    skips = getattr(res, "skip_reasons", None) or [(_case_name(t), r) for t, r in res.skipped]
    for case, reason in skips:
        print("SKIPPED %s: %s: %s" % (program, case, " ".join(str(reason).split())))
    passed = max(0, res.testsRun - len(failed) - len(skips))
    print("CASES %s passed=%d failed=%d skipped=%d" % (program, passed, len(failed), len(skips)))
    sys.stdout.flush()


def main():
    """unittest's main with durations and the CASES line; exits non-zero on any
    failure or error."""
    for b in (KEEPERD, STORE_TOOL):
        if not os.path.exists(b):
            print("missing binary %s (MCPKEEPER_BUILD_ROOT=%s)" % (b, BUILD_ROOT), file=sys.stderr)
            sys.exit(1)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=_Result)
    try:
        prog = unittest.main(module="__main__", testRunner=runner, exit=False)
    finally:
        _kill_all_live()
    res = prog.result
    if getattr(res, "durations", None):
        print("\ndurations:", file=sys.stderr)
        for tid, d in res.durations:
            print("  %6.1f s  %s" % (d, tid), file=sys.stderr)
    print_cases(res)
    sys.exit(0 if res.wasSuccessful() and res.testsRun > 0 else 1)
