/*
 * client: libreferral's connection to the home broker (referral.h).
 *
 * One DEALER socket with CURVE (the server key from the directory), one
 * frame per ZeroMQ message (docs/protocol.md). Every blocking call is a
 * bounded loop over pump(), which reads whatever arrived: submit answers
 * clear the outbox, deliveries are verified, opened, remembered and
 * settled, then kept for ref_receive().
 *
 * It must never hand the application a message twice, one it did not
 * verify, or write to stderr.
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
#define MAX_TEXT (64u << 10)
#define MAX_RETRY 256u
#define RETRY_AFTER_MS 1000u
#define R(x) REFERRAL__V1__RESULT_CODE__RESULT_##x

struct ref_delivery {
    uint8_t wire_id[16];            /* the Delivery's message id, settled on hand-over */
    bool is_local;                  /* made here (a refused outbox entry): nothing to settle */
    bool has_seen;                  /* record seen (envelopes) on hand-over */
    state_seen seen;
    ref_delivery_kind kind;
    char message_id[REF_ID_HEX_LEN + 1];
    char referral_id[REF_ID_HEX_LEN + 1];
    char from[IDS_NAME_MAX + 1];
    ref_urgency urgency;
    int level;
    char *narrative, *requested_action, *pseudonym, *detail;
    uint32_t age;
};

