/*
 * delivery: the life of a stored message, every state move in one place.
 *
 * States (MessageState in the schema) and the only moves allowed:
 *
 *   (new) --enqueue--> QUEUED
 *   QUEUED --take--> IN_FLIGHT                 handed to a client session
 *   IN_FLIGHT --return--> QUEUED               ack timeout, NAK delay over, session
 *                                              ended, send failed, an operator's
 *                                              requeue (delivery_requeue)
 *   IN_FLIGHT --nak/in-progress--> IN_FLIGHT   new return deadline
 *   QUEUED|IN_FLIGHT --ack--> DELIVERED        final; body goes after the grace
 *   QUEUED|IN_FLIGHT --reject--> REJECTED      final; body goes after the grace;
 *                                              sender told
 *   QUEUED|IN_FLIGHT --expire--> UNDELIVERABLE final; body goes after the grace;
 *                                              sender told (also an operator's
 *                                              expire, delivery_expire)
 *   QUEUED --corrupt body--> QUARANTINED       final; body kept apart; sender told
 *   QUEUED --withdraw--> WITHDRAWN             final; an escalation attempt another
 *                                              agency made moot (escalate.h)
 *
 * An operator may hold a QUEUED message (queue.h, queue_hold): it stays
 * QUEUED, out of its queue, until released; every final move above
 * deletes its held entry where it would delete its queue entry.
 *
 * The grace is body_grace_ms: 0 deletes the body in the move's own
 * transaction; otherwise a DEADLINE_BODY deadline deletes it then (durable:
 * a restart in between keeps it until the deadline). A final state's
 * record stays with its dedup entry until the retention sweep (retention.h)
 * removes them, keep_ms after the final move and never before the dedup
 * entry's expires_at + clock skew, so status queries and duplicate
 * submissions keep getting the right answer. delivery_assert_move() checks
 * each move against this table.
 *
 * Every move writes a trace event and a log line with the ids involved.
 * Nothing here sends on a socket: callers send after the commit.
 */
#ifndef REF_BROKER_DELIVERY_H
#define REF_BROKER_DELIVERY_H

#include <stdbool.h>

#include "deadline.h"
#include "referral.pb-c.h"
#include "store.h"
#include "wire.h"

typedef struct {
    store *st;                   /* borrowed */
    const char *broker_id;       /* borrowed */
    uint64_t ack_timeout_ms;
    uint64_t max_nak_delay_ms;
    uint64_t clock_skew_ms;
    uint64_t notice_ttl_ms;
    uint64_t body_grace_ms;      /* [retention]: a final message's body is kept this long */
    const uint8_t *sign_secret;  /* borrowed: the broker's Ed25519 key, signs notices */
    const uint8_t *sign_public;  /* borrowed */
    /* The peer to send a notice through to an agency homed at another
     * broker, or NULL for a local agency; route NULL: every agency local. */
    const char *(*route)(const void *ctx, const char *agency);
    const void *route_ctx;
    /* Called in the same transaction when a message reaches a final state
     * (escalate.h watches its attempts); NULL: nobody watches. */
    store_err (*on_final)(void *ctx, MDB_txn *txn, const store_msg *m, uint64_t now_ms);
    /* Called as a message leaves its queue for a final state, while its
     * body is still stored (escalate.h keeps what later copies need). */
    store_err (*keep_body)(void *ctx, MDB_txn *txn, const store_msg *m);
    void *on_final_ctx;                  /* the ctx of both */
} delivery_ctx;

/* A notice a broker makes and signs (delivery_notify). */
typedef struct {
    const uint8_t *referral_id;              /* IDS_BYTES */
    const uint8_t *message_id;               /* the message it is about */
    const char *to;                          /* the agency told */
    const char *about_agency;                /* the agency it names ("" none) */
    Referral__V1__NoticeKind kind;
    Referral__V1__AckLevel level;
    Referral__V1__ResultCode code;
    const char *detail;                      /* cut to WIRE_MAX_TEXT */
    const Referral__V1__Alert *alert;        /* or NULL */
    uint8_t urgency;                         /* its queue rank */
} delivery_notice;

/* Is from -> to one of the moves above (from 0: a new message)? */
bool delivery_is_move_allowed(uint8_t from, uint8_t to);

/* Is state one of the final states above (DELIVERED, REJECTED,
 * UNDELIVERABLE, QUARANTINED, WITHDRAWN)? */
bool delivery_is_final(uint8_t state);

/* What a Delivery frame of m carries (its payload_kind on the wire). */
wire_payload delivery_payload_of(const store_msg *m);

/* Assert that from -> to is one of the moves above. */
void delivery_assert_move(uint8_t from, uint8_t to);

/* Store a new message: m's ids, recipient, sender, urgency, times and
 * payload_kind are set by the caller; seq, state and attempts are set here.
 * Writes the body, queue entry, expiry and forget deadlines, the refmsgs
 * entry, dedup entry (forget_at expires_at + skew) and a trace event. STORE_FULL means nothing was kept
 * only if the caller runs this in a child transaction and aborts it. */
store_err delivery_enqueue(const delivery_ctx *dc, MDB_txn *txn, store_msg *m,
                           const uint8_t *payload, size_t len, uint64_t now_ms);

/* delivery_enqueue() in a child transaction of txn, with also(ctx, child)
 * when it is not NULL (more records of the same message), so that a full
 * map refuses this message alone (STORE_FULL: nothing of it was kept; the
 * turn goes on). payload NULL (out of memory) is STORE_FULL too. */
