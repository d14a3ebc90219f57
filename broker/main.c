/*
 * referrald: one region's referral broker. main() reads the configuration,
 * opens the store and the client socket, returns in-flight deliveries to
 * their queues, runs the loop, and closes everything on SIGTERM or SIGINT
 * after the turn in progress has committed.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <zmq.h>

#include "broker.h"
#include "clock.h"
#include "log.h"
#include "loop.h"
#include "ref_version.h"
#include "zap.h"

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t reload_requested;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        reload_requested = 1;
    else
        stop_requested = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: referrald --config FILE\n"
        "       referrald --check-config FILE\n"
        "\n"
        "The referral broker of one region: stores signed case referrals durably,\n"
        "delivers them to agency clients in order of urgency, redelivers what is\n"
        "not acknowledged, and reports what cannot be delivered.\n"
        "\n"
        "Options:\n"
        "  -c, --config FILE        run with this configuration (INI; every key is\n"
        "                           documented in etc/referrald.example.ini)\n"
        "      --check-config FILE  read and check the configuration, then exit\n"
        "  -h, --help               show this help\n"
        "  -V, --version            show the version\n"
        "\n"
        "Signals: SIGTERM and SIGINT finish the current commit, close the store\n"
        "cleanly and exit 0. SIGHUP loads the directory file again (an older or\n"
        "invalid one is refused and the current one kept); sessions whose key it\n"
        "revokes or replaces are closed.\n"
        "\n"
        "Exit status:\n"
        "  0  stopped on request\n"
        "  2  bad arguments or configuration\n"
        "  3  the store cannot be opened, or a commit failed (restart recovers)\n"
        "  4  the transport cannot start (bind failed, libzmq without CURVE)\n"
        "  5  keys or the directory are missing, invalid, older or expired\n"
        "\n"
        "Logs: one line per event on stderr: time, level, component, message,\n"
        "key=value pairs with the ids involved.\n");
}

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

static void broker_close(broker *b)
{
    link_free(&b->clients);   /* its deliveries go to lost, freed next */
    free(b->lost);
    if (b->router != NULL)
        zmq_close(b->router);
    if (b->zap != NULL)
        zmq_close(b->zap);
    directory_destroy(&b->dir);
    keys_wipe(&b->keys);
    if (b->zctx != NULL)
        zmq_ctx_term(b->zctx);
    store_destroy(&b->st);
    session_table_free(&b->sessions);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", required_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    bool is_check_only = false;
    int c;
    while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'c': path = optarg; break;
        case 'C': path = optarg; is_check_only = true; break;
        case 'h': usage(stdout); return BROKER_EXIT_OK;
        case 'V': printf("referrald %s (protocol version 1)\n", REF_VERSION); return 0;
        default: usage(stderr); return BROKER_EXIT_USAGE;
        }
    }
    if (path == NULL || optind != argc) {
        fprintf(stderr, "referrald: %s\n\n", path == NULL ? "--config FILE is required"
                                                          : "unexpected argument");
        usage(stderr);
        return BROKER_EXIT_USAGE;
    }
    broker b;
    memset(&b, 0, sizeof b);
    char err[512];
    if (!config_load(path, &b.cfg, err, sizeof err)) {
        fprintf(stderr, "referrald: %s\n", err);
        return BROKER_EXIT_USAGE;
    }
    if (is_check_only) {
        printf("configuration %s is valid (broker %s)\n", path, b.cfg.id);
        return BROKER_EXIT_OK;
    }
    log_set_level(b.cfg.log_level);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    b.limits = wire_default_limits;
    b.limits.max_frame_bytes = b.cfg.max_frame_bytes;
    b.limits.max_body_bytes = b.cfg.max_body_bytes;
    b.limits.budget_bytes = 8u * b.cfg.max_frame_bytes;
    b.stop = &stop_requested;
    b.reload = &reload_requested;

    store_options so = {
        .dir = b.cfg.data_dir,
        .broker_id = b.cfg.id,
        .map_size_bytes = b.cfg.map_size_bytes,
        .high_water_percent = b.cfg.high_water_percent,
        .min_free_disk_bytes = b.cfg.min_free_disk_bytes,
    };
    int rc = BROKER_EXIT_OK;
    if (store_open(&so, &b.st, err, sizeof err) != STORE_OK) {
        log_error("main", "%s", err);
        rc = BROKER_EXIT_STORE;
    }
    b.dc = (delivery_ctx){
        .st = b.st,
        .broker_id = b.cfg.id,
        .ack_timeout_ms = b.cfg.ack_timeout_ms,
        .max_nak_delay_ms = b.cfg.max_nak_delay_ms,
        .clock_skew_ms = b.cfg.clock_skew_ms,
        .notice_ttl_ms = b.cfg.notice_ttl_ms,
        .sign_secret = b.keys.sign_secret,
        .sign_public = b.keys.sign_public,
    };
    if (rc == BROKER_EXIT_OK && !session_table_init(&b.sessions, b.cfg.max_sessions)) {
        log_error("main", "out of memory for %u sessions", b.cfg.max_sessions);
        rc = BROKER_EXIT_USAGE;
    }
    if (rc == BROKER_EXIT_OK)
        rc = load_trust(&b);
    if (rc == BROKER_EXIT_OK)
        rc = recover(&b);
    if (rc == BROKER_EXIT_OK)
        rc = open_socket(&b);
    if (rc == BROKER_EXIT_OK) {
        log_info("main", "started broker=%s listen=%s store=%s version=%s", b.cfg.id,
                 b.cfg.listen, b.cfg.data_dir, REF_VERSION);
        rc = loop_run(&b);
    }
    broker_close(&b);
    log_info("main", "stopped broker=%s status=%d", b.cfg.id, rc);
    return rc;
}
