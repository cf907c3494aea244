/* Unit tests for config/: loading, defaults, every validation message with its
 * path, addresses, host names, durations, cfg_from_quick, cfg_dump round
 * trips, refcounting and host matching. Offline and deterministic: files live
 * in a private temporary directory; the environment is set per test. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config/config.h"
#include "harness.h"
#include "proxy/core/log.h"

#define DATA_DIR "/tmp/dm-test-data"

/* A site that is valid on its own, to append to root-level test fragments. */
#define SITE_OK "\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:9080\"}]"

static struct cfg_problems probs;
static char tmp_dir[64];

static void print_problems(void)
{
    fprintf(stderr, "  problems (%zu):\n", probs.num_items);
    for (size_t i = 0; i < probs.num_items; i++) {
        fprintf(stderr, "    %s\n", probs.items[i]);
    }
}

static struct cfg *load(const char *json)
{
    cfg_problems_cleanup(&probs);
    return cfg_load_string(json, strlen(json), "test.json", DATA_DIR, &probs);
}

static struct cfg *load_as(const char *json, const char *name, const char *data_dir_override)
{
    cfg_problems_cleanup(&probs);
    return cfg_load_string(json, strlen(json), name, data_dir_override, &probs);
}

static struct cfg *quick(const struct cfg_quick *q)
{
    cfg_problems_cleanup(&probs);
    return cfg_from_quick(q, &probs);
}

static bool has_problem(const char *exact)
{
    for (size_t i = 0; i < probs.num_items; i++) {
        if (strcmp(probs.items[i], exact) == 0) {
            return true;
        }
    }
    fprintf(stderr, "  missing problem: %s\n", exact);
    print_problems();
    return false;
}

#define CHECK_PROBLEM(s) CHECK(has_problem(s))

/* expect_bad loads json, expects failure with exactly one problem: want. */
static void expect_bad(const char *json, const char *want, int line)
{
    struct cfg *c = load(json);
    harness_checks++;
    if (c != NULL || probs.num_items != 1 || strcmp(probs.items[0], want) != 0) {
        harness_failures++;
        fprintf(stderr, "%s:%d: %s: expected exactly: %s\n", __FILE__, line, harness_current, want);
        print_problems();
    }
    cfg_unref(c);
}

/* expect_bad2 is expect_bad for exactly two problems, in order. */
static void expect_bad2(const char *json, const char *want1, const char *want2, int line)
{
    struct cfg *c = load(json);
    harness_checks++;
    if (c != NULL || probs.num_items != 2 || strcmp(probs.items[0], want1) != 0 ||
        strcmp(probs.items[1], want2) != 0) {
        harness_failures++;
        fprintf(stderr, "%s:%d: %s: expected exactly: %s, then: %s\n", __FILE__, line,
                harness_current, want1, want2);
        print_problems();
    }
    cfg_unref(c);
}

#define EXPECT_BAD(json, want)      expect_bad(json, want, __LINE__)
#define EXPECT_BAD_ROOT(frag, want) expect_bad("{" frag ", " SITE_OK "}", want, __LINE__)
#define EXPECT_BAD_SITE(site, want) expect_bad("{\"sites\": [" site "]}", want, __LINE__)

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f != NULL) {
        fputs(text, f);
        fclose(f);
    }
}

