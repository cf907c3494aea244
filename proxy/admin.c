/* The admin API server: HTTP/1.1 on the control thread's loop, one request
 * per connection (answered with Connection: close), parsed by the same strict
 * parser as client requests. Every connection is bounded in size
 * (DM_ADMIN_MAX_HEAD + DM_ADMIN_MAX_BODY), time (DM_ADMIN_TIMEOUT_MS) and
 * number (DM_ADMIN_MAX_CONNS). Endpoints: docs/operations.md. */
#include "proxy/admin.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/mem.h>

#include "acme/acme.h"
#include "config/config.h"
#include "proxy/admin_request.h"
#include "proxy/core/err.h"
#include "proxy/core/log.h"
#include "proxy/core/str.h"
#include "proxy/metrics.h"
#include "proxy/proxy.h"
#include "proxy/upgrade.h"

#define ADMIN_READ_CHUNK 65536

_Static_assert(DM_ADMIN_MAX_BODY == CFG_MAX_FILE_BYTES, "an admin body is at most one config");
#define ADMIN_BACKLOG 16

struct admin_listener {
    struct dm_admin *a; /* borrowed: the server it belongs to */
    struct event *ev;   /* owned */
    int fd;
    bool is_tcp;
};

struct admin_conn {
    struct dm_admin *a; /* borrowed */
    int fd;
    bool is_tcp;
    struct event *rev, *wev, *timer; /* owned */
    struct evbuffer *in, *out;       /* owned */
    bool has_head;
    size_t head_len; /* bytes of the request head */
    size_t body_len; /* Content-Length */
    bool responding; /* the answer is queued: only writing from now on */
    bool is_head;    /* HEAD request: answer without the body */
    struct admin_conn *prev, *next;
};

struct dm_admin {
    struct event_base *base; /* borrowed */
    struct dm_admin_hooks hooks;
    struct admin_listener lis[2]; /* [0] unix socket, [1] TCP */
    char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    bool owns_sock; /* we created sock_path: remove it at exit */
    dev_t sock_dev;
    ino_t sock_ino;
    struct admin_conn *conns; /* owned list */
    int num_conns;
    char *tcp_listen; /* owned: admin.listen the TCP listener is on, NULL if none */
};

/* Connections -------------------------------------------------------------- */

static void admin_conn_close(struct admin_conn *c)
{
    struct dm_admin *a = c->a;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        a->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    a->num_conns--;
    /* Parts may be NULL when accepting ran out of memory. */
    if (c->rev != NULL) {
        event_free(c->rev);
    }
    if (c->wev != NULL) {
        event_free(c->wev);
    }
    if (c->timer != NULL) {
        event_free(c->timer);
    }
    if (c->in != NULL) {
        evbuffer_free(c->in);
    }
    if (c->out != NULL) {
        evbuffer_free(c->out);
    }
    close(c->fd);
    free(c);
}

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 409:
        return "Conflict";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

/* admin_respond queues a complete answer and switches c to writing; the
 * connection closes once it is flushed. body may be NULL (empty). */
static void admin_respond(struct admin_conn *c, int status, const char *content_type,
                          const char *extra_headers, struct evbuffer *body)
{
    size_t len = body != NULL ? evbuffer_get_length(body) : 0;
    evbuffer_add_printf(c->out,
                        "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                        "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
                        status, status_text(status), content_type, len,
                        extra_headers != NULL ? extra_headers : "");
    if (body != NULL && !c->is_head) {
        evbuffer_add_buffer(c->out, body);
    }
    c->responding = true;
    event_del(c->rev);
    event_add(c->wev, NULL);
}

/* add_json_string appends s as a JSON string (with quotes) to out. */
static void add_json_string(struct evbuffer *out, const char *s)
{
    char buf[4096];
    dm_str_json_escape(buf, sizeof(buf), s);
    evbuffer_add_printf(out, "\"%s\"", buf);
}

/* admin_error answers {"error": msg} with status. */
static void admin_error(struct admin_conn *c, int status, const char *extra_headers,
                        const char *msg)
{
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        admin_respond(c, 500, "text/plain", NULL, NULL);
        return;
    }
    evbuffer_add(b, "{\"error\": ", 10);
    add_json_string(b, msg);
    evbuffer_add(b, "}\n", 2);
    admin_respond(c, status, "application/json", extra_headers, b);
    evbuffer_free(b);
}

