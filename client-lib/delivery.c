/*
 * delivery: what libreferral receives, and the hand-over to the
 * application (referral.h, steps 1 to 4). A delivery is verified and
 * opened, then written whole to the inbox with its seen record, all in the
 * pump's one commit (batch_finish); only after that commit is it settled
 * with the broker, whose settle makes the referral DELIVERED (the broker
 * tells the sender with a notice it signs: no receipt from here). ref_delivery_done() removes it from the inbox; until then every
 * start hands it again (reload_one). An escalation copy is verified as a
 * referral, but accepted because the sender sealed the body for this
 * agency, and kept under the copy's own id; alerts and stand-downs are
 * notices, accepted from any broker of the directory for any agency.
 *
 * It must never settle what is not stored, hand over what it did not
 * verify, or drop a delivery without a trace (an entry that can no longer
 * be opened becomes a notice, never silence).
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

/* ---- deliveries ----------------------------------------------------------- */

void ref_delivery_destroy(ref_delivery **dp)
{
    if (dp == NULL || *dp == NULL)
        return;
    ref_delivery *d = *dp;
    if (d->narrative != NULL)
        OPENSSL_cleanse(d->narrative, strlen(d->narrative));
    free(d->narrative);
    free(d->requested_action);
    free(d->pseudonym);
    free(d->detail);
    free(d->contacts);
    free(d->copied_to);
    free(d);
    *dp = NULL;
}

static char *dup_text(const char *s)
{
    return strdup(s != NULL ? s : "");
}

/* A new delivery with every text set (to "" where text is NULL). */
static ref_delivery *delivery_new(ref_delivery_kind kind, const uint8_t wire_id[16],
                                  const char *narrative, const char *detail)
{
    ref_delivery *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->kind = kind;
    memcpy(d->wire_id, wire_id, 16);
    ids_hex(wire_id, 16, d->message_id);
    d->narrative = dup_text(narrative);
    d->detail = dup_text(detail);
    d->requested_action = dup_text("");
    d->pseudonym = dup_text("");
    d->contacts = dup_text("");
    d->copied_to = dup_text("");
    d->alert_kind = "";
    if (d->narrative == NULL || d->detail == NULL || d->requested_action == NULL ||
        d->pseudonym == NULL || d->contacts == NULL || d->copied_to == NULL)
        ref_delivery_destroy(&d);
    return d;
}

const char *enum_name(const ProtobufCEnumDescriptor *desc, int value)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(desc, value);
    return v != NULL ? v->name : "?";
}

/* The name of an alert kind without its prefix ("NOT_RECEIVED"); "" for
 * none. Static. */
static const char *alert_kind_name(Referral__V1__AlertKind kind)
{
    static const char prefix[] = "ALERT_KIND_";
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&referral__v1__alert_kind__descriptor, (int)kind);
    if (kind == REFERRAL__V1__ALERT_KIND__ALERT_KIND_UNSPECIFIED || v == NULL ||
        strncmp(v->name, prefix, sizeof prefix - 1) != 0)
        return "";
    return v->name + sizeof prefix - 1;
}

/* Append s to the text at *buf (size *cap, used *len), with sep before it
 * unless it is the first. False when out of memory. */
static bool text_append(char **buf, size_t *len, size_t *cap, const char *sep, const char *s)
{
    size_t add = (*len > 0 ? strlen(sep) : 0) + strlen(s);
    if (*len + add + 1 > *cap) {
        size_t cap2 = (*len + add + 1) * 2;
        char *p = realloc(*buf, cap2);
        if (p == NULL)
            return false;
        *buf = p;
        *cap = cap2;
    }
    *len += (size_t)sprintf(*buf + *len, "%s%s", *len > 0 ? sep : "", s);
    return true;
}

/* Fill d's alert fields from a (checked) alert: contacts as "label phone;
 * label phone", copies as "a, b". */
