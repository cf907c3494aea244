/* ACME's cryptographic core (see jws.h): keys, JWK + RFC 7638 thumbprints,
 * flattened JWS signing (RFC 7515 §7.2.2) for RFC 8555 requests, EAB, key
 * rollover, key authorizations, base64url, and a strict verifier. Invariant:
 * private keys stay in the EVP_PKEY of struct acme_key and are used only here;
 * secret temporaries (DER keys, decoded EAB keys) are wiped with
 * OPENSSL_cleanse before being freed. Design note: docs/acme-jws.md. */
#include "acme/jws.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/base64.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/obj.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include "proxy/core/err.h"

/* RSA account keys: below 2048 bits CAs refuse them (and they are weak),
 * above 4096 Let's Encrypt refuses them and every signature gets slow. */
#define JWS_RSA_MIN_BITS 2048
#define JWS_RSA_MAX_BITS 4096
/* Largest raw signature: RSA 4096 (512 bytes); ES384 is 96. */
#define JWS_SIG_MAX (JWS_RSA_MAX_BITS / 8)
/* Largest EC field element (P-384). */
#define JWS_EC_FIELD_MAX 48
/* Largest RSA public exponent we read from a JWK, in bytes. BoringSSL
 * verifies with e of at most 33 bits anyway. */
#define JWS_RSA_E_MAX 8
/* Longest nonce, challenge token or EAB key we accept, in characters. They
 * are tens of characters (a token carries 128 bits, RFC 8555 §8.1); anything
 * longer is a broken CA or config, not a value to copy around. */
#define JWS_SHORT_MAX 1024
/* Canonical JSON: RFC 7638 §3.3 (no whitespace, members sorted). */
#define JWS_JSON_CANON (JSON_COMPACT | JSON_SORT_KEYS)

static const char PEM_BEGIN[] = "-----BEGIN PRIVATE KEY-----\n";
static const char PEM_END[] = "-----END PRIVATE KEY-----\n";

struct acme_key {
    EVP_PKEY *pkey; /* owned: the private key */
    enum acme_key_alg alg;
    char *jwk;                                /* owned: canonical public JWK (JSON text) */
    char thumbprint[ACME_THUMBPRINT_LEN + 1]; /* RFC 7638, base64url */
};

/* ---- base64url ---- */

/* ct_range returns all ones if lo <= c <= hi, else 0, without branching on c
 * (decoded bytes may be secret: EAB keys). Needs c, lo, hi < 2^31. */
static uint32_t ct_range(uint32_t c, uint32_t lo, uint32_t hi)
{
    return (((c - lo) | (hi - c)) >> 31) - 1;
}

static char b64url_char(uint32_t v)
{
    return (char)((ct_range(v, 0, 25) & (v + 'A')) | (ct_range(v, 26, 51) & (v - 26 + 'a')) |
                  (ct_range(v, 52, 61) & (v - 52 + '0')) | (ct_range(v, 62, 62) & '-') |
                  (ct_range(v, 63, 63) & '_'));
}

/* b64url_value returns the 6-bit value of c and sets *valid to all ones if c
 * is in the base64url alphabet, 0 otherwise. */
static uint32_t b64url_value(uint8_t ch, uint32_t *valid)
{
    uint32_t c = ch;
    uint32_t upper = ct_range(c, 'A', 'Z'), lower = ct_range(c, 'a', 'z');
    uint32_t digit = ct_range(c, '0', '9'), dash = ct_range(c, '-', '-');
    uint32_t under = ct_range(c, '_', '_');
    *valid = upper | lower | digit | dash | under;
    return (upper & (c - 'A')) | (lower & (c - 'a' + 26)) | (digit & (c - '0' + 52)) | (dash & 62) |
           (under & 63);
}

size_t acme_b64url_encoded_len(size_t len)
{
    return len / 3 * 4 + (len % 3 == 0 ? 0 : len % 3 + 1);
}

int acme_b64url_encode_to(const uint8_t *in, size_t len, char *out, size_t out_cap)
{
    if (len > SIZE_MAX / 2 || out_cap < acme_b64url_encoded_len(len) + 1) {
        return -1;
    }
    size_t i = 0, o = 0;
    for (; len - i >= 3; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url_char(v >> 18);
        out[o++] = b64url_char((v >> 12) & 63);
        out[o++] = b64url_char((v >> 6) & 63);
        out[o++] = b64url_char(v & 63);
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64url_char(v >> 18);
        out[o++] = b64url_char((v >> 12) & 63);
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64url_char(v >> 18);
        out[o++] = b64url_char((v >> 12) & 63);
        out[o++] = b64url_char((v >> 6) & 63);
    }
    out[o] = '\0';
    return 0;
}

char *acme_b64url_encode(const uint8_t *in, size_t len)
{
    if (len > SIZE_MAX / 2) {
        return NULL;
    }
    size_t cap = acme_b64url_encoded_len(len) + 1;
    char *out = malloc(cap);
    if (out != NULL) {
        acme_b64url_encode_to(in, len, out, cap);
    }
    return out;
}

int acme_b64url_decode_to(const char *in, size_t in_len, uint8_t *out, size_t out_cap,
                          size_t *out_len)
{
    size_t rem = in_len % 4;
    if (rem == 1) {
        return -1; /* 6 bits cannot make a byte */
    }
    if (in_len / 4 * 3 + (rem == 0 ? 0 : rem - 1) > out_cap) {
        return -1;
    }
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < in_len; i++) {
        uint32_t valid;
        uint32_t v = b64url_value((uint8_t)in[i], &valid);
        if (valid == 0) {
            return -1;
        }
        acc = (acc << 6) | v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) {
        return -1; /* non-zero trailing bits: a second encoding of the same bytes */
    }
    *out_len = o;
    return 0;
}

uint8_t *acme_b64url_decode(const char *in, size_t in_len, size_t *out_len)
{
    size_t cap = in_len / 4 * 3 + 3;
    uint8_t *out = malloc(cap);
    if (out == NULL) {
        return NULL;
    }
    size_t n = 0;
    if (acme_b64url_decode_to(in, in_len, out, cap - 1, &n) != 0) {
        OPENSSL_cleanse(out, cap);
        free(out);
        return NULL;
    }
    out[n] = '\0';
    *out_len = n;
    return out;
}

