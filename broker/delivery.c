/*
 * delivery: state moves of stored messages (delivery.h).
 *
 * This file must never lose a message: every move leaves it either in a
 * queue, in flight with a return deadline, or in a final state that was
 * traced and reported to the sender. It must never report to a sender about
 * a notice (that would loop).
 */
#include "delivery.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "log.h"
#include "metrics.h"
#include "queue.h"
#include "sign.h"
#include "utf8.h"
#include "wire.h"

#define S_QUEUED REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_QUEUED
#define S_IN_FLIGHT REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_IN_FLIGHT
#define S_DELIVERED REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_DELIVERED
#define S_REJECTED REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_REJECTED
#define S_UNDELIVERABLE REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_UNDELIVERABLE
#define S_QUARANTINED REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_QUARANTINED
#define S_WITHDRAWN REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_WITHDRAWN

#define TRY(expr) do { store_err e_ = (expr); if (e_ != STORE_OK) return e_; } while (0)

bool delivery_is_move_allowed(uint8_t from, uint8_t to)
{
    switch (to) {
    case S_QUEUED: return from == 0 || from == S_IN_FLIGHT;
    case S_IN_FLIGHT: return from == S_QUEUED || from == S_IN_FLIGHT;
    case S_DELIVERED:
    case S_REJECTED:
    case S_UNDELIVERABLE: return from == S_QUEUED || from == S_IN_FLIGHT;
    case S_QUARANTINED:
    case S_WITHDRAWN: return from == S_QUEUED;
    default: return false;
    }
}

void delivery_assert_move(uint8_t from, uint8_t to)
{
    bool ok = delivery_is_move_allowed(from, to);
    assert(ok && "message state move not in delivery.h's table");
    (void)ok;
}

static void set_state(store_msg *m, uint8_t to, uint64_t now_ms)
{
    delivery_assert_move(m->state, to);
    m->state = to;
    m->updated_at_ms = now_ms;
}

bool delivery_is_final(uint8_t state)
{
    return state == S_DELIVERED || state == S_REJECTED || state == S_UNDELIVERABLE ||
           state == S_QUARANTINED || state == S_WITHDRAWN;
}

wire_payload delivery_payload_of(const store_msg *m)
{
    switch (m->payload_kind) {
    case STORE_PAYLOAD_NOTICE: return WIRE_PAYLOAD_NOTICE;
    case STORE_PAYLOAD_COPY: return WIRE_PAYLOAD_COPY;
    default: return WIRE_PAYLOAD_ENVELOPE;
    }
}

store_err delivery_trace(const delivery_ctx *dc, MDB_txn *txn, const store_msg *m,
                         Referral__V1__TraceEventKind kind, Referral__V1__ResultCode code,
                         const char *detail, uint64_t now_ms)
{
    Referral__V1__TraceEvent ev = REFERRAL__V1__TRACE_EVENT__INIT;
    ev.referral_id.data = (uint8_t *)(uintptr_t)m->referral_id;
    ev.referral_id.len = IDS_BYTES;
    ev.message_id.data = (uint8_t *)(uintptr_t)m->id;
    ev.message_id.len = IDS_BYTES;
    ev.kind = kind;
    ev.broker_id = (char *)(uintptr_t)dc->broker_id;
    ev.agency_id = (char *)(uintptr_t)m->recipient;
    ev.from_agency = (char *)(uintptr_t)m->sender;
    ev.at_ms = now_ms;
    ev.code = code;
    ev.attempt = m->attempts;
    ev.detail = (char *)(uintptr_t)(detail != NULL ? detail : "");
    uint8_t buf[1024];
    size_t n = referral__v1__trace_event__get_packed_size(&ev);
    if (n > sizeof buf)
        return STORE_OK;   /* details are capped well below this; never fail a move for it */
    referral__v1__trace_event__pack(&ev, buf);
    return store_trace_put(dc->st, txn, m->referral_id, buf, n);
}

