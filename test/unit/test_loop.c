/*
 * Unit tests of the broker's loop through its seams, with a whole broker
 * in the test process (broker_open, loop_open, loop_turn: no thread, no
 * child process):
 *
 *   - the clock seam: one test clock (clock_source) drives wall and
 *     monotonic time, so deadlines and idle sessions move without sleeping;
 *   - the store seam: store_set_fault() fails a commit, a put or an fsync
 *     on demand;
 *   - the transport: a CURVE DEALER in the test talks to the broker's
 *     ROUTER on an ipc:// endpoint in a temporary directory, with keys and
 *     a directory signed by referralctl, as test/integration/harness.py
 *     makes them, and envelopes signed by libreferral's own composer
 *     (client-lib/envelope.c).
 *
 * No test sleeps: the test waits only in zmq_poll on its own socket, and
 * loop_turn() waits only in zmq_poll for the broker's. Each wait is
 * bounded, so a broken broker fails the test instead of hanging it.
 *
 * Argument: the path of referralctl (meson passes the built one).
 */
#define _XOPEN_SOURCE 700   /* nftw */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* Not <unistd.h>: its link() would clash with the link type of broker/link.h. */
extern char **environ;
#include <time.h>

#include <zmq.h>

#include "broker.h"
#include "clock.h"
#include "envelope.h"
#include "keys.h"
#include "log.h"
#include "loop.h"
#include "referral.h"
#include "wire.h"

#define R(x) REFERRAL__V1__RESULT_CODE__RESULT_##x
#define BROKER_ID "broker.test"
#define DESK "sh.12355.desk"
#define YOUTH "qd.youth-league"
#define MINUTE_MS 60000u
#define MAX_TURNS 200          /* bounds every wait for the broker */
#define FRAME_WAIT_MS 20       /* a frame flushed by a turn is on its way */

/* ---- the trust fixture: keys and a signed directory, made once --------- */

static const char *referralctl;
static char trust_dir[512];
static clock_source test_clock;

static void path_in(char *out, size_t len, const char *dir, const char *name)
{
    int n = snprintf(out, len, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < len);
}

/* Run referralctl with args (NULL-terminated); assert it exits 0. */
static void run_referralctl(const char *const *args)
{
    char *argv[16];
    size_t n = 0;
    argv[n++] = (char *)(uintptr_t)referralctl;
    for (; args[n - 1] != NULL && n < 15; n++)
        argv[n] = (char *)(uintptr_t)args[n - 1];
    argv[n] = NULL;
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, referralctl, NULL, NULL, argv, environ), 0);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* As harness.py's Trust: keys for the root, the broker and two agencies,
 * and a directory signed by the root listing them (the same source
 * layout, signed by the same tool). */
static int make_trust(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(trust_dir, sizeof trust_dir, "%s/referral-loop-XXXXXX", tmp != NULL ? tmp : "/tmp");
    if (mkdtemp(trust_dir) == NULL)
        return -1;
    char keydir[600], src[600], out[600], root_key[700];
    path_in(keydir, sizeof keydir, trust_dir, "keys");
    if (mkdir(keydir, 0700) != 0)
        return -1;
    static const char *const ids[] = {"root", BROKER_ID, DESK, YOUTH};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        keys_identity k;
        char why[300];
        bool is_made = keys_generate(keydir, ids[i], false, &k, why, sizeof why);
        keys_wipe(&k);
        if (!is_made) {
            fprintf(stderr, "keys_generate %s: %s\n", ids[i], why);
            return -1;
        }
    }
    path_in(src, sizeof src, trust_dir, "directory.json");
    FILE *f = fopen(src, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "{\"version\": 1, \"valid_days\": 30, \"agencies\": [");
    static const char *const agencies[] = {DESK, YOUTH};
    for (size_t i = 0; i < 2; i++)
        fprintf(f, "%s{\"id\": \"%s\", \"kind\": \"%s\", \"region\": \"qingdao\", "
                "\"home_broker\": \"%s\", \"keys\": \"keys/%s.pub.json\", "
                "\"emergency_contacts\": [{\"label\": \"police\", \"phone\": \"110\"}]}",
                i ? ", " : "", agencies[i], i == 0 ? "hotline_desk" : "other", BROKER_ID,
                agencies[i]);
    fprintf(f, "], \"brokers\": [{\"id\": \"%s\", \"endpoint\": \"tcp://127.0.0.1:0\", "
            "\"keys\": \"keys/%s.pub.json\"}], \"revoked_key_ids\": []}\n", BROKER_ID,
            BROKER_ID);
    if (fclose(f) != 0)
        return -1;
    path_in(out, sizeof out, trust_dir, "directory.signed");
    path_in(root_key, sizeof root_key, keydir, "root.sign.pem");
    const char *const args[] = {"directory", "sign", "--in", src, "--root-key", root_key,
                                "--out", out, NULL};
    run_referralctl(args);
    /* One test clock for the whole program, starting at the real time (the
     * directory was signed at it). Monotonic time starts far from 0. */
    test_clock.wall_ms = (uint64_t)time(NULL) * 1000u;
    test_clock.mono_ms = 1000000000u;
    clock_set_source(&test_clock);
    log_set_level(LOGL_WARN);
    return 0;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 ? 0 : -1;
}

