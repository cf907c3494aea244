/* Strict incremental HTTP/1.1 parser; see http1_parse.h for the contract.
 * A head is parsed in two passes: scan_head() finds its end with memchr,
 * resuming across calls and enforcing the limits on partial heads, then one
 * table-driven pass validates it. Every loop in that pass stops at the head's
 * final LF, which no character class contains, so none needs a bounds check
 * and none can read past the head. The chunked decoder is a separate
 * byte-level state machine. */
#include "proxy/http1_parse.h"

#include <string.h>

/* At most this many CRLFs before a request line (RFC 9112 §2.2 asks servers to
 * skip "at least one"; clients add one after a POST body). */
#define MAX_LEADING_EMPTY_LINES 4

/* Character classes, one bit each in ctab. */
enum {
    C_TOKEN = 0x01,  /* tchar (RFC 9110 §5.6.2) */
    C_VALUE = 0x02,  /* field-vchar, SP, HTAB, obs-text (RFC 9110 §5.5) */
    C_TARGET = 0x04, /* VCHAR: bytes allowed in a request-target */
    C_HOST = 0x08,   /* reg-name bytes except "%" and ",": unreserved, sub-delims (RFC 3986) */
    C_HEX = 0x10,    /* HEXDIG */
    C_DIGIT = 0x20,  /* DIGIT */
};

/* Generated from the definitions above; 0x80-0xFF are obs-text (C_VALUE). */
static const unsigned char ctab[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x02, 0x0f, 0x06, 0x07, 0x0f, 0x07, 0x0f, 0x0f, 0x0e, 0x0e, 0x0f, 0x0f, 0x06, 0x0f, 0x0f, 0x06,
    0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x06, 0x0e, 0x06, 0x0e, 0x06, 0x06,
    0x06, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f,
    0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x06, 0x06, 0x06, 0x07, 0x0f,
    0x07, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f,
    0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x06, 0x07, 0x06, 0x0f, 0x00,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
};

bool dm_http1_is_token_char(unsigned char c)
{
    return (ctab[c] & C_TOKEN) != 0;
}

static inline bool is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* SWAR tests over 8 bytes ("Bit Twiddling Hacks"): whether any byte of x is
 * < n (n <= 128), or > n (n <= 127). Each answers "any" exactly, which is all
 * the fast paths below need. */
#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static inline uint64_t any_less(uint64_t x, uint64_t n)
{
    return (x - ONES * n) & ~x & HIGHS;
}

static inline uint64_t any_more(uint64_t x, uint64_t n)
{
    return ((x + ONES * (127 - n)) | x) & HIGHS;
}

static inline uint64_t load8(const unsigned char *p)
{
    uint64_t x;
    memcpy(&x, p, sizeof(x));
    return x;
}

/* skip_value returns the first offset from pos, below end + 1, whose byte is
 * not C_VALUE: eight bytes at a time while they are all VCHAR or SP, then
 * byte by byte (HTAB, obs-text). s[end] must not be C_VALUE. */
static inline size_t skip_value(const unsigned char *s, size_t pos, size_t end)
{
    while (end - pos >= 8) {
        uint64_t x = load8(s + pos);
        if (any_less(x, 0x20) | any_more(x, 0x7e)) { /* CTL, DEL or obs-text */
            break;
        }
        pos += 8;
    }
    while (ctab[s[pos]] & C_VALUE) {
        pos++;
    }
    return pos;
}

/* skip_target is skip_value for VCHARs (request-target bytes). */
static inline size_t skip_target(const unsigned char *s, size_t pos, size_t end)
{
    while (end - pos >= 8) {
        uint64_t x = load8(s + pos);
        if (any_less(x, 0x21) | any_more(x, 0x7e)) {
            break;
        }
        pos += 8;
    }
    while (ctab[s[pos]] & C_TARGET) {
        pos++;
    }
    return pos;
}

static inline unsigned hex_value(unsigned char c)
{
    return c <= '9' ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
}

/* ieq_lower compares s[0..len) with the lower-case literal lit, ASCII
 * case-insensitively. "| 0x20" also maps some CTLs onto the digits and
 * punctuation of our literals, so s must hold no CTLs: callers pass only
 * validated tokens, field values or targets. */
