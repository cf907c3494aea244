/* On-demand TLS: a certificate for a name nobody listed, obtained while its
 * first handshake waits. Two sides:
 *  - the data plane (any worker thread) asks acme_ondemand_request after a
 *    store miss; names failing the static policy are refused at once; others
 *    go into a shared table (PENDING or REFUSED-until) and, when new, into a
 *    queue for the control thread, woken through an eventfd;
 *  - the control thread turns each queued name into a job: probe storage
 *    (stored certificates load lazily, on their first handshake), else ask
 *    the permission URL, then wait for the rate limits, then order through a
 *    manager_acme entry. Success publishes to the store and wakes every
 *    waiting handshake; refusal or failure is cached (negative, with backoff)
 *    and wakes them too, so they fail with an alert instead of hanging.
 * One job per name at a time: the table's PENDING state is the single-flight
 * guarantee. Certificates held are bounded (cache_capacity, least recently
 * used evicted). Threat model and knobs: docs/on-demand.md. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "acme/acme.h"
#include "acme/manager_acme.h"
#include "acme/ondemand_int.h"
#include "acme/ondemand_policy.h"
#include "acme/solver.h"
#include "config/config.h"
#include "proxy/core/err.h"
#include "proxy/core/httpc.h"
#include "proxy/core/log.h"
#include "proxy/core/str.h"
#include "proxy/core/time.h"

/* Names tracked at once (pending plus recently refused): a flood of
 * distinct names the ask endpoint refuses fills this, then new names are
 * refused without asking until entries expire. Bounded memory either way. */
#define OD_TABLE_MAX 65536
/* Names handed to the control thread and not yet picked up. */
#define OD_QUEUE_MAX 4096
/* Permission checks in flight; more wait in line (up to OD_WAIT_QUEUE_MAX,
 * then they are refused for a few seconds). */
#define OD_ASK_MAX        64
#define OD_ASK_BUSY_S     5
#define OD_ASK_MAX_BODY   4096
#define OD_WAIT_QUEUE_MAX 10000 /* permitted names waiting for an order slot */
#define OD_BACKOFF_MAX_S  3600
#define OD_STATS_EVERY_S  10
#define OD_WAIT_SAMPLES   1024
#define OD_NAME_CAP       256

/* ---- a small string-keyed chained hash (used for the shared table, the
 * jobs and the per-domain counters) ---- */

struct od_node {
    struct od_node *next;
    void *value;
    char key[];
};

struct od_map {
    struct od_node **buckets;
    size_t mask;
    size_t count;
};

static int map_init(struct od_map *m, size_t cap)
{
    m->buckets = calloc(cap, sizeof(*m->buckets));
    m->mask = cap - 1;
    m->count = 0;
    return m->buckets != NULL ? 0 : -1;
}

static struct od_node *map_find(const struct od_map *m, const char *key)
{
    for (struct od_node *n = m->buckets[dm_str_hash(key, strlen(key)) & m->mask]; n != NULL;
         n = n->next) {
        if (strcmp(n->key, key) == 0) {
            return n;
        }
    }
    return NULL;
}

static struct od_node *map_add(struct od_map *m, const char *key, void *value)
{
    size_t len = strlen(key);
    struct od_node *n = malloc(sizeof(*n) + len + 1);
    if (n == NULL) {
        return NULL;
    }
    memcpy(n->key, key, len + 1);
    n->value = value;
    size_t b = dm_str_hash(key, strlen(key)) & m->mask;
    n->next = m->buckets[b];
    m->buckets[b] = n;
    m->count++;
    return n;
}

/* map_remove unlinks and frees key's node; returns its value or NULL. */
static void *map_remove(struct od_map *m, const char *key)
{
    for (struct od_node **pp = &m->buckets[dm_str_hash(key, strlen(key)) & m->mask]; *pp != NULL;
         pp = &(*pp)->next) {
        if (strcmp((*pp)->key, key) == 0) {
            struct od_node *n = *pp;
            void *v = n->value;
            *pp = n->next;
            free(n);
            m->count--;
            return v;
        }
    }
    return NULL;
}

static void map_free(struct od_map *m, void (*free_value)(void *))
{
    for (size_t i = 0; m->buckets != NULL && i <= m->mask; i++) {
        struct od_node *n = m->buckets[i];
        while (n != NULL) {
            struct od_node *next = n->next;
            if (free_value != NULL) {
                free_value(n->value);
            }
            free(n);
            n = next;
        }
    }
    free(m->buckets);
    m->buckets = NULL;
}

/* ---- shared state (under od->lock) ---- */

enum od_state {
    OD_PENDING = 0, /* a job exists or is queued: handshakes wait */
    OD_REFUSED,     /* refused or failed: handshakes fail until `until` */
};

