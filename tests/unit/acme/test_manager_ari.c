/* Tests of ARI-driven renewal (RFC 9773) in acme/manager_acme.c: the
 * manager orders from the fake CA over http://, fetches renewalInfo for the
 * issued certificate, and then follows the suggested window (a future window
 * moves the renewal into it; a window open now renews at once with
 * "replaces"; a window already over renews at once without it; a certificate
 * just issued waits an hour whatever the CA says), or keeps the one-third
 * lifetime rule when the CA has no renewalInfo or the fetch fails. Also the
 * move to a fallback issuer after two failed orders. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <jansson.h>
#include <openssl/pool.h>

#include "acme/acme.h"
#include "acme/ari.h"
#include "acme/manager_acme.h"
#include "acme/storage.h"
#include "config/config_types.h"
#include "fake_ca.h"
#include "fixtures.h"
#include "harness.h"
#include "proxy/core/err.h"

#define HOST "ari.example.test"
#define DAY  86400

struct env {
    struct event_base *base;
    struct fake_ca *ca;
    struct acme_store *store;
    struct acme_manager *m;
    char dir[256];
    struct cfg cfg;
    struct cfg_site site;
    struct cfg_acme acme;
    char *hosts[1];
};

static void env_init(struct env *e, bool has_ari)
{
    memset(e, 0, sizeof(*e));
    e->base = event_base_new();
    e->ca = fake_ca_new(e->base);
    fake_ca_knobs(e->ca)->has_ari = has_ari;
    e->store = acme_store_new();
    fx_tmpdir(e->dir, sizeof(e->dir));
    struct dm_err err = {0};
    e->m = acme_manager_new(e->base, e->store, e->dir, &err);
    CHECK(e->m != NULL);
    /* Built by hand (validation bypassed); the test holds one reference so
     * the manager's cfg_unref never frees this stack object. */
    atomic_init(&e->cfg.refs, 1);
    e->cfg.data_dir = e->dir;
    e->cfg.sites = &e->site;
    e->cfg.num_sites = 1;
    e->hosts[0] = HOST;
    e->site.hosts = e->hosts;
    e->site.num_hosts = 1;
    e->site.tls = CFG_TLS_ACME;
    e->site.acme = &e->acme;
    e->acme.directory = (char *)fake_ca_dir_url(e->ca);
    e->acme.agree_tos = true;
    e->acme.challenges[0] = CFG_CHALLENGE_HTTP01;
    e->acme.num_challenges = 1;
    e->acme.order_timeout_ms = 30000;
    e->acme.orders_per_hour = 100;
    e->acme.retry_first_ms = 1000;
}

static void env_cleanup(struct env *e)
{
    acme_manager_free(e->m);
    acme_store_free(e->store);
    fake_ca_free(e->ca);
    event_base_free(e->base);
    fx_rmtree(e->dir);
}

/* script_window makes the CA's next renewalInfo answer the window
 * [start, end) with Retry-After: 3600. */
static void script_window(struct env *e, time_t start, time_t end)
{
    char s[32], t[32], body[256];
    struct tm tm;
    strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&start, &tm));
    strftime(t, sizeof(t), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&end, &tm));
    snprintf(body, sizeof(body), "{\"suggestedWindow\": {\"start\": \"%s\", \"end\": \"%s\"}}", s,
             t);
    fake_ca_script(e->ca, "/renewal-info", 1, 200, "application/json", "Retry-After: 3600\r\n",
                   body);
}

/* Waiting: a 10 ms poll of a predicate inside the loop, with a deadline. */
struct waiter {
    struct env *e;
    bool (*pred)(struct env *e);
    bool is_done;
};

static void waiter_on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct waiter *w = arg;
    if (w->pred(w->e)) {
        w->is_done = true;
    }
}

