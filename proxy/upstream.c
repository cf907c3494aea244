/* Backend connections: non-blocking connect (IP, unix socket, or a host name
 * resolved with evdns), the request written from a bounded buffer, the
 * response head parsed and its body moved to the client without copying,
 * keep-alive pools per worker and backend address, and one transparent retry
 * when a pooled connection turns out to be stale. Timeouts: connect, response
 * head, and body progress. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "proxy/core/log.h"
#include "proxy/core/str.h"
#include "proxy/core/time.h"
#include "proxy/dns_cache.h"
#include "proxy/proxy_int.h"
#include "proxy/upstream_tr.h"

/* Idle backend connections kept per backend and worker, and how long. An
 * HTTP/2 client multiplexes many streams and each one needs a backend
 * connection of its own while in flight, so the pool must hold what a few
 * busy HTTP/2 connections use at once (100 streams each by default);
 * otherwise backend connections are opened and closed all the time. */
#define UP_POOL_MAX    1024
#define UP_IDLE_MS     30000
#define UP_READ_BUDGET (256 * 1024)
#define UP_READ_CHUNK  (64 * 1024)
/* First read of a wakeup after a small one: most responses are small, and a
 * 64 KiB buffer per read would sit, mostly empty, in every stream's pending
 * output until the client takes it (hundreds at once over HTTP/2). */
#define UP_SMALL_CHUNK 4096

enum up_state {
    UP_RESOLVING = 0,
    UP_CONNECTING,
    UP_HANDSHAKE, /* backend TLS (upstream_tls.c) */
    UP_WAIT_HEAD, /* request going out, response head expected */
    UP_BODY,      /* response body flowing to the client */
    UP_TUNNEL,    /* after 101 */
    UP_IDLE,      /* parked in the pool */
    UP_QUEUED,    /* waiting for a backend slot (max_connections); no socket yet */
};

/* A queued request re-checks for a free slot this often besides being woken
 * by slots freed on its own worker (others' are not signalled). */
#define UP_QUEUE_POLL_MS 100

struct dm_upstream_pool {
    char *key;          /* owned: backend address text */
    struct dm_up_tr tr; /* how to reach it: TLS, HTTP/2 (upstream_tr.h) */
    struct dm_upstream_conn *idle;
    int num_idle;
    struct dm_upstream_pool *next;
};

struct dm_upstream_conn {
    struct dm_worker *w;           /* borrowed */
    struct dm_stream *s;           /* borrowed: request being served, NULL when idle */
    struct dm_upstream_pool *pool; /* borrowed */
    int fd;
    SSL *ssl;                  /* owned: backend TLS (upstream_tls.c), NULL for cleartext */
    struct dm_uph2_stream *h2; /* owned: the HTTP/2 stream carrying this exchange, or NULL */
    enum up_state state;
    struct event rev, wev, timer;
    struct evbuffer *in, *out;    /* owned */
    struct evbuffer *retry_head;  /* owned: copy of the head while a stale-retry is possible */
    struct dm_dns_wait *dns_wait; /* a backend name being resolved (dns_cache.c) */
    unsigned dns_gen;             /* the name's address generation at connect */
    uint16_t port;
    struct dm_http1_parser parser;
    struct dm_http1_msg msg;
    struct dm_http1_chunked chunked;
    uint64_t body_left;
    bool events_added;
    bool reused;
    bool got_bytes;
    bool req_done;
    bool paused;
    bool eof;
    bool closed;
    bool big_reads;            /* the last wakeup read at least UP_SMALL_CHUNK bytes */
    bool response_timer_armed; /* timeouts.response runs from the end of the request */
    bool shut_wr;              /* tunnel: FIN to the backend once out is written */
    int pending_error;         /* status to report from the deferred timer, 0 = none */
    const char *pending_why;
    int refs;
    struct dm_upstream_conn *pool_next, *pool_prev;
    struct dm_backend *be; /* borrowed from the stream's gen: the slot this exchange holds */
    bool queued;           /* on the worker's queue */
    uint64_t queue_deadline_us;
    struct dm_upstream_conn *q_next, *q_prev;
};

static void up_on_read(evutil_socket_t fd, short what, void *arg);
static void up_on_write(evutil_socket_t fd, short what, void *arg);
static void up_on_timer(evutil_socket_t fd, short what, void *arg);
static void up_tls_step(struct dm_upstream_conn *u);
static void up_close(struct dm_upstream_conn *u);
static void up_process(struct dm_upstream_conn *u);
static void up_arm_wait(struct dm_upstream_conn *u);
static void queue_remove(struct dm_upstream_conn *u);
static void queue_schedule(struct dm_worker *w);
static bool up_retry_other(struct dm_upstream_conn *u);

/* up_slot_release gives back the backend slot the exchange held and lets a
 * queued request of this worker have it. */
static void up_slot_release(struct dm_upstream_conn *u)
{
    if (u->be != NULL) {
        dm_pool_release(u->be);
        u->be = NULL;
        queue_schedule(u->w);
        /* The slot may be the one a request queued on another worker waits
         * for: tell them now rather than at their next poll. */
        dm_workers_wake_queues(u->w);
    }
}
static void up_hold(struct dm_upstream_conn *u)
{
    u->refs++;
}

static void up_release(struct dm_upstream_conn *u)
{
    if (--u->refs == 0 && u->closed) {
        free(u);
    }
}

