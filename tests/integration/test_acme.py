"""Certificates from a real ACME CA (Pebble on loopback): tls-alpn-01 answered inside
doorman's TLS handshake, http-01 on its plain-HTTP port, the chain verified against Pebble's
root, a restart that reuses the stored certificate and account without a new order, badNonce
retries under a high nonce-rejection rate, and the quick command's --ca flags."""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from pebble import Pebble  # noqa: E402


def acme_site(host, backend, pebble, challenges):
    return {"hosts": [host], "to": backend.addr,
            "tls": {"acme": {"ca": pebble.directory, "ca_root": pebble.api_ca,
                             "email": "ops@example.test", "agree_tos": True,
                             "challenges": challenges}}}


class AcmeTest(dmtest.DmTestCase):
    def start(self, env, pebble_kwargs=None, sites=None, data_dir=None):
        https_port, http_port = dmtest.free_port(), dmtest.free_port()
        pebble = Pebble(env, http_port=http_port, tls_port=https_port, **(pebble_kwargs or {}))
        backend = env.backend("app")
        data_dir = data_dir or env.new_dir()
        sites = sites or [acme_site("alpn.example.test", backend, pebble, ["tls-alpn-01"]),
                          acme_site("http.example.test", backend, pebble, ["http-01"])]
        cfg = dmtest.base_config(data_dir, https_port, sites, http_port=http_port,
                                 log={"level": "debug"})
        d = env.doorman_run(cfg)
        return pebble, backend, d, cfg

    def wait_issued(self, d, host, timeout=30):
        pat = re.compile(rf"certificate (issued|renewed) names={re.escape(host)}\b")
        dmtest.wait_until(lambda: pat.search(d.proc.stderr()) or
                          (not d.proc.alive() and self.fail("doorman died")), timeout,
                          interval=0.05, what=f"certificate for {host}")

    def curl_verified(self, d, pebble, host):
        curl = dmtest.require_tool("curl", "curl")
        r = dmtest.run([curl, "-sS", "--cacert", pebble.root_file(), "--resolve",
                        f"{host}:{d.https_port}:127.0.0.1", f"https://{host}:{d.https_port}/hello"],
                       timeout=20)
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        return dmtest.text(r.stdout)

    def test_tls_alpn_and_http01_issue_and_restart_reuses(self):
        env = self.new_env()
        pebble, backend, d, cfg = self.start(env)
        t0 = time.monotonic()
        self.wait_issued(d, "alpn.example.test")
        self.wait_issued(d, "http.example.test")
        took = time.monotonic() - t0
        log = d.proc.stderr()
        self.assertIn("tls-alpn-01 validation connection for alpn.example.test", log)
        self.assertIn("http-01 challenge answered for http.example.test", log)
        for host in ("alpn.example.test", "http.example.test"):
            self.assertEqual(self.curl_verified(d, pebble, host), "hello from app\n")
        print(f"both certificates issued {took:.3f}s after doorman was ready", file=sys.stderr)
        # Stored atomically with the key 0600.
        key = os.path.join(cfg["data_dir"], "certificates")
        keys = [os.path.join(dp, f) for dp, _, fs in os.walk(key) for f in fs if f == "key.pem"]
        self.assertEqual(len(keys), 2, keys)
        for k in keys:
            self.assertEqual(os.stat(k).st_mode & 0o777, 0o600)
        # `doorman certificates` lists both, with the CA as issuer.
        r = dmtest.run([dmtest.doorman_bin(), "certificates", "--data-dir", cfg["data_dir"]])
        out = dmtest.text(r.stdout)
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        for host in ("alpn.example.test", "http.example.test"):
            self.assertRegex(out, rf"(?m)^{re.escape(host)}\s+acme-127_0_0_1-{pebble.port}\s+20\d\d-")
        # Restart on the same data directory: served at once, no new order.
        d.proc.signal(15)
        d.proc.wait(15)
        d2 = env.doorman_run(cfg, name="doorman-again")
        for host in ("alpn.example.test", "http.example.test"):
            self.assertEqual(self.curl_verified(d2, pebble, host), "hello from app\n")
        time.sleep(0.5)
        self.assertNotIn("ordering a certificate", d2.proc.stderr())

    def test_bad_nonces_are_retried(self):
        env = self.new_env()
        pebble, backend, d, cfg = self.start(env, pebble_kwargs={"nonce_reject": 60,
                                                                 "authz_reuse": 50})
        self.wait_issued(d, "alpn.example.test", timeout=60)
        self.wait_issued(d, "http.example.test", timeout=60)
        self.assertEqual(self.curl_verified(d, pebble, "alpn.example.test"), "hello from app\n")

    def test_failed_validation_backs_off_and_reports(self):
        env = self.new_env()
        https_port, http_port = dmtest.free_port(), dmtest.free_port()
        # Pebble validates http-01 on a port where nothing listens: the challenge fails.
        pebble = Pebble(env, http_port=dmtest.free_port(), tls_port=https_port)
        backend = env.backend("app")
        cfg = dmtest.base_config(env.new_dir(), https_port,
                                 [acme_site("fail.example.test", backend, pebble, ["http-01"])],
                                 http_port=http_port)
        d = env.doorman_run(cfg)
        dmtest.wait_until(lambda: "order for fail.example.test failed" in d.proc.stderr(), 30,
                          interval=0.1, what="order failure logged")
        log = d.proc.stderr()
        # The CA's own problem type and detail reach the log, and the retry is backed off.
        self.assertRegex(log, r"order for fail\.example\.test failed \(attempt 1\), retrying in 60s: "
                              r"\S*connection\S*: .*fail\.example\.test")
        self.assertTrue(d.proc.alive())

    def test_two_processes_sharing_storage_order_once(self):
        env = self.new_env()
        https_port, http_port = dmtest.free_port(), dmtest.free_port()
        pebble = Pebble(env, http_port=http_port, tls_port=https_port)
        backend = env.backend("app")
        data_dir = env.new_dir()
        site = acme_site("shared.example.test", backend, pebble, ["tls-alpn-01"])
        site["tls"]["acme"]["retry_first"] = "1s"
        # A lock left by a process that crashed mid-order (expiring in 3 s): the first process
        # waits for it instead of ordering, then takes it over.
        locks = os.path.join(data_dir, "certificates", ".locks")
        os.makedirs(locks)
        with open(os.path.join(locks, f"order-acme-127_0_0_1-{pebble.port}-shared.example.test"
                               ".lock"), "w") as f:
            f.write(f"{int(time.time()) + 3} 1\n")
        a = env.doorman_run(dmtest.base_config(data_dir, https_port, [site], http_port=http_port,
                                               log={"level": "debug"}), name="doorman-a")
        dmtest.wait_until(lambda: "another process is ordering a certificate for shared" in
                          a.proc.stderr(), 20, interval=0.02, what="first process waiting")
        self.assertNotIn("ordering a certificate for shared.example.test from", a.proc.stderr())
        dmtest.wait_until(lambda: "ordering a certificate for shared.example.test from" in
                          a.proc.stderr(), 20,
                          interval=0.05, what="first process ordering after the lock expired")
        # The second process shares the data directory but not the validation ports: it must
        # wait for the first one's order and adopt the stored certificate.
        b = env.doorman_run(dmtest.base_config(data_dir, dmtest.free_port(), [site],
                                               http_port=dmtest.free_port(),
                                               log={"level": "debug"}), name="doorman-b")
        self.wait_issued(a, "shared.example.test")
        # b either found the lock held and adopted what a stored, or started after a had
        # stored it: either way it serves a's certificate without ordering.
        def b_serves():
            curl = dmtest.require_tool("curl", "curl")
            r = dmtest.run([curl, "-sS", "--cacert", pebble.root_file(), "--resolve",
                            f"shared.example.test:{b.https_port}:127.0.0.1",
                            f"https://shared.example.test:{b.https_port}/hello"], timeout=10)
            return r.returncode == 0 and dmtest.text(r.stdout) == "hello from app\n"
        dmtest.wait_until(b_serves, 30, interval=0.2, what="second process serving")
        self.assertNotIn("ordering a certificate for shared.example.test from", b.proc.stderr())

    def test_quick_command_with_ca_flags(self):
        env = self.new_env()
        https_port, http_port = dmtest.free_port(), dmtest.free_port()
        pebble = Pebble(env, http_port=http_port, tls_port=https_port)
        backend = env.backend("app")
        d = env.doorman_quick("quick.example.test", backend.addr, https_port=https_port,
                              http_port=http_port,
                              extra_args=("--ca", pebble.directory, "--ca-root", pebble.api_ca,
                                          "--email", "ops@example.test"))
        self.wait_issued(d, "quick.example.test")
        self.assertEqual(self.curl_verified(d, pebble, "quick.example.test"), "hello from app\n")


if __name__ == "__main__":
    dmtest.main()
