/*
 * loop: referrald's event loop. One turn:
 *
 *   wait for frames, verdicts, disconnects or the next deadline
 *   end the sessions of closed connections          (read_disconnects)
 *   read frames into the inbound ring, hand the signature checks of
 *   Submits to the worker threads, take back their verdicts  (inbound.h)
 *   begin one write transaction
 *     count the attempts of last turn's sent deliveries (count_sent)
 *     fire due escalation steps, crisis first       (fire_escalations)
 *     handle the ring's ready frames, oldest first (handle_frame)
 *     fire due deadlines                           (fire_deadlines)
 *     return deliveries whose send failed          (return_lost)
 *     hand queued messages to sessions with credit (deliver)
 *     remove what retention no longer keeps         (sweep, retention.h)
 *   commit once, with fsync (group commit)
 *   send every reply and delivery of the turn      (flush)
 *
 * Nothing is sent before the commit that makes it true, and an attempt is
 * counted only once its delivery has left (delivery.h, delivery_take). A
 * session belongs to one connection and one key (session.h): a frame from
 * another socket or key on its routing id ends it, and so does the
 * ROUTER's monitor reporting its connection closed. A failed commit
 * ends the process (BROKER_EXIT_STORE): LMDB keeps the last good state and
 * the restart recovers; retrying in place could acknowledge lost writes.
 */
#include "loop.h"

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "admin.h"
#include "clock.h"
#include "inbound.h"
#include "ingress.h"
#include "log.h"
#include "monitor.h"
#include "metrics.h"
#include "peer.h"
#include "ref_version.h"
#include "retention.h"
#include "trace.h"
#include "verify.h"
#include "zap.h"

#define R(x) REFERRAL__V1__RESULT_CODE__RESULT_##x
#define MAX_WAIT_MS 1000

bool loop_queue_frame(broker *b, const uint8_t *rid, size_t rid_len, uint8_t *data, size_t len)
{
    return link_queue(&b->clients, rid, rid_len, data, len) != NULL;
}

static void queue_reply(broker *b, const uint8_t *rid, size_t rid_len,
                        Referral__V1__BrokerFrame *f)
{
    f->version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    size_t len;
    uint8_t *buf = wire_pack(f, &len);
    if (buf != NULL)
        loop_queue_frame(b, rid, rid_len, buf, len);
}

/* An ErrorReply naming request_id (0: none could be read). */
static void queue_error_for(broker *b, const uint8_t *rid, size_t rid_len, uint64_t request_id,
                            Referral__V1__ResultCode code, const char *detail)
{
    Referral__V1__ErrorReply er = REFERRAL__V1__ERROR_REPLY__INIT;
    er.code = code;
    er.detail = (char *)(uintptr_t)detail;
    er.request_id = request_id;
    Referral__V1__BrokerFrame f = REFERRAL__V1__BROKER_FRAME__INIT;
    f.body_case = REFERRAL__V1__BROKER_FRAME__BODY_ERROR;
    f.error = &er;
    queue_reply(b, rid, rid_len, &f);
}

static void queue_error(broker *b, const uint8_t *rid, size_t rid_len,
                        Referral__V1__ResultCode code, const char *detail)
{
    queue_error_for(b, rid, rid_len, 0, code, detail);
}

/* End session s: drop its deliveries waiting to be sent (session_close
 * hands what it holds to the orphans, returned next turn) and, when its
 * connection is gone, every frame for its routing id, which another
 * connection may hold by the time they would be sent. */
static void end_session(broker *b, session *s, const char *why, bool is_connection_gone)
{
    if (s == NULL)
        return;
    char hex[33];
    log_info("session", "session ended agency=%s key=%s serial=%llu why=%s in_flight=%zu",
             s->agency, ids_hex(s->key_id, 8, hex), (unsigned long long)s->serial, why,
             s->n_flights);
    link_drop(&b->clients, s->rid, s->rid_len, is_connection_gone, s->serial);
    session_close(&b->sessions, s);
    b->is_busy = true;   /* return its deliveries now */
}

/* A Hello: open a session for this connection (or restart its own), bound
 * to its socket fd and key; beyond the agency's cap its oldest session
 * ends. s is this routing id's session, already checked to be this
 * connection's. */
