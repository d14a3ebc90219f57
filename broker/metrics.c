/*
 * metrics: counters as C11 atomics, a queue snapshot under a mutex, and a
 * libmicrohttpd server that prints them (metrics.h). The loop thread
 * writes; the HTTP thread reads and formats. It must never read LMDB from
 * the HTTP thread, block the loop on a scrape, or print a label value
 * that did not come from a fixed set (the schema's enum names).
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <microhttpd.h>

#include "clock.h"
#include "log.h"
#include "ref_version.h"

#define N_RESULTS 32          /* ResultCode values (0..24 used) */
#define N_LEVELS 9            /* AckLevel 0..8 */
#define N_VERBS 5             /* SettleVerb 0..4 */
#define N_STEP_ACTIONS 6     /* policy_action 1..4, 5 skipped (condition no longer held) */
#define N_ALERT_KINDS 9      /* AlertKind 1..8 */
#define N_URGENCIES 5         /* Urgency 0..4 */
#define BODY_CAP (64u << 10)  /* a page of metrics is about 8 KiB */
#define SNAPSHOT_MIN_INTERVAL_MS 1000

typedef atomic_uint_fast64_t counter;

/* Commit latency buckets, upper bounds in microseconds (le, in seconds). */
static const uint64_t commit_bounds_us[] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
    5000000,
};
#define N_BOUNDS (sizeof commit_bounds_us / sizeof commit_bounds_us[0])

static struct {
    counter submissions[N_RESULTS];
    counter duplicates;
    counter receipts[N_LEVELS];
    counter deliveries;
    counter redeliveries;
    counter settles_ok[N_VERBS];
    counter settles_refused[N_VERBS];
    counter undeliverable;
    counter escalation_steps;
    counter escalation_actions[N_STEP_ACTIONS];
    counter alerts[N_ALERT_KINDS];
    counter stand_downs;
    atomic_uint_fast64_t escalation_worst_late_ms;
    counter commit_buckets[N_BOUNDS + 1];   /* last: above every bound */
    counter commit_sum_us;
    counter commit_count;
    counter sessions_open;
    counter checks_pending;
    counter checks_in_flight;
    atomic_bool wants_queues;
} m;

/* Per peer link. Names are written once by the loop thread, then published
 * by n_peers (release); the HTTP thread reads names below n_peers
 * (acquire) and the counters as atomics. */
typedef struct {
    char id[IDS_NAME_MAX + 1];
    atomic_bool is_up;
    atomic_bool is_stalled;
    counter in_flight;
    counter downs;
    counter stalls;
    counter forwards;
    counter hop_acks[N_RESULTS];
} peer_figures;

static struct {
    peer_figures items[CONFIG_MAX_PEERS];
    atomic_size_t n;
} peers;

/* The queue snapshot: written by the loop, read by the HTTP thread. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    bool is_taken;                    /* at least one snapshot exists */
    bool is_stopping;
    uint64_t generation;
    uint64_t taken_mono_ms;
    uint64_t depth[N_URGENCIES];
    uint64_t oldest_age_ms[N_URGENCIES];
    uint64_t in_flight;
} snap = {.lock = PTHREAD_MUTEX_INITIALIZER};

static struct MHD_Daemon *daemon_;
static uint64_t start_time_ms;

