/*
 * Unit tests of retention (broker/retention.c, and the body grace of
 * broker/delivery.c) on a temporary LMDB: a final message's sealed body
 * goes after body_grace_ms, by a durable deadline that survives a restart;
 * records, levels, dedup entries, the trace and the referral record go
 * after keep_ms, never while a message of the referral is not final, and
 * a dedup entry never before expires_at + clock skew; the sweep removes at
 * most max_per_turn items a turn and finishes across turns. Time is the
 * test clock (common/clock.h), moved by hand: nothing sleeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker_fixture.h"
#include "clock.h"
#include "delivery.h"
#include "queue.h"
#include "retention.h"
#include "sign.h"

#define HOUR_MS 3600000ull
#define DAY_MS (24 * HOUR_MS)
#define KEEP_MS (10 * DAY_MS)
#define SKEW_MS 120000ull

typedef struct {
    fixture f;
    delivery_ctx dc;
    retention *ret;
    clock_source clk;
    uint8_t sign_secret[SIGN_SECRET_BYTES], sign_public[SIGN_PUBLIC_BYTES];
} ctx;

static void new_sweep(ctx *c, uint32_t max_per_turn)
{
    retention_destroy(&c->ret);
    const retention_options opt = {.keep_ms = KEEP_MS, .body_grace_ms = HOUR_MS,
                                   .clock_skew_ms = SKEW_MS, .max_per_turn = max_per_turn,
                                   .interval_ms = 1000};
    c->ret = retention_new(&opt);
    assert_non_null(c->ret);
}

static int setup(void **state)
{
    ctx *c = calloc(1, sizeof *c);
    c->clk.wall_ms = 1700000000000ull;
    c->clk.mono_ms = 1000;
    clock_set_source(&c->clk);
    fixture_open(&c->f);
    assert_true(sign_keypair(c->sign_public, c->sign_secret));
    c->dc.st = c->f.st;
    c->dc.broker_id = "broker.test";
    c->dc.ack_timeout_ms = 30000;
    c->dc.max_nak_delay_ms = 60000;
    c->dc.clock_skew_ms = SKEW_MS;
    c->dc.notice_ttl_ms = DAY_MS;
    c->dc.body_grace_ms = HOUR_MS;
    c->dc.sign_secret = c->sign_secret;
    c->dc.sign_public = c->sign_public;
    new_sweep(c, 256);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    ctx *c = *state;
    retention_destroy(&c->ret);
    fixture_close(&c->f);
    clock_set_source(NULL);
    free(c);
    return 0;
}

static uint64_t now(const ctx *c)
{
    assert_true(clock_now_ms() == c->clk.wall_ms);   /* the test clock is the source */
    return c->clk.wall_ms;
}

/* Enqueue message seq of referral rid_byte (0: its own id) for qd.police,
 * expiring after ttl_ms, and record the referral. */
static void enqueue(ctx *c, MDB_txn *txn, store_msg *m, uint64_t seq, uint8_t rid_byte,
                    uint64_t ttl_ms)
{
    fixture_msg(m, "qd.police", 2, seq, 0x11);
    if (rid_byte == 0)
        memcpy(m->referral_id, m->id, IDS_BYTES);
    else
        memset(m->referral_id, rid_byte, IDS_BYTES);
    m->created_at_ms = now(c);
    m->expires_at_ms = now(c) + ttl_ms;
    m->state = 0;
    const uint8_t payload[] = "sealed envelope bytes";
    assert_int_equal(delivery_enqueue(&c->dc, txn, m, payload, sizeof payload, now(c)),
                     STORE_OK);
    store_referral r = {.n_addressed = 1};
    strcpy(r.sender, m->sender);
    strcpy(r.addressed[0], m->recipient);
    assert_int_equal(store_referral_put(c->f.st, txn, m->referral_id, &r), STORE_OK);
}

