/* A site's backends: "to" (address strings or objects with a weight and a
 * connection limit) and the "upstream" object (selection policy, retries,
 * connection limits and queue, active and passive health checks). Schema and
 * defaults: docs/configuration.md, meaning: docs/upstreams.md. */
#include "config/config_int.h"

#include <stdlib.h>
#include <string.h>

#define NUM(a) (sizeof(a) / sizeof((a)[0]))

/* "max_connections" of a "to" item that did not set one: takes
 * upstream.max_connections once that is read. */
#define MAXCONN_UNSET UINT32_MAX

#define MAX_WEIGHT            100
#define MAX_RETRIES           10
#define MAX_BACKEND_CONNS     1000000
#define DEFAULT_COOKIE        "doorman_upstream"
#define DEFAULT_RETRY_MS      (5u * CFG_MS_PER_S)
#define DEFAULT_QUEUE_MS      (3u * CFG_MS_PER_S)
#define DEFAULT_HC_INTERVAL   (5u * CFG_MS_PER_S)
#define DEFAULT_HC_TIMEOUT    (2u * CFG_MS_PER_S)
#define DEFAULT_HC_THRESHOLD  2
#define DEFAULT_PASSIVE_FAILS 3
#define DEFAULT_PASSIVE_MS    (10u * CFG_MS_PER_S)

static const char *const to_item_keys[] = {"address", "weight", "max_connections"};
/* "tls" and "protocol" belong to backend TLS and HTTP/2 backends (read
 * elsewhere); this reader leaves them alone. */
static const char *const upstream_keys[] = {
    "policy",        "cookie",       "retries", "retry_timeout", "max_connections",
    "queue_timeout", "health_check", "passive", "tls",           "protocol",
};
static const char *const health_keys[] = {"path",  "interval", "timeout", "status",
                                          "fails", "passes",   "host"};
static const char *const passive_keys[] = {"fails", "window", "down_for", "statuses"};
static const char *const policy_names[] = {"round_robin", "least_conn", "random_two", "ip_hash",
                                           "cookie"};

const char *cfg_upstream_policy_name(enum cfg_lb_policy p)
{
    return (size_t)p < NUM(policy_names) ? policy_names[p] : "?";
}

static void read_to_item(struct check *k, json_t *e, struct cfg_addr *addr,
                         struct cfg_backend_opts *o)
{
    o->weight = 1;
    o->max_connections = MAXCONN_UNSET;
    if (json_is_string(e)) {
        cfg_check_addr(k, addr, json_string_value(e));
        return;
    }
    if (!json_is_object(e)) {
        cfg_check_type(k, "a string", e);
        return;
    }
    cfg_check_keys(k, e, to_item_keys, NUM(to_item_keys));
    json_t *a = json_object_get(e, "address");
    size_t m = cfg_check_push_key(k, "address");
    const char *text;
    if (a == NULL) {
        cfg_check_problem(k, "required key is missing");
    } else if ((text = cfg_check_string(k, a)) != NULL) {
        cfg_check_addr(k, addr, text);
    }
    cfg_check_pop(k, m);
    long long n;
    json_t *w = json_object_get(e, "weight");
    if (w != NULL) {
        m = cfg_check_push_key(k, "weight");
        if (cfg_check_int(k, w, 1, MAX_WEIGHT, &n) == 0) {
            o->weight = (uint32_t)n;
        }
        cfg_check_pop(k, m);
    }
    json_t *mc = json_object_get(e, "max_connections");
    if (mc != NULL) {
        m = cfg_check_push_key(k, "max_connections");
        if (cfg_check_int(k, mc, 0, MAX_BACKEND_CONNS, &n) == 0) {
            o->max_connections = (uint32_t)n;
        }
        cfg_check_pop(k, m);
    }
}

