/* The commands behind the doorman executable: run, reverse-proxy, validate,
 * trust, version. Startup may exit (bad config, port in use); once serving,
 * the control thread runs its own loop for signals, certificate renewal and
 * ticket key rotation while workers serve traffic. */
#include "proxy/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <openssl/base.h>

#include "acme/acme.h"
#include "config/config.h"
#include "proxy/admin.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"
#include "proxy/core/log.h"
#include "proxy/metrics.h"
#include "proxy/proxy.h"
#include "proxy/sd_notify.h"
#include "proxy/upgrade.h"

#define TICKET_ROTATE_S 3600

struct control {
    struct event_base *base;
    struct acme_store *store;
    struct acme_manager *mgr;
    struct cfg *cfg;
    const char *config_path;   /* NULL for reverse-proxy */
    const char *data_dir_flag; /* may be NULL */
    uint32_t shutdown_ms;
    struct dm_admin *admin;     /* owned; NULL when admin.enabled is false */
    struct dm_upgrade *upgrade; /* owned: a binary upgrade in progress */
    bool is_handed_over;        /* the new process serves: drain, keep its sockets */
};

/* The executable and arguments this process was started with, for a binary
 * upgrade: the path is resolved at start, because once the file is replaced
 * /proc/self/exe names the old, deleted one. */
static char exe_path[PATH_MAX];
static char **saved_argv;

static void print_problems(const char *what, const struct cfg_problems *p)
{
    size_t wlen = what ? strlen(what) : 0;
    for (size_t i = 0; i < p->num_items; i++) {
        /* Syntax errors already start with "FILE:LINE:COL". */
        bool has_file = what && strncmp(p->items[i], what, wlen) == 0 && p->items[i][wlen] == ':';
        bool prefix = what && !has_file;
        fprintf(stderr, "%s%s%s\n", prefix ? what : "", prefix ? ": " : "", p->items[i]);
    }
}

static const char *data_dir_override(const char *flag)
{
    if (flag != NULL) {
        return flag;
    }
    const char *env = getenv("DOORMAN_DATA_DIR");
    return env != NULL && env[0] != '\0' ? env : NULL;
}

static void control_on_stop(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct control *ctl = arg;
    dm_log(DM_LOG_INFO, "main", "received %s, shutting down (deadline %ums)",
           sig == SIGINT ? "SIGINT" : "SIGTERM", ctl->shutdown_ms);
    event_base_loopbreak(ctl->base);
}

/* control_apply makes next (borrowed; validated) the running config: the
 * access log and the admin API's TCP listener, the certificate manager, then
 * every worker for new connections. Returns 0, or -1 with
 * err and the old config still running. Shared by SIGHUP and the admin API. */
static int control_apply_steps(struct control *ctl, struct cfg *next, struct dm_err *err)
{
    struct dm_err e2 = {0};
    /* What can fail on the system's side (opening a file, binding a port)
     * goes first, each undone if a later step fails. */
    if (dm_access_log_apply(next, err) != 0) {
        return -1;
    }
    if (dm_admin_apply(ctl->admin, next, err) != 0) {
        dm_access_log_apply(ctl->cfg, &e2);
        return -1;
    }
    if (acme_manager_apply(ctl->mgr, next, err) != 0) {
        dm_admin_apply(ctl->admin, ctl->cfg, &e2);
        dm_access_log_apply(ctl->cfg, &e2);
        return -1;
    }
    if (dm_workers_publish(next, err) != 0) {
        /* Workers keep the old generation; put the rest back on it too. */
        acme_manager_apply(ctl->mgr, ctl->cfg, &e2);
        dm_admin_apply(ctl->admin, ctl->cfg, &e2);
        dm_access_log_apply(ctl->cfg, &e2);
        return -1;
    }
    if (next->workers != ctl->cfg->workers) {
        dm_log(DM_LOG_WARN, "reload",
               "workers: %u takes effect at the next restart or upgrade (%d running)",
               next->workers, dm_workers_count());
    }
    if (next->admin.enabled != ctl->cfg->admin.enabled) {
        dm_log(DM_LOG_WARN, "reload", "admin.enabled takes effect at the next restart");
    }
    cfg_unref(ctl->cfg);
    ctl->cfg = cfg_ref(next);
    ctl->shutdown_ms = next->timeouts.shutdown_ms;
    return 0;
}

static int control_apply(void *arg, struct cfg *next, struct dm_err *err)
{
    dm_sd_notify_reloading();
    int rc = control_apply_steps(arg, next, err);
    dm_sd_notify_ready(); /* READY=1 ends RELOADING=1, whatever the outcome */
    return rc;
}

static struct cfg *control_config_get(void *arg)
{
    struct control *ctl = arg;
    return cfg_ref(ctl->cfg);
}

/* control_reload_file re-reads the config file (SIGHUP, POST /reload). */
static int control_reload_file(void *arg, uint64_t *out_gen, struct cfg_problems *out_problems,
                               struct dm_err *err)
{
    struct control *ctl = arg;
    if (ctl->config_path == NULL) {
        dm_err_set(err, DM_E_CONFIG,
                   "nothing to reload: doorman runs without a config file (use POST /load)");
        return -1;
    }
    struct cfg *next =
        cfg_load_file(ctl->config_path, data_dir_override(ctl->data_dir_flag), out_problems);
    if (next == NULL) {
        for (size_t i = 0; i < out_problems->num_items; i++) {
            dm_log(DM_LOG_ERROR, "reload", "%s: %s (keeping the running config)", ctl->config_path,
                   out_problems->items[i]);
        }
        dm_err_set(err, DM_E_CONFIG, "%s is invalid", ctl->config_path);
        return -1;
    }
    int rc = control_apply(ctl, next, err);
    if (rc != 0) {
        dm_log(DM_LOG_ERROR, "reload", "%s (keeping the running config)", err->msg);
    } else {
        *out_gen = next->generation;
        dm_log(DM_LOG_INFO, "reload", "config %s reloaded (generation %llu)", ctl->config_path,
               (unsigned long long)next->generation);
    }
    cfg_unref(next);
    return rc;
}

