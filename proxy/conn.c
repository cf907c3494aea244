/* Client connections: TLS handshake, HTTP/1.1 request heads, request bodies
 * streamed to the backend, responses streamed back, keep-alive, pipelining
 * (one request at a time, answered in order), upgrades, timeouts and
 * lingering close. One connection belongs to one worker loop; it is freed only
 * when no callback frame holds it (refs). See docs/architecture.md. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "acme/acme.h"
#include "acme/solver.h"
#include "proxy/core/log.h"
#include "proxy/core/str.h"
#include "proxy/core/time.h"
#include "proxy/proxy_int.h"

/* Bytes read from one side per wakeup, so one busy connection cannot starve
 * the others of its worker. */
#define CONN_READ_BUDGET (256 * 1024)
#define CONN_READ_CHUNK  16384
/* How long a closing connection discards late input so that its last
 * response is not destroyed by a TCP reset (unread data at close). */
#define CONN_LINGER_MS 2000

static void conn_on_read(evutil_socket_t fd, short what, void *arg);
static void conn_on_write(evutil_socket_t fd, short what, void *arg);
static void conn_on_timer(evutil_socket_t fd, short what, void *arg);
static void conn_process(struct dm_conn *c);
static void conn_handshake(struct dm_conn *c);

static void conn_hold(struct dm_conn *c)
{
    c->refs++;
}

static void conn_release(struct dm_conn *c)
{
    if (--c->refs == 0 && c->closed) {
        free(c);
    }
}

void dm_conn_set_timer(struct dm_conn *c, uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(&c->timer, &tv);
}

static void conn_pause_read(struct dm_conn *c)
{
    if (!c->read_paused) {
        c->read_paused = true;
        event_del(&c->rev);
    }
}

static void conn_resume_read(struct dm_conn *c)
{
    if (c->read_paused && !c->closed) {
        c->read_paused = false;
        event_add(&c->rev, NULL);
        /* Bytes already taken from the socket (our read buffer, or decrypted
         * in the SSL) are not signalled by the socket again. */
        if (c->ssl != NULL && (c->rbuf != NULL || SSL_pending(c->ssl) > 0)) {
            event_active(&c->rev, EV_READ, 0);
        }
    }
}

static bool peer_is_trusted(const struct cfg *cfg, const struct sockaddr_storage *ss)
{
    for (size_t i = 0; i < cfg->num_trusted_proxies; i++) {
        const struct cfg_cidr *n = &cfg->trusted_proxies[i];
        const uint8_t *a = NULL, *b = NULL;
        size_t bits = n->prefix;
        uint8_t mapped[4];
        if (ss->ss_family == AF_INET && n->net.ss_family == AF_INET) {
            a = (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr;
            b = (const uint8_t *)&((const struct sockaddr_in *)&n->net)->sin_addr;
        } else if (ss->ss_family == AF_INET6 && n->net.ss_family == AF_INET6) {
            a = (const uint8_t *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
            b = (const uint8_t *)&((const struct sockaddr_in6 *)&n->net)->sin6_addr;
        } else if (ss->ss_family == AF_INET6 && n->net.ss_family == AF_INET &&
                   IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)ss)->sin6_addr)) {
            memcpy(mapped, ((const uint8_t *)&((const struct sockaddr_in6 *)ss)->sin6_addr) + 12,
                   4);
            a = mapped;
            b = (const uint8_t *)&((const struct sockaddr_in *)&n->net)->sin_addr;
        } else {
            continue;
        }
        size_t full = bits / 8, rest = bits % 8;
        if (memcmp(a, b, full) != 0) {
            continue;
        }
        if (rest != 0) {
            uint8_t mask = (uint8_t)(0xff << (8 - rest));
            if ((a[full] & mask) != (b[full] & mask)) {
                continue;
            }
        }
        return true;
    }
    return false;
}

static void format_peer(struct dm_conn *c)
{
    if (c->peer.ss_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&c->peer)->sin_addr, c->peer_ip,
                  sizeof(c->peer_ip));
    } else if (c->peer.ss_family == AF_INET6) {
        const struct in6_addr *a6 = &((struct sockaddr_in6 *)&c->peer)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            inet_ntop(AF_INET, (const uint8_t *)a6 + 12, c->peer_ip, sizeof(c->peer_ip));
        } else {
            inet_ntop(AF_INET6, a6, c->peer_ip, sizeof(c->peer_ip));
        }
    } else {
        snprintf(c->peer_ip, sizeof(c->peer_ip), "unix");
    }
}

