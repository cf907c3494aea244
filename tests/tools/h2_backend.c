/*
 * dm_test_h2_backend: an HTTP/2 origin for doorman's backend-transport tests: h2c with prior
 * knowledge, or h2 over TLS (--tls CERT KEY, ALPN h2). One thread per connection, blocking
 * socket polled every few milliseconds so streams can be fed over time. Endpoints:
 *   GET  /hello                 "hello from h2 NAME"
 *   GET  /bytes/N               N bytes of the /bytes pattern ('a' + i % 26), generated lazily
 *   POST /upload                "len=N fnv=HEX" of the request body (FNV-1a 64), then
 *                               " trailers: name=value ..." if the request had trailers
 *   POST /grpc.test.Echo/Unary  gRPC-style: the length-prefixed request echoed, trailers
 *                               grpc-status: 0, grpc-message: echoed
 *   POST /grpc.test.Echo/Stream gRPC-style server streaming: x-count messages (default 5), one
 *                               every x-interval-ms (default 200), then the trailers
 *   GET  /rst                   RST_STREAM (INTERNAL_ERROR) before any response
 *   GET  /rst-mid               a response head and 1000 bytes, then RST_STREAM
 *   GET  /goaway                GOAWAY that leaves this stream unprocessed, then close
 *   GET  /goaway-once           the first one in the process as /goaway (a graceful restart),
 *                               later ones as /hello (as /upload when they carry a body)
 * --max-streams N sets SETTINGS_MAX_CONCURRENT_STREAMS; every response carries x-conn (a
 * connection number) and x-backend (--name).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

/* /goaway-once: set by the request that got the GOAWAY. */
static atomic_bool goaway_once_done;

static const char *name = "h2backend";
static SSL_CTX *tls_ctx;
static uint32_t max_streams = 100;
static atomic_int next_conn = 1;

struct stream {
    int32_t id;
    char path[256];
    char method[16];
    int count, interval_ms, sent;
    uint64_t next_ms;
    bool streaming;
    uint64_t bytes_left; /* /bytes/N */
    uint64_t up_len, up_hash;
    char req_trailers[512]; /* " name=value" per request trailer field */
    uint8_t *body;          /* owned: response bytes for fixed bodies */
    size_t body_len, body_off;
    bool trailers; /* send grpc trailers after the body */
    bool deferred;
    struct stream *next;
};

struct conn {
    int fd;
    SSL *ssl;
    int num;
    nghttp2_session *sess;
    struct stream *streams;
    bool closing; /* close once the queued frames are out */
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static struct stream *find(struct conn *c, int32_t id)
{
    for (struct stream *s = c->streams; s != NULL; s = s->next) {
        if (s->id == id) {
            return s;
        }
    }
    return NULL;
}

static ssize_t on_read_data(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *user)
{
    (void)sess;
    (void)id;
    (void)user;
    struct stream *s = src->ptr;
    size_t n = 0;
    if (s->bytes_left > 0) {
        n = len < s->bytes_left ? len : (size_t)s->bytes_left;
        uint64_t off = s->body_off;
        for (size_t i = 0; i < n; i++) {
            buf[i] = (uint8_t)('a' + (off + i) % 26);
        }
        s->body_off += n;
        s->bytes_left -= n;
    } else if (s->body_off < s->body_len) {
        n = s->body_len - s->body_off < len ? s->body_len - s->body_off : len;
        memcpy(buf, s->body + s->body_off, n);
        s->body_off += n;
    }
    bool more = s->bytes_left > 0 || s->body_off < s->body_len;
    if (n == 0 && more) {
        return 0;
    }
    if (!more && s->streaming && s->sent < s->count) {
        if (n > 0) {
            return (ssize_t)n;
        }
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (!more) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->trailers) {
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            const char *msg = s->streaming ? "stream done" : "echoed";
            nghttp2_nv t[] = {
                {(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, 0},
                {(uint8_t *)"grpc-message", (uint8_t *)msg, 12, strlen(msg), 0},
            };
            nghttp2_submit_trailer(sess, s->id, t, 2);
        }
    }
    return (ssize_t)n;
}

static void respond(struct conn *c, struct stream *s, int status, const char *ctype, bool has_body)
{
    char st[8], cn[16];
    snprintf(st, sizeof(st), "%d", status);
    snprintf(cn, sizeof(cn), "%d", c->num);
    nghttp2_nv nv[] = {
        {(uint8_t *)":status", (uint8_t *)st, 7, strlen(st), 0},
        {(uint8_t *)"content-type", (uint8_t *)ctype, 12, strlen(ctype), 0},
        {(uint8_t *)"x-backend", (uint8_t *)name, 9, strlen(name), 0},
        {(uint8_t *)"x-conn", (uint8_t *)cn, 6, strlen(cn), 0},
    };
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = on_read_data};
    nghttp2_submit_response(c->sess, s->id, nv, 4, has_body ? &prd : NULL);
}

