/* HTTP/2 to backends (h2c prior knowledge, or h2 over TLS with ALPN): a few
 * multiplexed connections per worker and backend pool, each carrying many
 * exchanges as streams (nghttp2 client sessions).
 *
 * Each exchange keeps upstream.c's HTTP/1.1 view: request.c's request head
 * and body (Content-Length or chunked) are read from the exchange's output
 * buffer and sent as HEADERS and DATA; the response arrives in its input
 * buffer as an HTTP/1.1 head, a chunked body and chunked trailers, which
 * upstream.c parses as from any backend. So timeouts, 1xx, trailers to both
 * client protocols (gRPC's grpc-status) and backpressure stay in one place.
 * Flow control: a stream's DATA is consumed (its window reopened) only while
 * the exchange is not paused (upstream.c moves the input on to the client at
 * once otherwise), so a slow client holds at most one window per stream. */
#include <errno.h>
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
#include <nghttp2/nghttp2.h>

#include "proxy/core/log.h"
#include "proxy/core/str.h"
#include "proxy/dns_cache.h"
#include "proxy/h2_fields.h"
#include "proxy/proxy_int.h"
#include "proxy/upstream_tr.h"

#define H2U_MAX_CONNS     4                  /* per backend pool and worker */
#define H2U_STREAM_WINDOW (256 * 1024)       /* our SETTINGS_INITIAL_WINDOW_SIZE */
#define H2U_CONN_WINDOW   (16 * 1024 * 1024) /* connection receive window */
#define H2U_BODY_HIGH     (64 * 1024)        /* decoded request body queued per stream */
#define H2U_WBUF_HIGH     (128 * 1024)       /* frames queued before the socket */
#define H2U_IDLE_MS       30000
#define H2U_READ_CHUNK    (16 * 1024)
#define H2U_MAX_FIELDS    DM_MAX_HEADERS_CAP
/* Times a refused, unprocessed request is sent again on another connection. */
#define H2U_MAX_REPLAYS 2
/* A request is kept for that (head and the body sent so far) up to this
 * size, until the answer starts: a gRPC call or a form post fits, an upload
 * does not and gets the 502. */
#define H2U_REPLAY_MAX (64 * 1024)

enum h2c_state {
    H2C_RESOLVING = 0,
    H2C_CONNECTING,
    H2C_HANDSHAKE,
    H2C_SETTINGS, /* session up, waiting for the backend's SETTINGS (its stream limit) */
    H2C_READY,
    H2C_DEAD,
};

struct dm_uph2_conn {
    struct dm_worker *w; /* borrowed */
    struct dm_up_tr *tr; /* borrowed: the pool's, lives as long as the worker */
    char *name;          /* owned: backend address text, for logs */
    int fd;
    SSL *ssl; /* owned, h2 over TLS */
    enum h2c_state state;
    struct event rev, wev, timer, flush_ev;
    bool events_added;
    struct dm_dns_wait *dns;        /* backend name being resolved (dns_cache.c) */
    nghttp2_session *sess;          /* owned once connected */
    struct evbuffer *wbuf;          /* owned: frames not yet written */
    struct dm_uph2_stream *streams; /* every stream of this connection */
    int num_streams;
    uint32_t max_streams; /* the backend's SETTINGS_MAX_CONCURRENT_STREAMS */
    bool goaway;
    int refs;
    bool closed;
    struct dm_uph2_conn *next;
};

struct dm_uph2_stream {
    struct dm_uph2_conn *hc;       /* borrowed */
    struct dm_upstream_conn *u;    /* borrowed: the exchange */
    struct evbuffer *u_in, *u_out; /* borrowed: u's buffers */
    int32_t id;                    /* 0 until submitted */
    bool head_sent;
    bool is_head;
    enum dm_http1_body req_body;
    uint64_t req_left;
    struct dm_http1_chunked req_chunked;
    struct evbuffer *req_trailers; /* owned: trailer lines of a chunked request body */
    struct evbuffer *body;         /* owned: decoded request body waiting for DATA frames */
    struct evbuffer *replay_head;  /* owned: the submitted head, while replayable */
    struct evbuffer *replay_body;  /* owned: decoded body bytes already sent, while replayable */
    bool replayable;               /* the request as sent so far is kept whole */
    bool resubmit;                 /* hs_submit sends a replay: body state stays */
    int replays;                   /* times moved to another connection after a refusal */
    const struct cfg_addr *addr;   /* borrowed from the exchange's config: for a replay */
    uint32_t connect_ms;
    bool body_eof;
    bool deferred; /* the data source waits for body bytes */
    bool want_writable;
    const char *err; /* static: an error to report from h2c_flush */
    /* response */
    int status;
    struct evbuffer *fields; /* owned: response (then trailer) fields, HTTP/1 lines */
    bool resp_head_done;
    bool resp_chunked;
    bool resp_done;
    bool paused;
    size_t unconsumed;
    struct dm_uph2_stream *prev, *next;
};

static void h2c_schedule(struct dm_uph2_conn *hc);
static void h2c_fail(struct dm_uph2_conn *hc, const char *why);
static void h2c_release(struct dm_uph2_conn *hc);
static void h2c_connect_addr(struct dm_uph2_conn *hc, const struct sockaddr *sa, socklen_t len);

/* ---- streams ---- */

