/* Backend selection: a site's backends in one generation (struct dm_pool) and
 * the policies of upstream.policy, all with weights, all skipping backends
 * that are down, already tried by the request, or at max_connections. Picks
 * take no lock and allocate nothing: the shared state is atomics (a cursor
 * per pool, in-flight counts per backend). See docs/upstreams.md. */
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/proxy_int.h"

/* pool_key writes a site's registry key: its hosts, comma-separated. */
static void pool_key(char *out, size_t cap, const struct cfg_site *site)
{
    size_t n = 0;
    out[0] = '\0';
    if (site->num_hosts == 0) {
        snprintf(out, cap, "*");
        return;
    }
    for (size_t i = 0; i < site->num_hosts && n + 1 < cap; i++) {
        int w = snprintf(out + n, cap - n, "%s%s", i ? "," : "", site->hosts[i]);
        if (w < 0) {
            break;
        }
        n += (size_t)w;
    }
}

/* pool_schedule fills p->sched with smooth weighted round robin (nginx's
 * algorithm): over one cycle of sum(weights) picks each backend appears
 * weight times, spread out rather than in runs. */
static int pool_schedule(struct dm_pool *p)
{
    uint32_t total = 0;
    for (size_t i = 0; i < p->num; i++) {
        total += p->site->to_opts != NULL ? p->site->to_opts[i].weight : 1;
    }
    p->sched = calloc(total ? total : 1, sizeof(*p->sched));
    int64_t *cur = calloc(p->num, sizeof(*cur));
    if (p->sched == NULL || cur == NULL) {
        free(cur);
        return -1;
    }
    for (uint32_t k = 0; k < total; k++) {
        size_t best = 0;
        for (size_t i = 0; i < p->num; i++) {
            cur[i] += p->site->to_opts != NULL ? p->site->to_opts[i].weight : 1;
            if (cur[i] > cur[best]) {
                best = i;
            }
        }
        cur[best] -= total;
        p->sched[k] = (uint16_t)best;
    }
    p->sched_len = total;
    free(cur);
    return 0;
}

struct dm_pool *dm_pool_new(const struct cfg_site *site)
{
    struct dm_pool *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return NULL;
    }
    p->site = site;
    p->num = site->num_to;
    p->be = calloc(p->num, sizeof(*p->be));
    p->set_cookie = calloc(p->num, sizeof(*p->set_cookie));
    if (p->be == NULL || p->set_cookie == NULL || pool_schedule(p) != 0) {
        dm_pool_free(p);
        return NULL;
    }
    char key[1024];
    pool_key(key, sizeof(key), site);
    const char *label = site->num_hosts > 0 ? site->hosts[0] : "*";
    const char *cookie = site->upstream.cookie != NULL ? site->upstream.cookie : "doorman_upstream";
    for (size_t i = 0; i < p->num; i++) {
        p->be[i] = dm_backend_get(key, label, site->to[i].text);
        if (p->be[i] == NULL) {
            dm_pool_free(p);
            return NULL;
        }
        size_t n = strlen(cookie) + 64;
        if ((p->set_cookie[i] = malloc(n)) == NULL) {
            dm_pool_free(p);
            return NULL;
        }
        snprintf(p->set_cookie[i], n, "%s=%s; Path=/; HttpOnly; Secure", cookie, p->be[i]->id);
    }
    return p;
}

void dm_pool_free(struct dm_pool *p)
{
    if (p == NULL) {
        return;
    }
    for (size_t i = 0; i < p->num; i++) {
        if (p->be != NULL) {
            dm_backend_unref(p->be[i]);
        }
        if (p->set_cookie != NULL) {
            free(p->set_cookie[i]);
        }
    }
    free(p->be);
    free(p->set_cookie);
    free(p->sched);
    free(p);
}

static uint32_t pool_weight(const struct dm_pool *p, size_t i)
{
    return p->site->to_opts != NULL ? p->site->to_opts[i].weight : 1;
}

static uint32_t pool_max(const struct dm_pool *p, size_t i)
{
    return p->site->to_opts != NULL ? p->site->to_opts[i].max_connections : 0;
}

