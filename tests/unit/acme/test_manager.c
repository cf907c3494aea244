/* Tests for acme/manager.c: applying configs built by hand (local and files
 * sites), reuse across reloads and restarts, removal of dropped names, the
 * default certificate, all-or-nothing failure, the renewal timer (a 3 s
 * lifetime renewed inside an event loop with a deadline) and backoff. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/pool.h>

#include "acme/acme.h"
#include "acme/cert_int.h"
#include "acme/manager_int.h"
#include "acme/storage.h"
#include "config/config_types.h"
#include "fixtures.h"
#include "harness.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"
#include "proxy/core/log.h"
#include "proxy/core/time.h"

/* A hand-built config: up to 4 sites of up to 4 hosts (config validation is
 * bypassed on purpose, e.g. for 3-second lifetimes). */
struct tcfg {
    struct cfg cfg;
    struct cfg_site sites[4];
    char *hosts[4][4];
};

static void tcfg_init(struct tcfg *t, char *data_dir, uint32_t lifetime_s)
{
    memset(t, 0, sizeof(*t));
    t->cfg.data_dir = data_dir;
    t->cfg.local_lifetime_s = lifetime_s;
    t->cfg.sites = t->sites;
}

/* tcfg_site appends a site with hosts (NULL-terminated list). */
static struct cfg_site *tcfg_site(struct tcfg *t, enum cfg_tls_source tls, const char *h0,
                                  const char *h1)
{
    size_t i = t->cfg.num_sites++;
    struct cfg_site *s = &t->sites[i];
    s->tls = tls;
    s->hosts = t->hosts[i];
    const char *hs[] = {h0, h1};
    for (size_t j = 0; j < 2 && hs[j] != NULL; j++) {
        t->hosts[i][j] = (char *)hs[j];
        s->num_hosts++;
    }
    return s;
}

static struct acme_cert *get(struct acme_store *s, const char *name)
{
    return acme_store_get(s, name, strlen(name));
}

/* same_leaf compares the leaf DER of two certificates. */
static bool same_leaf(const struct acme_cert *a, const struct acme_cert *b)
{
    if (a == NULL || b == NULL) {
        return false;
    }
    size_t na = 0, nb = 0;
    CRYPTO_BUFFER *la = acme_cert_chain(a, &na)[0], *lb = acme_cert_chain(b, &nb)[0];
    return CRYPTO_BUFFER_len(la) == CRYPTO_BUFFER_len(lb) &&
           memcmp(CRYPTO_BUFFER_data(la), CRYPTO_BUFFER_data(lb), CRYPTO_BUFFER_len(la)) == 0;
}

static bool path_exists(const char *dir, const char *rel)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    return dm_file_exists(path);
}

