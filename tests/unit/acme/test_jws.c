/* Tests for acme/jws.c: base64url (RFC 4648 §10 vectors, strictness), the
 * RFC 7638 §3.1 thumbprint, RFC 7515 A.2/A.3 verification, sign->verify round
 * trips for ES256/ES384/RS256, protected headers, POST-as-GET, EAB (RFC 8555
 * §7.3.4) and key rollover (§7.3.5), PEM round trips, key authorizations.
 * Expected values marked "KAT" were computed outside this code base (RFCs,
 * Python hashlib/hmac). Keys are generated at run time, except the published
 * RFC 7515 A.3 example key, which gives fully deterministic vectors. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include "acme/jws.h"
#include "harness.h"
#include "proxy/core/err.h"

/* RFC 7515 §A.3.1: the ES256 example key (public test vector, not a secret). */
#define A3_X   "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"
#define A3_Y   "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
#define A3_D   "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"
#define A3_JWK "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"" A3_X "\",\"y\":\"" A3_Y "\"}"
/* KAT: base64url(SHA-256(A3_JWK)), Python hashlib. */
#define A3_THUMBPRINT "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U"

/* RFC 7515 §A.1-A.3: the shared example payload and its encoding. */
#define RFC7515_PAYLOAD                                                                            \
    "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}"
#define RFC7515_PAYLOAD64                                                                          \
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVl" \
    "fQ"
#define A3_SIG64                                                                                   \
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"

/* RFC 7515 §A.2.1: the RS256 example public key and signature. */
#define A2_N                                                                                       \
    "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-"                        \
    "4qPCJrcS2mJPMEzP1Pt0Bm4d"                                                                     \
    "4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-"                      \
    "bSf63kpaSHSXndS5z5rexMd"                                                                      \
    "bBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_"                  \
    "I5IhlJH7aGhyxXFvUK-"                                                                          \
    "DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"
#define A2_SIG64                                                                                   \
    "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_"        \
    "O8W2Fp5j"                                                                                     \
    "ujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_"                                            \
    "nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L"                                                 \
    "07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-"                                                \
    "eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUi"                                            \
    "pUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"

/* RFC 7638 §3.1: the example RSA JWK (with its extra members) and thumbprint. */
#define RFC7638_N                                                                                  \
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"      \
    "BJECPe"                                                                                       \
    "bWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"           \
    "FDW2QvzqY36"                                                                                  \
    "8QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-"                       \
    "bFTWhAI4vMQFh6WeZu0fM4lF"                                                                     \
    "d2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
#define RFC7638_THUMBPRINT "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

#define URL_NEW_ACCT "https://ca.test/acme/new-acct"
#define NONCE        "oFvnlFP1wIhRlYS2jTaXbA"

/* ---- helpers ---- */

static char *flattened(const char *protected64, const char *payload64, const char *sig64)
{
    char *s = NULL;
    if (asprintf(&s, "{\"protected\":\"%s\",\"payload\":\"%s\",\"signature\":\"%s\"}", protected64,
                 payload64, sig64) < 0) {
        return NULL;
    }
    return s;
}

/* verify runs acme_jws_verify on a NUL-terminated JWS. */
static int verify(const char *jws, const struct acme_jws_verifier *v, char **hdr, char **payload,
                  size_t *payload_len, struct dm_err *err)
{
    return acme_jws_verify(jws, strlen(jws), v, hdr, payload, payload_len, err);
}

/* member returns the decoded base64url string member name of a flattened JWS
 * as a NUL-terminated string (caller frees), or NULL. */
static char *member(const char *jws, const char *name, size_t *out_len)
{
    json_t *o = json_loads(jws, 0, NULL);
    const char *s = json_string_value(json_object_get(o, name));
    size_t n = 0;
    char *d = s != NULL ? (char *)acme_b64url_decode(s, strlen(s), &n) : NULL;
    json_decref(o);
    if (out_len != NULL) {
        *out_len = n;
    }
    return d;
}

/* a3_ec_key returns the RFC 7515 A.3 private key as an EC_KEY. */
static EC_KEY *a3_ec_key(void)
{
    uint8_t d[32];
    size_t d_len = 0;
    CHECK_EQ_INT(acme_b64url_decode_to(A3_D, strlen(A3_D), d, sizeof(d), &d_len), 0);
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    BIGNUM *priv = BN_bin2bn(d, d_len, NULL);
    EC_POINT *pub = EC_POINT_new(EC_KEY_get0_group(ec));
    EC_POINT_mul(EC_KEY_get0_group(ec), pub, priv, NULL, NULL, NULL);
    EC_KEY_set_private_key(ec, priv);
    EC_KEY_set_public_key(ec, pub);
    EC_POINT_free(pub);
    BN_free(priv);
    OPENSSL_cleanse(d, sizeof(d));
    return ec;
}

/* a3_key loads the RFC 7515 A.3 key from an "EC PRIVATE KEY" PEM (the
 * traditional format, so this also covers that path). */
static struct acme_key *a3_key(void)
{
    EC_KEY *ec = a3_ec_key();
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_ECPrivateKey(bio, ec, NULL, NULL, 0, NULL, NULL);
    const uint8_t *pem = NULL;
    size_t pem_len = 0;
    BIO_mem_contents(bio, &pem, &pem_len);
    struct dm_err err = {0};
    struct acme_key *k = acme_key_parse_pem((const char *)pem, pem_len, &err);
    CHECK(k != NULL);
    if (k == NULL) {
        fprintf(stderr, "  a3_key: %s\n", err.msg);
    }
    BIO_free(bio);
    EC_KEY_free(ec);
    return k;
}

/* a3_sign returns a flattened JWS of header text hdr and payload64 with a
 * valid ES256 signature by the A.3 key, made here independently of jws.c, so
 * a verifier rejecting it can only be objecting to the header. */
