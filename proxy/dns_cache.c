/* Backend names resolved per worker with the records' TTL: A records (AAAA
 * when a name has none) are cached for their TTL clamped to DNS_TTL_MIN ..
 * DNS_TTL_MAX seconds and handed out in rotation. An expired entry keeps
 * serving its last good addresses while one refresh runs in the background,
 * and a failed refresh keeps them too (retried after DNS_TTL_MIN), so a DNS
 * outage never takes a working backend away. Names in /etc/hosts (read once
 * when the worker starts) are answered from there, first address only, as
 * getaddrinfo would. Nothing here blocks: lookups are evdns requests. */
#include "proxy/dns_cache.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/dns.h>

#include "proxy/core/log.h"
#include "proxy/core/time.h"
#include "proxy/proxy_int.h"

#define DNS_TTL_MIN   1
#define DNS_TTL_MAX   300
#define DNS_MAX_ADDRS 8

struct dm_dns_wait {
    struct dns_entry *e; /* borrowed */
    uint16_t port;
    dm_dns_cb cb;
    void *arg;
    struct dm_dns_wait *next;
};

struct dns_addr {
    int family; /* AF_INET or AF_INET6 */
    union {
        struct in_addr v4;
        struct in6_addr v6;
    } a;
};

struct dns_entry {
    char *host; /* owned, lower case */
    struct dns_addr addrs[DNS_MAX_ADDRS];
    int num_addrs;
    unsigned rr;
    unsigned gen; /* bumped when the address set changes */
    uint64_t expires_ms;
    bool is_static; /* from /etc/hosts */
    bool resolving;
    bool tried_v6;
    unsigned num_answers;      /* callbacks run, to notice one inside the request call */
    struct evdns_request *req; /* pending lookup, NULL if none */
    struct dm_dns_wait *waiters;
    struct dns_entry *next;
};

struct dm_dns_cache {
    struct dm_worker *w; /* borrowed */
    struct dns_entry *entries;
};

static uint64_t now_ms(void)
{
    return dm_time_mono_us() / 1000;
}

static struct dns_entry *entry_new(struct dm_dns_cache *dc, const char *host)
{
    struct dns_entry *e = calloc(1, sizeof(*e));
    if (e == NULL || (e->host = strdup(host)) == NULL) {
        free(e);
        return NULL;
    }
    for (char *p = e->host; *p != '\0'; p++) {
        *p = (char)tolower((unsigned char)*p);
    }
    e->next = dc->entries;
    dc->entries = e;
    return e;
}

static struct dns_entry *entry_find(struct dm_dns_cache *dc, const char *host)
{
    for (struct dns_entry *e = dc->entries; e != NULL; e = e->next) {
        if (strcasecmp(e->host, host) == 0) {
            return e;
        }
    }
    return NULL;
}

/* load_hosts reads /etc/hosts (once, at worker start, before the loop runs). */
static void load_hosts(struct dm_dns_cache *dc)
{
    FILE *f = fopen("/etc/hosts", "re");
    if (f == NULL) {
        return;
    }
    char line[1024];
    while (fgets(line, sizeof(line), f) != NULL) {
        char *hash = strchr(line, '#');
        if (hash != NULL) {
            *hash = '\0';
        }
        char *save = NULL;
        char *ip = strtok_r(line, " \t\r\n", &save);
        if (ip == NULL) {
            continue;
        }
        struct dns_addr a;
        memset(&a, 0, sizeof(a));
        if (inet_pton(AF_INET, ip, &a.a.v4) == 1) {
            a.family = AF_INET;
        } else if (inet_pton(AF_INET6, ip, &a.a.v6) == 1) {
            a.family = AF_INET6;
        } else {
            continue;
        }
        for (char *name = strtok_r(NULL, " \t\r\n", &save); name != NULL;
             name = strtok_r(NULL, " \t\r\n", &save)) {
            struct dns_entry *e = entry_find(dc, name);
            if (e == NULL && (e = entry_new(dc, name)) == NULL) {
                break;
            }
            e->is_static = true;
            /* IPv4 first, as AI_ADDRCONFIG on a v4 loopback would have it;
             * only the first address is used (no rotation over hosts). */
            if (e->num_addrs == 0 || (a.family == AF_INET && e->addrs[0].family != AF_INET)) {
                e->addrs[0] = a;
                e->num_addrs = 1;
            }
        }
    }
    fclose(f);
}