static void admin_respond_text(struct admin_conn *c, int status, const char *content_type,
                               const char *text, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    if (b == NULL || evbuffer_add(b, text, len) != 0) {
        evbuffer_free(b);
        admin_respond(c, 500, "text/plain", NULL, NULL);
        return;
    }
    admin_respond(c, status, content_type, NULL, b);
    evbuffer_free(b);
}

/* admin_problems answers 400 with every validation problem. */
static void admin_problems(struct admin_conn *c, const struct cfg_problems *p, const char *what)
{
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        admin_respond(c, 500, "text/plain", NULL, NULL);
        return;
    }
    char msg[256];
    snprintf(msg, sizeof(msg), "%s refused (%zu problem%s); the running config is unchanged", what,
             p->num_items, p->num_items == 1 ? "" : "s");
    evbuffer_add(b, "{\"error\": ", 10);
    add_json_string(b, msg);
    evbuffer_add(b, ", \"problems\": [", 15);
    for (size_t i = 0; i < p->num_items; i++) {
        if (i > 0) {
            evbuffer_add(b, ", ", 2);
        }
        add_json_string(b, p->items[i]);
    }
    evbuffer_add(b, "]}\n", 3);
    admin_respond(c, 400, "application/json", NULL, b);
    evbuffer_free(b);
}

static void admin_generation(struct admin_conn *c, uint64_t gen)
{
    char body[96];
    int n = snprintf(body, sizeof(body), "{\"status\": \"ok\", \"generation\": %llu}\n",
                     (unsigned long long)gen);
    admin_respond_text(c, 200, "application/json", body, (size_t)n);
}

/* Endpoints ---------------------------------------------------------------- */

static void admin_get_config(struct admin_conn *c)
{
    struct cfg *cfg = c->a->hooks.config_get(c->a->hooks.arg);
    char *text = cfg_dump_redacted(cfg);
    cfg_unref(cfg);
    if (text == NULL) {
        admin_error(c, 500, NULL, "out of memory");
        return;
    }
    admin_respond_text(c, 200, "application/json", text, strlen(text));
    free(text);
}

static void admin_get_upstreams(struct admin_conn *c)
{
    struct evbuffer *b = evbuffer_new();
    struct cfg *cfg = c->a->hooks.config_get(c->a->hooks.arg);
    int rc = b != NULL ? dm_upstreams_json(b, cfg) : -1;
    cfg_unref(cfg);
    if (rc != 0) {
        if (b != NULL) {
            evbuffer_free(b);
        }
        admin_error(c, 500, NULL, "out of memory");
        return;
    }
    admin_respond(c, 200, "application/json", NULL, b);
    evbuffer_free(b);
}

static void admin_get_certificates(struct admin_conn *c)
{
    struct cfg *cfg = c->a->hooks.config_get(c->a->hooks.arg);
    struct dm_err err = {0};
    char *text = acme_certificates_json(cfg->data_dir, &err);
    cfg_unref(cfg);
    if (text == NULL) {
        admin_error(c, 500, NULL, err.msg);
        return;
    }
    admin_respond_text(c, 200, "application/json", text, strlen(text));
    free(text);
}

static void metrics_on_cert(const char *name, time_t not_after, void *arg)
{
    if (not_after > 0) {
        const char *l[] = {"name", name};
        dm_metrics_write_sample(arg, "doorman_certificate_not_after_seconds", l, 1,
                                (double)not_after);
    }
}

/* admin_write_ondemand appends the on-demand service's counters (the same
 * figures as its log summary); nothing without the service. */
