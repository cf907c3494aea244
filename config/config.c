/* Configuration snapshots: loading (file -> JSON -> validate.c), lifetime
 * (atomic refcount; a snapshot never changes once returned), the effective
 * config as JSON (cfg_dump, which loads back to an equal snapshot), default
 * paths and host matching. Invariant: a struct cfg handed out has passed
 * validation in full. */
#include "config/config.h"

#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/mem.h>

#include "config/config_int.h"
#include "proxy/core/err.h"
#include "proxy/core/file.h"
#include "proxy/core/str.h"

/* Problems ------------------------------------------------------------------ */

void cfg_problems_add(struct cfg_problems *p, const char *fmt, ...)
{
    if (p == NULL || p->num_items >= CFG_MAX_PROBLEMS) {
        return;
    }
    char *item = NULL;
    if (p->num_items == CFG_MAX_PROBLEMS - 1) {
        item = strdup("too many problems; the rest are not shown");
    } else {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(NULL, 0, fmt, ap);
        va_end(ap);
        if (n >= 0 && (item = malloc((size_t)n + 1)) != NULL) {
            va_start(ap, fmt);
            vsnprintf(item, (size_t)n + 1, fmt, ap);
            va_end(ap);
        }
    }
    if (item == NULL) {
        return;
    }
    char **items = realloc(p->items, (p->num_items + 1) * sizeof(*items));
    if (items == NULL) {
        free(item);
        return;
    }
    items[p->num_items++] = item;
    p->items = items;
}

void cfg_problems_cleanup(struct cfg_problems *p)
{
    if (p == NULL) {
        return;
    }
    for (size_t i = 0; i < p->num_items; i++) {
        free(p->items[i]);
    }
    free(p->items);
    p->items = NULL;
    p->num_items = 0;
}

/* Loading -------------------------------------------------------------------- */

struct cfg *cfg_load_string(const char *json, size_t len, const char *name,
                            const char *data_dir_override, struct cfg_problems *out_problems)
{
    struct cfg_problems local = {0};
    struct cfg_problems *problems = out_problems != NULL ? out_problems : &local;
    struct cfg *c = NULL;
    json_t *root = NULL;
    json_error_t jerr;

    memset(problems, 0, sizeof(*problems));
    if (name == NULL) {
        name = "config";
    }
    if (json == NULL) {
        json = "";
        len = 0;
    }
    if (len > CFG_MAX_FILE_BYTES) {
        cfg_problems_add(problems, "%s: larger than %u bytes", name, CFG_MAX_FILE_BYTES);
        goto out;
    }
    /* Duplicate keys are rejected: with two "https_port" one silently wins. */
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (root == NULL) {
        if (jerr.line > 0) {
            cfg_problems_add(problems, "%s:%d:%d: %s", name, jerr.line,
                             jerr.column > 0 ? jerr.column : 1, jerr.text);
        } else {
            cfg_problems_add(problems, "%s: %s", name, jerr.text);
        }
        goto out;
    }
    if (!json_is_object(root)) {
        cfg_problems_add(problems, "%s: the top level must be an object ({ ... })", name);
        goto out;
    }
    c = cfg_build(root, name, data_dir_override, problems);
out:
    json_decref(root);
    cfg_problems_cleanup(&local);
    return c;
}

struct cfg *cfg_load_file(const char *path, const char *data_dir_override,
                          struct cfg_problems *out_problems)
{
    struct dm_err err = {0};
    char *data = NULL;
    size_t len = 0;
    if (dm_file_read(path, CFG_MAX_FILE_BYTES, &data, &len, &err) != 0) {
        if (out_problems != NULL) {
            memset(out_problems, 0, sizeof(*out_problems));
            cfg_problems_add(out_problems, "%s", err.msg);
        }
        return NULL;
    }
    struct cfg *c = cfg_load_string(data, len, path, data_dir_override, out_problems);
    free(data);
    return c;
}

