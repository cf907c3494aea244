/* Filesystem backend of the certificate storage: one directory per
 * certificate, <data_dir>/certificates/<issuer>/<name>/ holding cert.pem,
 * key.pem (0600) and meta.json, directories 0700. Each file is replaced
 * atomically (temp + fsync + rename); the three files are written key, cert,
 * meta, so a crash in between leaves a key that does not match the chain,
 * which the loader rejects and the manager reissues. Names are validated
 * before they become path components. Layout: docs/certificates.md. */
#include "acme/storage.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/mem.h>

#include "acme/cert_int.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"
#include "proxy/core/time.h"

/* meta.json is a few hundred bytes; 512 KiB holds ACME_CERT_MAX_NAMES names of
 * the longest length with JSON quoting. */
#define FS_META_MAX_BYTES (512 * 1024)
#define FS_ISSUER_MAX     64
/* "*.example.com" is stored as "wildcard_.example.com": '*' is legal in a
 * file name but a trap in every shell that touches the directory. */
#define FS_WILDCARD_PREFIX "wildcard_"

struct storage_fs {
    struct acme_storage base; /* first: ops */
    char *root;               /* owned: <data_dir>/certificates */
};

void acme_storage_meta_cleanup(struct acme_storage_meta *m)
{
    if (m == NULL) {
        return;
    }
    for (size_t i = 0; i < m->num_names; i++) {
        free(m->names[i]);
    }
    free(m->names);
    free(m->issuer);
    free(m->last_error);
    memset(m, 0, sizeof(*m));
}

void acme_storage_names_free(char **names, size_t num)
{
    for (size_t i = 0; i < num; i++) {
        free(names[i]);
    }
    free(names);
}

int acme_storage_key_valid(const char *issuer, const char *name, struct dm_err *err)
{
    size_t len = issuer != NULL ? strlen(issuer) : 0;
    bool ok = len > 0 && len <= FS_ISSUER_MAX;
    for (size_t i = 0; ok && i < len; i++) {
        char ch = issuer[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
    }
    if (!ok) {
        dm_err_set(err, DM_E_STORAGE, "invalid storage issuer \"%.64s\"", issuer ? issuer : "");
        return -1;
    }
    /* A name spelled like the wildcard directory would collide with it. */
    ok = name != NULL && acme_name_valid(name) &&
         strncmp(name, FS_WILDCARD_PREFIX, strlen(FS_WILDCARD_PREFIX)) != 0;
    for (const char *p = name; ok && *p != '\0'; p++) {
        ok = !(*p >= 'A' && *p <= 'Z'); /* IPv6 literals may carry upper-case hex */
    }
    if (!ok) {
        dm_err_set(err, DM_E_STORAGE, "invalid storage name \"%.253s\"", name ? name : "");
        return -1;
    }
    return 0;
}

/* fs_dir writes <root>/<issuer>/<name as directory> into buf. */
static int fs_dir(const struct storage_fs *fs, const char *issuer, const char *name, char *buf,
                  size_t cap, struct dm_err *err)
{
    bool is_wild = name[0] == '*';
    int n = snprintf(buf, cap, "%s/%s/%s%s", fs->root, issuer, is_wild ? FS_WILDCARD_PREFIX : "",
                     is_wild ? name + 1 : name);
    if (n < 0 || (size_t)n >= cap) {
        dm_err_set(err, DM_E_STORAGE, "%s: path too long", fs->root);
        return -1;
    }
    return 0;
}

static int fs_file(char *buf, size_t cap, const char *dir, const char *file, struct dm_err *err)
{
    int n = snprintf(buf, cap, "%s/%s", dir, file);
    if (n < 0 || (size_t)n >= cap) {
        dm_err_set(err, DM_E_STORAGE, "%s: path too long", dir);
        return -1;
    }
    return 0;
}

static json_t *meta_encode(const struct acme_storage_meta *m)
{
    json_t *o = json_object();
    json_t *names = json_array();
    if (o == NULL || names == NULL) {
        json_decref(o);
        json_decref(names);
        return NULL;
    }
    json_object_set_new(o, "names", names);
    for (size_t i = 0; i < m->num_names; i++) {
        json_array_append_new(names, json_string(m->names[i]));
    }
    json_object_set_new(o, "issuer", json_string(m->issuer != NULL ? m->issuer : ""));
    json_object_set_new(o, "not_before", json_integer((json_int_t)m->not_before));
    json_object_set_new(o, "not_after", json_integer((json_int_t)m->not_after));
    json_object_set_new(o, "renew_after", json_integer((json_int_t)m->renew_after));
    json_object_set_new(o, "last_error",
                        m->last_error != NULL ? json_string(m->last_error) : json_null());
    size_t want = 6;
    if (m->ari_window_end > m->ari_window_start) {
        json_t *w = json_object();
        json_object_set_new(o, "ari_window", w);
        json_object_set_new(w, "start", json_integer((json_int_t)m->ari_window_start));
        json_object_set_new(w, "end", json_integer((json_int_t)m->ari_window_end));
        want = json_object_size(w) == 2 ? 7 : 0;
    }
    if (json_array_size(names) != m->num_names || json_object_size(o) != want) {
        json_decref(o); /* an allocation failed, or a name was not UTF-8 */
        return NULL;
    }
    return o;
}

static int meta_time(const json_t *o, const char *key, time_t *out)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_integer(v)) {
        return -1;
    }
    *out = (time_t)json_integer_value(v);
    return 0;
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* meta_decode fills m from meta.json text; unknown keys are ignored so newer
 * versions can add fields. */
