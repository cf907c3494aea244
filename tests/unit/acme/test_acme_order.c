/* Tests of acme/order.c: the order machine against the fake CA (http-01 and
 * tls-alpn-01 through the solver registry, published before the challenge
 * POST and withdrawn after; authorization reuse; an invalid authorization
 * with the CA's detail; the fast poll schedule; processing -> valid;
 * badNonce; rateLimited with Retry-After; the order deadline; cancel; a
 * plugged-in asynchronous dns-01 solver for a wildcard; alternate chains;
 * an account the CA forgot; refused "replaces"; profiles and validity
 * dates), the CSR, and the resource parsers on RFC 8555 samples. */
#include "acme/order.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/bytestring.h>
#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "acme/account.h"
#include "acme/acme.h"
#include "acme/client.h"
#include "acme/solver.h"
#include "fake_ca.h"
#include "harness.h"
#include "proxy/core/err.h"
#include "proxy/core/time.h"

static char tmp_root[64];

struct env {
    struct event_base *base;
    struct fake_ca *ca;
    struct acme_client *c;
    struct acme_account *a;
    char data_dir[128];
};

struct result {
    bool is_done;
    int calls;
    bool is_ok;
    char *chain;
    char *key;
    time_t not_after;
    size_t num_reused;
    struct acme_problem prob;
    struct dm_err err;
    uint64_t at_us;
};

static void on_done(const struct acme_order_result *res, const struct acme_problem *prob,
                    const struct dm_err *err, void *arg)
{
    struct result *r = arg;
    r->calls++;
    r->is_done = true;
    r->at_us = dm_time_mono_us();
    r->is_ok = res != NULL;
    if (res != NULL) {
        r->chain = strdup(res->chain_pem);
        r->key = strdup(res->key_pem);
        r->not_after = res->not_after;
        r->num_reused = res->num_authz_reused;
    } else {
        r->prob = *prob;
        r->err = *err;
    }
}

static void result_cleanup(struct result *r)
{
    free(r->chain);
    if (r->key != NULL) {
        OPENSSL_cleanse(r->key, strlen(r->key));
    }
    free(r->key);
    memset(r, 0, sizeof(*r));
}

static int env_count;

static void env_init(struct env *e)
{
    e->base = event_base_new();
    e->ca = fake_ca_new(e->base);
    fake_ca_knobs(e->ca)->is_solver_checked = true;
    snprintf(e->data_dir, sizeof(e->data_dir), "%s/%d", tmp_root, env_count++);
    struct acme_client_opts o = {.directory_url = fake_ca_dir_url(e->ca), .retry_base_ms = 10};
    struct dm_err err = {0};
    e->c = acme_client_new(e->base, &o, &err);
    struct acme_account_opts ao = {.data_dir = e->data_dir, .is_tos_agreed = true};
    e->a = acme_account_open(e->c, &ao, &err);
    CHECK(e->c != NULL && e->a != NULL);
}

static void env_cleanup(struct env *e)
{
    acme_account_free(e->a);
    acme_client_free(e->c);
    fake_ca_free(e->ca);
    event_base_free(e->base);
}

static void run_order(struct env *e, const struct acme_order_opts *o, struct result *r)
{
    memset(r, 0, sizeof(*r));
    struct dm_err err = {0};
    struct acme_order *ord = acme_order_start(e->c, e->a, o, on_done, r, &err);
    CHECK(ord != NULL);
    if (ord == NULL) {
        fprintf(stderr, "start: %s\n", err.msg);
        return;
    }
    CHECK_EQ_INT(r->calls, 0); /* never from _start */
    CHECK(fake_run(e->base, &r->is_done, 10000));
    CHECK_EQ_INT(r->calls, 1);
}

/* leaf_issuer_cn reads the issuer CN of the last certificate of a chain. */
static void top_issuer_cn(const char *pem, char *out, size_t cap)
{
    BIO *b = BIO_new_mem_buf(pem, (int)strlen(pem));
    X509 *x, *last = NULL;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        X509_free(last);
        last = x;
    }
    out[0] = '\0';
    if (last != NULL) {
        X509_NAME_get_text_by_NID(X509_get_issuer_name(last), NID_commonName, out, (int)cap);
    }
    X509_free(last);
    BIO_free(b);
    ERR_clear_error();
}

