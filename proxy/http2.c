/* HTTP/2 on client connections (RFC 9113): one nghttp2 server session per TLS
 * connection that negotiated h2, driven by nghttp2's callbacks. Each stream is
 * a struct dm_stream fed to the shared request path (request.c) and forwarded
 * to an HTTP/1.1 backend (upstream.c). Invariants: streams are freed only in
 * on_stream_close or when the connection closes, which both run from the
 * connection's own read/write events, never under a backend callback (backend
 * events only queue frames and schedule a flush). Flow control is tied to
 * backend backpressure: request DATA is acknowledged on the connection at
 * once but on the stream only as the backend takes it; a stream's response
 * reading stops above DM_BUF_HIGH of unsent bytes and resumes below
 * DM_BUF_LOW. Interim 1xx answers go out as non-final HEADERS; a WebSocket
 * over extended CONNECT (RFC 8441) becomes an HTTP/1.1 upgrade to the
 * backend and then a tunnel in the stream's DATA frames. See
 * docs/architecture.md, "HTTP/2". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <event2/buffer.h>
#include <nghttp2/nghttp2.h>
#include <openssl/base64.h>
#include <openssl/sha.h>

#include "proxy/core/log.h"
#include "proxy/core/str.h"
#include "proxy/core/time.h"
#include "proxy/h2_fields.h"
#include "proxy/proxy_int.h"

/* Frames produced per flush round before writing (bounds c->out). */
#define H2_OUT_HIGH (64 * 1024)
/* Connection-level receive window: request DATA is acknowledged on the
 * connection as it arrives (streams are bounded by their own windows), so a
 * large window only avoids WINDOW_UPDATE round trips. */
#define H2_CONN_WINDOW (1 << 24)
/* Stream-level receive window (the SETTINGS_INITIAL_WINDOW_SIZE we send):
 * the request body bytes a stream may have in flight beyond what its backend
 * took. */
#define H2_STREAM_WINDOW (256 * 1024)
/* Queued control frames (SETTINGS/PING ACKs, RST_STREAM) the peer may make us
 * owe before the session is treated as a flood (nghttp2 default 1000). */
#define H2_MAX_OUTBOUND_ACK 1000
/* Rapid reset (CVE-2023-44487): RST_STREAM frames a client may send per
 * window before GOAWAY ENHANCE_YOUR_CALM. */
#define H2_RESET_WINDOW_MS 10000
/* Finished streams a connection keeps for its next ones, with their
 * buffers: a busy HTTP/2 connection opens streams all the time, and each
 * new one would otherwise cost a handful of allocations. */
#if defined(__SANITIZE_ADDRESS__)
#define H2_STREAM_CACHE 0 /* ASan must see a freed stream's later use */
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define H2_STREAM_CACHE 0
#endif
#endif
#ifndef H2_STREAM_CACHE
#define H2_STREAM_CACHE 16
#endif
/* Response fields and name bytes that fit on the stack when a backend head
 * is turned into an HTTP/2 field list (nghttp2 copies them). */
#define H2_NVA_STACK   48
#define H2_NAMES_STACK 1024
/* Request trailer bytes kept for a chunked backend request. */
#define H2_MAX_REQ_TRAILERS 16384

struct h2_field {
    uint32_t name_off, name_len, value_off, value_len; /* into h2_stream.hbuf */
};

struct h2_span {
    uint32_t off, len;
    bool set;
};

struct h2_stream {
    struct dm_stream s; /* first: a dm_stream pointer is an h2_stream pointer */
    struct h2_stream *prev, *next;
    char *hbuf; /* owned: request header names and values, bounded by the header limits */
    size_t hbuf_len, hbuf_cap;
    struct h2_field *fields; /* owned */
    size_t num_fields, cap_fields;
    size_t header_list_bytes; /* RFC 9113 §6.5.2 accounting: name + value + 32 per field */
    struct h2_span method, scheme, authority, path, protocol, host;
    bool too_large;                /* the header list exceeded the limits: answer 431 */
    bool started;                  /* the request head went through the request path */
    bool req_chunked_out;          /* the body goes to the backend chunked */
    bool resp_ended;               /* the whole response body is in s.out */
    bool data_deferred;            /* the data provider returned NGHTTP2_ERR_DEFERRED */
    bool want_resume;              /* resume the backend after the flush (s.out drained) */
    size_t unconsumed;             /* request DATA bytes not yet acknowledged on the stream */
    struct evbuffer *req_trailers; /* owned: "name: value\r\n" lines, chunked uploads */
    /* A WebSocket over HTTP/2 (RFC 8441 extended CONNECT): the backend gets
     * an HTTP/1.1 upgrade; after its 101 the stream's DATA is the tunnel. */
    bool is_ws;
    bool tunnel_open;              /* the backend switched protocols: bytes flow both ways */
    bool client_ended;             /* the client's END_STREAM arrived on the tunnel */
    struct evbuffer *tunnel_early; /* owned: DATA that came before the backend's 101 */
    long ws_key_off;               /* the Sec-WebSocket-Key we sent, in hbuf (24 bytes) */
};

struct dm_h2 {
    nghttp2_session *session; /* owned */
    struct h2_stream *streams;
    int num_streams;
    struct h2_stream *spare; /* owned: finished streams for reuse (next-linked) */
    int num_spare;
    uint64_t reset_window_start_ms;
    uint32_t resets_in_window;
    bool goaway_sent;
    bool failed; /* a fatal session error: close after the flush */
};

static struct h2_stream *st_of(struct dm_stream *s)
{
    return (struct h2_stream *)s;
}

static void h2_schedule(struct dm_conn *c)
{
    dm_conn_schedule_flush(c);
}

/* ---- streams ---- */

static struct h2_stream *h2_stream_new(struct dm_conn *c, int32_t id)
{
    struct dm_h2 *h = c->h2;
    struct h2_stream *st = h->spare;
    if (st != NULL) {
        /* A spare keeps its (empty) output buffer and header storage. */
        h->spare = st->next;
        h->num_spare--;
        struct evbuffer *out = st->s.out;
        char *hbuf = st->hbuf;
        size_t hbuf_cap = st->hbuf_cap;
        struct h2_field *fields = st->fields;
        size_t cap_fields = st->cap_fields;
        memset(st, 0, sizeof(*st));
        st->s.out = out;
        st->hbuf = hbuf;
        st->hbuf_cap = hbuf_cap;
        st->fields = fields;
        st->cap_fields = cap_fields;
    } else {
        st = calloc(1, sizeof(*st));
        if (st == NULL) {
            return NULL;
        }
        st->s.out = evbuffer_new();
        if (st->s.out == NULL) {
            free(st);
            return NULL;
        }
    }
    st->s.c = c;
    st->s.h2_id = id;
    st->s.keep_alive = true;
    st->next = h->streams;
    if (st->next != NULL) {
        st->next->prev = st;
    }
    h->streams = st;
    h->num_streams++;
    return st;
}

