/* The ACME client's transport (see client.h): directory cache, nonce pool,
 * signed requests, problem documents, Retry-After and backoff. Each request is
 * a struct acme_call with its own small state machine (INIT -> DIRECTORY ->
 * NONCE -> SEND [-> BACKOFF -> ...] -> DONE), so badNonce, stale connections
 * and transient failures are handled here and nowhere else. Invariants: a
 * call calls back exactly once (never from its start function, never after a
 * cancel) and is freed right after; the directory is fetched by one call
 * shared by every call waiting for it. Design: docs/acme.md. */
#include "acme/client.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>
#include <jansson.h>

#include "acme/jws.h"
#include "proxy/core/err.h"
#include "proxy/core/httpc.h"
#include "proxy/core/log.h"
#include "proxy/core/time.h"

/* A stale pooled connection is retried at once; more than this in a row
 * means something else is wrong (the CA closes every connection early). */
#define CLIENT_MAX_STALE 3

/* ---- problems ------------------------------------------------------------ */

/* copy_clean copies src into dst (cap bytes), replacing control characters
 * so a CA's text cannot forge log lines, and truncating. */
static void copy_clean(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    for (; src != NULL && src[n] != '\0' && n + 1 < cap; n++) {
        unsigned char ch = (unsigned char)src[n];
        dst[n] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
    }
    dst[n] = '\0';
}

/* append_clean appends src to the NUL-terminated dst (cap bytes). */
static void append_clean(char *dst, size_t cap, const char *src)
{
    size_t len = strlen(dst);
    if (len + 1 < cap) {
        copy_clean(dst + len, cap - len, src);
    }
}

bool acme_problem_is(const struct acme_problem *p, const char *name)
{
    size_t plen = sizeof(ACME_ERROR_PREFIX) - 1;
    return p != NULL && strncmp(p->type, ACME_ERROR_PREFIX, plen) == 0 &&
           strcmp(p->type + plen, name) == 0;
}

const char *acme_problem_short(const struct acme_problem *p)
{
    size_t plen = sizeof(ACME_ERROR_PREFIX) - 1;
    if (strncmp(p->type, ACME_ERROR_PREFIX, plen) == 0) {
        return p->type + plen;
    }
    if (p->type[0] != '\0') {
        return p->type;
    }
    return p->status != 0 ? "http" : "network";
}

static void problem_set_retryable(struct acme_problem *p)
{
    p->retryable = acme_problem_is(p, "badNonce") || acme_problem_is(p, "rateLimited") ||
                   acme_problem_is(p, "serverInternal") || p->status >= 500 || p->status == 429;
}

void acme_problem_from_json(struct acme_problem *out, int status, const json_t *obj)
{
    memset(out, 0, sizeof(*out));
    out->status = status;
    if (!json_is_object(obj)) {
        snprintf(out->detail, sizeof(out->detail), "HTTP %d", status);
        problem_set_retryable(out);
        return;
    }
    copy_clean(out->type, sizeof(out->type), json_string_value(json_object_get(obj, "type")));
    copy_clean(out->detail, sizeof(out->detail), json_string_value(json_object_get(obj, "detail")));
    json_t *st = json_object_get(obj, "status");
    if (status == 0 && json_is_integer(st) && json_integer_value(st) >= 100 &&
        json_integer_value(st) <= 599) {
        out->status = (int)json_integer_value(st);
    }
    /* RFC 8555 §6.7.1: per-identifier problems; the first few are folded into
     * detail so the operator sees which name failed and why. */
    json_t *subs = json_object_get(obj, "subproblems");
    if (json_is_array(subs)) {
        size_t i;
        json_t *sp;
        json_array_foreach(subs, i, sp)
        {
            out->num_subproblems++;
            if (!json_is_object(sp)) {
                continue;
            }
            const char *id =
                json_string_value(json_object_get(json_object_get(sp, "identifier"), "value"));
            const char *sd = json_string_value(json_object_get(sp, "detail"));
            const char *stype = json_string_value(json_object_get(sp, "type"));
            append_clean(out->detail, sizeof(out->detail), out->detail[0] != '\0' ? "; " : "");
            append_clean(out->detail, sizeof(out->detail), id != NULL ? id : "?");
            append_clean(out->detail, sizeof(out->detail), ": ");
            append_clean(out->detail, sizeof(out->detail),
                         sd != NULL ? sd : (stype != NULL ? stype : "error"));
        }
    }
    if (out->detail[0] == '\0' && out->status != 0) {
        snprintf(out->detail, sizeof(out->detail), "HTTP %d", out->status);
    }
    problem_set_retryable(out);
}

int acme_problem_parse(struct acme_problem *out, int status, const char *body, size_t len)
{
    json_t *j = len > 0 ? json_loadb(body, len, 0, NULL) : NULL;
    int rc = json_is_object(j) && json_is_string(json_object_get(j, "type")) ? 0 : -1;
    acme_problem_from_json(out, status, rc == 0 ? j : NULL);
    json_decref(j);
    return rc;
}

void acme_problem_from_err(struct acme_problem *out, const struct dm_err *err)
{
    memset(out, 0, sizeof(*out));
    copy_clean(out->detail, sizeof(out->detail), err != NULL ? err->msg : "unknown error");
    if (err != NULL) {
        /* Networks and CAs recover; bad certificates, limits and configs don't. */
        out->retryable = err->code == DM_E_IO || err->code == DM_E_TIMEOUT ||
                         err->code == DM_E_PROTO || err->code == DM_HTTPC_E_STALE;
    }
}

