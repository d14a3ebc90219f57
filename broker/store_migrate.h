/*
 * store_migrate: converts a store of the previous format to the current
 * one, inside the transaction that opens it (store.c calls it; nothing
 * else should).
 *
 * Format 1 -> 2 (layouts of both in store.h): message records from the raw
 * struct to record v1, bodies' and dedup, inflight, queue and deadline
 * values to their v1 records, meta numbers from host order to big-endian,
 * quarantined bodies to quarantine records. Nothing is dropped: a record
 * that does not convert is set aside (store_set_aside) and counted. On an
 * error the caller aborts the transaction and the store is as it was; a
 * full map (STORE_FULL) needs a larger map_size_bytes, since every record
 * is rewritten in one transaction.
 */
#ifndef REF_BROKER_STORE_MIGRATE_H
#define REF_BROKER_STORE_MIGRATE_H

#include "store.h"

/* What one migration converted (records per database) and set aside. */
typedef struct {
    size_t msgs, bodies, queue, inflight, dedup, deadlines, quarantine, set_aside;
    uint64_t ms;   /* filled in by the caller */
} store_migration_counts;

/* Convert every record of a format 1 store in txn (a write transaction of
 * the open); the caller then writes meta "format". */
store_err store_migrate_from_1(store *s, MDB_txn *txn, store_migration_counts *n);

#endif