static int meta_decode(const char *text, size_t len, const char *path, struct acme_storage_meta *m,
                       struct dm_err *err)
{
    json_error_t jerr;
    json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (o == NULL) {
        dm_err_set(err, DM_E_STORAGE, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        return -1;
    }
    memset(m, 0, sizeof(*m));
    const json_t *names = json_object_get(o, "names");
    const json_t *issuer = json_object_get(o, "issuer");
    const json_t *last = json_object_get(o, "last_error");
    size_t n = json_array_size(names);
    if (!json_is_object(o) || !json_is_array(names) || n == 0 || n > ACME_CERT_MAX_NAMES ||
        !json_is_string(issuer) || (last != NULL && !json_is_null(last) && !json_is_string(last)) ||
        meta_time(o, "not_before", &m->not_before) != 0 ||
        meta_time(o, "not_after", &m->not_after) != 0 ||
        meta_time(o, "renew_after", &m->renew_after) != 0) {
        dm_err_set(err, DM_E_STORAGE, "%s: missing or invalid fields", path);
        goto fail;
    }
    m->names = calloc(n, sizeof(*m->names));
    m->issuer = strdup(json_string_value(issuer));
    if (m->names == NULL || m->issuer == NULL) {
        goto nomem;
    }
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(names, i));
        if (s == NULL) {
            dm_err_set(err, DM_E_STORAGE, "%s: names[%zu] is not a string", path, i);
            goto fail;
        }
        if ((m->names[i] = strdup(s)) == NULL) {
            goto nomem;
        }
        m->num_names++;
    }
    if (json_is_string(last) && (m->last_error = dup_or_null(json_string_value(last))) == NULL) {
        goto nomem;
    }
    /* Optional (absent before ARI support, or with no window): a malformed
     * one is ignored rather than losing the certificate over advice. */
    const json_t *w = json_object_get(o, "ari_window");
    if (json_is_object(w) && (meta_time(w, "start", &m->ari_window_start) != 0 ||
                              meta_time(w, "end", &m->ari_window_end) != 0 ||
                              m->ari_window_end <= m->ari_window_start)) {
        m->ari_window_start = m->ari_window_end = 0;
    }
    json_decref(o);
    return 0;
nomem:
    dm_err_set(err, DM_E_NOMEM, "out of memory");
fail:
    json_decref(o);
    acme_storage_meta_cleanup(m);
    return -1;
}

