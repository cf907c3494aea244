"""Backend transports (issue 5): TLS to backends with verification and resumption, HTTP/2 to
backends (h2c and h2 over TLS, gRPC-style trailers and streaming), DNS re-resolution on TTL.
Backends: a Python TLS server (stdlib ssl) for HTTP/1.1 over TLS, dm_test_h2_backend (nghttp2)
for HTTP/2, and a tiny authoritative DNS responder for the TTL test. Certificates come from
a test CA made with openssl here."""

import http.server
import json
import os
import re
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402


def openssl(*args, cwd):
    r = dmtest.run(["openssl", *args], cwd=cwd, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)}: {dmtest.text(r.stderr)}")


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj",
            f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return os.path.join(d, f"{name}.pem")


def make_cert(d, ca, name, san, client=False):
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    ext = os.path.join(d, f"{name}.ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName={san}\n")
        f.write("extendedKeyUsage=" + ("clientAuth" if client else "serverAuth") + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext, cwd=d)
    return os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key")


class TLSBackend:
    """An HTTP/1.1 server over TLS in a thread: answers every GET with its name, whether the
    TLS session was resumed, and the client certificate's CN if one was sent."""

    def __init__(self, cert, key, client_ca=None, name="tlsbe"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca)
        self.handshakes = 0
        self.resumed = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                peer = self.connection.getpeercert()
                cn = ""
                if peer:
                    for rdn in peer.get("subject", ()):
                        for k, v in rdn:
                            if k == "commonName":
                                cn = v
                body = (f"{name} path={self.path} resumed={self.connection.session_reused} "
                        f"client={cn or '-'} sni={getattr(self.connection, 'dm_sni', '-')}\n"
                        ).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                if self.path.startswith("/close"):
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

        def on_sni(sock, server_name, _ctx):
            sock.dm_sni = server_name or "-"

        ctx.sni_callback = on_sni

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

            def get_request(self):
                raw, addr = self.socket.accept()
                raw.settimeout(10)
                try:
                    s = ctx.wrap_socket(raw, server_side=True)
                except (ssl.SSLError, OSError):
                    raw.close()
                    raise
                outer.handshakes += 1
                if s.session_reused:
                    outer.resumed += 1
                return s, addr

            def handle_error(self, request, client_address):
                pass

        self.srv = Server(("127.0.0.1", 0), Handler)
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class BackendTLSTest(dmtest.DmTestCase):
    @classmethod
    def setUpEnv(cls):
        env = cls.env
        d = env.new_dir("pki")
        cls.pki = d
        cls.ca = make_ca(d, "testca")
        cls.other_ca = make_ca(d, "otherca")
        cls.cert, cls.key = make_cert(d, "testca", "backend",
                                      "DNS:backend.test,IP:127.0.0.1")
        cls.ccert, cls.ckey = make_cert(d, "testca", "doorman-client", "DNS:doorman.client",
                                        client=True)
        cls.be = TLSBackend(cls.cert, cls.key)
        cls.mbe = TLSBackend(cls.cert, cls.key, client_ca=cls.ca, name="mtls")
        to = f"127.0.0.1:{cls.be.port}"
        mto = f"127.0.0.1:{cls.mbe.port}"
        sites = [
            {"hosts": ["ok.test"], "to": to,
             "upstream": {"tls": {"server_name": "backend.test", "ca": cls.ca}}},
            {"hosts": ["ip.test"], "to": to, "upstream": {"tls": {"ca": cls.ca}}},
            {"hosts": ["wrongname.test"], "to": to,
             "upstream": {"tls": {"server_name": "wrong.test", "ca": cls.ca}}},
            {"hosts": ["unknownca.test"], "to": to,
             "upstream": {"tls": {"server_name": "backend.test", "ca": cls.other_ca}}},
            {"hosts": ["noverify.test"], "to": to,
             "upstream": {"tls": {"server_name": "wrong.test", "verify": False}}},
            {"hosts": ["mtls.test"], "to": mto,
             "upstream": {"tls": {"server_name": "backend.test", "ca": cls.ca,
                                  "client_cert": cls.ccert, "client_key": cls.ckey}}},
            {"hosts": ["nocert.test"], "to": mto,
             "upstream": {"tls": {"server_name": "backend.test", "ca": cls.ca}}},
            {"hosts": ["plain.test"], "to": to},
        ]
        cls.d = env.doorman_run(dmtest.base_config(env.new_dir(), dmtest.free_port(), sites))

    @classmethod
    def tearDownClass(cls):
        cls.be.close()
        cls.mbe.close()
        super().tearDownClass()

    def get(self, host, path="/x"):
        return self.d.request(host, path)

    def test_verified_by_name(self):
        r = self.get("ok.test", "/hello")
        self.assertEqual(r.status, 200, r.body)
        self.assertIn(b"tlsbe path=/hello", r.body)
        self.assertIn(b"sni=backend.test", r.body)

    def test_verified_by_ip_san(self):
        r = self.get("ip.test")
        self.assertEqual(r.status, 200, r.body)
        self.assertIn(b"sni=-", r.body)  # no SNI for an IP address

    def test_wrong_name_is_502_with_reason(self):
        r = self.get("wrongname.test")
        self.assertEqual(r.status, 502)
        self.d.wait_log(lambda l: "wrongname.test" in l and "certificate verify failed" in l
                        and "Hostname mismatch" in l, what="hostname mismatch log line")

    def test_unknown_ca_is_502_with_reason(self):
        r = self.get("unknownca.test")
        self.assertEqual(r.status, 502)
        self.d.wait_log(lambda l: "unknownca.test" in l and "certificate verify failed" in l
                        and "unable to get local issuer certificate" in l,
                        what="unknown CA log line")

    def test_verify_false_works_and_warned_at_load(self):
        r = self.get("noverify.test")
        self.assertEqual(r.status, 200, r.body)
        self.assertIn("sites[4].upstream.tls.verify is false", self.d.proc.stderr())

    def test_mtls(self):
        r = self.get("mtls.test")
        self.assertEqual(r.status, 200, r.body)
        self.assertIn(b"mtls path=/x", r.body)
        self.assertIn(b"client=doorman-client", r.body)
        r = self.get("nocert.test")
        self.assertEqual(r.status, 502)

    def test_plain_http_to_tls_backend_fails(self):
        r = self.get("plain.test")
        self.assertEqual(r.status, 502)

    def test_keepalive_and_session_resumption(self):
        # Pooled: several requests, one handshake.
        h0 = self.be.handshakes
        for _ in range(3):
            self.assertEqual(self.get("ok.test", "/ka").status, 200)
        self.assertEqual(self.be.handshakes - h0, 1, "pooled TLS connection not reused")
        # New connections each time (the backend closes): resumed handshakes.
        bodies = [self.get("ok.test", "/close").body for _ in range(3)]
        self.assertIn(b"resumed=True", bodies[-1], bodies)

    def test_reload_picks_up_a_new_ca_file(self):
        # The CA file first holds the wrong CA (502); after it is replaced and the config
        # reloaded (same path, so same pool), the new trust applies.
        env = self.new_env()
        import json
        import shutil
        ca = env.path("ca-now.pem")
        shutil.copy(self.other_ca, ca)
        data_dir = env.new_dir()
        cfg = dmtest.base_config(data_dir, dmtest.free_port(),
                                 [{"hosts": ["r.test"], "to": f"127.0.0.1:{self.be.port}",
                                   "upstream": {"tls": {"server_name": "backend.test",
                                                        "ca": ca}}}])
        path = env.write_json(cfg)
        d = env.doorman_run(path, data_dir=data_dir)
        d.https_port = cfg["https_port"]
        self.assertEqual(d.request("r.test", "/").status, 502)
        shutil.copy(self.ca, ca)
        with open(path, "w") as out:
            json.dump(cfg, out)
        d.proc.signal(1)
        d.wait_log(lambda log: "reloaded (generation" in log, timeout=10, what="reload")
        self.assertEqual(d.request("r.test", "/").status, 200)

    def test_config_errors_name_the_path(self):
        env = self.new_env()
        cfgs = [
            ({"tls": {"ca": "/nonexistent/x.pem"}},
             "sites[0].upstream.tls.ca: /nonexistent/x.pem: No such file or directory"),
            ({"protocol": "h3"}, 'sites[0].upstream.protocol: must be "http1", "h2c" or "h2"'),
            ({"protocol": "h2c", "tls": True}, "sites[0].upstream.tls:"),
            ({"protocol": "h2", "tls": False}, "sites[0].upstream.tls:"),
            ({"tls": {"client_cert": self.ccert}}, "sites[0].upstream.tls:"),
            ({"tls": {"verfy": False}},
             'sites[0].upstream.tls.verfy: unknown key (did you mean "verify"?)'),
            ({"tls": {"ca": self.key}}, "sites[0].upstream.tls.ca: cannot load CA certificates"),
        ]
        for up, want in cfgs:
            cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(),
                                     [{"hosts": ["a.test"], "to": "127.0.0.1:1", "upstream": up}])
            p = env.write_json(cfg)
            r = dmtest.run([dmtest.doorman_bin(), "validate", "--config", p])
            out = dmtest.text(r.stdout) + dmtest.text(r.stderr)
            self.assertNotEqual(r.returncode, 0, out)
            self.assertIn(want, out, up)


