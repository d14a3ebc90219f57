/*
 * state: libreferral's outbox and received ids in LMDB (state.h). Default
 * full sync; never NOSYNC or WRITEMAP, for the same reasons as the broker.
 */
#include "state.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "referral.h"

struct state {
    MDB_env *env;
    MDB_dbi outbox, seen;
};

void state_destroy(state **sp)
{
    if (sp == NULL || *sp == NULL)
        return;
    if ((*sp)->env != NULL)
        mdb_env_close((*sp)->env);
    free(*sp);
    *sp = NULL;
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
        rc = mdb_env_set_maxdbs(s->env, 4);
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
        rc = mdb_dbi_open(txn, "seen", MDB_CREATE, &s->seen);
    if (rc == 0) {
        rc = mdb_txn_commit(txn);
        txn = NULL;
    }
    if (txn != NULL)
        mdb_txn_abort(txn);
    if (rc != 0) {
        snprintf(why, why_len, "cannot open state directory %s: %s", dir, mdb_strerror(rc));
        state_destroy(&s);
        return REF_E_STATE;
    }
    *out = s;
    return REF_OK;
}

static int put(state *s, MDB_dbi dbi, const uint8_t id[16], const void *data, size_t len)
{
    MDB_txn *txn;
    MDB_val k = {16, (void *)(uintptr_t)id}, v = {len, (void *)(uintptr_t)data};
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc != 0)
        return REF_E_STATE;
    rc = mdb_put(txn, dbi, &k, &v, 0);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return REF_E_STATE;
    }
    return mdb_txn_commit(txn) == 0 ? REF_OK : REF_E_STATE;
}

int state_outbox_put(state *s, const uint8_t id[16], const uint8_t *env, size_t len)
{
    return put(s, s->outbox, id, env, len);
}

int state_outbox_del(state *s, const uint8_t id[16])
{
    MDB_txn *txn;
    MDB_val k = {16, (void *)(uintptr_t)id};
    if (mdb_txn_begin(s->env, NULL, 0, &txn) != 0)
        return REF_E_STATE;
    int rc = mdb_del(txn, s->outbox, &k, NULL);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return REF_E_STATE;
    }
    return mdb_txn_commit(txn) == 0 ? REF_OK : REF_E_STATE;
}

int state_outbox_each(state *s, state_outbox_fn fn, void *ctx)
{
    MDB_txn *txn;
    MDB_cursor *c;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
        return REF_E_STATE;
    if (mdb_cursor_open(txn, s->outbox, &c) != 0) {
        mdb_txn_abort(txn);
        return REF_E_STATE;
    }
    MDB_val k, v;
    while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0)
        if (k.mv_size == 16)
            fn(k.mv_data, v.mv_data, v.mv_size, ctx);
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return REF_OK;
}

size_t state_outbox_count(state *s)
{
    MDB_txn *txn;
    MDB_stat st;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
        return 0;
    size_t n = mdb_stat(txn, s->outbox, &st) == 0 ? st.ms_entries : 0;
    mdb_txn_abort(txn);
    return n;
}

int state_seen_get(state *s, const uint8_t id[16], state_seen *seen)
{
    MDB_txn *txn;
    MDB_val k = {16, (void *)(uintptr_t)id}, v;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
        return REF_E_STATE;
    int rc = mdb_get(txn, s->seen, &k, &v);
    bool found = rc == 0 && v.mv_size == sizeof *seen;
    if (found)
        memcpy(seen, v.mv_data, sizeof *seen);
    mdb_txn_abort(txn);
    return found ? REF_OK : REF_E_AGAIN;
}

int state_seen_put(state *s, const uint8_t id[16], const state_seen *seen)
{
    return put(s, s->seen, id, seen, sizeof *seen);
}

size_t state_seen_prune(state *s, uint64_t now_ms)
{
    MDB_txn *txn;
    MDB_cursor *c;
    size_t n = 0;
    if (mdb_txn_begin(s->env, NULL, 0, &txn) != 0)
        return 0;
    if (mdb_cursor_open(txn, s->seen, &c) == 0) {
        MDB_val k, v;
        while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
            state_seen e;
            if (v.mv_size != sizeof e)
                continue;
            memcpy(&e, v.mv_data, sizeof e);
            if (e.forget_at_ms < now_ms && mdb_cursor_del(c, 0) == 0)
                n++;
        }
        mdb_cursor_close(c);
    }
    if (mdb_txn_commit(txn) != 0)
        return 0;
    return n;
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
    return *env != NULL ? REF_OK : REF_E_NO_MEMORY;
}
