/*
 * dm_test_backend: a single-threaded HTTP/1.1 origin server for doorman's integration tests
 * (keep-alive, pipelining, streamed bodies, delays, resets, WebSocket echo, 103 Early Hints,
 * small static files for the browser test).
 * Plain POSIX sockets and poll(2); links only libc (digests in digest.c, no TLS library).
 * Invariants: a connection handles one request at a time, so pipelined responses leave in
 * request order; every buffer is bounded: input by IN_CAP, output by OUT_HIGH (reading and
 * producing stop while the output is above it and resume once the socket drains).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "digest.h"

#define IN_CAP         (256 * 1024) /* bytes; > doorman's largest header limit (64 KiB) */
#define OUT_HIGH       (256 * 1024) /* bytes of queued output above which we stop producing */
#define GEN_PIECE      (64 * 1024)  /* bytes generated per step for /bytes */
#define MAX_HEADERS    256
#define MAX_CONNS      4000
#define MAX_LISTENERS  8
#define CHUNK_LINE_MAX 4096 /* bytes; a chunk-size line (with extensions) longer is a 400 */
#define LINGER_MS      1000 /* after our FIN, how long to drain the peer before close() */
#define SERVICE_ROUNDS 64   /* step/flush rounds per connection per poll, for fairness */
#define WS_GUID        "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* ---- small helpers ---------------------------------------------------------------------- */

static const char *backend_name = "backend";
static const char *static_dir; /* --static: files served under /static/, or NULL */
/* --delay MS: /hello answers after MS milliseconds (a slow backend). */
static int64_t hello_delay_ms;
static volatile sig_atomic_t stop_requested;
static uint64_t conns_accepted;
static uint64_t requests_total;
static size_t conns_open;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "dm_test_backend: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- byte buffer ------------------------------------------------------------------------ */

struct buf {
    char *data; /* owned */
    size_t off; /* bytes consumed from the front */
    size_t len; /* bytes pending after off */
    size_t cap; /* bytes allocated */
};

static void buf_reserve(struct buf *b, size_t n)
{
    if (b->cap - b->off - b->len >= n) {
        return;
    }
    if (b->off > 0) {
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
    }
    if (b->cap - b->len >= n) {
        return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < n) {
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (p == NULL) {
        die("out of memory");
    }
    b->data = p;
    b->cap = cap;
}

static void buf_append(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->data + b->off + b->len, p, n);
    b->len += n;
}

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        die("vsnprintf failed");
    }
    buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->data + b->off + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void buf_consume(struct buf *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (b->len == 0) {
        b->off = 0;
    }
}

static char *buf_head(struct buf *b)
{
    return b->data + b->off;
}

static void buf_json_string(struct buf *b, const char *s)
{
    buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            buf_printf(b, "\\%c", *p);
        } else if (*p < 0x20 || *p >= 0x7f) {
            /* Bytes >= 0x80 as Latin-1 code points keep the document valid JSON whatever came
             * in; tests compare ASCII. */
            buf_printf(b, "\\u%04x", *p);
        } else {
            buf_append(b, p, 1);
        }
    }
    buf_append(b, "\"", 1);
}

/* ---- connections ------------------------------------------------------------------------ */

enum conn_state {
    CS_HEAD = 0, /* waiting for / parsing a request head */
    CS_BODY,     /* consuming the request body into the endpoint's sink */
    CS_PRODUCE,  /* generating a response body (/bytes) as output drains */
    CS_TIMER,    /* waiting for deadline_ms (/delay, /slowbody) */
    CS_WS,       /* WebSocket echo after a 101 */
    CS_LINGER,   /* flush output, send FIN, drain input until EOF or deadline, then close */
    CS_RESET,    /* flush output, then close with SO_LINGER 0 (RST) */
};

enum body_framing {
    BODY_NONE = 0,
    BODY_LENGTH,
    BODY_CHUNKED,
};

enum chunk_state {
    CH_SIZE = 0,
    CH_DATA,
    CH_DATA_END,
    CH_TRAILER,
};

enum out_framing {
    OUT_LENGTH = 0,
    OUT_CHUNKED,
    OUT_CLOSE, /* close-delimited, for HTTP/1.0 clients of chunked endpoints */
};

enum endpoint {
    EP_NOT_FOUND = 0,
    EP_HELLO,
    EP_ECHO,
    EP_HEADERS,
    EP_BYTES,
    EP_SUM,
    EP_DELAY,
    EP_STATUS,
    EP_CLOSE,
    EP_RESET,
    EP_HALF,
    EP_WS,
    EP_TRAILERS,
    EP_SLOWBODY,
    EP_STATS,
    EP_HINTS,
    EP_STATIC,
    EP_BAD_REQUEST,
};

enum step {
    STEP_CONTINUE = 0, /* state changed or progress made: step again */
    STEP_WAIT,         /* needs input, output space or time */
};

struct header {
    char *name;  /* borrowed from conn.head */
    char *value; /* borrowed from conn.head */
};

enum ws_state {
    WS_FRAME_HEAD = 0,
    WS_FRAME_PAYLOAD,
};

struct conn {
    int fd;
    uint64_t id;           /* 1-based ordinal of accepted connections */
    uint64_t num_requests; /* requests seen on this connection */
    char peer[80];
    enum conn_state state;
    struct buf in;  /* unparsed input, at most IN_CAP bytes */
    struct buf out; /* queued output */
    bool is_peer_eof;
    bool is_dead;
    bool is_fin_sent;
    int64_t deadline_ms; /* for CS_TIMER and CS_LINGER; monotonic */

    /* The current request. */
    char *head; /* owned: NUL-split copy of the request head */
    char *method, *target, *version;
    int minor;
    struct header headers[MAX_HEADERS];
    size_t num_headers;
    bool is_head_method;
    bool is_keep_alive;
    bool has_expect_continue;
    enum endpoint endpoint;
    int status_code; /* /status */
    enum body_framing framing;
    uint64_t content_length; /* bytes, BODY_LENGTH */
    uint64_t body_remaining; /* bytes left in the body (LENGTH) or current chunk */
    enum chunk_state chunk;
    uint64_t body_len;          /* bytes of body seen */
    uint64_t body_hash;         /* FNV-1a 64 of the body */
    struct dmt_sha256 body_sha; /* SHA-256 of the body, /sum only */

    /* The current response. */
    enum out_framing out_framing;
    uint64_t gen_remaining; /* bytes still to generate */
    uint64_t gen_offset;    /* pattern position of the next byte */
    uint64_t piece_len;     /* bytes per /slowbody piece */
    int64_t interval_ms;    /* /delay total, /slowbody per piece */

