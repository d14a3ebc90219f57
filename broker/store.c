/*
 * store: the LMDB environment and its records (store.h).
 *
 * Every record goes through an explicit encoder and decoder here (layouts
 * in store.h); nothing is ever stored or read as a raw C struct, and a
 * record that does not decode is set aside, never fatal. The migration
 * from format 1 (the one reader of that format's raw struct) lives in
 * store_migrate.c; this file checks the format at open and runs it.
 *
 * This file must never open LMDB with a flag that weakens durability, never
 * retry a failed commit, and never create an empty store where one existed.
 */
#include "store.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "ref_version.h"
#include "store_migrate.h"

#define STR_(x) #x
#define STR(x) STR_(x)
#define STORE_FORMAT STR(STORE_FORMAT_CURRENT)
#define MARKER_NAME "STORE"

static const char *const db_names[STORE_DB_COUNT] = {
    "meta", "msgs", "bodies", "queue", "inflight", "dedup", "deadlines", "quarantine", "trace",
    "referrals", "levels", "refmsgs", "escalations", "held",
};

struct store {
    MDB_env *env;
    MDB_dbi dbi[STORE_DB_COUNT];
    char dir[512];
    uint64_t map_size_bytes;
    uint32_t high_water_percent;
    uint64_t min_free_disk_bytes;
    /* Room, measured at the first reservation of each write transaction
     * (store_begin marks it stale), plus what was reserved since. */
    bool is_room_measured;
    uint64_t used_bytes;          /* map pages in use (not on the free list) */
    uint64_t map_bytes;
    uint64_t disk_free_bytes;     /* free on the file system (statvfs f_bavail) */
    uint64_t file_free_bytes;     /* free inside data.mdb: free list + written, unused tail */
    bool has_disk_measure;        /* statvfs and stat worked */
    uint64_t reserved_bytes;      /* reserved since the measurement, map and disk alike */
    /* The test fault (store_set_fault); op STORE_FAULT_NONE in production. */
    store_fault_op fault_op;
    unsigned fault_after;         /* calls of fault_op still to succeed */
    int fault_error;
    bool has_writes;              /* this file wrote in the open write transaction */
};

const char *store_strerror(store_err e)
{
    switch (e) {
    case STORE_OK: return "ok";
    case STORE_NOT_FOUND: return "not found";
    case STORE_FULL: return "store full";
    case STORE_CORRUPT: return "record corrupt";
    case STORE_FAILED: return "store failed";
    }
    return "unknown";
}

store_err store_err_from_mdb(int rc)
{
    switch (rc) {
    case MDB_SUCCESS: return STORE_OK;
    case MDB_NOTFOUND: return STORE_NOT_FOUND;
    case MDB_MAP_FULL:
    case MDB_TXN_FULL:
    case MDB_PAGE_FULL: return STORE_FULL;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID: return STORE_CORRUPT;
    default: return STORE_FAILED;
    }
}

MDB_dbi store_dbi(const store *s, store_db which)
{
    return s->dbi[which];
}

static bool file_exists(const char *dir, const char *name)
{
    char path[600];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

static bool write_marker(const char *dir, const char *broker_id)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, MARKER_NAME);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return false;
    fprintf(f, "referral store format %s of broker %s\n"
               "Do not delete data.mdb: it holds every accepted referral.\n",
            STORE_FORMAT, broker_id);
    bool ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    return fclose(f) == 0 && ok;
}

/* Is a test fault of op due now? The error to fail with, else 0. Each
 * call of op counts; the fault fires once (store_set_fault). */
static int fault_due(store *s, store_fault_op op)
{
    if (s->fault_op != op)
        return 0;
    if (s->fault_after > 0) {
        s->fault_after--;
        return 0;
    }
    s->fault_op = STORE_FAULT_NONE;
    return s->fault_error;
}

/* Every write of this file goes through put() and del(): they note that
 * the transaction wrote (commit faults count only such commits) and put()
 * is where a test's put fault fires. */
static int put(store *s, MDB_txn *txn, store_db which, MDB_val *k, MDB_val *v, unsigned flags)
{
    s->has_writes = true;
    int rc = fault_due(s, STORE_FAULT_PUT);
    return rc != 0 ? rc : mdb_put(txn, s->dbi[which], k, v, flags);
}

static int del(store *s, MDB_txn *txn, store_db which, MDB_val *k)
{
    s->has_writes = true;
    return mdb_del(txn, s->dbi[which], k, NULL);
}

void store_set_fault(store *s, store_fault_op op, unsigned after_calls, int error)
{
    assert(op == STORE_FAULT_NONE || error != 0);
    s->fault_op = op;
    s->fault_after = after_calls;
    s->fault_error = error;
}

static store_err meta_get(store *s, MDB_txn *txn, const char *key, MDB_val *v)
{
    MDB_val k = {.mv_size = strlen(key), .mv_data = (void *)(uintptr_t)key};
    return store_err_from_mdb(mdb_get(txn, s->dbi[STORE_DB_META], &k, v));
}

static store_err meta_put(store *s, MDB_txn *txn, const char *key, const void *data, size_t len)
{
    MDB_val k = {.mv_size = strlen(key), .mv_data = (void *)(uintptr_t)key};
    MDB_val v = {.mv_size = len, .mv_data = (void *)(uintptr_t)data};
    return store_err_from_mdb(put(s, txn, STORE_DB_META, &k, &v, 0));
}

/* ---- referrals and levels ------------------------------------------------
 * referral record, version 1: [0] 1 | [1] n addressed (1..33) | sender as
 * [len][bytes] | n times [len][bytes]. level record: [0] 1 | [1] level.
 * The level key is the message id then the agency id. */

#define REFERRAL_V1 1
#define LEVEL_V1 1

static size_t referral_encode(const store_referral *r, uint8_t *out)
{
    size_t at = 0;
    out[at++] = REFERRAL_V1;
    out[at++] = (uint8_t)r->n_addressed;
    for (size_t i = 0; i <= r->n_addressed; i++) {
        const char *name = i == 0 ? r->sender : r->addressed[i - 1];
        size_t len = strnlen(name, IDS_NAME_MAX);
        out[at++] = (uint8_t)len;
        memcpy(out + at, name, len);
        at += len;
    }
    return at;
}

static bool referral_decode(const uint8_t *p, size_t len, store_referral *r)
{
    memset(r, 0, sizeof *r);
    if (len < 2 || p[0] != REFERRAL_V1 || p[1] < 1 || p[1] > STORE_REFERRAL_MAX)
        return false;
    r->n_addressed = p[1];
    size_t at = 2;
    for (size_t i = 0; i <= r->n_addressed; i++) {
        if (at >= len || p[at] > IDS_NAME_MAX || at + 1 + p[at] > len)
            return false;
        char *name = i == 0 ? r->sender : r->addressed[i - 1];
        memcpy(name, p + at + 1, p[at]);
        name[p[at]] = '\0';
        at += 1 + (size_t)p[at];
    }
    return at == len;
}