static void hs_unlink(struct dm_uph2_stream *hs)
{
    struct dm_uph2_conn *hc = hs->hc;
    if (hs->prev != NULL) {
        hs->prev->next = hs->next;
    } else {
        hc->streams = hs->next;
    }
    if (hs->next != NULL) {
        hs->next->prev = hs->prev;
    }
    hs->prev = hs->next = NULL;
    hc->num_streams--;
}

static void hs_free(struct dm_uph2_stream *hs)
{
    if (hs->body != NULL) {
        evbuffer_free(hs->body);
    }
    if (hs->replay_head != NULL) {
        evbuffer_free(hs->replay_head);
    }
    if (hs->replay_body != NULL) {
        evbuffer_free(hs->replay_body);
    }
    if (hs->req_trailers != NULL) {
        evbuffer_free(hs->req_trailers);
    }
    if (hs->fields != NULL) {
        evbuffer_free(hs->fields);
    }
    free(hs);
}

/* hs_error ends the exchange of hs with an error (the stream stays linked
 * until upstream.c closes it). */
static void hs_error(struct dm_uph2_stream *hs, const char *why)
{
    if (hs->u == NULL || hs->resp_done) {
        return;
    }
    hs->resp_done = true;
    dm_upstream_h2_on_error(hs->u, why);
}

static void hs_consume(struct dm_uph2_stream *hs)
{
    struct dm_uph2_conn *hc = hs->hc;
    if (hs->unconsumed == 0 || hs->paused || hs->id <= 0 || hc->sess == NULL) {
        return;
    }
    nghttp2_session_consume_stream(hc->sess, hs->id, hs->unconsumed);
    hs->unconsumed = 0;
    h2c_schedule(hc);
}

/* hs_drop_replay lets go of the kept copy: the answer started, or the
 * request outgrew H2U_REPLAY_MAX. */
static void hs_drop_replay(struct dm_uph2_stream *hs)
{
    hs->replayable = false;
    if (hs->replay_head != NULL) {
        evbuffer_free(hs->replay_head);
        hs->replay_head = NULL;
    }
    if (hs->replay_body != NULL) {
        evbuffer_free(hs->replay_body);
        hs->replay_body = NULL;
    }
}

/* hs_keep_for_replay adds n bytes to the kept copy (into dst, one of its
 * two buffers), or drops the copy if it would outgrow H2U_REPLAY_MAX. */
static void hs_keep_for_replay(struct dm_uph2_stream *hs, struct evbuffer *dst, const void *p,
                               size_t n)
{
    size_t kept = evbuffer_get_length(hs->replay_head) +
                  (hs->replay_body != NULL ? evbuffer_get_length(hs->replay_body) : 0);
    if (kept + n > H2U_REPLAY_MAX || evbuffer_add(dst, p, n) != 0) {
        hs_drop_replay(hs);
    }
}

/* hs_pull moves request bytes from the exchange's output into the stream:
 * the head becomes HEADERS, the body is decoded into hs->body. */
static void hs_pull(struct dm_uph2_stream *hs);

static ssize_t hs_on_data_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                               size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                               void *user_data)
{
    (void)user_data;
    struct dm_uph2_stream *hs = source->ptr;
    size_t n = evbuffer_remove(hs->body, buf, length);
    if (n == 0 && !hs->body_eof) {
        hs->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (hs->replayable) {
        hs_keep_for_replay(hs, hs->replay_body, buf, n);
    }
    if (hs->body_eof && evbuffer_get_length(hs->body) == 0) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        /* The trailers of a chunked request (a client's checksum, say) end
         * the stream in a HEADERS frame of their own (RFC 9113 §8.1). */
        nghttp2_nv nva[64];
        size_t num =
            hs->req_trailers != NULL ? dm_h2_fields_from_lines(hs->req_trailers, nva, 64) : 0;
        if (num > 0 && nghttp2_submit_trailer(session, stream_id, nva, num) == 0) {
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
    }
    hs->want_writable = true;
    return (ssize_t)n;
}

static bool hs_skip_field(const struct dm_http1_header *h)
{
    /* Every field of every request to an HTTP/2 backend: lengths first. */
#define SKIP(s)                                                                                    \
    {                                                                                              \
        s, sizeof(s) - 1                                                                           \
    }
    static const struct {
        const char *name;
        size_t len;
    } names[] = {SKIP("connection"),
                 SKIP("keep-alive"),
                 SKIP("proxy-connection"),
                 SKIP("transfer-encoding"),
                 SKIP("upgrade"),
                 SKIP("host"),
                 SKIP("te")};
#undef SKIP
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (h->name_len == names[i].len &&
            dm_str_ieq(h->name, h->name_len, names[i].name, names[i].len)) {
            return true;
        }
    }
    return false;
}

static _Thread_local struct dm_http1_header hs_fields[H2U_MAX_FIELDS];
static _Thread_local nghttp2_nv hs_nv[H2U_MAX_FIELDS + 5];
/* Lower-cased copy of a request head; bigger heads get a malloc'd one. */
#define H2U_SCRATCH (16 * 1024)
static _Thread_local char hs_scratch[H2U_SCRATCH];