static bool fill_from_alert(ref_delivery *d, const Referral__V1__Alert *a)
{
    d->alert_kind = alert_kind_name(a->kind);
    d->alert_step = a->step;
    d->alert_round = a->round;
    char *contacts = NULL, *copied = NULL;
    size_t n1 = 0, cap1 = 0, n2 = 0, cap2 = 0;
    bool is_ok = text_append(&contacts, &n1, &cap1, "", "") &&
                 text_append(&copied, &n2, &cap2, "", "");
    for (size_t i = 0; is_ok && i < a->n_emergency_contacts; i++) {
        const Referral__V1__EmergencyContact *ec = a->emergency_contacts[i];
        char one[200];
        snprintf(one, sizeof one, "%s%s%s", ec->label, ec->label[0] && ec->phone[0] ? " " : "",
                 ec->phone);
        is_ok = text_append(&contacts, &n1, &cap1, "; ", one);
    }
    for (size_t i = 0; is_ok && i < a->n_copied_to; i++)
        is_ok = text_append(&copied, &n2, &cap2, ", ", a->copied_to[i]);
    if (!is_ok) {
        free(contacts);
        free(copied);
        return false;
    }
    free(d->contacts);
    free(d->copied_to);
    d->contacts = contacts;
    d->copied_to = copied;
    return true;
}

/* Make the delivery of a verified notice n: an alert or a stand-down for
 * any agency of the directory (a supervisor desk may never have seen the
 * referral), any other notice as before. */
static ref_delivery *delivery_of_notice(const uint8_t wire_id[16], const Referral__V1__Notice *n)
{
    bool is_alert = n->kind == REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ALERT;
    bool is_stand_down = n->kind == REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_STAND_DOWN;
    const Referral__V1__Alert *a = n->alert;
    char text[700];
    if (is_alert || is_stand_down)
        snprintf(text, sizeof text, "%s", n->detail[0] || a == NULL ? n->detail : a->detail);
    else
        snprintf(text, sizeof text, "%s: %s (about %s)",
                 enum_name(&referral__v1__notice_kind__descriptor, (int)n->kind), n->detail,
                 n->about_agency);
    ref_delivery_kind kind = is_alert ? REF_DELIVERY_ALERT
                           : is_stand_down ? REF_DELIVERY_STAND_DOWN : REF_DELIVERY_NOTICE;
    ref_delivery *d = delivery_new(kind, wire_id, "", text);
    if (d == NULL)
        return NULL;
    ids_hex(n->message_id.data, 16, d->message_id);
    ids_hex(n->message_id.data, 16, d->in_reply_to);
    if (n->referral_id.len == 16)
        ids_hex(n->referral_id.data, 16, d->referral_id);
    else if (a != NULL && a->referral_id.len == 16)
        ids_hex(a->referral_id.data, 16, d->referral_id);
    snprintf(d->from, sizeof d->from, "%s", n->broker_id);
    d->level = n->kind == REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ACK_LEVEL ? (int)n->level : 0;
    const char *about = is_alert && a != NULL && a->to_agency[0] ? a->to_agency
                                                                 : n->about_agency;
    snprintf(d->about_agency, sizeof d->about_agency, "%s", about);
    if ((is_alert || is_stand_down) && a != NULL && !fill_from_alert(d, a))
        ref_delivery_destroy(&d);
    return d;
}

/* Verify a notice's signature (by a broker of the directory: it may tell
 * the desk to phone an agency) and make its delivery. */
static ref_err delivery_from_notice(ref_client *c, const uint8_t wire_id[16],
                                    const Referral__V1__SignedNotice *sn, ref_delivery **out,
                                    char *why, size_t why_len)
{
    *out = NULL;
    Referral__V1__Notice *n = NULL;
    if (sn->signer_key_id.len != SIGN_KEY_ID_BYTES || sn->signature.len != SIGN_BYTES) {
        snprintf(why, why_len, "notice without a signature");
        return REF_E_PROTOCOL;
    }
    if (wire_decode_notice(sn->notice.data, sn->notice.len, NULL, &n, why, why_len) != WIRE_OK)
        return REF_E_PROTOCOL;
    const Referral__V1__DirectoryBroker *by = directory_broker(c->dir, n->broker_id);
    uint8_t kid[SIGN_KEY_ID_BYTES];
    if (by != NULL)
        sign_key_id(by->sign_public.data, kid);
    if (by == NULL || memcmp(kid, sn->signer_key_id.data, SIGN_KEY_ID_BYTES) != 0 ||
        !sign_verify(by->sign_public.data, "referral.v1 notice", sn->notice.data, sn->notice.len,
                     sn->signature.data)) {
        snprintf(why, why_len, "notice signature does not verify");
        wire_free(n);
        return REF_E_PROTOCOL;
    }
    ref_delivery *d = delivery_of_notice(wire_id, n);
    wire_free(n);
    *out = d;
    return d != NULL ? REF_OK : REF_E_NO_MEMORY;
}

