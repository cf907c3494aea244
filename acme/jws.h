/* The cryptographic core of the ACME client (RFC 8555 §6.2): account and
 * certificate keys (ES256, ES384, RS256) behind the opaque struct acme_key,
 * their JWK (RFC 7517/7518) and RFC 7638 thumbprint, flattened JWS requests,
 * External Account Binding, key rollover, challenge key authorizations, and
 * unpadded base64url. Invariant (STYLE §4.8): a private key lives only in the
 * EVP_PKEY inside struct acme_key; callers ask for a signature, a public JWK or
 * a PEM to store, never for the key itself. Design note: docs/acme-jws.md. */
#ifndef DM_ACME_JWS_H
#define DM_ACME_JWS_H

#include <stddef.h>
#include <stdint.h>

struct dm_err;

/* Largest payload acme_jws_sign signs and largest JWS acme_jws_verify reads,
 * in bytes: the same bound as an ACME response body (STYLE §4.5). */
#define ACME_JWS_MAX_BYTES (1024 * 1024)
/* Largest key PEM acme_key_parse_pem reads, in bytes (RSA 4096 PKCS#8 is ~3.3 KB). */
#define ACME_KEY_PEM_MAX_BYTES (64 * 1024)
/* Characters of a base64url SHA-256 digest: thumbprints and dns-01 TXT values. */
#define ACME_THUMBPRINT_LEN 43
#define ACME_DNS01_TXT_LEN  43
/* Bytes of the RFC 8737 acmeIdentifier value: SHA-256 of the key authorization. */
#define ACME_TLSALPN01_DIGEST_LEN 32

/* ---- base64url without padding (RFC 4648 §5, RFC 7515 §2) ---- */

/* acme_b64url_encoded_len returns the characters (without NUL) that encoding
 * len bytes produces. */
size_t acme_b64url_encoded_len(size_t len);

/* acme_b64url_encode_to writes in[0..len) base64url-encoded, unpadded and
 * NUL-terminated into out. Returns 0, or -1 if out_cap is smaller than
 * acme_b64url_encoded_len(len) + 1 (out is then untouched). */
int acme_b64url_encode_to(const uint8_t *in, size_t len, char *out, size_t out_cap);

/* acme_b64url_encode returns in[0..len) as a new NUL-terminated base64url
 * string (caller frees with free()), or NULL when out of memory. */
char *acme_b64url_encode(const uint8_t *in, size_t len);

/* acme_b64url_decode_to decodes in[0..in_len) into out and sets *out_len.
 * Strict: rejects '=' padding, whitespace, characters outside the base64url
 * alphabet, a length of 4n+1, and non-zero trailing bits (so every byte
 * string has exactly one accepted encoding). Never reads past in_len, never
 * allocates. Returns 0, or -1 if invalid or longer than out_cap (out then
 * holds unspecified bytes: wipe it if the input was secret). */
int acme_b64url_decode_to(const char *in, size_t in_len, uint8_t *out, size_t out_cap,
                          size_t *out_len);

/* acme_b64url_decode decodes like acme_b64url_decode_to into a new buffer
 * (caller frees with free()) that also carries a NUL after *out_len bytes.
 * Returns NULL if the input is invalid or memory runs out. */
uint8_t *acme_b64url_decode(const char *in, size_t in_len, size_t *out_len);

/* ---- keys ---- */

/* JWS algorithms, one per key kind (RFC 7518 §3.1). */
enum acme_key_alg {
    ACME_KEY_ES256 = 0, /* ECDSA P-256 + SHA-256, signature R||S (64 bytes) */
    ACME_KEY_ES384,     /* ECDSA P-384 + SHA-384, signature R||S (96 bytes) */
    ACME_KEY_RS256,     /* RSASSA-PKCS1-v1_5 + SHA-256, RSA 2048..4096 bits */
};

/* An ACME account key or a certificate key used to sign; immutable once
 * made, so it may be used from several threads. */
