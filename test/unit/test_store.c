/*
 * Unit tests of broker/store.c and store_migrate.c on a temporary LMDB:
 * every record kind put, read and deleted; the encodings round trip and
 * are big-endian with a version byte first; corrupt and unknown records
 * are refused or set aside; a store written as format 1 (raw structs, as
 * the release before versioned records wrote it) migrates at open; a newer
 * or unknown format is refused; room accounting (store_reserve).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker_fixture.h"
#include "deadline.h"
#include "queue.h"

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    fixture_open(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    fixture_close(f);
    free(f);
    return 0;
}

static void msg_record_round_trips_with_every_field(void **state)
{
    fixture *f = *state;
    store_msg m, back;
    fixture_msg(&m, "qd.youth-league", 4, 0x0102030405060708ull, 0xab);
    m.state = 2;
    m.payload_kind = STORE_PAYLOAD_NOTICE;
    m.attempts = 0xdeadbeef;
    m.due_at_ms = UINT64_MAX - 1;
    memset(m.sender, 'x', IDS_NAME_MAX);   /* the longest name */
    m.sender[IDS_NAME_MAX] = '\0';
    uint8_t rec[STORE_MSG_RECORD_MAX];
    size_t len = store_msg_encode(&m, rec);
    assert_int_equal(len, 112 + 1 + strlen("qd.youth-league") + 1 + IDS_NAME_MAX);
    /* Version first, numbers big-endian at their documented offsets. */
    assert_int_equal(rec[0], STORE_RECORD_V1);
    assert_int_equal(rec[1], 2);
    assert_int_equal(rec[2], 4);
    assert_memory_equal(rec + 68, "\xde\xad\xbe\xef", 4);
    assert_memory_equal(rec + 72, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    assert_int_equal(rec[112], strlen("qd.youth-league"));
    char why[120];
    assert_true(store_msg_decode(rec, len, &back, why, sizeof why));
    assert_memory_equal(&m, &back, sizeof m);

    MDB_txn *txn = fixture_begin(f);
    assert_int_equal(store_msg_put(f->st, txn, &m), STORE_OK);
    memset(&back, 0, sizeof back);
    assert_int_equal(store_msg_get(f->st, txn, m.id, &back), STORE_OK);
    assert_memory_equal(&m, &back, sizeof m);
    fixture_commit(f, txn);
    txn = fixture_begin(f);
    assert_int_equal(store_msg_get(f->st, txn, m.id, &back), STORE_OK);
    assert_int_equal(store_msg_del(f->st, txn, m.id), STORE_OK);
    assert_int_equal(store_msg_get(f->st, txn, m.id, &back), STORE_NOT_FOUND);
    assert_int_equal(store_msg_del(f->st, txn, m.id), STORE_NOT_FOUND);
    fixture_commit(f, txn);
}

static void msg_decoder_refuses_unknown_versions_and_bad_records(void **state)
{
    (void)state;
    store_msg m, back;
    fixture_msg(&m, "qd.police", 2, 7, 1);
    uint8_t rec[STORE_MSG_RECORD_MAX + 1];
    size_t len = store_msg_encode(&m, rec);
    char why[120];
    uint8_t bad[STORE_MSG_RECORD_MAX + 1];

    memcpy(bad, rec, len);
    bad[0] = 2;
    assert_false(store_msg_decode(bad, len, &back, why, sizeof why));
    assert_string_equal(why, "unknown message record version 2");
    bad[0] = 0;
    assert_false(store_msg_decode(bad, len, &back, why, sizeof why));
    assert_false(store_msg_decode(rec, 0, &back, why, sizeof why));
    for (size_t cut = 1; cut < len; cut++)   /* every truncation */
        assert_false(store_msg_decode(rec, cut, &back, why, sizeof why));
    memcpy(bad, rec, len);
    bad[len] = 0;   /* a trailing byte */
    assert_false(store_msg_decode(bad, len + 1, &back, why, sizeof why));
    char expect[64];
    snprintf(expect, sizeof expect, "malformed message record (%zu bytes)", len + 1);
    assert_string_equal(why, expect);
    struct { size_t at; uint8_t v; } fields[] = {
        {1, 0}, {1, 7}, {1, 9}, {2, 0}, {2, 5}, {3, 0}, {3, 4},   /* state, urgency, kind */
        {113, 0},                                          /* a NUL inside a name */
        {112, IDS_NAME_MAX + 1},                           /* a name too long */
        {112, 0},                                          /* an empty recipient */
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        memcpy(bad, rec, len);
        bad[fields[i].at] = fields[i].v;
        assert_false(store_msg_decode(bad, len, &back, why, sizeof why));
    }
    /* The old format's raw struct is no record of this one. */
    uint8_t raw[4 + 248] = {'R', 'M', 'F', '1'};
    assert_false(store_msg_decode(raw, sizeof raw, &back, why, sizeof why));
    assert_string_equal(why, "unknown message record version 82");
}