struct od_name_state {
    enum od_state state;
    time_t until;
    unsigned failures; /* consecutive failed orders, for the backoff */
};

struct od_stats {
    uint64_t started, succeeded, failed, refused, loaded;
    uint64_t waited, waited_got;
    uint32_t wait_ms[OD_WAIT_SAMPLES]; /* ring of recent waits */
    size_t num_wait;
    uint32_t wait_max_ms;
};

/* ---- control-thread state ---- */

enum od_stage {
    JOB_PROBE = 0, /* reading storage */
    JOB_ASK_WAIT,  /* waiting for a permission-check slot */
    JOB_ASK,       /* the permission URL is asked */
    JOB_QUEUED,    /* permitted, waiting for the rate limits */
    JOB_ORDER,     /* ordering */
    JOB_MEMBER,    /* serving a certificate (in the cache) */
    JOB_DEAD,      /* freed on the next loop turn */
};

enum od_step {
    STEP_NONE = 0,
    STEP_PROBED,
    STEP_ORDERED,
    STEP_FREE,
};

struct od_job {
    struct od_job *prev, *next; /* od->jobs: every live job */
    struct od_job *qnext;       /* in od->waiting (JOB_QUEUED) or od->ask_waiting (JOB_ASK_WAIT) */
    struct acme_ondemand *od;
    char name[OD_NAME_CAP];
    char domain[OD_NAME_CAP];
    struct cfg *cfg;             /* ref: keeps site alive */
    const struct cfg_site *site; /* borrowed from cfg */
    struct mgr_acme *entry;      /* owned */
    enum od_stage stage;
    enum od_step step; /* what the deferred event handles */
    bool is_found;     /* STEP_PROBED */
    bool is_ok;        /* STEP_ORDERED */
    char why[512];
    struct dm_httpc_call *ask; /* JOB_ASK */
    struct event *ev;          /* deferred steps */
    uint64_t start_us;
};

/* A line of jobs waiting their turn, linked through qnext. */
struct od_fifo {
    struct od_job *head, *tail;
    size_t len;
};

struct od_domain {
    time_t window; /* start of the current hour window */
    uint32_t count;
};

struct od_httpc {
    uint32_t timeout_ms;
    struct dm_httpc *client;
};

struct acme_ondemand {
    struct event_base *base;  /* borrowed: control loop */
    struct acme_store *store; /* borrowed */
    struct mgr_acme_set *set; /* borrowed */
    struct cfg *cfg;          /* ref: config for new names */
    struct acme_psl *psl;     /* owned; NULL: two-label fallback */
    pthread_mutex_t lock;     /* guards table, queue, stats */
    struct od_map table;      /* name -> struct od_name_state * */
    char **queue;             /* ring of names for the control thread */
    size_t q_head, q_len;
    struct od_stats stats;
    int efd;                /* eventfd: the queue has names */
    struct event *queue_ev; /* owned */
    struct event *stats_ev; /* owned */
    struct event *pump_ev;  /* owned: retries the wait queue later */
    void (*wake_fn)(void *arg);
    void *wake_arg;
    /* control thread only: */
    struct od_map jobs;         /* name -> struct od_job * */
    struct od_job *job_list;    /* every job */
    struct od_fifo waiting;     /* JOB_QUEUED: permitted, waiting for an order slot */
    struct od_fifo ask_waiting; /* JOB_ASK_WAIT: waiting for a permission-check slot */
    size_t num_members;
    uint32_t in_flight;  /* orders running */
    uint32_t asks;       /* permission checks running */
    time_t minute[1024]; /* ring of recent order starts */
    size_t minute_head, minute_len;
    struct od_map domains; /* registered domain -> struct od_domain * */
    struct od_httpc clients[4];
    uint64_t stats_seen; /* sum of counters at the last summary */
};

static void od_wake(struct acme_ondemand *od)
{
    /* At once, not deferred: the workers coalesce (one eventfd, one bit),
     * and a deferred wake would wait behind the certificate's storage
     * write queued in the same loop turn. */
    if (od->wake_fn != NULL) {
        od->wake_fn(od->wake_arg);
    }
}

/* od_forget drops name from the shared table: the next miss starts afresh
 * (after a success the store answers first). */
static void od_forget(struct acme_ondemand *od, const char *name)
{
    pthread_mutex_lock(&od->lock);
    free(map_remove(&od->table, name));
    pthread_mutex_unlock(&od->lock);
}

/* od_refuse marks name refused for backoff_s (at least a second: a zero
 * cache must not make handshakes spin) and wakes the waiters. is_failure
 * doubles backoff_s per consecutive failure, up to an hour. */