TEST(test_apply_local_reload_restart)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct dm_err err = {0};
    struct event_base *base = event_base_new();
    struct acme_store *store = acme_store_new();
    struct acme_manager *m = acme_manager_new(base, store, dir, &err);
    CHECK(m != NULL);

    struct tcfg t;
    tcfg_init(&t, dir, 7 * 86400);
    tcfg_site(&t, CFG_TLS_LOCAL, "a.test", "*.a.test");
    tcfg_site(&t, CFG_TLS_LOCAL, "b.test", NULL);
    time_t now = dm_time_now();
    CHECK_EQ_INT(acme_manager_apply(m, &t.cfg, &err), 0);
    CHECK_EQ_INT(acme_store_count(store), 3);
    struct acme_cert *a = get(store, "a.test");
    struct acme_cert *wa = get(store, "x.a.test");
    struct acme_cert *b = get(store, "b.test");
    struct acme_cert *d = acme_store_get_default(store);
    CHECK(a != NULL && a == wa && a == d);
    CHECK(b != NULL && b != a);
    CHECK(acme_cert_covers(a, "a.test") && acme_cert_covers(a, "*.a.test"));
    CHECK(acme_cert_covers(b, "b.test") && !acme_cert_covers(b, "a.test"));
    CHECK(path_exists(dir, "certificates/local/a.test/cert.pem"));
    CHECK(path_exists(dir, "certificates/local/a.test/key.pem"));
    CHECK(path_exists(dir, "certificates/local/a.test/meta.json"));
    CHECK(path_exists(dir, "certificates/local/b.test/cert.pem"));
    CHECK(path_exists(dir, "pki/local/root.pem"));
    CHECK(acme_manager_local_ca(m, NULL) != NULL);

    /* Renewal with a third of the lifetime left, minus up to 1% jitter. */
    time_t due = acme_manager_next_renewal(m, "*.a.test");
    time_t ideal = now + 7 * 86400 * 2 / 3;
    CHECK(due <= ideal + 2 && due >= ideal - 7 * 86400 / 100 - 2);
    CHECK_EQ_INT(acme_manager_next_renewal(m, "nope.test"), 0);

    /* Reload with the same config: nothing is reissued. */
    CHECK_EQ_INT(acme_manager_apply(m, &t.cfg, &err), 0);
    struct acme_cert *a2 = get(store, "a.test");
    CHECK(a2 == a);
    acme_cert_unref(a2);

    /* Restart (new manager and store, same data_dir): the stored leaf is served. */
    struct acme_store *store2 = acme_store_new();
    struct acme_manager *m2 = acme_manager_new(base, store2, dir, &err);
    CHECK_EQ_INT(acme_manager_apply(m2, &t.cfg, &err), 0);
    struct acme_cert *ra = get(store2, "a.test");
    struct acme_cert *rb = get(store2, "b.test");
    CHECK(same_leaf(ra, a));
    CHECK(same_leaf(rb, b));
    CHECK_EQ_INT(acme_manager_next_renewal(m2, "a.test"), due); /* from meta.json */
    acme_cert_unref(ra);
    acme_cert_unref(rb);
    acme_manager_free(m2);
    acme_store_free(store2);

    /* Reload without site b: its name disappears, a keeps its cert. */
    struct tcfg t2;
    tcfg_init(&t2, dir, 7 * 86400);
    tcfg_site(&t2, CFG_TLS_LOCAL, "a.test", "*.a.test");
    CHECK_EQ_INT(acme_manager_apply(m, &t2.cfg, &err), 0);
    CHECK_EQ_INT(acme_store_count(store), 2);
    struct acme_cert *gone = get(store, "b.test");
    CHECK(gone == NULL);
    a2 = get(store, "a.test");
    CHECK(a2 == a);
    acme_cert_unref(a2);
    CHECK(acme_cert_not_after(b) > 0); /* our reference outlives the removal */

    /* Site a changes its names: reissued for the new set; b comes back first
     * and becomes the default. */
    struct tcfg t3;
    tcfg_init(&t3, dir, 7 * 86400);
    tcfg_site(&t3, CFG_TLS_LOCAL, "b.test", NULL);
    tcfg_site(&t3, CFG_TLS_LOCAL, "a.test", "c.test");
    CHECK_EQ_INT(acme_manager_apply(m, &t3.cfg, &err), 0);
    CHECK_EQ_INT(acme_store_count(store), 3);
    struct acme_cert *a3 = get(store, "a.test");
    struct acme_cert *b3 = get(store, "b.test");
    struct acme_cert *d3 = acme_store_get_default(store);
    CHECK(a3 != NULL && !same_leaf(a3, a) && acme_cert_covers(a3, "c.test"));
    CHECK(get(store, "x.a.test") == NULL);
    CHECK(same_leaf(b3, b)); /* reloaded from storage */
    CHECK(d3 == b3);
    acme_cert_unref(a3);
    acme_cert_unref(b3);
    acme_cert_unref(d3);

    /* Empty config: everything goes. */
    struct tcfg t4;
    tcfg_init(&t4, dir, 7 * 86400);
    CHECK_EQ_INT(acme_manager_apply(m, &t4.cfg, &err), 0);
    CHECK_EQ_INT(acme_store_count(store), 0);
    CHECK(acme_store_get_default(store) == NULL);

    acme_cert_unref(a);
    acme_cert_unref(wa);
    acme_cert_unref(b);
    acme_cert_unref(d);
    acme_manager_free(m);
    acme_store_free(store);
    event_base_free(base);
    fx_rmtree(dir);
}

/* write_pair issues a leaf for names from a separate local CA and writes it
 * as <dir>/<stem>.crt and .key. */
static void write_pair(const char *dir, const char *ca_dir, const char *stem, const char *name)
{
    struct acme_local_ca *ca = acme_local_ca_open(ca_dir, NULL);
    const char *names[] = {name};
    char *chain = NULL, *key = NULL, path[512];
    struct acme_cert *c = acme_local_ca_issue(ca, names, 1, 86400, &chain, &key, NULL);
    snprintf(path, sizeof(path), "%s/%s.crt", dir, stem);
    fx_write(path, chain);
    snprintf(path, sizeof(path), "%s/%s.key", dir, stem);
    fx_write(path, key);
    free(chain);
    free(key);
    acme_cert_unref(c);
    acme_local_ca_free(ca);
}

