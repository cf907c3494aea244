/* Host names, backend addresses and CIDRs as written in the config: syntax
 * checks with messages meant for operators, and conversion to sockaddrs.
 * Nothing here resolves names or touches the network; host names stay names
 * until the proxy resolves them with evdns. */
#include "config/config_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "proxy/core/str.h"

/* Room for a quoted user string: CFG_QUOTE_MAX bytes escaped up to 6 times. */
#define QUOTED_MAX (CFG_QUOTE_MAX * 6 + 8)

/* Longest unix socket path: sun_path holds it with its NUL (107 on Linux). */
#define UNIX_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

void cfg_quote(char *out, size_t cap, const char *s, size_t len)
{
    if (cap == 0) {
        return;
    }
    size_t limit = len > CFG_QUOTE_MAX ? CFG_QUOTE_MAX : len;
    /* Never cut a UTF-8 sequence in half: back up to its first byte. */
    while (limit < len && limit > 0 && ((unsigned char)s[limit] & 0xC0) == 0x80) {
        limit--;
    }
    size_t n = 0;
    bool is_cut = limit < len;
    if (n + 1 < cap) {
        out[n++] = '"';
    }
    for (size_t i = 0; i < limit; i++) {
        unsigned char ch = (unsigned char)s[i];
        char piece[8];
        int plen;
        if (ch == '"' || ch == '\\') {
            plen = snprintf(piece, sizeof(piece), "\\%c", ch);
        } else if (ch < 0x20 || ch == 0x7f) {
            plen = snprintf(piece, sizeof(piece), "\\u%04x", ch);
        } else {
            piece[0] = (char)ch;
            plen = 1;
        }
        /* Keep room for `..."` and the NUL. */
        if (n + (size_t)plen + 5 > cap) {
            is_cut = true;
            break;
        }
        memcpy(out + n, piece, (size_t)plen);
        n += (size_t)plen;
    }
    if (is_cut && n + 4 < cap) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    if (n + 1 < cap) {
        out[n++] = '"';
    }
    out[n] = '\0';
}

static bool is_label_char(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-';
}

/* name_check validates a lower-case dotted name (no wildcard) and returns
 * NULL, or the reason it is invalid (static or in reason_buf). Counts labels
 * into *out_num_labels. */
static const char *name_check(const char *name, size_t len, size_t *out_num_labels,
                              char *reason_buf, size_t reason_cap)
{
    size_t num_labels = 0;
    size_t start = 0;
    bool is_numeric = true;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && name[i] != '.') {
            unsigned char ch = (unsigned char)name[i];
            if (!is_label_char(ch)) {
                if (ch > 0x20 && ch < 0x7f) {
                    snprintf(reason_buf, reason_cap,
                             "invalid character '%c' (use letters, digits and '-'; write "
                             "internationalized names in punycode, \"xn--...\")",
                             ch);
                } else {
                    snprintf(reason_buf, reason_cap,
                             "invalid byte 0x%02x (use letters, digits and '-'; write "
                             "internationalized names in punycode, \"xn--...\")",
                             ch);
                }
                return reason_buf;
            }
            if (ch < '0' || ch > '9') {
                is_numeric = false;
            }
            continue;
        }
        size_t label_len = i - start;
        if (label_len == 0) {
            return "empty label";
        }
        if (label_len > 63) {
            return "a label is longer than 63 bytes";
        }
        if (name[start] == '-' || name[i - 1] == '-') {
            return "a label starts or ends with '-'";
        }
        num_labels++;
        if (i < len) {
            is_numeric = true;
        }
        start = i + 1;
    }
    /* RFC 3696 section 2: a top-level label is never all digits, so such a
     * name is a mistyped IP address ("10.0.0.256"), not a host name. */
    if (is_numeric) {
        return "the last label is all digits (not a valid IP address either)";
    }
    *out_num_labels = num_labels;
    return NULL;
}

/* ip_canonical writes the canonical text of the IP literal s into out, or
 * returns -1 if s is not one. */
static int ip_canonical(char *out, size_t cap, const char *s)
{
    unsigned char bin[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, s, bin) == 1) {
        return inet_ntop(AF_INET, bin, out, (socklen_t)cap) != NULL ? 0 : -1;
    }
    if (inet_pton(AF_INET6, s, bin) == 1) {
        return inet_ntop(AF_INET6, bin, out, (socklen_t)cap) != NULL ? 0 : -1;
    }
    return -1;
}

