/*
 * peer: links to peer brokers (peer.h). One outbound DEALER per configured
 * peer, with its own link (held frames, limits), window of forwards in
 * flight, heartbeat and stall state; one ROUTER where peers forward to
 * this broker.
 *
 * It must never drop a forward without returning it to its queue, count a
 * message as relayed before the peer's hop ack, accept a frame from a
 * connection that is not an admitted broker, or slow one link for
 * another's sake.
 */
#include "peer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "clock.h"
#include "delivery.h"
#include "ingress.h"
#include "log.h"
#include "monitor.h"
#include "loop.h"
#include "metrics.h"
#include "queue.h"
#include "route.h"
#include "sign.h"
#include "trace.h"
#include "wire.h"
#include "zap.h"

#define R(x) REFERRAL__V1__RESULT_CODE__RESULT_##x
#define RECONNECT_MS 100          /* first reconnect; doubles up to RECONNECT_MAX_MS */
#define RECONNECT_MAX_MS 5000
#define MAX_READ 1024             /* frames read from one link per turn */

typedef struct {
    broker *b;
    char id[IDS_NAME_MAX + 1];
    void *dealer;
    void *monitor;                /* the dealer's connection events */
    broker_link out;                     /* forwards, notices, heartbeats to this peer */
    bool is_connected;            /* the CURVE handshake succeeded, no disconnect since */
    bool is_up;                   /* connected and heard from within peer_timeout_ms */
    bool is_stalled;              /* reported; cleared by the next hop ack */
    bool is_stall_news;           /* is_stalled changed: announce it in the next turn */
    uint8_t incident[IDS_BYTES];  /* the stall's id in its alert and its stand-down */
    uint64_t last_heard_ms, last_beat_ms;
    uint64_t work_since_ms;       /* 0, or since when work waits without a hop ack */
    uint8_t (*flights)[IDS_BYTES];  /* forwarded, awaiting the hop ack (at most the window) */
    size_t n_flights;
    uint64_t next_seq;
} peer_link;

struct peer_set {
    broker *b;
    void *router;                 /* where peers forward to this broker */
    broker_link in;                      /* hop acks and heartbeat answers on the router */
    peer_link *items;
    size_t n;
};

static const char *ids_of(const uint8_t id[IDS_BYTES], char hex[IDS_HEX_LEN + 1])
{
    return ids_hex(id, IDS_BYTES, hex);
}

/* ---- flights ------------------------------------------------------------ */

static bool flight_remove(peer_link *p, const uint8_t id[IDS_BYTES])
{
    for (size_t i = 0; i < p->n_flights; i++) {
        if (memcmp(p->flights[i], id, IDS_BYTES) == 0) {
            memcpy(p->flights[i], p->flights[p->n_flights - 1], IDS_BYTES);
            p->n_flights--;
            return true;
        }
    }
    return false;
}

/* The link is down: frames in flight on it are assumed lost; their
 * messages go back to the peer's queue now (the restart of the link sends
 * them again, and the peer answers "duplicate" for any it had stored). */
static void link_down(broker *b, peer_link *p, const char *why)
{
    if (p->is_up || p->n_flights > 0)
        log_warn("peer", "link down peer=%s why=%s returned=%zu", p->id, why, p->n_flights);
    if (p->is_up)
        metrics_count_peer_down(p->id);
    for (size_t i = 0; i < p->n_flights; i++)
        loop_return_later(b, p->flights[i]);
    p->n_flights = 0;
    p->is_up = false;
    link_clear(&p->out);   /* their frames: the messages are back in the queue */
}

/* ---- link callbacks (link.h) -------------------------------------------- */

static bool peer_frame_is_wanted(void *ctx, const link_frame *f)
{
    (void)ctx;
    (void)f;
    return true;
}

static void peer_frame_sent(void *ctx, const link_frame *f)
{
    (void)ctx;
    (void)f;   /* counted as relayed on the hop ack, not on the send */
}

static void peer_frame_lost(void *ctx, const link_frame *f)
{
    peer_link *p = ctx;
    if (flight_remove(p, f->message_id))
        loop_return_later(p->b, f->message_id);
}

static void peer_gone(void *ctx, const uint8_t *rid, size_t rid_len, const char *why)
{
    (void)rid;
    (void)rid_len;
    peer_link *p = ctx;
    log_warn("peer", "link to peer stopped taking frames peer=%s why=%s", p->id, why);
}

static const link_ops peer_link_ops = {
    .is_wanted = peer_frame_is_wanted,
    .on_sent = peer_frame_sent,
    .on_lost = peer_frame_lost,
    .on_peer_gone = peer_gone,
};