static int fs_get(struct acme_storage *st, const char *issuer, const char *name,
                  char **out_cert_pem, char **out_key_pem, struct acme_storage_meta *out_meta,
                  struct dm_err *err)
{
    struct storage_fs *fs = (struct storage_fs *)st;
    int rc = -1;
    char dir[4096], path[4200];
    char *cert = NULL, *key = NULL, *meta = NULL;
    size_t cert_len = 0, key_len = 0, meta_len = 0;
    if (fs_dir(fs, issuer, name, dir, sizeof(dir), err) != 0 ||
        fs_file(path, sizeof(path), dir, "cert.pem", err) != 0) {
        goto out;
    }
    if (!dm_file_exists(path)) {
        dm_err_set(err, DM_E_NOTFOUND, "%s: not stored", dir);
        goto out;
    }
    if (dm_file_read(path, ACME_PEM_MAX_BYTES, &cert, &cert_len, err) != 0 ||
        fs_file(path, sizeof(path), dir, "key.pem", err) != 0 ||
        dm_file_read(path, ACME_PEM_MAX_BYTES, &key, &key_len, err) != 0) {
        goto out;
    }
    if (out_meta != NULL) {
        if (fs_file(path, sizeof(path), dir, "meta.json", err) != 0 ||
            dm_file_read(path, FS_META_MAX_BYTES, &meta, &meta_len, err) != 0 ||
            meta_decode(meta, meta_len, path, out_meta, err) != 0) {
            goto out;
        }
    }
    *out_cert_pem = cert;
    *out_key_pem = key;
    cert = NULL;
    key = NULL;
    rc = 0;
out:
    free(cert);
    if (key != NULL) {
        OPENSSL_cleanse(key, key_len);
        free(key);
    }
    free(meta);
    return rc;
}

static int fs_put(struct acme_storage *st, const char *issuer, const char *name,
                  const char *cert_pem, const char *key_pem, const struct acme_storage_meta *meta,
                  struct dm_err *err)
{
    struct storage_fs *fs = (struct storage_fs *)st;
    int rc = -1;
    char dir[4096], path[4200];
    char *meta_text = NULL;
    json_t *o = meta_encode(meta);
    if (o == NULL || (meta_text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER)) == NULL) {
        dm_err_set(err, DM_E_STORAGE, "%s: cannot encode metadata", name);
        goto out;
    }
    if (fs_dir(fs, issuer, name, dir, sizeof(dir), err) != 0 || dm_mkdir_p(dir, 0700, err) != 0) {
        goto out;
    }
    /* Order matters; see the file header. */
    if (fs_file(path, sizeof(path), dir, "key.pem", err) != 0 ||
        dm_file_write_atomic(path, key_pem, strlen(key_pem), 0600, err) != 0 ||
        fs_file(path, sizeof(path), dir, "cert.pem", err) != 0 ||
        dm_file_write_atomic(path, cert_pem, strlen(cert_pem), 0644, err) != 0 ||
        fs_file(path, sizeof(path), dir, "meta.json", err) != 0) {
        goto out;
    }
    size_t len = strlen(meta_text);
    char *nl = realloc(meta_text, len + 2); /* end the file with a newline */
    if (nl == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto out;
    }
    meta_text = nl;
    memcpy(meta_text + len, "\n", 2);
    if (dm_file_write_atomic(path, meta_text, len + 1, 0644, err) != 0) {
        goto out;
    }
    rc = 0;
out:
    free(meta_text);
    json_decref(o);
    return rc;
}

