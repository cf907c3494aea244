/* The order state machine (see order.h) and what it needs around it: the
 * order/authorization parsers, the built-in solvers over acme/solver.h, and
 * the certificate key + CSR. One struct acme_order runs acme_order_step(),
 * the only place that assigns its state; each authorization runs a smaller
 * machine of its own (fetch -> present -> respond -> poll) in parallel.
 * Invariants: every reply is copied before the machine steps on it; callbacks
 * from the client, solvers and timers only record results and step (authz) or
 * kick the order's deferred event, so the order is freed only from its own
 * events; every published challenge response is cleaned up exactly once.
 * Design and timings: docs/acme.md. */
#include "acme/order.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>
#include <openssl/bio.h>
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

#include "acme/account.h"
#include "acme/acme.h"
#include "acme/cert_int.h"
#include "acme/jws.h"
#include "acme/solver.h"
#include "proxy/core/err.h"
#include "proxy/core/log.h"
#include "proxy/core/time.h"

/* finalize answered orderNotReady, or the order fell back to ready: the
 * order is fetched and finalized again this many times at most. */
#define ORDER_MAX_FINALIZE 3

/* ---- names ------------------------------------------------------------------ */

static const char *const status_names[] = {"unknown",     "pending", "ready",
                                           "processing",  "valid",   "invalid",
                                           "deactivated", "expired", "revoked"};

const char *acme_status_name(enum acme_status s)
{
    return (size_t)s < sizeof(status_names) / sizeof(status_names[0]) ? status_names[s] : "unknown";
}

static enum acme_status status_parse(const char *s)
{
    for (size_t i = 1; s != NULL && i < sizeof(status_names) / sizeof(status_names[0]); i++) {
        if (strcmp(s, status_names[i]) == 0) {
            return (enum acme_status)i;
        }
    }
    return ACME_STATUS_UNKNOWN;
}

static const char *const challenge_names[] = {"http-01", "tls-alpn-01", "dns-01", "other"};

const char *acme_challenge_type_name(enum acme_challenge_type t)
{
    return (size_t)t < 4 ? challenge_names[t] : "other";
}

static enum acme_challenge_type challenge_type_parse(const char *s)
{
    for (int i = 0; s != NULL && i < ACME_CHALLENGE_OTHER; i++) {
        if (strcmp(s, challenge_names[i]) == 0) {
            return (enum acme_challenge_type)i;
        }
    }
    return ACME_CHALLENGE_OTHER;
}

static const char *const order_state_names[] = {
    "new",      "directory",   "account",  "new-order", "authorize", "wait-ready",
    "finalize", "wait-issued", "download", "alternate", "done",      "failed"};

const char *acme_order_state_name(enum acme_order_state s)
{
    return (size_t)s < sizeof(order_state_names) / sizeof(order_state_names[0])
               ? order_state_names[s]
               : "unknown";
}

/* ---- resource parsers ----------------------------------------------------------- */

static bool is_http_url(const char *s)
{
    return s != NULL && (strncmp(s, "https://", 8) == 0 || strncmp(s, "http://", 7) == 0);
}

/* opt_time reads an optional RFC 3339 member; a malformed one reads as absent. */
static time_t opt_time(const json_t *o, const char *name)
{
    time_t t = 0;
    if (acme_time_parse(json_string_value(json_object_get(o, name)), &t) != 0) {
        t = 0;
    }
    return t;
}

void acme_order_resource_cleanup(struct acme_order_resource *r)
{
    acme_strings_free(r->authorizations, r->num_authorizations);
    free(r->finalize);
    free(r->certificate);
    memset(r, 0, sizeof(*r));
}

static int order_res_from_json(struct acme_order_resource *out, const json_t *j, struct dm_err *err)
{
    memset(out, 0, sizeof(*out));
    if (!json_is_object(j)) {
        dm_err_set(err, DM_E_PROTO, "ACME order: not a JSON object");
        return -1;
    }
    out->status = status_parse(json_string_value(json_object_get(j, "status")));
    const char *fin = json_string_value(json_object_get(j, "finalize"));
    const json_t *authzs = json_object_get(j, "authorizations");
    if (out->status == ACME_STATUS_UNKNOWN || !is_http_url(fin) || !json_is_array(authzs) ||
        json_array_size(authzs) > ACME_ORDER_MAX_NAMES) {
        dm_err_set(err, DM_E_PROTO,
                   "ACME order: bad or missing status, finalize or "
                   "authorizations");
        return -1;
    }
    out->expires = opt_time(j, "expires");
    const char *cert = json_string_value(json_object_get(j, "certificate"));
    if ((out->finalize = strdup(fin)) == NULL ||
        (is_http_url(cert) && (out->certificate = strdup(cert)) == NULL)) {
        goto nomem;
    }
    size_t n = json_array_size(authzs);
    if (n > 0 && (out->authorizations = calloc(n, sizeof(char *))) == NULL) {
        goto nomem;
    }
    for (size_t i = 0; i < n; i++) {
        const char *u = json_string_value(json_array_get(authzs, i));
        if (!is_http_url(u)) {
            dm_err_set(err, DM_E_PROTO, "ACME order: authorization %zu is not a URL", i);
            acme_order_resource_cleanup(out);
            return -1;
        }
        if ((out->authorizations[i] = strdup(u)) == NULL) {
            goto nomem;
        }
        out->num_authorizations++;
    }
    const json_t *e = json_object_get(j, "error");
    if (json_is_object(e)) {
        out->has_error = true;
        acme_problem_from_json(&out->error, 0, e);
    }
    return 0;
nomem:
    acme_order_resource_cleanup(out);
    dm_err_set(err, DM_E_NOMEM, "out of memory");
    return -1;
}

int acme_order_resource_parse(struct acme_order_resource *out, const char *json, size_t len,
                              struct dm_err *err)
{
    json_t *j = json_loadb(json, len, 0, NULL);
    int rc = order_res_from_json(out, j, err);
    json_decref(j);
    return rc;
}

void acme_authz_cleanup(struct acme_authz_resource *a)
{
    for (size_t i = 0; i < a->num_challenges; i++) {
        free(a->challenges[i].type_name);
        free(a->challenges[i].url);
        free(a->challenges[i].token);
    }
    free(a->challenges);
    free(a->identifier_type);
    free(a->identifier);
    memset(a, 0, sizeof(*a));
}

static int authz_res_from_json(struct acme_authz_resource *out, const json_t *j, struct dm_err *err)
{
    memset(out, 0, sizeof(*out));
    const json_t *id = json_object_get(j, "identifier");
    const char *itype = json_string_value(json_object_get(id, "type"));
    const char *ivalue = json_string_value(json_object_get(id, "value"));
    const json_t *chals = json_object_get(j, "challenges");
    out->status = status_parse(json_string_value(json_object_get(j, "status")));
    if (!json_is_object(j) || itype == NULL || ivalue == NULL || ivalue[0] == '\0' ||
        strlen(ivalue) > ACME_NAME_MAX || out->status == ACME_STATUS_UNKNOWN ||
        !json_is_array(chals) || json_array_size(chals) > ACME_AUTHZ_MAX_CHALLENGES) {
        dm_err_set(err, DM_E_PROTO,
                   "ACME authorization: bad or missing identifier, status or "
                   "challenges");
        return -1;
    }
    out->is_wildcard = json_is_true(json_object_get(j, "wildcard"));
    out->expires = opt_time(j, "expires");
    if ((out->identifier_type = strdup(itype)) == NULL ||
        (out->identifier = strdup(ivalue)) == NULL) {
        goto nomem;
    }
    size_t n = json_array_size(chals);
    if (n > 0 && (out->challenges = calloc(n, sizeof(*out->challenges))) == NULL) {
        goto nomem;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *c = json_array_get(chals, i);
        const char *type = json_string_value(json_object_get(c, "type"));
        const char *url = json_string_value(json_object_get(c, "url"));
        const char *token = json_string_value(json_object_get(c, "token"));
        if (type == NULL || !is_http_url(url)) {
            continue; /* RFC 8555 §7.1.4: ignore what we cannot use */
        }
        struct acme_challenge_resource *ch = &out->challenges[out->num_challenges];
        ch->type = challenge_type_parse(type);
        ch->status = status_parse(json_string_value(json_object_get(c, "status")));
        out->num_challenges++;
        if ((ch->type_name = strdup(type)) == NULL || (ch->url = strdup(url)) == NULL ||
            (token != NULL && (ch->token = strdup(token)) == NULL)) {
            goto nomem;
        }
        const json_t *e = json_object_get(c, "error");
        if (json_is_object(e)) {
            ch->has_error = true;
            acme_problem_from_json(&ch->error, 0, e);
        }
    }
    return 0;
nomem:
    acme_authz_cleanup(out);
    dm_err_set(err, DM_E_NOMEM, "out of memory");
    return -1;
}