static void unreadable_msg_record_is_set_aside_with_its_body(void **state)
{
    fixture *f = *state;
    store_msg m;
    fixture_msg(&m, "qd.police", 3, 9, 2);
    MDB_txn *txn = fixture_begin(f);
    assert_int_equal(store_msg_put(f->st, txn, &m), STORE_OK);
    assert_int_equal(store_body_put(f->st, txn, m.id, (const uint8_t *)"body", 4), STORE_OK);
    assert_int_equal(inflight_put(f->st, txn, m.id, 77), STORE_OK);
    uint8_t rec[STORE_MSG_RECORD_MAX];
    size_t len = store_msg_encode(&m, rec);
    rec[0] = 9;   /* a version no release wrote */
    fixture_put_raw(f, txn, STORE_DB_MSGS, m.id, IDS_BYTES, rec, len);
    fixture_commit(f, txn);

    txn = fixture_begin(f);
    assert_int_equal(store_set_aside_count(f->st, txn), 0);
    store_msg back;
    assert_int_equal(store_msg_get(f->st, txn, m.id, &back), STORE_NOT_FOUND);
    assert_int_equal(store_set_aside_count(f->st, txn), 1);
    const uint8_t *payload;
    size_t plen;
    assert_int_equal(store_body_get(f->st, txn, m.id, &payload, &plen), STORE_NOT_FOUND);
    uint64_t due;
    assert_int_equal(inflight_get(f->st, txn, m.id, &due), STORE_NOT_FOUND);
    assert_int_equal(fixture_count(f, txn, STORE_DB_QUARANTINE), 2);
    /* The quarantine record: what | key -> version, time, reason, the value. */
    uint8_t qkey[1 + IDS_BYTES] = {STORE_DB_MSGS};
    memcpy(qkey + 1, m.id, IDS_BYTES);
    MDB_val k = {.mv_size = sizeof qkey, .mv_data = qkey}, v;
    assert_int_equal(mdb_get(txn, store_dbi(f->st, STORE_DB_QUARANTINE), &k, &v), 0);
    const uint8_t *q = v.mv_data;
    const char *reason = "unknown message record version 9";
    assert_int_equal(q[0], STORE_RECORD_V1);
    assert_true(store_get_u64(q + 1) > 0);
    assert_int_equal(q[9], strlen(reason));
    assert_memory_equal(q + 10, reason, strlen(reason));
    assert_int_equal(v.mv_size, 10 + strlen(reason) + len);
    assert_memory_equal(q + 10 + strlen(reason), rec, len);   /* kept exactly */
    /* Asked again: simply not there, counted once. */
    assert_int_equal(store_msg_get(f->st, txn, m.id, &back), STORE_NOT_FOUND);
    assert_int_equal(store_set_aside_count(f->st, txn), 1);
    fixture_commit(f, txn);
}

