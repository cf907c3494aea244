/* JSON -> struct cfg: walks a parsed document against the schema documented in
 * docs/configuration.md, fills defaults, and records every problem with its
 * JSON path ("sites[1].to[2]: ...") instead of stopping at the first. Also
 * builds the same snapshot from `doorman reverse-proxy` flags. A snapshot is
 * returned only when no problem was found; partial results are freed. */
#include "config/config_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "proxy/core/log.h"
#include "proxy/core/str.h"

#define DEFAULT_HTTPS_PORT       443
#define DEFAULT_HTTP_PORT        80
#define DEFAULT_BIND             "::"
#define DEFAULT_ACCESS_LOG       "stderr"
#define DEFAULT_LOCAL_LIFETIME_S (7u * 24 * 3600)
#define MAX_WORKERS              256

/* A path in a problem: the deepest is "sites[N].tls.cert" plus one unknown
 * key, and keys are cut at KEY_SHOW_MAX bytes. */
#define PATH_CAP     256
#define KEY_SHOW_MAX 64

/* Keys longer than this get no "did you mean": the longest known key has 15
 * bytes, so anything past 17 is more than 2 edits away. */
#define SUGGEST_MAX 24

/* Problems being collected and where the walk is. */
struct check {
    struct cfg_problems *problems; /* borrowed */
    size_t num_found;              /* problems found, kept or not */
    char path[PATH_CAP];           /* JSON path of the value being checked */
    size_t path_len;
    const char *name; /* borrowed: config file name, for relative tls paths */
    char *base_dir;   /* owned: absolute directory of name, computed on first use */
};

struct duration_key {
    const char *name;
    size_t offset; /* of the uint32_t in struct cfg_timeouts */
    uint32_t default_ms;
    uint32_t max_ms;
};

static const struct duration_key timeout_keys[] = {
    {"handshake", offsetof(struct cfg_timeouts, handshake_ms), 10 * CFG_MS_PER_S, CFG_MS_PER_D},
    {"header", offsetof(struct cfg_timeouts, header_ms), 10 * CFG_MS_PER_S, CFG_MS_PER_D},
    {"idle", offsetof(struct cfg_timeouts, idle_ms), 60 * CFG_MS_PER_S, CFG_MS_PER_D},
    {"body", offsetof(struct cfg_timeouts, body_ms), 60 * CFG_MS_PER_S, CFG_MS_PER_D},
    {"connect", offsetof(struct cfg_timeouts, connect_ms), 5 * CFG_MS_PER_S, CFG_MS_PER_D},
    {"response", offsetof(struct cfg_timeouts, response_ms), 60 * CFG_MS_PER_S, CFG_MS_PER_D},
    /* A shutdown that waits longer than an hour is a stuck deploy. */
    {"shutdown", offsetof(struct cfg_timeouts, shutdown_ms), 30 * CFG_MS_PER_S, CFG_MS_PER_H},
    /* Long enough that a reload never cuts ordinary traffic; WebSockets and
     * downloads older than this move to the new config by reconnecting. */
    {"reload_grace", offsetof(struct cfg_timeouts, reload_grace_ms), CFG_MS_PER_H, CFG_MS_PER_D},
};

struct limit_key {
    const char *name;
    size_t offset; /* of the uint32_t in struct cfg_limits */
    uint32_t min;
    uint32_t max;
    uint32_t def;
};

/* request_line >= 256: RFC 9112 section 3 recommends supporting at least 8000
 * octets, and a tiny limit only breaks clients. The upper bounds keep one
 * request head within a few MiB of memory. */
static const struct limit_key limit_keys[] = {
    {"request_line", offsetof(struct cfg_limits, max_line), 256, 65536, 8192},
    {"header_count", offsetof(struct cfg_limits, max_headers), 8, 1000, 100},
    {"header_bytes", offsetof(struct cfg_limits, max_header_bytes), 1024, 1048576, 65536},
    {"max_connections", offsetof(struct cfg_limits, max_connections), 0, 10000000, 0},
    {"per_ip_connections", offsetof(struct cfg_limits, per_ip_connections), 0, 1000000, 0},
    {"per_ip_rate", offsetof(struct cfg_limits, per_ip_rate), 0, 1000000, 0},
    {"per_ip_burst", offsetof(struct cfg_limits, per_ip_burst), 0, 1000000, 0},
};

static const char *const root_keys[] = {
    "data_dir", "bind",     "https_port", "http_port",       "redirect_http",
    "workers",  "timeouts", "limits",     "trusted_proxies", "log",
    "local_ca", "sites",    "admin",      "http2",
};
static const char *const admin_keys[] = {"enabled", "listen", "token"};
/* A shorter bearer token is guessable; 16 bytes of base64 carry 96 bits. */
#define ADMIN_TOKEN_MIN 16
static const char *const http2_keys[] = {"enabled", "max_concurrent_streams", "max_resets"};
static const char *const log_keys[] = {"level", "format", "access", "access_format"};
static const char *const local_ca_keys[] = {"lifetime"};
static const char *const site_keys[] = {"hosts", "to", "tls", "upstream"};
static const char *const tls_keys[] = {"cert", "key", "acme", "on_demand"};
static const char *const ondemand_keys[] = {
    "ask",           "ask_timeout",         "ask_cache",    "allow",           "orders_per_minute",
    "max_in_flight", "per_domain_per_hour", "wait_timeout", "failure_backoff", "cache_capacity",
};
static const char *const acme_keys[] = {
    "ca",
    "email",
    "agree_tos",
    "ca_root",
    "challenges",
    "key_type",
    "eab",
    "profile",
    "preferred_chain",
    "dns_hook",
    "order_timeout",
    "dns_propagation",
    "orders_per_hour",
    "retry_first",
    "fallback",
};
static const char *const eab_keys[] = {"kid", "hmac_key"};
static const char *const challenge_names[] = {"tls-alpn-01", "http-01", "dns-01"};
static const char *const key_type_names[] = {"p256", "p384", "rsa2048", "rsa4096"};
/* Let's Encrypt allows 300 new orders per account per 3 hours: 100 an hour
 * keeps a misconfigured fleet from ever reaching a CA's limit. */
#define DEFAULT_ORDERS_PER_HOUR  100
#define DEFAULT_ORDER_TIMEOUT_MS (5u * 60 * 1000)
/* dns-01: wait after the hook before asking the CA to validate. Provider APIs
 * answer before their authoritative servers serve the record; 10 s covers
 * most, and up to 10 minutes for slow secondaries (the order timeout must
 * then be longer). */
#define DEFAULT_DNS_PROPAGATION_MS (10u * 1000)
#define MAX_DNS_PROPAGATION_MS     (10u * 60 * 1000)
/* First retry after a failed order: a minute keeps a broken setup from
 * hammering the CA; tests shorten it (down to 1 s). The backoff doubles up
 * to 6 h, so more than an hour for the first step would make no sense. */
#define DEFAULT_RETRY_FIRST_MS (60u * 1000)
#define MAX_RETRY_FIRST_MS     (60u * 60 * 1000)
/* Fallback CAs per site: more than a few only delays the error an operator
 * must see. */
#define MAX_ACME_FALLBACKS 4

/* On-demand defaults: generous for a SaaS front door, far below what a CA
 * tolerates (Let's Encrypt: 300 new orders per 3 h per account, 50
 * certificates per registered domain per week). */
#define DEFAULT_OD_ASK_TIMEOUT_MS  (5u * 1000)
#define DEFAULT_OD_ASK_CACHE_MS    (10u * 60 * 1000)
#define DEFAULT_OD_ORDERS_PER_MIN  60
#define DEFAULT_OD_MAX_IN_FLIGHT   20
#define DEFAULT_OD_PER_DOMAIN_HOUR 100
#define DEFAULT_OD_WAIT_TIMEOUT_MS (20u * 1000)
#define DEFAULT_OD_FAIL_BACKOFF_MS (60u * 1000)
#define DEFAULT_OD_CACHE_CAPACITY  10000

#define NUM(a) (sizeof(a) / sizeof((a)[0]))

static atomic_uint_fast64_t cfg_generation;

/* Paths and problems -------------------------------------------------------- */

static void check_init(struct check *k, struct cfg_problems *problems)
{
    memset(k, 0, sizeof(*k));
    k->problems = problems;
}

static void path_append(struct check *k, const char *s)
{
    size_t n = strlen(s);
    if (k->path_len + n >= sizeof(k->path)) {
        n = sizeof(k->path) - 1 - k->path_len;
    }
    memcpy(k->path + k->path_len, s, n);
    k->path_len += n;
    k->path[k->path_len] = '\0';
}

/* path_set replaces the path (flag names such as "--to"). */
static void path_set(struct check *k, const char *s)
{
    k->path_len = 0;
    k->path[0] = '\0';
    path_append(k, s);
}

/* path_push_key appends ".key" (printable ASCII, cut at KEY_SHOW_MAX) and
 * returns the length to pass to path_pop. */
