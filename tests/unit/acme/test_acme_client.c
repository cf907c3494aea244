/* Tests of acme/client.c: problem documents, Retry-After, RFC 3339, Link and
 * directory parsing on recorded RFC 8555 / Pebble samples, and the request
 * machinery against the scripted fake CA: HEAD newNonce on an empty pool,
 * badNonce retries (and their bound), rateLimited with Retry-After (waited or
 * reported), serverInternal backoff, truncated and oversized bodies, dropped
 * connections, the shared directory fetch and cancellation. */
#include "acme/client.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "acme/jws.h"
#include "fake_ca.h"
#include "harness.h"
#include "proxy/core/err.h"
#include "proxy/core/time.h"

/* ---- parsers ---------------------------------------------------------------- */

TEST(test_problem_parse)
{
    /* RFC 8555 §6.7.1 example, with subproblems. */
    static const char doc[] = "{\"type\":\"urn:ietf:params:acme:error:malformed\","
                              "\"detail\":\"Some of the identifiers requested were rejected\","
                              "\"subproblems\":[{\"type\":\"urn:ietf:params:acme:error:malformed\","
                              "\"detail\":\"Invalid underscore in DNS name \\\"_example.org\\\"\","
                              "\"identifier\":{\"type\":\"dns\",\"value\":\"_example.org\"}},"
                              "{\"type\":\"urn:ietf:params:acme:error:rejectedIdentifier\","
                              "\"detail\":\"This CA will not issue for \\\"example.net\\\"\","
                              "\"identifier\":{\"type\":\"dns\",\"value\":\"example.net\"}}]}";
    struct acme_problem p;
    CHECK_EQ_INT(acme_problem_parse(&p, 403, doc, strlen(doc)), 0);
    CHECK(acme_problem_is(&p, "malformed"));
    CHECK_STR(acme_problem_short(&p), "malformed");
    CHECK_EQ_INT(p.status, 403);
    CHECK_EQ_INT(p.num_subproblems, 2);
    CHECK(strstr(p.detail, "Some of the identifiers requested were rejected; _example.org: "
                           "Invalid underscore") == p.detail);
    CHECK(strstr(p.detail, "; example.net: This CA will not issue") != NULL);
    CHECK(!p.retryable);

    static const char bad_nonce[] = "{\"type\":\"urn:ietf:params:acme:error:badNonce\","
                                    "\"detail\":\"JWS has an invalid anti-replay nonce\","
                                    "\"status\":400}";
    CHECK_EQ_INT(acme_problem_parse(&p, 400, bad_nonce, strlen(bad_nonce)), 0);
    CHECK(acme_problem_is(&p, "badNonce"));
    CHECK(p.retryable);

    static const char rate[] = "{\"type\":\"urn:ietf:params:acme:error:rateLimited\","
                               "\"detail\":\"too many\\ncertificates\"}";
    CHECK_EQ_INT(acme_problem_parse(&p, 429, rate, strlen(rate)), 0);
    CHECK(p.retryable);
    CHECK_STR(p.detail, "too many certificates"); /* control characters never reach logs */

    /* Not a problem document: the status decides. */
    CHECK_EQ_INT(acme_problem_parse(&p, 503, "<html>down</html>", 17), -1);
    CHECK_STR(p.type, "");
    CHECK_STR(p.detail, "HTTP 503");
    CHECK(p.retryable);
    CHECK_STR(acme_problem_short(&p), "http");
    CHECK_EQ_INT(acme_problem_parse(&p, 404, "", 0), -1);
    CHECK(!p.retryable);
    /* Truncated JSON is no problem document either. */
    CHECK_EQ_INT(acme_problem_parse(&p, 400, bad_nonce, 20), -1);
    CHECK(!acme_problem_is(&p, "badNonce"));

    struct dm_err err;
    dm_err_set(&err, DM_E_TIMEOUT, "request timed out");
    acme_problem_from_err(&p, &err);
    CHECK(p.retryable);
    CHECK_STR(acme_problem_short(&p), "network");
    dm_err_set(&err, DM_E_TLS, "certificate verify failed");
    acme_problem_from_err(&p, &err);
    CHECK(!p.retryable);
}