static void od_refuse(struct acme_ondemand *od, const char *name, const char *why, time_t backoff_s,
                      bool is_failure)
{
    time_t now = dm_time_now();
    pthread_mutex_lock(&od->lock);
    struct od_node *n = map_find(&od->table, name);
    struct od_name_state *st = n != NULL ? n->value : NULL;
    if (st == NULL) {
        st = calloc(1, sizeof(*st));
        if (st != NULL && map_add(&od->table, name, st) == NULL) {
            free(st);
            st = NULL;
        }
    }
    if (st != NULL) {
        if (is_failure) {
            unsigned shift = st->failures < 12 ? st->failures : 12;
            backoff_s <<= shift;
            st->failures++;
        }
        if (backoff_s > OD_BACKOFF_MAX_S) {
            backoff_s = OD_BACKOFF_MAX_S;
        }
        st->state = OD_REFUSED;
        st->until = now + (backoff_s > 0 ? backoff_s : 1);
    }
    if (is_failure) {
        od->stats.failed++;
    } else {
        od->stats.refused++;
    }
    pthread_mutex_unlock(&od->lock);
    dm_log(is_failure ? DM_LOG_WARN : DM_LOG_DEBUG, "acme", "on-demand: %s refused: %s%s", name,
           why, is_failure ? " (negatively cached)" : "");
    od_wake(od);
}

/* table_purge drops refusals that expired; under od->lock, when the table
 * is full (rare: a flood of refused names). */
static void table_purge(struct acme_ondemand *od, time_t now)
{
    for (size_t i = 0; i <= od->table.mask; i++) {
        for (struct od_node **pp = &od->table.buckets[i]; *pp != NULL;) {
            struct od_name_state *st = (*pp)->value;
            if (st->state == OD_REFUSED && st->until <= now) {
                struct od_node *n = *pp;
                *pp = n->next;
                free(n->value);
                free(n);
                od->table.count--;
            } else {
                pp = &(*pp)->next;
            }
        }
    }
}

/* ---- the data-plane entry point ---- */

enum acme_od_answer acme_ondemand_request(struct acme_ondemand *od, const struct cfg_site *site,
                                          const char *name, const char **why)
{
    const char *reason = acme_od_static_check(site, name);
    if (reason != NULL) {
        *why = reason;
        pthread_mutex_lock(&od->lock);
        od->stats.refused++;
        pthread_mutex_unlock(&od->lock);
        return ACME_OD_REFUSED;
    }
    time_t now = dm_time_now();
    bool is_queued = false;
    enum acme_od_answer answer = ACME_OD_WAIT;
    pthread_mutex_lock(&od->lock);
    struct od_node *n = map_find(&od->table, name);
    struct od_name_state *st = n != NULL ? n->value : NULL;
    if (st != NULL && st->state == OD_PENDING) {
        goto out;
    }
    if (st != NULL && now < st->until) {
        *why = "refused or failed recently";
        answer = ACME_OD_REFUSED;
        goto out;
    }
    if (od->q_len == OD_QUEUE_MAX) {
        *why = "too many new names at once";
        answer = ACME_OD_REFUSED;
        goto out;
    }
    if (st == NULL) {
        if (od->table.count >= OD_TABLE_MAX) {
            table_purge(od, now);
        }
        if (od->table.count >= OD_TABLE_MAX) {
            *why = "too many names being checked";
            answer = ACME_OD_REFUSED;
            goto out;
        }
        st = calloc(1, sizeof(*st));
        char *copy = strdup(name);
        if (st == NULL || copy == NULL || map_add(&od->table, name, st) == NULL) {
            free(st);
            free(copy);
            *why = "out of memory";
            answer = ACME_OD_REFUSED;
            goto out;
        }
        od->queue[(od->q_head + od->q_len) % OD_QUEUE_MAX] = copy;
    } else {
        char *copy = strdup(name);
        if (copy == NULL) {
            *why = "out of memory";
            answer = ACME_OD_REFUSED;
            goto out;
        }
        od->queue[(od->q_head + od->q_len) % OD_QUEUE_MAX] = copy;
    }
    st->state = OD_PENDING;
    od->q_len++;
    is_queued = true;
out:
    pthread_mutex_unlock(&od->lock);
    if (is_queued) {
        uint64_t one = 1;
        ssize_t r = write(od->efd, &one, sizeof(one));
        (void)r;
    }
    return answer;
}

void acme_ondemand_note_wait(struct acme_ondemand *od, uint32_t ms, bool got)
{
    pthread_mutex_lock(&od->lock);
    od->stats.waited++;
    od->stats.waited_got += got;
    od->stats.wait_ms[od->stats.num_wait++ % OD_WAIT_SAMPLES] = ms;
    if (ms > od->stats.wait_max_ms) {
        od->stats.wait_max_ms = ms;
    }
    pthread_mutex_unlock(&od->lock);
}

/* ---- jobs ---- */