static void control_on_reload(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct control *ctl = arg;
    if (ctl->config_path == NULL) {
        dm_log(DM_LOG_INFO, "main", "SIGHUP: nothing to reload (no config file)");
        return;
    }
    uint64_t gen = 0;
    struct cfg_problems problems = {0};
    struct dm_err err = {0};
    control_reload_file(ctl, &gen, &problems, &err);
    cfg_problems_cleanup(&problems);
}

static void control_on_upgrade_done(void *arg, bool is_ready, pid_t pid)
{
    struct control *ctl = arg;
    if (!is_ready) {
        dm_log(DM_LOG_ERROR, "upgrade",
               "new process %d did not start serving (exited, or not ready within %d s); "
               "this one keeps serving",
               (int)pid, DM_UPGRADE_TIMEOUT_MS / 1000);
        return; /* freed by the next upgrade or at exit */
    }
    dm_log(DM_LOG_INFO, "upgrade", "new process pid %d ready; draining and exiting (deadline %ums)",
           (int)pid, ctl->shutdown_ms);
    ctl->is_handed_over = true;
    dm_admin_disown(ctl->admin);
    event_base_loopbreak(ctl->base);
}

/* control_upgrade starts the binary upgrade (SIGUSR2, POST /upgrade). */
static int control_upgrade(void *arg, struct dm_err *err)
{
    struct control *ctl = arg;
    if (ctl->is_handed_over) {
        dm_err_set(err, DM_E_CONFIG, "an upgrade already handed over; this process is exiting");
        return -1;
    }
    if (exe_path[0] == '\0' || saved_argv == NULL) {
        dm_err_set(err, DM_E_CONFIG, "the executable path is unknown");
        return -1;
    }
    if (ctl->upgrade != NULL && !dm_upgrade_is_done(ctl->upgrade)) {
        dm_err_set(err, DM_E_CONFIG, "an upgrade is already in progress");
        return -1;
    }
    dm_upgrade_free(ctl->upgrade); /* a finished, failed one */
    ctl->upgrade = NULL;
    int fds[64];
    uint16_t ports16[64];
    unsigned short ports[64];
    int n = dm_workers_listen_fds(fds, ports16, 64);
    for (int i = 0; i < n; i++) {
        ports[i] = ports16[i];
    }
    ctl->upgrade =
        dm_upgrade_start(ctl->base, exe_path, saved_argv, fds, ports, n,
                         dm_admin_unix_fd(ctl->admin), control_on_upgrade_done, ctl, err);
    if (ctl->upgrade == NULL) {
        return -1;
    }
    dm_log(DM_LOG_INFO, "upgrade", "starting %s with %d listening sockets", exe_path, n);
    return 0;
}

static void control_on_usr2(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct dm_err err = {0};
    if (control_upgrade(arg, &err) != 0) {
        dm_log(DM_LOG_ERROR, "upgrade", "SIGUSR2: %s", err.msg);
    }
}

/* control_on_reopen reopens the access log file (SIGUSR1, for logrotate). */
static void control_on_reopen(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    struct dm_err err = {0};
    if (dm_access_log_reopen(&err) != 0) {
        dm_log(DM_LOG_ERROR, "main", "SIGUSR1: %s (still writing to the old file)", err.msg);
        return;
    }
    dm_log(DM_LOG_INFO, "main", "SIGUSR1: access log reopened");
}

static void control_on_rotate(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    dm_tls_ticket_keys_rotate();
}

