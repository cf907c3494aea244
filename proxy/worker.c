/* Workers: one thread and one event_base each (no libevent locking), each
 * with its own SO_REUSEPORT listeners so the kernel spreads connections and
 * nothing is shared on the request path. The control thread talks to a
 * worker only through its eventfd (stop, new generation). */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>

#include "config/config.h"
#include "proxy/core/err.h"
#include "proxy/core/log.h"
#include "proxy/dns_cache.h"
#include "proxy/iptable.h"
#include "proxy/proxy.h"
#include "proxy/proxy_int.h"
#include "proxy/upgrade.h"

#define WORKER_ACCEPT_BATCH 64
#define LISTEN_BACKLOG      4096
/* Client addresses each worker tracks for the per-IP limits: about 160 KiB;
 * past it the limits fail open for new addresses (iptable.h). */
#define WORKER_IPTABLE_SIZE 4096
/* Longest wait of the control thread for workers to take a new generation. */
#define WORKER_PUBLISH_WAIT_MS 1000

struct dm_proxy dm_proxy_g = {.access_fd = -1, .access_slot = -1};

/* The access log lives on one descriptor number for the life of the process
 * (dm_proxy_g.access_slot): a reopen or a reload that names another file
 * dup2()s the new file onto it, so a worker writing at that instant lands
 * in the old or the new file, never in a closed or reused descriptor.
 * access_fd is the slot while logging is on and -1 while it is off. */
