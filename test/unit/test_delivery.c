/*
 * Unit tests of broker/delivery.c on a temporary LMDB: the state table of
 * delivery.h checked exhaustively (each allowed move allowed, every other
 * pair refused, by delivery_is_move_allowed, which delivery_assert_move
 * asserts), every allowed move made through the module's own functions,
 * and moves the table forbids answered without a state change; deadlines
 * of an unknown kind and queue entries whose record was set aside are
 * passed over, never fatal. Time is passed in: nothing sleeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "broker_fixture.h"
#include "delivery.h"
#include "queue.h"
#include "sign.h"

enum { NEW = 0, QUEUED = 1, IN_FLIGHT = 2, DELIVERED = 3, REJECTED = 4, UNDELIVERABLE = 5,
       QUARANTINED = 6, UNKNOWN = 7, WITHDRAWN = 8, N_STATES = 9 };

/* delivery.h's table, written again here on purpose: the test holds the
 * code to the documented table, not to itself. */
static const bool allowed[N_STATES][N_STATES] = {
    [NEW] = {[QUEUED] = true},
    [QUEUED] = {[IN_FLIGHT] = true, [DELIVERED] = true, [REJECTED] = true,
                [UNDELIVERABLE] = true, [QUARANTINED] = true, [WITHDRAWN] = true},
    [IN_FLIGHT] = {[QUEUED] = true, [IN_FLIGHT] = true, [DELIVERED] = true, [REJECTED] = true,
                   [UNDELIVERABLE] = true},
};

typedef struct {
    fixture f;
    delivery_ctx dc;
    uint8_t sign_secret[SIGN_SECRET_BYTES], sign_public[SIGN_PUBLIC_BYTES];
} ctx;

static int setup(void **state)
{
    ctx *c = calloc(1, sizeof *c);
    fixture_open(&c->f);
    assert_true(sign_keypair(c->sign_public, c->sign_secret));
    c->dc.st = c->f.st;
    c->dc.broker_id = "broker.test";
    c->dc.ack_timeout_ms = 30000;
    c->dc.max_nak_delay_ms = 60000;
    c->dc.clock_skew_ms = 120000;
    c->dc.notice_ttl_ms = 3600000;
    c->dc.sign_secret = c->sign_secret;
    c->dc.sign_public = c->sign_public;
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    ctx *c = *state;
    fixture_close(&c->f);
    free(c);
    return 0;
}

static void every_pair_of_states_is_checked_against_the_table(void **state)
{
    (void)state;
    size_t n_allowed = 0;
    for (int from = 0; from < 256; from++) {
        for (int to = 0; to < 256; to++) {
            bool want = from < N_STATES && to < N_STATES && allowed[from][to];
            if (delivery_is_move_allowed((uint8_t)from, (uint8_t)to) != want)
                fail_msg("move %d -> %d: table says %s", from, to, want ? "allowed" : "refused");
            n_allowed += want;
        }
    }
    assert_int_equal(n_allowed, 12);   /* the table's twelve arrows */
    /* Final states lead nowhere, not even to themselves. */
    for (int to = 0; to < N_STATES; to++)
        for (int from = DELIVERED; from <= WITHDRAWN; from++)
            assert_false(delivery_is_move_allowed((uint8_t)from, (uint8_t)to));
}

/* Enqueue a referral for qd.police; returns its record. */
static void enqueue(ctx *c, MDB_txn *txn, store_msg *m, uint64_t seq, uint64_t now_ms)
{
    fixture_msg(m, "qd.police", 2, seq, 0x11);
    m->expires_at_ms = now_ms + 100000;
    m->state = 0;
    const uint8_t payload[] = "sealed envelope bytes";
    assert_int_equal(delivery_enqueue(&c->dc, txn, m, payload, sizeof payload, now_ms),
                     STORE_OK);
}

static uint8_t state_of(ctx *c, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    store_msg m;
    store_err e = store_msg_get(c->f.st, txn, id, &m);
    assert_true(e == STORE_OK || e == STORE_NOT_FOUND);
    return e == STORE_OK ? m.state : UNKNOWN;
}