static void up_set_timer(struct dm_upstream_conn *u, uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(&u->timer, &tv);
}

/* pool_get finds or makes the pool of addr reached over transport t (NULL:
 * plain HTTP/1.1): pools key on address and transport. */
static struct dm_upstream_pool *pool_get(struct dm_worker *w, const struct cfg_addr *addr,
                                         const struct cfg_up_transport *t)
{
    const char *key = addr->text;
    for (struct dm_upstream_pool *p = w->pools; p != NULL; p = p->next) {
        if (strcmp(p->key, key) == 0 && dm_up_tr_matches(&p->tr, t)) {
            if (t != NULL && w->gen != NULL && w->gen->cfg != NULL && t->ssl_ctx != p->tr.ssl_ctx) {
                dm_up_tr_refresh(&p->tr, t, w->gen->cfg);
            }
            return p;
        }
    }
    struct dm_upstream_pool *p = calloc(1, sizeof(*p));
    if (p == NULL || (p->key = strdup(key)) == NULL || dm_up_tr_init(&p->tr, addr, t) != 0) {
        if (p != NULL) {
            free(p->key);
            dm_up_tr_cleanup(&p->tr);
        }
        free(p);
        return NULL;
    }
    p->next = w->pools;
    w->pools = p;
    return p;
}

static void pool_remove(struct dm_upstream_conn *u)
{
    struct dm_upstream_pool *p = u->pool;
    if (u->pool_prev != NULL) {
        u->pool_prev->pool_next = u->pool_next;
    } else {
        p->idle = u->pool_next;
    }
    if (u->pool_next != NULL) {
        u->pool_next->pool_prev = u->pool_prev;
    }
    u->pool_next = u->pool_prev = NULL;
    p->num_idle--;
}

/* up_fail reports an error to the client (deferred if asked from inside a
 * start call, so callbacks never run inside dm_upstream_start). */
static void up_report(struct dm_upstream_conn *u, int status, const char *why)
{
    struct dm_stream *s = u->s;
    if (s == NULL) {
        up_close(u);
        return;
    }
    dm_stream_on_upstream_error(s, status, why);
}

/* up_count_failure feeds passive health and the metrics. */
static void up_count_failure(struct dm_upstream_conn *u, const char *why)
{
    if (u->be != NULL && u->s != NULL && u->s->pool != NULL) {
        dm_backend_on_failure(u->be, &u->s->site->upstream.passive, u->s->pool->num, why);
    }
}

/* up_fail: the exchange failed (a bad or cut response, a timeout); only
 * failures passive health is about are counted by the callers. */
static void up_fail(struct dm_upstream_conn *u, int status, const char *why)
{
    up_report(u, status, why);
}

/* up_fail_retry: the backend failed before any response byte; another
 * backend may take the request (upstream.retries). */
static void up_fail_retry(struct dm_upstream_conn *u, int status, const char *why)
{
    up_count_failure(u, why);
    if (!up_retry_other(u)) {
        up_report(u, status, why);
    }
}

static void up_defer_fail(struct dm_upstream_conn *u, int status, const char *why)
{
    u->pending_error = status;
    u->pending_why = why;
    event_active(&u->timer, EV_TIMEOUT, 0);
}

static struct dm_upstream_conn *up_new(struct dm_worker *w, struct dm_upstream_pool *pool)
{
    struct dm_upstream_conn *u = calloc(1, sizeof(*u));
    if (u == NULL) {
        return NULL;
    }
    u->in = evbuffer_new();
    u->out = evbuffer_new();
    if (u->in == NULL || u->out == NULL) {
        if (u->in) {
            evbuffer_free(u->in);
        }
        if (u->out) {
            evbuffer_free(u->out);
        }
        free(u);
        return NULL;
    }
    u->w = w;
    u->pool = pool;
    u->fd = -1;
    u->refs = 1;
    evtimer_assign(&u->timer, w->base, up_on_timer, u);
    return u;
}

static void up_reset_exchange(struct dm_upstream_conn *u)
{
    dm_http1_parser_init(&u->parser);
    memset(&u->msg, 0, sizeof(u->msg));
    u->msg.headers = u->w->resp_fields;
    u->got_bytes = false;
    u->req_done = false;
    u->paused = false;
    u->body_left = 0;
    u->response_timer_armed = false;
}

static void up_connect_addr(struct dm_upstream_conn *u, const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        up_defer_fail(u, 502, "socket failed");
        return;
    }
    if (sa->sa_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    u->fd = fd;
    event_assign(&u->rev, u->w->base, fd, EV_READ | EV_PERSIST, up_on_read, u);
    event_assign(&u->wev, u->w->base, fd, EV_WRITE | EV_PERSIST, up_on_write, u);
    u->events_added = true;
    if (connect(fd, sa, len) != 0 && errno != EINPROGRESS) {
        DM_LOG_DBG("upstream", "connect %s: %s", u->pool->key, strerror(errno));
        up_defer_fail(u, 502, "connect failed");
        return;
    }
    u->state = UP_CONNECTING;
    event_add(&u->wev, NULL);
    up_set_timer(u, u->s->c->gen->cfg->timeouts.connect_ms);
}

