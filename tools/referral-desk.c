/*
 * referral-desk: a command-line desk on libreferral, for people and
 * scripts. Every command connects as one agency (see --help), does one
 * thing, and exits with a documented status. It prints one line per event;
 * with --json, one JSON object per line.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "referral.h"

enum { EX_OK = 0, EX_FAILED = 1, EX_USAGE = 2, EX_TIMEOUT = 3, EX_SETUP = 4 };

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: referral-desk [CONNECTION] COMMAND [ARGS]\n"
        "\n"
        "Commands:\n"
        "  send --to AGENCY --urgency LEVEL --category CAT --narrative TEXT [OPTIONS]\n"
        "  send --case FILE.json        fields from a JSON case file (flags override)\n"
        "       options: --action TEXT --pseudonym NAME --age N --location TEXT\n"
        "                --backup AGENCY (repeatable) --ttl-s N --case-number TEXT --async\n"
        "                --policy ID[:VERSION] --json\n"
        "       --policy pins the escalation policy the recipient's broker runs\n"
        "       (docs/escalation.md); without it, its default for the urgency.\n"
        "       The body is sealed for --to, each --backup, and the escalation chain\n"
        "       that the directory lists for --to (its backup agencies, supervisor\n"
        "       desk and regional centre), so that an escalation can be read there.\n"
        "       Prints ACCEPTED only once the broker stored it (QUEUED with --async);\n"
        "       anything else is an error on stderr and a non-zero exit.\n"
        "  listen [--count N] [--timeout-s S] [--ack LEVEL --person NAME] [--json]\n"
        "                              print deliveries (referrals, receipts, notices,\n"
        "                              alerts, stand-downs), one block each (below);\n"
        "                              --ack also acknowledges each referral at LEVEL;\n"
        "                              each delivery is confirmed once printed, and one\n"
        "                              not yet printed is printed again after a crash\n"
        "  ack MESSAGE_ID --level LEVEL --person NAME [--reason TEXT]\n"
        "  status MESSAGE_ID\n"
        "\n"
        "listen prints one block per delivery:\n"
        "  REFERRAL <referral id> from <agency> urgency=U message=<id>, then its\n"
        "      subject, narrative and requested action; an escalation copy (the\n"
        "      referral copied here because its recipient did not answer in time):\n"
        "      REFERRAL (escalation copy for <recipient>: <reason>) <referral id> ...\n"
        "  RECEIPT|NOTICE for message <id> from <agency or broker>: <level> <detail>\n"
        "  ALERT <kind> referral=<id> about=<agency> step=N round=N: <detail>\n"
        "      then \"  call: <label phone; label phone>\" and \"  copied to: <agencies>\"\n"
        "      kinds: NOT_DELIVERED NOT_RECEIVED NOT_ACCEPTED REJECTED FATAL_ERROR\n"
        "             PARTITION UNDELIVERABLE REROUTED\n"
        "  STAND-DOWN referral=<id>: <agency> accepted it; stand down\n"
        "  STAND-DOWN referral=<id>: the partition alert is over: <detail>\n"
        "  An ALERT means a person should act now: phone the numbers it names.\n"
        "\n");
    fprintf(f,
        "Connection (flags, or the environment variable named):\n"
        "  --agency ID        REFERRAL_AGENCY     this agency's id\n"
        "  --keys DIR         REFERRAL_KEYS       its key files (referralctl keygen)\n"
        "  --directory FILE   REFERRAL_DIRECTORY  the signed directory\n"
        "  --root KEY         REFERRAL_ROOT       pinned root: 64 hex digits or a .pub.json\n"
        "  --broker ID        REFERRAL_BROKER     the home broker's id\n"
        "  --endpoint URL     REFERRAL_ENDPOINT   optional, overrides the directory\n"
        "  --state DIR        REFERRAL_STATE      this desk's state (outbox), created if missing\n"
        "  --timeout-ms N                         how long to wait for the broker (10000)\n"
        "\n"
        "The --case file is one JSON object with these keys (any other is refused):\n"
        "  to (string, required)        urgency (string, required)\n"
        "  category (string, required)  narrative (string, required)\n"
        "  requested_action (string)    case_number (string)\n"
        "  subject (object: pseudonym (string), age (number), location (string))\n"
        "  ttl_s (number)               backups (array of agency ids, at most 16)\n"
        "\n"
        "JSON output (--json), one object per line:\n"
        "  send:   event (\"accepted\" or, with --async, \"queued\"), message_id,\n"
        "          referral_id, to\n"
        "  listen: event (\"referral\", \"receipt\", \"notice\", \"alert\" or\n"
        "          \"stand_down\"), message_id, referral_id, in_reply_to (receipts,\n"
        "          notices, alerts: the message they answer or concern), from, urgency,\n"
        "          level (receipts and notices), narrative, requested_action,\n"
        "          pseudonym, age, detail, is_copy and original_recipient (an\n"
        "          escalation copy of a referral), alert_kind, about, step, round,\n"
        "          contacts, copied_to (alerts and stand-downs); with --ack also\n"
        "          event \"acknowledged\", message_id, level\n"
        "Ids are 32 hex digits; absent strings are \"\" and absent numbers 0.\n"
        "\n");
    fprintf(f,
        "Levels: urgency routine|priority|urgent|crisis; ack received|accepted|rejected|\n"
        "action_taken|closed. Categories: protection, family_dysfunction,\n"
        "psychological_support, growth_difficulty, legal_aid, other.\n"
        "\n"
        "Examples:\n"
        "  referral-desk --agency sh.12355.desk ... send --to qd.youth-league \\\n"
        "      --urgency crisis --category psychological_support \\\n"
        "      --narrative 'Caller, 17, has a plan for tonight' --action 'call within 15 min'\n"
        "  referral-desk --agency qd.youth-league ... listen --count 1 --ack received \\\n"
        "      --person 'Wang Li'\n"
        "  referral-desk --agency qd.youth-league ... ack 01a2...e9 --level accepted --person 'Wang Li'\n"
        "\n"
        "Exit status: 0 done; 1 refused or failed (the message says why); 2 bad usage;\n"
        "3 timed out (a sent referral stays in the outbox and is sent again next time);\n"
        "4 cannot connect (keys, directory, broker).\n"
        "\n"
        "This tool does not replace an emergency call: when a life is at risk, phone first.\n");
}

static const char *const urgencies[] = {"", "routine", "priority", "urgent", "crisis"};
static const char *const categories[] = {"", "protection", "family_dysfunction",
                                         "psychological_support", "growth_difficulty",
                                         "legal_aid", "other"};
static const char *const levels[] = {"", "", "", "delivered", "received", "accepted",
                                     "rejected", "action_taken", "closed"};

static int index_of(const char *const *names, int n, const char *s)
{
    for (int i = 1; s != NULL && i < n; i++)
        if (strcmp(names[i], s) == 0)
            return i;
    return 0;
}

static void log_line(ref_log_level level, const char *line, void *ctx)
{
    int *verbose = ctx;
    if ((int)level <= (*verbose ? REF_LOG_INFO : REF_LOG_WARN))
        fprintf(stderr, "referral-desk: %s\n", line);
}

static const char *env_or(const char *v, const char *name)
{
    return v != NULL ? v : getenv(name);
}

static int exit_for(ref_err e)
{
    switch (e) {
    case REF_OK: return EX_OK;
    case REF_E_INVALID: return EX_USAGE;
    case REF_E_TIMEOUT: return EX_TIMEOUT;
    case REF_E_KEYS:
    case REF_E_DIRECTORY:
    case REF_E_TRANSPORT:
    case REF_E_STATE: return EX_SETUP;
    default: return EX_FAILED;
    }
}

static int fail(ref_client *c, const char *what, ref_err e)
{
    const char *detail = ref_client_last_detail(c);
    fprintf(stderr, "referral-desk: %s: %s%s%s\n", what, ref_strerror(e),
            detail[0] ? ": " : "", detail);
    return exit_for(e);
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : NULL;
}

/* A --case file is one JSON object of the keys --help lists, nothing else:
 * a misspelt key would otherwise drop a field of a referral silently. */
