/*
 * policy: [policy.NAME] sections, their checks, the built-in defaults and
 * the choice of a policy for a referral (policy.h).
 */
#include "policy.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "referral.pb-c.h"

#define SECTION_PREFIX "policy."
#define MINUTE_MS 60000ull
#define HOUR_MS (60 * MINUTE_MS)
#define DAY_MS (24 * HOUR_MS)
#define MAX_DEADLINE_MS (30 * DAY_MS)

static const char *const condition_names[] = {
    [POLICY_IF_NOT_DELIVERED] = "not_delivered", [POLICY_IF_NOT_RECEIVED] = "not_received",
    [POLICY_IF_NOT_ACCEPTED] = "not_accepted",   [POLICY_IF_REJECTED] = "rejected",
    [POLICY_IF_FATAL] = "fatal",
};
static const char *const action_names[] = {
    [POLICY_DO_COPY_NEXT] = "copy_next",
    [POLICY_DO_COPY_ALL] = "copy_all",
    [POLICY_DO_ALERT_SUPERVISOR] = "alert_supervisor",
    [POLICY_DO_ALERT_CENTRE] = "alert_centre",
};
static const char *const urgency_names[] = {"", "routine", "priority", "urgent", "crisis"};

const char *policy_condition_name(uint8_t c)
{
    return c >= 1 && c <= POLICY_IF_FATAL ? condition_names[c] : "unknown";
}

const char *policy_action_name(uint8_t a)
{
    return a >= 1 && a <= POLICY_DO_ALERT_CENTRE ? action_names[a] : "unknown";
}

bool policy_is_timed(uint8_t c)
{
    return c == POLICY_IF_NOT_DELIVERED || c == POLICY_IF_NOT_RECEIVED ||
           c == POLICY_IF_NOT_ACCEPTED;
}

static size_t level_of(uint8_t condition)
{
    return condition == POLICY_IF_NOT_DELIVERED ? POLICY_DELIVERED
         : condition == POLICY_IF_NOT_RECEIVED ? POLICY_RECEIVED : POLICY_ACCEPTED;
}

uint64_t policy_step_due(const policy *p, size_t i, uint32_t round, uint64_t created_ms)
{
    const policy_step *s = &p->steps[i];
    return created_ms + p->within_ms[level_of(s->condition)] + s->delay_ms +
           (uint64_t)round * p->round_ms;
}

/* ---- parsing ----------------------------------------------------------- */

static int find_name(const char *const *names, int n, const char *s, size_t len)
{
    for (int i = 1; i < n; i++)
        if (names[i] != NULL && strlen(names[i]) == len && strncmp(names[i], s, len) == 0)
            return i;
    return 0;
}

static bool parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (*s == '\0' || !isdigit((unsigned char)*s))
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

/* "crisis, urgent" -> bits 4 and 3. */
static bool parse_urgencies(const char *value, uint8_t *bits)
{
    *bits = 0;
    const char *p = value;
    while (*p != '\0') {
        p += strspn(p, " ,");
        size_t n = strcspn(p, " ,");
        if (n == 0)
            break;
        int u = find_name(urgency_names, 5, p, n);
        if (u == 0)
            return false;
        *bits |= (uint8_t)(1u << u);
        p += n;
    }
    return true;
}

/* "police" -> AGENCY_KIND_POLICE, through the schema's own names. */
static bool parse_kind(const char *value, uint8_t *kind)
{
    char name[64] = "AGENCY_KIND_";
    size_t n = strlen(name);
    for (const char *p = value; *p != '\0' && n + 1 < sizeof name; p++)
        name[n++] = (char)toupper((unsigned char)*p);
    name[n] = '\0';
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value_by_name(&referral__v1__agency_kind__descriptor, name);
    if (v == NULL || v->value == 0)
        return false;
    *kind = (uint8_t)v->value;
    return true;
}