struct acme_key;

/* acme_key_alg_name names alg as in a JWS "alg" ("ES256", ...). */
const char *acme_key_alg_name(enum acme_key_alg alg);

/* acme_key_new generates a key for alg; rsa_bits (2048, 3072 or 4096) is used
 * only for ACME_KEY_RS256 and ignored otherwise. Returns a new key (caller
 * frees with acme_key_free) or NULL with err. RSA 4096 takes seconds: do not
 * call it on a loop thread that serves traffic. */
struct acme_key *acme_key_new(enum acme_key_alg alg, unsigned rsa_bits, struct dm_err *err);

/* acme_key_parse_pem loads the private key of pem[0..len): PKCS#8 "PRIVATE
 * KEY", or the traditional "EC PRIVATE KEY" / "RSA PRIVATE KEY". Accepts
 * P-256, P-384 and RSA 2048..4096 bits; refuses encrypted PEM. Returns a new
 * key (caller frees with acme_key_free) or NULL with err. */
struct acme_key *acme_key_parse_pem(const char *pem, size_t len, struct dm_err *err);

/* acme_key_encode_pem returns key as a new NUL-terminated PKCS#8 "PRIVATE
 * KEY" PEM for the caller to store (mode 0600, atomic rename); the caller
 * releases it with acme_key_pem_free. NULL with err on failure. */
char *acme_key_encode_pem(const struct acme_key *key, struct dm_err *err);

/* acme_key_pem_free wipes (OPENSSL_cleanse) and frees a PEM string from
 * acme_key_encode_pem. NULL does nothing. */
void acme_key_pem_free(char *pem);

/* acme_key_free frees key and its EVP_PKEY. NULL does nothing. */
void acme_key_free(struct acme_key *key);

/* acme_key_alg tells which JWS algorithm key signs with. */
enum acme_key_alg acme_key_alg(const struct acme_key *key);

/* acme_key_jwk returns the public JWK of key as canonical JSON (RFC 7638 §3:
 * required members only, sorted, no whitespace), e.g.
 * {"crv":"P-256","kty":"EC","x":"..","y":".."}. Borrowed: valid while key is. */
const char *acme_key_jwk(const struct acme_key *key);

/* acme_key_thumbprint returns the RFC 7638 SHA-256 thumbprint of key,
 * base64url (ACME_THUMBPRINT_LEN characters). Borrowed: valid while key is. */
const char *acme_key_thumbprint(const struct acme_key *key);

/* acme_jwk_thumbprint computes the RFC 7638 thumbprint of a public JWK given
 * as JSON text jwk[0..len) (EC P-256/P-384 or RSA 2048..4096; other members
 * such as "kid" or "alg" are ignored) into out. Returns 0, or -1 with err if
 * the JWK is invalid or unsupported. */
int acme_jwk_thumbprint(const char *jwk, size_t len, char out[ACME_THUMBPRINT_LEN + 1],
                        struct dm_err *err);

/* ---- JWS requests (RFC 8555 §6.2) ---- */

/* acme_jws_sign signs an ACME request as a flattened JWS JSON serialization
 * {"protected":..,"payload":..,"signature":..}. The protected header holds
 * "alg", "nonce", "url" and "kid" = kid, or, when kid is NULL, "jwk" = the
 * public key (newAccount, revokeCert signed by the certificate key). payload
 * is the request's JSON text, sent as is; "" makes a POST-as-GET (RFC 8555
 * §6.3). nonce must be non-empty base64url (§6.5). On success returns 0 and
 * *out_json is a new string (caller frees with free()); -1 with err otherwise. */
int acme_jws_sign(const struct acme_key *key, const char *url, const char *nonce, const char *kid,
                  const char *payload, char **out_json, struct dm_err *err);