static bool wait_for(struct env *e, bool (*pred)(struct env *e), int timeout_ms)
{
    struct waiter w = {.e = e, .pred = pred};
    struct event *tick = event_new(e->base, -1, EV_PERSIST, waiter_on_tick, &w);
    struct timeval tv = {0, 10000};
    evtimer_add(tick, &tv);
    bool ok = fake_run(e->base, &w.is_done, timeout_ms);
    event_free(tick);
    return ok;
}

static bool has_cert(struct env *e)
{
    struct acme_cert *c = acme_store_get(e->store, HOST, strlen(HOST));
    acme_cert_unref(c);
    return c != NULL;
}

static bool ari_answered(struct env *e)
{
    return has_cert(e) && fake_ca_count(e->ca, "renewal-info") >= 1 &&
           acme_manager_next_renewal(e->m, HOST) != 0;
}

static bool issued(struct env *e)
{
    return has_cert(e) && acme_manager_next_renewal(e->m, HOST) != 0;
}

static bool renewed_and_asked(struct env *e)
{
    return fake_ca_count(e->ca, "cert") >= 2 && fake_ca_count(e->ca, "renewal-info") >= 2;
}

/* leaf_ari_id writes the ARI identifier of the certificate served for HOST. */
static void leaf_ari_id(struct env *e, char *out, size_t cap)
{
    out[0] = '\0';
    struct acme_cert *c = acme_store_get(e->store, HOST, strlen(HOST));
    if (c == NULL) {
        return;
    }
    size_t n = 0;
    CRYPTO_BUFFER *const *chain = acme_cert_chain(c, &n);
    CHECK_EQ_INT(
        acme_ari_cert_id(CRYPTO_BUFFER_data(chain[0]), CRYPTO_BUFFER_len(chain[0]), out, cap, NULL),
        0);
    acme_cert_unref(c);
}

/* last_replaces returns the "replaces" of the last newOrder (new string), or
 * NULL when it had none. */
static char *last_replaces(struct env *e)
{
    const char *p = fake_ca_last_payload(e->ca, "new-order");
    json_t *j = p != NULL ? json_loads(p, 0, NULL) : NULL;
    const char *r = json_string_value(json_object_get(j, "replaces"));
    char *out = r != NULL ? strdup(r) : NULL;
    json_decref(j);
    return out;
}

/* lifetime_rule_ok tells whether at is the one-third rule's time for the
 * served certificate (a third of the lifetime left, minus up to 1% jitter). */
static bool lifetime_rule_ok(struct env *e, time_t at)
{
    struct acme_cert *c = acme_store_get(e->store, HOST, strlen(HOST));
    if (c == NULL) {
        return false;
    }
    time_t nb = acme_cert_not_before(c), life = acme_cert_not_after(c) - nb;
    acme_cert_unref(c);
    time_t rule = nb + life - life / 3;
    return at <= rule && at >= rule - life / 100 - 1;
}

static time_t window_start, window_end; /* of test_window_in_future_moves_renewal */

static bool renewal_in_window(struct env *e)
{
    time_t at = acme_manager_next_renewal(e->m, HOST);
    return ari_answered(e) && at >= window_start && at < window_end;
}

/* stored_meta reads the meta.json stored for HOST (cleaned up by the caller);
 * 0 if there is one. */
static int stored_meta(struct env *e, struct acme_storage_meta *out)
{
    char issuer[96];
    acme_issuer_storage_id(issuer, sizeof(issuer), fake_ca_dir_url(e->ca));
    struct acme_storage *st = acme_storage_fs_new(e->dir, NULL);
    char *chain = NULL, *key = NULL;
    int rc = st != NULL ? acme_storage_get(st, issuer, HOST, &chain, &key, out, NULL) : -1;
    free(chain);
    free(key);
    acme_storage_free(st);
    return rc;
}

static bool ari_asked_again(struct env *e)
{
    return fake_ca_count(e->ca, "renewal-info") >= 2;
}

