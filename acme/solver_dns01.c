/* dns-01 through a hook program (RFC 8555 §8.4). Two layers: a hook child
 * (fork + execve with argv, no shell, a minimal environment, stdout and
 * stderr into one watched pipe, waitpid(pid, WNOHANG) on that pid only, a
 * kill timeout) and the solver records (one per presented challenge: hook,
 * then the propagation wait, then ready). Invariant: a record's ready
 * callback runs at most once and never after cleanup; every child is reaped
 * from the loop, even after its owner is gone. No SIGCHLD handler is
 * installed, so other code's waitpid calls are unaffected. See
 * docs/dns-hook.md. */
#include "acme/solver_dns01.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "acme/jws.h"
#include "acme/order.h"
#include "proxy/core/err.h"
#include "proxy/core/log.h"

/* "_acme-challenge." + a 253-byte name + "." + NUL. */
#define DNS01_NAME_MAX 272

/* Reaping: waitpid polls back off from 50 ms to 1 s while the hook runs (the
 * pipe's EOF is the fast path), and start at 5 ms once the pipe closed or
 * the hook was killed. */
#define DNS01_REAP_RUNNING_MS 50
#define DNS01_REAP_EXITING_MS 5
#define DNS01_REAP_MAX_MS     1000

/* Reads per readable event: a hook that writes without pause cannot hold
 * the loop. */
#define DNS01_READS_PER_EVENT 16

/* ---- hook children ---- */

/* hook_done_cb reports a finished hook: err NULL when it exited 0. */
typedef void (*hook_done_cb)(void *arg, const struct dm_err *err);

struct hook_child {
    struct hook_child *next; /* in hook_children */
    pid_t pid;               /* also its process group */
    int fd;                  /* owned: read end of stdout+stderr, -1 once closed */
    struct event *read_ev;   /* owned */
    struct event *reap_ev;   /* owned: waitpid polls */
    struct event *kill_ev;   /* owned: ACME_DNS01_HOOK_TIMEOUT_MS */
    uint32_t reap_delay_ms;
    bool is_timed_out;
    const char *action; /* static: "present" or "cleanup" */
    char name[DNS01_NAME_MAX];
    char out[ACME_DNS01_HOOK_OUTPUT_MAX]; /* first bytes of the output */
    size_t out_len;
    hook_done_cb done; /* NULL once detached */
    void *done_arg;
};

/* Every running child, owned here rather than by a solver so that children
 * outliving their solver (cleanup hooks, killed presents) are still reaped.
 * Control thread only. */
static struct hook_child *hook_children;

static void hook_on_read(evutil_socket_t fd, short what, void *arg);
static void hook_on_reap(evutil_socket_t fd, short what, void *arg);
static void hook_on_kill(evutil_socket_t fd, short what, void *arg);