int acme_authz_parse(struct acme_authz_resource *out, const char *json, size_t len,
                     struct dm_err *err)
{
    json_t *j = json_loadb(json, len, 0, NULL);
    int rc = -1;
    if (json_is_object(j)) {
        rc = authz_res_from_json(out, j, err);
    } else {
        memset(out, 0, sizeof(*out));
        dm_err_set(err, DM_E_PROTO, "ACME authorization: not a JSON object");
    }
    json_decref(j);
    return rc;
}

/* ---- built-in solvers (acme/solver.h registry, served by the data plane) ---- */

static int http01_present(void *ctx, const struct acme_challenge_info *ch,
                          acme_solver_ready_cb ready, void *ready_arg, struct dm_err *err)
{
    (void)ctx;
    (void)ready;
    (void)ready_arg;
    if (acme_solver_http01_put(ch->token, ch->key_auth) != 0) {
        dm_err_set(err, DM_E_NOMEM, "http-01: out of memory");
        return -1;
    }
    return 0;
}

static void http01_cleanup(void *ctx, const struct acme_challenge_info *ch)
{
    (void)ctx;
    acme_solver_http01_remove(ch->token);
}

static bool tlsalpn01_can_solve(void *ctx, const struct acme_challenge_info *ch)
{
    (void)ctx;
    return !ch->is_wildcard; /* IPs: the registry keys them by reverse-DNS name */
}

static int tlsalpn01_present(void *ctx, const struct acme_challenge_info *ch,
                             acme_solver_ready_cb ready, void *ready_arg, struct dm_err *err)
{
    (void)ctx;
    (void)ready;
    (void)ready_arg;
    uint8_t digest[ACME_TLSALPN01_DIGEST_LEN];
    acme_key_authorization_tlsalpn01(ch->key_auth, digest);
    return acme_solver_tlsalpn_put(ch->identifier, digest, err);
}

static void tlsalpn01_cleanup(void *ctx, const struct acme_challenge_info *ch)
{
    (void)ctx;
    acme_solver_tlsalpn_remove(ch->identifier);
}

static const struct acme_solver_ops solver_http01 = {
    .type = ACME_CHALLENGE_HTTP01,
    .present = http01_present,
    .cleanup = http01_cleanup,
};

static const struct acme_solver_ops solver_tlsalpn01 = {
    .type = ACME_CHALLENGE_TLSALPN01,
    .can_solve = tlsalpn01_can_solve,
    .present = tlsalpn01_present,
    .cleanup = tlsalpn01_cleanup,
};

const struct acme_solver_ops *acme_solver_builtin(enum acme_challenge_type t)
{
    switch (t) {
    case ACME_CHALLENGE_HTTP01:
        return &solver_http01;
    case ACME_CHALLENGE_TLSALPN01:
        return &solver_tlsalpn01;
    default:
        return NULL;
    }
}

/* ---- the order ------------------------------------------------------------------- */

enum step {
    STEP_CONTINUE = 0,
    STEP_WAIT,
    STEP_DONE,
    STEP_FAIL,
};

/* The copy of one reply a state handler consumes. */
struct order_reply {
    bool is_ready; /* a reply (success or failure) arrived */
    bool is_ok;
    int status;
    json_t *json; /* owned: parsed body, NULL if not JSON */
    char *body;   /* owned: raw body (certificate downloads only) */
    size_t body_len;
    char *location;    /* owned or NULL */
    char **alternates; /* owned: Link rel="alternate" */
    size_t num_alternates;
    uint32_t retry_after_s;
    bool has_retry_after;
    struct acme_problem prob;
    struct dm_err err;
};

enum authz_state {
    AUTHZ_FETCH = 0, /* POST-as-GET the authorization */
    AUTHZ_PRESENT,   /* solver publishes the response */
    AUTHZ_RESPOND,   /* POST {} to the challenge */
    AUTHZ_POLL,      /* wait, POST-as-GET the authorization, until valid/invalid */
    AUTHZ_VALID,
    AUTHZ_INVALID,
};

static const char *const authz_state_names[] = {"fetch", "present", "respond",
                                                "poll",  "valid",   "invalid"};

struct order_authz {
    struct acme_order *o; /* borrowed: owner */
    enum authz_state state;
    char *url; /* owned */
    struct acme_authz_resource res;
    const struct acme_solver *solver; /* borrowed from o->solvers */
    struct acme_challenge_info ch;    /* strings below */
    char *identifier;                 /* owned */
    char *token;                      /* owned */
    char *key_auth;                   /* owned */
    char *challenge_url;              /* owned */
    enum acme_status challenge_status;
    bool is_presented; /* cleanup is due */
    bool is_present_ready;
    bool is_sent;      /* a request is in flight or answered */
    bool is_poll_wait; /* the poll timer runs */
    bool has_waited;   /* the first poll delay passed */
    bool is_nudged;    /* the poll timer was shortened by acme_order_nudge */
    bool is_reused;
    struct dm_err present_err;
    struct acme_call *call; /* owned while in flight */
    struct event *timer;    /* owned: poll delay */
    struct order_reply reply;
    unsigned num_polls;
    struct acme_problem prob; /* failure */
    struct dm_err err;
};

/* Why a state hands over to another than its usual successor. */
enum order_redo {
    REDO_NONE = 0,
    REDO_ACCOUNT, /* accountDoesNotExist: register again */
    REDO_SAME,    /* repeat the state (newOrder without "replaces", next alternate) */
    REDO_READY,   /* finalize said orderNotReady */
};

struct acme_order {
    struct acme_client *c;  /* borrowed */
    struct acme_account *a; /* borrowed */
    enum acme_order_state state;
    char **names; /* owned: normalized, unique */
    size_t num_names;
    struct acme_solver *solvers; /* owned array (ops/ctx borrowed) */
    size_t num_solvers;
    enum acme_cert_key_type key_type;
    char *profile, *replaces, *preferred_chain; /* owned or NULL */
    time_t not_before, not_after;
    uint32_t timeout_ms, poll_first_ms, poll_max_ms;
    uint64_t started_us, deadline_us; /* monotonic */
    struct event *kick;               /* owned: deferred step */
    struct event *poll;               /* owned: order poll delay */
    struct event *deadline;           /* owned: whole-order timeout */
    struct acme_call *call;           /* owned while in flight */
    struct acme_account_op *acct_op;  /* owned while in flight */
    bool is_acct_done;
    bool is_sent;
    bool is_poll_wait;
    bool is_in_callback;
    bool is_replaces_dropped;
    bool is_timed_out; /* the deadline fired */
    enum order_redo redo;
    unsigned num_polls, num_account_resets, num_finalizes;
    struct order_reply reply;
    char *order_url; /* owned */
    struct acme_order_resource res;
    struct order_authz *authz; /* owned array */
    size_t num_authz;
    bool is_authz_started;
    char *key_pem;   /* owned, secret: acme_pem_free_secret */
    char *chain_pem; /* owned */
    size_t chain_len;
    char **alternates; /* owned */
    size_t num_alternates, next_alternate;
    time_t not_before_cert, not_after_cert;
    struct acme_problem prob; /* failure */
    struct dm_err err;
    acme_order_done_cb cb;
    void *arg;
};

