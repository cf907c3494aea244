/* Data-plane internals shared by the proxy's files: the runtime generation
 * (a config snapshot plus what is derived from it), workers, client and
 * backend connections. Life of a connection: docs/architecture.md. */
#ifndef DM_PROXY_PROXY_INT_H
#define DM_PROXY_PROXY_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/base.h>

#include "config/config_types.h"
#include "proxy/http1_parse.h"
#include "proxy/metrics.h"
#include "proxy/proxy.h"

struct evbuffer;
struct evdns_base;
struct acme_store;
struct acme_ondemand;
struct dm_worker;
struct dm_conn;
struct dm_upstream_conn;
struct dm_dns_cache;

/* Hard caps chosen for memory safety; the configurable limits are below them. */
#define DM_MAX_HEADERS_CAP 1000
/* Stop reading a side while the other side's output holds more than this,
 * resume below the low mark: bounds memory per proxied stream. */
#define DM_BUF_HIGH (256 * 1024)
#define DM_BUF_LOW  (64 * 1024)
/* One recv into this reads a whole TLS record (16 KiB + header + overhead). */
#define DM_RBUF_SIZE (17 * 1024)
/* Free read buffers a worker keeps for reuse. */
#define DM_RBUF_CACHE 64
/* Bytes of pipelined input buffered while a request is in flight. */
#define DM_PIPELINE_MAX (64 * 1024)

/* Host -> site routing table of one generation (route.c). */
struct dm_route;
struct dm_pool;

/* A runtime generation: the config snapshot and the structures built from it.
 * Immutable and refcounted; each connection holds the one it started with. */
struct dm_gen {
    atomic_int refs;
    struct cfg *cfg;        /* ref */
    struct dm_route *route; /* owned */
    uint16_t *site_metric;  /* owned: metrics label index of each cfg site */
    struct dm_pool **pools; /* owned: backend pool of each cfg site (balancer.c) */
    uint32_t max_headers;
    struct dm_http1_limits req_limits;
    struct dm_http1_limits resp_limits;
};

struct dm_gen *dm_gen_new(struct cfg *cfg, struct dm_err *err);
struct dm_gen *dm_gen_ref(struct dm_gen *g);
void dm_gen_unref(struct dm_gen *g);

/* route.c: site for a lower-case host (no port); NULL if none. */
struct dm_route *dm_route_new(const struct cfg *cfg);
void dm_route_free(struct dm_route *r);
const struct cfg_site *dm_route_find(const struct dm_route *r, const char *host, size_t host_len);

/* ---- Backends (backend.c): process-wide state of each backend of each site.
 * One record per (site, address), shared by every generation that lists the
 * pair: a reload keeps health, counters and in-flight counts. Records live in
 * a registry guarded by a mutex taken only when generations are built or
 * freed and by the admin API; the request path touches only the atomics.
 * Ownership: each generation's pool holds one reference per backend; the
 * health-check thread holds one per probed backend. docs/architecture.md,
 * "Backends". */
#define DM_BACKEND_REASON_MAX 160

struct dm_backend {
    atomic_int refs;
    char *site;            /* owned: the site's key (its hosts, comma-separated; "*" if none) */
    char *label;           /* owned: the site's first host (metrics label, logs) */
    char *address;         /* owned: as written in "to" */
    char id[17];           /* opaque cookie value naming this backend (hex, no address) */
    uint64_t hash;         /* the same as a number (ip_hash) */
    atomic_bool active_up; /* active checks (true when none run) */
    atomic_uint_fast64_t down_until_ms;     /* passive: no traffic before (mono ms) */
    atomic_uint passive_fails;              /* failures in the current window */
    atomic_uint_fast64_t passive_window_ms; /* window start (mono ms) */
    atomic_int in_flight;                   /* requests holding a slot, all workers */
    atomic_uint_fast64_t requests;          /* attempts sent to it */
    atomic_uint_fast64_t failures;          /* failed attempts (connect, reset, timeout, status) */
    atomic_uint_fast64_t last_check_s;      /* wall time of the last active check, 0 = none */
    atomic_int last_check_status;           /* its HTTP status, 0 = no response */
    pthread_mutex_t reason_lock;            /* guards reason (transitions and admin only) */
    char reason[DM_BACKEND_REASON_MAX];     /* why it is down; "" when up */
    struct dm_backend *next;                /* registry list */
};

