/* The configuration snapshot's shape, shared by every module that reads it.
 * A struct cfg is immutable once loaded; it is refcounted (cfg_ref/cfg_unref)
 * so connections keep the generation they started with across reloads. */
#ifndef DM_CONFIG_CONFIG_TYPES_H
#define DM_CONFIG_CONFIG_TYPES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum cfg_addr_kind {
    CFG_ADDR_IP = 0,   /* literal IPv4/IPv6 address; ss is filled */
    CFG_ADDR_HOSTNAME, /* resolved at run time without blocking (evdns) */
    CFG_ADDR_UNIX,     /* unix socket path */
};

/* A backend address as written: "127.0.0.1:8080", "[::1]:8080",
 * "app.internal:8080", "unix:/run/app.sock". */
struct cfg_addr {
    enum cfg_addr_kind kind;
    char *text;                 /* owned: as written, for logs */
    char *host;                 /* owned: IP literal (no brackets) or hostname; NULL for unix */
    uint16_t port;              /* 0 for unix */
    char *path;                 /* owned: unix socket path, else NULL */
    struct sockaddr_storage ss; /* CFG_ADDR_IP and CFG_ADDR_UNIX */
    socklen_t ss_len;
};

enum cfg_tls_source {
    CFG_TLS_LOCAL = 0, /* doorman's own local CA issues and renews the certificate */
    CFG_TLS_FILES,     /* a PEM chain and key supplied by the user */
    CFG_TLS_ACME,      /* an ACME CA (RFC 8555) issues and doorman renews */
};

enum cfg_challenge {
    CFG_CHALLENGE_TLSALPN01 = 0, /* RFC 8737, answered inside the TLS handshake */
    CFG_CHALLENGE_HTTP01,        /* RFC 8555 §8.3, on the plain-HTTP port */
    CFG_CHALLENGE_DNS01,         /* RFC 8555 §8.4, through the user's hook program */
};

enum cfg_key_type {
    CFG_KEY_P256 = 0,
    CFG_KEY_P384,
    CFG_KEY_RSA2048,
    CFG_KEY_RSA4096,
};

/* An ACME issuer for a site. */
struct cfg_acme {
    char *directory;                  /* owned: directory URL */
    char *email;                      /* owned: contact, may be NULL */
    bool agree_tos;                   /* the user agreed to the CA's terms of service */
    char *ca_root;                    /* owned: PEM trusted for the CA's own HTTPS; NULL = system */
    enum cfg_challenge challenges[3]; /* in order of preference */
    size_t num_challenges;
    enum cfg_key_type key_type; /* certificate key */
    char *eab_kid;              /* owned: External Account Binding key id, may be NULL */
    char *eab_hmac_key;         /* owned: base64url HMAC key (secret; never logged) */
    char *profile;              /* owned: ACME profile name, may be NULL */
    char *preferred_chain;      /* owned: issuer CN of the chain to prefer, may be NULL */
    char *dns_hook;             /* owned: executable for dns-01, may be NULL */
    uint32_t order_timeout_ms;  /* one order, start to certificate */
    /* dns-01: wait after the hook's present succeeded, before the CA validates */
    uint32_t dns_propagation_ms;
    uint32_t orders_per_hour; /* ceiling of new orders per account and hour */
    uint32_t retry_first_ms;  /* first wait after a failed order; doubles up to 6 h */
    /* Other CAs tried in turn when this one keeps failing (tls.acme.fallback).
     * Each is a whole issuer with its own defaults, never inherited from this
     * one; their own num_fallbacks is always 0. */
    struct cfg_acme *fallbacks; /* owned array */
    size_t num_fallbacks;
};

/* On-demand TLS (tls.on_demand): certificates ordered during the first
 * handshake for a name nobody listed, when the permission policy allows it.
 * Defaults and meaning: docs/configuration.md. */
