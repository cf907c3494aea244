/* The scripted fake ACME CA (see fake_ca.h). One process, one loop: it
 * shares the solver registry with the code under test, so it can check that
 * a challenge response was published before the challenge was POSTed. */
#include "fake_ca.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "acme/acme.h"
#include "acme/jws.h"
#include "acme/solver.h"
#include "proxy/core/err.h"
#include "proxy/core/time.h"

#define MAX_ITEMS   64
#define MAX_NONCES  256
#define MAX_SCRIPTS 32
#define MAX_POLLS   256
#define MAX_NAMES   8

struct fake_script {
    char prefix[64];
    unsigned count;
    bool is_raw, is_close;
    int status;
    char *content_type, *headers, *body; /* owned */
    char *raw;                           /* owned; NULL = just close */
    size_t raw_len;
};

struct fake_account {
    char *jwk; /* owned */
    bool is_deactivated;
};

struct fake_authz {
    char identifier[256];
    bool is_wildcard, is_ip;
    int status;     /* 0 pending, 1 valid, 2 invalid */
    bool is_posted; /* a challenge was POSTed */
    unsigned countdown;
    char tokens[3][48];
    int validated; /* index of the challenge type validated */
    int account;
};

struct fake_order {
    char names[MAX_NAMES][256];
    size_t num_names;
    int authz[MAX_NAMES];
    bool is_finalized, is_issued;
    unsigned countdown;
    char *chain, *alt_chain; /* owned */
    int account;
};

#define MAX_CONNS 64

struct fake_ca {
    struct event_base *base;
    struct bufferevent *conns[MAX_CONNS]; /* open connections, freed with the CA */
    struct evconnlistener *lis;
    char origin[64];
    char dir_url[96];
    struct fake_ca_knobs knobs;
    char nonces[MAX_NONCES][24];
    bool nonce_used[MAX_NONCES];
    size_t num_nonces;
    struct fake_script scripts[MAX_SCRIPTS];
    size_t num_scripts;
    struct fake_account accounts[MAX_ITEMS];
    size_t num_accounts;
    struct fake_authz authzs[MAX_ITEMS];
    size_t num_authzs;
    struct fake_order orders[MAX_ITEMS];
    size_t num_orders;
    unsigned counts[16];
    char *last_payload[16];
    unsigned num_bad_nonce;
    unsigned num_unpublished;
    uint64_t poll_times[MAX_POLLS];
    size_t num_poll_times;
    EVP_PKEY *root_key, *int_key, *root2_key;
    X509 *root, *inter, *inter_alt;
};

static const char *const endpoint_names[] = {"dir",   "nonce",      "new-acct", "new-order",
                                             "authz", "chall",      "finalize", "order",
                                             "cert",  "key-change", "acct",     "renewal-info"};
#define NUM_ENDPOINTS 12

static int endpoint_index(const char *name)
{
    for (int i = 0; i < NUM_ENDPOINTS; i++) {
        if (strcmp(name, endpoint_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/* ---- certificates -------------------------------------------------------------- */

static EVP_PKEY *key_new(void)
{
    EVP_PKEY *k = EVP_PKEY_new();
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EC_KEY_generate_key(ec);
    EVP_PKEY_assign_EC_KEY(k, ec);
    return k;
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509V3_set_ctx_nodb(&ctx);
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
    if (ext != NULL) {
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
}

static X509 *cert_make(EVP_PKEY *pub, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                       bool is_ca)
{
    static long serial = 0x1000;
    X509 *x = X509_new();
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 90L * 86400);
    X509_set_pubkey(x, pub);
    if (cn != NULL) {
        X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                   (const uint8_t *)cn, -1, -1, 0);
    }
    X509_set_issuer_name(x,
                         issuer != NULL ? X509_get_subject_name(issuer) : X509_get_subject_name(x));
    add_ext(x, x, NID_subject_key_identifier, "hash");
    add_ext(x, issuer != NULL ? issuer : x, NID_authority_key_identifier, "keyid:always");
    if (is_ca) {
        add_ext(x, NULL, NID_basic_constraints, "critical,CA:TRUE");
    }
    X509_sign(x, issuer_key, EVP_sha256());
    return x;
}

static char *pem_of(X509 *const *certs, size_t num)
{
    BIO *b = BIO_new(BIO_s_mem());
    for (size_t i = 0; i < num; i++) {
        PEM_write_bio_X509(b, certs[i]);
    }
    const uint8_t *data;
    size_t len;
    BIO_mem_contents(b, &data, &len);
    char *s = malloc(len + 1);
    memcpy(s, data, len);
    s[len] = '\0';
    BIO_free(b);
    return s;
}

/* issue checks a CSR against the order's names and makes the chains. */
static int issue(struct fake_ca *f, struct fake_order *o, const uint8_t *der, size_t len)
{
    const uint8_t *p = der;
    X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)len);
    if (req == NULL) {
        ERR_clear_error();
        return -1;
    }
    EVP_PKEY *pub = X509_REQ_get_pubkey(req);
    int rc = -1;
    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
    GENERAL_NAMES *gens = NULL;
    if (pub == NULL || X509_REQ_verify(req, pub) != 1 || exts == NULL) {
        goto out;
    }
    for (size_t i = 0; i < sk_X509_EXTENSION_num(exts); i++) {
        X509_EXTENSION *e = sk_X509_EXTENSION_value(exts, i);
        if (OBJ_obj2nid(X509_EXTENSION_get_object(e)) == NID_subject_alt_name) {
            gens = X509V3_EXT_d2i(e);
        }
    }
    if (gens == NULL || sk_GENERAL_NAME_num(gens) != o->num_names) {
        goto out;
    }
    X509 *leaf = cert_make(pub, o->names[0], f->inter, f->int_key, false);
    X509_EXTENSION *san = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens);
    X509_add_ext(leaf, san, -1);
    X509_EXTENSION_free(san);
    X509_sign(leaf, f->int_key, EVP_sha256());
    X509 *chain[2] = {leaf, f->inter};
    o->chain = pem_of(chain, 2);
    chain[1] = f->inter_alt;
    o->alt_chain = pem_of(chain, 2);
    X509_free(leaf);
    rc = 0;
out:
    GENERAL_NAMES_free(gens);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    EVP_PKEY_free(pub);
    X509_REQ_free(req);
    ERR_clear_error();
    return rc;
}

