/*
 * ids: the identifiers of the federation.
 *
 * Agency and broker ids are short ASCII names ("qd.police.shibei"); message,
 * referral and attempt ids are 16 bytes, time ordered (48-bit big-endian
 * milliseconds, then 80 random bits, as UUIDv7). This module checks the
 * first, makes the second, and prints both for logs.
 *
 * It never trusts a length it did not measure: callers pass the bytes they
 * received, and ids_is_valid_name() rejects anything outside the grammar.
 */
#ifndef REF_IDS_H
#define REF_IDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IDS_BYTES 16          /* message, referral, attempt and notice ids */
#define IDS_HEX_LEN 32        /* hex digits of one id, without the NUL */
#define IDS_NAME_MAX 64       /* longest agency or broker id */

/* True if s is an agency or broker id: 1 to IDS_NAME_MAX characters from
 * [a-z0-9._-], beginning and ending with a letter or digit, no "..". s may
 * be NULL (false). */
bool ids_is_valid_name(const char *s);

/* Write a new time-ordered id for time now_ms into out (IDS_BYTES).
 * Returns false only if the random generator fails (nothing written then). */
bool ids_new(uint8_t out[IDS_BYTES], uint64_t now_ms);

/* The millisecond time stamped in an id made by ids_new. */
uint64_t ids_time_ms(const uint8_t id[IDS_BYTES]);

/* Lower-case hex of len bytes into out, which holds 2 * len + 1 chars.
 * Returns out. */
char *ids_hex(const uint8_t *id, size_t len, char *out);

/* Parse exactly 2 * IDS_BYTES hex digits into out. False on any other
 * input (out is then unspecified). */
bool ids_from_hex(const char *hex, uint8_t out[IDS_BYTES]);

/* Parse exactly 2 * len hex digits into out (len bytes). */
bool ids_from_hex_len(const char *hex, uint8_t *out, size_t len);

#endif
