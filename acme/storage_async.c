/* The asynchronous face of the certificate storage (storage.h): one op per
 * call, completed through a deferred event so a callback never runs inside
 * the _start that began it. Backends without a start hook (the filesystem)
 * do the work synchronously at start; the callback still waits for the loop. */
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "acme/cert_int.h"
#include "acme/storage.h"
#include "acme/storage_int.h"
#include "proxy/core/err.h"

static void run_sync(struct acme_storage_op *op);

static void op_free(struct acme_storage_op *op)
{
    if (op->is_finishing) {
        event_del(&op->done_ev);
    }
    for (size_t i = 0; i < 4; i++) {
        free(op->own[i]);
    }
    acme_pem_free_secret(op->own[4]);
    acme_storage_meta_cleanup(&op->own_meta);
    free(op->reply.cert_pem);
    acme_pem_free_secret(op->reply.key_pem);
    acme_storage_meta_cleanup(&op->reply.meta);
    acme_storage_names_free(op->reply.names, op->reply.num_names);
    free(op);
}

static void op_on_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct acme_storage_op *op = arg;
    op->is_finishing = false;
    if (op->is_work_due) {
        op->is_work_due = false;
        run_sync(op);
    }
    if (!op->is_cancelled) {
        op->cb(&op->reply, op->arg);
    }
    op_free(op);
}

void acme_storage_op_finish(struct acme_storage_op *op)
{
    op->is_finishing = true;
    event_active(&op->done_ev, 0, 0);
}

void acme_storage_op_cancel(struct acme_storage_op *op)
{
    if (op == NULL) {
        return;
    }
    if (op->is_finishing) {
        if (op->is_work_due &&
            (op->kind == ACME_STORAGE_OP_PUT || op->kind == ACME_STORAGE_OP_DELETE)) {
            /* A write the caller no longer waits for still happens: an
             * issued certificate must not be lost to a shutdown. */
            op->is_work_due = false;
            run_sync(op);
        }
        op_free(op);
        return;
    }
    /* A backend still working on it finishes later; the event then frees. */
    op->is_cancelled = true;
}

/* run_sync is the adapter for backends without a start hook. */
static void run_sync(struct acme_storage_op *op)
{
    struct acme_storage_reply *r = &op->reply;
    switch (op->kind) {
    case ACME_STORAGE_OP_GET:
        r->rc = acme_storage_get(op->st, op->issuer, op->name, &r->cert_pem, &r->key_pem, &r->meta,
                                 &r->err);
        break;
    case ACME_STORAGE_OP_PUT:
        r->rc = acme_storage_put(op->st, op->issuer, op->name, op->cert_pem, op->key_pem, op->meta,
                                 &r->err);
        break;
    case ACME_STORAGE_OP_LOCK:
        r->rc = acme_storage_lock(op->st, op->key, op->ttl_s, &r->err);
        break;
    case ACME_STORAGE_OP_DELETE:
        r->rc = acme_storage_delete(op->st, op->issuer, op->name, &r->err);
        break;
    case ACME_STORAGE_OP_LIST:
        r->rc = acme_storage_list(op->st, op->issuer, &r->names, &r->num_names, &r->err);
        break;
    }
}

static char *dup_opt(const char *s, bool *is_failed)
{
    if (s == NULL) {
        return NULL;
    }
    char *d = strdup(s);
    *is_failed |= d == NULL;
    return d;
}

/* op_own copies the request, for work done after _start returned. */
static int op_own(struct acme_storage_op *op)
{
    bool is_failed = false;
    const char *in[5] = {op->issuer, op->name, op->key, op->cert_pem, op->key_pem};
    for (size_t i = 0; i < 5; i++) {
        op->own[i] = dup_opt(in[i], &is_failed);
    }
    op->issuer = op->own[0];
    op->name = op->own[1];
    op->key = op->own[2];
    op->cert_pem = op->own[3];
    op->key_pem = op->own[4];
    if (op->meta != NULL) {
        const struct acme_storage_meta *m = op->meta;
        struct acme_storage_meta *c = &op->own_meta;
        *c = *m;
        c->names = m->num_names > 0 ? calloc(m->num_names, sizeof(*c->names)) : NULL;
        c->num_names = 0;
        c->issuer = dup_opt(m->issuer, &is_failed);
        c->last_error = dup_opt(m->last_error, &is_failed);
        is_failed |= m->num_names > 0 && c->names == NULL;
        for (size_t i = 0; c->names != NULL && i < m->num_names; i++) {
            c->names[c->num_names++] = dup_opt(m->names[i], &is_failed);
        }
        op->meta = c;
    }
    return is_failed ? -1 : 0;
}

