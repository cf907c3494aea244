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

/* Chunked decoder bounds. A size line (chunk-size and extensions, without the
 * CRLF) above 4 KiB or a trailer section (all its bytes, final CRLF included)
 * above 16 KiB is an error: both are metadata we buffer nothing for, so the
 * bounds only cap the work an attacker can make us do per chunk. */
#define DM_HTTP1_MAX_CHUNK_LINE    4096
#define DM_HTTP1_MAX_TRAILER_BYTES 16384

/* A field as received: name and value point into the parsed buffer. The value
 * has leading and trailing OWS removed. */
struct dm_http1_header {
    const char *name; /* borrowed */
    size_t name_len;
    const char *value; /* borrowed */
    size_t value_len;
};

struct dm_http1_limits {
    size_t max_line;         /* request line / status line without CRLF, bytes (414 / 502) */
    size_t max_headers;      /* number of fields; also the capacity of msg->headers (431) */
    size_t max_header_bytes; /* whole head: leading empty lines, start line, fields and the
                                final CRLF, i.e. the largest value parse may return (431) */
};

enum dm_http1_body {
    DM_HTTP1_BODY_NONE = 0, /* no body (or Content-Length: 0) */
    DM_HTTP1_BODY_LENGTH,   /* content_length bytes follow */
    DM_HTTP1_BODY_CHUNKED,  /* final transfer coding is chunked */
    DM_HTTP1_BODY_EOF,      /* responses only: body ends when the connection closes */
};

/* Known fields the proxy acts on, found while parsing (index into headers of
 * the first such field, or -1). */
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
    const char *reason; /* borrowed; may be empty */
    size_t reason_len;

    int version_minor; /* HTTP/1.<minor>: 0 or 1 (other versions -> error 505) */

    struct dm_http1_header *headers; /* caller storage, capacity limits.max_headers */
    size_t num_headers;
    struct dm_http1_known known;

    enum dm_http1_body body;
    uint64_t content_length; /* valid when body == DM_HTTP1_BODY_LENGTH; also set (possibly
                                0) whenever a valid Content-Length was received, e.g. for
                                a response to HEAD */

    bool keep_alive;      /* persistence per RFC 9112 §9.3 (version + Connection); false
                             for an EOF-delimited response */
    bool expect_continue; /* Expect: 100-continue in an HTTP/1.1 request */
    bool is_upgrade;      /* Connection has the "upgrade" token and Upgrade is present
                             (requests: HTTP/1.1 only, RFC 9110 §7.8) */
    bool conn_has_close;  /* Connection: close */

    /* On DM_PARSE_ERROR: the status to answer with (400, 414, 431, 501, 505;
     * for responses 502) and a static reason for the log. */
    int error_status;
    const char *error; /* static string */
};

/* Incremental state: remembers how far the end of the header block was
 * searched, so feeding more bytes does not rescan everything. Zero it (or call
 * dm_http1_parser_init) before each message; between calls for one message
 * the buffer may move or grow but its first bytes must not change. The parse
 * functions reset it when they return a complete head, so it is then ready for
 * the next (pipelined) message. The fields are private. */
struct dm_http1_parser {
    size_t scanned;    /* bytes of buf searched for the end of the head */
    size_t line_start; /* offset of the line being scanned */
    size_t num_lines;  /* complete non-empty lines seen (start line + fields) */
};

/* dm_http1_parser_init resets p for a new message. */
void dm_http1_parser_init(struct dm_http1_parser *p);

/* dm_http1_parse_request parses a request head from buf[0..len). Returns the
 * number of bytes of the head (leading empty lines, start line, fields, final
 * CRLF) when complete, so a pipelined request starts at buf + returned value;
 * DM_PARSE_AGAIN when more bytes are needed (and limits are not yet exceeded);
 * or DM_PARSE_ERROR with msg->error_status/error set. msg->headers must point
 * to lim->max_headers entries; the other fields of msg are overwritten.
 *
 * Error statuses:
 * - 414: request line longer than lim->max_line (also while incomplete).
 * - 431: head longer than lim->max_header_bytes or more than lim->max_headers
 *   fields (both also while incomplete).
 * - 505: well-formed HTTP-version other than HTTP/1.0 and HTTP/1.1.
 * - 501: Transfer-Encoding whose final coding is chunked but which also
 *   lists another coding ("gzip, chunked"): valid, but we do not decode it.
 * - 400: everything else (RFC 9112): bare CR or LF, NUL and other CTLs,
 *   obs-fold, whitespace before the colon, invalid field-name tokens, more
 *   than 4 empty lines before the request line, invalid method, target or
 *   version syntax; a target form not allowed for the method (authority-form
 *   is CONNECT-only and requires a port, "*" is OPTIONS-only); both
 *   Content-Length and Transfer-Encoding; differing or invalid Content-Length
 *   values (1*DIGIT up to 2^63-1; identical comma-separated or repeated values
 *   count as one); a Transfer-Encoding whose final coding is not chunked,
 *   chunked twice or chunked with parameters; Transfer-Encoding in HTTP/1.0;
 *   HTTP/1.1 without a Host, any request with more than one Host; a Host (or
 *   absolute-form authority) that is not uri-host [":" port], where the
 *   reg-name may hold unreserved, pct-encoded and sub-delims except ",".
 * An empty Host is accepted (RFC 9110 §7.2); for absolute-form the proxy
 * must route on the target's authority, not on Host (RFC 9112 §3.2.2).
 * Expect values other than 100-continue are left to the proxy (it may
 * answer 417); Connection elements that are not tokens are ignored. */
