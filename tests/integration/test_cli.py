"""The doorman command line: version, help, validate, trust, bind failures and data-dir
isolation."""

import os
import re
import socket
import ssl
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from dmtest import text  # noqa: E402

COMMANDS = {
    "run": ["--config", "--data-dir"],
    "reverse-proxy": ["--from", "--to", "--https-port", "--http-port", "--data-dir", "--bind"],
    "validate": ["--config", "--data-dir"],
    "trust": ["--data-dir"],
    "reload": ["--config", "--data-dir"],
    "health": ["--data-dir"],
    "upgrade": ["--data-dir"],
    "version": [],
}


def problem_lines(stderr):
    return [ln for ln in text(stderr).splitlines() if ln.strip()]


class CliTest(dmtest.DmTestCase):
    def doorman(self, *args, **kw):
        return dmtest.run([dmtest.doorman_bin(), *args], **kw)

    def good_config(self, env, **over):
        return dmtest.base_config(env.new_dir(), dmtest.free_port(), [
            {"hosts": ["a.test"], "to": "127.0.0.1:9", "tls": "local"}], **over)

    def test_version(self):
        r = self.doorman("version")
        self.assertEqual(r.returncode, 0, text(r.stderr))
        self.assertRegex(text(r.stdout), r"\d+\.\d+\.\d+")

    def test_help(self):
        r = self.doorman("--help")
        self.assertEqual(r.returncode, 0, text(r.stderr))
        for cmd in COMMANDS:
            self.assertIn(cmd, text(r.stdout))
        for cmd, options in COMMANDS.items():
            with self.subTest(cmd=cmd):
                r = self.doorman(cmd, "--help")
                self.assertEqual(r.returncode, 0, text(r.stderr))
                self.assertTrue(text(r.stdout).strip(), "help went nowhere (or to stderr)")
                for opt in options:
                    self.assertIn(opt, text(r.stdout))

    def test_unknown_command_and_option(self):
        r = self.doorman("frobnicate")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("frobnicate", text(r.stderr))
        r = self.doorman("validate", "--no-such-flag")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--no-such-flag", text(r.stderr))

    def test_validate_good_config(self):
        env = self.new_env()
        path = env.write_json(self.good_config(env))
        r = self.doorman("validate", "--config", path)
        self.assertEqual(r.returncode, 0, text(r.stderr))

    def test_validate_reports_every_problem_with_its_path(self):
        env = self.new_env()
        cfg = self.good_config(env)
        cfg["sites"].append({"hosts": ["b.test"], "to": "abc", "tls": "local"})
        cfg["sites"][0]["tlss"] = "local"
        cfg["bogus_key"] = 1
        cfg["timeouts"]["header"] = "soon"
        path = env.write_json(cfg)
        r = self.doorman("validate", "--config", path)
        self.assertEqual(r.returncode, 1, text(r.stderr))
        lines = problem_lines(r.stderr)
        # "path: message", optionally prefixed by the config file name like a compiler.
        self.assertTrue(any(re.fullmatch(rf'(?:{re.escape(path)}: )?sites\[1\]\.to: "abc" is '
                                         r"not host:port", ln) for ln in lines), lines)
        for key_path in ("bogus_key", "sites[0].tlss", "timeouts.header"):
            with self.subTest(path=key_path):
                self.assertTrue(any(re.match(rf"(?:{re.escape(path)}: )?{re.escape(key_path)}: ",
                                             ln) for ln in lines),
                                f"no line \"{key_path}: ...\" in {lines}")
        self.assertTrue(any("bogus_key: unknown key" in ln for ln in lines), lines)
        self.assertGreaterEqual(len(lines), 4, "every problem on its own line")
        self.assertEqual(text(r.stdout).strip(), "")

    def test_validate_syntax_error_points_at_line(self):
        env = self.new_env()
        path = env.path("broken.json")
        with open(path, "w") as f:
            f.write('{\n  "https_port": 8443,\n  "sites": [ oops ]\n}\n')
        r = self.doorman("validate", "--config", path)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(text(r.stderr), r"broken\.json:3(:\d+)?")

    def test_validate_missing_file(self):
        env = self.new_env()
        missing = env.path("nope.json")
        r = self.doorman("validate", "--config", missing)
        self.assertEqual(r.returncode, 1)
        self.assertIn("nope.json", text(r.stderr))

    def test_trust_creates_ca_once(self):
        env = self.new_env()
        data = env.path("fresh-data")  # does not exist yet
        r = self.doorman("trust", "--data-dir", data)
        self.assertEqual(r.returncode, 0, text(r.stderr))
        out = text(r.stdout)
        self.assertEqual(len(out.splitlines()), 1, f"trust must print only a path: {out!r}")
        root = out.strip()
        self.assertEqual(os.path.realpath(root),
                         os.path.realpath(os.path.join(data, "pki", "local", "root.pem")))
        with open(root) as f:
            pem = f.read()
        self.assertTrue(pem.startswith("-----BEGIN CERTIFICATE-----"), pem[:80])
        key = os.path.join(os.path.dirname(root), "root.key")
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        openssl = dmtest.require_tool("openssl", "openssl")
        x = dmtest.run([openssl, "x509", "-noout", "-text", "-in", root])
        self.assertEqual(x.returncode, 0, text(x.stderr))
        self.assertRegex(text(x.stdout), r"CA:TRUE")

        r2 = self.doorman("trust", "--data-dir", data)
        self.assertEqual(text(r2.stdout), out)
        with open(root) as f:
            self.assertEqual(f.read(), pem, "second trust replaced the CA")

    def test_trust_uses_doorman_data_dir_env(self):
        env = self.new_env()
        data = env.new_dir()
        r = self.doorman("trust", env={"DOORMAN_DATA_DIR": data})
        self.assertEqual(r.returncode, 0, text(r.stderr))
        self.assertTrue(os.path.realpath(text(r.stdout).strip()).startswith(
            os.path.realpath(data) + os.sep))

    def exits_naming_port(self, env, cfg, port):
        d = env.doorman_run(cfg, wait=False)
        rc = d.proc.wait(timeout=15)
        self.assertIsNotNone(rc, "doorman kept running although its port was taken")
        self.assertNotEqual(rc, 0)
        self.assertIn(str(port), d.proc.stderr())

    def test_port_in_use(self):
        env = self.new_env()
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen(1)
            port = blocker.getsockname()[1]
            with self.subTest(which="https_port"):
                cfg = self.good_config(env)
                cfg["https_port"] = port
                self.exits_naming_port(env, cfg, port)
            with self.subTest(which="http_port"):
                cfg = self.good_config(env, http_port=port)
                self.exits_naming_port(env, cfg, port)

    def test_two_instances_do_not_share_files(self):
        env = self.new_env()
        be = env.backend("x")
        ds = []
        for _ in range(2):
            cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(), [
                {"hosts": ["x.test"], "to": be.addr, "tls": "local"}])
            ds.append(env.doorman_run(cfg))
        for d in ds:
            self.assertEqual(d.request("x.test", "/hello").body, b"hello from x\n")
        ca0, ca1 = ds[0].ca(), ds[1].ca()
        self.assertNotEqual(ca0, ca1)
        with open(ca0, "rb") as f0, open(ca1, "rb") as f1:
            self.assertNotEqual(f0.read(), f1.read(), "two data dirs got the same CA")
        for d in ds:
            for root, _, files in os.walk(d.data_dir):
                for name in files:
                    self.assertTrue(os.path.realpath(os.path.join(root, name)).startswith(
                        os.path.realpath(d.data_dir)))
        # Each instance's certificate chains to its own root only.
        ds[1]._ca = ca0
        with self.assertRaises(ssl.SSLCertVerificationError):
            ds[1].connect("x.test").close()

    def test_data_dir_flag_overrides_config(self):
        env = self.new_env()
        be = env.backend("y")
        cfg = dmtest.base_config(env.new_dir(), dmtest.free_port(), [
            {"hosts": ["y.test"], "to": be.addr, "tls": "local"}])
        other = env.new_dir()
        d = env.doorman_run(cfg, data_dir=other)
        self.assertEqual(d.request("y.test", "/hello").status, 200)
        self.assertTrue(os.path.exists(os.path.join(other, "pki", "local", "root.pem")))
        self.assertFalse(os.path.exists(os.path.join(cfg["data_dir"], "pki")),
                         "--data-dir did not win over the config's data_dir")


if __name__ == "__main__":
    dmtest.main()