/* Fill d from an opened body. */
static bool fill_from_body(ref_delivery *d, const Referral__V1__BodyPlaintext *p)
{
    char text[700];
    const char *narrative = "", *action = "", *pseudonym = "", *detail = "";
    if (p->body_case == REFERRAL__V1__BODY_PLAINTEXT__BODY_CASE_FILE) {
        const Referral__V1__CaseFile *cf = p->case_file;
        d->kind = REF_DELIVERY_REFERRAL;
        narrative = cf->narrative;
        action = cf->requested_action;
        pseudonym = cf->subject != NULL ? cf->subject->pseudonym : "";
        d->age = cf->subject != NULL ? cf->subject->age_years : 0;
    } else if (p->body_case == REFERRAL__V1__BODY_PLAINTEXT__BODY_RECEIPT) {
        const Referral__V1__Receipt *r = p->receipt;
        d->kind = REF_DELIVERY_RECEIPT;
        d->level = (int)r->level;
        snprintf(text, sizeof text, "%s by %s%s%s",
                 enum_name(&referral__v1__ack_level__descriptor, (int)r->level), r->agency_id,
                 r->person[0] ? ", " : "", r->person);
        const char *said = r->reason_detail[0] ? r->reason_detail
                         : r->outcome_detail[0] ? r->outcome_detail : r->action_detail;
        detail = said[0] ? said : text;
        narrative = text;
    } else {
        d->kind = REF_DELIVERY_REFERRAL;
        narrative = p->update != NULL ? p->update->narrative : "";
    }
    free(d->narrative);
    free(d->requested_action);
    free(d->pseudonym);
    free(d->detail);
    d->narrative = dup_text(narrative);
    d->requested_action = dup_text(action);
    d->pseudonym = dup_text(pseudonym);
    d->detail = dup_text(detail);
    return d->narrative != NULL && d->requested_action != NULL && d->pseudonym != NULL &&
           d->detail != NULL;
}

/* A receipt counts only when it is bound to what this agency recorded when
 * it sent the referral: it answers a message sent from here, its signer is
 * an agency the referral's body was sealed for (recipient, backup, or an
 * agency of the recipient's escalation chain that received it as a copy),
 * the body's agency is the signer, and body and header agree on message,
 * referral and level. */
static bool is_receipt_bound(ref_client *c, const Referral__V1__RoutingHeader *h,
                             const Referral__V1__Receipt *r, char *why, size_t why_len)
{
    state_sent sent;
    if (h->kind != REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_RECEIPT || h->in_reply_to.len != 16) {
        snprintf(why, why_len, "a receipt body in an envelope that is not a receipt");
        return false;
    }
    if (state_sent_get(c->st, h->in_reply_to.data, &sent) != REF_OK) {
        snprintf(why, why_len, "receipt for a message this agency did not send (or forgot)");
        return false;
    }
    bool is_addressed = false;
    for (size_t i = 0; i < sent.n && !is_addressed; i++)
        is_addressed = strcmp(sent.agencies[i], h->from_agency) == 0;
    if (!is_addressed) {
        snprintf(why, why_len, "receipt signed by %s, which the referral was not addressed "
                 "or sealed to", h->from_agency);
        return false;
    }
    if (strcmp(r->agency_id, h->from_agency) != 0 || r->message_id.len != 16 ||
        memcmp(r->message_id.data, h->in_reply_to.data, 16) != 0 ||
        r->referral_id.len != 16 || memcmp(r->referral_id.data, h->referral_id.data, 16) != 0 ||
        (int)r->level != (int)h->receipt_level) {
        snprintf(why, why_len, "receipt body does not match its signed header (agency, "
                 "message, referral or level)");
        return false;
    }
    return true;
}

/* Mark d an escalation copy of the referral whose (verified) header is h:
 * the original recipient is the one the sender signed, and the detail the
 * broker's reason. The broker's own label of the original recipient is
 * only a label: the signed header says whom the sender addressed. */
static bool fill_copy(ref_delivery *d, const Referral__V1__RoutingHeader *h,
                      const state_copy_labels *copy)
{
    d->is_copy = true;
    snprintf(d->original_recipient, sizeof d->original_recipient, "%s", h->to_agency);
    free(d->detail);
    d->detail = dup_text(copy->reason);
    return d->detail != NULL;
}

