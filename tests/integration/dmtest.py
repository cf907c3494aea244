"""Helpers for doorman's integration tests (stdlib only).

Starts doorman and dm_test_backend on free loopback ports with unique temporary data dirs,
waits for readiness by polling, and gives tests TLS clients, raw HTTP/1.1 reading and
WebSocket framing. Every process started here is killed when its Env closes, at interpreter
exit (atexit) and, through PR_SET_PDEATHSIG, even if this interpreter is SIGKILLed (ctest
timeout). Logs of an Env are printed when a test using it fails.

Binaries come from the environment: DOORMAN_BIN and DM_BACKEND_BIN (set by CMake).
Set DM_KEEP_TMP=1 to keep the temporary directories for debugging.
"""

import atexit
import base64
import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ALPHABET = b"abcdefghijklmnopqrstuvwxyz"

_live_procs = []
# A doorman built with -DDM_SANITIZE reports memory errors on stderr and may still exit 0.
SANITIZER_REPORT = re.compile(r"ERROR: (?:Address|Leak|Memory)Sanitizer|WARNING: ThreadSanitizer|"
                              r"runtime error: ")
_handed_out_ports = set()


# ---- tools and binaries -------------------------------------------------------------------


class SetupError(AssertionError):
    """A missing binary or tool: reported as a test failure, never as a skip."""


def require_tool(name, apt_package):
    path = shutil.which(name)
    if path is None:
        raise SetupError(f"required tool '{name}' not found: apt-get install {apt_package}")
    return path


def pebble_bin():
    """The patched Pebble (DM_PEBBLE_BIN, set by CMake); never the packaged one."""
    path = os.environ.get("DM_PEBBLE_BIN")
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise SetupError(f"DM_PEBBLE_BIN={path or '(unset)'}: no Pebble there; build it with "
                         "'sh tests/pebble/build.sh build/pebble' (tests/run.sh does)")
    return path


def _binary(var, what):
    path = os.environ.get(var)
    if not path:
        raise SetupError(f"{var} is not set: run through ctest, or export {var}=<path to {what}>")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise SetupError(f"{var}={path}: {what} is not built (no executable file there)")
    return path


def doorman_bin():
    return _binary("DOORMAN_BIN", "doorman")


def backend_bin():
    return _binary("DM_BACKEND_BIN", "dm_test_backend")


def source_dir():
    """The repository root (tests/integration/../..)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---- processes ----------------------------------------------------------------------------

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc
    _libc = None


def _child_setup():
    # PR_SET_PDEATHSIG (1): the kernel SIGKILLs the child if this process dies, so a ctest
    # timeout (SIGKILL of python) cannot leave doorman or a backend running.
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


class Proc:
    """A child process whose stdout and stderr go to files in log_dir."""

    def __init__(self, name, argv, log_dir, env=None, cwd=None):
        self.name = name
        self.argv = list(argv)
        self.stdout_path = os.path.join(log_dir, f"{name}.stdout")
        self.stderr_path = os.path.join(log_dir, f"{name}.stderr")
        full_env = dict(os.environ)
        full_env.pop("DOORMAN_DATA_DIR", None)
        if env:
            full_env.update(env)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=full_env,
                cwd=cwd, preexec_fn=_child_setup)
        self.pid = self.popen.pid
        _live_procs.append(self)

    def alive(self):
        return self.popen.poll() is None

    @property
    def returncode(self):
        return self.popen.poll()

    def stdout(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def signal(self, sig):
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout):
        """Returns the exit code, or None if still running after timeout seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=5.0):
        """SIGTERM, then SIGKILL after timeout seconds; returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.popen.kill()
                self.popen.wait()
        if self in _live_procs:
            _live_procs.remove(self)
        return self.popen.returncode

    def describe(self):
        rc = self.returncode
        state = "running" if rc is None else f"exited rc={rc}"
        return f"{self.name} (pid {self.pid}, {state}): {' '.join(self.argv)}"


@atexit.register
def _kill_all():
    for p in list(_live_procs):
        with contextlib.suppress(Exception):
            if p.alive():
                p.popen.kill()
                p.popen.wait(timeout=5)
    _live_procs.clear()


def run(argv, timeout=30, env=None, cwd=None, input_bytes=None):
    """Runs a short command to completion; returns CompletedProcess with text stdout/stderr."""
    full_env = dict(os.environ)
    full_env.pop("DOORMAN_DATA_DIR", None)
    if env:
        full_env.update(env)
    return subprocess.run(argv, input=input_bytes, capture_output=True, timeout=timeout,
                          env=full_env, cwd=cwd, preexec_fn=_child_setup)


def text(b):
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


# ---- ports --------------------------------------------------------------------------------


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (bind to 0); never the same one twice per run."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise SetupError("could not find a free port")


def port_accepts(port, host="127.0.0.1", timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout, interval=0.02, what="condition"):
    """Polls predicate until it returns a true value (returned) or raises on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---- pattern and checksums ----------------------------------------------------------------