static const char *const ONE[] = {"www.example.test"};

TEST(test_issue_http01)
{
    struct env e;
    env_init(&e);
    fake_ca_knobs(e.ca)->offer = "http-01";
    const char *names[] = {"www.example.test", "Example.TEST", "127.0.0.1", "www.example.test"};
    struct acme_order_opts o = {.names = names, .num_names = 4};
    struct result r;
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    if (r.is_ok) {
        struct dm_err err = {0};
        struct acme_cert *c =
            acme_cert_from_pem(r.chain, strlen(r.chain), r.key, strlen(r.key), NULL, &err);
        CHECK(c != NULL);
        CHECK(acme_cert_covers(c, "www.example.test"));
        CHECK(acme_cert_covers(c, "example.test"));
        CHECK(acme_cert_covers(c, "127.0.0.1"));
        acme_cert_unref(c);
        CHECK(r.not_after > dm_time_now());
        CHECK(strstr(r.key, "BEGIN PRIVATE KEY") != NULL);
    }
    /* Names deduplicated and lower-cased; the IP went out as an "ip" identifier. */
    const char *p = fake_ca_last_payload(e.ca, "new-order");
    CHECK(p != NULL && strstr(p, "{\"type\":\"ip\",\"value\":\"127.0.0.1\"}") != NULL);
    CHECK(p != NULL && strstr(p, "\"value\":\"example.test\"") != NULL);
    CHECK_EQ_INT(fake_ca_count(e.ca, "chall"), 3);
    CHECK_EQ_INT(fake_ca_challenge_posts_unpublished(e.ca), 0); /* published first */
    CHECK(!acme_http01_any());                                  /* withdrawn after */
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 1);           /* account step ran */
    result_cleanup(&r);
    env_cleanup(&e);
}