/* Lifetime ------------------------------------------------------------------- */

struct cfg *cfg_ref(struct cfg *c)
{
    if (c != NULL) {
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    }
    return c;
}

static void cfg_acme_cleanup(struct cfg_acme *a)
{
    for (size_t i = 0; i < a->num_fallbacks; i++) {
        cfg_acme_cleanup(&a->fallbacks[i]);
    }
    free(a->fallbacks);
    free(a->directory);
    free(a->email);
    free(a->ca_root);
    free(a->eab_kid);
    if (a->eab_hmac_key != NULL) {
        OPENSSL_cleanse(a->eab_hmac_key, strlen(a->eab_hmac_key));
        free(a->eab_hmac_key);
    }
    free(a->profile);
    free(a->preferred_chain);
    free(a->dns_hook);
}

static void cfg_acme_free(struct cfg_acme *a)
{
    if (a == NULL) {
        return;
    }
    cfg_acme_cleanup(a);
    free(a);
}

static void cfg_free(struct cfg *c)
{
    for (size_t i = 0; i < c->num_sites; i++) {
        struct cfg_site *s = &c->sites[i];
        for (size_t j = 0; j < s->num_hosts; j++) {
            free(s->hosts[j]);
        }
        free(s->hosts);
        for (size_t j = 0; j < s->num_to; j++) {
            cfg_addr_cleanup(&s->to[j]);
        }
        free(s->to);
        cfg_upstream_cleanup(s);
        free(s->cert_file);
        free(s->key_file);
        cfg_acme_free(s->acme);
        cfg_transport_free(s->transport);
        if (s->on_demand != NULL) {
            free(s->on_demand->ask);
            for (size_t j = 0; j < s->on_demand->num_allow; j++) {
                free(s->on_demand->allow[j]);
            }
            free(s->on_demand->allow);
            free(s->on_demand);
        }
    }
    free(c->sites);
    free(c->trusted_proxies);
    free(c->access_log);
    free(c->admin.listen);
    if (c->admin.token != NULL) {
        OPENSSL_cleanse(c->admin.token, strlen(c->admin.token));
        free(c->admin.token);
    }
    free(c->bind);
    free(c->data_dir);
    free(c);
}

void cfg_unref(struct cfg *c)
{
    /* acq_rel: the last owner sees every other owner's reads finished. */
    if (c != NULL && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        cfg_free(c);
    }
}

/* Defaults and matching -------------------------------------------------------- */

int cfg_default_data_dir(char *buf, size_t cap)
{
    const char *env = getenv("DOORMAN_DATA_DIR");
    int n;
    if (env != NULL && env[0] != '\0') {
        n = snprintf(buf, cap, "%s", env);
    } else if (geteuid() == 0) {
        n = snprintf(buf, cap, "/var/lib/doorman");
    } else {
        /* XDG Base Directory: a relative XDG_DATA_HOME is invalid, ignore it. */
        const char *xdg = getenv("XDG_DATA_HOME");
        const char *home = getenv("HOME");
        struct passwd pw, *found = NULL;
        char pwbuf[4096];
        if (xdg != NULL && xdg[0] == '/') {
            n = snprintf(buf, cap, "%s/doorman", xdg);
            return n >= 0 && (size_t)n < cap ? 0 : -1;
        }
        if (home == NULL || home[0] != '/') {
            home = NULL;
            if (getpwuid_r(geteuid(), &pw, pwbuf, sizeof(pwbuf), &found) == 0 && found != NULL &&
                pw.pw_dir != NULL && pw.pw_dir[0] == '/') {
                home = pw.pw_dir;
            }
        }
        if (home == NULL) {
            return -1;
        }
        n = snprintf(buf, cap, "%s/.local/share/doorman", home);
    }
    return n >= 0 && (size_t)n < cap ? 0 : -1;
}

