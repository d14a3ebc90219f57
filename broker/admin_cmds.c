/*
 * admin_cmds: the listings and actions of the operators' socket
 * (admin_cmds.h; the JSON shapes are in docs/operations.md, "The admin
 * socket").
 *
 * Listings read the store in the turn's transaction and never change it
 * (a message record that does not decode is set aside by store_msg_get,
 * as for every reader);
 * each scans at most SCAN_MAX index entries or records and says so in its
 * answer ("is_truncated") when it stopped there. Actions move one message
 * through delivery.c's and queue.c's own functions (never by writing its
 * records here), record an OPERATOR trace event with the operator's name
 * and reason, and log a line. Nothing here ever reads or returns a sealed
 * body.
 */
#include "admin_cmds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "delivery.h"
#include "ids.h"
#include "log.h"
#include "peer.h"
#include "queue.h"
#include "ref_version.h"
#include "utf8.h"

#define R(x) REFERRAL__V1__RESULT_CODE__RESULT_##x
#define S(x) REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_##x

#define SCAN_MAX 100000u          /* index entries or records one listing reads */
#define LIMIT_DEFAULT 20u         /* rows when the request says 0 */
#define LIMIT_MAX 1000u           /* rows at most, whatever the request says */
#define N_BUCKETS 5
#define N_URGENCY 5               /* Urgency values 0..4 */

static const char *const bucket_names[N_BUCKETS] = {"<1m", "1-5m", "5-60m", "1-24h", ">1d"};
static const uint64_t bucket_below_ms[N_BUCKETS - 1] = {60000, 300000, 3600000, 86400000};

static size_t bucket_of(uint64_t age_ms)
{
    size_t i = 0;
    while (i < N_BUCKETS - 1 && age_ms >= bucket_below_ms[i])
        i++;
    return i;
}

static const char *urgency_name(uint8_t u)
{
    static const char *const names[N_URGENCY] = {"unspecified", "routine", "priority", "urgent",
                                                 "crisis"};
    return u < N_URGENCY ? names[u] : "unspecified";
}

static const char *state_name(uint8_t s)
{
    static const char *const names[] = {"unspecified", "queued", "in_flight", "delivered",
                                        "rejected", "undeliverable", "quarantined", "unknown",
                                        "withdrawn"};
    return s < sizeof names / sizeof names[0] ? names[s] : "unknown";
}

static const char *payload_name(uint8_t k)
{
    switch (k) {
    case STORE_PAYLOAD_ENVELOPE: return "envelope";
    case STORE_PAYLOAD_NOTICE: return "notice";
    case STORE_PAYLOAD_COPY: return "copy";
    default: return "unknown";
    }
}

static uint32_t limit_of(const Referral__V1__AdminRequest *rq)
{
    return rq->limit == 0 ? LIMIT_DEFAULT : rq->limit > LIMIT_MAX ? LIMIT_MAX : rq->limit;
}

static json_object *hex_json(const uint8_t id[IDS_BYTES])
{
    char hex[IDS_HEX_LEN + 1];
    return json_object_new_string(ids_hex(id, IDS_BYTES, hex));
}

static void add_int(json_object *o, const char *key, uint64_t v)
{
    json_object_object_add(o, key, json_object_new_int64((int64_t)v));
}

/* The routing metadata of m, never its body (the shape "message" in
 * docs/operations.md). */
static json_object *msg_json(const store_msg *m, bool is_held, uint64_t now_ms)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "message_id", hex_json(m->id));
    json_object_object_add(o, "referral_id", hex_json(m->referral_id));
    json_object_object_add(o, "recipient", json_object_new_string(m->recipient));
    json_object_object_add(o, "sender", json_object_new_string(m->sender));
    json_object_object_add(o, "urgency", json_object_new_string(urgency_name(m->urgency)));
    json_object_object_add(o, "kind", json_object_new_string(payload_name(m->payload_kind)));
    json_object_object_add(o, "state", json_object_new_string(state_name(m->state)));
    json_object_object_add(o, "is_held", json_object_new_boolean(is_held));
    add_int(o, "attempts", m->attempts);
    add_int(o, "seq", m->seq);
    add_int(o, "created_at_ms", m->created_at_ms);
    add_int(o, "expires_at_ms", m->expires_at_ms);
    add_int(o, "updated_at_ms", m->updated_at_ms);
    add_int(o, "age_ms", now_ms > m->created_at_ms ? now_ms - m->created_at_ms : 0);
    return o;
}

