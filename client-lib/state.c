/*
 * state: libreferral's outbox, inbox and received ids in LMDB (state.h).
 * Default full sync; never NOSYNC or WRITEMAP, for the same reasons as the
 * broker. Nothing read back from LMDB is trusted: every record is decoded
 * with its length checked, and an unreadable one is reported, not used.
 *
 * Record layouts (format 3; integers little-endian):
 *   seen   [0] version 1 | [1..8] forget_at_ms | [9..24] referral id |
 *          [25] urgency | [26] n = length of from (<= 64) | [27..] from
 *   inbox  [0] version 2 | [1] kind | [2] urgency | [3..6] attempt |
 *          [7] flags (bit 0: an escalation copy; no other bit) |
 *          only for a copy: [+0..15] attempt id | [+16..19] step |
 *          [+20..23] round | [+24] n (<= 64) | n bytes original recipient |
 *          2 bytes m (<= 512) | m bytes reason |
 *          then the payload
 *          (version 1, formats 2 and earlier: [0] 1 | [1] kind | [2]
 *          urgency | [3..6] attempt | [7..] payload; still read, never
 *          written: it is not a copy)
 *   sent   [0] version 1 | [1..8] forget_at_ms | [9] n (1..32; 1..17
 *          before format 3) | n times: [0] length (<= 64) | the agency id
 *   copies [0] version 1 | [1..8] forget_at_ms | [9..24] copy id |
 *          [25..40] attempt id
 *   outbox a packed Envelope (protobuf: versioned by its schema)
 * Format 1 (libreferral 0.1.0, no "format" key) stored seen as the raw
 * C struct of x86-64 (96 bytes: u64, 16 bytes, char[65], u8, padding); it
 * is converted at open. Format 2 needs no conversion (its records are all
 * still read); the format key is raised to 3 so that an older library,
 * which would set inbox records of version 2 aside, refuses the directory
 * instead.
 */
#include "state.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "referral.h"

#define SENT_V1 1
#define SEEN_V1 1
#define INBOX_V1 1
#define INBOX_V2 2
#define COPY_V1 1
#define SEEN_HEAD 27
#define INBOX_V1_HEAD 7
#define INBOX_V2_HEAD 8
#define INBOX_FLAG_COPY 0x01u
#define INBOX_COPY_MAX (16 + 4 + 4 + 1 + STATE_NAME_MAX + 2 + STATE_REASON_MAX)
#define COPY_BYTES 41
#define LEGACY_SEEN_BYTES 96
#define MAX_FROM 64

struct state {
    MDB_env *env;
    MDB_dbi outbox, inbox, seen, sent, copies, meta;
};

struct state_txn {
    state *s;
    MDB_txn *txn;
};

/* ---- encoding --------------------------------------------------------- */