static void bump(counter *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static uint64_t get(counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* ---- hooks (loop thread) ---------------------------------------------- */

void metrics_count_submission(Referral__V1__ResultCode code, bool is_duplicate)
{
    if ((unsigned)code < N_RESULTS)
        bump(&m.submissions[code]);
    if (is_duplicate)
        bump(&m.duplicates);
}

void metrics_count_stored(Referral__V1__MessageKind kind, Referral__V1__AckLevel level)
{
    if (kind == REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_RECEIPT && (unsigned)level < N_LEVELS)
        bump(&m.receipts[level]);
}

void metrics_count_delivery(uint32_t attempt)
{
    bump(&m.deliveries);
    if (attempt > 1)
        bump(&m.redeliveries);
}

void metrics_count_settle(Referral__V1__SettleVerb verb, Referral__V1__ResultCode code)
{
    if ((unsigned)verb >= N_VERBS)
        verb = REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_UNSPECIFIED;
    bump(code == REFERRAL__V1__RESULT_CODE__RESULT_OK ? &m.settles_ok[verb]
                                                      : &m.settles_refused[verb]);
}

void metrics_count_undeliverable(void)
{
    bump(&m.undeliverable);
}

void metrics_count_escalation_step(int action)
{
    bump(&m.escalation_actions[action > 0 && action < N_STEP_ACTIONS ? action : 0]);
}

void metrics_count_alert(int kind, bool is_stand_down)
{
    if (is_stand_down)
        bump(&m.stand_downs);
    else
        bump(&m.alerts[kind > 0 && kind < N_ALERT_KINDS ? kind : 0]);
}

void metrics_observe_escalations(uint32_t n, uint64_t worst_late_ms)
{
    atomic_fetch_add_explicit(&m.escalation_steps, n, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&m.escalation_worst_late_ms, memory_order_relaxed);
    if (worst_late_ms > old)
        atomic_store_explicit(&m.escalation_worst_late_ms, worst_late_ms, memory_order_relaxed);
}

/* The figures of peer, or NULL (not added: too many peers). Loop thread. */
static peer_figures *peer_find(const char *peer)
{
    size_t n = atomic_load_explicit(&peers.n, memory_order_relaxed);
    for (size_t i = 0; i < n; i++)
        if (strcmp(peers.items[i].id, peer) == 0)
            return &peers.items[i];
    return NULL;
}

void metrics_peer_add(const char *peer)
{
    size_t n = atomic_load_explicit(&peers.n, memory_order_relaxed);
    if (peer_find(peer) != NULL || n == CONFIG_MAX_PEERS)
        return;
    snprintf(peers.items[n].id, sizeof peers.items[n].id, "%s", peer);
    atomic_store_explicit(&peers.n, n + 1, memory_order_release);
}

void metrics_observe_peer(const char *peer, bool is_up, bool is_stalled, size_t in_flight)
{
    peer_figures *f = peer_find(peer);
    if (f == NULL)
        return;
    atomic_store_explicit(&f->is_up, is_up, memory_order_relaxed);
    atomic_store_explicit(&f->is_stalled, is_stalled, memory_order_relaxed);
    atomic_store_explicit(&f->in_flight, in_flight, memory_order_relaxed);
}

void metrics_count_peer_down(const char *peer)
{
    peer_figures *f = peer_find(peer);
    if (f != NULL)
        bump(&f->downs);
}

void metrics_count_peer_stall(const char *peer)
{
    peer_figures *f = peer_find(peer);
    if (f != NULL)
        bump(&f->stalls);
}

void metrics_count_peer_forward(const char *peer)
{
    peer_figures *f = peer_find(peer);
    if (f != NULL)
        bump(&f->forwards);
}

void metrics_count_peer_hop_ack(const char *peer, Referral__V1__ResultCode code)
{
    peer_figures *f = peer_find(peer);
    if (f != NULL && (unsigned)code < N_RESULTS)
        bump(&f->hop_acks[code]);
}

uint64_t metrics_clock_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void metrics_observe_commit(uint64_t started_us)
{
    uint64_t now = metrics_clock_us();
    uint64_t us = now > started_us ? now - started_us : 0;
    size_t i = 0;
    while (i < N_BOUNDS && us > commit_bounds_us[i])
        i++;
    bump(&m.commit_buckets[i]);
    atomic_fetch_add_explicit(&m.commit_sum_us, us, memory_order_relaxed);
    bump(&m.commit_count);
}

void metrics_observe_turn(size_t sessions_open, size_t checks_pending, size_t checks_in_flight)
{
    atomic_store_explicit(&m.sessions_open, sessions_open, memory_order_relaxed);
    atomic_store_explicit(&m.checks_pending, checks_pending, memory_order_relaxed);
    atomic_store_explicit(&m.checks_in_flight, checks_in_flight, memory_order_relaxed);
}

bool metrics_wants_queues(void)
{
    return atomic_load_explicit(&m.wants_queues, memory_order_relaxed);
}

/* The created_at_ms of message id, read without side effects (a record
 * that does not decode is left for the loop's own reads to set aside). */
static bool created_at(store *st, MDB_txn *txn, const uint8_t *id, uint64_t *out)
{
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)id}, v;
    store_msg msg;
    char why[128];
    if (mdb_get(txn, store_dbi(st, STORE_DB_MSGS), &k, &v) != 0 ||
        !store_msg_decode(v.mv_data, v.mv_size, &msg, why, sizeof why))
        return false;
    *out = msg.created_at_ms;
    return true;
}

