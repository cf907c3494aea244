"""Helpers for the on-demand TLS tests (test_ondemand.py), stdlib only except make_stored_certs,
which needs the `cryptography` module (Debian: python3-cryptography).

- AskServer: the operator's `ask` endpoint, a threaded HTTP server on 127.0.0.1 that answers
  GET ?domain=NAME with 200 when its predicate allows NAME and 403 otherwise, counts the calls
  per name, and can be made slow per name.
- closed_port_url(): an ask URL where nothing listens (connection refused).
- tls_get(): one TLS handshake with any SNI (bytes are sent as they are, so invalid names
  reach the server) plus one GET, timed, returning the served certificate.
- parallel(): many tls_get calls at once, one thread each.
- order_starts() / orders_in_flight() / last_summary(): what doorman's log says about orders.
- make_stored_certs(): certificates in doorman's storage layout, as if issued earlier.
"""

import datetime
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

import dmtest


# ---- the ask endpoint ---------------------------------------------------------------------


class AskServer:
    """GET <url>?domain=NAME -> 200 if allow(NAME) else 403; delay(NAME) seconds first.

    allow: a callable name -> bool, or a collection of allowed names.
    """

    def __init__(self, allow=lambda name: True, delay=lambda name: 0.0, path="/allow"):
        self.allow = allow if callable(allow) else (lambda name, s=frozenset(allow): name in s)
        self.delay = delay
        self.calls = {}  # name -> number of requests seen
        self.bad_requests = []  # request targets without exactly one domain parameter
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query, keep_blank_values=True)
                names = q.get("domain", [])
                if u.path != path or len(names) != 1:
                    with outer.lock:
                        outer.bad_requests.append(self.path)
                    self._answer(400)
                    return
                name = names[0]
                with outer.lock:
                    outer.calls[name] = outer.calls.get(name, 0) + 1
                d = outer.delay(name)
                if d:
                    time.sleep(d)
                self._answer(200 if outer.allow(name) else 403)

            def _answer(self, status):
                body = b"ok\n" if status == 200 else b"no\n"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # doorman gave up on a slow answer and closed

            def log_message(self, fmt, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

            def handle_error(self, request, client_address):
                pass  # resets from a client that timed out are expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, name):
        with self.lock:
            return self.calls.get(name, 0)

    def total(self):
        with self.lock:
            return sum(self.calls.values())

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port_url():
    """An ask URL on a loopback port nothing listens on (a free port never bound again)."""
    return f"http://127.0.0.1:{dmtest.free_port()}/allow"


# ---- TLS clients --------------------------------------------------------------------------


class Result:
    """What one tls_get saw: ok (a 200 with the backend's body), status, body, the served
    certificate (cert: getpeercert() dict when verified; der: bytes), error text, and
    start/end times (time.monotonic())."""

    def __init__(self, name):
        self.name = name
        self.ok = False
        self.handshake_ok = False
        self.status = None
        self.body = b""
        self.cert = None
        self.der = None
        self.error = None
        self.start = self.end = None

    @property
    def elapsed(self):
        return self.end - self.start

    def __repr__(self):
        return (f"<Result {self.name!r} ok={self.ok} status={self.status} "
                f"error={self.error!r} {self.elapsed:.3f}s>")


def client_context(cafile=None):
    """A client context verifying against cafile (hostname checked), or verifying nothing."""
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def tls_get(port, sni, cafile=None, path="/hello", host=None, timeout=30.0, ctx=None,
            expect_body=b"hello from app\n", response_timeout=10.0):
    """A fresh TCP connection to 127.0.0.1:port, a TLS handshake with SNI sni, then
    GET path with Host host (default: sni). sni as bytes is sent unchanged (no IDNA, so
    invalid names reach the server); sni None sends no SNI. With cafile, the chain and the
    name are verified. timeout bounds the connect and the handshake (which may wait for an
    order); once the handshake is done the response must come within response_timeout.
    Never raises: the outcome is in the returned Result."""
    name = sni.decode("ascii", "replace") if isinstance(sni, bytes) else sni
    r = Result(name)
    if ctx is None:
        ctx = client_context(cafile)
        if sni is None or isinstance(sni, bytes):
            ctx.check_hostname = False
    r.start = time.monotonic()
    raw = None
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            raw = None
            r.handshake_ok = True
            r.der = s.getpeercert(binary_form=True)
            r.cert = s.getpeercert() if ctx.verify_mode != ssl.CERT_NONE else None
            s.settimeout(min(timeout, response_timeout))
            s.sendall(dmtest.request_bytes("GET", path, host or name or "127.0.0.1",
                                           [("Connection", "close")]))
            resp = dmtest.read_response(s.makefile("rb"))
            r.status, r.body = resp.status, resp.body
            r.ok = resp.status == 200 and (expect_body is None or resp.body == expect_body)
            if not r.ok:
                r.error = f"HTTP {resp.status} {resp.body[:100]!r}"
    except (OSError, ssl.SSLError, AssertionError, ValueError) as e:
        when = "after the handshake, " if r.handshake_ok else ""
        r.error = f"{when}{type(e).__name__}: {e}"
    finally:
        if raw is not None:
            raw.close()
        r.end = time.monotonic()
    return r


def parallel(fn, args_list, max_threads=None):
    """Runs fn(*args) for every args in args_list, each in its own thread (at most
    max_threads at a time, default all at once); returns the results in order."""
    results = [None] * len(args_list)
    sem = threading.BoundedSemaphore(max_threads or len(args_list))

    def one(i, args):
        try:
            results[i] = fn(*args)
        finally:
            sem.release()
    threads = []
    for i, args in enumerate(args_list):
        sem.acquire()
        t = threading.Thread(target=one, args=(i, args), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return results


def error_kinds(results):
    """'error text (up to 80 chars)' -> [count, slowest seconds, an example name], for a
    short failure message about many failed Results."""
    kinds = {}
    for r in results:
        k = kinds.setdefault((r.error or f"HTTP {r.status}")[:80], [0, 0.0, r.name])
        k[0] += 1
        k[1] = round(max(k[1], r.elapsed), 2)
    return kinds


def served_sans(result):
    """The dNSName SANs of a verified Result's certificate, as a sorted list."""
    return sorted(v for k, v in (result.cert or {}).get("subjectAltName", ()) if k == "DNS")


def openssl_handshake(port, servername, timeout=10.0):
    """A handshake with openssl s_client sending servername as SNI verbatim (unlike Python,
    it sends an IP literal too). Returns (handshake_ok, seconds, output)."""
    openssl = dmtest.require_tool("openssl", "openssl")
    t0 = time.monotonic()
    r = dmtest.run([openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                    servername, "-alpn", "http/1.1", "-brief"], timeout=timeout, input_bytes=b"")
    took = time.monotonic() - t0
    out = dmtest.text(r.stdout) + dmtest.text(r.stderr)
    # -brief prints "CONNECTION ESTABLISHED" once the handshake completed.
    return "CONNECTION ESTABLISHED" in out, took, out


# ---- doorman's log ------------------------------------------------------------------------

ORDER_START = re.compile(r"ordering a certificate for (\S+) from ")
# The manager's `certificate issued names=NAME ...` (also logged for on-demand orders) or the
# order's own `order=NAME: certificate issued ...`; a failure: `order for NAME failed` or
# `order=NAME: ... failed`.
ORDER_END = re.compile(r"certificate (?:issued|renewed) names=([^\s,]+)|order for (\S+) failed|"
                       r"order=([^\s:]+): (?:.*\bfailed\b)")
# "on-demand: orders started=N succeeded=N ... handshakes waited=N ...": every key=value.
SUMMARY = re.compile(r"on-demand: orders (started=\d+.*)$", re.M)


def order_starts(log):
    """name -> how many orders doorman started for it."""
    counts = {}
    for m in ORDER_START.finditer(log):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def orders_in_flight(log):
    """(max orders started but not finished at any point, number of finished orders), from
    doorman's log lines in order: an order starts at `ordering a certificate for NAME` and
    ends at `certificate issued names=NAME` (logged once the certificate is stored) or at a
    failure line (ORDER_END)."""
    open_names = {}
    cur = peak = ended = 0
    for line in log.splitlines():
        m = ORDER_START.search(line)
        if m:
            open_names[m.group(1)] = open_names.get(m.group(1), 0) + 1
            cur += 1
            peak = max(peak, cur)
            continue
        m = ORDER_END.search(line)
        if m:
            name = m.group(1) or m.group(2) or m.group(3)
            if open_names.get(name, 0) > 0:
                open_names[name] -= 1
                cur -= 1
                ended += 1
    return peak, ended


def refusal_reasons(log):
    """reason -> count, from doorman's debug lines `on-demand: NAME refused: REASON` (a
    message for failed assertions)."""
    counts = {}
    for m in re.finditer(r"on-demand: \S+ refused: ([^\n]*)", log):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def last_summary(log):
    """The last `on-demand: orders ...` summary line as a dict of its key=value integers
    (started, succeeded, failed, refused, waited, wait_ms_p50, wait_ms_max, and whatever
    else it carries), or None."""
    found = None
    for m in SUMMARY.finditer(log):
        found = m
    if found is None:
        return None
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(1))}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# ---- stored certificates ------------------------------------------------------------------