static void order_step(struct acme_order *o);

static void reply_clear(struct order_reply *r)
{
    json_decref(r->json);
    free(r->body);
    free(r->location);
    acme_strings_free(r->alternates, r->num_alternates);
    memset(r, 0, sizeof(*r));
}

/* reply_take copies what the machine needs from a client callback. */
static void reply_take(struct order_reply *r, const struct acme_response *resp,
                       const struct acme_problem *prob, const struct dm_err *err, bool keep_body)
{
    reply_clear(r);
    r->is_ready = true;
    if (resp == NULL) {
        r->prob = *prob;
        r->err = *err;
        return;
    }
    r->is_ok = true;
    r->status = resp->status;
    r->json = json_loadb(resp->body, resp->body_len, 0, NULL);
    r->retry_after_s = resp->retry_after_s;
    r->has_retry_after = resp->has_retry_after;
    if ((resp->location != NULL && (r->location = strdup(resp->location)) == NULL) ||
        (keep_body && (r->body = malloc(resp->body_len + 1)) == NULL)) {
        goto nomem;
    }
    if (keep_body) {
        memcpy(r->body, resp->body, resp->body_len + 1);
        r->body_len = resp->body_len;
    }
    if (resp->num_link_alternate > 0) {
        r->alternates = calloc(resp->num_link_alternate, sizeof(char *));
        if (r->alternates == NULL) {
            goto nomem;
        }
        for (size_t i = 0; i < resp->num_link_alternate; i++) {
            if ((r->alternates[i] = strdup(resp->link_alternate[i])) == NULL) {
                goto nomem;
            }
            r->num_alternates++;
        }
    }
    return;
nomem:
    reply_clear(r);
    r->is_ready = true;
    dm_err_set(&r->err, DM_E_NOMEM, "out of memory");
    acme_problem_from_err(&r->prob, &r->err);
}

static uint32_t poll_delay_ms(const struct acme_order *o, unsigned num_polls,
                              const struct order_reply *r)
{
    if (r != NULL && r->has_retry_after) {
        /* RFC 8555 §7.5.1: the server's hint wins, within the order deadline. */
        uint64_t ms = (uint64_t)r->retry_after_s * 1000;
        return ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
    }
    uint64_t ms = (uint64_t)o->poll_first_ms << (num_polls < 16 ? num_polls : 16);
    return ms > o->poll_max_ms ? o->poll_max_ms : (uint32_t)ms;
}

static void timer_arm(struct event *ev, uint32_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

static void order_kick(struct acme_order *o)
{
    event_active(o->kick, EV_TIMEOUT, 1);
}

static enum step order_fail_err(struct acme_order *o)
{
    acme_problem_from_err(&o->prob, &o->err);
    return STEP_FAIL;
}

/* order_fail_reply fails with the problem of a failed reply. */
static enum step order_fail_reply(struct acme_order *o, const char *what)
{
    o->prob = o->reply.prob;
    o->err = o->reply.err;
    DM_LOG_DBG("acme", "order=%s: %s failed: %s", o->names[0], what, o->err.msg);
    return STEP_FAIL;
}

/* ---- authorizations ----------------------------------------------------------- */

static void authz_step(struct order_authz *z);

static void authz_on_reply(const struct acme_response *resp, const struct acme_problem *prob,
                           const struct dm_err *err, void *arg)
{
    struct order_authz *z = arg;
    z->call = NULL;
    reply_take(&z->reply, resp, prob, err, false);
    authz_step(z);
}

static void authz_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct order_authz *z = arg;
    z->is_poll_wait = false;
    authz_step(z);
}

static void authz_on_ready(const struct dm_err *err, void *arg)
{
    struct order_authz *z = arg;
    z->is_present_ready = true;
    if (err != NULL) {
        z->present_err = *err;
    }
    authz_step(z);
}

/* authz_post starts a signed POST of payload to url with the reply for z. */
static enum step authz_post(struct order_authz *z, const char *url, const char *payload)
{
    struct acme_order *o = z->o;
    struct acme_call_opts co = {.deadline_us = o->deadline_us};
    z->call = acme_client_post_start(o->c, acme_account_key(o->a), acme_account_kid(o->a), url,
                                     payload, &co, authz_on_reply, z, &z->err);
    if (z->call == NULL) {
        acme_problem_from_err(&z->prob, &z->err);
        return STEP_FAIL;
    }
    z->is_sent = true;
    return STEP_WAIT;
}

static enum step authz_fail_reply(struct order_authz *z)
{
    z->prob = z->reply.prob;
    z->err = z->reply.err;
    return STEP_FAIL;
}

/* authz_parse_reply replaces z->res with the authorization in the reply. */
static int authz_parse_reply(struct order_authz *z)
{
    acme_authz_cleanup(&z->res);
    if (authz_res_from_json(&z->res, z->reply.json, &z->err) != 0) {
        dm_err_set(&z->err, DM_E_PROTO, "%s: %s", z->url, z->err.msg);
        acme_problem_from_err(&z->prob, &z->err);
        return -1;
    }
    return 0;
}

/* authz_invalid fills the failure of an authorization that is not valid,
 * with the CA's own words from the challenge error (RFC 8555 §8). */
static enum step authz_invalid(struct order_authz *z)
{
    const struct acme_challenge_resource *pick = NULL;
    for (size_t i = 0; i < z->res.num_challenges; i++) {
        const struct acme_challenge_resource *c = &z->res.challenges[i];
        if (c->has_error &&
            (pick == NULL || (z->challenge_url != NULL && strcmp(c->url, z->challenge_url) == 0))) {
            pick = c;
        }
    }
    if (pick != NULL) {
        z->prob = pick->error;
        dm_err_set(&z->err, DM_E_ACME, "authorization for %s is %s: %s %s: %s", z->res.identifier,
                   acme_status_name(z->res.status), pick->type_name,
                   acme_problem_short(&pick->error), pick->error.detail);
    } else {
        dm_err_set(&z->err, DM_E_ACME, "authorization for %s is %s", z->res.identifier,
                   acme_status_name(z->res.status));
        acme_problem_from_err(&z->prob, &z->err);
        z->prob.retryable = false;
    }
    return STEP_FAIL;
}

/* authz_choose picks the challenge: the first configured solver, in order,
 * whose type the CA offers and which can solve this identifier. */
