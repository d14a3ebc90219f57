/*
 * referral-trace: a referral's path, acknowledgements and escalations
 * across the federation, as one timeline (docs/operations.md,
 * "referral-trace").
 *
 * It asks the local broker over its operators' socket (admin.h): the
 * broker gathers the referral's events from every broker the referral
 * touched, over the federation links, and answers with them in time order.
 * Output: a table for an 80-column terminal, --json (the broker's stable
 * shape plus elapsed_ms per event), or --dot (a Graphviz picture of the
 * path). --follow asks again every second and prints what is new, until
 * the referral is closed, undeliverable or withdrawn everywhere, or
 * --timeout-s passes.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "admin_client.h"
#include "ids.h"
#include "ref_version.h"

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: referral-trace [OPTIONS] REFERRAL_ID\n"
        "\n"
        "Print a referral's timeline across every broker it touched: time, broker,\n"
        "event, agency, elapsed time since it was first stored. The local broker\n"
        "gathers the events over its federation links; brokers that do not answer\n"
        "in time are named (their events are missing, never hidden).\n"
        "\n"
        "Options:\n"
        "  --socket PATH     the broker's operators' socket ([admin] socket; default\n"
        "                    DATA_DIR/admin.sock, from --config)\n"
        "  --config FILE     read the socket's place from this referrald.ini\n"
        "  --operator NAME   who asks, for the brokers' logs (default: the login name)\n"
        "  --json            the broker's JSON (stable shape), elapsed_ms added\n"
        "  --dot             a Graphviz picture of the path on standard output\n"
        "                    (referral-trace --dot ID | dot -Tpng > path.png)\n"
        "  --follow          ask again every second and print new events until the\n"
        "                    referral is closed, undeliverable or withdrawn\n"
        "  --timeout-s N     --follow stops after N seconds (default 3600)\n"
        "  --help, --version\n"
        "\n"
        "Events: SUBMITTED ACCEPTED RELAYED DELIVERED (handed to a client),\n"
        "ACKNOWLEDGED (settled by a client), LEVEL (an acknowledgement level an\n"
        "agency or broker asserted: DELIVERED RECEIVED ACCEPTED_BY_AGENCY REJECTED\n"
        "ACTION_TAKEN CLOSED), WATCHING (an escalation, or the origin's watchdog,\n"
        "began), ESCALATED (a policy step: copied, alerted, or not\n"
        "needed), STOOD_DOWN, WITHDRAWN, REDELIVERED, EXPIRED (undeliverable),\n"
        "REJECTED, QUARANTINED. Names of the people who acknowledged are in the\n"
        "sealed receipts, which only the desk can open (referral-desk listen).\n"
        "\n"
        "Exit status: 0 shown; 1 the broker refused (the reason on standard error);\n"
        "2 usage; 3 the broker could not be reached.\n");
}

/* [broker] data_dir and [admin] socket of an ini file (a small reader:
 * referrald itself checks the file). */
static bool socket_from_config(const char *path, char *out, size_t len)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    char line[700], section[64] = "", data_dir[600] = "", sock[600] = "";
    while (fgets(line, sizeof line, f) != NULL) {
        char *p = line + strspn(line, " \t");
        p[strcspn(p, "\r\n")] = '\0';
        if (*p == '[') {
            snprintf(section, sizeof section, "%.*s", (int)strcspn(p + 1, "]"), p + 1);
            continue;
        }
        char *eq = strchr(p, '=');
        if (*p == ';' || *p == '#' || eq == NULL)
            continue;
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)strcspn(p, " \t="), p);
        char *v = eq + 1 + strspn(eq + 1, " \t");
        if (strcmp(section, "broker") == 0 && strcmp(key, "data_dir") == 0)
            snprintf(data_dir, sizeof data_dir, "%s", v);
        else if (strcmp(section, "admin") == 0 && strcmp(key, "socket") == 0)
            snprintf(sock, sizeof sock, "%s", v);
    }
    fclose(f);
    if (sock[0] != '\0')
        snprintf(out, len, "%s", sock);
    else if (data_dir[0] != '\0')
        snprintf(out, len, "%s/admin.sock", data_dir);
    else
        return false;
    return true;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