/* ---- Retry-After, RFC 3339, Link, URLs ------------------------------------ */

static int month_index(const char *m)
{
    static const char *const names[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    for (int i = 0; i < 12; i++) {
        if (strcmp(m, names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/* tm_to_unix validates broken-down UTC fields and converts them. */
static int tm_to_unix(int year, int mon, int mday, int hour, int min, int sec, time_t *out)
{
    if (year < 1970 || year > 9999 || mon < 0 || mon > 11 || mday < 1 || mday > 31 || hour < 0 ||
        hour > 23 || min < 0 || min > 59 || sec < 0 || sec > 60) {
        return -1;
    }
    struct tm tm = {0};
    tm.tm_year = year - 1900;
    tm.tm_mon = mon;
    tm.tm_mday = mday;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec;
    *out = timegm(&tm);
    return *out == (time_t)-1 ? -1 : 0;
}

/* http_date_parse reads the three HTTP-date forms of RFC 9110 §5.6.7. */
static int http_date_parse(const char *s, time_t *out)
{
    char wday[16], mon[4];
    int d, y, hh, mm, ss, n = -1;
    /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
    if (sscanf(s, "%3[A-Za-z], %2d %3[A-Za-z] %4d %2d:%2d:%2d GMT%n", wday, &d, mon, &y, &hh, &mm,
               &ss, &n) == 7 &&
        n > 0 && s[n] == '\0') {
        return tm_to_unix(y, month_index(mon), d, hh, mm, ss, out);
    }
    /* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT (two-digit year: 70..99 -> 19xx) */
    n = -1;
    if (sscanf(s, "%15[A-Za-z], %2d-%3[A-Za-z]-%2d %2d:%2d:%2d GMT%n", wday, &d, mon, &y, &hh, &mm,
               &ss, &n) == 7 &&
        n > 0 && s[n] == '\0') {
        return tm_to_unix(y < 70 ? 2000 + y : 1900 + y, month_index(mon), d, hh, mm, ss, out);
    }
    /* asctime: Sun Nov  6 08:49:37 1994 */
    n = -1;
    if (sscanf(s, "%3[A-Za-z] %3[A-Za-z] %2d %2d:%2d:%2d %4d%n", wday, mon, &d, &hh, &mm, &ss, &y,
               &n) == 7 &&
        n > 0 && s[n] == '\0') {
        return tm_to_unix(y, month_index(mon), d, hh, mm, ss, out);
    }
    return -1;
}

int acme_retry_after_parse(const char *value, time_t now, uint32_t *out_s)
{
    if (value == NULL) {
        return -1;
    }
    while (*value == ' ' || *value == '\t') {
        value++;
    }
    char buf[64];
    size_t len = strlen(value);
    while (len > 0 && (value[len - 1] == ' ' || value[len - 1] == '\t')) {
        len--;
    }
    if (len == 0 || len >= sizeof(buf)) {
        return -1;
    }
    memcpy(buf, value, len);
    buf[len] = '\0';
    if (strspn(buf, "0123456789") == len) {
        /* delta-seconds; long runs of digits just clamp. */
        uint64_t v = 0;
        for (size_t i = 0; i < len && v <= ACME_RETRY_AFTER_MAX_S; i++) {
            v = v * 10 + (uint64_t)(buf[i] - '0');
        }
        *out_s = v > ACME_RETRY_AFTER_MAX_S ? ACME_RETRY_AFTER_MAX_S : (uint32_t)v;
        return 0;
    }
    time_t t;
    if (http_date_parse(buf, &t) != 0) {
        return -1;
    }
    if (t <= now) {
        *out_s = 0;
    } else if (t - now > ACME_RETRY_AFTER_MAX_S) {
        *out_s = ACME_RETRY_AFTER_MAX_S;
    } else {
        *out_s = (uint32_t)(t - now);
    }
    return 0;
}

/* digits reads exactly n decimal digits. */
static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int acme_time_parse(const char *s, time_t *out)
{
    int y, mo, d, h, mi, sec;
    if (s == NULL || strlen(s) < 20 || digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) ||
        s[7] != '-' || digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') ||
        digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &mi) || s[16] != ':' ||
        digits(s + 17, 2, &sec)) {
        return -1;
    }
    const char *p = s + 19;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9') {
            return -1;
        }
        while (*p >= '0' && *p <= '9') {
            p++;
        }
    }
    long offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (digits(p + 1, 2, &oh) || p[3] != ':' || digits(p + 4, 2, &om) || oh > 23 || om > 59) {
            return -1;
        }
        offset = (oh * 3600L + om * 60L) * (*p == '+' ? 1 : -1);
        p += 6;
    } else {
        return -1;
    }
    if (*p != '\0' || tm_to_unix(y, mo - 1, d, h, mi, sec, out) != 0) {
        return -1;
    }
    *out -= offset;
    return 0;
}

void acme_strings_free(char **s, size_t num)
{
    if (s == NULL) {
        return;
    }
    for (size_t i = 0; i < num; i++) {
        free(s[i]);
    }
    free(s);
}

/* url_scheme_len returns the length of "http://" or "https://" at the start
 * of s, or 0. */
static size_t url_scheme_len(const char *s)
{
    if (strncasecmp(s, "https://", 8) == 0) {
        return 8;
    }
    if (strncasecmp(s, "http://", 7) == 0) {
        return 7;
    }
    return 0;
}

