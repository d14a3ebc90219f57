/*
 * w1_load: the load generator of benchmarks W1, W2, W5 and growth
 * (bench/w1.py), on libreferral's public API only (referral.h), used as a
 * desk and an agency application use it. Two roles:
 *
 *   w1_load send --to AGENCY --count N [OPTIONS]     one desk sending
 *   w1_load receive --count N [OPTIONS]              one agency taking
 *
 * send composes routine referrals whose case file has a narrative of
 * --narrative-bytes (1,024) and hands each to ref_send_async(). Closed
 * loop (the default): at most --window (256) referrals sent and not yet
 * answered by the broker (ACCEPTED or refused, learnt per message from
 * ref_client_set_outcome_fn()), sent in bursts of at most --burst (64)
 * between two takes of what the broker sent. The window counts broker
 * answers rather than hand-overs at the receiver because that needs no
 * channel between the two processes and uses only what a desk sees; the
 * receiver runs with credit 256 and takes as fast as it can, so what the
 * broker accepted and has not handed over waits in its queue, the backlog
 * it has to serve. Open loop with --rate R --seconds S: referral i is due
 * at i/R seconds and sent then (when late, at once with the others due by
 * then), never waiting for an answer. Each referral is stamped on
 * CLOCK_MONOTONIC just before ref_send_async() and just after it returns.
 * Meanwhile the desk takes whatever the broker delivers to it (DELIVERED
 * receipts or notices), confirms each and counts them by kind; at the end
 * it waits up to --drain-ms of silence for one DELIVERED word per referral
 * (0: it does not wait).
 *
 * receive takes deliveries with ref_receive() (credit --credit, 256),
 * stamps each referral on CLOCK_MONOTONIC as it is handed over, confirms
 * it with ref_delivery_done() and goes on, until --count referrals, or
 * --idle-ms without any, or --seconds after the first hand-over.
 *
 * Both print their stamps only at the end (stdout is kept out of the
 * measured path): send "S MESSAGE_ID CALL_US RETURN_US DUE_US" per referral
 * (DUE_US: when the open loop meant to send it, 0 in the closed loop),
 * receive "R MESSAGE_ID HANDED_US", then one summary line starting "#".
 * Each says "ready" on stderr once connected. Connection from the
 * environment, as bench/w3_agent.c: REFERRAL_AGENCY, REFERRAL_KEYS,
 * REFERRAL_DIRECTORY, REFERRAL_ROOT, REFERRAL_BROKER, REFERRAL_ENDPOINT
 * (optional), REFERRAL_STATE. A benchmark tool: never run in CI.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "referral.h"

#define MAX_COUNT 10000000L
#define MAX_TAKE_PER_CALL 1024   /* deliveries taken per take_deliveries() call */

typedef unsigned long long usec;

static usec mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (usec)ts.tv_sec * 1000000ull + (usec)ts.tv_nsec / 1000u;
}

static void on_log(ref_log_level level, const char *line, void *ctx)
{
    (void)ctx;
    if (level <= REF_LOG_WARN)
        fprintf(stderr, "w1_load: %s\n", line);
}

/* A number in lo..hi from text, or false. */
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

/* Connect as the agency the environment names, with credit. */
static ref_client *connect_from_env(uint32_t credit, uint32_t timeout_ms)
{
    ref_config cfg = {
        .agency_id = getenv("REFERRAL_AGENCY"),
        .key_dir = getenv("REFERRAL_KEYS"),
        .directory = getenv("REFERRAL_DIRECTORY"),
        .trust_root = getenv("REFERRAL_ROOT"),
        .broker_id = getenv("REFERRAL_BROKER"),
        .endpoint = getenv("REFERRAL_ENDPOINT"),
        .state_dir = getenv("REFERRAL_STATE"),
        .timeout_ms = timeout_ms,
        .credit = credit,
        .log = on_log,
    };
    ref_client *c = NULL;
    char detail[700] = "";
    ref_err e = ref_client_new(&cfg, &c, detail, sizeof detail);
    if (e != REF_OK) {
        fprintf(stderr, "w1_load: cannot connect: %s: %s\n", ref_strerror(e), detail);
        return NULL;
    }
    fprintf(stderr, "w1_load: ready\n");
    return c;
}

/* ---- send ------------------------------------------------------------------ */

typedef struct {
    const char *to;
    long count, window, burst, rate, seconds, narrative_bytes, drain_ms, timeout_ms;
} send_opts;

