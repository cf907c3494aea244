/* The embedded local CA: an ECDSA P-256 root kept in <data_dir>/pki/local/
 * (root.pem 0644, root.key 0600, directory 0700) that signs short-lived
 * leaves for configured names. Invariant: a data_dir has at most one root; its
 * creation is serialised across processes by flock on pki/local/.lock, and an
 * existing root.pem is never replaced (clients trust it). See
 * docs/certificates.md. */
#include "acme/issuer_local_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pool.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "acme/cert_int.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"
#include "proxy/core/log.h"
#include "proxy/core/time.h"

#define LOCAL_ROOT_DAYS    3650 /* 10 years: long enough that re-trusting is rare */
#define LOCAL_CN_MAX       64   /* ub-common-name, RFC 5280 appendix A */
#define LOCAL_SERIAL_BYTES 16   /* 128 bits, top bit cleared to stay positive */

struct acme_local_ca {
    char *dir;               /* owned: <data_dir>/pki/local */
    char *root_path;         /* owned: <dir>/root.pem */
    char *key_path;          /* owned: <dir>/root.key */
    X509 *root;              /* ref */
    EVP_PKEY *key;           /* ref: the root key; never leaves this file */
    CRYPTO_BUFFER *root_der; /* ref: root as DER, to recognise our leaves' chains */
    time_t root_not_after;
};

int acme_local_root_path(const char *data_dir, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "%s/pki/local/root.pem", data_dir);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

const char *acme_local_ca_root_path(const struct acme_local_ca *ca)
{
    return ca->root_path;
}

void acme_local_ca_free(struct acme_local_ca *ca)
{
    if (ca == NULL) {
        return;
    }
    free(ca->dir);
    free(ca->root_path);
    free(ca->key_path);
    X509_free(ca->root);
    EVP_PKEY_free(ca->key);
    CRYPTO_BUFFER_free(ca->root_der);
    free(ca);
}

static EVP_PKEY *p256_key_new(struct dm_err *err)
{
    EVP_PKEY *key = EVP_PKEY_new();
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    if (key == NULL || ec == NULL || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(key, ec)) {
        EC_KEY_free(ec);
        EVP_PKEY_free(key);
        dm_err_set_tls(err, "generate P-256 key");
        return NULL;
    }
    return key;
}

static int set_random_serial(X509 *x)
{
    uint8_t b[LOCAL_SERIAL_BYTES];
    RAND_bytes(b, sizeof(b));
    b[0] &= 0x7f; /* positive (RFC 5280 §4.1.2.2) */
    b[0] |= 0x01; /* and never zero */
    BIGNUM *bn = BN_bin2bn(b, sizeof(b), NULL);
    ASN1_INTEGER *ai = bn != NULL ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    int ok = ai != NULL && X509_set_serialNumber(x, ai);
    ASN1_INTEGER_free(ai);
    BN_free(bn);
    return ok ? 0 : -1;
}

/* x509_start makes an unsigned v3 certificate for subject_key with a random
 * serial and the given validity (seconds since the epoch). */
static X509 *x509_start(EVP_PKEY *subject_key, time_t not_before, time_t not_after)
{
    X509 *x = X509_new();
    if (x == NULL || !X509_set_version(x, X509_VERSION_3) || set_random_serial(x) != 0 ||
        ASN1_TIME_set(X509_getm_notBefore(x), not_before) == NULL ||
        ASN1_TIME_set(X509_getm_notAfter(x), not_after) == NULL ||
        !X509_set_pubkey(x, subject_key)) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* add_ext adds an extension written in OpenSSL's config syntax
 * ("critical,CA:TRUE,pathlen:0"); ctx names issuer and subject for key ids. */
static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);
    int ok = ext != NULL && X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

static X509 *root_build(EVP_PKEY *key, time_t now, struct dm_err *err)
{
    uint8_t id[4];
    char cn[64];
    RAND_bytes(id, sizeof(id));
    snprintf(cn, sizeof(cn), "doorman Local CA - %02x%02x%02x%02x", id[0], id[1], id[2], id[3]);

    X509 *x = x509_start(key, now - ACME_LOCAL_BACKDATE_S, now);
    if (x == NULL || ASN1_TIME_adj(X509_getm_notAfter(x), now, LOCAL_ROOT_DAYS, 0) == NULL) {
        goto fail;
    }
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const uint8_t *)"doorman", -1, -1,
                                    0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const uint8_t *)cn, -1, -1, 0) ||
        !X509_set_issuer_name(x, name)) {
        goto fail;
    }
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509V3_set_ctx_nodb(&ctx);
    if (add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") != 0 ||
        add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") != 0 ||
        add_ext(x, &ctx, NID_subject_key_identifier, "hash") != 0 ||
        !X509_sign(x, key, EVP_sha256())) {
        goto fail;
    }
    return x;
