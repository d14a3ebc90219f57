/*
 * escalate: the home watcher and the origin's watchdog (escalate.h).
 */
#include "escalate.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "log.h"
#include "metrics.h"
#include "seal.h"
#include "utf8.h"
#include "wire.h"

#define TRY(expr) do { store_err e_ = (expr); if (e_ != STORE_OK) return e_; } while (0)

#define ESC_MAX_CHAIN 16
#define ESC_MAX_ATTEMPTS (1 + ESC_MAX_CHAIN)
#define ESC_MAX_ALERTED 2
#define NO_WINNER 0xff

#define K_RECORD 'E'
#define K_ATTEMPT 'A'
#define K_BODY 'B'
#define K_DUE 'D'
#define DUE_KEY_BYTES (1 + 1 + 8 + IDS_BYTES)

#define LEVEL(x) REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_##x
#define ALERT(x) REFERRAL__V1__ALERT_KIND__ALERT_KIND_##x
#define TRACE(x) REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_##x
#define STATE(x) REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_##x

typedef enum { ROLE_HOME = 1, ROLE_WATCHDOG = 2 } esc_role;
typedef enum {
    ESC_WATCHING = 1,      /* steps (or checks) to come */
    ESC_WON = 2,           /* an agency accepted: the chain stopped */
    ESC_EXHAUSTED = 3,     /* every step fired; still recording levels until expiry */
    ESC_ALERTED = 4,       /* watchdog: a partition alert stands */
} esc_state;
typedef enum {
    ATT_LIVE = 1, ATT_REJECTED = 2, ATT_FAILED = 3, ATT_WITHDRAWN = 4, ATT_STOOD_DOWN = 5,
} att_state;

typedef struct {
    char agency[IDS_NAME_MAX + 1];
    uint8_t message_id[IDS_BYTES];   /* the store message of this attempt */
    uint8_t attempt_id[IDS_BYTES];
    uint8_t level;                   /* highest AckLevel asserted for it */
    uint8_t state;                   /* att_state */
    uint64_t at_ms;                  /* when it reached level */
} esc_attempt;

typedef struct {
    uint8_t role, state, urgency, round, next_step, fired_events, winner, level;
    uint64_t created_ms, expires_ms, due_ms, level_at_ms, word_at_ms;
    uint8_t message_id[IDS_BYTES], referral_id[IDS_BYTES];
    char level_by[IDS_NAME_MAX + 1];
    char sender[IDS_NAME_MAX + 1], recipient[IDS_NAME_MAX + 1];
    policy pol;                      /* id, version, deadlines and steps as at creation */
    size_t n_chain;
    char chain[ESC_MAX_CHAIN][IDS_NAME_MAX + 1];
    size_t n_attempts;
    esc_attempt attempts[ESC_MAX_ATTEMPTS];
    size_t n_alerted;
    char alerted[ESC_MAX_ALERTED][IDS_NAME_MAX + 1];
} esc_record;

/* ---- the record's encoding (version 1) ---------------------------------- */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    bool is_bad;
} wbuf;

static void put_bytes(wbuf *w, const void *b, size_t n)
{
    if (w->is_bad || w->len + n > w->cap) {
        w->is_bad = true;
        return;
    }
    memcpy(w->p + w->len, b, n);
    w->len += n;
}

static void put_u8(wbuf *w, uint8_t v) { put_bytes(w, &v, 1); }

static void put_u64(wbuf *w, uint64_t v)
{
    uint8_t b[8];
    for (int i = 7; i >= 0; i--, v >>= 8)
        b[i] = (uint8_t)v;
    put_bytes(w, b, 8);
}

static void put_str(wbuf *w, const char *s)
{
    size_t n = strlen(s);
    put_u8(w, (uint8_t)n);
    put_bytes(w, s, n);
}

typedef struct {
    const uint8_t *p;
    size_t len, at;
    bool is_bad;
} rbuf;

static const uint8_t *take(rbuf *r, size_t n)
{
    if (r->is_bad || r->len - r->at < n) {
        r->is_bad = true;
        return NULL;
    }
    const uint8_t *q = r->p + r->at;
    r->at += n;
    return q;
}

static uint8_t get_u8(rbuf *r)
{
    const uint8_t *q = take(r, 1);
    return q != NULL ? q[0] : 0;
}

static uint64_t get_u64(rbuf *r)
{
    const uint8_t *q = take(r, 8);
    uint64_t v = 0;
    for (int i = 0; q != NULL && i < 8; i++)
        v = v << 8 | q[i];
    return v;
}

static void get_bytes(rbuf *r, void *out, size_t n)
{
    const uint8_t *q = take(r, n);
    if (q != NULL)
        memcpy(out, q, n);
}

/* A name [len][bytes]: empty allowed when may_be_empty; else a valid id. */
static void get_str(rbuf *r, char *out, size_t cap, bool may_be_empty)
{
    uint8_t n = get_u8(r);
    const uint8_t *q = take(r, n);
    if (q == NULL || n >= cap) {
        r->is_bad = true;
        out[0] = '\0';
        return;
    }
    memcpy(out, q, n);
    out[n] = '\0';
    if (strlen(out) != n || (n == 0 && !may_be_empty) || (n > 0 && !ids_is_valid_name(out)))
        r->is_bad = true;
}

static size_t encode(const esc_record *e, uint8_t *buf, size_t cap)
{
    wbuf w = {buf, 0, cap, false};
    put_u8(&w, STORE_RECORD_V1);
    put_u8(&w, e->role);
    put_u8(&w, e->state);
    put_u8(&w, e->urgency);
    put_u8(&w, e->round);
    put_u8(&w, e->next_step);
    put_u8(&w, e->fired_events);
    put_u8(&w, e->winner);
    put_u8(&w, e->level);
    put_u64(&w, e->created_ms);
    put_u64(&w, e->expires_ms);
    put_u64(&w, e->due_ms);
    put_u64(&w, e->level_at_ms);
    put_u64(&w, e->word_at_ms);
    put_bytes(&w, e->message_id, IDS_BYTES);
    put_bytes(&w, e->referral_id, IDS_BYTES);
    put_str(&w, e->level_by);
    put_str(&w, e->sender);
    put_str(&w, e->recipient);
    const policy *p = &e->pol;
    put_str(&w, p->id);
    put_u64(&w, p->version);
    for (size_t i = 0; i < POLICY_LEVELS; i++)
        put_u64(&w, p->within_ms[i]);
    put_u64(&w, p->watchdog_grace_ms);
    put_u8(&w, (uint8_t)p->rounds);
    put_u64(&w, p->round_ms);
    put_u8(&w, (uint8_t)p->n_steps);
    for (size_t i = 0; i < p->n_steps; i++) {
        put_u8(&w, p->steps[i].condition);
        put_u8(&w, p->steps[i].action);
        put_u64(&w, p->steps[i].delay_ms);
    }
    put_u8(&w, (uint8_t)e->n_chain);
    for (size_t i = 0; i < e->n_chain; i++)
        put_str(&w, e->chain[i]);
    put_u8(&w, (uint8_t)e->n_attempts);
    for (size_t i = 0; i < e->n_attempts; i++) {
        const esc_attempt *a = &e->attempts[i];
        put_str(&w, a->agency);
        put_bytes(&w, a->message_id, IDS_BYTES);
        put_bytes(&w, a->attempt_id, IDS_BYTES);
        put_u8(&w, a->level);
        put_u8(&w, a->state);
        put_u64(&w, a->at_ms);
    }
    put_u8(&w, (uint8_t)e->n_alerted);
    for (size_t i = 0; i < e->n_alerted; i++)
        put_str(&w, e->alerted[i]);
    return w.is_bad ? 0 : w.len;
}