/* What the desk learnt: answers to its referrals and deliveries to it. */
typedef struct {
    long accepted, refused;         /* outcomes of its referrals */
    long receipts, notices, other;  /* deliveries, by kind */
    long words;                     /* receipts and notices at level DELIVERED */
} desk_tally;

typedef struct {
    char id[REF_ID_HEX_LEN + 1];
    usec call_us, return_us, due_us;   /* due: open loop only, else 0 */
} send_stamp;

static void send_usage(FILE *f)
{
    fprintf(f,
        "Usage: w1_load send --to AGENCY --count N [OPTIONS]\n"
        "Send N routine referrals (1 KiB narrative) with ref_send_async().\n"
        "  --to AGENCY            recipient (required)\n"
        "  --count N              referrals to send (required unless --rate)\n"
        "  --window W             closed loop: at most W sent and not yet answered\n"
        "                         by the broker (default 256)\n"
        "  --burst K              send at most K in a row before taking what the\n"
        "                         broker sent (default 64; open loop: those due)\n"
        "  --rate R --seconds S   open loop instead: R referrals/s for S s (count R*S)\n"
        "  --narrative-bytes B    narrative length (default 1024)\n"
        "  --drain-ms MS          at the end, wait up to MS of silence for one\n"
        "                         DELIVERED receipt or notice per referral (default\n"
        "                         10000; 0: do not wait)\n"
        "  --timeout-ms MS        give up when no answer comes for MS (default 60000)\n"
        "Prints \"S MESSAGE_ID CALL_US RETURN_US DUE_US\" per referral (CLOCK_MONOTONIC\n"
        "microseconds before and after ref_send_async, and when it was due in the\n"
        "open loop, else 0), then \"# send ...\" totals.\n"
        "Connection from REFERRAL_AGENCY, REFERRAL_KEYS, REFERRAL_DIRECTORY,\n"
        "REFERRAL_ROOT, REFERRAL_BROKER, REFERRAL_ENDPOINT, REFERRAL_STATE.\n");
}

static void on_outcome(const char *message_id_hex, ref_err outcome, const char *detail,
                       void *ctx)
{
    desk_tally *t = ctx;
    if (outcome == REF_OK) {
        t->accepted++;
        return;
    }
    t->refused++;
    fprintf(stderr, "w1_load: refused %s: %s: %s\n", message_id_hex, ref_strerror(outcome),
            detail);
}

static void tally_delivery(desk_tally *t, const ref_delivery *d)
{
    ref_delivery_kind k = ref_delivery_kind_of(d);
    bool is_delivered = ref_delivery_level(d) == REF_LEVEL_DELIVERED;
    if (k == REF_DELIVERY_RECEIPT)
        t->receipts++;
    else if (k == REF_DELIVERY_NOTICE)
        t->notices++;
    else
        t->other++;
    if ((k == REF_DELIVERY_RECEIPT || k == REF_DELIVERY_NOTICE) && is_delivered)
        t->words++;
}

/* Take what the broker delivered to the desk (each ref_receive() also
 * pumps, so answers are processed too), confirming each. */
static ref_err take_deliveries(ref_client *c, desk_tally *t)
{
    for (int i = 0; i < MAX_TAKE_PER_CALL; i++) {
        ref_delivery *d = NULL;
        ref_err e = ref_receive(c, 0, &d);
        if (e == REF_E_AGAIN)
            return REF_OK;
        if (e != REF_OK)
            return e;
        tally_delivery(t, d);
        e = ref_delivery_done(c, d);
        ref_delivery_destroy(&d);
        if (e != REF_OK)
            return e;
    }
    return REF_OK;
}

/* Wait for the client's descriptor for at most ms, then take. */
static ref_err wait_and_take(ref_client *c, desk_tally *t, int ms)
{
    struct pollfd p = {.fd = ref_client_fd(c), .events = POLLIN};
    if (p.fd >= 0 && ms > 0)
        poll(&p, 1, ms);
    return take_deliveries(c, t);
}

