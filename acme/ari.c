/* ACME Renewal Information (see ari.h): certificate identifiers from DER,
 * renewalInfo parsing, the uniform pick inside the suggested window, and the
 * fetch (directory -> GET) as a two-state machine on the client. Invariant:
 * a fetch calls back exactly once unless canceled. Design: docs/acme.md. */
#include "acme/ari.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/bytestring.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "acme/client.h"
#include "acme/jws.h"
#include "proxy/core/err.h"
#include "proxy/core/log.h"

int acme_ari_cert_id_encode(const uint8_t *aki, size_t aki_len, const uint8_t *serial,
                            size_t serial_len, char *out, size_t cap)
{
    if (aki_len == 0 || serial_len == 0 || aki_len > ACME_ARI_PART_MAX ||
        serial_len > ACME_ARI_PART_MAX) {
        return -1;
    }
    size_t a = acme_b64url_encoded_len(aki_len);
    if (a + 1 + acme_b64url_encoded_len(serial_len) + 1 > cap ||
        acme_b64url_encode_to(aki, aki_len, out, cap) != 0) {
        return -1;
    }
    out[a] = '.';
    return acme_b64url_encode_to(serial, serial_len, out + a + 1, cap - a - 1);
}

/* serial_content reads the serial's DER content octets straight from the
 * TBSCertificate, so leading zero bytes are kept exactly as encoded. */
static int serial_content(const uint8_t *der, size_t len, CBS *out)
{
    CBS cert, tbs;
    CBS_init(&cert, der, len);
    if (!CBS_get_asn1(&cert, &cert, CBS_ASN1_SEQUENCE) ||
        !CBS_get_asn1(&cert, &tbs, CBS_ASN1_SEQUENCE) ||
        !CBS_get_optional_asn1(&tbs, NULL, NULL,
                               CBS_ASN1_CONSTRUCTED | CBS_ASN1_CONTEXT_SPECIFIC | 0) ||
        !CBS_get_asn1(&tbs, out, CBS_ASN1_INTEGER)) {
        return -1;
    }
    return 0;
}

int acme_ari_cert_id(const uint8_t *der, size_t len, char *out, size_t cap, struct dm_err *err)
{
    const uint8_t *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    CBS serial;
    int rc = -1;
    if (x == NULL || serial_content(der, len, &serial) != 0) {
        ERR_clear_error();
        dm_err_set(err, DM_E_PROTO, "ARI: not an X.509 certificate");
        goto out;
    }
    const ASN1_OCTET_STRING *aki = X509_get0_authority_key_id(x);
    if (aki == NULL) {
        ERR_clear_error();
        dm_err_set(err, DM_E_PROTO, "ARI: certificate has no authority key identifier");
        goto out;
    }
    if (acme_ari_cert_id_encode(ASN1_STRING_get0_data(aki), (size_t)ASN1_STRING_length(aki),
                                CBS_data(&serial), CBS_len(&serial), out, cap) != 0) {
        dm_err_set(err, DM_E_PROTO, "ARI: key identifier or serial too long");
        goto out;
    }
    rc = 0;
out:
    X509_free(x);
    return rc;
}

int acme_ari_cert_id_pem(const char *pem, size_t len, char *out, size_t cap, struct dm_err *err)
{
    BIO *bio = BIO_new_mem_buf(pem, len > INT32_MAX ? INT32_MAX : (int)len);
    X509 *x = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    uint8_t *der = NULL;
    int der_len = x != NULL ? i2d_X509(x, &der) : -1;
    int rc = -1;
    if (der_len <= 0) {
        ERR_clear_error();
        dm_err_set(err, DM_E_PROTO, "ARI: no certificate in PEM");
    } else {
        rc = acme_ari_cert_id(der, (size_t)der_len, out, cap, err);
    }
    OPENSSL_free(der);
    X509_free(x);
    BIO_free(bio);
    return rc;
}

void acme_ari_info_cleanup(struct acme_ari_info *info)
{
    free(info->explanation_url);
    memset(info, 0, sizeof(*info));
}