TEST(test_retry_after)
{
    uint32_t s = 0;
    time_t now = 784111777; /* Sun, 06 Nov 1994 08:49:37 GMT */
    CHECK_EQ_INT(acme_retry_after_parse("120", now, &s), 0);
    CHECK_EQ_INT(s, 120);
    CHECK_EQ_INT(acme_retry_after_parse(" 0 ", now, &s), 0);
    CHECK_EQ_INT(s, 0);
    CHECK_EQ_INT(acme_retry_after_parse("99999999999999999999", now, &s), 0);
    CHECK_EQ_INT(s, ACME_RETRY_AFTER_MAX_S);
    CHECK_EQ_INT(acme_retry_after_parse("Sun, 06 Nov 1994 08:50:37 GMT", now, &s), 0);
    CHECK_EQ_INT(s, 60);
    CHECK_EQ_INT(acme_retry_after_parse("Sunday, 06-Nov-94 08:51:37 GMT", now, &s), 0);
    CHECK_EQ_INT(s, 120);
    CHECK_EQ_INT(acme_retry_after_parse("Sun Nov  6 08:52:37 1994", now, &s), 0);
    CHECK_EQ_INT(s, 180);
    CHECK_EQ_INT(acme_retry_after_parse("Sun, 06 Nov 1994 08:00:00 GMT", now, &s), 0);
    CHECK_EQ_INT(s, 0); /* in the past */
    CHECK_EQ_INT(acme_retry_after_parse("Sun, 06 Nov 2094 08:00:00 GMT", now, &s), 0);
    CHECK_EQ_INT(s, ACME_RETRY_AFTER_MAX_S);
    CHECK_EQ_INT(acme_retry_after_parse("-5", now, &s), -1);
    CHECK_EQ_INT(acme_retry_after_parse("1.5", now, &s), -1);
    CHECK_EQ_INT(acme_retry_after_parse("", now, &s), -1);
    CHECK_EQ_INT(acme_retry_after_parse(NULL, now, &s), -1);
    CHECK_EQ_INT(acme_retry_after_parse("Sun, 06 Foo 1994 08:00:00 GMT", now, &s), -1);
    CHECK_EQ_INT(acme_retry_after_parse("Sun, 06 Nov 1994 08:00:00 GMT trailing", now, &s), -1);
}

TEST(test_time_parse)
{
    time_t t = 0;
    CHECK_EQ_INT(acme_time_parse("2016-01-20T14:09:07.99Z", &t), 0);
    CHECK_EQ_INT(t, 1453298947);
    CHECK_EQ_INT(acme_time_parse("2016-01-20T16:09:07+02:00", &t), 0);
    CHECK_EQ_INT(t, 1453298947);
    CHECK_EQ_INT(acme_time_parse("2016-01-20t14:09:07z", &t), 0);
    CHECK_EQ_INT(acme_time_parse("2016-01-20 14:09:07Z", &t), -1);
    CHECK_EQ_INT(acme_time_parse("2016-13-20T14:09:07Z", &t), -1);
    CHECK_EQ_INT(acme_time_parse("2016-01-20T14:09:07", &t), -1);
    CHECK_EQ_INT(acme_time_parse("2016-01-20T14:09:07.Z", &t), -1);
    CHECK_EQ_INT(acme_time_parse(NULL, &t), -1);
}

