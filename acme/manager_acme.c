/* The certificate manager's ACME sites: one entry per site with tls.acme.
 * An entry serves its stored certificate while it is valid, orders a new one
 * when there is none, when the CA's renewal window (ARI, RFC 9773) says so,
 * or else when a third of its lifetime remains (with jitter), retries
 * failures with capped exponential backoff while the old certificate keeps
 * serving, moves to the site's next issuer (tls.acme.fallback) after
 * ISSUER_SWITCH_AFTER failures in a row, and swaps each new certificate into
 * the store. Clients and accounts are shared per CA directory (and email).
 * Everything runs on the control thread's loop; an entry's one timer wakes at
 * min(renewal time, next ARI poll). Entries whose names and CAs are unchanged
 * survive a reload with their order in flight. See docs/acme.md. */
#include "acme/manager_acme.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/pool.h>

#include "acme/account.h"
#include "acme/ari.h"
#include "acme/cert_int.h"
#include "acme/client.h"
#include "acme/order.h"
#include "acme/solver_dns01.h"
#include "acme/storage.h"
#include "config/config.h"
#include "proxy/core/err.h"
#include "proxy/core/log.h"
#include "proxy/core/time.h"

/* First retry one minute after a failure, doubling to six hours: a CA that
 * is down for a day gets four attempts an hour at first and a few a day
 * later, while the old certificate (renewed with a third of its life left)
 * keeps serving. */
#define ACME_BACKOFF_FIRST_S 60
#define ACME_BACKOFF_MAX_S   (6 * 3600)

/* Consecutive failed orders with one issuer before the next order goes to
 * the site's next issuer (after the last, the first again). Two, not one: a
 * single failure is often transient (a CA blip, a slow DNS record) and the
 * first CA is the operator's preference; two in a row (a minute apart by
 * default) usually mean this CA will not issue for these names. */
#define ISSUER_SWITCH_AFTER 2

/* A certificate this process ordered is not replaced on ARI advice before it
 * is an hour old: a CA (or a proxy in front of it) answering "renew now" for
 * every certificate would otherwise get a new order after every poll, up to
 * orders_per_hour. A real revocation still renews within the hour. */
#define ARI_MIN_CERT_AGE_S 3600

/* An on-demand certificate not used in a handshake for this long is not
 * renewed: its customer has probably left. */
#define OD_UNUSED_S      (30 * 24 * 3600)
#define OD_POLL_FIRST_MS 10

/* The primary issuer and its fallbacks (config caps fallbacks at 4). */
#define ENTRY_MAX_ISSUERS 8

/* A CA client and account shared by the sites that use the same directory,
 * trust root, email and EAB key id. */
/* Orders remembered per account for the hourly ceiling. */
#define ISSUER_ORDER_HISTORY 1024

struct mgr_issuer {
    struct mgr_issuer *next;
    char *key;                                /* owned: directory|ca_root|email|eab_kid */
    struct acme_client *client;               /* owned */
    struct acme_account *account;             /* owned */
    time_t order_times[ISSUER_ORDER_HISTORY]; /* ring of recent order starts */
    size_t order_head;                        /* next slot */
    size_t num_orders;                        /* valid slots */
};

/* issuer_ceiling_wait returns 0 if an order may start now with at most limit
 * orders per hour, else the seconds until the limit-th most recent order
 * leaves the hour. */
static time_t issuer_ceiling_wait(const struct mgr_issuer *i, uint32_t limit, time_t now)
{
    if (limit == 0 || limit > ISSUER_ORDER_HISTORY || i->num_orders < limit) {
        return 0;
    }
    time_t t =
        i->order_times[(i->order_head + ISSUER_ORDER_HISTORY - limit) % ISSUER_ORDER_HISTORY];
    return now - t >= 3600 ? 0 : t + 3600 - now;
}

static void issuer_note_order(struct mgr_issuer *i, time_t now)
{
    i->order_times[i->order_head] = now;
    i->order_head = (i->order_head + 1) % ISSUER_ORDER_HISTORY;
    if (i->num_orders < ISSUER_ORDER_HISTORY) {
        i->num_orders++;
    }
}

struct mgr_acme {
    struct mgr_acme *next;
    struct mgr_acme_set *set;    /* borrowed */
    struct cfg *cfg;             /* ref: keeps site alive */
    const struct cfg_site *site; /* borrowed from cfg */
    /* issuers[0] is tls.acme, then its fallbacks in order; borrowed from set */
    struct mgr_issuer *issuers[ENTRY_MAX_ISSUERS];
    size_t num_issuers;
    size_t cur;               /* issuer of the next order */
    unsigned cur_failures;    /* consecutive failed orders with issuers[cur] */
    size_t cert_issuer;       /* issuer of cert */
    struct acme_cert *cert;   /* ref: the one being served, or NULL */
    struct acme_order *order; /* in flight, or NULL */
    time_t renew_at;          /* next order, seconds since the epoch */
    time_t lifetime_renew_at; /* the one-third rule's time for cert */
    time_t issued_at;         /* when this process got cert from the CA; 0 if loaded */
    unsigned failures;        /* consecutive failed orders, all issuers */
    char last_error[1024];
    /* ARI (RFC 9773) state of cert */
    struct acme_ari_fetch *ari;        /* in flight, or NULL */
    char ari_id[ACME_ARI_CERT_ID_MAX]; /* cert's ARI identifier, "" if it has none */
    time_t ari_poll_at;                /* next renewalInfo fetch; 0 = none (no ARI at this CA) */
    time_t ari_start, ari_end;         /* last valid suggestedWindow, both 0 if none */
    bool is_ari_warned;                /* a failed fetch was logged at warn already */
    bool is_carried;                   /* taken from the previous apply's list, not yet committed */
    struct cfg *next_cfg;              /* ref: the config it moves to on commit */
    const struct cfg_site *next_site;  /* borrowed from next_cfg */
    struct event *timer;               /* owned */
    struct acme_solver_dns01 *dns01;   /* owned: dns-01 hook of the current order, or NULL */
    char lock_key[200];                /* storage lock held while ordering, "" if none */
    /* The order's storage steps (lock, reload what is stored, store the
     * result), one at a time: */
    struct acme_storage_op *sop; /* in flight, or NULL */
    char want_lock[200];         /* the lock sop asks for */
    int lock_rc;                 /* its answer: 0 held, 1 another holder, -1 no lock */
    size_t load_i;               /* issuer whose stored certificate sop reads */
    unsigned adopted;            /* counts entry_adopt calls: "did a load find one?" */
    unsigned adopted_before;
    /* Rewrites of the served certificate's meta.json (last error, ARI): */
    struct acme_storage_op *meta_op; /* in flight, or NULL */
    bool is_meta_dirty;              /* another rewrite is due when it ends */
    time_t meta_renew_after;         /* renew_after to store; 0 = keep the stored one */
    /* On-demand entries only (mgr_acme_od_new): */
    const struct mgr_acme_od_hooks *od; /* NULL for config sites */
    void *od_arg;
    bool is_od_probing;       /* the storage probe runs (no lock, no order after it) */
    bool is_od_ordered;       /* permitted: timers may order */
    struct cfg_site *od_site; /* owned: the site's copy with hosts = {name} */
    char *od_hosts[1];        /* od_site->hosts; [0] owned */
};

