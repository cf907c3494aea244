/* Runtime generations: a config snapshot and what the data plane derives from
 * it (routing table, parser limits). Refcounted with an atomic count because
 * the control thread creates them and every worker holds them. */
#include <stdlib.h>

#include "config/config.h"
#include "proxy/core/err.h"
#include "proxy/proxy_int.h"

static void gen_free_pools(struct dm_gen *g, size_t num)
{
    for (size_t i = 0; g->pools != NULL && i < num; i++) {
        dm_pool_free(g->pools[i]);
    }
    free(g->pools);
    g->pools = NULL;
}

struct dm_gen *dm_gen_new(struct cfg *cfg, struct dm_err *err)
{
    struct dm_gen *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    atomic_init(&g->refs, 1);
    g->route = dm_route_new(cfg);
    if (g->route == NULL) {
        free(g);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    g->site_metric = calloc(cfg->num_sites ? cfg->num_sites : 1, sizeof(*g->site_metric));
    if (g->site_metric == NULL) {
        dm_route_free(g->route);
        free(g);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < cfg->num_sites; i++) {
        /* The catch-all on-demand site has no hosts: its label is "*". */
        const struct cfg_site *s = &cfg->sites[i];
        g->site_metric[i] = dm_metrics_site_index(s->num_hosts > 0 ? s->hosts[0] : "*");
    }
    g->pools = calloc(cfg->num_sites ? cfg->num_sites : 1, sizeof(*g->pools));
    for (size_t i = 0; g->pools != NULL && i < cfg->num_sites; i++) {
        if ((g->pools[i] = dm_pool_new(&cfg->sites[i])) == NULL) {
            gen_free_pools(g, cfg->num_sites);
        }
    }
    if (g->pools == NULL) {
        dm_route_free(g->route);
        free(g->site_metric);
        free(g);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    g->cfg = cfg_ref(cfg);
    g->max_headers = cfg->limits.max_headers;
    g->req_limits.max_line = cfg->limits.max_line;
    g->req_limits.max_headers = cfg->limits.max_headers;
    g->req_limits.max_header_bytes = cfg->limits.max_header_bytes;
    /* Backends are trusted more than clients but still bounded. */
    g->resp_limits.max_line = 8192;
    g->resp_limits.max_headers = cfg->limits.max_headers;
    g->resp_limits.max_header_bytes =
        65536 > cfg->limits.max_header_bytes ? 65536 : cfg->limits.max_header_bytes;
    return g;
}

struct dm_gen *dm_gen_ref(struct dm_gen *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    return g;
}

void dm_gen_unref(struct dm_gen *g)
{
    if (g == NULL) {
        return;
    }
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1) {
        dm_route_free(g->route);
        free(g->site_metric);
        gen_free_pools(g, g->cfg->num_sites);
        cfg_unref(g->cfg);
        free(g);
    }
}