static void set_body(struct stream *s, const void *p, size_t n)
{
    s->body = realloc(s->body, s->body_len + n);
    memcpy(s->body + s->body_len, p, n);
    s->body_len += n;
}

static void add_message(struct stream *s, const char *text)
{
    size_t n = strlen(text);
    uint8_t pre[5] = {0, (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    set_body(s, pre, 5);
    set_body(s, text, n);
}

/* on_request runs when the request (head and body) is complete. */
static void on_request(struct conn *c, struct stream *s)
{
    if (strcmp(s->path, "/rst") == 0) {
        nghttp2_submit_rst_stream(c->sess, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (strcmp(s->path, "/goaway-once") == 0 && !atomic_exchange(&goaway_once_done, true)) {
        nghttp2_submit_goaway(c->sess, NGHTTP2_FLAG_NONE, s->id > 2 ? s->id - 2 : 0,
                              NGHTTP2_NO_ERROR, NULL, 0);
        c->closing = true;
        return;
    }
    if (strcmp(s->path, "/goaway") == 0) {
        nghttp2_submit_goaway(c->sess, NGHTTP2_FLAG_NONE, s->id > 2 ? s->id - 2 : 0,
                              NGHTTP2_NO_ERROR, NULL, 0);
        c->closing = true;
        return;
    }
    if (strcmp(s->path, "/rst-mid") == 0) {
        s->bytes_left = 1000;
        respond(c, s, 200, "text/plain", true);
        s->streaming = true;
        s->count = 1; /* never satisfied: the data source defers after the bytes */
        s->next_ms = now_ms() + 100;
        return;
    }
    if (strcmp(s->path, "/hello") == 0 ||
        (strcmp(s->path, "/goaway-once") == 0 && s->up_len == 0)) {
        char b[128];
        snprintf(b, sizeof(b), "hello from h2 %s\n", name);
        set_body(s, b, strlen(b));
        respond(c, s, 200, "text/plain", true);
        return;
    }
    if (strncmp(s->path, "/bytes/", 7) == 0) {
        s->bytes_left = strtoull(s->path + 7, NULL, 10);
        respond(c, s, 200, "application/octet-stream", true);
        return;
    }
    if (strcmp(s->path, "/upload") == 0 ||
        (strcmp(s->path, "/goaway-once") == 0 && s->up_len > 0)) {
        char b[96 + sizeof(s->req_trailers)];
        snprintf(b, sizeof(b), "len=%llu fnv=%016llx%s%s\n", (unsigned long long)s->up_len,
                 (unsigned long long)s->up_hash, s->req_trailers[0] ? " trailers:" : "",
                 s->req_trailers);
        set_body(s, b, strlen(b));
        respond(c, s, 200, "text/plain", true);
        return;
    }
    if (strcmp(s->path, "/grpc.test.Echo/Unary") == 0) {
        s->trailers = true; /* body (the request) is already in s->body */
        respond(c, s, 200, "application/grpc", true);
        return;
    }
    if (strcmp(s->path, "/grpc.test.Echo/Stream") == 0) {
        free(s->body);
        s->body = NULL;
        s->body_len = s->body_off = 0;
        s->trailers = true;
        s->streaming = true;
        s->next_ms = now_ms();
        respond(c, s, 200, "application/grpc", true);
        return;
    }
    free(s->body);
    s->body = NULL;
    s->body_len = 0;
    set_body(s, "not found\n", 10);
    respond(c, s, 404, "text/plain", true);
}

static int on_begin_headers(nghttp2_session *sess, const nghttp2_frame *f, void *user)
{
    (void)sess;
    struct conn *c = user;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0;
    }
    struct stream *s = calloc(1, sizeof(*s));
    s->id = f->hd.stream_id;
    s->count = 5;
    s->interval_ms = 200;
    s->up_hash = 0xcbf29ce484222325ULL;
    s->next = c->streams;
    c->streams = s;
    return 0;
}

static int on_header(nghttp2_session *sess, const nghttp2_frame *f, const uint8_t *n, size_t nl,
                     const uint8_t *v, size_t vl, uint8_t flags, void *user)
{
    (void)sess;
    (void)flags;
    struct stream *s = find(user, f->hd.stream_id);
    if (s == NULL) {
        return 0;
    }
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_HEADERS) {
        size_t used = strlen(s->req_trailers);
        snprintf(s->req_trailers + used, sizeof(s->req_trailers) - used, " %.*s=%.*s", (int)nl,
                 (const char *)n, (int)vl, (const char *)v);
        return 0;
    }
    if (nl == 5 && memcmp(n, ":path", 5) == 0) {
        snprintf(s->path, sizeof(s->path), "%.*s", (int)vl, (const char *)v);
    } else if (nl == 7 && memcmp(n, ":method", 7) == 0) {
        snprintf(s->method, sizeof(s->method), "%.*s", (int)vl, (const char *)v);
    } else if (nl == 7 && memcmp(n, "x-count", 7) == 0) {
        s->count = atoi((const char *)v);
    } else if (nl == 13 && memcmp(n, "x-interval-ms", 13) == 0) {
        s->interval_ms = atoi((const char *)v);
    }
    return 0;
}

static int on_data(nghttp2_session *sess, uint8_t flags, int32_t id, const uint8_t *d, size_t len,
                   void *user)
{
    (void)sess;
    (void)flags;
    struct stream *s = find(user, id);
    if (s == NULL) {
        return 0;
    }
    s->up_len += len;
    for (size_t i = 0; i < len; i++) {
        s->up_hash = (s->up_hash ^ d[i]) * 0x100000001b3ULL;
    }
    if (strcmp(s->path, "/grpc.test.Echo/Unary") == 0 && s->body_len < (1 << 20)) {
        set_body(s, d, len);
    }
    return 0;
}

static int on_frame(nghttp2_session *sess, const nghttp2_frame *f, void *user)
{
    (void)sess;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        struct stream *s = find(user, f->hd.stream_id);
        if (s != NULL) {
            on_request(user, s);
        }
    }
    return 0;
}

static int on_close(nghttp2_session *sess, int32_t id, uint32_t code, void *user)
{
    (void)sess;
    (void)code;
    struct conn *c = user;
    for (struct stream **pp = &c->streams; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            struct stream *s = *pp;
            *pp = s->next;
            free(s->body);
            free(s);
            break;
        }
    }
    return 0;
}