TEST(test_issue_tlsalpn01_default_preference)
{
    struct env e;
    env_init(&e);
    struct acme_order_opts o = {.names = ONE, .num_names = 1, .key_type = ACME_CERT_KEY_P384};
    struct result r;
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    CHECK_EQ_INT(fake_ca_challenge_posts_unpublished(e.ca), 0);
    struct acme_cert *left = acme_tlsalpn_cert_get("www.example.test", 16);
    CHECK(left == NULL);
    acme_cert_unref(left);
    CHECK(!acme_http01_any()); /* tls-alpn-01 came first: http-01 never published */
    result_cleanup(&r);

    /* Only tls-alpn-01 offered for an IP (RFC 8738): the validation
     * certificate is published under the reverse-DNS name the CA sends as
     * SNI, and withdrawn afterwards. */
    fake_ca_knobs(e.ca)->offer = "tls-alpn-01";
    fake_ca_knobs(e.ca)->is_solver_checked = true;
    const char *ip[] = {"::1"};
    o.names = ip;
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    char sni[80];
    CHECK_EQ_INT(acme_tlsalpn_sni_for("::1", sni, sizeof(sni)), 0);
    CHECK_STR(sni, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa");
    CHECK_EQ_INT(acme_tlsalpn_sni_for("127.0.0.1", sni, sizeof(sni)), 0);
    CHECK_STR(sni, "1.0.0.127.in-addr.arpa");
    CHECK_EQ_INT(acme_tlsalpn_sni_for("www.example.test", sni, sizeof(sni)), -1);
    CHECK_EQ_INT(acme_tlsalpn_sni_for("::1", sni, sizeof(sni)), 0);
    left = acme_tlsalpn_cert_get(sni, strlen(sni)); /* withdrawn after the order */
    CHECK(left == NULL);
    result_cleanup(&r);
    env_cleanup(&e);
}

TEST(test_authz_reuse)
{
    struct env e;
    env_init(&e);
    fake_ca_knobs(e.ca)->is_authz_valid = true;
    struct acme_order_opts o = {.names = ONE, .num_names = 1};
    struct result r;
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    CHECK_EQ_INT(fake_ca_count(e.ca, "chall"), 0);
    CHECK_EQ_INT(fake_ca_count(e.ca, "authz"), 0); /* order came back ready */
    CHECK_EQ_INT(r.num_reused, 1);
    result_cleanup(&r);
    env_cleanup(&e);
}

TEST(test_invalid_authorization)
{
    struct env e;
    env_init(&e);
    fake_ca_knobs(e.ca)->is_validation_failing = true;
    fake_ca_knobs(e.ca)->offer = "http-01";
    struct acme_order_opts o = {.names = ONE, .num_names = 1};
    struct result r;
    run_order(&e, &o, &r);
    CHECK(!r.is_ok);
    CHECK(acme_problem_is(&r.prob, "incorrectResponse"));
    CHECK(strstr(r.prob.detail, "did not match this challenge") != NULL);
    CHECK_EQ_INT(r.err.code, DM_E_ACME);
    CHECK(strstr(r.err.msg, "authorization for www.example.test is invalid") != NULL);
    CHECK(!r.prob.retryable);
    CHECK(!acme_http01_any());
    result_cleanup(&r);
    env_cleanup(&e);
}

TEST(test_poll_schedule_and_processing)
{
    struct env e;
    env_init(&e);
    fake_ca_knobs(e.ca)->validate_polls = 3;
    fake_ca_knobs(e.ca)->issue_polls = 2;
    struct acme_order_opts o = {.names = ONE, .num_names = 1, .poll_first_ms = 40};
    struct result r;
    uint64_t t0 = dm_time_mono_us();
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    size_t n = 0;
    const uint64_t *t = fake_ca_authz_poll_times(e.ca, &n);
    /* fetch, then polls after 40, 80, 160 ms (3 pending answers, then valid) */
    CHECK_EQ_INT(n, 5);
    if (n == 5) {
        /* t[0] fetch; t[1] 40 ms after the challenge POST; then doubling. */
        uint64_t expect[] = {40000, 80000, 160000, 320000};
        for (int i = 0; i < 4; i++) {
            uint64_t gap = t[i + 1] - t[i];
            /* Times are when the fake CA got each request: a loaded machine
             * can delay one receipt and shorten the next gap by as much, so
             * the lower bound keeps a margin that still proves the doubling. */
            CHECK(gap >= expect[i] * 3 / 4);
            CHECK(gap < expect[i] + 30000);
        }
    }
    /* finalize said processing: polled until valid (2 processing answers). */
    CHECK_EQ_INT(fake_ca_count(e.ca, "order"), 1 + 3);
    CHECK(r.at_us - t0 < 2000000);
    result_cleanup(&r);
    env_cleanup(&e);
}

TEST(test_bad_nonce_and_rate_limit)
{
    struct env e;
    env_init(&e);
    fake_ca_knobs(e.ca)->bad_nonce_next = 4;
    fake_ca_script(e.ca, "/new-order", 1, 429, "application/problem+json", "Retry-After: 1\r\n",
                   "{\"type\":\"urn:ietf:params:acme:error:rateLimited\",\"detail\":\"slow "
                   "down\"}");
    struct acme_order_opts o = {.names = ONE, .num_names = 1};
    struct result r;
    uint64_t t0 = dm_time_mono_us();
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    CHECK_EQ_INT(fake_ca_num_bad_nonce(e.ca), 4);
    CHECK(r.at_us - t0 >= 950000);
    result_cleanup(&r);

    /* A limit longer than the order: fails at once with the hint for the caller. */
    fake_ca_script(e.ca, "/new-order", 1, 429, "application/problem+json", "Retry-After: 7200\r\n",
                   "{\"type\":\"urn:ietf:params:acme:error:rateLimited\",\"detail\":\"later\"}");
    run_order(&e, &o, &r);
    CHECK(!r.is_ok);
    CHECK(acme_problem_is(&r.prob, "rateLimited"));
    CHECK_EQ_INT(r.prob.retry_after_s, 7200);
    result_cleanup(&r);
    env_cleanup(&e);
}

TEST(test_deadline_and_cancel)
{
    struct env e;
    env_init(&e);
    fake_ca_knobs(e.ca)->validate_polls = 100000;
    fake_ca_knobs(e.ca)->offer = "http-01";
    struct acme_order_opts o = {.names = ONE, .num_names = 1, .timeout_ms = 300};
    struct result r;
    run_order(&e, &o, &r);
    CHECK(!r.is_ok);
    CHECK_EQ_INT(r.err.code, DM_E_TIMEOUT);
    CHECK(strstr(r.err.msg, "authorize") != NULL);
    CHECK(r.prob.retryable);
    CHECK(!acme_http01_any());
    result_cleanup(&r);

    /* Canceled while polling: no callback, response withdrawn. */
    o.timeout_ms = 0;
    struct dm_err err = {0};
    struct acme_order *ord = acme_order_start(e.c, e.a, &o, on_done, &r, &err);
    bool never = false;
    for (int i = 0; i < 200 && !acme_http01_any(); i++) {
        fake_run(e.base, &never, 5);
    }
    CHECK(acme_http01_any());
    CHECK_EQ_INT(acme_order_state(ord), ACME_ORDER_AUTHORIZE);
    acme_order_cancel(ord);
    CHECK(!acme_http01_any());
    fake_run(e.base, &never, 100);
    CHECK_EQ_INT(r.calls, 0);

    /* Canceled before it ran at all. */
    ord = acme_order_start(e.c, e.a, &o, on_done, &r, &err);
    acme_order_cancel(ord);
    fake_run(e.base, &never, 20);
    CHECK_EQ_INT(r.calls, 0);
    env_cleanup(&e);
}

/* A dns-01 solver that "publishes" asynchronously, like a hook would. */
struct dns_solver {
    struct event_base *base;
    struct event *ev;
    acme_solver_ready_cb ready;
    void *ready_arg;
    int presents, cleanups;
    char last_id[256];
    char last_txt[ACME_DNS01_TXT_LEN + 1];
};

static void dns_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dns_solver *s = arg;
    s->ready(NULL, s->ready_arg);
}

