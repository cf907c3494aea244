/* Certificates ready to serve: PEM chain + key -> struct acme_cert (DER
 * CRYPTO_BUFFERs, EVP_PKEY, leaf validity and SANs), refcounting, accessors and
 * name coverage. Invariant: all parsing happens here at load time, so a
 * handshake only hands the prepared buffers and key to SSL_set_chain_and_key. */
#include "acme/cert_int.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/base64.h>
#include <openssl/bio.h>
#include <openssl/bytestring.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/obj.h>
#include <openssl/pem.h>
#include <openssl/pool.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "proxy/core/err.h"
#include "proxy/core/time.h"

/* RSA keys above this size make every handshake slow (and parsing them is a
 * cheap way to burn CPU); nobody deploys them for TLS servers. */
#define PEM_RSA_MAX_BITS 8192

static void cert_free(struct acme_cert *c)
{
    if (c == NULL) {
        return;
    }
    for (size_t i = 0; i < c->num_chain; i++) {
        CRYPTO_BUFFER_free(c->chain[i]);
    }
    free(c->chain);
    EVP_PKEY_free(c->key);
    for (size_t i = 0; i < c->num_names; i++) {
        free(c->names[i]);
    }
    free(c->names);
    free(c);
}

struct acme_cert *acme_cert_ref(struct acme_cert *c)
{
    if (c != NULL) {
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    }
    return c;
}

void acme_cert_unref(struct acme_cert *c)
{
    if (c == NULL) {
        return;
    }
    /* acq_rel: the thread dropping the last reference must see every write
     * made through the others before it frees. */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        cert_free(c);
    }
}

CRYPTO_BUFFER *const *acme_cert_chain(const struct acme_cert *c, size_t *out_num)
{
    *out_num = c->num_chain;
    return c->chain;
}

EVP_PKEY *acme_cert_key(const struct acme_cert *c)
{
    return c->key;
}

time_t acme_cert_not_before(const struct acme_cert *c)
{
    return c->not_before;
}

void acme_cert_touch(struct acme_cert *c)
{
    /* A store only when the second changed: the line stays shared (read
     * only) between workers serving the same certificate. */
    int64_t now = (int64_t)dm_time_now();
    if (atomic_load_explicit(&c->last_used, memory_order_relaxed) != now) {
        atomic_store_explicit(&c->last_used, now, memory_order_relaxed);
    }
}

time_t acme_cert_last_used(const struct acme_cert *c)
{
    return (time_t)atomic_load_explicit(&((struct acme_cert *)c)->last_used, memory_order_relaxed);
}

time_t acme_cert_not_after(const struct acme_cert *c)
{
    return c->not_after;
}

char *const *acme_cert_names(const struct acme_cert *c, size_t *out_num)
{
    *out_num = c->num_names;
    return c->names;
}

bool acme_name_is_ip(const char *name, unsigned char out[16], size_t *out_len)
{
    unsigned char buf[16];
    unsigned char *dst = out != NULL ? out : buf;
    size_t len = 0;
    if (inet_pton(AF_INET, name, dst) == 1) {
        len = 4;
    } else if (inet_pton(AF_INET6, name, dst) == 1) {
        len = 16;
    }
    if (out_len != NULL) {
        *out_len = len;
    }
    return len != 0;
}

bool acme_name_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > ACME_NAME_MAX) {
        return false;
    }
    if (acme_name_is_ip(name, NULL, NULL)) {
        return true;
    }
    const char *p = name;
    if (p[0] == '*' && p[1] == '.') {
        p += 2;
    }
    size_t label = 0;
    for (; *p != '\0'; p++) {
        char ch = *p;
        if (ch == '.') {
            if (label == 0) {
                return false;
            }
            label = 0;
            continue;
        }
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
        if (!ok || ++label > 63) {
            return false;
        }
    }
    return label > 0;
}