/* Where a backend stands for one pick. */
enum pick_state {
    PICK_OK = 0, /* live, not tried, has room */
    PICK_FULL,   /* live, not tried, at max_connections */
    PICK_NO,     /* down or tried */
};

static enum pick_state pool_state(const struct dm_pool *p, size_t i, const struct dm_pick_in *in,
                                  uint64_t now_ms)
{
    if ((in->tried >> i) & 1 || !dm_backend_is_live(p->be[i], now_ms)) {
        return PICK_NO;
    }
    uint32_t max = pool_max(p, i);
    if (max != 0 &&
        (uint32_t)atomic_load_explicit(&p->be[i]->in_flight, memory_order_relaxed) >= max) {
        return PICK_FULL;
    }
    return PICK_OK;
}

/* pool_take reserves a slot of backend i; false if another thread took the
 * last one first. */
static bool pool_take(struct dm_pool *p, size_t i)
{
    struct dm_backend *b = p->be[i];
    int prev = atomic_fetch_add_explicit(&b->in_flight, 1, memory_order_relaxed);
    uint32_t max = pool_max(p, i);
    if (max != 0 && (uint32_t)prev >= max) {
        atomic_fetch_sub_explicit(&b->in_flight, 1, memory_order_relaxed);
        return false;
    }
    atomic_fetch_add_explicit(&b->requests, 1, memory_order_relaxed);
    return true;
}

void dm_pool_release(struct dm_backend *b)
{
    atomic_fetch_sub_explicit(&b->in_flight, 1, memory_order_relaxed);
}

/* The per-thread generator of random_two: xorshift64*, seeded per thread. */
static _Thread_local uint64_t rng_state;