store_err store_referral_get(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                             store_referral *r)
{
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)referral_id}, v;
    int rc = mdb_get(txn, s->dbi[STORE_DB_REFERRALS], &k, &v);
    if (rc != 0)
        return store_err_from_mdb(rc);
    return referral_decode(v.mv_data, v.mv_size, r) ? STORE_OK : STORE_CORRUPT;
}

store_err store_referral_put(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                             const store_referral *r)
{
    uint8_t buf[2 + (STORE_REFERRAL_MAX + 1) * (IDS_NAME_MAX + 1)];
    assert(r->n_addressed >= 1 && r->n_addressed <= STORE_REFERRAL_MAX);
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)referral_id};
    MDB_val v = {.mv_size = referral_encode(r, buf), .mv_data = buf};
    return store_err_from_mdb(put(s, txn, STORE_DB_REFERRALS, &k, &v, 0));
}

bool store_referral_names(const store_referral *r, const char *agency, bool with_sender)
{
    if (with_sender && strcmp(r->sender, agency) == 0)
        return true;
    for (size_t i = 0; i < r->n_addressed; i++)
        if (strcmp(r->addressed[i], agency) == 0)
            return true;
    return false;
}

static size_t level_key(const uint8_t message_id[IDS_BYTES], const char *agency,
                        uint8_t key[IDS_BYTES + IDS_NAME_MAX])
{
    size_t len = strnlen(agency, IDS_NAME_MAX);
    memcpy(key, message_id, IDS_BYTES);
    memcpy(key + IDS_BYTES, agency, len);
    return IDS_BYTES + len;
}

store_err store_level_get(store *s, MDB_txn *txn, const uint8_t message_id[IDS_BYTES],
                          const char *agency, uint32_t *level)
{
    uint8_t key[IDS_BYTES + IDS_NAME_MAX];
    MDB_val k = {.mv_size = level_key(message_id, agency, key), .mv_data = key}, v;
    *level = 0;
    int rc = mdb_get(txn, s->dbi[STORE_DB_LEVELS], &k, &v);
    if (rc == MDB_NOTFOUND)
        return STORE_OK;
    if (rc != 0)
        return store_err_from_mdb(rc);
    const uint8_t *p = v.mv_data;
    if (v.mv_size != 2 || p[0] != LEVEL_V1)
        return STORE_CORRUPT;
    *level = p[1];
    return STORE_OK;
}

store_err store_level_put(store *s, MDB_txn *txn, const uint8_t message_id[IDS_BYTES],
                          const char *agency, uint32_t level)
{
    uint8_t key[IDS_BYTES + IDS_NAME_MAX], rec[2] = {LEVEL_V1, (uint8_t)level};
    MDB_val k = {.mv_size = level_key(message_id, agency, key), .mv_data = key};
    MDB_val v = {.mv_size = sizeof rec, .mv_data = rec};
    return store_err_from_mdb(put(s, txn, STORE_DB_LEVELS, &k, &v, 0));
}

/* A store made before the referrals database: record each referral from
 * the earliest message stored for it (ids are time ordered): its sender,
 * and its recipient as the one agency addressed. */
static store_err build_referrals(store *s, MDB_txn *txn)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, s->dbi[STORE_DB_MSGS], &c);
    if (rc != 0)
        return store_err_from_mdb(rc);
    MDB_val k, v;
    store_err e = STORE_OK;
    size_t n = 0;
    while (e == STORE_OK && mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
        store_msg m;
        store_referral r;
        if (k.mv_size != IDS_BYTES || store_msg_get(s, txn, k.mv_data, &m) != STORE_OK ||
            m.payload_kind != STORE_PAYLOAD_ENVELOPE)
            continue;
        if (store_referral_get(s, txn, m.referral_id, &r) != STORE_NOT_FOUND)
            continue;
        memset(&r, 0, sizeof r);
        snprintf(r.sender, sizeof r.sender, "%s", m.sender);
        snprintf(r.addressed[0], sizeof r.addressed[0], "%s", m.recipient);
        r.n_addressed = 1;
        e = store_referral_put(s, txn, m.referral_id, &r);
        n++;
    }
    mdb_cursor_close(c);
    if (e == STORE_OK && n > 0)
        log_info("store", "recorded referrals of an older store count=%zu", n);
    return e;
}

/* A store made before the refmsgs database: note every message record
 * under its referral, so that retention knows which referrals still have
 * messages. Records that do not decode are left to store_msg_get. */
static store_err build_refmsgs(store *s, MDB_txn *txn)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, s->dbi[STORE_DB_MSGS], &c);
    if (rc != 0)
        return store_err_from_mdb(rc);
    MDB_val k, v;
    store_err e = STORE_OK;
    size_t n = 0;
    while (e == STORE_OK && (rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
        store_msg m;
        char why[120];
        if (k.mv_size != IDS_BYTES || !store_msg_decode(v.mv_data, v.mv_size, &m, why, sizeof why))
            continue;
        e = store_refmsg_put(s, txn, m.referral_id, m.id);
        n++;
    }
    mdb_cursor_close(c);
    if (e == STORE_OK && rc != 0 && rc != MDB_NOTFOUND)
        e = store_err_from_mdb(rc);
    if (e == STORE_OK && n > 0)
        log_info("store", "noted the messages of each referral of an older store count=%zu", n);
    return e;
}

/* The format named in meta: 0 if absent or not a number. */
static unsigned long stored_format(store *s, MDB_txn *txn, char *text, size_t text_len)
{
    MDB_val v;
    snprintf(text, text_len, "(none)");
    if (meta_get(s, txn, "format", &v) != STORE_OK || v.mv_size == 0 || v.mv_size > 8)
        return 0;
    unsigned long n = 0;
    for (size_t i = 0; i < v.mv_size; i++) {
        uint8_t ch = ((const uint8_t *)v.mv_data)[i];
        if (ch < '0' || ch > '9')
            return 0;
        n = n * 10 + (ch - '0');
    }
    snprintf(text, text_len, "%.*s", (int)v.mv_size, (const char *)v.mv_data);
    return n;
}

/* Open the named databases; create them and the meta keys for a new store,
 * or check format and owner of an existing one. */
