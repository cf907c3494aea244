/* Access log: one line per request, text or JSON lines, written with one
 * write(2) so workers never interleave. Separate from the error log. */
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "proxy/core/str.h"
#include "proxy/core/time.h"
#include "proxy/proxy_int.h"

void dm_access_log(const struct dm_stream *s)
{
    const struct dm_conn *c = s->c;
    dm_metrics_on_request(s);
    int fd = atomic_load_explicit(&dm_proxy_g.access_fd, memory_order_relaxed);
    if (fd < 0) {
        return;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (long)(tv.tv_usec / 1000));
    double ms = s->req_start_us ? (double)(dm_time_mono_us() - s->req_start_us) / 1000.0 : 0.0;
    const char *proto = s->h2_id != 0 ? "HTTP/2.0" : s->is_http10 ? "HTTP/1.0" : "HTTP/1.1";
    char line[2048];
    int n;
    /* The format is the connection's config's: a reload that changes it
     * applies to connections accepted afterwards. */
    enum cfg_log_format format = c->gen->cfg->access_log_format;
    if (format == CFG_LOG_COMMON) {
        /* NCSA common log format: client ident authuser [date] "request
         * line" status bytes. The format has no field for the Host: use
         * text or json for that. */
        static const char *const mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        char bytes[24] = "-";
        if (s->resp_bytes > 0) {
            snprintf(bytes, sizeof(bytes), "%llu", (unsigned long long)s->resp_bytes);
        }
        n = snprintf(line, sizeof(line),
                     "%s - - [%02d/%s/%04d:%02d:%02d:%02d +0000] \"%s %s %s\" %d %s\n", c->peer_ip,
                     tm.tm_mday, mon[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, s->method[0] ? s->method : "-", s->path[0] ? s->path : "-", proto,
                     s->status, bytes);
    } else if (format == CFG_LOG_JSON) {
        char m[64], h[600], p[1100];
        dm_str_json_escape(m, sizeof(m), s->method);
        dm_str_json_escape(h, sizeof(h), s->host);
        dm_str_json_escape(p, sizeof(p), s->path);
        n = snprintf(line, sizeof(line),
                     "{\"ts\":\"%s\",\"conn\":%llu,\"client\":\"%s\",\"tls\":%s,\"method\":\"%s\","
                     "\"host\":\"%s\",\"path\":\"%s\",\"proto\":\"%s\",\"status\":%d,"
                     "\"bytes\":%llu,\"duration_ms\":%.3f,\"backend\":\"%s\"}\n",
                     ts, (unsigned long long)c->id, c->peer_ip, c->ssl ? "true" : "false", m, h, p,
                     proto, s->status, (unsigned long long)s->resp_bytes, ms,
                     s->backend ? s->backend : "");
    } else {
        /* The path is printed as received; the parser already refused CTLs. */
        n = snprintf(line, sizeof(line),
                     "%s access c=%llu %s \"%s %s%s %s\" %d %llu %.3fms backend=%s\n", ts,
                     (unsigned long long)c->id, c->peer_ip, s->method[0] ? s->method : "-",
                     s->host[0] ? s->host : "-", s->path, proto, s->status,
                     (unsigned long long)s->resp_bytes, ms, s->backend ? s->backend : "-");
    }
    if (n <= 0) {
        return;
    }
    size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    ssize_t w = write(fd, line, len);
    (void)w;
}
