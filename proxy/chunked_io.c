/* Moving a chunked body between evbuffers: the decoder checks the framing
 * and the bytes move by re-linking chains (pass-through) or, for HTTP/1.0
 * clients, only the data runs are moved (de-chunking). */
#include <event2/buffer.h>

#include "proxy/proxy_int.h"

int dm_chunked_move(struct dm_http1_chunked *ch, struct evbuffer *src, struct evbuffer *dst,
                    bool dechunk, uint64_t *out_data_bytes)
{
    *out_data_bytes = 0;
    while (ch->state != DM_CHUNK_DONE) {
        struct evbuffer_iovec vec;
        if (evbuffer_peek(src, -1, NULL, &vec, 1) < 1 || vec.iov_len == 0) {
            return 0;
        }
        const char *p = vec.iov_base;
        size_t left = vec.iov_len, consumed = 0;
        while (left > 0 && ch->state != DM_CHUNK_DONE) {
            const char *data;
            size_t data_len;
            ssize_t n = dm_http1_chunked_step(ch, p, left, &data, &data_len);
            if (n == DM_PARSE_ERROR) {
                return -1;
            }
            if (n == 0) {
                break;
            }
            *out_data_bytes += data_len;
            if (dechunk) {
                /* The vector is invalid once bytes leave src: act, then re-peek. */
                evbuffer_drain(src, (size_t)n - data_len);
                if (data_len > 0) {
                    evbuffer_remove_buffer(src, dst, data_len);
                }
                consumed = 0;
                left = 0;
                break;
            }
            p += n;
            left -= (size_t)n;
            consumed += (size_t)n;
        }
        if (!dechunk) {
            if (consumed == 0) {
                return 0;
            }
            evbuffer_remove_buffer(src, dst, consumed);
        }
    }
    return 0;
}

/* trailers_keep_fields leaves only the field lines of a finished trailer
 * section in t, which holds every non-data byte since the last data run: the
 * CRLF ending that run (if there was one), the last-chunk line
 * ("0[;ext]\r\n"), the fields, and the final CRLF. */
static void trailers_keep_fields(struct evbuffer *t)
{
    char first[2];
    if (evbuffer_copyout(t, first, 2) == 2 && first[0] == '\r' && first[1] == '\n') {
        evbuffer_drain(t, 2);
    }
    struct evbuffer_ptr eol = evbuffer_search(t, "\r\n", 2, NULL);
    if (eol.pos < 0) {
        evbuffer_drain(t, evbuffer_get_length(t));
        return;
    }
    evbuffer_drain(t, (size_t)eol.pos + 2);
    size_t len = evbuffer_get_length(t);
    if (len >= 2) {
        /* The final empty line: keep "name: value\r\n" lines only. */
        struct evbuffer *rest = evbuffer_new();
        if (rest != NULL) {
            evbuffer_remove_buffer(t, rest, len - 2);
            evbuffer_drain(t, evbuffer_get_length(t));
            evbuffer_add_buffer(t, rest);
            evbuffer_free(rest);
        }
    }
}

int dm_chunked_move_trailers(struct dm_http1_chunked *ch, struct evbuffer *src,
                             struct evbuffer *dst, struct evbuffer *trailers,
                             uint64_t *out_data_bytes)
{
    *out_data_bytes = 0;
    while (ch->state != DM_CHUNK_DONE) {
        struct evbuffer_iovec vec;
        if (evbuffer_peek(src, -1, NULL, &vec, 1) < 1 || vec.iov_len == 0) {
            return 0;
        }
        const char *data;
        size_t data_len;
        ssize_t n = dm_http1_chunked_step(ch, vec.iov_base, vec.iov_len, &data, &data_len);
        if (n == DM_PARSE_ERROR) {
            return -1;
        }
        if (n == 0) {
            return 0;
        }
        /* Framing bytes are consumed first, then at most one data run. Only
         * framing after the last data run can belong to the trailer section,
         * and the decoder bounds it (size line + DM_HTTP1_MAX_TRAILER_BYTES). */
        if (data_len > 0) {
            evbuffer_drain(src, (size_t)n - data_len);
            evbuffer_drain(trailers, evbuffer_get_length(trailers));
            evbuffer_remove_buffer(src, dst, data_len);
            *out_data_bytes += data_len;
        } else {
            evbuffer_remove_buffer(src, trailers, (size_t)n);
        }
    }
    trailers_keep_fields(trailers);
    return 0;
}