static int io_write(struct conn *c, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = c->ssl != NULL ? SSL_write(c->ssl, p, (int)n) : send(c->fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void tick(struct conn *c)
{
    uint64_t now = now_ms();
    for (struct stream *s = c->streams; s != NULL; s = s->next) {
        if (!s->streaming || now < s->next_ms) {
            continue;
        }
        if (strcmp(s->path, "/rst-mid") == 0) {
            nghttp2_submit_rst_stream(c->sess, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
            s->streaming = false;
            continue;
        }
        if (s->sent < s->count) {
            char m[64];
            snprintf(m, sizeof(m), "message %d of %d", s->sent + 1, s->count);
            add_message(s, m);
            s->sent++;
            s->next_ms = now + (uint64_t)s->interval_ms;
            nghttp2_session_resume_data(c->sess, s->id);
        }
    }
}

static void *serve(void *arg)
{
    struct conn *c = arg;
    if (tls_ctx != NULL) {
        c->ssl = SSL_new(tls_ctx);
        SSL_set_fd(c->ssl, c->fd);
        if (SSL_accept(c->ssl) != 1) {
            goto out;
        }
    }
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
    nghttp2_session_server_new(&c->sess, cb, c);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams}};
    nghttp2_submit_settings(c->sess, NGHTTP2_FLAG_NONE, iv, 1);
    uint8_t buf[16384];
    for (;;) {
        tick(c);
        const uint8_t *out;
        ssize_t n;
        while ((n = nghttp2_session_mem_send(c->sess, &out)) > 0) {
            if (io_write(c, out, (size_t)n) != 0) {
                goto done;
            }
        }
        if (c->closing ||
            (!nghttp2_session_want_read(c->sess) && !nghttp2_session_want_write(c->sess))) {
            break;
        }
        if (c->ssl == NULL || SSL_pending(c->ssl) == 0) {
            struct pollfd p = {.fd = c->fd, .events = POLLIN};
            if (poll(&p, 1, 10) == 0) {
                continue;
            }
        }
        ssize_t r =
            c->ssl != NULL ? SSL_read(c->ssl, buf, sizeof(buf)) : recv(c->fd, buf, sizeof(buf), 0);
        if (r <= 0) {
            break;
        }
        if (nghttp2_session_mem_recv(c->sess, buf, (size_t)r) < 0) {
            break;
        }
    }
done:
    nghttp2_session_del(c->sess);
    while (c->streams != NULL) {
        struct stream *s = c->streams;
        c->streams = s->next;
        free(s->body);
        free(s);
    }
out:
    if (c->ssl != NULL) {
        SSL_free(c->ssl);
    }
    close(c->fd);
    free(c);
    return NULL;
}

static int alpn_select(SSL *ssl, const uint8_t **out, uint8_t *outlen, const uint8_t *in,
                       unsigned inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    for (unsigned i = 0; i + 1 < inlen; i += 1u + in[i]) {
        if (in[i] == 2 && i + 3 <= inlen && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

int main(int argc, char **argv)
{
    const char *listen_at = "127.0.0.1:0";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen_at = argv[++i];
        } else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc) {
            name = argv[++i];
        } else if (strcmp(argv[i], "--max-streams") == 0 && i + 1 < argc) {
            max_streams = (uint32_t)atoi(argv[++i]);
        } else if (strcmp(argv[i], "--tls") == 0 && i + 2 < argc) {
            tls_ctx = SSL_CTX_new(TLS_method());
            if (!SSL_CTX_use_certificate_chain_file(tls_ctx, argv[i + 1]) ||
                !SSL_CTX_use_PrivateKey_file(tls_ctx, argv[i + 2], SSL_FILETYPE_PEM)) {
                fprintf(stderr, "dm_test_h2_backend: cannot load %s / %s\n", argv[i + 1],
                        argv[i + 2]);
                return 2;
            }
            SSL_CTX_set_alpn_select_cb(tls_ctx, alpn_select, NULL);
            i += 2;
        } else {
            fprintf(stderr, "usage: dm_test_h2_backend [--listen IP:PORT] [--name N] "
                            "[--max-streams N] [--tls CERT KEY]\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    char host[64];
    const char *colon = strrchr(listen_at, ':');
    snprintf(host, sizeof(host), "%.*s", (int)(colon - listen_at), listen_at);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, host, &sa.sin_addr);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(ls, 512) != 0) {
        perror("dm_test_h2_backend: bind");
        return 1;
    }
    socklen_t sl = sizeof(sa);
    getsockname(ls, (struct sockaddr *)&sa, &sl);
    printf("ready %u\n", ntohs(sa.sin_port));
    fflush(stdout);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) {
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct conn *c = calloc(1, sizeof(*c));
        c->fd = fd;
        c->num = atomic_fetch_add(&next_conn, 1);
        pthread_t t;
        pthread_create(&t, NULL, serve, c);
        pthread_detach(t);
    }
}