static int access_open(const char *dest, struct dm_err *err)
{
    int fd;
    if (dest == NULL || strcmp(dest, "stderr") == 0) {
        fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
    } else if (strcmp(dest, "off") == 0) {
        fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    } else {
        fd = open(dest, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    }
    if (fd < 0) {
        dm_err_set_errno(err, errno, "log.access: cannot open %s", dest ? dest : "stderr");
    }
    return fd;
}

int dm_access_log_apply(const struct cfg *cfg, struct dm_err *err)
{
    const char *dest = cfg->access_log != NULL ? cfg->access_log : "stderr";
    if (dm_proxy_g.access_slot >= 0 && dm_proxy_g.access_dest != NULL &&
        strcmp(dm_proxy_g.access_dest, dest) == 0) {
        return 0;
    }
    char *copy = strdup(dest);
    if (copy == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    int fd = access_open(dest, err);
    if (fd < 0) {
        free(copy);
        return -1;
    }
    if (dm_proxy_g.access_slot < 0) {
        dm_proxy_g.access_slot = fd;
    } else {
        if (dup3(fd, dm_proxy_g.access_slot, O_CLOEXEC) < 0) {
            int e = errno;
            close(fd);
            free(copy);
            dm_err_set_errno(err, e, "log.access: %s", dest);
            return -1;
        }
        close(fd);
    }
    bool off = strcmp(dest, "off") == 0;
    atomic_store(&dm_proxy_g.access_fd, off ? -1 : dm_proxy_g.access_slot);
    free(dm_proxy_g.access_dest);
    dm_proxy_g.access_dest = copy;
    return 0;
}

/* access_path is the file to reopen on SIGUSR1, NULL for stderr and off. */
static const char *access_path(void)
{
    const char *d = dm_proxy_g.access_dest;
    return d != NULL && strcmp(d, "stderr") != 0 && strcmp(d, "off") != 0 ? d : NULL;
}

int dm_proxy_init(struct acme_store *store, const struct cfg *cfg, struct dm_err *err)
{
    dm_proxy_g.store = store;
    dm_proxy_g.ssl_ctx = dm_tls_ctx_new(err);
    if (dm_proxy_g.ssl_ctx == NULL) {
        return -1;
    }
    return dm_access_log_apply(cfg, err);
}

int dm_access_log_reopen(struct dm_err *err)
{
    const char *path = access_path();
    if (path == NULL || dm_proxy_g.access_slot < 0) {
        return 0; /* stderr or off: nothing to reopen */
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) {
        dm_err_set_errno(err, errno, "access log %s", path);
        return -1;
    }
    if (dup3(fd, dm_proxy_g.access_slot, O_CLOEXEC) < 0) {
        int e = errno;
        close(fd);
        dm_err_set_errno(err, e, "access log %s", path);
        return -1;
    }
    close(fd);
    return 0;
}

void dm_proxy_cleanup(void)
{
    if (dm_proxy_g.ssl_ctx != NULL) {
        SSL_CTX_free(dm_proxy_g.ssl_ctx);
        dm_proxy_g.ssl_ctx = NULL;
    }
    atomic_store(&dm_proxy_g.access_fd, -1);
    if (dm_proxy_g.access_slot >= 0) {
        close(dm_proxy_g.access_slot);
    }
    dm_proxy_g.access_slot = -1;
    free(dm_proxy_g.access_dest);
    dm_proxy_g.access_dest = NULL;
}

static struct dm_worker *workers;
static int num_workers;
/* The config the workers run (for listener changes); control thread only. */
static struct cfg *published_cfg; /* ref */
/* Set before a handover stop: workers stop accepting but keep their
 * listening descriptors open until their loop ended (see worker_on_msg). */
static atomic_bool keep_listen_fds;

/* Listening sockets inherited from the process this one upgrades (upgrade.c),
 * taken by workers in order; what is left is closed after setup. */
struct inherited_listener {
    int fd;
    uint16_t port;
    bool is_taken;
};
static struct inherited_listener inherited[64];
static int num_inherited;

/* inherit_parse reads DM_UPGRADE_ENV_LISTEN ("fd:port,...") and keeps the
 * descriptors that really are listening TCP sockets on that port. */
static void inherit_parse(void)
{
    const char *v = getenv(DM_UPGRADE_ENV_LISTEN);
    if (v == NULL) {
        return;
    }
    char *copy = strdup(v);
    unsetenv(DM_UPGRADE_ENV_LISTEN);
    char *save = NULL;
    for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; t != NULL && num_inherited < 64;
         t = strtok_r(NULL, ",", &save)) {
        int fd = -1;
        unsigned port = 0;
        int listening = 0;
        socklen_t len = sizeof(listening);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        if (sscanf(t, "%d:%u", &fd, &port) != 2 || fd < 3 ||
            getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening ||
            getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
            continue;
        }
        uint16_t bound = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                                  : ntohs(((struct sockaddr_in *)&ss)->sin_port);
        if (bound != port) {
            continue;
        }
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        inherited[num_inherited++] = (struct inherited_listener){.fd = fd, .port = (uint16_t)port};
    }
    free(copy);
}

static bool inherit_has(uint16_t port)
{
    for (int i = 0; i < num_inherited; i++) {
        if (inherited[i].port == port) {
            return true;
        }
    }
    return false;
}

/* inherit_take returns an untaken inherited socket for port, or -1. */
static int inherit_take(uint16_t port)
{
    for (int i = 0; i < num_inherited; i++) {
        if (!inherited[i].is_taken && inherited[i].port == port) {
            inherited[i].is_taken = true;
            return inherited[i].fd;
        }
    }
    return -1;
}

static void inherit_close_rest(void)
{
    for (int i = 0; i < num_inherited; i++) {
        if (!inherited[i].is_taken) {
            close(inherited[i].fd);
        }
    }
    num_inherited = 0;
}

/* listen_socket creates a bound, listening, non-blocking socket. With
 * reuseport, several workers may bind the same address. */
static int listen_socket(const char *bind_addr, uint16_t port, bool reuseport, struct dm_err *err)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    if (inet_pton(AF_INET6, bind_addr, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        len = sizeof(*s6);
    } else if (inet_pton(AF_INET, bind_addr, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        len = sizeof(*s4);
    } else {
        dm_err_set(err, DM_E_CONFIG, "bind address %s is not an IP address", bind_addr);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 && ss.ss_family == AF_INET6 && strcmp(bind_addr, "::") == 0) {
        /* No IPv6 on this host: "all addresses" means all IPv4 ones. */
        return listen_socket("0.0.0.0", port, reuseport, err);
    }
    if (fd < 0) {
        dm_err_set_errno(err, errno, "socket");
        return -1;
    }
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    }
    if (ss.ss_family == AF_INET6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    }
    /* Accepted sockets inherit it: no setsockopt per connection. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* Wake us only when the client has sent something (the ClientHello). */
    int defer_s = 10;
    setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer_s, sizeof(defer_s));
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
        int e = errno;
        close(fd);
        if (ss.ss_family == AF_INET6) {
            dm_err_set_errno(err, e, "cannot listen on [%s]:%u", bind_addr, port);
        } else {
            dm_err_set_errno(err, e, "cannot listen on %s:%u", bind_addr, port);
        }
        return -1;
    }
    if (listen(fd, LISTEN_BACKLOG) != 0) {
        int e = errno;
        close(fd);
        dm_err_set_errno(err, e, "listen on port %u", port);
        return -1;
    }
    return fd;
}

