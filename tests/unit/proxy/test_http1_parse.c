/* Unit tests for proxy/http1_parse.c: request and response heads, framing and
 * every request-smuggling case we reject, limits, and the chunked decoder.
 * Every head is also parsed byte by byte and every chunked body fed one byte
 * at a time and in random splits, from exact-size heap copies so ASan catches
 * any read past len; the results must match the one-shot parse. */
#include "proxy/http1_parse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define MAX_HEADERS 64

static const struct dm_http1_limits g_lim = {
    .max_line = 8192,
    .max_headers = MAX_HEADERS,
    .max_header_bytes = 16384,
};

static struct dm_http1_header g_headers[MAX_HEADERS];
static struct dm_http1_header g_inc_headers[MAX_HEADERS];
static char *g_buf; /* owned: copy behind the last one-shot parse, so msg pointers stay valid */

static char *copy_exact(const char *s, size_t len)
{
    char *b = malloc(len > 0 ? len : 1);
    if (b == NULL) {
        abort();
    }
    memcpy(b, s, len);
    return b;
}

static ssize_t parse_any(struct dm_http1_parser *p, struct dm_http1_msg *m, const char *b,
                         size_t len, const struct dm_http1_limits *lim, int mode)
{
    if (mode == 0) {
        return dm_http1_parse_request(p, m, b, len, lim);
    }
    return dm_http1_parse_response(p, m, b, len, lim, mode == 2);
}

/* run parses s one-shot into *m (mode 0 request, 1 response, 2 response to
 * HEAD), then again feeding one more byte per call with one parser, and
 * checks both agree. */
static ssize_t run(const char *s, size_t len, struct dm_http1_msg *m,
                   const struct dm_http1_limits *lim, int mode)
{
    free(g_buf);
    g_buf = copy_exact(s, len);
    struct dm_http1_parser p;
    dm_http1_parser_init(&p);
    memset(m, 0, sizeof(*m));
    m->headers = g_headers;
    ssize_t rv = parse_any(&p, m, g_buf, len, lim, mode);

    struct dm_http1_parser ip;
    dm_http1_parser_init(&ip);
    struct dm_http1_msg im = {.headers = g_inc_headers};
    ssize_t irv = DM_PARSE_AGAIN;
    for (size_t k = 0; k <= len && irv == DM_PARSE_AGAIN; k++) {
        char *b = copy_exact(s, k);
        irv = parse_any(&ip, &im, b, k, lim, mode);
        free(b);
    }
    CHECK_EQ_INT(irv, rv);
    if (rv == DM_PARSE_ERROR && irv == DM_PARSE_ERROR) {
        CHECK_EQ_INT(im.error_status, m->error_status);
    }
    if (rv > 0 && irv == rv) {
        CHECK_EQ_INT(im.num_headers, m->num_headers);
        CHECK_EQ_INT(im.body, m->body);
        CHECK_EQ_INT(im.keep_alive, m->keep_alive);
    }
    if (irv != rv || (rv < 0 && im.error_status != m->error_status)) {
        fprintf(stderr, "  incremental mismatch on: %.*s\n", (int)len, s);
    }
    return rv;
}

/* status_of returns 0 for a complete head, -1 for DM_PARSE_AGAIN, otherwise
 * the error status. */
static int status_of(const char *s, size_t len, const struct dm_http1_limits *lim, int mode)
{
    struct dm_http1_msg m;
    ssize_t rv = run(s, len, &m, lim, mode);
    if (rv > 0) {
        return 0;
    }
    return rv == DM_PARSE_AGAIN ? -1 : m.error_status;
}

#define REQ_STATUS(lit, st)            CHECK_EQ_INT(status_of(lit, sizeof(lit) - 1, &g_lim, 0), st)
#define RESP_STATUS(lit, st)           CHECK_EQ_INT(status_of(lit, sizeof(lit) - 1, &g_lim, 1), st)
#define LIM_STATUS(lit, lim, mode, st) CHECK_EQ_INT(status_of(lit, sizeof(lit) - 1, lim, mode), st)
#define REQ(lit, m)                    run(lit, sizeof(lit) - 1, m, &g_lim, 0)
#define RESP(lit, m)                   run(lit, sizeof(lit) - 1, m, &g_lim, 1)
#define RESP_HEAD(lit, m)              run(lit, sizeof(lit) - 1, m, &g_lim, 2)

static bool span_is(const char *p, size_t len, const char *lit)
{
    return p != NULL && len == strlen(lit) && memcmp(p, lit, len) == 0;
}

/* fill builds "<prefix><n x c><suffix>" in buf (cap bytes) and returns its length. */
static size_t fill(char *buf, size_t cap, const char *prefix, size_t n, char c, const char *suffix)
{
    size_t pl = strlen(prefix), sl = strlen(suffix);
    if (pl + n + sl > cap) {
        abort();
    }
    memcpy(buf, prefix, pl);
    memset(buf + pl, c, n);
    memcpy(buf + pl + n, suffix, sl);
    return pl + n + sl;
}

/* ---- Requests: positive ------------------------------------------------ */

static const char browser_get[] =
    "GET /index.html?q=1 HTTP/1.1\r\n"
    "Host: www.example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    "Accept-Language: en-US,en;q=0.5\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Connection: keep-alive\r\n"
    "Cookie: session=abc123; theme=dark\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "Sec-Fetch-Dest: document\r\n"
    "\r\n";