static bool ieq_lower(const unsigned char *s, size_t len, const char *lit, size_t lit_len)
{
    if (len != lit_len) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if ((s[i] | 0x20) != (unsigned char)lit[i]) {
            return false;
        }
    }
    return true;
}

#define IEQ(s, len, lit) ieq_lower((s), (len), (lit), sizeof(lit) - 1)

/* ---- Head ------------------------------------------------------------- */

void dm_http1_parser_init(struct dm_http1_parser *p)
{
    p->scanned = 0;
    p->line_start = 0;
    p->num_lines = 0;
}

/* Framing and connection facts gathered from the fields of one head. */
struct head_state {
    uint64_t content_length;
    bool has_cl;
    bool has_te;
    bool te_chunked;      /* chunked appeared in Transfer-Encoding */
    bool te_last_chunked; /* ... and is the last coding so far */
    bool te_other;        /* a coding other than chunked appeared */
    size_t te_codings;
    int num_host;
    bool conn_close;
    bool conn_keep_alive;
    bool conn_upgrade;
};

static ssize_t fail(struct dm_http1_msg *msg, bool is_response, int status, const char *why)
{
    msg->error_status = is_response ? 502 : status;
    msg->error = why;
    return DM_PARSE_ERROR;
}

static void msg_reset(struct dm_http1_msg *msg)
{
    struct dm_http1_header *headers = msg->headers;
    memset(msg, 0, sizeof(*msg));
    msg->headers = headers;
    msg->version_minor = -1;
    msg->known = (struct dm_http1_known){-1, -1, -1, -1, -1, -1};
}

/* scan_head searches buf[0..len) for the end of the head, resuming where the
 * previous call for this message stopped. It checks what can be checked line
 * by line: every LF follows a CR, the start line is at most max_line bytes,
 * at most max_headers field lines, at most max_header_bytes in all. Returns
 * the head length, DM_PARSE_AGAIN or DM_PARSE_ERROR. */
static ssize_t scan_head(struct dm_http1_parser *p, struct dm_http1_msg *msg, const char *buf,
                         size_t len, const struct dm_http1_limits *lim, bool is_response)
{
    /* The head may not exceed max_header_bytes, so never look further. */
    size_t limit = len < lim->max_header_bytes ? len : lim->max_header_bytes;
    if (p->scanned > limit || p->line_start > p->scanned) {
        dm_http1_parser_init(p); /* caller misuse: start over rather than trust offsets */
    }
    size_t pos = p->scanned;
    while (pos < limit) {
        const char *lf = memchr(buf + pos, '\n', limit - pos);
        if (lf == NULL) {
            pos = limit;
            break;
        }
        size_t i = (size_t)(lf - buf);
        size_t raw_len = i - p->line_start; /* bytes before the LF */
        /* Same test as for a partial start line below, and before the CR
         * check, so the verdict does not depend on how the bytes arrived. */
        if (p->num_lines == 0 && raw_len >= 2 && raw_len - 2 >= lim->max_line) {
            return fail(msg, is_response, 414, "start line too long");
        }
        if (raw_len == 0 || buf[i - 1] != '\r') {
            return fail(msg, is_response, 400, "bare LF");
        }
        size_t line_len = raw_len - 1;
        pos = i + 1;
        p->line_start = pos;
        if (p->num_lines == 0) {
            if (line_len == 0) {
                if (is_response) {
                    return fail(msg, is_response, 502, "empty line before the status line");
                }
                /* Only empty lines so far, each exactly CRLF. */
                if (pos / 2 > MAX_LEADING_EMPTY_LINES) {
                    return fail(msg, is_response, 400, "too many empty lines before the request");
                }
                continue;
            }
        } else if (line_len == 0) {
            dm_http1_parser_init(p);
            return (ssize_t)pos;
        } else if (p->num_lines > lim->max_headers) {
            return fail(msg, is_response, 431, "too many header fields");
        }
        p->num_lines++;
    }
    p->scanned = pos;
    /* Incomplete: fail as soon as the limits are certain to be exceeded. A
     * start line whose LF is not among the first max_line + 2 bytes is too
     * long whatever follows. */
    size_t partial = limit - p->line_start;
    if (p->num_lines == 0 && partial >= 2 && partial - 2 >= lim->max_line) {
        return fail(msg, is_response, 414, "start line too long");
    }
    if (len > limit) {
        return fail(msg, is_response, 431, "header block too large");
    }
    return DM_PARSE_AGAIN;
}