char *acme_url_resolve(const char *base, const char *ref)
{
    if (ref == NULL || ref[0] == '\0') {
        return NULL;
    }
    if (url_scheme_len(ref) > 0 || base == NULL || url_scheme_len(base) == 0) {
        return strdup(ref);
    }
    size_t scheme = url_scheme_len(base);
    size_t origin = scheme + strcspn(base + scheme, "/?#");
    size_t prefix;
    if (ref[0] == '/' && ref[1] == '/') {
        prefix = scheme - 2; /* "https:" */
    } else if (ref[0] == '/') {
        prefix = origin;
    } else {
        /* Relative path: replace the last segment of the base path. */
        size_t end = origin + strcspn(base + origin, "?#");
        prefix = origin;
        for (size_t i = origin; i < end; i++) {
            if (base[i] == '/') {
                prefix = i + 1;
            }
        }
        if (prefix == origin) {
            char *out = malloc(origin + 1 + strlen(ref) + 1);
            if (out != NULL) {
                sprintf(out, "%.*s/%s", (int)origin, base, ref);
            }
            return out;
        }
    }
    char *out = malloc(prefix + strlen(ref) + 1);
    if (out != NULL) {
        memcpy(out, base, prefix);
        strcpy(out + prefix, ref);
    }
    return out;
}

/* rel_matches tells whether the space-separated rel list v[0..len) holds rel. */
static bool rel_matches(const char *v, size_t len, const char *rel)
{
    size_t rlen = strlen(rel), i = 0;
    while (i < len) {
        while (i < len && v[i] == ' ') {
            i++;
        }
        size_t start = i;
        while (i < len && v[i] != ' ') {
            i++;
        }
        if (i - start == rlen && strncasecmp(v + start, rel, rlen) == 0) {
            return true;
        }
    }
    return false;
}

int acme_link_parse(const char *value, const char *rel, const char *base_url, char ***io_urls,
                    size_t *io_num, size_t max)
{
    const char *p = value;
    while (p != NULL && *p != '\0') {
        while (*p == ' ' || *p == '\t' || *p == ',') {
            p++;
        }
        if (*p != '<') {
            return 0; /* malformed: keep what we have */
        }
        const char *ustart = ++p;
        const char *uend = strchr(p, '>');
        if (uend == NULL) {
            return 0;
        }
        p = uend + 1;
        bool is_match = false;
        /* Parameters up to the next top-level comma. */
        for (;;) {
            while (*p == ' ' || *p == '\t') {
                p++;
            }
            if (*p != ';') {
                break;
            }
            p++;
            while (*p == ' ' || *p == '\t') {
                p++;
            }
            const char *nstart = p;
            while (*p != '\0' && *p != '=' && *p != ';' && *p != ',' && *p != ' ') {
                p++;
            }
            size_t nlen = (size_t)(p - nstart);
            while (*p == ' ') {
                p++;
            }
            const char *vstart = p;
            size_t vlen = 0;
            if (*p == '=') {
                p++;
                while (*p == ' ') {
                    p++;
                }
                if (*p == '"') {
                    vstart = ++p;
                    while (*p != '\0' && *p != '"') {
                        p += (*p == '\\' && p[1] != '\0') ? 2 : 1;
                    }
                    vlen = (size_t)(p - vstart);
                    if (*p == '"') {
                        p++;
                    }
                } else {
                    vstart = p;
                    while (*p != '\0' && *p != ';' && *p != ',' && *p != ' ') {
                        p++;
                    }
                    vlen = (size_t)(p - vstart);
                }
            }
            if (nlen == 3 && strncasecmp(nstart, "rel", 3) == 0 && rel_matches(vstart, vlen, rel)) {
                is_match = true;
            }
        }
        if (is_match && *io_num < max) {
            char *ref = strndup(ustart, (size_t)(uend - ustart));
            char *abs = ref != NULL ? acme_url_resolve(base_url, ref) : NULL;
            free(ref);
            if (abs != NULL) {
                char **grown = realloc(*io_urls, (*io_num + 1) * sizeof(*grown));
                if (grown == NULL) {
                    free(abs);
                    return -1;
                }
                *io_urls = grown;
                grown[(*io_num)++] = abs;
            } else if (uend > ustart) {
                return -1;
            }
        }
        while (*p != '\0' && *p != ',') {
            p++;
        }
    }
    return 0;
}

/* ---- directory ------------------------------------------------------------ */

void acme_directory_cleanup(struct acme_directory *d)
{
    free(d->new_nonce);
    free(d->new_account);
    free(d->new_order);
    free(d->new_authz);
    free(d->revoke_cert);
    free(d->key_change);
    free(d->renewal_info);
    free(d->terms_of_service);
    free(d->website);
    acme_strings_free(d->profiles, d->num_profiles);
    memset(d, 0, sizeof(*d));
}

/* dir_url copies the URL member name of o into *out; absent is fine unless
 * is_required. */
static int dir_url(const json_t *o, const char *name, bool is_required, char **out,
                   struct dm_err *err)
{
    const json_t *v = json_object_get(o, name);
    if (v == NULL && !is_required) {
        return 0;
    }
    const char *s = json_string_value(v);
    if (s == NULL || url_scheme_len(s) == 0 || strlen(s) > DM_HTTPC_MAX_URL) {
        dm_err_set(err, DM_E_PROTO, "ACME directory: \"%s\" is %s", name,
                   v == NULL ? "missing" : "not an http(s) URL");
        return -1;
    }
    if ((*out = strdup(s)) == NULL) {
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return -1;
    }
    return 0;
}

