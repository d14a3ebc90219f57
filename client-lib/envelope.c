/*
 * envelope: composing and opening envelopes for libreferral (envelope.h).
 * It must never return a body whose signature it did not verify against
 * the directory, nor sign a header it did not build itself, nor open for an
 * agency a body its header does not address to it, except an escalation
 * copy whose sender sealed the body for that agency.
 */
#include "envelope.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "digest.h"
#include "ids.h"
#include "referral.h"
#include "seal.h"
#include "sign.h"
#include "wire.h"

/* Who can open a body: the recipient, the backups the caller named, and,
 * for case content (a referral or an update), the recipient's escalation
 * chain from the directory (backup_agencies in order, supervisor_desk,
 * regional_centre), so that a broker that copies or re-routes it on
 * escalation never needs to read it (docs/security.md, "Sealing"). Each
 * agency once; at most SEAL_MAX_RECIPIENTS. */
typedef struct {
    seal_recipient r[SEAL_MAX_RECIPIENTS];
    size_t n;
} reader_set;

static bool readers_has(const reader_set *rs, const char *id)
{
    for (size_t i = 0; i < rs->n; i++)
        if (strcmp(rs->r[i].agency_id, id) == 0)
            return true;
    return false;
}

/* Add a reader named by the caller: it must be a valid id in the directory. */
static int readers_add_named(reader_set *rs, const directory *dir, const char *id, char *why,
                             size_t why_len)
{
    if (!ids_is_valid_name(id)) {
        snprintf(why, why_len, "\"%.64s\" is not a valid agency id", id ? id : "");
        return REF_E_INVALID;
    }
    const Referral__V1__DirectoryAgency *a = directory_agency(dir, id);
    if (a == NULL) {
        snprintf(why, why_len, "agency %s is not in the directory", id);
        return REF_E_UNKNOWN_AGENCY;
    }
    if (!readers_has(rs, a->id)) {
        assert(rs->n < SEAL_MAX_RECIPIENTS && "1 + 16 named readers always fit");
        rs->r[rs->n].agency_id = a->id;
        rs->r[rs->n].seal_public = a->seal_public.data;
        rs->n++;
    }
    return REF_OK;
}

/* Add a chain agency of the recipient's directory entry. One the directory
 * does not list has no key to wrap for and is skipped (the directory's
 * signer must fix the entry); one that does not fit is refused, so that
 * escalation never meets a body its target cannot open. */
static int readers_add_chain(reader_set *rs, const directory *dir, const char *to,
                             const char *id, char *why, size_t why_len)
{
    if (id == NULL || id[0] == '\0' || readers_has(rs, id))
        return REF_OK;
    const Referral__V1__DirectoryAgency *a = directory_agency(dir, id);
    if (a == NULL)
        return REF_OK;
    if (rs->n == SEAL_MAX_RECIPIENTS) {
        snprintf(why, why_len, "the body would have more than %u readers: %s, the backups "
                 "named and %s's escalation chain in the directory; name fewer backups "
                 "(the chain is added by itself)", SEAL_MAX_RECIPIENTS, to, to);
        return REF_E_INVALID;
    }
    rs->r[rs->n].agency_id = a->id;
    rs->r[rs->n].seal_public = a->seal_public.data;
    rs->n++;
    return REF_OK;
}

static int readers_collect(reader_set *rs, const directory *dir, const envelope_spec *spec,
                           char *why, size_t why_len)
{
    rs->n = 0;
    int rc = readers_add_named(rs, dir, spec->to_agency, why, why_len);
    for (size_t i = 0; rc == REF_OK && i < spec->n_backups; i++)
        rc = readers_add_named(rs, dir, spec->backups[i], why, why_len);
    bool is_case = spec->kind == REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_REFERRAL ||
                   spec->kind == REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_UPDATE;
    if (rc != REF_OK || !is_case)
        return rc;
    const Referral__V1__DirectoryAgency *to = directory_agency(dir, spec->to_agency);
    for (size_t i = 0; rc == REF_OK && i < to->n_backup_agencies; i++)
        rc = readers_add_chain(rs, dir, to->id, to->backup_agencies[i], why, why_len);
    if (rc == REF_OK)
        rc = readers_add_chain(rs, dir, to->id, to->supervisor_desk, why, why_len);
    if (rc == REF_OK)
        rc = readers_add_chain(rs, dir, to->id, to->regional_centre, why, why_len);
    return rc;
}