TEST(test_files_source_and_failure)
{
    char dir[256], files[256], ca_dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    CHECK(fx_tmpdir(files, sizeof(files)) != NULL);
    CHECK(fx_tmpdir(ca_dir, sizeof(ca_dir)) != NULL);
    write_pair(files, ca_dir, "f", "files.test");
    write_pair(files, ca_dir, "g", "other.test");
    char crt[512], key[512], gkey[512], missing[512];
    snprintf(crt, sizeof(crt), "%s/f.crt", files);
    snprintf(key, sizeof(key), "%s/f.key", files);
    snprintf(gkey, sizeof(gkey), "%s/g.key", files);
    snprintf(missing, sizeof(missing), "%s/missing.key", files);

    struct dm_err err = {0};
    struct acme_store *store = acme_store_new();
    struct acme_manager *m = acme_manager_new(NULL, store, dir, &err); /* no loop: no renewal */
    struct tcfg t;
    tcfg_init(&t, dir, 86400);
    struct cfg_site *s = tcfg_site(&t, CFG_TLS_FILES, "files.test", "uncovered.test");
    s->cert_file = crt;
    s->key_file = key;
    CHECK_EQ_INT(acme_manager_apply(m, &t.cfg, &err), 0); /* uncovered: warning only */
    struct acme_cert *f = get(store, "files.test");
    struct acme_cert *u = get(store, "uncovered.test");
    CHECK(f != NULL && f == u && acme_cert_covers(f, "files.test"));
    CHECK_EQ_INT(acme_manager_next_renewal(m, "files.test"), 0); /* not ours to renew */
    CHECK(!path_exists(dir, "pki")); /* no local site: no local CA created */

    /* A key that does not match: the whole apply fails, the store is as it was. */
    struct tcfg t2;
    tcfg_init(&t2, dir, 86400);
    tcfg_site(&t2, CFG_TLS_LOCAL, "new.test", NULL);
    struct cfg_site *s2 = tcfg_site(&t2, CFG_TLS_FILES, "files.test", NULL);
    s2->cert_file = crt;
    s2->key_file = gkey;
    CHECK_EQ_INT(acme_manager_apply(m, &t2.cfg, &err), -1);
    CHECK(strstr(err.msg, "sites[1]") != NULL);
    CHECK(strstr(err.msg, "key does not match the certificate") != NULL);
    CHECK_EQ_INT(acme_store_count(store), 2);
    CHECK(get(store, "new.test") == NULL);
    struct acme_cert *f2 = get(store, "uncovered.test");
    CHECK(f2 == f);
    acme_cert_unref(f2);

    s2->key_file = missing;
    CHECK_EQ_INT(acme_manager_apply(m, &t2.cfg, &err), -1);
    CHECK(strstr(err.msg, "missing.key") != NULL);
    s2->key_file = NULL;
    CHECK_EQ_INT(acme_manager_apply(m, &t2.cfg, &err), -1);
    CHECK_EQ_INT(acme_store_count(store), 2);

    /* Fixed: applies; files are re-read on every apply. */
    s2->key_file = key;
    CHECK_EQ_INT(acme_manager_apply(m, &t2.cfg, &err), 0);
    CHECK_EQ_INT(acme_store_count(store), 2);
    struct acme_cert *n = get(store, "new.test");
    struct acme_cert *f3 = get(store, "files.test");
    CHECK(n != NULL);
    CHECK(f3 != NULL && f3 != f && same_leaf(f3, f));
    CHECK(get(store, "uncovered.test") == NULL);
    struct acme_cert *def = acme_store_get_default(store);
    CHECK(def == n);
    acme_cert_unref(def);
    acme_cert_unref(n);
    acme_cert_unref(f3);

    acme_cert_unref(f);
    acme_cert_unref(u);
    acme_manager_free(m);
    acme_store_free(store);
    fx_rmtree(dir);
    fx_rmtree(files);
    fx_rmtree(ca_dir);
}

struct watch {
    struct acme_store *store;
    struct event_base *base;
    time_t first_not_after;
    time_t seen_not_after;
};

/* watch_on_tick stops the loop once the store serves a different certificate. */
static void watch_on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct watch *w = arg;
    struct acme_cert *c = acme_store_get(w->store, "r.test", 6);
    if (c != NULL && acme_cert_not_after(c) != w->first_not_after) {
        w->seen_not_after = acme_cert_not_after(c);
        event_base_loopbreak(w->base);
    }
    acme_cert_unref(c);
}

