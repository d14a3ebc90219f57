/*
 * client_impl (libreferral internal): what client.c (connection, session,
 * pump), delivery.c (deliveries and the hand-over) and send.c (referrals,
 * receipts and outbox answers) share. Nothing here leaves the library: it
 * is built with hidden visibility and only ref_ symbols are exported.
 */
#ifndef REF_CLIENT_IMPL_H
#define REF_CLIENT_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "directory.h"
#include "ids.h"
#include "keys.h"
#include "referral.h"
#include "referral.pb-c.h"
#include "state.h"

#define DEFAULT_TIMEOUT_MS 10000u
#define DEFAULT_CREDIT 16u
#define DEFAULT_TTL_S (7u * 24 * 3600)
#define MAX_READY 1024u
#define MAX_UNCONFIRMED 512u          /* inbox entries before credit is held back */
#define MAX_TEXT (64u << 10)
#define MAX_RETRY 256u
#define RETRY_AFTER_MS 1000u
#define BATCH_MAX 256u                /* frames read per durable commit */
#define MAX_PENDING_SENDS 256u        /* ref_send_async() referrals waiting for one commit */
#define DONE_FLUSH_AT 128u            /* confirmations that commit without other writes */
#define RECEIVE_PUMP_MS 1u            /* ref_receive() with deliveries ready pumps this often */
#define DEFAULT_IDLE_MS 120000u       /* when Welcome does not say */
#define MIN_PING_MS 100u
#define MAX_PING_MS 30000u
#define HELLO_AGAIN_MS 2000u          /* a Hello unanswered this long is sent again */
#define HEARTBEAT_MS 5000             /* ZeroMQ's own heartbeat on the connection */
#define CLOSE_LINGER_MS 2000u         /* at most this long for queued frames at destroy */
#define SEEN_KEEP_MS (30ull * 24 * 3600 * 1000)
#define R(x) REFERRAL__V1__RESULT_CODE__RESULT_##x

