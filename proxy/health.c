/* Active health checks: one thread with its own event loop probes every
 * backend of every site with upstream.health_check (a non-blocking connect,
 * "GET path HTTP/1.1", the status line read back), counts consecutive passes
 * and failures, and flips the backend's shared record up or down
 * (backend.c). Workers never wait for it: they read the record's atomics.
 * A probe speaks the site's backend transport (upstream.tls, .protocol):
 * TLS with the same verification as requests, and HTTP/2 through a small
 * nghttp2 client session for h2 and h2c backends.
 * The control thread hands each new config over (dm_health_update); probes
 * then follow it, keeping their counts for backends that stay. See
 * docs/architecture.md, "Backends". */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include "config/config.h"
#include "proxy/core/log.h"
#include "proxy/proxy_int.h"
#include "proxy/upstream_tr.h"

#define PROBE_BUF 512

struct probe {
    struct dm_backend *be;         /* ref */
    const struct cfg_site *site;   /* borrowed from the set's cfg */
    const struct cfg_addr *addr;   /* borrowed from the set's cfg */
    struct event *tick, *io, *tmo; /* owned */
    struct evdns_getaddrinfo_request *dns;
    int fd;
    bool is_busy;
    bool is_sent;
    bool is_connected;
    bool has_tr;         /* tr is set: the site has a backend transport */
    struct dm_up_tr tr;  /* owned when has_tr: TLS context, names, protocol */
    SSL *ssl;            /* owned: the probe's TLS connection, NULL for cleartext */
    nghttp2_session *h2; /* owned: HTTP/2 backends, for the probe's one request */
    int h2_status;       /* :status of the answer, 0 until it came */
    char req[1400];      /* HTTP/1.1 request text, or the HTTP/2 bytes to send */
    size_t req_len, req_off;
    char buf[PROBE_BUF];
    size_t len;
    uint32_t fails, passes; /* consecutive */
};

struct probe_set {
    struct cfg *cfg; /* ref */
    struct probe *probes;
    size_t num;
};

static struct {
    pthread_t thread;
    bool is_started;
    struct event_base *base;
    struct evdns_base *dns;
    struct event *wake_ev;
    int wake_fd;
    pthread_mutex_t lock;
    struct cfg *pending; /* ref: the config to follow next */
    bool is_stopping;
    struct probe_set set;
} hc = {.wake_fd = -1, .lock = PTHREAD_MUTEX_INITIALIZER};

static void probe_end(struct probe *p)
{
    if (p->ssl != NULL) {
        SSL_free(p->ssl);
        p->ssl = NULL;
    }
    if (p->h2 != NULL) {
        nghttp2_session_del(p->h2);
        p->h2 = NULL;
    }
    if (p->dns != NULL) {
        evdns_getaddrinfo_cancel(p->dns);
        p->dns = NULL;
    }
    if (p->io != NULL) {
        event_free(p->io);
        p->io = NULL;
    }
    if (p->tmo != NULL) {
        evtimer_del(p->tmo);
    }
    if (p->fd >= 0) {
        close(p->fd);
        p->fd = -1;
    }
    p->is_busy = false;
}

static void probe_verdict(struct probe *p, bool is_pass, int status, const char *why)
{
    const struct cfg_health_check *h = &p->site->upstream.health;
    probe_end(p);
    atomic_store(&p->be->last_check_s, (uint64_t)time(NULL));
    atomic_store(&p->be->last_check_status, status);
    char msg[DM_BACKEND_REASON_MAX];
    if (is_pass) {
        p->fails = 0;
        p->passes++;
        if (p->passes >= h->passes) {
            snprintf(msg, sizeof(msg), "status %d (%u consecutive passes)", status, p->passes);
            dm_backend_set_active(p->be, true, msg);
        }
    } else {
        p->passes = 0;
        p->fails++;
        DM_LOG_DBG("health", "backend %s of site %s: check failed: %s", p->be->address,
                   p->be->label, why);
        if (p->fails >= h->fails) {
            snprintf(msg, sizeof(msg), "%s (%u consecutive failures)", why, p->fails);
            dm_backend_set_active(p->be, false, msg);
        }
    }
}

/* probe_parse reads "HTTP/1.x NNN" at the start of the buffer: the status,
 * 0 if more bytes are needed, -1 if it is not a status line. */
