/*
 * store: the broker's durable state, one LMDB environment.
 *
 * Named databases, and the layout of what each keeps (store format 2).
 * Every value starts with its record version (1 in format 2); every number
 * is big-endian; strings are [len:1][bytes] without a NUL. Offsets are
 * bytes. A record is read only through its decoder here (or in queue.c,
 * deadline.c), which checks version, length and ranges.
 *
 *   meta        name -> value. "format" "2" (ASCII), "broker_id" (ASCII),
 *               "seq" and "directory_version" (u64, 8 bytes), others as
 *               their owner writes them (trust.c: "directory_digest").
 *   msgs        message id (16) -> message record v1 (store_msg):
 *                 [0] 1 | [1] state | [2] urgency | [3] payload_kind |
 *                 [4] id (16) | [20] referral id (16) | [36] content
 *                 digest (32) | [68] attempts u32 | [72] seq u64 |
 *                 [80] created_at_ms | [88] expires_at_ms |
 *                 [96] updated_at_ms | [104] due_at_ms (u64 each) |
 *                 [112] recipient [len][bytes] | sender [len][bytes]
 *               (114..242 bytes; nothing may follow the sender)
 *   bodies      message id (16) -> [0] 1 | [1] SHA-256 of payload (32) |
 *               [33] payload (immutable; deleted [retention] body_grace_ms
 *               after the message reaches a final state: at once for 0,
 *               else by a DEADLINE_BODY deadline)
 *   queue       recipient \0 rank seq u64 -> [0] 1 | [1] message id (16)
 *               (queue.c)
 *   inflight    message id (16) -> [0] 1 | [1] due time of its return u64
 *               (queue.c)
 *   dedup       message id (16) -> [0] 1 | [1] content digest (32) |
 *               [33] forget_at_ms u64 (expires_at + clock skew). Kept at
 *               least until forget_at_ms, and as long as the message's
 *               record is kept (so an id this store remembers is never
 *               accepted twice); removed with the record by the retention
 *               sweep, or at forget_at_ms when the record is already gone
 *   deadlines   due_ms u64 | kind (1) | message id (16) -> [0] 1
 *               (deadline.c)
 *   quarantine  what (1) | the key the record had -> [0] 1 |
 *               [1] set_aside_at_ms u64 | [9] reason [len][bytes] | the
 *               value exactly as it was. what is a store_db (STORE_DB_BODIES
 *               for a body that failed its digest check, STORE_DB_MSGS,
 *               STORE_DB_DEADLINES, ... for a record set aside)
 *   trace       referral id (16), seq u64 -> TraceEvent (protobuf, the
 *               schema's own versioning)
 *   referrals   referral id -> who sent it first and whom it addressed
 *               (store_referral), written when its first message is stored:
 *               receipts and trace queries are checked against it.
 *               [0] 1 | [1] n addressed (1..33) | sender [len][bytes] |
 *               n times [len][bytes]
 *   levels      message id, agency -> the highest receipt level that agency
 *               asserted for that message (levels only move forward).
 *               [0] 1 | [1] level
 *   refmsgs     referral id (16) | message id (16) -> [0] 1: every message
 *               record kept for a referral (envelopes, copies, notices),
 *               written with the record and deleted with it, so a
 *               referral whose range here is empty has no message left
 *               (retention.h). Built from msgs at the first open of a
 *               store made before it (meta "refmsgs_built").
 *   escalations the escalation of each referral message homed here, and the
 *               origin's watchdogs, in three key spaces (escalate.h gives
 *               the layouts): 'E' message id -> the escalation record;
 *               'A' attempt message id -> the message id it is an attempt
 *               of; 'D' urgency rank, due_ms, message id -> [0] 1 (when it
 *               next acts, crisis first).
 *   held        message id (16) -> [0] 1 | [1] held_at_ms u64 |
 *               [9] operator [len][bytes] | reason [len][bytes] (queue.c):
 *               a QUEUED message an operator holds (referralctl hold). Its
 *               queue entry is removed while it is held, so it is never
 *               taken; its record stays QUEUED and its deadlines stay, so
 *               it still expires at expires_at (the final move deletes this
 *               entry instead of the queue entry). Release puts the queue
 *               entry back under its original rank and seq.
 *
 * Retention (retention.h, docs/operations.md "Retention"): a final
 * message's record, dedup entry, levels and refmsgs entry go together once
 * it has been final for keep_ms and its forget_at_ms has passed; a
 * referral's trace and referrals record go once its refmsgs range is
 * empty; quarantine entries go after keep_ms (bodies after body_grace_ms).
 *
 * Formats: format 1 (releases up to 698cd3b) kept message records as a raw
 * C struct behind the host-order magic "RMF1", bodies behind the same
 * magic, dedup and inflight times and meta numbers in host byte order,
 * empty deadline values, bare ids as queue values, and quarantined bodies
 * under their bare id. store_open() migrates such a store to format 2 in
 * one transaction (nothing changes if it fails) and logs what it
 * converted; a store of a newer format is refused, never rewritten.
 *
 * Set aside, never a crash loop: a record whose version is unknown or that
 * does not decode (a message record, a queue, inflight or deadline entry,
 * a deadline of unknown kind) is moved to quarantine with the reason, an
 * error line is logged with its key, the meta counter "set_aside" grows,
 * and the broker goes on as if the record were not there. A dedup entry
 * that does not decode is not moved (it guards against replays): lookups
 * report STORE_CORRUPT and the submission is refused until it is forgotten.
 *
 * Rules this module keeps (docs/operations.md explains them):
 *   - LMDB's default full sync; never NOSYNC, NOMETASYNC, MAPASYNC or
 *     WRITEMAP. A commit that fails is never retried: store_commit() reports
 *     it and the broker exits; recovery is at the next start.
 *   - A store that is missing its data file, corrupt or someone else's is
 *     refused at open, never replaced by an empty one.
 *   - Each body carries the SHA-256 of its payload; store_body_get() checks
 *     it and reports STORE_CORRUPT on a mismatch.
 *   - Stale reader slots are cleared at open (mdb_reader_check).
 *
 * All functions taking a txn run inside the caller's write transaction; one
 * loop turn is one transaction (group commit).
 */