store_err delivery_notify(const delivery_ctx *dc, MDB_txn *txn, const delivery_notice *spec,
                          uint64_t now_ms)
{
    store_msg n;
    memset(&n, 0, sizeof n);
    if (!ids_new(n.id, now_ms))
        return STORE_FAILED;
    Referral__V1__Notice notice = REFERRAL__V1__NOTICE__INIT;
    notice.notice_id.data = n.id;
    notice.notice_id.len = IDS_BYTES;
    notice.kind = spec->kind;
    notice.referral_id.data = (uint8_t *)(uintptr_t)spec->referral_id;
    notice.referral_id.len = IDS_BYTES;
    notice.message_id.data = (uint8_t *)(uintptr_t)spec->message_id;
    notice.message_id.len = IDS_BYTES;
    notice.broker_id = (char *)(uintptr_t)dc->broker_id;
    notice.about_agency = (char *)(uintptr_t)spec->about_agency;
    notice.at_ms = now_ms;
    notice.level = spec->level;
    notice.code = spec->code;
    char cut[WIRE_MAX_TEXT + 4];   /* cut below to what wire_decode_notice accepts */
    snprintf(cut, sizeof cut, "%s", spec->detail != NULL ? spec->detail : "");
    utf8_cut(cut, WIRE_MAX_TEXT);
    notice.detail = cut;
    notice.alert = (Referral__V1__Alert *)(uintptr_t)spec->alert;
    size_t nlen;
    uint8_t *nbuf = wire_pack(&notice, &nlen);
    if (nbuf == NULL)
        return STORE_FAILED;
    Referral__V1__SignedNotice sn = REFERRAL__V1__SIGNED_NOTICE__INIT;
    sn.notice.data = nbuf;
    sn.notice.len = nlen;
    uint8_t sig[SIGN_BYTES], kid[SIGN_KEY_ID_BYTES];
    if (!sign_detached(dc->sign_secret, "referral.v1 notice", nbuf, nlen, sig)) {
        free(nbuf);
        return STORE_FAILED;
    }
    sign_key_id(dc->sign_public, kid);
    sn.signature = (ProtobufCBinaryData){SIGN_BYTES, sig};
    sn.signer_key_id = (ProtobufCBinaryData){SIGN_KEY_ID_BYTES, kid};
    size_t plen;
    uint8_t *payload = wire_pack(&sn, &plen);
    free(nbuf);
    if (payload == NULL)
        return STORE_FAILED;

    memcpy(n.referral_id, spec->referral_id, IDS_BYTES);
    memcpy(n.content_digest, n.id, IDS_BYTES);   /* never submitted: no dedup content */
    n.urgency = spec->urgency;
    n.payload_kind = STORE_PAYLOAD_NOTICE;
    n.created_at_ms = now_ms;
    n.expires_at_ms = now_ms + dc->notice_ttl_ms;
    /* An agency homed at another broker hears through the next hop there. */
    const char *via = dc->route != NULL ? dc->route(dc->route_ctx, spec->to) : NULL;
    snprintf(n.recipient, sizeof n.recipient, "%s", via != NULL ? via : spec->to);
    snprintf(n.sender, sizeof n.sender, "%s", dc->broker_id);
    store_err e = delivery_enqueue(dc, txn, &n, payload, plen, now_ms);
    free(payload);
    char nhex[IDS_HEX_LEN + 1], idhex[IDS_HEX_LEN + 1];
    /* Per message, so debug (a DELIVERED notice for every referral); alerts
     * and stand-downs log their own lines at warn. */
    log_debug("delivery", "notice queued notice=%s msg=%s to=%s via=%s kind=%d code=%d",
             ids_hex(n.id, IDS_BYTES, nhex), ids_hex(spec->message_id, IDS_BYTES, idhex),
             spec->to, n.recipient, (int)spec->kind, (int)spec->code);
    return e;
}

