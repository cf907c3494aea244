"""HTTP/2 to clients end to end: curl --http2, nghttp and h2load against doorman over TLS with
the local CA; many streams on one connection, large bodies both ways with checksums, trailers,
header translation, flow control with a slow reader, HTTP/1.1 on the same port, and the
defences (concurrent streams, header list size, rapid reset, CONTINUATION, PING and SETTINGS
floods, idle timeout, GOAWAY on graceful shutdown). The attackers are raw frames written here
over ssl (RFC 9113 §4, §6); nothing here decodes HPACK beyond the static-table status codes."""

import hashlib
import json
import os
import re
import signal
import socket
import ssl
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from dmtest import pattern  # noqa: E402

MiB = 1 << 20
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
ENHANCE_YOUR_CALM, REFUSED_STREAM, PROTOCOL_ERROR = 0xB, 0x7, 0x1


# ---- a raw HTTP/2 client (frames only) ------------------------------------------------------


def hpack_int(value, prefix_bits, first_byte_flags=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = [first_byte_flags | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name, value):
    """A literal field without indexing, no Huffman (RFC 7541 §6.2.2)."""
    name, value = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def hpack_block(fields):
    return b"".join(hpack_literal(n, v) for n, v in fields)


def frame(ftype, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream_id) + payload


class H2Raw:
    """One TLS connection speaking raw HTTP/2 frames."""

    def __init__(self, d, sni="h.test", timeout=10.0, settings=b""):
        ctx = ssl.create_default_context(cafile=d.ca())
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", d.https_port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        except BaseException:
            raw.close()
            raise
        ctx_alpn = self.sock.selected_alpn_protocol()
        if ctx_alpn != "h2":
            raise AssertionError(f"ALPN chose {ctx_alpn!r}, not h2")
        self.buf = b""
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def request_headers(self, stream_id, path="/hello", authority="h.test", extra=(),
                        end_stream=True, method="GET"):
        block = hpack_block([(":method", method), (":scheme", "https"), (":path", path),
                             (":authority", authority), *extra])
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return frame(HEADERS, flags, stream_id, block)

    def read_frame(self, timeout=5.0):
        """The next frame (type, flags, stream, payload), or None when the peer closed or
        nothing came within timeout."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return None
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
                return None
            if not data:
                return None
            self.buf += data
        n = int.from_bytes(self.buf[:3], "big")
        f = (self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF,
             self.buf[9:9 + n])
        self.buf = self.buf[9 + n:]
        return f

    def frames_until(self, predicate, timeout=10.0):
        """Reads frames until predicate(frame) is true (returns that frame and all read) or the
        connection ends (returns None and all read)."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.05, deadline - time.monotonic()))
            if f is None:
                return None, seen
            seen.append(f)
            if predicate(f):
                return f, seen
            if time.monotonic() > deadline:
                return None, seen


def goaway_code(f):
    return int.from_bytes(f[3][4:8], "big") if f and f[0] == GOAWAY else None


STATIC_STATUS = {0x88: 200, 0x89: 204, 0x8a: 206, 0x8b: 304, 0x8c: 400, 0x8d: 404, 0x8e: 500}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class H2Test(dmtest.DmTestCase):
    @classmethod
    def setUpEnv(cls):
        env = cls.env
        cls.a = env.backend("a")
        cls.data_dir = env.new_dir()
        cfg = dmtest.base_config(cls.data_dir, dmtest.free_port(), [
            {"hosts": ["h.test", "127.0.0.1"], "to": cls.a.addr, "tls": "local"},
        ], timeouts={"response": "10s", "body": "10s"}, http2={"max_resets": 100})
        cls.d = env.doorman_run(cfg)

    def alive(self):
        self.assertTrue(self.d.proc.alive(), "doorman died")
        r = self.d.curl("h.test", "/hello", "--http2", "-w", "%{http_version}")
        self.assertEqual(dmtest.text(r.stdout), "hello from a\n2")

    def raw(self, **kw):
        c = H2Raw(self.d, **kw)
        self.addCleanup(c.close)
        return c

    # ---- protocol and basics ------------------------------------------------------------

    def test_curl_negotiates_h2_and_http11_still_works(self):
        r = self.d.curl("h.test", "/hello", "--http2", "-w", "%{http_version}")
        self.assertEqual(dmtest.text(r.stdout), "hello from a\n2")
        r = self.d.curl("h.test", "/hello", "--http1.1", "-w", "%{http_version}")
        self.assertEqual(dmtest.text(r.stdout), "hello from a\n1.1")
        self.d.wait_log(lambda l: '"GET h.test/hello HTTP/2.0" 200' in l, what="h2 access line")

    def test_header_translation_to_backend(self):
        r = self.d.curl("h.test", "/headers?x=1", "--http2", "-H", "Cookie: a=1",
                        "-H", "Cookie: b=2", "-H", "X-Forwarded-For: 6.6.6.6",
                        "-H", "X-End-To-End: kept", "-H", "TE: trailers")
        j = json.loads(r.stdout)
        self.assertEqual((j["method"], j["target"], j["version"]), ("GET", "/headers?x=1",
                                                                    "HTTP/1.1"))
        hdrs = [(n.lower(), v) for n, v in j["headers"]]

        def values(name):
            return [v for n, v in hdrs if n == name]
        self.assertEqual(values("cookie"), ["a=1; b=2"], "cookie crumbs not joined (RFC 9113 "
                                                          "§8.2.3)")
        self.assertEqual(values("host"), [f"h.test:{self.d.https_port}"])
        self.assertEqual(values("x-forwarded-for"), ["127.0.0.1"])
        self.assertEqual(values("x-forwarded-proto"), ["https"])
        self.assertEqual(values("x-end-to-end"), ["kept"])
        self.assertEqual(values("te"), [])

    def test_authority_preferred_and_mismatch_rejected(self):
        c = self.raw()
        c.send(c.request_headers(1, "/headers", "h.test"))
        c.send(c.request_headers(3, "/headers", "h.test", extra=[("host", "other.test")]))
        c.send(c.request_headers(5, "/hello", "", extra=[]))
        status = {}
        _, seen = c.frames_until(lambda f: False, timeout=3)
        for t, fl, sid, payload in seen:
            if t == HEADERS and sid in (1, 3, 5):
                status[sid] = STATIC_STATUS.get(payload[0], payload[:4])
            if t == RST_STREAM and sid in (1, 3, 5):
                status.setdefault(sid, "rst")
        self.assertEqual(status.get(1), 200, seen)
        self.assertEqual(status.get(3), 400, "Host differing from :authority accepted")
        self.assertIn(status.get(5), (400, "rst"), "missing authority accepted")

    def test_connection_specific_request_headers_rejected(self):
        # RFC 9113 §8.2.2: malformed, answered with a stream error, not forwarded.
        for name, value in (("connection", "keep-alive"), ("transfer-encoding", "chunked"),
                            ("upgrade", "websocket"), ("te", "gzip"),
                            ("keep-alive", "timeout=5"), ("proxy-connection", "x")):
            with self.subTest(field=name):
                c = self.raw()
                c.send(c.request_headers(1, "/hello", extra=[(name, value)]))
                f, seen = c.frames_until(lambda f: f[2] == 1 and f[0] in (HEADERS, RST_STREAM))
                self.assertIsNotNone(f, seen)
                self.assertEqual(f[0], RST_STREAM, f"{name}: {value} was not rejected")
        self.alive()

    # ---- many streams, big bodies -------------------------------------------------------

    def test_h2load_2000_requests_4_connections_50_streams(self):
        # Default settings (100 streams): h2load opens its 50 streams before our SETTINGS
        # arrive, so a lower limit would refuse some of them (REFUSED_STREAM, retryable).
        env = self.new_env()
        be = env.backend("l")
        d = env.doorman_run(dmtest.base_config(env.new_dir(), dmtest.free_port(), [
            {"hosts": ["h.test", "127.0.0.1"], "to": be.addr, "tls": "local"}]))
        h2load = dmtest.require_tool("h2load", "nghttp2-client")
        r = dmtest.run([h2load, "-n", "2000", "-c", "4", "-m", "50",
                        f"https://127.0.0.1:{d.https_port}/hello"], timeout=60)
        out = dmtest.text(r.stdout)
        self.assertEqual(r.returncode, 0, out + dmtest.text(r.stderr))
        self.assertIn("Application protocol: h2", out)
        self.assertRegex(out, r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, "
                              r"0 failed, 0 errored", out)
        self.assertIn("status codes: 2000 2xx", out)

    def test_nghttp_many_concurrent_streams(self):
        nghttp = dmtest.require_tool("nghttp", "nghttp2-client")
        urls = [f"https://127.0.0.1:{self.d.https_port}/bytes?n={1000 + i}" for i in range(60)]
        r = dmtest.run([nghttp, "-n", "-s", "-H", ":authority: h.test", *urls], timeout=60)
        out = dmtest.text(r.stdout)
        self.assertEqual(r.returncode, 0, out + dmtest.text(r.stderr))
        done = re.findall(r"^\s*\d+\s+\+[\d.]+[mu]s\s+\+[\d.]+[mu]s\s+[\d.]+[mu]s\s+200\s+"
                          r"\S+\s+/bytes\?n=(\d+)$", out, re.M)
        self.assertEqual(sorted(int(n) for n in done), list(range(1000, 1060)), out)

    def curl_parallel(self, d, transfers, timeout=120):
        """Runs one curl with --parallel over a single HTTP/2 connection to d; transfers is a
        list of (path, extra args)."""
        curl = dmtest.require_tool("curl", "curl")
        argv = [curl, "--parallel", "--parallel-max", str(len(transfers))]
        for i, (path, extra) in enumerate(transfers):
            if i:
                argv.append("--next")
            argv += ["-sS", "--http2", "--cacert", d.ca(), "--resolve",
                     f"h.test:{d.https_port}:127.0.0.1", *extra,
                     f"https://h.test:{d.https_port}{path}"]
        r = dmtest.run(argv, timeout=timeout)
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        return r

    def test_8_streams_upload_and_download_16mib_each(self):
        # Its own doorman with generous timeouts: the test backend hashes 128 MiB and makes
        # another 128 MiB, which under sanitizers on a busy machine can leave one of its
        # connections unserved for longer than the shared doorman's 10 s body timeout.
        env = self.new_env()
        be = env.backend("big")
        d = env.doorman_run(dmtest.base_config(env.new_dir(), dmtest.free_port(), [
            {"hosts": ["h.test"], "to": be.addr, "tls": "local"}],
            timeouts={"body": "2m", "response": "2m"}))
        n = 16 * MiB
        transfers, sums = [], []
        for i in range(8):
            src = self.env.path(f"up{i}.bin")
            data = os.urandom(n)
            with open(src, "wb") as f:
                f.write(data)
            sums.append(hashlib.sha256(data).hexdigest())
            transfers.append((f"/sum?i={i}", ["--data-binary", f"@{src}", "-o",
                                              self.env.path(f"up{i}.json")]))
        for i in range(8):
            chunked = "&chunked=1" if i % 2 else ""
            transfers.append((f"/bytes?n={n}&i={i}{chunked}",
                              ["-o", self.env.path(f"down{i}.bin")]))
        self.curl_parallel(d, transfers, timeout=240)
        for i in range(8):
            with open(self.env.path(f"up{i}.json")) as f:
                j = json.load(f)
            self.assertEqual((j["length"], j["sha256"]), (n, sums[i]), f"upload {i}")
        want = hashlib.sha256(pattern(n)).hexdigest()
        for i in range(8):
            with open(self.env.path(f"down{i}.bin"), "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), want, f"download {i}")
        lines = [l for l in d.access_log_lines() if "HTTP/2.0" in l and
                 ("/sum?i=" in l or "&i=" in l)]
        conns = {re.search(r" c=(\d+) ", l).group(1) for l in lines}
        self.assertEqual(len(lines), 16, lines)
        self.assertEqual(len(conns), 1, f"streams spread over connections: {conns}")

    def test_chunked_upload_with_request_trailers(self):
        # No content-length: the body goes to the backend chunked, trailers after it.
        src = self.env.path("chunked-up.bin")
        data = os.urandom(3 * MiB + 7)
        with open(src, "wb") as f:
            f.write(data)
        r = self.d.curl("h.test", "/sum", "--http2", "-H", "Transfer-Encoding:",
                        "-H", "Content-Length:", "--data-binary", f"@{src}")
        j = json.loads(r.stdout)
        self.assertEqual((j["length"], j["sha256"]), (len(data), hashlib.sha256(data).hexdigest()))

    def test_request_trailers_forwarded_in_chunked_body(self):
        # No content-length: the backend gets a chunked body whose last chunk carries the
        # client's trailers; a framing error there would be a 400 from the backend.
        c = self.raw()
        c.send(c.request_headers(1, "/sum", method="POST", end_stream=False))
        c.send(frame(DATA, 0, 1, b"hello ") + frame(DATA, 0, 1, b"world"))
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1,
                     hpack_block([("x-checksum", "abc"), ("x-more", "1")])))
        head, seen = c.frames_until(lambda f: f[2] == 1 and f[0] == HEADERS)
        self.assertIsNotNone(head, seen)
        self.assertEqual(STATIC_STATUS.get(head[3][0]), 200, head)
        body = b""
        while True:
            f = c.read_frame(5)
            self.assertIsNotNone(f, "response body cut")
            if f[0] == DATA and f[2] == 1:
                body += f[3]
                if f[1] & END_STREAM:
                    break
        j = json.loads(body)
        self.assertEqual((j["length"], j["fnv1a64"]), (11, dmtest.fnv1a64(b"hello world")))

    def test_announced_trailers_with_a_length_go_out_chunked(self):
        # A client that sends a content-length and announces trailers (nghttp --trailer):
        # the backend gets the body chunked, so the trailer section can follow; the
        # backend parses the framing (an error would be a 400) and sums the body.
        nghttp = dmtest.require_tool("nghttp", "nghttp2-client")
        src = self.env.path("trailer-up.bin")
        with open(src, "wb") as f:
            f.write(b"hello world")
        r = dmtest.run([nghttp, "-H", ":authority: h.test", "-d", src, "--trailer",
                        "x-checksum: abc", f"https://127.0.0.1:{self.d.https_port}/sum"],
                       timeout=30)
        out = dmtest.text(r.stdout)
        self.assertEqual(r.returncode, 0, out + dmtest.text(r.stderr))
        j = json.loads(out)
        self.assertEqual((j["length"], j["fnv1a64"]), (11, dmtest.fnv1a64(b"hello world")))
        r = dmtest.run([nghttp, "-H", ":authority: h.test", "-d", src, "--trailer",
                        "x-checksum: abc", f"https://127.0.0.1:{self.d.https_port}/headers"],
                       timeout=30)
        names = {h[0].lower(): h[1] for h in json.loads(dmtest.text(r.stdout))["headers"]}
        self.assertEqual(names.get("transfer-encoding"), "chunked", names)
        self.assertNotIn("content-length", names)

    def test_slow_backend_stream_does_not_stall_others(self):
        c = self.raw()
        t0 = time.monotonic()
        c.send(c.request_headers(1, "/delay?ms=3000"))
        c.send(c.request_headers(3, "/hello"))
        f, _ = c.frames_until(lambda f: f[2] == 3 and f[0] == DATA and f[1] & END_STREAM)
        self.assertIsNotNone(f)
        self.assertLess(time.monotonic() - t0, 1.5, "stream 3 waited for stream 1's backend")
        f, _ = c.frames_until(lambda f: f[2] == 1 and f[0] == DATA and f[1] & END_STREAM)
        self.assertEqual(f[3], b"delayed 3000 ms\n")

    def test_response_trailers_end_to_end(self):
        r = self.d.curl("h.test", "/trailers", "--http2", "-v")
        body = dmtest.text(r.stdout)
        self.assertEqual(body, "first chunk\nsecond chunk\nthird chunk\n")
        err = dmtest.text(r.stderr)
        want = dmtest.fnv1a64(r.stdout)
        self.assertIn(f"< x-checksum: {want}", err.lower(), err[-1500:])
        nghttp = dmtest.require_tool("nghttp", "nghttp2-client")
        r = dmtest.run([nghttp, "-v", "-H", ":authority: h.test",
                        f"https://127.0.0.1:{self.d.https_port}/trailers"], timeout=30)
        out = dmtest.text(r.stdout)
        self.assertRegex(out, r"recv \(stream_id=13\) x-checksum: " + want)
        self.assertRegex(out, r"recv HEADERS frame <length=\d+, flags=0x05, stream_id=13>",
                         "trailers not sent as a HEADERS frame with END_STREAM")

    # ---- flow control ---------------------------------------------------------------------

    def test_slow_reader_does_not_make_doorman_buffer_the_body(self):
        n = 512 * MiB
        c = self.raw()
        c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30)))  # connection window only
        base = rss_kib(self.d.proc.pid)
        c.send(c.request_headers(1, f"/bytes?n={n}"))
        time.sleep(2.0)  # the stream's 64 KiB window is used up; backend must be paused
        grown = rss_kib(self.d.proc.pid) - base
        self.assertLess(grown, 16 * 1024, f"RSS grew {grown} KiB for a stalled stream")
        # Another stream on the same connection is not stalled by it.
        c.send(c.request_headers(3, "/hello"))
        f, seen = c.frames_until(lambda f: f[2] == 3 and f[0] == DATA and f[1] & END_STREAM)
        self.assertIsNotNone(f, [(x[0], x[2]) for x in seen])
        self.assertEqual(f[3], b"hello from a\n")
        # Reading resumes the transfer: another 4 MiB arrives once the window opens.
        got = 0
        c.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 8 * MiB)))
        deadline = time.monotonic() + 10
        while got < 4 * MiB and time.monotonic() < deadline:
            f = c.read_frame(2)
            if f is None:
                break
            if f[0] == DATA and f[2] == 1:
                got += len(f[3])
        self.assertGreaterEqual(got, 4 * MiB)
        c.send(frame(RST_STREAM, 0, 1, struct.pack(">I", 8)))
        self.alive()

    # ---- defences -------------------------------------------------------------------------

    def test_settings_advertise_limits(self):
        c = self.raw()
        f, _ = c.frames_until(lambda f: f[0] == SETTINGS and not f[1] & ACK)
        self.assertIsNotNone(f)
        settings = {int.from_bytes(f[3][i:i + 2], "big"): int.from_bytes(f[3][i + 2:i + 6], "big")
                    for i in range(0, len(f[3]), 6)}
        self.assertEqual(settings.get(3), 100, settings)  # MAX_CONCURRENT_STREAMS
        self.assertEqual(settings.get(6), 65536, settings)  # MAX_HEADER_LIST_SIZE

    def test_max_concurrent_streams_enforced(self):
        # A client that ignores SETTINGS_MAX_CONCURRENT_STREAMS (20 here) gets no more than 20
        # streams served; nghttp2 answers the excess with REFUSED_STREAM (before our SETTINGS
        # are acknowledged) or GOAWAY PROTOCOL_ERROR (after), RFC 9113 §5.1.2.
        env = self.new_env()
        be = env.backend("m")
        d = env.doorman_run(dmtest.base_config(env.new_dir(), dmtest.free_port(), [
            {"hosts": ["h.test"], "to": be.addr, "tls": "local"}],
            http2={"max_concurrent_streams": 20}))
        for ack_first in (False, True):
            with self.subTest(ack_first=ack_first):
                c = H2Raw(d)
                self.addCleanup(c.close)
                if ack_first:
                    c.frames_until(lambda f: f[0] == SETTINGS and not f[1] & ACK)
                    c.send(frame(SETTINGS, ACK, 0))
                    time.sleep(0.2)
                ids = list(range(1, 2 * 30, 2))  # 30 streams at once
                c.send(b"".join(c.request_headers(i, "/delay?ms=300") for i in ids))
                done, refused, goaway = set(), set(), None
                deadline = time.monotonic() + 8
                while time.monotonic() < deadline and len(done | refused) < 30:
                    f = c.read_frame(3)
                    if f is None:
                        break
                    if f[0] == DATA and f[1] & END_STREAM:
                        done.add(f[2])
                    elif f[0] == RST_STREAM:
                        refused.add(f[2])
                    elif f[0] == GOAWAY:
                        goaway = goaway_code(f)
                self.assertLessEqual(len(done), 20, "more streams served than the limit")
                self.assertTrue(refused or goaway == PROTOCOL_ERROR, (done, refused, goaway))
                if not ack_first:
                    self.assertEqual(len(done), 20, (done, refused))
        r = d.curl("h.test", "/hello", "--http2", "-w", "%{http_version}")
        self.assertEqual(dmtest.text(r.stdout), "hello from m\n2")

    def test_rapid_reset_gets_goaway_enhance_your_calm(self):
        c = self.raw()
        burst = b""
        for i in range(1, 2 * 400, 2):
            burst += c.request_headers(i, "/delay?ms=2000")
            burst += frame(RST_STREAM, 0, i, struct.pack(">I", 8))  # CANCEL
        try:
            c.send(burst)
        except OSError:
            pass
        f, seen = c.frames_until(lambda f: f[0] == GOAWAY, timeout=10)
        self.assertIsNotNone(f, "no GOAWAY after 400 resets")
        self.assertEqual(goaway_code(f), ENHANCE_YOUR_CALM)
        self.d.wait_log(lambda l: "stream resets" in l and "GOAWAY" in l, what="reset warning")
        self.alive()

    def test_header_list_over_the_limit(self):
        # Fields in CONTINUATION frames adding up to more than limits.header_bytes (64 KiB):
        # the stream is answered 431 and never reaches the backend; the connection stays up.
        c = self.raw()
        before = self.a.stats()["requests"]
        block = hpack_block([(":method", "GET"), (":scheme", "https"),
                             (":path", "/hello?big=1"), (":authority", "h.test")] +
                            [(f"x-big-{i}", "v" * 3000) for i in range(25)])
        pieces = [block[i:i + 16000] for i in range(0, len(block), 16000)]
        self.assertLessEqual(len(pieces), 8)
        data = frame(HEADERS, END_STREAM, 1, pieces[0])
        for k, p in enumerate(pieces[1:], 1):
            data += frame(CONTINUATION, END_HEADERS if k == len(pieces) - 1 else 0, 1, p)
        c.send(data)
        f, seen = c.frames_until(lambda f: f[2] == 1 and f[1] & END_STREAM)
        self.assertIsNotNone(f, [(x[0], x[1], x[2]) for x in seen])
        self.d.wait_log(lambda l: '/hello?big=1 HTTP/2.0" 431' in l, what="431 line")
        self.assertEqual(self.a.stats()["requests"], before, "oversized request forwarded")
        c.send(c.request_headers(3, "/hello"))
        f, _ = c.frames_until(lambda f: f[2] == 3 and f[0] == DATA and f[1] & END_STREAM)
        self.assertEqual(f[3], b"hello from a\n")
        self.alive()

    def test_continuation_flood_is_cut(self):
        # CVE-2024-28182: endless CONTINUATION frames. Debian's nghttp2 1.52 caps them; the
        # connection gets GOAWAY and doorman's memory does not follow the flood.
        c = self.raw()
        block = hpack_block([(":method", "GET"), (":scheme", "https"), (":path", "/hello"),
                             (":authority", "h.test")])
        c.send(frame(HEADERS, END_STREAM, 1, block))
        base = rss_kib(self.d.proc.pid)
        junk = hpack_literal("x-flood", "z" * 1000)
        for _ in range(20000):  # ~20 MB of CONTINUATION without END_HEADERS
            try:
                c.send(frame(CONTINUATION, 0, 1, junk))
            except OSError:
                break
        f, _ = c.frames_until(lambda f: f[0] == GOAWAY, timeout=5)
        self.assertIsNotNone(f, "CONTINUATION flood not answered with GOAWAY")
        self.assertEqual(goaway_code(f), PROTOCOL_ERROR)
        self.assertLess(rss_kib(self.d.proc.pid) - base, 16 * 1024)
        self.alive()

    def test_ping_and_settings_floods_are_cut(self):
        for ftype, payload in ((PING, b"12345678"), (SETTINGS, b"")):
            with self.subTest(frame=ftype):
                c = self.raw()
                closed = False
                one = frame(ftype, 0, 0, payload)
                try:
                    for _ in range(200):  # 200 x 500 frames, never reading the ACKs
                        c.send(one * 500)
                except OSError:
                    closed = True
                if not closed:
                    _, seen = c.frames_until(lambda f: False, timeout=3)
                    # The connection must have ended (read_frame gave None before timeout),
                    # not merely answered every frame.
                    acks = sum(1 for f in seen if f[0] == ftype)
                    self.assertLess(acks, 100000, "every flood frame was answered")
                self.assertTrue(self.d.proc.alive())
        self.alive()

    def test_idle_timeout_sends_goaway(self):
        env = self.new_env()
        be = env.backend("i")
        cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(), [
            {"hosts": ["h.test"], "to": be.addr, "tls": "local"}], timeouts={"idle": "1s"})
        d = env.doorman_run(cfg)
        c = H2Raw(d)
        self.addCleanup(c.close)
        t0 = time.monotonic()
        f, _ = c.frames_until(lambda f: f[0] == GOAWAY, timeout=5)
        self.assertIsNotNone(f, "no GOAWAY on an idle connection")
        self.assertEqual(goaway_code(f), 0)
        self.assertLess(time.monotonic() - t0, 3)
        self.assertIsNone(c.read_frame(3), "idle connection not closed after GOAWAY")

    def test_http2_disabled_by_config(self):
        env = self.new_env()
        be = env.backend("n")
        cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(), [
            {"hosts": ["h.test"], "to": be.addr, "tls": "local"}], http2={"enabled": False})
        d = env.doorman_run(cfg)
        r = d.curl("h.test", "/hello", "--http2", "-w", "%{http_version}")
        self.assertEqual(dmtest.text(r.stdout), "hello from n\n1.1")

    def test_graceful_shutdown_finishes_inflight_stream(self):
        env = self.new_env()
        be = env.backend("g")
        cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(), [
            {"hosts": ["h.test"], "to": be.addr, "tls": "local"}], timeouts={"shutdown": "10s"})
        d = env.doorman_run(cfg)
        c = H2Raw(d)
        self.addCleanup(c.close)
        c.send(c.request_headers(1, "/delay?ms=1500"))
        time.sleep(0.3)
        d.proc.signal(signal.SIGTERM)
        goaway, seen = c.frames_until(lambda f: f[0] == GOAWAY, timeout=3)
        self.assertIsNotNone(goaway, "no GOAWAY on SIGTERM")
        self.assertEqual(goaway_code(goaway), 0)
        self.assertEqual(int.from_bytes(goaway[3][:4], "big") & 0x7FFFFFFF, 1,
                         "GOAWAY must let stream 1 finish")
        f, more = c.frames_until(lambda f: f[2] == 1 and f[0] == DATA and f[1] & END_STREAM,
                                 timeout=5)
        self.assertIsNotNone(f, "in-flight stream cut by shutdown")
        self.assertEqual(f[3], b"delayed 1500 ms\n")
        self.assertEqual(d.proc.wait(5), 0)


if __name__ == "__main__":
    dmtest.main()