struct mgr_acme_set {
    struct event_base *base;      /* borrowed */
    struct acme_store *store;     /* borrowed */
    struct acme_storage *storage; /* borrowed */
    char *data_dir;               /* owned */
    struct mgr_issuer *issuers;   /* owned list */
    struct mgr_acme *entries;     /* owned list */
    /* For metrics: orders since start (control thread only). */
    uint64_t orders_started, orders_succeeded, orders_failed;
};

static void entry_on_timer(evutil_socket_t fd, short what, void *arg);
static void entry_on_locked(struct acme_storage_reply *r, void *arg);
static void entry_order(struct mgr_acme *e);
static void entry_save_meta(struct mgr_acme *e);

/* entry_acme returns the config of issuer i: tls.acme, then its fallbacks. */
static const struct cfg_acme *entry_acme(const struct mgr_acme *e, size_t i)
{
    const struct cfg_acme *a = e->site->acme;
    return i == 0 || i > a->num_fallbacks ? a : &a->fallbacks[i - 1];
}

static size_t site_num_issuers(const struct cfg_site *site)
{
    size_t n = 1 + site->acme->num_fallbacks;
    return n < ENTRY_MAX_ISSUERS ? n : ENTRY_MAX_ISSUERS;
}

struct mgr_acme_set *mgr_acme_set_new(struct event_base *base, struct acme_store *store,
                                      struct acme_storage *storage, const char *data_dir)
{
    struct mgr_acme_set *s = calloc(1, sizeof(*s));
    if (s == NULL || (s->data_dir = strdup(data_dir)) == NULL) {
        free(s);
        return NULL;
    }
    s->base = base;
    s->store = store;
    s->storage = storage;
    return s;
}

/* Another process sharing the storage orders this name: try again after
 * this many seconds, adopting what it stored meanwhile. */
#define ENTRY_LOCK_RETRY_S 5

static void entry_unlock(struct mgr_acme *e)
{
    if (e->lock_key[0] != '\0') {
        acme_storage_unlock(e->set->storage, e->lock_key);
        e->lock_key[0] = '\0';
    }
}

static void entry_free(struct mgr_acme *e)
{
    if (e == NULL) {
        return;
    }
    acme_storage_op_cancel(e->sop);
    acme_storage_op_cancel(e->meta_op);
    acme_order_cancel(e->order);
    entry_unlock(e);
    acme_ari_fetch_cancel(e->ari);
    acme_solver_dns01_free(e->dns01); /* after the cancel: it withdraws through it */
    if (e->timer != NULL) {
        event_free(e->timer);
    }
    acme_cert_unref(e->cert);
    cfg_unref(e->next_cfg);
    cfg_unref(e->cfg);
    if (e->od_site != NULL) {
        free(e->od_hosts[0]);
        free(e->od_site);
    }
    free(e);
}

void mgr_acme_set_free(struct mgr_acme_set *s)
{
    if (s == NULL) {
        return;
    }
    while (s->entries != NULL) {
        struct mgr_acme *next = s->entries->next;
        entry_free(s->entries);
        s->entries = next;
    }
    while (s->issuers != NULL) {
        struct mgr_issuer *next = s->issuers->next;
        acme_account_free(s->issuers->account);
        acme_client_free(s->issuers->client);
        free(s->issuers->key);
        free(s->issuers);
        s->issuers = next;
    }
    free(s->data_dir);
    free(s);
}

void acme_issuer_storage_id(char *buf, size_t cap, const char *url)
{
    const char *p = strstr(url, "://");
    p = p != NULL ? p + 3 : url;
    size_t n = (size_t)snprintf(buf, cap, "acme-");
    for (; *p != '\0' && *p != '/' && n + 1 < cap; p++) {
        char ch = *p;
        if (ch >= 'A' && ch <= 'Z') {
            ch = (char)(ch + 32);
        }
        if (ch == '.') {
            ch = '_';
        } else if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-')) {
            ch = '-';
        }
        buf[n++] = ch;
    }
    buf[n] = '\0';
}