/* Tell m's sender about a final state of m, as a notice queued for it. */
static store_err notify_sender(const delivery_ctx *dc, MDB_txn *txn, const store_msg *m,
                               Referral__V1__NoticeKind kind, Referral__V1__AckLevel level,
                               Referral__V1__ResultCode code, const char *detail,
                               uint64_t now_ms)
{
    char idhex[IDS_HEX_LEN + 1];
    if (m->payload_kind == STORE_PAYLOAD_NOTICE) {
        log_warn("delivery", "notice ended undelivered msg=%s recipient=%s code=%d",
                 ids_hex(m->id, IDS_BYTES, idhex), m->recipient, (int)code);
        return STORE_OK;
    }
    delivery_notice spec = {
        .referral_id = m->referral_id, .message_id = m->id, .to = m->sender,
        .about_agency = m->recipient, .kind = kind, .level = level, .code = code,
        .detail = detail, .alert = NULL, .urgency = m->urgency,
    };
    return delivery_notify(dc, txn, &spec, now_ms);
}

store_err delivery_enqueue(const delivery_ctx *dc, MDB_txn *txn, store_msg *m,
                           const uint8_t *payload, size_t len, uint64_t now_ms)
{
    TRY(store_next_seq(dc->st, txn, &m->seq));
    m->state = 0;
    set_state(m, S_QUEUED, now_ms);
    m->attempts = 0;
    m->due_at_ms = 0;
    uint64_t forget_at = m->expires_at_ms + dc->clock_skew_ms;
    TRY(store_body_put(dc->st, txn, m->id, payload, len));
    TRY(store_msg_put(dc->st, txn, m));
    TRY(queue_push(dc->st, txn, m));
    TRY(deadline_put(dc->st, txn, m->expires_at_ms, DEADLINE_EXPIRE, m->id));
    TRY(deadline_put(dc->st, txn, forget_at, DEADLINE_FORGET, m->id));
    TRY(store_refmsg_put(dc->st, txn, m->referral_id, m->id));
    if (m->payload_kind == STORE_PAYLOAD_ENVELOPE) {
        TRY(store_dedup_put(dc->st, txn, m->id, m->content_digest, forget_at));
        TRY(delivery_trace(dc, txn, m, REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_ACCEPTED,
                           REFERRAL__V1__RESULT_CODE__RESULT_OK, "stored durably", now_ms));
    }
    return STORE_OK;
}

/* Leave QUEUED or IN_FLIGHT for a final state: drop indexes; the body
 * goes now (grace 0) or at its DEADLINE_BODY. */
static store_err finish(const delivery_ctx *dc, MDB_txn *txn, store_msg *m, uint8_t to,
                        uint64_t now_ms)
{
    if (dc->keep_body != NULL)
        TRY(dc->keep_body(dc->on_final_ctx, txn, m));
    if (m->state == S_QUEUED) {
        store_err e = queue_remove(dc->st, txn, m);
        if (e == STORE_NOT_FOUND)   /* out of its queue: an operator holds it (queue.h) */
            e = queue_held_del(dc->st, txn, m->id);
        if (e != STORE_OK)
            return e;
    } else {
        store_err e = inflight_del(dc->st, txn, m->id);
        if (e != STORE_OK && e != STORE_NOT_FOUND)
            return e;
        e = deadline_del(dc->st, txn, m->due_at_ms, DEADLINE_RETURN, m->id);
        if (e != STORE_OK && e != STORE_NOT_FOUND)
            return e;
    }
    store_err e = deadline_del(dc->st, txn, m->expires_at_ms, DEADLINE_EXPIRE, m->id);
    if (e != STORE_OK && e != STORE_NOT_FOUND)
        return e;
    if (dc->body_grace_ms == 0) {
        e = store_body_del(dc->st, txn, m->id);
        if (e != STORE_OK && e != STORE_NOT_FOUND)
            return e;
    } else {
        uint64_t due = now_ms + dc->body_grace_ms;
        TRY(deadline_put(dc->st, txn, due < now_ms ? UINT64_MAX : due, DEADLINE_BODY, m->id));
    }
    m->due_at_ms = 0;
    set_state(m, to, now_ms);
    return store_msg_put(dc->st, txn, m);
}

/* Tell the watcher of final states (escalate.h), after the move's own
 * trace and notices. */
static store_err tell_final(const delivery_ctx *dc, MDB_txn *txn, const store_msg *m,
                            uint64_t now_ms)
{
    return dc->on_final != NULL ? dc->on_final(dc->on_final_ctx, txn, m, now_ms) : STORE_OK;
}