static int admin_write_ondemand(struct evbuffer *b, struct acme_ondemand *od)
{
    if (od == NULL) {
        return 0;
    }
    struct acme_ondemand_stats st;
    acme_ondemand_stats(od, &st);
    const struct {
        const char *name, *type, *help;
        double value;
    } rows[] = {
        {"doorman_ondemand_orders_started_total", "counter",
         "On-demand certificate orders started.", (double)st.started},
        {"doorman_ondemand_orders_succeeded_total", "counter",
         "On-demand certificate orders that produced a certificate.", (double)st.succeeded},
        {"doorman_ondemand_orders_failed_total", "counter",
         "On-demand certificate orders that failed (the name is negatively cached).",
         (double)st.failed},
        {"doorman_ondemand_refused_total", "counter",
         "Names refused by the on-demand policy or a limit.", (double)st.refused},
        {"doorman_ondemand_loaded_total", "counter",
         "On-demand certificates loaded lazily from storage.", (double)st.loaded},
        {"doorman_ondemand_handshakes_waited_total", "counter",
         "Handshakes that waited for an on-demand certificate.", (double)st.waited},
        {"doorman_ondemand_handshakes_served_total", "counter",
         "Handshakes that waited and got their certificate.", (double)st.waited_got},
        {"doorman_ondemand_certificates", "gauge", "On-demand certificates held in memory.",
         (double)st.cached},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        rc |= dm_metrics_write_header(b, rows[i].name, rows[i].type, rows[i].help);
        rc |= dm_metrics_write_sample(b, rows[i].name, NULL, 0, rows[i].value);
    }
    return rc;
}

static void admin_get_metrics(struct admin_conn *c)
{
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        admin_error(c, 500, NULL, "out of memory");
        return;
    }
    int rc = dm_metrics_format(b, dm_proxy_active_conns());
    struct acme_order_stats st;
    acme_manager_order_stats(c->a->hooks.mgr, &st);
    rc |= dm_metrics_write_header(b, "doorman_acme_orders_started_total", "counter",
                                  "ACME orders sent to a CA.");
    rc |= dm_metrics_write_sample(b, "doorman_acme_orders_started_total", NULL, 0,
                                  (double)st.started);
    rc |= dm_metrics_write_header(b, "doorman_acme_orders_succeeded_total", "counter",
                                  "ACME orders that produced a certificate.");
    rc |= dm_metrics_write_sample(b, "doorman_acme_orders_succeeded_total", NULL, 0,
                                  (double)st.succeeded);
    rc |= dm_metrics_write_header(b, "doorman_acme_orders_failed_total", "counter",
                                  "ACME orders that failed or could not start.");
    rc |=
        dm_metrics_write_sample(b, "doorman_acme_orders_failed_total", NULL, 0, (double)st.failed);
    rc |= admin_write_ondemand(b, acme_manager_ondemand(c->a->hooks.mgr));
    rc |= dm_metrics_write_header(b, "doorman_certificate_not_after_seconds", "gauge",
                                  "Expiry (Unix time) of the certificate serving each name.");
    acme_manager_foreach_cert(c->a->hooks.mgr, metrics_on_cert, b);
    struct cfg *cfg = c->a->hooks.config_get(c->a->hooks.arg);
    rc |= dm_metrics_write_header(b, "doorman_config_generation", "gauge",
                                  "Generation number of the running config.");
    rc |= dm_metrics_write_sample(b, "doorman_config_generation", NULL, 0, (double)cfg->generation);
    rc |= dm_metrics_write_header(b, "doorman_workers", "gauge", "Worker threads.");
    rc |= dm_metrics_write_sample(b, "doorman_workers", NULL, 0, (double)dm_workers_count());
    rc |= dm_upstreams_metrics(b, cfg);
    cfg_unref(cfg);
    if (rc != 0) {
        evbuffer_free(b);
        admin_error(c, 500, NULL, "out of memory");
        return;
    }
    admin_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b);
    evbuffer_free(b);
}