/* Verify and open an envelope addressed to this agency, or (copy not
 * NULL) one delivered as an escalation copy with these labels, and make its
 * delivery; seen gets what a receipt to its sender needs. */
static ref_err delivery_from_envelope(ref_client *c, const uint8_t wire_id[16],
                                      const Referral__V1__Envelope *env,
                                      const state_copy_labels *copy, ref_delivery **out,
                                      state_seen *seen, char *why, size_t why_len)
{
    *out = NULL;
    Referral__V1__RoutingHeader *h = NULL;
    Referral__V1__BodyPlaintext *p = NULL;
    ref_err e = (ref_err)(copy != NULL
                              ? envelope_open_copy(&c->keys, c->dir, env, &h, &p, why, why_len)
                              : envelope_open(&c->keys, c->dir, env, &h, &p, why, why_len));
    if (e != REF_OK)
        return e;
    bool is_receipt = p->body_case == REFERRAL__V1__BODY_PLAINTEXT__BODY_RECEIPT;
    if (is_receipt ? copy != NULL || !is_receipt_bound(c, h, p->receipt, why, why_len)
                   : h->kind == REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_RECEIPT) {
        if (!is_receipt)
            snprintf(why, why_len, "a receipt envelope without a receipt body");
        else if (copy != NULL)
            snprintf(why, why_len, "an escalation copy with a receipt body");
        wire_free(h);
        wire_free(p);
        return REF_E_PROTOCOL;
    }
    ref_delivery *d = delivery_new(REF_DELIVERY_REFERRAL, wire_id, "", "");
    if (d != NULL && fill_from_body(d, p) && (copy == NULL || fill_copy(d, h, copy))) {
        ids_hex(h->message_id.data, 16, d->message_id);
        ids_hex(h->referral_id.data, 16, d->referral_id);
        if (h->in_reply_to.len == 16)
            ids_hex(h->in_reply_to.data, 16, d->in_reply_to);
        snprintf(d->from, sizeof d->from, "%s", h->from_agency);
        d->urgency = (ref_urgency)h->urgency;
        memset(seen, 0, sizeof *seen);
        seen->forget_at_ms = h->expires_at_ms + SEEN_KEEP_MS;
        memcpy(seen->referral_id, h->referral_id.data, 16);
        snprintf(seen->from, sizeof seen->from, "%s", h->from_agency);
        seen->urgency = (uint8_t)h->urgency;
    } else {
        ref_delivery_destroy(&d);
        e = REF_E_NO_MEMORY;
    }
    wire_free(h);
    wire_free(p);
    *out = d;
    return e;
}

/* A notice the library makes itself (a referral refused for good after it
 * left the outbox). */
ref_delivery *delivery_local(const uint8_t wire_id[16], const char *text)
{
    ref_delivery *d = delivery_new(REF_DELIVERY_NOTICE, wire_id, "", text);
    if (d != NULL) {
        snprintf(d->from, sizeof d->from, "%s", "libreferral");
        d->urgency = REF_URGENCY_URGENT;
    }
    return d;
}

/* Keep d until the application takes it (takes ownership). A copy of one
 * already waiting is dropped. The queue holds what the inbox holds plus the
 * credit granted, so it cannot fill; if it does, d stays in the inbox and
 * is handed at the next start. */
void keep_ready(ref_client *c, ref_delivery *d)
{
    for (size_t i = 0; i < c->n_ready; i++) {
        if (memcmp(c->ready[i]->wire_id, d->wire_id, 16) == 0) {
            ref_delivery_destroy(&d);
            return;
        }
    }
    if (c->n_ready == MAX_READY) {
        say(c, REF_LOG_ERROR, "ready queue full, delivery waits in the inbox for the next "
            "start msg=%s", d->message_id);
        ref_delivery_destroy(&d);
        return;
    }
    /* urgency first, then arrival: a crisis is handed before routine work */
    size_t at = c->n_ready;
    while (at > 0 && c->ready[at - 1]->urgency < d->urgency)
        at--;
    memmove(c->ready + at + 1, c->ready + at, (c->n_ready - at) * sizeof c->ready[0]);
    c->ready[at] = d;
    c->n_ready++;
}

/* ---- one batch: everything a pump learned, committed once ---------------- */