/* b64url_alphabet_only tells whether s is non-empty and all base64url
 * characters (nonces and tokens: RFC 8555 §6.5.1, §8.1). */
static bool b64url_alphabet_only(const char *s, size_t max_len)
{
    size_t len = strnlen(s, max_len + 1);
    if (len == 0 || len > max_len) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        uint32_t valid;
        b64url_value((uint8_t)s[i], &valid);
        if (valid == 0) {
            return false;
        }
    }
    return true;
}

/* ---- keys and JWKs ---- */

const char *acme_key_alg_name(enum acme_key_alg alg)
{
    switch (alg) {
    case ACME_KEY_ES256:
        return "ES256";
    case ACME_KEY_ES384:
        return "ES384";
    case ACME_KEY_RS256:
        return "RS256";
    }
    return "unknown";
}

static int alg_from_name(const char *name, enum acme_key_alg *out)
{
    static const enum acme_key_alg algs[] = {ACME_KEY_ES256, ACME_KEY_ES384, ACME_KEY_RS256};
    for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
        if (strcmp(name, acme_key_alg_name(algs[i])) == 0) {
            *out = algs[i];
            return 0;
        }
    }
    return -1;
}

/* ec_field_len returns the coordinate size in bytes of a supported curve
 * (RFC 7518 §6.2.1.2: x and y are always that long), or 0. */
static size_t ec_field_len(int nid)
{
    return nid == NID_X9_62_prime256v1 ? 32 : nid == NID_secp384r1 ? 48 : 0;
}

/* pkey_alg finds the JWS algorithm for pkey, refusing unsupported keys. */
static int pkey_alg(const EVP_PKEY *pkey, enum acme_key_alg *out, struct dm_err *err)
{
    if (EVP_PKEY_id(pkey) == EVP_PKEY_EC) {
        const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(pkey);
        int nid = EC_GROUP_get_curve_name(EC_KEY_get0_group(ec));
        if (nid == NID_X9_62_prime256v1 || nid == NID_secp384r1) {
            *out = nid == NID_X9_62_prime256v1 ? ACME_KEY_ES256 : ACME_KEY_ES384;
            return 0;
        }
        const char *name = OBJ_nid2sn(nid);
        dm_err_set(err, DM_E_TLS, "EC curve %s is not supported (P-256, P-384)",
                   name != NULL ? name : "?");
        return -1;
    }
    if (EVP_PKEY_id(pkey) == EVP_PKEY_RSA) {
        unsigned bits = RSA_bits(EVP_PKEY_get0_RSA(pkey));
        if (bits < JWS_RSA_MIN_BITS || bits > JWS_RSA_MAX_BITS) {
            dm_err_set(err, DM_E_TLS, "RSA key of %u bits is not supported (%d..%d)", bits,
                       JWS_RSA_MIN_BITS, JWS_RSA_MAX_BITS);
            return -1;
        }
        *out = ACME_KEY_RS256;
        return 0;
    }
    dm_err_set(err, DM_E_TLS, "key type is not supported (EC P-256, P-384, RSA)");
    return -1;
}

/* set_b64 sets o[name] to base64url(bytes[0..len)). */
static int set_b64(json_t *o, const char *name, const uint8_t *bytes, size_t len)
{
    char *s = acme_b64url_encode(bytes, len);
    int rc = s != NULL ? json_object_set_new(o, name, json_string(s)) : -1;
    free(s);
    return rc;
}

/* jwk_json returns the public JWK of pkey (RFC 7518 §6.2.1, §6.3.1) with
 * only the members RFC 7638 §3.2 requires, as a new JSON object. */
static json_t *jwk_json(const EVP_PKEY *pkey, struct dm_err *err)
{
    json_t *j = json_object();
    BIGNUM *x = BN_new(), *y = BN_new();
    uint8_t buf[JWS_SIG_MAX];
    bool ok = j != NULL && x != NULL && y != NULL;
    if (ok && EVP_PKEY_id(pkey) == EVP_PKEY_EC) {
        const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(pkey);
        const EC_GROUP *g = EC_KEY_get0_group(ec);
        const EC_POINT *pub = EC_KEY_get0_public_key(ec);
        int nid = EC_GROUP_get_curve_name(g);
        size_t n = ec_field_len(nid);
        ok = n != 0 && pub != NULL && EC_POINT_get_affine_coordinates_GFp(g, pub, x, y, NULL) &&
             json_object_set_new(j, "crv", json_string(n == 32 ? "P-256" : "P-384")) == 0 &&
             json_object_set_new(j, "kty", json_string("EC")) == 0 && BN_bn2bin_padded(buf, n, x) &&
             set_b64(j, "x", buf, n) == 0 && BN_bn2bin_padded(buf, n, y) &&
             set_b64(j, "y", buf, n) == 0;
    } else if (ok && EVP_PKEY_id(pkey) == EVP_PKEY_RSA) {
        /* RFC 7518 §6.3.1: minimal big-endian octets, no leading zeros. */
        const RSA *rsa = EVP_PKEY_get0_RSA(pkey);
        const BIGNUM *n = RSA_get0_n(rsa), *e = RSA_get0_e(rsa);
        ok = n != NULL && e != NULL && BN_num_bytes(n) <= sizeof(buf) &&
             BN_num_bytes(e) <= sizeof(buf) && set_b64(j, "e", buf, BN_bn2bin(e, buf)) == 0 &&
             json_object_set_new(j, "kty", json_string("RSA")) == 0 &&
             set_b64(j, "n", buf, BN_bn2bin(n, buf)) == 0;
    } else {
        ok = false;
    }
    BN_free(x);
    BN_free(y);
    if (!ok) {
        json_decref(j);
        dm_err_set_tls(err, "encode JWK");
        return NULL;
    }
    return j;
}

/* jwk_str_b64 decodes the base64url string member name of jwk into out and
 * returns its length, or -1 if absent, invalid or longer than cap. */
