/* Tests for acme/storage_fs.c: layout and modes, wildcard directory names,
 * meta.json round trip, list and delete, NOTFOUND, and the key validation
 * that keeps names from escaping the storage directory. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "acme/cert_int.h"
#include "acme/storage.h"
#include "fixtures.h"
#include "harness.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"
#include "proxy/core/time.h"

static int mode_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int)(st.st_mode & 07777) : -1;
}

/* count_entries counts directory entries other than "." and "..". */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        return -1;
    }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    }
    closedir(d);
    return n;
}

TEST(test_put_get_layout)
{
    char dir[256], path[512];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct dm_err err = {0};
    struct acme_storage *st = acme_storage_fs_new(dir, &err);
    CHECK(st != NULL);
    char *names[] = {"*.example.test", "example.test"};
    struct acme_storage_meta meta = {
        .names = names,
        .num_names = 2,
        .issuer = "local",
        .not_before = 1700000000,
        .not_after = 1700600000,
        .renew_after = 1700400000,
        .last_error = NULL,
    };
    CHECK_EQ_INT(acme_storage_put(st, "local", "*.example.test", "CHAIN\n", "KEY\n", &meta, &err),
                 0);

    snprintf(path, sizeof(path), "%s/certificates/local/wildcard_.example.test", dir);
    CHECK_EQ_INT(mode_of(path), 0700);
    CHECK_EQ_INT(count_entries(path), 3); /* no temp files left behind */
    snprintf(path, sizeof(path), "%s/certificates/local", dir);
    CHECK_EQ_INT(mode_of(path), 0700);
    snprintf(path, sizeof(path), "%s/certificates", dir);
    CHECK_EQ_INT(mode_of(path), 0700);
    snprintf(path, sizeof(path), "%s/certificates/local/wildcard_.example.test/key.pem", dir);
    CHECK_EQ_INT(mode_of(path), 0600);
    snprintf(path, sizeof(path), "%s/certificates/local/wildcard_.example.test/cert.pem", dir);
    CHECK_EQ_INT(mode_of(path), 0644);

    /* meta.json is plain JSON with the documented fields. */
    snprintf(path, sizeof(path), "%s/certificates/local/wildcard_.example.test/meta.json", dir);
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    CHECK(j != NULL);
    CHECK_STR(json_string_value(json_object_get(j, "issuer")), "local");
    CHECK_STR(json_string_value(json_array_get(json_object_get(j, "names"), 0)), "*.example.test");
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "not_after")), 1700600000);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "renew_after")), 1700400000);
    CHECK(json_is_null(json_object_get(j, "last_error")));
    json_decref(j);

    char *cert = NULL, *key = NULL;
    struct acme_storage_meta got = {0};
    CHECK_EQ_INT(acme_storage_get(st, "local", "*.example.test", &cert, &key, &got, &err), 0);
    CHECK_STR(cert, "CHAIN\n");
    CHECK_STR(key, "KEY\n");
    CHECK_EQ_INT(got.num_names, 2);
    CHECK_STR(got.names[0], "*.example.test");
    CHECK_STR(got.names[1], "example.test");
    CHECK_STR(got.issuer, "local");
    CHECK_EQ_INT(got.not_before, 1700000000);
    CHECK_EQ_INT(got.not_after, 1700600000);
    CHECK_EQ_INT(got.renew_after, 1700400000);
    CHECK(got.last_error == NULL);
    acme_storage_meta_cleanup(&got);
    free(cert);
    acme_pem_free_secret(key);

    /* Replace with a last_error; get without meta. */
    meta.last_error = "rate limited \"x\"";
    CHECK_EQ_INT(acme_storage_put(st, "local", "*.example.test", "C2\n", "K2\n", &meta, &err), 0);
    CHECK_EQ_INT(acme_storage_get(st, "local", "*.example.test", &cert, &key, NULL, &err), 0);
    CHECK_STR(cert, "C2\n");
    free(cert);
    acme_pem_free_secret(key);
    CHECK_EQ_INT(acme_storage_get(st, "local", "*.example.test", &cert, &key, &got, &err), 0);
    CHECK_STR(got.last_error, "rate limited \"x\"");
    acme_storage_meta_cleanup(&got);
    free(cert);
    acme_pem_free_secret(key);

    acme_storage_free(st);
    fx_rmtree(dir);
}