/* check_host validates uri-host [":" port] (RFC 9110 §7.2, RFC 3986 §3.2.2):
 * an IP-literal in brackets, or a reg-name / IPv4address. "," is refused
 * although RFC 3986 allows it so that no component can read a Host as a list;
 * "@", "/", "?", "#", whitespace and CTLs are refused so that routing cannot be
 * fooled by userinfo or a path. The port has at most 5 digits, <= 65535. */
static bool check_host(const unsigned char *h, size_t len, bool need_host, bool need_port)
{
    size_t i = 0;
    if (len > 0 && h[0] == '[') {
        i = 1;
        while (i < len && ((ctab[h[i]] & C_HEX) || h[i] == ':' || h[i] == '.')) {
            i++;
        }
        if (i == len || h[i] != ']' || i < 3) {
            return false;
        }
        i++;
    } else {
        while (i < len) {
            if (ctab[h[i]] & C_HOST) {
                i++;
            } else if (h[i] == '%' && len - i > 2 && (ctab[h[i + 1]] & C_HEX) &&
                       (ctab[h[i + 2]] & C_HEX)) {
                i += 3;
            } else {
                break;
            }
        }
        if (i == 0 && (need_host || i < len)) {
            return false; /* a port needs a host; an empty Host is valid */
        }
    }
    if (i == len) {
        return !need_port;
    }
    if (h[i] != ':') {
        return false;
    }
    i++;
    if (i == len) {
        return !need_port; /* port = *DIGIT */
    }
    if (len - i > 5) {
        return false;
    }
    unsigned port = 0;
    for (; i < len; i++) {
        if (!(ctab[h[i]] & C_DIGIT)) {
            return false;
        }
        port = port * 10 + (unsigned)(h[i] - '0');
    }
    return port <= 65535;
}

/* check_target validates the request-target form against the method (RFC
 * 9112 §3.2); the bytes were already checked to be VCHARs. */
static bool check_target(const unsigned char *m, size_t m_len, const unsigned char *t, size_t len)
{
    bool is_connect = m_len == 7 && memcmp(m, "CONNECT", 7) == 0;
    if (is_connect) {
        return check_host(t, len, true, true); /* authority-form, RFC 9110 §9.3.6 */
    }
    if (t[0] == '/') {
        return true; /* origin-form */
    }
    if (len == 1 && t[0] == '*') {
        return m_len == 7 && memcmp(m, "OPTIONS", 7) == 0; /* asterisk-form */
    }
    /* absolute-form: http or https, a non-empty authority without userinfo. */
    size_t i;
    if (len > 7 && IEQ(t, 7, "http://")) {
        i = 7;
    } else if (len > 8 && IEQ(t, 8, "https://")) {
        i = 8;
    } else {
        return false;
    }
    size_t a0 = i;
    while (i < len && t[i] != '/' && t[i] != '?' && t[i] != '#') {
        i++;
    }
    return check_host(t + a0, i - a0, true, false);
}

/* parse_content_length reads 1*DIGIT, or a list of identical values ("42, 42",
 * RFC 9110 §8.6), up to INT64_MAX so callers can use off_t arithmetic. */
static bool parse_content_length(const unsigned char *v, size_t len, uint64_t *out)
{
    size_t i = 0;
    bool have = false;
    uint64_t first = 0;
    for (;;) {
        uint64_t n = 0;
        size_t d0 = i;
        while (i < len && (ctab[v[i]] & C_DIGIT)) {
            unsigned d = (unsigned)(v[i] - '0');
            if (n > ((uint64_t)INT64_MAX - d) / 10) {
                return false;
            }
            n = n * 10 + d;
            i++;
        }
        if (i == d0 || (have && n != first)) {
            return false;
        }
        first = n;
        have = true;
        while (i < len && is_ows(v[i])) {
            i++;
        }
        if (i == len) {
            break;
        }
        if (v[i] != ',') {
            return false;
        }
        i++;
        while (i < len && is_ows(v[i])) {
            i++;
        }
    }
    *out = first;
    return true;
}

