/* ACME accounts (RFC 8555 §7.3): one account key per (CA directory, email),
 * kept in <data_dir>/acme/<directory host+path>/<email or "default">/
 * account.key (PKCS#8, 0600, atomic write) and account.json (the account URL,
 * "kid"). Registration (newAccount with terms-of-service agreement, External
 * Account Binding, onlyReturnExisting recovery), key rollover (keyChange) and
 * deactivation run asynchronously on the CA's struct acme_client.
 * Invariant (STYLE §4.8): the key stays in struct acme_key; the order asks for
 * signatures through the client. Design: docs/acme.md. */
#ifndef DM_ACME_ACCOUNT_H
#define DM_ACME_ACCOUNT_H

#include <stdbool.h>
#include <stddef.h>

#include "acme/jws.h"

struct acme_client;
struct acme_directory;
struct acme_problem;
struct dm_err;

/* Longest path of an account directory, bytes. */
#define ACME_ACCOUNT_PATH_MAX 1024
/* Longest contact email accepted, bytes. */
#define ACME_ACCOUNT_EMAIL_MAX 254

struct acme_account_opts {
    const char *data_dir;      /* borrowed (copied): required */
    const char *email;         /* borrowed (copied): contact; NULL or "" = none, stored as
                                  "default" */
    bool is_tos_agreed;        /* the operator agrees to the CA's terms of service */
    const char *eab_kid;       /* borrowed (copied): External Account Binding key id, with */
    const char *eab_hmac_key;  /* borrowed (copied): its base64url HMAC key; both or neither */
    enum acme_key_alg key_alg; /* for a new account key; ES256 by default */
    unsigned rsa_bits;         /* for ACME_KEY_RS256: 2048 (0), 3072 or 4096 */
};

struct acme_account;

/* acme_account_storage_dir writes the account directory for (directory_url,
 * email) under data_dir into buf: <data_dir>/acme/<host[-port]-path>/<email
 * or "default">, each component reduced to [a-z0-9.@+_-] (a long directory
 * URL is shortened and suffixed with a hash). Returns 0, or -1 with err
 * (DM_E_CONFIG for an invalid email, DM_E_LIMIT if buf is short). */
int acme_account_storage_dir(char *buf, size_t cap, const char *data_dir, const char *directory_url,
                             const char *email, struct dm_err *err);

/* acme_account_open loads the account for c's directory and o->email from
 * disk, creating and storing a new key if there is none (synchronous: small
 * file I/O and, for RSA, key generation). The kid is known when account.json
 * exists; otherwise acme_account_register_start finds or creates the account.
 * c is borrowed and must outlive the account. Returns a new account (free with
 * acme_account_free) or NULL with err (DM_E_CONFIG, DM_E_IO, DM_E_NOMEM). */
struct acme_account *acme_account_open(struct acme_client *c, const struct acme_account_opts *o,
                                       struct dm_err *err);

/* acme_account_free cancels the account's operations without calling back and
 * frees it. NULL does nothing. Not from an operation's callback. */
void acme_account_free(struct acme_account *a);

/* acme_account_kid returns the account URL (borrowed), or NULL until the
 * account is registered. */
const char *acme_account_kid(const struct acme_account *a);

/* acme_account_key returns the account key (borrowed, valid while a lives) to
 * pass to acme_client_post_start and acme_key_authorization. */
const struct acme_key *acme_account_key(const struct acme_account *a);

/* acme_account_path returns the account directory (borrowed). */
const char *acme_account_path(const struct acme_account *a);

/* acme_account_client returns the client the account uses (borrowed). */
struct acme_client *acme_account_client(const struct acme_account *a);

/* acme_account_forget drops the kid and removes account.json, for when the CA
 * says the account does not exist (accountDoesNotExist after a CA reset); the
 * next registration looks it up again with the same key. */
void acme_account_forget(struct acme_account *a);

/* acme_account_new_payload builds the newAccount payload (RFC 8555 §7.3): with
 * is_only_existing {"onlyReturnExisting":true}; otherwise contact mailto:,
 * termsOfServiceAgreed and externalAccountBinding as the options and the
 * directory dir require. Fails with DM_E_CONFIG when dir has terms of service
 * the options do not agree to, or requires EAB and none is configured. Returns
 * 0 with a new *out_json (caller frees), or -1 with err. */
int acme_account_new_payload(const struct acme_account *a, const struct acme_directory *dir,
                             bool is_only_existing, char **out_json, struct dm_err *err);

/* An operation on an account in flight. */
struct acme_account_op;

/* acme_account_done_cb ends an operation: prob and err are NULL on success,
 * else they say why (borrowed, valid during the callback). The callback must
 * not free the account. */
typedef void (*acme_account_done_cb)(struct acme_account *a, const struct acme_problem *prob,
                                     const struct dm_err *err, void *arg);

/* acme_account_register_start makes sure the CA knows the account: nothing to
 * do if the kid is known; else newAccount with onlyReturnExisting when the
 * key was loaded from disk, then (or for a new key) newAccount creating it,
 * and account.json is written. cb runs exactly once from the loop, never
 * inside this call, unless the operation is canceled. Returns the operation,
 * or NULL with err (no callback). */
struct acme_account_op *acme_account_register_start(struct acme_account *a, acme_account_done_cb cb,
                                                    void *arg, struct dm_err *err);

/* acme_account_key_change_start rolls the account over to new_key (RFC 8555
 * §7.3.5); it takes ownership of new_key (the caller NULLs its pointer). The
 * new key is written to account.key.next first and renamed over account.key
 * once the CA accepts it. No other operation or order may use the account
 * meanwhile. Same callback contract as acme_account_register_start. */
struct acme_account_op *acme_account_key_change_start(struct acme_account *a,
                                                      struct acme_key *new_key,
                                                      acme_account_done_cb cb, void *arg,
                                                      struct dm_err *err);

/* acme_account_deactivate_start deactivates the account (RFC 8555 §7.3.6);
 * on success account.key and account.json are renamed to *.deactivated so the
 * next open starts a new account. Same contract as above. */
struct acme_account_op *acme_account_deactivate_start(struct acme_account *a,
                                                      acme_account_done_cb cb, void *arg,
                                                      struct dm_err *err);

/* acme_account_op_cancel stops op without calling back. NULL does nothing;
 * inside its own callback it does nothing either. */
void acme_account_op_cancel(struct acme_account_op *op);

#endif
