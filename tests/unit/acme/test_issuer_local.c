/* Tests for acme/issuer_local.c: root creation and reload (same key), file
 * modes, root and leaf extensions, chain verification with X509_verify_cert,
 * refusal of broken CA files, and processes racing on first creation. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/pool.h>

#include "acme/acme.h"
#include "acme/cert_int.h"
#include "acme/issuer_local_int.h"
#include "fixtures.h"
#include "harness.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"
#include "proxy/core/time.h"

static int mode_of(const char *dir, const char *rel)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    struct stat st;
    return stat(path, &st) == 0 ? (int)(st.st_mode & 07777) : -1;
}

static char *read_text(const char *dir, const char *rel)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    char *data = NULL;
    size_t len = 0;
    return dm_file_read(path, 1 << 20, &data, &len, NULL) == 0 ? data : NULL;
}

static X509 *x509_of(CRYPTO_BUFFER *b)
{
    return X509_parse_from_buffer(b);
}

/* verify checks leaf (chain[0]) against root (chain[1]) as a TLS client
 * trusting only root would, for host (or IP if is_ip). */
static int verify(const struct acme_cert *c, const char *host, bool is_ip)
{
    size_t n = 0;
    CRYPTO_BUFFER *const *chain = acme_cert_chain(c, &n);
    if (n != 2) {
        return 0;
    }
    X509 *leaf = x509_of(chain[0]), *root = x509_of(chain[1]);
    X509_STORE *store = X509_STORE_new();
    X509_STORE_add_cert(store, root);
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(ctx, store, leaf, NULL);
    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER);
    X509_VERIFY_PARAM *p = X509_STORE_CTX_get0_param(ctx);
    if (is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(p, host);
    } else {
        X509_VERIFY_PARAM_set1_host(p, host, strlen(host));
    }
    int ok = X509_verify_cert(ctx);
    if (ok != 1) {
        fprintf(stderr, "  verify %s: %s\n", host,
                X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
    }
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    X509_free(leaf);
    X509_free(root);
    ERR_clear_error();
    return ok;
}

static bool ext_critical(X509 *x, int nid)
{
    int i = X509_get_ext_by_NID(x, nid, -1);
    return i >= 0 && X509_EXTENSION_get_critical(X509_get_ext(x, i));
}