static bool is_case_file_ok(json_object *file, const char *path)
{
    static const char *const keys[] = {"to", "urgency", "category", "narrative",
                                       "requested_action", "case_number", "subject", "ttl_s",
                                       "backups"};
    static const char *const subject_keys[] = {"pseudonym", "age", "location"};
    if (file == NULL || !json_object_is_type(file, json_type_object)) {
        fprintf(stderr, "referral-desk send: --case %s is not a JSON object%s%s\n", path,
                json_util_get_last_err() ? ": " : "",
                json_util_get_last_err() ? json_util_get_last_err() : "");
        return false;
    }
    json_object_object_foreach(file, key, value) {
        bool is_known = false;
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            is_known = is_known || strcmp(key, keys[i]) == 0;
        if (!is_known) {
            fprintf(stderr, "referral-desk send: --case %s: unknown key \"%s\" (see --help "
                    "for the keys a case file may have)\n", path, key);
            return false;
        }
        if (strcmp(key, "subject") != 0)
            continue;
        if (!json_object_is_type(value, json_type_object)) {
            fprintf(stderr, "referral-desk send: --case %s: \"subject\" must be an object\n",
                    path);
            return false;
        }
        json_object_object_foreach(value, skey, svalue) {
            (void)svalue;
            bool is_subject_key = false;
            for (size_t i = 0; i < sizeof subject_keys / sizeof subject_keys[0]; i++)
                is_subject_key = is_subject_key || strcmp(skey, subject_keys[i]) == 0;
            if (!is_subject_key) {
                fprintf(stderr, "referral-desk send: --case %s: unknown key \"subject.%s\" "
                        "(pseudonym, age, location)\n", path, skey);
                return false;
            }
        }
    }
    return true;
}