/* cfg_equal compares two snapshots field by field (not refs/generation). */
static bool str_eq(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static bool addr_eq(const struct cfg_addr *a, const struct cfg_addr *b)
{
    return a->kind == b->kind && str_eq(a->text, b->text) && str_eq(a->host, b->host) &&
           a->port == b->port && str_eq(a->path, b->path) && a->ss_len == b->ss_len &&
           memcmp(&a->ss, &b->ss, a->ss_len) == 0;
}

static bool cfg_equal(const struct cfg *a, const struct cfg *b)
{
    if (!str_eq(a->data_dir, b->data_dir) || !str_eq(a->bind, b->bind) ||
        a->https_port != b->https_port || a->http_port != b->http_port ||
        a->redirect_http != b->redirect_http || a->workers != b->workers ||
        memcmp(&a->timeouts, &b->timeouts, sizeof(a->timeouts)) != 0 ||
        memcmp(&a->limits, &b->limits, sizeof(a->limits)) != 0 ||
        a->num_trusted_proxies != b->num_trusted_proxies || a->log_level != b->log_level ||
        a->log_format != b->log_format || !str_eq(a->access_log, b->access_log) ||
        a->access_log_format != b->access_log_format ||
        a->local_lifetime_s != b->local_lifetime_s || a->num_sites != b->num_sites) {
        return false;
    }
    for (size_t i = 0; i < a->num_trusted_proxies; i++) {
        if (a->trusted_proxies[i].prefix != b->trusted_proxies[i].prefix ||
            memcmp(&a->trusted_proxies[i].net, &b->trusted_proxies[i].net,
                   sizeof(struct sockaddr_storage)) != 0) {
            return false;
        }
    }
    for (size_t i = 0; i < a->num_sites; i++) {
        const struct cfg_site *x = &a->sites[i], *y = &b->sites[i];
        if (x->num_hosts != y->num_hosts || x->num_to != y->num_to || x->tls != y->tls ||
            !str_eq(x->cert_file, y->cert_file) || !str_eq(x->key_file, y->key_file)) {
            return false;
        }
        for (size_t j = 0; j < x->num_hosts; j++) {
            if (!str_eq(x->hosts[j], y->hosts[j])) {
                return false;
            }
        }
        for (size_t j = 0; j < x->num_to; j++) {
            if (!addr_eq(&x->to[j], &y->to[j]) || x->to_opts[j].weight != y->to_opts[j].weight ||
                x->to_opts[j].max_connections != y->to_opts[j].max_connections) {
                return false;
            }
        }
        const struct cfg_upstream *ux = &x->upstream, *uy = &y->upstream;
        if (ux->policy != uy->policy || !str_eq(ux->cookie, uy->cookie) ||
            ux->retries != uy->retries || ux->retry_timeout_ms != uy->retry_timeout_ms ||
            ux->max_connections != uy->max_connections ||
            ux->queue_timeout_ms != uy->queue_timeout_ms ||
            !str_eq(ux->health.path, uy->health.path) ||
            !str_eq(ux->health.host, uy->health.host) ||
            ux->health.interval_ms != uy->health.interval_ms ||
            ux->health.timeout_ms != uy->health.timeout_ms ||
            ux->health.status_min != uy->health.status_min ||
            ux->health.status_max != uy->health.status_max ||
            ux->health.fails != uy->health.fails || ux->health.passes != uy->health.passes ||
            memcmp(&ux->passive, &uy->passive, sizeof(ux->passive)) != 0) {
            return false;
        }
    }
    return true;
}

/* round_trip checks that loading cfg_dump(c) gives a snapshot equal to c. */
static void round_trip(const struct cfg *c)
{
    char *text = cfg_dump(c);
    CHECK(text != NULL);
    if (text == NULL) {
        return;
    }
    cfg_problems_cleanup(&probs);
    struct cfg *again = cfg_load_string(text, strlen(text), "dump.json", NULL, &probs);
    CHECK(again != NULL);
    if (again == NULL) {
        fprintf(stderr, "%s\n", text);
        print_problems();
    } else {
        CHECK(cfg_equal(c, again));
        /* And the dump is a fixed point. */
        char *text2 = cfg_dump(again);
        CHECK(text2 != NULL && strcmp(text, text2) == 0);
        free(text2);
    }
    cfg_unref(again);
    free(text);
}

/* Tests ----------------------------------------------------------------------- */

TEST(test_minimal_defaults)
{
    struct cfg *c =
        load("{\"sites\": [{\"hosts\": [\"Example.TEST.\"], \"to\": \"127.0.0.1:8080\"}]}");
    CHECK(c != NULL);
    CHECK_EQ_INT(probs.num_items, 0);
    if (c == NULL) {
        print_problems();
        return;
    }
    CHECK_EQ_INT(atomic_load(&c->refs), 1);
    CHECK_STR(c->data_dir, DATA_DIR);
    CHECK_STR(c->bind, "::");
    CHECK_EQ_INT(c->https_port, 443);
    CHECK_EQ_INT(c->http_port, 80);
    CHECK(c->redirect_http);
    CHECK_EQ_INT(c->workers, 0);
    CHECK_EQ_INT(c->timeouts.handshake_ms, 10000);
    CHECK_EQ_INT(c->timeouts.header_ms, 10000);
    CHECK_EQ_INT(c->timeouts.idle_ms, 60000);
    CHECK_EQ_INT(c->timeouts.body_ms, 60000);
    CHECK_EQ_INT(c->timeouts.connect_ms, 5000);
    CHECK_EQ_INT(c->timeouts.response_ms, 60000);
    CHECK_EQ_INT(c->timeouts.shutdown_ms, 30000);
    CHECK_EQ_INT(c->limits.max_line, 8192);
    CHECK_EQ_INT(c->limits.max_headers, 100);
    CHECK_EQ_INT(c->limits.max_header_bytes, 65536);
    CHECK_EQ_INT(c->limits.max_connections, 0);
    CHECK_EQ_INT(c->num_trusted_proxies, 0);
    CHECK(c->trusted_proxies == NULL);
    CHECK_EQ_INT(c->log_level, DM_LOG_INFO);
    CHECK_EQ_INT(c->log_format, CFG_LOG_TEXT);
    CHECK_STR(c->access_log, "stderr");
    CHECK_EQ_INT(c->access_log_format, CFG_LOG_TEXT);
    CHECK_EQ_INT(c->local_lifetime_s, 7 * 24 * 3600);
    CHECK_EQ_INT(c->num_sites, 1);
    const struct cfg_site *s = &c->sites[0];
    CHECK_EQ_INT(s->num_hosts, 1);
    CHECK_STR(s->hosts[0], "example.test");
    CHECK_EQ_INT(s->num_to, 1);
    CHECK_EQ_INT(s->to[0].kind, CFG_ADDR_IP);
    CHECK_STR(s->to[0].text, "127.0.0.1:8080");
    CHECK_STR(s->to[0].host, "127.0.0.1");
    CHECK_EQ_INT(s->to[0].port, 8080);
    CHECK_EQ_INT(s->tls, CFG_TLS_LOCAL);
    CHECK(s->cert_file == NULL && s->key_file == NULL);
    cfg_unref(c);
}

TEST(test_full_config)
{
    char cert[128], key[128], json[4096];
    snprintf(cert, sizeof(cert), "%s/chain.pem", tmp_dir);
    snprintf(key, sizeof(key), "%s/key.pem", tmp_dir);
    write_file(cert, "not parsed here\n");
    write_file(key, "not parsed here\n");
    snprintf(json, sizeof(json),
             "{\n"
             "  \"data_dir\": \"/srv/doorman/\",\n"
             "  \"bind\": \"0.0.0.0\",\n"
             "  \"https_port\": 8443,\n"
             "  \"http_port\": 0,\n"
             "  \"redirect_http\": false,\n"
             "  \"workers\": 4,\n"
             "  \"timeouts\": {\"handshake\": \"250ms\", \"header\": \"2s\", \"idle\": \"5m\",\n"
             "               \"body\": \"1h\", \"connect\": \"1s\", \"response\": \"24h\",\n"
             "               \"shutdown\": \"1h\"},\n"
             "  \"limits\": {\"request_line\": 4096, \"header_count\": 50,\n"
             "             \"header_bytes\": 4096, \"max_connections\": 10000},\n"
             "  \"trusted_proxies\": [\"10.1.2.3/8\", \"::1/128\", \"127.0.0.1\", "
             "\"2001:db8::1/32\"],\n"
             "  \"log\": {\"level\": \"debug\", \"format\": \"json\", \"access\": "
             "\"/var/log/doorman/access.log\", \"access_format\": \"json\"},\n"
             "  \"local_ca\": {\"lifetime\": \"90d\"},\n"
             "  \"sites\": [\n"
             "    {\"hosts\": [\"example.test\", \"*.Example.test\"], \"to\": \"127.0.0.1:8080\", "
             "\"tls\": \"local\"},\n"
             "    {\"hosts\": [\"files.test\", \"[2001:DB8::0:1]\", \"192.0.2.7\"],\n"
             "     \"to\": [\"[::1]:8081\", \"unix:/run/app.sock\", \"App.Internal:8080\"],\n"
             "     \"tls\": {\"cert\": \"%s\", \"key\": \"%s\"}}\n"
             "  ]\n"
             "}\n",
             cert, key);
    struct cfg *c = load_as(json, "test.json", NULL); /* an override would win over data_dir */
    CHECK(c != NULL);
    if (c == NULL) {
        print_problems();
        return;
    }
    CHECK_STR(c->data_dir, "/srv/doorman");
    CHECK_STR(c->bind, "0.0.0.0");
    CHECK_EQ_INT(c->https_port, 8443);
    CHECK_EQ_INT(c->http_port, 0);
    CHECK(!c->redirect_http);
    CHECK_EQ_INT(c->workers, 4);
    CHECK_EQ_INT(c->timeouts.handshake_ms, 250);
    CHECK_EQ_INT(c->timeouts.header_ms, 2000);
    CHECK_EQ_INT(c->timeouts.idle_ms, 300000);
    CHECK_EQ_INT(c->timeouts.body_ms, 3600000);
    CHECK_EQ_INT(c->timeouts.connect_ms, 1000);
    CHECK_EQ_INT(c->timeouts.response_ms, 86400000);
    CHECK_EQ_INT(c->timeouts.shutdown_ms, 3600000);
    CHECK_EQ_INT(c->limits.max_line, 4096);
    CHECK_EQ_INT(c->limits.max_headers, 50);
    CHECK_EQ_INT(c->limits.max_header_bytes, 4096);
    CHECK_EQ_INT(c->limits.max_connections, 10000);
    CHECK_EQ_INT(c->num_trusted_proxies, 4);
    if (c->num_trusted_proxies == 4) {
        const struct sockaddr_in *p0 = (const struct sockaddr_in *)&c->trusted_proxies[0].net;
        CHECK_EQ_INT(p0->sin_family, AF_INET);
        CHECK_EQ_INT(ntohl(p0->sin_addr.s_addr), 0x0A000000); /* host bits cleared */
        CHECK_EQ_INT(c->trusted_proxies[0].prefix, 8);
        CHECK_EQ_INT(c->trusted_proxies[1].net.ss_family, AF_INET6);
        CHECK_EQ_INT(c->trusted_proxies[1].prefix, 128);
        CHECK_EQ_INT(c->trusted_proxies[2].net.ss_family, AF_INET);
        CHECK_EQ_INT(c->trusted_proxies[2].prefix, 32);
        const struct sockaddr_in6 *p3 = (const struct sockaddr_in6 *)&c->trusted_proxies[3].net;
        unsigned char want[16] = {0x20, 0x01, 0x0d, 0xb8};
        CHECK(memcmp(&p3->sin6_addr, want, 16) == 0);
        CHECK_EQ_INT(c->trusted_proxies[3].prefix, 32);
    }
    CHECK_EQ_INT(c->log_level, DM_LOG_DEBUG);
    CHECK_EQ_INT(c->log_format, CFG_LOG_JSON);
    CHECK_STR(c->access_log, "/var/log/doorman/access.log");
    CHECK_EQ_INT(c->access_log_format, CFG_LOG_JSON);
    CHECK_EQ_INT(c->local_lifetime_s, 90 * 24 * 3600);
    CHECK_EQ_INT(c->num_sites, 2);
    if (c->num_sites == 2) {
        const struct cfg_site *s0 = &c->sites[0], *s1 = &c->sites[1];
        CHECK_EQ_INT(s0->num_hosts, 2);
        CHECK_STR(s0->hosts[1], "*.example.test");
        CHECK_EQ_INT(s0->tls, CFG_TLS_LOCAL);
        CHECK_EQ_INT(s1->num_hosts, 3);
        CHECK_STR(s1->hosts[1], "2001:db8::1");
        CHECK_STR(s1->hosts[2], "192.0.2.7");
        CHECK_EQ_INT(s1->num_to, 3);
        CHECK_EQ_INT(s1->to[0].kind, CFG_ADDR_IP);
        CHECK_EQ_INT(s1->to[1].kind, CFG_ADDR_UNIX);
        CHECK_EQ_INT(s1->to[2].kind, CFG_ADDR_HOSTNAME);
        CHECK_STR(s1->to[2].host, "app.internal");
        CHECK_STR(s1->to[2].text, "App.Internal:8080");
        CHECK_EQ_INT(s1->tls, CFG_TLS_FILES);
        CHECK_STR(s1->cert_file, cert);
        CHECK_STR(s1->key_file, key);
    }
    round_trip(c);
    cfg_unref(c);
}

TEST(test_bad_types)
{
    EXPECT_BAD_ROOT("\"data_dir\": 5", "data_dir: expected a string, got integer");
    EXPECT_BAD_ROOT("\"data_dir\": \"\"", "data_dir: must not be empty");
    EXPECT_BAD_ROOT("\"bind\": [\"::\"]", "bind: expected a string, got array");
    EXPECT_BAD_ROOT("\"https_port\": \"443\"", "https_port: expected an integer, got string");
    EXPECT_BAD_ROOT("\"https_port\": 443.0", "https_port: expected an integer, got number");
    EXPECT_BAD_ROOT("\"http_port\": null", "http_port: expected an integer, got null");
    EXPECT_BAD_ROOT("\"redirect_http\": \"yes\"",
                    "redirect_http: expected a boolean (true or false), got string");
    EXPECT_BAD_ROOT("\"workers\": true", "workers: expected an integer, got boolean");
    EXPECT_BAD_ROOT("\"timeouts\": [1]", "timeouts: expected an object, got array");
    EXPECT_BAD_ROOT("\"timeouts\": {\"idle\": 60}",
                    "timeouts.idle: expected a duration string, got integer (use a duration like "
                    "\"10s\")");
    EXPECT_BAD_ROOT("\"timeouts\": {\"body\": 1.5}",
                    "timeouts.body: expected a duration string, got number (use a duration like "
                    "\"10s\")");
    EXPECT_BAD_ROOT("\"timeouts\": {\"connect\": {}}",
                    "timeouts.connect: expected a duration string like \"10s\", got object");
    EXPECT_BAD_ROOT("\"limits\": \"big\"", "limits: expected an object, got string");
    EXPECT_BAD_ROOT("\"limits\": {\"header_count\": \"100\"}",
                    "limits.header_count: expected an integer, got string");
    EXPECT_BAD_ROOT("\"trusted_proxies\": \"10.0.0.0/8\"",
                    "trusted_proxies: expected an array of strings, got string");
    EXPECT_BAD_ROOT("\"trusted_proxies\": [\"10.0.0.0/8\", 10]",
                    "trusted_proxies[1]: expected a string, got integer");
    EXPECT_BAD_ROOT("\"log\": true", "log: expected an object, got boolean");
    EXPECT_BAD_ROOT("\"log\": {\"level\": 3}", "log.level: expected a string, got integer");
    EXPECT_BAD_ROOT("\"log\": {\"format\": null}", "log.format: expected a string, got null");
    EXPECT_BAD_ROOT("\"log\": {\"access\": false}", "log.access: expected a string, got boolean");
    EXPECT_BAD_ROOT("\"log\": {\"access_format\": []}",
                    "log.access_format: expected a string, got array");
    EXPECT_BAD_ROOT("\"local_ca\": \"7d\"", "local_ca: expected an object, got string");
    EXPECT_BAD_ROOT("\"local_ca\": {\"lifetime\": 604800}",
                    "local_ca.lifetime: expected a duration string, got integer (use a duration "
                    "like \"10s\")");
    EXPECT_BAD("{\"sites\": {}}", "sites: expected an array of sites, got object");
    EXPECT_BAD_SITE("\"a.test\"", "sites[0]: expected an object, got string");
    EXPECT_BAD_SITE(
        "{\"hosts\": \"a.test\", \"to\": \"127.0.0.1:1\"}",
        "sites[0].hosts: expected an array of strings, got string (write [\"a.test\"])");
    EXPECT_BAD_SITE("{\"hosts\": {}, \"to\": \"127.0.0.1:1\"}",
                    "sites[0].hosts: expected an array of strings, got object");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\", 7], \"to\": \"127.0.0.1:1\"}",
                    "sites[0].hosts[1]: expected a string, got integer");
    EXPECT_BAD_SITE(
        "{\"hosts\": [\"a.test\"], \"to\": 8080}",
        "sites[0].to: expected a string or an array of strings or objects, got integer");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": [\"127.0.0.1:1\", null]}",
                    "sites[0].to[1]: expected a string, got null");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"tls\": true}",
                    "sites[0].tls: expected \"local\", {\"cert\": PATH, \"key\": PATH} or "
                    "{\"acme\": {...}}, got boolean");
    expect_bad2("{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"tls\": "
                "{\"cert\": 1, \"key\": [\"k\"]}}]}",
                "sites[0].tls.cert: expected a string, got integer",
                "sites[0].tls.key: expected a string, got array", __LINE__);
}

TEST(test_bad_values)
{
    EXPECT_BAD_ROOT("\"bind\": \"localhost\"",
                    "bind: \"localhost\" is not an IP address (use \"::\" or \"0.0.0.0\" for all "
                    "addresses)");
    EXPECT_BAD_ROOT("\"https_port\": 0", "https_port: must be 1..65535, got 0");
    EXPECT_BAD_ROOT("\"https_port\": 65536", "https_port: must be 1..65535, got 65536");
    EXPECT_BAD_ROOT("\"http_port\": -1", "http_port: must be 0..65535, got -1");
    EXPECT_BAD_ROOT("\"https_port\": 8443, \"http_port\": 8443",
                    "http_port: must differ from https_port (both are 8443); 0 turns the "
                    "plain-HTTP listener off");
    EXPECT_BAD_ROOT("\"workers\": 257", "workers: must be 0..256, got 257");
    EXPECT_BAD_ROOT("\"workers\": -1", "workers: must be 0..256, got -1");
    EXPECT_BAD_ROOT("\"limits\": {\"request_line\": 255}",
                    "limits.request_line: must be 256..65536, got 255");
    EXPECT_BAD_ROOT("\"limits\": {\"request_line\": 65537}",
                    "limits.request_line: must be 256..65536, got 65537");
    EXPECT_BAD_ROOT("\"limits\": {\"header_count\": 7}",
                    "limits.header_count: must be 8..1000, got 7");
    EXPECT_BAD_ROOT("\"limits\": {\"header_count\": 1001}",
                    "limits.header_count: must be 8..1000, got 1001");
    EXPECT_BAD_ROOT("\"limits\": {\"header_bytes\": 1023}",
                    "limits.header_bytes: must be 1024..1048576, got 1023");
    EXPECT_BAD_ROOT("\"limits\": {\"header_bytes\": 1048577}",
                    "limits.header_bytes: must be 1024..1048576, got 1048577");
    EXPECT_BAD_ROOT("\"limits\": {\"request_line\": 8192, \"header_bytes\": 4096}",
                    "limits.header_bytes: must be at least limits.request_line (8192), got 4096");
    EXPECT_BAD_ROOT("\"limits\": {\"max_connections\": 10000001}",
                    "limits.max_connections: must be 0..10000000, got 10000001");
    EXPECT_BAD_ROOT("\"limits\": {\"max_connections\": -5}",
                    "limits.max_connections: must be 0..10000000, got -5");
    EXPECT_BAD_ROOT("\"trusted_proxies\": [\"10.0.0.0/33\"]",
                    "trusted_proxies[0]: \"10.0.0.0/33\": the prefix length must be 0..32");
    EXPECT_BAD_ROOT("\"trusted_proxies\": [\"::/129\"]",
                    "trusted_proxies[0]: \"::/129\": the prefix length must be 0..128");
    EXPECT_BAD_ROOT("\"trusted_proxies\": [\"::1\", \"proxy.local\"]",
                    "trusted_proxies[1]: \"proxy.local\" is not an IP address or CIDR (like "
                    "\"10.0.0.0/8\" or \"::1\")");
    EXPECT_BAD_ROOT("\"trusted_proxies\": [\"10.0.0.0/\"]",
                    "trusted_proxies[0]: \"10.0.0.0/\" is not an IP address or CIDR (like "
                    "\"10.0.0.0/8\" or \"::1\")");
    EXPECT_BAD_ROOT("\"log\": {\"level\": \"verbose\"}",
                    "log.level: \"verbose\" is not a log level (error, warn, info, debug, trace)");
    EXPECT_BAD_ROOT("\"log\": {\"format\": \"xml\"}",
                    "log.format: \"xml\" is not a log format (text, json)");
    EXPECT_BAD_ROOT("\"log\": {\"access_format\": \"combined\"}",
                    "log.access_format: \"combined\" is not a log format (text, json, common)");
    EXPECT_BAD_ROOT("\"log\": {\"access\": \"access.log\"}",
                    "log.access: \"access.log\" must be \"stderr\", \"off\" or an absolute file "
                    "path");
    EXPECT_BAD("{}", "sites: required key is missing (list at least one site)");
    EXPECT_BAD("{\"sites\": []}", "sites: must list at least one site");
    EXPECT_BAD_SITE("{\"to\": \"127.0.0.1:1\"}", "sites[0].hosts: required key is missing");
    EXPECT_BAD_SITE("{\"hosts\": [], \"to\": \"127.0.0.1:1\"}",
                    "sites[0].hosts: must list at least one host name");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"]}", "sites[0].to: required key is missing");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": []}",
                    "sites[0].to: must list at least one backend");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"tls\": \"acme\"}",
                    "sites[0].tls: \"acme\" is not a TLS source (use \"local\" or {\"cert\": PATH, "
                    "\"key\": PATH})");
    expect_bad2("{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"tls\": {}}]}",
                "sites[0].tls.cert: required key is missing",
                "sites[0].tls.key: required key is missing", __LINE__);
}

