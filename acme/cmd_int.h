/* What the one-shot ACME commands (`doorman revoke`, `doorman account ...`)
 * share, inside dm_acme only (account_cmd.c): the site's first ACME issuer
 * from the config, its client (and account) on a private event_base, and a
 * loop that runs asynchronous operations until one of them ends the command.
 * Invariant: everything in struct acme_cmd belongs to its loop, and
 * acme_cmd_cleanup cancels whatever is still in flight without calling back. */
#ifndef DM_ACME_CMD_INT_H
#define DM_ACME_CMD_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "proxy/core/err.h"

struct acme_account;
struct acme_client;
struct acme_problem;
struct cfg;
struct cfg_acme;
struct cfg_site;
struct event_base;

/* One command run against one CA, in caller storage. */
struct acme_cmd {
    const struct cfg *cfg;        /* borrowed */
    const struct cfg_site *site;  /* borrowed: the site serving the name */
    const struct cfg_acme *acme;  /* borrowed: site->acme, the site's first CA */
    struct event_base *base;      /* owned: private loop */
    struct acme_client *client;   /* owned */
    struct acme_account *account; /* owned, NULL until acme_cmd_open_account */
    bool is_done;                 /* acme_cmd_finish ran */
    int rc;                       /* 0 or -1, once is_done */
    struct dm_err err;            /* why rc is -1 */
};

/* acme_cmd_init finds the ACME site of cfg (borrowed; must outlive c) that
 * serves name and makes its CA client on a new private event_base. Returns 0,
 * or -1 with err (DM_E_CONFIG when no ACME site serves name, DM_E_NOMEM, the
 * client's errors). Call acme_cmd_cleanup in both cases. */
int acme_cmd_init(struct acme_cmd *c, const struct cfg *cfg, const char *name, struct dm_err *err);

/* acme_cmd_open_account opens the account the site's orders used. It refuses
 * (DM_E_NOTFOUND, "no ACME account key ...") when account.key is missing:
 * acme_account_open would make a new key, and a new account can neither
 * revoke by kid nor roll over or deactivate the old one. Returns 0 or -1. */
int acme_cmd_open_account(struct acme_cmd *c, struct dm_err *err);

/* acme_cmd_cleanup frees the account, the client (cancelling their operations
 * and calls without callbacks) and the loop, and zeroes c. */
void acme_cmd_cleanup(struct acme_cmd *c);

/* acme_cmd_finish ends the command from one of its callbacks: success when
 * prob and err are both NULL, else a failure described by the CA's problem
 * (when it has a type) or by err. Breaks acme_cmd_wait's loop. */
void acme_cmd_finish(struct acme_cmd *c, const struct acme_problem *prob, const struct dm_err *err);

/* acme_cmd_wait runs c's loop until acme_cmd_finish. Every ACME call carries
 * the client's deadline, so it returns. Returns 0 on success, or -1 with err
 * (the command's failure, or DM_E_IO if the loop ran out of events first). */
int acme_cmd_wait(struct acme_cmd *c, struct dm_err *err);

#endif
