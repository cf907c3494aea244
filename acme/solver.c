/* Challenge responses the data plane serves while an ACME order validates:
 * http-01 key authorizations by token (RFC 8555 §8.3) and tls-alpn-01
 * validation certificates by name (RFC 8737 §3). The order machine (control
 * thread) adds and removes entries; worker threads look them up in the
 * select-certificate callback and the plain-HTTP handler. Tables are small
 * (one entry per challenge in flight), so a list under a read-write lock. */
#include "acme/solver.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/obj.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "acme/acme.h"
#include "proxy/core/err.h"
#include "proxy/core/time.h"

/* The lifetime of a validation certificate only has to cover validation. */
#define TLSALPN_CERT_LIFETIME_S (7 * 24 * 3600)

struct http01_entry {
    char *token;    /* owned */
    char *key_auth; /* owned */
    struct http01_entry *next;
};

struct tlsalpn_entry {
    char *name;             /* owned: lower-case identifier */
    struct acme_cert *cert; /* ref */
    struct tlsalpn_entry *next;
};

static pthread_rwlock_t solver_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct http01_entry *http01_list;
static struct tlsalpn_entry *tlsalpn_list;

int acme_solver_http01_put(const char *token, const char *key_auth)
{
    struct http01_entry *e = calloc(1, sizeof(*e));
    if (e == NULL || (e->token = strdup(token)) == NULL ||
        (e->key_auth = strdup(key_auth)) == NULL) {
        if (e != NULL) {
            free(e->token);
        }
        free(e);
        return -1;
    }
    pthread_rwlock_wrlock(&solver_lock);
    e->next = http01_list;
    http01_list = e;
    pthread_rwlock_unlock(&solver_lock);
    return 0;
}

void acme_solver_http01_remove(const char *token)
{
    struct http01_entry *gone = NULL;
    pthread_rwlock_wrlock(&solver_lock);
    for (struct http01_entry **pp = &http01_list; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->token, token) == 0) {
            gone = *pp;
            *pp = gone->next;
            break;
        }
    }
    pthread_rwlock_unlock(&solver_lock);
    if (gone != NULL) {
        free(gone->token);
        free(gone->key_auth);
        free(gone);
    }
}

int acme_http01_lookup(const char *token, size_t token_len, char *out, size_t cap)
{
    int n = -1;
    pthread_rwlock_rdlock(&solver_lock);
    for (struct http01_entry *e = http01_list; e != NULL; e = e->next) {
        if (strlen(e->token) == token_len && memcmp(e->token, token, token_len) == 0) {
            size_t len = strlen(e->key_auth);
            if (len < cap) {
                memcpy(out, e->key_auth, len + 1);
                n = (int)len;
            }
            break;
        }
    }
    pthread_rwlock_unlock(&solver_lock);
    return n;
}

bool acme_http01_any(void)
{
    pthread_rwlock_rdlock(&solver_lock);
    bool any = http01_list != NULL;
    pthread_rwlock_unlock(&solver_lock);
    return any;
}

/* add_ext adds a string-configured extension (BoringSSL's v3 config syntax). */
static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
    if (ext == NULL) {
        return -1;
    }
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

/* add_acme_identifier adds the critical id-pe-acmeIdentifier extension
 * (RFC 8737 §3): an OCTET STRING holding SHA-256 of the key authorization. */
static int add_acme_identifier(X509 *x, const uint8_t digest[32])
{
    int rc = -1;
    ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
    ASN1_OCTET_STRING *value = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING *inner = ASN1_OCTET_STRING_new();
    uint8_t *der = NULL;
    X509_EXTENSION *ext = NULL;
    if (oid == NULL || value == NULL || inner == NULL ||
        !ASN1_OCTET_STRING_set(inner, digest, 32)) {
        goto out;
    }
    /* The extension's extnValue wraps the DER of the inner OCTET STRING. */
    int der_len = i2d_ASN1_OCTET_STRING(inner, &der);
    if (der_len <= 0 || !ASN1_OCTET_STRING_set(value, der, der_len)) {
        goto out;
    }
    ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 1, value);
    if (ext == NULL || !X509_add_ext(x, ext, -1)) {
        goto out;
    }
    rc = 0;