static store_err open_dbs(store *s, bool is_new, const char *broker_id, char *why,
                          size_t why_len)
{
    store_migration_counts counts = {0}, *migrated = &counts;
    bool is_migrated = false;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc != 0) {
        snprintf(why, why_len, "cannot begin a transaction in %s: %s", s->dir, mdb_strerror(rc));
        return STORE_FAILED;
    }
    for (int i = 0; i < STORE_DB_COUNT; i++) {
        bool is_added = i >= STORE_DB_REFERRALS;   /* created in stores made before them */
        rc = mdb_dbi_open(txn, db_names[i], is_new || is_added ? MDB_CREATE : 0, &s->dbi[i]);
        if (rc != 0) {
            snprintf(why, why_len, "store %s has no database \"%s\" (%s): it is not a referral "
                     "store of this format or it is damaged; restore it from a backup",
                     s->dir, db_names[i], mdb_strerror(rc));
            mdb_txn_abort(txn);
            return STORE_CORRUPT;
        }
    }
    MDB_val v;
    if (is_new) {
        store_err e = meta_put(s, txn, "format", STORE_FORMAT, strlen(STORE_FORMAT));
        if (e == STORE_OK)
            e = meta_put(s, txn, "broker_id", broker_id, strlen(broker_id));
        if (e != STORE_OK) {
            snprintf(why, why_len, "cannot initialise store %s: %s", s->dir, store_strerror(e));
            mdb_txn_abort(txn);
            return e;
        }
    } else {
        char text[16];
        unsigned long format = stored_format(s, txn, text, sizeof text);
        if (format > STORE_FORMAT_CURRENT) {
            snprintf(why, why_len, "store %s is of format %s, newer than this referrald "
                     "(format %s, release %s): it was written by a newer release; run that "
                     "release or a later one on it (this one never rewrites it)", s->dir, text,
                     STORE_FORMAT, REF_VERSION);
            mdb_txn_abort(txn);
            return STORE_CORRUPT;
        }
        if (format != STORE_FORMAT_CURRENT && format != STORE_FORMAT_PREVIOUS) {
            snprintf(why, why_len, "store %s has no known format (meta format %s; this "
                     "referrald reads formats %d and %d): it is not a referral store or it is "
                     "damaged; restore it from a backup", s->dir, text, STORE_FORMAT_PREVIOUS,
                     STORE_FORMAT_CURRENT);
            mdb_txn_abort(txn);
            return STORE_CORRUPT;
        }
        if (meta_get(s, txn, "broker_id", &v) != STORE_OK || v.mv_size != strlen(broker_id) ||
            memcmp(v.mv_data, broker_id, v.mv_size) != 0) {
            snprintf(why, why_len, "store %s belongs to another broker (expected %s); point "
                     "data_dir at this broker's own store", s->dir, broker_id);
            mdb_txn_abort(txn);
            return STORE_CORRUPT;
        }
        if (format == STORE_FORMAT_PREVIOUS) {
            store_migration_counts n = {0};
            uint64_t t0 = clock_mono_ms();
            store_err e = store_migrate_from_1(s, txn, &n);
            if (e == STORE_OK)
                e = meta_put(s, txn, "format", STORE_FORMAT, strlen(STORE_FORMAT));
            if (e != STORE_OK) {
                snprintf(why, why_len, "cannot migrate store %s from format %d to %s (%s); "
                         "nothing was changed. %s", s->dir, STORE_FORMAT_PREVIOUS, STORE_FORMAT,
                         store_strerror(e), e == STORE_FULL
                             ? "The migration rewrites every record in one transaction: "
                               "raise [store] map_size_bytes and start again"
                             : "Restore the store from a backup, or run the previous release "
                               "on it");
                mdb_txn_abort(txn);
                return e;
            }
            n.ms = clock_mono_ms() - t0;
            *migrated = n;
            is_migrated = true;
        }
        if (meta_get(s, txn, "refmsgs_built", &v) == STORE_NOT_FOUND) {
            store_err e = build_refmsgs(s, txn);
            if (e == STORE_OK)
                e = meta_put(s, txn, "refmsgs_built", "1", 1);
            if (e != STORE_OK) {
                snprintf(why, why_len, "cannot note the messages of each referral in store %s: "
                         "%s%s", s->dir, store_strerror(e), e == STORE_FULL
                             ? "; raise [store] map_size_bytes and start again" : "");
                mdb_txn_abort(txn);
                return e;
            }
        }
        if (meta_get(s, txn, "referrals_built", &v) == STORE_NOT_FOUND) {
            store_err e = build_referrals(s, txn);
            if (e == STORE_OK)
                e = meta_put(s, txn, "referrals_built", "1", 1);
            if (e != STORE_OK) {
                snprintf(why, why_len, "cannot record the referrals of store %s: %s", s->dir,
                         store_strerror(e));
                mdb_txn_abort(txn);
                return e;
            }
        }
    }
    if (is_new) {
        store_err e = meta_put(s, txn, "referrals_built", "1", 1);
        if (e == STORE_OK)
            e = meta_put(s, txn, "refmsgs_built", "1", 1);
        if (e != STORE_OK) {
            snprintf(why, why_len, "cannot initialise store %s: %s", s->dir, store_strerror(e));
            mdb_txn_abort(txn);
            return e;
        }
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0) {
        store_describe_failure(s->dir, s->map_size_bytes, rc, "commit at open", why, why_len);
        return STORE_FAILED;
    }
    if (is_migrated) {
        log_info("store", "migrated store from format %d to %s dir=%s msgs=%zu bodies=%zu "
                 "queue=%zu inflight=%zu dedup=%zu deadlines=%zu quarantine=%zu set_aside=%zu "
                 "ms=%llu", STORE_FORMAT_PREVIOUS, STORE_FORMAT, s->dir, counts.msgs,
                 counts.bodies, counts.queue, counts.inflight, counts.dedup, counts.deadlines,
                 counts.quarantine, counts.set_aside, (unsigned long long)counts.ms);
        if (!write_marker(s->dir, broker_id))
            log_warn("store", "cannot rewrite %s/%s after the migration: %s (informational "
                     "only)", s->dir, MARKER_NAME, strerror(errno));
    }
    return STORE_OK;
}

