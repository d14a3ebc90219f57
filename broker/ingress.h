/*
 * ingress: what a Submit passes before the broker answers ACCEPTED
 * (ingress.c lists the checks in order). The signature check itself runs
 * on a worker thread before the loop hands the frame here (verify.h); the
 * loop asks ingress_signer_key() which key to check with when the frame
 * arrives, and passes the verdict in.
 */
#ifndef REF_BROKER_INGRESS_H
#define REF_BROKER_INGRESS_H

#include <stdbool.h>
#include <stdint.h>

#include "broker.h"

/* A signature check made before the submission is handled. */
typedef struct {
    bool is_checked;              /* a worker checked it (false: check here) */
    bool is_valid;                /* the worker's verdict */
    uint8_t public_key[32];       /* the key it checked with */
} ingress_check;

/* The signing key to check env with: its sender's key in the current
 * directory. False when the envelope cannot be read, its sender is
 * unknown (ingress then refuses it with the reason) or, for a forward
 * (is_forward), when this broker is not the recipient's home (a relay
 * trusts the hop and checks nothing). */
bool ingress_signer_key(const broker *b, const Referral__V1__Envelope *env, bool is_forward,
                        uint8_t key[32]);

/* The answer to a forward, for the hop ack. */
typedef struct {
    uint8_t message_id[16];       /* zero when the envelope could not be read */
    Referral__V1__ResultCode code;
    bool is_duplicate;
    char detail[512];
} ingress_answer;

/*
 * Handle one envelope a peer broker forwarded (docs/federation.md): the
 * peer may carry it (its hops), route it (this broker's queue for a local
 * recipient, or the next hop's), verify it where it is needed (at the
 * recipient's home), dedup, expiry, binding, room, store it in a child
 * transaction. answer gets the hop ack's content, to be sent after the
 * commit. Returns a store fault only.
 */
store_err ingress_forward(broker *b, MDB_txn *txn, const char *peer,
                          const Referral__V1__Envelope *env, const ingress_check *chk,
                          uint64_t now_ms, ingress_answer *answer);

/*
 * Handle one Submit from session sess inside the turn's transaction: check
 * (using chk's verdict when it was made with the sender's current key),
 * route, store in a child transaction, and queue the SubmitReply for after
 * the commit. chk may be NULL (the signature is checked here). Returns
 * STORE_FAILED only when the store failed (the broker must exit); refusals
 * are replies, not errors.
 */
store_err ingress_submit(broker *b, MDB_txn *txn, const session *sess,
                         const Referral__V1__Submit *submit, const ingress_check *chk,
                         uint64_t now_ms);

#endif
