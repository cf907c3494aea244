/* Tests for acme/storage_async.c: every call back runs once, from the loop,
 * never inside the _start that began it; a cancelled call never calls back
 * (and leaks nothing, under ASan); a callback may take the strings it gets;
 * the ARI window round-trips through meta.json. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "acme/cert_int.h"
#include "acme/storage.h"
#include "fixtures.h"
#include "harness.h"
#include "proxy/core/err.h"

struct seen {
    int calls;
    int rc;
    enum dm_errcode code;
    char *cert; /* taken from the reply */
    time_t ari_start, ari_end;
    char *last_error;
    size_t num_names;
    char first_name[64];
};

static void on_reply(struct acme_storage_reply *r, void *arg)
{
    struct seen *s = arg;
    s->calls++;
    s->rc = r->rc;
    s->code = r->err.code;
    if (r->cert_pem != NULL) {
        free(s->cert);
        s->cert = r->cert_pem; /* taken: the op must not free it */
        r->cert_pem = NULL;
    }
    s->num_names = r->num_names;
    if (r->num_names > 0) {
        snprintf(s->first_name, sizeof(s->first_name), "%s", r->names[0]);
    }
    s->ari_start = r->meta.ari_window_start;
    s->ari_end = r->meta.ari_window_end;
    if (r->meta.last_error != NULL) {
        free(s->last_error);
        s->last_error = r->meta.last_error;
        r->meta.last_error = NULL;
    }
}

static void run_loop(struct event_base *base)
{
    event_base_loop(base, EVLOOP_NONBLOCK);
}

TEST(test_callbacks_are_deferred_and_once)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct event_base *base = event_base_new();
    struct acme_storage *st = acme_storage_fs_new(dir, NULL);
    CHECK(base != NULL && st != NULL);
    struct seen miss = {0}, put = {0}, got = {0};
    struct dm_err err = {0};
    CHECK(acme_storage_get_start(st, base, "local", "a.test", on_reply, &miss, &err) != NULL);
    CHECK_EQ_INT(miss.calls, 0); /* not inside _start */
    run_loop(base);
    CHECK_EQ_INT(miss.calls, 1);
    CHECK_EQ_INT(miss.rc, -1);
    CHECK_EQ_INT(miss.code, DM_E_NOTFOUND);

    char *names[] = {"a.test"};
    char last[] = "rateLimited: too many";
    struct acme_storage_meta meta = {.names = names,
                                     .num_names = 1,
                                     .issuer = "local",
                                     .not_before = 1700000000,
                                     .not_after = 1700600000,
                                     .renew_after = 1700400000,
                                     .last_error = last,
                                     .ari_window_start = 1700300000,
                                     .ari_window_end = 1700350000};
    char chain[] = "CHAIN\n", key[] = "KEY\n";
    CHECK(acme_storage_put_start(st, base, "local", "a.test", chain, key, &meta, on_reply, &put,
                                 &err) != NULL);
    /* Arguments are read before _start returns: the caller may reuse them. */
    chain[0] = 'X';
    CHECK_EQ_INT(put.calls, 0);
    CHECK(acme_storage_get_start(st, base, "local", "a.test", on_reply, &got, &err) != NULL);
    run_loop(base);
    run_loop(base);
    CHECK_EQ_INT(put.calls, 1);
    CHECK_EQ_INT(put.rc, 0);
    CHECK_EQ_INT(got.calls, 1);
    CHECK_EQ_INT(got.rc, 0);
    CHECK_STR(got.cert, "CHAIN\n");
    CHECK_STR(got.last_error, "rateLimited: too many");
    CHECK_EQ_INT(got.ari_start, 1700300000);
    CHECK_EQ_INT(got.ari_end, 1700350000);

    /* Without a window nothing is stored for it, and nothing comes back. */
    struct seen put2 = {0}, got2 = {0};
    meta.ari_window_start = meta.ari_window_end = 0;
    meta.last_error = NULL;
    CHECK(acme_storage_put_start(st, base, "local", "a.test", chain, key, &meta, on_reply, &put2,
                                 &err) != NULL);
    CHECK(acme_storage_get_start(st, base, "local", "a.test", on_reply, &got2, &err) != NULL);
    run_loop(base);
    CHECK_EQ_INT(got2.rc, 0);
    CHECK_EQ_INT(got2.ari_start, 0);
    CHECK_EQ_INT(got2.ari_end, 0);
    CHECK(got2.last_error == NULL);
    CHECK_STR(got2.cert, "XHAIN\n");

    /* List, then delete, then list again: the same calls behind callbacks. */
    struct seen l1 = {0}, del = {0}, l2 = {0}, del2 = {0};
    CHECK(acme_storage_list_start(st, base, "local", on_reply, &l1, &err) != NULL);
    run_loop(base);
    CHECK_EQ_INT(l1.rc, 0);
    CHECK_EQ_INT(l1.num_names, 1);
    CHECK_STR(l1.first_name, "a.test");
    CHECK(acme_storage_delete_start(st, base, "local", "a.test", on_reply, &del, &err) != NULL);
    CHECK_EQ_INT(del.calls, 0);
    CHECK(acme_storage_list_start(st, base, "local", on_reply, &l2, &err) != NULL);
    CHECK(acme_storage_delete_start(st, base, "local", "a.test", on_reply, &del2, &err) != NULL);
    run_loop(base);
    CHECK_EQ_INT(del.calls, 1);
    CHECK_EQ_INT(del.rc, 0);
    CHECK_EQ_INT(l2.calls, 1);
    CHECK_EQ_INT(l2.num_names, 0);
    CHECK_EQ_INT(del2.rc, 0); /* deleting what is gone succeeds */
    CHECK(acme_storage_list_start(st, base, "Bad/Issuer", on_reply, &l2, &err) == NULL);

    free(miss.cert);
    free(got.cert);
    free(got.last_error);
    free(got2.cert);
    acme_storage_free(st);
    event_base_free(base);
    fx_rmtree(dir);
}