/* Compose and send referral i, stamping it. */
static ref_err send_one(ref_client *c, const send_opts *o, const char *narrative,
                        send_stamp *s)
{
    ref_referral r = {
        .to_agency = o->to,
        .urgency = REF_URGENCY_ROUTINE,
        .category = REF_CATEGORY_PSYCHOLOGICAL_SUPPORT,
        .subject_pseudonym = "W1 subject",
        .subject_age = 15,
        .subject_location = "Qingdao",
        .narrative = narrative,
        .requested_action = "call back within the day",
        .desk_case_number = "W1",
    };
    s->call_us = mono_us();
    ref_err e = ref_send_async(c, &r, s->id, NULL);
    s->return_us = mono_us();
    if (e != REF_OK)
        fprintf(stderr, "w1_load: send: %s: %s\n", ref_strerror(e), ref_client_last_detail(c));
    return e;
}

/* Until due: take deliveries, and sleep in poll (or, for the last
 * millisecond, on the clock). */
static ref_err wait_until(ref_client *c, desk_tally *t, usec due)
{
    for (;;) {
        ref_err e = take_deliveries(c, t);
        usec now = mono_us();
        if (e != REF_OK || now >= due)
            return e;
        usec left = due - now;
        if (left > 1500) {
            wait_and_take(c, t, (int)((left - 500) / 1000));
            continue;
        }
        struct timespec ts = {.tv_sec = (time_t)(due / 1000000u),
                              .tv_nsec = (long)(due % 1000000u) * 1000};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        return REF_OK;
    }
}

/* Wait, taking deliveries, until the answers (is_words: the DELIVERED
 * words) in the tally reach target; false when they did not move for
 * quiet_ms. */
static bool wait_for_tally(ref_client *c, desk_tally *t, long target, bool is_words,
                           long quiet_ms)
{
    usec last = mono_us();
    long seen = -1;
    for (;;) {
        long now_at = is_words ? t->words : t->accepted + t->refused;
        if (now_at >= target)
            return true;
        if (now_at != seen) {
            seen = now_at;
            last = mono_us();
        } else if (mono_us() - last > (usec)quiet_ms * 1000u) {
            return false;
        }
        if (wait_and_take(c, t, 1) != REF_OK)
            return false;
    }
}

/* Closed loop: keep at most window referrals unanswered. Referrals go
 * out in bursts of at most --burst while the window allows, and what the
 * broker sent is taken after each burst, as a desk with work queued would
 * do (a library that stages its writes per pump can then group them). */
static ref_err send_closed(ref_client *c, const send_opts *o, const char *narrative,
                           send_stamp *st, desk_tally *t)
{
    long i = 0;
    while (i < o->count) {
        long answered = t->accepted + t->refused;
        if (i - answered >= o->window &&
            !wait_for_tally(c, t, i - o->window + 1, false, o->timeout_ms)) {
            fprintf(stderr, "w1_load: no answer from the broker for %ld ms\n", o->timeout_ms);
            return REF_E_TIMEOUT;
        }
        long room = o->window - (i - answered), burst = o->burst < room ? o->burst : room;
        for (long k = 0; k < burst && i < o->count; k++, i++) {
            ref_err e = send_one(c, o, narrative, &st[i]);
            if (e != REF_OK)
                return e;
        }
        ref_err e = take_deliveries(c, t);
        if (e != REF_OK)
            return e;
    }
    return REF_OK;
}

/* When referral i is due in the open loop that starts at t0. */
static usec due_of(const send_opts *o, usec t0, long i)
{
    return t0 + (usec)i * 1000000u / (usec)o->rate;
}

/* Open loop: referral i is due at t0 + i/rate, whatever the answers.
 * Every referral due by now goes out (at most --burst in a row) before
 * the next take of what the broker sent, so a sender that fell behind
 * catches up with the referrals waiting together, as a desk would. */
static ref_err send_paced(ref_client *c, const send_opts *o, const char *narrative,
                          send_stamp *st, desk_tally *t)
{
    usec t0 = mono_us() + 10000u;
    long i = 0;
    while (i < o->count) {
        ref_err e = wait_until(c, t, due_of(o, t0, i));
        for (long k = 0; e == REF_OK && k < o->burst && i < o->count &&
                         due_of(o, t0, i) <= mono_us(); k++, i++) {
            st[i].due_us = due_of(o, t0, i);
            e = send_one(c, o, narrative, &st[i]);
        }
        if (e != REF_OK)
            return e;
    }
    return REF_OK;
}