static int cmd_send(ref_client *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, NULL, 't'}, {"urgency", required_argument, NULL, 'u'},
        {"category", required_argument, NULL, 'c'}, {"narrative", required_argument, NULL, 'n'},
        {"action", required_argument, NULL, 'a'}, {"pseudonym", required_argument, NULL, 'p'},
        {"age", required_argument, NULL, 'g'}, {"location", required_argument, NULL, 'l'},
        {"backup", required_argument, NULL, 'b'}, {"ttl-s", required_argument, NULL, 'T'},
        {"case-number", required_argument, NULL, 'N'}, {"case", required_argument, NULL, 'f'},
        {"async", no_argument, NULL, 'A'}, {"json", no_argument, NULL, 'j'},
        {"policy", required_argument, NULL, 'P'}, {NULL, 0, NULL, 0}};
    ref_referral r = {0};
    char policy_id[80] = "";
    const char *backups[16];
    const char *urgency = NULL, *category = NULL;
    bool is_async = false, is_json = false;
    json_object *file = NULL;
    int opt;
    optind = 0;   /* GNU: start a fresh scan of this command's arguments */
    /* The case file first, so that flags override it. */
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--case") != 0)
            continue;
        json_object_put(file);
        file = json_object_from_file(argv[i + 1]);
        if (!is_case_file_ok(file, argv[i + 1])) {
            json_object_put(file);
            return EX_USAGE;
        }
    }
    if (file != NULL) {
        r.to_agency = jstr(file, "to");
        urgency = jstr(file, "urgency");
        category = jstr(file, "category");
        r.narrative = jstr(file, "narrative");
        r.requested_action = jstr(file, "requested_action");
        r.desk_case_number = jstr(file, "case_number");
        json_object *s, *v;
        if (json_object_object_get_ex(file, "subject", &s)) {
            r.subject_pseudonym = jstr(s, "pseudonym");
            r.subject_location = jstr(s, "location");
            if (json_object_object_get_ex(s, "age", &v))
                r.subject_age = (uint32_t)json_object_get_int(v);
        }
        if (json_object_object_get_ex(file, "ttl_s", &v))
            r.ttl_s = (uint32_t)json_object_get_int(v);
        if (json_object_object_get_ex(file, "backups", &v) &&
            json_object_is_type(v, json_type_array))
            for (size_t i = 0; i < json_object_array_length(v) && r.n_backups < 16; i++)
                backups[r.n_backups++] = json_object_get_string(json_object_array_get_idx(v, i));
    }
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 't': r.to_agency = optarg; break;
        case 'u': urgency = optarg; break;
        case 'c': category = optarg; break;
        case 'n': r.narrative = optarg; break;
        case 'a': r.requested_action = optarg; break;
        case 'p': r.subject_pseudonym = optarg; break;
        case 'g': r.subject_age = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'l': r.subject_location = optarg; break;
        case 'b':
            if (r.n_backups == 16) {
                fprintf(stderr, "referral-desk send: at most 16 --backup\n");
                json_object_put(file);
                return EX_USAGE;
            }
            backups[r.n_backups++] = optarg;
            break;
        case 'T': r.ttl_s = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'N': r.desk_case_number = optarg; break;
        case 'f': break;
        case 'A': is_async = true; break;
        case 'j': is_json = true; break;
        case 'P': {
            /* ID or ID:VERSION (version 0 when absent: the broker runs the
             * id's highest version). */
            const char *colon = strchr(optarg, ':');
            size_t n = colon != NULL ? (size_t)(colon - optarg) : strlen(optarg);
            char *end = NULL;
            unsigned long v = colon != NULL ? strtoul(colon + 1, &end, 10) : 0;
            if (n == 0 || n >= sizeof policy_id ||
                (colon != NULL && (end == colon + 1 || *end != '\0' || v > UINT32_MAX))) {
                fprintf(stderr, "referral-desk send: --policy takes ID or ID:VERSION, such as "
                        "crisis:2\n");
                json_object_put(file);
                return EX_USAGE;
            }
            memcpy(policy_id, optarg, n);
            policy_id[n] = '\0';
            r.escalation_policy_id = policy_id;
            r.escalation_policy_version = (uint32_t)v;
            break;
        }
        default: json_object_put(file); return EX_USAGE;
        }
    }
    r.backups = backups;
    r.urgency = (ref_urgency)index_of(urgencies, 5, urgency);
    r.category = (ref_category)index_of(categories, 7, category);
    if (r.to_agency == NULL || r.urgency == 0 || r.category == 0 || r.narrative == NULL) {
        fprintf(stderr, "referral-desk send: --to, --urgency (routine|priority|urgent|crisis), "
                "--category and --narrative are required (or in --case FILE)\n");
        json_object_put(file);
        return EX_USAGE;
    }
    char mid[REF_ID_HEX_LEN + 1], rid[REF_ID_HEX_LEN + 1];
    ref_err e = is_async ? ref_send_async(c, &r, mid, rid) : ref_send(c, &r, mid, rid);
    int rc = EX_OK;
    if (e != REF_OK) {
        rc = fail(c, "send", e);
    } else if (is_json) {
        /* --async only puts the referral in the outbox: say "queued", never
         * "accepted" or "sent", until the broker has answered. */
        printf("{\"event\":\"%s\",\"message_id\":\"%s\",\"referral_id\":\"%s\",\"to\":\"%s\"}\n",
               is_async ? "queued" : "accepted", mid, rid, r.to_agency);
    } else {
        printf("%s referral %s to %s: message %s%s\n", is_async ? "QUEUED" : "ACCEPTED", rid,
               r.to_agency, mid,
               is_async ? " (in the outbox, not yet accepted by the broker)" : "");
    }
    json_object_put(file);
    return rc;
}

