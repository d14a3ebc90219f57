/*
 * envelope (libreferral internal): compose a signed, sealed envelope, and
 * verify and open one that arrived. The rules are docs/protocol.md's; the
 * crypto is common/sign.c and common/seal.c, shared with the broker.
 */
#ifndef REF_CLIENT_ENVELOPE_H
#define REF_CLIENT_ENVELOPE_H

#include <stdint.h>

#include "directory.h"
#include "keys.h"
#include "referral.pb-c.h"
#include "seal.h"

/* What to compose. plaintext: a serialised BodyPlaintext (unpadded). */
typedef struct {
    Referral__V1__MessageKind kind;
    const char *to_agency;
    const char *const *backups;
    size_t n_backups;
    Referral__V1__Urgency urgency;
    uint64_t ttl_ms;
    const uint8_t *referral_id;     /* NULL: a new referral */
    const uint8_t *in_reply_to;     /* NULL or 16 bytes */
    Referral__V1__AckLevel receipt_level;   /* for kind RECEIPT: the level asserted */
    const char *policy_id;          /* NULL: none pinned (the broker's default) */
    uint32_t policy_version;
    const uint8_t *plaintext;
    size_t plaintext_len;
} envelope_spec;

/* Build, seal and sign. On 0, *out (free()) holds the packed Envelope and
 * message_id (16 bytes) its id. Returns a ref_err value. */
int envelope_compose(const keys_identity *me, const directory *dir, const envelope_spec *spec,
                     uint8_t **out, size_t *out_len, uint8_t message_id[16],
                     uint8_t referral_id[16], char *why, size_t why_len);

/* The agencies a body composed as spec says is sealed for (recipient,
 * backups and, for case content, the recipient's escalation chain), in
 * order: ids[i] are borrowed from dir. Returns a ref_err value (as
 * envelope_compose() would for the same spec). */
int envelope_readers(const directory *dir, const envelope_spec *spec,
                     const char *ids[SEAL_MAX_RECIPIENTS], size_t *n, char *why,
                     size_t why_len);

/* Check an envelope addressed to me: header, sender's key and signature
 * from the directory, then open the body. On 0, *header and *plain are
 * decoded (free with wire_free). Returns a ref_err value. */
int envelope_open(const keys_identity *me, const directory *dir,
                  const Referral__V1__Envelope *env, Referral__V1__RoutingHeader **header,
                  Referral__V1__BodyPlaintext **plain, char *why, size_t why_len);

/* As envelope_open() for the envelope inside an escalation copy
 * (AttemptCopy): it need not name me as recipient or backup, but it must
 * carry case content (kind REFERRAL or UPDATE) and its body a wrapped key
 * for me. The sender's signature covers the body, so the body's readers are
 * the sender's own list of who may read it; the broker's labels on the copy
 * are not trusted for this. */
int envelope_open_copy(const keys_identity *me, const directory *dir,
                       const Referral__V1__Envelope *env, Referral__V1__RoutingHeader **header,
                       Referral__V1__BodyPlaintext **plain, char *why, size_t why_len);

#endif