static void h2_stream_destroy(struct h2_stream *st)
{
    evbuffer_free(st->s.out);
    free(st->hbuf);
    free(st->fields);
    free(st);
}

/* h2_stream_free unlinks and frees st; its backend connection is closed. */
static void h2_stream_free(struct dm_conn *c, struct h2_stream *st)
{
    if (st->s.up != NULL) {
        dm_upstream_detach(st->s.up, false);
        st->s.up = NULL;
    }
    if (st->started) {
        dm_access_log(&st->s);
    }
    if (st->prev != NULL) {
        st->prev->next = st->next;
    } else {
        c->h2->streams = st->next;
    }
    if (st->next != NULL) {
        st->next->prev = st->prev;
    }
    c->h2->num_streams--;
    if (st->s.trailers != NULL) {
        evbuffer_free(st->s.trailers);
    }
    if (st->req_trailers != NULL) {
        evbuffer_free(st->req_trailers);
    }
    if (st->tunnel_early != NULL) {
        evbuffer_free(st->tunnel_early);
    }
    struct dm_h2 *h = c->h2;
    size_t left = evbuffer_get_length(st->s.out);
    if (h->num_spare >= H2_STREAM_CACHE || h->failed || h->goaway_sent) {
        h2_stream_destroy(st);
        return;
    }
    if (left > 0) {
        evbuffer_drain(st->s.out, left); /* a reset stream's unsent response */
    }
    st->next = h->spare;
    h->spare = st;
    h->num_spare++;
}

/* hbuf_add copies p into the stream's header storage. Returns the offset, or
 * -1 when out of memory. The caller bounds the total with the header limits. */
static long hbuf_add(struct h2_stream *st, const void *p, size_t len)
{
    if (st->hbuf_cap - st->hbuf_len < len) {
        size_t cap = st->hbuf_cap ? st->hbuf_cap : 1024;
        while (cap - st->hbuf_len < len) {
            cap *= 2;
        }
        char *n = realloc(st->hbuf, cap);
        if (n == NULL) {
            return -1;
        }
        st->hbuf = n;
        st->hbuf_cap = cap;
    }
    memcpy(st->hbuf + st->hbuf_len, p, len);
    st->hbuf_len += len;
    return (long)(st->hbuf_len - len);
}

static int span_set(struct h2_stream *st, struct h2_span *sp, const uint8_t *v, size_t len)
{
    long off = hbuf_add(st, v, len);
    if (off < 0) {
        return -1;
    }
    sp->off = (uint32_t)off;
    sp->len = (uint32_t)len;
    sp->set = true;
    return 0;
}

static const char *span_ptr(const struct h2_stream *st, const struct h2_span *sp)
{
    return st->hbuf + sp->off;
}

/* ---- responses ---- */

static ssize_t h2_on_data_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                               size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                               void *user_data)
{
    (void)buf;
    (void)user_data;
    struct h2_stream *st = source->ptr;
    size_t avail = evbuffer_get_length(st->s.out);
    if (avail == 0 && !st->resp_ended) {
        st->data_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = avail < length ? avail : length;
    if (n > 0) {
        *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    }
    if (n == avail && st->resp_ended) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (st->s.trailers != NULL && evbuffer_get_length(st->s.trailers) > 0) {
            /* Trailers of a chunked backend response end the stream in a
             * HEADERS frame of their own (RFC 9113 §8.1). */
            nghttp2_nv nva[64];
            size_t num = dm_h2_fields_from_lines(st->s.trailers, nva, 64);
            if (num > 0 && nghttp2_submit_trailer(session, stream_id, nva, num) == 0) {
                *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            }
        }
    }
    return (ssize_t)n;
}

static int h2_on_send_data(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd,
                           size_t length, nghttp2_data_source *source, void *user_data)
{
    (void)session;
    struct dm_conn *c = user_data;
    struct h2_stream *st = source->ptr;
    evbuffer_add(c->out, framehd, 9);
    if (length > 0) {
        evbuffer_remove_buffer(st->s.out, c->out, length);
    }
    (void)frame; /* no padding: we never set a padding callback */
    if (st->s.up != NULL && evbuffer_get_length(st->s.out) < DM_BUF_LOW) {
        st->want_resume = true;
    }
    return 0;
}

/* nv_lower makes an nghttp2_nv whose name is lower-cased into dst (HTTP/2
 * field names are lower case, RFC 9113 §8.2.1); nghttp2 copies both. */
static nghttp2_nv nv_lower(char *dst, const char *name, size_t name_len, const char *value,
                           size_t value_len)
{
    for (size_t i = 0; i < name_len; i++) {
        char ch = name[i];
        dst[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    return (nghttp2_nv){(uint8_t *)dst, (uint8_t *)value, name_len, value_len,
                        NGHTTP2_NV_FLAG_NONE};
}

/* h2_submit_response queues the response head; the body (if any) comes from
 * s.out through the data provider. */
static int h2_submit_response(struct h2_stream *st, const nghttp2_nv *nva, size_t num,
                              bool has_body)
{
    struct dm_conn *c = st->s.c;
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = h2_on_data_read};
    int rv = nghttp2_submit_response(c->h2->session, st->s.h2_id, nva, num, has_body ? &prd : NULL);
    h2_schedule(c);
    return rv;
}

void dm_h2_respond(struct dm_stream *s, int status, const char *content_type,
                   const char *extra_headers, const char *body)
{
    struct h2_stream *st = st_of(s);
    struct dm_conn *c = s->c;
    if (s->resp_started) {
        nghttp2_submit_rst_stream(c->h2->session, NGHTTP2_FLAG_NONE, s->h2_id,
                                  NGHTTP2_INTERNAL_ERROR);
        h2_schedule(c);
        return;
    }
    size_t body_len = strlen(body);
    s->status = status;
    s->resp_started = true;
    s->resp_bytes = body_len;
    st->resp_ended = true;
    if (!s->is_head) {
        evbuffer_add(s->out, body, body_len);
    }
    char status_s[8], len_s[24];
    snprintf(status_s, sizeof(status_s), "%d", status);
    snprintf(len_s, sizeof(len_s), "%zu", body_len);
    nghttp2_nv nva[8];
    char names[4][64];
    size_t num = 0;
    nva[num++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status_s, 7, strlen(status_s),
                              NGHTTP2_NV_FLAG_NONE};
    nva[num++] = (nghttp2_nv){(uint8_t *)"content-type", (uint8_t *)content_type, 12,
                              strlen(content_type), NGHTTP2_NV_FLAG_NONE};
    nva[num++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)len_s, 14, strlen(len_s),
                              NGHTTP2_NV_FLAG_NONE};
    /* Extra fields come as "Name: value\r\n" lines (a redirect's Location). */
    const char *p = extra_headers;
    for (size_t k = 0; p != NULL && *p != '\0' && k < 4; k++) {
        const char *eol = strstr(p, "\r\n");
        const char *colon = strchr(p, ':');
        if (eol == NULL || colon == NULL || colon > eol || (size_t)(colon - p) > sizeof(names[k])) {
            break;
        }
        const char *v = colon + 1;
        while (*v == ' ') {
            v++;
        }
        nva[num++] = nv_lower(names[k], p, (size_t)(colon - p), v, (size_t)(eol - v));
        p = eol + 2;
    }
    if (h2_submit_response(st, nva, num, body_len > 0 && !s->is_head) != 0) {
        nghttp2_submit_rst_stream(c->h2->session, NGHTTP2_FLAG_NONE, s->h2_id,
                                  NGHTTP2_INTERNAL_ERROR);
    }
}