/* An alert or a stand-down, one block: what happened, then whom to phone. */
static void print_alert(const ref_delivery *d)
{
    const char *kind = ref_delivery_alert_kind(d), *detail = ref_delivery_detail(d);
    if (ref_delivery_kind_of(d) == REF_DELIVERY_ALERT) {
        printf("ALERT %s referral=%s about=%s step=%u round=%u: %s\n", kind[0] ? kind : "?",
               ref_delivery_referral_id(d), ref_delivery_about_agency(d),
               ref_delivery_alert_step(d), ref_delivery_alert_round(d), detail);
    } else if (strcmp(kind, "PARTITION") == 0) {
        printf("STAND-DOWN referral=%s: the partition alert is over%s%s\n",
               ref_delivery_referral_id(d), detail[0] ? ": " : "", detail);
        detail = "";
    } else {
        printf("STAND-DOWN referral=%s: %s accepted it; stand down\n",
               ref_delivery_referral_id(d),
               ref_delivery_about_agency(d)[0] ? ref_delivery_about_agency(d) : "another agency");
        if (detail[0])
            printf("  detail: %s\n", detail);
    }
    if (ref_delivery_contacts(d)[0])
        printf("  call: %s\n", ref_delivery_contacts(d));
    if (ref_delivery_copied_to(d)[0])
        printf("  copied to: %s\n", ref_delivery_copied_to(d));
}