static long jwk_str_b64(const json_t *jwk, const char *name, uint8_t *out, size_t cap)
{
    const json_t *s = json_object_get(jwk, name);
    size_t n = 0;
    if (!json_is_string(s) ||
        acme_b64url_decode_to(json_string_value(s), json_string_length(s), out, cap, &n) != 0) {
        return -1;
    }
    return (long)n;
}

static EVP_PKEY *pkey_from_ec_jwk(const json_t *jwk, struct dm_err *err)
{
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    int nid = crv == NULL                 ? NID_undef
              : strcmp(crv, "P-256") == 0 ? NID_X9_62_prime256v1
              : strcmp(crv, "P-384") == 0 ? NID_secp384r1
                                          : NID_undef;
    size_t n = ec_field_len(nid);
    if (n == 0) {
        dm_err_set(err, DM_E_PROTO, "JWK: \"crv\" must be P-256 or P-384");
        return NULL;
    }
    uint8_t xb[JWS_EC_FIELD_MAX], yb[JWS_EC_FIELD_MAX];
    if (jwk_str_b64(jwk, "x", xb, sizeof(xb)) != (long)n ||
        jwk_str_b64(jwk, "y", yb, sizeof(yb)) != (long)n) {
        dm_err_set(err, DM_E_PROTO, "JWK: \"x\" and \"y\" must be %zu-byte base64url", n);
        return NULL;
    }
    EC_KEY *ec = EC_KEY_new_by_curve_name(nid);
    BIGNUM *x = BN_bin2bn(xb, n, NULL), *y = BN_bin2bn(yb, n, NULL);
    EVP_PKEY *pkey = EVP_PKEY_new();
    /* Rejects coordinates >= p and points off the curve. */
    if (ec == NULL || x == NULL || y == NULL || pkey == NULL ||
        !EC_KEY_set_public_key_affine_coordinates(ec, x, y) || !EVP_PKEY_assign_EC_KEY(pkey, ec)) {
        dm_err_set_tls(err, "JWK: invalid EC public key");
        EC_KEY_free(ec);
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
    BN_free(x);
    BN_free(y);
    return pkey;
}

static EVP_PKEY *pkey_from_rsa_jwk(const json_t *jwk, struct dm_err *err)
{
    uint8_t nb[JWS_RSA_MAX_BITS / 8], eb[JWS_RSA_E_MAX];
    long n_len = jwk_str_b64(jwk, "n", nb, sizeof(nb));
    long e_len = jwk_str_b64(jwk, "e", eb, sizeof(eb));
    /* Minimal encodings only, so a thumbprint is computed over what was sent. */
    if (n_len <= 0 || e_len <= 0 || nb[0] == 0 || eb[0] == 0 || (eb[e_len - 1] & 1) == 0) {
        dm_err_set(err, DM_E_PROTO,
                   "JWK: \"n\" and \"e\" must be minimal base64url integers, e odd, n at most "
                   "%d bits",
                   JWS_RSA_MAX_BITS);
        return NULL;
    }
    RSA *rsa = RSA_new();
    BIGNUM *n = BN_bin2bn(nb, (size_t)n_len, NULL), *e = BN_bin2bn(eb, (size_t)e_len, NULL);
    EVP_PKEY *pkey = EVP_PKEY_new();
    if (rsa == NULL || n == NULL || e == NULL || pkey == NULL) {
        dm_err_set(err, DM_E_NOMEM, "JWK: out of memory");
        goto fail;
    }
    if (BN_is_word(e, 1)) {
        dm_err_set(err, DM_E_PROTO, "JWK: RSA exponent 1");
        goto fail;
    }
    if (BN_num_bits(n) < JWS_RSA_MIN_BITS) {
        dm_err_set(err, DM_E_PROTO, "JWK: RSA modulus of %u bits is not supported (%d..%d)",
                   BN_num_bits(n), JWS_RSA_MIN_BITS, JWS_RSA_MAX_BITS);
        goto fail;
    }
    if (!RSA_set0_key(rsa, n, e, NULL)) {
        dm_err_set_tls(err, "JWK: invalid RSA public key");
        goto fail;
    }
    n = e = NULL; /* owned by rsa now */
    if (!EVP_PKEY_assign_RSA(pkey, rsa)) {
        dm_err_set_tls(err, "JWK: invalid RSA public key");
        goto fail;
    }
    return pkey;
fail:
    BN_free(n);
    BN_free(e);
    RSA_free(rsa);
    EVP_PKEY_free(pkey);
    return NULL;
}

/* pkey_from_jwk makes a public key from a JWK object (EC P-256/P-384 or RSA);
 * members other than the key's own are ignored. */
static EVP_PKEY *pkey_from_jwk(const json_t *jwk, struct dm_err *err)
{
    const char *kty = json_string_value(json_object_get(jwk, "kty"));
    if (!json_is_object(jwk) || kty == NULL) {
        dm_err_set(err, DM_E_PROTO, "JWK: not an object with a string \"kty\"");
        return NULL;
    }
    if (strcmp(kty, "EC") == 0) {
        return pkey_from_ec_jwk(jwk, err);
    }
    if (strcmp(kty, "RSA") == 0) {
        return pkey_from_rsa_jwk(jwk, err);
    }
    dm_err_set(err, DM_E_PROTO, "JWK: kty \"%.16s\" is not supported (EC, RSA)", kty);
    return NULL;
}

/* jwk_canonical returns the canonical JWK text of pkey (caller frees). */
static char *jwk_canonical(const EVP_PKEY *pkey, struct dm_err *err)
{
    json_t *j = jwk_json(pkey, err);
    if (j == NULL) {
        return NULL;
    }
    char *s = json_dumps(j, JWS_JSON_CANON);
    json_decref(j);
    if (s == NULL) {
        dm_err_set(err, DM_E_NOMEM, "encode JWK: out of memory");
    }
    return s;
}

/* sha256_b64 writes base64url(SHA-256(s[0..len))) into out (44 bytes). */
static void sha256_b64(const void *s, size_t len, char out[ACME_THUMBPRINT_LEN + 1])
{
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256(s, len, md);
    acme_b64url_encode_to(md, sizeof(md), out, ACME_THUMBPRINT_LEN + 1);
}

/* key_wrap takes ownership of pkey and returns it as a struct acme_key with
 * its JWK and thumbprint computed once, or NULL with err (pkey freed). */
static struct acme_key *key_wrap(EVP_PKEY *pkey, struct dm_err *err)
{
    struct acme_key *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        EVP_PKEY_free(pkey);
        dm_err_set(err, DM_E_NOMEM, "key: out of memory");
        return NULL;
    }
    k->pkey = pkey;
    if (pkey_alg(pkey, &k->alg, err) != 0 || (k->jwk = jwk_canonical(pkey, err)) == NULL) {
        acme_key_free(k);
        return NULL;
    }
    sha256_b64(k->jwk, strlen(k->jwk), k->thumbprint);
    return k;
}

