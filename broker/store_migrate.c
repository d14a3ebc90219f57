/*
 * store_migrate: a store of format 1 becomes format 2 (store_migrate.h).
 *
 * Format 1 is what releases up to 698cd3b wrote (see store.h). Its message
 * record was this struct, in host byte order and layout (x86-64 and
 * aarch64 alike: 248 bytes), behind the 4-byte host-order magic "RMF1";
 * bodies had the same magic before their digest. It is read here and
 * nowhere else.
 *
 * This file must never leave a store half converted: it runs inside the
 * open's one transaction, and any failure aborts all of it. A record that
 * does not convert is set aside (store_set_aside), never dropped.
 */
#include "store_migrate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEDUP_LEN (1 + DIGEST_BYTES + 8)   /* store.h: dedup record v1 */

static MDB_val id_val(const uint8_t id[IDS_BYTES])
{
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)id};
    return k;
}

#define FORMAT1_MAGIC 0x31464d52u
struct msg_format1 {
    uint8_t id[IDS_BYTES];
    uint8_t referral_id[IDS_BYTES];
    uint8_t content_digest[DIGEST_BYTES];
    uint8_t state;
    uint8_t urgency;
    uint8_t payload_kind;
    uint8_t pad;
    uint32_t attempts;
    uint64_t seq;
    uint64_t created_at_ms;
    uint64_t expires_at_ms;
    uint64_t updated_at_ms;
    uint64_t due_at_ms;
    char recipient[IDS_NAME_MAX + 1];
    char sender[IDS_NAME_MAX + 1];
};
_Static_assert(sizeof(struct msg_format1) == 248, "format 1's message record was 248 bytes");

static bool format1_magic(const uint8_t *p, size_t len)
{
    uint32_t magic;
    if (len < sizeof magic)
        return false;
    memcpy(&magic, p, sizeof magic);
    return magic == FORMAT1_MAGIC;
}

/* Rewrite the value at the cursor's position as out (len bytes). The key
 * is copied first: k points into the map, and a value of another size
 * makes LMDB move the node (it would read the key from a page it is
 * rewriting). */
static store_err rewrite_current(MDB_cursor *c, const MDB_val *k, const void *out, size_t len)
{
    uint8_t key[512];
    if (k->mv_size > sizeof key)
        return STORE_CORRUPT;
    memcpy(key, k->mv_data, k->mv_size);
    MDB_val kc = {.mv_size = k->mv_size, .mv_data = key};
    MDB_val v = {.mv_size = len, .mv_data = (void *)(uintptr_t)out};
    return store_err_from_mdb(mdb_cursor_put(c, &kc, &v, MDB_CURRENT));
}

/* Call convert for every record of which; a record it cannot convert
 * (returns false) is set aside afterwards with why. */
typedef bool (*convert_fn)(const uint8_t *val, size_t len, uint8_t **out, size_t *out_len,
                           char *why, size_t why_len);

static store_err migrate_db(store *s, MDB_txn *txn, store_db which, convert_fn convert,
                            size_t *converted, size_t *set_aside)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, store_dbi(s, which), &c);
    if (rc != 0)
        return store_err_from_mdb(rc);
    uint8_t (*bad_keys)[IDS_BYTES + 8 + 1 + IDS_NAME_MAX + 1] = NULL;
    size_t n_bad = 0;
    store_err e = STORE_OK;
    MDB_val k, v;
    char why[120] = "";
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && e == STORE_OK;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint8_t *out = NULL;
        size_t out_len = 0;
        if (convert(v.mv_data, v.mv_size, &out, &out_len, why, sizeof why)) {
            e = out == NULL ? STORE_FAILED : rewrite_current(c, &k, out, out_len);
            (*converted)++;
        } else if (k.mv_size <= sizeof *bad_keys) {
            void *p = realloc(bad_keys, (n_bad + 1) * sizeof *bad_keys);
            if (p == NULL) {
                e = STORE_FAILED;
            } else {
                bad_keys = p;
                memset(bad_keys[n_bad], 0, sizeof *bad_keys);
                bad_keys[n_bad][0] = (uint8_t)k.mv_size;
                memcpy(bad_keys[n_bad] + 1, k.mv_data, k.mv_size);
                n_bad++;
            }
        }
        free(out);
    }
    mdb_cursor_close(c);
    if (e == STORE_OK && rc != MDB_NOTFOUND)
        e = store_err_from_mdb(rc);
    for (size_t i = 0; e == STORE_OK && i < n_bad; i++) {
        e = store_set_aside(s, txn, which, bad_keys[i] + 1, bad_keys[i][0],
                            "format 1 record that does not convert");
        (*set_aside)++;
    }
    free(bad_keys);
    return e;
}

