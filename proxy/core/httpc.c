/* Asynchronous HTTP/1.1 client (httpc.h; design in docs/httpc.md). A call is
 * a state machine start -> resolve -> connect -> handshake -> exchange driven
 * by one call_step(); a connection belongs to one call or to the idle pool.
 * Invariant: a call's callback runs once, from an event callback, after the
 * call has let go of its connection, lookup and timers. The response decoder
 * is in httpc_parse.c. */
#include "proxy/core/httpc.h"
#include "proxy/core/httpc_int.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "proxy/core/log.h"
#include "proxy/core/str.h"

#define HTTPC_READ_CHUNK      16384 /* one TLS record: bytes read or written per call */
#define HTTPC_MAX_ADDRS       16    /* addresses tried per connection attempt */
#define HTTPC_MAX_IDLE_TOTAL  64    /* idle connections over all origins */
#define HTTPC_MAX_METHOD      32
#define HTTPC_MAX_FIELD_VALUE 8192 /* one request field value */
#define HTTPC_MAX_WHAT        256  /* "METHOD url" kept for messages */

/* TLS 1.2 suites: ECDHE with AEAD only, as on our server side (TLS 1.3 has
 * only such suites). */
#define HTTPC_TLS12_CIPHERS                                                                        \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* ---- Client, connections, pool ------------------------------------------- */

struct dm_httpc {
    struct event_base *base; /* borrowed */
    struct evdns_base *dns;  /* owned if is_dns_owned, else borrowed */
    bool is_dns_owned;
    SSL_CTX *ssl_ctx; /* owned: client context, X509 mode, verifying */
    char *user_agent; /* owned */
    uint32_t connect_timeout_ms;
    uint32_t request_timeout_ms;
    uint32_t idle_timeout_ms;
    uint32_t max_idle_per_origin;
    size_t max_body;             /* bytes */
    struct dm_httpc_call *calls; /* borrowed list: calls in flight (each owned by its user) */
    struct httpc_conn *idle;     /* owned list: pooled connections, most recently used first */
    size_t num_idle;
    int num_dispatching; /* callbacks running: dm_httpc_free must not run under them */
};

struct httpc_conn {
    struct dm_httpc *h;         /* borrowed */
    struct dm_httpc_call *call; /* borrowed: the call using it; NULL while pooled */
    char *origin;               /* owned: pool key "scheme://host:port" */
    int fd;                     /* owned */
    SSL *ssl;                   /* owned; NULL for http:// */
    struct event *rev;          /* owned: persistent read interest once connected */
    struct event *wev;          /* owned: one-shot write interest */
    struct event *timer;        /* owned: connect timeout while attached, idle while pooled */
    struct evbuffer *in;        /* owned: received bytes not decoded yet */
    short ready;                /* EV_WRITE / EV_TIMEOUT seen and not yet consumed */
    bool is_reading;            /* rev added */
    struct httpc_conn *idle_prev, *idle_next; /* borrowed: h->idle links */
};

static void conn_on_io(evutil_socket_t fd, short what, void *arg);
static void conn_on_timer(evutil_socket_t fd, short what, void *arg);
static void call_step(struct dm_httpc_call *c);

static void set_timer(struct event *ev, uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

static struct httpc_conn *conn_new(struct dm_httpc *h, const char *origin, int fd)
{
    struct httpc_conn *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        close(fd);
        return NULL;
    }
    k->h = h;
    k->fd = fd;
    k->origin = strdup(origin);
    k->rev = event_new(h->base, fd, EV_READ | EV_PERSIST, conn_on_io, k);
    k->wev = event_new(h->base, fd, EV_WRITE, conn_on_io, k);
    k->timer = evtimer_new(h->base, conn_on_timer, k);
    k->in = evbuffer_new();
    if (k->origin == NULL || k->rev == NULL || k->wev == NULL || k->timer == NULL ||
        k->in == NULL) {
        free(k->origin);
        if (k->rev != NULL) {
            event_free(k->rev);
        }
        if (k->wev != NULL) {
            event_free(k->wev);
        }
        if (k->timer != NULL) {
            event_free(k->timer);
        }
        if (k->in != NULL) {
            evbuffer_free(k->in);
        }
        close(fd);
        free(k);
        return NULL;
    }
    return k;
}

/* conn_free closes k. is_graceful: send a TLS close_notify first (best
 * effort; not for connections in an unknown state). */
static void conn_free(struct httpc_conn *k, bool is_graceful)
{
    if (k == NULL) {
        return;
    }
    if (k->ssl != NULL) {
        if (is_graceful) {
            SSL_shutdown(k->ssl);
        }
        SSL_free(k->ssl);
        ERR_clear_error();
    }
    event_free(k->rev);
    event_free(k->wev);
    event_free(k->timer);
    evbuffer_free(k->in);
    close(k->fd);
    free(k->origin);
    free(k);
}

static void conn_watch_read(struct httpc_conn *k)
{
    if (!k->is_reading) {
        event_add(k->rev, NULL);
        k->is_reading = true;
    }
}

static void pool_remove(struct dm_httpc *h, struct httpc_conn *k)
{
    if (k->idle_prev != NULL) {
        k->idle_prev->idle_next = k->idle_next;
    } else {
        h->idle = k->idle_next;
    }
    if (k->idle_next != NULL) {
        k->idle_next->idle_prev = k->idle_prev;
    }
    k->idle_prev = k->idle_next = NULL;
    h->num_idle--;
    evtimer_del(k->timer);
}

/* pool_put parks k, which just finished a response cleanly, or closes it when
 * its origin already has max_idle_per_origin idle connections. */