TEST(test_get_browser)
{
    struct dm_http1_msg m;
    CHECK_EQ_INT(REQ(browser_get, &m), sizeof(browser_get) - 1);
    CHECK(span_is(m.method, m.method_len, "GET"));
    CHECK(span_is(m.target, m.target_len, "/index.html?q=1"));
    CHECK_EQ_INT(m.version_minor, 1);
    CHECK_EQ_INT(m.num_headers, 9);
    CHECK(span_is(m.headers[0].name, m.headers[0].name_len, "Host"));
    CHECK(span_is(m.headers[0].value, m.headers[0].value_len, "www.example.com"));
    CHECK(span_is(m.headers[8].name, m.headers[8].name_len, "Sec-Fetch-Dest"));
    CHECK(span_is(m.headers[8].value, m.headers[8].value_len, "document"));
    CHECK_EQ_INT(m.known.host, 0);
    CHECK_EQ_INT(m.known.connection, 5);
    CHECK_EQ_INT(m.known.upgrade, -1);
    CHECK_EQ_INT(m.known.expect, -1);
    CHECK_EQ_INT(m.known.content_length, -1);
    CHECK_EQ_INT(m.known.transfer_encoding, -1);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_NONE);
    CHECK(m.keep_alive);
    CHECK(!m.conn_has_close);
    CHECK(!m.is_upgrade);
    CHECK(!m.expect_continue);
}

TEST(test_field_values)
{
    struct dm_http1_msg m;
    CHECK(
        REQ("GET / HTTP/1.1\r\nHost: a\r\nX-A:   \t v a l \t \r\nX-B:\r\nX-C: \xc3\xa9\x80\xff\r\n"
            "X-D:a\tb\r\nX-E:  \r\n\r\n",
            &m) > 0);
    CHECK_EQ_INT(m.num_headers, 6);
    CHECK(span_is(m.headers[1].value, m.headers[1].value_len, "v a l"));
    CHECK_EQ_INT(m.headers[2].value_len, 0);
    CHECK(span_is(m.headers[3].value, m.headers[3].value_len, "\xc3\xa9\x80\xff"));
    CHECK(span_is(m.headers[4].value, m.headers[4].value_len, "a\tb"));
    CHECK_EQ_INT(m.headers[5].value_len, 0);
    /* Every tchar is allowed in a name. */
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\n!#$%&'*+-.^_`|~09azAZ: x\r\n\r\n", 0);
}

TEST(test_post_content_length)
{
    struct dm_http1_msg m;
    static const char req[] = "POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\n\r\n"
                              "hello, world!";
    CHECK_EQ_INT(REQ(req, &m), sizeof(req) - 1 - 13);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_LENGTH);
    CHECK_EQ_INT(m.content_length, 13);
    CHECK_EQ_INT(m.known.content_length, 1);

    CHECK(REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_NONE);
    CHECK_EQ_INT(m.content_length, 0);

    /* Identical repeated values count as one (RFC 9110 §8.6). */
    CHECK(REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", &m) >
          0);
    CHECK_EQ_INT(m.content_length, 5);
    CHECK_EQ_INT(m.known.content_length, 1);
    CHECK(REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 ,5,\t5\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.content_length, 5);
    CHECK(REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n", &m) > 0);
    CHECK(m.content_length == (uint64_t)INT64_MAX);
    CHECK(REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.content_length, 7);
}

TEST(test_chunked_request)
{
    struct dm_http1_msg m;
    CHECK(REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_CHUNKED);
    CHECK_EQ_INT(m.known.transfer_encoding, 1);
    CHECK(REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_CHUNKED);
    /* Empty list elements are ignored (RFC 9110 §5.6.1). */
    CHECK(REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked ,\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_CHUNKED);
}

TEST(test_pipelined)
{
    static const char two[] = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
                              "POST /b HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\nxy"
                              "\r\nGET /c HTTP/1.1\r\nHost: c\r\n\r\n";
    struct dm_http1_parser p;
    struct dm_http1_msg m = {.headers = g_headers};
    dm_http1_parser_init(&p);
    size_t off = 0;
    ssize_t rv = dm_http1_parse_request(&p, &m, two, sizeof(two) - 1, &g_lim);
    CHECK_EQ_INT(rv, 28);
    CHECK(span_is(m.target, m.target_len, "/a"));
    off += (size_t)rv;
    /* The parser resets itself after a complete head. */
    rv = dm_http1_parse_request(&p, &m, two + off, sizeof(two) - 1 - off, &g_lim);
    CHECK_EQ_INT(rv, 48);
    CHECK(span_is(m.target, m.target_len, "/b"));
    CHECK_EQ_INT(m.content_length, 2);
    off += (size_t)rv + m.content_length;
    /* A CRLF after a body is skipped and counted in the returned length. */
    rv = dm_http1_parse_request(&p, &m, two + off, sizeof(two) - 1 - off, &g_lim);
    CHECK_EQ_INT(rv, 30);
    CHECK(span_is(m.target, m.target_len, "/c"));
    CHECK_EQ_INT(off + (size_t)rv, sizeof(two) - 1);
}

