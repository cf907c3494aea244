/* The HTTP client's response decoder: status line, fields, Content-Length,
 * chunked and until-close bodies, bounded at every step (head 64 KiB, 100
 * fields, chunk lines 4 KiB, trailers 16 KiB, max_body). Strict: CRLF only,
 * no obs-fold or CTLs, no CL+TE, no coding but a single chunked. */
#include "proxy/core/httpc_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "proxy/core/err.h"
#include "proxy/core/str.h"

/* is_tchar tells whether ch may appear in a token (RFC 9110 §5.6.2). */
bool httpc_is_tchar(unsigned char ch)
{
    if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) {
        return true;
    }
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* is_field_char tells whether ch may appear in a field value or reason phrase:
 * VCHAR, obs-text, SP, HTAB (RFC 9110 §5.5); no other control characters. */
bool httpc_is_field_char(unsigned char ch)
{
    return ch == '\t' || (ch >= 0x20 && ch != 0x7f);
}

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* field_parse splits one field line (without CRLF) into name and trimmed
 * value. Leading whitespace (obs-fold), whitespace before the colon and
 * control characters are errors. Returns 0 or -1. */
static int field_parse(struct head_field *f, const char *line, size_t len)
{
    const char *colon = memchr(line, ':', len);
    if (colon == NULL || colon == line) {
        return -1;
    }
    for (const char *p = line; p < colon; p++) {
        if (!httpc_is_tchar((unsigned char)*p)) {
            return -1;
        }
    }
    const char *v = colon + 1, *end = line + len;
    while (v < end && is_ows(*v)) {
        v++;
    }
    while (end > v && is_ows(end[-1])) {
        end--;
    }
    for (const char *p = v; p < end; p++) {
        if (!httpc_is_field_char((unsigned char)*p)) {
            return -1;
        }
    }
    f->name = line;
    f->name_len = (size_t)(colon - line);
    f->value = v;
    f->value_len = (size_t)(end - v);
    return 0;
}

/* length_parse reads a Content-Length value: digits, or a list of identical
 * values ("42, 42", RFC 9110 §8.6). Returns 0 or -1. */
static int length_parse(uint64_t *out, const char *v, size_t len)
{
    size_t i = 0;
    bool has_value = false;
    uint64_t first = 0;
    for (;;) {
        uint64_t x = 0;
        size_t digits = 0;
        while (i < len && v[i] >= '0' && v[i] <= '9') {
            if (x > (UINT64_MAX - 9) / 10) {
                return -1;
            }
            x = x * 10 + (uint64_t)(v[i] - '0');
            i++;
            digits++;
        }
        if (digits == 0 || (has_value && x != first)) {
            return -1;
        }
        first = x;
        has_value = true;
        while (i < len && is_ows(v[i])) {
            i++;
        }
        if (i == len) {
            break;
        }
        if (v[i] != ',') {
            return -1;
        }
        i++;
        while (i < len && is_ows(v[i])) {
            i++;
        }
    }
    *out = first;
    return 0;
}

/* token_list_has walks the comma-separated elements of v (OWS trimmed),
 * adding their number to *out_count. Returns 1 if one equals lit (ASCII
 * case-insensitive), 0 if none does, -1 on an empty element. */
static int token_list_has(const char *v, size_t len, const char *lit, size_t *out_count)
{
    int found = 0;
    size_t i = 0;
    while (i <= len) {
        size_t start = i;
        while (i < len && v[i] != ',') {
            i++;
        }
        size_t s = start, e = i;
        while (s < e && is_ows(v[s])) {
            s++;
        }
        while (e > s && is_ows(v[e - 1])) {
            e--;
        }
        if (e == s) {
            return -1;
        }
        (*out_count)++;
        if (dm_str_ieq_lit(v + s, e - s, lit)) {
            found = 1;
        }
        i++;
    }
    return found;
}

/* head_parse fills h from a complete head p[0..len): CRLF-terminated lines,
 * the last one empty. Returns 0, or -1 with err set (DM_E_PROTO, DM_E_LIMIT). */