static struct acme_storage_op *op_new(struct acme_storage *st, struct event_base *base,
                                      enum acme_storage_op_kind kind, acme_storage_cb cb, void *arg,
                                      struct dm_err *err)
{
    struct acme_storage_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    op->kind = kind;
    op->st = st;
    op->base = base;
    op->cb = cb;
    op->arg = arg;
    event_assign(&op->done_ev, base, -1, 0, op_on_done, op);
    return op;
}

static struct acme_storage_op *op_start(struct acme_storage_op *op)
{
    if (op->st->start != NULL) {
        op->st->start(op->st, op);
        /* Borrowed request fields die with the caller's frame. */
        op->issuer = op->name = op->key = op->cert_pem = op->key_pem = NULL;
        op->meta = NULL;
        return op;
    }
    if (op_own(op) != 0) {
        dm_err_set(&op->reply.err, DM_E_NOMEM, "out of memory");
        op->reply.rc = -1;
    } else {
        op->is_work_due = true;
    }
    acme_storage_op_finish(op);
    return op;
}

struct acme_storage_op *acme_storage_get_start(struct acme_storage *st, struct event_base *base,
                                               const char *issuer, const char *name,
                                               acme_storage_cb cb, void *arg, struct dm_err *err)
{
    if (acme_storage_key_valid(issuer, name, err) != 0) {
        return NULL;
    }
    struct acme_storage_op *op = op_new(st, base, ACME_STORAGE_OP_GET, cb, arg, err);
    if (op == NULL) {
        return NULL;
    }
    op->issuer = issuer;
    op->name = name;
    return op_start(op);
}

struct acme_storage_op *acme_storage_put_start(struct acme_storage *st, struct event_base *base,
                                               const char *issuer, const char *name,
                                               const char *cert_pem, const char *key_pem,
                                               const struct acme_storage_meta *meta,
                                               acme_storage_cb cb, void *arg, struct dm_err *err)
{
    if (acme_storage_key_valid(issuer, name, err) != 0) {
        return NULL;
    }
    struct acme_storage_op *op = op_new(st, base, ACME_STORAGE_OP_PUT, cb, arg, err);
    if (op == NULL) {
        return NULL;
    }
    op->issuer = issuer;
    op->name = name;
    op->cert_pem = cert_pem;
    op->key_pem = key_pem;
    op->meta = meta;
    return op_start(op);
}

struct acme_storage_op *acme_storage_lock_start(struct acme_storage *st, struct event_base *base,
                                                const char *key, unsigned ttl_s, acme_storage_cb cb,
                                                void *arg, struct dm_err *err)
{
    struct acme_storage_op *op = op_new(st, base, ACME_STORAGE_OP_LOCK, cb, arg, err);
    if (op == NULL) {
        return NULL;
    }
    op->key = key;
    op->ttl_s = ttl_s;
    return op_start(op);
}

struct acme_storage_op *acme_storage_delete_start(struct acme_storage *st, struct event_base *base,
                                                  const char *issuer, const char *name,
                                                  acme_storage_cb cb, void *arg, struct dm_err *err)
{
    if (acme_storage_key_valid(issuer, name, err) != 0) {
        return NULL;
    }
    struct acme_storage_op *op = op_new(st, base, ACME_STORAGE_OP_DELETE, cb, arg, err);
    if (op == NULL) {
        return NULL;
    }
    op->issuer = issuer;
    op->name = name;
    return op_start(op);
}

struct acme_storage_op *acme_storage_list_start(struct acme_storage *st, struct event_base *base,
                                                const char *issuer, acme_storage_cb cb, void *arg,
                                                struct dm_err *err)
{
    if (acme_storage_key_valid(issuer, "x", err) != 0) {
        return NULL;
    }
    struct acme_storage_op *op = op_new(st, base, ACME_STORAGE_OP_LIST, cb, arg, err);
    if (op == NULL) {
        return NULL;
    }
    op->issuer = issuer;
    return op_start(op);
}