static int probe_parse(const struct probe *p)
{
    if (p->len < 12) {
        return memchr(p->buf, '\n', p->len) != NULL ? -1 : 0;
    }
    if (memcmp(p->buf, "HTTP/1.", 7) != 0 || p->buf[8] != ' ' || p->buf[9] < '1' ||
        p->buf[9] > '5' || p->buf[10] < '0' || p->buf[10] > '9' || p->buf[11] < '0' ||
        p->buf[11] > '9') {
        return -1;
    }
    return (p->buf[9] - '0') * 100 + (p->buf[10] - '0') * 10 + (p->buf[11] - '0');
}

static void probe_on_io(evutil_socket_t fd, short what, void *arg);

/* probe_wait waits for the socket to become readable or writable. */
static void probe_wait(struct probe *p, short what)
{
    if (p->io != NULL) {
        event_free(p->io);
    }
    p->io = event_new(hc.base, p->fd, what | EV_PERSIST, probe_on_io, p);
    if (p->io != NULL) {
        event_add(p->io, NULL);
    }
}

static int h2_on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *user_data)
{
    (void)session;
    (void)flags;
    struct probe *p = user_data;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->hd.stream_id == 1 && namelen == 7 &&
        memcmp(name, ":status", 7) == 0 && valuelen == 3) {
        int st = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
        if (st >= 200 && st <= 599) {
            p->h2_status = st; /* interim 1xx answers are skipped */
        }
    }
    return 0;
}

/* probe_h2_request makes the HTTP/2 bytes of the probe's request (client
 * preface, SETTINGS, HEADERS) into p->req. Returns 0, or -1. */
static int probe_h2_request(struct probe *p)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0) {
        return -1;
    }
    nghttp2_session_callbacks_set_on_header_callback(cbs, h2_on_header);
    int rv = nghttp2_session_client_new(&p->h2, cbs, p);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0) {
        p->h2 = NULL;
        return -1;
    }
    const struct cfg_health_check *h = &p->site->upstream.health;
    const char *host = h->host != NULL                  ? h->host
                       : p->addr->kind == CFG_ADDR_UNIX ? "localhost"
                                                        : p->addr->text;
    const char *scheme = p->tr.is_tls ? "https" : "http";
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv nva[] = {NV(":method", "GET"), NV(":scheme", scheme), NV(":authority", host),
                        NV(":path", h->path), NV("user-agent", "doorman-health-check")};
#undef NV
    if (nghttp2_submit_settings(p->h2, NGHTTP2_FLAG_NONE, NULL, 0) != 0 ||
        nghttp2_submit_request(p->h2, NULL, nva, sizeof(nva) / sizeof(nva[0]), NULL, NULL) != 1) {
        return -1;
    }
    p->req_len = 0;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(p->h2, &data);
        if (n < 0 || p->req_len + (size_t)n > sizeof(p->req)) {
            return -1;
        }
        if (n == 0) {
            return 0;
        }
        memcpy(p->req + p->req_len, data, (size_t)n);
        p->req_len += (size_t)n;
    }
}

/* probe_answer judges a status: the range health_check.status expects. */
static void probe_answer(struct probe *p, int status)
{
    const struct cfg_health_check *h = &p->site->upstream.health;
    if (status < h->status_min || status > h->status_max) {
        char why[64];
        snprintf(why, sizeof(why), "status %d", status);
        probe_verdict(p, false, status, why);
        return;
    }
    probe_verdict(p, true, status, NULL);
}

/* probe_connected runs once the TCP connection is up (and the TLS handshake
 * done, for TLS backends): the request goes out next. */
static void probe_connected(struct probe *p)
{
    if (p->tr.protocol != CFG_UP_HTTP1 && probe_h2_request(p) != 0) {
        probe_verdict(p, false, 0, "cannot make the HTTP/2 request");
        return;
    }
    p->req_off = 0;
    probe_wait(p, EV_WRITE);
}

/* probe_handshake steps the TLS handshake. */
static void probe_handshake(struct probe *p)
{
    bool want_write;
    char why[160];
    int rc = dm_uptls_handshake(p->ssl, &want_write, why, sizeof(why));
    if (rc < 0) {
        probe_verdict(p, false, 0, why);
    } else if (rc == 0) {
        probe_wait(p, want_write ? EV_WRITE : EV_READ);
    } else {
        probe_connected(p);
    }
}

