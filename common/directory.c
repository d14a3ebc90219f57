/*
 * directory: load, verify and index the signed directory (directory.h).
 * It must never return a directory whose signature it did not verify with
 * the pinned root, nor one that is older than allowed or expired.
 */
#include "directory.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"
#include "ids.h"
#include "sign.h"
#include "wire.h"

#define MAX_FILE_BYTES (17u << 20)

struct directory {
    Referral__V1__SignedDirectory *signed_dir;
    Referral__V1__Directory *dir;
    Referral__V1__DirectoryAgency **agencies_by_id;
    Referral__V1__DirectoryAgency **agencies_by_curve;
    Referral__V1__DirectoryBroker **brokers_by_id;
    Referral__V1__DirectoryBroker **brokers_by_curve;
    ProtobufCBinaryData *revoked;   /* sorted copy of the array of structs */
};

static int cmp_agency_id(const void *a, const void *b)
{
    return strcmp((*(Referral__V1__DirectoryAgency *const *)a)->id,
                  (*(Referral__V1__DirectoryAgency *const *)b)->id);
}

static int cmp_agency_curve(const void *a, const void *b)
{
    return memcmp((*(Referral__V1__DirectoryAgency *const *)a)->curve_public.data,
                  (*(Referral__V1__DirectoryAgency *const *)b)->curve_public.data, 32);
}

static int cmp_broker_id(const void *a, const void *b)
{
    return strcmp((*(Referral__V1__DirectoryBroker *const *)a)->id,
                  (*(Referral__V1__DirectoryBroker *const *)b)->id);
}

static int cmp_broker_curve(const void *a, const void *b)
{
    return memcmp((*(Referral__V1__DirectoryBroker *const *)a)->curve_public.data,
                  (*(Referral__V1__DirectoryBroker *const *)b)->curve_public.data, 32);
}

static int cmp_key_id(const void *a, const void *b)
{
    return memcmp(((const ProtobufCBinaryData *)a)->data, ((const ProtobufCBinaryData *)b)->data,
                  16);
}

void directory_destroy(directory **dp)
{
    if (dp == NULL || *dp == NULL)
        return;
    directory *d = *dp;
    free(d->agencies_by_id);
    free(d->agencies_by_curve);
    free(d->brokers_by_id);
    free(d->brokers_by_curve);
    free(d->revoked);
    wire_free(d->dir);
    wire_free(d->signed_dir);
    free(d);
    *dp = NULL;
}

static void *copy_sorted(void *items, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
    void *p = malloc(n ? n * size : 1);
    if (p == NULL)
        return NULL;
    if (n > 0) {
        memcpy(p, items, n * size);
        qsort(p, n, size, cmp);
    }
    return p;
}

static bool build_indexes(directory *d)
{
    const Referral__V1__Directory *x = d->dir;
    d->agencies_by_id = copy_sorted(x->agencies, x->n_agencies, sizeof *x->agencies, cmp_agency_id);
    d->agencies_by_curve = copy_sorted(x->agencies, x->n_agencies, sizeof *x->agencies,
                                       cmp_agency_curve);
    d->brokers_by_id = copy_sorted(x->brokers, x->n_brokers, sizeof *x->brokers, cmp_broker_id);
    d->brokers_by_curve = copy_sorted(x->brokers, x->n_brokers, sizeof *x->brokers,
                                      cmp_broker_curve);
    d->revoked = copy_sorted(x->revoked_key_ids, x->n_revoked_key_ids, sizeof *x->revoked_key_ids,
                             cmp_key_id);
    return d->agencies_by_id && d->agencies_by_curve && d->brokers_by_id &&
           d->brokers_by_curve && d->revoked;
}

static directory_err from_wire(wire_err e)
{
    return e == WIRE_OK ? DIRECTORY_OK : DIRECTORY_MALFORMED;
}

directory_err directory_parse(const uint8_t *buf, size_t len, const uint8_t root_pub[32],
                              uint64_t min_version, uint64_t now_ms, directory **out, char *why,
                              size_t why_len)
{
    *out = NULL;
    directory *d = calloc(1, sizeof *d);
    if (d == NULL) {
        snprintf(why, why_len, "out of memory");
        return DIRECTORY_UNREADABLE;
    }
    char detail[256];
    wire_err we = wire_decode_signed_directory(buf, len, NULL, &d->signed_dir, detail,
                                               sizeof detail);
    directory_err e = DIRECTORY_OK;
    if (we != WIRE_OK) {
        snprintf(why, why_len, "%s", detail);
        e = strstr(detail, "not signed") != NULL ? DIRECTORY_UNSIGNED : from_wire(we);
        goto fail;
    }
    uint8_t root_id[SIGN_KEY_ID_BYTES];
    char want[IDS_HEX_LEN + 1], got[IDS_HEX_LEN + 1];
    sign_key_id(root_pub, root_id);
    if (memcmp(root_id, d->signed_dir->signer_key_id.data, SIGN_KEY_ID_BYTES) != 0) {
        snprintf(why, why_len, "directory is signed by key id %s, not by the pinned trust root "
                 "(key id %s); re-sign it with referralctl directory sign and the root key",
                 ids_hex(d->signed_dir->signer_key_id.data, 16, got), ids_hex(root_id, 16, want));
        e = DIRECTORY_UNSIGNED;
        goto fail;
    }
    if (!sign_verify(root_pub, "referral.v1 directory", d->signed_dir->directory.data,
                     d->signed_dir->directory.len, d->signed_dir->signature.data)) {
        snprintf(why, why_len, "directory signature does not verify with the pinned trust root "
                 "(key id %s): the file was altered or damaged; re-sign it with referralctl "
                 "directory sign", ids_hex(root_id, 16, want));
        e = DIRECTORY_BAD_SIGNATURE;
        goto fail;
    }
    we = wire_decode_directory(d->signed_dir->directory.data, d->signed_dir->directory.len, NULL,
                               &d->dir, detail, sizeof detail);
    if (we != WIRE_OK) {
        snprintf(why, why_len, "signed directory content is not valid: %s", detail);
        e = DIRECTORY_MALFORMED;
        goto fail;
    }
    if (d->dir->version < min_version) {
        snprintf(why, why_len, "directory version %" PRIu64 " is older than version %" PRIu64
                 " already in use; install the newer directory", d->dir->version, min_version);
        e = DIRECTORY_OLDER;
        goto fail;
    }
    if (d->dir->expires_at_ms <= now_ms) {
        snprintf(why, why_len, "directory version %" PRIu64 " expired %" PRIu64 " s ago; sign "
                 "and install a fresh one", d->dir->version,
                 (now_ms - d->dir->expires_at_ms) / 1000);
        e = DIRECTORY_EXPIRED;
        goto fail;
    }
    if (!build_indexes(d)) {
        snprintf(why, why_len, "out of memory");
        e = DIRECTORY_UNREADABLE;
        goto fail;
    }
    *out = d;
    return DIRECTORY_OK;
fail:
    directory_destroy(&d);
    return e;
}