static void fifo_push(struct od_fifo *q, struct od_job *j)
{
    j->qnext = NULL;
    if (q->tail != NULL) {
        q->tail->qnext = j;
    } else {
        q->head = j;
    }
    q->tail = j;
    q->len++;
}

static struct od_job *fifo_pop(struct od_fifo *q)
{
    struct od_job *j = q->head;
    q->head = j->qnext;
    if (q->head == NULL) {
        q->tail = NULL;
    }
    q->len--;
    return j;
}

static void job_on_event(evutil_socket_t fd, short what, void *arg);
static void od_pump(struct acme_ondemand *od);

static void job_free(struct od_job *j)
{
    struct acme_ondemand *od = j->od;
    dm_httpc_request_cancel(j->ask);
    if (j->ask != NULL) {
        od->asks--;
    }
    if (j->stage == JOB_MEMBER) {
        od->num_members--;
    }
    if (j->stage == JOB_ORDER) {
        od->in_flight--;
    }
    mgr_acme_od_free(j->entry);
    if (j->ev != NULL) {
        event_free(j->ev);
    }
    cfg_unref(j->cfg);
    if (j->prev != NULL) {
        j->prev->next = j->next;
    } else if (od->job_list == j) {
        od->job_list = j->next;
    }
    if (j->next != NULL) {
        j->next->prev = j->prev;
    }
    free(j);
}

/* job_kill ends a job that is not queued for an order: it leaves the index
 * now and is freed on the next loop turn (it may be inside its own
 * entry's callback). */
static void job_kill(struct od_job *j)
{
    map_remove(&j->od->jobs, j->name);
    if (j->stage == JOB_MEMBER) {
        j->od->num_members--;
    }
    if (j->stage == JOB_ORDER) {
        j->od->in_flight--;
    }
    j->stage = JOB_DEAD;
    j->step = STEP_FREE;
    event_active(j->ev, 0, 0);
}

static void od_on_probed(void *arg, bool found)
{
    struct od_job *j = arg;
    if (j->stage == JOB_DEAD) {
        return; /* its free is already due */
    }
    j->is_found = found;
    j->step = STEP_PROBED;
    event_active(j->ev, 0, 0);
}

static void od_on_ordered(void *arg, bool ok, const char *why)
{
    struct od_job *j = arg;
    if (j->stage == JOB_DEAD) {
        return;
    }
    j->is_ok = ok;
    snprintf(j->why, sizeof(j->why), "%s", why != NULL ? why : "");
    j->step = STEP_ORDERED;
    event_active(j->ev, 0, 0);
}

static const struct mgr_acme_od_hooks od_hooks = {
    .on_probed = od_on_probed,
    .on_ordered = od_on_ordered,
};

/* od_evict keeps the cache within capacity: the member whose certificate
 * was used least recently leaves (and the store with it). */
static void od_evict(struct acme_ondemand *od, const struct od_job *keep, uint32_t capacity)
{
    while (od->num_members > capacity) {
        struct od_job *lru = NULL;
        time_t oldest = 0;
        for (struct od_job *j = od->job_list; j != NULL; j = j->next) {
            if (j->stage != JOB_MEMBER || j == keep) {
                continue;
            }
            time_t used = acme_cert_last_used(mgr_acme_od_cert(j->entry));
            if (lru == NULL || used < oldest) {
                lru = j;
                oldest = used;
            }
        }
        if (lru == NULL) {
            return;
        }
        dm_log(DM_LOG_INFO, "acme", "on-demand: %s leaves the cache (capacity %u, last used %lld)",
               lru->name, capacity, (long long)oldest);
        job_kill(lru);
    }
}

static void job_become_member(struct od_job *j)
{
    struct acme_ondemand *od = j->od;
    j->stage = JOB_MEMBER;
    od->num_members++;
    od_forget(od, j->name);
    od_wake(od);
    od_evict(od, j, j->site->on_demand->cache_capacity);
}

static void job_on_ask(const struct dm_httpc_resp *resp, const struct dm_err *err, void *arg);