int cfg_host_matches(const char *pattern, const char *host, size_t host_len)
{
    size_t plen = strlen(pattern);
    if (plen >= 2 && pattern[0] == '*' && pattern[1] == '.') {
        /* "*.example.test" matches "a.example.test": exactly one non-empty
         * label in place of the star (RFC 6125 section 6.4.3). */
        const char *suffix = pattern + 1; /* ".example.test" */
        size_t slen = plen - 1;
        if (host_len <= slen) {
            return 0;
        }
        size_t label_len = host_len - slen;
        if (!dm_str_ieq(host + label_len, slen, suffix, slen)) {
            return 0;
        }
        return memchr(host, '.', label_len) == NULL;
    }
    return dm_str_ieq(pattern, plen, host, host_len);
}

/* Dump ----------------------------------------------------------------------- */

static const char *const log_level_names[] = {"error", "warn", "info", "debug", "trace"};

static const char *log_format_name(enum cfg_log_format f)
{
    return f == CFG_LOG_JSON ? "json" : f == CFG_LOG_COMMON ? "common" : "text";
}

/* put sets o[key] = v, stealing v; a NULL v (out of memory, or a string that
 * is not UTF-8) marks the dump failed. */
static void put(json_t *o, const char *key, json_t *v, bool *is_failed)
{
    if (v == NULL || json_object_set_new(o, key, v) != 0) {
        *is_failed = true;
    }
}

static void push(json_t *a, json_t *v, bool *is_failed)
{
    if (v == NULL || json_array_append_new(a, v) != 0) {
        *is_failed = true;
    }
}

static json_t *duration_json(uint64_t ms)
{
    char buf[32];
    cfg_duration_format(buf, sizeof(buf), ms);
    return json_string(buf);
}

/* dump_acme returns tls.acme (or one of its fallbacks) as JSON, or NULL with
 * *is_failed set. */
static json_t *dump_acme(const struct cfg_acme *a, bool is_redacted, bool *is_failed)
{
    static const char *const chal[] = {"tls-alpn-01", "http-01", "dns-01"};
    static const char *const kt[] = {"p256", "p384", "rsa2048", "rsa4096"};
    json_t *acme = json_object();
    json_t *ch = json_array();
    if (acme == NULL || ch == NULL) {
        *is_failed = true;
        json_decref(acme);
        json_decref(ch);
        return NULL;
    }
    put(acme, "ca", json_string(a->directory), is_failed);
    if (a->email != NULL) {
        put(acme, "email", json_string(a->email), is_failed);
    }
    put(acme, "agree_tos", json_boolean(a->agree_tos), is_failed);
    if (a->ca_root != NULL) {
        put(acme, "ca_root", json_string(a->ca_root), is_failed);
    }
    for (size_t i = 0; i < a->num_challenges; i++) {
        push(ch, json_string(chal[a->challenges[i]]), is_failed);
    }
    put(acme, "challenges", ch, is_failed);
    put(acme, "key_type", json_string(kt[a->key_type]), is_failed);
    if (a->eab_kid != NULL) {
        /* The dump round-trips, so it carries the HMAC key unless redacted
         * (what the admin API shows people). */
        json_t *eab = json_object();
        if (eab != NULL) {
            put(eab, "kid", json_string(a->eab_kid), is_failed);
            put(eab, "hmac_key", json_string(is_redacted ? CFG_REDACTED : a->eab_hmac_key),
                is_failed);
        }
        put(acme, "eab", eab, is_failed);
    }
    if (a->profile != NULL) {
        put(acme, "profile", json_string(a->profile), is_failed);
    }
    if (a->preferred_chain != NULL) {
        put(acme, "preferred_chain", json_string(a->preferred_chain), is_failed);
    }
    if (a->dns_hook != NULL) {
        put(acme, "dns_hook", json_string(a->dns_hook), is_failed);
    }
    put(acme, "order_timeout", duration_json(a->order_timeout_ms), is_failed);
    put(acme, "dns_propagation", duration_json(a->dns_propagation_ms), is_failed);
    put(acme, "orders_per_hour", json_integer(a->orders_per_hour), is_failed);
    put(acme, "retry_first", duration_json(a->retry_first_ms), is_failed);
    if (a->num_fallbacks > 0) {
        json_t *fb = json_array();
        for (size_t i = 0; fb != NULL && i < a->num_fallbacks; i++) {
            push(fb, dump_acme(&a->fallbacks[i], is_redacted, is_failed), is_failed);
        }
        put(acme, "fallback", fb, is_failed);
    }
    return acme;
}