#ifndef REF_BROKER_STORE_H
#define REF_BROKER_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#include "digest.h"
#include "ids.h"

/* The store format this broker writes, and the one it migrates from. */
#define STORE_FORMAT_CURRENT 2
#define STORE_FORMAT_PREVIOUS 1

/* The version byte every record of format 2 starts with. */
#define STORE_RECORD_V1 1

typedef enum {
    STORE_OK = 0,
    STORE_NOT_FOUND,    /* no such key */
    STORE_FULL,         /* the map (or a transaction) has no room: refuse new work */
    STORE_CORRUPT,      /* a record failed its digest or format check */
    STORE_FAILED,       /* LMDB or the file system failed: the broker must exit */
} store_err;

typedef enum {
    STORE_DB_META,
    STORE_DB_MSGS,
    STORE_DB_BODIES,
    STORE_DB_QUEUE,
    STORE_DB_INFLIGHT,
    STORE_DB_DEDUP,
    STORE_DB_DEADLINES,
    STORE_DB_QUARANTINE,
    STORE_DB_TRACE,
    STORE_DB_REFERRALS,     /* added after format 1's first release: created at open */
    STORE_DB_LEVELS,        /* likewise */
    STORE_DB_REFMSGS,       /* likewise (retention) */
    STORE_DB_ESCALATIONS,   /* likewise (escalate.h) */
    STORE_DB_HELD,          /* likewise (queue.h: messages an operator holds) */
    STORE_DB_COUNT
} store_db;

/* What a stored record carries. */
typedef enum {
    STORE_PAYLOAD_ENVELOPE = 1,   /* a packed Envelope addressed to recipient */
    STORE_PAYLOAD_NOTICE = 2,     /* a packed SignedNotice for recipient */
    STORE_PAYLOAD_COPY = 3,       /* a packed AttemptCopy: an escalation's copy for recipient */
} store_payload_kind;

/* The fixed part of a message record. States are MessageState values of
 * the schema; allowed moves are listed in delivery.h. */
