/* The certificate manager: turns a config's sites into store entries (files:
 * load; local: reuse the stored leaf or issue one) and renews local leaves on
 * timers in the control thread's event_base when a third of their lifetime
 * remains. Invariants: everything here runs on the control thread (no locks;
 * the store does the cross-thread part); apply is all-or-nothing up to the
 * final store updates, so a failed reload leaves the store as it was; a failed
 * renewal keeps serving the old certificate and retries with backoff.
 * See docs/certificates.md. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/mem.h>
#include <openssl/rand.h>

#include "acme/acme.h"
#include "acme/cert_int.h"
#include "acme/issuer_local_int.h"
#include "acme/manager_acme.h"
#include "acme/manager_int.h"
#include "acme/ondemand_int.h"
#include "acme/storage.h"
#include "config/config_types.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"
#include "proxy/core/log.h"
#include "proxy/core/time.h"

#define MGR_ISSUER_LOCAL    "local"
#define MGR_BACKOFF_FIRST_S 60 /* first retry after a failed renewal */
/* Doubling stops at an hour: a local CA failure is a local problem (disk,
 * memory) that longer waits would not help, and a 7-day leaf has days left. */
#define MGR_BACKOFF_MAX_S 3600

/* One certificate the manager issues and renews (a CFG_TLS_LOCAL site). */
struct mgr_local {
    struct mgr_local *next; /* owned: rest of the list */
    struct acme_manager *m; /* borrowed */
    char **names;           /* owned: the site's hosts = SANs, in config order */
    size_t num_names;
    long lifetime_s;        /* of the next leaf issued */
    struct acme_cert *cert; /* ref: the one being served */
    time_t renew_at;        /* next renewal attempt, seconds since the epoch */
    unsigned failures;      /* consecutive failed renewals */
    struct event *timer;    /* owned; NULL when the manager has no base */
};

struct acme_manager {
    struct event_base *base;      /* borrowed: control thread loop; may be NULL (no renewal) */
    struct acme_store *store;     /* borrowed */
    char *data_dir;               /* owned */
    struct acme_local_ca *ca;     /* owned; opened on first local site */
    struct acme_storage *storage; /* owned */
    struct mgr_local *locals;     /* owned list */
    char **served;                /* owned: names put by the last apply, sorted, unique */
    size_t num_served;
    int fail_issues;           /* test hook: fail this many issues */
    struct mgr_acme_set *acme; /* owned: the ACME sites */
    struct acme_ondemand *od;  /* owned: on-demand names; NULL without base */
};

/* err_prefix rewrites err's message as "<prefix>: <message>". */
static void err_prefix(struct dm_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void err_prefix(struct dm_err *err, const char *fmt, ...)
{
    if (err == NULL) {
        return;
    }
    char prefix[256], msg[DM_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof(msg), "%s", err->msg);
    dm_err_set(err, err->code, "%s: %s", prefix, msg);
}

/* names_join writes "a,b,c" into buf for logs, cut with "..." if needed. */
static const char *names_join(char *buf, size_t cap, char *const *names, size_t num)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < num; i++) {
        int n = snprintf(buf + used, cap - used, "%s%s", i > 0 ? "," : "", names[i]);
        if (n < 0 || (size_t)n >= cap - used) {
            if (cap > 4) {
                memcpy(buf + cap - 4, "...", 4);
            }
            break;
        }
        used += (size_t)n;
    }
    return buf;
}

static void names_free(char **names, size_t num)
{
    for (size_t i = 0; i < num; i++) {
        free(names[i]);
    }
    free(names);
}

static char **names_dup(char *const *names, size_t num)
{
    char **out = calloc(num > 0 ? num : 1, sizeof(*out));
    for (size_t i = 0; out != NULL && i < num; i++) {
        if ((out[i] = strdup(names[i])) == NULL) {
            names_free(out, i);
            out = NULL;
        }
    }
    return out;
}

/* names_same_set tells whether a and b hold the same names (any order). */
static bool names_same_set(char *const *a, size_t num_a, char *const *b, size_t num_b)
{
    if (num_a != num_b) {
        return false;
    }
    for (size_t i = 0; i < num_a; i++) {
        bool found = false;
        for (size_t j = 0; j < num_b && !found; j++) {
            found = strcmp(a[i], b[j]) == 0;
        }
        if (!found) {
            return false;
        }
    }
    return true;
}

