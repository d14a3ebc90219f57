/*
 * trace: a referral's events gathered from every broker it touched
 * (docs/operations.md, "referral-trace").
 *
 * The admin command "trace" (trace_admin_command) answers with this
 * broker's events of the referral and those of the peer brokers it
 * exchanged the referral's messages with: each is asked a TraceQuery over
 * its federation link and asks its own such peers in turn (the query's
 * visited list keeps any broker from being asked twice), answering with
 * everything it gathered. A peer is answered only about a referral whose
 * messages this broker forwarded to it or received from it; every query is
 * logged at each broker. A peer that does not answer within its share of
 * the time is named in the reply's unanswered list: the operator sees what
 * is missing, never a silently shorter timeline.
 */
#ifndef REF_BROKER_TRACE_H
#define REF_BROKER_TRACE_H

#include "admin.h"

typedef struct trace_set trace_set;

trace_set *trace_set_new(void);
void trace_set_destroy(trace_set **ts);

/* admin_fn for "trace" (rq->id: the referral id). */
store_err trace_admin_command(struct broker_s *b, MDB_txn *txn,
                              const Referral__V1__AdminRequest *rq, const admin_asker *asker,
                              uint64_t now_ms, admin_result *res);

/* A peer's TraceQuery (peer: its broker id; rid: its routing id on the
 * peer socket, for the answer), inside the turn's transaction. */
store_err trace_peer_query(struct broker_s *b, MDB_txn *txn, const char *peer,
                           const uint8_t *rid, size_t rid_len, const Referral__V1__TraceQuery *q,
                           uint64_t now_ms);

/* A peer's TraceReply to a query of ours. */
void trace_peer_reply(struct broker_s *b, const char *peer, const Referral__V1__TraceReply *r);

/* Answer what is complete or out of time (every turn). */
void trace_tick(struct broker_s *b);

#endif
