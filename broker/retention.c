/*
 * retention: the bounded background sweep (retention.h).
 *
 * Each step reads a batch of keys of the current phase's database (keys
 * copied out, the cursor closed), then judges each key by itself through
 * the store's own functions, so no cursor is open while records change.
 * The position is the last key judged; the next batch starts after it.
 *
 * This file must never remove a message that is not final, a dedup entry
 * before its forget time, or the trace of a referral with a message still
 * kept; and it must never take more than its bounds from a turn.
 */
#include "retention.h"

#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "delivery.h"
#include "log.h"
#include "queue.h"

/* The databases in the order a pass walks them: messages first (their
 * removal empties referrals), then leftovers, then referrals and their
 * trace, then quarantine. */
typedef enum {
    PHASE_MSGS,
    PHASE_REFMSGS,
    PHASE_LEVELS,
    PHASE_DEDUP,
    PHASE_REFERRALS,
    PHASE_TRACE,
    PHASE_QUARANTINE,
    PHASE_COUNT
} phase;

static const store_db phase_db[PHASE_COUNT] = {
    STORE_DB_MSGS, STORE_DB_REFMSGS, STORE_DB_LEVELS, STORE_DB_DEDUP, STORE_DB_REFERRALS,
    STORE_DB_TRACE, STORE_DB_QUARANTINE,
};

#define KEY_MAX 511          /* LMDB's longest key */
#define VAL_HEAD 48          /* what a judge reads of a value (dedup: 41, quarantine: 9) */
#define BATCH 64

typedef struct {
    uint8_t key[KEY_MAX];
    size_t key_len;
    uint8_t val[VAL_HEAD];
    size_t val_len;
} item;

struct retention {
    retention_options opt;
    bool is_running;            /* a pass is in progress */
    uint64_t next_pass_ms;      /* wall clock; 0: at the first step */
    phase ph;
    bool has_pos;               /* pos holds where the phase's walk goes on */
    uint8_t pos[KEY_MAX + 9];
    size_t pos_len;
    retention_counts counts;    /* of the pass in progress */
    uint64_t pass_started_mono_ms;
    item batch[BATCH];
};

retention *retention_new(const retention_options *opt)
{
    retention *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->opt = *opt;
    if (r->opt.max_per_turn == 0)
        r->opt.max_per_turn = 1;
    return r;
}

void retention_destroy(retention **r)
{
    if (r == NULL || *r == NULL)
        return;
    free(*r);
    *r = NULL;
}

uint64_t retention_next_ms(const retention *r)
{
    return r->is_running ? 0 : r->next_pass_ms;
}

retention_counts retention_pass_counts(const retention *r)
{
    return r->counts;
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
    return a + b < a ? UINT64_MAX : a + b;
}

#define TRY(expr) do { store_err e_ = (expr); if (e_ != STORE_OK) return e_; } while (0)
#define TRY_FOUND(expr) do { store_err e_ = (expr); \
    if (e_ != STORE_OK && e_ != STORE_NOT_FOUND) return e_; } while (0)

/* ---- reading a batch ------------------------------------------------------ */

/* Where the walk goes after item it: past the key, or, in the trace
 * (referral id, seq), past every event of that referral. */
static void set_pos_after(retention *r, const item *it)
{
    memcpy(r->pos, it->key, it->key_len);
    r->pos_len = it->key_len;
    if (r->ph == PHASE_TRACE && it->key_len >= IDS_BYTES) {
        /* referral id then nine 0xff: above every 24-byte key of it */
        memset(r->pos + IDS_BYTES, 0xff, 9);
        r->pos_len = IDS_BYTES + 9;
    }
    r->has_pos = true;
}

/* Read up to max keys of the phase's database from the position. */
static store_err read_batch(retention *r, store *s, MDB_txn *txn, size_t max, size_t *n,
                            bool *is_at_end)
{
    MDB_cursor *c;
    *n = 0;
    *is_at_end = false;
    int rc = mdb_cursor_open(txn, store_dbi(s, phase_db[r->ph]), &c);
    if (rc != 0)
        return store_err_from_mdb(rc);
    MDB_val k, v;
    if (r->has_pos) {
        k.mv_size = r->pos_len;
        k.mv_data = r->pos;
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        if (rc == 0 && k.mv_size == r->pos_len && memcmp(k.mv_data, r->pos, r->pos_len) == 0)
            rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);   /* judged already */
    } else {
        rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    }
    while (rc == 0 && *n < max) {
        item *it = &r->batch[(*n)++];
        it->key_len = k.mv_size < KEY_MAX ? k.mv_size : KEY_MAX;
        memcpy(it->key, k.mv_data, it->key_len);
        it->val_len = v.mv_size < VAL_HEAD ? v.mv_size : VAL_HEAD;
        memcpy(it->val, v.mv_data, it->val_len);
        if (r->ph == PHASE_TRACE && it->key_len >= IDS_BYTES) {
            uint8_t next[IDS_BYTES + 9];
            memcpy(next, it->key, IDS_BYTES);
            memset(next + IDS_BYTES, 0xff, 9);
            k.mv_size = sizeof next;
            k.mv_data = next;
            rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        } else {
            rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
        }
    }
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND)
        *is_at_end = true;
    else if (rc != 0)
        return store_err_from_mdb(rc);
    return STORE_OK;
}