/* "not_received copy_next 120000" */
static bool parse_step(const char *value, policy_step *s, char *why, size_t why_len)
{
    const char *p = value + strspn(value, " ");
    size_t n = strcspn(p, " ");
    int c = find_name(condition_names, POLICY_IF_FATAL + 1, p, n);
    p += n;
    p += strspn(p, " ");
    n = strcspn(p, " ");
    int a = find_name(action_names, POLICY_DO_ALERT_CENTRE + 1, p, n);
    p += n;
    p += strspn(p, " ");
    uint64_t delay = 0;
    if (c == 0 || a == 0 || (*p != '\0' && !parse_u64(p, 0, MAX_DEADLINE_MS, &delay))) {
        snprintf(why, why_len, "step = \"%.80s\" is not CONDITION ACTION [DELAY_MS]: conditions "
                 "not_delivered, not_received, not_accepted, rejected, fatal; actions "
                 "copy_next, copy_all, alert_supervisor, alert_centre", value);
        return false;
    }
    if (!policy_is_timed((uint8_t)c) && delay != 0) {
        snprintf(why, why_len, "step = \"%.80s\": a %s step acts when it happens and takes no "
                 "delay", value, condition_names[c]);
        return false;
    }
    *s = (policy_step){.condition = (uint8_t)c, .action = (uint8_t)a, .delay_ms = delay};
    return true;
}

static policy *policy_for_section(policy_set *ps, const char *name, char *why, size_t why_len)
{
    for (size_t i = 0; i < ps->n; i++)
        if (strcmp(ps->items[i].name, name) == 0)
            return &ps->items[i];
    if (ps->n == POLICY_MAX) {
        snprintf(why, why_len, "at most %d policies", POLICY_MAX);
        return NULL;
    }
    if (!ids_is_valid_name(name)) {
        snprintf(why, why_len, "[policy.%.70s]: a policy name is 1-64 characters of a-z 0-9 . "
                 "_ -", name);
        return NULL;
    }
    policy *p = &ps->items[ps->n++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->id, sizeof p->id, "%s", name);
    p->rounds = 1;
    p->watchdog_grace_ms = 30000;
    ps->n_from_file = ps->n;
    return p;
}

bool policy_parse_key(policy_set *ps, const char *section, const char *name, const char *value,
                      char *why, size_t why_len)
{
    policy *p = policy_for_section(ps, section + strlen(SECTION_PREFIX), why, why_len);
    if (p == NULL)
        return false;
    uint64_t v = 0;
    bool ok = true;
    if (strcmp(name, "id") == 0) {
        ok = ids_is_valid_name(value);
        if (ok)
            snprintf(p->id, sizeof p->id, "%s", value);
    } else if (strcmp(name, "version") == 0) {
        ok = parse_u64(value, 1, UINT32_MAX, &v);
        p->version = (uint32_t)v;
    } else if (strcmp(name, "default_for") == 0) {
        ok = parse_urgencies(value, &p->default_for);
    } else if (strcmp(name, "agency_kind") == 0) {
        ok = parse_kind(value, &p->agency_kind);
    } else if (strcmp(name, "region") == 0) {
        ok = ids_is_valid_name(value);
        if (ok)
            snprintf(p->region, sizeof p->region, "%s", value);
    } else if (strcmp(name, "delivered_within_ms") == 0) {
        ok = parse_u64(value, 1000, MAX_DEADLINE_MS, &p->within_ms[POLICY_DELIVERED]);
    } else if (strcmp(name, "received_within_ms") == 0) {
        ok = parse_u64(value, 1000, MAX_DEADLINE_MS, &p->within_ms[POLICY_RECEIVED]);
    } else if (strcmp(name, "accepted_within_ms") == 0) {
        ok = parse_u64(value, 1000, MAX_DEADLINE_MS, &p->within_ms[POLICY_ACCEPTED]);
    } else if (strcmp(name, "watchdog_grace_ms") == 0) {
        ok = parse_u64(value, 0, DAY_MS, &p->watchdog_grace_ms);
    } else if (strcmp(name, "rounds") == 0) {
        ok = parse_u64(value, 1, POLICY_MAX_ROUNDS, &v);
        p->rounds = (uint32_t)v;
    } else if (strcmp(name, "round_ms") == 0) {
        ok = parse_u64(value, 1000, MAX_DEADLINE_MS, &p->round_ms);
    } else if (strcmp(name, "step") == 0) {
        if (p->n_steps == POLICY_MAX_STEPS) {
            snprintf(why, why_len, "[%s]: at most %d steps", section, POLICY_MAX_STEPS);
            return false;
        }
        return parse_step(value, &p->steps[p->n_steps++], why, why_len);
    } else {
        snprintf(why, why_len, "unknown key [%s] %s (see etc/referrald.example.ini)", section,
                 name);
        return false;
    }
    if (!ok)
        snprintf(why, why_len, "[%s] %s = \"%.64s\" is not valid (see "
                 "etc/referrald.example.ini)", section, name, value);
    return ok;
}