static void put_le(uint8_t *p, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static size_t seen_encode(const state_seen *s, uint8_t out[SEEN_HEAD + MAX_FROM])
{
    size_t from_len = strnlen(s->from, MAX_FROM);
    out[0] = SEEN_V1;
    put_le(out + 1, s->forget_at_ms, 8);
    memcpy(out + 9, s->referral_id, 16);
    out[25] = s->urgency;
    out[26] = (uint8_t)from_len;
    memcpy(out + SEEN_HEAD, s->from, from_len);
    return SEEN_HEAD + from_len;
}

static bool seen_decode(const uint8_t *p, size_t len, state_seen *s)
{
    memset(s, 0, sizeof *s);
    if (len < SEEN_HEAD || p[0] != SEEN_V1 || p[26] > MAX_FROM ||
        len != (size_t)SEEN_HEAD + p[26])
        return false;
    s->forget_at_ms = get_le(p + 1, 8);
    memcpy(s->referral_id, p + 9, 16);
    s->urgency = p[25];
    memcpy(s->from, p + SEEN_HEAD, p[26]);
    s->from[p[26]] = '\0';
    return true;
}

/* Format 1: the raw struct, in this machine's byte order. */
static bool seen_decode_legacy(const uint8_t *p, size_t len, state_seen *s)
{
    memset(s, 0, sizeof *s);
    if (len != LEGACY_SEEN_BYTES || memchr(p + 24, '\0', 65) == NULL)
        return false;
    memcpy(&s->forget_at_ms, p, 8);
    memcpy(s->referral_id, p + 8, 16);
    memcpy(s->from, p + 24, 65);
    s->urgency = p[89];
    return true;
}

static size_t sent_encode(const state_sent *s, uint8_t out[10 + STATE_SENT_MAX * (1 + MAX_FROM)])
{
    size_t at = 10;
    out[0] = SENT_V1;
    put_le(out + 1, s->forget_at_ms, 8);
    out[9] = (uint8_t)s->n;
    for (size_t i = 0; i < s->n; i++) {
        size_t len = strnlen(s->agencies[i], MAX_FROM);
        out[at++] = (uint8_t)len;
        memcpy(out + at, s->agencies[i], len);
        at += len;
    }
    return at;
}

static bool sent_decode(const uint8_t *p, size_t len, state_sent *s)
{
    memset(s, 0, sizeof *s);
    if (len < 10 || p[0] != SENT_V1 || p[9] < 1 || p[9] > STATE_SENT_MAX)
        return false;
    s->forget_at_ms = get_le(p + 1, 8);
    s->n = p[9];
    size_t at = 10;
    for (size_t i = 0; i < s->n; i++) {
        if (at >= len || p[at] > MAX_FROM || at + 1 + p[at] > len)
            return false;
        memcpy(s->agencies[i], p + at + 1, p[at]);
        s->agencies[i][p[at]] = '\0';
        at += 1 + (size_t)p[at];
    }
    return at == len;
}

/* A string of n bytes at p into out (size n + 1): no NUL inside. */
static bool text_decode(const uint8_t *p, size_t n, char *out)
{
    if (memchr(p, '\0', n) != NULL)
        return false;
    memcpy(out, p, n);
    out[n] = '\0';
    return true;
}

/* The copy labels of an inbox record of version 2 at p (len bytes left);
 * *used gets their size. */
static bool copy_labels_decode(const uint8_t *p, size_t len, state_copy_labels *l, size_t *used)
{
    size_t at = 16 + 4 + 4;
    if (len < at + 1 || p[at] > STATE_NAME_MAX || len < at + 1 + p[at] + 2)
        return false;
    memcpy(l->attempt_id, p, 16);
    l->step = (uint32_t)get_le(p + 16, 4);
    l->round = (uint32_t)get_le(p + 20, 4);
    size_t n = p[at];
    if (!text_decode(p + at + 1, n, l->original_recipient))
        return false;
    at += 1 + n;
    size_t m = (size_t)get_le(p + at, 2);
    at += 2;
    if (m > STATE_REASON_MAX || len < at + m || !text_decode(p + at, m, l->reason))
        return false;
    *used = at + m;
    return true;
}

static size_t copy_labels_encode(const state_copy_labels *l, uint8_t out[INBOX_COPY_MAX])
{
    size_t n = strnlen(l->original_recipient, STATE_NAME_MAX);
    size_t m = strnlen(l->reason, STATE_REASON_MAX);
    memcpy(out, l->attempt_id, 16);
    put_le(out + 16, l->step, 4);
    put_le(out + 20, l->round, 4);
    out[24] = (uint8_t)n;
    memcpy(out + 25, l->original_recipient, n);
    put_le(out + 25 + n, m, 2);
    memcpy(out + 27 + n, l->reason, m);
    return 27 + n + m;
}

static bool inbox_decode(const uint8_t *p, size_t len, state_inbox_entry *e)
{
    memset(e, 0, sizeof *e);
    if (len < INBOX_V1_HEAD || (p[0] != INBOX_V1 && p[0] != INBOX_V2) ||
        p[1] < STATE_INBOX_ENVELOPE || p[1] > STATE_INBOX_LOCAL)
        return false;
    e->kind = (state_inbox_kind)p[1];
    e->urgency = p[2];
    e->attempt = (uint32_t)get_le(p + 3, 4);
    size_t head = INBOX_V1_HEAD;
    if (p[0] == INBOX_V2) {
        if (len < INBOX_V2_HEAD || (p[7] & ~INBOX_FLAG_COPY) != 0)
            return false;
        head = INBOX_V2_HEAD;
        e->is_copy = (p[7] & INBOX_FLAG_COPY) != 0;
        size_t used = 0;
        if (e->is_copy && (e->kind != STATE_INBOX_ENVELOPE ||
                           !copy_labels_decode(p + head, len - head, &e->copy, &used)))
            return false;
        head += used;
    }
    e->payload = p + head;
    e->len = len - head;
    return true;
}

static void copy_ref_encode(const state_copy_ref *r, uint8_t out[COPY_BYTES])
{
    out[0] = COPY_V1;
    put_le(out + 1, r->forget_at_ms, 8);
    memcpy(out + 9, r->copy_id, 16);
    memcpy(out + 25, r->attempt_id, 16);
}

static bool copy_ref_decode(const uint8_t *p, size_t len, state_copy_ref *r)
{
    memset(r, 0, sizeof *r);
    if (len != COPY_BYTES || p[0] != COPY_V1)
        return false;
    r->forget_at_ms = get_le(p + 1, 8);
    memcpy(r->copy_id, p + 9, 16);
    memcpy(r->attempt_id, p + 25, 16);
    return true;
}

bool state_record_check(state_record_kind kind, const uint8_t *p, size_t len)
{
    switch (kind) {
    case STATE_RECORD_SEEN: {
        state_seen seen;
        return seen_decode(p, len, &seen);
    }
    case STATE_RECORD_SEEN_LEGACY: {
        state_seen seen;
        return seen_decode_legacy(p, len, &seen);
    }
    case STATE_RECORD_SENT: {
        state_sent sent;
        return sent_decode(p, len, &sent);
    }
    case STATE_RECORD_INBOX: {
        state_inbox_entry e;
        return inbox_decode(p, len, &e);
    }
    case STATE_RECORD_COPY: {
        state_copy_ref r;
        return copy_ref_decode(p, len, &r);
    }
    }
    return false;
}

/* ---- open and migrate ----------------------------------------------------- */

void state_destroy(state **sp)
{
    if (sp == NULL || *sp == NULL)
        return;
    if ((*sp)->env != NULL)
        mdb_env_close((*sp)->env);
    free(*sp);
    *sp = NULL;
}

static int count_entries(MDB_txn *txn, MDB_dbi dbi, size_t *n)
{
    MDB_stat st;
    int rc = mdb_stat(txn, dbi, &st);
    *n = rc == 0 ? st.ms_entries : 0;
    return rc;
}

/* Format 1 -> 2 (and on to 3): rewrite every seen record; one that is not the old
 * struct either is dropped (it could only ever have been ignored). */
static int migrate_from_1(state *s, MDB_txn *txn, size_t *converted, size_t *dropped)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->seen, &cur);
    if (rc != 0)
        return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        state_seen seen;
        if (seen_decode(v.mv_data, v.mv_size, &seen))
            continue;   /* already converted (an interrupted migration) */
        if (!seen_decode_legacy(v.mv_data, v.mv_size, &seen)) {
            rc = mdb_cursor_del(cur, 0);
            (*dropped)++;
        } else {
            uint8_t buf[SEEN_HEAD + MAX_FROM];
            MDB_val nv = {seen_encode(&seen, buf), buf};
            rc = mdb_cursor_put(cur, &k, &nv, MDB_CURRENT);
            (*converted)++;
        }
        if (rc != 0)
            break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Read the format; migrate an older one in txn; refuse a newer one. */
