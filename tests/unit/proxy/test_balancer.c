/* Unit tests for proxy/balancer.c and the backend records: weighted round
 * robin over a cycle, backends marked down or already tried skipped,
 * max_connections answered DM_PICK_FULL, least_conn following in-flight
 * counts, ip_hash stable per address and moving only the clients of a
 * backend that went down, and records shared by two pools of the same site
 * (what keeps health across reloads). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "harness.h"
#include "proxy/proxy_int.h"

static struct cfg_addr addrs[3] = {
    {.text = "127.0.0.1:1"}, {.text = "127.0.0.1:2"}, {.text = "127.0.0.1:3"}};
static char *hosts[] = {"unit.test"};

static void site_init(struct cfg_site *s, struct cfg_backend_opts *o, enum cfg_lb_policy p)
{
    memset(s, 0, sizeof(*s));
    s->hosts = hosts;
    s->num_hosts = 1;
    s->to = addrs;
    s->num_to = 3;
    s->to_opts = o;
    s->upstream.policy = p;
    s->upstream.cookie = "c";
    for (int i = 0; i < 3; i++) {
        o[i].weight = o[i].weight ? o[i].weight : 1;
    }
}

static int pick(struct dm_pool *p, const struct dm_pick_in *in)
{
    bool miss;
    int i = dm_pool_pick(p, in, dm_mono_ms(), &miss);
    if (i >= 0) {
        dm_pool_release(p->be[i]);
    }
    return i;
}

TEST(test_weighted_round_robin_and_skipping)
{
    struct cfg_backend_opts o[3] = {{.weight = 3}, {.weight = 1}, {.weight = 1}};
    struct cfg_site s;
    site_init(&s, o, CFG_LB_ROUND_ROBIN);
    struct dm_pool *p = dm_pool_new(&s);
    CHECK(p != NULL);
    struct dm_pick_in in = {0};
    int n[3] = {0};
    for (int k = 0; k < 50; k++) {
        n[pick(p, &in)]++;
    }
    CHECK_EQ_INT(n[0], 30);
    CHECK_EQ_INT(n[1], 10);
    CHECK_EQ_INT(n[2], 10);
    /* Down (active checks): never picked. */
    dm_backend_set_active(p->be[0], false, "unit test");
    memset(n, 0, sizeof(n));
    for (int k = 0; k < 50; k++) {
        n[pick(p, &in)]++;
    }
    CHECK_EQ_INT(n[0], 0);
    /* Its share goes to the others by their weights (1:1), not all to one. */
    CHECK(n[1] >= 23 && n[2] >= 23);
    /* Tried already: skipped; everything tried or down: DM_PICK_DOWN. */
    in.tried = 1u << 1;
    for (int k = 0; k < 10; k++) {
        CHECK_EQ_INT(pick(p, &in), 2);
    }
    in.tried = (1u << 1) | (1u << 2);
    CHECK_EQ_INT(pick(p, &in), DM_PICK_DOWN);
    dm_backend_set_active(p->be[0], true, "unit test");
    CHECK_EQ_INT(pick(p, &in), 0);
    dm_pool_free(p);
}

TEST(test_max_connections_and_least_conn)
{
    struct cfg_backend_opts o[3] = {
        {.max_connections = 1}, {.max_connections = 1}, {.max_connections = 1}};
    struct cfg_site s;
    site_init(&s, o, CFG_LB_LEAST_CONN);
    struct dm_pool *p = dm_pool_new(&s);
    struct dm_pick_in in = {0};
    bool miss;
    int taken[3];
    for (int k = 0; k < 3; k++) {
        taken[k] = dm_pool_pick(p, &in, dm_mono_ms(), &miss);
        CHECK(taken[k] >= 0);
    }
    CHECK(taken[0] != taken[1] && taken[1] != taken[2] && taken[0] != taken[2]);
    CHECK_EQ_INT(dm_pool_pick(p, &in, dm_mono_ms(), &miss), DM_PICK_FULL);
    dm_pool_release(p->be[1]);
    CHECK_EQ_INT(dm_pool_pick(p, &in, dm_mono_ms(), &miss), 1);
    for (int k = 0; k < 3; k++) {
        dm_pool_release(p->be[k]);
    }
    /* least_conn: the backend with fewer in flight wins. */
    o[0].max_connections = o[1].max_connections = o[2].max_connections = 0;
    atomic_store(&p->be[0]->in_flight, 5);
    atomic_store(&p->be[2]->in_flight, 5);
    for (int k = 0; k < 5; k++) {
        CHECK_EQ_INT(pick(p, &in), 1);
    }
    atomic_store(&p->be[0]->in_flight, 0);
    atomic_store(&p->be[2]->in_flight, 0);
    dm_pool_free(p);
}