TEST(test_renewal_timer)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct dm_err err = {0};
    struct event_base *base = event_base_new();
    struct acme_store *store = acme_store_new();
    struct acme_manager *m = acme_manager_new(base, store, dir, &err);
    struct tcfg t;
    tcfg_init(&t, dir, 3); /* below the config minimum on purpose */
    tcfg_site(&t, CFG_TLS_LOCAL, "r.test", "*.r.test");
    CHECK_EQ_INT(acme_manager_apply(m, &t.cfg, &err), 0);
    struct acme_cert *old = get(store, "r.test");
    CHECK(old != NULL);
    if (old == NULL) {
        return;
    }
    time_t due = acme_manager_next_renewal(m, "r.test");
    CHECK(due - dm_time_now() <= 2);

    struct watch w = {.store = store, .base = base, .first_not_after = acme_cert_not_after(old)};
    struct event *tick = event_new(base, -1, EV_PERSIST, watch_on_tick, &w);
    struct timeval every = {0, 100000}, deadline = {6, 0};
    event_add(tick, &every);
    event_base_loopexit(base, &deadline);
    uint64_t t0 = dm_time_mono_us();
    event_base_dispatch(base);
    uint64_t took_ms = (dm_time_mono_us() - t0) / 1000;
    fprintf(stderr, "  renewed after %llu ms\n", (unsigned long long)took_ms);
    CHECK(w.seen_not_after > w.first_not_after);
    CHECK(took_ms < 5000);

    struct acme_cert *now_c = get(store, "x.r.test");
    struct acme_cert *def = acme_store_get_default(store);
    CHECK(now_c != NULL && now_c != old && acme_cert_covers(now_c, "*.r.test"));
    CHECK(def == now_c);
    CHECK(acme_cert_not_after(old) == w.first_not_after); /* old ref still valid */
    CHECK(acme_manager_next_renewal(m, "r.test") > due);
    CHECK_EQ_INT(acme_manager_renewal_failures(m, "r.test"), 0);

    /* The renewed leaf was stored. */
    struct acme_storage *st = acme_storage_fs_new(dir, NULL);
    char *cp = NULL, *kp = NULL;
    struct acme_storage_meta meta = {0};
    CHECK_EQ_INT(acme_storage_get(st, "local", "r.test", &cp, &kp, &meta, NULL), 0);
    CHECK(meta.not_after >= w.seen_not_after);
    acme_storage_meta_cleanup(&meta);
    free(cp);
    acme_pem_free_secret(kp);
    acme_storage_free(st);

    event_free(tick);
    acme_cert_unref(def);
    acme_cert_unref(now_c);
    acme_cert_unref(old);
    acme_manager_free(m);
    acme_store_free(store);
    event_base_free(base);
    fx_rmtree(dir);
}

TEST(test_renewal_backoff)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct dm_err err = {0};
    struct event_base *base = event_base_new();
    struct acme_store *store = acme_store_new();
    struct acme_manager *m = acme_manager_new(base, store, dir, &err);
    struct tcfg t;
    tcfg_init(&t, dir, 3600);
    tcfg_site(&t, CFG_TLS_LOCAL, "k.test", NULL);
    CHECK_EQ_INT(acme_manager_apply(m, &t.cfg, &err), 0);
    struct acme_cert *first = get(store, "k.test");

    time_t now = 1900000000;
    dm_time_mock(now);
    acme_manager_fail_issues(m, 100);
    long want[] = {60, 120, 240, 480, 960, 1920, 3600, 3600};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        CHECK_EQ_INT(acme_manager_renew_now(m, "k.test"), 0);
        CHECK_EQ_INT(acme_manager_renewal_failures(m, "k.test"), (int)i + 1);
        CHECK_EQ_INT(acme_manager_next_renewal(m, "k.test"), now + want[i]);
    }
    struct acme_cert *still = get(store, "k.test");
    CHECK(still == first); /* the old one keeps being served */
    acme_cert_unref(still);

    /* A reload keeps the failure count and schedule of an unchanged site. */
    CHECK_EQ_INT(acme_manager_apply(m, &t.cfg, &err), 0);
    CHECK_EQ_INT(acme_manager_renewal_failures(m, "k.test"), 8);
    CHECK_EQ_INT(acme_manager_next_renewal(m, "k.test"), now + 3600);

    acme_manager_fail_issues(m, 0);
    CHECK_EQ_INT(acme_manager_renew_now(m, "k.test"), 0);
    CHECK_EQ_INT(acme_manager_renewal_failures(m, "k.test"), 0);
    struct acme_cert *next = get(store, "k.test");
    CHECK(next != NULL && next != first);
    time_t due = acme_manager_next_renewal(m, "k.test");
    CHECK(due <= now + 2400 && due >= now + 2400 - 36);
    CHECK_EQ_INT(acme_manager_renew_now(m, "none.test"), -1);
    dm_time_mock(0);

    acme_cert_unref(next);
    acme_cert_unref(first);
    acme_manager_free(m);
    acme_store_free(store);
    event_base_free(base);
    fx_rmtree(dir);
}

