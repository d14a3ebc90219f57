/*
 * client: libreferral's connection to the home broker (referral.h).
 *
 * One DEALER socket with CURVE (the server key from the directory), one
 * frame per ZeroMQ message (docs/protocol.md). Every blocking call is a
 * bounded loop over pump(), which reads whatever arrived in batches:
 *
 *   read up to BATCH_MAX frames
 *     submit answers clear the outbox
 *     each new delivery is verified and opened, then written to the inbox
 *     (the whole envelope or notice), remembered as seen, and for a
 *     referral a DELIVERED receipt is written to the outbox
 *   commit the batch once (fsync)
 *   then settle each delivery with the broker (ACK), submit the receipts,
 *   and keep the deliveries for ref_receive()
 *
 * The application confirms with ref_delivery_done(); until then the inbox
 * entry stays and is handed again after any restart (same message id). So
 * a crash at any point loses nothing: before the commit the broker still
 * has the delivery unsettled and sends it again; after it the inbox has it.
 *
 * The session keeps itself alive: a Ping when nothing was sent for a while
 * (well within the broker's session_idle_ms, which Welcome announces), and
 * a new Hello whenever the session is lost: a reconnect (seen through a
 * ZeroMQ socket monitor), an ErrorReply "send Hello first" (a broker that
 * restarted or forgot the session), or a broker silent after a Ping. Every
 * Welcome grants credit again and sends every unanswered outbox entry again.
 *
 * It must never hand the application a message twice in one process, one
 * it did not verify, settle one before it is durably stored, or write to
 * stderr.
 */
#include "referral.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <zmq.h>

#include "clock.h"
#include "directory.h"
#include "envelope.h"
#include "ids.h"
#include "keys.h"
#include "ref_version.h"
#include "sign.h"
#include "state.h"
#include "wire.h"

#define DEFAULT_TIMEOUT_MS 10000u
#define DEFAULT_CREDIT 16u
#define DEFAULT_TTL_S (7u * 24 * 3600)
#define MAX_READY 1024u
#define MAX_UNCONFIRMED 512u          /* inbox entries before credit is held back */
#define MAX_TEXT (64u << 10)
#define MAX_RETRY 256u
#define RETRY_AFTER_MS 1000u
#define BATCH_MAX 64u                 /* frames read per durable commit */
#define DEFAULT_IDLE_MS 120000u       /* when Welcome does not say */
#define MIN_PING_MS 100u
#define MAX_PING_MS 30000u
#define HELLO_AGAIN_MS 2000u          /* a Hello unanswered this long is sent again */
#define HEARTBEAT_MS 5000             /* ZeroMQ's own heartbeat on the connection */
#define SEEN_KEEP_MS (30ull * 24 * 3600 * 1000)
#define R(x) REFERRAL__V1__RESULT_CODE__RESULT_##x

struct ref_delivery {
    uint8_t wire_id[16];            /* the Delivery's message id: the inbox key */
    bool is_from_broker;            /* arrived in this process: its credit is given back */
    ref_delivery_kind kind;
    char message_id[REF_ID_HEX_LEN + 1];
    char referral_id[REF_ID_HEX_LEN + 1];
    char from[IDS_NAME_MAX + 1];
    ref_urgency urgency;
    uint32_t attempt;
    int level;
    char *narrative, *requested_action, *pseudonym, *detail;
    uint32_t age;
};

typedef enum {
    SESSION_NONE,                   /* no Welcome yet on this connection */
    SESSION_HELLO_SENT,             /* Hello sent at hello_at_ms, Welcome awaited */
    SESSION_OPEN,                   /* Welcome received */
} session_state;

struct ref_client {
    keys_identity keys;
    directory *dir;
    state *st;
    void *zctx, *sock, *monitor;
    uint32_t timeout_ms, credit;
    uint64_t next_request;
    ref_log_fn log;
    void *log_ctx;
    char last_detail[512];
    ref_delivery *ready[MAX_READY];
    size_t n_ready;
    size_t n_unconfirmed;           /* inbox entries: taken or not, not yet done */
    uint32_t owed_credit;           /* held back while n_unconfirmed >= MAX_UNCONFIRMED */
    /* the session */
    session_state session;
    unsigned handshakes;            /* successful CURVE handshakes seen by the monitor */
    uint64_t hello_at_ms, last_sent_ms, last_heard_ms, ping_at_ms;
    uint32_t ping_interval_ms;
    uint64_t ping_nonce;
    unsigned sessions_opened;
    /* the answer a blocking send waits for */
    uint8_t awaited_id[16];
    bool is_awaiting, has_answer;
    Referral__V1__ResultCode answer;
    /* outbox entries the broker asked to send again later (store full, busy) */
    struct {
        uint8_t id[16];
        uint64_t due_ms;
    } retry[MAX_RETRY];
    size_t n_retry;
    /* the status a ref_status() waits for */
    uint64_t status_request;
    bool has_status;
    Referral__V1__MessageState status_state;
};