struct acme_key *acme_key_new(enum acme_key_alg alg, unsigned rsa_bits, struct dm_err *err)
{
    EVP_PKEY *pkey = EVP_PKEY_new();
    if (pkey == NULL) {
        dm_err_set(err, DM_E_NOMEM, "generate key: out of memory");
        return NULL;
    }
    if (alg == ACME_KEY_ES256 || alg == ACME_KEY_ES384) {
        EC_KEY *ec =
            EC_KEY_new_by_curve_name(alg == ACME_KEY_ES256 ? NID_X9_62_prime256v1 : NID_secp384r1);
        if (ec == NULL || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(pkey, ec)) {
            EC_KEY_free(ec);
            EVP_PKEY_free(pkey);
            dm_err_set_tls(err, "generate %s key", acme_key_alg_name(alg));
            return NULL;
        }
    } else if (alg == ACME_KEY_RS256) {
        if (rsa_bits != 2048 && rsa_bits != 3072 && rsa_bits != 4096) {
            EVP_PKEY_free(pkey);
            dm_err_set(err, DM_E_CONFIG, "RSA key size %u is not supported (2048, 3072, 4096)",
                       rsa_bits);
            return NULL;
        }
        RSA *rsa = RSA_new();
        BIGNUM *e = BN_new();
        if (rsa == NULL || e == NULL || !BN_set_word(e, RSA_F4) ||
            !RSA_generate_key_ex(rsa, (int)rsa_bits, e, NULL) || !EVP_PKEY_assign_RSA(pkey, rsa)) {
            BN_free(e);
            RSA_free(rsa);
            EVP_PKEY_free(pkey);
            dm_err_set_tls(err, "generate RSA %u key", rsa_bits);
            return NULL;
        }
        BN_free(e);
    } else {
        EVP_PKEY_free(pkey);
        dm_err_set(err, DM_E_CONFIG, "unknown key algorithm %d", (int)alg);
        return NULL;
    }
    return key_wrap(pkey, err);
}

/* pem_on_password refuses encrypted PEM: we have no passphrase to offer, and
 * notes that one was asked for so the error can say so. */
static int pem_on_password(char *buf, int size, int rwflag, void *arg)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    *(bool *)arg = true;
    return 0;
}

struct acme_key *acme_key_parse_pem(const char *pem, size_t len, struct dm_err *err)
{
    if (len == 0 || len > ACME_KEY_PEM_MAX_BYTES) {
        dm_err_set(err, DM_E_LIMIT, "key PEM of %zu bytes (1..%d allowed)", len,
                   ACME_KEY_PEM_MAX_BYTES);
        return NULL;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL) {
        dm_err_set_tls(err, "key PEM");
        return NULL;
    }
    bool is_encrypted = false;
    EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, pem_on_password, &is_encrypted);
    BIO_free(bio);
    if (pkey == NULL) {
        if (is_encrypted) {
            ERR_clear_error();
            dm_err_set(err, DM_E_TLS, "key PEM: encrypted private keys are not supported");
        } else {
            dm_err_set_tls(err, "key PEM: no valid private key");
        }
        return NULL;
    }
    /* Parsing checks structure; also check the halves belong together. */
    bool ok = EVP_PKEY_id(pkey) == EVP_PKEY_EC    ? EC_KEY_check_key(EVP_PKEY_get0_EC_KEY(pkey))
              : EVP_PKEY_id(pkey) == EVP_PKEY_RSA ? RSA_check_key(EVP_PKEY_get0_RSA(pkey))
                                                  : true;
    if (!ok) {
        EVP_PKEY_free(pkey);
        dm_err_set_tls(err, "key PEM: inconsistent private key");
        return NULL;
    }
    return key_wrap(pkey, err);
}

char *acme_key_encode_pem(const struct acme_key *key, struct dm_err *err)
{
    CBB cbb;
    uint8_t *der = NULL;
    size_t der_len = 0;
    if (!CBB_init(&cbb, 512) || !EVP_marshal_private_key(&cbb, key->pkey) ||
        !CBB_finish(&cbb, &der, &der_len)) {
        CBB_cleanup(&cbb);
        dm_err_set_tls(err, "encode private key");
        return NULL;
    }
    /* RFC 7468 §2: 64 base64 characters (48 bytes) per line. */
    size_t b64_len = (der_len + 2) / 3 * 4, lines = (der_len + 47) / 48;
    size_t cap = sizeof(PEM_BEGIN) - 1 + b64_len + lines + sizeof(PEM_END);
    char *pem = malloc(cap);
    if (pem != NULL) {
        char *p = pem;
        memcpy(p, PEM_BEGIN, sizeof(PEM_BEGIN) - 1);
        p += sizeof(PEM_BEGIN) - 1;
        for (size_t off = 0; off < der_len; off += 48) {
            size_t n = der_len - off < 48 ? der_len - off : 48;
            p += EVP_EncodeBlock((uint8_t *)p, der + off, n); /* its NUL becomes the '\n' */
            *p++ = '\n';
        }
        memcpy(p, PEM_END, sizeof(PEM_END));
    } else {
        dm_err_set(err, DM_E_NOMEM, "encode private key: out of memory");
    }
    OPENSSL_cleanse(der, der_len);
    OPENSSL_free(der);
    return pem;
}

