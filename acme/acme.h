/* The certificate side as the data plane sees it: a store of ready-to-serve
 * certificates keyed by name, and the manager that fills it (local CA or
 * files today; ACME and on-demand later). proxy/ includes only this header. */
#ifndef DM_ACME_ACME_H
#define DM_ACME_ACME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include <openssl/base.h>

struct cfg;
struct dm_err;
struct event_base;

/* A certificate ready to serve: DER chain as CRYPTO_BUFFERs (leaf first) and
 * its private key. Immutable and refcounted with an atomic count, so handshakes
 * on any worker can hold it while renewal swaps in a new one. */
struct acme_cert;

/* acme_cert_from_pem parses a PEM chain (leaf first) and a PEM private key
 * (ECDSA or RSA; PKCS#8, SEC1 or PKCS#1) into a new certificate (refs = 1).
 * Checks that the key matches the leaf. pool (may be NULL) deduplicates
 * buffers. */
struct acme_cert *acme_cert_from_pem(const char *chain_pem, size_t chain_len, const char *key_pem,
                                     size_t key_len, CRYPTO_BUFFER_POOL *pool, struct dm_err *err);

struct acme_cert *acme_cert_ref(struct acme_cert *c);
void acme_cert_unref(struct acme_cert *c);

/* Borrowed views, valid while the caller holds a reference. */
CRYPTO_BUFFER *const *acme_cert_chain(const struct acme_cert *c, size_t *out_num);
EVP_PKEY *acme_cert_key(const struct acme_cert *c);
time_t acme_cert_not_before(const struct acme_cert *c);
time_t acme_cert_not_after(const struct acme_cert *c);

/* acme_cert_touch records that a handshake served c now; acme_cert_last_used
 * reads it (creation counts as a use). Any thread. */
void acme_cert_touch(struct acme_cert *c);
time_t acme_cert_last_used(const struct acme_cert *c);

/* acme_cert_covers tells whether the leaf's SANs cover name (exact or wildcard). */
bool acme_cert_covers(const struct acme_cert *c, const char *name);

/* The certificate store: name -> certificate. Lookups are safe from every
 * worker thread concurrently with updates. */
struct acme_store;

struct acme_store *acme_store_new(void);
void acme_store_free(struct acme_store *s);

/* acme_store_get finds the certificate for a lower-case SNI name: exact
 * match first, then the wildcard for its parent ("*.example.com" for
 * "a.example.com"). Returns a new reference or NULL. */
struct acme_cert *acme_store_get(struct acme_store *s, const char *name, size_t name_len);

/* acme_store_get_default returns a new reference to the certificate used when
 * a client sends no SNI (the first configured site), or NULL. */
struct acme_cert *acme_store_get_default(struct acme_store *s);

/* acme_store_put maps name (exact or "*.x") to cert, replacing any previous
 * entry atomically; the store takes its own reference. is_default marks the
 * no-SNI fallback (without any, the first name put is the fallback). Returns 0
 * or -1 (out of memory, or name empty or longer than 253 bytes). */
int acme_store_put(struct acme_store *s, const char *name, struct acme_cert *cert, bool is_default);

/* acme_store_remove drops name; handshakes holding the old cert keep it. */
void acme_store_remove(struct acme_store *s, const char *name);

/* acme_store_count returns the number of names mapped. */
size_t acme_store_count(struct acme_store *s);

/* The embedded local CA: an ECDSA P-256 root created on first use in
 * <data_dir>/pki/local/ (root.pem, root.key mode 0600), which signs short-lived
 * leaves for configured names. */
struct acme_local_ca;

/* acme_local_ca_open loads the root from data_dir, creating it if missing. */
struct acme_local_ca *acme_local_ca_open(const char *data_dir, struct dm_err *err);
void acme_local_ca_free(struct acme_local_ca *ca);

/* acme_local_ca_root_path returns the path of the root certificate (PEM). */
const char *acme_local_ca_root_path(const struct acme_local_ca *ca);

/* acme_local_root_path writes <data_dir>/pki/local/root.pem into buf without
 * opening anything (for `doorman trust` before the CA exists). */
int acme_local_root_path(const char *data_dir, char *buf, size_t cap);

/* acme_local_ca_issue makes a new P-256 key and a leaf for names (SANs; the
 * first is the CN), valid from now-1h to now+lifetime_s, signed by the root.
 * Returns a new certificate (refs = 1); chain = leaf + root. If out_chain_pem
 * and out_key_pem are not NULL they receive new PEM strings (caller frees;
 * wipe the key PEM with OPENSSL_cleanse first). */