/* dm_backend_get returns a new reference to the record of (site, address),
 * made up if it does not exist. NULL on allocation failure. */
struct dm_backend *dm_backend_get(const char *site, const char *label, const char *address);
struct dm_backend *dm_backend_ref(struct dm_backend *b);
void dm_backend_unref(struct dm_backend *b);
/* dm_backend_is_live: not marked down by active checks nor by passive ones. */
bool dm_backend_is_live(const struct dm_backend *b, uint64_t now_ms);
/* dm_backend_on_failure counts a failed attempt for passive health (p) and
 * the metrics; marks the backend down when p->fails fall within p->window
 * and the site has other backends (a lone one marked down would only turn
 * its errors into 503s). */
void dm_backend_on_failure(struct dm_backend *b, const struct cfg_passive *p, size_t num_backends,
                           const char *why);
/* dm_backend_set_active records an active check's verdict (health thread). */
void dm_backend_set_active(struct dm_backend *b, bool is_up, const char *why);
void dm_backend_reason(struct dm_backend *b, char *out, size_t cap);
/* dm_backend_foreach calls fn on every record under the registry lock
 * (admin API, metrics). */
void dm_backend_foreach(void (*fn)(struct dm_backend *b, void *arg), void *arg);
uint64_t dm_mono_ms(void);

/* ---- Selection (balancer.c): a site's backends in one generation. */
struct dm_pool {
    const struct cfg_site *site; /* borrowed from the generation's cfg */
    size_t num;
    struct dm_backend **be; /* refs, num entries, in "to" order */
    char **set_cookie;      /* owned: "NAME=ID; Path=/; HttpOnly; Secure" per backend */
    uint16_t *sched;        /* owned: smooth weighted round-robin order of indexes */
    uint32_t sched_len;
    atomic_uint cursor; /* shared by the workers */
};

/* Results of dm_pool_pick besides a backend index. */
#define DM_PICK_DOWN (-1) /* no live backend left (or every live one was tried) */
#define DM_PICK_FULL (-2) /* live ones exist but all are at max_connections */

/* What a pick may look at: the client's address (ip_hash) and the cookie
 * value it sent (cookie), both optional. */
struct dm_pick_in {
    const struct sockaddr *peer;
    const char *cookie; /* value of the policy's cookie, NULL if absent */
    size_t cookie_len;
    uint64_t tried; /* bit i: backend i was tried by this request */
};

struct dm_pool *dm_pool_new(const struct cfg_site *site);
void dm_pool_free(struct dm_pool *p);
/* dm_pool_pick chooses a live backend not tried yet with a free slot and
 * takes the slot (in_flight + 1; release with dm_pool_release). Returns its
 * index, DM_PICK_DOWN or DM_PICK_FULL. *out_sticky_miss tells the cookie
 * policy's caller to set the cookie. No locks, no allocation. */
int dm_pool_pick(struct dm_pool *p, const struct dm_pick_in *in, uint64_t now_ms,
                 bool *out_sticky_miss);
void dm_pool_release(struct dm_backend *b);

/* ---- Active health checks (health.c): one thread with its own loop. */
int dm_health_start(void);
/* dm_health_update makes the probes follow cfg's sites (called by the
 * control thread for each config it publishes; starts the thread). */
void dm_health_update(struct cfg *cfg);
void dm_health_stop(void);