/* Take the head of qd.police's queue and acknowledge it: DELIVERED. */
static void take_and_ack(ctx *c, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    store_msg m;
    const uint8_t *p;
    size_t len;
    assert_int_equal(delivery_take(&c->dc, txn, "qd.police", now(c), &m, &p, &len), STORE_OK);
    assert_memory_equal(m.id, id, IDS_BYTES);
    Referral__V1__Settle s = REFERRAL__V1__SETTLE__INIT;
    s.message_id.data = (uint8_t *)(uintptr_t)id;
    s.message_id.len = IDS_BYTES;
    s.verb = REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_ACK;
    Referral__V1__ResultCode code;
    const char *detail;
    assert_int_equal(delivery_settle(&c->dc, txn, "qd.police", &s, now(c), &code, &detail),
                     STORE_OK);
    assert_int_equal(code, REFERRAL__V1__RESULT_CODE__RESULT_OK);
}

/* Fire every deadline due now, as the loop does. */
static void fire_due(ctx *c, MDB_txn *txn)
{
    uint64_t due;
    deadline_kind kind;
    uint8_t id[IDS_BYTES];
    while (deadline_pop(c->f.st, txn, now(c), &due, &kind, id) == STORE_OK)
        assert_int_equal(delivery_fire(&c->dc, txn, kind, id, due, now(c)), STORE_OK);
}

/* Run one whole sweep pass now, a turn (its own transaction) per step;
 * returns what it removed. A pass is started at once (a fresh sweep, as
 * after a restart) if the last one's interval is not over. */
static size_t sweep(ctx *c, size_t *turns)
{
    if (retention_next_ms(c->ret) > now(c))
        new_sweep(c, 256);
    size_t total = 0, n_turns = 0;
    bool has_more = true;
    while (has_more) {
        MDB_txn *txn = fixture_begin(&c->f);
        size_t n;
        assert_int_equal(retention_step(c->ret, c->f.st, txn, now(c), UINT64_MAX, &n, &has_more),
                         STORE_OK);
        fixture_commit(&c->f, txn);
        total += n;
        assert_true(++n_turns < 10000);
    }
    if (turns != NULL)
        *turns = n_turns;
    return total;
}

static bool has_body(ctx *c, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    const uint8_t *p;
    size_t len;
    store_err e = store_body_get(c->f.st, txn, id, &p, &len);
    assert_true(e == STORE_OK || e == STORE_NOT_FOUND);
    return e == STORE_OK;
}

static bool has_record(ctx *c, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    store_msg m;
    store_err e = store_msg_get(c->f.st, txn, id, &m);
    assert_true(e == STORE_OK || e == STORE_NOT_FOUND);
    return e == STORE_OK;
}

static bool has_dedup(ctx *c, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    uint8_t digest[DIGEST_BYTES];
    store_err e = store_dedup_get(c->f.st, txn, id, digest);
    assert_true(e == STORE_OK || e == STORE_NOT_FOUND);
    return e == STORE_OK;
}

static bool has_referral(ctx *c, MDB_txn *txn, uint8_t rid_byte)
{
    uint8_t rid[IDS_BYTES];
    store_referral r;
    memset(rid, rid_byte, IDS_BYTES);
    store_err e = store_referral_get(c->f.st, txn, rid, &r);
    assert_true(e == STORE_OK || e == STORE_NOT_FOUND);
    return e == STORE_OK;
}

static void count_event(const uint8_t *event, size_t len, void *n)
{
    (void)event;
    (void)len;
    (*(size_t *)n)++;
}

static size_t trace_events(ctx *c, MDB_txn *txn, uint8_t rid_byte)
{
    uint8_t rid[IDS_BYTES];
    size_t n = 0;
    bool is_truncated;
    memset(rid, rid_byte, IDS_BYTES);
    assert_int_equal(store_trace_each(c->f.st, txn, rid, 1000, count_event, &n, &is_truncated),
                     STORE_OK);
    return n;
}