static bool convert_msg(const uint8_t *val, size_t len, uint8_t **out, size_t *out_len,
                        char *why, size_t why_len)
{
    struct msg_format1 old;
    if (len != 4 + sizeof old || !format1_magic(val, len)) {
        snprintf(why, why_len, "not a format 1 message record");
        return false;
    }
    memcpy(&old, val + 4, sizeof old);
    store_msg m;
    memset(&m, 0, sizeof m);
    memcpy(m.id, old.id, IDS_BYTES);
    memcpy(m.referral_id, old.referral_id, IDS_BYTES);
    memcpy(m.content_digest, old.content_digest, DIGEST_BYTES);
    m.state = old.state;
    m.urgency = old.urgency;
    m.payload_kind = old.payload_kind;
    m.attempts = old.attempts;
    m.seq = old.seq;
    m.created_at_ms = old.created_at_ms;
    m.expires_at_ms = old.expires_at_ms;
    m.updated_at_ms = old.updated_at_ms;
    m.due_at_ms = old.due_at_ms;
    memcpy(m.recipient, old.recipient, IDS_NAME_MAX);
    memcpy(m.sender, old.sender, IDS_NAME_MAX);
    *out = malloc(STORE_MSG_RECORD_MAX);
    if (*out == NULL)
        return true;   /* reported as STORE_FAILED */
    *out_len = store_msg_encode(&m, *out);
    store_msg check;
    if (!store_msg_decode(*out, *out_len, &check, why, why_len)) {
        free(*out);
        *out = NULL;
        return false;
    }
    return true;
}

static bool convert_body(const uint8_t *val, size_t len, uint8_t **out, size_t *out_len,
                         char *why, size_t why_len)
{
    if (len < 4 + DIGEST_BYTES || !format1_magic(val, len)) {
        snprintf(why, why_len, "not a format 1 body");
        return false;
    }
    *out_len = len - 3;
    *out = malloc(*out_len);
    if (*out != NULL) {
        (*out)[0] = STORE_RECORD_V1;
        memcpy(*out + 1, val + 4, len - 4);
    }
    return true;
}

static bool convert_dedup(const uint8_t *val, size_t len, uint8_t **out, size_t *out_len,
                          char *why, size_t why_len)
{
    uint64_t forget_at;
    if (len != DIGEST_BYTES + sizeof forget_at) {
        snprintf(why, why_len, "not a format 1 dedup entry");
        return false;
    }
    memcpy(&forget_at, val + DIGEST_BYTES, sizeof forget_at);
    *out_len = DEDUP_LEN;
    *out = malloc(DEDUP_LEN);
    if (*out != NULL) {
        (*out)[0] = STORE_RECORD_V1;
        memcpy(*out + 1, val, DIGEST_BYTES);
        store_put_u64(*out + 1 + DIGEST_BYTES, forget_at);
    }
    return true;
}

static bool convert_inflight(const uint8_t *val, size_t len, uint8_t **out, size_t *out_len,
                             char *why, size_t why_len)
{
    uint64_t due;
    if (len != sizeof due) {
        snprintf(why, why_len, "not a format 1 inflight entry");
        return false;
    }
    memcpy(&due, val, sizeof due);
    *out_len = 9;
    *out = malloc(9);
    if (*out != NULL) {
        (*out)[0] = STORE_RECORD_V1;
        store_put_u64(*out + 1, due);
    }
    return true;
}

static bool convert_queue(const uint8_t *val, size_t len, uint8_t **out, size_t *out_len,
                          char *why, size_t why_len)
{
    if (len != IDS_BYTES) {
        snprintf(why, why_len, "not a format 1 queue entry");
        return false;
    }
    *out_len = 1 + IDS_BYTES;
    *out = malloc(1 + IDS_BYTES);
    if (*out != NULL) {
        (*out)[0] = STORE_RECORD_V1;
        memcpy(*out + 1, val, IDS_BYTES);
    }
    return true;
}

static bool convert_deadline(const uint8_t *val, size_t len, uint8_t **out, size_t *out_len,
                             char *why, size_t why_len)
{
    (void)val;
    if (len != 0) {
        snprintf(why, why_len, "not a format 1 deadline");
        return false;
    }
    *out_len = 1;
    *out = malloc(1);
    if (*out != NULL)
        (*out)[0] = STORE_RECORD_V1;
    return true;
}

/* Format 1 quarantine: bare id -> format 1 body. Now: STORE_DB_BODIES, id
 * -> quarantine record holding the body in format 2. Keys change, so the
 * ids are collected first. */