static void hs_submit(struct dm_uph2_stream *hs)
{
    struct dm_uph2_conn *hc = hs->hc;
    size_t len = evbuffer_get_length(hs->u_out);
    if (len == 0) {
        return;
    }
    const struct dm_http1_limits lim = {
        .max_line = 65536, .max_headers = H2U_MAX_FIELDS, .max_header_bytes = 1024 * 1024};
    struct dm_http1_parser p;
    dm_http1_parser_init(&p);
    struct dm_http1_msg m;
    memset(&m, 0, sizeof(m));
    m.headers = hs_fields;
    const char *data = (const char *)evbuffer_pullup(hs->u_out, (ssize_t)len);
    ssize_t n = dm_http1_parse_request(&p, &m, data, len, &lim);
    if (n == DM_PARSE_AGAIN) {
        return;
    }
    if (n == DM_PARSE_ERROR || m.is_upgrade) {
        hs->err = m.is_upgrade ? "upgrades are not carried over HTTP/2 backends"
                               : "request head not convertible to HTTP/2";
        return;
    }
    /* Lower-case names (HTTP/2 requires it) in one scratch copy of the head. */
    char *lower = (size_t)n <= sizeof(hs_scratch) ? hs_scratch : malloc((size_t)n);
    if (lower == NULL) {
        hs->err = "out of memory";
        return;
    }
    memcpy(lower, data, (size_t)n);
    size_t nv = 0;
    const char *authority = "";
    size_t authority_len = 0;
    for (size_t i = 0; i < m.num_headers; i++) {
        if (dm_str_ieq_lit(m.headers[i].name, m.headers[i].name_len, "host")) {
            authority = m.headers[i].value;
            authority_len = m.headers[i].value_len;
        }
    }
    bool is_tls = hc->tr->is_tls;
#define NV(nm, nl, v, vl)                                                                          \
    hs_nv[nv++] = (nghttp2_nv){(uint8_t *)(nm), (uint8_t *)(v), (nl), (vl), NGHTTP2_NV_FLAG_NONE}
    NV(":method", 7, m.method, m.method_len);
    NV(":scheme", 7, is_tls ? "https" : "http", is_tls ? 5 : 4);
    NV(":authority", 10, authority, authority_len);
    NV(":path", 5, m.target, m.target_len);
    for (size_t i = 0; i < m.num_headers; i++) {
        const struct dm_http1_header *h = &m.headers[i];
        if (hs_skip_field(h)) {
            continue;
        }
        char *ln = lower + (h->name - data);
        for (size_t k = 0; k < h->name_len; k++) {
            char ch = ln[k];
            ln[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        NV(ln, h->name_len, h->value, h->value_len);
    }
    /* gRPC servers insist on it; it is the one TE value HTTP/2 allows. */
    NV("te", 2, "trailers", 8);
#undef NV
    hs->is_head = dm_str_ieq_lit(m.method, m.method_len, "HEAD");
    hs->req_body = m.body;
    if (!hs->resubmit) {
        /* A replay keeps where the body stood: what was sent is queued again
         * in hs->body, the rest still comes from u_out. */
        hs->req_left = m.body == DM_HTTP1_BODY_LENGTH ? m.content_length : 0;
        dm_http1_chunked_init(&hs->req_chunked);
        hs->body_eof = m.body == DM_HTTP1_BODY_NONE;
    }
    hs->resubmit = false;
    nghttp2_data_provider prd = {.source.ptr = hs, .read_callback = hs_on_data_read};
    int32_t id = nghttp2_submit_request(hc->sess, NULL, hs_nv, nv,
                                        m.body == DM_HTTP1_BODY_NONE ? NULL : &prd, hs);
    if (lower != hs_scratch) {
        free(lower);
    }
    if (id < 0) {
        hs->err = "cannot open an HTTP/2 stream to the backend";
        return;
    }
    hs->id = id;
    hs->head_sent = true;
    /* Kept until the answer starts: a stream the backend refuses unprocessed
     * goes out again on another connection. A body-less request's head is
     * moved, not copied. */
    bool has_body = m.body != DM_HTTP1_BODY_NONE;
    hs->replayable =
        (hs->replay_head != NULL || (hs->replay_head = evbuffer_new()) != NULL) &&
        (!has_body || hs->replay_body != NULL || (hs->replay_body = evbuffer_new()) != NULL);
    if (hs->replayable && !has_body && (size_t)n <= H2U_REPLAY_MAX) {
        evbuffer_remove_buffer(hs->u_out, hs->replay_head, (size_t)n);
        return;
    }
    if (hs->replayable) {
        hs_keep_for_replay(hs, hs->replay_head, data, (size_t)n);
    }
    evbuffer_drain(hs->u_out, (size_t)n);
}

static void hs_pull(struct dm_uph2_stream *hs)
{
    if (hs->hc->state != H2C_READY || hs->resp_done || hs->err != NULL || hs->u == NULL) {
        return;
    }
    if (!hs->head_sent) {
        hs_submit(hs);
        if (!hs->head_sent) {
            return;
        }
    }
    if (hs->body_eof) {
        if (evbuffer_get_length(hs->u_out) > 0) {
            evbuffer_drain(hs->u_out, evbuffer_get_length(hs->u_out)); /* nothing may follow */
        }
        return;
    }
    size_t room = evbuffer_get_length(hs->body) < H2U_BODY_HIGH
                      ? H2U_BODY_HIGH - evbuffer_get_length(hs->body)
                      : 0;
    size_t avail = evbuffer_get_length(hs->u_out);
    if (room == 0 || avail == 0) {
        return;
    }
    if (hs->req_body == DM_HTTP1_BODY_LENGTH) {
        size_t n = avail < room ? avail : room;
        n = n < hs->req_left ? n : (size_t)hs->req_left;
        evbuffer_remove_buffer(hs->u_out, hs->body, n);
        hs->req_left -= n;
        hs->body_eof = hs->req_left == 0;
    } else {
        uint64_t moved;
        if ((hs->req_trailers == NULL && (hs->req_trailers = evbuffer_new()) == NULL) ||
            dm_chunked_move_trailers(&hs->req_chunked, hs->u_out, hs->body, hs->req_trailers,
                                     &moved) != 0) {
            hs->err = "bad chunked request body";
            return;
        }
        hs->body_eof = hs->req_chunked.state == DM_CHUNK_DONE;
    }
    if (hs->deferred && (evbuffer_get_length(hs->body) > 0 || hs->body_eof)) {
        hs->deferred = false;
        nghttp2_session_resume_data(hs->hc->sess, hs->id);
    }
    if (evbuffer_get_length(hs->u_out) < DM_BUF_LOW) {
        hs->want_writable = true;
    }
}

/* ---- nghttp2 callbacks ---- */

static struct dm_uph2_stream *h2u_stream(nghttp2_session *session, int32_t id)
{
    return nghttp2_session_get_stream_user_data(session, id);
}

static int h2u_on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                         size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                         void *user_data)
{
    (void)flags;
    (void)user_data;
    struct dm_uph2_stream *hs = h2u_stream(session, frame->hd.stream_id);
    if (hs == NULL || hs->u == NULL) {
        return 0;
    }
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        hs->status = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++) {
            hs->status = hs->status * 10 + (value[i] - '0');
        }
        return 0;
    }
    if (namelen > 0 && name[0] == ':') {
        return 0;
    }
    if (hs->fields == NULL && (hs->fields = evbuffer_new()) == NULL) {
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    evbuffer_add(hs->fields, name, namelen);
    evbuffer_add(hs->fields, ": ", 2);
    evbuffer_add(hs->fields, value, valuelen);
    evbuffer_add(hs->fields, "\r\n", 2);
    return 0;
}