    /* WebSocket frame being relayed. */
    enum ws_state ws;
    uint64_t ws_remaining; /* payload bytes left */
    unsigned char ws_mask[4];
    uint64_t ws_pos;  /* payload offset, for the mask */
    bool ws_discard;  /* pong: read and drop */
    bool ws_is_close; /* close frame: shut down after echoing it */
};

static char pattern[GEN_PIECE + 26];

static void pattern_init(void)
{
    for (size_t i = 0; i < sizeof(pattern); i++) {
        pattern[i] = (char)('a' + i % 26);
    }
}

static const char *status_reason(int code)
{
    switch (code) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 413:
        return "Content Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Status";
    }
}

static bool status_has_body(int code)
{
    return !(code < 200 || code == 204 || code == 304);
}

static const char *conn_header_find(struct conn *c, const char *name)
{
    for (size_t i = 0; i < c->num_headers; i++) {
        if (strcasecmp(c->headers[i].name, name) == 0) {
            return c->headers[i].value;
        }
    }
    return NULL;
}

/* True if the comma-separated header list value contains token (case-insensitive). */
static bool list_has_token(const char *value, const char *token)
{
    size_t tlen = strlen(token);
    const char *p = value;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',') {
            p++;
        }
        const char *start = p;
        while (*p && *p != ',') {
            p++;
        }
        const char *end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t')) {
            end--;
        }
        if ((size_t)(end - start) == tlen && strncasecmp(start, token, tlen) == 0) {
            return true;
        }
    }
    return false;
}

/* Finds query parameter key in the request target; copies its value into out. */
static bool query_param(const char *target, const char *key, char *out, size_t out_len)
{
    const char *q = strchr(target, '?');
    if (q == NULL) {
        return false;
    }
    size_t klen = strlen(key);
    for (const char *p = q + 1; *p;) {
        const char *end = strchr(p, '&');
        if (end == NULL) {
            end = p + strlen(p);
        }
        if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            size_t vlen = (size_t)(end - p) - klen - 1;
            if (vlen >= out_len) {
                return false;
            }
            memcpy(out, p + klen + 1, vlen);
            out[vlen] = '\0';
            return true;
        }
        p = *end ? end + 1 : end;
    }
    return false;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    if (*s == '\0' || strlen(s) > 19) {
        return false;
    }
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') {
            return false;
        }
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return true;
}

static bool query_u64(const char *target, const char *key, uint64_t *out)
{
    char v[32];
    return query_param(target, key, v, sizeof(v)) && parse_u64(v, out);
}

/* ---- response writing ------------------------------------------------------------------- */

/* Queues a response head. extra holds further header lines, each ending in CRLF, or NULL. */
static void conn_write_head(struct conn *c, int code, const char *content_type,
                            enum out_framing framing, uint64_t length, const char *extra)
{
    if (framing == OUT_CHUNKED && c->minor == 0) {
        framing = OUT_CLOSE;
    }
    if (framing == OUT_CLOSE) {
        c->is_keep_alive = false;
    }
    c->out_framing = framing;
    buf_printf(&c->out, "HTTP/1.1 %d %s\r\n", code, status_reason(code));
    buf_printf(&c->out,
               "X-Backend: %s\r\nX-Conn-Requests: %" PRIu64 "\r\nX-Conn-Id: %" PRIu64 "\r\n",
               backend_name, c->num_requests, c->id);
    if (content_type != NULL) {
        buf_printf(&c->out, "Content-Type: %s\r\n", content_type);
    }
    if (status_has_body(code)) {
        if (framing == OUT_LENGTH) {
            buf_printf(&c->out, "Content-Length: %" PRIu64 "\r\n", length);
        } else if (framing == OUT_CHUNKED) {
            buf_printf(&c->out, "Transfer-Encoding: chunked\r\n");
        }
    }
    if (!c->is_keep_alive) {
        buf_printf(&c->out, "Connection: close\r\n");
    } else if (c->minor == 0) {
        buf_printf(&c->out, "Connection: keep-alive\r\n");
    }
    if (extra != NULL) {
        buf_printf(&c->out, "%s", extra);
    }
    buf_printf(&c->out, "\r\n");
}

static void conn_write_body(struct conn *c, const void *p, size_t n)
{
    if (c->is_head_method || n == 0) {
        return;
    }
    if (c->out_framing == OUT_CHUNKED) {
        buf_printf(&c->out, "%zx\r\n", n);
        buf_append(&c->out, p, n);
        buf_append(&c->out, "\r\n", 2);
    } else {
        buf_append(&c->out, p, n);
    }
}

/* Ends a chunked body; trailers holds header lines ending in CRLF, or NULL. */
static void conn_write_body_end(struct conn *c, const char *trailers)
{
    if (c->is_head_method || c->out_framing != OUT_CHUNKED) {
        return;
    }
    buf_printf(&c->out, "0\r\n%s\r\n", trailers ? trailers : "");
}

static void conn_respond_simple(struct conn *c, int code, const char *content_type,
                                const char *body)
{
    size_t n = status_has_body(code) ? strlen(body) : 0;
    conn_write_head(c, code, content_type, OUT_LENGTH, n, NULL);
    conn_write_body(c, body, n);
}

static void conn_enter_linger(struct conn *c)
{
    c->state = CS_LINGER;
    c->deadline_ms = 0;
}

/* The response is queued in full: next request, or close if not keep-alive. */
static void conn_response_done(struct conn *c)
{
    free(c->head);
    c->head = NULL;
    if (c->is_keep_alive) {
        c->state = CS_HEAD;
    } else {
        conn_enter_linger(c);
    }
}

static void conn_fail(struct conn *c, int code, const char *why)
{
    char body[256];
    if (c->state == CS_BODY && c->endpoint == EP_ECHO) {
        c->is_dead = true; /* the 200 head is already out: all we can do is cut it short */
        return;
    }
    snprintf(body, sizeof(body), "%s\n", why);
    c->is_keep_alive = false;
    c->is_head_method = false;
    if (c->num_requests == 0) {
        c->num_requests = 1;
    }
    conn_respond_simple(c, code, "text/plain", body);
    conn_response_done(c);
}

/* ---- request head ----------------------------------------------------------------------- */