TEST(test_list_delete_notfound)
{
    char dir[256], path[512];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct dm_err err = {0};
    struct acme_storage *st = acme_storage_fs_new(dir, &err);
    char *n1[] = {"a.test"};
    struct acme_storage_meta meta = {.names = n1, .num_names = 1, .issuer = "local"};

    char **names = NULL;
    size_t num = 0;
    CHECK_EQ_INT(acme_storage_list(st, "local", &names, &num, &err), 0); /* nothing yet */
    CHECK_EQ_INT(num, 0);
    acme_storage_names_free(names, num);

    char *cert = NULL, *key = NULL;
    CHECK_EQ_INT(acme_storage_get(st, "local", "a.test", &cert, &key, NULL, &err), -1);
    CHECK_EQ_INT(err.code, DM_E_NOTFOUND);

    acme_storage_put(st, "local", "a.test", "C", "K", &meta, &err);
    acme_storage_put(st, "local", "*.b.test", "C", "K", &meta, &err);
    acme_storage_put(st, "local", "::1", "C", "K", &meta, &err);
    acme_storage_put(st, "other", "c.test", "C", "K", &meta, &err);
    snprintf(path, sizeof(path), "%s/certificates/local/stray.tmp.ABCDEF", dir);
    fx_write(path, "x"); /* a stray file is not an entry */
    CHECK_EQ_INT(acme_storage_list(st, "local", &names, &num, &err), 0);
    CHECK_EQ_INT(num, 3);
    int seen = 0;
    for (size_t i = 0; i < num; i++) {
        seen |= strcmp(names[i], "a.test") == 0 ? 1 : 0;
        seen |= strcmp(names[i], "*.b.test") == 0 ? 2 : 0;
        seen |= strcmp(names[i], "::1") == 0 ? 4 : 0;
    }
    CHECK_EQ_INT(seen, 7);
    acme_storage_names_free(names, num);

    /* Entry with key and cert but no meta: readable without meta only. */
    snprintf(path, sizeof(path), "%s/certificates/local/a.test/meta.json", dir);
    unlink(path);
    struct acme_storage_meta got = {0};
    CHECK_EQ_INT(acme_storage_get(st, "local", "a.test", &cert, &key, &got, &err), -1);
    CHECK(err.code != DM_E_NOTFOUND);
    fx_write(path, "{\"names\": [], \"issuer\": \"local\"}");
    CHECK_EQ_INT(acme_storage_get(st, "local", "a.test", &cert, &key, &got, &err), -1);
    CHECK(strstr(err.msg, "invalid fields") != NULL);
    fx_write(path, "{not json");
    CHECK_EQ_INT(acme_storage_get(st, "local", "a.test", &cert, &key, &got, &err), -1);
    CHECK_EQ_INT(err.code, DM_E_STORAGE);

    /* Delete removes the directory, including leftover temp files. */
    snprintf(path, sizeof(path), "%s/certificates/local/wildcard_.b.test/key.pem.tmp.XYZ123", dir);
    fx_write(path, "x");
    CHECK_EQ_INT(acme_storage_delete(st, "local", "*.b.test", &err), 0);
    snprintf(path, sizeof(path), "%s/certificates/local/wildcard_.b.test", dir);
    CHECK(!dm_file_exists(path));
    CHECK_EQ_INT(acme_storage_delete(st, "local", "*.b.test", &err), 0); /* again: fine */
    CHECK_EQ_INT(acme_storage_get(st, "local", "*.b.test", &cert, &key, NULL, &err), -1);
    CHECK_EQ_INT(err.code, DM_E_NOTFOUND);
    CHECK_EQ_INT(acme_storage_get(st, "other", "c.test", &cert, &key, NULL, &err), 0);
    free(cert);
    acme_pem_free_secret(key);

    acme_storage_free(st);
    fx_rmtree(dir);
}