static struct mgr_issuer *issuer_get(struct mgr_acme_set *s, const struct cfg_acme *a,
                                     struct dm_err *err)
{
    char key[4096];
    snprintf(key, sizeof(key), "%s|%s|%s|%s", a->directory, a->ca_root ? a->ca_root : "",
             a->email ? a->email : "", a->eab_kid ? a->eab_kid : "");
    for (struct mgr_issuer *i = s->issuers; i != NULL; i = i->next) {
        if (strcmp(i->key, key) == 0) {
            return i;
        }
    }
    struct mgr_issuer *i = calloc(1, sizeof(*i));
    if (i == NULL || (i->key = strdup(key)) == NULL) {
        free(i);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    struct acme_client_opts co = {.directory_url = a->directory, .ca_file = a->ca_root};
    i->client = acme_client_new(s->base, &co, err);
    if (i->client != NULL) {
        struct acme_account_opts ao = {.data_dir = s->data_dir,
                                       .email = a->email,
                                       .is_tos_agreed = a->agree_tos,
                                       .eab_kid = a->eab_kid,
                                       .eab_hmac_key = a->eab_hmac_key};
        i->account = acme_account_open(i->client, &ao, err);
    }
    if (i->client == NULL || i->account == NULL) {
        acme_client_free(i->client);
        free(i->key);
        free(i);
        return NULL;
    }
    i->next = s->issuers;
    s->issuers = i;
    return i;
}

static bool cert_covers_site(const struct acme_cert *c, const struct cfg_site *site)
{
    for (size_t i = 0; i < site->num_hosts; i++) {
        if (!acme_cert_covers(c, site->hosts[i])) {
            return false;
        }
    }
    return true;
}

/* entry_adopt makes c (reference taken over) the entry's certificate, issued
 * by issuers[issuer], renewed at renew_at unless its CA's renewal window says
 * otherwise: the first renewalInfo fetch is due at once when the certificate
 * has an ARI identifier (an Authority Key Identifier). */
static void entry_adopt(struct mgr_acme *e, struct acme_cert *c, size_t issuer, time_t renew_at)
{
    acme_cert_unref(e->cert);
    e->cert = c;
    e->adopted++;
    e->meta_renew_after = 0;
    e->cert_issuer = issuer;
    e->issued_at = 0;
    e->renew_at = renew_at;
    e->lifetime_renew_at = acme_renew_time(acme_cert_not_before(c), acme_cert_not_after(c));
    acme_ari_fetch_cancel(e->ari);
    e->ari = NULL;
    e->ari_start = e->ari_end = 0;
    e->is_ari_warned = false;
    e->ari_id[0] = '\0';
    size_t n = 0;
    CRYPTO_BUFFER *const *chain = acme_cert_chain(c, &n);
    struct dm_err err = {0};
    if (n > 0 && acme_ari_cert_id(CRYPTO_BUFFER_data(chain[0]), CRYPTO_BUFFER_len(chain[0]),
                                  e->ari_id, sizeof(e->ari_id), &err) != 0) {
        e->ari_id[0] = '\0';
        dm_log(DM_LOG_DEBUG, "acme", "certificate for %s has no ARI identifier (%s)",
               e->site->hosts[0], err.msg);
    }
    e->ari_poll_at = e->ari_id[0] != '\0' ? dm_time_now() : 0;
}

/* What a stored certificate's meta.json says beyond the certificate. */
struct stored_info {
    time_t renew_at;
    time_t ari_start, ari_end;
    char last_error[1024];
};

/* entry_cert_from_stored turns what issuer i stored (a get's result: rc,
 * err, chain, key, meta) into a certificate that covers the site and has not
 * expired (even when due: renewal starts at once), or NULL. */
static struct acme_cert *entry_cert_from_stored(struct mgr_acme *e, size_t i, int rc,
                                                const struct dm_err *gerr, const char *chain,
                                                const char *key,
                                                const struct acme_storage_meta *meta,
                                                struct stored_info *out)
{
    char issuer_id[96];
    acme_issuer_storage_id(issuer_id, sizeof(issuer_id), entry_acme(e, i)->directory);
    if (rc != 0) {
        if (gerr->code != DM_E_NOTFOUND) {
            dm_log(DM_LOG_WARN, "acme", "stored certificate for %s from %s unreadable: %s",
                   e->site->hosts[0], issuer_id, gerr->msg);
        }
        return NULL;
    }
    struct dm_err err = {0};
    struct acme_cert *c = acme_cert_from_pem(chain, strlen(chain), key, strlen(key), NULL, &err);
    if (c == NULL) {
        dm_log(DM_LOG_WARN, "acme", "stored certificate for %s from %s invalid, ignored: %s",
               e->site->hosts[0], issuer_id, err.msg);
        return NULL;
    }
    if (!cert_covers_site(c, e->site) || acme_cert_not_after(c) <= dm_time_now()) {
        acme_cert_unref(c);
        return NULL;
    }
    out->renew_at = meta->renew_after;
    if (out->renew_at < acme_cert_not_before(c) || out->renew_at > acme_cert_not_after(c)) {
        out->renew_at = acme_renew_time(acme_cert_not_before(c), acme_cert_not_after(c));
    }
    out->ari_start = meta->ari_window_start;
    out->ari_end = meta->ari_window_end;
    snprintf(out->last_error, sizeof(out->last_error), "%s",
             meta->last_error != NULL ? meta->last_error : "");
    return c;
}

/* entry_offer_stored adopts c (reference taken over) if it expires later
 * than the served certificate: of what the site's issuers stored (a fallback
 * CA may have issued the last one), the valid one that expires last serves.
 * The stored renewal window comes back with it, so a restart does not draw a
 * new renewal time from the same window. */
static void entry_offer_stored(struct mgr_acme *e, struct acme_cert *c, size_t i,
                               const struct stored_info *info)
{
    if (e->cert != NULL && acme_cert_not_after(c) <= acme_cert_not_after(e->cert)) {
        acme_cert_unref(c);
        return;
    }
    entry_adopt(e, c, i, info->renew_at);
    e->ari_start = info->ari_start;
    e->ari_end = info->ari_end;
    memcpy(e->last_error, info->last_error, sizeof(e->last_error));
}

/* entry_load_stored is the synchronous load of config apply (before the
 * loop serves, or between its turns on a reload). Nothing stored means an
 * order on commit. */
static void entry_load_stored(struct mgr_acme *e)
{
    size_t n = site_num_issuers(e->site);
    for (size_t i = 0; i < n; i++) {
        char issuer_id[96];
        acme_issuer_storage_id(issuer_id, sizeof(issuer_id), entry_acme(e, i)->directory);
        char *chain = NULL, *key = NULL;
        struct acme_storage_meta meta = {0};
        struct dm_err err = {0};
        int rc = acme_storage_get(e->set->storage, issuer_id, e->site->hosts[0], &chain, &key,
                                  &meta, &err);
        struct stored_info info;
        struct acme_cert *c = entry_cert_from_stored(e, i, rc, &err, chain, key, &meta, &info);
        if (c != NULL) {
            entry_offer_stored(e, c, i, &info);
        }
        free(chain);
        acme_pem_free_secret(key);
        acme_storage_meta_cleanup(&meta);
    }
}

static bool same_site(const struct cfg_site *a, const struct cfg_site *b)
{
    if (a->num_hosts != b->num_hosts || a->acme->num_fallbacks != b->acme->num_fallbacks) {
        return false;
    }
    for (size_t i = 0; i <= a->acme->num_fallbacks; i++) {
        const struct cfg_acme *x = i == 0 ? a->acme : &a->acme->fallbacks[i - 1];
        const struct cfg_acme *y = i == 0 ? b->acme : &b->acme->fallbacks[i - 1];
        if (strcmp(x->directory, y->directory) != 0 || x->key_type != y->key_type) {
            return false;
        }
    }
    for (size_t i = 0; i < a->num_hosts; i++) {
        if (strcmp(a->hosts[i], b->hosts[i]) != 0) {
            return false;
        }
    }
    return true;
}

int mgr_acme_prepare(struct mgr_acme_set *s, struct cfg *cfg, size_t site_index,
                     struct mgr_acme **io_fresh, struct acme_cert **out_cert, struct dm_err *err)
{
    const struct cfg_site *site = &cfg->sites[site_index];
    *out_cert = NULL;
    /* The same site under the same CA keeps its entry: a reload does not
     * restart an order in flight or forget a failure count. */
    for (struct mgr_acme **pp = &s->entries; *pp != NULL; pp = &(*pp)->next) {
        struct mgr_acme *e = *pp;
        if (same_site(e->site, site)) {
            *pp = e->next;
            e->next = *io_fresh;
            *io_fresh = e;
            /* The old cfg stays referenced until commit, so abort can give
             * the entry back unchanged. */
            e->is_carried = true;
            e->next_cfg = cfg_ref(cfg);
            e->next_site = site;
            *out_cert = e->cert != NULL ? acme_cert_ref(e->cert) : NULL;
            return 0;
        }
    }
    struct mgr_acme *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    e->set = s;
    e->cfg = cfg_ref(cfg);
    e->site = site;
    e->num_issuers = site_num_issuers(site);
    if (s->base != NULL) {
        for (size_t i = 0; i < e->num_issuers; i++) {
            e->issuers[i] = issuer_get(s, entry_acme(e, i), err);
            if (e->issuers[i] == NULL) {
                entry_free(e);
                return -1;
            }
        }
        e->timer = evtimer_new(s->base, entry_on_timer, e);
        if (e->timer == NULL) {
            entry_free(e);
            dm_err_set(err, DM_E_NOMEM, "out of memory");
            return -1;
        }
    }
    entry_load_stored(e);
    e->next = *io_fresh;
    *io_fresh = e;
    *out_cert = e->cert != NULL ? acme_cert_ref(e->cert) : NULL;
    return 0;
}

/* entry_is_due tells whether the entry should order now: no certificate yet
 * (and no failure to back off from), or its renewal or retry time reached. */
static bool entry_is_due(const struct mgr_acme *e, time_t now)
{
    return (e->cert == NULL && e->failures == 0) || now >= e->renew_at;
}

/* entry_schedule sets the entry's one timer to min(next order, next ARI
 * poll). */
static void entry_schedule(struct mgr_acme *e)
{
    if (e->timer == NULL || e->order != NULL || e->sop != NULL ||
        (e->od != NULL && !e->is_od_ordered && e->cert == NULL)) {
        return;
    }
    time_t now = dm_time_now();
    time_t at = entry_is_due(e, now) ? now : e->renew_at;
    if (e->ari == NULL && e->ari_poll_at != 0 && e->ari_poll_at < at) {
        at = e->ari_poll_at;
    }
    struct timeval tv = {.tv_sec = at > now ? at - now : 0};
    evtimer_add(e->timer, &tv);
}

/* entry_on_ari takes a renewalInfo answer (RFC 9773 §4.2) for the served
 * certificate: a valid window moves the renewal to a time chosen in it (once
 * per window, so polls do not re-draw it), possibly now; a missing or
 * unusable window keeps the lifetime rule. The next poll follows
 * Retry-After (ari.h clamps it). Failures only delay the next poll. */
static void entry_on_ari(const struct acme_ari_info *info, const struct acme_problem *prob,
                         const struct dm_err *err, void *arg)
{
    struct mgr_acme *e = arg;
    e->ari = NULL;
    time_t now = dm_time_now();
    const char *dir = entry_acme(e, e->cert_issuer)->directory;
    if (info == NULL) {
        if (err != NULL && err->code == DM_E_NOTFOUND) {
            dm_log(DM_LOG_DEBUG, "acme", "%s has no renewalInfo (ARI): %s renews by lifetime", dir,
                   e->site->hosts[0]);
            e->ari_poll_at = 0;
        } else {
            uint32_t wait = ACME_ARI_RETRY_DEFAULT_S;
            if (prob != NULL && prob->has_retry_after) {
                wait = prob->retry_after_s < ACME_ARI_RETRY_MIN_S   ? ACME_ARI_RETRY_MIN_S
                       : prob->retry_after_s > ACME_ARI_RETRY_MAX_S ? ACME_ARI_RETRY_MAX_S
                                                                    : prob->retry_after_s;
            }
            dm_log(e->is_ari_warned ? DM_LOG_DEBUG : DM_LOG_WARN, "acme",
                   "renewal info for %s from %s failed, asking again in %us (renewal by "
                   "lifetime meanwhile): %s",
                   e->site->hosts[0], dir, (unsigned)wait, err != NULL ? err->msg : "failed");
            e->is_ari_warned = true;
            e->ari_poll_at = now + wait;
        }
        entry_schedule(e);
        return;
    }
    e->ari_poll_at =
        now + (info->retry_after_s > 0 ? info->retry_after_s : ACME_ARI_RETRY_DEFAULT_S);
    time_t not_after = acme_cert_not_after(e->cert);
    if (info->window_start >= not_after) {
        /* A window after expiry is no advice we can follow. */
        dm_log(DM_LOG_DEBUG, "acme", "renewal window for %s starts after expiry: ignored",
               e->site->hosts[0]);
        e->ari_start = e->ari_end = 0;
        if (e->failures == 0) {
            e->renew_at = e->lifetime_renew_at;
        }
        entry_schedule(e);
        return;
    }
    struct acme_ari_info w = *info;
    if (w.window_end > not_after) {
        w.window_end = not_after;
    }
    bool is_new = w.window_start != e->ari_start || w.window_end != e->ari_end;
    e->ari_start = w.window_start;
    e->ari_end = w.window_end;
    /* A retry in backoff keeps its schedule; the window decides the next
     * renewal once an order has succeeded. */
    if (is_new && e->failures == 0) {
        e->renew_at = acme_ari_choose(&w, now);
        time_t floor = e->issued_at + ARI_MIN_CERT_AGE_S;
        if (floor > e->lifetime_renew_at) {
            floor = e->lifetime_renew_at;
        }
        if (e->issued_at != 0 && e->renew_at < floor) {
            dm_log(DM_LOG_WARN, "acme",
                   "%s asks to renew %s, issued %llds ago, already: waiting until renew_at=%lld",
                   dir, e->site->hosts[0], (long long)(now - e->issued_at), (long long)floor);
            e->renew_at = floor;
        }
        dm_log(DM_LOG_INFO, "acme",
               "renewal window for %s from %s: start=%lld end=%lld renew_at=%lld%s%.256s",
               e->site->hosts[0], dir, (long long)w.window_start, (long long)w.window_end,
               (long long)e->renew_at, info->explanation_url != NULL ? " explanation=" : "",
               info->explanation_url != NULL ? info->explanation_url : "");
        e->meta_renew_after = e->renew_at;
        entry_save_meta(e);
    }
    entry_schedule(e);
}

/* entry_ari_start fetches the renewal info of the served certificate from
 * the CA that issued it; the answer reschedules the entry. */
static void entry_ari_start(struct mgr_acme *e)
{
    e->ari_poll_at = 0;
    struct acme_client *c = e->issuers[e->cert_issuer]->client;
    const struct acme_directory *dir = acme_client_directory_find(c);
    if (dir != NULL && dir->renewal_info == NULL) {
        return; /* no ARI at this CA (Pebble 2.4): the lifetime rule alone */
    }
    struct dm_err err = {0};
    e->ari = acme_ari_fetch_start(c, e->ari_id, entry_on_ari, e, &err);
    if (e->ari == NULL) {
        dm_log(DM_LOG_DEBUG, "acme", "renewal info for %s not asked: %s", e->site->hosts[0],
               err.msg);
        e->ari_poll_at = dm_time_now() + ACME_ARI_RETRY_DEFAULT_S;
    }
}

void mgr_acme_commit(struct mgr_acme_set *s, struct mgr_acme *fresh)
{
    /* Entries not carried over belong to removed sites: their orders stop. */
    while (s->entries != NULL) {
        struct mgr_acme *next = s->entries->next;
        entry_free(s->entries);
        s->entries = next;
    }
    s->entries = fresh;
    for (struct mgr_acme *e = s->entries; e != NULL; e = e->next) {
        if (e->is_carried) {
            cfg_unref(e->cfg);
            e->cfg = e->next_cfg;
            e->site = e->next_site;
            e->next_cfg = NULL;
            e->next_site = NULL;
            e->is_carried = false;
        }
        entry_schedule(e);
    }
}

void mgr_acme_abort(struct mgr_acme_set *s, struct mgr_acme *fresh)
{
    /* Carried-over entries go back unchanged; new ones are dropped. */
    while (fresh != NULL) {
        struct mgr_acme *next = fresh->next;
        if (fresh->is_carried) {
            cfg_unref(fresh->next_cfg);
            fresh->next_cfg = NULL;
            fresh->next_site = NULL;
            fresh->is_carried = false;
            fresh->next = s->entries;
            s->entries = fresh;
        } else {
            entry_free(fresh);
        }
        fresh = next;
    }
}

static enum acme_cert_key_type key_type_of(enum cfg_key_type k)
{
    switch (k) {
    case CFG_KEY_P384:
        return ACME_CERT_KEY_P384;
    case CFG_KEY_RSA2048:
        return ACME_CERT_KEY_RSA2048;
    case CFG_KEY_RSA4096:
        return ACME_CERT_KEY_RSA4096;
    case CFG_KEY_P256:
        break;
    }
    return ACME_CERT_KEY_P256;
}

/* entry_fail records a failed order with issuers[cur]: backoff from the
 * issuer's retry_first doubling to 6 h over all consecutive failures (a
 * switch of issuer does not reset it: every CA tried is spared), and after
 * ISSUER_SWITCH_AFTER failures in a row the next issuer. */
/* entry_save_meta rewrites the served certificate's meta.json with the last
 * error and the CA's renewal window, so `doorman certificates` (and the
 * admin API) show them across restarts: read what is stored, change those
 * fields, write it back, asynchronously. Only while the stored certificate
 * is the served one: another process may have stored a newer one. */
static void entry_on_meta_put(struct acme_storage_reply *r, void *arg);

static void entry_on_meta_got(struct acme_storage_reply *r, void *arg)
{
    struct mgr_acme *e = arg;
    e->meta_op = NULL;
    if (r->rc != 0 || e->cert == NULL || r->meta.not_after != acme_cert_not_after(e->cert)) {
        if (r->rc != 0 && r->err.code != DM_E_NOTFOUND) {
            dm_log(DM_LOG_DEBUG, "acme", "%s: meta.json not updated: %s", e->site->hosts[0],
                   r->err.msg);
        }
        e->is_meta_dirty = false;
        return;
    }
    free(r->meta.last_error);
    r->meta.last_error = e->last_error[0] != '\0' ? strdup(e->last_error) : NULL;
    r->meta.ari_window_start = e->ari_start;
    r->meta.ari_window_end = e->ari_end;
    if (e->meta_renew_after != 0) {
        r->meta.renew_after = e->meta_renew_after;
    }
    char issuer_id[96];
    acme_issuer_storage_id(issuer_id, sizeof(issuer_id), entry_acme(e, e->cert_issuer)->directory);
    struct dm_err err = {0};
    e->meta_op =
        acme_storage_put_start(e->set->storage, e->set->base, issuer_id, e->site->hosts[0],
                               r->cert_pem, r->key_pem, &r->meta, entry_on_meta_put, e, &err);
    if (e->meta_op == NULL) {
        dm_log(DM_LOG_DEBUG, "acme", "%s: meta.json not updated: %s", e->site->hosts[0], err.msg);
    }
}

static void entry_save_meta(struct mgr_acme *e)
{
    if (e->cert == NULL || e->set->base == NULL) {
        return;
    }
    if (e->meta_op != NULL) {
        e->is_meta_dirty = true;
        return;
    }
    e->is_meta_dirty = false;
    char issuer_id[96];
    acme_issuer_storage_id(issuer_id, sizeof(issuer_id), entry_acme(e, e->cert_issuer)->directory);
    struct dm_err err = {0};
    e->meta_op = acme_storage_get_start(e->set->storage, e->set->base, issuer_id, e->site->hosts[0],
                                        entry_on_meta_got, e, &err);
    if (e->meta_op == NULL) {
        dm_log(DM_LOG_DEBUG, "acme", "%s: meta.json not updated: %s", e->site->hosts[0], err.msg);
    }
}

static void entry_on_meta_put(struct acme_storage_reply *r, void *arg)
{
    struct mgr_acme *e = arg;
    e->meta_op = NULL;
    if (r->rc != 0) {
        dm_log(DM_LOG_DEBUG, "acme", "%s: meta.json not updated: %s", e->site->hosts[0],
               r->err.msg);
    }
    if (e->is_meta_dirty) {
        entry_save_meta(e);
    }
}

static void entry_fail(struct mgr_acme *e, const char *why)
{
    if (e->od != NULL && e->cert == NULL) {
        /* No certificate to keep serving: the owner's negative cache and
         * backoff decide when this name is tried again, not a timer here. */
        e->is_od_ordered = false;
        e->od->on_ordered(e->od_arg, false, why);
        return;
    }
    const struct cfg_acme *a = entry_acme(e, e->cur);
    time_t first =
        a->retry_first_ms >= 1000 ? (time_t)(a->retry_first_ms / 1000) : ACME_BACKOFF_FIRST_S;
    e->failures++;
    e->cur_failures++;
    unsigned shift = e->failures - 1 < 20 ? e->failures - 1 : 20;
    time_t backoff = first << shift;
    if (backoff > ACME_BACKOFF_MAX_S) {
        backoff = ACME_BACKOFF_MAX_S;
    }
    e->renew_at = dm_time_now() + backoff;
    snprintf(e->last_error, sizeof(e->last_error), "%s", why);
    entry_save_meta(e);
    dm_log(DM_LOG_WARN, "acme", "order for %s failed (attempt %u), retrying in %llds%s: %s ca=%s",
           e->site->hosts[0], e->failures, (long long)backoff,
           e->cert != NULL ? ", the current certificate keeps serving" : "", why, a->directory);
    if (e->num_issuers > 1 && e->cur_failures >= ISSUER_SWITCH_AFTER) {
        size_t next = (e->cur + 1) % e->num_issuers;
        dm_log(DM_LOG_WARN, "acme", "%s: switching to the next issuer %s after %u failures with %s",
               e->site->hosts[0], entry_acme(e, next)->directory, e->cur_failures, a->directory);
        e->cur = next;
        e->cur_failures = 0;
    }
    entry_schedule(e);
}

static void entry_log_not_stored(const struct mgr_acme *e, const struct dm_err *err)
{
    /* Served anyway; the next start orders again rather than loop now. */
    dm_log(DM_LOG_ERROR, "acme", "certificate for %s issued but not stored: %s", e->site->hosts[0],
           err->msg);
}

static void entry_on_stored(struct acme_storage_reply *r, void *arg)
{
    struct mgr_acme *e = arg;
    e->sop = NULL;
    if (r->rc != 0) {
        entry_log_not_stored(e, &r->err);
    }
    /* Only now: a process waiting for the lock must find the certificate
     * stored when it gets the lock, or it orders the name a second time. */
    entry_unlock(e);
    entry_schedule(e);
}

static void entry_on_order_done(const struct acme_order_result *res,
                                const struct acme_problem *prob, const struct dm_err *err,
                                void *arg)
{
    struct mgr_acme *e = arg;
    e->order = NULL;
    char why[1024];
    if (res == NULL) {
        e->set->orders_failed++;
        if (prob != NULL && prob->type[0] != '\0') {
            snprintf(why, sizeof(why), "%.100s: %.800s", acme_problem_short(prob), prob->detail);
        } else {
            snprintf(why, sizeof(why), "%.900s", err != NULL ? err->msg : "failed");
        }
        entry_unlock(e);
        entry_fail(e, why);
        return;
    }
    struct dm_err e2 = {0};
    struct acme_cert *c =
        acme_cert_from_pem(res->chain_pem, res->chain_len, res->key_pem, res->key_len, NULL, &e2);
    if (c == NULL) {
        e->set->orders_failed++;
        snprintf(why, sizeof(why), "issued certificate unusable: %.900s", e2.msg);
        entry_unlock(e);
        entry_fail(e, why);
        return;
    }
    e->set->orders_succeeded++;
    time_t renew_at = acme_renew_time(acme_cert_not_before(c), acme_cert_not_after(c));
    char issuer_id[96];
    acme_issuer_storage_id(issuer_id, sizeof(issuer_id), entry_acme(e, e->cur)->directory);
    struct acme_storage_meta meta = {.names = e->site->hosts,
                                     .num_names = e->site->num_hosts,
                                     .issuer = issuer_id,
                                     .not_before = acme_cert_not_before(c),
                                     .not_after = acme_cert_not_after(c),
                                     .renew_after = renew_at};
    for (size_t i = 0; i < e->site->num_hosts; i++) {
        if (acme_store_put(e->set->store, e->site->hosts[i], c, false) != 0) {
            dm_log(DM_LOG_ERROR, "acme", "%s: out of memory publishing the certificate",
                   e->site->hosts[i]);
        }
    }
    bool renewed = e->cert != NULL;
    entry_adopt(e, c, e->cur, renew_at);
    e->issued_at = dm_time_now();
    e->failures = 0;
    e->last_error[0] = '\0';
    dm_log(DM_LOG_INFO, "acme", "certificate %s names=%s issuer=%s not_after=%lld renew_at=%lld",
           renewed ? "renewed" : "issued", e->site->hosts[0], issuer_id,
           (long long)acme_cert_not_after(c), (long long)renew_at);
    /* Each renewal starts again with the operator's first choice. */
    e->cur = 0;
    e->cur_failures = 0;
    entry_schedule(e);
    if (e->od != NULL && !renewed) {
        e->od->on_ordered(e->od_arg, true, NULL);
    }
    /* Stored last: the write (synchronous in the filesystem backend) runs
     * after whatever the publication woke, such as waiting handshakes. */
    /* A meta.json rewrite in flight is about the certificate replaced. */
    acme_storage_op_cancel(e->meta_op);
    e->meta_op = NULL;
    e->is_meta_dirty = false;
    e->sop = acme_storage_put_start(e->set->storage, e->set->base, issuer_id, e->site->hosts[0],
                                    res->chain_pem, res->key_pem, &meta, entry_on_stored, e, &e2);
    if (e->sop == NULL) {
        entry_log_not_stored(e, &e2);
        entry_unlock(e);
    }
}

static void entry_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct mgr_acme *e = arg;
    if (e->order != NULL || e->sop != NULL) {
        return;
    }
    time_t now = dm_time_now();
    if (!entry_is_due(e, now)) {
        if (e->ari == NULL && e->ari_poll_at != 0 && now >= e->ari_poll_at) {
            entry_ari_start(e);
        }
        entry_schedule(e);
        return;
    }
    if (e->od != NULL && e->cert != NULL && acme_cert_last_used(e->cert) + OD_UNUSED_S < now) {
        /* On-demand certificates renew while they are used; one nobody
         * asked for in a month is left to expire. */
        dm_log(DM_LOG_INFO, "acme", "on-demand certificate for %s unused since %lld: not renewed",
               e->site->hosts[0], (long long)acme_cert_last_used(e->cert));
        e->od->on_ordered(e->od_arg, false, "unused");
        return;
    }
    /* The answer would be about a certificate being replaced. */
    acme_ari_fetch_cancel(e->ari);
    e->ari = NULL;
    struct mgr_issuer *issuer = e->issuers[e->cur];
    const struct cfg_acme *a = entry_acme(e, e->cur);
    time_t wait = issuer_ceiling_wait(issuer, a->orders_per_hour, now);
    if (wait > 0) {
        /* Never hammer a CA: this account already started orders_per_hour
         * orders in the last hour. */
        dm_log(DM_LOG_WARN, "acme",
               "order for %s postponed %llds: %u orders per hour reached for this account",
               e->site->hosts[0], (long long)wait, a->orders_per_hour);
        struct timeval tv = {.tv_sec = wait};
        evtimer_add(e->timer, &tv);
        return;
    }
    /* Processes sharing a data directory (or, later, a Redis storage) order a
     * name once: the others wait and adopt what the holder stores. The lock
     * outlives a crashed holder by at most the order timeout plus a minute. */
    char issuer_id[96];
    acme_issuer_storage_id(issuer_id, sizeof(issuer_id), a->directory);
    snprintf(e->want_lock, sizeof(e->want_lock), "order-%s-%s", issuer_id,
             e->site->hosts[0][0] == '*' ? e->site->hosts[0] + 2 : e->site->hosts[0]);
    for (char *q = e->want_lock; *q != '\0'; q++) {
        if (!((*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') || *q == '.' || *q == '_')) {
            *q = '-'; /* IPv6 colons and the like */
        }
    }
    struct dm_err lerr = {0};
    e->sop = acme_storage_lock_start(e->set->storage, e->set->base, e->want_lock,
                                     a->order_timeout_ms / 1000 + 60, entry_on_locked, e, &lerr);
    if (e->sop == NULL) {
        dm_log(DM_LOG_WARN, "acme", "%s: ordering without the storage lock: %s", e->site->hosts[0],
               lerr.msg);
        entry_order(e);
    }
}

/* entry_load_next reads what issuer load_i stored, after the lock answered;
 * entry_on_loaded takes it and moves to the next issuer, then decides. */
static void entry_load_next(struct mgr_acme *e);

static void entry_on_loaded(struct acme_storage_reply *r, void *arg)
{
    struct mgr_acme *e = arg;
    e->sop = NULL;
    struct stored_info info;
    struct acme_cert *c = entry_cert_from_stored(e, e->load_i, r->rc, &r->err, r->cert_pem,
                                                 r->key_pem, &r->meta, &info);
    if (c != NULL) {
        entry_offer_stored(e, c, e->load_i, &info);
    }
    e->load_i++;
    entry_load_next(e);
}

static void entry_load_next(struct mgr_acme *e)
{
    for (; e->load_i < e->num_issuers; e->load_i++) {
        char issuer_id[96];
        acme_issuer_storage_id(issuer_id, sizeof(issuer_id), entry_acme(e, e->load_i)->directory);
        struct dm_err err = {0};
        e->sop = acme_storage_get_start(e->set->storage, e->set->base, issuer_id, e->site->hosts[0],
                                        entry_on_loaded, e, &err);
        if (e->sop != NULL) {
            return;
        }
        dm_log(DM_LOG_WARN, "acme", "stored certificate for %s from %s unreadable: %s",
               e->site->hosts[0], issuer_id, err.msg);
    }
    if (e->is_od_probing) {
        e->is_od_probing = false;
        bool found = e->adopted != e->adopted_before && e->cert != NULL;
        if (found) {
            acme_store_put(e->set->store, e->site->hosts[0], e->cert, false);
            entry_schedule(e);
        }
        e->od->on_probed(e->od_arg, found);
        return;
    }
    /* Whether we wait or hold the lock, another process may have stored a
     * newer certificate meanwhile: adopt it instead of ordering. */
    if (e->adopted != e->adopted_before && e->cert != NULL && !entry_is_due(e, dm_time_now())) {
        if (e->lock_rc == 0) {
            acme_storage_unlock(e->set->storage, e->want_lock);
        }
        for (size_t i = 0; i < e->site->num_hosts; i++) {
            acme_store_put(e->set->store, e->site->hosts[i], e->cert, false);
        }
        dm_log(DM_LOG_INFO, "acme",
               "certificate for %s adopted from storage (ordered by another process)",
               e->site->hosts[0]);
        entry_schedule(e);
        return;
    }
    if (e->lock_rc == 1) {
        dm_log(DM_LOG_INFO, "acme",
               "another process is ordering a certificate for %s; checking again in %ds",
               e->site->hosts[0], ENTRY_LOCK_RETRY_S);
        struct timeval tv = {.tv_sec = ENTRY_LOCK_RETRY_S};
        evtimer_add(e->timer, &tv);
        return;
    }
    if (e->lock_rc == 0) {
        snprintf(e->lock_key, sizeof(e->lock_key), "%s", e->want_lock);
    }
    entry_order(e);
}

static void entry_on_locked(struct acme_storage_reply *r, void *arg)
{
    struct mgr_acme *e = arg;
    e->sop = NULL;
    e->lock_rc = r->rc;
    if (r->rc < 0) {
        dm_log(DM_LOG_WARN, "acme", "%s: ordering without the storage lock: %s", e->site->hosts[0],
               r->err.msg);
        entry_order(e);
        return;
    }
    e->load_i = 0;
    e->adopted_before = e->adopted;
    entry_load_next(e);
}

/* entry_order starts the order itself, with the lock held (or none to be
 * had) and nothing newer in storage. */
static void entry_order(struct mgr_acme *e)
{
    const struct cfg_acme *a = entry_acme(e, e->cur);
    struct mgr_issuer *issuer = e->issuers[e->cur];
    time_t now = dm_time_now();
    struct acme_solver solvers[3];
    size_t num_solvers = 0;
    for (size_t i = 0; i < a->num_challenges; i++) {
        enum acme_challenge_type t =
            a->challenges[i] == CFG_CHALLENGE_HTTP01      ? ACME_CHALLENGE_HTTP01
            : a->challenges[i] == CFG_CHALLENGE_TLSALPN01 ? ACME_CHALLENGE_TLSALPN01
                                                          : ACME_CHALLENGE_DNS01;
        const struct acme_solver_ops *ops = acme_solver_builtin(t);
        void *ctx = NULL;
        if (t == ACME_CHALLENGE_DNS01) {
            /* Made per order, while none is in flight, so a reload's new
             * hook or wait applies to the next order. */
            struct dm_err derr = {0};
            acme_solver_dns01_free(e->dns01);
            e->dns01 =
                acme_solver_dns01_new(e->set->base, a->dns_hook, a->dns_propagation_ms, &derr);
            if (e->dns01 == NULL) {
                entry_unlock(e);
                entry_fail(e, derr.msg);
                return;
            }
            ops = acme_solver_dns01_ops();
            ctx = e->dns01;
        }
        if (ops != NULL) {
            solvers[num_solvers].ops = ops;
            solvers[num_solvers].ctx = ctx;
            num_solvers++;
        }
    }
    if (num_solvers == 0) {
        entry_unlock(e);
        entry_fail(e, "none of the configured challenges can be solved");
        return;
    }
    struct acme_order_opts o = {.names = (const char *const *)e->site->hosts,
                                .num_names = e->site->num_hosts,
                                .solvers = solvers,
                                .num_solvers = num_solvers,
                                .key_type = key_type_of(a->key_type),
                                .profile = a->profile,
                                .preferred_chain = a->preferred_chain,
                                .timeout_ms = a->order_timeout_ms,
                                /* A handshake waits for an on-demand order:
                                 * poll at 10, 20, 40 ms... rather than 50,
                                 * 100, 200 (Pebble validates and issues
                                 * within a few ms; a real CA within 1-2 s,
                                 * which the doubling reaches as quickly). */
                                .poll_first_ms = e->od != NULL ? OD_POLL_FIRST_MS : 0};
    /* RFC 9773 §5: "replaces" names the certificate this order renews, sent
     * only to the CA that issued it and only while its suggested window is
     * valid and open (a CA may refuse it otherwise; order.c then orders once
     * more without it). */
    if (e->cert != NULL && e->ari_id[0] != '\0' && e->cur == e->cert_issuer &&
        e->ari_end > e->ari_start && now >= e->ari_start && now < e->ari_end) {
        o.replaces = e->ari_id;
    }
    struct dm_err err = {0};
    dm_log(DM_LOG_INFO, "acme", "ordering a certificate for %s from %s%s%s%s", e->site->hosts[0],
           a->directory, e->cert != NULL ? " (renewal)" : "",
           o.replaces != NULL ? " replacing " : "", o.replaces != NULL ? o.replaces : "");
    e->order = acme_order_start(issuer->client, issuer->account, &o, entry_on_order_done, e, &err);
    e->set->orders_started++;
    if (e->order != NULL) {
        issuer_note_order(issuer, now);
    }
    if (e->order == NULL) {
        e->set->orders_failed++;
        entry_unlock(e);
        entry_fail(e, err.msg);
    }
}

const struct mgr_acme *mgr_acme_find(const struct mgr_acme_set *s, const char *name)
{
    for (const struct mgr_acme *e = s->entries; e != NULL; e = e->next) {
        for (size_t i = 0; i < e->site->num_hosts; i++) {
            if (strcmp(e->site->hosts[i], name) == 0) {
                return e;
            }
        }
    }
    return NULL;
}

time_t mgr_acme_next_renewal(const struct mgr_acme *e)
{
    return e->renew_at;
}

struct mgr_acme *mgr_acme_od_new(struct mgr_acme_set *s, struct cfg *cfg,
                                 const struct cfg_site *site, const char *name,
                                 const struct mgr_acme_od_hooks *hooks, void *arg,
                                 struct dm_err *err)
{
    struct mgr_acme *e = calloc(1, sizeof(*e));
    struct cfg_site *copy = malloc(sizeof(*copy));
    char *host = strdup(name);
    if (e == NULL || copy == NULL || host == NULL || s->base == NULL) {
        free(e);
        free(copy);
        free(host);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    /* The site as configured, but for this one name: every path of the
     * entry (orders, storage keys, locks, logs) then works unchanged. */
    *copy = *site;
    e->od_hosts[0] = host;
    copy->hosts = e->od_hosts;
    copy->num_hosts = 1;
    e->od_site = copy;
    e->set = s;
    e->cfg = cfg_ref(cfg);
    e->site = copy;
    e->od = hooks;
    e->od_arg = arg;
    e->num_issuers = site_num_issuers(site);
    for (size_t i = 0; i < e->num_issuers; i++) {
        e->issuers[i] = issuer_get(s, entry_acme(e, i), err);
        if (e->issuers[i] == NULL) {
            entry_free(e);
            return NULL;
        }
    }
    e->timer = evtimer_new(s->base, entry_on_timer, e);
    if (e->timer == NULL) {
        entry_free(e);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    e->is_od_probing = true;
    e->load_i = 0;
    e->adopted_before = e->adopted;
    entry_load_next(e);
    return e;
}

void mgr_acme_od_order(struct mgr_acme *e)
{
    e->is_od_ordered = true;
    e->failures = 0;
    e->renew_at = 0;
    entry_schedule(e);
}

void mgr_acme_od_free(struct mgr_acme *e)
{
    if (e == NULL) {
        return;
    }
    if (e->cert != NULL) {
        acme_store_remove(e->set->store, e->site->hosts[0]);
    }
    entry_free(e);
}

const struct acme_cert *mgr_acme_od_cert(const struct mgr_acme *e)
{
    return e->cert;
}

void mgr_acme_od_nudge(struct mgr_acme *e)
{
    if (e->order != NULL) {
        acme_order_nudge(e->order);
    }
}

void mgr_acme_order_stats(const struct mgr_acme_set *s, struct acme_order_stats *out)
{
    out->started = s->orders_started;
    out->succeeded = s->orders_succeeded;
    out->failed = s->orders_failed;
}
