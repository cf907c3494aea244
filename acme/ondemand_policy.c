/* On-demand policy functions (ondemand_policy.h). The PSL is held as three
 * hash sets of suffixes: normal rules, wildcard parents ("*.ck" as "ck") and
 * exceptions ("!www.ck" as "www.ck"), built once at start. */
#include "acme/ondemand_policy.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config_types.h"
#include "proxy/core/str.h"

#define PSL_DEFAULT_PATH "/usr/share/publicsuffix/public_suffix_list.dat"
#define NAME_MAX_LEN     253
#define LABEL_MAX_LEN    63

const char *acme_od_name_check(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > NAME_MAX_LEN) {
        return "invalid length";
    }
    bool has_dot = false, all_numeric_last = true;
    size_t label = 0;
    for (size_t i = 0; i <= len; i++) {
        char ch = name[i];
        if (ch == '.' || ch == '\0') {
            if (label == 0) {
                return "empty label";
            }
            if (name[i - 1] == '-' || name[i - label] == '-') {
                return "label starts or ends with a hyphen";
            }
            if (ch == '.') {
                has_dot = true;
                all_numeric_last = true;
            }
            label = 0;
            continue;
        }
        if (++label > LABEL_MAX_LEN) {
            return "label longer than 63 bytes";
        }
        if (ch >= '0' && ch <= '9') {
            continue;
        }
        all_numeric_last = false;
        if (!((ch >= 'a' && ch <= 'z') || ch == '-')) {
            return "not a host name (letters, digits, hyphens; IDNs as xn-- A-labels)";
        }
    }
    /* Labels with "--" in positions 3-4 must be A-labels (RFC 5891 §4.2.3.1). */
    for (const char *p = name; p != NULL && *p != '\0';) {
        if (strlen(p) >= 4 && p[2] == '-' && p[3] == '-' && strncmp(p, "xn--", 4) != 0) {
            const char *dot = strchr(p, '.');
            size_t l = dot != NULL ? (size_t)(dot - p) : strlen(p);
            if (l >= 4) {
                return "reserved label (-- in positions 3-4 and not an xn-- A-label)";
            }
        }
        const char *dot = strchr(p, '.');
        p = dot != NULL ? dot + 1 : NULL;
    }
    if (!has_dot) {
        return "no dot (a single-label name)";
    }
    if (all_numeric_last) {
        return "an IP literal";
    }
    if (strcmp(name, "localhost") == 0 ||
        (len > 10 && strcmp(name + len - 10, ".localhost") == 0)) {
        return "localhost";
    }
    return NULL;
}

bool acme_od_pattern_match(const char *pattern, const char *name)
{
    if (pattern[0] == '*' && pattern[1] == '.') {
        size_t pl = strlen(pattern + 1), nl = strlen(name);
        return nl > pl && strcmp(name + nl - pl, pattern + 1) == 0;
    }
    return strcmp(pattern, name) == 0;
}

bool acme_od_site_covers(const struct cfg_site *site, const char *name)
{
    if (site->num_hosts == 0) {
        return true;
    }
    for (size_t i = 0; i < site->num_hosts; i++) {
        const char *h = site->hosts[i];
        if (h[0] == '*' && h[1] == '.') {
            const char *dot = strchr(name, '.');
            if (dot != NULL && dot != name && strcmp(dot + 1, h + 2) == 0) {
                return true;
            }
        } else if (strcmp(h, name) == 0) {
            return true;
        }
    }
    return false;
}

const char *acme_od_static_check(const struct cfg_site *site, const char *name)
{
    const char *why = acme_od_name_check(name);
    if (why != NULL) {
        return why;
    }
    if (site->on_demand == NULL || !acme_od_site_covers(site, name)) {
        return "no on-demand site for this name";
    }
    const struct cfg_ondemand *d = site->on_demand;
    if (d->num_allow > 0) {
        for (size_t i = 0; i < d->num_allow; i++) {
            if (acme_od_pattern_match(d->allow[i], name)) {
                return NULL;
            }
        }
        return "not in the allow patterns";
    }
    return NULL;
}

/* ---- Public Suffix List ---- */

struct psl_set {
    char **slots; /* open addressing; NULL = empty */
    size_t mask;
    size_t count;
};

struct acme_psl {
    struct psl_set rules, wild, except;
};

static int set_grow(struct psl_set *s)
{
    size_t cap = s->slots == NULL ? 1024 : (s->mask + 1) * 2;
    char **slots = calloc(cap, sizeof(*slots));
    if (slots == NULL) {
        return -1;
    }
    for (size_t i = 0; s->slots != NULL && i <= s->mask; i++) {
        if (s->slots[i] != NULL) {
            size_t j = dm_str_hash(s->slots[i], strlen(s->slots[i])) & (cap - 1);
            while (slots[j] != NULL) {
                j = (j + 1) & (cap - 1);
            }
            slots[j] = s->slots[i];
        }
    }
    free(s->slots);
    s->slots = slots;
    s->mask = cap - 1;
    return 0;
}