static enum step authz_choose(struct order_authz *z)
{
    struct acme_order *o = z->o;
    const struct acme_authz_resource *res = &z->res;
    unsigned char ip[16];
    size_t ip_len;
    for (size_t s = 0; s < o->num_solvers; s++) {
        const struct acme_solver *sv = &o->solvers[s];
        for (size_t i = 0; i < res->num_challenges; i++) {
            const struct acme_challenge_resource *c = &res->challenges[i];
            if (c->type != sv->ops->type || c->token == NULL || c->status == ACME_STATUS_INVALID) {
                continue;
            }
            struct acme_challenge_info probe = {
                .type = c->type,
                .identifier = res->identifier,
                .is_wildcard = res->is_wildcard,
                .is_ip = strcmp(res->identifier_type, "ip") == 0 ||
                         acme_name_is_ip(res->identifier, ip, &ip_len),
                .token = c->token,
            };
            if (sv->ops->can_solve != NULL && !sv->ops->can_solve(sv->ctx, &probe)) {
                continue;
            }
            z->key_auth = acme_key_authorization(acme_account_key(o->a), c->token, &z->err);
            if (z->key_auth == NULL || (z->identifier = strdup(res->identifier)) == NULL ||
                (z->token = strdup(c->token)) == NULL ||
                (z->challenge_url = strdup(c->url)) == NULL) {
                if (z->key_auth != NULL) {
                    dm_err_set(&z->err, DM_E_NOMEM, "out of memory");
                }
                acme_problem_from_err(&z->prob, &z->err);
                return STEP_FAIL;
            }
            z->solver = sv;
            z->challenge_status = c->status;
            z->ch = probe;
            z->ch.identifier = z->identifier;
            z->ch.token = z->token;
            z->ch.key_auth = z->key_auth;
            return STEP_CONTINUE;
        }
    }
    char offered[128] = "", configured[128] = "";
    for (size_t i = 0; i < res->num_challenges; i++) {
        size_t n = strlen(offered);
        snprintf(offered + n, sizeof(offered) - n, "%s%.20s", n ? ", " : "",
                 res->challenges[i].type_name);
    }
    for (size_t s = 0; s < o->num_solvers; s++) {
        size_t n = strlen(configured);
        snprintf(configured + n, sizeof(configured) - n, "%s%s", n ? ", " : "",
                 acme_challenge_type_name(o->solvers[s].ops->type));
    }
    dm_err_set(&z->err, DM_E_CONFIG,
               "no configured solver can answer %s%s (CA offers: %s; configured: %s)",
               res->is_wildcard ? "*." : "", res->identifier, offered, configured);
    acme_problem_from_err(&z->prob, &z->err);
    return STEP_FAIL;
}

static enum step authz_do_fetch(struct order_authz *z)
{
    if (!z->reply.is_ready) {
        return z->is_sent ? STEP_WAIT : authz_post(z, z->url, "");
    }
    if (!z->reply.is_ok) {
        return authz_fail_reply(z);
    }
    if (authz_parse_reply(z) != 0) {
        return STEP_FAIL;
    }
    switch (z->res.status) {
    case ACME_STATUS_VALID:
        z->is_reused = true; /* validated earlier (Pebble reuses authzs): nothing to solve */
        return STEP_DONE;
    case ACME_STATUS_PENDING:
        return authz_choose(z);
    default:
        return authz_invalid(z);
    }
}

static enum step authz_do_present(struct order_authz *z)
{
    if (!z->is_presented) {
        z->is_presented = true;
        int rc = z->solver->ops->present(z->solver->ctx, &z->ch, authz_on_ready, z, &z->err);
        if (rc < 0) {
            acme_problem_from_err(&z->prob, &z->err);
            return STEP_FAIL;
        }
        return rc == 0 ? STEP_CONTINUE : STEP_WAIT;
    }
    if (!z->is_present_ready) {
        return STEP_WAIT;
    }
    if (z->present_err.code != DM_E_OK) {
        z->err = z->present_err;
        acme_problem_from_err(&z->prob, &z->err);
        return STEP_FAIL;
    }
    return STEP_CONTINUE;
}

static enum step authz_do_respond(struct order_authz *z)
{
    if (!z->reply.is_ready) {
        /* RFC 8555 §7.5.1: an empty object says "ready, validate now". */
        return z->is_sent ? STEP_WAIT : authz_post(z, z->challenge_url, "{}");
    }
    return z->reply.is_ok ? STEP_CONTINUE : authz_fail_reply(z);
}

static enum step authz_do_poll(struct order_authz *z)
{
    if (z->reply.is_ready) {
        if (!z->reply.is_ok) {
            return authz_fail_reply(z);
        }
        if (authz_parse_reply(z) != 0) {
            return STEP_FAIL;
        }
        if (z->res.status == ACME_STATUS_VALID) {
            return STEP_DONE;
        }
        if (z->res.status != ACME_STATUS_PENDING) {
            return authz_invalid(z);
        }
        if (!z->is_nudged) {
            z->num_polls++; /* a nudged poll came early: it does not count */
        }
        z->is_nudged = false;
        timer_arm(z->timer, poll_delay_ms(z->o, z->num_polls, &z->reply));
        reply_clear(&z->reply);
        z->is_sent = false;
        z->is_poll_wait = true;
        return STEP_WAIT;
    }
    if (z->is_poll_wait || z->is_sent) {
        return STEP_WAIT;
    }
    if (!z->has_waited) {
        /* First entry: give the CA the first poll interval to validate. */
        z->has_waited = true;
        z->is_poll_wait = true;
        timer_arm(z->timer, poll_delay_ms(z->o, 0, NULL));
        return STEP_WAIT;
    }
    return authz_post(z, z->url, "");
}

static enum authz_state authz_next(const struct order_authz *z)
{
    switch (z->state) {
    case AUTHZ_FETCH:
        return AUTHZ_PRESENT;
    case AUTHZ_PRESENT:
        /* A challenge the CA is already validating (an earlier attempt) is
         * only polled; POSTing it again would be an error. */
        return z->challenge_status == ACME_STATUS_PENDING ? AUTHZ_RESPOND : AUTHZ_POLL;
    case AUTHZ_RESPOND:
        return AUTHZ_POLL;
    default:
        return AUTHZ_INVALID;
    }
}

/* authz_withdraw cleans up a published response, once. */
static void authz_withdraw(struct order_authz *z)
{
    if (z->is_presented) {
        z->is_presented = false;
        z->solver->ops->cleanup(z->solver->ctx, &z->ch);
    }
}

static void authz_step(struct order_authz *z)
{
    for (;;) {
        enum step r = STEP_FAIL;
        switch (z->state) {
        case AUTHZ_FETCH:
            r = authz_do_fetch(z);
            break;
        case AUTHZ_PRESENT:
            r = authz_do_present(z);
            break;
        case AUTHZ_RESPOND:
            r = authz_do_respond(z);
            break;
        case AUTHZ_POLL:
            r = authz_do_poll(z);
            break;
        case AUTHZ_VALID:
        case AUTHZ_INVALID:
            return;
        }
        if (r == STEP_WAIT) {
            return;
        }
        enum authz_state next = r == STEP_DONE   ? AUTHZ_VALID
                                : r == STEP_FAIL ? AUTHZ_INVALID
                                                 : authz_next(z);
        DM_LOG_DBG("acme", "order=%s authz=%s: %s -> %s", z->o->names[0],
                   z->res.identifier != NULL ? z->res.identifier : z->url,
                   authz_state_names[z->state], authz_state_names[next]);
        z->state = next;
        reply_clear(&z->reply);
        z->is_sent = false;
        if (next == AUTHZ_VALID || next == AUTHZ_INVALID) {
            /* Validation is over either way: withdraw the response now. */
            authz_withdraw(z);
            order_kick(z->o);
            return;
        }
    }
}

static void authz_cleanup(struct order_authz *z)
{
    acme_client_call_cancel(z->call);
    z->call = NULL;
    if (z->timer != NULL) {
        event_free(z->timer);
    }
    authz_withdraw(z);
    reply_clear(&z->reply);
    acme_authz_cleanup(&z->res);
    free(z->url);
    free(z->identifier);
    free(z->token);
    free(z->key_auth);
    free(z->challenge_url);
}

