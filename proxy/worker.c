/* Workers: one thread and one event_base each (no libevent locking), each
 * with its own SO_REUSEPORT listeners so the kernel spreads connections and
 * nothing is shared on the request path. The control thread talks to a
 * worker only through its eventfd (stop, new generation). */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>

#include "proxy/core/err.h"
#include "proxy/core/log.h"
#include "proxy/proxy.h"
#include "proxy/proxy_int.h"

#define WORKER_ACCEPT_BATCH 64
#define LISTEN_BACKLOG      4096

struct dm_proxy dm_proxy_g = {.access_fd = 2};

int dm_proxy_init(struct acme_store *store, const struct cfg *cfg, struct dm_err *err)
{
    dm_proxy_g.store = store;
    dm_proxy_g.ssl_ctx = dm_tls_ctx_new(err);
    if (dm_proxy_g.ssl_ctx == NULL) {
        return -1;
    }
    dm_proxy_g.access_json = cfg->access_log_format == CFG_LOG_JSON;
    if (cfg->access_log == NULL || strcmp(cfg->access_log, "stderr") == 0) {
        dm_proxy_g.access_fd = 2;
    } else if (strcmp(cfg->access_log, "off") == 0) {
        dm_proxy_g.access_fd = -1;
    } else {
        int fd = open(cfg->access_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd < 0) {
            dm_err_set_errno(err, errno, "access log %s", cfg->access_log);
            return -1;
        }
        dm_proxy_g.access_fd = fd;
    }
    return 0;
}

void dm_proxy_cleanup(void)
{
    if (dm_proxy_g.ssl_ctx != NULL) {
        SSL_CTX_free(dm_proxy_g.ssl_ctx);
        dm_proxy_g.ssl_ctx = NULL;
    }
    if (dm_proxy_g.access_fd > 2) {
        close(dm_proxy_g.access_fd);
    }
    dm_proxy_g.access_fd = -1;
}

static struct dm_worker *workers;
static int num_workers;

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
            dm_gen_unref(w->gen);
            w->gen = g;
        }
    }
    if (msg & DM_WORKER_MSG_STOP) {
        w->draining = true;
        worker_close_listeners(w);
        uint32_t ms = atomic_load(&w->stop_deadline_ms);
        struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
        w->drain_timer = evtimer_new(w->base, worker_on_drain_deadline, w);
        evtimer_add(w->drain_timer, &tv);
        dm_upstream_pools_close_idle(w);
        struct dm_conn *c = w->conns;
        while (c != NULL) {
            struct dm_conn *next = c->next;
            dm_conn_drain(c);
            c = next;
        }
        if (w->num_conns == 0) {
            event_base_loopexit(w->base, NULL);
        }
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
    w->dns = evdns_base_new(w->base,
                            EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (w->dns == NULL) {
        /* No resolv.conf: keep going with /etc/hosts only. */
        w->dns = evdns_base_new(w->base, 0);
        if (w->dns != NULL) {
            evdns_base_load_hosts(w->dns, NULL);
        }
    }
    for (int i = 0; i < 4; i++) {
        w->listen_fds[i] = -1;
    }
    uint16_t ports[2] = {cfg->https_port, cfg->http_port};
    for (int i = 0; i < 2; i++) {
        if (ports[i] == 0) {
            continue;
        }
        int fd = listen_socket(cfg->bind, ports[i], true, err);
        if (fd < 0) {
            return -1;
        }
        int k = w->num_listeners++;
        w->listen_fds[k] = fd;
        w->listen_is_tls[k] = i == 0;
        w->listen_evs[k] = event_new(w->base, fd, EV_READ | EV_PERSIST, worker_on_accept, w);
        event_add(w->listen_evs[k], NULL);
    }
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) {
        dm_err_set_errno(err, errno, "eventfd");
        return -1;
    }
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
    uint16_t ports[2] = {cfg->https_port, cfg->http_port};
    for (int i = 0; i < 2; i++) {
        if (ports[i] == 0) {
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
            return -1;
        }
    }
    dm_gen_unref(gen);
    for (int i = 0; i < n; i++) {
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) {
            dm_err_set(err, DM_E_NOMEM, "cannot start worker thread");
            return -1;
        }
    }
    return 0;
}

int dm_workers_count(void)
{
    return num_workers;
}

int dm_workers_publish(struct cfg *cfg, struct dm_err *err)
{
    for (int i = 0; i < num_workers; i++) {
        struct dm_gen *g = dm_gen_new(cfg, err);
        if (g == NULL) {
            return -1;
        }
        struct dm_gen *old = atomic_exchange(&workers[i].next_gen, g);
        dm_gen_unref(old);
        worker_send(&workers[i], DM_WORKER_MSG_GEN);
    }
    return 0;
}

void dm_workers_stop(uint32_t deadline_ms)
{
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
        worker_close_listeners(w);
        if (w->drain_timer != NULL) {
            event_free(w->drain_timer);
        }
        int efd = event_get_fd(w->msg_ev);
        event_free(w->msg_ev);
        close(efd);
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
}
