/* Error values for every module: a code callers branch on and a message the
 * owner of the operation logs once. Leaves fill a struct dm_err and return -1. */
#ifndef DM_CORE_ERR_H
#define DM_CORE_ERR_H

#include <stddef.h>

enum dm_errcode {
    DM_E_OK = 0,
    DM_E_NOMEM,
    DM_E_IO,
    DM_E_TLS,
    DM_E_PROTO,
    DM_E_TIMEOUT,
    DM_E_CONFIG,
    DM_E_ACME,
    DM_E_STORAGE,
    DM_E_LIMIT,
    DM_E_NOTFOUND,
    DM_E_CANCELED,
    DM_E_STALE, /* a reused connection died before any response byte (request not retried) */
};

#define DM_ERR_MSG_MAX 512

struct dm_err {
    enum dm_errcode code;
    char msg[DM_ERR_MSG_MAX];
};

/* Parsers return bytes consumed (> 0), DM_PARSE_AGAIN or DM_PARSE_ERROR. */
#define DM_PARSE_AGAIN 0
#define DM_PARSE_ERROR (-1)

/* dm_err_set fills err (if not NULL) with code and a formatted message. */
void dm_err_set(struct dm_err *err, enum dm_errcode code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* dm_err_set_tls fills err like dm_err_set and appends the reasons queued by
 * BoringSSL, leaving its error queue empty. */
void dm_err_set_tls(struct dm_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* dm_err_set_errno fills err with code DM_E_IO and strerror(errnum). */
void dm_err_set_errno(struct dm_err *err, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* dm_err_clear resets err to success. */
void dm_err_clear(struct dm_err *err);

/* dm_errcode_name names a code for logs ("io", "tls", ...). */
const char *dm_errcode_name(enum dm_errcode code);

#endif