struct acme_cert *acme_local_ca_issue(struct acme_local_ca *ca, const char *const *names,
                                      size_t num_names, long lifetime_s, char **out_chain_pem,
                                      char **out_key_pem, struct dm_err *err);

/* The certificate manager: for each site of a config, gets a certificate
 * (files: load; local: reuse the stored one or issue a new one), puts it in
 * the store under every site name, and renews local ones on a timer in base
 * (the control thread's loop) when a third of their lifetime remains. */
struct acme_manager;

/* acme_manager_new returns a manager filling store (borrowed; must outlive
 * it) from data_dir, with renewal timers in base (borrowed). base may be NULL
 * for one-shot commands: then nothing is renewed. Control thread only. */
struct acme_manager *acme_manager_new(struct event_base *base, struct acme_store *store,
                                      const char *data_dir, struct dm_err *err);
void acme_manager_free(struct acme_manager *m);

/* acme_manager_apply makes the store serve cfg's sites: loads or issues what
 * is missing, drops names no longer configured. Runs at startup and on each
 * reload, before the new config is published. Returns 0 or -1 with err (the
 * store is left as it was for names that failed). */
int acme_manager_apply(struct acme_manager *m, const struct cfg *cfg, struct dm_err *err);

/* acme_manager_local_ca returns the manager's local CA (borrowed), opening it
 * on first use; NULL with err if it cannot be created. */
struct acme_local_ca *acme_manager_local_ca(struct acme_manager *m, struct dm_err *err);

/* acme_manager_next_renewal returns when the local certificate serving name
 * is next renewed (or retried after a failure), in seconds since the epoch;
 * 0 if no local certificate serves name. For tests and the admin API. */
time_t acme_manager_next_renewal(const struct acme_manager *m, const char *name);

/* ACME orders since the manager started, for metrics. */
struct acme_order_stats {
    uint64_t started;   /* orders sent to a CA (renewals and retries included) */
    uint64_t succeeded; /* orders that ended with a usable certificate */
    uint64_t failed;    /* orders that failed, or could not start */
};

/* acme_manager_order_stats fills out. Control thread only. */
void acme_manager_order_stats(const struct acme_manager *m, struct acme_order_stats *out);

/* acme_manager_cert_cb receives one served name and the not-after time of the
 * certificate serving it (0 if none is served yet). */
typedef void (*acme_manager_cert_cb)(const char *name, time_t not_after, void *arg);

/* acme_manager_foreach_cert calls cb for every name the last apply serves,
 * in sorted order, synchronously. Control thread only. */
void acme_manager_foreach_cert(const struct acme_manager *m, acme_manager_cert_cb cb, void *arg);

/* Certificate revocation for `doorman revoke` (RFC 8555 §7.6), revoke.c. */
/* No reason given: the request carries no "reason" (the CA records 0). */
#define ACME_REVOKE_NO_REASON (-1)

/* acme_revoke_run revokes the certificate stored for the ACME site of cfg
 * (borrowed) that serves name, with the CRL reason code reason (RFC 5280
 * §5.3.1: 0-10 except 7, or ACME_REVOKE_NO_REASON). By default the request is
 * signed by the site's account with its kid (registering it again if only its
 * key is known; a missing account key is DM_E_NOTFOUND); with is_cert_key it
 * is signed by the certificate's own stored key with a "jwk" header, and no
 * account is opened (RFC 8555 §7.6). It blocks on a private event_base until
 * the CA answers, and on success writes the revoked serial (lower-case hex)
 * into out_serial (cap bytes, may be NULL). Returns 0, or -1 with err
 * (DM_E_CONFIG: no such ACME site or bad reason; DM_E_NOTFOUND: nothing
 * stored; DM_E_ACME with the CA's problem; DM_E_IO, DM_E_TIMEOUT...). */
int acme_revoke_run(const struct cfg *cfg, const char *name, int reason, bool is_cert_key,
                    char *out_serial, size_t cap, struct dm_err *err);

