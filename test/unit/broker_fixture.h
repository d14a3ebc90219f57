/*
 * broker_fixture: a temporary broker store for the broker's unit tests
 * (test_store, test_queue, test_deadline, test_delivery).
 *
 * fixture_open() makes a fresh directory under $TMPDIR (or /tmp) and opens
 * a store there; fixture_close() closes it and removes the directory.
 * Failures end the test through cmocka's assertions, never silently.
 */
#ifndef REF_TEST_BROKER_FIXTURE_H
#define REF_TEST_BROKER_FIXTURE_H

#include <stdbool.h>
#include <stdint.h>

#include "store.h"

typedef struct {
    char dir[512];
    store *st;
    store_options opt;
} fixture;

/* Make a directory and open a new store in it (map 64 MiB, high water 90%,
 * no disk guard). */
void fixture_open(fixture *f);

/* Open the store again in f->dir with f->opt; returns what store_open
 * returned, why holding its sentence. */
store_err fixture_reopen(fixture *f, char *why, size_t why_len);

/* Close the store (if open) and remove the directory. */
void fixture_close(fixture *f);

/* Begin and commit a write transaction, asserting success. */
MDB_txn *fixture_begin(fixture *f);
void fixture_commit(fixture *f, MDB_txn *txn);

/* A message record for recipient with urgency and seq, id filled with
 * id_byte then the seq (so ids differ), a fixed sender. */
void fixture_msg(store_msg *m, const char *recipient, uint8_t urgency, uint64_t seq,
                 uint8_t id_byte);

/* Put raw bytes under key in which, bypassing every encoder (for records
 * the broker would never write). */
void fixture_put_raw(fixture *f, MDB_txn *txn, store_db which, const void *key, size_t key_len,
                     const void *val, size_t val_len);

/* Number of records in which. */
size_t fixture_count(fixture *f, MDB_txn *txn, store_db which);

#endif
