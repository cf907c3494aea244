/* `doorman certificates`: what a data directory holds, read-only. Walks the
 * issuers under <data_dir>/certificates and prints each stored certificate's
 * names, issuer, validity, next renewal and last error. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

int acme_certificates_report(const char *data_dir, FILE *out, struct dm_err *err)
{
    char root[4096];
    snprintf(root, sizeof(root), "%s/certificates", data_dir);
    DIR *d = opendir(root);
    if (d == NULL) {
        fprintf(out, "no certificates in %s\n", data_dir);
        return 0;
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
    qsort(issuers, num_issuers, sizeof(issuers[0]), str_cmp);
    struct acme_storage *st = acme_storage_fs_new(data_dir, err);
    if (st == NULL) {
        for (size_t i = 0; i < num_issuers; i++) {
            free(issuers[i]);
        }
        return -1;
    }
    fprintf(out, "%-40s %-28s %-21s %-21s %s\n", "NAMES", "ISSUER", "NOT AFTER", "NEXT RENEWAL",
            "LAST ERROR");
    time_t now = dm_time_now();
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
            if (acme_storage_get(st, issuers[i], names[j], &cert, &key, &meta, &e) != 0) {
                fprintf(out, "%-40s %-28s unreadable: %s\n", names[j], issuers[i], e.msg);
                continue;
            }
            char all[512] = "";
            size_t used = 0;
            for (size_t k = 0; k < meta.num_names && used + 2 < sizeof(all); k++) {
                int n =
                    snprintf(all + used, sizeof(all) - used, "%s%s", k ? "," : "", meta.names[k]);
                used += n > 0 ? (size_t)n : 0;
            }
            char na[32], ra[32];
            fmt_time(na, sizeof(na), meta.not_after);
            fmt_time(ra, sizeof(ra), meta.renew_after);
            fprintf(out, "%-40s %-28s %-21s %-21s %s%s\n", all[0] ? all : names[j], issuers[i], na,
                    ra, meta.not_after <= now ? "EXPIRED " : "",
                    meta.last_error != NULL ? meta.last_error : "-");
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
