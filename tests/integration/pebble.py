"""Pebble (the ACME test CA) and pebble-challtestsrv on free loopback ports, per
shared/notes/pebble.md: a throw-away API certificate, challtestsrv answering every A query
with 127.0.0.1 and no AAAA (Pebble dials only the first address), PEBBLE_VA_NOSLEEP=1, and
the validation ports (httpPort, tlsPort) pointed at the doorman under test. Pebble itself is
Debian's with our lock-order fixes (DM_PEBBLE_BIN, built by tests/pebble/build.sh): the
packaged one wedges for good when many orders run at once."""

import json
import os
import ssl
import urllib.request

import dmtest


class Pebble:
    def __init__(self, env, http_port, tls_port, nonce_reject=0, authz_reuse=0,
                 extra_config=None, extra_env=None):
        self.env = env
        pebble = dmtest.pebble_bin()
        dmtest.require_tool("pebble-challtestsrv", "pebble")
        openssl = dmtest.require_tool("openssl", "openssl")
        d = env.new_dir("pebble")
        self.dir = d
        self.api_ca = os.path.join(d, "api-ca.pem")
        run = lambda *a: dmtest.run([openssl, *a], timeout=30)  # noqa: E731
        r = run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-days", "30", "-subj", "/CN=pebble api CA", "-keyout",
                os.path.join(d, "api-ca.key"), "-out", self.api_ca)
        assert r.returncode == 0, dmtest.text(r.stderr)
        r = run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
                "/CN=localhost", "-keyout", os.path.join(d, "api.key"), "-out",
                os.path.join(d, "api.csr"))
        assert r.returncode == 0, dmtest.text(r.stderr)
        with open(os.path.join(d, "api.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        r = run("x509", "-req", "-in", os.path.join(d, "api.csr"), "-CA", self.api_ca, "-CAkey",
                os.path.join(d, "api-ca.key"), "-CAcreateserial", "-days", "30", "-extfile",
                os.path.join(d, "api.ext"), "-out", os.path.join(d, "api.pem"))
        assert r.returncode == 0, dmtest.text(r.stderr)
        self.port = dmtest.free_port()
        self.mgmt_port = dmtest.free_port()
        self.dns_port = dmtest.free_port()
        self.cts_port = dmtest.free_port()
        cfg = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": os.path.join(d, "api.pem"),
            "privateKey": os.path.join(d, "api.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}
        if extra_config:
            cfg["pebble"].update(extra_config)
        cfg_path = os.path.join(d, "pebble.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        self.cts = env.spawn("challtestsrv", [
            "pebble-challtestsrv", "-management", f"127.0.0.1:{self.cts_port}",
            "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "",
            "-tlsalpn01", "", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        penv = dict(os.environ)
        penv.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT=str(nonce_reject),
                    PEBBLE_AUTHZREUSE=str(authz_reuse))
        penv.update(extra_env or {})  # may override the defaults above
        self.proc = env.spawn("pebble", [
            pebble, "-config", cfg_path, "-dnsserver", f"127.0.0.1:{self.dns_port}",
            "-strict"], env=penv)
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self._ctx = ssl.create_default_context(cafile=self.api_ca)
        dmtest.wait_until(self._up, 20, interval=0.1, what="pebble /dir")
        self.root_pem = self.mgmt("/roots/0")

    def _up(self):
        if not self.proc.alive():
            raise AssertionError(f"pebble exited: {self.proc.stderr()}")
        try:
            self.get(self.directory)
            return True
        except OSError:
            return False

    def get(self, url):
        with urllib.request.urlopen(url, context=self._ctx, timeout=5) as r:
            return r.read().decode()

    def mgmt(self, path):
        return self.get(f"https://127.0.0.1:{self.mgmt_port}{path}")

    def root_file(self):
        p = os.path.join(self.dir, "pebble-root.pem")
        with open(p, "w") as f:
            f.write(self.root_pem)
        return p

    def orders_started(self):
        """How many orders Pebble logged (its log line per new order)."""
        return self.proc.stdout().count("POST /order-plz") + \
            self.proc.stderr().count("POST /order-plz")
