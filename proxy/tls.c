/* TLS server context shared by all workers: modern protocol versions and
 * ciphers, certificate choice in the select-certificate callback (from the
 * certificate store, keyed by SNI; nothing is parsed per handshake), ALPN and
 * session tickets whose keys rotate. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <openssl/bytestring.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "acme/acme.h"
#include "acme/solver.h"
#include "proxy/core/err.h"
#include "proxy/core/log.h"
#include "proxy/proxy_int.h"

int dm_tls_conn_index = -1;

/* Session ticket keys (RFC 5077 layout: name, HMAC key, AES key). Three slots
 * rotate: the current one encrypts, the previous one still decrypts, and the
 * writer only ever fills the slot no reader uses, so readers need no lock. */
struct ticket_key {
    uint8_t name[16];
    uint8_t hmac_key[32];
    uint8_t aes_key[16];
};

static struct ticket_key ticket_keys[3];
static atomic_uint ticket_gen;

void dm_tls_ticket_keys_rotate(void)
{
    unsigned next = atomic_load(&ticket_gen) + 1;
    struct ticket_key *k = &ticket_keys[next % 3];
    RAND_bytes(k->name, sizeof(k->name));
    RAND_bytes(k->hmac_key, sizeof(k->hmac_key));
    RAND_bytes(k->aes_key, sizeof(k->aes_key));
    atomic_store(&ticket_gen, next);
}

static int tls_on_ticket_key(SSL *ssl, uint8_t *key_name, uint8_t *iv, EVP_CIPHER_CTX *ctx,
                             HMAC_CTX *hctx, int encrypt)
{
    (void)ssl;
    unsigned gen = atomic_load(&ticket_gen);
    if (encrypt) {
        const struct ticket_key *k = &ticket_keys[gen % 3];
        memcpy(key_name, k->name, 16);
        RAND_bytes(iv, 16);
        if (!EVP_EncryptInit_ex(ctx, EVP_aes_128_cbc(), NULL, k->aes_key, iv) ||
            !HMAC_Init_ex(hctx, k->hmac_key, sizeof(k->hmac_key), EVP_sha256(), NULL)) {
            return -1;
        }
        return 1;
    }
    for (unsigned i = 0; i < 2; i++) {
        const struct ticket_key *k = &ticket_keys[(gen - i) % 3];
        if (memcmp(key_name, k->name, 16) == 0) {
            if (!HMAC_Init_ex(hctx, k->hmac_key, sizeof(k->hmac_key), EVP_sha256(), NULL) ||
                !EVP_DecryptInit_ex(ctx, EVP_aes_128_cbc(), NULL, k->aes_key, iv)) {
                return -1;
            }
            /* 2 = valid but renew: re-issue tickets made with the old key. */
            return i == 0 ? 1 : 2;
        }
    }
    return 0; /* unknown key: full handshake */
}

/* sni_parse extracts the host_name from a server_name extension body
 * (RFC 6066 §3) into out, lower-cased. Returns 0, or -1 if malformed. */
static int sni_parse(const uint8_t *data, size_t len, char *out, size_t cap)
{
    CBS ext, list, name;
    uint8_t type;
    CBS_init(&ext, data, len);
    if (!CBS_get_u16_length_prefixed(&ext, &list) || CBS_len(&ext) != 0) {
        return -1;
    }
    while (CBS_len(&list) > 0) {
        if (!CBS_get_u8(&list, &type) || !CBS_get_u16_length_prefixed(&list, &name)) {
            return -1;
        }
        if (type != TLSEXT_NAMETYPE_host_name) {
            continue;
        }
        size_t n = CBS_len(&name);
        const uint8_t *p = CBS_data(&name);
        if (n == 0 || n >= cap) {
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            uint8_t ch = p[i];
            if (ch >= 'A' && ch <= 'Z') {
                ch = (uint8_t)(ch + 32);
            } else if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                         ch == '.' || ch == '_')) {
                return -1;
            }
            out[i] = (char)ch;
        }
        /* A trailing dot names the same host (RFC 6066 forbids it; clients send it). */
        if (out[n - 1] == '.') {
            n--;
        }
        out[n] = '\0';
        return 0;
    }
    return -1;
}

