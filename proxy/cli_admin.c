/* The commands that talk to a running doorman through its admin socket:
 * `doorman reload` (POST /load with a file's content, or POST /reload) and
 * `doorman health` (GET /healthz, for container health checks). The socket
 * is <data_dir>/admin.sock, so the data directory is all they need. */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config/config.h"
#include "proxy/admin.h"
#include "proxy/cli.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"

static const char reload_help[] =
    "Usage: doorman reload [--config FILE] [--data-dir DIR]\n"
    "\n"
    "Asks the doorman running on DIR to load a new config through its admin socket\n"
    "DIR/admin.sock. With --config, FILE's content is sent (POST /load); without,\n"
    "the running doorman re-reads the file it was started with (POST /reload, as\n"
    "SIGHUP does). The new config is validated first: on any problem it is refused,\n"
    "every problem is printed as \"path: message\", the old config keeps running\n"
    "and the exit code is 1. Connections in flight finish on the config they\n"
    "started with.\n"
    "\n"
    "  --config FILE    the config to load\n"
    "  --data-dir DIR   the data directory of the running doorman (also\n"
    "                   DOORMAN_DATA_DIR; default: FILE's data_dir, else the default)\n";

static const char health_help[] =
    "Usage: doorman health [--data-dir DIR]\n"
    "\n"
    "Exit 0 and print \"ok\" if the doorman running on DIR answers GET /healthz on\n"
    "its admin socket, else exit 1 (for Docker HEALTHCHECK and monitoring).\n";

static const char upgrade_help[] =
    "Usage: doorman upgrade [--data-dir DIR]\n"
    "\n"
    "Replaces the doorman running on DIR by the executable now at its path (install\n"
    "the new binary first) without dropping connections (POST /upgrade, same as\n"
    "SIGUSR2): the new process inherits the listening sockets and the admin socket,\n"
    "and once it serves, the old one stops accepting, finishes its requests and\n"
    "exits. If the new process does not start, the old one keeps serving (see its\n"
    "log). Exit 0 once the upgrade started.\n";

struct admin_args {
    const char *config;
    const char *data_dir;
    bool help;
};

static int parse(int argc, char **argv, const char *cmd, bool allow_config, struct admin_args *a)
{
    enum { O_CONFIG = 1, O_DATA_DIR, O_HELP };
    static const struct option opts[] = {
        {"config", required_argument, NULL, O_CONFIG},
        {"data-dir", required_argument, NULL, O_DATA_DIR},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof(*a));
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == O_CONFIG && allow_config) {
            a->config = optarg;
        } else if (ch == O_DATA_DIR) {
            a->data_dir = optarg;
        } else if (ch == O_HELP) {
            a->help = true;
        } else {
            fprintf(stderr, "doorman %s: unknown or incomplete option %s (see doorman %s --help)\n",
                    cmd, argv[optind - 1], cmd);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "doorman %s: unexpected argument \"%s\"\n", cmd, argv[optind]);
        return -1;
    }
    return 0;
}

/* sock_path_for finds the admin socket: --data-dir, DOORMAN_DATA_DIR, the
 * config's data_dir, or the default data directory. */
static int sock_path_for(const struct admin_args *a, const char *cmd, char *out, size_t cap)
{
    char dir[PATH_MAX];
    const char *env = getenv("DOORMAN_DATA_DIR");
    if (a->data_dir != NULL) {
        snprintf(dir, sizeof(dir), "%s", a->data_dir);
    } else if (env != NULL && env[0] != '\0') {
        snprintf(dir, sizeof(dir), "%s", env);
    } else if (a->config != NULL) {
        struct cfg_problems problems = {0};
        struct cfg *cfg = cfg_load_file(a->config, NULL, &problems);
        if (cfg == NULL) {
            for (size_t i = 0; i < problems.num_items; i++) {
                fprintf(stderr, "%s: %s\n", a->config, problems.items[i]);
            }
            fprintf(stderr, "doorman %s: config %s is invalid; nothing was sent\n", cmd, a->config);
            cfg_problems_cleanup(&problems);
            return -1;
        }
        snprintf(dir, sizeof(dir), "%s", cfg->data_dir);
        cfg_unref(cfg);
    } else if (cfg_default_data_dir(dir, sizeof(dir)) != 0) {
        fprintf(stderr, "doorman %s: cannot determine the data directory; use --data-dir\n", cmd);
        return -1;
    }
    if (dm_admin_sock_path(out, cap, dir) != 0) {
        fprintf(stderr, "doorman %s: %s/%s is too long for a unix socket\n", cmd, dir,
                DM_ADMIN_SOCK_NAME);
        return -1;
    }
    return 0;
}

