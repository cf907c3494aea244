/* Tests for acme/pem.c: PEM chain + key loading (ECDSA, RSA, every key
 * format), rejection with clear errors, SAN extraction and name coverage.
 * Fixtures are generated at run time (fixtures.h). */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pool.h>

#include "acme/acme.h"
#include "acme/cert_int.h"
#include "fixtures.h"
#include "harness.h"
#include "proxy/core/err.h"

static const time_t T0 = 1700000000;

/* load runs acme_cert_from_pem on NUL-terminated texts. */
static struct acme_cert *load(const char *chain, const char *key, struct dm_err *err)
{
    return acme_cert_from_pem(chain, strlen(chain), key, strlen(key), NULL, err);
}

/* roundtrip makes a self-signed cert for kind and loads it with key format. */
static void roundtrip(enum fx_key_kind kind, enum fx_key_format format, bool want_ok,
                      const char *want_msg)
{
    EVP_PKEY *k = fx_key(kind);
    X509 *x = fx_cert(k, "example.test", T0, T0 + 86400, NULL, NULL);
    char *chain = fx_cert_pem(x);
    char *key = fx_key_pem(k, format);
    struct dm_err err = {0};
    struct acme_cert *c = load(chain, key, &err);
    CHECK_EQ_INT(c != NULL, want_ok);
    if (want_msg != NULL) {
        CHECK(strstr(err.msg, want_msg) != NULL);
        if (strstr(err.msg, want_msg) == NULL) {
            fprintf(stderr, "  got: %s\n", err.msg);
        }
    }
    if (c != NULL) {
        size_t n = 0;
        CRYPTO_BUFFER *const *bufs = acme_cert_chain(c, &n);
        CHECK_EQ_INT(n, 1);
        CHECK(bufs[0] != NULL);
        CHECK(acme_cert_key(c) != NULL);
        CHECK_EQ_INT(EVP_PKEY_cmp(acme_cert_key(c), k), 1);
        CHECK_EQ_INT(acme_cert_not_before(c), T0);
        CHECK_EQ_INT(acme_cert_not_after(c), T0 + 86400);
    }
    CHECK_EQ_INT(ERR_peek_error(), 0); /* error queue left empty */
    acme_cert_unref(c);
    free(chain);
    free(key);
    X509_free(x);
    EVP_PKEY_free(k);
}

TEST(test_ecdsa_p256_all_formats)
{
    roundtrip(FX_P256, FX_PKCS8, true, NULL);
    roundtrip(FX_P256, FX_TRADITIONAL, true, NULL);
}

TEST(test_ecdsa_p384)
{
    roundtrip(FX_P384, FX_PKCS8, true, NULL);
    roundtrip(FX_P384, FX_TRADITIONAL, true, NULL);
}

TEST(test_rsa_2048_all_formats)
{
    roundtrip(FX_RSA2048, FX_PKCS8, true, NULL);
    roundtrip(FX_RSA2048, FX_TRADITIONAL, true, NULL);
}

TEST(test_rejected_keys)
{
    roundtrip(FX_RSA1024, FX_PKCS8, false, "RSA key of 1024 bits is not supported");
    roundtrip(FX_P521, FX_PKCS8, false, "not supported (P-256, P-384)");
    roundtrip(FX_P256, FX_ENCRYPTED, false, "encrypted private keys are not supported");
}

TEST(test_key_mismatch)
{
    EVP_PKEY *k1 = fx_key(FX_P256), *k2 = fx_key(FX_P256), *r = fx_key(FX_RSA2048);
    X509 *x = fx_cert(k1, "a.test", T0, T0 + 60, NULL, NULL);
    char *chain = fx_cert_pem(x);
    char *key2 = fx_key_pem(k2, FX_PKCS8);
    char *keyr = fx_key_pem(r, FX_PKCS8);
    struct dm_err err = {0};
    CHECK(load(chain, key2, &err) == NULL);
    CHECK_STR(err.msg, "key does not match the certificate");
    CHECK(load(chain, keyr, &err) == NULL);
    CHECK_STR(err.msg, "key does not match the certificate");
    CHECK_EQ_INT(ERR_peek_error(), 0);
    free(chain);
    free(key2);
    free(keyr);
    X509_free(x);
    EVP_PKEY_free(k1);
    EVP_PKEY_free(k2);
    EVP_PKEY_free(r);
}

