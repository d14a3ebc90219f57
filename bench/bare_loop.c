/*
 * bare_loop: the baseline of benchmark W1 (bench/w1.py bare): what plain
 * ZeroMQ and LMDB cost per message on this machine, without anything of
 * the broker (no protobuf, no signatures, no queues, indexes or trace).
 *
 * A ROUTER server (a child process) and a DEALER client (this process) on
 * 127.0.0.1. The client sends --count frames of --size bytes, keeping at
 * most --window unanswered. The server loops: it waits for frames, reads
 * every frame waiting (at most --batch, as referrald's max_batch), puts
 * each into LMDB in one write transaction (default durability: the commit
 * fsyncs), commits once, then sends one ack per frame. This is the
 * group-commit loop every durable broker turn is built on.
 *
 * Prints one line: messages/s from the client's first send to its last
 * ack, and the server's CPU (getrusage, every thread of it, ZeroMQ's I/O
 * thread included) per message, from its first frame to its last ack.
 * --curve puts CURVE on the connection, as referrald has on every one.
 * Every wait is bounded by --timeout-s. A benchmark tool: never in CI.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>
#include <zmq.h>

#define ACK_BYTES 8
#define MAX_BATCH 65536

typedef struct {
    long count, window, size, batch, timeout_s;
    bool is_curve;
    const char *dir;
} options;

/* What the server tells the client through the pipe when it is done. */
typedef struct {
    long messages, turns;
    double cpu_us;
} server_report;

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: bare_loop [OPTIONS]\n"
        "Baseline for W1: a ZeroMQ ROUTER server that group-commits every frame of a\n"
        "loop turn into LMDB (one fsync per turn) and acks each; a DEALER client\n"
        "pipelines frames with a window. Prints messages/s and the server's CPU us\n"
        "per message.\n"
        "  --count N      frames to send (default 20000)\n"
        "  --window W     frames sent and not yet acked (default 256)\n"
        "  --size B       bytes per frame (default 128)\n"
        "  --batch M      frames read per turn at most (default 256)\n"
        "  --dir DIR      where the LMDB store goes (default: a new directory under\n"
        "                 /tmp, removed at the end); DIR must exist and be empty\n"
        "  --curve        CURVE on the connection (as referrald)\n"
        "  --timeout-s S  give up after S seconds without progress (default 60)\n"
        "  --help\n");
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse(int argc, char **argv, options *o)
{
    static const struct option opts[] = {
        {"count", required_argument, NULL, 'n'}, {"window", required_argument, NULL, 'w'},
        {"size", required_argument, NULL, 's'}, {"batch", required_argument, NULL, 'b'},
        {"dir", required_argument, NULL, 'd'}, {"curve", no_argument, NULL, 'c'},
        {"timeout-s", required_argument, NULL, 't'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    *o = (options){.count = 20000, .window = 256, .size = 128, .batch = 256, .timeout_s = 60};
    int opt;
    bool ok = true;
    while (ok && (opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'n': ok = parse_long(optarg, 1, 100000000, &o->count); break;
        case 'w': ok = parse_long(optarg, 1, 100000, &o->window); break;
        case 's': ok = parse_long(optarg, ACK_BYTES, 1 << 20, &o->size); break;
        case 'b': ok = parse_long(optarg, 1, MAX_BATCH, &o->batch); break;
        case 'd': o->dir = optarg; break;
        case 'c': o->is_curve = true; break;
        case 't': ok = parse_long(optarg, 1, 3600, &o->timeout_s); break;
        case 'h': usage(stdout); exit(0);
        default: ok = false; break;
        }
    }
    return ok && optind == argc;
}

/* ---- the server ------------------------------------------------------------ */

/* One frame read this turn: the client's routing id and the frame. */
typedef struct {
    zmq_msg_t who, body;
} turn_msg;

static MDB_env *open_store(const char *dir, const options *o, MDB_dbi *dbi)
{
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    size_t map = (size_t)o->count * (size_t)(o->size + 64) * 2u + (64u << 20);
    int rc = mdb_env_create(&env);
    if (rc == 0)
        rc = mdb_env_set_mapsize(env, map);
    if (rc == 0)
        rc = mdb_env_open(env, dir, MDB_NOTLS, 0600);   /* default: fsync per commit */
    if (rc == 0)
        rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, NULL, 0, dbi);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    if (rc != 0) {
        fprintf(stderr, "bare_loop: store %s: %s\n", dir, mdb_strerror(rc));
        mdb_env_close(env);
        return NULL;
    }
    return env;
}

/* Read every [routing id, frame] waiting, at most max; waits up to
 * wait_ms for the first. Returns how many. */
static long read_turn(void *sock, turn_msg *m, long max, int wait_ms)
{
    zmq_pollitem_t item = {.socket = sock, .events = ZMQ_POLLIN};
    if (zmq_poll(&item, 1, wait_ms) <= 0)
        return 0;
    long n = 0;
    for (; n < max; n++) {
        zmq_msg_init(&m[n].who);
        zmq_msg_init(&m[n].body);
        if (zmq_msg_recv(&m[n].who, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m[n].who);
            zmq_msg_close(&m[n].body);
            break;
        }
        zmq_msg_recv(&m[n].body, sock, 0);   /* the second part is there with the first */
    }
    return n;
}

/* Put the turn's frames under keys seq.. in one transaction and commit
 * (fsync). */
static bool commit_turn(MDB_env *env, MDB_dbi dbi, turn_msg *m, long n, uint64_t seq)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(env, NULL, 0, &txn);
    for (long i = 0; rc == 0 && i < n; i++) {
        uint8_t key[8];
        for (int b = 0; b < 8; b++)
            key[b] = (uint8_t)((seq + (uint64_t)i) >> (56 - 8 * b));
        MDB_val k = {sizeof key, key};
        MDB_val v = {zmq_msg_size(&m[i].body), zmq_msg_data(&m[i].body)};
        rc = mdb_put(txn, dbi, &k, &v, 0);
    }
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc != 0)
        fprintf(stderr, "bare_loop: commit: %s\n", mdb_strerror(rc));
    return rc == 0;
}