static int64_t jint(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

/* "level RECEIVED asserted by qd.youth-league" -> "RECEIVED" */
static const char *event_name(json_object *e, char *buf, size_t len)
{
    const char *kind = jstr(e, "kind");
    const char *detail = jstr(e, "detail");
    if (strcmp(kind, "LEVEL") == 0 && strncmp(detail, "level ", 6) == 0) {
        snprintf(buf, len, "%.*s", (int)strcspn(detail + 6, " "), detail + 6);
        return buf;
    }
    if (strcmp(kind, "LEVEL") == 0 && strstr(detail, "watching") != NULL)
        return "WATCHING";   /* an escalation or the origin's watchdog began */
    return kind;
}

static void format_time(int64_t at_ms, char *out, size_t len)
{
    time_t t = (time_t)(at_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char hms[16];
    strftime(hms, sizeof hms, "%H:%M:%S", &tm);
    snprintf(out, len, "%s.%03d", hms, (int)(at_ms % 1000));
}

static void format_elapsed(int64_t ms, char *out, size_t len)
{
    if (ms < 60000)
        snprintf(out, len, "+%" PRId64 ".%03" PRId64 "s", ms / 1000, ms % 1000);
    else if (ms < 3600000)
        snprintf(out, len, "+%" PRId64 "m%02" PRId64 "s", ms / 60000, ms % 60000 / 1000);
    else
        snprintf(out, len, "+%" PRId64 "h%02" PRId64 "m", ms / 3600000, ms % 3600000 / 60000);
}

/* Shorten a broker id to its last part for the table ("broker.qingdao"
 * -> "qingdao"). */
static const char *short_broker(const char *id)
{
    const char *dot = strrchr(id, '.');
    return dot != NULL && dot[1] != '\0' ? dot + 1 : id;
}

static void print_header(const char *referral_id, json_object *r)
{
    printf("referral %s\n", referral_id);
    json_object *brokers, *unanswered;
    if (json_object_object_get_ex(r, "brokers", &brokers)) {
        printf("brokers:");
        for (size_t i = 0; i < json_object_array_length(brokers); i++)
            printf(" %s", json_object_get_string(json_object_array_get_idx(brokers, i)));
        printf("\n");
    }
    if (json_object_object_get_ex(r, "unanswered", &unanswered) &&
        json_object_array_length(unanswered) > 0) {
        printf("NOT ANSWERING (their events are missing):");
        for (size_t i = 0; i < json_object_array_length(unanswered); i++)
            printf(" %s", json_object_get_string(json_object_array_get_idx(unanswered, i)));
        printf("\n");
    }
    printf("%-12s %-8s %-9s %-18s %s\n", "TIME (UTC)", "ELAPSED", "BROKER", "EVENT",
           "FROM>TO (agency/broker)");
}

/* Events whose detail a person needs: printed on a second line. */
static bool is_told(const char *kind)
{
    static const char *const told[] = {"ESCALATED", "STOOD_DOWN", "WITHDRAWN", "REJECTED",
                                       "EXPIRED", "REFUSED", "QUARANTINED"};
    for (size_t i = 0; i < sizeof told / sizeof told[0]; i++)
        if (strcmp(kind, told[i]) == 0)
            return true;
    return false;
}

/* One row within 80 columns; the detail of an escalation, a stand-down, a
 * withdrawal, a rejection or an expiry on the next line, indented and cut
 * to the width ("~" marks a cut). */
static void print_row(json_object *e, int64_t first_ms)
{
    char when[64], elapsed[64], name[32];
    format_time(jint(e, "at_ms"), when, sizeof when);
    format_elapsed(jint(e, "at_ms") - first_ms, elapsed, sizeof elapsed);
    char route[160];
    snprintf(route, sizeof route, "%s>%s", jstr(e, "from"), jstr(e, "agency"));
    printf("%-12s %-8s %-9.9s %-18.18s %.29s\n", when, elapsed,
           short_broker(jstr(e, "broker")), event_name(e, name, sizeof name), route);
    const char *detail = jstr(e, "detail");
    if (is_told(jstr(e, "kind")) && detail[0] != '\0')
        printf("    %.75s%s\n", detail, strlen(detail) > 75 ? "~" : "");
}

static bool is_end(json_object *e)
{
    char name[32];
    const char *n = event_name(e, name, sizeof name);
    return strcmp(n, "CLOSED") == 0 || strcmp(n, "EXPIRED") == 0;
}

/* Graphviz: brokers (boxes) and agencies (ellipses); an edge per message
 * move (who sent, where it went), receipts dashed, escalations red. */
static void print_dot(const char *referral_id, json_object *events)
{
    printf("digraph referral {\n  rankdir=LR;\n  label=\"referral %s\";\n"
           "  node [fontname=\"sans\"];\n", referral_id);
    size_t n = json_object_array_length(events);
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(events, i);
        const char *broker = jstr(e, "broker"), *agency = jstr(e, "agency"),
                   *from = jstr(e, "from"), *kind = jstr(e, "kind");
        printf("  \"%s\" [shape=box];\n", broker);
        char name[32];
        const char *ev = event_name(e, name, sizeof name);
        if (strcmp(kind, "ACCEPTED") == 0 && from[0] != '\0')
            printf("  \"%s\" -> \"%s\" [label=\"submitted\"];\n", from, broker);
        else if (strcmp(kind, "RELAYED") == 0 && agency[0] != '\0')
            printf("  \"%s\" -> \"%s\" [label=\"relayed\"];\n", broker, agency);
        else if (strcmp(kind, "DELIVERED") == 0 && agency[0] != '\0')
            printf("  \"%s\" -> \"%s\" [label=\"delivered\"];\n", broker, agency);
        else if (strcmp(kind, "LEVEL") == 0 && agency[0] != '\0')
            printf("  \"%s\" -> \"%s\" [label=\"%s\", style=dashed];\n", agency, broker, ev);
        else if ((strcmp(kind, "ESCALATED") == 0 || strcmp(kind, "STOOD_DOWN") == 0 ||
                  strcmp(kind, "WITHDRAWN") == 0) && agency[0] != '\0')
            printf("  \"%s\" -> \"%s\" [label=\"%s\", color=red, fontcolor=red];\n", broker,
                   agency, strcmp(kind, "ESCALATED") == 0 ? "escalated" : ev);
    }
    printf("}\n");
}

typedef struct {
    admin_call_spec spec;
    const char *referral_hex;
    bool is_json, is_dot;
} options;

/* Ask once; *r gets the answer. Returns an exit status (EXIT_OK: *r set). */
static int ask(const options *o, json_object **r)
{
    Referral__V1__ResultCode code;
    char detail[600];
    if (admin_call(&o->spec, &code, detail, sizeof detail, r) != 0) {
        fprintf(stderr, "referral-trace: %s\n", detail);
        return EXIT_UNREACHABLE;
    }
    if (code != REFERRAL__V1__RESULT_CODE__RESULT_OK) {
        fprintf(stderr, "referral-trace: the broker refused: %s\n", detail);
        json_object_put(*r);
        *r = NULL;
        return EXIT_FAILED;
    }
    if (detail[0] != '\0')
        fprintf(stderr, "referral-trace: %s\n", detail);
    return EXIT_OK;
}

static int64_t first_at(json_object *events)
{
    return json_object_array_length(events) > 0
               ? jint(json_object_array_get_idx(events, 0), "at_ms") : 0;
}

static int show_once(const options *o)
{
    json_object *r;
    int rc = ask(o, &r);
    if (rc != EXIT_OK)
        return rc;
    json_object *events;
    if (!json_object_object_get_ex(r, "events", &events)) {
        fprintf(stderr, "referral-trace: the broker's answer has no events\n");
        json_object_put(r);
        return EXIT_FAILED;
    }
    int64_t first = first_at(events);
    size_t n = json_object_array_length(events);
    if (o->is_json) {
        for (size_t i = 0; i < n; i++) {
            json_object *e = json_object_array_get_idx(events, i);
            json_object_object_add(e, "elapsed_ms", json_object_new_int64(jint(e, "at_ms") -
                                                                          first));
        }
        printf("%s\n", json_object_to_json_string_ext(r, JSON_C_TO_STRING_PLAIN));
    } else if (o->is_dot) {
        print_dot(o->referral_hex, events);
    } else {
        print_header(o->referral_hex, r);
        for (size_t i = 0; i < n; i++)
            print_row(json_object_array_get_idx(events, i), first);
        if (n == 0)
            printf("(no events: unknown here and at every broker asked, or removed after "
                   "retention)\n");
    }
    json_object_put(r);
    return EXIT_OK;
}

static int follow(const options *o, int timeout_s)
{
    size_t shown = 0;
    bool is_header_shown = false;
    time_t until = time(NULL) + timeout_s;
    for (;;) {
        json_object *r;
        int rc = ask(o, &r);
        if (rc != EXIT_OK)
            return rc;
        json_object *events;
        bool is_done = false;
        if (json_object_object_get_ex(r, "events", &events)) {
            if (!is_header_shown) {
                print_header(o->referral_hex, r);
                is_header_shown = true;
            }
            size_t n = json_object_array_length(events);
            /* Events only ever add up (each broker's in order); a broker
             * answering late can insert earlier ones: they print late. */
            for (size_t i = shown; i < n; i++) {
                json_object *e = json_object_array_get_idx(events, i);
                print_row(e, first_at(events));
                is_done |= is_end(e);
            }
            shown = n > shown ? n : shown;
            fflush(stdout);
        }
        json_object_put(r);
        if (is_done)
            return EXIT_OK;
        if (time(NULL) >= until) {
            fprintf(stderr, "referral-trace: still open after %d s; stopped following\n",
                    timeout_s);
            return EXIT_OK;
        }
        struct timespec second = {1, 0};
        nanosleep(&second, NULL);
    }
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'}, {"config", required_argument, NULL, 'c'},
        {"operator", required_argument, NULL, 'o'}, {"json", no_argument, NULL, 'j'},
        {"dot", no_argument, NULL, 'd'}, {"follow", no_argument, NULL, 'f'},
        {"timeout-s", required_argument, NULL, 't'}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0}};
    options o = {.spec = {.command = "trace", .timeout_ms = 15000}};
    char sock[700] = "";
    bool is_follow = false;
    int timeout_s = 3600, opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 's': snprintf(sock, sizeof sock, "%s", optarg); break;
        case 'c':
            if (!socket_from_config(optarg, sock, sizeof sock)) {
                fprintf(stderr, "referral-trace: cannot read [broker] data_dir or [admin] "
                        "socket from %s\n", optarg);
                return EXIT_USAGE;
            }
            break;
        case 'o': o.spec.operator_name = optarg; break;
        case 'j': o.is_json = true; break;
        case 'd': o.is_dot = true; break;
        case 'f': is_follow = true; break;
        case 't': timeout_s = atoi(optarg); break;
        case 'h': usage(stdout); return EXIT_OK;
        case 'V': printf("referral-trace %s\n", REF_VERSION); return EXIT_OK;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    uint8_t id[IDS_BYTES];
    if (optind + 1 != argc || !ids_from_hex(argv[optind], id)) {
        fprintf(stderr, "referral-trace: give one referral id (32 hex digits)\n");
        usage(stderr);
        return EXIT_USAGE;
    }
    if (sock[0] == '\0') {
        fprintf(stderr, "referral-trace: say where the broker's operators' socket is: "
                "--socket PATH or --config referrald.ini\n");
        return EXIT_USAGE;
    }
    if ((o.is_json && o.is_dot) || (is_follow && (o.is_json || o.is_dot)) || timeout_s <= 0) {
        fprintf(stderr, "referral-trace: --json, --dot and --follow go one at a time, and "
                "--timeout-s takes a positive number\n");
        return EXIT_USAGE;
    }
    o.spec.socket_path = sock;
    o.spec.id = id;
    o.referral_hex = argv[optind];
    return is_follow ? follow(&o, timeout_s) : show_once(&o);
}
