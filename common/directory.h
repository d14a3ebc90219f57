/*
 * directory: the signed list of agencies and brokers, with their keys.
 *
 * A directory file is a SignedDirectory (referral.proto): the Directory
 * bytes signed with Ed25519 by the trust root that every broker and client
 * pins. directory_load() refuses, with a sentence that names the problem
 * and the fix, a file that is unsigned, signed by another key, does not
 * verify, is malformed, older than the version already in use, or expired.
 * Lookups are by binary search over indexes built at load.
 *
 * A loaded directory is immutable; to change it, load a new one and swap.
 */
#ifndef REF_DIRECTORY_H
#define REF_DIRECTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "referral.pb-c.h"

typedef enum {
    DIRECTORY_OK = 0,
    DIRECTORY_UNREADABLE,     /* the file cannot be read */
    DIRECTORY_MALFORMED,      /* not a valid SignedDirectory / Directory */
    DIRECTORY_UNSIGNED,       /* no signature, or signed by a key other than the root */
    DIRECTORY_BAD_SIGNATURE,  /* the signature does not verify with the pinned root */
    DIRECTORY_OLDER,          /* version below the one already in use */
    DIRECTORY_EXPIRED,        /* expires_at_ms has passed */
} directory_err;

typedef struct directory directory;

/*
 * Load and check the directory file at path against the pinned root public
 * key root_pub (32 bytes). min_version: refuse versions below it (0: any).
 * now_ms: refuse if expired at that time. On success *out is owned by the
 * caller (directory_destroy). why (why_len) gets a sentence on failure.
 */
directory_err directory_load(const char *path, const uint8_t root_pub[32], uint64_t min_version,
                             uint64_t now_ms, directory **out, char *why, size_t why_len);

/* The same from bytes in memory (borrowed). */
directory_err directory_parse(const uint8_t *buf, size_t len, const uint8_t root_pub[32],
                              uint64_t min_version, uint64_t now_ms, directory **out, char *why,
                              size_t why_len);

void directory_destroy(directory **d);

/* The decoded directory (borrowed; valid until destroy). */
const Referral__V1__Directory *directory_get(const directory *d);

/* Lookups; NULL when absent. Results are borrowed from d. */
const Referral__V1__DirectoryAgency *directory_agency(const directory *d, const char *id);
const Referral__V1__DirectoryBroker *directory_broker(const directory *d, const char *id);
const Referral__V1__DirectoryAgency *directory_agency_by_curve(const directory *d,
                                                               const uint8_t curve_public[32]);
const Referral__V1__DirectoryBroker *directory_broker_by_curve(const directory *d,
                                                               const uint8_t curve_public[32]);

/* SHA-256 of the signed Directory bytes: what identifies this directory's
 * content (two files of one version must have the same digest). */
void directory_digest(const directory *d, uint8_t out[32]);

/* True if key_id (16 bytes) is on the revoked list. */
bool directory_is_revoked(const directory *d, const uint8_t key_id[16]);

#endif