struct ref_client {
    keys_identity keys;
    directory *dir;
    state *st;
    void *zctx, *sock;
    uint32_t timeout_ms, credit;
    uint64_t next_request;
    ref_log_fn log;
    void *log_ctx;
    char last_detail[512];
    ref_delivery *ready[MAX_READY];
    size_t n_ready;
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
    return rc < 0 ? REF_E_TRANSPORT : REF_OK;
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
    Referral__V1__Envelope *env = referral__v1__envelope__unpack(NULL, len, env_bytes);
    if (env == NULL)
        return REF_E_STATE;
    Referral__V1__Submit s = REFERRAL__V1__SUBMIT__INIT;
    s.request_id = ++c->next_request;
    s.envelope = env;
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_SUBMIT;
    f.submit = &s;
    ref_err e = send_frame(c, &f);
    referral__v1__envelope__free_unpacked(env, NULL);
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

/* Keep d until the application takes it. Nothing is settled before then:
 * if the process dies first, the broker delivers it again. The queue holds
 * at most the credit granted (credit is given back one by one as the
 * application takes deliveries), so it cannot fill; a copy delivered again
 * while the first still waits here is left unsettled (the first copy's
 * settle covers both). */
static void keep_ready(ref_client *c, ref_delivery *d)
{
    for (size_t i = 0; i < c->n_ready; i++) {
        if (memcmp(c->ready[i]->wire_id, d->wire_id, 16) == 0) {
            ref_delivery_destroy(&d);
            return;
        }
    }
    if (c->n_ready == MAX_READY) {   /* beyond credit: a broker bug; it will redeliver */
        say(c, REF_LOG_ERROR, "ready queue full, delivery left unsettled msg=%s",
            d->message_id);
        ref_delivery_destroy(&d);
        return;
    }
    c->ready[c->n_ready++] = d;
}

static void on_notice(ref_client *c, const Referral__V1__Delivery *dl)
{
    Referral__V1__Notice *n = NULL;
    char why[256];
    if (wire_decode_notice(dl->notice->notice.data, dl->notice->notice.len, NULL, &n, why,
                           sizeof why) != WIRE_OK) {
        say(c, REF_LOG_WARN, "unreadable notice refused detail=%s", why);
        send_settle(c, dl->message_id.data, REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_REJECT, why);
        return;
    }
    /* A notice must be signed by the broker that made it (a broker in the
     * directory): it may tell the desk to phone an agency. */
    const Referral__V1__DirectoryBroker *by = directory_broker(c->dir, n->broker_id);
    uint8_t kid[SIGN_KEY_ID_BYTES];
    if (by != NULL)
        sign_key_id(by->sign_public.data, kid);
    if (by == NULL || memcmp(kid, dl->notice->signer_key_id.data, SIGN_KEY_ID_BYTES) != 0 ||
        !sign_verify(by->sign_public.data, "referral.v1 notice", dl->notice->notice.data,
                     dl->notice->notice.len, dl->notice->signature.data)) {
        say(c, REF_LOG_WARN, "notice not signed by broker %s, refused", n->broker_id);
        send_settle(c, dl->message_id.data, REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_REJECT,
                    "notice signature does not verify");
        wire_free(n);
        return;
    }
    ref_delivery *d = calloc(1, sizeof *d);
    if (d != NULL) {
        d->kind = REF_DELIVERY_NOTICE;
        ids_hex(n->message_id.data, 16, d->message_id);
        if (n->referral_id.len == 16)
            ids_hex(n->referral_id.data, 16, d->referral_id);
        snprintf(d->from, sizeof d->from, "%s", n->broker_id);
        d->urgency = (ref_urgency)dl->urgency;
        d->level = n->kind == REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ACK_LEVEL ? (int)n->level : 0;
        char text[700];
        snprintf(text, sizeof text, "%s: %s (about %s)",
                 protobuf_c_enum_descriptor_get_value(&referral__v1__notice_kind__descriptor,
                                                      (int)n->kind)->name,
                 n->detail, n->about_agency);
        d->detail = dup_text(text);
        d->narrative = dup_text("");
        d->requested_action = dup_text("");
        d->pseudonym = dup_text("");
        memcpy(d->wire_id, dl->message_id.data, 16);
        keep_ready(c, d);
    }
    wire_free(n);
}

static void on_envelope(ref_client *c, const Referral__V1__Delivery *dl)
{
    char why[300] = "";
    Referral__V1__RoutingHeader *h = NULL;
    Referral__V1__BodyPlaintext *p = NULL;
    const uint8_t *mid = dl->message_id.data;
    char hex[REF_ID_HEX_LEN + 1];
    ids_hex(mid, 16, hex);
    state_seen seen;
    if (state_seen_get(c->st, mid, &seen) == REF_OK) {
        say(c, REF_LOG_DEBUG, "duplicate delivery settled again msg=%s", hex);
        send_settle(c, mid, REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_ACK, NULL);
        return;
    }
    if (envelope_open(&c->keys, c->dir, dl->envelope, &h, &p, why, sizeof why) != REF_OK) {
        say(c, REF_LOG_WARN, "delivery failed verification, refused msg=%s detail=%s", hex, why);
        send_settle(c, mid, REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_REJECT, why);
        return;
    }
    ref_delivery *d = calloc(1, sizeof *d);
    if (d == NULL) {
        wire_free(h);
        wire_free(p);
        return;   /* not settled: the broker delivers it again */
    }
    ids_hex(h->message_id.data, 16, d->message_id);
    ids_hex(h->referral_id.data, 16, d->referral_id);
    snprintf(d->from, sizeof d->from, "%s", h->from_agency);
    d->urgency = (ref_urgency)h->urgency;
    if (p->body_case == REFERRAL__V1__BODY_PLAINTEXT__BODY_CASE_FILE) {
        const Referral__V1__CaseFile *cf = p->case_file;
        d->kind = REF_DELIVERY_REFERRAL;
        d->narrative = dup_text(cf->narrative);
        d->requested_action = dup_text(cf->requested_action);
        d->pseudonym = dup_text(cf->subject != NULL ? cf->subject->pseudonym : "");
        d->age = cf->subject != NULL ? cf->subject->age_years : 0;
        d->detail = dup_text("");
    } else if (p->body_case == REFERRAL__V1__BODY_PLAINTEXT__BODY_RECEIPT) {
        const Referral__V1__Receipt *r = p->receipt;
        d->kind = REF_DELIVERY_RECEIPT;
        d->level = (int)r->level;
        if (r->message_id.len == 16)
            ids_hex(r->message_id.data, 16, d->referral_id);   /* the referral message acked */
        char text[700];
        snprintf(text, sizeof text, "%s by %s%s%s", protobuf_c_enum_descriptor_get_value(
                     &referral__v1__ack_level__descriptor, (int)r->level) != NULL
                     ? protobuf_c_enum_descriptor_get_value(&referral__v1__ack_level__descriptor,
                                                            (int)r->level)->name
                     : "ACK_LEVEL_?", r->agency_id, r->person[0] ? ", " : "", r->person);
        const char *said = r->reason_detail[0] ? r->reason_detail
                         : r->outcome_detail[0] ? r->outcome_detail : r->action_detail;
        d->detail = dup_text(said[0] ? said : text);
        d->narrative = dup_text(text);
        d->requested_action = dup_text("");
        d->pseudonym = dup_text("");
    } else {
        d->kind = REF_DELIVERY_REFERRAL;
        d->narrative = dup_text(p->update != NULL ? p->update->narrative : "");
        d->requested_action = dup_text("");
        d->pseudonym = dup_text("");
        d->detail = dup_text("");
    }
    d->seen.forget_at_ms = h->expires_at_ms + 30ull * 24 * 3600 * 1000;
    memcpy(d->seen.referral_id, h->referral_id.data, 16);
    snprintf(d->seen.from, sizeof d->seen.from, "%s", h->from_agency);
    d->seen.urgency = (uint8_t)h->urgency;
    d->has_seen = true;
    memcpy(d->wire_id, mid, 16);
    say(c, REF_LOG_DEBUG, "verified and opened msg=%s referral=%s from=%s", d->message_id,
        d->referral_id, d->from);
    keep_ready(c, d);
    wire_free(h);
    wire_free(p);
}

/* A submission nobody waits for (sent again from the outbox, or with
 * ref_send_async) was refused for good: never drop that silently. It
 * becomes a notice for the application and an error in the log. */
static void refused_in_background(ref_client *c, const Referral__V1__SubmitReply *r)
{
    char hex[REF_ID_HEX_LEN + 1] = "";
    if (r->message_id.len == 16)
        ids_hex(r->message_id.data, 16, hex);
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&referral__v1__result_code__descriptor, (int)r->code);
    say(c, REF_LOG_ERROR, "broker refused a referral from the outbox msg=%s code=%s detail=%s",
        hex, v != NULL ? v->name : "?", r->detail);
    ref_delivery *d = calloc(1, sizeof *d);
    if (d == NULL)
        return;
    char text[700];
    snprintf(text, sizeof text, "the broker refused message %s: %s: %s; it was not sent",
             hex, v != NULL ? v->name : "?", r->detail);
    d->kind = REF_DELIVERY_NOTICE;
    d->is_local = true;
    snprintf(d->message_id, sizeof d->message_id, "%s", hex);
    snprintf(d->from, sizeof d->from, "%s", "libreferral");
    d->urgency = REF_URGENCY_URGENT;
    d->detail = dup_text(text);
    d->narrative = dup_text("");
    d->requested_action = dup_text("");
    d->pseudonym = dup_text("");
    if (r->message_id.len == 16)
        memcpy(d->wire_id, r->message_id.data, 16);
    keep_ready(c, d);
}

