/* The admin API's request head (see admin_request.h): the client request
 * parser with the admin's own limits, then the few fields it acts on. */
#include "proxy/admin_request.h"

#include <string.h>

#include "proxy/core/err.h"
#include "proxy/core/str.h"
#include "proxy/http1_parse.h"

#define ADMIN_MAX_FIELDS 64
#define ADMIN_MAX_LINE   8192

static ssize_t fail(struct dm_admin_request *r, int status, const char *why)
{
    r->error_status = status;
    r->error = why;
    return DM_PARSE_ERROR;
}

ssize_t dm_admin_request_parse(struct dm_admin_request *r, const char *buf, size_t len)
{
    memset(r, 0, sizeof(*r));
    struct dm_http1_header fields[ADMIN_MAX_FIELDS];
    struct dm_http1_msg m = {.headers = fields};
    struct dm_http1_parser p;
    struct dm_http1_limits lim = {ADMIN_MAX_LINE, ADMIN_MAX_FIELDS, DM_ADMIN_MAX_HEAD};
    size_t want = len < DM_ADMIN_MAX_HEAD ? len : DM_ADMIN_MAX_HEAD;
    dm_http1_parser_init(&p);
    ssize_t n = dm_http1_parse_request(&p, &m, buf, want, &lim);
    if (n == DM_PARSE_AGAIN) {
        return want >= DM_ADMIN_MAX_HEAD ? fail(r, 431, "request head too large") : n;
    }
    if (n == DM_PARSE_ERROR) {
        return fail(r, m.error_status ? m.error_status : 400, m.error ? m.error : "bad request");
    }
    if (m.body == DM_HTTP1_BODY_CHUNKED) {
        return fail(r, 411, "send the body with Content-Length");
    }
    if (m.body == DM_HTTP1_BODY_LENGTH && m.content_length > DM_ADMIN_MAX_BODY) {
        return fail(r, 413, "body larger than a config may be (4 MiB)");
    }
    r->method = m.method;
    r->method_len = m.method_len;
    r->path = m.target;
    const char *q = memchr(m.target, '?', m.target_len);
    r->path_len = q != NULL ? (size_t)(q - m.target) : m.target_len;
    for (size_t i = 0; i < m.num_headers; i++) {
        const struct dm_http1_header *h = &m.headers[i];
        if (dm_str_ieq_lit(h->name, h->name_len, "authorization") && h->value_len > 7 &&
            dm_str_ieq(h->value, 7, "bearer ", 7)) {
            r->bearer = h->value + 7;
            r->bearer_len = h->value_len - 7;
        } else if (dm_str_ieq_lit(h->name, h->name_len, "doorman-config-path")) {
            r->config_path = h->value;
            r->config_path_len = h->value_len;
        }
    }
    r->head_len = (size_t)n;
    r->body_len = m.body == DM_HTTP1_BODY_LENGTH ? (size_t)m.content_length : 0;
    return n;
}
