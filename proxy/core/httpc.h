/* Asynchronous HTTP/1.1 client over libevent and BoringSSL: the ACME client's
 * link to the CA, later the on-demand `ask` endpoint and health checks. One
 * struct dm_httpc per event_base resolves with evdns, verifies servers against
 * a CA bundle (hostname or IP checked) and keeps a small idle-connection pool
 * per origin. Every started call calls back exactly once, deferred, unless it
 * is canceled. Design and decisions: docs/httpc.md. */
#ifndef DM_CORE_HTTPC_H
#define DM_CORE_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/core/err.h"

struct event_base;
struct evdns_base;
struct dm_httpc;
struct dm_httpc_call;

/* Defaults used for zero (or NULL) fields of struct dm_httpc_opts. */
#define DM_HTTPC_DEFAULT_CA_FILE             "/etc/ssl/certs/ca-certificates.crt"
#define DM_HTTPC_DEFAULT_CONNECT_TIMEOUT_MS  10000
#define DM_HTTPC_DEFAULT_REQUEST_TIMEOUT_MS  30000
#define DM_HTTPC_DEFAULT_IDLE_TIMEOUT_MS     15000
#define DM_HTTPC_DEFAULT_MAX_IDLE_PER_ORIGIN 4
#define DM_HTTPC_DEFAULT_MAX_BODY            (1024 * 1024) /* ACME responses: 1 MiB (STYLE §4.5) */
#define DM_HTTPC_DEFAULT_USER_AGENT          "doorman"

/* Fixed bounds. A response head (status line, fields and any 1xx interim
 * heads before it) above DM_HTTPC_MAX_HEAD_BYTES or with more than
 * DM_HTTPC_MAX_HEADERS fields fails with DM_E_LIMIT: CA and health-check
 * responses carry a dozen small fields, so 64 KiB is generous. */
#define DM_HTTPC_MAX_HEAD_BYTES 65536
#define DM_HTTPC_MAX_HEADERS    100
#define DM_HTTPC_MAX_URL        8192

/* DM_HTTPC_E_STALE is the code of a failure where a non-idempotent request
 * (POST, PATCH) was sent on a reused keep-alive connection that closed before
 * any byte of the response arrived. The server may or may not have processed
 * it, so httpc does not resend it (RFC 9110 §9.2.2); the caller may resend at
 * once if that is safe: the ACME client re-signs with a fresh nonce. Until
 * err.h grows a dedicated code it aliases DM_E_CANCELED, which httpc never
 * reports otherwise (a canceled call gets no callback). */
#define DM_HTTPC_E_STALE DM_E_STALE

struct dm_httpc_opts {
    const char *ca_file;          /* borrowed: PEM bundle to trust; NULL = default bundle */
    uint32_t connect_timeout_ms;  /* per address: TCP connect plus TLS handshake */
    uint32_t request_timeout_ms;  /* whole call, start to callback, retries included */
    uint32_t idle_timeout_ms;     /* how long a pooled connection may stay idle */
    uint32_t max_idle_per_origin; /* idle connections kept per scheme+host+port */
    size_t max_body;              /* response body, bytes; more fails with DM_E_LIMIT */
    const char *user_agent;       /* borrowed (copied): User-Agent value */
};

/* A header field. In a request both strings are the caller's; in a response
 * they are owned by the response. */
struct dm_httpc_header {
    const char *name;
    const char *value;
};

struct dm_httpc_req {
    const char *method; /* borrowed: "GET", "POST", ...; NULL = "GET" */
    const char *url;    /* borrowed: absolute http:// or https:// URL, no userinfo; an IPv6
                           literal in brackets; the fragment is not sent */
    const struct dm_httpc_header *headers; /* borrowed: extra fields (Content-Type, Accept,
                                              User-Agent overrides the default); Host,
                                              Content-Length, Transfer-Encoding, Connection,
                                              Keep-Alive, TE, Trailer, Upgrade, Expect and
                                              Accept-Encoding are httpc's and refused */
    size_t num_headers;
    const void *body; /* borrowed: request body, sent with Content-Length */
    size_t body_len;
};

