/* The request path both protocols share: an HTTP/1.x request and an HTTP/2
 * stream both arrive here as a struct dm_stream holding a parsed head, and from
 * here on there is one code path: host, ACME http-01, the HTTPS redirect,
 * routing, the SNI/site check, the backend's request head (hop-by-hop fields
 * removed, X-Forwarded-* set, framing restated), local error answers, and the
 * dispatch of backend events to the stream's protocol (conn.c or http2.c).
 * See docs/architecture.md, "Streams". */
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "acme/solver.h"
#include "proxy/core/log.h"
#include "proxy/core/str.h"
#include "proxy/core/time.h"
#include "proxy/proxy_int.h"

/* req_consume_head drops the request head from the connection input once
 * nothing points into it any more (HTTP/1.x only: HTTP/2 heads live in the
 * stream). */
static void req_consume_head(struct dm_stream *s, size_t head_len)
{
    if (s->h2_id == 0 && head_len > 0) {
        evbuffer_drain(s->c->in, head_len);
    }
}

const char *dm_status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 408:
        return "Request Timeout";
    case 414:
        return "URI Too Long";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

bool dm_header_is_hop_by_hop(const struct dm_http1_header *h, const struct dm_http1_msg *m)
{
#define HOP(s)                                                                                     \
    {                                                                                              \
        s, sizeof(s) - 1                                                                           \
    }
    static const struct {
        const char *name;
        size_t len;
    } names[] = {HOP("connection"), HOP("keep-alive"),    HOP("proxy-connection"),
                 HOP("te"),         HOP("trailer"),       HOP("transfer-encoding"),
                 HOP("upgrade"),    HOP("content-length")};
#undef HOP
    /* Every field of every message passes here: lengths first, no strlen. */
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (h->name_len == names[i].len &&
            dm_str_ieq(h->name, h->name_len, names[i].name, names[i].len)) {
            return true;
        }
    }
    /* Fields named by Connection are hop-by-hop too (RFC 9110 §7.6.1). */
    if (m->known.connection >= 0) {
        for (size_t k = 0; k < m->num_headers; k++) {
            const struct dm_http1_header *ch = &m->headers[k];
            if (!dm_str_ieq_lit(ch->name, ch->name_len, "connection")) {
                continue;
            }
            const char *p = ch->value, *end = ch->value + ch->value_len;
            while (p < end) {
                while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) {
                    p++;
                }
                const char *t = p;
                while (p < end && *p != ',' && *p != ' ' && *p != '\t') {
                    p++;
                }
                if (p > t && dm_str_ieq(h->name, h->name_len, t, (size_t)(p - t))) {
                    return true;
                }
            }
        }
    }
    return false;
}

/* host_from_request extracts the lower-case host (no port) from Host or an
 * absolute-form target. Returns 0, or -1 if it is malformed or too long. */
static int host_from_request(struct dm_stream *s, const char **out_raw, size_t *out_raw_len)
{
    const char *h = NULL;
    size_t len = 0;
    const struct dm_http1_msg *m = &s->msg;
    if (m->target_len > 8 &&
        (dm_str_ieq(m->target, 7, "http://", 7) || dm_str_ieq(m->target, 8, "https://", 8))) {
        const char *p = memchr(m->target, '/', m->target_len);
        p += 2;
        const char *end = m->target + m->target_len;
        const char *slash = memchr(p, '/', (size_t)(end - p));
        h = p;
        len = (size_t)((slash ? slash : end) - p);
    } else if (m->known.host >= 0) {
        h = m->headers[m->known.host].value;
        len = m->headers[m->known.host].value_len;
    }
    *out_raw = h;
    *out_raw_len = len;
    if (h == NULL || len == 0) {
        s->host[0] = '\0';
        return 0;
    }
    size_t hl = len;
    if (h[0] == '[') {
        const char *rb = memchr(h, ']', len);
        if (rb == NULL) {
            return -1;
        }
        hl = (size_t)(rb - h) + 1;
        /* Route IPv6 literals without brackets, as configured. */
        if (hl - 2 >= sizeof(s->host)) {
            return -1;
        }
        return dm_str_lower(s->host, sizeof(s->host), h + 1, hl - 2);
    }
    const char *colon = memchr(h, ':', len);
    if (colon != NULL) {
        hl = (size_t)(colon - h);
    }
    if (hl > 0 && h[hl - 1] == '.') {
        hl--;
    }
    return dm_str_lower(s->host, sizeof(s->host), h, hl);
}

