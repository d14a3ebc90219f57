/*
 * admin: the operators' socket (admin.h). Commands are in the table
 * below; their handlers in admin_cmds.c (listings and actions) and
 * trace.c (a referral's events across brokers).
 */
#include "admin.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "admin_cmds.h"
#include "broker.h"
#include "clock.h"
#include "ids.h"
#include "log.h"
#include "trace.h"
#include "wire.h"
#include "zap.h"

#define R(x) REFERRAL__V1__RESULT_CODE__RESULT_##x
#define MAX_PENDING 64            /* requests read in one turn */

typedef struct {
    admin_asker asker;
    Referral__V1__AdminRequest *rq;   /* owned */
} pending;

struct admin {
    void *sock;
    char path[600];
    broker_link out;
    pending pending[MAX_PENDING];
    size_t n_pending;
};

typedef struct {
    const char *name;
    admin_fn fn;
    bool is_action;               /* changes state: operator and reason are required */
} admin_command;

static const admin_command commands[] = {
    {"status", admin_cmd_status, false},
    {"queues", admin_cmd_queues, false},
    {"oldest", admin_cmd_oldest, false},
    {"peers", admin_cmd_peers, false},
    {"undeliverable", admin_cmd_undeliverable, false},
    {"expired", admin_cmd_expired, false},
    {"show", admin_cmd_show, false},
    {"hold", admin_cmd_hold, true},
    {"release", admin_cmd_release, true},
    {"requeue", admin_cmd_requeue, true},
    {"expire", admin_cmd_expire, true},
    {"trace", trace_admin_command, false},
};

/* Replies are not deliveries: nothing to count, nothing to return. */
static bool reply_is_wanted(void *ctx, const link_frame *f)
{
    (void)ctx;
    (void)f;
    return true;
}

static void reply_done(void *ctx, const link_frame *f)
{
    (void)ctx;
    (void)f;
}

static void asker_gone(void *ctx, const uint8_t *rid, size_t rid_len, const char *why)
{
    (void)ctx;
    (void)rid;
    (void)rid_len;
    log_warn("admin", "an operator's tool stopped reading: %s", why);
}

static const link_ops admin_link_ops = {reply_is_wanted, reply_done, reply_done, asker_gone};