static char *a3_sign(const char *hdr, const char *payload64)
{
    char *h64 = acme_b64url_encode((const uint8_t *)hdr, strlen(hdr)), *input = NULL;
    CHECK(asprintf(&input, "%s.%s", h64, payload64) > 0);
    uint8_t md[SHA256_DIGEST_LENGTH], sig[64];
    SHA256((const uint8_t *)input, strlen(input), md);
    EC_KEY *ec = a3_ec_key();
    ECDSA_SIG *s = ECDSA_do_sign(md, sizeof(md), ec);
    BN_bn2bin_padded(sig, 32, ECDSA_SIG_get0_r(s));
    BN_bn2bin_padded(sig + 32, 32, ECDSA_SIG_get0_s(s));
    char *s64 = acme_b64url_encode(sig, sizeof(sig));
    char *jws = flattened(h64, payload64, s64);
    free(s64);
    ECDSA_SIG_free(s);
    EC_KEY_free(ec);
    free(input);
    free(h64);
    return jws;
}

static struct acme_key *gen(enum acme_key_alg alg, unsigned bits)
{
    struct dm_err err = {0};
    struct acme_key *k = acme_key_new(alg, bits, &err);
    CHECK(k != NULL);
    if (k == NULL) {
        fprintf(stderr, "  gen %s: %s\n", acme_key_alg_name(alg), err.msg);
    }
    return k;
}

/* ---- base64url ---- */

TEST(test_b64url_vectors)
{
    /* RFC 4648 §10 (unpadded), plus the two characters base64url changes. */
    static const struct {
        const char *raw;
        size_t raw_len;
        const char *enc;
    } v[] = {
        {"", 0, ""},
        {"f", 1, "Zg"},
        {"fo", 2, "Zm8"},
        {"foo", 3, "Zm9v"},
        {"foob", 4, "Zm9vYg"},
        {"fooba", 5, "Zm9vYmE"},
        {"foobar", 6, "Zm9vYmFy"},
        {"\xfb\xff", 2, "-_8"},
        {"\xff\xff\xbe", 3, "__--"},
        {"\x00\x00", 2, "AAA"},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char *e = acme_b64url_encode((const uint8_t *)v[i].raw, v[i].raw_len);
        CHECK_STR(e, v[i].enc);
        CHECK_EQ_INT(acme_b64url_encoded_len(v[i].raw_len), strlen(v[i].enc));
        size_t n = 99;
        uint8_t *d = acme_b64url_decode(v[i].enc, strlen(v[i].enc), &n);
        CHECK(d != NULL);
        CHECK_EQ_INT(n, v[i].raw_len);
        CHECK(d != NULL && memcmp(d, v[i].raw, n) == 0 && d[n] == '\0');
        free(d);
        free(e);
    }
}

TEST(test_b64url_roundtrip_all_lengths)
{
    uint8_t buf[300], back[300];
    char enc[401];
    for (size_t i = 0; i < sizeof(buf); i++) {
        buf[i] = (uint8_t)(i * 151 + 7);
    }
    for (size_t len = 0; len <= sizeof(buf); len++) {
        CHECK_EQ_INT(acme_b64url_encode_to(buf, len, enc, sizeof(enc)), 0);
        CHECK_EQ_INT(strlen(enc), acme_b64url_encoded_len(len));
        size_t n = 0;
        CHECK_EQ_INT(acme_b64url_decode_to(enc, strlen(enc), back, sizeof(back), &n), 0);
        CHECK_EQ_INT(n, len);
        CHECK(memcmp(buf, back, len) == 0);
    }
}

TEST(test_b64url_rejects)
{
    static const char *const bad[] = {
        "Zg==",      /* padding */
        "Zg=",       /* padding */
        "Zm9v=",     /* padding after a full quantum */
        "Z",         /* 4n+1 characters */
        "Zm9vY",     /* 4n+1 characters */
        "Zh",        /* non-zero trailing bits ("f" is Zg) */
        "Zm9",       /* non-zero trailing bits ("fo" is Zm8) */
        "Zm+v",      /* standard-alphabet '+' */
        "Zm/v",      /* standard-alphabet '/' */
        "Zm9v YmFy", /* whitespace */
        "Zm9v\nYmFy", "Zm9v.",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = 0;
        uint8_t *d = acme_b64url_decode(bad[i], strlen(bad[i]), &n);
        CHECK(d == NULL);
        if (d != NULL) {
            fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
        }
        free(d);
    }
    /* An embedded NUL is outside the alphabet. */
    size_t n = 0;
    CHECK(acme_b64url_decode("Zm\0v", 4, &n) == NULL);
    /* Capacities are honoured both ways. */
    uint8_t out[3];
    CHECK_EQ_INT(acme_b64url_decode_to("Zm9vYg", 6, out, sizeof(out), &n), -1);
    CHECK_EQ_INT(acme_b64url_decode_to("Zm9v", 4, out, sizeof(out), &n), 0);
    char enc[4];
    CHECK_EQ_INT(acme_b64url_encode_to((const uint8_t *)"foo", 3, enc, sizeof(enc)), -1);
    CHECK_EQ_INT(acme_b64url_encode_to((const uint8_t *)"fo", 2, enc, sizeof(enc)), 0);
    CHECK_STR(enc, "Zm8");
}

/* ---- JWK thumbprints ---- */

