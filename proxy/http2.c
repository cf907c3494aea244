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
 * DM_BUF_LOW. See docs/architecture.md, "HTTP/2". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <nghttp2/nghttp2.h>

#include "proxy/core/log.h"
#include "proxy/core/str.h"
#include "proxy/core/time.h"
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
};

struct dm_h2 {
    nghttp2_session *session; /* owned */
    struct h2_stream *streams;
    int num_streams;
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
    struct h2_stream *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        return NULL;
    }
    st->s.out = evbuffer_new();
    if (st->s.out == NULL) {
        free(st);
        return NULL;
    }
    st->s.c = c;
    st->s.h2_id = id;
    st->s.keep_alive = true;
    st->next = c->h2->streams;
    if (st->next != NULL) {
        st->next->prev = st;
    }
    c->h2->streams = st;
    c->h2->num_streams++;
    return st;
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
    evbuffer_free(st->s.out);
    if (st->s.trailers != NULL) {
        evbuffer_free(st->s.trailers);
    }
    if (st->req_trailers != NULL) {
        evbuffer_free(st->req_trailers);
    }
    free(st->hbuf);
    free(st->fields);
    free(st);
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
            size_t num = 0;
            size_t tlen = evbuffer_get_length(st->s.trailers);
            char *t = (char *)evbuffer_pullup(st->s.trailers, (ssize_t)tlen);
            char *p = t, *end = t + tlen;
            while (p < end && num < 64) {
                char *eol = memchr(p, '\n', (size_t)(end - p));
                char *colon = memchr(p, ':', (size_t)(eol ? eol - p : end - p));
                if (eol == NULL || colon == NULL) {
                    break;
                }
                char *vend = eol;
                if (vend > p && vend[-1] == '\r') {
                    vend--;
                }
                char *v = colon + 1;
                while (v < vend && (*v == ' ' || *v == '\t')) {
                    v++;
                }
                while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t')) {
                    vend--;
                }
                for (char *q = p; q < colon; q++) {
                    if (*q >= 'A' && *q <= 'Z') {
                        *q = (char)(*q + 32);
                    }
                }
                struct dm_http1_header h = {p, (size_t)(colon - p), v, (size_t)(vend - v)};
                struct dm_http1_msg none = {.known = {.connection = -1}};
                if (!dm_header_is_hop_by_hop(&h, &none)) {
                    nva[num++] = (nghttp2_nv){(uint8_t *)p, (uint8_t *)v, h.name_len, h.value_len,
                                              NGHTTP2_NV_FLAG_NONE};
                }
                p = eol + 1;
            }
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

void dm_h2_on_upstream_head(struct dm_stream *s, const struct dm_http1_msg *resp,
                            struct evbuffer *resp_buf, size_t head_len)
{
    struct h2_stream *st = st_of(s);
    struct dm_conn *c = s->c;
    if (resp->status >= 100 && resp->status < 200) {
        /* Interim responses are not relayed; a 101 cannot happen since
         * HTTP/2 requests never carry Upgrade (RFC 9113 §8.6). */
        evbuffer_drain(resp_buf, head_len);
        if (resp->status == 101) {
            struct dm_upstream_conn *u = s->up;
            s->up = NULL;
            dm_upstream_detach(u, false);
            s->status = 502;
            nghttp2_submit_rst_stream(c->h2->session, NGHTTP2_FLAG_NONE, s->h2_id,
                                      NGHTTP2_INTERNAL_ERROR);
            h2_schedule(c);
        }
        return;
    }
    s->status = resp->status;
    s->resp_started = true;
    size_t num = 1, names_len = 0;
    for (size_t i = 0; i < resp->num_headers; i++) {
        names_len += resp->headers[i].name_len;
    }
    nghttp2_nv *nva = malloc((resp->num_headers + 1) * sizeof(*nva));
    char *names = malloc(names_len + 1);
    if (nva == NULL || names == NULL) {
        free(nva);
        free(names);
        evbuffer_drain(resp_buf, head_len);
        dm_h2_on_upstream_error(s, 502, "out of memory");
        return;
    }
    char status_s[8];
    snprintf(status_s, sizeof(status_s), "%d", resp->status);
    nva[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status_s, 7, strlen(status_s),
                          NGHTTP2_NV_FLAG_NONE};
    char *np = names;
    for (size_t i = 0; i < resp->num_headers; i++) {
        const struct dm_http1_header *h = &resp->headers[i];
        if (!dm_resp_header_forwarded(h, resp)) {
            continue; /* connection-specific fields never go out (RFC 9113 §8.2.2) */
        }
        nva[num++] = nv_lower(np, h->name, h->name_len, h->value, h->value_len);
        np += h->name_len;
    }
    bool has_body = !s->is_head && resp->body != DM_HTTP1_BODY_NONE;
    if (resp->body == DM_HTTP1_BODY_CHUNKED) {
        s->dechunk = true;
        s->trailers = evbuffer_new();
    }
    int rv = h2_submit_response(st, nva, num, has_body);
    free(nva);
    free(names);
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
    dm_upstream_detach(u, backend_reusable && s->req_body_done);
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
        /* Tunnels over HTTP/2, extended CONNECT included (RFC 8441), are not
         * supported yet. */
        dm_h2_respond(s, 501, "text/plain; charset=utf-8", NULL, "501 Not Implemented\n");
        return;
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
        if (dm_str_ieq_lit(name, f->name_len, "content-length")) {
            char num[24];
            size_t n = f->value_len < sizeof(num) - 1 ? f->value_len : sizeof(num) - 1;
            memcpy(num, value, n);
            num[n] = '\0';
            content_length = strtoll(num, NULL, 10); /* nghttp2 checked the syntax */
        }
    }
    /* hbuf may have moved while cookies were joined: point into it now. */
    for (size_t i = 0; i < st->num_fields; i++) {
        const struct h2_field *f = &st->fields[i];
        const char *name = st->hbuf + f->name_off;
        if (dm_str_ieq_lit(name, f->name_len, "cookie")) {
            continue;
        }
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
    if (end_stream) {
        m->body = DM_HTTP1_BODY_NONE;
    } else if (content_length >= 0) {
        m->body = content_length > 0 ? DM_HTTP1_BODY_LENGTH : DM_HTTP1_BODY_NONE;
        m->content_length = (uint64_t)content_length;
    } else {
        m->body = DM_HTTP1_BODY_CHUNKED;
    }
    s->req_body_left = m->body == DM_HTTP1_BODY_LENGTH ? m->content_length : 0;
    st->req_chunked_out = m->body == DM_HTTP1_BODY_CHUNKED;
    if (end_stream || m->body == DM_HTTP1_BODY_NONE) {
        s->req_body_done = end_stream;
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
    nghttp2_session_del(h->session);
    free(h);
    c->h2 = NULL;
}