static bool decode(const uint8_t *buf, size_t len, esc_record *e, char *why, size_t why_len)
{
    memset(e, 0, sizeof *e);
    rbuf r = {buf, len, 0, false};
    uint8_t version = get_u8(&r);
    if (version != STORE_RECORD_V1) {
        snprintf(why, why_len, "unknown escalation record version %u", version);
        return false;
    }
    e->role = get_u8(&r);
    e->state = get_u8(&r);
    e->urgency = get_u8(&r);
    e->round = get_u8(&r);
    e->next_step = get_u8(&r);
    e->fired_events = get_u8(&r);
    e->winner = get_u8(&r);
    e->level = get_u8(&r);
    e->created_ms = get_u64(&r);
    e->expires_ms = get_u64(&r);
    e->due_ms = get_u64(&r);
    e->level_at_ms = get_u64(&r);
    e->word_at_ms = get_u64(&r);
    get_bytes(&r, e->message_id, IDS_BYTES);
    get_bytes(&r, e->referral_id, IDS_BYTES);
    get_str(&r, e->level_by, sizeof e->level_by, true);
    get_str(&r, e->sender, sizeof e->sender, false);
    get_str(&r, e->recipient, sizeof e->recipient, false);
    policy *p = &e->pol;
    get_str(&r, p->id, sizeof p->id, false);
    uint64_t v = get_u64(&r);
    p->version = (uint32_t)v;
    for (size_t i = 0; i < POLICY_LEVELS; i++)
        p->within_ms[i] = get_u64(&r);
    p->watchdog_grace_ms = get_u64(&r);
    p->rounds = get_u8(&r);
    p->round_ms = get_u64(&r);
    p->n_steps = get_u8(&r);
    bool ok = !r.is_bad && v <= UINT32_MAX && p->n_steps <= POLICY_MAX_STEPS &&
              p->rounds >= 1 && p->rounds <= POLICY_MAX_ROUNDS;
    for (size_t i = 0; ok && i < p->n_steps; i++) {
        p->steps[i].condition = get_u8(&r);
        p->steps[i].action = get_u8(&r);
        p->steps[i].delay_ms = get_u64(&r);
        ok = p->steps[i].condition >= 1 && p->steps[i].condition <= POLICY_IF_FATAL &&
             p->steps[i].action >= 1 && p->steps[i].action <= POLICY_DO_ALERT_CENTRE;
    }
    e->n_chain = ok ? get_u8(&r) : 0;
    ok = ok && e->n_chain <= ESC_MAX_CHAIN;
    for (size_t i = 0; ok && i < e->n_chain; i++)
        get_str(&r, e->chain[i], sizeof e->chain[i], false);
    e->n_attempts = ok ? get_u8(&r) : 0;
    ok = ok && e->n_attempts >= 1 && e->n_attempts <= ESC_MAX_ATTEMPTS;
    for (size_t i = 0; ok && i < e->n_attempts; i++) {
        esc_attempt *a = &e->attempts[i];
        get_str(&r, a->agency, sizeof a->agency, false);
        get_bytes(&r, a->message_id, IDS_BYTES);
        get_bytes(&r, a->attempt_id, IDS_BYTES);
        a->level = get_u8(&r);
        a->state = get_u8(&r);
        a->at_ms = get_u64(&r);
        ok = a->level <= LEVEL(CLOSED) && a->state >= ATT_LIVE && a->state <= ATT_STOOD_DOWN;
    }
    e->n_alerted = ok ? get_u8(&r) : 0;
    ok = ok && e->n_alerted <= ESC_MAX_ALERTED;
    for (size_t i = 0; ok && i < e->n_alerted; i++)
        get_str(&r, e->alerted[i], sizeof e->alerted[i], false);
    ok = ok && e->round <= p->rounds &&
         e->next_step <= (e->role == ROLE_WATCHDOG ? POLICY_LEVELS : p->n_steps);
    ok = ok && !r.is_bad && r.at == r.len && (e->role == ROLE_HOME || e->role == ROLE_WATCHDOG) &&
         e->state >= ESC_WATCHING && e->state <= ESC_ALERTED && e->urgency >= 1 &&
         e->urgency <= 4 && e->level <= LEVEL(CLOSED) && p->n_steps <= POLICY_MAX_STEPS &&
         (e->winner == NO_WINNER || e->winner < e->n_attempts);
    if (!ok)
        snprintf(why, why_len, "malformed escalation record (%zu bytes)", len);
    return ok;
}

bool escalate_record_check(const uint8_t *buf, size_t len, char *why, size_t why_len)
{
    esc_record e;
    return decode(buf, len, &e, why, why_len);
}

/* ---- keys and the store ------------------------------------------------- */

static void key_of(uint8_t kind, const uint8_t id[IDS_BYTES], uint8_t key[1 + IDS_BYTES])
{
    key[0] = kind;
    memcpy(key + 1, id, IDS_BYTES);
}

static uint8_t rank_of(uint8_t urgency)
{
    return urgency >= 1 && urgency <= 4 ? (uint8_t)(4 - urgency) : 3;
}

static void due_key(uint8_t urgency, uint64_t due_ms, const uint8_t id[IDS_BYTES],
                    uint8_t key[DUE_KEY_BYTES])
{
    key[0] = K_DUE;
    key[1] = rank_of(urgency);
    for (int i = 0; i < 8; i++)
        key[2 + i] = (uint8_t)(due_ms >> (56 - 8 * i));
    memcpy(key + 10, id, IDS_BYTES);
}

static store_err put_raw(const escalate_ctx *ec, MDB_txn *txn, const void *k, size_t klen,
                         const void *v, size_t vlen)
{
    MDB_val key = {klen, (void *)(uintptr_t)k}, val = {vlen, (void *)(uintptr_t)v};
    return store_err_from_mdb(mdb_put(txn, store_dbi(ec->st, STORE_DB_ESCALATIONS), &key, &val,
                                      0));
}

static store_err get_raw(const escalate_ctx *ec, MDB_txn *txn, const void *k, size_t klen,
                         MDB_val *val)
{
    MDB_val key = {klen, (void *)(uintptr_t)k};
    int rc = mdb_get(txn, store_dbi(ec->st, STORE_DB_ESCALATIONS), &key, val);
    return rc == MDB_NOTFOUND ? STORE_NOT_FOUND : store_err_from_mdb(rc);
}

static store_err del_raw(const escalate_ctx *ec, MDB_txn *txn, const void *k, size_t klen)
{
    MDB_val key = {klen, (void *)(uintptr_t)k};
    int rc = mdb_del(txn, store_dbi(ec->st, STORE_DB_ESCALATIONS), &key, NULL);
    return rc == MDB_NOTFOUND ? STORE_OK : store_err_from_mdb(rc);
}

/* The record of message id; STORE_NOT_FOUND when there is none (or it did
 * not decode: it is then set aside). */
static store_err load(const escalate_ctx *ec, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                      esc_record *e)
{
    uint8_t key[1 + IDS_BYTES];
    key_of(K_RECORD, id, key);
    MDB_val v;
    TRY(get_raw(ec, txn, key, sizeof key, &v));
    char why[120];
    if (decode(v.mv_data, v.mv_size, e, why, sizeof why))
        return STORE_OK;
    store_err s = store_set_aside(ec->st, txn, STORE_DB_ESCALATIONS, key, sizeof key, why);
    return s == STORE_OK || s == STORE_NOT_FOUND ? STORE_NOT_FOUND : s;
}

static store_err save(const escalate_ctx *ec, MDB_txn *txn, const esc_record *e)
{
    uint8_t key[1 + IDS_BYTES];
    key_of(K_RECORD, e->message_id, key);
    uint8_t *buf = malloc(8192);
    if (buf == NULL)
        return STORE_FAILED;
    size_t n = encode(e, buf, 8192);
    store_err s = n > 0 ? put_raw(ec, txn, key, sizeof key, buf, n) : STORE_FAILED;
    free(buf);
    return s;
}

/* Move the record's one deadline to due_ms (0: none). */
static store_err set_due(const escalate_ctx *ec, MDB_txn *txn, esc_record *e, uint64_t due_ms)
{
    uint8_t key[DUE_KEY_BYTES];
    if (e->due_ms != 0) {
        due_key(e->urgency, e->due_ms, e->message_id, key);
        TRY(del_raw(ec, txn, key, sizeof key));
    }
    e->due_ms = due_ms;
    if (due_ms == 0)
        return STORE_OK;
    due_key(e->urgency, due_ms, e->message_id, key);
    static const uint8_t one = STORE_RECORD_V1;
    return put_raw(ec, txn, key, sizeof key, &one, 1);
}

/* When a record that has nothing more to do ends: a second after its
 * referral's expiry, so that the expiry of its messages (delivery.h) is
 * seen first. */
static uint64_t end_due(const esc_record *e, uint64_t now_ms)
{
    uint64_t end = e->expires_ms + 1000;
    return end > now_ms ? end : now_ms + 1;
}

/* Forget the record and everything kept for it. */
static store_err forget(const escalate_ctx *ec, MDB_txn *txn, esc_record *e)
{
    TRY(set_due(ec, txn, e, 0));
    uint8_t key[1 + IDS_BYTES];
    for (size_t i = 0; i < e->n_attempts; i++) {
        key_of(K_ATTEMPT, e->attempts[i].message_id, key);
        TRY(del_raw(ec, txn, key, sizeof key));
    }
    key_of(K_BODY, e->message_id, key);
    TRY(del_raw(ec, txn, key, sizeof key));
    key_of(K_RECORD, e->message_id, key);
    return del_raw(ec, txn, key, sizeof key);
}

/* ---- trace, alerts, notices --------------------------------------------- */

static const char *level_name(uint8_t level)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&referral__v1__ack_level__descriptor, level);
    return v != NULL ? v->name + strlen("ACK_LEVEL_") : "NONE";
}