TEST(test_create_then_reload)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct dm_err err = {0};
    struct acme_local_ca *ca = acme_local_ca_open(dir, &err);
    CHECK(ca != NULL);
    if (ca == NULL) {
        fprintf(stderr, "  %s\n", err.msg);
        return;
    }
    char want[512], got[512];
    snprintf(want, sizeof(want), "%s/pki/local/root.pem", dir);
    CHECK_STR(acme_local_ca_root_path(ca), want);
    CHECK_EQ_INT(acme_local_root_path(dir, got, sizeof(got)), 0);
    CHECK_STR(got, want);
    CHECK_EQ_INT(acme_local_root_path(dir, got, 10), -1);

    CHECK_EQ_INT(mode_of(dir, "pki/local/root.key"), 0600);
    CHECK_EQ_INT(mode_of(dir, "pki/local/root.pem"), 0644);
    CHECK_EQ_INT(mode_of(dir, "pki/local"), 0700);
    CHECK_EQ_INT(mode_of(dir, "pki"), 0700);
    char *pem1 = read_text(dir, "pki/local/root.pem");
    char *key1 = read_text(dir, "pki/local/root.key");
    CHECK(key1 != NULL && strstr(key1, "-----BEGIN PRIVATE KEY-----") != NULL);

    const char *names[] = {"a.test"};
    struct acme_cert *leaf1 = acme_local_ca_issue(ca, names, 1, 3600, NULL, NULL, &err);
    CHECK(leaf1 != NULL);
    acme_local_ca_free(ca);

    /* Reopen: same files, same key (the old leaf is recognised). */
    ca = acme_local_ca_open(dir, &err);
    CHECK(ca != NULL);
    char *pem2 = read_text(dir, "pki/local/root.pem");
    char *key2 = read_text(dir, "pki/local/root.key");
    CHECK(pem1 != NULL && pem2 != NULL && strcmp(pem1, pem2) == 0);
    CHECK(key1 != NULL && key2 != NULL && strcmp(key1, key2) == 0);
    CHECK(leaf1 != NULL && acme_local_ca_is_issuer(ca, leaf1));
    struct acme_cert *leaf2 = acme_local_ca_issue(ca, names, 1, 3600, NULL, NULL, &err);
    CHECK(leaf2 != NULL && verify(leaf2, "a.test", false) == 1);
    if (leaf1 != NULL && leaf2 != NULL) {
        size_t n1 = 0, n2 = 0;
        CRYPTO_BUFFER *b1 = acme_cert_chain(leaf1, &n1)[1];
        CRYPTO_BUFFER *b2 = acme_cert_chain(leaf2, &n2)[1];
        CHECK(CRYPTO_BUFFER_len(b1) == CRYPTO_BUFFER_len(b2) &&
              memcmp(CRYPTO_BUFFER_data(b1), CRYPTO_BUFFER_data(b2), CRYPTO_BUFFER_len(b1)) == 0);
    }
    acme_cert_unref(leaf1);
    acme_cert_unref(leaf2);
    acme_local_ca_free(ca);
    OPENSSL_cleanse(key1, strlen(key1));
    free(pem1);
    free(pem2);
    free(key1);
    free(key2);

    /* Two data_dirs never share a root. */
    char dir2[256];
    CHECK(fx_tmpdir(dir2, sizeof(dir2)) != NULL);
    struct acme_local_ca *a = acme_local_ca_open(dir, NULL);
    struct acme_local_ca *b = acme_local_ca_open(dir2, NULL);
    struct acme_cert *lb =
        b != NULL ? acme_local_ca_issue(b, names, 1, 60, NULL, NULL, NULL) : NULL;
    CHECK(a != NULL && lb != NULL && !acme_local_ca_is_issuer(a, lb));
    acme_cert_unref(lb);
    acme_local_ca_free(a);
    acme_local_ca_free(b);
    fx_rmtree(dir2);
    fx_rmtree(dir);
}

TEST(test_root_extensions)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    time_t now = time(NULL);
    dm_time_mock(now);
    struct acme_local_ca *ca = acme_local_ca_open(dir, NULL);
    dm_time_mock(0);
    CHECK(ca != NULL);
    char *pem = read_text(dir, "pki/local/root.pem");
    X509 *root = acme_pem_parse_x509(pem, strlen(pem), NULL);
    CHECK(root != NULL);
    if (root == NULL) {
        return;
    }
    char cn[128] = "", o[64] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(root), NID_commonName, cn, sizeof(cn));
    X509_NAME_get_text_by_NID(X509_get_subject_name(root), NID_organizationName, o, sizeof(o));
    CHECK(strncmp(cn, "doorman Local CA - ", 19) == 0 && strlen(cn) == 27);
    CHECK_STR(o, "doorman");
    CHECK_EQ_INT(X509_NAME_cmp(X509_get_subject_name(root), X509_get_issuer_name(root)), 0);
    CHECK_EQ_INT(X509_get_version(root), X509_VERSION_3);
    CHECK(ext_critical(root, NID_basic_constraints));
    CHECK(ext_critical(root, NID_key_usage));
    CHECK(X509_check_ca(root) == 1);
    CHECK_EQ_INT(X509_get_pathlen(root), 0);
    CHECK_EQ_INT(X509_get_key_usage(root), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    CHECK(X509_get0_subject_key_id(root) != NULL);
    CHECK_EQ_INT(X509_get_signature_nid(root), NID_ecdsa_with_SHA256);
    EVP_PKEY *pub = X509_get_pubkey(root);
    CHECK_EQ_INT(EVP_PKEY_id(pub), EVP_PKEY_EC);
    CHECK_EQ_INT(EC_GROUP_get_curve_name(EC_KEY_get0_group(EVP_PKEY_get0_EC_KEY(pub))),
                 NID_X9_62_prime256v1);
    EVP_PKEY_free(pub);
    const ASN1_INTEGER *serial = X509_get0_serialNumber(root);
    CHECK_EQ_INT(ASN1_STRING_type(serial), V_ASN1_INTEGER); /* positive */
    CHECK(ASN1_STRING_length(serial) >= 15 && ASN1_STRING_length(serial) <= 16);
    time_t nb = 0, na = 0;
    acme_asn1_time_to_unix(X509_get0_notBefore(root), &nb);
    acme_asn1_time_to_unix(X509_get0_notAfter(root), &na);
    CHECK_EQ_INT(nb, now - ACME_LOCAL_BACKDATE_S);
    CHECK_EQ_INT(na, now + 3650L * 86400);
    X509_free(root);
    free(pem);
    acme_local_ca_free(ca);
    fx_rmtree(dir);
}

