/* The per-IP table behind limits.per_ip_connections and limits.per_ip_rate
 * (see iptable.h). Buckets count milli-tokens so refill needs no floating
 * point: rate tokens per second is rate milli-tokens per millisecond. */
#include "proxy/iptable.h"

#include <stdlib.h>
#include <string.h>

struct ip_slot {
    uint8_t ip[16];
    bool used;
    uint32_t conns;
    uint64_t tokens_milli; /* current bucket content, 1000 per request */
    uint64_t last_ms;      /* when tokens_milli was last brought up to date */
    bool has_bucket;       /* tokens_milli is meaningful (a request was taken) */
};

struct dm_iptable {
    size_t num_sets;
    struct ip_slot *slots; /* owned: num_sets * DM_IPTABLE_WAYS */
};

struct dm_iptable *dm_iptable_new(size_t capacity)
{
    struct dm_iptable *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return NULL;
    }
    t->num_sets = (capacity + DM_IPTABLE_WAYS - 1) / DM_IPTABLE_WAYS;
    if (t->num_sets == 0) {
        t->num_sets = 1;
    }
    t->slots = calloc(t->num_sets * DM_IPTABLE_WAYS, sizeof(*t->slots));
    if (t->slots == NULL) {
        free(t);
        return NULL;
    }
    return t;
}

void dm_iptable_free(struct dm_iptable *t)
{
    if (t == NULL) {
        return;
    }
    free(t->slots);
    free(t);
}

/* set_of hashes ip (FNV-1a) to the first slot of its set. */
static struct ip_slot *set_of(const struct dm_iptable *t, const uint8_t ip[16])
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 16; i++) {
        h = (h ^ ip[i]) * 0x100000001b3ull;
    }
    return &t->slots[(h % t->num_sets) * DM_IPTABLE_WAYS];
}

static struct ip_slot *find(const struct dm_iptable *t, const uint8_t ip[16])
{
    struct ip_slot *set = set_of(t, ip);
    for (int i = 0; i < DM_IPTABLE_WAYS; i++) {
        if (set[i].used && memcmp(set[i].ip, ip, 16) == 0) {
            return &set[i];
        }
    }
    return NULL;
}

/* is_idle tells whether s holds nothing worth keeping: no open connection
 * and, had it been refilled until now, a bucket that could not be full of
 * less than its last value. Without knowing the rate here, a bucket untouched
 * for a minute counts as refilled: no sane burst takes longer. */
static bool is_idle(const struct ip_slot *s, uint64_t now_ms)
{
    return s->conns == 0 && (!s->has_bucket || now_ms - s->last_ms >= 60000);
}

/* find_or_add returns ip's slot, taking a free or idle one (the least
 * recently used) in its set; NULL if every slot there is busy. */
static struct ip_slot *find_or_add(struct dm_iptable *t, const uint8_t ip[16], uint64_t now_ms)
{
    struct ip_slot *set = set_of(t, ip), *victim = NULL;
    for (int i = 0; i < DM_IPTABLE_WAYS; i++) {
        struct ip_slot *s = &set[i];
        if (s->used && memcmp(s->ip, ip, 16) == 0) {
            return s;
        }
        if (!s->used) {
            if (victim == NULL || victim->used) {
                victim = s;
            }
        } else if (is_idle(s, now_ms) &&
                   (victim == NULL || (victim->used && s->last_ms < victim->last_ms))) {
            victim = s;
        }
    }
    if (victim != NULL) {
        memset(victim, 0, sizeof(*victim));
        memcpy(victim->ip, ip, 16);
        victim->used = true;
        victim->last_ms = now_ms;
    }
    return victim;
}

uint32_t dm_iptable_conns(const struct dm_iptable *t, const uint8_t ip[16])
{
    const struct ip_slot *s = find(t, ip);
    return s != NULL ? s->conns : 0;
}

bool dm_iptable_conn_open(struct dm_iptable *t, const uint8_t ip[16], uint64_t now_ms)
{
    struct ip_slot *s = find_or_add(t, ip, now_ms);
    if (s == NULL) {
        return false;
    }
    s->conns++;
    if (!s->has_bucket) {
        s->last_ms = now_ms;
    }
    return true;
}

void dm_iptable_conn_close(struct dm_iptable *t, const uint8_t ip[16])
{
    struct ip_slot *s = find(t, ip);
    if (s != NULL && s->conns > 0) {
        s->conns--;
    }
}

uint32_t dm_iptable_take(struct dm_iptable *t, const uint8_t ip[16], uint32_t rate, uint32_t burst,
                         uint64_t now_ms)
{
    if (rate == 0 || burst == 0) {
        return 0;
    }
    struct ip_slot *s = find_or_add(t, ip, now_ms);
    if (s == NULL) {
        return 0; /* cannot track: fail open (see iptable.h) */
    }
    uint64_t cap = (uint64_t)burst * 1000;
    if (!s->has_bucket) {
        s->has_bucket = true;
        s->tokens_milli = cap;
    } else if (now_ms > s->last_ms) {
        uint64_t add = (now_ms - s->last_ms) * rate;
        s->tokens_milli = s->tokens_milli + add > cap ? cap : s->tokens_milli + add;
    }
    s->last_ms = now_ms;
    if (s->tokens_milli >= 1000) {
        s->tokens_milli -= 1000;
        return 0;
    }
    uint64_t missing = 1000 - s->tokens_milli;      /* milli-tokens */
    uint64_t wait_ms = (missing + rate - 1) / rate; /* rate milli-tokens per ms */
    uint64_t wait_s = (wait_ms + 999) / 1000;
    return wait_s == 0 ? 1 : (uint32_t)wait_s;
}