static bool is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Splits c->head (len bytes, NUL-terminated) into request line and headers, in place. */
static bool conn_parse_head(struct conn *c, size_t len)
{
    char *p = c->head;
    char *end = c->head + len;
    size_t line_no = 0;
    c->num_headers = 0;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL) {
            return false;
        }
        *nl = '\0';
        if (nl > p && nl[-1] == '\r') {
            nl[-1] = '\0';
        }
        char *line = p;
        p = nl + 1;
        if (*line == '\0') {
            break; /* end of head */
        }
        if (line_no++ == 0) {
            char *sp1 = strchr(line, ' ');
            char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
            if (sp1 == NULL || sp2 == NULL || sp1 == line || sp2 == sp1 + 1) {
                return false;
            }
            *sp1 = '\0';
            *sp2 = '\0';
            c->method = line;
            c->target = sp1 + 1;
            c->version = sp2 + 1;
            for (char *m = c->method; *m; m++) {
                if (!is_tchar((unsigned char)*m)) {
                    return false;
                }
            }
            if (strcmp(c->version, "HTTP/1.1") == 0) {
                c->minor = 1;
            } else if (strcmp(c->version, "HTTP/1.0") == 0) {
                c->minor = 0;
            } else {
                return false;
            }
            continue;
        }
        if (c->num_headers == MAX_HEADERS) {
            return false;
        }
        char *colon = strchr(line, ':');
        if (colon == NULL || colon == line) {
            return false;
        }
        *colon = '\0';
        for (char *n = line; *n; n++) {
            if (!is_tchar((unsigned char)*n)) {
                return false; /* covers obs-fold (leading space) and space before colon */
            }
        }
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') {
            v++;
        }
        char *ve = v + strlen(v);
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) {
            *--ve = '\0';
        }
        c->headers[c->num_headers].name = line;
        c->headers[c->num_headers].value = v;
        c->num_headers++;
    }
    return line_no > 0;
}

/* Decides framing and connection reuse from the parsed head (RFC 9112 §6.3, §9.3). */
static bool conn_parse_semantics(struct conn *c, const char **why)
{
    bool has_length = false;
    bool has_te = false;
    c->framing = BODY_NONE;
    c->content_length = 0;
    c->is_keep_alive = c->minor == 1;
    c->has_expect_continue = false;
    for (size_t i = 0; i < c->num_headers; i++) {
        const char *n = c->headers[i].name;
        const char *v = c->headers[i].value;
        if (strcasecmp(n, "Content-Length") == 0) {
            uint64_t cl;
            if (!parse_u64(v, &cl)) {
                *why = "bad Content-Length";
                return false;
            }
            if (has_length && cl != c->content_length) {
                *why = "conflicting Content-Length";
                return false;
            }
            has_length = true;
            c->content_length = cl;
        } else if (strcasecmp(n, "Transfer-Encoding") == 0) {
            has_te = true;
            const char *last = strrchr(v, ',');
            last = last ? last + 1 : v;
            while (*last == ' ' || *last == '\t') {
                last++;
            }
            if (strcasecmp(last, "chunked") != 0 || c->minor == 0) {
                *why = "unsupported Transfer-Encoding";
                return false;
            }
        } else if (strcasecmp(n, "Connection") == 0) {
            if (list_has_token(v, "close")) {
                c->is_keep_alive = false;
            } else if (c->minor == 0 && list_has_token(v, "keep-alive")) {
                c->is_keep_alive = true;
            }
        } else if (strcasecmp(n, "Expect") == 0) {
            c->has_expect_continue = strcasecmp(v, "100-continue") == 0;
        }
    }
    if (has_te) {
        c->framing = BODY_CHUNKED;
        if (has_length) {
            c->is_keep_alive = false; /* RFC 9112 §6.1: close after a CL+TE message */
        }
    } else if (has_length && c->content_length > 0) {
        c->framing = BODY_LENGTH;
    }
    c->body_remaining = c->content_length;
    c->chunk = CH_SIZE;
    c->body_len = 0;
    c->body_hash = DMT_FNV64_OFFSET;
    dmt_sha256_init(&c->body_sha);
    return true;
}

static enum endpoint endpoint_find(const char *target)
{
    static const struct {
        const char *path;
        enum endpoint ep;
    } table[] = {
        {"/hello", EP_HELLO},       {"/echo", EP_ECHO},   {"/headers", EP_HEADERS},
        {"/bytes", EP_BYTES},       {"/sum", EP_SUM},     {"/delay", EP_DELAY},
        {"/status", EP_STATUS},     {"/close", EP_CLOSE}, {"/reset", EP_RESET},
        {"/half", EP_HALF},         {"/ws", EP_WS},       {"/trailers", EP_TRAILERS},
        {"/slowbody", EP_SLOWBODY}, {"/stats", EP_STATS}, {"/hints", EP_HINTS},
    };
    size_t plen = strcspn(target, "?");
    if (static_dir != NULL && strncmp(target, "/static/", 8) == 0) {
        return EP_STATIC;
    }
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (strlen(table[i].path) == plen && strncmp(table[i].path, target, plen) == 0) {
            return table[i].ep;
        }
    }
    return EP_NOT_FOUND;
}

static void conn_start_ws(struct conn *c)
{
    const char *upgrade = conn_header_find(c, "Upgrade");
    const char *key = conn_header_find(c, "Sec-WebSocket-Key");
    const char *version = conn_header_find(c, "Sec-WebSocket-Version");
    if (strcmp(c->method, "GET") != 0 || upgrade == NULL || !list_has_token(upgrade, "websocket") ||
        key == NULL || version == NULL || strcmp(version, "13") != 0 || c->framing != BODY_NONE) {
        conn_fail(c, 400, "bad websocket handshake");
        return;
    }
    struct dmt_sha1 s;
    unsigned char digest[20];
    char accept[32];
    dmt_sha1_init(&s);
    dmt_sha1_update(&s, key, strlen(key));
    dmt_sha1_update(&s, WS_GUID, strlen(WS_GUID));
    dmt_sha1_final(&s, digest);
    dmt_base64_encode(accept, digest, sizeof(digest));
    char bad[8];
    if (query_param(c->target, "badaccept", bad, sizeof(bad)) && strcmp(bad, "1") == 0) {
        accept[0] = accept[0] == 'A' ? 'B' : 'A'; /* /ws?badaccept=1: a wrong answer */
    }
    buf_printf(&c->out,
               "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Accept: %s\r\nX-Backend: %s\r\nX-Conn-Requests: %" PRIu64
               "\r\nX-Conn-Id: %" PRIu64 "\r\n\r\n",
               accept, backend_name, c->num_requests, c->id);
    char flag[8];
    if (query_param(c->target, "hello", flag, sizeof(flag)) && strcmp(flag, "1") == 0) {
        /* /ws?hello=1: a first text frame tells what the upgrade request carried. */
        const char *proto = conn_header_find(c, "Sec-WebSocket-Protocol");
        const char *ext = conn_header_find(c, "Sec-WebSocket-Extensions");
        const char *conn_hdr = conn_header_find(c, "Connection");
        char text[1024];
        int n = snprintf(text, sizeof(text),
                         "method=%s upgrade=%s connection=%s version=%s key=%s protocol=%s "
                         "extensions=%s",
                         c->method, upgrade, conn_hdr ? conn_hdr : "-", version, key,
                         proto ? proto : "-", ext ? ext : "-");
        n = n < 0 ? 0 : n > 125 * 8 ? 125 * 8 : n;
        unsigned char h[4] = {0x81, 126, (unsigned char)(n >> 8), (unsigned char)n};
        if (n < 126) {
            h[1] = (unsigned char)n;
            buf_append(&c->out, h, 2);
        } else {
            buf_append(&c->out, h, 4);
        }
        buf_append(&c->out, text, (size_t)n);
    }
    free(c->head);
    c->head = NULL;
    c->state = CS_WS;
    c->ws = WS_FRAME_HEAD;
}