void acme_key_pem_free(char *pem)
{
    if (pem != NULL) {
        OPENSSL_cleanse(pem, strlen(pem));
        free(pem);
    }
}

void acme_key_free(struct acme_key *key)
{
    if (key == NULL) {
        return;
    }
    EVP_PKEY_free(key->pkey);
    free(key->jwk);
    free(key);
}

enum acme_key_alg acme_key_alg(const struct acme_key *key)
{
    return key->alg;
}

const char *acme_key_jwk(const struct acme_key *key)
{
    return key->jwk;
}

const char *acme_key_thumbprint(const struct acme_key *key)
{
    return key->thumbprint;
}

int acme_jwk_thumbprint(const char *jwk, size_t len, char out[ACME_THUMBPRINT_LEN + 1],
                        struct dm_err *err)
{
    json_error_t jerr;
    json_t *j = json_loadb(jwk, len, JSON_REJECT_DUPLICATES, &jerr);
    if (j == NULL) {
        dm_err_set(err, DM_E_PROTO, "JWK: %s", jerr.text);
        return -1;
    }
    EVP_PKEY *pkey = pkey_from_jwk(j, err);
    json_decref(j);
    char *canon = pkey != NULL ? jwk_canonical(pkey, err) : NULL;
    EVP_PKEY_free(pkey);
    if (canon == NULL) {
        return -1;
    }
    sha256_b64(canon, strlen(canon), out);
    free(canon);
    return 0;
}

/* ---- signing ---- */

/* key_sign signs msg with key in JWS form (RFC 7518 §3.3, §3.4): ES256/ES384
 * as R||S, each left-padded to the field size; RS256 as PKCS#1 v1.5. */
static int key_sign(const struct acme_key *key, const uint8_t *msg, size_t len,
                    uint8_t sig[JWS_SIG_MAX], size_t *sig_len, struct dm_err *err)
{
    uint8_t md[SHA384_DIGEST_LENGTH];
    if (key->alg == ACME_KEY_RS256) {
        unsigned n = 0;
        SHA256(msg, len, md);
        if (RSA_size(EVP_PKEY_get0_RSA(key->pkey)) > JWS_SIG_MAX ||
            !RSA_sign(NID_sha256, md, SHA256_DIGEST_LENGTH, sig, &n,
                      EVP_PKEY_get0_RSA(key->pkey))) {
            dm_err_set_tls(err, "RS256 sign");
            return -1;
        }
        *sig_len = n;
        return 0;
    }
    size_t field = key->alg == ACME_KEY_ES256 ? 32 : 48;
    if (key->alg == ACME_KEY_ES256) {
        SHA256(msg, len, md);
    } else {
        SHA384(msg, len, md);
    }
    /* The digest is as long as a field element for both curves. */
    ECDSA_SIG *s = ECDSA_do_sign(md, field, EVP_PKEY_get0_EC_KEY(key->pkey));
    if (s == NULL || !BN_bn2bin_padded(sig, field, ECDSA_SIG_get0_r(s)) ||
        !BN_bn2bin_padded(sig + field, field, ECDSA_SIG_get0_s(s))) {
        ECDSA_SIG_free(s);
        dm_err_set_tls(err, "%s sign", acme_key_alg_name(key->alg));
        return -1;
    }
    ECDSA_SIG_free(s);
    *sig_len = 2 * field;
    return 0;
}

/* jws_build makes the flattened JWS of hdr and payload[0..payload_len),
 * signed by key, or MACed with HMAC-SHA256 under hmac_key when key is NULL.
 * Returns a new string (caller frees) or NULL with err. */
static char *jws_build(const json_t *hdr, const char *payload, size_t payload_len,
                       const struct acme_key *key, const uint8_t *hmac_key, size_t hmac_key_len,
                       struct dm_err *err)
{
    char *out = NULL, *input = NULL;
    json_t *o = NULL;
    char *hdr_text = json_dumps(hdr, JWS_JSON_CANON);
    if (hdr_text == NULL) {
        dm_err_set(err, DM_E_NOMEM, "JWS: out of memory");
        goto out;
    }
    size_t h64 = acme_b64url_encoded_len(strlen(hdr_text));
    size_t p64 = acme_b64url_encoded_len(payload_len);
    /* The signing input (RFC 7515 §5.1): BASE64URL(header) "." BASE64URL(payload). */
    input = malloc(h64 + 1 + p64 + 1);
    if (input == NULL) {
        dm_err_set(err, DM_E_NOMEM, "JWS: out of memory");
        goto out;
    }
    acme_b64url_encode_to((const uint8_t *)hdr_text, strlen(hdr_text), input, h64 + 1);
    input[h64] = '.';
    acme_b64url_encode_to((const uint8_t *)payload, payload_len, input + h64 + 1, p64 + 1);

    uint8_t sig[JWS_SIG_MAX];
    size_t sig_len = 0;
    if (key != NULL) {
        if (key_sign(key, (const uint8_t *)input, h64 + 1 + p64, sig, &sig_len, err) != 0) {
            goto out;
        }
    } else {
        unsigned n = 0;
        if (HMAC(EVP_sha256(), hmac_key, hmac_key_len, (const uint8_t *)input, h64 + 1 + p64, sig,
                 &n) == NULL) {
            dm_err_set_tls(err, "HS256");
            goto out;
        }
        sig_len = n;
    }
    char sig64[JWS_SIG_MAX / 3 * 4 + 4];
    acme_b64url_encode_to(sig, sig_len, sig64, sizeof(sig64));

    o = json_object();
    if (o == NULL || json_object_set_new(o, "protected", json_stringn(input, h64)) != 0 ||
        json_object_set_new(o, "payload", json_string(input + h64 + 1)) != 0 ||
        json_object_set_new(o, "signature", json_string(sig64)) != 0 ||
        (out = json_dumps(o, JSON_COMPACT)) == NULL) {
        dm_err_set(err, DM_E_NOMEM, "JWS: out of memory");
    }
out:
    json_decref(o);
    free(input);
    free(hdr_text);
    return out;
}