static json_t *dump_ondemand(const struct cfg_ondemand *d, bool *is_failed)
{
    json_t *o = json_object();
    json_t *allow = json_array();
    if (o == NULL || allow == NULL) {
        *is_failed = true;
        json_decref(o);
        json_decref(allow);
        return NULL;
    }
    if (d->ask != NULL) {
        put(o, "ask", json_string(d->ask), is_failed);
    }
    for (size_t i = 0; i < d->num_allow; i++) {
        push(allow, json_string(d->allow[i]), is_failed);
    }
    put(o, "allow", allow, is_failed);
    put(o, "ask_timeout", duration_json(d->ask_timeout_ms), is_failed);
    put(o, "ask_cache", duration_json(d->ask_cache_ms), is_failed);
    put(o, "orders_per_minute", json_integer(d->orders_per_minute), is_failed);
    put(o, "max_in_flight", json_integer(d->max_in_flight), is_failed);
    put(o, "per_domain_per_hour", json_integer(d->per_domain_per_hour), is_failed);
    put(o, "wait_timeout", duration_json(d->wait_timeout_ms), is_failed);
    put(o, "failure_backoff", duration_json(d->failure_backoff_ms), is_failed);
    put(o, "cache_capacity", json_integer(d->cache_capacity), is_failed);
    return o;
}

static json_t *dump_upstream(const struct cfg_upstream *u, bool *is_failed)
{
    json_t *o = json_object();
    if (o == NULL) {
        *is_failed = true;
        return NULL;
    }
    put(o, "policy", json_string(cfg_upstream_policy_name(u->policy)), is_failed);
    put(o, "cookie", json_string(u->cookie), is_failed);
    put(o, "retries", json_integer(u->retries), is_failed);
    put(o, "retry_timeout", duration_json(u->retry_timeout_ms), is_failed);
    put(o, "max_connections", json_integer(u->max_connections), is_failed);
    put(o, "queue_timeout", duration_json(u->queue_timeout_ms), is_failed);
    const struct cfg_health_check *h = &u->health;
    if (h->path != NULL) {
        json_t *hc = json_object();
        put(hc, "path", json_string(h->path), is_failed);
        put(hc, "interval", duration_json(h->interval_ms), is_failed);
        put(hc, "timeout", duration_json(h->timeout_ms), is_failed);
        if (h->status_min == h->status_max) {
            put(hc, "status", json_integer(h->status_min), is_failed);
        } else {
            char cls[8];
            snprintf(cls, sizeof(cls), "%dxx", h->status_min / 100);
            put(hc, "status", json_string(cls), is_failed);
        }
        put(hc, "fails", json_integer(h->fails), is_failed);
        put(hc, "passes", json_integer(h->passes), is_failed);
        if (h->host != NULL) {
            put(hc, "host", json_string(h->host), is_failed);
        }
        put(o, "health_check", hc, is_failed);
    }
    const struct cfg_passive *p = &u->passive;
    json_t *pv = json_object();
    json_t *st = json_array();
    put(pv, "fails", json_integer(p->fails), is_failed);
    put(pv, "window", duration_json(p->window_ms), is_failed);
    put(pv, "down_for", duration_json(p->down_for_ms), is_failed);
    for (int i = 0; i < 100; i++) {
        if (p->statuses[i / 64] & (1ull << (i % 64))) {
            push(st, json_integer(500 + i), is_failed);
        }
    }
    put(pv, "statuses", st, is_failed);
    put(o, "passive", pv, is_failed);
    return o;
}