/* A trace event of the referral, about agency (message id: the attempt's). */
static store_err trace(const escalate_ctx *ec, MDB_txn *txn, const esc_record *e,
                       const uint8_t *message_id, const char *agency,
                       Referral__V1__TraceEventKind kind, const char *detail, uint64_t now_ms)
{
    store_msg m;
    memset(&m, 0, sizeof m);
    memcpy(m.id, message_id, IDS_BYTES);
    memcpy(m.referral_id, e->referral_id, IDS_BYTES);
    snprintf(m.recipient, sizeof m.recipient, "%s", agency);
    snprintf(m.sender, sizeof m.sender, "%s", e->sender);
    char cut[WIRE_MAX_TEXT + 4];
    utf8_copy_cut(cut, sizeof cut, detail, WIRE_MAX_TEXT);
    return delivery_trace(ec->dc, txn, &m, kind, REFERRAL__V1__RESULT_CODE__RESULT_OK, cut,
                          now_ms);
}

static const Referral__V1__DirectoryAgency *agency_of(const escalate_ctx *ec, const char *id)
{
    return id != NULL && id[0] != '\0' && *ec->dir != NULL ? directory_agency(*ec->dir, id)
                                                            : NULL;
}

/* What an alert says, beyond the record. */
typedef struct {
    Referral__V1__AlertKind kind;
    uint32_t step, round;
    const char *about;                  /* the agency that did not respond */
    const char *detail;
    const char *const *copied_to;
    size_t n_copied;
} alert_spec;

/* Queue a notice of kind (ALERT or STAND_DOWN) carrying an alert for each
 * agency of to[] (skipping empties and repeats). */
static store_err send_alert(const escalate_ctx *ec, MDB_txn *txn, const esc_record *e,
                            Referral__V1__NoticeKind kind, const alert_spec *as,
                            const char *const *to, size_t n_to, uint64_t now_ms)
{
    Referral__V1__Alert a = REFERRAL__V1__ALERT__INIT;
    a.referral_id = (ProtobufCBinaryData){IDS_BYTES, (uint8_t *)(uintptr_t)e->referral_id};
    a.message_id = (ProtobufCBinaryData){IDS_BYTES, (uint8_t *)(uintptr_t)e->message_id};
    a.kind = as->kind;
    a.policy_id = (char *)(uintptr_t)e->pol.id;
    a.policy_version = e->pol.version;
    a.step = as->step;
    a.round = as->round;
    a.broker_id = (char *)(uintptr_t)ec->broker_id;
    a.at_ms = now_ms;
    char detail[WIRE_MAX_TEXT + 4];
    utf8_copy_cut(detail, sizeof detail, as->detail, WIRE_MAX_TEXT);
    a.detail = detail;
    a.urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS;
    a.to_agency = (char *)(uintptr_t)(as->about != NULL ? as->about : "");
    a.copied_to = (char **)(uintptr_t)as->copied_to;
    a.n_copied_to = as->n_copied;
    /* The directory's emergency numbers: the unresponsive agency's, else the
     * sender's; an alert always says whom to call. */
    const Referral__V1__DirectoryAgency *d = agency_of(ec, e->recipient);
    if (d == NULL || d->n_emergency_contacts == 0)
        d = agency_of(ec, e->sender);
    if (d != NULL) {
        a.emergency_contacts = d->emergency_contacts;
        a.n_emergency_contacts = d->n_emergency_contacts > 16 ? 16 : d->n_emergency_contacts;
    }
    for (size_t i = 0; i < n_to; i++) {
        bool is_repeat = to[i] == NULL || to[i][0] == '\0';
        for (size_t j = 0; j < i && !is_repeat; j++)
            is_repeat = to[j] != NULL && strcmp(to[i], to[j]) == 0;
        if (is_repeat)
            continue;
        delivery_notice n = {
            .referral_id = e->referral_id, .message_id = e->message_id, .to = to[i],
            .about_agency = a.to_agency, .kind = kind, .level = LEVEL(UNSPECIFIED),
            .code = REFERRAL__V1__RESULT_CODE__RESULT_OK, .detail = detail, .alert = &a,
            .urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS,
        };
        TRY(delivery_notify(ec->dc, txn, &n, now_ms));
        metrics_count_alert((int)as->kind,
                            kind == REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_STAND_DOWN);
    }
    char rhex[IDS_HEX_LEN + 1];
    log_warn("escalate", "%s referral=%s kind=%d step=%u round=%u about=%s policy=%s v%u: %s",
             kind == REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ALERT ? "alert" : "stand-down",
             ids_hex(e->referral_id, IDS_BYTES, rhex), (int)as->kind, as->step, as->round,
             a.to_agency, e->pol.id, e->pol.version, detail);
    return STORE_OK;
}

/* The supervisor desk or regional centre of the recipient, if homed here
 * (an alert to an agency of another region would need that region's
 * broker; the sender is told in any case). */
static const char *chain_target(const escalate_ctx *ec, const esc_record *e, bool is_centre)
{
    const Referral__V1__DirectoryAgency *d = agency_of(ec, e->recipient);
    if (d == NULL)
        return NULL;
    const char *first = is_centre ? d->regional_centre : d->supervisor_desk;
    const char *second = is_centre ? d->supervisor_desk : d->regional_centre;
    const char *pick[2] = {first, second};
    for (size_t i = 0; i < 2; i++) {
        const Referral__V1__DirectoryAgency *t = agency_of(ec, pick[i]);
        if (t != NULL)
            return t->id;
    }
    return NULL;
}

/* ---- levels and attempts ------------------------------------------------ */

static bool is_acceptance(uint8_t level)
{
    return level == LEVEL(ACCEPTED_BY_AGENCY) || level == LEVEL(ACTION_TAKEN) ||
           level == LEVEL(CLOSED);
}

/* The highest level of the attempts still open (or won). */
static uint8_t best_level(const esc_record *e)
{
    uint8_t best = 0;
    for (size_t i = 0; i < e->n_attempts; i++) {
        const esc_attempt *a = &e->attempts[i];
        if ((a->state == ATT_LIVE || i == e->winner) && a->level > best &&
            a->level != LEVEL(REJECTED))
            best = a->level;
    }
    return best;
}

static bool condition_holds(const esc_record *e, uint8_t condition)
{
    uint8_t best = best_level(e);
    switch (condition) {
    case POLICY_IF_NOT_DELIVERED: return e->winner == NO_WINNER && best < LEVEL(DELIVERED);
    case POLICY_IF_NOT_RECEIVED: return e->winner == NO_WINNER && best < LEVEL(RECEIVED);
    case POLICY_IF_NOT_ACCEPTED: return e->winner == NO_WINNER;
    default: return e->winner == NO_WINNER;
    }
}

static int attempt_by_agency(const esc_record *e, const char *agency)
{
    for (size_t i = 0; i < e->n_attempts; i++)
        if (strcmp(e->attempts[i].agency, agency) == 0)
            return (int)i;
    return -1;
}

static int attempt_by_message(const esc_record *e, const uint8_t id[IDS_BYTES])
{
    for (size_t i = 0; i < e->n_attempts; i++)
        if (memcmp(e->attempts[i].message_id, id, IDS_BYTES) == 0)
            return (int)i;
    return -1;
}

/* The next agency of the chain no attempt went to, or NULL. */
static const char *next_in_chain(const esc_record *e)
{
    for (size_t i = 0; i < e->n_chain; i++)
        if (attempt_by_agency(e, e->chain[i]) < 0)
            return e->chain[i];
    return NULL;
}

/* Add agency to the agencies the referral addressed, so that its receipts
 * pass the binding checks (ingress.c). */
static store_err address(const escalate_ctx *ec, MDB_txn *txn, const esc_record *e,
                         const char *agency)
{
    store_referral r;
    store_err s = store_referral_get(ec->st, txn, e->referral_id, &r);
    if (s != STORE_OK)
        return s == STORE_NOT_FOUND || s == STORE_CORRUPT ? STORE_OK : s;
    if (store_referral_names(&r, agency, false) || r.n_addressed == STORE_REFERRAL_MAX)
        return STORE_OK;
    snprintf(r.addressed[r.n_addressed++], sizeof r.addressed[0], "%s", agency);
    return store_referral_put(ec->st, txn, e->referral_id, &r);
}

/* The AttemptCopy bytes: fields in number order (canonical, as the
 * library's decoder demands), the envelope spliced in as stored. */