/* The broker said "later" (store full, busy, stopping): send the outbox
 * entry again after RETRY_AFTER_MS. A full retry list leaves it for the
 * next start (it stays in the outbox). */
static void retry_later(ref_client *c, const uint8_t id[16])
{
    for (size_t i = 0; i < c->n_retry; i++)
        if (memcmp(c->retry[i].id, id, 16) == 0)
            return;
    if (c->n_retry == MAX_RETRY) {
        say(c, REF_LOG_WARN, "retry list full; the outbox entry waits for the next start");
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

/* Read and act on every frame waiting, without blocking. */
static ref_err pump(ref_client *c)
{
    resend_due(c);
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return errno == EAGAIN ? REF_OK : REF_E_TRANSPORT;
        }
        Referral__V1__BrokerFrame *f = NULL;
        char why[300];
        wire_err we = wire_decode_broker_frame(zmq_msg_data(&m), zmq_msg_size(&m), NULL, &f, why,
                                               sizeof why);
        zmq_msg_close(&m);
        if (we != WIRE_OK) {
            say(c, REF_LOG_WARN, "unreadable frame from broker detail=%s", why);
            continue;
        }
        switch (f->body_case) {
        case REFERRAL__V1__BROKER_FRAME__BODY_SUBMIT_REPLY: {
            const Referral__V1__SubmitReply *r = f->submit_reply;
            bool is_transient = r->code == R(STORE_FULL) || r->code == R(BUSY) ||
                                r->code == R(SHUTTING_DOWN) || r->code == R(INTERNAL);
            if (r->message_id.len == 16 && !is_transient)
                state_outbox_del(c->st, r->message_id.data);
            if (r->code != R(OK))
                set_detail(c, r->detail);
            bool is_awaited = c->is_awaiting && r->message_id.len == 16 &&
                              memcmp(r->message_id.data, c->awaited_id, 16) == 0;
            if (is_transient && r->message_id.len == 16) {
                retry_later(c, r->message_id.data);   /* an awaited send keeps waiting */
            } else if (is_awaited) {
                c->has_answer = true;
                c->answer = r->code;
            } else if (r->code != R(OK)) {
                refused_in_background(c, r);
            }
            break;
        }
        case REFERRAL__V1__BROKER_FRAME__BODY_DELIVERY:
            if (f->delivery->payload_case == REFERRAL__V1__DELIVERY__PAYLOAD_ENVELOPE)
                on_envelope(c, f->delivery);
            else
                on_notice(c, f->delivery);
            break;
        case REFERRAL__V1__BROKER_FRAME__BODY_STATUS:
            if (f->status->request_id == c->status_request) {
                c->has_status = true;
                c->status_state = f->status->state;
            }
            break;
        case REFERRAL__V1__BROKER_FRAME__BODY_ERROR:
            set_detail(c, f->error->detail);
            say(c, REF_LOG_WARN, "broker error code=%d detail=%s", (int)f->error->code,
                f->error->detail);
            break;
        default:
            break;
        }
        wire_free(f);
    }
}