TEST(test_many_problems_at_once)
{
    struct cfg *c = load("{\n"
                         "  \"https_port\": \"443\",\n"
                         "  \"workers\": 1000,\n"
                         "  \"timeouts\": {\"hedshake\": \"10s\", \"idle\": \"0s\"},\n"
                         "  \"log\": {\"level\": \"loud\"},\n"
                         "  \"sites\": [\n"
                         "    {\"hosts\": [\"a.test\"], \"to\": \"abc\"},\n"
                         "    {\"hosts\": [\"A.test\", \"*.test\"], \"to\": [\"127.0.0.1:1\", "
                         "\"x\"]}\n"
                         "  ]\n"
                         "}\n");
    CHECK(c == NULL);
    CHECK_EQ_INT(probs.num_items, 9);
    CHECK_PROBLEM("https_port: expected an integer, got string");
    CHECK_PROBLEM("workers: must be 0..256, got 1000");
    CHECK_PROBLEM("timeouts.hedshake: unknown key (did you mean \"handshake\"?)");
    CHECK_PROBLEM("timeouts.idle: \"0s\" is too short (minimum 1ms)");
    CHECK_PROBLEM("log.level: \"loud\" is not a log level (error, warn, info, debug, trace)");
    CHECK_PROBLEM("sites[0].to: \"abc\" is not host:port");
    CHECK_PROBLEM("sites[1].hosts[1]: \"*.test\" is not allowed: a wildcard needs at least two "
                  "labels after \"*.\" (like \"*.example.test\")");
    CHECK_PROBLEM("sites[1].to[1]: \"x\" is not host:port");
    /* Hosts are compared lower-cased, after every site was read. */
    CHECK_STR(probs.num_items == 9 ? probs.items[8] : NULL,
              "sites[1].hosts[0]: \"a.test\" is already served by sites[0]");
    cfg_unref(c);
    c = load("{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\"}, "
             "{\"hosts\": [\"A.test\"], \"to\": \"nope\"}]}");
    CHECK(c == NULL);
    CHECK_EQ_INT(probs.num_items, 2);
    CHECK_STR(probs.num_items == 2 ? probs.items[0] : NULL,
              "sites[1].to: \"nope\" is not host:port");
    CHECK_STR(probs.num_items == 2 ? probs.items[1] : NULL,
              "sites[1].hosts[0]: \"a.test\" is already served by sites[0]");
}

TEST(test_problem_cap)
{
    /* 300 bad hosts: the list stops at CFG_MAX_PROBLEMS (100) and says so. */
    size_t cap = 300 * 16 + 128;
    char *json = malloc(cap);
    CHECK(json != NULL);
    if (json == NULL) {
        return;
    }
    size_t n = (size_t)snprintf(json, cap, "{\"sites\": [{\"to\": \"127.0.0.1:1\", \"hosts\": [");
    for (int i = 0; i < 300; i++) {
        n += (size_t)snprintf(json + n, cap - n, "%s\"bad_%d\"", i ? "," : "", i);
    }
    snprintf(json + n, cap - n, "]}]}");
    struct cfg *c = load(json);
    CHECK(c == NULL);
    CHECK_EQ_INT(probs.num_items, 100);
    CHECK_STR(probs.items[99], "too many problems; the rest are not shown");
    cfg_unref(c);
    free(json);
}

/* Site backends as objects and the upstream section: values, defaults, and
 * problems that name their path. */
TEST(test_upstream)
{
    struct cfg *c = load("{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": [\"127.0.0.1:1\", "
                         "{\"address\": \"127.0.0.1:2\", \"weight\": 3, \"max_connections\": 5}], "
                         "\"upstream\": {\"policy\": \"least_conn\", \"max_connections\": 7, "
                         "\"health_check\": {\"path\": \"/h\", \"status\": 204}, "
                         "\"passive\": {\"statuses\": [502, 503]}}}]}");
    CHECK(c != NULL);
    if (c != NULL) {
        const struct cfg_site *s = &c->sites[0];
        CHECK_EQ_INT(s->num_to, 2);
        CHECK_EQ_INT(s->to_opts[0].weight, 1);
        CHECK_EQ_INT(s->to_opts[0].max_connections, 7);
        CHECK_EQ_INT(s->to_opts[1].weight, 3);
        CHECK_EQ_INT(s->to_opts[1].max_connections, 5);
        CHECK_EQ_INT(s->upstream.policy, CFG_LB_LEAST_CONN);
        CHECK_EQ_INT(s->upstream.retries, 2);
        CHECK_EQ_INT(s->upstream.queue_timeout_ms, 3000);
        CHECK_STR(s->upstream.cookie, "doorman_upstream");
        CHECK_STR(s->upstream.health.path, "/h");
        CHECK_EQ_INT(s->upstream.health.status_min, 204);
        CHECK_EQ_INT(s->upstream.health.interval_ms, 5000);
        CHECK_EQ_INT(s->upstream.passive.fails, 3);
        CHECK(s->upstream.passive.statuses[0] == ((1ull << 2) | (1ull << 3)));
        round_trip(c);
    }
    cfg_unref(c);
    c = load("{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": [\"127.0.0.1:1\", \"127.0.0.1:2\"], "
             "\"upstream\": {\"policy\": \"cookie\", \"cookie\": \"s\", \"retries\": 1, "
             "\"retry_timeout\": \"1500ms\", \"queue_timeout\": \"0s\", "
             "\"health_check\": {\"path\": \"/h\", \"status\": \"3xx\", \"host\": \"x.test\", "
             "\"interval\": \"1s\", \"timeout\": \"1s\", \"fails\": 4, \"passes\": 5}, "
             "\"passive\": {\"fails\": 0, \"statuses\": [599, 500]}}}]}");
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK_EQ_INT(c->sites[0].upstream.retries, 1);
        CHECK_EQ_INT(c->sites[0].upstream.health.status_min, 300);
        CHECK_EQ_INT(c->sites[0].upstream.health.status_max, 399);
        round_trip(c);
    } else {
        print_problems();
    }
    cfg_unref(c);
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", "
                    "\"upstream\": {\"policy\": \"foo\"}}",
                    "sites[0].upstream.policy: \"foo\" is not one of round_robin, least_conn, "
                    "random_two, ip_hash, cookie");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": [{\"address\": \"127.0.0.1:1\", "
                    "\"weight\": 0}]}",
                    "sites[0].to[0].weight: must be 1..100, got 0");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": [{\"weight\": 2}]}",
                    "sites[0].to[0].address: required key is missing");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", "
                    "\"upstream\": {\"health_check\": {\"interval\": \"1s\"}}}",
                    "sites[0].upstream.health_check.path: required key is missing (the path to "
                    "probe, e.g. \"/healthz\")");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", "
                    "\"upstream\": {\"passive\": {\"statuses\": [404]}}}",
                    "sites[0].upstream.passive.statuses[0]: must be 500..599, got 404");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", "
                    "\"upstream\": {\"polcy\": \"ip_hash\"}}",
                    "sites[0].upstream.polcy: unknown key (did you mean \"policy\"?)");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": [\"127.0.0.1:1\", \"127.0.0.1:1\"]}",
                    "sites[0].to[1]: \"127.0.0.1:1\" is listed twice (use \"weight\" instead)");
}

TEST(test_unknown_keys)
{
    EXPECT_BAD_ROOT("\"https-port\": 443",
                    "https-port: unknown key (did you mean \"https_port\"?)");
    EXPECT_BAD_ROOT("\"Workers\": 2", "Workers: unknown key (did you mean \"workers\"?)");
    EXPECT_BAD_ROOT("\"colour\": \"blue\"", "colour: unknown key");
    EXPECT_BAD_ROOT("\"timeouts\": {\"hedshake\": \"10s\"}",
                    "timeouts.hedshake: unknown key (did you mean \"handshake\"?)");
    EXPECT_BAD_ROOT("\"limits\": {\"header_cnt\": 10}",
                    "limits.header_cnt: unknown key (did you mean \"header_count\"?)");
    EXPECT_BAD_ROOT("\"log\": {\"levle\": \"info\"}",
                    "log.levle: unknown key (did you mean \"level\"?)");
    EXPECT_BAD_ROOT("\"local_ca\": {\"lifetme\": \"7d\"}",
                    "local_ca.lifetme: unknown key (did you mean \"lifetime\"?)");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"host\": [\"b.test\"]}",
                    "sites[0].host: unknown key (did you mean \"hosts\"?)");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"upstreams\": \"x\"}",
                    "sites[0].upstreams: unknown key (did you mean \"upstream\"?)");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"upstream\": "
                    "{\"protocl\": \"h2c\"}}",
                    "sites[0].upstream.protocl: unknown key (did you mean \"protocol\"?)");
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"upstream\": "
                    "{\"protocol\": \"h2\", \"tls\": {\"ca\": \"/nonexistent/x.pem\"}}}",
                    "sites[0].upstream.tls.ca: /nonexistent/x.pem: No such file or "
                    "directory");
    char json[512];
    snprintf(json, sizeof(json),
             "{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"tls\": "
             "{\"cert\": \"%s/chain.pem\", \"key\": \"%s/key.pem\", \"kye\": 1}}]}",
             tmp_dir, tmp_dir);
    char file[128];
    snprintf(file, sizeof(file), "%s/chain.pem", tmp_dir);
    write_file(file, "x");
    snprintf(file, sizeof(file), "%s/key.pem", tmp_dir);
    write_file(file, "x");
    EXPECT_BAD(json, "sites[0].tls.kye: unknown key (did you mean \"key\"?)");
    /* Control bytes in keys are not echoed raw; long keys are cut. */
    EXPECT_BAD_ROOT("\"a\\nb\": 1", "a?b: unknown key");
    EXPECT_BAD_ROOT(
        "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\": 1",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...: unknown "
        "key");
}