/* Process-wide state every worker reads (set up before workers start). */
struct dm_proxy {
    SSL_CTX *ssl_ctx;               /* owned: shared by all workers */
    struct acme_store *store;       /* borrowed */
    struct acme_ondemand *ondemand; /* borrowed; NULL: no on-demand service */
    atomic_int num_conns;           /* open client connections, all workers */
    atomic_uint_fast64_t next_conn_id;
    atomic_int access_fd; /* access_slot while the access log is on, -1 when off */
    int access_slot;      /* owned: the log's fixed descriptor (worker.c); control thread */
    char *access_dest;    /* owned: log.access as applied: a path, "stderr" or "off" */
};

extern struct dm_proxy dm_proxy_g;

/* tls.c */
SSL_CTX *dm_tls_ctx_new(struct dm_err *err);
/* dm_tls_fail_reason classifies a failed handshake from SSL_get_error's
 * result and the error queue (peeked, not cleared). */
enum dm_tls_fail dm_tls_fail_reason(int ssl_error);

/* tls_bio.c: the buffered socket BIO of client TLS connections. */
int dm_tls_bio_init(void);
BIO *dm_tls_bio_new(struct dm_conn *c);
void dm_conn_rbuf_release(struct dm_conn *c);
void dm_worker_rbufs_free(struct dm_worker *w);
/* Index of the struct dm_conn pointer in SSL ex_data. */
extern int dm_tls_conn_index;

/* Connection states. */
enum dm_conn_state {
    DM_CONN_HANDSHAKE = 0, /* TLS handshake in progress */
    DM_CONN_IDLE,          /* keep-alive: waiting for the first byte of a request */
    DM_CONN_HEAD,          /* reading a request head */
    DM_CONN_PROXY,         /* a request is being forwarded */
    DM_CONN_TUNNEL,        /* upgraded (WebSocket): raw bytes both ways */
    DM_CONN_H2,            /* HTTP/2: http2.c drives the connection */
    DM_CONN_CLOSING,       /* flushing the last response, then close */
};

struct dm_h2;

/* One request/response exchange on a client connection: the request model
 * both protocols feed (docs/architecture.md, "Streams"). An HTTP/1.x
 * connection embeds one (c->r) and serves its requests one after another; an
 * HTTP/2 connection has one per open stream (http2.c). Routing, header
 * rewriting, backend forwarding (upstream.c), local error answers and the
 * access log work on this struct and never on the wire format. */
struct dm_stream {
    struct dm_conn *c;       /* borrowed: the connection carrying the exchange */
    int32_t h2_id;           /* HTTP/2 stream id; 0 for HTTP/1.x */
    struct evbuffer *out;    /* response bytes for the client: c->out (borrowed) for
                                HTTP/1.x, the stream's own buffer (owned) for HTTP/2 */
    struct dm_http1_msg msg; /* the request head; its strings are valid only while
                                the head is handled (they point into c->in, or
                                into the HTTP/2 stream's header storage) */
    struct dm_http1_chunked req_chunked;
    uint64_t req_body_left; /* Content-Length bytes still to forward */
    bool req_body_done;
    bool keep_alive; /* HTTP/1.x: answer keeps the connection open */
    bool is_head;
    bool resp_started; /* a response head went to the client */
    bool is_http10;
    bool dechunk; /* a chunked response is de-chunked (HTTP/1.0 client, or HTTP/2) */
    int status;
    uint64_t resp_bytes; /* bytes of response body written (for logs) */
    uint64_t req_start_us;
    char method[16];
    char host[256];
    char path[512];              /* truncated copy for the access log */
    const struct cfg_site *site; /* borrowed from gen */
    struct dm_upstream_conn *up; /* the backend connection serving this request */
    const char *backend;         /* borrowed from gen: backend address text */
    struct dm_pool *pool;        /* borrowed from gen: the site's backends */
    int be_idx;                  /* index in pool of the current attempt's backend, -1 none */
    uint64_t tried;              /* bit i: backend i was tried */
    uint32_t attempts;           /* backends tried after the first */
    uint64_t retry_deadline_us;  /* no new attempt after this (retry_timeout) */
    const char *set_cookie;      /* borrowed from pool: Set-Cookie value, NULL if none */
    const char *error_headers;   /* extra fields of a local error answer (Retry-After) */
    struct evbuffer *trailers;   /* owned, HTTP/2 only: response trailer lines
                                    ("name: value\r\n") from a chunked backend body */
};