static void handle_hello(broker *b, session *s, const uint8_t *rid, size_t rid_len, int fd,
                         const Referral__V1__Hello *hello, const char *agency,
                         const uint8_t key_id[16])
{
    /* The identity is the CURVE key's (ZAP User-Id); Hello may only name it. */
    if (strcmp(hello->agency_id, agency) != 0) {
        log_warn("session", "refused hello: names another agency key_agency=%s hello_agency=%s",
                 agency, hello->agency_id);
        queue_error(b, rid, rid_len, R(NOT_AUTHORIZED),
                    "hello names an agency other than the one this connection's key belongs to");
        return;
    }
    if (!session_is_broker_rid(rid, rid_len)) {
        log_warn("session", "refused hello: client chose its routing id agency=%s rid_bytes=%zu",
                 agency, rid_len);
        queue_error(b, rid, rid_len, R(INVALID_FIELD),
                    "this connection set its own ZeroMQ routing id (ZMQ_ROUTING_ID); do not set "
                    "one: the broker gives each connection its own, and a chosen one can be "
                    "taken by another connection after this one closes");
        return;
    }
    if (s != NULL) {
        s->credit = 0;   /* Hello again on the same connection: a fresh start */
        s->last_seen_ms = clock_mono_ms();
    } else {
        session *victim;
        session_room_result room = session_room(&b->sessions, agency, clock_mono_ms(),
                                                b->cfg.session_idle_ms / 2, &victim);
        if (room == SESSION_ROOM_TABLE_FULL) {
            log_warn("session", "refused hello: session table full, one session per agency "
                     "agency=%s max_sessions=%u", agency, b->cfg.max_sessions);
            queue_error(b, rid, rid_len, R(BUSY), "broker has no room for another session; "
                        "retry later (operators: raise [limits] max_sessions)");
            return;
        }
        if (room == SESSION_ROOM_AGENCY_FULL) {
            log_warn("session", "refused hello: the agency holds its cap of live sessions "
                     "agency=%s max_sessions_per_agency=%u", agency,
                     b->cfg.max_sessions_per_agency);
            queue_error(b, rid, rid_len, R(BUSY), "this agency already holds "
                        "max_sessions_per_agency live sessions; retry later or close one "
                        "(operators: raise [limits] max_sessions_per_agency)");
            return;
        }
        if (victim != NULL) {
            char detail[256];
            bool is_own = strcmp(victim->agency, agency) == 0;
            snprintf(detail, sizeof detail, "session closed: %s; send Hello again only if "
                     "this connection is still needed",
                     is_own ? "this agency opened a newer one beyond max_sessions_per_agency"
                            : "the broker's session table is full and this agency holds the "
                              "most sessions");
            log_warn("session", "evicting oldest session agency=%s for=%s max_sessions_per_agency=%u",
                     victim->agency, agency, b->cfg.max_sessions_per_agency);
            uint8_t vrid[SESSION_RID_MAX];
            size_t vlen = victim->rid_len;
            memcpy(vrid, victim->rid, vlen);
            end_session(b, victim, "evicted", false);
            queue_error(b, vrid, vlen, R(NOT_IDENTIFIED), detail);
        }
        s = session_open(&b->sessions, rid, rid_len, agency, key_id, fd, clock_mono_ms());
        assert(s != NULL && "session_room promised a slot");
        if (fd < 0)
            log_warn("session", "connection socket unknown (ZMQ_SRCFD): this session ends only "
                     "by idle timeout, a failed send or another key agency=%s", agency);
    }
    char name[80];
    log_info("session", "opened agency=%s client=%s", s->agency,
             log_quote(hello->client_name, name, sizeof name));
    Referral__V1__Welcome w = REFERRAL__V1__WELCOME__INIT;
    w.broker_id = b->cfg.id;
    w.agency_id = s->agency;
    w.max_frame_bytes = b->cfg.max_frame_bytes;
    w.max_body_bytes = b->cfg.max_body_bytes;
    w.max_ttl_ms = b->cfg.max_ttl_ms;
    w.max_credit = b->cfg.max_credit;
    w.ack_timeout_ms = (uint32_t)b->cfg.ack_timeout_ms;
    w.clock_skew_ms = b->cfg.clock_skew_ms;
    w.now_ms = clock_now_ms();
    w.session_idle_ms = (uint32_t)b->cfg.session_idle_ms;
    Referral__V1__BrokerFrame f = REFERRAL__V1__BROKER_FRAME__INIT;
    f.body_case = REFERRAL__V1__BROKER_FRAME__BODY_WELCOME;
    f.welcome = &w;
    queue_reply(b, rid, rid_len, &f);
}

static store_err handle_settle(broker *b, MDB_txn *txn, session *s,
                               const Referral__V1__Settle *settle, uint64_t now_ms)
{
    Referral__V1__ResultCode code;
    const char *detail;
    store_err e = delivery_settle(&b->dc, txn, s->agency, settle, now_ms, &code, &detail);
    if (e != STORE_OK)
        return e;
    metrics_count_settle(settle->verb, code);
    if (settle->verb != REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_IN_PROGRESS) {
        session_untrack(&b->sessions, s, settle->message_id.data);
    } else if (code == R(OK)) {
        store_msg m;   /* the flight goes on with a new return deadline */
        e = store_msg_get(b->st, txn, settle->message_id.data, &m);
        if (e != STORE_OK)
            return e;
        session_retrack(&b->sessions, s, settle->message_id.data, m.due_at_ms);
    }
    Referral__V1__SettleReply r = REFERRAL__V1__SETTLE_REPLY__INIT;
    r.message_id = settle->message_id;
    r.verb = settle->verb;
    r.code = code;
    r.detail = (char *)(uintptr_t)detail;
    Referral__V1__BrokerFrame f = REFERRAL__V1__BROKER_FRAME__INIT;
    f.body_case = REFERRAL__V1__BROKER_FRAME__BODY_SETTLE_REPLY;
    f.settle_reply = &r;
    queue_reply(b, s->rid, s->rid_len, &f);
    return STORE_OK;
}

static store_err handle_status(broker *b, MDB_txn *txn, const session *s,
                               const Referral__V1__StatusQuery *q)
{
    Referral__V1__StatusReply r = REFERRAL__V1__STATUS_REPLY__INIT;
    r.request_id = q->request_id;
    r.message_id = q->message_id;
    store_msg m;
    store_err e = store_msg_get(b->st, txn, q->message_id.data, &m);
    if (e != STORE_OK && e != STORE_NOT_FOUND)
        return e;
    /* Only the sender and the recipient may ask; others learn nothing. */
    bool may_see = e == STORE_OK && (strcmp(m.sender, s->agency) == 0 ||
                                     strcmp(m.recipient, s->agency) == 0);
    r.code = R(OK);
    if (may_see) {
        r.state = (Referral__V1__MessageState)m.state;
        r.attempts = m.attempts;
        r.updated_at_ms = m.updated_at_ms;
    } else {
        r.state = REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_UNKNOWN;
        r.detail = "not known here, or not yours to see";
    }
    Referral__V1__BrokerFrame f = REFERRAL__V1__BROKER_FRAME__INIT;
    f.body_case = REFERRAL__V1__BROKER_FRAME__BODY_STATUS;
    f.status = &r;
    queue_reply(b, s->rid, s->rid_len, &f);
    return STORE_OK;
}