static void add_scan(json_object *o, size_t scanned, bool is_truncated)
{
    add_int(o, "scanned", scanned);
    add_int(o, "scan_limit", SCAN_MAX);
    json_object_object_add(o, "is_truncated", json_object_new_boolean(is_truncated));
}

/* ---- what waits: queued, in flight, held --------------------------------- */

typedef enum { WAIT_QUEUED, WAIT_IN_FLIGHT, WAIT_HELD } wait_kind;

typedef struct {
    uint8_t (*ids)[IDS_BYTES];
    uint8_t *kinds;
    size_t count, cap;
    bool is_oom, is_truncated;
    uint8_t kind;                 /* what the walk now in progress collects */
} wait_list;

static void wait_add(const uint8_t id[IDS_BYTES], void *ctx)
{
    wait_list *l = ctx;
    if (l->count >= SCAN_MAX) {
        l->is_truncated = true;
        return;
    }
    if (l->count == l->cap) {
        size_t cap = l->cap == 0 ? 256 : l->cap * 2;
        void *ids = realloc(l->ids, cap * IDS_BYTES);
        if (ids != NULL)
            l->ids = ids;
        void *kinds = ids != NULL ? realloc(l->kinds, cap) : NULL;
        if (kinds == NULL) {
            l->is_oom = true;
            return;
        }
        l->kinds = kinds;
        l->cap = cap;
    }
    memcpy(l->ids[l->count], id, IDS_BYTES);
    l->kinds[l->count++] = l->kind;
}

static void wait_free(wait_list *l)
{
    free(l->ids);
    free(l->kinds);
}

/* Collect the ids of every message waiting here (crisis ones only when
 * is_crisis_only: the queue's rank tells them apart without a read), at
 * most SCAN_MAX. Ids first, records after: reading a record may set a bad
 * one aside, which must not happen under an open cursor. */
static store_err collect_waiting(broker *b, MDB_txn *txn, bool is_crisis_only, wait_list *l)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, store_dbi(b->st, STORE_DB_QUEUE), &c);
    if (rc != 0)
        return store_err_from_mdb(rc);
    l->kind = WAIT_QUEUED;
    MDB_val k, v;
    for (int op = MDB_FIRST; mdb_cursor_get(c, &k, &v, op) == 0; op = MDB_NEXT) {
        const uint8_t *key = k.mv_data, *val = v.mv_data;
        const uint8_t *nul = memchr(key, 0, k.mv_size);
        if (nul == NULL || (size_t)(nul - key) + 10 != k.mv_size || v.mv_size != 1 + IDS_BYTES ||
            val[0] != STORE_RECORD_V1)
            continue;   /* not an entry of this format: queue_head sets it aside */
        if (is_crisis_only && nul[1] != 0)
            continue;
        wait_add(val + 1, l);
    }
    mdb_cursor_close(c);
    l->kind = WAIT_IN_FLIGHT;
    store_err e = inflight_each(b->st, txn, wait_add, l);
    l->kind = WAIT_HELD;
    if (e == STORE_OK)
        e = queue_held_each(b->st, txn, wait_add, l);
    return e == STORE_OK && l->is_oom ? STORE_FAILED : e;
}

/* ---- queues -------------------------------------------------------------- */

typedef struct {
    char name[IDS_NAME_MAX + 1];
    uint64_t queued, in_flight, held;
    uint64_t by_age[N_BUCKETS];
    uint64_t by_urgency[N_URGENCY][N_BUCKETS];
} queue_row;