int acme_directory_parse(struct acme_directory *out, const char *json, size_t len,
                         struct dm_err *err)
{
    memset(out, 0, sizeof(*out));
    json_error_t jerr;
    json_t *j = json_loadb(json, len, 0, &jerr);
    if (!json_is_object(j)) {
        dm_err_set(err, DM_E_PROTO, "ACME directory: not a JSON object (%s)",
                   j == NULL ? jerr.text : "wrong type");
        json_decref(j);
        return -1;
    }
    int rc = -1;
    if (dir_url(j, "newNonce", true, &out->new_nonce, err) ||
        dir_url(j, "newAccount", true, &out->new_account, err) ||
        dir_url(j, "newOrder", true, &out->new_order, err) ||
        dir_url(j, "newAuthz", false, &out->new_authz, err) ||
        dir_url(j, "revokeCert", false, &out->revoke_cert, err) ||
        dir_url(j, "keyChange", false, &out->key_change, err) ||
        dir_url(j, "renewalInfo", false, &out->renewal_info, err)) {
        goto out;
    }
    json_t *meta = json_object_get(j, "meta");
    if (json_is_object(meta)) {
        const char *tos = json_string_value(json_object_get(meta, "termsOfService"));
        const char *web = json_string_value(json_object_get(meta, "website"));
        if ((tos != NULL && (out->terms_of_service = strdup(tos)) == NULL) ||
            (web != NULL && (out->website = strdup(web)) == NULL)) {
            dm_err_set(err, DM_E_NOMEM, "out of memory");
            goto out;
        }
        out->external_account_required =
            json_is_true(json_object_get(meta, "externalAccountRequired"));
        json_t *profiles = json_object_get(meta, "profiles");
        if (json_is_object(profiles) && json_object_size(profiles) > 0) {
            size_t n = json_object_size(profiles);
            out->profiles = calloc(n, sizeof(*out->profiles));
            if (out->profiles == NULL) {
                dm_err_set(err, DM_E_NOMEM, "out of memory");
                goto out;
            }
            const char *name;
            json_t *desc;
            json_object_foreach(profiles, name, desc)
            {
                (void)desc;
                if ((out->profiles[out->num_profiles] = strdup(name)) == NULL) {
                    dm_err_set(err, DM_E_NOMEM, "out of memory");
                    goto out;
                }
                out->num_profiles++;
            }
        }
    }
    rc = 0;
out:
    json_decref(j);
    if (rc != 0) {
        acme_directory_cleanup(out);
    }
    return rc;
}

bool acme_directory_has_profile(const struct acme_directory *d, const char *name)
{
    for (size_t i = 0; d != NULL && name != NULL && i < d->num_profiles; i++) {
        if (strcmp(d->profiles[i], name) == 0) {
            return true;
        }
    }
    return false;
}

/* ---- client and calls ------------------------------------------------------- */

enum step {
    STEP_CONTINUE = 0,
    STEP_WAIT,
    STEP_DONE,
    STEP_FAIL,
};

enum call_kind {
    CALL_KIND_GET = 0, /* unsigned GET */
    CALL_KIND_POST,    /* JWS POST or POST-as-GET */
    CALL_KIND_DIR,     /* the directory, from the cache or the shared fetch */
};

enum call_state {
    CALL_INIT = 0,  /* deferred start */
    CALL_DIRECTORY, /* wait for the directory (newNonce URL) */
    CALL_NONCE,     /* take a nonce from the pool, or HEAD newNonce */
    CALL_SEND,      /* the request itself */
    CALL_BACKOFF,   /* wait before a retry */
    CALL_DONE,
};

static const char *const call_state_names[] = {"init", "directory", "nonce",
                                               "send", "backoff",   "done"};

/* What the last response means for the call. */
enum call_outcome {
    OUT_NONE = 0,
    OUT_OK,        /* deliver it */
    OUT_RETRY_NOW, /* re-sign with a fresh nonce at once */
    OUT_BACKOFF,   /* wait backoff_ms, then send again */
    OUT_FAIL,      /* deliver prob/err */
};

struct acme_call {
    struct acme_client *c; /* borrowed */
    struct acme_call *prev, *next;
    struct acme_call *next_waiter; /* in c->dir_waiters */
    enum call_kind kind;
    enum call_state state;
    char *url;                  /* owned */
    char *payload;              /* owned: POST body before signing */
    char *kid;                  /* owned or NULL */
    char *accept;               /* owned or NULL */
    const struct acme_key *key; /* borrowed */
    struct dm_httpc_call *http; /* owned while a request is in flight */
    struct event *timer;        /* owned: deferred start, backoff, directory wake-up */
    uint64_t deadline_us;       /* monotonic */
    bool is_no_retry;
    bool is_dir_waiter;
    bool has_dir_failure; /* the shared directory fetch failed: prob/err say why */
    bool is_timer_fired;
    bool is_in_callback;
    bool has_reply;
    unsigned num_bad_nonce, num_stale, num_retries;
    uint32_t backoff_ms;
    char nonce[ACME_NONCE_MAX + 1];
    /* The reply being processed; borrowed from httpc during its callback. */
    const struct dm_httpc_resp *reply;
    struct dm_err reply_err;
    bool is_reply_err;
    enum call_outcome outcome;
    struct acme_problem prob; /* failure to report */
    struct dm_err err;
    acme_client_done_cb cb;
    acme_client_dir_cb dir_cb;
    void *arg;
};