/* conn_redirect answers 308 to the https URL of the request and consumes its
 * head (head_len bytes): the target points into the input buffer, so the
 * Location is built before the head is drained. */
static void req_redirect(struct dm_stream *s, size_t head_len)
{
    struct dm_conn *c = s->c;
    const struct cfg *cfg = c->gen->cfg;
    char loc[1024];
    const char *target = s->msg.target;
    size_t target_len = s->msg.target_len;
    if (target_len == 0 || target[0] != '/') {
        target = "/";
        target_len = 1;
    }
    bool v6 = strchr(s->host, ':') != NULL;
    char port[8] = "";
    if (cfg->https_port != 443) {
        snprintf(port, sizeof(port), ":%u", cfg->https_port);
    }
    int n = snprintf(loc, sizeof(loc), "Location: https://%s%s%s%s%.*s\r\n", v6 ? "[" : "", s->host,
                     v6 ? "]" : "", port, (int)target_len, target);
    req_consume_head(s, head_len);
    if (n < 0 || (size_t)n >= sizeof(loc)) {
        dm_stream_respond(s, 414, NULL, NULL, "414 URI Too Long\n", true);
        return;
    }
    dm_stream_respond(s, 308, NULL, loc, "", s->msg.body != DM_HTTP1_BODY_NONE);
}

/* conn_build_upstream_head writes the request head for the backend:
 * hop-by-hop fields removed (RFC 9110 §7.6.1), X-Forwarded-* set, framing
 * re-stated, origin-form target. */
static void req_build_upstream_head(struct dm_stream *s, struct evbuffer *hb, const char *raw_host,
                                    size_t raw_host_len)
{
    const struct dm_conn *c = s->c;
    const struct dm_http1_msg *m = &s->msg;
    const char *target = m->target;
    size_t target_len = m->target_len;
    if (target_len > 0 && target[0] != '/' && target[0] != '*' &&
        (dm_str_ieq(target, 7 < target_len ? 7 : target_len, "http://", 7) ||
         dm_str_ieq(target, 8 < target_len ? 8 : target_len, "https://", 8))) {
        const char *p = memchr(target, '/', target_len) + 2;
        const char *end = target + target_len;
        const char *slash = memchr(p, '/', (size_t)(end - p));
        if (slash != NULL) {
            target = slash;
            target_len = (size_t)(end - slash);
        } else {
            target = "/";
            target_len = 1;
        }
    }
    evbuffer_add(hb, m->method, m->method_len);
    evbuffer_add(hb, " ", 1);
    evbuffer_add(hb, target, target_len);
    evbuffer_add(hb, " HTTP/1.1\r\n", 11);

    /* X-Forwarded-*: an untrusted client cannot set what the backend
     * believes, so all of its X-Forwarded-* fields are dropped and ours
     * written. A trusted proxy's chain is extended, and its Proto and Host
     * (what its own client used) are kept. */
    const char *prior_xff = NULL;
    size_t prior_xff_len = 0;
    bool has_host = false, kept_proto = false, kept_host = false;
    for (size_t i = 0; i < m->num_headers; i++) {
        const struct dm_http1_header *h = &m->headers[i];
        if (h->name_len >= 12 && dm_str_ieq(h->name, 12, "x-forwarded-", 12)) {
            if (!c->peer_trusted) {
                continue;
            }
            if (dm_str_ieq_lit(h->name, h->name_len, "x-forwarded-for")) {
                /* Several fields combine into one list (RFC 9110 §5.3); the
                 * last is enough for a well-behaved trusted proxy. */
                prior_xff = h->value;
                prior_xff_len = h->value_len;
                continue;
            }
            kept_proto |= dm_str_ieq_lit(h->name, h->name_len, "x-forwarded-proto");
            kept_host |= dm_str_ieq_lit(h->name, h->name_len, "x-forwarded-host");
        } else if (dm_header_is_hop_by_hop(h, m)) {
            continue;
        }
        if ((int)i == m->known.host) {
            has_host = true;
        }
        evbuffer_add(hb, h->name, h->name_len);
        evbuffer_add(hb, ": ", 2);
        evbuffer_add(hb, h->value, h->value_len);
        evbuffer_add(hb, "\r\n", 2);
    }
    if (!has_host && raw_host != NULL) {
        evbuffer_add(hb, "Host: ", 6);
        evbuffer_add(hb, raw_host, raw_host_len);
        evbuffer_add(hb, "\r\n", 2);
    }
    if (prior_xff != NULL) {
        evbuffer_add_printf(hb, "X-Forwarded-For: %.*s, %s\r\n", (int)prior_xff_len, prior_xff,
                            c->peer_ip);
    } else {
        evbuffer_add_printf(hb, "X-Forwarded-For: %s\r\n", c->peer_ip);
    }
    if (!kept_proto) {
        evbuffer_add_printf(hb, "X-Forwarded-Proto: %s\r\n", c->ssl != NULL ? "https" : "http");
    }
    if (!kept_host && raw_host != NULL) {
        evbuffer_add(hb, "X-Forwarded-Host: ", 18);
        evbuffer_add(hb, raw_host, raw_host_len);
        evbuffer_add(hb, "\r\n", 2);
    }
    if (m->body == DM_HTTP1_BODY_LENGTH) {
        evbuffer_add_printf(hb, "Content-Length: %llu\r\n", (unsigned long long)m->content_length);
    } else if (m->body == DM_HTTP1_BODY_CHUNKED) {
        evbuffer_add(hb, "Transfer-Encoding: chunked\r\n", 28);
    }
    if (m->is_upgrade) {
        const struct dm_http1_header *u = &m->headers[m->known.upgrade];
        evbuffer_add(hb, "Connection: upgrade\r\nUpgrade: ", 30);
        evbuffer_add(hb, u->value, u->value_len);
        evbuffer_add(hb, "\r\n", 2);
    }
    evbuffer_add(hb, "\r\n", 2);
}

