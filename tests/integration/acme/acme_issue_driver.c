/* acme_issue_driver: issues one certificate from a live ACME CA (Pebble in
 * tests) with the client core alone: acme_client + acme_account +
 * acme_order on one event_base, and a tiny http-01 responder on
 * 127.0.0.1:<port> answering /.well-known/acme-challenge/<token> from the
 * solver registry (acme_http01_lookup), as the proxy's plain-HTTP port does.
 * tls-alpn-01 is left to the proxy's own tests. Writes the chain and key and
 * prints timings (account, order, total) as key=value on stdout.
 *
 * usage: acme_issue_driver --dir URL --ca-file PEM --data-dir DIR --out-chain F
 *          --out-key F [--http-port 5002] [--email E] [--repeat N]
 *          [--preferred-chain CN] [--timeout-ms N] [--poll-first-ms N] [--verbose]
 *          NAME... */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "acme/account.h"
#include "acme/client.h"
#include "acme/order.h"
#include "acme/solver.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"
#include "proxy/core/log.h"
#include "proxy/core/time.h"

#define CHALLENGE_PREFIX "/.well-known/acme-challenge/"

static void http01_on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    const char *uri = evhttp_request_get_uri(req);
    char key_auth[512];
    size_t plen = strlen(CHALLENGE_PREFIX);
    int n = -1;
    if (uri != NULL && strncmp(uri, CHALLENGE_PREFIX, plen) == 0) {
        n = acme_http01_lookup(uri + plen, strlen(uri + plen), key_auth, sizeof(key_auth));
    }
    if (n < 0) {
        evhttp_send_error(req, 404, NULL);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, key_auth, (size_t)n);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/octet-stream");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

struct run {
    struct event_base *base;
    struct acme_client *c;
    struct acme_account *a;
    struct acme_order_opts oo;
    const char *out_chain, *out_key;
    int repeat, done_count;
    bool is_failed;
    uint64_t t_start, t_order;
    uint64_t order_us_total, order_us_min;
};

static void start_order(struct run *r);

static void on_order(const struct acme_order_result *res, const struct acme_problem *prob,
                     const struct dm_err *err, void *arg)
{
    struct run *r = arg;
    uint64_t us = dm_time_mono_us() - r->t_order;
    if (res == NULL) {
        fprintf(stderr, "order failed: %s (%s)\n", err->msg, prob->type);
        r->is_failed = true;
        event_base_loopbreak(r->base);
        return;
    }
    struct dm_err werr = {0};
    if (dm_file_write_atomic(r->out_chain, res->chain_pem, res->chain_len, 0644, &werr) != 0 ||
        dm_file_write_atomic(r->out_key, res->key_pem, res->key_len, 0600, &werr) != 0) {
        fprintf(stderr, "write: %s\n", werr.msg);
        r->is_failed = true;
        event_base_loopbreak(r->base);
        return;
    }
    printf("order=%d order_ms=%.1f authz_reused=%zu\n", r->done_count, us / 1000.0,
           res->num_authz_reused);
    r->order_us_total += us;
    if (r->order_us_min == 0 || us < r->order_us_min) {
        r->order_us_min = us;
    }
    if (++r->done_count < r->repeat) {
        start_order(r);
        return;
    }
    event_base_loopbreak(r->base);
}

static void start_order(struct run *r)
{
    struct dm_err err = {0};
    r->t_order = dm_time_mono_us();
    if (acme_order_start(r->c, r->a, &r->oo, on_order, r, &err) == NULL) {
        fprintf(stderr, "order start: %s\n", err.msg);
        r->is_failed = true;
        event_base_loopbreak(r->base);
    }
}

