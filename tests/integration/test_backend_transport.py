"""Backend transports (issue 5): TLS to backends with verification and resumption, HTTP/2 to
backends (h2c and h2 over TLS, gRPC-style trailers and streaming), DNS re-resolution on TTL.
Backends: a Python TLS server (stdlib ssl) for HTTP/1.1 over TLS, dm_test_h2_backend (nghttp2)
for HTTP/2, and a tiny authoritative DNS responder for the TTL test. Certificates come from
a test CA made with openssl here."""

import http.server
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

    def test_config_errors_name_the_path(self):
        env = self.new_env()
        cfgs = [
            ({"tls": {"ca": "/nonexistent/x.pem"}},
             "sites[0].upstream.tls.ca: cannot read /nonexistent/x.pem: No such file or directory"),
            ({"protocol": "h3"}, 'sites[0].upstream.protocol: must be "http1", "h2c" or "h2"'),
            ({"protocol": "h2c", "tls": True}, "sites[0].upstream.tls:"),
            ({"protocol": "h2", "tls": False}, "sites[0].upstream.tls:"),
            ({"tls": {"client_cert": self.ccert}}, "sites[0].upstream.tls:"),
            ({"tls": {"verfy": False}}, "sites[0].upstream.tls.verfy: unknown key"),
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


if __name__ == "__main__":
    dmtest.main()
