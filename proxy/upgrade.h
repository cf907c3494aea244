/* Zero-downtime upgrade of the binary: the running process starts the new
 * executable with its listening sockets (and the admin socket) inherited,
 * waits until the new process reports it serves, then drains and exits. Both
 * processes accept from the same sockets in between, so no connection waits
 * on a socket nobody accepts from. Protocol and limits: docs/operations.md. */
#ifndef DM_PROXY_UPGRADE_H
#define DM_PROXY_UPGRADE_H

#include <stdbool.h>
#include <sys/types.h>

struct dm_err;
struct event_base;

/* Environment of the new process: listening sockets as "fd:port,fd:port",
 * the admin unix socket's fd, and the pipe to report readiness on. */
#define DM_UPGRADE_ENV_LISTEN "DOORMAN_LISTEN_FDS"
#define DM_UPGRADE_ENV_ADMIN  "DOORMAN_ADMIN_FD"
#define DM_UPGRADE_ENV_READY  "DOORMAN_READY_FD"
/* How long the new process may take to start serving. */
#define DM_UPGRADE_TIMEOUT_MS 30000

/* dm_upgrade_done_cb runs once: is_ready when the new process (pid) serves;
 * otherwise it failed, exited or timed out (and was killed and reaped). */
typedef void (*dm_upgrade_done_cb)(void *arg, bool is_ready, pid_t pid);

struct dm_upgrade;

/* dm_upgrade_start forks and executes exe with argv (NULL-terminated; both
 * borrowed, copied before fork), passing the num_fds listening sockets fds
 * (with their ports) and admin_fd (-1: none). cb fires on base (borrowed),
 * never from inside this call. Returns the upgrade in progress, or NULL with
 * err. */
struct dm_upgrade *dm_upgrade_start(struct event_base *base, const char *exe, char *const *argv,
                                    const int *fds, const unsigned short *ports, int num_fds,
                                    int admin_fd, dm_upgrade_done_cb cb, void *arg,
                                    struct dm_err *err);

/* dm_upgrade_is_done tells whether u's callback ran. */
bool dm_upgrade_is_done(const struct dm_upgrade *u);

/* dm_upgrade_free releases an upgrade whose callback ran (or cancels one in
 * progress, killing the child). NULL does nothing. */
void dm_upgrade_free(struct dm_upgrade *u);

/* dm_upgrade_notify_ready tells the process that started this one that it
 * serves now (no-op when not started by an upgrade). */
void dm_upgrade_notify_ready(void);

/* dm_upgrade_take_fd returns the inherited fd named by the environment
 * variable var and removes the variable, or -1 if there is none. */
int dm_upgrade_take_fd(const char *var);

#endif