/* renew_time returns when a leaf valid over [start, not_after] becomes due:
 * with a third of its lifetime left, minus a random jitter of up to 1% of it
 * so certificates issued together do not all renew in the same second. start
 * is notBefore without the local CA's backdating. */
time_t acme_renew_time(time_t start, time_t not_after)
{
    time_t life = not_after - start;
    if (life <= 0) {
        return not_after;
    }
    time_t jitter = 0;
    if (life / 100 > 0) {
        uint32_t r = 0;
        RAND_bytes((uint8_t *)&r, sizeof(r));
        jitter = (time_t)(r % (uint32_t)(life / 100 + 1));
    }
    return start + life / 3 * 2 + (life % 3) * 2 / 3 - jitter;
}

static time_t local_renew_time(const struct acme_cert *c)
{
    time_t start = acme_cert_not_before(c) + ACME_LOCAL_BACKDATE_S;
    time_t not_after = acme_cert_not_after(c);
    return acme_renew_time(start < not_after ? start : acme_cert_not_before(c), not_after);
}

struct acme_local_ca *acme_manager_local_ca(struct acme_manager *m, struct dm_err *err)
{
    if (m->ca == NULL) {
        m->ca = acme_local_ca_open(m->data_dir, err);
    }
    return m->ca;
}

/* local_issue issues a leaf for names, stores it (a storage failure is logged
 * and the leaf served anyway: the next start just issues again) and returns
 * it with its renewal time. */
static struct acme_cert *local_issue(struct acme_manager *m, char *const *names, size_t num_names,
                                     long lifetime_s, time_t *out_renew_at, struct dm_err *err)
{
    char *chain_pem = NULL, *key_pem = NULL;
    if (m->fail_issues > 0) {
        m->fail_issues--;
        dm_err_set(err, DM_E_TLS, "local CA: injected failure");
        return NULL;
    }
    struct acme_local_ca *ca = acme_manager_local_ca(m, err);
    if (ca == NULL) {
        return NULL;
    }
    struct acme_cert *c = acme_local_ca_issue(ca, (const char *const *)names, num_names, lifetime_s,
                                              &chain_pem, &key_pem, err);
    if (c == NULL) {
        return NULL;
    }
    *out_renew_at = local_renew_time(c);
    struct acme_storage_meta meta = {
        .names = (char **)names,
        .num_names = num_names,
        .issuer = MGR_ISSUER_LOCAL,
        .not_before = acme_cert_not_before(c),
        .not_after = acme_cert_not_after(c),
        .renew_after = *out_renew_at,
        .last_error = NULL,
    };
    struct dm_err serr = {0};
    if (acme_storage_put(m->storage, MGR_ISSUER_LOCAL, names[0], chain_pem, key_pem, &meta,
                         &serr) != 0) {
        char buf[512];
        dm_log(DM_LOG_WARN, "acme", "cannot store certificate names=%s error=\"%s\"",
               names_join(buf, sizeof(buf), names, num_names), serr.msg);
    }
    free(chain_pem);
    acme_pem_free_secret(key_pem);
    return c;
}

/* local_load returns the stored leaf for names if it can still be served
 * as is: same names, signed by the current root, not due for renewal. Any
 * other outcome returns NULL and the caller issues; unreadable entries are
 * logged. */
static struct acme_cert *local_load(struct acme_manager *m, char *const *names, size_t num_names,
                                    time_t *out_renew_at)
{
    char *chain_pem = NULL, *key_pem = NULL;
    struct acme_storage_meta meta = {0};
    struct acme_cert *c = NULL;
    struct dm_err err = {0};
    char buf[512];
    const char *why = NULL;
    if (acme_storage_get(m->storage, MGR_ISSUER_LOCAL, names[0], &chain_pem, &key_pem, &meta,
                         &err) != 0) {
        if (err.code != DM_E_NOTFOUND) {
            dm_log(DM_LOG_WARN, "acme",
                   "stored certificate unreadable, reissuing names=%s error=\"%s\"",
                   names_join(buf, sizeof(buf), names, num_names), err.msg);
        }
        goto out;
    }
    c = acme_cert_from_pem(chain_pem, strlen(chain_pem), key_pem, strlen(key_pem), NULL, &err);
    if (c == NULL) {
        dm_log(DM_LOG_WARN, "acme", "stored certificate invalid, reissuing names=%s error=\"%s\"",
               names_join(buf, sizeof(buf), names, num_names), err.msg);
        goto out;
    }
    time_t now = dm_time_now();
    time_t renew_at = meta.renew_after;
    if (renew_at < acme_cert_not_before(c) || renew_at > acme_cert_not_after(c)) {
        renew_at = local_renew_time(c);
    }
    if (!names_same_set(meta.names, meta.num_names, names, num_names)) {
        why = "names changed";
    } else {
        for (size_t i = 0; i < num_names && why == NULL; i++) {
            if (!acme_cert_covers(c, names[i])) {
                why = "names changed";
            }
        }
    }
    if (why == NULL) {
        struct acme_local_ca *ca = acme_manager_local_ca(m, &err);
        if (ca == NULL || !acme_local_ca_is_issuer(ca, c)) {
            why = "issued by another root";
        } else if (now >= renew_at) {
            why = "due for renewal";
        }
    }
    if (why != NULL) {
        dm_log(DM_LOG_DEBUG, "acme", "not reusing stored certificate names=%s reason=\"%s\"",
               names_join(buf, sizeof(buf), names, num_names), why);
        acme_cert_unref(c);
        c = NULL;
        goto out;
    }
    *out_renew_at = renew_at;
out:
    free(chain_pem);
    acme_pem_free_secret(key_pem);
    acme_storage_meta_cleanup(&meta);
    return c;
}

