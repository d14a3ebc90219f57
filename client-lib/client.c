/*
 * client: libreferral's connection to the home broker (referral.h): the
 * socket, the session, and the pump. Deliveries are delivery.c's, sending
 * is send.c's; client_impl.h is what they share.
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
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <zmq.h>

#include "client_impl.h"
#include "clock.h"
#include "monitor.h"
#include "envelope.h"
#include "ref_version.h"
#include "sign.h"
#include "wire.h"

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
void say(const ref_client *c, ref_log_level level, const char *fmt, ...)
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

void set_detail(ref_client *c, const char *text)
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

/* Send buf (a packed ClientFrame, len bytes) and free it; NULL: out of memory. */
static ref_err send_packed(ref_client *c, uint8_t *buf, size_t len)
{
    if (buf == NULL)
        return REF_E_NO_MEMORY;
    int rc = zmq_send(c->sock, buf, len, ZMQ_DONTWAIT);
    free(buf);
    if (rc < 0)
        return REF_E_TRANSPORT;
    c->last_sent_ms = clock_mono_ms();
    return REF_OK;
}

ref_err send_frame(ref_client *c, Referral__V1__ClientFrame *f)
{
    f->version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    size_t len = 0;
    uint8_t *buf = wire_pack(f, &len);
    return send_packed(c, buf, len);
}

ref_err send_credit(ref_client *c, uint32_t n)
{
    Referral__V1__Credit cr = REFERRAL__V1__CREDIT__INIT;
    cr.grant = n;
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_CREDIT;
    f.credit = &cr;
    return send_frame(c, &f);
}

ref_err send_settle(ref_client *c, const uint8_t id[16], Referral__V1__SettleVerb verb,
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

ref_err submit_bytes(ref_client *c, const uint8_t *env_bytes, size_t len)
{
    size_t n = 0;
    uint8_t *buf = wire_pack_submit(++c->next_request, env_bytes, len, &n);
    ref_err e = send_packed(c, buf, n);
    if (e == REF_OK)
        c->n_unanswered++;
    return e;
}

ref_err submit_stored(ref_client *c, const uint8_t *env_bytes, size_t len)
{
    Referral__V1__Envelope *env = NULL;
    if (wire_decode_envelope(env_bytes, len, NULL, &env, NULL, 0) != WIRE_OK)
        return REF_E_STATE;
    wire_free(env);
    return submit_bytes(c, env_bytes, len);
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

/* ---- the session ---------------------------------------------------------- */

static void resend_one(const uint8_t id[16], const uint8_t *env, size_t len, void *ctx)
{
    (void)id;
    submit_stored(ctx, env, len);
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
    c->credit_to_send = 0;   /* given back to the old session: this grant replaces it */
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
    c->n_unanswered = 0;   /* answers to the old connection's submits are gone with it */
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
    uint16_t event;
    uint32_t value;
    while (monitor_next(c->monitor, &event, &value)) {
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
    case REFERRAL__V1__BROKER_FRAME__BODY_DELIVERY: {
        size_t kept = b->n_arrived;
        if (f->delivery->payload_case == REFERRAL__V1__DELIVERY__PAYLOAD_ENVELOPE)
            on_envelope(c, b, f->delivery);
        else if (f->delivery->payload_case == REFERRAL__V1__DELIVERY__PAYLOAD_COPY)
            on_copy(c, b, f->delivery);
        else
            on_notice(c, b, f->delivery);
        /* Each delivery took one unit of credit. One kept for the
         * application gives it back when it is taken (ref_receive); one
         * that is not (a duplicate settled again, one refused, one left
         * unsettled to come again) gives it back now, or the session
         * would run dry on duplicates after a restart. */
        if (b->n_arrived == kept)
            c->credit_to_send++;
        break;
    }
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
        if (f->error->request_id != 0 && c->n_unanswered > 0)
            c->n_unanswered--;   /* an answer too (a submit the broker could not read) */
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
ref_err pump(ref_client *c)
{
    c->pumped_at_ms = clock_mono_ms();
    if (c->monitor != NULL)
        read_monitor(c);
    keep_alive(c);
    resend_due(c);
    ref_err result = REF_OK;
    for (bool is_first = true, is_more = true; is_more; is_first = false) {
        batch b;
        memset(&b, 0, sizeof b);
        if (is_first)
            batch_sends(c, &b);   /* queued referrals: in this commit, then submitted */
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
        /* Confirmations ride with a commit made anyway; alone only when
         * many wait or the application has taken everything ready. */
        if (b.txn != NULL || c->n_done >= DONE_FLUSH_AT || (n == 0 && c->n_ready == 0))
            batch_done(c, &b);
        is_more = n == BATCH_MAX;
        ref_err e = batch_finish(c, &b);
        if (e != REF_OK)
            result = e;
    }
    if (c->credit_to_send > 0 && c->session == SESSION_OPEN &&
        send_credit(c, c->credit_to_send) == REF_OK)
        c->credit_to_send = 0;   /* kept for the next pump when it could not leave */
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
ref_err wait_for(ref_client *c, bool (*cond)(const ref_client *), uint32_t timeout_ms)
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
        state_prune(c->st, clock_now_ms());
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
    if (c->st != NULL && c->sock != NULL && c->n_pending > 0 && flush_sends(c) != REF_OK)
        say(c, REF_LOG_ERROR, "referrals sent with ref_send_async() could not be written to "
            "the outbox and are lost count=%zu", c->n_pending);
    for (size_t i = 0; c->pending != NULL && i < c->n_pending; i++)
        free(c->pending[i].env);
    free(c->pending);
    if (c->st != NULL && flush_done(c) != REF_OK)
        say(c, REF_LOG_WARN, "confirmations not recorded; those deliveries come again at the "
            "next start count=%zu", c->n_done);
    for (size_t i = 0; i < c->n_ready; i++)
        ref_delivery_destroy(&c->ready[i]);
    if (c->sock != NULL) {
        /* Frames still queued (the last settles and receipts) get a short
         * while to leave; what does not leave is in the outbox or
         * unsettled at the broker, and comes again at the next session. */
        int linger = (int)(c->timeout_ms < CLOSE_LINGER_MS ? c->timeout_ms : CLOSE_LINGER_MS);
        zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
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

