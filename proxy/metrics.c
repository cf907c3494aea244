/* Data-plane metrics: per-worker counter blocks with a single writer each,
 * summed by the scrape (see metrics.h for the scheme). Nothing here takes a
 * lock on the request path; the registry and the site labels change only on
 * the control thread. */
#include "proxy/metrics.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

/* More workers than config allows (256) cannot register. */
#define METRICS_MAX_WORKERS 256
#define NUM_CLASSES         5 /* 1xx .. 5xx */
/* Label slots: 0 is "_none", the last is "_other", site labels in between. */
#define SITE_OTHER (DM_METRICS_MAX_SITES - 1)

typedef _Atomic uint64_t counter;

struct dm_metrics {
    counter requests[DM_METRICS_MAX_SITES][NUM_CLASSES];
    counter buckets[DM_METRICS_MAX_SITES][DM_METRICS_NUM_BUCKETS + 1]; /* last: above all */
    counter duration_sum_us[DM_METRICS_MAX_SITES];
    counter bytes_in, bytes_out;
    counter handshakes;
    counter handshake_failures[DM_TLS_FAIL_COUNT];
    counter refused[DM_REFUSE_COUNT];
};

static struct dm_metrics *blocks[METRICS_MAX_WORKERS]; /* owned */
static size_t num_blocks;
static char *labels[DM_METRICS_MAX_SITES]; /* owned; NULL = unused slot */
static size_t num_labels;                  /* slots 1..num_labels-1 are in use */

static const double bucket_bounds[DM_METRICS_NUM_BUCKETS] = DM_METRICS_BUCKETS;
static const char *const tls_fail_names[DM_TLS_FAIL_COUNT] = {"timeout", "closed", "no_certificate",
                                                              "protocol", "other"};
static const char *const refuse_names[DM_REFUSE_COUNT] = {"max_connections", "per_ip_connections",
                                                          "rate_limited"};
static const char *const class_names[NUM_CLASSES] = {"1xx", "2xx", "3xx", "4xx", "5xx"};

/* bump adds n as the counter's only writer: a relaxed load and store, which
 * readers on other threads see whole (never torn) without a locked add. */