store_err store_open(const store_options *opt, store **out, char *why, size_t why_len)
{
    *out = NULL;
    store *s = calloc(1, sizeof *s);
    if (s == NULL) {
        snprintf(why, why_len, "out of memory");
        return STORE_FAILED;
    }
    snprintf(s->dir, sizeof s->dir, "%s", opt->dir);
    s->map_size_bytes = opt->map_size_bytes;
    s->high_water_percent = opt->high_water_percent;
    s->min_free_disk_bytes = opt->min_free_disk_bytes;

    if (mkdir(opt->dir, 0700) != 0 && errno != EEXIST) {
        snprintf(why, why_len, "cannot create store directory %s: %s", opt->dir, strerror(errno));
        store_destroy(&s);
        return STORE_FAILED;
    }
    bool has_data = file_exists(opt->dir, "data.mdb");
    bool has_marker = file_exists(opt->dir, MARKER_NAME);
    if (!has_data && has_marker) {
        snprintf(why, why_len, "store %s has its %s marker but no data.mdb: the store was lost "
                 "or moved; restore data.mdb from a backup (refusing to start empty)",
                 opt->dir, MARKER_NAME);
        store_destroy(&s);
        return STORE_CORRUPT;
    }
    bool is_new = !has_data;

    int rc = mdb_env_create(&s->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(s->env, STORE_DB_COUNT + 2);
    if (rc == 0)
        rc = mdb_env_set_mapsize(s->env, (size_t)opt->map_size_bytes);
    if (rc == 0)   /* default flags: full sync on every commit */
        rc = mdb_env_open(s->env, opt->dir, MDB_NOTLS, 0600);
    if (rc != 0) {
        snprintf(why, why_len, "cannot open store %s: %s%s", opt->dir, mdb_strerror(rc),
                 store_err_from_mdb(rc) == STORE_CORRUPT
                     ? " (the file is damaged or not an LMDB store; restore from a backup)" : "");
        store_err e = store_err_from_mdb(rc) == STORE_CORRUPT ? STORE_CORRUPT : STORE_FAILED;
        store_destroy(&s);
        return e;
    }
    int dead = 0;
    rc = mdb_reader_check(s->env, &dead);
    if (rc == 0 && dead > 0)
        log_warn("store", "cleared stale readers count=%d dir=%s", dead, opt->dir);

    store_err e = open_dbs(s, is_new, opt->broker_id, why, why_len);
    if (e != STORE_OK) {
        store_destroy(&s);
        return e;
    }
    if (is_new && !write_marker(opt->dir, opt->broker_id)) {
        snprintf(why, why_len, "cannot write %s/%s: %s", opt->dir, MARKER_NAME, strerror(errno));
        store_destroy(&s);
        return STORE_FAILED;
    }
    if (is_new)
        log_info("store", "created new store dir=%s broker=%s", opt->dir, opt->broker_id);
    *out = s;
    return STORE_OK;
}

void store_destroy(store **sp)
{
    if (sp == NULL || *sp == NULL)
        return;
    store *s = *sp;
    if (s->env != NULL)
        mdb_env_close(s->env);
    free(s);
    *sp = NULL;
}

store_err store_begin(store *s, MDB_txn **txn)
{
    s->is_room_measured = false;   /* a new turn measures room again */
    s->has_writes = false;
    return store_err_from_mdb(mdb_txn_begin(s->env, NULL, 0, txn));
}

store_err store_begin_child(store *s, MDB_txn *parent, MDB_txn **child)
{
    return store_err_from_mdb(mdb_txn_begin(s->env, parent, 0, child));
}

/* Free bytes on the file system holding dir, or UINT64_MAX if unknown. */
static uint64_t disk_free(const char *dir)
{
    struct statvfs vfs;
    if (statvfs(dir, &vfs) != 0)
        return UINT64_MAX;
    return (uint64_t)vfs.f_bavail * vfs.f_frsize;
}

/* Below this much free space an I/O error is taken for a full disk: LMDB
 * reports a short write (the disk filled in the middle of it) as EIO. */
#define DISK_FULL_BYTES (1ull << 20)

void store_describe_failure(const char *dir, uint64_t map_size_bytes, int rc, const char *doing,
                            char *why, size_t why_len)
{
    uint64_t avail = disk_free(dir);
    if (rc == ENOSPC || (rc == EIO && avail < DISK_FULL_BYTES)) {
        snprintf(why, why_len, "disk full: %s in %s failed (%s) with %llu bytes free on its "
                 "file system; free space there or move data_dir to a larger disk, then start "
                 "the broker again (it recovers from the last good commit)", doing, dir,
                 mdb_strerror(rc), (unsigned long long)avail);
    } else if (rc == EIO) {
        snprintf(why, why_len, "I/O error: %s in %s failed (%s) with space free on the disk: "
                 "the disk or file system is failing; check the kernel log (dmesg) and the "
                 "disk, then start the broker again (it recovers from the last good commit)",
                 doing, dir, mdb_strerror(rc));
    } else if (rc == EDQUOT) {
        snprintf(why, why_len, "disk quota exceeded: %s in %s failed; raise the quota of the "
                 "broker's user or move data_dir, then start the broker again", doing, dir);
    } else if (rc == EROFS) {
        snprintf(why, why_len, "read-only file system: %s in %s failed; the file system was "
                 "remounted read-only (often after disk errors: check dmesg), then start the "
                 "broker again", doing, dir);
    } else if (rc == MDB_MAP_FULL) {
        snprintf(why, why_len, "store map full: %s in %s needs more than map_size_bytes "
                 "(%llu); stop the broker, raise [store] map_size_bytes, start it", doing, dir,
                 (unsigned long long)map_size_bytes);
    } else {
        snprintf(why, why_len, "%s in %s failed: %s; start the broker again (it recovers from "
                 "the last good commit)", doing, dir, mdb_strerror(rc));
    }
}

store_err store_commit(store *s, MDB_txn *txn, char *why, size_t why_len)
{
    /* A test's commit fault counts only commits that write: LMDB commits
     * an empty transaction without touching the disk, so it cannot fail. */
    bool has_writes = s->has_writes;
    s->has_writes = false;
    int rc = has_writes ? fault_due(s, STORE_FAULT_COMMIT) : 0;
    if (rc != 0) {
        mdb_txn_abort(txn);   /* as a failed write: nothing of it reaches the file */
    } else {
        rc = mdb_txn_commit(txn);
        if (rc == 0 && has_writes)   /* as a failed fsync: written, but not known durable */
            rc = fault_due(s, STORE_FAULT_SYNC);
    }
    if (rc == 0)
        return STORE_OK;
    store_describe_failure(s->dir, s->map_size_bytes, rc, "commit", why, why_len);
    /* Never retried: after a failed fsync the page cache cannot be trusted
     * to hold what was written. The caller exits; restart recovers. */
    return STORE_FAILED;
}

store_err store_meta_get_u64(store *s, MDB_txn *txn, const char *key, uint64_t *value)
{
    MDB_val v;
    store_err e = meta_get(s, txn, key, &v);
    if (e != STORE_OK)
        return e;
    if (v.mv_size != 8)
        return STORE_CORRUPT;
    *value = store_get_u64(v.mv_data);
    return STORE_OK;
}

store_err store_meta_get_bytes(store *s, MDB_txn *txn, const char *key, uint8_t *value,
                               size_t *len)
{
    MDB_val v;
    store_err e = meta_get(s, txn, key, &v);
    if (e != STORE_OK)
        return e;
    if (v.mv_size > *len)
        return STORE_CORRUPT;
    memcpy(value, v.mv_data, v.mv_size);
    *len = v.mv_size;
    return STORE_OK;
}

store_err store_meta_put_bytes(store *s, MDB_txn *txn, const char *key, const uint8_t *value,
                               size_t len)
{
    return meta_put(s, txn, key, value, len);
}

store_err store_meta_put_u64(store *s, MDB_txn *txn, const char *key, uint64_t value)
{
    uint8_t be[8];
    store_put_u64(be, value);
    return meta_put(s, txn, key, be, sizeof be);
}

store_err store_next_seq(store *s, MDB_txn *txn, uint64_t *seq)
{
    uint64_t next = 1;
    store_err e = store_meta_get_u64(s, txn, "seq", &next);
    if (e == STORE_NOT_FOUND)
        next = 1;
    else if (e != STORE_OK)
        return e;   /* a counter that does not decode must never restart at 1 */
    *seq = next;
    return store_meta_put_u64(s, txn, "seq", next + 1);
}

/* ---- codec helpers -------------------------------------------------------- */

void store_put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * (7 - i)));
}