void dm_conn_accept(struct dm_worker *w, int fd, struct sockaddr *sa, socklen_t sa_len, bool is_tls)
{
    struct dm_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    if (c->in == NULL || c->out == NULL) {
        goto fail;
    }
    c->id = atomic_fetch_add(&dm_proxy_g.next_conn_id, 1) + 1;
    c->w = w;
    c->gen = dm_gen_ref(w->gen);
    c->r.c = c;
    c->r.out = c->out;
    c->fd = fd;
    if (sa_len <= sizeof(c->peer)) {
        memcpy(&c->peer, sa, sa_len);
        c->peer_len = sa_len;
    }
    format_peer(c);
    c->peer_trusted = peer_is_trusted(c->gen->cfg, &c->peer);
    c->refs = 1;
    event_assign(&c->rev, w->base, fd, EV_READ | EV_PERSIST, conn_on_read, c);
    event_assign(&c->wev, w->base, fd, EV_WRITE | EV_PERSIST, conn_on_write, c);
    evtimer_assign(&c->timer, w->base, conn_on_timer, c);
    c->next = w->conns;
    if (w->conns != NULL) {
        w->conns->prev = c;
    }
    w->conns = c;
    w->num_conns++;
    atomic_fetch_add(&dm_proxy_g.num_conns, 1);
    dm_limits_conn_opened(c);

    if (is_tls) {
        c->ssl = SSL_new(dm_proxy_g.ssl_ctx);
        BIO *bio = c->ssl != NULL ? dm_tls_bio_new(c) : NULL;
        if (bio != NULL) {
            SSL_set_bio(c->ssl, bio, bio); /* takes the one reference */
        }
        if (c->ssl == NULL || bio == NULL) {
            dm_err_set_tls(NULL, "SSL_new");
            dm_conn_close(c); /* drops the connection's own reference */
            return;
        }
        SSL_set_ex_data(c->ssl, dm_tls_conn_index, c);
        SSL_set_accept_state(c->ssl);
        /* Drops handshake-only configuration once done: smaller idle connections. */
        SSL_set_shed_handshake_config(c->ssl, 1);
        c->state = DM_CONN_HANDSHAKE;
        dm_conn_set_timer(c, c->gen->cfg->timeouts.handshake_ms);
    } else {
        c->state = DM_CONN_IDLE;
        dm_conn_set_timer(c, c->gen->cfg->timeouts.header_ms);
    }
    event_add(&c->rev, NULL);
    /* With TCP_DEFER_ACCEPT the first flight is usually already here. The
     * connection's own reference is dropped by dm_conn_close. */
    conn_on_read(fd, EV_READ, c);
    return;
fail:
    if (c->in != NULL) {
        evbuffer_free(c->in);
    }
    if (c->out != NULL) {
        evbuffer_free(c->out);
    }
    free(c);
    close(fd);
}

/* conn_od_unlist takes c off its worker's on-demand waiting list. */
static void conn_od_unlist(struct dm_conn *c)
{
    if (!c->is_od_listed) {
        return;
    }
    if (c->od_prev != NULL) {
        c->od_prev->od_next = c->od_next;
    } else {
        c->w->od_waiting = c->od_next;
    }
    if (c->od_next != NULL) {
        c->od_next->od_prev = c->od_prev;
    }
    c->od_prev = c->od_next = NULL;
    c->is_od_listed = false;
}

/* conn_od_end closes the books on a wait: how long, and whether the
 * handshake got its certificate. */
static void conn_od_end(struct dm_conn *c, bool got)
{
    conn_od_unlist(c);
    if (c->od_wait_us != 0) {
        uint64_t ms = (dm_time_mono_us() - c->od_wait_us) / 1000;
        acme_ondemand_note_wait(dm_proxy_g.ondemand, (uint32_t)ms, got);
        DM_LOG_DBG("tls", "c=%llu sni=%s waited %llu ms for an on-demand certificate: %s",
                   (unsigned long long)c->id, c->sni, (unsigned long long)ms,
                   got ? "served" : "failed");
        c->od_wait_us = 0;
    }
}

/* conn_od_wait parks a handshake paused in the select-certificate callback
 * (SSL_ERROR_PENDING_CERTIFICATE): no reads (the peer waits for our
 * ServerHello, and a readable EOF would spin), the wait bounded by the
 * site's wait_timeout, woken by the worker's DM_WORKER_MSG_OD. */
static void conn_od_wait(struct dm_conn *c)
{
    event_del(&c->rev);
    if (c->od_wait_us == 0) {
        c->od_wait_us = dm_time_mono_us();
        const struct cfg_site *s = c->sni_site;
        dm_conn_set_timer(c, s != NULL && s->on_demand != NULL
                                 ? s->on_demand->wait_timeout_ms
                                 : c->gen->cfg->timeouts.handshake_ms);
    }
    if (!c->is_od_listed) {
        c->is_od_listed = true;
        c->od_prev = NULL;
        c->od_next = c->w->od_waiting;
        if (c->od_next != NULL) {
            c->od_next->od_prev = c;
        }
        c->w->od_waiting = c;
    }
}