static void local_free(struct mgr_local *l)
{
    if (l == NULL) {
        return;
    }
    if (l->timer != NULL) {
        event_free(l->timer);
    }
    acme_cert_unref(l->cert);
    names_free(l->names, l->num_names);
    free(l);
}

static void locals_free(struct mgr_local *l)
{
    while (l != NULL) {
        struct mgr_local *next = l->next;
        local_free(l);
        l = next;
    }
}

static void local_schedule(struct mgr_local *l)
{
    if (l->timer == NULL) {
        return;
    }
    time_t now = dm_time_now();
    struct timeval tv = {.tv_sec = l->renew_at > now ? l->renew_at - now : 0, .tv_usec = 0};
    evtimer_add(l->timer, &tv);
}

/* local_renew issues a replacement and swaps it into the store under every
 * name; in-flight handshakes keep their reference to the old one. On failure
 * the old one stays and the next attempt backs off: 1 min, doubling, 1 h cap. */
static void local_renew(struct mgr_local *l)
{
    struct acme_manager *m = l->m;
    struct dm_err err = {0};
    char buf[512];
    time_t renew_at = 0;
    struct acme_cert *c = local_issue(m, l->names, l->num_names, l->lifetime_s, &renew_at, &err);
    if (c == NULL) {
        l->failures++;
        long backoff = MGR_BACKOFF_FIRST_S;
        for (unsigned i = 1; i < l->failures && backoff < MGR_BACKOFF_MAX_S; i++) {
            backoff *= 2;
        }
        if (backoff > MGR_BACKOFF_MAX_S) {
            backoff = MGR_BACKOFF_MAX_S;
        }
        l->renew_at = dm_time_now() + backoff;
        dm_log(DM_LOG_WARN, "acme",
               "certificate renewal failed names=%s failures=%u retry_in=%lds error=\"%s\"",
               names_join(buf, sizeof(buf), l->names, l->num_names), l->failures, backoff, err.msg);
        local_schedule(l);
        return;
    }
    for (size_t i = 0; i < l->num_names; i++) {
        if (acme_store_put(m->store, l->names[i], c, false) != 0) {
            dm_log(DM_LOG_WARN, "acme", "certificate renewed but not served name=%s error=nomem",
                   l->names[i]);
        }
    }
    acme_cert_unref(l->cert);
    l->cert = c;
    l->failures = 0;
    l->renew_at = renew_at;
    dm_log(DM_LOG_INFO, "acme", "certificate renewed names=%s not_after=%lld renew_at=%lld",
           names_join(buf, sizeof(buf), l->names, l->num_names), (long long)acme_cert_not_after(c),
           (long long)renew_at);
    local_schedule(l);
}

static void local_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    local_renew(arg);
}

/* local_prepare returns a new entry for a local site: the current entry's
 * certificate if the same names are already managed, else the stored one,
 * else a freshly issued one. Touches neither the store nor m->locals. */