static void worker_on_accept(evutil_socket_t lfd, short what, void *arg)
{
    (void)what;
    struct dm_worker *w = arg;
    int idx = 0;
    for (int i = 0; i < w->num_listeners; i++) {
        if (w->listen_fds[i] == lfd) {
            idx = i;
        }
    }
    uint32_t max = w->gen->cfg->limits.max_connections;
    for (int i = 0; i < WORKER_ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                dm_log(DM_LOG_WARN, "listen", "accept: %s", strerror(errno));
            }
            return;
        }
        if (max != 0 && (uint32_t)atomic_load(&dm_proxy_g.num_conns) >= max) {
            /* Over the limit: refuse at once rather than queue unboundedly. */
            dm_metrics_refused(w->metrics, DM_REFUSE_MAX_CONNECTIONS);
            close(fd);
            continue;
        }
        if (!dm_limits_accept_ok(w, (struct sockaddr *)&ss)) {
            close(fd);
            continue;
        }
        /* TCP_NODELAY is inherited from the listening socket. */
        dm_conn_accept(w, fd, (struct sockaddr *)&ss, len, w->listen_is_tls[idx]);
    }
}

static void worker_close_listeners(struct dm_worker *w)
{
    for (int i = 0; i < w->num_listeners; i++) {
        if (w->listen_evs[i] != NULL) {
            event_free(w->listen_evs[i]);
            w->listen_evs[i] = NULL;
        }
        if (w->listen_fds[i] >= 0) {
            close(w->listen_fds[i]);
            w->listen_fds[i] = -1;
        }
    }
}

static void worker_on_drain_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dm_worker *w = arg;
    if (w->num_conns > 0) {
        dm_log(DM_LOG_WARN, "worker", "worker %d: shutdown deadline, closing %d connections", w->id,
               w->num_conns);
    }
    while (w->conns != NULL) {
        dm_conn_force_close(w->conns);
    }
    event_base_loopexit(w->base, NULL);
}

static void worker_on_close_fd(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    close((int)(intptr_t)arg);
}

/* worker_sync_listeners makes w's listeners match next (a reload): a
 * listener whose port, role or address stays is kept; a new one is opened
 * (the control thread checked the port is free); a removed one first
 * accepts what waits in its queue, then closes. */