static size_t path_push_key(struct check *k, const char *key)
{
    size_t mark = k->path_len;
    char shown[KEY_SHOW_MAX + 5];
    size_t n = 0;
    const char *p = key;
    for (; *p != '\0' && n < KEY_SHOW_MAX; p++) {
        unsigned char ch = (unsigned char)*p;
        shown[n++] = (ch > 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (*p != '\0') {
        memcpy(shown + n, "...", 3);
        n += 3;
    }
    shown[n] = '\0';
    if (mark > 0) {
        path_append(k, ".");
    }
    path_append(k, shown);
    return mark;
}

static size_t path_push_index(struct check *k, size_t i)
{
    size_t mark = k->path_len;
    char s[32];
    snprintf(s, sizeof(s), "[%zu]", i);
    path_append(k, s);
    return mark;
}

static void path_pop(struct check *k, size_t mark)
{
    k->path_len = mark;
    k->path[mark] = '\0';
}

static void problem(struct check *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* problem records "path: message" for the value being checked. */
static void problem(struct check *k, const char *fmt, ...)
{
    char msg[CFG_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    k->num_found++;
    if (k->path_len > 0) {
        cfg_problems_add(k->problems, "%s: %s", k->path, msg);
    } else {
        cfg_problems_add(k->problems, "%s", msg);
    }
}

static void *check_calloc(struct check *k, size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL) {
        problem(k, "out of memory");
    }
    return p;
}

static char *check_strdup(struct check *k, const char *s)
{
    char *p = strdup(s);
    if (p == NULL) {
        problem(k, "out of memory");
    }
    return p;
}

static void quote(char *out, size_t cap, const char *s)
{
    cfg_quote(out, cap, s, strlen(s));
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        return "null";
    }
    return "value";
}

static void problem_type(struct check *k, const char *expected, const json_t *v)
{
    problem(k, "expected %s, got %s", expected, type_name(v));
}

/* Unknown keys ---------------------------------------------------------------- */

/* edit_distance is the optimal-string-alignment distance (insertions,
 * deletions, substitutions, adjacent swaps) between two short strings. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t d[SUGGEST_MAX + 1][SUGGEST_MAX + 1];
    if (la > SUGGEST_MAX || lb > SUGGEST_MAX) {
        return SIZE_MAX;
    }
    for (size_t i = 0; i <= la; i++) {
        d[i][0] = i;
    }
    for (size_t j = 0; j <= lb; j++) {
        d[0][j] = j;
    }
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            size_t best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) {
                best = d[i][j - 1] + 1;
            }
            if (d[i - 1][j - 1] + cost < best) {
                best = d[i - 1][j - 1] + cost;
            }
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best) {
                best = d[i - 2][j - 2] + 1;
            }
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

/* check_keys reports each key of obj not in names, suggesting the closest
 * known key within an edit distance of 2 (case and '-' vs '_' ignored). */
static void check_keys(struct check *k, json_t *obj, const char *const *names, size_t num_names)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool is_known = false;
        for (size_t i = 0; i < num_names && !is_known; i++) {
            is_known = strcmp(key, names[i]) == 0;
        }
        if (is_known) {
            continue;
        }
        char folded[SUGGEST_MAX + 1];
        size_t n = 0;
        for (const char *p = key; *p != '\0' && n < SUGGEST_MAX; p++) {
            char ch = *p;
            folded[n++] = ch == '-' ? '_' : (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        folded[n] = '\0';
        const char *suggestion = NULL;
        size_t best = 3;
        if (strlen(key) <= SUGGEST_MAX) {
            for (size_t i = 0; i < num_names; i++) {
                size_t d = edit_distance(folded, names[i]);
                if (d < best) {
                    best = d;
                    suggestion = names[i];
                }
            }
        }
        size_t mark = path_push_key(k, key);
        if (suggestion != NULL) {
            problem(k, "unknown key (did you mean \"%s\"?)", suggestion);
        } else {
            problem(k, "unknown key");
        }
        path_pop(k, mark);
    }
}

/* Scalars --------------------------------------------------------------------- */

/* read_int checks that v is an integer in min..max. */
static int read_int(struct check *k, const json_t *v, long long min, long long max, long long *out)
{
    if (!json_is_integer(v)) {
        problem_type(k, "an integer", v);
        return -1;
    }
    long long n = json_integer_value(v);
    if (n < min || n > max) {
        problem(k, "must be %lld..%lld, got %lld", min, max, n);
        return -1;
    }
    *out = n;
    return 0;
}

/* read_string checks that v is a non-empty string; returns it (borrowed). */
static const char *read_string(struct check *k, const json_t *v)
{
    if (!json_is_string(v)) {
        problem_type(k, "a string", v);
        return NULL;
    }
    const char *s = json_string_value(v);
    if (s[0] == '\0') {
        problem(k, "must not be empty");
        return NULL;
    }
    return s;
}

/* duration_parse reads "<digits><unit>" with unit ms, s, m, h or d into
 * *out_ms (UINT64_MAX when absurdly large). Returns -1 if malformed. */
static int duration_parse(const char *s, uint64_t *out_ms)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {
        {"ms", 1},           {"s", CFG_MS_PER_S}, {"m", CFG_MS_PER_M},
        {"h", CFG_MS_PER_H}, {"d", CFG_MS_PER_D},
    };
    /* Past 10^12 ms (31 years) every value is out of range anyway. */
    const uint64_t cap = 1000000000000ull;
    uint64_t n = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        n = n * 10 + (uint64_t)(*p - '0');
        if (n > cap) {
            n = cap + 1;
        }
    }
    if (p == s) {
        return -1;
    }
    for (size_t i = 0; i < NUM(units); i++) {
        if (strcmp(p, units[i].unit) == 0) {
            *out_ms = n > cap ? UINT64_MAX : n * units[i].ms;
            return 0;
        }
    }
    return -1;
}

void cfg_duration_format(char *out, size_t cap, uint64_t ms)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {
        {"d", CFG_MS_PER_D},
        {"h", CFG_MS_PER_H},
        {"m", CFG_MS_PER_M},
        {"s", CFG_MS_PER_S},
    };
    for (size_t i = 0; i < NUM(units); i++) {
        if (ms != 0 && ms % units[i].ms == 0) {
            snprintf(out, cap, "%llu%s", (unsigned long long)(ms / units[i].ms), units[i].unit);
            return;
        }
    }
    snprintf(out, cap, "%llums", (unsigned long long)ms);
}

/* read_duration checks that v is a duration string within min_ms..max_ms. */
static int read_duration(struct check *k, const json_t *v, uint64_t min_ms, uint64_t max_ms,
                         uint64_t *out_ms)
{
    char quoted[CFG_QUOTE_MAX * 6 + 8];
    char limit[32];
    uint64_t ms;
    if (json_is_number(v)) {
        problem(k, "expected a duration string, got %s (use a duration like \"10s\")",
                type_name(v));
        return -1;
    }
    if (!json_is_string(v)) {
        problem_type(k, "a duration string like \"10s\"", v);
        return -1;
    }
    const char *s = json_string_value(v);
    quote(quoted, sizeof(quoted), s);
    if (duration_parse(s, &ms) != 0) {
        problem(k,
                "%s is not a duration (use a duration like \"10s\": a whole number and one of ms, "
                "s, m, h, d)",
                quoted);
        return -1;
    }
    if (ms < min_ms) {
        cfg_duration_format(limit, sizeof(limit), min_ms);
        problem(k, "%s is too short (minimum %s)", quoted, limit);
        return -1;
    }
    if (ms > max_ms) {
        cfg_duration_format(limit, sizeof(limit), max_ms);
        problem(k, "%s is too long (maximum %s)", quoted, limit);
        return -1;
    }
    *out_ms = ms;
    return 0;
}

/* absolute_path returns a new absolute copy of p: as is if absolute, else
 * joined to base (NULL: the current directory), without "./" or a trailing
 * '/'. Records a problem and returns NULL on failure. */
static char *absolute_path(struct check *k, const char *p, const char *base)
{
    char cwd[PATH_MAX];
    size_t plen = strlen(p);
    while (plen > 1 && p[plen - 1] == '/') {
        plen--;
    }
    if (p[0] != '/') {
        if (base == NULL) {
            if (getcwd(cwd, sizeof(cwd)) == NULL) {
                char ebuf[128];
                problem(k, "cannot resolve a relative path: current directory: %s",
                        strerror_r(errno, ebuf, sizeof(ebuf)));
                return NULL;
            }
            base = cwd;
        }
        while (plen >= 2 && p[0] == '.' && p[1] == '/') {
            p += 2;
            plen -= 2;
            while (plen > 0 && p[0] == '/') {
                p++;
                plen--;
            }
        }
        if (plen == 1 && p[0] == '.') {
            plen = 0;
        }
    }
    size_t blen = p[0] == '/' ? 0 : strlen(base);
    bool needs_slash = blen > 0 && plen > 0 && base[blen - 1] != '/';
    size_t total = blen + (needs_slash ? 1 : 0) + plen;
    if (total >= PATH_MAX) {
        problem(k, "path is longer than %d bytes", PATH_MAX - 1);
        return NULL;
    }
    char *out = check_calloc(k, total + 1, 1);
    if (out == NULL) {
        return NULL;
    }
    memcpy(out, base != NULL && blen > 0 ? base : "", blen);
    if (needs_slash) {
        out[blen] = '/';
    }
    memcpy(out + blen + (needs_slash ? 1 : 0), p, plen);
    out[total] = '\0';
    return out;
}

/* config_dir returns the absolute directory of the config file name. */
static char *config_dir(struct check *k, const char *name)
{
    const char *slash = name != NULL ? strrchr(name, '/') : NULL;
    if (slash == NULL) {
        return absolute_path(k, ".", NULL);
    }
    if (slash == name) {
        return check_strdup(k, "/");
    }
    char *dir = strndup(name, (size_t)(slash - name));
    if (dir == NULL) {
        problem(k, "out of memory");
        return NULL;
    }
    char *abs = absolute_path(k, dir, NULL);
    free(dir);
    return abs;
}

