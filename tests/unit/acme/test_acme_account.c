/* Tests of acme/account.c against the fake CA: storage paths, key creation
 * (0600) and reuse, newAccount with terms and contact, the refusal to go on
 * without agreement or a required EAB, EAB verified by the CA, recovery of a
 * lost account.json with onlyReturnExisting, a CA that forgot the account,
 * key rollover and deactivation. */
#include "acme/account.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "acme/client.h"
#include "fake_ca.h"
#include "harness.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"

static char tmp_root[64];

struct env {
    struct event_base *base;
    struct fake_ca *ca;
    struct acme_client *c;
    char data_dir[128];
};

struct result {
    bool is_done;
    int calls;
    bool is_ok;
    struct acme_problem prob;
    struct dm_err err;
};

static void on_done(struct acme_account *a, const struct acme_problem *prob,
                    const struct dm_err *err, void *arg)
{
    (void)a;
    struct result *r = arg;
    r->calls++;
    r->is_done = true;
    r->is_ok = prob == NULL;
    if (prob != NULL) {
        r->prob = *prob;
        r->err = *err;
    }
}

static void env_init(struct env *e, const char *name)
{
    e->base = event_base_new();
    e->ca = fake_ca_new(e->base);
    snprintf(e->data_dir, sizeof(e->data_dir), "%s/%s", tmp_root, name);
    struct acme_client_opts o = {.directory_url = fake_ca_dir_url(e->ca), .retry_base_ms = 10};
    struct dm_err err = {0};
    e->c = acme_client_new(e->base, &o, &err);
    CHECK(e->c != NULL);
}

static void env_cleanup(struct env *e)
{
    acme_client_free(e->c);
    fake_ca_free(e->ca);
    event_base_free(e->base);
}

static struct acme_account *open_acct(struct env *e, const char *email, bool agree)
{
    struct acme_account_opts o = {.data_dir = e->data_dir, .email = email, .is_tos_agreed = agree};
    struct dm_err err = {0};
    struct acme_account *a = acme_account_open(e->c, &o, &err);
    if (a == NULL) {
        fprintf(stderr, "open: %s\n", err.msg);
    }
    return a;
}

static void do_register(struct env *e, struct acme_account *a, struct result *r)
{
    memset(r, 0, sizeof(*r));
    struct dm_err err = {0};
    CHECK(acme_account_register_start(a, on_done, r, &err) != NULL);
    CHECK_EQ_INT(r->calls, 0);
    CHECK(fake_run(e->base, &r->is_done, 5000));
}

TEST(test_storage_dir)
{
    char buf[512];
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_account_storage_dir(buf, sizeof(buf), "/var/lib/dm",
                                          "https://acme-v02.api.letsencrypt.org/directory",
                                          "Admin@Example.com", &err),
                 0);
    CHECK_STR(buf, "/var/lib/dm/acme/acme-v02.api.letsencrypt.org-directory/admin@example.com");
    CHECK_EQ_INT(
        acme_account_storage_dir(buf, sizeof(buf), "/d", "https://127.0.0.1:14000/dir", NULL, &err),
        0);
    CHECK_STR(buf, "/d/acme/127.0.0.1-14000-dir/default");
    CHECK_EQ_INT(acme_account_storage_dir(buf, sizeof(buf), "/d", "https://../..//", "", &err), 0);
    CHECK_STR(buf, "/d/acme/ca/default"); /* never "." or ".." */
    CHECK_EQ_INT(
        acme_account_storage_dir(buf, sizeof(buf), "/d", "https://x.test/dir", "a,b@x.test", &err),
        -1);
    CHECK_EQ_INT(err.code, DM_E_CONFIG);
    CHECK_EQ_INT(
        acme_account_storage_dir(buf, sizeof(buf), "/d", "https://x.test/dir", "nobody", &err), -1);
    CHECK_EQ_INT(
        acme_account_storage_dir(buf, sizeof(buf), "/d", "https://x.test/dir", "a@b@c", &err), -1);
    char long_url[400];
    snprintf(long_url, sizeof(long_url), "https://ca.test/%0300d", 7);
    CHECK_EQ_INT(acme_account_storage_dir(buf, sizeof(buf), "/d", long_url, NULL, &err), 0);
    CHECK(strlen(buf) < 160);
    char other[512];
    long_url[strlen(long_url) - 1] = '8';
    CHECK_EQ_INT(acme_account_storage_dir(other, sizeof(other), "/d", long_url, NULL, &err), 0);
    CHECK(strcmp(buf, other) != 0); /* the hash tells them apart */
    CHECK_EQ_INT(acme_account_storage_dir(buf, 10, "/d", "https://x.test/dir", NULL, &err), -1);
    CHECK_EQ_INT(err.code, DM_E_LIMIT);
}

