"""Several backends per site: every selection policy measured against three real test
backends (round robin, weights, least connections with a slow backend, client-IP hash from
different loopback source addresses, cookie stickiness, random of two), a backend killed
under load without a client error, active health checks taking it out and bringing it back,
every backend down answered 503 at once, max_connections with its queue and timeout,
passive marking after connect failures, GET /upstreams and the doorman_backend_* metrics,
and `doorman reverse-proxy` with several --to."""

import collections
import json
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
import test_admin  # noqa: E402  (parse_prometheus, curl_unix)
from dmtest import read_response, request_bytes  # noqa: E402


def get(d, host, path="/hello", source=None, headers=(), timeout=10.0):
    """One GET on a fresh TLS connection (optionally from a given source address)."""
    with d.connect(host, timeout=timeout, source=source) as s:
        s.sendall(request_bytes("GET", path, host, [*headers, ("Connection", "close")]))
        return read_response(s.makefile("rb"))


def dead_addr():
    """A loopback address nobody listens on (connect refused)."""
    return f"127.0.0.1:{dmtest.free_port()}"


class UpstreamsTest(dmtest.DmTestCase):
    @classmethod
    def setUpEnv(cls):
        env = cls.env
        cls.b = [env.backend(n) for n in ("b1", "b2", "b3")]
        cls.slow = env.backend("slow", args=("--delay", "400"))
        cls.fast = env.backend("fast")
        cls.qslow = env.backend("qslow", args=("--delay", "1000"))
        cls.dead = [dead_addr(), dead_addr()]
        addrs = [b.addr for b in cls.b]
        cls.data_dir = env.new_dir()
        site = lambda host, to, **up: {"hosts": [host], "to": to, "upstream": up}  # noqa: E731
        cfg = dmtest.base_config(cls.data_dir, dmtest.free_port(), [
            site("rr.test", addrs),
            site("w.test", [{"address": addrs[0], "weight": 3}, addrs[1], addrs[2]]),
            site("lc.test", [cls.slow.addr, cls.fast.addr], policy="least_conn"),
            site("ip.test", addrs, policy="ip_hash"),
            site("ck.test", addrs, policy="cookie", cookie="sticky"),
            site("r2.test", addrs, policy="random_two"),
            site("down.test", cls.dead,
                 health_check={"path": "/hello", "interval": "200ms", "timeout": "100ms",
                               "fails": 1}),
            site("q.test", [{"address": cls.qslow.addr, "max_connections": 1}],
                 queue_timeout="1500ms"),
            site("retry.test", [cls.dead[1], addrs[1]], passive={"fails": 0}),
            site("close.test", [addrs[0], addrs[2]], passive={"fails": 0}),
            site("pas.test", [addrs[0], cls.dead[0]],
                 passive={"fails": 2, "window": "10s", "down_for": "30s"}),
        ])
        cls.d = env.doorman_run(cfg)
        cls.sock = os.path.join(cls.data_dir, "admin.sock")
        dmtest.wait_until(lambda: os.path.exists(cls.sock), 10, what="admin socket")

    def names(self, host, n, **kw):
        out = []
        for _ in range(n):
            r = get(self.d, host, **kw)
            self.assertEqual(r.status, 200, r.body)
            out.append(r.header("X-Backend"))
        return out

    def upstreams(self):
        code, body = test_admin.curl_unix(self.sock, "/upstreams")
        self.assertEqual(code, 200, body)
        return {tuple(s["hosts"]): s for s in json.loads(body)}

    def test_round_robin_is_even(self):
        c = collections.Counter(self.names("rr.test", 30))
        self.assertEqual(c, {"b1": 10, "b2": 10, "b3": 10})

    def test_weights_3_1_1(self):
        c = collections.Counter(self.names("w.test", 50))
        self.assertEqual(c, {"b1": 30, "b2": 10, "b3": 10})

    def test_least_conn_prefers_the_idle_backend(self):
        results = []

        def client():
            results.extend(self.names("lc.test", 10))
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        c = collections.Counter(results)
        self.assertEqual(sum(c.values()), 30)
        # Round robin would send 15 to the slow one; least_conn sends it a request only
        # while it has no more in flight than the fast one.
        self.assertLess(c["slow"] * 2, c["fast"], c)

    def test_ip_hash_sticks_per_client_ip(self):
        chosen = {}
        for i in range(2, 12):
            src = f"127.0.0.{i}"
            names = set(self.names("ip.test", 4, source=src))
            self.assertEqual(len(names), 1, f"{src} moved between {names}")
            chosen[src] = names.pop()
        self.assertGreaterEqual(len(set(chosen.values())), 2, chosen)

    def test_cookie_stickiness(self):
        r = get(self.d, "ck.test")
        self.assertEqual(r.status, 200)
        sc = r.header("Set-Cookie")
        self.assertIsNotNone(sc, "no Set-Cookie from the cookie policy")
        m = re.match(r"^sticky=([0-9a-f]{16}); Path=/; HttpOnly; Secure$", sc)
        self.assertIsNotNone(m, sc)
        self.assertNotIn("127.0.0.1", sc)
        first = r.header("X-Backend")
        for _ in range(10):
            r = get(self.d, "ck.test", headers=[("Cookie", f"a=1; sticky={m.group(1)}")])
            self.assertEqual(r.header("X-Backend"), first)
            self.assertIsNone(r.header("Set-Cookie"), "a valid cookie is set again")
        # Without the cookie, requests spread (round robin) and each gets a cookie.
        seen = set(self.names("ck.test", 6))
        self.assertEqual(seen, {"b1", "b2", "b3"})
        # A cookie naming no backend is replaced.
        r = get(self.d, "ck.test", headers=[("Cookie", "sticky=0000000000000000")])
        self.assertEqual(r.status, 200)
        self.assertIsNotNone(r.header("Set-Cookie"))

    def test_cookie_over_http2(self):
        r = self.d.curl("ck.test", "/hello", "--http2", "-D", "-")
        out = dmtest.text(r.stdout)
        self.assertRegex(out, r"^HTTP/2 200")
        self.assertRegex(out, r"(?im)^set-cookie: sticky=[0-9a-f]{16}; Path=/; HttpOnly; Secure")

    def test_retry_over_http2(self):
        # Streams go through the same request path: a refused backend is skipped.
        for _ in range(4):
            r = self.d.curl("retry.test", "/hello", "--http2", "-D", "-")
            out = dmtest.text(r.stdout)
            self.assertRegex(out, r"^HTTP/2 200")
            self.assertRegex(out, r"(?im)^x-backend: b2")

    def test_random_two_covers_all(self):
        c = collections.Counter(self.names("r2.test", 60))
        self.assertEqual(set(c), {"b1", "b2", "b3"}, c)

    def test_all_backends_down_is_503_fast(self):
        dmtest.wait_until(lambda: not any(b["healthy"] for b in
                                          self.upstreams()[("down.test",)]["backends"]),
                          10, what="down.test backends marked down")
        with self.d.connect("down.test") as s:
            t0 = time.monotonic()
            s.sendall(request_bytes("GET", "/", "down.test", [("Connection", "close")]))
            r = read_response(s.makefile("rb"))
            elapsed = time.monotonic() - t0
        self.assertEqual(r.status, 503)
        self.assertIn(b"no healthy backend", r.body)
        self.assertLess(elapsed, 0.1)
        self.d.wait_log(lambda line: "every backend of the site is down" in line,
                        what="503 log line")
        ups = self.upstreams()[("down.test",)]
        for b in ups["backends"]:
            self.assertIn("connect refused", b["reason"])
            self.assertEqual(b["last_check"]["status"], 0)

    def test_queue_waits_then_times_out(self):
        out = {}

        def one(i):
            t0 = time.monotonic()
            r = get(self.d, "q.test", timeout=20)
            out[i] = (r.status, time.monotonic() - t0, r.header("Retry-After"))
        threads = []
        for i in range(3):
            threads.append(threading.Thread(target=one, args=(i,)))
            threads[-1].start()
            time.sleep(0.15)  # in this order
        for t in threads:
            t.join()
        self.assertEqual(out[0][0], 200, out)
        self.assertEqual(out[1][0], 200, out)  # waited for the first one's slot
        self.assertGreater(out[1][1], 1.7, out)
        self.assertEqual(out[2][0], 503, out)  # queue_timeout 1.5 s
        self.assertGreater(out[2][1], 1.3, out)
        self.assertLess(out[2][1], 1.9, out)
        self.assertEqual(out[2][2], "1")

    def test_queue_over_http2(self):
        # Three streams of one HTTP/2 connection: one runs, one waits its turn, one gives up.
        url = f"https://q.test:{self.d.https_port}/hello"
        r = dmtest.run([dmtest.require_tool("curl", "curl"), "-sS", "--http2", "--cacert",
                        self.d.ca(), "--resolve", f"q.test:{self.d.https_port}:127.0.0.1",
                        "--parallel", "--parallel-max", "3",
                        "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                        "-w", "%{http_code} %{http_version} %{num_connects}\n", url, url, url],
                       timeout=30)
        lines = dmtest.text(r.stdout).split("\n")[:3]
        codes = sorted(line.split()[0] + " " + line.split()[1] for line in lines)
        self.assertEqual(codes, ["200 2", "200 2", "503 2"], dmtest.text(r.stderr))
        # One connection carried the three streams (the others reused it).
        self.assertEqual(sorted(int(line.split()[2]) for line in lines), [0, 0, 1], lines)

    def test_queued_client_that_leaves_is_removed(self):
        out = {}

        def one(i):
            t0 = time.monotonic()
            r = get(self.d, "q.test", timeout=20)
            out[i] = (r.status, time.monotonic() - t0)
        first = threading.Thread(target=one, args=(0,))
        first.start()
        time.sleep(0.15)
        with self.d.connect("q.test") as s:  # queued, then gone
            s.sendall(request_bytes("GET", "/hello", "q.test", [("Connection", "close")]))
            time.sleep(0.2)
        third = threading.Thread(target=one, args=(2,))
        third.start()
        first.join()
        third.join()
        # The one that left must not take the slot: the third gets it when the first ends.
        self.assertEqual(out[0][0], 200, out)
        self.assertEqual(out[2][0], 200, out)
        dmtest.wait_until(lambda: self.upstreams()[("q.test",)]["backends"][0]["in_flight"] == 0,
                          5, what="slot given back")

    def test_passive_marks_a_refusing_backend_down(self):
        names = self.names("pas.test", 8)  # every one succeeds: retried on b1
        self.assertEqual(set(names), {"b1"})
        ups = self.upstreams()[("pas.test",)]
        dead = [b for b in ups["backends"] if b["address"] == self.dead[0]][0]
        self.assertFalse(dead["healthy"], dead)
        self.assertIn("passive", dead["reason"])
        self.assertGreaterEqual(dead["failures"], 2)
        code, body = test_admin.curl_unix(self.sock, "/metrics")
        self.assertEqual(code, 200)
        m = test_admin.parse_prometheus(body)
        up = test_admin.sample(m, "doorman_backend_up", site="pas.test", backend=self.dead[0])
        self.assertEqual(up, 0.0)
        ok = test_admin.sample(m, "doorman_backend_up", site="pas.test", backend=self.b[0].addr)
        self.assertEqual(ok, 1.0)
        self.assertGreaterEqual(test_admin.sample(m, "doorman_backend_failures_total",
                                                  site="pas.test", backend=self.dead[0]), 2)
        self.assertGreaterEqual(test_admin.sample(m, "doorman_backend_requests_total",
                                                  site="pas.test", backend=self.b[0].addr), 8)
        self.assertIn(("doorman_backend_in_flight",
                       frozenset({"site": "pas.test", "backend": self.b[0].addr}.items())), m)

    def test_retry_rules(self):
        # Connect refused: nothing was sent, so even a request with a body moves on.
        body = dmtest.pattern(3000)
        for _ in range(6):
            with self.d.connect("retry.test") as s:
                s.sendall(request_bytes("POST", "/echo", "retry.test",
                                        [("Content-Length", str(len(body))),
                                         ("Connection", "close")], body))
                r = read_response(s.makefile("rb"))
            self.assertEqual((r.status, r.body), (200, body))
            self.assertEqual(r.header("X-Backend"), "b2")
        # Closed before any response byte: a GET is retried on the other backend...
        before = [self.b[0].stats()["requests"], self.b[2].stats()["requests"]]
        self.assertEqual(get(self.d, "close.test", "/close").status, 502)
        after = [self.b[0].stats()["requests"], self.b[2].stats()["requests"]]
        # Each may see it twice: a pooled connection that closes without answering is first
        # retried on a fresh connection to the same backend (it may just have been stale).
        self.assertIn(after[0] - before[0], (1, 2))
        self.assertIn(after[1] - before[1], (1, 2))
        # ...a request whose body went out is not sent twice.
        with self.d.connect("close.test") as s:
            s.sendall(request_bytes("POST", "/close", "close.test",
                                    [("Content-Length", "5"), ("Connection", "close")],
                                    b"hello"))
            r = read_response(s.makefile("rb"))
        self.assertEqual(r.status, 502)
        final = [self.b[0].stats()["requests"], self.b[2].stats()["requests"]]
        self.assertEqual(sum(final) - sum(after), 1)

    def test_reload_keeps_backend_state(self):
        self.names("rr.test", 6)
        before = {b["address"]: b for b in self.upstreams()[("rr.test",)]["backends"]}
        code, body = test_admin.curl_unix(self.sock, "/load", "--data-binary",
                                          f"@{self.d.config_path}", method="POST")
        self.assertEqual(code, 200, body)
        after = {b["address"]: b for b in self.upstreams()[("rr.test",)]["backends"]}
        for addr, b in before.items():
            self.assertGreaterEqual(after[addr]["requests"], b["requests"], addr)
            self.assertGreaterEqual(after[addr]["requests"], 2, addr)
        # Backends marked down by the checks stay down through the reload.
        dmtest.wait_until(lambda: not any(b["healthy"] for b in
                                          self.upstreams()[("down.test",)]["backends"]),
                          10, what="down.test backends marked down")
        code, body = test_admin.curl_unix(self.sock, "/load", "--data-binary",
                                          f"@{self.d.config_path}", method="POST")
        self.assertEqual(code, 200, body)
        self.assertFalse(any(b["healthy"] for b in self.upstreams()[("down.test",)]["backends"]))
        self.assertEqual(get(self.d, "down.test").status, 503)

    def test_upstreams_json(self):
        self.names("rr.test", 3)
        ups = self.upstreams()
        rr = ups[("rr.test",)]
        self.assertEqual(rr["policy"], "round_robin")
        self.assertEqual([b["address"] for b in rr["backends"]], [b.addr for b in self.b])
        for b in rr["backends"]:
            self.assertTrue(b["healthy"])
            self.assertEqual(b["weight"], 1)
            self.assertEqual(b["in_flight"], 0)
            self.assertGreaterEqual(b["requests"], 1)
            self.assertIsNone(b["last_check"])
        self.assertEqual(ups[("w.test",)]["backends"][0]["weight"], 3)
        self.assertEqual(ups[("ck.test",)]["policy"], "cookie")


class FailoverTest(dmtest.DmTestCase):
    """One of three backends killed under load: no client sees an error; active health
    checks mark it down, and once it is back, traffic returns to it."""

    @classmethod
    def setUpEnv(cls):
        env = cls.env
        cls.b = [env.backend(n) for n in ("k1", "k2", "k3")]
        cls.data_dir = env.new_dir()
        cfg = dmtest.base_config(cls.data_dir, dmtest.free_port(), [
            {"hosts": ["k.test"], "to": [b.addr for b in cls.b],
             "upstream": {"health_check": {"path": "/hello", "interval": "300ms",
                                           "timeout": "200ms", "fails": 2, "passes": 2}}}])
        cls.d = env.doorman_run(cfg)
        cls.sock = os.path.join(cls.data_dir, "admin.sock")
        dmtest.wait_until(lambda: os.path.exists(cls.sock), 10, what="admin socket")

    def backend_state(self, addr):
        code, body = test_admin.curl_unix(self.sock, "/upstreams")
        for b in json.loads(body)[0]["backends"]:
            if b["address"] == addr:
                return b
        raise AssertionError(addr)

    def test_kill_under_load_then_recover(self):
        errors, names, lock = [], collections.Counter(), threading.Lock()
        done = threading.Event()

        def client():
            # Keep-alive connections, so pooled backend connections go stale too.
            for _ in range(100):
                try:
                    r = get(self.d, "k.test")
                    with lock:
                        if r.status != 200:
                            errors.append((r.status, r.body))
                        names[r.header("X-Backend")] += 1
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append(repr(e))
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        dmtest.wait_until(lambda: sum(names.values()) >= 60, 30, what="load running")
        victim = self.b[1]
        victim.proc.signal(9)
        for t in threads:
            t.join()
        done.set()
        self.assertEqual(errors, [], f"client errors after killing {victim.name}")
        self.assertEqual(sum(names.values()), 300)
        dmtest.wait_until(lambda: not self.backend_state(victim.addr)["healthy"], 10,
                          what="killed backend marked down")
        self.d.wait_log(lambda line: f"backend {victim.addr} of site k.test is down" in line
                        and "consecutive failures" in line, what="down transition logged")
        # Down: no traffic at all.
        before = self.backend_state(victim.addr)["requests"]
        later = collections.Counter(get(self.d, "k.test").header("X-Backend") for _ in range(12))
        self.assertEqual(later, {"k1": 6, "k3": 6})  # its share split evenly
        self.assertEqual(self.backend_state(victim.addr)["requests"], before)
        # Back on the same port: the checks bring it back, traffic returns.
        back = self.env.backend("k2", listen=victim.addr)
        self.addCleanup(back.proc.stop)
        dmtest.wait_until(lambda: self.backend_state(victim.addr)["healthy"], 10,
                          what="restarted backend marked up")
        self.d.wait_log(lambda line: f"backend {victim.addr} of site k.test is up" in line,
                        what="up transition logged")
        again = collections.Counter(get(self.d, "k.test").header("X-Backend") for _ in range(12))
        self.assertEqual(again["k2"], 4, again)


class QueueAcrossWorkersTest(dmtest.DmTestCase):
    """Two workers, one backend slot: a slot freed on one worker goes to a request queued on
    the other at once, not at that request's next queue poll (every 100 ms)."""

    def test_slot_freed_on_another_worker_is_taken_at_once(self):
        env = self.new_env()
        b = env.backend("one")
        cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(), [
            {"hosts": ["q2.test"], "to": [{"address": b.addr, "max_connections": 1}],
             "upstream": {"queue_timeout": "10s"}}], workers=2)
        d = env.doorman_run(cfg)
        hold_ms = 300
        gaps = []
        # Connections land on either worker (SO_REUSEPORT hashes their ports): over 16
        # pairs, the queued one is on the other worker about half of the time. Its start
        # moves by 12.5 ms per pair, so the release falls at every phase of its 100 ms
        # poll: waiting for the poll would cost some of them 40 to 100 ms.
        for i in range(16):
            ends = {}

            def one(name, path, delay_s):
                time.sleep(delay_s)
                r = get(d, "q2.test", path=path, timeout=10)
                ends[name] = (r.status, time.monotonic())
            a = threading.Thread(target=one, args=("a", f"/delay?ms={hold_ms}", 0))
            q = threading.Thread(target=one, args=("b", f"/delay?ms={hold_ms}", 0.02 + 0.0125 * i))
            a.start()
            q.start()
            a.join()
            q.join()
            self.assertEqual((ends["a"][0], ends["b"][0]), (200, 200), ends)
            # b started its backend request when a's slot came free: b ends hold_ms after.
            gaps.append((ends["b"][1] - ends["a"][1]) * 1000 - hold_ms)
        print(f"slot handoff gaps (ms): {[round(g) for g in gaps]}", file=sys.stderr)
        self.assertLess(max(gaps), 40, f"a queued request waited for its poll: {gaps}")