static const char *const messages[] = {
    [REF_OK] = "success",
    [REF_E_INVALID] = "invalid argument: a required field is missing, out of range, or not a "
                      "valid id",
    [REF_E_NO_MEMORY] = "out of memory",
    [REF_E_CLOSED] = "the client is not connected to its broker",
    [REF_E_TIMEOUT] = "no answer from the broker in time; a referral already handed over stays "
                      "in the outbox and is sent again",
    [REF_E_KEYS] = "the agency's key files are missing or unreadable (make them with "
                   "referralctl keygen)",
    [REF_E_DIRECTORY] = "the directory is missing, unsigned, wrongly signed, older or expired",
    [REF_E_UNKNOWN_AGENCY] = "an agency named is not in the directory",
    [REF_E_TOO_LARGE] = "a field or the case file is larger than allowed",
    [REF_E_REFUSED] = "the broker refused the request (see ref_client_last_detail)",
    [REF_E_TRANSPORT] = "the connection to the broker cannot be made",
    [REF_E_STATE] = "the client's state directory (outbox) failed",
    [REF_E_AGAIN] = "nothing to receive yet",
    [REF_E_PROTOCOL] = "the broker sent something this version cannot read",
};

const char *ref_strerror(ref_err err)
{
    if ((unsigned)err < sizeof messages / sizeof messages[0] && messages[err] != NULL)
        return messages[err];
    return "unknown error";
}

const char *ref_version(void)
{
    return REF_VERSION;
}

__attribute__((format(printf, 3, 4)))
static void say(const ref_client *c, ref_log_level level, const char *fmt, ...)
{
    if (c->log == NULL)
        return;
    char line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    c->log(level, line, c->log_ctx);
}

static void set_detail(ref_client *c, const char *text)
{
    snprintf(c->last_detail, sizeof c->last_detail, "%s", text != NULL ? text : "");
}

const char *ref_client_last_detail(const ref_client *c)
{
    return c != NULL ? c->last_detail : "";
}

int ref_client_fd(const ref_client *c)
{
    int fd = -1;
    size_t len = sizeof fd;
    if (c == NULL || c->sock == NULL || zmq_getsockopt(c->sock, ZMQ_FD, &fd, &len) != 0)
        return -1;
    return fd;
}

/* ---- frames --------------------------------------------------------------- */

static ref_err send_frame(ref_client *c, Referral__V1__ClientFrame *f)
{
    f->version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    size_t len;
    uint8_t *buf = wire_pack(f, &len);
    if (buf == NULL)
        return REF_E_NO_MEMORY;
    int rc = zmq_send(c->sock, buf, len, ZMQ_DONTWAIT);
    free(buf);
    if (rc < 0)
        return REF_E_TRANSPORT;
    c->last_sent_ms = clock_mono_ms();
    return REF_OK;
}

static ref_err send_credit(ref_client *c, uint32_t n)
{
    Referral__V1__Credit cr = REFERRAL__V1__CREDIT__INIT;
    cr.grant = n;
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_CREDIT;
    f.credit = &cr;
    return send_frame(c, &f);
}

static ref_err send_settle(ref_client *c, const uint8_t id[16], Referral__V1__SettleVerb verb,
                           const char *reason)
{
    Referral__V1__Settle s = REFERRAL__V1__SETTLE__INIT;
    s.message_id = (ProtobufCBinaryData){16, (uint8_t *)(uintptr_t)id};
    s.verb = verb;
    s.reason = (char *)(uintptr_t)(reason != NULL ? reason : "");
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_SETTLE;
    f.settle = &s;
    return send_frame(c, &f);
}

static ref_err submit_bytes(ref_client *c, const uint8_t *env_bytes, size_t len)
{
    Referral__V1__Envelope *env = NULL;
    if (wire_decode_envelope(env_bytes, len, NULL, &env, NULL, 0) != WIRE_OK)
        return REF_E_STATE;
    Referral__V1__Submit s = REFERRAL__V1__SUBMIT__INIT;
    s.request_id = ++c->next_request;
    s.envelope = env;
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_SUBMIT;
    f.submit = &s;
    ref_err e = send_frame(c, &f);
    wire_free(env);
    return e;
}

static ref_err send_hello(ref_client *c)
{
    Referral__V1__Hello hello = REFERRAL__V1__HELLO__INIT;
    hello.agency_id = c->keys.id;
    hello.client_name = "libreferral";
    hello.client_version = REF_VERSION;
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_HELLO;
    f.hello = &hello;
    ref_err e = send_frame(c, &f);
    if (e == REF_OK) {
        c->session = SESSION_HELLO_SENT;
        c->hello_at_ms = clock_mono_ms();
    }
    return e;
}

static ref_err send_ping(ref_client *c)
{
    Referral__V1__Ping p = REFERRAL__V1__PING__INIT;
    p.nonce = ++c->ping_nonce;
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_PING;
    f.ping = &p;
    ref_err e = send_frame(c, &f);
    if (e == REF_OK && c->ping_at_ms == 0)
        c->ping_at_ms = clock_mono_ms();   /* cleared by any frame from the broker */
    return e;
}

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
    if (d->narrative == NULL || d->detail == NULL || d->requested_action == NULL ||
        d->pseudonym == NULL)
        ref_delivery_destroy(&d);
    return d;
}