static void bump(counter *p, uint64_t n)
{
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static uint64_t read_counter(const counter *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

struct dm_metrics *dm_metrics_worker_new(void)
{
    if (num_blocks == METRICS_MAX_WORKERS) {
        return NULL;
    }
    struct dm_metrics *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return NULL;
    }
    blocks[num_blocks++] = m;
    return m;
}

void dm_metrics_cleanup(void)
{
    for (size_t i = 0; i < num_blocks; i++) {
        free(blocks[i]);
        blocks[i] = NULL;
    }
    num_blocks = 0;
    for (size_t i = 0; i < DM_METRICS_MAX_SITES; i++) {
        free(labels[i]);
        labels[i] = NULL;
    }
    num_labels = 0;
}

uint16_t dm_metrics_site_index(const char *label)
{
    if (num_labels == 0) {
        num_labels = 1; /* slot 0 is "_none" */
    }
    for (size_t i = 1; i < num_labels; i++) {
        if (labels[i] != NULL && strcmp(labels[i], label) == 0) {
            return (uint16_t)i;
        }
    }
    if (num_labels == SITE_OTHER) {
        return SITE_OTHER;
    }
    labels[num_labels] = strdup(label);
    if (labels[num_labels] == NULL) {
        return SITE_OTHER;
    }
    return (uint16_t)num_labels++;
}

void dm_metrics_request(struct dm_metrics *m, uint16_t site, int status, uint64_t duration_us,
                        uint64_t bytes_out)
{
    if (m == NULL) {
        return;
    }
    if (site >= DM_METRICS_MAX_SITES) {
        site = SITE_OTHER;
    }
    int cls = status >= 100 && status < 600 ? status / 100 - 1 : NUM_CLASSES - 1;
    bump(&m->requests[site][cls], 1);
    size_t b = 0;
    double s = (double)duration_us / 1e6;
    while (b < DM_METRICS_NUM_BUCKETS && s > bucket_bounds[b]) {
        b++;
    }
    bump(&m->buckets[site][b], 1);
    bump(&m->duration_sum_us[site], duration_us);
    bump(&m->bytes_out, bytes_out);
}

void dm_metrics_bytes_in(struct dm_metrics *m, uint64_t n)
{
    if (m != NULL && n > 0) {
        bump(&m->bytes_in, n);
    }
}

void dm_metrics_handshake_ok(struct dm_metrics *m)
{
    if (m != NULL) {
        bump(&m->handshakes, 1);
    }
}

void dm_metrics_handshake_failed(struct dm_metrics *m, enum dm_tls_fail reason)
{
    if (m != NULL) {
        bump(&m->handshake_failures[reason < DM_TLS_FAIL_COUNT ? reason : DM_TLS_FAIL_OTHER], 1);
    }
}

void dm_metrics_refused(struct dm_metrics *m, enum dm_refuse reason)
{
    if (m != NULL && reason < DM_REFUSE_COUNT) {
        bump(&m->refused[reason], 1);
    }
}

/* Formatting --------------------------------------------------------------- */

/* add_escaped appends a label value escaped per the text format 0.0.4:
 * backslash, double quote and line feed. */
static int add_escaped(struct evbuffer *out, const char *s)
{
    int rc = 0;
    for (const char *p = s; *p != '\0' && rc == 0; p++) {
        switch (*p) {
        case '\\':
            rc = evbuffer_add(out, "\\\\", 2);
            break;
        case '"':
            rc = evbuffer_add(out, "\\\"", 2);
            break;
        case '\n':
            rc = evbuffer_add(out, "\\n", 2);
            break;
        default:
            rc = evbuffer_add(out, p, 1);
            break;
        }
    }
    return rc;
}

int dm_metrics_write_sample(struct evbuffer *out, const char *name, const char *const *lbl,
                            size_t num_labels_, double value)
{
    int rc = evbuffer_add_printf(out, "%s", name) < 0 ? -1 : 0;
    if (num_labels_ > 0) {
        rc |= evbuffer_add(out, "{", 1);
        for (size_t i = 0; i < num_labels_; i++) {
            rc |= evbuffer_add_printf(out, "%s%s=\"", i ? "," : "", lbl[2 * i]) < 0 ? -1 : 0;
            rc |= add_escaped(out, lbl[2 * i + 1]);
            rc |= evbuffer_add(out, "\"", 1);
        }
        rc |= evbuffer_add(out, "}", 1);
    }
    if (isinf(value)) {
        rc |= evbuffer_add_printf(out, " %s\n", value > 0 ? "+Inf" : "-Inf") < 0 ? -1 : 0;
    } else if (isnan(value)) {
        rc |= evbuffer_add_printf(out, " NaN\n") < 0 ? -1 : 0;
    } else if (value == floor(value) && fabs(value) < 9e18) {
        rc |= evbuffer_add_printf(out, " %.0f\n", value) < 0 ? -1 : 0; /* counters: exact */
    } else {
        rc |= evbuffer_add_printf(out, " %.15g\n", value) < 0 ? -1 : 0;
    }
    return rc == 0 ? 0 : -1;
}

int dm_metrics_write_header(struct evbuffer *out, const char *name, const char *type,
                            const char *help)
{
    return evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type) < 0 ? -1
                                                                                                : 0;
}

static const char *site_label(size_t i)
{
    if (i == 0) {
        return "_none";
    }
    if (i == SITE_OTHER || labels[i] == NULL) {
        return "_other";
    }
    return labels[i];
}

/* sum adds a counter at the same offset in every block. */
static uint64_t sum(size_t offset)
{
    uint64_t total = 0;
    for (size_t w = 0; w < num_blocks; w++) {
        total += read_counter((const counter *)((const char *)blocks[w] + offset));
    }
    return total;
}

#define SUM(field) sum(offsetof(struct dm_metrics, field))