static uint8_t *pack_copy(const escalate_ctx *ec, const esc_record *e, const uint8_t *env,
                          size_t env_len, const uint8_t attempt_id[IDS_BYTES], uint32_t step,
                          const char *reason, size_t *len)
{
    Referral__V1__AttemptCopy head = REFERRAL__V1__ATTEMPT_COPY__INIT;
    head.attempt_id = (ProtobufCBinaryData){IDS_BYTES, (uint8_t *)(uintptr_t)attempt_id};
    Referral__V1__AttemptCopy tail = REFERRAL__V1__ATTEMPT_COPY__INIT;
    tail.broker_id = (char *)(uintptr_t)ec->broker_id;
    tail.original_recipient = (char *)(uintptr_t)e->recipient;
    tail.step = step;
    tail.round = e->round;
    char cut[WIRE_MAX_TEXT + 4];
    utf8_copy_cut(cut, sizeof cut, reason, WIRE_MAX_TEXT);
    tail.reason = cut;
    size_t hlen = referral__v1__attempt_copy__get_packed_size(&head);
    size_t tlen = referral__v1__attempt_copy__get_packed_size(&tail);
    uint8_t prefix[11];
    size_t plen = 0;
    prefix[plen++] = (2 << 3) | 2;   /* field 2, length-delimited */
    for (uint64_t v = env_len; ; v >>= 7) {
        prefix[plen++] = (uint8_t)(v & 0x7f) | (v > 0x7f ? 0x80 : 0);
        if (v <= 0x7f)
            break;
    }
    uint8_t *buf = malloc(hlen + plen + env_len + tlen);
    if (buf == NULL)
        return NULL;
    referral__v1__attempt_copy__pack(&head, buf);
    memcpy(buf + hlen, prefix, plen);
    memcpy(buf + hlen + plen, env, env_len);
    referral__v1__attempt_copy__pack(&tail, buf + hlen + plen + env_len);
    *len = hlen + plen + env_len + tlen;
    return buf;
}

/* A new attempt: a copy of the stored envelope for agency. *is_made false
 * when no copy could be made (no room for attempts, the envelope gone or
 * damaged): the caller then treats the chain as ended. */
static store_err make_copy(const escalate_ctx *ec, MDB_txn *txn, esc_record *e,
                           const char *agency, uint32_t step, const char *reason,
                           uint64_t now_ms, bool *is_made)
{
    *is_made = false;
    if (e->n_attempts == ESC_MAX_ATTEMPTS)
        return STORE_OK;
    uint8_t key[1 + IDS_BYTES];
    key_of(K_BODY, e->message_id, key);
    MDB_val body;
    store_err s = get_raw(ec, txn, key, sizeof key, &body);
    if (s == STORE_NOT_FOUND) {
        /* The original is still queued: its own body. */
        const uint8_t *p;
        size_t plen;
        s = store_body_get(ec->st, txn, e->message_id, &p, &plen);
        body.mv_data = (void *)(uintptr_t)p;
        body.mv_size = plen;
    }
    if (s == STORE_NOT_FOUND || s == STORE_CORRUPT) {
        log_error("escalate", "cannot copy to %s: the stored envelope is %s", agency,
                  s == STORE_CORRUPT ? "damaged" : "gone");
        return STORE_OK;
    }
    TRY(s);
    esc_attempt *a = &e->attempts[e->n_attempts];
    memset(a, 0, sizeof *a);
    snprintf(a->agency, sizeof a->agency, "%s", agency);
    if (!ids_new(a->message_id, now_ms) || !ids_new(a->attempt_id, now_ms))
        return STORE_FAILED;
    size_t len;
    uint8_t *payload = pack_copy(ec, e, body.mv_data, body.mv_size, a->attempt_id, step, reason,
                                 &len);
    if (payload == NULL)
        return STORE_FAILED;
    store_msg m;
    memset(&m, 0, sizeof m);
    memcpy(m.id, a->message_id, IDS_BYTES);
    memcpy(m.referral_id, e->referral_id, IDS_BYTES);
    memcpy(m.content_digest, a->message_id, IDS_BYTES);   /* made here: nothing to dedup */
    m.urgency = e->urgency;
    m.payload_kind = STORE_PAYLOAD_COPY;
    m.created_at_ms = now_ms;
    m.expires_at_ms = e->expires_ms > now_ms ? e->expires_ms : now_ms + 60000;
    snprintf(m.recipient, sizeof m.recipient, "%s", agency);
    snprintf(m.sender, sizeof m.sender, "%s", e->sender);
    s = delivery_enqueue(ec->dc, txn, &m, payload, len, now_ms);
    free(payload);
    TRY(s);
    a->state = ATT_LIVE;
    a->at_ms = now_ms;
    e->n_attempts++;
    key_of(K_ATTEMPT, a->message_id, key);
    uint8_t val[1 + IDS_BYTES] = {STORE_RECORD_V1};
    memcpy(val + 1, e->message_id, IDS_BYTES);
    TRY(put_raw(ec, txn, key, sizeof key, val, sizeof val));
    TRY(address(ec, txn, e, agency));
    *is_made = true;
    char detail[600];
    snprintf(detail, sizeof detail, "copied to %s: %s", agency, reason);
    return trace(ec, txn, e, a->message_id, agency, TRACE(ESCALATED), detail, now_ms);
}

/* Copy to the next agency of the chain (all of them when is_all); the
 * names copied to go into copied[] (*n_copied). */
static store_err copy_on(const escalate_ctx *ec, MDB_txn *txn, esc_record *e, bool is_all,
                         uint32_t step, const char *reason, const char **copied,
                         size_t *n_copied, uint64_t now_ms)
{
    *n_copied = 0;
    const char *next;
    bool is_made = true;
    while (is_made && (next = next_in_chain(e)) != NULL && e->n_attempts < ESC_MAX_ATTEMPTS) {
        TRY(make_copy(ec, txn, e, next, step, reason, now_ms, &is_made));
        if (is_made)
            copied[(*n_copied)++] = e->attempts[e->n_attempts - 1].agency;
        if (!is_all)
            break;
    }
    if (!is_made) {
        e->n_chain = 0;   /* the envelope is gone: no copy can ever be made */
        return STORE_OK;
    }
    if (next_in_chain(e) == NULL || e->n_attempts == ESC_MAX_ATTEMPTS) {
        uint8_t key[1 + IDS_BYTES];
        key_of(K_BODY, e->message_id, key);
        TRY(del_raw(ec, txn, key, sizeof key));   /* no copy can be made any more */
    }
    return STORE_OK;
}

static Referral__V1__AlertKind alert_kind_of(uint8_t condition)
{
    switch (condition) {
    case POLICY_IF_NOT_DELIVERED: return ALERT(NOT_DELIVERED);
    case POLICY_IF_NOT_RECEIVED: return ALERT(NOT_RECEIVED);
    case POLICY_IF_NOT_ACCEPTED: return ALERT(NOT_ACCEPTED);
    case POLICY_IF_REJECTED: return ALERT(REJECTED);
    default: return ALERT(FATAL_ERROR);
    }
}

/* Take step i's action (its condition holds). why says what happened. */
static store_err act(const escalate_ctx *ec, MDB_txn *txn, esc_record *e, size_t i,
                     const char *about, const char *why, uint64_t now_ms)
{
    const policy_step *st = &e->pol.steps[i];
    const char *copied[ESC_MAX_CHAIN];
    size_t n_copied = 0;
    char reason[400], detail[700];
    snprintf(reason, sizeof reason, "policy %s v%" PRIu32 " step %zu round %u: %s",
             e->pol.id, e->pol.version, i + 1, e->round + 1, why);
    const char *to[2] = {e->sender, NULL};
    bool is_copy = st->action == POLICY_DO_COPY_NEXT || st->action == POLICY_DO_COPY_ALL;
    if (is_copy)
        TRY(copy_on(ec, txn, e, st->action == POLICY_DO_COPY_ALL, (uint32_t)i, reason, copied,
                    &n_copied, now_ms));
    if (is_copy && n_copied > 0) {
        snprintf(detail, sizeof detail, "%s; copied to %s%s", reason, copied[0],
                 n_copied > 1 ? " and others" : "");
    } else {
        /* An alert step, or a copy with nobody left to copy to: never silent. */
        to[1] = chain_target(ec, e, st->action == POLICY_DO_ALERT_CENTRE);
        snprintf(detail, sizeof detail, "%s%s; %s alerted; call the agency if the child is at "
                 "risk", reason, is_copy ? "; no agency of the chain is left to copy to" : "",
                 to[1] != NULL ? to[1] : "the sender");
    }
    alert_spec as = {alert_kind_of(st->condition), (uint32_t)i, e->round, about, detail, copied,
                     n_copied};
    TRY(send_alert(ec, txn, e, REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ALERT, &as, to, 2,
                   now_ms));
    return trace(ec, txn, e, e->message_id, about, TRACE(ESCALATED), detail, now_ms);
}

/* The agency that should have answered by now: the original recipient,
 * or the latest live copy. */
static const char *unresponsive(const esc_record *e)
{
    for (size_t i = e->n_attempts; i-- > 0;)
        if (e->attempts[i].state == ATT_LIVE)
            return e->attempts[i].agency;
    return e->recipient;
}

/* ---- winner, re-route --------------------------------------------------- */