/* hs_emit_head writes the response head (or a 1xx) as HTTP/1.1 into u_in. */
static void hs_emit_head(struct dm_uph2_stream *hs, bool end_stream)
{
    struct evbuffer *in = hs->u_in;
    evbuffer_add_printf(in, "HTTP/1.1 %d %s\r\n", hs->status, dm_status_text(hs->status));
    bool has_length = false;
    if (hs->fields != NULL) {
        size_t len = evbuffer_get_length(hs->fields);
        const char *f = (const char *)evbuffer_pullup(hs->fields, (ssize_t)len);
        /* content-length is kept when it frames the body: then trailers
         * cannot follow, and HTTP/2 peers send them without one. */
        for (const char *p = f; p < f + len;) {
            const char *eol = memchr(p, '\n', (size_t)(f + len - p));
            if (eol == NULL) {
                break;
            }
            if ((size_t)(eol - p) > 15 && dm_str_ieq(p, 15, "content-length:", 15)) {
                has_length = true;
            }
            p = eol + 1;
        }
        evbuffer_add_buffer(in, hs->fields);
    }
    bool informational = hs->status >= 100 && hs->status < 200;
    bool no_body = informational || hs->status == 204 || hs->status == 304 || hs->is_head;
    if (!no_body && !has_length) {
        if (end_stream) {
            evbuffer_add(in, "content-length: 0\r\n", 19);
        } else {
            evbuffer_add(in, "transfer-encoding: chunked\r\n", 28);
            hs->resp_chunked = true;
        }
    }
    evbuffer_add(in, "\r\n", 2);
    if (!informational) {
        hs->resp_head_done = true;
        hs_drop_replay(hs);
    }
}

static void hs_end(struct dm_uph2_stream *hs)
{
    if (hs->resp_chunked) {
        evbuffer_add(hs->u_in, "0\r\n", 3);
        if (hs->fields != NULL) {
            evbuffer_add_buffer(hs->u_in, hs->fields);
        }
        evbuffer_add(hs->u_in, "\r\n", 2);
    }
    hs->resp_done = true;
}

static int h2u_on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct dm_uph2_conn *hc = user_data;
    if (frame->hd.type == NGHTTP2_SETTINGS && !(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
        hc->max_streams =
            nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        if (hc->state == H2C_SETTINGS) {
            evtimer_del(&hc->timer);
            /* Requests wait for this: sent earlier, those past the backend's
             * limit would be refused. nghttp2 queues what exceeds it now. */
            hc->state = H2C_READY;
            h2c_schedule(hc);
        }
        return 0;
    }
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        hc->goaway = true;
        return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) {
        return 0;
    }
    struct dm_uph2_stream *hs = h2u_stream(session, frame->hd.stream_id);
    if (hs == NULL || hs->u == NULL || hs->resp_done) {
        return 0;
    }
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (frame->hd.type == NGHTTP2_HEADERS) {
        if (!hs->resp_head_done) {
            hs_emit_head(hs, end);
            if (!hs->resp_head_done) {
                hs->status = 0; /* a 1xx: the final head follows */
            }
        } else if (!end) {
            return 0; /* trailers must end the stream; nghttp2 checks it */
        }
    }
    if (end) {
        hs_end(hs);
    }
    struct dm_upstream_conn *u = hs->u;
    dm_upstream_h2_on_input(u); /* may close hs */
    return 0;
}