static ssize_t probe_send(struct probe *p)
{
    const char *data = p->req + p->req_off;
    size_t len = p->req_len - p->req_off;
    if (p->ssl == NULL) {
        return send(p->fd, data, len, MSG_NOSIGNAL);
    }
    int n = SSL_write(p->ssl, data, (int)len);
    if (n > 0) {
        return n;
    }
    int e = SSL_get_error(p->ssl, n);
    errno = e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? EAGAIN : EPIPE;
    return -1;
}

/* probe_read takes what arrived: > 0 bytes, 0 at the end, -1 with errno. */
static ssize_t probe_read(struct probe *p, void *buf, size_t cap)
{
    return p->ssl != NULL ? dm_uptls_read(p->ssl, buf, cap) : recv(p->fd, buf, cap, 0);
}

static void probe_on_readable(struct probe *p)
{
    for (;;) {
        if (p->tr.protocol != CFG_UP_HTTP1) {
            uint8_t chunk[4096];
            ssize_t n = probe_read(p, chunk, sizeof(chunk));
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                return;
            }
            if (n <= 0) {
                probe_verdict(p, false, 0, "closed without an HTTP/2 response");
                return;
            }
            if (nghttp2_session_mem_recv(p->h2, chunk, (size_t)n) < 0) {
                probe_verdict(p, false, 0, "not an HTTP/2 response");
                return;
            }
            if (p->h2_status != 0) {
                probe_answer(p, p->h2_status);
                return;
            }
            continue;
        }
        ssize_t n = probe_read(p, p->buf + p->len, sizeof(p->buf) - p->len);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        if (n <= 0) {
            probe_verdict(p, false, 0, "closed without a response");
            return;
        }
        p->len += (size_t)n;
        int status = probe_parse(p);
        if (status == 0 && p->len < sizeof(p->buf)) {
            continue;
        }
        if (status <= 0) {
            probe_verdict(p, false, 0, "not an HTTP response");
            return;
        }
        probe_answer(p, status);
        return;
    }
}

static void probe_on_io(evutil_socket_t fd, short what, void *arg)
{
    struct probe *p = arg;
    (void)what;
    if (!p->is_connected) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            char why[96];
            int e = err != 0 ? err : errno;
            snprintf(why, sizeof(why), "connect %s", e == ECONNREFUSED ? "refused" : strerror(e));
            probe_verdict(p, false, 0, why);
            return;
        }
        p->is_connected = true;
        if (p->tr.is_tls) {
            if ((p->ssl = dm_uptls_new(&p->tr, p->fd)) == NULL) {
                probe_verdict(p, false, 0, "cannot start TLS");
                return;
            }
            probe_handshake(p);
            return;
        }
        probe_connected(p);
        return;
    }
    if (p->ssl != NULL && !SSL_is_init_finished(p->ssl)) {
        probe_handshake(p);
        return;
    }
    if (!p->is_sent) {
        ssize_t n = probe_send(p);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        if (n < 0) {
            probe_verdict(p, false, 0, "send failed");
            return;
        }
        p->req_off += (size_t)n;
        if (p->req_off < p->req_len) {
            return;
        }
        p->is_sent = true;
        probe_wait(p, EV_READ);
        /* TLS may hold decrypted bytes already; cleartext reads find EAGAIN. */
        probe_on_readable(p);
        return;
    }
    probe_on_readable(p);
}

static void probe_connect(struct probe *p, const struct sockaddr *sa, socklen_t sa_len)
{
    p->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (p->fd < 0) {
        probe_verdict(p, false, 0, "socket failed");
        return;
    }
    if (connect(p->fd, sa, sa_len) != 0 && errno != EINPROGRESS) {
        char why[96];
        snprintf(why, sizeof(why), "connect %s",
                 errno == ECONNREFUSED ? "refused" : strerror(errno));
        probe_verdict(p, false, 0, why);
        return;
    }
    probe_wait(p, EV_WRITE);
}