int acme_asn1_time_to_unix(const ASN1_TIME *t, time_t *out)
{
    /* This BoringSSL has no ASN1_TIME_to_posix: measure from the epoch. */
    ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
    if (epoch == NULL) {
        return -1;
    }
    int days = 0, secs = 0;
    int ok = ASN1_TIME_diff(&days, &secs, epoch, t);
    ASN1_TIME_free(epoch);
    if (!ok) {
        ERR_clear_error();
        return -1;
    }
    *out = (time_t)days * 86400 + secs;
    return 0;
}

/* names_add appends a copy of s[0..len) (lower-cased) to c->names. */
static int names_add(struct acme_cert *c, const char *s, size_t len)
{
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        copy[i] = ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
    }
    copy[len] = '\0';
    c->names[c->num_names++] = copy;
    return 0;
}

/* cert_read_leaf fills validity and SANs from the leaf. SANs that cannot be
 * names (empty, NUL inside, too long, odd address lengths) are skipped: they
 * can never match an SNI. Subject CN is not used (RFC 6125 §6.4.4; browsers
 * ignore it). */
static int cert_read_leaf(struct acme_cert *c, X509 *leaf, struct dm_err *err)
{
    int rc = -1;
    GENERAL_NAMES *gens = NULL;
    if (acme_asn1_time_to_unix(X509_get0_notBefore(leaf), &c->not_before) != 0 ||
        acme_asn1_time_to_unix(X509_get0_notAfter(leaf), &c->not_after) != 0) {
        dm_err_set(err, DM_E_TLS, "certificate has an invalid validity period");
        goto out;
    }
    int crit = 0;
    gens = X509_get_ext_d2i(leaf, NID_subject_alt_name, &crit, NULL);
    if (gens == NULL && crit != -1) {
        /* -1: no SAN extension; anything else: several, or undecodable. */
        ERR_clear_error();
        dm_err_set(err, DM_E_TLS, "certificate has an invalid subjectAltName extension");
        goto out;
    }
    size_t n = gens != NULL ? sk_GENERAL_NAME_num(gens) : 0;
    if (n > ACME_CERT_MAX_NAMES) {
        n = ACME_CERT_MAX_NAMES;
    }
    c->names = calloc(n > 0 ? n : 1, sizeof(*c->names));
    if (c->names == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto out;
    }
    /* Two passes so DNS names come first (see struct acme_cert). */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
            if (pass == 0 && g->type == GEN_DNS) {
                const ASN1_STRING *s = g->d.dNSName;
                size_t len = (size_t)ASN1_STRING_length(s);
                const char *data = (const char *)ASN1_STRING_get0_data(s);
                if (len == 0 || len > ACME_NAME_MAX || memchr(data, '\0', len) != NULL) {
                    continue;
                }
                if (names_add(c, data, len) != 0) {
                    dm_err_set(err, DM_E_NOMEM, "out of memory");
                    goto out;
                }
            } else if (pass == 1 && g->type == GEN_IPADD) {
                const ASN1_STRING *s = g->d.iPAddress;
                int len = ASN1_STRING_length(s);
                int af = len == 4 ? AF_INET : len == 16 ? AF_INET6 : 0;
                char text[INET6_ADDRSTRLEN];
                if (af == 0 ||
                    inet_ntop(af, ASN1_STRING_get0_data(s), text, sizeof(text)) == NULL) {
                    continue;
                }
                if (names_add(c, text, strlen(text)) != 0) {
                    dm_err_set(err, DM_E_NOMEM, "out of memory");
                    goto out;
                }
            }
        }
        if (pass == 0) {
            c->num_dns = c->num_names;
        }
    }
    rc = 0;
out:
    GENERAL_NAMES_free(gens);
    return rc;
}

