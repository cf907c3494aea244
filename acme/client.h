/* The RFC 8555 transport of the ACME client: one struct acme_client per CA
 * directory URL on the control thread's event_base. It discovers and caches
 * the directory, keeps a pool of nonces fed by every Replay-Nonce, sends
 * signed POST and POST-as-GET requests (application/jose+json) and plain GETs,
 * and handles in one place what every request shares: badNonce and stale
 * connections (re-sign with a fresh nonce), problem documents, Retry-After and
 * backoff for transient failures, Location and Link headers. Callers (account,
 * order, ARI) see one callback per request. Design: docs/acme.md. */
#ifndef DM_ACME_CLIENT_H
#define DM_ACME_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct acme_key;
struct dm_err;
struct dm_httpc;
struct event_base;
struct evdns_base;
struct json_t;

/* ---- problem documents (RFC 8555 §6.7, RFC 7807) ---- */

#define ACME_ERROR_PREFIX       "urn:ietf:params:acme:error:"
#define ACME_PROBLEM_TYPE_MAX   128
#define ACME_PROBLEM_DETAIL_MAX 512
/* Longest Retry-After honoured, seconds. Longer values are clamped: a day is
 * past any order deadline and the owner reschedules from retry_after_s. */
#define ACME_RETRY_AFTER_MAX_S 86400

/* A failure as the CA (or the network) reported it. */
struct acme_problem {
    char type[ACME_PROBLEM_TYPE_MAX];     /* full type URI (ACME_ERROR_PREFIX "badNonce"),
                                             "" when there was no problem document */
    char detail[ACME_PROBLEM_DETAIL_MAX]; /* the CA's detail, then "; <identifier>: <detail>"
                                             per subproblem; for network failures the error */
    int status;                           /* HTTP status; 0 when no response arrived */
    uint32_t retry_after_s;               /* from Retry-After, seconds; 0 if none */
    bool has_retry_after;
    bool retryable;         /* worth retrying later: badNonce, rateLimited, serverInternal,
                               5xx, 429, timeouts and network errors */
    size_t num_subproblems; /* subproblems seen (RFC 8555 §6.7.1) */
};

/* acme_problem_parse fills out from a response with status and body
 * body[0..len) (application/problem+json). Returns 0 when body was a problem
 * document, -1 when it was not (out then describes the HTTP status alone).
 * Never reads past len; retry_after_s is left 0 (it comes from a header). */
int acme_problem_parse(struct acme_problem *out, int status, const char *body, size_t len);

/* acme_problem_from_json fills out from a problem object embedded in a
 * resource (an order's or challenge's "error"); status is 0 there. */
void acme_problem_from_json(struct acme_problem *out, int status, const struct json_t *obj);

/* acme_problem_from_err fills out for a failure that has no problem document
 * (network, TLS, timeout, parse, configuration). */
void acme_problem_from_err(struct acme_problem *out, const struct dm_err *err);

/* acme_problem_is tells whether p has type ACME_ERROR_PREFIX name, e.g.
 * acme_problem_is(p, "badNonce"). */
bool acme_problem_is(const struct acme_problem *p, const char *name);

/* acme_problem_short returns the type without ACME_ERROR_PREFIX (borrowed),
 * the full type for other URIs, or "http" / "network" when there is none. */
const char *acme_problem_short(const struct acme_problem *p);

/* ---- header and time helpers (RFC 9110, RFC 8288, RFC 3339) ---- */

/* acme_retry_after_parse reads a Retry-After value (RFC 9110 §10.2.3):
 * delta-seconds or an HTTP-date (IMF-fixdate, RFC 850 or asctime), relative to
 * now. A date in the past gives 0; values are clamped to ACME_RETRY_AFTER_MAX_S.
 * Returns 0 with *out_s, or -1 if value is not valid. */
int acme_retry_after_parse(const char *value, time_t now, uint32_t *out_s);

/* acme_time_parse reads an RFC 3339 timestamp ("2025-01-02T03:04:05.123Z",
 * "...+02:00"); fractions are dropped. Returns 0 with *out, or -1. */
int acme_time_parse(const char *s, time_t *out);

/* acme_link_parse appends to *io_urls (new strings; *io_num counts them) the
 * targets of every link in one Link field value whose rel equals rel (RFC 8288
 * §3: "<url>; rel=\"up\", <url2>; rel=alternate"), resolved against base_url.
 * At most max links are kept in total. Returns 0, or -1 when out of memory. */