static json_t *dump_site(const struct cfg_site *s, bool is_redacted, bool *is_failed)
{
    json_t *o = json_object();
    json_t *hosts = json_array();
    json_t *to = json_array();
    if (o == NULL || hosts == NULL || to == NULL) {
        *is_failed = true;
        json_decref(o);
        json_decref(hosts);
        json_decref(to);
        return NULL;
    }
    for (size_t i = 0; i < s->num_hosts; i++) {
        push(hosts, json_string(s->hosts[i]), is_failed);
    }
    for (size_t i = 0; i < s->num_to; i++) {
        const struct cfg_backend_opts *bo = s->to_opts != NULL ? &s->to_opts[i] : NULL;
        if (bo == NULL || (bo->weight == 1 && bo->max_connections == s->upstream.max_connections)) {
            push(to, json_string(s->to[i].text), is_failed);
            continue;
        }
        json_t *item = json_object();
        put(item, "address", json_string(s->to[i].text), is_failed);
        put(item, "weight", json_integer(bo->weight), is_failed);
        put(item, "max_connections", json_integer(bo->max_connections), is_failed);
        push(to, item, is_failed);
    }
    put(o, "hosts", hosts, is_failed);
    put(o, "to", to, is_failed);
    put(o, "upstream", dump_upstream(&s->upstream, is_failed), is_failed);
    if (s->tls == CFG_TLS_FILES) {
        json_t *tls = json_object();
        if (tls != NULL) {
            put(tls, "cert", json_string(s->cert_file), is_failed);
            put(tls, "key", json_string(s->key_file), is_failed);
        }
        put(o, "tls", tls, is_failed);
    } else if (s->tls == CFG_TLS_ACME && s->acme != NULL) {
        json_t *tls = json_object();
        if (tls == NULL) {
            *is_failed = true;
            json_decref(o);
            return NULL;
        }
        put(tls, "acme", dump_acme(s->acme, is_redacted, is_failed), is_failed);
        if (s->on_demand != NULL) {
            put(tls, "on_demand", dump_ondemand(s->on_demand, is_failed), is_failed);
        }
        put(o, "tls", tls, is_failed);
    } else {
        put(o, "tls", json_string("local"), is_failed);
    }
    return o;
}

static json_t *dump_admin(const struct cfg_admin *a, bool is_redacted, bool *is_failed)
{
    json_t *o = json_object();
    if (o == NULL) {
        *is_failed = true;
        return NULL;
    }
    put(o, "enabled", json_boolean(a->enabled), is_failed);
    if (a->listen != NULL) {
        put(o, "listen", json_string(a->listen), is_failed);
    }
    if (a->token != NULL) {
        put(o, "token", json_string(is_redacted ? CFG_REDACTED : a->token), is_failed);
    }
    return o;
}