static struct dm_httpc *od_client(struct acme_ondemand *od, uint32_t timeout_ms, struct dm_err *err)
{
    size_t n = sizeof(od->clients) / sizeof(od->clients[0]);
    for (size_t i = 0; i < n; i++) {
        if (od->clients[i].client != NULL && od->clients[i].timeout_ms == timeout_ms) {
            return od->clients[i].client;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (od->clients[i].client == NULL) {
            struct dm_httpc_opts o = {.connect_timeout_ms = timeout_ms,
                                      .request_timeout_ms = timeout_ms,
                                      .idle_timeout_ms = 30000,
                                      .max_idle_per_origin = 16,
                                      .max_body = OD_ASK_MAX_BODY,
                                      .user_agent = "doorman on-demand"};
            od->clients[i].client = dm_httpc_new(od->base, NULL, &o, err);
            od->clients[i].timeout_ms = timeout_ms;
            return od->clients[i].client;
        }
    }
    /* More distinct timeouts than slots: reuse the first client. */
    return od->clients[0].client;
}

static void job_permitted(struct od_job *j);

static void job_ask_send(struct od_job *j);

/* job_ask asks the permission URL now, or queues the job when OD_ASK_MAX
 * checks are in flight (a burst of new names waits its turn). */
static void job_ask(struct od_job *j)
{
    struct acme_ondemand *od = j->od;
    if (od->asks < OD_ASK_MAX) {
        job_ask_send(j);
        return;
    }
    if (od->ask_waiting.len >= OD_WAIT_QUEUE_MAX) {
        od_refuse(od, j->name, "too many permission checks waiting", OD_ASK_BUSY_S, false);
        job_kill(j);
        return;
    }
    j->stage = JOB_ASK_WAIT;
    fifo_push(&od->ask_waiting, j);
}

/* od_ask_next starts queued permission checks while slots are free. */
static void od_ask_next(struct acme_ondemand *od)
{
    while (od->ask_waiting.head != NULL && od->asks < OD_ASK_MAX) {
        job_ask_send(fifo_pop(&od->ask_waiting));
    }
}

static void job_ask_send(struct od_job *j)
{
    struct acme_ondemand *od = j->od;
    const struct cfg_ondemand *d = j->site->on_demand;
    char url[2400];
    snprintf(url, sizeof(url), "%s%sdomain=%s", d->ask, strchr(d->ask, '?') != NULL ? "&" : "?",
             j->name); /* names are LDH only: nothing to escape */
    struct dm_err err = {0};
    struct dm_httpc *client = od_client(od, d->ask_timeout_ms, &err);
    struct dm_httpc_req req = {.method = "GET", .url = url};
    j->stage = JOB_ASK;
    j->ask = client != NULL ? dm_httpc_request_start(client, &req, job_on_ask, j, &err) : NULL;
    if (j->ask == NULL) {
        char why[600];
        snprintf(why, sizeof(why), "permission check not made: %s", err.msg);
        od_refuse(od, j->name, why, (time_t)(d->failure_backoff_ms / 1000), false);
        job_kill(j);
        return;
    }
    od->asks++;
}

static void job_on_ask(const struct dm_httpc_resp *resp, const struct dm_err *err, void *arg)
{
    struct od_job *j = arg;
    struct acme_ondemand *od = j->od;
    j->ask = NULL;
    od->asks--;
    od_ask_next(od);
    const struct cfg_ondemand *d = j->site->on_demand;
    time_t cache_s = (time_t)(d->ask_cache_ms / 1000);
    if (resp != NULL && resp->status >= 200 && resp->status < 300) {
        job_permitted(j);
        return;
    }
    char why[600];
    if (resp != NULL) {
        snprintf(why, sizeof(why), "the ask endpoint answered %d", resp->status);
    } else {
        snprintf(why, sizeof(why), "the ask endpoint failed: %s", err->msg);
        /* A broken endpoint is not an answer to cache for long. */
        time_t b = (time_t)(d->failure_backoff_ms / 1000);
        cache_s = b < cache_s ? b : cache_s;
    }
    od_refuse(od, j->name, why, cache_s, false);
    job_kill(j);
}

static void job_permitted(struct od_job *j)
{
    struct acme_ondemand *od = j->od;
    const struct cfg_ondemand *d = j->site->on_demand;
    if (!acme_psl_registered_domain(od->psl, j->name, j->domain, sizeof(j->domain))) {
        od_refuse(od, j->name, "a public suffix", (time_t)(d->failure_backoff_ms / 1000), false);
        job_kill(j);
        return;
    }
    time_t now = dm_time_now();
    struct od_node *n = map_find(&od->domains, j->domain);
    struct od_domain *dom = n != NULL ? n->value : NULL;
    if (dom != NULL && now - dom->window < 3600 && dom->count >= d->per_domain_per_hour) {
        char why[400];
        snprintf(why, sizeof(why), "%u orders under %s this hour (per_domain_per_hour)", dom->count,
                 j->domain);
        od_refuse(od, j->name, why, dom->window + 3600 - now, false);
        job_kill(j);
        return;
    }
    if (od->waiting.len >= OD_WAIT_QUEUE_MAX) {
        od_refuse(od, j->name, "too many names waiting for an order", OD_ASK_BUSY_S, false);
        job_kill(j);
        return;
    }
    j->stage = JOB_QUEUED;
    fifo_push(&od->waiting, j);
    od_pump(od);
}

/* od_count_domain charges one order to the job's registered domain. */
static void od_count_domain(struct acme_ondemand *od, const char *domain, time_t now)
{
    struct od_node *n = map_find(&od->domains, domain);
    struct od_domain *dom = n != NULL ? n->value : NULL;
    if (dom == NULL) {
        if (od->domains.count >= OD_TABLE_MAX) {
            return; /* the per-domain limit is best effort under a flood */
        }
        dom = calloc(1, sizeof(*dom));
        if (dom == NULL || map_add(&od->domains, domain, dom) == NULL) {
            free(dom);
            return;
        }
    }
    if (now - dom->window >= 3600) {
        dom->window = now;
        dom->count = 0;
    }
    dom->count++;
}

/* od_pump starts queued orders while the ceilings allow: orders in flight
 * and orders started in the last minute (the head job's site sets both). */
static void od_pump(struct acme_ondemand *od)
{
    time_t now = dm_time_now();
    while (od->waiting.head != NULL) {
        struct od_job *j = od->waiting.head;
        const struct cfg_ondemand *d = j->site->on_demand;
        if (od->in_flight >= d->max_in_flight) {
            return; /* an order ending pumps again */
        }
        while (od->minute_len > 0 && od->minute[od->minute_head] + 60 <= now) {
            od->minute_head = (od->minute_head + 1) % 1024;
            od->minute_len--;
        }
        uint32_t per_min = d->orders_per_minute < 1024 ? d->orders_per_minute : 1024;
        if (od->minute_len >= per_min) {
            struct timeval tv = {.tv_sec = od->minute[od->minute_head] + 60 - now};
            evtimer_add(od->pump_ev, &tv);
            return;
        }
        fifo_pop(&od->waiting);
        od->minute[(od->minute_head + od->minute_len) % 1024] = now;
        od->minute_len++;
        od_count_domain(od, j->domain, now);
        od->in_flight++;
        j->stage = JOB_ORDER;
        pthread_mutex_lock(&od->lock);
        od->stats.started++;
        pthread_mutex_unlock(&od->lock);
        mgr_acme_od_order(j->entry);
    }
}

static void od_on_pump(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    od_pump(arg);
}

static void job_on_event(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct od_job *j = arg;
    struct acme_ondemand *od = j->od;
    enum od_step step = j->step;
    j->step = STEP_NONE;
    switch (step) {
    case STEP_NONE:
        return;
    case STEP_FREE:
        job_free(j);
        return;
    case STEP_PROBED:
        if (j->stage != JOB_PROBE) {
            return;
        }
        if (j->is_found) {
            pthread_mutex_lock(&od->lock);
            od->stats.loaded++;
            pthread_mutex_unlock(&od->lock);
            dm_log(DM_LOG_INFO, "acme", "on-demand: %s loaded from storage", j->name);
            job_become_member(j);
        } else if (j->site->on_demand->ask != NULL) {
            job_ask(j);
        } else {
            job_permitted(j);
        }
        return;
    case STEP_ORDERED:
        if (j->stage == JOB_ORDER && j->is_ok) {
            od->in_flight--;
            pthread_mutex_lock(&od->lock);
            od->stats.succeeded++;
            pthread_mutex_unlock(&od->lock);
            dm_log(DM_LOG_INFO, "acme", "on-demand: certificate for %s ready in %llu ms", j->name,
                   (unsigned long long)((dm_time_mono_us() - j->start_us) / 1000));
            job_become_member(j);
        } else if (j->stage == JOB_ORDER) {
            od_refuse(od, j->name, j->why, (time_t)(j->site->on_demand->failure_backoff_ms / 1000),
                      true);
            job_kill(j);
        } else if (j->stage == JOB_MEMBER) {
            job_kill(j); /* unused: let it expire */
        }
        od_pump(od);
        return;
    }
}

/* od_find_site returns the on-demand site of cfg for name, with routing's
 * precedence: an exact host, then a "*." host, then the catch-all. */
static const struct cfg_site *od_find_site(const struct cfg *cfg, const char *name)
{
    const struct cfg_site *wild = NULL, *any = NULL;
    for (size_t i = 0; i < cfg->num_sites; i++) {
        const struct cfg_site *s = &cfg->sites[i];
        if (s->on_demand == NULL) {
            continue;
        }
        if (s->num_hosts == 0) {
            any = s;
            continue;
        }
        for (size_t k = 0; k < s->num_hosts; k++) {
            if (strcmp(s->hosts[k], name) == 0) {
                return s;
            }
        }
        if (wild == NULL && acme_od_site_covers(s, name)) {
            wild = s;
        }
    }
    return wild != NULL ? wild : any;
}

static void od_start(struct acme_ondemand *od, const char *name)
{
    if (map_find(&od->jobs, name) != NULL) {
        /* A member whose certificate the miss raced with, or a job that
         * already runs: nothing new to start. */
        struct od_job *j = map_find(&od->jobs, name)->value;
        if (j->stage == JOB_MEMBER) {
            od_forget(od, name);
            od_wake(od);
        }
        return;
    }
    const struct cfg_site *site = od->cfg != NULL ? od_find_site(od->cfg, name) : NULL;
    const char *why = site != NULL ? acme_od_static_check(site, name) : "no on-demand site";
    if (why != NULL) {
        od_refuse(od, name, why, 60, false);
        return;
    }
    struct acme_cert *c = acme_store_get(od->store, name, strlen(name));
    if (c != NULL) {
        /* A configured site serves it (or a reload published it). */
        acme_cert_unref(c);
        od_forget(od, name);
        od_wake(od);
        return;
    }
    struct od_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        od_refuse(od, name, "out of memory", 5, false);
        return;
    }
    j->od = od;
    snprintf(j->name, sizeof(j->name), "%s", name);
    j->cfg = cfg_ref(od->cfg);
    j->site = site;
    j->start_us = dm_time_mono_us();
    j->ev = event_new(od->base, -1, 0, job_on_event, j);
    if (j->ev == NULL || map_add(&od->jobs, j->name, j) == NULL) {
        if (j->ev != NULL) {
            event_free(j->ev);
        }
        cfg_unref(j->cfg);
        free(j);
        od_refuse(od, name, "out of memory", 5, false);
        return;
    }
    j->next = od->job_list;
    if (j->next != NULL) {
        j->next->prev = j;
    }
    od->job_list = j;
    struct dm_err err = {0};
    j->stage = JOB_PROBE;
    j->entry = mgr_acme_od_new(od->set, j->cfg, site, name, &od_hooks, j, &err);
    if (j->entry == NULL) {
        od_refuse(od, name, err.msg, (time_t)(site->on_demand->failure_backoff_ms / 1000), true);
        job_kill(j);
    }
}