TEST(test_leaf)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct dm_err err = {0};
    struct acme_local_ca *ca = acme_local_ca_open(dir, &err);
    CHECK(ca != NULL);
    time_t now = time(NULL);
    dm_time_mock(now);
    const char *names[] = {"app.test", "*.app.test", "127.0.0.1", "::1"};
    char *chain_pem = NULL, *key_pem = NULL;
    struct acme_cert *c = acme_local_ca_issue(ca, names, 4, 7 * 86400, &chain_pem, &key_pem, &err);
    dm_time_mock(0);
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "  %s\n", err.msg);
        return;
    }
    CHECK_EQ_INT(acme_cert_not_before(c), now - 3600);
    CHECK_EQ_INT(acme_cert_not_after(c), now + 7 * 86400);
    CHECK(verify(c, "app.test", false) == 1);
    CHECK(verify(c, "x.app.test", false) == 1);
    CHECK(verify(c, "127.0.0.1", true) == 1);
    CHECK(verify(c, "::1", true) == 1);
    CHECK(verify(c, "other.test", false) != 1);
    CHECK(acme_cert_covers(c, "app.test") && acme_cert_covers(c, "*.app.test") &&
          acme_cert_covers(c, "b.app.test") && acme_cert_covers(c, "::1"));
    size_t n = 0;
    char *const *sans = acme_cert_names(c, &n);
    CHECK_EQ_INT(n, 4);
    CHECK_STR(sans[1], "*.app.test");
    CHECK_STR(sans[2], "127.0.0.1");

    X509 *leaf = x509_of(acme_cert_chain(c, &n)[0]);
    char cn[128] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(leaf), NID_commonName, cn, sizeof(cn));
    CHECK_STR(cn, "app.test");
    CHECK(ext_critical(leaf, NID_basic_constraints));
    CHECK(ext_critical(leaf, NID_key_usage));
    CHECK(!ext_critical(leaf, NID_ext_key_usage));
    CHECK(!ext_critical(leaf, NID_subject_alt_name));
    CHECK(X509_check_ca(leaf) == 0);
    CHECK_EQ_INT(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE);
    CHECK_EQ_INT(X509_get_extended_key_usage(leaf), XKU_SSL_SERVER);
    CHECK(X509_get0_subject_key_id(leaf) != NULL);
    CHECK(X509_get0_authority_key_id(leaf) != NULL);
    CHECK_EQ_INT(X509_get_signature_nid(leaf), NID_ecdsa_with_SHA256);
    CHECK_EQ_INT(EVP_PKEY_id(acme_cert_key(c)), EVP_PKEY_EC);

    /* The PEM outputs load back into the same certificate. */
    CHECK(chain_pem != NULL && key_pem != NULL);
    struct acme_cert *again =
        acme_cert_from_pem(chain_pem, strlen(chain_pem), key_pem, strlen(key_pem), NULL, &err);
    CHECK(again != NULL);
    CHECK(again != NULL && EVP_PKEY_cmp(acme_cert_key(again), acme_cert_key(c)) == 1);
    CHECK(again != NULL && acme_local_ca_is_issuer(ca, again));

    /* Every leaf has its own key and serial. */
    struct acme_cert *other = acme_local_ca_issue(ca, names, 1, 60, NULL, NULL, &err);
    X509 *leaf2 = x509_of(acme_cert_chain(other, &n)[0]);
    CHECK(EVP_PKEY_cmp(acme_cert_key(other), acme_cert_key(c)) != 1);
    CHECK(ASN1_INTEGER_cmp(X509_get0_serialNumber(leaf), X509_get0_serialNumber(leaf2)) != 0);
    X509_free(leaf2);
    acme_cert_unref(other);

    X509_free(leaf);
    acme_cert_unref(again);
    acme_cert_unref(c);
    free(chain_pem);
    free(key_pem);
    ERR_clear_error();
    acme_local_ca_free(ca);
    fx_rmtree(dir);
}

