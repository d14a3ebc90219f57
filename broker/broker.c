/*
 * broker: start and stop one broker (broker.h): everything between a
 * checked configuration and a running loop, in the order safety needs:
 * the store, the sessions, this broker's keys and the signed directory,
 * in-flight deliveries returned to their queues, then the ZAP handler and
 * only after it the CURVE ROUTER socket.
 *
 * referrald's main() calls these around loop_run(); unit tests call them
 * to run a whole broker inside the test process (test/unit/test_loop.c).
 * This file must never bind a CURVE socket before the ZAP handler, nor
 * start with a directory or keys it could not check.
 */
#include "broker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <zmq.h>

#include "clock.h"
#include "log.h"
#include "retention.h"
#include "zap.h"

/* The flags stop and reload point at until the caller points them at its
 * own (referrald: its signal flags). */
static volatile sig_atomic_t never_stop, never_reload;

static int open_socket(broker *b)
{
    if (!zmq_has("curve")) {
        log_error("main", "libzmq lacks CURVE support; refusing to start (install a libzmq "
                  "built with libsodium, e.g. Debian's libzmq5)");
        return BROKER_EXIT_TRANSPORT;
    }
    /* libzmq numbers the ROUTER's routing ids from rand(), which nobody
     * seeds: unseeded, every broker hands out the same, guessable ids. */
    unsigned seed = 0;
    if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        log_error("main", "cannot read random bytes for routing ids err=%s", strerror(errno));
        return BROKER_EXIT_TRANSPORT;
    }
    srand(seed);
    b->zctx = zmq_ctx_new();
    /* The ZAP handler first: a CURVE socket without one admits anyone who
     * knows the server key. */
    b->zap = b->zctx != NULL ? zap_open(b->zctx) : NULL;
    if (b->zap == NULL) {
        log_error("main", "cannot bind the ZAP handler err=%s", zmq_strerror(errno));
        return BROKER_EXIT_TRANSPORT;
    }
    b->router = zmq_socket(b->zctx, ZMQ_ROUTER);
    if (b->router == NULL) {
        log_error("main", "cannot create socket err=%s", zmq_strerror(errno));
        return BROKER_EXIT_TRANSPORT;
    }
    int one = 1, linger_ms = 2000, handshake_ms = 5000;
    /* Frames up to twice the limit are read and answered TOO_LARGE; bigger
     * ones make libzmq drop the connection before we allocate them. */
    int64_t hard_max = 2 * (int64_t)b->cfg.max_frame_bytes;
    /* Deliveries are bounded by credit, replies by what a client sends: a
     * pipe deep enough for a full window plus a turn's replies never fills
     * for a client that reads. One that does not read is handled in flush. */
    int hwm = (int)(2 * b->cfg.max_credit + 2 * b->cfg.max_batch + 1000);
    if (zmq_setsockopt(b->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0 ||
        zmq_setsockopt(b->router, ZMQ_LINGER, &linger_ms, sizeof linger_ms) != 0 ||
        zmq_setsockopt(b->router, ZMQ_HANDSHAKE_IVL, &handshake_ms, sizeof handshake_ms) != 0 ||
        zmq_setsockopt(b->router, ZMQ_MAXMSGSIZE, &hard_max, sizeof hard_max) != 0 ||
        zmq_setsockopt(b->router, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(b->router, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(b->router, ZMQ_CURVE_SECRETKEY, b->keys.curve_secret, 32) != 0 ||
        zmq_setsockopt(b->router, ZMQ_ZAP_DOMAIN, "referral", 8) != 0) {
        log_error("main", "cannot set socket options err=%s", zmq_strerror(errno));
        return BROKER_EXIT_TRANSPORT;
    }
    if (zmq_bind(b->router, b->cfg.listen) != 0) {
        log_error("main", "cannot listen endpoint=%s err=%s", b->cfg.listen, zmq_strerror(errno));
        return BROKER_EXIT_TRANSPORT;
    }
    return BROKER_EXIT_OK;
}

static int load_trust(broker *b)
{
    char why[700];
    if (!keys_parse_sign_public(b->cfg.trust_root, b->trust_root, why, sizeof why)) {
        log_error("trust", "[trust] trust_root: %s", why);
        return BROKER_EXIT_TRUST;
    }
    if (!keys_load(b->cfg.key_dir, b->cfg.id, &b->keys, why, sizeof why)) {
        log_error("trust", "cannot load this broker's keys: %s (create them with referralctl "
                  "keygen --id %s --dir %s)", why, b->cfg.id, b->cfg.key_dir);
        return BROKER_EXIT_TRUST;
    }
    store_err fault;
    if (!broker_load_directory(b, &fault, why, sizeof why)) {
        if (fault != STORE_OK) {
            log_error("store", "store failed at start (recording the directory version): "
                      "%s; exiting", why);
            return BROKER_EXIT_STORE;
        }
        log_error("trust", "%s", why);
        return BROKER_EXIT_TRUST;
    }
    return BROKER_EXIT_OK;
}

/* Every delivery in flight when the broker stopped goes back to its queue
 * (its connection is gone with the process). */
static int recover(broker *b)
{
    MDB_txn *txn;
    size_t n = 0;
    char why[700];
    store_err e = store_begin(b->st, &txn);
    if (e == STORE_OK) {
        e = delivery_return_all(&b->dc, txn, clock_now_ms(), &n);
        if (e != STORE_OK) {
            mdb_txn_abort(txn);
        } else if (store_commit(b->st, txn, why, sizeof why) != STORE_OK) {
            log_error("store", "commit failed at start (returning in-flight deliveries to "
                      "their queues): %s; exiting", why);
            return BROKER_EXIT_STORE;
        }
    }
    if (e != STORE_OK) {
        log_error("store", "cannot return in-flight deliveries at start err=%s; exiting",
                  store_strerror(e));
        return BROKER_EXIT_STORE;
    }
    if (n > 0)
        log_info("main", "returned in-flight deliveries to their queues count=%zu", n);
    return BROKER_EXIT_OK;
}

int broker_open(broker *b, const config *cfg)
{
    memset(b, 0, sizeof *b);
    b->cfg = *cfg;
    b->limits = wire_default_limits;
    b->limits.max_frame_bytes = b->cfg.max_frame_bytes;
    b->limits.max_body_bytes = b->cfg.max_body_bytes;
    b->limits.budget_bytes = 8u * b->cfg.max_frame_bytes;
    b->stop = &never_stop;
    b->reload = &never_reload;

    store_options so = {
        .dir = b->cfg.data_dir,
        .broker_id = b->cfg.id,
        .map_size_bytes = b->cfg.map_size_bytes,
        .high_water_percent = b->cfg.high_water_percent,
        .min_free_disk_bytes = b->cfg.min_free_disk_bytes,
    };
    char err[512];
    int rc = BROKER_EXIT_OK;
    if (store_open(&so, &b->st, err, sizeof err) != STORE_OK) {
        log_error("main", "%s", err);
        rc = BROKER_EXIT_STORE;
    }
    b->dc = (delivery_ctx){
        .st = b->st,
        .broker_id = b->cfg.id,
        .ack_timeout_ms = b->cfg.ack_timeout_ms,
        .max_nak_delay_ms = b->cfg.max_nak_delay_ms,
        .clock_skew_ms = b->cfg.clock_skew_ms,
        .notice_ttl_ms = b->cfg.notice_ttl_ms,
        .body_grace_ms = b->cfg.body_grace_ms,
        .sign_secret = b->keys.sign_secret,
        .sign_public = b->keys.sign_public,
        .on_final = escalate_on_final,
        .keep_body = escalate_keep_body,
        .on_final_ctx = &b->ec,
    };
    b->ec = (escalate_ctx){
        .st = b->st,
        .dc = &b->dc,
        .policies = &b->cfg.policies,
        .dir = &b->dir,
        .broker_id = b->cfg.id,
    };
    const retention_options ro = {
        .keep_ms = b->cfg.keep_ms,
        .body_grace_ms = b->cfg.body_grace_ms,
        .clock_skew_ms = b->cfg.clock_skew_ms,
        .max_per_turn = b->cfg.retention_max_per_turn,
        .interval_ms = b->cfg.sweep_interval_ms,
    };
    if (rc == BROKER_EXIT_OK && (b->retention = retention_new(&ro)) == NULL) {
        log_error("main", "out of memory for the retention sweep");
        rc = BROKER_EXIT_USAGE;
    }
    if (rc == BROKER_EXIT_OK && !session_table_init(&b->sessions, b->cfg.max_sessions)) {
        log_error("main", "out of memory for %u sessions", b->cfg.max_sessions);
        rc = BROKER_EXIT_USAGE;
    }
    if (rc == BROKER_EXIT_OK)
        rc = load_trust(b);
    if (rc == BROKER_EXIT_OK)
        rc = recover(b);
    if (rc == BROKER_EXIT_OK)
        rc = open_socket(b);
    return rc;
}

void broker_close(broker *b)
{
    link_free(&b->clients);   /* its deliveries go to lost, freed next */
    free(b->lost);
    b->lost = NULL;
    b->n_lost = b->cap_lost = 0;
    if (b->router != NULL)
        zmq_close(b->router);
    b->router = NULL;
    if (b->zap != NULL)
        zmq_close(b->zap);
    b->zap = NULL;
    directory_destroy(&b->dir);
    keys_wipe(&b->keys);
    if (b->zctx != NULL)
        zmq_ctx_term(b->zctx);
    b->zctx = NULL;
    store_destroy(&b->st);
    session_table_free(&b->sessions);
    retention_destroy(&b->retention);
}