static void pool_put(struct dm_httpc *h, struct httpc_conn *k)
{
    size_t same = 0;
    struct httpc_conn *last = NULL;
    for (struct httpc_conn *i = h->idle; i != NULL; i = i->idle_next) {
        same += strcmp(i->origin, k->origin) == 0;
        last = i;
    }
    if (same >= h->max_idle_per_origin) {
        conn_free(k, true);
        return;
    }
    if (h->num_idle >= HTTPC_MAX_IDLE_TOTAL && last != NULL) {
        pool_remove(h, last);
        conn_free(last, true);
    }
    k->call = NULL;
    k->ready = 0;
    event_del(k->wev);
    evtimer_del(k->timer);
    conn_watch_read(k); /* a close (or stray bytes) while idle evicts it */
    k->idle_next = h->idle;
    if (h->idle != NULL) {
        h->idle->idle_prev = k;
    }
    h->idle = k;
    h->num_idle++;
    set_timer(k->timer, h->idle_timeout_ms);
}

static struct httpc_conn *pool_take(struct dm_httpc *h, const char *origin)
{
    for (struct httpc_conn *k = h->idle; k != NULL; k = k->idle_next) {
        if (strcmp(k->origin, origin) == 0) {
            pool_remove(h, k);
            return k;
        }
    }
    return NULL;
}

/* conn_on_idle_io: a pooled connection became readable. A TLS 1.3 session
 * ticket is fine; end of stream, errors and unsolicited bytes evict it. */
static void conn_on_idle_io(struct httpc_conn *k)
{
    char buf[1];
    if (k->ssl != NULL) {
        int r = SSL_read(k->ssl, buf, sizeof(buf));
        if (r <= 0 && SSL_get_error(k->ssl, r) == SSL_ERROR_WANT_READ) {
            return;
        }
        ERR_clear_error();
    } else {
        ssize_t r = recv(k->fd, buf, sizeof(buf), 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
    }
    struct dm_httpc *h = k->h;
    DM_LOG_DBG("httpc", "%s: idle connection closed by peer", k->origin);
    pool_remove(h, k);
    conn_free(k, false);
}

static void conn_on_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    struct httpc_conn *k = arg;
    if (k->call == NULL) {
        conn_on_idle_io(k);
        return;
    }
    k->ready |= what & EV_WRITE;
    call_step(k->call); /* may free k */
}

static void conn_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct httpc_conn *k = arg;
    if (k->call == NULL) {
        struct dm_httpc *h = k->h;
        pool_remove(h, k);
        conn_free(k, true);
        return;
    }
    k->ready |= EV_TIMEOUT;
    call_step(k->call);
}

enum conn_rd {
    RD_DATA = 0,
    RD_AGAIN,
    RD_EOF_CLEAN,
    RD_EOF_UNCLEAN,
    RD_ERROR,
};

/* conn_recv reads at most one chunk into k->in. */
static enum conn_rd conn_recv(struct httpc_conn *k, struct dm_err *err)
{
    if (k->ssl == NULL) {
        int n = evbuffer_read(k->in, k->fd, HTTPC_READ_CHUNK);
        if (n > 0) {
            return RD_DATA;
        }
        if (n == 0) {
            return RD_EOF_CLEAN;
        }
        if (errno == EAGAIN || errno == EINTR) {
            return RD_AGAIN;
        }
        dm_err_set_errno(err, errno, "read");
        return RD_ERROR;
    }
    struct evbuffer_iovec vec;
    if (evbuffer_reserve_space(k->in, HTTPC_READ_CHUNK, &vec, 1) < 1) {
        dm_err_set(err, DM_E_NOMEM, "out of memory for input");
        return RD_ERROR;
    }
    int n = SSL_read(k->ssl, vec.iov_base,
                     (int)(vec.iov_len < HTTPC_READ_CHUNK ? vec.iov_len : HTTPC_READ_CHUNK));
    if (n > 0) {
        vec.iov_len = (size_t)n;
        evbuffer_commit_space(k->in, &vec, 1);
        return RD_DATA;
    }
    switch (SSL_get_error(k->ssl, n)) {
    case SSL_ERROR_WANT_READ:
        return RD_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        event_add(k->wev, NULL);
        return RD_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return RD_EOF_CLEAN;
    case SSL_ERROR_SYSCALL:
        /* TCP ended (FIN or reset) without close_notify. */
        ERR_clear_error();
        return RD_EOF_UNCLEAN;
    default:
        dm_err_set_tls(err, "TLS read");
        return RD_ERROR;
    }
}

/* conn_send writes p[*sent..len) until done or the socket is full. Returns 0,
 * or -1 with err set. */
static int conn_send(struct httpc_conn *k, const char *p, size_t len, size_t *sent,
                     struct dm_err *err)
{
    while (*sent < len) {
        size_t n = len - *sent;
        if (k->ssl == NULL) {
            ssize_t r = send(k->fd, p + *sent, n, MSG_NOSIGNAL);
            if (r > 0) {
                *sent += (size_t)r;
                continue;
            }
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
                return 0;
            }
            dm_err_set_errno(err, r < 0 ? errno : EPIPE, "write");
            return -1;
        }
        /* A retried SSL_write must repeat its arguments: n depends only on
         * *sent, which moves only on success. */
        if (n > HTTPC_READ_CHUNK) {
            n = HTTPC_READ_CHUNK;
        }
        int r = SSL_write(k->ssl, p + *sent, (int)n);
        if (r > 0) {
            *sent += (size_t)r;
            continue;
        }
        int e = SSL_get_error(k->ssl, r);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
            return 0;
        }
        if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
            dm_err_set_errno(err, errno != 0 ? errno : EPIPE, "write");
            return -1;
        }
        dm_err_set_tls(err, "TLS write");
        return -1;
    }
    return 0;
}

/* ---- Calls --------------------------------------------------------------- */

enum call_state {
    CALL_START = 0, /* take a pooled connection, or go resolve */
    CALL_RESOLVE,   /* evdns lookup (skipped for IP literals) */
    CALL_CONNECT,   /* non-blocking connect, next address on failure */
    CALL_HANDSHAKE, /* TLS, https only */
    CALL_EXCHANGE,  /* request out, response in */
};

