/*
 * ingress: the checks a submission passes before the broker answers
 * ACCEPTED, in order:
 *
 *   decode header -> sender is the session's agency -> no hops -> verify
 *   (the signature normally checked on a worker thread already) -> route
 *   -> dedup -> freshness and expiry -> hop limit -> binding -> room ->
 *   store
 *
 * Binding: a message is checked against what this broker recorded about
 * its referral, never against what the message says about itself. The
 * first message of a referral records its sender and the agencies it
 * addresses; a later message of that referral id from anyone else is
 * refused, and a receipt counts only when it answers a message stored
 * here, comes from an agency the referral addressed (or one on the
 * directory's escalation chain of such an agency, which an escalation may
 * have copied it to), goes back to that message's sender, and raises the
 * level that agency asserted.
 *
 * The verify stage checks the signature against the signed directory
 * (docs/security.md). Routing is local: a recipient served by another
 * broker is refused until federation adds a next-hop decision there.
 *
 * This file must never answer OK before the submission is in the turn's
 * transaction (the reply goes out only after that transaction commits),
 * and never store a second copy of a message id.
 */
#include "ingress.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "digest.h"
#include "ids.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "route.h"
#include "sign.h"

#define R(x) REFERRAL__V1__RESULT_CODE__RESULT_##x

bool ingress_signer_key(const broker *b, const Referral__V1__Envelope *env, bool is_forward,
                        uint8_t key[32])
{
    Referral__V1__RoutingHeader *h = NULL;
    if (env == NULL || wire_check_envelope(env, &b->limits, NULL, 0) != WIRE_OK ||
        wire_decode_header(env, &b->limits, &h, NULL, 0) != WIRE_OK)
        return false;
    const Referral__V1__DirectoryAgency *from = directory_agency(b->dir, h->from_agency);
    const Referral__V1__DirectoryAgency *to = directory_agency(b->dir, h->to_agency);
    bool is_needed = !is_forward || (to != NULL && strcmp(to->home_broker, b->cfg.id) == 0);
    if (from != NULL && is_needed)
        memcpy(key, from->sign_public.data, 32);
    wire_free(h);
    return from != NULL && is_needed;
}

/* The verify stage: the sender's signing key from the directory, the key
 * id the envelope names, revocation, and the Ed25519 signature over the
 * header bytes as received and the body's digest. The signature was
 * normally checked on a worker thread (chk) with the key the directory had
 * when the frame arrived; if the directory changed that key since, it is
 * checked again here. Verified once per hop; relays trust the hop. */
static Referral__V1__ResultCode verify_envelope(const broker *b,
                                                const Referral__V1__Envelope *env,
                                                const Referral__V1__RoutingHeader *h,
                                                const ingress_check *chk,
                                                char *detail, size_t detail_len)
{
    char kid[IDS_HEX_LEN + 1];
    ids_hex(env->signer_key_id.data, SIGN_KEY_ID_BYTES, kid);
    if (directory_is_revoked(b->dir, env->signer_key_id.data)) {
        snprintf(detail, detail_len, "signing key %s is revoked; sign with the agency's current "
                 "key", kid);
        return R(REVOKED_KEY);
    }
    const Referral__V1__DirectoryAgency *from = directory_agency(b->dir, h->from_agency);
    uint8_t want[SIGN_KEY_ID_BYTES];
    if (from != NULL)
        sign_key_id(from->sign_public.data, want);
    if (from == NULL || memcmp(want, env->signer_key_id.data, SIGN_KEY_ID_BYTES) != 0) {
        snprintf(detail, detail_len, "signing key %s is not %s's key in directory", kid,
                 h->from_agency);
        return R(UNKNOWN_KEY);
    }
    bool is_checked = chk != NULL && chk->is_checked &&
                      memcmp(chk->public_key, from->sign_public.data, 32) == 0;
    bool is_valid = is_checked ? chk->is_valid
                  : sign_verify_envelope(from->sign_public.data, env->header.data,
                                         env->header.len, env->sealed_body.data,
                                         env->sealed_body.len, env->signature.data);
    if (!is_valid) {
        snprintf(detail, detail_len, "signature does not verify with %s's key %s: the header "
                 "or body was altered, or signed with another key", h->from_agency, kid);
        return R(BAD_SIGNATURE);
    }
    return R(OK);
}

/* The routing step: where the envelope goes (route.h): this broker's queue
 * for a local recipient, the next hop's queue for another broker's, or a
 * refusal. recipient (IDS_NAME_MAX + 1) gets the queue's name: the agency,
 * or the peer broker. A forward is never sent back the way it came. */