static void on_account(struct acme_account *a, const struct acme_problem *prob,
                       const struct dm_err *err, void *arg)
{
    (void)a;
    struct run *r = arg;
    if (prob != NULL) {
        fprintf(stderr, "account failed: %s\n", err->msg);
        r->is_failed = true;
        event_base_loopbreak(r->base);
        return;
    }
    printf("account_ms=%.1f\n", (dm_time_mono_us() - r->t_start) / 1000.0);
    start_order(r);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"dir", required_argument, NULL, 'd'},
                                             {"ca-file", required_argument, NULL, 'c'},
                                             {"data-dir", required_argument, NULL, 'D'},
                                             {"out-chain", required_argument, NULL, 'o'},
                                             {"out-key", required_argument, NULL, 'k'},
                                             {"http-port", required_argument, NULL, 'p'},
                                             {"email", required_argument, NULL, 'e'},
                                             {"repeat", required_argument, NULL, 'n'},
                                             {"preferred-chain", required_argument, NULL, 'P'},
                                             {"timeout-ms", required_argument, NULL, 't'},
                                             {"verbose", no_argument, NULL, 'v'},
                                             {"poll-first-ms", required_argument, NULL, 'f'},
                                             {NULL, 0, NULL, 0}};
    const char *dir = NULL, *ca_file = NULL, *data_dir = NULL, *email = NULL;
    struct run r = {.repeat = 1};
    int port = 5002, ch;
    bool is_verbose = false;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'd':
            dir = optarg;
            break;
        case 'c':
            ca_file = optarg;
            break;
        case 'D':
            data_dir = optarg;
            break;
        case 'o':
            r.out_chain = optarg;
            break;
        case 'k':
            r.out_key = optarg;
            break;
        case 'p':
            port = atoi(optarg);
            break;
        case 'e':
            email = optarg;
            break;
        case 'n':
            r.repeat = atoi(optarg);
            break;
        case 'P':
            r.oo.preferred_chain = optarg;
            break;
        case 't':
            r.oo.timeout_ms = (uint32_t)atoi(optarg);
            break;
        case 'v':
            is_verbose = true;
            break;
        case 'f':
            r.oo.poll_first_ms = (uint32_t)atoi(optarg);
            break;
        default:
            return 2;
        }
    }
    if (dir == NULL || data_dir == NULL || r.out_chain == NULL || r.out_key == NULL ||
        optind >= argc || r.repeat < 1) {
        fprintf(stderr,
                "usage: %s --dir URL --ca-file PEM --data-dir DIR --out-chain F "
                "--out-key F [--http-port N] [--email E] [--repeat N] NAME...\n",
                argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    dm_log_setup(is_verbose ? DM_LOG_DEBUG : DM_LOG_INFO, false, 2);
    r.base = event_base_new();
    struct evhttp *http = evhttp_new(r.base);
    if (evhttp_bind_socket(http, "127.0.0.1", (uint16_t)port) != 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d\n", port);
        return 1;
    }
    evhttp_set_gencb(http, http01_on_request, NULL);

    struct dm_err err = {0};
    struct acme_client_opts co = {.directory_url = dir, .ca_file = ca_file};
    r.c = acme_client_new(r.base, &co, &err);
    struct acme_account_opts ao = {.data_dir = data_dir, .email = email, .is_tos_agreed = true};
    r.a = r.c != NULL ? acme_account_open(r.c, &ao, &err) : NULL;
    if (r.a == NULL) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return 1;
    }
    /* http-01 only: tls-alpn-01 is answered by the proxy, tested there. */
    struct acme_solver solvers[] = {{acme_solver_builtin(ACME_CHALLENGE_HTTP01), NULL}};
    r.oo.names = (const char *const *)&argv[optind];
    r.oo.num_names = (size_t)(argc - optind);
    r.oo.solvers = solvers;
    r.oo.num_solvers = 1;
    r.t_start = dm_time_mono_us();
    if (acme_account_register_start(r.a, on_account, &r, &err) == NULL) {
        fprintf(stderr, "account: %s\n", err.msg);
        return 1;
    }
    event_base_dispatch(r.base);
    if (!r.is_failed) {
        printf("total_ms=%.1f orders=%d order_ms_avg=%.1f order_ms_min=%.1f\n",
               (dm_time_mono_us() - r.t_start) / 1000.0, r.done_count,
               r.order_us_total / 1000.0 / r.done_count, r.order_us_min / 1000.0);
    }
    acme_account_free(r.a);
    acme_client_free(r.c);
    evhttp_free(http);
    event_base_free(r.base);
    return r.is_failed ? 1 : 0;
}
