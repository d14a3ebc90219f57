/*
 * trust: the broker's directory, loaded at start and on SIGHUP.
 *
 * The highest directory version a store has used is kept in its meta
 * database with the digest of that directory's content, so neither a
 * reload nor a restart can go back to an older directory (which might list
 * a key that was revoked since), nor load another directory under the same
 * version (one without the revocation, say). After a
 * reload, sessions whose CURVE key is no longer admitted are closed at
 * once; their next frames are refused by the per-message check in loop.c.
 */
#include "broker.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "zap.h"

bool broker_load_directory(broker *b, store_err *fault, char *why, size_t why_len)
{
    MDB_txn *txn;
    *fault = store_begin(b->st, &txn);
    if (*fault != STORE_OK) {
        snprintf(why, why_len, "cannot begin a transaction to check the directory version: %s",
                 store_strerror(*fault));
        return false;
    }
    uint64_t min_version = 0;
    store_err e = store_meta_get_u64(b->st, txn, "directory_version", &min_version);
    if (e != STORE_OK && e != STORE_NOT_FOUND) {
        mdb_txn_abort(txn);
        *fault = e;
        snprintf(why, why_len, "cannot read the directory version from the store: %s",
                 store_strerror(e));
        return false;
    }
    directory *d = NULL;
    if (directory_load(b->cfg.directory, b->trust_root, min_version, clock_now_ms(), &d, why,
                       why_len) != DIRECTORY_OK) {
        mdb_txn_abort(txn);
        return false;
    }
    const Referral__V1__DirectoryBroker *me = directory_broker(d, b->cfg.id);
    if (me == NULL || memcmp(me->curve_public.data, b->keys.curve_public, 32) != 0 ||
        memcmp(me->sign_public.data, b->keys.sign_public, 32) != 0) {
        snprintf(why, why_len, "directory %s %s broker %s; add this broker's %s/%s.pub.json to "
                 "the directory source and sign it again", b->cfg.directory,
                 me == NULL ? "does not list" : "has other keys for", b->cfg.id, b->cfg.key_dir,
                 b->cfg.id);
        directory_destroy(&d);
        mdb_txn_abort(txn);
        return false;
    }
    uint64_t version = directory_get(d)->version;
    uint8_t digest[32], known[32];
    size_t known_len = sizeof known;
    directory_digest(d, digest);
    e = store_meta_get_bytes(b->st, txn, "directory_digest", known, &known_len);
    if (e != STORE_OK && e != STORE_NOT_FOUND && e != STORE_CORRUPT) {
        mdb_txn_abort(txn);
        *fault = e;
        directory_destroy(&d);
        snprintf(why, why_len, "cannot read the directory digest from the store: %s",
                 store_strerror(e));
        return false;
    }
    if (e == STORE_OK && version == min_version &&
        (known_len != sizeof known || memcmp(known, digest, sizeof digest) != 0)) {
        char hex[65];
        snprintf(why, why_len, "directory %s has version %" PRIu64 ", which this broker already "
                 "used for a directory with other content (digest %s...); a changed directory "
                 "needs a higher version: sign it again with a version above %" PRIu64,
                 b->cfg.directory, version, ids_hex(digest, 8, hex), version);
        directory_destroy(&d);
        mdb_txn_abort(txn);
        return false;
    }
    e = store_meta_put_bytes(b->st, txn, "directory_digest", digest, sizeof digest);
    if (e == STORE_OK)
        e = store_meta_put_u64(b->st, txn, "directory_version", version);
    if (e != STORE_OK) {
        mdb_txn_abort(txn);
        snprintf(why, why_len, "cannot record the directory version in the store: %s",
                 store_strerror(e));
        *fault = e;
        directory_destroy(&d);
        return false;
    }
    /* A failed commit is the store's failure, never a refused directory:
     * the caller exits and the restart recovers. */
    *fault = store_commit(b->st, txn, why, why_len);
    if (*fault != STORE_OK) {
        directory_destroy(&d);
        return false;
    }
    directory_destroy(&b->dir);
    b->dir = d;
    log_info("trust", "directory loaded version=%" PRIu64 " agencies=%zu brokers=%zu", version,
             directory_get(d)->n_agencies, directory_get(d)->n_brokers);
    for (size_t i = 0; i < b->sessions.cap; i++) {
        session *s = &b->sessions.items[i];
        if (s->is_used && !zap_is_still_valid(d, s->agency, s->key_id)) {
            log_warn("trust", "closed session: key revoked or replaced agency=%s", s->agency);
            session_close(&b->sessions, s);
        }
    }
    return true;
}
