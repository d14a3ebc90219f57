/*
 * digest: SHA-256 through OpenSSL, for stored-envelope checks and key ids.
 */
#ifndef REF_DIGEST_H
#define REF_DIGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DIGEST_BYTES 32

/* SHA-256 of len bytes at data into out. False only if OpenSSL fails. */
bool digest_sha256(const void *data, size_t len, uint8_t out[DIGEST_BYTES]);

/* SHA-256 of the n parts one after the other (as if joined, without
 * copying them). False only if OpenSSL fails. */
typedef struct {
    const void *data;
    size_t len;
} digest_part;
bool digest_sha256_parts(const digest_part *parts, size_t n, uint8_t out[DIGEST_BYTES]);

#endif
