/*
 * deadline: due-time index in LMDB (deadline.h). It only stores and pops;
 * what a deadline means is decided in delivery.c. It must never hand out a
 * deadline it cannot read: an unknown kind or value version is set aside
 * (store_set_aside) on the way to the next one, never fatal.
 */
#include "deadline.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#define KEY_LEN (8 + 1 + IDS_BYTES)

static void make_key(uint64_t due_ms, deadline_kind kind, const uint8_t id[IDS_BYTES],
                     uint8_t key[KEY_LEN])
{
    for (int i = 0; i < 8; i++)
        key[i] = (uint8_t)(due_ms >> (8 * (7 - i)));
    key[8] = (uint8_t)kind;
    memcpy(key + 9, id, IDS_BYTES);
}

static uint64_t key_due(const uint8_t *key)
{
    uint64_t due = 0;
    for (int i = 0; i < 8; i++)
        due = (due << 8) | key[i];
    return due;
}

store_err deadline_put(store *s, MDB_txn *txn, uint64_t due_ms, deadline_kind kind,
                       const uint8_t id[IDS_BYTES])
{
    assert(deadline_is_known_kind(kind));
    uint8_t key[KEY_LEN], val[1] = {STORE_RECORD_V1};
    make_key(due_ms, kind, id, key);
    MDB_val k = {.mv_size = KEY_LEN, .mv_data = key}, v = {.mv_size = sizeof val, .mv_data = val};
    return store_err_from_mdb(mdb_put(txn, store_dbi(s, STORE_DB_DEADLINES), &k, &v, 0));
}

store_err deadline_del(store *s, MDB_txn *txn, uint64_t due_ms, deadline_kind kind,
                       const uint8_t id[IDS_BYTES])
{
    uint8_t key[KEY_LEN];
    make_key(due_ms, kind, id, key);
    MDB_val k = {.mv_size = KEY_LEN, .mv_data = key};
    return store_err_from_mdb(mdb_del(txn, store_dbi(s, STORE_DB_DEADLINES), &k, NULL));
}

bool deadline_is_known_kind(int kind)
{
    return kind == DEADLINE_RETURN || kind == DEADLINE_EXPIRE || kind == DEADLINE_FORGET ||
           kind == DEADLINE_BODY;
}

/* Why the entry k -> v cannot be acted on, or NULL if it can. */
static const char *unreadable(const MDB_val *k, const MDB_val *v, char *why, size_t why_len)
{
    const uint8_t *key = k->mv_data, *val = v->mv_data;
    if (k->mv_size != KEY_LEN)
        snprintf(why, why_len, "deadline key of %zu bytes (expected %d)", k->mv_size, KEY_LEN);
    else if (!deadline_is_known_kind(key[8]))
        snprintf(why, why_len, "unknown deadline kind %u", key[8]);
    else if (v->mv_size != 1 || val[0] != STORE_RECORD_V1)
        snprintf(why, why_len, "deadline of unknown record version %u (%zu bytes)",
                 v->mv_size > 0 ? val[0] : 0, v->mv_size);
    else
        return NULL;
    return why;
}

/* Open a cursor at the earliest deadline that can be acted on, setting
 * aside every one before it that cannot. */
static store_err first(store *s, MDB_txn *txn, MDB_cursor **c, MDB_val *k)
{
    int rc = mdb_cursor_open(txn, store_dbi(s, STORE_DB_DEADLINES), c);
    if (rc != 0)
        return store_err_from_mdb(rc);
    for (;;) {   /* each round sets one entry aside: it ends */
        MDB_val v;
        rc = mdb_cursor_get(*c, k, &v, MDB_FIRST);
        if (rc != 0)
            return store_err_from_mdb(rc);
        char why[100];
        if (unreadable(k, &v, why, sizeof why) == NULL)
            return STORE_OK;
        uint8_t key[512];   /* LMDB keys are at most 511 bytes */
        size_t key_len = k->mv_size < sizeof key ? k->mv_size : sizeof key;
        memcpy(key, k->mv_data, key_len);
        mdb_cursor_close(*c);
        *c = NULL;
        store_err e = store_set_aside(s, txn, STORE_DB_DEADLINES, key, key_len, why);
        if (e != STORE_OK)
            return e;
        rc = mdb_cursor_open(txn, store_dbi(s, STORE_DB_DEADLINES), c);
        if (rc != 0)
            return store_err_from_mdb(rc);
    }
}

store_err deadline_next(store *s, MDB_txn *txn, uint64_t *due_ms)
{
    MDB_cursor *c = NULL;
    MDB_val k;
    store_err e = first(s, txn, &c, &k);
    if (e == STORE_OK)
        *due_ms = key_due(k.mv_data);
    if (c != NULL)
        mdb_cursor_close(c);
    return e;
}

store_err deadline_pop(store *s, MDB_txn *txn, uint64_t now_ms, uint64_t *due_ms,
                       deadline_kind *kind, uint8_t id[IDS_BYTES])
{
    MDB_cursor *c = NULL;
    MDB_val k;
    store_err e = first(s, txn, &c, &k);
    if (e == STORE_OK) {
        const uint8_t *key = k.mv_data;
        *due_ms = key_due(key);
        if (*due_ms > now_ms) {
            e = STORE_NOT_FOUND;
        } else {
            *kind = (deadline_kind)key[8];
            memcpy(id, key + 9, IDS_BYTES);
            e = store_err_from_mdb(mdb_cursor_del(c, 0));
        }
    }
    if (c != NULL)
        mdb_cursor_close(c);
    return e;
}