static int head_parse(struct head *h, const char *p, size_t len, struct dm_err *err)
{
    h->num_fields = 0;
    h->has_length = false;
    h->length = 0;
    h->is_chunked = false;
    h->has_close = false;

    const char *end = p + len - 2; /* the CRLF of the empty line */
    const char *eol = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
    size_t n = (size_t)(eol - p);
    /* status-line = HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 §4);
     * a missing SP after the code is tolerated. */
    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ' ||
        p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' ||
        (n > 12 && p[12] != ' ')) {
        dm_err_set(err, DM_E_PROTO, "malformed status line");
        return -1;
    }
    for (size_t i = 12; i < n; i++) {
        if (!httpc_is_field_char((unsigned char)p[i])) {
            dm_err_set(err, DM_E_PROTO, "control character in status line");
            return -1;
        }
    }
    h->version_minor = p[7] - '0';
    h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');

    size_t te_count = 0;
    bool has_te = false;
    for (const char *line = eol + 2; line < end; line = eol + 2) {
        eol = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
        n = (size_t)(eol - line);
        if (is_ows(*line)) {
            dm_err_set(err, DM_E_PROTO, "obsolete line folding in response head");
            return -1;
        }
        if (h->num_fields == DM_HTTPC_MAX_HEADERS) {
            dm_err_set(err, DM_E_LIMIT, "more than %d response header fields",
                       DM_HTTPC_MAX_HEADERS);
            return -1;
        }
        struct head_field *f = &h->fields[h->num_fields];
        if (field_parse(f, line, n) != 0) {
            dm_err_set(err, DM_E_PROTO, "malformed response header field");
            return -1;
        }
        h->num_fields++;
        if (dm_str_ieq_lit(f->name, f->name_len, "content-length")) {
            uint64_t v;
            if (length_parse(&v, f->value, f->value_len) != 0 ||
                (h->has_length && v != h->length)) {
                dm_err_set(err, DM_E_PROTO, "invalid Content-Length");
                return -1;
            }
            h->has_length = true;
            h->length = v;
        } else if (dm_str_ieq_lit(f->name, f->name_len, "transfer-encoding")) {
            int r = token_list_has(f->value, f->value_len, "chunked", &te_count);
            if (r < 0) {
                dm_err_set(err, DM_E_PROTO, "invalid Transfer-Encoding");
                return -1;
            }
            has_te = true;
            h->is_chunked = r == 1;
        } else if (dm_str_ieq_lit(f->name, f->name_len, "connection")) {
            size_t count = 0;
            int r = token_list_has(f->value, f->value_len, "close", &count);
            if (r < 0) {
                dm_err_set(err, DM_E_PROTO, "invalid Connection field");
                return -1;
            }
            h->has_close = h->has_close || r == 1;
        }
    }
    /* We send "Accept-Encoding: identity" and decode no transfer coding but
     * chunked, alone: anything else is an error rather than garbage. */
    if (has_te) {
        if (te_count != 1 || !h->is_chunked) {
            dm_err_set(err, DM_E_PROTO, "unsupported Transfer-Encoding");
            return -1;
        }
        if (h->version_minor == 0) {
            dm_err_set(err, DM_E_PROTO, "Transfer-Encoding in an HTTP/1.0 response");
            return -1;
        }
        if (h->has_length) {
            /* RFC 9112 §6.3: a sign of request smuggling; never guess. */
            dm_err_set(err, DM_E_PROTO, "both Content-Length and Transfer-Encoding");
            return -1;
        }
    }
    return 0;
}

/* head_body_kind applies RFC 9112 §6.3 to a final response. */
static enum head_body head_body_kind(const struct head *h, bool is_head)
{
    if (is_head || h->status == 204 || h->status == 304) {
        return HEAD_BODY_NONE;
    }
    if (h->is_chunked) {
        return HEAD_BODY_CHUNKED;
    }
    if (h->has_length) {
        return h->length > 0 ? HEAD_BODY_LENGTH : HEAD_BODY_NONE;
    }
    return HEAD_BODY_EOF;
}