def h2_backend_bin():
    p = os.environ.get("DM_H2_BACKEND_BIN")
    if not p:
        p = os.path.join(os.path.dirname(dmtest.backend_bin()), "dm_test_h2_backend")
    return p


def start_h2_backend(env, name, *args):
    p = env.spawn(f"h2backend-{name}", [h2_backend_bin(), "--name", name, *args])

    def ready():
        if not p.alive():
            raise AssertionError(f"h2 backend exited: {p.stderr()}")
        m = re.search(r"^ready (\d+)", p.stdout(), re.M)
        return int(m.group(1)) if m else None
    return p, dmtest.wait_until(ready, 10, what="h2 backend ready")


def grpc_frame(msg):
    return b"\0" + struct.pack(">I", len(msg)) + msg


class BackendH2Test(dmtest.DmTestCase):
    """h2c and h2 (TLS) backends behind doorman, with HTTP/2 and HTTP/1.1 clients."""

    @classmethod
    def setUpEnv(cls):
        env = cls.env
        d = env.new_dir("pki")
        cls.ca = make_ca(d, "testca")
        cert, key = make_cert(d, "testca", "h2backend", "DNS:h2.backend,IP:127.0.0.1")
        _, cls.h2c_port = start_h2_backend(env, "cleartext")
        _, cls.h2s_port = start_h2_backend(env, "secure", "--tls", cert, key)
        _, cls.lim_port = start_h2_backend(env, "limited", "--max-streams", "3")
        sites = [
            {"hosts": ["c.test"], "to": f"127.0.0.1:{cls.h2c_port}",
             "upstream": {"protocol": "h2c"}},
            {"hosts": ["s.test"], "to": f"127.0.0.1:{cls.h2s_port}",
             "upstream": {"protocol": "h2", "tls": {"ca": cls.ca, "server_name": "h2.backend"}}},
            {"hosts": ["lim.test"], "to": f"127.0.0.1:{cls.lim_port}",
             "upstream": {"protocol": "h2c"}},
        ]
        cls.d = env.doorman_run(dmtest.base_config(env.new_dir(), dmtest.free_port(), sites))

    def nghttp(self, host, path, *args, timeout=60):
        nghttp = dmtest.require_tool("nghttp", "nghttp2-client")
        r = dmtest.run([nghttp, "--no-verify-peer" if False else "-v", "-H",
                        f":authority: {host}", *args,
                        f"https://127.0.0.1:{self.d.https_port}{path}"], timeout=timeout,
                       env={**os.environ, "SSL_CERT_FILE": self.d.ca()})
        return r

    def test_hello_both_client_protocols(self):
        for host, be in (("c.test", "cleartext"), ("s.test", "secure")):
            for proto in ("--http1.1", "--http2"):
                r = self.d.curl(host, "/hello", proto, "-i")
                out = dmtest.text(r.stdout)
                self.assertIn(f"hello from h2 {be}", out, (host, proto))
                self.assertIn("x-backend: " + be, out.lower())

    def test_request_trailers_reach_the_backend(self):
        # A chunked HTTP/1.1 request's trailer section and an HTTP/2 client's trailing
        # HEADERS reach an HTTP/2 backend as a trailing HEADERS frame, over h2c and h2.
        data = b"hello trailers"
        want = f"len={len(data)} fnv={dmtest.fnv1a64(data)} trailers: x-checksum=abc123"
        bf = self.env.path("trailer-req.bin")
        with open(bf, "wb") as f:
            f.write(data)
        chunked = (b"%x\r\n" % len(data)) + data + b"\r\n0\r\nX-Checksum: abc123\r\n\r\n"
        for host in ("c.test", "s.test"):
            resp = self.d.request(host, "/upload", method="POST", body=chunked,
                                  headers=[("Transfer-Encoding", "chunked"),
                                           ("Trailer", "X-Checksum")])
            self.assertEqual(resp.status, 200, host)
            self.assertIn(want, resp.body.decode(), host)
            r = self.nghttp(host, "/upload", "-d", bf, "--trailer", "x-checksum: abc123")
            self.assertIn(want, dmtest.text(r.stdout), host)

    def test_grpc_unary_trailers_to_h2_client(self):
        body = grpc_frame(b"ping 123")
        bf = self.env.path("grpc-req.bin")
        with open(bf, "wb") as f:
            f.write(body)
        for host in ("c.test", "s.test"):
            r = self.nghttp(host, "/grpc.test.Echo/Unary", "-d", bf,
                            "-H", "content-type: application/grpc", "-H", "te: trailers")
            out = dmtest.text(r.stdout)
            self.assertEqual(r.returncode, 0, out[-2000:])
            self.assertRegex(out, r"recv \(stream_id=\d+\) grpc-status: 0")
            self.assertRegex(out, r"recv \(stream_id=\d+\) grpc-message: echoed")
            self.assertRegex(out, r"recv HEADERS frame <length=\d+, flags=0x05, stream_id=\d+>",
                             "trailers not in a final HEADERS frame")
            self.assertIn("ping 123", out)

    def test_grpc_unary_trailers_to_h1_client(self):
        r = self.d.curl("c.test", "/grpc.test.Echo/Unary", "--http1.1", "--raw", "-i",
                        "-H", "content-type: application/grpc", "--data-binary",
                        "@" + self._grpc_file(b"hi"))
        out = dmtest.text(r.stdout)
        self.assertIn("transfer-encoding: chunked", out.lower())
        self.assertRegex(out, r"\r\n0\r\ngrpc-status: 0\r\ngrpc-message: echoed\r\n\r\n$")

    def _grpc_file(self, msg):
        p = self.env.path(f"msg-{len(msg)}.bin")
        with open(p, "wb") as f:
            f.write(grpc_frame(msg))
        return p

    def test_server_streaming_arrives_over_time(self):
        t0 = time.monotonic()
        r = self.nghttp("c.test", "/grpc.test.Echo/Stream", "-d", self._grpc_file(b"go"),
                        "-H", "content-type: application/grpc", "-H", "x-count: 6",
                        "-H", "x-interval-ms: 250")
        took = time.monotonic() - t0
        out = dmtest.text(r.stdout)
        self.assertEqual(r.returncode, 0, out[-2000:])
        for k in range(1, 7):
            self.assertIn(f"message {k} of 6", out)
        self.assertRegex(out, r"recv \(stream_id=\d+\) grpc-status: 0")
        self.assertGreater(took, 1.2)
        # Messages come as separate DATA frames over time, not one buffered lump.
        times = [float(m) for m in re.findall(r"\[\s*([\d.]+)\] recv DATA frame", out)]
        self.assertGreaterEqual(len(times), 6, out[-3000:])
        self.assertGreater(times[-1] - times[0], 1.0)

    def test_many_concurrent_streams_h2_client(self):
        for host in ("c.test", "s.test", "lim.test"):
            urls = [f"https://127.0.0.1:{self.d.https_port}/bytes/{1000 + i}" for i in range(60)]
            nghttp = dmtest.require_tool("nghttp", "nghttp2-client")
            r = dmtest.run([nghttp, "-n", "-s", "-m", "1", "-H", f":authority: {host}", *urls],
                           timeout=60, env={**os.environ, "SSL_CERT_FILE": self.d.ca()})
            out = dmtest.text(r.stdout)
            self.assertEqual(r.returncode, 0, out[-2000:] + dmtest.text(r.stderr)[-2000:])
            self.assertEqual(len(re.findall(r"\s200\s", out)), 60, (host, out[-3000:]))

    def test_concurrent_h1_clients(self):
        results = []

        def one(i):
            r = self.d.curl("lim.test", f"/bytes/{5000 + i}", "--http1.1", check=False)
            results.append(r.returncode == 0 and r.stdout == dmtest.pattern(5000 + i))
        ts = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(results, [True] * 20)

    def test_large_download_and_upload(self):
        n = 20 * 1024 * 1024
        for host in ("c.test", "s.test"):
            r = self.d.curl(host, f"/bytes/{n}", "--http2", "-o", "-")
            self.assertEqual(len(r.stdout), n)
            self.assertEqual(r.stdout[:52], dmtest.pattern(52))
            self.assertEqual(dmtest.fnv1a64(r.stdout[-1000:]), dmtest.fnv1a64(
                dmtest.pattern(1000, n - 1000)))
            data = os.urandom(8 * 1024 * 1024)
            up = self.env.path("upload.bin")
            with open(up, "wb") as f:
                f.write(data)
            want = f"len={len(data)} fnv={dmtest.fnv1a64(data)}"
            for proto in ("--http2", "--http1.1"):
                r = self.d.curl(host, "/upload", proto, "--data-binary", "@" + up)
                self.assertEqual(dmtest.text(r.stdout).strip(), want, (host, proto))
            # chunked upload from an HTTP/1.1 client
            r = self.d.curl(host, "/upload", "--http1.1", "-H", "Transfer-Encoding: chunked",
                            "--data-binary", "@" + up)
            self.assertEqual(dmtest.text(r.stdout).strip(), want)

    def test_backend_reset_is_502(self):
        for proto in ("--http2", "--http1.1"):
            r = self.d.curl("c.test", "/rst", proto, "-o", "/dev/null", "-w", "%{http_code}")
            self.assertEqual(dmtest.text(r.stdout), "502")
        self.d.wait_log(lambda l: "backend reset the HTTP/2 stream" in l, what="reset log")
        # A reset after the response started aborts it (no clean end).
        r = self.d.curl("c.test", "/rst-mid", "--http2", "-o", "/dev/null", check=False)
        self.assertNotEqual(r.returncode, 0)
        r = self.d.curl("c.test", "/rst-mid", "--http1.1", "-o", "/dev/null", check=False)
        self.assertNotEqual(r.returncode, 0)
        # and the connection keeps serving
        r = self.d.curl("c.test", "/hello", "--http2")
        self.assertIn(b"hello from h2 cleartext", r.stdout)

    def _restarting_backend(self, name):
        """A doorman whose site g.test has one h2c backend (its /goaway-once is a graceful
        restart), debug logs on for the replay line."""
        _, port = start_h2_backend(self.env, name)
        cfg = dmtest.base_config(self.env.new_dir(), dmtest.free_port(),
                                 [{"hosts": ["g.test"], "to": f"127.0.0.1:{port}",
                                   "upstream": {"protocol": "h2c"}}], log={"level": "debug"})
        return self.env.doorman_run(cfg)

    def test_graceful_goaway_replays_the_refused_request(self):
        # A backend restarting gracefully (GOAWAY below our stream: not processed, RFC 9113
        # section 8.7) costs the client nothing: the body-less request goes out again on a
        # new connection to the same, single backend.
        d = self._restarting_backend("restarting")
        first = re.search(r"x-conn: (\d+)", dmtest.text(d.curl("g.test", "/hello", "-i").stdout))
        r = d.curl("g.test", "/goaway-once", "-i")
        out = dmtest.text(r.stdout)
        self.assertIn("200", out.splitlines()[0], out)
        self.assertIn("hello from h2 restarting", out)
        self.assertNotEqual(re.search(r"x-conn: (\d+)", out).group(1), first.group(1))
        d.wait_log(lambda l: "refused unprocessed goes out again" in l, what="replay log line")

    def test_graceful_goaway_replays_a_request_with_a_body(self):
        # gRPC calls and form posts carry a body: kept (up to 64 KiB) until the answer
        # starts, it goes out again whole on the new connection, from either client
        # protocol, with a length or chunked.
        data = os.urandom(40 * 1024)
        up = self.env.path("replay-body.bin")
        with open(up, "wb") as f:
            f.write(data)
        want = f"len={len(data)} fnv={dmtest.fnv1a64(data)}"
        for i, args in enumerate([["--http2"], ["--http1.1"],
                                  ["--http1.1", "-H", "Transfer-Encoding: chunked"]]):
            d = self._restarting_backend(f"restarting-{i}")
            first = re.search(r"x-conn: (\d+)",
                              dmtest.text(d.curl("g.test", "/hello", "-i").stdout)).group(1)
            r = d.curl("g.test", "/goaway-once", "-i", *args, "--data-binary", "@" + up)
            out = dmtest.text(r.stdout)
            self.assertIn("200", out.splitlines()[0], (args, out))
            self.assertIn(want, out, args)
            self.assertNotEqual(re.search(r"x-conn: (\d+)", out).group(1), first, args)
            d.wait_log(lambda l: "refused unprocessed goes out again" in l,
                       what="replay log line")

    def test_refused_request_too_big_to_keep_gets_502(self):
        # Past 64 KiB the request is not kept: a refusal is a 502, never a second copy.
        d = self._restarting_backend("restarting-big")
        up = self.env.path("big-body.bin")
        with open(up, "wb") as f:
            f.write(os.urandom(100 * 1024))
        r = d.curl("g.test", "/goaway-once", "-o", "/dev/null", "-w", "%{http_code}",
                   "--data-binary", "@" + up)
        self.assertEqual(dmtest.text(r.stdout), "502")
        self.assertFalse(any("refused unprocessed goes out again" in l
                             for l in d.access_log_lines()))
        # The backend is fine: the next request is answered.
        out = dmtest.text(d.curl("g.test", "/goaway-once", "-i").stdout)
        self.assertIn("hello from h2 restarting-big", out)

    def test_backend_goaway(self):
        conn = re.search(r"x-conn: (\d+)",
                         dmtest.text(self.d.curl("lim.test", "/hello", "-i").stdout)).group(1)
        # The backend answers GOAWAY leaving the stream unprocessed: 502 (REFUSED_STREAM),
        # and the next request goes out on a new connection.
        r = self.d.curl("lim.test", "/goaway", "-o", "/dev/null", "-w", "%{http_code}")
        self.assertEqual(dmtest.text(r.stdout), "502")
        self.d.wait_log(lambda l: "lim.test/goaway" in l and "REFUSED_STREAM" in l,
                        what="refused stream log line")
        out = dmtest.text(self.d.curl("lim.test", "/hello", "-i").stdout)
        self.assertIn("hello from h2 limited", out)
        self.assertNotEqual(re.search(r"x-conn: (\d+)", out).group(1), conn)