TEST(test_cancel_and_invalid)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct event_base *base = event_base_new();
    struct acme_storage *st = acme_storage_fs_new(dir, NULL);
    struct seen a = {0}, b = {0}, c = {0}, bad = {0};
    struct dm_err err = {0};
    struct acme_storage_op *op =
        acme_storage_get_start(st, base, "local", "a.test", on_reply, &a, &err);
    CHECK(op != NULL);
    acme_storage_op_cancel(op);
    acme_storage_op_cancel(NULL);
    /* Locks answer through the same path: taken, then held by another. */
    CHECK(acme_storage_lock_start(st, base, "order-a.test", 60, on_reply, &b, &err) != NULL);
    CHECK(acme_storage_lock_start(st, base, "order-a.test", 60, on_reply, &c, &err) != NULL);
    run_loop(base);
    CHECK_EQ_INT(a.calls, 0);
    CHECK_EQ_INT(b.calls, 1);
    CHECK_EQ_INT(b.rc, 0);
    CHECK_EQ_INT(c.calls, 1);
    CHECK_EQ_INT(c.rc, 1);
    acme_storage_unlock(st, "order-a.test");
    /* A key that would escape the directory: refused at once, no callback. */
    CHECK(acme_storage_get_start(st, base, "local", "../x", on_reply, &bad, &err) == NULL);
    CHECK_EQ_INT(err.code, DM_E_STORAGE);
    struct seen badlock = {0};
    CHECK(acme_storage_lock_start(st, base, "../x", 60, on_reply, &badlock, &err) != NULL);
    run_loop(base);
    CHECK_EQ_INT(bad.calls, 0);
    CHECK_EQ_INT(badlock.calls, 1);
    CHECK_EQ_INT(badlock.rc, -1);
    acme_storage_free(st);
    event_base_free(base);
    fx_rmtree(dir);
}

HARNESS_MAIN(T(test_callbacks_are_deferred_and_once), T(test_cancel_and_invalid))