uint64_t store_get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * (3 - i)));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* [len][bytes] of a NUL-terminated name of at most IDS_NAME_MAX bytes. */
static size_t put_name(uint8_t *p, const char *name)
{
    size_t len = strnlen(name, IDS_NAME_MAX);
    p[0] = (uint8_t)len;
    memcpy(p + 1, name, len);
    return 1 + len;
}

/* Read [len][bytes] at *at into name (IDS_NAME_MAX + 1 bytes); false if it
 * runs past len or holds a NUL. */
static bool get_name(const uint8_t *p, size_t len, size_t *at, char *name)
{
    if (*at >= len || p[*at] > IDS_NAME_MAX || *at + 1 + p[*at] > len)
        return false;
    size_t n = p[*at];
    if (memchr(p + *at + 1, 0, n) != NULL)
        return false;
    memcpy(name, p + *at + 1, n);
    name[n] = '\0';
    *at += 1 + n;
    return true;
}

static bool bad(char *why, size_t why_len, const char *what, const uint8_t *p, size_t len)
{
    if (len > 0 && p[0] != STORE_RECORD_V1)
        snprintf(why, why_len, "unknown %s record version %u", what, p[0]);
    else
        snprintf(why, why_len, "malformed %s record (%zu bytes)", what, len);
    return false;
}

static MDB_val id_val(const uint8_t id[IDS_BYTES])
{
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)id};
    return k;
}

/* ---- message records ------------------------------------------------------ */

#define MSG_FIXED 112
#define BODY_HEAD (1 + DIGEST_BYTES)

size_t store_msg_encode(const store_msg *m, uint8_t out[STORE_MSG_RECORD_MAX])
{
    out[0] = STORE_RECORD_V1;
    out[1] = m->state;
    out[2] = m->urgency;
    out[3] = m->payload_kind;
    memcpy(out + 4, m->id, IDS_BYTES);
    memcpy(out + 20, m->referral_id, IDS_BYTES);
    memcpy(out + 36, m->content_digest, DIGEST_BYTES);
    put_u32(out + 68, m->attempts);
    store_put_u64(out + 72, m->seq);
    store_put_u64(out + 80, m->created_at_ms);
    store_put_u64(out + 88, m->expires_at_ms);
    store_put_u64(out + 96, m->updated_at_ms);
    store_put_u64(out + 104, m->due_at_ms);
    size_t at = MSG_FIXED;
    at += put_name(out + at, m->recipient);
    at += put_name(out + at, m->sender);
    return at;
}

bool store_msg_decode(const uint8_t *p, size_t len, store_msg *m, char *why, size_t why_len)
{
    memset(m, 0, sizeof *m);
    if (len < MSG_FIXED + 2 || p[0] != STORE_RECORD_V1)
        return bad(why, why_len, "message", p, len);
    m->state = p[1];
    m->urgency = p[2];
    m->payload_kind = p[3];
    memcpy(m->id, p + 4, IDS_BYTES);
    memcpy(m->referral_id, p + 20, IDS_BYTES);
    memcpy(m->content_digest, p + 36, DIGEST_BYTES);
    m->attempts = get_u32(p + 68);
    m->seq = store_get_u64(p + 72);
    m->created_at_ms = store_get_u64(p + 80);
    m->expires_at_ms = store_get_u64(p + 88);
    m->updated_at_ms = store_get_u64(p + 96);
    m->due_at_ms = store_get_u64(p + 104);
    size_t at = MSG_FIXED;
    if (!get_name(p, len, &at, m->recipient) || !get_name(p, len, &at, m->sender) || at != len)
        return bad(why, why_len, "message", p, len);
    /* States 1..6 (MessageState), urgency 1..4, a known payload kind. */
    if (m->state < 1 || m->state > 8 || m->state == 7 || m->urgency < 1 || m->urgency > 4 ||
        m->payload_kind < STORE_PAYLOAD_ENVELOPE || m->payload_kind > STORE_PAYLOAD_COPY ||
        m->recipient[0] == '\0') {
        snprintf(why, why_len, "message record with a field out of range (state %u, urgency "
                 "%u, payload kind %u)", m->state, m->urgency, m->payload_kind);
        return false;
    }
    return true;
}

store_err store_msg_put(store *s, MDB_txn *txn, const store_msg *m)
{
    uint8_t rec[STORE_MSG_RECORD_MAX];
    MDB_val k = id_val(m->id), v = {.mv_size = store_msg_encode(m, rec), .mv_data = rec};
    return store_err_from_mdb(put(s, txn, STORE_DB_MSGS, &k, &v, 0));
}

store_err store_msg_get(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES], store_msg *m)
{
    MDB_val k = id_val(id), v;
    int rc = mdb_get(txn, s->dbi[STORE_DB_MSGS], &k, &v);
    if (rc != 0)
        return store_err_from_mdb(rc);
    char why[120];
    if (store_msg_decode(v.mv_data, v.mv_size, m, why, sizeof why))
        return STORE_OK;
    store_err e = store_set_aside(s, txn, STORE_DB_MSGS, id, IDS_BYTES, why);
    return e == STORE_OK ? STORE_NOT_FOUND : e;
}

store_err store_msg_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    MDB_val k = id_val(id);
    return store_err_from_mdb(del(s, txn, STORE_DB_MSGS, &k));
}

store_err store_body_put(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                         const uint8_t *payload, size_t len)
{
    MDB_val k = id_val(id), v = {.mv_size = BODY_HEAD + len, .mv_data = NULL};
    uint8_t digest[DIGEST_BYTES];
    if (!digest_sha256(payload, len, digest))
        return STORE_FAILED;
    int rc = put(s, txn, STORE_DB_BODIES, &k, &v, MDB_RESERVE);
    if (rc != 0)
        return store_err_from_mdb(rc);
    uint8_t *p = v.mv_data;
    p[0] = STORE_RECORD_V1;
    memcpy(p + 1, digest, DIGEST_BYTES);
    memcpy(p + BODY_HEAD, payload, len);
    return STORE_OK;
}