static void body_goes_after_the_grace_and_survives_a_restart_before_it(void **state)
{
    ctx *c = *state;
    store_msg m;
    MDB_txn *txn = fixture_begin(&c->f);
    enqueue(c, txn, &m, 1, 0x5a, DAY_MS);
    take_and_ack(c, txn, m.id);
    assert_true(has_body(c, txn, m.id));   /* final, in its grace */
    fixture_commit(&c->f, txn);

    /* A restart inside the grace: the body and its deadline are on disk. */
    clock_advance(&c->clk, HOUR_MS - 1);
    char why[600];
    assert_int_equal(fixture_reopen(&c->f, why, sizeof why), STORE_OK);
    c->dc.st = c->f.st;
    txn = fixture_begin(&c->f);
    fire_due(c, txn);
    assert_true(has_body(c, txn, m.id));
    fixture_commit(&c->f, txn);

    clock_advance(&c->clk, 1);
    txn = fixture_begin(&c->f);
    fire_due(c, txn);
    assert_false(has_body(c, txn, m.id));
    assert_true(has_record(c, txn, m.id));   /* the routing metadata stays */
    assert_int_equal(fixture_count(&c->f, txn, STORE_DB_BODIES), 0);

    /* A grace of 0: the body goes in the final move's own transaction. */
    c->dc.body_grace_ms = 0;
    enqueue(c, txn, &m, 2, 0x5b, DAY_MS);
    take_and_ack(c, txn, m.id);
    assert_false(has_body(c, txn, m.id));
    fixture_commit(&c->f, txn);
}

static void records_and_trace_go_after_keep_ms(void **state)
{
    ctx *c = *state;
    store_msg m;
    MDB_txn *txn = fixture_begin(&c->f);
    enqueue(c, txn, &m, 1, 0x5a, DAY_MS);
    take_and_ack(c, txn, m.id);
    assert_int_equal(store_level_put(c->f.st, txn, m.id, "qd.police", 2), STORE_OK);
    uint64_t final_at = now(c);
    fixture_commit(&c->f, txn);
    size_t events;
    txn = fixture_begin(&c->f);
    events = trace_events(c, txn, 0x5a);
    assert_true(events >= 2);   /* accepted, acknowledged */
    mdb_txn_abort(txn);

    /* One ms before keep_ms: everything is kept (the body too: its
     * deadline is not fired here; it goes with the record). */
    c->clk.wall_ms = final_at + KEEP_MS - 1;
    assert_int_equal(sweep(c, NULL), 0);
    txn = fixture_begin(&c->f);
    assert_true(has_record(c, txn, m.id));
    assert_true(has_dedup(c, txn, m.id));
    assert_true(has_referral(c, txn, 0x5a));
    assert_int_equal(trace_events(c, txn, 0x5a), events);
    assert_int_equal(fixture_count(&c->f, txn, STORE_DB_LEVELS), 1);
    mdb_txn_abort(txn);

    c->clk.wall_ms = final_at + KEEP_MS;
    assert_int_equal(sweep(c, NULL), 1 + events + 1);   /* message, trace, referral */
    txn = fixture_begin(&c->f);
    assert_false(has_record(c, txn, m.id));
    assert_false(has_dedup(c, txn, m.id));
    assert_false(has_referral(c, txn, 0x5a));
    assert_int_equal(trace_events(c, txn, 0x5a), 0);
    static const store_db emptied[] = {STORE_DB_MSGS, STORE_DB_BODIES, STORE_DB_QUEUE,
                                       STORE_DB_INFLIGHT, STORE_DB_DEDUP, STORE_DB_TRACE,
                                       STORE_DB_REFERRALS, STORE_DB_LEVELS, STORE_DB_REFMSGS};
    for (size_t i = 0; i < sizeof emptied / sizeof emptied[0]; i++)
        assert_int_equal(fixture_count(&c->f, txn, emptied[i]), 0);
    mdb_txn_abort(txn);
}