static store_err quarantine(const delivery_ctx *dc, MDB_txn *txn, store_msg *m, uint64_t now_ms)
{
    char idhex[IDS_HEX_LEN + 1];
    log_error("delivery", "stored body failed its digest check, quarantined msg=%s recipient=%s "
              "sender=%s", ids_hex(m->id, IDS_BYTES, idhex), m->recipient, m->sender);
    TRY(queue_remove(dc->st, txn, m));
    store_err e = store_quarantine(dc->st, txn, m->id);
    if (e != STORE_OK && e != STORE_NOT_FOUND)   /* a missing body is quarantined too */
        return e;
    e = deadline_del(dc->st, txn, m->expires_at_ms, DEADLINE_EXPIRE, m->id);
    if (e != STORE_OK && e != STORE_NOT_FOUND)
        return e;
    set_state(m, S_QUARANTINED, now_ms);
    TRY(store_msg_put(dc->st, txn, m));
    TRY(delivery_trace(dc, txn, m, REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_QUARANTINED,
                       REFERRAL__V1__RESULT_CODE__RESULT_CORRUPT, "stored copy failed its digest",
                       now_ms));
    TRY(notify_sender(dc, txn, m, REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_QUARANTINED,
                      REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_UNSPECIFIED,
                      REFERRAL__V1__RESULT_CODE__RESULT_CORRUPT,
                      "the broker's stored copy was damaged; send the referral again", now_ms));
    return tell_final(dc, txn, m, now_ms);
}

store_err delivery_take(const delivery_ctx *dc, MDB_txn *txn, const char *agency,
                        uint64_t now_ms, store_msg *m, const uint8_t **payload, size_t *len)
{
    for (int tries = 0; tries < 16; tries++) {
        uint8_t id[IDS_BYTES];
        TRY(queue_head(dc->st, txn, agency, id));
        store_err e = store_msg_get(dc->st, txn, id, m);
        if (e == STORE_NOT_FOUND) {
            /* Its record was set aside (store_msg_get logged why): the entry
             * leads nowhere. */
            char idhex[IDS_HEX_LEN + 1];
            log_warn("delivery", "queue entry without a message record dropped msg=%s "
                     "recipient=%s", ids_hex(id, IDS_BYTES, idhex), agency);
            TRY(queue_drop_head(dc->st, txn, agency));
            continue;
        }
        if (e != STORE_OK)
            return e;
        e = store_body_get(dc->st, txn, id, payload, len);
        if (e == STORE_CORRUPT || e == STORE_NOT_FOUND) {
            TRY(quarantine(dc, txn, m, now_ms));
            continue;
        }
        if (e != STORE_OK)
            return e;
        TRY(queue_remove(dc->st, txn, m));
        m->due_at_ms = now_ms + dc->ack_timeout_ms;   /* attempts: see delivery_sent */
        set_state(m, S_IN_FLIGHT, now_ms);
        TRY(inflight_put(dc->st, txn, m->id, m->due_at_ms));
        TRY(deadline_put(dc->st, txn, m->due_at_ms, DEADLINE_RETURN, m->id));
        TRY(store_msg_put(dc->st, txn, m));
        /* The body pointer may move with the writes above: read it again. */
        return store_body_get(dc->st, txn, m->id, payload, len);
    }
    return STORE_NOT_FOUND;   /* a run of corrupt bodies: the rest next turn */
}

/* Move an in-flight m back to its queue. */
static store_err requeue(const delivery_ctx *dc, MDB_txn *txn, store_msg *m, uint64_t now_ms,
                         const char *why)
{
    store_err e = inflight_del(dc->st, txn, m->id);
    if (e != STORE_OK && e != STORE_NOT_FOUND)
        return e;
    e = deadline_del(dc->st, txn, m->due_at_ms, DEADLINE_RETURN, m->id);
    if (e != STORE_OK && e != STORE_NOT_FOUND)
        return e;
    m->due_at_ms = 0;
    set_state(m, S_QUEUED, now_ms);
    TRY(queue_push(dc->st, txn, m));
    TRY(store_msg_put(dc->st, txn, m));
    char idhex[IDS_HEX_LEN + 1];
    log_info("delivery", "returned to queue msg=%s recipient=%s attempts=%u why=%s",
             ids_hex(m->id, IDS_BYTES, idhex), m->recipient, m->attempts, why);
    if (m->payload_kind != STORE_PAYLOAD_ENVELOPE)
        return STORE_OK;
    return delivery_trace(dc, txn, m, REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_REDELIVERED,
                          REFERRAL__V1__RESULT_CODE__RESULT_OK, why, now_ms);
}