static void admin_post_load(struct admin_conn *c, const struct dm_admin_request *r,
                            const char *body)
{
    char name[1024] = "POST /load";
    if (r->config_path != NULL) {
        if (r->config_path_len == 0 || r->config_path[0] != '/' ||
            r->config_path_len >= sizeof(name)) {
            admin_error(c, 400, NULL,
                        "Doorman-Config-Path must be an absolute path (under 1024 bytes)");
            return;
        }
        memcpy(name, r->config_path, r->config_path_len);
        name[r->config_path_len] = '\0';
    }
    struct cfg_problems problems = {0};
    struct cfg *next =
        cfg_load_string(body, c->body_len, name, c->a->hooks.data_dir_override, &problems);
    if (next == NULL) {
        dm_log(DM_LOG_WARN, "admin", "POST /load refused: %zu problem%s%s%s", problems.num_items,
               problems.num_items == 1 ? "" : "s", problems.num_items > 0 ? ", first: " : "",
               problems.num_items > 0 ? problems.items[0] : "");
        admin_problems(c, &problems, "config");
        cfg_problems_cleanup(&problems);
        return;
    }
    struct dm_err err = {0};
    if (c->a->hooks.apply(c->a->hooks.arg, next, &err) != 0) {
        uint64_t gen = next->generation;
        cfg_unref(next);
        char msg[DM_ERR_MSG_MAX + 64];
        snprintf(msg, sizeof(msg),
                 "%s (generation %llu not applied; the running config is "
                 "unchanged)",
                 err.msg, (unsigned long long)gen);
        admin_error(c, 400, NULL, msg);
        return;
    }
    uint64_t gen = next->generation;
    cfg_unref(next);
    dm_log(DM_LOG_INFO, "reload", "config from POST /load (%s) applied (generation %llu)", name,
           (unsigned long long)gen);
    admin_generation(c, gen);
}

static void admin_post_reload(struct admin_conn *c)
{
    uint64_t gen = 0;
    struct cfg_problems problems = {0};
    struct dm_err err = {0};
    if (c->a->hooks.reload_file(c->a->hooks.arg, &gen, &problems, &err) == 0) {
        admin_generation(c, gen);
    } else if (problems.num_items > 0) {
        admin_problems(c, &problems, "config file");
    } else {
        admin_error(c, 400, NULL, err.msg);
    }
    cfg_problems_cleanup(&problems);
}

static void admin_post_upgrade(struct admin_conn *c)
{
    struct dm_err err = {0};
    if (c->a->hooks.upgrade == NULL || c->a->hooks.upgrade(c->a->hooks.arg, &err) != 0) {
        admin_error(c, 409, NULL, c->a->hooks.upgrade == NULL ? "not supported" : err.msg);
        return;
    }
    static const char body[] = "{\"status\": \"upgrading\"}\n";
    admin_respond_text(c, 202, "application/json", body, sizeof(body) - 1);
}

/* admin_token_ok checks the request's bearer token against the running
 * config's admin.token in constant time. */
static bool admin_token_ok(struct admin_conn *c, const struct dm_admin_request *r)
{
    struct cfg *cfg = c->a->hooks.config_get(c->a->hooks.arg);
    const char *token = cfg->admin.token;
    bool ok = token != NULL && r->bearer != NULL && r->bearer_len == strlen(token) &&
              CRYPTO_memcmp(r->bearer, token, r->bearer_len) == 0;
    cfg_unref(cfg);
    return ok;
}

static bool path_is(const char *path, size_t len, const char *lit)
{
    return len == strlen(lit) && memcmp(path, lit, len) == 0;
}