static const char *const call_state_names[] = {
    "start", "resolve", "connect", "handshake", "exchange",
};

enum step {
    STEP_CONTINUE = 0, /* go to the next state now */
    STEP_WAIT,         /* an event will call call_step again */
    STEP_DONE,         /* response complete */
    STEP_FAIL,         /* c->err says why */
};

enum resolve_state {
    RESOLVE_IDLE = 0,
    RESOLVE_PENDING,
    RESOLVE_DONE,
};

/* A DNS lookup outlives the call that asked when the call ends first: the
 * lookup is then detached (call = NULL) and frees itself when evdns answers.
 * evdns_getaddrinfo_cancel is not used: its deferred callback touches the
 * evdns_base, which may be freed by then. */
struct httpc_lookup {
    struct dm_httpc_call *call; /* borrowed; NULL once abandoned */
};

struct httpc_addr {
    struct sockaddr_storage ss;
    socklen_t len;
};

struct dm_httpc_call {
    struct dm_httpc *h;                /* borrowed */
    struct dm_httpc_call *prev, *next; /* borrowed: h->calls links */
    enum call_state state;
    dm_httpc_done_cb cb;
    void *arg; /* borrowed */

    /* What to send, fixed at start. */
    bool is_https;
    bool is_ip; /* host is an IP literal: no DNS, no SNI, IP checked in the certificate */
    bool is_idempotent;
    bool is_head;
    int family;     /* AF_INET or AF_INET6 when is_ip */
    uint8_t ip[16]; /* when is_ip */
    char host[256]; /* lower-case name or IP text, no brackets */
    uint16_t port;
    char origin[300];          /* pool key "scheme://host:port" */
    char what[HTTPC_MAX_WHAT]; /* "METHOD url" (truncated) for messages */
    char *req;                 /* owned: request head and body */
    size_t req_len;

    /* Progress. */
    enum resolve_state resolve;
    bool is_launching_lookup;    /* inside evdns_getaddrinfo */
    struct httpc_lookup *lookup; /* borrowed: frees itself */
    int dns_result;              /* EVUTIL_EAI_* */
    struct httpc_addr addrs[HTTPC_MAX_ADDRS];
    size_t num_addrs;
    size_t next_addr;
    int last_errno;
    struct httpc_conn *conn; /* owned while attached */
    bool is_reused;          /* conn came from the pool */
    bool has_retried;
    bool is_exchange_started;
    bool is_write_failed;
    bool got_response_byte;
    size_t req_sent; /* bytes of req written */
    struct httpc_dec dec;
    struct event *kick;     /* owned: deferred steps (start, DNS answer) */
    struct event *deadline; /* owned: request timeout */
    bool is_in_cb;
    struct dm_err err; /* the failure being reported */
};

static void call_on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    call_step(arg);
}

static void call_unlink(struct dm_httpc_call *c)
{
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        c->h->calls = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    c->prev = c->next = NULL;
}

/* call_release stops c's timers and abandons its lookup. */
static void call_release(struct dm_httpc_call *c)
{
    event_del(c->deadline);
    event_del(c->kick);
    if (c->lookup != NULL) {
        c->lookup->call = NULL;
        c->lookup = NULL;
    }
}

static void call_free(struct dm_httpc_call *c)
{
    if (c == NULL) {
        return;
    }
    if (c->kick != NULL) {
        event_free(c->kick);
    }
    if (c->deadline != NULL) {
        event_free(c->deadline);
    }
    httpc_dec_cleanup(&c->dec);
    free(c->req);
    free(c);
}

/* call_finish hands the outcome to the callback and frees c. c must hold no
 * connection any more. */
static void call_finish(struct dm_httpc_call *c, struct dm_httpc_resp *resp)
{
    struct dm_httpc *h = c->h;
    call_release(c);
    call_unlink(c);
    if (resp != NULL) {
        DM_LOG_DBG("httpc", "%s: %d, %zu body bytes", c->what, resp->status, resp->body_len);
    } else {
        DM_LOG_DBG("httpc", "%s: %s: %s", c->what, dm_errcode_name(c->err.code), c->err.msg);
    }
    c->is_in_cb = true;
    h->num_dispatching++;
    c->cb(resp, resp != NULL ? NULL : &c->err, c->arg);
    h->num_dispatching--;
    dm_httpc_resp_free(resp);
    call_free(c);
}

static void call_fail(struct dm_httpc_call *c)
{
    conn_free(c->conn, false);
    c->conn = NULL;
    call_finish(c, NULL);
}

static void call_succeed(struct dm_httpc_call *c)
{
    struct httpc_conn *k = c->conn;
    c->conn = NULL;
    /* Reuse only a connection in a known state: whole request written, the
     * response framed by length or chunks, nothing read beyond it. */
    bool is_reusable = c->dec.is_keep_alive && c->req_sent == c->req_len &&
                       evbuffer_get_length(k->in) == 0 &&
                       (k->ssl == NULL || SSL_pending(k->ssl) == 0);
    if (is_reusable) {
        pool_put(c->h, k);
    } else {
        conn_free(k, true);
    }
    call_finish(c, httpc_dec_take(&c->dec));
}

static void call_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dm_httpc_call *c = arg;
    dm_err_set(&c->err, DM_E_TIMEOUT, "%s: no response within %u ms (in %s)", c->what,
               c->h->request_timeout_ms, call_state_names[c->state]);
    call_fail(c);
}

static enum step call_start(struct dm_httpc_call *c)
{
    struct httpc_conn *k = pool_take(c->h, c->origin);
    if (k != NULL) {
        k->call = c;
        c->conn = k;
        c->is_reused = true;
    }
    return STEP_CONTINUE;
}

/* addrs_take copies the addresses of res into c, alternating between the
 * families and starting with the first answered, so a broken family costs
 * one connect timeout at a time (a poor man's RFC 8305). */