/* key_check accepts the key types we serve: ECDSA P-256/P-384, RSA 2048..8192. */
static int key_check(const EVP_PKEY *key, struct dm_err *err)
{
    switch (EVP_PKEY_id(key)) {
    case EVP_PKEY_EC: {
        const EC_GROUP *g = EC_KEY_get0_group(EVP_PKEY_get0_EC_KEY(key));
        int nid = g != NULL ? EC_GROUP_get_curve_name(g) : NID_undef;
        if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1) {
            dm_err_set(err, DM_E_TLS, "EC key on curve %s is not supported (P-256, P-384)",
                       nid != NID_undef ? OBJ_nid2sn(nid) : "unknown");
            return -1;
        }
        return 0;
    }
    case EVP_PKEY_RSA: {
        const RSA *rsa = EVP_PKEY_get0_RSA(key);
        unsigned bits = RSA_bits(rsa);
        if (bits < 2048 || bits > PEM_RSA_MAX_BITS) {
            dm_err_set(err, DM_E_TLS, "RSA key of %u bits is not supported (2048..%d)", bits,
                       PEM_RSA_MAX_BITS);
            return -1;
        }
        if (!RSA_check_key(rsa)) {
            dm_err_set_tls(err, "RSA key is inconsistent");
            return -1;
        }
        return 0;
    }
    default:
        dm_err_set(err, DM_E_TLS, "unsupported private key type (want ECDSA P-256/P-384 or RSA)");
        return -1;
    }
}

/* cert_finish checks that key (already through key_check) matches leaf
 * (c->chain[0] parsed), reads the leaf and takes a reference to key. */
static int cert_finish(struct acme_cert *c, X509 *leaf, EVP_PKEY *key, struct dm_err *err)
{
    EVP_PKEY *pub = X509_get_pubkey(leaf);
    int same = pub != NULL ? EVP_PKEY_cmp(pub, key) : 0;
    EVP_PKEY_free(pub);
    if (same != 1) {
        ERR_clear_error();
        dm_err_set(err, DM_E_TLS, "key does not match the certificate");
        return -1;
    }
    if (cert_read_leaf(c, leaf, err) != 0) {
        return -1;
    }
    EVP_PKEY_up_ref(key);
    c->key = key;
    return 0;
}

static struct acme_cert *cert_alloc(size_t max_chain, struct dm_err *err)
{
    struct acme_cert *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->chain = calloc(max_chain, sizeof(*c->chain))) == NULL) {
        free(c);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    atomic_init(&c->refs, 1);
    atomic_init(&c->last_used, (int64_t)dm_time_now());
    return c;
}

struct acme_cert *acme_cert_new_x509(X509 *const *chain, size_t num_chain, EVP_PKEY *key,
                                     CRYPTO_BUFFER_POOL *pool, struct dm_err *err)
{
    if (num_chain == 0 || num_chain > ACME_CERT_MAX_CHAIN) {
        dm_err_set(err, DM_E_TLS, "chain of %zu certificates (want 1..%d)", num_chain,
                   ACME_CERT_MAX_CHAIN);
        return NULL;
    }
    struct acme_cert *c = cert_alloc(num_chain, err);
    if (c == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < num_chain; i++) {
        uint8_t *der = NULL;
        int len = i2d_X509(chain[i], &der);
        if (len <= 0) {
            dm_err_set_tls(err, "encode certificate %zu", i);
            goto fail;
        }
        c->chain[i] = CRYPTO_BUFFER_new(der, (size_t)len, pool);
        OPENSSL_free(der);
        if (c->chain[i] == NULL) {
            dm_err_set(err, DM_E_NOMEM, "out of memory");
            goto fail;
        }
        c->num_chain++;
    }
    if (key_check(key, err) != 0 || cert_finish(c, chain[0], key, err) != 0) {
        goto fail;
    }
    return c;
fail:
    cert_free(c);
    return NULL;
}

/* pem_next reads the next PEM block. Returns 1 with a block (caller frees the
 * three outputs with OPENSSL_free), 0 at the end of input, -1 on a malformed
 * block (err filled). */