static void print_delivery(const ref_delivery *d, bool is_json)
{
    static const char *const kinds[] = {"", "referral", "receipt", "notice", "alert",
                                        "stand_down"};
    ref_delivery_kind k = ref_delivery_kind_of(d);
    const char *kind = k < sizeof kinds / sizeof kinds[0] ? kinds[k] : "";
    int level = ref_delivery_level(d);
    if (is_json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "event", json_object_new_string(kind));
        json_object_object_add(o, "message_id", json_object_new_string(ref_delivery_message_id(d)));
        json_object_object_add(o, "referral_id", json_object_new_string(ref_delivery_referral_id(d)));
        json_object_object_add(o, "in_reply_to", json_object_new_string(ref_delivery_in_reply_to(d)));
        json_object_object_add(o, "from", json_object_new_string(ref_delivery_from(d)));
        json_object_object_add(o, "urgency",
                               json_object_new_string(urgencies[ref_delivery_urgency(d) & 7 ? ref_delivery_urgency(d) % 5 : 0]));
        json_object_object_add(o, "level", json_object_new_string(level >= 3 && level <= 8 ? levels[level] : ""));
        json_object_object_add(o, "narrative", json_object_new_string(ref_delivery_narrative(d)));
        json_object_object_add(o, "requested_action",
                               json_object_new_string(ref_delivery_requested_action(d)));
        json_object_object_add(o, "pseudonym", json_object_new_string(ref_delivery_subject_pseudonym(d)));
        json_object_object_add(o, "age", json_object_new_int((int)ref_delivery_subject_age(d)));
        json_object_object_add(o, "detail", json_object_new_string(ref_delivery_detail(d)));
        json_object_object_add(o, "is_copy", json_object_new_boolean(ref_delivery_is_copy(d)));
        json_object_object_add(o, "original_recipient",
                               json_object_new_string(ref_delivery_original_recipient(d)));
        json_object_object_add(o, "alert_kind", json_object_new_string(ref_delivery_alert_kind(d)));
        json_object_object_add(o, "about", json_object_new_string(ref_delivery_about_agency(d)));
        json_object_object_add(o, "step", json_object_new_int64(ref_delivery_alert_step(d)));
        json_object_object_add(o, "round", json_object_new_int64(ref_delivery_alert_round(d)));
        json_object_object_add(o, "contacts", json_object_new_string(ref_delivery_contacts(d)));
        json_object_object_add(o, "copied_to", json_object_new_string(ref_delivery_copied_to(d)));
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
    } else if (k == REF_DELIVERY_REFERRAL) {
        if (ref_delivery_is_copy(d))
            printf("REFERRAL (escalation copy for %s: %s) ", ref_delivery_original_recipient(d),
                   ref_delivery_detail(d));
        else
            printf("REFERRAL ");
        printf("%s from %s urgency=%s message=%s\n  subject: %s, %u\n  narrative: %s\n"
               "  requested: %s\n", ref_delivery_referral_id(d), ref_delivery_from(d),
               urgencies[ref_delivery_urgency(d) % 5], ref_delivery_message_id(d),
               ref_delivery_subject_pseudonym(d), ref_delivery_subject_age(d),
               ref_delivery_narrative(d), ref_delivery_requested_action(d));
    } else if (k == REF_DELIVERY_ALERT || k == REF_DELIVERY_STAND_DOWN) {
        print_alert(d);
    } else {
        printf("%s for message %s from %s: %s %s\n", k == REF_DELIVERY_RECEIPT ? "RECEIPT" : "NOTICE",
               ref_delivery_in_reply_to(d), ref_delivery_from(d),
               level >= 3 && level <= 8 ? levels[level] : "", ref_delivery_detail(d));
    }
    fflush(stdout);
}