/* ---- HTTP ------------------------------------------------------------------------- */

struct fake_req {
    char method[16];
    char path[512];
    char content_type[128];
    char *body; /* owned */
    size_t body_len;
};

struct fake_resp {
    int status;
    const char *content_type;
    char headers[1024];
    char *body; /* owned */
};

static const char *nonce_new(struct fake_ca *f)
{
    size_t i = f->num_nonces % MAX_NONCES;
    uint8_t raw[12];
    RAND_bytes(raw, sizeof(raw));
    acme_b64url_encode_to(raw, sizeof(raw), f->nonces[i], sizeof(f->nonces[i]));
    f->nonce_used[i] = false;
    f->num_nonces++;
    return f->nonces[i];
}

static bool nonce_take(struct fake_ca *f, const char *nonce)
{
    for (size_t i = 0; i < MAX_NONCES && i < f->num_nonces; i++) {
        if (!f->nonce_used[i] && strcmp(f->nonces[i], nonce) == 0) {
            f->nonce_used[i] = true;
            return true;
        }
    }
    return false;
}

static void problem(struct fake_resp *r, int status, const char *type, const char *detail)
{
    r->status = status;
    r->content_type = "application/problem+json";
    json_t *j = json_pack("{s:s, s:s, s:i}", "type", type, "detail", detail, "status", status);
    r->body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
}

static void json_resp(struct fake_resp *r, int status, json_t *j)
{
    r->status = status;
    r->content_type = "application/json";
    r->body = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
}

static void hdr_add(struct fake_resp *r, const char *name, const char *value)
{
    size_t n = strlen(r->headers);
    snprintf(r->headers + n, sizeof(r->headers) - n, "%s: %s\r\n", name, value);
}

static void link_add(struct fake_resp *r, const char *url, const char *rel)
{
    char v[300];
    snprintf(v, sizeof(v), "<%s>;rel=\"%s\"", url, rel);
    hdr_add(r, "Link", v);
}

/* ---- ACME ------------------------------------------------------------------------- */

static const char *const chal_types[3] = {"http-01", "tls-alpn-01", "dns-01"};

static bool offered(const struct fake_ca *f, int t)
{
    const char *offer = f->knobs.offer != NULL ? f->knobs.offer : "http-01,tls-alpn-01,dns-01";
    return strstr(offer, chal_types[t]) != NULL;
}

static json_t *authz_json(struct fake_ca *f, size_t id)
{
    struct fake_authz *z = &f->authzs[id];
    const char *st = z->status == 1 ? "valid" : z->status == 2 ? "invalid" : "pending";
    bool is_counting = z->is_posted && z->countdown > 0;
    if (is_counting) {
        st = "pending";
    }
    json_t *chals = json_array();
    for (int t = 0; t < 3; t++) {
        if (!offered(f, t) || (z->is_wildcard && t != 2) || (z->is_ip && t == 2)) {
            continue;
        }
        char url[160];
        snprintf(url, sizeof(url), "%s/chall/%zu/%d", f->origin, id, t);
        const char *cst = "pending";
        if (z->is_posted && z->validated == t) {
            cst = is_counting ? "processing" : st;
        } else if (z->status == 1 && !z->is_posted && t == 0) {
            cst = "valid";
        }
        json_t *c = json_pack("{s:s, s:s, s:s, s:s}", "type", chal_types[t], "url", url, "token",
                              z->tokens[t], "status", cst);
        if (z->status == 2 && z->validated == t && !is_counting) {
            json_object_set_new(c, "error",
                                json_pack("{s:s, s:s, s:i}", "type",
                                          "urn:ietf:params:acme:error:incorrectResponse", "detail",
                                          "The key authorization file from the server did not "
                                          "match this challenge",
                                          "status", 403));
        }
        json_array_append_new(chals, c);
    }
    json_t *j = json_pack("{s:{s:s, s:s}, s:s, s:s, s:o}", "identifier", "type",
                          z->is_ip ? "ip" : "dns", "value", z->identifier, "status", st, "expires",
                          "2030-01-01T00:00:00Z", "challenges", chals);
    if (z->is_wildcard) {
        json_object_set_new(j, "wildcard", json_true());
    }
    return j;
}

static const char *order_status(struct fake_ca *f, struct fake_order *o)
{
    bool is_all_valid = true;
    for (size_t i = 0; i < o->num_names; i++) {
        struct fake_authz *z = &f->authzs[o->authz[i]];
        bool is_counting = z->is_posted && z->countdown > 0;
        if (z->status == 2 && !is_counting) {
            return "invalid";
        }
        if (z->status != 1 || is_counting) {
            is_all_valid = false;
        }
    }
    if (o->is_issued) {
        return o->countdown > 0 ? "processing" : "valid";
    }
    return is_all_valid ? "ready" : "pending";
}

