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
