/*
 * Unit tests of broker/deadline.c on a temporary LMDB: deadlines come out
 * in due order (then kind, then id) whatever order they went in, only when
 * due, each once; a deadline of unknown kind, of an unknown value version
 * or with a malformed key is set aside on the way, never handed out.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "broker_fixture.h"
#include "deadline.h"

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

static void id_of(uint8_t id[IDS_BYTES], uint8_t n)
{
    memset(id, 0, IDS_BYTES);
    id[IDS_BYTES - 1] = n;
}

static void deadlines_come_out_in_due_order_once(void **state)
{
    fixture *f = *state;
    MDB_txn *txn = fixture_begin(f);
    /* Due times out of order, across byte boundaries (big-endian keys). */
    static const uint64_t due[] = {5000, 300, 70000, 256, 255, 1ull << 40, 301, 4096};
    uint8_t id[IDS_BYTES];
    for (size_t i = 0; i < sizeof due / sizeof due[0]; i++) {
        id_of(id, (uint8_t)i);
        assert_int_equal(deadline_put(f->st, txn, due[i], DEADLINE_EXPIRE, id), STORE_OK);
    }
    uint64_t next;
    assert_int_equal(deadline_next(f->st, txn, &next), STORE_OK);
    assert_int_equal(next, 255);
    uint64_t at;
    deadline_kind kind;
    /* Nothing is due before its time. */
    assert_int_equal(deadline_pop(f->st, txn, 254, &at, &kind, id), STORE_NOT_FOUND);
    static const uint64_t want[] = {255, 256, 300, 301, 4096, 5000, 70000};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_int_equal(deadline_pop(f->st, txn, 100000, &at, &kind, id), STORE_OK);
        assert_int_equal(at, want[i]);
        assert_int_equal(kind, DEADLINE_EXPIRE);
    }
    assert_int_equal(deadline_pop(f->st, txn, 100000, &at, &kind, id), STORE_NOT_FOUND);
    assert_int_equal(deadline_next(f->st, txn, &next), STORE_OK);
    assert_int_equal(next, 1ull << 40);
    assert_int_equal(deadline_pop(f->st, txn, UINT64_MAX, &at, &kind, id), STORE_OK);
    assert_int_equal(deadline_next(f->st, txn, &next), STORE_NOT_FOUND);
    fixture_commit(f, txn);
}

static void same_due_time_orders_by_kind_then_id(void **state)
{
    fixture *f = *state;
    MDB_txn *txn = fixture_begin(f);
    uint8_t a[IDS_BYTES], b[IDS_BYTES];
    id_of(a, 1);
    id_of(b, 2);
    assert_int_equal(deadline_put(f->st, txn, 10, DEADLINE_FORGET, a), STORE_OK);
    assert_int_equal(deadline_put(f->st, txn, 10, DEADLINE_RETURN, b), STORE_OK);
    assert_int_equal(deadline_put(f->st, txn, 10, DEADLINE_RETURN, a), STORE_OK);
    assert_int_equal(deadline_put(f->st, txn, 10, DEADLINE_RETURN, a), STORE_OK);   /* same */
    uint64_t at;
    deadline_kind kind;
    uint8_t id[IDS_BYTES];
    assert_int_equal(deadline_pop(f->st, txn, 10, &at, &kind, id), STORE_OK);
    assert_int_equal(kind, DEADLINE_RETURN);
    assert_memory_equal(id, a, IDS_BYTES);
    assert_int_equal(deadline_pop(f->st, txn, 10, &at, &kind, id), STORE_OK);
    assert_int_equal(kind, DEADLINE_RETURN);
    assert_memory_equal(id, b, IDS_BYTES);
    assert_int_equal(deadline_pop(f->st, txn, 10, &at, &kind, id), STORE_OK);
    assert_int_equal(kind, DEADLINE_FORGET);
    assert_int_equal(deadline_pop(f->st, txn, 10, &at, &kind, id), STORE_NOT_FOUND);
    fixture_commit(f, txn);
}

static void deleted_deadline_never_fires(void **state)
{
    fixture *f = *state;
    MDB_txn *txn = fixture_begin(f);
    uint8_t a[IDS_BYTES];
    id_of(a, 1);
    assert_int_equal(deadline_put(f->st, txn, 10, DEADLINE_RETURN, a), STORE_OK);
    assert_int_equal(deadline_del(f->st, txn, 10, DEADLINE_EXPIRE, a), STORE_NOT_FOUND);
    assert_int_equal(deadline_del(f->st, txn, 10, DEADLINE_RETURN, a), STORE_OK);
    uint64_t at;
    deadline_kind kind;
    uint8_t id[IDS_BYTES];
    assert_int_equal(deadline_pop(f->st, txn, 100, &at, &kind, id), STORE_NOT_FOUND);
    fixture_commit(f, txn);
}

