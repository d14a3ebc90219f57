/*
 * admin_cmds: the listings and actions of the operators' socket
 * (admin_cmds.h).
 */
#include "admin_cmds.h"

#include <stdio.h>
#include <string.h>

#include "broker.h"
#include "ref_version.h"

#define R(x) REFERRAL__V1__RESULT_CODE__RESULT_##x

store_err admin_cmd_status(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                           const admin_asker *asker, uint64_t now_ms, admin_result *res)
{
    (void)txn;
    (void)rq;
    (void)asker;
    uint64_t used, map;
    store_usage(b->st, &used, &map);
    json_object_object_add(res->json, "broker", json_object_new_string(b->cfg.id));
    json_object_object_add(res->json, "version", json_object_new_string(REF_VERSION));
    json_object_object_add(res->json, "now_ms", json_object_new_int64((int64_t)now_ms));
    json_object_object_add(res->json, "sessions", json_object_new_int64((int64_t)b->sessions.count));
    json_object_object_add(res->json, "store_used_bytes", json_object_new_int64((int64_t)used));
    json_object_object_add(res->json, "store_map_bytes", json_object_new_int64((int64_t)map));
    return STORE_OK;
}

/* Not built yet: each answers so, never a pretended result. */
#define NOT_YET(name)                                                                       \
    store_err name(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,          \
                   const admin_asker *asker, uint64_t now_ms, admin_result *res)            \
    {                                                                                       \
        (void)b; (void)txn; (void)asker; (void)now_ms;                                      \
        res->code = R(INVALID_FIELD);                                                       \
        snprintf(res->detail, sizeof res->detail, "%s is not built yet", rq->command);      \
        return STORE_OK;                                                                    \
    }
NOT_YET(admin_cmd_queues)
NOT_YET(admin_cmd_oldest)
NOT_YET(admin_cmd_peers)
NOT_YET(admin_cmd_undeliverable)
NOT_YET(admin_cmd_expired)
NOT_YET(admin_cmd_show)
NOT_YET(admin_cmd_hold)
NOT_YET(admin_cmd_release)
NOT_YET(admin_cmd_requeue)
NOT_YET(admin_cmd_expire)
