/*
 * send: what libreferral sends (referrals and receipts) and what becomes
 * of it. Everything goes through the outbox first (hand_over), so that a
 * referral or receipt survives a crash and is sent again at every new
 * session until the broker answers; answers clear it (on_submit_reply),
 * "later" schedules it again, and a refusal nobody waits for becomes a
 * notice for the application, never silence.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <zmq.h>

#include "client_impl.h"
#include "clock.h"
#include "envelope.h"
#include "ref_version.h"
#include "sign.h"
#include "wire.h"

/* A submission nobody waits for (sent again from the outbox, or with
 * ref_send_async) was refused for good: never drop that silently. It
 * becomes a notice for the application (kept in the inbox, in the same
 * commit that drops the outbox entry) and an error in the log. */
static void refused_in_background(ref_client *c, batch *b, const Referral__V1__SubmitReply *r)
{
    char hex[REF_ID_HEX_LEN + 1] = "";
    ids_hex(r->message_id.data, 16, hex);
    const char *code = enum_name(&referral__v1__result_code__descriptor, (int)r->code);
    say(c, REF_LOG_ERROR, "broker refused a referral from the outbox msg=%s code=%s detail=%s",
        hex, code, r->detail);
    char text[700];
    snprintf(text, sizeof text, "the broker refused message %s: %s: %s; it was not sent", hex,
             code, r->detail);
    ref_delivery *d = delivery_local(r->message_id.data, text);
    state_txn *txn = batch_txn(c, b);
    if (d == NULL || txn == NULL) {
        b->is_failed = true;
        ref_delivery_destroy(&d);
        return;
    }
    state_inbox_entry entry = {.kind = STATE_INBOX_LOCAL, .urgency = REF_URGENCY_URGENT,
                               .payload = (const uint8_t *)text, .len = strlen(text)};
    batch_write(c, b, state_inbox_put(txn, r->message_id.data, &entry), "inbox");
    b->arrived[b->n_arrived++] = d;
}

/* The broker said "later" (store full, busy, stopping): send the outbox
 * entry again after RETRY_AFTER_MS. A full retry list leaves it for the
 * next session (it stays in the outbox). */
static void retry_later(ref_client *c, const uint8_t id[16])
{
    for (size_t i = 0; i < c->n_retry; i++)
        if (memcmp(c->retry[i].id, id, 16) == 0)
            return;
    if (c->n_retry == MAX_RETRY) {
        say(c, REF_LOG_WARN, "retry list full; the outbox entry waits for the next session");
        return;
    }
    memcpy(c->retry[c->n_retry].id, id, 16);
    c->retry[c->n_retry].due_ms = clock_mono_ms() + RETRY_AFTER_MS;
    c->n_retry++;
}

void resend_due(ref_client *c)
{
    uint64_t now = clock_mono_ms();
    size_t kept = 0;
    for (size_t i = 0; i < c->n_retry; i++) {
        if (c->retry[i].due_ms > now) {
            c->retry[kept++] = c->retry[i];
            continue;
        }
        uint8_t *env = NULL;
        size_t len = 0;
        if (state_outbox_get(c->st, c->retry[i].id, &env, &len) == REF_OK)
            submit_stored(c, env, len);
        free(env);
    }
    c->n_retry = kept;
}

void ref_client_set_outcome_fn(ref_client *c, ref_outcome_fn fn, void *ctx)
{
    if (c == NULL)
        return;
    c->outcome = fn;
    c->outcome_ctx = ctx;
}

static ref_err map_refusal(Referral__V1__ResultCode code);