static void worker_sync_listeners(struct dm_worker *w, const struct cfg *cur,
                                  const struct cfg *next)
{
    bool same_bind = strcmp(cur->bind, next->bind) == 0;
    uint16_t want[2] = {next->https_port, next->http_port};
    bool have[2] = {false, false};
    int kept = 0;
    for (int k = 0; k < w->num_listeners; k++) {
        int role = w->listen_is_tls[k] ? 0 : 1;
        if (same_bind && want[role] != 0 && w->listen_ports[k] == want[role] && !have[role]) {
            have[role] = true;
            w->listen_evs[kept] = w->listen_evs[k];
            w->listen_fds[kept] = w->listen_fds[k];
            w->listen_is_tls[kept] = w->listen_is_tls[k];
            w->listen_ports[kept] = w->listen_ports[k];
            kept++;
            continue;
        }
        worker_on_accept(w->listen_fds[k], EV_READ, w); /* take what is queued */
        /* Close only after the loop applied the deletion (the change list runs
         * at the next dispatch, timers after it): a socket another process
         * still holds (after an upgrade) would stay registered otherwise. */
        event_free(w->listen_evs[k]);
        struct timeval now = {0, 0};
        if (event_base_once(w->base, -1, EV_TIMEOUT, worker_on_close_fd,
                            (void *)(intptr_t)w->listen_fds[k], &now) != 0) {
            close(w->listen_fds[k]);
        }
        dm_log(DM_LOG_INFO, "listen", "worker %d: closed port %u", w->id, w->listen_ports[k]);
    }
    w->num_listeners = kept;
    for (int k = kept; k < 4; k++) {
        w->listen_evs[k] = NULL;
        w->listen_fds[k] = -1;
    }
    for (int role = 0; role < 2; role++) {
        if (want[role] == 0 || have[role] || w->num_listeners == 4) {
            continue;
        }
        struct dm_err err = {0};
        int fd = listen_socket(next->bind, want[role], true, &err);
        if (fd < 0) {
            dm_log(DM_LOG_ERROR, "listen", "worker %d: %s", w->id, err.msg);
            continue;
        }
        int k = w->num_listeners++;
        w->listen_fds[k] = fd;
        w->listen_is_tls[k] = role == 0;
        w->listen_ports[k] = want[role];
        w->listen_evs[k] = event_new(w->base, fd, EV_READ | EV_PERSIST, worker_on_accept, w);
        event_add(w->listen_evs[k], NULL);
    }
}

/* worker_on_grace closes the connections still on an older generation once
 * timeouts.reload_grace has passed since the last reload. */
static void worker_on_grace(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dm_worker *w = arg;
    int n = 0;
    struct dm_conn *c = w->conns;
    while (c != NULL) {
        struct dm_conn *next = c->next;
        if (c->gen != NULL && c->gen->cfg->generation < w->gen->cfg->generation) {
            dm_conn_force_close(c);
            n++;
        }
        c = next;
    }
    if (n > 0) {
        dm_log(DM_LOG_INFO, "worker",
               "worker %d: reload grace over, closed %d connection%s of older configs", w->id, n,
               n == 1 ? "" : "s");
    }
}

static void worker_on_msg(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct dm_worker *w = arg;
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));
    (void)r;
    int msg = atomic_exchange(&w->pending_msg, 0);
    if (msg & DM_WORKER_MSG_GEN) {
        struct dm_gen *g = atomic_exchange(&w->next_gen, NULL);
        if (g != NULL) {
            if (!w->draining) {
                worker_sync_listeners(w, w->gen->cfg, g->cfg);
            }
            dm_gen_unref(w->gen);
            w->gen = g;
            uint32_t ms = g->cfg->timeouts.reload_grace_ms;
            struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
            if (w->grace_timer != NULL) {
                evtimer_add(w->grace_timer, &tv); /* from the latest reload */
            }
        }
    }
    if (msg & DM_WORKER_MSG_STOP) {
        w->draining = true;
        if (atomic_load(&keep_listen_fds)) {
            /* The new process accepts on the same sockets: stop watching
             * them, close them only after the loop ended. Closing now would
             * leave the registration in this epoll set (the socket lives on
             * in the other process) while the deletion waits in the change
             * list, and the loop would spin on it. */
            for (int i = 0; i < w->num_listeners; i++) {
                if (w->listen_evs[i] != NULL) {
                    event_del(w->listen_evs[i]);
                }
            }
        } else {
            worker_close_listeners(w);
        }
        uint32_t ms = atomic_load(&w->stop_deadline_ms);
        struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
        w->drain_timer = evtimer_new(w->base, worker_on_drain_deadline, w);
        evtimer_add(w->drain_timer, &tv);
        dm_upstream_pools_close_idle(w);
        bool is_handover = atomic_load(&keep_listen_fds);
        struct dm_conn *c = w->conns;
        while (c != NULL) {
            struct dm_conn *next = c->next;
            if (is_handover &&
                (c->state == DM_CONN_HANDSHAKE ||
                 (c->state == DM_CONN_IDLE && c->h2 == NULL && c->r.req_start_us == 0))) {
                /* Accepted just before the handover, no request yet: the
                 * client has nothing it could retry, so serve its first
                 * request (with Connection: close) instead of cutting it. */
                c->want_close = true;
            } else {
                dm_conn_drain(c);
            }
            c = next;
        }
        if (w->num_conns == 0) {
            event_base_loopexit(w->base, NULL);
        }
    }
    if (msg & DM_WORKER_MSG_OD) {
        /* Detach the list first: a retry that must wait again re-lists. */
        struct dm_conn *c = w->od_waiting;
        w->od_waiting = NULL;
        for (struct dm_conn *p = c; p != NULL; p = p->od_next) {
            p->is_od_listed = false;
        }
        while (c != NULL) {
            struct dm_conn *next = c->od_next;
            c->od_prev = c->od_next = NULL;
            dm_conn_od_retry(c);
            c = next;
        }
    }
    if (msg & DM_WORKER_MSG_QUEUE) {
        dm_upstream_queue_kick(w);
    }
    if (msg & DM_WORKER_MSG_FORCE) {
        worker_on_drain_deadline(-1, 0, w);
    }
}