out:
    X509_EXTENSION_free(ext);
    OPENSSL_free(der);
    ASN1_OCTET_STRING_free(inner);
    ASN1_OCTET_STRING_free(value);
    ASN1_OBJECT_free(oid);
    return rc;
}

static bool is_ip_literal(const char *name)
{
    return strchr(name, ':') != NULL || strspn(name, "0123456789.") == strlen(name);
}

struct acme_cert *acme_tlsalpn_cert_new(const char *name, const uint8_t digest[32],
                                        struct dm_err *err)
{
    struct acme_cert *cert = NULL;
    EVP_PKEY *pkey = NULL;
    EC_KEY *ec = NULL;
    X509 *x = NULL;
    BIGNUM *serial = NULL;
    BIO *cbio = NULL, *kbio = NULL;

    ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    pkey = EVP_PKEY_new();
    x = X509_new();
    serial = BN_new();
    if (ec == NULL || pkey == NULL || x == NULL || serial == NULL || !EC_KEY_generate_key(ec) ||
        !EVP_PKEY_assign_EC_KEY(pkey, ec)) {
        dm_err_set_tls(err, "tls-alpn-01 key");
        goto out;
    }
    ec = NULL;
    time_t now = dm_time_now();
    if (!X509_set_version(x, X509_VERSION_3) ||
        !BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
        !BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) ||
        !X509_time_adj_ex(X509_getm_notBefore(x), 0, -3600, &now) ||
        !X509_time_adj_ex(X509_getm_notAfter(x), 0, TLSALPN_CERT_LIFETIME_S, &now) ||
        !X509_set_pubkey(x, pkey)) {
        dm_err_set_tls(err, "tls-alpn-01 certificate");
        goto out;
    }
    X509_NAME *subj = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_ASC, (const uint8_t *)"ACME challenge", -1,
                                    -1, 0) ||
        !X509_set_issuer_name(x, subj)) {
        dm_err_set_tls(err, "tls-alpn-01 certificate name");
        goto out;
    }
    /* Exactly one identifier: the one being validated (RFC 8737 §3). */
    char san[300];
    snprintf(san, sizeof(san), "%s:%s", is_ip_literal(name) ? "IP" : "DNS", name);
    if (add_ext(x, NID_subject_alt_name, san) != 0 || add_acme_identifier(x, digest) != 0 ||
        !X509_sign(x, pkey, EVP_sha256())) {
        dm_err_set_tls(err, "tls-alpn-01 certificate for %s", name);
        goto out;
    }
    cbio = BIO_new(BIO_s_mem());
    kbio = BIO_new(BIO_s_mem());
    if (cbio == NULL || kbio == NULL || !PEM_write_bio_X509(cbio, x) ||
        !PEM_write_bio_PrivateKey(kbio, pkey, NULL, NULL, 0, NULL, NULL)) {
        dm_err_set_tls(err, "tls-alpn-01 PEM");
        goto out;
    }
    const uint8_t *cpem, *kpem;
    size_t clen, klen;
    BIO_mem_contents(cbio, &cpem, &clen);
    BIO_mem_contents(kbio, &kpem, &klen);
    cert = acme_cert_from_pem((const char *)cpem, clen, (const char *)kpem, klen, NULL, err);
out:
    if (kbio != NULL) {
        const uint8_t *secret;
        size_t secret_len;
        if (BIO_mem_contents(kbio, &secret, &secret_len) && secret_len > 0) {
            OPENSSL_cleanse((void *)secret, secret_len);
        }
        BIO_free(kbio);
    }
    BIO_free(cbio);
    BN_free(serial);
    X509_free(x);
    EC_KEY_free(ec);
    EVP_PKEY_free(pkey);
    return cert;
}

