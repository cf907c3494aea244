#!/usr/bin/env python3
"""doorman vs nginx, HTTP/1.1 over TLS, side by side. Start it with bench_h1.sh.

Metrics, each from the proxy's own CPU time or memory (all its processes):
  1. CPU us per full TLS 1.3 handshake + one small proxied request
     (openssl s_time -new, which never resumes a session)
  2. CPU us per keep-alive HTTP/1.1 proxied request (wrk -t1 -c50)
  3. RSS per idle TLS connection, IDLE_CONNS held after one request each

Rounds are interleaved (A B, B A, ...). See README.md beside this file.
"""

import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


ROUNDS = env_int("BENCH_ROUNDS", 3)
HS_SECONDS = env_int("BENCH_HS_SECONDS", 5)
HS_CLIENTS = env_int("BENCH_HS_CLIENTS", 4)
REQ_SECONDS = env_int("BENCH_REQ_SECONDS", 10)
REQ_CONNS = env_int("BENCH_REQ_CONNS", 50)
IDLE_CONNS = env_int("BENCH_IDLE_CONNS", 5000)
IDLE_PARALLEL = env_int("BENCH_IDLE_PARALLEL", 32)
PORT_BASE = env_int("BENCH_PORT_BASE", 28400)
PROXY_CPU = os.environ.get("BENCH_PROXY_CPU", "0")
LOAD_CPU = os.environ.get("BENCH_LOAD_CPU", "1")
DO_PERF = os.environ.get("BENCH_PERF", "0") == "1"
PERF_SECONDS = env_int("BENCH_PERF_SECONDS", 8)
NICE = env_int("BENCH_NICE", 0)  # e.g. -10 on a machine shared with other work
KEEP = os.environ.get("BENCH_KEEP", "0") == "1"
JSON_OUT = os.environ.get("BENCH_JSON", "")
ONLY = [p for p in os.environ.get("BENCH_PROXIES", "doorman,nginx").split(",") if p]

BACKEND_PORT = PORT_BASE + 80
PORTS = {"doorman": PORT_BASE + 43, "nginx": PORT_BASE + 44}
HOST = "bench.test"
BODY = ("0123456789" * 10).encode()  # the backend's 100-byte response body
# s_time sends "GET <www> HTTP/1.0\r\n\r\n" and reads until the server closes.
# Without a Host header doorman (rightly) answers 404 itself instead of
# proxying, so the path carries a Host header and Connection: close; the
# trailing " HTTP/1.0" lands in a harmless X-Pad header.
STIME_WWW = "/ HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nX-Pad:" % HOST

TARGETS = {  # doorman/nginx ratio targets from the issue
    "handshake": 0.5,
    "request": 0.8,
    "idle_mem": 0.5,
}

CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))
WORK = None
IDLE_BIN = None
CHILDREN = []  # Popen objects we started, each in its own process group
NOTES = []


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# Processes -------------------------------------------------------------------


def spawn(argv, cpu=None, **kw):
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    if NICE:
        argv = ["nice", "-n", str(NICE)] + argv
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    CHILDREN.append(p)
    return p


def stop(p, sig=signal.SIGTERM, wait=5.0):
    if p is None:
        return
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left of its process group (nginx workers), by group id.
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass
    if p in CHILDREN:
        CHILDREN.remove(p)


def cleanup():
    for p in list(CHILDREN):
        stop(p, wait=3.0)
    if WORK and os.path.isdir(WORK):
        if KEEP:
            log("kept work dir %s" % WORK)
        else:
            shutil.rmtree(WORK, ignore_errors=True)


def on_signal(signum, frame):
    raise SystemExit(128 + signum)