/* print_answer prints the admin API's JSON answer: the generation on
 * success, else the error and every problem. Returns the exit code. */
static int print_answer(int status, const char *body)
{
    json_error_t jerr;
    json_t *j = json_loads(body, 0, &jerr);
    if (status == 200) {
        json_t *gen = json_object_get(j, "generation");
        printf("reloaded: generation %lld\n", gen != NULL ? (long long)json_integer_value(gen) : 0);
        json_decref(j);
        return 0;
    }
    const char *error = json_string_value(json_object_get(j, "error"));
    json_t *problems = json_object_get(j, "problems");
    size_t i;
    json_t *p;
    json_array_foreach(problems, i, p)
    {
        fprintf(stderr, "%s\n", json_string_value(p) != NULL ? json_string_value(p) : "?");
    }
    fprintf(stderr, "doorman reload: %d: %s\n", status, error != NULL ? error : body);
    json_decref(j);
    return 1;
}

int dm_cli_reload(int argc, char **argv)
{
    struct admin_args a;
    if (parse(argc, argv, "reload", true, &a) != 0) {
        return 2;
    }
    if (a.help) {
        fputs(reload_help, stdout);
        return 0;
    }
    char sock[PATH_MAX];
    if (sock_path_for(&a, "reload", sock, sizeof(sock)) != 0) {
        return 1;
    }
    char *body = NULL, *answer = NULL;
    size_t len = 0;
    int status = 0, rc = 1;
    char headers[PATH_MAX + 64] = "";
    struct dm_err err = {0};
    if (a.config != NULL) {
        char abs[PATH_MAX];
        if (dm_file_read(a.config, CFG_MAX_FILE_BYTES, &body, &len, &err) != 0) {
            fprintf(stderr, "doorman reload: %s\n", err.msg);
            return 1;
        }
        /* The server resolves relative tls paths against the file's directory. */
        if (realpath(a.config, abs) != NULL) {
            snprintf(headers, sizeof(headers), "Doorman-Config-Path: %s\r\n", abs);
        }
    }
    if (dm_admin_call(sock, "POST", a.config != NULL ? "/load" : "/reload", headers, body, len,
                      &status, &answer, &err) != 0) {
        fprintf(stderr, "doorman reload: %s\n", err.msg);
    } else {
        rc = print_answer(status, answer);
    }
    free(body);
    free(answer);
    return rc;
}

int dm_cli_health(int argc, char **argv)
{
    struct admin_args a;
    if (parse(argc, argv, "health", false, &a) != 0) {
        return 2;
    }
    if (a.help) {
        fputs(health_help, stdout);
        return 0;
    }
    char sock[PATH_MAX];
    if (sock_path_for(&a, "health", sock, sizeof(sock)) != 0) {
        return 1;
    }
    char *answer = NULL;
    int status = 0;
    struct dm_err err = {0};
    if (dm_admin_call(sock, "GET", "/healthz", NULL, NULL, 0, &status, &answer, &err) != 0) {
        fprintf(stderr, "doorman health: %s\n", err.msg);
        return 1;
    }
    int rc = status == 200 ? 0 : 1;
    if (rc == 0) {
        printf("ok\n");
    } else {
        fprintf(stderr, "doorman health: status %d: %s\n", status, answer);
    }
    free(answer);
    return rc;
}

int dm_cli_upgrade(int argc, char **argv)
{
    struct admin_args a;
    if (parse(argc, argv, "upgrade", false, &a) != 0) {
        return 2;
    }
    if (a.help) {
        fputs(upgrade_help, stdout);
        return 0;
    }
    char sock[PATH_MAX];
    if (sock_path_for(&a, "upgrade", sock, sizeof(sock)) != 0) {
        return 1;
    }
    char *answer = NULL;
    int status = 0;
    struct dm_err err = {0};
    if (dm_admin_call(sock, "POST", "/upgrade", NULL, NULL, 0, &status, &answer, &err) != 0) {
        fprintf(stderr, "doorman upgrade: %s\n", err.msg);
        return 1;
    }
    int rc = status == 202 ? 0 : 1;
    if (rc == 0) {
        printf("upgrade started: the old process exits once the new one serves\n");
    } else {
        fprintf(stderr, "doorman upgrade: %d: %s", status, answer);
    }
    free(answer);
    return rc;
}
