/*
 * store: the LMDB environment and its records (store.h).
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

#include "log.h"

#define RECORD_MAGIC 0x31464d52u   /* "RMF1": record format 1 */
#define STORE_FORMAT "1"
#define MARKER_NAME "STORE"

static const char *const db_names[STORE_DB_COUNT] = {
    "meta", "msgs", "bodies", "queue", "inflight", "dedup", "deadlines", "quarantine", "trace",
    "referrals", "levels",
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

static store_err meta_get(store *s, MDB_txn *txn, const char *key, MDB_val *v)
{
    MDB_val k = {.mv_size = strlen(key), .mv_data = (void *)(uintptr_t)key};
    return store_err_from_mdb(mdb_get(txn, s->dbi[STORE_DB_META], &k, v));
}

static store_err meta_put(store *s, MDB_txn *txn, const char *key, const void *data, size_t len)
{
    MDB_val k = {.mv_size = strlen(key), .mv_data = (void *)(uintptr_t)key};
    MDB_val v = {.mv_size = len, .mv_data = (void *)(uintptr_t)data};
    return store_err_from_mdb(mdb_put(txn, s->dbi[STORE_DB_META], &k, &v, 0));
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
    return store_err_from_mdb(mdb_put(txn, s->dbi[STORE_DB_REFERRALS], &k, &v, 0));
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
    return store_err_from_mdb(mdb_put(txn, s->dbi[STORE_DB_LEVELS], &k, &v, 0));
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

/* Open the named databases; create them and the meta keys for a new store,
 * or check format and owner of an existing one. */
static store_err open_dbs(store *s, bool is_new, const char *broker_id, char *why,
                          size_t why_len)
{
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
        if (meta_get(s, txn, "format", &v) != STORE_OK || v.mv_size != strlen(STORE_FORMAT) ||
            memcmp(v.mv_data, STORE_FORMAT, v.mv_size) != 0) {
            snprintf(why, why_len, "store %s is not of format %s; refusing to open it", s->dir,
                     STORE_FORMAT);
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
    int rc = mdb_txn_commit(txn);
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
    if (v.mv_size != sizeof *value)
        return STORE_CORRUPT;
    memcpy(value, v.mv_data, sizeof *value);
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
    return meta_put(s, txn, key, &value, sizeof value);
}

store_err store_next_seq(store *s, MDB_txn *txn, uint64_t *seq)
{
    MDB_val v;
    uint64_t next = 1;
    store_err e = meta_get(s, txn, "seq", &v);
    if (e == STORE_OK && v.mv_size == sizeof next)
        memcpy(&next, v.mv_data, sizeof next);
    else if (e != STORE_NOT_FOUND && e != STORE_OK)
        return e;
    *seq = next;
    next++;
    return meta_put(s, txn, "seq", &next, sizeof next);
}

/* ---- message records ------------------------------------------------------ */

#define BODY_HEAD (sizeof(uint32_t) + DIGEST_BYTES)

static MDB_val id_val(const uint8_t id[IDS_BYTES])
{
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)id};
    return k;
}

store_err store_msg_put(store *s, MDB_txn *txn, const store_msg *m)
{
    uint8_t rec[sizeof(uint32_t) + sizeof *m];
    uint32_t magic = RECORD_MAGIC;
    memcpy(rec, &magic, sizeof magic);
    memcpy(rec + sizeof magic, m, sizeof *m);
    MDB_val k = id_val(m->id), v = {.mv_size = sizeof rec, .mv_data = rec};
    return store_err_from_mdb(mdb_put(txn, s->dbi[STORE_DB_MSGS], &k, &v, 0));
}

store_err store_msg_get(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES], store_msg *m)
{
    MDB_val k = id_val(id), v;
    int rc = mdb_get(txn, s->dbi[STORE_DB_MSGS], &k, &v);
    if (rc != 0)
        return store_err_from_mdb(rc);
    uint32_t magic;
    if (v.mv_size != sizeof magic + sizeof *m)
        return STORE_CORRUPT;
    memcpy(&magic, v.mv_data, sizeof magic);
    if (magic != RECORD_MAGIC)
        return STORE_CORRUPT;
    memcpy(m, (const uint8_t *)v.mv_data + sizeof magic, sizeof *m);
    m->recipient[IDS_NAME_MAX] = '\0';
    m->sender[IDS_NAME_MAX] = '\0';
    return STORE_OK;
}