static int pem_next(BIO *bio, char **out_name, char **out_header, uint8_t **out_data, long *out_len,
                    const char *what, struct dm_err *err)
{
    if (PEM_read_bio(bio, out_name, out_header, out_data, out_len)) {
        return 1;
    }
    uint32_t e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        return 0;
    }
    dm_err_set_tls(err, "%s: malformed PEM", what);
    return -1;
}

static void pem_block_free(char *name, char *header, uint8_t *data, long len)
{
    if (data != NULL && len > 0) {
        OPENSSL_cleanse(data, (size_t)len); /* may be a key block in a combined file */
    }
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
}

static BIO *pem_bio(const char *pem, size_t len, const char *what, struct dm_err *err)
{
    if (len > ACME_PEM_MAX_BYTES) {
        dm_err_set(err, DM_E_LIMIT, "%s: larger than %d bytes", what, ACME_PEM_MAX_BYTES);
        return NULL;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
    }
    return bio;
}

/* key_parse_der parses one key block by its PEM label; NULL if the label is
 * not a key we read (and *out_is_key false). */
static EVP_PKEY *key_parse_der(const char *name, const uint8_t *data, size_t len, bool *out_is_key)
{
    CBS cbs;
    CBS_init(&cbs, data, len);
    EVP_PKEY *key = NULL;
    *out_is_key = true;
    if (strcmp(name, PEM_STRING_PKCS8INF) == 0) {
        key = EVP_parse_private_key(&cbs);
    } else if (strcmp(name, PEM_STRING_EC) == 0) {
        EC_KEY *ec = EC_KEY_parse_private_key(&cbs, NULL);
        key = EVP_PKEY_new();
        if (ec == NULL || key == NULL || !EVP_PKEY_assign_EC_KEY(key, ec)) {
            EC_KEY_free(ec); /* not taken by a failed assign */
            EVP_PKEY_free(key);
            key = NULL;
        }
    } else if (strcmp(name, PEM_STRING_RSA) == 0) {
        RSA *rsa = RSA_parse_private_key(&cbs);
        key = EVP_PKEY_new();
        if (rsa == NULL || key == NULL || !EVP_PKEY_assign_RSA(key, rsa)) {
            RSA_free(rsa);
            EVP_PKEY_free(key);
            key = NULL;
        }
    } else {
        *out_is_key = false;
        return NULL;
    }
    if (key != NULL && CBS_len(&cbs) != 0) {
        EVP_PKEY_free(key); /* trailing bytes after the key structure */
        key = NULL;
    }
    return key;
}

EVP_PKEY *acme_pem_parse_key(const char *pem, size_t len, struct dm_err *err)
{
    EVP_PKEY *key = NULL;
    BIO *bio = pem_bio(pem, len, "key PEM", err);
    if (bio == NULL) {
        return NULL;
    }
    for (;;) {
        char *name = NULL, *header = NULL;
        uint8_t *data = NULL;
        long dlen = 0;
        int r = pem_next(bio, &name, &header, &data, &dlen, "key PEM", err);
        if (r <= 0) {
            if (r == 0) {
                dm_err_set(err, DM_E_TLS, "no private key in key PEM");
            }
            break;
        }
        if (strcmp(name, PEM_STRING_PKCS8) == 0 || (header != NULL && header[0] != '\0')) {
            /* "ENCRYPTED PRIVATE KEY", or legacy "Proc-Type: 4,ENCRYPTED". */
            pem_block_free(name, header, data, dlen);
            dm_err_set(err, DM_E_TLS, "encrypted private keys are not supported");
            break;
        }
        bool is_key = false;
        key = key_parse_der(name, data, (size_t)dlen, &is_key);
        pem_block_free(name, header, data, dlen);
        if (!is_key) {
            continue; /* CERTIFICATE, EC PARAMETERS, ... */
        }
        if (key == NULL) {
            dm_err_set_tls(err, "key PEM: invalid private key");
        } else if (key_check(key, err) != 0) {
            EVP_PKEY_free(key);
            key = NULL;
        }
        break;
    }
    BIO_free(bio);
    ERR_clear_error();
    return key;
}