void cfg_read_to(struct check *k, json_t *site, struct cfg_site *s)
{
    json_t *v = json_object_get(site, "to");
    size_t mark = cfg_check_push_key(k, "to");
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (v == NULL) {
        cfg_check_problem(k, "required key is missing");
    } else if (!json_is_array(v) && !json_is_string(v) && !json_is_object(v)) {
        cfg_check_type(k, "a string or an array of strings or objects", v);
    } else if (n == 0) {
        cfg_check_problem(k, "must list at least one backend");
    } else if (n > CFG_MAX_BACKENDS) {
        cfg_check_problem(k, "at most %d backends per site, got %zu", CFG_MAX_BACKENDS, n);
    } else {
        s->to = calloc(n, sizeof(*s->to));
        s->to_opts = calloc(n, sizeof(*s->to_opts));
        if (s->to == NULL || s->to_opts == NULL) {
            cfg_check_problem(k, "out of memory");
            cfg_check_pop(k, mark);
            return;
        }
        s->num_to = n;
        if (!json_is_array(v)) {
            read_to_item(k, v, &s->to[0], &s->to_opts[0]);
        }
        for (size_t i = 0; json_is_array(v) && i < n; i++) {
            size_t m = cfg_check_push_index(k, i);
            read_to_item(k, json_array_get(v, i), &s->to[i], &s->to_opts[i]);
            cfg_check_pop(k, m);
        }
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < i; j++) {
                if (s->to[i].text != NULL && s->to[j].text != NULL &&
                    strcmp(s->to[i].text, s->to[j].text) == 0) {
                    size_t m = cfg_check_push_index(k, i);
                    cfg_check_problem(k, "\"%s\" is listed twice (use \"weight\" instead)",
                                      s->to[i].text);
                    cfg_check_pop(k, m);
                    break;
                }
            }
        }
    }
    cfg_check_pop(k, mark);
}

static void read_u32(struct check *k, json_t *obj, const char *key, long long min, long long max,
                     uint32_t *out)
{
    json_t *v = json_object_get(obj, key);
    long long n;
    if (v == NULL) {
        return;
    }
    size_t m = cfg_check_push_key(k, key);
    if (cfg_check_int(k, v, min, max, &n) == 0) {
        *out = (uint32_t)n;
    }
    cfg_check_pop(k, m);
}

static void read_ms(struct check *k, json_t *obj, const char *key, uint64_t min_ms, uint64_t max_ms,
                    uint32_t *out)
{
    json_t *v = json_object_get(obj, key);
    uint64_t ms;
    if (v == NULL) {
        return;
    }
    size_t m = cfg_check_push_key(k, key);
    if (cfg_check_duration(k, v, min_ms, max_ms, &ms) == 0) {
        *out = (uint32_t)ms;
    }
    cfg_check_pop(k, m);
}

/* read_status reads health_check.status: 200 (one code) or "2xx" (a class). */
static void read_status(struct check *k, json_t *hc, struct cfg_health_check *h)
{
    json_t *v = json_object_get(hc, "status");
    if (v == NULL) {
        return;
    }
    size_t m = cfg_check_push_key(k, "status");
    const char *t = json_is_string(v) ? json_string_value(v) : NULL;
    if (json_is_integer(v)) {
        long long n;
        if (cfg_check_int(k, v, 100, 599, &n) == 0) {
            h->status_min = h->status_max = (uint16_t)n;
        }
    } else if (t != NULL && strlen(t) == 3 && t[0] >= '1' && t[0] <= '5' && t[1] == 'x' &&
               t[2] == 'x') {
        h->status_min = (uint16_t)((t[0] - '0') * 100);
        h->status_max = (uint16_t)(h->status_min + 99);
    } else {
        cfg_check_problem(k, "must be a status code like 200 or a class like \"2xx\"");
    }
    cfg_check_pop(k, m);
}

