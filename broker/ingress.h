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

/* The signing key to check submit's envelope with: its sender's key in the
 * current directory. False when the envelope cannot be read or its sender
 * is unknown (ingress_submit() then refuses it with the reason). */
bool ingress_signer_key(const broker *b, const Referral__V1__Submit *submit, uint8_t key[32]);

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
