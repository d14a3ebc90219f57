/*
 * w3_agent: the agency application of benchmark W3 (w3_federation.py), on
 * libreferral. It takes each referral as ref_receive() hands it over (the
 * library has stored it durably and settled it with the broker: the
 * hand-over), notes the CLOCK_MONOTONIC time in microseconds, confirms it
 * (ref_delivery_done) and goes on.
 *
 *   w3_agent COUNT IDLE_MS CREDIT
 *
 * Stops after COUNT referrals, or after IDLE_MS with nothing received,
 * then prints one line per referral, "MESSAGE_ID MONO_US", in arrival
 * order (printing at the end keeps stdout out of the measured path).
 * Connection from the environment, as referral-desk: REFERRAL_AGENCY,
 * REFERRAL_KEYS, REFERRAL_DIRECTORY, REFERRAL_ROOT, REFERRAL_BROKER,
 * REFERRAL_ENDPOINT (optional), REFERRAL_STATE. A benchmark tool: never
 * run in CI.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "referral.h"

typedef struct {
    char message_id[REF_ID_HEX_LEN + 1];
    unsigned long long mono_us;
} arrival;

static unsigned long long mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000u;
}

static void on_log(ref_log_level level, const char *line, void *ctx)
{
    (void)ctx;
    if (level <= REF_LOG_WARN)
        fprintf(stderr, "w3_agent: %s\n", line);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: w3_agent COUNT IDLE_MS CREDIT\n");
        return 2;
    }
    long count = atol(argv[1]), idle_ms = atol(argv[2]), credit = atol(argv[3]);
    if (count < 1 || idle_ms < 1 || credit < 1) {
        fprintf(stderr, "w3_agent: COUNT, IDLE_MS and CREDIT must be positive\n");
        return 2;
    }
    arrival *got = calloc((size_t)count, sizeof *got);
    ref_config cfg = {
        .agency_id = getenv("REFERRAL_AGENCY"),
        .key_dir = getenv("REFERRAL_KEYS"),
        .directory = getenv("REFERRAL_DIRECTORY"),
        .trust_root = getenv("REFERRAL_ROOT"),
        .broker_id = getenv("REFERRAL_BROKER"),
        .endpoint = getenv("REFERRAL_ENDPOINT"),
        .state_dir = getenv("REFERRAL_STATE"),
        .timeout_ms = 10000,
        .credit = (uint32_t)credit,
        .log = on_log,
    };
    ref_client *c = NULL;
    char detail[700];
    ref_err e = got == NULL ? REF_E_NO_MEMORY : ref_client_new(&cfg, &c, detail, sizeof detail);
    if (e != REF_OK) {
        fprintf(stderr, "w3_agent: cannot connect: %s: %s\n", ref_strerror(e),
                got == NULL ? "" : detail);
        free(got);
        return 1;
    }
    fprintf(stderr, "w3_agent: ready\n");
    long n = 0, quiet_ms = 0;
    int rc = 0;
    while (n < count && quiet_ms < idle_ms) {
        ref_delivery *d = NULL;
        e = ref_receive(c, 100, &d);
        if (e == REF_E_AGAIN) {
            quiet_ms += 100;
            continue;
        }
        if (e != REF_OK) {
            fprintf(stderr, "w3_agent: receive: %s\n", ref_strerror(e));
            rc = 1;
            break;
        }
        quiet_ms = 0;
        if (ref_delivery_kind_of(d) == REF_DELIVERY_REFERRAL) {
            got[n].mono_us = mono_us();
            snprintf(got[n].message_id, sizeof got[n].message_id, "%s",
                     ref_delivery_message_id(d));
            n++;
        }
        if (ref_delivery_done(c, d) != REF_OK)
            rc = 1;
        ref_delivery_destroy(&d);
    }
    ref_client_destroy(&c);
    for (long i = 0; i < n; i++)
        printf("%s %llu\n", got[i].message_id, got[i].mono_us);
    free(got);
    return rc;
}