/* resp_new makes a response holding copies of h's fields: one block with the
 * header array followed by the NUL-terminated strings. */
static struct dm_httpc_resp *resp_new(const struct head *h, size_t body_cap, struct dm_err *err)
{
    struct dm_httpc_resp *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        goto nomem;
    }
    r->status = h->status;
    r->body = malloc(body_cap);
    if (r->body == NULL) {
        goto nomem;
    }
    r->body[0] = '\0';
    if (h->num_fields > 0) {
        size_t size = h->num_fields * sizeof(struct dm_httpc_header);
        for (size_t i = 0; i < h->num_fields; i++) {
            size += h->fields[i].name_len + h->fields[i].value_len + 2;
        }
        r->headers = malloc(size);
        if (r->headers == NULL) {
            goto nomem;
        }
        char *s = (char *)(r->headers + h->num_fields);
        for (size_t i = 0; i < h->num_fields; i++) {
            const struct head_field *f = &h->fields[i];
            r->headers[i].name = s;
            memcpy(s, f->name, f->name_len);
            s[f->name_len] = '\0';
            s += f->name_len + 1;
            r->headers[i].value = s;
            memcpy(s, f->value, f->value_len);
            s[f->value_len] = '\0';
            s += f->value_len + 1;
        }
        r->num_headers = h->num_fields;
    }
    return r;
nomem:
    dm_httpc_resp_free(r);
    dm_err_set(err, DM_E_NOMEM, "out of memory for the response");
    return NULL;
}

void httpc_dec_init(struct httpc_dec *d, bool is_head, size_t max_body)
{
    memset(d, 0, sizeof(*d));
    d->is_head = is_head;
    d->max_body = max_body;
}

void httpc_dec_cleanup(struct httpc_dec *d)
{
    dm_httpc_resp_free(d->resp);
    d->resp = NULL;
}

struct dm_httpc_resp *httpc_dec_take(struct httpc_dec *d)
{
    struct dm_httpc_resp *r = d->resp;
    d->resp = NULL;
    return r;
}

