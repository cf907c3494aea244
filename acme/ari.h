/* ACME Renewal Information (RFC 9773): the certificate identifier a CA
 * knows a certificate by, the renewalInfo query (an unsigned GET) with its
 * suggestedWindow, explanationURL and Retry-After, and the choice of a
 * renewal time uniformly inside the window. The renewal scheduler asks here;
 * the order's "replaces" field carries the identifier. Design: docs/acme.md. */
#ifndef DM_ACME_ARI_H
#define DM_ACME_ARI_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct acme_client;
struct acme_problem;
struct dm_err;

/* Longest keyIdentifier and serial read, bytes (RFC 5280 caps serials at 20
 * octets; key identifiers are 20 in practice), and the identifier's length:
 * two base64url parts and a dot, with room to spare. */
#define ACME_ARI_PART_MAX    64
#define ACME_ARI_CERT_ID_MAX 192
/* Poll interval bounds (RFC 9773 §4.3: clamp Retry-After to a reasonable
 * range; without one, ask again in six hours). */
#define ACME_ARI_RETRY_MIN_S     60
#define ACME_ARI_RETRY_MAX_S     86400
#define ACME_ARI_RETRY_DEFAULT_S 21600

/* acme_ari_cert_id_encode writes base64url(aki) "." base64url(serial) into
 * out (RFC 9773 §4.1), where serial is the DER INTEGER's content octets
 * (a leading 0x00 included). Returns 0, or -1 if a part is empty or longer
 * than ACME_ARI_PART_MAX, or out is short. */
int acme_ari_cert_id_encode(const uint8_t *aki, size_t aki_len, const uint8_t *serial,
                            size_t serial_len, char *out, size_t cap);

/* acme_ari_cert_id computes the identifier of the DER certificate
 * der[0..len) from its Authority Key Identifier keyIdentifier and serial.
 * Returns 0, or -1 with err (DM_E_PROTO: not X.509, no AKI keyIdentifier). */
int acme_ari_cert_id(const uint8_t *der, size_t len, char *out, size_t cap, struct dm_err *err);

/* acme_ari_cert_id_pem does the same for the first certificate of a PEM
 * chain (the leaf). */
int acme_ari_cert_id_pem(const char *pem, size_t len, char *out, size_t cap, struct dm_err *err);

/* A renewalInfo answer (RFC 9773 §4.2). */
struct acme_ari_info {
    time_t window_start;    /* suggestedWindow.start */
    time_t window_end;      /* suggestedWindow.end, > window_start */
    char *explanation_url;  /* owned or NULL: for the operator's log */
    uint32_t retry_after_s; /* ask again after, clamped to the bounds above */
};

/* acme_ari_parse decodes a renewalInfo body json[0..len) into out (zeroed
 * first); retry_after_s is the response's Retry-After in seconds (see
 * acme_retry_after_parse) or NULL if it had none. Returns 0, or -1 with err
 * (DM_E_PROTO) and out cleaned up. */
int acme_ari_parse(struct acme_ari_info *out, const char *json, size_t len,
                   const uint32_t *retry_after_s, struct dm_err *err);

/* acme_ari_info_cleanup frees info's fields and zeroes it. */
void acme_ari_info_cleanup(struct acme_ari_info *info);

/* acme_ari_pick returns window_start + (rnd mod (window_end - window_start)):
 * a time uniformly within [start, end) for a uniform rnd (RFC 9773 §4.2). A
 * window already over gives now (renew at once). Deterministic for tests. */
time_t acme_ari_pick(const struct acme_ari_info *info, time_t now, uint64_t rnd);

/* acme_ari_choose is acme_ari_pick with a random rnd (RAND_bytes). */
time_t acme_ari_choose(const struct acme_ari_info *info, time_t now);

/* acme_ari_done_cb ends a fetch: info on success (borrowed, valid during the
 * callback), else prob and err (DM_E_NOTFOUND if the CA has no renewalInfo). */
typedef void (*acme_ari_done_cb)(const struct acme_ari_info *info, const struct acme_problem *prob,
                                 const struct dm_err *err, void *arg);

struct acme_ari_fetch;

/* acme_ari_fetch_start gets <directory renewalInfo>/<cert_id> from c's CA.
 * cb runs exactly once from the loop, never inside this call, unless the
 * fetch is canceled. Returns the handle (valid until cb returns or cancel), or
 * NULL with err and no callback. */
struct acme_ari_fetch *acme_ari_fetch_start(struct acme_client *c, const char *cert_id,
                                            acme_ari_done_cb cb, void *arg, struct dm_err *err);

/* acme_ari_fetch_cancel stops f without calling back. NULL does nothing;
 * inside its own callback it does nothing either. */
void acme_ari_fetch_cancel(struct acme_ari_fetch *f);

#endif