TEST(test_bad_inputs)
{
    EVP_PKEY *k = fx_key(FX_P256);
    X509 *x = fx_cert(k, "a.test", T0, T0 + 60, NULL, NULL);
    char *chain = fx_cert_pem(x);
    char *key = fx_key_pem(k, FX_PKCS8);
    struct dm_err err = {0};

    CHECK(load("", key, &err) == NULL);
    CHECK_STR(err.msg, "no certificate in chain PEM");
    CHECK(load("just some text\n", key, &err) == NULL);
    CHECK_STR(err.msg, "no certificate in chain PEM");
    CHECK(load(key, key, &err) == NULL); /* a key where the chain should be */
    CHECK_STR(err.msg, "no certificate in chain PEM");
    CHECK(load(chain, "", &err) == NULL);
    CHECK_STR(err.msg, "no private key in key PEM");
    CHECK(load(chain, chain, &err) == NULL);
    CHECK_STR(err.msg, "no private key in key PEM");

    /* Corrupt base64 inside a block. */
    char *broken = strdup(chain);
    char *body = strchr(broken, '\n') + 1;
    body[3] = '!';
    CHECK(load(broken, key, &err) == NULL);
    CHECK(strstr(err.msg, "chain PEM") != NULL);
    free(broken);

    /* Valid base64, not a certificate. */
    const char *junk = "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";
    CHECK(load(junk, key, &err) == NULL);
    CHECK(strstr(err.msg, "certificate 1 is not valid X.509") != NULL);

    /* Valid base64, not a key. */
    const char *junk_key =
        "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n";
    CHECK(load(chain, junk_key, &err) == NULL);
    CHECK(strstr(err.msg, "invalid private key") != NULL);

    /* Truncated chain: BEGIN without END. */
    char *cut = strdup(chain);
    cut[strlen(cut) / 2] = '\0';
    CHECK(load(cut, key, &err) == NULL);
    free(cut);

    /* Oversized input is refused before parsing. */
    CHECK(acme_cert_from_pem(chain, ACME_PEM_MAX_BYTES + 1, key, strlen(key), NULL, &err) == NULL);
    CHECK_EQ_INT(err.code, DM_E_LIMIT);

    CHECK_EQ_INT(ERR_peek_error(), 0);
    free(chain);
    free(key);
    X509_free(x);
    EVP_PKEY_free(k);
}

