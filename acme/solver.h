/* Challenge responses served by the data plane during ACME validation:
 * http-01 key authorizations by token, tls-alpn-01 certificates by name.
 * Written by the order machine (control thread), read by workers. */
#ifndef DM_ACME_SOLVER_H
#define DM_ACME_SOLVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct acme_cert;
struct dm_err;

/* acme_solver_http01_put publishes key_auth for token (copied). Returns 0/-1. */
int acme_solver_http01_put(const char *token, const char *key_auth);
void acme_solver_http01_remove(const char *token);

/* acme_http01_lookup copies the key authorization for token into out.
 * Returns its length, or -1 if no challenge has that token (or cap is short). */
int acme_http01_lookup(const char *token, size_t token_len, char *out, size_t cap);

/* acme_http01_any tells whether any http-01 challenge is pending. */
bool acme_http01_any(void);

/* acme_tlsalpn_cert_new makes the self-signed validation certificate for name
 * (one dNSName or iPAddress SAN) with the critical acmeIdentifier extension
 * holding digest = SHA-256(key authorization) (RFC 8737 §3). */
struct acme_cert *acme_tlsalpn_cert_new(const char *name, const uint8_t digest[32],
                                        struct dm_err *err);

/* acme_solver_tlsalpn_put publishes a validation certificate for name (a
 * DNS name, or an IP literal: then it is found under the reverse-DNS name
 * the CA sends as SNI, RFC 8738 §6). acme_solver_tlsalpn_remove takes the
 * same name. */
int acme_solver_tlsalpn_put(const char *name, const uint8_t digest[32], struct dm_err *err);
void acme_solver_tlsalpn_remove(const char *name);

/* acme_tlsalpn_sni_for writes into out the reverse-DNS name a CA sends as
 * SNI when it validates the IP literal name (RFC 8738 §6: in-addr.arpa or
 * ip6.arpa). Returns 0, or -1 if name is not an IP literal. */
int acme_tlsalpn_sni_for(const char *name, char *out, size_t cap);

/* acme_tlsalpn_cert_get returns a new reference to the validation
 * certificate pending for name, or NULL. */
struct acme_cert *acme_tlsalpn_cert_get(const char *name, size_t name_len);

/* acme_solver_set_hit_hook makes fn(name, arg) run each time a tls-alpn-01
 * validation connection finds its certificate (name: the SNI), on the worker
 * thread serving it: a hint that the CA is validating now, so the order can
 * poll at once. fn must be thread-safe and quick. Set before workers start,
 * cleared (NULL) after they stop. */
void acme_solver_set_hit_hook(void (*fn)(const char *name, void *arg), void *arg);

#endif