TEST(test_duplicate_hosts)
{
    EXPECT_BAD("{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\"},"
               "{\"hosts\": [\"b.test\"], \"to\": \"127.0.0.1:2\"},"
               "{\"hosts\": [\"A.TEST.\"], \"to\": \"127.0.0.1:3\"}]}",
               "sites[2].hosts[0]: \"a.test\" is already served by sites[0]");
    EXPECT_BAD("{\"sites\": [{\"hosts\": [\"a.test\", \"b.test\", \"a.test\"], \"to\": "
               "\"127.0.0.1:1\"}]}",
               "sites[0].hosts[2]: \"a.test\" is listed twice (also at sites[0].hosts[0])");
    EXPECT_BAD("{\"sites\": [{\"hosts\": [\"*.a.test\"], \"to\": \"127.0.0.1:1\"},"
               "{\"hosts\": [\"*.A.test\"], \"to\": \"127.0.0.1:2\"}]}",
               "sites[1].hosts[0]: \"*.a.test\" is already served by sites[0]");
    EXPECT_BAD("{\"sites\": [{\"hosts\": [\"::1\"], \"to\": \"127.0.0.1:1\"},"
               "{\"hosts\": [\"[0:0::1]\"], \"to\": \"127.0.0.1:2\"}]}",
               "sites[1].hosts[0]: \"::1\" is already served by sites[0]");
    /* A wildcard and a name under it are different hosts. */
    struct cfg *c = load("{\"sites\": [{\"hosts\": [\"*.a.test\"], \"to\": \"127.0.0.1:1\"},"
                         "{\"hosts\": [\"x.a.test\", \"a.test\"], \"to\": \"127.0.0.1:2\"}]}");
    CHECK(c != NULL);
    cfg_unref(c);
}

/* host_problem returns the problem for one host in sites[0].hosts[0], or NULL
 * (with *out_stored set) if it is valid. */
static const char *host_result(const char *host, char *stored, size_t cap)
{
    char json[1024];
    snprintf(json, sizeof(json), "{\"sites\": [{\"hosts\": [\"%s\"], \"to\": \"127.0.0.1:1\"}]}",
             host);
    struct cfg *c = load(json);
    stored[0] = '\0';
    if (c != NULL) {
        snprintf(stored, cap, "%s", c->sites[0].hosts[0]);
        cfg_unref(c);
        return NULL;
    }
    return probs.num_items > 0 ? probs.items[0] : "(no problem)";
}

#define HOST_OK(in, want)                                                                          \
    do {                                                                                           \
        char st_[300];                                                                             \
        const char *p_ = host_result(in, st_, sizeof(st_));                                        \
        CHECK_STR(p_ == NULL ? st_ : p_, want);                                                    \
    } while (0)
#define HOST_BAD(in, want)                                                                         \
    do {                                                                                           \
        char st_[300];                                                                             \
        const char *p_ = host_result(in, st_, sizeof(st_));                                        \
        CHECK_STR(p_, want);                                                                       \
    } while (0)

TEST(test_host_names_and_wildcards)
{
    HOST_OK("localhost", "localhost");
    HOST_OK("Example.Test", "example.test");
    HOST_OK("example.test.", "example.test");
    HOST_OK("xn--bcher-kva.test", "xn--bcher-kva.test");
    HOST_OK("a-b.c-d.test", "a-b.c-d.test");
    HOST_OK("*.example.test", "*.example.test");
    HOST_OK("*.EXAMPLE.test.", "*.example.test");
    HOST_OK("192.0.2.1", "192.0.2.1");
    HOST_OK("2001:DB8::1", "2001:db8::1");
    HOST_OK("[2001:db8:0::1]", "2001:db8::1");
    HOST_OK("3com.test", "3com.test");
    HOST_BAD("*.test",
             "sites[0].hosts[0]: \"*.test\" is not allowed: a wildcard needs at least two "
             "labels after \"*.\" (like \"*.example.test\")");
    HOST_BAD("*", "sites[0].hosts[0]: \"*\" is not a valid host name or IP address: '*' is only "
                  "allowed as the whole first label, as in \"*.example.test\"");
    HOST_BAD("a.*.b", "sites[0].hosts[0]: \"a.*.b\" is not a valid host name or IP address: '*' is "
                      "only allowed as the whole first label, as in \"*.example.test\"");
    HOST_BAD("*foo.test",
             "sites[0].hosts[0]: \"*foo.test\" is not a valid host name or IP address: "
             "'*' is only allowed as the whole first label, as in \"*.example.test\"");
    HOST_BAD("*.*.test", "sites[0].hosts[0]: \"*.*.test\" is not a valid host name or IP address: "
                         "'*' is only allowed as the whole first label, as in \"*.example.test\"");
    HOST_BAD("", "sites[0].hosts[0]: host name is empty");
    HOST_BAD("a..test",
             "sites[0].hosts[0]: \"a..test\" is not a valid host name or IP address: empty label");
    HOST_BAD(".a.test",
             "sites[0].hosts[0]: \".a.test\" is not a valid host name or IP address: empty label");
    HOST_BAD("a.test..", "sites[0].hosts[0]: \"a.test..\" is not a valid host name or IP address: "
                         "empty label");
    HOST_BAD("-a.test", "sites[0].hosts[0]: \"-a.test\" is not a valid host name or IP address: a "
                        "label starts or ends with '-'");
    HOST_BAD("a-.test", "sites[0].hosts[0]: \"a-.test\" is not a valid host name or IP address: a "
                        "label starts or ends with '-'");
    HOST_BAD("a_b.test",
             "sites[0].hosts[0]: \"a_b.test\" is not a valid host name or IP address: invalid "
             "character '_' (use letters, digits and '-'; write internationalized names in "
             "punycode, \"xn--...\")");
    HOST_BAD("b\\u00fccher.test",
             "sites[0].hosts[0]: \"b\xc3\xbc"
             "cher.test\" is not a valid host name or IP address: invalid byte 0xc3 (use letters, "
             "digits and '-'; write internationalized names in punycode, \"xn--...\")");
    HOST_BAD("a.test:8443", "sites[0].hosts[0]: \"a.test:8443\" is not a valid host name or IP "
                            "address: not an IP address, and ':' is not allowed in a name");
    HOST_BAD("10.0.0.256", "sites[0].hosts[0]: \"10.0.0.256\" is not a valid host name or IP "
                           "address: the last label is all digits (not a valid IP address either)");
    HOST_BAD("[a.test]", "sites[0].hosts[0]: \"[a.test]\" is not a valid IPv6 address");
    HOST_BAD(
        "a\\tb.test",
        "sites[0].hosts[0]: \"a\\u0009b.test\" is not a valid host name or IP address: invalid "
        "byte 0x09 (use letters, digits and '-'; write internationalized names in punycode, "
        "\"xn--...\")");
    /* 63-byte labels pass, 64 do not; 253 bytes total pass, 254 do not. */
    char l63[64], l64[65], name[300];
    memset(l63, 'a', 63);
    l63[63] = '\0';
    memset(l64, 'b', 64);
    l64[64] = '\0';
    snprintf(name, sizeof(name), "%s.test", l63);
    HOST_OK(name, name);
    snprintf(name, sizeof(name), "%s.test", l64);
    char want[512];
    snprintf(want, sizeof(want),
             "sites[0].hosts[0]: \"%s.test\" is not a valid host name or IP address: a label is "
             "longer than 63 bytes",
             l64);
    HOST_BAD(name, want);
    snprintf(name, sizeof(name), "%s.%s.%s.%s", l63, l63, l63, l63); /* 255 */
    name[253] = '\0';                                                /* 253, ends in "aa" */
    HOST_OK(name, name);
    snprintf(name, sizeof(name), "%s.%s.%s.%s", l63, l63, l63, l63);
    name[254] = '\0';
    snprintf(want, sizeof(want),
             "sites[0].hosts[0]: \"%.80s...\" is not a valid host name or IP address: longer "
             "than 253 bytes",
             name);
    HOST_BAD(name, want);
}

static void addr_ok(const char *text, enum cfg_addr_kind kind, const char *host, unsigned port)
{
    struct cfg_addr a;
    char msg[512];
    int rc = cfg_addr_parse(&a, text, msg, sizeof(msg));
    CHECK_EQ_INT(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "  %s: %s\n", text, msg);
        return;
    }
    CHECK_EQ_INT(a.kind, kind);
    CHECK_STR(a.text, text);
    if (host != NULL) {
        CHECK_STR(a.host, host);
    } else {
        CHECK(a.host == NULL);
    }
    CHECK_EQ_INT(a.port, port);
    cfg_addr_cleanup(&a);
    CHECK(a.text == NULL && a.host == NULL && a.path == NULL);
}

static void addr_bad(const char *text, const char *want)
{
    struct cfg_addr a;
    char msg[512];
    CHECK_EQ_INT(cfg_addr_parse(&a, text, msg, sizeof(msg)), -1);
    CHECK_STR(msg, want);
    CHECK(a.text == NULL && a.host == NULL && a.path == NULL);
    cfg_addr_cleanup(&a);
}

