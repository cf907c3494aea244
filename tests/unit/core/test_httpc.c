/* Tests of proxy/core/httpc.c against real peers on loopback: plain and TLS
 * HTTP/1.1 servers written here (libevent; BoringSSL server side with a CA
 * and leaf certificates made at run time), a DNS server (libevent's evdns
 * server API) and a hosts file written by the test, plus the response decoder
 * on fixed inputs. Nothing leaves loopback; every loop runs with a deadline. */
#include "proxy/core/httpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/dns_struct.h>
#include <event2/event.h>
#include <openssl/bytestring.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "harness.h"
#include "proxy/core/time.h"

#define BIG_BODY (2 * 1024 * 1024)

/* ---- Fixtures: keys, certificates, files --------------------------------- */

static struct {
    bool is_ready;
    char dir[128];
    char ca_path[192];       /* the CA our servers' leaves chain to */
    char wrong_ca_path[192]; /* an unrelated CA */
    char hosts_path[192];
    EVP_PKEY *ca_key, *wrong_ca_key, *leaf_key;
    X509 *ca, *wrong_ca;
    X509 *leaf;       /* localhost, 127.0.0.1, ::1 */
    X509 *other_leaf; /* other.test only */
} g;

static EVP_PKEY *key_new(void)
{
    EVP_PKEY *k = EVP_PKEY_new();
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EC_KEY_generate_key(ec);
    EVP_PKEY_assign_EC_KEY(k, ec);
    return k;
}

static void cert_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509V3_set_ctx_nodb(&ctx);
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
}

/* cert_new makes a CA (sans == NULL, self-signed) or a leaf for sans
 * ("DNS:localhost,IP:127.0.0.1") signed by issuer. */
static X509 *cert_new(EVP_PKEY *key, const char *cn, const char *sans, X509 *issuer,
                      EVP_PKEY *issuer_key)
{
    static long serial = 1;
    X509 *x = X509_new();
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8, (const uint8_t *)cn,
                               -1, -1, 0);
    X509 *iss = issuer != NULL ? issuer : x;
    X509_set_issuer_name(x, X509_get_subject_name(iss));
    if (sans == NULL) {
        cert_ext(x, iss, NID_basic_constraints, "critical,CA:TRUE");
        cert_ext(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        cert_ext(x, iss, NID_basic_constraints, "critical,CA:FALSE");
        cert_ext(x, iss, NID_key_usage, "critical,digitalSignature");
        cert_ext(x, iss, NID_ext_key_usage, "serverAuth");
        cert_ext(x, iss, NID_subject_alt_name, sans);
    }
    X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256());
    return x;
}