/* Remove dir and everything in it (made by this test). */
static void remove_tree(const char *dir)
{
    if (nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "cannot remove %s: %s\n", dir, strerror(errno));
}

static int remove_trust(void **state)
{
    (void)state;
    clock_set_source(NULL);
    remove_tree(trust_dir);
    return 0;
}

/* ---- one test's broker and client ------------------------------------- */

typedef struct {
    char dir[512];            /* the store and the socket live here */
    config cfg;
    broker b;
    bool is_open;
    void *zctx;               /* the client's */
    void *dealer;
    keys_identity desk;
    directory *dir_loaded;
    uint64_t next_request;
} rig;

static void rig_start_broker(rig *r)
{
    assert_int_equal(broker_open(&r->b, &r->cfg), BROKER_EXIT_OK);
    assert_int_equal(loop_open(&r->b), BROKER_EXIT_OK);
    r->is_open = true;
}

static void rig_stop_broker(rig *r)
{
    if (!r->is_open)
        return;
    loop_close(&r->b);
    broker_close(&r->b);
    r->is_open = false;
}

static int setup(void **state)
{
    rig *r = calloc(1, sizeof *r);
    assert_non_null(r);
    path_in(r->dir, sizeof r->dir, trust_dir, "run-XXXXXX");
    assert_non_null(mkdtemp(r->dir));
    char keydir[600], why[300];
    path_in(keydir, sizeof keydir, trust_dir, "keys");
    config *c = &r->cfg;
    config_defaults(c);
    snprintf(c->id, sizeof c->id, "%s", BROKER_ID);
    int n = snprintf(c->listen, sizeof c->listen, "ipc://%s/broker.sock", r->dir);
    assert_true(n > 0 && n < 100);   /* within an ipc path's limit (sun_path) */
    path_in(c->data_dir, sizeof c->data_dir, r->dir, "store");
    path_in(c->directory, sizeof c->directory, trust_dir, "directory.signed");
    path_in(c->trust_root, sizeof c->trust_root, keydir, "root.pub.json");
    path_in(c->key_dir, sizeof c->key_dir, trust_dir, "keys");
    c->log_level = LOGL_WARN;
    c->verify_workers = 1;
    c->map_size_bytes = 64ull << 20;
    c->min_free_disk_bytes = 0;
    assert_true(keys_load(keydir, DESK, &r->desk, why, sizeof why));
    uint8_t root[32];
    assert_true(keys_parse_sign_public(c->trust_root, root, why, sizeof why));
    assert_int_equal(directory_load(c->directory, root, 0, clock_now_ms(), &r->dir_loaded, why,
                                    sizeof why), DIRECTORY_OK);
    r->next_request = 1;
    *state = r;
    return 0;
}