/* ---- backend events ---- */

/* A response head as an HTTP/2 field list. nghttp2 copies the fields when
 * they are submitted, so they live on the caller's stack unless the head is
 * unusually large. */
struct h2_nva {
    nghttp2_nv *nva; /* nva_stack or owned */
    char *names;     /* names_stack or owned: lower-cased names */
    nghttp2_nv nva_stack[H2_NVA_STACK];
    char names_stack[H2_NAMES_STACK];
};

static void h2_nva_release(struct h2_nva *v)
{
    if (v->nva != v->nva_stack) {
        free(v->nva);
    }
    if (v->names != v->names_stack) {
        free(v->names);
    }
}

/* h2_head_nva fills v with the field list of a backend response head:
 * :status, then the fields that may go to an HTTP/2 client. Release v with
 * h2_nva_release. Returns the count, or 0 when out of memory. */
static size_t h2_head_nva(struct h2_nva *v, const struct dm_http1_msg *resp, const char *status_s,
                          bool is_tunnel)
{
    size_t num = 1, names_len = 0;
    for (size_t i = 0; i < resp->num_headers; i++) {
        names_len += resp->headers[i].name_len;
    }
    v->nva = resp->num_headers + 1 <= H2_NVA_STACK
                 ? v->nva_stack
                 : malloc((resp->num_headers + 1) * sizeof(*v->nva));
    v->names = names_len + 1 <= H2_NAMES_STACK ? v->names_stack : malloc(names_len + 1);
    if (v->nva == NULL || v->names == NULL) {
        h2_nva_release(v);
        return 0;
    }
    nghttp2_nv *nva = v->nva;
    nva[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status_s, 7, strlen(status_s),
                          NGHTTP2_NV_FLAG_NONE};
    char *np = v->names;
    for (size_t i = 0; i < resp->num_headers; i++) {
        const struct dm_http1_header *h = &resp->headers[i];
        if (!dm_resp_header_forwarded(h, resp)) {
            continue; /* connection-specific fields never go out (RFC 9113 §8.2.2) */
        }
        if (is_tunnel && dm_str_ieq_lit(h->name, h->name_len, "sec-websocket-accept")) {
            continue; /* answers our key; RFC 8441 §5 has no accept field */
        }
        nva[num++] = nv_lower(np, h->name, h->name_len, h->value, h->value_len);
        np += h->name_len;
    }
    return num;
}

/* h2_relay_interim sends a backend's interim response (1xx other than 101)
 * as a HEADERS frame without END_STREAM before the final one (RFC 9113
 * §8.1): 103 Early Hints with its Link fields, 100 Continue only to a client
 * that asked for it (as for HTTP/1.1), other 1xx as they come. */
static void h2_relay_interim(struct h2_stream *st, const struct dm_http1_msg *resp)
{
    struct dm_stream *s = &st->s;
    struct dm_conn *c = s->c;
    if (s->resp_started || (resp->status == 100 && !s->msg.expect_continue)) {
        return;
    }
    char status_s[8];
    snprintf(status_s, sizeof(status_s), "%d", resp->status);
    struct h2_nva nv;
    size_t num = h2_head_nva(&nv, resp, status_s, false);
    if (num == 0) {
        return; /* interim answers are optional: drop it */
    }
    if (nghttp2_submit_headers(c->h2->session, NGHTTP2_FLAG_NONE, s->h2_id, NULL, nv.nva, num,
                               NULL) < 0) {
        DM_LOG_DBG("http2", "c=%llu stream=%d: cannot relay %d", (unsigned long long)c->id,
                   (int)s->h2_id, resp->status);
    }
    h2_nva_release(&nv);
    h2_schedule(c);
}

static void h2_consume(struct h2_stream *st);

/* h2_tunnel_open answers a WebSocket stream whose backend sent 101: :status
 * 200 and no END_STREAM (RFC 8441 §5), the 101's end-to-end fields
 * (Sec-WebSocket-Protocol, -Extensions, ...) kept. From here the stream's
 * DATA and the backend connection's bytes are one tunnel, with the same
 * backpressure as bodies: the backend is paused while the client is slow
 * (dm_h2_on_upstream_data), and client DATA is acknowledged only as the
 * backend takes it (h2_consume). */
/* h2_ws_accept_ok checks the backend's Sec-WebSocket-Accept against the key
 * doorman sent (RFC 6455 §4.2.2): doorman is the WebSocket client towards
 * the backend, and a wrong answer means the backend did not understand the
 * handshake (or something in between answered). */
static bool h2_ws_accept_ok(const struct h2_stream *st, const struct dm_http1_msg *resp)
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    uint8_t digest[SHA_DIGEST_LENGTH];
    SHA_CTX sha;
    SHA1_Init(&sha);
    SHA1_Update(&sha, st->hbuf + st->ws_key_off, 24);
    SHA1_Update(&sha, guid, sizeof(guid) - 1);
    SHA1_Final(digest, &sha);
    uint8_t want[32];
    size_t want_len = EVP_EncodeBlock(want, digest, sizeof(digest));
    for (size_t i = 0; i < resp->num_headers; i++) {
        const struct dm_http1_header *h = &resp->headers[i];
        if (dm_str_ieq_lit(h->name, h->name_len, "sec-websocket-accept")) {
            return h->value_len == want_len && memcmp(h->value, want, want_len) == 0;
        }
    }
    return false;
}