/* Give m (in flight) a new return deadline at due_ms. */
static store_err reschedule(const delivery_ctx *dc, MDB_txn *txn, store_msg *m, uint64_t due_ms,
                            uint64_t now_ms)
{
    store_err e = deadline_del(dc->st, txn, m->due_at_ms, DEADLINE_RETURN, m->id);
    if (e != STORE_OK && e != STORE_NOT_FOUND)
        return e;
    m->due_at_ms = due_ms;
    set_state(m, S_IN_FLIGHT, now_ms);
    TRY(inflight_put(dc->st, txn, m->id, due_ms));
    TRY(deadline_put(dc->st, txn, due_ms, DEADLINE_RETURN, m->id));
    return store_msg_put(dc->st, txn, m);
}

store_err delivery_settle(const delivery_ctx *dc, MDB_txn *txn, const char *agency,
                          const Referral__V1__Settle *settle, uint64_t now_ms,
                          Referral__V1__ResultCode *code, const char **detail)
{
    store_msg m;
    char idhex[IDS_HEX_LEN + 1];
    const uint8_t *id = settle->message_id.data;
    store_err e = store_msg_get(dc->st, txn, id, &m);
    *code = REFERRAL__V1__RESULT_CODE__RESULT_OK;
    *detail = "";
    if (e == STORE_NOT_FOUND || (e == STORE_OK && strcmp(m.recipient, agency) != 0)) {
        /* Another agency's message answers like an unknown one: no probing. */
        *code = REFERRAL__V1__RESULT_CODE__RESULT_UNKNOWN_MESSAGE;
        *detail = "no such message for this agency";
        return STORE_OK;
    }
    if (e != STORE_OK)
        return e;
    if (delivery_is_final(m.state)) {
        bool is_repeat_ack = m.state == S_DELIVERED &&
                             settle->verb == REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_ACK;
        *code = is_repeat_ack ? REFERRAL__V1__RESULT_CODE__RESULT_OK
                              : REFERRAL__V1__RESULT_CODE__RESULT_UNKNOWN_MESSAGE;
        *detail = is_repeat_ack ? "already acknowledged" : "message is already settled";
        return STORE_OK;
    }
    const char *verb = "ack";
    switch (settle->verb) {
    case REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_ACK:
        TRY(finish(dc, txn, &m, S_DELIVERED, now_ms));
        if (m.payload_kind == STORE_PAYLOAD_ENVELOPE)
            TRY(delivery_trace(dc, txn, &m,
                               REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_ACKNOWLEDGED,
                               REFERRAL__V1__RESULT_CODE__RESULT_OK,
                               "stored by the recipient's client", now_ms));
        TRY(tell_final(dc, txn, &m, now_ms));
        break;
    case REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_REJECT: {
        verb = "reject";
        TRY(finish(dc, txn, &m, S_REJECTED, now_ms));
        char why[WIRE_MAX_TEXT + 64];
        snprintf(why, sizeof why, "refused by the recipient's client: %s", settle->reason);
        utf8_cut(why, WIRE_MAX_TEXT);   /* the decoders' limit for every detail */
        TRY(delivery_trace(dc, txn, &m, REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_REJECTED,
                           REFERRAL__V1__RESULT_CODE__RESULT_OK, why, now_ms));
        TRY(notify_sender(dc, txn, &m, REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ACK_LEVEL,
                          REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_REJECTED,
                          REFERRAL__V1__RESULT_CODE__RESULT_OK, why, now_ms));
        TRY(tell_final(dc, txn, &m, now_ms));
        break;
    }
    case REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_NAK: {
        verb = "nak";
        if (m.state != S_IN_FLIGHT) {
            *code = REFERRAL__V1__RESULT_CODE__RESULT_UNKNOWN_MESSAGE;
            *detail = "message is not in flight";
            return STORE_OK;
        }
        uint64_t delay = settle->delay_ms;
        if (delay > dc->max_nak_delay_ms)
            delay = dc->max_nak_delay_ms;
        if (delay == 0)
            TRY(requeue(dc, txn, &m, now_ms, "nak"));
        else
            TRY(reschedule(dc, txn, &m, now_ms + delay, now_ms));
        break;
    }
    case REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_IN_PROGRESS:
        verb = "in-progress";
        if (m.state != S_IN_FLIGHT) {
            *code = REFERRAL__V1__RESULT_CODE__RESULT_UNKNOWN_MESSAGE;
            *detail = "message is not in flight";
            return STORE_OK;
        }
        TRY(reschedule(dc, txn, &m, now_ms + dc->ack_timeout_ms, now_ms));
        break;
    default:
        *code = REFERRAL__V1__RESULT_CODE__RESULT_INVALID_FIELD;
        *detail = "unknown settle verb";
        return STORE_OK;
    }
    /* Per message, so debug: the trace keeps every settle (ACKNOWLEDGED). */
    log_debug("delivery", "settled msg=%s recipient=%s verb=%s attempts=%u",
             ids_hex(m.id, IDS_BYTES, idhex), m.recipient, verb, m.attempts);
    return STORE_OK;
}