void dm_conn_close(struct dm_conn *c)
{
    if (c->closed) {
        return;
    }
    c->closed = true;
    conn_od_end(c, false);
    if (c->h2 != NULL) {
        dm_h2_free(c); /* detaches the streams' backend connections */
    }
    if (c->r.up != NULL) {
        dm_upstream_detach(c->r.up, false);
        c->r.up = NULL;
    }
    event_del(&c->rev);
    event_del(&c->wev);
    evtimer_del(&c->timer);
    if (c->ssl != NULL) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    dm_conn_rbuf_release(c);
    close(c->fd);
    evbuffer_free(c->in);
    evbuffer_free(c->out);
    c->in = c->out = NULL;
    struct dm_worker *w = c->w;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        w->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    w->num_conns--;
    atomic_fetch_sub(&dm_proxy_g.num_conns, 1);
    dm_limits_conn_closed(c);
    dm_gen_unref(c->gen);
    c->gen = NULL;
    if (w->draining && w->num_conns == 0) {
        event_base_loopexit(w->base, NULL);
    }
    conn_release(c);
}

/* dm_conn_finish closes now if nothing is left to send, else after the flush
 * (with a lingering read so the peer sees the response, RFC 9112 §9.6). */
void dm_conn_finish(struct dm_conn *c)
{
    c->state = DM_CONN_CLOSING;
    c->r.keep_alive = false;
    dm_conn_flush(c);
}

void dm_conn_schedule_flush(struct dm_conn *c)
{
    if (!c->closed && !c->lingering) {
        event_active(&c->wev, EV_WRITE, 0);
    }
}

void dm_conn_force_close(struct dm_conn *c)
{
    dm_conn_close(c);
}

void dm_conn_od_retry(struct dm_conn *c)
{
    conn_hold(c);
    if (!c->closed && c->state == DM_CONN_HANDSHAKE) {
        conn_handshake(c);
        if (!c->closed && c->state != DM_CONN_HANDSHAKE) {
            /* Finished: the client's first request may be buffered already. */
            conn_on_read(c->fd, EV_READ, c);
        }
    }
    conn_release(c);
}

void dm_conn_drain(struct dm_conn *c)
{
    switch (c->state) {
    case DM_CONN_HANDSHAKE:
    case DM_CONN_IDLE:
        dm_conn_close(c);
        break;
    case DM_CONN_HEAD:
    case DM_CONN_PROXY:
        c->want_close = true;
        break;
    case DM_CONN_H2:
        dm_h2_drain(c);
        break;
    case DM_CONN_TUNNEL:
    case DM_CONN_CLOSING:
        break;
    }
}

/* conn_respond writes a complete short response made by the proxy itself. */
static void conn_respond(struct dm_conn *c, int status, const char *extra_headers, const char *body,
                         bool close_after)
{
    dm_h1_respond(c, status, "text/plain; charset=utf-8", extra_headers, body, close_after);
}

void dm_h1_respond(struct dm_conn *c, int status, const char *content_type,
                   const char *extra_headers, const char *body, bool close_after)
{
    if (c->want_close || !c->r.keep_alive) {
        close_after = true;
    }
    size_t body_len = strlen(body);
    evbuffer_add_printf(c->out,
                        "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
                        "Content-Length: %zu\r\n%s%s\r\n",
                        status, dm_status_text(status), content_type, body_len,
                        extra_headers ? extra_headers : "",
                        close_after ? "Connection: close\r\n" : "");
    if (!c->r.is_head) {
        evbuffer_add(c->out, body, body_len);
    }
    c->r.status = status;
    c->r.resp_started = true;
    c->r.resp_bytes = body_len;
    dm_access_log(&c->r);
    if (close_after) {
        dm_conn_finish(c);
        return;
    }
    c->state = DM_CONN_IDLE;
    dm_conn_set_timer(c, c->gen->cfg->timeouts.idle_ms);
    dm_conn_flush(c);
}

static void conn_reset_request(struct dm_conn *c)
{
    dm_http1_parser_init(&c->parser);
    memset(&c->r.msg, 0, sizeof(c->r.msg));
    c->r.msg.headers = c->w->req_fields;
    c->r.req_body_left = 0;
    c->r.req_body_done = false;
    c->r.resp_started = false;
    c->r.is_head = false;
    c->r.dechunk = false;
    c->r.status = 0;
    c->r.resp_bytes = 0;
    c->r.method[0] = c->r.host[0] = c->r.path[0] = '\0';
    c->r.site = NULL;
    c->r.backend = NULL;
}

/* conn_parse_error answers a malformed head and closes (never resync). */
static void conn_parse_error(struct dm_conn *c)
{
    int status = c->r.msg.error_status ? c->r.msg.error_status : 400;
    DM_LOG_DBG("http", "c=%llu %s: %d %s", (unsigned long long)c->id, c->peer_ip, status,
               c->r.msg.error ? c->r.msg.error : "bad request");
    char body[160];
    snprintf(body, sizeof(body), "%d %s\n", status, dm_status_text(status));
    conn_respond(c, status, NULL, body, true);
}

