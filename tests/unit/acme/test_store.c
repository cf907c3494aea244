/* Tests for acme/store.c: exact and wildcard lookup, default certificate,
 * replace and remove, name limits, growth, and a concurrency smoke test
 * (readers on two threads while a writer swaps certificates for a second;
 * run it under TSan and ASan). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "acme/acme.h"
#include "acme/cert_int.h"
#include "fixtures.h"
#include "harness.h"
#include "proxy/core/time.h"

static const time_t T0 = 1700000000;

/* make_cert returns a self-signed certificate whose notAfter tags it. */
static struct acme_cert *make_cert(const char *sans, time_t tag)
{
    EVP_PKEY *k = fx_key(FX_P256);
    X509 *x = fx_cert(k, sans, T0, tag, NULL, NULL);
    char *chain = fx_cert_pem(x), *key = fx_key_pem(k, FX_PKCS8);
    struct acme_cert *c = acme_cert_from_pem(chain, strlen(chain), key, strlen(key), NULL, NULL);
    free(chain);
    free(key);
    X509_free(x);
    EVP_PKEY_free(k);
    return c;
}

/* tag_of looks name up and returns the notAfter tag of what it finds, 0 if
 * nothing. */
static time_t tag_of(struct acme_store *s, const char *name)
{
    struct acme_cert *c = acme_store_get(s, name, strlen(name));
    time_t t = c != NULL ? acme_cert_not_after(c) : 0;
    acme_cert_unref(c);
    return t;
}

static time_t default_tag(struct acme_store *s)
{
    struct acme_cert *c = acme_store_get_default(s);
    time_t t = c != NULL ? acme_cert_not_after(c) : 0;
    acme_cert_unref(c);
    return t;
}

TEST(test_exact_and_wildcard)
{
    struct acme_store *s = acme_store_new();
    struct acme_cert *a = make_cert("a.test", T0 + 1);
    struct acme_cert *w = make_cert("*.w.test", T0 + 2);
    struct acme_cert *x = make_cert("x.w.test", T0 + 3);
    CHECK_EQ_INT(acme_store_put(s, "a.test", a, false), 0);
    CHECK_EQ_INT(acme_store_put(s, "*.w.test", w, false), 0);
    CHECK_EQ_INT(acme_store_put(s, "x.w.test", x, false), 0);
    CHECK_EQ_INT(acme_store_count(s), 3);

    CHECK_EQ_INT(tag_of(s, "a.test"), T0 + 1);
    CHECK_EQ_INT(tag_of(s, "A.TEST"), T0 + 1); /* SNI case does not matter */
    CHECK_EQ_INT(tag_of(s, "b.test"), 0);
    CHECK_EQ_INT(tag_of(s, "y.w.test"), T0 + 2); /* wildcard */
    CHECK_EQ_INT(tag_of(s, "x.w.test"), T0 + 3); /* exact beats wildcard */
    CHECK_EQ_INT(tag_of(s, "w.test"), 0);        /* wildcard needs a label */
    CHECK_EQ_INT(tag_of(s, "a.b.w.test"), 0);    /* only one label */
    CHECK_EQ_INT(tag_of(s, ".w.test"), 0);
    CHECK_EQ_INT(tag_of(s, "test"), 0);
    CHECK_EQ_INT(tag_of(s, ""), 0);

    /* The length is honoured: "a.test" inside a longer buffer. */
    struct acme_cert *c = acme_store_get(s, "a.testXYZ", 6);
    CHECK(c == a);
    acme_cert_unref(c);

    acme_cert_unref(a);
    acme_cert_unref(w);
    acme_cert_unref(x);
    acme_store_free(s);
}