store_err store_body_get(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                         const uint8_t **payload, size_t *len)
{
    MDB_val k = id_val(id), v;
    int rc = mdb_get(txn, s->dbi[STORE_DB_BODIES], &k, &v);
    if (rc != 0)
        return store_err_from_mdb(rc);
    const uint8_t *p = v.mv_data;
    if (v.mv_size < BODY_HEAD || p[0] != STORE_RECORD_V1)
        return STORE_CORRUPT;   /* the caller quarantines it */
    uint8_t digest[DIGEST_BYTES];
    if (!digest_sha256(p + BODY_HEAD, v.mv_size - BODY_HEAD, digest))
        return STORE_FAILED;
    if (memcmp(digest, p + 1, DIGEST_BYTES) != 0)
        return STORE_CORRUPT;
    *payload = p + BODY_HEAD;
    *len = v.mv_size - BODY_HEAD;
    return STORE_OK;
}

store_err store_body_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    MDB_val k = id_val(id);
    return store_err_from_mdb(del(s, txn, STORE_DB_BODIES, &k));
}

/* ---- quarantine ----------------------------------------------------------- */

#define QUARANTINE_KEY_MAX 400

/* Copy the value under key in which into quarantine (what = which), with
 * reason, then delete the original. */
static store_err move_to_quarantine(store *s, MDB_txn *txn, store_db which, const uint8_t *key,
                                    size_t key_len, const char *reason)
{
    if (key_len == 0)
        return STORE_NOT_FOUND;
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)(uintptr_t)key}, v;
    int rc = mdb_get(txn, s->dbi[which], &k, &v);
    if (rc != 0)
        return store_err_from_mdb(rc);
    size_t rlen = strnlen(reason, 255);
    size_t head = 1 + 8 + 1 + rlen;
    uint8_t qkey[QUARANTINE_KEY_MAX];
    /* LMDB keys are at most 511 bytes: a long original key (only a damaged
     * one is that long) is cut in the quarantine key. */
    size_t qlen = key_len < QUARANTINE_KEY_MAX - 1 ? key_len : QUARANTINE_KEY_MAX - 1;
    qkey[0] = (uint8_t)which;
    memcpy(qkey + 1, key, qlen);
    MDB_val qk = {.mv_size = qlen + 1, .mv_data = qkey};
    MDB_val qv = {.mv_size = head + v.mv_size, .mv_data = NULL};
    size_t orig_len = v.mv_size;
    /* The original may be large (a body): copy it before the reserve, which
     * may move pages under v. */
    uint8_t *orig = malloc(orig_len > 0 ? orig_len : 1);
    if (orig == NULL)
        return STORE_FAILED;
    memcpy(orig, v.mv_data, orig_len);
    rc = put(s, txn, STORE_DB_QUARANTINE, &qk, &qv, MDB_RESERVE);
    if (rc == 0) {
        uint8_t *p = qv.mv_data;
        p[0] = STORE_RECORD_V1;
        store_put_u64(p + 1, clock_now_ms());
        p[9] = (uint8_t)rlen;
        memcpy(p + 10, reason, rlen);
        memcpy(p + head, orig, orig_len);
        rc = del(s, txn, which, &k);
    }
    free(orig);
    return store_err_from_mdb(rc);
}

store_err store_quarantine(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    return move_to_quarantine(s, txn, STORE_DB_BODIES, id, IDS_BYTES,
                              "stored body failed its digest check");
}

store_err store_is_set_aside(store *s, MDB_txn *txn, store_db which, const uint8_t *key,
                             size_t key_len, bool *is_set_aside)
{
    uint8_t qkey[QUARANTINE_KEY_MAX];
    size_t qlen = key_len < QUARANTINE_KEY_MAX - 1 ? key_len : QUARANTINE_KEY_MAX - 1;
    qkey[0] = (uint8_t)which;
    memcpy(qkey + 1, key, qlen);
    MDB_val k = {.mv_size = qlen + 1, .mv_data = qkey}, v;
    int rc = mdb_get(txn, s->dbi[STORE_DB_QUARANTINE], &k, &v);
    *is_set_aside = rc == 0;
    return rc == 0 || rc == MDB_NOTFOUND ? STORE_OK : store_err_from_mdb(rc);
}

uint64_t store_set_aside_count(store *s, MDB_txn *txn)
{
    uint64_t n = 0;
    if (store_meta_get_u64(s, txn, "set_aside", &n) != STORE_OK)
        n = 0;
    return n;
}

store_err store_set_aside(store *s, MDB_txn *txn, store_db which, const uint8_t *key,
                          size_t key_len, const char *reason)
{
    assert(which > STORE_DB_META && which < STORE_DB_COUNT && which != STORE_DB_QUARANTINE);
    store_err e = move_to_quarantine(s, txn, which, key, key_len, reason);
    if (e != STORE_OK)
        return e;
    if (which == STORE_DB_MSGS && key_len == IDS_BYTES) {
        /* Its body goes with it (it can no longer be delivered), and its
         * inflight entry (nothing can requeue it). Queue entries and
         * deadlines that name it find no record and are dropped then. */
        e = move_to_quarantine(s, txn, STORE_DB_BODIES, key, key_len,
                               "its message record was set aside");
        if (e != STORE_OK && e != STORE_NOT_FOUND)
            return e;
        MDB_val k = {.mv_size = key_len, .mv_data = (void *)(uintptr_t)key};
        int rc = del(s, txn, STORE_DB_INFLIGHT, &k);
        if (rc != 0 && rc != MDB_NOTFOUND)
            return store_err_from_mdb(rc);
    }
    uint64_t n = store_set_aside_count(s, txn) + 1;
    e = store_meta_put_u64(s, txn, "set_aside", n);
    if (e != STORE_OK)
        return e;
    char hex[2 * 64 + 1];
    size_t shown = key_len < 64 ? key_len : 64;
    for (size_t i = 0; i < shown; i++)
        snprintf(hex + 2 * i, 3, "%02x", key[i]);
    hex[2 * shown] = '\0';
    log_error("store", "record set aside in quarantine db=%s key=%s reason=\"%s\" "
              "set_aside_total=%llu; the broker goes on without it (docs/operations.md: "
              "records set aside)", db_names[which], hex, reason, (unsigned long long)n);
    return STORE_OK;
}

/* ---- dedup ---------------------------------------------------------------- */

#define DEDUP_LEN (1 + DIGEST_BYTES + 8)

store_err store_dedup_put(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                          const uint8_t digest[DIGEST_BYTES], uint64_t forget_at_ms)
{
    uint8_t val[DEDUP_LEN];
    val[0] = STORE_RECORD_V1;
    memcpy(val + 1, digest, DIGEST_BYTES);
    store_put_u64(val + 1 + DIGEST_BYTES, forget_at_ms);
    MDB_val k = id_val(id), v = {.mv_size = sizeof val, .mv_data = val};
    return store_err_from_mdb(put(s, txn, STORE_DB_DEDUP, &k, &v, 0));
}

