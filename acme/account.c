/* ACME accounts (see account.h): on-disk key and kid per (directory, email),
 * and the asynchronous newAccount / keyChange / deactivation operations, each
 * a small state machine driven by acme_client calls. Invariants: the key file
 * is written 0600 by atomic rename before it is ever used to sign; an
 * operation calls back exactly once unless canceled. Design: docs/acme.md. */
#include "acme/account.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>
#include <openssl/mem.h>
#include <openssl/sha.h>

#include "acme/client.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"
#include "proxy/core/log.h"
#include "proxy/core/time.h"

/* Longest directory component; longer URLs are cut and suffixed with a hash
 * so that two long URLs sharing a prefix still get different directories. */
#define ACCT_SLUG_MAX 100
/* account.json is a few hundred bytes. */
#define ACCT_JSON_MAX (64 * 1024)

struct acme_account {
    struct acme_client *c; /* borrowed */
    char *dir_url;         /* owned: copy of the client's directory URL */
    char *path;            /* owned: account directory */
    char *email;           /* owned or NULL */
    bool is_tos_agreed;
    char *eab_kid;               /* owned or NULL */
    char *eab_hmac_key;          /* owned or NULL; wiped on free */
    struct acme_key *key;        /* owned */
    struct acme_key *old_key;    /* owned: key before a rollover, kept for calls that
                                    may still hold it */
    bool is_key_loaded;          /* the key came from disk (so the CA may know it) */
    char *kid;                   /* owned or NULL */
    struct acme_account_op *ops; /* owned: operations in flight */
};

/* ---- paths ----------------------------------------------------------------- */

/* email_valid accepts addr-spec characters only: the value goes into a
 * mailto: URI (RFC 8555 §7.3) and a path component; a comma would name a
 * second recipient and CAs refuse those. */
static bool email_valid(const char *email)
{
    const char *at = strchr(email, '@');
    size_t len = strlen(email);
    if (len == 0 || len > ACME_ACCOUNT_EMAIL_MAX || at == NULL || at == email || at[1] == '\0' ||
        strchr(at + 1, '@') != NULL || email[0] == '.') {
        return false;
    }
    for (const char *p = email; *p != '\0'; p++) {
        unsigned char ch = (unsigned char)*p;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              strchr(".!#$%&'*+/=?^_`{|}~@-", ch) != NULL)) {
            return false;
        }
    }
    return true;
}

/* slug_append lower-cases s into out (cap bytes), mapping anything outside
 * [a-z0-9.@+_-] to '-' and collapsing runs of '-'. */
static void slug_append(char *out, size_t cap, const char *s, size_t len, const char *keep)
{
    size_t n = strlen(out);
    for (size_t i = 0; i < len && n + 1 < cap; i++) {
        char ch = s[i];
        if (ch >= 'A' && ch <= 'Z') {
            ch = (char)(ch - 'A' + 'a');
        }
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || strchr(keep, ch) != NULL)) {
            ch = '-';
        }
        if (ch == '-' && n > 0 && out[n - 1] == '-') {
            continue;
        }
        out[n++] = ch;
    }
    out[n] = '\0';
}

/* dir_slug names the directory URL's folder: "acme-v02.api.letsencrypt.org-
 * directory", "127.0.0.1-14000-dir". */
static void dir_slug(char out[ACCT_SLUG_MAX + 20], const char *url)
{
    const char *p = strstr(url, "://");
    p = p != NULL ? p + 3 : url;
    char tmp[ACCT_SLUG_MAX * 4];
    tmp[0] = '\0';
    slug_append(tmp, sizeof(tmp), p, strcspn(p, "?#"), ".");
    size_t len = strlen(tmp);
    while (len > 0 && (tmp[len - 1] == '-' || tmp[len - 1] == '.')) {
        tmp[--len] = '\0';
    }
    const char *start = tmp;
    while (*start == '-' || *start == '.') {
        start++; /* never "." or ".." or a hidden folder */
    }
    if (*start == '\0') {
        start = "ca";
    }
    if (strlen(start) <= ACCT_SLUG_MAX) {
        snprintf(out, ACCT_SLUG_MAX + 20, "%s", start);
        return;
    }
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)url, strlen(url), md);
    snprintf(out, ACCT_SLUG_MAX + 20, "%.*s-%02x%02x%02x%02x%02x%02x%02x%02x", ACCT_SLUG_MAX, start,
             md[0], md[1], md[2], md[3], md[4], md[5], md[6], md[7]);
}