static int h2u_on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                                  const uint8_t *data, size_t len, void *user_data)
{
    (void)flags;
    (void)user_data;
    nghttp2_session_consume_connection(session, len);
    struct dm_uph2_stream *hs = h2u_stream(session, stream_id);
    if (hs == NULL || hs->u == NULL || hs->resp_done) {
        nghttp2_session_consume_stream(session, stream_id, len);
        return 0;
    }
    if (hs->resp_chunked) {
        evbuffer_add_printf(hs->u_in, "%zx\r\n", len);
        evbuffer_add(hs->u_in, data, len);
        evbuffer_add(hs->u_in, "\r\n", 2);
    } else {
        evbuffer_add(hs->u_in, data, len);
    }
    hs->unconsumed += len;
    hs_consume(hs);
    dm_upstream_h2_on_input(hs->u); /* may close hs */
    return 0;
}

static struct dm_uph2_conn *h2c_pick(struct dm_worker *w, struct dm_up_tr *tr,
                                     const struct cfg_addr *addr, uint32_t connect_ms);
static void hs_link(struct dm_uph2_stream *hs, struct dm_uph2_conn *hc);

/* hs_replay sends a request the backend refused unprocessed (REFUSED_STREAM,
 * or above the last stream id of its GOAWAY: RFC 9113 §8.7 says it may be
 * retried) on another connection to the same backend, when all of it that
 * went out is still kept (H2U_REPLAY_MAX): a graceful restart of the backend
 * costs no client a 502, gRPC calls included. Returns true if the request
 * went out again. */
static bool hs_replay(struct dm_uph2_stream *hs)
{
    if (!hs->replayable || hs->resp_head_done || hs->replays >= H2U_MAX_REPLAYS ||
        (hs->body_eof && evbuffer_get_length(hs->u_out) != 0)) {
        return false;
    }
    struct dm_uph2_conn *old = hs->hc;
    hs_unlink(hs);
    struct dm_uph2_conn *hc = h2c_pick(old->w, old->tr, hs->addr, hs->connect_ms);
    if (hc == NULL) {
        hs_link(hs, old); /* reported as refused by the caller; upstream.c unlinks */
        return false;
    }
    DM_LOG_DBG("upstream", "%s: a stream refused unprocessed goes out again on another connection",
               old->name);
    /* The head goes back in front of what u_out still holds of the body;
     * the body sent so far goes back in front of what waits to be sent. */
    evbuffer_prepend_buffer(hs->u_out, hs->replay_head);
    if (hs->replay_body != NULL) {
        evbuffer_prepend_buffer(hs->body, hs->replay_body);
    }
    hs->replayable = false;
    hs->resubmit = true;
    hs->deferred = false;
    hs->replays++;
    hs->id = 0;
    hs->head_sent = false;
    hs_link(hs, hc);
    h2c_schedule(hc);
    return true;
}

static int h2u_on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                               void *user_data)
{
    (void)user_data;
    struct dm_uph2_stream *hs = h2u_stream(session, stream_id);
    if (hs == NULL) {
        return 0;
    }
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    hs->id = -1;
    if (hs->u == NULL) {
        hs_unlink(hs); /* upstream.c let go already */
        hs_free(hs);
        return 0;
    }
    if (!hs->resp_done && error_code == NGHTTP2_REFUSED_STREAM && hs_replay(hs)) {
        return 0;
    }
    if (!hs->resp_done) {
        char why[96];
        snprintf(why, sizeof(why), "backend reset the HTTP/2 stream (%s)",
                 nghttp2_http2_strerror(error_code));
        hs_error(hs, why);
    }
    return 0;
}

/* ---- connections ---- */

static void h2c_hold(struct dm_uph2_conn *hc)
{
    hc->refs++;
}

static void h2c_close(struct dm_uph2_conn *hc)
{
    if (hc->closed) {
        return;
    }
    hc->closed = true;
    hc->state = H2C_DEAD;
    struct dm_uph2_conn **pp = &hc->tr->h2;
    while (*pp != NULL && *pp != hc) {
        pp = &(*pp)->next;
    }
    if (*pp == hc) {
        *pp = hc->next;
    }
    if (hc->dns != NULL) {
        dm_dns_cancel(hc->dns);
        hc->dns = NULL;
    }
    if (hc->events_added) {
        event_del(&hc->rev);
        event_del(&hc->wev);
    }
    evtimer_del(&hc->timer);
    event_del(&hc->flush_ev);
    /* Streams upstream.c let go of die with the connection; the others are
     * freed when their exchange closes (dm_uph2_close). */
    struct dm_uph2_stream *hs = hc->streams;
    while (hs != NULL) {
        struct dm_uph2_stream *next = hs->next;
        if (hs->id > 0 && hc->sess != NULL) {
            nghttp2_session_set_stream_user_data(hc->sess, hs->id, NULL);
        }
        hs->id = -1;
        if (hs->u == NULL) {
            hs_unlink(hs);
            hs_free(hs);
        }
        hs = next;
    }
    h2c_release(hc);
}