/* chain_parse fills c->chain from every CERTIFICATE block of pem, leaf first,
 * and returns the parsed leaf (new reference). Other blocks are skipped so a
 * combined key+chain file works as the chain. */
static X509 *chain_parse(struct acme_cert *c, const char *pem, size_t len, CRYPTO_BUFFER_POOL *pool,
                         struct dm_err *err)
{
    X509 *leaf = NULL;
    BIO *bio = pem_bio(pem, len, "chain PEM", err);
    if (bio == NULL) {
        return NULL;
    }
    for (;;) {
        char *name = NULL, *header = NULL;
        uint8_t *data = NULL;
        long dlen = 0;
        int r = pem_next(bio, &name, &header, &data, &dlen, "chain PEM", err);
        if (r < 0) {
            goto fail;
        }
        if (r == 0) {
            break;
        }
        if (strcmp(name, PEM_STRING_X509) != 0 && strcmp(name, PEM_STRING_X509_OLD) != 0) {
            pem_block_free(name, header, data, dlen);
            continue;
        }
        if (c->num_chain == ACME_CERT_MAX_CHAIN) {
            pem_block_free(name, header, data, dlen);
            dm_err_set(err, DM_E_LIMIT, "chain PEM has more than %d certificates",
                       ACME_CERT_MAX_CHAIN);
            goto fail;
        }
        CRYPTO_BUFFER *buf = CRYPTO_BUFFER_new(data, (size_t)dlen, pool);
        pem_block_free(name, header, data, dlen);
        if (buf == NULL) {
            dm_err_set(err, DM_E_NOMEM, "out of memory");
            goto fail;
        }
        c->chain[c->num_chain++] = buf;
        /* Parse every certificate once now, so a broken intermediate fails
         * the load instead of every handshake. Only the leaf is kept. */
        X509 *x = X509_parse_from_buffer(buf);
        if (x == NULL) {
            dm_err_set_tls(err, "chain PEM: certificate %zu is not valid X.509", c->num_chain);
            goto fail;
        }
        if (leaf == NULL) {
            leaf = x;
        } else {
            X509_free(x);
        }
    }
    if (leaf == NULL) {
        dm_err_set(err, DM_E_TLS, "no certificate in chain PEM");
        goto fail;
    }
    BIO_free(bio);
    return leaf;
fail:
    X509_free(leaf);
    BIO_free(bio);
    ERR_clear_error();
    return NULL;
}

struct acme_cert *acme_cert_from_pem(const char *chain_pem, size_t chain_len, const char *key_pem,
                                     size_t key_len, CRYPTO_BUFFER_POOL *pool, struct dm_err *err)
{
    X509 *leaf = NULL;
    EVP_PKEY *key = NULL;
    struct acme_cert *c = cert_alloc(ACME_CERT_MAX_CHAIN, err);
    if (c == NULL) {
        goto fail;
    }
    leaf = chain_parse(c, chain_pem, chain_len, pool, err);
    if (leaf == NULL) {
        goto fail;
    }
    key = acme_pem_parse_key(key_pem, key_len, err);
    if (key == NULL) {
        goto fail;
    }
    if (cert_finish(c, leaf, key, err) != 0) {
        goto fail;
    }
    X509_free(leaf);
    EVP_PKEY_free(key);
    return c;
fail:
    X509_free(leaf);
    EVP_PKEY_free(key);
    cert_free(c);
    ERR_clear_error();
    return NULL;
}