class QuickTest(dmtest.DmTestCase):
    """`doorman reverse-proxy` with several --to, --lb-policy and --health-path."""

    @classmethod
    def setUpEnv(cls):
        cls.b = [cls.env.backend(n) for n in ("q1", "q2")]

    def test_several_to_balance(self):
        d = self.env.doorman_quick("localhost", [b.addr for b in self.b])
        c = collections.Counter(get(d, "localhost").header("X-Backend") for _ in range(10))
        self.assertEqual(c, {"q1": 5, "q2": 5})

    def test_lb_policy_and_health_path(self):
        d = self.env.doorman_quick("localhost", [*(b.addr for b in self.b), dead_addr()],
                                   extra_args=("--lb-policy", "least_conn",
                                               "--health-path", "/hello"))
        # The dead backend is marked down by the checks: nothing fails, no retries needed.
        time.sleep(1.0)
        for _ in range(10):
            self.assertEqual(get(d, "localhost").status, 200)

    def test_bad_lb_policy_names_the_flag(self):
        r = dmtest.run([dmtest.doorman_bin(), "reverse-proxy", "--from", "localhost", "--to",
                        self.b[0].addr, "--lb-policy", "fastest", "--data-dir",
                        self.env.new_dir()], timeout=20)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('--lb-policy: "fastest" is not one of round_robin', dmtest.text(r.stderr))