static bool set_has(const struct psl_set *s, const char *k, size_t n)
{
    if (s->slots == NULL) {
        return false;
    }
    for (size_t i = dm_str_hash(k, n) & s->mask; s->slots[i] != NULL; i = (i + 1) & s->mask) {
        if (strlen(s->slots[i]) == n && memcmp(s->slots[i], k, n) == 0) {
            return true;
        }
    }
    return false;
}

static int set_add(struct psl_set *s, const char *k)
{
    size_t n = strlen(k);
    if (set_has(s, k, n)) {
        return 0;
    }
    if ((s->count + 1) * 2 > (s->slots == NULL ? 0 : s->mask + 1) && set_grow(s) != 0) {
        return -1;
    }
    char *dup = strdup(k);
    if (dup == NULL) {
        return -1;
    }
    size_t i = dm_str_hash(k, n) & s->mask;
    while (s->slots[i] != NULL) {
        i = (i + 1) & s->mask;
    }
    s->slots[i] = dup;
    s->count++;
    return 0;
}

static void set_free(struct psl_set *s)
{
    for (size_t i = 0; s->slots != NULL && i <= s->mask; i++) {
        free(s->slots[i]);
    }
    free(s->slots);
}

struct acme_psl *acme_psl_load(const char *path)
{
    FILE *f = fopen(path != NULL ? path : PSL_DEFAULT_PATH, "r");
    if (f == NULL) {
        return NULL;
    }
    struct acme_psl *psl = calloc(1, sizeof(*psl));
    char line[512];
    bool ok = psl != NULL;
    while (ok && fgets(line, sizeof(line), f) != NULL) {
        /* A rule is the line up to the first white space; "//" comments.
         * Rules in Unicode (the list carries U-labels too) never match an
         * SNI, which is ASCII, and are skipped. */
        size_t n = strcspn(line, " \t\r\n");
        line[n] = '\0';
        if (n == 0 || (line[0] == '/' && line[1] == '/')) {
            continue;
        }
        bool ascii = true;
        for (size_t i = 0; i < n; i++) {
            if ((unsigned char)line[i] >= 0x80) {
                ascii = false;
            } else if (line[i] >= 'A' && line[i] <= 'Z') {
                line[i] = (char)(line[i] + 32);
            }
        }
        if (!ascii) {
            continue;
        }
        if (line[0] == '!') {
            ok = set_add(&psl->except, line + 1) == 0;
        } else if (line[0] == '*' && line[1] == '.') {
            ok = set_add(&psl->wild, line + 2) == 0;
        } else {
            ok = set_add(&psl->rules, line) == 0;
        }
    }
    fclose(f);
    if (!ok || psl->rules.count == 0) {
        acme_psl_free(psl);
        return NULL;
    }
    return psl;
}

void acme_psl_free(struct acme_psl *psl)
{
    if (psl == NULL) {
        return;
    }
    set_free(&psl->rules);
    set_free(&psl->wild);
    set_free(&psl->except);
    free(psl);
}

/* public_suffix_at returns the offset in name where its public suffix
 * starts, by the PSL algorithm: the longest matching rule, exceptions first;
 * no rule matching means the last label ("*"). */
static size_t public_suffix_at(const struct acme_psl *psl, const char *name)
{
    size_t len = strlen(name);
    size_t last_label = len;
    while (last_label > 0 && name[last_label - 1] != '.') {
        last_label--;
    }
    if (psl == NULL) {
        return last_label;
    }
    /* Candidate suffixes from the longest (the whole name) down. */
    for (size_t at = 0; at < len;) {
        const char *s = name + at;
        size_t n = len - at;
        if (set_has(&psl->except, s, n)) {
            const char *dot = strchr(s, '.');
            return dot != NULL ? (size_t)(dot + 1 - name) : last_label;
        }
        if (set_has(&psl->rules, s, n)) {
            return at;
        }
        const char *dot = strchr(s, '.');
        if (dot != NULL && set_has(&psl->wild, dot + 1, strlen(dot + 1))) {
            return at;
        }
        if (dot == NULL) {
            break;
        }
        at = (size_t)(dot + 1 - name);
    }
    return last_label;
}

bool acme_psl_registered_domain(const struct acme_psl *psl, const char *name, char *out, size_t cap)
{
    size_t ps = public_suffix_at(psl, name);
    if (ps == 0) {
        return false; /* the name is a public suffix */
    }
    /* One more label to the left of the suffix. */
    size_t start = ps - 1; /* the dot before the suffix */
    while (start > 0 && name[start - 1] != '.') {
        start--;
    }
    size_t n = strlen(name + start);
    if (n + 1 > cap) {
        return false;
    }
    memcpy(out, name + start, n + 1);
    return true;
}