TEST(test_link_parse)
{
    char **urls = NULL;
    size_t n = 0;
    const char *base = "https://ca.test/acme/cert/1";
    CHECK_EQ_INT(
        acme_link_parse("<https://ca.test/acme/cert/1/1>;rel=\"alternate\", "
                        "</acme/cert/1/2>; rel=alternate, <https://ca.test/dir>;rel=\"index\"",
                        "alternate", base, &urls, &n, 8),
        0);
    CHECK_EQ_INT(n, 2);
    if (n == 2) {
        CHECK_STR(urls[0], "https://ca.test/acme/cert/1/1");
        CHECK_STR(urls[1], "https://ca.test/acme/cert/1/2");
    }
    CHECK_EQ_INT(
        acme_link_parse("<up>; title=\"a, b\"; rel=\"up index\"", "up", base, &urls, &n, 8), 0);
    CHECK_EQ_INT(n, 3);
    if (n == 3) {
        CHECK_STR(urls[2], "https://ca.test/acme/cert/up");
    }
    /* Malformed input: what was parsed stays, nothing else happens. */
    CHECK_EQ_INT(acme_link_parse("garbage <x>;rel=up", "up", base, &urls, &n, 8), 0);
    CHECK_EQ_INT(acme_link_parse("<unterminated;rel=up", "up", base, &urls, &n, 8), 0);
    CHECK_EQ_INT(n, 3);
    /* The bound holds. */
    CHECK_EQ_INT(acme_link_parse("<a>;rel=up,<b>;rel=up", "up", base, &urls, &n, 4), 0);
    CHECK_EQ_INT(n, 4);
    acme_strings_free(urls, n);

    char *u = acme_url_resolve("https://ca.test:14000/dir", "//other.test/x");
    CHECK_STR(u, "https://other.test/x");
    free(u);
    u = acme_url_resolve("https://ca.test:14000", "rel");
    CHECK_STR(u, "https://ca.test:14000/rel");
    free(u);
    CHECK(acme_url_resolve("https://ca.test/", "") == NULL);
}

TEST(test_directory_parse)
{
    /* Pebble 2.4's directory. */
    static const char pebble[] = "{\"keyChange\":\"https://127.0.0.1:14000/rollover-account-key\","
                                 "\"meta\":{\"externalAccountRequired\":false,\"termsOfService\":"
                                 "\"data:text/plain,Do%20what%20thou%20wilt\"},"
                                 "\"newAccount\":\"https://127.0.0.1:14000/sign-me-up\","
                                 "\"newNonce\":\"https://127.0.0.1:14000/nonce-plz\","
                                 "\"newOrder\":\"https://127.0.0.1:14000/order-plz\","
                                 "\"revokeCert\":\"https://127.0.0.1:14000/revoke-cert\"}";
    struct acme_directory d;
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_directory_parse(&d, pebble, strlen(pebble), &err), 0);
    CHECK_STR(d.new_nonce, "https://127.0.0.1:14000/nonce-plz");
    CHECK_STR(d.new_order, "https://127.0.0.1:14000/order-plz");
    CHECK_STR(d.key_change, "https://127.0.0.1:14000/rollover-account-key");
    CHECK_STR(d.terms_of_service, "data:text/plain,Do%20what%20thou%20wilt");
    CHECK(d.renewal_info == NULL);
    CHECK(!d.external_account_required);
    CHECK_EQ_INT(d.num_profiles, 0);
    acme_directory_cleanup(&d);

    static const char le[] =
        "{\"newNonce\":\"https://ca.test/acme/new-nonce\","
        "\"newAccount\":\"https://ca.test/acme/new-acct\","
        "\"newOrder\":\"https://ca.test/acme/new-order\","
        "\"renewalInfo\":\"https://ca.test/draft-ietf-acme-ari-03/renewalInfo\","
        "\"meta\":{\"externalAccountRequired\":true,\"profiles\":{\"classic\":\"x\","
        "\"shortlived\":\"y\"},\"website\":\"https://ca.test\"}}";
    CHECK_EQ_INT(acme_directory_parse(&d, le, strlen(le), &err), 0);
    CHECK(d.external_account_required);
    CHECK_EQ_INT(d.num_profiles, 2);
    CHECK(acme_directory_has_profile(&d, "shortlived"));
    CHECK(!acme_directory_has_profile(&d, "tlsserver"));
    CHECK_STR(d.renewal_info, "https://ca.test/draft-ietf-acme-ari-03/renewalInfo");
    acme_directory_cleanup(&d);

    static const char missing[] = "{\"newAccount\":\"https://a/b\",\"newOrder\":\"https://a/c\"}";
    CHECK_EQ_INT(acme_directory_parse(&d, missing, strlen(missing), &err), -1);
    CHECK(strstr(err.msg, "newNonce") != NULL);
    static const char not_url[] = "{\"newNonce\":\"ftp://a\",\"newAccount\":\"https://a/b\","
                                  "\"newOrder\":\"https://a/c\"}";
    CHECK_EQ_INT(acme_directory_parse(&d, not_url, strlen(not_url), &err), -1);
    CHECK_EQ_INT(acme_directory_parse(&d, "[1]", 3, &err), -1);
    CHECK_EQ_INT(acme_directory_parse(&d, "{", 1, &err), -1);
}

