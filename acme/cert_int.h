/* The body of struct acme_cert and the helpers acme's own files share to build
 * one (pem.c owns them; issuer_local.c and manager.c use them). Everything a
 * TLS handshake needs is prepared here at load time: DER buffers and a key, so
 * serving a certificate parses nothing. Not for proxy/: it sees acme.h only. */
#ifndef DM_ACME_CERT_INT_H
#define DM_ACME_CERT_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <openssl/base.h>

#include "acme/acme.h"

struct dm_err;

/* Longest chain accepted from PEM: leaf + intermediates (+ root). Real chains
 * have 2-4 certificates; 10 bounds work on hostile input. */
#define ACME_CERT_MAX_CHAIN 10

/* Most SANs kept for acme_cert_covers (public CAs allow 100). */
#define ACME_CERT_MAX_NAMES 1000

/* Largest PEM text accepted (chain or key): a chain of 10 RSA-4096
 * certificates is ~20 KiB; 1 MiB bounds what a wrong path can make us read. */
#define ACME_PEM_MAX_BYTES (1024 * 1024)

/* Longest DNS name (RFC 1035 §2.3.4: 255 octets on the wire = 253 as text). */
#define ACME_NAME_MAX 253

struct acme_cert {
    atomic_int refs;
    CRYPTO_BUFFER **chain; /* owned array of refs: DER, leaf first */
    size_t num_chain;
    EVP_PKEY *key;     /* ref */
    time_t not_before; /* leaf validity, seconds since the epoch */
    time_t not_after;
    char **names; /* owned: leaf SANs: [0, num_dns) DNS names lower-case ("*.x"
                     kept), then IP addresses as inet_ntop text */
    size_t num_dns;
    size_t num_names;
    /* Last handshake that served it, seconds since the epoch (relaxed: an
     * eviction and renewal hint, not an exact record). */
    _Atomic int64_t last_used;
};

/* acme_cert_new_x509 builds a certificate from parsed certificates (leaf
 * first) and a key: encodes each to DER in pool (may be NULL), reads the leaf's
 * validity and SANs and checks that key matches it. Takes its own references
 * (chain and key stay the caller's). Returns refs = 1, or NULL with err. */
struct acme_cert *acme_cert_new_x509(X509 *const *chain, size_t num_chain, EVP_PKEY *key,
                                     CRYPTO_BUFFER_POOL *pool, struct dm_err *err);

/* acme_pem_parse_key parses the first private key of a PEM text ("PRIVATE
 * KEY", "EC PRIVATE KEY" or "RSA PRIVATE KEY"; other blocks are skipped) and
 * checks it is ECDSA P-256/P-384 or RSA of 2048..8192 bits. Returns a new key
 * or NULL with err. DER copies of the key are wiped before they are freed. */
EVP_PKEY *acme_pem_parse_key(const char *pem, size_t len, struct dm_err *err);

/* acme_pem_parse_x509 parses the first CERTIFICATE block of a PEM text.
 * Returns a new X509 or NULL with err. */
X509 *acme_pem_parse_x509(const char *pem, size_t len, struct dm_err *err);

/* acme_pem_encode_x509 returns x as a new NUL-terminated "CERTIFICATE" PEM
 * string (caller frees), or NULL with err. */
char *acme_pem_encode_x509(X509 *x, struct dm_err *err);

/* acme_pem_encode_key returns key as a new PKCS#8 "PRIVATE KEY" PEM string
 * (caller releases it with acme_pem_free_secret), or NULL with err. */
char *acme_pem_encode_key(const EVP_PKEY *key, struct dm_err *err);

/* acme_pem_free_secret wipes and frees a NUL-terminated secret string. */
void acme_pem_free_secret(char *s);

/* acme_asn1_time_to_unix converts an ASN.1 time to seconds since the epoch. */
int acme_asn1_time_to_unix(const ASN1_TIME *t, time_t *out);

/* acme_cert_names returns the leaf's SANs (borrowed, valid while the caller
 * holds a reference). */
char *const *acme_cert_names(const struct acme_cert *c, size_t *out_num);

/* acme_name_is_ip tells whether name is an IPv4 or IPv6 literal; if out is not
 * NULL it receives the 4 or 16 address bytes and *out_len their count. */
bool acme_name_is_ip(const char *name, unsigned char out[16], size_t *out_len);

/* acme_name_valid tells whether name can be a certificate name: an IP
 * literal, or a lower-case DNS name (labels of 1..63 bytes from [a-z0-9-_],
 * at most ACME_NAME_MAX bytes) optionally starting with "*." . */
bool acme_name_valid(const char *name);

#endif
