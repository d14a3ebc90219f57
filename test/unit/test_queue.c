/*
 * Unit tests of broker/queue.c on a temporary LMDB: each recipient's queue
 * yields crisis first, then urgent, priority, routine, each oldest first;
 * queues of different recipients never mix; entries that do not decode are
 * set aside; the in-flight set round trips.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "broker_fixture.h"
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

/* Take agency's whole queue in order, storing the seqs in out. */
static size_t drain(fixture *f, MDB_txn *txn, const char *agency, uint64_t *out, size_t cap)
{
    size_t n = 0;
    uint8_t id[IDS_BYTES];
    while (n < cap && queue_head(f->st, txn, agency, id) == STORE_OK) {
        store_msg m;
        assert_int_equal(store_msg_get(f->st, txn, id, &m), STORE_OK);
        out[n++] = m.seq;
        assert_int_equal(queue_remove(f->st, txn, &m), STORE_OK);
    }
    return n;
}

static void push(fixture *f, MDB_txn *txn, const char *to, uint8_t urgency, uint64_t seq)
{
    store_msg m;
    fixture_msg(&m, to, urgency, seq, 1);
    assert_int_equal(store_msg_put(f->st, txn, &m), STORE_OK);
    assert_int_equal(queue_push(f->st, txn, &m), STORE_OK);
}

static void crisis_overtakes_routine_then_oldest_first(void **state)
{
    fixture *f = *state;
    MDB_txn *txn = fixture_begin(f);
    /* Arrival order (seq) with urgencies 1 routine .. 4 crisis. */
    static const uint8_t urgency[] = {1, 2, 1, 4, 3, 1, 4, 2, 3, 1, 4, 1};
    for (size_t i = 0; i < sizeof urgency; i++)
        push(f, txn, "qd.police", urgency[i], 100 + i);
    /* Seqs above 255 and 65535 keep their order (big-endian keys). */
    push(f, txn, "qd.police", 4, 70000);
    push(f, txn, "qd.police", 4, 300);
    assert_int_equal(queue_depth(f->st, txn, "qd.police", 100), sizeof urgency + 2);
    assert_int_equal(queue_depth(f->st, txn, "qd.police", 5), 5);
    uint64_t got[32];
    size_t n = drain(f, txn, "qd.police", got, 32);
    static const uint64_t want[] = {103, 106, 110, 300, 70000,   /* crisis */
                                    104, 108,                    /* urgent */
                                    101, 107,                    /* priority */
                                    100, 102, 105, 109, 111};    /* routine */
    assert_int_equal(n, sizeof want / sizeof want[0]);
    assert_memory_equal(got, want, sizeof want);
    uint8_t id[IDS_BYTES];
    assert_int_equal(queue_head(f->st, txn, "qd.police", id), STORE_NOT_FOUND);
    fixture_commit(f, txn);
}

static void queues_of_recipients_never_mix(void **state)
{
    fixture *f = *state;
    MDB_txn *txn = fixture_begin(f);
    /* "qd.a" is a prefix of "qd.ab": the NUL after the name keeps them apart. */
    push(f, txn, "qd.ab", 4, 1);
    push(f, txn, "qd.a", 1, 2);
    push(f, txn, "qd.b", 4, 3);
    push(f, txn, "qd.", 4, 4);
    uint64_t got[8];
    assert_int_equal(drain(f, txn, "qd.a", got, 8), 1);
    assert_int_equal(got[0], 2);
    assert_int_equal(queue_depth(f->st, txn, "qd.a", 10), 0);
    assert_int_equal(queue_depth(f->st, txn, "qd.ab", 10), 1);
    assert_int_equal(queue_depth(f->st, txn, "qd.c", 10), 0);
    uint8_t id[IDS_BYTES];
    assert_int_equal(queue_head(f->st, txn, "qd.c", id), STORE_NOT_FOUND);
    assert_int_equal(queue_head(f->st, txn, "zz", id), STORE_NOT_FOUND);
    store_msg m;
    fixture_msg(&m, "qd.c", 1, 9, 1);
    assert_int_equal(queue_remove(f->st, txn, &m), STORE_NOT_FOUND);
    fixture_commit(f, txn);
}