static void read_health(struct check *k, json_t *up, struct cfg_health_check *h)
{
    h->interval_ms = DEFAULT_HC_INTERVAL;
    h->timeout_ms = DEFAULT_HC_TIMEOUT;
    h->status_min = 200;
    h->status_max = 299;
    h->fails = DEFAULT_HC_THRESHOLD;
    h->passes = DEFAULT_HC_THRESHOLD;
    json_t *v = json_object_get(up, "health_check");
    if (v == NULL) {
        return;
    }
    size_t mark = cfg_check_push_key(k, "health_check");
    if (!json_is_object(v)) {
        cfg_check_type(k, "an object {\"path\": \"/healthz\", ...}", v);
        cfg_check_pop(k, mark);
        return;
    }
    cfg_check_keys(k, v, health_keys, NUM(health_keys));
    json_t *p = json_object_get(v, "path");
    size_t m = cfg_check_push_key(k, "path");
    const char *t;
    if (p == NULL) {
        cfg_check_problem(k, "required key is missing (the path to probe, e.g. \"/healthz\")");
    } else if ((t = cfg_check_string(k, p)) != NULL) {
        if (t[0] != '/' || strpbrk(t, " \t\r\n") != NULL || strlen(t) > 1024) {
            cfg_check_problem(k, "must start with '/' and contain no spaces (at most 1024 bytes)");
        } else if ((h->path = strdup(t)) == NULL) {
            cfg_check_problem(k, "out of memory");
        }
    }
    cfg_check_pop(k, m);
    read_ms(k, v, "interval", 100, CFG_MS_PER_H, &h->interval_ms);
    read_ms(k, v, "timeout", 10, CFG_MS_PER_M, &h->timeout_ms);
    read_status(k, v, h);
    read_u32(k, v, "fails", 1, 100, &h->fails);
    read_u32(k, v, "passes", 1, 100, &h->passes);
    json_t *host = json_object_get(v, "host");
    if (host != NULL) {
        m = cfg_check_push_key(k, "host");
        if ((t = cfg_check_string(k, host)) != NULL) {
            if (strpbrk(t, " \t\r\n/") != NULL || strlen(t) > 255) {
                cfg_check_problem(k, "must be a host name (and port), without spaces or '/'");
            } else if ((h->host = strdup(t)) == NULL) {
                cfg_check_problem(k, "out of memory");
            }
        }
        cfg_check_pop(k, m);
    }
    if (h->path != NULL && h->timeout_ms > h->interval_ms) {
        m = cfg_check_push_key(k, "timeout");
        cfg_check_problem(k, "must not be longer than interval");
        cfg_check_pop(k, m);
    }
    cfg_check_pop(k, mark);
}

static void read_statuses(struct check *k, json_t *pv, struct cfg_passive *p)
{
    json_t *v = json_object_get(pv, "statuses");
    if (v == NULL) {
        return;
    }
    size_t mark = cfg_check_push_key(k, "statuses");
    if (!json_is_array(v)) {
        cfg_check_type(k, "an array of status codes 500..599", v);
        cfg_check_pop(k, mark);
        return;
    }
    for (size_t i = 0; i < json_array_size(v); i++) {
        size_t m = cfg_check_push_index(k, i);
        long long n;
        if (cfg_check_int(k, json_array_get(v, i), 500, 599, &n) == 0) {
            p->statuses[(n - 500) / 64] |= 1ull << ((n - 500) % 64);
        }
        cfg_check_pop(k, m);
    }
    cfg_check_pop(k, mark);
}

static void read_passive(struct check *k, json_t *up, struct cfg_passive *p)
{
    p->fails = DEFAULT_PASSIVE_FAILS;
    p->window_ms = DEFAULT_PASSIVE_MS;
    p->down_for_ms = DEFAULT_PASSIVE_MS;
    json_t *v = json_object_get(up, "passive");
    if (v == NULL) {
        return;
    }
    size_t mark = cfg_check_push_key(k, "passive");
    if (!json_is_object(v)) {
        cfg_check_type(k, "an object {\"fails\": 3, \"window\": \"10s\", ...}", v);
        cfg_check_pop(k, mark);
        return;
    }
    cfg_check_keys(k, v, passive_keys, NUM(passive_keys));
    read_u32(k, v, "fails", 0, 1000, &p->fails);
    read_ms(k, v, "window", 100, CFG_MS_PER_H, &p->window_ms);
    read_ms(k, v, "down_for", 100, CFG_MS_PER_H, &p->down_for_ms);
    read_statuses(k, v, p);
    cfg_check_pop(k, mark);
}

