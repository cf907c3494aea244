/* Per-worker cache of backend host names with the DNS records' TTL
 * (dns_cache.c). */
#ifndef DM_PROXY_DNS_CACHE_H
#define DM_PROXY_DNS_CACHE_H

#include <stdint.h>
#include <sys/socket.h>

struct dm_worker;
struct dm_dns_cache;
struct dm_dns_wait;

/* dm_dns_cb gets err 0 and an address with the port set, or err -1; gen is
 * the name's address generation (see dm_dns_generation). */
typedef void (*dm_dns_cb)(int err, const struct sockaddr *sa, socklen_t len, unsigned gen,
                          void *arg);

struct dm_dns_cache *dm_dns_cache_new(struct dm_worker *w);
void dm_dns_cache_free(struct dm_dns_cache *dc);
/* dm_dns_resolve finds an address of host (rotating over its records). It
 * calls cb at once when the cache can answer (also with stale addresses while
 * a refresh runs) and returns NULL; otherwise it returns a wait that calls cb
 * later, unless dm_dns_cancel'ed first. */
struct dm_dns_wait *dm_dns_resolve(struct dm_worker *w, const char *host, uint16_t port,
                                   dm_dns_cb cb, void *arg);
void dm_dns_cancel(struct dm_dns_wait *wt);
/* dm_dns_generation counts the changes of host's address set: a pooled
 * connection made under an older generation may go to an address DNS no
 * longer lists, so it is not reused. Starts a refresh when the TTL has
 * passed, so traffic on pooled connections notices DNS changes too. */
unsigned dm_dns_generation(struct dm_worker *w, const char *host);

#endif