/* acme_tlsalpn_sni_for writes the reverse-DNS name of an IP literal (RFC 8738 §6:
 * the SNI a CA sends when validating an IP identifier with tls-alpn-01).
 * Returns 0, or -1 if name is not an IP literal. */
int acme_tlsalpn_sni_for(const char *name, char *out, size_t cap)
{
    uint8_t a[16];
    if (inet_pton(AF_INET, name, a) == 1) {
        snprintf(out, cap, "%u.%u.%u.%u.in-addr.arpa", a[3], a[2], a[1], a[0]);
        return 0;
    }
    if (inet_pton(AF_INET6, name, a) == 1 && cap >= 73) {
        static const char hex[] = "0123456789abcdef";
        size_t n = 0;
        for (int i = 15; i >= 0; i--) {
            out[n++] = hex[a[i] & 0xf];
            out[n++] = '.';
            out[n++] = hex[a[i] >> 4];
            out[n++] = '.';
        }
        memcpy(out + n, "ip6.arpa", 9);
        return 0;
    }
    return -1;
}

int acme_solver_tlsalpn_put(const char *name, const uint8_t digest[32], struct dm_err *err)
{
    /* An IP identifier's certificate carries the IP, but the CA's ClientHello
     * names the reverse-DNS form, which is what the handshake looks up. */
    char key[80];
    const char *lookup = acme_tlsalpn_sni_for(name, key, sizeof(key)) == 0 ? key : name;
    struct acme_cert *cert = acme_tlsalpn_cert_new(name, digest, err);
    if (cert == NULL) {
        return -1;
    }
    struct tlsalpn_entry *e = calloc(1, sizeof(*e));
    if (e == NULL || (e->name = strdup(lookup)) == NULL) {
        free(e);
        acme_cert_unref(cert);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    e->cert = cert;
    pthread_rwlock_wrlock(&solver_lock);
    e->next = tlsalpn_list;
    tlsalpn_list = e;
    pthread_rwlock_unlock(&solver_lock);
    return 0;
}

void acme_solver_tlsalpn_remove(const char *name)
{
    char key[80];
    if (acme_tlsalpn_sni_for(name, key, sizeof(key)) == 0) {
        name = key;
    }
    struct tlsalpn_entry *gone = NULL;
    pthread_rwlock_wrlock(&solver_lock);
    for (struct tlsalpn_entry **pp = &tlsalpn_list; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->name, name) == 0) {
            gone = *pp;
            *pp = gone->next;
            break;
        }
    }
    pthread_rwlock_unlock(&solver_lock);
    if (gone != NULL) {
        acme_cert_unref(gone->cert);
        free(gone->name);
        free(gone);
    }
}

static void (*hit_fn)(const char *name, void *arg);
static void *hit_arg;

void acme_solver_set_hit_hook(void (*fn)(const char *name, void *arg), void *arg)
{
    pthread_rwlock_wrlock(&solver_lock);
    hit_fn = fn;
    hit_arg = arg;
    pthread_rwlock_unlock(&solver_lock);
}

struct acme_cert *acme_tlsalpn_cert_get(const char *name, size_t name_len)
{
    struct acme_cert *cert = NULL;
    pthread_rwlock_rdlock(&solver_lock);
    for (struct tlsalpn_entry *e = tlsalpn_list; e != NULL; e = e->next) {
        if (strlen(e->name) == name_len && memcmp(e->name, name, name_len) == 0) {
            cert = acme_cert_ref(e->cert);
            if (hit_fn != NULL) {
                hit_fn(e->name, hit_arg); /* under the read lock: the hook stays set */
            }
            break;
        }
    }
    pthread_rwlock_unlock(&solver_lock);
    return cert;
}
