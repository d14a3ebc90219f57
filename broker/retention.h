/*
 * retention: the bounded background sweep that removes what the broker no
 * longer needs to keep (DESIGN.md "Retention"; docs/operations.md
 * "Retention" for operators).
 *
 * What is kept, and how long (times from the store's records):
 *
 *   sealed body      body_grace_ms after its message's final move (delivery.c,
 *                    a DEADLINE_BODY deadline; 0: in the move's own commit).
 *                    Not this sweep's work, except a body left behind.
 *   message record   (msgs) with its dedup entry, levels, refmsgs entry and
 *                    any queue/inflight/body leftover: until the message has
 *                    been final for keep_ms (updated_at_ms + keep_ms) AND
 *                    its dedup forget time (expires_at_ms + clock_skew_ms)
 *                    has passed, whichever is later. A message that is not
 *                    final is never removed, however old.
 *   referral         its trace and its referrals record: once no message of
 *                    it is left (its refmsgs range is empty), which means
 *                    every message of it was final and older than keep_ms.
 *   quarantine       set-aside records: keep_ms after they were set aside;
 *                    quarantined bodies body_grace_ms after.
 *   orphans          a dedup entry past its forget time whose message record
 *                    is gone; a levels or refmsgs entry whose message record
 *                    is gone and no longer in quarantine: removed.
 *
 * The sweep is one step of each loop turn (loop.c), inside the turn's one
 * transaction, after deliveries and deadlines: it removes at most
 * max_per_turn items (a message with its satellites, a trace event, a
 * referrals record, a quarantine or orphan entry), looks at most
 * 4 * max_per_turn keys, and stops at until_mono_ms. It walks the
 * databases in key order with a cursor kept in memory, phase after phase;
 * the next turn resumes there. A pass that reaches the end waits
 * interval_ms before the next (a restart begins a new pass at once).
 *
 * It must never remove a record of a message that is not final, a dedup
 * entry before its forget time, or a referral's trace while any of its
 * messages is kept.
 */
#ifndef REF_BROKER_RETENTION_H
#define REF_BROKER_RETENTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

typedef struct {
    uint64_t keep_ms;          /* [retention] keep_ms */
    uint64_t body_grace_ms;    /* [retention] body_grace_ms (quarantined bodies) */
    uint64_t clock_skew_ms;    /* [limits] clock_skew_ms: dedup lives to expires_at + this */
    uint32_t max_per_turn;     /* [retention] max_per_turn, at least 1 */
    uint64_t interval_ms;      /* [retention] sweep_interval_ms: between passes */
} retention_options;

/* What one pass removed (logged when it ends). */
typedef struct {
    uint64_t msgs, trace, referrals, quarantine, orphans;
} retention_counts;

typedef struct retention retention;

/* A sweep that starts its first pass at the first step. NULL if out of
 * memory; caller frees with retention_destroy. */
retention *retention_new(const retention_options *opt);

/* NULL-safe; nulls *r. */
void retention_destroy(retention **r);

/*
 * Sweep within the bounds above, in txn (the turn's write transaction).
 * *n_removed counts the items removed; *has_more is true while the pass
 * has work left (the loop then polls without sleeping). Store faults are
 * returned (the turn fails as for any other step); nothing is skipped
 * silently: a record that does not decode is left alone, or set aside by
 * its own decoder (store_msg_get).
 */
store_err retention_step(retention *r, store *s, MDB_txn *txn, uint64_t now_ms,
                         uint64_t until_mono_ms, size_t *n_removed, bool *has_more);

/* Wall-clock time at which the next step has work: now while a pass runs. */
uint64_t retention_next_ms(const retention *r);

/* What the pass in progress (or the last one) removed so far. */
retention_counts retention_pass_counts(const retention *r);

#endif