struct dm_dns_cache *dm_dns_cache_new(struct dm_worker *w)
{
    struct dm_dns_cache *dc = calloc(1, sizeof(*dc));
    if (dc == NULL) {
        return NULL;
    }
    dc->w = w;
    load_hosts(dc);
    return dc;
}

void dm_dns_cache_free(struct dm_dns_cache *dc)
{
    if (dc == NULL) {
        return;
    }
    struct dns_entry *e = dc->entries;
    while (e != NULL) {
        struct dns_entry *next = e->next;
        if (e->req != NULL) {
            struct evdns_request *req = e->req;
            e->req = NULL;
            evdns_cancel_request(dc->w->dns, req); /* the callback sees no entry */
        }
        while (e->waiters != NULL) {
            struct dm_dns_wait *wt = e->waiters;
            e->waiters = wt->next;
            free(wt);
        }
        free(e->host);
        free(e);
        e = next;
    }
    free(dc);
}

static socklen_t entry_addr(struct dns_entry *e, uint16_t port, struct sockaddr_storage *out)
{
    const struct dns_addr *a = &e->addrs[e->rr++ % (unsigned)e->num_addrs];
    memset(out, 0, sizeof(*out));
    if (a->family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)out;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        sin->sin_addr = a->a.v4;
        return sizeof(*sin);
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    sin6->sin6_addr = a->a.v6;
    return sizeof(*sin6);
}

static void entry_resolve(struct dm_dns_cache *dc, struct dns_entry *e, bool v6);

struct resolve_ctx {
    struct dm_dns_cache *dc;
    struct dns_entry *e;
};

static void entry_on_answer(int result, char type, int count, int ttl, void *addresses, void *arg)
{
    struct resolve_ctx *rc = arg;
    struct dm_dns_cache *dc = rc->dc;
    struct dns_entry *e = rc->e;
    free(rc);
    if (result == DNS_ERR_CANCEL) {
        return; /* cache being freed */
    }
    e->req = NULL;
    e->num_answers++;
    int n = 0;
    struct dns_addr got[DNS_MAX_ADDRS];
    if (result == DNS_ERR_NONE && addresses != NULL) {
        for (int i = 0; i < count && n < DNS_MAX_ADDRS; i++) {
            memset(&got[n], 0, sizeof(got[n]));
            if (type == DNS_IPv4_A) {
                got[n].family = AF_INET;
                memcpy(&got[n].a.v4, (const uint8_t *)addresses + 4 * i, 4);
                n++;
            } else if (type == DNS_IPv6_AAAA) {
                got[n].family = AF_INET6;
                memcpy(&got[n].a.v6, (const uint8_t *)addresses + 16 * i, 16);
                n++;
            }
        }
    }
    if (n == 0 && type == DNS_IPv4_A && !e->tried_v6 &&
        (result == DNS_ERR_NONE || result == DNS_ERR_NOTEXIST)) {
        e->tried_v6 = true;
        entry_resolve(dc, e, true); /* no A records: try AAAA */
        return;
    }
    e->resolving = false;
    e->tried_v6 = false;
    if (n > 0) {
        int t = ttl < DNS_TTL_MIN ? DNS_TTL_MIN : ttl > DNS_TTL_MAX ? DNS_TTL_MAX : ttl;
        bool changed = n != e->num_addrs || memcmp(got, e->addrs, sizeof(got[0]) * (size_t)n) != 0;
        memcpy(e->addrs, got, sizeof(got[0]) * (size_t)n);
        e->num_addrs = n;
        e->expires_ms = now_ms() + (uint64_t)t * 1000;
        if (changed) {
            e->gen++;
            DM_LOG_DBG("dns", "%s: %d address(es), ttl %d s", e->host, n, t);
        }
    } else {
        /* Keep the last good addresses; try again soon. */
        e->expires_ms = now_ms() + DNS_TTL_MIN * 1000;
        dm_log(e->num_addrs > 0 ? DM_LOG_DEBUG : DM_LOG_WARN, "dns", "resolve %s failed: %s%s",
               e->host, evdns_err_to_string(result),
               e->num_addrs > 0 ? " (keeping the last good addresses)" : "");
    }
    /* Answer the waiters (each may start new lookups: detach the list). */
    struct dm_dns_wait *wt = e->waiters;
    e->waiters = NULL;
    while (wt != NULL) {
        struct dm_dns_wait *next = wt->next;
        if (e->num_addrs > 0) {
            struct sockaddr_storage ss;
            socklen_t len = entry_addr(e, wt->port, &ss);
            wt->cb(0, (struct sockaddr *)&ss, len, e->gen, wt->arg);
        } else {
            wt->cb(-1, NULL, 0, 0, wt->arg);
        }
        free(wt);
        wt = next;
    }
}