/* ---- against the fake CA --------------------------------------------------------- */

struct env {
    struct event_base *base;
    struct fake_ca *ca;
    struct acme_client *c;
    struct acme_key *key;
};

struct result {
    bool is_done;
    int calls;
    bool is_ok;
    int status;
    char location[256];
    char body[512];
    struct acme_problem prob;
    struct dm_err err;
    uint64_t at_us;
};

static void on_done(const struct acme_response *resp, const struct acme_problem *prob,
                    const struct dm_err *err, void *arg)
{
    struct result *r = arg;
    r->calls++;
    r->is_done = true;
    r->at_us = dm_time_mono_us();
    r->is_ok = resp != NULL;
    if (resp != NULL) {
        r->status = resp->status;
        snprintf(r->location, sizeof(r->location), "%s", resp->location ? resp->location : "");
        snprintf(r->body, sizeof(r->body), "%s", resp->body);
    } else {
        r->prob = *prob;
        r->err = *err;
    }
}

static void env_init(struct env *e, const struct acme_client_opts *extra)
{
    e->base = event_base_new();
    e->ca = fake_ca_new(e->base);
    struct acme_client_opts o = {0};
    if (extra != NULL) {
        o = *extra;
    }
    o.directory_url = fake_ca_dir_url(e->ca);
    if (o.retry_base_ms == 0) {
        o.retry_base_ms = 20;
    }
    struct dm_err err = {0};
    e->c = acme_client_new(e->base, &o, &err);
    CHECK(e->c != NULL);
    e->key = acme_key_new(ACME_KEY_ES256, 0, &err);
}

static void env_cleanup(struct env *e)
{
    acme_client_free(e->c);
    fake_ca_free(e->ca);
    acme_key_free(e->key);
    event_base_free(e->base);
}

/* new_account POSTs a newAccount (jwk) and returns the kid. */
static void new_account(struct env *e, struct result *r)
{
    struct dm_err err = {0};
    const struct acme_directory *d = acme_client_directory_find(e->c);
    char url[256];
    snprintf(url, sizeof(url), "%s", d != NULL ? d->new_account : "");
    if (d == NULL) {
        /* The URL is the fake's; the client fetches the directory itself. */
        snprintf(url, sizeof(url), "%.*s/new-acct", (int)(strlen(fake_ca_dir_url(e->ca)) - 4),
                 fake_ca_dir_url(e->ca));
    }
    memset(r, 0, sizeof(*r));
    CHECK(acme_client_post_start(e->c, e->key, NULL, url, "{\"termsOfServiceAgreed\":true}", NULL,
                                 on_done, r, &err) != NULL);
    CHECK(fake_run(e->base, &r->is_done, 5000));
}