TEST(test_register_and_reload)
{
    struct env e;
    env_init(&e, "reg");
    fake_ca_knobs(e.ca)->tos_url = "https://ca.test/terms.pdf";
    struct acme_account *a = open_acct(&e, "ops@example.com", true);
    CHECK(a != NULL);
    CHECK(acme_account_kid(a) == NULL);
    char path[600];
    snprintf(path, sizeof(path), "%s/account.key", acme_account_path(a));
    struct stat st;
    CHECK_EQ_INT(stat(path, &st), 0);
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    struct result r;
    do_register(&e, a, &r);
    CHECK(r.is_ok);
    CHECK(acme_account_kid(a) != NULL && strstr(acme_account_kid(a), "/acct/0") != NULL);
    const char *p = fake_ca_last_payload(e.ca, "new-acct");
    CHECK(p != NULL && strstr(p, "\"termsOfServiceAgreed\":true") != NULL);
    CHECK(p != NULL && strstr(p, "\"contact\":[\"mailto:ops@example.com\"]") != NULL);
    /* A new key went straight to newAccount: no onlyReturnExisting lookup. */
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 1);
    char thumb[ACME_THUMBPRINT_LEN + 1];
    snprintf(thumb, sizeof(thumb), "%s", acme_key_thumbprint(acme_account_key(a)));
    acme_account_free(a);

    /* Reopened: same key, kid from account.json, nothing sent. */
    a = open_acct(&e, "ops@example.com", true);
    CHECK(a != NULL);
    CHECK_STR(acme_key_thumbprint(acme_account_key(a)), thumb);
    CHECK(acme_account_kid(a) != NULL);
    do_register(&e, a, &r);
    CHECK(r.is_ok);
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 1);
    acme_account_free(a);

    /* account.json lost: the stored key finds the account again. */
    snprintf(path, sizeof(path), "%s/acme", e.data_dir);
    a = open_acct(&e, "ops@example.com", true);
    snprintf(path, sizeof(path), "%s/account.json", acme_account_path(a));
    acme_account_free(a);
    CHECK_EQ_INT(unlink(path), 0);
    a = open_acct(&e, "ops@example.com", false); /* no agreement needed to look up */
    CHECK(acme_account_kid(a) == NULL);
    do_register(&e, a, &r);
    CHECK(r.is_ok);
    CHECK_STR(fake_ca_last_payload(e.ca, "new-acct"), "{\"onlyReturnExisting\":true}");
    CHECK(acme_account_kid(a) != NULL && strstr(acme_account_kid(a), "/acct/0") != NULL);
    CHECK(dm_file_exists(path));

    /* The CA forgot it (reset): lookup says accountDoesNotExist, then create. */
    fake_ca_forget_accounts(e.ca);
    acme_account_forget(a);
    CHECK(!dm_file_exists(path));
    unsigned before = fake_ca_count(e.ca, "new-acct");
    acme_account_free(a);
    a = open_acct(&e, "ops@example.com", true);
    do_register(&e, a, &r);
    CHECK(r.is_ok);
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), before + 2);
    CHECK(acme_account_kid(a) != NULL && strstr(acme_account_kid(a), "/acct/1") != NULL);
    acme_account_free(a);
    env_cleanup(&e);
}

