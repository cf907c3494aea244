/* Tests for acme/ondemand_policy.c: which names may ever reach a CA, the
 * allow patterns, site coverage, and registered domains by the Public
 * Suffix List (Debian's file; tests/install-deps.sh installs it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "acme/ondemand_policy.h"
#include "config/config_types.h"
#include "harness.h"

TEST(test_name_check)
{
    static const char *const good[] = {"a.example.test", "xn--bcher-kva.example", "a-b.c0.io",
                                       "1a.example.com", "shop.example.co.uk"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        const char *why = acme_od_name_check(good[i]);
        if (why != NULL) {
            fprintf(stderr, "%s: %s\n", good[i], why);
        }
        CHECK(why == NULL);
    }
    static const char *const bad[] = {"",
                                      "localhost",
                                      "a.localhost",
                                      "example",
                                      "127.0.0.1",
                                      "10.1.2.3",
                                      "a..example.com",
                                      ".a.com",
                                      "a.com.",
                                      "-a.example.com",
                                      "a-.example",
                                      "a_b.example",
                                      "a b.example",
                                      "ab--cd.example",
                                      "*.example.com",
                                      "a.EXAMPLE.com"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *why = acme_od_name_check(bad[i]);
        if (why == NULL) {
            fprintf(stderr, "accepted: \"%s\"\n", bad[i]);
        }
        CHECK(why != NULL);
    }
    char label[80], name[300];
    memset(label, 'a', 64);
    label[64] = '\0';
    snprintf(name, sizeof(name), "%s.example.com", label);
    CHECK(acme_od_name_check(name) != NULL); /* a 64-byte label */
    label[63] = '\0';
    snprintf(name, sizeof(name), "%s.example.com", label);
    CHECK(acme_od_name_check(name) == NULL);
    /* 254 bytes in all: too long even with short labels. */
    for (size_t i = 0; i < 254; i++) {
        name[i] = i % 2 == 0 ? 'a' : '.';
    }
    name[253] = 'a';
    name[254] = '\0';
    CHECK(acme_od_name_check(name) != NULL);
}

TEST(test_patterns_and_sites)
{
    CHECK(acme_od_pattern_match("*.saas.test", "a.saas.test"));
    CHECK(acme_od_pattern_match("*.saas.test", "a.b.saas.test")); /* any depth */
    CHECK(!acme_od_pattern_match("*.saas.test", "saas.test"));
    CHECK(!acme_od_pattern_match("*.saas.test", "xsaas.test"));
    CHECK(acme_od_pattern_match("exact.test", "exact.test"));
    CHECK(!acme_od_pattern_match("exact.test", "a.exact.test"));

    char *allow[] = {"*.saas.test", "one.example.com"};
    struct cfg_ondemand od = {.allow = allow, .num_allow = 2};
    struct cfg_site catch_all = {.on_demand = &od};
    CHECK(acme_od_static_check(&catch_all, "a.saas.test") == NULL);
    CHECK(acme_od_static_check(&catch_all, "one.example.com") == NULL);
    CHECK(acme_od_static_check(&catch_all, "two.example.com") != NULL);
    CHECK(acme_od_static_check(&catch_all, "localhost") != NULL);
    /* Hosts of an on-demand site cover as routing does: one label. */
    char *hosts[] = {"*.saas.test"};
    struct cfg_site site = {.hosts = hosts, .num_hosts = 1, .on_demand = &od};
    CHECK(acme_od_site_covers(&site, "a.saas.test"));
    CHECK(!acme_od_site_covers(&site, "a.b.saas.test"));
    CHECK(acme_od_static_check(&site, "a.b.saas.test") != NULL);
    /* Without allow patterns the name goes on (to ask). */
    struct cfg_ondemand ask_only = {.ask = "http://127.0.0.1:1/"};
    struct cfg_site asked = {.on_demand = &ask_only};
    CHECK(acme_od_static_check(&asked, "anything.example.org") == NULL);
    struct cfg_site plain = {0};
    CHECK(acme_od_static_check(&plain, "anything.example.org") != NULL);
}

static void check_domain(const struct acme_psl *psl, const char *name, const char *want)
{
    char out[256] = "";
    bool ok = acme_psl_registered_domain(psl, name, out, sizeof(out));
    if (want == NULL) {
        if (ok) {
            fprintf(stderr, "%s: expected a public suffix, got %s\n", name, out);
        }
        CHECK(!ok);
    } else {
        if (!ok || strcmp(out, want) != 0) {
            fprintf(stderr, "%s: got %s, want %s\n", name, ok ? out : "(none)", want);
        }
        CHECK(ok && strcmp(out, want) == 0);
    }
}

TEST(test_registered_domains)
{
    const char *path = "/usr/share/publicsuffix/public_suffix_list.dat";
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "%s missing: apt-get install publicsuffix (tests/install-deps.sh)\n", path);
        CHECK(0);
        return;
    }
    struct acme_psl *psl = acme_psl_load(path);
    CHECK(psl != NULL);
    check_domain(psl, "a.b.example.co.uk", "example.co.uk");
    check_domain(psl, "example.co.uk", "example.co.uk");
    check_domain(psl, "co.uk", NULL);
    check_domain(psl, "shop.example.com", "example.com");
    check_domain(psl, "x.y.appspot.com", "y.appspot.com"); /* a private-section suffix */
    check_domain(psl, "a.b.c.ck", "b.c.ck");               /* *.ck */
    check_domain(psl, "www.ck", "www.ck");                 /* !www.ck */
    check_domain(psl, "a.www.ck", "www.ck");
    check_domain(psl, "n1.saas.test", "saas.test"); /* no rule: the last label */
    acme_psl_free(psl);
    /* Without the list: the last two labels. */
    check_domain(NULL, "a.b.example.co.uk", "co.uk");
    check_domain(NULL, "example", NULL);
    CHECK(acme_psl_load("/nonexistent/psl.dat") == NULL);
}

HARNESS_MAIN(T(test_name_check), T(test_patterns_and_sites), T(test_registered_domains))