typedef struct {
    Referral__V1__TraceEvent *events[256];
    size_t n;
} trace_collect;

static void collect_event(const uint8_t *bytes, size_t len, void *ctx)
{
    trace_collect *tc = ctx;
    Referral__V1__TraceEvent *ev = referral__v1__trace_event__unpack(NULL, len, bytes);
    if (ev == NULL || tc->n == sizeof tc->events / sizeof tc->events[0]) {
        wire_free(ev);
        return;
    }
    tc->events[tc->n++] = ev;
}

/* A trace query: the referral's events at this broker, answered only to
 * its original sender and the agencies it was addressed to, as recorded
 * when the referral was first stored here (store_referral), never to
 * whoever appears in its events. Every query is logged. */
static store_err handle_trace(broker *b, MDB_txn *txn, const session *s,
                              const Referral__V1__TraceQuery *q)
{
    trace_collect tc = {.n = 0};
    bool is_truncated = false;
    store_referral ref;
    store_err e = store_referral_get(b->st, txn, q->referral_id.data, &ref);
    bool may_see = e == STORE_OK && store_referral_names(&ref, s->agency, true);
    if (e == STORE_NOT_FOUND || e == STORE_CORRUPT)
        e = STORE_OK;
    if (may_see)
        e = store_trace_each(b->st, txn, q->referral_id.data, 256, collect_event, &tc,
                             &is_truncated);
    Referral__V1__TraceReply tr = REFERRAL__V1__TRACE_REPLY__INIT;
    tr.request_id = q->request_id;
    tr.code = may_see ? R(OK) : R(NOT_AUTHORIZED);
    if (may_see) {
        tr.events = tc.events;
        tr.n_events = tc.n;
        tr.is_truncated = is_truncated;
    }
    char hex[IDS_HEX_LEN + 1];
    log_info("trace", "trace query referral=%s agency=%s events=%zu answered=%s",
             ids_hex(q->referral_id.data, IDS_BYTES, hex), s->agency, tc.n,
             may_see ? "yes" : "refused");
    Referral__V1__BrokerFrame rf = REFERRAL__V1__BROKER_FRAME__INIT;
    rf.body_case = REFERRAL__V1__BROKER_FRAME__BODY_TRACE;
    rf.trace = &tr;
    queue_reply(b, s->rid, s->rid_len, &rf);
    for (size_t i = 0; i < tc.n; i++)
        wire_free(tc.events[i]);
    return e;
}

/* Is this frame's connection still admitted, and which session is its?
 * The identity comes from the ZAP User-Id of the message, never from the
 * routing id (which a peer can claim). A session whose routing id now
 * carries frames from another socket or key has lost its connection
 * (libzmq gives a routing id to one connection at a time): it ends, and
 * the frame is this new connection's, without a session until Hello. */
static bool is_admitted(broker *b, const char *user_id, int fd, session **s,
                        char agency[IDS_NAME_MAX + 1], uint8_t key_id[16], const uint8_t *rid,
                        size_t rid_len)
{
    if (!zap_parse_user_id(user_id, agency, key_id)) {
        log_error("loop", "frame without a valid User-Id: is ZAP bound? user_id=%s",
                  user_id != NULL ? "malformed" : "none");
        queue_error(b, rid, rid_len, R(NOT_AUTHORIZED), "connection is not authenticated");
        return false;
    }
    if (*s != NULL && !session_is_connection(*s, fd, agency, key_id)) {
        log_warn("session", "routing id taken by another connection session_agency=%s "
                 "frame_agency=%s", (*s)->agency, agency);
        end_session(b, *s, "routing id reused by another connection", true);
        *s = NULL;
    }
    if (!zap_is_still_valid(b->dir, agency, key_id)) {
        log_warn("loop", "refused frame: key revoked or replaced agency=%s", agency);
        end_session(b, *s, "key revoked", false);
        *s = NULL;
        queue_error(b, rid, rid_len, R(REVOKED_KEY), "this connection's key was revoked or "
                    "replaced in the directory; reconnect with the current key");
        return false;
    }
    return true;
}

/* Handle one received frame (decoded at arrival, its signature checked if
 * it is a Submit); store faults are returned, all else answered. */