static Referral__V1__ResultCode route_envelope(const broker *b,
                                               const Referral__V1__RoutingHeader *h,
                                               const char *from_peer, bool *is_local,
                                               char recipient[IDS_NAME_MAX + 1],
                                               char *detail, size_t detail_len)
{
    route_kind k = route_agency(&b->cfg, b->dir, h->to_agency, recipient, detail, detail_len);
    *is_local = k == ROUTE_LOCAL;
    if (k == ROUTE_NONE)
        return R(UNKNOWN_RECIPIENT);
    if (k == ROUTE_LOCAL)
        snprintf(recipient, IDS_NAME_MAX + 1, "%s", h->to_agency);
    else if (from_peer != NULL && strcmp(recipient, from_peer) == 0) {
        snprintf(detail, detail_len, "the route to %s leads back to %s, which sent it: the "
                 "route tables of the two brokers disagree", h->to_agency, from_peer);
        return R(LOOP);
    }
    return R(OK);
}

/* SHA-256 over len(header) as 4 big-endian bytes, header, sealed body: the
 * content that dedup compares (hops are not content). */
static bool content_digest(const Referral__V1__Envelope *env, uint8_t out[DIGEST_BYTES])
{
    uint32_t hl = (uint32_t)env->header.len;
    uint8_t be[4] = {(uint8_t)(hl >> 24), (uint8_t)(hl >> 16), (uint8_t)(hl >> 8), (uint8_t)hl};
    digest_part parts[] = {{be, sizeof be},
                           {env->header.data, env->header.len},
                           {env->sealed_body.data, env->sealed_body.len}};
    return digest_sha256_parts(parts, 3, out);
}

static void reply(broker *b, const session *sess, const Referral__V1__Submit *submit,
                  const uint8_t *message_id, Referral__V1__ResultCode code, bool is_dup,
                  const char *detail)
{
    Referral__V1__SubmitReply r = REFERRAL__V1__SUBMIT_REPLY__INIT;
    r.request_id = submit->request_id;
    if (message_id != NULL) {
        r.message_id.data = (uint8_t *)(uintptr_t)message_id;
        r.message_id.len = IDS_BYTES;
    }
    r.code = code;
    r.is_duplicate = is_dup;
    r.detail = (char *)(uintptr_t)detail;
    Referral__V1__BrokerFrame f = REFERRAL__V1__BROKER_FRAME__INIT;
    f.version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    f.body_case = REFERRAL__V1__BROKER_FRAME__BODY_SUBMIT_REPLY;
    f.submit_reply = &r;
    metrics_count_submission(code, is_dup);
    size_t len;
    uint8_t *buf = wire_pack(&f, &len);
    if (buf != NULL)
        loop_queue_frame(b, sess->rid, sess->rid_len, buf, len);
}

/* Copy of env with this broker appended to its hops, packed for storing. */
static uint8_t *pack_with_hop(const broker *b, const Referral__V1__Envelope *env, size_t *len)
{
    Referral__V1__Envelope copy = *env;
    char *hops[WIRE_MAX_HOPS + 1];
    for (size_t i = 0; i < env->n_hops; i++)
        hops[i] = env->hops[i];
    hops[env->n_hops] = (char *)(uintptr_t)b->cfg.id;
    copy.hops = hops;
    copy.n_hops = env->n_hops + 1;
    return wire_pack(&copy, len);
}

/* Is agency on the escalation chain (backup agencies, supervisor desk,
 * regional centre) that the directory lists for an agency r addressed?
 * The sender's library seals every referral for that chain, and the
 * recipient's home broker may copy it there (escalate.h): a broker on the
 * way back, which never saw the copy, admits such an agency's receipts. */
static bool is_on_chain(const broker *b, const store_referral *r, const char *agency)
{
    for (size_t i = 0; i < r->n_addressed; i++) {
        const Referral__V1__DirectoryAgency *a = directory_agency(b->dir, r->addressed[i]);
        if (a == NULL)
            continue;
        if (strcmp(a->supervisor_desk, agency) == 0 || strcmp(a->regional_centre, agency) == 0)
            return true;
        for (size_t j = 0; j < a->n_backup_agencies; j++)
            if (strcmp(a->backup_agencies[j], agency) == 0)
                return true;
    }
    return false;
}