TEST(test_post_and_nonce_pool)
{
    struct env e;
    env_init(&e, NULL);
    struct result r;
    new_account(&e, &r);
    CHECK(r.is_ok);
    CHECK_EQ_INT(r.status, 201);
    CHECK(strstr(r.location, "/acct/0") != NULL);
    CHECK_EQ_INT(r.calls, 1);
    /* Empty pool: one HEAD newNonce; the POST's answer refilled the pool. */
    CHECK_EQ_INT(fake_ca_count(e.ca, "nonce"), 1);
    CHECK_EQ_INT(fake_ca_count(e.ca, "dir"), 1);
    CHECK_EQ_INT(acme_client_num_nonces(e.c), 1);
    CHECK(acme_client_directory_find(e.c) != NULL);
    /* A POST-as-GET with the kid now needs no newNonce. */
    char kid[256];
    snprintf(kid, sizeof(kid), "%s", r.location);
    struct dm_err err = {0};
    memset(&r, 0, sizeof(r));
    CHECK(acme_client_post_start(e.c, e.key, kid, kid, "", NULL, on_done, &r, &err) != NULL);
    CHECK(fake_run(e.base, &r.is_done, 5000));
    CHECK(r.is_ok);
    CHECK_EQ_INT(fake_ca_count(e.ca, "nonce"), 1);
    CHECK_STR(fake_ca_last_payload(e.ca, "acct"), "");
    env_cleanup(&e);
}

TEST(test_bad_nonce_retried)
{
    struct env e;
    env_init(&e, NULL);
    fake_ca_knobs(e.ca)->bad_nonce_next = 3;
    struct result r;
    new_account(&e, &r);
    CHECK(r.is_ok);
    CHECK_EQ_INT(fake_ca_num_bad_nonce(e.ca), 3);
    /* Each badNonce answer carried the next nonce: no extra HEAD. */
    CHECK_EQ_INT(fake_ca_count(e.ca, "nonce"), 1);
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 4);
    env_cleanup(&e);
}

TEST(test_bad_nonce_bounded)
{
    struct env e;
    struct acme_client_opts o = {.max_bad_nonce = 2, .max_retries = 1};
    env_init(&e, &o);
    fake_ca_knobs(e.ca)->bad_nonce_next = 100;
    struct result r;
    new_account(&e, &r);
    CHECK(!r.is_ok);
    CHECK_EQ_INT(r.calls, 1);
    CHECK(acme_problem_is(&r.prob, "badNonce"));
    CHECK_EQ_INT(r.err.code, DM_E_ACME);
    /* 1 + 2 immediate re-signs, then badNonce counts as a transient failure:
     * 1 retry after backoff. */
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 4);
    env_cleanup(&e);
}

static const char RATE_LIMITED[] = "{\"type\":\"urn:ietf:params:acme:error:rateLimited\","
                                   "\"detail\":\"too many new orders recently\",\"status\":429}";

TEST(test_rate_limited_waits_retry_after)
{
    struct env e;
    env_init(&e, NULL);
    fake_ca_script(e.ca, "/new-acct", 1, 429, "application/problem+json", "Retry-After: 1\r\n",
                   RATE_LIMITED);
    uint64_t t0 = dm_time_mono_us();
    struct result r;
    new_account(&e, &r);
    CHECK(r.is_ok);
    CHECK(r.at_us - t0 >= 950000); /* Retry-After: 1, not the 20 ms backoff */
    CHECK(r.at_us - t0 < 3000000);
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 2);
    env_cleanup(&e);
}

TEST(test_rate_limited_reported)
{
    struct env e;
    env_init(&e, NULL);
    fake_ca_script(e.ca, "/new-acct", 1, 429, "application/problem+json", "Retry-After: 3600\r\n",
                   RATE_LIMITED);
    struct result r;
    uint64_t t0 = dm_time_mono_us();
    new_account(&e, &r);
    CHECK(!r.is_ok);
    CHECK(r.at_us - t0 < 1000000); /* an hour does not fit the call: report it */
    CHECK(acme_problem_is(&r.prob, "rateLimited"));
    CHECK(r.prob.retryable);
    CHECK(r.prob.has_retry_after);
    CHECK_EQ_INT(r.prob.retry_after_s, 3600);
    CHECK_EQ_INT(r.prob.status, 429);
    CHECK(strstr(r.prob.detail, "too many new orders") != NULL);
    CHECK(strstr(r.err.msg, "rateLimited") != NULL);
    env_cleanup(&e);
}