state_txn *batch_txn(ref_client *c, batch *b)
{
    if (b->txn == NULL && !b->is_failed && state_begin(c->st, &b->txn) != REF_OK) {
        say(c, REF_LOG_ERROR, "cannot begin a write in the state directory");
        b->is_failed = true;
    }
    return b->is_failed ? NULL : b->txn;
}

void batch_write(ref_client *c, batch *b, int rc, const char *what)
{
    if (rc != REF_OK && !b->is_failed) {
        say(c, REF_LOG_ERROR, "state directory write failed what=%s", what);
        b->is_failed = true;
    }
}

static void batch_ack(batch *b, const uint8_t id[16])
{
    for (size_t i = 0; i < b->n_ack; i++)
        if (memcmp(b->ack[i], id, 16) == 0)
            return;
    memcpy(b->ack[b->n_ack++], id, 16);
}

/* Commit the batch; then settle and keep deliveries.
 * A failed commit settles nothing: the broker delivers those again. */
ref_err batch_finish(ref_client *c, batch *b)
{
    ref_err e = REF_OK;
    if (b->txn != NULL && !b->is_failed && state_commit(&b->txn) != REF_OK) {
        say(c, REF_LOG_ERROR, "state directory commit failed; deliveries of this batch are "
            "not settled and come again");
        b->is_failed = true;
    }
    batch_done_finish(c, b, !b->is_failed);
    batch_sends_finish(c, b, !b->is_failed);
    if (b->is_failed) {
        state_abort(&b->txn);
        e = REF_E_STATE;
        b->n_ack = 0;
    }
    for (size_t i = 0; i < b->n_arrived; i++) {
        if (b->is_failed) {
            ref_delivery_destroy(&b->arrived[i]);
            c->credit_to_send++;   /* not settled: it comes again, and needs credit */
            continue;
        }
        say(c, REF_LOG_DEBUG, "delivery stored msg=%s", b->arrived[i]->message_id);
        c->n_unconfirmed++;
        keep_ready(c, b->arrived[i]);
    }
    for (size_t i = 0; i < b->n_ack; i++) {
        char hex[REF_ID_HEX_LEN + 1];
        send_settle(c, b->ack[i], REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_ACK, NULL);
        say(c, REF_LOG_DEBUG, "delivery settled msg=%s", ids_hex(b->ack[i], 16, hex));
    }
    memset(b, 0, sizeof *b);
    return e;
}

/* Step 1 of the hand-over, in batch b: the whole delivery (packed, len
 * bytes: its envelope or signed notice, with the labels of an escalation
 * copy) into the inbox and its seen record, for d, which arrived in dl. Returns the batch's transaction, NULL (and
 * the batch failed) when it cannot be written. */
static state_txn *store_arrival(ref_client *c, batch *b, const Referral__V1__Delivery *dl,
                                state_inbox_kind kind, const uint8_t *packed, size_t len,
                                const state_copy_labels *copy, const state_seen *seen,
                                ref_delivery *d)
{
    d->attempt = dl->attempt;
    d->is_from_broker = true;
    state_inbox_entry entry = {.kind = kind, .urgency = (uint8_t)d->urgency,
                               .attempt = dl->attempt, .payload = packed, .len = len,
                               .is_copy = copy != NULL};
    if (copy != NULL)
        entry.copy = *copy;
    state_txn *txn = batch_txn(c, b);
    if (packed == NULL || txn == NULL) {
        b->is_failed = true;
        return NULL;
    }
    batch_write(c, b, state_inbox_put(txn, dl->message_id.data, &entry), "inbox");
    batch_write(c, b, state_seen_put(txn, dl->message_id.data, seen), "seen");
    return b->is_failed ? NULL : txn;
}

void on_notice(ref_client *c, batch *b, const Referral__V1__Delivery *dl)
{
    const uint8_t *mid = dl->message_id.data;
    char why[256] = "";
    state_seen seen;
    int got = state_seen_get(c->st, batch_txn(c, b), mid, &seen);
    if (got == REF_OK || got == REF_E_PROTOCOL) {
        batch_ack(b, mid);   /* held already: settle again, hand nothing */
        return;
    }
    ref_delivery *d = NULL;
    if (delivery_from_notice(c, mid, dl->notice, &d, why, sizeof why) != REF_OK) {
        say(c, REF_LOG_WARN, "notice refused detail=%s", why);
        if (d == NULL)
            send_settle(c, mid, REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_REJECT, why);
        return;
    }
    d->urgency = (ref_urgency)dl->urgency;
    memset(&seen, 0, sizeof seen);
    seen.forget_at_ms = clock_now_ms() + SEEN_KEEP_MS;
    size_t len;
    uint8_t *packed = wire_pack(dl->notice, &len);
    store_arrival(c, b, dl, STATE_INBOX_NOTICE, packed, len, NULL, &seen, d);
    free(packed);
    b->arrived[b->n_arrived++] = d;
    batch_ack(b, mid);
}