int acme_link_parse(const char *value, const char *rel, const char *base_url, char ***io_urls,
                    size_t *io_num, size_t max);

/* acme_url_resolve returns ref resolved against the absolute URL base as a
 * new string (absolute URLs and absolute paths; enough for ACME's Location and
 * Link values), or NULL when out of memory or ref is empty. */
char *acme_url_resolve(const char *base, const char *ref);

/* acme_strings_free frees an array of num strings and the array. */
void acme_strings_free(char **s, size_t num);

/* ---- the directory (RFC 8555 §7.1.1) ---- */

struct acme_directory {
    char *new_nonce;                /* owned: URLs; newAuthz, revokeCert, keyChange and */
    char *new_account;              /* renewalInfo (RFC 9773) may be NULL, the rest not */
    char *new_order;                /* owned */
    char *new_authz;                /* owned or NULL */
    char *revoke_cert;              /* owned or NULL */
    char *key_change;               /* owned or NULL */
    char *renewal_info;             /* owned or NULL */
    char *terms_of_service;         /* owned or NULL: meta.termsOfService */
    char *website;                  /* owned or NULL: meta.website */
    bool external_account_required; /* meta.externalAccountRequired */
    char **profiles;                /* owned: names of meta.profiles (draft-ietf-acme-profiles) */
    size_t num_profiles;
};

/* acme_directory_parse decodes a directory document json[0..len) into out
 * (zeroed first). Requires newNonce, newAccount and newOrder as http(s) URLs.
 * Returns 0, or -1 with err (DM_E_PROTO, DM_E_NOMEM) and out cleaned up. */
int acme_directory_parse(struct acme_directory *out, const char *json, size_t len,
                         struct dm_err *err);

/* acme_directory_cleanup frees d's fields and zeroes it. */
void acme_directory_cleanup(struct acme_directory *d);

/* acme_directory_has_profile tells whether meta.profiles lists name. */
bool acme_directory_has_profile(const struct acme_directory *d, const char *name);

/* ---- the client ---- */

/* Defaults for zero fields of struct acme_client_opts. */
#define ACME_CLIENT_DEFAULT_CALL_TIMEOUT_MS 120000 /* one call, retries included */
#define ACME_CLIENT_DEFAULT_MAX_BAD_NONCE   10     /* badNonce re-signs per call */
#define ACME_CLIENT_DEFAULT_MAX_RETRIES     3      /* transient-failure retries per call */
#define ACME_CLIENT_DEFAULT_RETRY_BASE_MS   1000   /* first backoff; doubles */
#define ACME_CLIENT_DEFAULT_RETRY_MAX_MS    60000  /* backoff cap without Retry-After */
/* Nonces kept; each request uses one and its response brings the next, so a
 * few cover concurrent orders. Longest nonce accepted, characters. */
#define ACME_NONCE_POOL_MAX 8
#define ACME_NONCE_MAX      256
/* Most rel="alternate" links kept from one response. */
#define ACME_MAX_LINKS 8

struct acme_client_opts {
    const char *directory_url;   /* borrowed (copied): required, http:// or https:// */
    const char *ca_file;         /* borrowed (copied): CA bundle trusted for the CA's API;
                                    NULL = system bundle; unused when httpc is given */
    struct dm_httpc *httpc;      /* borrowed: shared HTTP client; NULL = make one */
    struct evdns_base *dns;      /* borrowed: resolver for the client's own httpc, or NULL */
    uint32_t request_timeout_ms; /* one HTTP exchange (own httpc only); 0 = httpc default */
    uint32_t call_timeout_ms;    /* default deadline of a call; 0 = default above */
    unsigned max_bad_nonce;      /* 0 = default above */
    unsigned max_retries;        /* 0 = default above */
    uint32_t retry_base_ms;      /* 0 = default above */
    uint32_t retry_max_ms;       /* 0 = default above */
};

struct acme_client;

/* acme_client_new makes a client for o->directory_url on base (borrowed; the
 * control thread's loop). Nothing is fetched until the first call. Returns
 * NULL with err (DM_E_CONFIG for a bad URL, DM_E_TLS, DM_E_NOMEM). */
struct acme_client *acme_client_new(struct event_base *base, const struct acme_client_opts *o,
                                    struct dm_err *err);

/* acme_client_free cancels every call in flight without calling back and
 * frees c. NULL does nothing. Not from one of c's callbacks. */
