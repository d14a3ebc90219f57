/*
 * trace: a referral's events from every broker it touched (trace.h).
 *
 * A gathering: this broker's own events, then one TraceQuery to each peer
 * the referral's messages went to or came from (not visited yet), each
 * answered by that peer with what it gathered the same way. The gathering
 * answers its asker (an operator, or the peer that asked) once every peer
 * answered or its time is up.
 */
#include "trace.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "clock.h"
#include "ids.h"
#include "log.h"
#include "peer.h"
#include "wire.h"

#define R(x) REFERRAL__V1__RESULT_CODE__RESULT_##x
#define MAX_GATHERINGS 64
#define MAX_EVENTS 256            /* a TraceReply's limit */
#define MAX_BROKERS 16            /* the wire's limit for visited, brokers, unanswered */
#define ADMIN_WAIT_MS 5000        /* an operator's gathering waits this long at most */
#define HOP_SHARE_MS 1000         /* each broker further on has this much less */

typedef struct {
    bool is_used;
    bool is_admin;                /* for an operator (else for a peer) */
    admin_asker asker;            /* an operator: the admin socket's routing id */
    char peer[IDS_NAME_MAX + 1];  /* a peer: its id ... */
    uint8_t peer_rid[LINK_RID_MAX];   /* ... and routing id on our peer socket */
    size_t peer_rid_len;
    uint64_t peer_request_id;
    uint64_t my_request_id;       /* what our queries to peers carry */
    uint8_t referral_id[IDS_BYTES];
    uint64_t deadline_mono;
    size_t n_waiting;
    char waiting[MAX_BROKERS][IDS_NAME_MAX + 1];
    size_t n_brokers;             /* whose events are in */
    char brokers[MAX_BROKERS][IDS_NAME_MAX + 1];
    size_t n_unanswered;
    char unanswered[MAX_BROKERS][IDS_NAME_MAX + 1];
    Referral__V1__TraceEvent *events[MAX_EVENTS];   /* owned (wire_free) */
    size_t n_events;
    bool is_truncated;
} gathering;

struct trace_set {
    gathering items[MAX_GATHERINGS];
    uint64_t next_request_id;
};

trace_set *trace_set_new(void)
{
    trace_set *ts = calloc(1, sizeof *ts);
    if (ts != NULL)
        ts->next_request_id = 1;
    return ts;
}

static void release(gathering *g)
{
    for (size_t i = 0; i < g->n_events; i++)
        wire_free(g->events[i]);
    memset(g, 0, sizeof *g);
}

void trace_set_destroy(trace_set **tsp)
{
    trace_set *ts = tsp != NULL ? *tsp : NULL;
    if (ts == NULL)
        return;
    for (size_t i = 0; i < MAX_GATHERINGS; i++)
        release(&ts->items[i]);
    free(ts);
    *tsp = NULL;
}

static bool has_name(char names[][IDS_NAME_MAX + 1], size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return true;
    return false;
}

static void add_name(char names[][IDS_NAME_MAX + 1], size_t *n, const char *name)
{
    if (*n < MAX_BROKERS && !has_name(names, *n, name))
        snprintf(names[(*n)++], IDS_NAME_MAX + 1, "%s", name);
}

/* ---- this broker's events, and the peers to ask --------------------------- */

static void take_event(const uint8_t *bytes, size_t len, void *ctx)
{
    gathering *g = ctx;
    if (g->n_events == MAX_EVENTS) {
        g->is_truncated = true;
        return;
    }
    Referral__V1__TraceEvent *ev = referral__v1__trace_event__unpack(NULL, len, bytes);
    if (ev != NULL)
        g->events[g->n_events++] = ev;
}

typedef struct {
    broker *b;
    MDB_txn *txn;
    char (*peers)[IDS_NAME_MAX + 1];
    size_t *n_peers;
    const char *only;             /* set: does any message touch this peer? */
    bool is_touched;
    store_err err;
} touch_walk;

/* The previous hop of a stored envelope: the broker before this one in
 * its hops (this broker appended itself last). */
static void previous_hop(const broker *b, const uint8_t *payload, size_t len, char *out,
                         size_t out_len)
{
    out[0] = '\0';
    Referral__V1__Envelope *env = referral__v1__envelope__unpack(NULL, len, payload);
    if (env == NULL)
        return;
    if (env->n_hops >= 2 && strcmp(env->hops[env->n_hops - 1], b->cfg.id) == 0)
        snprintf(out, out_len, "%s", env->hops[env->n_hops - 2]);
    referral__v1__envelope__free_unpacked(env, NULL);
}

