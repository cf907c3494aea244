/* The data plane's public face for main.c (and later the admin API): start
 * the workers on a config, publish a new config, stop gracefully. */
#ifndef DM_PROXY_PROXY_H
#define DM_PROXY_PROXY_H

#include <stdint.h>

struct acme_store;
struct cfg;
struct dm_err;

/* dm_proxy_init creates the shared TLS context over store (borrowed; must
 * outlive the proxy) and opens the access log named by cfg. */
int dm_proxy_init(struct acme_store *store, const struct cfg *cfg, struct dm_err *err);

/* dm_proxy_start binds the listeners (a port in use fails here, with the
 * address in err) and starts the worker threads. */
int dm_workers_start(struct cfg *cfg, struct dm_err *err);

/* dm_workers_publish hands a new config to every worker for new connections;
 * existing connections keep the one they started with. */
int dm_workers_publish(struct cfg *cfg, struct dm_err *err);

/* dm_workers_stop stops accepting, lets in-flight requests finish for up to
 * deadline_ms, then closes what is left and joins the threads. */
void dm_workers_stop(uint32_t deadline_ms);

/* dm_proxy_set_ondemand lets handshakes for unknown names ask od (borrowed;
 * must outlive the workers); dm_workers_wake_ondemand (the wake callback
 * to register with it) makes every worker retry its waiting handshakes. */
struct acme_ondemand;
void dm_proxy_set_ondemand(struct acme_ondemand *od);
void dm_workers_wake_ondemand(void *arg);

/* dm_proxy_active_conns returns the open client connections of all workers. */
long dm_proxy_active_conns(void);

/* Backend state for the admin API (upstreams_status.c): dm_upstreams_json
 * appends GET /upstreams's JSON array (one object per site of cfg) to out;
 * dm_upstreams_metrics appends the doorman_backend_* Prometheus families.
 * Both return 0, or -1 if out of memory. */
struct evbuffer;
int dm_upstreams_json(struct evbuffer *out, const struct cfg *cfg);
int dm_upstreams_metrics(struct evbuffer *out, const struct cfg *cfg);

/* dm_workers_listen_fds writes the listening sockets of every worker and
 * their ports (at most cap) for a binary upgrade; returns how many. */
int dm_workers_listen_fds(int *out_fds, uint16_t *out_ports, int cap);

/* dm_workers_stop_handover is dm_workers_stop after a binary upgrade: the
 * workers stop accepting but keep the listening sockets (which the new
 * process shares) open until they are done, then close them. Listening
 * sockets the process was started with (DOORMAN_LISTEN_FDS, see upgrade.h)
 * are taken by dm_workers_start instead of binding new ones. */
void dm_workers_stop_handover(uint32_t deadline_ms);

/* dm_workers_count returns the number of worker threads running. */
int dm_workers_count(void);

/* dm_tls_ticket_keys_rotate: see tls.c; call periodically from the control thread. */
void dm_tls_ticket_keys_rotate(void);

/* dm_access_log_reopen reopens the access log file (SIGUSR1, for logrotate):
 * the new file is opened first and swapped in atomically, so a failure keeps
 * the old one. Nothing to do for stderr or off. Returns 0 or -1 with err.
 * Control thread. */
int dm_access_log_reopen(struct dm_err *err);

/* dm_access_log_apply points the access log at cfg->access_log (a file,
 * "stderr" or "off"; at start and on reload). The new destination is opened
 * first, so a failure keeps the old one. The format is each connection's
 * config's. Returns 0 or -1 with err. Control thread. */
int dm_access_log_apply(const struct cfg *cfg, struct dm_err *err);

/* dm_proxy_cleanup frees the TLS context and closes the access log. */
void dm_proxy_cleanup(void);

#endif