struct dm_httpc_resp {
    int status;                      /* final status, 200..599 (1xx interim heads skipped) */
    struct dm_httpc_header *headers; /* owned: fields in received order (trailers dropped) */
    size_t num_headers;
    char *body;      /* owned: body_len bytes, then a NUL for convenience; never NULL */
    size_t body_len; /* bytes, at most opts.max_body */
};

/* dm_httpc_done_cb reports the end of a call: exactly one of resp (any HTTP
 * status, 4xx and 5xx included) and err is non-NULL. Both are borrowed and
 * valid only during the callback; the call handle is gone once it returns.
 * Codes: DM_E_IO (resolve, connect, reset), DM_E_TLS (handshake,
 * certificate), DM_E_PROTO (malformed or truncated response), DM_E_TIMEOUT,
 * DM_E_LIMIT (body or head too large), DM_E_NOMEM, DM_HTTPC_E_STALE. The
 * callback may start and cancel other calls; it must not call dm_httpc_free. */
typedef void (*dm_httpc_done_cb)(const struct dm_httpc_resp *resp, const struct dm_err *err,
                                 void *arg);

/* dm_httpc_new makes a client for base. dns is borrowed and must outlive the
 * client (free it with fail_requests = 1 so abandoned lookups are released);
 * NULL makes a resolver of our own from /etc/resolv.conf and /etc/hosts. o may
 * be NULL (all defaults). Returns NULL with err set (DM_E_TLS if the CA bundle
 * cannot be loaded, DM_E_CONFIG for a bad User-Agent, DM_E_NOMEM, DM_E_IO).
 * The process must ignore SIGPIPE (doorman's main does). */
struct dm_httpc *dm_httpc_new(struct event_base *base, struct evdns_base *dns,
                              const struct dm_httpc_opts *o, struct dm_err *err);

/* dm_httpc_free cancels every call in flight without calling back, closes
 * pooled connections and frees h. NULL does nothing. Not from a callback. */
void dm_httpc_free(struct dm_httpc *h);

/* dm_httpc_request_start starts req, copying all it needs from it. Returns the
 * call, whose cb runs exactly once, from the event loop, never from inside
 * this function; or NULL with err set (DM_E_PROTO for an invalid URL, method
 * or header, DM_E_NOMEM) and no callback. The call handle stays valid until
 * cb returns or dm_httpc_request_cancel. Idempotent requests are resent once
 * on a fresh connection when a reused one closes before any response byte;
 * others fail with DM_HTTPC_E_STALE then. */
struct dm_httpc_call *dm_httpc_request_start(struct dm_httpc *h, const struct dm_httpc_req *req,
                                             dm_httpc_done_cb cb, void *arg, struct dm_err *err);

/* dm_httpc_request_cancel stops call and frees it; its callback is not called
 * afterwards. NULL does nothing; inside the call's own callback it does
 * nothing either (the call ends when the callback returns). */
void dm_httpc_request_cancel(struct dm_httpc_call *call);

/* dm_httpc_num_idle returns how many connections sit in the idle pool. */
size_t dm_httpc_num_idle(const struct dm_httpc *h);

/* dm_httpc_resp_header finds the first field named name (ASCII
 * case-insensitive) and returns its value, borrowed from r, or NULL. */
const char *dm_httpc_resp_header(const struct dm_httpc_resp *r, const char *name);

/* dm_httpc_resp_parse decodes a whole response from data[0..len) the way a
 * call does, feeding it in pieces of step bytes (0: all at once) and then
 * signalling a clean end of stream; for tests and fuzzing. is_head: the
 * request was HEAD (no body). Returns 0 with *out_resp (free it with
 * dm_httpc_resp_free) and *out_used (bytes the response took; the rest would
 * make the connection unusable), or -1 with err set (DM_E_PROTO, DM_E_LIMIT,
 * DM_E_IO when data is empty, DM_E_NOMEM). */
int dm_httpc_resp_parse(struct dm_httpc_resp **out_resp, size_t *out_used, const void *data,
                        size_t len, size_t step, bool is_head, size_t max_body, struct dm_err *err);

/* dm_httpc_resp_free frees a response from dm_httpc_resp_parse. NULL does
 * nothing. (Responses passed to callbacks are freed by httpc.) */
void dm_httpc_resp_free(struct dm_httpc_resp *r);

#endif
