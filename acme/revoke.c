/* `doorman revoke`: POST revokeCert (RFC 8555 §7.6) for a stored certificate,
 * signed either with the account key by kid (directory -> account ->
 * revokeCert) or, with is_cert_key, with the certificate's own key and its
 * "jwk" in the header (directory -> revokeCert; no account involved). It runs
 * on a private event_base through the command scaffolding of cmd_int.h; each
 * call carries the client's deadline. Invariant (STYLE §4.8): the account key
 * stays inside the account; the certificate key is only asked to sign. */
#include "acme/acme.h"
#include "acme/manager_acme.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "acme/account.h"
#include "acme/cert_int.h"
#include "acme/client.h"
#include "acme/cmd_int.h"
#include "acme/jws.h"
#include "acme/storage.h"
#include "config/config.h"
#include "proxy/core/err.h"

struct revoke {
    struct acme_cmd cmd;
    const char *payload;             /* borrowed: the revokeCert JSON */
    const struct acme_key *cert_key; /* borrowed: signs instead of the account, or NULL */
};

static void revoke_on_reply(const struct acme_response *resp, const struct acme_problem *prob,
                            const struct dm_err *err, void *arg)
{
    struct revoke *r = arg;
    acme_cmd_finish(&r->cmd, resp != NULL ? NULL : prob, resp != NULL ? NULL : err);
}

/* revoke_post sends revokeCert, signed by the certificate key with its jwk,
 * or by the account key with its kid. */
static void revoke_post(struct revoke *r)
{
    struct dm_err e = {0};
    const struct acme_directory *dir = acme_client_directory_find(r->cmd.client);
    if (dir == NULL || dir->revoke_cert == NULL) {
        dm_err_set(&e, DM_E_PROTO, "the CA's directory has no revokeCert URL");
        acme_cmd_finish(&r->cmd, NULL, &e);
        return;
    }
    struct acme_account *a = r->cmd.account;
    const struct acme_key *key = r->cert_key != NULL ? r->cert_key : acme_account_key(a);
    const char *kid = r->cert_key != NULL ? NULL : acme_account_kid(a);
    if (acme_client_post_start(r->cmd.client, key, kid, dir->revoke_cert, r->payload, NULL,
                               revoke_on_reply, r, &e) == NULL) {
        acme_cmd_finish(&r->cmd, NULL, &e);
    }
}

static void revoke_on_account(struct acme_account *a, const struct acme_problem *prob,
                              const struct dm_err *err, void *arg)
{
    (void)a;
    struct revoke *r = arg;
    if (prob != NULL || err != NULL) {
        acme_cmd_finish(&r->cmd, prob, err);
        return;
    }
    revoke_post(r);
}

static void revoke_on_directory(const struct acme_directory *dir, const struct acme_problem *prob,
                                const struct dm_err *err, void *arg)
{
    struct revoke *r = arg;
    if (dir == NULL) {
        acme_cmd_finish(&r->cmd, prob, err);
        return;
    }
    if (r->cert_key != NULL) {
        revoke_post(r);
        return;
    }
    struct dm_err e = {0};
    if (acme_account_register_start(r->cmd.account, revoke_on_account, r, &e) == NULL) {
        acme_cmd_finish(&r->cmd, NULL, &e);
    }
}

/* revoke_payload builds {"certificate": base64url(DER of the leaf), "reason": N}
 * from the first certificate of chain_pem and writes its serial as lower-case
 * hex. Returns a new string or NULL with err. */
static char *revoke_payload(const char *chain_pem, int reason, char *out_serial, size_t cap,
                            struct dm_err *err)
{
    char *out = NULL, *b64 = NULL, *hex = NULL;
    uint8_t *der = NULL;
    BIGNUM *bn = NULL;
    json_t *j = NULL;
    BIO *bio = BIO_new_mem_buf(chain_pem, (int)strlen(chain_pem));
    X509 *x = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    if (x == NULL) {
        dm_err_set_tls(err, "stored certificate unreadable");
        goto out;
    }
    int der_len = i2d_X509(x, &der);
    if (der_len <= 0 || (b64 = acme_b64url_encode(der, (size_t)der_len)) == NULL ||
        (bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL)) == NULL ||
        (hex = BN_bn2hex(bn)) == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto out;
    }
    if (out_serial != NULL && cap > 0) {
        /* Lower case without leading zeros, as CAs print serials in URLs. */
        const char *p = hex;
        while (p[0] == '0' && p[1] != '\0') {
            p++;
        }
        size_t n = 0;
        for (; *p != '\0' && n + 1 < cap; p++) {
            out_serial[n++] = (char)(*p >= 'A' && *p <= 'F' ? *p + 32 : *p);
        }
        out_serial[n] = '\0';
    }
    j = json_object();
    if (j == NULL || json_object_set_new(j, "certificate", json_string(b64)) != 0 ||
        (reason != ACME_REVOKE_NO_REASON &&
         json_object_set_new(j, "reason", json_integer(reason)) != 0) ||
        (out = json_dumps(j, JSON_COMPACT)) == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
    }
out:
    json_decref(j);
    OPENSSL_free(hex);
    BN_free(bn);
    free(b64);
    OPENSSL_free(der);
    X509_free(x);
    BIO_free(bio);
    return out;
}

int acme_revoke_run(const struct cfg *cfg, const char *name, int reason, bool is_cert_key,
                    char *out_serial, size_t cap, struct dm_err *err)
{
    int rc = -1;
    struct revoke r = {0};
    struct acme_storage *st = NULL;
    struct acme_key *cert_key = NULL;
    char *chain = NULL, *key = NULL, *payload = NULL;
    if (reason != ACME_REVOKE_NO_REASON && (reason < 0 || reason > 10 || reason == 7)) {
        dm_err_set(err, DM_E_CONFIG, "reason %d is not a CRL reason code (0-10 except 7)", reason);
        return -1;
    }
    if (acme_cmd_init(&r.cmd, cfg, name, err) != 0) {
        goto out;
    }
    char issuer_id[96];
    acme_issuer_storage_id(issuer_id, sizeof(issuer_id), r.cmd.acme->directory);
    st = acme_storage_fs_new(cfg->data_dir, err);
    if (st == NULL ||
        acme_storage_get(st, issuer_id, r.cmd.site->hosts[0], &chain, &key, NULL, err) != 0) {
        goto out;
    }
    payload = revoke_payload(chain, reason, out_serial, cap, err);
    if (payload == NULL) {
        goto out;
    }
    if (is_cert_key) {
        /* RFC 8555 §7.6: the holder of the certificate's key may revoke it
         * without any account, e.g. after losing the account key. */
        cert_key = acme_key_parse_pem(key, strlen(key), err);
        if (cert_key == NULL) {
            goto out;
        }
    } else if (acme_cmd_open_account(&r.cmd, err) != 0) {
        /* Only the account that ordered the certificate may revoke it by
         * kid; a new account could not. */
        goto out;
    }
    r.payload = payload;
    r.cert_key = cert_key;
    if (acme_client_directory_start(r.cmd.client, revoke_on_directory, &r, err) == NULL ||
        acme_cmd_wait(&r.cmd, err) != 0) {
        goto out;
    }
    rc = 0;
out:
    /* The loop goes first: a call still in flight may hold cert_key. */
    acme_cmd_cleanup(&r.cmd);
    acme_key_free(cert_key);
    free(payload);
    free(chain);
    acme_pem_free_secret(key);
    acme_storage_free(st);
    return rc;
}