/* A referral or receipt in an envelope that arrived in dl (env: the
 * envelope itself or the one inside an escalation copy with labels copy):
 * verify, open and store, in batch b (the settle after the commit is what
 * makes it DELIVERED). A copy is kept under its own id (dl's message id),
 * so that the original and each copy are distinct; its copies record lets
 * later receipts answer the sender's message id with the copy's attempt
 * id. */
static void on_case(ref_client *c, batch *b, const Referral__V1__Delivery *dl,
                    const Referral__V1__Envelope *env, const state_copy_labels *copy)
{
    char why[300] = "";
    const uint8_t *mid = dl->message_id.data;
    char hex[REF_ID_HEX_LEN + 1];
    ids_hex(mid, 16, hex);
    say(c, REF_LOG_DEBUG, "delivery arrived msg=%s attempt=%u copy=%s", hex, dl->attempt,
        copy != NULL ? "yes" : "no");
    state_seen seen;
    int got = state_seen_get(c->st, batch_txn(c, b), mid, &seen);
    if (got == REF_OK || got == REF_E_PROTOCOL) {
        say(c, REF_LOG_DEBUG, "duplicate delivery settled again msg=%s", hex);
        batch_ack(b, mid);
        return;
    }
    ref_delivery *d = NULL;
    ref_err e = delivery_from_envelope(c, mid, env, copy, &d, &seen, why, sizeof why);
    if (e == REF_E_NO_MEMORY)
        return;   /* not settled: the broker delivers it again */
    if (e != REF_OK) {
        say(c, REF_LOG_WARN, "delivery failed verification, refused msg=%s detail=%s", hex, why);
        send_settle(c, mid, REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_REJECT, why);
        return;
    }
    if (copy != NULL && strcmp(copy->original_recipient, d->original_recipient) != 0)
        say(c, REF_LOG_WARN, "escalation copy labelled for another recipient than its sender "
            "addressed; the signed one is shown msg=%s referral=%s label=%s signed=%s", hex,
            d->referral_id, copy->original_recipient, d->original_recipient);
    uint8_t env_mid[16];
    ids_from_hex(d->message_id, env_mid);
    size_t len;
    uint8_t *packed = wire_pack(env, &len);
    state_txn *txn = store_arrival(c, b, dl, STATE_INBOX_ENVELOPE, packed, len, copy, &seen, d);
    free(packed);
    if (copy != NULL && txn != NULL) {
        state_copy_ref ref = {.forget_at_ms = seen.forget_at_ms};
        memcpy(ref.copy_id, mid, 16);
        memcpy(ref.attempt_id, copy->attempt_id, 16);
        batch_write(c, b, state_copy_ref_put(txn, env_mid, &ref), "copies");
    }
    say(c, REF_LOG_DEBUG, "verified and opened msg=%s referral=%s from=%s copy_of=%s", hex,
        d->referral_id, d->from, copy != NULL ? d->message_id : "");
    b->arrived[b->n_arrived++] = d;
    batch_ack(b, mid);
}

void on_envelope(ref_client *c, batch *b, const Referral__V1__Delivery *dl)
{
    on_case(c, b, dl, dl->envelope, NULL);
}

void on_copy(ref_client *c, batch *b, const Referral__V1__Delivery *dl)
{
    const Referral__V1__AttemptCopy *cp = dl->copy;
    state_copy_labels copy = {.step = cp->step, .round = cp->round};
    memcpy(copy.attempt_id, cp->attempt_id.data, 16);   /* 16 bytes: checked by wire.c */
    snprintf(copy.original_recipient, sizeof copy.original_recipient, "%s",
             cp->original_recipient);
    snprintf(copy.reason, sizeof copy.reason, "%s", cp->reason);
    on_case(c, b, dl, cp->envelope, &copy);
}

/* Hand again what the inbox holds: deliveries the application has not
 * confirmed before the last process ended. Each is verified again. */