/* ---- judging one key ------------------------------------------------------ */

/* Is there a message record of id? (One that does not decode is set aside
 * by store_msg_get and counts as gone.) */
static store_err has_msg(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES], bool *has)
{
    store_msg m;
    store_err e = store_msg_get(s, txn, id, &m);
    *has = e == STORE_OK;
    return e == STORE_NOT_FOUND ? STORE_OK : e;
}

/* A message record: remove it with its satellites once final for keep_ms
 * and past its dedup forget time. */
static store_err judge_msg(retention *r, store *s, MDB_txn *txn, const item *it, uint64_t now_ms,
                           size_t *removed)
{
    store_msg m;
    if (it->key_len != IDS_BYTES)
        return STORE_OK;
    store_err e = store_msg_get(s, txn, it->key, &m);
    if (e == STORE_NOT_FOUND)
        return STORE_OK;
    if (e != STORE_OK)
        return e;
    uint64_t kept_until = add_sat(m.updated_at_ms, r->opt.keep_ms);
    uint64_t forget_at = add_sat(m.expires_at_ms, r->opt.clock_skew_ms);
    if (!delivery_is_final(m.state) || now_ms < kept_until || now_ms < forget_at)
        return STORE_OK;
    TRY(store_msg_del(s, txn, m.id));
    TRY_FOUND(store_dedup_del(s, txn, m.id));
    TRY_FOUND(store_body_del(s, txn, m.id));
    TRY_FOUND(queue_remove(s, txn, &m));
    TRY_FOUND(inflight_del(s, txn, m.id));
    size_t n_levels;
    TRY(store_levels_del(s, txn, m.id, &n_levels));
    TRY_FOUND(store_refmsg_del(s, txn, m.referral_id, m.id));
    r->counts.msgs++;
    *removed = 1;
    return STORE_OK;
}

/* A refmsgs, levels or dedup entry whose message record is gone. */
static store_err judge_orphan(retention *r, store *s, MDB_txn *txn, const item *it,
                              uint64_t now_ms, size_t *removed)
{
    const uint8_t *id;
    if (r->ph == PHASE_REFMSGS && it->key_len == 2 * IDS_BYTES) {
        id = it->key + IDS_BYTES;
    } else if (r->ph == PHASE_LEVELS && it->key_len > IDS_BYTES) {
        id = it->key;
    } else if (r->ph == PHASE_DEDUP && it->key_len == IDS_BYTES &&
               it->val_len == 1 + DIGEST_BYTES + 8 && it->val[0] == STORE_RECORD_V1) {
        if (now_ms < store_get_u64(it->val + 1 + DIGEST_BYTES))
            return STORE_OK;   /* never before its forget time */
        id = it->key;
    } else {
        return STORE_OK;   /* not ours to judge (an unreadable dedup entry waits for its
                              DEADLINE_FORGET) */
    }
    bool has;
    TRY(has_msg(s, txn, id, &has));
    if (has)
        return STORE_OK;
    if (r->ph != PHASE_DEDUP) {
        /* A record set aside is kept keep_ms in quarantine: so is what
         * ties its referral to it (the trace stays while it does). */
        TRY(store_is_set_aside(s, txn, STORE_DB_MSGS, id, IDS_BYTES, &has));
        if (has)
            return STORE_OK;
    }
    TRY(store_del(s, txn, phase_db[r->ph], it->key, it->key_len));
    r->counts.orphans++;
    *removed = 1;
    return STORE_OK;
}

/* A referral (from its record or its trace): once no message of it is
 * left, its trace events (as many as budget allows) then its record.
 * *is_done false: budget ran out, come back to it. */
static store_err judge_referral(retention *r, store *s, MDB_txn *txn, const item *it,
                                size_t budget, size_t *removed, bool *is_done)
{
    if (it->key_len < IDS_BYTES || (r->ph == PHASE_REFERRALS && it->key_len != IDS_BYTES))
        return STORE_OK;
    bool has_msgs;
    TRY(store_referral_has_msgs(s, txn, it->key, &has_msgs));
    if (has_msgs)
        return STORE_OK;
    size_t n;
    bool is_trace_done;
    TRY(store_trace_del(s, txn, it->key, budget, &n, &is_trace_done));
    r->counts.trace += n;
    *removed = n;
    if (!is_trace_done || n == budget) {
        *is_done = false;
        return STORE_OK;
    }
    store_err e = store_referral_del(s, txn, it->key);
    if (e == STORE_OK) {
        r->counts.referrals++;
        (*removed)++;
    }
    return e == STORE_NOT_FOUND ? STORE_OK : e;
}