void on_submit_reply(ref_client *c, batch *b, const Referral__V1__SubmitReply *r)
{
    bool is_transient = r->code == R(STORE_FULL) || r->code == R(BUSY) ||
                        r->code == R(SHUTTING_DOWN) || r->code == R(INTERNAL);
    bool has_id = r->message_id.len == 16;
    if (c->n_unanswered > 0)
        c->n_unanswered--;
    if (r->code != R(OK))
        set_detail(c, r->detail);
    if (has_id && !is_transient) {
        state_txn *txn = batch_txn(c, b);
        if (txn != NULL)
            batch_write(c, b, state_outbox_del(txn, r->message_id.data), "outbox");
    }
    bool is_awaited = c->is_awaiting && has_id &&
                      memcmp(r->message_id.data, c->awaited_id, 16) == 0;
    if (is_transient && has_id) {
        retry_later(c, r->message_id.data);   /* an awaited send keeps waiting */
    } else if (is_awaited) {
        c->has_answer = true;
        c->answer = r->code;
    } else if (r->code != R(OK) && has_id) {
        refused_in_background(c, b, r);
    }
    if (c->outcome != NULL && has_id && !is_transient) {
        char hex[REF_ID_HEX_LEN + 1];
        c->outcome(ids_hex(r->message_id.data, 16, hex), map_refusal(r->code), r->detail,
                   c->outcome_ctx);
    }
}

/* ---- sending -------------------------------------------------------------- */

static bool has_answer(const ref_client *c)
{
    return c->has_answer;
}

static ref_err map_refusal(Referral__V1__ResultCode code)
{
    if (code == R(OK))
        return REF_OK;
    if (code == R(TOO_LARGE))
        return REF_E_TOO_LARGE;
    if (code == R(UNKNOWN_RECIPIENT))
        return REF_E_UNKNOWN_AGENCY;
    return REF_E_REFUSED;
}

/* Queue env (owned from here on) for the next commit, which writes it to
 * the outbox (with sent, for a referral) before it is submitted. A full
 * queue is committed and submitted first. */
static ref_err queue_send(ref_client *c, uint8_t *env, size_t len, const uint8_t id[16],
                          const state_sent *sent)
{
    if (c->pending == NULL)   /* made at the first send: a listener never needs it */
        c->pending = calloc(MAX_PENDING_SENDS, sizeof c->pending[0]);
    if (c->pending == NULL) {
        free(env);
        return REF_E_NO_MEMORY;
    }
    if (c->n_pending == MAX_PENDING_SENDS && flush_sends(c) != REF_OK) {
        free(env);
        return REF_E_STATE;
    }
    struct pending_send *p = &c->pending[c->n_pending++];
    memcpy(p->id, id, 16);
    p->env = env;
    p->len = len;
    p->has_sent = sent != NULL;
    if (sent != NULL)
        p->sent = *sent;
    return REF_OK;
}

/* Drop the pending send of id (its commit failed and the caller is told). */
static void unqueue_send(ref_client *c, const uint8_t id[16])
{
    for (size_t i = 0; i < c->n_pending; i++) {
        if (memcmp(c->pending[i].id, id, 16) != 0)
            continue;
        free(c->pending[i].env);
        memmove(c->pending + i, c->pending + i + 1,
                (c->n_pending - i - 1) * sizeof c->pending[0]);
        c->n_pending--;
        return;
    }
}

/* Hand env (owned from here on) over: without wait, it is queued and the
 * next pump commits it with everything else then submits it, or, when no
 * submit awaits an answer, committed and submitted now; with wait, the
 * queue is committed and submitted now and the broker's answer awaited. */
static ref_err hand_over(ref_client *c, uint8_t *env, size_t len, const uint8_t id[16],
                         const state_sent *sent, bool wait)
{
    ref_err e = queue_send(c, env, len, id, sent);
    if (e != REF_OK)
        return e;
    if (!wait && c->n_unanswered > 0)
        return REF_OK;   /* the answers awaited will wake the pump that sends it */
    e = flush_sends(c);  /* now: the caller waits, or nothing else would wake the pump */
    if (e != REF_OK) {
        unqueue_send(c, id);   /* the caller hears it failed: never sent later */
        return e;
    }
    if (!wait)
        return REF_OK;
    memcpy(c->awaited_id, id, 16);
    c->is_awaiting = true;
    c->has_answer = false;
    e = wait_for(c, has_answer, c->timeout_ms);
    c->is_awaiting = false;
    if (e != REF_OK)
        return e;
    return map_refusal(c->answer);
}