static void up_on_dns(int err, const struct sockaddr *sa, socklen_t len, unsigned gen, void *arg)
{
    struct dm_upstream_conn *u = arg;
    u->dns_wait = NULL;
    u->dns_gen = gen;
    if (err != 0) {
        DM_LOG_DBG("upstream", "resolve %s failed", u->pool->key);
        up_defer_fail(u, 502, "name resolution failed");
        return;
    }
    up_connect_addr(u, sa, len);
}

static void up_attach(struct dm_upstream_conn *u, struct dm_stream *s, struct evbuffer *head)
{
    u->s = s;
    s->up = u;
    up_reset_exchange(u);
    evbuffer_add_buffer(u->out, head);
}

/* ---- HTTP/2 backends (upstream_h2.c): the exchange runs on a stream ---- */

/* up_open_h2 runs u's exchange (u has its stream and pool) as a stream of
 * a shared HTTP/2 connection to addr. */
static void up_open_h2(struct dm_upstream_conn *u, const struct cfg_addr *addr)
{
    u->state = UP_WAIT_HEAD;
    u->h2 = dm_uph2_open(u->w, &u->pool->tr, addr, u, u->in, u->out,
                         u->s->c->gen->cfg->timeouts.connect_ms);
    if (u->h2 == NULL) {
        up_defer_fail(u, 502, "cannot reach the HTTP/2 backend");
        return;
    }
    up_arm_wait(u);
}

void dm_upstream_h2_on_input(struct dm_upstream_conn *u)
{
    up_hold(u);
    u->got_bytes = true;
    up_process(u);
    up_release(u);
}

void dm_upstream_h2_on_error(struct dm_upstream_conn *u, const char *why)
{
    up_hold(u);
    if (u->state == UP_WAIT_HEAD && evbuffer_get_length(u->in) == 0) {
        /* Refused, reset or unreachable before any response byte: another
         * backend may take the request, as for HTTP/1.1 backends. */
        up_fail_retry(u, 502, why);
    } else if (!u->closed) {
        DM_LOG_DBG("upstream", "%s: %s", u->pool->key, why);
        u->eof = true; /* the response is cut short: upstream.c aborts it */
        up_process(u);
    }
    up_release(u);
}

void dm_upstream_h2_on_writable(struct dm_upstream_conn *u)
{
    if (!u->closed && u->s != NULL && evbuffer_get_length(u->out) < DM_BUF_LOW) {
        dm_stream_on_upstream_writable(u->s);
    }
}

/* up_connect_start opens a new connection of u to addr (u has its stream
 * and pool), or a stream on an HTTP/2 backend's connection. */
static void up_connect_start(struct dm_upstream_conn *u, const struct cfg_addr *addr)
{
    struct dm_worker *w = u->w;
    if (u->pool->tr.protocol != CFG_UP_HTTP1) {
        up_open_h2(u, addr);
        return;
    }
    switch (addr->kind) {
    case CFG_ADDR_IP:
    case CFG_ADDR_UNIX:
        up_connect_addr(u, (const struct sockaddr *)&addr->ss, addr->ss_len);
        break;
    case CFG_ADDR_HOSTNAME: {
        u->state = UP_RESOLVING;
        up_set_timer(u, u->s->c->gen->cfg->timeouts.connect_ms);
        up_hold(u);
        /* Calls back at once when cached (dns_cache.c); that path only defers. */
        u->dns_wait = dm_dns_resolve(w, addr->host, addr->port, up_on_dns, u);
        up_release(u);
        break;
    }
    }
}

/* up_keep_head keeps a copy of a body-less request's head while it may be
 * sent again: on a fresh connection when a stale pooled one failed, or on
 * another backend when this one closes before answering. */
static void up_keep_head(struct dm_upstream_conn *u, struct dm_stream *s, struct evbuffer *head_buf)
{
    bool may_move = s->pool != NULL && s->pool->num > 1 && s->site->upstream.retries > 0;
    if (s->msg.body != DM_HTTP1_BODY_NONE || (!u->reused && !may_move)) {
        return;
    }
    u->retry_head = evbuffer_new();
    if (u->retry_head != NULL) {
        size_t n = evbuffer_get_length(head_buf);
        evbuffer_add(u->retry_head, evbuffer_pullup(head_buf, (ssize_t)n), n);
    }
}

/* up_take_slot moves the slot of the stream's chosen backend to u. */
static void up_take_slot(struct dm_upstream_conn *u, struct dm_stream *s)
{
    if (s->pool != NULL && s->be_idx >= 0) {
        u->be = s->pool->be[s->be_idx];
    }
}

static void queue_add(struct dm_upstream_conn *u, uint32_t timeout_ms);