static store_err stand_down_others(const escalate_ctx *ec, MDB_txn *txn, esc_record *e,
                                   uint64_t now_ms)
{
    const char *winner = e->attempts[e->winner].agency;
    char why[200];
    snprintf(why, sizeof why, "%s accepted the referral", winner);
    for (size_t i = 0; i < e->n_attempts; i++) {
        esc_attempt *a = &e->attempts[i];
        if (i == e->winner || a->state != ATT_LIVE)
            continue;
        bool is_withdrawn;
        TRY(delivery_withdraw(ec->dc, txn, a->message_id, why, now_ms, &is_withdrawn));
        a->state = is_withdrawn ? ATT_WITHDRAWN : ATT_STOOD_DOWN;
        if (is_withdrawn)
            continue;
        char detail[300];
        snprintf(detail, sizeof detail, "%s accepted this referral; stand down (no action "
                 "needed from %s)", winner, a->agency);
        delivery_notice n = {
            .referral_id = e->referral_id, .message_id = e->message_id, .to = a->agency,
            .about_agency = winner, .kind = REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_STAND_DOWN,
            .level = LEVEL(ACCEPTED_BY_AGENCY), .code = REFERRAL__V1__RESULT_CODE__RESULT_OK,
            .detail = detail, .alert = NULL, .urgency = e->urgency,
        };
        TRY(delivery_notify(ec->dc, txn, &n, now_ms));
        metrics_count_alert(0, true);
        TRY(trace(ec, txn, e, a->message_id, a->agency, TRACE(STOOD_DOWN), detail, now_ms));
    }
    return STORE_OK;
}

static store_err settle_winner(const escalate_ctx *ec, MDB_txn *txn, esc_record *e, int idx,
                               uint64_t now_ms)
{
    if (e->winner != NO_WINNER) {
        if ((size_t)idx == e->winner || e->attempts[idx].state == ATT_STOOD_DOWN)
            return STORE_OK;   /* told to stand down already */
        /* A second agency accepted too: it stands down. */
        esc_attempt *a = &e->attempts[idx];
        char detail[300];
        snprintf(detail, sizeof detail, "%s accepted this referral first; stand down",
                 e->attempts[e->winner].agency);
        a->state = ATT_STOOD_DOWN;
        delivery_notice n = {
            .referral_id = e->referral_id, .message_id = e->message_id, .to = a->agency,
            .about_agency = e->attempts[e->winner].agency,
            .kind = REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_STAND_DOWN,
            .level = LEVEL(ACCEPTED_BY_AGENCY), .code = REFERRAL__V1__RESULT_CODE__RESULT_OK,
            .detail = detail, .alert = NULL, .urgency = e->urgency,
        };
        TRY(delivery_notify(ec->dc, txn, &n, now_ms));
        metrics_count_alert(0, true);
        return trace(ec, txn, e, a->message_id, a->agency, TRACE(STOOD_DOWN), detail, now_ms);
    }
    e->winner = (uint8_t)idx;
    e->state = ESC_WON;
    char rhex[IDS_HEX_LEN + 1];
    log_info("escalate", "accepted referral=%s by=%s attempts=%zu: escalation stopped",
             ids_hex(e->referral_id, IDS_BYTES, rhex), e->attempts[idx].agency, e->n_attempts);
    TRY(stand_down_others(ec, txn, e, now_ms));
    /* The stored envelope stays until the case is CLOSED or expires: should
     * the winner reject it after all, the chain goes on from it. */
    return set_due(ec, txn, e, end_due(e, now_ms));
}

/* Attempt idx was rejected or ended fatally: the next agency of the chain
 * takes it, and the sender is told; nobody left: supervisor and centre. */
static store_err reroute(const escalate_ctx *ec, MDB_txn *txn, esc_record *e, int idx,
                         bool is_rejection, bool is_sender_told, uint64_t now_ms)
{
    if (e->winner != NO_WINNER)
        return STORE_OK;
    const char *who = e->attempts[idx].agency;
    char why[300];
    snprintf(why, sizeof why, "%s %s", who, is_rejection ? "rejected it"
                                                        : "could not be reached (fatal error)");
    uint8_t cond = is_rejection ? POLICY_IF_REJECTED : POLICY_IF_FATAL;
    uint8_t bit = is_rejection ? 1 : 2;
    /* The policy's own step for this condition, once. */
    for (size_t i = 0; i < e->pol.n_steps && !(e->fired_events & bit); i++) {
        if (e->pol.steps[i].condition != cond)
            continue;
        e->fired_events |= bit;
        TRY(act(ec, txn, e, i, who, why, now_ms));
        if (e->pol.steps[i].action == POLICY_DO_COPY_NEXT ||
            e->pol.steps[i].action == POLICY_DO_COPY_ALL)
            return STORE_OK;   /* that step re-routed */
    }
    const char *copied[1];
    size_t n_copied = 0;
    char reason[400];
    snprintf(reason, sizeof reason, "%s: re-routed along the escalation chain", why);
    TRY(copy_on(ec, txn, e, false, 0, reason, copied, &n_copied, now_ms));
    bool is_any_live = false;
    for (size_t i = 0; i < e->n_attempts; i++)
        is_any_live |= e->attempts[i].state == ATT_LIVE;
    /* The sender hears of every re-route; of a fatal end it heard from
     * delivery already (undeliverable, refused), so then only the chain's
     * people are alerted. */
    const char *to[3] = {e->sender, NULL, NULL};
    char detail[700];
    Referral__V1__AlertKind kind = ALERT(REROUTED);
    if (n_copied > 0) {
        snprintf(detail, sizeof detail, "%s; re-routed to %s", why, copied[0]);
    } else if (is_any_live) {
        snprintf(detail, sizeof detail, "%s; no agency of the chain is left, other attempts are "
                 "still open", why);
    } else {
        kind = is_rejection ? ALERT(REJECTED) : ALERT(FATAL_ERROR);
        /* The sender heard of its original's fatal end from delivery; of a
         * copy's, only from here. */
        to[0] = is_rejection || !is_sender_told ? e->sender : NULL;
        to[1] = chain_target(ec, e, false);
        to[2] = chain_target(ec, e, true);
        snprintf(detail, sizeof detail, "%s; no agency of the escalation chain is left to take "
                 "it: a person must place this referral, call the agencies", why);
        e->state = ESC_EXHAUSTED;   /* the chain has nothing left to try */
        TRY(set_due(ec, txn, e, end_due(e, now_ms)));
    }
    alert_spec as = {kind, 0, e->round, who, detail, copied, n_copied};
    TRY(send_alert(ec, txn, e, REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ALERT, &as, to, 3,
                   now_ms));
    return trace(ec, txn, e, e->attempts[idx].message_id, who, TRACE(ESCALATED), detail, now_ms);
}

/* Record level for attempt idx (levels only move forward). */
static store_err record_level(const escalate_ctx *ec, MDB_txn *txn, esc_record *e, int idx,
                              uint8_t level, const char *by, uint64_t now_ms)
{
    esc_attempt *a = &e->attempts[idx];
    if (level <= a->level)
        return STORE_OK;
    a->level = level;
    a->at_ms = now_ms;
    if (level > e->level) {
        e->level = level;
        e->level_at_ms = now_ms;
        snprintf(e->level_by, sizeof e->level_by, "%s", by);
    }
    char detail[200];
    snprintf(detail, sizeof detail, "level %s asserted by %s", level_name(level), by);
    TRY(trace(ec, txn, e, a->message_id, a->agency, TRACE(LEVEL), detail, now_ms));
    if (level == LEVEL(REJECTED)) {
        if (a->state != ATT_LIVE)
            return STORE_OK;
        a->state = ATT_REJECTED;
        if ((size_t)idx == e->winner) {
            /* The agency that took the case gives it back: the chain goes
             * on where it stood, never a dead end. */
            e->winner = NO_WINNER;
            e->state = ESC_WATCHING;
            TRY(set_due(ec, txn, e, now_ms));
        }
        return reroute(ec, txn, e, idx, true, false, now_ms);
    }
    if (level == LEVEL(CLOSED)) {
        uint8_t key[1 + IDS_BYTES];
        key_of(K_BODY, e->message_id, key);
        TRY(del_raw(ec, txn, key, sizeof key));   /* the case is closed: no more copies */
    }
    if (is_acceptance(level))
        return settle_winner(ec, txn, e, idx, now_ms);
    return STORE_OK;
}

/* ---- the watchdog ------------------------------------------------------- */

static const uint8_t watch_level[POLICY_LEVELS] = {3, 4, 5};   /* DELIVERED, RECEIVED, ACCEPTED */

/* Word from afar: a level (0 for an alert of the home broker). */
static store_err watchdog_word(const escalate_ctx *ec, MDB_txn *txn, esc_record *e,
                               uint8_t level, uint64_t now_ms)
{
    if (level > e->level) {
        e->level = level;
        e->level_at_ms = now_ms;
    }
    e->word_at_ms = now_ms;
    if (e->state == ESC_ALERTED) {
        char detail[300];
        snprintf(detail, sizeof detail, "word of the referral came back from %s's region "
                 "(level %s): the partition alert is over", e->recipient, level_name(e->level));
        alert_spec as = {ALERT(PARTITION), e->next_step, 0, e->recipient, detail, NULL, 0};
        const char *to[ESC_MAX_ALERTED];
        for (size_t i = 0; i < e->n_alerted; i++)
            to[i] = e->alerted[i];
        TRY(send_alert(ec, txn, e, REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_STAND_DOWN, &as, to,
                       e->n_alerted, now_ms));
        TRY(trace(ec, txn, e, e->message_id, e->recipient, TRACE(STOOD_DOWN), detail, now_ms));
        e->state = ESC_WATCHING;
        e->n_alerted = 0;
    }
    if (e->level >= LEVEL(ACCEPTED_BY_AGENCY) && e->state == ESC_WATCHING) {
        e->state = ESC_WON;   /* the far side took it (or re-routes it): nothing to watch */
        TRY(set_due(ec, txn, e, end_due(e, now_ms)));
    }
    return save(ec, txn, e);
}

