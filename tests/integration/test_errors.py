"""Failure handling: dead and misbehaving backends (502/504), slow clients, request smuggling
attempts (400 + close, nothing reaches the backend), oversized heads (431/414) — and after
all of it the proxy is alive and in sync."""

import os
import select
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from dmtest import read_response, request_bytes, status_of  # noqa: E402

# Request heads the data plane must refuse with 400 and a close (RFC 9112 §2.2, §3, §5,
# §6.1, §6.3; RFC 9110 §5.5). {H} is the Host; none of these may reach the backend.
HEAD_CASES = {
    "cl_and_te": b"POST /sum HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST /sum HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "duplicate_differing_cl": b"POST /sum HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5\r\n"
                              b"Content-Length: 6\r\n\r\nhello!",
    "cl_list_differing": b"POST /sum HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "cl_plus_sign": b"POST /sum HTTP/1.1\r\nHost: {H}\r\nContent-Length: +5\r\n\r\nhello",
    "cl_not_a_number": b"POST /sum HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5x\r\n\r\nhello",
    "te_gzip": b"POST /sum HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    "te_chunked_twice_list": b"POST /sum HTTP/1.1\r\nHost: {H}\r\n"
                             b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "te_chunked_twice_fields": b"POST /sum HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked"
                               b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_not_last_chunked": b"POST /sum HTTP/1.1\r\nHost: {H}\r\n"
                           b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "obs_fold": b"GET /hello HTTP/1.1\r\nHost: {H}\r\nX-A: one\r\n  two\r\n\r\n",
    "bare_cr_in_value": b"GET /hello HTTP/1.1\r\nHost: {H}\r\nX-A: a\rb\r\n\r\n",
    "bare_lf_line_ends": b"GET /hello HTTP/1.1\nHost: {H}\nX-A: b\n\n",
    "bare_lf_one_line": b"GET /hello HTTP/1.1\r\nHost: {H}\nX-A: b\r\n\r\n",
    "nul_in_value": b"GET /hello HTTP/1.1\r\nHost: {H}\r\nX-A: a\x00b\r\n\r\n",
    "nul_in_target": b"GET /hel\x00lo HTTP/1.1\r\nHost: {H}\r\n\r\n",
    "space_before_colon": b"GET /hello HTTP/1.1\r\nHost: {H}\r\nX-A : b\r\n\r\n",
    "space_before_colon_te": b"POST /sum HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding : chunked"
                             b"\r\nContent-Length: 3\r\n\r\nabc",
    "missing_host": b"GET /hello HTTP/1.1\r\nX-A: b\r\n\r\n",
    "duplicate_host": b"GET /hello HTTP/1.1\r\nHost: {H}\r\nHost: other.test\r\n\r\n",
    "bad_version": b"GET /hello HTTP/1.x\r\nHost: {H}\r\n\r\n",
}

# Valid heads with a broken chunked body (POST /sum answers only after the whole body).
CHUNK_CASES = {
    "chunk_size_not_hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "chunk_size_negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk_size_overflow": b"1" + b"0" * 20 + b"\r\nhello\r\n0\r\n\r\n",
    "chunk_size_empty": b"\r\nhello\r\n0\r\n\r\n",
    "chunk_missing_crlf": b"5\r\nhelloXX0\r\n\r\n",
}


