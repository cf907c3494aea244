/* Where issued certificates persist: a small key-value interface (issuer,
 * name) -> chain PEM, key PEM, metadata, with a filesystem backend today and
 * room for others (Redis) behind the same ops table.
 * Two ways in: the asynchronous _start calls, for code on an event loop (the
 * manager's renewals and on-demand lookups), which call back exactly once and
 * never before returning; and the synchronous calls, for commands and for
 * config apply, which run before or between loop turns on the control thread.
 * A backend implements the synchronous table and, when it talks to a network,
 * the optional start hook (storage_int.h); without it the generic adapter runs
 * the synchronous call on a copy of the request from the loop, right before
 * the callback (STYLE §6: the filesystem's small writes may be synchronous,
 * its callbacks still deferred), so a write never delays what its caller
 * does next in the same turn.
 * Layout of the filesystem backend: docs/certificates.md. */
#ifndef DM_ACME_STORAGE_H
#define DM_ACME_STORAGE_H

#include <stddef.h>
#include <time.h>

#include "proxy/core/err.h"

struct event_base;

/* Metadata stored next to a certificate (meta.json). Times are seconds since
 * the epoch. */
struct acme_storage_meta {
    char **names; /* owned: SANs in issue order (the first is the CN) */
    size_t num_names;
    char *issuer; /* owned: "local", later an ACME directory id */
    time_t not_before;
    time_t not_after;
    time_t renew_after; /* when renewal becomes due (jitter included) */
    char *last_error;   /* owned: last renewal failure, NULL if none */
    /* The CA's renewal window (ACME ARI, RFC 9773) last seen for this
     * certificate; both 0 if none. */
    time_t ari_window_start;
    time_t ari_window_end;
};

/* acme_storage_meta_cleanup frees the fields of m (not m) and zeroes it. */
void acme_storage_meta_cleanup(struct acme_storage_meta *m);

struct acme_storage;

/* The backend table. Every function returns 0 or -1 with err; a missing
 * entry is DM_E_NOTFOUND. issuer and name must pass acme_storage_key_valid. */
struct acme_storage_ops {
    /* get reads an entry: new NUL-terminated PEM strings (caller frees;
     * key with acme_pem_free_secret) and, if out_meta is not NULL, the
     * metadata (caller cleans up). */
    int (*get)(struct acme_storage *st, const char *issuer, const char *name, char **out_cert_pem,
               char **out_key_pem, struct acme_storage_meta *out_meta, struct dm_err *err);
    /* put replaces an entry (key written 0600). */
    int (*put)(struct acme_storage *st, const char *issuer, const char *name, const char *cert_pem,
               const char *key_pem, const struct acme_storage_meta *meta, struct dm_err *err);
    /* del removes an entry; removing a missing one succeeds. */
    int (*del)(struct acme_storage *st, const char *issuer, const char *name, struct dm_err *err);
    /* list returns the names stored for issuer (new array of new strings;
     * free with acme_storage_names_free). */
    int (*list)(struct acme_storage *st, const char *issuer, char ***out_names, size_t *out_num,
                struct dm_err *err);
    /* lock takes the named lock (e.g. "order-example.com") for ttl_s seconds:
     * returns 0 when taken, 1 when another holder has it (not expired), or
     * -1 with err. An expired lock is taken over, so a crashed holder never
     * blocks the others for longer than its ttl. Processes sharing storage
     * use it so one orders a name while the others wait for the result. */
    int (*lock)(struct acme_storage *st, const char *key, unsigned ttl_s, struct dm_err *err);
    /* unlock releases a lock this storage object took; a missing lock is fine. */
    void (*unlock)(struct acme_storage *st, const char *key);
    void (*free)(struct acme_storage *st);
};

struct acme_storage_op;

struct acme_storage {
    const struct acme_storage_ops *ops; /* borrowed: static table of the backend */
    /* Optional: begins op without blocking and calls acme_storage_op_finish
     * later (storage_int.h). NULL: the generic synchronous adapter. */
    void (*start)(struct acme_storage *st, struct acme_storage_op *op);
};

