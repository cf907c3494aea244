"""The HTTP/1.1 data plane end to end: backend keep-alive reuse, pipelining, large streamed
bodies both ways, Expect: 100-continue, X-Forwarded-* and hop-by-hop fields, WebSocket
upgrade, HTTP/1.0 clients."""

import base64
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from dmtest import pattern, read_response, request_bytes  # noqa: E402

MiB = 1 << 20


class ProxyTest(dmtest.DmTestCase):
    @classmethod
    def setUpEnv(cls):
        env = cls.env
        cls.a = env.backend("a")
        cls.ka = env.backend("ka")
        cls.data_dir = env.new_dir()
        cfg = dmtest.base_config(cls.data_dir, dmtest.free_port(), [
            {"hosts": ["p.test"], "to": cls.a.addr, "tls": "local"},
            {"hosts": ["ka.test"], "to": cls.ka.addr, "tls": "local"},
        ], trusted_proxies=["127.0.0.2/32"], timeouts={"response": "10s", "body": "10s"})
        cls.d = env.doorman_run(cfg)

    def open(self, sni="p.test", source=None, timeout=15):
        s = self.d.connect(sni, source=source, timeout=timeout)
        self.addCleanup(s.close)
        return s, s.makefile("rb")

    # ---- connection reuse ----------------------------------------------------------------

    def test_backend_keepalive_reuse(self):
        s, f = self.open("ka.test")
        first = []
        for _ in range(4):
            s.sendall(request_bytes("GET", "/hello", "ka.test"))
            r = read_response(f)
            self.assertEqual(r.status, 200)
            first.append((r.header("X-Conn-Id"), int(r.header("X-Conn-Requests"))))
        s.close()
        ids = {cid for cid, _ in first}
        counts = [k for _, k in first]
        self.assertEqual(len(ids), 1, f"one client connection used several backend ones: {first}")
        self.assertEqual(counts, list(range(counts[0], counts[0] + 4)), first)

        s2, f2 = self.open("ka.test")
        s2.sendall(request_bytes("GET", "/hello", "ka.test"))
        r = read_response(f2)
        self.assertIn(r.header("X-Conn-Id"), ids, "backend connection not reused across clients")
        self.assertGreater(int(r.header("X-Conn-Requests")), counts[-1])
        self.assertEqual(self.ka.stats()["connections"], 1)

    def test_pipelined_requests_answered_in_order(self):
        s, f = self.open()
        s.sendall(request_bytes("GET", "/delay?ms=300", "p.test")
                  + request_bytes("GET", "/hello", "p.test")
                  + request_bytes("POST", "/echo", "p.test", [("Content-Length", "3")], b"xyz")
                  + request_bytes("GET", "/bytes?n=100000", "p.test")
                  + request_bytes("GET", "/status?code=404", "p.test"))
        got = [read_response(f) for _ in range(5)]
        self.assertEqual([r.status for r in got], [200, 200, 200, 200, 404])
        self.assertEqual(got[0].body, b"delayed 300 ms\n")
        self.assertEqual(got[1].body, b"hello from a\n")
        self.assertEqual(got[2].body, b"xyz")
        self.assertEqual(got[3].body, pattern(100000))
        self.assertEqual(got[4].body, b"status 404\n")

    def test_head_response_has_no_body_and_connection_stays_usable(self):
        s, f = self.open()
        s.sendall(request_bytes("HEAD", "/bytes?n=5000", "p.test"))
        r = read_response(f, method="HEAD")
        self.assertEqual((r.status, r.header("Content-Length")), (200, "5000"))
        s.sendall(request_bytes("GET", "/hello", "p.test"))
        self.assertEqual(read_response(f).body, b"hello from a\n")

    # ---- bodies ------------------------------------------------------------------------

    def test_chunked_upload_32mib(self):
        s, f = self.open()
        s.sendall(request_bytes("POST", "/sum", "p.test", [("Transfer-Encoding", "chunked")]))
        h = hashlib.sha256()
        block = os.urandom(MiB)
        for i in range(32):
            piece = block[i:] + block[:i]
            h.update(piece)
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        s.sendall(b"0\r\n\r\n")
        r = read_response(f)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["length"], 32 * MiB)
        self.assertEqual(r.json()["sha256"], h.hexdigest())

    def test_curl_upload_32mib_with_expect(self):
        path = self.env.path("upload.bin")
        data = os.urandom(32 * MiB)
        with open(path, "wb") as out:
            out.write(data)
        r = self.d.curl("p.test", "/sum", "-v", "--http1.1", "--data-binary", f"@{path}",
                        "-H", "Content-Type: application/octet-stream")
        j = json.loads(r.stdout)
        self.assertEqual(j["length"], len(data))
        self.assertEqual(j["sha256"], hashlib.sha256(data).hexdigest())
        self.assertIn("Expect: 100-continue", dmtest.text(r.stderr),
                      "curl did not send Expect (test premise)")
        self.assertIn("HTTP/1.1 100 Continue", dmtest.text(r.stderr))

    def test_curl_echo_16mib_streams_both_ways(self):
        src = self.env.path("echo-in.bin")
        dst = self.env.path("echo-out.bin")
        data = os.urandom(16 * MiB)
        with open(src, "wb") as out:
            out.write(data)
        self.d.curl("p.test", "/echo", "--data-binary", f"@{src}", "-o", dst)
        with open(dst, "rb") as got:
            self.assertEqual(hashlib.sha256(got.read()).hexdigest(),
                             hashlib.sha256(data).hexdigest())

    def test_download_64mib_content_length(self):
        n = 64 * MiB
        dst = self.env.path("download.bin")
        r = self.d.curl("p.test", f"/bytes?n={n}", "-o", dst, "-w", "%{http_code} %{size_download}")
        self.assertEqual(dmtest.text(r.stdout), f"200 {n}")
        with open(dst, "rb") as got:
            self.assertTrue(got.read() == pattern(n), "downloaded bytes differ from the pattern")

    def test_download_32mib_chunked(self):
        n = 32 * MiB
        s, f = self.open()
        s.sendall(request_bytes("GET", f"/bytes?n={n}&chunked=1", "p.test"))
        r = read_response(f)
        self.assertEqual(r.status, 200)
        self.assertEqual(len(r.body), n)
        self.assertTrue(r.body == pattern(n), "chunked download differs from the pattern")
        s.sendall(request_bytes("GET", "/hello", "p.test"))  # framing intact afterwards
        self.assertEqual(read_response(f).body, b"hello from a\n")

    def test_chunked_response_with_trailers(self):
        s, f = self.open()
        s.sendall(request_bytes("GET", "/trailers", "p.test"))
        r = read_response(f)
        self.assertEqual(r.body, b"first chunk\nsecond chunk\nthird chunk\n")
        s.sendall(request_bytes("GET", "/hello", "p.test"))
        self.assertEqual(read_response(f).body, b"hello from a\n")

    def test_expect_100_continue_before_body(self):
        s, f = self.open(timeout=5)
        s.sendall(request_bytes("POST", "/sum", "p.test", [("Content-Length", "11"),
                                                           ("Expect", "100-continue")]))
        r = read_response(f, keep_1xx=True)  # times out (fails) if the proxy waits for the body
        self.assertEqual(r.status, 100)
        s.sendall(b"hello world")
        r = read_response(f)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["length"], 11)
        self.assertEqual(r.json()["fnv1a64"], dmtest.fnv1a64(b"hello world"))

    # ---- header rewriting ----------------------------------------------------------------

    def headers_seen_by_backend(self, extra, source=None):
        s, f = self.open(source=source)
        s.sendall(request_bytes("GET", "/headers?x=1", "p.test", extra))
        r = read_response(f)
        self.assertEqual(r.status, 200)
        return r.json()

    def test_forwarded_headers_and_hop_by_hop_removal(self):
        j = self.headers_seen_by_backend([
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "evil.test"),
            ("Connection", "keep-alive, X-Custom-Hop"),
            ("X-Custom-Hop", "drop me"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-Foo"),
            ("Upgrade", "h2c"),
            ("X-End-To-End", "kept"),
            ("X-Multi", "1"),
            ("X-Multi", "2"),
        ])
        self.assertEqual(j["method"], "GET")
        self.assertEqual(j["target"], "/headers?x=1")
        hdrs = [(n.lower(), v) for n, v in j["headers"]]
        names = [n for n, _ in hdrs]

        def values(name):
            return [v for n, v in hdrs if n == name]
        self.assertEqual(values("host"), ["p.test"])
        self.assertEqual(values("x-forwarded-for"), ["127.0.0.1"],
                         "untrusted client's X-Forwarded-For must be replaced")
        self.assertEqual(values("x-forwarded-proto"), ["https"])
        self.assertEqual(values("x-forwarded-host"), ["p.test"])
        for hop in ("keep-alive", "proxy-connection", "te", "trailer", "upgrade",
                    "x-custom-hop", "transfer-encoding"):
            self.assertNotIn(hop, names, f"hop-by-hop field {hop} forwarded: {hdrs}")
        for v in values("connection"):
            self.assertNotIn("x-custom-hop", v.lower())
        self.assertEqual(values("x-end-to-end"), ["kept"])
        self.assertEqual(values("x-multi"), ["1", "2"])

    def test_trusted_proxy_x_forwarded_for_appended(self):
        j = self.headers_seen_by_backend([("X-Forwarded-For", "1.2.3.4")], source="127.0.0.2")
        xff = [v for n, v in j["headers"] if n.lower() == "x-forwarded-for"]
        self.assertEqual(len(xff), 1, j["headers"])
        self.assertEqual([p.strip() for p in xff[0].split(",")], ["1.2.3.4", "127.0.0.2"])

    # ---- upgrades and old clients ----------------------------------------------------------

    def test_websocket_echo(self):
        s, f = self.open()
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(request_bytes("GET", "/ws", "p.test", [
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]))
        r = read_response(f)
        self.assertEqual(r.status, 101)
        self.assertEqual(r.header("Upgrade", "").lower(), "websocket")
        self.assertEqual(r.header("Sec-WebSocket-Accept"), dmtest.ws_accept(key))
        big = os.urandom(300000)
        s.sendall(dmtest.ws_frame(1, "héllo".encode()))
        self.assertEqual(dmtest.ws_read_frame(f), (True, 1, "héllo".encode(), False))
        s.sendall(dmtest.ws_frame(2, big))
        self.assertEqual(dmtest.ws_read_frame(f), (True, 2, big, False))
        s.sendall(dmtest.ws_frame(9, b"ping"))
        self.assertEqual(dmtest.ws_read_frame(f), (True, 10, b"ping", False))
        s.sendall(dmtest.ws_frame(8, b"\x03\xe8bye"))
        self.assertEqual(dmtest.ws_read_frame(f), (True, 8, b"\x03\xe8bye", False))
        data, closed = dmtest.read_until_eof(s, timeout=5)
        self.assertTrue(closed, "proxy kept the upgraded connection after the backend closed")

    def test_http10_client(self):
        s, f = self.open()
        s.sendall(b"GET /hello HTTP/1.0\r\nHost: p.test\r\n\r\n")
        r = read_response(f)
        self.assertEqual((r.status, r.body), (200, b"hello from a\n"))
        data, closed = dmtest.read_until_eof(s, timeout=5)
        self.assertEqual((data, closed), (b"", True), "HTTP/1.0 without keep-alive not closed")

        s, f = self.open()
        s.sendall(b"GET /bytes?n=100000&chunked=1 HTTP/1.0\r\nHost: p.test\r\n\r\n")
        r = read_response(f)
        self.assertEqual(r.status, 200)
        self.assertNotEqual((r.header("Transfer-Encoding") or "").lower(), "chunked",
                            "chunked sent to an HTTP/1.0 client")
        self.assertTrue(r.body == pattern(100000), "HTTP/1.0 body differs")

    def test_http10_keep_alive(self):
        s, f = self.open()
        s.sendall(b"GET /hello HTTP/1.0\r\nHost: p.test\r\nConnection: keep-alive\r\n\r\n")
        r = read_response(f)
        self.assertEqual((r.status, r.body), (200, b"hello from a\n"))
        if "keep-alive" in (r.header("Connection") or "").lower():
            # Keep-alive was promised (RFC 9112 §9.3): the connection must carry another request.
            s.sendall(b"GET /hello HTTP/1.0\r\nHost: p.test\r\nConnection: keep-alive\r\n\r\n")
            self.assertEqual(read_response(f).body, b"hello from a\n")
        else:
            data, closed = dmtest.read_until_eof(s, timeout=5)
            self.assertEqual((data, closed), (b"", True), "no keep-alive promised, yet not closed")

if __name__ == "__main__":
    dmtest.main()