static void h2_tunnel_open(struct h2_stream *st, const struct dm_http1_msg *resp,
                           struct evbuffer *resp_buf, size_t head_len)
{
    struct dm_stream *s = &st->s;
    if (!h2_ws_accept_ok(st, resp)) {
        evbuffer_drain(resp_buf, head_len);
        dm_stream_on_upstream_error(s, 502,
                                    "backend's Sec-WebSocket-Accept does not answer our key");
        return;
    }
    struct h2_nva nv;
    size_t num = h2_head_nva(&nv, resp, "200", true);
    if (num == 0) {
        evbuffer_drain(resp_buf, head_len);
        dm_h2_on_upstream_error(s, 502, "out of memory");
        return;
    }
    s->status = 200;
    s->resp_started = true;
    st->tunnel_open = true;
    int rv = h2_submit_response(st, nv.nva, num, true);
    h2_nva_release(&nv);
    evbuffer_drain(resp_buf, head_len); /* after: the field values point into it */
    if (rv != 0) {
        dm_h2_on_upstream_error(s, 502, "cannot submit the response");
        return;
    }
    struct evbuffer *out = dm_upstream_output(s->up);
    if (st->tunnel_early != NULL && out != NULL) {
        evbuffer_add_buffer(out, st->tunnel_early);
        dm_upstream_kick(s->up);
    }
    if (st->client_ended && s->up != NULL) {
        dm_upstream_shutdown_write(s->up);
    }
    h2_consume(st);
}

/* h2_tunnel_data takes client DATA of a WebSocket stream: to the backend once
 * the tunnel is open; kept (and not acknowledged, so bounded by the stream
 * window) while the backend has not answered; dropped after a refusal. */
static void h2_tunnel_data(struct h2_stream *st, const uint8_t *data, size_t len)
{
    struct dm_stream *s = &st->s;
    struct dm_conn *c = s->c;
    struct evbuffer *out = st->tunnel_open && s->up != NULL ? dm_upstream_output(s->up) : NULL;
    if (out != NULL) {
        evbuffer_add(out, data, len);
        st->unconsumed += len;
        dm_upstream_kick(s->up);
        h2_consume(st);
        return;
    }
    if (!s->resp_started && s->up != NULL) {
        if (st->tunnel_early == NULL && (st->tunnel_early = evbuffer_new()) == NULL) {
            nghttp2_submit_rst_stream(c->h2->session, NGHTTP2_FLAG_NONE, s->h2_id,
                                      NGHTTP2_INTERNAL_ERROR);
            h2_schedule(c);
            return;
        }
        evbuffer_add(st->tunnel_early, data, len);
        st->unconsumed += len;
        return;
    }
    nghttp2_session_consume_stream(c->h2->session, s->h2_id, len);
}

void dm_h2_on_upstream_head(struct dm_stream *s, const struct dm_http1_msg *resp,
                            struct evbuffer *resp_buf, size_t head_len)
{
    struct h2_stream *st = st_of(s);
    struct dm_conn *c = s->c;
    if (resp->status >= 100 && resp->status < 200) {
        if (resp->status != 101) {
            h2_relay_interim(st, resp);
            evbuffer_drain(resp_buf, head_len);
            return;
        }
        if (st->is_ws) {
            h2_tunnel_open(st, resp, resp_buf, head_len);
            return;
        }
        /* A 101 answers only an upgrade, which an HTTP/2 request asks for
         * only through extended CONNECT (RFC 9113 §8.6, RFC 8441). */
        evbuffer_drain(resp_buf, head_len);
        struct dm_upstream_conn *u = s->up;
        s->up = NULL;
        dm_upstream_detach(u, false);
        s->status = 502;
        nghttp2_submit_rst_stream(c->h2->session, NGHTTP2_FLAG_NONE, s->h2_id,
                                  NGHTTP2_INTERNAL_ERROR);
        h2_schedule(c);
        return;
    }
    if (st->is_ws && resp->status < 300) {
        /* A 2xx to extended CONNECT means "tunnel open" (RFC 8441 §5); the
         * backend answered the upgrade with a plain response instead. */
        evbuffer_drain(resp_buf, head_len);
        DM_LOG_DBG("http2", "c=%llu stream=%d: backend answered a WebSocket upgrade with %d",
                   (unsigned long long)c->id, (int)s->h2_id, resp->status);
        dm_h2_on_upstream_error(s, 502, "backend did not switch protocols");
        return;
    }
    s->status = resp->status;
    s->resp_started = true;
    if (st->tunnel_early != NULL) {
        /* The backend refused the WebSocket: its answer is final, and what
         * the client sent ahead goes nowhere. */
        evbuffer_drain(st->tunnel_early, evbuffer_get_length(st->tunnel_early));
        h2_consume(st);
    }
    /* Statuses are three digits (the parsers check): no printf per response. */
    int code = resp->status >= 100 && resp->status <= 999 ? resp->status : 502;
    char status_s[4] = {(char)('0' + code / 100), (char)('0' + code / 10 % 10),
                        (char)('0' + code % 10), '\0'};
    struct h2_nva nv;
    size_t num = h2_head_nva(&nv, resp, status_s, false);
    if (num == 0) {
        evbuffer_drain(resp_buf, head_len);
        s->resp_started = false;
        dm_h2_on_upstream_error(s, 502, "out of memory");
        return;
    }
    bool has_body = !s->is_head && resp->body != DM_HTTP1_BODY_NONE;
    if (resp->body == DM_HTTP1_BODY_CHUNKED) {
        s->dechunk = true;
        s->trailers = evbuffer_new();
    }
    int rv = h2_submit_response(st, nv.nva, num, has_body);
    h2_nva_release(&nv);
    evbuffer_drain(resp_buf, head_len);
    if (rv != 0) {
        dm_h2_on_upstream_error(s, 502, "cannot submit the response");
    }
}

void dm_h2_on_upstream_data(struct dm_stream *s)
{
    struct h2_stream *st = st_of(s);
    struct dm_conn *c = s->c;
    if (st->data_deferred) {
        st->data_deferred = false;
        nghttp2_session_resume_data(c->h2->session, s->h2_id);
    }
    if (s->up != NULL && evbuffer_get_length(s->out) > DM_BUF_HIGH) {
        /* A slow reader of this stream stops only its own backend. */
        dm_upstream_pause(s->up);
    }
    h2_schedule(c);
}