/* od_on_hit runs on a worker thread when a tls-alpn-01 validation connection
 * arrives: the name goes to the control thread (marked with a leading '!',
 * which no host name has) so its order polls at once. Only a hint: dropped
 * when the queue is full. */
static void od_on_hit(const char *name, void *arg)
{
    struct acme_ondemand *od = arg;
    size_t len = strlen(name);
    char *item = malloc(len + 2);
    if (item == NULL) {
        return;
    }
    item[0] = '!';
    memcpy(item + 1, name, len + 1);
    pthread_mutex_lock(&od->lock);
    bool is_queued = od->q_len < OD_QUEUE_MAX;
    if (is_queued) {
        od->queue[(od->q_head + od->q_len) % OD_QUEUE_MAX] = item;
        od->q_len++;
    }
    pthread_mutex_unlock(&od->lock);
    if (!is_queued) {
        free(item);
        return;
    }
    uint64_t one = 1;
    ssize_t r = write(od->efd, &one, sizeof(one));
    (void)r;
}

static void od_on_queue(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct acme_ondemand *od = arg;
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));
    (void)r;
    for (;;) {
        pthread_mutex_lock(&od->lock);
        char *name = NULL;
        if (od->q_len > 0) {
            name = od->queue[od->q_head];
            od->q_head = (od->q_head + 1) % OD_QUEUE_MAX;
            od->q_len--;
        }
        pthread_mutex_unlock(&od->lock);
        if (name == NULL) {
            return;
        }
        if (name[0] == '!') {
            struct od_node *n = map_find(&od->jobs, name + 1);
            struct od_job *j = n != NULL ? n->value : NULL;
            if (j != NULL && j->stage == JOB_ORDER) {
                mgr_acme_od_nudge(j->entry);
            }
        } else {
            od_start(od, name);
        }
        free(name);
    }
}

