#!/usr/bin/env python3
"""doorman vs Caddy, on-demand TLS against one Pebble. Start it with bench_ondemand.sh.

Metrics, per proxy, in the same run (rounds interleaved, order rotated each round):
  1. first-response time for a brand-new name: from the TCP connect of the first request
     for a name nobody has a certificate for, to the end of its proxied response (TLS
     handshake paused while the proxy orders from Pebble, then GET /). Median over
     BENCH_NAMES names asked one after the other.
  2. BENCH_BURST brand-new names at once (one connection each, all started together):
     how many were served, and the wall time until the last one finished.

Both proxies use the same Pebble setup (PEBBLE_VA_NOSLEEP=1, no nonce rejection, no authz
reuse; a fresh Pebble for each proxy run, so one run cannot leave Pebble busy or stuck for the
next), the same `ask` endpoint and the same backend. They run one after the other on the same
two ports, because Pebble validates tls-alpn-01 / http-01 on the ports in its config only.
See README.md beside this file.
"""

import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_h1 as b1  # noqa: E402  (process handling shared with bench_h1/bench_h2)

env_int = b1.env_int
log = b1.log
stop = b1.stop
cleanup = b1.cleanup  # stops what spawn started and removes b1.WORK
on_signal = b1.on_signal


ROUNDS = env_int("BENCH_ROUNDS", 2)
NAMES = env_int("BENCH_NAMES", 10)
BURST = env_int("BENCH_BURST", 100)
BURST_TIMEOUT = env_int("BENCH_BURST_TIMEOUT", 60)
MAX_IN_FLIGHT = env_int("BENCH_MAX_IN_FLIGHT", 0)  # 0: doorman's default (20)
PORT_BASE = env_int("BENCH_PORT_BASE", 28600)
PROXY_CPU = os.environ.get("BENCH_PROXY_CPU", "0")
LOAD_CPU = os.environ.get("BENCH_LOAD_CPU", "1")
JSON_OUT = os.environ.get("BENCH_JSON", "")
DOORMAN_LOG = os.environ.get("BENCH_DOORMAN_LOG", "info")  # "debug" shows each refusal
ONLY = [p for p in os.environ.get("BENCH_PROXIES", "doorman,caddy").split(",") if p]

HTTPS_PORT = PORT_BASE + 43
HTTP_PORT = PORT_BASE + 80
PEBBLE_PORT = PORT_BASE + 14
PEBBLE_MGMT_PORT = PORT_BASE + 15
DNS_PORT = PORT_BASE + 53
CTS_PORT = PORT_BASE + 55
BODY = b"hello from the bench backend\n"
DOMAIN = "bench.test"  # every name is <label>.bench.test; ask permits exactly those
TARGET_RATIO = 0.1  # doorman/Caddy first-response median, from the issue

WORK = None


# Processes -------------------------------------------------------------------