/* base_dir returns the directory relative tls paths start from, computing it
 * on first use so that a config with absolute paths never needs the current
 * directory (which may be gone when a daemon reloads). */
static const char *base_dir(struct check *k)
{
    if (k->base_dir == NULL) {
        k->base_dir = config_dir(k, k->name);
    }
    return k->base_dir;
}

/* Snapshot pieces ---------------------------------------------------------------- */

static struct cfg *cfg_alloc(struct check *k)
{
    struct cfg *c = check_calloc(k, 1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    atomic_init(&c->refs, 1);
    c->https_port = DEFAULT_HTTPS_PORT;
    c->http_port = DEFAULT_HTTP_PORT;
    c->redirect_http = true;
    c->workers = 0;
    for (size_t i = 0; i < NUM(timeout_keys); i++) {
        *(uint32_t *)((char *)&c->timeouts + timeout_keys[i].offset) = timeout_keys[i].default_ms;
    }
    for (size_t i = 0; i < NUM(limit_keys); i++) {
        *(uint32_t *)((char *)&c->limits + limit_keys[i].offset) = limit_keys[i].def;
    }
    c->http2.enabled = true;
    c->http2.max_concurrent_streams = 100;
    c->http2.max_resets = 200;
    c->log_level = DM_LOG_INFO;
    c->log_format = CFG_LOG_TEXT;
    c->access_log_format = CFG_LOG_TEXT;
    c->local_lifetime_s = DEFAULT_LOCAL_LIFETIME_S;
    c->admin.enabled = true;
    c->bind = check_strdup(k, DEFAULT_BIND);
    c->access_log = check_strdup(k, DEFAULT_ACCESS_LOG);
    return c;
}

/* check_finish hands out c if no problem was found, else frees it. */
static struct cfg *check_finish(struct check *k, struct cfg *c)
{
    free(k->base_dir);
    k->base_dir = NULL;
    if (k->num_found > 0 || c == NULL) {
        cfg_unref(c);
        return NULL;
    }
    c->generation = atomic_fetch_add(&cfg_generation, 1) + 1;
    return c;
}

/* resolve_data_dir sets c->data_dir from the override, the file's value or
 * the default, in that order. */
static void resolve_data_dir(struct check *k, struct cfg *c, const char *override,
                             const char *from_file)
{
    char def[PATH_MAX];
    const char *dir = override != NULL && override[0] != '\0' ? override : from_file;
    if (dir == NULL) {
        if (cfg_default_data_dir(def, sizeof(def)) != 0) {
            problem(k, "no default data directory (HOME is not set): set data_dir, "
                       "DOORMAN_DATA_DIR or --data-dir");
            return;
        }
        dir = def;
    }
    c->data_dir = absolute_path(k, dir, NULL);
}

static void set_bind(struct check *k, struct cfg *c, const char *s)
{
    char quoted[CFG_QUOTE_MAX * 6 + 8];
    unsigned char bin[16];
    if (inet_pton(AF_INET, s, bin) != 1 && inet_pton(AF_INET6, s, bin) != 1) {
        quote(quoted, sizeof(quoted), s);
        problem(k, "%s is not an IP address (use \"::\" or \"0.0.0.0\" for all addresses)", quoted);
        return;
    }
    char *dup = check_strdup(k, s);
    if (dup != NULL) {
        free(c->bind);
        c->bind = dup;
    }
}

/* check_ports reports http_port == https_port (when both were valid). */
static void check_ports(struct check *k, const struct cfg *c, const char *http_path)
{
    if (c->http_port != 0 && c->http_port == c->https_port) {
        path_set(k, http_path);
        problem(k, "must differ from https_port (both are %u); 0 turns the plain-HTTP listener off",
                (unsigned)c->http_port);
    }
}

/* add_host stores the normalized form of text as *out. */
static void add_host(struct check *k, char **out, const char *text, size_t len)
{
    char host[CFG_HOST_MAX + 1];
    char msg[CFG_MSG_MAX];
    if (cfg_host_normalize(host, sizeof(host), text, len,
                           CFG_HOST_ALLOW_WILDCARD | CFG_HOST_ALLOW_IP, msg, sizeof(msg)) != 0) {
        problem(k, "%s", msg);
        return;
    }
    *out = check_strdup(k, host);
}

static void add_backend(struct check *k, struct cfg_addr *out, const char *text)
{
    char msg[CFG_MSG_MAX];
    if (cfg_addr_parse(out, text, msg, sizeof(msg)) != 0) {
        problem(k, "%s", msg);
    }
}

/* Sections ------------------------------------------------------------------- */

static void read_top_scalars(struct check *k, json_t *root, struct cfg *c,
                             const char **out_data_dir, bool *out_ports_ok)
{
    json_t *v;
    size_t mark;
    long long n;

    if ((v = json_object_get(root, "data_dir")) != NULL) {
        mark = path_push_key(k, "data_dir");
        *out_data_dir = read_string(k, v);
        path_pop(k, mark);
    }
    if ((v = json_object_get(root, "bind")) != NULL) {
        mark = path_push_key(k, "bind");
        const char *s = read_string(k, v);
        if (s != NULL) {
            set_bind(k, c, s);
        }
        path_pop(k, mark);
    }
    size_t ports_before = k->num_found;
    if ((v = json_object_get(root, "https_port")) != NULL) {
        mark = path_push_key(k, "https_port");
        if (read_int(k, v, 1, 65535, &n) == 0) {
            c->https_port = (uint16_t)n;
        }
        path_pop(k, mark);
    }
    if ((v = json_object_get(root, "http_port")) != NULL) {
        mark = path_push_key(k, "http_port");
        if (read_int(k, v, 0, 65535, &n) == 0) {
            c->http_port = (uint16_t)n;
        }
        path_pop(k, mark);
    }
    *out_ports_ok = k->num_found == ports_before;
    if ((v = json_object_get(root, "redirect_http")) != NULL) {
        mark = path_push_key(k, "redirect_http");
        if (json_is_boolean(v)) {
            c->redirect_http = json_is_true(v);
        } else {
            problem_type(k, "a boolean (true or false)", v);
        }
        path_pop(k, mark);
    }
    if ((v = json_object_get(root, "workers")) != NULL) {
        mark = path_push_key(k, "workers");
        if (read_int(k, v, 0, MAX_WORKERS, &n) == 0) {
            c->workers = (uint32_t)n;
        }
        path_pop(k, mark);
    }
}

/* read_section returns obj[key] if it is an object, with key pushed on the
 * path (*out_mark to pop); NULL if absent (nothing pushed) or not an object
 * (problem recorded, nothing pushed). */
static json_t *read_section(struct check *k, json_t *obj, const char *key, const char *const *names,
                            size_t num_names, size_t *out_mark)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return NULL;
    }
    size_t mark = path_push_key(k, key);
    if (!json_is_object(v)) {
        problem_type(k, "an object", v);
        path_pop(k, mark);
        return NULL;
    }
    check_keys(k, v, names, num_names);
    *out_mark = mark;
    return v;
}

static void read_timeouts(struct check *k, json_t *root, struct cfg_timeouts *t)
{
    const char *names[NUM(timeout_keys)];
    for (size_t i = 0; i < NUM(timeout_keys); i++) {
        names[i] = timeout_keys[i].name;
    }
    size_t mark;
    json_t *obj = read_section(k, root, "timeouts", names, NUM(names), &mark);
    if (obj == NULL) {
        return;
    }
    for (size_t i = 0; i < NUM(timeout_keys); i++) {
        const struct duration_key *d = &timeout_keys[i];
        json_t *v = json_object_get(obj, d->name);
        if (v == NULL) {
            continue;
        }
        size_t m = path_push_key(k, d->name);
        uint64_t ms;
        if (read_duration(k, v, 1, d->max_ms, &ms) == 0) {
            *(uint32_t *)((char *)t + d->offset) = (uint32_t)ms;
        }
        path_pop(k, m);
    }
    path_pop(k, mark);
}

static void read_limits(struct check *k, json_t *root, struct cfg_limits *l)
{
    const char *names[NUM(limit_keys)];
    for (size_t i = 0; i < NUM(limit_keys); i++) {
        names[i] = limit_keys[i].name;
    }
    size_t mark;
    json_t *obj = read_section(k, root, "limits", names, NUM(names), &mark);
    if (obj == NULL) {
        return;
    }
    size_t before = k->num_found;
    for (size_t i = 0; i < NUM(limit_keys); i++) {
        const struct limit_key *lk = &limit_keys[i];
        json_t *v = json_object_get(obj, lk->name);
        if (v == NULL) {
            continue;
        }
        size_t m = path_push_key(k, lk->name);
        long long n;
        if (read_int(k, v, lk->min, lk->max, &n) == 0) {
            *(uint32_t *)((char *)l + lk->offset) = (uint32_t)n;
        }
        path_pop(k, m);
    }
    if (l->per_ip_rate != 0 && l->per_ip_burst == 0) {
        l->per_ip_burst = l->per_ip_rate; /* one second's worth */
    }
    /* The request line is part of the head, so the head limit must hold it. */
    if (k->num_found == before && l->max_header_bytes < l->max_line) {
        size_t m = path_push_key(k, "header_bytes");
        problem(k, "must be at least limits.request_line (%u), got %u", (unsigned)l->max_line,
                (unsigned)l->max_header_bytes);
        path_pop(k, m);
    }
    path_pop(k, mark);
}

