/*
 * policy: escalation policies, read from the broker configuration's
 * [policy.NAME] sections (docs/escalation.md, etc/referrald.example.ini).
 *
 * A policy is selected when the recipient's home broker first stores a
 * referral: the one the sender pinned in the header (id and version), or,
 * when the header names none, the default for the referral's urgency (the
 * most specific match on the recipient's agency kind and region). The
 * escalation then keeps a copy of the whole policy (escalate.h), so that
 * editing the configuration never changes an escalation already running.
 *
 * A policy: deadlines per level counted from creation (delivered, received
 * by a person, accepted by an agency), and ordered steps. A step is a
 * condition and an action:
 *
 *   not_delivered  at created + delivered_within_ms (+ the step's delay):
 *                  no attempt's client holds it durably yet
 *   not_received   at created + received_within_ms: nobody picked it up
 *   not_accepted   at created + accepted_within_ms: no agency took the case
 *   rejected       when an agency rejects it (with the built-in re-route)
 *   fatal          when an attempt ends undeliverable, damaged or refused
 *
 *   copy_next        copy to the next agency of the escalation chain
 *   copy_all         copy to every agency of the chain not yet tried
 *   alert_supervisor alert the recipient's supervisor desk
 *   alert_centre     alert the recipient's regional centre
 *
 * Each step fires at most once per round; the timed steps repeat `rounds`
 * times, round r shifted by r * round_ms. The last step must be an alert
 * on not_accepted: an escalation never ends in silence. When no policy in
 * the file is the default for an urgency, a built-in one is (the values in
 * the example configuration).
 */
#ifndef REF_BROKER_POLICY_H
#define REF_BROKER_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ids.h"

#define POLICY_MAX 32
#define POLICY_MAX_STEPS 16
#define POLICY_MAX_ROUNDS 10

typedef enum {
    POLICY_IF_NOT_DELIVERED = 1,
    POLICY_IF_NOT_RECEIVED = 2,
    POLICY_IF_NOT_ACCEPTED = 3,
    POLICY_IF_REJECTED = 4,
    POLICY_IF_FATAL = 5,
} policy_condition;

typedef enum {
    POLICY_DO_COPY_NEXT = 1,
    POLICY_DO_COPY_ALL = 2,
    POLICY_DO_ALERT_SUPERVISOR = 3,
    POLICY_DO_ALERT_CENTRE = 4,
} policy_action;

/* Index into policy.within_ms. */
enum { POLICY_DELIVERED = 0, POLICY_RECEIVED = 1, POLICY_ACCEPTED = 2, POLICY_LEVELS = 3 };

typedef struct {
    uint8_t condition;            /* policy_condition */
    uint8_t action;               /* policy_action */
    uint64_t delay_ms;            /* after the condition's deadline (timed conditions) */
} policy_step;

typedef struct {
    char name[IDS_NAME_MAX + 1];  /* the section's NAME ("built-in" for a built-in one) */
    char id[IDS_NAME_MAX + 1];    /* what senders pin; default: name */
    uint32_t version;             /* 1.. */
    uint8_t default_for;          /* bit u set: the default for urgency u (1..4) */
    uint8_t agency_kind;          /* AgencyKind a default is for; 0: any */
    char region[IDS_NAME_MAX + 1]; /* region a default is for; "": any */
    uint64_t within_ms[POLICY_LEVELS];
    uint64_t watchdog_grace_ms;   /* the origin's watchdog waits this beyond each deadline */
    uint32_t rounds;              /* 1..POLICY_MAX_ROUNDS */
    uint64_t round_ms;            /* a further round starts this long after the last */
    size_t n_steps;
    policy_step steps[POLICY_MAX_STEPS];
} policy;

typedef struct {
    size_t n;
    policy items[POLICY_MAX];
    size_t n_from_file;           /* items[0..n_from_file) came from the file */
} policy_set;

/* Handle one key of section "policy.NAME" (the caller routes those here).
 * False with why naming the fault: an unknown key, a bad value. */
bool policy_parse_key(policy_set *ps, const char *section, const char *name, const char *value,
                      char *why, size_t why_len);

/* After the file: check every policy (see the top) and add the built-in
 * defaults for urgencies the file left without one. False with why. */
bool policy_finish(policy_set *ps, char *why, size_t why_len);

/* The policy for a referral: the pinned (id, version) when this broker has
 * it; else the same id's highest version, else the urgency's default
 * (note then gets a sentence saying what ran instead; "" otherwise). Never
 * NULL once policy_finish() succeeded. */
const policy *policy_select(const policy_set *ps, const char *pinned_id, uint32_t pinned_version,
                            uint8_t urgency, uint8_t agency_kind, const char *region,
                            char *note, size_t note_len);

/* Is condition a timed one (not_delivered, not_received, not_accepted)? */
bool policy_is_timed(uint8_t condition);

/* When timed step i of round r is due for a referral created at created_ms. */
uint64_t policy_step_due(const policy *p, size_t i, uint32_t round, uint64_t created_ms);

/* Names, for logs, alerts and the configuration ("not_received", ...). */
const char *policy_condition_name(uint8_t condition);
const char *policy_action_name(uint8_t action);

#endif