void acme_client_free(struct acme_client *c);

/* acme_client_base returns the event_base c runs on (borrowed). */
struct event_base *acme_client_base(const struct acme_client *c);

/* acme_client_directory_url returns the directory URL (borrowed). */
const char *acme_client_directory_url(const struct acme_client *c);

/* acme_client_directory_find returns the cached directory (borrowed, valid
 * while c lives) or NULL before the first successful fetch. */
const struct acme_directory *acme_client_directory_find(const struct acme_client *c);

/* acme_client_num_nonces returns how many nonces the pool holds (tests). */
size_t acme_client_num_nonces(const struct acme_client *c);

/* A successful response (2xx). Every pointer is borrowed and valid only during
 * the callback. Location and Link targets are absolute URLs. */
struct acme_response {
    int status;
    const char *body; /* body_len bytes, then a NUL; never NULL */
    size_t body_len;
    const char *content_type;    /* NULL if absent */
    const char *location;        /* NULL if absent */
    const char *link_up;         /* first Link rel="up", NULL if none */
    char *const *link_alternate; /* Link rel="alternate" targets, in order */
    size_t num_link_alternate;
    uint32_t retry_after_s; /* valid when has_retry_after (polling hints) */
    bool has_retry_after;
};

/* acme_client_done_cb ends a call: on success resp is set and prob and err
 * are NULL; on failure resp is NULL, err says what failed (DM_E_ACME when the
 * CA answered with an error status, else DM_E_IO, DM_E_TLS, DM_E_TIMEOUT,
 * DM_E_PROTO, DM_E_LIMIT, DM_E_NOMEM) and prob describes it, retryable and
 * retry_after_s included. All borrowed, valid during the callback only. The
 * callback may start and cancel calls; it must not free the client. */
typedef void (*acme_client_done_cb)(const struct acme_response *resp,
                                    const struct acme_problem *prob, const struct dm_err *err,
                                    void *arg);

/* acme_client_dir_cb ends a directory call: dir (borrowed from the client's
 * cache) on success, else prob and err as for acme_client_done_cb. */
typedef void (*acme_client_dir_cb)(const struct acme_directory *dir,
                                   const struct acme_problem *prob, const struct dm_err *err,
                                   void *arg);

/* Per-call options; a NULL struct or zero fields take the defaults. */
struct acme_call_opts {
    const char *accept;   /* borrowed (copied): Accept value, e.g.
                             "application/pem-certificate-chain"; NULL = none */
    uint64_t deadline_us; /* dm_time_mono_us() deadline of the whole call; 0 = now +
                             call_timeout_ms. No retry waits past it. */
    bool is_no_retry;     /* report transient failures at once (badNonce and stale
                             connections are still retried: they are not failures) */
};

/* One request in flight. */
struct acme_call;

/* acme_client_post_start sends a JWS-signed POST of payload (JSON text; ""
 * makes a POST-as-GET, RFC 8555 §6.3) to url, signed by key (borrowed: must
 * outlive the call) with kid (copied; NULL puts the "jwk" in the header
 * instead). It fetches the directory and a nonce when needed, and re-signs
 * with a fresh nonce on badNonce (at most max_bad_nonce times) or a stale
 * connection. Returns the call, whose cb runs exactly once from the loop and
 * never inside this function, or NULL with err (no callback). */
struct acme_call *acme_client_post_start(struct acme_client *c, const struct acme_key *key,
                                         const char *kid, const char *url, const char *payload,
                                         const struct acme_call_opts *o, acme_client_done_cb cb,
                                         void *arg, struct dm_err *err);

/* acme_client_get_start sends an unsigned GET to url (the directory,
 * renewalInfo). Same contract as acme_client_post_start. */
struct acme_call *acme_client_get_start(struct acme_client *c, const char *url,
                                        const struct acme_call_opts *o, acme_client_done_cb cb,
                                        void *arg, struct dm_err *err);

/* acme_client_directory_start gets the directory: from the cache (cb still
 * deferred), else by one GET shared by every call waiting for it. Same
 * contract as acme_client_post_start. */
struct acme_call *acme_client_directory_start(struct acme_client *c, acme_client_dir_cb cb,
                                              void *arg, struct dm_err *err);

/* acme_client_call_cancel stops call without calling back and frees it. NULL
 * does nothing; inside the call's own callback it does nothing either. */
void acme_client_call_cancel(struct acme_call *call);

#endif
