/*
 * referralctl_admin: the admin commands of referralctl
 * (referralctl_admin.h). One request per run through admin_client.h; the
 * broker's JSON is printed as it came (--json) or as tables readable on 80
 * columns. This file never changes the broker's state except by the
 * actions the operator names, each with a reason.
 */
#include "referralctl_admin.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>
#include <json-c/json.h>

#include "admin_client.h"
#include "ids.h"
#include "utf8.h"

#define TIMEOUT_MS 10000

static const char *const commands[] = {"status", "queues", "oldest", "peers", "undeliverable",
                                       "expired", "show", "hold", "release", "requeue",
                                       "expire"};
static const char *const global_opts[] = {"--socket", "--config", "--operator", "--json",
                                          "--limit", "--reason", "--timeout-ms"};

static bool is_in(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, list[i]) == 0 || (list[i][0] == '-' && strncmp(s, list[i], strlen(list[i])) == 0 &&
                                        s[strlen(list[i])] == '='))
            return true;
    return false;
}

bool ctl_admin_is_command(const char *name)
{
    return is_in(name, commands, sizeof commands / sizeof commands[0]) ||
           is_in(name, global_opts, sizeof global_opts / sizeof global_opts[0]);
}

static bool is_action(const char *c)
{
    return strcmp(c, "hold") == 0 || strcmp(c, "release") == 0 || strcmp(c, "requeue") == 0 ||
           strcmp(c, "expire") == 0;
}

void ctl_admin_usage(FILE *f)
{
    fprintf(f,
        "  referralctl [--socket PATH | --config FILE] [--operator NAME] [--json]\n"
        "              status | queues | oldest [--limit N] | peers\n"
        "              | undeliverable [--limit N] | expired [--limit N] | show ID\n"
        "              | hold ID --reason TEXT | release ID --reason TEXT\n"
        "              | requeue ID --reason TEXT | expire ID --reason TEXT\n");
}

/* ---- the socket's path ------------------------------------------------- */

typedef struct {
    char data_dir[512];
    char socket[512];
} ini_paths;

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
    ini_paths *p = user;
    if (strcmp(section, "broker") == 0 && strcmp(name, "data_dir") == 0)
        utf8_copy_cut(p->data_dir, sizeof p->data_dir, value, sizeof p->data_dir - 1);
    else if (strcmp(section, "admin") == 0 && strcmp(name, "socket") == 0)
        utf8_copy_cut(p->socket, sizeof p->socket, value, sizeof p->socket - 1);
    return 1;
}

/* The socket named by --config: [admin] socket, else admin.sock in
 * [broker] data_dir. False with a message on stderr. */
static bool socket_from_config(const char *file, char *out, size_t len)
{
    ini_paths p = {{0}, {0}};
    int rc = ini_parse(file, on_ini, &p);
    if (rc != 0) {
        fprintf(stderr, "referralctl: cannot read %s (%s); give the broker's referrald.ini or "
                "--socket PATH\n", file, rc < 0 ? "cannot open it" : "not an ini file");
        return false;
    }
    if (p.socket[0] != '\0')
        snprintf(out, len, "%s", p.socket);
    else if (p.data_dir[0] != '\0')
        snprintf(out, len, "%s/admin.sock", p.data_dir);
    else {
        fprintf(stderr, "referralctl: %s names neither [admin] socket nor [broker] data_dir\n",
                file);
        return false;
    }
    return true;
}

/* ---- printing ------------------------------------------------------------ */

static json_object *get(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) ? v : NULL;
}

static const char *str(json_object *o, const char *key)
{
    json_object *v = get(o, key);
    return v != NULL && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "-";
}

static int64_t num(json_object *o, const char *key)
{
    json_object *v = get(o, key);
    return v != NULL ? json_object_get_int64(v) : 0;
}

static bool flag(json_object *o, const char *key)
{
    json_object *v = get(o, key);
    return v != NULL && json_object_get_boolean(v);
}

/* A duration for people: 45s, 5m02s, 3h04m, 2d03h. */
static const char *age(int64_t ms, char *buf, size_t len)
{
    int64_t s = ms < 0 ? 0 : ms / 1000;
    if (s < 60)
        snprintf(buf, len, "%" PRId64 "s", s);
    else if (s < 3600)
        snprintf(buf, len, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, len, "%" PRId64 "h%02" PRId64 "m", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, len, "%" PRId64 "d%02" PRId64 "h", s / 86400, s % 86400 / 3600);
    return buf;
}

