#!/usr/bin/env python3
"""doorman vs nginx, HAProxy and Caddy, HTTP/2 over TLS, side by side. Start it with
bench_h2.sh.

One metric family: h2load (BENCH_H2_CONNS connections x BENCH_H2_STREAMS streams, one
thread, for BENCH_H2_SECONDS) against each proxy in front of the same nginx backend
(100-byte body). Reported per proxy: requests/s, and the proxy's own CPU microseconds per
request (utime+stime of all its processes from /proc around the measured window), which is
the figure that tells proxies apart when the load generator saturates first. Proxies on
BENCH_PROXY_CPU, load and backend on BENCH_LOAD_CPU; rounds interleaved with the order
rotated each round. Reuses bench_h1.py's process, certificate and backend helpers.
"""

import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_h1 as b1  # noqa: E402

SECONDS = b1.env_int("BENCH_H2_SECONDS", 5)
CONNS = b1.env_int("BENCH_H2_CONNS", 50)
STREAMS = b1.env_int("BENCH_H2_STREAMS", 10)
ROUNDS = b1.env_int("BENCH_ROUNDS", 3)
PORT_BASE = b1.env_int("BENCH_PORT_BASE", 28500)
# p99 latency at a fixed request rate: RATE_CONNS connections sending RATE/RATE_CONNS
# requests/s each (h2load --rps), started 1 ms apart, RATE * RATE_SECONDS requests in
# all; per-request latency from h2load's --log-file.
RATE = b1.env_int("BENCH_H2_RATE", 2000)
RATE_CONNS = b1.env_int("BENCH_H2_RATE_CONNS", 50)
RATE_SECONDS = b1.env_int("BENCH_H2_RATE_SECONDS", 10)
# Requests started while the clients still connect (one per ms, each a TLS handshake on
# both sides) are the ramp-up, not the fixed rate: "steady" percentiles leave out the
# first RATE_CONNS ms plus this margin, as h2load's own --warm-up-time does for -D runs.
RAMP_MARGIN_MS = b1.env_int("BENCH_H2_RAMP_MARGIN_MS", 100)
# The floor: nginx answering the same body itself over TLS h2 on the proxy CPU, no
# backend hop. Its latency is what this machine allows any server; 0 leaves it out.
FLOOR = b1.env_int("BENCH_H2_FLOOR", 1)
ONLY = [p for p in os.environ.get("BENCH_PROXIES", "doorman,nginx,haproxy,caddy").split(",")
        if p]
PORTS = {"doorman": PORT_BASE + 43, "nginx": PORT_BASE + 44, "haproxy": PORT_BASE + 45,
         "caddy": PORT_BASE + 46, "floor": PORT_BASE + 47}
b1.PORTS = PORTS
b1.BACKEND_PORT = PORT_BASE + 80
HOST = b1.HOST


def write_nginx_h2_conf(d, cert, key):
    path = b1.write_nginx_proxy_conf(d, cert, key)
    with open(path) as f:
        conf = f.read()
    conf = conf.replace("listen 127.0.0.1:%d ssl backlog=4096;" % PORTS["nginx"],
                        "listen 127.0.0.1:%d ssl http2 backlog=4096;\n"
                        "        http2_max_concurrent_streams 128;" % PORTS["nginx"])
    with open(path, "w") as f:
        f.write(conf)
    return path


def write_floor_conf(d, cert, key):
    """nginx serving the backend's body itself over TLS h2, on the floor port."""
    path = write_nginx_h2_conf(d, cert, key)
    with open(path) as f:
        conf = f.read()
    conf = conf.replace("listen 127.0.0.1:%d ssl" % PORTS["nginx"],
                        "listen 127.0.0.1:%d ssl" % PORTS["floor"])
    conf = re.sub(r"location / \{.*?\n        \}",
                  'location / { default_type text/plain; return 200 "%s"; }' % b1.BODY.decode(),
                  conf, flags=re.S)
    with open(path, "w") as f:
        f.write(conf)
    return path