/* set_str sets o[name] to the string value; fails if value is not UTF-8
 * (or memory runs out). */
static int set_str(json_t *o, const char *name, const char *value, struct dm_err *err)
{
    if (json_object_set_new(o, name, json_string(value)) != 0) {
        dm_err_set(err, DM_E_PROTO, "JWS: \"%s\" is not valid UTF-8", name);
        return -1;
    }
    return 0;
}

/* set_jwk sets o[name] to the public JWK of key as an object. */
static int set_jwk(json_t *o, const char *name, const struct acme_key *key, struct dm_err *err)
{
    if (json_object_set_new(o, name, json_loads(key->jwk, 0, NULL)) != 0) {
        dm_err_set(err, DM_E_NOMEM, "JWS: out of memory");
        return -1;
    }
    return 0;
}

static bool str_nonempty(const char *s)
{
    return s != NULL && s[0] != '\0';
}

int acme_jws_sign(const struct acme_key *key, const char *url, const char *nonce, const char *kid,
                  const char *payload, char **out_json, struct dm_err *err)
{
    *out_json = NULL;
    if (key == NULL || !str_nonempty(url) || payload == NULL || (kid != NULL && kid[0] == '\0')) {
        dm_err_set(err, DM_E_PROTO, "JWS: key, url and payload are required, kid may not be \"\"");
        return -1;
    }
    if (nonce == NULL || !b64url_alphabet_only(nonce, JWS_SHORT_MAX)) {
        dm_err_set(err, DM_E_PROTO, "JWS: nonce must be non-empty base64url (RFC 8555 §6.5.1)");
        return -1;
    }
    size_t payload_len = strnlen(payload, ACME_JWS_MAX_BYTES + 1);
    if (payload_len > ACME_JWS_MAX_BYTES) {
        dm_err_set(err, DM_E_LIMIT, "JWS: payload larger than %d bytes", ACME_JWS_MAX_BYTES);
        return -1;
    }
    json_t *hdr = json_object();
    if (hdr == NULL) {
        dm_err_set(err, DM_E_NOMEM, "JWS: out of memory");
        return -1;
    }
    if (set_str(hdr, "alg", acme_key_alg_name(key->alg), err) == 0 &&
        set_str(hdr, "nonce", nonce, err) == 0 && set_str(hdr, "url", url, err) == 0 &&
        (kid != NULL ? set_str(hdr, "kid", kid, err) : set_jwk(hdr, "jwk", key, err)) == 0) {
        *out_json = jws_build(hdr, payload, payload_len, key, NULL, 0, err);
    }
    json_decref(hdr);
    return *out_json != NULL ? 0 : -1;
}

int acme_jws_eab(const struct acme_key *account_key, const char *eab_kid,
                 const char *eab_hmac_key_b64url, const char *new_account_url, char **out_json,
                 struct dm_err *err)
{
    *out_json = NULL;
    if (account_key == NULL || !str_nonempty(eab_kid) || eab_hmac_key_b64url == NULL ||
        !str_nonempty(new_account_url)) {
        dm_err_set(err, DM_E_CONFIG, "EAB: key, kid, HMAC key and newAccount URL are required");
        return -1;
    }
    size_t len = strnlen(eab_hmac_key_b64url, JWS_SHORT_MAX + 1);
    for (int i = 0; i < 2 && len > 0 && eab_hmac_key_b64url[len - 1] == '='; i++) {
        len--;
    }
    size_t key_len = 0;
    uint8_t *hmac_key =
        len <= JWS_SHORT_MAX ? acme_b64url_decode(eab_hmac_key_b64url, len, &key_len) : NULL;
    if (hmac_key == NULL || key_len == 0) {
        dm_err_set(err, DM_E_CONFIG, "EAB: HMAC key is not base64url of 1..%d characters",
                   JWS_SHORT_MAX);
        free(hmac_key); /* empty: nothing to wipe */
        return -1;
    }
    json_t *hdr = json_object();
    if (hdr == NULL) {
        dm_err_set(err, DM_E_NOMEM, "EAB: out of memory");
    } else if (set_str(hdr, "alg", "HS256", err) == 0 && set_str(hdr, "kid", eab_kid, err) == 0 &&
               set_str(hdr, "url", new_account_url, err) == 0) {
        /* RFC 8555 §7.3.4: no "nonce"; the payload is the account's JWK. */
        *out_json = jws_build(hdr, account_key->jwk, strlen(account_key->jwk), NULL, hmac_key,
                              key_len, err);
    }
    json_decref(hdr);
    OPENSSL_cleanse(hmac_key, key_len);
    free(hmac_key);
    return *out_json != NULL ? 0 : -1;
}

int acme_jws_key_change(const struct acme_key *new_key, const char *account_url,
                        const struct acme_key *old_key, const char *key_change_url, char **out_json,
                        struct dm_err *err)
{
    *out_json = NULL;
    if (new_key == NULL || old_key == NULL || !str_nonempty(account_url) ||
        !str_nonempty(key_change_url)) {
        dm_err_set(err, DM_E_PROTO, "keyChange: both keys and both URLs are required");
        return -1;
    }
    if (strcmp(new_key->thumbprint, old_key->thumbprint) == 0) {
        dm_err_set(err, DM_E_PROTO, "keyChange: the new key is the old key");
        return -1;
    }
    char *payload = NULL;
    json_t *hdr = json_object(), *body = json_object();
    if (hdr == NULL || body == NULL) {
        dm_err_set(err, DM_E_NOMEM, "keyChange: out of memory");
        goto out;
    }
    if (set_str(body, "account", account_url, err) != 0 ||
        set_jwk(body, "oldKey", old_key, err) != 0) {
        goto out;
    }
    if ((payload = json_dumps(body, JWS_JSON_CANON)) == NULL) {
        dm_err_set(err, DM_E_NOMEM, "keyChange: out of memory");
        goto out;
    }
    /* RFC 8555 §7.3.5: the inner JWS carries "jwk" (never "kid") and no "nonce". */
    if (set_str(hdr, "alg", acme_key_alg_name(new_key->alg), err) == 0 &&
        set_jwk(hdr, "jwk", new_key, err) == 0 && set_str(hdr, "url", key_change_url, err) == 0) {
        *out_json = jws_build(hdr, payload, strlen(payload), new_key, NULL, 0, err);
    }
out:
    free(payload);
    json_decref(body);
    json_decref(hdr);
    return *out_json != NULL ? 0 : -1;
}