static int fs_del(struct acme_storage *st, const char *issuer, const char *name, struct dm_err *err)
{
    struct storage_fs *fs = (struct storage_fs *)st;
    char dir[4096], path[4400];
    if (fs_dir(fs, issuer, name, dir, sizeof(dir), err) != 0) {
        return -1;
    }
    DIR *d = opendir(dir);
    if (d == NULL) {
        if (errno == ENOENT) {
            return 0;
        }
        dm_err_set_errno(err, errno, "%s", dir);
        return -1;
    }
    /* Our three files and temp files a crash left behind ("<file>.tmp.XXXXXX");
     * anything else is not ours and makes rmdir fail, which we report. */
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *f = e->d_name;
        bool ours = strncmp(f, "cert.pem", 8) == 0 || strncmp(f, "key.pem", 7) == 0 ||
                    strncmp(f, "meta.json", 9) == 0;
        if (ours && snprintf(path, sizeof(path), "%s/%s", dir, f) < (int)sizeof(path) &&
            unlink(path) != 0 && errno != ENOENT) {
            dm_err_set_errno(err, errno, "unlink %s", path);
            closedir(d);
            return -1;
        }
    }
    closedir(d);
    if (rmdir(dir) != 0 && errno != ENOENT) {
        dm_err_set_errno(err, errno, "rmdir %s", dir);
        return -1;
    }
    return 0;
}

static int fs_list(struct acme_storage *st, const char *issuer, char ***out_names, size_t *out_num,
                   struct dm_err *err)
{
    struct storage_fs *fs = (struct storage_fs *)st;
    char dir[4096];
    char **names = NULL;
    size_t num = 0, cap = 0;
    *out_names = NULL;
    *out_num = 0;
    if (snprintf(dir, sizeof(dir), "%s/%s", fs->root, issuer) >= (int)sizeof(dir)) {
        dm_err_set(err, DM_E_STORAGE, "%s: path too long", fs->root);
        return -1;
    }
    DIR *d = opendir(dir);
    if (d == NULL) {
        if (errno == ENOENT) {
            return 0;
        }
        dm_err_set_errno(err, errno, "%s", dir);
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char name[ACME_NAME_MAX + 2];
        const char *f = e->d_name;
        size_t plen = strlen(FS_WILDCARD_PREFIX);
        bool is_wild = strncmp(f, FS_WILDCARD_PREFIX, plen) == 0;
        if (snprintf(name, sizeof(name), "%s%s", is_wild ? "*" : "", is_wild ? f + plen : f) >=
                (int)sizeof(name) ||
            (name[0] == '*' && !is_wild) || acme_storage_key_valid(issuer, name, NULL) != 0) {
            continue; /* ".", "..", temp files, strangers */
        }
        if (num == cap) {
            size_t ncap = cap != 0 ? cap * 2 : 16;
            char **nn = realloc(names, ncap * sizeof(*nn));
            if (nn == NULL) {
                goto nomem;
            }
            names = nn;
            cap = ncap;
        }
        if ((names[num] = strdup(name)) == NULL) {
            goto nomem;
        }
        num++;
    }
    closedir(d);
    *out_names = names;
    *out_num = num;
    return 0;
nomem:
    closedir(d);
    acme_storage_names_free(names, num);
    dm_err_set(err, DM_E_NOMEM, "out of memory");
    return -1;
}

static void fs_free(struct acme_storage *st)
{
    struct storage_fs *fs = (struct storage_fs *)st;
    free(fs->root);
    free(fs);
}

/* Locks are files <root>/.locks/<key>.lock created with O_EXCL, holding the
 * expiry time and the holder's pid; an expired one is replaced by rename so
 * two processes taking it over at once cannot both win. */
static int fs_lock_path(const struct storage_fs *fs, const char *key, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "%s/.locks/%s.lock", fs->root, key);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