/* Account commands for `doorman account` (account_cmd.c). Both open the
 * account of the first ACME CA (directory, ca_root, email, EAB) of the site of
 * cfg (borrowed) that serves name, refuse with DM_E_NOTFOUND when it has no
 * stored account key (nothing to act on; no account is created), block on a
 * private event_base until the CA answers, and on success write the account
 * URL into out_kid (cap bytes, may be NULL). A running doorman keeps the old
 * account in memory: restart it afterwards. Return 0, or -1 with err
 * (DM_E_CONFIG, DM_E_NOTFOUND, DM_E_ACME with the CA's problem, DM_E_IO...). */

/* acme_account_rollover_run replaces the account key with a new one of the
 * same algorithm (and RSA size) through keyChange (RFC 8555 §7.3.5). The new
 * key is written to account.key.next (0600) first and renamed over
 * account.key only once the CA accepted it, so the old key keeps working
 * until then. If the CA refused, account.key.next is removed; if no answer
 * came, it is kept (the message says so) because the CA may have switched.
 * A leftover account.key.next makes it refuse (DM_E_CONFIG) rather than
 * overwrite what may be the only key the CA accepts. */
int acme_account_rollover_run(const struct cfg *cfg, const char *name, char *out_kid, size_t cap,
                              struct dm_err *err);

/* acme_account_deactivate_run deactivates the account (RFC 8555 §7.3.6:
 * {"status":"deactivated"}, final at the CA). Its account.key and
 * account.json are then renamed to *.deactivated, kept for the record; the
 * next run of a site on that CA and email registers a new account with a new
 * key. */
int acme_account_deactivate_run(const struct cfg *cfg, const char *name, char *out_kid, size_t cap,
                                struct dm_err *err);

/* acme_certificates_report prints what data_dir holds (names, issuer,
 * not-after, next renewal, last error) to out, one certificate per line.
 * Read-only; for `doorman certificates`. */
int acme_certificates_report(const char *data_dir, FILE *out, struct dm_err *err);

/* On-demand TLS (acme/ondemand.c): certificates for names nobody listed,
 * ordered during their first handshake when an on-demand site's policy
 * permits. The data plane asks from its select-certificate callback after a
 * store miss; the work runs on the manager's (control) loop. */
struct acme_ondemand;
struct cfg_site;

enum acme_od_answer {
    ACME_OD_WAIT = 0, /* being looked up or ordered: retry when woken */
    ACME_OD_REFUSED,  /* not permitted, or failed recently: fail the handshake */
};

/* acme_manager_ondemand returns the manager's on-demand service, or NULL
 * when the manager has no loop (one-shot commands). */
struct acme_ondemand *acme_manager_ondemand(struct acme_manager *m);

/* acme_ondemand_set_wake registers fn(arg), called from the control thread
 * (the workers coalesce repeated wake-ups) whenever waiting handshakes should
 * retry: a certificate arrived, or a name was refused or failed. */
void acme_ondemand_set_wake(struct acme_ondemand *od, void (*fn)(void *arg), void *arg);

/* acme_ondemand_request: name (lower-case SNI) has no certificate in the
 * store and site (borrowed, of the caller's config generation; only read
 * during the call) is the on-demand site routing it. Any thread; never
 * blocks beyond a short mutex. *why gets a static reason on REFUSED. */
enum acme_od_answer acme_ondemand_request(struct acme_ondemand *od, const struct cfg_site *site,
                                          const char *name, const char **why);

/* What the on-demand service did since start (its log summary's figures). */
struct acme_ondemand_stats {
    uint64_t started, succeeded, failed; /* orders */
    uint64_t refused;                    /* names refused by the policy or a limit */
    uint64_t loaded;                     /* certificates loaded lazily from storage */
    uint64_t waited, waited_got;         /* handshakes that waited; of them, served */
    size_t cached;                       /* certificates held now */
};

/* acme_ondemand_stats fills out. Control thread. */
void acme_ondemand_stats(struct acme_ondemand *od, struct acme_ondemand_stats *out);

/* acme_ondemand_note_wait records a handshake that waited ms for an on-demand
 * certificate (got: it was served one) for the periodic summary. Any thread. */
void acme_ondemand_note_wait(struct acme_ondemand *od, uint32_t ms, bool got);

/* acme_certificates_json returns what acme_certificates_report prints as a
 * new JSON string (caller frees): {"certificates": [{"names": [...],
 * "issuer": "...", "not_after": RFC 3339, "renew_at": RFC 3339 or null,
 * "expired": bool, "last_error": string or null}, ...]}. For the admin API.
 * NULL with err on failure. */
char *acme_certificates_json(const char *data_dir, struct dm_err *err);

#endif