static void h2c_release(struct dm_uph2_conn *hc)
{
    if (--hc->refs > 0 || !hc->closed || hc->streams != NULL) {
        return;
    }
    if (hc->sess != NULL) {
        nghttp2_session_del(hc->sess);
    }
    if (hc->ssl != NULL) {
        SSL_free(hc->ssl);
    }
    if (hc->fd >= 0) {
        close(hc->fd);
    }
    evbuffer_free(hc->wbuf);
    free(hc->name);
    free(hc);
}

/* h2c_fail ends every exchange on hc and closes it. */
static void h2c_fail(struct dm_uph2_conn *hc, const char *why)
{
    if (hc->closed) {
        return;
    }
    h2c_hold(hc);
    DM_LOG_DBG("upstream", "%s: HTTP/2 connection failed: %s", hc->name, why);
    hc->state = H2C_DEAD;
    bool again = true;
    while (again) {
        again = false;
        for (struct dm_uph2_stream *hs = hc->streams; hs != NULL; hs = hs->next) {
            if (hs->u != NULL && !hs->resp_done) {
                hs_error(hs, why); /* may unlink streams: rescan */
                again = true;
                break;
            }
        }
    }
    h2c_close(hc);
    h2c_release(hc);
}

static void h2c_write(struct dm_uph2_conn *hc)
{
    for (;;) {
        while (evbuffer_get_length(hc->wbuf) < H2U_WBUF_HIGH && hc->sess != NULL &&
               nghttp2_session_want_write(hc->sess)) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(hc->sess, &data);
            if (n < 0) {
                h2c_fail(hc, "HTTP/2 session error");
                return;
            }
            if (n == 0) {
                break;
            }
            evbuffer_add(hc->wbuf, data, (size_t)n);
        }
        if (evbuffer_get_length(hc->wbuf) == 0) {
            event_del(&hc->wev);
            return;
        }
        int n =
            hc->ssl != NULL ? dm_uptls_write(hc->ssl, hc->wbuf) : evbuffer_write(hc->wbuf, hc->fd);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                event_add(&hc->wev, NULL);
                return;
            }
            h2c_fail(hc, "write to the backend failed");
            return;
        }
    }
}

/* h2c_flush: pull request bytes of every stream, send frames, and tell
 * exchanges whose output drained. Runs from the loop, never inside nghttp2. */
static void h2c_flush(struct dm_uph2_conn *hc)
{
    if (hc->state == H2C_SETTINGS) {
        h2c_write(hc);
        return;
    }
    if (hc->state != H2C_READY) {
        return;
    }
    h2c_hold(hc);
    for (struct dm_uph2_stream *hs = hc->streams; hs != NULL; hs = hs->next) {
        hs_pull(hs);
    }
    h2c_write(hc);
    bool again = true;
    while (again && !hc->closed) {
        again = false;
        for (struct dm_uph2_stream *hs = hc->streams; hs != NULL; hs = hs->next) {
            if (hs->err != NULL && hs->u != NULL && !hs->resp_done) {
                const char *why = hs->err;
                hs->err = NULL;
                hs_error(hs, why); /* may close streams: rescan */
                again = true;
                break;
            }
            if (hs->want_writable && hs->u != NULL) {
                hs->want_writable = false;
                if (evbuffer_get_length(hs->u_out) < DM_BUF_LOW) {
                    dm_upstream_h2_on_writable(hs->u); /* may close streams: rescan */
                    again = true;
                    break;
                }
            }
        }
    }
    if (!hc->closed && hc->num_streams == 0) {
        struct timeval tv = {.tv_sec = H2U_IDLE_MS / 1000, .tv_usec = 0};
        evtimer_add(&hc->timer, &tv);
        if (hc->goaway) {
            h2c_close(hc);
        }
    }
    h2c_release(hc);
}

static void h2c_on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    h2c_flush(arg);
}

static void h2c_schedule(struct dm_uph2_conn *hc)
{
    if (!hc->closed && (hc->state == H2C_READY || hc->state == H2C_SETTINGS)) {
        event_active(&hc->flush_ev, EV_WRITE, 0);
    }
}

static int h2c_session_start(struct dm_uph2_conn *hc)
{
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cbs) != 0) {
        return -1;
    }
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cbs);
        return -1;
    }
    nghttp2_session_callbacks_set_on_header_callback(cbs, h2u_on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2u_on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2u_on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2u_on_stream_close);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    int rc = nghttp2_session_client_new2(&hc->sess, cbs, hc, opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    if (rc != 0) {
        hc->sess = NULL;
        return -1;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2U_STREAM_WINDOW},
    };
    nghttp2_submit_settings(hc->sess, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    nghttp2_session_set_local_window_size(hc->sess, NGHTTP2_FLAG_NONE, 0, H2U_CONN_WINDOW);
    hc->state = H2C_SETTINGS; /* the connect timer runs on until SETTINGS */
    event_add(&hc->rev, NULL);
    h2c_flush(hc);
    return 0;
}