/* read_http2 reads the "http2" section (HTTP/2 to clients). */
static void read_http2(struct check *k, json_t *root, struct cfg_http2 *h)
{
    size_t mark;
    json_t *obj = read_section(k, root, "http2", http2_keys, NUM(http2_keys), &mark);
    if (obj == NULL) {
        return;
    }
    json_t *v;
    if ((v = json_object_get(obj, "enabled")) != NULL) {
        size_t m = path_push_key(k, "enabled");
        if (json_is_boolean(v)) {
            h->enabled = json_is_true(v);
        } else {
            problem_type(k, "a boolean (true or false)", v);
        }
        path_pop(k, m);
    }
    long long n;
    if ((v = json_object_get(obj, "max_concurrent_streams")) != NULL) {
        size_t m = path_push_key(k, "max_concurrent_streams");
        if (read_int(k, v, 1, 10000, &n) == 0) {
            h->max_concurrent_streams = (uint32_t)n;
        }
        path_pop(k, m);
    }
    if ((v = json_object_get(obj, "max_resets")) != NULL) {
        size_t m = path_push_key(k, "max_resets");
        if (read_int(k, v, 1, 1000000, &n) == 0) {
            h->max_resets = (uint32_t)n;
        }
        path_pop(k, m);
    }
    path_pop(k, mark);
}

static void read_trusted_proxies(struct check *k, json_t *root, struct cfg *c)
{
    json_t *v = json_object_get(root, "trusted_proxies");
    if (v == NULL) {
        return;
    }
    size_t mark = path_push_key(k, "trusted_proxies");
    size_t n = json_array_size(v);
    if (!json_is_array(v)) {
        problem_type(k, "an array of strings", v);
    } else if (n > 0 &&
               (c->trusted_proxies = check_calloc(k, n, sizeof(struct cfg_cidr))) != NULL) {
        c->num_trusted_proxies = n;
        for (size_t i = 0; i < n; i++) {
            size_t m = path_push_index(k, i);
            json_t *e = json_array_get(v, i);
            char msg[CFG_MSG_MAX];
            if (!json_is_string(e)) {
                problem_type(k, "a string", e);
            } else if (cfg_cidr_parse(&c->trusted_proxies[i], json_string_value(e), msg,
                                      sizeof(msg)) != 0) {
                problem(k, "%s", msg);
            }
            path_pop(k, m);
        }
    }
    path_pop(k, mark);
}

/* read_log_format parses "text" or "json" at obj[key]. */
static void read_log_format(struct check *k, json_t *obj, const char *key, bool is_access,
                            enum cfg_log_format *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return;
    }
    size_t mark = path_push_key(k, key);
    const char *s = read_string(k, v);
    if (s != NULL) {
        if (strcmp(s, "text") == 0) {
            *out = CFG_LOG_TEXT;
        } else if (strcmp(s, "json") == 0) {
            *out = CFG_LOG_JSON;
        } else if (is_access && strcmp(s, "common") == 0) {
            *out = CFG_LOG_COMMON;
        } else {
            char quoted[CFG_QUOTE_MAX * 6 + 8];
            quote(quoted, sizeof(quoted), s);
            problem(k, "%s is not a log format (%s)", quoted,
                    is_access ? "text, json, common" : "text, json");
        }
    }
    path_pop(k, mark);
}

static void read_log(struct check *k, json_t *root, struct cfg *c)
{
    char quoted[CFG_QUOTE_MAX * 6 + 8];
    size_t mark;
    json_t *obj = read_section(k, root, "log", log_keys, NUM(log_keys), &mark);
    if (obj == NULL) {
        return;
    }
    json_t *v;
    if ((v = json_object_get(obj, "level")) != NULL) {
        size_t m = path_push_key(k, "level");
        const char *s = read_string(k, v);
        enum dm_log_level level;
        if (s != NULL) {
            if (dm_log_level_parse(s, &level) == 0) {
                c->log_level = (int)level;
            } else {
                quote(quoted, sizeof(quoted), s);
                problem(k, "%s is not a log level (error, warn, info, debug, trace)", quoted);
            }
        }
        path_pop(k, m);
    }
    read_log_format(k, obj, "format", false, &c->log_format);
    if ((v = json_object_get(obj, "access")) != NULL) {
        size_t m = path_push_key(k, "access");
        const char *s = read_string(k, v);
        if (s != NULL) {
            if (strcmp(s, "stderr") == 0 || strcmp(s, "off") == 0 || s[0] == '/') {
                char *dup = check_strdup(k, s);
                if (dup != NULL) {
                    free(c->access_log);
                    c->access_log = dup;
                }
            } else {
                quote(quoted, sizeof(quoted), s);
                problem(k, "%s must be \"stderr\", \"off\" or an absolute file path", quoted);
            }
        }
        path_pop(k, m);
    }
    read_log_format(k, obj, "access_format", true, &c->access_log_format);
    path_pop(k, mark);
}

static bool addr_is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const uint8_t *a = (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr;
        return a[0] == 127;
    }
    if (ss->ss_family == AF_INET6) {
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
    }
    return false;
}

/* read_admin reads the admin API section. The API can replace the whole
 * config, so TCP is allowed only on loopback and only with a token. */
static void read_admin(struct check *k, json_t *root, struct cfg *c)
{
    char quoted[CFG_QUOTE_MAX * 6 + 8];
    size_t mark;
    json_t *obj = read_section(k, root, "admin", admin_keys, NUM(admin_keys), &mark);
    if (obj == NULL) {
        return;
    }
    json_t *v;
    if ((v = json_object_get(obj, "enabled")) != NULL) {
        size_t m = path_push_key(k, "enabled");
        if (json_is_boolean(v)) {
            c->admin.enabled = json_is_true(v);
        } else {
            problem_type(k, "a boolean", v);
        }
        path_pop(k, m);
    }
    if ((v = json_object_get(obj, "listen")) != NULL) {
        size_t m = path_push_key(k, "listen");
        const char *s = read_string(k, v);
        if (s != NULL) {
            struct cfg_addr a;
            char msg[CFG_MSG_MAX];
            memset(&a, 0, sizeof(a));
            quote(quoted, sizeof(quoted), s);
            if (cfg_addr_parse(&a, s, msg, sizeof(msg)) != 0) {
                problem(k, "%s", msg);
            } else if (a.kind != CFG_ADDR_IP || !addr_is_loopback(&a.ss)) {
                problem(k,
                        "%s is not a loopback address: the admin API listens on 127.0.0.1 or "
                        "[::1] only (like \"127.0.0.1:2019\")",
                        quoted);
            } else {
                c->admin.listen = check_strdup(k, s);
                c->admin.listen_ss = a.ss;
                c->admin.listen_len = a.ss_len;
            }
            cfg_addr_cleanup(&a);
        }
        path_pop(k, m);
    }
    if ((v = json_object_get(obj, "token")) != NULL) {
        size_t m = path_push_key(k, "token");
        const char *s = read_string(k, v);
        if (s != NULL) {
            size_t len = strlen(s);
            bool is_printable = true;
            for (size_t i = 0; i < len; i++) {
                is_printable &= s[i] > 0x20 && s[i] < 0x7f;
            }
            if (len < ADMIN_TOKEN_MIN || !is_printable) {
                /* Never quote the secret back. */
                problem(k, "must be at least %d printable characters without spaces, got %zu",
                        ADMIN_TOKEN_MIN, len);
            } else {
                c->admin.token = check_strdup(k, s);
            }
        }
        path_pop(k, m);
    }
    if (c->admin.listen != NULL && c->admin.token == NULL &&
        json_object_get(obj, "token") == NULL) {
        size_t m = path_push_key(k, "token");
        problem(k, "required with admin.listen: TCP clients authenticate with "
                   "\"Authorization: Bearer TOKEN\"");
        path_pop(k, m);
    }
    path_pop(k, mark);
}

static void read_local_ca(struct check *k, json_t *root, struct cfg *c)
{
    size_t mark;
    json_t *obj = read_section(k, root, "local_ca", local_ca_keys, NUM(local_ca_keys), &mark);
    if (obj == NULL) {
        return;
    }
    json_t *v = json_object_get(obj, "lifetime");
    if (v != NULL) {
        size_t m = path_push_key(k, "lifetime");
        uint64_t ms;
        /* At least a minute so renewal (at a third left) is not a busy loop;
         * at most 90 days, the longest lifetime public CAs issue. */
        if (read_duration(k, v, CFG_MS_PER_M, 90ull * CFG_MS_PER_D, &ms) == 0) {
            if (ms % CFG_MS_PER_S != 0) {
                problem(k, "must be a whole number of seconds");
            } else {
                c->local_lifetime_s = (uint32_t)(ms / CFG_MS_PER_S);
            }
        }
        path_pop(k, m);
    }
    path_pop(k, mark);
}

/* Sites ---------------------------------------------------------------------- */

