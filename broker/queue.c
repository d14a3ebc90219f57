/*
 * queue: recipient queues ordered by urgency then arrival, and the
 * in-flight set (queue.h). Never decides anything: delivery.c moves
 * messages between states; this file only keeps the indexes. Values are
 * versioned records (layouts in store.h); an entry that does not decode is
 * set aside (store_set_aside), never fatal.
 */
#include "queue.h"

#include <string.h>

#include "utf8.h"

#define KEY_MAX (IDS_NAME_MAX + 1 + 1 + 8)

static size_t queue_key(const store_msg *m, uint8_t key[KEY_MAX])
{
    size_t n = strnlen(m->recipient, IDS_NAME_MAX);
    memcpy(key, m->recipient, n);
    key[n] = 0;
    key[n + 1] = (uint8_t)(4 - m->urgency);
    for (int i = 0; i < 8; i++)
        key[n + 2 + i] = (uint8_t)(m->seq >> (8 * (7 - i)));
    return n + 2 + 8;
}

#define ENTRY_LEN (1 + IDS_BYTES)

store_err queue_push(store *s, MDB_txn *txn, const store_msg *m)
{
    uint8_t key[KEY_MAX], val[ENTRY_LEN];
    val[0] = STORE_RECORD_V1;
    memcpy(val + 1, m->id, IDS_BYTES);
    MDB_val k = {.mv_size = queue_key(m, key), .mv_data = key};
    MDB_val v = {.mv_size = sizeof val, .mv_data = val};
    return store_err_from_mdb(mdb_put(txn, store_dbi(s, STORE_DB_QUEUE), &k, &v, 0));
}

store_err queue_remove(store *s, MDB_txn *txn, const store_msg *m)
{
    uint8_t key[KEY_MAX];
    MDB_val k = {.mv_size = queue_key(m, key), .mv_data = key};
    return store_err_from_mdb(mdb_del(txn, store_dbi(s, STORE_DB_QUEUE), &k, NULL));
}

/* Position a cursor at agency's first entry; false if it has none. */
static bool seek_agency(MDB_cursor *c, const char *agency, size_t *prefix_len, MDB_val *k,
                        MDB_val *v, MDB_cursor_op op)
{
    uint8_t prefix[IDS_NAME_MAX + 1];
    size_t n = strnlen(agency, IDS_NAME_MAX);
    memcpy(prefix, agency, n);
    prefix[n] = 0;
    *prefix_len = n + 1;
    if (op == MDB_SET_RANGE) {
        k->mv_size = n + 1;
        k->mv_data = prefix;
    }
    if (mdb_cursor_get(c, k, v, op) != 0)
        return false;
    return k->mv_size > n + 1 && memcmp(k->mv_data, agency, n) == 0 &&
           ((const uint8_t *)k->mv_data)[n] == 0;
}

/* The head entry of agency's queue: its key (copied to key, *key_len) and,
 * if it decodes, its id (*is_readable). */
static store_err head_entry(store *s, MDB_txn *txn, const char *agency, uint8_t key[KEY_MAX],
                            size_t *key_len, uint8_t id[IDS_BYTES], bool *is_readable)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, store_dbi(s, STORE_DB_QUEUE), &c);
    if (rc != 0)
        return store_err_from_mdb(rc);
    MDB_val k, v;
    size_t plen;
    store_err e = STORE_NOT_FOUND;
    if (seek_agency(c, agency, &plen, &k, &v, MDB_SET_RANGE) && k.mv_size <= KEY_MAX) {
        const uint8_t *p = v.mv_data;
        memcpy(key, k.mv_data, k.mv_size);
        *key_len = k.mv_size;
        *is_readable = v.mv_size == ENTRY_LEN && p[0] == STORE_RECORD_V1;
        if (*is_readable)
            memcpy(id, p + 1, IDS_BYTES);
        e = STORE_OK;
    }
    mdb_cursor_close(c);
    return e;
}

store_err queue_head(store *s, MDB_txn *txn, const char *agency, uint8_t id[IDS_BYTES])
{
    for (;;) {   /* each round sets one unreadable entry aside: it ends */
        uint8_t key[KEY_MAX];
        size_t key_len = 0;
        bool is_readable;
        store_err e = head_entry(s, txn, agency, key, &key_len, id, &is_readable);
        if (e != STORE_OK || is_readable)
            return e;
        e = store_set_aside(s, txn, STORE_DB_QUEUE, key, key_len,
                            "queue entry of unknown version or length");
        if (e != STORE_OK)
            return e;
    }
}

store_err queue_drop_head(store *s, MDB_txn *txn, const char *agency)
{
    uint8_t key[KEY_MAX], id[IDS_BYTES];
    size_t key_len = 0;
    bool is_readable;
    store_err e = head_entry(s, txn, agency, key, &key_len, id, &is_readable);
    if (e != STORE_OK)
        return e;
    MDB_val k = {.mv_size = key_len, .mv_data = key};
    return store_err_from_mdb(mdb_del(txn, store_dbi(s, STORE_DB_QUEUE), &k, NULL));
}