static void queue_entry_is_a_versioned_record(void **state)
{
    fixture *f = *state;
    MDB_txn *txn = fixture_begin(f);
    push(f, txn, "qd.police", 3, 0x0102);
    uint8_t key[] = {'q', 'd', '.', 'p', 'o', 'l', 'i', 'c', 'e', 0, 1, 0, 0, 0, 0, 0, 0, 1, 2};
    MDB_val k = {.mv_size = sizeof key, .mv_data = key}, v;
    assert_int_equal(mdb_get(txn, store_dbi(f->st, STORE_DB_QUEUE), &k, &v), 0);
    assert_int_equal(v.mv_size, 1 + IDS_BYTES);
    assert_int_equal(((const uint8_t *)v.mv_data)[0], STORE_RECORD_V1);
    fixture_commit(f, txn);
}

static void unreadable_queue_entry_is_set_aside(void **state)
{
    fixture *f = *state;
    MDB_txn *txn = fixture_begin(f);
    push(f, txn, "qd.police", 1, 5);
    /* Ahead of it (crisis, older), an entry of an unknown version. */
    uint8_t key[] = {'q', 'd', '.', 'p', 'o', 'l', 'i', 'c', 'e', 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    uint8_t val[1 + IDS_BYTES] = {2};
    fixture_put_raw(f, txn, STORE_DB_QUEUE, key, sizeof key, val, sizeof val);
    key[18] = 2;
    fixture_put_raw(f, txn, STORE_DB_QUEUE, key, sizeof key, val, 3);   /* and a short one */
    uint8_t id[IDS_BYTES];
    assert_int_equal(queue_head(f->st, txn, "qd.police", id), STORE_OK);
    store_msg m;
    assert_int_equal(store_msg_get(f->st, txn, id, &m), STORE_OK);
    assert_int_equal(m.seq, 5);
    assert_int_equal(store_set_aside_count(f->st, txn), 2);
    assert_int_equal(fixture_count(f, txn, STORE_DB_QUARANTINE), 2);
    assert_int_equal(queue_depth(f->st, txn, "qd.police", 10), 1);
    /* A head whose record is gone is dropped by the caller. */
    assert_int_equal(queue_drop_head(f->st, txn, "qd.police"), STORE_OK);
    assert_int_equal(queue_drop_head(f->st, txn, "qd.police"), STORE_NOT_FOUND);
    fixture_commit(f, txn);
}

static void collect(const uint8_t id[IDS_BYTES], void *ctx)
{
    size_t *n = ctx;
    assert_int_equal(id[0], 0xee);
    (*n)++;
}

static void inflight_round_trips_and_unreadable_is_set_aside(void **state)
{
    fixture *f = *state;
    MDB_txn *txn = fixture_begin(f);
    uint8_t a[IDS_BYTES] = {0xee, 1}, b[IDS_BYTES] = {0xee, 2};
    assert_int_equal(inflight_put(f->st, txn, a, 0x0102030405060708ull), STORE_OK);
    assert_int_equal(inflight_put(f->st, txn, b, 9), STORE_OK);
    uint64_t due;
    assert_int_equal(inflight_get(f->st, txn, a, &due), STORE_OK);
    assert_int_equal(due, 0x0102030405060708ull);
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = a}, v;
    assert_int_equal(mdb_get(txn, store_dbi(f->st, STORE_DB_INFLIGHT), &k, &v), 0);
    assert_int_equal(v.mv_size, 9);
    assert_memory_equal(v.mv_data, "\x01\x01\x02\x03\x04\x05\x06\x07\x08", 9);
    size_t n = 0;
    assert_int_equal(inflight_each(f->st, txn, collect, &n), STORE_OK);
    assert_int_equal(n, 2);
    uint8_t host[8] = {9};   /* format 1's host-order u64, no version */
    fixture_put_raw(f, txn, STORE_DB_INFLIGHT, b, IDS_BYTES, host, sizeof host);
    assert_int_equal(inflight_get(f->st, txn, b, &due), STORE_NOT_FOUND);
    assert_int_equal(store_set_aside_count(f->st, txn), 1);
    assert_int_equal(inflight_del(f->st, txn, a), STORE_OK);
    assert_int_equal(inflight_del(f->st, txn, a), STORE_NOT_FOUND);
    n = 0;
    assert_int_equal(inflight_each(f->st, txn, collect, &n), STORE_OK);
    assert_int_equal(n, 0);
    fixture_commit(f, txn);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(crisis_overtakes_routine_then_oldest_first, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(queues_of_recipients_never_mix, setup, teardown),
        cmocka_unit_test_setup_teardown(queue_entry_is_a_versioned_record, setup, teardown),
        cmocka_unit_test_setup_teardown(unreadable_queue_entry_is_set_aside, setup, teardown),
        cmocka_unit_test_setup_teardown(inflight_round_trips_and_unreadable_is_set_aside, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