/* ---- key authorizations ---- */

char *acme_key_authorization(const struct acme_key *key, const char *token, struct dm_err *err)
{
    if (token == NULL || !b64url_alphabet_only(token, JWS_SHORT_MAX)) {
        dm_err_set(err, DM_E_PROTO, "challenge token is not base64url of 1..%d characters",
                   JWS_SHORT_MAX);
        return NULL;
    }
    size_t len = strlen(token);
    char *s = malloc(len + 1 + ACME_THUMBPRINT_LEN + 1);
    if (s == NULL) {
        dm_err_set(err, DM_E_NOMEM, "key authorization: out of memory");
        return NULL;
    }
    memcpy(s, token, len);
    s[len] = '.';
    memcpy(s + len + 1, key->thumbprint, ACME_THUMBPRINT_LEN + 1);
    return s;
}

void acme_key_authorization_dns01(const char *key_authz, char out[ACME_DNS01_TXT_LEN + 1])
{
    sha256_b64(key_authz, strlen(key_authz), out);
}

void acme_key_authorization_tlsalpn01(const char *key_authz, uint8_t out[ACME_TLSALPN01_DIGEST_LEN])
{
    SHA256((const uint8_t *)key_authz, strlen(key_authz), out);
}

/* ---- verification ---- */

/* sig_verify checks a JWS-form signature of msg under pkey for alg. */
static bool sig_verify(EVP_PKEY *pkey, enum acme_key_alg alg, const uint8_t *msg, size_t len,
                       const uint8_t *sig, size_t sig_len)
{
    uint8_t md[SHA384_DIGEST_LENGTH];
    if (alg == ACME_KEY_RS256) {
        SHA256(msg, len, md);
        RSA *rsa = EVP_PKEY_get0_RSA(pkey);
        return sig_len == RSA_size(rsa) &&
               RSA_verify(NID_sha256, md, SHA256_DIGEST_LENGTH, sig, sig_len, rsa) == 1;
    }
    size_t field = alg == ACME_KEY_ES256 ? 32 : 48;
    if (sig_len != 2 * field) {
        return false;
    }
    if (alg == ACME_KEY_ES256) {
        SHA256(msg, len, md);
    } else {
        SHA384(msg, len, md);
    }
    ECDSA_SIG *s = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, field, NULL), *ss = BN_bin2bn(sig + field, field, NULL);
    if (s == NULL || r == NULL || ss == NULL || !ECDSA_SIG_set0(s, r, ss)) {
        BN_free(r);
        BN_free(ss);
        ECDSA_SIG_free(s);
        return false;
    }
    bool ok = ECDSA_do_verify(md, field, s, EVP_PKEY_get0_EC_KEY(pkey)) == 1;
    ECDSA_SIG_free(s);
    return ok;
}

/* verify_key picks the public key for a JWS with header hdr: the verifier's
 * key or JWK, else the header's "jwk"; a header "jwk" must match a supplied
 * key. Returns a new reference or NULL with err. */
static EVP_PKEY *verify_key(const json_t *hdr, const struct acme_jws_verifier *v,
                            struct dm_err *err)
{
    const json_t *hjwk = json_object_get(hdr, "jwk");
    EVP_PKEY *pk = NULL, *hpk = NULL;
    if (v != NULL && v->key != NULL) {
        pk = v->key->pkey;
        EVP_PKEY_up_ref(pk);
    } else if (v != NULL && v->jwk != NULL) {
        json_error_t jerr;
        json_t *j = json_loads(v->jwk, JSON_REJECT_DUPLICATES, &jerr);
        if (j == NULL) {
            dm_err_set(err, DM_E_PROTO, "verifier JWK: %s", jerr.text);
            return NULL;
        }
        pk = pkey_from_jwk(j, err);
        json_decref(j);
        if (pk == NULL) {
            return NULL;
        }
    }
    if (hjwk != NULL && (hpk = pkey_from_jwk(hjwk, err)) == NULL) {
        EVP_PKEY_free(pk);
        return NULL;
    }
    if (pk == NULL && hpk == NULL) {
        dm_err_set(err, DM_E_PROTO, "JWS: no key to verify with (header has no \"jwk\")");
        return NULL;
    }
    if (pk != NULL && hpk != NULL && EVP_PKEY_cmp(pk, hpk) != 1) {
        EVP_PKEY_free(pk);
        EVP_PKEY_free(hpk);
        ERR_clear_error();
        dm_err_set(err, DM_E_PROTO, "JWS: header \"jwk\" is not the expected key");
        return NULL;
    }
    if (pk == NULL) {
        return hpk;
    }
    EVP_PKEY_free(hpk);
    return pk;
}

/* hdr_check enforces the protected-header rules acme_jws_verify documents
 * and returns "alg", or NULL with err. */
static const char *hdr_check(const json_t *hdr, struct dm_err *err)
{
    const char *alg = json_string_value(json_object_get(hdr, "alg"));
    const json_t *jwk = json_object_get(hdr, "jwk"), *kid = json_object_get(hdr, "kid");
    const json_t *nonce = json_object_get(hdr, "nonce"), *url = json_object_get(hdr, "url");
    if (!json_is_object(hdr) || alg == NULL) {
        dm_err_set(err, DM_E_PROTO, "JWS: protected header is not an object with a string \"alg\"");
        return NULL;
    }
    if (json_object_get(hdr, "crit") != NULL) {
        dm_err_set(err, DM_E_PROTO, "JWS: \"crit\" extensions are not supported");
        return NULL;
    }
    if (jwk != NULL && kid != NULL) {
        dm_err_set(err, DM_E_PROTO,
                   "JWS: \"jwk\" and \"kid\" are mutually exclusive (RFC 8555 §6.2)");
        return NULL;
    }
    if ((jwk != NULL && !json_is_object(jwk)) || (kid != NULL && !json_is_string(kid)) ||
        (nonce != NULL && !json_is_string(nonce)) || (url != NULL && !json_is_string(url))) {
        dm_err_set(err, DM_E_PROTO, "JWS: header member of the wrong type");
        return NULL;
    }
    return alg;
}