TEST(test_addresses)
{
    addr_ok("127.0.0.1:8080", CFG_ADDR_IP, "127.0.0.1", 8080);
    addr_ok("[::1]:8081", CFG_ADDR_IP, "::1", 8081);
    addr_ok("[2001:db8::5]:1", CFG_ADDR_IP, "2001:db8::5", 1);
    addr_ok("app.internal:8080", CFG_ADDR_HOSTNAME, "app.internal", 8080);
    addr_ok("LocalHost:65535", CFG_ADDR_HOSTNAME, "localhost", 65535);
    addr_ok("unix:/run/app.sock", CFG_ADDR_UNIX, NULL, 0);

    struct cfg_addr a;
    char msg[512];
    CHECK_EQ_INT(cfg_addr_parse(&a, "10.1.2.3:443", msg, sizeof(msg)), 0);
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&a.ss;
    CHECK_EQ_INT(a.ss_len, sizeof(struct sockaddr_in));
    CHECK_EQ_INT(sin->sin_family, AF_INET);
    CHECK_EQ_INT(ntohs(sin->sin_port), 443);
    CHECK_EQ_INT(ntohl(sin->sin_addr.s_addr), 0x0A010203);
    cfg_addr_cleanup(&a);

    CHECK_EQ_INT(cfg_addr_parse(&a, "[::1]:8081", msg, sizeof(msg)), 0);
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a.ss;
    CHECK_EQ_INT(a.ss_len, sizeof(struct sockaddr_in6));
    CHECK_EQ_INT(sin6->sin6_family, AF_INET6);
    CHECK_EQ_INT(ntohs(sin6->sin6_port), 8081);
    CHECK(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
    cfg_addr_cleanup(&a);

    CHECK_EQ_INT(cfg_addr_parse(&a, "unix:/run/app.sock", msg, sizeof(msg)), 0);
    const struct sockaddr_un *sun_ = (const struct sockaddr_un *)&a.ss;
    CHECK_EQ_INT(sun_->sun_family, AF_UNIX);
    CHECK_STR(sun_->sun_path, "/run/app.sock");
    CHECK_STR(a.path, "/run/app.sock");
    CHECK_EQ_INT(a.ss_len, offsetof(struct sockaddr_un, sun_path) + strlen("/run/app.sock") + 1);
    cfg_addr_cleanup(&a);

    CHECK_EQ_INT(cfg_addr_parse(&a, "app.internal:80", msg, sizeof(msg)), 0);
    CHECK_EQ_INT(a.ss_len, 0); /* names are resolved later, never here */
    cfg_addr_cleanup(&a);

    /* 107 bytes is the longest unix path, 108 is too long. */
    char path[140];
    memcpy(path, "unix:/", 6);
    memset(path + 6, 'p', 106);
    path[112] = '\0';
    addr_ok(path, CFG_ADDR_UNIX, NULL, 0);
    memcpy(path + 112, "q", 2);
    char want[512];
    snprintf(want, sizeof(want), "\"%.80s...\": a unix socket path is at most 107 bytes", path);
    addr_bad(path, want);

    addr_bad("abc", "\"abc\" is not host:port");
    addr_bad("", "\"\" is not host:port");
    addr_bad(":8080", "\":8080\" is not host:port");
    addr_bad("a.test:", "\"a.test:\" is not host:port");
    addr_bad("a.test:http", "\"a.test:http\" is not host:port");
    addr_bad("a.test:-1", "\"a.test:-1\" is not host:port");
    addr_bad("a.test:123456", "\"a.test:123456\" is not host:port");
    addr_bad("a.test:0", "\"a.test:0\": port must be 1..65535");
    addr_bad("a.test:65536", "\"a.test:65536\": port must be 1..65535");
    addr_bad("::1:8080", "\"::1:8080\" is not host:port (write IPv6 addresses in brackets, as in "
                         "\"[::1]:8080\")");
    addr_bad("[::1]", "\"[::1]\" is not host:port");
    addr_bad("[::1]8080", "\"[::1]8080\" is not host:port");
    addr_bad("[1.2.3.4]:80", "\"[1.2.3.4]:80\" is not host:port: not a valid IPv6 address in "
                             "brackets");
    addr_bad("[]:80", "\"[]:80\" is not host:port: not a valid IPv6 address in brackets");
    addr_bad("http://127.0.0.1:8080", "\"http://127.0.0.1:8080\" is not host:port (leave out the "
                                      "scheme, as in \"127.0.0.1:8080\")");
    addr_bad("a_b:80", "\"a_b:80\" is not host:port: \"a_b\" is not a valid host name: invalid "
                       "character '_' (use letters, digits and '-'; write internationalized names "
                       "in punycode, \"xn--...\")");
    addr_bad("*.a.test:80", "\"*.a.test:80\" is not host:port: \"*.a.test\" is not a valid host "
                            "name: wildcards are not allowed here");
    addr_bad("300.1.1.1:80", "\"300.1.1.1:80\" is not host:port: \"300.1.1.1\" is not a valid host "
                             "name: the last label is all digits (not a valid IP address either)");
    addr_bad("unix:run/app.sock", "\"unix:run/app.sock\": a unix socket path must be absolute, as "
                                  "in \"unix:/run/app.sock\"");
    addr_bad("unix:", "\"unix:\": a unix socket path must be absolute, as in "
                      "\"unix:/run/app.sock\"");
    addr_bad("a\"b:1",
             "\"a\\\"b:1\" is not host:port: \"a\\\"b\" is not a valid host name: invalid "
             "character '\"' (use letters, digits and '-'; write internationalized names "
             "in punycode, \"xn--...\")");

    /* The same messages appear in the config with their paths. */
    EXPECT_BAD_SITE("{\"hosts\": [\"a.test\"], \"to\": [\"127.0.0.1:1\", \"[::1]:2\", \"abc\"]}",
                    "sites[0].to[2]: \"abc\" is not host:port");
}

TEST(test_durations)
{
    static const struct {
        const char *text;
        uint32_t ms;
    } good[] = {
        {"1ms", 1},          {"250ms", 250},   {"10s", 10000},           {"5m", 300000},
        {"1h", 3600000},     {"1d", 86400000}, {"86400000ms", 86400000}, {"0010s", 10000},
        {"1440m", 86400000},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char json[256];
        snprintf(json, sizeof(json), "{\"timeouts\": {\"idle\": \"%s\"}, " SITE_OK "}",
                 good[i].text);
        struct cfg *c = load(json);
        CHECK(c != NULL);
        if (c != NULL) {
            CHECK_EQ_INT(c->timeouts.idle_ms, good[i].ms);
        }
        cfg_unref(c);
    }
    static const struct {
        const char *text;
        const char *want;
    } bad[] = {
        {"10", "timeouts.idle: \"10\" is not a duration (use a duration like \"10s\": a whole "
               "number and one of ms, s, m, h, d)"},
        {"s", "timeouts.idle: \"s\" is not a duration (use a duration like \"10s\": a whole "
              "number and one of ms, s, m, h, d)"},
        {"1.5s", "timeouts.idle: \"1.5s\" is not a duration (use a duration like \"10s\": a whole "
                 "number and one of ms, s, m, h, d)"},
        {"-1s", "timeouts.idle: \"-1s\" is not a duration (use a duration like \"10s\": a whole "
                "number and one of ms, s, m, h, d)"},
        {"10 s", "timeouts.idle: \"10 s\" is not a duration (use a duration like \"10s\": a whole "
                 "number and one of ms, s, m, h, d)"},
        {"10S", "timeouts.idle: \"10S\" is not a duration (use a duration like \"10s\": a whole "
                "number and one of ms, s, m, h, d)"},
        {"1w", "timeouts.idle: \"1w\" is not a duration (use a duration like \"10s\": a whole "
               "number and one of ms, s, m, h, d)"},
        {"", "timeouts.idle: \"\" is not a duration (use a duration like \"10s\": a whole "
             "number and one of ms, s, m, h, d)"},
        {"0s", "timeouts.idle: \"0s\" is too short (minimum 1ms)"},
        {"0ms", "timeouts.idle: \"0ms\" is too short (minimum 1ms)"},
        {"25h", "timeouts.idle: \"25h\" is too long (maximum 1d)"},
        {"86400001ms", "timeouts.idle: \"86400001ms\" is too long (maximum 1d)"},
        {"99999999999999999999999d", "timeouts.idle: \"99999999999999999999999d\" is too long "
                                     "(maximum 1d)"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char json[256];
        snprintf(json, sizeof(json), "{\"timeouts\": {\"idle\": \"%s\"}, " SITE_OK "}",
                 bad[i].text);
        expect_bad(json, bad[i].want, __LINE__);
    }
    EXPECT_BAD_ROOT("\"timeouts\": {\"shutdown\": \"61m\"}",
                    "timeouts.shutdown: \"61m\" is too long (maximum 1h)");
    EXPECT_BAD_ROOT("\"local_ca\": {\"lifetime\": \"59s\"}",
                    "local_ca.lifetime: \"59s\" is too short (minimum 1m)");
    EXPECT_BAD_ROOT("\"local_ca\": {\"lifetime\": \"91d\"}",
                    "local_ca.lifetime: \"91d\" is too long (maximum 90d)");
    EXPECT_BAD_ROOT("\"local_ca\": {\"lifetime\": \"60001ms\"}",
                    "local_ca.lifetime: must be a whole number of seconds");
    struct cfg *c = load("{\"local_ca\": {\"lifetime\": \"1m\"}, " SITE_OK "}");
    CHECK(c != NULL && c->local_lifetime_s == 60);
    cfg_unref(c);
    c = load("{\"local_ca\": {\"lifetime\": \"36h\"}, " SITE_OK "}");
    CHECK(c != NULL && c->local_lifetime_s == 36 * 3600);
    cfg_unref(c);
}

TEST(test_tls_files)
{
    char dir[128], sub[160], cert[200], key[200], json[1024];
    snprintf(dir, sizeof(dir), "%s/tls", tmp_dir);
    mkdir(dir, 0700);
    snprintf(sub, sizeof(sub), "%s/certs", dir);
    mkdir(sub, 0700);
    snprintf(cert, sizeof(cert), "%s/chain.pem", sub);
    snprintf(key, sizeof(key), "%s/key.pem", sub);
    write_file(cert, "x");
    write_file(key, "x");

    /* Missing files: both reported, with the absolute path. */
    snprintf(json, sizeof(json),
             "{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"tls\": "
             "{\"cert\": \"%s/nope.pem\", \"key\": \"/nonexistent/key.pem\"}}]}",
             dir);
    struct cfg *c = load(json);
    CHECK(c == NULL);
    CHECK_EQ_INT(probs.num_items, 2);
    char want[512];
    snprintf(want, sizeof(want), "sites[0].tls.cert: %s/nope.pem: No such file or directory", dir);
    CHECK_PROBLEM(want);
    CHECK_PROBLEM("sites[0].tls.key: /nonexistent/key.pem: No such file or directory");

    /* A directory is not a certificate. */
    snprintf(json, sizeof(json),
             "{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"tls\": "
             "{\"cert\": \"%s\", \"key\": \"%s\"}}]}",
             sub, key);
    snprintf(want, sizeof(want), "sites[0].tls.cert: %s: is a directory", sub);
    expect_bad(json, want, __LINE__);

    /* Only one of the pair. */
    snprintf(json, sizeof(json),
             "{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"tls\": "
             "{\"cert\": \"%s\"}}]}",
             cert);
    expect_bad(json, "sites[0].tls.key: required key is missing", __LINE__);
    expect_bad2("{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"tls\": "
                "{\"cert\": \"\", \"key\": \"\"}}]}",
                "sites[0].tls.cert: must not be empty", "sites[0].tls.key: must not be empty",
                __LINE__);

    /* Relative paths start from the config file's directory. */
    char file[200];
    snprintf(file, sizeof(file), "%s/doorman.json", dir);
    write_file(file, "{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"tls\": "
                     "{\"cert\": \"certs/chain.pem\", \"key\": \"./certs//key.pem\"}}]}");
    cfg_problems_cleanup(&probs);
    c = cfg_load_file(file, DATA_DIR, &probs);
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK_STR(c->sites[0].cert_file, cert);
        snprintf(want, sizeof(want), "%s/certs//key.pem", dir);
        CHECK_STR(c->sites[0].key_file, want);
        round_trip(c);
    } else {
        print_problems();
    }
    cfg_unref(c);

    /* The same through cfg_load_string: name gives the directory. */
    const char *text = "{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:1\", \"tls\": "
                       "{\"cert\": \"certs/chain.pem\", \"key\": \"certs/key.pem\"}}]}";
    cfg_problems_cleanup(&probs);
    c = cfg_load_string(text, strlen(text), file, DATA_DIR, &probs);
    CHECK(c != NULL && strcmp(c->sites[0].key_file, key) == 0);
    cfg_unref(c);

    /* A config file in / resolves relative paths from /. */
    c = load_as(text, "/doorman.json", DATA_DIR);
    CHECK(c == NULL);
    CHECK_PROBLEM("sites[0].tls.cert: /certs/chain.pem: No such file or directory");
    CHECK_PROBLEM("sites[0].tls.key: /certs/key.pem: No such file or directory");
}

TEST(test_json_errors)
{
    EXPECT_BAD("{\n  \"https_port\": 443,\n  \"sites\" []\n}",
               "test.json:3:11: ':' expected near '['");
    EXPECT_BAD("{\"https_port\": 443,\n \"https_port\": 8443, " SITE_OK "}",
               "test.json:2:13: duplicate object key near '\"https_port\"'");
    EXPECT_BAD("", "test.json:1:1: unexpected token near end of file");
    EXPECT_BAD("[]", "test.json: the top level must be an object ({ ... })");
    EXPECT_BAD("\"sites\"", "test.json: the top level must be an object ({ ... })");
    EXPECT_BAD("{" SITE_OK "} {}", "test.json:1:60: end of file expected near '{'");
    EXPECT_BAD("{\"a\": \"\\u0000\"}",
               "test.json:1:14: \\u0000 is not allowed without JSON_ALLOW_NUL near '\"\\u0000\"'");

    /* Embedded NUL bytes and lengths are honoured. */
    cfg_problems_cleanup(&probs);
    struct cfg *c = cfg_load_string("{}\0garbage", 2, "x.json", DATA_DIR, &probs);
    CHECK(c == NULL);
    CHECK_EQ_INT(probs.num_items, 1);
    CHECK_STR(probs.items[0], "sites: required key is missing (list at least one site)");

    /* Size limit. */
    cfg_problems_cleanup(&probs);
    c = cfg_load_string("{}", CFG_MAX_FILE_BYTES + 1u, "big.json", DATA_DIR, &probs);
    CHECK(c == NULL);
    CHECK_STR(probs.num_items == 1 ? probs.items[0] : NULL, "big.json: larger than 4194304 bytes");

    /* Files. */
    cfg_problems_cleanup(&probs);
    c = cfg_load_file("/nonexistent/doorman.json", NULL, &probs);
    CHECK(c == NULL);
    CHECK_STR(probs.num_items == 1 ? probs.items[0] : NULL,
              "/nonexistent/doorman.json: No such file or directory");
    char file[200];
    snprintf(file, sizeof(file), "%s/syntax.json", tmp_dir);
    write_file(file, "{\n\t\"sites\": [,]\n}\n");
    cfg_problems_cleanup(&probs);
    c = cfg_load_file(file, NULL, &probs);
    CHECK(c == NULL);
    char want[300];
    snprintf(want, sizeof(want), "%s:2:12: unexpected token near ','", file);
    CHECK_STR(probs.num_items == 1 ? probs.items[0] : NULL, want);

    /* out_problems may be NULL. */
    c = cfg_load_string("{", 1, NULL, NULL, NULL);
    CHECK(c == NULL);
    c = cfg_load_file("/nonexistent", NULL, NULL);
    CHECK(c == NULL);
}

TEST(test_data_dir)
{
    char buf[256];
    char *saved_home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;

    setenv("DOORMAN_DATA_DIR", "/env/doorman", 1);
    CHECK_EQ_INT(cfg_default_data_dir(buf, sizeof(buf)), 0);
    CHECK_STR(buf, "/env/doorman");
    CHECK_EQ_INT(cfg_default_data_dir(buf, 5), -1);

    /* Without override or data_dir, the default applies; relative becomes absolute. */
    const char *json = "{" SITE_OK "}";
    struct cfg *c = load_as(json, "t.json", NULL);
    CHECK(c != NULL && strcmp(c->data_dir, "/env/doorman") == 0);
    cfg_unref(c);

    char cwd[200], want[300];
    CHECK(getcwd(cwd, sizeof(cwd)) != NULL);
    setenv("DOORMAN_DATA_DIR", "./rel/dir/", 1);
    c = load_as(json, "t.json", NULL);
    snprintf(want, sizeof(want), "%s/rel/dir", cwd);
    CHECK(c != NULL && strcmp(c->data_dir, want) == 0);
    cfg_unref(c);
    unsetenv("DOORMAN_DATA_DIR");

    /* The file's data_dir beats the default; the override beats both. */
    json = "{\"data_dir\": \"state\", " SITE_OK "}";
    c = load_as(json, "t.json", NULL);
    snprintf(want, sizeof(want), "%s/state", cwd);
    CHECK(c != NULL && strcmp(c->data_dir, want) == 0);
    cfg_unref(c);
    c = load_as(json, "t.json", "/override");
    CHECK(c != NULL && strcmp(c->data_dir, "/override") == 0);
    cfg_unref(c);
    /* The file's value is still checked when overridden. */
    json = "{\"data_dir\": 1, " SITE_OK "}";
    c = load_as(json, "t.json", "/override");
    CHECK(c == NULL);

    /* Root gets /var/lib/doorman; as root, the other branches are checked
     * with a borrowed effective uid (the real uid stays 0 to switch back). */
    bool is_root = geteuid() == 0;
    if (is_root) {
        CHECK_EQ_INT(cfg_default_data_dir(buf, sizeof(buf)), 0);
        CHECK_STR(buf, "/var/lib/doorman");
    }
    if (!is_root || seteuid(65534) == 0) {
        setenv("XDG_DATA_HOME", "/xdg", 1);
        CHECK_EQ_INT(cfg_default_data_dir(buf, sizeof(buf)), 0);
        CHECK_STR(buf, "/xdg/doorman");
        setenv("XDG_DATA_HOME", "relative", 1); /* ignored, per the XDG spec */
        setenv("HOME", "/home/u", 1);
        CHECK_EQ_INT(cfg_default_data_dir(buf, sizeof(buf)), 0);
        CHECK_STR(buf, "/home/u/.local/share/doorman");
        unsetenv("XDG_DATA_HOME");
        unsetenv("HOME"); /* falls back to the password database */
        int rc = cfg_default_data_dir(buf, sizeof(buf));
        CHECK(rc == -1 || (rc == 0 && buf[0] == '/'));
        if (is_root) {
            CHECK_EQ_INT(seteuid(0), 0);
        }
    }
    if (saved_home != NULL) {
        setenv("HOME", saved_home, 1);
    }
    free(saved_home);
}

TEST(test_quick_default_issuer)
{
    /* Public names get Let's Encrypt without --ca; private ones the local CA. */
    static const struct {
        const char *from;
        bool is_acme;
    } cases[] = {
        {"example.com", true},  {"www.example.org", true},
        {"localhost", false},   {"app.localhost", false},
        {"a.test", false},      {"nas.local", false},
        {"127.0.0.1", false},   {"::1", false},
        {"intranet", false},    {"svc.internal", false},
        {"x.home.arpa", false},
    };
    const char *to[] = {"127.0.0.1:8080"};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct cfg_quick q = {.from = cases[i].from,
                              .to = to,
                              .num_to = 1,
                              .https_port = -1,
                              .http_port = -1,
                              .data_dir = DATA_DIR};
        struct cfg *c = quick(&q);
        CHECK(c != NULL);
        if (c == NULL) {
            continue;
        }
        CHECK_EQ_INT(c->sites[0].tls == CFG_TLS_ACME, cases[i].is_acme);
        if (cases[i].is_acme) {
            CHECK_STR(c->sites[0].acme->directory, CFG_DEFAULT_ACME_CA);
            CHECK(c->sites[0].acme->agree_tos);
        }
        cfg_unref(c);
    }
}