static void write_pem(const char *path, X509 *x)
{
    FILE *f = fopen(path, "w");
    PEM_write_X509(f, x);
    fclose(f);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void fx_setup(void)
{
    if (g.is_ready) {
        return;
    }
    signal(SIGPIPE, SIG_IGN);
    const char *tmp = getenv("TMPDIR");
    snprintf(g.dir, sizeof(g.dir), "%s/dm-httpc-test-XXXXXX", tmp != NULL ? tmp : "/tmp");
    if (mkdtemp(g.dir) == NULL) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(g.ca_path, sizeof(g.ca_path), "%s/ca.pem", g.dir);
    snprintf(g.wrong_ca_path, sizeof(g.wrong_ca_path), "%s/wrong-ca.pem", g.dir);
    snprintf(g.hosts_path, sizeof(g.hosts_path), "%s/hosts", g.dir);
    g.ca_key = key_new();
    g.wrong_ca_key = key_new();
    g.leaf_key = key_new();
    g.ca = cert_new(g.ca_key, "httpc test CA", NULL, NULL, NULL);
    g.wrong_ca = cert_new(g.wrong_ca_key, "httpc wrong CA", NULL, NULL, NULL);
    g.leaf = cert_new(g.leaf_key, "localhost", "DNS:localhost,IP:127.0.0.1,IP:::1", g.ca, g.ca_key);
    g.other_leaf = cert_new(g.leaf_key, "other.test", "DNS:other.test", g.ca, g.ca_key);
    write_pem(g.ca_path, g.ca);
    write_pem(g.wrong_ca_path, g.wrong_ca);
    /* ::1 first: servers listen on 127.0.0.1 only, so every "localhost"
     * request also exercises the fallback to the next address. */
    write_text(g.hosts_path, "::1 localhost\n127.0.0.1 localhost\n127.0.0.1 other.test\n");
    g.is_ready = true;
}

/* ---- Loop helpers --------------------------------------------------------- */

static uint64_t now_ms(void)
{
    return dm_time_mono_us() / 1000;
}

static void on_noop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* run_until runs the loop until *count >= target (count NULL: never) or ms
 * pass. Returns true if the target was reached. */
static bool run_until(struct event_base *b, const int *count, int target, uint32_t ms)
{
    uint64_t end = now_ms() + ms;
    struct event *t = evtimer_new(b, on_noop, NULL);
    while ((count == NULL || *count < target) && now_ms() < end) {
        uint64_t left = end - now_ms();
        struct timeval tv = {.tv_sec = (time_t)(left / 1000),
                             .tv_usec = (suseconds_t)((left % 1000) * 1000)};
        evtimer_add(t, &tv);
        event_base_loop(b, EVLOOP_ONCE);
    }
    event_free(t);
    return count == NULL || *count >= target;
}

/* ---- Test HTTP/1.1 server (plain or TLS) ------------------------------------ */

enum srv_mode {
    SRV_NORMAL = 0,
    SRV_STALL,        /* accept, then never read nor write */
    SRV_CLOSE_SECOND, /* close a kept-alive connection when its 2nd request arrives */
    SRV_CLOSE_IDLE,   /* close each connection right after its response */
};

struct sconn;

struct srv {
    struct event_base *base;
    int lfd;
    struct event *lev;
    SSL_CTX *ctx; /* NULL: plain HTTP */
    int port;
    enum srv_mode mode;
    bool is_alpn_h2; /* select "h2" to test the client's ALPN check */
    int num_accepted;
    int num_requests;
    char last_sni[256];
    bool saw_sni;
    char last_method[16];
    struct sconn *conns;
};

struct sconn {
    struct srv *s;
    int fd;
    SSL *ssl;
    bool is_hs_done;
    struct event *rev, *wev;
    struct evbuffer *in, *out;
    int num_reqs;
    bool is_eof;
    bool close_now;         /* drop without flushing */
    bool close_after_flush; /* close once out is empty */
    bool is_unclean;        /* TLS: no close_notify */
    struct sconn *prev, *next;
};

static void sconn_free(struct sconn *sc)
{
    struct srv *s = sc->s;
    if (sc->prev != NULL) {
        sc->prev->next = sc->next;
    } else {
        s->conns = sc->next;
    }
    if (sc->next != NULL) {
        sc->next->prev = sc->prev;
    }
    event_free(sc->rev);
    event_free(sc->wev);
    evbuffer_free(sc->in);
    evbuffer_free(sc->out);
    SSL_free(sc->ssl);
    ERR_clear_error();
    close(sc->fd);
    free(sc);
}

static void add_big(struct evbuffer *o, size_t n)
{
    static char block[65536];
    memset(block, 'x', sizeof(block));
    while (n > 0) {
        size_t k = n < sizeof(block) ? n : sizeof(block);
        evbuffer_add(o, block, k);
        n -= k;
    }
}

/* srv_respond answers one request; routes are named after what they test. */
static void srv_respond(struct sconn *sc, const char *method, const char *path, const char *req,
                        size_t req_len)
{
    struct evbuffer *o = sc->out;
    if (strcmp(path, "/hello") == 0) {
        evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                               "Content-Type: text/plain\r\nX-Multi: a\r\nx-multi: b\r\n\r\nhello");
    } else if (strcmp(path, "/echo") == 0) {
        evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", req_len);
        evbuffer_add(o, req, req_len);
    } else if (strcmp(path, "/chunked") == 0) {
        evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "5;name=value\r\nhello\r\n1\r\n \r\nA\r\nworld, 42!\r\n"
                               "0\r\nX-Trailer: t\r\n\r\n");
    } else if (strcmp(path, "/slow") == 0) {
        /* never answers */
    } else if (strcmp(path, "/big") == 0) {
        evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", BIG_BODY);
        add_big(o, BIG_BODY);
    } else if (strcmp(path, "/bigchunked") == 0) {
        evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for (int i = 0; i < BIG_BODY / 65536; i++) {
            evbuffer_add_printf(o, "10000\r\n");
            add_big(o, 65536);
            evbuffer_add_printf(o, "\r\n");
        }
        evbuffer_add_printf(o, "0\r\n\r\n");
    } else if (strcmp(path, "/bigeof") == 0) {
        evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        add_big(o, BIG_BODY);
        sc->close_after_flush = true;
    } else if (strcmp(path, "/eof") == 0 || strcmp(path, "/eof-unclean") == 0) {
        evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close");
        sc->close_after_flush = true;
        sc->is_unclean = strcmp(path, "/eof-unclean") == 0;
    } else if (strcmp(path, "/close") == 0) {
        evbuffer_add_printf(o,
                            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
        sc->close_after_flush = true;
    } else if (strcmp(path, "/early") == 0) {
        evbuffer_add_printf(o, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
                               "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    } else if (strcmp(path, "/drop") == 0) {
        sc->close_now = true;
    } else if (strcmp(path, "/204") == 0) {
        evbuffer_add_printf(o, "HTTP/1.1 204 No Content\r\n\r\n");
    } else if (strcmp(path, "/head") == 0 && strcmp(method, "HEAD") == 0) {
        evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
    } else if (strcmp(path, "/http10") == 0) {
        evbuffer_add_printf(o, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        sc->close_after_flush = true;
    } else if (strcmp(path, "/bad") == 0) {
        evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\nBad Header\r\nContent-Length: 0\r\n\r\n");
    } else if (strcmp(path, "/truncated") == 0) {
        evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        sc->close_after_flush = true;
    } else if (strcmp(path, "/extra") == 0) {
        /* Bytes after a complete response: the connection must not be reused. */
        evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK");
    } else {
        evbuffer_add_printf(o, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found");
    }
}

static void sconn_process(struct sconn *sc)
{
    while (!sc->close_now && !sc->close_after_flush) {
        struct evbuffer_ptr p = evbuffer_search(sc->in, "\r\n\r\n", 4, NULL);
        if (p.pos < 0) {
            return;
        }
        size_t head_len = (size_t)p.pos + 4;
        char *head = malloc(head_len + 1);
        evbuffer_copyout(sc->in, head, head_len);
        head[head_len] = '\0';
        size_t cl = 0;
        for (char *l = strstr(head, "\r\n"); l != NULL; l = strstr(l + 2, "\r\n")) {
            if (strncasecmp(l + 2, "content-length:", 15) == 0) {
                cl = strtoul(l + 17, NULL, 10);
            }
        }
        free(head);
        if (evbuffer_get_length(sc->in) < head_len + cl) {
            return;
        }
        char *req = malloc(head_len + cl + 1);
        evbuffer_remove(sc->in, req, head_len + cl);
        req[head_len + cl] = '\0';
        char method[16] = "", path[256] = "";
        sscanf(req, "%15s %255s", method, path);
        path[strcspn(path, "?")] = '\0';
        struct srv *s = sc->s;
        s->num_requests++;
        sc->num_reqs++;
        snprintf(s->last_method, sizeof(s->last_method), "%s", method);
        if (s->mode == SRV_CLOSE_SECOND && sc->num_reqs == 2) {
            sc->close_now = true;
        } else {
            srv_respond(sc, method, path, req, head_len + cl);
            if (s->mode == SRV_CLOSE_IDLE) {
                sc->close_after_flush = true;
            }
        }
        free(req);
    }
}

/* sconn_flush writes out; returns -1 when the peer is gone. */
static int sconn_flush(struct sconn *sc)
{
    while (evbuffer_get_length(sc->out) > 0) {
        size_t n = evbuffer_get_length(sc->out);
        n = n < 16384 ? n : 16384;
        const void *p = evbuffer_pullup(sc->out, (ev_ssize_t)n);
        int r;
        if (sc->ssl != NULL) {
            r = SSL_write(sc->ssl, p, (int)n);
            if (r <= 0) {
                int e = SSL_get_error(sc->ssl, r);
                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                    event_add(sc->wev, NULL);
                    return 0;
                }
                ERR_clear_error();
                return -1;
            }
        } else {
            r = (int)send(sc->fd, p, n, MSG_NOSIGNAL);
            if (r < 0) {
                if (errno == EAGAIN) {
                    event_add(sc->wev, NULL);
                    return 0;
                }
                return -1;
            }
        }
        evbuffer_drain(sc->out, (size_t)r);
    }
    return 0;
}

/* sconn_after flushes and closes when due; may free sc. */
static void sconn_after(struct sconn *sc)
{
    if (!sc->close_now && sconn_flush(sc) != 0) {
        sc->close_now = true;
    }
    bool is_flushed = evbuffer_get_length(sc->out) == 0;
    if (sc->close_now || (is_flushed && (sc->is_eof || sc->close_after_flush))) {
        if (!sc->close_now && sc->ssl != NULL && sc->is_hs_done && !sc->is_unclean) {
            SSL_shutdown(sc->ssl);
        }
        sconn_free(sc);
    }
}

static void sconn_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sconn *sc = arg;
    if (sc->ssl != NULL && !sc->is_hs_done) {
        int r = SSL_do_handshake(sc->ssl);
        if (r != 1) {
            int e = SSL_get_error(sc->ssl, r);
            if (e == SSL_ERROR_WANT_WRITE) {
                event_add(sc->wev, NULL);
            } else if (e != SSL_ERROR_WANT_READ) {
                ERR_clear_error();
                sc->close_now = true;
            }
            sconn_after(sc);
            return;
        }
        sc->is_hs_done = true;
        const char *sni = SSL_get_servername(sc->ssl, TLSEXT_NAMETYPE_host_name);
        sc->s->saw_sni = sni != NULL;
        snprintf(sc->s->last_sni, sizeof(sc->s->last_sni), "%s", sni != NULL ? sni : "");
    }
    for (;;) {
        char buf[16384];
        int n;
        if (sc->ssl != NULL) {
            n = SSL_read(sc->ssl, buf, sizeof(buf));
            if (n <= 0) {
                int e = SSL_get_error(sc->ssl, n);
                if (e == SSL_ERROR_WANT_WRITE) {
                    event_add(sc->wev, NULL);
                } else if (e != SSL_ERROR_WANT_READ) {
                    ERR_clear_error();
                    sc->is_eof = true;
                }
                break;
            }
        } else {
            n = (int)read(sc->fd, buf, sizeof(buf));
            if (n < 0 && errno == EAGAIN) {
                break;
            }
            if (n <= 0) {
                sc->is_eof = true;
                break;
            }
        }
        evbuffer_add(sc->in, buf, (size_t)n);
    }
    sconn_process(sc);
    sconn_after(sc);
}

static void sconn_on_write(evutil_socket_t fd, short what, void *arg)
{
    struct sconn *sc = arg;
    if (sc->ssl != NULL && !sc->is_hs_done) {
        sconn_on_read(fd, what, arg);
        return;
    }
    sconn_after(sc);
}

static void srv_on_accept(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct srv *s = arg;
    for (;;) {
        int cfd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            return;
        }
        s->num_accepted++;
        struct sconn *sc = calloc(1, sizeof(*sc));
        sc->s = s;
        sc->fd = cfd;
        sc->rev = event_new(s->base, cfd, EV_READ | EV_PERSIST, sconn_on_read, sc);
        sc->wev = event_new(s->base, cfd, EV_WRITE, sconn_on_write, sc);
        sc->in = evbuffer_new();
        sc->out = evbuffer_new();
        if (s->ctx != NULL) {
            sc->ssl = SSL_new(s->ctx);
            SSL_set_fd(sc->ssl, cfd);
            SSL_set_accept_state(sc->ssl);
        }
        sc->next = s->conns;
        if (s->conns != NULL) {
            s->conns->prev = sc;
        }
        s->conns = sc;
        if (s->mode != SRV_STALL) {
            event_add(sc->rev, NULL);
        }
    }
}