fail:
    dm_err_set_tls(err, "build local CA root certificate");
    X509_free(x);
    return NULL;
}

/* ca_adopt takes root and key (references) and derives the cached fields. */
static int ca_adopt(struct acme_local_ca *ca, X509 *root, EVP_PKEY *key, struct dm_err *err)
{
    EVP_PKEY *pub = X509_get_pubkey(root);
    int same = pub != NULL ? EVP_PKEY_cmp(pub, key) : 0;
    EVP_PKEY_free(pub);
    if (same != 1) {
        ERR_clear_error();
        dm_err_set(err, DM_E_TLS, "%s: key does not match the certificate in %s", ca->key_path,
                   ca->root_path);
        return -1;
    }
    if (acme_asn1_time_to_unix(X509_get0_notAfter(root), &ca->root_not_after) != 0) {
        dm_err_set(err, DM_E_TLS, "%s: invalid validity period", ca->root_path);
        return -1;
    }
    uint8_t *der = NULL;
    int len = i2d_X509(root, &der);
    if (len <= 0) {
        dm_err_set_tls(err, "%s: encode", ca->root_path);
        return -1;
    }
    ca->root_der = CRYPTO_BUFFER_new(der, (size_t)len, NULL);
    OPENSSL_free(der);
    if (ca->root_der == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    X509_up_ref(root);
    ca->root = root;
    EVP_PKEY_up_ref(key);
    ca->key = key;
    return 0;
}

static int ca_create(struct acme_local_ca *ca, struct dm_err *err)
{
    int rc = -1;
    X509 *root = NULL;
    char *cert_pem = NULL, *key_pem = NULL;
    EVP_PKEY *key = p256_key_new(err);
    if (key == NULL || (root = root_build(key, dm_time_now(), err)) == NULL ||
        (cert_pem = acme_pem_encode_x509(root, err)) == NULL ||
        (key_pem = acme_pem_encode_key(key, err)) == NULL) {
        goto out;
    }
    /* Key first: root.pem present implies root.key was written (see ca_load). */
    if (dm_file_write_atomic(ca->key_path, key_pem, strlen(key_pem), 0600, err) != 0 ||
        dm_file_write_atomic(ca->root_path, cert_pem, strlen(cert_pem), 0644, err) != 0 ||
        ca_adopt(ca, root, key, err) != 0) {
        goto out;
    }
    char cn[128] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(root), NID_commonName, cn, sizeof(cn));
    dm_log(DM_LOG_INFO, "acme", "local CA created root=%s cn=\"%s\"", ca->root_path, cn);
    rc = 0;
out:
    acme_pem_free_secret(key_pem);
    free(cert_pem);
    X509_free(root);
    EVP_PKEY_free(key);
    return rc;
}

static int ca_load(struct acme_local_ca *ca, struct dm_err *err)
{
    int rc = -1;
    char *cert_pem = NULL, *key_pem = NULL;
    size_t cert_len = 0, key_len = 0;
    X509 *root = NULL;
    EVP_PKEY *key = NULL;
    if (!dm_file_exists(ca->key_path)) {
        dm_err_set(err, DM_E_STORAGE,
                   "%s exists but %s is missing; remove root.pem to create a new root "
                   "(clients must then trust the new one)",
                   ca->root_path, ca->key_path);
        goto out;
    }
    if (dm_file_read(ca->root_path, ACME_PEM_MAX_BYTES, &cert_pem, &cert_len, err) != 0 ||
        dm_file_read(ca->key_path, ACME_PEM_MAX_BYTES, &key_pem, &key_len, err) != 0) {
        goto out;
    }
    if ((root = acme_pem_parse_x509(cert_pem, cert_len, err)) == NULL ||
        (key = acme_pem_parse_key(key_pem, key_len, err)) == NULL) {
        char msg[DM_ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "%s", err != NULL ? err->msg : "");
        dm_err_set(err, DM_E_TLS, "local CA in %s: %s", ca->dir, msg);
        goto out;
    }
    if (ca_adopt(ca, root, key, err) != 0) {
        goto out;
    }
    struct stat st;
    if (stat(ca->key_path, &st) == 0 && (st.st_mode & 077) != 0) {
        dm_log(DM_LOG_WARN, "acme", "local CA key is readable by other users path=%s mode=%04o",
               ca->key_path, (unsigned)(st.st_mode & 07777));
    }
    rc = 0;
out:
    if (key_pem != NULL) {
        OPENSSL_cleanse(key_pem, key_len);
        free(key_pem);
    }
    free(cert_pem);
    X509_free(root);
    EVP_PKEY_free(key);
    return rc;
}

