/* A scripted fake ACME CA for unit tests: a small HTTP/1.1 server on
 * 127.0.0.1 (plain http://, libevent) that speaks enough RFC 8555 to issue a
 * certificate (directory, nonces, accounts with EAB and key change, orders,
 * authorizations, challenges checked against the in-process solver registry,
 * finalize with a real CSR, chains with an alternate), verifies every JWS
 * (signature, nonce, url), and lets a test replace the next answers on a path
 * with recorded ones: problems with Retry-After, truncated or oversized
 * bodies, dropped connections. */
#ifndef DM_TESTS_FAKE_CA_H
#define DM_TESTS_FAKE_CA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct fake_ca;

/* Behaviour switches; change them between requests. */
struct fake_ca_knobs {
    unsigned bad_nonce_next; /* reject the next N signed POSTs with badNonce */
    const char *tos_url;     /* meta.termsOfService, or NULL */
    bool is_eab_required;    /* meta.externalAccountRequired; binding checked */
    const char *eab_kid;     /* the binding's key id */
    const uint8_t *eab_key;  /* its HMAC key */
    size_t eab_key_len;
    bool has_ari;               /* renewalInfo in the directory */
    const char *profile;        /* one meta.profiles name, or NULL */
    unsigned validate_polls;    /* authz fetches that still show pending after a challenge POST */
    unsigned issue_polls;       /* order fetches that still show processing after finalize */
    bool is_validation_failing; /* challenges end invalid (incorrectResponse) */
    bool is_authz_valid;        /* new authorizations are already valid (reuse) */
    bool has_alt_chain;         /* certificate responses offer one alternate chain */
    const char *offer;          /* challenge types offered, comma-separated; NULL = http-01,
                                   tls-alpn-01, dns-01 */
    bool is_solver_checked;     /* the challenge POST needs the response published */
    bool is_replaces_refused;   /* newOrder with "replaces" gets 409 alreadyReplaced */
};

struct fake_ca *fake_ca_new(struct event_base *base);
void fake_ca_free(struct fake_ca *f);
struct fake_ca_knobs *fake_ca_knobs(struct fake_ca *f);

/* fake_ca_dir_url returns "http://127.0.0.1:PORT/dir". */
const char *fake_ca_dir_url(const struct fake_ca *f);

/* fake_ca_script makes the next count requests whose path starts with
 * path_prefix get this answer instead (a Replay-Nonce is added). */
void fake_ca_script(struct fake_ca *f, const char *path_prefix, unsigned count, int status,
                    const char *content_type, const char *extra_headers, const char *body);

/* fake_ca_script_raw sends raw bytes (a whole or broken HTTP response) and
 * then closes the connection if is_close; raw NULL closes without answering. */
void fake_ca_script_raw(struct fake_ca *f, const char *path_prefix, unsigned count, const char *raw,
                        size_t raw_len, bool is_close);

/* fake_ca_count returns how many requests reached an endpoint: "dir",
 * "nonce", "new-acct", "new-order", "authz", "chall", "finalize", "order",
 * "cert", "key-change", "acct", "renewal-info". */
unsigned fake_ca_count(const struct fake_ca *f, const char *endpoint);

/* fake_ca_num_bad_nonce returns how many badNonce answers were sent. */
unsigned fake_ca_num_bad_nonce(const struct fake_ca *f);

/* fake_ca_last_payload returns the last verified JWS payload POSTed to an
 * endpoint (borrowed), or NULL. */
const char *fake_ca_last_payload(const struct fake_ca *f, const char *endpoint);

/* fake_ca_authz_poll_times returns the dm_time_mono_us() of each authz fetch. */
const uint64_t *fake_ca_authz_poll_times(const struct fake_ca *f, size_t *out_num);

/* fake_ca_challenge_posts_unpublished counts challenge POSTs that arrived
 * before the solver registry held the response. */
unsigned fake_ca_challenge_posts_unpublished(const struct fake_ca *f);

/* fake_ca_forget_accounts drops every account (a CA that was reset). */
void fake_ca_forget_accounts(struct fake_ca *f);

/* fake_run runs base until *done or timeout_ms passes; returns *done. */
bool fake_run(struct event_base *base, const bool *done, int timeout_ms);

/* fake_ca_root_cn names the issuer of the alternate chain's top ("Fake Root Y2"). */
#define FAKE_CA_ALT_ROOT_CN "Fake Root Y2"

#endif