static int srv_on_alpn(SSL *ssl, const uint8_t **out, uint8_t *out_len, const uint8_t *in,
                       unsigned in_len, void *arg)
{
    (void)ssl;
    struct srv *s = arg;
    if (s->is_alpn_h2) {
        *out = (const uint8_t *)"h2";
        *out_len = 2;
        return SSL_TLSEXT_ERR_OK;
    }
    for (unsigned i = 0; i < in_len; i += 1u + in[i]) {
        if (in[i] == 8 && i + 9 <= in_len && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *out_len = 8;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* srv_new listens on ip (127.0.0.1 or ::1), port chosen by the kernel; cert
 * NULL makes a plain HTTP server. */
static struct srv *srv_new(struct event_base *base, const char *ip, X509 *cert, enum srv_mode mode)
{
    struct srv *s = calloc(1, sizeof(*s));
    s->base = base;
    s->mode = mode;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t len;
    if (strchr(ip, ':') != NULL) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        inet_pton(AF_INET6, ip, &a->sin6_addr);
        len = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        inet_pton(AF_INET, ip, &a->sin_addr);
        len = sizeof(*a);
    }
    s->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&ss, len) != 0 || listen(s->lfd, 128) != 0) {
        perror("test server");
        exit(1);
    }
    getsockname(s->lfd, (struct sockaddr *)&ss, &len);
    s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    s->lev = event_new(base, s->lfd, EV_READ | EV_PERSIST, srv_on_accept, s);
    event_add(s->lev, NULL);
    if (cert != NULL) {
        s->ctx = SSL_CTX_new(TLS_method());
        SSL_CTX_use_certificate(s->ctx, cert);
        SSL_CTX_use_PrivateKey(s->ctx, g.leaf_key);
        SSL_CTX_set_mode(s->ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_CTX_set_alpn_select_cb(s->ctx, srv_on_alpn, s);
    }
    return s;
}

static void srv_free(struct srv *s)
{
    while (s->conns != NULL) {
        sconn_free(s->conns);
    }
    event_free(s->lev);
    close(s->lfd);
    SSL_CTX_free(s->ctx);
    free(s);
}

/* A port nothing listens on: bound, then closed. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    bind(fd, (struct sockaddr *)&a, len);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- Test DNS server ------------------------------------------------------ */

/* real.test -> 127.0.0.1 and ::1; slow.test: never answered; else NXDOMAIN. */
struct dnsd {
    int fd;
    int port;
    struct evdns_server_port *sp;
    struct evdns_server_request *held[16];
    int num_held;
    int num_queries;
};

static void dnsd_on_request(struct evdns_server_request *req, void *arg)
{
    struct dnsd *d = arg;
    d->num_queries++;
    if (req->nquestions != 1) {
        evdns_server_request_respond(req, DNS_ERR_FORMAT);
        return;
    }
    const struct evdns_server_question *q = req->questions[0];
    if (strcasecmp(q->name, "slow.test") == 0 && d->num_held < 16) {
        d->held[d->num_held++] = req;
        return;
    }
    if (strcasecmp(q->name, "real.test") == 0) {
        if (q->type == EVDNS_TYPE_A) {
            uint32_t a = htonl(INADDR_LOOPBACK);
            evdns_server_request_add_a_reply(req, q->name, 1, &a, 10);
        } else if (q->type == EVDNS_TYPE_AAAA) {
            struct in6_addr a6 = IN6ADDR_LOOPBACK_INIT;
            evdns_server_request_add_aaaa_reply(req, q->name, 1, &a6, 10);
        }
        evdns_server_request_respond(req, 0);
        return;
    }
    evdns_server_request_respond(req, DNS_ERR_NOTEXIST);
}

static struct dnsd *dnsd_new(struct event_base *base)
{
    struct dnsd *d = calloc(1, sizeof(*d));
    d->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    bind(d->fd, (struct sockaddr *)&a, len);
    getsockname(d->fd, (struct sockaddr *)&a, &len);
    d->port = ntohs(a.sin_port);
    d->sp = evdns_add_server_port_with_base(base, d->fd, 0, dnsd_on_request, d);
    return d;
}

static void dnsd_free(struct dnsd *d)
{
    for (int i = 0; i < d->num_held; i++) {
        evdns_server_request_drop(d->held[i]);
    }
    evdns_close_server_port(d->sp);
    close(d->fd);
    free(d);
}

/* ---- Client-side helpers ----------------------------------------------------- */

struct res {
    int done; /* callbacks seen */
    int status;
    enum dm_errcode code;
    char msg[DM_ERR_MSG_MAX];
    char *body; /* owned copy */
    size_t body_len;
    char ctype[64];
    char multi[16];
};

static void res_clear(struct res *r)
{
    free(r->body);
    memset(r, 0, sizeof(*r));
}

static void on_done(const struct dm_httpc_resp *resp, const struct dm_err *err, void *arg)
{
    struct res *r = arg;
    r->done++;
    CHECK((resp == NULL) != (err == NULL));
    if (resp != NULL) {
        r->status = resp->status;
        r->body_len = resp->body_len;
        r->body = malloc(resp->body_len + 1);
        memcpy(r->body, resp->body, resp->body_len + 1);
        CHECK(resp->body[resp->body_len] == '\0');
        const char *ct = dm_httpc_resp_header(resp, "CONTENT-type");
        snprintf(r->ctype, sizeof(r->ctype), "%s", ct != NULL ? ct : "");
        const char *m = dm_httpc_resp_header(resp, "x-multi");
        snprintf(r->multi, sizeof(r->multi), "%s", m != NULL ? m : "");
    } else {
        r->code = err->code;
        snprintf(r->msg, sizeof(r->msg), "%s", err->msg);
    }
}

struct env {
    struct event_base *base;
    struct evdns_base *dns;
    struct dnsd *dnsd;
    struct dm_httpc *h;
};

static struct dm_httpc *env_client(struct env *e, const struct dm_httpc_opts *o)
{
    struct dm_err err;
    struct dm_httpc_opts d = {.ca_file = g.ca_path, .user_agent = "doorman-test/1"};
    struct dm_httpc *h = dm_httpc_new(e->base, e->dns, o != NULL ? o : &d, &err);
    if (h == NULL) {
        fprintf(stderr, "dm_httpc_new: %s\n", err.msg);
    }
    return h;
}

static void env_init(struct env *e, const struct dm_httpc_opts *o)
{
    fx_setup();
    memset(e, 0, sizeof(*e));
    e->base = event_base_new();
    e->dnsd = dnsd_new(e->base);
    e->dns = evdns_base_new(e->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    evdns_base_load_hosts(e->dns, g.hosts_path);
    char ns[64];
    snprintf(ns, sizeof(ns), "127.0.0.1:%d", e->dnsd->port);
    evdns_base_nameserver_ip_add(e->dns, ns);
    evdns_base_set_option(e->dns, "timeout:", "2");
    evdns_base_set_option(e->dns, "attempts:", "1");
    e->h = env_client(e, o);
}

static void env_cleanup(struct env *e)
{
    dm_httpc_free(e->h);
    /* fail_requests = 1 releases lookups the client abandoned; their
     * callbacks are deferred, so let the loop run once more. */
    evdns_base_free(e->dns, 1);
    run_until(e->base, NULL, 0, 20);
    dnsd_free(e->dnsd);
    event_base_free(e->base);
}

/* start issues a request; the callback must not have run yet. */
static struct dm_httpc_call *start(struct dm_httpc *h, const char *method, const char *url,
                                   const char *body, const struct dm_httpc_header *hdrs,
                                   size_t num_hdrs, struct res *r)
{
    struct dm_err err;
    struct dm_httpc_req req = {
        .method = method,
        .url = url,
        .headers = hdrs,
        .num_headers = num_hdrs,
        .body = body,
        .body_len = body != NULL ? strlen(body) : 0,
    };
    int before = r->done;
    struct dm_httpc_call *c = dm_httpc_request_start(h, &req, on_done, r, &err);
    if (c == NULL) {
        fprintf(stderr, "start %s: %s\n", url, err.msg);
    }
    CHECK_EQ_INT(r->done, before); /* never called back from inside start */
    return c;
}

/* fetch runs one request to completion (5 s at most). */
static void fetch(struct env *e, const char *method, const char *url, const char *body,
                  struct res *r)
{
    res_clear(r);
    CHECK(start(e->h, method, url, body, NULL, 0, r) != NULL);
    CHECK(run_until(e->base, &r->done, 1, 5000));
    CHECK_EQ_INT(r->done, 1);
}

static char *url_of(char *buf, size_t cap, const char *scheme, const char *host, int port,
                    const char *path)
{
    snprintf(buf, cap, "%s://%s:%d%s", scheme, host, port, path);
    return buf;
}

/* ---- Decoder tests ---------------------------------------------------------- */

static int parse(const char *text, size_t step, bool is_head, size_t max_body,
                 struct dm_httpc_resp **out, size_t *used, struct dm_err *err)
{
    return dm_httpc_resp_parse(out, used, text, strlen(text), step, is_head, max_body, err);
}

TEST(t_parse_ok)
{
    static const struct {
        const char *text;
        bool is_head;
        int status;
        const char *body;
        size_t used_less; /* bytes left over after the response */
    } cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type:  text/plain \r\n\r\nhello", false,
         200, "hello", 0},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA", false, 200, "hello", 5},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5;a=b;c\r\nhello\r\n"
         "006 \r\n world\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n",
         false, 200, "hello world", 0},
        {"HTTP/1.0 200 OK\r\n\r\nuntil the end", false, 200, "until the end", 0},
        {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n"
         "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
         false, 201, "ok", 0},
        {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", true, 200, "", 0},
        {"HTTP/1.1 204 No Content\r\n\r\n", false, 204, "", 0},
        {"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", false, 304, "", 0},
        {"HTTP/1.1 200\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\nhello", false, 200,
         "hello", 0},
        {"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", false, 404, "", 0},
        {"HTTP/1.1 200 OK\r\nX-Obs: caf\xc3\xa9\r\nContent-Length: 1\r\n\r\nZ", false, 200, "Z", 0},
        {"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 120\r\nConnection: keep-alive, "
         "close\r\nContent-Length: 3\r\n\r\nbye",
         false, 503, "bye", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (size_t step = 0; step <= 1; step++) {
            struct dm_httpc_resp *r = NULL;
            struct dm_err err = {0};
            size_t used = 0;
            int rc = parse(cases[i].text, step, cases[i].is_head, 1024, &r, &used, &err);
            if (rc != 0) {
                fprintf(stderr, "case %zu step %zu: %s\n", i, step, err.msg);
            }
            CHECK_EQ_INT(rc, 0);
            if (r == NULL) {
                continue;
            }
            CHECK_EQ_INT(r->status, cases[i].status);
            CHECK_STR(r->body, cases[i].body);
            CHECK_EQ_INT(used, strlen(cases[i].text) - cases[i].used_less);
            dm_httpc_resp_free(r);
        }
    }
    /* fields: order kept, OWS trimmed, lookup case-insensitive, first match */
    struct dm_httpc_resp *r = NULL;
    struct dm_err err;
    CHECK_EQ_INT(parse("HTTP/1.1 200 OK\r\nA: 1\r\nb:\t two words \t\r\na: 3\r\nEmpty:\r\n"
                       "Content-Length: 0\r\n\r\n",
                       0, false, 10, &r, NULL, &err),
                 0);
    if (r != NULL) {
        CHECK_EQ_INT(r->num_headers, 5);
        CHECK_STR(r->headers[1].name, "b");
        CHECK_STR(r->headers[1].value, "two words");
        CHECK_STR(dm_httpc_resp_header(r, "a"), "1");
        CHECK_STR(dm_httpc_resp_header(r, "B"), "two words");
        CHECK_STR(dm_httpc_resp_header(r, "empty"), "");
        CHECK(dm_httpc_resp_header(r, "missing") == NULL);
        dm_httpc_resp_free(r);
    }
    /* a body of exactly max_body is fine */
    CHECK_EQ_INT(
        parse("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd", 1, false, 4, &r, NULL, &err), 0);
    dm_httpc_resp_free(r);
    dm_httpc_resp_free(NULL);
}

TEST(t_parse_bad)
{
    static const struct {
        const char *text;
        enum dm_errcode code;
    } cases[] = {
        {"", DM_E_IO},
        {"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", DM_E_PROTO},    /* obs-fold */
        {"HTTP/1.1 200 OK\r\nX : a\r\n\r\n", DM_E_PROTO},         /* space before : */
        {"HTTP/1.1 200 OK\r\n: a\r\n\r\n", DM_E_PROTO},           /* empty name */
        {"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", DM_E_PROTO},       /* no colon */
        {"HTTP/1.1 200 OK\r\nX: a\x01\r\n\r\n", DM_E_PROTO},      /* control char */
        {"HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n", DM_E_PROTO},    /* bare LF */
        {"HTTP/1.1 200 OK\n\n", DM_E_PROTO},                      /* LF only */
        {"HTTP/2 200 OK\r\n\r\n", DM_E_PROTO},                    /* version */
        {"HTTP/1.2 200 OK\r\n\r\n", DM_E_PROTO},                  /* version */
        {"http/1.1 200 OK\r\n\r\n", DM_E_PROTO},                  /* case */
        {"HTTP/1.1 20 OK\r\n\r\n", DM_E_PROTO},                   /* short code */
        {"HTTP/1.1 600 Odd\r\n\r\n", DM_E_PROTO},                 /* code range */
        {"HTTP/1.1 200OK\r\n\r\n", DM_E_PROTO},                   /* SP after code */
        {"HTTP/1.1 101 Switching Protocols\r\n\r\n", DM_E_PROTO}, /* upgrade */
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1a\r\n\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
         DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n", DM_E_PROTO},
        {"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;x\x01\r\na\r\n0\r\n\r\n",
         DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n0\r\n\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nbad trailer\r\n\r\n",
         DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", DM_E_PROTO},
        {"HTTP/1.1 100 Continue\r\n\r\n", DM_E_PROTO},
        {"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n", DM_E_LIMIT},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n", DM_E_LIMIT},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n"
         "0123456789012345678901234567890123456789012345678901234567890123\r\n1\r\n",
         DM_E_LIMIT},
        {"HTTP/1.1 200 OK\r\n\r\n"
         "01234567890123456789012345678901234567890123456789012345678901234",
         DM_E_LIMIT},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (size_t step = 0; step <= 1; step++) {
            struct dm_httpc_resp *r = NULL;
            struct dm_err err = {0};
            int rc = parse(cases[i].text, step, false, 64, &r, NULL, &err);
            if (rc != -1 || err.code != cases[i].code) {
                fprintf(stderr, "case %zu step %zu: rc %d code %s (%s)\n", i, step, rc,
                        dm_errcode_name(err.code), err.msg);
            }
            CHECK_EQ_INT(rc, -1);
            CHECK_EQ_INT(err.code, cases[i].code);
            CHECK(r == NULL);
        }
    }
    /* NUL inside a field value (strlen-based parse() cannot carry it) */
    static const char nul[] = "HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n";
    struct dm_httpc_resp *r = NULL;
    struct dm_err err;
    CHECK_EQ_INT(dm_httpc_resp_parse(&r, NULL, nul, sizeof(nul) - 1, 0, false, 64, &err), -1);
    CHECK_EQ_INT(err.code, DM_E_PROTO);
}

TEST(t_parse_bounds)
{
    struct {
        char *p;
        size_t len, cap;
    } b = {0};
    b.cap = 200000;
    b.p = malloc(b.cap);
    struct dm_httpc_resp *r = NULL;
    struct dm_err err;
    /* DM_HTTPC_MAX_HEADERS fields pass, one more fails */
    for (int extra = 0; extra <= 1; extra++) {
        b.len = (size_t)snprintf(b.p, b.cap, "HTTP/1.1 200 OK\r\n");
        for (int i = 0; i < DM_HTTPC_MAX_HEADERS - 1 + extra; i++) {
            b.len += (size_t)snprintf(b.p + b.len, b.cap - b.len, "F%d: v\r\n", i);
        }
        b.len += (size_t)snprintf(b.p + b.len, b.cap - b.len, "Content-Length: 0\r\n\r\n");
        int rc = dm_httpc_resp_parse(&r, NULL, b.p, b.len, 0, false, 64, &err);
        CHECK_EQ_INT(rc, extra ? -1 : 0);
        if (rc == 0) {
            CHECK_EQ_INT(r->num_headers, DM_HTTPC_MAX_HEADERS);
            dm_httpc_resp_free(r);
        } else {
            CHECK_EQ_INT(err.code, DM_E_LIMIT);
        }
    }
    /* a head above DM_HTTPC_MAX_HEAD_BYTES, at once and in 1000-byte steps */
    b.len = (size_t)snprintf(b.p, b.cap, "HTTP/1.1 200 OK\r\nX: ");
    memset(b.p + b.len, 'a', DM_HTTPC_MAX_HEAD_BYTES);
    b.len += DM_HTTPC_MAX_HEAD_BYTES;
    b.len += (size_t)snprintf(b.p + b.len, b.cap - b.len, "\r\n\r\n");
    for (size_t step = 0; step <= 1000; step += 1000) {
        CHECK_EQ_INT(dm_httpc_resp_parse(&r, NULL, b.p, b.len, step, false, 64, &err), -1);
        CHECK_EQ_INT(err.code, DM_E_LIMIT);
    }
    /* a chunk size line above 4 KiB (extensions) */
    b.len = (size_t)snprintf(b.p, b.cap, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;");
    memset(b.p + b.len, 'e', 5000);
    b.len += 5000;
    b.len += (size_t)snprintf(b.p + b.len, b.cap - b.len, "\r\na\r\n0\r\n\r\n");
    CHECK_EQ_INT(dm_httpc_resp_parse(&r, NULL, b.p, b.len, 0, false, 64, &err), -1);
    CHECK_EQ_INT(err.code, DM_E_PROTO);
    /* a trailer section above 16 KiB */
    b.len =
        (size_t)snprintf(b.p, b.cap, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n");
    for (int i = 0; i < 2000; i++) {
        b.len += (size_t)snprintf(b.p + b.len, b.cap - b.len, "T%d: x\r\n", i);
    }
    b.len += (size_t)snprintf(b.p + b.len, b.cap - b.len, "\r\n");
    CHECK_EQ_INT(dm_httpc_resp_parse(&r, NULL, b.p, b.len, 0, false, 64, &err), -1);
    CHECK_EQ_INT(err.code, DM_E_PROTO);
    free(b.p);
}

/* ---- Request validation ------------------------------------------------------ */

TEST(t_request_invalid)
{
    struct env e;
    env_init(&e, NULL);
    static const char *const bad_urls[] = {
        "ftp://127.0.0.1/",
        "http://",
        "http:///x",
        "127.0.0.1/x",
        "http://u@127.0.0.1/",
        "http://[::1/",
        "http://[::1]x/",
        "http://[zz]/",
        "http://[fe80::1%25eth0]/",
        "http://h:0/",
        "http://h:65536/",
        "http://h:/",
        "http://h:8o/",
        "http://a b/",
        "http://h/a b",
        "http://h/\x7f",
        "http://h/caf\xc3\xa9",
        "http://a:b:c/",
    };
    struct res r = {0};
    struct dm_err err;
    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
        struct dm_httpc_req req = {.url = bad_urls[i]};
        dm_err_clear(&err);
        CHECK(dm_httpc_request_start(e.h, &req, on_done, &r, &err) == NULL);
        if (err.code != DM_E_PROTO) {
            fprintf(stderr, "url %zu (%s): %s\n", i, bad_urls[i], err.msg);
        }
        CHECK_EQ_INT(err.code, DM_E_PROTO);
    }
    static const struct dm_httpc_header bad_headers[][1] = {
        {{"Host", "x"}},
        {{"content-length", "1"}},
        {{"Transfer-Encoding", "chunked"}},
        {{"Connection", "close"}},
        {{"Accept-Encoding", "gzip"}},
        {{"X-Inject", "a\r\nEvil: 1"}},
        {{"Bad Name", "x"}},
        {{"", "x"}},
        {{"X", NULL}},
    };
    for (size_t i = 0; i < sizeof(bad_headers) / sizeof(bad_headers[0]); i++) {
        struct dm_httpc_req req = {
            .url = "http://127.0.0.1/", .headers = bad_headers[i], .num_headers = 1};
        dm_err_clear(&err);
        CHECK(dm_httpc_request_start(e.h, &req, on_done, &r, &err) == NULL);
        CHECK_EQ_INT(err.code, DM_E_PROTO);
    }
    struct dm_httpc_req req = {.method = "G T", .url = "http://127.0.0.1/"};
    CHECK(dm_httpc_request_start(e.h, &req, on_done, &r, &err) == NULL);
    req.method = "GET";
    req.body_len = 3;
    CHECK(dm_httpc_request_start(e.h, &req, on_done, &r, &err) == NULL);
    run_until(e.base, NULL, 0, 20);
    CHECK_EQ_INT(r.done, 0);
    env_cleanup(&e);
}

TEST(t_new_errors)
{
    fx_setup();
    struct event_base *base = event_base_new();
    struct dm_err err;
    char missing[256];
    snprintf(missing, sizeof(missing), "%s/missing.pem", g.dir);
    struct dm_httpc_opts o = {.ca_file = missing};
    CHECK(dm_httpc_new(base, NULL, &o, &err) == NULL);
    CHECK_EQ_INT(err.code, DM_E_TLS);
    CHECK(strstr(err.msg, "missing.pem") != NULL);
    struct dm_httpc_opts o2 = {.ca_file = g.ca_path, .user_agent = "bad\r\nagent"};
    CHECK(dm_httpc_new(base, NULL, &o2, &err) == NULL);
    CHECK_EQ_INT(err.code, DM_E_CONFIG);
    dm_httpc_free(NULL);
    event_base_free(base);
}

/* ---- Plain HTTP ----------------------------------------------------------------- */

TEST(t_plain_basic)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_NORMAL);
    char url[256];
    struct res r = {0};
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/hello"), NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.body, "hello");
    CHECK_STR(r.ctype, "text/plain");
    CHECK_STR(r.multi, "a"); /* first of two fields, case-insensitively */
    CHECK_STR(s->last_method, "GET");
    fetch(&e, "GET", url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/nothing"), NULL, &r);
    CHECK_EQ_INT(r.status, 404); /* an HTTP error is a response, not a failure */
    CHECK_STR(r.body, "not found");
    /* fragment dropped, empty path becomes "/" */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/hello#frag", s->port);
    fetch(&e, NULL, url, NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    snprintf(url, sizeof(url), "HTTP://127.0.0.1:%d", s->port);
    fetch(&e, NULL, url, NULL, &r);
    CHECK_EQ_INT(r.status, 404);
    CHECK_EQ_INT(s->num_accepted, 1);
    res_clear(&r);
    srv_free(s);
    env_cleanup(&e);
}

TEST(t_plain_headers_and_fallback)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_NORMAL);
    char url[256];
    struct res r = {0};
    /* "localhost" resolves (hosts file) to ::1 first, where nothing listens. */
    const struct dm_httpc_header hdrs[] = {
        {"Content-Type", "application/jose+json"},
        {"Accept", "application/json"},
    };
    CHECK(start(e.h, "POST", url_of(url, sizeof(url), "http", "localhost", s->port, "/echo"),
                "hello", hdrs, 2, &r) != NULL);
    CHECK(run_until(e.base, &r.done, 1, 5000));
    CHECK_EQ_INT(r.status, 200);
    char want[128];
    if (r.body != NULL) {
        CHECK(strncmp(r.body, "POST /echo HTTP/1.1\r\n", 21) == 0);
        snprintf(want, sizeof(want), "\r\nHost: localhost:%d\r\n", s->port);
        CHECK(strstr(r.body, want) != NULL);
        CHECK(strstr(r.body, "\r\nUser-Agent: doorman-test/1\r\n") != NULL);
        CHECK(strstr(r.body, "\r\nAccept-Encoding: identity\r\n") != NULL);
        CHECK(strstr(r.body, "\r\nContent-Type: application/jose+json\r\n") != NULL);
        CHECK(strstr(r.body, "\r\nAccept: application/json\r\n") != NULL);
        CHECK(strstr(r.body, "\r\nContent-Length: 5\r\n\r\nhello") != NULL);
        CHECK(r.body_len >= 5 && strcmp(r.body + r.body_len - 5, "hello") == 0);
    }
    /* a caller's User-Agent replaces the default; POST without body says 0 */
    const struct dm_httpc_header ua[] = {{"user-agent", "acme-client/2"}};
    res_clear(&r);
    CHECK(start(e.h, "POST", url, NULL, ua, 1, &r) != NULL);
    CHECK(run_until(e.base, &r.done, 1, 5000));
    if (r.body != NULL) {
        CHECK(strstr(r.body, "\r\nuser-agent: acme-client/2\r\n") != NULL);
        CHECK(strstr(r.body, "doorman-test") == NULL);
        CHECK(strstr(r.body, "\r\nContent-Length: 0\r\n") != NULL);
    }
    /* GET with query; default port omitted from Host only when default */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d?x=1&y=%%20", s->port);
    fetch(&e, "GET", url, NULL, &r);
    CHECK_EQ_INT(r.status, 404);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo?x=1", s->port);
    fetch(&e, "GET", url, NULL, &r);
    if (r.body != NULL) {
        CHECK(strncmp(r.body, "GET /echo?x=1 HTTP/1.1\r\n", 24) == 0);
        CHECK(strstr(r.body, "Content-Length") == NULL);
    }
    res_clear(&r);
    srv_free(s);
    env_cleanup(&e);
}