static const char *enum_name(const ProtobufCEnumDescriptor *desc, int value)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(desc, value);
    return v != NULL ? v->name : "?";
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
    char text[700];
    snprintf(text, sizeof text, "%s: %s (about %s)",
             enum_name(&referral__v1__notice_kind__descriptor, (int)n->kind), n->detail,
             n->about_agency);
    ref_delivery *d = delivery_new(REF_DELIVERY_NOTICE, wire_id, "", text);
    if (d != NULL) {
        ids_hex(n->message_id.data, 16, d->message_id);
        if (n->referral_id.len == 16)
            ids_hex(n->referral_id.data, 16, d->referral_id);
        snprintf(d->from, sizeof d->from, "%s", n->broker_id);
        d->level = n->kind == REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ACK_LEVEL ? (int)n->level
                                                                              : 0;
    }
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
        if (r->message_id.len == 16)
            ids_hex(r->message_id.data, 16, d->referral_id);   /* the referral message acked */
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

/* Verify and open an envelope addressed to this agency and make its
 * delivery; seen gets what a receipt to its sender needs. */
static ref_err delivery_from_envelope(ref_client *c, const uint8_t wire_id[16],
                                      const Referral__V1__Envelope *env, ref_delivery **out,
                                      state_seen *seen, char *why, size_t why_len)
{
    *out = NULL;
    Referral__V1__RoutingHeader *h = NULL;
    Referral__V1__BodyPlaintext *p = NULL;
    ref_err e = (ref_err)envelope_open(&c->keys, c->dir, env, &h, &p, why, why_len);
    if (e != REF_OK)
        return e;
    ref_delivery *d = delivery_new(REF_DELIVERY_REFERRAL, wire_id, "", "");
    if (d != NULL && fill_from_body(d, p)) {
        ids_hex(h->message_id.data, 16, d->message_id);
        if (d->kind != REF_DELIVERY_RECEIPT)
            ids_hex(h->referral_id.data, 16, d->referral_id);
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
static ref_delivery *delivery_local(const uint8_t wire_id[16], const char *text)
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
static void keep_ready(ref_client *c, ref_delivery *d)
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

typedef struct {
    state_txn *txn;                 /* begun at the first write */
    bool is_failed;                 /* a write failed: abort, settle nothing */
    ref_delivery *arrived[BATCH_MAX];
    size_t n_arrived;
    uint8_t ack[BATCH_MAX][16];     /* deliveries to settle ACK after the commit */
    size_t n_ack;
    struct {
        uint8_t *env;
        size_t len;
        char of[REF_ID_HEX_LEN + 1];
    } receipt[BATCH_MAX];           /* DELIVERED receipts to submit after the commit */
    size_t n_receipt;
} batch;

static state_txn *batch_txn(ref_client *c, batch *b)
{
    if (b->txn == NULL && !b->is_failed && state_begin(c->st, &b->txn) != REF_OK) {
        say(c, REF_LOG_ERROR, "cannot begin a write in the state directory");
        b->is_failed = true;
    }
    return b->is_failed ? NULL : b->txn;
}

static void batch_write(ref_client *c, batch *b, int rc, const char *what)
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

/* Compose a receipt of level for the received message mid (seen says who
 * sent it). *env (free()) and rmid get the receipt. */
static ref_err compose_receipt(ref_client *c, const uint8_t mid[16], const state_seen *seen,
                               ref_level level, const char *person, const char *reason,
                               uint8_t **env, size_t *len, uint8_t rmid[16]);

/* Commit the batch; then settle, submit receipts, and keep deliveries.
 * A failed commit settles nothing: the broker delivers those again. */
static ref_err batch_finish(ref_client *c, batch *b)
{
    ref_err e = REF_OK;
    if (b->txn != NULL && !b->is_failed && state_commit(&b->txn) != REF_OK) {
        say(c, REF_LOG_ERROR, "state directory commit failed; deliveries of this batch are "
            "not settled and come again");
        b->is_failed = true;
    }
    if (b->is_failed) {
        state_abort(&b->txn);
        e = REF_E_STATE;
        b->n_ack = 0;
    }
    for (size_t i = 0; i < b->n_arrived; i++) {
        if (b->is_failed) {
            ref_delivery_destroy(&b->arrived[i]);
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
    for (size_t i = 0; i < b->n_receipt; i++) {
        if (!b->is_failed) {
            submit_bytes(c, b->receipt[i].env, b->receipt[i].len);
            say(c, REF_LOG_DEBUG, "delivered receipt sent msg=%s", b->receipt[i].of);
        }
        free(b->receipt[i].env);
    }
    memset(b, 0, sizeof *b);
    return e;
}

static void on_notice(ref_client *c, batch *b, const Referral__V1__Delivery *dl)
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
    d->attempt = dl->attempt;
    d->is_from_broker = true;
    size_t len;
    uint8_t *packed = wire_pack(dl->notice, &len);
    state_inbox_entry entry = {STATE_INBOX_NOTICE, (uint8_t)dl->urgency, dl->attempt, packed, len};
    memset(&seen, 0, sizeof seen);
    seen.forget_at_ms = clock_now_ms() + SEEN_KEEP_MS;
    state_txn *txn = batch_txn(c, b);
    if (packed == NULL || txn == NULL) {
        b->is_failed = true;
    } else {
        batch_write(c, b, state_inbox_put(txn, mid, &entry), "inbox");
        batch_write(c, b, state_seen_put(txn, mid, &seen), "seen");
    }
    free(packed);
    b->arrived[b->n_arrived++] = d;
    batch_ack(b, mid);
}

static void on_envelope(ref_client *c, batch *b, const Referral__V1__Delivery *dl)
{
    char why[300] = "";
    const uint8_t *mid = dl->message_id.data;
    char hex[REF_ID_HEX_LEN + 1];
    ids_hex(mid, 16, hex);
    say(c, REF_LOG_DEBUG, "delivery arrived msg=%s attempt=%u", hex, dl->attempt);
    state_seen seen;
    int got = state_seen_get(c->st, batch_txn(c, b), mid, &seen);
    if (got == REF_OK || got == REF_E_PROTOCOL) {
        say(c, REF_LOG_DEBUG, "duplicate delivery settled again msg=%s", hex);
        batch_ack(b, mid);
        return;
    }
    ref_delivery *d = NULL;
    ref_err e = delivery_from_envelope(c, mid, dl->envelope, &d, &seen, why, sizeof why);
    if (e == REF_E_NO_MEMORY)
        return;   /* not settled: the broker delivers it again */
    if (e != REF_OK) {
        say(c, REF_LOG_WARN, "delivery failed verification, refused msg=%s detail=%s", hex, why);
        send_settle(c, mid, REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_REJECT, why);
        return;
    }
    d->attempt = dl->attempt;
    d->is_from_broker = true;
    size_t len;
    uint8_t *packed = wire_pack(dl->envelope, &len);
    state_inbox_entry entry = {STATE_INBOX_ENVELOPE, (uint8_t)d->urgency, dl->attempt, packed,
                               len};
    state_txn *txn = batch_txn(c, b);
    if (packed == NULL || txn == NULL) {
        b->is_failed = true;
    } else {
        batch_write(c, b, state_inbox_put(txn, mid, &entry), "inbox");
        batch_write(c, b, state_seen_put(txn, mid, &seen), "seen");
    }
    free(packed);
    /* A referral (not a receipt) is answered DELIVERED: the receipt goes
     * through the outbox in the same commit, so it is never lost either. */
    if (d->kind == REF_DELIVERY_REFERRAL && !b->is_failed) {
        uint8_t rmid[16];
        uint8_t *renv = NULL;
        size_t rlen = 0;
        if (compose_receipt(c, mid, &seen, REF_LEVEL_DELIVERED, "", "", &renv, &rlen, rmid) ==
            REF_OK) {
            batch_write(c, b, state_outbox_put(txn, rmid, renv, rlen), "outbox");
            b->receipt[b->n_receipt].env = renv;
            b->receipt[b->n_receipt].len = rlen;
            memcpy(b->receipt[b->n_receipt].of, hex, sizeof hex);
            b->n_receipt++;
        } else {
            say(c, REF_LOG_WARN, "cannot compose the DELIVERED receipt msg=%s detail=%s", hex,
                c->last_detail);
        }
    }
    say(c, REF_LOG_DEBUG, "verified and opened msg=%s referral=%s from=%s", d->message_id,
        d->referral_id, d->from);
    b->arrived[b->n_arrived++] = d;
    batch_ack(b, mid);
}

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
    state_inbox_entry entry = {STATE_INBOX_LOCAL, REF_URGENCY_URGENT, 0, (const uint8_t *)text,
                               strlen(text)};
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

static void resend_due(ref_client *c)
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
            submit_bytes(c, env, len);
        free(env);
    }
    c->n_retry = kept;
}

static void on_submit_reply(ref_client *c, batch *b, const Referral__V1__SubmitReply *r)
{
    bool is_transient = r->code == R(STORE_FULL) || r->code == R(BUSY) ||
                        r->code == R(SHUTTING_DOWN) || r->code == R(INTERNAL);
    bool has_id = r->message_id.len == 16;
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
}

/* ---- the session ---------------------------------------------------------- */

static void resend_one(const uint8_t id[16], const uint8_t *env, size_t len, void *ctx)
{
    (void)id;
    submit_bytes(ctx, env, len);
}

/* Credit for a new session: what the configuration asks, less deliveries
 * still waiting to be taken, and none while the inbox is at its limit. */
static void grant_session_credit(ref_client *c)
{
    uint32_t waiting = 0;
    for (size_t i = 0; i < c->n_ready; i++)
        waiting += c->ready[i]->is_from_broker;
    uint32_t want = c->credit > waiting ? c->credit - waiting : 0;
    uint32_t room = c->n_unconfirmed < MAX_UNCONFIRMED
                        ? (uint32_t)(MAX_UNCONFIRMED - c->n_unconfirmed) : 0;
    uint32_t grant = want < room ? want : room;
    c->owed_credit = want - grant;
    if (grant > 0)
        send_credit(c, grant);
}

/* A Welcome opened the session: learn the ping interval, grant credit,
 * and send every outbox entry again (the broker deduplicates). */
static void on_welcome(ref_client *c, const Referral__V1__Welcome *w)
{
    uint32_t idle = w->session_idle_ms ? w->session_idle_ms : DEFAULT_IDLE_MS;
    uint32_t ping = idle / 4;
    c->ping_interval_ms = ping < MIN_PING_MS ? MIN_PING_MS : ping > MAX_PING_MS ? MAX_PING_MS
                                                                                 : ping;
    c->session = SESSION_OPEN;
    c->sessions_opened++;
    c->n_retry = 0;
    grant_session_credit(c);
    size_t n = state_outbox_count(c->st);
    say(c, c->sessions_opened > 1 ? REF_LOG_INFO : REF_LOG_DEBUG,
        "session open broker=%s sessions=%u outbox=%zu ping_ms=%u", w->broker_id,
        c->sessions_opened, n, c->ping_interval_ms);
    if (n > 0)
        state_outbox_each(c->st, resend_one, c);
}

/* The session is lost (or may be): say Hello again, unless one is already
 * on its way and recent. */
static void session_lost(ref_client *c, const char *why)
{
    if (c->session == SESSION_HELLO_SENT &&
        clock_mono_ms() - c->hello_at_ms < HELLO_AGAIN_MS)
        return;
    say(c, REF_LOG_INFO, "session lost, saying Hello again why=%s", why);
    c->ping_at_ms = 0;
    send_hello(c);
}

/* Reconnects, seen by the socket monitor: every successful handshake after
 * the first is a new connection, which the broker does not know yet. */
static void read_monitor(ref_client *c)
{
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        uint16_t event = 0;
        bool is_first = zmq_msg_more(&m) && zmq_msg_size(&m) >= 2;
        if (is_first)
            memcpy(&event, zmq_msg_data(&m), 2);
        while (zmq_msg_more(&m)) {   /* the endpoint part */
            zmq_msg_close(&m);
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, c->monitor, 0) < 0)
                break;
        }
        zmq_msg_close(&m);
        if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED && ++c->handshakes > 1)
            session_lost(c, "reconnected");
        else if (event == ZMQ_EVENT_DISCONNECTED && c->session == SESSION_OPEN)
            c->session = SESSION_NONE;
    }
}