class BackendH2FailureTest(dmtest.DmTestCase):
    """Clients leaving mid-stream, and the HTTP/2 backend going away."""

    def test_client_abort_then_backend_death(self):
        env = self.new_env()
        bp, port = start_h2_backend(env, "fragile")
        cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(),
                                 [{"hosts": ["f.test"], "to": f"127.0.0.1:{port}",
                                   "upstream": {"protocol": "h2c"}}])
        d = env.doorman_run(cfg)
        # A long server stream whose client gives up after a moment: doorman resets the
        # backend stream and the shared connection keeps serving.
        curl = dmtest.require_tool("curl", "curl")
        r = dmtest.run([curl, "-sS", "--http2", "--max-time", "1", "--cacert", d.ca(),
                        "--resolve", f"f.test:{d.https_port}:127.0.0.1",
                        "-H", "content-type: application/grpc", "-H", "x-count: 50",
                        "-H", "x-interval-ms: 200", "--data-binary", "x",
                        f"https://f.test:{d.https_port}/grpc.test.Echo/Stream"], timeout=10)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"message 1 of 50", r.stdout)
        for _ in range(3):
            r = d.curl("f.test", "/hello", "--http2", "-i")
            self.assertIn("x-conn: 1", dmtest.text(r.stdout).lower(),
                          "the multiplexed backend connection was not reused")
        # The backend dies: requests get 502 (connect refused), not a hang.
        bp.stop()
        r = d.curl("f.test", "/hello", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}",
                   check=False)
        self.assertEqual(dmtest.text(r.stdout), "502")
        # It comes back on the same port: traffic flows again on a new connection.
        bp2, _ = start_h2_backend(env, "again", "--listen", f"127.0.0.1:{port}")
        r = d.curl("f.test", "/hello", "--http2")
        self.assertIn(b"hello from h2 again", r.stdout)


    def test_unreachable_h2c_backend_is_retried_on_another(self):
        # One of two h2c backends refuses connections: its requests move to the other
        # (upstream.retries) instead of failing, for both client protocols.
        env = self.new_env()
        _, port = start_h2_backend(env, "survivor")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"  # closed again: connections are refused
        cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(),
                                 [{"hosts": ["r.test"], "to": [dead, f"127.0.0.1:{port}"],
                                   "upstream": {"protocol": "h2c", "passive": {"fails": 0}}}])
        d = env.doorman_run(cfg)
        for proto in ("--http1.1", "--http2"):
            for _ in range(4):
                r = d.curl("r.test", "/hello", proto)
                self.assertIn(b"hello from h2 survivor", r.stdout, proto)
        d.wait_log(lambda l: "retrying on 127.0.0.1:%d" % port in l, what="retry log line")