TEST(t_async_dns)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_NORMAL);
    char url[256];
    struct res r = {0};
    /* real.test comes from the test DNS server: A 127.0.0.1, AAAA ::1 */
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "real.test", s->port, "/hello"), NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK(e.dnsd->num_queries >= 2);
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "nx.test", s->port, "/hello"), NULL, &r);
    CHECK_EQ_INT(r.code, DM_E_IO);
    CHECK(strstr(r.msg, "resolve nx.test") != NULL);
    res_clear(&r);
    srv_free(s);
    env_cleanup(&e);
}

TEST(t_plain_reuse)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_NORMAL);
    char url[256];
    url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/hello");
    struct res r = {0};
    for (int i = 0; i < 3; i++) {
        fetch(&e, NULL, url, NULL, &r);
        CHECK_EQ_INT(r.status, 200);
        CHECK_EQ_INT(dm_httpc_num_idle(e.h), 1);
    }
    CHECK_EQ_INT(s->num_accepted, 1);
    CHECK_EQ_INT(s->num_requests, 3);
    /* HEAD, 204, 103 + 200 and chunked keep the connection */
    fetch(&e, "HEAD", url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/head"), NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_INT(r.body_len, 0);
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/204"), NULL, &r);
    CHECK_EQ_INT(r.status, 204);
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/early"), NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.body, "ok");
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/chunked"), NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.body, "hello world, 42!");
    CHECK_EQ_INT(s->num_accepted, 1);
    /* Connection: close, HTTP/1.0 and extra bytes end it */
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/close"), NULL, &r);
    CHECK_STR(r.body, "ok");
    CHECK_EQ_INT(dm_httpc_num_idle(e.h), 0);
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/http10"), NULL, &r);
    CHECK_STR(r.body, "ok");
    CHECK_EQ_INT(dm_httpc_num_idle(e.h), 0);
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/extra"), NULL, &r);
    CHECK_STR(r.body, "ok");
    CHECK_EQ_INT(dm_httpc_num_idle(e.h), 0);
    CHECK_EQ_INT(s->num_accepted, 3);
    /* close-delimited body */
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/eof"), NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.body, "until-close");
    CHECK_EQ_INT(dm_httpc_num_idle(e.h), 0);
    res_clear(&r);
    srv_free(s);
    env_cleanup(&e);
}