static void read_hosts(struct check *k, json_t *site, struct cfg_site *s)
{
    json_t *v = json_object_get(site, "hosts");
    json_t *tls = json_object_get(site, "tls");
    if (v == NULL && json_is_object(tls) && json_object_get(tls, "on_demand") != NULL) {
        return; /* the catch-all on-demand site */
    }
    size_t mark = path_push_key(k, "hosts");
    size_t n = json_array_size(v);
    if (v == NULL) {
        problem(k, "required key is missing");
    } else if (json_is_string(v)) {
        char quoted[CFG_QUOTE_MAX * 6 + 8];
        quote(quoted, sizeof(quoted), json_string_value(v));
        problem(k, "expected an array of strings, got string (write [%s])", quoted);
    } else if (!json_is_array(v)) {
        problem_type(k, "an array of strings", v);
    } else if (n == 0) {
        problem(k, "must list at least one host name");
    } else if ((s->hosts = check_calloc(k, n, sizeof(char *))) != NULL) {
        s->num_hosts = n;
        for (size_t i = 0; i < n; i++) {
            size_t m = path_push_index(k, i);
            json_t *e = json_array_get(v, i);
            if (!json_is_string(e)) {
                problem_type(k, "a string", e);
            } else {
                add_host(k, &s->hosts[i], json_string_value(e), json_string_length(e));
            }
            path_pop(k, m);
        }
    }
    path_pop(k, mark);
}

/* read_file_key stores the absolute path of obj[key] in *out after checking
 * that the file is readable now, so a typo fails at load, not at the first
 * handshake. A missing key is a problem only if required. */
static void read_file_key(struct check *k, json_t *obj, const char *key, bool required, char **out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL && !required) {
        return;
    }
    size_t mark = path_push_key(k, key);
    const char *s;
    if (v == NULL) {
        problem(k, "required key is missing");
    } else if ((s = read_string(k, v)) != NULL && (s[0] == '/' || base_dir(k) != NULL) &&
               (*out = absolute_path(k, s, k->base_dir)) != NULL) {
        struct stat st;
        char ebuf[128];
        if (access(*out, R_OK) != 0) {
            problem(k, "%s: %s", *out, strerror_r(errno, ebuf, sizeof(ebuf)));
        } else if (stat(*out, &st) == 0 && S_ISDIR(st.st_mode)) {
            problem(k, "%s: is a directory", *out);
        }
    }
    path_pop(k, mark);
}

/* read_url checks an http(s) URL: the ACME directory. */
/* check_http_url reports u unless it is an absolute http(s) URL without
 * spaces, quotes or a fragment, at most 2 KiB; 0 if it is one. */
static int check_http_url(struct check *k, const char *u)
{
    if ((strncmp(u, "https://", 8) != 0 && strncmp(u, "http://", 7) != 0) ||
        strpbrk(u, " \t\r\n\"#") != NULL || strlen(u) > 2048) {
        char quoted[CFG_QUOTE_MAX * 6 + 8];
        quote(quoted, sizeof(quoted), u);
        problem(k, "%s is not an http(s) URL", quoted);
        return -1;
    }
    return 0;
}

static void read_url(struct check *k, json_t *obj, const char *key, char **out)
{
    json_t *v = json_object_get(obj, key);
    size_t mark = path_push_key(k, key);
    const char *u;
    if (v == NULL) {
        problem(k, "required key is missing (the CA's directory URL, e.g. "
                   "\"https://acme-v02.api.letsencrypt.org/directory\")");
    } else if ((u = read_string(k, v)) != NULL && check_http_url(k, u) == 0) {
        *out = check_strdup(k, u);
    }
    path_pop(k, mark);
}

static void read_opt_string(struct check *k, json_t *obj, const char *key, char **out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return;
    }
    size_t mark = path_push_key(k, key);
    const char *str = read_string(k, v);
    if (str != NULL) {
        *out = check_strdup(k, str);
    }
    path_pop(k, mark);
}

static int name_index(const char *const *names, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(names[i], s) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static void read_challenges(struct check *k, json_t *obj, struct cfg_acme *a)
{
    json_t *v = json_object_get(obj, "challenges");
    a->challenges[0] = CFG_CHALLENGE_TLSALPN01;
    a->challenges[1] = CFG_CHALLENGE_HTTP01;
    a->num_challenges = 2;
    if (v == NULL) {
        return;
    }
    size_t mark = path_push_key(k, "challenges");
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > 3) {
        problem_type(k, "an array of 1 to 3 of \"tls-alpn-01\", \"http-01\", \"dns-01\"", v);
        path_pop(k, mark);
        return;
    }
    a->num_challenges = 0;
    for (size_t i = 0; i < json_array_size(v); i++) {
        size_t m = path_push_index(k, i);
        json_t *e = json_array_get(v, i);
        int idx = json_is_string(e)
                      ? name_index(challenge_names, NUM(challenge_names), json_string_value(e))
                      : -1;
        if (idx < 0) {
            problem(k, "must be \"tls-alpn-01\", \"http-01\" or \"dns-01\"");
        } else {
            for (size_t j = 0; j < a->num_challenges; j++) {
                if (a->challenges[j] == (enum cfg_challenge)idx) {
                    problem(k, "\"%s\" is listed twice", challenge_names[idx]);
                    idx = -1;
                    break;
                }
            }
            if (idx >= 0) {
                a->challenges[a->num_challenges++] = (enum cfg_challenge)idx;
            }
        }
        path_pop(k, m);
    }
    path_pop(k, mark);
}

static void read_acme_issuer(struct check *k, json_t *v, struct cfg_acme *a, bool is_fallback);

/* read_fallbacks reads tls.acme.fallback: issuers tried in turn after the
 * first, each with the acme block's keys and its own defaults. */
static void read_fallbacks(struct check *k, json_t *obj, struct cfg_acme *a)
{
    json_t *v = json_object_get(obj, "fallback");
    if (v == NULL) {
        return;
    }
    size_t mark = path_push_key(k, "fallback");
    size_t n = json_array_size(v);
    if (!json_is_array(v) || n == 0 || n > MAX_ACME_FALLBACKS) {
        problem_type(k, "an array of 1 to 4 objects {\"ca\": URL, ...}", v);
    } else if ((a->fallbacks = check_calloc(k, n, sizeof(*a->fallbacks))) != NULL) {
        a->num_fallbacks = n;
        for (size_t i = 0; i < n; i++) {
            size_t m = path_push_index(k, i);
            json_t *e = json_array_get(v, i);
            if (!json_is_object(e)) {
                problem_type(k, "an object {\"ca\": URL, \"email\": ADDRESS, ...}", e);
            } else {
                read_acme_issuer(k, e, &a->fallbacks[i], true);
            }
            path_pop(k, m);
        }
    }
    path_pop(k, mark);
}

static void read_acme(struct check *k, json_t *tls, struct cfg_site *s)
{
    json_t *v = json_object_get(tls, "acme");
    size_t mark = path_push_key(k, "acme");
    if (!json_is_object(v)) {
        problem_type(k, "an object {\"ca\": URL, \"email\": ADDRESS, ...}", v);
        path_pop(k, mark);
        return;
    }
    struct cfg_acme *a = check_calloc(k, 1, sizeof(*a));
    if (a == NULL) {
        path_pop(k, mark);
        return;
    }
    s->acme = a;
    read_acme_issuer(k, v, a, false);
    path_pop(k, mark);
}

/* read_acme_issuer reads one issuer object (tls.acme or one of its
 * fallbacks) into a; at the current path. */
