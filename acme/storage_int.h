/* The asynchronous storage call as a backend sees it. A backend with a start
 * hook reads the request fields, does the work without blocking, fills
 * reply and calls acme_storage_op_finish once, on the op's base. */
#ifndef DM_ACME_STORAGE_INT_H
#define DM_ACME_STORAGE_INT_H

#include <stdbool.h>

#include <event2/event_struct.h>

#include "acme/storage.h"

enum acme_storage_op_kind {
    ACME_STORAGE_OP_GET,
    ACME_STORAGE_OP_PUT,
    ACME_STORAGE_OP_LOCK,
    ACME_STORAGE_OP_DELETE,
    ACME_STORAGE_OP_LIST,
};

struct acme_storage_op {
    enum acme_storage_op_kind kind;
    struct acme_storage *st; /* borrowed */
    struct event_base *base; /* borrowed */
    acme_storage_cb cb;
    void *arg;
    /* The request: borrowed from the caller, valid only inside start. */
    const char *issuer, *name, *key;
    const char *cert_pem, *key_pem;
    const struct acme_storage_meta *meta;
    unsigned ttl_s;
    struct acme_storage_reply reply;
    struct event done_ev; /* runs the callback on base, deferred */
    bool is_cancelled;    /* the caller gave up: finish frees, no callback */
    bool is_finishing;    /* done_ev is active */
    /* The synchronous adapter runs the work from done_ev too (so a write
     * never delays what the caller does next in the same loop turn, such as
     * waking handshakes), on copies of the request: */
    bool is_work_due;
    char *own[5]; /* issuer, name, key, cert_pem, key_pem (secret) */
    struct acme_storage_meta own_meta;
};

/* acme_storage_op_finish completes op with its reply: the callback runs from
 * op->base's loop (never inside this call), or, if the op was cancelled, the
 * op is freed without one. */
void acme_storage_op_finish(struct acme_storage_op *op);

#endif
