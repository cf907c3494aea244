/* The certificate manager's ACME sites (manager_acme.c), used by manager.c
 * only. Control thread only. */
#ifndef DM_ACME_MANAGER_ACME_H
#define DM_ACME_MANAGER_ACME_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct acme_cert;
struct acme_order_stats;
struct acme_storage;
struct acme_store;
struct cfg;
struct dm_err;
struct event_base;
struct mgr_acme;
struct mgr_acme_set;

/* acme_issuer_storage_id writes the storage issuer of an ACME directory URL:
 * "acme-" + its host and port reduced to [a-z0-9_-] (acme-127_0_0_1-14000). */
void acme_issuer_storage_id(char *buf, size_t cap, const char *url);

/* acme_renew_time is the renewal rule for a certificate valid over [start,
 * not_after]: a third of its lifetime left, minus a random jitter of up to 1%
 * of it so certificates issued together do not renew in the same second. No
 * fixed number of days: 6-day and 90-day certificates follow the same rule.
 * Shared by the local CA and ACME sites (manager.c). */
time_t acme_renew_time(time_t start, time_t not_after);

/* mgr_acme_set_new returns the ACME side of a manager; base may be NULL
 * (one-shot commands: stored certificates are served, nothing is ordered). */
struct mgr_acme_set *mgr_acme_set_new(struct event_base *base, struct acme_store *store,
                                      struct acme_storage *storage, const char *data_dir);
void mgr_acme_set_free(struct mgr_acme_set *s);

/* mgr_acme_prepare makes (or carries over from the running config) the entry
 * for cfg->sites[site_index] and links it into *io_fresh; *out_cert gets a
 * new reference to the certificate to serve now, or NULL when there is none
 * yet (the order starts on commit). Nothing else changes until commit. */
int mgr_acme_prepare(struct mgr_acme_set *s, struct cfg *cfg, size_t site_index,
                     struct mgr_acme **io_fresh, struct acme_cert **out_cert, struct dm_err *err);

/* mgr_acme_commit makes fresh the running list: entries of removed sites stop
 * (their orders are canceled) and every entry's timer is set. */
void mgr_acme_commit(struct mgr_acme_set *s, struct mgr_acme *fresh);

/* mgr_acme_abort undoes the prepares of a failed apply. */
void mgr_acme_abort(struct mgr_acme_set *s, struct mgr_acme *fresh);

/* mgr_acme_find returns the entry serving name, or NULL. */
const struct mgr_acme *mgr_acme_find(const struct mgr_acme_set *s, const char *name);

/* mgr_acme_next_renewal returns when the entry next orders (renewal or retry). */
time_t mgr_acme_next_renewal(const struct mgr_acme *e);

/* On-demand entries (ondemand.c): one per name, outside the config's list,
 * for a name under an on-demand site. Their life: probe storage, then (if
 * nothing usable is stored and the policy permits) order; afterwards they
 * renew like any entry while their certificate is in use. */
struct cfg_site;
struct mgr_acme_od_hooks {
    /* The storage probe ended: found means a stored certificate now serves. */
    void (*on_probed)(void *arg, bool found);
    /* The first order ended (ok: the certificate serves), or a renewal found
     * the certificate unused for OD_UNUSED_S (ok false, why "unused"): the
     * owner frees the entry, later (not inside this callback). */
    void (*on_ordered)(void *arg, bool ok, const char *why);
};

/* mgr_acme_od_new starts the entry for name (valid per acme_od_name_check)
 * under site (an on-demand site of cfg, which the entry references): the
 * storage probe runs at once, asynchronously. NULL with err. */
struct mgr_acme *mgr_acme_od_new(struct mgr_acme_set *s, struct cfg *cfg,
                                 const struct cfg_site *site, const char *name,
                                 const struct mgr_acme_od_hooks *hooks, void *arg,
                                 struct dm_err *err);
/* mgr_acme_od_order orders the probed entry's certificate now (permitted). */
void mgr_acme_od_order(struct mgr_acme *e);
/* mgr_acme_od_free stops the entry and withdraws its name from the store. */
void mgr_acme_od_free(struct mgr_acme *e);
/* mgr_acme_od_nudge passes acme_order_nudge to the entry's order, if any. */
void mgr_acme_od_nudge(struct mgr_acme *e);
/* mgr_acme_od_cert returns the entry's certificate (borrowed), or NULL. */
const struct acme_cert *mgr_acme_od_cert(const struct mgr_acme *e);

/* mgr_acme_order_stats fills out with the orders counted since start. */
void mgr_acme_order_stats(const struct mgr_acme_set *s, struct acme_order_stats *out);

#endif
