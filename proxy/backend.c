/* Process-wide backend records: one per (site, address), shared by every
 * generation listing the pair, so a reload keeps health, counters and
 * in-flight counts. The registry's mutex is taken when generations are built
 * or freed, by the health thread's updates and by the admin API; the request
 * path reads and bumps atomics only. See docs/architecture.md, "Backends". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy/core/log.h"
#include "proxy/core/str.h"
#include "proxy/core/time.h"
#include "proxy/proxy_int.h"

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct dm_backend *registry;

uint64_t dm_mono_ms(void)
{
    return dm_time_mono_us() / 1000;
}

/* backend_id makes the opaque cookie value: a hash of site and address, so
 * it is stable across reloads and restarts but does not show the address. */
static uint64_t backend_id(char out[17], const char *site, const char *address)
{
    uint64_t h = 14695981039346656037ull;
    for (const char *p = site; *p != '\0'; p++) {
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    }
    h = (h ^ 0xff) * 1099511628211ull;
    for (const char *p = address; *p != '\0'; p++) {
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    }
    /* A final mix: FNV's low bits alone are weak for similar addresses. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    snprintf(out, 17, "%016llx", (unsigned long long)h);
    return h;
}

struct dm_backend *dm_backend_get(const char *site, const char *label, const char *address)
{
    pthread_mutex_lock(&registry_lock);
    struct dm_backend *b = registry;
    for (; b != NULL; b = b->next) {
        if (strcmp(b->site, site) == 0 && strcmp(b->address, address) == 0) {
            atomic_fetch_add(&b->refs, 1);
            pthread_mutex_unlock(&registry_lock);
            return b;
        }
    }
    b = calloc(1, sizeof(*b));
    if (b == NULL || (b->site = strdup(site)) == NULL || (b->label = strdup(label)) == NULL ||
        (b->address = strdup(address)) == NULL) {
        if (b != NULL) {
            free(b->site);
            free(b->label);
        }
        free(b);
        pthread_mutex_unlock(&registry_lock);
        return NULL;
    }
    atomic_init(&b->refs, 1);
    atomic_init(&b->active_up, true);
    pthread_mutex_init(&b->reason_lock, NULL);
    b->hash = backend_id(b->id, site, address);
    b->next = registry;
    registry = b;
    pthread_mutex_unlock(&registry_lock);
    return b;
}

struct dm_backend *dm_backend_ref(struct dm_backend *b)
{
    atomic_fetch_add(&b->refs, 1);
    return b;
}

void dm_backend_unref(struct dm_backend *b)
{
    if (b == NULL) {
        return;
    }
    pthread_mutex_lock(&registry_lock);
    if (atomic_fetch_sub(&b->refs, 1) != 1) {
        pthread_mutex_unlock(&registry_lock);
        return;
    }
    for (struct dm_backend **pp = &registry; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == b) {
            *pp = b->next;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    pthread_mutex_destroy(&b->reason_lock);
    free(b->site);
    free(b->label);
    free(b->address);
    free(b);
}

bool dm_backend_is_live(const struct dm_backend *b, uint64_t now_ms)
{
    return atomic_load_explicit(&b->active_up, memory_order_relaxed) &&
           now_ms >= atomic_load_explicit(&b->down_until_ms, memory_order_relaxed);
}

static void backend_set_reason(struct dm_backend *b, const char *why)
{
    pthread_mutex_lock(&b->reason_lock);
    snprintf(b->reason, sizeof(b->reason), "%s", why);
    pthread_mutex_unlock(&b->reason_lock);
}

void dm_backend_reason(struct dm_backend *b, char *out, size_t cap)
{
    pthread_mutex_lock(&b->reason_lock);
    snprintf(out, cap, "%s", b->reason);
    pthread_mutex_unlock(&b->reason_lock);
}

void dm_backend_on_failure(struct dm_backend *b, const struct cfg_passive *p, size_t num_backends,
                           const char *why)
{
    atomic_fetch_add_explicit(&b->failures, 1, memory_order_relaxed);
    if (p->fails == 0 || num_backends < 2) {
        return;
    }
    uint64_t now = dm_mono_ms();
    uint64_t start = atomic_load(&b->passive_window_ms);
    if (now - start > p->window_ms || start == 0) {
        /* A new window: whoever wins the swap restarts the count. */
        if (atomic_compare_exchange_strong(&b->passive_window_ms, &start, now)) {
            atomic_store(&b->passive_fails, 0);
        }
    }
    if (atomic_fetch_add(&b->passive_fails, 1) + 1 != p->fails) {
        return;
    }
    uint64_t until = atomic_load(&b->down_until_ms);
    if (until > now) {
        return; /* already down */
    }
    if (!atomic_compare_exchange_strong(&b->down_until_ms, &until, now + p->down_for_ms)) {
        return;
    }
    atomic_store(&b->passive_window_ms, 0);
    char reason[DM_BACKEND_REASON_MAX];
    snprintf(reason, sizeof(reason), "%s (%u failures within %u ms; passive)", why, p->fails,
             p->window_ms);
    backend_set_reason(b, reason);
    dm_log(DM_LOG_WARN, "upstream", "backend %s of site %s is down for %u ms: %s", b->address,
           b->label, p->down_for_ms, reason);
}

void dm_backend_set_active(struct dm_backend *b, bool is_up, const char *why)
{
    bool was = atomic_exchange(&b->active_up, is_up);
    if (is_up) {
        if (!was) {
            backend_set_reason(b, "");
            /* Active checks decide now: a passive mark ends with them. */
            atomic_store(&b->down_until_ms, 0);
            dm_log(DM_LOG_INFO, "upstream", "backend %s of site %s is up: %s", b->address, b->label,
                   why);
        }
    } else if (was) {
        backend_set_reason(b, why);
        dm_log(DM_LOG_INFO, "upstream", "backend %s of site %s is down: %s", b->address, b->label,
               why);
    }
}

void dm_backend_foreach(void (*fn)(struct dm_backend *b, void *arg), void *arg)
{
    pthread_mutex_lock(&registry_lock);
    for (struct dm_backend *b = registry; b != NULL; b = b->next) {
        fn(b, arg);
    }
    pthread_mutex_unlock(&registry_lock);
}
