/* Allocation-failure walk for config/: fails the 1st, 2nd, ... allocation of
 * a load, a reverse-proxy snapshot and a dump until one runs clean, checking
 * each attempt fails cleanly (NULL, no crash). Leaks on these paths show up
 * under LeakSanitizer. malloc & co. are wrapped at link time (-Wl,--wrap) and
 * jansson's allocator is replaced, so allocations inside jansson fail too. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config/config.h"
#include "harness.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

static long fail_countdown = -1; /* -1: never fail */
static bool has_failed;

static bool should_fail(void)
{
    if (fail_countdown < 0) {
        return false;
    }
    if (fail_countdown == 0) {
        has_failed = true;
        fail_countdown = -1; /* one failure per attempt, like a real OOM blip */
        return true;
    }
    fail_countdown--;
    return false;
}

void *__wrap_malloc(size_t n)
{
    return should_fail() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
    return should_fail() ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
    return should_fail() ? NULL : __real_strndup(s, n);
}

static void *json_malloc(size_t n)
{
    return should_fail() ? NULL : __real_malloc(n);
}

static const char *const config_json =
    "{\"bind\": \"0.0.0.0\", \"https_port\": 8443, \"http_port\": 8081, \"data_dir\": \"rel\",\n"
    " \"timeouts\": {\"idle\": \"5m\", \"hedshake\": \"1s\"},\n"
    " \"limits\": {\"request_line\": 4096}, \"trusted_proxies\": [\"10.0.0.0/8\", \"::1\"],\n"
    " \"log\": {\"level\": \"debug\", \"access\": \"/var/log/a.log\"},\n"
    " \"local_ca\": {\"lifetime\": \"1d\"},\n"
    " \"sites\": [{\"hosts\": [\"a.test\", \"*.a.test\"], \"to\": [\"127.0.0.1:1\", "
    "\"[::1]:2\", \"app.internal:3\", \"unix:/run/a.sock\"]},\n"
    "           {\"hosts\": [\"b.test\", \"a.test\"], \"to\": \"abc\", \"tls\": {\"cert\": "
    "\"/nonexistent.pem\", \"key\": \"k.pem\"}}]}";

/* valid_json is config_json without its problems. */
static const char *const valid_json =
    "{\"bind\": \"0.0.0.0\", \"https_port\": 8443, \"http_port\": 8081, \"data_dir\": \"rel\",\n"
    " \"timeouts\": {\"idle\": \"5m\"}, \"trusted_proxies\": [\"10.0.0.0/8\", \"::1\"],\n"
    " \"log\": {\"level\": \"debug\", \"access\": \"/var/log/a.log\"},\n"
    " \"sites\": [{\"hosts\": [\"a.test\", \"*.a.test\"], \"to\": [\"127.0.0.1:1\", "
    "\"[::1]:2\", \"app.internal:3\", \"unix:/run/a.sock\"]},\n"
    "           {\"hosts\": [\"b.test\"], \"to\": \"b.internal:80\"}]}";

/* walk runs attempt() failing allocation 0, 1, 2, ... until one attempt
 * makes no allocation fail; returns the number of failure points walked. */
static int walk(bool (*attempt)(void))
{
    int n = 0;
    for (;; n++) {
        has_failed = false;
        fail_countdown = n;
        bool is_ok = attempt();
        fail_countdown = -1;
        CHECK(is_ok);
        if (!has_failed || n > 100000) {
            break;
        }
    }
    return n;
}

static bool attempt_bad_config(void)
{
    struct cfg_problems p;
    struct cfg *c = cfg_load_string(config_json, strlen(config_json), "oom.json", NULL, &p);
    fail_countdown = -1;
    bool is_ok = c == NULL; /* invalid with or without allocation failures */
    cfg_problems_cleanup(&p);
    cfg_unref(c);
    return is_ok;
}

static bool attempt_good_config(void)
{
    struct cfg_problems p;
    struct cfg *c = cfg_load_string(valid_json, strlen(valid_json), "oom.json", "/d", &p);
    bool is_failed = has_failed;
    fail_countdown = -1;
    /* A failed allocation fails the load (never a half-built snapshot); a
     * failed load names at least one problem unless recording it failed. */
    bool is_ok = is_failed ? c == NULL : (c != NULL && p.num_items == 0);
    cfg_problems_cleanup(&p);
    cfg_unref(c);
    return is_ok;
}

static bool attempt_quick(void)
{
    const char *to[] = {"127.0.0.1:1", "app.internal:2", "bad"};
    struct cfg_quick q = {.from = "localhost",
                          .to = to,
                          .num_to = 2,
                          .https_port = -1,
                          .http_port = -1,
                          .data_dir = "rel"};
    struct cfg_problems p;
    struct cfg *c = cfg_from_quick(&q, &p);
    bool is_ok = has_failed ? c == NULL : c != NULL;
    fail_countdown = -1;
    cfg_problems_cleanup(&p);
    cfg_unref(c);
    q.num_to = 3;
    c = cfg_from_quick(&q, &p);
    is_ok = is_ok && c == NULL;
    cfg_problems_cleanup(&p);
    return is_ok;
}

static struct cfg *dump_source;

static bool attempt_dump(void)
{
    char *text = cfg_dump(dump_source);
    bool is_ok = has_failed || text != NULL;
    fail_countdown = -1;
    free(text);
    return is_ok;
}

static bool attempt_file(void)
{
    struct cfg_problems p;
    struct cfg *c = cfg_load_file("/nonexistent/doorman.json", NULL, &p);
    fail_countdown = -1;
    bool is_ok = c == NULL;
    cfg_problems_cleanup(&p);
    return is_ok;
}

TEST(test_oom_load)
{
    CHECK(walk(attempt_bad_config) > 20);
    CHECK(walk(attempt_good_config) > 20);
}

TEST(test_oom_quick)
{
    CHECK(walk(attempt_quick) > 5);
}

TEST(test_oom_dump)
{
    struct cfg_problems p;
    dump_source = cfg_load_string(valid_json, strlen(valid_json), "oom.json", "/d", &p);
    CHECK(dump_source != NULL);
    cfg_problems_cleanup(&p);
    if (dump_source != NULL) {
        CHECK(walk(attempt_dump) > 20);
    }
    cfg_unref(dump_source);
}

TEST(test_oom_file)
{
    walk(attempt_file);
}

static void setup(void)
{
    json_set_alloc_funcs(json_malloc, free);
}

TEST(test_setup)
{
    setup();
}

HARNESS_MAIN(T(test_setup), T(test_oom_load), T(test_oom_quick), T(test_oom_dump), T(test_oom_file))