/* m ends UNDELIVERABLE: traced with trace_why and its sender told
 * notice_why (NULL: the natural expiry's sentences). */
static store_err expire(const delivery_ctx *dc, MDB_txn *txn, store_msg *m, const char *trace_why,
                        const char *notice_why, uint64_t now_ms)
{
    if (trace_why == NULL)
        trace_why = "expired before the recipient acknowledged it";
    if (notice_why == NULL)
        notice_why = "expired before the recipient acknowledged it; call the agency";
    char idhex[IDS_HEX_LEN + 1];
    TRY(finish(dc, txn, m, S_UNDELIVERABLE, now_ms));
    log_warn("delivery", "undeliverable: expired before delivery msg=%s recipient=%s sender=%s "
             "attempts=%u", ids_hex(m->id, IDS_BYTES, idhex), m->recipient, m->sender,
             m->attempts);
    if (m->payload_kind == STORE_PAYLOAD_COPY)
        return tell_final(dc, txn, m, now_ms);   /* escalation re-routes; it tells the sender */
    if (m->payload_kind != STORE_PAYLOAD_ENVELOPE)
        return STORE_OK;
    metrics_count_undeliverable();
    TRY(delivery_trace(dc, txn, m, REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_EXPIRED,
                       REFERRAL__V1__RESULT_CODE__RESULT_UNDELIVERABLE, trace_why, now_ms));
    TRY(notify_sender(dc, txn, m, REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_UNDELIVERABLE,
                      REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_UNSPECIFIED,
                      REFERRAL__V1__RESULT_CODE__RESULT_UNDELIVERABLE, notice_why, now_ms));
    return tell_final(dc, txn, m, now_ms);
}

