/* Byte-string helpers used by parsers and routing: explicit lengths, ASCII
 * case folding only (HTTP field names and host names are ASCII). */
#ifndef DM_CORE_STR_H
#define DM_CORE_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* dm_str_ieq compares two byte strings ASCII-case-insensitively. */
bool dm_str_ieq(const char *a, size_t a_len, const char *b, size_t b_len);

/* dm_str_ieq_lit compares a byte string with a NUL-terminated literal.
 * Inline so the literal's length folds to a constant and a length mismatch
 * (most calls, in header scans) costs one comparison. */
static inline bool dm_str_ieq_lit(const char *a, size_t a_len, const char *lit)
{
    size_t n = __builtin_strlen(lit);
    return a_len == n && dm_str_ieq(a, a_len, lit, n);
}

/* dm_str_lower copies src (src_len bytes) into dst lower-cased and NUL-terminates
 * it; returns -1 if it does not fit in dst_cap. */
int dm_str_lower(char *dst, size_t dst_cap, const char *src, size_t src_len);

/* dm_strdup_n returns a new NUL-terminated copy of s[0..len) or NULL. */
char *dm_strdup_n(const char *s, size_t len);

/* dm_str_json_escape writes s into out as the body of a JSON string (quotes,
 * backslashes and control characters escaped), cut to fit cap; returns the
 * length written. For log lines. */
size_t dm_str_json_escape(char *out, size_t cap, const char *s);

/* dm_str_hash is FNV-1a over s[0..len): the hash of the project's small
 * string tables (routing, the on-demand tables, the Public Suffix List). */
uint64_t dm_str_hash(const char *s, size_t len);

#endif