/* A client connection (TLS or the plain-HTTP redirect port). Belongs to one
 * worker's loop. */
struct dm_conn {
    uint64_t id;
    struct dm_worker *w; /* borrowed */
    struct dm_gen *gen;  /* ref: the generation this connection started with */
    int fd;
    SSL *ssl; /* owned; NULL on the plain-HTTP port */
    enum dm_conn_state state;
    struct event rev, wev, timer;
    struct evbuffer *in, *out; /* owned */
    struct sockaddr_storage peer;
    socklen_t peer_len;
    char peer_ip[48];
    bool peer_trusted;               /* peer is in trusted_proxies */
    char sni[256];                   /* lower-case SNI, "" if none */
    const struct cfg_site *sni_site; /* borrowed from gen */
    bool is_acme_alpn;               /* tls-alpn-01 validation: close after the handshake */
    /* On-demand: the handshake waits for a certificate being ordered. */
    bool is_od_listed;                 /* on the worker's od_waiting list */
    bool is_od_expired;                /* wait_timeout passed: fail the handshake */
    uint64_t od_wait_us;               /* when the wait began; 0 if none */
    struct dm_conn *od_prev, *od_next; /* worker's od_waiting list */
    uint8_t *rbuf;                     /* owned while it holds unread socket bytes (tls_bio.c) */
    uint32_t rbuf_off, rbuf_len;
    bool sock_drained;           /* the last recv found no more bytes in the socket */
    struct dm_conn *prev, *next; /* worker's list */

    /* HTTP/1.x: the current request (one at a time; pipelined ones wait in
     * the input buffer). */
    struct dm_http1_parser parser;
    struct dm_stream r;
    struct dm_h2 *h2; /* owned: the HTTP/2 session when ALPN chose h2, else NULL */
    bool want_close;  /* close after this response (errors, shutdown) */
    bool read_paused; /* backpressure */
    bool eof;         /* client closed its side */
    int refs;         /* holds during callback dispatch */
    bool ip_counted;  /* counted in the worker's per-IP table (limits.c) */
    bool closed;
    bool lingering; /* response sent, write side shut, discarding input */
};

/* A worker: one thread, one event_base, its own listeners and pools. */
struct dm_worker {
    int id;
    struct event_base *base;        /* owned */
    struct evdns_base *dns;         /* owned */
    struct dm_dns_cache *dns_cache; /* owned: backend names with their TTL (dns_cache.c) */
    struct dm_gen *gen;             /* ref: generation for new connections */
    struct event *listen_evs[4];
    int listen_fds[4];
    bool listen_is_tls[4];
    uint16_t listen_ports[4];
    int num_listeners;
    struct event *msg_ev;            /* woken by the control thread */
    atomic_int pending_msg;          /* DM_WORKER_MSG_* bits */
    struct dm_gen *_Atomic next_gen; /* handed over with DM_WORKER_MSG_GEN */
    struct dm_conn *conns;           /* list of open connections */
    struct dm_conn *od_waiting;      /* handshakes waiting for on-demand certificates */
    int num_conns;
    bool draining;
    /* Requests waiting for a backend connection slot (max_connections),
     * oldest first (upstream.c). */
    struct dm_upstream_conn *queue_head, *queue_tail;
    struct event *queue_ev; /* owned: wakes the queue after a slot was freed */
    atomic_int num_queued;  /* the queue's length, read by other workers */
    struct event *drain_timer;
    struct event *grace_timer; /* owned: closes connections of older generations */
    atomic_uint stop_deadline_ms;
    struct dm_upstream_pool *pools; /* per backend idle connections */
    /* Parsed fields point into a connection's input buffer only while its
     * head is being handled, synchronously; one array per direction per
     * worker is enough and keeps idle connections small. */
    struct dm_http1_header req_fields[DM_MAX_HEADERS_CAP];
    struct dm_http1_header resp_fields[DM_MAX_HEADERS_CAP];
    uint8_t *free_rbufs[DM_RBUF_CACHE]; /* owned: TLS read buffers for reuse */
    int num_free_rbufs;
    struct dm_metrics *metrics; /* borrowed: metrics.c's registry owns it; may be NULL */
    struct dm_iptable *ips;     /* owned: per-IP limits; NULL if out of memory (no limits) */
    pthread_t thread;
};