/* ---- order state handlers -------------------------------------------------------- */

static void order_on_reply(const struct acme_response *resp, const struct acme_problem *prob,
                           const struct dm_err *err, void *arg)
{
    struct acme_order *o = arg;
    o->call = NULL;
    reply_take(&o->reply, resp, prob, err,
               o->state == ACME_ORDER_DOWNLOAD || o->state == ACME_ORDER_ALTERNATE);
    order_kick(o);
}

static void order_on_directory(const struct acme_directory *dir, const struct acme_problem *prob,
                               const struct dm_err *err, void *arg)
{
    struct acme_order *o = arg;
    o->call = NULL;
    reply_clear(&o->reply);
    o->reply.is_ready = true;
    o->reply.is_ok = dir != NULL;
    if (dir == NULL) {
        o->reply.prob = *prob;
        o->reply.err = *err;
    }
    order_kick(o);
}

static void order_on_account(struct acme_account *a, const struct acme_problem *prob,
                             const struct dm_err *err, void *arg)
{
    (void)a;
    struct acme_order *o = arg;
    o->acct_op = NULL;
    o->is_acct_done = true;
    if (prob != NULL) {
        o->prob = *prob;
        o->err = *err;
    }
    order_kick(o);
}

/* order_post starts a signed POST of payload to url for the order itself. */
static enum step order_post(struct acme_order *o, const char *url, const char *payload,
                            const char *accept)
{
    struct acme_call_opts co = {.deadline_us = o->deadline_us, .accept = accept};
    o->call = acme_client_post_start(o->c, acme_account_key(o->a), acme_account_kid(o->a), url,
                                     payload, &co, order_on_reply, o, &o->err);
    if (o->call == NULL) {
        return order_fail_err(o);
    }
    o->is_sent = true;
    return STEP_WAIT;
}

static enum step order_do_directory(struct acme_order *o)
{
    if (!o->reply.is_ready) {
        if (o->is_sent) {
            return STEP_WAIT;
        }
        o->call = acme_client_directory_start(o->c, order_on_directory, o, &o->err);
        if (o->call == NULL) {
            return order_fail_err(o);
        }
        o->is_sent = true;
        return STEP_WAIT;
    }
    return o->reply.is_ok ? STEP_CONTINUE : order_fail_reply(o, "directory");
}

static enum step order_do_account(struct acme_order *o)
{
    if (acme_account_kid(o->a) != NULL && !o->is_acct_done) {
        return STEP_CONTINUE;
    }
    if (!o->is_acct_done) {
        if (o->acct_op == NULL) {
            o->acct_op = acme_account_register_start(o->a, order_on_account, o, &o->err);
            if (o->acct_op == NULL) {
                return order_fail_err(o);
            }
        }
        return STEP_WAIT;
    }
    o->is_acct_done = false;
    return acme_account_kid(o->a) != NULL ? STEP_CONTINUE : STEP_FAIL;
}