void dm_h2_on_upstream_done(struct dm_stream *s, bool backend_reusable)
{
    struct h2_stream *st = st_of(s);
    struct dm_upstream_conn *u = s->up;
    s->up = NULL;
    dm_upstream_detach(u, backend_reusable && s->req_body_done && !st->is_ws);
    st->resp_ended = true;
    if (st->data_deferred) {
        st->data_deferred = false;
        nghttp2_session_resume_data(s->c->h2->session, s->h2_id);
    }
    h2_schedule(s->c);
}

void dm_h2_on_upstream_error(struct dm_stream *s, int status, const char *why)
{
    struct dm_upstream_conn *u = s->up;
    s->up = NULL;
    dm_upstream_detach(u, false);
    if (s->resp_started) {
        /* Mid-response: resetting the stream is the only honest signal. */
        DM_LOG_DBG("proxy", "c=%llu stream=%d backend %s failed mid-response: %s",
                   (unsigned long long)s->c->id, (int)s->h2_id, s->backend ? s->backend : "-", why);
        nghttp2_submit_rst_stream(s->c->h2->session, NGHTTP2_FLAG_NONE, s->h2_id,
                                  NGHTTP2_INTERNAL_ERROR);
        h2_schedule(s->c);
        return;
    }
    char body[64];
    snprintf(body, sizeof(body), "%d %s\n", status, dm_status_text(status));
    dm_h2_respond(s, status, "text/plain; charset=utf-8", s->error_headers, body);
}

/* h2_consume acknowledges request DATA the backend has taken (stream-level
 * WINDOW_UPDATE), while its output is below the high mark. */
static void h2_consume(struct h2_stream *st)
{
    struct dm_conn *c = st->s.c;
    if (st->unconsumed == 0) {
        return;
    }
    if (st->s.up != NULL && dm_upstream_output_len(st->s.up) > DM_BUF_HIGH) {
        return;
    }
    nghttp2_session_consume_stream(c->h2->session, st->s.h2_id, st->unconsumed);
    st->unconsumed = 0;
    h2_schedule(c);
}

void dm_h2_on_upstream_writable(struct dm_stream *s)
{
    h2_consume(st_of(s));
}

/* ---- requests ---- */

/* h2_body_end ends the request body towards the backend. */
static void h2_body_end(struct h2_stream *st)
{
    struct dm_stream *s = &st->s;
    if (st->is_ws) {
        /* END_STREAM on a tunnel is the client's FIN (RFC 8441 §5): the
         * backend gets one once it has the bytes before it. */
        st->client_ended = true;
        if (st->tunnel_open && s->up != NULL) {
            dm_upstream_shutdown_write(s->up);
        }
        return;
    }
    if (s->req_body_done) {
        return;
    }
    s->req_body_done = true;
    if (s->up == NULL) {
        return;
    }
    struct evbuffer *out = dm_upstream_output(s->up);
    if (out != NULL && st->req_chunked_out) {
        evbuffer_add(out, "0\r\n", 3);
        if (st->req_trailers != NULL) {
            evbuffer_add_buffer(out, st->req_trailers);
        }
        evbuffer_add(out, "\r\n", 2);
    }
    dm_upstream_request_done(s->up);
    dm_upstream_kick(s->up);
}

/* h2_ws_key stores a fresh Sec-WebSocket-Key (RFC 6455 §4.1: 16 random bytes,
 * base64, 24 characters) in the stream's header storage. Returns its offset,
 * or -1. */
static long h2_ws_key(struct h2_stream *st)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t raw[18] = {0}; /* 16 random bytes, two zero bytes of padding */
    if (getrandom(raw, 16, GRND_NONBLOCK) != 16) {
        return -1;
    }
    char key[24];
    for (size_t i = 0, o = 0; i < 18; i += 3, o += 4) {
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        key[o] = b64[v >> 18 & 63];
        key[o + 1] = b64[v >> 12 & 63];
        key[o + 2] = b64[v >> 6 & 63];
        key[o + 3] = b64[v & 63];
    }
    key[22] = key[23] = '=';
    return hbuf_add(st, key, sizeof(key));
}

/* h2_start_request turns the stream's pseudo-headers and fields into a
 * request head (RFC 9113 §8.3.1) and runs the shared request path. */