static void probe_on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct probe *p = arg;
    p->dns = NULL;
    if (result == EVUTIL_EAI_CANCEL) {
        return;
    }
    if (result != 0 || res == NULL) {
        if (res != NULL) {
            evutil_freeaddrinfo(res);
        }
        probe_verdict(p, false, 0, "name resolution failed");
        return;
    }
    probe_connect(p, res->ai_addr, (socklen_t)res->ai_addrlen);
    evutil_freeaddrinfo(res);
}

static void probe_on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct probe *p = arg;
    char why[64];
    snprintf(why, sizeof(why), "no response within %u ms", p->site->upstream.health.timeout_ms);
    probe_verdict(p, false, 0, why);
}

static void probe_on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct probe *p = arg;
    const struct cfg_health_check *h = &p->site->upstream.health;
    if (p->is_busy) {
        return;
    }
    p->is_busy = true;
    p->is_sent = false;
    p->is_connected = false;
    p->h2_status = 0;
    p->req_off = 0;
    p->len = 0;
    struct timeval tv = {.tv_sec = h->timeout_ms / 1000, .tv_usec = (h->timeout_ms % 1000) * 1000};
    evtimer_add(p->tmo, &tv);
    const struct cfg_addr *a = p->addr;
    if (a->kind == CFG_ADDR_HOSTNAME) {
        struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC,
                                        .ai_socktype = SOCK_STREAM,
                                        .ai_protocol = IPPROTO_TCP,
                                        .ai_flags = EVUTIL_AI_ADDRCONFIG};
        char port[8];
        snprintf(port, sizeof(port), "%u", a->port);
        p->dns = evdns_getaddrinfo(hc.dns, a->host, port, &hints, probe_on_resolved, p);
        return;
    }
    probe_connect(p, (const struct sockaddr *)&a->ss, a->ss_len);
}

static void set_free(struct probe_set *s)
{
    for (size_t i = 0; i < s->num; i++) {
        struct probe *p = &s->probes[i];
        probe_end(p);
        if (p->tick != NULL) {
            event_free(p->tick);
        }
        if (p->tmo != NULL) {
            event_free(p->tmo);
        }
        if (p->has_tr) {
            dm_up_tr_cleanup(&p->tr);
        }
        dm_backend_unref(p->be);
    }
    free(s->probes);
    cfg_unref(s->cfg);
    memset(s, 0, sizeof(*s));
}

/* set_build makes the probes of cfg; counts carry over from old for the
 * backends that stay. Backends of sites without checks are marked up (a
 * check removed by a reload must not leave them down for good). */
static void set_build(struct probe_set *s, struct cfg *cfg, const struct probe_set *old)
{
    size_t n = 0;
    for (size_t i = 0; i < cfg->num_sites; i++) {
        if (cfg->sites[i].upstream.health.path != NULL) {
            n += cfg->sites[i].num_to;
        }
    }
    s->cfg = cfg_ref(cfg);
    s->probes = calloc(n ? n : 1, sizeof(*s->probes));
    if (s->probes == NULL) {
        dm_log(DM_LOG_ERROR, "health", "out of memory: active health checks are off");
        return;
    }
    for (size_t i = 0; i < cfg->num_sites; i++) {
        const struct cfg_site *site = &cfg->sites[i];
        struct dm_pool *pool = dm_pool_new(site); /* the records, by the same keys */
        if (pool == NULL) {
            continue;
        }
        for (size_t j = 0; j < site->num_to; j++) {
            if (site->upstream.health.path == NULL) {
                dm_backend_set_active(pool->be[j], true, "active checks are off");
                continue;
            }
            struct probe *p = &s->probes[s->num];
            p->fd = -1;
            p->be = dm_backend_ref(pool->be[j]);
            p->site = site;
            p->addr = &site->to[j];
            for (size_t k = 0; k < old->num; k++) {
                if (old->probes[k].be == p->be) {
                    p->fails = old->probes[k].fails;
                    p->passes = old->probes[k].passes;
                }
            }
            const struct cfg_health_check *h = &site->upstream.health;
            int len = snprintf(p->req, sizeof(p->req),
                               "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: doorman-health-check\r\n"
                               "Connection: close\r\n\r\n",
                               h->path,
                               h->host != NULL                  ? h->host
                               : p->addr->kind == CFG_ADDR_UNIX ? "localhost"
                                                                : p->addr->text);
            p->req_len = len > 0 && (size_t)len < sizeof(p->req) ? (size_t)len : 0;
            p->has_tr = dm_up_tr_init(&p->tr, p->addr, site->transport) == 0;
            p->tick = event_new(hc.base, -1, EV_PERSIST, probe_on_tick, p);
            p->tmo = evtimer_new(hc.base, probe_on_timeout, p);
            if (p->tick == NULL || p->tmo == NULL || p->req_len == 0 || !p->has_tr) {
                if (p->has_tr) {
                    dm_up_tr_cleanup(&p->tr);
                }
                dm_backend_unref(p->be);
                if (p->tick != NULL) {
                    event_free(p->tick);
                }
                if (p->tmo != NULL) {
                    event_free(p->tmo);
                }
                memset(p, 0, sizeof(*p));
                continue;
            }
            struct timeval tv = {.tv_sec = h->interval_ms / 1000,
                                 .tv_usec = (h->interval_ms % 1000) * 1000};
            event_add(p->tick, &tv);
            /* First probe at once: a reload or start learns the state early. */
            event_active(p->tick, EV_TIMEOUT, 0);
            s->num++;
        }
        dm_pool_free(pool);
    }
}