static int check_format(state *s, MDB_txn *txn, const char *dir, char *why, size_t why_len)
{
    MDB_val k = {6, "format"}, v;
    int rc = mdb_get(txn, s->meta, &k, &v);
    uint32_t format = 0;
    if (rc == 0 && v.mv_size == 4) {
        format = (uint32_t)get_le(v.mv_data, 4);
    } else if (rc == 0) {
        snprintf(why, why_len, "state directory %s has an unreadable format record; move it "
                 "aside and start with an empty one", dir);
        return REF_E_STATE;
    } else if (rc != MDB_NOTFOUND) {
        snprintf(why, why_len, "cannot read state directory %s: %s", dir, mdb_strerror(rc));
        return REF_E_STATE;
    } else {
        size_t n_seen = 0, n_out = 0;
        count_entries(txn, s->seen, &n_seen);
        count_entries(txn, s->outbox, &n_out);
        format = n_seen + n_out > 0 ? 1 : STATE_FORMAT;
    }
    if (format > STATE_FORMAT) {
        snprintf(why, why_len, "state directory %s was written by a newer libreferral (format "
                 "%u; this version reads up to %d): use that version", dir, format,
                 STATE_FORMAT);
        return REF_E_STATE;
    }
    size_t converted = 0, dropped = 0;
    if (format == 1 && (rc = migrate_from_1(s, txn, &converted, &dropped)) != 0) {
        snprintf(why, why_len, "cannot migrate state directory %s from format 1: %s", dir,
                 mdb_strerror(rc));
        return REF_E_STATE;
    }
    uint8_t buf[4];
    put_le(buf, STATE_FORMAT, 4);
    MDB_val nv = {4, buf};
    rc = mdb_put(txn, s->meta, &k, &nv, 0);
    if (rc != 0) {
        snprintf(why, why_len, "cannot write state directory %s: %s", dir, mdb_strerror(rc));
        return REF_E_STATE;
    }
    return REF_OK;
}

