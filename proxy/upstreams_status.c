/* What the admin API shows of the backends: GET /upstreams (JSON, one object
 * per site with its policy and each backend's health and counters) and the
 * doorman_backend_* metrics. Both read the shared records (backend.c) of the
 * running config's sites; nothing here runs on a worker. */
#include <event2/buffer.h>

#include <stdio.h>
#include <string.h>

#include "config/config.h"
#include "proxy/core/str.h"
#include "proxy/metrics.h"
#include "proxy/proxy_int.h"

static int add_json_string(struct evbuffer *out, const char *s)
{
    char buf[1024];
    dm_str_json_escape(buf, sizeof(buf), s);
    return evbuffer_add_printf(out, "\"%s\"", buf) < 0 ? -1 : 0;
}

static const char *policy_name(enum cfg_lb_policy p)
{
    static const char *const names[] = {"round_robin", "least_conn", "random_two", "ip_hash",
                                        "cookie"};
    return (size_t)p < sizeof(names) / sizeof(names[0]) ? names[p] : "?";
}

static int backend_json(struct evbuffer *out, const struct dm_pool *p, size_t i, uint64_t now_ms)
{
    struct dm_backend *b = p->be[i];
    bool is_live = dm_backend_is_live(b, now_ms);
    int rc = evbuffer_add_printf(out, "%s{\"address\": ", i ? ", " : "") < 0 ? -1 : 0;
    rc |= add_json_string(out, b->address);
    rc |= evbuffer_add_printf(out, ", \"weight\": %u, \"max_connections\": %u, \"healthy\": %s",
                              p->site->to_opts != NULL ? p->site->to_opts[i].weight : 1,
                              p->site->to_opts != NULL ? p->site->to_opts[i].max_connections : 0,
                              is_live ? "true" : "false") < 0
              ? -1
              : 0;
    if (!is_live) {
        char reason[DM_BACKEND_REASON_MAX];
        dm_backend_reason(b, reason, sizeof(reason));
        uint64_t until = atomic_load(&b->down_until_ms);
        rc |= evbuffer_add_printf(out, ", \"reason\": ") < 0 ? -1 : 0;
        rc |= add_json_string(out, reason);
        if (until > now_ms) {
            rc |= evbuffer_add_printf(out, ", \"down_for_ms\": %llu",
                                      (unsigned long long)(until - now_ms)) < 0
                      ? -1
                      : 0;
        }
    }
    uint64_t checked = atomic_load(&b->last_check_s);
    rc |= evbuffer_add_printf(out,
                              ", \"in_flight\": %d, \"requests\": %llu, \"failures\": %llu, "
                              "\"last_check\": ",
                              atomic_load(&b->in_flight),
                              (unsigned long long)atomic_load(&b->requests),
                              (unsigned long long)atomic_load(&b->failures)) < 0
              ? -1
              : 0;
    if (checked == 0) {
        rc |= evbuffer_add_printf(out, "null}") < 0 ? -1 : 0;
    } else {
        rc |=
            evbuffer_add_printf(out, "{\"time\": %llu, \"status\": %d}}",
                                (unsigned long long)checked, atomic_load(&b->last_check_status)) < 0
                ? -1
                : 0;
    }
    return rc;
}

int dm_upstreams_json(struct evbuffer *out, const struct cfg *cfg)
{
    uint64_t now = dm_mono_ms();
    int rc = evbuffer_add(out, "[", 1);
    for (size_t s = 0; s < cfg->num_sites; s++) {
        const struct cfg_site *site = &cfg->sites[s];
        struct dm_pool *p = dm_pool_new(site);
        if (p == NULL) {
            return -1;
        }
        rc |= evbuffer_add_printf(out, "%s\n{\"hosts\": [", s ? "," : "") < 0 ? -1 : 0;
        for (size_t h = 0; h < site->num_hosts; h++) {
            rc |= evbuffer_add_printf(out, "%s", h ? ", " : "") < 0 ? -1 : 0;
            rc |= add_json_string(out, site->hosts[h]);
        }
        rc |= evbuffer_add_printf(out, "], \"policy\": \"%s\", \"health_check\": ",
                                  policy_name(site->upstream.policy)) < 0
                  ? -1
                  : 0;
        if (site->upstream.health.path != NULL) {
            rc |= add_json_string(out, site->upstream.health.path);
        } else {
            rc |= evbuffer_add_printf(out, "null") < 0 ? -1 : 0;
        }
        rc |= evbuffer_add_printf(out, ", \"backends\": [") < 0 ? -1 : 0;
        for (size_t i = 0; i < p->num; i++) {
            rc |= backend_json(out, p, i, now);
        }
        rc |= evbuffer_add_printf(out, "]}") < 0 ? -1 : 0;
        dm_pool_free(p);
    }
    rc |= evbuffer_add(out, "\n]\n", 3);
    return rc == 0 ? 0 : -1;
}

int dm_upstreams_metrics(struct evbuffer *out, const struct cfg *cfg)
{
    static const struct {
        const char *name, *type, *help;
    } fams[] = {
        {"doorman_backend_up", "gauge", "1 if the backend gets traffic, 0 if marked down."},
        {"doorman_backend_requests_total", "counter", "Attempts sent to the backend."},
        {"doorman_backend_failures_total", "counter",
         "Failed attempts: connect failures and timeouts, resets before a response, response "
         "timeouts, statuses listed in upstream.passive.statuses."},
        {"doorman_backend_in_flight", "gauge", "Requests holding a connection slot now."},
    };
    uint64_t now = dm_mono_ms();
    int rc = 0;
    for (size_t f = 0; f < sizeof(fams) / sizeof(fams[0]); f++) {
        rc |= dm_metrics_write_header(out, fams[f].name, fams[f].type, fams[f].help);
        for (size_t s = 0; s < cfg->num_sites; s++) {
            struct dm_pool *p = dm_pool_new(&cfg->sites[s]);
            if (p == NULL) {
                return -1;
            }
            for (size_t i = 0; i < p->num; i++) {
                struct dm_backend *b = p->be[i];
                const char *l[] = {"site", b->label, "backend", b->address};
                double v = 0;
                switch (f) {
                case 0:
                    v = dm_backend_is_live(b, now) ? 1 : 0;
                    break;
                case 1:
                    v = (double)atomic_load(&b->requests);
                    break;
                case 2:
                    v = (double)atomic_load(&b->failures);
                    break;
                default:
                    v = (double)atomic_load(&b->in_flight);
                    break;
                }
                rc |= dm_metrics_write_sample(out, fams[f].name, l, 2, v);
            }
            dm_pool_free(p);
        }
    }
    return rc == 0 ? 0 : -1;
}
