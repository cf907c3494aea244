"""ACME account commands against Pebble on loopback: `doorman account rollover` (RFC 8555
§7.3.5) replaces the stored account key only after the CA accepted the new one, a restarted
doorman orders with the new key while Pebble refuses the old one; `doorman account
deactivate` (§7.3.6) after which Pebble refuses the account and the next run registers a new
one; and `doorman revoke --with-cert-key` (§7.6), signed by the certificate's own key with no
account at all, checked in Pebble's records."""

import glob
import json
import os
import re
import shutil
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from pebble import Pebble  # noqa: E402

EMAIL = "ops@example.test"


def acme_site(host, backend, pebble):
    return {"hosts": [host], "to": backend.addr,
            "tls": {"acme": {"ca": pebble.directory, "ca_root": pebble.api_ca, "email": EMAIL,
                             "agree_tos": True, "challenges": ["tls-alpn-01"]}}}


def issued_re(host):
    return re.compile(rf"certificate (?:issued|renewed) names={re.escape(host)}\b")


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


class AcmeAccountTest(dmtest.DmTestCase):
    def start(self, env, hosts):
        """Pebble pointed at a fresh doorman's ports, then doorman serving hosts; returns
        (pebble, backend, doorman, config)."""
        https_port, http_port = dmtest.free_port(), dmtest.free_port()
        pebble = Pebble(env, http_port=http_port, tls_port=https_port)
        backend = env.backend("app")
        cfg = dmtest.base_config(env.new_dir(), https_port,
                                 [acme_site(h, backend, pebble) for h in hosts],
                                 http_port=http_port, log={"level": "debug"})
        return pebble, backend, env.doorman_run(cfg), cfg

    def restart_with(self, env, cfg, backend, pebble, hosts, name):
        """Doorman again on cfg's data directory and ports, now serving hosts."""
        cfg2 = dict(cfg, sites=[acme_site(h, backend, pebble) for h in hosts])
        return env.doorman_run(cfg2, name=name)

    def wait_issued(self, d, host, timeout=30):
        pat = issued_re(host)
        dmtest.wait_until(lambda: pat.search(d.proc.stderr()) or
                          (not d.proc.alive() and self.fail("doorman died")), timeout,
                          interval=0.05, what=f"certificate for {host}")

    def doorman(self, *args):
        """Runs a one-shot doorman command; a sanitizer report fails the test."""
        r = dmtest.run([dmtest.doorman_bin(), *args], timeout=60)
        self.assertIsNone(dmtest.SANITIZER_REPORT.search(dmtest.text(r.stderr)),
                          dmtest.text(r.stderr))
        return r

    def account_dir(self, data_dir):
        dirs = glob.glob(os.path.join(data_dir, "acme", "*", EMAIL))
        self.assertEqual(len(dirs), 1, dirs)
        return dirs[0]

    def kid(self, acct):
        return json.loads(read(os.path.join(acct, "account.json")))["kid"]

    def key_kind(self, path):
        openssl = dmtest.require_tool("openssl", "openssl")
        r = dmtest.run([openssl, "pkey", "-in", path, "-noout", "-text"])
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        return re.search(r"ASN1 OID: \S+|Private-Key: \(\d+ bit", dmtest.text(r.stdout)).group(0)

    def copy_with_key(self, env, cfg, key_pem, json_text):
        """A copy of cfg's data directory whose account holds key_pem and json_text: the
        commands then sign as that (old) key. Returns the copy's path."""
        copy = env.new_dir("copy")
        shutil.rmtree(copy)
        shutil.copytree(cfg["data_dir"], copy)
        acct = self.account_dir(copy)
        for name in os.listdir(acct):
            os.unlink(os.path.join(acct, name))
        with open(os.path.join(acct, "account.key"), "w") as f:
            f.write(key_pem)
        os.chmod(os.path.join(acct, "account.key"), 0o600)
        with open(os.path.join(acct, "account.json"), "w") as f:
            f.write(json_text)
        return copy

    # ---- rollover ---------------------------------------------------------------------------

    def test_rollover_new_key_orders_old_key_refused(self):
        env = self.new_env()
        pebble, backend, d, cfg = self.start(env, ["one.example.test"])
        self.wait_issued(d, "one.example.test")
        self.assertEqual(d.proc.stop(timeout=10), 0)
        acct = self.account_dir(cfg["data_dir"])
        key_path = os.path.join(acct, "account.key")
        old_key, old_json, kid = read(key_path), read(os.path.join(acct, "account.json")), \
            self.kid(acct)
        old_kind = self.key_kind(key_path)

        r = self.doorman("account", "rollover", "--config", d.config_path, "--site",
                         "one.example.test")
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        self.assertEqual(dmtest.text(r.stdout), f"rolled over the key of account {kid}\n")
        self.assertNotEqual(read(key_path), old_key)
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        self.assertEqual(self.key_kind(key_path), old_kind)  # same algorithm (P-256)
        self.assertEqual(self.kid(acct), kid)  # same account
        self.assertEqual(sorted(os.listdir(acct)), ["account.json", "account.key"])

        # The new key orders: a new site on the same account gets a certificate.
        d2 = self.restart_with(env, cfg, backend, pebble, ["one.example.test",
                                                           "two.example.test"], "doorman-2")
        self.wait_issued(d2, "two.example.test")
        log = d2.proc.stderr()
        self.assertNotRegex(log, r"account \S+ (created|found):")  # no new registration
        self.assertNotRegex(log, r"order for two\.example\.test failed")
        self.assertEqual(d2.proc.stop(timeout=10), 0)

        # The old key no longer signs for the account: Pebble refuses it, and the refused
        # rollover leaves the (old) key in place and no account.key.next behind.
        copy = self.copy_with_key(env, cfg, old_key, old_json)
        r = self.doorman("account", "rollover", "--config", d.config_path, "--data-dir", copy,
                         "--site", "one.example.test")
        self.assertEqual(r.returncode, 1, dmtest.text(r.stdout))
        err = dmtest.text(r.stderr)
        self.assertRegex(err, r"doorman account rollover: one\.example\.test: malformed: JWS "
                              r"verification error")
        copy_acct = self.account_dir(copy)
        self.assertEqual(read(os.path.join(copy_acct, "account.key")), old_key)
        self.assertFalse(os.path.exists(os.path.join(copy_acct, "account.key.next")))
        print(f"old key after rollover: {err.strip().splitlines()[-1]}", file=sys.stderr)

        # A leftover account.key.next (an earlier rollover without an answer) is never
        # overwritten: it may be the only key the CA accepts.
        with open(os.path.join(acct, "account.key.next"), "w") as f:
            f.write("leftover")
        r = self.doorman("account", "rollover", "--config", d.config_path, "--site",
                         "one.example.test")
        self.assertEqual(r.returncode, 1)
        self.assertIn("an earlier rollover did not finish", dmtest.text(r.stderr))
        self.assertEqual(read(os.path.join(acct, "account.key.next")), "leftover")

    def test_rollover_keeps_rsa_size(self):
        """An account key imported as RSA 3072 is rolled over to a new RSA 3072 key."""
        env = self.new_env()
        https_port, http_port = dmtest.free_port(), dmtest.free_port()
        pebble = Pebble(env, http_port=http_port, tls_port=https_port)
        data_dir = env.new_dir()
        cfg = dmtest.base_config(data_dir, https_port, [
            {"hosts": ["rsa.example.test"], "to": "127.0.0.1:9",
             "tls": {"acme": {"ca": pebble.directory, "ca_root": pebble.api_ca, "email": EMAIL,
                              "agree_tos": True}}}], http_port=http_port)
        cfg_path = env.write_json(cfg)
        port_slug = f"127.0.0.1-{pebble.port}-dir"
        acct = os.path.join(data_dir, "acme", port_slug, EMAIL)
        os.makedirs(acct, mode=0o700)
        openssl = dmtest.require_tool("openssl", "openssl")
        key_path = os.path.join(acct, "account.key")
        r = dmtest.run([openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:3072", "-out", key_path])
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        os.chmod(key_path, 0o600)
        old_key = read(key_path)
        # Only the key is known: the command looks the account up (Pebble has none, so it is
        # registered with that key), then rolls it over.
        r = self.doorman("account", "rollover", "--config", cfg_path, "--site",
                         "rsa.example.test")
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        self.assertRegex(dmtest.text(r.stdout), r"^rolled over the key of account https://")
        self.assertNotEqual(read(key_path), old_key)
        self.assertEqual(self.key_kind(key_path), "Private-Key: (3072 bit")
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)

    # ---- deactivation -----------------------------------------------------------------------

    def test_deactivate_then_next_run_registers_new_account(self):
        env = self.new_env()
        pebble, backend, d, cfg = self.start(env, ["one.example.test"])
        self.wait_issued(d, "one.example.test")
        self.assertEqual(d.proc.stop(timeout=10), 0)
        acct = self.account_dir(cfg["data_dir"])
        old_key, old_json, kid1 = read(os.path.join(acct, "account.key")), \
            read(os.path.join(acct, "account.json")), self.kid(acct)

        r = self.doorman("account", "deactivate", "--config", d.config_path, "--site",
                         "one.example.test")
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        self.assertEqual(dmtest.text(r.stdout),
                         f"deactivated account {kid1}; the next run registers a new account\n")
        self.assertEqual(sorted(os.listdir(acct)),
                         ["account.json.deactivated", "account.key.deactivated"])

        # Pebble refuses the deactivated account, even with its own key.
        copy = self.copy_with_key(env, cfg, old_key, old_json)
        r = self.doorman("account", "deactivate", "--config", d.config_path, "--data-dir", copy,
                         "--site", "one.example.test")
        self.assertEqual(r.returncode, 1)
        err = dmtest.text(r.stderr)
        self.assertRegex(err, r"doorman account deactivate: one\.example\.test: unauthorized: "
                              r".*deactivated")
        print(f"deactivated account: {err.strip().splitlines()[-1]}", file=sys.stderr)

        # Nothing left to act on here.
        for sub in ("deactivate", "rollover"):
            r = self.doorman("account", sub, "--config", d.config_path, "--site",
                             "one.example.test")
            self.assertEqual(r.returncode, 1)
            self.assertIn("no ACME account key", dmtest.text(r.stderr))
        self.assertFalse(os.path.exists(os.path.join(acct, "account.key")))

        # The next run registers a new account (new key, new kid) and orders with it.
        d2 = self.restart_with(env, cfg, backend, pebble, ["one.example.test",
                                                           "two.example.test"], "doorman-2")
        self.wait_issued(d2, "two.example.test")
        kid2 = self.kid(acct)
        self.assertNotEqual(kid2, kid1)
        self.assertIn(f"account {EMAIL} created: {kid2}", d2.proc.stderr())
        self.assertNotEqual(read(os.path.join(acct, "account.key")), old_key)
        self.assertEqual(d2.proc.stop(timeout=10), 0)

    # ---- usage ------------------------------------------------------------------------------

    def test_usage_errors(self):
        env = self.new_env()
        cfg = env.write_json(dmtest.base_config(env.new_dir(), dmtest.free_port(), [
            {"hosts": ["local.example.test"], "to": "127.0.0.1:9"}]))
        for args, rc, msg in (
                ((), 2, "expected rollover or deactivate"),
                (("rotate",), 2, "expected rollover or deactivate"),
                (("rollover", "--config", cfg), 2, "--site NAME are required"),
                (("rollover", "--config", cfg, "--site", "x", "--bogus"), 2, "unknown"),
                (("rollover", "--config", cfg, "--site", "x", "extra"), 2, "unexpected argument"),
                (("deactivate", "--config", cfg, "--site", "local.example.test"), 1,
                 "no site with that name uses an ACME CA")):
            r = self.doorman("account", *args)
            self.assertEqual(r.returncode, rc, (args, dmtest.text(r.stderr)))
            self.assertIn(msg, dmtest.text(r.stderr), args)
        r = self.doorman("account", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("doorman account rollover", dmtest.text(r.stdout))

    # ---- revocation by the certificate key --------------------------------------------------

    def test_revoke_with_cert_key_needs_no_account(self):
        env = self.new_env()
        host = "certkey.example.test"
        pebble, _, d, cfg = self.start(env, [host])
        self.wait_issued(d, host)
        self.assertEqual(d.proc.stop(timeout=10), 0)
        chain = glob.glob(os.path.join(cfg["data_dir"], "certificates", "*", host, "cert.pem"))
        self.assertEqual(len(chain), 1, chain)
        openssl = dmtest.require_tool("openssl", "openssl")
        r = dmtest.run([openssl, "x509", "-in", chain[0], "-noout", "-serial"])
        serial = dmtest.text(r.stdout).strip().split("=", 1)[1].lower().lstrip("0")
        self.assertEqual(json.loads(pebble.mgmt(f"/cert-status-by-serial/{serial}"))["Status"],
                         "Valid")
        # No account at all: the certificate's key alone signs (RFC 8555 §7.6).
        acme_dir = os.path.join(cfg["data_dir"], "acme")
        os.rename(acme_dir, acme_dir + ".moved")
        r = self.doorman("revoke", "--config", d.config_path, "--name", host, "--reason", "1",
                         "--with-cert-key")
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        self.assertEqual(dmtest.text(r.stdout), f"revoked {host} serial {serial}\n")
        status = json.loads(pebble.mgmt(f"/cert-status-by-serial/{serial}"))
        self.assertEqual((status["Status"], status["Reason"]), ("Revoked", 1), status)
        self.assertFalse(os.path.exists(acme_dir))  # no account was made
        r = self.doorman("revoke", "--config", d.config_path, "--name", host, "--with-cert-key")
        self.assertEqual(r.returncode, 1)
        self.assertRegex(dmtest.text(r.stderr), rf"doorman revoke: {re.escape(host)}: "
                                                r"alreadyRevoked")


if __name__ == "__main__":
    dmtest.main()