/* parse_transfer_encoding adds the codings of one Transfer-Encoding field to
 * st (fields combine as one list, RFC 9110 §5.3). Empty list elements are
 * ignored (RFC 9110 §5.6.1). Returns NULL or the reason of a 400. */
static const char *parse_transfer_encoding(struct head_state *st, const unsigned char *v,
                                           size_t len)
{
    size_t i = 0;
    for (;;) {
        while (i < len && (is_ows(v[i]) || v[i] == ',')) {
            i++;
        }
        if (i == len) {
            return NULL;
        }
        size_t t0 = i;
        while (i < len && (ctab[v[i]] & C_TOKEN)) {
            i++;
        }
        size_t t_len = i - t0;
        while (i < len && is_ows(v[i])) {
            i++;
        }
        bool has_params = i < len && v[i] == ';';
        if (has_params) {
            while (i < len && v[i] != ',') {
                i++;
            }
        }
        if (t_len == 0 || (i < len && v[i] != ',')) {
            return "invalid Transfer-Encoding";
        }
        st->te_codings++;
        if (IEQ(v + t0, t_len, "chunked")) {
            if (has_params) {
                return "chunked with parameters";
            }
            if (st->te_chunked) {
                return "chunked applied twice";
            }
            st->te_chunked = true;
            st->te_last_chunked = true;
        } else {
            st->te_other = true;
            st->te_last_chunked = false;
        }
    }
}

/* parse_connection records the close, keep-alive and upgrade options of one
 * Connection field; other elements (even non-tokens) are ignored. */
static void parse_connection(struct head_state *st, const unsigned char *v, size_t len)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (is_ows(v[i]) || v[i] == ',')) {
            i++;
        }
        size_t e0 = i;
        while (i < len && v[i] != ',') {
            i++;
        }
        size_t e1 = i;
        while (e1 > e0 && is_ows(v[e1 - 1])) {
            e1--;
        }
        const unsigned char *e = v + e0;
        size_t e_len = e1 - e0;
        if (IEQ(e, e_len, "close")) {
            st->conn_close = true;
        } else if (IEQ(e, e_len, "keep-alive")) {
            st->conn_keep_alive = true;
        } else if (IEQ(e, e_len, "upgrade")) {
            st->conn_upgrade = true;
        }
    }
}

/* on_known_field acts on the fields that matter for framing and routing.
 * Only called for names of the lengths below. Returns NULL or the reason of
 * a 400 (a 502 for responses). */
static const char *on_known_field(struct dm_http1_msg *msg, struct head_state *st, int idx,
                                  const unsigned char *n, size_t n_len, const unsigned char *v,
                                  size_t v_len, bool is_response)
{
    switch (n_len) {
    case 4:
        if (IEQ(n, n_len, "host")) {
            if (msg->known.host < 0) {
                msg->known.host = idx;
            }
            st->num_host++;
            if (is_response) {
                return NULL;
            }
            if (st->num_host > 1) {
                return "more than one Host";
            }
            if (!check_host(v, v_len, false, false)) {
                return "invalid Host";
            }
        }
        return NULL;
    case 6:
        if (IEQ(n, n_len, "expect")) {
            if (msg->known.expect < 0) {
                msg->known.expect = idx;
            }
            if (IEQ(v, v_len, "100-continue")) {
                msg->expect_continue = true;
            }
        }
        return NULL;
    case 7:
        if (IEQ(n, n_len, "upgrade") && msg->known.upgrade < 0) {
            msg->known.upgrade = idx;
        }
        return NULL;
    case 10:
        if (IEQ(n, n_len, "connection")) {
            if (msg->known.connection < 0) {
                msg->known.connection = idx;
            }
            parse_connection(st, v, v_len);
        }
        return NULL;
    case 14:
        if (IEQ(n, n_len, "content-length")) {
            uint64_t cl;
            if (!parse_content_length(v, v_len, &cl)) {
                return "invalid Content-Length";
            }
            if (st->has_cl && cl != st->content_length) {
                return "differing Content-Length values";
            }
            if (msg->known.content_length < 0) {
                msg->known.content_length = idx;
            }
            st->has_cl = true;
            st->content_length = cl;
        }
        return NULL;
    case 17:
        if (IEQ(n, n_len, "transfer-encoding")) {
            if (msg->known.transfer_encoding < 0) {
                msg->known.transfer_encoding = idx;
            }
            st->has_te = true;
            return parse_transfer_encoding(st, v, v_len);
        }
        return NULL;
    default:
        return NULL;
    }
}