static void body_round_trips_and_a_damaged_one_is_corrupt(void **state)
{
    fixture *f = *state;
    uint8_t id[IDS_BYTES] = {3}, payload[1000];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)(i * 7);
    MDB_txn *txn = fixture_begin(f);
    assert_int_equal(store_body_put(f->st, txn, id, payload, sizeof payload), STORE_OK);
    const uint8_t *got;
    size_t len;
    assert_int_equal(store_body_get(f->st, txn, id, &got, &len), STORE_OK);
    assert_int_equal(len, sizeof payload);
    assert_memory_equal(got, payload, len);
    /* The head: version, then the SHA-256 of the payload. */
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = id}, v;
    assert_int_equal(mdb_get(txn, store_dbi(f->st, STORE_DB_BODIES), &k, &v), 0);
    uint8_t digest[DIGEST_BYTES], raw[1 + DIGEST_BYTES + sizeof payload];
    assert_true(digest_sha256(payload, sizeof payload, digest));
    assert_int_equal(v.mv_size, sizeof raw);
    memcpy(raw, v.mv_data, sizeof raw);
    assert_int_equal(raw[0], STORE_RECORD_V1);
    assert_memory_equal(raw + 1, digest, DIGEST_BYTES);

    raw[100] ^= 1;   /* a flipped bit in the payload */
    fixture_put_raw(f, txn, STORE_DB_BODIES, id, IDS_BYTES, raw, sizeof raw);
    assert_int_equal(store_body_get(f->st, txn, id, &got, &len), STORE_CORRUPT);
    raw[100] ^= 1;
    raw[0] = 2;      /* an unknown version */
    fixture_put_raw(f, txn, STORE_DB_BODIES, id, IDS_BYTES, raw, sizeof raw);
    assert_int_equal(store_body_get(f->st, txn, id, &got, &len), STORE_CORRUPT);
    fixture_put_raw(f, txn, STORE_DB_BODIES, id, IDS_BYTES, raw, 10);   /* too short */
    assert_int_equal(store_body_get(f->st, txn, id, &got, &len), STORE_CORRUPT);

    assert_int_equal(store_quarantine(f->st, txn, id), STORE_OK);
    assert_int_equal(store_body_get(f->st, txn, id, &got, &len), STORE_NOT_FOUND);
    assert_int_equal(store_quarantine(f->st, txn, id), STORE_NOT_FOUND);
    assert_int_equal(fixture_count(f, txn, STORE_DB_QUARANTINE), 1);
    assert_int_equal(store_body_del(f->st, txn, id), STORE_NOT_FOUND);
    fixture_commit(f, txn);
}

static void dedup_round_trips_and_an_unreadable_entry_is_corrupt(void **state)
{
    fixture *f = *state;
    uint8_t id[IDS_BYTES] = {4}, digest[DIGEST_BYTES], got[DIGEST_BYTES];
    memset(digest, 0x42, sizeof digest);
    MDB_txn *txn = fixture_begin(f);
    assert_int_equal(store_dedup_get(f->st, txn, id, got), STORE_NOT_FOUND);
    assert_int_equal(store_dedup_put(f->st, txn, id, digest, 0x1122334455667788ull), STORE_OK);
    assert_int_equal(store_dedup_get(f->st, txn, id, got), STORE_OK);
    assert_memory_equal(got, digest, DIGEST_BYTES);
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = id}, v;
    assert_int_equal(mdb_get(txn, store_dbi(f->st, STORE_DB_DEDUP), &k, &v), 0);
    assert_int_equal(v.mv_size, 1 + DIGEST_BYTES + 8);
    uint8_t raw[1 + DIGEST_BYTES + 8];
    memcpy(raw, v.mv_data, sizeof raw);
    assert_int_equal(raw[0], STORE_RECORD_V1);
    assert_memory_equal(raw + 1 + DIGEST_BYTES, "\x11\x22\x33\x44\x55\x66\x77\x88", 8);
    raw[0] = 3;
    fixture_put_raw(f, txn, STORE_DB_DEDUP, id, IDS_BYTES, raw, sizeof raw);
    assert_int_equal(store_dedup_get(f->st, txn, id, got), STORE_CORRUPT);
    fixture_put_raw(f, txn, STORE_DB_DEDUP, id, IDS_BYTES, raw + 1, DIGEST_BYTES + 8);
    assert_int_equal(store_dedup_get(f->st, txn, id, got), STORE_CORRUPT);
    /* Kept (it guards against a replay) until forgotten. */
    assert_int_equal(store_dedup_del(f->st, txn, id), STORE_OK);
    assert_int_equal(store_dedup_get(f->st, txn, id, got), STORE_NOT_FOUND);
    fixture_commit(f, txn);
}