typedef struct {
    queue_row *rows;
    size_t n, cap;
} queue_table;

static queue_row *row_of(queue_table *t, const char *name)
{
    for (size_t i = t->n; i > 0; i--)   /* the walk meets one recipient's entries together */
        if (strcmp(t->rows[i - 1].name, name) == 0)
            return &t->rows[i - 1];
    if (t->n == t->cap) {
        size_t cap = t->cap == 0 ? 16 : t->cap * 2;
        queue_row *rows = realloc(t->rows, cap * sizeof *rows);
        if (rows == NULL)
            return NULL;
        t->rows = rows;
        t->cap = cap;
    }
    queue_row *r = &t->rows[t->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    return r;
}

static int row_cmp(const void *a, const void *b)
{
    return strcmp(((const queue_row *)a)->name, ((const queue_row *)b)->name);
}

static json_object *buckets_json(const uint64_t counts[N_BUCKETS])
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < N_BUCKETS; i++)
        json_object_array_add(a, json_object_new_int64((int64_t)counts[i]));
    return a;
}

static json_object *row_json(broker *b, const queue_row *r)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "recipient", json_object_new_string(r->name));
    json_object_object_add(o, "is_peer", json_object_new_boolean(peers_is_peer(b, r->name)));
    add_int(o, "total", r->queued + r->in_flight + r->held);
    add_int(o, "queued", r->queued);
    add_int(o, "in_flight", r->in_flight);
    add_int(o, "held", r->held);
    json_object_object_add(o, "by_age", buckets_json(r->by_age));
    json_object *u = json_object_new_object();
    for (uint8_t i = N_URGENCY - 1; i >= 1; i--)
        json_object_object_add(u, urgency_name(i), buckets_json(r->by_urgency[i]));
    json_object_object_add(o, "by_urgency", u);
    return o;
}

static void count_into(queue_row *r, const store_msg *m, wait_kind kind, uint64_t now_ms)
{
    size_t bucket = bucket_of(now_ms > m->created_at_ms ? now_ms - m->created_at_ms : 0);
    if (kind == WAIT_HELD)
        r->held++;
    else if (kind == WAIT_IN_FLIGHT)
        r->in_flight++;
    else
        r->queued++;
    r->by_age[bucket]++;
    r->by_urgency[m->urgency < N_URGENCY ? m->urgency : 0][bucket]++;
}

store_err admin_cmd_queues(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                           const admin_asker *asker, uint64_t now_ms, admin_result *res)
{
    (void)rq;
    (void)asker;
    wait_list l = {0};
    queue_table t = {0};
    queue_row total = {.name = "*"};
    store_err e = collect_waiting(b, txn, false, &l);
    for (size_t i = 0; e == STORE_OK && i < l.count; i++) {
        store_msg m;
        e = store_msg_get(b->st, txn, l.ids[i], &m);
        if (e == STORE_NOT_FOUND) {   /* an entry without a record: skipped, as take does */
            e = STORE_OK;
            continue;
        }
        queue_row *r = e == STORE_OK ? row_of(&t, m.recipient) : NULL;
        if (e == STORE_OK && r == NULL)
            e = STORE_FAILED;
        if (e != STORE_OK)
            break;
        count_into(r, &m, (wait_kind)l.kinds[i], now_ms);
        count_into(&total, &m, (wait_kind)l.kinds[i], now_ms);
    }
    if (e == STORE_OK) {
        if (t.n > 1)
            qsort(t.rows, t.n, sizeof *t.rows, row_cmp);
        add_int(res->json, "now_ms", now_ms);
        json_object_object_add(res->json, "age_of", json_object_new_string("created_at_ms"));
        json_object *names = json_object_new_array();
        for (size_t i = 0; i < N_BUCKETS; i++)
            json_object_array_add(names, json_object_new_string(bucket_names[i]));
        json_object_object_add(res->json, "buckets", names);
        json_object *rows = json_object_new_array();
        for (size_t i = 0; i < t.n; i++)
            json_object_array_add(rows, row_json(b, &t.rows[i]));
        json_object_object_add(res->json, "recipients", rows);
        json_object *tot = row_json(b, &total);
        json_object_object_del(tot, "is_peer");
        json_object_object_add(res->json, "total", tot);
        add_scan(res->json, l.count, l.is_truncated);
    }
    free(t.rows);
    wait_free(&l);
    return e;
}