store_err delivery_enqueue_alone(const delivery_ctx *dc, MDB_txn *txn, store_msg *m,
                                 const uint8_t *payload, size_t len, uint64_t now_ms,
                                 store_err (*also)(void *ctx, MDB_txn *child), void *ctx);

/* Take the head of agency's queue into flight. On STORE_OK m holds the
 * record and *payload its body (valid until the next write in txn: pack it
 * into the outgoing frame at once). STORE_NOT_FOUND: nothing queued.
 * Corrupt bodies met on the way are quarantined and skipped.
 *
 * Taking does not count an attempt: the frame carries m->attempts + 1,
 * and only delivery_sent(), for a frame that left for a live connection
 * (zmq_send succeeded after the commit), counts it, in the next turn's
 * transaction. A delivery that never left (its session ended, its send
 * failed) returns to the queue with its count unchanged. A crash between
 * the send and the next commit loses that count: the delivery comes again
 * with the same attempt number (at least once, never inflated). */
store_err delivery_take(const delivery_ctx *dc, MDB_txn *txn, const char *agency,
                        uint64_t now_ms, store_msg *m, const uint8_t **payload, size_t *len);

/* Settle a delivery for agency. *code gets the ResultCode for the reply:
 * OK, UNKNOWN_MESSAGE (no such message or already final), NOT_AUTHORIZED
 * (another agency's message). The returned store_err is for store faults. */
store_err delivery_settle(const delivery_ctx *dc, MDB_txn *txn, const char *agency,
                          const Referral__V1__Settle *settle, uint64_t now_ms,
                          Referral__V1__ResultCode *code, const char **detail);

/* The peer broker `peer` acknowledged message id (a hop ack: it stored it
 * durably): the message is final here (DELIVERED, meaning handed on) and
 * traced RELAYED. A message not in flight to that peer is left alone (a
 * late ack after its return: the next forward is answered "duplicate"). */
store_err delivery_relayed(const delivery_ctx *dc, MDB_txn *txn, const char *peer,
                           const uint8_t id[IDS_BYTES], uint64_t now_ms);

/* Act on one due deadline (popped by the caller from deadline_pop). */
store_err delivery_fire(const delivery_ctx *dc, MDB_txn *txn, deadline_kind kind,
                        const uint8_t id[IDS_BYTES], uint64_t due_ms, uint64_t now_ms);

/* The frame of attempt `attempt` of message id left for a live connection:
 * count it (attempts becomes at least attempt) and trace DELIVERED. A
 * message already forgotten is skipped. */
store_err delivery_sent(const delivery_ctx *dc, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                        uint32_t attempt, uint64_t now_ms);

/* Return one in-flight message to its queue now (its send failed). */
store_err delivery_return(const delivery_ctx *dc, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                          uint64_t now_ms);

/* Return message id to its queue now if it is still in the flight due at
 * due_at_ms (the session that held it ended); a later flight, a settled or
 * final message is left alone. */
store_err delivery_return_flight(const delivery_ctx *dc, MDB_txn *txn,
                                 const uint8_t id[IDS_BYTES], uint64_t due_at_ms,
                                 uint64_t now_ms);

/* At start: return every in-flight message to its queue; *count returned. */
store_err delivery_return_all(const delivery_ctx *dc, MDB_txn *txn, uint64_t now_ms,
                              size_t *count);

/* Sign a notice made from spec and queue it for spec->to (through the next
 * hop when that agency is homed at another broker). Like every notice it
 * is never refused for room: receipts, notices and alerts keep flowing. */
store_err delivery_notify(const delivery_ctx *dc, MDB_txn *txn, const delivery_notice *spec,
                          uint64_t now_ms);

/* Withdraw message id if it is still QUEUED (never handed to a client):
 * final WITHDRAWN, traced with why. *is_withdrawn false when it was not
 * queued (in flight or final: it stays as it is). */
store_err delivery_withdraw(const delivery_ctx *dc, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                            const char *why, uint64_t now_ms, bool *is_withdrawn);

/* An operator's requeue (admin_cmds.c): m, read in txn and IN_FLIGHT,
 * goes back to its queue now, traced REDELIVERED with why (envelopes) and
 * logged, as an ack timeout would. A late settle of the earlier delivery
 * still counts (QUEUED|IN_FLIGHT --ack--> DELIVERED). */
store_err delivery_requeue(const delivery_ctx *dc, MDB_txn *txn, store_msg *m, const char *why,
                           uint64_t now_ms);

/* An operator's expire (admin_cmds.c): m, read in txn and QUEUED (held or
 * not) or IN_FLIGHT, ends UNDELIVERABLE now by the natural expiry's path
 * (the body's grace, the trace EXPIRED with trace_why, the sender told
 * notice_why, and on_final, so an escalation re-routes). NULL texts: the
 * natural expiry's. */
store_err delivery_expire(const delivery_ctx *dc, MDB_txn *txn, store_msg *m,
                          const char *trace_why, const char *notice_why, uint64_t now_ms);

/* Append a trace event for m. */
store_err delivery_trace(const delivery_ctx *dc, MDB_txn *txn, const store_msg *m,
                         Referral__V1__TraceEventKind kind, Referral__V1__ResultCode code,
                         const char *detail, uint64_t now_ms);

#endif