int acme_ari_parse(struct acme_ari_info *out, const char *json, size_t len,
                   const uint32_t *retry_after_s, struct dm_err *err)
{
    memset(out, 0, sizeof(*out));
    json_t *j = json_loadb(json, len, 0, NULL);
    const json_t *w = json_object_get(j, "suggestedWindow");
    int rc = -1;
    if (!json_is_object(w) ||
        acme_time_parse(json_string_value(json_object_get(w, "start")), &out->window_start) != 0 ||
        acme_time_parse(json_string_value(json_object_get(w, "end")), &out->window_end) != 0 ||
        out->window_end <= out->window_start) {
        dm_err_set(err, DM_E_PROTO, "renewalInfo: bad or missing suggestedWindow");
        goto out;
    }
    const char *expl = json_string_value(json_object_get(j, "explanationURL"));
    if (expl != NULL && (out->explanation_url = strdup(expl)) == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto out;
    }
    uint32_t ra = retry_after_s != NULL ? *retry_after_s : ACME_ARI_RETRY_DEFAULT_S;
    out->retry_after_s = ra < ACME_ARI_RETRY_MIN_S   ? ACME_ARI_RETRY_MIN_S
                         : ra > ACME_ARI_RETRY_MAX_S ? ACME_ARI_RETRY_MAX_S
                                                     : ra;
    rc = 0;
out:
    json_decref(j);
    if (rc != 0) {
        acme_ari_info_cleanup(out);
    }
    return rc;
}

time_t acme_ari_pick(const struct acme_ari_info *info, time_t now, uint64_t rnd)
{
    if (info->window_end <= now) {
        return now;
    }
    uint64_t span = (uint64_t)(info->window_end - info->window_start);
    time_t t = info->window_start + (time_t)(rnd % span);
    return t < now ? now : t;
}

time_t acme_ari_choose(const struct acme_ari_info *info, time_t now)
{
    uint64_t rnd = 0;
    RAND_bytes((uint8_t *)&rnd, sizeof(rnd));
    return acme_ari_pick(info, now, rnd);
}

/* ---- fetch ------------------------------------------------------------------ */

enum step {
    STEP_CONTINUE = 0,
    STEP_WAIT,
    STEP_DONE,
    STEP_FAIL,
};

enum ari_state {
    ARI_DIRECTORY = 0, /* renewalInfo URL */
    ARI_GET,           /* GET <renewalInfo>/<cert id> */
    ARI_DONE,
};

struct acme_ari_fetch {
    struct acme_client *c; /* borrowed */
    enum ari_state state;
    char cert_id[ACME_ARI_CERT_ID_MAX];
    struct acme_call *call; /* owned while in flight */
    bool is_sent;
    bool has_reply;
    bool is_in_callback;
    const struct acme_response *resp; /* borrowed during the client's callback */
    struct acme_ari_info info;
    struct acme_problem prob;
    struct dm_err err;
    acme_ari_done_cb cb;
    void *arg;
};

static void ari_step(struct acme_ari_fetch *f);

static void ari_on_reply(const struct acme_response *resp, const struct acme_problem *prob,
                         const struct dm_err *err, void *arg)
{
    struct acme_ari_fetch *f = arg;
    f->call = NULL;
    f->has_reply = true;
    f->resp = resp;
    if (resp == NULL) {
        f->prob = *prob;
        f->err = *err;
    }
    ari_step(f);
}

static void ari_on_directory(const struct acme_directory *dir, const struct acme_problem *prob,
                             const struct dm_err *err, void *arg)
{
    struct acme_ari_fetch *f = arg;
    f->call = NULL;
    f->has_reply = true;
    f->resp = NULL;
    if (dir == NULL) {
        f->prob = *prob;
        f->err = *err;
    }
    ari_step(f);
}

static enum step ari_fail_err(struct acme_ari_fetch *f)
{
    acme_problem_from_err(&f->prob, &f->err);
    return STEP_FAIL;
}