/* chain_cb starts the next request from inside the callback. */
struct chain {
    struct dm_httpc *h;
    const char *url;
    int left;
    int ok;
    int done;
};

static void chain_cb(const struct dm_httpc_resp *resp, const struct dm_err *err, void *arg)
{
    (void)err;
    struct chain *ch = arg;
    ch->ok += resp != NULL && resp->status == 200;
    if (--ch->left > 0) {
        struct dm_httpc_req req = {.url = ch->url};
        CHECK(dm_httpc_request_start(ch->h, &req, chain_cb, ch, NULL) != NULL);
    } else {
        ch->done = 1;
    }
}

TEST(t_callback_starts_request)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_NORMAL);
    char url[256];
    struct chain ch = {.h = e.h, .url = url, .left = 5};
    url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/hello");
    struct dm_httpc_req req = {.url = url};
    CHECK(dm_httpc_request_start(e.h, &req, chain_cb, &ch, NULL) != NULL);
    CHECK(run_until(e.base, &ch.done, 1, 5000));
    CHECK_EQ_INT(ch.ok, 5);
    CHECK_EQ_INT(s->num_accepted, 1); /* the next call found the pooled connection */
    srv_free(s);
    env_cleanup(&e);
}

TEST(t_limits)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_NORMAL);
    char url[256];
    struct res r = {0};
    static const char *const paths[] = {"/big", "/bigchunked", "/bigeof"};
    for (size_t i = 0; i < 3; i++) {
        fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, paths[i]), NULL, &r);
        CHECK_EQ_INT(r.code, DM_E_LIMIT);
        CHECK(strstr(r.msg, paths[i]) != NULL);
    }
    CHECK_EQ_INT(dm_httpc_num_idle(e.h), 0);
    dm_httpc_free(e.h);
    struct dm_httpc_opts o = {.ca_file = g.ca_path, .max_body = 4 * 1024 * 1024};
    e.h = env_client(&e, &o);
    for (size_t i = 0; i < 3; i++) {
        fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, paths[i]), NULL, &r);
        CHECK_EQ_INT(r.status, 200);
        CHECK_EQ_INT(r.body_len, BIG_BODY);
    }
    res_clear(&r);
    srv_free(s);
    env_cleanup(&e);
}