static void h2c_on_connected(struct dm_uph2_conn *hc)
{
    if (!hc->tr->is_tls) {
        if (h2c_session_start(hc) != 0) {
            h2c_fail(hc, "cannot start the HTTP/2 session");
        }
        return;
    }
    char why[256];
    bool want_write;
    if (hc->ssl == NULL && (hc->ssl = dm_uptls_new(hc->tr, hc->fd)) == NULL) {
        h2c_fail(hc, "backend TLS setup failed");
        return;
    }
    hc->state = H2C_HANDSHAKE;
    int r = dm_uptls_handshake(hc->ssl, &want_write, why, sizeof(why));
    if (r < 0) {
        h2c_fail(hc, why);
        return;
    }
    if (r == 0) {
        event_add(&hc->rev, NULL);
        if (want_write) {
            event_add(&hc->wev, NULL);
        } else {
            event_del(&hc->wev);
        }
        return;
    }
    const uint8_t *proto;
    unsigned proto_len;
    SSL_get0_alpn_selected(hc->ssl, &proto, &proto_len);
    if (proto_len != 2 || memcmp(proto, "h2", 2) != 0) {
        h2c_fail(hc, "backend did not choose HTTP/2 in ALPN");
        return;
    }
    event_del(&hc->wev);
    if (h2c_session_start(hc) != 0) {
        h2c_fail(hc, "cannot start the HTTP/2 session");
    }
}

static void h2c_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct dm_uph2_conn *hc = arg;
    h2c_hold(hc);
    if (hc->state == H2C_HANDSHAKE) {
        h2c_on_connected(hc);
        goto out;
    }
    uint8_t buf[H2U_READ_CHUNK];
    for (int i = 0; i < 16 && !hc->closed; i++) {
        ssize_t n = hc->ssl != NULL ? dm_uptls_read(hc->ssl, buf, sizeof(buf))
                                    : recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            break;
        }
        if (n <= 0) {
            h2c_fail(hc, "backend closed the HTTP/2 connection");
            goto out;
        }
        ssize_t r = nghttp2_session_mem_recv(hc->sess, buf, (size_t)n);
        if (r < 0) {
            h2c_fail(hc, nghttp2_strerror((int)r));
            goto out;
        }
        if ((size_t)n < sizeof(buf) && (hc->ssl == NULL || SSL_pending(hc->ssl) == 0)) {
            break;
        }
    }
    if (!hc->closed && hc->ssl != NULL && SSL_pending(hc->ssl) > 0) {
        event_active(&hc->rev, EV_READ, 0); /* decrypted bytes the socket will not signal */
    }
    if (!hc->closed) {
        h2c_flush(hc);
        if (!hc->closed && !nghttp2_session_want_read(hc->sess) &&
            !nghttp2_session_want_write(hc->sess)) {
            h2c_fail(hc, "HTTP/2 session ended");
        }
    }
out:
    h2c_release(hc);
}

static void h2c_on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct dm_uph2_conn *hc = arg;
    h2c_hold(hc);
    if (hc->state == H2C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            h2c_fail(hc, "connect failed");
            goto out;
        }
        event_del(&hc->wev);
        h2c_on_connected(hc);
        goto out;
    }
    if (hc->state == H2C_HANDSHAKE) {
        h2c_on_connected(hc);
        goto out;
    }
    h2c_flush(hc);
out:
    h2c_release(hc);
}

static void h2c_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dm_uph2_conn *hc = arg;
    if (hc->state == H2C_READY) {
        if (hc->num_streams == 0) {
            h2c_close(hc); /* idle */
        }
        return;
    }
    h2c_fail(hc, hc->state == H2C_HANDSHAKE  ? "backend TLS handshake timeout"
                 : hc->state == H2C_SETTINGS ? "backend sent no HTTP/2 SETTINGS"
                                             : "connect timeout");
}

static void h2c_connect_addr(struct dm_uph2_conn *hc, const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        h2c_fail(hc, "socket failed");
        return;
    }
    if (sa->sa_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    hc->fd = fd;
    event_assign(&hc->rev, hc->w->base, fd, EV_READ | EV_PERSIST, h2c_on_read, hc);
    event_assign(&hc->wev, hc->w->base, fd, EV_WRITE | EV_PERSIST, h2c_on_write, hc);
    hc->events_added = true;
    if (connect(fd, sa, len) != 0 && errno != EINPROGRESS) {
        h2c_fail(hc, "connect failed");
        return;
    }
    hc->state = H2C_CONNECTING;
    event_add(&hc->wev, NULL);
}

static void h2c_on_resolved(int err, const struct sockaddr *sa, socklen_t len, unsigned gen,
                            void *arg)
{
    (void)gen;
    struct dm_uph2_conn *hc = arg;
    hc->dns = NULL;
    h2c_hold(hc);
    if (err != 0) {
        h2c_fail(hc, "name resolution failed");
    } else {
        h2c_connect_addr(hc, sa, len);
    }
    h2c_release(hc);
}