/* conn_forward_body moves request body bytes from the client to the backend
 * without copying (evbuffer chains move), checking chunked framing. */
static void conn_forward_body(struct dm_conn *c)
{
    if (c->r.req_body_done || c->r.up == NULL) {
        return;
    }
    struct evbuffer *out = dm_upstream_output(c->r.up);
    if (out == NULL) {
        return;
    }
    size_t avail = evbuffer_get_length(c->in);
    if (c->r.msg.body == DM_HTTP1_BODY_LENGTH) {
        size_t n = avail < c->r.req_body_left ? avail : (size_t)c->r.req_body_left;
        if (n > 0) {
            evbuffer_remove_buffer(c->in, out, n);
            c->r.req_body_left -= n;
        }
        if (c->r.req_body_left == 0) {
            c->r.req_body_done = true;
        }
    } else if (c->r.msg.body == DM_HTTP1_BODY_CHUNKED) {
        uint64_t data_bytes;
        if (dm_chunked_move(&c->r.req_chunked, c->in, out, false, &data_bytes) != 0) {
            DM_LOG_DBG("http", "c=%llu bad chunked request body", (unsigned long long)c->id);
            dm_upstream_detach(c->r.up, false);
            c->r.up = NULL;
            if (!c->r.resp_started) {
                c->r.msg.error_status = 400;
                c->r.msg.error = "bad chunked body";
                conn_parse_error(c);
            } else {
                dm_conn_close(c);
            }
            return;
        }
        if (c->r.req_chunked.state == DM_CHUNK_DONE) {
            c->r.req_body_done = true;
        }
    } else {
        c->r.req_body_done = true;
    }
    if (c->r.req_body_done) {
        dm_upstream_request_done(c->r.up);
        if (evbuffer_get_length(c->out) == 0) {
            /* Waiting for the backend now: its own timers apply. */
            evtimer_del(&c->timer);
        }
    }
    dm_upstream_kick(c->r.up);
}

static void conn_start_request(struct dm_conn *c, size_t head_len)
{
    struct dm_stream *s = &c->r;
    const struct cfg *cfg = c->gen->cfg;
    dm_stream_begin(s);
    s->keep_alive = s->msg.keep_alive && !c->want_close && !c->w->draining;
    bool has_body = s->msg.body != DM_HTTP1_BODY_NONE;
    struct evbuffer *hb = evbuffer_new();
    if (hb == NULL) {
        dm_conn_close(c);
        return;
    }
    const struct cfg_addr *addr = NULL;
    int rc = dm_request_prepare(s, head_len, hb, &addr);
    if (rc <= 0) {
        evbuffer_free(hb);
        if (rc < 0) {
            dm_conn_close(c);
        }
        return;
    }
    c->state = DM_CONN_PROXY;
    evtimer_del(&c->timer);
    if (dm_upstream_start(s, addr, hb) != 0) {
        evbuffer_free(hb);
        conn_respond(c, 502, NULL, "502 Bad Gateway\n", true);
        return;
    }
    evbuffer_free(hb);
    if (has_body) {
        dm_conn_set_timer(c, cfg->timeouts.body_ms);
    }
    conn_forward_body(c);
}

static void conn_process(struct dm_conn *c)
{
    while (!c->closed) {
        switch (c->state) {
        case DM_CONN_HANDSHAKE:
        case DM_CONN_CLOSING:
            return;
        case DM_CONN_H2:
            dm_h2_on_input(c);
            return;
        case DM_CONN_IDLE:
            if (evbuffer_get_length(c->in) == 0) {
                return;
            }
            conn_reset_request(c);
            c->state = DM_CONN_HEAD;
            dm_conn_set_timer(c, c->gen->cfg->timeouts.header_ms);
            break;
        case DM_CONN_HEAD: {
            size_t len = evbuffer_get_length(c->in);
            const struct dm_http1_limits *lim = &c->gen->req_limits;
            size_t want = len < lim->max_header_bytes + 4 ? len : lim->max_header_bytes + 4;
            const char *data = (const char *)evbuffer_pullup(c->in, (ssize_t)want);
            ssize_t n = dm_http1_parse_request(&c->parser, &c->r.msg, data, want, lim);
            if (n == DM_PARSE_AGAIN) {
                if (c->eof) {
                    dm_conn_close(c);
                }
                return;
            }
            if (n == DM_PARSE_ERROR) {
                c->r.keep_alive = false;
                conn_parse_error(c);
                return;
            }
            conn_start_request(c, (size_t)n);
            if (c->state == DM_CONN_IDLE) {
                continue; /* answered locally and kept alive: next pipelined request */
            }
            return;
        }
        case DM_CONN_PROXY:
            conn_forward_body(c);
            if (!c->closed && c->state == DM_CONN_PROXY && c->r.req_body_done &&
                evbuffer_get_length(c->in) > DM_PIPELINE_MAX) {
                conn_pause_read(c);
            }
            return;
        case DM_CONN_TUNNEL: {
            struct evbuffer *out = c->r.up ? dm_upstream_output(c->r.up) : NULL;
            if (out != NULL && evbuffer_get_length(c->in) > 0) {
                evbuffer_add_buffer(out, c->in);
                dm_upstream_kick(c->r.up);
            }
            if (c->eof) {
                dm_conn_finish(c);
            }
            return;
        }
        }
    }
}