TEST(t_bad_responses)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_NORMAL);
    char url[256];
    struct res r = {0};
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/bad"), NULL, &r);
    CHECK_EQ_INT(r.code, DM_E_PROTO);
    CHECK(strstr(r.msg, "/bad") != NULL);
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/truncated"), NULL, &r);
    CHECK_EQ_INT(r.code, DM_E_PROTO);
    CHECK(strstr(r.msg, "truncated") != NULL);
    /* a fresh connection closed without a response is not retried */
    int before = s->num_accepted;
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/drop"), NULL, &r);
    CHECK_EQ_INT(r.code, DM_E_IO);
    CHECK(strstr(r.msg, "before any response byte") != NULL);
    CHECK_EQ_INT(s->num_accepted, before + 1);
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", closed_port(), "/"), NULL, &r);
    CHECK_EQ_INT(r.code, DM_E_IO);
    CHECK(strstr(r.msg, "refused") != NULL);
    res_clear(&r);
    srv_free(s);
    env_cleanup(&e);
}

TEST(t_timeouts)
{
    struct env e;
    struct dm_httpc_opts o = {.ca_file = g.ca_path, .request_timeout_ms = 200};
    fx_setup();
    env_init(&e, &o);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_NORMAL);
    char url[256];
    struct res r = {0};
    uint64_t t0 = now_ms();
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/slow"), NULL, &r);
    uint64_t took = now_ms() - t0;
    CHECK_EQ_INT(r.code, DM_E_TIMEOUT);
    CHECK(strstr(r.msg, "(in exchange)") != NULL);
    CHECK(took >= 150 && took < 2000);
    /* a lookup that never gets an answer */
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "slow.test", s->port, "/hello"), NULL, &r);
    CHECK_EQ_INT(r.code, DM_E_TIMEOUT);
    CHECK(strstr(r.msg, "(in resolve)") != NULL);
    res_clear(&r);
    srv_free(s);
    env_cleanup(&e);
}