def require_cryptography():
    """The cryptography module, installed with apt-get if missing (like bench scripts do);
    a SetupError (a failure, never a skip) if that is impossible."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print("installing python3-cryptography for the stored-certificate test",
                  file=sys.stderr)
            subprocess.run(["apt-get", "install", "-y", "-qq", "python3-cryptography"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=300,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        try:
            import cryptography  # noqa: F401,F811
        except ImportError:
            raise dmtest.SetupError("python module 'cryptography' missing: "
                                    "apt-get install python3-cryptography") from None
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    return x509, hashes, serialization, ec, NameOID


def make_stored_certs(data_dir, issuer_id, names, days=90):
    """Writes one stored certificate per name under
    data_dir/certificates/<issuer_id>/<name>/{cert.pem,key.pem,meta.json}, doorman's layout
    (docs/certificates.md), signed by a throw-away CA. One CA key and one leaf key serve all
    names so 10,000 take seconds. Returns (ca_root_path, {name: serial as int})."""
    x509, hashes, serialization, ec, NameOID = require_cryptography()
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "on-demand test stored CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(not_before).not_valid_after(not_after + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    root_path = os.path.join(data_dir, "stored-ca-root.pem")
    with open(root_path, "wb") as f:
        f.write(ca_pem)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    key_pem = leaf_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    pub = leaf_key.public_key()
    eku = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH])
    base = os.path.join(data_dir, "certificates", issuer_id)
    os.makedirs(base, mode=0o700, exist_ok=True)
    serials = {}
    nb, na = int(not_before.timestamp()), int(not_after.timestamp())
    for name in names:
        serial = x509.random_serial_number()
        leaf = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(pub).serial_number(serial)
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(eku, critical=False)
                .sign(ca_key, hashes.SHA256()))
        d = os.path.join(base, name)
        os.mkdir(d, 0o700)
        with open(os.path.join(d, "cert.pem"), "wb") as f:
            f.write(leaf.public_bytes(serialization.Encoding.PEM) + ca_pem)
        fd = os.open(os.path.join(d, "key.pem"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        meta = {"names": [name], "issuer": issuer_id, "not_before": nb, "not_after": na,
                # renewal due after two thirds of the lifetime: not during the test
                "renew_after": nb + (na - nb) * 2 // 3, "last_error": None}
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(meta, f)
        serials[name] = serial
    return root_path, serials


def issuer_storage_id(directory_url):
    """acme_issuer_storage_id (acme/manager_acme.c) in Python: "acme-" + the URL's host[:port]
    lower-cased, '.' -> '_', anything outside [a-z0-9-] -> '-'."""
    rest = directory_url.split("://", 1)[-1].split("/", 1)[0].lower()
    out = []
    for ch in rest:
        if ch == ".":
            out.append("_")
        elif ch.isascii() and (ch.isalnum() or ch == "-"):
            out.append(ch)
        else:
            out.append("-")
    return "acme-" + "".join(out)