static int cmd_listen(ref_client *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"count", required_argument, NULL, 'n'}, {"timeout-s", required_argument, NULL, 't'},
        {"ack", required_argument, NULL, 'a'}, {"person", required_argument, NULL, 'p'},
        {"json", no_argument, NULL, 'j'}, {NULL, 0, NULL, 0}};
    long count = -1, timeout_s = -1;
    const char *ack = NULL, *person = NULL;
    bool is_json = false;
    int opt;
    optind = 0;   /* GNU: start a fresh scan of this command's arguments */
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'n': count = strtol(optarg, NULL, 10); break;
        case 't': timeout_s = strtol(optarg, NULL, 10); break;
        case 'a': ack = optarg; break;
        case 'p': person = optarg; break;
        case 'j': is_json = true; break;
        default: return EX_USAGE;
        }
    }
    int level = ack != NULL ? index_of(levels, 9, ack) : 0;
    if (ack != NULL && (level < 4 || person == NULL)) {
        fprintf(stderr, "referral-desk listen: --ack needs received|accepted|action_taken|closed "
                "and --person\n");
        return EX_USAGE;
    }
    time_t until = timeout_s >= 0 ? time(NULL) + timeout_s : 0;
    long seen = 0;
    while (!stop && (count < 0 || seen < count)) {
        if (until != 0 && time(NULL) >= until)
            return count < 0 ? EX_OK : EX_TIMEOUT;
        ref_delivery *d = NULL;
        ref_err e = ref_receive(c, 500, &d);
        if (e == REF_E_AGAIN)
            continue;
        if (e != REF_OK)
            return fail(c, "listen", e);
        print_delivery(d, is_json);
        seen++;
        /* Printed and flushed: this desk has handed it on, so confirm it.
         * A failed write leaves it unconfirmed: it is printed again at the
         * next start. */
        if (ferror(stdout)) {
            ref_delivery_destroy(&d);
            fprintf(stderr, "referral-desk listen: cannot write to stdout; the delivery stays "
                    "in the inbox\n");
            return EX_FAILED;
        }
        e = ref_delivery_done(c, d);
        if (e != REF_OK) {
            ref_delivery_destroy(&d);
            return fail(c, "listen", e);
        }
        if (level != 0 && ref_delivery_kind_of(d) == REF_DELIVERY_REFERRAL) {
            e = ref_acknowledge(c, ref_delivery_message_id(d), (ref_level)level, person, "");
            if (e != REF_OK) {
                ref_delivery_destroy(&d);
                return fail(c, "ack", e);
            }
            if (is_json)
                printf("{\"event\":\"acknowledged\",\"message_id\":\"%s\",\"level\":\"%s\"}\n",
                       ref_delivery_message_id(d), levels[level]);
            else
                printf("acknowledged %s: %s by %s\n", ref_delivery_message_id(d), levels[level],
                       person);
            fflush(stdout);
        }
        ref_delivery_destroy(&d);
    }
    return EX_OK;
}

static int cmd_ack(ref_client *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"level", required_argument, NULL, 'l'}, {"person", required_argument, NULL, 'p'},
        {"reason", required_argument, NULL, 'r'}, {NULL, 0, NULL, 0}};
    const char *lv = NULL, *person = NULL, *reason = NULL;
    int opt;
    optind = 0;   /* GNU: start a fresh scan of this command's arguments */
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'l': lv = optarg; break;
        case 'p': person = optarg; break;
        case 'r': reason = optarg; break;
        default: return EX_USAGE;
        }
    }
    int level = index_of(levels, 9, lv);
    if (optind != argc - 1 || level < 4) {
        fprintf(stderr, "referral-desk ack: MESSAGE_ID and --level received|accepted|rejected|"
                "action_taken|closed are required\n");
        return EX_USAGE;
    }
    ref_err e = ref_acknowledge(c, argv[optind], (ref_level)level, person, reason);
    if (e != REF_OK)
        return fail(c, "ack", e);
    printf("acknowledged %s: %s\n", argv[optind], levels[level]);
    return EX_OK;
}