static bool parse_send(int argc, char **argv, send_opts *o)
{
    static const struct option opts[] = {
        {"to", required_argument, NULL, 't'}, {"count", required_argument, NULL, 'n'},
        {"window", required_argument, NULL, 'w'}, {"burst", required_argument, NULL, 'k'},
        {"rate", required_argument, NULL, 'r'},
        {"seconds", required_argument, NULL, 's'},
        {"narrative-bytes", required_argument, NULL, 'b'},
        {"drain-ms", required_argument, NULL, 'd'}, {"timeout-ms", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    *o = (send_opts){.window = 256, .burst = 64, .narrative_bytes = 1024, .drain_ms = 10000,
                     .timeout_ms = 60000};
    int opt;
    bool ok = true;
    while (ok && (opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 't': o->to = optarg; break;
        case 'n': ok = parse_long(optarg, 1, MAX_COUNT, &o->count); break;
        case 'w': ok = parse_long(optarg, 1, 100000, &o->window); break;
        case 'k': ok = parse_long(optarg, 1, 100000, &o->burst); break;
        case 'r': ok = parse_long(optarg, 1, 1000000, &o->rate); break;
        case 's': ok = parse_long(optarg, 1, 86400, &o->seconds); break;
        case 'b': ok = parse_long(optarg, 1, 60000, &o->narrative_bytes); break;
        case 'd': ok = parse_long(optarg, 0, 3600000, &o->drain_ms); break;
        case 'o': ok = parse_long(optarg, 1, 3600000, &o->timeout_ms); break;
        case 'h': send_usage(stdout); exit(0);
        default: ok = false; break;
        }
    }
    if (ok && o->rate > 0)
        o->count = o->seconds > 0 && o->rate * o->seconds <= MAX_COUNT ? o->rate * o->seconds : 0;
    return ok && optind == argc && o->to != NULL && o->count > 0;
}

static int run_send(int argc, char **argv)
{
    send_opts o;
    if (!parse_send(argc, argv, &o)) {
        send_usage(stderr);
        return 2;
    }
    send_stamp *st = calloc((size_t)o.count, sizeof *st);
    char *narrative = malloc((size_t)o.narrative_bytes + 1);
    ref_client *c = st != NULL && narrative != NULL ? connect_from_env(256, 10000) : NULL;
    if (c == NULL) {
        free(st);
        free(narrative);
        return 1;
    }
    static const char words[] = "W1 load: a caller asks for help for a child. ";
    for (long i = 0; i < o.narrative_bytes; i++)
        narrative[i] = words[i % (long)(sizeof words - 1)];
    narrative[o.narrative_bytes] = '\0';
    desk_tally t = {0};
    ref_client_set_outcome_fn(c, on_outcome, &t);
    ref_err e = o.rate > 0 ? send_paced(c, &o, narrative, st, &t)
                           : send_closed(c, &o, narrative, st, &t);
    bool is_answered = e == REF_OK && wait_for_tally(c, &t, o.count, false, o.timeout_ms);
    if (is_answered && o.drain_ms > 0)
        wait_for_tally(c, &t, o.count, true, o.drain_ms);
    ref_client_set_outcome_fn(c, NULL, NULL);
    ref_client_destroy(&c);
    long sent = 0;
    for (; sent < o.count && st[sent].call_us != 0; sent++)
        printf("S %s %llu %llu %llu\n", st[sent].id, st[sent].call_us, st[sent].return_us,
               st[sent].due_us);
    printf("# send sent=%ld accepted=%ld refused=%ld receipts=%ld notices=%ld other=%ld "
           "delivered_words=%ld\n", sent, t.accepted, t.refused, t.receipts, t.notices,
           t.other, t.words);
    free(st);
    free(narrative);
    return is_answered && t.refused == 0 ? 0 : 1;
}

/* ---- receive --------------------------------------------------------------- */

typedef struct {
    long count, credit, idle_ms, seconds;
} recv_opts;

typedef struct {
    char id[REF_ID_HEX_LEN + 1];
    usec handed_us;
} arrival;

static void receive_usage(FILE *f)
{
    fprintf(f,
        "Usage: w1_load receive --count N [OPTIONS]\n"
        "Take referrals with ref_receive(), confirming each with ref_delivery_done().\n"
        "  --count N        stop after N referrals (required)\n"
        "  --credit C       deliveries the broker may send ahead (default 256)\n"
        "  --idle-ms MS     stop after MS with nothing received (default 30000)\n"
        "  --seconds S      stop S seconds after the first hand-over (default: no limit)\n"
        "Prints \"R MESSAGE_ID HANDED_US\" per referral (CLOCK_MONOTONIC microseconds\n"
        "when ref_receive() handed it over), then \"# receive ...\" with the start,\n"
        "connected and first hand-over times. Connection from the environment, as\n"
        "for send.\n");
}

static bool parse_receive(int argc, char **argv, recv_opts *o)
{
    static const struct option opts[] = {
        {"count", required_argument, NULL, 'n'}, {"credit", required_argument, NULL, 'c'},
        {"idle-ms", required_argument, NULL, 'i'}, {"seconds", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    *o = (recv_opts){.credit = 256, .idle_ms = 30000};
    int opt;
    bool ok = true;
    while (ok && (opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'n': ok = parse_long(optarg, 1, MAX_COUNT, &o->count); break;
        case 'c': ok = parse_long(optarg, 1, 1024, &o->credit); break;
        case 'i': ok = parse_long(optarg, 1, 3600000, &o->idle_ms); break;
        case 's': ok = parse_long(optarg, 1, 86400, &o->seconds); break;
        case 'h': receive_usage(stdout); exit(0);
        default: ok = false; break;
        }
    }
    return ok && optind == argc && o->count > 0;
}

/* Take until count referrals, idle_ms of silence, or seconds after the
 * first. Returns the number of referrals in got[]; *others counts the
 * other deliveries; *failed says whether the library failed. */
static long take_referrals(ref_client *c, const recv_opts *o, arrival *got, long *others,
                           bool *failed)
{
    long n = 0;
    usec quiet_since = mono_us(), until = 0;
    while (n < o->count && mono_us() - quiet_since < (usec)o->idle_ms * 1000u &&
           (until == 0 || mono_us() < until)) {
        ref_delivery *d = NULL;
        ref_err e = ref_receive(c, 100, &d);
        if (e == REF_E_AGAIN)
            continue;
        if (e != REF_OK) {
            fprintf(stderr, "w1_load: receive: %s\n", ref_strerror(e));
            *failed = true;
            break;
        }
        quiet_since = mono_us();
        if (ref_delivery_kind_of(d) == REF_DELIVERY_REFERRAL) {
            got[n].handed_us = quiet_since;
            snprintf(got[n].id, sizeof got[n].id, "%s", ref_delivery_message_id(d));
            if (n++ == 0 && o->seconds > 0)
                until = quiet_since + (usec)o->seconds * 1000000u;
        } else {
            (*others)++;
        }
        if (ref_delivery_done(c, d) != REF_OK)
            *failed = true;
        ref_delivery_destroy(&d);
    }
    return n;
}

static int run_receive(int argc, char **argv)
{
    recv_opts o;
    if (!parse_receive(argc, argv, &o)) {
        receive_usage(stderr);
        return 2;
    }
    usec start_us = mono_us();
    arrival *got = calloc((size_t)o.count, sizeof *got);
    ref_client *c = got != NULL ? connect_from_env((uint32_t)o.credit, 10000) : NULL;
    if (c == NULL) {
        free(got);
        return 1;
    }
    usec ready_us = mono_us();
    long others = 0;
    bool failed = false;
    long n = take_referrals(c, &o, got, &others, &failed);
    ref_client_destroy(&c);
    for (long i = 0; i < n; i++)
        printf("R %s %llu\n", got[i].id, got[i].handed_us);
    printf("# receive handed=%ld other=%ld start_us=%llu ready_us=%llu first_us=%llu "
           "last_us=%llu\n", n, others, start_us, ready_us, n > 0 ? got[0].handed_us : 0,
           n > 0 ? got[n - 1].handed_us : 0);
    free(got);
    return failed ? 1 : 0;
}

/* ---- main ------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: w1_load send --to AGENCY --count N [OPTIONS]   (w1_load send --help)\n"
        "       w1_load receive --count N [OPTIONS]            (w1_load receive --help)\n"
        "The load generator of bench/w1.py on libreferral: a desk sending 1 KiB\n"
        "referrals with ref_send_async() (closed loop with a window, or paced), and\n"
        "an agency taking them with ref_receive(); both stamp CLOCK_MONOTONIC per\n"
        "message id and print the stamps at the end. A benchmark tool: never in CI.\n");
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "send") == 0)
        return run_send(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "receive") == 0)
        return run_receive(argc - 1, argv + 1);
    bool is_help = argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0);
    usage(is_help ? stdout : stderr);
    return is_help ? 0 : 2;
}