static void addrs_take(struct dm_httpc_call *c, const struct evutil_addrinfo *res)
{
    const struct evutil_addrinfo *by_family[2][HTTPC_MAX_ADDRS];
    size_t n[2] = {0, 0};
    for (const struct evutil_addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof(struct sockaddr_storage)) {
            continue;
        }
        int f = ai->ai_family == res->ai_family ? 0 : 1;
        if (n[f] < HTTPC_MAX_ADDRS) {
            by_family[f][n[f]++] = ai;
        }
    }
    c->num_addrs = 0;
    for (size_t i = 0; i < n[0] || i < n[1]; i++) {
        for (int f = 0; f < 2; f++) {
            if (i >= n[f] || c->num_addrs == HTTPC_MAX_ADDRS) {
                continue;
            }
            const struct evutil_addrinfo *ai = by_family[f][i];
            struct httpc_addr *a = &c->addrs[c->num_addrs++];
            memcpy(&a->ss, ai->ai_addr, ai->ai_addrlen);
            a->len = (socklen_t)ai->ai_addrlen;
            if (ai->ai_family == AF_INET) {
                ((struct sockaddr_in *)&a->ss)->sin_port = htons(c->port);
            } else {
                ((struct sockaddr_in6 *)&a->ss)->sin6_port = htons(c->port);
            }
        }
    }
}

/* call_on_resolved takes the evdns answer for a lookup; an abandoned lookup
 * just frees itself. */
static void call_on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct httpc_lookup *l = arg;
    struct dm_httpc_call *c = l->call;
    free(l);
    if (c != NULL) {
        c->lookup = NULL;
        c->dns_result = result;
        c->num_addrs = 0;
        if (result == 0 && res != NULL) {
            addrs_take(c, res);
        }
        c->resolve = RESOLVE_DONE;
        if (!c->is_launching_lookup) {
            event_active(c->kick, EV_TIMEOUT, 0);
        }
    }
    if (res != NULL) {
        evutil_freeaddrinfo(res);
    }
}

static enum step call_resolve(struct dm_httpc_call *c)
{
    if (c->resolve == RESOLVE_IDLE) {
        c->num_addrs = 0;
        c->next_addr = 0;
        c->last_errno = 0;
        if (c->is_ip) {
            struct httpc_addr *a = &c->addrs[0];
            memset(a, 0, sizeof(*a));
            if (c->family == AF_INET) {
                struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
                sin->sin_family = AF_INET;
                sin->sin_port = htons(c->port);
                memcpy(&sin->sin_addr, c->ip, 4);
                a->len = sizeof(*sin);
            } else {
                struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->ss;
                sin6->sin6_family = AF_INET6;
                sin6->sin6_port = htons(c->port);
                memcpy(&sin6->sin6_addr, c->ip, 16);
                a->len = sizeof(*sin6);
            }
            c->num_addrs = 1;
            return STEP_CONTINUE;
        }
        struct httpc_lookup *l = malloc(sizeof(*l));
        if (l == NULL) {
            dm_err_set(&c->err, DM_E_NOMEM, "out of memory");
            return STEP_FAIL;
        }
        l->call = c;
        c->lookup = l;
        c->resolve = RESOLVE_PENDING;
        struct evutil_addrinfo hints;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_protocol = IPPROTO_TCP;
        c->is_launching_lookup = true;
        struct evdns_getaddrinfo_request *r =
            evdns_getaddrinfo(c->h->dns, c->host, NULL, &hints, call_on_resolved, l);
        c->is_launching_lookup = false;
        if (r == NULL && c->lookup == l) {
            /* evdns promises a callback even on failure; don't hang if not. */
            c->lookup = NULL;
            free(l);
            dm_err_set(&c->err, DM_E_IO, "resolve %s: lookup not started", c->host);
            return STEP_FAIL;
        }
    }
    if (c->resolve != RESOLVE_DONE) {
        return STEP_WAIT;
    }
    if (c->dns_result != 0) {
        dm_err_set(&c->err, DM_E_IO, "resolve %s: %s", c->host, evutil_gai_strerror(c->dns_result));
        return STEP_FAIL;
    }
    if (c->num_addrs == 0) {
        dm_err_set(&c->err, DM_E_IO, "resolve %s: no address", c->host);
        return STEP_FAIL;
    }
    return STEP_CONTINUE;
}

/* call_open starts a connection to a. Returns 0 (c->conn set; *out_is_done if
 * already connected), -1 on a socket error (c->last_errno), -2 on NOMEM. */
static int call_open(struct dm_httpc_call *c, const struct httpc_addr *a, bool *out_is_done)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) {
        c->last_errno = errno;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    *out_is_done = false;
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) == 0) {
        *out_is_done = true;
    } else if (errno != EINPROGRESS) {
        c->last_errno = errno;
        close(fd);
        return -1;
    }
    struct httpc_conn *k = conn_new(c->h, c->origin, fd);
    if (k == NULL) {
        dm_err_set(&c->err, DM_E_NOMEM, "out of memory");
        return -2;
    }
    k->call = c;
    c->conn = k;
    set_timer(k->timer, c->h->connect_timeout_ms);
    return 0;
}