static void read_policy(struct check *k, json_t *up, struct cfg_upstream *u)
{
    json_t *v = json_object_get(up, "policy");
    if (v == NULL) {
        return;
    }
    size_t m = cfg_check_push_key(k, "policy");
    const char *t = cfg_check_string(k, v);
    if (t != NULL) {
        size_t i = 0;
        while (i < NUM(policy_names) && strcmp(policy_names[i], t) != 0) {
            i++;
        }
        if (i == NUM(policy_names)) {
            char quoted[CFG_QUOTE_MAX * 6 + 8];
            cfg_quote(quoted, sizeof(quoted), t, strlen(t));
            cfg_check_problem(k,
                              "%s is not one of round_robin, least_conn, random_two, ip_hash, "
                              "cookie",
                              quoted);
        } else {
            u->policy = (enum cfg_lb_policy)i;
        }
    }
    cfg_check_pop(k, m);
}

/* read_cookie_name checks upstream.cookie: an RFC 6265 token. */
static void read_cookie_name(struct check *k, json_t *up, struct cfg_upstream *u)
{
    json_t *v = json_object_get(up, "cookie");
    const char *t = DEFAULT_COOKIE;
    size_t m = cfg_check_push_key(k, "cookie");
    if (v != NULL && (t = cfg_check_string(k, v)) != NULL) {
        for (const char *p = t; *p != '\0'; p++) {
            unsigned char ch = (unsigned char)*p;
            if (ch <= 0x20 || ch >= 0x7f || strchr("()<>@,;:\\\"/[]?={}", ch) != NULL ||
                p - t >= 64) {
                cfg_check_problem(k, "must be a cookie name (letters, digits, '_', '-', at most "
                                     "64 bytes)");
                t = NULL;
                break;
            }
        }
    }
    if (t != NULL && (u->cookie = strdup(t)) == NULL) {
        cfg_check_problem(k, "out of memory");
    }
    cfg_check_pop(k, m);
}

void cfg_read_upstream(struct check *k, json_t *site, struct cfg_site *s)
{
    struct cfg_upstream *u = &s->upstream;
    json_t *v = json_object_get(site, "upstream");
    size_t mark = cfg_check_push_key(k, "upstream");
    u->policy = CFG_LB_ROUND_ROBIN;
    u->retries = s->num_to > 1 ? 2 : 0;
    u->retry_timeout_ms = DEFAULT_RETRY_MS;
    u->queue_timeout_ms = DEFAULT_QUEUE_MS;
    if (v != NULL && !json_is_object(v)) {
        cfg_check_type(k, "an object {\"policy\": \"round_robin\", ...}", v);
        v = NULL;
    }
    json_t *o = v; /* NULL: every key at its default (json_object_get(NULL) is NULL) */
    if (v != NULL) {
        cfg_check_keys(k, v, upstream_keys, NUM(upstream_keys));
    }
    read_policy(k, o, u);
    read_cookie_name(k, o, u);
    read_u32(k, o, "retries", 0, MAX_RETRIES, &u->retries);
    read_ms(k, o, "retry_timeout", 0, CFG_MS_PER_H, &u->retry_timeout_ms);
    read_u32(k, o, "max_connections", 0, MAX_BACKEND_CONNS, &u->max_connections);
    read_ms(k, o, "queue_timeout", 0, CFG_MS_PER_H, &u->queue_timeout_ms);
    read_health(k, o, &u->health);
    read_passive(k, o, &u->passive);
    for (size_t i = 0; s->to_opts != NULL && i < s->num_to; i++) {
        if (s->to_opts[i].max_connections == MAXCONN_UNSET) {
            s->to_opts[i].max_connections = u->max_connections;
        }
    }
    cfg_check_pop(k, mark);
}

void cfg_upstream_cleanup(struct cfg_site *s)
{
    free(s->to_opts);
    s->to_opts = NULL;
    free(s->upstream.cookie);
    free(s->upstream.health.path);
    free(s->upstream.health.host);
    memset(&s->upstream, 0, sizeof(s->upstream));
}