static char *new_order_payload(struct acme_order *o)
{
    const struct acme_directory *dir = acme_client_directory_find(o->c);
    json_t *j = json_object();
    json_t *ids = json_array();
    if (j == NULL || ids == NULL) {
        json_decref(j);
        json_decref(ids);
        return NULL;
    }
    json_object_set_new(j, "identifiers", ids);
    for (size_t i = 0; i < o->num_names; i++) {
        /* RFC 8738: IP literals are "ip" identifiers, in their canonical form. */
        bool is_ip = acme_name_is_ip(o->names[i], NULL, NULL);
        json_array_append_new(
            ids, json_pack("{s:s, s:s}", "type", is_ip ? "ip" : "dns", "value", o->names[i]));
    }
    char ts[32];
    if (o->not_before != 0) {
        strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", gmtime(&o->not_before));
        json_object_set_new(j, "notBefore", json_string(ts));
    }
    if (o->not_after != 0) {
        strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", gmtime(&o->not_after));
        json_object_set_new(j, "notAfter", json_string(ts));
    }
    if (o->profile != NULL) {
        if (acme_directory_has_profile(dir, o->profile)) {
            json_object_set_new(j, "profile", json_string(o->profile));
        } else {
            dm_log(DM_LOG_WARN, "acme",
                   "order=%s: the CA does not offer profile \"%s\"; ordering without it",
                   o->names[0], o->profile);
        }
    }
    if (o->replaces != NULL && !o->is_replaces_dropped) {
        json_object_set_new(j, "replaces", json_string(o->replaces));
    }
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

static enum step order_do_new_order(struct acme_order *o)
{
    if (!o->reply.is_ready) {
        if (o->is_sent) {
            return STEP_WAIT;
        }
        char *payload = new_order_payload(o);
        if (payload == NULL) {
            dm_err_set(&o->err, DM_E_NOMEM, "out of memory");
            return order_fail_err(o);
        }
        enum step r = order_post(o, acme_client_directory_find(o->c)->new_order, payload, NULL);
        free(payload);
        return r;
    }
    if (!o->reply.is_ok) {
        const struct acme_problem *p = &o->reply.prob;
        if (acme_problem_is(p, "accountDoesNotExist") && o->num_account_resets == 0) {
            /* The CA forgot the account (a test CA restarted): register again. */
            dm_log(DM_LOG_WARN, "acme", "order=%s: account %s unknown to the CA; registering again",
                   o->names[0], acme_account_kid(o->a));
            o->num_account_resets++;
            acme_account_forget(o->a);
            o->redo = REDO_ACCOUNT;
            return STEP_CONTINUE;
        }
        if (o->replaces != NULL && !o->is_replaces_dropped &&
            (acme_problem_is(p, "alreadyReplaced") || acme_problem_is(p, "malformed") ||
             p->status == 409)) {
            /* RFC 9773 §5: a refused "replaces" must not block the renewal. */
            dm_log(DM_LOG_WARN, "acme", "order=%s: CA refused replaces=%s (%s); ordering without",
                   o->names[0], o->replaces, p->detail);
            o->is_replaces_dropped = true;
            o->redo = REDO_SAME;
            return STEP_CONTINUE;
        }
        return order_fail_reply(o, "newOrder");
    }
    if (o->reply.location == NULL) {
        dm_err_set(&o->err, DM_E_PROTO, "newOrder answered without Location");
        return order_fail_err(o);
    }
    acme_order_resource_cleanup(&o->res);
    if (order_res_from_json(&o->res, o->reply.json, &o->err) != 0) {
        return order_fail_err(o);
    }
    free(o->order_url);
    o->order_url = o->reply.location;
    o->reply.location = NULL;
    if (o->res.status == ACME_STATUS_INVALID) {
        dm_err_set(&o->err, DM_E_ACME, "new order is invalid");
        return order_fail_err(o);
    }
    DM_LOG_DBG("acme", "order=%s: %s is %s with %zu authorizations", o->names[0], o->order_url,
               acme_status_name(o->res.status), o->res.num_authorizations);
    return STEP_CONTINUE;
}

static enum step order_do_authorize(struct acme_order *o)
{
    if (!o->is_authz_started) {
        o->is_authz_started = true;
        o->num_authz = o->res.num_authorizations;
        o->authz = calloc(o->num_authz ? o->num_authz : 1, sizeof(*o->authz));
        if (o->authz == NULL) {
            o->num_authz = 0;
            dm_err_set(&o->err, DM_E_NOMEM, "out of memory");
            return order_fail_err(o);
        }
        for (size_t i = 0; i < o->num_authz; i++) {
            struct order_authz *z = &o->authz[i];
            z->o = o;
            if ((z->url = strdup(o->res.authorizations[i])) == NULL ||
                (z->timer = evtimer_new(acme_client_base(o->c), authz_on_timer, z)) == NULL) {
                dm_err_set(&o->err, DM_E_NOMEM, "out of memory");
                return order_fail_err(o);
            }
        }
        /* All authorizations in parallel: one name's validation does not
         * wait for another's. */
        for (size_t i = 0; i < o->num_authz; i++) {
            authz_step(&o->authz[i]);
        }
    }
    size_t num_valid = 0;
    for (size_t i = 0; i < o->num_authz; i++) {
        struct order_authz *z = &o->authz[i];
        if (z->state == AUTHZ_INVALID) {
            o->prob = z->prob;
            o->err = z->err;
            return STEP_FAIL;
        }
        num_valid += z->state == AUTHZ_VALID;
    }
    return num_valid == o->num_authz ? STEP_CONTINUE : STEP_WAIT;
}

/* order_do_poll fetches the order until its status leaves wait_status
 * (pending in WAIT_READY, processing in WAIT_ISSUED). */
static enum step order_do_poll(struct acme_order *o, enum acme_status wait_status,
                               bool is_first_immediate)
{
    if (o->reply.is_ready) {
        if (!o->reply.is_ok) {
            return order_fail_reply(o, "order poll");
        }
        acme_order_resource_cleanup(&o->res);
        if (order_res_from_json(&o->res, o->reply.json, &o->err) != 0) {
            return order_fail_err(o);
        }
        if (o->res.status == ACME_STATUS_INVALID) {
            if (o->res.has_error) {
                o->prob = o->res.error;
                dm_err_set(&o->err, DM_E_ACME, "order is invalid: %s: %s",
                           acme_problem_short(&o->res.error), o->res.error.detail);
                return STEP_FAIL;
            }
            dm_err_set(&o->err, DM_E_ACME, "order is invalid");
            return order_fail_err(o);
        }
        if (o->res.status != wait_status) {
            return STEP_CONTINUE;
        }
        o->num_polls++;
        timer_arm(o->poll, poll_delay_ms(o, o->num_polls, &o->reply));
        reply_clear(&o->reply);
        o->is_sent = false;
        o->is_poll_wait = true;
        return STEP_WAIT;
    }
    if (o->is_poll_wait || o->is_sent) {
        return STEP_WAIT;
    }
    if (o->num_polls == 0 && !is_first_immediate) {
        o->num_polls = 1; /* the first wait is poll_first_ms, the next twice that */
        o->is_poll_wait = true;
        timer_arm(o->poll, poll_delay_ms(o, 0, NULL));
        return STEP_WAIT;
    }
    return order_post(o, o->order_url, "", NULL);
}

static enum step order_do_finalize(struct acme_order *o)
{
    if (!o->reply.is_ready) {
        if (o->is_sent) {
            return STEP_WAIT;
        }
        if (o->res.finalize == NULL || o->num_finalizes >= ORDER_MAX_FINALIZE) {
            dm_err_set(&o->err, DM_E_ACME, "order did not become finalizable");
            return order_fail_err(o);
        }
        o->num_finalizes++;
        uint8_t *der = NULL;
        size_t der_len = 0;
        char *key_pem = NULL;
        if (acme_csr_new(o->key_type, (const char *const *)o->names, o->num_names, &der, &der_len,
                         &key_pem, &o->err) != 0) {
            return order_fail_err(o);
        }
        acme_pem_free_secret(o->key_pem);
        o->key_pem = key_pem;
        char *csr = acme_b64url_encode(der, der_len);
        free(der);
        json_t *j = csr != NULL ? json_pack("{s:s}", "csr", csr) : NULL;
        char *payload = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        free(csr);
        if (payload == NULL) {
            dm_err_set(&o->err, DM_E_NOMEM, "out of memory");
            return order_fail_err(o);
        }
        enum step r = order_post(o, o->res.finalize, payload, NULL);
        free(payload);
        return r;
    }
    if (!o->reply.is_ok) {
        if (acme_problem_is(&o->reply.prob, "orderNotReady")) {
            o->redo = REDO_READY; /* look at the order again, then decide */
            return STEP_CONTINUE;
        }
        return order_fail_reply(o, "finalize");
    }
    acme_order_resource_cleanup(&o->res);
    if (order_res_from_json(&o->res, o->reply.json, &o->err) != 0) {
        return order_fail_err(o);
    }
    if (o->res.status == ACME_STATUS_INVALID) {
        o->prob = o->res.error;
        dm_err_set(&o->err, DM_E_ACME, "finalize: order is invalid: %s",
                   o->res.has_error ? o->res.error.detail : "no detail");
        return STEP_FAIL;
    }
    return STEP_CONTINUE;
}

/* chain_has_issuer tells whether a PEM chain's topmost issuer, or the subject
 * of any certificate above the leaf, has common name cn. */
static bool chain_has_issuer(const char *pem, size_t len, const char *cn)
{
    BIO *bio = BIO_new_mem_buf(pem, len > INT_MAX ? INT_MAX : (int)len);
    X509 *x;
    X509 *last = NULL;
    bool is_match = false;
    char buf[256];
    for (int i = 0; bio != NULL && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL; i++) {
        if (i > 0 &&
            X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, sizeof(buf)) >
                0 &&
            strcmp(buf, cn) == 0) {
            is_match = true;
        }
        X509_free(last);
        last = x;
    }
    if (last != NULL &&
        X509_NAME_get_text_by_NID(X509_get_issuer_name(last), NID_commonName, buf, sizeof(buf)) >
            0 &&
        strcmp(buf, cn) == 0) {
        is_match = true;
    }
    X509_free(last);
    BIO_free(bio);
    ERR_clear_error(); /* PEM_read_bio_X509 at the end of the input */
    return is_match;
}

/* chain_check makes sure a downloaded chain is usable: parses, matches our
 * key and covers every name; records the leaf's validity. */
static int chain_check(struct acme_order *o, const char *pem, size_t len, struct dm_err *err)
{
    struct acme_cert *cert =
        acme_cert_from_pem(pem, len, o->key_pem, strlen(o->key_pem), NULL, err);
    if (cert == NULL) {
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < o->num_names; i++) {
        if (!acme_cert_covers(cert, o->names[i])) {
            dm_err_set(err, DM_E_ACME, "issued certificate does not cover %s", o->names[i]);
            rc = -1;
            break;
        }
    }
    o->not_before_cert = acme_cert_not_before(cert);
    o->not_after_cert = acme_cert_not_after(cert);
    acme_cert_unref(cert);
    return rc;
}

static enum step order_do_download(struct acme_order *o)
{
    if (!o->reply.is_ready) {
        if (o->is_sent) {
            return STEP_WAIT;
        }
        if (o->res.certificate == NULL) {
            dm_err_set(&o->err, DM_E_PROTO, "valid order without a certificate URL");
            return order_fail_err(o);
        }
        return order_post(o, o->res.certificate, "", "application/pem-certificate-chain");
    }
    if (!o->reply.is_ok) {
        return order_fail_reply(o, "certificate download");
    }
    struct dm_err cerr = {0};
    if (chain_check(o, o->reply.body, o->reply.body_len, &cerr) != 0) {
        dm_err_set(&o->err, DM_E_ACME, "certificate from %s: %.300s", o->res.certificate, cerr.msg);
        return order_fail_err(o);
    }
    o->chain_pem = o->reply.body;
    o->chain_len = o->reply.body_len;
    o->reply.body = NULL;
    o->alternates = o->reply.alternates;
    o->num_alternates = o->reply.num_alternates;
    o->reply.alternates = NULL;
    o->reply.num_alternates = 0;
    if (o->preferred_chain == NULL ||
        chain_has_issuer(o->chain_pem, o->chain_len, o->preferred_chain) ||
        o->num_alternates == 0) {
        return STEP_DONE;
    }
    return STEP_CONTINUE;
}