static void a_message_not_final_is_never_swept(void **state)
{
    ctx *c = *state;
    store_msg acked, open;
    MDB_txn *txn = fixture_begin(&c->f);
    enqueue(c, txn, &acked, 1, 0x5a, DAY_MS);
    take_and_ack(c, txn, acked.id);
    enqueue(c, txn, &open, 2, 0x5a, 3650 * DAY_MS);   /* same referral, still queued */
    fixture_commit(&c->f, txn);

    c->clk.wall_ms += 20 * KEEP_MS;
    assert_int_equal(sweep(c, NULL), 1);   /* the acknowledged message alone */
    txn = fixture_begin(&c->f);
    assert_false(has_record(c, txn, acked.id));
    assert_true(has_record(c, txn, open.id));
    assert_true(has_body(c, txn, open.id));
    assert_true(has_dedup(c, txn, open.id));
    assert_int_equal(queue_depth(c->f.st, txn, "qd.police", 10), 1);
    /* The referral keeps its trace and record while a message of it is
     * kept. */
    assert_true(has_referral(c, txn, 0x5a));
    assert_true(trace_events(c, txn, 0x5a) >= 3);
    fixture_commit(&c->f, txn);
}

static void dedup_lives_until_expires_at_plus_skew(void **state)
{
    ctx *c = *state;
    store_msg m;
    MDB_txn *txn = fixture_begin(&c->f);
    enqueue(c, txn, &m, 1, 0x5a, 30 * DAY_MS);   /* expires long after keep_ms */
    take_and_ack(c, txn, m.id);
    fixture_commit(&c->f, txn);
    uint64_t forget_at = m.expires_at_ms + SKEW_MS;

    /* keep_ms is over, the forget time is not: the record and its dedup
     * entry stay, and the forget deadline leaves them alone too. */
    c->clk.wall_ms = forget_at - 1;
    sweep(c, NULL);
    c->clk.wall_ms = forget_at;
    txn = fixture_begin(&c->f);
    assert_true(has_dedup(c, txn, m.id));
    assert_true(has_record(c, txn, m.id));
    fire_due(c, txn);
    assert_true(has_dedup(c, txn, m.id));
    fixture_commit(&c->f, txn);

    sweep(c, NULL);
    txn = fixture_begin(&c->f);
    assert_false(has_dedup(c, txn, m.id));
    assert_false(has_record(c, txn, m.id));
    mdb_txn_abort(txn);
}

static void sweep_removes_at_most_max_per_turn_and_finishes_across_turns(void **state)
{
    ctx *c = *state;
    new_sweep(c, 8);
    MDB_txn *txn = fixture_begin(&c->f);
    enum { N = 20 };
    for (uint64_t i = 0; i < N; i++) {   /* two referrals, ten messages each */
        store_msg m;
        enqueue(c, txn, &m, i + 1, i < N / 2 ? 0x5a : 0x5b, DAY_MS);
        take_and_ack(c, txn, m.id);
    }
    size_t events = trace_events(c, txn, 0x5a) + trace_events(c, txn, 0x5b);
    fixture_commit(&c->f, txn);

    c->clk.wall_ms += KEEP_MS + 2 * DAY_MS;
    size_t total = 0, turns = 0;
    bool has_more = true;
    while (has_more) {
        txn = fixture_begin(&c->f);
        size_t n;
        assert_int_equal(retention_step(c->ret, c->f.st, txn, now(c), UINT64_MAX, &n, &has_more),
                         STORE_OK);
        fixture_commit(&c->f, txn);
        assert_true(n <= 8);
        total += n;
        assert_true(++turns < 1000);
    }
    /* messages (each with its body: no deadline fired here), trace
     * events, two referral records */
    assert_int_equal(total, N + events + 2);
    assert_true(turns >= (N + events + 2 + 7) / 8);
    retention_counts n = retention_pass_counts(c->ret);
    assert_int_equal(n.msgs, N);
    assert_int_equal(n.trace, events);
    assert_int_equal(n.referrals, 2);
    txn = fixture_begin(&c->f);
    assert_int_equal(fixture_count(&c->f, txn, STORE_DB_MSGS), 0);
    assert_int_equal(fixture_count(&c->f, txn, STORE_DB_TRACE), 0);
    assert_int_equal(fixture_count(&c->f, txn, STORE_DB_BODIES), 0);
    mdb_txn_abort(txn);
    /* Done: the next pass waits for its interval. */
    assert_true(retention_next_ms(c->ret) > now(c));
}