int acme_account_storage_dir(char *buf, size_t cap, const char *data_dir, const char *directory_url,
                             const char *email, struct dm_err *err)
{
    char slug[ACCT_SLUG_MAX + 20];
    char who[ACME_ACCOUNT_EMAIL_MAX + 1] = "default";
    if (email != NULL && email[0] != '\0') {
        if (!email_valid(email)) {
            dm_err_set(err, DM_E_CONFIG, "ACME account email \"%.64s\" is not a valid address",
                       email);
            return -1;
        }
        who[0] = '\0';
        slug_append(who, sizeof(who), email, strlen(email), ".@+_");
    }
    dir_slug(slug, directory_url);
    int n = snprintf(buf, cap, "%s/acme/%s/%s", data_dir, slug, who);
    if (n < 0 || (size_t)n >= cap) {
        dm_err_set(err, DM_E_LIMIT, "ACME account path too long");
        return -1;
    }
    return 0;
}

static int acct_file(char *buf, size_t cap, const struct acme_account *a, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", a->path, name);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* ---- open / free -------------------------------------------------------------- */

static int acct_load_key(struct acme_account *a, const struct acme_account_opts *o,
                         struct dm_err *err)
{
    char path[ACME_ACCOUNT_PATH_MAX + 32];
    if (acct_file(path, sizeof(path), a, "account.key") != 0) {
        dm_err_set(err, DM_E_LIMIT, "ACME account path too long");
        return -1;
    }
    if (dm_file_exists(path)) {
        char *pem = NULL;
        size_t len = 0;
        if (dm_file_read(path, ACME_KEY_PEM_MAX_BYTES, &pem, &len, err) != 0) {
            return -1;
        }
        a->key = acme_key_parse_pem(pem, len, err);
        OPENSSL_cleanse(pem, len);
        free(pem);
        if (a->key == NULL) {
            return -1;
        }
        a->is_key_loaded = true;
        return 0;
    }
    a->key = acme_key_new(o->key_alg, o->rsa_bits ? o->rsa_bits : 2048, err);
    if (a->key == NULL) {
        return -1;
    }
    char *pem = acme_key_encode_pem(a->key, err);
    if (pem == NULL) {
        return -1;
    }
    int rc = dm_file_write_atomic(path, pem, strlen(pem), 0600, err);
    acme_key_pem_free(pem);
    if (rc == 0) {
        dm_log(DM_LOG_INFO, "acme", "new %s account key %s", acme_key_alg_name(o->key_alg), path);
    }
    return rc;
}

/* acct_load_kid reads account.json if it belongs to this directory URL. */
static void acct_load_kid(struct acme_account *a)
{
    char path[ACME_ACCOUNT_PATH_MAX + 32];
    char *data = NULL;
    size_t len = 0;
    struct dm_err err = {0};
    if (acct_file(path, sizeof(path), a, "account.json") != 0 || !dm_file_exists(path) ||
        dm_file_read(path, ACCT_JSON_MAX, &data, &len, &err) != 0) {
        return;
    }
    json_t *j = json_loadb(data, len, 0, NULL);
    const char *dir = json_string_value(json_object_get(j, "directory"));
    const char *kid = json_string_value(json_object_get(j, "kid"));
    if (dir != NULL && strcmp(dir, a->dir_url) == 0 && kid != NULL &&
        (strncmp(kid, "https://", 8) == 0 || strncmp(kid, "http://", 7) == 0)) {
        a->kid = strdup(kid);
    } else {
        dm_log(DM_LOG_WARN, "acme", "ignoring %s: not an account of %s", path, a->dir_url);
    }
    json_decref(j);
    free(data);
}

static int dup_opt(char **out, const char *s)
{
    if (s == NULL || s[0] == '\0') {
        *out = NULL;
        return 0;
    }
    *out = strdup(s);
    return *out != NULL ? 0 : -1;
}

struct acme_account *acme_account_open(struct acme_client *c, const struct acme_account_opts *o,
                                       struct dm_err *err)
{
    char path[ACME_ACCOUNT_PATH_MAX];
    if (o == NULL || o->data_dir == NULL || o->data_dir[0] == '\0') {
        dm_err_set(err, DM_E_CONFIG, "ACME account: no data directory");
        return NULL;
    }
    bool has_kid = o->eab_kid != NULL && o->eab_kid[0] != '\0';
    bool has_hmac = o->eab_hmac_key != NULL && o->eab_hmac_key[0] != '\0';
    if (has_kid != has_hmac) {
        dm_err_set(err, DM_E_CONFIG,
                   "ACME external account binding needs both a key id and an HMAC key");
        return NULL;
    }
    if (acme_account_storage_dir(path, sizeof(path), o->data_dir, acme_client_directory_url(c),
                                 o->email, err) != 0) {
        return NULL;
    }
    struct acme_account *a = calloc(1, sizeof(*a));
    if (a == NULL || (a->path = strdup(path)) == NULL ||
        (a->dir_url = strdup(acme_client_directory_url(c))) == NULL ||
        dup_opt(&a->email, o->email) != 0 || dup_opt(&a->eab_kid, o->eab_kid) != 0 ||
        dup_opt(&a->eab_hmac_key, o->eab_hmac_key) != 0) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        acme_account_free(a);
        return NULL;
    }
    a->c = c;
    a->is_tos_agreed = o->is_tos_agreed;
    if (dm_mkdir_p(path, 0700, err) != 0 || acct_load_key(a, o, err) != 0) {
        acme_account_free(a);
        return NULL;
    }
    acct_load_kid(a);
    return a;
}

