/*
 * verify: Ed25519 signature checks on worker threads, fed from the loop.
 *
 * A signature check costs about 100 us, more than everything else the loop
 * does for a message; run on the loop thread it would hold back commits,
 * deliveries and deadlines behind every burst. The loop hands each check
 * to a pool of worker threads over inproc ZeroMQ sockets and goes on with
 * its turn; results come back on a socket the loop polls.
 *
 *   loop --PUSH inproc://referral-verify-jobs--> worker 1..n
 *   loop <--PULL inproc://referral-verify-results-- worker 1..n
 *
 * A job borrows its bytes: the caller keeps the header, body, signature
 * and key alive and unchanged until the job's result has been read. The
 * workers touch nothing else (no directory, no store), so a directory
 * reload on the loop thread needs no lock: the caller compares the key a
 * job was checked with against the directory when it uses the result.
 *
 * Nothing here blocks the loop: verifier_submit() refuses (false) when the
 * pipe to the workers is full, and the caller holds the frame for a later
 * turn.
 */
#ifndef REF_BROKER_VERIFY_H
#define REF_BROKER_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sign.h"

typedef struct verifier verifier;

/* One check. All pointers are borrowed until the result is read. */
typedef struct {
    uint64_t id;                              /* the caller's, returned with the result */
    const uint8_t *public_key;                /* SIGN_PUBLIC_BYTES */
    const uint8_t *header;
    size_t header_len;
    const uint8_t *body;
    size_t body_len;
    const uint8_t *signature;                 /* SIGN_BYTES */
} verify_job;

/* The number of workers for "auto" (0): one per online core less one (the
 * loop's), at least one. */
unsigned verifier_default_workers(void);

/* Start n workers (n >= 1) on zctx. NULL (errno set) if a socket or thread
 * cannot be made; nothing is left running then. Free with
 * verifier_destroy(). */
verifier *verifier_new(void *zctx, unsigned n);

/* Stop and join the workers, close the sockets. Results not yet read are
 * dropped. NULL-safe; sets *v to NULL. */
void verifier_destroy(verifier **v);

/* The socket that becomes readable when results wait (for zmq_poll). */
void *verifier_results_socket(const verifier *v);

/* Hand a job to the workers without blocking. False when their pipe is
 * full (try again in a later turn). */
bool verifier_submit(verifier *v, const verify_job *job);

/* Read one result without blocking: true with *id and *is_valid set, false
 * when none waits. */
bool verifier_result(verifier *v, uint64_t *id, bool *is_valid);

/* Jobs handed over whose results are not read yet. */
size_t verifier_in_flight(const verifier *v);

#endif
