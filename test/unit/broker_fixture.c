/*
 * broker_fixture: temporary stores for the broker's unit tests
 * (broker_fixture.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "broker_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void fixture_open(fixture *f)
{
    memset(f, 0, sizeof *f);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/referral-unit-XXXXXX", tmp != NULL ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    f->opt.dir = f->dir;
    f->opt.broker_id = "broker.test";
    f->opt.map_size_bytes = 64ull << 20;
    f->opt.high_water_percent = 90;
    f->opt.min_free_disk_bytes = 0;
    char why[600];
    store_err e = store_open(&f->opt, &f->st, why, sizeof why);
    if (e != STORE_OK)
        fail_msg("store_open: %s", why);
}

store_err fixture_reopen(fixture *f, char *why, size_t why_len)
{
    store_destroy(&f->st);
    return store_open(&f->opt, &f->st, why, why_len);
}

void fixture_close(fixture *f)
{
    store_destroy(&f->st);
    static const char *const files[] = {"data.mdb", "lock.mdb", "STORE"};
    char path[600];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", f->dir, files[i]);
        unlink(path);
    }
    rmdir(f->dir);
}

MDB_txn *fixture_begin(fixture *f)
{
    MDB_txn *txn = NULL;
    assert_int_equal(store_begin(f->st, &txn), STORE_OK);
    return txn;
}

void fixture_commit(fixture *f, MDB_txn *txn)
{
    char why[600];
    store_err e = store_commit(f->st, txn, why, sizeof why);
    if (e != STORE_OK)
        fail_msg("store_commit: %s", why);
}

void fixture_msg(store_msg *m, const char *recipient, uint8_t urgency, uint64_t seq,
                 uint8_t id_byte)
{
    memset(m, 0, sizeof *m);
    memset(m->id, id_byte, IDS_BYTES);
    for (int i = 0; i < 8; i++)
        m->id[IDS_BYTES - 1 - i] = (uint8_t)(seq >> (8 * i));
    memset(m->referral_id, 0x5a, IDS_BYTES);
    memset(m->content_digest, 0xc3, DIGEST_BYTES);
    m->state = 1;
    m->urgency = urgency;
    m->payload_kind = STORE_PAYLOAD_ENVELOPE;
    m->seq = seq;
    m->created_at_ms = 1000;
    m->expires_at_ms = 1000000;
    m->updated_at_ms = 1000;
    snprintf(m->recipient, sizeof m->recipient, "%s", recipient);
    snprintf(m->sender, sizeof m->sender, "sh.12355.desk");
}

void fixture_put_raw(fixture *f, MDB_txn *txn, store_db which, const void *key, size_t key_len,
                     const void *val, size_t val_len)
{
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)(uintptr_t)key};
    MDB_val v = {.mv_size = val_len, .mv_data = (void *)(uintptr_t)val};
    assert_int_equal(mdb_put(txn, store_dbi(f->st, which), &k, &v, 0), 0);
}

size_t fixture_count(fixture *f, MDB_txn *txn, store_db which)
{
    MDB_stat st;
    assert_int_equal(mdb_stat(txn, store_dbi(f->st, which), &st), 0);
    return st.ms_entries;
}