/* Keep the session alive and notice a silent broker. */
static void keep_alive(ref_client *c)
{
    uint64_t now = clock_mono_ms();
    if (c->session == SESSION_HELLO_SENT && now - c->hello_at_ms >= HELLO_AGAIN_MS) {
        session_lost(c, "no Welcome");
        return;
    }
    if (c->session != SESSION_OPEN || c->ping_interval_ms == 0)
        return;
    if (c->ping_at_ms != 0 && now - c->ping_at_ms >= 2ull * c->ping_interval_ms) {
        session_lost(c, "no answer to Ping");
        return;
    }
    if (now - c->last_sent_ms >= c->ping_interval_ms ||
        now - c->last_heard_ms >= c->ping_interval_ms)
        send_ping(c);
}

/* ---- pump ----------------------------------------------------------------- */

/* Act on one frame from the broker. */
static void on_frame(ref_client *c, batch *b, const Referral__V1__BrokerFrame *f)
{
    switch (f->body_case) {
    case REFERRAL__V1__BROKER_FRAME__BODY_WELCOME:
        on_welcome(c, f->welcome);
        break;
    case REFERRAL__V1__BROKER_FRAME__BODY_SUBMIT_REPLY:
        on_submit_reply(c, b, f->submit_reply);
        break;
    case REFERRAL__V1__BROKER_FRAME__BODY_DELIVERY:
        if (f->delivery->payload_case == REFERRAL__V1__DELIVERY__PAYLOAD_ENVELOPE)
            on_envelope(c, b, f->delivery);
        else
            on_notice(c, b, f->delivery);
        break;
    case REFERRAL__V1__BROKER_FRAME__BODY_STATUS:
        if (f->status->request_id == c->status_request) {
            c->has_status = true;
            c->status_state = f->status->state;
        }
        break;
    case REFERRAL__V1__BROKER_FRAME__BODY_ERROR:
        if (f->error->code == R(NOT_IDENTIFIED)) {
            session_lost(c, "the broker does not know this session");
            break;
        }
        set_detail(c, f->error->detail);
        say(c, REF_LOG_WARN, "broker error code=%s detail=%s",
            enum_name(&referral__v1__result_code__descriptor, (int)f->error->code),
            f->error->detail);
        break;
    default:
        break;
    }
}

