"""Graceful shutdown: on SIGTERM/SIGINT doorman stops accepting at once, lets in-flight
requests finish within timeouts.shutdown, and exits 0."""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from dmtest import read_response, request_bytes  # noqa: E402


class ShutdownTest(dmtest.DmTestCase):
    def start(self, shutdown="10s"):
        env = self.new_env()
        be = env.backend("a")
        cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(), [
            {"hosts": ["sd.test"], "to": be.addr, "tls": "local"},
        ], http_port=dmtest.free_port(), timeouts={"shutdown": shutdown})
        return env.doorman_run(cfg)

    def inflight_survives(self, sig, delay_ms):
        d = self.start()
        s = d.connect("sd.test")
        self.addCleanup(s.close)
        f = s.makefile("rb")
        t0 = time.monotonic()
        s.sendall(request_bytes("GET", f"/delay?ms={delay_ms}", "sd.test"))
        time.sleep(0.3)
        d.proc.signal(sig)
        t_sig = time.monotonic()

        dmtest.wait_until(lambda: not dmtest.port_accepts(d.https_port)
                          and not dmtest.port_accepts(d.http_port),
                          timeout=1.5, what="listeners closed after the signal")
        self.assertLess(time.monotonic() - t0, delay_ms / 1000.0,
                        "test premise: listeners checked while the request was in flight")

        r = read_response(f)
        self.assertEqual((r.status, r.body), (200, f"delayed {delay_ms} ms\n".encode()))
        self.assertGreaterEqual(time.monotonic() - t0, delay_ms / 1000.0 - 0.05)

        rc = d.proc.wait(timeout=5)
        self.assertIsNotNone(rc, "doorman still running 5s after its last request finished")
        self.assertEqual(rc, 0, d.proc.stderr()[-2000:])
        self.assertLess(time.monotonic() - t_sig, 10, "exceeded timeouts.shutdown")

    def test_sigterm_finishes_inflight_request(self):
        self.inflight_survives(signal.SIGTERM, 2000)

    def test_sigint_finishes_inflight_request(self):
        self.inflight_survives(signal.SIGINT, 1000)

    def test_idle_keepalive_connections_do_not_delay_exit(self):
        d = self.start()
        s = d.connect("sd.test")
        self.addCleanup(s.close)
        f = s.makefile("rb")
        s.sendall(request_bytes("GET", "/hello", "sd.test"))
        self.assertEqual(read_response(f).status, 200)  # now idle, kept alive
        t0 = time.monotonic()
        d.proc.signal(signal.SIGTERM)
        rc = d.proc.wait(timeout=8)
        self.assertEqual(rc, 0)
        self.assertLess(time.monotonic() - t0, 3,
                        "an idle keep-alive connection held shutdown (timeouts.shutdown 10s)")
        data, closed = dmtest.read_until_eof(s, timeout=2)
        self.assertTrue(closed)

    def test_shutdown_deadline_cuts_long_requests(self):
        d = self.start(shutdown="1s")
        s = d.connect("sd.test")
        self.addCleanup(s.close)
        s.sendall(request_bytes("GET", "/delay?ms=20000", "sd.test"))
        time.sleep(0.3)
        t0 = time.monotonic()
        d.proc.signal(signal.SIGTERM)
        rc = d.proc.wait(timeout=10)
        took = time.monotonic() - t0
        self.assertIsNotNone(rc, "doorman ignored timeouts.shutdown (1s)")
        self.assertEqual(rc, 0)
        self.assertGreater(took, 0.7, "in-flight request not given its grace period")
        self.assertLess(took, 3.5)
        data, closed = dmtest.read_until_eof(s, timeout=2)
        self.assertTrue(closed)
        self.assertNotIn(b"delayed", data)


if __name__ == "__main__":
    dmtest.main()