int state_open(const char *dir, state **out, char *why, size_t why_len)
{
    *out = NULL;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(why, why_len, "cannot create state directory %s: %s", dir, strerror(errno));
        return REF_E_STATE;
    }
    state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return REF_E_NO_MEMORY;
    MDB_txn *txn = NULL;
    int dead;
    int rc = mdb_env_create(&s->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(s->env, 8);
    if (rc == 0)
        rc = mdb_env_set_mapsize(s->env, 256u << 20);
    if (rc == 0)
        rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0600);
    if (rc == 0)
        rc = mdb_reader_check(s->env, &dead);
    if (rc == 0)
        rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "outbox", MDB_CREATE, &s->outbox);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "inbox", MDB_CREATE, &s->inbox);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "seen", MDB_CREATE, &s->seen);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "sent", MDB_CREATE, &s->sent);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "copies", MDB_CREATE, &s->copies);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->meta);
    int e = REF_OK;
    if (rc != 0) {
        snprintf(why, why_len, "cannot open state directory %s: %s", dir, mdb_strerror(rc));
        e = REF_E_STATE;
    }
    if (e == REF_OK)
        e = check_format(s, txn, dir, why, why_len);
    if (e == REF_OK) {
        rc = mdb_txn_commit(txn);
        txn = NULL;
        if (rc != 0) {
            snprintf(why, why_len, "cannot write state directory %s: %s", dir,
                     mdb_strerror(rc));
            e = REF_E_STATE;
        }
    }
    if (txn != NULL)
        mdb_txn_abort(txn);
    if (e != REF_OK) {
        state_destroy(&s);
        return e;
    }
    *out = s;
    return REF_OK;
}

/* ---- transactions --------------------------------------------------------- */

int state_begin(state *s, state_txn **out)
{
    *out = NULL;
    state_txn *t = calloc(1, sizeof *t);
    if (t == NULL)
        return REF_E_NO_MEMORY;
    t->s = s;
    if (mdb_txn_begin(s->env, NULL, 0, &t->txn) != 0) {
        free(t);
        return REF_E_STATE;
    }
    *out = t;
    return REF_OK;
}

int state_commit(state_txn **tp)
{
    if (tp == NULL || *tp == NULL)
        return REF_E_STATE;
    int rc = mdb_txn_commit((*tp)->txn);
    free(*tp);
    *tp = NULL;
    return rc == 0 ? REF_OK : REF_E_STATE;
}

void state_abort(state_txn **tp)
{
    if (tp == NULL || *tp == NULL)
        return;
    mdb_txn_abort((*tp)->txn);
    free(*tp);
    *tp = NULL;
}

static int put(state_txn *t, MDB_dbi dbi, const uint8_t id[16], const void *data, size_t len)
{
    MDB_val k = {16, (void *)(uintptr_t)id}, v = {len, (void *)(uintptr_t)data};
    return mdb_put(t->txn, dbi, &k, &v, 0) == 0 ? REF_OK : REF_E_STATE;
}

static int del(state_txn *t, MDB_dbi dbi, const uint8_t id[16])
{
    MDB_val k = {16, (void *)(uintptr_t)id};
    int rc = mdb_del(t->txn, dbi, &k, NULL);
    return rc == 0 || rc == MDB_NOTFOUND ? REF_OK : REF_E_STATE;
}