store_err store_msg_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    MDB_val k = id_val(id);
    return store_err_from_mdb(mdb_del(txn, s->dbi[STORE_DB_MSGS], &k, NULL));
}

store_err store_body_put(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                         const uint8_t *payload, size_t len)
{
    MDB_val k = id_val(id), v = {.mv_size = BODY_HEAD + len, .mv_data = NULL};
    uint8_t digest[DIGEST_BYTES];
    if (!digest_sha256(payload, len, digest))
        return STORE_FAILED;
    int rc = mdb_put(txn, s->dbi[STORE_DB_BODIES], &k, &v, MDB_RESERVE);
    if (rc != 0)
        return store_err_from_mdb(rc);
    uint8_t *p = v.mv_data;
    uint32_t magic = RECORD_MAGIC;
    memcpy(p, &magic, sizeof magic);
    memcpy(p + sizeof magic, digest, DIGEST_BYTES);
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
    if (v.mv_size < BODY_HEAD)
        return STORE_CORRUPT;
    const uint8_t *p = v.mv_data;
    uint32_t magic;
    memcpy(&magic, p, sizeof magic);
    if (magic != RECORD_MAGIC)
        return STORE_CORRUPT;
    uint8_t digest[DIGEST_BYTES];
    if (!digest_sha256(p + BODY_HEAD, v.mv_size - BODY_HEAD, digest))
        return STORE_FAILED;
    if (memcmp(digest, p + sizeof magic, DIGEST_BYTES) != 0)
        return STORE_CORRUPT;
    *payload = p + BODY_HEAD;
    *len = v.mv_size - BODY_HEAD;
    return STORE_OK;
}

store_err store_body_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    MDB_val k = id_val(id);
    return store_err_from_mdb(mdb_del(txn, s->dbi[STORE_DB_BODIES], &k, NULL));
}

store_err store_quarantine(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    MDB_val k = id_val(id), v;
    int rc = mdb_get(txn, s->dbi[STORE_DB_BODIES], &k, &v);
    if (rc != 0)
        return store_err_from_mdb(rc);
    rc = mdb_put(txn, s->dbi[STORE_DB_QUARANTINE], &k, &v, 0);
    if (rc != 0)
        return store_err_from_mdb(rc);
    return store_err_from_mdb(mdb_del(txn, s->dbi[STORE_DB_BODIES], &k, NULL));
}

/* ---- dedup ---------------------------------------------------------------- */

store_err store_dedup_put(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                          const uint8_t digest[DIGEST_BYTES], uint64_t forget_at_ms)
{
    uint8_t val[DIGEST_BYTES + sizeof forget_at_ms];
    memcpy(val, digest, DIGEST_BYTES);
    memcpy(val + DIGEST_BYTES, &forget_at_ms, sizeof forget_at_ms);
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)id};
    MDB_val v = {.mv_size = sizeof val, .mv_data = val};
    return store_err_from_mdb(mdb_put(txn, s->dbi[STORE_DB_DEDUP], &k, &v, 0));
}

store_err store_dedup_get(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES],
                          uint8_t digest[DIGEST_BYTES])
{
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)id}, v;
    int rc = mdb_get(txn, s->dbi[STORE_DB_DEDUP], &k, &v);
    if (rc != 0)
        return store_err_from_mdb(rc);
    if (v.mv_size != DIGEST_BYTES + sizeof(uint64_t))
        return STORE_CORRUPT;
    memcpy(digest, v.mv_data, DIGEST_BYTES);
    return STORE_OK;
}

store_err store_dedup_del(store *s, MDB_txn *txn, const uint8_t id[IDS_BYTES])
{
    MDB_val k = {.mv_size = IDS_BYTES, .mv_data = (void *)(uintptr_t)id};
    return store_err_from_mdb(mdb_del(txn, s->dbi[STORE_DB_DEDUP], &k, NULL));
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
    return store_err_from_mdb(mdb_put(txn, s->dbi[STORE_DB_TRACE], &k, &v, 0));
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
