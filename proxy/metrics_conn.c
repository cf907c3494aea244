/* The data plane's metric hooks that need a connection's context: which
 * worker's block, which site, how long the request took. conn.c and
 * access_log.c call these with one line each. */
#include <openssl/ssl.h>

#include "proxy/core/time.h"
#include "proxy/metrics.h"
#include "proxy/proxy_int.h"

void dm_metrics_on_request(const struct dm_stream *s)
{
    const struct dm_conn *c = s->c;
    uint16_t site = DM_METRICS_SITE_NONE;
    if (s->site != NULL && c->gen != NULL) {
        site = c->gen->site_metric[s->site - c->gen->cfg->sites];
    }
    uint64_t us = s->req_start_us ? dm_time_mono_us() - s->req_start_us : 0;
    dm_metrics_request(c->w->metrics, site, s->status, us, s->resp_bytes);
}

void dm_metrics_on_handshake(const struct dm_conn *c, bool is_ok, int ssl_error)
{
    if (is_ok) {
        dm_metrics_handshake_ok(c->w->metrics);
    } else {
        dm_metrics_handshake_failed(c->w->metrics, dm_tls_fail_reason(ssl_error));
    }
}

void dm_metrics_on_timer(const struct dm_conn *c)
{
    if (c->state == DM_CONN_HANDSHAKE) {
        dm_metrics_handshake_failed(c->w->metrics, DM_TLS_FAIL_TIMEOUT);
    }
}