TEST(test_thumbprint_rfc7638)
{
    /* RFC 7638 §3.1, as printed: extra members, RFC member order. */
    const char *jwk = "{\"kty\":\"RSA\",\"n\":\"" RFC7638_N "\",\"e\":\"AQAB\",\"alg\":\"RS256\","
                      "\"kid\":\"2011-04-29\"}";
    char tp[ACME_THUMBPRINT_LEN + 1] = "";
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_jwk_thumbprint(jwk, strlen(jwk), tp, &err), 0);
    CHECK_STR(tp, RFC7638_THUMBPRINT);
    /* KAT for an EC key (RFC 7515 A.3 public key). */
    const char *ec = "{\"y\":\"" A3_Y "\",\"x\":\"" A3_X "\",\"kty\":\"EC\",\"crv\":\"P-256\"}";
    CHECK_EQ_INT(acme_jwk_thumbprint(ec, strlen(ec), tp, &err), 0);
    CHECK_STR(tp, A3_THUMBPRINT);
    CHECK_EQ_INT(ERR_peek_error(), 0);
}

TEST(test_thumbprint_rejects)
{
    static const char *const bad[] = {
        "{\"kty\":\"RSA\",\"n\":\"AA" RFC7638_N "\",\"e\":\"AQAB\"}",  /* leading zero (and 4n+1) */
        "{\"kty\":\"RSA\",\"n\":\"AAA" RFC7638_N "\",\"e\":\"AQAB\"}", /* leading zero byte */
        "{\"kty\":\"RSA\",\"n\":\"" RFC7638_N "\",\"e\":\"AAEAAQ\"}",  /* e with leading zero */
        "{\"kty\":\"RSA\",\"n\":\"" RFC7638_N "\",\"e\":\"AQAA\"}",    /* even e */
        "{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}",             /* tiny modulus */
        "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"" A3_Y "\",\"y\":\"" A3_Y "\"}", /* off curve */
        "{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"" A3_X "\",\"y\":\"" A3_Y "\"}", /* short x, y */
        "{\"kty\":\"EC\",\"crv\":\"P-521\",\"x\":\"" A3_X "\",\"y\":\"" A3_Y "\"}",
        "{\"kty\":\"oct\",\"k\":\"AQAB\"}",
        "{\"kty\":\"EC\",\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"" A3_X "\",\"y\":\"" A3_Y "\"}",
        "[]",
        "{",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char tp[ACME_THUMBPRINT_LEN + 1];
        struct dm_err err = {0};
        CHECK_EQ_INT(acme_jwk_thumbprint(bad[i], strlen(bad[i]), tp, &err), -1);
        CHECK(err.msg[0] != '\0');
        CHECK_EQ_INT(ERR_peek_error(), 0);
    }
}

/* ---- RFC 7515 verification vectors ---- */

TEST(test_rfc7515_a3_es256_verifies)
{
    char *jws = flattened("eyJhbGciOiJFUzI1NiJ9", RFC7515_PAYLOAD64, A3_SIG64);
    struct acme_jws_verifier v = {.jwk = "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"" A3_X
                                         "\",\"y\":\"" A3_Y "\"}"};
    char *hdr = NULL, *payload = NULL;
    size_t payload_len = 0;
    struct dm_err err = {0};
    CHECK_EQ_INT(verify(jws, &v, &hdr, &payload, &payload_len, &err), 0);
    CHECK_STR(hdr, "{\"alg\":\"ES256\"}");
    CHECK_STR(payload, RFC7515_PAYLOAD);
    CHECK_EQ_INT(payload_len, strlen(RFC7515_PAYLOAD));
    free(hdr);
    free(payload);
    free(jws);

    /* One flipped bit in the signature: the last character carries 2 data
     * bits and 4 zero bits, so Q (010000) -> g (100000) stays canonical,
     * while Q -> R sets a trailing bit and is not base64url we accept. */
    char sig[] = A3_SIG64;
    sig[strlen(sig) - 1] = 'R';
    jws = flattened("eyJhbGciOiJFUzI1NiJ9", RFC7515_PAYLOAD64, sig);
    CHECK_EQ_INT(verify(jws, &v, NULL, NULL, NULL, &err), -1);
    CHECK(strstr(err.msg, "base64url") != NULL);
    free(jws);
    sig[strlen(sig) - 1] = 'g';
    jws = flattened("eyJhbGciOiJFUzI1NiJ9", RFC7515_PAYLOAD64, sig);
    CHECK_EQ_INT(verify(jws, &v, NULL, NULL, NULL, &err), -1);
    CHECK(strstr(err.msg, "signature mismatch") != NULL);
    free(jws);

    /* Without a key (the header has no "jwk") there is nothing to verify with. */
    jws = flattened("eyJhbGciOiJFUzI1NiJ9", RFC7515_PAYLOAD64, A3_SIG64);
    CHECK_EQ_INT(verify(jws, NULL, NULL, NULL, NULL, &err), -1);
    /* An RSA key does not fit alg ES256. */
    struct acme_jws_verifier rsa = {.jwk = "{\"kty\":\"RSA\",\"n\":\"" A2_N "\",\"e\":\"AQAB\"}"};
    CHECK_EQ_INT(verify(jws, &rsa, NULL, NULL, NULL, &err), -1);
    CHECK(strstr(err.msg, "does not fit") != NULL);
    free(jws);
    CHECK_EQ_INT(ERR_peek_error(), 0);
}

TEST(test_rfc7515_a2_rs256_verifies)
{
    char *jws = flattened("eyJhbGciOiJSUzI1NiJ9", RFC7515_PAYLOAD64, A2_SIG64);
    struct acme_jws_verifier v = {.jwk = "{\"kty\":\"RSA\",\"n\":\"" A2_N "\",\"e\":\"AQAB\"}"};
    char *payload = NULL;
    struct dm_err err = {0};
    CHECK_EQ_INT(verify(jws, &v, NULL, &payload, NULL, &err), 0);
    CHECK_STR(payload, RFC7515_PAYLOAD);
    free(payload);
    free(jws);
    /* Same signature over another payload. */
    jws = flattened("eyJhbGciOiJSUzI1NiJ9", "e30", A2_SIG64);
    CHECK_EQ_INT(verify(jws, &v, NULL, NULL, NULL, &err), -1);
    free(jws);
    CHECK_EQ_INT(ERR_peek_error(), 0);
}