store_err store_dedup_get(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                          uint8_t digest[DIGEST_BYTES])
{
    MDB_val k = id_val(id), v;
    int rc = mdb_get(txn, s->dbi[STORE_DB_DEDUP], &k, &v);
    if (rc != 0)
        return store_err_from_mdb(rc);
    const uint8_t *p = v.mv_data;
    if (v.mv_size != DEDUP_LEN || p[0] != STORE_RECORD_V1) {
        char why[80], hex[IDS_HEX_LEN + 1];
        bad(why, sizeof why, "dedup", p, v.mv_size);
        log_error("store", "dedup entry unreadable msg=%s reason=\"%s\"; submissions of this "
                  "id are refused until it is forgotten", ids_hex(id, IDS_BYTES, hex), why);
        return STORE_CORRUPT;
    }
    memcpy(digest, p + 1, DIGEST_BYTES);
    return STORE_OK;
}

store_err store_dedup_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    MDB_val k = id_val(id);
    return store_err_from_mdb(del(s, txn, STORE_DB_DEDUP, &k));
}

/* ---- refmsgs and what retention deletes ------------------------------------
 * refmsgs key: referral id (16) | message id (16); value [0] 1. */

#define REFMSG_KEY (2 * IDS_BYTES)

static MDB_val refmsg_key(const uint8_t referral_id[IDS_BYTES], const uint8_t message_id[IDS_BYTES],
                          uint8_t key[REFMSG_KEY])
{
    memcpy(key, referral_id, IDS_BYTES);
    memcpy(key + IDS_BYTES, message_id, IDS_BYTES);
    MDB_val k = {.mv_size = REFMSG_KEY, .mv_data = key};
    return k;
}

store_err store_refmsg_put(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                           const uint8_t message_id[IDS_BYTES])
{
    uint8_t key[REFMSG_KEY], val[1] = {STORE_RECORD_V1};
    MDB_val k = refmsg_key(referral_id, message_id, key);
    MDB_val v = {.mv_size = sizeof val, .mv_data = val};
    return store_err_from_mdb(put(s, txn, STORE_DB_REFMSGS, &k, &v, 0));
}

store_err store_refmsg_del(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                           const uint8_t message_id[IDS_BYTES])
{
    uint8_t key[REFMSG_KEY];
    MDB_val k = refmsg_key(referral_id, message_id, key);
    return store_err_from_mdb(del(s, txn, STORE_DB_REFMSGS, &k));
}

/* Open a cursor on which at the first key starting with prefix; *k is that
 * key, or rc MDB_NOTFOUND when there is none. */
static int seek_prefix(store *s, MDB_txn *txn, store_db which, const uint8_t *prefix,
                       size_t prefix_len, MDB_cursor **c, MDB_val *k)
{
    int rc = mdb_cursor_open(txn, s->dbi[which], c);
    if (rc != 0) {
        *c = NULL;
        return rc;
    }
    MDB_val v;
    k->mv_size = prefix_len;
    k->mv_data = (void *)(uintptr_t)prefix;
    rc = mdb_cursor_get(*c, k, &v, MDB_SET_RANGE);
    if (rc == 0 && (k->mv_size < prefix_len || memcmp(k->mv_data, prefix, prefix_len) != 0))
        rc = MDB_NOTFOUND;
    return rc;
}

store_err store_referral_has_msgs(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                                  bool *has_msgs)
{
    MDB_cursor *c;
    MDB_val k;
    int rc = seek_prefix(s, txn, STORE_DB_REFMSGS, referral_id, IDS_BYTES, &c, &k);
    if (c != NULL)
        mdb_cursor_close(c);
    *has_msgs = rc == 0;
    return rc == 0 || rc == MDB_NOTFOUND ? STORE_OK : store_err_from_mdb(rc);
}

store_err store_refmsgs_each(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                             void (*fn)(const uint8_t id[IDS_BYTES], void *ctx), void *ctx)
{
    enum { MAX_IDS = 256 };
    uint8_t (*ids)[IDS_BYTES] = malloc(MAX_IDS * IDS_BYTES);
    if (ids == NULL)
        return STORE_FAILED;
    MDB_cursor *c;
    MDB_val k, v;
    size_t n = 0;
    int rc = seek_prefix(s, txn, STORE_DB_REFMSGS, referral_id, IDS_BYTES, &c, &k);
    while (rc == 0 && n < MAX_IDS) {
        if (k.mv_size == 2 * IDS_BYTES)
            memcpy(ids[n++], (const uint8_t *)k.mv_data + IDS_BYTES, IDS_BYTES);
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
        if (rc == 0 && (k.mv_size < IDS_BYTES || memcmp(k.mv_data, referral_id, IDS_BYTES) != 0))
            rc = MDB_NOTFOUND;
    }
    if (c != NULL)
        mdb_cursor_close(c);
    /* The cursor is closed before fn runs: fn may write (set a record aside). */
    for (size_t i = 0; (rc == 0 || rc == MDB_NOTFOUND) && i < n; i++)
        fn(ids[i], ctx);
    free(ids);
    return rc == 0 || rc == MDB_NOTFOUND ? STORE_OK : store_err_from_mdb(rc);
}

store_err store_referral_del(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES])
{
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)referral_id};
    return store_err_from_mdb(del(s, txn, STORE_DB_REFERRALS, &k));
}

/* Delete up to max records of which whose key starts with prefix (the
 * first each time: deleting moves the cursor on). */
static store_err del_prefix(store *s, MDB_txn *txn, store_db which, const uint8_t *prefix,
                            size_t prefix_len, size_t max, size_t *n_deleted, bool *is_done)
{
    *n_deleted = 0;
    *is_done = false;
    while (*n_deleted < max) {
        MDB_cursor *c;
        MDB_val k;
        int rc = seek_prefix(s, txn, which, prefix, prefix_len, &c, &k);
        if (rc == 0) {
            s->has_writes = true;
            rc = mdb_cursor_del(c, 0);
        }
        if (c != NULL)
            mdb_cursor_close(c);
        if (rc == MDB_NOTFOUND) {
            *is_done = true;
            return STORE_OK;
        }
        if (rc != 0)
            return store_err_from_mdb(rc);
        (*n_deleted)++;
    }
    /* As many as allowed: done only if nothing is left. */
    MDB_cursor *c;
    MDB_val k;
    int rc = seek_prefix(s, txn, which, prefix, prefix_len, &c, &k);
    if (c != NULL)
        mdb_cursor_close(c);
    *is_done = rc == MDB_NOTFOUND;
    return rc == 0 || rc == MDB_NOTFOUND ? STORE_OK : store_err_from_mdb(rc);
}

