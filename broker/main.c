/*
 * referrald: one region's referral broker. main() reads the arguments and
 * the configuration, sets the signal handlers, starts the broker
 * (broker_open in broker.c: store, keys and directory, in-flight
 * deliveries back to their queues, ZAP, then the client socket), runs the
 * loop, and closes everything on SIGTERM or SIGINT after the turn in
 * progress has committed.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "broker.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "ref_version.h"

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
    config cfg;
    memset(&cfg, 0, sizeof cfg);
    char err[512];
    if (!config_load(path, &cfg, err, sizeof err)) {
        fprintf(stderr, "referrald: %s\n", err);
        return BROKER_EXIT_USAGE;
    }
    if (is_check_only) {
        printf("configuration %s is valid (broker %s)\n", path, cfg.id);
        return BROKER_EXIT_OK;
    }
    log_set_level(cfg.log_level);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    broker b;
    int rc = broker_open(&b, &cfg);
    b.stop = &stop_requested;
    b.reload = &reload_requested;
    if (rc == BROKER_EXIT_OK && !metrics_start(&b.cfg))
        rc = BROKER_EXIT_TRANSPORT;
    if (rc == BROKER_EXIT_OK)
        rc = loop_run(&b);   /* it says "started" once every socket is open */
    metrics_stop();
    broker_close(&b);
    log_info("main", "stopped broker=%s status=%d", b.cfg.id, rc);
    return rc;
}