int dm_upstream_start(struct dm_stream *s, const struct cfg_addr *addr, struct evbuffer *head_buf)
{
    struct dm_worker *w = s->c->w;
    if (addr == NULL) {
        /* Every backend is at its connection limit: wait for a slot. */
        struct dm_upstream_conn *q = up_new(w, NULL);
        if (q == NULL) {
            return -1;
        }
        up_attach(q, s, head_buf);
        q->state = UP_QUEUED;
        queue_add(q, s->site->upstream.queue_timeout_ms);
        return 0;
    }
    struct dm_upstream_pool *pool = pool_get(w, addr, s->site ? s->site->transport : NULL);
    struct dm_upstream_conn *u = pool != NULL ? pool->idle : NULL;
    /* DNS moved the name elsewhere: connections to the old addresses go. */
    while (u != NULL && addr->kind == CFG_ADDR_HOSTNAME &&
           u->dns_gen != dm_dns_generation(w, addr->host)) {
        up_close(u);
        u = pool->idle;
    }
    if (u != NULL) {
        pool_remove(u);
        evtimer_del(&u->timer);
        u->reused = true;
        /* A pooled connection may have been closed by the backend a moment
         * ago; keep the head so a request without a body can be retried. */
        up_keep_head(u, s, head_buf);
        up_attach(u, s, head_buf);
        up_take_slot(u, s);
        u->state = UP_WAIT_HEAD;
        /* No write event: the caller's dm_upstream_kick writes at once and
         * asks for writability only if the socket is full. */
        up_arm_wait(u);
        return 0;
    }
    u = pool != NULL ? up_new(w, pool) : NULL;
    if (u == NULL) {
        if (s->pool != NULL && s->be_idx >= 0) {
            dm_pool_release(s->pool->be[s->be_idx]);
        }
        return -1;
    }
    up_keep_head(u, s, head_buf);
    up_attach(u, s, head_buf);
    up_take_slot(u, s);
    up_connect_start(u, addr);
    return 0;
}

/* ---- the queue of requests waiting for a backend slot (per worker) ---- */

static void queue_on_wake(evutil_socket_t fd, short what, void *arg);

static void queue_add(struct dm_upstream_conn *u, uint32_t timeout_ms)
{
    struct dm_worker *w = u->w;
    if (w->queue_ev == NULL) {
        w->queue_ev = evtimer_new(w->base, queue_on_wake, w);
    }
    u->queued = true;
    /* Published, then the queue runs once more (queue_schedule below): a
     * slot freed between the failed pick and now is seen by that run, or
     * its release sees this count and wakes us (the 100 ms poll backs up
     * the memory-order corner cases of weaker CPUs). */
    atomic_fetch_add(&w->num_queued, 1);
    u->queue_deadline_us = dm_time_mono_us() + (uint64_t)timeout_ms * 1000;
    u->q_next = NULL;
    u->q_prev = w->queue_tail;
    if (w->queue_tail != NULL) {
        w->queue_tail->q_next = u;
    } else {
        w->queue_head = u;
    }
    w->queue_tail = u;
    up_set_timer(u, timeout_ms < UP_QUEUE_POLL_MS ? timeout_ms : UP_QUEUE_POLL_MS);
    queue_schedule(w);
    DM_LOG_DBG("upstream", "c=%llu queued: every backend of %s is at max_connections",
               (unsigned long long)u->s->c->id, u->s->host);
}

static void queue_remove(struct dm_upstream_conn *u)
{
    struct dm_worker *w = u->w;
    if (!u->queued) {
        return;
    }
    u->queued = false;
    atomic_fetch_sub_explicit(&w->num_queued, 1, memory_order_relaxed);
    if (u->q_prev != NULL) {
        u->q_prev->q_next = u->q_next;
    } else {
        w->queue_head = u->q_next;
    }
    if (u->q_next != NULL) {
        u->q_next->q_prev = u->q_prev;
    } else {
        w->queue_tail = u->q_prev;
    }
    u->q_next = u->q_prev = NULL;
}

bool dm_upstream_is_queued(const struct dm_upstream_conn *u)
{
    return u->queued;
}

static void queue_schedule(struct dm_worker *w)
{
    if (w->queue_head != NULL && w->queue_ev != NULL) {
        event_active(w->queue_ev, EV_TIMEOUT, 0);
    }
}

void dm_upstream_queue_kick(struct dm_worker *w)
{
    queue_schedule(w);
}

/* queue_try starts the queued u on a backend with a free slot. Returns
 * false if there is none (u stays queued). */
static bool queue_try(struct dm_upstream_conn *u)
{
    struct dm_stream *st = u->s;
    int i = dm_request_pick(st);
    if (i == DM_PICK_FULL) {
        return false;
    }
    queue_remove(u);
    evtimer_del(&u->timer);
    up_hold(u);
    if (i == DM_PICK_DOWN) {
        st->error_headers = "Retry-After: 1\r\n";
        up_report(u, 503, "every backend of the site is down");
    } else if ((u->pool = pool_get(u->w, &st->site->to[i], st->site->transport)) == NULL) {
        dm_pool_release(st->pool->be[i]);
        up_report(u, 502, "out of memory");
    } else {
        up_take_slot(u, st);
        u->state = UP_RESOLVING;
        up_connect_start(u, &st->site->to[i]);
        if (u->req_done) {
            up_arm_wait(u);
        }
    }
    up_release(u);
    return true;
}

static void queue_run(struct dm_worker *w)
{
    bool again = true;
    while (again) {
        again = false;
        for (struct dm_upstream_conn *u = w->queue_head; u != NULL; u = u->q_next) {
            if (queue_try(u)) {
                again = true; /* the list may have changed: start over */
                break;
            }
        }
    }
}

static void queue_on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    queue_run(arg);
}

/* queue_on_timer: a queued request's poll or deadline. */
static void queue_on_timer(struct dm_upstream_conn *u)
{
    /* The whole queue in order: a slot freed a moment ago belongs to the
     * oldest waiter, not to the one whose poll came first. */
    queue_run(u->w);
    if (u->closed || !u->queued) {
        return;
    }
    uint64_t now = dm_time_mono_us();
    if (now >= u->queue_deadline_us) {
        queue_remove(u);
        u->s->error_headers = "Retry-After: 1\r\n";
        up_report(u, 503, "no backend connection slot within upstream.queue_timeout");
        return;
    }
    uint64_t left_ms = (u->queue_deadline_us - now + 999) / 1000;
    up_set_timer(u, left_ms < UP_QUEUE_POLL_MS ? (uint32_t)left_ms : UP_QUEUE_POLL_MS);
}