static void print_status(json_object *j)
{
    printf("broker          %s\n", str(j, "broker"));
    printf("version         %s\n", str(j, "version"));
    printf("sessions        %" PRId64 "\n", num(j, "sessions"));
    printf("store used      %" PRId64 " of %" PRId64 " bytes\n", num(j, "store_used_bytes"),
           num(j, "store_map_bytes"));
}

static void print_counts(const char *label, json_object *row, json_object *buckets)
{
    printf("%-22.22s %6" PRId64 " %5" PRId64 " %6" PRId64, label, num(row, "total"),
           num(row, "held"), num(row, "in_flight"));
    for (size_t i = 0; i < json_object_array_length(buckets); i++)
        printf(" %6" PRId64, json_object_get_int64(json_object_array_get_idx(buckets, i)));
    printf("\n");
}

static void print_queues(json_object *j)
{
    json_object *names = get(j, "buckets");
    printf("%-22s %6s %5s %6s", "RECIPIENT", "TOTAL", "HELD", "FLIGHT");
    for (size_t i = 0; names != NULL && i < json_object_array_length(names); i++)
        printf(" %6s", json_object_get_string(json_object_array_get_idx(names, i)));
    printf("\n");
    json_object *total = get(j, "total");
    if (total != NULL)
        print_counts("TOTAL", total, get(total, "by_age"));
    json_object *rows = get(j, "recipients");
    for (size_t i = 0; rows != NULL && i < json_object_array_length(rows); i++) {
        json_object *r = json_object_array_get_idx(rows, i);
        char label[40];
        snprintf(label, sizeof label, "%s%s", str(r, "recipient"), flag(r, "is_peer") ? "*" : "");
        print_counts(label, r, get(r, "by_age"));
        json_object *by = get(r, "by_urgency");
        json_object_object_foreach(by, urgency, counts) {
            int64_t n = 0;
            for (size_t k = 0; k < json_object_array_length(counts); k++)
                n += json_object_get_int64(json_object_array_get_idx(counts, k));
            if (n == 0)
                continue;
            printf("  %-20.20s %6" PRId64 " %5s %6s", urgency, n, "", "");
            for (size_t k = 0; k < json_object_array_length(counts); k++)
                printf(" %6" PRId64, json_object_get_int64(json_object_array_get_idx(counts, k)));
            printf("\n");
        }
    }
    if (rows != NULL && json_object_array_length(rows) > 0)
        printf("(* a peer broker's queue; ages since the sender created each message)\n");
    if (flag(j, "is_truncated"))
        printf("(counted the first %" PRId64 " entries only)\n", num(j, "scanned"));
}

static void print_messages(json_object *j, const char *time_label, const char *time_key)
{
    json_object *rows = get(j, "messages");
    size_t n = rows != NULL ? json_object_array_length(rows) : 0;
    printf("%-32s %-7s %-13s %5s %s\n", "MESSAGE", time_label, "STATE", "TRIES", "RECIPIENT");
    int64_t now = num(j, "now_ms");
    for (size_t i = 0; i < n; i++) {
        json_object *m = json_object_array_get_idx(rows, i);
        char a[48], state[32];
        int64_t t = strcmp(time_key, "age_ms") == 0 ? num(m, "age_ms") : now - num(m, time_key);
        snprintf(state, sizeof state, "%s", flag(m, "is_held") ? "held" : str(m, "state"));
        printf("%-32s %-7s %-13s %5" PRId64 " %.20s\n", str(m, "message_id"), age(t, a, sizeof a),
               state, num(m, "attempts"), str(m, "recipient"));
        printf("  referral %s from %.20s, %s\n", str(m, "referral_id"), str(m, "sender"),
               str(m, "urgency"));
    }
    printf("%zu shown of %" PRId64 "%s\n", n, num(j, "count"),
           flag(j, "is_truncated") ? " (scan stopped at its limit)" : "");
}