ref_err ref_pump(ref_client *c)
{
    if (c == NULL)
        return REF_E_INVALID;
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
        zmq_pollitem_t item = {.socket = c->sock, .events = ZMQ_POLLIN};
        uint64_t left = deadline - now;
        zmq_poll(&item, 1, left > 200 ? 200 : (long)left);
    }
}

/* ---- lifecycle ------------------------------------------------------------ */

static void resend_one(const uint8_t id[16], const uint8_t *env, size_t len, void *ctx)
{
    (void)id;
    submit_bytes(ctx, env, len);
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
    if (c->credit > MAX_READY / 2)
        c->credit = MAX_READY / 2;
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
        int zero = 0, handshake = 5000;
        const char *endpoint = cfg->endpoint != NULL ? cfg->endpoint : b->endpoint;
        c->zctx = zmq_ctx_new();
        c->sock = c->zctx != NULL ? zmq_socket(c->zctx, ZMQ_DEALER) : NULL;
        if (c->sock == NULL ||
            zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
            zmq_setsockopt(c->sock, ZMQ_HANDSHAKE_IVL, &handshake, sizeof handshake) != 0 ||
            zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, b->curve_public.data, 32) != 0 ||
            zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, c->keys.curve_public, 32) != 0 ||
            zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, c->keys.curve_secret, 32) != 0 ||
            zmq_connect(c->sock, endpoint) != 0) {
            snprintf(why, sizeof why, "cannot connect to %s: %s", endpoint, zmq_strerror(errno));
            e = REF_E_TRANSPORT;
        }
    }
    if (e == REF_OK) {
        Referral__V1__Hello hello = REFERRAL__V1__HELLO__INIT;
        hello.agency_id = c->keys.id;
        hello.client_name = "libreferral";
        hello.client_version = REF_VERSION;
        Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
        f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_HELLO;
        f.hello = &hello;
        e = send_frame(c, &f);
    }
    if (e == REF_OK) {
        /* Welcome is the first frame back; anything else is an error. */
        zmq_pollitem_t item = {.socket = c->sock, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, c->timeout_ms) <= 0) {
            snprintf(why, sizeof why, "no answer from broker %s within %u ms (is it running, "
                     "and is this agency's CURVE key in its directory?)", cfg->broker_id,
                     c->timeout_ms);
            e = REF_E_TIMEOUT;
        } else {
            zmq_msg_t m;
            zmq_msg_init(&m);
            Referral__V1__BrokerFrame *f = NULL;
            if (zmq_msg_recv(&m, c->sock, 0) < 0 ||
                wire_decode_broker_frame(zmq_msg_data(&m), zmq_msg_size(&m), NULL, &f, why,
                                         sizeof why) != WIRE_OK) {
                e = REF_E_PROTOCOL;
            } else if (f->body_case != REFERRAL__V1__BROKER_FRAME__BODY_WELCOME) {
                snprintf(why, sizeof why, "broker refused the session: %s",
                         f->body_case == REFERRAL__V1__BROKER_FRAME__BODY_ERROR
                             ? f->error->detail : "unexpected answer");
                e = REF_E_REFUSED;
            }
            wire_free(f);
            zmq_msg_close(&m);
        }
    }
    if (e == REF_OK)
        e = send_credit(c, c->credit);
    if (e == REF_OK) {
        size_t n = state_outbox_count(c->st);
        if (n > 0)
            say(c, REF_LOG_INFO, "sending again referrals left in the outbox count=%zu", n);
        state_outbox_each(c->st, resend_one, c);
        state_seen_prune(c->st, clock_now_ms());
    }
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
    if (c->sock != NULL)
        zmq_close(c->sock);
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
    if (state_outbox_put(c->st, id, env, len) != REF_OK)
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