struct evbuffer *dm_upstream_output(struct dm_upstream_conn *u)
{
    return u->closed ? NULL : u->out;
}

size_t dm_upstream_output_len(struct dm_upstream_conn *u)
{
    return evbuffer_get_length(u->out);
}

struct evbuffer *dm_upstream_input(struct dm_upstream_conn *u)
{
    return u->in;
}

static void up_flush(struct dm_upstream_conn *u)
{
    if (u->h2 != NULL) {
        dm_uph2_kick(u->h2);
        up_arm_wait(u);
        return;
    }
    if (u->fd < 0 || u->state == UP_CONNECTING || u->state == UP_RESOLVING ||
        u->state == UP_HANDSHAKE) {
        return;
    }
    while (evbuffer_get_length(u->out) > 0) {
        int n = u->ssl != NULL ? dm_uptls_write(u->ssl, u->out) : evbuffer_write(u->out, u->fd);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                event_add(&u->wev, NULL);
                up_arm_wait(u);
                return;
            }
            /* The backend reset while we wrote; a response may still be
             * readable (an early error answer), so let the read side decide. */
            event_del(&u->wev);
            event_active(&u->rev, EV_READ, 0);
            return;
        }
    }
    event_del(&u->wev);
    if (u->shut_wr) {
        shutdown(u->fd, SHUT_WR); /* dm_upstream_shutdown_write */
    }
    up_arm_wait(u);
}

void dm_upstream_kick(struct dm_upstream_conn *u)
{
    if (u->closed) {
        return;
    }
    up_flush(u);
    if (u->s != NULL && evbuffer_get_length(u->out) > DM_BUF_HIGH) {
        dm_stream_on_upstream_full(u->s);
    }
}

/* up_arm_wait sets the timer for what the exchange waits on now: the
 * backend taking the request body (timeouts.body, reset on progress), or,
 * once the whole request is out, the response head (timeouts.response). */
static void up_arm_wait(struct dm_upstream_conn *u)
{
    if (u->s == NULL || u->state != UP_WAIT_HEAD) {
        return;
    }
    const struct cfg_timeouts *t = &u->s->c->gen->cfg->timeouts;
    if (u->req_done && evbuffer_get_length(u->out) == 0) {
        if (!u->response_timer_armed) {
            u->response_timer_armed = true;
            up_set_timer(u, t->response_ms);
        }
    } else {
        up_set_timer(u, t->body_ms);
    }
}

void dm_upstream_request_done(struct dm_upstream_conn *u)
{
    u->req_done = true;
    up_arm_wait(u);
}

void dm_upstream_shutdown_write(struct dm_upstream_conn *u)
{
    if (!u->closed && !u->shut_wr) {
        u->shut_wr = true;
        up_flush(u);
    }
}

void dm_upstream_pause(struct dm_upstream_conn *u)
{
    if (!u->paused && !u->closed) {
        u->paused = true;
        if (u->h2 != NULL) {
            dm_uph2_pause(u->h2, true);
        } else {
            event_del(&u->rev);
        }
        /* The client is the slow side now; its own timer watches it. */
        evtimer_del(&u->timer);
    }
}

void dm_upstream_resume(struct dm_upstream_conn *u)
{
    if (u->paused && !u->closed) {
        u->paused = false;
        if (u->h2 != NULL) {
            dm_uph2_pause(u->h2, false);
        } else {
            event_add(&u->rev, NULL);
        }
        if (u->state == UP_BODY && u->s != NULL) {
            up_set_timer(u, u->s->c->gen->cfg->timeouts.body_ms);
        }
        if (evbuffer_get_length(u->in) > 0 || u->eof) {
            /* Processing may finish the exchange and release u. */
            up_hold(u);
            up_process(u);
            up_release(u);
        }
    }
}

static void up_close(struct dm_upstream_conn *u)
{
    if (u->closed) {
        return;
    }
    u->closed = true;
    if (u->state == UP_IDLE) {
        pool_remove(u);
    }
    queue_remove(u);
    up_slot_release(u);
    if (u->dns_wait != NULL) {
        dm_dns_cancel(u->dns_wait);
        u->dns_wait = NULL;
    }
    if (u->h2 != NULL) {
        dm_uph2_close(u->h2);
        u->h2 = NULL;
    }
    if (u->events_added) {
        event_del(&u->rev);
        event_del(&u->wev);
    }
    evtimer_del(&u->timer);
    if (u->ssl != NULL) {
        SSL_free(u->ssl);
    }
    if (u->fd >= 0) {
        close(u->fd);
    }
    evbuffer_free(u->in);
    evbuffer_free(u->out);
    if (u->retry_head != NULL) {
        evbuffer_free(u->retry_head);
    }
    up_release(u);
}