int cfg_host_normalize(char *out, size_t cap, const char *in, size_t len, unsigned flags, char *msg,
                       size_t msg_cap)
{
    char quoted[QUOTED_MAX];
    char buf[CFG_HOST_MAX + 2];
    char reason_buf[160];
    const char *reason = NULL;
    const char *what =
        (flags & CFG_HOST_ALLOW_IP) ? "a valid host name or IP address" : "a valid host name";
    bool allow_ip = (flags & CFG_HOST_ALLOW_IP) != 0;

    cfg_quote(quoted, sizeof(quoted), in, len);
    if (len == 0) {
        snprintf(msg, msg_cap, "host name is empty");
        return -1;
    }
    if (memchr(in, '\0', len) != NULL) {
        snprintf(msg, msg_cap, "%s is not %s: it contains a NUL byte", quoted, what);
        return -1;
    }
    if (allow_ip && len >= 2 && in[0] == '[' && in[len - 1] == ']') {
        char inner[INET6_ADDRSTRLEN + 1];
        unsigned char bin[sizeof(struct in6_addr)];
        if (len - 2 >= sizeof(inner) || dm_str_lower(inner, sizeof(inner), in + 1, len - 2) != 0 ||
            inet_pton(AF_INET6, inner, bin) != 1 ||
            inet_ntop(AF_INET6, bin, out, (socklen_t)cap) == NULL) {
            snprintf(msg, msg_cap, "%s is not a valid IPv6 address", quoted);
            return -1;
        }
        return 0;
    }
    /* One trailing dot (an absolute name) is allowed and removed. */
    if (len > 1 && in[len - 1] == '.') {
        len--;
    }
    if (len > CFG_HOST_MAX) {
        snprintf(msg, msg_cap, "%s is not %s: longer than %d bytes", quoted, what, CFG_HOST_MAX);
        return -1;
    }
    dm_str_lower(buf, sizeof(buf), in, len);
    if (allow_ip && ip_canonical(out, cap, buf) == 0) {
        return 0;
    }
    if (memchr(buf, ':', len) != NULL) {
        reason = allow_ip ? "not an IP address, and ':' is not allowed in a name"
                          : "':' is not allowed (a port does not belong here)";
        goto fail;
    }
    size_t num_labels = 0;
    const char *name = buf;
    size_t name_len = len;
    bool is_wildcard = len >= 2 && buf[0] == '*' && buf[1] == '.';
    if (is_wildcard) {
        if (!(flags & CFG_HOST_ALLOW_WILDCARD)) {
            reason = "wildcards are not allowed here";
            goto fail;
        }
        name += 2;
        name_len -= 2;
    }
    if (memchr(name, '*', name_len) != NULL) {
        reason = "'*' is only allowed as the whole first label, as in \"*.example.test\"";
        goto fail;
    }
    reason = name_check(name, name_len, &num_labels, reason_buf, sizeof(reason_buf));
    if (reason != NULL) {
        goto fail;
    }
    if (is_wildcard && num_labels < 2) {
        snprintf(msg, msg_cap,
                 "%s is not allowed: a wildcard needs at least two labels after \"*.\" (like "
                 "\"*.example.test\")",
                 quoted);
        return -1;
    }
    if (len + 1 > cap) {
        reason = "too long";
        goto fail;
    }
    memcpy(out, buf, len + 1);
    return 0;
fail:
    snprintf(msg, msg_cap, "%s is not %s: %s", quoted, what, reason);
    return -1;
}

/* port_parse reads 1..5 digits as a port 0..99999 into *out; -1 if not digits. */
static int port_parse(const char *s, unsigned *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5) {
        return -1;
    }
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    *out = v;
    return 0;
}

