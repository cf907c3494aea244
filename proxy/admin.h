/* The admin API: a small HTTP/1.1 server on the control thread's event
 * loop (never on a worker), on a unix socket in the data directory and
 * optionally on a loopback TCP address with a bearer token. Endpoints and
 * examples: docs/operations.md. One request per connection. */
#ifndef DM_PROXY_ADMIN_H
#define DM_PROXY_ADMIN_H

#include <stddef.h>
#include <stdint.h>

struct acme_manager;
struct cfg;
struct cfg_problems;
struct dm_err;
struct event_base;

/* Name of the unix socket inside the data directory. */
#define DM_ADMIN_SOCK_NAME "admin.sock"
/* Whole request (connect to last byte) and response write, in ms. */
#define DM_ADMIN_TIMEOUT_MS 10000
/* Concurrent admin connections; more are closed at accept. */
#define DM_ADMIN_MAX_CONNS 32

/* What the admin API needs from the process that runs it (cli.c). All
 * callbacks run on the control thread, synchronously. */
struct dm_admin_hooks {
    /* config_get returns a new reference to the running config. */
    struct cfg *(*config_get)(void *arg);
    /* apply makes next (borrowed; already validated) the running config,
     * the same way SIGHUP does. Returns 0, or -1 with err (old one kept). */
    int (*apply)(void *arg, struct cfg *next, struct dm_err *err);
    /* reload_file re-reads the config file the process was started with,
     * validates and applies it (SIGHUP's work). Returns 0 with the new
     * generation in *out_gen; -1 with the problems in *out_problems (each
     * "path: message") or, if there is none, the reason in err. */
    int (*reload_file)(void *arg, uint64_t *out_gen, struct cfg_problems *out_problems,
                       struct dm_err *err);
    /* upgrade starts a binary upgrade (POST /upgrade); NULL: not offered.
     * Returns 0 once started, or -1 with err (one already runs...). */
    int (*upgrade)(void *arg, struct dm_err *err);
    const char *data_dir_override; /* borrowed: --data-dir or DOORMAN_DATA_DIR, may be NULL */
    struct acme_manager *mgr;      /* borrowed: for metrics; may be NULL */
    void *arg;
};

struct dm_admin;

/* dm_admin_start opens the listeners cfg asks for (borrowed; admin.enabled,
 * admin.listen and data_dir) on base (borrowed): the unix socket
 * <data_dir>/admin.sock (mode 0600; a stale file is replaced, one a live
 * process answers on is left alone and the socket is skipped with a warning)
 * and the TCP address if set; a socket handed over by a binary upgrade
 * (DOORMAN_ADMIN_FD) is used as is. hooks is copied. Returns the server (NULL
 * result with no error when admin.enabled is false), or NULL with err if a
 * listener cannot be opened. */
struct dm_admin *dm_admin_start(struct event_base *base, const struct cfg *cfg,
                                const struct dm_admin_hooks *hooks, struct dm_err *err);

/* dm_admin_apply moves the TCP listener to next->admin.listen (a reload):
 * the new address is opened first, so a failure keeps the old one. The
 * unix socket stays (it lives in data_dir); the bearer token is read from
 * the running config on each request already. Returns 0 or -1 with err. */
int dm_admin_apply(struct dm_admin *a, const struct cfg *next, struct dm_err *err);

/* dm_admin_free closes the listeners and open admin connections and removes
 * the socket file it created. NULL does nothing. */
void dm_admin_free(struct dm_admin *a);

/* dm_admin_unix_fd returns the listening unix socket (for a binary
 * upgrade to hand over), or -1. */
int dm_admin_unix_fd(const struct dm_admin *a);

/* dm_admin_disown keeps dm_admin_free from removing the socket file: the
 * process it was handed to serves on it now. */
void dm_admin_disown(struct dm_admin *a);

/* dm_admin_sock_path writes <data_dir>/admin.sock into buf. Returns 0, or -1
 * if it does not fit a unix socket address (107 bytes). */
int dm_admin_sock_path(char *buf, size_t cap, const char *data_dir);

/* dm_admin_call is the blocking client side, for `doorman reload` and
 * `doorman health`: one request to the unix socket sock_path, at most
 * DM_ADMIN_TIMEOUT_MS in all. extra_headers is NULL or "Name: value\r\n"
 * lines. On success *out_status holds the HTTP status and *out_body a new
 * NUL-terminated body (caller frees). Returns 0, or -1 with err (cannot
 * connect, timeout, malformed answer). */
int dm_admin_call(const char *sock_path, const char *method, const char *target,
                  const char *extra_headers, const char *body, size_t body_len, int *out_status,
                  char **out_body, struct dm_err *err);

#endif
