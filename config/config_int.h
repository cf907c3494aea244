/* Internals shared by the config module's files: the JSON-to-snapshot builder
 * (validate.c), host-name, address and CIDR syntax (addr.c), problem lists and
 * duration text (config.c, validate.c). Not for other modules: they use
 * config.h. */
#ifndef DM_CONFIG_CONFIG_INT_H
#define DM_CONFIG_CONFIG_INT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "config/config.h"

/* At most this many problems are kept; the last slot says more were found.
 * A broken generated file can hold millions of mistakes, and nobody reads
 * past the first screen. */
#define CFG_MAX_PROBLEMS 100

/* Longest message text for one problem, path excluded. */
#define CFG_MSG_MAX 512

/* User text quoted in messages is cut after this many bytes (with "..."). */
#define CFG_QUOTE_MAX 80

/* Longest host name, RFC 1035 section 2.3.4 (without the trailing dot). */
#define CFG_HOST_MAX 253

/* Durations in milliseconds. */
#define CFG_MS_PER_S 1000u
#define CFG_MS_PER_M (60u * CFG_MS_PER_S)
#define CFG_MS_PER_H (60u * CFG_MS_PER_M)
#define CFG_MS_PER_D (24u * CFG_MS_PER_H)

/* cfg_problems_add appends one formatted problem to p (NULL: dropped). Past
 * CFG_MAX_PROBLEMS items the rest are dropped and the last item says so. Out
 * of memory drops the problem silently: callers count problems themselves. */
void cfg_problems_add(struct cfg_problems *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* cfg_build turns a parsed JSON object into a new snapshot (refs = 1), or
 * returns NULL with every problem appended to problems. name is the file name
 * (relative tls paths start from its directory). */
struct cfg *cfg_build(json_t *root, const char *name, const char *data_dir_override,
                      struct cfg_problems *problems);

/* cfg_quote writes s[0..len) into out as a double-quoted string for messages:
 * quotes, backslashes and control bytes escaped, cut after CFG_QUOTE_MAX bytes
 * with "...". out is always NUL-terminated (cap >= 1). */
void cfg_quote(char *out, size_t cap, const char *s, size_t len);

enum cfg_host_flags {
    CFG_HOST_NAME_ONLY = 0,
    CFG_HOST_ALLOW_WILDCARD = 1 << 0, /* "*.example.test" */
    CFG_HOST_ALLOW_IP = 1 << 1,       /* "192.0.2.1", "2001:db8::1", "[2001:db8::1]" */
};

/* cfg_host_normalize checks the host name in[0..len) and writes its stored
 * form into out: lower-case, one trailing dot removed, IP literals in
 * canonical text without brackets. flags is a mask of enum cfg_host_flags.
 * Returns 0, or -1 with msg set to "\"a_b.test\" is not a valid host name:
 * ...". out needs CFG_HOST_MAX + 1 bytes. */
int cfg_host_normalize(char *out, size_t cap, const char *in, size_t len, unsigned flags, char *msg,
                       size_t msg_cap);

/* cfg_cidr_parse parses "10.0.0.0/8", "2001:db8::/32" or a bare IP (a /32 or
 * /128) into out, clearing host bits. Returns 0, or -1 with a message. */
int cfg_cidr_parse(struct cfg_cidr *out, const char *text, char *msg, size_t msg_cap);

/* cfg_cidr_format writes c as "net/prefix" into out. Returns 0 or -1. */
int cfg_cidr_format(char *out, size_t cap, const struct cfg_cidr *c);

/* cfg_duration_format writes ms in the largest unit that divides it exactly
 * ("90s", "7d", "250ms"), so parsing the text gives ms back. */
void cfg_duration_format(char *out, size_t cap, uint64_t ms);

/* The walk of validate.c (paths and problems), for the section readers in
 * other files of the module (validate_upstream.c). */
struct check;
size_t cfg_check_push_key(struct check *k, const char *key);
size_t cfg_check_push_index(struct check *k, size_t i);
void cfg_check_pop(struct check *k, size_t mark);
void cfg_check_problem(struct check *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cfg_check_type(struct check *k, const char *expected, const json_t *v);
/* cfg_check_keys reports unknown keys of obj (with a suggestion). */
void cfg_check_keys(struct check *k, json_t *obj, const char *const *names, size_t num_names);
int cfg_check_int(struct check *k, const json_t *v, long long min, long long max, long long *out);
int cfg_check_duration(struct check *k, const json_t *v, uint64_t min_ms, uint64_t max_ms,
                       uint64_t *out_ms);
/* cfg_check_string returns v if it is a non-empty string (borrowed). */
const char *cfg_check_string(struct check *k, const json_t *v);
void cfg_check_addr(struct check *k, struct cfg_addr *out, const char *text);
/* cfg_check_file stores in *out the absolute path (relative to the config
 * file) of the readable file obj[key]; a missing key is a problem only if
 * required. */
void cfg_check_file(struct check *k, json_t *obj, const char *key, bool required, char **out);
/* cfg_check_count: problems found so far; cfg_check_path: the current path. */
size_t cfg_check_count(const struct check *k);
const char *cfg_check_path(const struct check *k);

/* validate_upstream.c: a site's "to" (strings or {"address", "weight",
 * "max_connections"}) and its "upstream" object, at the site's path. Call
 * read_to first: upstream's max_connections is the default of the items. */
void cfg_read_to(struct check *k, json_t *site, struct cfg_site *s);
void cfg_read_upstream(struct check *k, json_t *site, struct cfg_site *s);
/* cfg_upstream_cleanup frees what cfg_read_upstream and cfg_read_to stored
 * besides s->to. */
void cfg_upstream_cleanup(struct cfg_site *s);
/* cfg_upstream_policy_name returns the config name of a policy. */
const char *cfg_upstream_policy_name(enum cfg_lb_policy p);

/* validate_transport.c: the site's "upstream.protocol" and "upstream.tls",
 * at the site's path; builds the backend SSL_CTX. */
void cfg_transport_read(struct check *k, json_t *site, struct cfg_site *s);
void cfg_transport_free(struct cfg_up_transport *t);

#endif