/* Read and act on every frame waiting, without blocking, in batches of
 * BATCH_MAX frames committed once each. */
static ref_err pump(ref_client *c)
{
    if (c->monitor != NULL)
        read_monitor(c);
    keep_alive(c);
    resend_due(c);
    ref_err result = REF_OK;
    for (bool is_more = true; is_more;) {
        batch b;
        memset(&b, 0, sizeof b);
        size_t n = 0;
        for (; n < BATCH_MAX; n++) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, c->sock, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&m);
                if (errno != EAGAIN)
                    result = REF_E_TRANSPORT;
                break;
            }
            c->last_heard_ms = clock_mono_ms();
            c->ping_at_ms = 0;
            Referral__V1__BrokerFrame *f = NULL;
            char why[300];
            wire_err we = wire_decode_broker_frame(zmq_msg_data(&m), zmq_msg_size(&m), NULL, &f,
                                                   why, sizeof why);
            zmq_msg_close(&m);
            if (we != WIRE_OK) {
                say(c, REF_LOG_WARN, "unreadable frame from broker detail=%s", why);
                continue;
            }
            on_frame(c, &b, f);
            wire_free(f);
        }
        is_more = n == BATCH_MAX;
        ref_err e = batch_finish(c, &b);
        if (e != REF_OK)
            result = e;
    }
    return result;
}