class HealthOverTransportsTest(dmtest.DmTestCase):
    """Active health checks speak the site's backend transport: TLS verified like requests
    (a backend whose certificate fails verification is down, with the reason), and HTTP/2
    for h2c and h2 backends (an HTTP/1.1 probe would fail on every one of them)."""

    @classmethod
    def setUpEnv(cls):
        env = cls.env
        d = env.new_dir("pki")
        ca = make_ca(d, "testca")
        other_ca = make_ca(d, "otherca")
        cert, key = make_cert(d, "testca", "backend", "DNS:backend.test,IP:127.0.0.1")
        cls.tls_be = TLSBackend(cert, key)
        cls.h2c_proc, h2c_port = start_h2_backend(env, "hc-cleartext")
        _, h2s_port = start_h2_backend(env, "hc-secure", "--tls", cert, key)
        check = {"path": "/hello", "interval": "300ms", "timeout": "300ms", "fails": 1,
                 "passes": 1}
        tls = {"server_name": "backend.test", "ca": ca}
        cls.addrs = {"tls.test": f"127.0.0.1:{cls.tls_be.port}",
                     "badca.test": f"127.0.0.1:{cls.tls_be.port}",
                     "h2c.test": f"127.0.0.1:{h2c_port}", "h2s.test": f"127.0.0.1:{h2s_port}"}
        sites = [
            {"hosts": ["tls.test"], "to": cls.addrs["tls.test"],
             "upstream": {"tls": tls, "health_check": check}},
            {"hosts": ["badca.test"], "to": cls.addrs["badca.test"],
             "upstream": {"tls": {**tls, "ca": other_ca}, "health_check": check}},
            {"hosts": ["h2c.test"], "to": cls.addrs["h2c.test"],
             "upstream": {"protocol": "h2c", "health_check": check}},
            {"hosts": ["h2s.test"], "to": cls.addrs["h2s.test"],
             "upstream": {"protocol": "h2", "tls": tls, "health_check": check}},
        ]
        cls.data_dir = env.new_dir()
        cls.d = env.doorman_run(dmtest.base_config(cls.data_dir, dmtest.free_port(), sites))
        cls.sock = os.path.join(cls.data_dir, "admin.sock")
        dmtest.wait_until(lambda: os.path.exists(cls.sock), 10, what="admin socket")

    @classmethod
    def tearDownClass(cls):
        cls.tls_be.close()
        super().tearDownClass()

    def state(self, host):
        curl = dmtest.require_tool("curl", "curl")
        r = dmtest.run([curl, "-sS", "--unix-socket", self.sock, "http://doorman/upstreams"])
        for site in json.loads(dmtest.text(r.stdout)):
            if host in site["hosts"]:
                return site["backends"][0]
        raise AssertionError(host)

    def wait_state(self, host, healthy):
        return dmtest.wait_until(
            lambda: (lambda b: b if b["healthy"] == healthy and b.get("last_check") is not
                     None else None)(self.state(host)), 10,
            what=f"{host} healthy={healthy}")

    def test_tls_backend_checked_over_tls(self):
        b = self.wait_state("tls.test", True)
        self.assertEqual(b["last_check"]["status"], 200, b)
        self.assertEqual(self.d.request("tls.test", "/x").status, 200)

    def test_unverifiable_tls_backend_is_down_with_the_reason(self):
        b = self.wait_state("badca.test", False)
        self.assertIn("certificate verify failed", b.get("reason", ""), b)
        r = self.d.request("badca.test", "/x")
        self.assertEqual(r.status, 503, r.body)

    def test_h2_backends_checked_over_http2(self):
        for host in ("h2c.test", "h2s.test"):
            b = self.wait_state(host, True)
            self.assertEqual(b["last_check"]["status"], 200, (host, b))
            self.assertEqual(self.d.request(host, "/hello").status, 200)

    def test_h2c_backend_stopped_goes_down(self):
        self.wait_state("h2c.test", True)
        self.h2c_proc.stop(timeout=10)
        b = self.wait_state("h2c.test", False)
        self.assertRegex(b.get("reason", ""), "connect refused|closed", b)