static enum step call_connect(struct dm_httpc_call *c)
{
    struct httpc_conn *k = c->conn;
    if (k != NULL) {
        int e = 0;
        if (k->ready & EV_TIMEOUT) {
            e = ETIMEDOUT;
        } else if (k->ready & EV_WRITE) {
            socklen_t len = sizeof(e);
            if (getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0) {
                e = errno;
            }
        } else {
            return STEP_WAIT;
        }
        k->ready = 0;
        if (e == 0) {
            conn_watch_read(k);
            return STEP_CONTINUE;
        }
        c->last_errno = e;
        conn_free(k, false);
        c->conn = NULL;
        DM_LOG_DBG("httpc", "%s: connect to address %zu of %zu: %s", c->what, c->next_addr,
                   c->num_addrs, strerror(e));
    }
    while (c->next_addr < c->num_addrs) {
        bool is_done = false;
        int r = call_open(c, &c->addrs[c->next_addr++], &is_done);
        if (r == -2) {
            return STEP_FAIL;
        }
        if (r < 0) {
            DM_LOG_DBG("httpc", "%s: connect to address %zu of %zu: %s", c->what, c->next_addr,
                       c->num_addrs, strerror(c->last_errno));
            continue;
        }
        if (is_done) {
            conn_watch_read(c->conn);
            return STEP_CONTINUE;
        }
        event_add(c->conn->wev, NULL);
        return STEP_WAIT;
    }
    if (c->last_errno == ETIMEDOUT) {
        dm_err_set(&c->err, DM_E_TIMEOUT, "connect to %s port %u: timed out after %u ms", c->host,
                   c->port, c->h->connect_timeout_ms);
    } else {
        dm_err_set_errno(&c->err, c->last_errno, "connect to %s port %u", c->host, c->port);
    }
    return STEP_FAIL;
}

/* call_tls_setup makes the SSL for k: SNI for names, the name or IP the
 * certificate must match, ALPN http/1.1. */
static int call_tls_setup(struct dm_httpc_call *c, struct httpc_conn *k)
{
    static const uint8_t alpn[] = "\x08http/1.1";
    k->ssl = SSL_new(c->h->ssl_ctx);
    if (k->ssl == NULL || !SSL_set_fd(k->ssl, k->fd)) {
        dm_err_set_tls(&c->err, "TLS setup");
        return -1;
    }
    SSL_set_connect_state(k->ssl);
    X509_VERIFY_PARAM *vp = SSL_get0_param(k->ssl);
    int ok;
    if (c->is_ip) {
        ok = X509_VERIFY_PARAM_set1_ip(vp, c->ip, c->family == AF_INET ? 4 : 16);
    } else {
        ok = SSL_set_tlsext_host_name(k->ssl, c->host) &&
             X509_VERIFY_PARAM_set1_host(vp, c->host, strlen(c->host));
    }
    if (!ok || SSL_set_alpn_protos(k->ssl, alpn, sizeof(alpn) - 1) != 0) {
        dm_err_set_tls(&c->err, "TLS setup for %s", c->host);
        return -1;
    }
    return 0;
}

static enum step call_handshake(struct dm_httpc_call *c)
{
    struct httpc_conn *k = c->conn;
    if (k->ready & EV_TIMEOUT) {
        dm_err_set(&c->err, DM_E_TIMEOUT, "TLS handshake with %s port %u: timed out after %u ms",
                   c->host, c->port, c->h->connect_timeout_ms);
        return STEP_FAIL;
    }
    k->ready = 0;
    if (k->ssl == NULL && call_tls_setup(c, k) != 0) {
        return STEP_FAIL;
    }
    int r = SSL_do_handshake(k->ssl);
    if (r == 1) {
        const uint8_t *proto;
        unsigned proto_len;
        SSL_get0_alpn_selected(k->ssl, &proto, &proto_len);
        if (proto_len > 0 && (proto_len != 8 || memcmp(proto, "http/1.1", 8) != 0)) {
            dm_err_set(&c->err, DM_E_TLS, "TLS with %s port %u: server chose ALPN %.*s", c->host,
                       c->port, (int)proto_len, (const char *)proto);
            return STEP_FAIL;
        }
        return STEP_CONTINUE;
    }
    int e = SSL_get_error(k->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        return STEP_WAIT;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        event_add(k->wev, NULL);
        return STEP_WAIT;
    }
    uint32_t top = ERR_peek_error();
    if (ERR_GET_LIB(top) == ERR_LIB_SSL && ERR_GET_REASON(top) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        long v = SSL_get_verify_result(k->ssl);
        dm_err_set_tls(&c->err, "TLS handshake with %s port %u: certificate verify failed (%s)",
                       c->host, c->port, X509_verify_cert_error_string(v));
    } else if (e == SSL_ERROR_SYSCALL && top == 0) {
        dm_err_set(&c->err, DM_E_TLS, "TLS handshake with %s port %u: connection closed by peer",
                   c->host, c->port);
    } else {
        dm_err_set_tls(&c->err, "TLS handshake with %s port %u failed", c->host, c->port);
    }
    return STEP_FAIL;
}

static enum step call_exchange(struct dm_httpc_call *c)
{
    struct httpc_conn *k = c->conn;
    if (!c->is_exchange_started) {
        c->is_exchange_started = true;
        evtimer_del(k->timer);
        k->ready = 0;
        httpc_dec_init(&c->dec, c->is_head, c->h->max_body);
        c->req_sent = 0;
        c->is_write_failed = false;
        c->got_response_byte = false;
        conn_watch_read(k);
    }
    if (c->req_sent < c->req_len && !c->is_write_failed) {
        if (conn_send(k, c->req, c->req_len, &c->req_sent, &c->err) != 0) {
            /* Keep reading: the server may have answered (413, 400) before
             * closing; the write error is reported only if it did not. */
            c->is_write_failed = true;
        } else if (c->req_sent < c->req_len) {
            event_add(k->wev, NULL);
        }
    }
    /* c->err keeps a write error: conn_recv and dec_feed set it only when
     * they fail, and then their error wins. */
    for (;;) {
        enum conn_rd rd = conn_recv(k, &c->err);
        if (rd == RD_ERROR) {
            return STEP_FAIL;
        }
        if (rd == RD_DATA) {
            c->got_response_byte = true;
        }
        enum dec_eof eof = rd == RD_EOF_CLEAN     ? DEC_EOF_CLEAN
                           : rd == RD_EOF_UNCLEAN ? DEC_EOF_UNCLEAN
                                                  : DEC_EOF_NONE;
        int d = httpc_dec_feed(&c->dec, k->in, eof, &c->err);
        if (d > 0) {
            return STEP_DONE;
        }
        if (d < 0) {
            return STEP_FAIL;
        }
        if (rd != RD_DATA) {
            break;
        }
    }
    if (c->is_write_failed) {
        return STEP_FAIL;
    }
    return STEP_WAIT;
}