TEST(test_default)
{
    struct acme_store *s = acme_store_new();
    struct acme_cert *a = make_cert("a.test", T0 + 1);
    struct acme_cert *b = make_cert("b.test", T0 + 2);
    CHECK(acme_store_get_default(s) == NULL);
    acme_store_put(s, "a.test", a, false); /* first ever put: default */
    CHECK_EQ_INT(default_tag(s), T0 + 1);
    acme_store_put(s, "b.test", b, false);
    CHECK_EQ_INT(default_tag(s), T0 + 1);
    acme_store_put(s, "b.test", b, true);
    CHECK_EQ_INT(default_tag(s), T0 + 2);
    /* Replacing the default name's cert replaces the default. */
    acme_store_put(s, "b.test", a, false);
    CHECK_EQ_INT(default_tag(s), T0 + 1);
    /* Removing it leaves no default until the next put. */
    acme_store_remove(s, "b.test");
    CHECK(acme_store_get_default(s) == NULL);
    acme_store_put(s, "c.test", b, false);
    CHECK_EQ_INT(default_tag(s), T0 + 2);
    acme_cert_unref(a);
    acme_cert_unref(b);
    acme_store_free(s);
}

TEST(test_replace_and_remove)
{
    struct acme_store *s = acme_store_new();
    struct acme_cert *a = make_cert("a.test", T0 + 1);
    struct acme_cert *b = make_cert("a.test", T0 + 2);
    acme_store_put(s, "a.test", a, false);
    struct acme_cert *held = acme_store_get(s, "a.test", 6); /* an in-flight handshake */
    CHECK_EQ_INT(atomic_load(&a->refs), 3);
    acme_store_put(s, "A.Test", b, false); /* names are stored lower-case */
    CHECK_EQ_INT(acme_store_count(s), 1);
    CHECK_EQ_INT(tag_of(s, "a.test"), T0 + 2);
    CHECK_EQ_INT(atomic_load(&a->refs), 2); /* store dropped its reference */
    CHECK(held == a);
    CHECK_EQ_INT(acme_cert_not_after(held), T0 + 1); /* still usable */
    acme_cert_unref(held);

    acme_store_remove(s, "a.test");
    CHECK_EQ_INT(acme_store_count(s), 0);
    CHECK_EQ_INT(tag_of(s, "a.test"), 0);
    CHECK_EQ_INT(atomic_load(&b->refs), 1);
    acme_store_remove(s, "a.test"); /* twice: no-op */
    acme_store_remove(s, "");
    acme_store_remove(s, NULL);
    acme_cert_unref(a);
    acme_cert_unref(b);
    acme_store_free(s);
}

TEST(test_name_limits)
{
    struct acme_store *s = acme_store_new();
    struct acme_cert *a = make_cert("a.test", T0 + 1);
    char name[300];
    memset(name, 'a', sizeof(name));
    name[253] = '\0';
    CHECK_EQ_INT(acme_store_put(s, name, a, false), 0);
    CHECK_EQ_INT(tag_of(s, name), T0 + 1);
    name[253] = 'a';
    name[254] = '\0';
    CHECK_EQ_INT(acme_store_put(s, name, a, false), -1);
    CHECK(acme_store_get(s, name, 254) == NULL);
    CHECK(acme_store_get(s, name, 299) == NULL);
    CHECK_EQ_INT(acme_store_put(s, "", a, false), -1);
    CHECK_EQ_INT(acme_store_put(s, "x.test", NULL, false), -1);
    CHECK(acme_store_get(s, "a\0b", 3) == NULL); /* embedded NUL */
    CHECK_EQ_INT(acme_store_count(s), 1);
    acme_cert_unref(a);
    acme_store_free(s);
}