static bool window_stored(struct env *e)
{
    struct acme_storage_meta m = {0};
    bool ok = stored_meta(e, &m) == 0 && m.ari_window_start == window_start &&
              m.ari_window_end == window_end;
    acme_storage_meta_cleanup(&m);
    return ok;
}

TEST(test_window_in_future_moves_renewal)
{
    struct env e;
    env_init(&e, true);
    time_t now = time(NULL);
    time_t start = now + 10 * DAY, end = now + 11 * DAY;
    script_window(&e, start, end);
    window_start = start;
    window_end = end;
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_manager_apply(e.m, &e.cfg, &err), 0);
    CHECK(wait_for(&e, renewal_in_window, 20000));
    time_t at = acme_manager_next_renewal(e.m, HOST);
    CHECK(at >= start && at < end);
    /* No reorder: the window is ten days away. */
    bool never = false;
    fake_run(e.base, &never, 300);
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-order"), 1);
    CHECK_EQ_INT(fake_ca_count(e.ca, "renewal-info"), 1);
    CHECK(acme_manager_next_renewal(e.m, HOST) == at);
    /* The window and the time drawn in it are stored beside the certificate
     * (asynchronously), so a restart serves the same plan without drawing
     * again, even before the CA is asked. */
    CHECK(wait_for(&e, window_stored, 5000));
    struct acme_storage_meta m = {0};
    CHECK_EQ_INT(stored_meta(&e, &m), 0);
    CHECK(m.renew_after == at);
    acme_storage_meta_cleanup(&m);
    acme_manager_free(e.m);
    e.m = acme_manager_new(e.base, e.store, e.dir, &err);
    CHECK(e.m != NULL);
    script_window(&e, start, end); /* the CA still suggests the same window */
    CHECK_EQ_INT(acme_manager_apply(e.m, &e.cfg, &err), 0);
    CHECK(acme_manager_next_renewal(e.m, HOST) == at);
    CHECK(wait_for(&e, ari_asked_again, 20000));
    CHECK(acme_manager_next_renewal(e.m, HOST) == at);
    env_cleanup(&e);
}

/* issue_then_restart gets a certificate from the CA while it has no ARI,
 * then makes a new manager (a restart) that will load it from storage when
 * applied, with ARI now on; out_id gets the certificate's ARI identifier. */
static void issue_then_restart(struct env *e, char *out_id, size_t cap)
{
    env_init(e, false);
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_manager_apply(e->m, &e->cfg, &err), 0);
    CHECK(wait_for(e, issued, 20000));
    leaf_ari_id(e, out_id, cap);
    CHECK(out_id[0] != '\0');
    char *r = last_replaces(e);
    CHECK(r == NULL); /* the first order replaces nothing */
    free(r);
    acme_manager_free(e->m);
    e->m = acme_manager_new(e->base, e->store, e->dir, &err);
    CHECK(e->m != NULL);
    fake_ca_knobs(e->ca)->has_ari = true;
}

static bool renewal_failed(struct env *e)
{
    struct acme_storage_meta m = {0};
    bool is_stored = stored_meta(e, &m) == 0 && m.last_error != NULL;
    acme_storage_meta_cleanup(&m);
    return acme_manager_next_renewal(e->m, HOST) > time(NULL) + 1 &&
           fake_ca_count(e->ca, "new-order") >= 2 && is_stored;
}

TEST(test_failed_renewal_keeps_serving_and_records_error)
{
    struct env e;
    char first_id[ACME_ARI_CERT_ID_MAX];
    issue_then_restart(&e, first_id, sizeof(first_id));
    struct dm_err err = {0};
    time_t now = time(NULL);
    script_window(&e, now - 30 * DAY, now + 60); /* renew now */
    fake_ca_knobs(e.ca)->is_validation_failing = true;
    CHECK_EQ_INT(acme_manager_apply(e.m, &e.cfg, &err), 0);
    CHECK(wait_for(&e, renewal_failed, 30000));
    /* The old certificate still serves, and the failure is stored beside it. */
    struct acme_cert *c = acme_store_get(e.store, HOST, strlen(HOST));
    CHECK(c != NULL);
    acme_cert_unref(c);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    CHECK_EQ_INT(acme_certificates_report(e.dir, f, &err), 0);
    fclose(f);
    CHECK(out != NULL && strstr(out, HOST) != NULL && strstr(out, "incorrectResponse") != NULL);
    if (out == NULL || strstr(out, "incorrectResponse") == NULL) {
        fprintf(stderr, "report:\n%s\n", out ? out : "(null)");
    }
    free(out);
    env_cleanup(&e);
}