/* Starts the endpoint once the head is parsed; returns with c->state set. */
static void conn_start_request(struct conn *c)
{
    const char *why = NULL;
    if (!conn_parse_semantics(c, &why)) {
        conn_fail(c, 400, why);
        return;
    }
    c->is_head_method = strcmp(c->method, "HEAD") == 0;
    c->endpoint = endpoint_find(c->target);
    switch (c->endpoint) {
    case EP_CLOSE:
        conn_enter_linger(c);
        return;
    case EP_RESET:
        c->state = CS_RESET;
        return;
    case EP_HALF:
        c->is_keep_alive = false;
        conn_write_head(c, 200, "text/plain", OUT_LENGTH, 1000, NULL);
        buf_append(&c->out, pattern, 10);
        conn_enter_linger(c);
        return;
    case EP_WS:
        conn_start_ws(c);
        return;
    case EP_BYTES:
        if (!query_u64(c->target, "n", &c->gen_remaining)) {
            c->endpoint = EP_BAD_REQUEST;
        }
        break;
    case EP_DELAY:
    case EP_SLOWBODY: {
        uint64_t ms = 0;
        c->piece_len = 1;
        if (!query_u64(c->target, "ms", &ms) || ms > 3600 * 1000) {
            c->endpoint = EP_BAD_REQUEST;
        }
        c->interval_ms = (int64_t)ms;
        if (c->endpoint == EP_SLOWBODY) {
            char v[32];
            if (!query_u64(c->target, "bytes", &c->gen_remaining) ||
                (query_param(c->target, "piece", v, sizeof(v)) &&
                 (!parse_u64(v, &c->piece_len) || c->piece_len == 0))) {
                c->endpoint = EP_BAD_REQUEST;
            }
        }
        break;
    }
    case EP_STATUS: {
        uint64_t code = 0;
        if (!query_u64(c->target, "code", &code) || code < 200 || code > 599) {
            c->endpoint = EP_BAD_REQUEST;
        }
        c->status_code = (int)code;
        break;
    }
    default:
        break;
    }
    if (c->endpoint == EP_HELLO && hello_delay_ms > 0) {
        c->endpoint = EP_DELAY;
        c->interval_ms = hello_delay_ms;
        c->piece_len = 1;
    }
    if (c->has_expect_continue && c->framing != BODY_NONE) {
        buf_printf(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
    }
    if (c->endpoint == EP_HINTS) {
        /* RFC 8297: an interim 103 first, then the final answer. */
        buf_printf(&c->out, "HTTP/1.1 103 Early Hints\r\n"
                            "Link: </static/style.css>; rel=preload; as=style\r\n"
                            "Link: </static/app.js>; rel=preload; as=script\r\n\r\n");
    }
    if (c->endpoint == EP_ECHO) {
        if (c->framing == BODY_CHUNKED) {
            conn_write_head(c, 200, "application/octet-stream", OUT_CHUNKED, 0, NULL);
        } else {
            conn_write_head(c, 200, "application/octet-stream", OUT_LENGTH, c->content_length,
                            NULL);
        }
    }
    c->state = CS_BODY;
}

/* Returns the length of the head at the front of b (through the empty line), or 0. */
static size_t head_length(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] != '\n') {
            continue;
        }
        if (i + 1 < len && p[i + 1] == '\n') {
            return i + 2;
        }
        if (i + 2 < len && p[i + 1] == '\r' && p[i + 2] == '\n') {
            return i + 3;
        }
    }
    return 0;
}

static enum step conn_step_head(struct conn *c)
{
    /* RFC 9112 §2.2: ignore empty lines before a request line. */
    while (c->in.len > 0 && (buf_head(&c->in)[0] == '\r' || buf_head(&c->in)[0] == '\n')) {
        if (buf_head(&c->in)[0] == '\r' && (c->in.len < 2 || buf_head(&c->in)[1] != '\n')) {
            break;
        }
        buf_consume(&c->in, buf_head(&c->in)[0] == '\r' ? 2 : 1);
    }
    size_t len = head_length(buf_head(&c->in), c->in.len);
    if (len == 0) {
        if (c->in.len >= IN_CAP) {
            conn_fail(c, 431, "request head too large");
            return STEP_CONTINUE;
        }
        if (c->is_peer_eof) {
            conn_enter_linger(c);
            return STEP_CONTINUE;
        }
        return STEP_WAIT;
    }
    c->head = malloc(len + 1);
    if (c->head == NULL) {
        die("out of memory");
    }
    memcpy(c->head, buf_head(&c->in), len);
    c->head[len] = '\0';
    buf_consume(&c->in, len);
    c->num_requests++;
    requests_total++;
    if (memchr(c->head, '\0', len) != NULL || !conn_parse_head(c, len)) {
        conn_fail(c, 400, "malformed request head");
        return STEP_CONTINUE;
    }
    conn_start_request(c);
    return STEP_CONTINUE;
}

/* ---- request body ----------------------------------------------------------------------- */

static void conn_body_feed(struct conn *c, const char *p, size_t n)
{
    c->body_len += n;
    if (c->endpoint == EP_SUM) {
        c->body_hash = dmt_fnv1a64(c->body_hash, (const unsigned char *)p, n);
        dmt_sha256_update(&c->body_sha, p, n);
    } else if (c->endpoint == EP_ECHO) {
        conn_write_body(c, p, n);
    }
}

static void conn_respond_headers(struct conn *c)
{
    struct buf j = {0};
    buf_printf(&j, "{\"method\":");
    buf_json_string(&j, c->method);
    buf_printf(&j, ",\"target\":");
    buf_json_string(&j, c->target);
    buf_printf(&j, ",\"version\":");
    buf_json_string(&j, c->version);
    buf_printf(&j, ",\"peer\":");
    buf_json_string(&j, c->peer);
    buf_printf(&j, ",\"body_length\":%" PRIu64 ",\"headers\":[", c->body_len);
    for (size_t i = 0; i < c->num_headers; i++) {
        buf_printf(&j, "%s[", i ? "," : "");
        buf_json_string(&j, c->headers[i].name);
        buf_printf(&j, ",");
        buf_json_string(&j, c->headers[i].value);
        buf_printf(&j, "]");
    }
    buf_printf(&j, "]}\n");
    conn_write_head(c, 200, "application/json", OUT_LENGTH, j.len, NULL);
    conn_write_body(c, buf_head(&j), j.len);
    free(j.data);
}