TEST(test_many_names_grow)
{
    struct acme_store *s = acme_store_new();
    struct acme_cert *a = make_cert("a.test", T0 + 1);
    char name[64];
    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof(name), "host%d.test", i);
        CHECK_EQ_INT(acme_store_put(s, name, a, false), 0);
    }
    CHECK_EQ_INT(acme_store_count(s), 5000);
    int found = 0;
    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof(name), "HOST%d.test", i);
        found += tag_of(s, name) == T0 + 1;
    }
    CHECK_EQ_INT(found, 5000);
    for (int i = 0; i < 5000; i += 2) {
        snprintf(name, sizeof(name), "host%d.test", i);
        acme_store_remove(s, name);
    }
    CHECK_EQ_INT(acme_store_count(s), 2500);
    CHECK_EQ_INT(tag_of(s, "host1.test"), T0 + 1);
    CHECK_EQ_INT(tag_of(s, "host2.test"), 0);
    CHECK_EQ_INT(atomic_load(&a->refs), 2501);
    acme_store_free(s);
    CHECK_EQ_INT(atomic_load(&a->refs), 1);
    acme_cert_unref(a);
}

struct smoke {
    struct acme_store *s;
    atomic_bool stop;
    atomic_long lookups;
    atomic_long misses;
    atomic_long bad;
};

/* smoke_reader looks names up like handshakes do and uses what it gets. */
static void *smoke_reader(void *arg)
{
    struct smoke *sm = arg;
    while (!atomic_load(&sm->stop)) {
        const char *names[] = {"a.test", "x.w.test", "gone.test"};
        for (size_t i = 0; i < 3; i++) {
            struct acme_cert *c = acme_store_get(sm->s, names[i], strlen(names[i]));
            if (c == NULL) {
                atomic_fetch_add(&sm->misses, 1);
                continue;
            }
            size_t n = 0;
            CRYPTO_BUFFER *const *chain = acme_cert_chain(c, &n);
            time_t t = acme_cert_not_after(c);
            if (n != 1 || CRYPTO_BUFFER_len(chain[0]) == 0 || acme_cert_key(c) == NULL ||
                (t != T0 + 1 && t != T0 + 2)) {
                atomic_fetch_add(&sm->bad, 1);
            }
            acme_cert_unref(c);
            atomic_fetch_add(&sm->lookups, 1);
        }
        struct acme_cert *d = acme_store_get_default(sm->s);
        acme_cert_unref(d);
    }
    return NULL;
}

TEST(test_concurrency_smoke)
{
    struct smoke sm = {.s = acme_store_new()};
    struct acme_cert *certs[2] = {make_cert("a.test,*.w.test", T0 + 1),
                                  make_cert("a.test,*.w.test", T0 + 2)};
    acme_store_put(sm.s, "a.test", certs[0], true);
    acme_store_put(sm.s, "*.w.test", certs[0], false);
    pthread_t readers[2];
    for (int i = 0; i < 2; i++) {
        pthread_create(&readers[i], NULL, smoke_reader, &sm);
    }
    long swaps = 0;
    uint64_t end = dm_time_mono_us() + 1000000;
    while (dm_time_mono_us() < end) {
        struct acme_cert *c = certs[swaps % 2];
        acme_store_put(sm.s, "a.test", c, false);
        acme_store_put(sm.s, "*.w.test", c, false);
        acme_store_put(sm.s, "gone.test", c, false);
        acme_store_remove(sm.s, "gone.test");
        swaps++;
    }
    atomic_store(&sm.stop, true);
    for (int i = 0; i < 2; i++) {
        pthread_join(readers[i], NULL);
    }
    fprintf(stderr, "  swaps=%ld lookups=%ld misses=%ld\n", swaps, atomic_load(&sm.lookups),
            atomic_load(&sm.misses));
    CHECK(swaps > 100);
    CHECK(atomic_load(&sm.lookups) > 100);
    CHECK_EQ_INT(atomic_load(&sm.bad), 0);
    acme_store_free(sm.s);
    CHECK_EQ_INT(atomic_load(&certs[0]->refs), 1);
    CHECK_EQ_INT(atomic_load(&certs[1]->refs), 1);
    acme_cert_unref(certs[0]);
    acme_cert_unref(certs[1]);
}

HARNESS_MAIN(T(test_exact_and_wildcard), T(test_default), T(test_replace_and_remove),
             T(test_name_limits), T(test_many_names_grow), T(test_concurrency_smoke))