store_err store_levels_del(store *s, MDB_txn *txn, const uint8_t message_id[IDS_BYTES],
                           size_t *n_deleted)
{
    bool is_done;
    return del_prefix(s, txn, STORE_DB_LEVELS, message_id, IDS_BYTES, SIZE_MAX, n_deleted,
                      &is_done);
}

store_err store_trace_del(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                          size_t max, size_t *n_deleted, bool *is_done)
{
    return del_prefix(s, txn, STORE_DB_TRACE, referral_id, IDS_BYTES, max, n_deleted, is_done);
}

store_err store_del(store *s, MDB_txn *txn, store_db which, const uint8_t *key, size_t key_len)
{
    assert(which > STORE_DB_META && which < STORE_DB_COUNT);
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)(uintptr_t)key};
    return store_err_from_mdb(del(s, txn, which, &k));
}

/* ---- trace ---------------------------------------------------------------- */

store_err store_trace_put(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                          const uint8_t *event, size_t len)
{
    uint64_t seq;
    store_err e = store_next_seq(s, txn, &seq);
    if (e != STORE_OK)
        return e;
    uint8_t key[IDS_BYTES + 8];
    memcpy(key, referral_id, IDS_BYTES);
    for (int i = 0; i < 8; i++)
        key[IDS_BYTES + i] = (uint8_t)(seq >> (8 * (7 - i)));
    MDB_val k = {.mv_size = sizeof key, .mv_data = key};
    MDB_val v = {.mv_size = len, .mv_data = (void *)(uintptr_t)event};
    return store_err_from_mdb(put(s, txn, STORE_DB_TRACE, &k, &v, 0));
}

store_err store_trace_each(store *s, MDB_txn *txn, const uint8_t referral_id[IDS_BYTES],
                           size_t max, store_trace_fn fn, void *ctx, bool *is_truncated)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, s->dbi[STORE_DB_TRACE], &c);
    if (rc != 0)
        return store_err_from_mdb(rc);
    *is_truncated = false;
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)referral_id}, v;
    size_t n = 0;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != IDS_BYTES + 8 || memcmp(k.mv_data, referral_id, IDS_BYTES) != 0)
            break;
        if (n == max) {
            *is_truncated = true;
            break;
        }
        fn(v.mv_data, v.mv_size, ctx);
        n++;
    }
    mdb_cursor_close(c);
    return rc == 0 || rc == MDB_NOTFOUND ? STORE_OK : store_err_from_mdb(rc);
}

/* ---- room ----------------------------------------------------------------- */

/* Pages on LMDB's free list, reusable by new writes. */
static uint64_t free_pages(store *s)
{
    MDB_txn *txn;
    MDB_cursor *c;
    uint64_t total = 0;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
        return 0;
    if (mdb_cursor_open(txn, 0, &c) == 0) {   /* dbi 0 is LMDB's free-page DB */
        MDB_val k, v;
        while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
            size_t count;
            if (v.mv_size >= sizeof count) {
                memcpy(&count, v.mv_data, sizeof count);   /* IDL: count, then page ids */
                total += count;
            }
        }
        mdb_cursor_close(c);
    }
    mdb_txn_abort(txn);
    return total;
}

/* Measure the map and the disk as of the last commit. Room on the disk is
 * what the file system has free plus what data.mdb has free inside it
 * (pages on LMDB's free list, and pages written once but past the last one
 * in use): LMDB never shrinks its file, so a drained store has its room
 * inside the file, not on the file system. */
static void measure_room(store *s)
{
    MDB_envinfo info;
    MDB_stat st;
    mdb_env_info(s->env, &info);
    mdb_env_stat(s->env, &st);
    uint64_t page = st.ms_psize;
    uint64_t pages = (uint64_t)info.me_last_pgno + 1;
    uint64_t freep = free_pages(s);
    uint64_t used = pages > freep ? pages - freep : 0;
    s->used_bytes = used * page;
    s->map_bytes = info.me_mapsize;
    s->reserved_bytes = 0;
    s->is_room_measured = true;
    char path[600];
    struct stat fst;
    snprintf(path, sizeof path, "%s/data.mdb", s->dir);
    uint64_t avail = disk_free(s->dir);
    s->has_disk_measure = avail != UINT64_MAX && stat(path, &fst) == 0;
    if (!s->has_disk_measure)
        return;
    uint64_t file_pages = (uint64_t)fst.st_size / page;
    uint64_t tail = file_pages > pages ? file_pages - pages : 0;
    s->disk_free_bytes = avail;
    s->file_free_bytes = (freep + tail) * page;
}

bool store_reserve(store *s, size_t bytes, bool is_receipt, char *why, size_t why_len)
{
    if (!s->is_room_measured)
        measure_room(s);
    /* Indexes, the record, and pages copied on write: count twice the body
     * plus a page. */
    uint64_t need = 2 * (uint64_t)bytes + 4096;
    uint64_t limit = s->map_bytes / 100 * s->high_water_percent;
    if (is_receipt)
        limit += (s->map_bytes - limit) / 2;
    if (s->used_bytes + s->reserved_bytes + need > limit) {
        snprintf(why, why_len, "store is %llu%% full (high-water mark %u%% of %llu bytes)",
                 (unsigned long long)((s->used_bytes + s->reserved_bytes) * 100 / s->map_bytes),
                 s->high_water_percent, (unsigned long long)s->map_bytes);
        return false;
    }
    if (s->min_free_disk_bytes > 0) {
        /* Receipts may use half of the guard, settles and notices (not
         * reserved here) the rest: acknowledgements flow while referrals
         * are refused. */
        uint64_t floor = is_receipt ? s->min_free_disk_bytes / 2 : s->min_free_disk_bytes;
        uint64_t room = s->has_disk_measure ? s->disk_free_bytes + s->file_free_bytes : 0;
        if (room < floor || room - floor < s->reserved_bytes + need) {
            if (s->has_disk_measure)
                snprintf(why, why_len, "disk low: the store's disk has %llu bytes of room "
                         "(%llu free on the file system, %llu free inside data.mdb, %llu "
                         "reserved this turn), below min_free_disk_bytes %llu",
                         (unsigned long long)room, (unsigned long long)s->disk_free_bytes,
                         (unsigned long long)s->file_free_bytes,
                         (unsigned long long)s->reserved_bytes,
                         (unsigned long long)s->min_free_disk_bytes);
            else
                snprintf(why, why_len, "disk low: free space of the store's disk cannot be "
                         "measured (statvfs or stat of %s failed)", s->dir);
            return false;
        }
    }
    s->reserved_bytes += need;
    return true;
}

void store_usage(store *s, uint64_t *used_bytes, uint64_t *map_bytes)
{
    uint64_t reserved = s->reserved_bytes;
    measure_room(s);
    s->reserved_bytes = reserved;   /* keep this turn's reservations */
    *used_bytes = s->used_bytes;
    *map_bytes = s->map_bytes;
}