static store_err watchdog_fire(const escalate_ctx *ec, MDB_txn *txn, esc_record *e,
                               uint64_t now_ms)
{
    if (e->state == ESC_WON || now_ms > e->expires_ms)
        return forget(ec, txn, e);
    if (e->next_step >= POLICY_LEVELS) {
        TRY(set_due(ec, txn, e, end_due(e, now_ms)));   /* an alert stands until word or expiry */
        return save(ec, txn, e);
    }
    size_t k = e->next_step;
    uint64_t deadline = e->created_ms + e->pol.within_ms[k];
    bool is_heard = e->level >= watch_level[k] || e->word_at_ms >= deadline ||
                    (k == 0 && e->word_at_ms != 0);
    if (!is_heard && e->state == ESC_WATCHING) {
        const Referral__V1__DirectoryAgency *s = agency_of(ec, e->sender);
        const char *sup = s != NULL && agency_of(ec, s->supervisor_desk) != NULL
                              ? s->supervisor_desk : NULL;
        e->n_alerted = 0;
        snprintf(e->alerted[e->n_alerted++], sizeof e->alerted[0], "%s", e->sender);
        if (sup != NULL && strcmp(sup, e->sender) != 0)
            snprintf(e->alerted[e->n_alerted++], sizeof e->alerted[0], "%s", sup);
        char detail[500];
        snprintf(detail, sizeof detail, "no word of this %s referral from %s's region %" PRIu64
                 " s after it was sent (expected %s within %" PRIu64 " s): the region may be cut "
                 "off or its broker down; call the agency", level_name(watch_level[k]),
                 e->recipient, (now_ms - e->created_ms) / 1000, level_name(watch_level[k]),
                 e->pol.within_ms[k] / 1000);
        alert_spec as = {ALERT(PARTITION), (uint32_t)k, 0, e->recipient, detail, NULL, 0};
        const char *to[ESC_MAX_ALERTED];
        for (size_t i = 0; i < e->n_alerted; i++)
            to[i] = e->alerted[i];
        TRY(send_alert(ec, txn, e, REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ALERT, &as, to,
                       e->n_alerted, now_ms));
        TRY(trace(ec, txn, e, e->message_id, e->recipient, TRACE(ESCALATED), detail, now_ms));
        e->state = ESC_ALERTED;
    }
    e->next_step++;
    uint64_t next = e->next_step < POLICY_LEVELS
                        ? e->created_ms + e->pol.within_ms[e->next_step] +
                              e->pol.watchdog_grace_ms
                        : end_due(e, now_ms);
    TRY(set_due(ec, txn, e, next));   /* already due: it fires next, in this call if room */
    return save(ec, txn, e);
}

/* ---- the home watcher's steps ------------------------------------------- */

/* Is an open attempt's message still queued or in flight here? */
static store_err has_pending_attempt(const escalate_ctx *ec, MDB_txn *txn, const esc_record *e,
                                     bool *is_pending)
{
    *is_pending = false;
    for (size_t i = 0; i < e->n_attempts && !*is_pending; i++) {
        if (e->attempts[i].state != ATT_LIVE)
            continue;
        store_msg m;
        store_err s = store_msg_get(ec->st, txn, e->attempts[i].message_id, &m);
        if (s != STORE_OK && s != STORE_NOT_FOUND)
            return s;
        *is_pending = s == STORE_OK && !delivery_is_final(m.state) &&
                      m.expires_at_ms <= e->expires_ms + 120000;
    }
    return STORE_OK;
}

/* The chain ends (by its last step or by expiry) without an acceptance:
 * never silently. */
static store_err home_fire(const escalate_ctx *ec, MDB_txn *txn, esc_record *e,
                           uint64_t now_ms)
{
    if (e->state == ESC_WATCHING && now_ms > e->expires_ms) {
        /* An attempt still waiting in a queue expires by its own deadline
         * first (undeliverable: the sender is told, the chain re-routes);
         * this record looks again a second later. */
        bool is_pending = false;
        TRY(has_pending_attempt(ec, txn, e, &is_pending));
        if (is_pending) {
            TRY(set_due(ec, txn, e, now_ms + 1000));
            return save(ec, txn, e);
        }
        /* Expired before the chain ended: its last timed step now (an
         * alert on not_accepted: policy_finish() made sure). */
        size_t last = e->pol.n_steps - 1;
        while (last > 0 && !policy_is_timed(e->pol.steps[last].condition))
            last--;
        TRY(act(ec, txn, e, last, unresponsive(e), "the referral expired before any agency "
                "accepted it", now_ms));
        return forget(ec, txn, e);
    }
    if (e->state != ESC_WATCHING) {
        if (now_ms > e->expires_ms)
            return forget(ec, txn, e);
        TRY(set_due(ec, txn, e, end_due(e, now_ms)));
        return save(ec, txn, e);
    }
    while (e->round < e->pol.rounds) {
        size_t i = e->next_step;
        while (i < e->pol.n_steps && !policy_is_timed(e->pol.steps[i].condition))
            i++;
        if (i == e->pol.n_steps) {
            e->round++;
            e->next_step = 0;
            continue;
        }
        uint64_t due = policy_step_due(&e->pol, i, e->round, e->created_ms);
        if (due > now_ms) {
            /* ... or the referral's end, if that comes first: its last step
             * then fires on time, not after. */
            uint64_t end = end_due(e, now_ms);
            TRY(set_due(ec, txn, e, due < end ? due : end));
            return save(ec, txn, e);
        }
        const policy_step *st = &e->pol.steps[i];
        const char *about = unresponsive(e);
        char why[300];
        uint64_t late = now_ms - due;
        if (condition_holds(e, st->condition)) {
            snprintf(why, sizeof why, "%s: %s did not reach %s within %" PRIu64 " s",
                     policy_condition_name(st->condition), about,
                     st->condition == POLICY_IF_NOT_DELIVERED ? "DELIVERED"
                     : st->condition == POLICY_IF_NOT_RECEIVED ? "RECEIVED"
                                                              : "ACCEPTED_BY_AGENCY",
                     (due - e->created_ms) / 1000);
            TRY(act(ec, txn, e, i, about, why, now_ms));
            metrics_count_escalation_step(st->action);
            log_info("escalate", "step fired policy=%s step=%zu round=%u late_ms=%" PRIu64,
                     e->pol.id, i + 1, e->round + 1, late);
        } else {
            snprintf(why, sizeof why, "policy %s v%" PRIu32 " step %zu round %u not needed: "
                     "level %s reached", e->pol.id, e->pol.version, i + 1, e->round + 1,
                     level_name(best_level(e)));
            TRY(trace(ec, txn, e, e->message_id, about, TRACE(ESCALATED), why, now_ms));
            metrics_count_escalation_step(5);
        }
        e->next_step = (uint8_t)(i + 1);
        if (e->state != ESC_WATCHING)
            return save(ec, txn, e);
    }
    e->state = ESC_EXHAUSTED;
    TRY(trace(ec, txn, e, e->message_id, e->recipient, TRACE(ESCALATED),
              "every step of the escalation chain fired; levels are still recorded", now_ms));
    TRY(set_due(ec, txn, e, end_due(e, now_ms)));
    return save(ec, txn, e);
}

/* ---- the entry points --------------------------------------------------- */