static void admin_dispatch(struct admin_conn *c)
{
    size_t total = c->head_len + c->body_len;
    const char *data = (const char *)evbuffer_pullup(c->in, (ssize_t)total);
    if (data == NULL) {
        admin_error(c, 500, NULL, "out of memory");
        return;
    }
    /* Parse again over the now contiguous request: fields point into it. */
    struct dm_admin_request r;
    if (dm_admin_request_parse(&r, data, c->head_len) != (ssize_t)c->head_len) {
        admin_error(c, 400, NULL, "bad request");
        return;
    }
    if (c->is_tcp && !admin_token_ok(c, &r)) {
        admin_error(c, 401, "WWW-Authenticate: Bearer\r\n",
                    "missing or wrong bearer token (Authorization: Bearer TOKEN)");
        return;
    }
    const char *path = r.path;
    size_t path_len = r.path_len;
    c->is_head = dm_str_ieq_lit(r.method, r.method_len, "HEAD");
    bool is_get = c->is_head || dm_str_ieq_lit(r.method, r.method_len, "GET");
    bool is_post = dm_str_ieq_lit(r.method, r.method_len, "POST");
    const char *want = NULL; /* the method the endpoint needs, if it exists */
    if (path_is(path, path_len, "/healthz")) {
        want = "GET";
        if (is_get) {
            admin_respond_text(c, 200, "text/plain; charset=utf-8", "ok\n", 3);
            return;
        }
    } else if (path_is(path, path_len, "/config")) {
        want = "GET";
        if (is_get) {
            admin_get_config(c);
            return;
        }
    } else if (path_is(path, path_len, "/certificates")) {
        want = "GET";
        if (is_get) {
            admin_get_certificates(c);
            return;
        }
    } else if (path_is(path, path_len, "/upstreams")) {
        want = "GET";
        if (is_get) {
            admin_get_upstreams(c);
            return;
        }
    } else if (path_is(path, path_len, "/metrics")) {
        want = "GET";
        if (is_get) {
            admin_get_metrics(c);
            return;
        }
    } else if (path_is(path, path_len, "/load")) {
        want = "POST";
        if (is_post) {
            admin_post_load(c, &r, data + c->head_len);
            return;
        }
    } else if (path_is(path, path_len, "/reload")) {
        want = "POST";
        if (is_post) {
            admin_post_reload(c);
            return;
        }
    } else if (path_is(path, path_len, "/upgrade")) {
        want = "POST";
        if (is_post) {
            admin_post_upgrade(c);
            return;
        }
    }
    char msg[160];
    if (want == NULL) {
        snprintf(msg, sizeof(msg),
                 "no such endpoint; try GET /healthz, /config, /certificates, "
                 "/upstreams, /metrics or POST /load, /reload, /upgrade");
        admin_error(c, 404, NULL, msg);
        return;
    }
    char allow[64];
    snprintf(allow, sizeof(allow), "Allow: %s\r\n", strcmp(want, "GET") == 0 ? "GET, HEAD" : want);
    snprintf(msg, sizeof(msg), "method not allowed: use %s", want);
    admin_error(c, 405, allow, msg);
}

/* admin_process parses the head once it is complete, then waits for the
 * whole body before dispatching. */
static void admin_process(struct admin_conn *c)
{
    size_t len = evbuffer_get_length(c->in);
    if (!c->has_head) {
        size_t want = len < DM_ADMIN_MAX_HEAD ? len : DM_ADMIN_MAX_HEAD;
        const char *data = (const char *)evbuffer_pullup(c->in, (ssize_t)want);
        struct dm_admin_request r;
        ssize_t n = data != NULL ? dm_admin_request_parse(&r, data, want) : DM_PARSE_AGAIN;
        if (n == DM_PARSE_AGAIN) {
            return;
        }
        if (n == DM_PARSE_ERROR) {
            admin_error(c, r.error_status, NULL, r.error);
            return;
        }
        c->has_head = true;
        c->head_len = r.head_len;
        c->body_len = r.body_len;
    }
    if (len < c->head_len + c->body_len) {
        return;
    }
    admin_dispatch(c);
}

static void admin_conn_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct admin_conn *c = arg;
    int n = evbuffer_read(c->in, fd, ADMIN_READ_CHUNK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        return;
    }
    if (n <= 0) {
        admin_conn_close(c);
        return;
    }
    admin_process(c);
}

static void admin_conn_on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct admin_conn *c = arg;
    while (evbuffer_get_length(c->out) > 0) {
        int n = evbuffer_write(c->out, fd);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        if (n <= 0) {
            admin_conn_close(c);
            return;
        }
    }
    admin_conn_close(c);
}

static void admin_conn_on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct admin_conn *c = arg;
    if (c->responding) {
        admin_conn_close(c); /* the client does not read its answer */
        return;
    }
    admin_error(c, 408, NULL, "request not complete in time");
    struct timeval tv = {.tv_sec = 1};
    evtimer_add(c->timer, &tv);
}