/* ---- rows kept in order: the first `limit` by a key ----------------------- */

typedef struct {
    store_msg m;
    bool is_held;
    uint64_t key;
} top_row;

typedef struct {
    top_row *rows;
    size_t n, limit;
    bool is_descending;           /* keep the largest keys (most recent first) */
} top_list;

static bool top_goes_before(const top_list *t, uint64_t a, uint64_t b)
{
    return t->is_descending ? a > b : a < b;
}

/* Insert (m, key) where it belongs; drop what falls past the limit. */
static void top_add(top_list *t, const store_msg *m, bool is_held, uint64_t key)
{
    if (t->n == t->limit && !top_goes_before(t, key, t->rows[t->n - 1].key))
        return;
    size_t at = t->n < t->limit ? t->n : t->n - 1;
    while (at > 0 && top_goes_before(t, key, t->rows[at - 1].key)) {
        t->rows[at] = t->rows[at - 1];
        at--;
    }
    t->rows[at] = (top_row){.m = *m, .is_held = is_held, .key = key};
    if (t->n < t->limit)
        t->n++;
}

/* ---- oldest -------------------------------------------------------------- */

store_err admin_cmd_oldest(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                           const admin_asker *asker, uint64_t now_ms, admin_result *res)
{
    (void)asker;
    wait_list l = {0};
    top_list t = {.limit = limit_of(rq)};
    t.rows = calloc(t.limit, sizeof *t.rows);
    store_err e = t.rows == NULL ? STORE_FAILED : collect_waiting(b, txn, true, &l);
    size_t n_crisis = 0;
    for (size_t i = 0; e == STORE_OK && i < l.count; i++) {
        store_msg m;
        e = store_msg_get(b->st, txn, l.ids[i], &m);
        if (e == STORE_NOT_FOUND) {
            e = STORE_OK;
            continue;
        }
        if (e != STORE_OK || m.urgency != REFERRAL__V1__URGENCY__URGENCY_CRISIS)
            continue;
        n_crisis++;
        top_add(&t, &m, l.kinds[i] == WAIT_HELD, m.created_at_ms);
    }
    if (e == STORE_OK) {
        add_int(res->json, "now_ms", now_ms);
        json_object_object_add(res->json, "urgency", json_object_new_string("crisis"));
        add_int(res->json, "limit", t.limit);
        add_int(res->json, "count", n_crisis);
        json_object *rows = json_object_new_array();
        for (size_t i = 0; i < t.n; i++)
            json_object_array_add(rows, msg_json(&t.rows[i].m, t.rows[i].is_held, now_ms));
        json_object_object_add(res->json, "messages", rows);
        add_scan(res->json, l.count, l.is_truncated);
    }
    free(t.rows);
    wait_free(&l);
    return e;
}

/* ---- peers --------------------------------------------------------------- */

store_err admin_cmd_peers(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                          const admin_asker *asker, uint64_t now_ms, admin_result *res)
{
    (void)rq;
    (void)asker;
    add_int(res->json, "now_ms", now_ms);
    json_object *peers = json_object_new_array();
    peers_describe(b, txn, peers);
    json_object_object_add(res->json, "peers", peers);
    return STORE_OK;
}

/* ---- undeliverable, expired: a walk over the message records -------------- */

typedef enum { PICK_UNDELIVERABLE, PICK_EXPIRED } pick;

/* Walk msgs (read only: records that do not decode are skipped and
 * counted, never set aside here) and keep the rows pick wants. */
