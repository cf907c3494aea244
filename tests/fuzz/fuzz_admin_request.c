/* libFuzzer target for proxy/admin_request.c: the admin API's request head.
 * The input is parsed from an exact-size heap copy, whole and as a prefix;
 * results must satisfy the contract (every pointer inside the buffer, lengths
 * within it, an error status on errors, never AGAIN past the head limit); any
 * violation abort()s. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/admin_request.h"
#include "proxy/core/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(bool ok)
{
    if (!ok) {
        abort();
    }
}

static bool inside(const char *p, size_t n, const char *buf, size_t len)
{
    return p >= buf && n <= len && (size_t)(p - buf) <= len - n;
}

static void check(const char *buf, size_t len)
{
    struct dm_admin_request r;
    ssize_t n = dm_admin_request_parse(&r, buf, len);
    if (n == DM_PARSE_AGAIN) {
        require(len < DM_ADMIN_MAX_HEAD);
        return;
    }
    if (n == DM_PARSE_ERROR) {
        require(r.error_status >= 400 && r.error_status < 600 && r.error != NULL);
        return;
    }
    require(n > 0 && (size_t)n <= len && (size_t)n == r.head_len);
    require(r.head_len <= DM_ADMIN_MAX_HEAD && r.body_len <= DM_ADMIN_MAX_BODY);
    require(inside(r.method, r.method_len, buf, len) && r.method_len > 0);
    require(inside(r.path, r.path_len, buf, len));
    require(memchr(r.path, '?', r.path_len) == NULL);
    require(r.bearer == NULL || inside(r.bearer, r.bearer_len, buf, len));
    require(r.config_path == NULL || inside(r.config_path, r.config_path_len, buf, len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size > 0 ? size : 1);
    require(buf != NULL);
    memcpy(buf, data, size);
    check(buf, size);
    if (size > 1) {
        check(buf, size / 2);
    }
    free(buf);
    return 0;
}