struct ref_delivery {
    uint8_t wire_id[16];            /* the Delivery's message id: the inbox key (a copy's own
                                       id for an escalation copy) */
    bool is_from_broker;            /* arrived in this process: its credit is given back */
    ref_delivery_kind kind;
    char message_id[REF_ID_HEX_LEN + 1];    /* a copy: the sender's message id */
    char referral_id[REF_ID_HEX_LEN + 1];
    char in_reply_to[REF_ID_HEX_LEN + 1];   /* a receipt: the message it answers */
    char from[IDS_NAME_MAX + 1];
    ref_urgency urgency;
    uint32_t attempt;
    int level;
    char *narrative, *requested_action, *pseudonym, *detail;
    uint32_t age;
    /* an escalation copy (kind REFERRAL) */
    bool is_copy;
    char original_recipient[IDS_NAME_MAX + 1];
    /* an alert or a stand-down */
    const char *alert_kind;         /* static: "NOT_RECEIVED", ...; "" without an alert */
    char about_agency[IDS_NAME_MAX + 1];
    uint32_t alert_step, alert_round;
    char *contacts, *copied_to;     /* "label phone; ..." and "a, b" */
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
    ref_outcome_fn outcome;       /* ref_client_set_outcome_fn(), or NULL */
    void *outcome_ctx;
    char last_detail[512];
    ref_delivery *ready[MAX_READY];
    size_t n_ready;
    size_t n_unconfirmed;           /* inbox entries: taken or not, not yet done */
    uint32_t owed_credit;           /* held back while n_unconfirmed >= MAX_UNCONFIRMED */
    uint8_t done[MAX_UNCONFIRMED][16];  /* confirmed, dropped from the inbox at the next commit */
    size_t n_done;
    uint32_t credit_to_send;        /* granted back since the last pump: one Credit frame */
    uint64_t pumped_at_ms;          /* the last pump's start */
    /* Referrals sealed and signed but not yet in the outbox: the next pump
     * (or ref_flush) writes them all in its one commit, then submits them. */
    struct pending_send {
        uint8_t id[16];
        uint8_t *env;               /* packed envelope (owned) */
        size_t len;
        bool has_sent;              /* a referral: write its sent record too */
        state_sent sent;
    } *pending;                     /* MAX_PENDING_SENDS, made at the first send */
    size_t n_pending;
    /* Submits on the wire and not answered yet, in this session (a guide
     * for batching, not a ledger: the outbox is that). While it is 0, a
     * ref_send_async() referral leaves at once, as nothing else would wake
     * the application to pump; while answers are awaited it waits for the
     * pump they cause, with the referrals queued after it. */
    size_t n_unanswered;
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

/* Everything one pump learned, committed once (delivery.c). */
typedef struct {
    state_txn *txn;                 /* begun at the first write */
    bool is_failed;                 /* a write failed: abort, settle nothing */
    ref_delivery *arrived[BATCH_MAX];
    size_t n_arrived;
    uint8_t ack[BATCH_MAX][16];     /* deliveries to settle ACK after the commit */
    size_t n_ack;
    size_t n_done;                  /* confirmed deliveries' deletions carried */
    size_t n_sends;                 /* pending sends carried (the first n_sends) */
} batch;

/* client.c: logging, frames, the pump */
__attribute__((format(printf, 3, 4)))
void say(const ref_client *c, ref_log_level level, const char *fmt, ...);
void set_detail(ref_client *c, const char *text);
const char *enum_name(const ProtobufCEnumDescriptor *desc, int value);
ref_err send_frame(ref_client *c, Referral__V1__ClientFrame *f);
ref_err send_credit(ref_client *c, uint32_t n);
ref_err send_settle(ref_client *c, const uint8_t id[16], Referral__V1__SettleVerb verb,
                    const char *reason);
/* Submit a packed envelope this process made (it is not decoded again)
 * under a new request id. */
ref_err submit_bytes(ref_client *c, const uint8_t *env_bytes, size_t len);
/* The same for an envelope read back from the outbox: decoded first, so a
 * damaged entry is never sent (REF_E_STATE). */
ref_err submit_stored(ref_client *c, const uint8_t *env_bytes, size_t len);
/* Read and act on every frame waiting, without blocking. */
ref_err pump(ref_client *c);
/* Pump until cond(c) or timeout_ms: REF_OK, REF_E_TIMEOUT, or pump's error. */
ref_err wait_for(ref_client *c, bool (*cond)(const ref_client *), uint32_t timeout_ms);

/* delivery.c: deliveries, the batch, the inbox */
/* Put the inbox deletions of confirmed deliveries into batch b. */
void batch_done(ref_client *c, batch *b);
/* After b committed (is_ok) or not: forget the deletions it carried. */
void batch_done_finish(ref_client *c, const batch *b, bool is_ok);
/* Commit confirmed deliveries' deletions now (a batch of their own). */
ref_err flush_done(ref_client *c);
/* Put the pending sends into batch b (outbox and sent records); they are
 * submitted once b committed (batch_finish). */
void batch_sends(ref_client *c, batch *b);
/* After b committed (is_ok): submit and forget the sends it carried; else
 * they stay pending for the next commit. */
void batch_sends_finish(ref_client *c, const batch *b, bool is_ok);
/* Commit and submit the pending sends now. */
ref_err flush_sends(ref_client *c);
state_txn *batch_txn(ref_client *c, batch *b);
void batch_write(ref_client *c, batch *b, int rc, const char *what);
ref_err batch_finish(ref_client *c, batch *b);
void on_envelope(ref_client *c, batch *b, const Referral__V1__Delivery *dl);
void on_notice(ref_client *c, batch *b, const Referral__V1__Delivery *dl);
void on_copy(ref_client *c, batch *b, const Referral__V1__Delivery *dl);
ref_delivery *delivery_local(const uint8_t wire_id[16], const char *text);
void keep_ready(ref_client *c, ref_delivery *d);
/* state_inbox_each callback: hand again an inbox entry (ctx: the client). */
void reload_one(const uint8_t id[16], const state_inbox_entry *e, void *ctx);

/* send.c: outbox answers, referrals, receipts */
void on_submit_reply(ref_client *c, batch *b, const Referral__V1__SubmitReply *r);
void resend_due(ref_client *c);
/* Compose a receipt of level for the received message mid (the sender's
 * message id; seen says who sent it). attempt_id: NULL, or the 16-byte
 * attempt id of the escalation copy it was received as. *env (free()) and
 * rmid get the receipt. */
ref_err compose_receipt(ref_client *c, const uint8_t mid[16], const state_seen *seen,
                        const uint8_t *attempt_id, ref_level level, const char *person,
                        const char *reason, uint8_t **env, size_t *len, uint8_t rmid[16]);

#endif
