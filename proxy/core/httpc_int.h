/* Internals of the HTTP client shared by httpc.c (calls, connections) and
 * httpc_parse.c (the response decoder). dm_core cannot use dm_proxy's
 * parser, which sits above it, so the client carries a small strict one. */
#ifndef DM_CORE_HTTPC_INT_H
#define DM_CORE_HTTPC_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/core/httpc.h"

struct evbuffer;

#define HTTPC_MAX_CHUNK_LINE    4096  /* chunk size + extensions: we keep nothing of them */
#define HTTPC_MAX_TRAILER_BYTES 16384 /* trailer section, discarded */

/* ---- Response decoder --------------------------------------------------- */

enum dec_state {
    DEC_HEAD = 0,    /* status line and fields (1xx interim heads skipped) */
    DEC_BODY_LENGTH, /* Content-Length body */
    DEC_CHUNK_SIZE,  /* chunk-size [chunk-ext] CRLF */
    DEC_CHUNK_DATA,
    DEC_CHUNK_CRLF,
    DEC_TRAILER, /* trailer fields until an empty line, discarded */
    DEC_BODY_EOF,
    DEC_DONE,
};

enum dec_eof {
    DEC_EOF_NONE = 0, /* more bytes may come */
    DEC_EOF_CLEAN,    /* FIN on plain TCP, close_notify on TLS */
    DEC_EOF_UNCLEAN,  /* TLS ended without close_notify: the data may be truncated */
};

struct httpc_dec {
    enum dec_state state;
    bool is_head;        /* response to HEAD: no body whatever the fields say */
    bool is_keep_alive;  /* the connection may carry another request afterwards */
    size_t max_body;     /* bytes */
    size_t head_scanned; /* bytes of the pending head already searched for its end */
    size_t head_bytes;   /* head bytes consumed so far, interim heads included */
    size_t trailer_bytes;
    uint64_t remaining;         /* DEC_BODY_LENGTH, DEC_CHUNK_DATA: bytes still due */
    struct dm_httpc_resp *resp; /* owned until dec_take */
    size_t body_cap;            /* bytes allocated at resp->body */
};

struct head_field {
    const char *name; /* borrowed: into the head being parsed */
    size_t name_len;
    const char *value; /* borrowed; OWS trimmed */
    size_t value_len;
};

enum head_body {
    HEAD_BODY_NONE = 0,
    HEAD_BODY_LENGTH,
    HEAD_BODY_CHUNKED,
    HEAD_BODY_EOF,
};

struct head {
    int status;
    int version_minor;
    size_t num_fields;
    struct head_field fields[DM_HTTPC_MAX_HEADERS];
    bool has_length;
    uint64_t length;
    bool is_chunked;
    bool has_close; /* Connection: close */
};

/* httpc_is_tchar: a token character (RFC 9110 §5.6.2); httpc_is_field_char:
 * allowed in a field value (VCHAR, obs-text, SP, HTAB). */
bool httpc_is_tchar(unsigned char ch);
bool httpc_is_field_char(unsigned char ch);

/* httpc_dec_init prepares d for one response (is_head: answer to HEAD). */
void httpc_dec_init(struct httpc_dec *d, bool is_head, size_t max_body);
void httpc_dec_cleanup(struct httpc_dec *d);

/* httpc_dec_take hands over the decoded response (caller frees with
 * dm_httpc_resp_free); NULL if none. */
struct dm_httpc_resp *httpc_dec_take(struct httpc_dec *d);

/* httpc_dec_feed consumes what it can of in. Returns 1 when the response is
 * complete, 0 when it needs more bytes, -1 with err on a malformed,
 * truncated or oversized response. */
int httpc_dec_feed(struct httpc_dec *d, struct evbuffer *in, enum dec_eof eof, struct dm_err *err);

#endif