static int dns_present(void *ctx, const struct acme_challenge_info *ch, acme_solver_ready_cb ready,
                       void *ready_arg, struct dm_err *err)
{
    (void)err;
    struct dns_solver *s = ctx;
    s->presents++;
    snprintf(s->last_id, sizeof(s->last_id), "%s%s", ch->is_wildcard ? "*." : "", ch->identifier);
    acme_key_authorization_dns01(ch->key_auth, s->last_txt);
    s->ready = ready;
    s->ready_arg = ready_arg;
    struct timeval tv = {0, 20000};
    evtimer_add(s->ev, &tv);
    return 1;
}

static void dns_cleanup(void *ctx, const struct acme_challenge_info *ch)
{
    (void)ch;
    struct dns_solver *s = ctx;
    s->cleanups++;
    evtimer_del(s->ev);
}

static const struct acme_solver_ops dns_ops = {
    .type = ACME_CHALLENGE_DNS01,
    .present = dns_present,
    .cleanup = dns_cleanup,
};

TEST(test_dns01_plugin_wildcard)
{
    struct env e;
    env_init(&e);
    struct dns_solver ds = {.base = e.base};
    ds.ev = evtimer_new(e.base, dns_on_timer, &ds);
    struct acme_solver solvers[] = {
        {acme_solver_builtin(ACME_CHALLENGE_TLSALPN01), NULL},
        {acme_solver_builtin(ACME_CHALLENGE_HTTP01), NULL},
        {&dns_ops, &ds},
    };
    const char *names[] = {"*.example.test"};
    struct acme_order_opts o = {
        .names = names, .num_names = 1, .solvers = solvers, .num_solvers = 3};
    struct result r;
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    CHECK_EQ_INT(ds.presents, 1);
    CHECK_EQ_INT(ds.cleanups, 1);
    CHECK_STR(ds.last_id, "*.example.test");
    CHECK_EQ_INT(strlen(ds.last_txt), ACME_DNS01_TXT_LEN);
    result_cleanup(&r);

    /* Without a dns-01 solver a wildcard cannot be ordered. */
    o.solvers = NULL;
    run_order(&e, &o, &r);
    CHECK(!r.is_ok);
    CHECK(strstr(r.err.msg, "no configured solver can answer *.example.test") != NULL);
    result_cleanup(&r);
    event_free(ds.ev);
    env_cleanup(&e);
}