static enum step ari_do_directory(struct acme_ari_fetch *f)
{
    if (!f->has_reply) {
        if (!f->is_sent) {
            f->is_sent = true;
            f->call = acme_client_directory_start(f->c, ari_on_directory, f, &f->err);
            if (f->call == NULL) {
                return ari_fail_err(f);
            }
        }
        return STEP_WAIT;
    }
    const struct acme_directory *dir = acme_client_directory_find(f->c);
    if (dir == NULL) {
        return STEP_FAIL;
    }
    if (dir->renewal_info == NULL) {
        dm_err_set(&f->err, DM_E_NOTFOUND, "the CA %s has no renewalInfo",
                   acme_client_directory_url(f->c));
        return ari_fail_err(f);
    }
    return STEP_CONTINUE;
}

static enum step ari_do_get(struct acme_ari_fetch *f)
{
    if (!f->has_reply) {
        if (!f->is_sent) {
            const char *base = acme_client_directory_find(f->c)->renewal_info;
            size_t blen = strlen(base);
            char *url = malloc(blen + 1 + strlen(f->cert_id) + 1);
            if (url == NULL) {
                dm_err_set(&f->err, DM_E_NOMEM, "out of memory");
                return ari_fail_err(f);
            }
            /* RFC 9773 §4.1: path segment appended to the renewalInfo URL. */
            strcpy(url, base);
            if (blen == 0 || base[blen - 1] != '/') {
                strcat(url, "/");
            }
            strcat(url, f->cert_id);
            f->is_sent = true;
            f->call = acme_client_get_start(f->c, url, NULL, ari_on_reply, f, &f->err);
            free(url);
            if (f->call == NULL) {
                return ari_fail_err(f);
            }
        }
        return STEP_WAIT;
    }
    if (f->resp == NULL) {
        return STEP_FAIL;
    }
    if (acme_ari_parse(&f->info, f->resp->body, f->resp->body_len,
                       f->resp->has_retry_after ? &f->resp->retry_after_s : NULL, &f->err) != 0) {
        return ari_fail_err(f);
    }
    return STEP_DONE;
}

static void ari_finish(struct acme_ari_fetch *f, bool is_ok)
{
    f->is_in_callback = true;
    f->cb(is_ok ? &f->info : NULL, is_ok ? NULL : &f->prob, is_ok ? NULL : &f->err, f->arg);
    acme_ari_info_cleanup(&f->info);
    free(f);
}

static void ari_step(struct acme_ari_fetch *f)
{
    for (;;) {
        enum step r = STEP_FAIL;
        switch (f->state) {
        case ARI_DIRECTORY:
            r = ari_do_directory(f);
            break;
        case ARI_GET:
            r = ari_do_get(f);
            break;
        case ARI_DONE:
            return;
        }
        if (r == STEP_WAIT) {
            return;
        }
        if (r != STEP_CONTINUE) {
            f->state = ARI_DONE;
            ari_finish(f, r == STEP_DONE);
            return;
        }
        f->state = ARI_GET; /* the only transition */
        f->is_sent = false;
        f->has_reply = false;
    }
}

struct acme_ari_fetch *acme_ari_fetch_start(struct acme_client *c, const char *cert_id,
                                            acme_ari_done_cb cb, void *arg, struct dm_err *err)
{
    size_t len = cert_id != NULL ? strlen(cert_id) : 0;
    if (len == 0 || len >= ACME_ARI_CERT_ID_MAX ||
        strspn(cert_id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") !=
            len ||
        cb == NULL) {
        dm_err_set(err, DM_E_PROTO, "ARI: invalid certificate identifier");
        return NULL;
    }
    struct acme_ari_fetch *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    f->c = c;
    memcpy(f->cert_id, cert_id, len + 1);
    f->cb = cb;
    f->arg = arg;
    /* The directory call defers its callback, so nothing runs inside _start. */
    f->is_sent = true;
    f->call = acme_client_directory_start(c, ari_on_directory, f, err);
    if (f->call == NULL) {
        free(f);
        return NULL;
    }
    return f;
}

void acme_ari_fetch_cancel(struct acme_ari_fetch *f)
{
    if (f == NULL || f->is_in_callback) {
        return;
    }
    acme_client_call_cancel(f->call);
    acme_ari_info_cleanup(&f->info);
    free(f);
}