/* Walk the queue index (queue.h: recipient \0 rank seq -> [1] id): count
 * entries by urgency; the first entry of each recipient and rank is its
 * oldest, whose age counts toward that urgency's oldest. */
void metrics_observe_queues(store *st, MDB_txn *txn, uint64_t now_ms)
{
    uint64_t started_us = metrics_clock_us();
    uint64_t depth[N_URGENCIES] = {0}, oldest[N_URGENCIES] = {0};
    uint8_t group[IDS_NAME_MAX + 2];
    size_t group_len = 0;
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, store_dbi(st, STORE_DB_QUEUE), &c);
    MDB_val k, v;
    for (int op = MDB_FIRST; rc == 0 && mdb_cursor_get(c, &k, &v, op) == 0; op = MDB_NEXT) {
        const uint8_t *key = k.mv_data;
        const uint8_t *nul = memchr(key, 0, k.mv_size);
        size_t prefix = nul != NULL ? (size_t)(nul - key) + 2 : 0;   /* recipient \0 rank */
        if (nul == NULL || prefix + 8 != k.mv_size || prefix > sizeof group || key[prefix - 1] > 3)
            continue;   /* not a queue key of this format: the loop sets it aside */
        unsigned urgency = 4u - key[prefix - 1];
        depth[urgency]++;
        if (prefix == group_len && memcmp(group, key, prefix) == 0)
            continue;
        memcpy(group, key, prefix);
        group_len = prefix;
        uint64_t created;
        const uint8_t *val = v.mv_data;
        if (v.mv_size == 1 + IDS_BYTES && val[0] == STORE_RECORD_V1 &&
            created_at(st, txn, val + 1, &created) && now_ms > created &&
            now_ms - created > oldest[urgency])
            oldest[urgency] = now_ms - created;
    }
    if (rc == 0)
        mdb_cursor_close(c);
    MDB_stat ms;
    uint64_t in_flight = mdb_stat(txn, store_dbi(st, STORE_DB_INFLIGHT), &ms) == 0
                             ? ms.ms_entries : 0;
    pthread_mutex_lock(&snap.lock);
    memcpy(snap.depth, depth, sizeof depth);
    memcpy(snap.oldest_age_ms, oldest, sizeof oldest);
    snap.in_flight = in_flight;
    snap.taken_mono_ms = clock_mono_ms();
    snap.is_taken = true;
    snap.generation++;
    atomic_store_explicit(&m.wants_queues, false, memory_order_relaxed);
    pthread_cond_broadcast(&snap.changed);
    pthread_mutex_unlock(&snap.lock);
    log_debug("metrics", "queue snapshot queued=%llu in_flight=%llu us=%llu",
              (unsigned long long)(depth[1] + depth[2] + depth[3] + depth[4]),
              (unsigned long long)in_flight,
              (unsigned long long)(metrics_clock_us() - started_us));
}

/* ---- the page (HTTP thread) ------------------------------------------- */

typedef struct {
    char *buf;
    size_t len;
    bool is_full;
} page;

