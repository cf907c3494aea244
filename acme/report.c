/* `doorman certificates`: what a data directory holds, read-only. Walks the
 * issuers under <data_dir>/certificates and prints each stored certificate's
 * names, issuer, validity, next renewal and last error, as text for
 * `doorman certificates` or JSON for the admin API's GET /certificates. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "acme/acme.h"
#include "acme/cert_int.h"
#include "acme/storage.h"
#include "proxy/core/err.h"
#include "proxy/core/time.h"

static void fmt_time(char *buf, size_t cap, time_t t)
{
    if (t <= 0) {
        snprintf(buf, cap, "-");
        return;
    }
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* str_cmp_nullsafe sorts NULLs (failed strdup) last. */
static int str_cmp_nullsafe(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    if (x == NULL || y == NULL) {
        return (x == NULL) - (y == NULL);
    }
    return strcmp(x, y);
}

/* One stored certificate as the walk finds it; everything borrowed. */
struct report_item {
    const char *issuer;
    const char *name; /* the storage name (first host) */
    const struct acme_storage_meta *meta;
    const char *read_error; /* set when the entry could not be read */
};

typedef void (*report_cb)(const struct report_item *it, void *arg);

/* report_walk calls cb for each stored certificate, issuers and names sorted.
 * Returns 1 if data_dir has no certificates directory, 0, or -1 with err. */
static int report_walk(const char *data_dir, report_cb cb, void *arg, struct dm_err *err)
{
    char root[4096];
    snprintf(root, sizeof(root), "%s/certificates", data_dir);
    DIR *d = opendir(root);
    if (d == NULL) {
        return 1;
    }
    char *issuers[256];
    size_t num_issuers = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && num_issuers < 256) {
        if (de->d_name[0] != '.') {
            issuers[num_issuers++] = strdup(de->d_name);
        }
    }
    closedir(d);
    qsort(issuers, num_issuers, sizeof(issuers[0]), str_cmp_nullsafe);
    struct acme_storage *st = acme_storage_fs_new(data_dir, err);
    if (st == NULL) {
        for (size_t i = 0; i < num_issuers; i++) {
            free(issuers[i]);
        }
        return -1;
    }
    for (size_t i = 0; i < num_issuers; i++) {
        char **names = NULL;
        size_t num = 0;
        struct dm_err e = {0};
        if (issuers[i] == NULL || acme_storage_list(st, issuers[i], &names, &num, &e) != 0) {
            free(issuers[i]);
            continue;
        }
        qsort(names, num, sizeof(names[0]), str_cmp);
        for (size_t j = 0; j < num; j++) {
            char *cert = NULL, *key = NULL;
            struct acme_storage_meta meta = {0};
            struct report_item it = {.issuer = issuers[i], .name = names[j], .meta = &meta};
            if (acme_storage_get(st, issuers[i], names[j], &cert, &key, &meta, &e) != 0) {
                it.read_error = e.msg;
                cb(&it, arg);
                continue;
            }
            cb(&it, arg);
            free(cert);
            acme_pem_free_secret(key);
            acme_storage_meta_cleanup(&meta);
        }
        acme_storage_names_free(names, num);
        free(issuers[i]);
    }
    acme_storage_free(st);
    return 0;
}

static void report_on_item_text(const struct report_item *it, void *arg)
{
    FILE *out = arg;
    if (it->read_error != NULL) {
        fprintf(out, "%-40s %-28s unreadable: %s\n", it->name, it->issuer, it->read_error);
        return;
    }
    const struct acme_storage_meta *meta = it->meta;
    char all[512] = "";
    size_t used = 0;
    for (size_t k = 0; k < meta->num_names && used + 2 < sizeof(all); k++) {
        int n = snprintf(all + used, sizeof(all) - used, "%s%s", k ? "," : "", meta->names[k]);
        used += n > 0 ? (size_t)n : 0;
    }
    char na[32], ra[32];
    fmt_time(na, sizeof(na), meta->not_after);
    fmt_time(ra, sizeof(ra), meta->renew_after);
    fprintf(out, "%-40s %-28s %-21s %-21s %s%s\n", all[0] ? all : it->name, it->issuer, na, ra,
            meta->not_after <= dm_time_now() ? "EXPIRED " : "",
            meta->last_error != NULL ? meta->last_error : "-");
}

int acme_certificates_report(const char *data_dir, FILE *out, struct dm_err *err)
{
    fprintf(out, "%-40s %-28s %-21s %-21s %s\n", "NAMES", "ISSUER", "NOT AFTER", "NEXT RENEWAL",
            "LAST ERROR");
    int rc = report_walk(data_dir, report_on_item_text, out, err);
    if (rc == 1) {
        fprintf(out, "no certificates in %s\n", data_dir);
        return 0;
    }
    return rc;
}

static json_t *time_json(time_t t)
{
    if (t <= 0) {
        return json_null();
    }
    char buf[32];
    fmt_time(buf, sizeof(buf), t);
    return json_string(buf);
}

/* report_on_item_json appends one certificate to the array arg; a failed
 * allocation drops the item (the caller's dump then still succeeds). */
static void report_on_item_json(const struct report_item *it, void *arg)
{
    json_t *list = arg;
    json_t *o = json_object();
    json_t *names = json_array();
    if (o == NULL || names == NULL) {
        json_decref(o);
        json_decref(names);
        return;
    }
    const struct acme_storage_meta *meta = it->meta;
    if (it->read_error == NULL) {
        for (size_t k = 0; k < meta->num_names; k++) {
            json_array_append_new(names, json_string(meta->names[k]));
        }
    }
    if (json_array_size(names) == 0) {
        json_array_append_new(names, json_string(it->name));
    }
    json_object_set_new(o, "names", names);
    json_object_set_new(o, "issuer", json_string(it->issuer));
    if (it->read_error != NULL) {
        json_object_set_new(o, "not_after", json_null());
        json_object_set_new(o, "renew_at", json_null());
        json_object_set_new(o, "expired", json_false());
        json_object_set_new(o, "last_error", json_string(it->read_error));
    } else {
        json_object_set_new(o, "not_after", time_json(meta->not_after));
        json_object_set_new(o, "not_after_unix", json_integer((json_int_t)meta->not_after));
        json_object_set_new(o, "renew_at", time_json(meta->renew_after));
        json_object_set_new(o, "expired", json_boolean(meta->not_after <= dm_time_now()));
        json_object_set_new(o, "last_error",
                            meta->last_error != NULL ? json_string(meta->last_error) : json_null());
    }
    json_array_append_new(list, o);
}

char *acme_certificates_json(const char *data_dir, struct dm_err *err)
{
    json_t *root = json_object();
    json_t *list = json_array();
    char *text = NULL;
    if (root == NULL || list == NULL || json_object_set(root, "certificates", list) != 0) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto out;
    }
    if (report_walk(data_dir, report_on_item_json, list, err) < 0) {
        goto out;
    }
    text = json_dumps(root, JSON_INDENT(2));
    if (text == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
    }
out:
    json_decref(list);
    json_decref(root);
    return text;
}