static void *worker_main(void *arg)
{
    struct dm_worker *w = arg;
    event_base_dispatch(w->base);
    return NULL;
}

static int worker_setup(struct dm_worker *w, const struct cfg *cfg, struct dm_err *err)
{
    struct event_config *ec = event_config_new();
    if (ec == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    /* Only this thread touches the base: no locks inside libevent. */
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    /* Batch epoll_ctl changes per loop iteration: a read interest added and
     * dropped (or a connection opened and closed) within one iteration costs
     * no system call. Safe here: no fd is ever dup()ed. */
    event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    w->base = event_base_new_with_config(ec);
    event_config_free(ec);
    if (w->base == NULL) {
        dm_err_set(err, DM_E_NOMEM, "event_base_new");
        return -1;
    }
    /* DOORMAN_RESOLV_CONF (tests): a resolv.conf of their own, whose
     * nameserver lines may carry a port ("nameserver 127.0.0.1:5353"). */
    const char *resolv = getenv("DOORMAN_RESOLV_CONF");
    if (resolv != NULL && resolv[0] != '\0') {
        w->dns = evdns_base_new(w->base, 0);
        if (w->dns != NULL && evdns_base_resolv_conf_parse(w->dns, DNS_OPTIONS_ALL, resolv) != 0) {
            dm_log(DM_LOG_WARN, "dns", "DOORMAN_RESOLV_CONF=%s could not be read", resolv);
        }
    } else {
        w->dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                             EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    }
    if (w->dns == NULL) {
        /* No resolv.conf: keep going with /etc/hosts only. */
        w->dns = evdns_base_new(w->base, 0);
        if (w->dns != NULL) {
            evdns_base_load_hosts(w->dns, NULL);
        }
    }
    w->dns_cache = dm_dns_cache_new(w); /* NULL: names are not cached */
    for (int i = 0; i < 4; i++) {
        w->listen_fds[i] = -1;
    }
    w->metrics = dm_metrics_worker_new();
    w->ips = dm_iptable_new(WORKER_IPTABLE_SIZE);
    uint16_t ports[2] = {cfg->https_port, cfg->http_port};
    for (int i = 0; i < 2; i++) {
        if (ports[i] == 0) {
            continue;
        }
        int fd = inherit_take(ports[i]);
        if (fd < 0) {
            fd = listen_socket(cfg->bind, ports[i], true, err);
        }
        if (fd < 0) {
            return -1;
        }
        int k = w->num_listeners++;
        w->listen_fds[k] = fd;
        w->listen_is_tls[k] = i == 0;
        w->listen_ports[k] = ports[i];
        w->listen_evs[k] = event_new(w->base, fd, EV_READ | EV_PERSIST, worker_on_accept, w);
        event_add(w->listen_evs[k], NULL);
    }
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) {
        dm_err_set_errno(err, errno, "eventfd");
        return -1;
    }
    w->grace_timer = evtimer_new(w->base, worker_on_grace, w);
    w->msg_ev = event_new(w->base, efd, EV_READ | EV_PERSIST, worker_on_msg, w);
    event_add(w->msg_ev, NULL);
    return 0;
}