/* ---- checks and built-in defaults -------------------------------------- */

static bool check_one(const policy *p, char *why, size_t why_len)
{
    const char *n = p->name;
    if (p->version == 0)
        return snprintf(why, why_len, "[policy.%s]: version is required (1 or more; raise it "
                        "whenever the policy changes)", n), false;
    for (size_t l = 0; l < POLICY_LEVELS; l++)
        if (p->within_ms[l] == 0)
            return snprintf(why, why_len, "[policy.%s]: delivered_within_ms, received_within_ms "
                            "and accepted_within_ms are required", n), false;
    if (p->within_ms[POLICY_DELIVERED] > p->within_ms[POLICY_RECEIVED] ||
        p->within_ms[POLICY_RECEIVED] > p->within_ms[POLICY_ACCEPTED])
        return snprintf(why, why_len, "[policy.%s]: deadlines must not decrease: delivered <= "
                        "received <= accepted", n), false;
    if (p->n_steps == 0)
        return snprintf(why, why_len, "[policy.%s]: at least one step is required", n), false;
    const policy_step *last = NULL;
    uint64_t prev_due = 0, first_due = UINT64_MAX;
    for (size_t i = 0; i < p->n_steps; i++) {
        if (!policy_is_timed(p->steps[i].condition))
            continue;
        uint64_t due = policy_step_due(p, i, 0, 0);
        if (first_due == UINT64_MAX)
            first_due = due;
        if (due < prev_due)
            return snprintf(why, why_len, "[policy.%s]: step %zu (%s) is due before the step "
                            "above it; timed steps fire in the order written", n, i + 1,
                            policy_condition_name(p->steps[i].condition)), false;
        prev_due = due;
        last = &p->steps[i];
    }
    if (last == NULL || last->condition != POLICY_IF_NOT_ACCEPTED ||
        (last->action != POLICY_DO_ALERT_SUPERVISOR && last->action != POLICY_DO_ALERT_CENTRE))
        return snprintf(why, why_len, "[policy.%s]: the last timed step must be \"not_accepted "
                        "alert_supervisor\" or \"not_accepted alert_centre\": an escalation "
                        "never ends in silence", n), false;
    if (p->rounds > 1 && p->round_ms < prev_due - first_due + 1000)
        return snprintf(why, why_len, "[policy.%s]: with rounds > 1, round_ms must cover a "
                        "whole round (at least %" PRIu64 " ms)", n, prev_due - first_due + 1000),
               false;
    if ((p->agency_kind != 0 || p->region[0] != '\0') && p->default_for == 0)
        return snprintf(why, why_len, "[policy.%s]: agency_kind and region choose among "
                        "defaults; add default_for", n), false;
    return true;
}

/* The built-in default for urgency u (documented in the example file). */
static void builtin(policy *p, uint8_t u)
{
    static const uint64_t within[5][POLICY_LEVELS] = {
        {0, 0, 0},
        {DAY_MS, 3 * DAY_MS, 7 * DAY_MS},            /* routine */
        {HOUR_MS, 4 * HOUR_MS, 8 * HOUR_MS},         /* priority */
        {10 * MINUTE_MS, 30 * MINUTE_MS, HOUR_MS},   /* urgent */
        {MINUTE_MS, 5 * MINUTE_MS, 15 * MINUTE_MS},  /* crisis */
    };
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "built-in");
    snprintf(p->id, sizeof p->id, "builtin-%s", urgency_names[u]);
    p->version = 1;
    p->default_for = (uint8_t)(1u << u);
    memcpy(p->within_ms, within[u], sizeof p->within_ms);
    p->watchdog_grace_ms = u == 4 ? 30000 : within[u][POLICY_DELIVERED] / 2;
    p->rounds = u == 4 ? 2 : 1;
    p->round_ms = u == 4 ? 15 * MINUTE_MS : 0;
    static const policy_step crisis[] = {
        {POLICY_IF_NOT_DELIVERED, POLICY_DO_COPY_NEXT, 0},
        {POLICY_IF_NOT_RECEIVED, POLICY_DO_COPY_NEXT, 0},
        {POLICY_IF_NOT_RECEIVED, POLICY_DO_ALERT_SUPERVISOR, 0},
        {POLICY_IF_NOT_ACCEPTED, POLICY_DO_COPY_ALL, 0},
        {POLICY_IF_NOT_ACCEPTED, POLICY_DO_ALERT_CENTRE, 0},
    };
    static const policy_step other[] = {
        {POLICY_IF_NOT_DELIVERED, POLICY_DO_COPY_NEXT, 0},
        {POLICY_IF_NOT_RECEIVED, POLICY_DO_ALERT_SUPERVISOR, 0},
        {POLICY_IF_NOT_ACCEPTED, POLICY_DO_COPY_NEXT, 0},
        {POLICY_IF_NOT_ACCEPTED, POLICY_DO_ALERT_SUPERVISOR, 0},
    };
    const policy_step *steps = u == 4 ? crisis : other;
    p->n_steps = u == 4 ? sizeof crisis / sizeof crisis[0] : sizeof other / sizeof other[0];
    memcpy(p->steps, steps, p->n_steps * sizeof *steps);
}

