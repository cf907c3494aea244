/* TLS to backends: the client SSL on a connected backend socket, with SNI,
 * certificate verification by name or IP (X509_VERIFY_PARAM), and session
 * resumption from the newest session of the backend's pool. The SSL_CTX
 * (roots, client certificate, ALPN) is built once per site at config load
 * (config/validate_transport.c); nothing here loads files. */
#include "proxy/upstream_tr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

int dm_up_tr_init(struct dm_up_tr *tr, const struct cfg_addr *addr,
                  const struct cfg_up_transport *t)
{
    memset(tr, 0, sizeof(*tr));
    tr->tag = strdup(t != NULL && t->pool_tag != NULL ? t->pool_tag : "");
    if (tr->tag == NULL) {
        return -1;
    }
    if (t == NULL) {
        return 0;
    }
    tr->protocol = t->protocol;
    tr->is_tls = t->is_tls;
    if (!t->is_tls) {
        return 0;
    }
    if (t->ssl_ctx != NULL) {
        SSL_CTX_up_ref(t->ssl_ctx);
        tr->ssl_ctx = t->ssl_ctx;
    }
    const char *name = t->server_name != NULL ? t->server_name : addr->host;
    if (name == NULL) {
        return 0; /* unix socket without server_name: only with verify false */
    }
    if (inet_pton(AF_INET, name, tr->tls_ip) == 1) {
        tr->tls_ip_len = 4;
    } else if (inet_pton(AF_INET6, name, tr->tls_ip) == 1) {
        tr->tls_ip_len = 16;
    } else if ((tr->tls_name = strdup(name)) == NULL) {
        return -1;
    }
    return 0;
}

void dm_up_tr_refresh(struct dm_up_tr *tr, const struct cfg_up_transport *t,
                      const struct cfg *current)
{
    bool is_current = false;
    for (size_t i = 0; i < current->num_sites && !is_current; i++) {
        is_current = current->sites[i].transport == t;
    }
    if (is_current && t->ssl_ctx != NULL && tr->ssl_ctx != t->ssl_ctx) {
        SSL_CTX_up_ref(t->ssl_ctx);
        SSL_CTX_free(tr->ssl_ctx);
        tr->ssl_ctx = t->ssl_ctx;
        /* A reload may have changed what the CA file trusts: a session from
         * the old context must not skip the new verification. */
        if (tr->session != NULL) {
            SSL_SESSION_free(tr->session);
            tr->session = NULL;
        }
    }
}

void dm_up_tr_cleanup(struct dm_up_tr *tr)
{
    free(tr->tag);
    free(tr->tls_name);
    SSL_CTX_free(tr->ssl_ctx);
    if (tr->session != NULL) {
        SSL_SESSION_free(tr->session);
    }
    memset(tr, 0, sizeof(*tr));
}

bool dm_up_tr_matches(const struct dm_up_tr *tr, const struct cfg_up_transport *t)
{
    const char *tag = t != NULL && t->pool_tag != NULL ? t->pool_tag : "";
    return strcmp(tr->tag, tag) == 0;
}

SSL *dm_uptls_new(struct dm_up_tr *tr, int fd)
{
    if (tr->ssl_ctx == NULL) {
        return NULL;
    }
    SSL *ssl = SSL_new(tr->ssl_ctx);
    if (ssl == NULL || !SSL_set_fd(ssl, fd)) {
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_connect_state(ssl);
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
    int ok = 1;
    if (tr->tls_name != NULL) {
        ok = SSL_set_tlsext_host_name(ssl, tr->tls_name) &&
             X509_VERIFY_PARAM_set1_host(vp, tr->tls_name, strlen(tr->tls_name));
    } else if (tr->tls_ip_len > 0) {
        ok = X509_VERIFY_PARAM_set1_ip(vp, tr->tls_ip, tr->tls_ip_len);
    }
    if (!ok) {
        SSL_free(ssl);
        return NULL;
    }
    /* The session callback (validate_transport.c) stores new sessions here. */
    SSL_set_app_data(ssl, &tr->session);
    if (tr->session != NULL) {
        SSL_set_session(ssl, tr->session);
    }
    return ssl;
}

int dm_uptls_handshake(SSL *ssl, bool *out_want_write, char *why, size_t cap)
{
    *out_want_write = false;
    int r = SSL_do_handshake(ssl);
    if (r == 1) {
        ERR_clear_error();
        return 1;
    }
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        *out_want_write = true;
        return 0;
    }
    uint32_t top = ERR_peek_error();
    long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK || (ERR_GET_LIB(top) == ERR_LIB_SSL &&
                           ERR_GET_REASON(top) == SSL_R_CERTIFICATE_VERIFY_FAILED)) {
        snprintf(why, cap, "backend TLS certificate verify failed: %s",
                 X509_verify_cert_error_string(v));
    } else if (e == SSL_ERROR_SYSCALL && top == 0) {
        snprintf(why, cap, "backend closed the connection during the TLS handshake");
    } else {
        const char *reason = top != 0 ? ERR_reason_error_string(top) : NULL;
        snprintf(why, cap, "backend TLS handshake failed: %s", reason ? reason : "error");
    }
    ERR_clear_error();
    return -1;
}

ssize_t dm_uptls_read(SSL *ssl, void *buf, size_t len)
{
    int n = SSL_read(ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    if (n > 0) {
        return n;
    }
    int e = SSL_get_error(ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    ERR_clear_error();
    return 0;
}

int dm_uptls_write(SSL *ssl, struct evbuffer *out)
{
    struct evbuffer_iovec vec;
    if (evbuffer_peek(out, -1, NULL, &vec, 1) < 1 || vec.iov_len == 0) {
        return 0;
    }
    size_t len = vec.iov_len > 65536 ? 65536 : vec.iov_len;
    int n = SSL_write(ssl, vec.iov_base, (int)len);
    if (n > 0) {
        evbuffer_drain(out, (size_t)n);
        return n;
    }
    int e = SSL_get_error(ssl, n);
    ERR_clear_error();
    errno = (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) ? EAGAIN : EPIPE;
    return -1;
}

bool dm_uptls_idle_ok(SSL *ssl)
{
    uint8_t b;
    int n = SSL_read(ssl, &b, 1);
    if (n > 0) {
        return false; /* bytes nobody asked for */
    }
    int e = SSL_get_error(ssl, n);
    ERR_clear_error();
    return e == SSL_ERROR_WANT_READ;
}
