/*
 * Unit tests of escalation policies (broker/policy.c) through the
 * configuration loader: the example file's policies load and equal the
 * built-in defaults it documents, every fault in a [policy.NAME] section
 * is refused with a sentence naming it, and the choice of a policy follows
 * policy.h (pinned version, same id, most specific default).
 *
 * Argument: the path of etc/referrald.example.ini.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "referral.pb-c.h"

static const char *example_path;

#define CRISIS 4
#define ROUTINE 1

/* Write the example's required keys plus extra into a temporary file and
 * load it; returns config_load's verdict, err its sentence. */
static bool load_with(const char *extra, config *cfg, char *err, size_t err_len)
{
    char path[] = "/tmp/referral-policy-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fprintf(f, "[broker]\nid = broker.test\nlisten = tcp://127.0.0.1:7400\ndata_dir = x\n"
               "[trust]\ndirectory = d\ntrust_root = r\nkey_dir = k\n%s", extra);
    assert_int_equal(fclose(f), 0);
    bool ok = config_load(path, cfg, err, err_len);
    unlink(path);
    return ok;
}

/* The policy of id (the test fails when there is none). */
static const policy *by_id(const config *cfg, const char *id)
{
    for (size_t i = 0; i < cfg->policies.n; i++)
        if (strcmp(cfg->policies.items[i].id, id) == 0)
            return &cfg->policies.items[i];
    fail_msg("no policy %s", id);
    return &cfg->policies.items[0];   /* not reached */
}

static void example_policies_are_the_builtin_defaults(void **state)
{
    (void)state;
    static config file, none;
    char err[512];
    if (!config_load(example_path, &file, err, sizeof err))
        fail_msg("example configuration refused: %s", err);
    assert_int_equal(file.policies.n_from_file, 4);
    assert_int_equal(file.policies.n, 4);   /* every urgency has its default: no built-in */
    assert_true(load_with("", &none, err, sizeof err));
    assert_int_equal(none.policies.n_from_file, 0);
    assert_int_equal(none.policies.n, 4);
    static const char *const names[] = {"", "routine", "priority", "urgent", "crisis"};
    for (uint8_t u = 1; u <= 4; u++) {
        char builtin_id[32];
        snprintf(builtin_id, sizeof builtin_id, "builtin-%s", names[u]);
        const policy *a = by_id(&file, names[u]), *b = by_id(&none, builtin_id);
        assert_int_equal(a->default_for, 1u << u);
        assert_memory_equal(a->within_ms, b->within_ms, sizeof a->within_ms);
        assert_int_equal(a->rounds, b->rounds);
        assert_int_equal(a->round_ms, b->round_ms);
        assert_int_equal(a->n_steps, b->n_steps);
        assert_memory_equal(a->steps, b->steps, a->n_steps * sizeof a->steps[0]);
    }
}

static void faults_in_a_policy_are_refused_with_a_reason(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *says;
    } cases[] = {
        {"[policy.a]\ndefault_for = crisis\ndelivered_within_ms = 1000\nreceived_within_ms = 2000\n"
         "accepted_within_ms = 3000\nstep = not_accepted alert_supervisor\n", "version is required"},
        {"[policy.a]\nversion = 1\ndelivered_within_ms = 1000\nreceived_within_ms = 2000\n"
         "step = not_accepted alert_supervisor\n", "are required"},
        {"[policy.a]\nversion = 1\ndelivered_within_ms = 5000\nreceived_within_ms = 2000\n"
         "accepted_within_ms = 6000\nstep = not_accepted alert_supervisor\n", "must not decrease"},
        {"[policy.a]\nversion = 1\ndelivered_within_ms = 1000\nreceived_within_ms = 2000\n"
         "accepted_within_ms = 3000\nstep = not_accepted copy_next\n", "never ends in silence"},
        {"[policy.a]\nversion = 1\ndelivered_within_ms = 1000\nreceived_within_ms = 2000\n"
         "accepted_within_ms = 3000\nstep = not_received alert_supervisor\n",
         "never ends in silence"},
        {"[policy.a]\nversion = 1\ndelivered_within_ms = 1000\nreceived_within_ms = 2000\n"
         "accepted_within_ms = 3000\nstep = not_received copy_next\nstep = not_delivered "
         "copy_next\nstep = not_accepted alert_centre\n", "due before the step above"},
        {"[policy.a]\nversion = 1\nstep = not_seen copy_next\n", "CONDITION ACTION"},
        {"[policy.a]\nversion = 1\nstep = rejected copy_next 500\n", "takes no delay"},
        {"[policy.a]\nversion = 1\nwithin = 3\n", "unknown key [policy.a] within"},
        {"[policy.a]\nversion = 0\n", "is not valid"},
        {"[policy.a]\ndefault_for = crisis, sometimes\n", "is not valid"},
        {"[policy.a]\nagency_kind = wizards\n", "is not valid"},
        {"[policy.a]\nversion = 1\ndelivered_within_ms = 1000\nreceived_within_ms = 2000\n"
         "accepted_within_ms = 3000\nstep = not_delivered copy_next\n"
         "step = not_accepted alert_centre\nrounds = 2\nround_ms = 2000\n",
         "must cover a whole round"},
        {"[policy.a]\nversion = 1\ndelivered_within_ms = 1000\nreceived_within_ms = 2000\n"
         "accepted_within_ms = 3000\nstep = not_accepted alert_centre\n"
         "[policy.b]\nid = a\nversion = 1\ndelivered_within_ms = 1000\n"
         "received_within_ms = 2000\naccepted_within_ms = 3000\n"
         "step = not_accepted alert_centre\n", "both a version 1"},
        {"[policy.a]\nversion = 1\nregion = qingdao\ndelivered_within_ms = 1000\n"
         "received_within_ms = 2000\naccepted_within_ms = 3000\n"
         "step = not_accepted alert_centre\n", "add default_for"},
        {"[policy.Bad Name]\nversion = 1\n", "a policy name is"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        static config cfg;
        char err[512] = "";
        if (load_with(cases[i].text, &cfg, err, sizeof err))
            fail_msg("case %zu accepted:\n%s", i, cases[i].text);
        if (strstr(err, cases[i].says) == NULL)
            fail_msg("case %zu: \"%s\" does not say \"%s\"", i, err, cases[i].says);
    }
}

