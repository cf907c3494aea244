/* HTTP/1 field lines to HTTP/2 header fields, for trailer sections that
 * cross between the two (h2_fields.c). */
#ifndef DM_PROXY_H2_FIELDS_H
#define DM_PROXY_H2_FIELDS_H

#include <stddef.h>

#include <event2/buffer.h>
#include <nghttp2/nghttp2.h>

/* dm_h2_fields_from_lines fills nva (up to cap entries) from lines, a
 * sequence of "name: value\r\n" lines (as dm_chunked_move_trailers keeps
 * them): names are lower-cased in place, values trimmed, hop-by-hop fields
 * left out. The entries point into lines, which is made contiguous and must
 * outlive them (nghttp2 copies them on submit). Returns the count. */
size_t dm_h2_fields_from_lines(struct evbuffer *lines, nghttp2_nv *nva, size_t cap);

#endif