def write_haproxy_conf(d, cert, key):
    os.makedirs(d, exist_ok=True)
    pem = os.path.join(d, "combined.pem")
    with open(pem, "w") as out:
        for p in (cert, key):
            with open(p) as f:
                out.write(f.read())
    conf = """global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:%d ssl crt %s alpn h2,http/1.1
    default_backend be
backend be
    server s1 127.0.0.1:%d maxconn 1024
""" % (PORTS["haproxy"], pem, b1.BACKEND_PORT)
    path = os.path.join(d, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    return path


def write_caddyfile(d, cert, key):
    os.makedirs(d, exist_ok=True)
    conf = """{
    admin off
    auto_https off
    skip_install_trust
    servers {
        protocols h1 h2
    }
}
https://%(host)s:%(port)d, https://localhost:%(port)d {
    bind 127.0.0.1
    tls %(cert)s %(key)s
    reverse_proxy 127.0.0.1:%(bport)d
}
""" % {"host": HOST, "port": PORTS["caddy"], "cert": cert, "key": key, "bport": b1.BACKEND_PORT}
    path = os.path.join(d, "Caddyfile")
    with open(path, "w") as f:
        f.write(conf)
    return path


def run_h2load(port, seconds):
    argv = ["h2load", "-t1", "-c%d" % CONNS, "-m%d" % STREAMS, "-D%d" % seconds,
            "https://localhost:%d/" % port]
    p = b1.spawn(argv, cpu=b1.LOAD_CPU, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        b1.stop(p)
        out = b""
    if p in b1.CHILDREN:
        b1.CHILDREN.remove(p)
    return out.decode(errors="replace")


def measure_latency(px):
    """Latency percentiles (ms) at a fixed rate of RATE requests/s over RATE_CONNS
    connections (one stream each at a time), from h2load's per-request log."""
    if RATE <= 0:
        return {}
    log_path = os.path.join(b1.WORK, "h2load-%s.log" % px.name)
    # Clients start 1 ms apart (-r 1 --rate-period 1ms), so their request timers are out
    # of phase: with -D all of them fire together, and the proxy meets bursts of
    # RATE_CONNS requests (p50 near 2 ms even straight at nginx) instead of a steady rate.
    argv = ["h2load", "-t1", "-c%d" % RATE_CONNS, "-m1", "--rps=%g" % (RATE / RATE_CONNS),
            "-n%d" % (RATE * RATE_SECONDS), "-r1", "--rate-period=1ms",
            "--log-file=" + log_path, "https://localhost:%d/" % px.port]
    p = b1.spawn(argv, cpu=b1.LOAD_CPU, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        p.communicate(timeout=RATE_SECONDS + 30)
    except subprocess.TimeoutExpired:
        b1.stop(p)
    if p in b1.CHILDREN:
        b1.CHILDREN.remove(p)
    rows, failed = [], 0  # (start in us since the epoch, latency in ms)
    try:
        with open(log_path) as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) < 3:
                    continue
                if not cols[1].startswith("2"):
                    failed += 1
                    continue
                rows.append((int(cols[0]), int(cols[2]) / 1000.0))
    except OSError:
        pass
    if not rows:
        return {"lat_failed": failed}
    ramp_end = min(r[0] for r in rows) + (RATE_CONNS + RAMP_MARGIN_MS) * 1000
    lat = sorted(r[1] for r in rows)
    steady = sorted(r[1] for r in rows if r[0] >= ramp_end)

    def pct(v, q):
        return v[min(len(v) - 1, int(q * len(v)))] if v else None

    return {"p50": pct(lat, 0.50), "p99": pct(lat, 0.99), "p99s": pct(steady, 0.99),
            "p999s": pct(steady, 0.999), "lat_n": len(lat), "lat_failed": failed,
            "lat_rps": len(lat) / RATE_SECONDS}


def parse_h2load(out):
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    return {"done": int(m.group(3)) if m else 0, "ok": int(m.group(4)) if m else 0,
            "failed": int(m.group(5)) + int(m.group(6)) if m else 0,
            "proto": proto.group(1) if proto else "?"}


def fmt_ms(v):
    return "-" if v is None else "%.2f" % v


def measure(px):
    run_h2load(px.port, 1)  # warm-up: connections to the backend exist afterwards
    if not px.check("h2 warm-up"):
        return {"value": None, "rps": None, "crashed": True}
    pids = px.pids()
    c0 = b1.cpu_seconds(pids)
    t0 = time.time()
    out = run_h2load(px.port, SECONDS)
    wall = time.time() - t0
    c1 = b1.cpu_seconds(pids)
    ok = px.check("h2")
    r = parse_h2load(out)
    cpu = c1 - c0
    r.update({"cpu_s": cpu, "rps": r["ok"] / SECONDS if r["ok"] else None, "wall": wall,
              "value": cpu / r["ok"] * 1e6 if r["ok"] and ok else None, "crashed": not ok})
    if r["failed"] or not r["ok"] or r["proto"] != "h2":
        r["h2load"] = out[-1500:]
    r.update(measure_latency(px))
    return r


def measure_floor(px):
    """Latency only: the floor proxies nothing, so its CPU per request means nothing."""
    run_h2load(px.port, 1)
    r = {"value": None, "rps": None, "crashed": not px.check("h2 warm-up")}
    r.update(measure_latency(px))
    return r


def main():
    signal.signal(signal.SIGTERM, b1.on_signal)
    doorman = os.environ.get("DOORMAN", "")
    if "doorman" in ONLY and not (doorman and os.access(doorman, os.X_OK)):
        raise SystemExit("set DOORMAN to the doorman binary (bench_h2.sh does)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for port in [b1.BACKEND_PORT] + [PORTS[p] for p in ONLY]:
        if not b1.port_free(port):
            raise SystemExit("port %d is busy (set BENCH_PORT_BASE)" % port)
    t_start = time.time()
    b1.WORK = work = tempfile.mkdtemp(prefix="bench-h2-")
    os.chmod(work, 0o755)
    cert, key, _root = b1.make_certs(work)
    bdir = os.path.join(work, "backend")
    backend = b1.spawn(b1.nginx_argv(bdir, b1.write_backend_conf(bdir)), cpu=b1.LOAD_CPU,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not b1.wait_port(b1.BACKEND_PORT, backend):
        raise SystemExit("backend nginx did not start")

    proxies = {}
    if "doorman" in ONLY:
        d = os.path.join(work, "doorman")
        conf = b1.write_doorman_conf(d, cert, key)
        proxies["doorman"] = b1.Proxy("doorman", [doorman, "run", "--config", conf,
                                                  "--data-dir", os.path.join(d, "data")],
                                      PORTS["doorman"], d)
    if "nginx" in ONLY:
        d = os.path.join(work, "nginx")
        proxies["nginx"] = b1.Proxy("nginx", b1.nginx_argv(d, write_nginx_h2_conf(d, cert, key)),
                                    PORTS["nginx"], d)
    if "haproxy" in ONLY:
        d = os.path.join(work, "haproxy")
        proxies["haproxy"] = b1.Proxy("haproxy", ["haproxy", "-db", "-f",
                                                  write_haproxy_conf(d, cert, key)],
                                      PORTS["haproxy"], d)
    if FLOOR and RATE > 0:
        d = os.path.join(work, "floor")
        proxies["floor"] = b1.Proxy("floor", b1.nginx_argv(d, write_floor_conf(d, cert, key)),
                                    PORTS["floor"], d)
    if "caddy" in ONLY:
        d = os.path.join(work, "caddy")
        os.environ.setdefault("GOMAXPROCS", "1")  # one core for each proxy
        os.environ["XDG_DATA_HOME"] = os.path.join(d, "data")
        os.environ["XDG_CONFIG_HOME"] = os.path.join(d, "config")
        proxies["caddy"] = b1.Proxy("caddy", ["caddy", "run", "--adapter", "caddyfile",
                                              "--config", write_caddyfile(d, cert, key)],
                                    PORTS["caddy"], d)
    for px in proxies.values():
        px.start()

    names = list(proxies)
    rounds = []
    for r in range(ROUNDS):
        order = names[r % len(names):] + names[:r % len(names)]
        b1.log("round %d/%d, order %s" % (r + 1, ROUNDS, " ".join(order)))
        rnd = {}
        for n in order:
            rnd[n] = res = (measure_floor(proxies[n]) if n == "floor"
                            else measure(proxies[n]))
            b1.log("  %-8s %s us/req, %s req/s, %d failed, %s; at %d req/s: p50 %s ms, "
                   "p99 %s ms, steady p99 %s ms (%s done, %d failed)" % (
                       n, b1.fmt(res["value"]), b1.fmt(res["rps"]), res.get("failed", 0),
                       res.get("proto"), RATE, fmt_ms(res.get("p50")),
                       fmt_ms(res.get("p99")), fmt_ms(res.get("p99s")), res.get("lat_n", 0),
                       res.get("lat_failed", 0)))
            if res.get("h2load"):
                b1.log("  h2load output:\n" + res["h2load"])
        rounds.append(rnd)

    print()
    print("HTTP/2 over TLS: h2load -t1 -c%d -m%d for %ds per proxy, %d interleaved rounds; "
          "proxies on CPU %s (one worker/thread each), load and backend on CPU %s" % (
              CONNS, STREAMS, SECONDS, ROUNDS, b1.PROXY_CPU, b1.LOAD_CPU))
    print("CPU: utime+stime of all the proxy's processes around each window, per request")
    print()
    print("%-9s %12s %12s %12s %12s" % ("proxy", "us/req", "req/s", "d/x us/req",
                                          "d/x req/s"))
    med = {}
    cpu_names = [n for n in names if n != "floor"]
    for n in cpu_names:
        vals = [r[n]["value"] for r in rounds if r[n]["value"]]
        rps = [r[n]["rps"] for r in rounds if r[n]["rps"]]
        med[n] = (statistics.median(vals) if vals else None,
                  statistics.median(rps) if rps else None)
    for n in cpu_names:
        cpu_ratio = [r["doorman"]["value"] / r[n]["value"] for r in rounds
                     if "doorman" in r and r["doorman"]["value"] and r[n]["value"]]
        rps_ratio = [r["doorman"]["rps"] / r[n]["rps"] for r in rounds
                     if "doorman" in r and r["doorman"]["rps"] and r[n]["rps"]]
        print("%-9s %12s %12s %12s %12s" % (
            n, b1.fmt(med[n][0]), b1.fmt(med[n][1]),
            "%.3f" % statistics.median(cpu_ratio) if cpu_ratio else "-",
            "%.3f" % statistics.median(rps_ratio) if rps_ratio else "-"))
    print("(medians over rounds; ratios are medians of per-round doorman/peer ratios)")
    if RATE > 0:
        print()
        print("latency at a fixed %d req/s (h2load -c%d -m1 --rps=%g -r1 --rate-period=1ms, "
              "%d requests): medians over rounds"
              % (RATE, RATE_CONNS, RATE / RATE_CONNS, RATE * RATE_SECONDS))
        print("steady: requests started after the ramp-up (the first %d ms: clients connect "
              "1 ms apart)" % (RATE_CONNS + RAMP_MARGIN_MS))
        print("floor: nginx answering by itself over TLS h2 on the proxy CPU, no backend hop")
        print("%-9s %9s %9s %12s %12s %12s" % ("proxy", "p50 ms", "p99 ms", "steady p99",
                                             "steady p99.9", "d/x st. p99"))

        def med_of(n, key):
            v = [r[n][key] for r in rounds if r[n].get(key) is not None]
            return statistics.median(v) if v else None
        for n in names:
            ratio = [r["doorman"]["p99s"] / r[n]["p99s"] for r in rounds
                     if r["doorman"].get("p99s") and r[n].get("p99s")] if "doorman" in names else []
            print("%-9s %9s %9s %12s %12s %12s" % (
                n, fmt_ms(med_of(n, "p50")), fmt_ms(med_of(n, "p99")), fmt_ms(med_of(n, "p99s")),
                fmt_ms(med_of(n, "p999s")),
                "%.3f" % statistics.median(ratio) if ratio else "-"))
        print("per round steady p99 ms: " + "; ".join(
            "%s %s" % (n, ",".join(fmt_ms(r[n].get("p99s")) for r in rounds)) for n in names))
    print("per round us/req: " + "; ".join(
        "%s %s" % (n, ",".join(b1.fmt(r[n]["value"]) for r in rounds)) for n in cpu_names))
    crashed = any(px.crashes for px in proxies.values())
    for px in proxies.values():
        for c in px.crashes:
            print("!! %s CRASHED during %s: %s\n%s" % (px.name, c["when"], c["how"],
                                                       c["stderr"]))
    print("total time %.0fs" % (time.time() - t_start))
    return 1 if crashed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        b1.cleanup()