static store_err handle_frame(broker *b, MDB_txn *txn, held *hf, uint64_t now_ms)
{
    const uint8_t *rid = zmq_msg_data(&hf->rid);
    size_t rid_len = zmq_msg_size(&hf->rid);
    if (hf->n_parts != 2) {
        queue_error(b, rid, rid_len, R(MALFORMED), "a client message must be exactly one frame");
        return STORE_OK;
    }
    int fd = hf->fd;
    const char *user_id = zmq_msg_gets(&hf->data, "User-Id");
    char agency[IDS_NAME_MAX + 1];
    uint8_t key_id[16];
    session *s = session_find(&b->sessions, rid, rid_len);
    if (!is_admitted(b, user_id, fd, &s, agency, key_id, rid, rid_len))
        return STORE_OK;
    const Referral__V1__ClientFrame *f = hf->frame;
    if (hf->decode_err != WIRE_OK) {
        log_warn("ingress", "refused frame bytes=%zu agency=%s code=%s detail=%s",
                 zmq_msg_size(&hf->data), agency, wire_strerror(hf->decode_err), hf->decode_why);
        queue_error_for(b, rid, rid_len,
                        wire_peek_request_id(zmq_msg_data(&hf->data), zmq_msg_size(&hf->data),
                                             &b->limits),
                        wire_result_code(hf->decode_err), hf->decode_why);
        return STORE_OK;
    }
    store_err e = STORE_OK;
    if (s != NULL)
        s->last_seen_ms = clock_mono_ms();
    if (f->body_case == REFERRAL__V1__CLIENT_FRAME__BODY_HELLO) {
        handle_hello(b, s, rid, rid_len, fd, f->hello, agency, key_id);
    } else if (s == NULL) {
        queue_error_for(b, rid, rid_len, wire_client_frame_request_id(f), R(NOT_IDENTIFIED),
                        "send Hello first");
    } else {
        switch (f->body_case) {
        case REFERRAL__V1__CLIENT_FRAME__BODY_SUBMIT:
            e = ingress_submit(b, txn, s, f->submit, &hf->chk, now_ms);
            break;
        case REFERRAL__V1__CLIENT_FRAME__BODY_CREDIT: {
            uint64_t c = (uint64_t)s->credit + f->credit->grant;
            s->credit = c > b->cfg.max_credit ? b->cfg.max_credit : (uint32_t)c;
            break;
        }
        case REFERRAL__V1__CLIENT_FRAME__BODY_SETTLE:
            e = handle_settle(b, txn, s, f->settle, now_ms);
            break;
        case REFERRAL__V1__CLIENT_FRAME__BODY_STATUS:
            e = handle_status(b, txn, s, f->status);
            break;
        case REFERRAL__V1__CLIENT_FRAME__BODY_TRACE:
            e = handle_trace(b, txn, s, f->trace);
            break;
        case REFERRAL__V1__CLIENT_FRAME__BODY_PING: {
            Referral__V1__Pong p = REFERRAL__V1__PONG__INIT;
            p.nonce = f->ping->nonce;
            p.now_ms = now_ms;
            Referral__V1__BrokerFrame rf = REFERRAL__V1__BROKER_FRAME__INIT;
            rf.body_case = REFERRAL__V1__BROKER_FRAME__BODY_PONG;
            rf.pong = &p;
            queue_reply(b, rid, rid_len, &rf);
            break;
        }
        default:
            break;
        }
    }
    return e;
}

static bool signer_key(const void *ctx, const Referral__V1__Envelope *env, bool is_forward,
                       uint8_t key[32])
{
    return ingress_signer_key(ctx, env, is_forward, key);
}

/* Read what arrived into the inbound ring and move the signature checks
 * along: hand new ones to the workers, take back their verdicts. */
static void read_inbound(broker *b, bool is_readable, bool is_peer_readable)
{
    bool is_more = false, is_peer_more = false;
    if (is_readable)
        inbound_read(b->held, b->router, false, b->cfg.max_batch, &b->limits, signer_key, b,
                     &is_more);
    if (is_peer_readable)
        inbound_read(b->held, peers_socket(b->peers), true, b->cfg.max_batch, &b->limits,
                     signer_key, b, &is_peer_more);
    is_more = is_more || is_peer_more;
    inbound_dispatch(b->held, b->verifier);
    inbound_collect(b->held, b->verifier);
    if (is_more)
        b->is_busy = true;
}

/* Handle the ring's ready frames, oldest first, at most max_batch and for
 * at most max_turn_ms (so that deadlines and deliveries get their turn
 * whatever the backlog); stop at a frame whose check is still out (frames
 * behind it wait). */
static store_err handle_inbound(broker *b, MDB_txn *txn, uint64_t now_ms)
{
    uint64_t until_ms = clock_mono_ms() + b->cfg.max_turn_ms;
    for (uint32_t n = 0; n < b->cfg.max_batch; n++) {
        held *hf = inbound_head(b->held);
        if (hf == NULL)
            return STORE_OK;
        if (n > 0 && n % 16 == 0 &&
            (clock_mono_ms() >= until_ms || clock_now_ms() >= b->next_escalation_ms))
            break;   /* deadlines and deliveries get their turn */
        store_err e = hf->is_peer ? peers_handle(b, txn, hf, now_ms)
                                  : handle_frame(b, txn, hf, now_ms);
        inbound_pop(b->held);
        if (e != STORE_OK)
            return e;
    }
    b->is_busy = true;   /* the batch was full: more may wait */
    return STORE_OK;
}

/* Escalation deadlines first in every turn, crisis first, so that no
 * backlog of frames or routine deadlines delays them (escalate.h). */
static store_err fire_escalations(broker *b, MDB_txn *txn, uint64_t now_ms)
{
    uint32_t n;
    uint64_t late;
    bool has_more;
    store_err e = escalate_fire(&b->ec, txn, now_ms, b->cfg.max_deadlines_per_turn, &n, &late,
                                &has_more);
    if (n > 0)
        metrics_observe_escalations(n, late);
    if (has_more)
        b->is_busy = true;
    return e;
}