struct cfg_ondemand {
    char *ask;    /* owned: URL asked GET ?domain=NAME (2xx permits), NULL if none */
    char **allow; /* owned: lower-case patterns, exact or "*.suffix" (any depth) */
    size_t num_allow;
    uint32_t ask_timeout_ms;
    uint32_t ask_cache_ms; /* how long an answer of ask is reused */
    uint32_t orders_per_minute;
    uint32_t max_in_flight;
    uint32_t per_domain_per_hour; /* orders per registered domain and hour */
    uint32_t wait_timeout_ms;     /* how long a handshake waits for its certificate */
    uint32_t failure_backoff_ms;  /* first negative-cache period; doubles to an hour */
    uint32_t cache_capacity;      /* on-demand certificates held; least recently used go */
};

/* Backend selection (site key upstream.policy); docs/upstreams.md. */
enum cfg_lb_policy {
    CFG_LB_ROUND_ROBIN = 0, /* smooth weighted round robin */
    CFG_LB_LEAST_CONN,      /* fewest requests in flight per weight */
    CFG_LB_RANDOM_TWO,      /* two weighted random picks, the less busy wins */
    CFG_LB_IP_HASH,         /* client IP -> backend, stable while backends live */
    CFG_LB_COOKIE,          /* a cookie names the backend; round robin to start */
};

/* Per-backend options of a "to" item written as an object. */
struct cfg_backend_opts {
    uint32_t weight;          /* 1..100, default 1 */
    uint32_t max_connections; /* requests in flight per process; 0 = unlimited */
};

/* Active health checks (upstream.health_check); enabled when a path is set. */
struct cfg_health_check {
    char *path; /* owned: request target, NULL = no active checks */
    char *host; /* owned: Host header, NULL = the backend address */
    uint32_t interval_ms;
    uint32_t timeout_ms;
    uint16_t status_min, status_max; /* expected status range, inclusive */
    uint32_t fails;                  /* consecutive failures to mark down */
    uint32_t passes;                 /* consecutive passes to mark up */
};

/* Passive health (upstream.passive): failures of real requests. */
struct cfg_passive {
    uint32_t fails; /* failures within window that mark a backend down; 0 = off */
    uint32_t window_ms;
    uint32_t down_for_ms;
    uint64_t statuses[2]; /* bit (status - 500): response statuses counted as failures */
};

/* A site's backend pool: selection, retries, limits, health (docs/upstreams.md). */
struct cfg_upstream {
    enum cfg_lb_policy policy;
    char *cookie;              /* owned: cookie name of the cookie policy */
    uint32_t retries;          /* extra attempts on other backends */
    uint32_t retry_timeout_ms; /* total time budget of the attempts */
    uint32_t max_connections;  /* default per backend; 0 = unlimited */
    uint32_t queue_timeout_ms; /* wait for a free slot before 503 */
    struct cfg_health_check health;
    struct cfg_passive passive;
};

/* At most this many backends per site (selection keeps a 64-bit set of the
 * ones a request tried). */
#define CFG_MAX_BACKENDS 64

/* How doorman talks to a site's backends: site "upstream" object, keys
 * "protocol" and "tls" (config/validate_transport.c, docs/upstreams.md). */
enum cfg_up_protocol {
    CFG_UP_HTTP1 = 0, /* HTTP/1.1 (default) */
    CFG_UP_H2C,       /* HTTP/2 with prior knowledge over cleartext */
    CFG_UP_H2,        /* HTTP/2 over TLS (ALPN h2) */
};

struct ssl_ctx_st;

struct cfg_up_transport {
    enum cfg_up_protocol protocol;
    bool is_tls;
    bool verify;                /* verify the backend certificate (default true) */
    char *server_name;          /* owned: SNI and name verified; NULL: the backend host */
    char *ca_file;              /* owned: trusted roots; NULL: system roots */
    char *client_cert;          /* owned: mTLS chain, or NULL */
    char *client_key;           /* owned: mTLS key, or NULL */
    struct ssl_ctx_st *ssl_ctx; /* owned: client context built at load (is_tls) */
    char *pool_tag;             /* owned: what backend pools key on besides the address */
};