static store_err scan_msgs(broker *b, MDB_txn *txn, pick which, uint64_t now_ms, top_list *t,
                           size_t *scanned, size_t *matched, size_t *unreadable,
                           bool *is_truncated)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, store_dbi(b->st, STORE_DB_MSGS), &c);
    if (rc != 0)
        return store_err_from_mdb(rc);
    MDB_val k, v;
    int op = MDB_FIRST;
    while ((rc = mdb_cursor_get(c, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        if (*scanned == SCAN_MAX) {
            *is_truncated = true;
            break;
        }
        (*scanned)++;
        store_msg m;
        char why[100];
        if (!store_msg_decode(v.mv_data, v.mv_size, &m, why, sizeof why)) {
            (*unreadable)++;
            continue;
        }
        bool is_natural = m.updated_at_ms >= m.expires_at_ms;
        bool is_wanted = which == PICK_UNDELIVERABLE
                             ? m.state == S(UNDELIVERABLE)
                             : (m.state == S(UNDELIVERABLE) && is_natural) ||
                                   ((m.state == S(QUEUED) || m.state == S(IN_FLIGHT)) &&
                                    m.expires_at_ms <= now_ms);
        if (!is_wanted)
            continue;
        (*matched)++;
        top_add(t, &m, false, which == PICK_UNDELIVERABLE ? m.updated_at_ms : m.expires_at_ms);
    }
    mdb_cursor_close(c);
    return rc == 0 || rc == MDB_NOTFOUND ? STORE_OK : store_err_from_mdb(rc);
}

static store_err list_final(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                            pick which, uint64_t now_ms, admin_result *res)
{
    top_list t = {.limit = limit_of(rq), .is_descending = true};
    t.rows = calloc(t.limit, sizeof *t.rows);
    if (t.rows == NULL)
        return STORE_FAILED;
    size_t scanned = 0, matched = 0, unreadable = 0;
    bool is_truncated = false;
    store_err e = scan_msgs(b, txn, which, now_ms, &t, &scanned, &matched, &unreadable,
                            &is_truncated);
    if (e == STORE_OK) {
        add_int(res->json, "now_ms", now_ms);
        add_int(res->json, "limit", t.limit);
        add_int(res->json, "count", matched);
        json_object *rows = json_object_new_array();
        for (size_t i = 0; i < t.n; i++) {
            json_object *o = msg_json(&t.rows[i].m, false, now_ms);
            const store_msg *m = &t.rows[i].m;
            if (m->state == S(UNDELIVERABLE))
                json_object_object_add(o, "cause", json_object_new_string(
                                           m->updated_at_ms >= m->expires_at_ms
                                               ? "expired" : "ended_early"));
            else
                json_object_object_add(o, "cause", json_object_new_string("expiry_pending"));
            json_object_array_add(rows, o);
        }
        json_object_object_add(res->json, "messages", rows);
        add_int(res->json, "unreadable", unreadable);
        add_scan(res->json, scanned, is_truncated);
    }
    free(t.rows);
    return e;
}

store_err admin_cmd_undeliverable(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                                  const admin_asker *asker, uint64_t now_ms, admin_result *res)
{
    (void)asker;
    return list_final(b, txn, rq, PICK_UNDELIVERABLE, now_ms, res);
}

store_err admin_cmd_expired(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                            const admin_asker *asker, uint64_t now_ms, admin_result *res)
{
    (void)asker;
    return list_final(b, txn, rq, PICK_EXPIRED, now_ms, res);
}

/* ---- show ---------------------------------------------------------------- */

/* Read the message rq names into m; false (res filled) when there is none. */
static bool find_msg(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                     store_msg *m, store_err *e, admin_result *res)
{
    char hex[IDS_HEX_LEN + 1];
    if (rq->id.len != IDS_BYTES) {
        res->code = R(INVALID_FIELD);
        snprintf(res->detail, sizeof res->detail, "%s needs a message id (32 hex digits)",
                 rq->command);
        *e = STORE_OK;
        return false;
    }
    *e = store_msg_get(b->st, txn, rq->id.data, m);
    if (*e == STORE_NOT_FOUND) {
        *e = STORE_OK;
        res->code = R(UNKNOWN_MESSAGE);
        snprintf(res->detail, sizeof res->detail, "no message %s at this broker (never stored "
                 "here, or forgotten after retention); referral-trace follows a referral "
                 "across brokers", ids_hex(rq->id.data, IDS_BYTES, hex));
        return false;
    }
    return *e == STORE_OK;
}

/* Is the message held? (*h filled when it is; an unreadable entry counts
 * as held, with an empty operator and reason.) */
static store_err hold_of(broker *b, MDB_txn *txn, const store_msg *m, bool *is_held,
                            queue_held *h)
{
    memset(h, 0, sizeof *h);
    *is_held = false;
    if (m->state != S(QUEUED))
        return STORE_OK;
    store_err e = queue_held_get(b->st, txn, m->id, h);
    *is_held = e == STORE_OK || e == STORE_CORRUPT;
    return e == STORE_NOT_FOUND || e == STORE_CORRUPT ? STORE_OK : e;
}

static bool has_escalation(broker *b, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    uint8_t key[1 + IDS_BYTES] = {'E'};
    memcpy(key + 1, id, IDS_BYTES);
    MDB_val k = {.mv_size = sizeof key, .mv_data = key}, v;
    return mdb_get(txn, store_dbi(b->st, STORE_DB_ESCALATIONS), &k, &v) == 0;
}

store_err admin_cmd_show(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                         const admin_asker *asker, uint64_t now_ms, admin_result *res)
{
    (void)asker;
    store_msg m;
    store_err e;
    if (!find_msg(b, txn, rq, &m, &e, res))
        return e;
    bool is_held;
    queue_held h;
    e = hold_of(b, txn, &m, &is_held, &h);
    if (e != STORE_OK)
        return e;
    add_int(res->json, "now_ms", now_ms);
    json_object_object_add(res->json, "message", msg_json(&m, is_held, now_ms));
    if (m.state == S(IN_FLIGHT))
        add_int(res->json, "return_due_at_ms", m.due_at_ms);
    if (is_held) {
        json_object *o = json_object_new_object();
        add_int(o, "held_at_ms", h.held_at_ms);
        json_object_object_add(o, "operator", json_object_new_string(h.operator_name));
        json_object_object_add(o, "reason", json_object_new_string(h.reason));
        json_object_object_add(res->json, "held", o);
    }
    json_object_object_add(res->json, "is_final", json_object_new_boolean(delivery_is_final(m.state)));
    json_object_object_add(res->json, "is_recipient_peer",
                           json_object_new_boolean(peers_is_peer(b, m.recipient)));
    MDB_val bk = {.mv_size = IDS_BYTES, .mv_data = m.id}, bv;
    size_t body_len = mdb_get(txn, store_dbi(b->st, STORE_DB_BODIES), &bk, &bv) == 0 ? bv.mv_size : 0;
    json_object_object_add(res->json, "has_body", json_object_new_boolean(body_len > 0));
    json_object_object_add(res->json, "has_escalation",
                           json_object_new_boolean(has_escalation(b, txn, m.id)));
    store_referral *r = malloc(sizeof *r);
    if (r == NULL)
        return STORE_FAILED;
    e = store_referral_get(b->st, txn, m.referral_id, r);
    if (e == STORE_OK) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "sender", json_object_new_string(r->sender));
        json_object *to = json_object_new_array();
        for (size_t i = 0; i < r->n_addressed; i++)
            json_object_array_add(to, json_object_new_string(r->addressed[i]));
        json_object_object_add(o, "addressed", to);
        json_object_object_add(res->json, "referral", o);
    } else if (e == STORE_NOT_FOUND || e == STORE_CORRUPT) {
        json_object_object_add(res->json, "referral", NULL);
        e = STORE_OK;
    }
    free(r);
    return e;
}