static char *dump(const struct cfg *c, bool is_redacted)
{
    if (c == NULL) {
        return NULL;
    }
    bool is_failed = false;
    char *text = NULL;
    json_t *root = json_object();
    json_t *timeouts = json_object();
    json_t *limits = json_object();
    json_t *proxies = json_array();
    json_t *log = json_object();
    json_t *local_ca = json_object();
    json_t *sites = json_array();
    if (root == NULL || timeouts == NULL || limits == NULL || proxies == NULL || log == NULL ||
        local_ca == NULL || sites == NULL) {
        json_decref(timeouts);
        json_decref(limits);
        json_decref(proxies);
        json_decref(log);
        json_decref(local_ca);
        json_decref(sites);
        goto out;
    }
    put(root, "data_dir", json_string(c->data_dir), &is_failed);
    put(root, "bind", json_string(c->bind), &is_failed);
    put(root, "https_port", json_integer(c->https_port), &is_failed);
    put(root, "http_port", json_integer(c->http_port), &is_failed);
    put(root, "redirect_http", json_boolean(c->redirect_http), &is_failed);
    put(root, "workers", json_integer(c->workers), &is_failed);

    const struct cfg_timeouts *t = &c->timeouts;
    put(timeouts, "handshake", duration_json(t->handshake_ms), &is_failed);
    put(timeouts, "header", duration_json(t->header_ms), &is_failed);
    put(timeouts, "idle", duration_json(t->idle_ms), &is_failed);
    put(timeouts, "body", duration_json(t->body_ms), &is_failed);
    put(timeouts, "connect", duration_json(t->connect_ms), &is_failed);
    put(timeouts, "response", duration_json(t->response_ms), &is_failed);
    put(timeouts, "shutdown", duration_json(t->shutdown_ms), &is_failed);
    put(timeouts, "reload_grace", duration_json(t->reload_grace_ms), &is_failed);
    put(root, "timeouts", timeouts, &is_failed);

    put(limits, "request_line", json_integer(c->limits.max_line), &is_failed);
    put(limits, "header_count", json_integer(c->limits.max_headers), &is_failed);
    put(limits, "header_bytes", json_integer(c->limits.max_header_bytes), &is_failed);
    put(limits, "max_connections", json_integer(c->limits.max_connections), &is_failed);
    put(limits, "per_ip_connections", json_integer(c->limits.per_ip_connections), &is_failed);
    put(limits, "per_ip_rate", json_integer(c->limits.per_ip_rate), &is_failed);
    put(limits, "per_ip_burst", json_integer(c->limits.per_ip_burst), &is_failed);
    put(root, "limits", limits, &is_failed);

    json_t *http2 = json_object();
    put(http2, "enabled", json_boolean(c->http2.enabled), &is_failed);
    put(http2, "max_concurrent_streams", json_integer(c->http2.max_concurrent_streams), &is_failed);
    put(http2, "max_resets", json_integer(c->http2.max_resets), &is_failed);
    put(root, "http2", http2, &is_failed);

    for (size_t i = 0; i < c->num_trusted_proxies; i++) {
        char buf[64];
        if (cfg_cidr_format(buf, sizeof(buf), &c->trusted_proxies[i]) != 0) {
            is_failed = true;
            continue;
        }
        push(proxies, json_string(buf), &is_failed);
    }
    put(root, "trusted_proxies", proxies, &is_failed);

    bool is_level_known =
        c->log_level >= 0 &&
        (size_t)c->log_level < sizeof(log_level_names) / sizeof(log_level_names[0]);
    put(log, "level", json_string(is_level_known ? log_level_names[c->log_level] : "info"),
        &is_failed);
    put(log, "format", json_string(log_format_name(c->log_format)), &is_failed);
    put(log, "access", json_string(c->access_log), &is_failed);
    put(log, "access_format", json_string(log_format_name(c->access_log_format)), &is_failed);
    put(root, "log", log, &is_failed);

    put(local_ca, "lifetime", duration_json((uint64_t)c->local_lifetime_s * CFG_MS_PER_S),
        &is_failed);
    put(root, "local_ca", local_ca, &is_failed);
    put(root, "admin", dump_admin(&c->admin, is_redacted, &is_failed), &is_failed);

    for (size_t i = 0; i < c->num_sites; i++) {
        push(sites, dump_site(&c->sites[i], is_redacted, &is_failed), &is_failed);
    }
    put(root, "sites", sites, &is_failed);

    if (!is_failed) {
        text = json_dumps(root, JSON_INDENT(2));
    }
out:
    json_decref(root);
    return text;
}

char *cfg_dump(const struct cfg *c)
{
    return dump(c, false);
}

char *cfg_dump_redacted(const struct cfg *c)
{
    return dump(c, true);
}
