/* Strict HTTP/1.1 message parser (RFC 9112, RFC 9110): request and status
 * lines, header fields, body framing, chunked bodies. No I/O, no allocation,
 * never reads past len; results point into the caller's buffer (zero-copy).
 * Everything that could be used to smuggle a request is an error. */
#ifndef DM_PROXY_HTTP1_PARSE_H
#define DM_PROXY_HTTP1_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proxy/core/err.h" /* DM_PARSE_AGAIN, DM_PARSE_ERROR */

/* A field as received: name and value point into the parsed buffer. The value
 * has leading and trailing OWS removed. */
struct dm_http1_header {
    const char *name; /* borrowed */
    size_t name_len;
    const char *value; /* borrowed */
    size_t value_len;
};

struct dm_http1_limits {
    size_t max_line;        /* request line / status line, bytes (414 / 502) */
    size_t max_headers;     /* number of fields; also the capacity of msg->headers */
    size_t max_header_bytes;/* whole header block including the start line (431) */
};

enum dm_http1_body {
    DM_HTTP1_BODY_NONE = 0, /* no body (or Content-Length: 0) */
    DM_HTTP1_BODY_LENGTH,   /* content_length bytes follow */
    DM_HTTP1_BODY_CHUNKED,  /* final transfer coding is chunked */
    DM_HTTP1_BODY_EOF,      /* responses only: body ends when the connection closes */
};

/* Known fields the proxy acts on, found while parsing (index into headers, or -1). */
struct dm_http1_known {
    int host;
    int connection;
    int upgrade;
    int expect;
    int content_length;
    int transfer_encoding;
};

struct dm_http1_msg {
    /* Request line (requests only). */
    const char *method; /* borrowed */
    size_t method_len;
    const char *target; /* borrowed: request-target as sent */
    size_t target_len;
    /* Status line (responses only). */
    int status;
    const char *reason; /* borrowed */
    size_t reason_len;

    int version_minor; /* HTTP/1.<minor>: 0 or 1 (other versions -> error 505) */

    struct dm_http1_header *headers; /* caller storage, capacity limits.max_headers */
    size_t num_headers;
    struct dm_http1_known known;

    enum dm_http1_body body;
    uint64_t content_length; /* valid when body == DM_HTTP1_BODY_LENGTH */

    bool keep_alive;       /* persistence per RFC 9112 §9.3 (version + Connection) */
    bool expect_continue;  /* Expect: 100-continue (requests) */
    bool is_upgrade;       /* Connection has the "upgrade" token and Upgrade is present */
    bool conn_has_close;   /* Connection: close */

    /* On DM_PARSE_ERROR: the status to answer with (400, 414, 431, 501, 505;
     * for responses 502) and a static reason for the log. */
    int error_status;
    const char *error; /* static string */
};

/* Incremental state: remembers how far the end of the header block was
 * searched, so feeding more bytes does not rescan everything. Zero it (or call
 * dm_http1_parser_init) before each message. */
struct dm_http1_parser {
    size_t scanned;
};

void dm_http1_parser_init(struct dm_http1_parser *p);

/* dm_http1_parse_request parses a request head from buf[0..len). Returns the
 * number of bytes of the head (start line, fields, final CRLF) when complete,
 * DM_PARSE_AGAIN when more bytes are needed (and limits are not yet exceeded),
 * or DM_PARSE_ERROR with msg->error_status/error set. msg->headers must point
 * to lim->max_headers entries. Rejects (RFC 9112): obs-fold, bare CR, NUL and
 * other CTLs in fields, whitespace before the colon, invalid field-name
 * tokens, both Content-Length and Transfer-Encoding, differing or invalid
 * Content-Length values, a Transfer-Encoding whose final coding is not
 * chunked (or any coding other than chunked: 501), chunked twice, HTTP/1.1
 * without exactly one Host, more than one Host, invalid methods and targets.
 * Leading empty lines before the request line are skipped (RFC 9112 §2.2). */
ssize_t dm_http1_parse_request(struct dm_http1_parser *p, struct dm_http1_msg *msg,
                               const char *buf, size_t len, const struct dm_http1_limits *lim);

/* dm_http1_parse_response parses a response head like dm_http1_parse_request.
 * Body framing follows RFC 9112 §6.3: no body for a HEAD request (is_head),
 * 1xx, 204 and 304; chunked; Content-Length; otherwise until EOF. Errors use
 * error_status 502. A Transfer-Encoding with codings other than chunked is an
 * error (we do not decode them). */
ssize_t dm_http1_parse_response(struct dm_http1_parser *p, struct dm_http1_msg *msg,
                                const char *buf, size_t len, const struct dm_http1_limits *lim,
                                bool is_head);

/* Chunked body decoder (RFC 9112 §7.1). */
enum dm_http1_chunk_state {
    DM_CHUNK_SIZE = 0,   /* reading chunk-size [; ext] CRLF */
    DM_CHUNK_DATA,       /* inside chunk data */
    DM_CHUNK_DATA_CRLF,  /* expecting CRLF after data */
    DM_CHUNK_TRAILERS,   /* reading trailer fields until an empty line */
    DM_CHUNK_DONE,       /* the whole body has been consumed */
};

struct dm_http1_chunked {
    enum dm_http1_chunk_state state;
    uint64_t remaining;    /* bytes left in the current chunk */
    size_t line_len;       /* bytes of the current size/trailer line seen so far */
    size_t trailer_bytes;  /* total trailer bytes, bounded */
    bool line_cr;          /* previous byte of the line was CR */
    bool trailer_line_empty; /* the current trailer line has no bytes yet */
};

void dm_http1_chunked_init(struct dm_http1_chunked *c);

/* dm_http1_chunked_step consumes bytes from buf[0..len) and stops after at
 * most one run of chunk data. The decoder is a byte-level state machine: a
 * size line or trailer split across calls is remembered in the state, so the
 * caller never re-feeds bytes and may forward every consumed byte verbatim
 * (pass-through) or only the data runs (de-chunking). On return, if a data run
 * was reached, *out_data points at it inside buf and *out_data_len is its
 * length (it ends at the returned offset); otherwise *out_data_len is 0.
 * Returns bytes consumed (> 0), DM_PARSE_AGAIN (0) only when len is 0 or the
 * state is already DM_CHUNK_DONE, or DM_PARSE_ERROR on bad framing: non-hex or
 * overflowing sizes (more than 16 hex digits), size lines over 4096 bytes,
 * missing CRLF after data, bare CR or LF, a trailer block over 16 KiB or with
 * invalid fields. Reaching DM_CHUNK_DONE ends the body; bytes after the final
 * CRLF are not consumed. */
ssize_t dm_http1_chunked_step(struct dm_http1_chunked *c, const char *buf, size_t len,
                              const char **out_data, size_t *out_data_len);

/* dm_http1_is_token_char tells whether c is a tchar (RFC 9110 §5.6.2). */
bool dm_http1_is_token_char(unsigned char c);

#endif