static int fs_lock(struct acme_storage *st, const char *key, unsigned ttl_s, struct dm_err *err)
{
    struct storage_fs *fs = (struct storage_fs *)st;
    char path[PATH_MAX], dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/.locks", fs->root);
    if (fs_lock_path(fs, key, path, sizeof(path)) != 0 || dm_mkdir_p(dir, 0700, err) != 0) {
        if (err != NULL && err->code == DM_E_OK) {
            dm_err_set(err, DM_E_STORAGE, "lock %s: path too long", key);
        }
        return -1;
    }
    char body[64];
    time_t now = dm_time_now();
    int len =
        snprintf(body, sizeof(body), "%lld %d\n", (long long)(now + (time_t)ttl_s), (int)getpid());
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) {
            ssize_t w = write(fd, body, (size_t)len);
            close(fd);
            if (w != len) {
                unlink(path);
                dm_err_set_errno(err, errno, "lock %s", key);
                return -1;
            }
            return 0;
        }
        if (errno != EEXIST) {
            dm_err_set_errno(err, errno, "lock %s", key);
            return -1;
        }
        char *old = NULL;
        size_t old_len = 0;
        long long expires = 0;
        if (dm_file_read(path, 256, &old, &old_len, NULL) == 0) {
            expires = strtoll(old, NULL, 10);
            free(old);
        }
        if (expires > (long long)now) {
            return 1; /* held by someone else */
        }
        /* Expired (or unreadable): move it aside atomically; whoever renames
         * it first retries the O_EXCL create, the other finds it gone. */
        char stale[PATH_MAX + 32];
        snprintf(stale, sizeof(stale), "%s.stale.%d", path, (int)getpid());
        if (rename(path, stale) == 0) {
            unlink(stale);
        }
    }
    return 1;
}

static void fs_unlock(struct acme_storage *st, const char *key)
{
    struct storage_fs *fs = (struct storage_fs *)st;
    char path[PATH_MAX];
    if (fs_lock_path(fs, key, path, sizeof(path)) == 0) {
        unlink(path);
    }
}

static const struct acme_storage_ops fs_ops = {
    .get = fs_get,
    .put = fs_put,
    .del = fs_del,
    .list = fs_list,
    .lock = fs_lock,
    .unlock = fs_unlock,
    .free = fs_free,
};

struct acme_storage *acme_storage_fs_new(const char *data_dir, struct dm_err *err)
{
    struct storage_fs *fs = calloc(1, sizeof(*fs));
    if (fs == NULL || asprintf(&fs->root, "%s/certificates", data_dir) < 0) {
        free(fs);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    fs->base.ops = &fs_ops;
    return &fs->base;
}

void acme_storage_free(struct acme_storage *st)
{
    if (st != NULL) {
        st->ops->free(st);
    }
}

int acme_storage_get(struct acme_storage *st, const char *issuer, const char *name,
                     char **out_cert_pem, char **out_key_pem, struct acme_storage_meta *out_meta,
                     struct dm_err *err)
{
    if (acme_storage_key_valid(issuer, name, err) != 0) {
        return -1;
    }
    return st->ops->get(st, issuer, name, out_cert_pem, out_key_pem, out_meta, err);
}

int acme_storage_put(struct acme_storage *st, const char *issuer, const char *name,
                     const char *cert_pem, const char *key_pem,
                     const struct acme_storage_meta *meta, struct dm_err *err)
{
    if (acme_storage_key_valid(issuer, name, err) != 0) {
        return -1;
    }
    return st->ops->put(st, issuer, name, cert_pem, key_pem, meta, err);
}

int acme_storage_delete(struct acme_storage *st, const char *issuer, const char *name,
                        struct dm_err *err)
{
    if (acme_storage_key_valid(issuer, name, err) != 0) {
        return -1;
    }
    return st->ops->del(st, issuer, name, err);
}

static bool lock_key_valid(const char *key)
{
    size_t n = key != NULL ? strlen(key) : 0;
    if (n == 0 || n > 200 || key[0] == '.') {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = key[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
              ch == '-')) {
            return false;
        }
    }
    return true;
}

int acme_storage_lock(struct acme_storage *st, const char *key, unsigned ttl_s, struct dm_err *err)
{
    if (!lock_key_valid(key)) {
        dm_err_set(err, DM_E_STORAGE, "invalid lock key \"%.64s\"", key ? key : "");
        return -1;
    }
    return st->ops->lock(st, key, ttl_s, err);
}

void acme_storage_unlock(struct acme_storage *st, const char *key)
{
    if (lock_key_valid(key)) {
        st->ops->unlock(st, key);
    }
}

int acme_storage_list(struct acme_storage *st, const char *issuer, char ***out_names,
                      size_t *out_num, struct dm_err *err)
{
    if (acme_storage_key_valid(issuer, "x", err) != 0) {
        return -1;
    }
    return st->ops->list(st, issuer, out_names, out_num, err);
}
