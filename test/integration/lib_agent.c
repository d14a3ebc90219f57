/*
 * lib_agent: an agency's software built on libreferral, for the hand-over
 * and session tests (test_handover.py). It is a test program: it kills
 * itself on purpose at a chosen step of the hand-over.
 *
 *   lib_agent receive OUT STEP N IDLE_MS
 *       Receive deliveries; for each referral, append its message id to OUT
 *       (fsync: the application has taken it), then ref_delivery_done().
 *       STEP names the point at which the process kills itself (SIGKILL)
 *       at the N-th occurrence:
 *         arrived    a delivery arrived, before it is stored
 *         stored     stored in the inbox, before the settle
 *         settled    settled with the broker (DELIVERED there)
 *         taken      written to OUT, before ref_delivery_done()
 *         none       never
 *       The steps are seen through the library's log callback (its debug
 *       lines), so the library carries no test code. Exits 0 after IDLE_MS
 *       with nothing received.
 *   lib_agent receive OUT STEP N IDLE_MS COUNT
 *       The same, but exits (ref_client_destroy, then exit 0) at once after
 *       the COUNT-th referral is taken: a one-shot job that closes while
 *       the settles of its last deliveries are still on their way.
 *   lib_agent send TO
 *       For each line on stdin, send a crisis referral with that narrative
 *       to TO (ref_send, waiting for ACCEPTED) and print one JSON line
 *       {"result": "...", "message_id": "..."}; between lines it keeps
 *       pumping so that the session stays alive.
 *
 *   lib_agent send-and-idle TO SECONDS
 *       Send one crisis referral to TO with ref_send_async(), print its id
 *       as a JSON line {"message_id": "..."}, then make no library call for
 *       SECONDS (an application busy elsewhere), then exit.
 *
 *   lib_agent send-async TO N
 *       Send N crisis referrals to TO with ref_send_async() (pipelined, no
 *       wait), then pump until every one's outcome came through the outcome
 *       callback (at most 30 s); print one JSON line per outcome
 *       {"outcome": "...", "message_id": "..."} and exit 0 when all N came.
 *
 * Connection from the environment, as referral-desk: REFERRAL_AGENCY,
 * REFERRAL_KEYS, REFERRAL_DIRECTORY, REFERRAL_ROOT, REFERRAL_BROKER,
 * REFERRAL_ENDPOINT (optional), REFERRAL_STATE; REFERRAL_CREDIT (optional)
 * sets ref_config.credit.
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "referral.h"

static const char *crash_prefix;   /* log line prefix of the chosen step, or NULL */
static long crash_at;
static long crash_seen;

static void on_log(ref_log_level level, const char *line, void *ctx)
{
    (void)ctx;
    if (level <= REF_LOG_WARN)
        fprintf(stderr, "lib_agent: %s\n", line);
    if (crash_prefix != NULL && strncmp(line, crash_prefix, strlen(crash_prefix)) == 0 &&
        ++crash_seen == crash_at)
        raise(SIGKILL);
}

static ref_client *connect_from_env(void)
{
    ref_config cfg = {
        .agency_id = getenv("REFERRAL_AGENCY"),
        .key_dir = getenv("REFERRAL_KEYS"),
        .directory = getenv("REFERRAL_DIRECTORY"),
        .trust_root = getenv("REFERRAL_ROOT"),
        .broker_id = getenv("REFERRAL_BROKER"),
        .endpoint = getenv("REFERRAL_ENDPOINT"),
        .state_dir = getenv("REFERRAL_STATE"),
        .credit = getenv("REFERRAL_CREDIT") != NULL
                      ? (uint32_t)strtoul(getenv("REFERRAL_CREDIT"), NULL, 10) : 0,
        .timeout_ms = 10000,
        .log = on_log,
    };
    ref_client *c = NULL;
    char detail[700];
    ref_err e = ref_client_new(&cfg, &c, detail, sizeof detail);
    if (e != REF_OK) {
        fprintf(stderr, "lib_agent: cannot connect: %s: %s\n", ref_strerror(e), detail);
        return NULL;
    }
    return c;
}

static int run_receive(const char *out, const char *step, long n, long idle_ms, long count)
{
    static const struct {
        const char *step, *prefix;
    } steps[] = {{"arrived", "delivery arrived "}, {"stored", "delivery stored "},
                 {"settled", "delivery settled "}, {"taken", NULL}, {"none", NULL}};
    bool is_known = false, is_taken_step = strcmp(step, "taken") == 0;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
        if (strcmp(step, steps[i].step) == 0) {
            crash_prefix = steps[i].prefix;
            is_known = true;
        }
    if (!is_known || n < 1) {
        fprintf(stderr, "lib_agent: unknown step %s\n", step);
        return 2;
    }
    crash_at = n;
    int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0)
        return 1;
    ref_client *c = connect_from_env();
    if (c == NULL)
        return 1;
    long quiet_ms = 0, taken = 0;
    while (quiet_ms < idle_ms) {
        ref_delivery *d = NULL;
        ref_err e = ref_receive(c, 100, &d);
        if (e == REF_E_AGAIN) {
            quiet_ms += 100;
            continue;
        }
        if (e != REF_OK) {
            fprintf(stderr, "lib_agent: receive: %s\n", ref_strerror(e));
            return 1;
        }
        quiet_ms = 0;
        if (ref_delivery_kind_of(d) == REF_DELIVERY_REFERRAL) {
            char line[REF_ID_HEX_LEN + 2];
            snprintf(line, sizeof line, "%s\n", ref_delivery_message_id(d));
            if (write(fd, line, strlen(line)) != (ssize_t)strlen(line) || fsync(fd) != 0)
                return 1;
            if (++taken == crash_at && is_taken_step)
                raise(SIGKILL);
        }
        if (ref_delivery_done(c, d) != REF_OK)
            return 1;
        ref_delivery_destroy(&d);
        if (count > 0 && taken >= count)
            break;
    }
    ref_client_destroy(&c);
    close(fd);
    return 0;
}