static void health_on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    (void)arg;
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&hc.lock);
    struct cfg *cfg = hc.pending;
    hc.pending = NULL;
    bool is_stopping = hc.is_stopping;
    pthread_mutex_unlock(&hc.lock);
    if (is_stopping) {
        cfg_unref(cfg);
        event_base_loopbreak(hc.base);
        return;
    }
    if (cfg == NULL) {
        return;
    }
    struct probe_set next = {0};
    set_build(&next, cfg, &hc.set);
    cfg_unref(cfg);
    set_free(&hc.set);
    hc.set = next;
}

static void *health_main(void *arg)
{
    (void)arg;
    event_base_dispatch(hc.base);
    return NULL;
}

int dm_health_start(void)
{
    if (hc.is_started) {
        return 0;
    }
    hc.base = event_base_new();
    hc.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (hc.base == NULL || hc.wake_fd < 0) {
        goto fail;
    }
    hc.dns = evdns_base_new(hc.base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    hc.wake_ev = event_new(hc.base, hc.wake_fd, EV_READ | EV_PERSIST, health_on_wake, NULL);
    if (hc.wake_ev == NULL || event_add(hc.wake_ev, NULL) != 0) {
        goto fail;
    }
    hc.is_stopping = false;
    if (pthread_create(&hc.thread, NULL, health_main, NULL) != 0) {
        goto fail;
    }
    hc.is_started = true;
    return 0;
fail:
    if (hc.wake_ev != NULL) {
        event_free(hc.wake_ev);
        hc.wake_ev = NULL;
    }
    if (hc.dns != NULL) {
        evdns_base_free(hc.dns, 0);
        hc.dns = NULL;
    }
    if (hc.wake_fd >= 0) {
        close(hc.wake_fd);
        hc.wake_fd = -1;
    }
    if (hc.base != NULL) {
        event_base_free(hc.base);
        hc.base = NULL;
    }
    return -1;
}

static void health_wake(void)
{
    uint64_t one = 1;
    ssize_t r = write(hc.wake_fd, &one, sizeof(one));
    (void)r;
}

void dm_health_update(struct cfg *cfg)
{
    if (!hc.is_started && dm_health_start() != 0) {
        dm_log(DM_LOG_ERROR, "health", "cannot start the health-check thread");
        return;
    }
    pthread_mutex_lock(&hc.lock);
    cfg_unref(hc.pending);
    hc.pending = cfg_ref(cfg);
    pthread_mutex_unlock(&hc.lock);
    health_wake();
}

void dm_health_stop(void)
{
    if (!hc.is_started) {
        return;
    }
    pthread_mutex_lock(&hc.lock);
    hc.is_stopping = true;
    pthread_mutex_unlock(&hc.lock);
    health_wake();
    pthread_join(hc.thread, NULL);
    set_free(&hc.set);
    cfg_unref(hc.pending);
    hc.pending = NULL;
    event_free(hc.wake_ev);
    hc.wake_ev = NULL;
    evdns_base_free(hc.dns, 0);
    hc.dns = NULL;
    close(hc.wake_fd);
    hc.wake_fd = -1;
    event_base_free(hc.base);
    hc.base = NULL;
    hc.is_started = false;
}
