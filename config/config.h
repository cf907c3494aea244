/* Loading and validating configuration into an immutable, refcounted
 * snapshot. Validation collects every problem with its JSON path
 * ("sites[1].to: \"abc\" is not host:port") before failing; unknown keys are
 * errors. JSON lives only here (jansson). */
#ifndef DM_CONFIG_CONFIG_H
#define DM_CONFIG_CONFIG_H

#include <stddef.h>

#include "config/config_types.h"

struct dm_err;

/* Largest config file accepted: far above any real config, small enough that
 * a wrong path (a log file, /dev/zero) fails fast. */
#define CFG_MAX_FILE_BYTES (4u * 1024 * 1024)

/* Problems found by validation, each "path: message" (path like sites[1].to). */
struct cfg_problems {
    char **items; /* owned */
    size_t num_items;
};

void cfg_problems_cleanup(struct cfg_problems *p);

/* cfg_load_file reads and validates a JSON config file. Returns a new snapshot
 * (refs = 1) or NULL with every problem in *out_problems (file:line:col for
 * JSON syntax errors). data_dir_override (the --data-dir flag or
 * DOORMAN_DATA_DIR; may be NULL) wins over the file's data_dir.
 * *out_problems is (re)initialized here, so clean up a previous list first;
 * the caller cleans it up after (cfg_problems_cleanup). It may be NULL. */
struct cfg *cfg_load_file(const char *path, const char *data_dir_override,
                          struct cfg_problems *out_problems);

/* cfg_load_string is cfg_load_file on a buffer; name is used in messages. */
struct cfg *cfg_load_string(const char *json, size_t len, const char *name,
                            const char *data_dir_override, struct cfg_problems *out_problems);

/* Options of `doorman reverse-proxy`, turned into the same snapshot. */
struct cfg_quick {
    const char *from; /* host name, e.g. "localhost" */
    const char **to;  /* backend addresses */
    size_t num_to;
    int https_port;       /* -1 = default */
    int http_port;        /* -1 = default, 0 = off */
    const char *data_dir; /* may be NULL */
    const char *bind;     /* may be NULL */
    const char *ca;       /* --ca: ACME directory URL; NULL = local CA */
    const char *ca_root;  /* --ca-root: PEM trusted for the CA's HTTPS; may be NULL */
    const char *email;    /* --email: ACME account contact; may be NULL */
    /* --on-demand: certificates for every name the policy permits (--ask
     * URL, --allow PATTERN...); --from becomes optional (a host pattern). */
    bool on_demand;
    const char *ask;
    const char **allow;
    size_t num_allow;
    const char *lb_policy;   /* --lb-policy: upstream.policy; may be NULL */
    const char *health_path; /* --health-path: upstream.health_check.path; may be NULL */
};

/* The ACME CA a public name gets from `doorman reverse-proxy` without --ca. */
#define CFG_DEFAULT_ACME_CA "https://acme-v02.api.letsencrypt.org/directory"

/* cfg_from_quick builds a snapshot from reverse-proxy flags, with the same
 * validation and messages; paths name the flags ("--from", "--to",
 * "--https-port", "--http-port", "--data-dir", "--bind"). One site, tls
 * "local", everything else at its default. out_problems as for cfg_load_file. */
struct cfg *cfg_from_quick(const struct cfg_quick *q, struct cfg_problems *out_problems);

/* cfg_default_data_dir writes the default data directory into buf: for root
 * /var/lib/doorman, otherwise $XDG_DATA_HOME/doorman or ~/.local/share/doorman.
 * DOORMAN_DATA_DIR, when set, wins. Returns 0, or -1 if it does not fit or no
 * home directory is known. */
int cfg_default_data_dir(char *buf, size_t cap);

/* cfg_ref takes a reference; cfg_unref drops one and frees at zero. Safe from
 * any thread. cfg_unref(NULL) does nothing. */
struct cfg *cfg_ref(struct cfg *c);
void cfg_unref(struct cfg *c);

/* cfg_addr_parse parses a backend address (see struct cfg_addr) into out;
 * returns -1 with a message in msg (e.g. "\"abc\" is not host:port"). */
int cfg_addr_parse(struct cfg_addr *out, const char *text, char *msg, size_t msg_cap);
void cfg_addr_cleanup(struct cfg_addr *a);

/* cfg_host_matches tells whether host (no port, no trailing dot; compared
 * ASCII-case-insensitively) matches pattern (exact or "*.example.com", exactly
 * one label deep). Returns 1 or 0. */
int cfg_host_matches(const char *pattern, const char *host, size_t host_len);

/* cfg_dump returns the snapshot as a new JSON string (for `GET /config` and
 * --help examples) with every default filled in; loading it gives an equal
 * snapshot. Caller frees with free(). NULL if out of memory. */
char *cfg_dump(const struct cfg *c);

/* What cfg_dump_redacted writes in place of a secret. */
#define CFG_REDACTED "<redacted>"

/* cfg_dump_redacted is cfg_dump with every secret (EAB HMAC keys, the admin
 * token) replaced by CFG_REDACTED: what the admin API shows. Caller frees. */
char *cfg_dump_redacted(const struct cfg *c);

#endif
