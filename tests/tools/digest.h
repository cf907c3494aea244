/*
 * Digests for dm_test_backend, written out so the tool links only libc: FNV-1a 64 and SHA-256
 * (/sum checksums), SHA-1 and base64 (RFC 6455 §4.2.2 Sec-WebSocket-Accept). Prefix dmt_ =
 * doorman test tools. Not constant-time and not for production use.
 */
#ifndef DM_TESTS_TOOLS_DIGEST_H
#define DM_TESTS_TOOLS_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#define DMT_FNV64_OFFSET 0xcbf29ce484222325ULL

struct dmt_sha1 {
    uint32_t h[5];
    uint64_t total_len; /* bytes */
    unsigned char block[64];
    size_t block_len; /* bytes */
};

struct dmt_sha256 {
    uint32_t h[8];
    uint64_t total_len; /* bytes */
    unsigned char block[64];
    size_t block_len; /* bytes */
};

/* dmt_fnv1a64 returns the FNV-1a 64 hash h extended by p[0..n); start with DMT_FNV64_OFFSET. */
uint64_t dmt_fnv1a64(uint64_t h, const unsigned char *p, size_t n);

/* dmt_sha1_init starts a SHA-1 (FIPS 180-4) computation in caller storage. */
void dmt_sha1_init(struct dmt_sha1 *s);
/* dmt_sha1_update hashes len more bytes. */
void dmt_sha1_update(struct dmt_sha1 *s, const void *data, size_t len);
/* dmt_sha1_final writes the 20-byte digest; s must be initialised again before reuse. */
void dmt_sha1_final(struct dmt_sha1 *s, unsigned char out[20]);

/* dmt_sha256_init starts a SHA-256 (FIPS 180-4) computation in caller storage. */
void dmt_sha256_init(struct dmt_sha256 *s);
/* dmt_sha256_update hashes len more bytes. */
void dmt_sha256_update(struct dmt_sha256 *s, const void *data, size_t len);
/* dmt_sha256_final_hex writes the digest as 64 lower-case hex digits and a NUL. */
void dmt_sha256_final_hex(struct dmt_sha256 *s, char out[65]);

/* dmt_base64_encode writes the base64 (RFC 4648 §4) of in[0..len) and a NUL to out, which must
 * hold 4 * ((len + 2) / 3) + 1 bytes. */
void dmt_base64_encode(char *out, const unsigned char *in, size_t len);

#endif