TEST(test_alternate_chain)
{
    struct env e;
    env_init(&e);
    fake_ca_knobs(e.ca)->has_alt_chain = true;
    struct acme_order_opts o = {.names = ONE, .num_names = 1};
    struct result r;
    char cn[128];
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    if (r.is_ok) {
        top_issuer_cn(r.chain, cn, sizeof(cn));
        CHECK_STR(cn, "Fake Root X1");
    }
    result_cleanup(&r);
    o.preferred_chain = FAKE_CA_ALT_ROOT_CN;
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    if (r.is_ok) {
        top_issuer_cn(r.chain, cn, sizeof(cn));
        CHECK_STR(cn, FAKE_CA_ALT_ROOT_CN);
    }
    result_cleanup(&r);
    o.preferred_chain = "Nobody's Root";
    run_order(&e, &o, &r);
    CHECK(r.is_ok); /* no match: the default chain */
    result_cleanup(&r);
    env_cleanup(&e);
}

TEST(test_forgotten_account_and_replaces)
{
    struct env e;
    env_init(&e);
    fake_ca_knobs(e.ca)->profile = "shortlived"; /* before the directory is cached */
    struct acme_order_opts o = {.names = ONE, .num_names = 1};
    struct result r;
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    result_cleanup(&r);
    fake_ca_forget_accounts(e.ca);
    fake_ca_knobs(e.ca)->is_replaces_refused = true;
    o.replaces = "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE";
    o.profile = "shortlived";
    o.not_before = 1767225600; /* 2026-01-01 */
    o.not_after = 1767830400;
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    /* accountDoesNotExist on newOrder: registered again (the key is new to
     * this process, so no onlyReturnExisting lookup first). */
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 2);
    const char *p = fake_ca_last_payload(e.ca, "new-order");
    CHECK(p != NULL && strstr(p, "replaces") == NULL); /* dropped after the refusal */
    CHECK(p != NULL && strstr(p, "\"profile\":\"shortlived\"") != NULL);
    CHECK(p != NULL && strstr(p, "\"notBefore\":\"2026-01-01T00:00:00Z\"") != NULL);
    CHECK(p != NULL && strstr(p, "\"notAfter\":\"2026-01-08T00:00:00Z\"") != NULL);
    result_cleanup(&r);
    o.profile = "unlisted";
    o.replaces = NULL;
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    p = fake_ca_last_payload(e.ca, "new-order");
    CHECK(p != NULL && strstr(p, "profile") == NULL);
    result_cleanup(&r);
    env_cleanup(&e);
}

TEST(test_truncated_download_retried)
{
    struct env e;
    env_init(&e);
    static const char trunc[] = "HTTP/1.1 200 OK\r\nContent-Type: application/pem-certificate-chain"
                                "\r\nContent-Length: 500\r\n\r\n-----BEGIN CERT";
    fake_ca_script_raw(e.ca, "/cert/", 1, trunc, sizeof(trunc) - 1, true);
    struct acme_order_opts o = {.names = ONE, .num_names = 1};
    struct result r;
    run_order(&e, &o, &r);
    CHECK(r.is_ok);
    CHECK_EQ_INT(fake_ca_count(e.ca, "cert"), 2);
    result_cleanup(&r);
    /* A chain that does not parse is the CA's error: no retry, no success. */
    fake_ca_script(e.ca, "/cert/", 1, 200, "application/pem-certificate-chain", NULL,
                   "not a certificate");
    run_order(&e, &o, &r);
    CHECK(!r.is_ok);
    CHECK(strstr(r.err.msg, "download") != NULL);
    result_cleanup(&r);

    struct dm_err err = {0};
    const char *bad[] = {"exa mple.test"};
    struct acme_order_opts ob = {.names = bad, .num_names = 1};
    CHECK(acme_order_start(e.c, e.a, &ob, on_done, &r, &err) == NULL);
    CHECK_EQ_INT(err.code, DM_E_CONFIG);
    ob.num_names = 0;
    CHECK(acme_order_start(e.c, e.a, &ob, on_done, &r, &err) == NULL);
    env_cleanup(&e);
}