static enum step order_do_alternate(struct acme_order *o)
{
    if (!o->reply.is_ready) {
        if (o->is_sent) {
            return STEP_WAIT;
        }
        return order_post(o, o->alternates[o->next_alternate++], "",
                          "application/pem-certificate-chain");
    }
    struct dm_err err = {0};
    if (o->reply.is_ok && chain_has_issuer(o->reply.body, o->reply.body_len, o->preferred_chain) &&
        chain_check(o, o->reply.body, o->reply.body_len, &err) == 0) {
        DM_LOG_DBG("acme", "order=%s: using alternate chain %zu (issuer \"%s\")", o->names[0],
                   o->next_alternate, o->preferred_chain);
        free(o->chain_pem);
        o->chain_pem = o->reply.body;
        o->chain_len = o->reply.body_len;
        o->reply.body = NULL;
        return STEP_DONE;
    }
    if (o->next_alternate < o->num_alternates) {
        o->redo = REDO_SAME;
        return STEP_CONTINUE;
    }
    dm_log(DM_LOG_INFO, "acme", "order=%s: no chain has issuer \"%s\"; keeping the default",
           o->names[0], o->preferred_chain);
    /* The default chain was checked; its validity dates are the leaf's. */
    chain_check(o, o->chain_pem, o->chain_len, &err);
    return STEP_DONE;
}

/* order_by_status maps the order's status to the state that handles it. */
static enum acme_order_state order_by_status(const struct acme_order *o)
{
    switch (o->res.status) {
    case ACME_STATUS_PENDING:
        return o->state == ACME_ORDER_NEW_ORDER ? ACME_ORDER_AUTHORIZE : ACME_ORDER_WAIT_READY;
    case ACME_STATUS_READY:
        return ACME_ORDER_FINALIZE;
    case ACME_STATUS_PROCESSING:
        return ACME_ORDER_WAIT_ISSUED;
    case ACME_STATUS_VALID:
        return ACME_ORDER_DOWNLOAD;
    default:
        return ACME_ORDER_FAILED;
    }
}

/* order_next is the transition table of the order. */
static enum acme_order_state order_next(const struct acme_order *o)
{
    switch (o->redo) {
    case REDO_ACCOUNT:
        return ACME_ORDER_ACCOUNT;
    case REDO_SAME:
        return o->state;
    case REDO_READY:
        return ACME_ORDER_WAIT_READY;
    case REDO_NONE:
        break;
    }
    switch (o->state) {
    case ACME_ORDER_NEW:
        return ACME_ORDER_DIRECTORY;
    case ACME_ORDER_DIRECTORY:
        return ACME_ORDER_ACCOUNT;
    case ACME_ORDER_ACCOUNT:
        return ACME_ORDER_NEW_ORDER;
    case ACME_ORDER_AUTHORIZE:
        return ACME_ORDER_WAIT_READY;
    case ACME_ORDER_NEW_ORDER:
    case ACME_ORDER_WAIT_READY:
    case ACME_ORDER_FINALIZE:
    case ACME_ORDER_WAIT_ISSUED:
        return order_by_status(o);
    case ACME_ORDER_DOWNLOAD:
        return ACME_ORDER_ALTERNATE;
    default:
        return ACME_ORDER_FAILED;
    }
}

static void order_free(struct acme_order *o)
{
    acme_client_call_cancel(o->call);
    acme_account_op_cancel(o->acct_op);
    for (size_t i = 0; i < o->num_authz; i++) {
        authz_cleanup(&o->authz[i]);
    }
    free(o->authz);
    if (o->kick != NULL) {
        event_free(o->kick);
    }
    if (o->poll != NULL) {
        event_free(o->poll);
    }
    if (o->deadline != NULL) {
        event_free(o->deadline);
    }
    reply_clear(&o->reply);
    acme_order_resource_cleanup(&o->res);
    acme_strings_free(o->names, o->num_names);
    acme_strings_free(o->alternates, o->num_alternates);
    free(o->solvers);
    free(o->profile);
    free(o->replaces);
    free(o->preferred_chain);
    free(o->order_url);
    free(o->chain_pem);
    acme_pem_free_secret(o->key_pem);
    free(o);
}

/* order_finish logs once, calls back once and frees the order. */
static void order_finish(struct acme_order *o, bool is_ok)
{
    uint64_t ms = (dm_time_mono_us() - o->started_us) / 1000;
    o->is_in_callback = true;
    if (is_ok) {
        size_t reused = 0;
        for (size_t i = 0; i < o->num_authz; i++) {
            reused += o->authz[i].is_reused;
        }
        if (o->num_authz == 0) {
            reused = o->res.num_authorizations;
        }
        dm_log(DM_LOG_INFO, "acme",
               "order=%s: certificate issued for %zu name(s) in %llu ms (%zu authz reused), "
               "valid until %lld",
               o->names[0], o->num_names, (unsigned long long)ms, reused,
               (long long)o->not_after_cert);
        struct acme_order_result res = {
            .chain_pem = o->chain_pem,
            .chain_len = o->chain_len,
            .key_pem = o->key_pem,
            .key_len = strlen(o->key_pem),
            .order_url = o->order_url,
            .cert_url = o->res.certificate,
            .not_before = o->not_before_cert,
            .not_after = o->not_after_cert,
            .num_authz_reused = reused,
        };
        o->cb(&res, NULL, NULL, o->arg);
    } else {
        dm_log(DM_LOG_WARN, "acme", "order=%s: failed after %llu ms: %s%s%s", o->names[0],
               (unsigned long long)ms, o->err.msg, o->prob.type[0] ? " type=" : "",
               o->prob.type[0] ? acme_problem_short(&o->prob) : "");
        o->cb(NULL, &o->prob, &o->err, o->arg);
    }
    order_free(o);
}

static void order_step(struct acme_order *o)
{
    for (;;) {
        enum step r = STEP_FAIL;
        switch (o->is_timed_out ? ACME_ORDER_FAILED : o->state) {
        case ACME_ORDER_NEW:
            r = STEP_CONTINUE;
            break;
        case ACME_ORDER_DIRECTORY:
            r = order_do_directory(o);
            break;
        case ACME_ORDER_ACCOUNT:
            r = order_do_account(o);
            break;
        case ACME_ORDER_NEW_ORDER:
            r = order_do_new_order(o);
            break;
        case ACME_ORDER_AUTHORIZE:
            r = order_do_authorize(o);
            break;
        case ACME_ORDER_WAIT_READY:
            r = order_do_poll(o, ACME_STATUS_PENDING, true);
            break;
        case ACME_ORDER_FINALIZE:
            r = order_do_finalize(o);
            break;
        case ACME_ORDER_WAIT_ISSUED:
            r = order_do_poll(o, ACME_STATUS_PROCESSING, false);
            break;
        case ACME_ORDER_DOWNLOAD:
            r = order_do_download(o);
            break;
        case ACME_ORDER_ALTERNATE:
            r = order_do_alternate(o);
            break;
        case ACME_ORDER_DONE:
            return;
        case ACME_ORDER_FAILED:
            if (!o->is_timed_out) {
                return;
            }
            r = STEP_FAIL; /* the deadline: err says so */
            break;
        }
        if (r == STEP_WAIT) {
            return;
        }
        enum acme_order_state next = r == STEP_DONE   ? ACME_ORDER_DONE
                                     : r == STEP_FAIL ? ACME_ORDER_FAILED
                                                      : order_next(o);
        if (next == ACME_ORDER_FAILED && r == STEP_CONTINUE) {
            dm_err_set(&o->err, DM_E_ACME, "order is %s in state %s",
                       acme_status_name(o->res.status), acme_order_state_name(o->state));
            acme_problem_from_err(&o->prob, &o->err);
        }
        DM_LOG_DBG("acme", "order=%s: %s -> %s", o->names[0], acme_order_state_name(o->state),
                   acme_order_state_name(next));
        if (next == ACME_ORDER_FAILED) {
            char msg[DM_ERR_MSG_MAX];
            snprintf(msg, sizeof(msg), "%s", o->err.msg);
            dm_err_set(&o->err, o->err.code, "%s: %s", acme_order_state_name(o->state), msg);
        }
        o->state = next;
        o->redo = REDO_NONE;
        o->is_sent = false;
        o->is_poll_wait = false;
        o->num_polls = 0;
        reply_clear(&o->reply);
        if (next == ACME_ORDER_DONE || next == ACME_ORDER_FAILED) {
            order_finish(o, next == ACME_ORDER_DONE);
            return;
        }
    }
}