/* Pack p, seal and sign it as spec says (spec->plaintext is filled here).
 * On REF_OK *env (free()) is the packed envelope, mid and rid its message
 * and referral ids. */
static ref_err seal_and_sign(ref_client *c, const Referral__V1__BodyPlaintext *p,
                             envelope_spec *spec, uint8_t **env, size_t *len, uint8_t mid[16],
                             uint8_t rid[16])
{
    *env = NULL;
    size_t plen;
    uint8_t *plain = wire_pack(p, &plen);
    if (plain == NULL)
        return REF_E_NO_MEMORY;
    spec->plaintext = plain;
    spec->plaintext_len = plen;
    char why[300] = "";
    ref_err e = (ref_err)envelope_compose(&c->keys, c->dir, spec, env, len, mid, rid, why,
                                          sizeof why);
    OPENSSL_cleanse(plain, plen);
    free(plain);
    if (e != REF_OK)
        set_detail(c, why);
    return e;
}

/* Seal, sign and hand over a referral (waiting for the answer if wait),
 * remembering whom its body was sealed for (recipient, backups and the
 * recipient's escalation chain, which escalation may copy it to): only
 * their receipts are shown. */
static ref_err send_body(ref_client *c, const Referral__V1__BodyPlaintext *p,
                         envelope_spec *spec, bool wait, uint8_t mid[16], uint8_t rid[16])
{
    uint8_t *env = NULL;
    size_t len = 0, n = 0;
    const char *readers[SEAL_MAX_RECIPIENTS];
    char why[300] = "";
    ref_err e = (ref_err)envelope_readers(c->dir, spec, readers, &n, why, sizeof why);
    if (e != REF_OK) {
        set_detail(c, why);
        return e;
    }
    state_sent sent = {.forget_at_ms = clock_now_ms() + spec->ttl_ms + SEEN_KEEP_MS, .n = 0};
    for (size_t i = 0; i < n && sent.n < STATE_SENT_MAX; i++)
        snprintf(sent.agencies[sent.n++], sizeof sent.agencies[0], "%s", readers[i]);
    e = seal_and_sign(c, p, spec, &env, &len, mid, rid);
    if (e != REF_OK) {
        free(env);
        return e;
    }
    return hand_over(c, env, len, mid, &sent, wait);
}

static bool is_text_ok(const char *s)
{
    return s == NULL || strnlen(s, MAX_TEXT + 1) <= MAX_TEXT;
}