static void meta_numbers_are_big_endian_and_seq_counts(void **state)
{
    fixture *f = *state;
    MDB_txn *txn = fixture_begin(f);
    uint64_t n;
    assert_int_equal(store_meta_get_u64(f->st, txn, "directory_version", &n), STORE_NOT_FOUND);
    assert_int_equal(store_meta_put_u64(f->st, txn, "directory_version", 0x0a0b), STORE_OK);
    uint8_t raw[16];
    size_t len = sizeof raw;
    assert_int_equal(store_meta_get_bytes(f->st, txn, "directory_version", raw, &len), STORE_OK);
    assert_int_equal(len, 8);
    assert_memory_equal(raw, "\0\0\0\0\0\0\x0a\x0b", 8);
    assert_int_equal(store_meta_get_u64(f->st, txn, "directory_version", &n), STORE_OK);
    assert_int_equal(n, 0x0a0b);
    uint64_t a, b;
    assert_int_equal(store_next_seq(f->st, txn, &a), STORE_OK);
    assert_int_equal(store_next_seq(f->st, txn, &b), STORE_OK);
    assert_int_equal(b, a + 1);
    len = sizeof raw;
    assert_int_equal(store_meta_get_bytes(f->st, txn, "format", raw, &len), STORE_OK);
    assert_int_equal(len, 1);
    assert_int_equal(raw[0], '0' + STORE_FORMAT_CURRENT);
    /* A counter that does not decode is never silently restarted at 1. */
    assert_int_equal(store_meta_put_bytes(f->st, txn, "seq", raw, 3), STORE_OK);
    assert_int_equal(store_next_seq(f->st, txn, &a), STORE_CORRUPT);
    mdb_txn_abort(txn);
}

static void referral_and_level_records_round_trip(void **state)
{
    fixture *f = *state;
    uint8_t rid[IDS_BYTES] = {5}, mid[IDS_BYTES] = {6};
    store_referral r, back;
    memset(&r, 0, sizeof r);
    snprintf(r.sender, sizeof r.sender, "sh.12355.desk");
    r.n_addressed = STORE_REFERRAL_MAX;
    for (size_t i = 0; i < r.n_addressed; i++)
        snprintf(r.addressed[i], sizeof r.addressed[i], "qd.agency-%zu", i);
    MDB_txn *txn = fixture_begin(f);
    assert_int_equal(store_referral_get(f->st, txn, rid, &back), STORE_NOT_FOUND);
    assert_int_equal(store_referral_put(f->st, txn, rid, &r), STORE_OK);
    assert_int_equal(store_referral_get(f->st, txn, rid, &back), STORE_OK);
    assert_memory_equal(&r, &back, sizeof r);
    assert_true(store_referral_names(&back, "qd.agency-32", false));
    assert_false(store_referral_names(&back, "sh.12355.desk", false));
    assert_true(store_referral_names(&back, "sh.12355.desk", true));
    uint8_t junk[3] = {7, 1, 0};
    fixture_put_raw(f, txn, STORE_DB_REFERRALS, rid, IDS_BYTES, junk, sizeof junk);
    assert_int_equal(store_referral_get(f->st, txn, rid, &back), STORE_CORRUPT);
    uint32_t level;
    assert_int_equal(store_level_get(f->st, txn, mid, "qd.police", &level), STORE_OK);
    assert_int_equal(level, 0);
    assert_int_equal(store_level_put(f->st, txn, mid, "qd.police", 5), STORE_OK);
    assert_int_equal(store_level_get(f->st, txn, mid, "qd.police", &level), STORE_OK);
    assert_int_equal(level, 5);
    assert_int_equal(store_level_get(f->st, txn, mid, "qd.school", &level), STORE_OK);
    assert_int_equal(level, 0);
    fixture_commit(f, txn);
}

/* ---- format 1, written as the release before versioned records did ----- */

/* broker/store.h's store_msg as of commit 698cd3b: stored raw, in host
 * order, after the 4-byte host-order magic "RMF1". */
struct old_msg {
    uint8_t id[16], referral_id[16], content_digest[32];
    uint8_t state, urgency, payload_kind, pad;
    uint32_t attempts;
    uint64_t seq, created_at_ms, expires_at_ms, updated_at_ms, due_at_ms;
    char recipient[65], sender[65];
};
#define OLD_MAGIC 0x31464d52u

typedef struct {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta, msgs, bodies, queue, inflight, dedup, deadlines, quarantine, trace;
} old_store;

static void old_put(old_store *o, MDB_dbi dbi, const void *k, size_t kl, const void *v, size_t vl)
{
    MDB_val key = {.mv_size = kl, .mv_data = (void *)(uintptr_t)k};
    MDB_val val = {.mv_size = vl, .mv_data = (void *)(uintptr_t)v};
    assert_int_equal(mdb_put(o->txn, dbi, &key, &val, 0), 0);
}