typedef struct {
    uint8_t id[IDS_BYTES];
    uint8_t referral_id[IDS_BYTES];
    uint8_t content_digest[DIGEST_BYTES];  /* what dedup compares */
    uint8_t state;
    uint8_t urgency;                       /* Urgency, 1..4 */
    uint8_t payload_kind;                  /* store_payload_kind */
    uint8_t pad;
    uint32_t attempts;                     /* deliveries so far */
    uint64_t seq;                          /* arrival order at this broker */
    uint64_t created_at_ms;
    uint64_t expires_at_ms;
    uint64_t updated_at_ms;
    uint64_t due_at_ms;                    /* the pending return deadline, 0 if none */
    char recipient[IDS_NAME_MAX + 1];      /* whose queue */
    char sender[IDS_NAME_MAX + 1];         /* who is told about final states */
} store_msg;

/* A referral as first recorded here: its original sender and the agencies
 * it was addressed to (recipient first, then backups; escalation adds the
 * agencies it copies or re-routes to). */
#define STORE_REFERRAL_MAX 33
typedef struct {
    char sender[IDS_NAME_MAX + 1];
    size_t n_addressed;
    char addressed[STORE_REFERRAL_MAX][IDS_NAME_MAX + 1];
} store_referral;

typedef struct {
    const char *dir;              /* borrowed; must exist or be creatable */
    const char *broker_id;        /* borrowed; a store belongs to one broker */
    uint64_t map_size_bytes;
    uint32_t high_water_percent;
    uint64_t min_free_disk_bytes;
} store_options;

typedef struct store store;

/*
 * Open (or, for an empty or new directory, create) the store. On success
 * *out is owned by the caller (store_destroy). On failure *out is NULL and
 * why holds a sentence naming the problem and the fix.
 */
store_err store_open(const store_options *opt, store **out, char *why, size_t why_len);

/* Close the environment (no transaction may be open). NULL-safe; nulls *s. */
void store_destroy(store **s);

/* Begin a write transaction (*txn owned until commit or abort). */
store_err store_begin(store *s, MDB_txn **txn);

/* Commit with fsync. STORE_FAILED means the broker must log why and exit
 * (BROKER_EXIT_STORE); why then names the cause and the fix, starting
 * "disk full:" when the file system had no room. The transaction is gone
 * either way. */
store_err store_commit(store *s, MDB_txn *txn, char *why, size_t why_len);

/*
 * The fault seam, for tests only: make this store fail on demand, as a
 * full map or a failing disk would, without #ifdef or LD_PRELOAD.
 * Production never calls it (a store opens with no fault set).
 *
 *   STORE_FAULT_PUT     a write of this module (store_msg_put, the body,
 *                       dedup, trace, meta, referral and level records,
 *                       quarantine) returns error; queue.c, deadline.c and
 *                       the migration write on their own and are not
 *                       counted. With MDB_MAP_FULL a submission is refused
 *                       alone (STORE_FULL); with EIO the turn fails.
 *   STORE_FAULT_COMMIT  store_commit() aborts the transaction and fails
 *                       with error, as when LMDB's write of its pages
 *                       fails: nothing of the transaction reaches the file.
 *   STORE_FAULT_SYNC    store_commit() commits, then fails with error, as
 *                       when the fsync after the write fails: the data may
 *                       be in the file, but nobody may be told it is.
 *
 * after_calls calls of op succeed, then the next one fails with error (an
 * MDB_* code or an errno: MDB_MAP_FULL, EIO, ENOSPC, ...), once; the fault
 * is then cleared. Only commits of transactions in which this module wrote
 * count (LMDB commits an empty transaction without touching the disk).
 * STORE_FAULT_NONE clears a fault not yet fired. store_commit() describes
 * an injected failure exactly as a real one (store_describe_failure).
 */
typedef enum {
    STORE_FAULT_NONE = 0,
    STORE_FAULT_PUT,
    STORE_FAULT_COMMIT,
    STORE_FAULT_SYNC,
} store_fault_op;

void store_set_fault(store *s, store_fault_op op, unsigned after_calls, int error);

/* A sentence for a failed LMDB or file-system call rc (an MDB_* code or an
 * errno) while doing something (e.g. "commit") in the store at dir: names
 * the cause ("disk full:", "I/O error:", "store map full:", ...) and what an
 * operator does about it. LMDB reports a write cut short by a full disk as
 * EIO; with under 1 MiB free that is reported as "disk full". */