void dm_stream_begin(struct dm_stream *s)
{
    const struct dm_http1_msg *m = &s->msg;
    s->req_start_us = dm_time_mono_us();
    size_t ml = m->method_len < sizeof(s->method) - 1 ? m->method_len : sizeof(s->method) - 1;
    memcpy(s->method, m->method, ml);
    s->method[ml] = '\0';
    size_t pl = m->target_len < sizeof(s->path) - 1 ? m->target_len : sizeof(s->path) - 1;
    memcpy(s->path, m->target, pl);
    s->path[pl] = '\0';
    s->is_head = dm_str_ieq_lit(m->method, m->method_len, "HEAD");
    s->is_http10 = m->version_minor == 0;
    s->req_body_left = m->body == DM_HTTP1_BODY_LENGTH ? m->content_length : 0;
    dm_http1_chunked_init(&s->req_chunked);
    s->pool = NULL;
    s->be_idx = -1;
    s->tried = 0;
    s->attempts = 0;
    s->set_cookie = NULL;
    s->error_headers = NULL;
}

static int req_pick(struct dm_stream *s, bool with_head);

int dm_request_prepare(struct dm_stream *s, size_t head_len, struct evbuffer *hb,
                       const struct cfg_addr **out_addr)
{
    struct dm_conn *c = s->c;
    const struct dm_http1_msg *m = &s->msg;
    const struct cfg *cfg = c->gen->cfg;
    const char *raw_host;
    size_t raw_host_len;
    if (host_from_request(s, &raw_host, &raw_host_len) != 0) {
        req_consume_head(s, head_len);
        DM_LOG_DBG("http", "c=%llu %s: 400 bad host", (unsigned long long)c->id, c->peer_ip);
        dm_stream_respond(s, 400, NULL, NULL, "400 Bad Request\n", true);
        return 0;
    }
    bool has_body = m->body != DM_HTTP1_BODY_NONE;

    /* http-01 (RFC 8555 §8.3) is answered before the HTTPS redirect. */
    if (c->ssl == NULL && m->target_len > 28 &&
        memcmp(m->target, "/.well-known/acme-challenge/", 28) == 0 &&
        (dm_str_ieq_lit(m->method, m->method_len, "GET") || s->is_head)) {
        char key_auth[512];
        int n = acme_http01_lookup(m->target + 28, m->target_len - 28, key_auth, sizeof(key_auth));
        if (n >= 0) {
            req_consume_head(s, head_len);
            dm_log(DM_LOG_INFO, "acme", "http-01 challenge answered for %s from %s", s->host,
                   c->peer_ip);
            dm_stream_respond(s, 200, "application/octet-stream", NULL, key_auth, has_body);
            return 0;
        }
    }
    char retry[40]; /* per-IP request rate (limits.c): 429 with Retry-After */
    if (dm_limits_request(c, retry, sizeof(retry)) != 0) {
        req_consume_head(s, head_len);
        dm_stream_respond(s, 429, NULL, retry, "429 Too Many Requests\n", has_body);
        return 0;
    }
    if (c->ssl == NULL && cfg->redirect_http) {
        if (s->host[0] == '\0') {
            req_consume_head(s, head_len);
            dm_stream_respond(s, 400, NULL, NULL, "400 Bad Request: no Host\n", true);
            return 0;
        }
        req_redirect(s, head_len);
        return 0;
    }
    s->site = s->host[0] ? dm_route_find(c->gen->route, s->host, strlen(s->host)) : NULL;
    if (s->site == NULL) {
        req_consume_head(s, head_len);
        dm_stream_respond(s, 404, NULL, NULL, "404 Not Found: no site for this host\n", has_body);
        return 0;
    }
    /* A connection authenticated for one site must not reach another
     * (RFC 9110 §7.4: answer 421 so the client retries on a new connection). */
    if (c->ssl != NULL && c->sni[0] != '\0' && c->sni_site != s->site) {
        req_consume_head(s, head_len);
        dm_stream_respond(s, 421, NULL, NULL, "421 Misdirected Request\n", has_body);
        return 0;
    }
    const struct cfg_site *site = s->site;
    s->pool = c->gen->pools[site - cfg->sites];
    s->retry_deadline_us = s->req_start_us + (uint64_t)site->upstream.retry_timeout_ms * 1000;
    int i = req_pick(s, true);
    if (i == DM_PICK_DOWN) {
        req_consume_head(s, head_len);
        dm_log(DM_LOG_WARN, "proxy", "c=%llu %s %s%s: 503: every backend of the site is down",
               (unsigned long long)c->id, s->method, s->host, s->path);
        dm_stream_respond(s, 503, NULL, "Retry-After: 1\r\n",
                          "503 Service Unavailable: no healthy backend for this site\n", has_body);
        return 0;
    }
    req_build_upstream_head(s, hb, raw_host, raw_host_len);
    req_consume_head(s, head_len);
    *out_addr = i >= 0 ? &site->to[i] : NULL; /* NULL: every backend is full, wait */
    return 1;
}