/* ---- signing ---- */

/* check_header parses the protected header of jws and checks alg, nonce, url
 * and exactly one of jwk (== key's JWK) and kid. */
static void check_header(const char *jws, const struct acme_key *key, const char *kid)
{
    char *text = member(jws, "protected", NULL);
    json_t *h = text != NULL ? json_loads(text, JSON_REJECT_DUPLICATES, NULL) : NULL;
    CHECK(json_is_object(h));
    CHECK_STR(json_string_value(json_object_get(h, "alg")), acme_key_alg_name(acme_key_alg(key)));
    CHECK_STR(json_string_value(json_object_get(h, "nonce")), NONCE);
    CHECK_STR(json_string_value(json_object_get(h, "url")), URL_NEW_ACCT);
    json_t *jwk = json_object_get(h, "jwk");
    if (kid == NULL) {
        json_t *want = json_loads(acme_key_jwk(key), 0, NULL);
        CHECK(json_object_get(h, "kid") == NULL);
        CHECK(jwk != NULL && json_equal(jwk, want));
        json_decref(want);
        CHECK_EQ_INT(json_object_size(h), 4);
    } else {
        CHECK(jwk == NULL);
        CHECK_STR(json_string_value(json_object_get(h, "kid")), kid);
        CHECK_EQ_INT(json_object_size(h), 4);
    }
    /* Canonical serialization: compact, members sorted. */
    CHECK(text != NULL && strncmp(text, "{\"alg\":", 7) == 0 && strchr(text, ' ') == NULL);
    json_decref(h);
    free(text);
}

static void roundtrip(enum acme_key_alg alg, unsigned bits, size_t want_sig_len)
{
    struct acme_key *k = gen(alg, bits), *other = gen(alg, bits);
    if (k == NULL || other == NULL) {
        acme_key_free(k);
        acme_key_free(other);
        return;
    }
    const char *payload = "{\"termsOfServiceAgreed\":true,\"contact\":[\"mailto:a@example.com\"]}";
    struct dm_err err = {0};
    char *jws = NULL, *got = NULL;
    size_t got_len = 0, sig_len = 0;

    /* newAccount form: "jwk", verified with the embedded key. */
    CHECK_EQ_INT(acme_jws_sign(k, URL_NEW_ACCT, NONCE, NULL, payload, &jws, &err), 0);
    check_header(jws, k, NULL);
    free(member(jws, "signature", &sig_len));
    CHECK_EQ_INT(sig_len, want_sig_len);
    CHECK_EQ_INT(verify(jws, NULL, NULL, &got, &got_len, &err), 0);
    CHECK_STR(got, payload);
    CHECK_EQ_INT(got_len, strlen(payload));
    free(got);
    got = NULL;
    struct acme_jws_verifier vk = {.key = k}, vo = {.key = other};
    CHECK_EQ_INT(verify(jws, &vk, NULL, NULL, NULL, &err), 0);
    CHECK_EQ_INT(verify(jws, &vo, NULL, NULL, NULL, &err), -1); /* header jwk != other */
    struct acme_jws_verifier vj = {.jwk = acme_key_jwk(k)};
    CHECK_EQ_INT(verify(jws, &vj, NULL, NULL, NULL, &err), 0);
    free(jws);

    /* Account form: "kid". */
    const char *kid = "https://ca.test/acme/acct/1";
    CHECK_EQ_INT(acme_jws_sign(k, URL_NEW_ACCT, NONCE, kid, payload, &jws, &err), 0);
    check_header(jws, k, kid);
    CHECK_EQ_INT(verify(jws, &vk, NULL, &got, NULL, &err), 0);
    CHECK_STR(got, payload);
    free(got);
    CHECK_EQ_INT(verify(jws, &vo, NULL, NULL, NULL, &err), -1);
    CHECK(strstr(err.msg, "signature mismatch") != NULL);
    CHECK_EQ_INT(verify(jws, NULL, NULL, NULL, NULL, &err), -1); /* kid only, no key */

    /* Tampered payload. */
    json_t *o = json_loads(jws, 0, NULL);
    json_object_set_new(o, "payload", json_string("e30"));
    char *tampered = json_dumps(o, JSON_COMPACT);
    CHECK_EQ_INT(verify(tampered, &vk, NULL, NULL, NULL, &err), -1);
    free(tampered);
    json_decref(o);
    free(jws);

    acme_key_free(other);
    acme_key_free(k);
    CHECK_EQ_INT(ERR_peek_error(), 0);
}

TEST(test_sign_verify_es256)
{
    roundtrip(ACME_KEY_ES256, 0, 64);
}

TEST(test_sign_verify_es384)
{
    roundtrip(ACME_KEY_ES384, 0, 96);
}

TEST(test_sign_verify_rs256)
{
    roundtrip(ACME_KEY_RS256, 2048, 256);
}

TEST(test_es256_signature_is_raw_64_bytes)
{
    /* DER would be 70-72 bytes and vary; R||S is always exactly 64, even when
     * R or S has leading zero bytes (about 1 in 128 signatures). */
    struct acme_key *k = gen(ACME_KEY_ES256, 0);
    struct dm_err err = {0};
    for (int i = 0; k != NULL && i < 300; i++) {
        char *jws = NULL;
        size_t n = 0;
        CHECK_EQ_INT(acme_jws_sign(k, URL_NEW_ACCT, NONCE, "k", "{}", &jws, &err), 0);
        free(member(jws, "signature", &n));
        CHECK_EQ_INT(n, 64);
        struct acme_jws_verifier v = {.key = k};
        CHECK_EQ_INT(verify(jws, &v, NULL, NULL, NULL, &err), 0);
        free(jws);
    }
    acme_key_free(k);
}