TEST(test_quick)
{
    const char *to[] = {"127.0.0.1:9080", "[::1]:9081", "unix:/run/app.sock"};
    struct cfg_quick q = {
        .from = "LocalHost",
        .to = to,
        .num_to = 3,
        .https_port = 8443,
        .http_port = 8081,
        .data_dir = "/tmp/q",
        .bind = "127.0.0.1",
    };
    struct cfg *c = quick(&q);
    CHECK(c != NULL);
    if (c == NULL) {
        print_problems();
        return;
    }
    CHECK_EQ_INT(probs.num_items, 0);
    CHECK_STR(c->data_dir, "/tmp/q");
    CHECK_STR(c->bind, "127.0.0.1");
    CHECK_EQ_INT(c->https_port, 8443);
    CHECK_EQ_INT(c->http_port, 8081);
    CHECK_EQ_INT(c->timeouts.idle_ms, 60000);
    CHECK_EQ_INT(c->limits.max_line, 8192);
    CHECK_EQ_INT(c->num_sites, 1);
    CHECK_EQ_INT(c->sites[0].num_hosts, 1);
    CHECK_STR(c->sites[0].hosts[0], "localhost");
    CHECK_EQ_INT(c->sites[0].num_to, 3);
    CHECK_EQ_INT(c->sites[0].to[2].kind, CFG_ADDR_UNIX);
    CHECK_EQ_INT(c->sites[0].tls, CFG_TLS_LOCAL);
    round_trip(c);
    cfg_unref(c);

    /* Defaults: -1 ports, no bind. */
    struct cfg_quick d = {.from = "a.test",
                          .to = to,
                          .num_to = 1,
                          .https_port = -1,
                          .http_port = -1,
                          .data_dir = "/tmp/q"};
    c = quick(&d);
    CHECK(c != NULL && c->https_port == 443 && c->http_port == 80 && strcmp(c->bind, "::") == 0);
    cfg_unref(c);
    d.http_port = 0;
    c = quick(&d);
    CHECK(c != NULL && c->http_port == 0);
    cfg_unref(c);

    /* Problems name the flags; all are reported. */
    const char *bad_to[] = {"abc", "127.0.0.1:0"};
    struct cfg_quick b = {
        .from = "*.test",
        .to = bad_to,
        .num_to = 2,
        .https_port = 70000,
        .http_port = -2,
        .data_dir = "/tmp/q",
        .bind = "any",
    };
    c = quick(&b);
    CHECK(c == NULL);
    CHECK_EQ_INT(probs.num_items, 6);
    CHECK_PROBLEM("--to: \"abc\" is not host:port");
    CHECK_PROBLEM("--to: \"127.0.0.1:0\": port must be 1..65535");
    CHECK_PROBLEM("--from: \"*.test\" is not allowed: a wildcard needs at least two labels after "
                  "\"*.\" (like \"*.example.test\")");
    CHECK_PROBLEM("--https-port: must be 1..65535, got 70000");
    CHECK_PROBLEM("--http-port: must be 0..65535, got -2");
    CHECK_PROBLEM("--bind: \"any\" is not an IP address (use \"::\" or \"0.0.0.0\" for all "
                  "addresses)");

    struct cfg_quick e = {.https_port = 8443, .http_port = 8443, .data_dir = "/tmp/q"};
    c = quick(&e);
    CHECK(c == NULL);
    CHECK_EQ_INT(probs.num_items, 3);
    CHECK_PROBLEM("--http-port: must differ from https_port (both are 8443); 0 turns the "
                  "plain-HTTP listener off");
    CHECK_PROBLEM("--from: missing: give the host name to serve, e.g. --from localhost");
    CHECK_PROBLEM("--to: missing: give at least one backend, e.g. --to 127.0.0.1:8080");

    const char *null_to[] = {"127.0.0.1:1", NULL};
    struct cfg_quick f = {.from = "a.test",
                          .to = null_to,
                          .num_to = 2,
                          .https_port = -1,
                          .http_port = -1,
                          .data_dir = "/tmp/q"};
    c = quick(&f);
    CHECK(c == NULL);
    CHECK_STR(probs.num_items == 1 ? probs.items[0] : NULL, "--to: missing address");
    CHECK(cfg_from_quick(&e, NULL) == NULL);
    CHECK(quick(NULL) == NULL);
    CHECK_EQ_INT(probs.num_items, 2);
}

TEST(test_dump_round_trip)
{
    struct cfg *c = load("{\"sites\": [{\"hosts\": [\"a.test\", \"*.b.test\", \"[::1]\"], "
                         "\"to\": [\"a.internal:1\", \"[::1]:2\"]}], \"trusted_proxies\": "
                         "[\"192.168.1.77/24\", \"fe80::1/10\"], \"timeouts\": {\"idle\": "
                         "\"90000ms\", \"body\": \"120s\", \"handshake\": \"1500ms\"}, "
                         "\"local_ca\": {\"lifetime\": \"25h\"}, \"log\": {\"level\": \"trace\"}}");
    CHECK(c != NULL);
    if (c == NULL) {
        print_problems();
        return;
    }
    char *text = cfg_dump(c);
    CHECK(text != NULL);
    if (text != NULL) {
        CHECK(strstr(text, "\"idle\": \"90s\"") != NULL);
        CHECK(strstr(text, "\"body\": \"2m\"") != NULL);
        CHECK(strstr(text, "\"handshake\": \"1500ms\"") != NULL);
        CHECK(strstr(text, "\"lifetime\": \"25h\"") != NULL);
        CHECK(strstr(text, "\"192.168.1.0/24\"") != NULL);
        CHECK(strstr(text, "\"fe80::/10\"") != NULL);
        CHECK(strstr(text, "\"::1\"") != NULL);
        CHECK(strstr(text, "\"level\": \"trace\"") != NULL);
        CHECK(strstr(text, "\"tls\": \"local\"") != NULL);
        CHECK(strstr(text, "\"data_dir\": \"" DATA_DIR "\"") != NULL);
    }
    free(text);
    round_trip(c);
    cfg_unref(c);
    CHECK(cfg_dump(NULL) == NULL);
}