static store_err fire_deadlines(broker *b, MDB_txn *txn, uint64_t now_ms)
{
    for (uint32_t i = 0; i < b->cfg.max_deadlines_per_turn; i++) {
        uint64_t due;
        deadline_kind kind;
        uint8_t id[IDS_BYTES];
        store_err e = deadline_pop(b->st, txn, now_ms, &due, &kind, id);
        if (e == STORE_NOT_FOUND)
            return STORE_OK;
        if (e == STORE_OK)
            e = delivery_fire(&b->dc, txn, kind, id, due, now_ms);
        if (e != STORE_OK)
            return e;
    }
    b->is_busy = true;
    return STORE_OK;
}

/* Return deliveries whose send failed, and those that sessions held when
 * they ended (if still in the same flight); neither counts an attempt. */
static store_err return_lost(broker *b, MDB_txn *txn, uint64_t now_ms)
{
    for (size_t i = 0; i < b->n_lost; i++) {
        store_err e = delivery_return(&b->dc, txn, b->lost[i], now_ms);
        if (e != STORE_OK)
            return e;
    }
    b->n_lost = 0;
    session_table *t = &b->sessions;
    for (size_t i = 0; i < t->n_orphans; i++) {
        store_err e = delivery_return_flight(&b->dc, txn, t->orphans[i].id,
                                             t->orphans[i].due_at_ms, now_ms);
        if (e != STORE_OK)
            return e;
    }
    t->n_orphans = 0;
    return STORE_OK;
}

/* Count the attempts of the deliveries the last flush sent (delivery_sent);
 * they ride in this turn's commit, never one of their own. */
static store_err count_sent(broker *b, MDB_txn *txn, uint64_t now_ms)
{
    for (size_t i = 0; i < b->n_sent; i++) {
        store_err e = delivery_sent(&b->dc, txn, b->sent[i].id, b->sent[i].attempt, now_ms);
        if (e != STORE_OK)
            return e;
    }
    b->n_sent = 0;
    return STORE_OK;
}

static void remember_sent(broker *b, const link_frame *o)
{
    if (b->n_sent == b->cap_sent) {
        size_t cap = b->cap_sent == 0 ? 64 : b->cap_sent * 2;
        struct sent_delivery *p = realloc(b->sent, cap * sizeof *p);
        if (p == NULL) {
            char hex[IDS_HEX_LEN + 1];
            log_warn("delivery", "out of memory: attempt not counted msg=%s attempt=%u",
                     ids_hex(o->message_id, IDS_BYTES, hex), o->attempt);
            return;
        }
        b->sent = p;
        b->cap_sent = cap;
    }
    memcpy(b->sent[b->n_sent].id, o->message_id, IDS_BYTES);
    b->sent[b->n_sent++].attempt = o->attempt;
}

/* Hand queued messages to sessions with credit, one per session per round
 * so that one busy agency does not starve the others. */
static store_err deliver(broker *b, MDB_txn *txn, uint64_t now_ms)
{
    size_t budget = b->cfg.max_batch;
    bool is_progress = true;
    while (budget > 0 && is_progress) {
        is_progress = false;
        for (size_t k = 0; k < b->sessions.cap && budget > 0; k++) {
            size_t i = (b->sessions.next_rr + k) % b->sessions.cap;
            session *s = &b->sessions.items[i];
            if (!s->is_used || s->credit == 0 || s->is_gone)
                continue;
            store_msg m;
            const uint8_t *payload;
            size_t len;
            store_err e = delivery_take(&b->dc, txn, s->agency, now_ms, &m, &payload, &len);
            if (e == STORE_NOT_FOUND)
                continue;
            if (e != STORE_OK)
                return e;
            size_t flen;
            uint32_t attempt = m.attempts + 1;   /* counted once it has left */
            uint8_t *frame = wire_pack_delivery(m.id, attempt, m.urgency,
                                                delivery_payload_of(&m), payload, len, &flen);
            link_frame *o = frame != NULL ? link_queue(&b->clients, s->rid, s->rid_len, frame,
                                                       flen) : NULL;
            if (o == NULL)
                return STORE_OK;   /* out of memory: the return deadline redelivers it */
            o->is_delivery = true;
            memcpy(o->message_id, m.id, IDS_BYTES);
            o->attempt = attempt;
            o->session_serial = s->serial;
            session_track(&b->sessions, s, m.id, m.due_at_ms);
            s->credit--;
            budget--;
            is_progress = true;
        }
    }
    b->sessions.next_rr = (b->sessions.next_rr + 1) % (b->sessions.cap ? b->sessions.cap : 1);
    if (budget == 0)
        b->is_busy = true;
    return STORE_OK;
}

static void remember_lost(broker *b, const uint8_t id[IDS_BYTES])
{
    if (b->n_lost == b->cap_lost) {
        size_t cap = b->cap_lost == 0 ? 64 : b->cap_lost * 2;
        void *p = realloc(b->lost, cap * IDS_BYTES);
        if (p == NULL)
            return;   /* the return deadline brings it back instead */
        b->lost = p;
        b->cap_lost = cap;
    }
    memcpy(b->lost[b->n_lost++], id, IDS_BYTES);
}

void loop_return_later(broker *b, const uint8_t id[IDS_BYTES])
{
    remember_lost(b, id);
}

/* ---- the client link's view of its frames (link.h, link_ops) ---------- */

/* s's connection closed: no more deliveries to it; it ends once every
 * frame it sent before is read and handled (end_gone_sessions). */
