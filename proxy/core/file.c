/* Small-file helpers; see file.h. */
#include "proxy/core/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proxy/core/err.h"

int dm_file_read(const char *path, size_t max_len, char **out_data, size_t *out_len,
                 struct dm_err *err)
{
    int rc = -1;
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        dm_err_set_errno(err, errno, "%s", path);
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        dm_err_set_errno(err, errno, "%s", path);
        goto out;
    }
    if ((size_t)st.st_size > max_len) {
        dm_err_set(err, DM_E_LIMIT, "%s: larger than %zu bytes", path, max_len);
        goto out;
    }
    size_t cap = (size_t)st.st_size + 1;
    buf = malloc(cap);
    if (buf == NULL) {
        dm_err_set(err, DM_E_NOMEM, "%s: out of memory", path);
        goto out;
    }
    size_t len = 0;
    for (;;) {
        if (len + 1 >= cap) {
            /* The file grew after fstat: read up to max_len more. */
            if (cap > max_len) {
                dm_err_set(err, DM_E_LIMIT, "%s: larger than %zu bytes", path, max_len);
                goto out;
            }
            size_t ncap = cap * 2 > max_len + 1 ? max_len + 1 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (nb == NULL) {
                dm_err_set(err, DM_E_NOMEM, "%s: out of memory", path);
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            dm_err_set_errno(err, errno, "%s", path);
            goto out;
        }
        if (n == 0) {
            break;
        }
        len += (size_t)n;
    }
    buf[len] = '\0';
    *out_data = buf;
    *out_len = len;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    if (fd >= 0) {
        close(fd);
    }
    return rc;
}

static int fsync_dir_of(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL) {
        snprintf(dir, sizeof(dir), ".");
    } else if (slash == dir) {
        dir[1] = '\0';
    } else {
        *slash = '\0';
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int dm_file_write_atomic(const char *path, const void *data, size_t len, mode_t mode,
                         struct dm_err *err)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path) >= (int)sizeof(tmp)) {
        dm_err_set(err, DM_E_IO, "%s: path too long", path);
        return -1;
    }
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        dm_err_set_errno(err, errno, "%s: create temp file", path);
        return -1;
    }
    /* mkostemp creates 0600; widen only when asked (certificates 0644). */
    if (fchmod(fd, mode) != 0) {
        dm_err_set_errno(err, errno, "%s: chmod", tmp);
        goto fail;
    }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            dm_err_set_errno(err, errno, "%s: write", tmp);
            goto fail;
        }
        p += n;
        left -= (size_t)n;
    }
    if (fsync(fd) != 0) {
        dm_err_set_errno(err, errno, "%s: fsync", tmp);
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        dm_err_set_errno(err, errno, "%s: close", tmp);
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        dm_err_set_errno(err, errno, "%s: rename", path);
        goto fail;
    }
    if (fsync_dir_of(path) != 0) {
        dm_err_set_errno(err, errno, "%s: fsync directory", path);
        return -1;
    }
    return 0;
fail:
    if (fd >= 0) {
        close(fd);
    }
    unlink(tmp);
    return -1;
}

int dm_mkdir_p(const char *path, mode_t mode, struct dm_err *err)
{
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf)) {
        dm_err_set(err, DM_E_IO, "%s: path too long", path);
        return -1;
    }
    for (char *p = buf + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, mode) != 0 && errno != EEXIST) {
                dm_err_set_errno(err, errno, "mkdir %s", buf);
                return -1;
            }
            *p = '/';
        }
    }
    if (mkdir(buf, mode) != 0 && errno != EEXIST) {
        dm_err_set_errno(err, errno, "mkdir %s", buf);
        return -1;
    }
    return 0;
}

int dm_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}