ref_err ref_pump(ref_client *c)
{
    if (c == NULL)
        return REF_E_INVALID;
    if (c->sock == NULL)
        return REF_E_CLOSED;
    return pump(c);
}

/* Wait until cond(c) or timeout, pumping. */
static ref_err wait_for(ref_client *c, bool (*cond)(const ref_client *), uint32_t timeout_ms)
{
    uint64_t deadline = clock_mono_ms() + timeout_ms;
    for (;;) {
        ref_err e = pump(c);
        if (e != REF_OK)
            return e;
        if (cond(c))
            return REF_OK;
        uint64_t now = clock_mono_ms();
        if (now >= deadline)
            return REF_E_TIMEOUT;
        zmq_pollitem_t items[2] = {{.socket = c->sock, .events = ZMQ_POLLIN},
                                   {.socket = c->monitor, .events = ZMQ_POLLIN}};
        uint64_t left = deadline - now;
        zmq_poll(items, c->monitor != NULL ? 2 : 1, left > 100 ? 100 : (long)left);
    }
}

/* ---- lifecycle ------------------------------------------------------------ */

/* Hand again what the inbox holds: deliveries the application has not
 * confirmed before the last process ended. Each is verified again. */
static void reload_one(const uint8_t id[16], const state_inbox_entry *e, void *ctx)
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
            r = delivery_from_envelope(c, id, env, &d, &seen, why, sizeof why);
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

/* Open the socket, its monitor, and connect. */
static ref_err connect_socket(ref_client *c, const Referral__V1__DirectoryBroker *b,
                              const char *endpoint, char *why, size_t why_len)
{
    int zero = 0, handshake = 5000, hb = HEARTBEAT_MS, hb_timeout = 3 * HEARTBEAT_MS;
    char monitor[64];
    snprintf(monitor, sizeof monitor, "inproc://libreferral-monitor-%p", (void *)c);
    c->zctx = zmq_ctx_new();
    c->sock = c->zctx != NULL ? zmq_socket(c->zctx, ZMQ_DEALER) : NULL;
    if (c->sock == NULL ||
        zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_HANDSHAKE_IVL, &handshake, sizeof handshake) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_HEARTBEAT_IVL, &hb, sizeof hb) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_HEARTBEAT_TIMEOUT, &hb_timeout, sizeof hb_timeout) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, b->curve_public.data, 32) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, c->keys.curve_public, 32) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, c->keys.curve_secret, 32) != 0 ||
        zmq_socket_monitor(c->sock, monitor,
                           ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED) != 0 ||
        (c->monitor = zmq_socket(c->zctx, ZMQ_PAIR)) == NULL ||
        zmq_setsockopt(c->monitor, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_connect(c->monitor, monitor) != 0 ||
        zmq_connect(c->sock, endpoint) != 0) {
        snprintf(why, why_len, "cannot connect to %s: %s", endpoint, zmq_strerror(errno));
        return REF_E_TRANSPORT;
    }
    return REF_OK;
}

/* Say Hello and wait for the first Welcome (anything else is an error). */
static ref_err first_hello(ref_client *c, const char *broker_id, char *why, size_t why_len)
{
    ref_err e = send_hello(c);
    uint64_t deadline = clock_mono_ms() + c->timeout_ms;
    while (e == REF_OK && c->session != SESSION_OPEN) {
        uint64_t now = clock_mono_ms();
        zmq_pollitem_t item = {.socket = c->sock, .events = ZMQ_POLLIN};
        if (now >= deadline || zmq_poll(&item, 1, (long)(deadline - now)) <= 0) {
            snprintf(why, why_len, "no answer from broker %s within %u ms (is it running, and "
                     "is this agency's CURVE key in its directory?)", broker_id, c->timeout_ms);
            return REF_E_TIMEOUT;
        }
        zmq_msg_t m;
        zmq_msg_init(&m);
        Referral__V1__BrokerFrame *f = NULL;
        if (zmq_msg_recv(&m, c->sock, 0) < 0 ||
            wire_decode_broker_frame(zmq_msg_data(&m), zmq_msg_size(&m), NULL, &f, why,
                                     why_len) != WIRE_OK) {
            e = REF_E_PROTOCOL;
        } else if (f->body_case == REFERRAL__V1__BROKER_FRAME__BODY_WELCOME) {
            c->last_heard_ms = clock_mono_ms();
            on_welcome(c, f->welcome);
        } else {
            snprintf(why, why_len, "broker refused the session: %s",
                     f->body_case == REFERRAL__V1__BROKER_FRAME__BODY_ERROR
                         ? f->error->detail : "unexpected answer");
            e = REF_E_REFUSED;
        }
        wire_free(f);
        zmq_msg_close(&m);
    }
    return e;
}