struct acme_client {
    struct event_base *base; /* borrowed */
    struct dm_httpc *httpc;  /* owned if is_httpc_owned */
    bool is_httpc_owned;
    char *dir_url; /* owned */
    struct acme_directory dir;
    bool has_dir;
    struct acme_call *dir_fetch;   /* borrowed (in calls): the shared directory GET */
    struct acme_call *dir_waiters; /* borrowed: calls waiting for it */
    struct acme_call *calls;       /* owned: every call in flight */
    char nonces[ACME_NONCE_POOL_MAX][ACME_NONCE_MAX + 1]; /* newest last */
    size_t num_nonces;
    uint32_t call_timeout_ms, retry_base_ms, retry_max_ms;
    unsigned max_bad_nonce, max_retries;
};

struct acme_client *acme_client_new(struct event_base *base, const struct acme_client_opts *o,
                                    struct dm_err *err)
{
    if (o == NULL || o->directory_url == NULL || url_scheme_len(o->directory_url) == 0 ||
        strlen(o->directory_url) > DM_HTTPC_MAX_URL) {
        dm_err_set(err, DM_E_CONFIG, "ACME directory URL must be an http:// or https:// URL");
        return NULL;
    }
    struct acme_client *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->dir_url = strdup(o->directory_url)) == NULL) {
        free(c);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    c->base = base;
    c->call_timeout_ms =
        o->call_timeout_ms ? o->call_timeout_ms : ACME_CLIENT_DEFAULT_CALL_TIMEOUT_MS;
    c->retry_base_ms = o->retry_base_ms ? o->retry_base_ms : ACME_CLIENT_DEFAULT_RETRY_BASE_MS;
    c->retry_max_ms = o->retry_max_ms ? o->retry_max_ms : ACME_CLIENT_DEFAULT_RETRY_MAX_MS;
    c->max_bad_nonce = o->max_bad_nonce ? o->max_bad_nonce : ACME_CLIENT_DEFAULT_MAX_BAD_NONCE;
    c->max_retries = o->max_retries ? o->max_retries : ACME_CLIENT_DEFAULT_MAX_RETRIES;
    if (o->httpc != NULL) {
        c->httpc = o->httpc;
    } else {
        struct dm_httpc_opts ho = {.ca_file = o->ca_file,
                                   .request_timeout_ms = o->request_timeout_ms};
        c->httpc = dm_httpc_new(base, o->dns, &ho, err);
        if (c->httpc == NULL) {
            free(c->dir_url);
            free(c);
            return NULL;
        }
        c->is_httpc_owned = true;
    }
    return c;
}

static void call_free(struct acme_call *call);

void acme_client_free(struct acme_client *c)
{
    if (c == NULL) {
        return;
    }
    while (c->calls != NULL) {
        call_free(c->calls);
    }
    acme_directory_cleanup(&c->dir);
    if (c->is_httpc_owned) {
        dm_httpc_free(c->httpc);
    }
    memset(c->nonces, 0, sizeof(c->nonces));
    free(c->dir_url);
    free(c);
}

struct event_base *acme_client_base(const struct acme_client *c)
{
    return c->base;
}

const char *acme_client_directory_url(const struct acme_client *c)
{
    return c->dir_url;
}

const struct acme_directory *acme_client_directory_find(const struct acme_client *c)
{
    return c->has_dir ? &c->dir : NULL;
}

size_t acme_client_num_nonces(const struct acme_client *c)
{
    return c->num_nonces;
}

/* nonce_push keeps a Replay-Nonce (RFC 8555 §6.5.1); a full pool drops its
 * oldest. Values that are not base64url are ignored (the JWS would refuse them). */
static void nonce_push(struct acme_client *c, const char *nonce)
{
    size_t len = nonce != NULL ? strlen(nonce) : 0;
    if (len == 0 || len > ACME_NONCE_MAX) {
        return;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = nonce[i];
        if (!isalnum((unsigned char)ch) && ch != '-' && ch != '_') {
            return;
        }
    }
    if (c->num_nonces == ACME_NONCE_POOL_MAX) {
        memmove(c->nonces[0], c->nonces[1], sizeof(c->nonces[0]) * (ACME_NONCE_POOL_MAX - 1));
        c->num_nonces--;
    }
    memcpy(c->nonces[c->num_nonces++], nonce, len + 1);
}

/* nonce_pop takes the newest nonce (least likely to have expired). */
static bool nonce_pop(struct acme_client *c, char out[ACME_NONCE_MAX + 1])
{
    if (c->num_nonces == 0) {
        return false;
    }
    c->num_nonces--;
    memcpy(out, c->nonces[c->num_nonces], ACME_NONCE_MAX + 1);
    memset(c->nonces[c->num_nonces], 0, ACME_NONCE_MAX + 1);
    return true;
}

static void waiter_remove(struct acme_call *call)
{
    for (struct acme_call **pp = &call->c->dir_waiters; *pp != NULL; pp = &(*pp)->next_waiter) {
        if (*pp == call) {
            *pp = call->next_waiter;
            break;
        }
    }
    call->next_waiter = NULL;
    call->is_dir_waiter = false;
}

static void call_free(struct acme_call *call)
{
    struct acme_client *c = call->c;
    dm_httpc_request_cancel(call->http);
    if (call->timer != NULL) {
        event_free(call->timer);
    }
    if (call->is_dir_waiter) {
        waiter_remove(call);
    }
    if (c->dir_fetch == call) {
        c->dir_fetch = NULL;
    }
    if (call->prev != NULL) {
        call->prev->next = call->next;
    } else {
        c->calls = call->next;
    }
    if (call->next != NULL) {
        call->next->prev = call->prev;
    }
    free(call->url);
    free(call->payload);
    free(call->kid);
    free(call->accept);
    free(call);
}