/* conn_read_socket reads what is available into c->in. Returns bytes read,
 * and sets c->eof on end of stream or error. */
static size_t conn_read_socket(struct dm_conn *c)
{
    size_t total = 0;
    while (total < CONN_READ_BUDGET) {
        if (c->ssl != NULL) {
            struct evbuffer_iovec vec;
            if (evbuffer_reserve_space(c->in, CONN_READ_CHUNK, &vec, 1) < 1) {
                c->eof = true;
                break;
            }
            int n = SSL_read(c->ssl, vec.iov_base, (int)vec.iov_len);
            if (n > 0) {
                vec.iov_len = (size_t)n;
                evbuffer_commit_space(c->in, &vec, 1);
                total += (size_t)n;
                /* The last recv emptied the socket and every byte is used:
                 * another SSL_read would only find EAGAIN. */
                if (c->sock_drained && c->rbuf == NULL && SSL_pending(c->ssl) == 0) {
                    break;
                }
                continue;
            }
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_READ) {
                break;
            }
            if (e == SSL_ERROR_WANT_WRITE) {
                event_add(&c->wev, NULL);
                break;
            }
            ERR_clear_error();
            c->eof = true;
            break;
        }
        int n = evbuffer_read(c->in, c->fd, CONN_READ_CHUNK);
        if (n > 0) {
            total += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            break;
        }
        c->eof = true;
        break;
    }
    return total;
}

static void conn_handshake(struct dm_conn *c)
{
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        dm_metrics_on_handshake(c, true, 0);
        if (c->od_wait_us != 0) {
            /* Reads were off while parked; the request is still to come. */
            conn_od_end(c, true);
            event_add(&c->rev, NULL);
        }
        if (c->is_acme_alpn) {
            /* RFC 8737 §3: the validation is the handshake; nothing follows. */
            dm_conn_finish(c);
            return;
        }
        const uint8_t *proto;
        unsigned proto_len;
        SSL_get0_alpn_selected(c->ssl, &proto, &proto_len);
        if (proto_len == 2 && memcmp(proto, "h2", 2) == 0) {
            if (dm_h2_start(c) != 0) {
                dm_conn_close(c);
                return;
            }
            c->state = DM_CONN_H2;
            dm_conn_set_timer(c, c->gen->cfg->timeouts.idle_ms);
            dm_conn_schedule_flush(c); /* our SETTINGS */
        } else {
            c->state = DM_CONN_IDLE;
            dm_conn_set_timer(c, c->gen->cfg->timeouts.idle_ms);
        }
        /* BoringSSL sent its tickets before the client's Finished arrived, so
         * nothing carries the ACK of that Finished: acknowledge at once, or a
         * client with Nagle on holds its first request for the delayed ACK
         * (about 40 ms). */
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_PENDING_CERTIFICATE) {
        conn_od_wait(c);
        return;
    }
    if (c->od_wait_us != 0) {
        /* The certificate came: the rest of the handshake has the usual
         * deadline again. */
        conn_od_end(c, e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE);
        event_add(&c->rev, NULL);
        dm_conn_set_timer(c, c->gen->cfg->timeouts.handshake_ms);
    }
    if (e == SSL_ERROR_WANT_READ) {
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        event_add(&c->wev, NULL);
        return;
    }
    dm_metrics_on_handshake(c, false, e);
    if (dm_log_enabled(DM_LOG_DEBUG)) {
        struct dm_err err;
        dm_err_set_tls(&err, "handshake");
        DM_LOG_DBG("tls", "c=%llu %s sni=%s: %s", (unsigned long long)c->id, c->peer_ip,
                   c->sni[0] ? c->sni : "-", err.msg);
    } else {
        ERR_clear_error();
    }
    dm_conn_close(c);
}