static struct dm_uph2_conn *h2c_new(struct dm_worker *w, struct dm_up_tr *tr,
                                    const struct cfg_addr *addr, uint32_t connect_ms)
{
    struct dm_uph2_conn *hc = calloc(1, sizeof(*hc));
    if (hc == NULL) {
        return NULL;
    }
    hc->wbuf = evbuffer_new();
    hc->name = strdup(addr->text);
    if (hc->wbuf == NULL || hc->name == NULL) {
        if (hc->wbuf != NULL) {
            evbuffer_free(hc->wbuf);
        }
        free(hc->name);
        free(hc);
        return NULL;
    }
    hc->w = w;
    hc->tr = tr;
    hc->fd = -1;
    hc->refs = 1;
    hc->max_streams = 100; /* until the backend's SETTINGS say otherwise */
    evtimer_assign(&hc->timer, w->base, h2c_on_timer, hc);
    event_assign(&hc->flush_ev, w->base, -1, 0, h2c_on_flush, hc);
    hc->next = tr->h2;
    tr->h2 = hc;
    struct timeval tv = {.tv_sec = connect_ms / 1000, .tv_usec = (connect_ms % 1000) * 1000};
    evtimer_add(&hc->timer, &tv);
    h2c_hold(hc);
    if (addr->kind == CFG_ADDR_HOSTNAME) {
        hc->state = H2C_RESOLVING;
        hc->dns = dm_dns_resolve(w, addr->host, addr->port, h2c_on_resolved, hc);
    } else {
        h2c_connect_addr(hc, (const struct sockaddr *)&addr->ss, addr->ss_len);
    }
    h2c_release(hc);
    return hc;
}

/* h2c_pick returns the least loaded usable connection with a free stream
 * slot, else a new one; past H2U_MAX_CONNS nghttp2 queues the stream until
 * the backend's concurrency limit lets it open. NULL if none can be made. */
static struct dm_uph2_conn *h2c_pick(struct dm_worker *w, struct dm_up_tr *tr,
                                     const struct cfg_addr *addr, uint32_t connect_ms)
{
    struct dm_uph2_conn *best = NULL;
    int num = 0;
    for (struct dm_uph2_conn *hc = tr->h2; hc != NULL; hc = hc->next) {
        if (hc->closed || hc->goaway || hc->state == H2C_DEAD) {
            continue;
        }
        num++;
        if (best == NULL || hc->num_streams < best->num_streams) {
            best = hc;
        }
    }
    if (best == NULL || (best->num_streams >= (int)best->max_streams && num < H2U_MAX_CONNS)) {
        best = h2c_new(w, tr, addr, connect_ms);
        if (best == NULL || best->closed) {
            return NULL;
        }
    }
    return best;
}

/* hs_link puts hs on hc's list of streams. */
static void hs_link(struct dm_uph2_stream *hs, struct dm_uph2_conn *hc)
{
    hs->hc = hc;
    hs->prev = NULL;
    hs->next = hc->streams;
    if (hc->streams != NULL) {
        hc->streams->prev = hs;
    }
    hc->streams = hs;
    hc->num_streams++;
    if (hc->state == H2C_READY) {
        evtimer_del(&hc->timer);
    }
}

/* ---- upstream.c's interface ---- */

struct dm_uph2_stream *dm_uph2_open(struct dm_worker *w, struct dm_up_tr *tr,
                                    const struct cfg_addr *addr, struct dm_upstream_conn *u,
                                    struct evbuffer *u_in, struct evbuffer *u_out,
                                    uint32_t connect_ms)
{
    struct dm_uph2_conn *best = h2c_pick(w, tr, addr, connect_ms);
    if (best == NULL) {
        return NULL;
    }
    struct dm_uph2_stream *hs = calloc(1, sizeof(*hs));
    if (hs == NULL || (hs->body = evbuffer_new()) == NULL) {
        free(hs);
        return NULL;
    }
    hs->u = u;
    hs->u_in = u_in;
    hs->u_out = u_out;
    hs->addr = addr;
    hs->connect_ms = connect_ms;
    hs_link(hs, best);
    h2c_schedule(best);
    return hs;
}

void dm_uph2_kick(struct dm_uph2_stream *hs)
{
    h2c_schedule(hs->hc);
}

void dm_uph2_pause(struct dm_uph2_stream *hs, bool paused)
{
    hs->paused = paused;
    if (!paused) {
        hs_consume(hs);
    }
}

void dm_uph2_close(struct dm_uph2_stream *hs)
{
    struct dm_uph2_conn *hc = hs->hc;
    hs->u = NULL;
    if (hs->id > 0 && hc->sess != NULL && !hc->closed) {
        /* Still open at our end: the exchange was abandoned or is done; a
         * complete response has END_STREAM already, so only cancel real
         * leftovers. nghttp2 calls on_stream_close, which frees hs. */
        if (!hs->resp_done || !hs->body_eof) {
            nghttp2_submit_rst_stream(hc->sess, NGHTTP2_FLAG_NONE, hs->id, NGHTTP2_CANCEL);
            h2c_schedule(hc);
        } else if (nghttp2_session_find_stream(hc->sess, hs->id) == NULL) {
            nghttp2_session_set_stream_user_data(hc->sess, hs->id, NULL);
            hs_unlink(hs);
            hs_free(hs);
        }
        return;
    }
    if (hs->id > 0 && hc->sess != NULL) {
        nghttp2_session_set_stream_user_data(hc->sess, hs->id, NULL);
    }
    hs_unlink(hs);
    hs_free(hs);
    h2c_hold(hc);
    h2c_schedule(hc);
    h2c_release(hc);
}

void dm_uph2_pool_close(struct dm_up_tr *tr)
{
    /* Worker exit: client connections (and their exchanges) are gone. */
    while (tr->h2 != NULL) {
        h2c_fail(tr->h2, "shutting down");
    }
}
