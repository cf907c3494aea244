"""dns-01 through a user hook (RFC 8555 §8.4) against Pebble: a name and its wildcard issued
with a shell hook that sets TXT records in pebble-challtestsrv, the hook's present and cleanup
calls checked, a failing hook's message in the order failure, and a hung hook killed (and
reaped) when the order times out."""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
from pebble import Pebble  # noqa: E402

CHALLTESTSRV_HOOK = """#!/bin/sh
# present|cleanup _acme-challenge.NAME. VALUE -> pebble-challtestsrv's management API
echo "$1 $2 $3 pid=$$" >> {log}
case "$1" in
  present) exec {curl} -sS -f -X POST -d "{{\\"host\\":\\"$2\\",\\"value\\":\\"$3\\"}}" \\
             http://127.0.0.1:{port}/set-txt ;;
  cleanup) exec {curl} -sS -f -X POST -d "{{\\"host\\":\\"$2\\"}}" \\
             http://127.0.0.1:{port}/clear-txt ;;
esac
exit 2
"""

FAILING_HOOK = """#!/bin/sh
echo "$1 $2 $3 pid=$$" >> {log}
if [ "$1" = present ]; then
  echo "provider API: zone example.invalid not found" >&2
  exit 1
fi
"""

HANGING_HOOK = """#!/bin/sh
echo "$1 $2 $3 pid=$$" >> {log}
if [ "$1" = present ]; then
  sleep 300
fi
"""