static void touch_message(const uint8_t id[IDS_BYTES], void *ctx)
{
    touch_walk *w = ctx;
    store_msg m;
    if (w->err != STORE_OK || store_msg_get(w->b->st, w->txn, id, &m) != STORE_OK)
        return;
    char prev[IDS_NAME_MAX + 1] = "";
    if (m.payload_kind == STORE_PAYLOAD_ENVELOPE) {
        const uint8_t *p;
        size_t len;
        if (store_body_get(w->b->st, w->txn, id, &p, &len) == STORE_OK)
            previous_hop(w->b, p, len, prev, sizeof prev);
    }
    const char *near[2] = {m.recipient, prev};
    for (size_t i = 0; i < 2; i++) {
        if (near[i][0] == '\0' || !peers_is_peer(w->b, near[i]))
            continue;
        if (w->only != NULL)
            w->is_touched |= strcmp(near[i], w->only) == 0;
        else
            add_name(w->peers, w->n_peers, near[i]);
    }
}

/* The peers the referral's messages here went to or came from (bodies
 * deleted after delivery tell no previous hop: the forward's peer is then
 * known from its queue, the message's recipient). */
static store_err walk_touched(broker *b, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                              touch_walk *w)
{
    w->b = b;
    w->txn = txn;
    w->err = STORE_OK;
    store_err e = store_refmsgs_each(b->st, txn, referral_id, touch_message, w);
    return e != STORE_OK ? e : w->err;
}

/* Start a gathering g for referral_id, visited already by the list given:
 * this broker's events, and queries to the peers not visited. */
static store_err start(broker *b, MDB_txn *txn, gathering *g,
                       char *const *visited, size_t n_visited, uint64_t wait_ms)
{
    trace_set *ts = b->traces;
    g->my_request_id = ts->next_request_id++;
    g->deadline_mono = clock_mono_ms() + wait_ms;
    bool is_truncated = false;
    store_err e = store_trace_each(b->st, txn, g->referral_id, MAX_EVENTS, take_event, g,
                                   &is_truncated);
    if (e != STORE_OK)
        return e;
    g->is_truncated |= is_truncated;
    add_name(g->brokers, &g->n_brokers, b->cfg.id);
    char peers[MAX_BROKERS][IDS_NAME_MAX + 1];
    size_t n_peers = 0;
    touch_walk w = {.peers = peers, .n_peers = &n_peers};
    e = walk_touched(b, txn, g->referral_id, &w);
    if (e != STORE_OK)
        return e;
    char *next_visited[MAX_BROKERS + 1];
    size_t n_next = 0;
    for (size_t i = 0; i < n_visited && n_next < MAX_BROKERS; i++)
        next_visited[n_next++] = visited[i];
    if (n_next < MAX_BROKERS)
        next_visited[n_next++] = b->cfg.id;
    for (size_t i = 0; i < n_peers; i++) {
        bool is_visited = false;
        for (size_t j = 0; j < n_next; j++)
            is_visited |= strcmp(next_visited[j], peers[i]) == 0;
        if (is_visited)
            continue;
        if (wait_ms <= HOP_SHARE_MS) {   /* too far to wait for: said, never hidden */
            add_name(g->unanswered, &g->n_unanswered, peers[i]);
            continue;
        }
        Referral__V1__TraceQuery q = REFERRAL__V1__TRACE_QUERY__INIT;
        q.request_id = g->my_request_id;
        q.referral_id = (ProtobufCBinaryData){IDS_BYTES, g->referral_id};
        q.visited = next_visited;
        q.n_visited = n_next;
        if (peers_send_trace_query(b, peers[i], &q))
            add_name(g->waiting, &g->n_waiting, peers[i]);
        else
            add_name(g->unanswered, &g->n_unanswered, peers[i]);
    }
    return STORE_OK;
}

static gathering *free_slot(trace_set *ts)
{
    for (size_t i = 0; i < MAX_GATHERINGS; i++)
        if (!ts->items[i].is_used)
            return &ts->items[i];
    return NULL;
}

/* ---- answering ------------------------------------------------------------- */

static int by_time(const void *a, const void *b)
{
    const Referral__V1__TraceEvent *x = *(Referral__V1__TraceEvent *const *)a;
    const Referral__V1__TraceEvent *y = *(Referral__V1__TraceEvent *const *)b;
    return x->at_ms < y->at_ms ? -1 : x->at_ms > y->at_ms;
}

static json_object *names_json(char names[][IDS_NAME_MAX + 1], size_t n)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        json_object_array_add(a, json_object_new_string(names[i]));
    return a;
}

static const char *enum_name(const ProtobufCEnumDescriptor *d, int v, size_t skip)
{
    const ProtobufCEnumValue *e = protobuf_c_enum_descriptor_get_value(d, v);
    return e != NULL && strlen(e->name) > skip ? e->name + skip : "UNKNOWN";
}