static int cmd_status(ref_client *c, int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "referral-desk status: MESSAGE_ID is required\n");
        return EX_USAGE;
    }
    const char *state;
    ref_err e = ref_status(c, argv[1], &state);
    if (e != REF_OK)
        return fail(c, "status", e);
    printf("%s %s\n", argv[1], state);
    return EX_OK;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"agency", required_argument, NULL, 'a'}, {"keys", required_argument, NULL, 'k'},
        {"directory", required_argument, NULL, 'd'}, {"root", required_argument, NULL, 'r'},
        {"broker", required_argument, NULL, 'b'}, {"endpoint", required_argument, NULL, 'e'},
        {"state", required_argument, NULL, 's'}, {"timeout-ms", required_argument, NULL, 't'},
        {"verbose", no_argument, NULL, 'v'}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0}};
    ref_config cfg = {0};
    int verbose = 0, opt;
    /* '+': stop at the command, whose options are its own. */
    while ((opt = getopt_long(argc, argv, "+hv", opts, NULL)) != -1) {
        switch (opt) {
        case 'a': cfg.agency_id = optarg; break;
        case 'k': cfg.key_dir = optarg; break;
        case 'd': cfg.directory = optarg; break;
        case 'r': cfg.trust_root = optarg; break;
        case 'b': cfg.broker_id = optarg; break;
        case 'e': cfg.endpoint = optarg; break;
        case 's': cfg.state_dir = optarg; break;
        case 't': cfg.timeout_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'v': verbose = 1; break;
        case 'h': usage(stdout); return EX_OK;
        case 'V': printf("referral-desk %s\n", ref_version()); return EX_OK;
        default: usage(stderr); return EX_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EX_USAGE;
    }
    const char *cmd = argv[optind];
    if (strcmp(cmd, "send") != 0 && strcmp(cmd, "listen") != 0 && strcmp(cmd, "ack") != 0 &&
        strcmp(cmd, "status") != 0) {
        fprintf(stderr, "referral-desk: unknown command %s (send, listen, ack, status)\n", cmd);
        return EX_USAGE;
    }
    cfg.agency_id = env_or(cfg.agency_id, "REFERRAL_AGENCY");
    cfg.key_dir = env_or(cfg.key_dir, "REFERRAL_KEYS");
    cfg.directory = env_or(cfg.directory, "REFERRAL_DIRECTORY");
    cfg.trust_root = env_or(cfg.trust_root, "REFERRAL_ROOT");
    cfg.broker_id = env_or(cfg.broker_id, "REFERRAL_BROKER");
    cfg.endpoint = env_or(cfg.endpoint, "REFERRAL_ENDPOINT");
    cfg.state_dir = env_or(cfg.state_dir, "REFERRAL_STATE");
    cfg.log = log_line;
    cfg.log_ctx = &verbose;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    ref_client *c = NULL;
    char detail[700] = "";
    ref_err e = ref_client_new(&cfg, &c, detail, sizeof detail);
    if (e != REF_OK) {
        fprintf(stderr, "referral-desk: cannot connect: %s: %s\n", ref_strerror(e), detail);
        return e == REF_E_INVALID ? EX_USAGE : EX_SETUP;
    }
    int rc;
    int sub_argc = argc - optind;
    char **sub_argv = argv + optind;
    if (strcmp(cmd, "send") == 0)
        rc = cmd_send(c, sub_argc, sub_argv);
    else if (strcmp(cmd, "listen") == 0)
        rc = cmd_listen(c, sub_argc, sub_argv);
    else if (strcmp(cmd, "ack") == 0)
        rc = cmd_ack(c, sub_argc, sub_argv);
    else
        rc = cmd_status(c, sub_argc, sub_argv);
    /* Let answers to receipts already on the wire arrive before closing. */
    ref_pump(c);
    ref_client_destroy(&c);
    return rc;
}