/* ---- actions ------------------------------------------------------------- */

/* Record an operator's action on m in its referral's trace and the log. */
static store_err record_action(broker *b, MDB_txn *txn, const store_msg *m, const char *verb,
                               const Referral__V1__AdminRequest *rq, uint64_t now_ms)
{
    char detail[WIRE_MAX_TEXT + IDS_NAME_MAX + 64];
    snprintf(detail, sizeof detail, "%s by operator %s: %s", verb, rq->operator_name, rq->reason);
    utf8_cut(detail, WIRE_MAX_TEXT);
    char hex[IDS_HEX_LEN + 1], rhex[IDS_HEX_LEN + 1];
    log_info("admin", "%s by operator msg=%s referral=%s recipient=%s operator=%s reason=\"%s\"",
             verb, ids_hex(m->id, IDS_BYTES, hex), ids_hex(m->referral_id, IDS_BYTES, rhex),
             m->recipient, rq->operator_name, rq->reason);
    return delivery_trace(&b->dc, txn, m, REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_OPERATOR,
                          R(OK), detail, now_ms);
}

/* The answer of an action: what it did and the message as it is now. */
static void answer_action(admin_result *res, const char *action, const store_msg *m,
                          const char *before, bool is_held, const Referral__V1__AdminRequest *rq,
                          uint64_t now_ms)
{
    json_object_object_add(res->json, "action", json_object_new_string(action));
    json_object_object_add(res->json, "before", json_object_new_string(before));
    json_object_object_add(res->json, "operator", json_object_new_string(rq->operator_name));
    json_object_object_add(res->json, "reason", json_object_new_string(rq->reason));
    json_object_object_add(res->json, "message", msg_json(m, is_held, now_ms));
}

