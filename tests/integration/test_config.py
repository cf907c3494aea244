"""Configuration files: `run` refuses bad ones with the JSON path in the message, every
examples/*.json validates, and examples/doorman.json really runs and proxies."""

import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from dmtest import text  # noqa: E402

EXAMPLES = os.path.join(dmtest.source_dir(), "examples")


def site_addrs(site):
    to = site.get("to", [])
    return [to] if isinstance(to, str) else list(to)


def request_host(site):
    """A concrete name served by the site (x.example.com for *.example.com)."""
    host = site["hosts"][0]
    return "x" + host[1:] if host.startswith("*.") else host


class ConfigTest(dmtest.DmTestCase):
    def run_refuses(self, cfg, needle):
        env = self.new_env()
        d = env.doorman_run(cfg(env), wait=False)
        rc = d.proc.wait(timeout=15)
        self.assertIsNotNone(rc, "doorman started with an invalid config")
        self.assertEqual(rc, 1)
        self.assertIn(needle, d.proc.stderr())
        self.assertFalse(dmtest.port_accepts(d.https_port), "listened with an invalid config")

    def test_run_refuses_bad_backend_address(self):
        def cfg(env):
            return dmtest.base_config(env.new_dir(), dmtest.free_port(), [
                {"hosts": ["a.test"], "to": "abc", "tls": "local"}])
        self.run_refuses(cfg, 'sites[0].to: "abc" is not host:port')

    def test_run_refuses_unknown_key(self):
        def cfg(env):
            c = dmtest.base_config(env.new_dir(), dmtest.free_port(), [
                {"hosts": ["a.test"], "to": "127.0.0.1:9", "tls": "local"}])
            c.setdefault("limits", {})["max_conections"] = 5
            return c
        self.run_refuses(cfg, "limits.max_conections")

    def test_run_refuses_missing_cert_files(self):
        def cfg(env):
            return dmtest.base_config(env.new_dir(), dmtest.free_port(), [
                {"hosts": ["a.test"], "to": "127.0.0.1:9",
                 "tls": {"cert": env.path("no-cert.pem"), "key": env.path("no-key.pem")}}])
        self.run_refuses(cfg, "sites[0].tls")

    def test_examples_validate(self):
        files = sorted(glob.glob(os.path.join(EXAMPLES, "*.json")))
        self.assertTrue(files, f"no example configs in {EXAMPLES}")
        self.assertIn(os.path.join(EXAMPLES, "doorman.json"), files)
        env = self.new_env()
        for path in files:
            with self.subTest(example=os.path.basename(path)):
                r = dmtest.run([dmtest.doorman_bin(), "validate", "--config", path,
                                "--data-dir", env.new_dir()], cwd=EXAMPLES)
                if r.returncode == 0:
                    continue
                # Examples may name certificate files that only exist on the
                # reader's server (/etc/doorman/...): that and nothing else
                # may fail, and it must fail with the field's path.
                problems = [l for l in text(r.stderr).splitlines()
                            if l and "is invalid" not in l]
                self.assertTrue(problems, text(r.stderr))
                for line in problems:
                    self.assertRegex(line, r"sites\[\d+\]\.tls\.(cert|key|acme\.dns_hook): /etc/doorman/\S+: "
                                           r"No such file or directory", text(r.stderr))

    def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(self):
        env = self.new_env()
        a, b = env.backend("a"), env.backend("b")
        data_dir = env.new_dir()
        port = dmtest.free_port()
        cfg = dmtest.base_config(data_dir, port, [{"hosts": ["a.test"], "to": a.addr}])
        path = env.write_json(cfg)
        d = env.doorman_run(path, data_dir=data_dir)
        d.https_port = port
        self.assertEqual(d.request("a.test", "/hello").body, b"hello from a\n")
        # Keep a connection open across the reload: it keeps working.
        s = d.connect("a.test")
        f = s.makefile("rb")
        s.sendall(dmtest.request_bytes("GET", "/hello", "a.test"))
        self.assertEqual(dmtest.read_response(f).status, 200)
        # Add a site, change a.test's backend.
        cfg["sites"] = [{"hosts": ["a.test"], "to": b.addr}, {"hosts": ["n.test"], "to": a.addr}]
        with open(path, "w") as out:
            json.dump(cfg, out)
        d.proc.signal(1)
        d.wait_log(lambda log: "reloaded (generation" in log, timeout=10, what="reload")
        self.assertEqual(d.request("n.test", "/hello").body, b"hello from a\n")
        self.assertEqual(d.request("a.test", "/hello").body, b"hello from b\n")
        s.sendall(dmtest.request_bytes("GET", "/hello", "a.test", [("Connection", "close")]))
        self.assertEqual(dmtest.read_response(f).status, 200)
        s.close()
        # A bad config: refused with the path of the bad field, the running one stays.
        cfg["sites"][1]["to"] = "abc"
        with open(path, "w") as out:
            json.dump(cfg, out)
        d.proc.signal(1)
        d.wait_log(lambda log: "keeping the running config" in log, timeout=10,
                   what="refused reload")
        self.assertIn('sites[1].to: "abc" is not host:port', d.proc.stderr())
        self.assertEqual(d.request("n.test", "/hello").status, 200)
        self.assertTrue(d.proc.alive())

    def test_example_doorman_json_runs_and_proxies(self):
        path = os.path.join(EXAMPLES, "doorman.json")
        self.assertTrue(os.path.exists(path), f"{path} missing")
        with open(path) as f:
            cfg = json.load(f)
        env = self.new_env()
        # Only what the test machine forces changes: private ports, a temp data dir, loopback.
        cfg["data_dir"] = env.new_dir()
        cfg["bind"] = "127.0.0.1"
        cfg["https_port"] = dmtest.free_port()
        cfg["http_port"] = dmtest.free_port() if cfg.get("http_port", 80) else 0
        self.assertTrue(cfg.get("sites"), "examples/doorman.json has no sites")
        for site in cfg.get("sites", []):
            tls = site.get("tls")
            if isinstance(tls, dict):  # file paths in the example are relative to examples/
                for k in ("cert", "key"):
                    if k in tls and not os.path.isabs(tls[k]):
                        tls[k] = os.path.join(EXAMPLES, tls[k])
        started = {}  # backend address as written -> Backend
        for i, site in enumerate(cfg["sites"]):
            addrs = site_addrs(site)
            for j, addr in enumerate(addrs):
                host, _, port = addr.rpartition(":")
                self.assertIn(host, ("127.0.0.1", "localhost", "[::1]"),
                              f"sites[{i}] backend {addr} is not local; cannot stand it up")
                if addr not in started:
                    ip = "[::1]" if host == "[::1]" else "127.0.0.1"
                    if dmtest.port_accepts(int(port), host=ip.strip("[]")):
                        # Someone else owns the example's port on this shared machine: use a
                        # free one rather than fail or talk to a stranger.
                        print(f"note: {addr} busy, backend for sites[{i}] on a free port",
                              file=sys.stderr)
                        be = env.backend(f"site{i}")
                    else:
                        be = env.backend(f"site{i}", listen=f"{ip}:{port}")
                    started[addr] = be
                addrs[j] = started[addr].addr if started[addr].port != int(port) else addr
            site["to"] = addrs
        d = env.doorman_run(cfg)
        for i, site in enumerate(cfg["sites"]):
            host = request_host(site)
            names = {b.name for a, b in started.items() if b.addr in site_addrs(site)
                     or a in site_addrs(site)}
            with self.subTest(site=host):
                # User-supplied certificates are not signed by the local CA: skip verification
                # for those sites only; the request must still be proxied.
                r = d.request(host, "/hello", verify=site.get("tls", "local") == "local")
                self.assertEqual(r.status, 200)
                self.assertIn(r.header("X-Backend"), names)


if __name__ == "__main__":
    dmtest.main()