TEST(test_leading_empty_lines)
{
    struct dm_http1_msg m;
    CHECK_EQ_INT(REQ("\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", &m), 35);
    CHECK(span_is(m.method, m.method_len, "GET"));
    REQ_STATUS("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("\r\n\r\n\r\n\r\n", -1);
    REQ_STATUS("\r\n\r\n\r\n\r\n\r\n", 400);
    REQ_STATUS("\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("\r\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS(" \r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

TEST(test_keep_alive)
{
    struct dm_http1_msg m;
    CHECK(REQ("GET / HTTP/1.0\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.version_minor, 0);
    CHECK(!m.keep_alive);
    CHECK(REQ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &m) > 0);
    CHECK(m.keep_alive);
    CHECK(REQ("GET / HTTP/1.0\r\nConnection: Keep-Alive, close\r\n\r\n", &m) > 0);
    CHECK(!m.keep_alive);
    CHECK(m.conn_has_close);
    CHECK(REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", &m) > 0);
    CHECK(!m.keep_alive);
    CHECK(m.conn_has_close);
    CHECK(REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo,,  CLOSE \t, bar\r\n\r\n", &m) > 0);
    CHECK(m.conn_has_close);
    CHECK(!m.keep_alive);
    /* Tokens are whole elements, and the fields combine. */
    CHECK(REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: closed, x-close\r\n\r\n", &m) > 0);
    CHECK(!m.conn_has_close);
    CHECK(m.keep_alive);
    CHECK(REQ("GET / HTTP/1.0\r\nConnection: x\r\nConnection: keep-alive\r\n\r\n", &m) > 0);
    CHECK(m.keep_alive);
    CHECK_EQ_INT(m.known.connection, 0);
}

TEST(test_upgrade)
{
    struct dm_http1_msg m;
    CHECK(REQ("GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
              &m) > 0);
    CHECK(m.is_upgrade);
    CHECK_EQ_INT(m.known.upgrade, 1);
    CHECK_EQ_INT(m.known.connection, 2);
    CHECK(m.keep_alive);
    CHECK(
        REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, upgrade\r\nUpgrade: h2c\r\n\r\n",
            &m) > 0);
    CHECK(m.is_upgrade);
    CHECK(REQ("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", &m) > 0);
    CHECK(!m.is_upgrade);
    CHECK(REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", &m) > 0);
    CHECK(!m.is_upgrade);
    /* RFC 9110 §7.8: Upgrade in an HTTP/1.0 request is ignored. */
    CHECK(REQ("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", &m) > 0);
    CHECK(!m.is_upgrade);
}

TEST(test_expect)
{
    struct dm_http1_msg m;
    CHECK(REQ("PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-Continue\r\n\r\n",
              &m) > 0);
    CHECK(m.expect_continue);
    CHECK_EQ_INT(m.known.expect, 2);
    CHECK(REQ("PUT /x HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\n\r\n", &m) > 0);
    CHECK(!m.expect_continue);
    CHECK_EQ_INT(m.known.expect, 1);
    CHECK(REQ("PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, x\r\n\r\n", &m) > 0);
    CHECK(!m.expect_continue);
    /* RFC 9110 §10.1.1: ignored in HTTP/1.0. */
    CHECK(REQ("PUT /x HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", &m) > 0);
    CHECK(!m.expect_continue);
}

TEST(test_target_forms)
{
    struct dm_http1_msg m;
    CHECK(REQ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", &m) > 0);
    CHECK(span_is(m.target, m.target_len, "*"));
    REQ_STATUS("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("OPTIONS /x HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    CHECK(REQ("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", &m) > 0);
    CHECK(span_is(m.target, m.target_len, "example.com:443"));
    REQ_STATUS("CONNECT [::1]:443 HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    REQ_STATUS("CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("CONNECT example.com: HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("CONNECT http://a:1/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET http://example.com/x?y HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    REQ_STATUS("GET HTTPS://EXAMPLE.com HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    REQ_STATUS("GET http://[::1]:8080/ HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    REQ_STATUS("GET http://user@example.com/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET ftp://example.com/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET index.html HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

TEST(test_request_line)
{
    REQ_STATUS("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400);
    REQ_STATUS(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET /\tHTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET /\r\n\r\n", 400); /* HTTP/0.9 */
    REQ_STATUS("GET / \r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("G(ET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("G\x80T / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    /* Methods are case-sensitive tokens: unknown ones are the proxy's business. */
    REQ_STATUS("get / HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    REQ_STATUS("X-CUSTOM.METHOD / HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    REQ_STATUS("GET /\"<>{}|\\^`#[] HTTP/1.1\r\nHost: a\r\n\r\n", 0);
}

TEST(test_versions)
{
    REQ_STATUS("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505);
    REQ_STATUS("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505);
    REQ_STATUS("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505);
    REQ_STATUS("GET / HTTP/3.1\r\nHost: a\r\n\r\n", 505);
    REQ_STATUS("GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/2\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET / http/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1,1\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/a.1\r\nHost: a\r\n\r\n", 400);
}

/* ---- Requests: smuggling ----------------------------------------------- */

TEST(test_cl_te)
{
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
               "Transfer-Encoding: chunked\r\n\r\n",
               400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
               "Content-Length: 0\r\n\r\n",
               400);
}

TEST(test_content_length_invalid)
{
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\nContent-Length: 4\r\n\r\n",
               400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\t2\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5.0\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ,\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,,5\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xd9\xa5\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551621\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
               400);
}

TEST(test_transfer_encoding_invalid)
{
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
               "Transfer-Encoding: gzip\r\n\r\n",
               400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
               "Transfer-Encoding: chunked\r\n\r\n",
               400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked x\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunk\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \xe2\x80\x8b"
               "chunked\r\n\r\n",
               400);
    /* Valid but not supported: another coding before the final chunked. */
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
               "Transfer-Encoding: chunked\r\n\r\n",
               501);
    REQ_STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: x;a=b, chunked\r\n\r\n", 501);
    /* RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing. */
    REQ_STATUS("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
    REQ_STATUS("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
               "Content-Length: 5\r\n\r\n",
               400);
}

TEST(test_obs_fold)
{
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n , chunked\r\n\r\n", 400);
}

TEST(test_bare_cr_lf)
{
    REQ_STATUS("GET / HTTP/1.1\rHost: a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\n\r\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX\r: b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\n\rX: b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\nHost: a\n\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\n\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nX: a\nb\r\nHost: a\r\n\r\n", 400);
    /* A bare LF is an error as soon as it arrives, before the head ends. */
    REQ_STATUS("GET / HTTP/1.1\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX: \n", 400);
}

TEST(test_ctl_in_fields)
{
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX\0: b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX: \0\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX: a\x1f\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX: a\x0b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX: a\x0c\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX: \ta\t\r\n\r\n", 0);
}

/* Values and targets are scanned 8 bytes at a time: put each kind of byte at
 * every offset of a long value and a long target. */
TEST(test_long_values_and_targets)
{
    static const struct {
        unsigned char byte;
        int value_status;
        int target_status;
    } cases[] = {
        {0x00, 400, 400}, {0x01, 400, 400}, {0x1f, 400, 400}, {0x7f, 400, 400},
        {'\r', 400, 400}, {'\n', 400, 400}, {'\t', 0, 400},   {' ', 0, 400},
        {0x80, 0, 400},   {0xff, 0, 400},   {'~', 0, 0},      {'"', 0, 0},
    };
    char b[256];
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        for (size_t off = 0; off < 24; off++) {
            struct dm_http1_msg m;
            size_t n = fill(b, sizeof(b), "GET / HTTP/1.1\r\nHost: a\r\nX: ", 24, 'v', "\r\n\r\n");
            b[28 + off] = (char)cases[c].byte;
            ssize_t rv = run(b, n, &m, &g_lim, 0);
            CHECK_EQ_INT(rv > 0 ? 0 : m.error_status, cases[c].value_status);
            if (rv > 0 && off > 0 && off < 23) {
                CHECK_EQ_INT(m.headers[1].value_len, 24);
            }
            n = fill(b, sizeof(b), "GET /", 24, 'a', " HTTP/1.1\r\nHost: a\r\n\r\n");
            b[5 + off] = (char)cases[c].byte;
            rv = run(b, n, &m, &g_lim, 0);
            CHECK_EQ_INT(rv > 0 ? 0 : m.error_status, cases[c].target_status);
            if (rv > 0) {
                CHECK_EQ_INT(m.target_len, 25);
            }
        }
    }
}

TEST(test_field_names)
{
    REQ_STATUS("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX/y: b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\n\"X\": b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX-No-Colon\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX y: b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\n[X]: b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nX:: b\r\n\r\n", 0); /* value ": b" */
}

TEST(test_host)
{
    struct dm_http1_msg m;
    REQ_STATUS("GET / HTTP/1.1\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nX: a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nhost: a\r\nHOST: b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    CHECK(REQ("GET / HTTP/1.0\r\nHost: a.example\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.known.host, 0);
    CHECK(REQ("GET / HTTP/1.0\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.known.host, -1);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: \r\n\r\n", 0); /* RFC 9110 §7.2 */
    REQ_STATUS("GET / HTTP/1.1\r\nHost: example.com:8443\r\n\r\n", 0);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: EXAMPLE.com.\r\n\r\n", 0);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: xn--bcher-kva.example\r\n\r\n", 0);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n", 0);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n", 0);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n", 0);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a%2Db\r\n\r\n", 0);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a:\r\n\r\n", 0); /* port = *DIGIT */
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a?b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a#b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a%2\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\xc3\xa9\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a:000080\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: :80\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: [:]\r\n\r\n", 400);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: [a@b]\r\n\r\n", 400);
}

/* ---- Limits ------------------------------------------------------------ */

TEST(test_limit_line)
{
    struct dm_http1_limits lim = {.max_line = 64, .max_headers = 8, .max_header_bytes = 1024};
    char b[512];
    /* "GET /" + n + " HTTP/1.1" is 14 + n bytes. */
    size_t n = fill(b, sizeof(b), "GET /", 50, 'a', " HTTP/1.1\r\nHost: a\r\n\r\n");
    CHECK_EQ_INT(status_of(b, n, &lim, 0), 0);
    n = fill(b, sizeof(b), "GET /", 51, 'a', " HTTP/1.1\r\nHost: a\r\n\r\n");
    CHECK_EQ_INT(status_of(b, n, &lim, 0), 414);
    /* Incomplete: 414 once max_line + 2 bytes hold no LF, not before. */
    n = fill(b, sizeof(b), "GET /", 60, 'a', "");
    CHECK_EQ_INT(status_of(b, n, &lim, 0), -1);
    n = fill(b, sizeof(b), "GET /", 59, 'a', "\r");
    CHECK_EQ_INT(status_of(b, n, &lim, 0), -1);
    n = fill(b, sizeof(b), "GET /", 60, 'a', "\r");
    CHECK_EQ_INT(status_of(b, n, &lim, 0), 414);
    n = fill(b, sizeof(b), "GET /", 300, 'a', "");
    CHECK_EQ_INT(status_of(b, n, &lim, 0), 414);
    /* Leading empty lines do not count towards the line. */
    n = fill(b, sizeof(b), "\r\n\r\nGET /", 50, 'a', " HTTP/1.1\r\nHost: a\r\n\r\n");
    CHECK_EQ_INT(status_of(b, n, &lim, 0), 0);
    /* Field lines are bounded by max_header_bytes, not max_line. */
    n = fill(b, sizeof(b), "GET / HTTP/1.1\r\nHost: a\r\nX: ", 200, 'v', "\r\n\r\n");
    CHECK_EQ_INT(status_of(b, n, &lim, 0), 0);
    /* Responses answer 502. */
    n = fill(b, sizeof(b), "HTTP/1.1 200 ", 60, 'r', "\r\n\r\n");
    CHECK_EQ_INT(status_of(b, n, &lim, 1), 502);
    n = fill(b, sizeof(b), "HTTP/1.1 200 ", 200, 'r', "");
    CHECK_EQ_INT(status_of(b, n, &lim, 1), 502);
}

TEST(test_limit_bytes)
{
    struct dm_http1_limits lim = {.max_line = 256, .max_headers = 8, .max_header_bytes = 100};
    char b[512];
    /* "GET / HTTP/1.1\r\nHost: a\r\nX: " is 28 bytes, "\r\n\r\n" 4: n = 68 makes 100. */
    size_t n = fill(b, sizeof(b), "GET / HTTP/1.1\r\nHost: a\r\nX: ", 68, 'v', "\r\n\r\n");
    CHECK_EQ_INT(n, 100);
    CHECK_EQ_INT(status_of(b, n, &lim, 0), 0);
    n = fill(b, sizeof(b), "GET / HTTP/1.1\r\nHost: a\r\nX: ", 69, 'v', "\r\n\r\n");
    CHECK_EQ_INT(status_of(b, n, &lim, 0), 431);
    /* Incomplete: AGAIN up to max_header_bytes, then 431 without waiting for the end. */
    n = fill(b, sizeof(b), "GET / HTTP/1.1\r\nHost: a\r\nX: ", 72, 'v', "");
    CHECK_EQ_INT(n, 100);
    CHECK_EQ_INT(status_of(b, n, &lim, 0), -1);
    n = fill(b, sizeof(b), "GET / HTTP/1.1\r\nHost: a\r\nX: ", 73, 'v', "");
    CHECK_EQ_INT(status_of(b, n, &lim, 0), 431);
    /* A body after a head that fits is no problem. */
    n = fill(b, sizeof(b), "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 300\r\n\r\n", 300, 'x',
             "");
    CHECK_EQ_INT(status_of(b, n, &lim, 0), 0);
    n = fill(b, sizeof(b), "HTTP/1.1 200 OK\r\nX: ", 200, 'v', "\r\n\r\n");
    CHECK_EQ_INT(status_of(b, n, &lim, 1), 502);
}

TEST(test_limit_count)
{
    struct dm_http1_limits lim = {.max_line = 256, .max_headers = 3, .max_header_bytes = 4096};
    LIM_STATUS("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n", &lim, 0, 0);
    LIM_STATUS("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", &lim, 0, 431);
    /* Incomplete: the fourth complete field line is enough. */
    LIM_STATUS("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n", &lim, 0, 431);
    LIM_STATUS("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3", &lim, 0, -1);
    lim.max_headers = 0;
    LIM_STATUS("GET / HTTP/1.0\r\n\r\n", &lim, 0, 0);
    LIM_STATUS("GET / HTTP/1.0\r\nA: 1\r\n", &lim, 0, 431);
    LIM_STATUS("HTTP/1.1 200 OK\r\nA: 1\r\n\r\n", &lim, 1, 502);
}

TEST(test_incomplete)
{
    REQ_STATUS("", -1);
    REQ_STATUS("G", -1);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\n", -1);
    REQ_STATUS("GET / HTTP/1.1\r\nHost: a\r\n\r", -1);
    RESP_STATUS("HTTP/1.1 200 OK\r\n", -1);
    /* Resuming: a parser fed a growing buffer scans each byte once and
     * matches a fresh parse. */
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n";
    struct dm_http1_parser p;
    struct dm_http1_msg m = {.headers = g_headers};
    dm_http1_parser_init(&p);
    CHECK_EQ_INT(dm_http1_parse_request(&p, &m, req, 20, &g_lim), DM_PARSE_AGAIN);
    CHECK_EQ_INT(p.scanned, 20);
    CHECK_EQ_INT(p.line_start, 16);
    CHECK_EQ_INT(dm_http1_parse_request(&p, &m, req, sizeof(req) - 2, &g_lim), DM_PARSE_AGAIN);
    CHECK_EQ_INT(dm_http1_parse_request(&p, &m, req, sizeof(req) - 1, &g_lim), sizeof(req) - 1);
    CHECK_EQ_INT(p.scanned, 0);
    /* A parser that is not reset for a shorter buffer starts over. */
    p.scanned = 1000;
    CHECK_EQ_INT(dm_http1_parse_request(&p, &m, req, sizeof(req) - 1, &g_lim), sizeof(req) - 1);
}

/* ---- Responses --------------------------------------------------------- */

TEST(test_response_framing)
{
    struct dm_http1_msg m;
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                             "\r\nhello";
    CHECK_EQ_INT(RESP(ok, &m), sizeof(ok) - 1 - 5);
    CHECK_EQ_INT(m.status, 200);
    CHECK(span_is(m.reason, m.reason_len, "OK"));
    CHECK_EQ_INT(m.version_minor, 1);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_LENGTH);
    CHECK_EQ_INT(m.content_length, 5);
    CHECK(m.keep_alive);
    CHECK(m.method == NULL);

    CHECK(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_CHUNKED);
    CHECK(m.keep_alive);
    CHECK(RESP("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_NONE);
    /* Neither: read until EOF, so the connection cannot be reused. */
    CHECK(RESP("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_EOF);
    CHECK(!m.keep_alive);
    CHECK(RESP("HTTP/1.0 200 OK\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_EOF);
    CHECK(RESP("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n", &m) > 0);
    CHECK(m.keep_alive);
    CHECK_EQ_INT(m.version_minor, 0);
    CHECK(RESP("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", &m) > 0);
    CHECK(!m.keep_alive);
    CHECK(RESP("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n", &m) > 0);
    CHECK(!m.keep_alive);
    CHECK(m.conn_has_close);

    /* No body: 204, 304, 1xx, HEAD, whatever the fields say. */
    CHECK(RESP("HTTP/1.1 204 No Content\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_NONE);
    CHECK(m.keep_alive);
    CHECK(RESP("HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_NONE);
    CHECK_EQ_INT(m.content_length, 1234);
    CHECK(RESP("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_NONE);
    CHECK(RESP_HEAD("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_NONE);
    CHECK_EQ_INT(m.content_length, 1234);
    CHECK(m.keep_alive);
    CHECK(RESP_HEAD("HTTP/1.1 200 OK\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_NONE);
    CHECK(m.keep_alive);
    CHECK(RESP_HEAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_NONE);
    CHECK(RESP("HTTP/1.1 100 Continue\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.status, 100);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_NONE);
    CHECK(RESP("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_NONE);
    CHECK(RESP("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
               &m) > 0);
    CHECK_EQ_INT(m.status, 101);
    CHECK(m.is_upgrade);
    CHECK_EQ_INT(m.body, DM_HTTP1_BODY_NONE);
}

TEST(test_response_status_line)
{
    struct dm_http1_msg m;
    CHECK(RESP("HTTP/1.1 200\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.reason_len, 0);
    CHECK(RESP("HTTP/1.1 404 \r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.status, 404);
    CHECK_EQ_INT(m.reason_len, 0);
    CHECK(RESP("HTTP/1.1 599 A\treason \xe9 (x)\r\n\r\n", &m) > 0);
    CHECK(span_is(m.reason, m.reason_len, "A\treason \xe9 (x)"));
    CHECK(RESP("HTTP/1.1 999 X\r\n\r\n", &m) > 0);
    CHECK_EQ_INT(m.status, 999);
    RESP_STATUS("HTTP/1.1 099 X\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 20 OK\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 2000 OK\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 2x0 OK\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1  200 OK\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1\t200 OK\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200\tOK\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 O\x01K\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 OK\rX\r\n\r\n", 502);
    RESP_STATUS("HTTP/2.0 200 OK\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.2 200 OK\r\n\r\n", 502);
    RESP_STATUS("http/1.1 200 OK\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1\r\n\r\n", 502);
    RESP_STATUS("ICY 200 OK\r\n\r\n", 502);
    RESP_STATUS("\r\nHTTP/1.1 200 OK\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 OK\nContent-Length: 0\n\n", 502);
}

TEST(test_response_smuggling)
{
    RESP_STATUS("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 OK\r\nX : a\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 OK\r\nX: a\0\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", 502);
    RESP_STATUS("HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n", 502);
    /* Host is not checked in responses. */
    RESP_STATUS("HTTP/1.1 200 OK\r\nHost: a b\r\nHost: c\r\nContent-Length: 0\r\n\r\n", 0);
}

/* ---- Chunked decoder --------------------------------------------------- */

struct chunk_result {
    int err;         /* 1 after DM_PARSE_ERROR */
    size_t consumed; /* bytes consumed in all */
    size_t data_len;
    char data[65536];
    enum dm_http1_chunk_state state;
};

/* chunk_feed decodes s, cut into pieces at cuts[0..num_cuts) (ascending),
 * each piece copied to an exact-size heap buffer. */
static void chunk_feed(const char *s, size_t len, const size_t *cuts, size_t num_cuts,
                       struct chunk_result *r)
{
    struct dm_http1_chunked c;
    dm_http1_chunked_init(&c);
    memset(r, 0, sizeof(*r));
    size_t start = 0;
    for (size_t k = 0; k <= num_cuts && !r->err && c.state != DM_CHUNK_DONE; k++) {
        size_t end = k < num_cuts ? cuts[k] : len;
        char *piece = copy_exact(s + start, end - start);
        size_t off = 0;
        while (off < end - start) {
            const char *d;
            size_t dl;
            ssize_t rv = dm_http1_chunked_step(&c, piece + off, end - start - off, &d, &dl);
            if (rv < 0) {
                r->err = 1;
                break;
            }
            if (rv == 0) {
                break;
            }
            CHECK((size_t)rv <= end - start - off);
            if (dl > 0) {
                CHECK(d >= piece + off && d + dl == piece + off + rv);
                if (r->data_len + dl <= sizeof(r->data)) {
                    memcpy(r->data + r->data_len, d, dl);
                }
                r->data_len += dl;
            } else {
                CHECK(d == NULL);
            }
            off += (size_t)rv;
        }
        r->consumed += off;
        free(piece);
        start = end;
    }
    r->state = c.state;
}

static void chunk_same(const struct chunk_result *a, const struct chunk_result *b, const char *s,
                       size_t len, const char *how)
{
    bool same = a->err == b->err && a->state == b->state && a->data_len == b->data_len &&
                memcmp(a->data, b->data, a->data_len < sizeof(a->data) ? a->data_len : 0) == 0 &&
                (a->err || a->consumed == b->consumed);
    CHECK(same);
    if (!same) {
        fprintf(stderr, "  %s differs from one-shot on: %.*s\n", how, (int)len, s);
    }
}

/* chunk_decode decodes s one-shot into *r, then one byte at a time and in
 * random splits, and checks every way gives the same result. */
static void chunk_decode(const char *s, size_t len, struct chunk_result *r)
{
    static struct chunk_result other;
    static size_t cuts[70000];
    chunk_feed(s, len, NULL, 0, r);
    if (len <= sizeof(cuts) / sizeof(cuts[0])) {
        for (size_t i = 0; i < len; i++) {
            cuts[i] = i;
        }
        chunk_feed(s, len, cuts, len, &other);
        chunk_same(r, &other, s, len, "bytewise");
    }
    uint32_t seed = 12345;
    for (int round = 0; round < 20; round++) {
        size_t num = 0, pos = 0;
        for (;;) {
            seed = seed * 1103515245u + 12345u;
            pos += 1 + (seed >> 16) % 9;
            if (pos >= len) {
                break;
            }
            cuts[num++] = pos;
        }
        chunk_feed(s, len, cuts, num, &other);
        chunk_same(r, &other, s, len, "random split");
    }
}

static struct chunk_result g_cr;

#define CHUNK(lit) chunk_decode(lit, sizeof(lit) - 1, &g_cr)
#define CHUNK_OK(lit, want)                                                                        \
    do {                                                                                           \
        chunk_decode(lit, sizeof(lit) - 1, &g_cr);                                                 \
        CHECK_EQ_INT(g_cr.err, 0);                                                                 \
        CHECK_EQ_INT(g_cr.state, DM_CHUNK_DONE);                                                   \
        CHECK(span_is(g_cr.data, g_cr.data_len, want));                                            \
    } while (0)
#define CHUNK_BAD(lit)                                                                             \
    do {                                                                                           \
        chunk_decode(lit, sizeof(lit) - 1, &g_cr);                                                 \
        CHECK_EQ_INT(g_cr.err, 1);                                                                 \
    } while (0)

TEST(test_chunked_basic)
{
    CHUNK_OK("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world");
    CHECK_EQ_INT(g_cr.consumed, 26);
    CHUNK_OK("0\r\n\r\n", "");
    CHUNK_OK("a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n", "01234567890123456789");
    CHUNK_OK("0000000000000001\r\nx\r\n0\r\n\r\n", "x");
    CHUNK_OK("1\r\n\r\r\n1\r\n\n\r\n0\r\n\r\n", "\r\n"); /* data is opaque */
    /* Bytes after the final CRLF belong to the next message. */
    CHUNK("3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n");
    CHECK_EQ_INT(g_cr.err, 0);
    CHECK_EQ_INT(g_cr.state, DM_CHUNK_DONE);
    CHECK_EQ_INT(g_cr.consumed, 13);
    /* Incomplete bodies stop in the right state. */
    CHUNK("5\r\nhel");
    CHECK_EQ_INT(g_cr.state, DM_CHUNK_DATA);
    CHECK_EQ_INT(g_cr.consumed, 6);
    CHUNK("5\r\nhello");
    CHECK_EQ_INT(g_cr.state, DM_CHUNK_DATA_CRLF);
    CHUNK("5\r\nhello\r\n0\r\nX: y\r\n");
    CHECK_EQ_INT(g_cr.state, DM_CHUNK_TRAILERS);
    CHECK_EQ_INT(g_cr.err, 0);
}

TEST(test_chunked_step_api)
{
    struct dm_http1_chunked c;
    const char *d = (const char *)1;
    size_t dl = 99;
    dm_http1_chunked_init(&c);
    CHECK_EQ_INT(dm_http1_chunked_step(&c, "", 0, &d, &dl), DM_PARSE_AGAIN);
    CHECK(d == NULL);
    CHECK_EQ_INT(dl, 0);
    /* One call stops after the first data run. */
    static const char body[] = "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    ssize_t rv = dm_http1_chunked_step(&c, body, sizeof(body) - 1, &d, &dl);
    CHECK_EQ_INT(rv, 6);
    CHECK(d == body + 3);
    CHECK_EQ_INT(dl, 3);
    rv = dm_http1_chunked_step(&c, body + 6, sizeof(body) - 1 - 6, &d, &dl);
    CHECK_EQ_INT(rv, 7);
    CHECK(d == body + 11);
    CHECK_EQ_INT(dl, 2);
    rv = dm_http1_chunked_step(&c, body + 13, sizeof(body) - 1 - 13, &d, &dl);
    CHECK_EQ_INT(rv, 7);
    CHECK_EQ_INT(dl, 0);
    CHECK_EQ_INT(c.state, DM_CHUNK_DONE);
    CHECK_EQ_INT(dm_http1_chunked_step(&c, "x", 1, &d, &dl), DM_PARSE_AGAIN);
    /* The largest size that fits: 16 hex digits. */
    dm_http1_chunked_init(&c);
    rv = dm_http1_chunked_step(&c, "FFFFFFFFFFFFFFFF\r\nab", 20, &d, &dl);
    CHECK_EQ_INT(rv, 20);
    CHECK_EQ_INT(dl, 2);
    CHECK(c.remaining == UINT64_MAX - 2);
}

TEST(test_chunked_extensions_trailers)
{
    CHUNK_OK("5;foo=bar\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNK_OK("5 ;foo\r\nhello\r\n0;last\r\n\r\n", "hello");
    CHUNK_OK("5\t; a = \"q;d\" ; b\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNK_OK("5;\xff\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNK_OK("5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-B:\r\nX-C: a\tb \xc3\xa9\r\n\r\n", "hello");
    CHUNK_OK("0\r\nExpires: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n", "");
    /* The size line bound is inclusive. */
    char b[8192];
    size_t n = fill(b, sizeof(b), "1;", DM_HTTP1_MAX_CHUNK_LINE - 2, 'e', "\r\nx\r\n0\r\n\r\n");
    chunk_decode(b, n, &g_cr);
    CHECK_EQ_INT(g_cr.err, 0);
    CHECK_EQ_INT(g_cr.state, DM_CHUNK_DONE);
    n = fill(b, sizeof(b), "1;", DM_HTTP1_MAX_CHUNK_LINE - 1, 'e', "\r\nx\r\n0\r\n\r\n");
    chunk_decode(b, n, &g_cr);
    CHECK_EQ_INT(g_cr.err, 1);
}

TEST(test_chunked_bad_sizes)
{
    CHUNK_BAD("g\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("0x10\r\n0123456789abcdef\r\n0\r\n\r\n");
    CHUNK_BAD("-5\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("+5\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD(" 5\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5 \r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5 x\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5,5\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD(";x\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("00000000000000005\r\nhello\r\n0\r\n\r\n"); /* 17 digits */
    CHUNK_BAD("10000000000000000\r\n");                   /* 2^64: overflow */
    CHUNK_BAD("FFFFFFFFFFFFFFFFFFFF\r\n");
    CHUNK_BAD("5;a\x01\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5;a\0\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5;a\x7f\r\nhello\r\n0\r\n\r\n");
    char b[8192];
    size_t n = fill(b, sizeof(b), "5;", 5000, 'e', "\r\nhello\r\n0\r\n\r\n");
    chunk_decode(b, n, &g_cr);
    CHECK_EQ_INT(g_cr.err, 1);
    /* Rejected while incomplete, before the CRLF arrives. */
    n = fill(b, sizeof(b), "5;", 5000, 'e', "");
    chunk_decode(b, n, &g_cr);
    CHECK_EQ_INT(g_cr.err, 1);
}

TEST(test_chunked_bad_crlf)
{
    CHUNK_BAD("5\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5\rhello\r\n0\r\n\r\n");
    CHUNK_BAD("5;x\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5\r\nhelloX\r\n0\r\n\r\n");
    CHUNK_BAD("5\r\nhello\n0\r\n\r\n");
    CHUNK_BAD("5\r\nhello\r0\r\n\r\n");
    CHUNK_BAD("5\r\nhello0\r\n\r\n");
    CHUNK_BAD("5\r\nhello\r\r\n0\r\n\r\n");
    CHUNK_BAD("5\r\nhello\r\n0\n\r\n");
    CHUNK_BAD("5\r\nhello\r\n0\r\n\n");
    CHUNK_BAD("5\r\nhello\r\n0\r\n\rX");
    CHUNK_BAD("4\r\nhello\r\n0\r\n\r\n"); /* size too small: data does not end with CRLF */
    CHUNK_BAD("6\r\nhello\r\n0\r\n\r\n");
}

TEST(test_chunked_bad_trailers)
{
    CHUNK_BAD("0\r\nX: a\r\n b\r\n\r\n");
    CHUNK_BAD("0\r\n X: a\r\n\r\n");
    CHUNK_BAD("0\r\n\tX: a\r\n\r\n");
    CHUNK_BAD("0\r\nX : a\r\n\r\n");
    CHUNK_BAD("0\r\nX\r\n\r\n");
    CHUNK_BAD("0\r\n: a\r\n\r\n");
    CHUNK_BAD("0\r\nX(: a\r\n\r\n");
    CHUNK_BAD("0\r\nX: a\0\r\n\r\n");
    CHUNK_BAD("0\r\nX: a\x01\r\n\r\n");
    CHUNK_BAD("0\r\nX: a\nY: b\r\n\r\n");
    CHUNK_BAD("0\r\nX: a\rY: b\r\n\r\n");
    CHUNK_BAD("0\r\nX: a\r\n\n");
    char b[20000];
    /* "0\r\n" + "X: " + n + "\r\n\r\n": the trailer section is n + 7 bytes. */
    size_t n = fill(b, sizeof(b), "0\r\nX: ", DM_HTTP1_MAX_TRAILER_BYTES - 7, 'v', "\r\n\r\n");
    chunk_decode(b, n, &g_cr);
    CHECK_EQ_INT(g_cr.err, 0);
    CHECK_EQ_INT(g_cr.state, DM_CHUNK_DONE);
    n = fill(b, sizeof(b), "0\r\nX: ", DM_HTTP1_MAX_TRAILER_BYTES - 6, 'v', "\r\n\r\n");
    chunk_decode(b, n, &g_cr);
    CHECK_EQ_INT(g_cr.err, 1);
    /* Many small trailer fields add up too. */
    memcpy(b, "0\r\n", 3);
    size_t off = 3;
    while (off + 8 < sizeof(b) - 4) {
        memcpy(b + off, "A: 1234\r\n", 9);
        off += 9;
    }
    memcpy(b + off, "\r\n", 2);
    chunk_decode(b, off + 2, &g_cr);
    CHECK_EQ_INT(g_cr.err, 1);
}

TEST(test_chunked_large)
{
    /* Several chunks of assorted sizes, checked against the expected data. */
    static char body[60000];
    static char want[50000];
    size_t bl = 0, wl = 0;
    uint32_t seed = 7;
    for (int i = 0; i < 40; i++) {
        seed = seed * 1103515245u + 12345u;
        size_t sz = 1 + (seed >> 8) % 1000;
        bl += (size_t)snprintf(body + bl, sizeof(body) - bl, "%zx%s\r\n", sz,
                               i % 3 == 0 ? ";ext=1" : "");
        for (size_t k = 0; k < sz; k++) {
            char ch = (char)('a' + (k + (size_t)i) % 26);
            body[bl++] = ch;
            want[wl++] = ch;
        }
        body[bl++] = '\r';
        body[bl++] = '\n';
    }
    memcpy(body + bl, "0\r\nT: v\r\n\r\n", 11);
    bl += 11;
    chunk_decode(body, bl, &g_cr);
    CHECK_EQ_INT(g_cr.err, 0);
    CHECK_EQ_INT(g_cr.state, DM_CHUNK_DONE);
    CHECK_EQ_INT(g_cr.consumed, bl);
    CHECK_EQ_INT(g_cr.data_len, wl);
    CHECK(memcmp(g_cr.data, want, wl) == 0);
}

TEST(test_token_char)
{
    CHECK(dm_http1_is_token_char('a'));
    CHECK(dm_http1_is_token_char('~'));
    CHECK(dm_http1_is_token_char('!'));
    CHECK(!dm_http1_is_token_char(':'));
    CHECK(!dm_http1_is_token_char(' '));
    CHECK(!dm_http1_is_token_char('"'));
    CHECK(!dm_http1_is_token_char(0));
    CHECK(!dm_http1_is_token_char(0x80));
    CHECK(!dm_http1_is_token_char(0x7f));
}

static void release_buffers(void)
{
    free(g_buf);
    g_buf = NULL;
}

HARNESS_MAIN(T(test_get_browser), T(test_field_values), T(test_post_content_length),
             T(test_chunked_request), T(test_pipelined), T(test_leading_empty_lines),
             T(test_keep_alive), T(test_upgrade), T(test_expect), T(test_target_forms),
             T(test_request_line), T(test_versions), T(test_cl_te), T(test_content_length_invalid),
             T(test_transfer_encoding_invalid), T(test_obs_fold), T(test_bare_cr_lf),
             T(test_ctl_in_fields), T(test_long_values_and_targets), T(test_field_names),
             T(test_host), T(test_limit_line), T(test_limit_bytes), T(test_limit_count),
             T(test_incomplete), T(test_response_framing), T(test_response_status_line),
             T(test_response_smuggling), T(test_chunked_basic), T(test_chunked_step_api),
             T(test_chunked_extensions_trailers), T(test_chunked_bad_sizes),
             T(test_chunked_bad_crlf), T(test_chunked_bad_trailers), T(test_chunked_large),
             T(test_token_char), T(release_buffers))