TEST(test_post_as_get)
{
    struct acme_key *k = a3_key();
    char *jws = NULL, *got = NULL;
    size_t got_len = 99;
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_jws_sign(k, URL_NEW_ACCT, NONCE, "https://ca.test/acct/1", "", &jws, &err),
                 0);
    json_t *o = json_loads(jws, 0, NULL);
    CHECK_STR(json_string_value(json_object_get(o, "payload")), ""); /* RFC 8555 §6.3 */
    CHECK_EQ_INT(json_object_size(o), 3);
    json_decref(o);
    struct acme_jws_verifier v = {.key = k};
    CHECK_EQ_INT(verify(jws, &v, NULL, &got, &got_len, &err), 0);
    CHECK_EQ_INT(got_len, 0);
    CHECK_STR(got, "");
    free(got);
    free(jws);
    acme_key_free(k);
}

TEST(test_sign_rejects)
{
    struct acme_key *k = a3_key();
    char *jws = (char *)"sentinel";
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_jws_sign(k, URL_NEW_ACCT, "abc=", NULL, "{}", &jws, &err), -1);
    CHECK(jws == NULL);
    CHECK_EQ_INT(acme_jws_sign(k, URL_NEW_ACCT, "a b", NULL, "{}", &jws, &err), -1);
    CHECK_EQ_INT(acme_jws_sign(k, URL_NEW_ACCT, "", NULL, "{}", &jws, &err), -1);
    CHECK_EQ_INT(acme_jws_sign(k, "", NONCE, NULL, "{}", &jws, &err), -1);
    CHECK_EQ_INT(acme_jws_sign(k, URL_NEW_ACCT, NONCE, "", "{}", &jws, &err), -1);
    CHECK_EQ_INT(acme_jws_sign(k, URL_NEW_ACCT, NONCE, NULL, NULL, &jws, &err), -1);
    CHECK_EQ_INT(acme_jws_sign(k, "https://ca.test/\xff", NONCE, NULL, "{}", &jws, &err), -1);
    CHECK(strstr(err.msg, "UTF-8") != NULL);
    size_t big_len = ACME_JWS_MAX_BYTES + 1;
    char *big = malloc(big_len + 1);
    memset(big, 'a', big_len);
    big[big_len] = '\0';
    CHECK_EQ_INT(acme_jws_sign(k, URL_NEW_ACCT, NONCE, NULL, big, &jws, &err), -1);
    CHECK_EQ_INT(err.code, DM_E_LIMIT);
    free(big);
    acme_key_free(k);
    CHECK_EQ_INT(ERR_peek_error(), 0);
}

/* ---- EAB and key rollover ---- */

TEST(test_eab_hs256_kat)
{
    struct acme_key *k = a3_key();
    if (k == NULL) {
        return;
    }
    CHECK_STR(acme_key_jwk(k), A3_JWK);
    char *eab = NULL;
    struct dm_err err = {0};
    /* HMAC key: bytes 0..31. */
    const char *key64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    CHECK_EQ_INT(acme_jws_eab(k, "kid-1", key64, URL_NEW_ACCT, &eab, &err), 0);
    /* KAT: Python hmac over the same canonical header and JWK. */
    CHECK_STR(eab, "{\"protected\":\"eyJhbGciOiJIUzI1NiIsImtpZCI6ImtpZC0xIiwidXJsIjoiaHR0cHM6Ly9jY"
                   "S50ZXN0L2FjbWUvbmV3LWFjY3QifQ\",\"payload\":\"eyJjcnYiOiJQLTI1NiIsImt0eSI6Ik"
                   "VDIiwieCI6ImY4M09KM0QyeEYxQmc4dnViOXRMZTFnSE16Vjc2ZThUdXM5dVBIdlJWRVUiLCJ5Ijo"
                   "ieF9GRXpSdTltMzZITE5fdHVlNjU5TE5wWFc2cEN5U3Rpa1lqS0lXSTVhMCJ9\",\"signature\""
                   ":\"hEKZgWOwfKQoarkWQpDK4OGbeskcxLcH1FsU2fi_XzY\"}");

    /* The same MAC computed independently with HMAC(). */
    uint8_t hk[32];
    for (int i = 0; i < 32; i++) {
        hk[i] = (uint8_t)i;
    }
    json_t *o = json_loads(eab, 0, NULL);
    char *input = NULL;
    CHECK(asprintf(&input, "%s.%s", json_string_value(json_object_get(o, "protected")),
                   json_string_value(json_object_get(o, "payload"))) > 0);
    uint8_t mac[32];
    unsigned mac_len = 0;
    HMAC(EVP_sha256(), hk, sizeof(hk), (const uint8_t *)input, strlen(input), mac, &mac_len);
    char *mac64 = acme_b64url_encode(mac, mac_len);
    CHECK_STR(json_string_value(json_object_get(o, "signature")), mac64);
    free(mac64);
    free(input);
    json_decref(o);

    /* Header: alg, kid, url, and no nonce (RFC 8555 §7.3.4). */
    char *hdr = NULL, *payload = NULL;
    struct acme_jws_verifier v = {.hmac_key = hk, .hmac_key_len = sizeof(hk)};
    CHECK_EQ_INT(verify(eab, &v, &hdr, &payload, NULL, &err), 0);
    CHECK_STR(hdr, "{\"alg\":\"HS256\",\"kid\":\"kid-1\",\"url\":\"" URL_NEW_ACCT "\"}");
    CHECK_STR(payload, acme_key_jwk(k));
    free(hdr);
    free(payload);
    hk[0] ^= 1;
    CHECK_EQ_INT(verify(eab, &v, NULL, NULL, NULL, &err), -1);
    CHECK_EQ_INT(verify(eab, NULL, NULL, NULL, NULL, &err), -1); /* HS256 needs a key */
    free(eab);

    /* Padded keys are tolerated; invalid ones are not. */
    CHECK_EQ_INT(acme_jws_eab(k, "kid-1", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                              URL_NEW_ACCT, &eab, &err),
                 0);
    free(eab);
    CHECK_EQ_INT(acme_jws_eab(k, "kid-1", "not base64!", URL_NEW_ACCT, &eab, &err), -1);
    CHECK_EQ_INT(err.code, DM_E_CONFIG);
    CHECK_EQ_INT(acme_jws_eab(k, "kid-1", "", URL_NEW_ACCT, &eab, &err), -1);
    CHECK_EQ_INT(acme_jws_eab(k, "", key64, URL_NEW_ACCT, &eab, &err), -1);
    acme_key_free(k);
    CHECK_EQ_INT(ERR_peek_error(), 0);
}

