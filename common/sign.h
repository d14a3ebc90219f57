/*
 * sign: Ed25519 signatures (libsodium; key files through OpenSSL) with
 * domain separation.
 *
 * Every signature in the federation covers ASCII domain || 0x00 || message,
 * so that a signature made for one purpose can never be replayed as
 * another. Domains: "referral.v1 envelope" (sign_envelope), "referral.v1
 * directory", "referral.v1 notice". The envelope's signing input is fixed
 * byte by byte in docs/protocol.md:
 *
 *   "referral.v1 envelope" 0x00 | uint32 BE len(header) | header | SHA-256(body)
 *
 * Key ids are the first 16 bytes of the SHA-256 of the raw public key.
 * Secrets are 32-byte Ed25519 seeds. sign.c keeps the expanded secret keys
 * it made in a small cache for the life of the process, as the broker and
 * the library keep their own keys anyway. Signatures are byte-identical to
 * OpenSSL's (and every RFC 8032 implementation's); verification refuses
 * public keys and points of small order, which no generated key has.
 */
#ifndef REF_SIGN_H
#define REF_SIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIGN_PUBLIC_BYTES 32
#define SIGN_SECRET_BYTES 32
#define SIGN_BYTES 64
#define SIGN_KEY_ID_BYTES 16

/* libsodium, initialised once for the process (thread-safe): false if it
 * cannot start. sign.c and seal.c call it before any libsodium function. */
bool sodium_ready(void);

/* A new Ed25519 key pair (raw public key, raw 32-byte seed). False only
 * if OpenSSL fails. */
bool sign_keypair(uint8_t pub[SIGN_PUBLIC_BYTES], uint8_t sec[SIGN_SECRET_BYTES]);

/* The key id of pub: the first SIGN_KEY_ID_BYTES of SHA-256(pub). */
void sign_key_id(const uint8_t pub[SIGN_PUBLIC_BYTES], uint8_t id[SIGN_KEY_ID_BYTES]);

/* Sign ASCII domain || 0x00 || msg (len bytes, borrowed; NULL if len is 0)
 * with the seed sec into sig. domain is a NUL-terminated string such as
 * "referral.v1 notice". False only if OpenSSL fails or memory runs out
 * (sig is then unspecified). */
bool sign_detached(const uint8_t sec[SIGN_SECRET_BYTES], const char *domain, const uint8_t *msg,
                   size_t len, uint8_t sig[SIGN_BYTES]);

/* True if sig is pub's signature over domain || 0x00 || msg. False for a
 * wrong key, domain, message or signature, and if OpenSSL fails. */
bool sign_verify(const uint8_t pub[SIGN_PUBLIC_BYTES], const char *domain, const uint8_t *msg,
                 size_t len, const uint8_t sig[SIGN_BYTES]);

/* Sign and verify an envelope: the header bytes exactly as sent (hlen, at
 * most UINT32_MAX) and the sealed body (blen bytes), over
 * "referral.v1 envelope" 0x00 | uint32 BE hlen | header | SHA-256(body).
 * All buffers are borrowed. sign_envelope is false only if OpenSSL fails
 * or memory runs out; sign_verify_envelope is true only for a valid
 * signature. */
bool sign_envelope(const uint8_t sec[SIGN_SECRET_BYTES], const uint8_t *header, size_t hlen,
                   const uint8_t *body, size_t blen, uint8_t sig[SIGN_BYTES]);
bool sign_verify_envelope(const uint8_t pub[SIGN_PUBLIC_BYTES], const uint8_t *header,
                          size_t hlen, const uint8_t *body, size_t blen,
                          const uint8_t sig[SIGN_BYTES]);

/* Write sec to path as a PKCS#8 PEM file, created (or truncated) with mode
 * 0600 before anything is written, and fsynced. Load one back into sec,
 * deriving pub; the file is refused if group or others have any access to
 * it ("chmod 600" is the fix the message names), or if it is not an
 * Ed25519 key. Both return false with a sentence naming the file and the
 * problem in why (size why_len) on failure. */
bool sign_secret_save_pem(const char *path, const uint8_t sec[SIGN_SECRET_BYTES], char *why,
                          size_t why_len);
bool sign_secret_load_pem(const char *path, uint8_t sec[SIGN_SECRET_BYTES],
                          uint8_t pub[SIGN_PUBLIC_BYTES], char *why, size_t why_len);

#endif