static void admin_on_accept(evutil_socket_t lfd, short what, void *arg)
{
    (void)what;
    struct admin_listener *l = arg;
    struct dm_admin *a = l->a;
    for (int i = 0; i < 16; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return;
        }
        struct admin_conn *c = a->num_conns < DM_ADMIN_MAX_CONNS ? calloc(1, sizeof(*c)) : NULL;
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->a = a;
        c->fd = fd;
        c->is_tcp = l->is_tcp;
        c->in = evbuffer_new();
        c->out = evbuffer_new();
        c->rev = event_new(a->base, fd, EV_READ | EV_PERSIST, admin_conn_on_read, c);
        c->wev = event_new(a->base, fd, EV_WRITE | EV_PERSIST, admin_conn_on_write, c);
        c->timer = evtimer_new(a->base, admin_conn_on_timeout, c);
        c->next = a->conns;
        if (a->conns != NULL) {
            a->conns->prev = c;
        }
        a->conns = c;
        a->num_conns++;
        if (c->in == NULL || c->out == NULL || c->rev == NULL || c->wev == NULL ||
            c->timer == NULL) {
            admin_conn_close(c);
            continue;
        }
        /* One deadline for the whole request, head and body. */
        struct timeval tv = {.tv_sec = DM_ADMIN_TIMEOUT_MS / 1000,
                             .tv_usec = (DM_ADMIN_TIMEOUT_MS % 1000) * 1000};
        evtimer_add(c->timer, &tv);
        event_add(c->rev, NULL);
    }
}

/* Listeners ---------------------------------------------------------------- */

int dm_admin_sock_path(char *buf, size_t cap, const char *data_dir)
{
    size_t max = sizeof(((struct sockaddr_un *)0)->sun_path);
    int n = snprintf(buf, cap, "%s/%s", data_dir, DM_ADMIN_SOCK_NAME);
    return n > 0 && (size_t)n < cap && (size_t)n < max ? 0 : -1;
}

static int add_listener(struct dm_admin *a, int fd, bool is_tcp, struct dm_err *err)
{
    struct admin_listener *l = &a->lis[is_tcp ? 1 : 0];
    l->a = a;
    l->fd = fd;
    l->is_tcp = is_tcp;
    l->ev = event_new(a->base, fd, EV_READ | EV_PERSIST, admin_on_accept, l);
    if (l->ev == NULL || event_add(l->ev, NULL) != 0) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    return 0;
}

/* open_unix binds <data_dir>/admin.sock. Returns 0 (also when the socket is
 * skipped with a warning), or -1 with err. */
static int open_unix(struct dm_admin *a, const char *data_dir, struct dm_err *err)
{
    int inherited = dm_upgrade_take_fd(DM_UPGRADE_ENV_ADMIN);
    if (dm_admin_sock_path(a->sock_path, sizeof(a->sock_path), data_dir) != 0) {
        if (inherited >= 0) {
            close(inherited);
        }
        dm_log(DM_LOG_WARN, "admin",
               "data directory path too long for a unix socket: admin socket off");
        a->sock_path[0] = '\0';
        return 0;
    }
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    memcpy(sun.sun_path, a->sock_path, strlen(a->sock_path) + 1);
    if (inherited >= 0) {
        /* A binary upgrade hands the socket over: same file, same socket. */
        struct sockaddr_un bound;
        socklen_t len = sizeof(bound);
        struct stat st;
        if (getsockname(inherited, (struct sockaddr *)&bound, &len) == 0 &&
            strncmp(bound.sun_path, a->sock_path, sizeof(bound.sun_path)) == 0 &&
            stat(a->sock_path, &st) == 0) {
            fcntl(inherited, F_SETFL, fcntl(inherited, F_GETFL) | O_NONBLOCK);
            a->owns_sock = true;
            a->sock_dev = st.st_dev;
            a->sock_ino = st.st_ino;
            return add_listener(a, inherited, false, err);
        }
        close(inherited);
    }
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
        close(probe);
        dm_log(DM_LOG_WARN, "admin",
               "%s: another process answers on it (a second doorman on this data "
               "directory?): admin socket off",
               a->sock_path);
        return 0;
    }
    if (probe >= 0) {
        close(probe);
    }
    if (unlink(a->sock_path) != 0 && errno != ENOENT) {
        dm_err_set_errno(err, errno, "admin socket %s", a->sock_path);
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        dm_err_set_errno(err, errno, "admin socket");
        return -1;
    }
    /* Workers create no files, so narrowing the process umask around bind
     * is safe; the socket is never reachable with wider permissions. */
    mode_t old = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
    int e = errno;
    umask(old);
    struct stat st;
    if (rc != 0 || chmod(a->sock_path, 0600) != 0 || listen(fd, ADMIN_BACKLOG) != 0 ||
        stat(a->sock_path, &st) != 0) {
        e = rc != 0 ? e : errno;
        close(fd);
        dm_err_set_errno(err, e, "admin socket %s", a->sock_path);
        return -1;
    }
    a->owns_sock = true;
    a->sock_dev = st.st_dev;
    a->sock_ino = st.st_ino;
    if (add_listener(a, fd, false, err) != 0) {
        close(fd);
        return -1;
    }
    return 0;
}