bool policy_finish(policy_set *ps, char *why, size_t why_len)
{
    ps->n_from_file = ps->n;
    uint8_t covered = 0;
    for (size_t i = 0; i < ps->n; i++) {
        if (!check_one(&ps->items[i], why, why_len))
            return false;
        for (size_t j = 0; j < i; j++)
            if (strcmp(ps->items[i].id, ps->items[j].id) == 0 &&
                ps->items[i].version == ps->items[j].version)
                return snprintf(why, why_len, "[policy.%s] and [policy.%s] are both %s version "
                                "%" PRIu32 "; give the newer one a higher version",
                                ps->items[j].name, ps->items[i].name, ps->items[i].id,
                                ps->items[i].version), false;
        if (ps->items[i].agency_kind == 0 && ps->items[i].region[0] == '\0')
            covered |= ps->items[i].default_for;
    }
    for (uint8_t u = 1; u <= 4; u++) {
        if (covered & (1u << u))
            continue;
        if (ps->n == POLICY_MAX)
            return snprintf(why, why_len, "at most %d policies, and a default for %s is needed",
                            POLICY_MAX - 4, urgency_names[u]), false;
        builtin(&ps->items[ps->n++], u);
    }
    return true;
}

/* ---- choosing ---------------------------------------------------------- */

static int specificity(const policy *p, uint8_t kind, const char *region)
{
    if (p->agency_kind != 0 && p->agency_kind != kind)
        return -1;
    if (p->region[0] != '\0' && (region == NULL || strcmp(p->region, region) != 0))
        return -1;
    return (p->agency_kind != 0 ? 2 : 0) + (p->region[0] != '\0' ? 1 : 0);
}

const policy *policy_select(const policy_set *ps, const char *pinned_id, uint32_t pinned_version,
                            uint8_t urgency, uint8_t agency_kind, const char *region,
                            char *note, size_t note_len)
{
    note[0] = '\0';
    const policy *same_id = NULL;
    if (pinned_id != NULL && pinned_id[0] != '\0') {
        for (size_t i = 0; i < ps->n; i++) {
            const policy *p = &ps->items[i];
            if (strcmp(p->id, pinned_id) != 0)
                continue;
            if (p->version == pinned_version)
                return p;
            if (same_id == NULL || p->version > same_id->version)
                same_id = p;
        }
    }
    if (same_id != NULL) {
        snprintf(note, note_len, "policy %s version %" PRIu32 " is not configured here; running "
                 "version %" PRIu32, pinned_id, pinned_version, same_id->version);
        return same_id;
    }
    const policy *best = NULL;
    int best_score = -1;
    for (size_t i = 0; i < ps->n; i++) {
        const policy *p = &ps->items[i];
        if (urgency > 4 || !(p->default_for & (1u << urgency)))
            continue;
        int score = specificity(p, agency_kind, region);
        if (score > best_score || (score == best_score && score >= 0 &&
                                   p->version > best->version)) {
            best = p;
            best_score = score;
        }
    }
    if (best != NULL && pinned_id != NULL && pinned_id[0] != '\0')
        snprintf(note, note_len, "policy %s is not configured here; running the default %s "
                 "version %" PRIu32, pinned_id, best->id, best->version);
    return best;
}