TEST(test_csr)
{
    const char *names[] = {"a.example.test", "*.example.test", "192.0.2.1", "2001:db8::1"};
    enum acme_cert_key_type kts[] = {ACME_CERT_KEY_P256, ACME_CERT_KEY_P384, ACME_CERT_KEY_RSA2048};
    for (size_t k = 0; k < 3; k++) {
        uint8_t *der = NULL;
        size_t len = 0;
        char *key = NULL;
        struct dm_err err = {0};
        CHECK_EQ_INT(acme_csr_new(kts[k], names, 4, &der, &len, &key, &err), 0);
        const uint8_t *p = der;
        X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)len);
        CHECK(req != NULL);
        EVP_PKEY *pub = X509_REQ_get_pubkey(req);
        CHECK(X509_REQ_verify(req, pub) == 1);
        char cn[80];
        X509_NAME_get_text_by_NID(X509_REQ_get_subject_name(req), NID_commonName, cn, sizeof(cn));
        CHECK_STR(cn, "a.example.test");
        STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
        CHECK_EQ_INT(sk_X509_EXTENSION_num(exts), 1);
        GENERAL_NAMES *gens = X509V3_EXT_d2i(sk_X509_EXTENSION_value(exts, 0));
        CHECK_EQ_INT(sk_GENERAL_NAME_num(gens), 4);
        CHECK_EQ_INT(sk_GENERAL_NAME_value(gens, 1)->type, GEN_DNS);
        CHECK_EQ_INT(sk_GENERAL_NAME_value(gens, 3)->type, GEN_IPADD);
        GENERAL_NAMES_free(gens);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
        EVP_PKEY_free(pub);
        X509_REQ_free(req);
        CHECK(strstr(key, "BEGIN PRIVATE KEY") != NULL);
        free(der);
        OPENSSL_cleanse(key, strlen(key));
        free(key);
    }
    /* A first name above 64 characters: no CN, SANs only. */
    char longname[80];
    memset(longname, 'a', 70);
    strcpy(longname + 70, ".test");
    const char *ln[] = {longname};
    uint8_t *der = NULL;
    size_t len = 0;
    char *key = NULL;
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_csr_new(ACME_CERT_KEY_P256, ln, 1, &der, &len, &key, &err), 0);
    const uint8_t *p = der;
    X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)len);
    CHECK_EQ_INT(X509_NAME_entry_count(X509_REQ_get_subject_name(req)), 0);
    X509_REQ_free(req);
    free(der);
    free(key);
}