/* The binding rules (top of this file) for h, against the store. */
static Referral__V1__ResultCode check_binding(broker *b, MDB_txn *txn,
                                              const Referral__V1__RoutingHeader *h,
                                              char *detail, size_t dlen, store_err *fault)
{
    store_referral r;
    store_err e = store_referral_get(b->st, txn, h->referral_id.data, &r);
    if (e != STORE_OK && e != STORE_NOT_FOUND) {
        *fault = e == STORE_CORRUPT ? STORE_OK : e;
        snprintf(detail, dlen, "the record of this referral is unreadable here");
        return e == STORE_CORRUPT ? R(CORRUPT) : R(INTERNAL);
    }
    bool is_known = e == STORE_OK;
    if (h->kind != REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_RECEIPT) {
        if (is_known && strcmp(r.sender, h->from_agency) != 0) {
            snprintf(detail, dlen, "referral id belongs to a referral sent by another agency; "
                     "a new referral needs a new referral id");
            return R(NOT_AUTHORIZED);
        }
        return R(OK);
    }
    store_msg m;
    e = store_msg_get(b->st, txn, h->in_reply_to.data, &m);
    if (e == STORE_NOT_FOUND || (e == STORE_OK && m.payload_kind != STORE_PAYLOAD_ENVELOPE)) {
        snprintf(detail, dlen, "receipt answers a message this broker does not know");
        return R(RECEIPT_REFUSED);
    }
    if (e != STORE_OK) {
        *fault = e;
        snprintf(detail, dlen, "store failed");
        return R(INTERNAL);
    }
    if (!is_known || memcmp(m.referral_id, h->referral_id.data, IDS_BYTES) != 0) {
        snprintf(detail, dlen, "receipt names another referral than the message it answers");
        return R(RECEIPT_REFUSED);
    }
    if (!store_referral_names(&r, h->from_agency, false) && !is_on_chain(b, &r, h->from_agency)) {
        snprintf(detail, dlen, "%s may not acknowledge this referral: it was not addressed to "
                 "it, nor is it on the escalation chain of an agency it was", h->from_agency);
        return R(RECEIPT_REFUSED);
    }
    if (strcmp(h->to_agency, m.sender) != 0) {
        snprintf(detail, dlen, "a receipt goes back to the message's sender %s, not to %s",
                 m.sender, h->to_agency);
        return R(RECEIPT_REFUSED);
    }
    uint32_t level = 0;
    e = store_level_get(b->st, txn, h->in_reply_to.data, h->from_agency, &level);
    if (e != STORE_OK && e != STORE_CORRUPT) {
        *fault = e;
        snprintf(detail, dlen, "store failed");
        return R(INTERNAL);
    }
    if ((uint32_t)h->receipt_level <= level) {
        snprintf(detail, dlen, "%s already asserted level %u for this message; levels only "
                 "move forward", h->from_agency, level);
        return R(RECEIPT_REFUSED);
    }
    return R(OK);
}

/* Record what binding needs (in the submission's child transaction): the
 * referral at its first message, a receipt's level. */
static store_err record_binding(broker *b, MDB_txn *txn, const Referral__V1__RoutingHeader *h)
{
    if (h->kind == REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_RECEIPT)
        return store_level_put(b->st, txn, h->in_reply_to.data, h->from_agency,
                               (uint32_t)h->receipt_level);
    store_referral r;
    store_err e = store_referral_get(b->st, txn, h->referral_id.data, &r);
    if (e != STORE_NOT_FOUND)
        return e == STORE_CORRUPT ? STORE_OK : e;
    memset(&r, 0, sizeof r);
    snprintf(r.sender, sizeof r.sender, "%s", h->from_agency);
    snprintf(r.addressed[r.n_addressed++], sizeof r.addressed[0], "%s", h->to_agency);
    for (size_t i = 0; i < h->n_backup_recipients && r.n_addressed < STORE_REFERRAL_MAX; i++)
        snprintf(r.addressed[r.n_addressed++], sizeof r.addressed[0], "%s",
                 h->backup_recipients[i]);
    return store_referral_put(b->st, txn, h->referral_id.data, &r);
}

typedef struct {
    broker *b;
    const Referral__V1__RoutingHeader *h;
    const Referral__V1__Envelope *env;   /* as decoded at ingress */
    bool is_home;                 /* its recipient is an agency of this broker */
    bool is_submitted;            /* from the sender's session, not a peer */
    uint64_t now_ms;
} binding_ctx;

