/*
 * test_state: libreferral's state directory (client-lib/state.c): records
 * round-trip through their explicit encoding, a directory written by
 * libreferral 0.1.0 (format 1: raw structs) is migrated at open and keeps
 * its outbox and received ids, a newer format is refused with a sentence,
 * an inbox entry of an unknown record version is set aside, not a
 * crash, and format 3 keeps an escalation copy's labels beside its
 * envelope while still reading format 2's inbox records.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <lmdb.h>

#include "referral.h"
#include "state.h"

static char *make_dir(void)
{
    char tmpl[] = "/tmp/referral-state-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static void remove_dir(char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    remove(path);
    snprintf(path, sizeof path, "%s/lock.mdb", dir);
    remove(path);
    remove(dir);
    free(dir);
}

/* Write raw records with LMDB directly, as an older library would have. */
static void write_raw(const char *dir, const char *db, const uint8_t key[16], const void *v,
                      size_t len, const char *meta_format)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    assert_int_equal(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, db, MDB_CREATE, &dbi), 0);
    MDB_val k = {16, (void *)(uintptr_t)key}, val = {len, (void *)(uintptr_t)v};
    assert_int_equal(mdb_put(txn, dbi, &k, &val, 0), 0);
    if (meta_format != NULL) {
        MDB_dbi meta;
        assert_int_equal(mdb_dbi_open(txn, "meta", MDB_CREATE, &meta), 0);
        MDB_val mk = {6, "format"}, mv = {4, (void *)(uintptr_t)meta_format};
        assert_int_equal(mdb_put(txn, meta, &mk, &mv, 0), 0);
    }
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* state_inbox_each callback: copy each entry into an array. */
typedef struct {
    state_inbox_entry *out;
    size_t *n;
} entry_list;

static void keep_entry(const uint8_t id[16], const state_inbox_entry *e, void *ctx)
{
    (void)id;
    entry_list *l = ctx;
    l->out[(*l->n)++] = *e;
}

static void records_round_trip(void **unused)
{
    (void)unused;
    char *dir = make_dir(), why[256] = "";
    state *s = NULL;
    assert_int_equal(state_open(dir, &s, why, sizeof why), REF_OK);
    uint8_t id[16] = {1, 2, 3}, env[40] = {0x0a, 0x01, 0x00}, payload[100];
    memset(payload, 0x5a, sizeof payload);
    state_seen seen = {.forget_at_ms = 0x0102030405060708ull, .urgency = 4};
    memset(seen.referral_id, 7, 16);
    snprintf(seen.from, sizeof seen.from, "%s", "sh.12355.desk");
    state_inbox_entry e = {.kind = STATE_INBOX_ENVELOPE, .urgency = 4, .attempt = 3,
                           .payload = payload, .len = sizeof payload};
    state_txn *txn = NULL;
    assert_int_equal(state_begin(s, &txn), REF_OK);
    assert_int_equal(state_seen_put(txn, id, &seen), REF_OK);
    assert_int_equal(state_inbox_put(txn, id, &e), REF_OK);
    assert_int_equal(state_outbox_put(txn, id, env, sizeof env), REF_OK);
    state_seen got;
    assert_int_equal(state_seen_get(s, txn, id, &got), REF_OK);   /* sees its own write */
    assert_int_equal(state_commit(&txn), REF_OK);
    assert_null(txn);
    memset(&got, 0, sizeof got);
    assert_int_equal(state_seen_get(s, NULL, id, &got), REF_OK);
    assert_int_equal(got.forget_at_ms, seen.forget_at_ms);
    assert_memory_equal(got.referral_id, seen.referral_id, 16);
    assert_string_equal(got.from, "sh.12355.desk");
    assert_int_equal(got.urgency, 4);
    assert_int_equal(state_inbox_count(s), 1);
    assert_int_equal(state_outbox_count(s), 1);
    uint8_t other[16] = {9};
    assert_int_equal(state_seen_get(s, NULL, other, &got), REF_E_AGAIN);
    /* A deletion and an abort. */
    assert_int_equal(state_begin(s, &txn), REF_OK);
    assert_int_equal(state_inbox_del(txn, id), REF_OK);
    state_abort(&txn);
    assert_int_equal(state_inbox_count(s), 1);
    assert_int_equal(state_begin(s, &txn), REF_OK);
    assert_int_equal(state_inbox_del(txn, id), REF_OK);
    assert_int_equal(state_inbox_del(txn, other), REF_OK);   /* absent: fine */
    assert_int_equal(state_commit(&txn), REF_OK);
    assert_int_equal(state_inbox_count(s), 0);
    state_destroy(&s);
    assert_null(s);
    remove_dir(dir);
}

