/* `doorman revoke`: POST revokeCert (RFC 8555 §7.6) for a stored certificate,
 * signed with the account key by kid. It reuses the CA client and account of
 * the running manager's design on a private event_base, directory -> account
 * -> revokeCert, one step at a time; each call carries the client's deadline.
 * Invariant (STYLE §4.8): the account key stays inside the account. */
#include "acme/acme.h"
#include "acme/manager_acme.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "acme/account.h"
#include "acme/cert_int.h"
#include "acme/client.h"
#include "acme/jws.h"
#include "acme/storage.h"
#include "config/config.h"
#include "proxy/core/err.h"

struct revoke {
    struct event_base *base;      /* borrowed */
    struct acme_client *client;   /* borrowed */
    struct acme_account *account; /* borrowed */
    const char *payload;          /* borrowed: the revokeCert JSON */
    struct acme_account_op *op;   /* in flight, or NULL */
    struct acme_call *call;       /* in flight, or NULL */
    bool is_done;
    int rc;
    struct dm_err err;
};

static void revoke_finish(struct revoke *r, int rc, const struct acme_problem *prob,
                          const struct dm_err *err)
{
    r->is_done = true;
    r->rc = rc;
    if (rc != 0) {
        if (prob != NULL && prob->type[0] != '\0') {
            dm_err_set(&r->err, DM_E_ACME, "%s: %s", acme_problem_short(prob), prob->detail);
        } else if (err != NULL) {
            r->err = *err;
        } else {
            dm_err_set(&r->err, DM_E_ACME, "revocation failed");
        }
    }
    event_base_loopbreak(r->base);
}

static void revoke_on_reply(const struct acme_response *resp, const struct acme_problem *prob,
                            const struct dm_err *err, void *arg)
{
    struct revoke *r = arg;
    r->call = NULL;
    revoke_finish(r, resp != NULL ? 0 : -1, prob, err);
}

static void revoke_on_account(struct acme_account *a, const struct acme_problem *prob,
                              const struct dm_err *err, void *arg)
{
    struct revoke *r = arg;
    r->op = NULL;
    if (prob != NULL || err != NULL) {
        revoke_finish(r, -1, prob, err);
        return;
    }
    const struct acme_directory *dir = acme_client_directory_find(r->client);
    if (dir == NULL || dir->revoke_cert == NULL) {
        struct dm_err e = {0};
        dm_err_set(&e, DM_E_PROTO, "the CA's directory has no revokeCert URL");
        revoke_finish(r, -1, NULL, &e);
        return;
    }
    struct dm_err e = {0};
    r->call = acme_client_post_start(r->client, acme_account_key(a), acme_account_kid(a),
                                     dir->revoke_cert, r->payload, NULL, revoke_on_reply, r, &e);
    if (r->call == NULL) {
        revoke_finish(r, -1, NULL, &e);
    }
}

static void revoke_on_directory(const struct acme_directory *dir, const struct acme_problem *prob,
                                const struct dm_err *err, void *arg)
{
    struct revoke *r = arg;
    r->call = NULL;
    if (dir == NULL) {
        revoke_finish(r, -1, prob, err);
        return;
    }
    struct dm_err e = {0};
    r->op = acme_account_register_start(r->account, revoke_on_account, r, &e);
    if (r->op == NULL) {
        revoke_finish(r, -1, NULL, &e);
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

static const struct cfg_site *revoke_find_site(const struct cfg *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->num_sites; i++) {
        const struct cfg_site *s = &cfg->sites[i];
        for (size_t k = 0; k < s->num_hosts; k++) {
            if (strcmp(s->hosts[k], name) == 0) {
                return s;
            }
        }
    }
    return NULL;
}

int acme_revoke_run(const struct cfg *cfg, const char *name, int reason, char *out_serial,
                    size_t cap, struct dm_err *err)
{
    int rc = -1;
    struct event_base *base = NULL;
    struct acme_storage *st = NULL;
    struct acme_client *client = NULL;
    struct acme_account *account = NULL;
    char *chain = NULL, *key = NULL, *payload = NULL;
    if (reason != ACME_REVOKE_NO_REASON && (reason < 0 || reason > 10 || reason == 7)) {
        dm_err_set(err, DM_E_CONFIG, "reason %d is not a CRL reason code (0-10 except 7)", reason);
        return -1;
    }
    const struct cfg_site *site = revoke_find_site(cfg, name);
    if (site == NULL || site->tls != CFG_TLS_ACME || site->acme == NULL) {
        dm_err_set(err, DM_E_CONFIG, "%s: no site with that name uses an ACME CA", name);
        return -1;
    }
    const struct cfg_acme *a = site->acme;
    char issuer_id[96];
    acme_issuer_storage_id(issuer_id, sizeof(issuer_id), a->directory);
    st = acme_storage_fs_new(cfg->data_dir, err);
    if (st == NULL ||
        acme_storage_get(st, issuer_id, site->hosts[0], &chain, &key, NULL, err) != 0) {
        goto out;
    }
    payload = revoke_payload(chain, reason, out_serial, cap, err);
    if (payload == NULL) {
        goto out;
    }
    base = event_base_new();
    if (base == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto out;
    }
    /* Only the account that ordered the certificate may revoke it by kid; a
     * missing key would make acme_account_open register a new, useless one. */
    char acct_dir[ACME_ACCOUNT_PATH_MAX], acct_key[ACME_ACCOUNT_PATH_MAX + 32];
    if (acme_account_storage_dir(acct_dir, sizeof(acct_dir), cfg->data_dir, a->directory, a->email,
                                 err) != 0) {
        goto out;
    }
    snprintf(acct_key, sizeof(acct_key), "%s/account.key", acct_dir);
    if (access(acct_key, F_OK) != 0) {
        dm_err_set(err, DM_E_NOTFOUND, "no ACME account key %s", acct_key);
        goto out;
    }
    struct acme_client_opts co = {.directory_url = a->directory, .ca_file = a->ca_root};
    client = acme_client_new(base, &co, err);
    if (client == NULL) {
        goto out;
    }
    struct acme_account_opts ao = {.data_dir = cfg->data_dir,
                                   .email = a->email,
                                   .is_tos_agreed = a->agree_tos,
                                   .eab_kid = a->eab_kid,
                                   .eab_hmac_key = a->eab_hmac_key};
    account = acme_account_open(client, &ao, err);
    if (account == NULL) {
        goto out;
    }
    struct revoke r = {.base = base, .client = client, .account = account, .payload = payload};
    struct acme_call *call = acme_client_directory_start(client, revoke_on_directory, &r, err);
    if (call == NULL) {
        goto out;
    }
    r.call = call;
    /* Every step runs under the client's call deadline, so the loop ends. */
    while (!r.is_done && event_base_dispatch(base) == 0) {
    }
    if (!r.is_done) {
        acme_account_op_cancel(r.op);
        acme_client_call_cancel(r.call);
        dm_err_set(err, DM_E_IO, "event loop stopped before the CA answered");
        goto out;
    }
    if (r.rc != 0) {
        if (err != NULL) {
            *err = r.err;
        }
        goto out;
    }
    rc = 0;
out:
    acme_account_free(account);
    acme_client_free(client);
    if (base != NULL) {
        event_base_free(base);
    }
    free(payload);
    free(chain);
    acme_pem_free_secret(key);
    acme_storage_free(st);
    return rc;
}