void reload_one(const uint8_t id[16], const state_inbox_entry *e, void *ctx)
{
    ref_client *c = ctx;
    char why[300] = "", hex[REF_ID_HEX_LEN + 1];
    ids_hex(id, 16, hex);
    ref_delivery *d = NULL;
    ref_err r = REF_E_PROTOCOL;
    if (e->kind == STATE_INBOX_LOCAL) {
        char *text = strndup((const char *)e->payload, e->len);
        d = text != NULL ? delivery_local(id, text) : NULL;
        free(text);
        r = d != NULL ? REF_OK : REF_E_NO_MEMORY;
    } else if (e->kind == STATE_INBOX_NOTICE) {
        Referral__V1__SignedNotice *sn =
            referral__v1__signed_notice__unpack(NULL, e->len, e->payload);
        if (sn != NULL)
            r = delivery_from_notice(c, id, sn, &d, why, sizeof why);
        wire_free(sn);
    } else {
        Referral__V1__Envelope *env = NULL;
        state_seen seen;
        if (wire_decode_envelope(e->payload, e->len, NULL, &env, why, sizeof why) == WIRE_OK)
            r = delivery_from_envelope(c, id, env, e->is_copy ? &e->copy : NULL, &d, &seen,
                                       why, sizeof why);
        wire_free(env);
    }
    if (r != REF_OK) {
        /* It was verified when it arrived; say so rather than drop it. */
        say(c, REF_LOG_ERROR, "a delivery held in the inbox no longer opens msg=%s detail=%s",
            hex, why);
        char text[600];
        snprintf(text, sizeof text, "message %s was received but can no longer be opened or "
                 "verified (%s); ask its sender", hex, why);
        d = delivery_local(id, text);
        if (d == NULL)
            return;
    }
    d->attempt = e->attempt;
    if (e->kind != STATE_INBOX_LOCAL && r == REF_OK)
        d->urgency = d->urgency ? d->urgency : (ref_urgency)e->urgency;
    keep_ready(c, d);
}

/* ---- receiving ------------------------------------------------------------ */

static bool has_ready(const ref_client *c)
{
    return c->n_ready > 0;
}

/* One more delivery may come from the broker (credit given back, in one
 * Credit frame at the end of the next pump), unless the application holds
 * too many unconfirmed ones. */
static void give_credit(ref_client *c)
{
    if (c->n_unconfirmed < MAX_UNCONFIRMED) {
        c->credit_to_send++;
        return;
    }
    if (c->owed_credit == 0)
        say(c, REF_LOG_WARN, "the application holds %zu deliveries not confirmed with "
            "ref_delivery_done(); no more are taken until it confirms some", c->n_unconfirmed);
    c->owed_credit++;
}

ref_err ref_receive(ref_client *c, uint32_t timeout_ms, ref_delivery **out)
{
    if (c == NULL || out == NULL)
        return REF_E_INVALID;
    *out = NULL;
    if (c->sock == NULL)
        return REF_E_CLOSED;
    /* With deliveries ready, hand them without reading the socket each
     * time (at most every RECEIVE_PUMP_MS): what arrives meanwhile is
     * stored in one commit, not one per call. */
    ref_err e = REF_OK;
    if (c->n_ready == 0 || clock_mono_ms() - c->pumped_at_ms >= RECEIVE_PUMP_MS)
        e = wait_for(c, has_ready, timeout_ms);
    if (e == REF_E_TIMEOUT || (e == REF_OK && c->n_ready == 0))
        return REF_E_AGAIN;
    if (e != REF_OK && c->n_ready == 0)
        return e;
    ref_delivery *d = c->ready[0];
    memmove(c->ready, c->ready + 1, (c->n_ready - 1) * sizeof c->ready[0]);
    c->n_ready--;
    if (d->is_from_broker) {
        d->is_from_broker = false;
        give_credit(c);
    }
    say(c, REF_LOG_INFO, "handed msg=%s referral=%s from=%s attempt=%u", d->message_id,
        d->referral_id, d->from, d->attempt);
    *out = d;
    return REF_OK;
}

void batch_done(ref_client *c, batch *b)
{
    if (c->n_done == 0)
        return;
    state_txn *txn = batch_txn(c, b);
    for (size_t i = 0; txn != NULL && i < c->n_done; i++)
        batch_write(c, b, state_inbox_del(txn, c->done[i]), "inbox");
    b->n_done = c->n_done;
}