void store_describe_failure(const char *dir, uint64_t map_size_bytes, int rc, const char *doing,
                            char *why, size_t why_len);

/* Begin a child transaction of txn, for work that may hit a full map and
 * must then be undone alone (a submission). */
store_err store_begin_child(store *s, MDB_txn *parent, MDB_txn **child);

/* The database handle for which. */
MDB_dbi store_dbi(const store *s, store_db which);

/* Map an LMDB error to a store_err (MDB_MAP_FULL and MDB_TXN_FULL are FULL). */
store_err store_err_from_mdb(int rc);

/* Human name of an error. */
const char *store_strerror(store_err e);

/* A number kept in meta under key (STORE_NOT_FOUND if never set). */
store_err store_meta_get_u64(store *s, MDB_txn *txn, const char *key, uint64_t *value);
store_err store_meta_put_u64(store *s, MDB_txn *txn, const char *key, uint64_t value);

/* Bytes kept in meta under key: *len in, the room in value; out, the
 * length (STORE_NOT_FOUND if never set, STORE_CORRUPT if larger). */
store_err store_meta_get_bytes(store *s, MDB_txn *txn, const char *key, uint8_t *value,
                               size_t *len);
store_err store_meta_put_bytes(store *s, MDB_txn *txn, const char *key, const uint8_t *value,
                               size_t len);

/* Next arrival sequence number (persisted in meta within txn). */
store_err store_next_seq(store *s, MDB_txn *txn, uint64_t *seq);

/* Write (insert or replace) the state record of m->id. */
store_err store_msg_put(store *s, MDB_txn *txn, const store_msg *m);

/* Read the state record of id into m. A record that does not decode (an
 * unknown version, a bad length or field) is set aside with its body
 * (store_set_aside) and reported as STORE_NOT_FOUND, so every caller treats
 * it as a message this broker no longer holds; txn must be a write
 * transaction. */
store_err store_msg_get(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES], store_msg *m);

store_err store_msg_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES]);

/* Store the payload of id with its SHA-256. */
store_err store_body_put(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                         const uint8_t *payload, size_t len);

/* Point *payload at the stored payload of id after checking its digest
 * (STORE_CORRUPT on a mismatch). The pointer is into the map: valid until
 * the next write in txn or its end; copy what must outlive that. */
store_err store_body_get(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                         const uint8_t **payload, size_t *len);

/* Delete the body of id (STORE_NOT_FOUND if there is none). */
store_err store_body_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES]);

/* Move the body of id to quarantine (kept for operators, never delivered);
 * STORE_NOT_FOUND if it has no body. */
store_err store_quarantine(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES]);

/* Set aside the record under key in which: move it to quarantine (under
 * which, key; see the layout above) with reason, delete it where it was,
 * log an error line naming it, and count it in meta "set_aside". For
 * STORE_DB_MSGS the message's body and inflight entry go with it.
 * STORE_NOT_FOUND if there is no such record. */
store_err store_set_aside(store *s, MDB_txn *txn, store_db which, const uint8_t *key,
                          size_t key_len, const char *reason);

/* Is the record under key of which in quarantine (set aside)? */
store_err store_is_set_aside(store *s, MDB_txn *txn, store_db which, const uint8_t *key,
                             size_t key_len, bool *is_set_aside);

/* Records set aside since the store was made (meta "set_aside"); 0 if none. */
uint64_t store_set_aside_count(store *s, MDB_txn *txn);

/* The record codecs, exposed for the unit tests and the migration. Each
 * encoder writes the record's current version and returns its length;
 * each decoder returns false (with why naming the fault, e.g. "unknown
 * record version 7") for anything but a well-formed current record. */
#define STORE_MSG_RECORD_MAX (112 + 2 * (1 + IDS_NAME_MAX))
size_t store_msg_encode(const store_msg *m, uint8_t out[STORE_MSG_RECORD_MAX]);
bool store_msg_decode(const uint8_t *p, size_t len, store_msg *m, char *why, size_t why_len);

/* Big-endian helpers every record codec uses. */
void store_put_u64(uint8_t *p, uint64_t v);
uint64_t store_get_u64(const uint8_t *p);