size_t queue_depth(store *s, MDB_txn *txn, const char *agency, size_t limit)
{
    MDB_cursor *c;
    if (mdb_cursor_open(txn, store_dbi(s, STORE_DB_QUEUE), &c) != 0)
        return 0;
    MDB_val k, v;
    size_t plen, n = 0;
    bool ok = seek_agency(c, agency, &plen, &k, &v, MDB_SET_RANGE);
    while (ok && n < limit) {
        n++;
        ok = seek_agency(c, agency, &plen, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    return n;
}

#define INFLIGHT_LEN 9

store_err inflight_put(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES], uint64_t due_ms)
{
    uint8_t val[INFLIGHT_LEN];
    val[0] = STORE_RECORD_V1;
    store_put_u64(val + 1, due_ms);
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)id};
    MDB_val v = {.mv_size = sizeof val, .mv_data = val};
    return store_err_from_mdb(mdb_put(txn, store_dbi(s, STORE_DB_INFLIGHT), &k, &v, 0));
}

store_err inflight_get(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES], uint64_t *due_ms)
{
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)id}, v;
    int rc = mdb_get(txn, store_dbi(s, STORE_DB_INFLIGHT), &k, &v);
    if (rc != 0)
        return store_err_from_mdb(rc);
    const uint8_t *p = v.mv_data;
    if (v.mv_size != INFLIGHT_LEN || p[0] != STORE_RECORD_V1) {
        store_err e = store_set_aside(s, txn, STORE_DB_INFLIGHT, id, IDS_BYTES,
                                      "inflight entry of unknown version or length");
        return e == STORE_OK ? STORE_NOT_FOUND : e;
    }
    *due_ms = store_get_u64(p + 1);
    return STORE_OK;
}

store_err inflight_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)id};
    return store_err_from_mdb(mdb_del(txn, store_dbi(s, STORE_DB_INFLIGHT), &k, NULL));
}

store_err inflight_each(store *s, MDB_txn *txn, inflight_fn fn, void *ctx)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, store_dbi(s, STORE_DB_INFLIGHT), &c);
    if (rc != 0)
        return store_err_from_mdb(rc);
    MDB_val k, v;
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
        if (k.mv_size == IDS_BYTES)
            fn(k.mv_data, ctx);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? STORE_OK : store_err_from_mdb(rc);
}

/* ---- held messages (queue.h) ----------------------------------------------- */

#define HELD_MIN (1 + 8 + 1 + 1)

static size_t put_text(uint8_t *p, const char *text)
{
    size_t n = strnlen(text, QUEUE_HELD_TEXT_MAX);
    p[0] = (uint8_t)n;
    memcpy(p + 1, text, n);
    return 1 + n;
}

store_err queue_hold(store *s, MDB_txn *txn, const store_msg *m, const queue_held *h)
{
    uint8_t val[HELD_MIN + IDS_NAME_MAX + QUEUE_HELD_TEXT_MAX];
    char op[IDS_NAME_MAX + 1], reason[QUEUE_HELD_TEXT_MAX + 1];
    utf8_copy_cut(op, sizeof op, h->operator_name, IDS_NAME_MAX);
    utf8_copy_cut(reason, sizeof reason, h->reason, QUEUE_HELD_TEXT_MAX);
    val[0] = STORE_RECORD_V1;
    store_put_u64(val + 1, h->held_at_ms);
    size_t n = 9;
    n += put_text(val + n, op);
    n += put_text(val + n, reason);
    store_err e = queue_remove(s, txn, m);
    if (e != STORE_OK)
        return e;
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)m->id};
    MDB_val v = {.mv_size = n, .mv_data = val};
    return store_err_from_mdb(mdb_put(txn, store_dbi(s, STORE_DB_HELD), &k, &v, 0));
}

store_err queue_release(store *s, MDB_txn *txn, const store_msg *m)
{
    store_err e = queue_held_del(s, txn, m->id);
    return e == STORE_OK ? queue_push(s, txn, m) : e;
}

static bool get_text(const uint8_t **p, const uint8_t *end, char *out, size_t room)
{
    if (*p >= end || (size_t)(end - *p) < 1u + **p || **p >= room)
        return false;
    size_t n = **p;
    memcpy(out, *p + 1, n);
    out[n] = '\0';
    *p += 1 + n;
    return true;
}

store_err queue_held_get(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES], queue_held *h)
{
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)id}, v;
    int rc = mdb_get(txn, store_dbi(s, STORE_DB_HELD), &k, &v);
    if (rc != 0)
        return store_err_from_mdb(rc);
    if (h == NULL)
        return STORE_OK;
    const uint8_t *p = v.mv_data, *end = p + v.mv_size;
    if (v.mv_size < HELD_MIN || p[0] != STORE_RECORD_V1)
        return STORE_CORRUPT;
    h->held_at_ms = store_get_u64(p + 1);
    p += 9;
    if (!get_text(&p, end, h->operator_name, sizeof h->operator_name) ||
        !get_text(&p, end, h->reason, sizeof h->reason) || p != end)
        return STORE_CORRUPT;
    return STORE_OK;
}

store_err queue_held_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)id};
    return store_err_from_mdb(mdb_del(txn, store_dbi(s, STORE_DB_HELD), &k, NULL));
}

store_err queue_held_each(store *s, MDB_txn *txn, inflight_fn fn, void *ctx)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, store_dbi(s, STORE_DB_HELD), &c);
    if (rc != 0)
        return store_err_from_mdb(rc);
    MDB_val k, v;
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
        if (k.mv_size == IDS_BYTES)
            fn(k.mv_data, ctx);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? STORE_OK : store_err_from_mdb(rc);
}