/* parse_fields validates the field lines from buf + pos up to the final CRLF at
 * head_len - 2 and fills msg->headers, msg->known and st. */
static ssize_t parse_fields(struct dm_http1_msg *msg, struct head_state *st, const char *buf,
                            size_t pos, size_t head_len, const struct dm_http1_limits *lim,
                            bool is_response)
{
    const unsigned char *s = (const unsigned char *)buf;
    size_t end = head_len - 2;
    size_t num = 0;
    while (pos < end) {
        size_t n0 = pos;
        while (ctab[s[pos]] & C_TOKEN) {
            pos++;
        }
        if (s[pos] != ':' || pos == n0) {
            if (pos == n0 && is_ows(s[pos])) {
                return fail(msg, is_response, 400, "obs-fold");
            }
            if (pos != n0 && is_ows(s[pos])) {
                return fail(msg, is_response, 400, "whitespace before colon");
            }
            return fail(msg, is_response, 400, "invalid field name");
        }
        size_t n_len = pos - n0;
        pos++;
        while (is_ows(s[pos])) {
            pos++;
        }
        size_t v0 = pos;
        pos = skip_value(s, pos, end);
        if (s[pos] != '\r' || s[pos + 1] != '\n') {
            return fail(msg, is_response, 400,
                        s[pos] == '\r' ? "bare CR"
                                       : (s[pos] == 0 ? "NUL in field value"
                                                      : "control character in field value"));
        }
        size_t v1 = pos;
        while (v1 > v0 && is_ows(s[v1 - 1])) {
            v1--;
        }
        pos += 2;
        if (num >= lim->max_headers) {
            return fail(msg, is_response, 431, "too many header fields");
        }
        struct dm_http1_header *h = &msg->headers[num];
        h->name = buf + n0;
        h->name_len = n_len;
        h->value = buf + v0;
        h->value_len = v1 - v0;
        const char *why =
            on_known_field(msg, st, (int)num, s + n0, n_len, s + v0, v1 - v0, is_response);
        if (why != NULL) {
            return fail(msg, is_response, 400, why);
        }
        num++;
    }
    msg->num_headers = num;
    return 0;
}

/* parse_version reads "HTTP/" DIGIT "." DIGIT at v (8 readable bytes).
 * Returns the minor version for 1.0 and 1.1, -1 for other versions, -2 for
 * anything else. */
static int parse_version(const unsigned char *v)
{
    if (memcmp(v, "HTTP/", 5) != 0 || !(ctab[v[5]] & C_DIGIT) || v[6] != '.' ||
        !(ctab[v[7]] & C_DIGIT)) {
        return -2;
    }
    if (v[5] != '1' || v[7] > '1') {
        return -1;
    }
    return v[7] - '0';
}

/* parse_request_line parses request-line = method SP request-target SP
 * HTTP-version CRLF (RFC 9112 §3) after any leading empty lines. Returns the
 * offset of the first field line or DM_PARSE_ERROR. */
static ssize_t parse_request_line(struct dm_http1_msg *msg, const char *buf, size_t head_len)
{
    const unsigned char *s = (const unsigned char *)buf;
    size_t pos = 0;
    while (s[pos] == '\r' && s[pos + 1] == '\n') {
        pos += 2; /* leading empty lines, counted by scan_head */
    }
    size_t m0 = pos;
    while (ctab[s[pos]] & C_TOKEN) {
        pos++;
    }
    if (pos == m0 || s[pos] != ' ') {
        return fail(msg, false, 400, "invalid method");
    }
    msg->method = buf + m0;
    msg->method_len = pos - m0;
    size_t t0 = ++pos;
    pos = skip_target(s, pos, head_len - 1);
    if (pos == t0 || s[pos] != ' ') {
        return fail(msg, false, 400, "invalid request-target");
    }
    msg->target = buf + t0;
    msg->target_len = pos - t0;
    pos++;
    if (head_len - pos < 10 || s[pos + 8] != '\r' || s[pos + 9] != '\n') {
        return fail(msg, false, 400, "invalid HTTP-version");
    }
    int minor = parse_version(s + pos);
    if (minor == -2) {
        return fail(msg, false, 400, "invalid HTTP-version");
    }
    if (minor < 0) {
        return fail(msg, false, 505, "unsupported HTTP version");
    }
    msg->version_minor = minor;
    if (!check_target(s + m0, msg->method_len, s + t0, msg->target_len)) {
        return fail(msg, false, 400, "request-target form not allowed");
    }
    return (ssize_t)(pos + 10);
}