TEST(test_key_change)
{
    struct acme_key *old_key = gen(ACME_KEY_RS256, 2048), *new_key = gen(ACME_KEY_ES256, 0);
    if (old_key == NULL || new_key == NULL) {
        acme_key_free(old_key);
        acme_key_free(new_key);
        return;
    }
    const char *acct = "https://ca.test/acme/acct/7", *kc = "https://ca.test/acme/key-change";
    char *inner = NULL, *hdr = NULL, *payload = NULL;
    struct dm_err err = {0};
    CHECK_EQ_INT(acme_jws_key_change(new_key, acct, old_key, kc, &inner, &err), 0);
    /* Signed by the new key, found through its own "jwk". */
    CHECK_EQ_INT(verify(inner, NULL, &hdr, &payload, NULL, &err), 0);
    struct acme_jws_verifier vold = {.key = old_key};
    CHECK_EQ_INT(verify(inner, &vold, NULL, NULL, NULL, &err), -1);

    json_t *h = json_loads(hdr, 0, NULL), *p = json_loads(payload, 0, NULL);
    json_t *new_jwk = json_loads(acme_key_jwk(new_key), 0, NULL);
    json_t *old_jwk = json_loads(acme_key_jwk(old_key), 0, NULL);
    CHECK_STR(json_string_value(json_object_get(h, "alg")), "ES256");
    CHECK_STR(json_string_value(json_object_get(h, "url")), kc);
    CHECK(json_equal(json_object_get(h, "jwk"), new_jwk));
    CHECK(json_object_get(h, "nonce") == NULL); /* RFC 8555 §7.3.5 */
    CHECK(json_object_get(h, "kid") == NULL);
    CHECK_EQ_INT(json_object_size(h), 3);
    CHECK_STR(json_string_value(json_object_get(p, "account")), acct);
    CHECK(json_equal(json_object_get(p, "oldKey"), old_jwk));
    CHECK_EQ_INT(json_object_size(p), 2);
    json_decref(old_jwk);
    json_decref(new_jwk);
    json_decref(p);
    json_decref(h);
    free(payload);
    free(hdr);
    free(inner);

    CHECK_EQ_INT(acme_jws_key_change(new_key, acct, new_key, kc, &inner, &err), -1);
    acme_key_free(new_key);
    acme_key_free(old_key);
    CHECK_EQ_INT(ERR_peek_error(), 0);
}

/* ---- keys and PEM ---- */

static void pem_roundtrip(enum acme_key_alg alg, unsigned bits)
{
    struct acme_key *k = gen(alg, bits);
    if (k == NULL) {
        return;
    }
    struct dm_err err = {0};
    char *pem = acme_key_encode_pem(k, &err);
    CHECK(pem != NULL && strncmp(pem, "-----BEGIN PRIVATE KEY-----\n", 28) == 0);
    CHECK(pem != NULL && strstr(pem, "-----END PRIVATE KEY-----\n") != NULL);
    struct acme_key *back = pem != NULL ? acme_key_parse_pem(pem, strlen(pem), &err) : NULL;
    CHECK(back != NULL);
    if (back != NULL) {
        CHECK_STR(acme_key_thumbprint(back), acme_key_thumbprint(k));
        CHECK_STR(acme_key_jwk(back), acme_key_jwk(k));
        CHECK_EQ_INT(acme_key_alg(back), alg);
        /* The reloaded key signs what the original verifies. */
        char *jws = NULL;
        CHECK_EQ_INT(acme_jws_sign(back, URL_NEW_ACCT, NONCE, "kid", "{}", &jws, &err), 0);
        struct acme_jws_verifier v = {.key = k};
        CHECK_EQ_INT(verify(jws, &v, NULL, NULL, NULL, &err), 0);
        free(jws);
    }
    CHECK_EQ_INT(strlen(acme_key_thumbprint(k)), ACME_THUMBPRINT_LEN);
    acme_key_free(back);
    acme_key_pem_free(pem);
    acme_key_free(k);
    CHECK_EQ_INT(ERR_peek_error(), 0);
}

TEST(test_pem_roundtrip)
{
    pem_roundtrip(ACME_KEY_ES256, 0);
    pem_roundtrip(ACME_KEY_ES384, 0);
    pem_roundtrip(ACME_KEY_RS256, 2048);
    pem_roundtrip(ACME_KEY_RS256, 3072);
}

TEST(test_rsa_4096)
{
    roundtrip(ACME_KEY_RS256, 4096, 512);
}