TEST(test_window_open_renews_with_replaces)
{
    struct env e;
    char first_id[ACME_ARI_CERT_ID_MAX];
    issue_then_restart(&e, first_id, sizeof(first_id));
    struct dm_err err = {0};
    char *r = NULL;
    /* Open for 30 days already and 60 s more: the pick is (almost surely)
     * in the past, i.e. now, while the window is still valid. */
    time_t now = time(NULL);
    script_window(&e, now - 30 * DAY, now + 60);
    CHECK_EQ_INT(acme_manager_apply(e.m, &e.cfg, &err), 0);
    /* The second renewalInfo answer is the fake CA's default, a window
     * starting after expiry: ignored, so there is no third order. */
    CHECK(wait_for(&e, renewed_and_asked, 60000));
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-order"), 2);
    r = last_replaces(&e);
    CHECK_STR(r, first_id);
    free(r);
    char second_id[ACME_ARI_CERT_ID_MAX];
    leaf_ari_id(&e, second_id, sizeof(second_id));
    CHECK(strcmp(first_id, second_id) != 0);
    CHECK(lifetime_rule_ok(&e, acme_manager_next_renewal(e.m, HOST)));
    env_cleanup(&e);
}

TEST(test_window_over_renews_without_replaces)
{
    struct env e;
    char first_id[ACME_ARI_CERT_ID_MAX];
    issue_then_restart(&e, first_id, sizeof(first_id));
    time_t now = time(NULL);
    script_window(&e, now - 3 * DAY, now - DAY);
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_manager_apply(e.m, &e.cfg, &err), 0);
    CHECK(wait_for(&e, renewed_and_asked, 60000));
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-order"), 2);
    char *r = last_replaces(&e);
    CHECK(r == NULL);
    free(r);
    env_cleanup(&e);
}

static bool renewal_within_hour(struct env *e)
{
    return ari_answered(e) && acme_manager_next_renewal(e->m, HOST) <= time(NULL) + 3600;
}

TEST(test_fresh_certificate_not_replaced_at_once)
{
    struct env e;
    env_init(&e, true);
    time_t now = time(NULL);
    script_window(&e, now - 3 * DAY, now - DAY);
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_manager_apply(e.m, &e.cfg, &err), 0);
    /* A CA saying "now" about the certificate it just issued gets no new
     * order before the certificate is an hour old. */
    CHECK(wait_for(&e, renewal_within_hour, 20000));
    time_t at = acme_manager_next_renewal(e.m, HOST);
    CHECK(at >= now + 3600 - 5 && at <= time(NULL) + 3600);
    bool never = false;
    fake_run(e.base, &never, 300);
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-order"), 1);
    env_cleanup(&e);
}

TEST(test_refused_replaces_still_renews)
{
    struct env e;
    char first_id[ACME_ARI_CERT_ID_MAX];
    issue_then_restart(&e, first_id, sizeof(first_id));
    fake_ca_knobs(e.ca)->is_replaces_refused = true;
    time_t now = time(NULL);
    script_window(&e, now - 30 * DAY, now + 60);
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_manager_apply(e.m, &e.cfg, &err), 0);
    CHECK(wait_for(&e, renewed_and_asked, 60000));
    /* order.c repeats the refused newOrder once without "replaces". */
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-order"), 3);
    char *r = last_replaces(&e);
    CHECK(r == NULL);
    free(r);
    env_cleanup(&e);
}