/* ca_lock takes an exclusive flock on <dir>/.lock, so two processes sharing a
 * data_dir cannot both create a root. Returns the fd (close to unlock). It may
 * block for as long as another process takes to create a root (milliseconds). */
static int ca_lock(const struct acme_local_ca *ca, struct dm_err *err)
{
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/.lock", ca->dir) >= (int)sizeof(path)) {
        dm_err_set(err, DM_E_IO, "%s: path too long", ca->dir);
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        dm_err_set_errno(err, errno, "%s", path);
        return -1;
    }
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            dm_err_set_errno(err, errno, "flock %s", path);
            close(fd);
            return -1;
        }
    }
    return fd;
}

struct acme_local_ca *acme_local_ca_open(const char *data_dir, struct dm_err *err)
{
    int lock_fd = -1;
    struct acme_local_ca *ca = calloc(1, sizeof(*ca));
    if (ca == NULL || asprintf(&ca->dir, "%s/pki/local", data_dir) < 0 ||
        asprintf(&ca->root_path, "%s/root.pem", ca->dir) < 0 ||
        asprintf(&ca->key_path, "%s/root.key", ca->dir) < 0) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto fail;
    }
    if (dm_mkdir_p(ca->dir, 0700, err) != 0 || (lock_fd = ca_lock(ca, err)) < 0) {
        goto fail;
    }
    /* Under the lock: whoever comes second sees the first one's root.pem. */
    int rc = dm_file_exists(ca->root_path) ? ca_load(ca, err) : ca_create(ca, err);
    close(lock_fd);
    if (rc != 0) {
        goto fail;
    }
    return ca;
fail:
    acme_local_ca_free(ca);
    return NULL;
}

bool acme_local_ca_is_issuer(const struct acme_local_ca *ca, const struct acme_cert *c)
{
    size_t n = 0;
    CRYPTO_BUFFER *const *chain = acme_cert_chain(c, &n);
    return n == 2 && CRYPTO_BUFFER_len(chain[1]) == CRYPTO_BUFFER_len(ca->root_der) &&
           memcmp(CRYPTO_BUFFER_data(chain[1]), CRYPTO_BUFFER_data(ca->root_der),
                  CRYPTO_BUFFER_len(ca->root_der)) == 0;
}

/* add_sans adds subjectAltName with a dNSName or iPAddress per name; critical
 * when the subject is empty (RFC 5280 §4.2.1.6). */
static int add_sans(X509 *x, const char *const *names, size_t num_names, bool is_critical)
{
    int rc = -1;
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    if (gens == NULL) {
        return -1;
    }
    for (size_t i = 0; i < num_names; i++) {
        unsigned char ip[16];
        size_t ip_len = 0;
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_STRING *s = NULL;
        if (g == NULL) {
            goto out;
        }
        bool is_ip = acme_name_is_ip(names[i], ip, &ip_len);
        s = is_ip ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();
        if (s == NULL || (is_ip ? !ASN1_OCTET_STRING_set(s, ip, (int)ip_len)
                                : !ASN1_STRING_set(s, names[i], (int)strlen(names[i])))) {
            ASN1_STRING_free(s);
            GENERAL_NAME_free(g);
            goto out;
        }
        GENERAL_NAME_set0_value(g, is_ip ? GEN_IPADD : GEN_DNS, s);
        if (!sk_GENERAL_NAME_push(gens, g)) {
            GENERAL_NAME_free(g);
            goto out;
        }
    }
    if (X509_add1_ext_i2d(x, NID_subject_alt_name, gens, is_critical, X509V3_ADD_DEFAULT) == 1) {
        rc = 0;
    }
out:
    GENERAL_NAMES_free(gens);
    return rc;
}