static void quarantine_goes_after_its_time_and_orphans_are_cleared(void **state)
{
    ctx *c = *state;
    store_msg m;
    MDB_txn *txn = fixture_begin(&c->f);
    enqueue(c, txn, &m, 1, 0x5a, DAY_MS);
    /* Its record unreadable: set aside with its body; its refmsgs entry
     * and dedup entry are left behind. */
    uint8_t rec[STORE_MSG_RECORD_MAX];
    size_t len = store_msg_encode(&m, rec);
    rec[0] = 9;
    fixture_put_raw(&c->f, txn, STORE_DB_MSGS, m.id, IDS_BYTES, rec, len);
    assert_false(has_record(c, txn, m.id));
    assert_int_equal(fixture_count(&c->f, txn, STORE_DB_QUARANTINE), 2);   /* record, body */
    fixture_commit(&c->f, txn);

    /* After the body grace: nothing goes. What is set aside (the body
     * too: with its record unreadable it may be the only copy of an
     * accepted referral) stays in quarantine for operators, and so do its
     * refmsgs entry, the referral and its trace; the dedup entry waits for
     * its forget time. */
    c->clk.wall_ms += HOUR_MS;
    sweep(c, NULL);
    txn = fixture_begin(&c->f);
    assert_int_equal(fixture_count(&c->f, txn, STORE_DB_QUARANTINE), 2);
    assert_int_equal(fixture_count(&c->f, txn, STORE_DB_REFMSGS), 1);
    assert_true(has_referral(c, txn, 0x5a));
    assert_true(trace_events(c, txn, 0x5a) > 0);
    assert_true(has_dedup(c, txn, m.id));
    mdb_txn_abort(txn);

    /* After keep_ms (and the forget time): all gone, the referral too
     * (its refmsgs entry in the pass after the quarantined record's). */
    c->clk.wall_ms += KEEP_MS;
    sweep(c, NULL);
    sweep(c, NULL);
    txn = fixture_begin(&c->f);
    assert_int_equal(fixture_count(&c->f, txn, STORE_DB_QUARANTINE), 0);
    assert_false(has_dedup(c, txn, m.id));
    assert_false(has_referral(c, txn, 0x5a));
    assert_int_equal(fixture_count(&c->f, txn, STORE_DB_TRACE), 0);
    mdb_txn_abort(txn);
}

/* Bytes of key and value in which, and its entries. */
static uint64_t db_bytes(ctx *c, MDB_txn *txn, store_db which)
{
    MDB_cursor *cur;
    MDB_val k, v;
    uint64_t n = 0;
    assert_int_equal(mdb_cursor_open(txn, store_dbi(c->f.st, which), &cur), 0);
    while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0)
        n += k.mv_size + v.mv_size;
    mdb_cursor_close(cur);
    return n;
}

/* docs/performance.md, "Retention": what one referral leaves behind once
 * final (a referral delivered and acknowledged, and one receipt from the
 * agency back to the desk, delivered and acknowledged; bodies gone), in
 * record bytes per database and in LMDB pages. Printed, not asserted
 * beyond a sanity bound. */