static int run_send(const char *to)
{
    ref_client *c = connect_from_env();
    if (c == NULL)
        return 1;
    char line[1024];
    for (;;) {
        struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
        int rc = poll(&p, 1, 100);
        ref_pump(c);
        if (rc <= 0)
            continue;
        if (fgets(line, sizeof line, stdin) == NULL)
            break;
        line[strcspn(line, "\n")] = '\0';
        ref_referral r = {.to_agency = to, .urgency = REF_URGENCY_CRISIS,
                          .category = REF_CATEGORY_PSYCHOLOGICAL_SUPPORT, .narrative = line};
        char mid[REF_ID_HEX_LEN + 1] = "";
        ref_err e = ref_send(c, &r, mid, NULL);
        printf("{\"result\": \"%s\", \"code\": %d, \"message_id\": \"%s\"}\n", ref_strerror(e),
               (int)e, mid);
        fflush(stdout);
    }
    ref_client_destroy(&c);
    return 0;
}

typedef struct {
    size_t n;
} outcomes;

static void on_outcome(const char *mid, ref_err outcome, const char *detail, void *ctx)
{
    outcomes *o = ctx;
    o->n++;
    printf("{\"outcome\": \"%s\", \"code\": %d, \"message_id\": \"%s\", \"detail\": "
           "\"%.100s\"}\n", ref_strerror(outcome), (int)outcome, mid, detail);
    fflush(stdout);
}

static int run_send_async(const char *to, long n)
{
    ref_client *c = connect_from_env();
    if (c == NULL)
        return 1;
    outcomes o = {0};
    ref_client_set_outcome_fn(c, on_outcome, &o);
    for (long i = 0; i < n; i++) {
        ref_referral r = {.to_agency = to, .urgency = REF_URGENCY_CRISIS,
                          .category = REF_CATEGORY_PSYCHOLOGICAL_SUPPORT,
                          .narrative = "pipelined by lib_agent"};
        ref_err e = ref_send_async(c, &r, NULL, NULL);
        if (e != REF_OK) {
            fprintf(stderr, "lib_agent: send %ld: %s\n", i, ref_strerror(e));
            ref_client_destroy(&c);
            return 1;
        }
    }
    for (int tick = 0; tick < 300 && (long)o.n < n; tick++) {
        struct pollfd p = {.fd = ref_client_fd(c), .events = POLLIN};
        poll(&p, 1, 100);
        ref_pump(c);
    }
    ref_client_destroy(&c);
    return (long)o.n == n ? 0 : 1;
}

static int run_send_and_idle(const char *to, long seconds)
{
    ref_client *c = connect_from_env();
    if (c == NULL)
        return 1;
    ref_referral r = {.to_agency = to, .urgency = REF_URGENCY_CRISIS,
                      .category = REF_CATEGORY_PSYCHOLOGICAL_SUPPORT,
                      .narrative = "sent by an application that then does other work"};
    char mid[REF_ID_HEX_LEN + 1] = "";
    ref_err e = ref_send_async(c, &r, mid, NULL);
    printf("{\"result\": \"%s\", \"code\": %d, \"message_id\": \"%s\"}\n", ref_strerror(e),
           (int)e, mid);
    fflush(stdout);
    struct timespec ts = {.tv_sec = seconds, .tv_nsec = 0};
    nanosleep(&ts, NULL);   /* no pump: what was sent must already be on its way */
    ref_client_destroy(&c);
    return e == REF_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "send-and-idle") == 0)
        return run_send_and_idle(argv[2], strtol(argv[3], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "send-async") == 0)
        return run_send_async(argv[2], strtol(argv[3], NULL, 10));
    if ((argc == 6 || argc == 7) && strcmp(argv[1], "receive") == 0)
        return run_receive(argv[2], argv[3], strtol(argv[4], NULL, 10),
                           strtol(argv[5], NULL, 10), argc == 7 ? strtol(argv[6], NULL, 10) : 0);
    if (argc == 3 && strcmp(argv[1], "send") == 0)
        return run_send(argv[2]);
    fprintf(stderr, "usage: lib_agent receive OUT STEP N IDLE_MS [COUNT] | lib_agent send TO | "
            "lib_agent send-async TO N | lib_agent send-and-idle TO SECONDS\n");
    return 2;
}
