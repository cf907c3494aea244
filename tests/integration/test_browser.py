"""A real browser through doorman: headless Chromium (Debian's `chromium`) trusts doorman's
local CA root through an NSS database in a temporary HOME (added with NSS's `certutil`), loads
a page with several assets (two style sheets, two scripts, four images) from a site served by
doorman over TLS, and the page's own script writes into the DOM what the browser saw: the
navigation's and every resource's nextHopProtocol (Resource Timing), whether the images
decoded, the style sheets applied and the scripts ran; then it opens a WebSocket, which
Chromium sends over the same HTTP/2 connection as an extended CONNECT (RFC 8441), and writes the
echo it gets back. The test reads all that from --dump-dom and checks doorman's access log for
the same requests over HTTP/2.

Chromium is required: a missing binary fails the test (tests/install-deps.sh installs it). It
runs as root in CI, hence --no-sandbox; its run time is bounded, and on a timeout only its own
process group (started here with a new session) is killed."""

import html
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmtest  # noqa: E402

CHROMIUM_TIMEOUT = 90  # seconds for one page load, including Chromium's start
NUM_IMAGES = 4

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>doorman browser test</title>
<link rel="stylesheet" href="/static/style.css">
<link rel="stylesheet" href="/static/more.css">
<script src="/static/app.js"></script>
<script src="/static/more.js"></script>
</head><body>
<div id="box">box</div><div id="box2">box2</div>
%(images)s
<pre id="result">pending</pre>
<pre id="ws">pending</pre>
<script>
window.addEventListener("load", function () {
  var nav = performance.getEntriesByType("navigation")[0];
  var res = performance.getEntriesByType("resource").map(function (e) {
    return [new URL(e.name).pathname, e.nextHopProtocol];
  });
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return [new URL(i.src).pathname, i.complete, i.naturalWidth, i.naturalHeight];
  });
  var r = {
    marker: "DOORMAN-BROWSER-RENDERED",
    nav: nav ? nav.nextHopProtocol : null,
    resources: res,
    images: imgs,
    css: getComputedStyle(document.getElementById("box")).width,
    css2: getComputedStyle(document.getElementById("box2")).color,
    js: window.appRan === true,
    js2: document.getElementById("box2").getAttribute("data-more") === "ran"
  };
  document.getElementById("result").textContent = JSON.stringify(r);
  var ws = new WebSocket("wss://" + location.host + "/ws");
  ws.onopen = function () { ws.send("ping from chromium"); };
  ws.onmessage = function (ev) {
    document.getElementById("ws").textContent = "WS-ECHO:" + ev.data;
    ws.close();
  };
  ws.onerror = function () { document.getElementById("ws").textContent = "WS-ERROR"; };
});
</script>
</body></html>
"""


def png(width, height, rgb):
    """A minimal truecolor PNG of one color."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" +
            chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def write_site(d):
    images = "\n".join(f'<img src="/static/img{i}.png" alt="img{i}">' for i in range(NUM_IMAGES))
    files = {
        "index.html": (PAGE % {"images": images}).encode(),
        "style.css": b"#box { width: 123px; }\n",
        "more.css": b"#box2 { color: rgb(1, 2, 3); }\n",
        "app.js": b"window.appRan = true;\n",
        "more.js": b"document.addEventListener('DOMContentLoaded', function () {\n"
                   b"  document.getElementById('box2').setAttribute('data-more', 'ran');\n});\n",
    }
    for i in range(NUM_IMAGES):
        files[f"img{i}.png"] = png(10 + i, 7 + i, (40 * i, 100, 200))
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    return files


def chromium_binary():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise dmtest.SetupError("required tool 'chromium' not found: apt-get install chromium "
                            "(tests/install-deps.sh installs it)")


