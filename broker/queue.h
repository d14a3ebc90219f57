/*
 * queue: per-recipient ordering and the in-flight set, on top of store.
 *
 * A queue key is  recipient \0 rank seq  with rank = 4 - urgency (crisis 0)
 * and seq the big-endian arrival number, so a cursor walk over one
 * recipient's prefix yields crisis first, then urgent, priority, routine,
 * each oldest first. The in-flight set maps a message id to the due time
 * of its return deadline (see deadline.h). Value layouts (versioned) are
 * in store.h.
 */
#ifndef REF_BROKER_QUEUE_H
#define REF_BROKER_QUEUE_H

#include "store.h"

/* Add m (its recipient, urgency and seq) to its recipient's queue. */
store_err queue_push(store *s, MDB_txn *txn, const store_msg *m);

/* Remove m from its recipient's queue (STORE_NOT_FOUND if not queued). */
store_err queue_remove(store *s, MDB_txn *txn, const store_msg *m);

/* The first message id in agency's queue; STORE_NOT_FOUND when empty.
 * Entries that do not decode are set aside on the way (store_set_aside). */
store_err queue_head(store *s, MDB_txn *txn, const char *agency, uint8_t id[IDS_BYTES]);

/* Delete the first entry of agency's queue (one whose message record is
 * gone); STORE_NOT_FOUND when empty. */
store_err queue_drop_head(store *s, MDB_txn *txn, const char *agency);

/* Number of messages queued for agency, counting at most limit. */
size_t queue_depth(store *s, MDB_txn *txn, const char *agency, size_t limit);

store_err inflight_put(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES], uint64_t due_ms);
store_err inflight_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES]);

/* The return due time kept for id; an entry that does not decode is set
 * aside and reported as STORE_NOT_FOUND. */
store_err inflight_get(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES], uint64_t *due_ms);

/* Call fn for every in-flight id (used at start to return them all). fn
 * must not modify the in-flight set; collect ids and act after. */
typedef void (*inflight_fn)(const uint8_t id[IDS_BYTES], void *ctx);
store_err inflight_each(store *s, MDB_txn *txn, inflight_fn fn, void *ctx);

/*
 * Held messages (store.h, "held"): a QUEUED message an operator holds is
 * out of its queue (never taken) but keeps its record, state and
 * deadlines. Only queue_hold and queue_release move a message between its
 * queue and the held set; delivery.c's final moves delete a held entry
 * where they would delete the queue entry.
 */
#define QUEUE_HELD_TEXT_MAX 255   /* operator and reason are cut to this many bytes */

typedef struct {
    uint64_t held_at_ms;
    char operator_name[IDS_NAME_MAX + 1];
    char reason[QUEUE_HELD_TEXT_MAX + 1];
} queue_held;

/* Move m (QUEUED, in its queue) to the held set with h (operator and
 * reason cut at a character boundary). STORE_NOT_FOUND: m is not in its
 * queue (held already, or in flight). */
store_err queue_hold(store *s, MDB_txn *txn, const store_msg *m, const queue_held *h);

/* Move m from the held set back to its queue under its rank and seq.
 * STORE_NOT_FOUND: m is not held. */
store_err queue_release(store *s, MDB_txn *txn, const store_msg *m);

/* The held entry of id into *h (may be NULL: is it held?). STORE_NOT_FOUND
 * if not held; an entry that does not decode is reported STORE_CORRUPT
 * (kept: the message stays out of its queue until an operator releases
 * it, which rewrites the queue entry). */
store_err queue_held_get(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES], queue_held *h);

/* Delete the held entry of id (a final move; STORE_NOT_FOUND if none). */
store_err queue_held_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES]);

/* Call fn for every held id (fn must not change the held set). */
store_err queue_held_each(store *s, MDB_txn *txn, inflight_fn fn, void *ctx);

#endif