TEST(test_restart_reissues_when_stale)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct dm_err err = {0};
    struct tcfg t;
    tcfg_init(&t, dir, 60);
    tcfg_site(&t, CFG_TLS_LOCAL, "s.test", NULL);
    time_t now = time(NULL);
    dm_time_mock(now);

    struct acme_store *s1 = acme_store_new();
    struct acme_manager *m1 = acme_manager_new(NULL, s1, dir, &err);
    CHECK_EQ_INT(acme_manager_apply(m1, &t.cfg, &err), 0);
    struct acme_cert *c1 = get(s1, "s.test");
    acme_manager_free(m1);
    acme_store_free(s1);

    /* Restart before the renewal time: reused. */
    dm_time_mock(now + 20);
    struct acme_store *s2 = acme_store_new();
    struct acme_manager *m2 = acme_manager_new(NULL, s2, dir, &err);
    CHECK_EQ_INT(acme_manager_apply(m2, &t.cfg, &err), 0);
    struct acme_cert *c2 = get(s2, "s.test");
    CHECK(same_leaf(c1, c2));
    acme_cert_unref(c2);
    acme_manager_free(m2);
    acme_store_free(s2);

    /* Restart after it: reissued. */
    dm_time_mock(now + 45);
    s2 = acme_store_new();
    m2 = acme_manager_new(NULL, s2, dir, &err);
    CHECK_EQ_INT(acme_manager_apply(m2, &t.cfg, &err), 0);
    c2 = get(s2, "s.test");
    CHECK(c2 != NULL && !same_leaf(c1, c2));
    acme_manager_free(m2);
    acme_store_free(s2);

    /* Root recreated (old one deleted): stored leaves are reissued. */
    char path[512];
    snprintf(path, sizeof(path), "%s/pki/local/root.pem", dir);
    unlink(path);
    s2 = acme_store_new();
    m2 = acme_manager_new(NULL, s2, dir, &err);
    CHECK_EQ_INT(acme_manager_apply(m2, &t.cfg, &err), 0);
    struct acme_cert *c3 = get(s2, "s.test");
    CHECK(c3 != NULL && !same_leaf(c3, c2));
    acme_cert_unref(c3);
    acme_manager_free(m2);
    acme_store_free(s2);

    /* A corrupt stored entry is reissued too. */
    snprintf(path, sizeof(path), "%s/certificates/local/s.test/key.pem", dir);
    fx_write(path, "garbage");
    s2 = acme_store_new();
    m2 = acme_manager_new(NULL, s2, dir, &err);
    CHECK_EQ_INT(acme_manager_apply(m2, &t.cfg, &err), 0);
    CHECK_EQ_INT(acme_store_count(s2), 1);
    acme_manager_free(m2);
    acme_store_free(s2);

    /* The CA cannot be created: apply fails with the reason. */
    snprintf(path, sizeof(path), "%s/pki", dir);
    fx_rmtree(path);
    fx_write(path, "a file where a directory should be");
    s2 = acme_store_new();
    m2 = acme_manager_new(NULL, s2, dir, &err);
    struct tcfg t5;
    tcfg_init(&t5, dir, 60);
    tcfg_site(&t5, CFG_TLS_LOCAL, "fresh.test", NULL);
    CHECK_EQ_INT(acme_manager_apply(m2, &t5.cfg, &err), -1);
    CHECK(strstr(err.msg, "sites[0]") != NULL);
    CHECK_EQ_INT(acme_store_count(s2), 0);
    acme_manager_free(m2);
    acme_store_free(s2);

    dm_time_mock(0);
    acme_cert_unref(c1);
    acme_cert_unref(c2);
    fx_rmtree(dir);
}

HARNESS_MAIN(T(test_apply_local_reload_restart), T(test_files_source_and_failure),
             T(test_renewal_timer), T(test_renewal_backoff), T(test_restart_reissues_when_stale))
