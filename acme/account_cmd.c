/* `doorman account rollover` (RFC 8555 §7.3.5) and `doorman account
 * deactivate` (§7.3.6), plus the scaffolding of every one-shot ACME command
 * (cmd_int.h): the site's CA client and account on a private event_base, run
 * until one callback ends the command. The account operations themselves live
 * in account.c. Invariants: the stored account key is replaced only after the
 * CA accepted the new one (account.c renames account.key.next over it), and
 * the account key never leaves struct acme_key (STYLE §4.8). */
#include "acme/acme.h"
#include "acme/cmd_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "acme/account.h"
#include "acme/cert_int.h"
#include "acme/client.h"
#include "acme/jws.h"
#include "acme/manager_acme.h"
#include "acme/storage.h"
#include "config/config.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"

/* ---- the shared command scaffolding (cmd_int.h) ------------------------------- */

static const struct cfg_site *cmd_find_site(const struct cfg *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->num_sites; i++) {
        const struct cfg_site *s = &cfg->sites[i];
        for (size_t k = 0; k < s->num_hosts; k++) {
            if (strcmp(s->hosts[k], name) == 0) {
                return s;
            }
        }
    }
    return NULL;
}

int acme_cmd_init(struct acme_cmd *c, const struct cfg *cfg, const char *name, struct dm_err *err)
{
    memset(c, 0, sizeof(*c));
    c->cfg = cfg;
    c->site = cmd_find_site(cfg, name);
    if (c->site == NULL || c->site->tls != CFG_TLS_ACME || c->site->acme == NULL) {
        dm_err_set(err, DM_E_CONFIG, "%s: no site with that name uses an ACME CA", name);
        return -1;
    }
    c->acme = c->site->acme;
    /* A certificate may come from a fallback CA: commands about the stored
     * certificate (revoke) go to the CA that issued the newest one. */
    if (c->acme->num_fallbacks > 0) {
        struct acme_storage *st = acme_storage_fs_new(cfg->data_dir, NULL);
        time_t best = 0;
        for (size_t i = 0; st != NULL && i <= c->acme->num_fallbacks; i++) {
            const struct cfg_acme *a = i == 0 ? c->site->acme : &c->site->acme->fallbacks[i - 1];
            char issuer_id[96];
            acme_issuer_storage_id(issuer_id, sizeof(issuer_id), a->directory);
            char *chain = NULL, *key = NULL;
            struct acme_storage_meta meta = {0};
            if (acme_storage_get(st, issuer_id, c->site->hosts[0], &chain, &key, &meta, NULL) ==
                    0 &&
                meta.not_after > best) {
                best = meta.not_after;
                c->acme = a;
            }
            free(chain);
            acme_pem_free_secret(key);
            acme_storage_meta_cleanup(&meta);
        }
        acme_storage_free(st);
    }
    c->base = event_base_new();
    if (c->base == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    struct acme_client_opts co = {.directory_url = c->acme->directory, .ca_file = c->acme->ca_root};
    c->client = acme_client_new(c->base, &co, err);
    return c->client != NULL ? 0 : -1;
}

int acme_cmd_open_account(struct acme_cmd *c, struct dm_err *err)
{
    const struct cfg_acme *a = c->acme;
    char dir[ACME_ACCOUNT_PATH_MAX], key[ACME_ACCOUNT_PATH_MAX + 32];
    if (acme_account_storage_dir(dir, sizeof(dir), c->cfg->data_dir, a->directory, a->email, err) !=
        0) {
        return -1;
    }
    snprintf(key, sizeof(key), "%s/account.key", dir);
    if (access(key, F_OK) != 0) {
        dm_err_set(err, DM_E_NOTFOUND, "no ACME account key %s", key);
        return -1;
    }
    struct acme_account_opts ao = {.data_dir = c->cfg->data_dir,
                                   .email = a->email,
                                   .is_tos_agreed = a->agree_tos,
                                   .eab_kid = a->eab_kid,
                                   .eab_hmac_key = a->eab_hmac_key};
    c->account = acme_account_open(c->client, &ao, err);
    return c->account != NULL ? 0 : -1;
}

void acme_cmd_cleanup(struct acme_cmd *c)
{
    /* The account's operations cancel their calls through the client, so the
     * account goes first, then the client, then the loop they both use. */
    acme_account_free(c->account);
    acme_client_free(c->client);
    if (c->base != NULL) {
        event_base_free(c->base);
    }
    memset(c, 0, sizeof(*c));
}

void acme_cmd_finish(struct acme_cmd *c, const struct acme_problem *prob, const struct dm_err *err)
{
    c->is_done = true;
    c->rc = prob == NULL && err == NULL ? 0 : -1;
    if (c->rc != 0) {
        if (prob != NULL && prob->type[0] != '\0') {
            dm_err_set(&c->err, DM_E_ACME, "%s: %s", acme_problem_short(prob), prob->detail);
        } else if (err != NULL && err->msg[0] != '\0') {
            c->err = *err;
        } else if (prob != NULL) {
            dm_err_set(&c->err, DM_E_ACME, "%s: %s", acme_problem_short(prob), prob->detail);
        } else {
            dm_err_set(&c->err, DM_E_ACME, "the CA refused the request");
        }
    }
    event_base_loopbreak(c->base);
}

int acme_cmd_wait(struct acme_cmd *c, struct dm_err *err)
{
    while (!c->is_done && event_base_dispatch(c->base) == 0) {
    }
    if (!c->is_done) {
        dm_err_set(err, DM_E_IO, "event loop stopped before the CA answered");
        return -1;
    }
    if (c->rc != 0) {
        if (err != NULL) {
            *err = c->err;
        }
        return -1;
    }
    return 0;
}

/* ---- account rollover and deactivation ----------------------------------------- */

enum account_cmd_kind {
    ACCOUNT_CMD_ROLLOVER = 0,
    ACCOUNT_CMD_DEACTIVATE,
};

struct account_cmd {
    struct acme_cmd cmd;
    enum account_cmd_kind kind;
    struct acme_key *new_key; /* owned until handed to the key change */
    bool is_ca_answer;        /* the failure came from the CA, not the network */
    char kid[1024];           /* the account URL, saved before deactivation forgets it */
};

static void account_cmd_on_done(struct acme_account *a, const struct acme_problem *prob,
                                const struct dm_err *err, void *arg)
{
    (void)a;
    struct account_cmd *ac = arg;
    ac->is_ca_answer = prob != NULL && prob->status >= 400 && prob->status < 500;
    acme_cmd_finish(&ac->cmd, prob, err);
}

/* account_cmd_on_registered runs once the CA knows the account (the kid is
 * known), and starts the command's own operation. */
static void account_cmd_on_registered(struct acme_account *a, const struct acme_problem *prob,
                                      const struct dm_err *err, void *arg)
{
    struct account_cmd *ac = arg;
    if (prob != NULL || err != NULL) {
        acme_cmd_finish(&ac->cmd, prob, err);
        return;
    }
    snprintf(ac->kid, sizeof(ac->kid), "%s", acme_account_kid(a));
    struct dm_err e = {0};
    struct acme_account_op *op = NULL;
    if (ac->kind == ACCOUNT_CMD_ROLLOVER) {
        op = acme_account_key_change_start(a, ac->new_key, account_cmd_on_done, ac, &e);
        ac->new_key = NULL;
    } else {
        op = acme_account_deactivate_start(a, account_cmd_on_done, ac, &e);
    }
    if (op == NULL) {
        acme_cmd_finish(&ac->cmd, NULL, &e);
    }
}

/* key_rsa_bits reads the modulus size of an RSA key from its public JWK. */
static unsigned key_rsa_bits(const struct acme_key *key)
{
    unsigned bits = 2048;
    json_t *j = json_loads(acme_key_jwk(key), 0, NULL);
    const char *n = json_string_value(json_object_get(j, "n"));
    size_t len = 0;
    uint8_t *raw = n != NULL ? acme_b64url_decode(n, strlen(n), &len) : NULL;
    if (raw != NULL && len >= 256) {
        bits = (unsigned)(len * 8);
    }
    free(raw);
    json_decref(j);
    return bits;
}

/* account_cmd_run opens the site's account, makes sure the CA knows it, runs
 * the rollover or deactivation, and writes the account URL into out_kid. */
static int account_cmd_run(enum account_cmd_kind kind, const struct cfg *cfg, const char *name,
                           char *out_kid, size_t cap, struct dm_err *err)
{
    int rc = -1;
    struct account_cmd ac = {.kind = kind};
    char next[ACME_ACCOUNT_PATH_MAX + 32] = "";
    if (acme_cmd_init(&ac.cmd, cfg, name, err) != 0 || acme_cmd_open_account(&ac.cmd, err) != 0) {
        goto out;
    }
    struct acme_account *a = ac.cmd.account;
    if (kind == ACCOUNT_CMD_ROLLOVER) {
        /* A leftover account.key.next may be the only key the CA accepts (an
         * earlier rollover whose answer was lost): never overwrite it. */
        snprintf(next, sizeof(next), "%s/account.key.next", acme_account_path(a));
        if (dm_file_exists(next)) {
            dm_err_set(err, DM_E_CONFIG,
                       "%s exists: an earlier rollover did not finish. If the CA applied it, "
                       "move it over account.key; otherwise delete it",
                       next);
            next[0] = '\0';
            goto out;
        }
        const struct acme_key *old = acme_account_key(a);
        enum acme_key_alg alg = acme_key_alg(old);
        ac.new_key = acme_key_new(alg, alg == ACME_KEY_RS256 ? key_rsa_bits(old) : 0, err);
        if (ac.new_key == NULL) {
            next[0] = '\0';
            goto out;
        }
    }
    if (acme_account_register_start(a, account_cmd_on_registered, &ac, err) == NULL ||
        acme_cmd_wait(&ac.cmd, err) != 0) {
        goto out;
    }
    if (out_kid != NULL && cap > 0) {
        snprintf(out_kid, cap, "%s", ac.kid);
    }
    rc = 0;
out:
    if (rc != 0 && next[0] != '\0' && dm_file_exists(next)) {
        if (ac.is_ca_answer) {
            /* The CA refused the new key: it never became the account's. */
            unlink(next);
        } else if (err != NULL) {
            /* No answer: the CA may have switched keys. Keep the new one. */
            size_t len = strlen(err->msg);
            snprintf(err->msg + len, sizeof(err->msg) - len,
                     " (the new key is kept in %s: if the CA applied the rollover, move it over "
                     "account.key)",
                     next);
        }
    }
    acme_key_free(ac.new_key);
    acme_cmd_cleanup(&ac.cmd);
    return rc;
}

int acme_account_rollover_run(const struct cfg *cfg, const char *name, char *out_kid, size_t cap,
                              struct dm_err *err)
{
    return account_cmd_run(ACCOUNT_CMD_ROLLOVER, cfg, name, out_kid, cap, err);
}

int acme_account_deactivate_run(const struct cfg *cfg, const char *name, char *out_kid, size_t cap,
                                struct dm_err *err)
{
    return account_cmd_run(ACCOUNT_CMD_DEACTIVATE, cfg, name, out_kid, cap, err);
}