static void conn_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dm_conn *c = arg;
    conn_hold(c);
    if (c->state == DM_CONN_HANDSHAKE) {
        conn_handshake(c);
        if (c->closed || c->state == DM_CONN_HANDSHAKE) {
            goto out;
        }
    }
    if (c->lingering) {
        char junk[4096];
        ssize_t n;
        while ((n = read(c->fd, junk, sizeof(junk))) > 0) {
        }
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            dm_conn_close(c);
        }
        goto out;
    }
    if (c->read_paused) {
        goto out; /* a stale activation: backpressure holds the input */
    }
    size_t n = conn_read_socket(c);
    dm_metrics_bytes_in(c->w->metrics, n);
    if (n > 0 && c->state == DM_CONN_PROXY && !c->r.req_body_done) {
        dm_conn_set_timer(c, c->gen->cfg->timeouts.body_ms);
    }
    conn_process(c);
    if (!c->closed && !c->eof && !c->read_paused && c->ssl != NULL &&
        (c->rbuf != NULL || SSL_pending(c->ssl) > 0)) {
        /* The read budget ran out with bytes already off the socket. */
        event_active(&c->rev, EV_READ, 0);
    }
    if (!c->closed && c->eof) {
        if (c->state == DM_CONN_IDLE || c->state == DM_CONN_HEAD || c->state == DM_CONN_H2) {
            dm_conn_close(c);
        } else if (c->state == DM_CONN_PROXY && !c->r.req_body_done) {
            /* The client went away mid-body: nothing useful can follow. */
            dm_conn_close(c);
        } else if (c->state == DM_CONN_PROXY && c->r.up != NULL && dm_upstream_is_queued(c->r.up)) {
            /* Gone while waiting for a backend slot: leave the queue. */
            dm_conn_close(c);
        } else {
            event_del(&c->rev);
        }
    }
out:
    conn_release(c);
}

static void conn_start_linger(struct dm_conn *c)
{
    if (c->ssl != NULL) {
        SSL_shutdown(c->ssl); /* close_notify, best effort */
    }
    /* Linger only when the client may still be sending (an error answered
     * early, an unread body, pipelined bytes): otherwise unread input cannot
     * exist and a plain close saves a shutdown, a wakeup and a read. */
    bool may_send_more = c->r.status >= 400 || !c->r.req_body_done || c->rbuf != NULL ||
                         evbuffer_get_length(c->in) > 0 || c->state == DM_CONN_TUNNEL;
    if (!may_send_more || c->eof) {
        dm_conn_close(c);
        return;
    }
    dm_conn_rbuf_release(c);
    shutdown(c->fd, SHUT_WR);
    c->lingering = true;
    event_del(&c->wev);
    if (c->eof) {
        dm_conn_close(c);
        return;
    }
    c->read_paused = false;
    event_add(&c->rev, NULL);
    dm_conn_set_timer(c, CONN_LINGER_MS);
}

/* conn_write_out writes c->out to the socket. Returns 1 when it is empty, 0
 * when the socket is full (the write event is armed), -1 when c was closed. */
static int conn_write_out(struct dm_conn *c)
{
    while (evbuffer_get_length(c->out) > 0) {
        if (c->ssl != NULL) {
            size_t total = evbuffer_get_length(c->out);
            struct evbuffer_iovec vec;
            evbuffer_peek(c->out, -1, NULL, &vec, 1);
            /* Coalesce small pieces (a head and the start of a body) into one
             * TLS record instead of several. */
            if (vec.iov_len < CONN_READ_CHUNK && total > vec.iov_len) {
                size_t want = total < CONN_READ_CHUNK ? total : CONN_READ_CHUNK;
                vec.iov_base = evbuffer_pullup(c->out, (ssize_t)want);
                vec.iov_len = want;
            }
            int n = SSL_write(c->ssl, vec.iov_base, (int)vec.iov_len);
            if (n > 0) {
                evbuffer_drain(c->out, (size_t)n);
                continue;
            }
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                event_add(&c->wev, NULL);
                return 0;
            }
            ERR_clear_error();
            dm_conn_close(c);
            return -1;
        }
        int n = evbuffer_write(c->out, c->fd);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                event_add(&c->wev, NULL);
                return 0;
            }
            dm_conn_close(c);
            return -1;
        }
    }
    event_del(&c->wev);
    return 1;
}

/* conn_flush_h2 alternates between letting the session produce frames (a
 * bounded amount at a time) and writing them, until the session has nothing
 * more or the socket is full. */
static void conn_flush_h2(struct dm_conn *c)
{
    conn_hold(c);
    bool finished = false;
    size_t written = 0;
    for (;;) {
        size_t before = evbuffer_get_length(c->out);
        finished = dm_h2_produce(c);
        size_t produced = evbuffer_get_length(c->out) - before;
        size_t queued = evbuffer_get_length(c->out);
        int w = conn_write_out(c);
        if (w >= 0) {
            written += queued - evbuffer_get_length(c->out);
        }
        if (w <= 0) {
            if (w == 0 && written > 0) {
                dm_h2_on_progress(c);
            }
            goto out; /* closed, or the write event calls us again */
        }
        /* Nothing new: done, unless the buffer was not empty (production
         * may have stopped at its high mark) and the write just emptied it:
         * then produce once more, or a session with frames to send stalls
         * with no write event to wake it. */
        if (produced == 0 && before == 0) {
            break;
        }
    }
    if (written > 0) {
        dm_h2_on_progress(c);
    }
    dm_h2_after_flush(c);
    if (!c->closed && c->state == DM_CONN_H2 && finished && dm_h2_produce(c) &&
        evbuffer_get_length(c->out) == 0) {
        /* GOAWAY sent and every stream done (or the session failed). */
        dm_conn_finish(c);
    } else if (!c->closed && evbuffer_get_length(c->out) > 0) {
        event_active(&c->wev, EV_WRITE, 0);
    }
out:
    conn_release(c);
}