/* Answers /static/NAME with the file NAME of --static (a flat directory of small files; names
 * with '/' or a leading '.' are 404). Blocking reads are fine here: files are tiny and local. */
static void conn_respond_static(struct conn *c)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".css", "text/css"},
        {".js", "text/javascript"},
        {".png", "image/png"},
        {".svg", "image/svg+xml"},
        {".json", "application/json"},
    };
    const char *name = c->target + 8;
    size_t name_len = strcspn(name, "?");
    char path[PATH_MAX];
    if (name_len == 0 || name[0] == '.' || memchr(name, '/', name_len) != NULL ||
        snprintf(path, sizeof(path), "%s/%.*s", static_dir, (int)name_len, name) >=
            (int)sizeof(path)) {
        conn_respond_simple(c, 404, "text/plain", "not found\n");
        return;
    }
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        conn_respond_simple(c, 404, "text/plain", "not found\n");
        return;
    }
    struct buf body = {0};
    char piece[8192];
    size_t n;
    while ((n = fread(piece, 1, sizeof(piece), f)) > 0 && body.len < OUT_HIGH) {
        buf_append(&body, piece, n);
    }
    fclose(f);
    const char *type = "application/octet-stream";
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        size_t el = strlen(types[i].ext);
        if (name_len > el && strncmp(name + name_len - el, types[i].ext, el) == 0) {
            type = types[i].type;
        }
    }
    conn_write_head(c, 200, type, OUT_LENGTH, body.len, "Cache-Control: no-store\r\n");
    conn_write_body(c, body.data, body.len);
    free(body.data);
}

/* The request body has been consumed: answer (or start answering). */
static void conn_on_body_done(struct conn *c)
{
    char text[512];
    switch (c->endpoint) {
    case EP_HELLO:
        snprintf(text, sizeof(text), "hello from %s\n", backend_name);
        conn_respond_simple(c, 200, "text/plain", text);
        break;
    case EP_ECHO:
        conn_write_body_end(c, NULL);
        break;
    case EP_HEADERS:
        conn_respond_headers(c);
        break;
    case EP_SUM: {
        char extra[160];
        char sha_hex[65];
        dmt_sha256_final_hex(&c->body_sha, sha_hex);
        snprintf(extra, sizeof(extra),
                 "X-Body-Length: %" PRIu64 "\r\nX-Body-Fnv1a64: %016" PRIx64 "\r\n", c->body_len,
                 c->body_hash);
        snprintf(text, sizeof(text),
                 "{\"length\":%" PRIu64 ",\"fnv1a64\":\"%016" PRIx64 "\",\"sha256\":\"%s\"}\n",
                 c->body_len, c->body_hash, sha_hex);
        conn_write_head(c, 200, "application/json", OUT_LENGTH, strlen(text), extra);
        conn_write_body(c, text, strlen(text));
        break;
    }
    case EP_BYTES:
        if (query_param(c->target, "chunked", text, sizeof(text)) && strcmp(text, "1") == 0) {
            conn_write_head(c, 200, "application/octet-stream", OUT_CHUNKED, 0, NULL);
        } else {
            conn_write_head(c, 200, "application/octet-stream", OUT_LENGTH, c->gen_remaining, NULL);
        }
        c->gen_offset = 0;
        c->state = CS_PRODUCE;
        return;
    case EP_DELAY:
        c->deadline_ms = now_ms() + c->interval_ms;
        c->state = CS_TIMER;
        return;
    case EP_SLOWBODY:
        conn_write_head(c, 200, "application/octet-stream", OUT_LENGTH, c->gen_remaining, NULL);
        c->gen_offset = 0;
        c->deadline_ms = now_ms() + c->interval_ms;
        c->state = CS_TIMER;
        return;
    case EP_STATUS:
        snprintf(text, sizeof(text), "status %d\n", c->status_code);
        conn_respond_simple(c, c->status_code, "text/plain", text);
        break;
    case EP_TRAILERS: {
        static const char *const parts[] = {"first chunk\n", "second chunk\n", "third chunk\n"};
        uint64_t h = DMT_FNV64_OFFSET;
        conn_write_head(c, 200, "text/plain", OUT_CHUNKED, 0, "Trailer: X-Checksum\r\n");
        for (size_t i = 0; i < 3; i++) {
            h = dmt_fnv1a64(h, (const unsigned char *)parts[i], strlen(parts[i]));
            conn_write_body(c, parts[i], strlen(parts[i]));
        }
        snprintf(text, sizeof(text), "X-Checksum: %016" PRIx64 "\r\n", h);
        conn_write_body_end(c, text);
        break;
    }
    case EP_HINTS:
        snprintf(text, sizeof(text), "hints from %s\n", backend_name);
        conn_respond_simple(c, 200, "text/plain", text);
        break;
    case EP_STATIC:
        conn_respond_static(c);
        break;
    case EP_STATS:
        snprintf(text, sizeof(text),
                 "{\"connections\":%" PRIu64 ",\"open\":%zu,\"requests\":%" PRIu64 "}\n",
                 conns_accepted, conns_open, requests_total);
        conn_respond_simple(c, 200, "application/json", text);
        break;
    case EP_BAD_REQUEST:
        conn_respond_simple(c, 400, "text/plain", "bad query parameters\n");
        break;
    default:
        conn_respond_simple(c, 404, "text/plain", "not found\n");
        break;
    }
    conn_response_done(c);
}

/* Bytes of body the sink may take now: echo is limited by queued output. */
static size_t conn_body_budget(struct conn *c)
{
    size_t n = c->in.len;
    if (c->endpoint == EP_ECHO) {
        size_t room = c->out.len >= OUT_HIGH ? 0 : OUT_HIGH - c->out.len;
        n = n < room ? n : room;
    }
    return n;
}