/* cancel_other_cb cancels another call, and then its own (a no-op). */
struct canceller {
    struct dm_httpc_call *victim;
    struct dm_httpc_call *self;
    int done;
};

static void cancel_other_cb(const struct dm_httpc_resp *resp, const struct dm_err *err, void *arg)
{
    (void)resp;
    (void)err;
    struct canceller *k = arg;
    dm_httpc_request_cancel(k->victim);
    dm_httpc_request_cancel(k->self);
    k->done++;
}

TEST(t_cancel)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_NORMAL);
    char url[256], url2[256];
    url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/slow");
    struct res r = {0};
    /* before the first step */
    struct dm_httpc_call *c = start(e.h, NULL, url, NULL, NULL, 0, &r);
    dm_httpc_request_cancel(c);
    /* while waiting for the response */
    c = start(e.h, NULL, url, NULL, NULL, 0, &r);
    run_until(e.base, &s->num_requests, 1, 2000);
    CHECK_EQ_INT(s->num_requests, 1);
    dm_httpc_request_cancel(c);
    /* during a DNS lookup that never ends, and while connecting */
    c = start(e.h, NULL, url_of(url2, sizeof(url2), "http", "slow.test", s->port, "/"), NULL, NULL,
              0, &r);
    run_until(e.base, &e.dnsd->num_held, 1, 2000);
    CHECK(e.dnsd->num_held >= 1);
    dm_httpc_request_cancel(c);
    /* from another call's callback */
    struct res slow = {0};
    struct canceller k = {0};
    k.victim = start(e.h, NULL, url, NULL, NULL, 0, &slow);
    struct dm_httpc_req req = {
        .url = url_of(url2, sizeof(url2), "http", "127.0.0.1", s->port, "/hello")};
    k.self = dm_httpc_request_start(e.h, &req, cancel_other_cb, &k, NULL);
    CHECK(run_until(e.base, &k.done, 1, 2000));
    run_until(e.base, NULL, 0, 100);
    CHECK_EQ_INT(k.done, 1);
    CHECK_EQ_INT(slow.done, 0);
    CHECK_EQ_INT(r.done, 0);
    dm_httpc_request_cancel(NULL);
    srv_free(s);
    env_cleanup(&e);
}

TEST(t_free_in_flight)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_NORMAL);
    struct srv *tls = srv_new(e.base, "127.0.0.1", g.leaf, SRV_STALL);
    char url[256];
    struct res r = {0};
    start(e.h, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/slow"), NULL, NULL, 0,
          &r);
    start(e.h, NULL, url_of(url, sizeof(url), "http", "slow.test", s->port, "/"), NULL, NULL, 0,
          &r);
    start(e.h, NULL, url_of(url, sizeof(url), "https", "127.0.0.1", tls->port, "/"), NULL, NULL, 0,
          &r);
    start(e.h, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/hello"), NULL, NULL,
          0, &r);
    run_until(e.base, &s->num_requests, 1, 2000);
    run_until(e.base, NULL, 0, 50);
    int done = r.done; /* /hello may have finished */
    dm_httpc_free(e.h);
    e.h = NULL;
    run_until(e.base, NULL, 0, 50);
    CHECK_EQ_INT(r.done, done);
    res_clear(&r);
    srv_free(s);
    srv_free(tls);
    env_cleanup(&e);
}

TEST(t_concurrent)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_NORMAL);
    struct srv *t = srv_new(e.base, "127.0.0.1", g.leaf, SRV_NORMAL);
    char url[256], turl[256];
    url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/hello");
    url_of(turl, sizeof(turl), "https", "localhost", t->port, "/chunked");
    enum { N = 50 };
    static struct res rs[2 * N];
    memset(rs, 0, sizeof(rs));
    int total = 0;
    for (int i = 0; i < N; i++) {
        CHECK(start(e.h, NULL, url, NULL, NULL, 0, &rs[i]) != NULL);
        CHECK(start(e.h, NULL, turl, NULL, NULL, 0, &rs[N + i]) != NULL);
    }
    uint64_t end = now_ms() + 10000;
    while (now_ms() < end) {
        total = 0;
        for (int i = 0; i < 2 * N; i++) {
            total += rs[i].done;
        }
        if (total == 2 * N) {
            break;
        }
        run_until(e.base, NULL, 0, 10);
    }
    CHECK_EQ_INT(total, 2 * N);
    int ok = 0;
    for (int i = 0; i < 2 * N; i++) {
        ok += rs[i].status == 200 && strcmp(rs[i].body != NULL ? rs[i].body : "",
                                            i < N ? "hello" : "hello world, 42!") == 0;
        if (rs[i].status != 200) {
            fprintf(stderr, "concurrent %d: %s\n", i, rs[i].msg);
        }
        res_clear(&rs[i]);
    }
    CHECK_EQ_INT(ok, 2 * N);
    CHECK(s->num_accepted <= N && t->num_accepted <= N);
    /* each origin keeps at most DM_HTTPC_DEFAULT_MAX_IDLE_PER_ORIGIN */
    CHECK_EQ_INT(dm_httpc_num_idle(e.h), 2 * DM_HTTPC_DEFAULT_MAX_IDLE_PER_ORIGIN);
    srv_free(s);
    srv_free(t);
    env_cleanup(&e);
}