/* One ack per frame, to its sender, after the commit. */
static void ack_turn(void *sock, turn_msg *m, long n)
{
    for (long i = 0; i < n; i++) {
        zmq_msg_send(&m[i].who, sock, ZMQ_SNDMORE);
        zmq_send(sock, zmq_msg_data(&m[i].body), ACK_BYTES, 0);
        zmq_msg_close(&m[i].who);
        zmq_msg_close(&m[i].body);
    }
}

/* Serve until count frames are committed and acked, or timeout_s without
 * a frame. */
static server_report serve(void *sock, MDB_env *env, MDB_dbi dbi, const options *o)
{
    server_report r = {0};
    turn_msg *m = calloc((size_t)o->batch, sizeof *m);
    double cpu0 = 0, last = mono_s();
    while (m != NULL && r.messages < o->count && mono_s() - last < (double)o->timeout_s) {
        long n = read_turn(sock, m, o->batch, 100);
        if (n == 0)
            continue;
        if (r.messages == 0)
            cpu0 = cpu_us();
        bool ok = commit_turn(env, dbi, m, n, (uint64_t)r.messages);
        ack_turn(sock, m, n);
        if (!ok)
            break;
        r.messages += n;
        r.turns++;
        last = mono_s();
    }
    r.cpu_us = cpu_us() - cpu0;
    free(m);
    return r;
}

static void set_server_curve(void *sock, char secret[41])
{
    int one = 1;
    zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one);
    zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret, 40);
}

/* The child: bind, tell the parent the endpoint, serve, report. */
static int run_server(const options *o, const char *dir, int out_fd, char server_secret[41])
{
    MDB_dbi dbi;
    MDB_env *env = open_store(dir, o, &dbi);
    void *ctx = zmq_ctx_new();
    void *sock = ctx != NULL ? zmq_socket(ctx, ZMQ_ROUTER) : NULL;
    int hwm = 0;   /* the window bounds what is queued */
    if (sock != NULL) {
        zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
        zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
        if (o->is_curve)
            set_server_curve(sock, server_secret);
    }
    char ep[256] = "";
    size_t ep_len = sizeof ep;
    bool ok = env != NULL && sock != NULL && zmq_bind(sock, "tcp://127.0.0.1:*") == 0 &&
              zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, ep, &ep_len) == 0;
    dprintf(out_fd, "%s\n", ok ? ep : "-");
    server_report r = {0};
    if (ok)
        r = serve(sock, env, dbi, o);
    dprintf(out_fd, "%ld %ld %.0f\n", r.messages, r.turns, r.cpu_us);
    int linger = 2000;
    if (sock != NULL)
        zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    mdb_env_close(env);
    return ok && r.messages == o->count ? 0 : 1;
}

/* ---- the client ------------------------------------------------------------ */

