/* Certificate keys and CSRs for ACME finalize (RFC 8555 §7.4; PKCS#10 with a
 * subjectAltName for every name, CN = the first name when it fits). A new
 * key per order: renewals never reuse the previous certificate's key. */
#include "acme/order.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "acme/cert_int.h"
#include "proxy/core/err.h"

/* ---- key and CSR ------------------------------------------------------------------- */

static EVP_PKEY *cert_key_new(enum acme_cert_key_type kt, struct dm_err *err)
{
    EVP_PKEY *pkey = EVP_PKEY_new();
    if (pkey == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    if (kt == ACME_CERT_KEY_P256 || kt == ACME_CERT_KEY_P384) {
        EC_KEY *ec = EC_KEY_new_by_curve_name(kt == ACME_CERT_KEY_P256 ? NID_X9_62_prime256v1
                                                                       : NID_secp384r1);
        if (ec == NULL || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(pkey, ec)) {
            EC_KEY_free(ec);
            EVP_PKEY_free(pkey);
            dm_err_set_tls(err, "certificate key");
            return NULL;
        }
        return pkey;
    }
    RSA *rsa = RSA_new();
    BIGNUM *e = BN_new();
    if (rsa == NULL || e == NULL || !BN_set_word(e, RSA_F4) ||
        !RSA_generate_key_ex(rsa, kt == ACME_CERT_KEY_RSA4096 ? 4096 : 2048, e, NULL) ||
        !EVP_PKEY_assign_RSA(pkey, rsa)) {
        RSA_free(rsa);
        BN_free(e);
        EVP_PKEY_free(pkey);
        dm_err_set_tls(err, "certificate key");
        return NULL;
    }
    BN_free(e);
    return pkey;
}

/* san_add appends name to gens as a dNSName or iPAddress. */
static int san_add(GENERAL_NAMES *gens, const char *name)
{
    unsigned char ip[16];
    size_t ip_len = 0;
    GENERAL_NAME *gn = GENERAL_NAME_new();
    if (gn == NULL) {
        return -1;
    }
    if (acme_name_is_ip(name, ip, &ip_len)) {
        ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
        if (os == NULL || !ASN1_OCTET_STRING_set(os, ip, (int)ip_len)) {
            ASN1_OCTET_STRING_free(os);
            GENERAL_NAME_free(gn);
            return -1;
        }
        GENERAL_NAME_set0_value(gn, GEN_IPADD, os);
    } else {
        ASN1_IA5STRING *s = ASN1_IA5STRING_new();
        if (s == NULL || !ASN1_STRING_set(s, name, (int)strlen(name))) {
            ASN1_IA5STRING_free(s);
            GENERAL_NAME_free(gn);
            return -1;
        }
        GENERAL_NAME_set0_value(gn, GEN_DNS, s);
    }
    if (!sk_GENERAL_NAME_push(gens, gn)) {
        GENERAL_NAME_free(gn);
        return -1;
    }
    return 0;
}

int acme_csr_new(enum acme_cert_key_type kt, const char *const *names, size_t num_names,
                 uint8_t **out_der, size_t *out_len, char **out_key_pem, struct dm_err *err)
{
    int rc = -1;
    EVP_PKEY *pkey = NULL;
    X509_REQ *req = NULL;
    GENERAL_NAMES *gens = NULL;
    STACK_OF(X509_EXTENSION) *exts = NULL;
    X509_EXTENSION *ext = NULL;
    uint8_t *der = NULL;
    *out_der = NULL;
    *out_key_pem = NULL;
    if (num_names == 0) {
        dm_err_set(err, DM_E_CONFIG, "CSR: no names");
        return -1;
    }
    if ((pkey = cert_key_new(kt, err)) == NULL) {
        goto out;
    }
    req = X509_REQ_new();
    gens = sk_GENERAL_NAME_new_null();
    exts = sk_X509_EXTENSION_new_null();
    if (req == NULL || gens == NULL || exts == NULL || !X509_REQ_set_version(req, 0) ||
        !X509_REQ_set_pubkey(req, pkey)) {
        dm_err_set_tls(err, "CSR");
        goto out;
    }
    /* CN is limited to 64 characters (RFC 5280 ub-common-name); the SANs are
     * what counts (CAs copy one into the CN when it fits). */
    if (strlen(names[0]) <= 64 &&
        !X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_UTF8,
                                    (const uint8_t *)names[0], -1, -1, 0)) {
        dm_err_set_tls(err, "CSR subject");
        goto out;
    }
    for (size_t i = 0; i < num_names; i++) {
        if (san_add(gens, names[i]) != 0) {
            dm_err_set_tls(err, "CSR subjectAltName %s", names[i]);
            goto out;
        }
    }
    ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens);
    if (ext == NULL || !sk_X509_EXTENSION_push(exts, ext)) {
        dm_err_set_tls(err, "CSR extension");
        goto out;
    }
    ext = NULL;
    const EVP_MD *md = kt == ACME_CERT_KEY_P384 ? EVP_sha384() : EVP_sha256();
    if (!X509_REQ_add_extensions(req, exts) || !X509_REQ_sign(req, pkey, md)) {
        dm_err_set_tls(err, "CSR signature");
        goto out;
    }
    int len = i2d_X509_REQ(req, &der);
    if (len <= 0) {
        dm_err_set_tls(err, "CSR encoding");
        goto out;
    }
    if ((*out_key_pem = acme_pem_encode_key(pkey, err)) == NULL) {
        goto out;
    }
    if ((*out_der = malloc((size_t)len)) == NULL) {
        acme_pem_free_secret(*out_key_pem);
        *out_key_pem = NULL;
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto out;
    }
    memcpy(*out_der, der, (size_t)len);
    *out_len = (size_t)len;
    rc = 0;
out:
    OPENSSL_free(der);
    X509_EXTENSION_free(ext);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    GENERAL_NAMES_free(gens);
    X509_REQ_free(req);
    EVP_PKEY_free(pkey);
    return rc;
}