/* What the message's store adds (same child transaction): the binding
 * records, and what escalation watches (escalate.h): a referral starts
 * its watcher, a receipt counts for the attempt of its signer. */
static store_err record_binding_in(void *ctx, MDB_txn *child)
{
    binding_ctx *bc = ctx;
    store_err e = record_binding(bc->b, child, bc->h);
    if (e != STORE_OK)
        return e;
    if (bc->h->kind == REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_RECEIPT)
        return escalate_on_receipt(&bc->b->ec, child, bc->h, bc->now_ms);
    return escalate_on_referral(&bc->b->ec, child, bc->h, bc->env->sealed_body.data,
                                bc->env->sealed_body.len, bc->is_home,
                                bc->is_submitted, bc->now_ms);
}

/* Who handed the envelope over: an agency's session (a submission) or a
 * peer broker (a forward). */
typedef struct {
    const session *sess;          /* a submission, or NULL */
    const char *peer;             /* a forward: the peer broker's id, or NULL */
} ingress_from;

/* What only a submission must pass: it comes from its sender, without hops
 * (brokers append them), and is not an alert (brokers make those). */
static Referral__V1__ResultCode check_submitter(const session *sess,
                                                const Referral__V1__Envelope *env,
                                                const Referral__V1__RoutingHeader *h,
                                                char *detail, size_t dlen)
{
    if (strcmp(h->from_agency, sess->agency) != 0) {
        snprintf(detail, dlen, "from_agency %s is not this session's agency %s",
                 h->from_agency, sess->agency);
        return R(SENDER_MISMATCH);
    }
    if (env->n_hops > 0) {
        snprintf(detail, dlen, "hops are appended by brokers only; submit with an empty hops "
                 "list");
        return R(INVALID_FIELD);
    }
    if (h->kind == REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_ALERT) {
        snprintf(detail, dlen, "alerts are made and signed by brokers, not submitted by "
                 "agencies");
        return R(NOT_AUTHORIZED);
    }
    return R(OK);
}

/* What a forward must pass: a peer may carry only what came through it. Its
 * hops start at the sender's home broker (which took the submission) and
 * end with the peer itself, and do not include this broker (a loop). */
static Referral__V1__ResultCode check_forwarder(const broker *b, const char *peer,
                                                const Referral__V1__Envelope *env,
                                                const Referral__V1__RoutingHeader *h,
                                                char *detail, size_t dlen)
{
    const Referral__V1__DirectoryAgency *from = directory_agency(b->dir, h->from_agency);
    if (env->n_hops == 0 || strcmp(env->hops[env->n_hops - 1], peer) != 0) {
        snprintf(detail, dlen, "a forward from %s must end its hops with %s", peer, peer);
        return R(NOT_AUTHORIZED);
    }
    if (from == NULL || strcmp(env->hops[0], from->home_broker) != 0) {
        snprintf(detail, dlen, "the first hop %s is not the home broker of sender %s",
                 env->hops[0], h->from_agency);
        return R(NOT_AUTHORIZED);
    }
    if (h->kind == REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_ALERT) {
        snprintf(detail, dlen, "alerts between brokers travel as notices");
        return R(NOT_AUTHORIZED);
    }
    return R(OK);
}

