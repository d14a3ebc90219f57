/*
 * referralctl_admin: referralctl's commands on a running broker's
 * operators' socket (docs/operations.md, "The admin socket"): status,
 * queues, oldest, peers, undeliverable, expired, show ID and the actions
 * hold, release, requeue and expire ID --reason TEXT.
 */
#ifndef REF_TOOLS_REFERRALCTL_ADMIN_H
#define REF_TOOLS_REFERRALCTL_ADMIN_H

#include <stdbool.h>
#include <stdio.h>

/* Exit codes of the admin commands (referralctl --help lists them). */
enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_REFUSED = 1,         /* the broker answered with an error (its detail printed) */
    CTL_EXIT_USAGE = 2,
    CTL_EXIT_UNREACHABLE = 3,     /* no socket, no permission, or no answer */
};

/* Is name one of the admin commands (or a global option of theirs, such as
 * --socket, given before the command)? */
bool ctl_admin_is_command(const char *name);

/* Run an admin command line (argv[0] is the program; options anywhere).
 * Returns a CTL_EXIT_* code; prints the result to stdout, errors to
 * stderr. */
int ctl_admin_main(int argc, char **argv);

/* The usage lines and their explanations, for referralctl --help. */
void ctl_admin_usage(FILE *f);

#endif