/* pem_of writes pkey as PEM (PKCS#8, encrypted when pass is not NULL). */
static char *pem_of(EVP_PKEY *pkey, const char *pass)
{
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PKCS8PrivateKey(bio, pkey, pass != NULL ? EVP_aes_128_cbc() : NULL, (char *)pass,
                                  pass != NULL ? (int)strlen(pass) : 0, NULL, NULL);
    const uint8_t *p = NULL;
    size_t n = 0;
    BIO_mem_contents(bio, &p, &n);
    char *s = strndup((const char *)p, n);
    BIO_free(bio);
    return s;
}

static void parse_fails(const char *pem, const char *want)
{
    struct dm_err err = {0};
    struct acme_key *k = acme_key_parse_pem(pem, strlen(pem), &err);
    CHECK(k == NULL);
    CHECK(strstr(err.msg, want) != NULL);
    if (strstr(err.msg, want) == NULL) {
        fprintf(stderr, "  got: %s\n", err.msg);
    }
    acme_key_free(k);
    CHECK_EQ_INT(ERR_peek_error(), 0);
}

TEST(test_pem_rejects)
{
    parse_fails("", "bytes");
    parse_fails("hello", "no valid private key");
    parse_fails("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "no valid private key");

    EVP_PKEY *p521 = EVP_PKEY_new();
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_secp521r1);
    EC_KEY_generate_key(ec);
    EVP_PKEY_assign_EC_KEY(p521, ec);
    char *pem = pem_of(p521, NULL);
    parse_fails(pem, "not supported");
    free(pem);

    EVP_PKEY *r1024 = EVP_PKEY_new();
    RSA *rsa = RSA_new();
    BIGNUM *e = BN_new();
    BN_set_word(e, RSA_F4);
    RSA_generate_key_ex(rsa, 1024, e, NULL);
    EVP_PKEY_assign_RSA(r1024, rsa);
    pem = pem_of(r1024, NULL);
    parse_fails(pem, "RSA key of 1024 bits is not supported");
    free(pem);

    /* Encrypted PKCS#8: refused, with a clear message. */
    EVP_PKEY *p256 = EVP_PKEY_new();
    ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EC_KEY_generate_key(ec);
    EVP_PKEY_assign_EC_KEY(p256, ec);
    pem = pem_of(p256, "secret");
    CHECK(strstr(pem, "ENCRYPTED PRIVATE KEY") != NULL);
    parse_fails(pem, "encrypted");
    free(pem);

    struct dm_err err = {0};
    CHECK(acme_key_new(ACME_KEY_RS256, 1024, &err) == NULL);
    CHECK_EQ_INT(err.code, DM_E_CONFIG);

    BN_free(e);
    EVP_PKEY_free(p256);
    EVP_PKEY_free(r1024);
    EVP_PKEY_free(p521);
}

/* ---- key authorizations ---- */

TEST(test_key_authorization)
{
    struct acme_key *k = a3_key();
    if (k == NULL) {
        return;
    }
    CHECK_STR(acme_key_thumbprint(k), A3_THUMBPRINT);
    struct dm_err err = {0};
    char *ka = acme_key_authorization(k, "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA", &err);
    CHECK_STR(ka, "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA." A3_THUMBPRINT);
    char txt[ACME_DNS01_TXT_LEN + 1];
    acme_key_authorization_dns01(ka, txt);
    CHECK_STR(txt, "ZaJgFtIV4WA0t2MzN7kbSk0sfRd2GZjaxRqaSTAK6lI"); /* KAT: Python hashlib */
    free(ka);

    static const char *const bad[] = {"", "abc/def", "a.b", "tok en", "tok=", "\xc3\xa9"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(acme_key_authorization(k, bad[i], &err) == NULL);
    }
    CHECK(acme_key_authorization(k, NULL, &err) == NULL);
    acme_key_free(k);
}

TEST(test_dns01_and_tlsalpn01_values)
{
    /* RFC 8555 §8.4 form: token from §8.3, thumbprint from RFC 7638 §3.1. */
    const char *ka = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA." RFC7638_THUMBPRINT;
    char txt[ACME_DNS01_TXT_LEN + 1];
    acme_key_authorization_dns01(ka, txt);
    CHECK_STR(txt, "ZTRx1Ckl1-tM05o5zaizTTA0yUy5AGereMgSNWC6Ll8"); /* KAT: Python hashlib */
    CHECK_EQ_INT(strlen(txt), ACME_DNS01_TXT_LEN);

    /* RFC 8737 §3: the acmeIdentifier holds the raw SHA-256. */
    static const uint8_t want[ACME_TLSALPN01_DIGEST_LEN] = {
        0x65, 0x34, 0x71, 0xd4, 0x29, 0x25, 0xd7, 0xeb, 0x4c, 0xd3, 0x9a,
        0x39, 0xcd, 0xa8, 0xb3, 0x4d, 0x30, 0x34, 0xc9, 0x4c, 0xb9, 0x00,
        0x67, 0xab, 0x78, 0xc8, 0x12, 0x35, 0x60, 0xba, 0x2e, 0x5f,
    };
    uint8_t got[ACME_TLSALPN01_DIGEST_LEN];
    acme_key_authorization_tlsalpn01(ka, got);
    CHECK(memcmp(got, want, sizeof(want)) == 0);
}

/* ---- verifier strictness ---- */