class TinyDNS:
    """An authoritative DNS responder on 127.0.0.1 (UDP): A queries for one name get the
    current address with the current TTL; AAAA gets no records; other names NXDOMAIN."""

    def __init__(self, name, ip, ttl):
        self.name = name.lower().rstrip(".")
        self.ip = ip
        self.ttl = ttl
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            self._serve()
        except OSError:
            pass  # closed

    def _serve(self):
        while not self.stopping:
            data, peer = self.sock.recvfrom(4096)
            if len(data) < 12:
                continue
            qid = data[:2]
            i, labels = 12, []
            while i < len(data) and data[i] != 0:
                n = data[i]
                labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
                i += 1 + n
            question = data[12:i + 5]
            qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
            qname = ".".join(labels).lower()
            self.queries += 1
            if qname != self.name:
                hdr = qid + struct.pack(">HHHHH", 0x8183, 1, 0, 0, 0)
                self.sock.sendto(hdr + question, peer)
                continue
            if qtype != 1:
                hdr = qid + struct.pack(">HHHHH", 0x8180, 1, 0, 0, 0)
                self.sock.sendto(hdr + question, peer)
                continue
            hdr = qid + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
            ans = struct.pack(">HHHIH", 0xC00C, 1, 1, self.ttl, 4) + socket.inet_aton(self.ip)
            self.sock.sendto(hdr + question + ans, peer)

    def close(self):
        self.stopping = True
        self.sock.close()