static json_t *order_json(struct fake_ca *f, size_t id)
{
    struct fake_order *o = &f->orders[id];
    json_t *ids = json_array(), *authzs = json_array();
    for (size_t i = 0; i < o->num_names; i++) {
        bool is_ip = strchr(o->names[i], ':') != NULL ||
                     strspn(o->names[i], "0123456789.") == strlen(o->names[i]);
        json_array_append_new(
            ids, json_pack("{s:s, s:s}", "type", is_ip ? "ip" : "dns", "value", o->names[i]));
        char url[160];
        snprintf(url, sizeof(url), "%s/authz/%d", f->origin, o->authz[i]);
        json_array_append_new(authzs, json_string(url));
    }
    char fin[160], cert[160];
    snprintf(fin, sizeof(fin), "%s/finalize/%zu", f->origin, id);
    snprintf(cert, sizeof(cert), "%s/cert/%zu", f->origin, id);
    const char *st = order_status(f, o);
    json_t *j =
        json_pack("{s:s, s:s, s:o, s:o, s:s}", "status", st, "expires", "2030-01-01T00:00:00Z",
                  "identifiers", ids, "authorizations", authzs, "finalize", fin);
    if (strcmp(st, "valid") == 0) {
        json_object_set_new(j, "certificate", json_string(cert));
    }
    if (strcmp(st, "invalid") == 0) {
        json_object_set_new(j, "error",
                            json_pack("{s:s, s:s}", "type",
                                      "urn:ietf:params:acme:error:unauthorized", "detail",
                                      "an authorization failed"));
    }
    return j;
}

static void handle_dir(struct fake_ca *f, struct fake_resp *r)
{
    char u[8][160];
    const char *names[] = {"nonce",      "new-acct", "new-order",
                           "key-change", "revoke",   "renewal-info"};
    for (int i = 0; i < 6; i++) {
        snprintf(u[i], sizeof(u[i]), "%s/%s", f->origin, names[i]);
    }
    json_t *meta = json_object();
    if (f->knobs.tos_url != NULL) {
        json_object_set_new(meta, "termsOfService", json_string(f->knobs.tos_url));
    }
    if (f->knobs.is_eab_required) {
        json_object_set_new(meta, "externalAccountRequired", json_true());
    }
    if (f->knobs.profile != NULL) {
        json_object_set_new(meta, "profiles", json_pack("{s:s}", f->knobs.profile, "a profile"));
    }
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:o}", "newNonce", u[0], "newAccount", u[1],
                          "newOrder", u[2], "keyChange", u[3], "revokeCert", u[4], "meta", meta);
    if (f->knobs.has_ari) {
        json_object_set_new(j, "renewalInfo", json_string(u[5]));
    }
    json_resp(r, 200, j);
    link_add(r, f->dir_url, "index");
}

/* verified is a POST whose JWS checked out. */
struct verified {
    json_t *prot;  /* owned */
    char *payload; /* owned */
    int account;   /* -1 for a jwk request */
    const char *jwk;
};

/* verify checks content type, JWS, nonce, url and the key. */
static int verify(struct fake_ca *f, const struct fake_req *q, struct fake_resp *r,
                  struct verified *v)
{
    memset(v, 0, sizeof(*v));
    v->account = -1;
    if (strcmp(q->content_type, "application/jose+json") != 0) {
        problem(r, 415, "urn:ietf:params:acme:error:malformed", "wrong content type");
        return -1;
    }
    json_t *j = json_loadb(q->body, q->body_len, 0, NULL);
    const char *p64 = json_string_value(json_object_get(j, "protected"));
    size_t plen = 0;
    uint8_t *ptext = p64 != NULL ? acme_b64url_decode(p64, strlen(p64), &plen) : NULL;
    json_decref(j);
    v->prot = ptext != NULL ? json_loadb((const char *)ptext, plen, 0, NULL) : NULL;
    free(ptext);
    if (v->prot == NULL) {
        problem(r, 400, "urn:ietf:params:acme:error:malformed", "bad JWS");
        return -1;
    }
    const char *kid = json_string_value(json_object_get(v->prot, "kid"));
    const char *nonce = json_string_value(json_object_get(v->prot, "nonce"));
    const char *url = json_string_value(json_object_get(v->prot, "url"));
    struct acme_jws_verifier ver = {0};
    if (kid != NULL) {
        size_t n = strlen(f->origin) + strlen("/acct/");
        long id = strncmp(kid, f->origin, strlen(f->origin)) == 0 && strlen(kid) > n
                      ? strtol(kid + n, NULL, 10)
                      : -1;
        if (id < 0 || (size_t)id >= f->num_accounts || f->accounts[id].jwk == NULL) {
            problem(r, 400, "urn:ietf:params:acme:error:accountDoesNotExist", "no such account");
            return -1;
        }
        if (f->accounts[id].is_deactivated) {
            problem(r, 401, "urn:ietf:params:acme:error:unauthorized", "account deactivated");
            return -1;
        }
        v->account = (int)id;
        ver.jwk = f->accounts[id].jwk;
    }
    struct dm_err err = {0};
    size_t payload_len = 0;
    if (acme_jws_verify(q->body, q->body_len, &ver, NULL, &v->payload, &payload_len, &err) != 0) {
        problem(r, 400, "urn:ietf:params:acme:error:malformed", err.msg);
        return -1;
    }
    if (kid == NULL) {
        /* Canonical text (sorted, compact) so accounts compare by string. */
        char *jwk_text = json_dumps(json_object_get(v->prot, "jwk"), JSON_COMPACT | JSON_SORT_KEYS);
        json_object_set_new(v->prot, "x-jwk-text", json_string(jwk_text != NULL ? jwk_text : ""));
        free(jwk_text);
        v->jwk = json_string_value(json_object_get(v->prot, "x-jwk-text"));
    }
    char want[600];
    snprintf(want, sizeof(want), "%s%s", f->origin, q->path);
    if (url == NULL || strcmp(url, want) != 0) {
        problem(r, 401, "urn:ietf:params:acme:error:unauthorized", "url mismatch");
        return -1;
    }
    if (nonce == NULL || !nonce_take(f, nonce) || f->knobs.bad_nonce_next > 0) {
        if (f->knobs.bad_nonce_next > 0) {
            f->knobs.bad_nonce_next--;
        }
        f->num_bad_nonce++;
        problem(r, 400, "urn:ietf:params:acme:error:badNonce",
                "JWS has an invalid anti-replay "
                "nonce");
        return -1;
    }
    return 0;
}