TEST(test_server_error_backoff)
{
    struct env e;
    env_init(&e, NULL);
    fake_ca_script(e.ca, "/new-acct", 2, 500, "application/problem+json", NULL,
                   "{\"type\":\"urn:ietf:params:acme:error:serverInternal\",\"detail\":\"oops\"}");
    struct result r;
    uint64_t t0 = dm_time_mono_us();
    new_account(&e, &r);
    CHECK(r.is_ok);
    CHECK(r.at_us - t0 >= 55000); /* 20 + 40 ms backoff */
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 3);

    /* Not retryable: at once, one request. */
    fake_ca_script(e.ca, "/new-acct", 1, 400, "application/problem+json", NULL,
                   "{\"type\":\"urn:ietf:params:acme:error:malformed\",\"detail\":\"no\"}");
    new_account(&e, &r);
    CHECK(!r.is_ok);
    CHECK(acme_problem_is(&r.prob, "malformed"));
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 4);
    env_cleanup(&e);
}

TEST(test_truncated_and_oversized)
{
    struct env e;
    struct acme_client_opts o = {.max_retries = 1};
    env_init(&e, &o);
    static const char trunc[] = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                                "Content-Length: 100\r\n\r\n{\"status\":";
    fake_ca_script_raw(e.ca, "/new-acct", 1, trunc, sizeof(trunc) - 1, true);
    struct result r;
    new_account(&e, &r);
    CHECK(r.is_ok); /* a truncated answer is a network failure: retried */
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 2);

    fake_ca_script_raw(e.ca, "/new-acct", 2, trunc, sizeof(trunc) - 1, true);
    new_account(&e, &r);
    CHECK(!r.is_ok);
    CHECK_EQ_INT(r.err.code, DM_E_PROTO);
    CHECK(r.prob.retryable);
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 4);

    /* Larger than the 1 MiB bound: a limit, not retried. */
    static const char big_head[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                   "Content-Length: 2000000\r\n\r\n";
    size_t big_len = sizeof(big_head) - 1 + 2000000;
    char *big = malloc(big_len);
    memcpy(big, big_head, sizeof(big_head) - 1);
    memset(big + sizeof(big_head) - 1, ' ', 2000000);
    fake_ca_script_raw(e.ca, "/new-acct", 5, big, big_len, true);
    free(big);
    new_account(&e, &r);
    CHECK(!r.is_ok);
    CHECK_EQ_INT(r.err.code, DM_E_LIMIT);
    CHECK(!r.prob.retryable);
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 5);
    env_cleanup(&e);
}

TEST(test_dropped_connection)
{
    struct env e;
    env_init(&e, NULL);
    struct result r;
    new_account(&e, &r);
    CHECK(r.is_ok);
    /* The CA closes the (pooled) connection instead of answering: a POST is
     * not resent blindly by httpc, the client re-signs it with a new nonce. */
    fake_ca_script_raw(e.ca, "/new-acct", 1, NULL, 0, true);
    new_account(&e, &r);
    CHECK(r.is_ok);
    CHECK_EQ_INT(r.status, 200); /* same key: the existing account */
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 3);
    env_cleanup(&e);
}

static void on_dir(const struct acme_directory *dir, const struct acme_problem *prob,
                   const struct dm_err *err, void *arg)
{
    (void)err;
    struct result *r = arg;
    r->calls++;
    r->is_done = true;
    r->is_ok = dir != NULL;
    if (prob != NULL) {
        r->prob = *prob;
    }
}