int state_outbox_put(state_txn *t, const uint8_t id[16], const uint8_t *env, size_t len)
{
    return put(t, t->s->outbox, id, env, len);
}

int state_outbox_del(state_txn *t, const uint8_t id[16])
{
    return del(t, t->s->outbox, id);
}

int state_inbox_put(state_txn *t, const uint8_t id[16], const state_inbox_entry *e)
{
    if (e->is_copy && e->kind != STATE_INBOX_ENVELOPE)
        return REF_E_INVALID;
    uint8_t *buf = malloc(INBOX_V2_HEAD + INBOX_COPY_MAX + e->len);
    if (buf == NULL)
        return REF_E_NO_MEMORY;
    buf[0] = INBOX_V2;
    buf[1] = (uint8_t)e->kind;
    buf[2] = e->urgency;
    put_le(buf + 3, e->attempt, 4);
    buf[7] = e->is_copy ? INBOX_FLAG_COPY : 0;
    size_t at = INBOX_V2_HEAD;
    if (e->is_copy)
        at += copy_labels_encode(&e->copy, buf + at);
    if (e->len > 0)
        memcpy(buf + at, e->payload, e->len);
    int rc = put(t, t->s->inbox, id, buf, at + e->len);
    free(buf);
    return rc;
}

int state_inbox_del(state_txn *t, const uint8_t id[16])
{
    return del(t, t->s->inbox, id);
}

int state_seen_put(state_txn *t, const uint8_t id[16], const state_seen *seen)
{
    uint8_t buf[SEEN_HEAD + MAX_FROM];
    return put(t, t->s->seen, id, buf, seen_encode(seen, buf));
}

int state_sent_put(state_txn *t, const uint8_t id[16], const state_sent *sent)
{
    uint8_t buf[10 + STATE_SENT_MAX * (1 + MAX_FROM)];
    if (sent->n < 1 || sent->n > STATE_SENT_MAX)
        return REF_E_INVALID;
    return put(t, t->s->sent, id, buf, sent_encode(sent, buf));
}

int state_copy_ref_put(state_txn *t, const uint8_t id[16], const state_copy_ref *ref)
{
    uint8_t buf[COPY_BYTES];
    copy_ref_encode(ref, buf);
    return put(t, t->s->copies, id, buf, sizeof buf);
}

/* ---- reads ---------------------------------------------------------------- */

typedef void (*raw_fn)(const uint8_t id[16], const MDB_val *v, void *ctx);

static int each(state *s, MDB_dbi dbi, raw_fn fn, void *ctx)
{
    MDB_txn *txn;
    MDB_cursor *c;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
        return REF_E_STATE;
    if (mdb_cursor_open(txn, dbi, &c) != 0) {
        mdb_txn_abort(txn);
        return REF_E_STATE;
    }
    MDB_val k, v;
    while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0)
        if (k.mv_size == 16)
            fn(k.mv_data, &v, ctx);
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return REF_OK;
}

typedef struct {
    state_outbox_fn fn;
    void *ctx;
} outbox_walk;

static void outbox_one(const uint8_t id[16], const MDB_val *v, void *ctx)
{
    outbox_walk *w = ctx;
    w->fn(id, v->mv_data, v->mv_size, w->ctx);
}

int state_outbox_each(state *s, state_outbox_fn fn, void *ctx)
{
    outbox_walk w = {fn, ctx};
    return each(s, s->outbox, outbox_one, &w);
}

typedef struct {
    state_inbox_fn fn;
    void *ctx;
    size_t unreadable;
} inbox_walk;

static void inbox_one(const uint8_t id[16], const MDB_val *v, void *ctx)
{
    inbox_walk *w = ctx;
    state_inbox_entry e;
    if (inbox_decode(v->mv_data, v->mv_size, &e))
        w->fn(id, &e, w->ctx);
    else
        w->unreadable++;
}

int state_inbox_each(state *s, state_inbox_fn fn, void *ctx, size_t *unreadable)
{
    inbox_walk w = {fn, ctx, 0};
    int e = each(s, s->inbox, inbox_one, &w);
    if (unreadable != NULL)
        *unreadable = w.unreadable;
    return e;
}