static void worker_send(struct dm_worker *w, int msg)
{
    atomic_fetch_or(&w->pending_msg, msg);
    uint64_t one = 1;
    ssize_t r = write(event_get_fd(w->msg_ev), &one, sizeof(one));
    (void)r;
}

/* DM_MALLOC_TRIM_BYTES: free heap a worker's malloc arena keeps instead of
 * returning it to the kernel. Requests come in waves (hundreds of HTTP/2
 * streams start and finish together); with glibc's default (128 KiB) each
 * wave shrank the heap and the next one grew it again, page faults included,
 * which cost more CPU than the proxying (tests/bench/bench_h2.sh). */
#define DM_MALLOC_TRIM_BYTES (16 * 1024 * 1024)

int dm_workers_start(struct cfg *cfg, struct dm_err *err)
{
    mallopt(M_TRIM_THRESHOLD, DM_MALLOC_TRIM_BYTES);
    /* Probe each port without SO_REUSEPORT first: another process holding it
     * with SO_REUSEPORT would otherwise silently share our port. */
    inherit_parse();
    uint16_t ports[2] = {cfg->https_port, cfg->http_port};
    for (int i = 0; i < 2; i++) {
        /* An inherited port is ours already: the old process shares it. */
        if (ports[i] == 0 || inherit_has(ports[i])) {
            continue;
        }
        int fd = listen_socket(cfg->bind, ports[i], false, err);
        if (fd < 0) {
            return -1;
        }
        close(fd);
    }
    int n = (int)cfg->workers;
    if (n <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n = cores > 0 ? (int)cores : 1;
    }
    struct dm_gen *gen = dm_gen_new(cfg, err);
    if (gen == NULL) {
        return -1;
    }
    workers = calloc((size_t)n, sizeof(*workers));
    if (workers == NULL) {
        dm_gen_unref(gen);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    num_workers = n;
    for (int i = 0; i < n; i++) {
        struct dm_worker *w = &workers[i];
        w->id = i;
        w->gen = dm_gen_ref(gen);
        if (worker_setup(w, cfg, err) != 0) {
            dm_gen_unref(gen);
            inherit_close_rest();
            return -1;
        }
    }
    inherit_close_rest();
    dm_gen_unref(gen);
    cfg_unref(published_cfg);
    published_cfg = cfg_ref(cfg);
    for (int i = 0; i < n; i++) {
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) {
            dm_err_set(err, DM_E_NOMEM, "cannot start worker thread");
            return -1;
        }
    }
    dm_health_update(cfg);
    return 0;
}

void dm_proxy_set_ondemand(struct acme_ondemand *od)
{
    dm_proxy_g.ondemand = od;
}

void dm_workers_wake_queues(const struct dm_worker *self)
{
    /* Cheap when nobody waits (the common case): one load per worker (a
     * plain load on x86). The other workers race for the slot; the losers
     * stay queued. */
    for (int i = 0; i < num_workers; i++) {
        struct dm_worker *w = &workers[i];
        if (w != self && atomic_load(&w->num_queued) > 0) {
            worker_send(w, DM_WORKER_MSG_QUEUE);
        }
    }
}

void dm_workers_wake_ondemand(void *arg)
{
    (void)arg;
    for (int i = 0; i < num_workers; i++) {
        worker_send(&workers[i], DM_WORKER_MSG_OD);
    }
}

long dm_proxy_active_conns(void)
{
    return atomic_load_explicit(&dm_proxy_g.num_conns, memory_order_relaxed);
}

int dm_workers_count(void)
{
    return num_workers;
}

/* check_new_ports probes, without SO_REUSEPORT, every port next listens on
 * that the running config does not, so a port held by another process
 * refuses the reload instead of failing in the workers. */