ref_err ref_client_new(const ref_config *cfg, ref_client **out, char *detail, size_t detail_len)
{
    char why[700] = "";
    if (out == NULL)
        return REF_E_INVALID;
    *out = NULL;
    if (cfg == NULL || cfg->agency_id == NULL || cfg->key_dir == NULL ||
        cfg->directory == NULL || cfg->trust_root == NULL || cfg->broker_id == NULL ||
        cfg->state_dir == NULL) {
        if (detail != NULL)
            snprintf(detail, detail_len, "agency_id, key_dir, directory, trust_root, broker_id "
                     "and state_dir are required");
        return REF_E_INVALID;
    }
    ref_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return REF_E_NO_MEMORY;
    c->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
    c->credit = cfg->credit ? cfg->credit : DEFAULT_CREDIT;
    if (c->credit > MAX_UNCONFIRMED / 2)
        c->credit = MAX_UNCONFIRMED / 2;
    c->log = cfg->log;
    c->log_ctx = cfg->log_ctx;
    ref_err e = REF_OK;
    uint8_t root[32];
    if (!ids_is_valid_name(cfg->agency_id)) {
        snprintf(why, sizeof why, "\"%.64s\" is not a valid agency id", cfg->agency_id);
        e = REF_E_INVALID;
    } else if (!keys_load(cfg->key_dir, cfg->agency_id, &c->keys, why, sizeof why)) {
        e = REF_E_KEYS;
    } else if (!keys_parse_sign_public(cfg->trust_root, root, why, sizeof why) ||
               directory_load(cfg->directory, root, 0, clock_now_ms(), &c->dir, why,
                              sizeof why) != DIRECTORY_OK) {
        e = REF_E_DIRECTORY;
    }
    const Referral__V1__DirectoryBroker *b = NULL;
    if (e == REF_OK && directory_agency(c->dir, cfg->agency_id) == NULL) {
        snprintf(why, sizeof why, "agency %s is not in the directory", cfg->agency_id);
        e = REF_E_UNKNOWN_AGENCY;
    }
    if (e == REF_OK && (b = directory_broker(c->dir, cfg->broker_id)) == NULL) {
        snprintf(why, sizeof why, "broker %s is not in the directory", cfg->broker_id);
        e = REF_E_UNKNOWN_AGENCY;
    }
    if (e == REF_OK)
        e = (ref_err)state_open(cfg->state_dir, &c->st, why, sizeof why);
    if (e == REF_OK) {
        size_t unreadable = 0;
        c->n_unconfirmed = state_inbox_count(c->st);
        state_inbox_each(c->st, reload_one, c, &unreadable);
        if (c->n_ready > 0)
            say(c, REF_LOG_INFO, "handing again deliveries not confirmed before count=%zu",
                c->n_ready);
        if (unreadable > 0)
            say(c, REF_LOG_ERROR, "inbox entries of an unknown format were set aside count=%zu",
                unreadable);
        state_seen_prune(c->st, clock_now_ms());
    }
    if (e == REF_OK)
        e = connect_socket(c, b, cfg->endpoint != NULL ? cfg->endpoint : b->endpoint, why,
                           sizeof why);
    if (e == REF_OK)
        e = first_hello(c, cfg->broker_id, why, sizeof why);
    if (e != REF_OK) {
        if (detail != NULL)
            snprintf(detail, detail_len, "%s", why[0] ? why : ref_strerror(e));
        ref_client_destroy(&c);
        return e;
    }
    *out = c;
    return REF_OK;
}