TEST(test_tos_and_eab_required)
{
    struct env e;
    env_init(&e, "tos");
    fake_ca_knobs(e.ca)->tos_url = "https://ca.test/terms.pdf";
    struct acme_account *a = open_acct(&e, NULL, false);
    struct result r;
    do_register(&e, a, &r);
    CHECK(!r.is_ok);
    CHECK_EQ_INT(r.err.code, DM_E_CONFIG);
    CHECK(strstr(r.err.msg, "terms of service") != NULL);
    CHECK(strstr(r.err.msg, "https://ca.test/terms.pdf") != NULL);
    CHECK_EQ_INT(fake_ca_count(e.ca, "new-acct"), 0); /* refused before sending */
    acme_account_free(a);
    env_cleanup(&e);

    /* A new client: the directory (and its meta) is cached per client. */
    env_init(&e, "eab");
    static const uint8_t hmac[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                                     12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                     23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
    struct fake_ca_knobs *k = fake_ca_knobs(e.ca);
    k->is_eab_required = true;
    k->eab_kid = "kid-1";
    k->eab_key = hmac;
    k->eab_key_len = sizeof(hmac);
    a = open_acct(&e, NULL, true);
    do_register(&e, a, &r);
    CHECK(!r.is_ok);
    CHECK_EQ_INT(r.err.code, DM_E_CONFIG);
    CHECK(strstr(r.err.msg, "External Account Binding") != NULL);
    acme_account_free(a);

    /* Half a binding is a config error at open. */
    struct dm_err err = {0};
    struct acme_account_opts half = {.data_dir = e.data_dir, .eab_kid = "kid-1"};
    CHECK(acme_account_open(e.c, &half, &err) == NULL);
    CHECK_EQ_INT(err.code, DM_E_CONFIG);

    char *b64 = acme_b64url_encode(hmac, sizeof(hmac));
    struct acme_account_opts o = {.data_dir = e.data_dir,
                                  .is_tos_agreed = true,
                                  .eab_kid = "kid-1",
                                  .eab_hmac_key = b64,
                                  .email = "eab@example.com"};
    a = acme_account_open(e.c, &o, &err);
    CHECK(a != NULL);
    do_register(&e, a, &r);
    CHECK(r.is_ok);
    const char *p = fake_ca_last_payload(e.ca, "new-acct");
    CHECK(p != NULL && strstr(p, "\"externalAccountBinding\":{") != NULL);
    acme_account_free(a);

    /* The wrong MAC key: the CA's refusal comes back as its problem. */
    b64[0] = b64[0] == 'A' ? 'B' : 'A';
    o.email = "other@example.com";
    a = acme_account_open(e.c, &o, &err);
    do_register(&e, a, &r);
    CHECK(!r.is_ok);
    CHECK(acme_problem_is(&r.prob, "externalAccountRequired"));
    acme_account_free(a);
    free(b64);
    env_cleanup(&e);
}

TEST(test_key_change_and_deactivate)
{
    struct env e;
    env_init(&e, "roll");
    struct acme_account *a = open_acct(&e, NULL, true);
    struct result r;
    do_register(&e, a, &r);
    CHECK(r.is_ok);
    struct dm_err err = {0};
    struct acme_key *nk = acme_key_new(ACME_KEY_ES384, 0, &err);
    char new_thumb[ACME_THUMBPRINT_LEN + 1];
    snprintf(new_thumb, sizeof(new_thumb), "%s", acme_key_thumbprint(nk));
    memset(&r, 0, sizeof(r));
    CHECK(acme_account_key_change_start(a, nk, on_done, &r, &err) != NULL);
    nk = NULL;
    CHECK(fake_run(e.base, &r.is_done, 5000));
    CHECK(r.is_ok);
    CHECK_STR(acme_key_thumbprint(acme_account_key(a)), new_thumb);
    /* The rolled key is on disk, and the CA accepts it (kid requests). */
    char path[600];
    snprintf(path, sizeof(path), "%s/account.key", acme_account_path(a));
    char *pem = NULL;
    size_t len = 0;
    CHECK_EQ_INT(dm_file_read(path, 65536, &pem, &len, &err), 0);
    struct acme_key *loaded = acme_key_parse_pem(pem, len, &err);
    CHECK(loaded != NULL && strcmp(acme_key_thumbprint(loaded), new_thumb) == 0);
    acme_key_free(loaded);
    free(pem);

    memset(&r, 0, sizeof(r));
    CHECK(acme_account_deactivate_start(a, on_done, &r, &err) != NULL);
    CHECK(fake_run(e.base, &r.is_done, 5000));
    CHECK(r.is_ok);
    CHECK_STR(fake_ca_last_payload(e.ca, "acct"), "{\"status\":\"deactivated\"}");
    CHECK(acme_account_kid(a) == NULL);
    CHECK(!dm_file_exists(path));
    snprintf(path, sizeof(path), "%s/account.key.deactivated", acme_account_path(a));
    CHECK(dm_file_exists(path));
    /* Not registered any more: rollover and deactivation refuse at once. */
    nk = acme_key_new(ACME_KEY_ES256, 0, &err);
    CHECK(acme_account_key_change_start(a, nk, on_done, &r, &err) == NULL);
    CHECK(acme_account_deactivate_start(a, on_done, &r, &err) == NULL);
    /* Cancel before it runs: no callback. */
    struct result c = {0};
    struct acme_account_op *op = acme_account_register_start(a, on_done, &c, &err);
    acme_account_op_cancel(op);
    bool never = false;
    fake_run(e.base, &never, 30);
    CHECK_EQ_INT(c.calls, 0);
    acme_account_free(a);
    env_cleanup(&e);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    snprintf(tmp_root, sizeof(tmp_root), "/tmp/dm-acct-XXXXXX");
    if (mkdtemp(tmp_root) == NULL) {
        return 1;
    }
    static const struct harness_test tests[] = {
        T(test_storage_dir),
        T(test_register_and_reload),
        T(test_tos_and_eab_required),
        T(test_key_change_and_deactivate),
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        harness_current = tests[i].name;
        int before = harness_failures;
        tests[i].fn();
        fprintf(stderr, "%s %s\n", harness_failures == before ? "ok  " : "FAIL", tests[i].name);
    }
    fprintf(stderr, "%d checks, %d failed\n", harness_checks, harness_failures);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmp_root);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", tmp_root);
    }
    return harness_failures == 0 ? 0 : 1;
}