static void answer_frame_sent(void *ctx, const link_frame *f)
{
    (void)ctx;
    (void)f;
}

static void answer_gone(void *ctx, const uint8_t *rid, size_t rid_len, const char *why)
{
    (void)ctx;
    (void)rid;
    log_info("peer", "a peer connection went away rid_bytes=%zu why=%s", rid_len, why);
}

static const link_ops answer_link_ops = {
    .is_wanted = peer_frame_is_wanted,
    .on_sent = answer_frame_sent,
    .on_lost = answer_frame_sent,
    .on_peer_gone = answer_gone,
};

/* ---- frames --------------------------------------------------------------- */

static link_frame *queue_peer_frame(broker_link *l, const uint8_t *rid, size_t rid_len,
                                    Referral__V1__PeerFrame *f)
{
    f->version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    size_t len;
    uint8_t *buf = wire_pack(f, &len);
    return buf != NULL ? link_queue(l, rid, rid_len, buf, len) : NULL;
}

static void send_heartbeat(peer_link *p, const uint8_t *rid, size_t rid_len, broker_link *l)
{
    Referral__V1__Heartbeat hb = REFERRAL__V1__HEARTBEAT__INIT;
    hb.now_ms = clock_now_ms();   /* the sender's wall clock, for operators */
    hb.queued = p != NULL ? p->n_flights : 0;
    Referral__V1__PeerFrame f = REFERRAL__V1__PEER_FRAME__INIT;
    f.body_case = REFERRAL__V1__PEER_FRAME__BODY_HEARTBEAT;
    f.heartbeat = &hb;
    queue_peer_frame(l, rid, rid_len, &f);
}

static void send_hello(broker *b, peer_link *p)
{
    Referral__V1__PeerHello h = REFERRAL__V1__PEER_HELLO__INIT;
    h.broker_id = b->cfg.id;
    h.directory_version = directory_get(b->dir)->version;
    Referral__V1__PeerFrame f = REFERRAL__V1__PEER_FRAME__INIT;
    f.body_case = REFERRAL__V1__PEER_FRAME__BODY_HELLO;
    f.hello = &h;
    queue_peer_frame(&p->out, NULL, 0, &f);
}

static void send_hop_ack(peer_set *ps, const uint8_t *rid, size_t rid_len,
                         const uint8_t id[IDS_BYTES], uint64_t sequence,
                         Referral__V1__ResultCode code, const char *detail)
{
    Referral__V1__HopAck ack = REFERRAL__V1__HOP_ACK__INIT;
    ack.sequence = sequence;
    ack.message_id = (ProtobufCBinaryData){IDS_BYTES, (uint8_t *)(uintptr_t)id};
    ack.code = code;
    ack.detail = (char *)(uintptr_t)(detail != NULL ? detail : "");
    Referral__V1__PeerFrame f = REFERRAL__V1__PEER_FRAME__INIT;
    f.body_case = REFERRAL__V1__PEER_FRAME__BODY_HOP_ACK;
    f.hop_ack = &ack;
    queue_peer_frame(&ps->in, rid, rid_len, &f);
}

bool peers_is_peer(const broker *b, const char *id)
{
    const peer_set *ps = b->peers;
    for (size_t i = 0; ps != NULL && i < ps->n; i++)
        if (strcmp(ps->items[i].id, id) == 0)
            return true;
    return false;
}

bool peers_send_trace_query(broker *b, const char *peer, const Referral__V1__TraceQuery *q)
{
    peer_set *ps = b->peers;
    for (size_t i = 0; ps != NULL && i < ps->n; i++) {
        peer_link *p = &ps->items[i];
        if (strcmp(p->id, peer) != 0)
            continue;
        if (!p->is_up)
            return false;   /* a link down cannot answer in time: said so at once */
        Referral__V1__PeerFrame f = REFERRAL__V1__PEER_FRAME__INIT;
        f.body_case = REFERRAL__V1__PEER_FRAME__BODY_TRACE_QUERY;
        f.trace_query = (Referral__V1__TraceQuery *)(uintptr_t)q;
        return queue_peer_frame(&p->out, NULL, 0, &f) != NULL;
    }
    return false;
}

void peers_send_trace_reply(broker *b, const uint8_t *rid, size_t rid_len,
                            const Referral__V1__TraceReply *r)
{
    if (b->peers == NULL)
        return;
    Referral__V1__PeerFrame f = REFERRAL__V1__PEER_FRAME__INIT;
    f.body_case = REFERRAL__V1__PEER_FRAME__BODY_TRACE_REPLY;
    f.trace_reply = (Referral__V1__TraceReply *)(uintptr_t)r;
    queue_peer_frame(&b->peers->in, rid, rid_len, &f);
}