static void h2_start_request(struct h2_stream *st, bool end_stream)
{
    struct dm_stream *s = &st->s;
    struct dm_conn *c = s->c;
    struct dm_http1_msg *m = &s->msg;
    st->started = true;
    memset(m, 0, sizeof(*m));
    m->known = (struct dm_http1_known){-1, -1, -1, -1, -1, -1};
    m->headers = c->w->req_fields;
    m->version_minor = 1;
    m->keep_alive = true;
    static const char dash[] = "-";
    m->method = st->method.set ? span_ptr(st, &st->method) : dash;
    m->method_len = st->method.set ? st->method.len : 1;
    m->target = st->path.set ? span_ptr(st, &st->path) : dash;
    m->target_len = st->path.set ? st->path.len : 1;
    dm_stream_begin(s);
    if (st->too_large) {
        dm_h2_respond(s, 431, "text/plain; charset=utf-8", NULL,
                      "431 Request Header Fields Too Large\n");
        return;
    }
    if (st->method.set && st->method.len == 7 &&
        memcmp(span_ptr(st, &st->method), "CONNECT", 7) == 0) {
        /* Extended CONNECT for WebSockets (RFC 8441) goes to the backend as
         * an HTTP/1.1 upgrade; plain CONNECT tunnels and other protocols are
         * not supported. nghttp2 accepts :protocol only because we sent
         * SETTINGS_ENABLE_CONNECT_PROTOCOL, and requires :scheme and :path
         * with it. */
        if (!st->protocol.set ||
            !dm_str_ieq_lit(span_ptr(st, &st->protocol), st->protocol.len, "websocket")) {
            dm_h2_respond(s, 501, "text/plain; charset=utf-8", NULL, "501 Not Implemented\n");
            return;
        }
        st->is_ws = true;
    }
    /* :authority is preferred; a Host that names something else, or neither
     * of them, makes the request malformed (RFC 9113 §8.3.1). */
    const struct h2_span *auth = st->authority.set ? &st->authority : &st->host;
    if (!auth->set || auth->len == 0 || !st->path.set ||
        (st->authority.set && st->host.set &&
         !dm_str_ieq(span_ptr(st, &st->authority), st->authority.len, span_ptr(st, &st->host),
                     st->host.len))) {
        dm_h2_respond(s, 400, "text/plain; charset=utf-8", NULL, "400 Bad Request\n");
        return;
    }
    /* Fields in order, cookie crumbs joined with "; " (RFC 9113 §8.2.3), and
     * the authority as Host. h2_on_header kept num_fields + 2 below the
     * field limit, which is also the capacity of w->req_fields. */
    size_t cookie_off = 0, cookie_len = 0;
    bool has_cookie = false;
    int64_t content_length = -1;
    bool announces_trailers = false;
    for (size_t i = 0; i < st->num_fields; i++) {
        const struct h2_field *f = &st->fields[i];
        const char *name = st->hbuf + f->name_off;
        const char *value = st->hbuf + f->value_off;
        if (dm_str_ieq_lit(name, f->name_len, "cookie")) {
            long off = hbuf_add(st, has_cookie ? "; " : "", has_cookie ? 2 : 0);
            long voff = hbuf_add(st, st->hbuf + f->value_off, f->value_len);
            if (off < 0 || voff < 0) {
                dm_h2_respond(s, 431, "text/plain; charset=utf-8", NULL,
                              "431 Request Header Fields Too Large\n");
                return;
            }
            if (!has_cookie) {
                cookie_off = (size_t)voff;
            }
            cookie_len += (has_cookie ? 2 : 0) + f->value_len;
            has_cookie = true;
            continue;
        }
        if (dm_str_ieq_lit(name, f->name_len, "expect")) {
            /* Forwarded as is; the backend's 100 is relayed (h2_relay_interim). */
            m->expect_continue |= dm_str_ieq_lit(value, f->value_len, "100-continue");
        }
        announces_trailers |= dm_str_ieq_lit(name, f->name_len, "trailer");
        if (dm_str_ieq_lit(name, f->name_len, "content-length")) {
            char num[24];
            size_t n = f->value_len < sizeof(num) - 1 ? f->value_len : sizeof(num) - 1;
            memcpy(num, value, n);
            num[n] = '\0';
            content_length = strtoll(num, NULL, 10); /* nghttp2 checked the syntax */
        }
    }
    long ws_key_off = -1;
    if (st->is_ws && (st->ws_key_off = ws_key_off = h2_ws_key(st)) < 0) {
        /* Out of memory, or no entropy yet (early boot). */
        dm_h2_respond(s, 503, "text/plain; charset=utf-8", NULL, "503 Service Unavailable\n");
        return;
    }
    /* hbuf may have moved while cookies were joined: point into it now. */
    bool has_ws_version = false;
    for (size_t i = 0; i < st->num_fields; i++) {
        const struct h2_field *f = &st->fields[i];
        const char *name = st->hbuf + f->name_off;
        if (dm_str_ieq_lit(name, f->name_len, "cookie")) {
            continue;
        }
        if (st->is_ws && dm_str_ieq_lit(name, f->name_len, "sec-websocket-key")) {
            continue; /* ours replaces it: the backend answers the key we sent */
        }
        has_ws_version |= dm_str_ieq_lit(name, f->name_len, "sec-websocket-version");
        m->headers[m->num_headers++] =
            (struct dm_http1_header){name, f->name_len, st->hbuf + f->value_off, f->value_len};
    }
    if (has_cookie) {
        m->headers[m->num_headers++] =
            (struct dm_http1_header){"cookie", 6, st->hbuf + cookie_off, cookie_len};
    }
    m->known.host = (int)m->num_headers;
    m->headers[m->num_headers++] =
        (struct dm_http1_header){"host", 4, span_ptr(st, auth), auth->len};
    m->method = span_ptr(st, &st->method);
    m->target = span_ptr(st, &st->path);
    if (st->is_ws) {
        /* RFC 8441 §5 in reverse: GET with Upgrade and a key of our own
         * (the Connection and Upgrade lines come from m->is_upgrade). */
        if (m->num_headers + 3 > DM_MAX_HEADERS_CAP) {
            dm_h2_respond(s, 431, "text/plain; charset=utf-8", NULL,
                          "431 Request Header Fields Too Large\n");
            return;
        }
        m->headers[m->num_headers++] =
            (struct dm_http1_header){"sec-websocket-key", 17, st->hbuf + ws_key_off, 24};
        if (!has_ws_version) {
            m->headers[m->num_headers++] =
                (struct dm_http1_header){"sec-websocket-version", 21, "13", 2};
        }
        m->known.upgrade = (int)m->num_headers;
        m->headers[m->num_headers++] = (struct dm_http1_header){"upgrade", 7, "websocket", 9};
        m->is_upgrade = true;
        m->method = "GET";
        m->method_len = 3;
    }
    if (st->is_ws) {
        m->body = DM_HTTP1_BODY_NONE; /* the stream's DATA is the tunnel, after the 101 */
    } else if (end_stream) {
        m->body = DM_HTTP1_BODY_NONE;
    } else if (content_length >= 0 && !announces_trailers) {
        /* With a Trailer field the body goes out chunked even though its
         * length is known: only a chunked body carries trailers to an
         * HTTP/1.1 backend (and upstream_h2.c turns them into HEADERS). */
        m->body = content_length > 0 ? DM_HTTP1_BODY_LENGTH : DM_HTTP1_BODY_NONE;
        m->content_length = (uint64_t)content_length;
    } else {
        m->body = DM_HTTP1_BODY_CHUNKED;
    }
    s->req_body_left = m->body == DM_HTTP1_BODY_LENGTH ? m->content_length : 0;
    st->req_chunked_out = m->body == DM_HTTP1_BODY_CHUNKED;
    if (end_stream || m->body == DM_HTTP1_BODY_NONE) {
        s->req_body_done = end_stream || st->is_ws;
    }

    struct evbuffer *hb = evbuffer_new();
    if (hb == NULL) {
        nghttp2_submit_rst_stream(c->h2->session, NGHTTP2_FLAG_NONE, s->h2_id,
                                  NGHTTP2_INTERNAL_ERROR);
        return;
    }
    const struct cfg_addr *addr = NULL;
    int rc = dm_request_prepare(s, 0, hb, &addr);
    if (rc <= 0) {
        evbuffer_free(hb);
        return;
    }
    if (dm_upstream_start(s, addr, hb) != 0) {
        evbuffer_free(hb);
        dm_h2_respond(s, 502, "text/plain; charset=utf-8", NULL, "502 Bad Gateway\n");
        return;
    }
    evbuffer_free(hb);
    if (s->req_body_done) {
        dm_upstream_request_done(s->up);
    }
    dm_upstream_kick(s->up);
}

/* ---- nghttp2 callbacks ---- */

static int h2_on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame,
                               void *user_data)
{
    struct dm_conn *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0;
    }
    struct h2_stream *st = h2_stream_new(c, frame->hd.stream_id);
    if (st == NULL) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, st);
    return 0;
}

