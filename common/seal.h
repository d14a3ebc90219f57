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
#define SEAL_MAX_BUCKET (768u << 10)     /* the largest padded size */
/* The largest plaintext that can be sealed: every length from 0 to this has
 * a bucket (see seal_padded_size). The largest bucket less 16388, because a
 * padding field cannot fill a gap of exactly 16387 (or 130) bytes, and
 * above this the largest bucket has no next one to go to. */
#define SEAL_MAX_PLAINTEXT (SEAL_MAX_BUCKET - 16388u)   /* 770,044 bytes */

typedef enum {
    SEAL_OK = 0,
    SEAL_NOT_FOR_US,   /* no wrapped key for this agency and key */
    SEAL_BAD,          /* authentication failed: tampered, or moved to another header */
    SEAL_MALFORMED,    /* not a SealedBody of suite 1 (bad lengths or counts, or too
                        * costly to decode) */
    SEAL_TOO_LARGE,    /* sealing: plaintext over SEAL_MAX_PLAINTEXT; opening: a
                        * sealed body over 1 MiB */
    SEAL_FAILED,       /* OpenSSL failed, out of memory, or a bad recipient list */
} seal_err;

/* One reader of a body: the recipient or an agency on its escalation chain. */
typedef struct {
    const char *agency_id;                  /* borrowed; a valid id (ids_is_valid_name) */
    const uint8_t *seal_public;             /* borrowed, SEAL_PUBLIC_BYTES (X25519) */
} seal_recipient;

/* A new X25519 key pair (raw 32-byte keys). False only if OpenSSL fails. */
bool seal_keypair(uint8_t pub[SEAL_PUBLIC_BYTES], uint8_t sec[SEAL_SECRET_BYTES]);

/* Write sec to path as a PKCS#8 PEM file, created (or truncated) with mode
 * 0600 before anything is written. Load one back into sec, deriving pub;
 * the file is refused if group or others have any access to it, or if it
 * is not an X25519 key. Both return false with a sentence naming the file
 * and the problem in why (size why_len) on failure. Same rules as
 * sign_secret_save_pem(). */
bool seal_secret_save_pem(const char *path, const uint8_t sec[SEAL_SECRET_BYTES], char *why,
                          size_t why_len);
bool seal_secret_load_pem(const char *path, uint8_t sec[SEAL_SECRET_BYTES],
                          uint8_t pub[SEAL_PUBLIC_BYTES], char *why, size_t why_len);

/* The padded size of a plaintext of len bytes (docs/protocol.md, section
 * 4): the smallest bucket B with B - len >= 4 and B - len not 130 or 16387.
 * The padding field (0x7a, varint(n), n >= 1 zero bytes) takes 1 + 1 + n
 * bytes for n <= 127 and 1 + 2 + n for 128 <= n <= 16383, so it can fill
 * a gap of 3..129 or 131..16386 bytes and any gap of 16388 or more, but
 * never 130 or 16387: such a plaintext goes to the next bucket. Every len
 * from 0 to SEAL_MAX_PLAINTEXT has a padded size; 0 for larger ones. */
size_t seal_padded_size(size_t len);

/* The exact length of the serialised SealedBody that seal_body() makes for
 * a plaintext of len bytes and these n recipients (r borrowed). 0 if the
 * plaintext is too large or n is not 1..SEAL_MAX_RECIPIENTS. Put it in the
 * RoutingHeader's padded_size before sealing: the header's digest is the
 * associated data. */
size_t seal_sealed_size(size_t len, const seal_recipient *r, size_t n);

/*
 * Seal plaintext (len bytes, borrowed: a canonical serialised BodyPlaintext
 * WITHOUT its padding field) for the n recipients r (borrowed; 1 to
 * SEAL_MAX_RECIPIENTS, unique valid agency ids). header_digest is the
 * SHA-256 of the routing header bytes, bound in as associated data.
 *
 * On SEAL_OK *out gets the serialised SealedBody (caller frees with free())
 * and *out_len its length, which equals seal_sealed_size(len, r, n).
 * Errors (*out NULL, *out_len 0, a sentence in why, which may be NULL):
 * SEAL_TOO_LARGE when seal_padded_size(len) is 0; SEAL_FAILED for a bad recipient
 * list (count, duplicate or invalid id, missing or low-order public key),
 * OpenSSL failure or no memory. Key material is wiped before returning.
 */
seal_err seal_body(const uint8_t *plaintext, size_t len, const uint8_t header_digest[32],
                   const seal_recipient *r, size_t n, uint8_t **out, size_t *out_len, char *why,
                   size_t why_len);

/*
 * Open a SealedBody (sealed, len bytes, borrowed; untrusted) as agency_id
 * with its sealing key pair (seal_public must be the public key of
 * seal_secret: it selects the wrapped key by key id). header_digest is the
 * SHA-256 of the header bytes of the envelope the body came in.
 *
 * On SEAL_OK *plaintext (caller frees with free()) gets the padded
 * BodyPlaintext bytes and *plain_len their length: decode them with
 * wire_decode_plaintext(). On error *plaintext is NULL, *plain_len 0 and
 * why (may be NULL) holds a sentence:
 *   SEAL_TOO_LARGE  over 1 MiB, not decoded;
 *   SEAL_MALFORMED  not a SealedBody, bad nonce/ciphertext/key lengths,
 *                   more than SEAL_MAX_RECIPIENTS keys, or too costly to
 *                   decode (heap budget);
 *   SEAL_NOT_FOR_US no wrapped key for agency_id with this key's id;
 *   SEAL_BAD        the wrapped key or the body does not authenticate:
 *                   altered, or moved under another header;
 *   SEAL_FAILED     OpenSSL failed or no memory.
 * Nothing that failed authentication is ever returned.
 */
seal_err seal_open(const uint8_t *sealed, size_t len, const uint8_t header_digest[32],
                   const char *agency_id, const uint8_t seal_secret[SEAL_SECRET_BYTES],
                   const uint8_t seal_public[SEAL_PUBLIC_BYTES], uint8_t **plaintext,
                   size_t *plain_len, char *why, size_t why_len);

/*
 * The agencies a SealedBody (untrusted bytes, decoded under the same
 * limits as seal_open) has a wrapped key for, in the body's order: up to
 * max names into names. 0 when the bytes are not a SealedBody. Nothing is
 * opened: a broker uses this to learn whom the sender sealed a referral
 * for (the signature covers the body, so the list is the sender's).
 */
#define SEAL_READER_NAME_MAX 64
size_t seal_readers(const uint8_t *sealed, size_t len, char names[][SEAL_READER_NAME_MAX + 1],
                    size_t max);

#endif