def descendants(pid):
    """pid and all its descendants, from /proc."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids):
    """utime+stime of the given processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def wait_port(port, proc, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
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


def run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


# Certificates ------------------------------------------------------------------


def make_certs(d):
    """ECDSA P-256 root -> intermediate -> leaf; chain.pem = leaf + intermediate."""

    def ossl(*args):
        r = subprocess.run(["openssl"] + list(args), cwd=d, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise SystemExit("openssl %s failed:\n%s" % (" ".join(args), r.stdout))

    with open(os.path.join(d, "ca.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:%s,DNS:localhost\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" % HOST)
    for name in ("root", "int", "leaf"):
        ossl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", name + ".key")
    ossl("req", "-x509", "-new", "-key", "root.key", "-subj", "/CN=bench root", "-days", "2",
         "-sha256", "-out", "root.pem", "-addext", "basicConstraints=critical,CA:true",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    ossl("req", "-new", "-key", "int.key", "-subj", "/CN=bench intermediate", "-out", "int.csr")
    ossl("x509", "-req", "-in", "int.csr", "-CA", "root.pem", "-CAkey", "root.key",
         "-CAcreateserial", "-days", "2", "-sha256", "-extfile", "ca.ext", "-out", "int.pem")
    ossl("req", "-new", "-key", "leaf.key", "-subj", "/CN=" + HOST, "-out", "leaf.csr")
    ossl("x509", "-req", "-in", "leaf.csr", "-CA", "int.pem", "-CAkey", "int.key",
         "-CAcreateserial", "-days", "2", "-sha256", "-extfile", "leaf.ext", "-out", "leaf.pem")
    with open(os.path.join(d, "chain.pem"), "w") as out:
        for n in ("leaf.pem", "int.pem"):
            with open(os.path.join(d, n)) as f:
                out.write(f.read())
    return os.path.join(d, "chain.pem"), os.path.join(d, "leaf.key"), os.path.join(d, "root.pem")


# Servers -------------------------------------------------------------------------


NGINX_COMMON = """
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
%(user)s
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 20000; }
"""

NGINX_HTTP_COMMON = """
    access_log off;
    client_body_temp_path %(dir)s/body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
"""


def nginx_user_line():
    return "user root root;" if os.geteuid() == 0 else ""


def write_backend_conf(d):
    os.makedirs(d, exist_ok=True)
    conf = (NGINX_COMMON + "http {" + NGINX_HTTP_COMMON + """
    server {
        listen 127.0.0.1:%(port)d backlog=4096;
        default_type text/plain;
        location / { return 200 "%(body)s"; }
    }
}
""") % {"dir": d, "port": BACKEND_PORT, "body": BODY.decode(), "user": nginx_user_line()}
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def write_nginx_proxy_conf(d, cert, key):
    os.makedirs(d, exist_ok=True)
    conf = (NGINX_COMMON + "http {" + NGINX_HTTP_COMMON + """
    upstream backend {
        server 127.0.0.1:%(bport)d;
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets on;
    server {
        listen 127.0.0.1:%(port)d ssl backlog=4096;
        server_name %(host)s localhost;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }
    }
}
""") % {"dir": d, "port": PORTS["nginx"], "bport": BACKEND_PORT, "host": HOST,
        "cert": cert, "key": key, "user": nginx_user_line()}
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def write_doorman_conf(d, cert, key):
    os.makedirs(os.path.join(d, "data"), exist_ok=True)
    conf = {
        "bind": "127.0.0.1",
        "https_port": PORTS["doorman"],
        "http_port": 0,
        "workers": 1,
        "log": {"level": "warn", "access": "off"},
        "sites": [{"hosts": [HOST, "localhost"], "to": "127.0.0.1:%d" % BACKEND_PORT,
                   "tls": {"cert": cert, "key": key}}],
    }
    path = os.path.join(d, "doorman.json")
    with open(path, "w") as f:
        json.dump(conf, f, indent=1)
    return path


def nginx_argv(d, conf):
    return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", d, "-c", conf,
            "-e", os.path.join(d, "startup.log")]


class Proxy:
    def __init__(self, name, argv, port, d):
        self.name, self.argv, self.port, self.dir = name, argv, port, d
        self.proc = None
        self.starts = 0
        self.crashes = []  # descriptions
        self.errlog = os.path.join(d, "stderr.log")

    def start(self):
        self.starts += 1
        self.err_off = os.path.getsize(self.errlog) if os.path.exists(self.errlog) else 0
        errf = open(self.errlog, "ab")
        errf.write(b"--- start %d ---\n" % self.starts)
        errf.flush()
        # Core files land in the proxy's cwd (if core_pattern is a plain name).
        self.proc = spawn(self.argv, cpu=PROXY_CPU, cwd=self.dir, stdout=errf, stderr=errf,
                          preexec_fn=lambda: resource.setrlimit(
                              resource.RLIMIT_CORE, (resource.RLIM_INFINITY,
                                                     resource.RLIM_INFINITY)))
        errf.close()
        if not wait_port(self.port, self.proc):
            raise SystemExit("%s did not start listening on %d; its stderr:\n%s" %
                             (self.name, self.port, tail(self.errlog)))
        # Warm: one proxied request, so the backend connection pool exists.
        check_proxied(self.name, self.port)

    def stop(self):
        stop(self.proc)
        self.proc = None

    def pids(self):
        return descendants(self.proc.pid)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def check(self, what):
        """After a measurement: did the proxy die? Record and restart if so."""
        if self.alive():
            return True
        rc = self.proc.returncode
        how = ("signal %d (%s)" % (-rc, signal.Signals(-rc).name)) if rc < 0 else "exit %d" % rc
        desc = "%s died during %s: %s" % (self.name, what, how)
        log(desc)
        err = tail(self.errlog, 15, self.err_off)
        bt = backtrace(self)
        self.crashes.append({"when": what, "how": how, "stderr": err, "backtrace": bt})
        CHILDREN.remove(self.proc) if self.proc in CHILDREN else None
        self.proc = None
        global KEEP
        KEEP = True  # keep the logs and core for a look afterwards
        self.start()
        return False


def tail(path, n=20, offset=0):
    try:
        with open(path, errors="replace") as f:
            f.seek(offset)
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def backtrace(proxy):
    # New cores only: "core" or "core.<pid>" (kernel.core_pattern); seen ones get renamed.
    cores = [os.path.join(proxy.dir, f) for f in os.listdir(proxy.dir)
             if re.fullmatch(r"core(\.\d+)?", f)]
    if not cores or not shutil.which("gdb"):
        return ""
    core = max(cores, key=os.path.getmtime)
    exe = proxy.argv[0]
    r = run(["gdb", "-batch", "-ex", "bt 25", exe, core], timeout=60)
    frames = []
    for ln in r.stdout.splitlines():
        if ln.startswith("#") and ln not in frames:
            frames.append(ln)
    dest = os.path.join(proxy.dir, "seen-core.start%d" % proxy.starts)
    os.rename(core, dest)
    return "core %s\n%s" % (dest, "\n".join(frames))


def check_proxied(name, port):
    """One request through the proxy must reach the backend."""
    r = run(["curl", "-sk", "--max-time", "5", "--resolve", "%s:%d:127.0.0.1" % (HOST, port),
             "https://%s:%d/" % (HOST, port)])
    if r.returncode != 0 or r.stdout.encode() != BODY:
        raise SystemExit("%s on port %d does not proxy to the backend: curl rc=%d, got %r" %
                         (name, port, r.returncode, r.stdout[:200]))


def tls_facts(port):
    """Protocol and key-exchange group a default OpenSSL client gets (s_time's defaults)."""
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-tls1_3"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=10)
    proto = re.search(r"New, (TLSv[\d.]+), Cipher is (\S+)", r.stdout)
    group = re.search(r"(?:Server|Peer) Temp Key: ([^\n]+)", r.stdout)
    sig = re.search(r"Peer signature type: (\S+)", r.stdout)
    return {
        "protocol": proto.group(1) if proto else "?",
        "cipher": proto.group(2) if proto else "?",
        "group": group.group(1).strip() if group else "?",
        "signature": sig.group(1) if sig else "?",
    }


# Measurements -------------------------------------------------------------------


def measure_handshake(px):
    """CPU us per full TLS 1.3 handshake + one proxied request (Connection: close)."""
    pids = px.pids()
    c0 = cpu_seconds(pids)
    argv = ["openssl", "s_time", "-new", "-tls1_3", "-connect", "127.0.0.1:%d" % px.port,
            "-www", STIME_WWW, "-time", str(HS_SECONDS)]
    procs = [spawn(argv, cpu=LOAD_CPU, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(HS_CLIENTS)]
    conns = resumed = full = errors = 0
    nbytes = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=HS_SECONDS + 30)
        except subprocess.TimeoutExpired:
            stop(p)
            out, err = b"", b"timeout"
        if p in CHILDREN:
            CHILDREN.remove(p)
        out = out.decode(errors="replace")
        m = re.search(r"(\d+) connections in [\d.]+s;", out)
        if m:
            conns += int(m.group(1))
        else:
            errors += 1
        b = re.search(r"(\d+) bytes read per connection", out)
        if b:
            nbytes.append(int(b.group(1)))
        # s_time prints one character per connection, between its "Collecting ..."
        # line and its summary: 'r' for a resumed session, '*' for a new one.
        head = out[: m.start()] if m else out
        progress = head.split("seconds\n", 1)[1] if "seconds\n" in head else head
        resumed += progress.count("r")
        full += progress.count("*")
        if "ERROR" in out or "ERROR" in err.decode(errors="replace"):
            errors += 1
    c1 = cpu_seconds(pids)
    ok = px.check("handshake")
    cpu = c1 - c0
    return {"cpu_s": cpu, "ops": conns, "full": full, "resumed": resumed, "client_errors": errors,
            "bytes_per_conn": nbytes[0] if nbytes else None, "crashed": not ok,
            "value": (cpu / conns * 1e6) if conns and ok else None}


def run_wrk(port, seconds, conns):
    argv = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "5s",
            "https://localhost:%d/" % port]
    p = spawn(argv, cpu=LOAD_CPU, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        stop(p)
        out = b""
    if p in CHILDREN:
        CHILDREN.remove(p)
    return out.decode(errors="replace")


def parse_wrk(out):
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    reqs = int(m.group(1)) if m else 0
    errs = 0
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if se:
        errs += sum(int(x) for x in se.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return reqs, errs, int(non2xx.group(1)) if non2xx else 0


def measure_request(px):
    """CPU us per keep-alive HTTP/1.1 proxied request, wrk -t1 -c50."""
    run_wrk(px.port, 1, REQ_CONNS)  # warm-up: fills the backend pool
    if not px.check("request warm-up"):
        return {"crashed": True, "value": None}
    pids = px.pids()
    c0 = cpu_seconds(pids)
    out = run_wrk(px.port, REQ_SECONDS, REQ_CONNS)
    c1 = cpu_seconds(pids)
    ok = px.check("request")
    reqs, errs, non2xx = parse_wrk(out)
    cpu = c1 - c0
    return {"cpu_s": cpu, "ops": reqs, "socket_errors": errs, "non2xx": non2xx,
            "rps": reqs / REQ_SECONDS, "crashed": not ok,
            "value": (cpu / reqs * 1e6) if reqs and ok else None,
            "wrk": out if (errs or non2xx or not reqs) else ""}


def build_idle_client():
    """idle_conns.c against BoringSSL where doorman's build has it (the client then
    costs about half the CPU of an OpenSSL 3.0 one), else the system OpenSSL."""
    out = os.path.join(WORK, "idle_conns")
    src = os.path.join(HERE, "idle_conns.c")
    bssl = "/usr/lib/x86_64-linux-gnu/android"
    if os.path.exists("/usr/include/android/openssl/ssl.h") and \
            os.path.exists(os.path.join(bssl, "libssl.so")):
        r = run(["cc", "-O2", "-Wall", "-I/usr/include/android", "-o", out, src, "-L" + bssl,
                 "-Wl,-rpath," + bssl, "-lssl", "-lcrypto"])
        if r.returncode == 0:
            return out, "BoringSSL (android-libboringssl)"
    r = run(["cc", "-O2", "-Wall", "-o", out, src, "-lssl", "-lcrypto"])
    if r.returncode != 0:
        raise SystemExit("cannot build idle_conns.c (needs gcc and libssl-dev):\n" + r.stdout)
    return out, run(["openssl", "version"]).stdout.strip()


def measure_idle(px):
    """KiB of RSS per idle TLS connection (handshake + one request, then idle)."""
    px.stop()  # fresh process: freed-but-kept heap from earlier runs would hide growth
    px.start()
    time.sleep(0.3)
    pids = px.pids()
    base = rss_kib(pids)
    argv = [IDLE_BIN, str(px.port), str(IDLE_CONNS), HOST, str(IDLE_PARALLEL)]
    p = spawn(argv, cpu=LOAD_CPU, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
    t0 = time.time()
    line = p.stdout.readline().decode().strip()
    open_s = time.time() - t0
    held = int(line.split()[1]) if line.startswith("READY") else 0
    result = {"held": held, "open_s": open_s, "base_kib": base}
    if held:
        time.sleep(1.0)  # settle
        pids = px.pids()
        samples = [rss_kib(pids)]
        time.sleep(0.5)
        samples.append(rss_kib(pids))
        result["loaded_kib"] = max(samples)
    try:
        p.stdin.close()
        rest = p.stdout.read().decode()
        p.wait(timeout=30)
    except (subprocess.TimeoutExpired, BrokenPipeError):
        rest = ""
    m = re.search(r"ALIVE (\d+)", rest)
    result["alive_at_end"] = int(m.group(1)) if m else None
    err = p.stderr.read().decode(errors="replace")
    if held < IDLE_CONNS or result["alive_at_end"] != held:
        result["client_error"] = err[-800:]
    stop(p)
    time.sleep(0.3)
    ok = px.check("idle connections")
    result["crashed"] = not ok
    if held and ok and held >= IDLE_CONNS * 0.99 and result["alive_at_end"] == held:
        result["value"] = (result["loaded_kib"] - base) / held
    else:
        result["value"] = None
    return result


def stime_load(px, seconds):
    """HS_CLIENTS parallel `openssl s_time -new` for seconds; returns connections made."""
    argv = ["openssl", "s_time", "-new", "-tls1_3", "-connect", "127.0.0.1:%d" % px.port,
            "-www", STIME_WWW, "-time", str(seconds)]
    procs = [spawn(argv, cpu=LOAD_CPU, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
             for _ in range(HS_CLIENTS)]
    total = 0
    for p in procs:
        try:
            out = p.communicate(timeout=seconds + 30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            stop(p)
            out = ""
        CHILDREN.remove(p) if p in CHILDREN else None
        m = re.search(r"(\d+) connections in [\d.]+s;", out)
        total += int(m.group(1)) if m else 0
    return total


def wrk_load(px, seconds):
    return parse_wrk(run_wrk(px.port, seconds, REQ_CONNS))[0]


def watch(px, monitor_argv, load, seconds):
    """Runs monitor_argv (attached to the proxy) around load(px, seconds); stops it
    with SIGINT. Returns (operations, monitor's stderr)."""
    mon = spawn(monitor_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    ops = load(px, seconds)
    time.sleep(0.2)
    try:
        os.kill(mon.pid, signal.SIGINT)
        err = mon.communicate(timeout=60)[1].decode(errors="replace")
    except (ProcessLookupError, subprocess.TimeoutExpired):
        err = ""
    stop(mon)
    return ops, err


def profile(px, what, seconds):
    """Syscalls per operation (perf stat on raw_syscalls, strace -c for the breakdown
    by call) and a cpu-clock profile of the proxy under one workload:
    what = "request" (wrk keep-alive) or "handshake" (s_time -new)."""
    load = wrk_load if what == "request" else stime_load
    unit = "request" if what == "request" else "connection"
    out = []
    pids = [str(p) for p in px.pids()]
    if shutil.which("perf"):
        ops, err = watch(px, ["perf", "stat", "-x", ",", "-e",
                              "raw_syscalls:sys_enter,context-switches", "-p", ",".join(pids)],
                         load, 4)
        counts = {}
        for ln in err.splitlines():
            f = ln.split(",")
            if len(f) > 2 and f[0].strip().isdigit():
                counts[f[2]] = int(f[0])
        if ops and counts:
            out.append("per %s (perf stat, %d %ss): %s" % (unit, ops, unit, ", ".join(
                "%s %.2f" % (k, v / ops) for k, v in counts.items())))
    if shutil.which("strace"):
        stf = os.path.join(WORK, "strace-%s-%s.txt" % (px.name, what))
        ops, _ = watch(px, ["strace", "-c", "-f", "-o", stf] + sum([["-p", p] for p in pids], []),
                       load, 3)
        rows = []
        try:
            with open(stf) as f:
                for ln in f:
                    fl = ln.split()
                    if len(fl) >= 5 and fl[0][0].isdigit() and fl[-1] != "total":
                        rows.append((int(fl[3]), fl[-1]))
        except OSError:
            pass
        if ops and rows:
            rows.sort(reverse=True)
            out.append("syscalls per %s (strace -c, %d %ss, slowed down): %s" % (
                unit, ops, unit, ", ".join("%s %.2f" % (name, n / ops) for n, name in rows[:14])))
    px.check("profile")
    if not shutil.which("perf"):
        out.append("perf not installed")
        return "\n".join(out)
    data = os.path.join(WORK, "perf-%s-%s.data" % (px.name, what))
    watch(px, ["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g", "-p",
               ",".join(str(p) for p in px.pids()), "-o", data], load, seconds)
    px.check("profile")
    if not os.path.exists(data):
        out.append("perf record wrote nothing")
        return "\n".join(out)
    rep = run(["perf", "report", "-i", data, "--no-children", "--sort", "dso", "--stdio",
               "-g", "none", "--percent-limit", "1"], timeout=120)
    out.append("self time by object: " + "; ".join([
        " ".join(ln.split()) for ln in rep.stdout.splitlines()
        if ln.strip() and not ln.startswith("#")][:8]))
    rep = run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,symbol",
               "--stdio", "-g", "none", "--percent-limit", "0.7"], timeout=120)
    out.append("self time by symbol:")
    out += ["  " + re.sub(r"\s+-\s+-\s*$", "", ln.rstrip()) for ln in rep.stdout.splitlines()
            if ln.strip() and not ln.startswith("#")][:25]
    return "\n".join(out)


# Report ---------------------------------------------------------------------------


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    return ("%.1f" % v) + unit


def ratio(a, b):
    return a / b if a is not None and b else None


def report(results, facts):
    titles = {
        "handshake": "CPU us per full TLS 1.3 handshake + 1 proxied request "
                     "(s_time -new, %d clients x %ds)" % (HS_CLIENTS, HS_SECONDS),
        "request": "CPU us per keep-alive HTTP/1.1 proxied request (wrk -t1 -c%d -d%ds)"
                   % (REQ_CONNS, REQ_SECONDS),
        "idle_mem": "KiB RSS per idle TLS connection (%d held, after 1 request each)"
                    % IDLE_CONNS,
    }
    summary = {}
    for metric in ("handshake", "request", "idle_mem"):
        print()
        print("== " + titles[metric])
        print("%-7s %12s %12s %9s   %s" % ("round", "doorman", "nginx", "d/n", "detail"))
        ratios = []
        per = {"doorman": [], "nginx": []}
        for r, rnd in enumerate(results):
            d = rnd["doorman"].get(metric) if "doorman" in rnd else None
            n = rnd["nginx"].get(metric) if "nginx" in rnd else None
            dv = d["value"] if d else None
            nv = n["value"] if n else None
            if dv is not None:
                per["doorman"].append(dv)
            if nv is not None:
                per["nginx"].append(nv)
            rt = ratio(dv, nv)
            if rt is not None:
                ratios.append(rt)
            detail = []
            for name, x in (("doorman", d), ("nginx", n)):
                if not x:
                    continue
                if x.get("crashed"):
                    detail.append("%s CRASHED" % name)
                if metric == "handshake":
                    detail.append("%s %d conns %d resumed%s" % (
                        name[0], x.get("ops", 0), x.get("resumed", 0),
                        " %d client errors" % x["client_errors"] if x.get("client_errors")
                        else ""))
                elif metric == "request":
                    detail.append("%s %.0f req/s%s" % (
                        name[0], x.get("rps", 0),
                        " errors %d non2xx %d" % (x.get("socket_errors", 0), x.get("non2xx", 0))
                        if x.get("socket_errors") or x.get("non2xx") else ""))
                else:
                    detail.append("%s %d held in %.1fs base %d KiB" % (
                        name[0], x.get("held", 0), x.get("open_s", 0), x.get("base_kib", 0)))
            print("%-7s %12s %12s %9s   %s" % (r + 1, fmt(dv), fmt(nv),
                                              "%.3f" % rt if rt is not None else "n/a",
                                              "; ".join(detail)))
        md = statistics.median(per["doorman"]) if per["doorman"] else None
        mn = statistics.median(per["nginx"]) if per["nginx"] else None
        mr = statistics.median(ratios) if ratios else None
        print("%-7s %12s %12s %9s   (ratio column: median of per-round ratios)" % (
            "median", fmt(md), fmt(mn), "%.3f" % mr if mr is not None else "n/a"))
        target = TARGETS[metric]
        verdict = "n/a" if mr is None else ("PASS" if mr <= target else "MISS")
        print("target doorman/nginx <= %.2f: %s" % (target, verdict))
        summary[metric] = {"doorman_median": md, "nginx_median": mn, "ratio_median": mr,
                           "per_round_ratios": ratios, "target": target, "verdict": verdict}
    print()
    print("== summary")
    print("%-10s %12s %12s %8s %8s %s" % ("metric", "doorman", "nginx", "ratio", "target",
                                          "verdict"))
    units = {"handshake": " us", "request": " us", "idle_mem": " KiB"}
    for metric, s in summary.items():
        print("%-10s %12s %12s %8s %8s %s" % (
            metric, fmt(s["doorman_median"], units[metric]), fmt(s["nginx_median"], units[metric]),
            "%.3f" % s["ratio_median"] if s["ratio_median"] is not None else "n/a",
            "<= %.2f" % s["target"], s["verdict"]))
    return summary


def main():
    global WORK, IDLE_BIN
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    doorman = os.environ.get("DOORMAN", "")
    if "doorman" in ONLY and not (doorman and os.access(doorman, os.X_OK)):
        raise SystemExit("set DOORMAN to the doorman binary (bench_h1.sh does)")
    if os.cpu_count() < 2:
        NOTES.append("only %d CPU: proxy and load share a core" % os.cpu_count())
    # Enough descriptors for IDLE_CONNS in each process (inherited by children).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(IDLE_CONNS * 2 + 1024, 65536)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for port in [BACKEND_PORT] + [PORTS[p] for p in ONLY]:
        if not port_free(port):
            raise SystemExit("port %d is busy (set BENCH_PORT_BASE)" % port)

    t_start = time.time()
    WORK = tempfile.mkdtemp(prefix="bench-h1-")
    os.chmod(WORK, 0o755)
    cert, key, _root = make_certs(WORK)
    log("work dir %s; certificate: ECDSA P-256 leaf + intermediate" % WORK)
    IDLE_BIN, idle_tls = build_idle_client()
    log("idle-connection client built against %s" % idle_tls)

    bdir = os.path.join(WORK, "backend")
    backend = spawn(nginx_argv(bdir, write_backend_conf(bdir)), cpu=LOAD_CPU,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_port(BACKEND_PORT, backend):
        raise SystemExit("backend nginx did not start: %s" % tail(os.path.join(bdir,
                                                                             "startup.log")))

    proxies = {}
    if "doorman" in ONLY:
        ddir = os.path.join(WORK, "doorman")
        dconf = write_doorman_conf(ddir, cert, key)
        proxies["doorman"] = Proxy("doorman", [doorman, "run", "--config", dconf, "--data-dir",
                                               os.path.join(ddir, "data")], PORTS["doorman"], ddir)
    if "nginx" in ONLY:
        ndir = os.path.join(WORK, "nginx")
        proxies["nginx"] = Proxy("nginx", nginx_argv(ndir, write_nginx_proxy_conf(ndir, cert,
                                                                                  key)),
                                 PORTS["nginx"], ndir)
    for px in proxies.values():
        px.start()
    facts = {name: tls_facts(px.port) for name, px in proxies.items()}
    ver = run(["nginx", "-v"]).stdout.strip()
    log("nginx: %s; openssl: %s" % (ver, run(["openssl", "version"]).stdout.strip()))
    for name, f in facts.items():
        log("%s TLS with a default OpenSSL client: %s %s, group %s, signature %s" % (
            name, f["protocol"], f["cipher"], f["group"], f["signature"]))

    names = list(proxies)
    results = []
    for r in range(ROUNDS):
        order = names[r % len(names):] + names[:r % len(names)]
        rnd = {n: {} for n in names}
        log("round %d/%d, order %s" % (r + 1, ROUNDS, " ".join(order)))
        for metric, fn in (("handshake", measure_handshake), ("request", measure_request),
                           ("idle_mem", measure_idle)):
            for n in order:
                res = fn(proxies[n])
                rnd[n][metric] = res
                log("  %-9s %-8s %s %s (%s)" % (metric, n, fmt(res.get("value")),
                                               "KiB" if metric == "idle_mem" else "us", ", ".join(
                    "%s=%s" % (k, (round(v, 3) if isinstance(v, float) else v))
                    for k, v in res.items() if k not in ("value", "wrk", "client_error")
                    and v not in (None, "", 0, False))))
                if res.get("wrk"):
                    log("  wrk output:\n" + res["wrk"])
                if res.get("client_error"):
                    log("  idle client: " + res["client_error"])
        results.append(rnd)

    print()
    print("doorman vs nginx, HTTP/1.1 over TLS: %d interleaved rounds, proxies on CPU %s "
          "(one worker each), load and backend on CPU %s" % (ROUNDS, PROXY_CPU, LOAD_CPU))
    print("doorman: %s" % doorman)
    print("nginx:   %s (worker_processes 1, upstream keepalive 1024)" % ver)
    for name, f in facts.items():
        print("TLS (%s): %s, %s, key exchange %s, signature %s" % (
            name, f["protocol"], f["cipher"], f["group"], f["signature"]))
    print("handshakes: openssl s_time -new never resumes a session (and it prints 'r' for a "
          "resumed one: the 'resumed' counts below come from that)")
    print("CPU time: utime+stime of all the proxy's processes from /proc, "
          "around each measured window")
    for n in NOTES:
        print("note: " + n)
    summary = report(results, facts)

    crashed = False
    for px in proxies.values():
        shown = set()
        for c in px.crashes:
            crashed = True
            print()
            print("!! %s CRASHED during %s: %s" % (px.name, c["when"], c["how"]))
            # The same crash again: one line, not the whole report.
            key = (c["how"], c["stderr"].strip().splitlines()[-1:] and
                   c["stderr"].strip().splitlines()[-1],
                   "\n".join(c["backtrace"].splitlines()[1:]))
            if key in shown:
                print("   (same stderr and backtrace as above)")
                continue
            shown.add(key)
            if c["stderr"]:
                print("   stderr tail:\n" + c["stderr"])
            if c["backtrace"]:
                print("   backtrace:\n" + c["backtrace"])
    if crashed:
        print("   logs kept in %s" % WORK)

    prof = {}
    if DO_PERF:
        for what in ("request", "handshake"):
            for name in names:
                log("profiling %s under the %s workload" % (name, what))
                prof["%s/%s" % (name, what)] = text = profile(proxies[name], what, PERF_SECONDS)
                print()
                print("== profile of %s, %s workload (%s)" % (
                    name, what, "wrk -t1 -c%d keep-alive" % REQ_CONNS if what == "request"
                    else "%d x s_time -new" % HS_CLIENTS))
                print(text)

    print()
    print("total time %.0fs" % (time.time() - t_start))
    if JSON_OUT:
        with open(JSON_OUT, "w") as f:
            json.dump({"settings": {"rounds": ROUNDS, "hs_seconds": HS_SECONDS,
                                    "hs_clients": HS_CLIENTS, "req_seconds": REQ_SECONDS,
                                    "req_conns": REQ_CONNS, "idle_conns": IDLE_CONNS},
                       "tls": facts, "rounds": results, "summary": summary,
                       "crashes": {p.name: p.crashes for p in proxies.values()},
                       "profiles": prof}, f, indent=1, default=str)
    return 1 if crashed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        cleanup()
