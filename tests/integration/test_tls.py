"""TLS behaviour: protocol versions, ciphers, ALPN, session resumption with tickets, clients
without SNI, unknown names."""

import os
import socket
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from dmtest import read_response, request_bytes  # noqa: E402


class TlsTest(dmtest.DmTestCase):
    @classmethod
    def setUpEnv(cls):
        env = cls.env
        cls.a = env.backend("a")
        cls.data_dir = env.new_dir()
        cfg = dmtest.base_config(cls.data_dir, dmtest.free_port(), [
            {"hosts": ["a.test"], "to": cls.a.addr, "tls": "local"},
            {"hosts": ["b.test"], "to": cls.a.addr, "tls": "local"},
        ])
        cls.d = env.doorman_run(cfg)

    def s_client(self, *args, input_bytes=b""):
        openssl = dmtest.require_tool("openssl", "openssl")
        return dmtest.run([openssl, "s_client", "-connect", f"127.0.0.1:{self.d.https_port}",
                           "-CAfile", self.d.ca(), *args], input_bytes=input_bytes, timeout=20)

    def test_old_protocols_refused(self):
        for flag in ("-tls1", "-tls1_1"):
            with self.subTest(flag=flag):
                r = self.s_client("-servername", "a.test", flag)
                self.assertNotEqual(r.returncode, 0, dmtest.text(r.stdout))

    def test_tls13_and_tls12_with_modern_ciphers(self):
        r = self.s_client("-servername", "a.test", "-tls1_3")
        self.assertIn("New, TLSv1.3, Cipher is TLS_", dmtest.text(r.stdout))
        r = self.s_client("-servername", "a.test", "-tls1_2")
        out = dmtest.text(r.stdout)
        self.assertRegex(out, r"New, TLSv1\.2, Cipher is ECDHE-(ECDSA|RSA)-"
                              r"(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)")
        # CBC and static-RSA suites are not offered by the server.
        r = self.s_client("-servername", "a.test", "-tls1_2", "-cipher", "AES128-SHA:AES256-SHA")
        self.assertNotEqual(r.returncode, 0, dmtest.text(r.stdout))

    def test_session_resumption_with_tickets(self):
        for flag in ("-tls1_2", "-tls1_3"):
            with self.subTest(flag=flag):
                sess = os.path.join(self.env.new_dir("sess"), "s.pem")
                # TLS 1.3 tickets arrive after the handshake: send a request so the client
                # reads them before it saves the session.
                req = request_bytes("GET", "/hello", "a.test", [("Connection", "close")])
                r = self.s_client("-servername", "a.test", flag, "-sess_out", sess,
                                  "-ign_eof", input_bytes=req)
                self.assertIn("hello from a", dmtest.text(r.stdout))
                r = self.s_client("-servername", "a.test", flag, "-sess_in", sess,
                                  "-ign_eof", input_bytes=req)
                out = dmtest.text(r.stdout)
                self.assertIn("Reused,", out, out[-2000:])
                self.assertIn("hello from a", out)

    def test_alpn_h2_http11_and_no_alpn(self):
        # Our preference decides: h2 over http/1.1, whatever the client's order.
        r = self.s_client("-servername", "a.test", "-alpn", "http/1.1,h2")
        self.assertIn("ALPN protocol: h2", dmtest.text(r.stdout))
        r = self.s_client("-servername", "a.test", "-alpn", "http/1.1")
        self.assertIn("ALPN protocol: http/1.1", dmtest.text(r.stdout))
        r = self.s_client("-servername", "a.test", "-alpn", "spdy/3")
        self.assertIn("No ALPN negotiated", dmtest.text(r.stdout))

    def test_acme_tls_alpn_without_challenge_fails(self):
        # A validation handshake must never get the site's normal certificate.
        r = self.s_client("-servername", "a.test", "-alpn", "acme-tls/1")
        self.assertNotEqual(r.returncode, 0, dmtest.text(r.stdout))
        self.assertNotIn("BEGIN CERTIFICATE", dmtest.text(r.stdout))

    def test_unknown_sni_fails_handshake(self):
        ctx = self.d.ssl_context()
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", self.d.https_port), timeout=10) as raw:
            with self.assertRaises(ssl.SSLError):
                ctx.wrap_socket(raw, server_hostname="unknown.test")

    def test_no_sni_gets_default_certificate(self):
        ctx = self.d.ssl_context()
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", self.d.https_port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as s:
                cert = s.getpeercert()
                names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
                self.assertEqual(names, ["a.test"])
                s.sendall(request_bytes("GET", "/hello", "a.test", [("Connection", "close")]))
                self.assertEqual(read_response(s.makefile("rb")).status, 200)

    def test_sni_and_host_of_different_sites_get_421(self):
        r = self.d.request("b.test", "/hello", sni="a.test")
        self.assertEqual(r.status, 421)


if __name__ == "__main__":
    dmtest.main()