static void deadline_is_key_plus_versioned_value(void **state)
{
    fixture *f = *state;
    MDB_txn *txn = fixture_begin(f);
    uint8_t a[IDS_BYTES];
    id_of(a, 7);
    assert_int_equal(deadline_put(f->st, txn, 0x0102, DEADLINE_FORGET, a), STORE_OK);
    uint8_t key[25] = {0, 0, 0, 0, 0, 0, 1, 2, DEADLINE_FORGET};
    memcpy(key + 9, a, IDS_BYTES);
    MDB_val k = {.mv_size = sizeof key, .mv_data = key}, v;
    assert_int_equal(mdb_get(txn, store_dbi(f->st, STORE_DB_DEADLINES), &k, &v), 0);
    assert_int_equal(v.mv_size, 1);
    assert_int_equal(((const uint8_t *)v.mv_data)[0], STORE_RECORD_V1);
    assert_true(deadline_is_known_kind(DEADLINE_RETURN));
    assert_true(deadline_is_known_kind(DEADLINE_FORGET));
    assert_true(deadline_is_known_kind(DEADLINE_BODY));
    assert_false(deadline_is_known_kind(0));
    assert_false(deadline_is_known_kind(5));
    fixture_commit(f, txn);
}

static void unknown_kind_version_or_key_is_set_aside(void **state)
{
    fixture *f = *state;
    MDB_txn *txn = fixture_begin(f);
    uint8_t a[IDS_BYTES];
    id_of(a, 1);
    assert_int_equal(deadline_put(f->st, txn, 50, DEADLINE_EXPIRE, a), STORE_OK);
    /* Earlier ones no release writes: kind 9, kind 0, value version 2, an
     * empty value (format 1's), a short key. */
    uint8_t key[25] = {0, 0, 0, 0, 0, 0, 0, 10, 9};
    memcpy(key + 9, a, IDS_BYTES);
    uint8_t v1[1] = {STORE_RECORD_V1}, v2[1] = {2};
    fixture_put_raw(f, txn, STORE_DB_DEADLINES, key, sizeof key, v1, 1);
    key[7] = 11;
    key[8] = 0;
    fixture_put_raw(f, txn, STORE_DB_DEADLINES, key, sizeof key, v1, 1);
    key[7] = 12;
    key[8] = DEADLINE_RETURN;
    fixture_put_raw(f, txn, STORE_DB_DEADLINES, key, sizeof key, v2, 1);
    key[7] = 13;
    fixture_put_raw(f, txn, STORE_DB_DEADLINES, key, sizeof key, v1, 0);
    key[7] = 14;
    fixture_put_raw(f, txn, STORE_DB_DEADLINES, key, 12, v1, 1);
    fixture_commit(f, txn);

    txn = fixture_begin(f);
    uint64_t next;
    assert_int_equal(deadline_next(f->st, txn, &next), STORE_OK);
    assert_int_equal(next, 50);
    assert_int_equal(store_set_aside_count(f->st, txn), 5);
    assert_int_equal(fixture_count(f, txn, STORE_DB_QUARANTINE), 5);
    assert_int_equal(fixture_count(f, txn, STORE_DB_DEADLINES), 1);
    uint64_t at;
    deadline_kind kind;
    uint8_t id[IDS_BYTES];
    assert_int_equal(deadline_pop(f->st, txn, 100, &at, &kind, id), STORE_OK);
    assert_int_equal(at, 50);
    assert_int_equal(kind, DEADLINE_EXPIRE);
    fixture_commit(f, txn);

    /* pop sets aside on its own too (nothing asked deadline_next first). */
    txn = fixture_begin(f);
    key[7] = 20;
    key[8] = 200;
    fixture_put_raw(f, txn, STORE_DB_DEADLINES, key, sizeof key, v1, 1);
    assert_int_equal(deadline_pop(f->st, txn, 100, &at, &kind, id), STORE_NOT_FOUND);
    assert_int_equal(store_set_aside_count(f->st, txn), 6);
    fixture_commit(f, txn);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(deadlines_come_out_in_due_order_once, setup, teardown),
        cmocka_unit_test_setup_teardown(same_due_time_orders_by_kind_then_id, setup, teardown),
        cmocka_unit_test_setup_teardown(deleted_deadline_never_fires, setup, teardown),
        cmocka_unit_test_setup_teardown(deadline_is_key_plus_versioned_value, setup, teardown),
        cmocka_unit_test_setup_teardown(unknown_kind_version_or_key_is_set_aside, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