static void take(ctx *c, MDB_txn *txn, const uint8_t id[IDS_BYTES], uint64_t now_ms)
{
    store_msg m;
    const uint8_t *p;
    size_t len;
    assert_int_equal(delivery_take(&c->dc, txn, "qd.police", now_ms, &m, &p, &len), STORE_OK);
    assert_memory_equal(m.id, id, IDS_BYTES);
    assert_int_equal(m.state, IN_FLIGHT);
}

static Referral__V1__ResultCode settle(ctx *c, MDB_txn *txn, const char *agency,
                                       const uint8_t id[IDS_BYTES], Referral__V1__SettleVerb verb,
                                       uint64_t delay_ms, uint64_t now_ms)
{
    Referral__V1__Settle s = REFERRAL__V1__SETTLE__INIT;
    s.message_id.data = (uint8_t *)(uintptr_t)id;
    s.message_id.len = IDS_BYTES;
    s.verb = verb;
    s.delay_ms = delay_ms;
    s.reason = (char *)"not our remit";
    Referral__V1__ResultCode code;
    const char *detail;
    assert_int_equal(delivery_settle(&c->dc, txn, agency, &s, now_ms, &code, &detail),
                     STORE_OK);
    return code;
}

#define ACK REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_ACK
#define REJECT REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_REJECT
#define NAK REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_NAK
#define IN_PROGRESS REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_IN_PROGRESS
#define OK REFERRAL__V1__RESULT_CODE__RESULT_OK
#define UNKNOWN_MESSAGE REFERRAL__V1__RESULT_CODE__RESULT_UNKNOWN_MESSAGE

/* Notices queued for the sender (a final state reported). */
static size_t notices_for_sender(ctx *c, MDB_txn *txn)
{
    return queue_depth(c->f.st, txn, "sh.12355.desk", 100);
}