TEST(test_no_ari_keeps_lifetime_rule)
{
    struct env e;
    env_init(&e, false);
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_manager_apply(e.m, &e.cfg, &err), 0);
    CHECK(wait_for(&e, issued, 20000));
    bool never = false;
    fake_run(e.base, &never, 300);
    CHECK_EQ_INT(fake_ca_count(e.ca, "renewal-info"), 0);
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-order"), 1);
    CHECK(lifetime_rule_ok(&e, acme_manager_next_renewal(e.m, HOST)));
    env_cleanup(&e);
}

TEST(test_ari_failure_keeps_lifetime_rule)
{
    struct env e;
    env_init(&e, true);
    fake_ca_script(e.ca, "/renewal-info", 1, 404, "application/problem+json", NULL,
                   "{\"type\": \"urn:ietf:params:acme:error:malformed\", \"detail\": \"no\"}");
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_manager_apply(e.m, &e.cfg, &err), 0);
    CHECK(wait_for(&e, ari_answered, 20000));
    bool never = false;
    fake_run(e.base, &never, 300);
    CHECK_EQ_INT(fake_ca_count(e.ca, "renewal-info"), 1);
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-order"), 1);
    CHECK(lifetime_rule_ok(&e, acme_manager_next_renewal(e.m, HOST)));
    env_cleanup(&e);
}

/* Two issuers: the first refuses the name twice (rejectedIdentifier), the
 * next order goes to the fallback; a restart finds the certificate stored
 * under the fallback CA and orders nothing. */
static bool issued_once(struct env *e)
{
    return has_cert(e);
}

TEST(test_fallback_issuer_after_two_failures)
{
    struct env e;
    env_init(&e, false);
    struct fake_ca *second = fake_ca_new(e.base);
    struct cfg_acme fb = e.acme;
    fb.directory = (char *)fake_ca_dir_url(second);
    fb.retry_first_ms = 60000; /* the failing issuer's retry_first counts */
    e.acme.fallbacks = &fb;
    e.acme.num_fallbacks = 1;
    static const char rejected[] = "{\"type\": \"urn:ietf:params:acme:error:rejectedIdentifier\", "
                                   "\"detail\": \"no\"}";
    fake_ca_script(e.ca, "/new-order", 2, 400, "application/problem+json", NULL, rejected);
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_manager_apply(e.m, &e.cfg, &err), 0);
    CHECK(wait_for(&e, issued_once, 20000));
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-order"), 2);
    CHECK_EQ_INT(fake_ca_count(second, "new-order"), 1);
    CHECK_EQ_INT(fake_ca_count(second, "cert"), 1);
    CHECK(lifetime_rule_ok(&e, acme_manager_next_renewal(e.m, HOST)));
    /* Restart: the fallback's certificate is found in storage. */
    acme_manager_free(e.m);
    e.m = acme_manager_new(e.base, e.store, e.dir, &err);
    CHECK_EQ_INT(acme_manager_apply(e.m, &e.cfg, &err), 0);
    bool never = false;
    fake_run(e.base, &never, 300);
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-order"), 2);
    CHECK_EQ_INT(fake_ca_count(second, "new-order"), 1);
    CHECK(acme_manager_next_renewal(e.m, HOST) > time(NULL) + DAY);
    acme_manager_free(e.m);
    e.m = NULL;
    fake_ca_free(second);
    env_cleanup(&e);
}

HARNESS_MAIN(T(test_failed_renewal_keeps_serving_and_records_error),
             T(test_window_in_future_moves_renewal), T(test_window_open_renews_with_replaces),
             T(test_window_over_renews_without_replaces),
             T(test_fresh_certificate_not_replaced_at_once), T(test_refused_replaces_still_renews),
             T(test_no_ari_keeps_lifetime_rule), T(test_ari_failure_keeps_lifetime_rule),
             T(test_fallback_issuer_after_two_failures))