static void order_on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    order_step(arg);
}

static void order_on_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct acme_order *o = arg;
    o->is_poll_wait = false;
    order_step(o);
}

static void order_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct acme_order *o = arg;
    dm_err_set(&o->err, DM_E_TIMEOUT, "order did not finish within %u ms", o->timeout_ms);
    acme_problem_from_err(&o->prob, &o->err);
    o->is_timed_out = true;
    order_step(o);
}

/* names_normalize copies names lower-cased (IPs in canonical text form),
 * checks them and drops duplicates. */
static int names_normalize(struct acme_order *o, const char *const *names, size_t num,
                           struct dm_err *err)
{
    if (num == 0 || num > ACME_ORDER_MAX_NAMES) {
        dm_err_set(err, DM_E_CONFIG, "an order needs 1..%d names", ACME_ORDER_MAX_NAMES);
        return -1;
    }
    if ((o->names = calloc(num, sizeof(char *))) == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < num; i++) {
        char buf[ACME_NAME_MAX + 1];
        unsigned char ip[16];
        size_t ip_len = 0;
        if (names[i] == NULL || strlen(names[i]) > ACME_NAME_MAX) {
            dm_err_set(err, DM_E_CONFIG, "order name %zu is missing or too long", i);
            return -1;
        }
        if (acme_name_is_ip(names[i], ip, &ip_len)) {
            inet_ntop(ip_len == 4 ? AF_INET : AF_INET6, ip, buf, sizeof(buf));
        } else {
            size_t n = strlen(names[i]);
            for (size_t k = 0; k <= n; k++) {
                char ch = names[i][k];
                buf[k] = ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
            }
            if (n > 0 && buf[n - 1] == '.') {
                buf[n - 1] = '\0'; /* absolute form */
            }
        }
        if (!acme_name_valid(buf)) {
            dm_err_set(err, DM_E_CONFIG, "\"%.64s\" is not a valid certificate name", names[i]);
            return -1;
        }
        bool is_dup = false;
        for (size_t k = 0; k < o->num_names; k++) {
            is_dup = is_dup || strcmp(o->names[k], buf) == 0;
        }
        if (!is_dup) {
            if ((o->names[o->num_names] = strdup(buf)) == NULL) {
                dm_err_set(err, DM_E_NOMEM, "out of memory");
                return -1;
            }
            o->num_names++;
        }
    }
    return 0;
}

static int dup_or_null(char **out, const char *s)
{
    *out = NULL;
    if (s == NULL || s[0] == '\0') {
        return 0;
    }
    return (*out = strdup(s)) != NULL ? 0 : -1;
}

struct acme_order *acme_order_start(struct acme_client *c, struct acme_account *a,
                                    const struct acme_order_opts *opts, acme_order_done_cb cb,
                                    void *arg, struct dm_err *err)
{
    if (c == NULL || a == NULL || opts == NULL || cb == NULL) {
        dm_err_set(err, DM_E_CONFIG, "ACME order: missing client, account, options or callback");
        return NULL;
    }
    struct acme_order *o = calloc(1, sizeof(*o));
    if (o == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    o->c = c;
    o->a = a;
    o->cb = cb;
    o->arg = arg;
    o->key_type = opts->key_type;
    o->not_before = opts->not_before;
    o->not_after = opts->not_after;
    o->timeout_ms = opts->timeout_ms ? opts->timeout_ms : ACME_ORDER_DEFAULT_TIMEOUT_MS;
    o->poll_first_ms = opts->poll_first_ms ? opts->poll_first_ms : ACME_ORDER_DEFAULT_POLL_FIRST_MS;
    o->poll_max_ms = opts->poll_max_ms ? opts->poll_max_ms : ACME_ORDER_DEFAULT_POLL_MAX_MS;
    if (names_normalize(o, opts->names, opts->num_names, err) != 0) {
        order_free(o);
        return NULL;
    }
    size_t ns = opts->solvers != NULL ? opts->num_solvers : 2;
    o->solvers = calloc(ns ? ns : 1, sizeof(*o->solvers));
    struct event_base *base = acme_client_base(c);
    if (o->solvers == NULL || dup_or_null(&o->profile, opts->profile) != 0 ||
        dup_or_null(&o->replaces, opts->replaces) != 0 ||
        dup_or_null(&o->preferred_chain, opts->preferred_chain) != 0 ||
        (o->kick = event_new(base, -1, 0, order_on_kick, o)) == NULL ||
        (o->poll = evtimer_new(base, order_on_poll, o)) == NULL ||
        (o->deadline = evtimer_new(base, order_on_deadline, o)) == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        order_free(o);
        return NULL;
    }
    if (opts->solvers != NULL) {
        for (size_t i = 0; i < ns; i++) {
            if (opts->solvers[i].ops == NULL || opts->solvers[i].ops->present == NULL ||
                opts->solvers[i].ops->cleanup == NULL) {
                dm_err_set(err, DM_E_CONFIG, "ACME order: solver %zu is incomplete", i);
                order_free(o);
                return NULL;
            }
            o->solvers[i] = opts->solvers[i];
        }
    } else {
        o->solvers[0].ops = &solver_tlsalpn01;
        o->solvers[1].ops = &solver_http01;
    }
    o->num_solvers = ns;
    o->started_us = dm_time_mono_us();
    o->deadline_us = o->started_us + (uint64_t)o->timeout_ms * 1000;
    timer_arm(o->deadline, o->timeout_ms);
    DM_LOG_DBG("acme", "order=%s: start, %zu name(s)", o->names[0], o->num_names);
    order_kick(o); /* never call back from _start */
    return o;
}

void acme_order_cancel(struct acme_order *o)
{
    if (o == NULL || o->is_in_callback) {
        return;
    }
    DM_LOG_DBG("acme", "order=%s: canceled in state %s", o->names[0],
               acme_order_state_name(o->state));
    order_free(o);
}

enum acme_order_state acme_order_state(const struct acme_order *o)
{
    return o->state;
}

/* The CA's validators usually reach us from several vantage points within a
 * millisecond or two; polling this long after the latest one finds the
 * authorization valid without a wasted request. */
#define ORDER_NUDGE_MS 3

void acme_order_nudge(struct acme_order *o)
{
    for (size_t i = 0; o != NULL && i < o->num_authz; i++) {
        struct order_authz *z = &o->authz[i];
        if (z->state == AUTHZ_POLL && z->is_poll_wait && !z->is_sent) {
            z->is_nudged = true;
            timer_arm(z->timer, ORDER_NUDGE_MS);
        }
    }
}