/* dec_body_add moves n bytes of in to the body, within max_body. */
static int dec_body_add(struct httpc_dec *d, struct evbuffer *in, size_t n, struct dm_err *err)
{
    struct dm_httpc_resp *r = d->resp;
    if (n > d->max_body - r->body_len) {
        dm_err_set(err, DM_E_LIMIT, "response body larger than %zu bytes", d->max_body);
        return -1;
    }
    size_t need = r->body_len + n + 1;
    if (need > d->body_cap) {
        size_t cap = d->body_cap < 4096 ? 4096 : d->body_cap;
        while (cap < need) {
            cap *= 2;
        }
        if (cap > d->max_body + 1) {
            cap = d->max_body + 1;
        }
        char *b = realloc(r->body, cap);
        if (b == NULL) {
            dm_err_set(err, DM_E_NOMEM, "out of memory for the response body");
            return -1;
        }
        r->body = b;
        d->body_cap = cap;
    }
    evbuffer_remove(in, r->body + r->body_len, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
}

/* The dec_* state handlers return 1 after progress (loop again), 0 when
 * more bytes are needed, -1 on error. */

static int dec_head(struct httpc_dec *d, struct evbuffer *in, enum dec_eof eof, struct dm_err *err)
{
    size_t avail = evbuffer_get_length(in);
    if (avail == 0 && eof != DEC_EOF_NONE) {
        if (d->head_bytes == 0) {
            dm_err_set(err, DM_E_IO, "connection closed before any response byte");
        } else {
            dm_err_set(err, DM_E_PROTO, "connection closed after an interim response");
        }
        return -1;
    }
    size_t budget = DM_HTTPC_MAX_HEAD_BYTES - d->head_bytes;
    struct evbuffer_ptr from;
    evbuffer_ptr_set(in, &from, d->head_scanned >= 3 ? d->head_scanned - 3 : 0, EVBUFFER_PTR_SET);
    struct evbuffer_ptr found = evbuffer_search(in, "\r\n\r\n", 4, &from);
    if (found.pos < 0) {
        d->head_scanned = avail;
        if (avail > budget) {
            dm_err_set(err, DM_E_LIMIT, "response head larger than %d bytes",
                       DM_HTTPC_MAX_HEAD_BYTES);
            return -1;
        }
        if (eof != DEC_EOF_NONE) {
            dm_err_set(err, DM_E_PROTO, "truncated response head");
            return -1;
        }
        return 0;
    }
    size_t head_len = (size_t)found.pos + 4;
    if (head_len > budget) {
        dm_err_set(err, DM_E_LIMIT, "response head larger than %d bytes", DM_HTTPC_MAX_HEAD_BYTES);
        return -1;
    }
    const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)head_len);
    struct head h;
    if (p == NULL || head_parse(&h, p, head_len, err) != 0) {
        return -1;
    }
    d->head_bytes += head_len;
    d->head_scanned = 0;
    if (h.status < 200) {
        /* 100 and 103 are informational and skipped (RFC 9110 §15.2); we never
         * ask for an upgrade, so 101 is an error. */
        if (h.status == 101) {
            dm_err_set(err, DM_E_PROTO, "unexpected 101 Switching Protocols");
            return -1;
        }
        evbuffer_drain(in, head_len);
        return 1;
    }
    enum head_body kind = head_body_kind(&h, d->is_head);
    size_t cap = 1;
    if (kind == HEAD_BODY_LENGTH) {
        if (h.length > d->max_body) {
            dm_err_set(err, DM_E_LIMIT, "response body of %llu bytes, limit %zu",
                       (unsigned long long)h.length, d->max_body);
            return -1;
        }
        cap = (size_t)h.length + 1;
    }
    d->resp = resp_new(&h, cap, err);
    if (d->resp == NULL) {
        return -1;
    }
    d->body_cap = cap;
    evbuffer_drain(in, head_len);
    d->is_keep_alive = h.version_minor == 1 && !h.has_close && kind != HEAD_BODY_EOF;
    switch (kind) {
    case HEAD_BODY_NONE:
        d->state = DEC_DONE;
        break;
    case HEAD_BODY_LENGTH:
        d->remaining = h.length;
        d->state = DEC_BODY_LENGTH;
        break;
    case HEAD_BODY_CHUNKED:
        d->state = DEC_CHUNK_SIZE;
        break;
    case HEAD_BODY_EOF:
        d->state = DEC_BODY_EOF;
        break;
    }
    return 1;
}

/* dec_data moves up to d->remaining bytes to the body; next is the state once
 * they are all in. */
static int dec_data(struct httpc_dec *d, struct evbuffer *in, enum dec_eof eof, enum dec_state next,
                    struct dm_err *err)
{
    size_t avail = evbuffer_get_length(in);
    size_t n = avail < d->remaining ? avail : (size_t)d->remaining;
    if (n > 0 && dec_body_add(d, in, n, err) != 0) {
        return -1;
    }
    d->remaining -= n;
    if (d->remaining == 0) {
        d->state = next;
        return 1;
    }
    if (eof != DEC_EOF_NONE) {
        dm_err_set(err, DM_E_PROTO, "truncated response body (%llu bytes missing)",
                   (unsigned long long)d->remaining);
        return -1;
    }
    return 0;
}

/* chunk_size_parse reads chunk-size [ BWS ";" chunk-ext ] (RFC 9112 §7.1);
 * extensions are skipped but must hold no control characters. */
