/*
 * pemkey: raw 32-byte OpenSSL keys (Ed25519, X25519) to and from PKCS#8
 * PEM files of mode 0600. Used by sign.c and seal.c only.
 */
#ifndef REF_PEMKEY_H
#define REF_PEMKEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* type: EVP_PKEY_ED25519 or EVP_PKEY_X25519. */
bool pemkey_save(const char *path, int type, const uint8_t sec[32], char *why, size_t why_len);
bool pemkey_load(const char *path, int type, uint8_t sec[32], uint8_t pub[32], char *why,
                 size_t why_len);

/* The public key of a raw secret. */
bool pemkey_public(int type, const uint8_t sec[32], uint8_t pub[32]);

/* A new raw key pair. */
bool pemkey_generate(int type, uint8_t pub[32], uint8_t sec[32]);

#endif