/* A line from the child, waiting up to timeout_s; false on none. */
static bool read_line(int fd, char *buf, size_t cap, long timeout_s)
{
    size_t n = 0;
    double until = mono_s() + (double)timeout_s;
    while (n + 1 < cap && mono_s() < until) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        if (read(fd, buf + n, 1) != 1)
            break;
        if (buf[n] == '\n') {
            buf[n] = '\0';
            return true;
        }
        n++;
    }
    buf[n] = '\0';
    return false;
}

/* Send count frames with at most window unacked; returns the seconds from
 * the first send to the last ack, or a negative number on a timeout. */
static double pipeline(void *sock, const options *o)
{
    char *frame = calloc(1, (size_t)o->size);
    long sent = 0, acked = 0;
    double t0 = mono_s(), last = t0;
    while (frame != NULL && acked < o->count && mono_s() - last < (double)o->timeout_s) {
        while (sent < o->count && sent - acked < o->window) {
            memcpy(frame, &sent, sizeof sent);
            zmq_send(sock, frame, (size_t)o->size, 0);
            sent++;
        }
        zmq_pollitem_t item = {.socket = sock, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, 100) <= 0)
            continue;
        char ack[ACK_BYTES];
        while (zmq_recv(sock, ack, sizeof ack, ZMQ_DONTWAIT) >= 0)
            acked++;
        last = mono_s();
    }
    free(frame);
    return acked == o->count ? last - t0 : -1.0;
}

static void *client_socket(void *ctx, const options *o, const char server_public[41])
{
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    int hwm = 0;
    if (sock == NULL)
        return NULL;
    zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    if (o->is_curve) {
        char pub[41], sec[41];
        zmq_curve_keypair(pub, sec);
        zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_public, 40);
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, pub, 40);
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec, 40);
    }
    return sock;
}

/* The parent: connect to the child's endpoint, pipeline, print. */
static int run_client(const options *o, int in_fd, const char server_public[41])
{
    char ep[256], line[256];
    if (!read_line(in_fd, ep, sizeof ep, o->timeout_s) || ep[0] == '-') {
        fprintf(stderr, "bare_loop: the server did not start\n");
        return 1;
    }
    void *ctx = zmq_ctx_new();
    void *sock = ctx != NULL ? client_socket(ctx, o, server_public) : NULL;
    double secs = sock != NULL && zmq_connect(sock, ep) == 0 ? pipeline(sock, o) : -1.0;
    int linger = 0;
    if (sock != NULL)
        zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    server_report r = {0};
    if (!read_line(in_fd, line, sizeof line, o->timeout_s) ||
        sscanf(line, "%ld %ld %lf", &r.messages, &r.turns, &r.cpu_us) != 3 || secs <= 0 ||
        r.messages == 0) {
        fprintf(stderr, "bare_loop: the run did not complete (%s)\n", line);
        return 1;
    }
    printf("bare_loop messages=%ld seconds=%.3f msgs_per_s=%.0f server_cpu_us_per_msg=%.2f "
           "turns=%ld mean_batch=%.1f window=%ld size=%ld curve=%s\n", r.messages, secs,
           (double)r.messages / secs, r.cpu_us / (double)r.messages, r.turns,
           (double)r.messages / (double)r.turns, o->window, o->size, o->is_curve ? "yes" : "no");
    return 0;
}

/* ---- main ------------------------------------------------------------------ */

/* Remove the store files this program made and its directory. */
static void remove_store(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/lock.mdb", dir);
    unlink(path);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    options o;
    if (!parse(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    char made[] = "/tmp/bare-loop-XXXXXX";
    const char *dir = o.dir != NULL ? o.dir : mkdtemp(made);
    char pub[41] = "", sec[41] = "";
    int fds[2];
    if (dir == NULL || pipe(fds) != 0 || (o.is_curve && zmq_curve_keypair(pub, sec) != 0)) {
        fprintf(stderr, "bare_loop: cannot set up: %s\n", strerror(errno));
        return 1;
    }
    fflush(stdout);
    pid_t child = fork();   /* before any ZeroMQ context: it does not survive a fork */
    if (child == 0) {
        close(fds[0]);
        _exit(run_server(&o, dir, fds[1], sec));
    }
    close(fds[1]);
    int rc = child < 0 ? 1 : run_client(&o, fds[0], pub);
    int status = 0;
    if (child > 0 && waitpid(child, &status, 0) == child && status != 0)
        rc = 1;
    close(fds[0]);
    if (o.dir == NULL)
        remove_store(dir);
    return rc;
}
