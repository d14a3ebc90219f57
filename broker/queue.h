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

#endif