/* ---- open and close ------------------------------------------------------- */

static bool open_router(broker *b, peer_set *ps, char *why, size_t why_len)
{
    int zero = 0, one = 1, handshake = 5000;
    ps->router = zmq_socket(b->zctx, ZMQ_ROUTER);
    if (ps->router == NULL ||
        zmq_setsockopt(ps->router, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(ps->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0 ||
        zmq_setsockopt(ps->router, ZMQ_HANDSHAKE_IVL, &handshake, sizeof handshake) != 0 ||
        zmq_setsockopt(ps->router, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN_PEERS,
                       strlen(ZAP_DOMAIN_PEERS)) != 0 ||
        zmq_setsockopt(ps->router, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(ps->router, ZMQ_CURVE_SECRETKEY, b->keys.curve_secret, 32) != 0 ||
        zmq_bind(ps->router, b->cfg.peer_listen) != 0) {
        snprintf(why, why_len, "cannot open the peer socket on %s: %s", b->cfg.peer_listen,
                 zmq_strerror(errno));
        return false;
    }
    link_init(&ps->in, "peer-socket", ps->router, b->cfg.max_hold_ms, b->cfg.max_held_frames,
              &answer_link_ops, ps);
    return true;
}

static bool open_link(broker *b, peer_link *p, const config_peer *cp, size_t index, char *why,
                      size_t why_len)
{
    const Referral__V1__DirectoryBroker *br = directory_broker(b->dir, cp->id);
    if (br == NULL) {
        snprintf(why, why_len, "[peers] %s is not a broker of the directory", cp->id);
        return false;
    }
    snprintf(p->id, sizeof p->id, "%s", cp->id);
    p->b = b;
    int zero = 0, one = 1, ivl = RECONNECT_MS, ivl_max = RECONNECT_MAX_MS, handshake = 5000;
    char monitor[96];
    snprintf(monitor, sizeof monitor, "inproc://referrald.peer-monitor.%zu", index);
    p->flights = calloc(b->cfg.peer_window, sizeof *p->flights);
    p->dealer = zmq_socket(b->zctx, ZMQ_DEALER);
    if (p->flights == NULL || p->dealer == NULL ||
        zmq_setsockopt(p->dealer, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(p->dealer, ZMQ_IMMEDIATE, &one, sizeof one) != 0 ||
        zmq_setsockopt(p->dealer, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl) != 0 ||
        zmq_setsockopt(p->dealer, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max) != 0 ||
        zmq_setsockopt(p->dealer, ZMQ_HANDSHAKE_IVL, &handshake, sizeof handshake) != 0 ||
        zmq_setsockopt(p->dealer, ZMQ_CURVE_SERVERKEY, br->curve_public.data, 32) != 0 ||
        zmq_setsockopt(p->dealer, ZMQ_CURVE_PUBLICKEY, b->keys.curve_public, 32) != 0 ||
        zmq_setsockopt(p->dealer, ZMQ_CURVE_SECRETKEY, b->keys.curve_secret, 32) != 0 ||
        zmq_socket_monitor(p->dealer, monitor,
                           ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED) != 0 ||
        (p->monitor = zmq_socket(b->zctx, ZMQ_PAIR)) == NULL ||
        zmq_setsockopt(p->monitor, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_connect(p->monitor, monitor) != 0 || zmq_connect(p->dealer, cp->endpoint) != 0) {
        snprintf(why, why_len, "cannot open the link to peer %s at %s: %s", cp->id,
                 cp->endpoint, zmq_strerror(errno));
        return false;
    }
    link_init(&p->out, p->id, p->dealer, b->cfg.max_hold_ms, b->cfg.max_held_frames,
              &peer_link_ops, p);
    metrics_peer_add(p->id);
    return true;
}

void peers_close(broker *b, peer_set **psp)
{
    if (psp == NULL || *psp == NULL)
        return;
    peer_set *ps = *psp;
    for (size_t i = 0; i < ps->n; i++) {
        peer_link *p = &ps->items[i];
        link_free(&p->out);
        if (p->dealer != NULL) {
            zmq_socket_monitor(p->dealer, NULL, 0);
            zmq_close(p->dealer);
        }
        if (p->monitor != NULL)
            zmq_close(p->monitor);
        free(p->flights);
    }
    link_free(&ps->in);
    if (ps->router != NULL)
        zmq_close(ps->router);
    free(ps->items);
    free(ps);
    *psp = NULL;
    (void)b;
}

peer_set *peers_open(broker *b, char *why, size_t why_len)
{
    peer_set *ps = calloc(1, sizeof *ps);
    if (ps == NULL) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    ps->b = b;
    if (b->cfg.peer_listen[0] == '\0')
        return ps;
    ps->items = calloc(b->cfg.n_peers ? b->cfg.n_peers : 1, sizeof *ps->items);
    bool is_ok = ps->items != NULL && open_router(b, ps, why, why_len);
    for (size_t i = 0; is_ok && i < b->cfg.n_peers; i++) {
        is_ok = open_link(b, &ps->items[i], &b->cfg.peers[i], i, why, why_len);
        ps->n++;
    }
    if (!is_ok || b->n_links + 1 + ps->n > BROKER_MAX_LINKS) {
        if (is_ok)
            snprintf(why, why_len, "too many links");
        peers_close(b, &ps);
        return NULL;
    }
    b->links[b->n_links++] = &ps->in;
    for (size_t i = 0; i < ps->n; i++)
        b->links[b->n_links++] = &ps->items[i].out;
    log_info("peer", "federation on peer_listen=%s peers=%zu routes=%zu default=%s",
             b->cfg.peer_listen, ps->n, b->cfg.n_routes,
             b->cfg.default_route[0] ? b->cfg.default_route : "-");
    return ps;
}

void *peers_socket(const peer_set *ps)
{
    return ps->router;
}

size_t peers_poll_count(const peer_set *ps)
{
    return 2 * ps->n;
}

void peers_poll_items(const peer_set *ps, zmq_pollitem_t *items, size_t *n)
{
    for (size_t i = 0; i < ps->n; i++) {
        items[(*n)++] = (zmq_pollitem_t){.socket = ps->items[i].dealer, .events = ZMQ_POLLIN};
        items[(*n)++] = (zmq_pollitem_t){.socket = ps->items[i].monitor, .events = ZMQ_POLLIN};
    }
}

const char *peers_route_agency(const void *ctx, const char *agency)
{
    const broker *b = ctx;
    char next[IDS_NAME_MAX + 1], why[256];
    if (route_agency(&b->cfg, b->dir, agency, next, why, sizeof why) != ROUTE_PEER)
        return NULL;
    const config_peer *p = config_peer_find(&b->cfg, next);
    return p != NULL ? p->id : NULL;
}

/* ---- the outbound links: events and answers ------------------------------ */

static void read_events(broker *b, peer_link *p)
{
    uint16_t event;
    uint32_t value;
    while (monitor_next(p->monitor, &event, &value)) {
        if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            log_info("peer", "link connected peer=%s", p->id);
            p->is_connected = true;
            p->is_up = true;
            p->last_heard_ms = clock_mono_ms();
            send_hello(b, p);
        } else if (event == ZMQ_EVENT_DISCONNECTED) {
            p->is_connected = false;
            link_down(b, p, "disconnected");
        }
    }
}

static bool is_transient(Referral__V1__ResultCode code)
{
    return code == R(STORE_FULL) || code == R(BUSY) || code == R(SHUTTING_DOWN) ||
           code == R(INTERNAL);
}

/* A hop ack: the peer stored the message durably (OK), will take it later
 * (transient), or refuses it for good (the sender is told). */
static store_err on_hop_ack(broker *b, MDB_txn *txn, peer_link *p, const Referral__V1__HopAck *a,
                            uint64_t now_ms)
{
    char hex[IDS_HEX_LEN + 1];
    if (a->message_id.len != IDS_BYTES || !flight_remove(p, a->message_id.data))
        return STORE_OK;   /* late, or for a flight returned already: the resend is answered */
    metrics_count_peer_hop_ack(p->id, a->code);
    p->work_since_ms = clock_mono_ms();
    if (p->is_stalled) {
        log_info("peer", "link moving again peer=%s", p->id);
        p->is_stalled = false;
        p->is_stall_news = !p->is_stall_news;   /* stalled and moving again in one turn: none */
    }
    if (a->code == R(OK))
        return delivery_relayed(&b->dc, txn, p->id, a->message_id.data, now_ms);
    if (is_transient(a->code)) {
        log_warn("peer", "peer will take it later peer=%s msg=%s code=%d detail=%s", p->id,
                 ids_of(a->message_id.data, hex), (int)a->code, a->detail);
        return delivery_return(&b->dc, txn, a->message_id.data, now_ms);
    }
    char reason[WIRE_MAX_TEXT];
    snprintf(reason, sizeof reason, "broker %s refused it: %s: %s", p->id,
             protobuf_c_enum_descriptor_get_value(&referral__v1__result_code__descriptor,
                                                  (int)a->code) != NULL
                 ? protobuf_c_enum_descriptor_get_value(&referral__v1__result_code__descriptor,
                                                        (int)a->code)->name : "?",
             a->detail);
    log_warn("peer", "peer refused a forward peer=%s msg=%s code=%d detail=%s", p->id,
             ids_of(a->message_id.data, hex), (int)a->code, a->detail);
    Referral__V1__Settle s = REFERRAL__V1__SETTLE__INIT;
    s.message_id = a->message_id;
    s.verb = REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_REJECT;
    s.reason = reason;
    Referral__V1__ResultCode code;
    const char *detail;
    return delivery_settle(&b->dc, txn, p->id, &s, now_ms, &code, &detail);
}

static store_err read_link(broker *b, MDB_txn *txn, peer_link *p, uint64_t now_ms)
{
    for (size_t n = 0; n < MAX_READ; n++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, p->dealer, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return STORE_OK;
        }
        Referral__V1__PeerFrame *f = NULL;
        char why[256];
        wire_err we = wire_decode_peer_frame(zmq_msg_data(&m), zmq_msg_size(&m), &b->limits, &f,
                                             why, sizeof why);
        zmq_msg_close(&m);
        if (we != WIRE_OK) {
            log_warn("peer", "unreadable frame on link peer=%s detail=%s", p->id, why);
            continue;
        }
        p->last_heard_ms = clock_mono_ms();
        if (!p->is_up && p->is_connected) {
            log_info("peer", "link up again peer=%s", p->id);
            p->is_up = true;
        }
        store_err e = STORE_OK;
        if (f->body_case == REFERRAL__V1__PEER_FRAME__BODY_HOP_ACK)
            e = on_hop_ack(b, txn, p, f->hop_ack, now_ms);
        else if (f->body_case == REFERRAL__V1__PEER_FRAME__BODY_TRACE_REPLY)
            trace_peer_reply(b, p->id, f->trace_reply);
        else if (f->body_case == REFERRAL__V1__PEER_FRAME__BODY_ERROR)
            log_warn("peer", "peer reported an error peer=%s code=%d detail=%s", p->id,
                     (int)f->error->code, f->error->detail);
        wire_free(f);
        if (e != STORE_OK)
            return e;
    }
    b->is_busy = true;
    return STORE_OK;
}

store_err peers_read(broker *b, MDB_txn *txn, uint64_t now_ms)
{
    peer_set *ps = b->peers;
    for (size_t i = 0; i < ps->n; i++) {
        read_events(b, &ps->items[i]);
        store_err e = read_link(b, txn, &ps->items[i], now_ms);
        if (e != STORE_OK)
            return e;
    }
    return STORE_OK;
}

/* ---- the peer socket: what peers send this broker ------------------------ */

/* A notice travelling back to the sender of a message that passed through
 * here: queued for that sender if homed here, else for the next hop. Its
 * signature is the signing broker's, checked by the sender's library. */
static store_err on_notice(broker *b, MDB_txn *txn, const char *peer,
                           const Referral__V1__SignedNotice *sn, uint64_t now_ms, Referral__V1__ResultCode *code, const char **detail,
                           uint8_t notice_id[IDS_BYTES])
{
    Referral__V1__Notice *n = NULL;
    char why[256];
    *code = R(OK);
    *detail = "";
    if (wire_decode_notice(sn->notice.data, sn->notice.len, &b->limits, &n, why, sizeof why) !=
        WIRE_OK) {
        *code = R(MALFORMED);
        *detail = "unreadable notice";
        return STORE_OK;
    }
    memcpy(notice_id, n->notice_id.data, IDS_BYTES);
    store_msg about, m;
    /* A notice a peer sends again (its hop ack was lost) is known here by
     * its record: notices have no dedup entry, their id is their record. */
    store_err e = store_msg_get(b->st, txn, n->notice_id.data, &m);
    if (e == STORE_OK) {
        wire_free(n);
        *detail = "already stored";
        return STORE_OK;
    }
    if (e != STORE_NOT_FOUND) {
        wire_free(n);
        return e;
    }
    e = store_msg_get(b->st, txn, n->message_id.data, &about);
    if (e == STORE_NOT_FOUND) {
        wire_free(n);
        *code = R(UNKNOWN_MESSAGE);
        *detail = "the message the notice is about did not pass through this broker";
        return STORE_OK;
    }
    if (e != STORE_OK) {
        wire_free(n);
        return e;
    }
    /* A peer may carry back only notices about what this broker forwarded
     * to it: the message's queue here was that peer's. */
    if (about.payload_kind != STORE_PAYLOAD_ENVELOPE || strcmp(about.recipient, peer) != 0) {
        log_warn("peer", "refused a notice about a message not forwarded to peer=%s",
                 peer);
        wire_free(n);
        *code = R(NOT_AUTHORIZED);
        *detail = "a notice about a message this broker did not forward to you";
        return STORE_OK;
    }
    /* Word for the origin's watchdog, from a notice whose broker signed it
     * (the sender's library checks it again before showing it). */
    const Referral__V1__DirectoryBroker *signer = directory_broker(b->dir, n->broker_id);
    if (signer != NULL && sn->signature.len == SIGN_BYTES &&
        sign_verify(signer->sign_public.data, "referral.v1 notice", sn->notice.data,
                    sn->notice.len, sn->signature.data))
        e = escalate_on_notice(&b->ec, txn, n, now_ms);
    else
        log_warn("peer", "notice from peer=%s not counted by the watchdog: not signed by its "
                 "broker %s", peer, n->broker_id);
    if (e != STORE_OK) {
        wire_free(n);
        return e;
    }
    const char *via = peers_route_agency(b, about.sender);
    memset(&m, 0, sizeof m);
    memcpy(m.id, n->notice_id.data, IDS_BYTES);
    memcpy(m.referral_id, about.referral_id, IDS_BYTES);
    memcpy(m.content_digest, n->notice_id.data, IDS_BYTES);
    m.urgency = about.urgency;
    m.payload_kind = STORE_PAYLOAD_NOTICE;
    m.created_at_ms = now_ms;
    m.expires_at_ms = now_ms + b->cfg.notice_ttl_ms;
    snprintf(m.recipient, sizeof m.recipient, "%s", via != NULL ? via : about.sender);
    snprintf(m.sender, sizeof m.sender, "%s", n->broker_id);
    wire_free(n);
    size_t len;
    uint8_t *payload = wire_pack(sn, &len);
    e = delivery_enqueue_alone(&b->dc, txn, &m, payload, len, now_ms, NULL, NULL);
    free(payload);
    if (e == STORE_FULL) {
        *code = R(STORE_FULL);
        *detail = "no room; send it again later";
        return STORE_OK;
    }
    return e;
}

store_err peers_handle(broker *b, MDB_txn *txn, held *hf, uint64_t now_ms)
{
    peer_set *ps = b->peers;
    const uint8_t *rid = zmq_msg_data(&hf->rid);
    size_t rid_len = zmq_msg_size(&hf->rid);
    char peer[IDS_NAME_MAX + 1];
    uint8_t kid[16];
    if (hf->n_parts != 2 ||
        !zap_parse_peer_id(zmq_msg_gets(&hf->data, "User-Id"), peer, kid) ||
        !zap_is_peer_still_valid(b->dir, peer, kid)) {
        log_warn("peer", "frame on the peer socket from a connection that is not an admitted "
                 "broker: dropped");
        return STORE_OK;
    }
    if (hf->decode_err != WIRE_OK) {
        log_warn("peer", "unreadable frame from peer=%s detail=%s", peer, hf->decode_why);
        return STORE_OK;
    }
    const Referral__V1__PeerFrame *f = hf->peer_frame;
    store_err e = STORE_OK;
    switch (f->body_case) {
    case REFERRAL__V1__PEER_FRAME__BODY_FORWARD: {
        ingress_answer a;
        e = ingress_forward(b, txn, peer, f->forward->envelope, &hf->chk, now_ms, &a);
        if (e == STORE_OK)
            send_hop_ack(ps, rid, rid_len, a.message_id, f->forward->sequence, a.code,
                         a.is_duplicate ? "already stored" : a.detail);
        break;
    }
    case REFERRAL__V1__PEER_FRAME__BODY_NOTICE: {
        Referral__V1__ResultCode code;
        const char *detail;
        uint8_t id[IDS_BYTES] = {0};
        e = on_notice(b, txn, peer, f->notice, now_ms, &code, &detail, id);
        if (e == STORE_OK)
            send_hop_ack(ps, rid, rid_len, id, 0, code, detail);
        break;
    }
    case REFERRAL__V1__PEER_FRAME__BODY_HEARTBEAT:
        send_heartbeat(NULL, rid, rid_len, &ps->in);
        break;
    case REFERRAL__V1__PEER_FRAME__BODY_TRACE_QUERY:
        e = trace_peer_query(b, txn, peer, rid, rid_len, f->trace_query, now_ms);
        break;
    case REFERRAL__V1__PEER_FRAME__BODY_HELLO:
        log_info("peer", "peer said hello peer=%s directory_version=%" PRIu64, peer,
                 f->hello->directory_version);
        break;
    default:
        break;
    }
    return e;
}

/* ---- forwarding ----------------------------------------------------------- */

/* The frame carrying a stored payload to a peer: a Forward of the
 * envelope, or the SignedNotice. NULL when out of memory or unreadable. */
static uint8_t *pack_forward(peer_link *p, const store_msg *m, const uint8_t *payload,
                             size_t len, size_t *out_len)
{
    Referral__V1__PeerFrame f = REFERRAL__V1__PEER_FRAME__INIT;
    f.version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    Referral__V1__Forward fw = REFERRAL__V1__FORWARD__INIT;
    Referral__V1__Envelope *env = NULL;
    Referral__V1__SignedNotice *sn = NULL;
    if (m->payload_kind == STORE_PAYLOAD_ENVELOPE) {
        if (wire_decode_envelope(payload, len, NULL, &env, NULL, 0) != WIRE_OK)
            return NULL;
        fw.sequence = ++p->next_seq;
        fw.envelope = env;
        f.body_case = REFERRAL__V1__PEER_FRAME__BODY_FORWARD;
        f.forward = &fw;
    } else {
        sn = referral__v1__signed_notice__unpack(NULL, len, payload);
        if (sn == NULL)
            return NULL;
        f.body_case = REFERRAL__V1__PEER_FRAME__BODY_NOTICE;
        f.notice = sn;
    }
    uint8_t *buf = wire_pack(&f, out_len);
    wire_free(env);
    wire_free(sn);
    return buf;
}

store_err peers_deliver(broker *b, MDB_txn *txn, uint64_t now_ms)
{
    peer_set *ps = b->peers;
    for (size_t i = 0; i < ps->n; i++) {
        peer_link *p = &ps->items[i];
        while (p->is_up && p->n_flights < b->cfg.peer_window) {
            store_msg m;
            const uint8_t *payload;
            size_t len, flen;
            store_err e = delivery_take(&b->dc, txn, p->id, now_ms, &m, &payload, &len);
            if (e == STORE_NOT_FOUND)
                break;
            if (e != STORE_OK)
                return e;
            uint8_t *frame = pack_forward(p, &m, payload, len, &flen);
            link_frame *lf = frame != NULL ? link_queue(&p->out, NULL, 0, frame, flen) : NULL;
            if (lf == NULL) {
                loop_return_later(b, m.id);   /* out of memory: next turn */
                break;
            }
            lf->is_delivery = true;
            memcpy(lf->message_id, m.id, IDS_BYTES);
            memcpy(p->flights[p->n_flights++], m.id, IDS_BYTES);
            metrics_count_peer_forward(p->id);
        }
        /* The stall clock runs while work waits: in flight, held, or queued. */
        uint8_t head[IDS_BYTES];
        bool has_work = p->n_flights > 0 || link_held(&p->out) > 0;
        if (!has_work) {
            store_err e = queue_head(b->st, txn, p->id, head);
            if (e != STORE_OK && e != STORE_NOT_FOUND)
                return e;
            has_work = e == STORE_OK;
        }
        if (!has_work && p->is_stalled) {
            /* Nothing waits any more (what waited expired, or went another
             * way): the stall is over even without a hop ack. */
            log_info("peer", "link has no work waiting any more peer=%s", p->id);
            p->is_stalled = false;
            p->is_stall_news = !p->is_stall_news;
        }
        if (!has_work)
            p->work_since_ms = 0;
        else if (p->work_since_ms == 0)
            p->work_since_ms = clock_mono_ms();
    }
    return STORE_OK;
}

/* Tell [federation] stall_alert_to that link p stalled (an alert, kind
 * PARTITION, signed like every notice) or moves again (a stand-down with
 * the same incident id). Inside the turn's transaction. */
static store_err announce_stall(broker *b, MDB_txn *txn, peer_link *p, uint64_t now_ms)
{
    p->is_stall_news = false;
    if (b->cfg.stall_alert_to[0] == '\0')
        return STORE_OK;
    if (p->is_stalled && !ids_new(p->incident, now_ms))
        return STORE_FAILED;
    char detail[300];
    snprintf(detail, sizeof detail, p->is_stalled
             ? "the link from %s to %s is stalled: work waits and no hop ack came for %u s; "
               "referrals for that region are held here (nothing is lost); check the peer "
               "broker and the network, and phone the region for any crisis"
             : "the link from %s to %s moves again: held referrals are being forwarded",
             b->cfg.id, p->id, b->cfg.stall_ms / 1000);
    Referral__V1__Alert a = REFERRAL__V1__ALERT__INIT;
    a.referral_id = (ProtobufCBinaryData){IDS_BYTES, p->incident};
    a.message_id = (ProtobufCBinaryData){IDS_BYTES, p->incident};
    a.kind = REFERRAL__V1__ALERT_KIND__ALERT_KIND_PARTITION;
    a.broker_id = b->cfg.id;
    a.at_ms = now_ms;
    a.detail = detail;
    a.urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS;
    a.to_agency = "";
    char list[sizeof b->cfg.stall_alert_to];
    snprintf(list, sizeof list, "%s", b->cfg.stall_alert_to);
    for (char *save = NULL, *to = strtok_r(list, ", ", &save); to != NULL;
         to = strtok_r(NULL, ", ", &save)) {
        delivery_notice n = {
            .referral_id = p->incident, .message_id = p->incident, .to = to, .about_agency = "",
            .kind = p->is_stalled ? REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ALERT
                                  : REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_STAND_DOWN,
            .level = REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_UNSPECIFIED, .code = R(OK),
            .detail = detail, .alert = &a, .urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS,
        };
        store_err e = delivery_notify(&b->dc, txn, &n, now_ms);
        if (e != STORE_OK)
            return e;
        metrics_count_alert(REFERRAL__V1__ALERT_KIND__ALERT_KIND_PARTITION, !p->is_stalled);
    }
    log_warn("peer", "%s peer=%s to=%s", p->is_stalled ? "stall alert sent" : "stall stood down",
             p->id, b->cfg.stall_alert_to);
    return STORE_OK;
}

store_err peers_announce(broker *b, MDB_txn *txn, uint64_t now_ms)
{
    peer_set *ps = b->peers;
    for (size_t i = 0; ps != NULL && i < ps->n; i++) {
        if (!ps->items[i].is_stall_news)
            continue;
        store_err e = announce_stall(b, txn, &ps->items[i], now_ms);
        if (e != STORE_OK)
            return e;
    }
    return STORE_OK;
}

void peers_tick(broker *b, uint64_t now_ms)
{
    peer_set *ps = b->peers;
    for (size_t i = 0; i < ps->n; i++) {
        peer_link *p = &ps->items[i];
        if (p->is_connected && now_ms - p->last_beat_ms >= b->cfg.heartbeat_ms) {
            send_heartbeat(p, NULL, 0, &p->out);
            p->last_beat_ms = now_ms;
        }
        if (p->is_up && now_ms - p->last_heard_ms > b->cfg.peer_timeout_ms)
            link_down(b, p, "no heartbeat");
        if (p->work_since_ms != 0 && !p->is_stalled &&
            now_ms - p->work_since_ms > b->cfg.stall_ms) {
            log_error("peer", "link stalled peer=%s up=%s in_flight=%zu for_ms=%" PRIu64
                      "; check the peer broker and the network between", p->id,
                      p->is_up ? "yes" : "no", p->n_flights, now_ms - p->work_since_ms);
            p->is_stalled = true;
            p->is_stall_news = true;
            metrics_count_peer_stall(p->id);
        }
        metrics_observe_peer(p->id, p->is_up, p->is_stalled, p->n_flights);
    }
}

/* ---- the operators' view (admin "peers") --------------------------------- */

void peers_describe(const broker *b, MDB_txn *txn, json_object *out)
{
    const peer_set *ps = b->peers;
    uint64_t mono = clock_mono_ms();
    for (size_t i = 0; ps != NULL && i < ps->n; i++) {
        const peer_link *p = &ps->items[i];
        json_object *o = json_object_new_object();
        const char *state = p->is_stalled ? "stalled" : p->is_up ? "up"
                          : p->is_connected ? "connected" : "down";
        json_object_object_add(o, "peer", json_object_new_string(p->id));
        json_object_object_add(o, "state", json_object_new_string(state));
        json_object_object_add(o, "is_connected", json_object_new_boolean(p->is_connected));
        json_object_object_add(o, "is_up", json_object_new_boolean(p->is_up));
        json_object_object_add(o, "is_stalled", json_object_new_boolean(p->is_stalled));
        json_object_object_add(o, "in_flight", json_object_new_int64((int64_t)p->n_flights));
        json_object_object_add(o, "window", json_object_new_int64((int64_t)b->cfg.peer_window));
        json_object_object_add(o, "frames_held", json_object_new_int64((int64_t)link_held(&p->out)));
        json_object_object_add(o, "queued", json_object_new_int64(
                                   (int64_t)queue_depth(b->st, txn, p->id, 1000000)));
        json_object_object_add(o, "last_heard_ms_ago", p->last_heard_ms == 0
                               ? NULL : json_object_new_int64((int64_t)(mono - p->last_heard_ms)));
        json_object_object_add(o, "work_waiting_ms", p->work_since_ms == 0
                               ? json_object_new_int64(0)
                               : json_object_new_int64((int64_t)(mono - p->work_since_ms)));
        json_object_array_add(out, o);
    }
}
