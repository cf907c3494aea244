/* Binary upgrade, the old process's side (spawn the new executable with the
 * sockets, wait for its "ready" byte on a pipe, with a timeout) and the new
 * process's side (report ready). The child between fork and exec only calls
 * async-signal-safe functions: everything it needs is prepared before. */
#include "proxy/upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "proxy/core/err.h"

extern char **environ;

#define UPGRADE_MAX_FDS 64

struct dm_upgrade {
    struct event *ev; /* owned: the ready pipe, with the timeout */
    int ready_fd;     /* read end */
    pid_t pid;
    bool done;
    dm_upgrade_done_cb cb;
    void *arg;
};

static void upgrade_finish(struct dm_upgrade *u, bool is_ready)
{
    if (u->done) {
        return;
    }
    u->done = true;
    event_del(u->ev);
    if (!is_ready && u->pid > 0) {
        kill(u->pid, SIGKILL);
        waitpid(u->pid, NULL, 0);
    }
    u->cb(u->arg, is_ready, u->pid);
}

static void upgrade_on_ready(evutil_socket_t fd, short what, void *arg)
{
    struct dm_upgrade *u = arg;
    if (what & EV_TIMEOUT) {
        upgrade_finish(u, false);
        return;
    }
    char c = 0;
    ssize_t n = read(fd, &c, 1);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        return;
    }
    upgrade_finish(u, n == 1 && c == 'R');
}

/* env_with builds a new environment: environ without our variables, plus
 * extra (NULL-terminated). Returns NULL when out of memory. */
static char **env_with(char *const *extra)
{
    size_t n = 0, k = 0;
    while (environ[n] != NULL) {
        n++;
    }
    size_t num_extra = 0;
    while (extra[num_extra] != NULL) {
        num_extra++;
    }
    char **env = calloc(n + num_extra + 1, sizeof(*env));
    if (env == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (strncmp(environ[i], "DOORMAN_LISTEN_FDS=", 19) != 0 &&
            strncmp(environ[i], "DOORMAN_ADMIN_FD=", 17) != 0 &&
            strncmp(environ[i], "DOORMAN_READY_FD=", 17) != 0) {
            env[k++] = environ[i];
        }
    }
    for (size_t i = 0; i < num_extra; i++) {
        env[k++] = extra[i];
    }
    return env;
}

struct dm_upgrade *dm_upgrade_start(struct event_base *base, const char *exe, char *const *argv,
                                    const int *fds, const unsigned short *ports, int num_fds,
                                    int admin_fd, dm_upgrade_done_cb cb, void *arg,
                                    struct dm_err *err)
{
    if (num_fds > UPGRADE_MAX_FDS) {
        dm_err_set(err, DM_E_LIMIT, "too many listening sockets to hand over");
        return NULL;
    }
    int pipefd[2] = {-1, -1};
    char listen_env[64 + UPGRADE_MAX_FDS * 20], admin_env[48], ready_env[48];
    char **env = NULL;
    struct dm_upgrade *u = calloc(1, sizeof(*u));
    if (u == NULL || pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) != 0) {
        dm_err_set_errno(err, u == NULL ? ENOMEM : errno, "upgrade");
        goto fail;
    }
    size_t used = (size_t)snprintf(listen_env, sizeof(listen_env), "%s=", DM_UPGRADE_ENV_LISTEN);
    for (int i = 0; i < num_fds; i++) {
        used += (size_t)snprintf(listen_env + used, sizeof(listen_env) - used, "%s%d:%u",
                                 i ? "," : "", fds[i], ports[i]);
    }
    snprintf(admin_env, sizeof(admin_env), "%s=%d", DM_UPGRADE_ENV_ADMIN, admin_fd);
    snprintf(ready_env, sizeof(ready_env), "%s=%d", DM_UPGRADE_ENV_READY, pipefd[1]);
    char *extra[4] = {listen_env, ready_env, NULL, NULL};
    if (admin_fd >= 0) {
        extra[2] = admin_env;
    }
    env = env_with(extra);
    u->ev = event_new(base, pipefd[0], EV_READ | EV_PERSIST, upgrade_on_ready, u);
    if (env == NULL || u->ev == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto fail;
    }
    pid_t pid = fork();
    if (pid < 0) {
        dm_err_set_errno(err, errno, "upgrade: fork");
        goto fail;
    }
    if (pid == 0) {
        /* The child: make the inherited descriptors survive exec. */
        for (int i = 0; i < num_fds; i++) {
            fcntl(fds[i], F_SETFD, 0);
        }
        if (admin_fd >= 0) {
            fcntl(admin_fd, F_SETFD, 0);
        }
        fcntl(pipefd[1], F_SETFD, 0);
        execve(exe, argv, env);
        _exit(127);
    }
    close(pipefd[1]);
    free(env);
    u->pid = pid;
    u->ready_fd = pipefd[0];
    u->cb = cb;
    u->arg = arg;
    struct timeval tv = {.tv_sec = DM_UPGRADE_TIMEOUT_MS / 1000};
    event_add(u->ev, &tv);
    return u;
fail:
    free(env);
    if (u != NULL && u->ev != NULL) {
        event_free(u->ev);
    }
    if (pipefd[0] >= 0) {
        close(pipefd[0]);
        close(pipefd[1]);
    }
    free(u);
    return NULL;
}

bool dm_upgrade_is_done(const struct dm_upgrade *u)
{
    return u->done;
}

void dm_upgrade_free(struct dm_upgrade *u)
{
    if (u == NULL) {
        return;
    }
    if (!u->done && u->pid > 0) {
        kill(u->pid, SIGKILL);
        waitpid(u->pid, NULL, 0);
    }
    event_free(u->ev);
    close(u->ready_fd);
    free(u);
}

int dm_upgrade_take_fd(const char *var)
{
    const char *v = getenv(var);
    if (v == NULL) {
        return -1;
    }
    char *end = NULL;
    long fd = strtol(v, &end, 10);
    unsetenv(var);
    if (end == v || *end != '\0' || fd < 3 || fd > 65535 || fcntl((int)fd, F_GETFD) < 0) {
        return -1;
    }
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    return (int)fd;
}

void dm_upgrade_notify_ready(void)
{
    int fd = dm_upgrade_take_fd(DM_UPGRADE_ENV_READY);
    if (fd < 0) {
        return;
    }
    ssize_t n = write(fd, "R", 1);
    (void)n;
    close(fd);
}