static int h2_on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *user_data)
{
    (void)flags;
    struct dm_conn *c = user_data;
    struct h2_stream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (st == NULL || frame->hd.type != NGHTTP2_HEADERS) {
        return 0;
    }
    if (frame->headers.cat == NGHTTP2_HCAT_HEADERS) {
        /* Request trailers: passed on when the body goes out chunked. */
        if (!st->req_chunked_out || (namelen > 0 && name[0] == ':')) {
            return 0;
        }
        if (st->req_trailers == NULL && (st->req_trailers = evbuffer_new()) == NULL) {
            return 0;
        }
        if (evbuffer_get_length(st->req_trailers) + namelen + valuelen + 4 <= H2_MAX_REQ_TRAILERS) {
            evbuffer_add(st->req_trailers, name, namelen);
            evbuffer_add(st->req_trailers, ": ", 2);
            evbuffer_add(st->req_trailers, value, valuelen);
            evbuffer_add(st->req_trailers, "\r\n", 2);
        }
        return 0;
    }
    if (st->too_large) {
        return 0;
    }
    /* The same limits as HTTP/1.1 heads: field count and total size, the
     * size counted as RFC 9113 §6.5.2 does (name + value + 32 per field). */
    st->header_list_bytes += namelen + valuelen + 32;
    const struct dm_http1_limits *lim = &c->gen->req_limits;
    if (st->header_list_bytes > lim->max_header_bytes || st->num_fields + 2 >= lim->max_headers) {
        st->too_large = true;
        return 0;
    }
    if (namelen > 0 && name[0] == ':') {
        struct h2_span *sp = NULL;
        if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
            sp = &st->method;
        } else if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
            sp = &st->path;
        } else if (namelen == 10 && memcmp(name, ":authority", 10) == 0) {
            sp = &st->authority;
        } else if (namelen == 7 && memcmp(name, ":scheme", 7) == 0) {
            sp = &st->scheme;
        } else if (namelen == 9 && memcmp(name, ":protocol", 9) == 0) {
            sp = &st->protocol;
        }
        if (sp != NULL && span_set(st, sp, value, valuelen) != 0) {
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        return 0;
    }
    if (namelen == 4 && memcmp(name, "host", 4) == 0) {
        if (span_set(st, &st->host, value, valuelen) != 0) {
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        return 0; /* replaced by the authority */
    }
    if (st->num_fields == st->cap_fields) {
        size_t cap = st->cap_fields ? st->cap_fields * 2 : 16;
        struct h2_field *f = realloc(st->fields, cap * sizeof(*f));
        if (f == NULL) {
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        st->fields = f;
        st->cap_fields = cap;
    }
    long no = hbuf_add(st, name, namelen);
    long vo = hbuf_add(st, value, valuelen);
    if (no < 0 || vo < 0) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    st->fields[st->num_fields++] =
        (struct h2_field){(uint32_t)no, (uint32_t)namelen, (uint32_t)vo, (uint32_t)valuelen};
    return 0;
}

static void h2_count_reset(struct dm_conn *c)
{
    struct dm_h2 *h = c->h2;
    uint64_t now = dm_time_mono_us() / 1000;
    if (now - h->reset_window_start_ms >= H2_RESET_WINDOW_MS) {
        h->reset_window_start_ms = now;
        h->resets_in_window = 0;
    }
    if (++h->resets_in_window > c->gen->cfg->http2.max_resets && !h->goaway_sent) {
        dm_log(DM_LOG_WARN, "http2", "c=%llu %s: %u stream resets in %d s: GOAWAY",
               (unsigned long long)c->id, c->peer_ip, h->resets_in_window,
               H2_RESET_WINDOW_MS / 1000);
        h->goaway_sent = true;
        nghttp2_session_terminate_session(h->session, NGHTTP2_ENHANCE_YOUR_CALM);
    }
}

static int h2_on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct dm_conn *c = user_data;
    struct h2_stream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (st == NULL) {
            break;
        }
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            h2_start_request(st, end_stream);
        } else if (end_stream) {
            h2_body_end(st); /* after trailers */
        }
        break;
    case NGHTTP2_DATA:
        if (st != NULL && end_stream) {
            h2_body_end(st);
        }
        break;
    case NGHTTP2_RST_STREAM:
        h2_count_reset(c);
        break;
    default:
        break;
    }
    return 0;
}

static int h2_on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                                 const uint8_t *data, size_t len, void *user_data)
{
    (void)flags;
    (void)user_data;
    struct h2_stream *st = nghttp2_session_get_stream_user_data(session, stream_id);
    /* The connection window reopens at once: each stream is bounded by its
     * own window, so one slow backend cannot stall the others. */
    nghttp2_session_consume_connection(session, len);
    if (st == NULL) {
        return 0;
    }
    if (st->is_ws) {
        h2_tunnel_data(st, data, len);
        return 0;
    }
    struct dm_stream *s = &st->s;
    struct evbuffer *out = s->up != NULL && !s->req_body_done ? dm_upstream_output(s->up) : NULL;
    if (out == NULL) {
        nghttp2_session_consume_stream(session, stream_id, len); /* answered already: drop */
        return 0;
    }
    if (st->req_chunked_out) {
        evbuffer_add_printf(out, "%zx\r\n", len);
        evbuffer_add(out, data, len);
        evbuffer_add(out, "\r\n", 2);
    } else {
        evbuffer_add(out, data, len);
    }
    st->unconsumed += len;
    /* Write first: the window reopens for what the backend took, and a
     * write that empties the buffer at once brings no writable event. */
    dm_upstream_kick(s->up);
    h2_consume(st);
    return 0;
}

/* h2_on_frame_send: once the response is complete, a request whose client
 * has not finished sending (a refusal before the body, a tunnel the backend
 * closed) would keep its stream, and a concurrent-stream slot, until the
 * client ends it. RFC 9113 §8.1 lets the server end it with RST_STREAM
 * NO_ERROR. */
static int h2_on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    (void)user_data;
    if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0 &&
        (frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
        nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id) == 0) {
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int h2_on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                              void *user_data)
{
    (void)error_code;
    struct dm_conn *c = user_data;
    struct h2_stream *st = nghttp2_session_get_stream_user_data(session, stream_id);
    if (st == NULL) {
        return 0;
    }
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    if (!st->s.resp_started || !st->resp_ended) {
        st->s.status = st->s.status ? st->s.status : 499; /* reset before the end */
    }
    h2_stream_free(c, st);
    if (c->h2->num_streams == 0) {
        dm_conn_set_timer(c, c->gen->cfg->timeouts.idle_ms);
    }
    return 0;
}