static int format_requests(struct evbuffer *out)
{
    int rc = dm_metrics_write_header(out, "doorman_requests_total", "counter",
                                     "Requests answered, by site (first host name) and status "
                                     "class.");
    for (size_t s = 0; s < DM_METRICS_MAX_SITES; s++) {
        for (size_t c = 0; c < NUM_CLASSES; c++) {
            uint64_t n = SUM(requests[s][c]);
            if (n == 0) {
                continue;
            }
            const char *l[] = {"site", site_label(s), "code", class_names[c]};
            rc |= dm_metrics_write_sample(out, "doorman_requests_total", l, 2, (double)n);
        }
    }
    rc |= dm_metrics_write_header(out, "doorman_request_duration_seconds", "histogram",
                                  "Time from the request head to the end of the response.");
    for (size_t s = 0; s < DM_METRICS_MAX_SITES; s++) {
        uint64_t counts[DM_METRICS_NUM_BUCKETS + 1], total = 0;
        for (size_t b = 0; b <= DM_METRICS_NUM_BUCKETS; b++) {
            counts[b] = SUM(buckets[s][b]);
            total += counts[b];
        }
        if (total == 0) {
            continue;
        }
        uint64_t cum = 0;
        for (size_t b = 0; b <= DM_METRICS_NUM_BUCKETS; b++) {
            cum += counts[b];
            char le[32];
            if (b == DM_METRICS_NUM_BUCKETS) {
                snprintf(le, sizeof(le), "+Inf");
            } else {
                snprintf(le, sizeof(le), "%g", bucket_bounds[b]);
            }
            const char *l[] = {"site", site_label(s), "le", le};
            rc |= dm_metrics_write_sample(out, "doorman_request_duration_seconds_bucket", l, 2,
                                          (double)cum);
        }
        const char *l[] = {"site", site_label(s)};
        rc |= dm_metrics_write_sample(out, "doorman_request_duration_seconds_sum", l, 1,
                                      (double)SUM(duration_sum_us[s]) / 1e6);
        rc |= dm_metrics_write_sample(out, "doorman_request_duration_seconds_count", l, 1,
                                      (double)total);
    }
    return rc;
}

int dm_metrics_format(struct evbuffer *out, long active_conns)
{
    int rc = format_requests(out);
    rc |= dm_metrics_write_header(out, "doorman_received_bytes_total", "counter",
                                  "Bytes received from clients (after TLS decryption).");
    rc |= dm_metrics_write_sample(out, "doorman_received_bytes_total", NULL, 0,
                                  (double)SUM(bytes_in));
    rc |= dm_metrics_write_header(out, "doorman_sent_bytes_total", "counter",
                                  "Response bytes sent to clients.");
    rc |= dm_metrics_write_sample(out, "doorman_sent_bytes_total", NULL, 0, (double)SUM(bytes_out));
    rc |= dm_metrics_write_header(out, "doorman_connections_active", "gauge",
                                  "Open client connections.");
    rc |= dm_metrics_write_sample(out, "doorman_connections_active", NULL, 0, (double)active_conns);
    rc |= dm_metrics_write_header(out, "doorman_tls_handshakes_total", "counter",
                                  "Completed TLS handshakes.");
    rc |= dm_metrics_write_sample(out, "doorman_tls_handshakes_total", NULL, 0,
                                  (double)SUM(handshakes));
    rc |= dm_metrics_write_header(out, "doorman_tls_handshake_failures_total", "counter",
                                  "Failed TLS handshakes by reason.");
    for (size_t i = 0; i < DM_TLS_FAIL_COUNT; i++) {
        const char *l[] = {"reason", tls_fail_names[i]};
        rc |= dm_metrics_write_sample(out, "doorman_tls_handshake_failures_total", l, 1,
                                      (double)SUM(handshake_failures[i]));
    }
    rc |= dm_metrics_write_header(out, "doorman_refused_total", "counter",
                                  "Connections closed or requests answered 429 by a limit.");
    for (size_t i = 0; i < DM_REFUSE_COUNT; i++) {
        const char *l[] = {"reason", refuse_names[i]};
        rc |= dm_metrics_write_sample(out, "doorman_refused_total", l, 1, (double)SUM(refused[i]));
    }
    return rc == 0 ? 0 : -1;
}