/* req_cookie finds the value of cookie name in the request's Cookie fields
 * (HTTP/2 may send several crumbs). */
static const char *req_cookie(const struct dm_http1_msg *m, const char *name, size_t *out_len)
{
    size_t nl = strlen(name);
    for (size_t k = 0; k < m->num_headers; k++) {
        const struct dm_http1_header *h = &m->headers[k];
        if (!dm_str_ieq_lit(h->name, h->name_len, "cookie")) {
            continue;
        }
        const char *p = h->value, *end = h->value + h->value_len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == ';')) {
                p++;
            }
            const char *semi = memchr(p, ';', (size_t)(end - p));
            const char *e = semi != NULL ? semi : end;
            if ((size_t)(e - p) > nl && p[nl] == '=' && memcmp(p, name, nl) == 0) {
                *out_len = (size_t)(e - p) - nl - 1;
                return p + nl + 1;
            }
            p = e;
        }
    }
    return NULL;
}

/* req_pick chooses the backend of the stream's next attempt (with_head: the
 * request head is still readable, so the cookie may be looked at). */
static int req_pick(struct dm_stream *s, bool with_head)
{
    struct dm_pool *p = s->pool;
    struct dm_pick_in in = {.peer = (const struct sockaddr *)&s->c->peer, .tried = s->tried};
    if (with_head && p->site->upstream.policy == CFG_LB_COOKIE) {
        in.cookie = req_cookie(&s->msg, p->site->upstream.cookie, &in.cookie_len);
    }
    bool is_miss;
    int i = dm_pool_pick(p, &in, dm_mono_ms(), &is_miss);
    if (i >= 0) {
        s->be_idx = i;
        s->tried |= 1ull << i;
        s->backend = p->site->to[i].text;
        s->set_cookie = is_miss ? p->set_cookie[i] : NULL;
    }
    return i;
}

