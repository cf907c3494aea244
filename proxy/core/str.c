/* Byte-string helpers; see str.h. */
#include "proxy/core/str.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline unsigned char ascii_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

bool dm_str_ieq(const char *a, size_t a_len, const char *b, size_t b_len)
{
    if (a_len != b_len) {
        return false;
    }
    for (size_t i = 0; i < a_len; i++) {
        if (ascii_lower((unsigned char)a[i]) != ascii_lower((unsigned char)b[i])) {
            return false;
        }
    }
    return true;
}

int dm_str_lower(char *dst, size_t dst_cap, const char *src, size_t src_len)
{
    if (src_len + 1 > dst_cap) {
        return -1;
    }
    for (size_t i = 0; i < src_len; i++) {
        dst[i] = (char)ascii_lower((unsigned char)src[i]);
    }
    dst[src_len] = '\0';
    return 0;
}

char *dm_strdup_n(const char *s, size_t len)
{
    char *p = malloc(len + 1);
    if (p != NULL) {
        memcpy(p, s, len);
        p[len] = '\0';
    }
    return p;
}

size_t dm_str_json_escape(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    if (cap == 0) {
        return 0;
    }
    for (; *s != '\0' && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

uint64_t dm_str_hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}