static uint64_t rng_next(void)
{
    if (rng_state == 0) {
        rng_state = (dm_mono_ms() ^ (uint64_t)(uintptr_t)&rng_state) | 1;
    }
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

/* less_loaded tells whether backend a carries less than b per weight. */
static bool less_loaded(const struct dm_pool *p, size_t a, size_t b)
{
    uint64_t la = (uint64_t)atomic_load_explicit(&p->be[a]->in_flight, memory_order_relaxed);
    uint64_t lb = (uint64_t)atomic_load_explicit(&p->be[b]->in_flight, memory_order_relaxed);
    return la * pool_weight(p, b) < lb * pool_weight(p, a);
}

/* pick_scan takes the first usable backend from start on (in "to" order,
 * wrapping), or with least set, the least loaded one (ties: the first from
 * start). Counts full ones in *out_full. */
static int pick_scan(struct dm_pool *p, size_t start, bool least, const struct dm_pick_in *in,
                     uint64_t now_ms)
{
    bool has_full = false;
    for (int round = 0; round < 4; round++) {
        int best = -1;
        for (size_t k = 0; k < p->num; k++) {
            size_t i = (start + k) % p->num;
            enum pick_state st = pool_state(p, i, in, now_ms);
            if (st == PICK_FULL) {
                has_full = true;
            }
            if (st != PICK_OK) {
                continue;
            }
            if (!least) {
                best = (int)i;
                break;
            }
            if (best < 0 || less_loaded(p, i, (size_t)best)) {
                best = (int)i;
            }
        }
        if (best < 0) {
            return has_full ? DM_PICK_FULL : DM_PICK_DOWN;
        }
        if (pool_take(p, (size_t)best)) {
            return best;
        }
        /* Another worker took the last slot in between: look again. */
    }
    return DM_PICK_FULL;
}

static int pick_round_robin(struct dm_pool *p, const struct dm_pick_in *in, uint64_t now_ms)
{
    size_t i = 0;
    for (size_t k = 0; k < p->num; k++) {
        uint32_t c = atomic_fetch_add_explicit(&p->cursor, 1, memory_order_relaxed);
        i = p->sched[c % p->sched_len];
        if (pool_state(p, i, in, now_ms) == PICK_OK && pool_take(p, i)) {
            return (int)i;
        }
        /* Its turn's backend cannot: the schedule's next turn, so that the
         * others share its requests by their weights. */
    }
    return pick_scan(p, i + 1, false, in, now_ms);
}

static int pick_random_two(struct dm_pool *p, const struct dm_pick_in *in, uint64_t now_ms)
{
    uint64_t r = rng_next();
    size_t a = p->sched[(uint32_t)r % p->sched_len];
    size_t b = p->sched[(uint32_t)(r >> 32) % p->sched_len];
    bool ok_a = pool_state(p, a, in, now_ms) == PICK_OK;
    bool ok_b = pool_state(p, b, in, now_ms) == PICK_OK;
    if (ok_a && ok_b && less_loaded(p, b, a)) {
        ok_a = false;
    }
    size_t i = ok_a ? a : b;
    if ((ok_a || ok_b) && pool_take(p, i)) {
        return (int)i;
    }
    return pick_scan(p, (size_t)(r % p->num), true, in, now_ms);
}

static uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* pick_ip_hash uses weighted rendezvous hashing over the client IP: each
 * backend scores weight / -ln(hash(ip, backend)) and the highest live one
 * wins. A backend going down moves only its own clients; coming back, they
 * return. */
static int pick_ip_hash(struct dm_pool *p, const struct dm_pick_in *in, uint64_t now_ms)
{
    uint64_t ip = 14695981039346656037ull;
    if (in->peer != NULL) {
        const unsigned char *a = NULL;
        size_t n = 0;
        if (in->peer->sa_family == AF_INET) {
            a = (const unsigned char *)&((const struct sockaddr_in *)(const void *)in->peer)
                    ->sin_addr;
            n = 4;
        } else if (in->peer->sa_family == AF_INET6) {
            a = (const unsigned char *)&((const struct sockaddr_in6 *)(const void *)in->peer)
                    ->sin6_addr;
            n = 16;
        }
        for (size_t i = 0; i < n; i++) {
            ip = (ip ^ a[i]) * 1099511628211ull;
        }
    }
    bool has_full = false;
    int best = -1;
    double best_score = 0;
    for (size_t i = 0; i < p->num; i++) {
        enum pick_state st = pool_state(p, i, in, now_ms);
        has_full |= st == PICK_FULL;
        if (st != PICK_OK) {
            continue;
        }
        uint64_t h = mix64(ip ^ p->be[i]->hash);
        double u = ((double)(h >> 11) + 0.5) / 9007199254740992.0; /* (0, 1) */
        double score = (double)pool_weight(p, i) / -log(u);
        if (best < 0 || score > best_score) {
            best = (int)i;
            best_score = score;
        }
    }
    if (best >= 0 && pool_take(p, (size_t)best)) {
        return best;
    }
    if (best >= 0) {
        return pick_scan(p, (size_t)best, false, in, now_ms);
    }
    return has_full ? DM_PICK_FULL : DM_PICK_DOWN;
}

static int pick_cookie(struct dm_pool *p, const struct dm_pick_in *in, uint64_t now_ms,
                       bool *out_sticky_miss)
{
    if (in->cookie != NULL && in->cookie_len == 16) {
        for (size_t i = 0; i < p->num; i++) {
            if (memcmp(p->be[i]->id, in->cookie, 16) == 0) {
                if (pool_state(p, i, in, now_ms) == PICK_OK && pool_take(p, i)) {
                    return (int)i;
                }
                break;
            }
        }
    }
    *out_sticky_miss = true;
    return pick_round_robin(p, in, now_ms);
}

int dm_pool_pick(struct dm_pool *p, const struct dm_pick_in *in, uint64_t now_ms,
                 bool *out_sticky_miss)
{
    *out_sticky_miss = false;
    if (p->num == 0) {
        return DM_PICK_DOWN;
    }
    switch (p->site->upstream.policy) {
    case CFG_LB_LEAST_CONN: {
        uint32_t c = atomic_fetch_add_explicit(&p->cursor, 1, memory_order_relaxed);
        return pick_scan(p, c % p->num, true, in, now_ms);
    }
    case CFG_LB_RANDOM_TWO:
        return pick_random_two(p, in, now_ms);
    case CFG_LB_IP_HASH:
        return pick_ip_hash(p, in, now_ms);
    case CFG_LB_COOKIE:
        return pick_cookie(p, in, now_ms, out_sticky_miss);
    case CFG_LB_ROUND_ROBIN:
    default:
        return pick_round_robin(p, in, now_ms);
    }
}
