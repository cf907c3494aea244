"""Running doorman for real: SIGUSR1 reopens the access log for logrotate, the common log
format, per-IP request rates answered with 429 and Retry-After, per-IP and process-wide
connection limits refusing cleanly, and the container entrypoint configured only by
DOORMAN_* environment variables (run outside a container: there is no Docker engine here)."""

import json
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from dmtest import text  # noqa: E402

ENTRYPOINT = os.path.join(dmtest.source_dir(), "examples", "docker", "entrypoint.sh")


def admin_metrics(data_dir):
    curl = dmtest.require_tool("curl", "curl")
    r = dmtest.run([curl, "-sS", "--unix-socket", os.path.join(data_dir, "admin.sock"),
                    "http://doorman/metrics"])
    return text(r.stdout)


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


class OpsTest(dmtest.DmTestCase):
    def start(self, env, backend, **overrides):
        data_dir = env.new_dir()
        port = dmtest.free_port()
        cfg = dmtest.base_config(data_dir, port, [{"hosts": ["a.test"], "to": backend.addr}],
                                 **overrides)
        return env.doorman_run(cfg)

    def test_sigusr1_reopens_the_access_log(self):
        env = self.new_env()
        a = env.backend("a")
        log = env.path("access.log")
        d = self.start(env, a, log={"access": log, "access_format": "json"})
        self.assertEqual(d.request("a.test", "/hello?before").status, 200)
        dmtest.wait_until(lambda: any("/hello?before" in l for l in read_lines(log)), 5,
                          what="first access line")
        os.rename(log, log + ".1")  # what logrotate does
        self.assertEqual(d.request("a.test", "/hello?rotated").status, 200)
        dmtest.wait_until(lambda: any("/hello?rotated" in l for l in read_lines(log + ".1")), 5,
                          what="line in the renamed file before SIGUSR1")
        d.proc.signal(10)  # SIGUSR1
        d.wait_log(lambda l: "access log reopened" in l, timeout=10, what="reopen")
        self.assertEqual(d.request("a.test", "/hello?after").status, 200)
        lines = dmtest.wait_until(lambda: read_lines(log), 5, what="new access log")
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(json.loads(lines[0])["path"], "/hello?after")
        self.assertFalse(any("/hello?after" in l for l in read_lines(log + ".1")))
        self.assertTrue(d.proc.alive())

    def test_signals_as_soon_as_the_port_accepts(self):
        # The handlers are installed before the listeners: a SIGHUP or SIGUSR1 sent the
        # moment the port accepts must not meet the default action (terminate).
        env = self.new_env()
        a = env.backend("a")
        for sig in (signal.SIGHUP, signal.SIGUSR1):
            with self.subTest(sig=sig.name):
                data_dir = env.new_dir()
                port = dmtest.free_port()
                cfg = dmtest.base_config(data_dir, port, [{"hosts": ["a.test"], "to": a.addr}])
                d = env.doorman_run(cfg, wait=False)
                dmtest.wait_until(lambda: dmtest.port_accepts(port, timeout=0.05) or
                                  not d.proc.alive(), 20, interval=0.001, what="port accepts")
                d.proc.signal(sig)
                time.sleep(0.5)
                self.assertTrue(d.proc.alive(), f"{sig.name} right after start killed doorman")
                d.https_port = port
                self.assertEqual(d.request("a.test", "/hello").status, 200)

    def test_common_log_format(self):
        env = self.new_env()
        a = env.backend("a")
        log = env.path("access.log")
        d = self.start(env, a, log={"access": log, "access_format": "common"})
        self.assertEqual(d.request("a.test", "/hello").status, 200)
        lines = dmtest.wait_until(lambda: read_lines(log), 5, what="access line")
        self.assertRegex(lines[0], r'^127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d '
                                   r'\+0000\] "GET /hello HTTP/1\.1" 200 \d+$')

    def test_request_rate_gets_429_with_retry_after(self):
        env = self.new_env()
        a = env.backend("a")
        d = self.start(env, a, limits={"per_ip_rate": 2, "per_ip_burst": 3})
        s = d.connect("a.test")
        f = s.makefile("rb")
        statuses = []
        last = None
        for _ in range(5):
            s.sendall(dmtest.request_bytes("GET", "/hello", "a.test"))
            last = dmtest.read_response(f)
            statuses.append(last.status)
            if last.status == 429:
                break
        self.assertEqual(statuses[:3], [200, 200, 200], statuses)
        self.assertEqual(statuses[-1], 429, statuses)
        self.assertGreaterEqual(int(last.header("Retry-After")), 1)
        self.assertEqual(last.body, b"429 Too Many Requests\n")
        # The connection stays usable: a token is back after half a second at 2/s.
        time.sleep(0.6)
        s.sendall(dmtest.request_bytes("GET", "/hello", "a.test", [("Connection", "close")]))
        self.assertEqual(dmtest.read_response(f).status, 200)
        s.close()
        self.assertIn('doorman_refused_total{reason="rate_limited"} 1',
                      admin_metrics(d.data_dir))

    def assert_refused(self, d):
        """A connection over a limit is accepted and closed at once: no handshake."""
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
            s = d.connect("a.test", timeout=5)
            # Some stacks finish the client side before seeing the close: then the
            # first read must show it.
            s.sendall(dmtest.request_bytes("GET", "/hello", "a.test"))
            data, closed = dmtest.read_until_eof(s, 5)
            s.close()
            if closed and not data:
                raise ConnectionError("closed")

    def test_per_ip_connection_limit(self):
        env = self.new_env()
        a = env.backend("a")
        d = self.start(env, a, limits={"per_ip_connections": 2})
        held = [d.connect("a.test"), d.connect("a.test")]
        self.assert_refused(d)
        self.assertIn('doorman_refused_total{reason="per_ip_connections"} 1',
                      admin_metrics(d.data_dir))
        held.pop().close()
        # Once the server has seen the close, there is room again.
        dmtest.wait_until(lambda: d.request("a.test", "/hello").status == 200, 5,
                          what="a connection after one closed")
        for s in held:
            s.close()
        self.assertTrue(d.proc.alive())

    def test_max_connections_refuses_cleanly(self):
        env = self.new_env()
        a = env.backend("a")
        d = self.start(env, a, limits={"max_connections": 2})
        held = [d.connect("a.test"), d.connect("a.test")]
        self.assert_refused(d)
        self.assertIn('doorman_refused_total{reason="max_connections"} 1',
                      admin_metrics(d.data_dir))
        held.pop().close()
        dmtest.wait_until(lambda: d.request("a.test", "/hello").status == 200, 5,
                          what="a connection after one closed")
        # The held one still works: refusing others never touched it.
        s = held.pop()
        s.sendall(dmtest.request_bytes("GET", "/hello", "a.test", [("Connection", "close")]))
        self.assertEqual(dmtest.read_response(s.makefile("rb")).status, 200)
        s.close()

    def test_entrypoint_with_environment_only(self):
        env = self.new_env()
        a, b = env.backend("a"), env.backend("b")
        data_dir = env.new_dir()
        https_port, http_port = dmtest.free_port(), dmtest.free_port()
        variables = {"DOORMAN_BIN": dmtest.doorman_bin(),
                     "DOORMAN_FROM": "app.test",
                     "DOORMAN_TO": f"{a.addr},{b.addr}",
                     "DOORMAN_HTTPS_PORT": str(https_port),
                     "DOORMAN_HTTP_PORT": str(http_port),
                     "DOORMAN_BIND": "127.0.0.1",
                     "DOORMAN_DATA_DIR": data_dir}
        dmtest.trust(data_dir)
        p = env.spawn("entrypoint", ["sh", ENTRYPOINT], env=variables)
        d = dmtest.Doorman(env, p, data_dir, https_port, http_port)
        env.wait_ready(d)
        seen = {d.request("app.test", "/hello").body for _ in range(4)}
        self.assertEqual(seen, {b"hello from a\n", b"hello from b\n"})
        # Plain HTTP redirects to the HTTPS port, as reverse-proxy does.
        with socket.create_connection(("127.0.0.1", http_port), timeout=5) as s:
            s.sendall(dmtest.request_bytes("GET", "/x", "app.test", [("Connection", "close")]))
            r = dmtest.read_response(s.makefile("rb"))
        self.assertEqual(r.status, 308)
        self.assertEqual(r.header("Location"), f"https://app.test:{https_port}/x")
        # The health check of the Dockerfile, through the same entrypoint.
        r = dmtest.run(["sh", ENTRYPOINT, "health"], env=variables)
        self.assertEqual((r.returncode, text(r.stdout).strip()), (0, "ok"), text(r.stderr))
        # exec: the entrypoint's pid is doorman's, so SIGTERM drains and exits 0.
        self.assertEqual(p.stop(timeout=15), 0)
        self.assertFalse(os.path.exists(os.path.join(data_dir, "admin.sock")))

    def test_binary_upgrade_under_load_loses_nothing(self):
        env = self.new_env()
        a = env.backend("a")
        d = self.start(env, a, workers=2)
        sock = os.path.join(d.data_dir, "admin.sock")
        stop = threading.Event()
        res = {"ok": 0, "retried": 0, "fail": []}
        lock = threading.Lock()

        def once(s, f):
            s.sendall(dmtest.request_bytes("GET", "/hello", "a.test"))
            r = dmtest.read_response(f)
            if r.status != 200 or r.body != b"hello from a\n":
                raise AssertionError(f"{r.status} {r.body!r}")

        def client(i):
            s = f = None
            n = 0
            while not stop.is_set():
                reused = s is not None
                n += 1
                try:
                    if s is None:
                        s = d.connect("a.test", timeout=10)
                        f = s.makefile("rb")
                    try:
                        once(s, f)
                        if n % 4 == 0:  # many new connections: the handover's accept path
                            s.close()
                            s = None
                    except (dmtest.IncompleteResponse, ConnectionError, ssl.SSLError) as e:
                        if not reused:
                            raise
                        # A keep-alive connection the old process closed while draining,
                        # before any byte of an answer: an idle GET is retried on a new
                        # connection, as HTTP clients do (RFC 9112 section 9.3.1).
                        s.close()
                        s = d.connect("a.test", timeout=10)
                        f = s.makefile("rb")
                        once(s, f)
                        with lock:
                            res["retried"] += 1
                        del e
                    with lock:
                        res["ok"] += 1
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    with lock:
                        res["fail"].append(f"client {i}: {e!r}")
                    if s is not None:
                        s.close()
                    s = None
            if s is not None:
                s.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        new_pid = None
        try:
            time.sleep(0.5)
            r = dmtest.run([dmtest.doorman_bin(), "upgrade", "--data-dir", d.data_dir])
            self.assertEqual(r.returncode, 0, text(r.stderr))  # POST /upgrade, as SIGUSR2
            line = d.wait_log(lambda l: "new process pid" in l and "ready" in l, timeout=20,
                              what="new process ready")
            new_pid = int(re.search(r"new process pid (\d+)", line).group(1))
            self.addCleanup(self.kill_pid, new_pid)
            self.assertEqual(d.proc.wait(20), 0, "the old process did not drain and exit")
            time.sleep(1.0)  # the new process alone
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        print(f"upgrade under load: {res['ok']} requests, {res['retried']} retried idle "
              f"keep-alive, {len(res['fail'])} failed", file=sys.stderr)
        self.assertEqual(res["fail"], [])
        self.assertGreater(res["ok"], 50)
        self.assertNotEqual(new_pid, d.proc.pid)
        self.assertTrue(os.path.exists(f"/proc/{new_pid}"))
        self.assertEqual(d.request("a.test", "/hello").status, 200)
        r = dmtest.run([dmtest.doorman_bin(), "health", "--data-dir", d.data_dir])
        self.assertEqual(r.returncode, 0, text(r.stderr))
        # The new process owns the admin socket and removes it when it stops.
        self.kill_pid(new_pid)
        self.assertFalse(os.path.exists(sock))

    def test_systemd_notify_ready_reload_upgrade_stop(self):
        # The sd_notify protocol as systemd's Type=notify + NotifyAccess=all unit sees it:
        # a datagram socket in NOTIFY_SOCKET receives READY with the main PID, RELOADING
        # then READY around a reload, the upgraded process's MAINPID (so the old one's
        # exit is not the end of the service), and STOPPING only from a real stop.
        env = self.new_env()
        a = env.backend("a")
        path = env.path("notify.sock")
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(path)
        self.addCleanup(rx.close)
        rx.settimeout(20)
        data_dir = env.new_dir()
        port = dmtest.free_port()
        cfg = dmtest.base_config(data_dir, port, [{"hosts": ["a.test"], "to": a.addr}])
        d = env.doorman_run(cfg, env={"NOTIFY_SOCKET": path})

        def recv():
            return rx.recv(4096).decode()

        self.assertEqual(recv(), f"MAINPID={d.proc.pid}\nREADY=1")
        d.proc.signal(signal.SIGHUP)
        self.assertRegex(recv(), r"^RELOADING=1\nMONOTONIC_USEC=\d+$")
        self.assertEqual(recv(), f"MAINPID={d.proc.pid}\nREADY=1")
        d.proc.signal(signal.SIGUSR2)
        m = re.fullmatch(r"MAINPID=(\d+)\nREADY=1", recv())
        self.assertIsNotNone(m)
        new_pid = int(m.group(1))
        self.addCleanup(self.kill_pid, new_pid)
        self.assertNotEqual(new_pid, d.proc.pid)
        self.assertEqual(d.proc.wait(20), 0, "the old process did not drain and exit")
        rx.settimeout(0.5)
        with self.assertRaises(socket.timeout):  # no STOPPING=1 from the old process
            print("unexpected notification: " + recv(), file=sys.stderr)
        self.assertEqual(d.request("a.test", "/hello").status, 200)
        rx.settimeout(20)
        os.kill(new_pid, signal.SIGTERM)
        self.assertEqual(recv(), "STOPPING=1")

    def kill_pid(self, pid):
        """Stops a process this test did not start directly (the upgraded doorman)."""
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def gone():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().split(") ")[1][0] in "XZ"
            except (FileNotFoundError, ProcessLookupError):
                return True
        try:
            dmtest.wait_until(gone, 15, interval=0.05, what=f"pid {pid} exit")
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            raise

    def test_failed_upgrade_keeps_the_old_process(self):
        env = self.new_env()
        a = env.backend("a")
        d = self.start(env, a)
        # The new process reads the same config; make it invalid so it exits at once.
        with open(d.config_path) as f:
            cfg = json.load(f)
        cfg["sites"][0]["to"] = "abc"
        with open(d.config_path, "w") as f:
            json.dump(cfg, f)
        d.proc.signal(signal.SIGUSR2)
        d.wait_log(lambda l: "did not start serving" in l, timeout=20, what="failed upgrade")
        self.assertTrue(d.proc.alive())
        self.assertEqual(d.request("a.test", "/hello").status, 200)
        r = dmtest.run([dmtest.doorman_bin(), "health", "--data-dir", d.data_dir])
        self.assertEqual(r.returncode, 0, text(r.stderr))

    def test_entrypoint_without_a_site_explains(self):
        env = self.new_env()
        r = dmtest.run(["sh", ENTRYPOINT], env={"DOORMAN_BIN": dmtest.doorman_bin(),
                                                "DOORMAN_FROM": "app.test",
                                                "DOORMAN_DATA_DIR": env.new_dir()})
        self.assertEqual(r.returncode, 2)
        self.assertIn("DOORMAN_TO", text(r.stderr))
        # A bad variable is reported by name, nothing starts.
        r = dmtest.run([dmtest.doorman_bin(), "run"],
                       env={"DOORMAN_FROM": "app.test", "DOORMAN_TO": "127.0.0.1:9",
                            "DOORMAN_HTTPS_PORT": "https", "DOORMAN_DATA_DIR": env.new_dir()})
        self.assertEqual(r.returncode, 2)
        self.assertIn("DOORMAN_HTTPS_PORT", text(r.stderr))


if __name__ == "__main__":
    dmtest.main()