void acme_ondemand_stats(struct acme_ondemand *od, struct acme_ondemand_stats *out)
{
    pthread_mutex_lock(&od->lock);
    out->started = od->stats.started;
    out->succeeded = od->stats.succeeded;
    out->failed = od->stats.failed;
    out->refused = od->stats.refused;
    out->loaded = od->stats.loaded;
    out->waited = od->stats.waited;
    out->waited_got = od->stats.waited_got;
    pthread_mutex_unlock(&od->lock);
    out->cached = od->num_members;
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* od_log_stats writes the summary line when a counter moved (or always, at
 * shutdown): what an operator wants before the admin API exists. */
static void od_log_stats(struct acme_ondemand *od, bool always)
{
    static uint32_t sorted[OD_WAIT_SAMPLES];
    pthread_mutex_lock(&od->lock);
    struct od_stats s = od->stats;
    pthread_mutex_unlock(&od->lock);
    uint64_t sum = s.started + s.succeeded + s.failed + s.refused + s.loaded + s.waited;
    if (!always && sum == od->stats_seen) {
        return;
    }
    od->stats_seen = sum;
    size_t n = s.num_wait < OD_WAIT_SAMPLES ? s.num_wait : OD_WAIT_SAMPLES;
    memcpy(sorted, s.wait_ms, n * sizeof(sorted[0]));
    qsort(sorted, n, sizeof(sorted[0]), u32_cmp);
    dm_log(DM_LOG_INFO, "acme",
           "on-demand: orders started=%llu succeeded=%llu failed=%llu refused=%llu "
           "loaded=%llu cached=%zu handshakes waited=%llu got=%llu wait_ms_p50=%u "
           "wait_ms_max=%u",
           (unsigned long long)s.started, (unsigned long long)s.succeeded,
           (unsigned long long)s.failed, (unsigned long long)s.refused,
           (unsigned long long)s.loaded, od->num_members, (unsigned long long)s.waited,
           (unsigned long long)s.waited_got, n > 0 ? sorted[n / 2] : 0, s.wait_max_ms);
}

static void od_on_stats(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    od_log_stats(arg, false);
}

static void free_value(void *v)
{
    free(v);
}

struct acme_ondemand *acme_ondemand_new(struct event_base *base, struct acme_store *store,
                                        struct mgr_acme_set *set)
{
    struct acme_ondemand *od = calloc(1, sizeof(*od));
    if (od == NULL) {
        return NULL;
    }
    od->base = base;
    od->store = store;
    od->set = set;
    od->efd = -1;
    pthread_mutex_init(&od->lock, NULL);
    od->queue = calloc(OD_QUEUE_MAX, sizeof(*od->queue));
    od->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (od->queue == NULL || od->efd < 0 || map_init(&od->table, 4096) != 0 ||
        map_init(&od->jobs, 4096) != 0 || map_init(&od->domains, 1024) != 0 ||
        (od->queue_ev = event_new(base, od->efd, EV_READ | EV_PERSIST, od_on_queue, od)) == NULL ||
        (od->pump_ev = evtimer_new(base, od_on_pump, od)) == NULL ||
        (od->stats_ev = event_new(base, -1, EV_PERSIST, od_on_stats, od)) == NULL) {
        acme_ondemand_free(od);
        return NULL;
    }
    event_add(od->queue_ev, NULL);
    acme_solver_set_hit_hook(od_on_hit, od);
    struct timeval every = {.tv_sec = OD_STATS_EVERY_S};
    event_add(od->stats_ev, &every);
    return od;
}

void acme_ondemand_set_config(struct acme_ondemand *od, struct cfg *cfg)
{
    bool has = false;
    for (size_t i = 0; i < cfg->num_sites; i++) {
        has |= cfg->sites[i].on_demand != NULL;
    }
    cfg_unref(od->cfg);
    od->cfg = NULL;
    if (!has) {
        return; /* new names are refused; jobs in flight keep their own */
    }
    if (od->psl == NULL) {
        /* Once, at the first config with on-demand sites: a small file. */
        od->psl = acme_psl_load(NULL);
        if (od->psl == NULL) {
            dm_log(DM_LOG_WARN, "acme",
                   "on-demand: public suffix list not readable (Debian package publicsuffix): "
                   "per_domain_per_hour counts the last two labels");
        }
    }
    od->cfg = cfg_ref(cfg);
}

void acme_ondemand_set_wake(struct acme_ondemand *od, void (*fn)(void *arg), void *arg)
{
    od->wake_fn = fn;
    od->wake_arg = arg;
}

void acme_ondemand_free(struct acme_ondemand *od)
{
    if (od == NULL) {
        return;
    }
    if (od->stats_ev != NULL) {
        od_log_stats(od, true);
        acme_solver_set_hit_hook(NULL, NULL);
    }
    while (od->job_list != NULL) {
        struct od_job *j = od->job_list;
        map_remove(&od->jobs, j->name);
        job_free(j);
    }
    for (size_t i = 0; i < sizeof(od->clients) / sizeof(od->clients[0]); i++) {
        dm_httpc_free(od->clients[i].client);
    }
    struct event *evs[] = {od->queue_ev, od->pump_ev, od->stats_ev};
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++) {
        if (evs[i] != NULL) {
            event_free(evs[i]);
        }
    }
    for (size_t i = 0; od->queue != NULL && i < od->q_len; i++) {
        free(od->queue[(od->q_head + i) % OD_QUEUE_MAX]);
    }
    free(od->queue);
    if (od->efd >= 0) {
        close(od->efd);
    }
    map_free(&od->table, free_value);
    map_free(&od->jobs, NULL);
    map_free(&od->domains, free_value);
    acme_psl_free(od->psl);
    cfg_unref(od->cfg);
    pthread_mutex_destroy(&od->lock);
    free(od);
}