static size_t count(state *s, MDB_dbi dbi)
{
    MDB_txn *txn;
    size_t n = 0;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
        return 0;
    count_entries(txn, dbi, &n);
    mdb_txn_abort(txn);
    return n;
}

size_t state_outbox_count(state *s)
{
    return count(s, s->outbox);
}

size_t state_inbox_count(state *s)
{
    return count(s, s->inbox);
}

int state_outbox_get(state *s, const uint8_t id[16], uint8_t **env, size_t *len)
{
    MDB_txn *txn;
    MDB_val k = {16, (void *)(uintptr_t)id}, v;
    *env = NULL;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
        return REF_E_STATE;
    int rc = mdb_get(txn, s->outbox, &k, &v);
    if (rc == 0) {
        *env = malloc(v.mv_size ? v.mv_size : 1);
        if (*env != NULL) {
            memcpy(*env, v.mv_data, v.mv_size);
            *len = v.mv_size;
        }
    }
    mdb_txn_abort(txn);
    if (rc == MDB_NOTFOUND)
        return REF_E_AGAIN;
    if (rc != 0)
        return REF_E_STATE;
    return *env != NULL ? REF_OK : REF_E_NO_MEMORY;
}

int state_seen_get(state *s, state_txn *t, const uint8_t id[16], state_seen *seen)
{
    MDB_txn *txn = t != NULL ? t->txn : NULL;
    MDB_val k = {16, (void *)(uintptr_t)id}, v;
    if (txn == NULL && mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
        return REF_E_STATE;
    int rc = mdb_get(txn, s->seen, &k, &v);
    int e = rc == MDB_NOTFOUND ? REF_E_AGAIN
          : rc != 0 ? REF_E_STATE
          : seen_decode(v.mv_data, v.mv_size, seen) ? REF_OK : REF_E_PROTOCOL;
    if (t == NULL)
        mdb_txn_abort(txn);
    return e;
}

int state_sent_get(state *s, const uint8_t id[16], state_sent *sent)
{
    MDB_txn *txn;
    MDB_val k = {16, (void *)(uintptr_t)id}, v;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
        return REF_E_STATE;
    int rc = mdb_get(txn, s->sent, &k, &v);
    int e = rc == MDB_NOTFOUND ? REF_E_AGAIN
          : rc != 0 ? REF_E_STATE
          : sent_decode(v.mv_data, v.mv_size, sent) ? REF_OK : REF_E_PROTOCOL;
    mdb_txn_abort(txn);
    return e;
}

int state_copy_ref_get(state *s, const uint8_t id[16], state_copy_ref *ref)
{
    MDB_txn *txn;
    MDB_val k = {16, (void *)(uintptr_t)id}, v;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
        return REF_E_STATE;
    int rc = mdb_get(txn, s->copies, &k, &v);
    int e = rc == MDB_NOTFOUND ? REF_E_AGAIN
          : rc != 0 ? REF_E_STATE
          : copy_ref_decode(v.mv_data, v.mv_size, ref) ? REF_OK : REF_E_PROTOCOL;
    mdb_txn_abort(txn);
    return e;
}

/* Delete the entries of dbi whose forget_at_ms (bytes 1..8 of a version 1
 * record) is before now_ms; records of another version are kept. */
static size_t prune_db(MDB_txn *txn, MDB_dbi dbi, uint64_t now_ms)
{
    MDB_cursor *c;
    size_t n = 0;
    if (mdb_cursor_open(txn, dbi, &c) != 0)
        return 0;
    MDB_val k, v;
    while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
        const uint8_t *p = v.mv_data;
        if (v.mv_size < 9 || p[0] != 1)
            continue;   /* kept: it still says "received" or "sent" */
        if (get_le(p + 1, 8) < now_ms && mdb_cursor_del(c, 0) == 0)
            n++;
    }
    mdb_cursor_close(c);
    return n;
}

size_t state_prune(state *s, uint64_t now_ms)
{
    MDB_txn *txn;
    if (mdb_txn_begin(s->env, NULL, 0, &txn) != 0)
        return 0;
    size_t n = prune_db(txn, s->seen, now_ms) + prune_db(txn, s->sent, now_ms) +
               prune_db(txn, s->copies, now_ms);
    if (mdb_txn_commit(txn) != 0)
        return 0;
    return n;
}
