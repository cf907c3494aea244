/* Per-client-IP limits with a connection's context (limits.per_ip_connections,
 * limits.per_ip_rate): the worker's own dm_iptable, so no lock. conn.c and
 * worker.c call these with one line at accept, close and request start. */
#include <stdio.h>
#include <string.h>

#include <netinet/in.h>

#include "proxy/core/time.h"
#include "proxy/iptable.h"
#include "proxy/metrics.h"
#include "proxy/proxy_int.h"

/* ip_key writes the 16-byte key of a peer address: IPv6 as is, IPv4 as
 * IPv4-mapped, so a dual-stack listener counts one client once. Returns
 * false for other families (unix sockets: not limited). */
static bool ip_key(const struct sockaddr *sa, uint8_t out[16])
{
    if (sa->sa_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return true;
    }
    if (sa->sa_family == AF_INET) {
        static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        memcpy(out, prefix, 12);
        memcpy(out + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    return false;
}

static uint64_t now_ms(void)
{
    return dm_time_mono_us() / 1000;
}

bool dm_limits_accept_ok(struct dm_worker *w, const struct sockaddr *sa)
{
    uint32_t max = w->gen->cfg->limits.per_ip_connections;
    uint8_t key[16];
    if (max == 0 || w->ips == NULL || !ip_key(sa, key)) {
        return true;
    }
    if (dm_iptable_conns(w->ips, key) < max) {
        return true;
    }
    dm_metrics_refused(w->metrics, DM_REFUSE_PER_IP_CONNECTIONS);
    return false;
}

void dm_limits_conn_opened(struct dm_conn *c)
{
    uint8_t key[16];
    if (c->w->ips != NULL && ip_key((const struct sockaddr *)&c->peer, key)) {
        c->ip_counted = dm_iptable_conn_open(c->w->ips, key, now_ms());
    }
}

void dm_limits_conn_closed(struct dm_conn *c)
{
    uint8_t key[16];
    if (c->ip_counted && ip_key((const struct sockaddr *)&c->peer, key)) {
        dm_iptable_conn_close(c->w->ips, key);
        c->ip_counted = false;
    }
}

uint32_t dm_limits_request(struct dm_conn *c, char *retry_header, size_t cap)
{
    const struct cfg_limits *l = &c->gen->cfg->limits;
    uint8_t key[16];
    if (l->per_ip_rate == 0 || c->w->ips == NULL ||
        !ip_key((const struct sockaddr *)&c->peer, key)) {
        return 0;
    }
    uint32_t wait_s = dm_iptable_take(c->w->ips, key, l->per_ip_rate, l->per_ip_burst, now_ms());
    if (wait_s != 0) {
        dm_metrics_refused(c->w->metrics, DM_REFUSE_RATE);
        snprintf(retry_header, cap, "Retry-After: %u\r\n", wait_s);
    }
    return wait_s;
}