/* request_framing decides the body and connection fields of a request from
 * st (RFC 9112 §6.1, §6.3, §9.3): anything ambiguous is an error. */
static ssize_t request_framing(struct dm_http1_msg *msg, const struct head_state *st)
{
    int minor = msg->version_minor;
    if (minor == 1 && st->num_host == 0) {
        return fail(msg, false, 400, "missing Host");
    }
    if (st->has_te) {
        if (minor == 0) {
            return fail(msg, false, 400, "Transfer-Encoding in HTTP/1.0");
        }
        if (st->has_cl) {
            return fail(msg, false, 400, "both Content-Length and Transfer-Encoding");
        }
        if (!st->te_last_chunked) {
            return fail(msg, false, 400, "final transfer coding is not chunked");
        }
        if (st->te_other) {
            return fail(msg, false, 501, "unsupported transfer coding");
        }
        msg->body = DM_HTTP1_BODY_CHUNKED;
    } else if (st->has_cl) {
        msg->content_length = st->content_length;
        msg->body = st->content_length > 0 ? DM_HTTP1_BODY_LENGTH : DM_HTTP1_BODY_NONE;
    }
    /* RFC 9110 §7.8 and §10.1.1: Upgrade and Expect are ignored in HTTP/1.0. */
    msg->conn_has_close = st->conn_close;
    msg->keep_alive = !st->conn_close && (minor == 1 || st->conn_keep_alive);
    msg->is_upgrade = minor == 1 && st->conn_upgrade && msg->known.upgrade >= 0;
    if (minor == 0) {
        msg->expect_continue = false;
    }
    return 0;
}

ssize_t dm_http1_parse_request(struct dm_http1_parser *p, struct dm_http1_msg *msg, const char *buf,
                               size_t len, const struct dm_http1_limits *lim)
{
    msg_reset(msg);
    ssize_t rv = scan_head(p, msg, buf, len, lim, false);
    if (rv <= 0) {
        return rv;
    }
    ssize_t pos = parse_request_line(msg, buf, (size_t)rv);
    if (pos < 0) {
        return DM_PARSE_ERROR;
    }
    struct head_state st = {0};
    if (parse_fields(msg, &st, buf, (size_t)pos, (size_t)rv, lim, false) < 0) {
        return DM_PARSE_ERROR;
    }
    if (request_framing(msg, &st) < 0) {
        return DM_PARSE_ERROR;
    }
    return rv;
}

/* parse_status_line parses status-line = HTTP-version SP status-code SP
 * [ reason-phrase ] CRLF (RFC 9112 §4), also without the second SP. Returns
 * the offset of the first field line or DM_PARSE_ERROR. */
static ssize_t parse_status_line(struct dm_http1_msg *msg, const char *buf, size_t head_len)
{
    const unsigned char *s = (const unsigned char *)buf;
    /* "HTTP/1.1 200\r\n\r\n" (16 bytes) is the shortest head we accept. */
    if (head_len < 16) {
        return fail(msg, true, 502, "invalid status line");
    }
    int minor = parse_version(s);
    if (minor < 0 || s[8] != ' ') {
        return fail(msg, true, 502, "invalid status line");
    }
    if (s[9] < '1' || s[9] > '9' || !(ctab[s[10]] & C_DIGIT) || !(ctab[s[11]] & C_DIGIT)) {
        return fail(msg, true, 502, "invalid status code");
    }
    msg->version_minor = minor;
    msg->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    size_t pos = 12;
    msg->reason = buf + pos;
    if (s[pos] == ' ') {
        msg->reason = buf + ++pos;
        while (ctab[s[pos]] & C_VALUE) {
            pos++;
        }
    }
    if (s[pos] != '\r' || s[pos + 1] != '\n') {
        return fail(msg, true, 502, "invalid status line");
    }
    msg->reason_len = (size_t)(buf + pos - msg->reason);
    return (ssize_t)(pos + 2);
}