/* serve runs the proxy on cfg (reference taken over) until a stop signal. */
static int serve(struct cfg *cfg, const char *config_path, const char *data_dir_flag)
{
    int rc = 1;
    struct dm_err err = {0};
    struct control ctl = {.cfg = cfg,
                          .config_path = config_path,
                          .data_dir_flag = data_dir_flag,
                          .shutdown_ms = cfg->timeouts.shutdown_ms};
    struct event *ev_term = NULL, *ev_int = NULL, *ev_hup = NULL, *ev_rot = NULL, *ev_usr1 = NULL,
                 *ev_usr2 = NULL;
    bool started = false;

    dm_log_setup((enum dm_log_level)cfg->log_level, cfg->log_format == CFG_LOG_JSON, 2);
    signal(SIGPIPE, SIG_IGN);
    if (dm_mkdir_p(cfg->data_dir, 0700, &err) != 0) {
        fprintf(stderr, "doorman: data directory: %s\n", err.msg);
        goto out;
    }
    ctl.base = event_base_new();
    ctl.store = acme_store_new();
    if (ctl.base == NULL || ctl.store == NULL) {
        fprintf(stderr, "doorman: out of memory\n");
        goto out;
    }
    /* Signal handlers first: once the ports accept, a SIGHUP or SIGUSR1 must
     * not find the default action (terminate). Signals that arrive before the
     * loop runs wait for it. */
    ev_term = evsignal_new(ctl.base, SIGTERM, control_on_stop, &ctl);
    ev_int = evsignal_new(ctl.base, SIGINT, control_on_stop, &ctl);
    ev_hup = evsignal_new(ctl.base, SIGHUP, control_on_reload, &ctl);
    ev_usr1 = evsignal_new(ctl.base, SIGUSR1, control_on_reopen, &ctl);
    ev_usr2 = evsignal_new(ctl.base, SIGUSR2, control_on_usr2, &ctl);
    ev_rot = event_new(ctl.base, -1, EV_PERSIST, control_on_rotate, NULL);
    if (ev_term == NULL || ev_int == NULL || ev_hup == NULL || ev_usr1 == NULL || ev_usr2 == NULL ||
        ev_rot == NULL) {
        fprintf(stderr, "doorman: out of memory\n");
        goto out;
    }
    struct timeval rot = {.tv_sec = TICKET_ROTATE_S};
    event_add(ev_term, NULL);
    event_add(ev_int, NULL);
    event_add(ev_hup, NULL);
    event_add(ev_usr1, NULL);
    event_add(ev_usr2, NULL);
    event_add(ev_rot, &rot);
    ctl.mgr = acme_manager_new(ctl.base, ctl.store, cfg->data_dir, &err);
    if (ctl.mgr == NULL || acme_manager_apply(ctl.mgr, cfg, &err) != 0) {
        fprintf(stderr, "doorman: certificates: %s\n", err.msg);
        goto out;
    }
    if (dm_proxy_init(ctl.store, cfg, &err) != 0) {
        fprintf(stderr, "doorman: %s\n", err.msg);
        goto out;
    }
    struct acme_ondemand *od = acme_manager_ondemand(ctl.mgr);
    if (od != NULL) {
        acme_ondemand_set_wake(od, dm_workers_wake_ondemand, NULL);
        dm_proxy_set_ondemand(od);
    }
    if (dm_workers_start(cfg, &err) != 0) {
        fprintf(stderr, "doorman: %s\n", err.msg);
        goto out;
    }
    started = true;
    struct dm_admin_hooks hooks = {.config_get = control_config_get,
                                   .apply = control_apply,
                                   .reload_file = control_reload_file,
                                   .upgrade = control_upgrade,
                                   .data_dir_override = data_dir_override(data_dir_flag),
                                   .mgr = ctl.mgr,
                                   .arg = &ctl};
    ctl.admin = dm_admin_start(ctl.base, cfg, &hooks, &err);
    if (ctl.admin == NULL && cfg->admin.enabled) {
        fprintf(stderr, "doorman: %s\n", err.msg);
        goto out;
    }
    dm_log(DM_LOG_INFO, "main", "ready: https on %s port %u, http %s%u, %d workers, data %s",
           ctl.cfg->bind, ctl.cfg->https_port, ctl.cfg->http_port ? "on port " : "off",
           ctl.cfg->http_port, dm_workers_count(), ctl.cfg->data_dir);
    dm_upgrade_notify_ready(); /* when an older process started this one */
    dm_sd_notify_ready();
    event_base_dispatch(ctl.base);
    rc = 0;
out:
    /* First: no config may be applied while the workers stop. */
    dm_admin_free(ctl.admin);
    if (started && ctl.is_handed_over) {
        dm_workers_stop_handover(ctl.shutdown_ms);
        dm_log(DM_LOG_INFO, "main", "stopped (handed over to the new process)");
    } else if (started) {
        /* Not after a handover: the new process is the unit's main PID now
         * and STOPPING=1 would speak for the whole service. */
        dm_sd_notify("STOPPING=1");
        dm_workers_stop(ctl.shutdown_ms);
        dm_log(DM_LOG_INFO, "main", "stopped");
    }
    dm_upgrade_free(ctl.upgrade);
    dm_metrics_cleanup();
    dm_proxy_cleanup();
    if (ev_term) {
        event_free(ev_term);
    }
    if (ev_int) {
        event_free(ev_int);
    }
    if (ev_hup) {
        event_free(ev_hup);
    }
    if (ev_usr1) {
        event_free(ev_usr1);
    }
    if (ev_usr2) {
        event_free(ev_usr2);
    }
    if (ev_rot) {
        event_free(ev_rot);
    }
    acme_manager_free(ctl.mgr);
    acme_store_free(ctl.store);
    if (ctl.base) {
        event_base_free(ctl.base);
    }
    cfg_unref(ctl.cfg);
    return rc;
}

/* ---- argument parsing ---- */

enum {
    OPT_CONFIG = 256,
    OPT_DATA_DIR,
    OPT_FROM,
    OPT_TO,
    OPT_HTTPS_PORT,
    OPT_HTTP_PORT,
    OPT_BIND,
    OPT_INSTALL,
    OPT_HELP,
    OPT_CA,
    OPT_CA_ROOT,
    OPT_EMAIL,
    OPT_ON_DEMAND,
    OPT_ASK,
    OPT_ALLOW,
    OPT_LB_POLICY,
    OPT_HEALTH_PATH,
};

static const struct option long_opts[] = {
    {"config", required_argument, NULL, OPT_CONFIG},
    {"data-dir", required_argument, NULL, OPT_DATA_DIR},
    {"from", required_argument, NULL, OPT_FROM},
    {"to", required_argument, NULL, OPT_TO},
    {"https-port", required_argument, NULL, OPT_HTTPS_PORT},
    {"http-port", required_argument, NULL, OPT_HTTP_PORT},
    {"bind", required_argument, NULL, OPT_BIND},
    {"install", no_argument, NULL, OPT_INSTALL},
    {"help", no_argument, NULL, OPT_HELP},
    {"ca", required_argument, NULL, OPT_CA},
    {"ca-root", required_argument, NULL, OPT_CA_ROOT},
    {"email", required_argument, NULL, OPT_EMAIL},
    {"on-demand", no_argument, NULL, OPT_ON_DEMAND},
    {"ask", required_argument, NULL, OPT_ASK},
    {"allow", required_argument, NULL, OPT_ALLOW},
    {"lb-policy", required_argument, NULL, OPT_LB_POLICY},
    {"health-path", required_argument, NULL, OPT_HEALTH_PATH},
    {NULL, 0, NULL, 0},
};