TEST(test_refcount_and_generation)
{
    struct cfg *a = load("{" SITE_OK "}");
    struct cfg *b = load("{" SITE_OK "}");
    CHECK(a != NULL && b != NULL);
    if (a == NULL || b == NULL) {
        cfg_unref(a);
        cfg_unref(b);
        return;
    }
    CHECK(b->generation > a->generation);
    CHECK(a->generation > 0);
    /* A failed load does not consume a generation. */
    CHECK(load("{}") == NULL);
    struct cfg *d = load("{" SITE_OK "}");
    CHECK(d != NULL && d->generation == b->generation + 1);
    cfg_unref(d);
    CHECK(cfg_ref(a) == a);
    CHECK_EQ_INT(atomic_load(&a->refs), 2);
    cfg_unref(a);
    CHECK_EQ_INT(atomic_load(&a->refs), 1);
    cfg_unref(a); /* frees: LeakSanitizer and ASan check the rest */
    cfg_unref(b);
    cfg_unref(NULL);
    CHECK(cfg_ref(NULL) == NULL);
}

TEST(test_host_matches)
{
    CHECK(cfg_host_matches("example.test", "example.test", 12));
    CHECK(cfg_host_matches("example.test", "EXAMPLE.test", 12));
    CHECK(!cfg_host_matches("example.test", "example.tes", 11));
    CHECK(!cfg_host_matches("example.test", "a.example.test", 14));
    CHECK(cfg_host_matches("*.example.test", "a.example.test", 14));
    CHECK(cfg_host_matches("*.example.test", "abc-1.example.test", 18));
    CHECK(!cfg_host_matches("*.example.test", "a.b.example.test", 16));
    CHECK(!cfg_host_matches("*.example.test", "example.test", 12));
    CHECK(!cfg_host_matches("*.example.test", ".example.test", 13));
    CHECK(!cfg_host_matches("*.example.test", "aexample.test", 13));
    CHECK(!cfg_host_matches("*.example.test", "a.example.testx", 15));
    /* host_len is honoured: no NUL needed. */
    CHECK(cfg_host_matches("a.test", "a.test:443", 6));
    CHECK(cfg_host_matches("*.example.test", "www.example.test.extra", 16));
    CHECK(!cfg_host_matches("a.test", "", 0));
}

TEST(test_quote_limits)
{
    /* Long user text is cut in messages. */
    char host[300];
    memset(host, 'x', 200);
    strcpy(host + 200, ":80:90");
    struct cfg_addr a;
    char msg[512];
    CHECK_EQ_INT(cfg_addr_parse(&a, host, msg, sizeof(msg)), -1);
    CHECK(strlen(msg) < 200);
    CHECK(strstr(msg, "...\" is not host:port") != NULL);
    /* A tiny message buffer still ends in NUL. */
    CHECK_EQ_INT(cfg_addr_parse(&a, "abc", msg, 4), -1);
    CHECK_EQ_INT(strlen(msg), 3);
}

TEST(test_examples)
{
    /* examples/doorman.json runs as is. */
    cfg_problems_cleanup(&probs);
    struct cfg *c = cfg_load_file(DM_EXAMPLES_DIR "/doorman.json", DATA_DIR, &probs);
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK_EQ_INT(c->https_port, 8443);
        CHECK_EQ_INT(c->http_port, 8081);
        CHECK_STR(c->sites[0].hosts[0], "localhost");
        CHECK_STR(c->sites[0].to[0].text, "127.0.0.1:9080");
        CHECK_EQ_INT(c->sites[0].tls, CFG_TLS_LOCAL);
    } else {
        print_problems();
    }
    cfg_unref(c);

    /* examples/multi-site.json names certificate files under /etc/doorman
     * that do not exist here: those are its only problems. */
    cfg_problems_cleanup(&probs);
    c = cfg_load_file(DM_EXAMPLES_DIR "/multi-site.json", DATA_DIR, &probs);
    if (c == NULL) {
        CHECK(probs.num_items > 0);
        for (size_t i = 0; i < probs.num_items; i++) {
            const char *m = probs.items[i];
            CHECK(strstr(m, ".tls.cert: /etc/doorman/") != NULL ||
                  strstr(m, ".tls.key: /etc/doorman/") != NULL);
        }
    }
    cfg_unref(c);
}

static void setup(void)
{
    snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/dm-test-config-XXXXXX");
    if (mkdtemp(tmp_dir) == NULL) {
        perror("mkdtemp");
        exit(1);
    }
    unsetenv("DOORMAN_DATA_DIR");
}

static void teardown(void)
{
    char cmd[128];
    cfg_problems_cleanup(&probs);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", tmp_dir);
    }
}

TEST(test_setup)
{
    setup();
}

TEST(test_teardown)
{
    teardown();
}

#define ACME_SITE(hosts, acme)                                                                     \
    "{\"hosts\": [" hosts "], \"to\": \"127.0.0.1:1\", \"tls\": {\"acme\": " acme "}}"