int dm_request_pick(struct dm_stream *s)
{
    return req_pick(s, false);
}

void dm_stream_respond(struct dm_stream *s, int status, const char *content_type,
                       const char *extra_headers, const char *body, bool close_after)
{
    if (content_type == NULL) {
        content_type = "text/plain; charset=utf-8";
    }
    if (s->h2_id != 0) {
        dm_h2_respond(s, status, content_type, extra_headers, body);
    } else {
        dm_h1_respond(s->c, status, content_type, extra_headers, body, close_after);
    }
}

bool dm_resp_header_forwarded(const struct dm_http1_header *h, const struct dm_http1_msg *resp)
{
    if (dm_str_ieq_lit(h->name, h->name_len, "content-length")) {
        return resp->body == DM_HTTP1_BODY_LENGTH || resp->body == DM_HTTP1_BODY_NONE;
    }
    return !dm_header_is_hop_by_hop(h, resp);
}

/* ---- backend events, dispatched to the stream's protocol ---- */

void dm_stream_on_upstream_head(struct dm_stream *s, struct dm_http1_msg *resp,
                                struct evbuffer *resp_buf, size_t head_len)
{
    if (s->set_cookie != NULL && resp->status >= 200 && resp->num_headers < DM_MAX_HEADERS_CAP) {
        /* Cookie stickiness: one more field, written by both protocols. */
        resp->headers[resp->num_headers++] =
            (struct dm_http1_header){"Set-Cookie", 10, s->set_cookie, strlen(s->set_cookie)};
        s->set_cookie = NULL;
    }
    if (s->h2_id != 0) {
        dm_h2_on_upstream_head(s, resp, resp_buf, head_len);
    } else {
        dm_h1_on_upstream_head(s->c, resp, resp_buf, head_len);
    }
}

void dm_stream_on_upstream_data(struct dm_stream *s)
{
    if (s->h2_id != 0) {
        dm_h2_on_upstream_data(s);
    } else {
        dm_h1_on_upstream_data(s->c);
    }
}

void dm_stream_on_upstream_done(struct dm_stream *s, bool backend_reusable)
{
    if (s->h2_id != 0) {
        dm_h2_on_upstream_done(s, backend_reusable);
    } else {
        dm_h1_on_upstream_done(s->c, backend_reusable);
    }
}

void dm_stream_on_upstream_error(struct dm_stream *s, int status, const char *why)
{
    if (!s->resp_started) {
        dm_log(DM_LOG_WARN, "proxy", "c=%llu stream=%d %s %s%s backend=%s: %d: %s",
               (unsigned long long)s->c->id, (int)s->h2_id, s->method, s->host, s->path,
               s->backend ? s->backend : "-", status, why);
    }
    if (s->h2_id != 0) {
        dm_h2_on_upstream_error(s, status, why);
    } else {
        dm_h1_on_upstream_error(s->c, status, why);
    }
}

void dm_stream_on_upstream_writable(struct dm_stream *s)
{
    if (s->h2_id != 0) {
        dm_h2_on_upstream_writable(s);
    } else {
        dm_h1_on_upstream_writable(s->c);
    }
}

void dm_stream_on_upstream_full(struct dm_stream *s)
{
    /* HTTP/1.x: stop reading the client until the backend takes the body.
     * HTTP/2 stops by withholding WINDOW_UPDATEs instead (http2.c), so a
     * slow backend never stalls the connection's other streams. */
    struct dm_conn *c = s->c;
    if (s->h2_id == 0 && !c->read_paused) {
        c->read_paused = true;
        event_del(&c->rev);
    }
}