static void mark_gone(broker *b, session *s)
{
    s->is_gone = true;
    s->credit = 0;
    s->gone_drain = inbound_drains(b->held);
    s->gone_at_ms = clock_mono_ms();
    b->n_gone++;
    b->is_busy = true;   /* the next turn reads the socket to its end */
}

/* A delivery goes only to the session it was taken for, while it is open. */
static bool client_frame_is_wanted(void *ctx, const link_frame *f)
{
    broker *b = ctx;
    if (!f->is_delivery)
        return true;
    const session *s = session_find(&b->sessions, f->rid, f->rid_len);
    return s != NULL && s->serial == f->session_serial && !s->is_gone;
}

static void client_frame_sent(void *ctx, const link_frame *f)
{
    remember_sent(ctx, f);
    metrics_count_delivery(f->attempt);
}

static void client_frame_lost(void *ctx, const link_frame *f)
{
    remember_lost(ctx, f->message_id);
}

/* A client connection is gone (EHOSTUNREACH: ROUTER_MANDATORY makes that
 * visible) or stopped reading: no more deliveries to its session, which
 * ends (and what it held returns) once the frames it sent before are
 * handled, as when the monitor reports the close (end_gone_sessions). */
static void client_gone(void *ctx, const uint8_t *rid, size_t rid_len, const char *why)
{
    broker *b = ctx;
    session *s = session_find(&b->sessions, rid, rid_len);
    if (s == NULL || s->is_gone)
        return;
    log_info("session", "connection gone agency=%s serial=%llu why=%s", s->agency,
             (unsigned long long)s->serial, why);
    mark_gone(b, s);
}

static const link_ops client_link_ops = {
    .is_wanted = client_frame_is_wanted,
    .on_sent = client_frame_sent,
    .on_lost = client_frame_lost,
    .on_peer_gone = client_gone,
};

/* Send the turn's frames on every link, after the commit. */
static void flush(broker *b)
{
    uint64_t now = clock_mono_ms();
    size_t n_held = 0;
    for (size_t i = 0; i < b->n_links; i++) {
        link_flush(b->links[i], now);
        n_held += link_held(b->links[i]);
    }
    b->is_holding = n_held > 0;
}

#define MONITOR_ENDPOINT "inproc://referrald.router-monitor"

/* Watch the ROUTER for closed connections. libzmq reports each with its
 * socket fd (ZMQ_EVENT_DISCONNECTED) before it closes the fd, so a new
 * connection cannot get that fd before the event is queued; and it frees
 * the routing id only after that, so the event precedes any reuse of it. */
static bool watch_connections(broker *b)
{
    if (zmq_socket_monitor(b->router, MONITOR_ENDPOINT, ZMQ_EVENT_DISCONNECTED) != 0)
        return false;
    b->monitor = zmq_socket(b->zctx, ZMQ_PAIR);
    int linger = 0, hwm = (int)(2 * b->cfg.max_sessions + 1000);
    return b->monitor != NULL &&
           zmq_setsockopt(b->monitor, ZMQ_LINGER, &linger, sizeof linger) == 0 &&
           zmq_setsockopt(b->monitor, ZMQ_RCVHWM, &hwm, sizeof hwm) == 0 &&
           zmq_connect(b->monitor, MONITOR_ENDPOINT) == 0;
}

static void unwatch_connections(broker *b)
{
    zmq_socket_monitor(b->router, NULL, 0);
    if (b->monitor != NULL)
        zmq_close(b->monitor);
    b->monitor = NULL;
}

/* Could s still have spoken unheard? Its frames may be held or unread
 * (a turn cut short); a broker that did not run is covered by
 * notice_stall(). */
static bool may_have_frames(const void *ctx, const session *s)
{
    const broker *b = ctx;
    return inbound_may_hold(b->held, s->rid, s->rid_len);
}

/* A broker that did not run for a while (stopped, a frozen machine,
 * starved of CPU, a turn held up by a slow disk) heard nobody meanwhile,
 * and what clients sent may not even have reached its socket yet when it
 * runs again. When more than STALL_MS passed since the last call beyond
 * the expected_ms it meant to wait, every session's silence is counted
 * from now. Called after the poll and before the idle check. */
#define STALL_MS 1000u
static void notice_stall(broker *b, uint64_t expected_ms)
{
    uint64_t now = clock_mono_ms();
    uint64_t since = b->checked_ms;
    b->checked_ms = now;
    if (since == 0 || now - since <= expected_ms + STALL_MS)
        return;
    log_warn("loop", "the broker did not run, or a turn took long, for %llu ms; the sessions' "
             "silence is counted from now", (unsigned long long)(now - since - expected_ms));
    session_heard_all(&b->sessions, now);
}

/* End the sessions of the connections the monitor reports closed. */
static void read_disconnects(broker *b)
{
    uint16_t event;
    uint32_t fd;
    while (monitor_next(b->monitor, &event, &fd)) {
        session *s = event == ZMQ_EVENT_DISCONNECTED ? session_find_fd(&b->sessions, (int)fd)
                                                     : NULL;
        if (s != NULL && !s->is_gone)
            mark_gone(b, s);
    }
}

/* End the sessions whose connection closed, once every frame they sent
 * before has been handled: a Submit or Settle that arrived just before the
 * close still counts (its answer has nowhere to go; the client's outbox
 * sends it again and hears it is a duplicate), and the settles a client
 * sent just before it closed make their deliveries DELIVERED instead of
 * returning them to the queue. Those frames may still be unread when the
 * close is reported, so a session ends only after a later read found the
 * socket empty (inbound_drains) and none of them is held. Under a load
 * that never lets the socket empty, it ends GONE_WAIT_MS after the close
 * once none of its frames is held (reads are fair among connections, so
 * its last frames were read long before): its deliveries must not wait
 * for ack_timeout_ms. */
