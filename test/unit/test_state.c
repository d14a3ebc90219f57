/*
 * test_state: libreferral's state directory (client-lib/state.c): records
 * round-trip through their explicit encoding, a directory written by
 * libreferral 0.1.0 (format 1: raw structs) is migrated at open and keeps
 * its outbox and received ids, a newer format is refused with a sentence,
 * and an inbox entry of an unknown record version is set aside, not a
 * crash.
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
    state_inbox_entry e = {STATE_INBOX_ENVELOPE, 4, 3, payload, sizeof payload};
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(records_round_trip),
        cmocka_unit_test(format_1_directory_is_migrated),
        cmocka_unit_test(newer_format_is_refused_with_a_sentence),
        cmocka_unit_test(inbox_entry_of_unknown_version_is_set_aside),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
