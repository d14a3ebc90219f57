/*
 * Unit tests of broker/escalate.c on a temporary LMDB, time passed in
 * (nothing sleeps), through the origin's watchdog, which needs no
 * directory: its deadlines fire once and move on, crisis before routine
 * whatever the due order, a restart between two checks fires nothing
 * twice, word from afar stands the alert down, and an escalation record
 * damaged in any byte is set aside or read as valid, never a crash or a
 * loop. The home watcher's steps, copies and winners are tested with real
 * brokers (test/integration/test_escalation.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "broker_fixture.h"
#include "escalate.h"
#include "queue.h"
#include "sign.h"

#define DESK "sh.12355.desk"
#define LEAGUE "qd.youth-league"
#define T0 1800000000000ull
#define S 1000u

typedef struct {
    fixture f;
    delivery_ctx dc;
    escalate_ctx ec;
    policy_set ps;
    directory *dir;   /* none: the watchdog alerts the sender alone */
    uint8_t sign_secret[SIGN_SECRET_BYTES], sign_public[SIGN_PUBLIC_BYTES];
} ctx;

static int setup(void **state)
{
    ctx *c = calloc(1, sizeof *c);
    fixture_open(&c->f);
    assert_true(sign_keypair(c->sign_public, c->sign_secret));
    c->dc = (delivery_ctx){.st = c->f.st, .broker_id = "broker.test", .ack_timeout_ms = 30000,
                           .max_nak_delay_ms = 60000, .clock_skew_ms = 120000,
                           .notice_ttl_ms = 3600000, .sign_secret = c->sign_secret,
                           .sign_public = c->sign_public};
    char why[200];
    assert_true(policy_finish(&c->ps, why, sizeof why));   /* the built-in defaults */
    c->ec = (escalate_ctx){.st = c->f.st, .dc = &c->dc, .policies = &c->ps, .dir = &c->dir,
                           .broker_id = "broker.test"};
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

/* A referral from the desk to the league, homed elsewhere: the watchdog. */
static void watch(ctx *c, uint8_t id_byte, int urgency, uint64_t created)
{
    uint8_t id[16], rid[16];
    memset(id, id_byte, sizeof id);
    memset(rid, id_byte ^ 0xff, sizeof rid);
    Referral__V1__RoutingHeader h = REFERRAL__V1__ROUTING_HEADER__INIT;
    h.message_id = (ProtobufCBinaryData){16, id};
    h.referral_id = (ProtobufCBinaryData){16, rid};
    h.kind = REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_REFERRAL;
    h.from_agency = DESK;
    h.to_agency = LEAGUE;
    h.urgency = (Referral__V1__Urgency)urgency;
    h.created_at_ms = created;
    h.expires_at_ms = created + 7 * 24 * 3600 * S;
    MDB_txn *txn = fixture_begin(&c->f);
    assert_int_equal(escalate_on_referral(&c->ec, txn, &h, NULL, 0, false, true, created),
                     STORE_OK);
    fixture_commit(&c->f, txn);
}

static uint32_t fire(ctx *c, uint64_t now, uint32_t max)
{
    MDB_txn *txn = fixture_begin(&c->f);
    uint32_t n;
    uint64_t late;
    bool has_more;
    assert_int_equal(escalate_fire(&c->ec, txn, now, max, &n, &late, &has_more), STORE_OK);
    fixture_commit(&c->f, txn);
    return n;
}

static size_t alerts_for_desk(ctx *c)
{
    MDB_txn *txn = fixture_begin(&c->f);
    size_t n = queue_depth(c->f.st, txn, DESK, 1000);
    fixture_commit(&c->f, txn);
    return n;
}

static uint64_t next_due(ctx *c)
{
    MDB_txn *txn = fixture_begin(&c->f);
    uint64_t due = 0;
    store_err e = escalate_next_due(&c->ec, txn, &due);
    fixture_commit(&c->f, txn);
    return e == STORE_OK ? due : 0;
}

static void watchdog_checks_fire_once_each_and_move_on(void **state)
{
    ctx *c = *state;
    watch(c, 1, 4, T0);   /* built-in crisis: 60 s, 300 s, 900 s, grace 30 s */
    assert_int_equal(next_due(c), T0 + 90 * S);
    assert_int_equal(fire(c, T0 + 89 * S, 100), 0);
    assert_int_equal(fire(c, T0 + 90 * S, 100), 1);
    assert_int_equal(alerts_for_desk(c), 1);              /* the partition alert */
    assert_int_equal(next_due(c), T0 + 330 * S);
    /* A restart between checks (the store reopened) fires nothing twice. */
    char why[300];
    store_destroy(&c->f.st);
    assert_int_equal(fixture_reopen(&c->f, why, sizeof why), STORE_OK);
    c->dc.st = c->ec.st = c->f.st;
    assert_int_equal(fire(c, T0 + 100 * S, 100), 0);
    /* Long after: the two checks left fire in one go; the alert stands, so
     * no second alert; then nothing is due until the record ends. */
    assert_int_equal(fire(c, T0 + 2000 * S, 100), 2);
    assert_int_equal(fire(c, T0 + 2000 * S, 100), 0);
    assert_int_equal(alerts_for_desk(c), 1);
}

static void crisis_deadlines_fire_before_routine_ones_whatever_their_due_time(void **state)
{
    ctx *c = *state;
    watch(c, 2, 1, T0);            /* routine: first check a day and 12 h on */
    watch(c, 3, 4, T0 + 86400 * S); /* crisis, created a day later, due 90 s after */
    uint64_t now = T0 + 2 * 86400 * S;   /* both overdue, neither expired */
    assert_int_equal(fire(c, now, 1), 1);
    /* The crisis one went first: the earliest deadline now is its second
     * check (had the routine one fired, it would be the crisis' first). */
    assert_int_equal(next_due(c), T0 + 86400 * S + 330 * S);
    assert_int_equal(fire(c, now, 1), 1);   /* its second check */
    assert_int_equal(fire(c, now, 1), 1);   /* its third */
    assert_int_equal(next_due(c), T0 + 36 * 3600 * S);   /* then the routine one */
}

static void word_from_afar_stands_the_alert_down(void **state)
{
    ctx *c = *state;
    watch(c, 4, 4, T0);
    assert_int_equal(fire(c, T0 + 91 * S, 10), 1);
    assert_int_equal(alerts_for_desk(c), 1);
    uint8_t id[16], rid[16];
    memset(id, 4, sizeof id);
    memset(rid, 4 ^ 0xff, sizeof rid);
    Referral__V1__Notice n = REFERRAL__V1__NOTICE__INIT;
    n.kind = REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ACK_LEVEL;
    n.level = REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_DELIVERED;
    n.message_id = (ProtobufCBinaryData){16, id};
    n.referral_id = (ProtobufCBinaryData){16, rid};
    MDB_txn *txn = fixture_begin(&c->f);
    assert_int_equal(escalate_on_notice(&c->ec, txn, &n, T0 + 95 * S), STORE_OK);
    assert_int_equal(escalate_on_notice(&c->ec, txn, &n, T0 + 96 * S), STORE_OK);
    fixture_commit(&c->f, txn);
    assert_int_equal(alerts_for_desk(c), 2);   /* one stand-down, not two */
}

static void damaged_records_are_set_aside_never_fatal(void **state)
{
    ctx *c = *state;
    watch(c, 5, 4, T0);
    uint8_t key[17] = {'E'};
    memset(key + 1, 5, 16);
    MDB_txn *txn = fixture_begin(&c->f);
    MDB_val k = {sizeof key, key}, v;
    assert_int_equal(mdb_get(txn, store_dbi(c->f.st, STORE_DB_ESCALATIONS), &k, &v), 0);
    size_t len = v.mv_size;
    uint8_t *good = malloc(len);
    memcpy(good, v.mv_data, len);
    fixture_commit(&c->f, txn);
    size_t set_aside = 0;
    /* Every byte changed, and every truncation: decoded, or set aside. */
    for (size_t i = 0; i < len * 2; i++) {
        uint8_t *bad = malloc(len);
        memcpy(bad, good, len);
        size_t blen = len;
        if (i < len)
            bad[i] ^= 0x5a;
        else
            blen = i - len;
        txn = fixture_begin(&c->f);
        fixture_put_raw(&c->f, txn, STORE_DB_ESCALATIONS, key, sizeof key, bad, blen);
        size_t before = fixture_count(&c->f, txn, STORE_DB_QUARANTINE);
        uint32_t n;
        uint64_t late;
        bool more;
        assert_int_equal(escalate_fire(&c->ec, txn, T0 + 3000 * S, 10, &n, &late, &more),
                         STORE_OK);
        set_aside += fixture_count(&c->f, txn, STORE_DB_QUARANTINE) - before;
        mdb_txn_abort(txn);   /* each case starts from the good record */
        free(bad);
    }
    free(good);
    assert_true(set_aside >= len);   /* at least every truncation */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(watchdog_checks_fire_once_each_and_move_on, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            crisis_deadlines_fire_before_routine_ones_whatever_their_due_time, setup, teardown),
        cmocka_unit_test_setup_teardown(word_from_afar_stands_the_alert_down, setup, teardown),
        cmocka_unit_test_setup_teardown(damaged_records_are_set_aside_never_fatal, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