static ref_err send_referral(ref_client *c, const ref_referral *r, char *mid_hex, char *rid_hex,
                             bool wait)
{
    if (c == NULL || r == NULL || r->to_agency == NULL || r->urgency < REF_URGENCY_ROUTINE ||
        r->urgency > REF_URGENCY_CRISIS || r->category < REF_CATEGORY_PROTECTION ||
        r->category > REF_CATEGORY_OTHER || (r->n_backups > 0 && r->backups == NULL) ||
        (r->escalation_policy_id != NULL && r->escalation_policy_id[0] != '\0' &&
         !ids_is_valid_name(r->escalation_policy_id)))
        return REF_E_INVALID;
    if (c->sock == NULL)
        return REF_E_CLOSED;
    if (!is_text_ok(r->narrative) || !is_text_ok(r->requested_action) ||
        !is_text_ok(r->subject_pseudonym) || !is_text_ok(r->subject_location) ||
        !is_text_ok(r->desk_case_number))
        return REF_E_TOO_LARGE;
    Referral__V1__Subject subject = REFERRAL__V1__SUBJECT__INIT;
    subject.pseudonym = (char *)(uintptr_t)(r->subject_pseudonym ? r->subject_pseudonym : "");
    subject.age_years = r->subject_age;
    subject.location = (char *)(uintptr_t)(r->subject_location ? r->subject_location : "");
    Referral__V1__CaseFile cf = REFERRAL__V1__CASE_FILE__INIT;
    cf.category = (Referral__V1__CaseCategory)r->category;
    cf.subject = &subject;
    cf.narrative = (char *)(uintptr_t)(r->narrative ? r->narrative : "");
    cf.requested_action = (char *)(uintptr_t)(r->requested_action ? r->requested_action : "");
    cf.desk_case_number = (char *)(uintptr_t)(r->desk_case_number ? r->desk_case_number : "");
    Referral__V1__BodyPlaintext p = REFERRAL__V1__BODY_PLAINTEXT__INIT;
    p.body_case = REFERRAL__V1__BODY_PLAINTEXT__BODY_CASE_FILE;
    p.case_file = &cf;
    envelope_spec spec = {
        .kind = REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_REFERRAL,
        .to_agency = r->to_agency,
        .backups = r->backups,
        .n_backups = r->n_backups,
        .urgency = (Referral__V1__Urgency)r->urgency,
        .ttl_ms = (uint64_t)(r->ttl_s ? r->ttl_s : DEFAULT_TTL_S) * 1000u,
        .policy_id = r->escalation_policy_id,
        .policy_version = r->escalation_policy_version,
    };
    uint8_t mid[16] = {0}, rid[16] = {0}, none[16] = {0};
    ref_err e = send_body(c, &p, &spec, wait, mid, rid);
    if (memcmp(mid, none, sizeof mid) == 0)
        return e;   /* refused before an envelope existed */
    if (mid_hex != NULL)
        ids_hex(mid, 16, mid_hex);
    if (rid_hex != NULL)
        ids_hex(rid, 16, rid_hex);
    char hex[REF_ID_HEX_LEN + 1];
    say(c, e == REF_OK ? REF_LOG_INFO : REF_LOG_WARN, "sent msg=%s to=%s result=%s",
        ids_hex(mid, 16, hex), r->to_agency, ref_strerror(e));
    return e;
}

ref_err ref_send(ref_client *c, const ref_referral *r, char *mid_hex, char *rid_hex)
{
    return send_referral(c, r, mid_hex, rid_hex, true);
}

ref_err ref_send_async(ref_client *c, const ref_referral *r, char *mid_hex, char *rid_hex)
{
    return send_referral(c, r, mid_hex, rid_hex, false);
}

ref_err compose_receipt(ref_client *c, const uint8_t mid[16], const state_seen *seen,
                        const uint8_t *attempt_id, ref_level level, const char *person,
                        const char *reason, uint8_t **env, size_t *len, uint8_t rmid[16])
{
    Referral__V1__Receipt rc = REFERRAL__V1__RECEIPT__INIT;
    if (attempt_id != NULL)
        rc.attempt_id = (ProtobufCBinaryData){16, (uint8_t *)(uintptr_t)attempt_id};
    rc.referral_id = (ProtobufCBinaryData){16, (uint8_t *)(uintptr_t)seen->referral_id};
    rc.message_id = (ProtobufCBinaryData){16, (uint8_t *)(uintptr_t)mid};
    rc.level = (Referral__V1__AckLevel)level;
    rc.at_ms = clock_now_ms();
    rc.agency_id = c->keys.id;
    rc.person = (char *)(uintptr_t)(person ? person : "");
    const char *text = reason != NULL ? reason : "";
    rc.reason_detail = (char *)(uintptr_t)"";
    rc.outcome_detail = (char *)(uintptr_t)"";
    rc.action_detail = (char *)(uintptr_t)"";
    if (level == REF_LEVEL_REJECTED) {
        rc.reject_reason = REFERRAL__V1__REJECT_REASON__REJECT_REASON_OTHER;
        rc.reason_detail = (char *)(uintptr_t)text;
    } else if (level == REF_LEVEL_CLOSED) {
        rc.outcome = REFERRAL__V1__OUTCOME__OUTCOME_OTHER;
        rc.outcome_detail = (char *)(uintptr_t)text;
    } else if (level == REF_LEVEL_ACTION_TAKEN) {
        rc.action_detail = (char *)(uintptr_t)text;
    } else {
        rc.reason_detail = (char *)(uintptr_t)text;
    }
    Referral__V1__BodyPlaintext p = REFERRAL__V1__BODY_PLAINTEXT__INIT;
    p.body_case = REFERRAL__V1__BODY_PLAINTEXT__BODY_RECEIPT;
    p.receipt = &rc;
    envelope_spec spec = {
        .kind = REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_RECEIPT,
        .to_agency = seen->from,
        .urgency = (Referral__V1__Urgency)(seen->urgency ? seen->urgency : 1),
        .ttl_ms = (uint64_t)DEFAULT_TTL_S * 1000u,
        .referral_id = seen->referral_id,
        .in_reply_to = mid,
        .receipt_level = (Referral__V1__AckLevel)level,
    };
    uint8_t rid[16];
    return seal_and_sign(c, &p, &spec, env, len, rmid, rid);
}

