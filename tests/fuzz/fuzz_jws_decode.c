/* Fuzz target for the decoding side of acme/jws.c on arbitrary bytes:
 * strict base64url (whatever decodes must re-encode to exactly the input:
 * one encoding per byte string), RFC 7638 thumbprints of JWK text, and
 * acme_jws_verify with the header's own "jwk", a fixed JWK (RFC 7515 A.3) and
 * an HMAC key (bytes 0..31, as in the EAB unit test). Every call must leave
 * BoringSSL's error queue empty. Seeds: corpus/jws_decode/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "acme/jws.h"
#include "proxy/core/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_b64url(const char *text, size_t size)
{
    size_t n = 0;
    uint8_t *d = acme_b64url_decode(text, size, &n);
    if (d == NULL) {
        return;
    }
    char *e = acme_b64url_encode(d, n);
    if (e == NULL || strlen(e) != size || memcmp(e, text, size) != 0 ||
        acme_b64url_encoded_len(n) != size) {
        abort(); /* a second encoding of the same bytes was accepted */
    }
    free(e);
    free(d);
}

static void check_verify(const char *text, size_t size, const struct acme_jws_verifier *v)
{
    struct dm_err err = {0};
    char *hdr = NULL, *payload = NULL;
    size_t payload_len = 0;
    if (acme_jws_verify(text, size, v, &hdr, &payload, &payload_len, &err) == 0) {
        if (hdr == NULL || payload == NULL || payload[payload_len] != '\0') {
            abort();
        }
    } else if (hdr != NULL || payload != NULL || err.msg[0] == '\0') {
        abort(); /* failure must set no output and say why */
    }
    free(hdr);
    free(payload);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t hmac_key[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                         11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                         22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
    static const struct acme_jws_verifier with_jwk = {
        .jwk = "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":"
               "\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
               "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}"};
    static const struct acme_jws_verifier with_hmac = {.hmac_key = hmac_key,
                                                       .hmac_key_len = sizeof(hmac_key)};
    const char *text = (const char *)data;

    check_b64url(text, size);

    struct dm_err err = {0};
    char tp[ACME_THUMBPRINT_LEN + 1];
    if (acme_jwk_thumbprint(text, size, tp, &err) == 0 && strlen(tp) != ACME_THUMBPRINT_LEN) {
        abort();
    }

    check_verify(text, size, NULL);
    check_verify(text, size, &with_jwk);
    check_verify(text, size, &with_hmac);

    if (ERR_peek_error() != 0) {
        abort(); /* a path left BoringSSL errors queued */
    }
    return 0;
}