static void each_allowed_move_works_through_delivery(void **state)
{
    ctx *c = *state;
    uint64_t now = 1000000;
    MDB_txn *txn = fixture_begin(&c->f);
    store_msg m;

    /* new -> QUEUED -> IN_FLIGHT -> IN_FLIGHT (in progress) -> QUEUED (nak)
     * -> IN_FLIGHT -> QUEUED (return) -> IN_FLIGHT -> DELIVERED (ack). */
    enqueue(c, txn, &m, 1, now);
    assert_int_equal(state_of(c, txn, m.id), QUEUED);
    take(c, txn, m.id, now);
    assert_int_equal(settle(c, txn, "qd.police", m.id, IN_PROGRESS, 0, now + 1), OK);
    assert_int_equal(state_of(c, txn, m.id), IN_FLIGHT);
    uint64_t due;
    assert_int_equal(inflight_get(c->f.st, txn, m.id, &due), STORE_OK);
    assert_int_equal(due, now + 1 + c->dc.ack_timeout_ms);
    assert_int_equal(settle(c, txn, "qd.police", m.id, NAK, 0, now + 2), OK);
    assert_int_equal(state_of(c, txn, m.id), QUEUED);
    take(c, txn, m.id, now + 3);
    assert_int_equal(delivery_return(&c->dc, txn, m.id, now + 4), STORE_OK);
    assert_int_equal(state_of(c, txn, m.id), QUEUED);
    take(c, txn, m.id, now + 5);
    assert_int_equal(settle(c, txn, "qd.police", m.id, ACK, 0, now + 6), OK);
    assert_int_equal(state_of(c, txn, m.id), DELIVERED);
    const uint8_t *p;
    size_t len;
    assert_int_equal(store_body_get(c->f.st, txn, m.id, &p, &len), STORE_NOT_FOUND);

    /* QUEUED -> DELIVERED (acked before it was handed out). */
    enqueue(c, txn, &m, 2, now);
    assert_int_equal(settle(c, txn, "qd.police", m.id, ACK, 0, now + 7), OK);
    assert_int_equal(state_of(c, txn, m.id), DELIVERED);

    /* QUEUED -> REJECTED and IN_FLIGHT -> REJECTED: the sender is told. */
    enqueue(c, txn, &m, 3, now);
    assert_int_equal(settle(c, txn, "qd.police", m.id, REJECT, 0, now + 8), OK);
    assert_int_equal(state_of(c, txn, m.id), REJECTED);
    assert_int_equal(notices_for_sender(c, txn), 1);
    enqueue(c, txn, &m, 4, now);
    take(c, txn, m.id, now + 9);
    assert_int_equal(settle(c, txn, "qd.police", m.id, REJECT, 0, now + 10), OK);
    assert_int_equal(state_of(c, txn, m.id), REJECTED);
    assert_int_equal(notices_for_sender(c, txn), 2);

    /* IN_FLIGHT -> QUEUED by its return deadline; then QUEUED ->
     * UNDELIVERABLE and IN_FLIGHT -> UNDELIVERABLE by expiry. */
    enqueue(c, txn, &m, 5, now);
    take(c, txn, m.id, now + 11);
    assert_int_equal(inflight_get(c->f.st, txn, m.id, &due), STORE_OK);
    assert_int_equal(delivery_fire(&c->dc, txn, DEADLINE_RETURN, m.id, due, due), STORE_OK);
    assert_int_equal(state_of(c, txn, m.id), QUEUED);
    assert_int_equal(delivery_fire(&c->dc, txn, DEADLINE_EXPIRE, m.id, m.expires_at_ms,
                                   m.expires_at_ms), STORE_OK);
    assert_int_equal(state_of(c, txn, m.id), UNDELIVERABLE);
    assert_int_equal(notices_for_sender(c, txn), 3);
    enqueue(c, txn, &m, 6, now);
    take(c, txn, m.id, now + 12);
    assert_int_equal(delivery_fire(&c->dc, txn, DEADLINE_EXPIRE, m.id, m.expires_at_ms,
                                   m.expires_at_ms), STORE_OK);
    assert_int_equal(state_of(c, txn, m.id), UNDELIVERABLE);

    /* QUEUED -> QUARANTINED: a body that fails its digest is never handed out. */
    enqueue(c, txn, &m, 7, now);
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = m.id}, v;
    assert_int_equal(mdb_get(txn, store_dbi(c->f.st, STORE_DB_BODIES), &k, &v), 0);
    uint8_t raw[64];
    assert_true(v.mv_size <= sizeof raw);
    memcpy(raw, v.mv_data, v.mv_size);
    raw[v.mv_size - 1] ^= 1;
    fixture_put_raw(&c->f, txn, STORE_DB_BODIES, m.id, IDS_BYTES, raw, v.mv_size);
    store_msg got;
    assert_int_equal(delivery_take(&c->dc, txn, "qd.police", now + 13, &got, &p, &len),
                     STORE_NOT_FOUND);
    assert_int_equal(state_of(c, txn, m.id), QUARANTINED);
    assert_int_equal(notices_for_sender(c, txn), 5);

    /* Its forget time: the final record and its dedup entry stay (the
     * retention sweep removes both after keep_ms, test_retention). */
    assert_int_equal(delivery_fire(&c->dc, txn, DEADLINE_FORGET, m.id, 0, now), STORE_OK);
    assert_int_equal(state_of(c, txn, m.id), QUARANTINED);
    fixture_commit(&c->f, txn);
}