static store_err start_home(const escalate_ctx *ec, MDB_txn *txn, esc_record *e,
                            const Referral__V1__RoutingHeader *h, const uint8_t *sealed,
                            size_t sealed_len, bool is_submitted, uint64_t now_ms)
{
    /* The chain: the sender's named backups, then the directory's, each one
     * the sender sealed the body for and served by this broker. */
    const Referral__V1__DirectoryAgency *d = agency_of(ec, h->to_agency);
    const char *cand[ESC_MAX_CHAIN * 2];
    size_t n_cand = 0;
    for (size_t i = 0; i < h->n_backup_recipients && n_cand < ESC_MAX_CHAIN * 2; i++)
        cand[n_cand++] = h->backup_recipients[i];
    for (size_t i = 0; d != NULL && i < d->n_backup_agencies && n_cand < ESC_MAX_CHAIN * 2; i++)
        cand[n_cand++] = d->backup_agencies[i];
    /* Whom the sender sealed the body for (only when there is a chain to
     * check: most referrals have none). */
    char (*readers)[SEAL_READER_NAME_MAX + 1] = n_cand > 0 ? calloc(32, sizeof *readers) : NULL;
    size_t n_readers = readers != NULL ? seal_readers(sealed, sealed_len, readers, 32) : 0;
    for (size_t i = 0; i < n_cand && e->n_chain < ESC_MAX_CHAIN; i++) {
        const Referral__V1__DirectoryAgency *b = agency_of(ec, cand[i]);
        bool is_reader = false, is_dup = strcmp(cand[i], h->to_agency) == 0;
        for (size_t r = 0; r < n_readers; r++)
            is_reader |= strcmp(readers[r], cand[i]) == 0;
        for (size_t c = 0; c < e->n_chain; c++)
            is_dup |= strcmp(e->chain[c], cand[i]) == 0;
        if (is_dup)
            continue;
        if (b == NULL || !is_reader || strcmp(b->home_broker, ec->broker_id) != 0) {
            log_warn("escalate", "escalation chain of %s skips %s: %s", h->to_agency, cand[i],
                     b == NULL ? "not in the directory"
                     : !is_reader ? "the body is not sealed for it"
                                  : "served by another broker");
            continue;
        }
        snprintf(e->chain[e->n_chain++], sizeof e->chain[0], "%s", cand[i]);
    }
    free(readers);
    esc_attempt *a = &e->attempts[0];
    snprintf(a->agency, sizeof a->agency, "%s", h->to_agency);
    memcpy(a->message_id, h->message_id.data, IDS_BYTES);
    if (h->attempt_id.len == IDS_BYTES)
        memcpy(a->attempt_id, h->attempt_id.data, IDS_BYTES);
    a->state = ATT_LIVE;
    a->level = is_submitted ? LEVEL(ACCEPTED) : LEVEL(RELAYED);
    a->at_ms = now_ms;
    e->n_attempts = 1;
    e->level = a->level;
    e->level_at_ms = now_ms;
    snprintf(e->level_by, sizeof e->level_by, "%s", ec->broker_id);
    uint8_t key[1 + IDS_BYTES];
    key_of(K_ATTEMPT, e->message_id, key);
    uint8_t val[1 + IDS_BYTES] = {STORE_RECORD_V1};
    memcpy(val + 1, e->message_id, IDS_BYTES);
    return put_raw(ec, txn, key, sizeof key, val, sizeof val);
}

store_err escalate_on_referral(const escalate_ctx *ec, MDB_txn *txn,
                               const Referral__V1__RoutingHeader *h, const uint8_t *sealed,
                               size_t sealed_len, bool is_home, bool is_submitted,
                               uint64_t now_ms)
{
    if (h->kind != REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_REFERRAL || (!is_home && !is_submitted))
        return STORE_OK;
    esc_record *e = calloc(1, sizeof *e);
    if (e == NULL)
        return STORE_FAILED;
    store_err s = load(ec, txn, h->message_id.data, e);
    if (s != STORE_NOT_FOUND) {
        free(e);
        return s;   /* known already (or a fault) */
    }
    memset(e, 0, sizeof *e);
    const Referral__V1__DirectoryAgency *d = agency_of(ec, h->to_agency);
    char note[300];
    const policy *p = policy_select(ec->policies, h->escalation_policy_id,
                                    h->escalation_policy_version, (uint8_t)h->urgency,
                                    d != NULL ? (uint8_t)d->kind : 0, d != NULL ? d->region : "",
                                    note, sizeof note);
    if (p == NULL) {
        free(e);
        log_error("escalate", "no escalation policy for urgency %d: configuration error",
                  (int)h->urgency);
        return STORE_OK;
    }
    e->role = is_home ? ROLE_HOME : ROLE_WATCHDOG;
    e->state = ESC_WATCHING;
    e->urgency = (uint8_t)h->urgency;
    e->winner = NO_WINNER;
    e->created_ms = h->created_at_ms;
    e->expires_ms = h->expires_at_ms;
    memcpy(e->message_id, h->message_id.data, IDS_BYTES);
    memcpy(e->referral_id, h->referral_id.data, IDS_BYTES);
    snprintf(e->sender, sizeof e->sender, "%s", h->from_agency);
    snprintf(e->recipient, sizeof e->recipient, "%s", h->to_agency);
    e->pol = *p;
    if (is_home) {
        s = start_home(ec, txn, e, h, sealed, sealed_len, is_submitted, now_ms);
    } else {
        s = STORE_OK;
        e->attempts[0] = (esc_attempt){.state = ATT_LIVE, .at_ms = now_ms};
        snprintf(e->attempts[0].agency, sizeof e->attempts[0].agency, "%s", h->to_agency);
        memcpy(e->attempts[0].message_id, h->message_id.data, IDS_BYTES);
        e->n_attempts = 1;
        e->level = LEVEL(ACCEPTED);
    }
    char detail[600];
    snprintf(detail, sizeof detail, "%s: policy %s v%" PRIu32 ", %zu agencies in the chain%s%s",
             is_home ? "escalation watching" : "origin watchdog watching", p->id, p->version,
             e->n_chain, note[0] != '\0' ? "; " : "", note);
    if (s == STORE_OK)
        s = trace(ec, txn, e, e->message_id, e->recipient, TRACE(LEVEL), detail, now_ms);
    uint64_t first = is_home ? now_ms : e->created_ms + p->within_ms[0] + p->watchdog_grace_ms;
    if (s == STORE_OK && is_home) {
        /* The first timed step's due time. */
        first = e->expires_ms;
        for (size_t i = 0; i < p->n_steps; i++) {
            if (policy_is_timed(p->steps[i].condition)) {
                first = policy_step_due(p, i, 0, e->created_ms);
                break;
            }
        }
    }
    if (is_home && first > end_due(e, now_ms))
        first = end_due(e, now_ms);   /* a referral that ends first gets its last step then */
    if (s == STORE_OK)
        s = set_due(ec, txn, e, first > now_ms ? first : now_ms);
    if (s == STORE_OK)
        s = save(ec, txn, e);
    if (s == STORE_OK && note[0] != '\0')
        log_warn("escalate", "%s", note);
    free(e);
    return s;
}

store_err escalate_on_receipt(const escalate_ctx *ec, MDB_txn *txn,
                              const Referral__V1__RoutingHeader *h, uint64_t now_ms)
{
    if (h->in_reply_to.len != IDS_BYTES)
        return STORE_OK;
    esc_record *e = malloc(sizeof *e);
    if (e == NULL)
        return STORE_FAILED;
    store_err s = load(ec, txn, h->in_reply_to.data, e);
    if (s != STORE_OK) {
        free(e);
        return s == STORE_NOT_FOUND ? STORE_OK : s;
    }
    uint8_t level = (uint8_t)h->receipt_level;
    if (e->role == ROLE_WATCHDOG) {
        s = watchdog_word(ec, txn, e, level, now_ms);
        free(e);
        return s;
    }
    int idx = attempt_by_agency(e, h->from_agency);
    if (idx < 0) {
        char rhex[IDS_HEX_LEN + 1];
        log_warn("escalate", "receipt not counted referral=%s from=%s level=%d: no attempt of "
                 "the referral went to it", ids_hex(e->referral_id, IDS_BYTES, rhex),
                 h->from_agency, (int)level);
        free(e);
        return STORE_OK;
    }
    s = record_level(ec, txn, e, idx, level, h->from_agency, now_ms);
    if (s == STORE_OK)
        s = save(ec, txn, e);
    free(e);
    return s;
}

store_err escalate_on_notice(const escalate_ctx *ec, MDB_txn *txn, const Referral__V1__Notice *n,
                             uint64_t now_ms)
{
    if (n->message_id.len != IDS_BYTES)
        return STORE_OK;
    esc_record *e = malloc(sizeof *e);
    if (e == NULL)
        return STORE_FAILED;
    store_err s = load(ec, txn, n->message_id.data, e);
    const Referral__V1__DirectoryAgency *to = s == STORE_OK ? agency_of(ec, e->recipient) : NULL;
    if (s == STORE_OK && e->role == ROLE_WATCHDOG && to != NULL &&
        strcmp(to->home_broker, n->broker_id) != 0) {
        char rhex[IDS_HEX_LEN + 1];
        log_warn("escalate", "notice not counted by the watchdog referral=%s broker=%s: not "
                 "the home broker %s of %s", ids_hex(e->referral_id, IDS_BYTES, rhex),
                 n->broker_id, to->home_broker, e->recipient);
    } else if (s == STORE_OK && e->role == ROLE_WATCHDOG) {
        /* A level the home broker asserted; a final state it reports (the
         * sender is told: nothing left to watch); any other notice (an
         * alert) says the far side is alive. */
        uint8_t level = 0;
        if (n->kind == REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ACK_LEVEL &&
            n->level <= LEVEL(CLOSED))
            level = (uint8_t)n->level;
        else if (n->kind == REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_UNDELIVERABLE ||
                 n->kind == REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_QUARANTINED)
            level = LEVEL(REJECTED);
        s = watchdog_word(ec, txn, e, level, now_ms);
    }
    free(e);
    return s == STORE_NOT_FOUND ? STORE_OK : s;
}