static void read_acme_issuer(struct check *k, json_t *v, struct cfg_acme *a, bool is_fallback)
{
    a->retry_first_ms = DEFAULT_RETRY_FIRST_MS;
    a->order_timeout_ms = DEFAULT_ORDER_TIMEOUT_MS;
    a->dns_propagation_ms = DEFAULT_DNS_PROPAGATION_MS;
    a->orders_per_hour = DEFAULT_ORDERS_PER_HOUR;
    check_keys(k, v, acme_keys, NUM(acme_keys));
    read_url(k, v, "ca", &a->directory);
    read_opt_string(k, v, "email", &a->email);
    if (a->email != NULL &&
        (strchr(a->email, '@') == NULL || strpbrk(a->email, " ,<>\"") != NULL)) {
        size_t m = path_push_key(k, "email");
        problem(k, "is not an email address");
        path_pop(k, m);
    }
    json_t *b = json_object_get(v, "agree_tos");
    if (b != NULL) {
        size_t m = path_push_key(k, "agree_tos");
        if (!json_is_boolean(b)) {
            problem_type(k, "true or false", b);
        } else {
            a->agree_tos = json_is_true(b);
        }
        path_pop(k, m);
    }
    if (json_object_get(v, "ca_root") != NULL) {
        read_file_key(k, v, "ca_root", true, &a->ca_root);
    }
    read_challenges(k, v, a);
    json_t *kt = json_object_get(v, "key_type");
    if (kt != NULL) {
        size_t m = path_push_key(k, "key_type");
        int idx = json_is_string(kt)
                      ? name_index(key_type_names, NUM(key_type_names), json_string_value(kt))
                      : -1;
        if (idx < 0) {
            problem(k, "must be \"p256\", \"p384\", \"rsa2048\" or \"rsa4096\"");
        } else {
            a->key_type = (enum cfg_key_type)idx;
        }
        path_pop(k, m);
    }
    json_t *eab = json_object_get(v, "eab");
    if (eab != NULL) {
        size_t m = path_push_key(k, "eab");
        if (!json_is_object(eab)) {
            problem_type(k, "an object {\"kid\": ID, \"hmac_key\": BASE64URL}", eab);
        } else {
            check_keys(k, eab, eab_keys, NUM(eab_keys));
            read_opt_string(k, eab, "kid", &a->eab_kid);
            read_opt_string(k, eab, "hmac_key", &a->eab_hmac_key);
            if (a->eab_kid == NULL || a->eab_hmac_key == NULL) {
                problem(k, "needs both \"kid\" and \"hmac_key\"");
            }
        }
        path_pop(k, m);
    }
    read_opt_string(k, v, "profile", &a->profile);
    read_opt_string(k, v, "preferred_chain", &a->preferred_chain);
    if (json_object_get(v, "dns_hook") != NULL) {
        read_file_key(k, v, "dns_hook", true, &a->dns_hook);
    }
    json_t *ot = json_object_get(v, "order_timeout");
    if (ot != NULL) {
        size_t m = path_push_key(k, "order_timeout");
        uint64_t ms;
        if (read_duration(k, ot, CFG_MS_PER_S, CFG_MS_PER_H, &ms) == 0) {
            a->order_timeout_ms = (uint32_t)ms;
        }
        path_pop(k, m);
    }
    json_t *oph = json_object_get(v, "orders_per_hour");
    if (oph != NULL) {
        size_t m = path_push_key(k, "orders_per_hour");
        long long n;
        if (read_int(k, oph, 1, 100000, &n) == 0) {
            a->orders_per_hour = (uint32_t)n;
        }
        path_pop(k, m);
    }
    json_t *dp = json_object_get(v, "dns_propagation");
    if (dp != NULL) {
        size_t m = path_push_key(k, "dns_propagation");
        uint64_t ms;
        if (read_duration(k, dp, 0, MAX_DNS_PROPAGATION_MS, &ms) == 0) {
            a->dns_propagation_ms = (uint32_t)ms;
            if (ms >= a->order_timeout_ms) {
                /* The wait is part of the order: no order could finish. */
                problem(k, "must be shorter than order_timeout");
            }
        }
        path_pop(k, m);
    }
    bool has_dns01 = false;
    for (size_t i = 0; i < a->num_challenges; i++) {
        has_dns01 |= a->challenges[i] == CFG_CHALLENGE_DNS01;
    }
    if (has_dns01 && a->dns_hook == NULL && json_object_get(v, "dns_hook") == NULL) {
        problem(k, "dns-01 needs \"dns_hook\": the program that sets the TXT record");
    }
    json_t *rf = json_object_get(v, "retry_first");
    if (rf != NULL) {
        size_t m = path_push_key(k, "retry_first");
        uint64_t ms;
        if (read_duration(k, rf, CFG_MS_PER_S, MAX_RETRY_FIRST_MS, &ms) == 0) {
            a->retry_first_ms = (uint32_t)ms;
        }
        path_pop(k, m);
    }
    if (is_fallback) {
        if (json_object_get(v, "fallback") != NULL) {
            size_t m = path_push_key(k, "fallback");
            problem(k, "a fallback CA cannot have fallbacks of its own (list them all in "
                       "tls.acme.fallback)");
            path_pop(k, m);
        }
    } else {
        read_fallbacks(k, v, a);
    }
}

static void read_od_duration(struct check *k, json_t *obj, const char *key, uint64_t min_ms,
                             uint64_t max_ms, uint32_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return;
    }
    size_t m = path_push_key(k, key);
    uint64_t ms;
    if (read_duration(k, v, min_ms, max_ms, &ms) == 0) {
        *out = (uint32_t)ms;
    }
    path_pop(k, m);
}

static void read_od_count(struct check *k, json_t *obj, const char *key, long long max,
                          uint32_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return;
    }
    size_t m = path_push_key(k, key);
    long long n;
    if (read_int(k, v, 1, max, &n) == 0) {
        *out = (uint32_t)n;
    }
    path_pop(k, m);
}

/* read_on_demand reads tls.on_demand. A permission policy is mandatory:
 * without one, anyone who points a name at the proxy makes it order. */
static void read_on_demand(struct check *k, json_t *tls, struct cfg_site *s)
{
    json_t *v = json_object_get(tls, "on_demand");
    if (v == NULL) {
        return;
    }
    size_t mark = path_push_key(k, "on_demand");
    if (!json_is_object(v)) {
        problem_type(k, "an object {\"ask\": URL, \"allow\": [PATTERN...], ...}", v);
        path_pop(k, mark);
        return;
    }
    struct cfg_ondemand *d = check_calloc(k, 1, sizeof(*d));
    if (d == NULL) {
        path_pop(k, mark);
        return;
    }
    s->on_demand = d;
    d->ask_timeout_ms = DEFAULT_OD_ASK_TIMEOUT_MS;
    d->ask_cache_ms = DEFAULT_OD_ASK_CACHE_MS;
    d->orders_per_minute = DEFAULT_OD_ORDERS_PER_MIN;
    d->max_in_flight = DEFAULT_OD_MAX_IN_FLIGHT;
    d->per_domain_per_hour = DEFAULT_OD_PER_DOMAIN_HOUR;
    d->wait_timeout_ms = DEFAULT_OD_WAIT_TIMEOUT_MS;
    d->failure_backoff_ms = DEFAULT_OD_FAIL_BACKOFF_MS;
    d->cache_capacity = DEFAULT_OD_CACHE_CAPACITY;
    check_keys(k, v, ondemand_keys, NUM(ondemand_keys));
    json_t *ask = json_object_get(v, "ask");
    if (ask != NULL) {
        size_t m = path_push_key(k, "ask");
        const char *u = read_string(k, ask);
        if (u != NULL && check_http_url(k, u) == 0) {
            d->ask = check_strdup(k, u);
        }
        path_pop(k, m);
    }
    json_t *allow = json_object_get(v, "allow");
    if (allow != NULL) {
        size_t m = path_push_key(k, "allow");
        size_t n = json_array_size(allow);
        if (!json_is_array(allow)) {
            problem_type(k, "an array of name patterns like \"*.example.com\"", allow);
        } else if (n > 0 && (d->allow = check_calloc(k, n, sizeof(char *))) != NULL) {
            d->num_allow = n;
            for (size_t i = 0; i < n; i++) {
                size_t mi = path_push_index(k, i);
                json_t *e = json_array_get(allow, i);
                char host[CFG_HOST_MAX + 1];
                char msg[CFG_MSG_MAX];
                if (!json_is_string(e)) {
                    problem_type(k, "a string", e);
                } else if (cfg_host_normalize(host, sizeof(host), json_string_value(e),
                                              json_string_length(e), CFG_HOST_ALLOW_WILDCARD, msg,
                                              sizeof(msg)) != 0) {
                    problem(k, "%s", msg);
                } else {
                    d->allow[i] = check_strdup(k, host);
                }
                path_pop(k, mi);
            }
        }
        path_pop(k, m);
    }
    if (ask == NULL && d->num_allow == 0) {
        problem(k, "needs a permission policy: \"ask\" (a URL that answers 2xx for the names you "
                   "serve) and/or \"allow\" (name patterns); without one, anyone who points a "
                   "name at this server could make it order certificates until the CA's rate "
                   "limits lock you out");
    }
    read_od_duration(k, v, "ask_timeout", 100, 60u * 1000, &d->ask_timeout_ms);
    read_od_duration(k, v, "ask_cache", 0, 24u * 3600 * 1000, &d->ask_cache_ms);
    read_od_duration(k, v, "wait_timeout", 1000, 10u * 60 * 1000, &d->wait_timeout_ms);
    read_od_duration(k, v, "failure_backoff", 1000, 3600u * 1000, &d->failure_backoff_ms);
    read_od_count(k, v, "orders_per_minute", 100000, &d->orders_per_minute);
    read_od_count(k, v, "max_in_flight", 10000, &d->max_in_flight);
    read_od_count(k, v, "per_domain_per_hour", 1000000, &d->per_domain_per_hour);
    read_od_count(k, v, "cache_capacity", 10000000, &d->cache_capacity);
    path_pop(k, mark);
}

static void read_tls(struct check *k, json_t *site, struct cfg_site *s)
{
    json_t *v = json_object_get(site, "tls");
    s->tls = CFG_TLS_LOCAL;
    if (v == NULL) {
        return;
    }
    size_t mark = path_push_key(k, "tls");
    if (json_is_string(v)) {
        if (strcmp(json_string_value(v), "local") != 0) {
            char quoted[CFG_QUOTE_MAX * 6 + 8];
            quote(quoted, sizeof(quoted), json_string_value(v));
            problem(k, "%s is not a TLS source (use \"local\" or {\"cert\": PATH, \"key\": PATH})",
                    quoted);
        }
    } else if (json_is_object(v) && json_object_get(v, "acme") != NULL) {
        s->tls = CFG_TLS_ACME;
        check_keys(k, v, tls_keys, NUM(tls_keys));
        if (json_object_get(v, "cert") != NULL || json_object_get(v, "key") != NULL) {
            problem(k, "\"acme\" and \"cert\"/\"key\" exclude each other");
        }
        read_acme(k, v, s);
        read_on_demand(k, v, s);
    } else if (json_is_object(v)) {
        s->tls = CFG_TLS_FILES;
        check_keys(k, v, tls_keys, NUM(tls_keys));
        if (json_object_get(v, "on_demand") != NULL) {
            size_t m = path_push_key(k, "on_demand");
            problem(k, "needs \"acme\": on-demand certificates come from an ACME CA");
            path_pop(k, m);
        }
        read_file_key(k, v, "cert", true, &s->cert_file);
        read_file_key(k, v, "key", true, &s->key_file);
    } else {
        problem_type(k, "\"local\", {\"cert\": PATH, \"key\": PATH} or {\"acme\": {...}}", v);
    }
    path_pop(k, mark);
}