static void old_open(old_store *o, const char *dir)
{
    assert_int_equal(mdb_env_create(&o->env), 0);
    assert_int_equal(mdb_env_set_maxdbs(o->env, 13), 0);
    assert_int_equal(mdb_env_set_mapsize(o->env, 256ull << 20), 0);
    assert_int_equal(mdb_env_open(o->env, dir, MDB_NOTLS, 0600), 0);
    assert_int_equal(mdb_txn_begin(o->env, NULL, 0, &o->txn), 0);
    const char *names[] = {"meta", "msgs", "bodies", "queue", "inflight", "dedup", "deadlines",
                           "quarantine", "trace"};
    MDB_dbi *dbis[] = {&o->meta, &o->msgs, &o->bodies, &o->queue, &o->inflight, &o->dedup,
                       &o->deadlines, &o->quarantine, &o->trace};
    for (size_t i = 0; i < 9; i++)
        assert_int_equal(mdb_dbi_open(o->txn, names[i], MDB_CREATE, dbis[i]), 0);
    old_put(o, o->meta, "format", 6, "1", 1);
    old_put(o, o->meta, "broker_id", 9, "broker.test", 11);
    char marker[600];
    snprintf(marker, sizeof marker, "%s/STORE", dir);
    FILE *fp = fopen(marker, "w");
    assert_non_null(fp);
    fprintf(fp, "referral store format 1 of broker broker.test\n");
    fclose(fp);
}

static void old_close(old_store *o, uint64_t next_seq)
{
    old_put(o, o->meta, "seq", 3, &next_seq, sizeof next_seq);   /* host order */
    assert_int_equal(mdb_txn_commit(o->txn), 0);
    mdb_env_close(o->env);
}

static void old_body(old_store *o, MDB_dbi dbi, const uint8_t id[16], const uint8_t *p, size_t n)
{
    uint8_t *rec = malloc(4 + DIGEST_BYTES + n);
    assert_non_null(rec);
    uint32_t magic = OLD_MAGIC;
    memcpy(rec, &magic, 4);
    assert_true(digest_sha256(p, n, rec + 4));
    memcpy(rec + 4 + DIGEST_BYTES, p, n);
    old_put(o, dbi, id, 16, rec, 4 + DIGEST_BYTES + n);
    free(rec);
}

static void old_deadline(old_store *o, uint64_t due, uint8_t kind, const uint8_t id[16])
{
    uint8_t key[25];
    store_put_u64(key, due);
    key[8] = kind;
    memcpy(key + 9, id, 16);
    old_put(o, o->deadlines, key, sizeof key, "", 0);
}

/* One queued (or in-flight) message as release 698cd3b stored it. */
static void old_message(old_store *o, const char *to, uint8_t urgency, uint64_t seq,
                        bool is_in_flight)
{
    struct old_msg m;
    memset(&m, 0, sizeof m);
    store_put_u64(m.id, 0x0100000000000000ull | seq);
    store_put_u64(m.id + 8, seq * 31);
    memset(m.referral_id, 0x77, 16);
    memcpy(m.referral_id, m.id, 8);
    memset(m.content_digest, (int)(seq & 0xff), 32);
    m.state = is_in_flight ? 2 : 1;
    m.urgency = urgency;
    m.payload_kind = 1;
    m.attempts = is_in_flight ? 1 : 0;
    m.seq = seq;
    m.created_at_ms = 1700000000000ull + seq;
    m.expires_at_ms = m.created_at_ms + 3600000;
    m.updated_at_ms = m.created_at_ms;
    m.due_at_ms = is_in_flight ? m.created_at_ms + 30000 : 0;
    snprintf(m.recipient, sizeof m.recipient, "%s", to);
    snprintf(m.sender, sizeof m.sender, "sh.12355.desk");
    uint8_t rec[4 + sizeof m];
    uint32_t magic = OLD_MAGIC;
    memcpy(rec, &magic, 4);
    memcpy(rec + 4, &m, sizeof m);
    old_put(o, o->msgs, m.id, 16, rec, sizeof rec);
    char body[64];
    int n = snprintf(body, sizeof body, "envelope of message %llu", (unsigned long long)seq);
    old_body(o, o->bodies, m.id, (const uint8_t *)body, (size_t)n);
    uint8_t dd[32 + 8];
    uint64_t forget = m.expires_at_ms + 300000;
    memcpy(dd, m.content_digest, 32);
    memcpy(dd + 32, &forget, 8);
    old_put(o, o->dedup, m.id, 16, dd, sizeof dd);
    old_deadline(o, m.expires_at_ms, 2, m.id);
    old_deadline(o, forget, 3, m.id);
    if (is_in_flight) {
        old_put(o, o->inflight, m.id, 16, &m.due_at_ms, 8);
        old_deadline(o, m.due_at_ms, 1, m.id);
        return;
    }
    uint8_t qkey[80];
    size_t tl = strlen(to);
    memcpy(qkey, to, tl);
    qkey[tl] = 0;
    qkey[tl + 1] = (uint8_t)(4 - urgency);
    store_put_u64(qkey + tl + 2, seq);
    old_put(o, o->queue, qkey, tl + 10, m.id, 16);
}