store_err delivery_fire(const delivery_ctx *dc, MDB_txn *txn, deadline_kind kind,
                        const uint8_t id[IDS_BYTES], uint64_t due_ms, uint64_t now_ms)
{
    store_msg m;
    store_err e = store_msg_get(dc->st, txn, id, &m);
    if (kind == DEADLINE_FORGET) {
        /* The dedup entry stays as long as the record (the retention sweep
         * removes both); one whose record is gone (set aside) goes now. */
        if (e != STORE_NOT_FOUND)
            return e;
        store_err d = store_dedup_del(dc->st, txn, id);
        return d == STORE_NOT_FOUND ? STORE_OK : d;
    }
    if (kind == DEADLINE_BODY) {
        /* The grace is over. A message no longer final (none today; an
         * operator's requeue one day) keeps its body. */
        if (e == STORE_OK && !delivery_is_final(m.state))
            return STORE_OK;
        if (e != STORE_OK && e != STORE_NOT_FOUND)
            return e;
        store_err d = store_body_del(dc->st, txn, id);
        return d == STORE_NOT_FOUND ? STORE_OK : d;
    }
    if (e == STORE_NOT_FOUND)
        return STORE_OK;   /* already forgotten */
    if (e != STORE_OK)
        return e;
    switch (kind) {
    case DEADLINE_RETURN:
        if (m.state == S_IN_FLIGHT && m.due_at_ms == due_ms)
            return requeue(dc, txn, &m, now_ms, "ack timeout");
        return STORE_OK;
    case DEADLINE_EXPIRE:
        if (m.state == S_QUEUED || m.state == S_IN_FLIGHT)
            return expire(dc, txn, &m, NULL, NULL, now_ms);
        return STORE_OK;
    default: {   /* deadline_pop never hands one out; never fatal all the same */
        char idhex[IDS_HEX_LEN + 1];
        log_error("delivery", "deadline of unknown kind ignored kind=%d msg=%s", (int)kind,
                  ids_hex(id, IDS_BYTES, idhex));
        return STORE_OK;
    }
    }
}

store_err delivery_return(const delivery_ctx *dc, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                          uint64_t now_ms)
{
    store_msg m;
    store_err e = store_msg_get(dc->st, txn, id, &m);
    if (e == STORE_NOT_FOUND)
        return STORE_OK;
    if (e != STORE_OK)
        return e;
    if (m.state != S_IN_FLIGHT)
        return STORE_OK;
    return requeue(dc, txn, &m, now_ms, "send failed");
}

store_err delivery_sent(const delivery_ctx *dc, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                        uint32_t attempt, uint64_t now_ms)
{
    store_msg m;
    store_err e = store_msg_get(dc->st, txn, id, &m);
    if (e == STORE_NOT_FOUND)
        return STORE_OK;
    if (e != STORE_OK)
        return e;
    if (m.attempts >= attempt)
        return STORE_OK;   /* counted already (a held frame sent twice) */
    m.attempts = attempt;
    TRY(store_msg_put(dc->st, txn, &m));
    char idhex[IDS_HEX_LEN + 1];
    log_debug("delivery", "sent msg=%s recipient=%s attempt=%u",
              ids_hex(m.id, IDS_BYTES, idhex), m.recipient, m.attempts);
    if (m.payload_kind != STORE_PAYLOAD_ENVELOPE)
        return STORE_OK;
    return delivery_trace(dc, txn, &m, REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_DELIVERED,
                          REFERRAL__V1__RESULT_CODE__RESULT_OK, "sent to the recipient's client",
                          now_ms);
}

store_err delivery_return_flight(const delivery_ctx *dc, MDB_txn *txn,
                                 const uint8_t id[IDS_BYTES], uint64_t due_at_ms,
                                 uint64_t now_ms)
{
    store_msg m;
    store_err e = store_msg_get(dc->st, txn, id, &m);
    if (e == STORE_NOT_FOUND)
        return STORE_OK;
    if (e != STORE_OK)
        return e;
    if (m.state != S_IN_FLIGHT || m.due_at_ms != due_at_ms)
        return STORE_OK;
    return requeue(dc, txn, &m, now_ms, "session ended");
}

typedef struct {
    uint8_t (*ids)[IDS_BYTES];
    size_t count, cap;
    bool is_oom;
} id_list;

static void collect(const uint8_t id[IDS_BYTES], void *ctx)
{
    id_list *l = ctx;
    if (l->count == l->cap) {
        size_t cap = l->cap == 0 ? 256 : l->cap * 2;
        void *p = realloc(l->ids, cap * IDS_BYTES);
        if (p == NULL) {
            l->is_oom = true;
            return;
        }
        l->ids = p;
        l->cap = cap;
    }
    memcpy(l->ids[l->count++], id, IDS_BYTES);
}