TEST(test_acme_sites)
{
    struct cfg *c = load("{\"sites\": [" ACME_SITE(
        "\"a.test\"", "{\"ca\": \"https://ca.test/dir\", \"email\": \"ops@a.test\", "
                      "\"agree_tos\": true, \"challenges\": [\"http-01\"], \"key_type\": "
                      "\"rsa2048\", \"eab\": {\"kid\": \"k1\", \"hmac_key\": \"c2VjcmV0\"}, "
                      "\"profile\": \"shortlived\", \"order_timeout\": \"2m\"}") "]}");
    CHECK(c != NULL);
    if (c != NULL) {
        const struct cfg_acme *a = c->sites[0].acme;
        CHECK_EQ_INT(c->sites[0].tls, CFG_TLS_ACME);
        CHECK(a != NULL);
        if (a != NULL) {
            CHECK_STR(a->directory, "https://ca.test/dir");
            CHECK_STR(a->email, "ops@a.test");
            CHECK(a->agree_tos);
            CHECK_EQ_INT(a->num_challenges, 1);
            CHECK_EQ_INT(a->challenges[0], CFG_CHALLENGE_HTTP01);
            CHECK_EQ_INT(a->key_type, CFG_KEY_RSA2048);
            CHECK_STR(a->eab_kid, "k1");
            CHECK_STR(a->profile, "shortlived");
            CHECK_EQ_INT(a->order_timeout_ms, 120000);
        }
        /* The dump loads back to the same dump. */
        char *d1 = cfg_dump(c);
        struct cfg *c2 = d1 ? load(d1) : NULL;
        char *d2 = c2 ? cfg_dump(c2) : NULL;
        CHECK(d1 != NULL && d2 != NULL && strcmp(d1, d2) == 0);
        free(d1);
        free(d2);
        cfg_unref(c2);
        cfg_unref(c);
    }
    /* Defaults: tls-alpn-01 then http-01, P-256, 5 minutes. */
    c = load("{\"sites\": [" ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\"}") "]}");
    CHECK(c != NULL);
    if (c != NULL) {
        const struct cfg_acme *a = c->sites[0].acme;
        CHECK_EQ_INT(a->num_challenges, 2);
        CHECK_EQ_INT(a->challenges[0], CFG_CHALLENGE_TLSALPN01);
        CHECK_EQ_INT(a->challenges[1], CFG_CHALLENGE_HTTP01);
        CHECK_EQ_INT(a->key_type, CFG_KEY_P256);
        CHECK(!a->agree_tos);
        CHECK_EQ_INT(a->dns_propagation_ms, 10000);
        cfg_unref(c);
    }
    /* dns-01 through a hook: a wildcard, the propagation wait, round trip
     * (0s dumps as "0ms", which loads back). */
    char hook[128], json[1024];
    snprintf(hook, sizeof(hook), "%s/dns-hook.sh", tmp_dir);
    write_file(hook, "#!/bin/sh\n");
    static const struct {
        const char *text;
        uint32_t ms;
    } waits[] = {{"0s", 0}, {"90s", 90000}, {"10m", 600000}};
    for (size_t i = 0; i < sizeof(waits) / sizeof(waits[0]); i++) {
        snprintf(json, sizeof(json),
                 "{\"sites\": [" ACME_SITE(
                     "\"d.test\", \"*.d.test\"",
                     "{\"ca\": \"https://ca.test/dir\", \"challenges\": "
                     "[\"dns-01\"], \"dns_hook\": \"%s\", \"order_timeout\": \"1h\", "
                     "\"dns_propagation\": \"%s\"}") "]}",
                 hook, waits[i].text);
        c = load(json);
        CHECK(c != NULL);
        if (c == NULL) {
            continue;
        }
        const struct cfg_acme *a = c->sites[0].acme;
        CHECK_EQ_INT(a->num_challenges, 1);
        CHECK_EQ_INT(a->challenges[0], CFG_CHALLENGE_DNS01);
        CHECK_STR(a->dns_hook, hook);
        CHECK_EQ_INT(a->dns_propagation_ms, waits[i].ms);
        char *d1 = cfg_dump(c);
        struct cfg *c2 = d1 ? load(d1) : NULL;
        char *d2 = c2 ? cfg_dump(c2) : NULL;
        CHECK(d1 != NULL && d2 != NULL && strcmp(d1, d2) == 0);
        CHECK(c2 != NULL && c2->sites[0].acme->dns_propagation_ms == waits[i].ms);
        free(d1);
        free(d2);
        cfg_unref(c2);
        cfg_unref(c);
    }
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", "
                                            "\"dns_propagation\": \"11m\"}"),
                    "sites[0].tls.acme.dns_propagation: \"11m\" is too long (maximum 10m)");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"",
                              "{\"ca\": \"https://ca.test/dir\", "
                              "\"order_timeout\": \"1m\", \"dns_propagation\": \"1m\"}"),
                    "sites[0].tls.acme.dns_propagation: must be shorter than order_timeout");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", "
                                            "\"dns_propagation\": 10}"),
                    "sites[0].tls.acme.dns_propagation: expected a duration string, got integer "
                    "(use a duration like \"10s\")");
    expect_bad("{\"sites\": [" ACME_SITE(
                   "\"a.test\"",
                   "{\"ca\": \"https://ca.test/dir\", "
                   "\"email\": \"o@a.test\", \"eab\": {\"kid\": \"k\", \"hmac_key\": "
                   "\"aGk\"}}") ", " ACME_SITE("\"b.test\"", "{\"ca\": \"https://ca.test/dir\", "
                                                             "\"email\": \"o@a.test\"}") "]}",
               "sites[1].tls.acme.eab: differs from sites[0] for the same CA and email (one "
               "account per CA and email: use the same eab, or another email)",
               __LINE__);
    /* Different emails: two accounts, fine. */
    c = load("{\"sites\": [" ACME_SITE(
        "\"a.test\"", "{\"ca\": \"https://ca.test/dir\", "
                      "\"email\": \"o@a.test\", \"eab\": {\"kid\": \"k\", \"hmac_key\": "
                      "\"aGk\"}}") ", " ACME_SITE("\"b.test\"", "{\"ca\": \"https://ca.test/dir\", "
                                                                "\"email\": \"p@a.test\", "
                                                                "\"orders_per_hour\": 5}") "]}");
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK_EQ_INT(c->sites[0].acme->orders_per_hour, 100);
        CHECK_EQ_INT(c->sites[1].acme->orders_per_hour, 5);
        cfg_unref(c);
    }
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", "
                                            "\"orders_per_hour\": 0}"),
                    "sites[0].tls.acme.orders_per_hour: must be 1..100000, got 0");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{}"),
                    "sites[0].tls.acme.ca: required key is missing (the CA's directory URL, e.g. "
                    "\"https://acme-v02.api.letsencrypt.org/directory\")");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"ftp://x\"}"),
                    "sites[0].tls.acme.ca: \"ftp://x\" is not an http(s) URL");
    EXPECT_BAD_SITE(ACME_SITE("\"*.a.test\"", "{\"ca\": \"https://ca.test/dir\"}"),
                    "sites[0].hosts: wildcard \"*.a.test\" needs the dns-01 challenge "
                    "(tls.acme.challenges)");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", \"challenges\": "
                                            "[\"http-01\", \"http-01\"]}"),
                    "sites[0].tls.acme.challenges[1]: \"http-01\" is listed twice");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", \"key_type\": "
                                            "\"ed25519\"}"),
                    "sites[0].tls.acme.key_type: must be \"p256\", \"p384\", \"rsa2048\" or "
                    "\"rsa4096\"");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", \"eab\": "
                                            "{\"kid\": \"k\"}}"),
                    "sites[0].tls.acme.eab: needs both \"kid\" and \"hmac_key\"");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", \"challenges\": "
                                            "[\"dns-01\"]}"),
                    "sites[0].tls.acme: dns-01 needs \"dns_hook\": the program that sets the TXT "
                    "record");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", \"emial\": "
                                            "\"a@b.test\"}"),
                    "sites[0].tls.acme.emial: unknown key (did you mean \"email\"?)");
    /* Fallback issuers: whole issuers with their own defaults (not the
     * primary's), in order; retry_first shortens the first backoff. */
    c = load("{\"sites\": [" ACME_SITE(
        "\"a.test\"", "{\"ca\": \"https://one.test/dir\", \"email\": \"o@a.test\", "
                      "\"challenges\": [\"http-01\"], \"key_type\": \"p384\", "
                      "\"retry_first\": \"1s\", \"fallback\": [{\"ca\": "
                      "\"https://two.test/dir\", \"eab\": {\"kid\": \"k\", \"hmac_key\": "
                      "\"aGk\"}}, {\"ca\": \"https://three.test/dir\", \"email\": "
                      "\"p@a.test\", \"orders_per_hour\": 3}]}") "]}");
    CHECK(c != NULL);
    if (c != NULL) {
        const struct cfg_acme *a = c->sites[0].acme;
        CHECK_EQ_INT(a->retry_first_ms, 1000);
        CHECK_EQ_INT(a->num_fallbacks, 2);
        if (a->num_fallbacks == 2) {
            const struct cfg_acme *f = &a->fallbacks[0];
            CHECK_STR(f->directory, "https://two.test/dir");
            CHECK(f->email == NULL);
            CHECK_STR(f->eab_kid, "k");
            CHECK_EQ_INT(f->key_type, CFG_KEY_P256);
            CHECK_EQ_INT(f->num_challenges, 2);
            CHECK_EQ_INT(f->retry_first_ms, 60000);
            CHECK_EQ_INT(f->order_timeout_ms, 300000);
            CHECK_EQ_INT(f->num_fallbacks, 0);
            CHECK_STR(a->fallbacks[1].directory, "https://three.test/dir");
            CHECK_STR(a->fallbacks[1].email, "p@a.test");
            CHECK_EQ_INT(a->fallbacks[1].orders_per_hour, 3);
        }
        char *d1 = cfg_dump(c);
        struct cfg *c2 = d1 ? load(d1) : NULL;
        char *d2 = c2 ? cfg_dump(c2) : NULL;
        CHECK(d1 != NULL && d2 != NULL && strcmp(d1, d2) == 0);
        CHECK(c2 != NULL && c2->sites[0].acme->num_fallbacks == 2);
        free(d1);
        free(d2);
        cfg_unref(c2);
        cfg_unref(c);
    }
    c = load("{\"sites\": [" ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\"}") "]}");
    CHECK(c != NULL && c->sites[0].acme->retry_first_ms == 60000 &&
          c->sites[0].acme->num_fallbacks == 0);
    cfg_unref(c);
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", "
                                            "\"fallback\": [{\"email\": \"o@a.test\"}]}"),
                    "sites[0].tls.acme.fallback[0].ca: required key is missing (the CA's "
                    "directory URL, e.g. \"https://acme-v02.api.letsencrypt.org/directory\")");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", \"fallback\": "
                                            "[{\"ca\": \"https://b.test/dir\", \"fallback\": "
                                            "[{\"ca\": \"https://c.test/dir\"}]}]}"),
                    "sites[0].tls.acme.fallback[0].fallback: a fallback CA cannot have fallbacks "
                    "of its own (list them all in tls.acme.fallback)");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", "
                                            "\"fallback\": {\"ca\": \"https://b.test/dir\"}}"),
                    "sites[0].tls.acme.fallback: expected an array of 1 to 4 objects {\"ca\": "
                    "URL, ...}, got object");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", "
                                            "\"fallback\": [{\"ca\": \"https://b.test/dir\", "
                                            "\"key_type\": \"x\"}]}"),
                    "sites[0].tls.acme.fallback[0].key_type: must be \"p256\", \"p384\", "
                    "\"rsa2048\" or \"rsa4096\"");
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"", "{\"ca\": \"https://ca.test/dir\", "
                                            "\"retry_first\": \"500ms\"}"),
                    "sites[0].tls.acme.retry_first: \"500ms\" is too short (minimum 1s)");
    /* One account per CA and email, fallbacks included. */
    EXPECT_BAD_SITE(ACME_SITE("\"a.test\"",
                              "{\"ca\": \"https://ca.test/dir\", \"email\": \"o@a.test\", "
                              "\"fallback\": [{\"ca\": \"https://ca.test/dir\", \"email\": "
                              "\"o@a.test\", \"eab\": {\"kid\": \"k\", \"hmac_key\": \"aGk\"}}]}"),
                    "sites[0].tls.acme.fallback[0].eab: differs from sites[0] for the same CA and "
                    "email (one account per CA and email: use the same eab, or another email)");
    /* A fallback could order too: a wildcard needs dns-01 from every issuer. */
    snprintf(json, sizeof(json),
             "{\"sites\": [" ACME_SITE("\"*.d.test\"",
                                       "{\"ca\": \"https://ca.test/dir\", \"challenges\": "
                                       "[\"dns-01\"], \"dns_hook\": \"%s\", \"fallback\": "
                                       "[{\"ca\": \"https://b.test/dir\"}]}") "]}",
             hook);
    expect_bad(json,
               "sites[0].hosts: wildcard \"*.d.test\" needs the dns-01 challenge "
               "(tls.acme.challenges)",
               __LINE__);
}

TEST(test_admin_and_ip_limits)
{
    struct cfg *c = load("{\"admin\": {\"listen\": \"127.0.0.1:2019\", \"token\": "
                         "\"0123456789abcdef\"}, \"limits\": {\"per_ip_rate\": 5}, "
                         "\"log\": {\"access_format\": \"common\"}, " SITE_OK "}");
    CHECK(c != NULL);
    if (c == NULL) {
        print_problems();
        return;
    }
    CHECK(c->admin.enabled);
    CHECK_STR(c->admin.listen, "127.0.0.1:2019");
    CHECK_STR(c->admin.token, "0123456789abcdef");
    CHECK_EQ_INT(c->admin.listen_ss.ss_family, AF_INET);
    CHECK_EQ_INT(c->limits.per_ip_rate, 5);
    CHECK_EQ_INT(c->limits.per_ip_burst, 5); /* defaults to one second's worth */
    CHECK_EQ_INT(c->limits.per_ip_connections, 0);
    CHECK_EQ_INT(c->access_log_format, CFG_LOG_COMMON);
    round_trip(c);
    char *shown = cfg_dump_redacted(c);
    CHECK(shown != NULL && strstr(shown, "0123456789abcdef") == NULL);
    CHECK(shown != NULL && strstr(shown, "\"token\": \"<redacted>\"") != NULL);
    free(shown);
    cfg_unref(c);
    c = load("{\"admin\": {\"enabled\": false, \"listen\": \"[::1]:2019\", \"token\": "
             "\"0123456789abcdef\"}, " SITE_OK "}");
    CHECK(c != NULL && !c->admin.enabled && c->admin.listen_ss.ss_family == AF_INET6);
    cfg_unref(c);
    EXPECT_BAD_ROOT("\"admin\": {\"listen\": \"10.0.0.1:2019\", \"token\": "
                    "\"0123456789abcdef\"}",
                    "admin.listen: \"10.0.0.1:2019\" is not a loopback address: the admin API "
                    "listens on 127.0.0.1 or [::1] only (like \"127.0.0.1:2019\")");
    EXPECT_BAD_ROOT("\"admin\": {\"listen\": \"127.0.0.1:2019\"}",
                    "admin.token: required with admin.listen: TCP clients authenticate with "
                    "\"Authorization: Bearer TOKEN\"");
    EXPECT_BAD_ROOT("\"admin\": {\"token\": \"short secret\"}",
                    "admin.token: must be at least 16 printable characters without spaces, got 12");
    EXPECT_BAD_ROOT("\"log\": {\"format\": \"common\"}",
                    "log.format: \"common\" is not a log format (text, json)");
    EXPECT_BAD_ROOT("\"limits\": {\"per_ip_rate\": -1}",
                    "limits.per_ip_rate: must be 0..1000000, got -1");
}

TEST(test_http2)
{
    struct cfg *c = load("{\"sites\": [{\"hosts\": [\"a.test\"], \"to\": \"127.0.0.1:8080\"}]}");
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK(c->http2.enabled);
        CHECK_EQ_INT(c->http2.max_concurrent_streams, 100);
        CHECK_EQ_INT(c->http2.max_resets, 200);
        cfg_unref(c);
    }
    c = load("{\"http2\": {\"enabled\": false, \"max_concurrent_streams\": 7, "
             "\"max_resets\": 9}, \"sites\": [{\"hosts\": [\"a.test\"], "
             "\"to\": \"127.0.0.1:8080\"}]}");
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK(!c->http2.enabled);
        CHECK_EQ_INT(c->http2.max_concurrent_streams, 7);
        CHECK_EQ_INT(c->http2.max_resets, 9);
        cfg_unref(c);
    }
    EXPECT_BAD_ROOT("\"http2\": true", "http2: expected an object, got boolean");
    EXPECT_BAD_ROOT("\"http2\": {\"enabled\": 1}",
                    "http2.enabled: expected a boolean (true or false), got integer");
    EXPECT_BAD_ROOT("\"http2\": {\"max_concurrent_streams\": 0}",
                    "http2.max_concurrent_streams: must be 1..10000, got 0");
    EXPECT_BAD_ROOT("\"http2\": {\"max_resets\": 0}",
                    "http2.max_resets: must be 1..1000000, got 0");
    EXPECT_BAD_ROOT("\"http2\": {\"max_reset\": 5}",
                    "http2.max_reset: unknown key (did you mean \"max_resets\"?)");
}

HARNESS_MAIN(T(test_setup), T(test_admin_and_ip_limits), T(test_minimal_defaults),
             T(test_acme_sites), T(test_quick_default_issuer), T(test_full_config),
             T(test_bad_types), T(test_bad_values), T(test_many_problems_at_once),
             T(test_problem_cap), T(test_unknown_keys), T(test_upstream), T(test_duplicate_hosts),
             T(test_host_names_and_wildcards), T(test_addresses), T(test_durations),
             T(test_tls_files), T(test_json_errors), T(test_data_dir), T(test_quick),
             T(test_dump_round_trip), T(test_refcount_and_generation), T(test_host_matches),
             T(test_quote_limits), T(test_examples), T(test_http2), T(test_teardown))