static void op_free(struct acme_account_op *op);

void acme_account_free(struct acme_account *a)
{
    if (a == NULL) {
        return;
    }
    while (a->ops != NULL) {
        op_free(a->ops);
    }
    acme_key_free(a->key);
    acme_key_free(a->old_key);
    free(a->kid);
    free(a->path);
    free(a->dir_url);
    free(a->email);
    free(a->eab_kid);
    if (a->eab_hmac_key != NULL) {
        OPENSSL_cleanse(a->eab_hmac_key, strlen(a->eab_hmac_key));
        free(a->eab_hmac_key);
    }
    free(a);
}

const char *acme_account_kid(const struct acme_account *a)
{
    return a->kid;
}

const struct acme_key *acme_account_key(const struct acme_account *a)
{
    return a->key;
}

const char *acme_account_path(const struct acme_account *a)
{
    return a->path;
}

struct acme_client *acme_account_client(const struct acme_account *a)
{
    return a->c;
}

void acme_account_forget(struct acme_account *a)
{
    char path[ACME_ACCOUNT_PATH_MAX + 32];
    free(a->kid);
    a->kid = NULL;
    if (acct_file(path, sizeof(path), a, "account.json") == 0) {
        unlink(path);
    }
}

static int acct_save_kid(struct acme_account *a, const char *kid, struct dm_err *err)
{
    char path[ACME_ACCOUNT_PATH_MAX + 32];
    char *copy = strdup(kid);
    json_t *j = json_pack("{s:s, s:s, s:I}", "directory", a->dir_url, "kid", kid, "created",
                          (json_int_t)dm_time_now());
    if (copy == NULL || j == NULL ||
        (a->email != NULL &&
         json_object_set_new(j, "contact", json_pack("[s+]", "mailto:", a->email)) != 0)) {
        free(copy);
        json_decref(j);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    char *text = json_dumps(j, JSON_INDENT(2));
    json_decref(j);
    int rc = -1;
    if (text == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
    } else if (acct_file(path, sizeof(path), a, "account.json") == 0) {
        rc = dm_file_write_atomic(path, text, strlen(text), 0600, err);
    }
    free(text);
    if (rc != 0) {
        free(copy);
        return -1;
    }
    free(a->kid);
    a->kid = copy;
    return 0;
}

int acme_account_new_payload(const struct acme_account *a, const struct acme_directory *dir,
                             bool is_only_existing, char **out_json, struct dm_err *err)
{
    *out_json = NULL;
    json_t *j = json_object();
    if (j == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    if (is_only_existing) {
        json_object_set_new(j, "onlyReturnExisting", json_true());
    } else {
        if (dir->terms_of_service != NULL && !a->is_tos_agreed) {
            dm_err_set(err, DM_E_CONFIG,
                       "the CA %s requires agreeing to its terms of service (%.200s): set the "
                       "ACME agreement option to accept them",
                       a->dir_url, dir->terms_of_service);
            json_decref(j);
            return -1;
        }
        if (dir->external_account_required && a->eab_kid == NULL) {
            dm_err_set(err, DM_E_CONFIG,
                       "the CA %s requires External Account Binding: configure the key id "
                       "and HMAC key it gave you",
                       a->dir_url);
            json_decref(j);
            return -1;
        }
        if (a->is_tos_agreed) {
            json_object_set_new(j, "termsOfServiceAgreed", json_true());
        }
        if (a->email != NULL) {
            json_object_set_new(j, "contact", json_pack("[s+]", "mailto:", a->email));
        }
        if (a->eab_kid != NULL) {
            char *eab = NULL;
            if (acme_jws_eab(a->key, a->eab_kid, a->eab_hmac_key, dir->new_account, &eab, err) !=
                0) {
                json_decref(j);
                return -1;
            }
            json_object_set_new(j, "externalAccountBinding", json_loads(eab, 0, NULL));
            free(eab);
        }
    }
    *out_json = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (*out_json == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    return 0;
}

/* ---- operations ------------------------------------------------------------------ */

enum step {
    STEP_CONTINUE = 0,
    STEP_WAIT,
    STEP_DONE,
    STEP_FAIL,
};

enum acct_op_kind {
    ACCT_OP_REGISTER = 0,
    ACCT_OP_KEY_CHANGE,
    ACCT_OP_DEACTIVATE,
};

enum acct_state {
    ACCT_START = 0,
    ACCT_DIRECTORY,  /* the directory: newAccount, keyChange, terms */
    ACCT_LOOKUP,     /* newAccount onlyReturnExisting (key from disk, no kid) */
    ACCT_CREATE,     /* newAccount */
    ACCT_KEY_CHANGE, /* keyChange */
    ACCT_DEACTIVATE, /* POST {"status":"deactivated"} to the account */
    ACCT_DONE,
};

static const char *const acct_state_names[] = {"start",      "directory",  "lookup", "create",
                                               "key-change", "deactivate", "done"};

struct acme_account_op {
    struct acme_account *a; /* borrowed */
    struct acme_account_op *next;
    enum acct_op_kind kind;
    enum acct_state state;
    struct acme_call *call;   /* owned while in flight */
    struct event *ev;         /* owned: deferred start */
    struct acme_key *new_key; /* owned: key change */
    bool is_in_callback;
    bool is_not_found; /* lookup: the CA does not know the key */
    /* The last reply, processed synchronously in the client's callback. */
    bool has_reply;
    const struct acme_response *resp; /* borrowed during the callback */
    struct acme_problem prob;
    struct dm_err err;
    acme_account_done_cb cb;
    void *arg;
};

static void op_free(struct acme_account_op *op)
{
    acme_client_call_cancel(op->call);
    if (op->ev != NULL) {
        event_free(op->ev);
    }
    for (struct acme_account_op **pp = &op->a->ops; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == op) {
            *pp = op->next;
            break;
        }
    }
    acme_key_free(op->new_key);
    free(op);
}

void acme_account_op_cancel(struct acme_account_op *op)
{
    if (op != NULL && !op->is_in_callback) {
        op_free(op);
    }
}

static void op_step(struct acme_account_op *op);

static void op_on_reply(const struct acme_response *resp, const struct acme_problem *prob,
                        const struct dm_err *err, void *arg)
{
    struct acme_account_op *op = arg;
    op->call = NULL;
    op->has_reply = true;
    op->resp = resp;
    if (resp == NULL) {
        op->prob = *prob;
        op->err = *err;
    }
    op_step(op);
}

static void op_on_directory(const struct acme_directory *dir, const struct acme_problem *prob,
                            const struct dm_err *err, void *arg)
{
    struct acme_account_op *op = arg;
    op->call = NULL;
    op->has_reply = true;
    op->resp = NULL;
    if (dir == NULL) {
        op->prob = *prob;
        op->err = *err;
    }
    op_step(op);
}

static void op_on_start(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    op_step(arg);
}

static enum step op_fail(struct acme_account_op *op)
{
    acme_problem_from_err(&op->prob, &op->err);
    return STEP_FAIL;
}

/* op_post starts a signed POST of payload (takes ownership) to url. */
static enum step op_post(struct acme_account_op *op, const char *url, char *payload, bool is_jwk)
{
    struct acme_account *a = op->a;
    op->call = acme_client_post_start(a->c, a->key, is_jwk ? NULL : a->kid, url, payload, NULL,
                                      op_on_reply, op, &op->err);
    free(payload);
    return op->call != NULL ? STEP_WAIT : op_fail(op);
}

static enum step op_do_directory(struct acme_account_op *op)
{
    if (!op->has_reply) {
        op->call = acme_client_directory_start(op->a->c, op_on_directory, op, &op->err);
        return op->call != NULL ? STEP_WAIT : op_fail(op);
    }
    op->has_reply = false;
    return acme_client_directory_find(op->a->c) != NULL ? STEP_CONTINUE : STEP_FAIL;
}

/* op_take_kid reads the account URL of a newAccount reply and stores it. */
static enum step op_take_kid(struct acme_account_op *op, const char *what)
{
    struct acme_account *a = op->a;
    const struct acme_response *r = op->resp;
    json_t *j = json_loadb(r->body, r->body_len, 0, NULL);
    const char *status = json_string_value(json_object_get(j, "status"));
    if (status != NULL && strcmp(status, "valid") != 0) {
        dm_err_set(&op->err, DM_E_ACME, "ACME account at %s is %.32s", a->dir_url, status);
        json_decref(j);
        return op_fail(op);
    }
    json_decref(j);
    if (r->location == NULL) {
        dm_err_set(&op->err, DM_E_PROTO, "newAccount at %s answered without Location", a->dir_url);
        return op_fail(op);
    }
    if (acct_save_kid(a, r->location, &op->err) != 0) {
        return op_fail(op);
    }
    dm_log(DM_LOG_INFO, "acme", "account %s %s: %s", a->email != NULL ? a->email : "default", what,
           a->kid);
    return STEP_DONE;
}

static enum step op_do_lookup(struct acme_account_op *op)
{
    const struct acme_directory *dir = acme_client_directory_find(op->a->c);
    if (!op->has_reply) {
        char *payload = NULL;
        if (acme_account_new_payload(op->a, dir, true, &payload, &op->err) != 0) {
            return op_fail(op);
        }
        return op_post(op, dir->new_account, payload, true);
    }
    op->has_reply = false;
    if (op->resp != NULL) {
        return op_take_kid(op, "found");
    }
    if (acme_problem_is(&op->prob, "accountDoesNotExist")) {
        op->is_not_found = true;
        return STEP_CONTINUE;
    }
    return STEP_FAIL;
}

static enum step op_do_create(struct acme_account_op *op)
{
    const struct acme_directory *dir = acme_client_directory_find(op->a->c);
    if (!op->has_reply) {
        char *payload = NULL;
        if (acme_account_new_payload(op->a, dir, false, &payload, &op->err) != 0) {
            return op_fail(op);
        }
        return op_post(op, dir->new_account, payload, true);
    }
    op->has_reply = false;
    if (op->resp == NULL) {
        return STEP_FAIL;
    }
    return op_take_kid(op, op->resp->status == 201 ? "created" : "found");
}

static int key_write(struct acme_account *a, const struct acme_key *key, const char *name,
                     struct dm_err *err)
{
    char path[ACME_ACCOUNT_PATH_MAX + 32];
    if (acct_file(path, sizeof(path), a, name) != 0) {
        dm_err_set(err, DM_E_LIMIT, "ACME account path too long");
        return -1;
    }
    char *pem = acme_key_encode_pem(key, err);
    if (pem == NULL) {
        return -1;
    }
    int rc = dm_file_write_atomic(path, pem, strlen(pem), 0600, err);
    acme_key_pem_free(pem);
    return rc;
}

static int file_rename(struct acme_account *a, const char *from, const char *to, struct dm_err *err)
{
    char p1[ACME_ACCOUNT_PATH_MAX + 32], p2[ACME_ACCOUNT_PATH_MAX + 32];
    if (acct_file(p1, sizeof(p1), a, from) != 0 || acct_file(p2, sizeof(p2), a, to) != 0) {
        dm_err_set(err, DM_E_LIMIT, "ACME account path too long");
        return -1;
    }
    if (rename(p1, p2) != 0) {
        dm_err_set_errno(err, errno, "rename %s", p1);
        return -1;
    }
    return 0;
}

static enum step op_do_key_change(struct acme_account_op *op)
{
    struct acme_account *a = op->a;
    const struct acme_directory *dir = acme_client_directory_find(a->c);
    if (!op->has_reply) {
        char *inner = NULL;
        if (dir->key_change == NULL) {
            dm_err_set(&op->err, DM_E_ACME, "the CA %s has no keyChange", a->dir_url);
            return op_fail(op);
        }
        /* Persist the new key before the CA learns it: a crash after its
         * answer must not lose the only key the account still accepts. */
        if (key_write(a, op->new_key, "account.key.next", &op->err) != 0 ||
            acme_jws_key_change(op->new_key, a->kid, a->key, dir->key_change, &inner, &op->err) !=
                0) {
            return op_fail(op);
        }
        return op_post(op, dir->key_change, inner, false);
    }
    op->has_reply = false;
    if (op->resp == NULL) {
        return STEP_FAIL;
    }
    if (file_rename(a, "account.key.next", "account.key", &op->err) != 0) {
        return op_fail(op);
    }
    acme_key_free(a->old_key);
    a->old_key = a->key;
    a->key = op->new_key;
    op->new_key = NULL;
    dm_log(DM_LOG_INFO, "acme", "account %s: key rolled over", a->kid);
    return STEP_DONE;
}

static enum step op_do_deactivate(struct acme_account_op *op)
{
    struct acme_account *a = op->a;
    if (!op->has_reply) {
        char *payload = strdup("{\"status\":\"deactivated\"}");
        if (payload == NULL) {
            dm_err_set(&op->err, DM_E_NOMEM, "out of memory");
            return op_fail(op);
        }
        return op_post(op, a->kid, payload, false);
    }
    op->has_reply = false;
    if (op->resp == NULL) {
        return STEP_FAIL;
    }
    dm_log(DM_LOG_INFO, "acme", "account %s deactivated", a->kid);
    if (file_rename(a, "account.key", "account.key.deactivated", &op->err) != 0 ||
        file_rename(a, "account.json", "account.json.deactivated", &op->err) != 0) {
        return op_fail(op);
    }
    free(a->kid);
    a->kid = NULL;
    return STEP_DONE;
}

/* op_next is the transition table of account operations. */
static enum acct_state op_next(const struct acme_account_op *op)
{
    switch (op->state) {
    case ACCT_START:
        return ACCT_DIRECTORY;
    case ACCT_DIRECTORY:
        switch (op->kind) {
        case ACCT_OP_REGISTER:
            return op->a->is_key_loaded ? ACCT_LOOKUP : ACCT_CREATE;
        case ACCT_OP_KEY_CHANGE:
            return ACCT_KEY_CHANGE;
        case ACCT_OP_DEACTIVATE:
            return ACCT_DEACTIVATE;
        }
        break;
    case ACCT_LOOKUP:
        return ACCT_CREATE;
    default:
        break;
    }
    return ACCT_DONE;
}

static void op_step(struct acme_account_op *op)
{
    for (;;) {
        enum step r = STEP_FAIL;
        switch (op->state) {
        case ACCT_START:
            r = op->kind == ACCT_OP_REGISTER && op->a->kid != NULL ? STEP_DONE : STEP_CONTINUE;
            break;
        case ACCT_DIRECTORY:
            r = op_do_directory(op);
            break;
        case ACCT_LOOKUP:
            r = op_do_lookup(op);
            break;
        case ACCT_CREATE:
            r = op_do_create(op);
            break;
        case ACCT_KEY_CHANGE:
            r = op_do_key_change(op);
            break;
        case ACCT_DEACTIVATE:
            r = op_do_deactivate(op);
            break;
        case ACCT_DONE:
            r = STEP_DONE;
            break;
        }
        if (r == STEP_WAIT) {
            return;
        }
        if (r == STEP_DONE || r == STEP_FAIL) {
            op->is_in_callback = true;
            op->cb(op->a, r == STEP_DONE ? NULL : &op->prob, r == STEP_DONE ? NULL : &op->err,
                   op->arg);
            op_free(op);
            return;
        }
        enum acct_state next = op_next(op);
        DM_LOG_DBG("acme", "account %s: %s -> %s", op->a->path, acct_state_names[op->state],
                   acct_state_names[next]);
        op->state = next;
    }
}

static struct acme_account_op *op_start(struct acme_account *a, enum acct_op_kind kind,
                                        acme_account_done_cb cb, void *arg, struct dm_err *err)
{
    struct acme_account_op *op = calloc(1, sizeof(*op));
    if (op == NULL || (op->ev = evtimer_new(acme_client_base(a->c), op_on_start, op)) == NULL) {
        free(op);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    op->a = a;
    op->kind = kind;
    op->cb = cb;
    op->arg = arg;
    op->next = a->ops;
    a->ops = op;
    event_active(op->ev, EV_TIMEOUT, 1);
    return op;
}

struct acme_account_op *acme_account_register_start(struct acme_account *a, acme_account_done_cb cb,
                                                    void *arg, struct dm_err *err)
{
    return op_start(a, ACCT_OP_REGISTER, cb, arg, err);
}

struct acme_account_op *acme_account_key_change_start(struct acme_account *a,
                                                      struct acme_key *new_key,
                                                      acme_account_done_cb cb, void *arg,
                                                      struct dm_err *err)
{
    if (a->kid == NULL) {
        acme_key_free(new_key);
        dm_err_set(err, DM_E_ACME, "ACME key change: the account is not registered");
        return NULL;
    }
    struct acme_account_op *op = op_start(a, ACCT_OP_KEY_CHANGE, cb, arg, err);
    if (op == NULL) {
        acme_key_free(new_key);
        return NULL;
    }
    op->new_key = new_key;
    return op;
}

struct acme_account_op *acme_account_deactivate_start(struct acme_account *a,
                                                      acme_account_done_cb cb, void *arg,
                                                      struct dm_err *err)
{
    if (a->kid == NULL) {
        dm_err_set(err, DM_E_ACME, "ACME deactivation: the account is not registered");
        return NULL;
    }
    return op_start(a, ACCT_OP_DEACTIVATE, cb, arg, err);
}