#define BASE "delivered_within_ms = 1000\nreceived_within_ms = 2000\n" \
             "accepted_within_ms = 3000\nstep = not_accepted alert_centre\n"

static void selection_prefers_the_pinned_then_the_most_specific(void **state)
{
    (void)state;
    static config cfg;
    char err[512];
    const char *text =
        "[policy.c1]\nid = crisis\nversion = 1\n" BASE
        "[policy.c2]\nid = crisis\nversion = 2\ndefault_for = crisis\n" BASE
        "[policy.police]\nversion = 1\ndefault_for = crisis\nagency_kind = police\n" BASE
        "[policy.qd]\nversion = 1\ndefault_for = crisis\nregion = qingdao\n" BASE
        "[policy.qd-police]\nversion = 1\ndefault_for = crisis\nagency_kind = police\n"
        "region = qingdao\n" BASE;
    if (!load_with(text, &cfg, err, sizeof err))
        fail_msg("refused: %s", err);
    char note[300];
    const policy_set *ps = &cfg.policies;
    const uint8_t police = REFERRAL__V1__AGENCY_KIND__AGENCY_KIND_POLICE;
    const uint8_t school = REFERRAL__V1__AGENCY_KIND__AGENCY_KIND_EDUCATION;
    /* Pinned and present: exactly it, whatever the defaults. */
    const policy *p = policy_select(ps, "crisis", 1, CRISIS, police, "qingdao", note, sizeof note);
    assert_string_equal(p->name, "c1");
    assert_string_equal(note, "");
    /* Pinned version unknown: the same id's highest, said so. */
    p = policy_select(ps, "crisis", 7, CRISIS, police, "qingdao", note, sizeof note);
    assert_string_equal(p->name, "c2");
    assert_non_null(strstr(note, "version 7 is not configured here"));
    /* Unknown id: the default, said so. */
    p = policy_select(ps, "nonesuch", 1, CRISIS, school, "beijing", note, sizeof note);
    assert_string_equal(p->name, "c2");
    assert_non_null(strstr(note, "nonesuch is not configured here"));
    /* Defaults: kind and region, kind, region, neither. */
    assert_string_equal(policy_select(ps, "", 0, CRISIS, police, "qingdao", note,
                                      sizeof note)->name, "qd-police");
    assert_string_equal(policy_select(ps, "", 0, CRISIS, police, "beijing", note,
                                      sizeof note)->name, "police");
    assert_string_equal(policy_select(ps, "", 0, CRISIS, school, "qingdao", note,
                                      sizeof note)->name, "qd");
    assert_string_equal(policy_select(ps, "", 0, CRISIS, school, "beijing", note,
                                      sizeof note)->name, "c2");
    /* An urgency the file left alone has its built-in default. */
    assert_string_equal(policy_select(ps, "", 0, ROUTINE, school, "", note,
                                      sizeof note)->id, "builtin-routine");
}

static void steps_fall_due_per_round(void **state)
{
    (void)state;
    static config cfg;
    char err[512];
    const char *text = "[policy.r]\nversion = 1\ndefault_for = urgent\n"
                       "delivered_within_ms = 1000\nreceived_within_ms = 2000\n"
                       "accepted_within_ms = 3000\nstep = not_delivered copy_next\n"
                       "step = not_received alert_supervisor 500\n"
                       "step = rejected copy_next\nstep = not_accepted alert_centre\n"
                       "rounds = 3\nround_ms = 5000\n";
    if (!load_with(text, &cfg, err, sizeof err))
        fail_msg("refused: %s", err);
    const policy *p = by_id(&cfg, "r");
    assert_int_equal(policy_step_due(p, 0, 0, 100000), 101000);
    assert_int_equal(policy_step_due(p, 1, 0, 100000), 102500);
    assert_int_equal(policy_step_due(p, 3, 2, 100000), 113000);
    assert_false(policy_is_timed(p->steps[2].condition));
    assert_string_equal(policy_condition_name(p->steps[1].condition), "not_received");
    assert_string_equal(policy_action_name(p->steps[3].action), "alert_centre");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_policy EXAMPLE_INI\n");
        return 2;
    }
    example_path = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(example_policies_are_the_builtin_defaults),
        cmocka_unit_test(faults_in_a_policy_are_refused_with_a_reason),
        cmocka_unit_test(selection_prefers_the_pinned_then_the_most_specific),
        cmocka_unit_test(steps_fall_due_per_round),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