TEST(test_leaf_edge_cases)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct dm_err err = {0};
    struct acme_local_ca *ca = acme_local_ca_open(dir, &err);
    CHECK(ca != NULL);

    /* First name longer than a CN may be: empty subject, critical SAN. */
    char longname[100];
    memset(longname, 'a', 70);
    longname[35] = '.';
    strcpy(longname + 70, ".test");
    const char *names[] = {longname};
    struct acme_cert *c = acme_local_ca_issue(ca, names, 1, 60, NULL, NULL, &err);
    CHECK(c != NULL);
    if (c != NULL) {
        size_t n = 0;
        X509 *leaf = x509_of(acme_cert_chain(c, &n)[0]);
        CHECK_EQ_INT(X509_NAME_entry_count(X509_get_subject_name(leaf)), 0);
        CHECK(ext_critical(leaf, NID_subject_alt_name));
        CHECK(verify(c, longname, false) == 1);
        X509_free(leaf);
    }
    acme_cert_unref(c);

    /* A lifetime past the root's end is cut to it. */
    const char *one[] = {"a.test"};
    c = acme_local_ca_issue(ca, one, 1, 20L * 365 * 86400, NULL, NULL, &err);
    CHECK(c != NULL);
    if (c != NULL) {
        size_t n = 0;
        X509 *root = x509_of(acme_cert_chain(c, &n)[1]);
        time_t root_na = 0;
        acme_asn1_time_to_unix(X509_get0_notAfter(root), &root_na);
        CHECK_EQ_INT(acme_cert_not_after(c), root_na);
        X509_free(root);
    }
    acme_cert_unref(c);

    const char *bad1[] = {"A.test"};
    const char *bad2[] = {"../etc"};
    const char *bad3[] = {""};
    CHECK(acme_local_ca_issue(ca, bad1, 1, 60, NULL, NULL, &err) == NULL);
    CHECK(strstr(err.msg, "invalid name") != NULL);
    CHECK(acme_local_ca_issue(ca, bad2, 1, 60, NULL, NULL, &err) == NULL);
    CHECK(acme_local_ca_issue(ca, bad3, 1, 60, NULL, NULL, &err) == NULL);
    CHECK(acme_local_ca_issue(ca, one, 0, 60, NULL, NULL, &err) == NULL);
    CHECK(acme_local_ca_issue(ca, one, 1, 0, NULL, NULL, &err) == NULL);
    CHECK_EQ_INT(ERR_peek_error(), 0);
    acme_local_ca_free(ca);
    fx_rmtree(dir);
}