static Referral__V1__ResultCode check(broker *b, MDB_txn *txn, const ingress_from *by,
                                      const Referral__V1__Envelope *env,
                                      const Referral__V1__RoutingHeader *h,
                                      const ingress_check *chk,
                                      const uint8_t digest[DIGEST_BYTES], uint64_t now_ms,
                                      bool *is_dup, char recipient[IDS_NAME_MAX + 1],
                                      char *detail, size_t dlen, store_err *fault)
{
    Referral__V1__ResultCode code = by->sess != NULL
                                        ? check_submitter(by->sess, env, h, detail, dlen)
                                        : check_forwarder(b, by->peer, env, h, detail, dlen);
    bool is_local = false;
    if (code == R(OK))
        code = route_envelope(b, h, by->peer, &is_local, recipient, detail, dlen);
    /* Verified where it is needed, once per process: where it is submitted
     * and at the recipient's home broker (escalation trusts receipts
     * there); a relay on the way trusts the hop. */
    if (code == R(OK) && (by->sess != NULL || is_local))
        code = verify_envelope(b, env, h, chk, detail, dlen);
    if (code != R(OK))
        return code;
    /* A known id first: the same content is answered OK whatever its age
     * (an outbox resending after a long outage must hear it was stored),
     * other content is a replay. */
    uint8_t seen[DIGEST_BYTES];
    store_err e = store_dedup_get(b->st, txn, h->message_id.data, seen);
    if (e == STORE_OK) {
        if (memcmp(seen, digest, DIGEST_BYTES) == 0) {
            *is_dup = true;
            snprintf(detail, dlen, "already stored");
            return R(OK);
        }
        snprintf(detail, dlen, "message id was used before with other content");
        return R(REPLAY);
    }
    if (e == STORE_CORRUPT) {   /* unreadable dedup entry (logged): refuse, never guess */
        snprintf(detail, dlen, "this broker's record of the message id is unreadable; send "
                 "the referral again with a new message id");
        return R(CORRUPT);
    }
    if (e != STORE_NOT_FOUND) {
        *fault = e;
        snprintf(detail, dlen, "store failed");
        return R(INTERNAL);
    }
    uint64_t skew = b->cfg.clock_skew_ms;
    if (by->sess != NULL &&
        (h->created_at_ms + skew < now_ms || h->created_at_ms > now_ms + skew)) {
        snprintf(detail, dlen, "created_at_ms is more than %" PRIu64 " ms from the broker's "
                 "clock (%" PRIu64 "); check the desk's clock", skew, now_ms);
        return R(REPLAY);
    }
    if (h->expires_at_ms <= now_ms) {
        snprintf(detail, dlen, "expired at %" PRIu64 ", now %" PRIu64, h->expires_at_ms, now_ms);
        return R(EXPIRED);
    }
    if (h->expires_at_ms - now_ms > b->cfg.max_ttl_ms) {
        snprintf(detail, dlen, "expires_at_ms is more than max_ttl_ms (%" PRIu64 " ms) ahead",
                 b->cfg.max_ttl_ms);
        return R(INVALID_FIELD);
    }
    for (size_t i = 0; i < env->n_hops; i++) {
        if (strcmp(env->hops[i], b->cfg.id) == 0) {
            snprintf(detail, dlen, "envelope already passed broker %s", b->cfg.id);
            return R(LOOP);
        }
    }
    if (env->n_hops + 1 > h->hop_limit) {
        snprintf(detail, dlen, "hop limit %u reached", h->hop_limit);
        return R(HOP_LIMIT);
    }
    code = check_binding(b, txn, h, detail, dlen, fault);
    if (code != R(OK))
        return code;
    char room_why[200];
    size_t size = env->header.len + env->sealed_body.len + 256;
    bool is_receipt = h->kind == REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_RECEIPT;
    if (!store_reserve(b->st, size, is_receipt, room_why, sizeof room_why)) {
        snprintf(detail, dlen, "%s; retry later", room_why);
        return R(STORE_FULL);
    }
    return R(OK);
}

/* Check env (from by) and store it in a child transaction of txn for its
 * recipient queue. *code and detail get the answer; *is_dup is set for a
 * known id with the same content. Returns a store fault only. */
static store_err accept_envelope(broker *b, MDB_txn *txn, const ingress_from *by,
                                 const Referral__V1__Envelope *env,
                                 const Referral__V1__RoutingHeader *h, const ingress_check *chk,
                                 uint64_t now_ms, Referral__V1__ResultCode *code, bool *is_dup,
                                 char *detail, size_t dlen)
{
    uint8_t digest[DIGEST_BYTES];
    char recipient[IDS_NAME_MAX + 1] = "";
    store_err fault = STORE_OK;
    *is_dup = false;
    detail[0] = '\0';
    if (!content_digest(env, digest)) {
        *code = R(BUSY);
        snprintf(detail, dlen, "out of memory; retry later");
        return STORE_OK;
    }
    *code = check(b, txn, by, env, h, chk, digest, now_ms, is_dup, recipient, detail, dlen,
                  &fault);
    if (*code != R(OK) || *is_dup || fault != STORE_OK)
        return fault;
    size_t len;
    uint8_t *payload = pack_with_hop(b, env, &len);
    store_msg m;
    memset(&m, 0, sizeof m);
    memcpy(m.id, h->message_id.data, IDS_BYTES);
    memcpy(m.referral_id, h->referral_id.data, IDS_BYTES);
    memcpy(m.content_digest, digest, DIGEST_BYTES);
    m.urgency = (uint8_t)h->urgency;
    m.payload_kind = STORE_PAYLOAD_ENVELOPE;
    m.created_at_ms = h->created_at_ms;
    m.expires_at_ms = h->expires_at_ms;
    snprintf(m.recipient, sizeof m.recipient, "%s", recipient);
    snprintf(m.sender, sizeof m.sender, "%s", h->from_agency);
    binding_ctx bc = {b, h, env, strcmp(recipient, h->to_agency) == 0,
                      by->sess != NULL, now_ms};
    store_err e = delivery_enqueue_alone(&b->dc, txn, &m, payload, len, now_ms,
                                         record_binding_in, &bc);
    free(payload);
    if (e == STORE_FULL) {
        *code = R(STORE_FULL);
        snprintf(detail, dlen, "the store has no room for this message; retry later");
        return STORE_OK;
    }
    return e;
}