def spawn(argv, cpu=None, **kw):
    """bench_h1's spawn (own process group, pinned, niced), stdin closed."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    return b1.spawn(argv, cpu, **kw)


def port_accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port(port, proc, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        if port_accepts(port):
            return True
        time.sleep(0.05)
    return False


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# In-process servers: backend and ask endpoint ----------------------------------


class Quiet(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        pass


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.asks = {}

    def add(self, name):
        with self.lock:
            self.asks[name] = self.asks.get(name, 0) + 1


ASKS = Counter()


def serve(handler):
    srv = Quiet(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class BackendHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *a):
        pass


class AskHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        name = (q.get("domain") or [""])[0]
        ASKS.add(name)
        ok = name.endswith("." + DOMAIN) and name.count(".") == 2
        body = b"ok\n" if ok else b"no\n"
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


# Pebble ----------------------------------------------------------------------


class Pebble:
    """Pebble + challtestsrv on loopback per shared/notes/pebble.md, validating on the
    proxies' ports."""

    def __init__(self, d):
        self.dir = d
        os.makedirs(d, exist_ok=True)

        def ossl(*args):
            r = subprocess.run(["openssl"] + list(args), cwd=d, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                raise SystemExit("openssl %s failed:\n%s" % (" ".join(args), r.stdout))
        self.api_ca = os.path.join(d, "api-ca.pem")
        ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "2", "-subj", "/CN=pebble api CA", "-keyout", "api-ca.key", "-out",
             self.api_ca)
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
             "/CN=localhost", "-keyout", "api.key", "-out", "api.csr")
        with open(os.path.join(d, "api.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        ossl("x509", "-req", "-in", "api.csr", "-CA", self.api_ca, "-CAkey", "api-ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "api.ext", "-out", "api.pem")
        cfg = {"pebble": {
            "listenAddress": "127.0.0.1:%d" % PEBBLE_PORT,
            "managementListenAddress": "127.0.0.1:%d" % PEBBLE_MGMT_PORT,
            "certificate": os.path.join(d, "api.pem"), "privateKey": os.path.join(d, "api.key"),
            "httpPort": HTTP_PORT, "tlsPort": HTTPS_PORT, "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}
        with open(os.path.join(d, "pebble.json"), "w") as f:
            json.dump(cfg, f)
        out = open(os.path.join(d, "challtestsrv.log"), "wb")
        self.cts = spawn(["pebble-challtestsrv", "-management", "127.0.0.1:%d" % CTS_PORT,
                          "-dns01", "127.0.0.1:%d" % DNS_PORT, "-http01", "", "-https01", "",
                          "-tlsalpn01", "", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
                         cpu=LOAD_CPU, stdout=out, stderr=out)
        out.close()
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
                   PEBBLE_AUTHZREUSE="0")
        self.log = os.path.join(d, "pebble.log")
        out = open(self.log, "wb")
        self.proc = spawn([os.environ.get("DM_PEBBLE_BIN", "pebble"), "-config", os.path.join(d, "pebble.json"), "-dnsserver",
                           "127.0.0.1:%d" % DNS_PORT], cpu=LOAD_CPU, stdout=out, stderr=out,
                          env=env)
        out.close()
        self.directory = "https://127.0.0.1:%d/dir" % PEBBLE_PORT
        ctx = ssl.create_default_context(cafile=self.api_ca)
        end = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(self.directory, context=ctx, timeout=2).read()
                break
            except OSError:
                if time.time() > end or self.proc.poll() is not None:
                    raise SystemExit("pebble did not start:\n" + tail(self.log))
                time.sleep(0.1)
        url = "https://127.0.0.1:%d/roots/0" % PEBBLE_MGMT_PORT
        self.root = os.path.join(d, "pebble-root.pem")
        with open(self.root, "wb") as f:
            f.write(urllib.request.urlopen(url, context=ctx, timeout=5).read())

    def responsive(self):
        """Whether Pebble still answers a directory request (it has been seen to hang)."""
        try:
            ctx = ssl.create_default_context(cafile=self.api_ca)
            urllib.request.urlopen(self.directory, context=ctx, timeout=3).read()
            return True
        except OSError:
            return False

    def orders(self):
        with open(self.log, errors="replace") as f:
            return f.read().count("POST /order-plz")

    def stop(self):
        stop(self.proc)
        stop(self.cts)
        for _ in range(100):
            if all(port_free(p) for p in (PEBBLE_PORT, PEBBLE_MGMT_PORT, CTS_PORT)):
                return
            time.sleep(0.05)
        raise SystemExit("Pebble's ports still busy after it stopped")


# Proxies ---------------------------------------------------------------------


class Proxy:
    def __init__(self, name, d, argv_fn, env=None):
        self.name, self.dir, self.argv_fn, self.env = name, d, argv_fn, env
        self.proc = None
        self.runs = 0
        os.makedirs(d, exist_ok=True)

    def start(self, pebble):
        """A fresh data directory each time: every name is new to the proxy."""
        self.runs += 1
        data = os.path.join(self.dir, "data%d" % self.runs)
        os.makedirs(data)
        argv, env = self.argv_fn(self.dir, data, pebble)
        self.errlog = os.path.join(self.dir, "stderr%d.log" % self.runs)
        with open(self.errlog, "wb") as err:
            self.proc = spawn(argv, cpu=PROXY_CPU, stdout=err, stderr=err, cwd=self.dir,
                              env=dict(os.environ, **(env or {})))
        if not wait_port(HTTPS_PORT, self.proc):
            raise SystemExit("%s did not start on port %d:\n%s" %
                             (self.name, HTTPS_PORT, tail(self.errlog)))

    def stop(self):
        stop(self.proc)
        self.proc = None
        for _ in range(100):  # the next proxy needs the same ports
            if port_free(HTTPS_PORT) and port_free(HTTP_PORT):
                return
            time.sleep(0.05)
        raise SystemExit("ports %d/%d still busy after %s stopped" %
                         (HTTPS_PORT, HTTP_PORT, self.name))


def doorman_proxy(root, ask_url, backend_port):
    doorman = os.environ.get("DOORMAN") or shutil.which("doorman")

    def argv(d, data, pebble):
        od = {"ask": ask_url, "orders_per_minute": 100000, "per_domain_per_hour": 100000}
        if MAX_IN_FLIGHT:
            od["max_in_flight"] = MAX_IN_FLIGHT
        conf = {
            "data_dir": data, "bind": "127.0.0.1", "https_port": HTTPS_PORT,
            "http_port": HTTP_PORT, "workers": 1,
            "log": {"level": DOORMAN_LOG, "access": "off"},
            "sites": [{"to": "127.0.0.1:%d" % backend_port, "tls": {
                "acme": {"ca": pebble.directory, "ca_root": pebble.api_ca,
                         "email": "ops@example.test", "agree_tos": True,
                         "orders_per_hour": 100000},
                "on_demand": od}}],
        }
        path = os.path.join(d, "doorman.json")
        with open(path, "w") as f:
            json.dump(conf, f, indent=1)
        return [doorman, "run", "--config", path], None
    return Proxy("doorman", os.path.join(root, "doorman"), argv)


CADDYFILE = """{
	admin off
	default_bind 127.0.0.1
	http_port %(http)d
	https_port %(https)d
	acme_ca %(dir)s
	acme_ca_root %(api_ca)s
	email ops@example.test
	skip_install_trust
	on_demand_tls {
		ask %(ask)s
	}
	servers {
		protocols h1 h2
	}
	storage file_system {
		root %(data)s
	}
	log {
		level INFO
	}
}

https:// {
	tls {
		on_demand
	}
	reverse_proxy 127.0.0.1:%(backend)d
}
"""


def caddy_proxy(root, ask_url, backend_port):
    caddy = shutil.which("caddy")

    def argv(d, data, pebble):
        path = os.path.join(d, "Caddyfile")
        with open(path, "w") as f:
            f.write(CADDYFILE % {"http": HTTP_PORT, "https": HTTPS_PORT,
                                 "dir": pebble.directory, "api_ca": pebble.api_ca,
                                 "ask": ask_url, "data": data, "backend": backend_port})
        env = {"XDG_DATA_HOME": data, "XDG_CONFIG_HOME": data, "HOME": data}
        return [caddy, "run", "--config", path, "--adapter", "caddyfile"], env
    return Proxy("caddy", os.path.join(root, "caddy"), argv)


# Measurements ------------------------------------------------------------------


def first_request(name, root_pem, timeout):
    """(ok, seconds, error): connect, handshake (verified against Pebble's root), GET /,
    read the whole response."""
    ctx = ssl.create_default_context(cafile=root_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as s:
                s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" %
                           name).encode())
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        took = time.monotonic() - t0
        ok = data.startswith(b"HTTP/1.1 200") and data.endswith(BODY)
        return ok, took, None if ok else "got %r" % data[:80]
    except (OSError, ssl.SSLError) as e:
        return False, time.monotonic() - t0, "%s: %s" % (type(e).__name__, e)


def measure_sequential(px, pebble, tag):
    """One warm-up name (account registration happens here), then NAMES new names one at a
    time; returns (warm-up seconds, [seconds per name])."""
    ok, warm, err = first_request("warm-%s.%s" % (tag, DOMAIN), pebble.root, 60)
    if not ok:
        raise SystemExit("%s: the warm-up name failed after %.2f s: %s\n%s" %
                         (px.name, warm, err, tail(px.errlog)))
    times = []
    for i in range(NAMES):
        ok, took, err = first_request("seq%d-%s.%s" % (i, tag, DOMAIN), pebble.root, 60)
        if not ok:
            raise SystemExit("%s: new name %d failed after %.2f s: %s\n%s" %
                             (px.name, i, took, err, tail(px.errlog)))
        times.append(took)
    return warm, times


def measure_burst(px, pebble, tag):
    """BURST new names at once; returns (served, wall seconds to the last finish, seconds to
    the last success, errors sample)."""
    names = ["b%d-%s.%s" % (i, tag, DOMAIN) for i in range(BURST)]
    results = [None] * BURST
    go = threading.Event()

    def one(i):
        go.wait()
        results[i] = first_request(names[i], pebble.root, BURST_TIMEOUT)
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(BURST)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    go.set()
    for t in threads:
        t.join(BURST_TIMEOUT + 30)
    wall = time.monotonic() - t0
    served = [r for r in results if r and r[0]]
    last_ok = max((r[1] for r in served), default=0.0)
    errors = sorted({(r[2] or "?")[:100] for r in results if r and not r[0]})
    return len(served), wall, last_ok, errors


# Report ------------------------------------------------------------------------


def fmt_ms(s):
    return "%.0f ms" % (s * 1000) if s < 10 else "%.1f s" % s


def main():
    global WORK
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for tool in ["pebble", "pebble-challtestsrv", "openssl", "taskset"] + \
            (["caddy"] if "caddy" in ONLY else []):
        if not shutil.which(tool):
            raise SystemExit("bench_ondemand: %s not found" % tool)
    if "doorman" in ONLY and not (os.environ.get("DOORMAN") or shutil.which("doorman")):
        raise SystemExit("bench_ondemand: set DOORMAN to the doorman binary")
    for port in (HTTPS_PORT, HTTP_PORT, PEBBLE_PORT, PEBBLE_MGMT_PORT, DNS_PORT, CTS_PORT):
        if not port_free(port):
            raise SystemExit("port %d is busy: set BENCH_PORT_BASE" % port)
    try:
        os.sched_setaffinity(0, {int(LOAD_CPU)})  # client, backend and ask beside Pebble
    except (OSError, ValueError):
        pass
    WORK = b1.WORK = tempfile.mkdtemp(prefix="bench-ondemand-")
    log("work dir %s; rounds %d, %d sequential names and a burst of %d per proxy and round"
        % (WORK, ROUNDS, NAMES, BURST))
    backend = serve(BackendHandler)
    ask = serve(AskHandler)
    ask_url = "http://127.0.0.1:%d/allow" % ask.server_address[1]
    makers = {"doorman": doorman_proxy, "caddy": caddy_proxy}
    proxies = [makers[n](WORK, ask_url, backend.server_address[1]) for n in ONLY]
    rounds = []
    for rnd in range(ROUNDS):
        order = proxies[rnd % len(proxies):] + proxies[:rnd % len(proxies)]
        res = {}
        for px in order:
            tag = "r%d%s" % (rnd, px.name[0])
            log("round %d: %s" % (rnd + 1, px.name))
            pebble = Pebble(os.path.join(WORK, "pebble-%s" % tag))
            px.start(pebble)
            try:
                orders0 = pebble.orders()
                warm, seq = measure_sequential(px, pebble, tag)
                served, wall, last_ok, errors = measure_burst(px, pebble, tag)
                orders = pebble.orders() - orders0
                alive = px.proc.poll() is None
                pebble_ok = pebble.responsive()
            finally:
                px.stop()
                pebble.stop()
            res[px.name] = {"warmup_s": warm, "first_response_s": seq,
                            "median_s": statistics.median(seq), "burst_served": served,
                            "burst_wall_s": wall, "burst_last_ok_s": last_ok,
                            "burst_errors": errors, "pebble_orders": orders, "alive": alive,
                            "pebble_responsive": pebble_ok}
            log("  %s: first response median %s (warm-up %s); burst %d/%d served, wall %s, "
                "last success %s; %d orders at Pebble" %
                (px.name, fmt_ms(res[px.name]["median_s"]), fmt_ms(warm), served, BURST,
                 fmt_ms(wall), fmt_ms(last_ok), orders))
            if errors:
                log("  %s burst errors: %s" % (px.name, "; ".join(errors[:5])))
            if not pebble_ok:
                log("  WARNING: Pebble stopped answering during this run: its figures are "
                    "Pebble's, not %s's (log: %s)" % (px.name, pebble.log))
        rounds.append(res)
    report(rounds)
    if JSON_OUT:
        with open(JSON_OUT, "w") as f:
            json.dump({"rounds": rounds, "settings": {
                "names": NAMES, "burst": BURST, "burst_timeout_s": BURST_TIMEOUT,
                "max_in_flight": MAX_IN_FLIGHT or "default"}}, f, indent=1)
    return 0 if all(r[p]["alive"] for r in rounds for p in r) else 1


def report(rounds):
    names = [p for p in ONLY if all(p in r for r in rounds)]
    print()
    print("On-demand TLS against Pebble (PEBBLE_VA_NOSLEEP=1), %d round(s)" % len(rounds))
    print("%-8s %-6s %-36s %-10s %-13s %s" % ("proxy", "round", "first response median",
                                                  "warm-up", "burst served",
                                                  "burst wall / last ok"))
    for p in names:
        for i, r in enumerate(rounds):
            x = r[p]
            print("%-8s %-6s %-36s %-10s %-13s %s / %s" % (
                p, i + 1, "%s (min %s, max %s)" % (fmt_ms(x["median_s"]),
                                                  fmt_ms(min(x["first_response_s"])),
                                                  fmt_ms(max(x["first_response_s"]))),
                fmt_ms(x["warmup_s"]), "%d/%d" % (x["burst_served"], BURST),
                fmt_ms(x["burst_wall_s"]), fmt_ms(x["burst_last_ok_s"])))
    allmed = {p: statistics.median([t for r in rounds for t in r[p]["first_response_s"]])
              for p in names}
    print()
    for p in names:
        print("%-8s first-response median over all rounds: %s" % (p, fmt_ms(allmed[p])))
    if "doorman" in names and "caddy" in names:
        ratios = [r["doorman"]["median_s"] / r["caddy"]["median_s"] for r in rounds]
        med = statistics.median(ratios)
        print("ratio doorman/caddy per round: %s; median %.3f (target <= %.1f): %s" % (
            ", ".join("%.3f" % x for x in ratios), med, TARGET_RATIO,
            "PASS" if med <= TARGET_RATIO else "MISS"))
        for r in rounds:
            d, c = r["doorman"], r["caddy"]
            print("burst of %d: doorman %d served in %s, caddy %d served in %s" % (
                BURST, d["burst_served"], fmt_ms(d["burst_wall_s"]), c["burst_served"],
                fmt_ms(c["burst_wall_s"])))


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        cleanup()