TEST(test_directory_shared_and_cancel)
{
    struct env e;
    env_init(&e, NULL);
    struct result r[3] = {0};
    struct dm_err err = {0};
    struct acme_call *calls[3];
    for (int i = 0; i < 3; i++) {
        calls[i] = acme_client_directory_start(e.c, on_dir, &r[i], &err);
        CHECK(calls[i] != NULL);
        CHECK_EQ_INT(r[i].calls, 0); /* never from _start */
    }
    acme_client_call_cancel(calls[1]);
    CHECK(fake_run(e.base, &r[2].is_done, 5000));
    fake_run(e.base, &r[0].is_done, 1000);
    CHECK(r[0].is_ok && r[2].is_ok);
    CHECK_EQ_INT(r[1].calls, 0);
    CHECK_EQ_INT(fake_ca_count(e.ca, "dir"), 1); /* one GET for all */

    /* Cached: still deferred, no request. */
    struct result again = {0};
    CHECK(acme_client_directory_start(e.c, on_dir, &again, &err) != NULL);
    CHECK_EQ_INT(again.calls, 0);
    CHECK(fake_run(e.base, &again.is_done, 1000));
    CHECK_EQ_INT(fake_ca_count(e.ca, "dir"), 1);

    /* A POST canceled in flight never calls back; free with calls pending. */
    struct result post = {0};
    struct acme_call *p =
        acme_client_post_start(e.c, e.key, NULL, acme_client_directory_find(e.c)->new_account, "{}",
                               NULL, on_done, &post, &err);
    CHECK(p != NULL);
    acme_client_call_cancel(p);
    bool never = false;
    fake_run(e.base, &never, 50);
    CHECK_EQ_INT(post.calls, 0);
    CHECK(acme_client_post_start(e.c, e.key, NULL, acme_client_directory_find(e.c)->new_account,
                                 "{}", NULL, on_done, &post, &err) != NULL);
    env_cleanup(&e); /* frees the call in flight without a callback */
    CHECK_EQ_INT(post.calls, 0);
}

TEST(test_directory_failure)
{
    struct env e;
    struct acme_client_opts o = {.max_retries = 1};
    env_init(&e, &o);
    fake_ca_script(e.ca, "/dir", 5, 200, "application/json", NULL, "{\"newNonce\":1}");
    struct result r = {0};
    struct dm_err err = {0};
    CHECK(acme_client_directory_start(e.c, on_dir, &r, &err) != NULL);
    CHECK(fake_run(e.base, &r.is_done, 5000));
    CHECK(!r.is_ok);
    CHECK(strstr(r.prob.detail, "newNonce") != NULL);
    /* A POST waiting for the directory fails with the same cause. */
    struct result p = {0};
    char url[256];
    snprintf(url, sizeof(url), "%.*s/new-acct", (int)(strlen(fake_ca_dir_url(e.ca)) - 4),
             fake_ca_dir_url(e.ca));
    CHECK(acme_client_post_start(e.c, e.key, NULL, url, "{}", NULL, on_done, &p, &err) != NULL);
    CHECK(fake_run(e.base, &p.is_done, 5000));
    CHECK(!p.is_ok);
    CHECK_EQ_INT(p.err.code, DM_E_PROTO);

    struct acme_client_opts bad = {.directory_url = "ftp://x"};
    CHECK(acme_client_new(e.base, &bad, &err) == NULL);
    CHECK_EQ_INT(err.code, DM_E_CONFIG);
    env_cleanup(&e);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    static const struct harness_test tests[] = {
        T(test_problem_parse),
        T(test_retry_after),
        T(test_time_parse),
        T(test_link_parse),
        T(test_directory_parse),
        T(test_post_and_nonce_pool),
        T(test_bad_nonce_retried),
        T(test_bad_nonce_bounded),
        T(test_rate_limited_waits_retry_after),
        T(test_rate_limited_reported),
        T(test_server_error_backoff),
        T(test_truncated_and_oversized),
        T(test_dropped_connection),
        T(test_directory_shared_and_cancel),
        T(test_directory_failure),
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        harness_current = tests[i].name;
        int before = harness_failures;
        tests[i].fn();
        fprintf(stderr, "%s %s\n", harness_failures == before ? "ok  " : "FAIL", tests[i].name);
    }
    fprintf(stderr, "%d checks, %d failed\n", harness_checks, harness_failures);
    return harness_failures == 0 ? 0 : 1;
}
