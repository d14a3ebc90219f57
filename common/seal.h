/*
 * seal: suite 1 sealing of bodies (X25519, HKDF-SHA256, AES-256-GCM).
 *
 * A body is encrypted once under a random content key with AES-256-GCM and
 * the SHA-256 of the routing header bytes as associated data, so it cannot
 * be moved to another envelope. The content key is wrapped for each reader
 * (the recipient and its escalation chain): a fresh ephemeral X25519 key,
 * HKDF-SHA256(ikm = shared secret, salt = ephemeral public || reader
 * public, info = "referral.v1 wrap") as the wrapping key, AES-256-GCM with
 * the header digest as associated data. docs/protocol.md has the details.
 *
 * The plaintext is a serialised BodyPlaintext; seal_body pads it to a
 * size bucket (1, 4, 16, 64, 256, 768 KiB) by appending its padding field
 * (number 15), so the sealed length says little about the content.
 * Because the header carries the sealed length (padded_size) and the
 * header's digest is the associated data, seal_sealed_size() tells that
 * length before anything is sealed.
 */
#ifndef REF_SEAL_H
#define REF_SEAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SEAL_PUBLIC_BYTES 32
#define SEAL_SECRET_BYTES 32
#define SEAL_MAX_RECIPIENTS 32
#define SEAL_MAX_PLAINTEXT (768u << 10)

typedef enum {
    SEAL_OK = 0,
    SEAL_NOT_FOR_US,   /* no wrapped key for this agency and key */
    SEAL_BAD,          /* authentication failed: tampered, or moved to another header */
    SEAL_MALFORMED,    /* not a SealedBody of suite 1 */
    SEAL_TOO_LARGE,    /* plaintext above the largest bucket */
    SEAL_FAILED,       /* OpenSSL failed, out of memory, bad recipient list */
} seal_err;

typedef struct {
    const char *agency_id;                  /* borrowed */
    const uint8_t *seal_public;             /* borrowed, SEAL_PUBLIC_BYTES */
} seal_recipient;

bool seal_keypair(uint8_t pub[SEAL_PUBLIC_BYTES], uint8_t sec[SEAL_SECRET_BYTES]);
bool seal_secret_save_pem(const char *path, const uint8_t sec[SEAL_SECRET_BYTES], char *why,
                          size_t why_len);
bool seal_secret_load_pem(const char *path, uint8_t sec[SEAL_SECRET_BYTES],
                          uint8_t pub[SEAL_PUBLIC_BYTES], char *why, size_t why_len);

/* The padded size of a plaintext of len bytes (0 if too large). */
size_t seal_padded_size(size_t len);

/* The exact length of the SealedBody seal_body() makes for a plaintext of
 * len bytes and these recipients (0 if too large or n is out of range). */
size_t seal_sealed_size(size_t len, const seal_recipient *r, size_t n);

/* Seal plaintext (a serialised BodyPlaintext without padding) for the n
 * recipients. *out (caller frees with free()) gets the serialised
 * SealedBody of seal_sealed_size() bytes. */
seal_err seal_body(const uint8_t *plaintext, size_t len, const uint8_t header_digest[32],
                   const seal_recipient *r, size_t n, uint8_t **out, size_t *out_len, char *why,
                   size_t why_len);

/* Open a SealedBody as agency_id with its sealing key pair. *plaintext
 * (caller frees) gets the padded BodyPlaintext bytes: decode them with
 * wire_decode_plaintext(). */
seal_err seal_open(const uint8_t *sealed, size_t len, const uint8_t header_digest[32],
                   const char *agency_id, const uint8_t seal_secret[SEAL_SECRET_BYTES],
                   const uint8_t seal_public[SEAL_PUBLIC_BYTES], uint8_t **plaintext,
                   size_t *plain_len, char *why, size_t why_len);

#endif