class ConfigErrorsTest(dmtest.DmTestCase):
    """Bad upstream settings refused at load with the path of the field."""

    def check(self, site_extra, want):
        data_dir = self.env.new_dir()
        site = {"hosts": ["a.test"], "to": "127.0.0.1:9", **site_extra}
        cfg = dmtest.base_config(data_dir, dmtest.free_port(), [site])
        path = self.env.write_json(cfg)
        r = dmtest.run([dmtest.doorman_bin(), "validate", "--config", path], timeout=20)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(want, dmtest.text(r.stdout) + dmtest.text(r.stderr))

    def test_errors_name_the_path(self):
        self.check({"upstream": {"policy": "foo"}},
                   'sites[0].upstream.policy: "foo" is not one of round_robin, least_conn, '
                   'random_two, ip_hash, cookie')
        self.check({"to": [{"address": "127.0.0.1:9", "weight": 101}]},
                   "sites[0].to[0].weight: must be 1..100, got 101")
        self.check({"upstream": {"health_check": {"path": "/h", "status": "6xx"}}},
                   "sites[0].upstream.health_check.status: must be a status code")
        self.check({"upstream": {"passive": {"window": 5}}},
                   "sites[0].upstream.passive.window: expected a duration string")
        self.check({"upstream": {"retries": 11}}, "sites[0].upstream.retries: must be 0..10")


if __name__ == "__main__":
    dmtest.main()