static void format1_store_is_migrated_at_open(void **state)
{
    fixture *f = *state;
    store_destroy(&f->st);
    char path[600];
    snprintf(path, sizeof path, "%s/data.mdb", f->dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/lock.mdb", f->dir);
    unlink(path);

    old_store o;
    old_open(&o, f->dir);
    old_message(&o, "qd.police", 1, 1, false);
    old_message(&o, "qd.police", 4, 2, false);
    old_message(&o, "qd.police", 3, 3, false);
    old_message(&o, "qd.school", 2, 4, true);
    uint8_t qid[16] = {9, 9};   /* a body quarantined by the old release */
    old_body(&o, o.quarantine, qid, (const uint8_t *)"damaged", 7);
    uint8_t badid[16] = {8};    /* a record of neither format: set aside */
    old_put(&o, o.msgs, badid, 16, "junk", 4);
    uint64_t old_version = 3;
    old_put(&o, o.meta, "directory_version", 17, &old_version, 8);
    old_close(&o, 5);

    char why[600];
    store_err e = fixture_reopen(f, why, sizeof why);
    if (e != STORE_OK)
        fail_msg("open of a format 1 store: %s", why);
    MDB_txn *txn = fixture_begin(f);
    uint8_t fmt[8];
    size_t len = sizeof fmt;
    assert_int_equal(store_meta_get_bytes(f->st, txn, "format", fmt, &len), STORE_OK);
    assert_memory_equal(fmt, "2", 1);
    uint64_t n;
    assert_int_equal(store_meta_get_u64(f->st, txn, "directory_version", &n), STORE_OK);
    assert_int_equal(n, 3);
    assert_int_equal(store_next_seq(f->st, txn, &n), STORE_OK);
    assert_int_equal(n, 5);
    /* Queue order kept: crisis, urgent, routine. */
    uint64_t want[] = {2, 3, 1};
    for (size_t i = 0; i < 3; i++) {
        uint8_t id[IDS_BYTES];
        store_msg m;
        assert_int_equal(queue_head(f->st, txn, "qd.police", id), STORE_OK);
        assert_int_equal(store_msg_get(f->st, txn, id, &m), STORE_OK);
        assert_int_equal(m.seq, want[i]);
        assert_int_equal(m.state, 1);
        assert_int_equal(m.created_at_ms, 1700000000000ull + want[i]);
        assert_string_equal(m.recipient, "qd.police");
        assert_string_equal(m.sender, "sh.12355.desk");
        const uint8_t *body;
        size_t blen;
        char expect[64];
        snprintf(expect, sizeof expect, "envelope of message %llu", (unsigned long long)m.seq);
        assert_int_equal(store_body_get(f->st, txn, id, &body, &blen), STORE_OK);
        assert_int_equal(blen, strlen(expect));
        assert_memory_equal(body, expect, blen);
        uint8_t digest[DIGEST_BYTES];
        assert_int_equal(store_dedup_get(f->st, txn, id, digest), STORE_OK);
        assert_int_equal(digest[0], (uint8_t)m.seq);
        assert_int_equal(queue_remove(f->st, txn, &m), STORE_OK);
    }
    /* The in-flight one, with its return due time. */
    uint8_t fid[IDS_BYTES];
    store_put_u64(fid, 0x0100000000000000ull | 4);
    store_put_u64(fid + 8, 4 * 31);
    uint64_t due;
    assert_int_equal(inflight_get(f->st, txn, fid, &due), STORE_OK);
    assert_int_equal(due, 1700000000000ull + 4 + 30000);
    /* Deadlines: earliest first, every one readable. */
    uint64_t at;
    deadline_kind kind;
    uint8_t id[IDS_BYTES];
    assert_int_equal(deadline_pop(f->st, txn, UINT64_MAX, &at, &kind, id), STORE_OK);
    assert_int_equal(at, 1700000000000ull + 4 + 30000);
    assert_int_equal(kind, DEADLINE_RETURN);
    assert_memory_equal(id, fid, IDS_BYTES);
    size_t popped = 1;
    while (deadline_pop(f->st, txn, UINT64_MAX, &at, &kind, id) == STORE_OK)
        popped++;
    assert_int_equal(popped, 9);
    /* The old quarantine kept under the new layout; the junk set aside. */
    uint8_t qkey[1 + IDS_BYTES] = {STORE_DB_BODIES};
    memcpy(qkey + 1, qid, IDS_BYTES);
    MDB_val k = {.mv_size = sizeof qkey, .mv_data = qkey}, v;
    assert_int_equal(mdb_get(txn, store_dbi(f->st, STORE_DB_QUARANTINE), &k, &v), 0);
    assert_int_equal(((const uint8_t *)v.mv_data)[0], STORE_RECORD_V1);
    store_msg m;
    assert_int_equal(store_msg_get(f->st, txn, badid, &m), STORE_NOT_FOUND);
    assert_int_equal(store_set_aside_count(f->st, txn), 1);
    assert_int_equal(fixture_count(f, txn, STORE_DB_QUARANTINE), 2);
    /* Referrals recorded from the migrated messages. */
    store_referral r;
    assert_int_equal(queue_head(f->st, txn, "qd.police", id), STORE_NOT_FOUND);
    assert_int_equal(store_msg_get(f->st, txn, fid, &m), STORE_OK);
    assert_int_equal(store_referral_get(f->st, txn, m.referral_id, &r), STORE_OK);
    assert_string_equal(r.addressed[0], "qd.school");
    mdb_txn_abort(txn);

    /* Opened again: format 2 as it is. */
    assert_int_equal(fixture_reopen(f, why, sizeof why), STORE_OK);
    snprintf(path, sizeof path, "%s/STORE", f->dir);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char line[200] = "";
    assert_non_null(fgets(line, sizeof line, fp));
    fclose(fp);
    assert_non_null(strstr(line, "format 2"));
}

static void format1_migration_of_many_records_is_measured(void **state)
{
    fixture *f = *state;
    store_destroy(&f->st);
    char path[600];
    snprintf(path, sizeof path, "%s/data.mdb", f->dir);
    unlink(path);
    const char *env = getenv("REFERRAL_MIGRATION_RECORDS");
    size_t count = env != NULL ? strtoul(env, NULL, 10) : 10000;
    old_store o;
    old_open(&o, f->dir);
    for (size_t i = 1; i <= count; i++)
        old_message(&o, i % 2 ? "qd.police" : "qd.school", (uint8_t)(1 + i % 4), i, i % 10 == 0);
    old_close(&o, count + 1);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char why[600];
    store_err e = fixture_reopen(f, why, sizeof why);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (e != STORE_OK)
        fail_msg("open: %s", why);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("# migrated %zu format 1 messages (with bodies, dedup, deadlines, queue and "
           "inflight entries) at open in %.0f ms\n", count, ms);
    MDB_txn *txn = fixture_begin(f);
    assert_int_equal(fixture_count(f, txn, STORE_DB_MSGS), count);
    assert_int_equal(fixture_count(f, txn, STORE_DB_QUEUE), count - count / 10);
    assert_int_equal(store_set_aside_count(f->st, txn), 0);
    mdb_txn_abort(txn);
}

static void newer_or_unknown_format_is_refused_untouched(void **state)
{
    fixture *f = *state;
    const char *formats[] = {"3", "12", "x", ""};
    const char *expect[] = {"is of format 3, newer than this referrald",
                            "is of format 12, newer than this referrald",
                            "has no known format", "has no known format"};
    for (size_t i = 0; i < 4; i++) {
        MDB_txn *txn = fixture_begin(f);
        fixture_put_raw(f, txn, STORE_DB_META, "format", 6, formats[i], strlen(formats[i]));
        fixture_commit(f, txn);
        char why[600];
        assert_int_equal(fixture_reopen(f, why, sizeof why), STORE_CORRUPT);
        assert_null(f->st);
        assert_non_null(strstr(why, expect[i]));
        /* Put the format back (raw LMDB: the store refuses to open). */
        MDB_env *env;
        MDB_dbi dbi;
        assert_int_equal(mdb_env_create(&env), 0);
        assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
        assert_int_equal(mdb_env_open(env, f->dir, MDB_NOTLS, 0600), 0);
        assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
        assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
        MDB_val k = {.mv_size = 6, .mv_data = "format"}, v;
        assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
        assert_int_equal(v.mv_size, strlen(formats[i]));   /* never rewritten */
        v.mv_size = 1;
        v.mv_data = "2";
        assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
        assert_int_equal(mdb_txn_commit(txn), 0);
        mdb_env_close(env);
        assert_int_equal(fixture_reopen(f, why, sizeof why), STORE_OK);
    }
}

static void reserve_counts_against_the_high_water_mark(void **state)
{
    fixture *f = *state;
    store_destroy(&f->st);
    f->opt.map_size_bytes = 4ull << 20;
    f->opt.high_water_percent = 50;
    char why[600];
    assert_int_equal(fixture_reopen(f, why, sizeof why), STORE_OK);
    MDB_txn *txn = fixture_begin(f);
    uint64_t used, map;
    store_usage(f->st, &used, &map);
    assert_int_equal(map, 4ull << 20);
    /* Each reservation counts twice its bytes plus a page. */
    uint64_t limit = map / 100 * 50, room = limit - used;
    size_t bytes = 100000, need = 2 * bytes + 4096;
    size_t fits = (size_t)(room / need);
    for (size_t i = 0; i < fits; i++)
        assert_true(store_reserve(f->st, bytes, false, why, sizeof why));
    assert_false(store_reserve(f->st, bytes, false, why, sizeof why));
    assert_non_null(strstr(why, "high-water mark 50%"));
    /* Receipts may use half of the room above the mark. */
    assert_true(store_reserve(f->st, bytes, true, why, sizeof why));
    size_t more = 1;
    while (store_reserve(f->st, bytes, true, why, sizeof why))
        more++;
    uint64_t receipt_room = limit + (map - limit) / 2 - used - fits * need;
    assert_int_equal(more, receipt_room / need);
    mdb_txn_abort(txn);
    /* A new transaction measures again: the reservations are gone. */
    txn = fixture_begin(f);
    assert_true(store_reserve(f->st, bytes, false, why, sizeof why));
    mdb_txn_abort(txn);
}

static void reserve_keeps_the_disk_guard(void **state)
{
    fixture *f = *state;
    store_destroy(&f->st);
    f->opt.min_free_disk_bytes = UINT64_MAX / 4;   /* more than any disk has */
    char why[600];
    assert_int_equal(fixture_reopen(f, why, sizeof why), STORE_OK);
    MDB_txn *txn = fixture_begin(f);
    assert_false(store_reserve(f->st, 10, false, why, sizeof why));
    assert_non_null(strstr(why, "disk low"));
    assert_false(store_reserve(f->st, 10, true, why, sizeof why));
    mdb_txn_abort(txn);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(msg_record_round_trips_with_every_field, setup, teardown),
        cmocka_unit_test(msg_decoder_refuses_unknown_versions_and_bad_records),
        cmocka_unit_test_setup_teardown(unreadable_msg_record_is_set_aside_with_its_body, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(body_round_trips_and_a_damaged_one_is_corrupt, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(dedup_round_trips_and_an_unreadable_entry_is_corrupt,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(meta_numbers_are_big_endian_and_seq_counts, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(referral_and_level_records_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(format1_store_is_migrated_at_open, setup, teardown),
        cmocka_unit_test_setup_teardown(format1_migration_of_many_records_is_measured, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(newer_or_unknown_format_is_refused_untouched, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(reserve_counts_against_the_high_water_mark, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(reserve_keeps_the_disk_guard, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