TEST(test_key_validation)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct dm_err err = {0};
    struct acme_storage *st = acme_storage_fs_new(dir, &err);
    char *n1[] = {"a.test"};
    struct acme_storage_meta meta = {.names = n1, .num_names = 1, .issuer = "local"};
    const char *bad_names[] = {"",     "..",         ".",       "../x",     "a/b",
                               "/abs", "A.test",     "a..b",    "*",        "x.*.test",
                               "a b",  "wildcard_x", "FE80::1", "a.test/.."};
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
        int rc = acme_storage_put(st, "local", bad_names[i], "C", "K", &meta, &err);
        CHECK_EQ_INT(rc, -1);
        if (rc != -1) {
            fprintf(stderr, "  accepted \"%s\"\n", bad_names[i]);
        }
    }
    /* "wildcard_x" is a legal name, but a directory "wildcard_..." would be
     * read back as a wildcard, so storage refuses names with that prefix. */
    const char *bad_issuers[] = {"", "..", "a/b", "Local", "x.y"};
    for (size_t i = 0; i < sizeof(bad_issuers) / sizeof(bad_issuers[0]); i++) {
        CHECK_EQ_INT(acme_storage_put(st, bad_issuers[i], "a.test", "C", "K", &meta, &err), -1);
    }
    CHECK_EQ_INT(acme_storage_delete(st, "local", "../../etc", &err), -1);
    char **names = NULL;
    size_t num = 0;
    CHECK_EQ_INT(acme_storage_list(st, "../x", &names, &num, &err), -1);
    CHECK_EQ_INT(count_entries(dir), 0); /* nothing was created */
    acme_storage_free(st);
    fx_rmtree(dir);
}

TEST(test_locks_expire_and_exclude)
{
    char dir[256];
    CHECK(fx_tmpdir(dir, sizeof(dir)) != NULL);
    struct dm_err err = {0};
    struct acme_storage *a = acme_storage_fs_new(dir, &err);
    struct acme_storage *b = acme_storage_fs_new(dir, &err);
    CHECK(a != NULL && b != NULL);
    time_t t0 = 1900000000;
    dm_time_mock(t0);
    CHECK_EQ_INT(acme_storage_lock(a, "order-a.test", 60, &err), 0);
    CHECK_EQ_INT(acme_storage_lock(b, "order-a.test", 60, &err), 1); /* held */
    CHECK_EQ_INT(acme_storage_lock(b, "order-b.test", 60, &err), 0); /* another key */
    char path[512];
    snprintf(path, sizeof(path), "%s/certificates/.locks/order-a.test.lock", dir);
    CHECK_EQ_INT(mode_of(path), 0600);
    /* A holder that crashed: its lock expires and is taken over. */
    dm_time_mock(t0 + 61);
    CHECK_EQ_INT(acme_storage_lock(b, "order-a.test", 60, &err), 0);
    CHECK_EQ_INT(acme_storage_lock(a, "order-a.test", 60, &err), 1);
    acme_storage_unlock(b, "order-a.test");
    CHECK_EQ_INT(acme_storage_lock(a, "order-a.test", 60, &err), 0);
    acme_storage_unlock(a, "order-a.test");
    acme_storage_unlock(b, "order-b.test");
    CHECK_EQ_INT(acme_storage_lock(a, "../x", 60, &err), -1);
    CHECK_EQ_INT(acme_storage_lock(a, "A", 60, &err), -1);
    dm_time_mock(0);
    acme_storage_free(a);
    acme_storage_free(b);
}

HARNESS_MAIN(T(test_put_get_layout), T(test_list_delete_notfound), T(test_key_validation),
             T(test_locks_expire_and_exclude))