/* call_retry_stale decides after a failure whether to resend on a fresh
 * connection: only when a pooled connection died before any response byte
 * (the server most likely closed it while idle), only once, and only for
 * idempotent methods (RFC 9110 §9.2.2, RFC 9112 §9.3.1). Others get
 * DM_HTTPC_E_STALE. */
static bool call_retry_stale(struct dm_httpc_call *c)
{
    if (c->state != CALL_EXCHANGE || !c->is_reused || c->got_response_byte || c->has_retried) {
        return false;
    }
    if (!c->is_idempotent) {
        char why[DM_ERR_MSG_MAX / 2];
        snprintf(why, sizeof(why), "%.*s", (int)sizeof(why) - 1, c->err.msg);
        dm_err_set(&c->err, DM_HTTPC_E_STALE,
                   "%s: reused connection closed before any response byte (%s); not resent",
                   c->what, why);
        return false;
    }
    DM_LOG_DBG("httpc", "%s: reused connection failed (%s), resending on a new one", c->what,
               c->err.msg);
    conn_free(c->conn, false);
    c->conn = NULL;
    c->has_retried = true;
    c->is_reused = false;
    c->is_exchange_started = false;
    httpc_dec_cleanup(&c->dec);
    c->resolve = RESOLVE_IDLE;
    dm_err_clear(&c->err);
    return true;
}

/* call_err_context prefixes an exchange failure with the request. */
static void call_err_context(struct dm_httpc_call *c)
{
    char why[DM_ERR_MSG_MAX / 2];
    snprintf(why, sizeof(why), "%.*s", (int)sizeof(why) - 1, c->err.msg);
    dm_err_set(&c->err, c->err.code, "%s: %s", c->what, why);
}

/* call_step runs c's state machine until it waits or ends; the only place
 * that assigns c->state. May free c. */
static void call_step(struct dm_httpc_call *c)
{
    for (;;) {
        enum call_state next = c->state;
        enum step r = STEP_FAIL;
        switch (c->state) {
        case CALL_START:
            r = call_start(c);
            next = c->conn != NULL ? CALL_EXCHANGE : CALL_RESOLVE;
            break;
        case CALL_RESOLVE:
            r = call_resolve(c);
            next = CALL_CONNECT;
            break;
        case CALL_CONNECT:
            r = call_connect(c);
            next = c->is_https ? CALL_HANDSHAKE : CALL_EXCHANGE;
            break;
        case CALL_HANDSHAKE:
            r = call_handshake(c);
            next = CALL_EXCHANGE;
            break;
        case CALL_EXCHANGE:
            r = call_exchange(c);
            break;
        }
        switch (r) {
        case STEP_CONTINUE:
            c->state = next;
            continue;
        case STEP_WAIT:
            return;
        case STEP_DONE:
            call_succeed(c);
            return;
        case STEP_FAIL:
            if (call_retry_stale(c)) {
                c->state = CALL_RESOLVE;
                continue;
            }
            if (c->state == CALL_EXCHANGE && c->err.code != DM_HTTPC_E_STALE) {
                call_err_context(c);
            }
            call_fail(c);
            return;
        }
    }
}

/* ---- Requests ------------------------------------------------------------ */

/* url_parse fills c's target fields from an absolute http(s) URL and returns
 * the request-target (path and query) in *out_target. */
static int url_parse(struct dm_httpc_call *c, const char **out_target, size_t *out_target_len,
                     const char *url, struct dm_err *err)
{
    size_t len = strnlen(url, DM_HTTPC_MAX_URL + 1);
    if (len > DM_HTTPC_MAX_URL) {
        dm_err_set(err, DM_E_PROTO, "URL longer than %d bytes", DM_HTTPC_MAX_URL);
        return -1;
    }
    const char *a;
    if (strncasecmp(url, "https://", 8) == 0) {
        c->is_https = true;
        c->port = 443;
        a = url + 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        c->port = 80;
        a = url + 7;
    } else {
        dm_err_set(err, DM_E_PROTO, "URL %.64s: scheme must be http or https", url);
        return -1;
    }
    const char *ae = a + strcspn(a, "/?#");
    if (memchr(a, '@', (size_t)(ae - a)) != NULL) {
        dm_err_set(err, DM_E_PROTO, "URL %.64s: userinfo not supported", url);
        return -1;
    }
    const char *hs = a, *he, *ps = NULL;
    bool is_bracket = *a == '[';
    if (is_bracket) {
        const char *rb = memchr(a, ']', (size_t)(ae - a));
        if (rb == NULL || (rb + 1 < ae && rb[1] != ':')) {
            dm_err_set(err, DM_E_PROTO, "URL %.64s: malformed IPv6 literal", url);
            return -1;
        }
        hs = a + 1;
        he = rb;
        ps = rb + 1 < ae ? rb + 2 : NULL;
    } else {
        const char *colon = memchr(a, ':', (size_t)(ae - a));
        he = colon != NULL ? colon : ae;
        ps = colon != NULL ? colon + 1 : NULL;
    }
    size_t hlen = (size_t)(he - hs);
    if (hlen == 0 || hlen >= sizeof(c->host)) {
        dm_err_set(err, DM_E_PROTO, "URL %.64s: missing or overlong host", url);
        return -1;
    }
    if (dm_str_lower(c->host, sizeof(c->host), hs, hlen) != 0) {
        dm_err_set(err, DM_E_PROTO, "URL %.64s: overlong host", url);
        return -1;
    }
    if (is_bracket) {
        if (inet_pton(AF_INET6, c->host, c->ip) != 1) {
            dm_err_set(err, DM_E_PROTO, "URL %.64s: invalid IPv6 literal", url);
            return -1;
        }
        c->is_ip = true;
        c->family = AF_INET6;
    } else if (inet_pton(AF_INET, c->host, c->ip) == 1) {
        c->is_ip = true;
        c->family = AF_INET;
    } else {
        for (const char *p = c->host; *p != '\0'; p++) {
            if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' ||
                  *p == '_')) {
                dm_err_set(err, DM_E_PROTO, "URL %.64s: invalid host name", url);
                return -1;
            }
        }
    }
    if (ps != NULL) {
        unsigned long port = 0;
        if (ps == ae || ae - ps > 5) {
            dm_err_set(err, DM_E_PROTO, "URL %.64s: invalid port", url);
            return -1;
        }
        for (const char *p = ps; p < ae; p++) {
            if (*p < '0' || *p > '9') {
                dm_err_set(err, DM_E_PROTO, "URL %.64s: invalid port", url);
                return -1;
            }
            port = port * 10 + (unsigned long)(*p - '0');
        }
        if (port == 0 || port > 65535) {
            dm_err_set(err, DM_E_PROTO, "URL %.64s: invalid port", url);
            return -1;
        }
        c->port = (uint16_t)port;
    }
    const char *t = ae, *te = t + strcspn(t, "#");
    for (const char *p = t; p < te; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
            dm_err_set(err, DM_E_PROTO, "URL %.64s: unencoded character in path or query", url);
            return -1;
        }
    }
    *out_target = t;
    *out_target_len = (size_t)(te - t);
    snprintf(c->origin, sizeof(c->origin), "%s://%s%s%s:%u", c->is_https ? "https" : "http",
             c->family == AF_INET6 ? "[" : "", c->host, c->family == AF_INET6 ? "]" : "", c->port);
    return 0;
}

