"""The admin API and what operators run against it: every endpoint over the unix socket
(curl --unix-socket), the loopback TCP listener with its bearer token, Prometheus text
parsed line by line, POST /load refusing a bad config with the field's path while the old
one keeps serving, `doorman reload` and `doorman health`, and a reload that adds a site,
removes one and changes a backend under a constant load with zero failed requests."""

import json
import math
import os
import re
import socket
import stat
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from dmtest import text  # noqa: E402

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"\s*(,|$)')


def parse_prometheus(body):
    """Parses text format 0.0.4 strictly: every line is empty, a comment, or
    `name{labels} value`. Returns {(name, frozenset(labels.items())): float}."""
    samples = {}
    types = {}
    for n, line in enumerate(body.splitlines(), 1):
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 2 and parts[1] in ("HELP", "TYPE"):
                if len(parts) < 3 or not METRIC_NAME.match(parts[2]):
                    raise AssertionError(f"line {n}: bad {parts[1]} line {line!r}")
                if parts[1] == "TYPE":
                    if len(parts) != 4 or parts[3] not in ("counter", "gauge", "histogram",
                                                           "summary", "untyped"):
                        raise AssertionError(f"line {n}: bad TYPE {line!r}")
                    types[parts[2]] = parts[3]
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$", line)
        if not m:
            raise AssertionError(f"line {n}: not a sample: {line!r}")
        name, label_text, value = m.group(1), m.group(3), m.group(4)
        labels = {}
        if label_text:
            pos = 0
            while pos < len(label_text):
                lm = LABEL.match(label_text, pos)
                if not lm:
                    raise AssertionError(f"line {n}: bad labels {label_text!r}")
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
        try:
            v = float(value)  # accepts +Inf, -Inf, NaN as Prometheus does
        except ValueError:
            raise AssertionError(f"line {n}: bad value {value!r}") from None
        if math.isnan(v) and value != "NaN":
            raise AssertionError(f"line {n}: bad value {value!r}")
        key = (name, frozenset(labels.items()))
        if key in samples:
            raise AssertionError(f"line {n}: duplicate sample {line!r}")
        samples[key] = v
    # Every sample belongs to a declared family (histogram samples by their base name).
    for name, _ in samples:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in types and base not in types:
            raise AssertionError(f"sample {name} has no TYPE line")
    return samples


def sample(samples, metric, **labels):
    return samples.get((metric, frozenset(labels.items())), 0.0)


def curl_unix(sock, path, *args, method=None, timeout=15):
    argv = [dmtest.require_tool("curl", "curl"), "-sS", "--max-time", str(timeout),
            "--unix-socket", sock, "-o", "-", "-w", "\n%{http_code}"]
    if method:
        argv += ["-X", method]
    argv += [*args, f"http://doorman{path}"]
    r = dmtest.run(argv, timeout=timeout + 10)
    if r.returncode != 0:
        raise AssertionError(f"curl failed rc={r.returncode}: {text(r.stderr)}")
    out = text(r.stdout)
    body, _, code = out.rpartition("\n")
    return int(code), body


