/* libFuzzer target for acme/ondemand_policy.c, the checks every SNI name of
 * an on-demand site goes through before anything is asked or ordered. The
 * input up to the first newline is an allow pattern, the rest the name (as
 * arbitrary bytes: the TLS layer normally filters them first). Contract: an
 * accepted name is 1..253 bytes of [a-z0-9.-] with a dot and no empty label;
 * a registered domain is a suffix of the name starting at a label; nothing
 * reads out of bounds (ASan). Any violation abort()s. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "acme/ondemand_policy.h"
#include "config/config_types.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(bool ok)
{
    if (!ok) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 600) {
        return 0;
    }
    char buf[601];
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *name = memchr(buf, '\n', size);
    char *pattern = buf;
    if (name != NULL) {
        *name++ = '\0';
    } else {
        name = buf;
        pattern = "*.example.test";
    }
    const char *why = acme_od_name_check(name);
    if (why == NULL) {
        size_t len = strlen(name);
        require(len >= 1 && len <= 253 && strchr(name, '.') != NULL);
        require(strstr(name, "..") == NULL && name[0] != '.' && name[len - 1] != '.');
        for (size_t i = 0; i < len; i++) {
            char ch = name[i];
            require((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-');
        }
        char out[256];
        if (acme_psl_registered_domain(NULL, name, out, sizeof(out))) {
            size_t ol = strlen(out);
            require(ol <= len && strcmp(name + len - ol, out) == 0);
            require(ol == len || name[len - ol - 1] == '.');
        }
    }
    char *allow[] = {pattern};
    struct cfg_ondemand od = {.allow = allow, .num_allow = 1};
    struct cfg_site site = {.on_demand = &od};
    const char *s = acme_od_static_check(&site, name);
    require(why == NULL || s != NULL); /* the static check includes the name check */
    (void)acme_od_pattern_match(pattern, name);
    return 0;
}