X509 *acme_pem_parse_x509(const char *pem, size_t len, struct dm_err *err)
{
    struct acme_cert *c = cert_alloc(ACME_CERT_MAX_CHAIN, err);
    if (c == NULL) {
        return NULL;
    }
    X509 *x = chain_parse(c, pem, len, NULL, err);
    cert_free(c);
    return x;
}

/* pem_encode wraps der as PEM with 64-column base64 lines (RFC 7468 §2). */
static char *pem_encode(const char *label, const uint8_t *der, size_t len, struct dm_err *err)
{
    size_t lines = len / 48 + 1;
    size_t cap = 2 * (strlen(label) + 32) + lines * 65 + 1;
    char *out = malloc(cap);
    if (out == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    size_t n = (size_t)snprintf(out, cap, "-----BEGIN %s-----\n", label);
    for (size_t off = 0; off < len; off += 48) {
        size_t chunk = len - off < 48 ? len - off : 48;
        n += EVP_EncodeBlock((uint8_t *)out + n, der + off, chunk);
        out[n++] = '\n';
    }
    snprintf(out + n, cap - n, "-----END %s-----\n", label);
    return out;
}

char *acme_pem_encode_x509(X509 *x, struct dm_err *err)
{
    uint8_t *der = NULL;
    int len = i2d_X509(x, &der);
    if (len <= 0) {
        dm_err_set_tls(err, "encode certificate");
        return NULL;
    }
    char *pem = pem_encode(PEM_STRING_X509, der, (size_t)len, err);
    OPENSSL_free(der);
    return pem;
}

char *acme_pem_encode_key(const EVP_PKEY *key, struct dm_err *err)
{
    CBB cbb;
    uint8_t *der = NULL;
    size_t len = 0;
    if (!CBB_init(&cbb, 256) || !EVP_marshal_private_key(&cbb, key) ||
        !CBB_finish(&cbb, &der, &len)) {
        CBB_cleanup(&cbb);
        dm_err_set_tls(err, "encode private key");
        return NULL;
    }
    char *pem = pem_encode(PEM_STRING_PKCS8INF, der, len, err);
    OPENSSL_free(der); /* BoringSSL's free zeroes the buffer */
    return pem;
}

void acme_pem_free_secret(char *s)
{
    if (s != NULL) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

/* ascii_lower copies name lower-cased into buf[ACME_NAME_MAX + 1]; -1 if too
 * long or empty. */
static int ascii_lower(char *buf, const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > ACME_NAME_MAX) {
        return -1;
    }
    for (size_t i = 0; i <= len; i++) {
        char ch = name[i];
        buf[i] = ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
    }
    return 0;
}

bool acme_cert_covers(const struct acme_cert *c, const char *name)
{
    char buf[ACME_NAME_MAX + 1];
    if (c == NULL || name == NULL || ascii_lower(buf, name) != 0) {
        return false;
    }
    unsigned char want[16], have[16];
    size_t want_len = 0, have_len = 0;
    if (acme_name_is_ip(buf, want, &want_len)) {
        for (size_t i = c->num_dns; i < c->num_names; i++) {
            if (acme_name_is_ip(c->names[i], have, &have_len) && have_len == want_len &&
                memcmp(have, want, want_len) == 0) {
                return true;
            }
        }
        return false;
    }
    /* "*.example.com" as a site name is covered by that same SAN (exact). A
     * SAN wildcard covers exactly one non-empty leftmost label (RFC 6125
     * §6.4.3): "*.example.com" covers "a.example.com", not "example.com" or
     * "a.b.example.com". */
    const char *dot = strchr(buf, '.');
    bool can_wild = dot != NULL && dot != buf && buf[0] != '*';
    for (size_t i = 0; i < c->num_dns; i++) {
        const char *san = c->names[i];
        if (strcmp(san, buf) == 0) {
            return true;
        }
        if (can_wild && san[0] == '*' && san[1] == '.' && strcmp(san + 1, dot) == 0) {
            return true;
        }
    }
    return false;
}
