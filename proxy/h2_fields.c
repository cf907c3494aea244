/* Trailer field lines to nghttp2 header fields; see h2_fields.h. */
#include "proxy/h2_fields.h"

#include <string.h>

#include "proxy/http1_parse.h"
#include "proxy/proxy_int.h"

size_t dm_h2_fields_from_lines(struct evbuffer *lines, nghttp2_nv *nva, size_t cap)
{
    size_t len = evbuffer_get_length(lines);
    if (len == 0) {
        return 0;
    }
    char *p = (char *)evbuffer_pullup(lines, (ssize_t)len);
    char *end = p + len;
    size_t num = 0;
    while (p < end && num < cap) {
        char *eol = memchr(p, '\n', (size_t)(end - p));
        char *colon = memchr(p, ':', (size_t)(eol ? eol - p : end - p));
        if (eol == NULL || colon == NULL) {
            break;
        }
        char *vend = eol;
        if (vend > p && vend[-1] == '\r') {
            vend--;
        }
        char *v = colon + 1;
        while (v < vend && (*v == ' ' || *v == '\t')) {
            v++;
        }
        while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t')) {
            vend--;
        }
        for (char *q = p; q < colon; q++) {
            if (*q >= 'A' && *q <= 'Z') {
                *q = (char)(*q + 32);
            }
        }
        struct dm_http1_header h = {p, (size_t)(colon - p), v, (size_t)(vend - v)};
        struct dm_http1_msg none = {.known = {.connection = -1}};
        if (!dm_header_is_hop_by_hop(&h, &none)) {
            nva[num++] = (nghttp2_nv){(uint8_t *)p, (uint8_t *)v, h.name_len, h.value_len,
                                      NGHTTP2_NV_FLAG_NONE};
        }
        p = eol + 1;
    }
    return num;
}