int envelope_readers(const directory *dir, const envelope_spec *spec,
                     const char *ids[SEAL_MAX_RECIPIENTS], size_t *n, char *why,
                     size_t why_len)
{
    reader_set rs;
    *n = 0;
    if (spec->n_backups > 16) {
        snprintf(why, why_len, "at most 16 backup agencies");
        return REF_E_INVALID;
    }
    int rc = readers_collect(&rs, dir, spec, why, why_len);
    for (size_t i = 0; rc == REF_OK && i < rs.n; i++)
        ids[i] = rs.r[i].agency_id;
    if (rc == REF_OK)
        *n = rs.n;
    return rc;
}

int envelope_compose(const keys_identity *me, const directory *dir, const envelope_spec *spec,
                     uint8_t **out, size_t *out_len, uint8_t message_id[16],
                     uint8_t referral_id[16], char *why, size_t why_len)
{
    *out = NULL;
    if (spec->n_backups > 16) {
        snprintf(why, why_len, "at most 16 backup agencies");
        return REF_E_INVALID;
    }
    reader_set rs;
    int collected = readers_collect(&rs, dir, spec, why, why_len);
    if (collected != REF_OK)
        return collected;
    const seal_recipient *readers = rs.r;
    size_t n = rs.n;
    size_t sealed_len = seal_sealed_size(spec->plaintext_len, readers, n);
    if (sealed_len == 0) {
        snprintf(why, why_len, "case file of %zu bytes is larger than %u bytes",
                 spec->plaintext_len, SEAL_MAX_PLAINTEXT);
        return REF_E_TOO_LARGE;
    }
    uint64_t now = clock_now_ms();
    uint8_t attempt[16];
    if (!ids_new(message_id, now) || !ids_new(attempt, now) ||
        (spec->referral_id == NULL && !ids_new(referral_id, now)))
        return REF_E_NO_MEMORY;
    if (spec->referral_id != NULL)
        memcpy(referral_id, spec->referral_id, 16);

    Referral__V1__RoutingHeader h = REFERRAL__V1__ROUTING_HEADER__INIT;
    h.header_version = 1;
    h.message_id = (ProtobufCBinaryData){16, message_id};
    h.referral_id = (ProtobufCBinaryData){16, referral_id};
    h.attempt_id = (ProtobufCBinaryData){16, attempt};
    if (spec->in_reply_to != NULL)
        h.in_reply_to = (ProtobufCBinaryData){16, (uint8_t *)(uintptr_t)spec->in_reply_to};
    h.kind = spec->kind;
    h.from_agency = (char *)(uintptr_t)me->id;
    h.to_agency = (char *)(uintptr_t)spec->to_agency;
    h.backup_recipients = (char **)(uintptr_t)spec->backups;
    h.n_backup_recipients = spec->n_backups;
    h.urgency = spec->urgency;
    h.escalation_policy_id = (char *)(uintptr_t)(spec->policy_id != NULL ? spec->policy_id : "");
    h.escalation_policy_version = spec->policy_version;
    h.created_at_ms = now;
    h.expires_at_ms = now + spec->ttl_ms;
    h.hop_limit = 8;
    h.suite = REFERRAL__V1__CIPHER_SUITE__CIPHER_SUITE_ED25519_X25519_AES256GCM;
    h.receipt_level = spec->receipt_level;
    h.padded_size = (uint32_t)sealed_len;
    size_t hlen;
    uint8_t *header = wire_pack(&h, &hlen);
    if (header == NULL)
        return REF_E_NO_MEMORY;
    uint8_t digest[DIGEST_BYTES], sig[SIGN_BYTES], kid[SIGN_KEY_ID_BYTES];
    digest_sha256(header, hlen, digest);
    uint8_t *sealed = NULL;
    size_t slen = 0;
    seal_err se = seal_body(spec->plaintext, spec->plaintext_len, digest, readers, n, &sealed,
                            &slen, why, why_len);
    int rc = se == SEAL_OK ? REF_OK : se == SEAL_TOO_LARGE ? REF_E_TOO_LARGE : REF_E_INVALID;
    if (rc == REF_OK && !sign_envelope(me->sign_secret, header, hlen, sealed, slen, sig)) {
        snprintf(why, why_len, "cannot sign with the key of %s (OpenSSL refused it); check "
                 "its .sign.pem file", me->id);
        rc = REF_E_KEYS;
    }
    if (rc != REF_OK) {
        free(header);
        free(sealed);
        return rc;
    }
    sign_key_id(me->sign_public, kid);
    Referral__V1__Envelope env = REFERRAL__V1__ENVELOPE__INIT;
    env.header = (ProtobufCBinaryData){hlen, header};
    env.sealed_body = (ProtobufCBinaryData){slen, sealed};
    env.signature = (ProtobufCBinaryData){SIGN_BYTES, sig};
    env.signer_key_id = (ProtobufCBinaryData){SIGN_KEY_ID_BYTES, kid};
    env.suite = REFERRAL__V1__CIPHER_SUITE__CIPHER_SUITE_ED25519_X25519_AES256GCM;
    *out = wire_pack(&env, out_len);
    free(header);
    free(sealed);
    return *out != NULL ? REF_OK : REF_E_NO_MEMORY;
}