TEST(t_stale_retry)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_CLOSE_SECOND);
    char url[256];
    url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/hello");
    struct res r = {0};
    /* GET: the pooled connection dies on the 2nd request; resent once */
    fetch(&e, "GET", url, NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    fetch(&e, "GET", url, NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.body, "hello");
    CHECK_EQ_INT(s->num_accepted, 2);
    CHECK_EQ_INT(s->num_requests, 3);
    /* POST on the now pooled second connection: not resent */
    fetch(&e, "POST", url, "{}", &r);
    CHECK_EQ_INT(r.code, DM_HTTPC_E_STALE);
    CHECK(strstr(r.msg, "not resent") != NULL);
    CHECK_EQ_INT(s->num_accepted, 2);
    CHECK_EQ_INT(s->num_requests, 4);
    /* the same over TLS */
    struct srv *t = srv_new(e.base, "127.0.0.1", g.leaf, SRV_CLOSE_SECOND);
    url_of(url, sizeof(url), "https", "localhost", t->port, "/hello");
    fetch(&e, "GET", url, NULL, &r);
    fetch(&e, "GET", url, NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_INT(t->num_accepted, 2);
    fetch(&e, "POST", url, "{}", &r);
    CHECK_EQ_INT(r.code, DM_HTTPC_E_STALE);
    CHECK_EQ_INT(t->num_accepted, 2);
    res_clear(&r);
    srv_free(s);
    srv_free(t);
    env_cleanup(&e);
}

TEST(t_idle_close)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *s = srv_new(e.base, "127.0.0.1", NULL, SRV_CLOSE_IDLE);
    struct srv *t = srv_new(e.base, "127.0.0.1", g.leaf, SRV_CLOSE_IDLE);
    char url[256], turl[256];
    url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/hello");
    url_of(turl, sizeof(turl), "https", "127.0.0.1", t->port, "/hello");
    struct res r = {0};
    for (int i = 0; i < 2; i++) {
        fetch(&e, "POST", url, "x", &r);
        CHECK_EQ_INT(r.status, 200);
        fetch(&e, "POST", turl, "x", &r);
        CHECK_EQ_INT(r.status, 200);
        run_until(e.base, NULL, 0, 100);
        CHECK_EQ_INT(dm_httpc_num_idle(e.h), 0); /* the closes were noticed while idle */
    }
    CHECK_EQ_INT(s->num_accepted, 2);
    CHECK_EQ_INT(t->num_accepted, 2);
    res_clear(&r);
    srv_free(s);
    srv_free(t);
    /* the idle timeout closes pooled connections */
    dm_httpc_free(e.h);
    struct dm_httpc_opts o = {.ca_file = g.ca_path, .idle_timeout_ms = 50};
    e.h = env_client(&e, &o);
    s = srv_new(e.base, "127.0.0.1", NULL, SRV_NORMAL);
    fetch(&e, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/hello"), NULL, &r);
    CHECK_EQ_INT(dm_httpc_num_idle(e.h), 1);
    run_until(e.base, NULL, 0, 150);
    CHECK_EQ_INT(dm_httpc_num_idle(e.h), 0);
    res_clear(&r);
    srv_free(s);
    env_cleanup(&e);
}

/* ---- TLS ------------------------------------------------------------------------ */

TEST(t_tls_ok)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *t = srv_new(e.base, "127.0.0.1", g.leaf, SRV_NORMAL);
    struct srv *t6 = srv_new(e.base, "::1", g.leaf, SRV_NORMAL);
    struct srv *o = srv_new(e.base, "127.0.0.1", g.other_leaf, SRV_NORMAL);
    char url[256];
    struct res r = {0};
    for (int i = 0; i < 3; i++) {
        fetch(&e, NULL, url_of(url, sizeof(url), "https", "localhost", t->port, "/hello"), NULL,
              &r);
        CHECK_EQ_INT(r.status, 200);
        CHECK_STR(r.body, "hello");
    }
    CHECK_EQ_INT(t->num_accepted, 1);
    CHECK(t->saw_sni);
    CHECK_STR(t->last_sni, "localhost");
    /* IP literals: no SNI, the IP is checked against the certificate */
    fetch(&e, NULL, url_of(url, sizeof(url), "https", "127.0.0.1", t->port, "/chunked"), NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.body, "hello world, 42!");
    CHECK(!t->saw_sni);
    snprintf(url, sizeof(url), "https://[::1]:%d/hello", t6->port);
    fetch(&e, NULL, url, NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK(!t6->saw_sni);
    snprintf(url, sizeof(url), "http://[::1]:%d/hello", t6->port);
    fetch(&e, NULL, url, NULL, &r);
    CHECK(r.done == 1 && r.status == 0); /* plain HTTP to a TLS port fails, cleanly */
    /* close-delimited body with close_notify; a name from the hosts file */
    fetch(&e, NULL, url_of(url, sizeof(url), "https", "localhost", t->port, "/eof"), NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.body, "until-close");
    fetch(&e, NULL, url_of(url, sizeof(url), "https", "other.test", o->port, "/hello"), NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(o->last_sni, "other.test");
    /* without close_notify a close-delimited body may be truncated: refused */
    fetch(&e, NULL, url_of(url, sizeof(url), "https", "localhost", t->port, "/eof-unclean"), NULL,
          &r);
    CHECK_EQ_INT(r.code, DM_E_PROTO);
    CHECK(strstr(r.msg, "close_notify") != NULL);
    res_clear(&r);
    srv_free(t);
    srv_free(t6);
    srv_free(o);
    env_cleanup(&e);
}

TEST(t_tls_failures)
{
    struct env e;
    env_init(&e, NULL);
    struct srv *t = srv_new(e.base, "127.0.0.1", g.leaf, SRV_NORMAL);
    struct srv *o = srv_new(e.base, "127.0.0.1", g.other_leaf, SRV_NORMAL);
    char url[256];
    struct res r = {0};
    /* certificate for other.test only */
    fetch(&e, NULL, url_of(url, sizeof(url), "https", "localhost", o->port, "/hello"), NULL, &r);
    CHECK_EQ_INT(r.code, DM_E_TLS);
    CHECK(strstr(r.msg, "certificate verify failed") != NULL);
    CHECK(strstr(r.msg, "ostname mismatch") != NULL);
    fetch(&e, NULL, url_of(url, sizeof(url), "https", "127.0.0.1", o->port, "/hello"), NULL, &r);
    CHECK_EQ_INT(r.code, DM_E_TLS);
    CHECK(strstr(r.msg, "IP address mismatch") != NULL);
    /* server chooses h2 */
    t->is_alpn_h2 = true;
    fetch(&e, NULL, url_of(url, sizeof(url), "https", "localhost", t->port, "/hello"), NULL, &r);
    CHECK_EQ_INT(r.code, DM_E_TLS);
    CHECK(strstr(r.msg, "ALPN") != NULL);
    t->is_alpn_h2 = false;
    /* a CA that did not issue the server's certificate */
    dm_httpc_free(e.h);
    struct dm_httpc_opts wrong = {.ca_file = g.wrong_ca_path};
    e.h = env_client(&e, &wrong);
    fetch(&e, NULL, url_of(url, sizeof(url), "https", "localhost", t->port, "/hello"), NULL, &r);
    CHECK_EQ_INT(r.code, DM_E_TLS);
    CHECK(strstr(r.msg, "certificate verify failed") != NULL);
    CHECK(strstr(r.msg, "local issuer") != NULL);
    fprintf(stderr, "  wrong CA: %s\n", r.msg);
    CHECK_EQ_INT(ERR_peek_error(), 0); /* the error queue was drained into the message */
    res_clear(&r);
    srv_free(t);
    srv_free(o);
    env_cleanup(&e);
}

TEST(t_tls_handshake_timeout)
{
    struct env e;
    struct dm_httpc_opts o = {.ca_file = g.ca_path, .connect_timeout_ms = 150};
    fx_setup();
    env_init(&e, &o);
    struct srv *t = srv_new(e.base, "127.0.0.1", g.leaf, SRV_STALL);
    char url[256];
    struct res r = {0};
    uint64_t t0 = now_ms();
    fetch(&e, NULL, url_of(url, sizeof(url), "https", "127.0.0.1", t->port, "/"), NULL, &r);
    CHECK_EQ_INT(r.code, DM_E_TIMEOUT);
    CHECK(strstr(r.msg, "handshake") != NULL);
    CHECK(now_ms() - t0 < 2000);
    res_clear(&r);
    srv_free(t);
    env_cleanup(&e);
}

TEST(t_own_resolver)
{
    fx_setup();
    struct event_base *base = event_base_new();
    struct srv *s = srv_new(base, "127.0.0.1", NULL, SRV_NORMAL);
    struct dm_err err;
    struct dm_httpc_opts o = {.ca_file = g.ca_path};
    struct dm_httpc *h = dm_httpc_new(base, NULL, &o, &err);
    CHECK(h != NULL);
    char url[256];
    struct res r = {0};
    /* IP literal and /etc/hosts only: nothing leaves the machine */
    CHECK(start(h, NULL, url_of(url, sizeof(url), "http", "127.0.0.1", s->port, "/hello"), NULL,
                NULL, 0, &r) != NULL);
    CHECK(run_until(base, &r.done, 1, 5000));
    CHECK_EQ_INT(r.status, 200);
    res_clear(&r);
    CHECK(start(h, NULL, url_of(url, sizeof(url), "http", "localhost", s->port, "/hello"), NULL,
                NULL, 0, &r) != NULL);
    CHECK(run_until(base, &r.done, 1, 5000));
    CHECK_EQ_INT(r.status, 200);
    res_clear(&r);
    dm_httpc_free(h);
    srv_free(s);
    run_until(base, NULL, 0, 10);
    event_base_free(base);
}

TEST(t_teardown)
{
    if (!g.is_ready) {
        return;
    }
    unlink(g.ca_path);
    unlink(g.wrong_ca_path);
    unlink(g.hosts_path);
    rmdir(g.dir);
    X509_free(g.ca);
    X509_free(g.wrong_ca);
    X509_free(g.leaf);
    X509_free(g.other_leaf);
    EVP_PKEY_free(g.ca_key);
    EVP_PKEY_free(g.wrong_ca_key);
    EVP_PKEY_free(g.leaf_key);
    g.is_ready = false;
}

HARNESS_MAIN(T(t_parse_ok), T(t_parse_bad), T(t_parse_bounds), T(t_request_invalid),
             T(t_new_errors), T(t_plain_basic), T(t_plain_headers_and_fallback), T(t_async_dns),
             T(t_plain_reuse), T(t_callback_starts_request), T(t_limits), T(t_bad_responses),
             T(t_timeouts), T(t_cancel), T(t_free_in_flight), T(t_concurrent), T(t_stale_retry),
             T(t_idle_close), T(t_tls_ok), T(t_tls_failures), T(t_tls_handshake_timeout),
             T(t_own_resolver), T(t_teardown))
