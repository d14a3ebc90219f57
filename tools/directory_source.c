/*
 * directory_source: the JSON source of the directory (docs/operations.md,
 * "The directory") to the Directory message that `referralctl directory
 * sign` packs and signs. Separate from referralctl.c so that the fuzz
 * target test/fuzz/fuzz_directory_source.c can call it without main().
 */
#include "directory_source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "ids.h"
#include "keys.h"

static const char *const kind_names[] = {
    "", "hotline_desk", "youth_league", "education", "police", "womens_federation",
    "civil_affairs", "hospital", "procuratorate", "regional_centre", "other",
};

const char *directory_source_kind_name(int kind)
{
    size_t n = sizeof kind_names / sizeof kind_names[0];
    return kind_names[kind >= 0 && (size_t)kind < n ? kind : 0];
}

static int kind_from_name(const char *s)
{
    for (size_t i = 1; s != NULL && i < sizeof kind_names / sizeof kind_names[0]; i++)
        if (strcmp(s, kind_names[i]) == 0)
            return (int)i;
    return 0;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static char *dup_or_empty(const char *s)
{
    return strdup(s != NULL ? s : "");
}

/* Fill pub from "keys": "file.pub.json" (relative to base) or inline keys. */
static bool entry_keys(json_object *e, const char *base, const char *id, keys_public *pub,
                       char *why, size_t why_len)
{
    const char *file = jstr(e, "keys");
    if (file != NULL) {
        char path[1024];
        if (file[0] == '/')
            snprintf(path, sizeof path, "%s", file);
        else
            snprintf(path, sizeof path, "%s/%s", base, file);
        if (!keys_load_public(path, pub, why, why_len))
            return false;
        if (strcmp(pub->id, id) != 0) {
            snprintf(why, why_len, "%.400s holds the keys of %s, not of %s", path, pub->id, id);
            return false;
        }
        return true;
    }
    if (!keys_from_hex32(jstr(e, "sign_public"), pub->sign_public) ||
        !keys_from_z85(jstr(e, "curve_public"), pub->curve_public)) {
        snprintf(why, why_len, "entry %s needs \"keys\" (a .pub.json file) or inline "
                 "\"sign_public\" (hex), \"seal_public\" (hex) and \"curve_public\" (Z85)", id);
        return false;
    }
    const char *seal = jstr(e, "seal_public");
    if (seal != NULL && !keys_from_hex32(seal, pub->seal_public)) {
        snprintf(why, why_len, "entry %s: seal_public is not 64 hex digits", id);
        return false;
    }
    return true;
}

static ProtobufCBinaryData bin_dup(const uint8_t *p, size_t n)
{
    ProtobufCBinaryData b = {.len = n, .data = malloc(n)};
    memcpy(b.data, p, n);
    return b;
}

static char **str_array(json_object *e, const char *key, size_t *n)
{
    json_object *arr;
    *n = 0;
    if (!json_object_object_get_ex(e, key, &arr) || !json_object_is_type(arr, json_type_array))
        return NULL;
    size_t len = json_object_array_length(arr);
    char **out = calloc(len ? len : 1, sizeof *out);
    for (size_t i = 0; i < len; i++)
        out[i] = dup_or_empty(json_object_get_string(json_object_array_get_idx(arr, i)));
    *n = len;
    return out;
}

static bool build_agency(json_object *e, const char *base, Referral__V1__DirectoryAgency *a,
                         char *why, size_t why_len)
{
    referral__v1__directory_agency__init(a);
    const char *id = jstr(e, "id");
    if (!ids_is_valid_name(id)) {
        snprintf(why, why_len, "an agency has a missing or invalid \"id\"");
        return false;
    }
    a->id = strdup(id);
    a->kind = (Referral__V1__AgencyKind)kind_from_name(jstr(e, "kind"));
    if (a->kind == 0) {
        snprintf(why, why_len, "agency %s: \"kind\" must be one of hotline_desk, youth_league, "
                 "education, police, womens_federation, civil_affairs, hospital, procuratorate, "
                 "regional_centre, other", id);
        return false;
    }
    a->region = dup_or_empty(jstr(e, "region"));
    a->name = dup_or_empty(jstr(e, "name"));
    a->home_broker = dup_or_empty(jstr(e, "home_broker"));
    a->supervisor_desk = dup_or_empty(jstr(e, "supervisor_desk"));
    a->regional_centre = dup_or_empty(jstr(e, "regional_centre"));
    a->backup_agencies = str_array(e, "backup_agencies", &a->n_backup_agencies);
    keys_public pub;
    memset(&pub, 0, sizeof pub);
    if (!entry_keys(e, base, id, &pub, why, why_len))
        return false;
    a->sign_public = bin_dup(pub.sign_public, 32);
    a->seal_public = bin_dup(pub.seal_public, 32);
    a->curve_public = bin_dup(pub.curve_public, 32);
    json_object *arr;
    if (json_object_object_get_ex(e, "emergency_contacts", &arr) &&
        json_object_is_type(arr, json_type_array)) {
        size_t n = json_object_array_length(arr);
        a->emergency_contacts = calloc(n ? n : 1, sizeof *a->emergency_contacts);
        for (size_t i = 0; i < n; i++) {
            json_object *c = json_object_array_get_idx(arr, i);
            Referral__V1__EmergencyContact *ec = malloc(sizeof *ec);
            referral__v1__emergency_contact__init(ec);
            ec->label = dup_or_empty(jstr(c, "label"));
            ec->phone = dup_or_empty(jstr(c, "phone"));
            a->emergency_contacts[a->n_emergency_contacts++] = ec;
        }
    }
    return true;
}

static bool build_broker(json_object *e, const char *base, Referral__V1__DirectoryBroker *b,
                         char *why, size_t why_len)
{
    referral__v1__directory_broker__init(b);
    const char *id = jstr(e, "id");
    if (!ids_is_valid_name(id)) {
        snprintf(why, why_len, "a broker has a missing or invalid \"id\"");
        return false;
    }
    b->id = strdup(id);
    b->endpoint = dup_or_empty(jstr(e, "endpoint"));
    keys_public pub;
    memset(&pub, 0, sizeof pub);
    if (!entry_keys(e, base, id, &pub, why, why_len))
        return false;
    b->sign_public = bin_dup(pub.sign_public, 32);
    b->curve_public = bin_dup(pub.curve_public, 32);
    return true;
}

void directory_source_free(Referral__V1__Directory *d)
{
    /* Built with malloc throughout, so protobuf-c's free works on it. */
    if (d != NULL)
        protobuf_c_message_free_unpacked(&d->base, NULL);
}

static json_object *array_of(json_object *root, const char *key)
{
    json_object *arr;
    if (!json_object_object_get_ex(root, key, &arr) || !json_object_is_type(arr, json_type_array))
        return NULL;
    return arr;
}

Referral__V1__Directory *directory_source_build(json_object *root, const char *base, char *why,
                                               size_t why_len)
{
    Referral__V1__Directory *d = malloc(sizeof *d);
    referral__v1__directory__init(d);
    json_object *v;
    int64_t version = json_object_object_get_ex(root, "version", &v) ? json_object_get_int64(v)
                                                                     : 0;
    int64_t days = json_object_object_get_ex(root, "valid_days", &v) ? json_object_get_int64(v)
                                                                     : 90;
    if (version <= 0 || days <= 0 || days > 3650) {
        snprintf(why, why_len, "\"version\" must be a positive integer and \"valid_days\" 1..3650");
        directory_source_free(d);
        return NULL;
    }
    d->version = (uint64_t)version;
    d->issued_at_ms = clock_now_ms();
    d->expires_at_ms = d->issued_at_ms + (uint64_t)days * 86400000u;
    json_object *agencies = array_of(root, "agencies"), *brokers = array_of(root, "brokers");
    size_t na = agencies ? json_object_array_length(agencies) : 0;
    size_t nb = brokers ? json_object_array_length(brokers) : 0;
    d->agencies = calloc(na ? na : 1, sizeof *d->agencies);
    d->brokers = calloc(nb ? nb : 1, sizeof *d->brokers);
    bool ok = true;
    for (size_t i = 0; ok && i < na; i++) {
        Referral__V1__DirectoryAgency *a = malloc(sizeof *a);
        d->agencies[d->n_agencies++] = a;
        ok = build_agency(json_object_array_get_idx(agencies, i), base, a, why, why_len);
    }
    for (size_t i = 0; ok && i < nb; i++) {
        Referral__V1__DirectoryBroker *b = malloc(sizeof *b);
        d->brokers[d->n_brokers++] = b;
        ok = build_broker(json_object_array_get_idx(brokers, i), base, b, why, why_len);
    }
    json_object *revoked = array_of(root, "revoked_key_ids");
    size_t nr = revoked ? json_object_array_length(revoked) : 0;
    d->revoked_key_ids = calloc(nr ? nr : 1, sizeof *d->revoked_key_ids);
    for (size_t i = 0; ok && i < nr; i++) {
        uint8_t kid[16];
        if (!ids_from_hex_len(json_object_get_string(json_object_array_get_idx(revoked, i)), kid,
                              16)) {
            snprintf(why, why_len, "revoked_key_ids[%zu] is not 32 hex digits", i);
            ok = false;
            break;
        }
        d->revoked_key_ids[d->n_revoked_key_ids++] = bin_dup(kid, 16);
    }
    if (!ok) {
        directory_source_free(d);
        return NULL;
    }
    return d;
}
