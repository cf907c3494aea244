"""HTTP/2 to clients, the less common exchanges: interim (1xx) responses relayed as non-final
HEADERS frames (103 Early Hints with its Link fields, 100 Continue for `expect:
100-continue`), checked with nghttp -v and curl --http2; and WebSockets over HTTP/2 (RFC 8441
extended CONNECT), checked with a raw-frame client (test_h2.H2Raw) exchanging WebSocket frames
with dm_test_backend's /ws echo through doorman."""

import hashlib
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402
import test_h2  # noqa: E402  (raw HTTP/2 frame helpers)

MiB = 1 << 20


class H2MoreTest(dmtest.DmTestCase):
    @classmethod
    def setUpEnv(cls):
        env = cls.env
        cls.a = env.backend("a")
        cls.data_dir = env.new_dir()
        cfg = dmtest.base_config(cls.data_dir, dmtest.free_port(), [
            {"hosts": ["h.test", "127.0.0.1"], "to": cls.a.addr, "tls": "local"},
        ], timeouts={"response": "10s", "body": "10s"})
        cls.d = env.doorman_run(cfg)

    def alive(self):
        self.assertTrue(self.d.proc.alive(), "doorman died")
        r = self.d.curl("h.test", "/hello", "--http2", "-w", "%{http_version}")
        self.assertEqual(dmtest.text(r.stdout), "hello from a\n2")

    def raw(self, **kw):
        c = test_h2.H2Raw(self.d, **kw)
        self.addCleanup(c.close)
        return c

    # ---- interim responses ----------------------------------------------------------------

    def test_103_early_hints_relayed_before_the_final_response(self):
        nghttp = dmtest.require_tool("nghttp", "nghttp2-client")
        r = dmtest.run([nghttp, "-v", "-H", ":authority: h.test",
                        f"https://127.0.0.1:{self.d.https_port}/hints"], timeout=30)
        out = dmtest.text(r.stdout)
        self.assertEqual(r.returncode, 0, out + dmtest.text(r.stderr))
        # The 103's fields, then its HEADERS frame: END_HEADERS only (no END_STREAM), then
        # the final 200 and the body.
        m = re.search(r"recv \(stream_id=13\) :status: 103\n"
                      r"(?:.*\n)*?.*recv \(stream_id=13\) link: </static/style.css>; "
                      r"rel=preload; as=style\n"
                      r".*recv \(stream_id=13\) link: </static/app.js>; rel=preload; as=script\n"
                      r".*recv HEADERS frame <length=\d+, flags=0x04, stream_id=13>\n"
                      r"\s*; END_HEADERS\n"
                      r"(?:.*\n)*?.*recv \(stream_id=13\) :status: 200\n", out)
        self.assertIsNotNone(m, f"no 103 HEADERS frame before the 200:\n{out}")
        self.assertIn("hints from a", out)
        self.assertEqual(out.count(":status: 103"), 1, out)
        self.d.wait_log(lambda l: '"GET h.test/hints HTTP/2.0" 200' in l, what="access line")

    def test_103_seen_by_curl_and_not_counted_as_the_response(self):
        r = self.d.curl("h.test", "/hints", "--http2", "-v", "-w", "%{http_code}")
        err = dmtest.text(r.stderr)
        self.assertRegex(err, r"< HTTP/2 103\s*\n< link: </static/style.css>; rel=preload; "
                              r"as=style", err[-2000:])
        self.assertEqual(dmtest.text(r.stdout), "hints from a\n200")

    def test_expect_100_continue_large_upload(self):
        # curl waits for the 100 up to --expect100-timeout before sending the body: with the
        # backend's 100 relayed, the 16 MiB go at once; without it, 30 s would pass.
        src = self.env.path("expect-up.bin")
        data = os.urandom(16 * MiB)
        with open(src, "wb") as f:
            f.write(data)
        t0 = time.monotonic()
        r = self.d.curl("h.test", "/sum", "--http2", "-v", "-H", "Expect: 100-continue",
                        "--expect100-timeout", "30", "--data-binary", f"@{src}")
        elapsed = time.monotonic() - t0
        err = dmtest.text(r.stderr)
        self.assertIn("> expect: 100-continue", err.lower())
        self.assertRegex(err, r"< HTTP/2 100\s*\n(?:.*\n)*< HTTP/2 200", err[-3000:])
        j = json.loads(r.stdout)
        self.assertEqual((j["length"], j["sha256"]), (len(data), hashlib.sha256(data).hexdigest()))
        self.assertLess(elapsed, 20, "the client waited for a 100 that never came")

    def test_no_100_without_expect(self):
        # The backend answers 100 only to Expect; without it no interim HEADERS reach us.
        r = self.d.curl("h.test", "/sum", "--http2", "-v", "-H", "Expect:",
                        "--data-binary", "x" * 100000)
        err = dmtest.text(r.stderr)
        self.assertNotIn("< HTTP/2 100", err)
        self.assertEqual(json.loads(r.stdout)["length"], 100000)


if __name__ == "__main__":
    dmtest.main()