#define GONE_WAIT_MS 1000u
static void end_gone_sessions(broker *b)
{
    if (b->n_gone == 0)
        return;
    uint64_t drains = inbound_drains(b->held), now = clock_mono_ms();
    b->n_gone = 0;   /* counted again: other paths end gone sessions too */
    for (size_t i = 0; i < b->sessions.cap; i++) {
        session *s = &b->sessions.items[i];
        if (!s->is_used || !s->is_gone)
            continue;
        bool is_read = drains > s->gone_drain || now - s->gone_at_ms > GONE_WAIT_MS;
        if (is_read && !inbound_holds(b->held, s->rid, s->rid_len))
            end_session(b, s, "disconnected", true);
        else
            b->n_gone++;
    }
    if (b->n_gone > 0)
        b->is_busy = true;
}

/* Remove what retention no longer keeps (retention.h): at most
 * max_per_turn items and a quarter of max_turn_ms, after the turn's
 * deliveries and deadlines, so it never holds them up. */
static store_err sweep(broker *b, MDB_txn *txn, uint64_t now_ms)
{
    size_t n_removed;
    bool has_more;
    store_err e = retention_step(b->retention, b->st, txn, now_ms,
                                 clock_mono_ms() + b->cfg.max_turn_ms / 4, &n_removed, &has_more);
    if (has_more)
        b->is_busy = true;
    uint64_t next = retention_next_ms(b->retention);
    if (next < b->next_due_ms)
        b->next_due_ms = next;
    return e;
}

static int wait_ms(broker *b)
{
    if (b->is_busy || b->n_lost > 0 || b->sessions.n_orphans > 0 ||
        inbound_head(b->held) != NULL)
        return 0;
    if (b->is_holding)
        return 10;   /* a full peer pipe drains on the peer's schedule */
    uint64_t now = clock_now_ms();
    if (b->next_due_ms <= now)
        return 0;
    uint64_t w = b->next_due_ms - now;
    uint64_t max = peers_poll_count(b->peers) > 0 && b->cfg.heartbeat_ms / 2 < MAX_WAIT_MS
                       ? b->cfg.heartbeat_ms / 2 : MAX_WAIT_MS;
    return w > max ? (int)max : (int)w;
}

int loop_turn(broker *b)
{
    zmq_pollitem_t items[4 + 2 + 2 * CONFIG_MAX_PEERS] = {
        {.socket = b->router, .events = ZMQ_POLLIN},
        {.socket = b->zap, .events = ZMQ_POLLIN},
        {.socket = b->monitor, .events = ZMQ_POLLIN},
        {.socket = verifier_results_socket(b->verifier), .events = ZMQ_POLLIN}};
    size_t n_items = 4;
    void *peer_socket = peers_socket(b->peers);
    if (peer_socket != NULL)
        items[n_items++] = (zmq_pollitem_t){.socket = peer_socket, .events = ZMQ_POLLIN};
    size_t admin_item = n_items;
    items[n_items++] = (zmq_pollitem_t){.socket = admin_socket(b->admin), .events = ZMQ_POLLIN};
    peers_poll_items(b->peers, items, &n_items);
    int waited = wait_ms(b);
    int rc = zmq_poll(items, (int)n_items, waited);
    if (rc < 0 && errno != EINTR) {
        log_error("loop", "poll failed err=%s", zmq_strerror(errno));
        return BROKER_EXIT_TRANSPORT;
    }
    notice_stall(b, (uint64_t)waited);
    b->is_busy = false;
    read_disconnects(b);
    if (*b->reload) {
        *b->reload = 0;
        char why[700];
        store_err fault;
        if (!broker_load_directory(b, &fault, why, sizeof why)) {
            if (fault != STORE_OK) {
                log_error("store", "store failed during directory reload: %s; exiting", why);
                return BROKER_EXIT_STORE;
            }
            log_error("trust", "directory reload refused, keeping the current one: %s", why);
        }
    }
    if (items[1].revents & ZMQ_POLLIN)
        zap_handle(b->zap, b->dir);
    read_inbound(b, (items[0].revents & ZMQ_POLLIN) != 0 || b->n_gone > 0,
                 peer_socket != NULL && (items[4].revents & ZMQ_POLLIN) != 0);
    if (items[admin_item].revents & ZMQ_POLLIN)
        admin_read(b);
    uint64_t now = clock_now_ms();
    MDB_txn *txn;
    store_err e = store_begin(b->st, &txn);
    if (e != STORE_OK) {
        log_error("store", "cannot begin transaction err=%s", store_strerror(e));
        return BROKER_EXIT_STORE;
    }
    e = count_sent(b, txn, now);
    if (e == STORE_OK)
        e = fire_escalations(b, txn, now);
    if (e == STORE_OK)
        e = peers_read(b, txn, now);
    if (e == STORE_OK)
        e = handle_inbound(b, txn, now);
    if (e == STORE_OK)
        e = fire_escalations(b, txn, clock_now_ms());   /* any that fell due meanwhile */
    if (e == STORE_OK)
        e = admin_handle(b, txn, now);
    if (e == STORE_OK)
        e = fire_deadlines(b, txn, now);
    if (e == STORE_OK)
        e = return_lost(b, txn, now);
    if (e == STORE_OK)
        e = deliver(b, txn, now);
    if (e == STORE_OK)
        e = peers_deliver(b, txn, now);
    if (e == STORE_OK)
        e = peers_announce(b, txn, now);
    if (e == STORE_OK) {
        uint64_t due;
        store_err d = deadline_next(b->st, txn, &due);
        b->next_due_ms = d == STORE_OK ? due : UINT64_MAX;
        b->next_escalation_ms = escalate_next_due(&b->ec, txn, &due) == STORE_OK ? due
                                                                                 : UINT64_MAX;
        if (b->next_escalation_ms < b->next_due_ms)
            b->next_due_ms = b->next_escalation_ms;
    }
    if (e == STORE_OK)
        e = sweep(b, txn, now);
    if (e == STORE_OK && metrics_wants_queues())
        metrics_observe_queues(b->st, txn, now);
    if (e != STORE_OK) {
        mdb_txn_abort(txn);
        log_error("store", "store failed during turn err=%s; exiting, restart recovers",
                  store_strerror(e));
        return BROKER_EXIT_STORE;
    }
    char why[700];
    uint64_t commit_start_us = metrics_clock_us();
    if (store_commit(b->st, txn, why, sizeof why) != STORE_OK) {
        log_error("store", "commit failed during turn: %s; exiting without answering the "
                  "turn's submissions", why);
        return BROKER_EXIT_STORE;
    }
    metrics_observe_commit(commit_start_us);
    read_disconnects(b);   /* the last word before sending: no frame to a closed session */
    end_gone_sessions(b);
    peers_tick(b, clock_mono_ms());
    trace_tick(b);
    flush(b);
    notice_stall(b, 0);
    session_expire_idle(&b->sessions, clock_mono_ms(), b->cfg.session_idle_ms,
                        may_have_frames, b);
    metrics_observe_turn(b->sessions.count, inbound_count(b->held),
                         verifier_in_flight(b->verifier));
    return -1;
}