/* Pack p, seal and sign it as spec says (spec->plaintext is filled here),
 * and hand it over (waiting for the answer if wait). mid and rid get the
 * new envelope's message and referral ids. */
static ref_err send_body(ref_client *c, const Referral__V1__BodyPlaintext *p,
                         envelope_spec *spec, bool wait, uint8_t mid[16], uint8_t rid[16])
{
    size_t plen;
    uint8_t *plain = wire_pack(p, &plen);
    if (plain == NULL)
        return REF_E_NO_MEMORY;
    spec->plaintext = plain;
    spec->plaintext_len = plen;
    uint8_t *env = NULL;
    size_t len;
    char why[300] = "";
    ref_err e = (ref_err)envelope_compose(&c->keys, c->dir, spec, &env, &len, mid, rid, why,
                                          sizeof why);
    OPENSSL_cleanse(plain, plen);
    free(plain);
    if (e != REF_OK) {
        set_detail(c, why);
        return e;
    }
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
    if (e != REF_OK)
        return e;
    ref_delivery *d = c->ready[0];
    memmove(c->ready, c->ready + 1, (c->n_ready - 1) * sizeof c->ready[0]);
    c->n_ready--;
    if (d->is_local) {
        *out = d;
        return REF_OK;
    }
    /* Hand-over: remember the id durably (so a copy delivered again is not
     * shown twice), settle with the broker, give the credit back, and for
     * a referral tell the sender it is DELIVERED. */
    if (d->has_seen && state_seen_put(c->st, d->wire_id, &d->seen) != REF_OK) {
        say(c, REF_LOG_ERROR, "cannot record a delivery in the state directory msg=%s",
            d->message_id);
        send_settle(c, d->wire_id, REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_NAK, NULL);
        send_credit(c, 1);
        ref_delivery_destroy(&d);
        return REF_E_STATE;
    }
    send_settle(c, d->wire_id, REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_ACK, NULL);
    send_credit(c, 1);
    say(c, REF_LOG_INFO, "received msg=%s referral=%s from=%s", d->message_id, d->referral_id,
        d->from);
    if (d->kind == REF_DELIVERY_REFERRAL && d->has_seen)
        ref_acknowledge(c, d->message_id, REF_LEVEL_DELIVERED, "", "");
    *out = d;
    return REF_OK;
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
    if (state_seen_get(c->st, mid, &seen) != REF_OK) {
        set_detail(c, "no referral with this message id was received here");
        return REF_E_INVALID;
    }
    Referral__V1__Receipt rc = REFERRAL__V1__RECEIPT__INIT;
    rc.referral_id = (ProtobufCBinaryData){16, seen.referral_id};
    rc.message_id = (ProtobufCBinaryData){16, mid};
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
        .to_agency = seen.from,
        .urgency = (Referral__V1__Urgency)(seen.urgency ? seen.urgency : 1),
        .ttl_ms = (uint64_t)DEFAULT_TTL_S * 1000u,
        .referral_id = seen.referral_id,
        .in_reply_to = mid,
    };
    uint8_t rmid[16], rid[16];
    /* DELIVERED goes out with the hand-over and is not waited for. */
    return send_body(c, &p, &spec, level != REF_LEVEL_DELIVERED, rmid, rid);
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