static int addr_parse_unix(struct cfg_addr *out, const char *text, const char *quoted, char *msg,
                           size_t msg_cap)
{
    const char *path = text + 5;
    size_t path_len = strlen(path);
    if (path_len == 0 || path[0] != '/') {
        snprintf(msg, msg_cap,
                 "%s: a unix socket path must be absolute, as in \"unix:/run/app.sock\"", quoted);
        return -1;
    }
    if (path_len > UNIX_PATH_MAX) {
        snprintf(msg, msg_cap, "%s: a unix socket path is at most %zu bytes", quoted,
                 (size_t)UNIX_PATH_MAX);
        return -1;
    }
    out->kind = CFG_ADDR_UNIX;
    out->path = dm_strdup_n(path, path_len);
    if (out->path == NULL) {
        snprintf(msg, msg_cap, "out of memory");
        return -1;
    }
    struct sockaddr_un *su = (struct sockaddr_un *)&out->ss;
    su->sun_family = AF_UNIX;
    memcpy(su->sun_path, path, path_len + 1);
    out->ss_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len + 1);
    return 0;
}

/* addr_fill_ip fills out for the IP literal host (no brackets); -1 if host is
 * not one. */
static int addr_fill_ip(struct cfg_addr *out, const char *host, uint16_t port)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        out->ss_len = sizeof(*sin);
        return 0;
    }
    memset(&out->ss, 0, sizeof(out->ss));
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        out->ss_len = sizeof(*sin6);
        return 0;
    }
    memset(&out->ss, 0, sizeof(out->ss));
    return -1;
}

int cfg_addr_parse(struct cfg_addr *out, const char *text, char *msg, size_t msg_cap)
{
    char quoted[QUOTED_MAX];
    char host[CFG_HOST_MAX + 2];
    char host_msg[CFG_MSG_MAX];
    const char *host_start;
    size_t host_len;
    const char *port_text;
    unsigned port = 0;
    bool is_ip = false;

    memset(out, 0, sizeof(*out));
    size_t len = strlen(text);
    cfg_quote(quoted, sizeof(quoted), text, len);

    if (strncmp(text, "unix:", 5) == 0) {
        if (addr_parse_unix(out, text, quoted, msg, msg_cap) != 0) {
            goto fail;
        }
        goto done;
    }
    if (strstr(text, "://") != NULL) {
        snprintf(msg, msg_cap,
                 "%s is not host:port (leave out the scheme, as in \"127.0.0.1:8080\")", quoted);
        goto fail;
    }
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':') {
            snprintf(msg, msg_cap, "%s is not host:port", quoted);
            goto fail;
        }
        host_start = text + 1;
        host_len = (size_t)(close - host_start);
        port_text = close + 2;
        if (host_len == 0 || host_len > INET6_ADDRSTRLEN) {
            snprintf(msg, msg_cap, "%s is not host:port: not a valid IPv6 address in brackets",
                     quoted);
            goto fail;
        }
        memcpy(host, host_start, host_len);
        host[host_len] = '\0';
        struct in6_addr a6;
        if (inet_pton(AF_INET6, host, &a6) != 1) {
            snprintf(msg, msg_cap, "%s is not host:port: not a valid IPv6 address in brackets",
                     quoted);
            goto fail;
        }
        is_ip = true;
    } else {
        const char *colon = strrchr(text, ':');
        if (colon == NULL || colon == text) {
            snprintf(msg, msg_cap, "%s is not host:port", quoted);
            goto fail;
        }
        host_start = text;
        host_len = (size_t)(colon - text);
        port_text = colon + 1;
        if (memchr(text, ':', host_len) != NULL) {
            snprintf(msg, msg_cap,
                     "%s is not host:port (write IPv6 addresses in brackets, as in "
                     "\"[::1]:8080\")",
                     quoted);
            goto fail;
        }
        if (host_len < sizeof(host)) {
            memcpy(host, host_start, host_len);
            host[host_len] = '\0';
            struct in_addr a4;
            is_ip = inet_pton(AF_INET, host, &a4) == 1;
        }
        if (!is_ip) {
            if (cfg_host_normalize(host, sizeof(host), host_start, host_len, CFG_HOST_NAME_ONLY,
                                   host_msg, sizeof(host_msg)) != 0) {
                snprintf(msg, msg_cap, "%s is not host:port: %s", quoted, host_msg);
                goto fail;
            }
        }
    }
    if (port_parse(port_text, &port) != 0) {
        snprintf(msg, msg_cap, "%s is not host:port", quoted);
        goto fail;
    }
    if (port < 1 || port > 65535) {
        snprintf(msg, msg_cap, "%s: port must be 1..65535", quoted);
        goto fail;
    }
    out->port = (uint16_t)port;
    out->host = dm_strdup_n(host, strlen(host));
    if (out->host == NULL) {
        snprintf(msg, msg_cap, "out of memory");
        goto fail;
    }
    if (is_ip) {
        out->kind = CFG_ADDR_IP;
        addr_fill_ip(out, host, out->port);
    } else {
        out->kind = CFG_ADDR_HOSTNAME;
    }
