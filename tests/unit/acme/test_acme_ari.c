/* Tests of acme/ari.c: the RFC 9773 §4.1 certificate identifier example (raw
 * parts and from a certificate carrying that AKI and serial), renewalInfo
 * parsing on recorded answers, the uniform pick inside the window, and the
 * fetch against the fake CA (with and without renewalInfo). */
#include "acme/ari.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "acme/client.h"
#include "fake_ca.h"
#include "harness.h"
#include "proxy/core/err.h"

/* RFC 9773 §4.1: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4,
 * serial 0x87654321 (DER content 00 87 65 43 21). */
static const uint8_t RFC_AKI[] = {0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3,
                                  0x7B, 0x84, 0x7B, 0xA0, 0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4};
static const uint8_t RFC_SERIAL[] = {0x00, 0x87, 0x65, 0x43, 0x21};
static const char RFC_ID[] = "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE";

TEST(test_cert_id_vector)
{
    char id[ACME_ARI_CERT_ID_MAX];
    CHECK_EQ_INT(acme_ari_cert_id_encode(RFC_AKI, sizeof(RFC_AKI), RFC_SERIAL, sizeof(RFC_SERIAL),
                                         id, sizeof(id)),
                 0);
    CHECK_STR(id, RFC_ID);
    CHECK_EQ_INT(
        acme_ari_cert_id_encode(RFC_AKI, sizeof(RFC_AKI), RFC_SERIAL, sizeof(RFC_SERIAL), id, 20),
        -1);
    CHECK_EQ_INT(
        acme_ari_cert_id_encode(RFC_AKI, 0, RFC_SERIAL, sizeof(RFC_SERIAL), id, sizeof(id)), -1);
}

/* cert_with builds a certificate with the RFC's AKI keyIdentifier and serial. */
static X509 *cert_with(bool has_aki)
{
    EVP_PKEY *k = EVP_PKEY_new();
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EC_KEY_generate_key(ec);
    EVP_PKEY_assign_EC_KEY(k, ec);
    X509 *x = X509_new();
    X509_set_version(x, X509_VERSION_3);
    BIGNUM *bn = BN_new();
    BN_set_word(bn, 0x87654321);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, k);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                               (const uint8_t *)"ari.test", -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    if (has_aki) {
        AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
        akid->keyid = ASN1_OCTET_STRING_new();
        ASN1_OCTET_STRING_set(akid->keyid, RFC_AKI, sizeof(RFC_AKI));
        X509_add1_ext_i2d(x, NID_authority_key_identifier, akid, 0, 0);
        AUTHORITY_KEYID_free(akid);
    }
    X509_sign(x, k, EVP_sha256());
    EVP_PKEY_free(k);
    return x;
}

TEST(test_cert_id_from_certificate)
{
    X509 *x = cert_with(true);
    uint8_t *der = NULL;
    int len = i2d_X509(x, &der);
    char id[ACME_ARI_CERT_ID_MAX];
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_ari_cert_id(der, (size_t)len, id, sizeof(id), &err), 0);
    CHECK_STR(id, RFC_ID);
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    const uint8_t *pem;
    size_t pem_len;
    BIO_mem_contents(b, &pem, &pem_len);
    CHECK_EQ_INT(acme_ari_cert_id_pem((const char *)pem, pem_len, id, sizeof(id), &err), 0);
    CHECK_STR(id, RFC_ID);
    BIO_free(b);
    OPENSSL_free(der);
    X509_free(x);

    x = cert_with(false);
    der = NULL;
    len = i2d_X509(x, &der);
    CHECK_EQ_INT(acme_ari_cert_id(der, (size_t)len, id, sizeof(id), &err), -1);
    CHECK(strstr(err.msg, "authority key identifier") != NULL);
    CHECK_EQ_INT(acme_ari_cert_id(der, 10, id, sizeof(id), &err), -1);
    OPENSSL_free(der);
    X509_free(x);
    CHECK_EQ_INT(acme_ari_cert_id_pem("nothing", 7, id, sizeof(id), &err), -1);
}