static void measure_what_a_referral_keeps(void **state)
{
    ctx *c = *state;
    c->dc.body_grace_ms = 0;
    enum { N = 2000 };
    uint64_t used0, used1, map;
    store_usage(c->f.st, &used0, &map);
    for (uint64_t i = 0; i < N; i++) {
        MDB_txn *txn = fixture_begin(&c->f);
        store_msg m, receipt;
        enqueue(c, txn, &m, 2 * i + 1, 0, 3 * DAY_MS);
        fixture_commit(&c->f, txn);
        txn = fixture_begin(&c->f);
        store_msg got;
        const uint8_t *p;
        size_t len;
        assert_int_equal(delivery_take(&c->dc, txn, "qd.police", now(c), &got, &p, &len),
                         STORE_OK);
        assert_int_equal(delivery_sent(&c->dc, txn, got.id, 1, now(c)), STORE_OK);
        Referral__V1__Settle s = REFERRAL__V1__SETTLE__INIT;
        s.message_id.data = got.id;
        s.message_id.len = IDS_BYTES;
        s.verb = REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_ACK;
        Referral__V1__ResultCode code;
        const char *detail;
        assert_int_equal(delivery_settle(&c->dc, txn, "qd.police", &s, now(c), &code, &detail),
                         STORE_OK);
        /* The agency's receipt: a message of the same referral to the desk. */
        fixture_msg(&receipt, "sh.12355.desk", 2, 2 * i + 2, 0x22);
        memcpy(receipt.referral_id, got.referral_id, IDS_BYTES);
        snprintf(receipt.sender, sizeof receipt.sender, "qd.police");
        receipt.created_at_ms = now(c);
        receipt.expires_at_ms = now(c) + 3 * DAY_MS;
        receipt.state = 0;
        const uint8_t payload[] = "sealed receipt";
        assert_int_equal(delivery_enqueue(&c->dc, txn, &receipt, payload, sizeof payload, now(c)),
                         STORE_OK);
        assert_int_equal(store_level_put(c->f.st, txn, got.id, "qd.police", 3), STORE_OK);
        assert_int_equal(delivery_take(&c->dc, txn, "sh.12355.desk", now(c), &got, &p, &len),
                         STORE_OK);
        assert_int_equal(delivery_sent(&c->dc, txn, got.id, 1, now(c)), STORE_OK);
        s.message_id.data = got.id;
        assert_int_equal(delivery_settle(&c->dc, txn, "sh.12355.desk", &s, now(c), &code,
                                         &detail), STORE_OK);
        fixture_commit(&c->f, txn);
        clock_advance(&c->clk, 10);
    }
    MDB_txn *txn = fixture_begin(&c->f);
    fire_due(c, txn);
    fixture_commit(&c->f, txn);
    store_usage(c->f.st, &used1, &map);
    txn = fixture_begin(&c->f);
    static const store_db kept[] = {STORE_DB_MSGS, STORE_DB_DEDUP, STORE_DB_REFMSGS,
                                    STORE_DB_REFERRALS, STORE_DB_LEVELS, STORE_DB_TRACE,
                                    STORE_DB_DEADLINES, STORE_DB_BODIES, STORE_DB_QUEUE};
    static const char *const names[] = {"msgs", "dedup", "refmsgs", "referrals", "levels",
                                        "trace", "deadlines", "bodies", "queue"};
    uint64_t total = 0;
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
        uint64_t b = db_bytes(c, txn, kept[i]);
        total += b;
        print_message("retention: %-9s %7.1f bytes/referral  %5.2f entries/referral\n", names[i],
                      (double)b / N, (double)fixture_count(&c->f, txn, kept[i]) / N);
    }
    print_message("retention: records  %7.1f bytes/referral; LMDB pages %7.1f bytes/referral\n",
                  (double)total / N, (double)(used1 - used0) / N);
    assert_true(total / N < 4096);
    mdb_txn_abort(txn);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            body_goes_after_the_grace_and_survives_a_restart_before_it, setup, teardown),
        cmocka_unit_test_setup_teardown(records_and_trace_go_after_keep_ms, setup, teardown),
        cmocka_unit_test_setup_teardown(a_message_not_final_is_never_swept, setup, teardown),
        cmocka_unit_test_setup_teardown(dedup_lives_until_expires_at_plus_skew, setup, teardown),
        cmocka_unit_test_setup_teardown(
            sweep_removes_at_most_max_per_turn_and_finishes_across_turns, setup, teardown),
        cmocka_unit_test_setup_teardown(quarantine_goes_after_its_time_and_orphans_are_cleared,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(measure_what_a_referral_keeps, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