void acme_client_call_cancel(struct acme_call *call)
{
    if (call == NULL || call->is_in_callback) {
        return;
    }
    call_free(call);
}

static void call_step(struct acme_call *call);

static void call_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct acme_call *call = arg;
    if (call->state == CALL_BACKOFF) {
        call->is_timer_fired = true;
    }
    call_step(call);
}

static void call_fail(struct acme_call *call, const struct dm_err *err)
{
    call->err = *err;
    acme_problem_from_err(&call->prob, err);
}

/* call_decide turns call->prob into what to do next: re-sign at once after
 * badNonce, wait and retry a transient failure if the wait fits the deadline
 * (Retry-After first, else doubling backoff), or give up. */
static enum call_outcome call_decide(struct acme_call *call)
{
    struct acme_client *c = call->c;
    if (acme_problem_is(&call->prob, "badNonce") && call->num_bad_nonce < c->max_bad_nonce) {
        call->num_bad_nonce++;
        DM_LOG_DBG("acme", "badNonce from %s: retry %u with a fresh nonce", call->url,
                   call->num_bad_nonce);
        return OUT_RETRY_NOW;
    }
    if (call->prob.retryable && !call->is_no_retry && call->num_retries < c->max_retries) {
        uint64_t delay_ms;
        if (call->prob.has_retry_after) {
            delay_ms = (uint64_t)call->prob.retry_after_s * 1000;
        } else {
            delay_ms = (uint64_t)c->retry_base_ms << call->num_retries;
            if (delay_ms > c->retry_max_ms) {
                delay_ms = c->retry_max_ms;
            }
        }
        if (dm_time_mono_us() + delay_ms * 1000 < call->deadline_us) {
            call->num_retries++;
            call->backoff_ms = (uint32_t)delay_ms;
            DM_LOG_DBG("acme", "%s from %s: retry %u in %u ms", acme_problem_short(&call->prob),
                       call->url, call->num_retries, call->backoff_ms);
            return OUT_BACKOFF;
        }
    }
    return OUT_FAIL;
}

/* call_eval judges the reply of an exchange (the request or HEAD newNonce):
 * keeps its nonce, and fills prob/err and the outcome. */
static enum call_outcome call_eval(struct acme_call *call)
{
    const struct dm_httpc_resp *r = call->reply;
    if (call->is_reply_err) {
        if (call->reply_err.code == DM_HTTPC_E_STALE && call->kind == CALL_KIND_POST &&
            call->num_stale < CLIENT_MAX_STALE) {
            call->num_stale++;
            return OUT_RETRY_NOW;
        }
        call_fail(call, &call->reply_err);
        return call_decide(call);
    }
    nonce_push(call->c, dm_httpc_resp_header(r, "Replay-Nonce"));
    if (r->status >= 200 && r->status < 300) {
        return OUT_OK;
    }
    acme_problem_parse(&call->prob, r->status, r->body, r->body_len);
    uint32_t ra;
    if (acme_retry_after_parse(dm_httpc_resp_header(r, "Retry-After"), dm_time_now(), &ra) == 0) {
        call->prob.retry_after_s = ra;
        call->prob.has_retry_after = true;
    }
    dm_err_set(&call->err, DM_E_ACME, "%s %s: HTTP %d %s: %s",
               call->kind == CALL_KIND_POST ? "POST" : "GET", call->url, r->status,
               acme_problem_short(&call->prob), call->prob.detail);
    return call_decide(call);
}

static void call_on_http(const struct dm_httpc_resp *resp, const struct dm_err *err, void *arg)
{
    struct acme_call *call = arg;
    call->http = NULL;
    call->has_reply = true;
    call->reply = resp;
    call->is_reply_err = err != NULL;
    if (err != NULL) {
        call->reply_err = *err;
    }
    call_step(call); /* may free call */
}

static void client_on_directory(const struct acme_response *resp, const struct acme_problem *prob,
                                const struct dm_err *err, void *arg)
{
    struct acme_client *c = arg;
    struct dm_err perr = {0};
    struct acme_problem pprob;
    c->dir_fetch = NULL;
    if (resp != NULL) {
        struct acme_directory d;
        if (acme_directory_parse(&d, resp->body, resp->body_len, &perr) == 0) {
            acme_directory_cleanup(&c->dir);
            c->dir = d;
            c->has_dir = true;
            DM_LOG_DBG("acme", "directory %s: newOrder %s", c->dir_url, d.new_order);
        } else {
            acme_problem_from_err(&pprob, &perr);
            prob = &pprob;
            err = &perr;
        }
    }
    /* Wake the waiters from their own timers: their callbacks must not run
     * inside this one, where cancels could reshape the list. */
    while (c->dir_waiters != NULL) {
        struct acme_call *w = c->dir_waiters;
        c->dir_waiters = w->next_waiter;
        w->next_waiter = NULL;
        w->is_dir_waiter = false;
        if (!c->has_dir) {
            w->has_dir_failure = true;
            w->prob = *prob;
            w->err = *err;
        }
        event_active(w->timer, EV_TIMEOUT, 1);
    }
}

