/* Backend transports (TLS, HTTP/2) under upstream.c's HTTP/1.1 exchange:
 * what a backend pool knows about how to reach its backend, and the TLS
 * byte layer (upstream_tls.c). The HTTP/2 layer (upstream_h2.c) carries one
 * exchange per stream; see docs/upstreams.md, "Backend transports". */
#ifndef DM_PROXY_UPSTREAM_TR_H
#define DM_PROXY_UPSTREAM_TR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>

#include "config/config_types.h"

struct evbuffer;
struct dm_worker;
struct dm_upstream_conn;
struct dm_uph2_conn;

/* Per backend pool (address + transport) and worker. */
struct dm_up_tr {
    char *tag; /* owned: cfg_up_transport.pool_tag, "" for plain HTTP/1.1 */
    enum cfg_up_protocol protocol;
    bool is_tls;
    SSL_CTX *ssl_ctx;        /* ref: the newest generation's context for this pool */
    char *tls_name;          /* owned: SNI and verified name; NULL: verify tls_ip */
    uint8_t tls_ip[16];      /* verified IP when tls_name is NULL */
    size_t tls_ip_len;       /* 4 or 16; 0: nothing to verify by (verify off) */
    SSL_SESSION *session;    /* owned: newest session, resumed by the next connection */
    struct dm_uph2_conn *h2; /* owned: HTTP/2 connections to this backend */
};

/* dm_up_tr_init fills tr for addr and t (NULL = plain HTTP/1.1). */
int dm_up_tr_init(struct dm_up_tr *tr, const struct cfg_addr *addr,
                  const struct cfg_up_transport *t);
/* dm_up_tr_refresh takes t's SSL_CTX after a reload (the CA file may say
 * something new) if t belongs to current, the worker's newest config; the
 * connections of older configs keep using what the pool has. */
void dm_up_tr_refresh(struct dm_up_tr *tr, const struct cfg_up_transport *t,
                      const struct cfg *current);
void dm_up_tr_cleanup(struct dm_up_tr *tr);
/* dm_up_tr_matches: does a pool for tr serve transport t? */
bool dm_up_tr_matches(const struct dm_up_tr *tr, const struct cfg_up_transport *t);

/* dm_uptls_new makes the client SSL for a connected fd (SNI, verified name,
 * session to resume). NULL on failure. */
SSL *dm_uptls_new(struct dm_up_tr *tr, int fd);
/* dm_uptls_handshake steps the handshake: 1 done, 0 wait (*out_want_write
 * tells which event), -1 failed with the reason in why. */
int dm_uptls_handshake(SSL *ssl, bool *out_want_write, char *why, size_t cap);
/* dm_uptls_read reads decrypted bytes: > 0, 0 at EOF/error, -1 with errno
 * EAGAIN when no bytes are ready. */
ssize_t dm_uptls_read(SSL *ssl, void *buf, size_t len);
/* dm_uptls_write writes from the front of out: bytes written, or -1 with
 * errno EAGAIN (socket full) or EPIPE (failed). */
int dm_uptls_write(SSL *ssl, struct evbuffer *out);
/* dm_uptls_idle_ok reads what arrived on a parked connection (session
 * tickets, close_notify): true if it can still be reused. */
bool dm_uptls_idle_ok(SSL *ssl);

/* upstream_h2.c: one exchange as a stream on a multiplexed HTTP/2
 * connection to the pool's backend. The request is read from u_out as
 * HTTP/1.1 (head, then Content-Length or chunked body); the response is
 * written to u_in as HTTP/1.1 (head, chunked body, trailers). */
struct dm_uph2_stream;
struct dm_uph2_stream *dm_uph2_open(struct dm_worker *w, struct dm_up_tr *tr,
                                    const struct cfg_addr *addr, struct dm_upstream_conn *u,
                                    struct evbuffer *u_in, struct evbuffer *u_out,
                                    uint32_t connect_ms);
/* dm_uph2_kick: u_out has new bytes (sent from the loop, not at once). */
void dm_uph2_kick(struct dm_uph2_stream *hs);
/* dm_uph2_pause stops (or restarts) opening the stream's receive window. */
void dm_uph2_pause(struct dm_uph2_stream *hs, bool paused);
/* dm_uph2_close lets go of hs (resets the stream if it is unfinished). */
void dm_uph2_close(struct dm_uph2_stream *hs);
/* dm_uph2_pool_close closes the pool's HTTP/2 connections (worker exit). */
void dm_uph2_pool_close(struct dm_up_tr *tr);

/* upstream.c, called by upstream_h2.c: response bytes were added to the
 * exchange's input; the stream failed (502 before the response started, an
 * abort after); the request output drained below DM_BUF_LOW. */
void dm_upstream_h2_on_input(struct dm_upstream_conn *u);
void dm_upstream_h2_on_error(struct dm_upstream_conn *u, const char *why);
void dm_upstream_h2_on_writable(struct dm_upstream_conn *u);

#endif