def pattern(n, offset=0):
    """The backend's /bytes pattern: byte i is 'a' + (offset + i) % 26."""
    start = offset % 26
    reps = (start + n) // 26 + 1
    return (ALPHABET * reps)[start:start + n]


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


# ---- raw HTTP/1.1 -------------------------------------------------------------------------


class Response:
    """A parsed HTTP/1.x response: status, reason, version, headers [(name, value)], body."""

    def __init__(self, version, status, reason, headers, body, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.raw_head = raw_head
        self.trailers = []

    def header(self, name, default=None):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.reason!r} body={self.body[:80]!r}>"


class IncompleteResponse(AssertionError):
    pass


def _readline(f, limit=1 << 20):
    line = f.readline(limit)
    if not line:
        raise IncompleteResponse("connection closed before a complete response head")
    return line


def read_response(f, method="GET", keep_1xx=False, max_body=1 << 30):
    """Reads one response from a binary file object (sock.makefile('rb')).

    Interim 1xx responses (other than 101) are skipped unless keep_1xx; a chunked body is
    decoded (trailers in .trailers); a body without framing is read until EOF.
    """
    while True:
        raw = _readline(f)
        m = re.match(rb"^(HTTP/\d\.\d) (\d{3})(?: (.*))?\r?\n$", raw)
        if not m:
            raise AssertionError(f"bad status line {raw!r}")
        version, status, reason = m.group(1).decode(), int(m.group(2)), text(m.group(3) or b"")
        headers = []
        head = raw
        while True:
            line = _readline(f)
            head += line
            if line in (b"\r\n", b"\n"):
                break
            name, sep, value = line.partition(b":")
            if not sep:
                raise AssertionError(f"bad header line {line!r}")
            headers.append((text(name), text(value.strip())))
        resp = Response(version, status, reason, headers, b"", head)
        if 100 <= status < 200 and status != 101:
            if keep_1xx:
                return resp
            continue
        break
    if method == "HEAD" or status in (101, 204, 304):
        return resp
    te = resp.header("Transfer-Encoding")
    cl = resp.header("Content-Length")
    if te is not None and te.lower() == "chunked":
        parts = []
        total = 0
        while True:
            size_line = _readline(f)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            data = f.read(size)
            if len(data) != size:
                raise IncompleteResponse(f"chunk truncated: {len(data)}/{size}")
            parts.append(data)
            total += size
            if total > max_body:
                raise AssertionError("body too large")
            if _readline(f) not in (b"\r\n", b"\n"):
                raise AssertionError("missing CRLF after chunk")
        while True:
            line = _readline(f)
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.partition(b":")
            resp.trailers.append((text(name), text(value.strip())))
        resp.body = b"".join(parts)
    elif cl is not None:
        n = int(cl)
        resp.body = f.read(n) if n else b""
        if len(resp.body) != n:
            raise IncompleteResponse(f"body truncated: {len(resp.body)}/{n} bytes")
    else:
        resp.body = f.read()
    return resp


def read_until_eof(sock, timeout=5.0):
    """Reads until the peer closes. Returns (data, closed): closed is False on timeout."""
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), False
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return b"".join(chunks), False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return b"".join(chunks), True
        except ssl.SSLError as e:  # e.g. a TLS alert on close
            if "EOF" in str(e) or "SHUTDOWN" in str(e).upper():
                return b"".join(chunks), True
            raise
        if not data:
            return b"".join(chunks), True
        chunks.append(data)