directory_err directory_load(const char *path, const uint8_t root_pub[32], uint64_t min_version,
                             uint64_t now_ms, directory **out, char *why, size_t why_len)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(why, why_len, "cannot open directory %s: %s", path, strerror(errno));
        return DIRECTORY_UNREADABLE;
    }
    uint8_t *buf = malloc(MAX_FILE_BYTES + 1);
    size_t n = buf != NULL ? fread(buf, 1, MAX_FILE_BYTES + 1, f) : 0;
    bool is_error = ferror(f) != 0;
    fclose(f);
    if (buf == NULL || is_error || n > MAX_FILE_BYTES) {
        snprintf(why, why_len, "cannot read directory %s: %s", path,
                 n > MAX_FILE_BYTES ? "larger than 17 MiB" : "read error");
        free(buf);
        return DIRECTORY_UNREADABLE;
    }
    char detail[400];
    directory_err e = directory_parse(buf, n, root_pub, min_version, now_ms, out, detail,
                                      sizeof detail);
    free(buf);
    if (e != DIRECTORY_OK)
        snprintf(why, why_len, "directory %s refused: %s", path, detail);
    return e;
}

const Referral__V1__Directory *directory_get(const directory *d)
{
    return d->dir;
}

const Referral__V1__DirectoryAgency *directory_agency(const directory *d, const char *id)
{
    Referral__V1__DirectoryAgency key = {.id = (char *)(uintptr_t)id};
    Referral__V1__DirectoryAgency *kp = &key;
    Referral__V1__DirectoryAgency **hit = bsearch(&kp, d->agencies_by_id, d->dir->n_agencies,
                                                  sizeof *hit, cmp_agency_id);
    return hit != NULL ? *hit : NULL;
}

const Referral__V1__DirectoryBroker *directory_broker(const directory *d, const char *id)
{
    Referral__V1__DirectoryBroker key = {.id = (char *)(uintptr_t)id};
    Referral__V1__DirectoryBroker *kp = &key;
    Referral__V1__DirectoryBroker **hit = bsearch(&kp, d->brokers_by_id, d->dir->n_brokers,
                                                  sizeof *hit, cmp_broker_id);
    return hit != NULL ? *hit : NULL;
}

const Referral__V1__DirectoryAgency *directory_agency_by_curve(const directory *d,
                                                               const uint8_t curve_public[32])
{
    Referral__V1__DirectoryAgency key;
    key.curve_public.data = (uint8_t *)(uintptr_t)curve_public;
    key.curve_public.len = 32;
    Referral__V1__DirectoryAgency *kp = &key;
    Referral__V1__DirectoryAgency **hit = bsearch(&kp, d->agencies_by_curve, d->dir->n_agencies,
                                                  sizeof *hit, cmp_agency_curve);
    return hit != NULL ? *hit : NULL;
}

const Referral__V1__DirectoryBroker *directory_broker_by_curve(const directory *d,
                                                               const uint8_t curve_public[32])
{
    Referral__V1__DirectoryBroker key;
    key.curve_public.data = (uint8_t *)(uintptr_t)curve_public;
    key.curve_public.len = 32;
    Referral__V1__DirectoryBroker *kp = &key;
    Referral__V1__DirectoryBroker **hit = bsearch(&kp, d->brokers_by_curve, d->dir->n_brokers,
                                                  sizeof *hit, cmp_broker_curve);
    return hit != NULL ? *hit : NULL;
}

bool directory_is_revoked(const directory *d, const uint8_t key_id[16])
{
    ProtobufCBinaryData key = {.len = 16, .data = (uint8_t *)(uintptr_t)key_id};
    return bsearch(&key, d->revoked, d->dir->n_revoked_key_ids, sizeof key, cmp_key_id) != NULL;
}

void directory_digest(const directory *d, uint8_t out[32])
{
    digest_sha256(d->signed_dir->directory.data, d->signed_dir->directory.len, out);
}