ref_err ref_acknowledge(ref_client *c, const char *mid_hex, ref_level level, const char *person,
                        const char *reason)
{
    uint8_t mid[16];
    if (c == NULL || !ids_from_hex(mid_hex, mid))
        return REF_E_INVALID;
    if (level < REF_LEVEL_RECEIVED || level > REF_LEVEL_CLOSED) {
        set_detail(c, "an agency acknowledges from RECEIVED to CLOSED; DELIVERED is the "
                   "broker's, reported to the sender when this library settles the delivery");
        return REF_E_INVALID;
    }
    if ((person == NULL || person[0] == '\0') ||
        (level == REF_LEVEL_REJECTED && (reason == NULL || reason[0] == '\0')))
        return REF_E_INVALID;
    if (!is_text_ok(person) || !is_text_ok(reason) || strnlen(person ? person : "", 200) >= 200)
        return REF_E_TOO_LARGE;
    /* Received as the referral itself, or else as an escalation copy: its
     * seen record is under the copy's id, and the receipt names the copy's
     * attempt. Either way the receipt answers the sender's message id. */
    state_seen seen;
    state_copy_ref copy;
    const uint8_t *attempt_id = NULL;
    if (state_seen_get(c->st, NULL, mid, &seen) != REF_OK) {
        if (state_copy_ref_get(c->st, mid, &copy) != REF_OK ||
            state_seen_get(c->st, NULL, copy.copy_id, &seen) != REF_OK) {
            set_detail(c, "no referral with this message id was received here");
            return REF_E_INVALID;
        }
        attempt_id = copy.attempt_id;
    }
    uint8_t *env = NULL, rmid[16];
    size_t len = 0;
    ref_err e = compose_receipt(c, mid, &seen, attempt_id, level, person, reason, &env, &len,
                                rmid);
    if (e != REF_OK) {
        free(env);
        return e;
    }
    return hand_over(c, env, len, rmid, NULL, true);
}

static bool has_status(const ref_client *c)
{
    return c->has_status;
}

ref_err ref_status(ref_client *c, const char *mid_hex, const char **state_name)
{
    uint8_t mid[16];
    if (c == NULL || state_name == NULL || !ids_from_hex(mid_hex, mid))
        return REF_E_INVALID;
    *state_name = "UNKNOWN";
    Referral__V1__StatusQuery q = REFERRAL__V1__STATUS_QUERY__INIT;
    q.request_id = ++c->next_request;
    q.message_id = (ProtobufCBinaryData){16, mid};
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_STATUS;
    f.status = &q;
    c->has_status = false;
    c->status_request = q.request_id;
    ref_err e = send_frame(c, &f);
    if (e == REF_OK)
        e = wait_for(c, has_status, c->timeout_ms);
    if (e != REF_OK)
        return e;
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
        &referral__v1__message_state__descriptor, (int)c->status_state);
    *state_name = v != NULL ? v->name + strlen("MESSAGE_STATE_") : "UNKNOWN";
    return REF_OK;
}