def status_of(data):
    m = re.match(rb"^HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else None


def request_bytes(method, path, host, headers=(), body=b"", version="HTTP/1.1"):
    head = f"{method} {path} {version}\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    for n, v in headers:
        head += f"{n}: {v}\r\n"
    return head.encode() + b"\r\n" + body


# ---- WebSocket (RFC 6455) -----------------------------------------------------------------


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def ws_frame(opcode, payload, fin=True, mask=True):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, (0x80 if mask else 0) | n])
    elif n <= 0xFFFF:
        head = bytes([b0, (0x80 if mask else 0) | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, (0x80 if mask else 0) | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    rep = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(rep, "big")).to_bytes(n, "big")
    return head + key + masked


def ws_read_frame(f):
    """Returns (fin, opcode, payload, was_masked) of the next frame from a binary file."""
    h = f.read(2)
    if len(h) != 2:
        raise IncompleteResponse("websocket closed mid-frame")
    fin, opcode, masked, n = bool(h[0] & 0x80), h[0] & 0x0F, bool(h[1] & 0x80), h[1] & 0x7F
    if n == 126:
        n = int.from_bytes(f.read(2), "big")
    elif n == 127:
        n = int.from_bytes(f.read(8), "big")
    key = f.read(4) if masked else b""
    payload = f.read(n)
    if len(payload) != n:
        raise IncompleteResponse("websocket payload truncated")
    if masked:
        rep = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(rep, "big")).to_bytes(n, "big")
    return fin, opcode, payload, masked


# ---- backends -----------------------------------------------------------------------------


class Backend:
    def __init__(self, proc, port, name, listen):
        self.proc = proc
        self.port = port
        self.name = name
        self.listen = listen
        self.addr = f"127.0.0.1:{port}"
        self._stats_calls = 0

    def stats(self):
        """GET /stats directly (not through doorman): connections accepted, open, requests
        seen — not counting the connections and requests of these queries themselves."""
        self._stats_calls += 1
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request_bytes("GET", "/stats", "backend", [("Connection", "close")]))
            j = read_response(s.makefile("rb")).json()
        j["connections"] -= self._stats_calls
        j["requests"] -= self._stats_calls
        j["open"] -= 1
        return j


# ---- doorman ------------------------------------------------------------------------------


class Doorman:
    """A running doorman: its process, ports, data dir and clients bound to its local CA."""

    def __init__(self, env, proc, data_dir, https_port, http_port, config_path=None):
        self.env = env
        self.proc = proc
        self.data_dir = data_dir
        self.https_port = https_port
        self.http_port = http_port
        self.config_path = config_path
        self._ca = None

    def ca(self):
        if self._ca is None:
            self._ca = trust(self.data_dir)
        return self._ca

    def ssl_context(self):
        ctx = ssl.create_default_context(cafile=self.ca())
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def connect(self, sni, timeout=10.0, source=None, port=None, verify=True):
        """A TLS connection with SNI sni, verified against the local CA unless verify is
        False (sni None: no SNI and no hostname check)."""
        ctx = self.ssl_context()
        if sni is None or not verify:
            ctx.check_hostname = False
        if not verify:
            ctx.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port or self.https_port), timeout=timeout,
                                       source_address=(source, 0) if source else None)
        try:
            return ctx.wrap_socket(raw, server_hostname=sni)
        except BaseException:
            raw.close()
            raise

    def request(self, host, path, method="GET", headers=(), body=b"", sni=None, timeout=15.0,
                version="HTTP/1.1", verify=True):
        """One request on a fresh TLS connection (Connection: close); returns a Response."""
        with self.connect(sni or host.split(":")[0], timeout=timeout, verify=verify) as s:
            hdrs = list(headers)
            if body and not any(n.lower() in ("content-length", "transfer-encoding")
                                for n, _ in hdrs):
                hdrs.append(("Content-Length", str(len(body))))
            if not any(n.lower() == "connection" for n, _ in hdrs):
                hdrs.append(("Connection", "close"))
            s.sendall(request_bytes(method, path, host, hdrs, body, version))
            return read_response(s.makefile("rb"), method=method)

    def curl(self, host, path, *args, timeout=60, check=True):
        """Runs curl against https://host:port/path resolving host to 127.0.0.1."""
        curl = require_tool("curl", "curl")
        argv = [curl, "-sS", "--max-time", str(timeout), "--cacert", self.ca(),
                "--resolve", f"{host}:{self.https_port}:127.0.0.1", *args,
                f"https://{host}:{self.https_port}{path}"]
        r = run(argv, timeout=timeout + 10)
        if check and r.returncode != 0:
            raise AssertionError(f"curl failed rc={r.returncode}: {text(r.stderr)}\n"
                                 f"argv: {' '.join(argv)}")
        return r

    def access_log_lines(self):
        return self.proc.stderr().splitlines()

    def wait_log(self, predicate, timeout=5.0, what="log line"):
        """Waits for a stderr line satisfying predicate; returns it."""
        def find():
            for line in self.access_log_lines():
                if predicate(line):
                    return line
            return None
        return wait_until(find, timeout, interval=0.05, what=what)