struct cfg_site {
    /* owned: lower-case names, exact or "*.example.com"; for an on-demand
     * site, patterns of the names it serves, and none at all (num_hosts 0)
     * makes it the catch-all for names no other site lists. */
    char **hosts;
    size_t num_hosts;
    struct cfg_addr *to; /* owned array: backends */
    size_t num_to;
    struct cfg_backend_opts *to_opts; /* owned array, num_to entries */
    struct cfg_upstream upstream;
    enum cfg_tls_source tls;
    char *cert_file;                    /* owned: CFG_TLS_FILES */
    char *key_file;                     /* owned: CFG_TLS_FILES */
    struct cfg_acme *acme;              /* owned: CFG_TLS_ACME */
    struct cfg_ondemand *on_demand;     /* owned: tls.on_demand (with acme), else NULL */
    struct cfg_up_transport *transport; /* owned: upstream.protocol/tls; NULL = plain HTTP/1.1 */
};

struct cfg_timeouts {
    uint32_t handshake_ms;    /* TLS handshake */
    uint32_t header_ms;       /* whole request head (slowloris) */
    uint32_t idle_ms;         /* keep-alive between requests */
    uint32_t body_ms;         /* max gap between body reads/writes on either side */
    uint32_t connect_ms;      /* backend connect */
    uint32_t response_ms;     /* backend response head after the request was sent */
    uint32_t shutdown_ms;     /* graceful shutdown deadline */
    uint32_t reload_grace_ms; /* after a reload, connections of older configs are closed
                                 once this has passed (WebSockets, long downloads) */
};

struct cfg_limits {
    uint32_t max_line;           /* request line bytes */
    uint32_t max_headers;        /* number of request fields */
    uint32_t max_header_bytes;   /* request head bytes */
    uint32_t max_connections;    /* per process; 0 = unlimited */
    uint32_t per_ip_connections; /* open connections per client IP and worker; 0 = unlimited */
    uint32_t per_ip_rate;        /* requests per second per client IP and worker; 0 = off */
    uint32_t per_ip_burst;       /* token bucket size for per_ip_rate (requests) */
};

/* HTTP/2 to clients (proxy/http2.c). */
struct cfg_http2 {
    bool enabled;                    /* ALPN offers h2 (default true) */
    uint32_t max_concurrent_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS (default 100) */
    uint32_t max_resets;             /* client RST_STREAMs per 10 s before GOAWAY (default 200) */
};

struct cfg_cidr {
    struct sockaddr_storage net; /* AF_INET or AF_INET6, host bits cleared */
    uint8_t prefix;
};

enum cfg_log_format {
    CFG_LOG_TEXT = 0,
    CFG_LOG_JSON,
    CFG_LOG_COMMON, /* access log only: NCSA common log format */
};

/* The admin API (proxy/admin.c): always on a unix socket in data_dir unless
 * disabled; optionally also on a loopback TCP address with a bearer token. */
struct cfg_admin {
    bool enabled;                      /* default true */
    char *listen;                      /* owned: "127.0.0.1:2019" as written, or NULL */
    struct sockaddr_storage listen_ss; /* valid when listen != NULL (a loopback address) */
    socklen_t listen_len;
    char *token; /* owned: bearer token for TCP (secret; never logged), NULL without listen */
};

struct cfg {
    atomic_int refs;
    uint64_t generation; /* increases with each load in a process */

    char *data_dir;      /* owned: absolute path */
    char *bind;          /* owned: listen address ("::" = all, dual stack) */
    uint16_t https_port; /* default 443 */
    uint16_t http_port;  /* default 80; 0 disables the plain-HTTP listener */
    bool redirect_http;  /* plain HTTP answers 308 to https (default true) */
    uint32_t workers;    /* 0 = one per core */

    struct cfg_timeouts timeouts;
    struct cfg_limits limits;
    struct cfg_http2 http2;

    struct cfg_cidr *trusted_proxies; /* owned: whose X-Forwarded-* are kept */
    size_t num_trusted_proxies;

    int log_level; /* enum dm_log_level */
    enum cfg_log_format log_format;
    char *access_log; /* owned: "stderr", "off" or a file path */
    enum cfg_log_format access_log_format;

    struct cfg_admin admin;

    uint32_t local_lifetime_s; /* local CA leaf lifetime (default 7 days; renewed with a
                                  third of it left) */

    struct cfg_site *sites; /* owned array */
    size_t num_sites;
};

#endif