/* response_framing decides the body and connection fields of a response
 * from st (RFC 9112 §6.1, §6.3, §9.3). Transfer-Encoding is checked even when
 * the status has no body: a backend sending nonsense is not trusted. */
static ssize_t response_framing(struct dm_http1_msg *msg, const struct head_state *st, bool is_head)
{
    int status = msg->status;
    if (st->has_te) {
        if (msg->version_minor == 0) {
            return fail(msg, true, 502, "Transfer-Encoding in HTTP/1.0");
        }
        if (st->has_cl) {
            return fail(msg, true, 502, "both Content-Length and Transfer-Encoding");
        }
        if (!st->te_last_chunked || st->te_other) {
            return fail(msg, true, 502, "unsupported transfer coding");
        }
    }
    if (st->has_cl) {
        msg->content_length = st->content_length;
    }
    if (is_head || status < 200 || status == 204 || status == 304) {
        msg->body = DM_HTTP1_BODY_NONE;
    } else if (st->has_te) {
        msg->body = DM_HTTP1_BODY_CHUNKED;
    } else if (st->has_cl) {
        msg->body = st->content_length > 0 ? DM_HTTP1_BODY_LENGTH : DM_HTTP1_BODY_NONE;
    } else {
        msg->body = DM_HTTP1_BODY_EOF;
    }
    msg->conn_has_close = st->conn_close;
    msg->keep_alive = !st->conn_close && (msg->version_minor == 1 || st->conn_keep_alive) &&
                      msg->body != DM_HTTP1_BODY_EOF;
    msg->is_upgrade = st->conn_upgrade && msg->known.upgrade >= 0;
    msg->expect_continue = false;
    return 0;
}

ssize_t dm_http1_parse_response(struct dm_http1_parser *p, struct dm_http1_msg *msg,
                                const char *buf, size_t len, const struct dm_http1_limits *lim,
                                bool is_head)
{
    msg_reset(msg);
    ssize_t rv = scan_head(p, msg, buf, len, lim, true);
    if (rv <= 0) {
        return rv;
    }
    ssize_t pos = parse_status_line(msg, buf, (size_t)rv);
    if (pos < 0) {
        return DM_PARSE_ERROR;
    }
    struct head_state st = {0};
    if (parse_fields(msg, &st, buf, (size_t)pos, (size_t)rv, lim, true) < 0) {
        return DM_PARSE_ERROR;
    }
    if (response_framing(msg, &st, is_head) < 0) {
        return DM_PARSE_ERROR;
    }
    return rv;
}

/* ---- Chunked body ------------------------------------------------------- */

/* Values of dm_http1_chunked.phase. */
enum {
    PH_HEX = 0, /* size line: chunk-size digits */
    PH_BWS,     /* size line: whitespace after the size, ";" must follow */
    PH_EXT,     /* size line: chunk-ext, up to CR */
    PH_NAME,    /* trailer line: field name, up to ":" */
    PH_VALUE,   /* trailer line: field value, up to CR */
};

void dm_http1_chunked_init(struct dm_http1_chunked *c)
{
    memset(c, 0, sizeof(*c));
    c->state = DM_CHUNK_SIZE;
    c->phase = PH_HEX;
}

/* chunk_size_line consumes size-line bytes from s[*io..len):
 * chunk-size [ BWS ";" chunk-ext ] CRLF. The size accumulates in remaining. */