TEST(test_chain_and_combined_file)
{
    EVP_PKEY *ca_key = fx_key(FX_P256), *k = fx_key(FX_P256);
    X509 *ca = fx_cert(ca_key, NULL, T0, T0 + 864000, NULL, NULL);
    X509 *leaf = fx_cert(k, "a.test", T0, T0 + 3600, ca, ca_key);
    char *lp = fx_cert_pem(leaf), *cp = fx_cert_pem(ca);
    char *key = fx_key_pem(k, FX_TRADITIONAL);
    char *chain = fx_concat(lp, cp);
    /* "EC PARAMETERS" before the key, as `openssl ecparam -genkey` writes. */
    char *key_with_params = fx_concat(
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n", key);
    char *combined = fx_concat(key, chain); /* key first, then the chain */
    struct dm_err err = {0};

    struct acme_cert *c = load(chain, key_with_params, &err);
    CHECK(c != NULL);
    size_t n = 0;
    CRYPTO_BUFFER *const *bufs = c != NULL ? acme_cert_chain(c, &n) : NULL;
    CHECK_EQ_INT(n, 2);
    if (n == 2) {
        uint8_t *der = NULL;
        int len = i2d_X509(ca, &der);
        CHECK_EQ_INT(CRYPTO_BUFFER_len(bufs[1]), len);
        CHECK(memcmp(CRYPTO_BUFFER_data(bufs[1]), der, (size_t)len) == 0);
        OPENSSL_free(der);
    }
    acme_cert_unref(c);

    c = load(combined, combined, &err);
    CHECK(c != NULL);
    acme_cert_unref(c);

    /* The leaf must come first: the CA's key does not match the leaf. */
    char *reversed = fx_concat(cp, lp);
    CHECK(load(reversed, key, &err) == NULL);
    CHECK_STR(err.msg, "key does not match the certificate");

    /* More than ACME_CERT_MAX_CHAIN certificates. */
    char *many = strdup(lp);
    for (int i = 0; i < ACME_CERT_MAX_CHAIN; i++) {
        char *next = fx_concat(many, cp);
        free(many);
        many = next;
    }
    CHECK(load(many, key, &err) == NULL);
    CHECK_EQ_INT(err.code, DM_E_LIMIT);

    free(many);
    free(reversed);
    free(combined);
    free(key_with_params);
    free(chain);
    free(key);
    free(lp);
    free(cp);
    X509_free(leaf);
    X509_free(ca);
    EVP_PKEY_free(k);
    EVP_PKEY_free(ca_key);
}

TEST(test_pool_dedup)
{
    CRYPTO_BUFFER_POOL *pool = CRYPTO_BUFFER_POOL_new();
    EVP_PKEY *k = fx_key(FX_P256);
    X509 *x = fx_cert(k, "a.test", T0, T0 + 60, NULL, NULL);
    char *chain = fx_cert_pem(x), *key = fx_key_pem(k, FX_PKCS8);
    struct acme_cert *a = acme_cert_from_pem(chain, strlen(chain), key, strlen(key), pool, NULL);
    struct acme_cert *b = acme_cert_from_pem(chain, strlen(chain), key, strlen(key), pool, NULL);
    CHECK(a != NULL && b != NULL);
    if (a != NULL && b != NULL) {
        size_t na = 0, nb = 0;
        CHECK(acme_cert_chain(a, &na)[0] == acme_cert_chain(b, &nb)[0]);
    }
    acme_cert_unref(a);
    acme_cert_unref(b);
    CRYPTO_BUFFER_POOL_free(pool); /* must be empty by now */
    free(chain);
    free(key);
    X509_free(x);
    EVP_PKEY_free(k);
}

TEST(test_sans_and_covers)
{
    EVP_PKEY *k = fx_key(FX_P256);
    X509 *x = fx_cert(k, "Example.TEST,*.wild.test,127.0.0.1,::1,www.example.test", T0, T0 + 60,
                      NULL, NULL);
    char *chain = fx_cert_pem(x), *key = fx_key_pem(k, FX_PKCS8);
    struct acme_cert *c = load(chain, key, NULL);
    CHECK(c != NULL);
    if (c != NULL) {
        size_t n = 0;
        char *const *names = acme_cert_names(c, &n);
        CHECK_EQ_INT(n, 5);
        CHECK_STR(names[0], "example.test"); /* lower-cased */
        CHECK_STR(names[1], "*.wild.test");
        CHECK_STR(names[3], "127.0.0.1"); /* IPs after DNS names */
        CHECK_STR(names[4], "::1");
    }
    CHECK(acme_cert_covers(c, "example.test"));
    CHECK(acme_cert_covers(c, "EXAMPLE.test"));
    CHECK(acme_cert_covers(c, "www.example.test"));
    CHECK(!acme_cert_covers(c, "other.example.test"));
    CHECK(acme_cert_covers(c, "a.wild.test"));
    CHECK(acme_cert_covers(c, "*.wild.test"));
    CHECK(!acme_cert_covers(c, "wild.test"));
    CHECK(!acme_cert_covers(c, "a.b.wild.test"));
    CHECK(!acme_cert_covers(c, ".wild.test"));
    CHECK(acme_cert_covers(c, "127.0.0.1"));
    CHECK(acme_cert_covers(c, "0:0::1"));
    CHECK(!acme_cert_covers(c, "127.0.0.2"));
    CHECK(!acme_cert_covers(c, ""));
    CHECK(!acme_cert_covers(NULL, "example.test"));
    acme_cert_unref(c);

    /* No SAN extension: covers nothing (CN is not consulted). */
    X509 *bare = fx_cert(k, NULL, T0, T0 + 60, NULL, NULL);
    char *bare_pem = fx_cert_pem(bare);
    c = load(bare_pem, key, NULL);
    CHECK(c != NULL);
    CHECK(!acme_cert_covers(c, "fixture"));
    acme_cert_unref(c);

    free(bare_pem);
    X509_free(bare);
    free(chain);
    free(key);
    X509_free(x);
    EVP_PKEY_free(k);
}

TEST(test_refcount)
{
    EVP_PKEY *k = fx_key(FX_P256);
    X509 *x = fx_cert(k, "a.test", T0, T0 + 60, NULL, NULL);
    char *chain = fx_cert_pem(x), *key = fx_key_pem(k, FX_PKCS8);
    struct acme_cert *c = load(chain, key, NULL);
    CHECK(acme_cert_ref(c) == c);
    CHECK_EQ_INT(atomic_load(&c->refs), 2);
    acme_cert_unref(c);
    acme_cert_unref(c); /* freed here; ASan reports any misuse */
    acme_cert_unref(NULL);
    CHECK(acme_cert_ref(NULL) == NULL);
    free(chain);
    free(key);
    X509_free(x);
    EVP_PKEY_free(k);
}

TEST(test_name_valid)
{
    CHECK(acme_name_valid("example.test"));
    CHECK(acme_name_valid("*.example.test"));
    CHECK(acme_name_valid("a-b_c.d"));
    CHECK(acme_name_valid("::1"));
    CHECK(acme_name_valid("192.0.2.1"));
    CHECK(!acme_name_valid(""));
    CHECK(!acme_name_valid("."));
    CHECK(!acme_name_valid(".."));
    CHECK(!acme_name_valid("../etc"));
    CHECK(!acme_name_valid("a/b"));
    CHECK(!acme_name_valid("a..b"));
    CHECK(!acme_name_valid("a."));
    CHECK(!acme_name_valid("Example.test"));
    CHECK(!acme_name_valid("a.*.test"));
    CHECK(!acme_name_valid("*"));
    CHECK(!acme_name_valid("*."));
    char label[80];
    memset(label, 'a', 64);
    label[64] = '\0';
    CHECK(!acme_name_valid(label));
    label[63] = '\0';
    CHECK(acme_name_valid(label));
}

HARNESS_MAIN(T(test_ecdsa_p256_all_formats), T(test_ecdsa_p384), T(test_rsa_2048_all_formats),
             T(test_rejected_keys), T(test_key_mismatch), T(test_bad_inputs),
             T(test_chain_and_combined_file), T(test_pool_dedup), T(test_sans_and_covers),
             T(test_refcount), T(test_name_valid))