static enum step conn_step_chunked(struct conn *c)
{
    char *p = buf_head(&c->in);
    switch (c->chunk) {
    case CH_SIZE: {
        char *nl = memchr(p, '\n', c->in.len);
        if (nl == NULL) {
            if (c->in.len > CHUNK_LINE_MAX) {
                conn_fail(c, 400, "chunk size line too long");
                return STEP_CONTINUE;
            }
            return STEP_WAIT;
        }
        size_t line_len = (size_t)(nl - p) + 1;
        uint64_t size = 0;
        size_t digits = 0;
        for (; p + digits < nl && isxdigit((unsigned char)p[digits]); digits++) {
            char ch = p[digits];
            int v = ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10;
            size = size * 16 + (uint64_t)v;
        }
        char next = p[digits];
        if (digits == 0 || digits > 15 || (next != ';' && next != '\r' && next != '\n') ||
            (next == '\r' && p + digits + 1 != nl)) {
            conn_fail(c, 400, "bad chunk size");
            return STEP_CONTINUE;
        }
        buf_consume(&c->in, line_len);
        c->body_remaining = size;
        c->chunk = size == 0 ? CH_TRAILER : CH_DATA;
        return STEP_CONTINUE;
    }
    case CH_DATA: {
        size_t n = conn_body_budget(c);
        if (n > c->body_remaining) {
            n = (size_t)c->body_remaining;
        }
        if (n == 0) {
            return STEP_WAIT;
        }
        conn_body_feed(c, p, n);
        buf_consume(&c->in, n);
        c->body_remaining -= n;
        if (c->body_remaining == 0) {
            c->chunk = CH_DATA_END;
        }
        return STEP_CONTINUE;
    }
    case CH_DATA_END:
        if (c->in.len >= 1 && p[0] == '\n') {
            buf_consume(&c->in, 1);
        } else if (c->in.len >= 2 && p[0] == '\r' && p[1] == '\n') {
            buf_consume(&c->in, 2);
        } else if (c->in.len >= 2 || (c->in.len == 1 && p[0] != '\r')) {
            conn_fail(c, 400, "missing CRLF after chunk data");
            return STEP_CONTINUE;
        } else {
            return STEP_WAIT;
        }
        c->chunk = CH_SIZE;
        return STEP_CONTINUE;
    case CH_TRAILER: {
        char *nl = memchr(p, '\n', c->in.len);
        if (nl == NULL) {
            if (c->in.len > CHUNK_LINE_MAX) {
                conn_fail(c, 400, "trailer line too long");
                return STEP_CONTINUE;
            }
            return STEP_WAIT;
        }
        bool is_empty = nl == p || (nl == p + 1 && p[0] == '\r');
        buf_consume(&c->in, (size_t)(nl - p) + 1);
        if (is_empty) {
            c->framing = BODY_NONE;
        }
        return STEP_CONTINUE;
    }
    }
    return STEP_WAIT;
}

static enum step conn_step_body(struct conn *c)
{
    enum step r = STEP_CONTINUE;
    if (c->framing == BODY_LENGTH && c->body_remaining > 0) {
        size_t n = conn_body_budget(c);
        if (n > c->body_remaining) {
            n = (size_t)c->body_remaining;
        }
        if (n == 0) {
            r = STEP_WAIT;
        } else {
            conn_body_feed(c, buf_head(&c->in), n);
            buf_consume(&c->in, n);
            c->body_remaining -= n;
        }
    } else if (c->framing == BODY_CHUNKED) {
        r = conn_step_chunked(c);
    } else {
        conn_on_body_done(c);
        return STEP_CONTINUE;
    }
    if (r == STEP_WAIT && c->state == CS_BODY && c->is_peer_eof &&
        !(c->endpoint == EP_ECHO && c->out.len >= OUT_HIGH)) {
        c->is_dead = true; /* truncated body: nothing sensible to answer */
    }
    return r;
}

/* ---- response bodies over time ---------------------------------------------------------- */

static enum step conn_step_produce(struct conn *c)
{
    if (c->is_head_method) {
        c->gen_remaining = 0;
    }
    while (c->gen_remaining > 0 && c->out.len < OUT_HIGH) {
        size_t n = c->gen_remaining < GEN_PIECE ? (size_t)c->gen_remaining : GEN_PIECE;
        conn_write_body(c, pattern + c->gen_offset % 26, n);
        c->gen_offset += n;
        c->gen_remaining -= n;
    }
    if (c->gen_remaining > 0) {
        return STEP_WAIT;
    }
    conn_write_body_end(c, NULL);
    conn_response_done(c);
    return STEP_CONTINUE;
}

static enum step conn_step_timer(struct conn *c, int64_t now)
{
    if (now < c->deadline_ms) {
        return STEP_WAIT;
    }
    if (c->endpoint == EP_DELAY) {
        char text[64];
        snprintf(text, sizeof(text), "delayed %" PRId64 " ms\n", c->interval_ms);
        conn_respond_simple(c, 200, "text/plain", text);
        conn_response_done(c);
        return STEP_CONTINUE;
    }
    /* EP_SLOWBODY */
    if (c->is_head_method) {
        c->gen_remaining = 0;
    }
    if (c->gen_remaining > 0) {
        uint64_t n = c->gen_remaining < c->piece_len ? c->gen_remaining : c->piece_len;
        n = n < GEN_PIECE ? n : GEN_PIECE;
        conn_write_body(c, pattern + c->gen_offset % 26, (size_t)n);
        c->gen_offset += n;
        c->gen_remaining -= n;
    }
    if (c->gen_remaining == 0) {
        conn_response_done(c);
        return STEP_CONTINUE;
    }
    c->deadline_ms = now + c->interval_ms;
    return STEP_WAIT;
}

/* ---- WebSocket echo (RFC 6455 §5.2): unmask client frames, send them back unmasked -------- */

static enum step conn_step_ws(struct conn *c)
{
    unsigned char *p = (unsigned char *)buf_head(&c->in);
    if (c->ws == WS_FRAME_HEAD) {
        if (c->in.len < 2) {
            goto need_input;
        }
        size_t need = 2;
        uint64_t len = p[1] & 0x7f;
        need += len == 126 ? 2 : len == 127 ? 8 : 0;
        need += (p[1] & 0x80) ? 4 : 0;
        if (c->in.len < need) {
            goto need_input;
        }
        if (!(p[1] & 0x80) || (p[0] & 0x70)) {
            c->is_dead = true; /* unmasked client frame or RSV bits: protocol error */
            return STEP_WAIT;
        }
        size_t o = 2;
        if (len == 126) {
            len = (uint64_t)p[2] << 8 | p[3];
            o = 4;
        } else if (len == 127) {
            len = 0;
            for (int i = 0; i < 8; i++) {
                len = len << 8 | p[2 + i];
            }
            o = 10;
        }
        memcpy(c->ws_mask, p + o, 4);
        unsigned fin = p[0] & 0x80;
        unsigned opcode = p[0] & 0x0f;
        buf_consume(&c->in, need);
        c->ws_remaining = len;
        c->ws_pos = 0;
        c->ws_discard = opcode == 0xA;
        c->ws_is_close = opcode == 0x8;
        if (opcode == 0x9) {
            opcode = 0xA; /* ping -> pong */
        }
        if (opcode > 0xA || (opcode > 0x2 && opcode < 0x8)) {
            c->is_dead = true;
            return STEP_WAIT;
        }
        if (!c->ws_discard) {
            unsigned char h[10];
            size_t hl = 2;
            h[0] = (unsigned char)(fin | opcode);
            if (len < 126) {
                h[1] = (unsigned char)len;
            } else if (len <= 0xffff) {
                h[1] = 126;
                h[2] = (unsigned char)(len >> 8);
                h[3] = (unsigned char)len;
                hl = 4;
            } else {
                h[1] = 127;
                for (int i = 0; i < 8; i++) {
                    h[2 + i] = (unsigned char)(len >> (56 - 8 * i));
                }
                hl = 10;
            }
            buf_append(&c->out, h, hl);
        }
        c->ws = WS_FRAME_PAYLOAD;
    }
    /* WS_FRAME_PAYLOAD */
    size_t n = c->in.len;
    size_t room = c->out.len >= OUT_HIGH ? 0 : OUT_HIGH - c->out.len;
    n = n < room ? n : room;
    n = n < c->ws_remaining ? n : (size_t)c->ws_remaining;
    if (n > 0) {
        if (!c->ws_discard) {
            buf_reserve(&c->out, n);
            unsigned char *dst = (unsigned char *)c->out.data + c->out.off + c->out.len;
            const unsigned char *src = (const unsigned char *)buf_head(&c->in);
            for (size_t i = 0; i < n; i++) {
                dst[i] = src[i] ^ c->ws_mask[(c->ws_pos + i) % 4];
            }
            c->out.len += n;
        }
        buf_consume(&c->in, n);
        c->ws_pos += n;
        c->ws_remaining -= n;
    }
    if (c->ws_remaining == 0) {
        c->ws = WS_FRAME_HEAD;
        if (c->ws_is_close) {
            conn_enter_linger(c);
        }
        return STEP_CONTINUE;
    }
    if (n > 0) {
        return STEP_CONTINUE;
    }
    if (room == 0) {
        return STEP_WAIT;
    }
need_input:
    if (c->is_peer_eof) {
        c->is_dead = true;
    }
    return STEP_WAIT;
}