static int chunk_size_line(struct dm_http1_chunked *c, const unsigned char *s, size_t len,
                           size_t *io)
{
    size_t i = *io;
    while (i < len) {
        unsigned char ch = s[i++];
        if (c->line_cr) {
            if (ch != '\n') {
                return -1; /* bare CR */
            }
            c->line_cr = false;
            c->line_len = 0;
            c->phase = PH_HEX;
            if (c->remaining == 0) {
                c->state = DM_CHUNK_TRAILERS; /* last-chunk */
                c->trailer_line_empty = true;
                c->trailer_bytes = 0;
            } else {
                c->state = DM_CHUNK_DATA;
            }
            break;
        }
        if (ch == '\r') {
            if ((c->phase == PH_HEX && c->line_len == 0) || c->phase == PH_BWS) {
                return -1; /* no digits, or whitespace with no extension */
            }
            c->line_cr = true;
            continue;
        }
        if (++c->line_len > DM_HTTP1_MAX_CHUNK_LINE) {
            return -1;
        }
        switch (c->phase) {
        case PH_HEX:
            if (ctab[ch] & C_HEX) {
                if (c->line_len > 16) {
                    return -1; /* would overflow 64 bits */
                }
                c->remaining = (c->remaining << 4) | hex_value(ch);
            } else if (c->line_len == 1) {
                return -1; /* no digits */
            } else if (ch == ';') {
                c->phase = PH_EXT;
            } else if (is_ows(ch)) {
                c->phase = PH_BWS;
            } else {
                return -1;
            }
            break;
        case PH_BWS:
            if (ch == ';') {
                c->phase = PH_EXT;
            } else if (!is_ows(ch)) {
                return -1;
            }
            break;
        case PH_EXT:
            if (!(ctab[ch] & C_VALUE)) {
                return -1; /* CTL or bare LF */
            }
            break;
        default:
            return -1;
        }
    }
    *io = i;
    return 0;
}

/* chunk_trailers consumes trailer-section bytes from s[*io..len): field lines
 * (token ":" value CRLF) until an empty line, bounded in total size. */
static int chunk_trailers(struct dm_http1_chunked *c, const unsigned char *s, size_t len,
                          size_t *io)
{
    size_t i = *io;
    while (i < len) {
        unsigned char ch = s[i++];
        if (++c->trailer_bytes > DM_HTTP1_MAX_TRAILER_BYTES) {
            return -1;
        }
        if (c->line_cr) {
            if (ch != '\n') {
                return -1; /* bare CR */
            }
            c->line_cr = false;
            if (c->trailer_line_empty) {
                c->state = DM_CHUNK_DONE;
                break;
            }
            c->trailer_line_empty = true;
            continue;
        }
        if (c->trailer_line_empty) {
            if (ch == '\r') {
                c->line_cr = true;
            } else if (ctab[ch] & C_TOKEN) {
                c->trailer_line_empty = false;
                c->phase = PH_NAME;
            } else {
                return -1; /* obs-fold, empty name, bare LF, CTL */
            }
        } else if (c->phase == PH_NAME) {
            if (ch == ':') {
                c->phase = PH_VALUE;
            } else if (!(ctab[ch] & C_TOKEN)) {
                return -1; /* whitespace before colon, missing colon, ... */
            }
        } else if (ch == '\r') {
            c->line_cr = true;
        } else if (!(ctab[ch] & C_VALUE)) {
            return -1;
        }
    }
    *io = i;
    return 0;
}

ssize_t dm_http1_chunked_step(struct dm_http1_chunked *c, const char *buf, size_t len,
                              const char **out_data, size_t *out_data_len)
{
    const unsigned char *s = (const unsigned char *)buf;
    size_t i = 0;
    *out_data = NULL;
    *out_data_len = 0;
    while (i < len) {
        switch (c->state) {
        case DM_CHUNK_SIZE:
            if (chunk_size_line(c, s, len, &i) < 0) {
                return DM_PARSE_ERROR;
            }
            break;
        case DM_CHUNK_DATA: {
            size_t n = len - i;
            if (n > c->remaining) {
                n = (size_t)c->remaining;
            }
            *out_data = buf + i;
            *out_data_len = n;
            c->remaining -= n;
            if (c->remaining == 0) {
                c->state = DM_CHUNK_DATA_CRLF;
            }
            return (ssize_t)(i + n);
        }
        case DM_CHUNK_DATA_CRLF:
            if (s[i] != (c->line_cr ? '\n' : '\r')) {
                return DM_PARSE_ERROR;
            }
            i++;
            if (c->line_cr) {
                c->line_cr = false;
                c->state = DM_CHUNK_SIZE;
                c->line_len = 0;
                c->phase = PH_HEX;
            } else {
                c->line_cr = true;
            }
            break;
        case DM_CHUNK_TRAILERS:
            if (chunk_trailers(c, s, len, &i) < 0) {
                return DM_PARSE_ERROR;
            }
            break;
        case DM_CHUNK_DONE:
            return (ssize_t)i;
        default:
            return DM_PARSE_ERROR;
        }
    }
    return (ssize_t)i;
}
