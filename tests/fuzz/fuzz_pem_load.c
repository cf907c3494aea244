/* Fuzz target for certificate loading (acme/pem.c): the first input byte is
 * a separator; the rest is split at its first occurrence into a chain PEM and
 * a key PEM (no separator: the same text is both, like a combined file). The
 * pair goes through acme_cert_from_pem, and the key text alone through
 * acme_pem_parse_key so key parsing is reached even when the chain is broken.
 * Must never crash, leak, or leave BoringSSL's error queue non-empty. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pool.h>

#include "acme/acme.h"
#include "acme/cert_int.h"
#include "proxy/core/err.h"

/* Invariant checks that stay on in release builds (assert would not). */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    const char *chain = text, *key = text;
    size_t chain_len = len, key_len = len;
    const char *sep = memchr(text, data[0], len);
    if (sep != NULL) {
        chain_len = (size_t)(sep - text);
        key = sep + 1;
        key_len = len - chain_len - 1;
    }

    /* Odd separators also exercise the deduplicating pool. */
    CRYPTO_BUFFER_POOL *pool = (data[0] & 1) != 0 ? CRYPTO_BUFFER_POOL_new() : NULL;
    struct dm_err err = {0};
    struct acme_cert *c = acme_cert_from_pem(chain, chain_len, key, key_len, pool, &err);
    if (c != NULL) {
        size_t n = 0;
        CRYPTO_BUFFER *const *bufs = acme_cert_chain(c, &n);
        FUZZ_CHECK(n >= 1 && n <= ACME_CERT_MAX_CHAIN && bufs[0] != NULL);
        FUZZ_CHECK(acme_cert_key(c) != NULL);
        char *const *names = acme_cert_names(c, &n);
        for (size_t i = 0; i < n; i++) {
            (void)acme_cert_covers(c, names[i]);
        }
        (void)acme_cert_covers(c, "a.example.com");
        (void)acme_cert_covers(c, "::1");
        acme_cert_unref(c);
    } else {
        FUZZ_CHECK(err.msg[0] != '\0');
    }
    EVP_PKEY *k = acme_pem_parse_key(key, key_len, NULL);
    EVP_PKEY_free(k);
    FUZZ_CHECK(ERR_peek_error() == 0);
    CRYPTO_BUFFER_POOL_free(pool);
    return 0;
}