store_err escalate_keep_body(void *ctx, MDB_txn *txn, const store_msg *m)
{
    const escalate_ctx *ec = ctx;
    if (m->payload_kind != STORE_PAYLOAD_ENVELOPE)
        return STORE_OK;
    uint8_t key[1 + IDS_BYTES];
    key_of(K_ATTEMPT, m->id, key);
    MDB_val v;
    store_err s = get_raw(ec, txn, key, sizeof key, &v);
    if (s != STORE_OK)
        return s == STORE_NOT_FOUND ? STORE_OK : s;
    esc_record *e = malloc(sizeof *e);
    if (e == NULL)
        return STORE_FAILED;
    s = load(ec, txn, m->id, e);   /* an original attempt's record is under its own id */
    bool is_needed = s == STORE_OK && e->role == ROLE_HOME && e->winner == NO_WINNER &&
                     next_in_chain(e) != NULL && e->n_attempts < ESC_MAX_ATTEMPTS;
    free(e);
    if (!is_needed)
        return s == STORE_NOT_FOUND ? STORE_OK : s;
    const uint8_t *p;
    size_t len;
    s = store_body_get(ec->st, txn, m->id, &p, &len);
    if (s != STORE_OK)
        return s == STORE_NOT_FOUND || s == STORE_CORRUPT ? STORE_OK : s;
    uint8_t *copy = malloc(len ? len : 1);   /* p points into the map: copy before writing */
    if (copy == NULL)
        return STORE_FAILED;
    memcpy(copy, p, len);
    key_of(K_BODY, m->id, key);
    s = put_raw(ec, txn, key, sizeof key, copy, len);
    free(copy);
    return s;
}

/* At the origin: the referral ended here for good (the next broker
 * refused it, or it expired before it could be handed on). The sender has
 * been told by delivery: the watchdog has nothing left to watch. */
static store_err watchdog_final(const escalate_ctx *ec, MDB_txn *txn, const store_msg *m,
                                uint64_t now_ms)
{
    esc_record *e = malloc(sizeof *e);
    if (e == NULL)
        return STORE_FAILED;
    store_err s = load(ec, txn, m->id, e);
    if (s == STORE_OK && e->role == ROLE_WATCHDOG)
        s = watchdog_word(ec, txn, e, LEVEL(REJECTED), now_ms);
    free(e);
    return s == STORE_NOT_FOUND ? STORE_OK : s;
}

/* DELIVERED is this broker's word, not the agency's: the referral's
 * sender gets a notice signed here when agency's client settled the stored
 * delivery of an attempt (the referral itself or a copy), naming the
 * sender's message id. It travels back like every notice. */
static store_err tell_delivered(const escalate_ctx *ec, MDB_txn *txn, const esc_record *e,
                                const char *agency, uint64_t now_ms)
{
    char detail[IDS_NAME_MAX + 64];
    snprintf(detail, sizeof detail, "stored by the client of %s", agency);
    delivery_notice n = {
        .referral_id = e->referral_id, .message_id = e->message_id, .to = e->sender,
        .about_agency = agency, .kind = REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ACK_LEVEL,
        .level = LEVEL(DELIVERED), .code = REFERRAL__V1__RESULT_CODE__RESULT_OK,
        .detail = detail, .alert = NULL, .urgency = e->urgency,
    };
    return delivery_notify(ec->dc, txn, &n, now_ms);
}

store_err escalate_on_final(void *ctx, MDB_txn *txn, const store_msg *m, uint64_t now_ms)
{
    const escalate_ctx *ec = ctx;
    if (m->payload_kind == STORE_PAYLOAD_NOTICE || m->state == STATE(WITHDRAWN))
        return STORE_OK;
    uint8_t key[1 + IDS_BYTES];
    key_of(K_ATTEMPT, m->id, key);
    MDB_val v;
    store_err s = get_raw(ec, txn, key, sizeof key, &v);
    if (s == STORE_NOT_FOUND && m->state != STATE(DELIVERED))
        return watchdog_final(ec, txn, m, now_ms);
    if (s != STORE_OK)
        return s == STORE_NOT_FOUND ? STORE_OK : s;
    if (v.mv_size != 1 + IDS_BYTES || ((const uint8_t *)v.mv_data)[0] != STORE_RECORD_V1)
        return STORE_OK;
    uint8_t orig[IDS_BYTES];
    memcpy(orig, (const uint8_t *)v.mv_data + 1, IDS_BYTES);
    esc_record *e = malloc(sizeof *e);
    if (e == NULL)
        return STORE_FAILED;
    s = load(ec, txn, orig, e);
    int idx = s == STORE_OK && e->role == ROLE_HOME ? attempt_by_message(e, m->id) : -1;
    if (idx >= 0) {
        esc_attempt *a = &e->attempts[idx];
        if (m->state == STATE(DELIVERED)) {
            bool is_new = a->level < LEVEL(DELIVERED);
            s = record_level(ec, txn, e, idx, LEVEL(DELIVERED), a->agency, now_ms);
            if (s == STORE_OK && is_new)
                s = tell_delivered(ec, txn, e, a->agency, now_ms);
        } else if (a->state == ATT_LIVE) {
            a->state = ATT_FAILED;
            s = reroute(ec, txn, e, idx, false, m->payload_kind == STORE_PAYLOAD_ENVELOPE,
                        now_ms);
        }
        if (s == STORE_OK)
            s = save(ec, txn, e);
    }
    free(e);
    return s == STORE_NOT_FOUND ? STORE_OK : s;
}

/* The first 'D' key of rank, if any: its due time and message id. */
static bool first_due(const escalate_ctx *ec, MDB_txn *txn, uint8_t rank, uint64_t *due,
                      uint8_t id[IDS_BYTES], store_err *err)
{
    MDB_cursor *c;
    *err = store_err_from_mdb(mdb_cursor_open(txn, store_dbi(ec->st, STORE_DB_ESCALATIONS), &c));
    if (*err != STORE_OK)
        return false;
    uint8_t start[2] = {K_DUE, rank};
    MDB_val k = {sizeof start, start}, v;
    int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    bool is_found = false;
    if (rc == 0 && k.mv_size == DUE_KEY_BYTES && ((uint8_t *)k.mv_data)[0] == K_DUE &&
        ((uint8_t *)k.mv_data)[1] == rank) {
        const uint8_t *p = k.mv_data;
        *due = 0;
        for (int i = 0; i < 8; i++)
            *due = *due << 8 | p[2 + i];
        memcpy(id, p + 10, IDS_BYTES);
        is_found = true;
    } else if (rc != 0 && rc != MDB_NOTFOUND) {
        *err = store_err_from_mdb(rc);
    }
    mdb_cursor_close(c);
    return is_found;
}

store_err escalate_next_due(const escalate_ctx *ec, MDB_txn *txn, uint64_t *due_ms)
{
    bool is_any = false;
    for (uint8_t rank = 0; rank < 4; rank++) {
        uint64_t due;
        uint8_t id[IDS_BYTES];
        store_err s;
        if (first_due(ec, txn, rank, &due, id, &s) && (!is_any || due < *due_ms)) {
            *due_ms = due;
            is_any = true;
        }
        TRY(s);
    }
    return is_any ? STORE_OK : STORE_NOT_FOUND;
}

store_err escalate_fire(const escalate_ctx *ec, MDB_txn *txn, uint64_t now_ms, uint32_t max,
                        uint32_t *n_fired, uint64_t *worst_late_ms, bool *has_more)
{
    uint32_t n = 0;
    uint64_t worst = 0;
    esc_record *e = malloc(sizeof *e);
    if (e == NULL)
        return STORE_FAILED;
    store_err s = STORE_OK;
    *has_more = false;
    for (uint8_t rank = 0; rank < 4 && s == STORE_OK;) {
        uint64_t due;
        uint8_t id[IDS_BYTES];
        if (!first_due(ec, txn, rank, &due, id, &s) || due > now_ms) {
            rank++;
            continue;
        }
        if (n == max) {
            *has_more = true;
            break;
        }
        uint8_t key[DUE_KEY_BYTES];
        due_key((uint8_t)(4 - rank), due, id, key);
        s = del_raw(ec, txn, key, sizeof key);
        if (s != STORE_OK)
            break;
        s = load(ec, txn, id, e);
        if (s == STORE_NOT_FOUND) {
            s = STORE_OK;
            continue;
        }
        if (s != STORE_OK)
            break;
        if (e->due_ms != due) {
            /* A stale entry (the record moved on): only the record's own counts. */
            continue;
        }
        e->due_ms = 0;
        if (now_ms - due > worst)
            worst = now_ms - due;
        s = e->role == ROLE_HOME ? home_fire(ec, txn, e, now_ms) : watchdog_fire(ec, txn, e, now_ms);
        n++;
    }
    free(e);
    if (n_fired != NULL)
        *n_fired = n;
    if (worst_late_ms != NULL)
        *worst_late_ms = worst;
    return s;
}
