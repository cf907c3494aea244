/* Error value helpers; see err.h. */
#include "proxy/core/err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

__attribute__((format(printf, 3, 0))) static void err_vset(struct dm_err *err, enum dm_errcode code,
                                                           const char *fmt, va_list ap)
{
    err->code = code;
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
}

void dm_err_set(struct dm_err *err, enum dm_errcode code, const char *fmt, ...)
{
    if (err == NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    err_vset(err, code, fmt, ap);
    va_end(ap);
}

void dm_err_set_tls(struct dm_err *err, const char *fmt, ...)
{
    if (err == NULL) {
        ERR_clear_error();
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    err_vset(err, DM_E_TLS, fmt, ap);
    va_end(ap);
    size_t used = strlen(err->msg);
    uint32_t e;
    while ((e = ERR_get_error()) != 0) {
        if (used + 3 < sizeof(err->msg)) {
            char reason[160];
            ERR_error_string_n(e, reason, sizeof(reason));
            int n = snprintf(err->msg + used, sizeof(err->msg) - used, ": %s", reason);
            if (n > 0) {
                used +=
                    (size_t)n < sizeof(err->msg) - used ? (size_t)n : sizeof(err->msg) - used - 1;
            }
        }
    }
}

void dm_err_set_errno(struct dm_err *err, int errnum, const char *fmt, ...)
{
    if (err == NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    err_vset(err, DM_E_IO, fmt, ap);
    va_end(ap);
    size_t used = strlen(err->msg);
    snprintf(err->msg + used, sizeof(err->msg) - used, ": %s", strerror(errnum));
}

void dm_err_clear(struct dm_err *err)
{
    if (err != NULL) {
        err->code = DM_E_OK;
        err->msg[0] = '\0';
    }
}

const char *dm_errcode_name(enum dm_errcode code)
{
    static const char *const names[] = {
        "ok",   "nomem",   "io",    "tls",      "proto",    "timeout", "config",
        "acme", "storage", "limit", "notfound", "canceled", "stale",
    };
    if ((size_t)code < sizeof(names) / sizeof(names[0])) {
        return names[code];
    }
    return "unknown";
}