static void put(page *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(page *p, const char *fmt, ...)
{
    if (p->is_full)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(p->buf + p->len, BODY_CAP - p->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= BODY_CAP - p->len)
        p->is_full = true;
    else
        p->len += (size_t)n;
}

static void head(page *p, const char *name, const char *type, const char *help)
{
    put(p, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The schema's name of enum value v without its prefix, lower case
 * ("RESULT_STORE_FULL" -> "store_full"), into out; "" if v is unknown. */
static const char *enum_label(const ProtobufCEnumDescriptor *d, int v, size_t prefix_len,
                              char *out, size_t cap)
{
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(d, v);
    out[0] = '\0';
    if (ev == NULL || strlen(ev->name) <= prefix_len)
        return out;
    size_t i = 0;
    for (const char *s = ev->name + prefix_len; *s != '\0' && i + 1 < cap; s++)
        out[i++] = (char)(*s >= 'A' && *s <= 'Z' ? *s - 'A' + 'a' : *s);
    out[i] = '\0';
    return out;
}

/* Wait (bounded) for a queue snapshot taken after this scrape asked, unless
 * the last one is under a second old. Copies it out under the lock. */
static void read_snapshot(uint64_t depth[N_URGENCIES], uint64_t oldest[N_URGENCIES],
                          uint64_t *in_flight, uint64_t *age_ms, bool *is_taken)
{
    pthread_mutex_lock(&snap.lock);
    uint64_t now = clock_mono_ms();
    if (!snap.is_taken || now - snap.taken_mono_ms >= SNAPSHOT_MIN_INTERVAL_MS) {
        uint64_t gen = snap.generation;
        atomic_store_explicit(&m.wants_queues, true, memory_order_relaxed);
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += METRICS_SNAPSHOT_WAIT_MS / 1000;
        until.tv_nsec += (long)(METRICS_SNAPSHOT_WAIT_MS % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (snap.generation == gen && !snap.is_stopping &&
               pthread_cond_timedwait(&snap.changed, &snap.lock, &until) != ETIMEDOUT) {
        }
    }
    memcpy(depth, snap.depth, sizeof snap.depth);
    memcpy(oldest, snap.oldest_age_ms, sizeof snap.oldest_age_ms);
    *in_flight = snap.in_flight;
    *is_taken = snap.is_taken;
    *age_ms = snap.is_taken ? clock_mono_ms() - snap.taken_mono_ms : 0;
    pthread_mutex_unlock(&snap.lock);
}

/* One family over every peer link: value(f) per peer. */
static void put_peers(page *p, size_t n, const char *name, const char *type, const char *help,
                      uint64_t (*value)(peer_figures *f))
{
    head(p, name, type, help);
    for (size_t i = 0; i < n; i++)
        put(p, "%s{peer=\"%s\"} %llu\n", name, peers.items[i].id,
            (unsigned long long)value(&peers.items[i]));
}

static uint64_t peer_up(peer_figures *f)
{
    return atomic_load_explicit(&f->is_up, memory_order_relaxed);
}

static uint64_t peer_stalled(peer_figures *f)
{
    return atomic_load_explicit(&f->is_stalled, memory_order_relaxed);
}

static uint64_t peer_in_flight(peer_figures *f)
{
    return get(&f->in_flight);
}

static uint64_t peer_downs(peer_figures *f)
{
    return get(&f->downs);
}

static uint64_t peer_stalls(peer_figures *f)
{
    return get(&f->stalls);
}

static uint64_t peer_forwards(peer_figures *f)
{
    return get(&f->forwards);
}

/* The federation links' figures; nothing without federation. Hop acks:
 * ok always, other codes once seen (a page of every code for every peer
 * would be mostly zeros). */
static void render_peers(page *p)
{
    size_t n = atomic_load_explicit(&peers.n, memory_order_acquire);
    if (n == 0)
        return;
    char label[48];
    put_peers(p, n, "referral_peer_up", "gauge",
              "Link to the peer broker connected and heard from within peer_timeout_ms (1), or "
              "not (0).", peer_up);
    put_peers(p, n, "referral_peer_stalled", "gauge",
              "Work waits for the peer and no hop ack came for stall_ms (1).", peer_stalled);
    put_peers(p, n, "referral_peer_in_flight", "gauge",
              "Forwards sent to the peer awaiting its hop ack (at most peer_window).",
              peer_in_flight);
    put_peers(p, n, "referral_peer_downs_total", "counter",
              "Times the link went down (disconnected, or silent for peer_timeout_ms).",
              peer_downs);
    put_peers(p, n, "referral_peer_stalls_total", "counter",
              "Times the stall detector fired for the link (logged `link stalled`).",
              peer_stalls);
    put_peers(p, n, "referral_peer_forwards_total", "counter",
              "Stored messages (forwards, notices) sent on the link; resends count again.",
              peer_forwards);
    head(p, "referral_peer_hop_acks_total", "counter",
         "Hop acks that settled a forward, by peer and code (ok: stored durably there).");
    for (size_t i = 0; i < n; i++) {
        peer_figures *f = &peers.items[i];
        for (int c = 1; c < N_RESULTS; c++)
            if ((c == REFERRAL__V1__RESULT_CODE__RESULT_OK || get(&f->hop_acks[c]) > 0) &&
                enum_label(&referral__v1__result_code__descriptor, c, 7, label,
                           sizeof label)[0])
                put(p, "referral_peer_hop_acks_total{peer=\"%s\",code=\"%s\"} %llu\n", f->id,
                    label, (unsigned long long)get(&f->hop_acks[c]));
    }
}

static void render(page *p)
{
    char label[48];
    head(p, "referral_build_info", "gauge", "referrald's version (always 1).");
    put(p, "referral_build_info{version=\"%s\"} 1\n", REF_VERSION);
    head(p, "referral_start_time_seconds", "gauge", "When this referrald started (Unix time).");
    put(p, "referral_start_time_seconds %.3f\n", (double)start_time_ms / 1000.0);

    head(p, "referral_submissions_total", "counter",
         "Submissions answered, by result (ok: stored durably, or a duplicate of one stored).");
    for (int c = 1; c < N_RESULTS; c++)
        if (enum_label(&referral__v1__result_code__descriptor, c, 7, label, sizeof label)[0])
            put(p, "referral_submissions_total{result=\"%s\"} %llu\n", label,
                (unsigned long long)get(&m.submissions[c]));
    head(p, "referral_submissions_duplicate_total", "counter",
         "Submissions answered ok as duplicates of a message already stored.");
    put(p, "referral_submissions_duplicate_total %llu\n", (unsigned long long)get(&m.duplicates));

    head(p, "referral_receipts_total", "counter",
         "Agency receipts stored, by the level their routing header asserts.");
    for (int l = REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_RECEIVED; l < N_LEVELS; l++)
        put(p, "referral_receipts_total{level=\"%s\"} %llu\n",
            enum_label(&referral__v1__ack_level__descriptor, l, 10, label, sizeof label),
            (unsigned long long)get(&m.receipts[l]));

    head(p, "referral_deliveries_total", "counter",
         "Delivery frames (referrals, receipts, notices) that left for a live connection.");
    put(p, "referral_deliveries_total %llu\n", (unsigned long long)get(&m.deliveries));
    head(p, "referral_redeliveries_total", "counter",
         "Of referral_deliveries_total, attempts after the first.");
    put(p, "referral_redeliveries_total %llu\n", (unsigned long long)get(&m.redeliveries));

    head(p, "referral_settles_total", "counter",
         "Settles from agency clients answered ok, by verb (ack: DELIVERED).");
    for (int v = 1; v < N_VERBS; v++)
        put(p, "referral_settles_total{verb=\"%s\"} %llu\n",
            enum_label(&referral__v1__settle_verb__descriptor, v, 12, label, sizeof label),
            (unsigned long long)get(&m.settles_ok[v]));
    head(p, "referral_settles_refused_total", "counter",
         "Settles refused (unknown or already settled message, bad verb), by verb.");
    for (int v = 0; v < N_VERBS; v++) {
        const char *name = v == 0 ? "unknown"
            : enum_label(&referral__v1__settle_verb__descriptor, v, 12, label, sizeof label);
        put(p, "referral_settles_refused_total{verb=\"%s\"} %llu\n", name,
            (unsigned long long)get(&m.settles_refused[v]));
    }
    head(p, "referral_undeliverable_total", "counter",
         "Referrals that expired before delivery (the sender is told; phone the agency).");
    put(p, "referral_undeliverable_total %llu\n", (unsigned long long)get(&m.undeliverable));
    head(p, "referral_escalation_deadlines_total", "counter",
         "Escalation and watchdog deadlines acted on (steps, checks, ends of records).");
    put(p, "referral_escalation_deadlines_total %llu\n",
        (unsigned long long)get(&m.escalation_steps));
    head(p, "referral_escalation_steps_total", "counter",
         "Escalation policy steps, by what they did (skipped: the level was reached).");
    static const char *const actions[N_STEP_ACTIONS] = {
        "other", "copy_next", "copy_all", "alert_supervisor", "alert_centre", "skipped"};
    for (int a = 1; a < N_STEP_ACTIONS; a++)
        put(p, "referral_escalation_steps_total{action=\"%s\"} %llu\n", actions[a],
            (unsigned long long)get(&m.escalation_actions[a]));
    head(p, "referral_alerts_total", "counter",
         "Alert notices queued (one per agency told), by alert kind.");
    for (int k = 1; k < N_ALERT_KINDS; k++)
        put(p, "referral_alerts_total{kind=\"%s\"} %llu\n",
            enum_label(&referral__v1__alert_kind__descriptor, k, 11, label, sizeof label),
            (unsigned long long)get(&m.alerts[k]));
    head(p, "referral_stand_downs_total", "counter",
         "Stand-down notices queued (another agency accepted; a partition alert ended).");
    put(p, "referral_stand_downs_total %llu\n", (unsigned long long)get(&m.stand_downs));
    head(p, "referral_escalation_worst_lateness_seconds", "gauge",
         "The latest an escalation deadline fired after its due time, since start.");
    put(p, "referral_escalation_worst_lateness_seconds %.3f\n",
        (double)get(&m.escalation_worst_late_ms) / 1000.0);

    head(p, "referral_commit_duration_seconds", "histogram",
         "Time of each loop turn's commit (one write transaction with fsync).");
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= N_BOUNDS; i++) {
        cumulative += get(&m.commit_buckets[i]);
        if (i < N_BOUNDS)
            put(p, "referral_commit_duration_seconds_bucket{le=\"%g\"} %llu\n",
                (double)commit_bounds_us[i] / 1e6, (unsigned long long)cumulative);
        else
            put(p, "referral_commit_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                (unsigned long long)cumulative);
    }
    put(p, "referral_commit_duration_seconds_sum %.6f\n",
        (double)get(&m.commit_sum_us) / 1e6);
    put(p, "referral_commit_duration_seconds_count %llu\n",
        (unsigned long long)get(&m.commit_count));

    head(p, "referral_sessions_open", "gauge", "Agency client sessions open.");
    put(p, "referral_sessions_open %llu\n", (unsigned long long)get(&m.sessions_open));
    head(p, "referral_verify_pending_frames", "gauge",
         "Frames held in arrival order while signatures are checked ([limits] max_pending_checks).");
    put(p, "referral_verify_pending_frames %llu\n", (unsigned long long)get(&m.checks_pending));
    head(p, "referral_verify_in_flight", "gauge", "Signature checks out at the worker threads.");
    put(p, "referral_verify_in_flight %llu\n", (unsigned long long)get(&m.checks_in_flight));

    render_peers(p);

    uint64_t depth[N_URGENCIES], oldest[N_URGENCIES], in_flight, age_ms;
    bool is_taken;
    read_snapshot(depth, oldest, &in_flight, &age_ms, &is_taken);
    if (!is_taken)
        return;   /* the loop has not answered yet: no queue figures rather than false zeros */
    head(p, "referral_queue_depth", "gauge", "Messages queued for delivery, by urgency.");
    for (int u = 4; u >= 1; u--)
        put(p, "referral_queue_depth{urgency=\"%s\"} %llu\n",
            enum_label(&referral__v1__urgency__descriptor, u, 8, label, sizeof label),
            (unsigned long long)depth[u]);
    head(p, "referral_queue_oldest_age_seconds", "gauge",
         "Age (since its sender created it) of the oldest queued message, by urgency; 0 if none.");
    for (int u = 4; u >= 1; u--)
        put(p, "referral_queue_oldest_age_seconds{urgency=\"%s\"} %.3f\n",
            enum_label(&referral__v1__urgency__descriptor, u, 8, label, sizeof label),
            (double)oldest[u] / 1000.0);
    head(p, "referral_in_flight", "gauge", "Messages handed to a session and not yet settled.");
    put(p, "referral_in_flight %llu\n", (unsigned long long)in_flight);
    head(p, "referral_queue_snapshot_age_seconds", "gauge",
         "How old the queue figures above are.");
    put(p, "referral_queue_snapshot_age_seconds %.3f\n", (double)age_ms / 1000.0);
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, char *body,
                             size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            status == MHD_HTTP_OK ? "text/plain; version=0.0.4; charset=utf-8"
                                                  : "text/plain; charset=utf-8");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    (void)cls, (void)version, (void)upload_data, (void)upload_data_size, (void)req_cls;
    bool is_get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
                  strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    const char *refusal = !is_get ? "only GET /metrics is served here\n"
                        : strcmp(url, "/metrics") != 0 ? "see /metrics\n" : NULL;
    if (refusal != NULL)
        return reply(conn, is_get ? MHD_HTTP_NOT_FOUND : MHD_HTTP_METHOD_NOT_ALLOWED,
                     strdup(refusal), strlen(refusal));
    page p = {.buf = malloc(BODY_CAP), .len = 0, .is_full = false};
    if (p.buf == NULL)
        return MHD_NO;
    render(&p);
    if (p.is_full) {   /* never a cut page that reads as complete */
        log_error("metrics", "metrics page above %u bytes; not served", BODY_CAP);
        free(p.buf);
        const char *msg = "metrics page too large\n";
        return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, strdup(msg), strlen(msg));
    }
    return reply(conn, MHD_HTTP_OK, p.buf, p.len);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[256];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    char quoted[300];
    log_warn("metrics", "http server: %s", log_quote(line, quoted, sizeof quoted));
}

/* ---- start and stop --------------------------------------------------- */

bool metrics_parse_listen(const char *text, struct sockaddr_storage *addr, socklen_t *addr_len,
                          bool *is_loopback)
{
    char host[64];
    const char *colon = strrchr(text, ':');
    if (colon == NULL || colon == text || (size_t)(colon - text) >= sizeof host)
        return false;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (colon[1] < '0' || colon[1] > '9' || *end != '\0' || errno != 0 || port == 0 ||
        port > 65535)
        return false;
    memset(addr, 0, sizeof *addr);
    size_t hl = strlen(host);
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)(void *)addr;
        if (inet_pton(AF_INET6, host + 1, &a6->sin6_addr) != 1)
            return false;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *addr_len = sizeof *a6;
        *is_loopback = IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
        return true;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)(void *)addr;
    if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
        return false;
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    *addr_len = sizeof *a4;
    *is_loopback = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
    return true;
}