ssize_t dm_http1_parse_request(struct dm_http1_parser *p, struct dm_http1_msg *msg, const char *buf,
                               size_t len, const struct dm_http1_limits *lim);

/* dm_http1_parse_response parses a response head like dm_http1_parse_request.
 * The status line is "HTTP/1.x" SP 3DIGIT (100-999) [SP reason] CRLF: the
 * reason may be empty and so may be the SP before it. Body framing follows
 * RFC 9112 §6.3: no body for a HEAD request (is_head), 1xx, 204 and 304;
 * chunked; Content-Length; otherwise until EOF (keep_alive false). The caller
 * handles a 2xx answer to CONNECT. Every error has error_status 502, including
 * Transfer-Encoding with any coding other than a single final chunked (we do
 * not decode them), Transfer-Encoding in an HTTP/1.0 response, and
 * Transfer-Encoding with Content-Length; framing fields are validated even
 * when the status means no body. */
ssize_t dm_http1_parse_response(struct dm_http1_parser *p, struct dm_http1_msg *msg,
                                const char *buf, size_t len, const struct dm_http1_limits *lim,
                                bool is_head);

/* Chunked body decoder (RFC 9112 §7.1). */
enum dm_http1_chunk_state {
    DM_CHUNK_SIZE = 0,  /* reading chunk-size [; ext] CRLF */
    DM_CHUNK_DATA,      /* inside chunk data */
    DM_CHUNK_DATA_CRLF, /* expecting CRLF after data */
    DM_CHUNK_TRAILERS,  /* reading trailer fields until an empty line */
    DM_CHUNK_DONE,      /* the whole body has been consumed */
};

struct dm_http1_chunked {
    enum dm_http1_chunk_state state;
    uint64_t remaining;      /* bytes left in the current chunk (the size while in SIZE) */
    size_t line_len;         /* bytes of the current size line seen so far */
    size_t trailer_bytes;    /* total trailer bytes, bounded */
    bool line_cr;            /* previous byte of the line was CR */
    bool trailer_line_empty; /* the current trailer line has no bytes yet */
    unsigned char phase;     /* private: position inside the size or trailer line */
};

/* dm_http1_chunked_init resets c for a new chunked body. */
void dm_http1_chunked_init(struct dm_http1_chunked *c);

/* dm_http1_chunked_step consumes bytes from buf[0..len) and stops after at
 * most one run of chunk data. The decoder is a byte-level state machine: a
 * size line or trailer split across calls is remembered in the state, so the
 * caller never re-feeds bytes and may forward every consumed byte verbatim
 * (pass-through) or only the data runs (de-chunking). On return, if a data run
 * was reached, *out_data points at it inside buf and *out_data_len is its
 * length (it ends at the returned offset); otherwise *out_data is NULL and
 * *out_data_len is 0. Returns bytes consumed (> 0), DM_PARSE_AGAIN (0) only
 * when len is 0 or the state is already DM_CHUNK_DONE, or DM_PARSE_ERROR on
 * bad framing: non-hex sizes or more than 16 hex digits (leading zeros
 * included), "0x" prefixes, whitespace after the size not followed by ";",
 * extensions with CTLs, size lines over DM_HTTP1_MAX_CHUNK_LINE bytes,
 * missing CRLF after data, bare CR or LF, a trailer section over
 * DM_HTTP1_MAX_TRAILER_BYTES or with invalid fields (field-name token, colon
 * without whitespace before it, no obs-fold, no CTLs in values). Trailer
 * fields are checked, not interpreted. Reaching DM_CHUNK_DONE ends the body;
 * bytes after the final CRLF are not consumed. */
ssize_t dm_http1_chunked_step(struct dm_http1_chunked *c, const char *buf, size_t len,
                              const char **out_data, size_t *out_data_len);

/* dm_http1_is_token_char tells whether c is a tchar (RFC 9110 §5.6.2). */
bool dm_http1_is_token_char(unsigned char c);

#endif