static void client_close(rig *r)
{
    if (r->dealer != NULL)
        zmq_close(r->dealer);
    if (r->zctx != NULL)
        zmq_ctx_term(r->zctx);
    r->dealer = r->zctx = NULL;
}

static int teardown(void **state)
{
    rig *r = *state;
    client_close(r);
    rig_stop_broker(r);
    keys_wipe(&r->desk);
    directory_destroy(&r->dir_loaded);
    remove_tree(r->dir);
    free(r);
    return 0;
}

/* Connect the desk's CURVE DEALER to the broker (whose public key the
 * broker's own keys give). */
static void client_connect(rig *r)
{
    client_close(r);
    r->zctx = zmq_ctx_new();
    r->dealer = zmq_socket(r->zctx, ZMQ_DEALER);
    assert_non_null(r->dealer);
    int zero = 0;
    assert_int_equal(zmq_setsockopt(r->dealer, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_setsockopt(r->dealer, ZMQ_CURVE_SERVERKEY, r->b.keys.curve_public, 32),
                     0);
    assert_int_equal(zmq_setsockopt(r->dealer, ZMQ_CURVE_PUBLICKEY, r->desk.curve_public, 32), 0);
    assert_int_equal(zmq_setsockopt(r->dealer, ZMQ_CURVE_SECRETKEY, r->desk.curve_secret, 32), 0);
    assert_int_equal(zmq_connect(r->dealer, r->cfg.listen), 0);
}

static void client_send(rig *r, Referral__V1__ClientFrame *f)
{
    f->version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    size_t len;
    uint8_t *buf = wire_pack(f, &len);
    assert_non_null(buf);
    assert_int_equal(zmq_send(r->dealer, buf, len, 0), (int)len);
    free(buf);
}

/* A frame from the broker within timeout_ms (decoded into *out), or
 * false. */
static bool client_recv(rig *r, int timeout_ms, Referral__V1__BrokerFrame **out)
{
    zmq_pollitem_t item = {.socket = r->dealer, .events = ZMQ_POLLIN};
    if (zmq_poll(&item, 1, timeout_ms) <= 0)
        return false;
    zmq_msg_t m;
    zmq_msg_init(&m);
    assert_true(zmq_msg_recv(&m, r->dealer, 0) >= 0);
    char why[300];
    wire_err e = wire_decode_broker_frame(zmq_msg_data(&m), zmq_msg_size(&m), NULL, out, why,
                                          sizeof why);
    zmq_msg_close(&m);
    if (e != WIRE_OK)
        fail_msg("broker frame does not decode: %s", why);
    return true;
}

/* Run turns until the client has a frame (*out; returns -1) or a turn ends
 * the broker (returns its code, *out NULL). */
static int turn_until_frame(rig *r, Referral__V1__BrokerFrame **out)
{
    *out = NULL;
    for (int i = 0; i < MAX_TURNS; i++) {
        int rc = loop_turn(&r->b);
        if (rc >= 0)
            return rc;
        if (client_recv(r, FRAME_WAIT_MS, out))
            return -1;
    }
    fail_msg("no frame for the client after %d turns", MAX_TURNS);
    return -1;
}

/* The next frame, which must be of body kind. */
static Referral__V1__BrokerFrame *expect_frame(rig *r, Referral__V1__BrokerFrame__BodyCase kind)
{
    Referral__V1__BrokerFrame *f;
    assert_int_equal(turn_until_frame(r, &f), -1);
    if (f->body_case != kind) {
        char detail[600] = "";
        if (f->body_case == REFERRAL__V1__BROKER_FRAME__BODY_ERROR)
            snprintf(detail, sizeof detail, ": %s", f->error->detail);
        int got = f->body_case;
        wire_free(f);
        fail_msg("expected broker frame %d, got %d%s", kind, got, detail);
    }
    return f;
}

/* Hello as the desk, answered Welcome. */
static void client_hello(rig *r)
{
    Referral__V1__Hello h = REFERRAL__V1__HELLO__INIT;
    h.agency_id = DESK;
    h.client_name = "test_loop";
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_HELLO;
    f.hello = &h;
    client_send(r, &f);
    wire_free(expect_frame(r, REFERRAL__V1__BROKER_FRAME__BODY_WELCOME));
}

static void client_credit(rig *r, uint32_t grant)
{
    Referral__V1__Credit c = REFERRAL__V1__CREDIT__INIT;
    c.grant = grant;
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_CREDIT;
    f.credit = &c;
    client_send(r, &f);
}

/* A referral from the desk to the youth league, sealed and signed by
 * libreferral's composer, expiring ttl_ms from the test clock's now: the
 * packed envelope (caller frees) and its message id. */
static uint8_t *compose(rig *r, uint64_t ttl_ms, uint8_t mid[IDS_BYTES], size_t *len)
{
    static const uint8_t plaintext[] = "a case file the broker never reads";
    envelope_spec spec = {
        .kind = REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_REFERRAL,
        .to_agency = YOUTH,
        .urgency = REFERRAL__V1__URGENCY__URGENCY_PRIORITY,
        .ttl_ms = ttl_ms,
        .plaintext = plaintext,
        .plaintext_len = sizeof plaintext,
    };
    uint8_t *packed = NULL, rid[IDS_BYTES];
    char why[300];
    int rc = envelope_compose(&r->desk, r->dir_loaded, &spec, &packed, len, mid, rid, why,
                              sizeof why);
    if (rc != REF_OK)
        fail_msg("envelope_compose: %s", why);
    return packed;
}

/* Submit a packed envelope (borrowed), as the library's outbox does. */
static void client_submit_envelope(rig *r, const uint8_t *packed, size_t len)
{
    Referral__V1__Envelope *env = referral__v1__envelope__unpack(NULL, len, packed);
    assert_non_null(env);
    Referral__V1__Submit s = REFERRAL__V1__SUBMIT__INIT;
    s.request_id = r->next_request++;
    s.envelope = env;
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_SUBMIT;
    f.submit = &s;
    client_send(r, &f);
    referral__v1__envelope__free_unpacked(env, NULL);
}

static void client_submit(rig *r, uint64_t ttl_ms, uint8_t mid[IDS_BYTES])
{
    size_t len;
    uint8_t *packed = compose(r, ttl_ms, mid, &len);
    client_submit_envelope(r, packed, len);
    free(packed);
}

/* Submit and expect SubmitReply OK (stored durably). */
static void client_submit_ok(rig *r, uint64_t ttl_ms, uint8_t mid[IDS_BYTES])
{
    client_submit(r, ttl_ms, mid);
    Referral__V1__BrokerFrame *f = expect_frame(r, REFERRAL__V1__BROKER_FRAME__BODY_SUBMIT_REPLY);
    if (f->submit_reply->code != R(OK))
        fail_msg("submission refused: %s", f->submit_reply->detail);
    assert_memory_equal(f->submit_reply->message_id.data, mid, IDS_BYTES);
    wire_free(f);
}

/* The next Delivery must be an UNDELIVERABLE notice; returns the message
 * it is about (into about) and its notice id (into notice_id). */
static void expect_undeliverable(rig *r, uint8_t about[IDS_BYTES], uint8_t notice_id[IDS_BYTES])
{
    Referral__V1__BrokerFrame *f = expect_frame(r, REFERRAL__V1__BROKER_FRAME__BODY_DELIVERY);
    const Referral__V1__Delivery *d = f->delivery;
    assert_int_equal(d->payload_case, REFERRAL__V1__DELIVERY__PAYLOAD_NOTICE);
    Referral__V1__Notice *n = NULL;
    assert_int_equal(wire_decode_notice(d->notice->notice.data, d->notice->notice.len, NULL, &n,
                                        NULL, 0), WIRE_OK);
    assert_int_equal(n->kind, REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_UNDELIVERABLE);
    memcpy(about, n->message_id.data, IDS_BYTES);
    memcpy(notice_id, d->message_id.data, IDS_BYTES);
    wire_free(n);
    wire_free(f);
}

/* Open the test's store directly (the broker closed): is message id there? */
static store *open_store(rig *r)
{
    store_options so = {.dir = r->cfg.data_dir, .broker_id = BROKER_ID,
                        .map_size_bytes = r->cfg.map_size_bytes, .high_water_percent = 85};
    store *st = NULL;
    char why[600];
    if (store_open(&so, &st, why, sizeof why) != STORE_OK)
        fail_msg("store_open: %s", why);
    return st;
}

static bool is_stored(rig *r, const uint8_t mid[IDS_BYTES], store_msg *m)
{
    store *st = open_store(r);
    MDB_txn *txn;
    assert_int_equal(store_begin(st, &txn), STORE_OK);
    store_err e = store_msg_get(st, txn, mid, m);
    mdb_txn_abort(txn);
    store_destroy(&st);
    assert_true(e == STORE_OK || e == STORE_NOT_FOUND);
    return e == STORE_OK;
}

/* ---- a failed commit never answers OK, and ends the broker (exit 3) ---- */

/* Hello, then arm the fault and submit the envelope (borrowed): the turn
 * holding the submission fails its commit (the first commit that writes
 * after the Hello). The client hears nothing, now or later, and the turn
 * returns BROKER_EXIT_STORE, as referrald would exit. */
static void submit_into_failing_commit(rig *r, store_fault_op op, int error,
                                       const uint8_t *packed, size_t len)
{
    rig_start_broker(r);
    client_connect(r);
    client_hello(r);
    store_set_fault(r->b.st, op, 0, error);
    client_submit_envelope(r, packed, len);
    Referral__V1__BrokerFrame *f = NULL;
    int rc = turn_until_frame(r, &f);
    if (f != NULL)
        fail_msg("the client heard frame %d (code %d) from a turn whose commit failed",
                 f->body_case, f->body_case == REFERRAL__V1__BROKER_FRAME__BODY_SUBMIT_REPLY
                                   ? (int)f->submit_reply->code : -1);
    assert_int_equal(rc, BROKER_EXIT_STORE);
    assert_false(client_recv(r, 200, &f));
    client_close(r);
    rig_stop_broker(r);
}

/* The failed commit left nothing; at the restart the client's outbox
 * sends the envelope again and it is stored and answered OK (new). */
static void failed_commit_never_answers_ok(rig *r, int error)
{
    uint8_t mid[IDS_BYTES];
    size_t len;
    uint8_t *packed = compose(r, 10 * MINUTE_MS, mid, &len);
    submit_into_failing_commit(r, STORE_FAULT_COMMIT, error, packed, len);
    store_msg m;
    assert_false(is_stored(r, mid, &m));
    rig_start_broker(r);
    client_connect(r);
    client_hello(r);
    client_submit_envelope(r, packed, len);
    Referral__V1__BrokerFrame *f = expect_frame(r, REFERRAL__V1__BROKER_FRAME__BODY_SUBMIT_REPLY);
    assert_int_equal(f->submit_reply->code, R(OK));
    assert_false(f->submit_reply->is_duplicate);
    wire_free(f);
    free(packed);
}

static void failed_commit_eio_never_answers_ok(void **state)
{
    failed_commit_never_answers_ok(*state, EIO);
}

static void failed_commit_map_full_never_answers_ok(void **state)
{
    failed_commit_never_answers_ok(*state, MDB_MAP_FULL);
}

/* An fsync that fails after the write: the data may be in the file, but
 * the broker still never says so, and exits. At the restart the client's
 * outbox sends it again and hears OK, a duplicate of what is stored:
 * nothing accepted is lost, nothing is acknowledged before it is durable. */
static void failed_sync_never_answers_ok_and_restart_keeps_it(void **state)
{
    rig *r = *state;
    uint8_t mid[IDS_BYTES];
    size_t len;
    uint8_t *packed = compose(r, 10 * MINUTE_MS, mid, &len);
    submit_into_failing_commit(r, STORE_FAULT_SYNC, ENOSPC, packed, len);
    store_msg m;
    assert_true(is_stored(r, mid, &m));
    assert_int_equal(m.state, REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_QUEUED);
    rig_start_broker(r);
    client_connect(r);
    client_hello(r);
    client_submit_envelope(r, packed, len);
    Referral__V1__BrokerFrame *f = expect_frame(r, REFERRAL__V1__BROKER_FRAME__BODY_SUBMIT_REPLY);
    assert_int_equal(f->submit_reply->code, R(OK));
    assert_true(f->submit_reply->is_duplicate);
    wire_free(f);
    free(packed);
}

/* A put that fails with a full map refuses that submission alone (not OK,
 * STORE_FULL) and the broker goes on: the next submission is stored. */
static void failed_put_map_full_refuses_that_submission_alone(void **state)
{
    rig *r = *state;
    rig_start_broker(r);
    client_connect(r);
    client_hello(r);
    uint8_t mid[IDS_BYTES], mid2[IDS_BYTES];
    store_set_fault(r->b.st, STORE_FAULT_PUT, 0, MDB_MAP_FULL);
    client_submit(r, 10 * MINUTE_MS, mid);
    Referral__V1__BrokerFrame *f = expect_frame(r, REFERRAL__V1__BROKER_FRAME__BODY_SUBMIT_REPLY);
    assert_int_equal(f->submit_reply->code, R(STORE_FULL));
    wire_free(f);
    client_submit_ok(r, 10 * MINUTE_MS, mid2);
    rig_stop_broker(r);
    store_msg m;
    assert_false(is_stored(r, mid, &m));
    assert_true(is_stored(r, mid2, &m));
}

/* A Ping answered: every frame the broker sent before the Pong, and in the
 * same turn, has arrived (one pipe, in order) or arrives within a poll. */
static void client_ping(rig *r, Referral__V1__BrokerFrame **before)
{
    *before = NULL;
    Referral__V1__Ping p = REFERRAL__V1__PING__INIT;
    p.nonce = 7;
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_PING;
    f.ping = &p;
    client_send(r, &f);
    for (;;) {
        Referral__V1__BrokerFrame *got;
        assert_int_equal(turn_until_frame(r, &got), -1);
        if (got->body_case == REFERRAL__V1__BROKER_FRAME__BODY_PONG) {
            wire_free(got);
            break;
        }
        assert_null(*before);
        *before = got;
    }
    /* Deliveries of the Pong's turn are queued after it. */
    Referral__V1__BrokerFrame *after;
    if (client_recv(r, 200, &after)) {
        assert_null(*before);
        *before = after;
    }
}

/* ---- deadlines, driven by the test clock ------------------------------- */

/* Referrals that expire in an order other than the one they arrived in:
 * when the clock jumps past all of them, the sender's UNDELIVERABLE
 * notices come in due order (one deadline per turn, so the order holds
 * across turns, not only within one). */
static void deadlines_fire_in_due_order_when_the_clock_jumps(void **state)
{
    rig *r = *state;
    r->cfg.max_deadlines_per_turn = 1;
    r->cfg.session_idle_ms = 24ull * 3600 * 1000;   /* the session outlives the jump */
    rig_start_broker(r);
    client_connect(r);
    client_hello(r);
    static const uint64_t ttl_min[] = {4, 2, 5, 3, 1};
    enum { N = sizeof ttl_min / sizeof ttl_min[0] };
    uint8_t mids[N][IDS_BYTES];
    for (size_t i = 0; i < N; i++)
        client_submit_ok(r, ttl_min[i] * MINUTE_MS, mids[i]);
    /* Before the first is due, nothing fires. */
    clock_advance(&test_clock, MINUTE_MS / 2);
    client_credit(r, N);
    Referral__V1__BrokerFrame *extra;
    client_ping(r, &extra);
    assert_null(extra);
    /* Past all of them at once. */
    clock_advance(&test_clock, 6 * MINUTE_MS);
    for (uint64_t minute = 1; minute <= 5; minute++) {
        size_t want = 0;
        while (ttl_min[want] != minute)
            want++;
        uint8_t about[IDS_BYTES], notice_id[IDS_BYTES];
        expect_undeliverable(r, about, notice_id);
        if (memcmp(about, mids[want], IDS_BYTES) != 0)
            fail_msg("notice %llu is not about the referral due after %llu minutes",
                     (unsigned long long)minute, (unsigned long long)minute);
    }
    rig_stop_broker(r);
    for (size_t i = 0; i < N; i++) {
        store_msg m;
        assert_true(is_stored(r, mids[i], &m));
        assert_int_equal(m.state, REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_UNDELIVERABLE);
    }
}

static void count_expired(const uint8_t *bytes, size_t len, void *ctx)
{
    Referral__V1__TraceEvent *ev = referral__v1__trace_event__unpack(NULL, len, bytes);
    assert_non_null(ev);
    if (ev->kind == REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_EXPIRED)
        (*(size_t *)ctx)++;
    referral__v1__trace_event__free_unpacked(ev, NULL);
}

/* EXPIRED trace events of the referral of message mid. */
static size_t expired_events(rig *r, const uint8_t mid[IDS_BYTES])
{
    store_msg m;
    assert_true(is_stored(r, mid, &m));
    store *st = open_store(r);
    MDB_txn *txn;
    assert_int_equal(store_begin(st, &txn), STORE_OK);
    size_t n = 0;
    bool is_truncated;
    assert_int_equal(store_trace_each(st, txn, m.referral_id, 256, count_expired, &n,
                                      &is_truncated), STORE_OK);
    mdb_txn_abort(txn);
    store_destroy(&st);
    return n;
}

/* A deadline that passed while the broker was down fires at start, once:
 * one notice, one EXPIRED trace event, and nothing more at the next
 * restart. */
static void deadline_passed_while_down_fires_once(void **state)
{
    rig *r = *state;
    rig_start_broker(r);
    client_connect(r);
    client_hello(r);
    uint8_t mid[IDS_BYTES];
    client_submit_ok(r, 2 * MINUTE_MS, mid);
    client_close(r);
    rig_stop_broker(r);
    assert_int_equal(expired_events(r, mid), 0);

    clock_advance(&test_clock, 10 * MINUTE_MS);   /* down while it passed */
    rig_start_broker(r);
    client_connect(r);
    client_hello(r);
    client_credit(r, 10);
    uint8_t about[IDS_BYTES], notice_id[IDS_BYTES];
    expect_undeliverable(r, about, notice_id);
    assert_memory_equal(about, mid, IDS_BYTES);
    Referral__V1__Settle s = REFERRAL__V1__SETTLE__INIT;
    s.message_id = (ProtobufCBinaryData){IDS_BYTES, notice_id};
    s.verb = REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_ACK;
    s.attempt = 1;
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_SETTLE;
    f.settle = &s;
    client_send(r, &f);
    Referral__V1__BrokerFrame *reply =
        expect_frame(r, REFERRAL__V1__BROKER_FRAME__BODY_SETTLE_REPLY);
    assert_int_equal(reply->settle_reply->code, R(OK));
    wire_free(reply);
    Referral__V1__BrokerFrame *extra;
    client_ping(r, &extra);
    assert_null(extra);   /* no second notice */
    client_close(r);
    rig_stop_broker(r);
    assert_int_equal(expired_events(r, mid), 1);

    clock_advance(&test_clock, 10 * MINUTE_MS);   /* and again: nothing fires twice */
    rig_start_broker(r);
    client_connect(r);
    client_hello(r);
    client_credit(r, 10);
    client_ping(r, &extra);
    assert_null(extra);
    client_close(r);
    rig_stop_broker(r);
    assert_int_equal(expired_events(r, mid), 1);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_loop REFERRALCTL\n");
        return 2;
    }
    referralctl = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(failed_commit_eio_never_answers_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(failed_commit_map_full_never_answers_ok, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(failed_sync_never_answers_ok_and_restart_keeps_it, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(failed_put_map_full_refuses_that_submission_alone, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(deadlines_fire_in_due_order_when_the_clock_jumps, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(deadline_passed_while_down_fires_once, setup, teardown),
    };
    return cmocka_run_group_tests(tests, make_trust, remove_trust);
}
