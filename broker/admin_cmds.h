/*
 * admin_cmds: the listings and actions of the operators' socket (admin.h;
 * the JSON shapes are in docs/operations.md, "The admin socket"). Each is
 * an admin_fn: it runs in the turn's transaction and fills res->json.
 */
#ifndef REF_BROKER_ADMIN_CMDS_H
#define REF_BROKER_ADMIN_CMDS_H

#include "admin.h"

store_err admin_cmd_status(struct broker_s *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                           const admin_asker *asker, uint64_t now_ms, admin_result *res);
store_err admin_cmd_queues(struct broker_s *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                           const admin_asker *asker, uint64_t now_ms, admin_result *res);
store_err admin_cmd_oldest(struct broker_s *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                           const admin_asker *asker, uint64_t now_ms, admin_result *res);
store_err admin_cmd_peers(struct broker_s *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                          const admin_asker *asker, uint64_t now_ms, admin_result *res);
store_err admin_cmd_undeliverable(struct broker_s *b, MDB_txn *txn,
                                  const Referral__V1__AdminRequest *rq, const admin_asker *asker,
                                  uint64_t now_ms, admin_result *res);
store_err admin_cmd_expired(struct broker_s *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                            const admin_asker *asker, uint64_t now_ms, admin_result *res);
store_err admin_cmd_show(struct broker_s *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                         const admin_asker *asker, uint64_t now_ms, admin_result *res);
store_err admin_cmd_hold(struct broker_s *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                         const admin_asker *asker, uint64_t now_ms, admin_result *res);
store_err admin_cmd_release(struct broker_s *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                            const admin_asker *asker, uint64_t now_ms, admin_result *res);
store_err admin_cmd_requeue(struct broker_s *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                            const admin_asker *asker, uint64_t now_ms, admin_result *res);
store_err admin_cmd_expire(struct broker_s *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                           const admin_asker *asker, uint64_t now_ms, admin_result *res);

#endif