TEST(test_broken_ca_files)
{
    char dir[256], path[512];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct dm_err err = {0};
    acme_local_ca_free(acme_local_ca_open(dir, &err));
    char *pem = read_text(dir, "pki/local/root.pem");

    /* root.key replaced by another key: refused, nothing overwritten. */
    EVP_PKEY *k = fx_key(FX_P256);
    char *other = fx_key_pem(k, FX_PKCS8);
    snprintf(path, sizeof(path), "%s/pki/local/root.key", dir);
    fx_write(path, other);
    CHECK(acme_local_ca_open(dir, &err) == NULL);
    CHECK(strstr(err.msg, "key does not match") != NULL);
    char *pem_after = read_text(dir, "pki/local/root.pem");
    CHECK(pem != NULL && pem_after != NULL && strcmp(pem, pem_after) == 0);

    /* root.key missing: refused (a new root would silently break trust). */
    unlink(path);
    CHECK(acme_local_ca_open(dir, &err) == NULL);
    CHECK(strstr(err.msg, "root.key is missing") != NULL);

    /* Garbage root.pem. */
    fx_write(path, other);
    snprintf(path, sizeof(path), "%s/pki/local/root.pem", dir);
    fx_write(path, "not a certificate\n");
    CHECK(acme_local_ca_open(dir, &err) == NULL);
    CHECK(strstr(err.msg, "no certificate") != NULL);

    /* root.pem gone: a root.key alone was never trusted, so a new root is made. */
    unlink(path);
    struct acme_local_ca *ca = acme_local_ca_open(dir, &err);
    CHECK(ca != NULL);
    acme_local_ca_free(ca);

    /* data_dir that cannot be created. */
    CHECK(acme_local_ca_open("/proc/definitely/not/here", &err) == NULL);
    CHECK_EQ_INT(ERR_peek_error(), 0);

    free(pem);
    free(pem_after);
    free(other);
    EVP_PKEY_free(k);
    fx_rmtree(dir);
}

/* Processes racing on first creation in one data_dir must end up with one
 * root: each child opens the CA, issues a leaf and writes the root DER it
 * holds in memory; all must equal root.pem. */
TEST(test_process_race)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    enum { KIDS = 6 };
    pid_t pids[KIDS];
    for (int i = 0; i < KIDS; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            struct acme_local_ca *ca = acme_local_ca_open(dir, NULL);
            const char *names[] = {"a.test"};
            struct acme_cert *c =
                ca != NULL ? acme_local_ca_issue(ca, names, 1, 60, NULL, NULL, NULL) : NULL;
            if (c == NULL) {
                _exit(1);
            }
            size_t n = 0;
            CRYPTO_BUFFER *root = acme_cert_chain(c, &n)[1];
            char path[512];
            snprintf(path, sizeof(path), "%s/kid%d.der", dir, i);
            int rc = dm_file_write_atomic(path, CRYPTO_BUFFER_data(root), CRYPTO_BUFFER_len(root),
                                          0600, NULL);
            _exit(rc == 0 ? 0 : 1);
        }
    }
    for (int i = 0; i < KIDS; i++) {
        int status = 0;
        waitpid(pids[i], &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    char *pem = read_text(dir, "pki/local/root.pem");
    X509 *root = pem != NULL ? acme_pem_parse_x509(pem, strlen(pem), NULL) : NULL;
    uint8_t *der = NULL;
    int der_len = root != NULL ? i2d_X509(root, &der) : 0;
    CHECK(der_len > 0);
    for (int i = 0; i < KIDS; i++) {
        char rel[32];
        snprintf(rel, sizeof(rel), "kid%d.der", i);
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", dir, rel);
        char *data = NULL;
        size_t len = 0;
        CHECK_EQ_INT(dm_file_read(path, 1 << 20, &data, &len, NULL), 0);
        CHECK(data != NULL && len == (size_t)der_len && memcmp(data, der, len) == 0);
        free(data);
    }
    OPENSSL_free(der);
    X509_free(root);
    free(pem);
    fx_rmtree(dir);
}

HARNESS_MAIN(T(test_create_then_reload), T(test_root_extensions), T(test_leaf),
             T(test_leaf_edge_cases), T(test_broken_ca_files), T(test_process_race))