#define DM_WORKER_MSG_STOP  1
#define DM_WORKER_MSG_GEN   2
#define DM_WORKER_MSG_FORCE 4
#define DM_WORKER_MSG_OD    8  /* on-demand news: retry waiting handshakes */
#define DM_WORKER_MSG_QUEUE 16 /* a backend slot was freed on another worker */

/* conn.c */
void dm_conn_accept(struct dm_worker *w, int fd, struct sockaddr *sa, socklen_t sa_len,
                    bool is_tls);
/* dm_conn_drain asks an idle connection to close and a busy one to close after
 * its current response. */
void dm_conn_drain(struct dm_conn *c);
void dm_conn_force_close(struct dm_conn *c);
/* dm_conn_od_retry resumes a handshake that waited for an on-demand
 * certificate (it may wait again); the worker unlisted it already. */
void dm_conn_od_retry(struct dm_conn *c);

/* request.c: the request path both protocols share. Called by upstream.c
 * while forwarding; each dispatches to the stream's protocol. */
void dm_stream_on_upstream_head(struct dm_stream *s, struct dm_http1_msg *resp,
                                struct evbuffer *resp_buf, size_t head_len);
void dm_stream_on_upstream_data(struct dm_stream *s);
void dm_stream_on_upstream_done(struct dm_stream *s, bool backend_reusable);
void dm_stream_on_upstream_error(struct dm_stream *s, int status, const char *why);
/* The backend's output fell below the low mark: take more request body. */
void dm_stream_on_upstream_writable(struct dm_stream *s);
/* The backend's output rose above the high mark: stop taking request body. */
void dm_stream_on_upstream_full(struct dm_stream *s);

/* dm_stream_begin fills s's log fields from s->msg and resets per-request
 * state; the request head must be in s->msg. */
void dm_stream_begin(struct dm_stream *s);
/* dm_request_prepare runs the shared request path on s->msg: host, ACME
 * http-01, the HTTPS redirect, routing, the SNI/site check, the choice of a
 * backend (balancer.c), then writes the backend's request head into hb.
 * head_len bytes of the head are consumed from the connection input
 * (HTTP/1.x) before any answer. Returns 1 with *out_addr set when the request
 * goes to a backend (NULL: every backend is at its connection limit, the
 * request waits in the queue), 0 when it was answered here
 * (dm_stream_respond ran), -1 when the connection must close. */
int dm_request_prepare(struct dm_stream *s, size_t head_len, struct evbuffer *hb,
                       const struct cfg_addr **out_addr);
/* dm_stream_respond answers s with a short response made by the proxy. */
void dm_stream_respond(struct dm_stream *s, int status, const char *content_type,
                       const char *extra_headers, const char *body, bool close_after);
/* dm_status_text returns the reason phrase of status. */
const char *dm_status_text(int status);
/* dm_resp_header_forwarded tells whether a backend response field h goes to
 * the client: hop-by-hop fields (RFC 9110 §7.6.1) never do, Content-Length
 * only when it frames the body. Used for both protocols. */
bool dm_resp_header_forwarded(const struct dm_http1_header *h, const struct dm_http1_msg *resp);
bool dm_header_is_hop_by_hop(const struct dm_http1_header *h, const struct dm_http1_msg *m);

/* conn.c: the HTTP/1.x side of the request path. */
void dm_h1_respond(struct dm_conn *c, int status, const char *content_type,
                   const char *extra_headers, const char *body, bool close_after);
