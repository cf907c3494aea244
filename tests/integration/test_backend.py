"""dm_test_backend on its own (no doorman): every endpoint the other integration tests rely
on, so a proxy failure is never a backend bug in disguise."""

import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from dmtest import pattern, read_response, request_bytes  # noqa: E402


class BackendTest(dmtest.DmTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.be = cls.env.backend("alpha")

    def conn(self, timeout=10):
        s = socket.create_connection(("127.0.0.1", self.be.port), timeout=timeout)
        self.addCleanup(s.close)
        return s, s.makefile("rb")

    def roundtrip(self, s, f, method, path, headers=(), body=b"", version="HTTP/1.1"):
        hdrs = list(headers)
        if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in hdrs):
            hdrs.append(("Content-Length", str(len(body))))
        s.sendall(request_bytes(method, path, "backend.test", hdrs, body, version))
        return read_response(f, method=method)

    def test_hello_and_connection_counters(self):
        s, f = self.conn()
        ids = set()
        for k in range(1, 4):
            r = self.roundtrip(s, f, "GET", "/hello")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"hello from alpha\n")
            self.assertEqual(r.header("X-Backend"), "alpha")
            self.assertEqual(r.header("X-Conn-Requests"), str(k))
            ids.add(r.header("X-Conn-Id"))
        self.assertEqual(len(ids), 1)
        s2, f2 = self.conn()
        r = self.roundtrip(s2, f2, "GET", "/hello")
        self.assertEqual(r.header("X-Conn-Requests"), "1")
        self.assertNotIn(r.header("X-Conn-Id"), ids)

    def test_headers_json(self):
        s, f = self.conn()
        r = self.roundtrip(s, f, "GET", "/headers?x=1", [("X-Foo", "bar \"q\""), ("x-foo", "2")])
        j = r.json()
        self.assertEqual(j["method"], "GET")
        self.assertEqual(j["target"], "/headers?x=1")
        self.assertEqual(j["version"], "HTTP/1.1")
        self.assertEqual(j["headers"], [["Host", "backend.test"], ["X-Foo", "bar \"q\""],
                                        ["x-foo", "2"]])
        self.assertTrue(j["peer"].startswith("127.0.0.1:"))

    def test_echo_content_length_and_chunked(self):
        s, f = self.conn()
        body = os.urandom(300000)
        r = self.roundtrip(s, f, "POST", "/echo", body=body)
        self.assertEqual(r.header("Content-Length"), str(len(body)))
        self.assertEqual(r.body, body)
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"abc", b"x" * 70000, b"z"))
        r = self.roundtrip(s, f, "POST", "/echo", [("Transfer-Encoding", "chunked")],
                           chunked + b"0\r\nX-T: 1\r\n\r\n")
        self.assertEqual(r.header("Transfer-Encoding"), "chunked")
        self.assertEqual(r.body, b"abc" + b"x" * 70000 + b"z")
        r = self.roundtrip(s, f, "GET", "/echo")
        self.assertEqual((r.status, r.body, r.header("Content-Length")), (200, b"", "0"))
        self.assertEqual(r.header("X-Conn-Requests"), "3")

    def test_echo_streams_hundreds_of_megabytes_in_bounded_memory(self):
        block = pattern(26 * 40000)  # a whole number of periods, so blocks join seamlessly
        total = len(block) * 256  # ~254 MiB
        s, f = self.conn(timeout=60)
        s.sendall(request_bytes("POST", "/echo", "b", [("Content-Length", str(total))]))
        errors = []

        def send():
            try:
                for _ in range(total // len(block)):
                    s.sendall(block)
            except OSError as e:
                errors.append(e)
        t = threading.Thread(target=send)
        t.start()
        head = f.readline()
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        while f.readline() not in (b"\r\n", b""):
            pass
        got = 0
        while got < total:
            data = f.read(min(1 << 20, total - got))
            self.assertTrue(data, "echo ended early")
            self.assertEqual(data, pattern(len(data), got))
            got += len(data)
        t.join()
        self.assertEqual(errors, [])
        with open(f"/proc/{self.be.proc.pid}/status") as st:
            hwm_kb = int(next(ln for ln in st if ln.startswith("VmHWM")).split()[1])
        self.assertLess(hwm_kb, 64 * 1024, "backend buffered the body instead of streaming it")

    def test_bytes_length_and_chunked(self):
        s, f = self.conn()
        for n in (0, 1, 26, 100003, 3 << 20):
            r = self.roundtrip(s, f, "GET", f"/bytes?n={n}")
            self.assertEqual(r.header("Content-Length"), str(n))
            self.assertEqual(r.body, pattern(n))
            r = self.roundtrip(s, f, "GET", f"/bytes?n={n}&chunked=1")
            self.assertEqual(r.header("Transfer-Encoding"), "chunked")
            self.assertEqual(r.body, pattern(n))
        r = self.roundtrip(s, f, "HEAD", "/bytes?n=77")
        self.assertEqual((r.status, r.header("Content-Length"), r.body), (200, "77", b""))
        r = self.roundtrip(s, f, "GET", "/bytes")
        self.assertEqual(r.status, 400)

    def test_sum(self):
        s, f = self.conn()
        small = b"hello world"
        r = self.roundtrip(s, f, "POST", "/sum", body=small)
        self.assertEqual(r.json(), {"length": 11, "fnv1a64": dmtest.fnv1a64(small),
                                    "sha256": dmtest.sha256_hex(small)})
        for n in (0, 55, 56, 63, 64, 65, 119, 120, 1000):  # SHA-256 padding edges
            data = os.urandom(n)
            r = self.roundtrip(s, f, "POST", "/sum", body=data)
            self.assertEqual(r.json()["sha256"], dmtest.sha256_hex(data), n)
        big = os.urandom(8 << 20)
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 99999]), big[i:i + 99999])
                          for i in range(0, len(big), 99999))
        r = self.roundtrip(s, f, "POST", "/sum", [("Transfer-Encoding", "chunked")],
                           chunks + b"0\r\n\r\n")
        self.assertEqual(r.json()["length"], len(big))
        self.assertEqual(r.json()["sha256"], dmtest.sha256_hex(big))
        self.assertEqual(r.header("X-Body-Length"), str(len(big)))

    def test_delay_does_not_block_other_connections(self):
        s1, f1 = self.conn()
        t0 = time.monotonic()
        s1.sendall(request_bytes("GET", "/delay?ms=800", "b"))
        s2, f2 = self.conn()
        r = self.roundtrip(s2, f2, "GET", "/hello")
        self.assertLess(time.monotonic() - t0, 0.5)
        self.assertEqual(r.status, 200)
        r = read_response(f1)
        self.assertGreaterEqual(time.monotonic() - t0, 0.79)
        self.assertEqual(r.body, b"delayed 800 ms\n")

    def test_status(self):
        s, f = self.conn()
        for code in (200, 204, 301, 404, 500, 503):
            r = self.roundtrip(s, f, "GET", f"/status?code={code}")
            self.assertEqual(r.status, code)
            self.assertEqual(r.body, b"" if code == 204 else f"status {code}\n".encode())
        r = self.roundtrip(s, f, "GET", "/nowhere")
        self.assertEqual(r.status, 404)

    def test_close_reset_half(self):
        s, _ = self.conn()
        s.sendall(request_bytes("GET", "/close", "b"))
        data, closed = dmtest.read_until_eof(s)
        self.assertEqual((data, closed), (b"", True))
        s, _ = self.conn()
        s.sendall(request_bytes("GET", "/reset", "b"))
        with self.assertRaises(ConnectionResetError):
            s.settimeout(5)
            while s.recv(100):
                pass
            raise AssertionError("clean EOF instead of RST")
        s, _ = self.conn()
        s.sendall(request_bytes("GET", "/half", "b"))
        data, closed = dmtest.read_until_eof(s)
        self.assertTrue(closed)
        self.assertIn(b"Content-Length: 1000\r\n", data)
        self.assertTrue(data.endswith(b"\r\n\r\n" + pattern(10)))

    def test_pipelining_in_order(self):
        s, f = self.conn()
        s.sendall(request_bytes("GET", "/delay?ms=200", "b") + request_bytes("GET", "/hello", "b")
                  + request_bytes("POST", "/echo", "b", [("Content-Length", "3")], b"xyz")
                  + request_bytes("GET", "/bytes?n=5", "b"))
        bodies = [read_response(f).body for _ in range(4)]
        self.assertEqual(bodies, [b"delayed 200 ms\n", b"hello from alpha\n", b"xyz", b"abcde"])

    def test_expect_100_continue(self):
        s, f = self.conn()
        s.sendall(request_bytes("POST", "/sum", "b", [("Content-Length", "5"),
                                                      ("Expect", "100-continue")]))
        r = read_response(f, keep_1xx=True)
        self.assertEqual(r.status, 100)
        s.sendall(b"12345")
        r = read_response(f)
        self.assertEqual(r.json()["length"], 5)

    def test_websocket(self):
        s, f = self.conn()
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        r = self.roundtrip(s, f, "GET", "/ws", [("Upgrade", "websocket"),
                                                ("Connection", "Upgrade"),
                                                ("Sec-WebSocket-Key", key),
                                                ("Sec-WebSocket-Version", "13")])
        self.assertEqual(r.status, 101)
        # RFC 6455 §1.3 example value.
        self.assertEqual(r.header("Sec-WebSocket-Accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        big = os.urandom(200000)
        s.sendall(dmtest.ws_frame(1, b"hi") + dmtest.ws_frame(2, big) + dmtest.ws_frame(9, b"p"))
        self.assertEqual(dmtest.ws_read_frame(f), (True, 1, b"hi", False))
        self.assertEqual(dmtest.ws_read_frame(f), (True, 2, big, False))
        self.assertEqual(dmtest.ws_read_frame(f), (True, 10, b"p", False))
        s.sendall(dmtest.ws_frame(8, b"\x03\xe8"))
        self.assertEqual(dmtest.ws_read_frame(f), (True, 8, b"\x03\xe8", False))
        self.assertEqual(dmtest.read_until_eof(s), (b"", True))

    def test_trailers(self):
        s, f = self.conn()
        r = self.roundtrip(s, f, "GET", "/trailers")
        self.assertEqual(r.body, b"first chunk\nsecond chunk\nthird chunk\n")
        self.assertEqual(r.trailers, [("X-Checksum", dmtest.fnv1a64(r.body))])

    def test_slowbody(self):
        s, f = self.conn()
        t0 = time.monotonic()
        r = self.roundtrip(s, f, "GET", "/slowbody?bytes=6&ms=50&piece=2")
        self.assertEqual(r.body, b"abcdef")
        self.assertGreaterEqual(time.monotonic() - t0, 0.149)

    def test_malformed_requests_get_400_and_close(self):
        for raw in (b"GET /hello HTTP/1.1\r\nHost: b\r\nContent-Length: 1\r\nContent-Length: 2"
                    b"\r\n\r\n",
                    b"GET /hello HTTP/1.1\r\nBad Header: x\r\n\r\n",
                    b"POST /sum HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                    b"GARBAGE\r\n\r\n"):
            with self.subTest(raw=raw):
                s, _ = self.conn()
                s.sendall(raw)
                data, closed = dmtest.read_until_eof(s)
                self.assertEqual(dmtest.status_of(data), 400)
                self.assertTrue(closed)

    def test_http10(self):
        s, f = self.conn()
        r = self.roundtrip(s, f, "GET", "/bytes?n=30&chunked=1", version="HTTP/1.0")
        self.assertEqual(r.body, pattern(30))
        self.assertIsNone(r.header("Transfer-Encoding"))
        self.assertEqual(dmtest.read_until_eof(s), (b"", True))

    def test_ipv6_unix_and_sigterm(self):
        if not socket.has_ipv6:
            raise AssertionError("IPv6 support missing in Python")
        env = self.new_env()
        v6 = env.backend("six", listen="[::1]:0")
        with socket.create_connection(("::1", v6.port), timeout=5) as s:
            s.sendall(request_bytes("GET", "/hello", "b", [("Connection", "close")]))
            self.assertEqual(read_response(s.makefile("rb")).body, b"hello from six\n")
        path = env.path("be.sock")
        ux = env.backend("ux", listen=f"unix:{path}")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(request_bytes("GET", "/hello", "b", [("Connection", "close")]))
            self.assertEqual(read_response(s.makefile("rb")).body, b"hello from ux\n")
        ux.proc.signal(signal.SIGTERM)
        self.assertEqual(ux.proc.wait(5), 0)
        self.assertFalse(os.path.exists(path))


if __name__ == "__main__":
    dmtest.main()
