/*
 * keys: an identity's key files on disk, shared by referralctl, referrald
 * and libreferral.
 *
 * For an id ("qd.police.shibei") in a key directory:
 *   ID.sign.pem   Ed25519 signing key, PKCS#8 PEM, mode 0600
 *   ID.seal.pem   X25519 sealing key, PKCS#8 PEM, mode 0600
 *   ID.curve      CURVE transport key pair, Z85 ("public ...", "secret ..."), mode 0600
 *   ID.pub.json   the public parts: {"id", "sign_public" (hex), "seal_public" (hex),
 *                 "curve_public" (Z85), "sign_key_id" (hex)}; safe to share
 * Secret files that are readable by group or others are refused at load.
 */
#ifndef REF_KEYS_H
#define REF_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ids.h"

typedef struct {
    char id[IDS_NAME_MAX + 1];
    uint8_t sign_public[32], sign_secret[32];
    uint8_t seal_public[32], seal_secret[32];
    uint8_t curve_public[32], curve_secret[32];
} keys_identity;

typedef struct {
    char id[IDS_NAME_MAX + 1];
    uint8_t sign_public[32];
    uint8_t seal_public[32];
    uint8_t curve_public[32];
} keys_public;

/* Generate all three key pairs for id and write the four files into dir
 * (which must exist): ID.sign.pem, ID.seal.pem, ID.curve (0600) and
 * ID.pub.json. Without force, if any of the four exists nothing is
 * written at all. The files are written as fsynced temporary files in dir
 * and then renamed (with force) or linked (without) into place, and dir
 * is fsynced: a crash leaves the old files or the new ones, never a
 * .pub.json naming keys that are not on disk. *out gets the identity
 * (wipe it with keys_wipe). */
bool keys_generate(const char *dir, const char *id, bool force, keys_identity *out, char *why,
                   size_t why_len);

/* Load the secret files of id from dir (and derive the public keys). */
bool keys_load(const char *dir, const char *id, keys_identity *out, char *why, size_t why_len);

/* Read an ID.pub.json file. */
bool keys_load_public(const char *path, keys_public *out, char *why, size_t why_len);

/* A pinned Ed25519 public key given as 64 hex digits or as the path of a
 * .pub.json file (its sign_public). */
bool keys_parse_sign_public(const char *spec, uint8_t out[32], char *why, size_t why_len);

/* Hex of 32 bytes, and its inverse (exactly 64 hex digits). */
bool keys_from_hex32(const char *hex, uint8_t out[32]);

/* Z85 text (40 chars) of a 32-byte CURVE key, and its inverse. */
void keys_to_z85(const uint8_t key[32], char out[41]);
bool keys_from_z85(const char *z85, uint8_t out[32]);

/* Overwrite the secrets in id. */
void keys_wipe(keys_identity *id);

#endif