admin *admin_open(broker *b, char *why, size_t why_len)
{
    admin *a = calloc(1, sizeof *a);
    if (a == NULL) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    if (b->cfg.admin_socket[0] != '\0')
        snprintf(a->path, sizeof a->path, "%s", b->cfg.admin_socket);
    else
        snprintf(a->path, sizeof a->path, "%s/admin.sock", b->cfg.data_dir);
    char endpoint[620];
    snprintf(endpoint, sizeof endpoint, "ipc://%s", a->path);
    a->sock = zmq_socket(b->zctx, ZMQ_ROUTER);
    int one = 1, linger = 0;
    if (a->sock == NULL ||
        zmq_setsockopt(a->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0 ||
        zmq_setsockopt(a->sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(a->sock, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN_ADMIN,
                       strlen(ZAP_DOMAIN_ADMIN)) != 0) {
        snprintf(why, why_len, "cannot make the admin socket: %s", zmq_strerror(errno));
        admin_close(&a);
        return NULL;
    }
    /* A file left by a broker that was killed would make the bind fail;
     * the store's lock (one broker per store) says none runs here. */
    if (unlink(a->path) != 0 && errno != ENOENT) {
        snprintf(why, why_len, "cannot remove the old admin socket %s: %s", a->path,
                 strerror(errno));
        admin_close(&a);
        return NULL;
    }
    mode_t old = umask(0077);   /* no window in which the file is open to others */
    int rc = zmq_bind(a->sock, endpoint);
    int bind_errno = errno;
    umask(old);
    if (rc != 0 || chmod(a->path, b->cfg.admin_group_access ? 0660 : 0600) != 0) {
        snprintf(why, why_len, "cannot bind the admin socket %s: %s; set [admin] socket to a "
                 "path in a directory the broker may write (at most 100 characters)", a->path,
                 rc != 0 ? zmq_strerror(bind_errno) : strerror(errno));
        admin_close(&a);
        return NULL;
    }
    link_init(&a->out, "admin", a->sock, b->cfg.max_hold_ms, b->cfg.max_held_frames,
              &admin_link_ops, b);
    log_info("admin", "operators' socket on %s mode=%s", a->path,
             b->cfg.admin_group_access ? "0660" : "0600");
    return a;
}

void admin_close(admin **ap)
{
    admin *a = ap != NULL ? *ap : NULL;
    if (a == NULL)
        return;
    for (size_t i = 0; i < a->n_pending; i++)
        wire_free(a->pending[i].rq);
    link_free(&a->out);
    if (a->sock != NULL) {
        zmq_close(a->sock);
        unlink(a->path);
    }
    free(a);
    *ap = NULL;
}

void *admin_socket(admin *a)
{
    return a != NULL ? a->sock : NULL;
}

broker_link *admin_link(admin *a)
{
    return a != NULL ? &a->out : NULL;
}

static void send_reply(broker *b, const admin_asker *asker, Referral__V1__ResultCode code,
                       const char *detail, const char *json)
{
    Referral__V1__AdminReply r = REFERRAL__V1__ADMIN_REPLY__INIT;
    r.version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    r.request_id = asker->request_id;
    r.code = code;
    r.detail = (char *)(uintptr_t)detail;
    r.json = (char *)(uintptr_t)(json != NULL ? json : "{}");
    size_t len;
    uint8_t *buf = wire_pack(&r, &len);
    if (buf != NULL)
        link_queue(&b->admin->out, asker->rid, asker->rid_len, buf, len);
}

void admin_reply(broker *b, const admin_asker *asker, Referral__V1__ResultCode code,
                 const char *detail, json_object *json)
{
    send_reply(b, asker, code, detail,
               json != NULL ? json_object_to_json_string_ext(json, JSON_C_TO_STRING_PLAIN)
                            : NULL);
    json_object_put(json);
}

void admin_read(broker *b)
{
    admin *a = b->admin;
    if (a == NULL)
        return;
    while (a->n_pending < MAX_PENDING) {
        zmq_msg_t rid, data;
        zmq_msg_init(&rid);
        zmq_msg_init(&data);
        if (zmq_msg_recv(&rid, a->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&rid);
            zmq_msg_close(&data);
            return;
        }
        int more = 0;
        size_t more_len = sizeof more;
        zmq_getsockopt(a->sock, ZMQ_RCVMORE, &more, &more_len);
        bool is_two = more && zmq_msg_recv(&data, a->sock, ZMQ_DONTWAIT) >= 0;
        for (more = is_two; more;) {   /* a third part: drain the message */
            zmq_getsockopt(a->sock, ZMQ_RCVMORE, &more, &more_len);
            if (more) {
                zmq_msg_t x;
                zmq_msg_init(&x);
                zmq_msg_recv(&x, a->sock, ZMQ_DONTWAIT);
                zmq_msg_close(&x);
                is_two = false;
            }
        }
        pending *p = &a->pending[a->n_pending];
        memset(&p->asker, 0, sizeof p->asker);
        p->asker.rid_len = zmq_msg_size(&rid) < LINK_RID_MAX ? zmq_msg_size(&rid) : 0;
        memcpy(p->asker.rid, zmq_msg_data(&rid), p->asker.rid_len);
        char why[300] = "";
        wire_err e = is_two ? wire_decode_admin_request(zmq_msg_data(&data), zmq_msg_size(&data),
                                                        &p->rq, why, sizeof why)
                            : WIRE_MALFORMED;
        zmq_msg_close(&rid);
        zmq_msg_close(&data);
        if (p->asker.rid_len == 0)
            continue;
        if (e != WIRE_OK) {
            log_warn("admin", "unreadable admin request: %s", is_two ? why : "not one frame");
            send_reply(b, &p->asker, wire_result_code(e), is_two ? why : "one frame per request",
                       NULL);
            continue;
        }
        p->asker.request_id = p->rq->request_id;
        a->n_pending++;
    }
}

static const admin_command *find(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

store_err admin_handle(broker *b, MDB_txn *txn, uint64_t now_ms)
{
    admin *a = b->admin;
    store_err e = STORE_OK;
    for (size_t i = 0; a != NULL && i < a->n_pending; i++) {
        pending *p = &a->pending[i];
        const Referral__V1__AdminRequest *rq = p->rq;
        const admin_command *c = e == STORE_OK ? find(rq->command) : NULL;
        char idhex[IDS_HEX_LEN + 1] = "";
        if (rq->id.len == IDS_BYTES)
            ids_hex(rq->id.data, IDS_BYTES, idhex);
        log_info("admin", "request command=%s id=%s operator=%s", rq->command, idhex,
                 rq->operator_name[0] != '\0' ? rq->operator_name : "-");
        if (e != STORE_OK) {
            send_reply(b, &p->asker, R(INTERNAL), "the store failed; the broker restarts", NULL);
        } else if (c == NULL) {
            char detail[200];
            snprintf(detail, sizeof detail, "unknown command \"%.32s\"; referralctl --help lists "
                     "them", rq->command);
            send_reply(b, &p->asker, R(INVALID_FIELD), detail, NULL);
        } else if (c->is_action && (rq->operator_name[0] == '\0' || rq->reason[0] == '\0' ||
                                    rq->id.len != IDS_BYTES)) {
            send_reply(b, &p->asker, R(INVALID_FIELD), "an action needs a message id, the "
                       "operator's name and a reason (they go into the trace)", NULL);
        } else {
            admin_result res = {.code = R(OK), .json = json_object_new_object()};
            e = c->fn(b, txn, rq, &p->asker, now_ms, &res);
            if (e != STORE_OK || !res.is_later)
                admin_reply(b, &p->asker, e != STORE_OK ? R(INTERNAL) : res.code, res.detail,
                            res.json);
            else
                json_object_put(res.json);
        }
        wire_free(p->rq);
        p->rq = NULL;
    }
    if (a != NULL)
        a->n_pending = 0;
    return e;
}