static void read_site(struct check *k, json_t *v, struct cfg_site *s)
{
    if (!json_is_object(v)) {
        problem_type(k, "an object", v);
        return;
    }
    check_keys(k, v, site_keys, NUM(site_keys));
    read_hosts(k, v, s);
    cfg_read_to(k, v, s);
    cfg_read_upstream(k, v, s);
    read_tls(k, v, s);
    /* upstream.protocol and upstream.tls: validate_transport.c (the keys of
     * the object are checked by cfg_read_upstream). */
    cfg_transport_read(k, v, s);
    if (s->tls == CFG_TLS_ACME && s->acme != NULL && s->on_demand == NULL) {
        /* Every issuer may end up ordering, so every one needs dns-01. */
        bool has_dns01 = true;
        for (size_t f = 0; f <= s->acme->num_fallbacks; f++) {
            const struct cfg_acme *a = f == 0 ? s->acme : &s->acme->fallbacks[f - 1];
            bool has = false;
            for (size_t i = 0; i < a->num_challenges; i++) {
                has |= a->challenges[i] == CFG_CHALLENGE_DNS01;
            }
            has_dns01 &= has;
        }
        for (size_t i = 0; i < s->num_hosts && !has_dns01; i++) {
            if (s->hosts[i] != NULL && s->hosts[i][0] == '*') {
                size_t m = path_push_key(k, "hosts");
                problem(k, "wildcard \"%s\" needs the dns-01 challenge (tls.acme.challenges)",
                        s->hosts[i]);
                path_pop(k, m);
                break;
            }
        }
    }
}

struct host_seen {
    const char *name; /* borrowed from the snapshot */
    size_t site;
    size_t index;
};

/* check_duplicate_hosts reports each host already listed earlier, in any
 * site: routing by name needs one answer. Uses a hash set so a config with
 * many thousands of names stays linear. */
static void check_duplicate_hosts(struct check *k, const struct cfg *c)
{
    size_t total = 0;
    for (size_t i = 0; i < c->num_sites; i++) {
        total += c->sites[i].num_hosts;
    }
    size_t cap = 16;
    while (cap < total * 2) {
        cap *= 2;
    }
    struct host_seen *seen = check_calloc(k, cap, sizeof(*seen));
    if (seen == NULL) {
        return;
    }
    for (size_t i = 0; i < c->num_sites; i++) {
        for (size_t j = 0; j < c->sites[i].num_hosts; j++) {
            const char *name = c->sites[i].hosts[j];
            if (name == NULL) {
                continue;
            }
            size_t slot = (size_t)dm_str_hash(name, strlen(name)) & (cap - 1);
            while (seen[slot].name != NULL && strcmp(seen[slot].name, name) != 0) {
                slot = (slot + 1) & (cap - 1);
            }
            if (seen[slot].name == NULL) {
                seen[slot] = (struct host_seen){name, i, j};
                continue;
            }
            char where[64];
            char quoted[CFG_QUOTE_MAX * 6 + 8];
            snprintf(where, sizeof(where), "sites[%zu].hosts[%zu]", i, j);
            path_set(k, where);
            quote(quoted, sizeof(quoted), name);
            if (seen[slot].site == i) {
                problem(k, "%s is listed twice (also at sites[%zu].hosts[%zu])", quoted, i,
                        seen[slot].index);
            } else {
                problem(k, "%s is already served by sites[%zu]", quoted, seen[slot].site);
            }
        }
    }
    path_set(k, "");
    free(seen);
}

static bool str_same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* An issuer of some site, for check_acme_accounts. */
struct issuer_ref {
    const struct cfg_acme *a; /* borrowed */
    size_t site;
    size_t fallback; /* 0 = tls.acme, n = fallback[n - 1] */
};

static void issuer_ref_path(char *buf, size_t cap, const struct issuer_ref *r, const char *tail)
{
    if (r->fallback == 0) {
        snprintf(buf, cap, "sites[%zu]%s", r->site, tail);
    } else {
        snprintf(buf, cap, "sites[%zu].tls.acme.fallback[%zu]%s", r->site, r->fallback - 1, tail);
    }
}

/* check_acme_accounts: a CA account is stored per directory and email, so
 * two issuers (of any sites, fallbacks included) sharing both must agree on
 * the External Account Binding, or one account would be bound (or not)
 * depending on which registered first. */
static void check_acme_accounts(struct check *k, const struct cfg *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->num_sites; i++) {
        if (c->sites[i].tls == CFG_TLS_ACME && c->sites[i].acme != NULL) {
            n += 1 + c->sites[i].acme->num_fallbacks;
        }
    }
    struct issuer_ref *refs = n > 0 ? check_calloc(k, n, sizeof(*refs)) : NULL;
    if (refs == NULL) {
        return;
    }
    n = 0;
    for (size_t i = 0; i < c->num_sites; i++) {
        const struct cfg_acme *a = c->sites[i].acme;
        if (c->sites[i].tls != CFG_TLS_ACME || a == NULL) {
            continue;
        }
        for (size_t f = 0; f <= a->num_fallbacks; f++) {
            refs[n++] = (struct issuer_ref){f == 0 ? a : &a->fallbacks[f - 1], i, f};
        }
    }
    for (size_t j = 0; j < n; j++) {
        const struct cfg_acme *b = refs[j].a;
        if (b->directory == NULL) {
            continue;
        }
        for (size_t i = 0; i < j; i++) {
            const struct cfg_acme *a = refs[i].a;
            if (a->directory == NULL || strcmp(a->directory, b->directory) != 0 ||
                !str_same(a->email, b->email)) {
                continue;
            }
            if (!str_same(a->eab_kid, b->eab_kid) || !str_same(a->eab_hmac_key, b->eab_hmac_key)) {
                char path[96], other[96];
                issuer_ref_path(path, sizeof(path), &refs[j],
                                refs[j].fallback == 0 ? ".tls.acme.eab" : ".eab");
                issuer_ref_path(other, sizeof(other), &refs[i], "");
                path_set(k, path);
                problem(k,
                        "differs from %s for the same CA and email (one account per CA "
                        "and email: use the same eab, or another email)",
                        other);
                break;
            }
        }
    }
    free(refs);
    path_set(k, "");
}

static void read_sites(struct check *k, json_t *root, struct cfg *c)
{
    json_t *v = json_object_get(root, "sites");
    size_t mark = path_push_key(k, "sites");
    size_t n = json_array_size(v);
    if (v == NULL) {
        problem(k, "required key is missing (list at least one site)");
    } else if (!json_is_array(v)) {
        problem_type(k, "an array of sites", v);
    } else if (n == 0) {
        problem(k, "must list at least one site");
    } else if ((c->sites = check_calloc(k, n, sizeof(struct cfg_site))) != NULL) {
        c->num_sites = n;
        for (size_t i = 0; i < n; i++) {
            size_t m = path_push_index(k, i);
            read_site(k, json_array_get(v, i), &c->sites[i]);
            path_pop(k, m);
        }
        check_duplicate_hosts(k, c);
        check_acme_accounts(k, c);
        size_t catch_all = 0;
        path_set(k, "sites");
        for (size_t i = 0; i < n; i++) {
            if (c->sites[i].num_hosts == 0 && c->sites[i].on_demand != NULL && catch_all++ > 0) {
                size_t m = path_push_index(k, i);
                problem(k, "a second on-demand site without \"hosts\": only one site can take "
                           "every name no other site lists");
                path_pop(k, m);
            }
        }
    }
    path_pop(k, mark);
}

/* Entry points ----------------------------------------------------------------- */

struct cfg *cfg_build(json_t *root, const char *name, const char *data_dir_override,
                      struct cfg_problems *problems)
{
    struct check k;
    const char *data_dir = NULL;
    bool ports_ok = false;

    check_init(&k, problems);
    struct cfg *c = cfg_alloc(&k);
    if (c == NULL) {
        return check_finish(&k, c);
    }
    k.name = name;
    check_keys(&k, root, root_keys, NUM(root_keys));
    read_top_scalars(&k, root, c, &data_dir, &ports_ok);
    read_timeouts(&k, root, &c->timeouts);
    read_limits(&k, root, &c->limits);
    read_http2(&k, root, &c->http2);
    read_trusted_proxies(&k, root, c);
    read_log(&k, root, c);
    read_local_ca(&k, root, c);
    read_admin(&k, root, c);
    read_sites(&k, root, c);
    path_set(&k, "data_dir");
    resolve_data_dir(&k, c, data_dir_override, data_dir);
    if (ports_ok) {
        check_ports(&k, c, "http_port");
    }
    return check_finish(&k, c);
}

/* quick_name_is_public tells whether a public CA could validate name: not
 * an IP literal, not localhost, at least two labels, not under a TLD that
 * RFC 2606/6761/8375 reserve for tests and local networks. */
static bool quick_name_is_public(const char *name)
{
    static const char *const private_tlds[] = {".localhost", ".local",    ".test",      ".example",
                                               ".invalid",   ".internal", ".home.arpa", ".lan"};
    size_t len = strlen(name);
    if (strchr(name, '.') == NULL || strchr(name, ':') != NULL ||
        strspn(name, "0123456789.") == len || strcmp(name, "localhost") == 0) {
        return false;
    }
    for (size_t i = 0; i < NUM(private_tlds); i++) {
        size_t n = strlen(private_tlds[i]);
        if (len > n && strcasecmp(name + len - n, private_tlds[i]) == 0) {
            return false;
        }
    }
    return true;
}