int loop_open(broker *b)
{
    b->next_due_ms = 0;
    b->next_escalation_ms = 0;
    session_table_limits(&b->sessions, b->cfg.max_sessions_per_agency, b->cfg.max_credit);
    unsigned workers = b->cfg.verify_workers ? b->cfg.verify_workers
                                             : verifier_default_workers();
    b->verifier = verifier_new(b->zctx, workers);
    b->held = inbound_new(b->cfg.max_pending_checks);
    if (b->verifier == NULL || b->held == NULL) {
        log_error("loop", "cannot start %u signature-check workers err=%s", workers,
                  zmq_strerror(errno));
        verifier_destroy(&b->verifier);
        inbound_destroy(&b->held);
        return BROKER_EXIT_TRANSPORT;
    }
    log_info("loop", "signature checks on worker threads workers=%u max_pending=%u", workers,
             b->cfg.max_pending_checks);
    link_init(&b->clients, "clients", b->router, b->cfg.max_hold_ms, b->cfg.max_held_frames,
              &client_link_ops, b);
    b->links[0] = &b->clients;
    b->n_links = 1;
    char why[600];
    b->peers = peers_open(b, why, sizeof why);
    if (b->peers == NULL) {
        log_error("peer", "cannot start federation: %s", why);
        verifier_destroy(&b->verifier);
        inbound_destroy(&b->held);
        return BROKER_EXIT_TRANSPORT;
    }
    b->dc.route = peers_route_agency;
    b->dc.route_ctx = b;
    b->traces = trace_set_new();
    b->admin = b->traces != NULL ? admin_open(b, why, sizeof why) : NULL;
    if (b->admin == NULL) {
        log_error("admin", "cannot open the operators' socket: %s",
                  b->traces == NULL ? "out of memory" : why);
        return BROKER_EXIT_TRANSPORT;
    }
    b->links[b->n_links++] = admin_link(b->admin);
    if (!watch_connections(b)) {
        log_error("loop", "cannot monitor the client socket's connections err=%s; sessions "
                  "could outlive them, refusing to run (a libzmq with zmq_socket_monitor is "
                  "needed)", zmq_strerror(errno));
        return BROKER_EXIT_TRANSPORT;
    }
    return BROKER_EXIT_OK;
}

void loop_close(broker *b)
{
    unwatch_connections(b);
    verifier_destroy(&b->verifier);   /* first: jobs borrow the held frames */
    inbound_destroy(&b->held);
    peers_close(b, &b->peers);
    admin_close(&b->admin);
    trace_set_destroy(&b->traces);
    b->n_links = 1;   /* the peers' and the admin socket's links are gone with them */
    free(b->sent);
    b->sent = NULL;
    b->n_sent = b->cap_sent = 0;
}

int loop_run(broker *b)
{
    int rc = loop_open(b);
    bool is_done = rc != BROKER_EXIT_OK;
    /* Only now: every socket (clients, peers, admin) is bound, and tools
     * and tests that wait for this line may use any of them. */
    if (!is_done)
        log_info("main", "started broker=%s listen=%s store=%s version=%s", b->cfg.id,
                 b->cfg.listen, b->cfg.data_dir, REF_VERSION);
    while (!is_done && !*b->stop) {
        int t = loop_turn(b);
        is_done = t >= 0;
        rc = is_done ? t : rc;
    }
    loop_close(b);
    if (rc == BROKER_EXIT_OK)
        log_info("loop", "stopping: last turn committed");
    return rc;
}