static void record(struct fake_ca *f, int ep, const char *payload)
{
    free(f->last_payload[ep]);
    f->last_payload[ep] = payload != NULL ? strdup(payload) : NULL;
}

static int account_by_jwk(struct fake_ca *f, const char *jwk)
{
    for (size_t i = 0; i < f->num_accounts; i++) {
        if (f->accounts[i].jwk != NULL && strcmp(f->accounts[i].jwk, jwk) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static void account_resp(struct fake_ca *f, struct fake_resp *r, int status, int id)
{
    char loc[160];
    snprintf(loc, sizeof(loc), "%s/acct/%d", f->origin, id);
    json_resp(
        r, status,
        json_pack("{s:s}", "status", f->accounts[id].is_deactivated ? "deactivated" : "valid"));
    hdr_add(r, "Location", loc);
}

static void handle_new_acct(struct fake_ca *f, const struct verified *v, struct fake_resp *r)
{
    json_t *p = json_loads(v->payload, 0, NULL);
    int existing = account_by_jwk(f, v->jwk);
    if (json_is_true(json_object_get(p, "onlyReturnExisting"))) {
        if (existing < 0) {
            problem(r, 400, "urn:ietf:params:acme:error:accountDoesNotExist", "no account");
        } else {
            account_resp(f, r, 200, existing);
        }
        json_decref(p);
        return;
    }
    if (existing >= 0) {
        account_resp(f, r, 200, existing);
        json_decref(p);
        return;
    }
    if (f->knobs.tos_url != NULL && !json_is_true(json_object_get(p, "termsOfServiceAgreed"))) {
        problem(r, 403, "urn:ietf:params:acme:error:userActionRequired", "agree to the terms");
        json_decref(p);
        return;
    }
    if (f->knobs.is_eab_required) {
        json_t *eab = json_object_get(p, "externalAccountBinding");
        char *eab_text = eab != NULL ? json_dumps(eab, JSON_COMPACT) : NULL;
        struct acme_jws_verifier ver = {.hmac_key = f->knobs.eab_key,
                                        .hmac_key_len = f->knobs.eab_key_len};
        char *prot = NULL, *payload = NULL;
        size_t plen = 0;
        struct dm_err err = {0};
        bool is_ok = eab_text != NULL && acme_jws_verify(eab_text, strlen(eab_text), &ver, &prot,
                                                         &payload, &plen, &err) == 0;
        json_t *pj = is_ok ? json_loads(prot, 0, NULL) : NULL;
        json_t *payload_jwk = is_ok ? json_loads(payload, 0, NULL) : NULL;
        char *payload_canon =
            payload_jwk != NULL ? json_dumps(payload_jwk, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        is_ok =
            is_ok && pj != NULL &&
            strcmp(json_string_value(json_object_get(pj, "kid")) ?: "", f->knobs.eab_kid) == 0 &&
            payload_canon != NULL && strcmp(payload_canon, v->jwk) == 0;
        free(payload_canon);
        json_decref(payload_jwk);
        json_decref(pj);
        free(prot);
        free(payload);
        free(eab_text);
        if (!is_ok) {
            problem(r, 403, "urn:ietf:params:acme:error:externalAccountRequired",
                    "missing or bad external account binding");
            json_decref(p);
            return;
        }
    }
    json_decref(p);
    if (f->num_accounts == MAX_ITEMS) {
        problem(r, 500, "urn:ietf:params:acme:error:serverInternal", "full");
        return;
    }
    f->accounts[f->num_accounts].jwk = strdup(v->jwk);
    account_resp(f, r, 201, (int)f->num_accounts++);
}

static void handle_new_order(struct fake_ca *f, const struct verified *v, struct fake_resp *r)
{
    json_t *p = json_loads(v->payload, 0, NULL);
    json_t *ids = json_object_get(p, "identifiers");
    if (f->knobs.is_replaces_refused && json_object_get(p, "replaces") != NULL) {
        problem(r, 409, "urn:ietf:params:acme:error:alreadyReplaced", "already replaced");
        json_decref(p);
        return;
    }
    if (!json_is_array(ids) || json_array_size(ids) == 0 || json_array_size(ids) > MAX_NAMES ||
        f->num_orders == MAX_ITEMS || f->num_authzs + json_array_size(ids) > MAX_ITEMS) {
        problem(r, 400, "urn:ietf:params:acme:error:malformed", "bad identifiers");
        json_decref(p);
        return;
    }
    size_t oid = f->num_orders++;
    struct fake_order *o = &f->orders[oid];
    memset(o, 0, sizeof(*o));
    o->account = v->account;
    for (size_t i = 0; i < json_array_size(ids); i++) {
        const char *val = json_string_value(json_object_get(json_array_get(ids, i), "value"));
        const char *type = json_string_value(json_object_get(json_array_get(ids, i), "type"));
        snprintf(o->names[i], sizeof(o->names[i]), "%s", val != NULL ? val : "");
        size_t zid = f->num_authzs++;
        struct fake_authz *z = &f->authzs[zid];
        memset(z, 0, sizeof(*z));
        bool is_wild = strncmp(o->names[i], "*.", 2) == 0;
        snprintf(z->identifier, sizeof(z->identifier), "%s", o->names[i] + (is_wild ? 2 : 0));
        z->is_wildcard = is_wild;
        z->is_ip = type != NULL && strcmp(type, "ip") == 0;
        z->status = f->knobs.is_authz_valid ? 1 : 0;
        z->validated = -1;
        z->account = v->account;
        for (int t = 0; t < 3; t++) {
            uint8_t raw[16];
            RAND_bytes(raw, sizeof(raw));
            acme_b64url_encode_to(raw, sizeof(raw), z->tokens[t], sizeof(z->tokens[t]));
        }
        o->authz[i] = (int)zid;
        o->num_names++;
    }
    json_decref(p);
    char loc[160];
    snprintf(loc, sizeof(loc), "%s/order/%zu", f->origin, oid);
    json_resp(r, 201, order_json(f, oid));
    hdr_add(r, "Location", loc);
}

static void handle_chall(struct fake_ca *f, const struct verified *v, size_t zid, int t,
                         struct fake_resp *r)
{
    struct fake_authz *z = &f->authzs[zid];
    if (strcmp(v->payload, "{}") != 0) {
        problem(r, 400, "urn:ietf:params:acme:error:malformed", "challenge POST must be {}");
        return;
    }
    if (z->status != 0 || z->is_posted) {
        problem(r, 400, "urn:ietf:params:acme:error:malformed", "challenge not pending");
        return;
    }
    /* Is the response published? http-01 via the token, tls-alpn-01 via the name. */
    char thumb[ACME_THUMBPRINT_LEN + 1];
    const char *jwk = f->accounts[v->account].jwk;
    bool is_published = false;
    if (acme_jwk_thumbprint(jwk, strlen(jwk), thumb, NULL) == 0) {
        char want[128], got[256];
        snprintf(want, sizeof(want), "%s.%s", z->tokens[t], thumb);
        if (t == 0) {
            int n = acme_http01_lookup(z->tokens[t], strlen(z->tokens[t]), got, sizeof(got));
            is_published = n > 0 && strcmp(got, want) == 0;
        } else if (t == 1) {
            /* As a real CA does: an IP is looked up by its reverse-DNS SNI. */
            char sni[80];
            const char *lookup =
                acme_tlsalpn_sni_for(z->identifier, sni, sizeof(sni)) == 0 ? sni : z->identifier;
            struct acme_cert *c = acme_tlsalpn_cert_get(lookup, strlen(lookup));
            is_published = c != NULL;
            acme_cert_unref(c);
        } else {
            is_published = true;
        }
    }
    if (!is_published) {
        f->num_unpublished++;
    }
    z->is_posted = true;
    z->validated = t;
    z->countdown = f->knobs.validate_polls;
    bool is_fail = f->knobs.is_validation_failing || (f->knobs.is_solver_checked && !is_published);
    z->status = is_fail ? 2 : 1;
    char url[160];
    snprintf(url, sizeof(url), "%s/chall/%zu/%d", f->origin, zid, t);
    json_resp(r, 200,
              json_pack("{s:s, s:s, s:s, s:s}", "type", chal_types[t], "url", url, "token",
                        z->tokens[t], "status", "processing"));
    char up[160];
    snprintf(up, sizeof(up), "%s/authz/%zu", f->origin, zid);
    link_add(r, up, "up");
}

static void handle_finalize(struct fake_ca *f, const struct verified *v, size_t oid,
                            struct fake_resp *r)
{
    struct fake_order *o = &f->orders[oid];
    if (strcmp(order_status(f, o), "ready") != 0) {
        problem(r, 403, "urn:ietf:params:acme:error:orderNotReady", "order is not ready");
        return;
    }
    json_t *p = json_loads(v->payload, 0, NULL);
    const char *csr = json_string_value(json_object_get(p, "csr"));
    size_t der_len = 0;
    uint8_t *der = csr != NULL ? acme_b64url_decode(csr, strlen(csr), &der_len) : NULL;
    json_decref(p);
    if (der == NULL || issue(f, o, der, der_len) != 0) {
        free(der);
        problem(r, 400, "urn:ietf:params:acme:error:badCSR", "CSR does not match the order");
        return;
    }
    free(der);
    o->is_issued = true;
    o->countdown = f->knobs.issue_polls;
    json_resp(r, 200, order_json(f, oid));
}

static void handle_key_change(struct fake_ca *f, const struct verified *v, struct fake_resp *r)
{
    /* The payload is the inner JWS signed by the new key (RFC 8555 §7.3.5). */
    char *prot = NULL, *payload = NULL;
    size_t plen = 0;
    struct dm_err err = {0};
    if (acme_jws_verify(v->payload, strlen(v->payload), NULL, &prot, &payload, &plen, &err) != 0) {
        problem(r, 400, "urn:ietf:params:acme:error:malformed", err.msg);
        return;
    }
    json_t *pj = json_loads(prot, 0, NULL), *pl = json_loads(payload, 0, NULL);
    char kid[160];
    snprintf(kid, sizeof(kid), "%s/acct/%d", f->origin, v->account);
    char *new_jwk = json_dumps(json_object_get(pj, "jwk"), JSON_COMPACT | JSON_SORT_KEYS);
    char *old_jwk = json_dumps(json_object_get(pl, "oldKey"), JSON_COMPACT | JSON_SORT_KEYS);
    const char *url = json_string_value(json_object_get(pj, "url"));
    char want_url[160];
    snprintf(want_url, sizeof(want_url), "%s/key-change", f->origin);
    if (url == NULL || strcmp(url, want_url) != 0 || json_object_get(pj, "nonce") != NULL ||
        strcmp(json_string_value(json_object_get(pl, "account")) ?: "", kid) != 0 ||
        old_jwk == NULL || strcmp(old_jwk, f->accounts[v->account].jwk) != 0 || new_jwk == NULL) {
        problem(r, 400, "urn:ietf:params:acme:error:malformed", "bad key change");
    } else {
        free(f->accounts[v->account].jwk);
        f->accounts[v->account].jwk = new_jwk;
        new_jwk = NULL;
        json_resp(r, 200, json_pack("{s:s}", "status", "valid"));
    }
    free(new_jwk);
    free(old_jwk);
    json_decref(pj);
    json_decref(pl);
    free(prot);
    free(payload);
}

static void dispatch(struct fake_ca *f, const struct fake_req *q, struct fake_resp *r)
{
    size_t a, b;
    char ep[32] = "";
    sscanf(q->path, "/%31[a-z-]", ep);
    int epi = endpoint_index(ep);
    if (epi < 0) {
        problem(r, 404, "about:blank", "not found");
        return;
    }
    f->counts[epi]++;
    if (strcmp(ep, "dir") == 0) {
        handle_dir(f, r);
        return;
    }
    if (strcmp(ep, "nonce") == 0) {
        r->status = strcmp(q->method, "HEAD") == 0 ? 200 : 204;
        return;
    }
    if (strcmp(ep, "renewal-info") == 0) {
        json_resp(r, 200,
                  json_pack("{s:{s:s, s:s}, s:s}", "suggestedWindow", "start",
                            "2030-01-01T00:00:00Z", "end", "2030-01-03T00:00:00Z", "explanationURL",
                            "https://ca.example/why"));
        hdr_add(r, "Retry-After", "21600");
        return;
    }
    if (strcmp(q->method, "POST") != 0) {
        problem(r, 405, "urn:ietf:params:acme:error:malformed", "POST only");
        return;
    }
    struct verified v;
    if (verify(f, q, r, &v) != 0) {
        json_decref(v.prot);
        free(v.payload);
        return;
    }
    record(f, epi, v.payload);
    bool needs_account = strcmp(ep, "new-acct") != 0;
    if (needs_account && v.account < 0) {
        problem(r, 400, "urn:ietf:params:acme:error:malformed", "kid required");
    } else if (strcmp(ep, "new-acct") == 0) {
        handle_new_acct(f, &v, r);
    } else if (strcmp(ep, "new-order") == 0) {
        handle_new_order(f, &v, r);
    } else if (strcmp(ep, "key-change") == 0) {
        handle_key_change(f, &v, r);
    } else if (strcmp(ep, "acct") == 0) {
        json_t *p = json_loads(v.payload, 0, NULL);
        if (strcmp(json_string_value(json_object_get(p, "status")) ?: "", "deactivated") == 0) {
            f->accounts[v.account].is_deactivated = true;
        }
        json_decref(p);
        json_resp(r, 200,
                  json_pack("{s:s}", "status",
                            f->accounts[v.account].is_deactivated ? "deactivated" : "valid"));
    } else if (sscanf(q->path, "/authz/%zu", &a) == 1 && a < f->num_authzs) {
        if (f->num_poll_times < MAX_POLLS) {
            f->poll_times[f->num_poll_times++] = dm_time_mono_us();
        }
        json_resp(r, 200, authz_json(f, a));
        struct fake_authz *z = &f->authzs[a];
        if (z->is_posted && z->countdown > 0) {
            z->countdown--;
        }
    } else if (sscanf(q->path, "/chall/%zu/%zu", &a, &b) == 2 && a < f->num_authzs && b < 3) {
        handle_chall(f, &v, a, (int)b, r);
    } else if (sscanf(q->path, "/finalize/%zu", &a) == 1 && a < f->num_orders) {
        handle_finalize(f, &v, a, r);
    } else if (sscanf(q->path, "/order/%zu", &a) == 1 && a < f->num_orders) {
        json_resp(r, 200, order_json(f, a));
        struct fake_order *o = &f->orders[a];
        if (o->is_issued && o->countdown > 0) {
            o->countdown--;
        }
    } else if (sscanf(q->path, "/cert/%zu", &a) == 1 && a < f->num_orders &&
               f->orders[a].chain != NULL) {
        bool is_alt = strstr(q->path, "/alt") != NULL;
        r->status = 200;
        r->content_type = "application/pem-certificate-chain";
        r->body = strdup(is_alt ? f->orders[a].alt_chain : f->orders[a].chain);
        if (f->knobs.has_alt_chain && !is_alt) {
            char alt[160];
            snprintf(alt, sizeof(alt), "%s/cert/%zu/alt", f->origin, a);
            link_add(r, alt, "alternate");
        }
    } else {
        problem(r, 404, "urn:ietf:params:acme:error:malformed", "no such resource");
    }
    json_decref(v.prot);
    free(v.payload);
}

/* ---- connections ------------------------------------------------------------------ */

static void conn_close(struct fake_ca *f, struct bufferevent *bev)
{
    for (int i = 0; i < MAX_CONNS; i++) {
        if (f->conns[i] == bev) {
            f->conns[i] = NULL;
        }
    }
    bufferevent_free(bev);
}

static void conn_on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)what;
    conn_close(arg, bev);
}

static void conn_on_write_close(struct bufferevent *bev, void *arg)
{
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        conn_close(arg, bev);
    }
}

static void send_resp(struct bufferevent *bev, struct fake_ca *f, const struct fake_req *q,
                      struct fake_resp *r, bool has_nonce)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    size_t len = r->body != NULL ? strlen(r->body) : 0;
    evbuffer_add_printf(out, "HTTP/1.1 %d X\r\n", r->status);
    if (r->content_type != NULL) {
        evbuffer_add_printf(out, "Content-Type: %s\r\n", r->content_type);
    }
    if (has_nonce) {
        evbuffer_add_printf(out, "Replay-Nonce: %s\r\n", nonce_new(f));
    }
    evbuffer_add_printf(out, "%sContent-Length: %zu\r\n\r\n", r->headers, len);
    if (len > 0 && strcmp(q->method, "HEAD") != 0) {
        evbuffer_add(out, r->body, len);
    }
}