class AcmeDnsTest(dmtest.DmTestCase):
    def start(self, env, hook_text, hosts, **acme_extra):
        https_port, http_port = dmtest.free_port(), dmtest.free_port()
        pebble = Pebble(env, http_port=http_port, tls_port=https_port)
        backend = env.backend("app")
        hook_dir = env.new_dir("hook")
        log = os.path.join(hook_dir, "calls.log")
        hook = os.path.join(hook_dir, "dns-hook.sh")
        with open(hook, "w") as f:
            f.write(hook_text.format(log=log, port=pebble.cts_port,
                                     curl=dmtest.require_tool("curl", "curl")))
        os.chmod(hook, 0o755)
        acme = {"ca": pebble.directory, "ca_root": pebble.api_ca, "email": "ops@example.test",
                "agree_tos": True, "challenges": ["dns-01"], "dns_hook": hook,
                "dns_propagation": "0s"}
        acme.update(acme_extra)
        site = {"hosts": hosts, "to": backend.addr, "tls": {"acme": acme}}
        cfg = dmtest.base_config(env.new_dir(), https_port, [site], http_port=http_port,
                                 log={"level": "debug"})
        d = env.doorman_run(cfg)
        return pebble, d, log

    @staticmethod
    def calls(log):
        """The hook's calls as (action, name, value, pid) tuples."""
        if not os.path.exists(log):
            return []
        with open(log) as f:
            out = []
            for line in f:
                action, name, value, pid = line.split()
                out.append((action, name, value, int(pid[len("pid="):])))
            return out

    def curl_verified(self, d, pebble, host):
        curl = dmtest.require_tool("curl", "curl")
        r = dmtest.run([curl, "-sS", "--cacert", pebble.root_file(), "--resolve",
                        f"{host}:{d.https_port}:127.0.0.1", f"https://{host}:{d.https_port}/hello"],
                       timeout=20)
        self.assertEqual(r.returncode, 0, dmtest.text(r.stderr))
        return dmtest.text(r.stdout)

    def test_name_and_wildcard_issue_through_hook(self):
        env = self.new_env()
        pebble, d, log = self.start(env, CHALLTESTSRV_HOOK,
                                    ["dns.example.test", "*.dns.example.test"])
        dmtest.wait_until(lambda: "certificate issued names=dns.example.test" in d.proc.stderr()
                          or (not d.proc.alive() and self.fail("doorman died")), 30,
                          interval=0.05, what="certificate for dns.example.test")
        for host in ("dns.example.test", "x.dns.example.test"):
            self.assertEqual(self.curl_verified(d, pebble, host), "hello from app\n")
        # One present per authorization: the name and the wildcard share the record name,
        # with two values. Every present is cleaned up with its own value, and only once
        # both are done (a hook may delete every value of the name, as clear-txt does).
        name = "_acme-challenge.dns.example.test."
        dmtest.wait_until(lambda: len(self.calls(log)) >= 4, 10, interval=0.05,
                          what="hook cleanups")
        calls = self.calls(log)
        self.assertEqual(len(calls), 4, calls)
        presents = [c for c in calls if c[0] == "present"]
        cleanups = [c for c in calls if c[0] == "cleanup"]
        self.assertEqual([c[0] for c in calls], ["present", "present", "cleanup", "cleanup"])
        self.assertEqual({c[1] for c in calls}, {name})
        self.assertEqual(len({c[2] for c in presents}), 2)
        self.assertEqual(sorted(c[2] for c in presents), sorted(c[2] for c in cleanups))
        for c in presents:
            self.assertRegex(c[2], r"^[A-Za-z0-9_-]{43}$")  # base64url(SHA-256), §8.4
        self.assertTrue(d.proc.alive())

    def test_propagation_wait_delays_validation(self):
        env = self.new_env()
        pebble, d, log = self.start(env, CHALLTESTSRV_HOOK, ["wait.example.test"],
                                    dns_propagation="1s")
        dmtest.wait_until(lambda: "certificate issued names=wait.example.test" in d.proc.stderr()
                          or (not d.proc.alive() and self.fail("doorman died")), 30,
                          interval=0.05, what="certificate for wait.example.test")
        stderr = d.proc.stderr()

        def at(pattern):
            m = re.search(r"(?m)^\S+T(\d\d):(\d\d):(\d\d\.\d+)Z .*" + pattern, stderr)
            self.assertIsNotNone(m, pattern)
            return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])

        # The challenge is POSTed (respond) only after the hook and the 1 s wait.
        waited = at(r"authz=wait\.example\.test: present -> respond") - \
            at(r"dns hook present _acme-challenge\.wait\.example\.test\.")
        self.assertGreaterEqual(waited, 1.0)
        self.assertLess(waited, 10.0)

    def test_failing_hook_fails_the_order_with_its_message(self):
        env = self.new_env()
        pebble, d, log = self.start(env, FAILING_HOOK, ["fail.example.test"])
        dmtest.wait_until(lambda: "order for fail.example.test failed" in d.proc.stderr(), 30,
                          interval=0.05, what="order failure logged")
        stderr = d.proc.stderr()
        self.assertRegex(stderr, r"order for fail\.example\.test failed \(attempt 1\), retrying "
                                 r"in 60s: .*dns hook present _acme-challenge\.fail\.example\.test\."
                                 r": exit status 1: provider API: zone example\.invalid not found")
        # The failed present is still cleaned up (the hook may have half-done its work).
        dmtest.wait_until(lambda: [c[0] for c in self.calls(log)] == ["present", "cleanup"], 10,
                          interval=0.05, what="cleanup after the failed present")
        self.assertNotIn("certificate issued", stderr)
        self.assertTrue(d.proc.alive())

    def test_hung_hook_is_killed_when_the_order_times_out(self):
        env = self.new_env()
        pebble, d, log = self.start(env, HANGING_HOOK, ["hang.example.test"],
                                    order_timeout="2s")
        dmtest.wait_until(lambda: "order for hang.example.test failed" in d.proc.stderr(), 30,
                          interval=0.05, what="order timeout logged")
        calls = self.calls(log)
        self.assertEqual(calls[0][0], "present", calls)
        pid = calls[0][3]

        def gone():
            # Killed and reaped: no process, not even a zombie, is left.
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().split(") ")[1][0] == "X"
            except (FileNotFoundError, ProcessLookupError):  # gone between open and read
                return True

        dmtest.wait_until(gone, 5, interval=0.05, what=f"hook pid {pid} killed and reaped")
        dmtest.wait_until(lambda: [c[0] for c in self.calls(log)] == ["present", "cleanup"], 10,
                          interval=0.05, what="cleanup after the canceled present")
        self.assertTrue(d.proc.alive())
        time.sleep(0.2)
        self.assertNotIn("certificate issued", d.proc.stderr())


if __name__ == "__main__":
    dmtest.main()