/* Open env for me. is_copy: an escalation copy, accepted when its body was
 * sealed for me (envelope_open_copy) rather than when its header names me. */
static int open_checked(const keys_identity *me, const directory *dir,
                        const Referral__V1__Envelope *env, bool is_copy,
                        Referral__V1__RoutingHeader **header,
                        Referral__V1__BodyPlaintext **plain, char *why, size_t why_len)
{
    *header = NULL;
    *plain = NULL;
    if (wire_check_envelope(env, NULL, why, why_len) != WIRE_OK ||
        wire_decode_header(env, NULL, header, why, why_len) != WIRE_OK)
        return REF_E_PROTOCOL;
    const Referral__V1__RoutingHeader *h = *header;
    int rc = REF_OK;
    const Referral__V1__DirectoryAgency *from = directory_agency(dir, h->from_agency);
    uint8_t kid[SIGN_KEY_ID_BYTES];
    if (from != NULL)
        sign_key_id(from->sign_public.data, kid);
    bool is_mine = strcmp(h->to_agency, me->id) == 0;
    for (size_t i = 0; !is_mine && i < h->n_backup_recipients; i++)
        is_mine = strcmp(h->backup_recipients[i], me->id) == 0;
    bool is_case = h->kind == REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_REFERRAL ||
                   h->kind == REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_UPDATE;
    if (is_copy && !is_case) {
        const ProtobufCEnumValue *k = protobuf_c_enum_descriptor_get_value(
            &referral__v1__message_kind__descriptor, (int)h->kind);
        snprintf(why, why_len, "an escalation copy must carry a referral or an update, not "
                 "a message of kind %s", k != NULL ? k->name : "?");
        rc = REF_E_PROTOCOL;
    } else if (!is_copy && !is_mine) {
        snprintf(why, why_len, "envelope is addressed to %s, not to %s", h->to_agency, me->id);
        rc = REF_E_PROTOCOL;
    } else if (from == NULL || directory_is_revoked(dir, env->signer_key_id.data) ||
               memcmp(kid, env->signer_key_id.data, SIGN_KEY_ID_BYTES) != 0) {
        snprintf(why, why_len, "sender %s or its signing key is not (or no longer) in the "
                 "directory", h->from_agency);
        rc = REF_E_PROTOCOL;
    } else if (!sign_verify_envelope(from->sign_public.data, env->header.data, env->header.len,
                                     env->sealed_body.data, env->sealed_body.len,
                                     env->signature.data)) {
        snprintf(why, why_len, "signature of %s does not verify", h->from_agency);
        rc = REF_E_PROTOCOL;
    }
    uint8_t digest[DIGEST_BYTES], *bytes = NULL;
    size_t len = 0;
    if (rc == REF_OK) {
        digest_sha256(env->header.data, env->header.len, digest);
        seal_err se = seal_open(env->sealed_body.data, env->sealed_body.len, digest, me->id,
                                me->seal_secret, me->seal_public, &bytes, &len, why, why_len);
        if (se == SEAL_NOT_FOR_US && is_copy)
            snprintf(why, why_len, "escalation copy of a referral from %s to %s whose body "
                     "%s did not seal for %s: a copy is accepted only by an agency its "
                     "sender sealed the body for", h->from_agency, h->to_agency,
                     h->from_agency, me->id);
        if (se != SEAL_OK)
            rc = REF_E_PROTOCOL;
    }
    if (rc == REF_OK && wire_decode_plaintext(bytes, len, NULL, plain, why, why_len) != WIRE_OK)
        rc = REF_E_PROTOCOL;
    free(bytes);
    if (rc != REF_OK) {
        wire_free(*header);
        *header = NULL;
    }
    return rc;
}

int envelope_open(const keys_identity *me, const directory *dir,
                  const Referral__V1__Envelope *env, Referral__V1__RoutingHeader **header,
                  Referral__V1__BodyPlaintext **plain, char *why, size_t why_len)
{
    return open_checked(me, dir, env, false, header, plain, why, why_len);
}

int envelope_open_copy(const keys_identity *me, const directory *dir,
                       const Referral__V1__Envelope *env, Referral__V1__RoutingHeader **header,
                       Referral__V1__BodyPlaintext **plain, char *why, size_t why_len)
{
    return open_checked(me, dir, env, true, header, plain, why, why_len);
}
