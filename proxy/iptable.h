/* A bounded per-worker table of client IP addresses for the per-IP limits:
 * open connections and a token bucket of requests. Fixed capacity, set
 * associative (a hash picks a set of DM_IPTABLE_WAYS slots), no allocation
 * after creation and no lock: one worker owns it. When a set is full of
 * addresses that are busy (open connections, or a bucket not yet refilled)
 * a new address is not tracked and is let through: the limits fail open
 * rather than let an attacker with many addresses lock out new clients.
 * Pure data structure: time comes from the caller. */
#ifndef DM_PROXY_IPTABLE_H
#define DM_PROXY_IPTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DM_IPTABLE_WAYS 8

struct dm_iptable;

/* dm_iptable_new returns a table of about capacity addresses (rounded up to
 * whole sets), or NULL when out of memory. */
struct dm_iptable *dm_iptable_new(size_t capacity);
void dm_iptable_free(struct dm_iptable *t);

/* dm_iptable_conns returns the open connections counted for ip (16 bytes;
 * IPv4 as IPv4-mapped IPv6). */
uint32_t dm_iptable_conns(const struct dm_iptable *t, const uint8_t ip[16]);

/* dm_iptable_conn_open counts one more open connection for ip. Returns true
 * if it was counted (the caller must call dm_iptable_conn_close later), false
 * if the table had no room for ip (not counted). */
bool dm_iptable_conn_open(struct dm_iptable *t, const uint8_t ip[16], uint64_t now_ms);

/* dm_iptable_conn_close uncounts a connection counted by conn_open. */
void dm_iptable_conn_close(struct dm_iptable *t, const uint8_t ip[16]);

/* dm_iptable_take takes one request from ip's token bucket, which refills
 * at rate per second up to burst (both > 0). Returns 0 if allowed (or ip
 * cannot be tracked), else the whole seconds until a token is back (>= 1),
 * for Retry-After. */
uint32_t dm_iptable_take(struct dm_iptable *t, const uint8_t ip[16], uint32_t rate, uint32_t burst,
                         uint64_t now_ms);

#endif