static struct mgr_local *local_prepare(struct acme_manager *m, const struct cfg_site *site,
                                       long lifetime_s, struct dm_err *err)
{
    struct mgr_local *l = calloc(1, sizeof(*l));
    if (l == NULL || (l->names = names_dup(site->hosts, site->num_hosts)) == NULL) {
        free(l);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    l->num_names = site->num_hosts;
    l->m = m;
    l->lifetime_s = lifetime_s;
    if (m->base != NULL && (l->timer = evtimer_new(m->base, local_on_timer, l)) == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto fail;
    }
    for (struct mgr_local *o = m->locals; o != NULL; o = o->next) {
        if (o->num_names != l->num_names) {
            continue;
        }
        bool same = true;
        for (size_t i = 0; i < l->num_names && same; i++) {
            same = strcmp(o->names[i], l->names[i]) == 0;
        }
        if (same) {
            l->cert = acme_cert_ref(o->cert);
            l->renew_at = o->renew_at;
            l->failures = o->failures;
            return l;
        }
    }
    l->cert = local_load(m, l->names, l->num_names, &l->renew_at);
    if (l->cert != NULL) {
        return l;
    }
    l->cert = local_issue(m, l->names, l->num_names, lifetime_s, &l->renew_at, err);
    if (l->cert == NULL) {
        goto fail;
    }
    char buf[512];
    dm_log(DM_LOG_INFO, "acme", "certificate issued names=%s issuer=local not_after=%lld",
           names_join(buf, sizeof(buf), l->names, l->num_names),
           (long long)acme_cert_not_after(l->cert));
    return l;
fail:
    local_free(l);
    return NULL;
}

/* files_load reads a site's cert_file and key_file. A certificate that does
 * not cover a host or is outside its validity is served anyway (the operator
 * chose it) with a warning. */
static struct acme_cert *files_load(const struct cfg_site *site, struct dm_err *err)
{
    char *chain = NULL, *key = NULL;
    size_t chain_len = 0, key_len = 0;
    struct acme_cert *c = NULL;
    if (site->cert_file == NULL || site->key_file == NULL) {
        dm_err_set(err, DM_E_CONFIG, "cert_file and key_file are required");
        return NULL;
    }
    if (dm_file_read(site->cert_file, ACME_PEM_MAX_BYTES, &chain, &chain_len, err) != 0 ||
        dm_file_read(site->key_file, ACME_PEM_MAX_BYTES, &key, &key_len, err) != 0) {
        goto out;
    }
    c = acme_cert_from_pem(chain, chain_len, key, key_len, NULL, err);
    if (c == NULL) {
        err_prefix(err, "%s", site->cert_file);
        goto out;
    }
    for (size_t i = 0; i < site->num_hosts; i++) {
        if (!acme_cert_covers(c, site->hosts[i])) {
            dm_log(DM_LOG_WARN, "acme", "certificate does not cover site name name=%s cert_file=%s",
                   site->hosts[i], site->cert_file);
        }
    }
    time_t now = dm_time_now();
    if (now >= acme_cert_not_after(c)) {
        dm_log(DM_LOG_WARN, "acme", "certificate has expired cert_file=%s not_after=%lld",
               site->cert_file, (long long)acme_cert_not_after(c));
    } else if (now < acme_cert_not_before(c)) {
        dm_log(DM_LOG_WARN, "acme", "certificate is not valid yet cert_file=%s not_before=%lld",
               site->cert_file, (long long)acme_cert_not_before(c));
    }
out:
    free(chain);
    if (key != NULL) {
        OPENSSL_cleanse(key, key_len);
        free(key);
    }
    return c;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* served_collect returns copies of every host of cfg, sorted and unique
 * (caller frees with names_free), or NULL when out of memory. */
static char **served_collect(const struct cfg *cfg, size_t *out_num)
{
    size_t n = 0;
    for (size_t i = 0; i < cfg->num_sites; i++) {
        n += cfg->sites[i].num_hosts;
    }
    const char **v = calloc(n > 0 ? n : 1, sizeof(*v));
    char **out = calloc(n > 0 ? n : 1, sizeof(*out));
    if (v == NULL || out == NULL) {
        free(v);
        free(out);
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < cfg->num_sites; i++) {
        for (size_t j = 0; j < cfg->sites[i].num_hosts; j++) {
            v[k++] = cfg->sites[i].hosts[j];
        }
    }
    qsort(v, n, sizeof(*v), str_cmp);
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        if (u > 0 && strcmp(out[u - 1], v[i]) == 0) {
            continue;
        }
        if ((out[u] = strdup(v[i])) == NULL) {
            names_free(out, u);
            free(v);
            return NULL;
        }
        u++;
    }
    free(v);
    *out_num = u;
    return out;
}

struct acme_manager *acme_manager_new(struct event_base *base, struct acme_store *store,
                                      const char *data_dir, struct dm_err *err)
{
    struct acme_manager *m = calloc(1, sizeof(*m));
    if (m == NULL || (m->data_dir = strdup(data_dir)) == NULL) {
        free(m);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    m->base = base;
    m->store = store;
    if ((m->storage = acme_storage_fs_new(data_dir, err)) == NULL) {
        acme_manager_free(m);
        return NULL;
    }
    if ((m->acme = mgr_acme_set_new(base, store, m->storage, data_dir)) == NULL ||
        (base != NULL && (m->od = acme_ondemand_new(base, store, m->acme)) == NULL)) {
        acme_manager_free(m);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    return m;
}

void acme_manager_free(struct acme_manager *m)
{
    if (m == NULL) {
        return;
    }
    acme_ondemand_free(m->od); /* its entries belong to the set */
    mgr_acme_set_free(m->acme);
    locals_free(m->locals);
    names_free(m->served, m->num_served);
    acme_local_ca_free(m->ca);
    acme_storage_free(m->storage);
    free(m->data_dir);
    free(m);
}

/* apply_check_names rejects hosts the store could not hold, so the commit
 * phase can only fail on memory. */
static int apply_check_names(const struct cfg *cfg, struct dm_err *err)
{
    for (size_t i = 0; i < cfg->num_sites; i++) {
        for (size_t j = 0; j < cfg->sites[i].num_hosts; j++) {
            size_t len = strlen(cfg->sites[i].hosts[j]);
            if (len == 0 || len > ACME_NAME_MAX) {
                dm_err_set(err, DM_E_CONFIG, "sites[%zu].hosts[%zu]: name of %zu bytes (1..%d)", i,
                           j, len, ACME_NAME_MAX);
                return -1;
            }
        }
    }
    return 0;
}

/* apply_prepare gets a certificate for every site into certs[i] (new
 * references) and the local sites' entries into *out_fresh, without touching
 * the store or m->locals. */
static int apply_prepare(struct acme_manager *m, const struct cfg *cfg, struct acme_cert **certs,
                         struct mgr_local **out_fresh, struct mgr_acme **acme_fresh,
                         struct dm_err *err)
{
    struct mgr_local **tail = out_fresh;
    for (size_t i = 0; i < cfg->num_sites; i++) {
        const struct cfg_site *site = &cfg->sites[i];
        if (site->num_hosts == 0 || site->on_demand != NULL) {
            continue; /* on-demand hosts are patterns: names come from handshakes */
        }
        if (site->tls == CFG_TLS_FILES) {
            if ((certs[i] = files_load(site, err)) == NULL) {
                err_prefix(err, "sites[%zu]", i);
                return -1;
            }
            continue;
        }
        if (site->tls == CFG_TLS_ACME) {
            /* The snapshot is refcounted; entries keep it alive past this call. */
            if (mgr_acme_prepare(m->acme, (struct cfg *)cfg, i, acme_fresh, &certs[i], err) != 0) {
                err_prefix(err, "sites[%zu]", i);
                return -1;
            }
            continue;
        }
        struct mgr_local *l = local_prepare(m, site, (long)cfg->local_lifetime_s, err);
        if (l == NULL) {
            err_prefix(err, "sites[%zu]", i);
            return -1;
        }
        certs[i] = acme_cert_ref(l->cert);
        *tail = l;
        tail = &l->next;
    }
    return 0;
}

/* apply_publish puts every host of cfg in the store, each put an atomic swap;
 * the first site's first host is the default. Only fails when out of memory,
 * leaving old and new names mixed until the next apply. */
static int apply_publish(struct acme_manager *m, const struct cfg *cfg, struct acme_cert **certs,
                         struct dm_err *err)
{
    bool has_default = false;
    for (size_t i = 0; i < cfg->num_sites; i++) {
        const struct cfg_site *site = &cfg->sites[i];
        if (certs[i] == NULL) {
            continue; /* an ACME site whose first certificate is on its way */
        }
        for (size_t j = 0; j < site->num_hosts; j++) {
            if (acme_store_put(m->store, site->hosts[j], certs[i], !has_default) != 0) {
                dm_err_set(err, DM_E_NOMEM, "sites[%zu]: %s: out of memory", i, site->hosts[j]);
                return -1;
            }
            has_default = true;
        }
    }
    return 0;
}

/* apply_remove_stale drops the names m served that served (sorted) lacks. */
static void apply_remove_stale(struct acme_manager *m, char *const *served, size_t num)
{
    size_t k = 0;
    for (size_t i = 0; i < m->num_served; i++) {
        while (k < num && strcmp(served[k], m->served[i]) < 0) {
            k++;
        }
        if (k == num || strcmp(served[k], m->served[i]) != 0) {
            acme_store_remove(m->store, m->served[i]);
        }
    }
}

int acme_manager_apply(struct acme_manager *m, const struct cfg *cfg, struct dm_err *err)
{
    int rc = -1;
    struct acme_cert **certs = calloc(cfg->num_sites > 0 ? cfg->num_sites : 1, sizeof(*certs));
    struct mgr_local *fresh = NULL;
    struct mgr_acme *acme_fresh = NULL;
    char **served = NULL;
    size_t num_served = 0;
    if (certs == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto out;
    }
    /* Phase 1: everything that can fail for a reason other than memory. */
    if (apply_check_names(cfg, err) != 0 ||
        apply_prepare(m, cfg, certs, &fresh, &acme_fresh, err) != 0) {
        goto out;
    }
    if ((served = served_collect(cfg, &num_served)) == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto out;
    }
    /* Phase 2: publish, then forget what this config no longer has. */
    if (apply_publish(m, cfg, certs, err) != 0) {
        goto out;
    }
    apply_remove_stale(m, served, num_served);
    names_free(m->served, m->num_served);
    m->served = served;
    m->num_served = num_served;
    served = NULL;
    locals_free(m->locals); /* their timers go with them */
    m->locals = fresh;
    fresh = NULL;
    for (struct mgr_local *l = m->locals; l != NULL; l = l->next) {
        local_schedule(l);
    }
    mgr_acme_commit(m->acme, acme_fresh);
    acme_fresh = NULL;
    if (m->od != NULL) {
        acme_ondemand_set_config(m->od, (struct cfg *)cfg);
    }
    rc = 0;
out:
    if (acme_fresh != NULL) {
        mgr_acme_abort(m->acme, acme_fresh);
    }
    for (size_t i = 0; certs != NULL && i < cfg->num_sites; i++) {
        acme_cert_unref(certs[i]);
    }
    free(certs);
    locals_free(fresh);
    names_free(served, served != NULL ? num_served : 0);
    return rc;
}

static struct mgr_local *local_find(const struct acme_manager *m, const char *name)
{
    for (struct mgr_local *l = m->locals; l != NULL; l = l->next) {
        for (size_t i = 0; i < l->num_names; i++) {
            if (strcmp(l->names[i], name) == 0) {
                return l;
            }
        }
    }
    return NULL;
}

time_t acme_manager_next_renewal(const struct acme_manager *m, const char *name)
{
    const struct mgr_local *l = local_find(m, name);
    if (l != NULL) {
        return l->renew_at;
    }
    const struct mgr_acme *a = m->acme != NULL ? mgr_acme_find(m->acme, name) : NULL;
    return a != NULL ? mgr_acme_next_renewal(a) : 0;
}

void acme_manager_fail_issues(struct acme_manager *m, int n)
{
    m->fail_issues = n;
}

int acme_manager_renewal_failures(const struct acme_manager *m, const char *name)
{
    const struct mgr_local *l = local_find(m, name);
    return l != NULL ? (int)l->failures : -1;
}

int acme_manager_renew_now(struct acme_manager *m, const char *name)
{
    struct mgr_local *l = local_find(m, name);
    if (l == NULL) {
        return -1;
    }
    if (l->timer != NULL) {
        evtimer_del(l->timer);
    }
    local_renew(l);
    return 0;
}

struct acme_ondemand *acme_manager_ondemand(struct acme_manager *m)
{
    return m->od;
}

void acme_manager_order_stats(const struct acme_manager *m, struct acme_order_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (m != NULL && m->acme != NULL) {
        mgr_acme_order_stats(m->acme, out);
    }
}

void acme_manager_foreach_cert(const struct acme_manager *m, acme_manager_cert_cb cb, void *arg)
{
    if (m == NULL) {
        return;
    }
    for (size_t i = 0; i < m->num_served; i++) {
        const char *name = m->served[i];
        struct acme_cert *c = acme_store_get(m->store, name, strlen(name));
        cb(name, c != NULL ? acme_cert_not_after(c) : 0, arg);
        acme_cert_unref(c);
    }
}