/* member_b64_decode decodes the string member name of o, or returns NULL with err. */
static uint8_t *member_b64_decode(const json_t *o, const char *name, size_t *out_len,
                                  struct dm_err *err)
{
    const json_t *s = json_object_get(o, name);
    uint8_t *d = acme_b64url_decode(json_string_value(s), json_string_length(s), out_len);
    if (d == NULL) {
        dm_err_set(err, DM_E_PROTO, "JWS: \"%s\" is not strict unpadded base64url", name);
    }
    return d;
}

int acme_jws_verify(const char *jws, size_t jws_len, const struct acme_jws_verifier *v,
                    char **out_protected, char **out_payload, size_t *out_payload_len,
                    struct dm_err *err)
{
    int rc = -1;
    json_t *root = NULL, *hdr = NULL;
    uint8_t *hdr_text = NULL, *payload = NULL, *sig = NULL, *input = NULL;
    size_t hdr_len = 0, payload_len = 0, sig_len = 0;
    EVP_PKEY *pk = NULL;
    json_error_t jerr;

    if (jws_len > ACME_JWS_MAX_BYTES) {
        dm_err_set(err, DM_E_LIMIT, "JWS larger than %d bytes", ACME_JWS_MAX_BYTES);
        goto out;
    }
    root = json_loadb(jws, jws_len, JSON_REJECT_DUPLICATES, &jerr);
    const json_t *p64 = json_object_get(root, "protected"),
                 *pl64 = json_object_get(root, "payload");
    if (!json_is_object(root) || json_object_size(root) != 3 || !json_is_string(p64) ||
        !json_is_string(pl64) || !json_is_string(json_object_get(root, "signature"))) {
        dm_err_set(err, DM_E_PROTO,
                   "JWS: want an object of exactly \"protected\", \"payload\", \"signature\" "
                   "strings%s%s",
                   root == NULL ? ": " : "", root == NULL ? jerr.text : "");
        goto out;
    }
    if ((hdr_text = member_b64_decode(root, "protected", &hdr_len, err)) == NULL ||
        (payload = member_b64_decode(root, "payload", &payload_len, err)) == NULL ||
        (sig = member_b64_decode(root, "signature", &sig_len, err)) == NULL) {
        goto out;
    }
    hdr = json_loadb((const char *)hdr_text, hdr_len, JSON_REJECT_DUPLICATES, &jerr);
    if (hdr == NULL) {
        dm_err_set(err, DM_E_PROTO, "JWS: protected header: %s", jerr.text);
        goto out;
    }
    const char *alg = hdr_check(hdr, err);
    if (alg == NULL) {
        goto out;
    }
    size_t h_len = json_string_length(p64), p_len = json_string_length(pl64);
    if ((input = malloc(h_len + 1 + p_len)) == NULL) {
        dm_err_set(err, DM_E_NOMEM, "JWS: out of memory");
        goto out;
    }
    memcpy(input, json_string_value(p64), h_len);
    input[h_len] = '.';
    memcpy(input + h_len + 1, json_string_value(pl64), p_len);

    bool has_hmac = v != NULL && v->hmac_key != NULL;
    enum acme_key_alg kalg;
    if (strcmp(alg, "HS256") == 0) {
        uint8_t mac[SHA256_DIGEST_LENGTH];
        unsigned mac_len = 0;
        if (!has_hmac) {
            dm_err_set(err, DM_E_PROTO, "JWS: HS256 needs an HMAC key");
            goto out;
        }
        if (HMAC(EVP_sha256(), v->hmac_key, v->hmac_key_len, input, h_len + 1 + p_len, mac,
                 &mac_len) == NULL) {
            dm_err_set_tls(err, "HS256");
            goto out;
        }
        bool ok = sig_len == mac_len && CRYPTO_memcmp(mac, sig, mac_len) == 0;
        OPENSSL_cleanse(mac, sizeof(mac));
        if (!ok) {
            dm_err_set(err, DM_E_PROTO, "JWS: HS256 signature mismatch");
            goto out;
        }
    } else {
        if (alg_from_name(alg, &kalg) != 0) {
            dm_err_set(err, DM_E_PROTO, "JWS: alg \"%.16s\" is not supported", alg);
            goto out;
        }
        if (has_hmac) {
            dm_err_set(err, DM_E_PROTO, "JWS: alg %s with an HMAC key", alg);
            goto out;
        }
        enum acme_key_alg pk_alg;
        if ((pk = verify_key(hdr, v, err)) == NULL || pkey_alg(pk, &pk_alg, err) != 0) {
            goto out;
        }
        if (pk_alg != kalg) {
            dm_err_set(err, DM_E_PROTO, "JWS: alg %s does not fit a %s key", alg,
                       acme_key_alg_name(pk_alg));
            goto out;
        }
        if (!sig_verify(pk, kalg, input, h_len + 1 + p_len, sig, sig_len)) {
            ERR_clear_error();
            dm_err_set(err, DM_E_PROTO, "JWS: %s signature mismatch", alg);
            goto out;
        }
    }
    if (out_protected != NULL) {
        *out_protected = (char *)hdr_text;
        hdr_text = NULL;
    }
    if (out_payload != NULL) {
        *out_payload = (char *)payload;
        payload = NULL;
    }
    if (out_payload_len != NULL) {
        *out_payload_len = payload_len;
    }
    rc = 0;
out:
    EVP_PKEY_free(pk);
    free(input);
    free(sig);
    free(payload);
    free(hdr_text);
    json_decref(hdr);
    json_decref(root);
    return rc;
}