/* Read the message of an action and refuse a final one; false: res says
 * why (or *e a store fault). before gets its state's name (or "held"). */
static bool action_target(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                          store_msg *m, bool *is_held, const char **before, store_err *e,
                          admin_result *res)
{
    if (!find_msg(b, txn, rq, m, e, res))
        return false;
    if (delivery_is_final(m->state)) {
        char hex[IDS_HEX_LEN + 1];
        res->code = R(UNKNOWN_MESSAGE);
        snprintf(res->detail, sizeof res->detail, "message %s is already final (%s): nothing "
                 "to %s; referralctl show %s tells its story",
                 ids_hex(m->id, IDS_BYTES, hex), state_name(m->state), rq->command, hex);
        return false;
    }
    queue_held h;
    *e = hold_of(b, txn, m, is_held, &h);
    *before = *is_held ? "held" : state_name(m->state);
    return *e == STORE_OK;
}

static void refuse(admin_result *res, const store_msg *m, const char *what)
{
    char hex[IDS_HEX_LEN + 1];
    res->code = R(INVALID_FIELD);
    snprintf(res->detail, sizeof res->detail, "message %s %s", ids_hex(m->id, IDS_BYTES, hex),
             what);
}

/* An in-flight message goes back to its queue by an operator: only a
 * client's delivery (a forward to a peer broker returns with its link). */
static store_err operator_requeue(broker *b, MDB_txn *txn, store_msg *m, admin_result *res,
                                  uint64_t now_ms, bool *is_refused)
{
    *is_refused = peers_is_peer(b, m->recipient);
    if (*is_refused) {
        refuse(res, m, "is in flight to a peer broker, which answers with a hop ack or "
               "returns it when the link goes down (peer_timeout_ms); referralctl peers shows "
               "the link");
        return STORE_OK;
    }
    return delivery_requeue(&b->dc, txn, m, "returned to the queue by an operator", now_ms);
}