TEST(test_parse_and_pick)
{
    /* RFC 9773 §4.2 example answer. */
    static const char body[] = "{\"suggestedWindow\":{\"start\":\"2025-01-02T04:00:00Z\","
                               "\"end\":\"2025-01-03T04:00:00Z\"},"
                               "\"explanationURL\":\"https://acme.example.com/docs/ari\"}";
    struct acme_ari_info info;
    struct dm_err err = {0};
    uint32_t ra = 21600;
    CHECK_EQ_INT(acme_ari_parse(&info, body, strlen(body), &ra, &err), 0);
    CHECK_EQ_INT(info.window_start, 1735790400);
    CHECK_EQ_INT(info.window_end, 1735876800);
    CHECK_STR(info.explanation_url, "https://acme.example.com/docs/ari");
    CHECK_EQ_INT(info.retry_after_s, 21600);
    /* Uniform in [start, end): the ends of rnd's range land on the ends. */
    time_t before = info.window_start - 1000;
    CHECK_EQ_INT(acme_ari_pick(&info, before, 0), info.window_start);
    CHECK_EQ_INT(acme_ari_pick(&info, before, 86399), info.window_end - 1);
    CHECK_EQ_INT(acme_ari_pick(&info, before, 86400), info.window_start);
    /* Window already open: never in the past; window over: now. */
    CHECK_EQ_INT(acme_ari_pick(&info, info.window_start + 100, 0), info.window_start + 100);
    CHECK_EQ_INT(acme_ari_pick(&info, info.window_end + 5, 7), info.window_end + 5);
    for (int i = 0; i < 100; i++) {
        time_t t = acme_ari_choose(&info, before);
        CHECK(t >= info.window_start && t < info.window_end);
    }
    acme_ari_info_cleanup(&info);

    /* Retry-After clamped; none means six hours. */
    ra = 5;
    CHECK_EQ_INT(acme_ari_parse(&info, body, strlen(body), &ra, &err), 0);
    CHECK_EQ_INT(info.retry_after_s, ACME_ARI_RETRY_MIN_S);
    acme_ari_info_cleanup(&info);
    ra = 10000000;
    CHECK_EQ_INT(acme_ari_parse(&info, body, strlen(body), &ra, &err), 0);
    CHECK_EQ_INT(info.retry_after_s, ACME_ARI_RETRY_MAX_S);
    acme_ari_info_cleanup(&info);
    CHECK_EQ_INT(acme_ari_parse(&info, body, strlen(body), NULL, &err), 0);
    CHECK_EQ_INT(info.retry_after_s, ACME_ARI_RETRY_DEFAULT_S);
    acme_ari_info_cleanup(&info);

    static const char reversed[] = "{\"suggestedWindow\":{\"start\":\"2025-01-03T04:00:00Z\","
                                   "\"end\":\"2025-01-02T04:00:00Z\"}}";
    CHECK_EQ_INT(acme_ari_parse(&info, reversed, strlen(reversed), NULL, &err), -1);
    CHECK_EQ_INT(acme_ari_parse(&info, "{}", 2, NULL, &err), -1);
    CHECK_EQ_INT(acme_ari_parse(&info, body, 30, NULL, &err), -1);
}

struct result {
    bool is_done;
    int calls;
    bool is_ok;
    struct acme_ari_info info;
    struct dm_err err;
};

static void on_ari(const struct acme_ari_info *info, const struct acme_problem *prob,
                   const struct dm_err *err, void *arg)
{
    (void)prob;
    struct result *r = arg;
    r->calls++;
    r->is_done = true;
    r->is_ok = info != NULL;
    if (info != NULL) {
        r->info = *info;
        r->info.explanation_url = NULL;
    } else {
        r->err = *err;
    }
}

TEST(test_fetch)
{
    struct event_base *base = event_base_new();
    struct fake_ca *ca = fake_ca_new(base);
    fake_ca_knobs(ca)->has_ari = true;
    struct acme_client_opts o = {.directory_url = fake_ca_dir_url(ca)};
    struct dm_err err = {0};
    struct acme_client *c = acme_client_new(base, &o, &err);
    struct result r = {0};
    CHECK(acme_ari_fetch_start(c, RFC_ID, on_ari, &r, &err) != NULL);
    CHECK_EQ_INT(r.calls, 0);
    CHECK(fake_run(base, &r.is_done, 5000));
    CHECK(r.is_ok);
    CHECK_EQ_INT(r.info.window_end - r.info.window_start, 2 * 86400);
    CHECK_EQ_INT(r.info.retry_after_s, 21600);
    CHECK_EQ_INT(fake_ca_count(ca, "renewal-info"), 1);
    CHECK(acme_ari_fetch_start(c, "bad/id", on_ari, &r, &err) == NULL);
    /* Canceled: no callback. */
    struct result cr = {0};
    acme_ari_fetch_cancel(acme_ari_fetch_start(c, RFC_ID, on_ari, &cr, &err));
    bool never = false;
    fake_run(base, &never, 30);
    CHECK_EQ_INT(cr.calls, 0);
    acme_client_free(c);
    fake_ca_free(ca);

    ca = fake_ca_new(base);
    o.directory_url = fake_ca_dir_url(ca);
    c = acme_client_new(base, &o, &err);
    memset(&r, 0, sizeof(r));
    CHECK(acme_ari_fetch_start(c, RFC_ID, on_ari, &r, &err) != NULL);
    CHECK(fake_run(base, &r.is_done, 5000));
    CHECK(!r.is_ok);
    CHECK_EQ_INT(r.err.code, DM_E_NOTFOUND);
    acme_client_free(c);
    fake_ca_free(ca);
    event_base_free(base);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    static const struct harness_test tests[] = {
        T(test_cert_id_vector),
        T(test_cert_id_from_certificate),
        T(test_parse_and_pick),
        T(test_fetch),
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        harness_current = tests[i].name;
        int before = harness_failures;
        tests[i].fn();
        fprintf(stderr, "%s %s\n", harness_failures == before ? "ok  " : "FAIL", tests[i].name);
    }
    fprintf(stderr, "%d checks, %d failed\n", harness_checks, harness_failures);
    return harness_failures == 0 ? 0 : 1;
}