done:
    out->text = dm_strdup_n(text, len);
    if (out->text == NULL) {
        snprintf(msg, msg_cap, "out of memory");
        goto fail;
    }
    return 0;
fail:
    cfg_addr_cleanup(out);
    return -1;
}

void cfg_addr_cleanup(struct cfg_addr *a)
{
    if (a == NULL) {
        return;
    }
    free(a->text);
    free(a->host);
    free(a->path);
    memset(a, 0, sizeof(*a));
}

int cfg_cidr_parse(struct cfg_cidr *out, const char *text, char *msg, size_t msg_cap)
{
    char quoted[QUOTED_MAX];
    char addr[INET6_ADDRSTRLEN + 1];
    unsigned char bin[sizeof(struct in6_addr)];
    size_t len = strlen(text);
    const char *slash = strchr(text, '/');
    size_t addr_len = slash != NULL ? (size_t)(slash - text) : len;
    int family;
    unsigned max_prefix;
    unsigned prefix;

    memset(out, 0, sizeof(*out));
    cfg_quote(quoted, sizeof(quoted), text, len);
    if (addr_len == 0 || addr_len >= sizeof(addr)) {
        goto bad;
    }
    memcpy(addr, text, addr_len);
    addr[addr_len] = '\0';
    if (inet_pton(AF_INET, addr, bin) == 1) {
        family = AF_INET;
        max_prefix = 32;
    } else if (inet_pton(AF_INET6, addr, bin) == 1) {
        family = AF_INET6;
        max_prefix = 128;
    } else {
        goto bad;
    }
    prefix = max_prefix;
    if (slash != NULL) {
        const char *p = slash + 1;
        size_t n = strlen(p);
        if (n == 0 || n > 3) {
            goto bad;
        }
        prefix = 0;
        for (size_t i = 0; i < n; i++) {
            if (p[i] < '0' || p[i] > '9') {
                goto bad;
            }
            prefix = prefix * 10 + (unsigned)(p[i] - '0');
        }
        if (prefix > max_prefix) {
            snprintf(msg, msg_cap, "%s: the prefix length must be 0..%u", quoted, max_prefix);
            return -1;
        }
    }
    /* Clear host bits so matching is a plain masked compare. */
    size_t num_bytes = family == AF_INET ? 4 : 16;
    for (size_t i = 0; i < num_bytes; i++) {
        unsigned bits_before = (unsigned)i * 8;
        if (bits_before >= prefix) {
            bin[i] = 0;
        } else if (prefix - bits_before < 8) {
            bin[i] &= (unsigned char)(0xFFu << (8 - (prefix - bits_before)));
        }
    }
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out->net;
        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, bin, 4);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->net;
        sin6->sin6_family = AF_INET6;
        memcpy(&sin6->sin6_addr, bin, 16);
    }
    out->prefix = (uint8_t)prefix;
    return 0;
bad:
    snprintf(msg, msg_cap, "%s is not an IP address or CIDR (like \"10.0.0.0/8\" or \"::1\")",
             quoted);
    return -1;
}

int cfg_cidr_format(char *out, size_t cap, const struct cfg_cidr *c)
{
    char addr[INET6_ADDRSTRLEN];
    const void *bin;
    if (c->net.ss_family == AF_INET) {
        bin = &((const struct sockaddr_in *)&c->net)->sin_addr;
    } else if (c->net.ss_family == AF_INET6) {
        bin = &((const struct sockaddr_in6 *)&c->net)->sin6_addr;
    } else {
        return -1;
    }
    if (inet_ntop(c->net.ss_family, bin, addr, sizeof(addr)) == NULL) {
        return -1;
    }
    int n = snprintf(out, cap, "%s/%u", addr, (unsigned)c->prefix);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}
