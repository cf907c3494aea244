/* Admin API requests: the head parsed by the strict HTTP/1.1 parser, then
 * what the admin server acts on picked out of it (method, path without the
 * query, bearer token, Doorman-Config-Path, body length) and the admin's own
 * limits applied. Pure: no I/O, no allocation; fuzzed
 * (tests/fuzz/fuzz_admin_request.c). */
#ifndef DM_PROXY_ADMIN_REQUEST_H
#define DM_PROXY_ADMIN_REQUEST_H

#include <stddef.h>
#include <sys/types.h>

/* Largest request head and body accepted: a config is at most
 * CFG_MAX_FILE_BYTES, anything else is a few hundred bytes. */
#define DM_ADMIN_MAX_HEAD 16384
#define DM_ADMIN_MAX_BODY (4u * 1024 * 1024)

/* A parsed request; pointers borrow from the parsed buffer. */
struct dm_admin_request {
    const char *method; /* borrowed */
    size_t method_len;
    const char *path; /* borrowed: the target up to '?' */
    size_t path_len;
    const char *bearer; /* borrowed: token of "Authorization: Bearer ...", or NULL */
    size_t bearer_len;
    const char *config_path; /* borrowed: Doorman-Config-Path value, or NULL */
    size_t config_path_len;
    size_t head_len;   /* bytes of the head */
    size_t body_len;   /* Content-Length (0 without) */
    int error_status;  /* on DM_PARSE_ERROR: 400, 411, 413, 414, 431, 501, 505 */
    const char *error; /* on DM_PARSE_ERROR: static text */
};

/* dm_admin_request_parse parses the request head at the start of
 * buf[0..len). Returns the head's length (also in r->head_len), or
 * DM_PARSE_AGAIN when the head is not complete yet (never once len reaches
 * DM_ADMIN_MAX_HEAD: that is a 431), or DM_PARSE_ERROR with
 * r->error_status and r->error. A chunked body is refused (411) and one over
 * DM_ADMIN_MAX_BODY too (413). */
ssize_t dm_admin_request_parse(struct dm_admin_request *r, const char *buf, size_t len);

#endif