/* Dedup: remember id with its content digest until forget_at_ms.
 * store_dedup_get reports STORE_CORRUPT (and logs) for an entry that does
 * not decode; the caller refuses the submission (see the top of this
 * file). */
store_err store_dedup_put(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                          const uint8_t digest[DIGEST_BYTES], uint64_t forget_at_ms);
store_err store_dedup_get(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                          uint8_t digest[DIGEST_BYTES]);
store_err store_dedup_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES]);

/* The record of referral_id (STORE_NOT_FOUND if none; STORE_CORRUPT if it
 * cannot be decoded), and its writing (insert or replace). */
store_err store_referral_get(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                             store_referral *r);
store_err store_referral_put(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                             const store_referral *r);
/* Is agency the referral's sender or one it addressed? */
bool store_referral_names(const store_referral *r, const char *agency, bool with_sender);

/* The highest receipt level agency asserted for message_id (0 if none),
 * and its update. */
store_err store_level_get(store *s, MDB_txn *txn, const uint8_t message_id[IDS_BYTES],
                          const char *agency, uint32_t *level);
store_err store_level_put(store *s, MDB_txn *txn, const uint8_t message_id[IDS_BYTES],
                          const char *agency, uint32_t level);

/* Note (put) or forget (del) that message_id is a message of referral_id
 * (refmsgs); del reports STORE_NOT_FOUND if it was not noted. */
store_err store_refmsg_put(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                           const uint8_t message_id[IDS_BYTES]);
store_err store_refmsg_del(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                           const uint8_t message_id[IDS_BYTES]);

/* Does referral_id have a message noted in refmsgs? */
store_err store_referral_has_msgs(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                                  bool *has_msgs);

/* Call fn with each message id noted for referral_id (the first 256). */
store_err store_refmsgs_each(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                             void (*fn)(const uint8_t id[IDS_BYTES], void *ctx), void *ctx);

/* Delete the referral record of referral_id (STORE_NOT_FOUND if none). */
store_err store_referral_del(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES]);

/* Delete every level record of message_id; *n_deleted counts them. */
store_err store_levels_del(store *s, MDB_txn *txn, const uint8_t message_id[IDS_BYTES],
                           size_t *n_deleted);

/* Delete the oldest trace events of referral_id, at most max; *n_deleted
 * counts them and *is_done is true when none is left. */
store_err store_trace_del(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                          size_t max, size_t *n_deleted, bool *is_done);

/* Delete the record under key in which, for the retention sweep's
 * leftovers (quarantine entries); STORE_NOT_FOUND if there is none. */
store_err store_del(store *s, MDB_txn *txn, store_db which, const uint8_t *key, size_t key_len);

/* Append a packed TraceEvent under referral_id. */
store_err store_trace_put(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                          const uint8_t *event, size_t len);

/* Call fn for each trace event of referral_id, oldest first, at most max. */
typedef void (*store_trace_fn)(const uint8_t *event, size_t len, void *ctx);
store_err store_trace_each(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                           size_t max, store_trace_fn fn, void *ctx, bool *is_truncated);

/*
 * May new work of about bytes be accepted? Room is measured at the first
 * call in each write transaction (store_begin marks the measurement stale)
 * and every accepted call reserves bytes (with room for indexes and
 * copy-on-write) against both limits until the next measurement, so a
 * burst within one turn cannot run past them:
 *   - the map: pages in use (the free list does not count) plus what is
 *     reserved must stay under high_water_percent of the map;
 *   - the disk: room is the file system's free space plus the free pages
 *     inside data.mdb (LMDB never shrinks the file, so a drained store has
 *     its room there); it must stay above min_free_disk_bytes (0: no check).
 * Receipts (is_receipt) may use half of the room above the high-water mark
 * and half of min_free_disk_bytes, so acknowledgements keep flowing while
 * new referrals are refused; settles and broker notices are never reserved
 * here and use what is left. False, with why naming the limit, when the
 * work does not fit; the caller refuses it (STORE_FULL, retry later).
 */
bool store_reserve(store *s, size_t bytes, bool is_receipt, char *why, size_t why_len);

/* Pages in use and the map size, in bytes (for stats and tests). */
void store_usage(store *s, uint64_t *used_bytes, uint64_t *map_bytes);

#endif