struct args {
    const char *config;
    const char *data_dir;
    const char *from;
    const char *to[64];
    size_t num_to;
    int https_port;
    int http_port;
    const char *bind;
    bool install;
    bool help;
    const char *ca;
    const char *ca_root;
    const char *email;
    bool on_demand;
    const char *ask;
    const char *allow[64];
    size_t num_allow;
    const char *lb_policy;
    const char *health_path;
};

static int parse_port(const char *flag, const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s || v < 0 || v > 65535) {
        fprintf(stderr, "doorman: %s: \"%s\" is not a port number (0-65535)\n", flag, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* parse_args accepts only the flags in allowed (a string of OPT_* codes). */
static int parse_args(int argc, char **argv, const char *cmd, const int *allowed, size_t n_allowed,
                      struct args *a)
{
    memset(a, 0, sizeof(*a));
    a->https_port = -1;
    a->http_port = -1;
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
        bool ok = ch == OPT_HELP;
        for (size_t i = 0; i < n_allowed; i++) {
            if (allowed[i] == ch) {
                ok = true;
            }
        }
        if (ch == '?' || ch == ':' || !ok) {
            const char *bad = argv[optind - 1];
            fprintf(stderr, "doorman %s: unknown or incomplete option %s (see doorman %s --help)\n",
                    cmd, bad, cmd);
            return -1;
        }
        switch (ch) {
        case OPT_CONFIG:
            a->config = optarg;
            break;
        case OPT_DATA_DIR:
            a->data_dir = optarg;
            break;
        case OPT_FROM:
            a->from = optarg;
            break;
        case OPT_ON_DEMAND:
            a->on_demand = true;
            break;
        case OPT_ASK:
            a->ask = optarg;
            break;
        case OPT_LB_POLICY:
            a->lb_policy = optarg;
            break;
        case OPT_HEALTH_PATH:
            a->health_path = optarg;
            break;
        case OPT_ALLOW:
            if (a->num_allow == sizeof(a->allow) / sizeof(a->allow[0])) {
                fprintf(stderr, "doorman %s: too many --allow\n", cmd);
                return -1;
            }
            a->allow[a->num_allow++] = optarg;
            break;
        case OPT_TO:
            if (a->num_to == sizeof(a->to) / sizeof(a->to[0])) {
                fprintf(stderr, "doorman %s: too many --to\n", cmd);
                return -1;
            }
            a->to[a->num_to++] = optarg;
            break;
        case OPT_HTTPS_PORT:
            if (parse_port("--https-port", optarg, &a->https_port) != 0) {
                return -1;
            }
            break;
        case OPT_HTTP_PORT:
            if (parse_port("--http-port", optarg, &a->http_port) != 0) {
                return -1;
            }
            break;
        case OPT_BIND:
            a->bind = optarg;
            break;
        case OPT_INSTALL:
            a->install = true;
            break;
        case OPT_HELP:
            a->help = true;
            break;
        case OPT_CA:
            a->ca = optarg;
            break;
        case OPT_CA_ROOT:
            a->ca_root = optarg;
            break;
        case OPT_EMAIL:
            a->email = optarg;
            break;
        default:
            break;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "doorman %s: unexpected argument \"%s\" (see doorman %s --help)\n", cmd,
                argv[optind], cmd);
        return -1;
    }
    return 0;
}

static const char run_help[] =
    "Usage: doorman run --config FILE [--data-dir DIR]\n"
    "       DOORMAN_FROM=NAME DOORMAN_TO=ADDR[,ADDR...] doorman run [--data-dir DIR]\n"
    "\n"
    "Runs the sites of a JSON config file (see docs/configuration.md).\n"
    "SIGTERM/SIGINT stop gracefully; SIGHUP reloads the file; SIGUSR1 reopens the\n"
    "access log file; SIGUSR2 upgrades to the binary now installed at the same path.\n"
    "The admin API listens on DIR/admin.sock (doorman reload, health, upgrade).\n"
    "\n"
    "Without --config, DOORMAN_FROM and DOORMAN_TO describe one site as\n"
    "`doorman reverse-proxy` flags would, with DOORMAN_EMAIL, DOORMAN_CA,\n"
    "DOORMAN_CA_ROOT, DOORMAN_HTTPS_PORT, DOORMAN_HTTP_PORT, DOORMAN_BIND and\n"
    "DOORMAN_DATA_DIR for the other flags.\n"
    "\n"
    "  --config FILE    the config file\n"
    "  --data-dir DIR   where certificates and keys live (also DOORMAN_DATA_DIR;\n"
    "                   default /var/lib/doorman for root, else ~/.local/share/doorman)\n";

static const char rp_help[] =
    "Usage: doorman reverse-proxy --from NAME --to ADDR [--to ADDR]... [options]\n"
    "       doorman reverse-proxy --on-demand --ask URL --to ADDR [options]\n"
    "\n"
    "Serves https://NAME in front of the backend(s) ADDR with a certificate from\n"
    "doorman's local CA, and redirects plain HTTP to HTTPS. With --on-demand, serves\n"
    "every name the permission policy allows, each with a certificate ordered from\n"
    "the ACME CA during its first handshake.\n"
    "\n"
    "  --from NAME        host name to serve (e.g. localhost)\n"
    "  --to ADDR          backend: host:port, [ipv6]:port or unix:/path (repeatable)\n"
    "  --https-port N     HTTPS port (default 443)\n"
    "  --http-port N      plain-HTTP redirect port (default 80; 0 disables it)\n"
    "  --bind ADDR        listen address (default :: = all)\n"
    "  --data-dir DIR     data directory (also DOORMAN_DATA_DIR)\n"
    "  --ca URL           get the certificate from this ACME directory instead of\n"
    "                     the local CA (e.g. https://acme-v02.api.letsencrypt.org/directory)\n"
    "  --ca-root PEM      trust this root for the CA's own HTTPS (test CAs)\n"
    "  --email ADDR       contact for the ACME account\n"
    "  --on-demand        certificates for names not known in advance (needs --ask\n"
    "                     and/or --allow; --from, if given, limits the names)\n"
    "  --ask URL          permission endpoint: GET URL?domain=NAME, 2xx permits\n"
    "  --allow PATTERN    permit NAME or *.SUFFIX without asking (repeatable)\n"
    "  --lb-policy P      how several --to share requests: round_robin (default),\n"
    "                     least_conn, random_two, ip_hash or cookie\n"
    "  --health-path PATH probe each backend with GET PATH every 5 s; those failing\n"
    "                     get no traffic until they pass again\n";

static const char validate_help[] =
    "Usage: doorman validate --config FILE [--data-dir DIR]\n"
    "\n"
    "Checks a config without starting anything. Exit 0 if valid; otherwise\n"
    "prints every problem as \"path: message\" and exits 1.\n";

static const char trust_help[] =
    "Usage: doorman trust [--data-dir DIR] [--config FILE] [--install]\n"
    "\n"
    "Prints the path of the local CA's root certificate (PEM), creating the CA\n"
    "if needed, e.g.  curl --cacert \"$(doorman trust)\" https://localhost/\n"
    "\n"
    "  --install   also add the root to the system trust store\n"
    "              (/usr/local/share/ca-certificates + update-ca-certificates)\n";

/* load_config loads a.config, printing every problem on failure. */
static struct cfg *load_config(const struct args *a)
{
    struct cfg_problems problems = {0};
    struct cfg *cfg = cfg_load_file(a->config, data_dir_override(a->data_dir), &problems);
    if (cfg == NULL) {
        print_problems(a->config, &problems);
        fprintf(stderr, "doorman: config %s is invalid (%zu problem%s)\n", a->config,
                problems.num_items, problems.num_items == 1 ? "" : "s");
        cfg_problems_cleanup(&problems);
    }
    return cfg;
}

/* resolve_data_dir picks the data directory for commands that take
 * --data-dir or --config: the flag, DOORMAN_DATA_DIR, the config's, or the
 * default. Returns 0, or -1 after printing why. */
static int resolve_data_dir(const struct args *a, const char *cmd, char *dir, size_t cap)
{
    const char *override = data_dir_override(a->data_dir);
    if (a->config != NULL) {
        struct cfg *cfg = load_config(a);
        if (cfg == NULL) {
            return -1;
        }
        snprintf(dir, cap, "%s", cfg->data_dir);
        cfg_unref(cfg);
    } else if (override != NULL) {
        snprintf(dir, cap, "%s", override);
    } else if (cfg_default_data_dir(dir, cap) != 0) {
        fprintf(stderr, "doorman %s: cannot determine the data directory; use --data-dir\n", cmd);
        return -1;
    }
    return 0;
}

/* serve_quick runs one site from reverse-proxy flags (or the DOORMAN_*
 * variables that stand for them). */
static int serve_quick(struct args *a)
{
    struct cfg_quick q = {.from = a->from,
                          .to = a->to,
                          .num_to = a->num_to,
                          .https_port = a->https_port,
                          .http_port = a->http_port,
                          .data_dir = data_dir_override(a->data_dir),
                          .bind = a->bind,
                          .ca = a->ca,
                          .ca_root = a->ca_root,
                          .email = a->email,
                          .on_demand = a->on_demand,
                          .ask = a->ask,
                          .lb_policy = a->lb_policy,
                          .health_path = a->health_path,
                          .allow = a->allow,
                          .num_allow = a->num_allow};
    struct cfg_problems problems = {0};
    struct cfg *cfg = cfg_from_quick(&q, &problems);
    if (cfg == NULL) {
        print_problems(NULL, &problems);
        cfg_problems_cleanup(&problems);
        return 1;
    }
    return serve(cfg, NULL, a->data_dir);
}

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* run_from_env serves the one site that DOORMAN_FROM, DOORMAN_TO (several
 * backends separated by commas) and the other DOORMAN_* variables describe,
 * exactly as `doorman reverse-proxy` would with the matching flags: the
 * container and systemd way to run without a config file. */
static int run_from_env(const struct args *flags)
{
    struct args a = *flags;
    a.from = env_nonempty("DOORMAN_FROM");
    a.ca = env_nonempty("DOORMAN_CA");
    a.ca_root = env_nonempty("DOORMAN_CA_ROOT");
    a.email = env_nonempty("DOORMAN_EMAIL");
    a.bind = env_nonempty("DOORMAN_BIND");
    a.https_port = a.http_port = -1;
    const char *v;
    if ((v = env_nonempty("DOORMAN_HTTPS_PORT")) != NULL &&
        parse_port("DOORMAN_HTTPS_PORT", v, &a.https_port) != 0) {
        return 2;
    }
    if ((v = env_nonempty("DOORMAN_HTTP_PORT")) != NULL &&
        parse_port("DOORMAN_HTTP_PORT", v, &a.http_port) != 0) {
        return 2;
    }
    char *to = strdup(env_nonempty("DOORMAN_TO"));
    if (to == NULL) {
        fprintf(stderr, "doorman: out of memory\n");
        return 1;
    }
    a.num_to = 0;
    char *save = NULL;
    for (char *t = strtok_r(to, ", ", &save); t != NULL; t = strtok_r(NULL, ", ", &save)) {
        if (a.num_to == sizeof(a.to) / sizeof(a.to[0])) {
            fprintf(stderr, "doorman run: DOORMAN_TO: too many backends\n");
            free(to);
            return 2;
        }
        a.to[a.num_to++] = t;
    }
    if (a.num_to == 0) {
        fprintf(stderr, "doorman run: DOORMAN_TO names no backend\n");
        free(to);
        return 2;
    }
    int rc = serve_quick(&a);
    free(to);
    return rc;
}

static int cmd_run(int argc, char **argv)
{
    static const int allowed[] = {OPT_CONFIG, OPT_DATA_DIR};
    struct args a;
    if (parse_args(argc, argv, "run", allowed, 2, &a) != 0) {
        return 2;
    }
    if (a.help) {
        fputs(run_help, stdout);
        return 0;
    }
    if (a.config == NULL && env_nonempty("DOORMAN_FROM") != NULL &&
        env_nonempty("DOORMAN_TO") != NULL) {
        return run_from_env(&a);
    }
    if (a.config == NULL) {
        fprintf(stderr, "doorman run: --config FILE is required (or set DOORMAN_FROM and "
                        "DOORMAN_TO for one site)\n");
        return 2;
    }
    struct cfg *cfg = load_config(&a);
    if (cfg == NULL) {
        return 1;
    }
    return serve(cfg, a.config, a.data_dir);
}

static int cmd_reverse_proxy(int argc, char **argv)
{
    static const int allowed[] = {OPT_FROM,      OPT_TO,         OPT_HTTPS_PORT, OPT_HTTP_PORT,
                                  OPT_BIND,      OPT_DATA_DIR,   OPT_CA,         OPT_CA_ROOT,
                                  OPT_EMAIL,     OPT_ON_DEMAND,  OPT_ASK,        OPT_ALLOW,
                                  OPT_LB_POLICY, OPT_HEALTH_PATH};
    struct args a;
    if (parse_args(argc, argv, "reverse-proxy", allowed, sizeof(allowed) / sizeof(allowed[0]),
                   &a) != 0) {
        return 2;
    }
    if (a.help) {
        fputs(rp_help, stdout);
        return 0;
    }
    if (!a.on_demand && (a.ask != NULL || a.num_allow > 0)) {
        fprintf(stderr, "doorman reverse-proxy: --ask and --allow go with --on-demand\n");
        return 2;
    }
    if ((a.from == NULL && !a.on_demand) || a.num_to == 0) {
        fprintf(stderr, "doorman reverse-proxy: --from NAME (or --on-demand) and --to ADDR are "
                        "required\n");
        return 2;
    }
    return serve_quick(&a);
}

static int cmd_validate(int argc, char **argv)
{
    static const int allowed[] = {OPT_CONFIG, OPT_DATA_DIR};
    struct args a;
    if (parse_args(argc, argv, "validate", allowed, 2, &a) != 0) {
        return 2;
    }
    if (a.help) {
        fputs(validate_help, stdout);
        return 0;
    }
    if (a.config == NULL) {
        fprintf(stderr, "doorman validate: --config FILE is required\n");
        return 2;
    }
    struct cfg *cfg = load_config(&a);
    if (cfg == NULL) {
        return 1;
    }
    fprintf(stderr, "config %s is valid: %zu site%s\n", a.config, cfg->num_sites,
            cfg->num_sites == 1 ? "" : "s");
    cfg_unref(cfg);
    return 0;
}

static int install_root(const char *root_path)
{
    const char *dir = "/usr/local/share/ca-certificates";
    char dst[PATH_MAX];
    snprintf(dst, sizeof(dst), "%s/doorman-local-ca.crt", dir);
    char *pem = NULL;
    size_t len = 0;
    struct dm_err err = {0};
    if (dm_file_read(root_path, 1 << 20, &pem, &len, &err) != 0 ||
        dm_mkdir_p(dir, 0755, &err) != 0 || dm_file_write_atomic(dst, pem, len, 0644, &err) != 0) {
        fprintf(stderr, "doorman trust --install: %s\n", err.msg);
        free(pem);
        return 1;
    }
    free(pem);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1); /* stdout must carry only the path */
        }
        execlp("update-ca-certificates", "update-ca-certificates", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "doorman trust --install: update-ca-certificates failed (package "
                        "ca-certificates; run as root)\n");
        return 1;
    }
    fprintf(stderr, "installed %s into the system trust store\n", dst);
    return 0;
}