/* The operator's answer: docs/operations.md, "referral-trace". */
static json_object *gathering_json(const gathering *g)
{
    json_object *o = json_object_new_object();
    char hex[IDS_HEX_LEN + 1];
    json_object_object_add(o, "referral_id", json_object_new_string(
        ids_hex(g->referral_id, IDS_BYTES, hex)));
    json_object *events = json_object_new_array();
    for (size_t i = 0; i < g->n_events; i++) {
        const Referral__V1__TraceEvent *ev = g->events[i];
        json_object *e = json_object_new_object();
        json_object_object_add(e, "at_ms", json_object_new_int64((int64_t)ev->at_ms));
        json_object_object_add(e, "broker", json_object_new_string(ev->broker_id));
        json_object_object_add(e, "kind", json_object_new_string(
            enum_name(&referral__v1__trace_event_kind__descriptor, ev->kind,
                      strlen("TRACE_EVENT_KIND_"))));
        json_object_object_add(e, "message_id", json_object_new_string(
            ev->message_id.len == IDS_BYTES ? ids_hex(ev->message_id.data, IDS_BYTES, hex) : ""));
        json_object_object_add(e, "agency", json_object_new_string(ev->agency_id));
        json_object_object_add(e, "from", json_object_new_string(ev->from_agency));
        json_object_object_add(e, "attempt", json_object_new_int64(ev->attempt));
        json_object_object_add(e, "code", json_object_new_string(
            enum_name(&referral__v1__result_code__descriptor, ev->code, strlen("RESULT_"))));
        json_object_object_add(e, "detail", json_object_new_string(ev->detail));
        json_object_array_add(events, e);
    }
    json_object_object_add(o, "events", events);
    json_object_object_add(o, "brokers", names_json((char (*)[IDS_NAME_MAX + 1])g->brokers,
                                                    g->n_brokers));
    json_object_object_add(o, "unanswered",
                           names_json((char (*)[IDS_NAME_MAX + 1])g->unanswered,
                                      g->n_unanswered));
    json_object_object_add(o, "is_truncated", json_object_new_boolean(g->is_truncated));
    return o;
}

static void answer(broker *b, gathering *g)
{
    for (size_t i = 0; i < g->n_waiting; i++)
        add_name(g->unanswered, &g->n_unanswered, g->waiting[i]);
    g->n_waiting = 0;
    qsort(g->events, g->n_events, sizeof g->events[0], by_time);
    char hex[IDS_HEX_LEN + 1];
    log_info("trace", "trace gathered referral=%s for=%s events=%zu brokers=%zu unanswered=%zu",
             ids_hex(g->referral_id, IDS_BYTES, hex), g->is_admin ? "operator" : g->peer,
             g->n_events, g->n_brokers, g->n_unanswered);
    if (g->is_admin) {
        char detail[200] = "";
        if (g->n_unanswered > 0)
            snprintf(detail, sizeof detail, "%zu broker(s) did not answer in time: their "
                     "events are missing", g->n_unanswered);
        admin_reply(b, &g->asker, R(OK), detail, gathering_json(g));
    } else {
        Referral__V1__TraceReply r = REFERRAL__V1__TRACE_REPLY__INIT;
        r.request_id = g->peer_request_id;
        r.code = R(OK);
        r.events = g->events;
        r.n_events = g->n_events;
        r.is_truncated = g->is_truncated;
        char *brokers[MAX_BROKERS], *unanswered[MAX_BROKERS];
        for (size_t i = 0; i < g->n_brokers; i++)
            brokers[i] = g->brokers[i];
        for (size_t i = 0; i < g->n_unanswered; i++)
            unanswered[i] = g->unanswered[i];
        r.brokers = brokers;
        r.n_brokers = g->n_brokers;
        r.unanswered = unanswered;
        r.n_unanswered = g->n_unanswered;
        peers_send_trace_reply(b, g->peer_rid, g->peer_rid_len, &r);
    }
    release(g);
}

/* ---- entry points ------------------------------------------------------------ */

store_err trace_admin_command(broker *b, MDB_txn *txn, const Referral__V1__AdminRequest *rq,
                              const admin_asker *asker, uint64_t now_ms, admin_result *res)
{
    (void)now_ms;
    if (rq->id.len != IDS_BYTES) {
        res->code = R(INVALID_FIELD);
        snprintf(res->detail, sizeof res->detail, "trace needs a referral id (32 hex digits)");
        return STORE_OK;
    }
    gathering *g = free_slot(b->traces);
    if (g == NULL) {
        res->code = R(BUSY);
        snprintf(res->detail, sizeof res->detail, "%d traces are being gathered; try again "
                 "in a few seconds", MAX_GATHERINGS);
        return STORE_OK;
    }
    g->is_used = true;
    g->is_admin = true;
    g->asker = *asker;
    memcpy(g->referral_id, rq->id.data, IDS_BYTES);
    store_err e = start(b, txn, g, NULL, 0, ADMIN_WAIT_MS);
    if (e != STORE_OK) {
        release(g);
        return e;
    }
    res->is_later = true;
    if (g->n_waiting == 0)
        answer(b, g);
    return STORE_OK;
}

