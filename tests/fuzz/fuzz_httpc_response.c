/* libFuzzer target for the response decoder of proxy/core/httpc.c. The first
 * input byte picks is_head, a feeding step and max_body; the rest is decoded
 * at once and in steps of that size. Both runs must agree (outcome, error
 * code, status, fields, body, bytes used) and respect the contract (body
 * within max_body and NUL-terminated, final status 200..599, fields
 * non-NULL, used <= len); any violation abort()s. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/core/httpc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(bool ok)
{
    if (!ok) {
        abort();
    }
}

static void check_resp(const struct dm_httpc_resp *r, size_t used, size_t len, size_t max_body)
{
    require(r->status >= 200 && r->status <= 599);
    require(r->body != NULL && r->body_len <= max_body && r->body[r->body_len] == '\0');
    require(r->num_headers <= DM_HTTPC_MAX_HEADERS);
    require((r->num_headers == 0) == (r->headers == NULL));
    for (size_t i = 0; i < r->num_headers; i++) {
        require(r->headers[i].name != NULL && r->headers[i].name[0] != '\0');
        require(r->headers[i].value != NULL);
        require(dm_httpc_resp_header(r, r->headers[i].name) != NULL);
    }
    require(used <= len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    static const size_t steps[] = {1, 2, 3, 7, 16, 100, 1000, 4096};
    static const size_t maxes[] = {0, 1, 16, 64, 1000, 4096, 65536, 1024 * 1024};
    bool is_head = data[0] & 1;
    size_t step = steps[(data[0] >> 1) & 7];
    size_t max_body = maxes[(data[0] >> 4) & 7];
    if (max_body == 0) {
        max_body = 1; /* 0 is not a valid limit for the decoder */
    }
    /* An exact-size heap copy so ASan sees any read past the end. */
    size_t len = size - 1;
    char *buf = malloc(len > 0 ? len : 1);
    require(buf != NULL);
    memcpy(buf, data + 1, len);

    struct dm_httpc_resp *a = NULL, *b = NULL;
    size_t used_a = 0, used_b = 0;
    struct dm_err ea = {0}, eb = {0};
    int ra = dm_httpc_resp_parse(&a, &used_a, buf, len, 0, is_head, max_body, &ea);
    int rb = dm_httpc_resp_parse(&b, &used_b, buf, len, step, is_head, max_body, &eb);
    require(ra == rb);
    if (ra == 0) {
        check_resp(a, used_a, len, max_body);
        check_resp(b, used_b, len, max_body);
        require(a->status == b->status && a->num_headers == b->num_headers);
        require(a->body_len == b->body_len && memcmp(a->body, b->body, a->body_len) == 0);
        require(used_a == used_b);
        for (size_t i = 0; i < a->num_headers; i++) {
            require(strcmp(a->headers[i].name, b->headers[i].name) == 0);
            require(strcmp(a->headers[i].value, b->headers[i].value) == 0);
        }
    } else {
        require(ra == -1 && a == NULL && b == NULL);
        /* The kind of failure does not depend on how bytes arrive, except
         * that a bound can be hit before a syntax error further on. */
        require(ea.code == eb.code || ea.code == DM_E_LIMIT || eb.code == DM_E_LIMIT);
        require(ea.msg[0] != '\0' && eb.msg[0] != '\0');
    }
    dm_httpc_resp_free(a);
    dm_httpc_resp_free(b);
    free(buf);
    return 0;
}
