/* Unit tests for proxy/iptable.c: connection counts, the token bucket with
 * its Retry-After, IPv4/IPv6 keys kept apart, and the bounded table failing
 * open when a set is full of busy addresses. */
#include "proxy/iptable.h"

#include <string.h>

#include "harness.h"

static void ip4(uint8_t out[16], uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    memset(out, 0, 16);
    out[10] = out[11] = 0xff;
    out[12] = a;
    out[13] = b;
    out[14] = c;
    out[15] = d;
}

TEST(test_conn_counts)
{
    struct dm_iptable *t = dm_iptable_new(64);
    CHECK(t != NULL);
    uint8_t a[16], b[16];
    ip4(a, 10, 0, 0, 1);
    ip4(b, 10, 0, 0, 2);
    CHECK_EQ_INT(dm_iptable_conns(t, a), 0);
    CHECK(dm_iptable_conn_open(t, a, 0));
    CHECK(dm_iptable_conn_open(t, a, 0));
    CHECK(dm_iptable_conn_open(t, b, 0));
    CHECK_EQ_INT(dm_iptable_conns(t, a), 2);
    CHECK_EQ_INT(dm_iptable_conns(t, b), 1);
    dm_iptable_conn_close(t, a);
    CHECK_EQ_INT(dm_iptable_conns(t, a), 1);
    dm_iptable_conn_close(t, a);
    dm_iptable_conn_close(t, a); /* never below zero */
    CHECK_EQ_INT(dm_iptable_conns(t, a), 0);
    dm_iptable_free(t);
    dm_iptable_free(NULL);
}

TEST(test_token_bucket)
{
    struct dm_iptable *t = dm_iptable_new(64);
    uint8_t a[16];
    ip4(a, 192, 0, 2, 1);
    /* rate 2/s, burst 3: three at once, then wait. */
    uint64_t now = 1000000;
    CHECK_EQ_INT(dm_iptable_take(t, a, 2, 3, now), 0);
    CHECK_EQ_INT(dm_iptable_take(t, a, 2, 3, now), 0);
    CHECK_EQ_INT(dm_iptable_take(t, a, 2, 3, now), 0);
    CHECK_EQ_INT(dm_iptable_take(t, a, 2, 3, now), 1); /* 500 ms to a token: Retry-After 1 */
    CHECK_EQ_INT(dm_iptable_take(t, a, 2, 3, now + 499), 1);
    CHECK_EQ_INT(dm_iptable_take(t, a, 2, 3, now + 500), 0);
    CHECK_EQ_INT(dm_iptable_take(t, a, 2, 3, now + 500), 1);
    /* Refill stops at the burst. */
    now += 100000;
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(dm_iptable_take(t, a, 2, 3, now), 0);
    }
    CHECK(dm_iptable_take(t, a, 2, 3, now) != 0);
    /* A slow rate asks for a longer wait. */
    uint8_t b[16];
    ip4(b, 192, 0, 2, 2);
    CHECK_EQ_INT(dm_iptable_take(t, b, 1, 1, now), 0);
    CHECK_EQ_INT(dm_iptable_take(t, b, 1, 1, now), 1);
    CHECK_EQ_INT(dm_iptable_take(t, b, 1, 1, now + 1000), 0);
    /* Rate 0 means off. */
    CHECK_EQ_INT(dm_iptable_take(t, b, 0, 0, now), 0);
    dm_iptable_free(t);
}

TEST(test_v4_and_v6_are_different_keys)
{
    struct dm_iptable *t = dm_iptable_new(64);
    uint8_t v4[16], v6[16];
    ip4(v4, 127, 0, 0, 1);
    memset(v6, 0, 16);
    v6[15] = 1; /* ::1 */
    CHECK(dm_iptable_conn_open(t, v4, 0));
    CHECK_EQ_INT(dm_iptable_conns(t, v6), 0);
    dm_iptable_free(t);
}

TEST(test_bounded_and_fails_open)
{
    /* One set of DM_IPTABLE_WAYS slots: every address lands in it. */
    struct dm_iptable *t = dm_iptable_new(1);
    uint8_t ip[16];
    for (int i = 0; i < DM_IPTABLE_WAYS; i++) {
        ip4(ip, 10, 1, 0, (uint8_t)i);
        CHECK(dm_iptable_conn_open(t, ip, 0));
    }
    ip4(ip, 10, 2, 0, 0);
    CHECK(!dm_iptable_conn_open(t, ip, 0));           /* all busy: not tracked */
    CHECK_EQ_INT(dm_iptable_take(t, ip, 1, 1, 0), 0); /* and not limited */
    CHECK_EQ_INT(dm_iptable_take(t, ip, 1, 1, 0), 0);
    /* Once a slot's address has no connection, a new address takes it. */
    ip4(ip, 10, 1, 0, 3);
    dm_iptable_conn_close(t, ip);
    ip4(ip, 10, 2, 0, 0);
    CHECK(dm_iptable_conn_open(t, ip, 10));
    CHECK_EQ_INT(dm_iptable_conns(t, ip), 1);
    ip4(ip, 10, 1, 0, 3);
    CHECK_EQ_INT(dm_iptable_conns(t, ip), 0); /* evicted */
    /* A bucket in use is busy; after a minute untouched it can be evicted. */
    dm_iptable_free(t);
    t = dm_iptable_new(1);
    for (int i = 0; i < DM_IPTABLE_WAYS; i++) {
        ip4(ip, 10, 3, 0, (uint8_t)i);
        CHECK_EQ_INT(dm_iptable_take(t, ip, 1, 1, 1000), 0);
    }
    ip4(ip, 10, 4, 0, 0);
    CHECK_EQ_INT(dm_iptable_take(t, ip, 1, 1, 1000), 0);
    CHECK_EQ_INT(dm_iptable_take(t, ip, 1, 1, 1000), 0); /* untracked: fails open */
    CHECK_EQ_INT(dm_iptable_take(t, ip, 1, 1, 62000), 0);
    CHECK_EQ_INT(dm_iptable_take(t, ip, 1, 1, 62000), 1); /* tracked now */
    dm_iptable_free(t);
}

HARNESS_MAIN(T(test_conn_counts), T(test_token_bucket), T(test_v4_and_v6_are_different_keys),
             T(test_bounded_and_fails_open))