/* ---- closing ---------------------------------------------------------------------------- */

static enum step conn_step_linger(struct conn *c, int64_t now)
{
    if (c->out.len > 0) {
        return STEP_WAIT;
    }
    if (!c->is_fin_sent) {
        shutdown(c->fd, SHUT_WR);
        c->is_fin_sent = true;
        c->deadline_ms = now + LINGER_MS;
    }
    buf_consume(&c->in, c->in.len);
    if (c->is_peer_eof || now >= c->deadline_ms) {
        c->is_dead = true;
    }
    return STEP_WAIT;
}

static enum step conn_step_reset(struct conn *c)
{
    if (c->out.len > 0) {
        return STEP_WAIT;
    }
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    c->is_dead = true; /* close() now sends RST */
    return STEP_WAIT;
}

static void conn_step(struct conn *c, int64_t now)
{
    /* Terminates: every STEP_CONTINUE consumes input, produces bounded output or changes
     * state, and producers return STEP_WAIT above OUT_HIGH. */
    while (!c->is_dead) {
        enum step r;
        switch (c->state) {
        case CS_HEAD:
            r = conn_step_head(c);
            break;
        case CS_BODY:
            r = conn_step_body(c);
            break;
        case CS_PRODUCE:
            r = conn_step_produce(c);
            break;
        case CS_TIMER:
            r = conn_step_timer(c, now);
            break;
        case CS_WS:
            r = conn_step_ws(c);
            break;
        case CS_LINGER:
            r = conn_step_linger(c, now);
            break;
        case CS_RESET:
            r = conn_step_reset(c);
            break;
        default:
            r = STEP_WAIT;
            break;
        }
        if (r == STEP_WAIT) {
            return;
        }
    }
}

static bool conn_wants_read(const struct conn *c)
{
    if (c->is_peer_eof || c->in.len >= IN_CAP) {
        return false;
    }
    switch (c->state) {
    case CS_HEAD:
    case CS_LINGER:
        return true;
    case CS_BODY:
        return c->endpoint != EP_ECHO || c->out.len < OUT_HIGH;
    case CS_WS:
        return c->out.len < OUT_HIGH;
    default:
        return false;
    }
}

static bool conn_has_deadline(const struct conn *c)
{
    return c->state == CS_TIMER || (c->state == CS_LINGER && c->is_fin_sent);
}

static void conn_read(struct conn *c)
{
    buf_reserve(&c->in, IN_CAP - c->in.len);
    for (;;) {
        size_t room = IN_CAP - c->in.len;
        if (room == 0) {
            return;
        }
        ssize_t n = recv(c->fd, c->in.data + c->in.off + c->in.len, room, 0);
        if (n > 0) {
            c->in.len += (size_t)n;
            if (c->state == CS_LINGER) {
                buf_consume(&c->in, c->in.len);
            }
            return;
        }
        if (n == 0) {
            c->is_peer_eof = true;
            return;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            c->is_dead = true;
        }
        return;
    }
}

static void conn_flush(struct conn *c)
{
    while (c->out.len > 0) {
        ssize_t n = send(c->fd, buf_head(&c->out), c->out.len, MSG_NOSIGNAL);
        if (n > 0) {
            buf_consume(&c->out, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        c->is_dead = true;
        return;
    }
}

/* Steps and flushes until the connection waits on the network or time. */
static void conn_service(struct conn *c, int64_t now)
{
    for (int k = 0; k < SERVICE_ROUNDS && !c->is_dead; k++) {
        conn_step(c, now);
        size_t before = c->out.len;
        if (before == 0 || c->is_dead) {
            return;
        }
        conn_flush(c);
        if (c->out.len == before) {
            return;
        }
    }
}

static void conn_free(struct conn *c)
{
    if (c == NULL) {
        return;
    }
    close(c->fd);
    free(c->in.data);
    free(c->out.data);
    free(c->head);
    free(c);
    conns_open--;
}

/* ---- listeners and the loop ------------------------------------------------------------- */

struct listener {
    int fd;
    bool is_tcp;
    char desc[128]; /* printed on the ready line */
};

static int listener_open(struct listener *l, const char *spec)
{
    if (strncmp(spec, "unix:", 5) == 0) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        const char *path = spec + 5;
        if (*path == '\0' || strlen(path) >= sizeof(sun.sun_path)) {
            die("bad unix socket path in --listen %s", spec);
        }
        strcpy(sun.sun_path, path);
        unlink(path);
        l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (l->fd < 0 || bind(l->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
            listen(l->fd, 1024) < 0) {
            die("cannot listen on %s: %s", spec, strerror(errno));
        }
        l->is_tcp = false;
        snprintf(l->desc, sizeof(l->desc), "unix:%s", path);
        return 0;
    }
    char host[64];
    const char *port_str;
    if (spec[0] == '[') {
        const char *rb = strchr(spec, ']');
        if (rb == NULL || rb[1] != ':' || (size_t)(rb - spec - 1) >= sizeof(host)) {
            die("bad --listen %s (want [v6addr]:port)", spec);
        }
        memcpy(host, spec + 1, (size_t)(rb - spec - 1));
        host[rb - spec - 1] = '\0';
        port_str = rb + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (colon == NULL || (size_t)(colon - spec) >= sizeof(host)) {
            die("bad --listen %s (want host:port)", spec);
        }
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
        port_str = colon + 1;
    }
    uint64_t port;
    if (!parse_u64(port_str, &port) || port > 65535) {
        die("bad port in --listen %s", spec);
    }
    struct sockaddr_storage ss = {0};
    socklen_t ss_len;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        ss_len = sizeof(*sin);
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        ss_len = sizeof(*sin6);
    } else {
        die("bad address in --listen %s (numeric IPv4 or [IPv6] only)", spec);
    }
    l->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (l->fd < 0) {
        die("socket: %s", strerror(errno));
    }
    setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6) {
        setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    }
    if (bind(l->fd, (struct sockaddr *)&ss, ss_len) < 0 || listen(l->fd, 1024) < 0) {
        die("cannot listen on %s: %s", spec, strerror(errno));
    }
    ss_len = sizeof(ss);
    getsockname(l->fd, (struct sockaddr *)&ss, &ss_len);
    port = ntohs(ss.ss_family == AF_INET ? sin->sin_port : sin6->sin6_port);
    l->is_tcp = true;
    snprintf(l->desc, sizeof(l->desc), "%" PRIu64, port);
    return 0;
}