/* handle_script answers from the script: 0 no match, 1 answered, 2 closing. */
static int handle_script(struct fake_ca *f, struct bufferevent *bev, const struct fake_req *q)
{
    for (size_t i = 0; i < f->num_scripts; i++) {
        struct fake_script *s = &f->scripts[i];
        if (s->count == 0 || strncmp(q->path, s->prefix, strlen(s->prefix)) != 0) {
            continue;
        }
        s->count--;
        char ep[32] = "";
        sscanf(q->path, "/%31[a-z-]", ep);
        int epi = endpoint_index(ep);
        if (epi >= 0) {
            f->counts[epi]++;
        }
        if (s->is_raw) {
            if (s->raw != NULL) {
                evbuffer_add(bufferevent_get_output(bev), s->raw, s->raw_len);
            }
            if (s->is_close) {
                if (s->raw == NULL) {
                    conn_close(f, bev);
                } else {
                    bufferevent_setcb(bev, NULL, conn_on_write_close, conn_on_event, f);
                    bufferevent_disable(bev, EV_READ);
                }
                return 2;
            }
            return 1;
        }
        struct fake_resp r = {.status = s->status, .content_type = s->content_type};
        snprintf(r.headers, sizeof(r.headers), "%s", s->headers != NULL ? s->headers : "");
        r.body = s->body != NULL ? strdup(s->body) : NULL;
        send_resp(bev, f, q, &r, true);
        free(r.body);
        return 1;
    }
    return 0;
}