static void log_outcome(const char *verb, const char *via, const Referral__V1__RoutingHeader *h,
                        Referral__V1__ResultCode code, bool is_dup, const char *detail)
{
    char idhex[IDS_HEX_LEN + 1], rhex[IDS_HEX_LEN + 1];
    ids_hex(h->message_id.data, IDS_BYTES, idhex);
    if (code == R(OK))
        log_info("ingress", "%s referral=%s msg=%s from=%s to=%s urgency=%d via=%s",
                 is_dup ? "duplicate" : verb, ids_hex(h->referral_id.data, IDS_BYTES, rhex),
                 idhex, h->from_agency, h->to_agency, (int)h->urgency, via);
    else
        log_warn("ingress", "refused msg=%s from=%s to=%s code=%d via=%s detail=%s", idhex,
                 h->from_agency, h->to_agency, (int)code, via, detail);
}

store_err ingress_forward(broker *b, MDB_txn *txn, const char *peer,
                          const Referral__V1__Envelope *env, const ingress_check *chk,
                          uint64_t now_ms, ingress_answer *answer)
{
    Referral__V1__RoutingHeader *h = NULL;
    memset(answer, 0, sizeof *answer);
    wire_err we = wire_check_envelope(env, &b->limits, answer->detail, sizeof answer->detail);
    if (we == WIRE_OK)
        we = wire_decode_header(env, &b->limits, &h, answer->detail, sizeof answer->detail);
    if (we != WIRE_OK) {
        log_warn("ingress", "refused unreadable forward peer=%s code=%s detail=%s", peer,
                 wire_strerror(we), answer->detail);
        answer->code = wire_result_code(we);
        return STORE_OK;
    }
    memcpy(answer->message_id, h->message_id.data, IDS_BYTES);
    ingress_from by = {.sess = NULL, .peer = peer};
    store_err fault = accept_envelope(b, txn, &by, env, h, chk, now_ms, &answer->code,
                                      &answer->is_duplicate, answer->detail,
                                      sizeof answer->detail);
    if (fault == STORE_OK)
        log_outcome("relayed-in", peer, h, answer->code, answer->is_duplicate, answer->detail);
    wire_free(h);
    return fault;
}

store_err ingress_submit(broker *b, MDB_txn *txn, const session *sess,
                         const Referral__V1__Submit *submit, const ingress_check *chk,
                         uint64_t now_ms)
{
    char detail[WIRE_MAX_TEXT];
    const Referral__V1__Envelope *env = submit->envelope;
    Referral__V1__RoutingHeader *h = NULL;
    wire_err we = wire_check_envelope(env, &b->limits, detail, sizeof detail);
    if (we == WIRE_OK)
        we = wire_decode_header(env, &b->limits, &h, detail, sizeof detail);
    if (we != WIRE_OK) {
        log_warn("ingress", "refused unreadable header agency=%s code=%s detail=%s",
                 sess->agency, wire_strerror(we), detail);
        reply(b, sess, submit, NULL, wire_result_code(we), false, detail);
        return STORE_OK;
    }
    Referral__V1__ResultCode code;
    bool is_dup;
    ingress_from by = {.sess = sess, .peer = NULL};
    store_err fault = accept_envelope(b, txn, &by, env, h, chk, now_ms, &code, &is_dup, detail,
                                      sizeof detail);
    if (fault != STORE_OK) {
        wire_free(h);
        return fault;
    }
    log_outcome("accepted", "client", h, code, is_dup, detail);
    if (code == R(OK) && !is_dup)
        metrics_count_stored(h->kind, h->receipt_level);
    reply(b, sess, submit, h->message_id.data, code, is_dup,
          code == R(OK) && !is_dup ? "stored durably" : detail);
    wire_free(h);
    return STORE_OK;
}
