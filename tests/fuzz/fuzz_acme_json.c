/* Fuzz target for the ACME client's response parsers on arbitrary bytes: the
 * directory, problem documents (with subproblems), orders, authorizations,
 * renewalInfo (RFC 9773), and the header values the client reads (Link,
 * Retry-After, RFC 3339 times). Each parser must accept or refuse without
 * reading past the input, leak nothing and leave BoringSSL's error queue
 * empty. Seeds: corpus/acme_json/ (recorded RFC 8555 and Pebble documents). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "acme/ari.h"
#include "acme/client.h"
#include "acme/order.h"
#include "proxy/core/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    struct dm_err err = {0};

    struct acme_directory d;
    if (acme_directory_parse(&d, text, size, &err) == 0) {
        if (d.new_nonce == NULL || d.new_account == NULL || d.new_order == NULL) {
            abort(); /* required members are guaranteed on success */
        }
        acme_directory_has_profile(&d, "classic");
        acme_directory_cleanup(&d);
    }

    struct acme_problem p;
    acme_problem_parse(&p, 400, text, size);
    if (strnlen(p.type, sizeof(p.type)) == sizeof(p.type) ||
        strnlen(p.detail, sizeof(p.detail)) == sizeof(p.detail)) {
        abort(); /* always NUL-terminated */
    }
    acme_problem_short(&p);

    struct acme_order_resource o;
    if (acme_order_resource_parse(&o, text, size, &err) == 0) {
        if (o.finalize == NULL || o.num_authorizations > ACME_ORDER_MAX_NAMES) {
            abort();
        }
        acme_order_resource_cleanup(&o);
    }

    struct acme_authz_resource a;
    if (acme_authz_parse(&a, text, size, &err) == 0) {
        if (a.identifier == NULL || a.num_challenges > ACME_AUTHZ_MAX_CHALLENGES) {
            abort();
        }
        acme_authz_cleanup(&a);
    }

    struct acme_ari_info info;
    uint32_t ra = 3600;
    if (acme_ari_parse(&info, text, size, &ra, &err) == 0) {
        if (info.window_end <= info.window_start) {
            abort();
        }
        acme_ari_pick(&info, info.window_start, (uint64_t)size * 7919);
        acme_ari_info_cleanup(&info);
    }

    /* Header values are NUL-terminated strings in the client. */
    char *s = malloc(size + 1);
    if (s != NULL) {
        memcpy(s, data, size);
        s[size] = '\0';
        uint32_t secs;
        acme_retry_after_parse(s, 1700000000, &secs);
        time_t t;
        acme_time_parse(s, &t);
        char **urls = NULL;
        size_t num = 0;
        acme_link_parse(s, "alternate", "https://ca.test/acme/cert/1", &urls, &num, 8);
        acme_link_parse(s, "up", "https://ca.test/acme/cert/1", &urls, &num, 8);
        if (num > 8) {
            abort();
        }
        acme_strings_free(urls, num);
        char *u = acme_url_resolve("https://ca.test:14000/dir", s);
        free(u);
        free(s);
    }
    if (ERR_peek_error() != 0) {
        abort();
    }
    return 0;
}