static int cmd_trust(int argc, char **argv)
{
    static const int allowed[] = {OPT_DATA_DIR, OPT_CONFIG, OPT_INSTALL};
    struct args a;
    if (parse_args(argc, argv, "trust", allowed, 3, &a) != 0) {
        return 2;
    }
    if (a.help) {
        fputs(trust_help, stdout);
        return 0;
    }
    char dir[PATH_MAX];
    if (resolve_data_dir(&a, "trust", dir, sizeof(dir)) != 0) {
        return 1;
    }
    struct dm_err err = {0};
    if (dm_mkdir_p(dir, 0700, &err) != 0) {
        fprintf(stderr, "doorman trust: %s\n", err.msg);
        return 1;
    }
    struct acme_local_ca *ca = acme_local_ca_open(dir, &err);
    if (ca == NULL) {
        fprintf(stderr, "doorman trust: local CA: %s\n", err.msg);
        return 1;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s", acme_local_ca_root_path(ca));
    acme_local_ca_free(ca);
    if (path[0] != '/') {
        char cwd[PATH_MAX], abs[PATH_MAX];
        if (getcwd(cwd, sizeof(cwd)) != NULL &&
            snprintf(abs, sizeof(abs), "%s/%s", cwd, path) < (int)sizeof(abs)) {
            snprintf(path, sizeof(path), "%s", abs);
        }
    }
    printf("%s\n", path);
    fflush(stdout);
    return a.install ? install_root(path) : 0;
}

static const char certs_help[] =
    "Usage: doorman certificates [--data-dir DIR | --config FILE]\n"
    "\n"
    "Lists the certificates the data directory holds: names, issuer, not-after,\n"
    "next renewal and last error. Read-only; works while doorman runs.\n";

static int cmd_certificates(int argc, char **argv)
{
    static const int allowed[] = {OPT_DATA_DIR, OPT_CONFIG};
    struct args a;
    if (parse_args(argc, argv, "certificates", allowed, 2, &a) != 0) {
        return 2;
    }
    if (a.help) {
        fputs(certs_help, stdout);
        return 0;
    }
    char dir[PATH_MAX];
    if (resolve_data_dir(&a, "certificates", dir, sizeof(dir)) != 0) {
        return 1;
    }
    struct dm_err err = {0};
    if (acme_certificates_report(dir, stdout, &err) != 0) {
        fprintf(stderr, "doorman certificates: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static const char revoke_help[] =
    "Usage: doorman revoke --config FILE --name NAME [--reason N] [--with-cert-key]\n"
    "                      [--data-dir DIR]\n"
    "\n"
    "Asks the ACME CA of the site that serves NAME to revoke the certificate stored\n"
    "for that site (RFC 8555 section 7.6), signed with the site's account key, or\n"
    "with --with-cert-key by the certificate's own stored key (no account needed,\n"
    "e.g. after losing the account key). N is a\n"
    "CRL reason code (RFC 5280): 0 unspecified, 1 keyCompromise, 4 superseded,\n"
    "5 cessationOfOperation, ... (0-10 except 7). Without --reason none is sent.\n"
    "The running proxy keeps serving the revoked certificate until it renews.\n";

static int cmd_revoke(int argc, char **argv)
{
    enum { R_CONFIG = 1, R_DATA_DIR, R_NAME, R_REASON, R_CERT_KEY, R_HELP };
    static const struct option opts[] = {
        {"config", required_argument, NULL, R_CONFIG},
        {"data-dir", required_argument, NULL, R_DATA_DIR},
        {"name", required_argument, NULL, R_NAME},
        {"reason", required_argument, NULL, R_REASON},
        {"with-cert-key", no_argument, NULL, R_CERT_KEY},
        {"help", no_argument, NULL, R_HELP},
        {NULL, 0, NULL, 0},
    };
    struct args a;
    memset(&a, 0, sizeof(a));
    const char *name = NULL;
    int reason = ACME_REVOKE_NO_REASON;
    bool is_cert_key = false;
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        long v = 0;
        switch (ch) {
        case R_CONFIG:
            a.config = optarg;
            break;
        case R_DATA_DIR:
            a.data_dir = optarg;
            break;
        case R_NAME:
            name = optarg;
            break;
        case R_REASON:
            errno = 0;
            v = strtol(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' || v < 0 || v > 10 || v == 7) {
                fprintf(stderr,
                        "doorman revoke: --reason: \"%s\" is not a CRL reason code "
                        "(0-10 except 7)\n",
                        optarg);
                return 2;
            }
            reason = (int)v;
            break;
        case R_CERT_KEY:
            is_cert_key = true;
            break;
        case R_HELP:
            fputs(revoke_help, stdout);
            return 0;
        default:
            fprintf(stderr,
                    "doorman revoke: unknown or incomplete option %s (see doorman revoke "
                    "--help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc || a.config == NULL || name == NULL) {
        fprintf(stderr, "doorman revoke: --config FILE and --name NAME are required\n");
        return 2;
    }
    struct cfg *cfg = load_config(&a);
    if (cfg == NULL) {
        return 1;
    }
    dm_log_setup((enum dm_log_level)cfg->log_level, cfg->log_format == CFG_LOG_JSON, 2);
    struct dm_err err = {0};
    char serial[128] = "";
    int rc = acme_revoke_run(cfg, name, reason, is_cert_key, serial, sizeof(serial), &err);
    cfg_unref(cfg);
    if (rc != 0) {
        fprintf(stderr, "doorman revoke: %s: %s\n", name, err.msg);
        return 1;
    }
    printf("revoked %s serial %s\n", name, serial);
    return 0;
}

static const char account_help[] =
    "Usage: doorman account rollover --config FILE --site NAME [--data-dir DIR]\n"
    "       doorman account deactivate --config FILE --site NAME [--data-dir DIR]\n"
    "\n"
    "Acts on the ACME account that the site serving NAME orders with (its CA,\n"
    "email and EAB from the config). Stop doorman first, or restart it afterwards:\n"
    "a running doorman keeps using the account as it was.\n"
    "\n"
    "  rollover    replace the account key with a new one of the same type\n"
    "              (RFC 8555 section 7.3.5); the stored key changes only once\n"
    "              the CA accepted the new one\n"
    "  deactivate  deactivate the account for good (RFC 8555 section 7.3.6); its\n"
    "              files are kept as account.key.deactivated and\n"
    "              account.json.deactivated, and the next run registers a new\n"
    "              account with a new key\n";

/* cmd_account runs `doorman account rollover|deactivate`. */
static int cmd_account(int argc, char **argv)
{
    enum { A_CONFIG = 1, A_DATA_DIR, A_SITE, A_HELP };
    static const struct option opts[] = {
        {"config", required_argument, NULL, A_CONFIG},
        {"data-dir", required_argument, NULL, A_DATA_DIR},
        {"site", required_argument, NULL, A_SITE},
        {"help", no_argument, NULL, A_HELP},
        {NULL, 0, NULL, 0},
    };
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0)) {
        fputs(account_help, stdout);
        return 0;
    }
    if (argc < 2 || (strcmp(argv[1], "rollover") != 0 && strcmp(argv[1], "deactivate") != 0)) {
        fprintf(stderr, "doorman account: expected rollover or deactivate (see doorman account "
                        "--help)\n");
        return 2;
    }
    const char *sub = argv[1];
    struct args a;
    memset(&a, 0, sizeof(a));
    const char *site = NULL;
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
        switch (ch) {
        case A_CONFIG:
            a.config = optarg;
            break;
        case A_DATA_DIR:
            a.data_dir = optarg;
            break;
        case A_SITE:
            site = optarg;
            break;
        case A_HELP:
            fputs(account_help, stdout);
            return 0;
        default:
            fprintf(stderr,
                    "doorman account %s: unknown or incomplete option %s (see doorman account "
                    "--help)\n",
                    sub, argv[optind]);
            return 2;
        }
    }
    if (optind < argc - 1) {
        fprintf(stderr, "doorman account %s: unexpected argument \"%s\"\n", sub, argv[optind + 1]);
        return 2;
    }
    if (a.config == NULL || site == NULL) {
        fprintf(stderr, "doorman account %s: --config FILE and --site NAME are required\n", sub);
        return 2;
    }
    struct cfg *cfg = load_config(&a);
    if (cfg == NULL) {
        return 1;
    }
    dm_log_setup((enum dm_log_level)cfg->log_level, cfg->log_format == CFG_LOG_JSON, 2);
    struct dm_err err = {0};
    char kid[1024] = "";
    bool is_rollover = strcmp(sub, "rollover") == 0;
    int rc = is_rollover ? acme_account_rollover_run(cfg, site, kid, sizeof(kid), &err)
                         : acme_account_deactivate_run(cfg, site, kid, sizeof(kid), &err);
    cfg_unref(cfg);
    if (rc != 0) {
        fprintf(stderr, "doorman account %s: %s: %s\n", sub, site, err.msg);
        return 1;
    }
    if (is_rollover) {
        printf("rolled over the key of account %s\n", kid);
    } else {
        printf("deactivated account %s; the next run registers a new account\n", kid);
    }
    return 0;
}

static int cmd_version(void)
{
    printf("doorman %s (BoringSSL API %d, libevent %s, nghttp2 %s, jansson %s)\n", DM_VERSION,
           BORINGSSL_API_VERSION, event_get_version(), nghttp2_version(0)->version_str,
           JANSSON_VERSION);
    return 0;
}

static const char main_help[] =
    "doorman: a TLS-terminating reverse proxy with automatic certificates\n"
    "\n"
    "Usage: doorman <command> [options]\n"
    "\n"
    "Commands:\n"
    "  run            run a JSON config (doorman run --config doorman.json)\n"
    "  reverse-proxy  one site in front of a backend, no config file\n"
    "  validate       check a config file and report every problem\n"
    "  trust          print the path of the local CA root certificate\n"
    "  certificates   list the certificates in the data directory\n"
    "  revoke         revoke a site's stored ACME certificate\n"
    "  account        roll over or deactivate a site's ACME account\n"
    "  reload         load a new config into the running doorman (admin socket)\n"
    "  health         check that the running doorman answers (admin socket)\n"
    "  upgrade        replace the running doorman by the installed binary, no downtime\n"
    "  version        print the version\n"
    "\n"
    "Run 'doorman <command> --help' for a command's options.\n";

int dm_cli_main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", exe_path, sizeof(exe_path) - 1);
    exe_path[n > 0 ? n : 0] = '\0';
    saved_argv = argv;
    if (argc < 2) {
        fputs(main_help, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        fputs(main_help, stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        return cmd_version();
    }
    if (strcmp(cmd, "run") == 0) {
        return cmd_run(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "reverse-proxy") == 0) {
        return cmd_reverse_proxy(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "validate") == 0) {
        return cmd_validate(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "trust") == 0) {
        return cmd_trust(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "certificates") == 0) {
        return cmd_certificates(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "revoke") == 0) {
        return cmd_revoke(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "account") == 0) {
        return cmd_account(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "reload") == 0) {
        return dm_cli_reload(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "health") == 0) {
        return dm_cli_health(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "upgrade") == 0) {
        return dm_cli_upgrade(argc - 1, argv + 1);
    }
    fprintf(stderr, "doorman: unknown command \"%s\"\n\n%s", cmd, main_help);
    return 2;
}