class ErrorsTest(dmtest.DmTestCase):
    @classmethod
    def setUpEnv(cls):
        env = cls.env
        cls.a = env.backend("a")
        cls.s = env.backend("s")  # target of the smuggling cases; must never see a request
        cls.chunk = env.backend("chunk")
        cls.dead_addr = f"127.0.0.1:{dmtest.free_port()}"  # nothing listens there
        cls.data_dir = env.new_dir()
        cfg = dmtest.base_config(cls.data_dir, dmtest.free_port(), [
            {"hosts": ["e.test"], "to": cls.a.addr, "tls": "local"},
            {"hosts": ["s.test"], "to": cls.s.addr, "tls": "local"},
            {"hosts": ["chunk.test"], "to": cls.chunk.addr, "tls": "local"},
            {"hosts": ["dead.test"], "to": cls.dead_addr, "tls": "local"},
        ], timeouts={"response": "1s", "header": "2s"},
            limits={"request_line": 8192, "header_count": 100, "header_bytes": 65536})
        cls.d = env.doorman_run(cfg)

    def open(self, sni, timeout=10):
        s = self.d.connect(sni, timeout=timeout)
        self.addCleanup(s.close)
        return s

    def send_and_read_to_eof(self, sni, raw, timeout=5):
        s = self.open(sni)
        try:
            s.sendall(raw)
        except OSError:
            pass  # the proxy may reject and close while we are still sending
        return dmtest.read_until_eof(s, timeout=timeout)

    def assert_access_log(self, *needles):
        line = self.d.wait_log(lambda ln: all(n in ln for n in needles), timeout=5,
                               what=f"access log line with {needles}")
        return line

    # ---- backend failures ----------------------------------------------------------------

    def test_502_backend_refuses(self):
        t0 = time.monotonic()
        r = self.d.request("dead.test", "/hello?case=refused")
        self.assertEqual(r.status, 502)
        self.assertLess(len(r.body), 1024)
        self.assertLess(time.monotonic() - t0, 3, "refused connect should fail fast")
        self.assert_access_log("GET", "dead.test", "/hello?case=refused", "502", self.dead_addr)

    def test_502_backend_closes_without_answer(self):
        r = self.d.request("e.test", "/close")
        self.assertEqual(r.status, 502)
        self.assert_access_log("e.test", "/close", "502")

    def test_502_backend_resets(self):
        r = self.d.request("e.test", "/reset")
        self.assertEqual(r.status, 502)

    def test_truncated_backend_response_is_not_completed(self):
        data, closed = self.send_and_read_to_eof("e.test",
                                                 request_bytes("GET", "/half", "e.test"), 10)
        self.assertTrue(closed, "client connection left open after a truncated response")
        status = status_of(data)
        if status == 200:
            body = data.split(b"\r\n\r\n", 1)[1]
            self.assertLess(len(body), 1000, "proxy padded or invented the missing bytes")
        else:
            self.assertEqual(status, 502, data[:200])

    def test_504_backend_too_slow(self):
        t0 = time.monotonic()
        r = self.d.request("e.test", "/delay?ms=3000")
        took = time.monotonic() - t0
        self.assertEqual(r.status, 504)
        self.assertLess(len(r.body), 1024)
        self.assertGreater(took, 0.8)
        self.assertLess(took, 2.8, "504 should come after timeouts.response (1s)")
        self.assert_access_log("GET", "e.test", "/delay?ms=3000", "504", self.a.addr)

    # ---- slow clients --------------------------------------------------------------------

    def test_slowloris_head_closed_after_header_timeout(self):
        s = self.open("e.test")
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: e.test\r\nX-Slow: ")
        t0 = time.monotonic()
        got = b""
        closed = False
        while time.monotonic() - t0 < 8:
            try:
                s.sendall(b"a")
            except OSError:
                closed = True
                break
            if select.select([s], [], [], 0.3)[0] or s.pending():
                try:
                    data = s.recv(4096)
                except (ssl.SSLError, OSError):
                    data = b""
                got += data
                if not data:
                    closed = True
                    break
        took = time.monotonic() - t0
        self.assertTrue(closed, f"slow head still open after {took:.1f}s (header timeout 2s)")
        self.assertGreater(took, 1.5)
        self.assertLess(took, 5)
        self.assertIn(status_of(got) if got else None, (None, 408), got[:200])

    # ---- smuggling -----------------------------------------------------------------------

    def test_smuggling_heads_rejected_and_closed(self):
        before = self.s.stats()["requests"]
        for name, raw in HEAD_CASES.items():
            with self.subTest(case=name):
                data, closed = self.send_and_read_to_eof("s.test", raw.replace(b"{H}", b"s.test"))
                self.assertEqual(status_of(data), 400, data[:300])
                self.assertTrue(closed, "connection not closed after 400")
        self.assertEqual(self.s.stats()["requests"], before,
                         "a rejected request reached the backend")

    def test_bad_chunked_bodies_rejected_and_closed(self):
        for name, body in CHUNK_CASES.items():
            with self.subTest(case=name):
                raw = request_bytes("POST", "/sum", "chunk.test",
                                    [("Transfer-Encoding", "chunked")]) + body
                data, closed = self.send_and_read_to_eof("chunk.test", raw)
                self.assertEqual(status_of(data), 400, data[:300])
                self.assertTrue(closed, "connection not closed after 400")
                self.assertNotIn(b"sha256", data, "backend answered a broken body")

    def test_cl_te_desync_attempt_does_not_poison_next_request(self):
        # Classic CL.TE: if anything honoured Content-Length the "G" would prefix the next
        # request on a shared backend connection.
        raw = (b"POST /sum HTTP/1.1\r\nHost: e.test\r\nContent-Length: 6\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG")
        data, closed = self.send_and_read_to_eof("e.test", raw)
        self.assertEqual(status_of(data), 400)
        self.assertTrue(closed)
        for _ in range(3):
            r = self.d.request("e.test", "/hello")
            self.assertEqual((r.status, r.body), (200, b"hello from a\n"))

    # ---- oversized heads -----------------------------------------------------------------

    def status_for(self, raw):
        s = self.open("e.test")
        try:
            s.sendall(raw)
        except OSError:
            pass
        return read_response(s.makefile("rb")).status

    def test_431_header_bytes(self):
        raw = request_bytes("GET", "/hello", "e.test", [("X-Big", "a" * 70000)])
        self.assertEqual(self.status_for(raw), 431)

    def test_431_header_count(self):
        raw = request_bytes("GET", "/hello", "e.test", [(f"X-H{i}", "v") for i in range(150)])
        self.assertEqual(self.status_for(raw), 431)

    def test_414_request_line(self):
        raw = request_bytes("GET", "/hello?pad=" + "a" * 10000, "e.test")
        self.assertEqual(self.status_for(raw), 414)

    def test_heads_just_under_the_limits_pass(self):
        raw = request_bytes("GET", "/hello?pad=" + "a" * 8000, "e.test", [("Connection", "close")])
        self.assertEqual(self.status_for(raw), 200)
        raw = request_bytes("GET", "/hello", "e.test",
                            [(f"X-H{i}", "v") for i in range(90)] + [("Connection", "close")])
        self.assertEqual(self.status_for(raw), 200)
        raw = request_bytes("GET", "/hello", "e.test",
                            [("X-Big", "a" * 60000), ("Connection", "close")])
        self.assertEqual(self.status_for(raw), 200)

    # ---- afterwards ----------------------------------------------------------------------

    def test_zz_still_alive_and_in_sync(self):
        """Runs last (alphabetical order): everything above left no damage."""
        self.assertTrue(self.d.proc.alive(), "doorman died")
        s = self.open("e.test")
        f = s.makefile("rb")
        for path, body in (("/hello", b"hello from a\n"), ("/bytes?n=5", b"abcde"),
                           ("/hello", b"hello from a\n")):
            s.sendall(request_bytes("GET", path, "e.test"))
            r = read_response(f)
            self.assertEqual((r.status, r.body), (200, body))
        with socket.create_connection(("127.0.0.1", self.d.https_port), timeout=5):
            pass
        self.assertTrue(self.d.proc.alive(), "doorman died")


if __name__ == "__main__":
    dmtest.main()
