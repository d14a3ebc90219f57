/*
 * directory_source: the JSON source of the directory to a Directory message
 * (docs/operations.md, "The directory"), for referralctl directory sign.
 */
#ifndef REF_TOOLS_DIRECTORY_SOURCE_H
#define REF_TOOLS_DIRECTORY_SOURCE_H

#include <stddef.h>

#include <json-c/json.h>

#include "referral.pb-c.h"

/*
 * Build the Directory of a source: root (borrowed) is its parsed JSON
 * object; a "keys" file named relative to base is read from there. Issued
 * now, expiring "valid_days" (default 90) later. Returns the Directory
 * (caller frees it with directory_source_free), or NULL with a sentence in
 * why (size why_len) naming the entry and the fix.
 */
Referral__V1__Directory *directory_source_build(json_object *root, const char *base, char *why,
                                               size_t why_len);

/* Free a Directory made by directory_source_build (NULL is fine). */
void directory_source_free(Referral__V1__Directory *d);

/* The source's name of an AgencyKind ("police"); "" for one it has none for. */
const char *directory_source_kind_name(int kind);

#endif
