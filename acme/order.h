/* The ACME order state machine (RFC 8555 §7.4, §7.5): one struct acme_order
 * per set of names. It runs directory -> account -> newOrder ->
 * authorizations (fetched in parallel; valid ones skipped; a challenge chosen
 * by the configured solver preference, its response published before the
 * challenge is POSTed, the authorization polled fast) -> finalize with a new
 * key and CSR -> poll -> download (alternate chains on request), and calls
 * back with the chain and key PEM for the caller to store. Solvers are a small
 * interface so dns-01 (a hook program) plugs in beside the built-in http-01
 * and tls-alpn-01 ones. Design and timings: docs/acme.md. */
#ifndef DM_ACME_ORDER_H
#define DM_ACME_ORDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "acme/client.h"

struct acme_account;
struct dm_err;

/* ---- resources (RFC 8555 §7.1.3, §7.1.4, §8) ---- */

enum acme_status {
    ACME_STATUS_UNKNOWN = 0,
    ACME_STATUS_PENDING,
    ACME_STATUS_READY,
    ACME_STATUS_PROCESSING,
    ACME_STATUS_VALID,
    ACME_STATUS_INVALID,
    ACME_STATUS_DEACTIVATED,
    ACME_STATUS_EXPIRED,
    ACME_STATUS_REVOKED,
};

/* acme_status_name names a status as the CA spells it ("pending", ...). */
const char *acme_status_name(enum acme_status s);

enum acme_challenge_type {
    ACME_CHALLENGE_HTTP01 = 0, /* RFC 8555 §8.3 */
    ACME_CHALLENGE_TLSALPN01,  /* RFC 8737 */
    ACME_CHALLENGE_DNS01,      /* RFC 8555 §8.4 */
    ACME_CHALLENGE_OTHER,      /* any type we do not solve */
};

/* acme_challenge_type_name returns "http-01", "tls-alpn-01", "dns-01", "other". */
const char *acme_challenge_type_name(enum acme_challenge_type t);

/* Most authorizations (names) per order and challenges per authorization we
 * read: public CAs allow 100 names; a CA offers 3 challenge types. */
#define ACME_ORDER_MAX_NAMES      100
#define ACME_AUTHZ_MAX_CHALLENGES 16

struct acme_order_resource {
    enum acme_status status;
    time_t expires;        /* 0 if absent */
    char **authorizations; /* owned: URLs */
    size_t num_authorizations;
    char *finalize;    /* owned */
    char *certificate; /* owned or NULL */
    bool has_error;
    struct acme_problem error; /* when has_error */
};

struct acme_challenge_resource {
    enum acme_challenge_type type;
    char *type_name; /* owned: as the CA spelled it */
    char *url;       /* owned */
    char *token;     /* owned or NULL */
    enum acme_status status;
    bool has_error;
    struct acme_problem error;
};

struct acme_authz_resource {
    enum acme_status status;
    char *identifier_type; /* owned: "dns" or "ip" */
    char *identifier;      /* owned: the value ("example.com" for *.example.com) */
    bool is_wildcard;
    time_t expires;
    struct acme_challenge_resource *challenges; /* owned */
    size_t num_challenges;
};

/* acme_order_resource_parse decodes an order object json[0..len) into out
 * (zeroed first). Returns 0, or -1 with err (DM_E_PROTO) and out cleaned up. */
int acme_order_resource_parse(struct acme_order_resource *out, const char *json, size_t len,
                              struct dm_err *err);
void acme_order_resource_cleanup(struct acme_order_resource *r);

/* acme_authz_parse decodes an authorization object; same contract. */
int acme_authz_parse(struct acme_authz_resource *out, const char *json, size_t len,
                     struct dm_err *err);
void acme_authz_cleanup(struct acme_authz_resource *a);

/* ---- solvers ---- */

/* A challenge to make answerable. All strings borrowed, valid until the
 * solver's cleanup. */
struct acme_challenge_info {
    enum acme_challenge_type type;
    const char *identifier; /* authorization identifier ("example.com" for a wildcard) */
    bool is_wildcard;
    bool is_ip;
    const char *token;    /* the challenge token (base64url) */
    const char *key_auth; /* token "." account thumbprint (RFC 8555 §8.1) */
};

/* acme_solver_ready_cb reports that a pending present finished: err NULL when
 * the response is in place. */
typedef void (*acme_solver_ready_cb)(const struct dm_err *err, void *arg);

struct acme_solver_ops {
    enum acme_challenge_type type;
    /* can_solve (optional) tells whether this solver can answer ch. */
    bool (*can_solve)(void *ctx, const struct acme_challenge_info *ch);
    /* present makes the response available to the CA. Returns 0 when it is in
     * place now, 1 when ready(ready_arg) follows from the loop (a dns-01 hook
     * and its propagation wait), or -1 with err. */
    int (*present)(void *ctx, const struct acme_challenge_info *ch, acme_solver_ready_cb ready,
                   void *ready_arg, struct dm_err *err);
    /* cleanup withdraws the response; it also cancels a pending present, whose
     * ready callback then never runs. Called once for every present. */
    void (*cleanup)(void *ctx, const struct acme_challenge_info *ch);
};

struct acme_solver {
    const struct acme_solver_ops *ops; /* borrowed */
    void *ctx;                         /* borrowed */
};

/* acme_solver_builtin returns the solver serving http-01 or tls-alpn-01 from
 * the data plane's registry (acme/solver.h), or NULL for other types. The
 * tls-alpn-01 one declines IP identifiers: the registry is keyed by the name
 * it certifies, and for an IP the CA sends a reverse-DNS SNI (RFC 8738 §6). */
