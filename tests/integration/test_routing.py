"""Routing by SNI and Host, certificates from the local CA, the plain-HTTP redirect and the
quick `reverse-proxy` mode."""

import os
import re
import socket
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from dmtest import read_response, request_bytes  # noqa: E402


def san_dns_names(cert):
    return [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]


class RoutingTest(dmtest.DmTestCase):
    @classmethod
    def setUpEnv(cls):
        env = cls.env
        cls.a = env.backend("a")
        cls.b = env.backend("b")
        cls.c = env.backend("c")
        cls.data_dir = env.new_dir()
        cfg = dmtest.base_config(cls.data_dir, dmtest.free_port(), [
            {"hosts": ["a.test"], "to": cls.a.addr, "tls": "local"},
            {"hosts": ["b.test"], "to": [cls.b.addr], "tls": "local"},
            {"hosts": ["*.w.test"], "to": cls.c.addr, "tls": "local"},
        ], http_port=dmtest.free_port(), redirect_http=True)
        cls.d = env.doorman_run(cfg)

    def test_curl_routes_by_sni_and_host(self):
        for host, name in (("a.test", "a"), ("b.test", "b"), ("x.w.test", "c"),
                           ("other.w.test", "c")):
            with self.subTest(host=host):
                r = self.d.curl(host, "/hello", "-D", "-")
                out = dmtest.text(r.stdout)
                self.assertRegex(out, r"^HTTP/(1\.1|2) 200")
                self.assertIn(f"hello from {name}\n", out)
                self.assertRegex(out, rf"(?im)^x-backend: {name}\r?$")

    def test_certificate_names_verified_by_local_ca(self):
        for sni, ok_names in (("a.test", {"a.test"}), ("b.test", {"b.test"}),
                              ("x.w.test", {"x.w.test", "*.w.test"})):
            with self.subTest(sni=sni):
                # connect() verifies the chain against the local CA root and checks the name.
                with self.d.connect(sni) as s:
                    cert = s.getpeercert()
                    self.assertEqual(s.selected_alpn_protocol(), "http/1.1")
                    self.assertIn(s.version(), ("TLSv1.2", "TLSv1.3"))
                names = set(san_dns_names(cert))
                self.assertTrue(names & ok_names, f"SAN {names} has none of {ok_names}")

    def test_openssl_s_client_verifies_chain(self):
        openssl = dmtest.require_tool("openssl", "openssl")
        r = dmtest.run([openssl, "s_client", "-connect", f"127.0.0.1:{self.d.https_port}",
                        "-servername", "b.test", "-verify_hostname", "b.test", "-CAfile",
                        self.d.ca(), "-verify_return_error", "-alpn", "http/1.1"],
                       input_bytes=b"", timeout=20)
        out = dmtest.text(r.stdout)
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr) + out)
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertIn("ALPN protocol: http/1.1", out)
        pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
        self.assertIsNotNone(pem, "no certificate in s_client output")
        x = dmtest.run([openssl, "x509", "-noout", "-ext", "subjectAltName"],
                       input_bytes=pem.group(0).encode())
        self.assertIn("DNS:b.test", dmtest.text(x.stdout))

    def test_tls12_only_client_works(self):
        ctx = self.d.ssl_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", self.d.https_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="a.test") as s:
                self.assertEqual(s.version(), "TLSv1.2")
                s.sendall(request_bytes("GET", "/hello", "a.test", [("Connection", "close")]))
                self.assertEqual(read_response(s.makefile("rb")).body, b"hello from a\n")

    def test_unknown_host_is_404(self):
        r = self.d.request("nothere.test", "/hello", sni="a.test")
        self.assertEqual(r.status, 404)
        # Wildcards match exactly one label (RFC 6125 §6.4.3).
        r = self.d.request("deep.x.w.test", "/hello", sni="x.w.test")
        self.assertEqual(r.status, 404)

    def test_host_of_another_site_than_sni_is_421(self):
        r = self.d.request("b.test", "/hello", sni="a.test")
        self.assertEqual(r.status, 421)
        self.assertNotEqual(r.header("X-Backend"), "b", "request leaked to the other site")

    def test_host_port_and_case_are_normalised(self):
        r = self.d.request(f"A.Test:{self.d.https_port}", "/hello", sni="a.test")
        self.assertEqual((r.status, r.body), (200, b"hello from a\n"))
        r = self.d.request("y.w.test", "/hello", sni="x.w.test")  # same wildcard site
        self.assertEqual((r.status, r.body), (200, b"hello from c\n"))

    def test_http_port_redirects_308(self):
        with socket.create_connection(("127.0.0.1", self.d.http_port), timeout=10) as s:
            s.sendall(request_bytes("GET", "/some/path?q=1&r=2", "a.test",
                                    [("Connection", "close")]))
            r = read_response(s.makefile("rb"))
        self.assertEqual(r.status, 308)
        self.assertEqual(r.header("Location"),
                         f"https://a.test:{self.d.https_port}/some/path?q=1&r=2")
        self.assertIsNone(r.header("X-Backend"), "plain HTTP reached a backend")

    def test_redirect_followed_by_curl(self):
        port = self.d.http_port
        r = dmtest.run(["curl", "-sS", "-L", "--max-time", "20", "--cacert", self.d.ca(),
                        "--resolve", f"b.test:{port}:127.0.0.1",
                        "--resolve", f"b.test:{self.d.https_port}:127.0.0.1",
                        f"http://b.test:{port}/hello"], timeout=30)
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        self.assertEqual(dmtest.text(r.stdout), "hello from b\n")


class QuickModeTest(dmtest.DmTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.a = cls.env.backend("qa")
        cls.b = cls.env.backend("qb")

    def test_backend_address_forms(self):
        """A backend by host name (resolved with evdns, never blocking), on a unix socket and
        on IPv6 loopback."""
        env = self.new_env()
        ux_path = os.path.join(env.new_dir("ux"), "app.sock")
        ux = env.backend("ux", listen=f"unix:{ux_path}")
        by_name = env.backend("byname")
        sites = [
            {"hosts": ["name.test"], "to": f"localhost:{by_name.port}"},
            {"hosts": ["unix.test"], "to": f"unix:{ux_path}"},
        ]
        v6 = env.backend("v6", listen="[::1]:0")
        sites.append({"hosts": ["v6.test"], "to": f"[::1]:{v6.port}"})
        cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(), sites)
        d = env.doorman_run(cfg)
        self.assertEqual(d.request("name.test", "/hello").body, b"hello from byname\n")
        self.assertEqual(d.request("unix.test", "/hello").body, b"hello from ux\n")
        self.assertEqual(d.request("v6.test", "/hello").body, b"hello from v6\n")
        self.assertTrue(ux.proc.alive())

    def test_reverse_proxy_localhost(self):
        env = self.new_env()
        d = env.doorman_quick("localhost", self.a.addr)
        r = d.curl("localhost", "/hello")
        self.assertEqual(dmtest.text(r.stdout), "hello from qa\n")
        with d.connect("localhost") as s:
            self.assertIn("localhost", san_dns_names(s.getpeercert()))

    def test_reverse_proxy_two_backends_share_load(self):
        env = self.new_env()
        d = env.doorman_quick("localhost", [self.a.addr, self.b.addr])
        seen = set()
        for _ in range(20):
            seen.add(d.request("localhost", "/hello").header("X-Backend"))
            if seen == {"qa", "qb"}:
                break
        self.assertEqual(seen, {"qa", "qb"})


if __name__ == "__main__":
    dmtest.main()