static void entry_resolve(struct dm_dns_cache *dc, struct dns_entry *e, bool v6)
{
    struct resolve_ctx *rc = malloc(sizeof(*rc));
    if (rc == NULL) {
        return;
    }
    rc->dc = dc;
    rc->e = e;
    e->resolving = true;
    unsigned before = e->num_answers;
    struct evdns_request *req =
        v6 ? evdns_base_resolve_ipv6(dc->w->dns, e->host, 0, entry_on_answer, rc)
           : evdns_base_resolve_ipv4(dc->w->dns, e->host, 0, entry_on_answer, rc);
    if (e->num_answers != before) {
        return; /* answered inside the call */
    }
    if (req == NULL) {
        free(rc);
        e->resolving = false;
        return;
    }
    e->req = req;
}

struct dm_dns_wait *dm_dns_resolve(struct dm_worker *w, const char *host, uint16_t port,
                                   dm_dns_cb cb, void *arg)
{
    struct dm_dns_cache *dc = w->dns_cache;
    struct dns_entry *e = dc != NULL ? entry_find(dc, host) : NULL;
    if (dc != NULL && e == NULL) {
        e = entry_new(dc, host);
    }
    if (e == NULL) {
        cb(-1, NULL, 0, 0, arg);
        return NULL;
    }
    if (!e->is_static && !e->resolving && now_ms() >= e->expires_ms) {
        entry_resolve(dc, e, false); /* refresh; may answer at once */
    }
    if (e->num_addrs > 0) {
        struct sockaddr_storage ss;
        socklen_t len = entry_addr(e, port, &ss);
        cb(0, (struct sockaddr *)&ss, len, e->gen, arg);
        return NULL;
    }
    if (!e->resolving) {
        cb(-1, NULL, 0, 0, arg);
        return NULL;
    }
    struct dm_dns_wait *wt = calloc(1, sizeof(*wt));
    if (wt == NULL) {
        cb(-1, NULL, 0, 0, arg);
        return NULL;
    }
    wt->e = e;
    wt->port = port;
    wt->cb = cb;
    wt->arg = arg;
    wt->next = e->waiters;
    e->waiters = wt;
    return wt;
}

unsigned dm_dns_generation(struct dm_worker *w, const char *host)
{
    struct dns_entry *e = w->dns_cache != NULL ? entry_find(w->dns_cache, host) : NULL;
    if (e == NULL) {
        return 0;
    }
    if (!e->is_static && !e->resolving && now_ms() >= e->expires_ms) {
        entry_resolve(w->dns_cache, e, false); /* pooled traffic refreshes names too */
    }
    return e->gen;
}

void dm_dns_cancel(struct dm_dns_wait *wt)
{
    struct dns_entry *e = wt->e;
    for (struct dm_dns_wait **pp = &e->waiters; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == wt) {
            *pp = wt->next;
            break;
        }
    }
    free(wt);
}
