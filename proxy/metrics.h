/* Prometheus metrics of the data plane. Each worker owns one block of
 * counters and is its only writer (relaxed atomic load + store, no lock and
 * no locked instruction on the request path); a scrape on the control thread
 * sums the blocks with relaxed atomic loads. Sites are counted by a label
 * index fixed when a generation is built. Text format: Prometheus 0.0.4. */
#ifndef DM_PROXY_METRICS_H
#define DM_PROXY_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;

/* Distinct site labels kept; later sites are counted under "_other". A
 * process that reloads through thousands of different first host names is
 * the only way to reach it, and the label set must stay bounded. */
#define DM_METRICS_MAX_SITES 256
/* Label index of requests that matched no site (404, 400, redirects). */
#define DM_METRICS_SITE_NONE 0
/* Upper bounds of the request duration buckets, in seconds (+Inf implied). */
#define DM_METRICS_BUCKETS                                                                         \
    {                                                                                              \
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10                                    \
    }
#define DM_METRICS_NUM_BUCKETS 11

/* Why a TLS handshake failed, as the label reason="..." shows it. */
enum dm_tls_fail {
    DM_TLS_FAIL_TIMEOUT = 0, /* timeouts.handshake ran out */
    DM_TLS_FAIL_CLOSED,      /* the client closed or reset during the handshake */
    DM_TLS_FAIL_NO_CERT,     /* no certificate for the SNI name */
    DM_TLS_FAIL_PROTOCOL,    /* no common version, cipher, or a malformed message */
    DM_TLS_FAIL_OTHER,
    DM_TLS_FAIL_COUNT,
};

/* Why a connection or request was refused by a limit (reason="..."). */
enum dm_refuse {
    DM_REFUSE_MAX_CONNECTIONS = 0, /* limits.max_connections */
    DM_REFUSE_PER_IP_CONNECTIONS,  /* limits.per_ip_connections */
    DM_REFUSE_RATE,                /* limits.per_ip_rate: answered 429 */
    DM_REFUSE_COUNT,
};

/* One worker's counters (opaque; metrics.c). */
struct dm_metrics;

/* dm_metrics_worker_new returns a zeroed block registered for scrapes, or
 * NULL when out of memory (then nothing is counted for that worker). The
 * registry owns it until dm_metrics_cleanup. Control thread, before the
 * worker starts. */
struct dm_metrics *dm_metrics_worker_new(void);

/* dm_metrics_cleanup frees every block and label. Call after every worker
 * stopped. */
void dm_metrics_cleanup(void);

/* dm_metrics_site_index returns the label index for a site named label (its
 * first host), adding it on first use; "_other" once the table is full.
 * Control thread only (generations are built there). */
uint16_t dm_metrics_site_index(const char *label);

/* Recording, from the owning worker's thread only. m may be NULL. */
void dm_metrics_request(struct dm_metrics *m, uint16_t site, int status, uint64_t duration_us,
                        uint64_t bytes_out);
void dm_metrics_bytes_in(struct dm_metrics *m, uint64_t n);
void dm_metrics_handshake_ok(struct dm_metrics *m);
void dm_metrics_handshake_failed(struct dm_metrics *m, enum dm_tls_fail reason);
void dm_metrics_refused(struct dm_metrics *m, enum dm_refuse reason);

/* dm_metrics_format appends every data-plane metric, summed over workers, to
 * out in the Prometheus text format; active_conns is the current number of
 * open client connections. Returns 0, or -1 if out of memory. */
int dm_metrics_format(struct evbuffer *out, long active_conns);

/* dm_metrics_write_sample appends one sample line "name{labels} value\n" to
 * out; labels is NULL or alternating names and values, num_labels pairs,
 * values escaped as the text format requires (backslash, quote, newline).
 * A pure helper, shared with the admin API and tested on its own. */
int dm_metrics_write_sample(struct evbuffer *out, const char *name, const char *const *labels,
                            size_t num_labels, double value);

/* dm_metrics_write_header appends "# HELP name help" and "# TYPE name type". */
int dm_metrics_write_header(struct evbuffer *out, const char *name, const char *type,
                            const char *help);

#endif
