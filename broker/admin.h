/*
 * admin: the operators' socket (docs/operations.md, "The admin socket").
 *
 * A ZeroMQ ROUTER bound on ipc://[admin] socket (default: admin.sock in the
 * store directory, which the broker creates mode 0700), its file made
 * [admin] socket_mode (default 0600) right after the bind, before the loop
 * runs: the file system decides who may connect (the broker's user, or a
 * group the operator names). The ZAP handler admits the NULL mechanism on
 * this socket's domain only, so no agency key and no peer can reach it,
 * and nobody can reach the client or peer sockets without CURVE.
 *
 * Each AdminRequest (wire_decode_admin_request) names a command; the
 * handler runs inside the turn's write transaction, and its AdminReply is
 * sent after the commit, like every other answer of the broker. Actions
 * (hold, release, requeue, expire) are recorded in the referral's trace
 * with the operator's name and reason; every request is logged. A command
 * may answer later (trace, which asks the peer brokers): it returns
 * ADMIN_LATER and its module calls admin_reply() when the answer is
 * complete.
 */
#ifndef REF_BROKER_ADMIN_H
#define REF_BROKER_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>
#include <lmdb.h>

#include "link.h"
#include "referral.pb-c.h"
#include "store.h"

struct broker_s;
typedef struct admin admin;

/* Who asked, for a reply that comes later. */
typedef struct {
    uint8_t rid[LINK_RID_MAX];
    size_t rid_len;
    uint64_t request_id;
} admin_asker;

/* What a command handler fills: code OK (the default) or why not, a
 * sentence, and the JSON object of the result (created empty for it). */
typedef struct {
    Referral__V1__ResultCode code;
    char detail[512];
    json_object *json;
    bool is_later;                /* the handler will call admin_reply() itself */
} admin_result;

/* A command: runs in the turn's transaction (txn); rq is decoded and
 * checked; asker identifies it for a later answer. */
typedef store_err (*admin_fn)(struct broker_s *b, MDB_txn *txn,
                              const Referral__V1__AdminRequest *rq, const admin_asker *asker,
                              uint64_t now_ms, admin_result *res);

/* Bind the socket (why on failure: the path, the error and the fix). */
admin *admin_open(struct broker_s *b, char *why, size_t why_len);

/* Close the socket, remove its file; NULL-safe; nulls *a. */
void admin_close(admin **a);

/* The socket for zmq_poll, and its link (replies after the commit). */
void *admin_socket(admin *a);
broker_link *admin_link(admin *a);

/* Read what arrived (before the turn's transaction). */
void admin_read(struct broker_s *b);

/* Handle what was read, inside the turn's transaction. */
store_err admin_handle(struct broker_s *b, MDB_txn *txn, uint64_t now_ms);

/* Answer asker (queued for after the turn's commit); takes json. */
void admin_reply(struct broker_s *b, const admin_asker *asker, Referral__V1__ResultCode code,
                 const char *detail, json_object *json);

#endif