static void print_peers(json_object *j)
{
    json_object *rows = get(j, "peers");
    size_t n = rows != NULL ? json_object_array_length(rows) : 0;
    printf("%-24s %-10s %9s %8s %5s %s\n", "PEER", "STATE", "IN FLIGHT", "QUEUED", "HELD",
           "LAST HEARD");
    for (size_t i = 0; i < n; i++) {
        json_object *p = json_object_array_get_idx(rows, i);
        char flight[48], heard[64], a[48];
        snprintf(flight, sizeof flight, "%" PRId64 "/%" PRId64, num(p, "in_flight"),
                 num(p, "window"));
        json_object *h = get(p, "last_heard_ms_ago");
        snprintf(heard, sizeof heard, "%s%s", h != NULL ? age(json_object_get_int64(h), a,
                 sizeof a) : "never", h != NULL ? " ago" : "");
        printf("%-24.24s %-10s %9s %8" PRId64 " %5" PRId64 " %s\n", str(p, "peer"),
               str(p, "state"), flight, num(p, "queued"), num(p, "frames_held"), heard);
    }
    if (n == 0)
        printf("(no peer brokers configured)\n");
}

static void print_show(json_object *j)
{
    json_object *m = get(j, "message");
    char a[48];
    int64_t now = num(j, "now_ms");
    printf("message      %s\n", str(m, "message_id"));
    printf("referral     %s\n", str(m, "referral_id"));
    printf("kind         %s, %s\n", str(m, "kind"), str(m, "urgency"));
    printf("from         %s\n", str(m, "sender"));
    printf("to           %s%s\n", str(m, "recipient"),
           flag(j, "is_recipient_peer") ? " (a peer broker)" : "");
    printf("state        %s%s\n", str(m, "state"), flag(m, "is_held") ? " (held)" : "");
    printf("attempts     %" PRId64 "\n", num(m, "attempts"));
    printf("created      %s ago\n", age(num(m, "age_ms"), a, sizeof a));
    int64_t exp = num(m, "expires_at_ms") - now;
    printf("expires      %s%s%s\n", exp < 0 ? "" : "in ", age(exp < 0 ? -exp : exp, a, sizeof a),
           exp < 0 ? " ago" : "");
    printf("updated      %s ago\n", age(now - num(m, "updated_at_ms"), a, sizeof a));
    json_object *held = get(j, "held");
    if (held != NULL)
        printf("held         %s ago by %s: %s\n", age(now - num(held, "held_at_ms"), a, sizeof a),
               str(held, "operator"), str(held, "reason"));
    if (get(j, "return_due_at_ms") != NULL)
        printf("returns in   %s unless settled\n", age(num(j, "return_due_at_ms") - now, a,
                                                     sizeof a));
    printf("body         %s\n", flag(j, "has_body") ? "stored (sealed)" : "gone");
    printf("escalation   %s\n", flag(j, "has_escalation") ? "running" : "none");
    json_object *r = get(j, "referral");
    if (r != NULL) {
        printf("sent by      %s\n", str(r, "sender"));
        json_object *to = get(r, "addressed");
        printf("addressed   ");
        for (size_t i = 0; to != NULL && i < json_object_array_length(to); i++)
            printf(" %s", json_object_get_string(json_object_array_get_idx(to, i)));
        printf("\n");
    }
}

static void print_action(json_object *j)
{
    json_object *m = get(j, "message");
    printf("%s %s: was %s, now %s%s (operator %s)\n", str(j, "action"), str(m, "message_id"),
           str(j, "before"), str(m, "state"), flag(m, "is_held") ? ", held" : "",
           str(j, "operator"));
}

static void print_human(const char *command, json_object *j)
{
    if (strcmp(command, "status") == 0)
        print_status(j);
    else if (strcmp(command, "queues") == 0)
        print_queues(j);
    else if (strcmp(command, "oldest") == 0)
        print_messages(j, "AGE", "age_ms");
    else if (strcmp(command, "undeliverable") == 0)
        print_messages(j, "ENDED", "updated_at_ms");
    else if (strcmp(command, "expired") == 0)
        print_messages(j, "EXPIRED", "expires_at_ms");
    else if (strcmp(command, "peers") == 0)
        print_peers(j);
    else if (strcmp(command, "show") == 0)
        print_show(j);
    else
        print_action(j);
}

/* ---- the command line ------------------------------------------------------ */