class BrowserTest(dmtest.DmTestCase):
    @classmethod
    def setUpEnv(cls):
        env = cls.env
        cls.static = env.new_dir("static")
        cls.files = write_site(cls.static)
        cls.be = env.backend("web", args=["--static", cls.static])
        cls.data_dir = env.new_dir()
        cls.d = env.doorman_run(dmtest.base_config(cls.data_dir, dmtest.free_port(), [
            {"hosts": ["site.test"], "to": cls.be.addr, "tls": "local"}]))

    def nss_home(self):
        """A temporary HOME whose NSS database (what Chromium on Linux reads) trusts doorman's
        local CA root as a TLS server issuer."""
        certutil = dmtest.require_tool("certutil", "libnss3-tools")
        home = self.env.new_dir("home")
        db = os.path.join(home, ".pki", "nssdb")
        os.makedirs(db)
        for argv in ([certutil, "-d", f"sql:{db}", "-N", "--empty-password"],
                     [certutil, "-d", f"sql:{db}", "-A", "-t", "C,,", "-n", "doorman-local-ca",
                      "-i", self.d.ca()]):
            r = dmtest.run(argv, timeout=30)
            self.assertEqual(r.returncode, 0, f"{argv}: {dmtest.text(r.stderr)}")
        return home

    def run_chromium(self, url, home):
        """Runs headless Chromium on url with --dump-dom; returns (dom, seconds). Chromium and
        its helpers run in their own session: on a timeout that process group is killed."""
        argv = [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--metrics-recording-only",
                f"--user-data-dir={os.path.join(home, 'profile')}",
                "--host-resolver-rules=MAP site.test 127.0.0.1",
                "--virtual-time-budget=5000", "--dump-dom", url]
        env = dict(os.environ, HOME=home)
        env.pop("DOORMAN_DATA_DIR", None)
        with open(os.path.join(home, "chromium.stderr"), "wb") as err:
            t0 = time.monotonic()
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=err, env=env, start_new_session=True)
            try:
                out, _ = p.communicate(timeout=CHROMIUM_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
                raise AssertionError(f"chromium did not finish within {CHROMIUM_TIMEOUT}s")
            finally:
                # Helpers (zygote, crashpad) left behind are in Chromium's own group.
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            elapsed = time.monotonic() - t0
        with open(os.path.join(home, "chromium.stderr"), "rb") as f:
            stderr = dmtest.text(f.read())
        self.assertEqual(p.returncode, 0, f"chromium rc={p.returncode}:\n{stderr[-4000:]}")
        return dmtest.text(out), elapsed, stderr

    def test_chromium_loads_page_over_h2(self):
        home = self.nss_home()
        url = f"https://site.test:{self.d.https_port}/static/index.html"
        dom, elapsed, stderr = self.run_chromium(url, home)
        print(f"\nchromium page load: {elapsed:.2f}s", file=sys.stderr)
        m = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
        self.assertIsNotNone(m, f"no result element in the DOM:\n{dom[:3000]}\n{stderr[-3000:]}")
        self.assertIn("DOORMAN-BROWSER-RENDERED", m.group(1),
                      f"the page's load handler did not run (certificate not trusted?):\n"
                      f"{dom[:3000]}\n{stderr[-3000:]}")
        r = json.loads(html.unescape(m.group(1)))
        self.assertEqual(r["nav"], "h2", r)
        want = {"/static/style.css", "/static/more.css", "/static/app.js", "/static/more.js",
                *(f"/static/img{i}.png" for i in range(NUM_IMAGES))}
        got = {path for path, _ in r["resources"]}
        self.assertTrue(want <= got, f"resources missing from Resource Timing: {want - got}")
        for path, proto in r["resources"]:
            self.assertEqual(proto, "h2", f"{path} went over {proto!r}")
        self.assertEqual(len(r["images"]), NUM_IMAGES, r)
        for path, complete, w, h in r["images"]:
            i = int(path[len("/static/img"):-len(".png")])
            self.assertTrue(complete, path)
            self.assertEqual((w, h), (10 + i, 7 + i), f"{path} did not decode")
        self.assertEqual(r["css"], "123px", "style.css not applied")
        self.assertEqual(r["css2"], "rgb(1, 2, 3)", "more.css not applied")
        self.assertTrue(r["js"], "app.js did not run")
        self.assertTrue(r["js2"], "more.js did not run")
        # doorman saw each of them over HTTP/2 (access log: "GET host/path HTTP/2.0" 200).
        for path in ["/static/index.html", *sorted(want)]:
            self.d.wait_log(lambda line, p=path: f'"GET site.test{p} HTTP/2.0" 200' in line,
                            what=f"h2 access line for {path}")
        # The page's WebSocket went over the same HTTP/2 connection (RFC 8441 extended
        # CONNECT) to the backend's echo, and its close ended the stream.
        m = re.search(r'<pre id="ws">(.*?)</pre>', dom, re.S)
        self.assertEqual(html.unescape(m.group(1)) if m else None,
                         "WS-ECHO:ping from chromium", dom[-2000:])
        self.d.wait_log(lambda line: '"CONNECT site.test/ws HTTP/2.0" 200' in line,
                        what="the WebSocket as an HTTP/2 extended CONNECT")
        self.assertFalse(any(" HTTP/1.1\" " in line and "site.test/static" in line
                             for line in self.d.access_log_lines()),
                         "some asset went over HTTP/1.1")


if __name__ == "__main__":
    dmtest.main()