/* acme_storage_fs_new returns the filesystem backend rooted at
 * <data_dir>/certificates (created on first put), or NULL with err. */
struct acme_storage *acme_storage_fs_new(const char *data_dir, struct dm_err *err);

/* acme_storage_free frees st via its backend; NULL does nothing. */
void acme_storage_free(struct acme_storage *st);

/* Thin wrappers that check issuer and name, then call the backend. */
int acme_storage_get(struct acme_storage *st, const char *issuer, const char *name,
                     char **out_cert_pem, char **out_key_pem, struct acme_storage_meta *out_meta,
                     struct dm_err *err);
int acme_storage_put(struct acme_storage *st, const char *issuer, const char *name,
                     const char *cert_pem, const char *key_pem,
                     const struct acme_storage_meta *meta, struct dm_err *err);
int acme_storage_delete(struct acme_storage *st, const char *issuer, const char *name,
                        struct dm_err *err);
int acme_storage_list(struct acme_storage *st, const char *issuer, char ***out_names,
                      size_t *out_num, struct dm_err *err);

/* acme_storage_lock / acme_storage_unlock: see struct acme_storage_ops.
 * key is [a-z0-9._-], at most 200 bytes. */
int acme_storage_lock(struct acme_storage *st, const char *key, unsigned ttl_s, struct dm_err *err);
void acme_storage_unlock(struct acme_storage *st, const char *key);

/* acme_storage_names_free frees a list returned by acme_storage_list. */
void acme_storage_names_free(char **names, size_t num);

/* acme_storage_key_valid tells whether issuer ([a-z0-9_-], 1..64 bytes) and
 * name (a certificate name per acme_name_valid) are safe to use as keys; they
 * become path components, so this is what keeps "/" and ".." out. */
int acme_storage_key_valid(const char *issuer, const char *name, struct dm_err *err);

/* What an asynchronous call produced, valid during its callback. The callback
 * may take cert_pem, key_pem (a secret: acme_pem_free_secret) and meta's
 * fields by setting them to NULL/zero; what it leaves is freed after it. */
struct acme_storage_reply {
    int rc; /* 0 done; 1 lock held by another holder (lock only); -1 failed: err */
    struct dm_err err;
    char *cert_pem;                /* get */
    char *key_pem;                 /* get */
    struct acme_storage_meta meta; /* get */
    char **names;                  /* list (acme_storage_names_free) */
    size_t num_names;              /* list */
};

typedef void (*acme_storage_cb)(struct acme_storage_reply *reply, void *arg);

/* The asynchronous calls: same meaning as the synchronous ones, arguments
 * read before they return. Each returns the call in flight, or NULL with err
 * (invalid key, out of memory) and then never calls back. cb runs exactly
 * once, on base's loop, after the call returned, unless cancelled first. */
struct acme_storage_op *acme_storage_get_start(struct acme_storage *st, struct event_base *base,
                                               const char *issuer, const char *name,
                                               acme_storage_cb cb, void *arg, struct dm_err *err);
struct acme_storage_op *acme_storage_put_start(struct acme_storage *st, struct event_base *base,
                                               const char *issuer, const char *name,
                                               const char *cert_pem, const char *key_pem,
                                               const struct acme_storage_meta *meta,
                                               acme_storage_cb cb, void *arg, struct dm_err *err);
struct acme_storage_op *acme_storage_lock_start(struct acme_storage *st, struct event_base *base,
                                                const char *key, unsigned ttl_s, acme_storage_cb cb,
                                                void *arg, struct dm_err *err);
struct acme_storage_op *acme_storage_delete_start(struct acme_storage *st, struct event_base *base,
                                                  const char *issuer, const char *name,
                                                  acme_storage_cb cb, void *arg,
                                                  struct dm_err *err);
struct acme_storage_op *acme_storage_list_start(struct acme_storage *st, struct event_base *base,
                                                const char *issuer, acme_storage_cb cb, void *arg,
                                                struct dm_err *err);
/* acme_storage_op_cancel drops a call in flight: its callback will not run.
 * A put or lock may still take effect. NULL does nothing. */
void acme_storage_op_cancel(struct acme_storage_op *op);

#endif
