/*
 * deadline: the durable due-time index.
 *
 * Key: due_ms (8 bytes, big-endian) kind (1) message id (16); value: the
 * record version (1 byte, 1). A cursor at
 * the start yields the earliest deadline, so finding what is due costs the
 * same whatever the backlog. Deadlines live in LMDB, so they survive a
 * restart; one that passed while the broker was down fires at start, once
 * (firing deletes it in the same transaction that acts on it).
 *
 * A release before DEADLINE_BODY sets such a deadline aside as of unknown
 * kind (never fatal); the retention sweep then deletes the body with its
 * message record after keep_ms instead.
 */
#ifndef REF_BROKER_DEADLINE_H
#define REF_BROKER_DEADLINE_H

#include "store.h"

typedef enum {
    DEADLINE_RETURN = 1,   /* an in-flight delivery goes back to its queue */
    DEADLINE_EXPIRE = 2,   /* the message's expires_at: undeliverable if still here */
    DEADLINE_FORGET = 3,   /* expires_at + clock skew: the dedup entry of a message
                              whose record is gone may go (retention.h keeps it
                              while the record is kept) */
    DEADLINE_BODY = 4,     /* body_grace_ms after a final state: the sealed body goes */
} deadline_kind;

/* Is kind one of the deadline_kind values above? Any other kind found in
 * the store (written by a newer release, or damaged) is set aside by
 * deadline_next and deadline_pop, with an error line, never acted on. */
bool deadline_is_known_kind(int kind);

/* Add (or keep) the deadline of kind for id at due_ms; kind must be known. */
store_err deadline_put(store *s, MDB_txn *txn, uint64_t due_ms, deadline_kind kind,
                       const uint8_t id[IDS_BYTES]);
store_err deadline_del(store *s, MDB_txn *txn, uint64_t due_ms, deadline_kind kind,
                       const uint8_t id[IDS_BYTES]);

/* The earliest due time, STORE_NOT_FOUND when there is none. Entries
 * that cannot be acted on (a key of the wrong length, an unknown kind or
 * value version) are set aside on the way (store_set_aside); txn must be a
 * write transaction. */
store_err deadline_next(store *s, MDB_txn *txn, uint64_t *due_ms);

/* Remove and return the earliest deadline due at or before now_ms;
 * STORE_NOT_FOUND when nothing is due. */
store_err deadline_pop(store *s, MDB_txn *txn, uint64_t now_ms, uint64_t *due_ms,
                       deadline_kind *kind, uint8_t id[IDS_BYTES]);

#endif