void ref_client_destroy(ref_client **cp)
{
    if (cp == NULL || *cp == NULL)
        return;
    ref_client *c = *cp;
    for (size_t i = 0; i < c->n_ready; i++)
        ref_delivery_destroy(&c->ready[i]);
    if (c->sock != NULL) {
        zmq_socket_monitor(c->sock, NULL, 0);
        zmq_close(c->sock);
    }
    if (c->monitor != NULL)
        zmq_close(c->monitor);
    if (c->zctx != NULL)
        zmq_ctx_term(c->zctx);
    state_destroy(&c->st);
    directory_destroy(&c->dir);
    keys_wipe(&c->keys);
    free(c);
    *cp = NULL;
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

/* Store in the outbox, submit, and (if wait) wait for the broker's answer. */
static ref_err hand_over(ref_client *c, const uint8_t *env, size_t len, const uint8_t id[16],
                         bool wait)
{
    if (state_outbox_put1(c->st, id, env, len) != REF_OK)
        return REF_E_STATE;
    ref_err e = submit_bytes(c, env, len);
    if (e != REF_OK || !wait)
        return e;
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

/* Seal, sign and hand over (waiting for the answer if wait). */
static ref_err send_body(ref_client *c, const Referral__V1__BodyPlaintext *p,
                         envelope_spec *spec, bool wait, uint8_t mid[16], uint8_t rid[16])
{
    uint8_t *env = NULL;
    size_t len = 0;
    ref_err e = seal_and_sign(c, p, spec, &env, &len, mid, rid);
    if (e == REF_OK)
        e = hand_over(c, env, len, mid, wait);
    free(env);
    return e;
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
        r->category > REF_CATEGORY_OTHER || (r->n_backups > 0 && r->backups == NULL))
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

/* ---- receiving ------------------------------------------------------------ */

static bool has_ready(const ref_client *c)
{
    return c->n_ready > 0;
}

/* One more delivery may come from the broker (credit given back), unless
 * the application holds too many unconfirmed ones. */
static void give_credit(ref_client *c)
{
    if (c->n_unconfirmed < MAX_UNCONFIRMED) {
        send_credit(c, 1);
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
    ref_err e = wait_for(c, has_ready, timeout_ms);
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

ref_err ref_delivery_done(ref_client *c, const ref_delivery *d)
{
    if (c == NULL || d == NULL)
        return REF_E_INVALID;
    if (c->st == NULL)
        return REF_E_CLOSED;
    state_txn *txn;
    if (state_begin(c->st, &txn) != REF_OK)
        return REF_E_STATE;
    if (state_inbox_del(txn, d->wire_id) != REF_OK) {
        state_abort(&txn);
        return REF_E_STATE;
    }
    if (state_commit(&txn) != REF_OK)
        return REF_E_STATE;
    if (c->n_unconfirmed > 0)
        c->n_unconfirmed--;
    if (c->owed_credit > 0 && c->n_unconfirmed < MAX_UNCONFIRMED) {
        c->owed_credit--;
        send_credit(c, 1);
    }
    say(c, REF_LOG_DEBUG, "confirmed msg=%s", d->message_id);
    return REF_OK;
}

static ref_err compose_receipt(ref_client *c, const uint8_t mid[16], const state_seen *seen,
                               ref_level level, const char *person, const char *reason,
                               uint8_t **env, size_t *len, uint8_t rmid[16])
{
    Referral__V1__Receipt rc = REFERRAL__V1__RECEIPT__INIT;
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
    };
    uint8_t rid[16];
    return seal_and_sign(c, &p, &spec, env, len, rmid, rid);
}

ref_err ref_acknowledge(ref_client *c, const char *mid_hex, ref_level level, const char *person,
                        const char *reason)
{
    uint8_t mid[16];
    if (c == NULL || !ids_from_hex(mid_hex, mid) || level < REF_LEVEL_DELIVERED ||
        level > REF_LEVEL_CLOSED)
        return REF_E_INVALID;
    if ((level >= REF_LEVEL_RECEIVED && (person == NULL || person[0] == '\0')) ||
        (level == REF_LEVEL_REJECTED && (reason == NULL || reason[0] == '\0')))
        return REF_E_INVALID;
    if (!is_text_ok(person) || !is_text_ok(reason) || strnlen(person ? person : "", 200) >= 200)
        return REF_E_TOO_LARGE;
    state_seen seen;
    if (state_seen_get(c->st, NULL, mid, &seen) != REF_OK) {
        set_detail(c, "no referral with this message id was received here");
        return REF_E_INVALID;
    }
    uint8_t *env = NULL, rmid[16];
    size_t len = 0;
    ref_err e = compose_receipt(c, mid, &seen, level, person, reason, &env, &len, rmid);
    if (e == REF_OK)
        e = hand_over(c, env, len, rmid, true);
    free(env);
    return e;
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

/* ---- accessors ------------------------------------------------------------ */

ref_delivery_kind ref_delivery_kind_of(const ref_delivery *d) { return d->kind; }
const char *ref_delivery_message_id(const ref_delivery *d) { return d->message_id; }
const char *ref_delivery_referral_id(const ref_delivery *d) { return d->referral_id; }
const char *ref_delivery_from(const ref_delivery *d) { return d->from; }
ref_urgency ref_delivery_urgency(const ref_delivery *d) { return d->urgency; }
const char *ref_delivery_narrative(const ref_delivery *d) { return d->narrative; }
const char *ref_delivery_requested_action(const ref_delivery *d) { return d->requested_action; }
const char *ref_delivery_subject_pseudonym(const ref_delivery *d) { return d->pseudonym; }
uint32_t ref_delivery_subject_age(const ref_delivery *d) { return d->age; }
int ref_delivery_level(const ref_delivery *d) { return d->level; }
const char *ref_delivery_detail(const ref_delivery *d) { return d->detail; }
uint32_t ref_delivery_attempt(const ref_delivery *d) { return d->attempt; }