store_err admin_cmd_hold(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                         const admin_asker *asker, uint64_t now_ms, admin_result *res)
{
    (void)asker;
    store_msg m;
    bool is_held, is_refused = false;
    const char *before;
    store_err e;
    if (!action_target(b, txn, rq, &m, &is_held, &before, &e, res))
        return e;
    if (is_held) {
        refuse(res, &m, "is held already; referralctl release puts it back in its queue");
        return STORE_OK;
    }
    if (m.state == S(IN_FLIGHT)) {   /* back to the queue first, in the same transaction */
        e = operator_requeue(b, txn, &m, res, now_ms, &is_refused);
        if (e != STORE_OK || is_refused)
            return e;
    }
    queue_held h = {.held_at_ms = now_ms};
    utf8_copy_cut(h.operator_name, sizeof h.operator_name, rq->operator_name, IDS_NAME_MAX);
    utf8_copy_cut(h.reason, sizeof h.reason, rq->reason, QUEUE_HELD_TEXT_MAX);
    e = queue_hold(b->st, txn, &m, &h);
    if (e == STORE_NOT_FOUND) {
        refuse(res, &m, "is not in its queue (its entry was set aside); see the broker's log");
        return STORE_OK;
    }
    if (e == STORE_OK)
        e = record_action(b, txn, &m, "held", rq, now_ms);
    if (e == STORE_OK)
        answer_action(res, "hold", &m, before, true, rq, now_ms);
    return e;
}

store_err admin_cmd_release(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                            const admin_asker *asker, uint64_t now_ms, admin_result *res)
{
    (void)asker;
    store_msg m;
    bool is_held;
    const char *before;
    store_err e;
    if (!action_target(b, txn, rq, &m, &is_held, &before, &e, res))
        return e;
    if (!is_held) {
        refuse(res, &m, "is not held; referralctl hold holds it");
        return STORE_OK;
    }
    e = queue_release(b->st, txn, &m);
    if (e == STORE_OK)
        e = record_action(b, txn, &m, "released", rq, now_ms);
    if (e == STORE_OK)
        answer_action(res, "release", &m, before, false, rq, now_ms);
    return e;
}

store_err admin_cmd_requeue(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                            const admin_asker *asker, uint64_t now_ms, admin_result *res)
{
    (void)asker;
    store_msg m;
    bool is_held, is_refused = false;
    const char *before;
    store_err e;
    if (!action_target(b, txn, rq, &m, &is_held, &before, &e, res))
        return e;
    if (is_held) {
        e = queue_release(b->st, txn, &m);
    } else if (m.state == S(IN_FLIGHT)) {
        e = operator_requeue(b, txn, &m, res, now_ms, &is_refused);
    } else {
        refuse(res, &m, "is queued already: it goes out when its recipient takes deliveries");
        return STORE_OK;
    }
    if (e != STORE_OK || is_refused)
        return e;
    e = record_action(b, txn, &m, "requeued", rq, now_ms);
    if (e == STORE_OK)
        answer_action(res, "requeue", &m, before, false, rq, now_ms);
    return e;
}

store_err admin_cmd_expire(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                           const admin_asker *asker, uint64_t now_ms, admin_result *res)
{
    (void)asker;
    store_msg m;
    bool is_held;
    const char *before;
    store_err e;
    if (!action_target(b, txn, rq, &m, &is_held, &before, &e, res))
        return e;
    /* The action first: its trace event comes before the expiry's own. */
    e = record_action(b, txn, &m, "expired", rq, now_ms);
    char notice[WIRE_MAX_TEXT + 80];
    snprintf(notice, sizeof notice, "ended undelivered by the broker's operator before the "
             "recipient acknowledged it (%s); call the agency", rq->reason);
    utf8_cut(notice, WIRE_MAX_TEXT);
    if (e == STORE_OK)
        e = delivery_expire(&b->dc, txn, &m, "expired by an operator", notice, now_ms);
    if (e == STORE_OK)
        answer_action(res, "expire", &m, before, false, rq, now_ms);
    return e;
}

/* ---- status -------------------------------------------------------------- */

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