static int open_tcp(struct dm_admin *a, const struct cfg *cfg, struct dm_err *err)
{
    const struct cfg_admin *ad = &cfg->admin;
    int fd = socket(ad->listen_ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        dm_err_set_errno(err, errno, "admin listen %s", ad->listen);
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&ad->listen_ss, ad->listen_len) != 0 ||
        listen(fd, ADMIN_BACKLOG) != 0) {
        int e = errno;
        close(fd);
        dm_err_set_errno(err, e, "admin.listen: cannot listen on %s", ad->listen);
        return -1;
    }
    if (add_listener(a, fd, true, err) != 0) {
        close(fd);
        return -1;
    }
    free(a->tcp_listen);
    a->tcp_listen = strdup(ad->listen);
    return 0;
}

static void close_listener(struct admin_listener *l)
{
    if (l->ev != NULL) {
        event_free(l->ev);
        l->ev = NULL;
    }
    if (l->fd >= 0) {
        close(l->fd);
        l->fd = -1;
    }
}

int dm_admin_apply(struct dm_admin *a, const struct cfg *next, struct dm_err *err)
{
    if (a == NULL) {
        return 0;
    }
    const char *want = next->admin.listen;
    const char *have = a->tcp_listen;
    if ((want == NULL && have == NULL) ||
        (want != NULL && have != NULL && strcmp(want, have) == 0)) {
        return 0;
    }
    /* Open the new address before closing the old one: a failure keeps the
     * running listener, and a client of the old address never finds the
     * API gone without a replacement. Connections already accepted finish. */
    struct admin_listener old = a->lis[1];
    a->lis[1] = (struct admin_listener){.fd = -1};
    if (want != NULL && open_tcp(a, next, err) != 0) {
        a->lis[1] = old;
        return -1;
    }
    close_listener(&old);
    if (want == NULL) {
        free(a->tcp_listen);
        a->tcp_listen = NULL;
    }
    dm_log(DM_LOG_INFO, "admin", "admin API TCP listener %s%s", want ? "now on " : "closed",
           want ? want : "");
    return 0;
}

struct dm_admin *dm_admin_start(struct event_base *base, const struct cfg *cfg,
                                const struct dm_admin_hooks *hooks, struct dm_err *err)
{
    if (!cfg->admin.enabled) {
        return NULL;
    }
    struct dm_admin *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    a->base = base;
    a->hooks = *hooks;
    a->lis[0].fd = a->lis[1].fd = -1;
    if (open_unix(a, cfg->data_dir, err) != 0 ||
        (cfg->admin.listen != NULL && open_tcp(a, cfg, err) != 0)) {
        dm_admin_free(a);
        return NULL;
    }
    dm_log(DM_LOG_INFO, "admin", "admin API on %s%s%s", a->owns_sock ? a->sock_path : "(no socket)",
           cfg->admin.listen != NULL ? " and " : "",
           cfg->admin.listen != NULL ? cfg->admin.listen : "");
    return a;
}

int dm_admin_unix_fd(const struct dm_admin *a)
{
    return a != NULL && a->lis[0].ev != NULL ? a->lis[0].fd : -1;
}

void dm_admin_disown(struct dm_admin *a)
{
    if (a != NULL) {
        a->owns_sock = false;
    }
}

void dm_admin_free(struct dm_admin *a)
{
    if (a == NULL) {
        return;
    }
    while (a->conns != NULL) {
        admin_conn_close(a->conns);
    }
    for (int i = 0; i < 2; i++) {
        close_listener(&a->lis[i]);
    }
    free(a->tcp_listen);
    /* Remove the file only if it is still ours (not a newer process's). */
    struct stat st;
    if (a->owns_sock && stat(a->sock_path, &st) == 0 && st.st_dev == a->sock_dev &&
        st.st_ino == a->sock_ino) {
        unlink(a->sock_path);
    }
    free(a);
}
