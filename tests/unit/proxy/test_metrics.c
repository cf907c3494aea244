/* Unit tests for proxy/metrics.c: the Prometheus text format of samples
 * (label escaping, integers exact, +Inf), site label indexes, and the sum of
 * several workers' blocks with cumulative histogram buckets. */
#include "proxy/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "harness.h"

/* text returns the buffer's content as a new string and empties it. */
static char *text(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    return s;
}

TEST(test_sample_format)
{
    struct evbuffer *b = evbuffer_new();
    CHECK_EQ_INT(dm_metrics_write_sample(b, "x_total", NULL, 0, 42), 0);
    char *s = text(b);
    CHECK_STR(s, "x_total 42\n");
    free(s);
    const char *l[] = {"site", "a\"b\\c\nd", "code", "2xx"};
    dm_metrics_write_sample(b, "x_total", l, 2, 1e15 + 1);
    s = text(b);
    CHECK_STR(s, "x_total{site=\"a\\\"b\\\\c\\nd\",code=\"2xx\"} 1000000000000001\n");
    free(s);
    dm_metrics_write_sample(b, "h_bucket", l + 2, 1, INFINITY);
    dm_metrics_write_sample(b, "h_sum", NULL, 0, 0.25);
    s = text(b);
    CHECK_STR(s, "h_bucket{code=\"2xx\"} +Inf\nh_sum 0.25\n");
    free(s);
    dm_metrics_write_header(b, "x_total", "counter", "Things.");
    s = text(b);
    CHECK_STR(s, "# HELP x_total Things.\n# TYPE x_total counter\n");
    free(s);
    evbuffer_free(b);
}

TEST(test_site_index)
{
    uint16_t a = dm_metrics_site_index("a.test");
    uint16_t b = dm_metrics_site_index("b.test");
    CHECK(a != DM_METRICS_SITE_NONE);
    CHECK(a != b);
    CHECK_EQ_INT(dm_metrics_site_index("a.test"), a);
    /* The table is bounded: past it every new label shares one index. */
    uint16_t last = 0;
    char name[32];
    for (int i = 0; i < DM_METRICS_MAX_SITES + 10; i++) {
        snprintf(name, sizeof(name), "s%d.test", i);
        last = dm_metrics_site_index(name);
    }
    CHECK_EQ_INT(last, DM_METRICS_MAX_SITES - 1);
    CHECK_EQ_INT(dm_metrics_site_index("a.test"), a);
    dm_metrics_cleanup();
}

TEST(test_sum_over_workers)
{
    struct dm_metrics *w1 = dm_metrics_worker_new();
    struct dm_metrics *w2 = dm_metrics_worker_new();
    CHECK(w1 != NULL && w2 != NULL);
    uint16_t site = dm_metrics_site_index("a.test");
    dm_metrics_request(w1, site, 200, 1000, 10);    /* 1 ms */
    dm_metrics_request(w2, site, 204, 200000, 20);  /* 200 ms */
    dm_metrics_request(w2, site, 503, 20000000, 5); /* 20 s: above every bucket */
    dm_metrics_request(NULL, site, 200, 0, 0);      /* no block: ignored */
    dm_metrics_bytes_in(w1, 7);
    dm_metrics_handshake_ok(w1);
    dm_metrics_handshake_failed(w2, DM_TLS_FAIL_NO_CERT);
    struct evbuffer *b = evbuffer_new();
    CHECK_EQ_INT(dm_metrics_format(b, 3), 0);
    char *s = text(b);
    CHECK(strstr(s, "doorman_requests_total{site=\"a.test\",code=\"2xx\"} 2\n") != NULL);
    CHECK(strstr(s, "doorman_requests_total{site=\"a.test\",code=\"5xx\"} 1\n") != NULL);
    CHECK(strstr(s, "doorman_request_duration_seconds_bucket{site=\"a.test\",le=\"0.005\"} 1\n") !=
          NULL);
    CHECK(strstr(s, "doorman_request_duration_seconds_bucket{site=\"a.test\",le=\"0.25\"} 2\n") !=
          NULL);
    CHECK(strstr(s, "doorman_request_duration_seconds_bucket{site=\"a.test\",le=\"10\"} 2\n") !=
          NULL);
    CHECK(strstr(s, "doorman_request_duration_seconds_bucket{site=\"a.test\",le=\"+Inf\"} 3\n") !=
          NULL);
    CHECK(strstr(s, "doorman_request_duration_seconds_count{site=\"a.test\"} 3\n") != NULL);
    CHECK(strstr(s, "doorman_request_duration_seconds_sum{site=\"a.test\"} 20.201\n") != NULL);
    CHECK(strstr(s, "doorman_sent_bytes_total 35\n") != NULL);
    CHECK(strstr(s, "doorman_received_bytes_total 7\n") != NULL);
    CHECK(strstr(s, "doorman_connections_active 3\n") != NULL);
    CHECK(strstr(s, "doorman_tls_handshakes_total 1\n") != NULL);
    CHECK(strstr(s, "doorman_tls_handshake_failures_total{reason=\"no_certificate\"} 1\n") != NULL);
    /* No series for a site without requests. */
    CHECK(strstr(s, "site=\"_none\"") == NULL);
    free(s);
    evbuffer_free(b);
    dm_metrics_cleanup();
}

HARNESS_MAIN(T(test_sample_format), T(test_site_index), T(test_sum_over_workers))