void dm_upstream_detach(struct dm_upstream_conn *u, bool reusable)
{
    if (u == NULL || u->closed) {
        return;
    }
    u->s = NULL;
    up_slot_release(u);
    if (u->retry_head != NULL) {
        evbuffer_free(u->retry_head);
        u->retry_head = NULL;
    }
    if (!reusable || u->state == UP_QUEUED || u->pool == NULL || u->h2 != NULL || u->eof ||
        evbuffer_get_length(u->in) > 0 || evbuffer_get_length(u->out) > 0 ||
        u->pool->num_idle >= UP_POOL_MAX || u->w->draining) {
        up_close(u);
        return;
    }
    u->state = UP_IDLE;
    u->paused = false;
    u->reused = false;
    event_del(&u->wev);
    event_add(&u->rev, NULL); /* notices the backend closing an idle connection */
    up_set_timer(u, UP_IDLE_MS);
    u->pool_next = u->pool->idle;
    u->pool_prev = NULL;
    if (u->pool->idle != NULL) {
        u->pool->idle->pool_prev = u;
    }
    u->pool->idle = u;
    u->pool->num_idle++;
}

void dm_upstream_pools_close_idle(struct dm_worker *w)
{
    for (struct dm_upstream_pool *p = w->pools; p != NULL; p = p->next) {
        while (p->idle != NULL) {
            up_close(p->idle);
        }
    }
}

void dm_upstream_pools_free(struct dm_worker *w)
{
    struct dm_upstream_pool *p = w->pools;
    while (p != NULL) {
        while (p->idle != NULL) {
            up_close(p->idle);
        }
        struct dm_upstream_pool *next = p->next;
        dm_uph2_pool_close(&p->tr);
        free(p->key);
        dm_up_tr_cleanup(&p->tr);
        free(p);
        p = next;
    }
    w->pools = NULL;
    if (w->queue_ev != NULL) {
        event_free(w->queue_ev);
        w->queue_ev = NULL;
    }
}

/* up_try_retry replaces a stale pooled connection with a fresh one for the
 * same request. Returns true if the retry started. */
static bool up_try_retry(struct dm_upstream_conn *u)
{
    struct dm_stream *st = u->s;
    if (!u->reused || u->got_bytes || u->retry_head == NULL || st == NULL) {
        return false;
    }
    const struct cfg_site *s = st->site;
    const struct cfg_addr *addr = NULL;
    for (size_t i = 0; s != NULL && i < s->num_to; i++) {
        if (strcmp(s->to[i].text, u->pool->key) == 0) {
            addr = &s->to[i];
        }
    }
    if (addr == NULL) {
        return false;
    }
    struct evbuffer *head = u->retry_head;
    struct dm_backend *be = u->be;
    u->retry_head = NULL;
    u->be = NULL; /* the same backend again: its slot moves to the new connection */
    u->s = NULL;
    st->up = NULL;
    up_close(u);
    DM_LOG_DBG("upstream", "c=%llu retrying on a new connection to %s",
               (unsigned long long)st->c->id, addr->text);
    struct dm_upstream_pool *pool = pool_get(st->c->w, addr, s->transport);
    struct dm_upstream_conn *n = pool ? up_new(st->c->w, pool) : NULL;
    if (n == NULL) {
        evbuffer_free(head);
        if (be != NULL) {
            dm_pool_release(be);
        }
        return false;
    }
    up_keep_head(n, st, head); /* it may still move to another backend */
    up_attach(n, st, head);
    n->be = be;
    evbuffer_free(head);
    n->req_done = true;
    up_connect_start(n, addr);
    return true;
}

/* up_retry_other moves a request whose backend failed before sending any
 * response byte to another backend not tried yet, within upstream.retries
 * and retry_timeout. Safe only while the request can be sent again whole:
 * nothing was written yet (connect failed or timed out), or it has no body
 * and its head was kept. Returns true if the request moved (or failed on its
 * way: the stream was told). */
static bool up_retry_other(struct dm_upstream_conn *u)
{
    struct dm_stream *st = u->s;
    if (st == NULL || st->pool == NULL || st->resp_started || u->got_bytes ||
        st->attempts >= st->site->upstream.retries || dm_time_mono_us() >= st->retry_deadline_us) {
        return false;
    }
    bool is_unsent = u->state == UP_RESOLVING || u->state == UP_CONNECTING;
    if (!is_unsent && u->retry_head == NULL) {
        return false;
    }
    int prev = st->be_idx;
    int i = dm_request_pick(st);
    if (i == DM_PICK_DOWN) {
        return false;
    }
    struct evbuffer *head = u->retry_head;
    u->retry_head = NULL;
    if (is_unsent) {
        if (head == NULL) {
            head = evbuffer_new();
        } else {
            evbuffer_drain(head, evbuffer_get_length(head));
        }
        if (head != NULL) {
            evbuffer_add_buffer(head, u->out);
        }
    }
    st->attempts++;
    bool is_req_done = u->req_done;
    u->s = NULL;
    st->up = NULL;
    up_close(u); /* gives back the failed backend's slot */
    dm_log(DM_LOG_INFO, "upstream", "c=%llu %s %s%s: retrying on %s after %s failed",
           (unsigned long long)st->c->id, st->method, st->host, st->path,
           i >= 0 ? st->site->to[i].text : "the queue", prev >= 0 ? st->site->to[prev].text : "-");
    if (head == NULL || dm_upstream_start(st, i >= 0 ? &st->site->to[i] : NULL, head) != 0) {
        if (head != NULL) {
            evbuffer_free(head);
        }
        dm_stream_on_upstream_error(st, 502, "out of memory");
        return true;
    }
    evbuffer_free(head);
    if (is_req_done) {
        dm_upstream_request_done(st->up);
    }
    dm_upstream_kick(st->up);
    return true;
}