void batch_done_finish(ref_client *c, const batch *b, bool is_ok)
{
    if (!is_ok || b->n_done == 0)
        return;   /* kept: the next batch carries them again */
    memmove(c->done, c->done + b->n_done, (c->n_done - b->n_done) * sizeof c->done[0]);
    c->n_done -= b->n_done;
}

void batch_sends(ref_client *c, batch *b)
{
    if (c->n_pending == 0)
        return;
    state_txn *txn = batch_txn(c, b);
    for (size_t i = 0; txn != NULL && i < c->n_pending; i++) {
        const struct pending_send *p = &c->pending[i];
        batch_write(c, b, state_outbox_put(txn, p->id, p->env, p->len), "outbox");
        if (p->has_sent)
            batch_write(c, b, state_sent_put(txn, p->id, &p->sent), "sent");
    }
    b->n_sends = c->n_pending;
}

void batch_sends_finish(ref_client *c, const batch *b, bool is_ok)
{
    if (!is_ok || b->n_sends == 0)
        return;   /* kept: the next commit carries them again */
    for (size_t i = 0; i < b->n_sends; i++) {
        submit_bytes(c, c->pending[i].env, c->pending[i].len);
        free(c->pending[i].env);
    }
    memmove(c->pending, c->pending + b->n_sends,
            (c->n_pending - b->n_sends) * sizeof c->pending[0]);
    c->n_pending -= b->n_sends;
}

ref_err flush_sends(ref_client *c)
{
    batch b;
    memset(&b, 0, sizeof b);
    batch_sends(c, &b);
    return b.n_sends == 0 ? REF_OK : batch_finish(c, &b);
}

ref_err flush_done(ref_client *c)
{
    batch b;
    memset(&b, 0, sizeof b);
    batch_done(c, &b);
    return b.n_done == 0 ? REF_OK : batch_finish(c, &b);
}

/* Confirmations are committed with the next commit the library makes
 * anyway, or alone once DONE_FLUSH_AT wait or the application has taken
 * everything ready (a pump that reads nothing), or at
 * ref_client_destroy(): one fsync for many, never one per delivery. A crash before then hands the delivery again, which the
 * application already deduplicates by message id. */
ref_err ref_delivery_done(ref_client *c, const ref_delivery *d)
{
    if (c == NULL || d == NULL)
        return REF_E_INVALID;
    if (c->st == NULL)
        return REF_E_CLOSED;
    if (c->n_done == MAX_UNCONFIRMED && flush_done(c) != REF_OK)
        return REF_E_STATE;
    memcpy(c->done[c->n_done++], d->wire_id, 16);
    if (c->n_unconfirmed > 0)
        c->n_unconfirmed--;
    if (c->owed_credit > 0 && c->n_unconfirmed < MAX_UNCONFIRMED) {
        c->owed_credit--;
        c->credit_to_send++;
    }
    say(c, REF_LOG_DEBUG, "confirmed msg=%s", d->message_id);
    return REF_OK;
}

/* ---- accessors ------------------------------------------------------------ */

/* Every accessor takes NULL: "" or 0. */
#define GET(type, name, field, none)                       \
    type ref_delivery_##name(const ref_delivery *d)        \
    {                                                      \
        return d != NULL ? d->field : none;                \
    }

ref_delivery_kind ref_delivery_kind_of(const ref_delivery *d)
{
    return d != NULL ? d->kind : (ref_delivery_kind)0;
}

GET(const char *, message_id, message_id, "")
GET(const char *, referral_id, referral_id, "")
GET(const char *, from, from, "")
GET(ref_urgency, urgency, urgency, (ref_urgency)0)
GET(const char *, narrative, narrative, "")
GET(const char *, requested_action, requested_action, "")
GET(const char *, subject_pseudonym, pseudonym, "")
GET(uint32_t, subject_age, age, 0)
GET(int, level, level, 0)
GET(const char *, detail, detail, "")
GET(uint32_t, attempt, attempt, 0)
GET(const char *, in_reply_to, in_reply_to, "")
GET(bool, is_copy, is_copy, false)
GET(const char *, original_recipient, original_recipient, "")
GET(const char *, alert_kind, alert_kind, "")
GET(const char *, about_agency, about_agency, "")
GET(uint32_t, alert_step, alert_step, 0)
GET(uint32_t, alert_round, alert_round, 0)
GET(const char *, contacts, contacts, "")
GET(const char *, copied_to, copied_to, "")