static void moves_outside_the_table_change_nothing(void **state)
{
    ctx *c = *state;
    uint64_t now = 2000000;
    MDB_txn *txn = fixture_begin(&c->f);
    store_msg m;
    enqueue(c, txn, &m, 1, now);
    /* QUEUED: nak and in-progress need a flight. */
    assert_int_equal(settle(c, txn, "qd.police", m.id, NAK, 0, now), UNKNOWN_MESSAGE);
    assert_int_equal(settle(c, txn, "qd.police", m.id, IN_PROGRESS, 0, now), UNKNOWN_MESSAGE);
    assert_int_equal(state_of(c, txn, m.id), QUEUED);
    /* A return deadline of another (or no) flight is passed over. */
    assert_int_equal(delivery_fire(&c->dc, txn, DEADLINE_RETURN, m.id, now, now), STORE_OK);
    assert_int_equal(delivery_return(&c->dc, txn, m.id, now), STORE_OK);
    assert_int_equal(state_of(c, txn, m.id), QUEUED);
    /* Another agency's message answers as unknown and stays put. */
    assert_int_equal(settle(c, txn, "qd.school", m.id, ACK, 0, now), UNKNOWN_MESSAGE);
    assert_int_equal(state_of(c, txn, m.id), QUEUED);
    /* From a final state nothing moves: a repeated ack is OK, the rest unknown. */
    assert_int_equal(settle(c, txn, "qd.police", m.id, ACK, 0, now), OK);
    assert_int_equal(settle(c, txn, "qd.police", m.id, ACK, 0, now), OK);
    assert_int_equal(settle(c, txn, "qd.police", m.id, REJECT, 0, now), UNKNOWN_MESSAGE);
    assert_int_equal(settle(c, txn, "qd.police", m.id, NAK, 0, now), UNKNOWN_MESSAGE);
    assert_int_equal(delivery_fire(&c->dc, txn, DEADLINE_EXPIRE, m.id, now, now), STORE_OK);
    assert_int_equal(delivery_return(&c->dc, txn, m.id, now), STORE_OK);
    assert_int_equal(state_of(c, txn, m.id), DELIVERED);
    assert_int_equal(notices_for_sender(c, txn), 0);
    /* A message never stored. */
    uint8_t none[IDS_BYTES] = {0x99};
    assert_int_equal(settle(c, txn, "qd.police", none, ACK, 0, now), UNKNOWN_MESSAGE);
    assert_int_equal(delivery_fire(&c->dc, txn, DEADLINE_EXPIRE, none, now, now), STORE_OK);
    fixture_commit(&c->f, txn);
}

static void unknown_deadline_kind_and_set_aside_records_are_passed_over(void **state)
{
    ctx *c = *state;
    uint64_t now = 3000000;
    MDB_txn *txn = fixture_begin(&c->f);
    store_msg a, b;
    enqueue(c, txn, &a, 1, now);
    enqueue(c, txn, &b, 2, now);
    /* A kind no release has: no move, no error. */
    assert_int_equal(delivery_fire(&c->dc, txn, (deadline_kind)9, a.id, now, now), STORE_OK);
    assert_int_equal(state_of(c, txn, a.id), QUEUED);
    /* a's record of an unknown version: set aside when met; b comes next. */
    uint8_t rec[STORE_MSG_RECORD_MAX];
    size_t len = store_msg_encode(&a, rec);
    rec[0] = 7;
    fixture_put_raw(&c->f, txn, STORE_DB_MSGS, a.id, IDS_BYTES, rec, len);
    store_msg got;
    const uint8_t *p;
    size_t plen;
    assert_int_equal(delivery_take(&c->dc, txn, "qd.police", now, &got, &p, &plen), STORE_OK);
    assert_memory_equal(got.id, b.id, IDS_BYTES);
    assert_int_equal(store_set_aside_count(c->f.st, txn), 1);
    assert_int_equal(queue_depth(c->f.st, txn, "qd.police", 10), 0);
    /* Its deadlines find nothing and do nothing. */
    assert_int_equal(delivery_fire(&c->dc, txn, DEADLINE_EXPIRE, a.id, now, now), STORE_OK);
    assert_int_equal(delivery_fire(&c->dc, txn, DEADLINE_FORGET, a.id, now, now), STORE_OK);
    /* b in flight, its record then unreadable: a restart passes over it. */
    len = store_msg_encode(&got, rec);
    rec[0] = 7;
    fixture_put_raw(&c->f, txn, STORE_DB_MSGS, b.id, IDS_BYTES, rec, len);
    size_t count;
    assert_int_equal(delivery_return_all(&c->dc, txn, now, &count), STORE_OK);
    assert_int_equal(store_set_aside_count(c->f.st, txn), 2);
    fixture_commit(&c->f, txn);
}

/* A held message (queue.h): out of its queue, never taken, kept across a
 * reopen of the store, still expired at expires_at (its held entry goes
 * with it, the sender is told); released, it is taken again. Its record
 * is versioned; a damaged one is reported, never trusted. */