void dm_h1_on_upstream_head(struct dm_conn *c, const struct dm_http1_msg *resp,
                            struct evbuffer *resp_buf, size_t head_len);
void dm_h1_on_upstream_data(struct dm_conn *c);
void dm_h1_on_upstream_done(struct dm_conn *c, bool backend_reusable);
void dm_h1_on_upstream_error(struct dm_conn *c, int status, const char *why);
void dm_h1_on_upstream_writable(struct dm_conn *c);
/* dm_conn_flush writes what the connection has queued; for HTTP/2 it first
 * lets the session produce frames. May close c (check c->closed). */
void dm_conn_flush(struct dm_conn *c);
/* dm_conn_schedule_flush asks for a flush from the loop (never inside the
 * caller's frame). */
void dm_conn_schedule_flush(struct dm_conn *c);
void dm_conn_set_timer(struct dm_conn *c, uint32_t ms);
void dm_conn_close(struct dm_conn *c);
void dm_conn_finish(struct dm_conn *c);

/* http2.c: HTTP/2 on client connections (nghttp2 server sessions). */
/* dm_h2_start makes the session of c (ALPN chose h2) and queues our SETTINGS.
 * Returns 0, or -1 (the caller closes c). */
int dm_h2_start(struct dm_conn *c);
/* dm_h2_on_input feeds c->in to the session. */
void dm_h2_on_input(struct dm_conn *c);
/* dm_h2_produce moves frames from the session into c->out, up to a bound.
 * Returns true if the session is finished (nothing to read or write). */
bool dm_h2_produce(struct dm_conn *c);
/* dm_h2_on_progress re-arms the connection timer after bytes went out. */
void dm_h2_on_progress(struct dm_conn *c);
/* dm_h2_after_flush runs once c->out has drained: resumes paused backends. */
void dm_h2_after_flush(struct dm_conn *c);
/* dm_h2_drain sends GOAWAY; open streams finish (graceful shutdown). */
void dm_h2_drain(struct dm_conn *c);
/* dm_h2_free frees the session and every stream (connection close). */
void dm_h2_free(struct dm_conn *c);
void dm_h2_on_timeout(struct dm_conn *c);
void dm_h2_respond(struct dm_stream *s, int status, const char *content_type,
                   const char *extra_headers, const char *body);
void dm_h2_on_upstream_head(struct dm_stream *s, const struct dm_http1_msg *resp,
                            struct evbuffer *resp_buf, size_t head_len);
void dm_h2_on_upstream_data(struct dm_stream *s);
void dm_h2_on_upstream_done(struct dm_stream *s, bool backend_reusable);
void dm_h2_on_upstream_error(struct dm_stream *s, int status, const char *why);
void dm_h2_on_upstream_writable(struct dm_stream *s);

/* upstream.c: backend connections and their idle pools. */
struct dm_upstream_conn;
struct dm_upstream_pool;

/* dm_upstream_start gets a backend connection for s's request (pooled or new)
 * and arranges for the head in head_buf to be sent first; addr NULL queues
 * the request until a backend has a free slot (upstream.queue_timeout). Results arrive via
 * dm_stream_on_upstream_*; never called back from inside this call. */
int dm_upstream_start(struct dm_stream *s, const struct cfg_addr *addr, struct evbuffer *head_buf);
/* The evbuffer to append request body bytes to (NULL if gone). */
struct evbuffer *dm_upstream_output(struct dm_upstream_conn *u);
size_t dm_upstream_output_len(struct dm_upstream_conn *u);
/* dm_upstream_kick flushes output after the conn appended body bytes. */
void dm_upstream_kick(struct dm_upstream_conn *u);
/* dm_upstream_request_done tells the backend side the request body ended. */
void dm_upstream_request_done(struct dm_upstream_conn *u);
/* The evbuffer holding unread response bytes (after the head). */
struct evbuffer *dm_upstream_input(struct dm_upstream_conn *u);
/* dm_upstream_resume restarts reading the backend (client drained below low). */
void dm_upstream_resume(struct dm_upstream_conn *u);
void dm_upstream_pause(struct dm_upstream_conn *u);
/* dm_upstream_shutdown_write sends the backend a FIN once its pending output
 * is written (a tunnel whose client finished sending; HTTP/2 WebSockets). */