/* acme_jws_eab builds the externalAccountBinding value of a newAccount
 * payload (RFC 8555 §7.3.4): a flattened JWS with protected {"alg":"HS256",
 * "kid":eab_kid,"url":new_account_url}, payload the public JWK of
 * account_key, MACed with HMAC-SHA256 under the base64url-decoded
 * eab_hmac_key_b64url ('=' padding tolerated, as some CAs hand keys out
 * padded). The decoded key is wiped after use. Returns 0 with a new
 * *out_json (caller frees with free()), or -1 with err. */
int acme_jws_eab(const struct acme_key *account_key, const char *eab_kid,
                 const char *eab_hmac_key_b64url, const char *new_account_url, char **out_json,
                 struct dm_err *err);

/* acme_jws_key_change builds the inner JWS of an account key rollover (RFC
 * 8555 §7.3.5): signed by new_key, protected {"alg","jwk": new key,"url":
 * key_change_url} without a nonce, payload {"account":account_url,"oldKey":
 * JWK of old_key}. The caller sends it as the payload of a request signed by
 * old_key with its kid. Returns 0 with a new *out_json (caller frees with
 * free()), or -1 with err. */
int acme_jws_key_change(const struct acme_key *new_key, const char *account_url,
                        const struct acme_key *old_key, const char *key_change_url, char **out_json,
                        struct dm_err *err);

/* ---- challenge key authorizations (RFC 8555 §8.1, §8.4; RFC 8737 §3) ---- */

/* acme_key_authorization returns token "." thumbprint(key) as a new string
 * (caller frees with free()), or NULL with err if token is empty or not
 * base64url (§8.1: a token outside that alphabet is the CA's error and must
 * not reach paths or DNS). */
char *acme_key_authorization(const struct acme_key *key, const char *token, struct dm_err *err);

/* acme_key_authorization_dns01 writes the dns-01 TXT record value,
 * base64url(SHA-256(key_authz)), NUL-terminated into out (§8.4). */
void acme_key_authorization_dns01(const char *key_authz, char out[ACME_DNS01_TXT_LEN + 1]);

/* acme_key_authorization_tlsalpn01 writes SHA-256(key_authz), the value of the
 * tls-alpn-01 acmeIdentifier extension (RFC 8737 §3), into out. */
void acme_key_authorization_tlsalpn01(const char *key_authz,
                                      uint8_t out[ACME_TLSALPN01_DIGEST_LEN]);

/* ---- verification (tests, fuzzing, the fake CA) ---- */

/* What acme_jws_verify checks a signature against. Set at most one of key,
 * jwk and hmac_key; with none set (or a NULL verifier) the "jwk" of the
 * protected header is used. All pointers are borrowed. */
struct acme_jws_verifier {
    const struct acme_key *key; /* borrowed: its public half is used */
    const char *jwk;            /* borrowed: public JWK, NUL-terminated JSON text */
    const uint8_t *hmac_key;    /* borrowed: HS256 key (EAB) */
    size_t hmac_key_len;        /* bytes */
};

/* acme_jws_verify checks a flattened JWS jws[0..jws_len): exactly the members
 * "protected", "payload", "signature" (RFC 8555 §6.2 forbids the unprotected
 * header); a protected header with a string "alg" of ES256, ES384, RS256 or
 * HS256 matching the key, no "crit", not both "jwk" and "kid"; strict
 * base64url everywhere; and the signature. If the verifier supplies a public
 * key and the header also has a "jwk", they must be the same key. On success
 * returns 0 and, for each output that is not NULL, a new NUL-terminated
 * string (caller frees with free()): *out_protected the decoded protected
 * header JSON, *out_payload the decoded payload (*out_payload_len bytes, may
 * hold NULs). On failure returns -1 with err and sets no output. */
int acme_jws_verify(const char *jws, size_t jws_len, const struct acme_jws_verifier *v,
                    char **out_protected, char **out_payload, size_t *out_payload_len,
                    struct dm_err *err);

#endif