void dm_conn_flush(struct dm_conn *c)
{
    if (c->closed || c->lingering) {
        return;
    }
    if (c->state == DM_CONN_H2) {
        conn_flush_h2(c);
        return;
    }
    if (conn_write_out(c) <= 0) {
        return;
    }
    if (c->state == DM_CONN_CLOSING) {
        conn_start_linger(c);
        return;
    }
    if (c->state == DM_CONN_PROXY && c->r.req_body_done) {
        evtimer_del(&c->timer); /* nothing waits on the client */
    }
    if (c->r.up != NULL && (c->state == DM_CONN_PROXY || c->state == DM_CONN_TUNNEL)) {
        dm_upstream_resume(c->r.up);
    }
}

static void conn_on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dm_conn *c = arg;
    conn_hold(c);
    if (c->state == DM_CONN_HANDSHAKE) {
        event_del(&c->wev);
        conn_handshake(c);
        if (!c->closed && c->state != DM_CONN_HANDSHAKE) {
            conn_process(c);
        }
    } else {
        size_t before = evbuffer_get_length(c->out);
        dm_conn_flush(c);
        if (!c->closed && c->state == DM_CONN_PROXY && c->r.resp_started &&
            evbuffer_get_length(c->out) < before) {
            dm_conn_set_timer(c, c->gen->cfg->timeouts.body_ms);
        }
    }
    conn_release(c);
}

static void conn_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dm_conn *c = arg;
    conn_hold(c);
    dm_metrics_on_timer(c);
    if (c->state == DM_CONN_HANDSHAKE && c->od_wait_us != 0 && !c->is_od_expired) {
        /* The certificate did not come in time: the callback now fails the
         * handshake, so the client gets an alert rather than a silent close. */
        c->is_od_expired = true;
        conn_handshake(c);
        if (!c->closed) {
            dm_conn_close(c);
        }
        conn_release(c);
        return;
    }
    switch (c->state) {
    case DM_CONN_HEAD:
        DM_LOG_DBG("http", "c=%llu %s: request head timeout", (unsigned long long)c->id,
                   c->peer_ip);
        c->r.keep_alive = false;
        conn_respond(c, 408, NULL, "408 Request Timeout\n", true);
        break;
    case DM_CONN_PROXY:
        DM_LOG_DBG("http", "c=%llu %s: client body timeout", (unsigned long long)c->id, c->peer_ip);
        dm_conn_close(c);
        break;
    case DM_CONN_H2:
        dm_h2_on_timeout(c);
        break;
    default:
        dm_conn_close(c);
        break;
    }
    conn_release(c);
}

/* ---- called by upstream.c ---- */

