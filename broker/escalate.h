/*
 * escalate: acknowledgement tracking and escalation (docs/escalation.md).
 *
 * Two watchers, one record each in the store's escalations database:
 *
 *   home      at the recipient's home broker, for every referral stored
 *             here for a local agency: the attempts (the recipient, then
 *             each copy), the highest level each reached and who asserted
 *             it, the policy copied in whole at creation, and the chain of
 *             agencies it may still be copied to. Levels come from the
 *             client's settle (DELIVERED, delivery.h's on_final) and from
 *             the agencies' signed receipts that passed the binding checks
 *             (ingress.c); a receipt counts only from an agency an attempt
 *             went to. At each step's due time the step's condition is
 *             checked against what was recorded, and its action taken:
 *             copies (new attempts of the same sealed envelope, the
 *             broker never reads it), alerts. The first agency to accept
 *             wins: other attempts still queued are withdrawn, those
 *             already handed over get a stand-down notice. A rejection or
 *             a fatal end of an attempt re-routes to the next agency of
 *             the chain and tells the sender; with nobody left it alerts
 *             the supervisor desk and the regional centre.
 *   watchdog  at the origin broker, for a referral submitted here for an
 *             agency homed elsewhere: when no word of it (receipt, notice,
 *             alert of the home broker) comes back by a deadline of the
 *             policy plus its grace, the sender's supervisor desk and the
 *             sender get a PARTITION alert; when word comes again, a
 *             stand-down notice ends it.
 *
 * Alerts are broker notices (NOTICE_KIND_ALERT, urgency crisis) signed
 * with the broker's key, naming the referral, the agency that did not
 * respond, the step and the directory's emergency numbers; they are
 * queued, delivered, redelivered and traced like any message. Every step,
 * copy, stand-down and level is a trace event of the referral.
 *
 * Layout (store.h, escalations): 'E' message id (17 bytes) -> the record
 * (version 1, written and read only here); 'A' attempt message id -> [0] 1
 * | [1] the referral message id; 'B' message id -> the envelope as stored,
 * written only when the original leaves its queue while the chain still has
 * agencies to copy to (until then copies read the original's body), and
 * deleted when no copy can be made any more; 'D' rank (0 crisis .. 3 routine) |
 * due_ms u64 | message id -> [0] 1. Each record has exactly one 'D' entry:
 * its next step, or at expires_at the end of the record (and the last
 * alert, if the chain had not ended). Deadlines are popped crisis first,
 * then by due time, so a backlog of routine deadlines never delays a
 * crisis; one that passed while the broker was down fires at start, once
 * (firing moves it in the same transaction). A record that does not
 * decode is set aside in quarantine, never a crash loop.
 */
#ifndef REF_BROKER_ESCALATE_H
#define REF_BROKER_ESCALATE_H

#include <stdbool.h>
#include <stdint.h>

#include "delivery.h"
#include "directory.h"
#include "policy.h"
#include "referral.pb-c.h"
#include "store.h"

typedef struct {
    store *st;                        /* borrowed */
    const delivery_ctx *dc;           /* borrowed: queues copies and alerts */
    const policy_set *policies;       /* borrowed */
    directory *const *dir;            /* borrowed: the broker's current directory */
    const char *broker_id;            /* borrowed */
} escalate_ctx;

/* A referral message was stored here (in txn, which is the submission's
 * child transaction): start watching it. sealed/sealed_len are the
 * envelope's sealed body, already decoded by ingress (only its list of
 * readers is read: whom the sender sealed it for); is_home: its recipient is
 * an agency of this broker; is_submitted: it came from the sender's own
 * session (else a peer forwarded it). Only REFERRAL messages are watched; a
 * home broker starts the home watcher, an origin broker of a referral homed
 * elsewhere the watchdog. */
store_err escalate_on_referral(const escalate_ctx *ec, MDB_txn *txn,
                               const Referral__V1__RoutingHeader *h, const uint8_t *sealed,
                               size_t sealed_len, bool is_home, bool is_submitted,
                               uint64_t now_ms);

/* A receipt h passed the binding checks and is stored: record its level
 * for its signer's attempt (home) or as word from afar (watchdog). */
store_err escalate_on_receipt(const escalate_ctx *ec, MDB_txn *txn,
                              const Referral__V1__RoutingHeader *h, uint64_t now_ms);

/* A peer relayed notice n about a message sent from here: word from afar
 * for the watchdog. The caller has checked n's signature against the key
 * of its broker in the directory (peer.c); a notice counts only from the
 * home broker of the referral's recipient. */
store_err escalate_on_notice(const escalate_ctx *ec, MDB_txn *txn, const Referral__V1__Notice *n,
                             uint64_t now_ms);

/* delivery_ctx.on_final: message m reached a final state (DELIVERED by the
 * client's settle, or a fatal end) - a level or a re-route for its attempt.
 * ctx is the escalate_ctx. */
store_err escalate_on_final(void *ctx, MDB_txn *txn, const store_msg *m, uint64_t now_ms);

/* delivery_ctx.keep_body: message m is about to leave its queue (and its
 * body the store). When m is the original attempt of a referral whose chain
 * may still copy it, the envelope is kept for those copies ('B'). */
store_err escalate_keep_body(void *ctx, MDB_txn *txn, const store_msg *m);

/* Act on at most max due deadlines, crisis first. *n_fired and
 * *worst_late_ms (may be NULL) get how many fired and the latest one's
 * lateness. *has_more is set when max were due. */
store_err escalate_fire(const escalate_ctx *ec, MDB_txn *txn, uint64_t now_ms, uint32_t max,
                        uint32_t *n_fired, uint64_t *worst_late_ms, bool *has_more);

/* The earliest due time of any escalation, STORE_NOT_FOUND if none. */
store_err escalate_next_due(const escalate_ctx *ec, MDB_txn *txn, uint64_t *due_ms);

/* Test-only (the fuzz target test/fuzz/fuzz_escalation_record.c): decode
 * buf/len as a stored escalation record into a local record and return
 * whether it decoded; when not, why (size why_len) says why. The broker
 * itself reads records only through its own loader. */
bool escalate_record_check(const uint8_t *buf, size_t len, char *why, size_t why_len);

#endif