/* alpn_offers tells whether the client's ALPN extension body lists proto. */
static bool alpn_offers(const uint8_t *data, size_t len, const char *proto)
{
    CBS ext, list, p;
    size_t plen = strlen(proto);
    CBS_init(&ext, data, len);
    if (!CBS_get_u16_length_prefixed(&ext, &list)) {
        return false;
    }
    while (CBS_len(&list) > 0) {
        if (!CBS_get_u8_length_prefixed(&list, &p)) {
            return false;
        }
        if (CBS_len(&p) == plen && memcmp(CBS_data(&p), proto, plen) == 0) {
            return true;
        }
    }
    return false;
}

/* tls_ondemand answers a ClientHello whose name has no certificate but an
 * on-demand site: pause (BoringSSL re-runs this callback when the
 * connection retries), or fail at once when the policy refuses or the wait
 * ran out. */
static enum ssl_select_cert_result_t tls_ondemand(struct dm_conn *c)
{
    if (c->is_od_expired) {
        dm_log(DM_LOG_INFO, "tls", "c=%llu %s sni=%s: no on-demand certificate within %ums",
               (unsigned long long)c->id, c->peer_ip, c->sni,
               c->sni_site->on_demand->wait_timeout_ms);
        return ssl_select_cert_error;
    }
    const char *why = "refused";
    if (acme_ondemand_request(dm_proxy_g.ondemand, c->sni_site, c->sni, &why) == ACME_OD_WAIT) {
        return ssl_select_cert_retry;
    }
    DM_LOG_DBG("tls", "c=%llu %s sni=%s: on-demand refused: %s", (unsigned long long)c->id,
               c->peer_ip, c->sni, why);
    return ssl_select_cert_error;
}

static enum ssl_select_cert_result_t tls_on_select_cert(const SSL_CLIENT_HELLO *hello)
{
    SSL *ssl = hello->ssl;
    struct dm_conn *c = SSL_get_ex_data(ssl, dm_tls_conn_index);
    const uint8_t *data;
    size_t len;
    struct acme_cert *cert = NULL;

    if (SSL_early_callback_ctx_extension_get(hello, TLSEXT_TYPE_server_name, &data, &len)) {
        if (sni_parse(data, len, c->sni, sizeof(c->sni)) != 0) {
            DM_LOG_DBG("tls", "c=%llu malformed SNI", (unsigned long long)c->id);
            return ssl_select_cert_error;
        }
        /* tls-alpn-01 (RFC 8737 §3): the certificate is fixed before the ALPN
         * callback runs, so the validation certificate is chosen here from
         * the ALPN list in the ClientHello. Such a connection never carries
         * traffic; without a pending challenge it fails. */
        const uint8_t *alpn;
        size_t alpn_len;
        if (SSL_early_callback_ctx_extension_get(
                hello, TLSEXT_TYPE_application_layer_protocol_negotiation, &alpn, &alpn_len) &&
            alpn_offers(alpn, alpn_len, "acme-tls/1")) {
            cert = acme_tlsalpn_cert_get(c->sni, strlen(c->sni));
            if (cert == NULL) {
                DM_LOG_DBG("tls", "c=%llu acme-tls/1 for %s: no challenge pending",
                           (unsigned long long)c->id, c->sni);
                return ssl_select_cert_error;
            }
            c->is_acme_alpn = true;
            dm_log(DM_LOG_INFO, "acme", "tls-alpn-01 validation connection for %s from %s", c->sni,
                   c->peer_ip);
        } else {
            cert = acme_store_get(dm_proxy_g.store, c->sni, strlen(c->sni));
            if (cert != NULL) {
                acme_cert_touch(cert);
            } else {
                c->sni_site = dm_route_find(c->gen->route, c->sni, strlen(c->sni));
                if (c->sni_site != NULL && c->sni_site->on_demand != NULL &&
                    dm_proxy_g.ondemand != NULL) {
                    return tls_ondemand(c);
                }
            }
        }
        if (cert == NULL) {
            DM_LOG_DBG("tls", "c=%llu no certificate for SNI %s", (unsigned long long)c->id,
                       c->sni);
            return ssl_select_cert_error;
        }
        c->sni_site = dm_route_find(c->gen->route, c->sni, strlen(c->sni));
    } else {
        cert = acme_store_get_default(dm_proxy_g.store);
        if (cert == NULL) {
            return ssl_select_cert_error;
        }
    }
    size_t num;
    CRYPTO_BUFFER *const *chain = acme_cert_chain(cert, &num);
    int ok = SSL_set_chain_and_key(ssl, chain, num, acme_cert_key(cert), NULL);
    acme_cert_unref(cert); /* the SSL holds its own references now */
    return ok ? ssl_select_cert_success : ssl_select_cert_error;
}