void dm_h1_on_upstream_head(struct dm_conn *c, const struct dm_http1_msg *resp,
                            struct evbuffer *resp_buf, size_t head_len)
{
    if (resp->status >= 100 && resp->status < 200 && resp->status != 101) {
        /* Interim responses, never to HTTP/1.0 (RFC 9110 §15.2): 100 only
         * to a client that asked; others (103 Early Hints) with their
         * end-to-end fields, as a proxy must forward them. */
        if (c->r.is_http10 || (resp->status == 100 && !c->r.msg.expect_continue)) {
            evbuffer_drain(resp_buf, head_len);
            return;
        }
        evbuffer_add_printf(c->out, "HTTP/1.1 %d %.*s\r\n", resp->status, (int)resp->reason_len,
                            resp->reason);
        for (size_t i = 0; resp->status != 100 && i < resp->num_headers; i++) {
            const struct dm_http1_header *h = &resp->headers[i];
            if (dm_resp_header_forwarded(h, resp)) {
                evbuffer_add(c->out, h->name, h->name_len);
                evbuffer_add(c->out, ": ", 2);
                evbuffer_add(c->out, h->value, h->value_len);
                evbuffer_add(c->out, "\r\n", 2);
            }
        }
        evbuffer_add(c->out, "\r\n", 2);
        evbuffer_drain(resp_buf, head_len);
        dm_conn_flush(c);
        return;
    }
    c->r.status = resp->status;
    c->r.resp_started = true;
    if (resp->status == 101) {
        /* Upgrade accepted: relay the head as is, then raw bytes. */
        evbuffer_remove_buffer(resp_buf, c->out, head_len);
        c->state = DM_CONN_TUNNEL;
        c->r.keep_alive = false;
        evtimer_del(&c->timer);
        dm_access_log(&c->r);
        dm_conn_flush(c);
        if (!c->closed && evbuffer_get_length(c->in) > 0) {
            conn_process(c);
        }
        return;
    }
    if (resp->body == DM_HTTP1_BODY_EOF) {
        c->r.keep_alive = false;
    }
    if (!c->r.req_body_done) {
        /* Answered before the request body ended: we cannot find the next
         * request's start without reading the rest, so close afterwards. */
        c->r.keep_alive = false;
    }
    if (c->want_close) {
        c->r.keep_alive = false;
    }
    evbuffer_add_printf(c->out, "HTTP/1.%d %d %.*s\r\n", c->r.is_http10 ? 0 : 1, resp->status,
                        (int)resp->reason_len, resp->reason);
    for (size_t i = 0; i < resp->num_headers; i++) {
        const struct dm_http1_header *h = &resp->headers[i];
        if (dm_str_ieq_lit(h->name, h->name_len, "content-length")) {
            if (resp->body == DM_HTTP1_BODY_LENGTH || resp->body == DM_HTTP1_BODY_NONE) {
                evbuffer_add(c->out, h->name, h->name_len);
                evbuffer_add(c->out, ": ", 2);
                evbuffer_add(c->out, h->value, h->value_len);
                evbuffer_add(c->out, "\r\n", 2);
            }
            continue;
        }
        if (!dm_resp_header_forwarded(h, resp)) {
            continue;
        }
        evbuffer_add(c->out, h->name, h->name_len);
        evbuffer_add(c->out, ": ", 2);
        evbuffer_add(c->out, h->value, h->value_len);
        evbuffer_add(c->out, "\r\n", 2);
    }
    if (resp->body == DM_HTTP1_BODY_CHUNKED) {
        if (c->r.is_http10) {
            c->r.dechunk = true;
            c->r.keep_alive = false;
        } else {
            evbuffer_add(c->out, "Transfer-Encoding: chunked\r\n", 28);
        }
    }
    if (!c->r.keep_alive) {
        evbuffer_add(c->out, "Connection: close\r\n", 19);
    } else if (c->r.is_http10) {
        evbuffer_add(c->out, "Connection: keep-alive\r\n", 24);
    }
    evbuffer_add(c->out, "\r\n", 2);
    evbuffer_drain(resp_buf, head_len);
}

void dm_h1_on_upstream_data(struct dm_conn *c)
{
    dm_conn_flush(c);
    if (!c->closed && c->r.up != NULL && evbuffer_get_length(c->out) > DM_BUF_HIGH) {
        dm_upstream_pause(c->r.up);
        dm_conn_set_timer(c, c->gen->cfg->timeouts.body_ms);
    }
}

void dm_h1_on_upstream_writable(struct dm_conn *c)
{
    if (c->read_paused && evbuffer_get_length(c->in) <= DM_PIPELINE_MAX) {
        conn_resume_read(c);
    }
    if (c->state == DM_CONN_PROXY && !c->r.req_body_done && evbuffer_get_length(c->in) > 0) {
        conn_forward_body(c);
    }
}

void dm_h1_on_upstream_done(struct dm_conn *c, bool backend_reusable)
{
    conn_hold(c);
    struct dm_upstream_conn *u = c->r.up;
    c->r.up = NULL;
    dm_upstream_detach(u, backend_reusable && c->r.req_body_done);
    if (c->state == DM_CONN_TUNNEL) {
        dm_conn_finish(c);
        goto out;
    }
    dm_access_log(&c->r);
    if (!c->r.keep_alive || c->want_close) {
        dm_conn_finish(c);
        goto out;
    }
    c->state = DM_CONN_IDLE;
    dm_conn_set_timer(c, c->gen->cfg->timeouts.idle_ms);
    dm_conn_flush(c);
    if (!c->closed) {
        conn_resume_read(c);
        conn_process(c);
    }
    if (!c->closed && c->eof && c->state == DM_CONN_IDLE) {
        dm_conn_close(c);
    }
out:
    conn_release(c);
}

void dm_h1_on_upstream_error(struct dm_conn *c, int status, const char *why)
{
    conn_hold(c);
    struct dm_upstream_conn *u = c->r.up;
    c->r.up = NULL;
    dm_upstream_detach(u, false);
    if (c->state == DM_CONN_TUNNEL || c->r.resp_started) {
        /* Mid-response: the only honest signal left is to cut the connection. */
        DM_LOG_DBG("proxy", "c=%llu backend %s failed mid-response: %s", (unsigned long long)c->id,
                   c->r.backend ? c->r.backend : "-", why);
        if (c->state != DM_CONN_TUNNEL) {
            c->r.status = 502;
        }
        dm_conn_finish(c);
        goto out;
    }
    char body[64];
    snprintf(body, sizeof(body), "%d %s\n", status, dm_status_text(status));
    conn_respond(c, status, c->r.error_headers, body, !c->r.req_body_done);
    if (!c->closed && c->state == DM_CONN_IDLE) {
        conn_resume_read(c);
        conn_process(c);
    }
out:
    conn_release(c);
}