static void held_message_is_kept_never_taken_and_still_expires(void **state)
{
    ctx *c = *state;
    uint64_t now = 1000000;
    store_msg held, other, m;
    const uint8_t *p;
    size_t len;
    MDB_txn *txn = fixture_begin(&c->f);
    enqueue(c, txn, &held, 1, now);
    enqueue(c, txn, &other, 2, now);
    queue_held h = {.held_at_ms = now, .operator_name = "ops.alice", .reason = "wait"};
    assert_int_equal(queue_hold(c->f.st, txn, &held, &h), STORE_OK);
    assert_int_equal(queue_hold(c->f.st, txn, &held, &h), STORE_NOT_FOUND);   /* held already */
    assert_int_equal(queue_depth(c->f.st, txn, "qd.police", 10), 1);
    fixture_commit(&c->f, txn);

    char why[300];
    assert_int_equal(fixture_reopen(&c->f, why, sizeof why), STORE_OK);
    c->dc.st = c->f.st;
    txn = fixture_begin(&c->f);
    queue_held got;
    assert_int_equal(queue_held_get(c->f.st, txn, held.id, &got), STORE_OK);
    assert_int_equal(got.held_at_ms, now);
    assert_string_equal(got.operator_name, "ops.alice");
    assert_string_equal(got.reason, "wait");
    assert_int_equal(state_of(c, txn, held.id), QUEUED);
    assert_int_equal(delivery_take(&c->dc, txn, "qd.police", now, &m, &p, &len), STORE_OK);
    assert_memory_equal(m.id, other.id, IDS_BYTES);   /* the held one is passed over */
    assert_int_equal(delivery_take(&c->dc, txn, "qd.police", now, &m, &p, &len),
                     STORE_NOT_FOUND);

    /* Its expiry comes all the same: final, out of the held set, sender told. */
    assert_int_equal(delivery_fire(&c->dc, txn, DEADLINE_EXPIRE, held.id, held.expires_at_ms,
                                   held.expires_at_ms), STORE_OK);
    assert_int_equal(state_of(c, txn, held.id), UNDELIVERABLE);
    assert_int_equal(queue_held_get(c->f.st, txn, held.id, NULL), STORE_NOT_FOUND);
    assert_int_equal(notices_for_sender(c, txn), 1);

    /* Hold, then release: back in its queue and taken. */
    store_msg again;
    enqueue(c, txn, &again, 3, now);
    assert_int_equal(queue_hold(c->f.st, txn, &again, &h), STORE_OK);
    assert_int_equal(queue_release(c->f.st, txn, &again), STORE_OK);
    assert_int_equal(queue_release(c->f.st, txn, &again), STORE_NOT_FOUND);
    assert_int_equal(delivery_take(&c->dc, txn, "qd.police", now, &m, &p, &len), STORE_OK);
    assert_memory_equal(m.id, again.id, IDS_BYTES);

    /* An operator's expire of a held message takes the same path. */
    store_msg third;
    enqueue(c, txn, &third, 4, now);
    assert_int_equal(queue_hold(c->f.st, txn, &third, &h), STORE_OK);
    assert_int_equal(delivery_expire(&c->dc, txn, &third, "expired by an operator", "moot", now),
                     STORE_OK);
    assert_int_equal(state_of(c, txn, third.id), UNDELIVERABLE);
    assert_int_equal(fixture_count(&c->f, txn, STORE_DB_HELD), 0);

    /* A held record of another version is reported, not read. */
    const uint8_t bad[] = {9, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0};
    fixture_put_raw(&c->f, txn, STORE_DB_HELD, third.id, IDS_BYTES, bad, sizeof bad);
    assert_int_equal(queue_held_get(c->f.st, txn, third.id, &got), STORE_CORRUPT);
    fixture_commit(&c->f, txn);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_pair_of_states_is_checked_against_the_table),
        cmocka_unit_test_setup_teardown(each_allowed_move_works_through_delivery, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(moves_outside_the_table_change_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(
            unknown_deadline_kind_and_set_aside_records_are_passed_over, setup, teardown),
        cmocka_unit_test_setup_teardown(held_message_is_kept_never_taken_and_still_expires, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