static void format_1_directory_is_migrated(void **unused)
{
    (void)unused;
    char *dir = make_dir(), why[256] = "";
    /* libreferral 0.1.0's seen record: the raw struct {u64 forget_at_ms;
     * u8 referral_id[16]; char from[65]; u8 urgency;} of x86-64 (96 bytes). */
    uint8_t legacy[96] = {0}, id[16] = {0xaa}, out_id[16] = {0xbb}, env[8] = {0x0a, 0};
    uint64_t forget = 4102444800000ull;
    memcpy(legacy, &forget, 8);
    memset(legacy + 8, 0x33, 16);
    memcpy(legacy + 24, "qd.police.shibei", 17);
    legacy[89] = 3;
    write_raw(dir, "seen", id, legacy, sizeof legacy, NULL);
    write_raw(dir, "outbox", out_id, env, sizeof env, NULL);
    state *s = NULL;
    assert_int_equal(state_open(dir, &s, why, sizeof why), REF_OK);
    state_seen got;
    assert_int_equal(state_seen_get(s, NULL, id, &got), REF_OK);
    assert_int_equal(got.forget_at_ms, forget);
    assert_string_equal(got.from, "qd.police.shibei");
    assert_int_equal(got.urgency, 3);
    assert_int_equal(got.referral_id[15], 0x33);
    assert_int_equal(state_outbox_count(s), 1);   /* queued referrals are kept */
    state_destroy(&s);
    /* Opening again finds format 2 and changes nothing. */
    assert_int_equal(state_open(dir, &s, why, sizeof why), REF_OK);
    assert_int_equal(state_seen_get(s, NULL, id, &got), REF_OK);
    assert_string_equal(got.from, "qd.police.shibei");
    state_destroy(&s);
    remove_dir(dir);
}

static void newer_format_is_refused_with_a_sentence(void **unused)
{
    (void)unused;
    char *dir = make_dir(), why[256] = "";
    uint8_t id[16] = {1};
    write_raw(dir, "outbox", id, "x", 1, "\x09\x00\x00\x00");
    state *s = NULL;
    assert_int_equal(state_open(dir, &s, why, sizeof why), REF_E_STATE);
    assert_null(s);
    assert_non_null(strstr(why, "newer libreferral"));
    remove_dir(dir);
}

static void inbox_entry_of_unknown_version_is_set_aside(void **unused)
{
    (void)unused;
    char *dir = make_dir(), why[256] = "";
    state *s = NULL;
    assert_int_equal(state_open(dir, &s, why, sizeof why), REF_OK);
    state_destroy(&s);
    uint8_t id[16] = {5}, future[12] = {99, 1, 1, 0, 0, 0, 0, 1, 2, 3, 4, 5};
    write_raw(dir, "inbox", id, future, sizeof future, NULL);
    uint8_t seen_junk[3] = {42, 0, 0};
    write_raw(dir, "seen", id, seen_junk, sizeof seen_junk, NULL);
    assert_int_equal(state_open(dir, &s, why, sizeof why), REF_OK);
    size_t unreadable = 0, called = 0;
    assert_int_equal(state_inbox_each(s, NULL, &called, &unreadable), REF_OK);
    assert_int_equal(unreadable, 1);
    state_seen got;
    /* Unreadable, but it says "received": never handed twice. */
    assert_int_equal(state_seen_get(s, NULL, id, &got), REF_E_PROTOCOL);
    state_destroy(&s);
    remove_dir(dir);
}