static void conn_on_read(struct bufferevent *bev, void *arg)
{
    struct fake_ca *f = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (end.pos < 0) {
            return;
        }
        size_t head_len = (size_t)end.pos + 4;
        char *head = malloc(head_len + 1);
        evbuffer_copyout(in, head, head_len);
        head[head_len] = '\0';
        struct fake_req q = {0};
        size_t content_length = 0;
        sscanf(head, "%15s %511s", q.method, q.path);
        for (char *line = strstr(head, "\r\n"); line != NULL && line[2] != '\r';
             line = strstr(line + 2, "\r\n")) {
            if (strncasecmp(line + 2, "Content-Length:", 15) == 0) {
                content_length = strtoul(line + 17, NULL, 10);
            } else if (strncasecmp(line + 2, "Content-Type:", 13) == 0) {
                sscanf(line + 15, " %127[^\r]", q.content_type);
            }
        }
        free(head);
        if (evbuffer_get_length(in) < head_len + content_length) {
            return;
        }
        evbuffer_drain(in, head_len);
        q.body = malloc(content_length + 1);
        evbuffer_remove(in, q.body, content_length);
        q.body[content_length] = '\0';
        q.body_len = content_length;
        int scripted = handle_script(f, bev, &q);
        if (scripted == 2) {
            free(q.body);
            return; /* connection closing */
        }
        if (scripted == 0) {
            struct fake_resp r = {0};
            dispatch(f, &q, &r);
            bool has_nonce =
                strncmp(q.path, "/dir", 4) != 0 && strncmp(q.path, "/renewal-info", 13) != 0;
            send_resp(bev, f, &q, &r, has_nonce);
            free(r.body);
        }
        free(q.body);
    }
}

