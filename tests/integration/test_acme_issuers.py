"""Several issuers for one site (tls.acme.fallback) against two Pebble instances on loopback,
both validating on doorman's ports: the first refuses the name (domainBlocklist, so newOrder
fails with rejectedIdentifier), and after 2 failed orders in a row (retry_first "1s") doorman
switches to the second, whose certificate is then served (verified against the second
Pebble's root only). A restart serves the certificate stored under the second CA without a
new order, and a name the first CA accepts still comes from the first."""

import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from pebble import Pebble  # noqa: E402

BLOCKED = "blocked.example.test"
ALLOWED = "allowed.example.test"


def issuer(pebble, **extra):
    a = {"ca": pebble.directory, "ca_root": pebble.api_ca, "email": "ops@example.test",
         "agree_tos": True, "challenges": ["tls-alpn-01"]}
    a.update(extra)
    return a


class AcmeIssuersTest(dmtest.DmTestCase):
    def wait_issued(self, d, host, timeout=30):
        pat = re.compile(rf"certificate (issued|renewed) names={re.escape(host)}\b")
        dmtest.wait_until(lambda: pat.search(d.proc.stderr()) or
                          (not d.proc.alive() and self.fail("doorman died")), timeout,
                          interval=0.05, what=f"certificate for {host}")

    def curl(self, d, host, cafile):
        curl = dmtest.require_tool("curl", "curl")
        return dmtest.run([curl, "-sS", "--cacert", cafile, "--resolve",
                           f"{host}:{d.https_port}:127.0.0.1",
                           f"https://{host}:{d.https_port}/hello"], timeout=20)

    def test_fallback_issuer_after_two_failures(self):
        env = self.new_env()
        https_port, http_port = dmtest.free_port(), dmtest.free_port()
        first = Pebble(env, http_port=http_port, tls_port=https_port,
                       extra_config={"domainBlocklist": [BLOCKED]})
        second = Pebble(env, http_port=http_port, tls_port=https_port)
        backend = env.backend("app")
        sites = [{"hosts": [host], "to": backend.addr,
                  "tls": {"acme": issuer(first, retry_first="1s",
                                         fallback=[issuer(second)])}}
                 for host in (BLOCKED, ALLOWED)]
        cfg = dmtest.base_config(env.new_dir(), https_port, sites, http_port=http_port,
                                 log={"level": "debug"})
        d = env.doorman_run(cfg)
        t0 = time.monotonic()
        self.wait_issued(d, BLOCKED, timeout=30)
        took = time.monotonic() - t0
        log = d.proc.stderr()
        # Two rejected orders at the first CA, 1 s then 2 s apart, then the switch.
        self.assertEqual(len(re.findall(
            rf"order for {re.escape(BLOCKED)} failed .*rejectedIdentifier.* "
            rf"ca={re.escape(first.directory)}$", log, re.M)), 2, log)
        self.assertIn(f"{BLOCKED}: switching to the next issuer {second.directory} after 2 "
                      f"failures with {first.directory}", log)
        self.assertIn(f"ordering a certificate for {BLOCKED} from {second.directory}", log)
        self.assertRegex(log, rf"certificate issued names={re.escape(BLOCKED)} "
                              rf"issuer=acme-127_0_0_1-{second.port}\b")
        # Served with the second CA's certificate: only its root verifies it.
        r = self.curl(d, BLOCKED, second.root_file())
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        self.assertEqual(dmtest.text(r.stdout), "hello from app\n")
        self.assertNotEqual(self.curl(d, BLOCKED, first.root_file()).returncode, 0)
        # The other site never failed: its certificate comes from the first CA.
        self.wait_issued(d, ALLOWED)
        self.assertRegex(log + d.proc.stderr(), rf"certificate issued names={re.escape(ALLOWED)} "
                                                rf"issuer=acme-127_0_0_1-{first.port}\b")
        r = self.curl(d, ALLOWED, first.root_file())
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        self.assertNotIn(f"{ALLOWED}: switching", d.proc.stderr())
        print(f"{BLOCKED} issued by the fallback CA {took:.3f}s after doorman was ready",
              file=sys.stderr)
        # Restart: the certificate stored under the second CA is found and served at once.
        d.proc.signal(15)
        d.proc.wait(15)
        d2 = env.doorman_run(cfg, name="doorman-again")
        r = self.curl(d2, BLOCKED, second.root_file())
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        time.sleep(0.5)
        self.assertNotIn("ordering a certificate", d2.proc.stderr())
        # doorman revoke finds the certificate under the CA that issued it (the fallback).
        r = dmtest.run([dmtest.doorman_bin(), "revoke", "--config", d2.config_path, "--name",
                        BLOCKED, "--reason", "4"], timeout=60)
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        m = re.search(r"serial ([0-9a-f]+)", dmtest.text(r.stdout))
        self.assertIsNotNone(m, dmtest.text(r.stdout))
        status = json.loads(second.mgmt(f"/cert-status-by-serial/{m.group(1)}"))
        self.assertEqual((status["Status"], status["Reason"]), ("Revoked", 4), status)


if __name__ == "__main__":
    dmtest.main()