TEST(test_ip_hash_is_stable)
{
    struct cfg_backend_opts o[3] = {{0}};
    struct cfg_site s;
    site_init(&s, o, CFG_LB_IP_HASH);
    struct dm_pool *p = dm_pool_new(&s);
    int first[64];
    int used[3] = {0};
    for (int a = 0; a < 64; a++) {
        struct sockaddr_in sin = {.sin_family = AF_INET};
        sin.sin_addr.s_addr = htonl(0x0a000000u + (uint32_t)a);
        struct dm_pick_in in = {.peer = (struct sockaddr *)&sin};
        first[a] = pick(p, &in);
        CHECK(first[a] >= 0);
        used[first[a]]++;
        CHECK_EQ_INT(pick(p, &in), first[a]);
    }
    CHECK(used[0] > 5 && used[1] > 5 && used[2] > 5);
    /* Backend 0 down: only its clients move. */
    dm_backend_set_active(p->be[0], false, "unit test");
    for (int a = 0; a < 64; a++) {
        struct sockaddr_in sin = {.sin_family = AF_INET};
        sin.sin_addr.s_addr = htonl(0x0a000000u + (uint32_t)a);
        struct dm_pick_in in = {.peer = (struct sockaddr *)&sin};
        int now = pick(p, &in);
        CHECK(now != 0);
        if (first[a] != 0) {
            CHECK_EQ_INT(now, first[a]);
        }
    }
    dm_backend_set_active(p->be[0], true, "unit test");
    dm_pool_free(p);
}

TEST(test_records_survive_a_new_pool)
{
    struct cfg_backend_opts o[3] = {{0}};
    struct cfg_site s;
    site_init(&s, o, CFG_LB_COOKIE);
    struct dm_pool *p1 = dm_pool_new(&s);
    dm_backend_set_active(p1->be[2], false, "unit test");
    struct dm_pool *p2 = dm_pool_new(&s); /* the next generation */
    dm_pool_free(p1);
    CHECK(p2->be[2] != NULL);
    CHECK(!dm_backend_is_live(p2->be[2], dm_mono_ms()));
    CHECK(strstr(p2->set_cookie[0], "c=") == p2->set_cookie[0]);
    CHECK(strstr(p2->set_cookie[0], "127.0.0.1") == NULL);
    /* The cookie naming backend 1 sticks; a stale one gets a new cookie. */
    struct dm_pick_in in = {.cookie = p2->be[1]->id, .cookie_len = 16};
    bool miss;
    int i = dm_pool_pick(p2, &in, dm_mono_ms(), &miss);
    CHECK_EQ_INT(i, 1);
    CHECK(!miss);
    dm_pool_release(p2->be[1]);
    in.cookie = p2->be[2]->id; /* down */
    i = dm_pool_pick(p2, &in, dm_mono_ms(), &miss);
    CHECK(i == 0 || i == 1);
    CHECK(miss);
    dm_pool_release(p2->be[i]);
    dm_backend_set_active(p2->be[2], true, "unit test");
    dm_pool_free(p2);
}

HARNESS_MAIN(T(test_weighted_round_robin_and_skipping), T(test_max_connections_and_least_conn),
             T(test_ip_hash_is_stable), T(test_records_survive_a_new_pool))