bool metrics_start(const config *cfg)
{
    start_time_ms = clock_now_ms();
    if (cfg->metrics_listen[0] == '\0')
        return true;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    bool is_loopback;
    if (!metrics_parse_listen(cfg->metrics_listen, &addr, &addr_len, &is_loopback))
        return false;   /* config_load checked it already */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&snap.changed, &ca);
    pthread_condattr_destroy(&ca);
    /* The server's thread must never take SIGTERM or SIGHUP from the loop:
     * it inherits a mask that blocks every signal. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    daemon_ = MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL,
                               MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
                               MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                               MHD_OPTION_CONNECTION_LIMIT, 16u,
                               MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                               MHD_OPTION_END);
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (daemon_ == NULL) {
        log_error("metrics", "cannot serve metrics listen=%s err=%s; free the port or change "
                  "[metrics] listen (empty turns metrics off)", cfg->metrics_listen,
                  strerror(err));
        pthread_cond_destroy(&snap.changed);
        return false;
    }
    if (!is_loopback)
        log_warn("metrics", "metrics served beyond loopback ([metrics] allow_remote = true) "
                 "listen=%s: restrict who can reach this port", cfg->metrics_listen);
    log_info("metrics", "serving Prometheus metrics url=http://%s/metrics", cfg->metrics_listen);
    return true;
}

void metrics_stop(void)
{
    if (daemon_ == NULL)
        return;
    pthread_mutex_lock(&snap.lock);
    snap.is_stopping = true;   /* a scrape waiting for the loop answers now */
    pthread_cond_broadcast(&snap.changed);
    pthread_mutex_unlock(&snap.lock);
    MHD_stop_daemon(daemon_);
    daemon_ = NULL;
    pthread_cond_destroy(&snap.changed);
}