class AdminTest(dmtest.DmTestCase):
    @classmethod
    def setUpEnv(cls):
        env = cls.env
        cls.a = env.backend("a")
        cls.b = env.backend("b")
        cls.data_dir = env.new_dir()
        cls.port = dmtest.free_port()
        cls.admin_port = dmtest.free_port()
        cls.token = "s3cret-token-0123456789"
        cls.cfg = dmtest.base_config(cls.data_dir, cls.port, [
            {"hosts": ["a.test"], "to": cls.a.addr}],
            workers=2,
            admin={"listen": f"127.0.0.1:{cls.admin_port}", "token": cls.token})
        cls.cfg_path = env.write_json(cls.cfg)
        cls.d = env.doorman_run(cls.cfg_path, data_dir=cls.data_dir)
        cls.d.https_port = cls.port
        cls.sock = os.path.join(cls.data_dir, "admin.sock")
        dmtest.wait_until(lambda: os.path.exists(cls.sock), 10, what="admin socket")

    def get(self, path, **kw):
        return curl_unix(self.sock, path, **kw)

    def test_socket_is_private(self):
        st = os.stat(self.sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)

    def test_healthz(self):
        self.assertEqual(self.get("/healthz"), (200, "ok\n"))
        r = dmtest.run([dmtest.doorman_bin(), "health", "--data-dir", self.data_dir])
        self.assertEqual(r.returncode, 0, text(r.stderr))
        self.assertEqual(text(r.stdout).strip(), "ok")

    def test_health_fails_without_a_server(self):
        env = self.new_env()
        r = dmtest.run([dmtest.doorman_bin(), "health", "--data-dir", env.new_dir()])
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot reach the admin API", text(r.stderr))

    def test_config_is_redacted(self):
        code, body = self.get("/config")
        self.assertEqual(code, 200, body)
        j = json.loads(body)
        self.assertEqual(j["https_port"], self.port)
        self.assertEqual(j["sites"][0]["hosts"], ["a.test"])
        self.assertEqual(j["admin"]["token"], "<redacted>")
        self.assertNotIn(self.token, body)

    def test_unknown_endpoint_and_wrong_method(self):
        code, body = self.get("/nope")
        self.assertEqual(code, 404)
        self.assertIn("error", json.loads(body))
        code, body = self.get("/config", method="POST")
        self.assertEqual(code, 405)
        self.assertIn("error", json.loads(body))
        code, body = self.get("/load")
        self.assertEqual(code, 405)

    def test_malformed_request_is_refused(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.sock)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        data, closed = dmtest.read_until_eof(s, 10)
        s.close()
        self.assertEqual(dmtest.status_of(data), 400, data)
        self.assertTrue(closed)

    def test_oversized_body_is_refused(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.sock)
        s.sendall(b"POST /load HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
        data, _ = dmtest.read_until_eof(s, 10)
        s.close()
        self.assertEqual(dmtest.status_of(data), 413, data)

    def test_tcp_needs_the_token(self):
        url = f"http://127.0.0.1:{self.admin_port}/healthz"
        curl = dmtest.require_tool("curl", "curl")
        r = dmtest.run([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", url])
        self.assertEqual(text(r.stdout), "401")
        r = dmtest.run([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                        "-H", "Authorization: Bearer wrong-token-0123456789", url])
        self.assertEqual(text(r.stdout), "401")
        r = dmtest.run([curl, "-sS", "-H", f"Authorization: Bearer {self.token}", url])
        self.assertEqual(text(r.stdout), "ok\n")

    def test_certificates_lists_the_local_certificate(self):
        code, body = self.get("/certificates")
        self.assertEqual(code, 200, body)
        certs = json.loads(body)["certificates"]
        mine = [c for c in certs if "a.test" in c["names"]]
        self.assertEqual(len(mine), 1, certs)
        c = mine[0]
        self.assertEqual(c["issuer"], "local")
        self.assertRegex(c["not_after"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertRegex(c["renew_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertGreater(c["not_after_unix"], time.time())
        self.assertFalse(c["expired"])
        self.assertIsNone(c["last_error"])

    def test_metrics_parse_and_move(self):
        code, body = self.get("/metrics")
        self.assertEqual(code, 200, body)
        before = parse_prometheus(body)
        for _ in range(3):
            self.assertEqual(self.d.request("a.test", "/hello").status, 200)
        self.assertEqual(self.d.request("nosuch.test", "/x", sni="a.test").status, 404)
        code, body = self.get("/metrics")
        after = parse_prometheus(body)
        ok = ("doorman_requests_total", dict(site="a.test", code="2xx"))
        self.assertGreaterEqual(sample(after, ok[0], **ok[1]) - sample(before, ok[0], **ok[1]), 3)
        self.assertGreaterEqual(sample(after, "doorman_requests_total", site="_none", code="4xx")
                                - sample(before, "doorman_requests_total", site="_none",
                                         code="4xx"), 1)
        self.assertGreaterEqual(sample(after, "doorman_tls_handshakes_total")
                                - sample(before, "doorman_tls_handshakes_total"), 4)
        self.assertGreater(sample(after, "doorman_sent_bytes_total"),
                           sample(before, "doorman_sent_bytes_total"))
        self.assertGreater(sample(after, "doorman_received_bytes_total"),
                           sample(before, "doorman_received_bytes_total"))
        inf = sample(after, "doorman_request_duration_seconds_bucket", site="a.test", le="+Inf")
        count = sample(after, "doorman_request_duration_seconds_count", site="a.test")
        self.assertEqual(inf, count)
        self.assertGreaterEqual(count, 3)
        self.assertGreater(sample(after, "doorman_certificate_not_after_seconds", name="a.test"),
                           time.time())
        # A handshake for a name nobody serves fails and is counted by reason.
        with self.assertRaises(OSError):
            self.d.connect("unknown.test", verify=False).close()
        body = dmtest.wait_until(
            lambda: (lambda b: b if sample(parse_prometheus(b),
                                           "doorman_tls_handshake_failures_total",
                                           reason="no_certificate") >= 1 else None)(
                self.get("/metrics")[1]), 5, what="handshake failure counted")
        self.assertIn('reason="no_certificate"', body)


class LoadTest(dmtest.DmTestCase):
    """POST /load and `doorman reload` on a doorman of its own per test."""

    def start(self, env, sites, **overrides):
        data_dir = env.new_dir()
        port = dmtest.free_port()
        cfg = dmtest.base_config(data_dir, port, sites, **overrides)
        path = env.write_json(cfg)
        d = env.doorman_run(path, data_dir=data_dir)
        d.https_port = port
        sock = os.path.join(data_dir, "admin.sock")
        dmtest.wait_until(lambda: os.path.exists(sock), 10, what="admin socket")
        return d, cfg, path, sock

    def test_bad_config_is_refused_with_the_path_and_the_old_one_serves(self):
        env = self.new_env()
        a = env.backend("a")
        d, cfg, path, sock = self.start(env, [{"hosts": ["a.test"], "to": a.addr}])
        bad = dict(cfg)
        bad["sites"] = [{"hosts": ["a.test"], "to": a.addr}, {"hosts": ["b.test"], "to": "abc"}]
        bad["timeouts"] = {"idle": 60}
        bad_path = env.write_json(bad)
        code, body = curl_unix(sock, "/load", "--data-binary", f"@{bad_path}", method="POST")
        self.assertEqual(code, 400, body)
        j = json.loads(body)
        self.assertIn('sites[1].to: "abc" is not host:port', j["problems"])
        self.assertTrue(any(p.startswith("timeouts.idle:") for p in j["problems"]), j)
        self.assertIn("unchanged", j["error"])
        self.assertEqual(d.request("a.test", "/hello").body, b"hello from a\n")
        # JSON syntax errors carry line and column.
        code, body = curl_unix(sock, "/load", "--data-binary", '{"sites": [', method="POST")
        self.assertEqual(code, 400)
        self.assertRegex(json.loads(body)["problems"][0], r":1:\d+: ")
        # `doorman reload` prints the same problems and exits 1.
        r = dmtest.run([dmtest.doorman_bin(), "reload", "--config", bad_path,
                        "--data-dir", cfg["data_dir"]])
        self.assertEqual(r.returncode, 1, text(r.stderr))
        self.assertIn('sites[1].to: "abc" is not host:port', text(r.stderr))
        self.assertEqual(d.request("a.test", "/hello").body, b"hello from a\n")
        code, body = curl_unix(sock, "/config")
        self.assertEqual(len(json.loads(body)["sites"]), 1)

    def test_reload_command_with_and_without_a_file(self):
        env = self.new_env()
        a, b = env.backend("a"), env.backend("b")
        d, cfg, path, sock = self.start(env, [{"hosts": ["a.test"], "to": a.addr}])
        new = dict(cfg)
        new["sites"] = [{"hosts": ["a.test"], "to": b.addr}, {"hosts": ["n.test"], "to": a.addr}]
        new_path = env.write_json(new)
        r = dmtest.run([dmtest.doorman_bin(), "reload", "--config", new_path,
                        "--data-dir", cfg["data_dir"]])
        self.assertEqual(r.returncode, 0, text(r.stderr))
        self.assertRegex(text(r.stdout), r"^reloaded: generation \d+")
        self.assertEqual(d.request("a.test", "/hello").body, b"hello from b\n")
        self.assertEqual(d.request("n.test", "/hello").body, b"hello from a\n")
        # Without --config the running doorman re-reads its own file (as SIGHUP).
        r = dmtest.run([dmtest.doorman_bin(), "reload", "--data-dir", cfg["data_dir"]])
        self.assertEqual(r.returncode, 0, text(r.stderr))
        self.assertEqual(d.request("a.test", "/hello").body, b"hello from a\n")
        with self.assertRaises(OSError):  # no site, so no certificate: the handshake fails
            d.request("n.test", "/hello")
        # SIGHUP still works.
        with open(path, "w") as f:
            json.dump(new, f)
        reloads = d.proc.stderr().count("reloaded (generation")
        d.proc.signal(1)
        dmtest.wait_until(lambda: d.proc.stderr().count("reloaded (generation") > reloads, 10,
                          what="SIGHUP reload")
        self.assertEqual(d.request("n.test", "/hello").body, b"hello from a\n")
        self.assertEqual(d.request("a.test", "/hello").body, b"hello from b\n")

    def test_reload_grace_closes_connections_of_older_configs(self):
        env = self.new_env()
        a, b = env.backend("a"), env.backend("b")
        d, cfg, path, sock = self.start(env, [{"hosts": ["a.test"], "to": a.addr}],
                                        timeouts={"reload_grace": "1s"})
        idle = d.connect("a.test")
        idle.sendall(dmtest.request_bytes("GET", "/hello", "a.test"))
        self.assertEqual(dmtest.read_response(idle.makefile("rb")).status, 200)
        busy = d.connect("a.test")
        busy.sendall(dmtest.request_bytes("GET", "/delay?ms=5000", "a.test"))
        new = dict(cfg)
        new["sites"] = [{"hosts": ["a.test"], "to": b.addr}]
        code, body = curl_unix(sock, "/load", "--data-binary", json.dumps(new), method="POST")
        self.assertEqual(code, 200, body)
        start = time.monotonic()
        # Both stay on the old config for the grace period, then are closed.
        data, closed = dmtest.read_until_eof(idle, 4)
        self.assertTrue(closed)
        self.assertEqual(data, b"")
        data, closed = dmtest.read_until_eof(busy, 4)
        self.assertTrue(closed, "the long request outlived the grace period")
        self.assertEqual(data, b"", "the long request was answered, not cut")
        self.assertLess(time.monotonic() - start, 4.0)
        self.assertGreater(time.monotonic() - start, 0.8)
        idle.close()
        busy.close()
        self.assertEqual(d.request("a.test", "/hello").body, b"hello from b\n")
        d.wait_log(lambda l: "reload grace over, closed 2 connections" in l, timeout=5,
                   what="grace log line")

    def test_reload_opens_and_closes_listeners(self):
        env = self.new_env()
        a = env.backend("a")
        http_port = dmtest.free_port()
        d, cfg, path, sock = self.start(env, [{"hosts": ["a.test"], "to": a.addr}],
                                        http_port=http_port, workers=2)
        old_port = d.https_port
        new = dict(cfg)
        new["https_port"] = dmtest.free_port()
        new["http_port"] = 0
        code, body = curl_unix(sock, "/load", "--data-binary", json.dumps(new), method="POST")
        self.assertEqual(code, 200, body)
        d.https_port = new["https_port"]
        self.assertEqual(d.request("a.test", "/hello").status, 200)
        dmtest.wait_until(lambda: not dmtest.port_accepts(old_port), 5, what="old port closed")
        dmtest.wait_until(lambda: not dmtest.port_accepts(http_port), 5, what="http port closed")
        # A port another process holds refuses the reload; the running one stays.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            bad = dict(new)
            bad["https_port"] = taken.getsockname()[1]
            code, body = curl_unix(sock, "/load", "--data-binary", json.dumps(bad),
                                   method="POST")
            self.assertEqual(code, 400, body)
            self.assertIn("https_port: cannot listen on", json.loads(body)["error"])
        self.assertEqual(d.request("a.test", "/hello").status, 200)
        code, body = curl_unix(sock, "/config")
        self.assertEqual(json.loads(body)["https_port"], new["https_port"])

    def test_reload_moves_the_access_log_and_the_admin_listener(self):
        env = self.new_env()
        a = env.backend("a")
        log1, log2 = env.path("access1.log"), env.path("access2.log")
        d, cfg, path, sock = self.start(env, [{"hosts": ["a.test"], "to": a.addr}],
                                        log={"access": log1, "access_format": "text"})
        self.assertEqual(d.request("a.test", "/hello?one").status, 200)
        dmtest.wait_until(lambda: "/hello?one" in open(log1).read(), 5,
                          what="line in the first log")
        # Another file and format, and an admin TCP listener, all by reload.
        token = "reload-token-0123456789abcdef"
        admin_port = dmtest.free_port()
        new = dict(cfg)
        new["log"] = {"access": log2, "access_format": "json"}
        new["admin"] = {"listen": f"127.0.0.1:{admin_port}", "token": token}
        code, body = curl_unix(sock, "/load", "--data-binary", json.dumps(new), method="POST")
        self.assertEqual(code, 200, body)
        self.assertEqual(d.request("a.test", "/hello?two").status, 200)
        lines = dmtest.wait_until(lambda: [l for l in open(log2).read().splitlines()
                                           if "/hello?two" in l], 5, what="line in the second log")
        self.assertEqual(json.loads(lines[0])["path"], "/hello?two")
        self.assertNotIn("/hello?two", open(log1).read())
        curl = dmtest.require_tool("curl", "curl")
        url = f"http://127.0.0.1:{admin_port}/healthz"
        r = dmtest.run([curl, "-sS", "-H", f"Authorization: Bearer {token}", url])
        self.assertEqual(text(r.stdout), "ok\n")
        # A log file that cannot be opened refuses the reload; the old file stays.
        bad = dict(new)
        bad["log"] = {"access": "/nonexistent-dir/access.log"}
        code, body = curl_unix(sock, "/load", "--data-binary", json.dumps(bad), method="POST")
        self.assertEqual(code, 400, body)
        self.assertIn("log.access: cannot open /nonexistent-dir/access.log",
                      json.loads(body)["error"])
        self.assertEqual(d.request("a.test", "/hello?three").status, 200)
        dmtest.wait_until(lambda: "/hello?three" in open(log2).read(), 5, what="still the second log")
        # Access log off and the TCP listener gone.
        new2 = dict(cfg)
        new2["log"] = {"access": "off"}
        code, body = curl_unix(sock, "/load", "--data-binary", json.dumps(new2), method="POST")
        self.assertEqual(code, 200, body)
        self.assertEqual(d.request("a.test", "/hello?four").status, 200)
        dmtest.wait_until(lambda: not dmtest.port_accepts(admin_port), 5,
                          what="admin TCP listener closed")
        time.sleep(0.3)
        self.assertNotIn("/hello?four", open(log2).read())
        self.assertNotIn("/hello?four", open(log1).read())

    def test_admin_validation_names_the_field(self):
        env = self.new_env()
        for admin, needle in (
                ({"listen": "0.0.0.0:2019", "token": "x" * 20}, "admin.listen: "),
                ({"listen": "127.0.0.1:2019"}, "admin.token: required"),
                ({"listen": "127.0.0.1:2019", "token": "short"}, "admin.token: must be"),
                ({"enabled": "yes"}, "admin.enabled: expected a boolean"),
                ({"listne": "127.0.0.1:1"}, "admin.listne: unknown key")):
            with self.subTest(admin=admin):
                cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(), [
                    {"hosts": ["a.test"], "to": "127.0.0.1:9"}], admin=admin)
                r = dmtest.run([dmtest.doorman_bin(), "validate", "--config",
                                env.write_json(cfg)])
                self.assertEqual(r.returncode, 1)
                self.assertIn(needle, text(r.stderr))
                self.assertNotIn("x" * 20, text(r.stderr))

    def test_admin_disabled_and_socket_removed_at_exit(self):
        env = self.new_env()
        a = env.backend("a")
        d, cfg, path, sock = self.start(env, [{"hosts": ["a.test"], "to": a.addr}])
        self.assertEqual(d.proc.stop(timeout=10), 0)
        self.assertFalse(os.path.exists(sock), "admin.sock left behind")
        data_dir = env.new_dir()
        cfg = dmtest.base_config(data_dir, dmtest.free_port(), [
            {"hosts": ["a.test"], "to": a.addr}], admin={"enabled": False})
        d = env.doorman_run(cfg)
        self.assertEqual(d.request("a.test", "/hello").status, 200)
        self.assertFalse(os.path.exists(os.path.join(data_dir, "admin.sock")))

    def test_stale_socket_file_is_replaced(self):
        env = self.new_env()
        a = env.backend("a")
        data_dir = env.new_dir()
        stale = os.path.join(data_dir, "admin.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(stale)
        s.close()  # a socket file nobody listens on, as after a crash
        cfg = dmtest.base_config(data_dir, dmtest.free_port(), [
            {"hosts": ["a.test"], "to": a.addr}])
        env.doorman_run(cfg)
        dmtest.wait_until(lambda: curl_unix(stale, "/healthz")[0] == 200, 10,
                          what="admin on the replaced socket")

    def test_reload_under_load_has_zero_failures(self):
        env = self.new_env()
        a, b, c = env.backend("a"), env.backend("b"), env.backend("c")
        d, cfg, path, sock = self.start(env, [
            {"hosts": ["a.test"], "to": a.addr}, {"hosts": ["old.test"], "to": c.addr}],
            workers=2)
        stop = threading.Event()
        results = {"ok": 0, "fail": []}
        lock = threading.Lock()

        def client(i):
            s = f = None
            n = 0
            while not stop.is_set():
                try:
                    if s is None:
                        s = d.connect("a.test", timeout=10)
                        f = s.makefile("rb")
                    n += 1
                    close = n % 5 == 0  # reconnect often: new connections see new configs
                    hdrs = [("Connection", "close")] if close else []
                    s.sendall(dmtest.request_bytes("GET", "/hello", "a.test", hdrs))
                    r = dmtest.read_response(f)
                    if r.status != 200 or r.body not in (b"hello from a\n", b"hello from b\n"):
                        raise AssertionError(f"{r.status} {r.body!r}")
                    with lock:
                        results["ok"] += 1
                    if close:
                        s.close()
                        s = None
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    with lock:
                        results["fail"].append(f"client {i}: {e!r}")
                    if s is not None:
                        s.close()
                    s = None
            if s is not None:
                s.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            steps = [
                # add a site
                [{"hosts": ["a.test"], "to": a.addr}, {"hosts": ["old.test"], "to": c.addr},
                 {"hosts": ["new.test"], "to": c.addr}],
                # remove one
                [{"hosts": ["a.test"], "to": a.addr}, {"hosts": ["new.test"], "to": c.addr}],
                # change a backend
                [{"hosts": ["a.test"], "to": b.addr}, {"hosts": ["new.test"], "to": c.addr}],
            ]
            for sites in steps:
                new = dict(cfg)
                new["sites"] = sites
                r = dmtest.run([dmtest.doorman_bin(), "reload", "--config", env.write_json(new),
                                "--data-dir", cfg["data_dir"]])
                self.assertEqual(r.returncode, 0, text(r.stderr))
                time.sleep(0.8)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertEqual(results["fail"], [], f"{len(results['fail'])} failed, "
                                              f"{results['ok']} ok")
        print(f"reload under load: {results['ok']} requests, 0 failed", file=sys.stderr)
        self.assertGreater(results["ok"], 50)
        self.assertEqual(d.request("a.test", "/hello").body, b"hello from b\n")
        self.assertEqual(d.request("new.test", "/hello").body, b"hello from c\n")
        with self.assertRaises(OSError):  # removed: no certificate any more
            d.request("old.test", "/hello")


if __name__ == "__main__":
    dmtest.main()