def trust(data_dir, extra_env=None):
    """Runs `doorman trust --data-dir D` and returns the CA root path it prints."""
    r = run([doorman_bin(), "trust", "--data-dir", data_dir], env=extra_env)
    if r.returncode != 0:
        raise AssertionError(f"doorman trust failed rc={r.returncode}: {text(r.stderr)}")
    lines = text(r.stdout).strip().splitlines()
    if len(lines) != 1:
        raise AssertionError(f"doorman trust printed {len(lines)} lines: {text(r.stdout)!r}")
    return lines[0].strip()


def base_config(data_dir, https_port, sites, http_port=0, **overrides):
    """A doorman config with fast timeouts for tests; overrides replace top-level keys."""
    cfg = {
        "data_dir": data_dir,
        "bind": "127.0.0.1",
        "https_port": https_port,
        "http_port": http_port,
        "workers": 1,
        "timeouts": {"handshake": "5s", "header": "5s", "idle": "30s", "body": "30s",
                     "connect": "2s", "response": "30s", "shutdown": "10s"},
        "log": {"level": "info", "format": "text", "access": "stderr", "access_format": "text"},
        "sites": sites,
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


# ---- environment --------------------------------------------------------------------------


class Env:
    """A temporary directory plus every process started for one test class (or test)."""

    def __init__(self, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"dmit-{name}-")
        self.procs = []
        self._n = 0

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def _unique(self, prefix):
        self._n += 1
        return f"{prefix}{self._n}"

    def new_dir(self, prefix="data"):
        d = self.path(self._unique(prefix + "-"))
        os.makedirs(d)
        return d

    def write_json(self, obj, name=None):
        p = self.path(name or self._unique("config-") + ".json")
        with open(p, "w") as f:
            json.dump(obj, f, indent=2)
        return p

    def spawn(self, name, argv, env=None, cwd=None):
        p = Proc(self._unique(name + "-"), argv, self.dir, env=env, cwd=cwd)
        self.procs.append(p)
        return p

    def backend(self, name, listen="127.0.0.1:0", timeout=10.0, args=()):
        """Starts dm_test_backend --name name [args]; waits for its ready line."""
        p = self.spawn(f"backend-{name}", [backend_bin(), "--listen", listen, "--name", name,
                                           *args])

        def ready():
            if not p.alive():
                raise AssertionError(f"backend {name} exited rc={p.returncode}: {p.stderr()}")
            m = re.search(r"^ready (\S+)", p.stdout(), re.M)
            return m.group(1) if m else None
        where = wait_until(ready, timeout, what=f"backend {name} ready line")
        port = int(where) if where.isdigit() else None
        return Backend(p, port, name, listen)

    def doorman_run(self, config, data_dir=None, extra_args=(), wait=True, timeout=20.0,
                    env=None, name="doorman"):
        """Writes config (a dict) and starts `doorman run`; waits until its ports accept."""
        cfg_path = config if isinstance(config, str) else self.write_json(config)
        cfg = config if isinstance(config, dict) else None
        argv = [doorman_bin(), "run", "--config", cfg_path]
        if data_dir:
            argv += ["--data-dir", data_dir]
        argv += list(extra_args)
        dd = data_dir or (cfg or {}).get("data_dir")
        https_port = (cfg or {}).get("https_port")
        http_port = (cfg or {}).get("http_port") or 0
        if dd:
            trust(dd)  # create the CA before run, so run and trust never race on creating it
        p = self.spawn(name, argv, env=env)
        d = Doorman(self, p, dd, https_port, http_port, cfg_path)
        if wait:
            self.wait_ready(d, timeout)
        return d

    def doorman_quick(self, frm, to, https_port=None, http_port=None, data_dir=None,
                      extra_args=(), timeout=20.0):
        """Starts `doorman reverse-proxy --from frm --to to...`."""
        https_port = https_port or free_port()
        http_port = http_port if http_port is not None else free_port()
        data_dir = data_dir or self.new_dir()
        argv = [doorman_bin(), "reverse-proxy", "--from", frm]
        for t in ([to] if isinstance(to, str) else to):
            argv += ["--to", t]
        argv += ["--https-port", str(https_port), "--http-port", str(http_port),
                 "--data-dir", data_dir, "--bind", "127.0.0.1", *extra_args]
        trust(data_dir)
        p = self.spawn("doorman-quick", argv)
        d = Doorman(self, p, data_dir, https_port, http_port)
        self.wait_ready(d, timeout)
        return d

    def wait_ready(self, d, timeout=20.0):
        ports = [p for p in (d.https_port, d.http_port) if p]

        def ready():
            if not d.proc.alive():
                raise AssertionError(f"doorman exited rc={d.proc.returncode} before listening:\n"
                                     f"{d.proc.stderr()}")
            return all(port_accepts(p) for p in ports)
        wait_until(ready, timeout, interval=0.05, what=f"doorman listening on {ports}")

    def stop(self):
        """Stops every process; returns sanitizer reports found in their stderr."""
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.stop(timeout=5)
        problems = []
        for p in self.procs:
            with contextlib.suppress(OSError):
                for line in p.stderr().splitlines():
                    if SANITIZER_REPORT.search(line):
                        problems.append(f"{p.name}: {line.strip()}")
                        break
        return problems

    def cleanup(self):
        if not os.environ.get("DM_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def close(self):
        problems = self.stop()
        self.cleanup()
        return problems

    def dump_logs(self, out=None):
        out = out or sys.stderr
        if not self.procs:
            return
        print(f"\n===== logs of env {self.name} ({self.dir}) =====", file=out)
        for p in self.procs:
            print(f"--- {p.describe()}", file=out)
            for label, path in (("stdout", p.stdout_path), ("stderr", p.stderr_path)):
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                if data:
                    tail = data[-20000:]
                    print(f"[{label}{' (last 20000 bytes)' if len(data) > 20000 else ''}]",
                          file=out)
                    print(text(tail).rstrip(), file=out)
        print(f"===== end of logs of {self.name} =====", file=out)
        out.flush()


class DmTestCase(unittest.TestCase):
    """Base class: a class-wide Env in cls.env (plus per-test envs via self.new_env()). When a
    test fails, the logs of every Env it could see are printed; a sanitizer report in any
    child's stderr fails the test (per-test envs) or the class (cls.env)."""

    env = None

    @classmethod
    def setUpClass(cls):
        cls.env = Env(cls.__name__)
        try:
            cls.setUpEnv()
        except BaseException:
            cls.env.dump_logs()
            cls.env.close()
            raise

    @classmethod
    def setUpEnv(cls):
        pass

    @classmethod
    def tearDownClass(cls):
        if cls.env is None:
            return
        problems = cls.env.stop()
        if problems:
            cls.env.dump_logs()
        cls.env.cleanup()
        if problems:
            raise AssertionError("sanitizer reports:\n" + "\n".join(problems))

    def new_env(self, name=None):
        e = Env(name or self._testMethodName)
        self._envs.append(e)
        self.addCleanup(self._stop_env, e)
        return e

    def _stop_env(self, e):
        problems = e.stop()
        if problems:
            raise AssertionError("sanitizer reports:\n" + "\n".join(problems))

    def run(self, result=None):
        self._envs = []
        before = len(result.failures) + len(result.errors) if result is not None else 0
        try:
            return super().run(result)
        finally:
            failed = result is not None and len(result.failures) + len(result.errors) > before
            if failed:
                for e in [type(self).env, *self._envs]:
                    if e is not None:
                        e.dump_logs()
            for e in self._envs:
                e.close()


def main():
    """unittest.main, but a run that skipped anything or ran nothing fails."""
    prog = unittest.main(exit=False, verbosity=2)
    r = prog.result
    if r.skipped:
        print(f"FAIL: {len(r.skipped)} test(s) skipped; skips are not passes", file=sys.stderr)
    ok = r.wasSuccessful() and not r.skipped and r.testsRun > 0
    _kill_all()
    sys.exit(0 if ok else 1)