static int tls_on_alpn(SSL *ssl, const uint8_t **out, uint8_t *out_len, const uint8_t *in,
                       unsigned in_len, void *arg)
{
    (void)arg;
    static const uint8_t http11[] = "\x08http/1.1";
    static const uint8_t acme_tls[] = "\x0a"
                                      "acme-tls/1";
    struct dm_conn *c = SSL_get_ex_data(ssl, dm_tls_conn_index);
    uint8_t *sel;
    if (c != NULL && c->is_acme_alpn) {
        if (SSL_select_next_proto(&sel, out_len, acme_tls, sizeof(acme_tls) - 1, in, in_len) ==
            OPENSSL_NPN_NEGOTIATED) {
            *out = sel;
            return SSL_TLSEXT_ERR_OK;
        }
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    /* h2 first when enabled: our list's order decides (RFC 7301 §3.2). */
    static const uint8_t h2_http11[] = "\x02h2\x08http/1.1";
    bool h2 = c != NULL && c->gen->cfg->http2.enabled;
    if (SSL_select_next_proto(&sel, out_len, h2 ? h2_http11 : http11,
                              h2 ? sizeof(h2_http11) - 1 : sizeof(http11) - 1, in,
                              in_len) == OPENSSL_NPN_NEGOTIATED) {
        *out = sel;
        return SSL_TLSEXT_ERR_OK;
    }
    /* No protocol we speak: continue without ALPN rather than fail, as
     * clients then fall back to HTTP/1.1. */
    return SSL_TLSEXT_ERR_NOACK;
}

SSL_CTX *dm_tls_ctx_new(struct dm_err *err)
{
    if (dm_tls_conn_index < 0) {
        if (dm_tls_bio_init() != 0) {
            dm_err_set_tls(err, "BIO method");
            return NULL;
        }
        dm_tls_conn_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
        dm_tls_ticket_keys_rotate();
        dm_tls_ticket_keys_rotate();
    }
    /* With buffers: no X509 objects anywhere in the server's handshake. */
    SSL_CTX *ctx = SSL_CTX_new(TLS_with_buffers_method());
    if (ctx == NULL) {
        dm_err_set_tls(err, "SSL_CTX_new");
        return NULL;
    }
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_strict_cipher_list(ctx, "ECDHE-ECDSA-AES128-GCM-SHA256:"
                                             "ECDHE-RSA-AES128-GCM-SHA256:"
                                             "ECDHE-ECDSA-AES256-GCM-SHA384:"
                                             "ECDHE-RSA-AES256-GCM-SHA384:"
                                             "ECDHE-ECDSA-CHACHA20-POLY1305:"
                                             "ECDHE-RSA-CHACHA20-POLY1305")) {
        dm_err_set_tls(err, "TLS context setup");
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_tlsext_ticket_key_cb(ctx, tls_on_ticket_key);
    /* One TLS 1.3 ticket per handshake (BoringSSL sends two by default): a
     * client resumes one connection at a time, and each ticket costs an
     * encryption and bytes on every full handshake. */
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_select_certificate_cb(ctx, tls_on_select_cert);
    SSL_CTX_set_alpn_select_cb(ctx, tls_on_alpn, NULL);
    return ctx;
}

enum dm_tls_fail dm_tls_fail_reason(int ssl_error)
{
    if (ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN) {
        return DM_TLS_FAIL_CLOSED;
    }
    if (ssl_error != SSL_ERROR_SSL) {
        return DM_TLS_FAIL_OTHER;
    }
    uint32_t e = ERR_peek_error();
    if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_CONNECTION_REJECTED) {
        /* The select-certificate callback refused: no certificate for the name. */
        return DM_TLS_FAIL_NO_CERT;
    }
    return DM_TLS_FAIL_PROTOCOL;
}
