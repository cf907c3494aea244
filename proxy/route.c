/* Host -> site routing for one generation: an open-addressing hash of exact
 * names plus one of wildcard parents ("*.example.com" stored as
 * "example.com"), then the catch-all on-demand site (one without hosts) if
 * the config has one; built once per config load and read-only afterwards. */
#include <stdlib.h>
#include <string.h>

#include "proxy/core/str.h"
#include "proxy/proxy_int.h"

struct route_slot {
    const char *name; /* borrowed from cfg (for wildcards: past the "*.") */
    size_t len;
    const struct cfg_site *site;
};

struct dm_route {
    struct route_slot *exact;
    struct route_slot *wild;
    size_t mask;                      /* capacity - 1, capacity a power of two */
    const struct cfg_site *catch_all; /* on-demand site without hosts, or NULL */
};

static void route_insert(struct route_slot *tab, size_t mask, const char *name, size_t len,
                         const struct cfg_site *site)
{
    size_t i = dm_str_hash(name, len) & mask;
    while (tab[i].name != NULL) {
        if (tab[i].len == len && memcmp(tab[i].name, name, len) == 0) {
            return; /* first site wins; validation rejects duplicates anyway */
        }
        i = (i + 1) & mask;
    }
    tab[i].name = name;
    tab[i].len = len;
    tab[i].site = site;
}

static const struct cfg_site *route_lookup(const struct route_slot *tab, size_t mask,
                                           const char *name, size_t len)
{
    size_t i = dm_str_hash(name, len) & mask;
    while (tab[i].name != NULL) {
        if (tab[i].len == len && memcmp(tab[i].name, name, len) == 0) {
            return tab[i].site;
        }
        i = (i + 1) & mask;
    }
    return NULL;
}

struct dm_route *dm_route_new(const struct cfg *cfg)
{
    size_t n = 0;
    for (size_t i = 0; i < cfg->num_sites; i++) {
        n += cfg->sites[i].num_hosts;
    }
    size_t cap = 16;
    while (cap < n * 2) {
        cap *= 2;
    }
    struct dm_route *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    r->exact = calloc(cap, sizeof(*r->exact));
    r->wild = calloc(cap, sizeof(*r->wild));
    if (r->exact == NULL || r->wild == NULL) {
        dm_route_free(r);
        return NULL;
    }
    r->mask = cap - 1;
    for (size_t i = 0; i < cfg->num_sites; i++) {
        const struct cfg_site *s = &cfg->sites[i];
        if (s->num_hosts == 0 && s->on_demand != NULL) {
            r->catch_all = s;
        }
        for (size_t j = 0; j < s->num_hosts; j++) {
            const char *h = s->hosts[j];
            if (h[0] == '*' && h[1] == '.') {
                route_insert(r->wild, r->mask, h + 2, strlen(h + 2), s);
            } else {
                route_insert(r->exact, r->mask, h, strlen(h), s);
            }
        }
    }
    return r;
}

void dm_route_free(struct dm_route *r)
{
    if (r == NULL) {
        return;
    }
    free(r->exact);
    free(r->wild);
    free(r);
}

const struct cfg_site *dm_route_find(const struct dm_route *r, const char *host, size_t host_len)
{
    const struct cfg_site *s = route_lookup(r->exact, r->mask, host, host_len);
    if (s != NULL) {
        return s;
    }
    /* A wildcard covers exactly one label (RFC 6125 §6.4.3). */
    const char *dot = memchr(host, '.', host_len);
    if (dot != NULL && dot != host) {
        size_t rest = host_len - (size_t)(dot + 1 - host);
        s = route_lookup(r->wild, r->mask, dot + 1, rest);
    }
    return s != NULL ? s : r->catch_all;
}