static bool header_name_ok(const char *s)
{
    size_t i = 0;
    for (; s[i] != '\0'; i++) {
        if (!httpc_is_tchar((unsigned char)s[i]) || i > 255) {
            return false;
        }
    }
    return i > 0;
}

static bool header_value_ok(const char *s)
{
    size_t i = 0;
    for (; s[i] != '\0'; i++) {
        if (!httpc_is_field_char((unsigned char)s[i]) || i >= HTTPC_MAX_FIELD_VALUE) {
            return false;
        }
    }
    return true;
}

/* Fields httpc writes itself or whose semantics it does not implement. */
static bool header_is_reserved(const char *name)
{
    static const char *const reserved[] = {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "accept-encoding",
        "proxy-connection",
    };
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
        if (dm_str_ieq_lit(name, strlen(name), reserved[i])) {
            return true;
        }
    }
    return false;
}

/* req_build validates req and writes the request bytes to c->req. */
static int req_build(struct dm_httpc_call *c, const struct dm_httpc_req *req, const char *target,
                     size_t target_len, struct dm_err *err)
{
    const char *method = req->method != NULL ? req->method : "GET";
    size_t mlen = strlen(method);
    if (mlen == 0 || mlen > HTTPC_MAX_METHOD || !header_name_ok(method)) {
        dm_err_set(err, DM_E_PROTO, "invalid method");
        return -1;
    }
    bool has_ua = false;
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct dm_httpc_header *f = &req->headers[i];
        if (f->name == NULL || f->value == NULL || !header_name_ok(f->name) ||
            !header_value_ok(f->value)) {
            dm_err_set(err, DM_E_PROTO, "invalid request header field %zu", i);
            return -1;
        }
        if (header_is_reserved(f->name)) {
            dm_err_set(err, DM_E_PROTO, "request header %s is set by httpc", f->name);
            return -1;
        }
        has_ua = has_ua || dm_str_ieq_lit(f->name, strlen(f->name), "user-agent");
    }
    if (req->body_len > 0 && req->body == NULL) {
        dm_err_set(err, DM_E_PROTO, "request body_len without body");
        return -1;
    }
    static const char *const idempotent[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"};
    for (size_t i = 0; i < sizeof(idempotent) / sizeof(idempotent[0]); i++) {
        c->is_idempotent = c->is_idempotent || strcmp(method, idempotent[i]) == 0;
    }
    c->is_head = strcmp(method, "HEAD") == 0;
    bool is_v6 = c->family == AF_INET6;
    bool is_default_port = c->port == (c->is_https ? 443 : 80);

    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    /* origin-form request-target (RFC 9112 §3.2.1): "/" when the path is empty */
    int r = evbuffer_add_printf(b, "%s %s%.*s HTTP/1.1\r\nHost: %s%s%s", method,
                                target_len == 0 || target[0] == '?' ? "/" : "", (int)target_len,
                                target, is_v6 ? "[" : "", c->host, is_v6 ? "]" : "");
    if (r >= 0 && !is_default_port) {
        r = evbuffer_add_printf(b, ":%u", c->port);
    }
    if (r >= 0) {
        r = evbuffer_add_printf(b, "\r\n");
    }
    if (r >= 0 && !has_ua) {
        r = evbuffer_add_printf(b, "User-Agent: %s\r\n", c->h->user_agent);
    }
    if (r >= 0) {
        r = evbuffer_add_printf(b, "Accept-Encoding: identity\r\n");
    }
    for (size_t i = 0; r >= 0 && i < req->num_headers; i++) {
        r = evbuffer_add_printf(b, "%s: %s\r\n", req->headers[i].name, req->headers[i].value);
    }
    /* RFC 9110 §8.6: a POST, PUT or PATCH says its length even when zero. */
    if (r >= 0 && (req->body_len > 0 || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
                   strcmp(method, "PATCH") == 0)) {
        r = evbuffer_add_printf(b, "Content-Length: %zu\r\n", req->body_len);
    }
    if (r >= 0) {
        r = evbuffer_add(b, "\r\n", 2);
    }
    if (r >= 0 && req->body_len > 0) {
        r = evbuffer_add(b, req->body, req->body_len);
    }
    c->req_len = evbuffer_get_length(b);
    c->req = r >= 0 ? malloc(c->req_len) : NULL;
    if (c->req == NULL) {
        evbuffer_free(b);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    evbuffer_remove(b, c->req, c->req_len);
    evbuffer_free(b);
    snprintf(c->what, sizeof(c->what), "%.32s %.200s%s%.*s", method, c->origin,
             target_len == 0 || target[0] == '?' ? "/" : "", (int)target_len, target);
    return 0;
}

struct dm_httpc_call *dm_httpc_request_start(struct dm_httpc *h, const struct dm_httpc_req *req,
                                             dm_httpc_done_cb cb, void *arg, struct dm_err *err)
{
    assert(h != NULL && req != NULL && cb != NULL);
    struct dm_httpc_call *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    c->h = h;
    c->cb = cb;
    c->arg = arg;
    const char *target = NULL;
    size_t target_len = 0;
    if (req->url == NULL) {
        dm_err_set(err, DM_E_PROTO, "no URL");
        goto fail;
    }
    if (url_parse(c, &target, &target_len, req->url, err) != 0 ||
        req_build(c, req, target, target_len, err) != 0) {
        goto fail;
    }
    c->kick = event_new(h->base, -1, 0, call_on_kick, c);
    c->deadline = evtimer_new(h->base, call_on_deadline, c);
    if (c->kick == NULL || c->deadline == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto fail;
    }
    httpc_dec_init(&c->dec, c->is_head, h->max_body);
    set_timer(c->deadline, h->request_timeout_ms);
    /* The first step runs from the loop, so cb never runs inside this call. */
    event_active(c->kick, EV_TIMEOUT, 0);
    c->next = h->calls;
    if (h->calls != NULL) {
        h->calls->prev = c;
    }
    h->calls = c;
    return c;
fail:
    call_free(c);
    return NULL;
}

void dm_httpc_request_cancel(struct dm_httpc_call *c)
{
    if (c == NULL || c->is_in_cb) {
        return;
    }
    call_release(c);
    conn_free(c->conn, false);
    c->conn = NULL;
    call_unlink(c);
    call_free(c);
}

struct dm_httpc *dm_httpc_new(struct event_base *base, struct evdns_base *dns,
                              const struct dm_httpc_opts *o, struct dm_err *err)
{
    static const struct dm_httpc_opts defaults;
    assert(base != NULL);
    if (o == NULL) {
        o = &defaults;
    }
    struct dm_httpc *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    h->base = base;
    h->connect_timeout_ms =
        o->connect_timeout_ms != 0 ? o->connect_timeout_ms : DM_HTTPC_DEFAULT_CONNECT_TIMEOUT_MS;
    h->request_timeout_ms =
        o->request_timeout_ms != 0 ? o->request_timeout_ms : DM_HTTPC_DEFAULT_REQUEST_TIMEOUT_MS;
    h->idle_timeout_ms =
        o->idle_timeout_ms != 0 ? o->idle_timeout_ms : DM_HTTPC_DEFAULT_IDLE_TIMEOUT_MS;
    h->max_idle_per_origin =
        o->max_idle_per_origin != 0 ? o->max_idle_per_origin : DM_HTTPC_DEFAULT_MAX_IDLE_PER_ORIGIN;
    h->max_body = o->max_body != 0 ? o->max_body : DM_HTTPC_DEFAULT_MAX_BODY;
    if (h->max_body > SIZE_MAX / 4) {
        h->max_body = SIZE_MAX / 4; /* keeps body capacity arithmetic far from overflow */
    }
    const char *ua = o->user_agent != NULL ? o->user_agent : DM_HTTPC_DEFAULT_USER_AGENT;
    if (!header_value_ok(ua)) {
        dm_err_set(err, DM_E_CONFIG, "invalid User-Agent");
        goto fail;
    }
    h->user_agent = strdup(ua);
    if (h->user_agent == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto fail;
    }

    const char *ca_file = o->ca_file != NULL ? o->ca_file : DM_HTTPC_DEFAULT_CA_FILE;
    h->ssl_ctx = SSL_CTX_new(TLS_method());
    if (h->ssl_ctx == NULL || !SSL_CTX_set_min_proto_version(h->ssl_ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(h->ssl_ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_strict_cipher_list(h->ssl_ctx, HTTPC_TLS12_CIPHERS)) {
        dm_err_set_tls(err, "client TLS context");
        goto fail;
    }
    SSL_CTX_set_verify(h->ssl_ctx, SSL_VERIFY_PEER, NULL);
    if (!SSL_CTX_load_verify_locations(h->ssl_ctx, ca_file, NULL)) {
        dm_err_set_tls(err, "load CA bundle %s", ca_file);
        goto fail;
    }

    if (dns != NULL) {
        h->dns = dns;
    } else {
        h->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                          EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (h->dns == NULL) {
            dm_err_set(err, DM_E_IO, "cannot set up the DNS resolver");
            goto fail;
        }
        h->is_dns_owned = true;
    }
    return h;
fail:
    dm_httpc_free(h);
    return NULL;
}

void dm_httpc_free(struct dm_httpc *h)
{
    if (h == NULL) {
        return;
    }
    assert(h->num_dispatching == 0 && "dm_httpc_free from a callback");
    while (h->calls != NULL) {
        dm_httpc_request_cancel(h->calls);
    }
    while (h->idle != NULL) {
        struct httpc_conn *k = h->idle;
        pool_remove(h, k);
        conn_free(k, true);
    }
    if (h->is_dns_owned) {
        /* fail_requests = 1: abandoned lookups get a deferred callback that
         * frees them and does not touch the freed base. */
        evdns_base_free(h->dns, 1);
    }
    SSL_CTX_free(h->ssl_ctx);
    free(h->user_agent);
    free(h);
}

size_t dm_httpc_num_idle(const struct dm_httpc *h)
{
    return h->num_idle;
}
