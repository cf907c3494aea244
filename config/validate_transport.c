/* The backend transport of a site: "upstream.protocol" (http1, h2c, h2) and
 * "upstream.tls" (true or {server_name, ca, verify, client_cert,
 * client_key}). Only these two keys of the site's "upstream" object are read
 * here; the rest of that object (balancing, health checks) is checked
 * elsewhere. The client SSL_CTX is built once per site at load, so a bad CA
 * file or client key is a config error and no connection pays for loading
 * files. */
#include "config/config_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "proxy/core/log.h"

#define TR_SYSTEM_CAS "/etc/ssl/certs/ca-certificates.crt"

static void tr_problem(struct check *k, const char *sub, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* tr_problem records "<site>.upstream<sub>: message"; sub is "" or keys
 * each led by a dot (".tls.ca"). */
static void tr_problem(struct check *k, const char *sub, const char *fmt, ...)
{
    char msg[CFG_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    size_t mark = cfg_check_push_key(k, "upstream");
    char keys[64];
    snprintf(keys, sizeof(keys), "%s", sub);
    char *save = NULL;
    for (char *key = strtok_r(keys, ".", &save); key != NULL; key = strtok_r(NULL, ".", &save)) {
        cfg_check_push_key(k, key);
    }
    cfg_check_problem(k, "%s", msg);
    cfg_check_pop(k, mark);
}

/* tr_session_on_new keeps the newest session of a backend for resumption:
 * the proxy points the SSL's app data at the slot of its backend pool
 * (proxy/upstream_tls.c), on the worker thread that owns the pool. */
static int tr_session_on_new(SSL *ssl, SSL_SESSION *sess)
{
    SSL_SESSION **slot = SSL_get_app_data(ssl);
    if (slot == NULL) {
        return 0;
    }
    if (*slot != NULL) {
        SSL_SESSION_free(*slot);
    }
    *slot = sess;
    return 1; /* we keep the reference */
}

/* tr_ssl_reason names the most specific queued error: the first one for
 * PEM files (the last only says "PEM routines"), else the last. */
static const char *tr_ssl_reason(bool first)
{
    uint32_t e = first ? ERR_peek_error() : ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    return r != NULL ? r : "unknown error";
}

static void tr_build_ctx(struct check *k, struct cfg_up_transport *t)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) {
        tr_problem(k, ".tls", "cannot make a TLS context");
        SSL_CTX_free(ctx);
        return;
    }
    ERR_clear_error();
    if (t->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        const char *ca = t->ca_file != NULL ? t->ca_file : TR_SYSTEM_CAS;
        if (!SSL_CTX_load_verify_locations(ctx, ca, NULL)) {
            tr_problem(k, t->ca_file != NULL ? ".tls.ca" : ".tls",
                       "cannot load CA certificates from %s: %s", ca, tr_ssl_reason(false));
        }
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    if (t->client_cert != NULL && t->client_key != NULL) {
        ERR_clear_error();
        if (!SSL_CTX_use_certificate_chain_file(ctx, t->client_cert)) {
            tr_problem(k, ".tls.client_cert", "cannot load %s: %s", t->client_cert,
                       tr_ssl_reason(true));
        } else if (!SSL_CTX_use_PrivateKey_file(ctx, t->client_key, SSL_FILETYPE_PEM)) {
            tr_problem(k, ".tls.client_key", "cannot load %s: %s", t->client_key,
                       tr_ssl_reason(true));
        } else if (!SSL_CTX_check_private_key(ctx)) {
            tr_problem(k, ".tls.client_key", "%s does not match client_cert %s", t->client_key,
                       t->client_cert);
        }
    }
    static const uint8_t alpn_h2[] = "\x02h2";
    static const uint8_t alpn_h1[] = "\x08http/1.1";
    if (t->protocol == CFG_UP_H2) {
        SSL_CTX_set_alpn_protos(ctx, alpn_h2, sizeof(alpn_h2) - 1);
    } else {
        SSL_CTX_set_alpn_protos(ctx, alpn_h1, sizeof(alpn_h1) - 1);
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(ctx, tr_session_on_new);
    ERR_clear_error();
    t->ssl_ctx = ctx;
}

static const char *const tls_keys[] = {"server_name", "ca", "verify", "client_cert", "client_key"};

static void tr_read_tls(struct check *k, json_t *v, struct cfg_up_transport *t)
{
    if (json_is_boolean(v)) {
        t->is_tls = json_is_true(v);
        return;
    }
    if (!json_is_object(v)) {
        tr_problem(k, ".tls", "expected true, false or an object");
        return;
    }
    t->is_tls = true;
    size_t mark = cfg_check_push_key(k, "upstream");
    cfg_check_push_key(k, "tls");
    cfg_check_keys(k, v, tls_keys, sizeof(tls_keys) / sizeof(tls_keys[0]));
    cfg_check_file(k, v, "ca", false, &t->ca_file);
    cfg_check_file(k, v, "client_cert", false, &t->client_cert);
    cfg_check_file(k, v, "client_key", false, &t->client_key);
    cfg_check_pop(k, mark);
    json_t *sn = json_object_get(v, "server_name");
    if (sn != NULL) {
        if (!json_is_string(sn) || json_string_length(sn) == 0 || json_string_length(sn) > 253 ||
            strpbrk(json_string_value(sn), " \t\r\n/") != NULL) {
            tr_problem(k, ".tls.server_name", "expected a host name or IP address");
        } else {
            t->server_name = strdup(json_string_value(sn));
        }
    }
    json_t *ver = json_object_get(v, "verify");
    if (ver != NULL) {
        if (!json_is_boolean(ver)) {
            tr_problem(k, ".tls.verify", "expected true or false");
        } else {
            t->verify = json_is_true(ver);
        }
    }
    bool has_cert = json_object_get(v, "client_cert") != NULL;
    bool has_key = json_object_get(v, "client_key") != NULL;
    if (has_cert != has_key) {
        tr_problem(k, has_cert ? ".tls" : ".tls", "\"client_cert\" and \"client_key\" go together");
    }
    if (!t->verify && t->ca_file != NULL) {
        tr_problem(k, ".tls.ca", "has no use with \"verify\": false");
    }
}

void cfg_transport_read(struct check *k, json_t *site, struct cfg_site *s)
{
    json_t *up = json_object_get(site, "upstream");
    if (up == NULL || !json_is_object(up)) {
        return; /* the "upstream" object's own type is checked with its other keys */
    }
    json_t *proto = json_object_get(up, "protocol");
    json_t *tls = json_object_get(up, "tls");
    if (proto == NULL && tls == NULL) {
        return;
    }
    size_t before = cfg_check_count(k);
    struct cfg_up_transport *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        tr_problem(k, "", "out of memory");
        return;
    }
    t->verify = true;
    if (proto != NULL) {
        const char *p = json_is_string(proto) ? json_string_value(proto) : "";
        if (strcmp(p, "http1") == 0) {
            t->protocol = CFG_UP_HTTP1;
        } else if (strcmp(p, "h2c") == 0) {
            t->protocol = CFG_UP_H2C;
        } else if (strcmp(p, "h2") == 0) {
            t->protocol = CFG_UP_H2;
            t->is_tls = true;
        } else {
            tr_problem(k, ".protocol", "must be \"http1\", \"h2c\" or \"h2\"");
        }
    }
    if (tls != NULL) {
        bool implied = t->protocol == CFG_UP_H2;
        tr_read_tls(k, tls, t);
        if (implied && !t->is_tls) {
            tr_problem(k, ".tls",
                       "\"h2\" is HTTP/2 over TLS and needs TLS (use \"h2c\" for "
                       "cleartext)");
        }
        if (t->protocol == CFG_UP_H2C && t->is_tls) {
            tr_problem(k, ".tls",
                       "\"h2c\" is cleartext HTTP/2 (use \"protocol\": \"h2\" for "
                       "HTTP/2 over TLS)");
        }
    }
    if (t->is_tls && t->verify && t->server_name == NULL) {
        for (size_t i = 0; i < s->num_to; i++) {
            if (s->to[i].kind == CFG_ADDR_UNIX) {
                tr_problem(k, ".tls",
                           "to[%zu] is a unix socket: set \"server_name\" to verify "
                           "the backend's certificate",
                           i);
                break;
            }
        }
    }
    if (t->is_tls && cfg_check_count(k) == before) {
        tr_build_ctx(k, t);
        if (!t->verify) {
            dm_log(DM_LOG_WARN, "config",
                   "%s.upstream.tls.verify is false: backend certificates are not checked",
                   cfg_check_path(k));
        }
    }
    char tag[1024];
    snprintf(tag, sizeof(tag), "%s|%s|%s|%s|%d|%s",
             t->protocol == CFG_UP_H2C  ? "h2c"
             : t->protocol == CFG_UP_H2 ? "h2"
                                        : "h1",
             t->is_tls ? "tls" : "tcp", t->server_name ? t->server_name : "",
             t->ca_file ? t->ca_file : "", (int)t->verify, t->client_cert ? t->client_cert : "");
    t->pool_tag = strdup(tag);
    if (t->pool_tag == NULL) {
        tr_problem(k, "", "out of memory");
    }
    s->transport = t;
}

void cfg_transport_free(struct cfg_up_transport *t)
{
    if (t == NULL) {
        return;
    }
    free(t->server_name);
    free(t->ca_file);
    free(t->client_cert);
    free(t->client_key);
    free(t->pool_tag);
    SSL_CTX_free(t->ssl_ctx);
    free(t);
}
