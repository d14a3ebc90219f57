/*
 * state (libreferral internal): the client's own LMDB directory.
 *
 *   outbox  message id -> packed Envelope, until the broker answers
 *           ACCEPTED (or refuses for good); sent again after every start
 *           and every new session
 *   inbox   message id -> a delivery the library holds for the application
 *           (the whole envelope or signed notice, not only its id), from
 *           the moment it arrived until the application confirms it with
 *           ref_delivery_done(); handed again after every start
 *   seen    message id -> what was received (referral id, sender, urgency,
 *           forget_at_ms), so a copy delivered again is not handed twice
 *           and a receipt can be addressed; pruned after forget_at_ms
 *   sent    message id -> the agencies a referral sent from here was
 *           sealed for (recipient, backups and the recipient's escalation
 *           chain), so that a receipt is shown only when its signer was one
 *           of them; pruned after forget_at_ms
 *   copies  message id of a referral received as an escalation copy (the
 *           sender's id) -> the copy's own id at the broker (the key of its
 *           seen record) and the copy's attempt id, so that a receipt for
 *           it can be composed from the sender's id; pruned after
 *           forget_at_ms
 *   meta    "format" -> the record format of this directory (u32, LE)
 *
 * Every record is explicitly encoded with a version byte first (never a raw
 * struct): see state.c for the layouts. A directory of an older format is
 * migrated when it is opened; one of a newer format is refused.
 *
 * Writes go through a state_txn so that everything one pump of the library
 * learned is committed at once, with LMDB's full sync: one fsync per batch,
 * never one per message. A record that cannot be decoded is reported, never
 * a crash.
 */
#ifndef REF_CLIENT_STATE_H
#define REF_CLIENT_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* 1: raw structs (libreferral 0.1.0); 2: versioned records; 3: inbox records
 * of version 2 (escalation copies), the copies database, sent records of up
 * to STATE_SENT_MAX agencies. Opening migrates 1 and 2 to 3. */
#define STATE_FORMAT 3

typedef struct state state;
typedef struct state_txn state_txn;

typedef struct {
    uint64_t forget_at_ms;
    uint8_t referral_id[16];
    char from[65];
    uint8_t urgency;
} state_seen;

#define STATE_SENT_MAX 32      /* every reader of a body (SEAL_MAX_RECIPIENTS) */

typedef struct {
    uint64_t forget_at_ms;
    size_t n;
    char agencies[STATE_SENT_MAX][65];
} state_sent;

typedef enum {
    STATE_INBOX_ENVELOPE = 1,   /* payload: a packed Envelope */
    STATE_INBOX_NOTICE = 2,     /* payload: a packed SignedNotice from the broker */
    STATE_INBOX_LOCAL = 3,      /* payload: the text of a notice the library made */
} state_inbox_kind;

#define STATE_NAME_MAX 64
#define STATE_REASON_MAX 512

/* What the broker said of an escalation copy (AttemptCopy without its
 * envelope), kept beside the envelope in the inbox. */
typedef struct {
    uint8_t attempt_id[16];
    uint32_t step, round;
    char original_recipient[STATE_NAME_MAX + 1];
    char reason[STATE_REASON_MAX + 1];
} state_copy_labels;

typedef struct {
    state_inbox_kind kind;
    uint8_t urgency;
    uint32_t attempt;
    const uint8_t *payload;     /* borrowed (from the caller, or from LMDB during a callback) */
    size_t len;
    bool is_copy;               /* kind ENVELOPE delivered as an escalation copy */
    state_copy_labels copy;     /* when is_copy; strings longer than their limits are cut */
} state_inbox_entry;

/* A referral received as an escalation copy, under the sender's message id. */
typedef struct {
    uint64_t forget_at_ms;
    uint8_t copy_id[16];        /* Delivery.message_id of the copy: its seen record's key */
    uint8_t attempt_id[16];     /* the copy's attempt id, for the receipts */
} state_copy_ref;

/* Open (creating if missing) the state directory dir, migrating an older
 * format. Returns a ref_err value; why names the problem. */