store_err trace_peer_query(broker *b, MDB_txn *txn, const char *peer, const uint8_t *rid,
                           size_t rid_len, const Referral__V1__TraceQuery *q, uint64_t now_ms)
{
    (void)now_ms;
    char hex[IDS_HEX_LEN + 1];
    ids_hex(q->referral_id.data, IDS_BYTES, hex);
    /* A peer hears only of a referral whose messages passed between us. */
    touch_walk w = {.only = peer};
    store_err e = walk_touched(b, txn, q->referral_id.data, &w);
    if (e != STORE_OK)
        return e;
    gathering *g = w.is_touched ? free_slot(b->traces) : NULL;
    log_info("trace", "trace query from peer=%s referral=%s answered=%s", peer, hex,
             !w.is_touched ? "refused (no message of it passed between us)"
             : g == NULL ? "busy" : "yes");
    if (g == NULL) {
        Referral__V1__TraceReply r = REFERRAL__V1__TRACE_REPLY__INIT;
        r.request_id = q->request_id;
        r.code = w.is_touched ? R(BUSY) : R(NOT_AUTHORIZED);
        peers_send_trace_reply(b, rid, rid_len, &r);
        return STORE_OK;
    }
    g->is_used = true;
    snprintf(g->peer, sizeof g->peer, "%s", peer);
    g->peer_rid_len = rid_len < LINK_RID_MAX ? rid_len : 0;
    memcpy(g->peer_rid, rid, g->peer_rid_len);
    g->peer_request_id = q->request_id;
    memcpy(g->referral_id, q->referral_id.data, IDS_BYTES);
    uint64_t share = ADMIN_WAIT_MS - HOP_SHARE_MS * (q->n_visited < 4 ? q->n_visited : 4);
    e = start(b, txn, g, q->visited, q->n_visited, share);
    if (e != STORE_OK) {
        release(g);
        return e;
    }
    if (g->n_waiting == 0)
        answer(b, g);
    return STORE_OK;
}

void trace_peer_reply(broker *b, const char *peer, const Referral__V1__TraceReply *r)
{
    for (size_t i = 0; i < MAX_GATHERINGS; i++) {
        gathering *g = &b->traces->items[i];
        if (!g->is_used || g->my_request_id != r->request_id ||
            !has_name(g->waiting, g->n_waiting, peer))
            continue;
        /* No longer waiting for this peer. */
        for (size_t j = 0; j < g->n_waiting; j++) {
            if (strcmp(g->waiting[j], peer) == 0) {
                memmove(g->waiting[j], g->waiting[j + 1],
                        (g->n_waiting - j - 1) * sizeof g->waiting[0]);
                g->n_waiting--;
                break;
            }
        }
        if (r->code != R(OK)) {
            add_name(g->unanswered, &g->n_unanswered, peer);
        } else {
            for (size_t j = 0; j < r->n_events; j++) {
                if (g->n_events == MAX_EVENTS) {
                    g->is_truncated = true;
                    break;
                }
                size_t len = referral__v1__trace_event__get_packed_size(r->events[j]);
                uint8_t *buf = malloc(len ? len : 1);
                if (buf == NULL)
                    break;
                referral__v1__trace_event__pack(r->events[j], buf);
                Referral__V1__TraceEvent *ev = referral__v1__trace_event__unpack(NULL, len, buf);
                free(buf);
                if (ev != NULL)
                    g->events[g->n_events++] = ev;
            }
            g->is_truncated |= r->is_truncated;
            for (size_t j = 0; j < r->n_brokers; j++)
                add_name(g->brokers, &g->n_brokers, r->brokers[j]);
            for (size_t j = 0; j < r->n_unanswered; j++)
                add_name(g->unanswered, &g->n_unanswered, r->unanswered[j]);
        }
        if (g->n_waiting == 0)
            answer(b, g);
        return;
    }
}

void trace_tick(broker *b)
{
    uint64_t now = clock_mono_ms();
    for (size_t i = 0; b->traces != NULL && i < MAX_GATHERINGS; i++) {
        gathering *g = &b->traces->items[i];
        if (g->is_used && now >= g->deadline_mono)
            answer(b, g);
    }
}