/* leaf_build makes the leaf for names and key, signed by the root. */
static X509 *leaf_build(struct acme_local_ca *ca, EVP_PKEY *key, const char *const *names,
                        size_t num_names, time_t not_before, time_t not_after)
{
    X509 *x = x509_start(key, not_before, not_after);
    if (x == NULL || !X509_set_issuer_name(x, X509_get_subject_name(ca->root))) {
        goto fail;
    }
    bool has_cn = strlen(names[0]) <= LOCAL_CN_MAX;
    if (has_cn && !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                              (const uint8_t *)names[0], -1, -1, 0)) {
        goto fail;
    }
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, ca->root, x, NULL, NULL, 0);
    X509V3_set_ctx_nodb(&ctx);
    if (add_sans(x, names, num_names, !has_cn) != 0 ||
        add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
        add_ext(x, &ctx, NID_key_usage, "critical,digitalSignature") != 0 ||
        add_ext(x, &ctx, NID_ext_key_usage, "serverAuth") != 0 ||
        add_ext(x, &ctx, NID_subject_key_identifier, "hash") != 0 ||
        add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") != 0 ||
        !X509_sign(x, ca->key, EVP_sha256())) {
        goto fail;
    }
    return x;
fail:
    X509_free(x);
    return NULL;
}

/* pem_concat returns a + b as a new string, or NULL. */
static char *pem_concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s != NULL) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

struct acme_cert *acme_local_ca_issue(struct acme_local_ca *ca, const char *const *names,
                                      size_t num_names, long lifetime_s, char **out_chain_pem,
                                      char **out_key_pem, struct dm_err *err)
{
    struct acme_cert *c = NULL;
    X509 *leaf = NULL;
    char *leaf_pem = NULL, *root_pem = NULL, *chain_pem = NULL, *key_pem = NULL;
    EVP_PKEY *key = NULL;
    if (num_names == 0 || lifetime_s <= 0) {
        dm_err_set(err, DM_E_CONFIG, "local CA: need at least one name and a positive lifetime");
        goto out;
    }
    for (size_t i = 0; i < num_names; i++) {
        if (!acme_name_valid(names[i])) {
            dm_err_set(err, DM_E_CONFIG, "local CA: invalid name \"%.*s\"", ACME_NAME_MAX,
                       names[i]);
            goto out;
        }
    }
    time_t now = dm_time_now();
    time_t not_after = now + lifetime_s;
    if (not_after > ca->root_not_after) {
        not_after = ca->root_not_after; /* a leaf cannot outlive its root */
    }
    if ((key = p256_key_new(err)) == NULL) {
        goto out;
    }
    leaf = leaf_build(ca, key, names, num_names, now - ACME_LOCAL_BACKDATE_S, not_after);
    if (leaf == NULL) {
        dm_err_set_tls(err, "local CA: build certificate for %s", names[0]);
        goto out;
    }
    X509 *chain[2] = {leaf, ca->root};
    if ((c = acme_cert_new_x509(chain, 2, key, NULL, err)) == NULL) {
        goto out;
    }
    if (out_chain_pem != NULL) {
        if ((leaf_pem = acme_pem_encode_x509(leaf, err)) == NULL ||
            (root_pem = acme_pem_encode_x509(ca->root, err)) == NULL) {
            goto fail;
        }
        if ((chain_pem = pem_concat(leaf_pem, root_pem)) == NULL) {
            dm_err_set(err, DM_E_NOMEM, "out of memory");
            goto fail;
        }
    }
    if (out_key_pem != NULL && (key_pem = acme_pem_encode_key(key, err)) == NULL) {
        goto fail;
    }
    if (out_chain_pem != NULL) {
        *out_chain_pem = chain_pem;
        chain_pem = NULL;
    }
    if (out_key_pem != NULL) {
        *out_key_pem = key_pem;
        key_pem = NULL;
    }
    goto out;
fail:
    acme_cert_unref(c);
    c = NULL;
out:
    free(leaf_pem);
    free(root_pem);
    free(chain_pem);
    acme_pem_free_secret(key_pem);
    X509_free(leaf);
    EVP_PKEY_free(key);
    return c;
}
