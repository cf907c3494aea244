/* Test fixtures for the acme unit tests, generated at run time with BoringSSL:
 * keys (P-256, P-384, RSA), self-signed certificates with chosen SANs and
 * validity, PEM in every key format we read, and temporary directories.
 * No key material is committed to the repository. */
#ifndef DM_TESTS_UNIT_ACME_FIXTURES_H
#define DM_TESTS_UNIT_ACME_FIXTURES_H

#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

enum fx_key_kind {
    FX_P256 = 0,
    FX_P384,
    FX_P521,
    FX_RSA1024,
    FX_RSA2048,
};

static inline EVP_PKEY *fx_key(enum fx_key_kind kind)
{
    EVP_PKEY *k = EVP_PKEY_new();
    if (kind == FX_RSA1024 || kind == FX_RSA2048) {
        RSA *rsa = RSA_new();
        BIGNUM *e = BN_new();
        BN_set_word(e, RSA_F4);
        RSA_generate_key_ex(rsa, kind == FX_RSA1024 ? 1024 : 2048, e, NULL);
        BN_free(e);
        EVP_PKEY_assign_RSA(k, rsa);
        return k;
    }
    int nid = kind == FX_P256   ? NID_X9_62_prime256v1
              : kind == FX_P384 ? NID_secp384r1
                                : NID_secp521r1;
    EC_KEY *ec = EC_KEY_new_by_curve_name(nid);
    EC_KEY_generate_key(ec);
    EVP_PKEY_assign_EC_KEY(k, ec);
    return k;
}

/* fx_cert makes a certificate for key signed by signer_key (self-signed when
 * issuer is NULL) with DNS or IP SANs from a comma-separated list. */
static inline X509 *fx_cert(EVP_PKEY *key, const char *sans, time_t not_before, time_t not_after,
                            X509 *issuer, EVP_PKEY *signer_key)
{
    X509 *x = X509_new();
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 42);
    ASN1_TIME_set(X509_getm_notBefore(x), not_before);
    ASN1_TIME_set(X509_getm_notAfter(x), not_after);
    X509_set_pubkey(x, key);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                               (const uint8_t *)"fixture", -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(issuer != NULL ? issuer : x));
    if (sans != NULL && sans[0] != '\0') {
        char conf[1024] = "";
        char copy[512];
        snprintf(copy, sizeof(copy), "%s", sans);
        for (char *save = NULL, *t = strtok_r(copy, ",", &save); t != NULL;
             t = strtok_r(NULL, ",", &save)) {
            bool is_ip = strchr(t, ':') != NULL || (t[0] >= '0' && t[0] <= '9');
            size_t used = strlen(conf);
            snprintf(conf + used, sizeof(conf) - used, "%s%s:%s", used > 0 ? "," : "",
                     is_ip ? "IP" : "DNS", t);
        }
        X509V3_CTX ctx;
        X509V3_set_ctx(&ctx, issuer != NULL ? issuer : x, x, NULL, NULL, 0);
        X509V3_set_ctx_nodb(&ctx);
        X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &ctx, NID_subject_alt_name, conf);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    X509_sign(x, signer_key != NULL ? signer_key : key, EVP_sha256());
    return x;
}

/* fx_bio_str returns the contents of a memory BIO as a new string and frees it. */
static inline char *fx_bio_str(BIO *b)
{
    const uint8_t *data = NULL;
    size_t len = 0;
    BIO_mem_contents(b, &data, &len);
    char *s = malloc(len + 1);
    memcpy(s, data, len);
    s[len] = '\0';
    BIO_free(b);
    return s;
}

static inline char *fx_cert_pem(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    return fx_bio_str(b);
}

enum fx_key_format {
    FX_PKCS8 = 0,   /* PRIVATE KEY */
    FX_TRADITIONAL, /* EC PRIVATE KEY / RSA PRIVATE KEY */
    FX_ENCRYPTED,   /* ENCRYPTED PRIVATE KEY */
};

static inline char *fx_key_pem(EVP_PKEY *key, enum fx_key_format format)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (format == FX_PKCS8) {
        PEM_write_bio_PKCS8PrivateKey(b, key, NULL, NULL, 0, NULL, NULL);
    } else if (format == FX_ENCRYPTED) {
        char pass[] = "secret";
        PEM_write_bio_PKCS8PrivateKey(b, key, EVP_aes_128_cbc(), pass, (int)strlen(pass), NULL,
                                      NULL);
    } else if (EVP_PKEY_id(key) == EVP_PKEY_EC) {
        PEM_write_bio_ECPrivateKey(b, EVP_PKEY_get0_EC_KEY(key), NULL, NULL, 0, NULL, NULL);
    } else {
        PEM_write_bio_RSAPrivateKey(b, EVP_PKEY_get0_RSA(key), NULL, NULL, 0, NULL, NULL);
    }
    return fx_bio_str(b);
}

static inline char *fx_concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

/* fx_tmpdir creates a fresh directory under TMPDIR (or /tmp) into buf. */
static inline const char *fx_tmpdir(char *buf, size_t cap)
{
    const char *base = getenv("TMPDIR");
    snprintf(buf, cap, "%s/dm-acme-test-XXXXXX", base != NULL ? base : "/tmp");
    return mkdtemp(buf);
}

static inline int fx_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* fx_rmtree removes dir and everything below it. */
static inline void fx_rmtree(const char *dir)
{
    nftw(dir, fx_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static inline int fx_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        return -1;
    }
    fputs(text, f);
    return fclose(f);
}

#endif