/* A quarantine entry: [0] 1 | [1] set_aside_at_ms; the key's first byte
 * names the database it came from. Everything set aside, bodies included,
 * is kept keep_ms for operators: a body set aside with an unreadable
 * record may be the only copy of an accepted referral, so body_grace_ms
 * (for bodies of final messages) does not apply here. */
static store_err judge_quarantine(retention *r, store *s, MDB_txn *txn, const item *it,
                                  uint64_t now_ms, size_t *removed)
{
    if (it->key_len < 1 || it->val_len < 9 || it->val[0] != STORE_RECORD_V1)
        return STORE_OK;
    if (now_ms < add_sat(store_get_u64(it->val + 1), r->opt.keep_ms))
        return STORE_OK;
    TRY(store_del(s, txn, STORE_DB_QUARANTINE, it->key, it->key_len));
    r->counts.quarantine++;
    *removed = 1;
    return STORE_OK;
}

static store_err judge(retention *r, store *s, MDB_txn *txn, const item *it, uint64_t now_ms,
                       size_t budget, size_t *removed, bool *is_done)
{
    *removed = 0;
    *is_done = true;
    switch (r->ph) {
    case PHASE_MSGS: return judge_msg(r, s, txn, it, now_ms, removed);
    case PHASE_REFMSGS:
    case PHASE_LEVELS:
    case PHASE_DEDUP: return judge_orphan(r, s, txn, it, now_ms, removed);
    case PHASE_REFERRALS:
    case PHASE_TRACE: return judge_referral(r, s, txn, it, budget, removed, is_done);
    case PHASE_QUARANTINE: return judge_quarantine(r, s, txn, it, now_ms, removed);
    case PHASE_COUNT: break;
    }
    return STORE_OK;
}

/* ---- the step ------------------------------------------------------------- */

static void end_pass(retention *r, uint64_t now_ms)
{
    r->is_running = false;
    r->next_pass_ms = add_sat(now_ms, r->opt.interval_ms);
    const retention_counts *n = &r->counts;
    if (n->msgs + n->trace + n->referrals + n->quarantine + n->orphans == 0)
        return;
    log_info("retention", "sweep pass done msgs=%llu trace_events=%llu referrals=%llu "
             "quarantine=%llu orphans=%llu ms=%llu", (unsigned long long)n->msgs,
             (unsigned long long)n->trace, (unsigned long long)n->referrals,
             (unsigned long long)n->quarantine, (unsigned long long)n->orphans,
             (unsigned long long)(clock_mono_ms() - r->pass_started_mono_ms));
}

store_err retention_step(retention *r, store *s, MDB_txn *txn, uint64_t now_ms,
                         uint64_t until_mono_ms, size_t *n_removed, bool *has_more)
{
    *n_removed = 0;
    *has_more = false;
    if (!r->is_running) {
        if (now_ms < r->next_pass_ms)
            return STORE_OK;
        r->is_running = true;
        r->ph = 0;
        r->has_pos = false;
        memset(&r->counts, 0, sizeof r->counts);
        r->pass_started_mono_ms = clock_mono_ms();
    }
    size_t budget = r->opt.max_per_turn;
    size_t looks = 4 * (size_t)r->opt.max_per_turn;
    while (budget > 0 && looks > 0) {
        size_t n;
        bool is_at_end;
        TRY(read_batch(r, s, txn, looks < BATCH ? looks : BATCH, &n, &is_at_end));
        looks -= n;
        for (size_t i = 0; i < n; i++) {
            size_t removed;
            bool is_done;
            TRY(judge(r, s, txn, &r->batch[i], now_ms, budget, &removed, &is_done));
            budget -= removed;
            *n_removed += removed;
            if (!is_done) {   /* budget spent inside this key: resume at it */
                *has_more = true;
                return STORE_OK;
            }
            set_pos_after(r, &r->batch[i]);
            if (budget == 0 && (i + 1 < n || !is_at_end)) {
                *has_more = true;
                return STORE_OK;
            }
        }
        if (is_at_end) {
            r->has_pos = false;
            if (++r->ph == PHASE_COUNT) {
                end_pass(r, now_ms);
                return STORE_OK;
            }
        }
        if (clock_mono_ms() >= until_mono_ms)
            break;
    }
    *has_more = true;
    return STORE_OK;
}