class BackendDNSTest(dmtest.DmTestCase):
    """A backend named in DNS: traffic follows the A record once its TTL has passed, and the
    last good address keeps serving while the resolver is down."""

    def test_traffic_moves_after_ttl(self):
        env = self.new_env()
        port = dmtest.free_port("127.0.0.2")
        a = env.backend("alpha", listen=f"127.0.0.2:{port}")
        b = env.backend("beta", listen=f"127.0.0.3:{port}")
        dns = TinyDNS("svc.dmtest", "127.0.0.2", ttl=2)
        self.addCleanup(dns.close)
        rc = env.path("resolv.conf")
        with open(rc, "w") as f:
            f.write(f"nameserver 127.0.0.1:{dns.port}\noptions timeout:1 attempts:2\n")
        cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(),
                                 [{"hosts": ["dns.test"], "to": f"svc.dmtest:{port}"}])
        d = env.doorman_run(cfg, env={**os.environ, "DOORMAN_RESOLV_CONF": rc})

        def who():
            r = d.request("dns.test", "/hello")
            self.assertEqual(r.status, 200, r.body)
            return r.header("X-Backend")
        self.assertEqual([who() for _ in range(5)], ["alpha"] * 5)
        q0 = dns.queries
        dns.ip = "127.0.0.3"
        # Within the TTL the cached answer holds: no new query, still alpha.
        self.assertEqual(who(), "alpha")
        self.assertEqual(dns.queries, q0)
        t0 = time.monotonic()
        seen = []
        while time.monotonic() - t0 < 8:
            seen.append(who())
            if seen[-1] == "beta":
                break
            time.sleep(0.1)
        self.assertEqual(seen[-1], "beta", seen)
        self.assertGreater(time.monotonic() - t0, 0.5)
        self.assertEqual([who() for _ in range(5)], ["beta"] * 5)
        # The resolver goes away: the last good address keeps serving past the TTL.
        dns.close()
        time.sleep(2.5)
        self.assertEqual([who() for _ in range(3)], ["beta"] * 3)
        # Let the last refresh give up (timeout:1 attempts:2) before doorman stops: a lookup
        # still in flight at exit is freed by libevent only from the loop, and LeakSanitizer
        # would report it.
        time.sleep(3)
        del a, b


if __name__ == "__main__":
    dmtest.main()