void dm_upstream_shutdown_write(struct dm_upstream_conn *u);
/* dm_upstream_detach unlinks the client; the backend connection is closed
 * (or pooled if reusable and the exchange completed). */
void dm_upstream_detach(struct dm_upstream_conn *u, bool reusable);
void dm_upstream_pools_free(struct dm_worker *w);
/* dm_upstream_is_queued: u still waits for a backend slot (no connection). */
bool dm_upstream_is_queued(const struct dm_upstream_conn *u);
/* dm_upstream_queue_kick runs w's queue soon: a slot may be free. */
void dm_upstream_queue_kick(struct dm_worker *w);
/* worker.c: dm_workers_wake_queues tells the other workers with requests
 * in their queue that a backend slot was freed (self ran its own queue). */
void dm_workers_wake_queues(const struct dm_worker *self);
/* dm_request_pick chooses the backend of s's next attempt in s->pool:
 * returns an index, DM_PICK_DOWN or DM_PICK_FULL (request.c). */
int dm_request_pick(struct dm_stream *s);
/* dm_upstream_pools_close_idle closes the parked connections (shutdown). */
void dm_upstream_pools_close_idle(struct dm_worker *w);

/* chunked_io.c: runs the chunked decoder ch over src until src is empty or
 * the body ends, moving every consumed byte to dst (or only the data when
 * dechunk). *out_data_bytes counts data moved. Returns 0, or -1 on bad
 * framing. */
int dm_chunked_move(struct dm_http1_chunked *ch, struct evbuffer *src, struct evbuffer *dst,
                    bool dechunk, uint64_t *out_data_bytes);
/* dm_chunked_move_trailers de-chunks like dm_chunked_move and also keeps the
 * trailer section's field lines ("name: value\r\n") in trailers, which must
 * be empty at the start of the body (bounded by DM_HTTP1_MAX_TRAILER_BYTES
 * plus one size line). */
int dm_chunked_move_trailers(struct dm_http1_chunked *ch, struct evbuffer *src,
                             struct evbuffer *dst, struct evbuffer *trailers,
                             uint64_t *out_data_bytes);

/* access_log.c: one line per request to the access log (and its metrics). */
void dm_access_log(const struct dm_stream *s);

/* limits.c: per-client-IP limits (limits.per_ip_*), one line per hook.
 * dm_limits_accept_ok tells whether sa may open one more connection (false:
 * close it, counted as refused). dm_limits_conn_opened/_closed count c in the
 * worker's table. dm_limits_request takes a token for c's request: 0 if
 * allowed, else the seconds to wait, with "Retry-After: N\r\n" written into
 * retry_header for the 429. */
struct dm_iptable;
bool dm_limits_accept_ok(struct dm_worker *w, const struct sockaddr *sa);
void dm_limits_conn_opened(struct dm_conn *c);
void dm_limits_conn_closed(struct dm_conn *c);
uint32_t dm_limits_request(struct dm_conn *c, char *retry_header, size_t cap);

/* metrics hooks with the connection's context (metrics_conn.c). */
/* dm_metrics_on_request counts the request (HTTP/1.x or an HTTP/2 stream)
 * s has just answered. */
void dm_metrics_on_request(const struct dm_stream *s);
/* dm_metrics_on_handshake counts a finished handshake; ssl_error is
 * SSL_get_error's result when it failed (call before the queue is cleared). */
void dm_metrics_on_handshake(const struct dm_conn *c, bool is_ok, int ssl_error);
/* dm_metrics_on_timer counts a handshake timeout if c was in its handshake. */
void dm_metrics_on_timer(const struct dm_conn *c);

#endif