const struct acme_solver_ops *acme_solver_builtin(enum acme_challenge_type t);

/* ---- certificate key and CSR ---- */

enum acme_cert_key_type {
    ACME_CERT_KEY_P256 = 0,
    ACME_CERT_KEY_P384,
    ACME_CERT_KEY_RSA2048,
    ACME_CERT_KEY_RSA4096,
};

/* acme_csr_new makes a certificate key of type kt and a CSR (PKCS#10) for
 * names (DNS names, "*.x" wildcards or IP literals) with a subjectAltName for
 * every name and CN = names[0] when it fits (64 characters). Returns 0 with a
 * new DER *out_der (*out_len bytes; caller frees with free()) and a new PKCS#8
 * *out_key_pem (caller releases with acme_pem_free_secret), or -1 with err.
 * RSA 4096 takes a second or more. */
int acme_csr_new(enum acme_cert_key_type kt, const char *const *names, size_t num_names,
                 uint8_t **out_der, size_t *out_len, char **out_key_pem, struct dm_err *err);

/* ---- the order ---- */

enum acme_order_state {
    ACME_ORDER_NEW = 0,
    ACME_ORDER_DIRECTORY,
    ACME_ORDER_ACCOUNT,
    ACME_ORDER_NEW_ORDER,
    ACME_ORDER_AUTHORIZE,   /* authorizations, challenges, their polls */
    ACME_ORDER_WAIT_READY,  /* order pending -> ready */
    ACME_ORDER_FINALIZE,    /* key, CSR, finalize */
    ACME_ORDER_WAIT_ISSUED, /* order processing -> valid */
    ACME_ORDER_DOWNLOAD,
    ACME_ORDER_ALTERNATE, /* alternate chains, for a preferred issuer */
    ACME_ORDER_DONE,
    ACME_ORDER_FAILED,
};

/* acme_order_state_name names a state for logs and the admin API. */
const char *acme_order_state_name(enum acme_order_state s);

/* Defaults for zero fields of struct acme_order_opts. Polls start fast
 * because a CA without Retry-After (Pebble, often Boulder) has usually
 * validated within milliseconds; they double up to the cap. */
#define ACME_ORDER_DEFAULT_TIMEOUT_MS    (5 * 60 * 1000)
#define ACME_ORDER_DEFAULT_POLL_FIRST_MS 50
#define ACME_ORDER_DEFAULT_POLL_MAX_MS   5000

struct acme_order_opts {
    const char *const *names; /* borrowed (copied): DNS names, "*.x", IP literals; the first
                                 is the CN */
    size_t num_names;
    const struct acme_solver *solvers; /* borrowed (copied array; ops and ctx must outlive
                                          the order): preference order; NULL = the built-in
                                          tls-alpn-01, then http-01 */
    size_t num_solvers;
    enum acme_cert_key_type key_type;
    const char *profile;          /* borrowed (copied): sent only if the directory lists it */
    time_t not_before, not_after; /* 0 = absent (RFC 8555 §7.4; tests) */
    const char *replaces;         /* borrowed (copied): ARI certificate ID (RFC 9773 §5) */
    const char *preferred_chain;  /* borrowed (copied): issuer CN to prefer among chains */
    uint32_t timeout_ms;          /* whole order; 0 = default */
    uint32_t poll_first_ms;       /* first poll delay; 0 = default */
    uint32_t poll_max_ms;         /* poll delay cap; 0 = default */
};

/* What a successful order delivers; borrowed, valid during the callback. */
struct acme_order_result {
    const char *chain_pem; /* leaf first, as the CA sent it */
    size_t chain_len;
    const char *key_pem; /* PKCS#8; secret: wiped after the callback */
    size_t key_len;
    const char *order_url;
    const char *cert_url;
    time_t not_before, not_after; /* of the leaf */
    size_t num_authz_reused;      /* authorizations that were already valid */
};

/* acme_order_done_cb ends an order: res on success (prob, err NULL), else
 * prob and err (the CA's problem for an invalid authorization, DM_E_TIMEOUT
 * for the deadline, ...). All borrowed, valid during the callback. The
 * callback may free other objects but not the client or the account. */
typedef void (*acme_order_done_cb)(const struct acme_order_result *res,
                                   const struct acme_problem *prob, const struct dm_err *err,
                                   void *arg);

struct acme_order;

/* acme_order_start orders a certificate for o->names from c's CA with account
 * a (both borrowed; they must outlive the order). cb runs exactly once from
 * the loop, never inside this call, unless the order is canceled. Returns
 * the handle (valid until cb returns or acme_order_cancel), or NULL with err
 * (DM_E_CONFIG for invalid names or options) and no callback. */
struct acme_order *acme_order_start(struct acme_client *c, struct acme_account *a,
                                    const struct acme_order_opts *o, acme_order_done_cb cb,
                                    void *arg, struct dm_err *err);

/* acme_order_cancel stops o without calling back: requests are canceled and
 * every published challenge response is withdrawn. NULL does nothing; inside
 * the order's own callback it does nothing either. */
void acme_order_cancel(struct acme_order *o);

/* acme_order_nudge says the CA is validating now (its validation request
 * reached us): authorizations waiting to poll do so within a few ms, and a
 * poll that still finds them pending does not lengthen the next wait. */
void acme_order_nudge(struct acme_order *o);

/* acme_order_state returns where o is (for logs and the admin API). */
enum acme_order_state acme_order_state(const struct acme_order *o);

#endif
