/* libFuzzer target for proxy/http1_parse.c. The first input byte picks a split
 * point and the limits; the rest is parsed as a request head, a response head
 * (is_head false and true) and a chunked body, each one-shot and fed
 * incrementally (split in two, and the body also one byte at a time) from
 * exact-size heap copies. Results must agree and satisfy the contract
 * (lengths within len, pointers inside the buffer, valid enums); any
 * violation abort()s. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/http1_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_HEADERS 16

static void require(bool ok)
{
    if (!ok) {
        abort();
    }
}

static char *copy_exact(const char *s, size_t len)
{
    char *b = malloc(len > 0 ? len : 1);
    require(b != NULL);
    memcpy(b, s, len);
    return b;
}

static bool inside(const char *p, size_t len, const char *buf, size_t buf_len)
{
    return p >= buf && len <= buf_len && (size_t)(p - buf) <= buf_len - len;
}

static bool lower_eq(const char *s, size_t len, const char *lit)
{
    if (len != strlen(lit)) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c + 32);
        }
        if (c != lit[i]) {
            return false;
        }
    }
    return true;
}

static bool known_ok(const struct dm_http1_msg *m, int idx, const char *name)
{
    if (idx == -1) {
        return true;
    }
    return idx >= 0 && (size_t)idx < m->num_headers &&
           lower_eq(m->headers[idx].name, m->headers[idx].name_len, name);
}

static ssize_t parse(struct dm_http1_parser *p, struct dm_http1_msg *m, const char *buf, size_t len,
                     const struct dm_http1_limits *lim, int mode)
{
    if (mode == 0) {
        return dm_http1_parse_request(p, m, buf, len, lim);
    }
    return dm_http1_parse_response(p, m, buf, len, lim, mode == 2);
}

/* check_msg asserts the contract for a result rv of parsing buf[0..len). */
static void check_msg(const struct dm_http1_msg *m, ssize_t rv, const char *buf, size_t len,
                      const struct dm_http1_limits *lim, int mode)
{
    require(rv >= DM_PARSE_ERROR);
    if (rv == DM_PARSE_ERROR) {
        require(m->error != NULL);
        if (mode == 0) {
            int s = m->error_status;
            require(s == 400 || s == 414 || s == 431 || s == 501 || s == 505);
        } else {
            require(m->error_status == 502);
        }
        return;
    }
    if (rv == DM_PARSE_AGAIN) {
        return;
    }
    size_t n = (size_t)rv;
    require(n <= len && n <= lim->max_header_bytes && n >= 4);
    require(memcmp(buf + n - 4, "\r\n\r\n", 4) == 0);
    require(m->version_minor == 0 || m->version_minor == 1);
    require(m->num_headers <= lim->max_headers);
    for (size_t i = 0; i < m->num_headers; i++) {
        const struct dm_http1_header *h = &m->headers[i];
        require(h->name_len > 0 && inside(h->name, h->name_len, buf, n));
        require(inside(h->value, h->value_len, buf, n));
        require(h->value >= h->name + h->name_len + 1);
        for (size_t k = 0; k < h->name_len; k++) {
            require(dm_http1_is_token_char((unsigned char)h->name[k]));
        }
        require(h->name[h->name_len] == ':');
        for (size_t k = 0; k < h->value_len; k++) {
            unsigned char c = (unsigned char)h->value[k];
            require(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
        if (h->value_len > 0) {
            require(h->value[0] != ' ' && h->value[0] != '\t');
            require(h->value[h->value_len - 1] != ' ' && h->value[h->value_len - 1] != '\t');
        }
    }
    require(known_ok(m, m->known.host, "host"));
    require(known_ok(m, m->known.connection, "connection"));
    require(known_ok(m, m->known.upgrade, "upgrade"));
    require(known_ok(m, m->known.expect, "expect"));
    require(known_ok(m, m->known.content_length, "content-length"));
    require(known_ok(m, m->known.transfer_encoding, "transfer-encoding"));
    require(!(m->known.content_length >= 0 && m->known.transfer_encoding >= 0));
    require(m->body >= DM_HTTP1_BODY_NONE && m->body <= DM_HTTP1_BODY_EOF);
    if (m->body == DM_HTTP1_BODY_LENGTH) {
        require(m->content_length > 0 && m->content_length <= (uint64_t)INT64_MAX);
        require(m->known.content_length >= 0);
    }
    if (m->body == DM_HTTP1_BODY_CHUNKED) {
        require(m->known.transfer_encoding >= 0 && m->version_minor == 1);
    }
    if (m->is_upgrade) {
        require(m->known.upgrade >= 0 && m->known.connection >= 0);
    }
    if (m->conn_has_close) {
        require(!m->keep_alive);
    }
    if (mode == 0) {
        require(m->body != DM_HTTP1_BODY_EOF);
        require(m->method_len > 0 && inside(m->method, m->method_len, buf, n));
        require(m->target_len > 0 && inside(m->target, m->target_len, buf, n));
        for (size_t k = 0; k < m->target_len; k++) {
            unsigned char c = (unsigned char)m->target[k];
            require(c > 0x20 && c < 0x7f);
        }
        require(m->version_minor == 0 || m->known.host >= 0);
    } else {
        require(m->status >= 100 && m->status <= 999);
        require(inside(m->reason, m->reason_len, buf, n));
        if (mode == 2 || m->status < 200 || m->status == 204 || m->status == 304) {
            require(m->body == DM_HTTP1_BODY_NONE);
        }
        if (m->body == DM_HTTP1_BODY_EOF) {
            require(!m->keep_alive);
        }
    }
}

static void check_same(const struct dm_http1_msg *a, ssize_t ra, const struct dm_http1_msg *b,
                       ssize_t rb)
{
    require(ra == rb);
    if (ra == DM_PARSE_ERROR) {
        require(a->error_status == b->error_status);
    }
    if (ra > 0) {
        require(a->num_headers == b->num_headers && a->body == b->body &&
                a->content_length == b->content_length && a->keep_alive == b->keep_alive &&
                a->is_upgrade == b->is_upgrade && a->expect_continue == b->expect_continue &&
                a->status == b->status && a->version_minor == b->version_minor &&
                memcmp(&a->known, &b->known, sizeof(a->known)) == 0);
    }
}

static void fuzz_head(const char *buf, size_t len, size_t split, const struct dm_http1_limits *lim,
                      int mode)
{
    static struct dm_http1_header h1[MAX_HEADERS], h2[MAX_HEADERS];
    struct dm_http1_parser p;
    struct dm_http1_msg m1 = {.headers = h1}, m2 = {.headers = h2};

    dm_http1_parser_init(&p);
    ssize_t r1 = parse(&p, &m1, buf, len, lim, mode);
    check_msg(&m1, r1, buf, len, lim, mode);

    /* Incremental: the prefix, then everything, with one parser. */
    dm_http1_parser_init(&p);
    char *prefix = copy_exact(buf, split);
    ssize_t r2 = parse(&p, &m2, prefix, split, lim, mode);
    check_msg(&m2, r2, prefix, split, lim, mode);
    free(prefix);
    if (r2 > 0 || r2 == DM_PARSE_ERROR) {
        /* A prefix decides only what the whole input decides too. */
        check_same(&m1, r1, &m2, r2);
        return;
    }
    r2 = parse(&p, &m2, buf, len, lim, mode);
    check_msg(&m2, r2, buf, len, lim, mode);
    check_same(&m1, r1, &m2, r2);
}

struct chunk_run {
    bool err;
    size_t consumed;
    size_t data_len;
    char *data; /* owned, len bytes */
    enum dm_http1_chunk_state state;
};

/* chunk_piece feeds buf[0..len) to c until it is consumed, DONE or an error. */
static void chunk_piece(struct dm_http1_chunked *c, const char *buf, size_t len,
                        struct chunk_run *r)
{
    size_t off = 0;
    while (off < len && !r->err) {
        const char *d;
        size_t dl;
        ssize_t rv = dm_http1_chunked_step(c, buf + off, len - off, &d, &dl);
        if (rv == DM_PARSE_ERROR) {
            r->err = true;
            break;
        }
        require(rv >= 0 && (size_t)rv <= len - off);
        if (rv == 0) {
            require(c->state == DM_CHUNK_DONE);
            break;
        }
        if (dl > 0) {
            require(inside(d, dl, buf + off, (size_t)rv));
            require(d + dl == buf + off + rv);
            memcpy(r->data + r->data_len, d, dl);
            r->data_len += dl;
        } else {
            require(d == NULL);
        }
        off += (size_t)rv;
        r->consumed += (size_t)rv;
    }
    r->state = c->state;
}

static void chunk_same(const struct chunk_run *a, const struct chunk_run *b)
{
    require(a->err == b->err);
    if (!a->err) {
        require(a->consumed == b->consumed && a->state == b->state && a->data_len == b->data_len &&
                memcmp(a->data, b->data, a->data_len) == 0);
    }
}

static void fuzz_chunked(const char *buf, size_t len, size_t split)
{
    struct dm_http1_chunked c;
    struct chunk_run one = {.data = malloc(len + 1)}, two = {.data = malloc(len + 1)},
                     bytes = {.data = malloc(len + 1)};
    require(one.data != NULL && two.data != NULL && bytes.data != NULL);

    dm_http1_chunked_init(&c);
    chunk_piece(&c, buf, len, &one);
    require(one.consumed <= len);
    if (!one.err && one.state != DM_CHUNK_DONE) {
        require(one.consumed == len);
    }
    if (one.state == DM_CHUNK_DONE && !one.err) {
        require(one.consumed >= 5);
        require(memcmp(buf + one.consumed - 2, "\r\n", 2) == 0);
    }

    dm_http1_chunked_init(&c);
    char *piece = copy_exact(buf, split);
    chunk_piece(&c, piece, split, &two);
    free(piece);
    if (!two.err && c.state != DM_CHUNK_DONE) {
        piece = copy_exact(buf + split, len - split);
        chunk_piece(&c, piece, len - split, &two);
        free(piece);
    }
    chunk_same(&one, &two);

    dm_http1_chunked_init(&c);
    for (size_t i = 0; i < len && !bytes.err && c.state != DM_CHUNK_DONE; i++) {
        chunk_piece(&c, buf + i, 1, &bytes);
    }
    chunk_same(&one, &bytes);

    free(one.data);
    free(two.data);
    free(bytes.data);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct dm_http1_limits limits[2] = {
        {.max_line = 1024, .max_headers = MAX_HEADERS, .max_header_bytes = 4096},
        {.max_line = 40, .max_headers = 4, .max_header_bytes = 160},
    };
    if (size < 1) {
        return 0;
    }
    const struct dm_http1_limits *lim = &limits[data[0] & 1];
    size_t len = size - 1;
    size_t split = len * data[0] / 255;
    char *buf = copy_exact((const char *)data + 1, len);
    for (int mode = 0; mode < 3; mode++) {
        fuzz_head(buf, len, split, lim, mode);
    }
    fuzz_chunked(buf, len, split);
    free(buf);
    return 0;
}