int ctl_admin_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'}, {"config", required_argument, NULL, 'c'},
        {"operator", required_argument, NULL, 'o'}, {"json", no_argument, NULL, 'j'},
        {"limit", required_argument, NULL, 'l'}, {"reason", required_argument, NULL, 'r'},
        {"timeout-ms", required_argument, NULL, 't'}, {NULL, 0, NULL, 0}};
    const char *socket_path = NULL, *config = NULL, *op = NULL, *reason = NULL;
    bool is_json = false;
    unsigned long limit = 0, timeout_ms = TIMEOUT_MS;
    char *end;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's': socket_path = optarg; break;
        case 'c': config = optarg; break;
        case 'o': op = optarg; break;
        case 'j': is_json = true; break;
        case 'r': reason = optarg; break;
        case 'l':
            limit = strtoul(optarg, &end, 10);
            if (*end != '\0' || limit == 0 || limit > 1000) {
                fprintf(stderr, "referralctl: --limit takes 1 to 1000\n");
                return CTL_EXIT_USAGE;
            }
            break;
        case 't':
            timeout_ms = strtoul(optarg, &end, 10);
            if (*end != '\0' || timeout_ms == 0 || timeout_ms > 600000) {
                fprintf(stderr, "referralctl: --timeout-ms takes 1 to 600000\n");
                return CTL_EXIT_USAGE;
            }
            break;
        default: return CTL_EXIT_USAGE;
        }
    }
    if (optind >= argc || !is_in(argv[optind], commands, sizeof commands / sizeof commands[0])) {
        fprintf(stderr, "referralctl: name a command: status, queues, oldest, peers, "
                "undeliverable, expired, show, hold, release, requeue, expire\n");
        return CTL_EXIT_USAGE;
    }
    const char *command = argv[optind++];
    bool needs_id = strcmp(command, "show") == 0 || is_action(command);
    uint8_t id[IDS_BYTES];
    if (needs_id && (optind >= argc || !ids_from_hex(argv[optind], id))) {
        fprintf(stderr, "referralctl %s: give the message id (32 hex digits, as referralctl "
                "oldest or the trace shows it)\n", command);
        return CTL_EXIT_USAGE;
    }
    optind += needs_id;
    if (optind < argc) {
        fprintf(stderr, "referralctl %s: unexpected argument %s\n", command, argv[optind]);
        return CTL_EXIT_USAGE;
    }
    if (is_action(command) && (reason == NULL || reason[0] == '\0')) {
        fprintf(stderr, "referralctl %s: say why with --reason TEXT (it goes into the "
                "referral's trace with your name)\n", command);
        return CTL_EXIT_USAGE;
    }
    if (op != NULL && !ids_is_valid_name(op)) {
        fprintf(stderr, "referralctl: --operator takes a name of 1-64 letters, digits, '.', "
                "'-' or '_'\n");
        return CTL_EXIT_USAGE;
    }
    char path[600];
    if (socket_path == NULL && config == NULL) {
        fprintf(stderr, "referralctl %s: say where the broker is: --socket PATH (its [admin] "
                "socket) or --config referrald.ini\n", command);
        return CTL_EXIT_USAGE;
    }
    if (socket_path != NULL)
        snprintf(path, sizeof path, "%s", socket_path);
    else if (!socket_from_config(config, path, sizeof path))
        return CTL_EXIT_USAGE;

    admin_call_spec spec = {
        .socket_path = path, .command = command, .id = needs_id ? id : NULL,
        .limit = (uint32_t)limit, .reason = reason, .operator_name = op,
        .timeout_ms = (int)timeout_ms,
    };
    Referral__V1__ResultCode code = REFERRAL__V1__RESULT_CODE__RESULT_UNSPECIFIED;
    char detail[700];
    json_object *j = NULL;
    if (admin_call(&spec, &code, detail, sizeof detail, &j) != 0) {
        fprintf(stderr, "referralctl %s: %s\n", command, detail);
        return CTL_EXIT_UNREACHABLE;
    }
    int rc = CTL_EXIT_OK;
    if (code != REFERRAL__V1__RESULT_CODE__RESULT_OK) {
        const ProtobufCEnumValue *v =
            protobuf_c_enum_descriptor_get_value(&referral__v1__result_code__descriptor, code);
        fprintf(stderr, "referralctl %s: %s (%s)\n", command, detail, v != NULL ? v->name : "?");
        if (is_json) {
            json_object *err = json_object_new_object();
            json_object_object_add(err, "code", json_object_new_string(v != NULL ? v->name : "?"));
            json_object_object_add(err, "detail", json_object_new_string(detail));
            printf("%s\n", json_object_to_json_string_ext(err, JSON_C_TO_STRING_PRETTY |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE));
            json_object_put(err);
        }
        rc = CTL_EXIT_REFUSED;
    } else if (is_json) {
        printf("%s\n", json_object_to_json_string_ext(j, JSON_C_TO_STRING_PRETTY |
                                                      JSON_C_TO_STRING_NOSLASHESCAPE));
    } else {
        print_human(command, j);
    }
    json_object_put(j);
    return rc;
}