static store_err migrate_quarantine(store *s, MDB_txn *txn, size_t *count)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, store_dbi(s, STORE_DB_QUARANTINE), &c);
    if (rc != 0)
        return store_err_from_mdb(rc);
    uint8_t (*ids)[IDS_BYTES] = NULL;
    size_t n = 0;
    store_err e = STORE_OK;
    MDB_val k, v;
    while (e == STORE_OK && (rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
        if (k.mv_size != IDS_BYTES)
            continue;
        void *p = realloc(ids, (n + 1) * IDS_BYTES);
        if (p == NULL) {
            e = STORE_FAILED;
            break;
        }
        ids = p;
        memcpy(ids[n++], k.mv_data, IDS_BYTES);
    }
    mdb_cursor_close(c);
    for (size_t i = 0; e == STORE_OK && i < n; i++) {
        k = id_val(ids[i]);
        rc = mdb_get(txn, store_dbi(s, STORE_DB_QUARANTINE), &k, &v);
        if (rc != 0) {
            e = store_err_from_mdb(rc);
            break;
        }
        uint8_t *body = NULL;
        size_t body_len = v.mv_size;
        char why[80];
        bool is_body = convert_body(v.mv_data, v.mv_size, &body, &body_len, why, sizeof why);
        if (is_body && body == NULL) {
            e = STORE_FAILED;
            break;
        }
        if (!is_body) {   /* kept as it was, behind the reason */
            body = malloc(v.mv_size > 0 ? v.mv_size : 1);
            if (body == NULL) {
                e = STORE_FAILED;
                break;
            }
            memcpy(body, v.mv_data, v.mv_size);
        }
        /* Put the converted body back under bodies for a moment, then move
         * it with the format 2 quarantine record. */
        MDB_val bk = id_val(ids[i]), bv = {.mv_size = body_len, .mv_data = body};
        rc = mdb_del(txn, store_dbi(s, STORE_DB_QUARANTINE), &k, NULL);
        MDB_val old_body;
        bool had_body = rc == 0 && mdb_get(txn, store_dbi(s, STORE_DB_BODIES), &bk, &old_body) == 0;
        if (rc == 0 && !had_body)
            rc = mdb_put(txn, store_dbi(s, STORE_DB_BODIES), &bk, &bv, 0);
        free(body);
        if (rc != 0) {
            e = store_err_from_mdb(rc);
            break;
        }
        if (had_body)
            continue;   /* never overwrite a live body; the old copy is dropped */
        e = is_body ? store_quarantine(s, txn, ids[i])
                    : store_set_aside(s, txn, STORE_DB_BODIES, ids[i], IDS_BYTES,
                                      "format 1 quarantine record that does not convert");
        (*count)++;
    }
    free(ids);
    if (e == STORE_OK && rc != 0 && rc != MDB_NOTFOUND)
        e = store_err_from_mdb(rc);
    return e;
}

/* Meta numbers were host-order u64 in format 1. */
static store_err migrate_meta(store *s, MDB_txn *txn)
{
    static const char *const u64_keys[] = {"seq", "directory_version", "set_aside"};
    for (size_t i = 0; i < sizeof u64_keys / sizeof u64_keys[0]; i++) {
        uint8_t v[8];
        size_t len = sizeof v;
        store_err e = store_meta_get_bytes(s, txn, u64_keys[i], v, &len);
        if (e == STORE_NOT_FOUND)
            continue;
        if (e != STORE_OK)
            return e;
        uint64_t n;
        if (len != sizeof n)
            return STORE_CORRUPT;
        memcpy(&n, v, sizeof n);
        e = store_meta_put_u64(s, txn, u64_keys[i], n);
        if (e != STORE_OK)
            return e;
    }
    return STORE_OK;
}

store_err store_migrate_from_1(store *s, MDB_txn *txn, store_migration_counts *n)
{
    store_err e = migrate_meta(s, txn);
    if (e == STORE_OK)
        e = migrate_db(s, txn, STORE_DB_MSGS, convert_msg, &n->msgs, &n->set_aside);
    if (e == STORE_OK)
        e = migrate_quarantine(s, txn, &n->quarantine);   /* before bodies: it uses them */
    if (e == STORE_OK)
        e = migrate_db(s, txn, STORE_DB_BODIES, convert_body, &n->bodies, &n->set_aside);
    if (e == STORE_OK)
        e = migrate_db(s, txn, STORE_DB_QUEUE, convert_queue, &n->queue, &n->set_aside);
    if (e == STORE_OK)
        e = migrate_db(s, txn, STORE_DB_INFLIGHT, convert_inflight, &n->inflight,
                       &n->set_aside);
    if (e == STORE_OK)
        e = migrate_db(s, txn, STORE_DB_DEDUP, convert_dedup, &n->dedup, &n->set_aside);
    if (e == STORE_OK)
        e = migrate_db(s, txn, STORE_DB_DEADLINES, convert_deadline, &n->deadlines,
                       &n->set_aside);
    return e;
}
