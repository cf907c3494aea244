/* The socket BIO under client TLS connections. BoringSSL reads a record's
 * 5-byte header and its body with separate reads; through a plain socket BIO
 * that is two system calls per record plus one more that finds the socket
 * empty. This BIO reads up to a whole record (and whatever follows) with one
 * recv into a buffer borrowed from the worker only while it holds unread
 * bytes, so idle connections keep no buffer, and it remembers whether the
 * last recv emptied the socket so the caller can stop without another read. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/bio.h>

#include "proxy/proxy_int.h"

static BIO_METHOD *conn_bio_method;

static uint8_t *rbuf_get(struct dm_worker *w)
{
    if (w->num_free_rbufs > 0) {
        return w->free_rbufs[--w->num_free_rbufs];
    }
    return malloc(DM_RBUF_SIZE);
}

static void rbuf_put(struct dm_worker *w, uint8_t *buf)
{
    if (w->num_free_rbufs < DM_RBUF_CACHE) {
        w->free_rbufs[w->num_free_rbufs++] = buf;
    } else {
        free(buf);
    }
}

void dm_conn_rbuf_release(struct dm_conn *c)
{
    if (c->rbuf != NULL) {
        rbuf_put(c->w, c->rbuf);
        c->rbuf = NULL;
        c->rbuf_off = c->rbuf_len = 0;
    }
}

void dm_worker_rbufs_free(struct dm_worker *w)
{
    while (w->num_free_rbufs > 0) {
        free(w->free_rbufs[--w->num_free_rbufs]);
    }
}

static int conn_bio_read(BIO *b, char *out, int len)
{
    struct dm_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0) {
        return 0;
    }
    if (c->rbuf_off == c->rbuf_len) {
        if (c->rbuf == NULL && (c->rbuf = rbuf_get(c->w)) == NULL) {
            errno = ENOMEM;
            return -1;
        }
        ssize_t n;
        do {
            n = recv(c->fd, c->rbuf, DM_RBUF_SIZE, 0);
        } while (n < 0 && errno == EINTR);
        if (n <= 0) {
            int e = errno;
            dm_conn_rbuf_release(c);
            c->sock_drained = true;
            if (n < 0 && (e == EAGAIN || e == EWOULDBLOCK)) {
                BIO_set_retry_read(b);
            }
            errno = e;
            return n == 0 ? 0 : -1;
        }
        c->rbuf_off = 0;
        c->rbuf_len = (uint32_t)n;
        c->sock_drained = (size_t)n < DM_RBUF_SIZE;
    }
    size_t k = c->rbuf_len - c->rbuf_off;
    if (k > (size_t)len) {
        k = (size_t)len;
    }
    memcpy(out, c->rbuf + c->rbuf_off, k);
    c->rbuf_off += (uint32_t)k;
    if (c->rbuf_off == c->rbuf_len) {
        dm_conn_rbuf_release(c);
    }
    return (int)k;
}

static int conn_bio_write(BIO *b, const char *in, int len)
{
    struct dm_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n;
    do {
        n = send(c->fd, in, (size_t)len, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        BIO_set_retry_write(b);
    }
    return (int)n;
}

static long conn_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int conn_bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

int dm_tls_bio_init(void)
{
    if (conn_bio_method != NULL) {
        return 0;
    }
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "doorman conn");
    if (m == NULL || !BIO_meth_set_read(m, conn_bio_read) ||
        !BIO_meth_set_write(m, conn_bio_write) || !BIO_meth_set_ctrl(m, conn_bio_ctrl) ||
        !BIO_meth_set_create(m, conn_bio_create)) {
        BIO_meth_free(m);
        return -1;
    }
    conn_bio_method = m;
    return 0;
}

BIO *dm_tls_bio_new(struct dm_conn *c)
{
    BIO *b = BIO_new(conn_bio_method);
    if (b != NULL) {
        BIO_set_data(b, c);
    }
    return b;
}