static int chunk_size_parse(uint64_t *out, const char *p, size_t len)
{
    uint64_t v = 0;
    size_t i = 0;
    for (; i < len; i++) {
        int x;
        char ch = p[i];
        if (ch >= '0' && ch <= '9') {
            x = ch - '0';
        } else if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f') {
            x = (ch | 0x20) - 'a' + 10;
        } else {
            break;
        }
        if (v >> 60 != 0) {
            return -1;
        }
        v = (v << 4) | (uint64_t)x;
    }
    if (i == 0) {
        return -1;
    }
    while (i < len && is_ows(p[i])) {
        i++;
    }
    if (i < len) {
        if (p[i] != ';') {
            return -1;
        }
        for (; i < len; i++) {
            if (!httpc_is_field_char((unsigned char)p[i])) {
                return -1;
            }
        }
    }
    *out = v;
    return 0;
}

/* dec_line finds the next CRLF-terminated line of at most max bytes. Returns
 * its length (>= 0), -2 when incomplete, -1 on error. */
static ssize_t dec_line(struct evbuffer *in, size_t max, enum dec_eof eof, const char *what,
                        struct dm_err *err)
{
    size_t eol_len;
    struct evbuffer_ptr e = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF_STRICT);
    if (e.pos < 0) {
        if (evbuffer_get_length(in) > max) {
            dm_err_set(err, DM_E_PROTO, "%s longer than %zu bytes", what, max);
            return -1;
        }
        if (eof != DEC_EOF_NONE) {
            dm_err_set(err, DM_E_PROTO, "truncated chunked body");
            return -1;
        }
        return -2;
    }
    if ((size_t)e.pos > max) {
        dm_err_set(err, DM_E_PROTO, "%s longer than %zu bytes", what, max);
        return -1;
    }
    return (ssize_t)e.pos;
}

static int dec_chunk_size(struct httpc_dec *d, struct evbuffer *in, enum dec_eof eof,
                          struct dm_err *err)
{
    ssize_t n = dec_line(in, HTTPC_MAX_CHUNK_LINE, eof, "chunk size line", err);
    if (n < 0) {
        return n == -2 ? 0 : -1;
    }
    const char *line = (const char *)evbuffer_pullup(in, n + 2);
    uint64_t size;
    if (line == NULL || chunk_size_parse(&size, line, (size_t)n) != 0) {
        dm_err_set(err, DM_E_PROTO, "invalid chunk size line");
        return -1;
    }
    evbuffer_drain(in, (size_t)n + 2);
    if (size == 0) {
        d->state = DEC_TRAILER;
        return 1;
    }
    if (size > d->max_body - d->resp->body_len) {
        dm_err_set(err, DM_E_LIMIT, "response body larger than %zu bytes", d->max_body);
        return -1;
    }
    d->remaining = size;
    d->state = DEC_CHUNK_DATA;
    return 1;
}

static int dec_chunk_crlf(struct httpc_dec *d, struct evbuffer *in, enum dec_eof eof,
                          struct dm_err *err)
{
    char crlf[2];
    if (evbuffer_get_length(in) < 2) {
        if (eof != DEC_EOF_NONE) {
            dm_err_set(err, DM_E_PROTO, "truncated chunked body");
            return -1;
        }
        return 0;
    }
    evbuffer_copyout(in, crlf, 2);
    if (crlf[0] != '\r' || crlf[1] != '\n') {
        dm_err_set(err, DM_E_PROTO, "chunk data not followed by CRLF");
        return -1;
    }
    evbuffer_drain(in, 2);
    d->state = DEC_CHUNK_SIZE;
    return 1;
}

static int dec_trailer(struct httpc_dec *d, struct evbuffer *in, enum dec_eof eof,
                       struct dm_err *err)
{
    size_t left = HTTPC_MAX_TRAILER_BYTES - d->trailer_bytes;
    ssize_t n = dec_line(in, left < 2 ? 0 : left - 2, eof, "trailer section", err);
    if (n < 0) {
        return n == -2 ? 0 : -1;
    }
    d->trailer_bytes += (size_t)n + 2;
    if (n > 0) {
        struct head_field f;
        const char *line = (const char *)evbuffer_pullup(in, n);
        if (line == NULL || is_ows(*line) || field_parse(&f, line, (size_t)n) != 0) {
            dm_err_set(err, DM_E_PROTO, "malformed trailer field");
            return -1;
        }
    } else {
        d->state = DEC_DONE;
    }
    evbuffer_drain(in, (size_t)n + 2);
    return 1;
}