static void copy_labels_round_trip_in_the_inbox(void **unused)
{
    (void)unused;
    char *dir = make_dir(), why[256] = "";
    state *s = NULL;
    assert_int_equal(state_open(dir, &s, why, sizeof why), REF_OK);
    uint8_t id[16] = {0xc0}, plain_id[16] = {0xc1}, env[30];
    memset(env, 0x42, sizeof env);
    state_inbox_entry e = {.kind = STATE_INBOX_ENVELOPE, .urgency = 4, .attempt = 2,
                           .payload = env, .len = sizeof env, .is_copy = true,
                           .copy = {.step = 1, .round = 3}};
    memset(e.copy.attempt_id, 0xa7, 16);
    snprintf(e.copy.original_recipient, sizeof e.copy.original_recipient, "qd.youth-league");
    snprintf(e.copy.reason, sizeof e.copy.reason, "not acknowledged within 10 minutes");
    state_inbox_entry plain = {.kind = STATE_INBOX_NOTICE, .urgency = 3, .attempt = 1,
                               .payload = env, .len = 5};
    state_copy_ref ref = {.forget_at_ms = 4102444800000ull};
    memset(ref.copy_id, 0xc0, 16);
    memset(ref.attempt_id, 0xa7, 16);
    uint8_t env_mid[16] = {0xee};
    state_txn *txn = NULL;
    assert_int_equal(state_begin(s, &txn), REF_OK);
    assert_int_equal(state_inbox_put(txn, id, &e), REF_OK);
    assert_int_equal(state_inbox_put(txn, plain_id, &plain), REF_OK);
    assert_int_equal(state_copy_ref_put(txn, env_mid, &ref), REF_OK);
    plain.is_copy = true;   /* only an envelope can be a copy */
    assert_int_equal(state_inbox_put(txn, plain_id, &plain), REF_E_INVALID);
    assert_int_equal(state_commit(&txn), REF_OK);
    state_destroy(&s);
    assert_int_equal(state_open(dir, &s, why, sizeof why), REF_OK);
    state_inbox_entry got[2];
    size_t n = 0, unreadable = 0;
    assert_int_equal(state_inbox_each(s, keep_entry, &(entry_list){got, &n}, &unreadable),
                     REF_OK);
    assert_int_equal(unreadable, 0);
    assert_int_equal(n, 2);
    assert_true(got[0].is_copy);
    assert_int_equal(got[0].kind, STATE_INBOX_ENVELOPE);
    assert_int_equal(got[0].attempt, 2);
    assert_int_equal(got[0].copy.step, 1);
    assert_int_equal(got[0].copy.round, 3);
    assert_int_equal(got[0].copy.attempt_id[15], 0xa7);
    assert_string_equal(got[0].copy.original_recipient, "qd.youth-league");
    assert_string_equal(got[0].copy.reason, "not acknowledged within 10 minutes");
    assert_int_equal(got[0].len, sizeof env);
    assert_false(got[1].is_copy);
    assert_int_equal(got[1].len, 5);
    state_copy_ref r2;
    assert_int_equal(state_copy_ref_get(s, env_mid, &r2), REF_OK);
    assert_memory_equal(&r2, &ref, sizeof r2);
    assert_int_equal(state_copy_ref_get(s, id, &r2), REF_E_AGAIN);
    /* Forgotten after its time, like seen and sent. */
    assert_int_equal(state_prune(s, ref.forget_at_ms + 1), 1);
    assert_int_equal(state_copy_ref_get(s, env_mid, &r2), REF_E_AGAIN);
    state_destroy(&s);
    remove_dir(dir);
}

static void format_2_directory_keeps_its_inbox_and_becomes_format_3(void **unused)
{
    (void)unused;
    char *dir = make_dir(), why[256] = "";
    /* An inbox record of version 1, as format 2 wrote it: not a copy. */
    uint8_t id[16] = {0x21}, old[7 + 4] = {1, STATE_INBOX_ENVELOPE, 4, 9, 0, 0, 0, 1, 2, 3, 4};
    write_raw(dir, "inbox", id, old, sizeof old, "\x02\x00\x00\x00");
    /* A sent record naming 32 readers: format 3 keeps them all. */
    state *s = NULL;
    assert_int_equal(state_open(dir, &s, why, sizeof why), REF_OK);
    state_inbox_entry got[1];
    size_t n = 0, unreadable = 0;
    assert_int_equal(state_inbox_each(s, keep_entry, &(entry_list){got, &n}, &unreadable),
                     REF_OK);
    assert_int_equal(n, 1);
    assert_int_equal(unreadable, 0);
    assert_false(got[0].is_copy);
    assert_int_equal(got[0].attempt, 9);
    assert_int_equal(got[0].len, 4);
    state_sent sent = {.forget_at_ms = 4102444800000ull, .n = STATE_SENT_MAX};
    for (size_t i = 0; i < STATE_SENT_MAX; i++)
        snprintf(sent.agencies[i], sizeof sent.agencies[i], "qd.agency-%zu", i);
    state_txn *txn = NULL;
    assert_int_equal(state_begin(s, &txn), REF_OK);
    assert_int_equal(state_sent_put(txn, id, &sent), REF_OK);
    assert_int_equal(state_commit(&txn), REF_OK);
    state_sent back;
    assert_int_equal(state_sent_get(s, id, &back), REF_OK);
    assert_int_equal(back.n, STATE_SENT_MAX);
    assert_string_equal(back.agencies[31], "qd.agency-31");
    state_destroy(&s);
    MDB_env *env;
    MDB_txn *rt;
    MDB_dbi meta;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    assert_int_equal(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &rt), 0);
    assert_int_equal(mdb_dbi_open(rt, "meta", 0, &meta), 0);
    MDB_val k = {6, "format"}, v;
    assert_int_equal(mdb_get(rt, meta, &k, &v), 0);
    assert_int_equal(v.mv_size, 4);
    assert_int_equal(((const uint8_t *)v.mv_data)[0], STATE_FORMAT);
    mdb_txn_abort(rt);
    mdb_env_close(env);
    remove_dir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(records_round_trip),
        cmocka_unit_test(format_1_directory_is_migrated),
        cmocka_unit_test(newer_format_is_refused_with_a_sentence),
        cmocka_unit_test(inbox_entry_of_unknown_version_is_set_aside),
        cmocka_unit_test(copy_labels_round_trip_in_the_inbox),
        cmocka_unit_test(format_2_directory_keeps_its_inbox_and_becomes_format_3),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