int state_open(const char *dir, state **out, char *why, size_t why_len);
void state_destroy(state **s);

/* A write transaction. state_commit() ends it (with fsync) and returns a
 * ref_err value; state_abort() drops it. Both set *txn to NULL. */
int state_begin(state *s, state_txn **txn);
int state_commit(state_txn **txn);
void state_abort(state_txn **txn);

/* Writes inside txn. Each returns a ref_err value (REF_E_STATE on an LMDB
 * failure: abort the transaction then). */
int state_outbox_put(state_txn *txn, const uint8_t id[16], const uint8_t *env, size_t len);
int state_outbox_del(state_txn *txn, const uint8_t id[16]);
int state_inbox_put(state_txn *txn, const uint8_t id[16], const state_inbox_entry *e);
int state_inbox_del(state_txn *txn, const uint8_t id[16]);
int state_seen_put(state_txn *txn, const uint8_t id[16], const state_seen *seen);
int state_sent_put(state_txn *txn, const uint8_t id[16], const state_sent *sent);
/* id: the sender's message id of a referral received as a copy. A later
 * copy of the same message replaces the earlier one. */
int state_copy_ref_put(state_txn *txn, const uint8_t id[16], const state_copy_ref *ref);

/* Call fn for each outbox entry, in id order (data borrowed during the
 * call). */
typedef void (*state_outbox_fn)(const uint8_t id[16], const uint8_t *env, size_t len, void *ctx);
int state_outbox_each(state *s, state_outbox_fn fn, void *ctx);
size_t state_outbox_count(state *s);
/* A copy of the outbox entry of id (caller frees *env); REF_E_AGAIN if none. */
int state_outbox_get(state *s, const uint8_t id[16], uint8_t **env, size_t *len);

/* Call fn for each inbox entry, in id order (entry borrowed during the
 * call). Entries that cannot be decoded are counted in *unreadable (may be
 * NULL) and skipped. */
typedef void (*state_inbox_fn)(const uint8_t id[16], const state_inbox_entry *e, void *ctx);
int state_inbox_each(state *s, state_inbox_fn fn, void *ctx, size_t *unreadable);
size_t state_inbox_count(state *s);

/* REF_OK and *seen filled if id was received; REF_E_AGAIN if not;
 * REF_E_PROTOCOL if a record exists but cannot be decoded (it was received:
 * never hand it again). txn may be NULL (a read of its own) or a write
 * transaction (which sees its own writes). */
int state_seen_get(state *s, state_txn *txn, const uint8_t id[16], state_seen *seen);

/* REF_OK and *sent filled if id was sent from here (a referral); REF_E_AGAIN
 * if not (or forgotten); REF_E_PROTOCOL if the record cannot be decoded. */
int state_sent_get(state *s, const uint8_t id[16], state_sent *sent);

/* REF_OK and *ref filled if the message id was received as an escalation
 * copy; REF_E_AGAIN if not (or forgotten); REF_E_PROTOCOL if the record
 * cannot be decoded. */
int state_copy_ref_get(state *s, const uint8_t id[16], state_copy_ref *ref);

/* Forget seen, sent and copies entries past their time; returns how many. */
size_t state_prune(state *s, uint64_t now_ms);

/* Test-only (the fuzz target test/fuzz/fuzz_client_state.c; not part of
 * libreferral's API, which exports only ref_ symbols): decode p/len as a
 * stored record of the given kind into a local record, with the decoder the
 * library uses when it reads that database, and return whether it decoded. */
typedef enum {
    STATE_RECORD_SEEN = 0,          /* seen, current format */
    STATE_RECORD_SEEN_LEGACY = 1,   /* seen, format 1 (read by the migration) */
    STATE_RECORD_SENT = 2,
    STATE_RECORD_INBOX = 3,
    STATE_RECORD_COPY = 4,          /* copies */
} state_record_kind;
#define STATE_RECORD_KINDS 5
bool state_record_check(state_record_kind kind, const uint8_t *p, size_t len);

#endif