store_err delivery_return_all(const delivery_ctx *dc, MDB_txn *txn, uint64_t now_ms,
                              size_t *count)
{
    id_list l = {0};
    store_err e = inflight_each(dc->st, txn, collect, &l);
    if (e == STORE_OK && l.is_oom)
        e = STORE_FAILED;
    for (size_t i = 0; e == STORE_OK && i < l.count; i++) {
        store_msg m;
        e = store_msg_get(dc->st, txn, l.ids[i], &m);
        if (e == STORE_OK && m.state == S_IN_FLIGHT)
            e = requeue(dc, txn, &m, now_ms, "broker restarted");
        else if (e == STORE_NOT_FOUND)   /* its record is gone: the entry leads nowhere */
            e = inflight_del(dc->st, txn, l.ids[i]);
        if (e == STORE_NOT_FOUND)
            e = STORE_OK;
    }
    *count = l.count;
    free(l.ids);
    return e;
}

store_err delivery_relayed(const delivery_ctx *dc, MDB_txn *txn, const char *peer,
                           const uint8_t id[IDS_BYTES], uint64_t now_ms)
{
    store_msg m;
    store_err e = store_msg_get(dc->st, txn, id, &m);
    if (e == STORE_NOT_FOUND || (e == STORE_OK && (strcmp(m.recipient, peer) != 0 ||
                                                   m.state != S_IN_FLIGHT)))
        return STORE_OK;
    if (e != STORE_OK)
        return e;
    TRY(finish(dc, txn, &m, S_DELIVERED, now_ms));
    char detail[IDS_NAME_MAX + 32];
    snprintf(detail, sizeof detail, "stored by broker %s", peer);
    return delivery_trace(dc, txn, &m, REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_RELAYED,
                          REFERRAL__V1__RESULT_CODE__RESULT_OK, detail, now_ms);
}

store_err delivery_enqueue_alone(const delivery_ctx *dc, MDB_txn *txn, store_msg *m,
                                 const uint8_t *payload, size_t len, uint64_t now_ms,
                                 store_err (*also)(void *ctx, MDB_txn *child), void *ctx)
{
    MDB_txn *child = NULL;
    store_err e = payload == NULL ? STORE_FULL : store_begin_child(dc->st, txn, &child);
    if (e != STORE_OK)
        return e;
    e = delivery_enqueue(dc, child, m, payload, len, now_ms);
    if (e == STORE_OK && also != NULL)
        e = also(ctx, child);
    if (e != STORE_OK) {
        mdb_txn_abort(child);
        return e;
    }
    return store_err_from_mdb(mdb_txn_commit(child));
}

store_err delivery_withdraw(const delivery_ctx *dc, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                            const char *why, uint64_t now_ms, bool *is_withdrawn)
{
    store_msg m;
    *is_withdrawn = false;
    store_err e = store_msg_get(dc->st, txn, id, &m);
    if (e == STORE_NOT_FOUND || (e == STORE_OK && m.state != S_QUEUED))
        return STORE_OK;
    if (e != STORE_OK)
        return e;
    TRY(finish(dc, txn, &m, S_WITHDRAWN, now_ms));
    TRY(delivery_trace(dc, txn, &m, REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_WITHDRAWN,
                       REFERRAL__V1__RESULT_CODE__RESULT_OK, why, now_ms));
    char idhex[IDS_HEX_LEN + 1];
    log_info("delivery", "withdrawn undelivered msg=%s recipient=%s why=%s",
             ids_hex(m.id, IDS_BYTES, idhex), m.recipient, why);
    *is_withdrawn = true;
    return STORE_OK;
}

/* ---- operators' actions (admin_cmds.c) ----------------------------------- */

store_err delivery_requeue(const delivery_ctx *dc, MDB_txn *txn, store_msg *m, const char *why,
                           uint64_t now_ms)
{
    assert(m->state == S_IN_FLIGHT);
    return requeue(dc, txn, m, now_ms, why);
}

store_err delivery_expire(const delivery_ctx *dc, MDB_txn *txn, store_msg *m,
                          const char *trace_why, const char *notice_why, uint64_t now_ms)
{
    assert(m->state == S_QUEUED || m->state == S_IN_FLIGHT);
    return expire(dc, txn, m, trace_why, notice_why, now_ms);
}