static void hook_free(struct hook_child *c)
{
    if (c->read_ev != NULL) {
        event_free(c->read_ev);
    }
    if (c->reap_ev != NULL) {
        event_free(c->reap_ev);
    }
    if (c->kill_ev != NULL) {
        event_free(c->kill_ev);
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    free(c);
}

static void hook_close_pipe(struct hook_child *c)
{
    if (c->fd >= 0) {
        event_del(c->read_ev);
        close(c->fd);
        c->fd = -1;
    }
}

static void hook_kill(struct hook_child *c)
{
    /* The group too: a hook's own children (curl, dig) go with it. */
    kill(-c->pid, SIGKILL);
    kill(c->pid, SIGKILL);
}

/* hook_read reads what the pipe holds; returns false at EOF or error. */
static bool hook_read(struct hook_child *c)
{
    for (int i = 0; i < DNS01_READS_PER_EVENT; i++) {
        char buf[1024];
        ssize_t n = read(c->fd, buf, sizeof(buf));
        if (n > 0) {
            size_t room = sizeof(c->out) - c->out_len;
            size_t take = (size_t)n < room ? (size_t)n : room;
            memcpy(c->out + c->out_len, buf, take);
            c->out_len += take;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
    return true;
}

static void hook_arm_reap(struct hook_child *c)
{
    struct timeval tv = {.tv_sec = c->reap_delay_ms / 1000,
                         .tv_usec = (c->reap_delay_ms % 1000) * 1000};
    evtimer_add(c->reap_ev, &tv);
    c->reap_delay_ms =
        c->reap_delay_ms * 2 < DNS01_REAP_MAX_MS ? c->reap_delay_ms * 2 : DNS01_REAP_MAX_MS;
}

/* hook_describe writes the hook's output into out as one line. */
static void hook_describe(const struct hook_child *c, char *out, size_t cap)
{
    size_t n = 0;
    bool is_space = true; /* drops leading and repeated white space */
    for (size_t i = 0; i < c->out_len && n + 1 < cap; i++) {
        unsigned char ch = (unsigned char)c->out[i];
        if (ch < 0x20 || ch == 0x7f) {
            ch = ' ';
        }
        if (ch == ' ' && is_space) {
            continue;
        }
        is_space = ch == ' ';
        out[n++] = (char)ch;
    }
    while (n > 0 && out[n - 1] == ' ') {
        n--;
    }
    out[n] = '\0';
}

/* hook_finish unlinks and frees c, then reports to its owner (last: the
 * owner may start or cancel other hooks from its callback). */
static void hook_finish(struct hook_child *c, const struct dm_err *err)
{
    for (struct hook_child **pp = &hook_children; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    hook_done_cb done = c->done;
    void *arg = c->done_arg;
    hook_free(c);
    if (done != NULL) {
        done(arg, err);
    }
}

/* hook_try_reap collects the exit status if the child has exited, and
 * finishes c (which frees it); else polls again later. */
static void hook_try_reap(struct hook_child *c)
{
    int status = 0;
    pid_t r;
    do {
        r = waitpid(c->pid, &status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0) {
        hook_arm_reap(c);
        return;
    }
    int wait_errno = errno;
    if (c->fd >= 0) {
        /* Exited, but a background process of its own may hold the pipe:
         * take what is there now instead of waiting for EOF. */
        hook_read(c);
        hook_close_pipe(c);
    }
    char output[DM_ERR_MSG_MAX];
    hook_describe(c, output, sizeof(output));
    const char *sep = output[0] != '\0' ? ": " : "";
    struct dm_err err = {0};
    if (r < 0) {
        /* ECHILD: someone else reaped it (SIGCHLD set to SIG_IGN?). */
        dm_err_set(&err, DM_E_IO, "dns hook %s %s: exit status lost: %s", c->action, c->name,
                   strerror(wait_errno));
    } else if (c->is_timed_out) {
        dm_err_set(&err, DM_E_TIMEOUT, "dns hook %s %s: killed after %d s%s%s", c->action, c->name,
                   ACME_DNS01_HOOK_TIMEOUT_MS / 1000, sep, output);
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        hook_finish(c, NULL);
        return;
    } else if (WIFEXITED(status)) {
        dm_err_set(&err, DM_E_ACME, "dns hook %s %s: exit status %d%s%s", c->action, c->name,
                   WEXITSTATUS(status), sep, output);
    } else {
        dm_err_set(&err, DM_E_ACME, "dns hook %s %s: killed by signal %d%s%s", c->action, c->name,
                   WIFSIGNALED(status) ? WTERMSIG(status) : 0, sep, output);
    }
    hook_finish(c, &err);
}

static void hook_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct hook_child *c = arg;
    if (!hook_read(c)) {
        hook_close_pipe(c);
        c->reap_delay_ms = DNS01_REAP_EXITING_MS;
        hook_try_reap(c); /* may free c */
    }
}

static void hook_on_reap(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    hook_try_reap(arg); /* may free it */
}

static void hook_on_kill(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct hook_child *c = arg;
    c->is_timed_out = true;
    hook_kill(c);
    c->reap_delay_ms = DNS01_REAP_EXITING_MS;
    event_del(c->reap_ev);
    hook_arm_reap(c);
}

/* hook_exec_child runs in the forked child: only async-signal-safe calls
 * until execve. Never returns. */
static void hook_exec_child(const char *path, char *const argv[], int in_fd, int out_fd)
{
    /* No credentials or sockets of doorman's reach the hook: a fixed
     * environment (a hook reads its API token from its own file) and no
     * descriptors but 0-2. */
    static char *const envp[] = {
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};
    sigset_t none;
    setpgid(0, 0);
    /* Ignored signals stay ignored across execve: doorman ignores SIGPIPE,
     * which would break the hook's own pipelines. */
    signal(SIGPIPE, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0) {
        _exit(126);
    }
    if (close_range(3, ~0u, 0) != 0) {
        for (int fd = 3; fd < 65536; fd++) {
            close(fd);
        }
    }
    execve(path, argv, envp);
    const char *why = errno == EACCES    ? "permission denied (is it executable?)\n"
                      : errno == ENOENT  ? "not found (or its #! interpreter is missing)\n"
                      : errno == ENOEXEC ? "not an executable (a script needs a #! line)\n"
                                         : "execve failed\n";
    static const char prefix[] = "doorman: cannot run the dns hook: ";
    ssize_t rc = write(2, prefix, sizeof(prefix) - 1);
    rc = write(2, why, strlen(why));
    (void)rc;
    _exit(127);
}

/* hook_start runs `hook action name value` with done(arg, err) called once
 * from the loop when it has exited (never when detached first). Returns the
 * child, or NULL with err. */
static struct hook_child *hook_start(struct event_base *base, const char *hook, const char *action,
                                     const char *name, const char *value, hook_done_cb done,
                                     void *arg, struct dm_err *err)
{
    int fds[2] = {-1, -1};
    int null_fd = -1;
    struct hook_child *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    c->fd = -1;
    c->action = action;
    c->done = done;
    c->done_arg = arg;
    c->reap_delay_ms = DNS01_REAP_RUNNING_MS;
    snprintf(c->name, sizeof(c->name), "%s", name);
    if (pipe2(fds, O_CLOEXEC) != 0 || fcntl(fds[0], F_SETFL, O_NONBLOCK) != 0 ||
        (null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
        dm_err_set_errno(err, errno, "dns hook %s %s: pipe", action, name);
        goto fail;
    }
    c->fd = fds[0];
    fds[0] = -1;
    c->read_ev = event_new(base, c->fd, EV_READ | EV_PERSIST, hook_on_read, c);
    c->reap_ev = evtimer_new(base, hook_on_reap, c);
    c->kill_ev = evtimer_new(base, hook_on_kill, c);
    if (c->read_ev == NULL || c->reap_ev == NULL || c->kill_ev == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        goto fail;
    }
    char *argv[] = {(char *)hook, (char *)action, c->name, (char *)value, NULL};
    c->pid = fork();
    if (c->pid == 0) {
        hook_exec_child(hook, argv, null_fd, fds[1]);
    }
    if (c->pid < 0) {
        dm_err_set_errno(err, errno, "dns hook %s %s: fork", action, name);
        goto fail;
    }
    /* Also here, so a kill right away reaches the group (no race with the
     * child's own setpgid). */
    setpgid(c->pid, c->pid);
    close(fds[1]);
    close(null_fd);
    struct timeval kill_tv = {.tv_sec = ACME_DNS01_HOOK_TIMEOUT_MS / 1000};
    event_add(c->read_ev, NULL);
    evtimer_add(c->kill_ev, &kill_tv);
    hook_arm_reap(c);
    c->next = hook_children;
    hook_children = c;
    return c;
fail:
    if (fds[0] >= 0) {
        close(fds[0]);
    }
    if (fds[1] >= 0) {
        close(fds[1]);
    }
    if (null_fd >= 0) {
        close(null_fd);
    }
    hook_free(c);
    return NULL;
}

/* hook_detach drops c's owner: done never runs; c is still reaped. With
 * is_kill the hook is killed first (a canceled present). */
static void hook_detach(struct hook_child *c, bool is_kill)
{
    c->done = NULL;
    c->done_arg = NULL;
    if (is_kill) {
        hook_kill(c);
        hook_close_pipe(c);
        c->reap_delay_ms = DNS01_REAP_EXITING_MS;
        event_del(c->reap_ev);
        hook_arm_reap(c);
    }
}

/* ---- the solver ---- */

enum dns01_phase {
    DNS01_PRESENTING = 0, /* the present hook runs */
    DNS01_WAITING,        /* propagation wait */
    DNS01_DONE,           /* ready was called */
    DNS01_WITHDRAWN,      /* cleanup called; its hook waits for the name's other records */
};

/* One presented challenge. */
struct dns01_record {
    struct dns01_record *next;
    struct acme_solver_dns01 *d; /* borrowed: owner */
    enum dns01_phase phase;
    char name[DNS01_NAME_MAX];          /* "_acme-challenge.example.com." */
    char value[ACME_DNS01_TXT_LEN + 1]; /* the TXT record */
    struct hook_child *child;           /* the present hook while it runs, or NULL */
    struct event *wait_ev;              /* owned: the propagation wait */
    acme_solver_ready_cb ready;
    void *ready_arg;
};

struct acme_solver_dns01 {
    struct event_base *base; /* borrowed */
    char *hook;              /* owned: absolute path */
    uint32_t propagation_ms;
    struct dns01_record *records; /* owned list */
};

static void dns01_on_cleanup_done(void *arg, const struct dm_err *err)
{
    (void)arg;
    if (err != NULL) {
        /* Nobody waits for a cleanup: a stale TXT record is harmless, but
         * the operator should know the hook fails. */
        dm_log(DM_LOG_WARN, "acme", "%s", err->msg);
    }
}

static void dns01_record_free(struct dns01_record *r)
{
    if (r->child != NULL) {
        hook_detach(r->child, true);
    }
    if (r->wait_ev != NULL) {
        event_free(r->wait_ev);
    }
    free(r);
}

/* dns01_record_cleanup runs the cleanup hook for r and frees it. */
static void dns01_record_cleanup(struct dns01_record *r)
{
    struct acme_solver_dns01 *d = r->d;
    struct dm_err err = {0};
    DM_LOG_DBG("acme", "dns hook cleanup %s", r->name);
    if (hook_start(d->base, d->hook, "cleanup", r->name, r->value, dns01_on_cleanup_done, NULL,
                   &err) == NULL) {
        dm_log(DM_LOG_WARN, "acme", "%s", err.msg);
    }
    dns01_record_free(r);
}

static void dns01_on_wait(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dns01_record *r = arg;
    r->phase = DNS01_DONE;
    r->ready(NULL, r->ready_arg); /* last: it may call cleanup */
}

static void dns01_on_present_done(void *arg, const struct dm_err *err)
{
    struct dns01_record *r = arg;
    r->child = NULL;
    if (err != NULL) {
        r->phase = DNS01_DONE;
        r->ready(err, r->ready_arg); /* last: it may call cleanup */
        return;
    }
    /* RFC 8555 §8.4: the CA queries the authoritative servers, which a
     * provider's API may update only seconds after it answered. */
    r->phase = DNS01_WAITING;
    struct timeval tv = {.tv_sec = r->d->propagation_ms / 1000,
                         .tv_usec = (r->d->propagation_ms % 1000) * 1000};
    evtimer_add(r->wait_ev, &tv);
}

/* dns01_record_name writes "_acme-challenge.<identifier>." into out; -1 if
 * the identifier is not a plain DNS name (it goes to a user's program). */
static int dns01_record_name(char out[DNS01_NAME_MAX], const char *identifier)
{
    size_t len = strlen(identifier);
    if (len == 0 || len > 253 || identifier[0] == '.' || identifier[0] == '-') {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = identifier[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == '_')) {
            return -1;
        }
    }
    snprintf(out, DNS01_NAME_MAX, "_acme-challenge.%s%s", identifier,
             identifier[len - 1] == '.' ? "" : ".");
    return 0;
}

static bool dns01_can_solve(void *ctx, const struct acme_challenge_info *ch)
{
    (void)ctx;
    return !ch->is_ip; /* RFC 8738 §7: no dns-01 for IP identifiers */
}

static int dns01_present(void *ctx, const struct acme_challenge_info *ch,
                         acme_solver_ready_cb ready, void *ready_arg, struct dm_err *err)
{
    struct acme_solver_dns01 *d = ctx;
    if (ch->is_ip || ch->key_auth == NULL) {
        dm_err_set(err, DM_E_CONFIG, "dns-01 cannot validate %s", ch->identifier);
        return -1;
    }
    struct dns01_record *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    r->d = d;
    r->ready = ready;
    r->ready_arg = ready_arg;
    if (dns01_record_name(r->name, ch->identifier) != 0) {
        dm_err_set(err, DM_E_PROTO, "dns-01: identifier is not a DNS name");
        free(r);
        return -1;
    }
    acme_key_authorization_dns01(ch->key_auth, r->value);
    r->wait_ev = evtimer_new(d->base, dns01_on_wait, r);
    if (r->wait_ev == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        free(r);
        return -1;
    }
    DM_LOG_DBG("acme", "dns hook present %s", r->name);
    r->child =
        hook_start(d->base, d->hook, "present", r->name, r->value, dns01_on_present_done, r, err);
    if (r->child == NULL) {
        dns01_record_free(r);
        return -1;
    }
    r->next = d->records;
    d->records = r;
    return 1;
}

static void dns01_cleanup(void *ctx, const struct acme_challenge_info *ch)
{
    struct acme_solver_dns01 *d = ctx;
    char name[DNS01_NAME_MAX];
    char value[ACME_DNS01_TXT_LEN + 1];
    if (ch->key_auth == NULL || dns01_record_name(name, ch->identifier) != 0) {
        return; /* present refused it: nothing was published */
    }
    acme_key_authorization_dns01(ch->key_auth, value);
    struct dns01_record *r = d->records;
    while (r != NULL && (r->phase == DNS01_WITHDRAWN || strcmp(r->name, name) != 0 ||
                         strcmp(r->value, value) != 0)) {
        r = r->next;
    }
    if (r == NULL) {
        return;
    }
    if (r->child != NULL) {
        hook_detach(r->child, true); /* canceled: ready must never run */
        r->child = NULL;
    }
    evtimer_del(r->wait_ev);
    r->phase = DNS01_WITHDRAWN;
    /* A name and its wildcard share one record name. Many hooks (and
     * challtestsrv's clear-txt) delete every TXT value of the name, so the
     * cleanups wait until no challenge under the name is in flight. */
    for (struct dns01_record *o = d->records; o != NULL; o = o->next) {
        if (o->phase != DNS01_WITHDRAWN && strcmp(o->name, name) == 0) {
            return;
        }
    }
    for (struct dns01_record **pp = &d->records; *pp != NULL;) {
        struct dns01_record *o = *pp;
        if (strcmp(o->name, name) == 0) {
            *pp = o->next;
            dns01_record_cleanup(o);
        } else {
            pp = &o->next;
        }
    }
}

static const struct acme_solver_ops dns01_ops = {
    .type = ACME_CHALLENGE_DNS01,
    .can_solve = dns01_can_solve,
    .present = dns01_present,
    .cleanup = dns01_cleanup,
};

const struct acme_solver_ops *acme_solver_dns01_ops(void)
{
    return &dns01_ops;
}

struct acme_solver_dns01 *acme_solver_dns01_new(struct event_base *base, const char *hook,
                                                uint32_t propagation_ms, struct dm_err *err)
{
    if (base == NULL || hook == NULL || hook[0] != '/') {
        dm_err_set(err, DM_E_CONFIG, "dns-01 needs an absolute hook path");
        return NULL;
    }
    struct acme_solver_dns01 *d = calloc(1, sizeof(*d));
    if (d == NULL || (d->hook = strdup(hook)) == NULL) {
        free(d);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    d->base = base;
    d->propagation_ms = propagation_ms;
    return d;
}

void acme_solver_dns01_free(struct acme_solver_dns01 *d)
{
    if (d == NULL) {
        return;
    }
    while (d->records != NULL) {
        struct dns01_record *r = d->records;
        d->records = r->next;
        if (r->phase == DNS01_WITHDRAWN) {
            dns01_record_cleanup(r); /* a cleanup still owed */
        } else {
            dns01_record_free(r);
        }
    }
    free(d->hook);
    free(d);
}