static int dec_body_eof(struct httpc_dec *d, struct evbuffer *in, enum dec_eof eof,
                        struct dm_err *err)
{
    size_t avail = evbuffer_get_length(in);
    if (avail > 0 && dec_body_add(d, in, avail, err) != 0) {
        return -1;
    }
    if (eof == DEC_EOF_CLEAN) {
        d->state = DEC_DONE;
        return 1;
    }
    if (eof == DEC_EOF_UNCLEAN) {
        /* The body ends with the connection, so a missing close_notify is
         * the only sign of a truncation attack (RFC 8446 §6.1). */
        dm_err_set(err, DM_E_PROTO, "TLS closed without close_notify in a close-delimited body");
        return -1;
    }
    return 0;
}

/* dec_feed decodes what in holds. Returns 1 when the response is complete
 * (any bytes after it stay in in), 0 when more are needed, -1 on error. */
int httpc_dec_feed(struct httpc_dec *d, struct evbuffer *in, enum dec_eof eof, struct dm_err *err)
{
    for (;;) {
        int r = 0;
        switch (d->state) {
        case DEC_HEAD:
            r = dec_head(d, in, eof, err);
            break;
        case DEC_BODY_LENGTH:
            r = dec_data(d, in, eof, DEC_DONE, err);
            break;
        case DEC_CHUNK_SIZE:
            r = dec_chunk_size(d, in, eof, err);
            break;
        case DEC_CHUNK_DATA:
            r = dec_data(d, in, eof, DEC_CHUNK_CRLF, err);
            break;
        case DEC_CHUNK_CRLF:
            r = dec_chunk_crlf(d, in, eof, err);
            break;
        case DEC_TRAILER:
            r = dec_trailer(d, in, eof, err);
            break;
        case DEC_BODY_EOF:
            r = dec_body_eof(d, in, eof, err);
            break;
        case DEC_DONE:
            return 1;
        }
        if (r <= 0) {
            return r;
        }
    }
}

int dm_httpc_resp_parse(struct dm_httpc_resp **out_resp, size_t *out_used, const void *data,
                        size_t len, size_t step, bool is_head, size_t max_body, struct dm_err *err)
{
    int rc = -1;
    struct httpc_dec d;
    httpc_dec_init(&d, is_head, max_body);
    struct evbuffer *in = evbuffer_new();
    if (in == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto out;
    }
    if (step == 0) {
        step = len > 0 ? len : 1;
    }
    int r = 0;
    size_t off = 0;
    while (off < len && r == 0) {
        size_t n = len - off < step ? len - off : step;
        evbuffer_add(in, (const char *)data + off, n);
        off += n;
        r = httpc_dec_feed(&d, in, DEC_EOF_NONE, err);
    }
    if (r == 0) {
        r = httpc_dec_feed(&d, in, DEC_EOF_CLEAN, err);
    }
    if (r > 0) {
        *out_resp = httpc_dec_take(&d);
        if (out_used != NULL) {
            *out_used = off - evbuffer_get_length(in);
        }
        rc = 0;
    }
out:
    httpc_dec_cleanup(&d);
    if (in != NULL) {
        evbuffer_free(in);
    }
    return rc;
}

void dm_httpc_resp_free(struct dm_httpc_resp *r)
{
    if (r == NULL) {
        return;
    }
    free(r->headers);
    free(r->body);
    free(r);
}

const char *dm_httpc_resp_header(const struct dm_httpc_resp *r, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < r->num_headers; i++) {
        if (dm_str_ieq(r->headers[i].name, strlen(r->headers[i].name), name, len)) {
            return r->headers[i].value;
        }
    }
    return NULL;
}