TEST(test_verify_rejects)
{
    struct acme_key *k = a3_key();
    if (k == NULL) {
        return;
    }
    struct dm_err err = {0};
    char *good = NULL;
    CHECK_EQ_INT(acme_jws_sign(k, URL_NEW_ACCT, NONCE, NULL, "{}", &good, &err), 0);
    CHECK_EQ_INT(verify(good, NULL, NULL, NULL, NULL, &err), 0);
    json_t *o = json_loads(good, 0, NULL);
    const char *p64 = json_string_value(json_object_get(o, "protected"));
    const char *pl64 = json_string_value(json_object_get(o, "payload"));
    const char *s64 = json_string_value(json_object_get(o, "signature"));

    /* Shape of the flattened serialization. */
    char *s = NULL;
    CHECK(asprintf(&s,
                   "{\"protected\":\"%s\",\"payload\":\"%s\",\"signature\":\"%s\","
                   "\"header\":{}}",
                   p64, pl64, s64) > 0);
    CHECK_EQ_INT(verify(s, NULL, NULL, NULL, NULL, &err), -1); /* unprotected header */
    free(s);
    CHECK(asprintf(&s, "{\"protected\":\"%s\",\"payload\":\"%s\",\"signature\":\"%s=\"}", p64, pl64,
                   s64) > 0);
    CHECK_EQ_INT(verify(s, NULL, NULL, NULL, NULL, &err), -1); /* padded */
    free(s);
    CHECK(asprintf(&s, "{\"protected\":\"%s\",\"payload\":\"%s\",\"payload\":\"%s\"}", p64, pl64,
                   s64) > 0);
    CHECK_EQ_INT(verify(s, NULL, NULL, NULL, NULL, &err), -1); /* duplicate member */
    free(s);
    CHECK_EQ_INT(verify("[]", NULL, NULL, NULL, NULL, &err), -1);
    CHECK_EQ_INT(verify("", NULL, NULL, NULL, NULL, &err), -1);
    CHECK_EQ_INT(verify("{\"protected\":1,\"payload\":\"\",\"signature\":\"\"}", NULL, NULL, NULL,
                        NULL, &err),
                 -1);

    /* Header rules. Each JWS carries a valid signature (control first), so
     * only the rule can make it fail. */
    char *ctl = a3_sign("{\"alg\":\"ES256\",\"jwk\":" A3_JWK ",\"url\":\"u\"}", "e30");
    CHECK_EQ_INT(verify(ctl, NULL, NULL, NULL, NULL, &err), 0);
    free(ctl);
    static const struct {
        const char *hdr, *want;
    } rules[] = {
        {"{\"alg\":\"none\",\"jwk\":" A3_JWK "}", "not supported"},
        {"{\"alg\":\"ES512\",\"jwk\":" A3_JWK "}", "not supported"},
        {"{\"alg\":\"ES384\",\"jwk\":" A3_JWK "}", "does not fit"},
        {"{\"alg\":\"RS256\",\"jwk\":" A3_JWK "}", "does not fit"},
        {"{\"alg\":\"ES256\",\"jwk\":" A3_JWK ",\"kid\":\"x\"}", "mutually exclusive"},
        {"{\"alg\":\"ES256\",\"jwk\":" A3_JWK ",\"crit\":[\"b64\"]}", "crit"},
        {"{\"alg\":\"ES256\",\"jwk\":" A3_JWK ",\"nonce\":1}", "wrong type"},
        {"{\"alg\":\"ES256\",\"jwk\":\"x\"}", "wrong type"},
        {"{\"alg\":\"ES256\",\"alg\":\"ES256\",\"jwk\":" A3_JWK "}", "duplicate"},
        {"{\"alg\":\"ES256\",\"kid\":\"x\"}", "no key"},
        {"{\"alg\":\"HS256\",\"jwk\":" A3_JWK "}", "HMAC key"},
        {"{\"jwk\":" A3_JWK "}", "\"alg\""},
        {"[\"ES256\"]", "\"alg\""},
        {"{\"alg\":\"ES256\",\"jwk\":{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"" A3_X "\"}}",
         "JWK"},
    };
    for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
        char *jws = a3_sign(rules[i].hdr, "e30");
        CHECK_EQ_INT(verify(jws, NULL, NULL, NULL, NULL, &err), -1);
        CHECK(strstr(err.msg, rules[i].want) != NULL);
        if (strstr(err.msg, rules[i].want) == NULL) {
            fprintf(stderr, "  rule %zu: got: %s\n", i, err.msg);
        }
        free(jws);
    }

    /* A JWS too big to read. */
    size_t big_len = ACME_JWS_MAX_BYTES + 1;
    char *big = malloc(big_len);
    memset(big, ' ', big_len);
    CHECK_EQ_INT(acme_jws_verify(big, big_len, NULL, NULL, NULL, NULL, &err), -1);
    CHECK_EQ_INT(err.code, DM_E_LIMIT);
    free(big);

    /* An HMAC key cannot verify an ES256 JWS. */
    uint8_t hk[32] = {0};
    struct acme_jws_verifier v = {.hmac_key = hk, .hmac_key_len = sizeof(hk)};
    CHECK_EQ_INT(verify(good, &v, NULL, NULL, NULL, &err), -1);

    json_decref(o);
    free(good);
    acme_key_free(k);
    CHECK_EQ_INT(ERR_peek_error(), 0);
}

HARNESS_MAIN(T(test_b64url_vectors), T(test_b64url_roundtrip_all_lengths), T(test_b64url_rejects),
             T(test_thumbprint_rfc7638), T(test_thumbprint_rejects),
             T(test_rfc7515_a3_es256_verifies), T(test_rfc7515_a2_rs256_verifies),
             T(test_sign_verify_es256), T(test_sign_verify_es384), T(test_sign_verify_rs256),
             T(test_es256_signature_is_raw_64_bytes), T(test_post_as_get), T(test_sign_rejects),
             T(test_eab_hs256_kat), T(test_key_change), T(test_pem_roundtrip), T(test_rsa_4096),
             T(test_pem_rejects), T(test_key_authorization), T(test_dns01_and_tlsalpn01_values),
             T(test_verify_rejects))