static void on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg)
{
    (void)lis;
    (void)sa;
    (void)socklen;
    struct fake_ca *f = arg;
    struct bufferevent *bev = bufferevent_socket_new(f->base, fd, BEV_OPT_CLOSE_ON_FREE);
    int slot = 0;
    while (slot < MAX_CONNS && f->conns[slot] != NULL) {
        slot++;
    }
    if (slot == MAX_CONNS) {
        bufferevent_free(bev);
        return;
    }
    f->conns[slot] = bev;
    bufferevent_setcb(bev, conn_on_read, NULL, conn_on_event, f);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

struct fake_ca *fake_ca_new(struct event_base *base)
{
    struct fake_ca *f = calloc(1, sizeof(*f));
    f->base = base;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    f->lis = evconnlistener_new_bind(base, on_accept, f, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                     16, (struct sockaddr *)&sin, sizeof(sin));
    if (f->lis == NULL) {
        free(f);
        return NULL;
    }
    struct sockaddr_in bound;
    socklen_t blen = sizeof(bound);
    getsockname(evconnlistener_get_fd(f->lis), (struct sockaddr *)&bound, &blen);
    snprintf(f->origin, sizeof(f->origin), "http://127.0.0.1:%d", ntohs(bound.sin_port));
    snprintf(f->dir_url, sizeof(f->dir_url), "%s/dir", f->origin);
    f->root_key = key_new();
    f->int_key = key_new();
    f->root2_key = key_new();
    f->root = cert_make(f->root_key, "Fake Root X1", NULL, f->root_key, true);
    X509 *root2 = cert_make(f->root2_key, FAKE_CA_ALT_ROOT_CN, NULL, f->root2_key, true);
    f->inter = cert_make(f->int_key, "Fake Int A", f->root, f->root_key, true);
    f->inter_alt = cert_make(f->int_key, "Fake Int A", root2, f->root2_key, true);
    X509_free(root2);
    return f;
}

void fake_ca_free(struct fake_ca *f)
{
    if (f == NULL) {
        return;
    }
    evconnlistener_free(f->lis);
    for (int i = 0; i < MAX_CONNS; i++) {
        if (f->conns[i] != NULL) {
            bufferevent_free(f->conns[i]);
        }
    }
    for (size_t i = 0; i < f->num_scripts; i++) {
        free(f->scripts[i].content_type);
        free(f->scripts[i].headers);
        free(f->scripts[i].body);
        free(f->scripts[i].raw);
    }
    for (size_t i = 0; i < f->num_accounts; i++) {
        free(f->accounts[i].jwk);
    }
    for (size_t i = 0; i < f->num_orders; i++) {
        free(f->orders[i].chain);
        free(f->orders[i].alt_chain);
    }
    for (int i = 0; i < 16; i++) {
        free(f->last_payload[i]);
    }
    X509_free(f->root);
    X509_free(f->inter);
    X509_free(f->inter_alt);
    EVP_PKEY_free(f->root_key);
    EVP_PKEY_free(f->int_key);
    EVP_PKEY_free(f->root2_key);
    free(f);
}

struct fake_ca_knobs *fake_ca_knobs(struct fake_ca *f)
{
    return &f->knobs;
}

const char *fake_ca_dir_url(const struct fake_ca *f)
{
    return f->dir_url;
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

void fake_ca_script(struct fake_ca *f, const char *path_prefix, unsigned count, int status,
                    const char *content_type, const char *extra_headers, const char *body)
{
    struct fake_script *s = &f->scripts[f->num_scripts++];
    snprintf(s->prefix, sizeof(s->prefix), "%s", path_prefix);
    s->count = count;
    s->status = status;
    s->content_type = dup_or_null(content_type);
    s->headers = dup_or_null(extra_headers);
    s->body = dup_or_null(body);
}

void fake_ca_script_raw(struct fake_ca *f, const char *path_prefix, unsigned count, const char *raw,
                        size_t raw_len, bool is_close)
{
    struct fake_script *s = &f->scripts[f->num_scripts++];
    snprintf(s->prefix, sizeof(s->prefix), "%s", path_prefix);
    s->count = count;
    s->is_raw = true;
    s->is_close = is_close;
    if (raw != NULL) {
        s->raw = malloc(raw_len);
        memcpy(s->raw, raw, raw_len);
        s->raw_len = raw_len;
    }
}

unsigned fake_ca_count(const struct fake_ca *f, const char *endpoint)
{
    int i = endpoint_index(endpoint);
    return i >= 0 ? f->counts[i] : 0;
}

unsigned fake_ca_num_bad_nonce(const struct fake_ca *f)
{
    return f->num_bad_nonce;
}

const char *fake_ca_last_payload(const struct fake_ca *f, const char *endpoint)
{
    int i = endpoint_index(endpoint);
    return i >= 0 ? f->last_payload[i] : NULL;
}

const uint64_t *fake_ca_authz_poll_times(const struct fake_ca *f, size_t *out_num)
{
    *out_num = f->num_poll_times;
    return f->poll_times;
}

unsigned fake_ca_challenge_posts_unpublished(const struct fake_ca *f)
{
    return f->num_unpublished;
}

void fake_ca_forget_accounts(struct fake_ca *f)
{
    for (size_t i = 0; i < f->num_accounts; i++) {
        free(f->accounts[i].jwk);
        f->accounts[i].jwk = NULL;
    }
}

static void run_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

bool fake_run(struct event_base *base, const bool *done, int timeout_ms)
{
    uint64_t end = dm_time_mono_us() + (uint64_t)timeout_ms * 1000;
    struct event *tick = event_new(base, -1, EV_PERSIST, run_on_deadline, base);
    struct timeval tv = {0, 2000};
    event_add(tick, &tv);
    while (!*done && dm_time_mono_us() < end) {
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(tick);
    return *done;
}