/* ---- the session ---- */

int dm_h2_start(struct dm_conn *c)
{
    const struct cfg *cfg = c->gen->cfg;
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_option *opt = NULL;
    struct dm_h2 *h = calloc(1, sizeof(*h));
    int rc = -1;
    if (h == NULL || nghttp2_session_callbacks_new(&cbs) != 0 || nghttp2_option_new(&opt) != 0) {
        goto out;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, h2_on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, h2_on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2_on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2_on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2_on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, h2_on_frame_send);
    nghttp2_session_callbacks_set_send_data_callback(cbs, h2_on_send_data);
    /* WINDOW_UPDATEs follow what the backends take (h2_consume). */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_outbound_ack(opt, H2_MAX_OUTBOUND_ACK);
    nghttp2_option_set_max_settings(opt, 32);
    /* Streams closed by the client are forgotten at once: a client cannot
     * make us keep state for them (rapid reset is counted separately). */
    nghttp2_option_set_no_closed_streams(opt, 1);
    if (nghttp2_session_server_new2(&h->session, cbs, c, opt) != 0) {
        h->session = NULL;
        goto out;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->http2.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, cfg->limits.max_header_bytes},
        /* WebSockets over HTTP/2 (RFC 8441): lets clients send :protocol. */
        {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
    };
    if (nghttp2_submit_settings(h->session, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) !=
            0 ||
        nghttp2_session_set_local_window_size(h->session, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW) !=
            0) {
        goto out;
    }
    c->h2 = h;
    h = NULL;
    rc = 0;
out:
    if (h != NULL) {
        nghttp2_session_del(h->session);
        free(h);
    }
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    return rc;
}

void dm_h2_on_input(struct dm_conn *c)
{
    struct dm_h2 *h = c->h2;
    size_t len = evbuffer_get_length(c->in);
    if (len == 0 || h->failed) {
        return;
    }
    dm_conn_set_timer(c, h->num_streams > 0 ? c->gen->cfg->timeouts.body_ms
                                            : c->gen->cfg->timeouts.idle_ms);
    while ((len = evbuffer_get_length(c->in)) > 0) {
        struct evbuffer_iovec vec;
        evbuffer_peek(c->in, -1, NULL, &vec, 1);
        ssize_t n = nghttp2_session_mem_recv(h->session, vec.iov_base, vec.iov_len);
        if (n < 0) {
            DM_LOG_DBG("http2", "c=%llu %s: %s", (unsigned long long)c->id, c->peer_ip,
                       nghttp2_strerror((int)n));
            evbuffer_drain(c->in, len);
            if (n != NGHTTP2_ERR_FLOODED) {
                /* Say why before closing, when the session still can. */
                nghttp2_session_terminate_session(h->session, NGHTTP2_PROTOCOL_ERROR);
                dm_h2_produce(c);
            }
            h->failed = true;
            break;
        }
        evbuffer_drain(c->in, (size_t)n);
    }
    if (h->failed) {
        dm_conn_finish(c); /* flushes what is queued, then closes */
        return;
    }
    h2_schedule(c);
}

bool dm_h2_produce(struct dm_conn *c)
{
    struct dm_h2 *h = c->h2;
    if (h->failed) {
        return true;
    }
    while (evbuffer_get_length(c->out) < H2_OUT_HIGH) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h->session, &data);
        if (n < 0) {
            DM_LOG_DBG("http2", "c=%llu send: %s", (unsigned long long)c->id,
                       nghttp2_strerror((int)n));
            h->failed = true;
            return true;
        }
        if (n == 0) {
            break;
        }
        evbuffer_add(c->out, data, (size_t)n);
    }
    return !nghttp2_session_want_read(h->session) && !nghttp2_session_want_write(h->session);
}

void dm_h2_on_progress(struct dm_conn *c)
{
    if (c->h2->num_streams > 0) {
        dm_conn_set_timer(c, c->gen->cfg->timeouts.body_ms);
    }
}

void dm_h2_after_flush(struct dm_conn *c)
{
    /* Resuming may run backend processing: walk a snapshot of the flags. */
    for (struct h2_stream *st = c->h2->streams; st != NULL; st = st->next) {
        if (st->want_resume) {
            st->want_resume = false;
            if (st->s.up != NULL) {
                dm_upstream_resume(st->s.up);
            }
        }
    }
}

void dm_h2_drain(struct dm_conn *c)
{
    struct dm_h2 *h = c->h2;
    if (h->goaway_sent) {
        return;
    }
    h->goaway_sent = true;
    /* Streams already accepted finish; later ones are refused (RFC 9113
     * §6.8). The connection closes once the last stream is done. */
    nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(h->session), NGHTTP2_NO_ERROR,
                          NULL, 0);
    h2_schedule(c);
}

void dm_h2_on_timeout(struct dm_conn *c)
{
    struct dm_h2 *h = c->h2;
    if (h->num_streams == 0) {
        if (h->goaway_sent) {
            dm_conn_close(c); /* the client ignored our GOAWAY */
            return;
        }
        DM_LOG_DBG("http2", "c=%llu %s: idle timeout", (unsigned long long)c->id, c->peer_ip);
        dm_h2_drain(c);
        dm_conn_set_timer(c, 1000);
        return;
    }
    /* Streams are open: the backends' timers watch them, unless the client
     * has stopped reading what we have for it. */
    bool stalled = evbuffer_get_length(c->out) > 0;
    for (struct h2_stream *st = h->streams; st != NULL && !stalled; st = st->next) {
        stalled = evbuffer_get_length(st->s.out) > 0;
    }
    if (stalled) {
        DM_LOG_DBG("http2", "c=%llu %s: client stopped reading", (unsigned long long)c->id,
                   c->peer_ip);
        dm_conn_close(c);
        return;
    }
    dm_conn_set_timer(c, c->gen->cfg->timeouts.body_ms);
}

void dm_h2_free(struct dm_conn *c)
{
    struct dm_h2 *h = c->h2;
    if (h == NULL) {
        return;
    }
    while (h->streams != NULL) {
        struct h2_stream *st = h->streams;
        if (!st->s.resp_started || !st->resp_ended) {
            st->s.status = st->s.status ? st->s.status : 499;
        }
        h2_stream_free(c, st);
    }
    while (h->spare != NULL) {
        struct h2_stream *st = h->spare;
        h->spare = st->next;
        h2_stream_destroy(st);
    }
    nghttp2_session_del(h->session);
    free(h);
    c->h2 = NULL;
}
