/* idle_conns: open N TLS connections to 127.0.0.1:PORT (full handshakes, SNI
 * HOST, TLS 1.3), send one HTTP/1.1 request on each and read its response,
 * then hold them all idle until standard input closes. Prints "READY <n>" once
 * the connections are open, and "ALIVE <n>" after standard input closes: how
 * many the server had not closed meanwhile. Built and run by bench_h1.py,
 * against BoringSSL where doorman's is installed, else the system OpenSSL.
 *
 * usage: idle_conns PORT N HOST [PARALLEL]
 */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

enum st { ST_CONNECT, ST_HANDSHAKE, ST_WRITE, ST_READ, ST_DONE };

struct conn {
    int fd;
    SSL *ssl;
    enum st st;
    size_t sent;
    char buf[2048];
    size_t got;
    int held; /* handshake done and response read: now idle */
};

static SSL_CTX *ctx;
static struct sockaddr_in addr;
static const char *host;
static char req[256];
static size_t req_len;
static int ep;
static long failed;

static int start_conn(struct conn *c)
{
    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        perror("socket");
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 && errno != EINPROGRESS) {
        perror("connect");
        close(c->fd);
        return -1;
    }
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, host);
    SSL_set_connect_state(c->ssl);
    c->st = ST_HANDSHAKE;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c}; /* connected */
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static void fail(struct conn *c, const char *why)
{
    if (failed++ < 5) {
        fprintf(stderr, "idle_conns: connection failed: %s\n", why);
        ERR_print_errors_fp(stderr);
    }
    ERR_clear_error();
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    SSL_free(c->ssl);
    close(c->fd);
    c->ssl = NULL;
    c->fd = -1;
    c->st = ST_DONE;
}

/* Waits for what OpenSSL asks for: polling for both would spin on writable
 * sockets and starve the CPU the client shares with the backend. */
static int want(struct conn *c, int r, const char *what)
{
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        struct epoll_event ev = {.events = e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT,
                                 .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        return 1;
    }
    fail(c, what);
    return 0;
}

/* Advances c; returns 1 when it has become idle with its response read. */
static int step(struct conn *c)
{
    for (;;) {
        switch (c->st) {
        case ST_CONNECT:
        case ST_HANDSHAKE: {
            int r = SSL_do_handshake(c->ssl);
            if (r != 1) {
                want(c, r, "handshake");
                return 0;
            }
            c->st = ST_WRITE;
            break;
        }
        case ST_WRITE: {
            int r = SSL_write(c->ssl, req + c->sent, (int)(req_len - c->sent));
            if (r <= 0) {
                want(c, r, "write");
                return 0;
            }
            c->sent += (size_t)r;
            if (c->sent == req_len) {
                c->st = ST_READ;
            }
            break;
        }
        case ST_READ: {
            int r = SSL_read(c->ssl, c->buf + c->got, (int)(sizeof(c->buf) - 1 - c->got));
            if (r <= 0) {
                want(c, r, "read response");
                return 0;
            }
            c->got += (size_t)r;
            c->buf[c->got] = '\0';
            char *end = strstr(c->buf, "\r\n\r\n");
            if (end == NULL) {
                if (c->got >= sizeof(c->buf) - 1) {
                    fail(c, "response head too long");
                    return 0;
                }
                break;
            }
            if (strncmp(c->buf, "HTTP/1.1 200", 12) != 0) {
                fail(c, "response status is not 200");
                return 0;
            }
            size_t clen = 0;
            const char *p = strcasestr(c->buf, "\r\ncontent-length:");
            if (p != NULL && p < end) {
                clen = strtoul(p + 17, NULL, 10);
            }
            size_t have = c->got - (size_t)(end + 4 - c->buf);
            if (have < clen) {
                break;
            }
            /* Idle from now on: stop polling it (a close by the server shows
             * up as a lower count at the end, which the caller checks). */
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            c->st = ST_DONE;
            c->held = 1;
            return 1;
        }
        case ST_DONE:
            return 0;
        }
    }
}

static long count_alive(struct conn *conns, long n)
{
    long alive = 0;
    for (long i = 0; i < n; i++) {
        if (!conns[i].held) {
            continue;
        }
        struct pollfd pfd = {.fd = conns[i].fd, .events = POLLIN};
        char b;
        if (poll(&pfd, 1, 0) == 1 && recv(conns[i].fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
            continue; /* the server closed it */
        }
        alive++;
    }
    return alive;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: idle_conns PORT N HOST [PARALLEL]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    long n = atol(argv[2]);
    host = argv[3];
    long parallel = argc > 4 ? atol(argv[4]) : 32;

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)n + 64) {
        rl.rlim_cur = (rlim_t)n + 64;
        if (rl.rlim_max < rl.rlim_cur) {
            rl.rlim_max = rl.rlim_cur;
        }
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            perror("setrlimit");
            return 1;
        }
    }
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* full handshakes only */
    req_len = (size_t)snprintf(
        req, sizeof(req), "GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: idle_conns\r\n\r\n", host);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    struct conn *conns = calloc((size_t)n, sizeof(*conns));
    ep = epoll_create1(EPOLL_CLOEXEC);
    long started = 0, done = 0, inflight = 0;
    struct epoll_event evs[256];
    while (done + failed < n) {
        while (inflight < parallel && started < n) {
            if (start_conn(&conns[started]) != 0) {
                conns[started].fd = -1;
                conns[started].st = ST_DONE;
                failed++;
            } else {
                inflight++;
            }
            started++;
        }
        int k = epoll_wait(ep, evs, 256, 10000);
        if (k == 0) {
            fprintf(stderr, "idle_conns: no progress for 10 s\n");
            break;
        }
        for (int i = 0; i < k; i++) {
            struct conn *c = evs[i].data.ptr;
            long before = failed;
            if (step(c)) {
                done++;
                inflight--;
            } else if (failed != before) {
                inflight--;
            }
        }
        if (failed > n / 100 + 5) {
            fprintf(stderr, "idle_conns: too many failures (%ld)\n", failed);
            break;
        }
    }
    printf("READY %ld\n", done);
    fflush(stdout);
    char b[256];
    while (read(0, b, sizeof(b)) > 0) {
    }
    long alive = count_alive(conns, n);
    fprintf(stderr, "idle_conns: %ld of %ld still open at the end\n", alive, done);
    printf("ALIVE %ld\n", alive);
    fflush(stdout);
    return 0;
}