static void format_peer(char *out, size_t out_len, const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        snprintf(out, out_len, "%s:%u", host, ntohs(sin->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        snprintf(out, out_len, "[%s]:%u", host, ntohs(sin6->sin6_port));
    } else {
        snprintf(out, out_len, "unix");
    }
}

static struct conn *conns[MAX_CONNS];
static size_t num_conns;

static void listener_accept(struct listener *l)
{
    while (num_conns < MAX_CONNS) {
        struct sockaddr_storage ss;
        socklen_t ss_len = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &ss_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            return; /* EAGAIN, or EMFILE and friends: retry on the next poll */
        }
        if (l->is_tcp) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        struct conn *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            die("out of memory");
        }
        c->fd = fd;
        c->id = ++conns_accepted;
        format_peer(c->peer, sizeof(c->peer), &ss);
        conns[num_conns++] = c;
        conns_open++;
    }
}

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dm_test_backend --listen ADDR [--listen ADDR]... [--name NAME] [--static DIR]\n"
            "                       [--delay MS]\n"
            "  ADDR: 127.0.0.1:PORT, [::1]:PORT or unix:/path (PORT 0 picks a free port)\n"
            "  --delay MS: /hello answers after MS ms (a slow backend)\n"
            "  prints \"ready PORT...\" on stdout once listening; exits 0 on SIGTERM/SIGINT\n"
            "endpoints: /hello /echo /headers /bytes?n=N[&chunked=1] /sum /delay?ms=N\n"
            "  /status?code=N /close /reset /half /ws /trailers\n"
            "  /slowbody?bytes=N&ms=M[&piece=K] /stats\n"
            "  /hints (103 Early Hints with Link fields, then 200)\n"
            "  /static/NAME (file NAME of --static DIR)\n");
}

int main(int argc, char **argv)
{
    struct listener listeners[MAX_LISTENERS];
    size_t num_listeners = 0;
    const char *specs[MAX_LISTENERS];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            if (num_listeners == MAX_LISTENERS) {
                die("too many --listen");
            }
            specs[num_listeners++] = argv[++i];
        } else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc) {
            backend_name = argv[++i];
            for (const char *p = backend_name; *p; p++) {
                if (*p < 0x21 || *p > 0x7e) {
                    die("--name must be printable ASCII without spaces");
                }
            }
        } else if (strcmp(argv[i], "--static") == 0 && i + 1 < argc) {
            static_dir = argv[++i];
        } else if (strcmp(argv[i], "--delay") == 0 && i + 1 < argc) {
            hello_delay_ms = strtoll(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (num_listeners == 0) {
        usage(stderr);
        return 2;
    }
    pattern_init();
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    printf("ready");
    for (size_t i = 0; i < num_listeners; i++) {
        listener_open(&listeners[i], specs[i]);
        printf(" %s", listeners[i].desc);
    }
    printf("\n");
    fflush(stdout);

    static struct pollfd pfds[MAX_LISTENERS + MAX_CONNS];
    while (!stop_requested) {
        int64_t now = now_ms();
        int timeout = -1;
        size_t n = 0;
        for (size_t i = 0; i < num_listeners; i++) {
            pfds[n].fd = listeners[i].fd;
            pfds[n].events = num_conns < MAX_CONNS ? POLLIN : 0;
            pfds[n++].revents = 0;
        }
        for (size_t i = 0; i < num_conns; i++) {
            struct conn *c = conns[i];
            pfds[n].fd = c->fd;
            pfds[n].events =
                (short)((conn_wants_read(c) ? POLLIN : 0) | (c->out.len > 0 ? POLLOUT : 0));
            pfds[n++].revents = 0;
            if (conn_has_deadline(c)) {
                int64_t wait = c->deadline_ms - now;
                wait = wait < 0 ? 0 : wait;
                if (timeout < 0 || wait < timeout) {
                    timeout = (int)(wait > INT_MAX ? INT_MAX : wait);
                }
            }
        }
        if (poll(pfds, n, timeout) < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("poll: %s", strerror(errno));
        }
        now = now_ms();
        size_t polled_conns = num_conns;
        for (size_t i = 0; i < polled_conns; i++) {
            struct conn *c = conns[i];
            short rev = pfds[num_listeners + i].revents;
            bool is_due = conn_has_deadline(c) && now >= c->deadline_ms;
            if (rev == 0 && !is_due) {
                continue;
            }
            if (rev & (POLLERR | POLLNVAL)) {
                c->is_dead = true;
                continue;
            }
            if ((rev & (POLLIN | POLLHUP)) && conn_wants_read(c)) {
                conn_read(c);
            }
            if (rev & POLLOUT) {
                conn_flush(c);
            }
            conn_service(c, now);
            if (rev & POLLHUP) {
                c->is_dead = true; /* both directions are gone; nothing more can be sent */
            }
        }
        for (size_t i = 0; i < num_listeners; i++) {
            if (pfds[i].revents & POLLIN) {
                listener_accept(&listeners[i]);
            }
        }
        size_t kept = 0;
        for (size_t i = 0; i < num_conns; i++) {
            if (conns[i]->is_dead) {
                conn_free(conns[i]);
            } else {
                conns[kept++] = conns[i];
            }
        }
        num_conns = kept;
    }
    for (size_t i = 0; i < num_conns; i++) {
        conn_free(conns[i]);
    }
    for (size_t i = 0; i < num_listeners; i++) {
        close(listeners[i].fd);
        if (!listeners[i].is_tcp) {
            unlink(specs[i] + 5);
        }
    }
    return 0;
}