static void up_finish(struct dm_upstream_conn *u)
{
    struct dm_stream *s = u->s;
    bool reusable = u->msg.keep_alive && u->msg.body != DM_HTTP1_BODY_EOF && u->req_done &&
                    !u->eof && evbuffer_get_length(u->in) == 0;
    evtimer_del(&u->timer);
    dm_stream_on_upstream_done(s, reusable);
}

/* up_move_body moves response body bytes to the client per the framing. */
static void up_move_body(struct dm_upstream_conn *u)
{
    struct dm_stream *c = u->s;
    size_t avail = evbuffer_get_length(u->in);
    switch (u->msg.body) {
    case DM_HTTP1_BODY_NONE:
        up_finish(u);
        return;
    case DM_HTTP1_BODY_LENGTH: {
        size_t n = avail < u->body_left ? avail : (size_t)u->body_left;
        if (n > 0) {
            evbuffer_remove_buffer(u->in, c->out, n);
            u->body_left -= n;
            c->resp_bytes += n;
        }
        if (u->body_left == 0) {
            dm_stream_on_upstream_data(c);
            if (u->s == c) {
                up_finish(u);
            }
            return;
        }
        break;
    }
    case DM_HTTP1_BODY_EOF:
        if (avail > 0) {
            c->resp_bytes += avail;
            evbuffer_add_buffer(c->out, u->in);
        }
        if (u->eof) {
            dm_stream_on_upstream_data(c);
            if (u->s == c) {
                up_finish(u);
            }
            return;
        }
        break;
    case DM_HTTP1_BODY_CHUNKED: {
        uint64_t data_bytes;
        int rc =
            c->trailers != NULL
                ? dm_chunked_move_trailers(&u->chunked, u->in, c->out, c->trailers, &data_bytes)
                : dm_chunked_move(&u->chunked, u->in, c->out, c->dechunk, &data_bytes);
        if (rc != 0) {
            up_fail(u, 502, "bad chunked response");
            return;
        }
        c->resp_bytes += data_bytes;
        if (u->chunked.state == DM_CHUNK_DONE) {
            dm_stream_on_upstream_data(c);
            if (u->s == c) {
                up_finish(u);
            }
            return;
        }
        break;
    }
    }
    if (u->eof) {
        up_fail(u, 502, "backend closed mid-response");
        return;
    }
    dm_stream_on_upstream_data(c);
    if (u->s == c) {
        up_set_timer(u, c->c->gen->cfg->timeouts.body_ms);
    }
}

static void up_process(struct dm_upstream_conn *u)
{
    while (!u->closed && u->s != NULL) {
        struct dm_stream *c = u->s;
        switch (u->state) {
        case UP_WAIT_HEAD: {
            size_t len = evbuffer_get_length(u->in);
            if (len == 0) {
                if (u->eof) {
                    if (!up_try_retry(u)) {
                        up_fail_retry(u, 502, "backend closed the connection without a response");
                    }
                }
                return;
            }
            const struct dm_http1_limits *lim = &c->c->gen->resp_limits;
            size_t want = len < lim->max_header_bytes + 4 ? len : lim->max_header_bytes + 4;
            const char *data = (const char *)evbuffer_pullup(u->in, (ssize_t)want);
            ssize_t n = dm_http1_parse_response(&u->parser, &u->msg, data, want, lim, c->is_head);
            if (n == DM_PARSE_AGAIN) {
                if (u->eof) {
                    up_fail(u, 502, "backend closed mid-head");
                }
                return;
            }
            if (n == DM_PARSE_ERROR) {
                up_fail(u, 502, u->msg.error ? u->msg.error : "bad response head");
                return;
            }
            int status = u->msg.status;
            const struct cfg_passive *pv = &c->site->upstream.passive;
            if (status >= 500 && status <= 599 && u->be != NULL &&
                (pv->statuses[(status - 500) / 64] >> ((status - 500) % 64)) & 1) {
                char why[40];
                snprintf(why, sizeof(why), "status %d", status);
                dm_backend_on_failure(u->be, pv, c->pool->num, why);
            }
            dm_stream_on_upstream_head(c, &u->msg, u->in, (size_t)n);
            if (u->closed || u->s != c) {
                return;
            }
            if (status >= 100 && status < 200 && status != 101) {
                dm_http1_parser_init(&u->parser);
                continue;
            }
            if (u->retry_head != NULL) {
                evbuffer_free(u->retry_head);
                u->retry_head = NULL;
            }
            if (status == 101) {
                u->state = UP_TUNNEL;
                evtimer_del(&u->timer);
                continue;
            }
            u->state = UP_BODY;
            u->body_left = u->msg.body == DM_HTTP1_BODY_LENGTH ? u->msg.content_length : 0;
            dm_http1_chunked_init(&u->chunked);
            up_set_timer(u, c->c->gen->cfg->timeouts.body_ms);
            continue;
        }
        case UP_BODY:
            if (u->paused) {
                return;
            }
            up_move_body(u);
            return;
        case UP_TUNNEL:
            if (evbuffer_get_length(u->in) > 0) {
                evbuffer_add_buffer(c->out, u->in);
                dm_stream_on_upstream_data(c);
            }
            if (u->eof && u->s == c) {
                dm_stream_on_upstream_done(c, false);
            }
            return;
        default:
            return;
        }
    }
}