static struct acme_call *call_new(struct acme_client *c, enum call_kind kind, const char *url,
                                  const struct acme_call_opts *o, struct dm_err *err)
{
    struct acme_call *call = calloc(1, sizeof(*call));
    if (call == NULL || (url != NULL && (call->url = strdup(url)) == NULL) ||
        (o != NULL && o->accept != NULL && (call->accept = strdup(o->accept)) == NULL) ||
        (call->timer = evtimer_new(c->base, call_on_timer, call)) == NULL) {
        if (call != NULL) {
            free(call->url);
            free(call->accept);
        }
        free(call);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    call->c = c;
    call->kind = kind;
    call->deadline_us = o != NULL && o->deadline_us != 0
                            ? o->deadline_us
                            : dm_time_mono_us() + (uint64_t)c->call_timeout_ms * 1000;
    call->is_no_retry = o != NULL && o->is_no_retry;
    call->next = c->calls;
    if (c->calls != NULL) {
        c->calls->prev = call;
    }
    c->calls = call;
    event_active(call->timer, EV_TIMEOUT, 1); /* never call back from _start */
    return call;
}

static enum step call_do_directory(struct acme_call *call)
{
    struct acme_client *c = call->c;
    if (c->has_dir) {
        return STEP_CONTINUE;
    }
    if (call->has_dir_failure) {
        return STEP_FAIL;
    }
    if (!call->is_dir_waiter) {
        if (c->dir_fetch == NULL) {
            struct dm_err err = {0};
            c->dir_fetch = acme_client_get_start(c, c->dir_url, NULL, client_on_directory, c, &err);
            if (c->dir_fetch == NULL) {
                call_fail(call, &err);
                return STEP_FAIL;
            }
        }
        call->next_waiter = c->dir_waiters;
        c->dir_waiters = call;
        call->is_dir_waiter = true;
    }
    return STEP_WAIT;
}

static enum step call_do_nonce(struct acme_call *call)
{
    struct acme_client *c = call->c;
    call->outcome = OUT_NONE;
    if (call->has_reply) {
        call->has_reply = false;
        enum call_outcome out = call_eval(call);
        if (out == OUT_OK && c->num_nonces == 0) {
            dm_err_set(&call->err, DM_E_PROTO, "%s answered without a Replay-Nonce",
                       c->dir.new_nonce);
            acme_problem_from_err(&call->prob, &call->err);
            return STEP_FAIL;
        }
        if (out == OUT_FAIL) {
            return STEP_FAIL;
        }
        if (out == OUT_BACKOFF) {
            call->outcome = OUT_BACKOFF;
            return STEP_CONTINUE;
        }
    }
    if (nonce_pop(c, call->nonce)) {
        return STEP_CONTINUE;
    }
    struct dm_httpc_req req = {.method = "HEAD", .url = c->dir.new_nonce};
    struct dm_err err = {0};
    call->http = dm_httpc_request_start(c->httpc, &req, call_on_http, call, &err);
    if (call->http == NULL) {
        call_fail(call, &err);
        return STEP_FAIL;
    }
    return STEP_WAIT;
}

/* call_send_request signs (POST) and starts the HTTP request. */
static int call_send_request(struct acme_call *call, struct dm_err *err)
{
    struct dm_httpc_header hdrs[2];
    size_t num_hdrs = 0;
    char *jws = NULL;
    struct dm_httpc_req req = {.method = "GET", .url = call->url};
    if (call->kind == CALL_KIND_POST) {
        if (acme_jws_sign(call->key, call->url, call->nonce, call->kid, call->payload, &jws, err) !=
            0) {
            return -1;
        }
        memset(call->nonce, 0, sizeof(call->nonce)); /* single use (§6.5) */
        req.method = "POST";
        req.body = jws;
        req.body_len = strlen(jws);
        hdrs[num_hdrs++] = (struct dm_httpc_header){"Content-Type", "application/jose+json"};
    }
    if (call->accept != NULL) {
        hdrs[num_hdrs++] = (struct dm_httpc_header){"Accept", call->accept};
    }
    req.headers = hdrs;
    req.num_headers = num_hdrs;
    call->http = dm_httpc_request_start(call->c->httpc, &req, call_on_http, call, err);
    free(jws);
    return call->http != NULL ? 0 : -1;
}

static enum step call_do_send(struct acme_call *call)
{
    call->outcome = OUT_NONE;
    if (!call->has_reply) {
        struct dm_err err = {0};
        if (call_send_request(call, &err) != 0) {
            call_fail(call, &err);
            return STEP_FAIL;
        }
        return STEP_WAIT;
    }
    call->has_reply = false;
    call->outcome = call_eval(call);
    switch (call->outcome) {
    case OUT_OK:
        return STEP_DONE;
    case OUT_RETRY_NOW:
    case OUT_BACKOFF:
        return STEP_CONTINUE;
    default:
        return STEP_FAIL;
    }
}

static enum step call_do_backoff(struct acme_call *call)
{
    if (call->is_timer_fired) {
        call->is_timer_fired = false;
        return STEP_CONTINUE;
    }
    struct timeval tv = {call->backoff_ms / 1000, (call->backoff_ms % 1000) * 1000};
    evtimer_add(call->timer, &tv);
    return STEP_WAIT;
}

/* call_next is the transition table of a call. */
static enum call_state call_next(const struct acme_call *call)
{
    switch (call->state) {
    case CALL_INIT:
        return call->kind == CALL_KIND_GET ? CALL_SEND : CALL_DIRECTORY;
    case CALL_DIRECTORY:
        return call->kind == CALL_KIND_DIR ? CALL_DONE : CALL_NONCE;
    case CALL_NONCE:
        return call->outcome == OUT_BACKOFF ? CALL_BACKOFF : CALL_SEND;
    case CALL_SEND:
        if (call->outcome == OUT_BACKOFF) {
            return CALL_BACKOFF;
        }
        return call->kind == CALL_KIND_POST ? CALL_NONCE : CALL_SEND;
    case CALL_BACKOFF:
        return call->kind == CALL_KIND_POST ? CALL_NONCE : CALL_SEND;
    case CALL_DONE:
        break;
    }
    return CALL_DONE;
}

/* call_deliver runs the callback once and frees the call. */
static void call_deliver(struct acme_call *call, bool is_ok)
{
    struct acme_client *c = call->c;
    call->is_in_callback = true;
    call->state = CALL_DONE;
    if (call->kind == CALL_KIND_DIR) {
        call->dir_cb(is_ok ? &c->dir : NULL, is_ok ? NULL : &call->prob, is_ok ? NULL : &call->err,
                     call->arg);
        call_free(call);
        return;
    }
    if (!is_ok) {
        call->cb(NULL, &call->prob, &call->err, call->arg);
        call_free(call);
        return;
    }
    const struct dm_httpc_resp *r = call->reply;
    char *location = acme_url_resolve(call->url, dm_httpc_resp_header(r, "Location"));
    char **ups = NULL, **alts = NULL;
    size_t num_ups = 0, num_alts = 0;
    for (size_t i = 0; i < r->num_headers; i++) {
        if (strcasecmp(r->headers[i].name, "Link") == 0) {
            acme_link_parse(r->headers[i].value, "up", call->url, &ups, &num_ups, 1);
            acme_link_parse(r->headers[i].value, "alternate", call->url, &alts, &num_alts,
                            ACME_MAX_LINKS);
        }
    }
    struct acme_response resp = {
        .status = r->status,
        .body = r->body,
        .body_len = r->body_len,
        .content_type = dm_httpc_resp_header(r, "Content-Type"),
        .location = location,
        .link_up = num_ups > 0 ? ups[0] : NULL,
        .link_alternate = alts,
        .num_link_alternate = num_alts,
    };
    if (acme_retry_after_parse(dm_httpc_resp_header(r, "Retry-After"), dm_time_now(),
                               &resp.retry_after_s) == 0) {
        resp.has_retry_after = true;
    }
    call->cb(&resp, NULL, NULL, call->arg);
    free(location);
    acme_strings_free(ups, num_ups);
    acme_strings_free(alts, num_alts);
    call_free(call);
}

static void call_step(struct acme_call *call)
{
    for (;;) {
        enum step r = STEP_FAIL;
        switch (call->state) {
        case CALL_INIT:
            r = STEP_CONTINUE;
            break;
        case CALL_DIRECTORY:
            r = call_do_directory(call);
            break;
        case CALL_NONCE:
            r = call_do_nonce(call);
            break;
        case CALL_SEND:
            r = call_do_send(call);
            break;
        case CALL_BACKOFF:
            r = call_do_backoff(call);
            break;
        case CALL_DONE:
            r = STEP_DONE;
            break;
        }
        if (r == STEP_WAIT) {
            return;
        }
        if (r == STEP_DONE || r == STEP_FAIL) {
            call_deliver(call, r == STEP_DONE);
            return;
        }
        enum call_state next = call_next(call);
        if (dm_log_enabled(DM_LOG_TRACE)) {
            dm_log(DM_LOG_TRACE, "acme", "call %s: %s -> %s", call->url != NULL ? call->url : "",
                   call_state_names[call->state], call_state_names[next]);
        }
        call->state = next;
    }
}

struct acme_call *acme_client_post_start(struct acme_client *c, const struct acme_key *key,
                                         const char *kid, const char *url, const char *payload,
                                         const struct acme_call_opts *o, acme_client_done_cb cb,
                                         void *arg, struct dm_err *err)
{
    if (key == NULL || url == NULL || url_scheme_len(url) == 0 || payload == NULL || cb == NULL) {
        dm_err_set(err, DM_E_PROTO, "ACME POST: missing key, URL, payload or callback");
        return NULL;
    }
    struct acme_call *call = call_new(c, CALL_KIND_POST, url, o, err);
    if (call == NULL) {
        return NULL;
    }
    if ((call->payload = strdup(payload)) == NULL ||
        (kid != NULL && (call->kid = strdup(kid)) == NULL)) {
        call_free(call);
        dm_err_set(err, DM_E_NOMEM, "out of memory");
        return NULL;
    }
    call->key = key;
    call->cb = cb;
    call->arg = arg;
    return call;
}

struct acme_call *acme_client_get_start(struct acme_client *c, const char *url,
                                        const struct acme_call_opts *o, acme_client_done_cb cb,
                                        void *arg, struct dm_err *err)
{
    if (url == NULL || url_scheme_len(url) == 0 || cb == NULL) {
        dm_err_set(err, DM_E_PROTO, "ACME GET: missing URL or callback");
        return NULL;
    }
    struct acme_call *call = call_new(c, CALL_KIND_GET, url, o, err);
    if (call != NULL) {
        call->cb = cb;
        call->arg = arg;
    }
    return call;
}

struct acme_call *acme_client_directory_start(struct acme_client *c, acme_client_dir_cb cb,
                                              void *arg, struct dm_err *err)
{
    if (cb == NULL) {
        dm_err_set(err, DM_E_PROTO, "ACME directory: missing callback");
        return NULL;
    }
    struct acme_call *call = call_new(c, CALL_KIND_DIR, c->dir_url, NULL, err);
    if (call != NULL) {
        call->dir_cb = cb;
        call->arg = arg;
    }
    return call;
}