TEST(test_resource_parsers)
{
    /* RFC 8555 §7.1.3 order example. */
    static const char order[] =
        "{\"status\":\"valid\",\"expires\":\"2016-01-20T14:09:07.99Z\","
        "\"identifiers\":[{\"type\":\"dns\",\"value\":\"www.example.org\"},"
        "{\"type\":\"dns\",\"value\":\"example.org\"}],"
        "\"notBefore\":\"2016-01-01T00:00:00Z\",\"notAfter\":\"2016-01-08T00:00:00Z\","
        "\"authorizations\":[\"https://example.com/acme/authz/PAniVnsZcis\","
        "\"https://example.com/acme/authz/r4HqLzrSrpI\"],"
        "\"finalize\":\"https://example.com/acme/order/TOlocE8rfgo/finalize\","
        "\"certificate\":\"https://example.com/acme/cert/mAt3xBGaobw\"}";
    struct acme_order_resource o;
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_order_resource_parse(&o, order, strlen(order), &err), 0);
    CHECK_EQ_INT(o.status, ACME_STATUS_VALID);
    CHECK_EQ_INT(o.num_authorizations, 2);
    CHECK_STR(o.certificate, "https://example.com/acme/cert/mAt3xBGaobw");
    CHECK_EQ_INT(o.expires, 1453298947);
    acme_order_resource_cleanup(&o);
    static const char invalid[] =
        "{\"status\":\"invalid\",\"authorizations\":[],\"finalize\":\"https://x/f\","
        "\"error\":{\"type\":\"urn:ietf:params:acme:error:caa\",\"detail\":\"CAA forbids\"}}";
    CHECK_EQ_INT(acme_order_resource_parse(&o, invalid, strlen(invalid), &err), 0);
    CHECK(o.has_error && acme_problem_is(&o.error, "caa"));
    acme_order_resource_cleanup(&o);
    CHECK_EQ_INT(acme_order_resource_parse(&o, "{\"status\":\"valid\"}", 18, &err), -1);
    CHECK_EQ_INT(acme_order_resource_parse(&o, order, 40, &err), -1);

    /* RFC 8555 §7.1.4 authorization example (+ a type we do not know). */
    static const char authz[] =
        "{\"status\":\"valid\",\"expires\":\"2015-03-01T14:09:07.99Z\","
        "\"identifier\":{\"type\":\"dns\",\"value\":\"www.example.org\"},"
        "\"challenges\":[{\"url\":\"https://example.com/acme/chall/prV_B7yEyA4\","
        "\"type\":\"http-01\",\"status\":\"valid\","
        "\"token\":\"DGyRejmCefe7v4NfDGDKfA\",\"validated\":\"2014-12-01T12:05:58.16Z\"},"
        "{\"url\":\"https://example.com/acme/chall/x\",\"type\":\"email-reply-00\","
        "\"status\":\"pending\"},{\"type\":\"dns-01\"}],\"wildcard\":false}";
    struct acme_authz_resource a;
    CHECK_EQ_INT(acme_authz_parse(&a, authz, strlen(authz), &err), 0);
    CHECK_EQ_INT(a.status, ACME_STATUS_VALID);
    CHECK_STR(a.identifier, "www.example.org");
    CHECK_EQ_INT(a.num_challenges, 2); /* the one without a URL is skipped */
    CHECK_EQ_INT(a.challenges[0].type, ACME_CHALLENGE_HTTP01);
    CHECK_STR(a.challenges[0].token, "DGyRejmCefe7v4NfDGDKfA");
    CHECK_EQ_INT(a.challenges[1].type, ACME_CHALLENGE_OTHER);
    CHECK_STR(a.challenges[1].type_name, "email-reply-00");
    acme_authz_cleanup(&a);
    CHECK_EQ_INT(acme_authz_parse(&a, "{\"status\":\"pending\"}", 20, &err), -1);
    CHECK_EQ_INT(acme_authz_parse(&a, "nope", 4, &err), -1);
    CHECK_STR(acme_order_state_name(ACME_ORDER_WAIT_ISSUED), "wait-issued");
    CHECK_STR(acme_status_name(ACME_STATUS_PROCESSING), "processing");
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    snprintf(tmp_root, sizeof(tmp_root), "/tmp/dm-order-XXXXXX");
    if (mkdtemp(tmp_root) == NULL) {
        return 1;
    }
    static const struct harness_test tests[] = {
        T(test_issue_http01),
        T(test_issue_tlsalpn01_default_preference),
        T(test_authz_reuse),
        T(test_invalid_authorization),
        T(test_poll_schedule_and_processing),
        T(test_bad_nonce_and_rate_limit),
        T(test_deadline_and_cancel),
        T(test_dns01_plugin_wildcard),
        T(test_alternate_chain),
        T(test_forgotten_account_and_replaces),
        T(test_truncated_download_retried),
        T(test_csr),
        T(test_resource_parsers),
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        harness_current = tests[i].name;
        int before = harness_failures;
        tests[i].fn();
        fprintf(stderr, "%s %s\n", harness_failures == before ? "ok  " : "FAIL", tests[i].name);
    }
    fprintf(stderr, "%d checks, %d failed\n", harness_checks, harness_failures);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmp_root);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", tmp_root);
    }
    return harness_failures == 0 ? 0 : 1;
}