/* up_tls_step advances the backend TLS handshake (the connect timer still
 * runs); once done, the exchange goes on as over cleartext. */
static void up_tls_step(struct dm_upstream_conn *u)
{
    char why[256]; /* only logged, synchronously, inside up_fail */
    if (u->ssl == NULL && (u->ssl = dm_uptls_new(&u->pool->tr, u->fd)) == NULL) {
        up_fail(u, 502, "backend TLS setup failed");
        return;
    }
    bool want_write;
    int r = dm_uptls_handshake(u->ssl, &want_write, why, sizeof(why));
    if (r < 0) {
        up_fail(u, 502, why);
        return;
    }
    if (r == 0) {
        if (want_write) {
            event_add(&u->wev, NULL);
        } else {
            event_del(&u->wev);
        }
        return;
    }
    DM_LOG_DBG("upstream", "%s: TLS %s%s", u->pool->key, SSL_get_version(u->ssl),
               SSL_session_reused(u->ssl) ? " (resumed)" : "");
    u->state = UP_WAIT_HEAD;
    up_arm_wait(u);
    up_flush(u);
    if (!u->closed && u->s != NULL && evbuffer_get_length(u->out) < DM_BUF_LOW) {
        dm_stream_on_upstream_writable(u->s);
    }
}

static void up_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct dm_upstream_conn *u = arg;
    up_hold(u);
    if (u->state == UP_IDLE) {
        /* Data or EOF on an idle connection: it cannot be reused (TLS:
         * unless it was only a session ticket). */
        if (u->ssl == NULL || !dm_uptls_idle_ok(u->ssl)) {
            up_close(u);
        }
        goto out;
    }
    if (u->state == UP_HANDSHAKE) {
        up_tls_step(u);
        goto out;
    }
    /* recv into reserved buffer space: no FIONREAD first (evbuffer_read asks
     * it every time), and a short read means the socket is empty, which
     * saves the recv that would only find EAGAIN. */
    size_t total = 0;
    size_t want = u->big_reads ? UP_READ_CHUNK : UP_SMALL_CHUNK;
    while (total < UP_READ_BUDGET) {
        struct evbuffer_iovec vec;
        if (evbuffer_reserve_space(u->in, (ev_ssize_t)want, &vec, 1) < 1) {
            u->eof = true;
            break;
        }
        ssize_t n = u->ssl != NULL ? dm_uptls_read(u->ssl, vec.iov_base, vec.iov_len)
                                   : recv(fd, vec.iov_base, vec.iov_len, 0);
        if (n > 0) {
            vec.iov_len = (size_t)n;
            evbuffer_commit_space(u->in, &vec, 1);
            total += (size_t)n;
            u->got_bytes = true;
            if ((size_t)n < want) {
                break;
            }
            want = UP_READ_CHUNK; /* streaming: read in big pieces */
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            break;
        }
        u->eof = true;
        event_del(&u->rev);
        break;
    }
    u->big_reads = total >= UP_SMALL_CHUNK;
    if (u->ssl != NULL && !u->eof && SSL_pending(u->ssl) > 0) {
        event_active(&u->rev, EV_READ, 0); /* decrypted bytes the socket no longer signals */
    }
    up_process(u);
out:
    up_release(u);
}

static void up_on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct dm_upstream_conn *u = arg;
    up_hold(u);
    if (u->state == UP_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            DM_LOG_DBG("upstream", "connect %s: %s", u->pool->key, strerror(err ? err : errno));
            up_fail_retry(u, 502, err == ECONNREFUSED ? "connect refused" : "connect failed");
            goto out;
        }
        u->state = UP_WAIT_HEAD;
        event_add(&u->rev, NULL);
        if (u->pool->tr.is_tls) {
            u->state = UP_HANDSHAKE;
            up_tls_step(u);
            goto out;
        }
        up_arm_wait(u);
    }
    if (u->state == UP_HANDSHAKE) {
        up_tls_step(u);
        goto out;
    }
    up_flush(u);
    if (!u->closed && u->s != NULL && evbuffer_get_length(u->out) < DM_BUF_LOW) {
        dm_stream_on_upstream_writable(u->s);
    }
out:
    up_release(u);
}

static void up_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dm_upstream_conn *u = arg;
    up_hold(u);
    if (u->pending_error != 0) {
        int status = u->pending_error;
        u->pending_error = 0;
        up_fail_retry(u, status, u->pending_why);
        goto out;
    }
    switch (u->state) {
    case UP_QUEUED:
        queue_on_timer(u);
        break;
    case UP_IDLE:
        up_close(u);
        break;
    case UP_RESOLVING:
    case UP_CONNECTING:
        up_fail_retry(u, 502, "connect timeout");
        break;
    case UP_HANDSHAKE:
        up_fail(u, 502, "backend TLS handshake timeout");
        break;
    case UP_WAIT_HEAD:
        up_count_failure(u, "response timeout");
        up_fail(u, 504, "backend response timeout");
        break;
    case UP_BODY:
        up_fail(u, 504, "backend body timeout");
        break;
    case UP_TUNNEL:
        break;
    }
out:
    up_release(u);
}