/* read_quick_upstream fills the site's upstream from --lb-policy and
 * --health-path, naming the flags in problems. */
static void read_quick_upstream(struct check *k, const struct cfg_quick *q, struct cfg_site *s)
{
    if ((s->to_opts = check_calloc(k, s->num_to, sizeof(*s->to_opts))) == NULL) {
        return;
    }
    for (size_t i = 0; i < s->num_to; i++) {
        s->to_opts[i].weight = 1;
    }
    json_t *site = json_object();
    json_t *up = json_object();
    json_t *hc = q->health_path != NULL ? json_object() : NULL;
    bool is_failed = site == NULL || up == NULL || (q->health_path != NULL && hc == NULL);
    if (q->lb_policy != NULL) {
        is_failed |= json_object_set_new(up, "policy", json_string(q->lb_policy)) != 0;
    }
    if (hc != NULL) {
        is_failed |= json_object_set_new(hc, "path", json_string(q->health_path)) != 0;
        is_failed |= json_object_set_new(up, "health_check", hc) != 0;
    }
    is_failed |= json_object_set_new(site, "upstream", up) != 0;
    if (is_failed) {
        problem(k, "out of memory");
        json_decref(site);
        return;
    }
    path_set(k, "");
    size_t before = k->problems->num_items;
    cfg_read_upstream(k, site, s);
    json_decref(site);
    static const char *const map[][2] = {
        {"upstream.policy:", "--lb-policy:"},
        {"upstream.health_check.path:", "--health-path:"},
    };
    for (size_t i = before; i < k->problems->num_items; i++) {
        char *item = k->problems->items[i];
        for (size_t j = 0; j < NUM(map); j++) {
            size_t from = strlen(map[j][0]), to = strlen(map[j][1]);
            if (strncmp(item, map[j][0], from) == 0) {
                memmove(item + to, item + from, strlen(item + from) + 1);
                memcpy(item, map[j][1], to);
            }
        }
    }
}

struct cfg *cfg_from_quick(const struct cfg_quick *q, struct cfg_problems *out_problems)
{
    struct cfg_problems local = {0};
    struct cfg_problems *problems = out_problems != NULL ? out_problems : &local;
    static const struct cfg_quick no_flags = {.https_port = -1, .http_port = -1};
    struct check k;
    bool ports_ok = true;

    if (q == NULL) {
        q = &no_flags;
    }
    memset(problems, 0, sizeof(*problems));
    check_init(&k, problems);
    struct cfg *c = cfg_alloc(&k);
    if (c == NULL) {
        goto out;
    }
    path_set(&k, "--data-dir");
    resolve_data_dir(&k, c, q->data_dir, NULL);
    if (q->bind != NULL) {
        path_set(&k, "--bind");
        set_bind(&k, c, q->bind);
    }
    if (q->https_port != -1) {
        path_set(&k, "--https-port");
        if (q->https_port < 1 || q->https_port > 65535) {
            problem(&k, "must be 1..65535, got %d", q->https_port);
            ports_ok = false;
        } else {
            c->https_port = (uint16_t)q->https_port;
        }
    }
    if (q->http_port != -1) {
        path_set(&k, "--http-port");
        if (q->http_port < 0 || q->http_port > 65535) {
            problem(&k, "must be 0..65535, got %d", q->http_port);
            ports_ok = false;
        } else {
            c->http_port = (uint16_t)q->http_port;
        }
    }
    if (ports_ok) {
        check_ports(&k, c, "--http-port");
    }
    if ((c->sites = check_calloc(&k, 1, sizeof(struct cfg_site))) == NULL) {
        goto out;
    }
    c->num_sites = 1;
    struct cfg_site *s = &c->sites[0];
    s->tls = CFG_TLS_LOCAL;
    /* As Caddy does: a public name without --ca gets Let's Encrypt; localhost,
     * IPs, single labels and the reserved test TLDs get the local CA. */
    const char *ca = q->ca;
    if (ca == NULL && (q->on_demand || (q->from != NULL && quick_name_is_public(q->from)))) {
        ca = CFG_DEFAULT_ACME_CA;
    }
    if (ca != NULL || q->email != NULL || q->ca_root != NULL || q->on_demand) {
        /* One-site ACME: the same object a config file would hold. */
        json_t *tls = json_object();
        json_t *acme = json_object();
        if (tls == NULL || acme == NULL || json_object_set_new(tls, "acme", acme) != 0) {
            json_decref(tls);
            problem(&k, "out of memory");
            goto out;
        }
        if (ca != NULL) {
            json_object_set_new(acme, "ca", json_string(ca));
        }
        if (q->email != NULL) {
            json_object_set_new(acme, "email", json_string(q->email));
        }
        if (q->ca_root != NULL) {
            json_object_set_new(acme, "ca_root", json_string(q->ca_root));
        }
        /* Running the quick command is agreeing, as with Caddy. */
        json_object_set_new(acme, "agree_tos", json_true());
        if (q->on_demand) {
            json_t *od = json_object();
            json_object_set_new(tls, "on_demand", od);
            if (q->ask != NULL) {
                json_object_set_new(od, "ask", json_string(q->ask));
            }
            if (q->num_allow > 0) {
                json_t *allow = json_array();
                for (size_t i = 0; i < q->num_allow; i++) {
                    json_array_append_new(allow, json_string(q->allow[i]));
                }
                json_object_set_new(od, "allow", allow);
            }
        }
        json_t *site = json_object();
        json_object_set_new(site, "tls", tls);
        path_set(&k, "");
        size_t before = k.problems->num_items;
        read_tls(&k, site, s);
        json_decref(site);
        /* Name the flags, not the JSON the flags became. */
        static const char *const map[][2] = {
            {"tls.acme.ca:", "--ca:"},           {"tls.acme.email:", "--email:"},
            {"tls.acme.ca_root:", "--ca-root:"}, {"tls.on_demand.ask:", "--ask:"},
            {"tls.on_demand.allow", "--allow"},  {"tls.on_demand:", "--on-demand:"},
        };
        for (size_t i = before; i < k.problems->num_items; i++) {
            char *item = k.problems->items[i];
            for (size_t j = 0; j < NUM(map); j++) {
                size_t from = strlen(map[j][0]), to = strlen(map[j][1]);
                if (strncmp(item, map[j][0], from) == 0) {
                    memmove(item + to, item + from, strlen(item + from) + 1);
                    memcpy(item, map[j][1], to);
                }
            }
        }
    }
    path_set(&k, "--from");
    if (q->on_demand && q->from == NULL) {
        /* every name the policy permits: the catch-all site */
    } else if (q->from == NULL || q->from[0] == '\0') {
        problem(&k, "missing: give the host name to serve, e.g. --from localhost");
    } else if ((s->hosts = check_calloc(&k, 1, sizeof(char *))) != NULL) {
        s->num_hosts = 1;
        add_host(&k, &s->hosts[0], q->from, strlen(q->from));
    }
    path_set(&k, "--to");
    if (q->num_to == 0 || q->to == NULL) {
        problem(&k, "missing: give at least one backend, e.g. --to 127.0.0.1:8080");
    } else if ((s->to = check_calloc(&k, q->num_to, sizeof(struct cfg_addr))) != NULL) {
        s->num_to = q->num_to;
        for (size_t i = 0; i < q->num_to; i++) {
            if (q->to[i] == NULL) {
                problem(&k, "missing address");
            } else {
                add_backend(&k, &s->to[i], q->to[i]);
            }
        }
        read_quick_upstream(&k, q, s);
    }
out:
    c = check_finish(&k, c);
    cfg_problems_cleanup(&local);
    return c;
}

/* The walk for the other section readers of the module (config_int.h). */

size_t cfg_check_push_key(struct check *k, const char *key)
{
    return path_push_key(k, key);
}

size_t cfg_check_push_index(struct check *k, size_t i)
{
    return path_push_index(k, i);
}

void cfg_check_pop(struct check *k, size_t mark)
{
    path_pop(k, mark);
}

void cfg_check_problem(struct check *k, const char *fmt, ...)
{
    char msg[CFG_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    problem(k, "%s", msg);
}

void cfg_check_type(struct check *k, const char *expected, const json_t *v)
{
    problem_type(k, expected, v);
}

void cfg_check_keys(struct check *k, json_t *obj, const char *const *names, size_t num_names)
{
    check_keys(k, obj, names, num_names);
}

int cfg_check_int(struct check *k, const json_t *v, long long min, long long max, long long *out)
{
    return read_int(k, v, min, max, out);
}

int cfg_check_duration(struct check *k, const json_t *v, uint64_t min_ms, uint64_t max_ms,
                       uint64_t *out_ms)
{
    return read_duration(k, v, min_ms, max_ms, out_ms);
}

const char *cfg_check_string(struct check *k, const json_t *v)
{
    return read_string(k, v);
}

void cfg_check_addr(struct check *k, struct cfg_addr *out, const char *text)
{
    add_backend(k, out, text);
}

void cfg_check_file(struct check *k, json_t *obj, const char *key, bool required, char **out)
{
    read_file_key(k, obj, key, required, out);
}

size_t cfg_check_count(const struct check *k)
{
    return k->num_found;
}

const char *cfg_check_path(const struct check *k)
{
    return k->path;
}