static int check_new_ports(const struct cfg *cur, const struct cfg *next, struct dm_err *err)
{
    bool same_bind = strcmp(cur->bind, next->bind) == 0;
    uint16_t ports[2] = {next->https_port, next->http_port};
    const char *keys[2] = {"https_port", "http_port"};
    for (int i = 0; i < 2; i++) {
        if (ports[i] == 0 ||
            (same_bind && (ports[i] == cur->https_port || ports[i] == cur->http_port))) {
            continue;
        }
        struct dm_err e = {0};
        int fd = listen_socket(next->bind, ports[i], false, &e);
        if (fd < 0) {
            dm_err_set(err, DM_E_CONFIG, "%s: %s", keys[i], e.msg);
            return -1;
        }
        close(fd);
    }
    return 0;
}

int dm_workers_publish(struct cfg *cfg, struct dm_err *err)
{
    if (published_cfg != NULL && check_new_ports(published_cfg, cfg, err) != 0) {
        return -1;
    }
    cfg_unref(published_cfg);
    published_cfg = cfg_ref(cfg);
    for (int i = 0; i < num_workers; i++) {
        struct dm_gen *g = dm_gen_new(cfg, err);
        if (g == NULL) {
            return -1;
        }
        struct dm_gen *old = atomic_exchange(&workers[i].next_gen, g);
        dm_gen_unref(old);
        worker_send(&workers[i], DM_WORKER_MSG_GEN);
    }
    dm_health_update(cfg);
    /* Wait (bounded) until every worker took it, so that once a reload is
     * answered, every connection accepted afterwards gets the new config. A
     * worker stuck for longer still takes it at its next wakeup. */
    for (int waited_ms = 0; waited_ms < WORKER_PUBLISH_WAIT_MS; waited_ms++) {
        bool all_taken = true;
        for (int i = 0; i < num_workers; i++) {
            all_taken &= atomic_load(&workers[i].next_gen) == NULL;
        }
        if (all_taken) {
            break;
        }
        struct timespec ms = {.tv_nsec = 1000000};
        nanosleep(&ms, NULL);
    }
    return 0;
}

int dm_workers_listen_fds(int *out_fds, uint16_t *out_ports, int cap)
{
    int n = 0;
    for (int i = 0; i < num_workers; i++) {
        struct dm_worker *w = &workers[i];
        for (int k = 0; k < w->num_listeners && n < cap; k++) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof(ss);
            if (w->listen_fds[k] < 0 ||
                getsockname(w->listen_fds[k], (struct sockaddr *)&ss, &sl) != 0) {
                continue;
            }
            out_fds[n] = w->listen_fds[k];
            out_ports[n++] = ss.ss_family == AF_INET6
                                 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                 : ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    return n;
}

void dm_workers_stop_handover(uint32_t deadline_ms)
{
    atomic_store(&keep_listen_fds, true);
    dm_workers_stop(deadline_ms);
}

void dm_workers_stop(uint32_t deadline_ms)
{
    dm_health_stop();
    for (int i = 0; i < num_workers; i++) {
        struct dm_worker *w = &workers[i];
        atomic_store(&w->stop_deadline_ms, deadline_ms);
        worker_send(w, DM_WORKER_MSG_STOP);
    }
    for (int i = 0; i < num_workers; i++) {
        struct dm_worker *w = &workers[i];
        pthread_join(w->thread, NULL);
        while (w->conns != NULL) {
            dm_conn_force_close(w->conns);
        }
        dm_upstream_pools_free(w);
        dm_worker_rbufs_free(w);
        dm_iptable_free(w->ips);
        w->ips = NULL;
        worker_close_listeners(w);
        if (w->drain_timer != NULL) {
            event_free(w->drain_timer);
        }
        if (w->grace_timer != NULL) {
            event_free(w->grace_timer);
        }
        int efd = event_get_fd(w->msg_ev);
        event_free(w->msg_ev);
        close(efd);
        dm_dns_cache_free(w->dns_cache);
        if (w->dns != NULL) {
            evdns_base_free(w->dns, 0);
        }
        dm_gen_unref(atomic_exchange(&w->next_gen, NULL));
        dm_gen_unref(w->gen);
        event_base_free(w->base);
    }
    free(workers);
    workers = NULL;
    num_workers = 0;
    cfg_unref(published_cfg);
    published_cfg = NULL;
}
