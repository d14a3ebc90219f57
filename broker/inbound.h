/*
 * inbound: frames from clients and peer brokers, held in arrival order
 * while their signatures are checked on worker threads (verify.h).
 *
 * Each turn the loop reads frames into a bounded ring (inbound_read), hands
 * the signature checks of Submits to the workers (inbound_dispatch), takes
 * back their verdicts (inbound_collect), and handles frames from the head
 * of the ring for as long as the head is ready (inbound_head): a frame
 * waits for every frame that arrived before it, so answers to a session
 * keep their order, while the loop goes on committing, delivering and
 * firing deadlines. When the ring is full the loop stops reading and
 * ZeroMQ holds further frames in the clients' pipes (back-pressure).
 *
 * A held frame owns its ZeroMQ parts and its decoded ClientFrame; a job
 * handed to the workers borrows them, so a frame is never released while
 * its check is out (inbound_destroy() must come after verifier_destroy()).
 */
#ifndef REF_BROKER_INBOUND_H
#define REF_BROKER_INBOUND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#include "ingress.h"
#include "verify.h"
#include "wire.h"

typedef enum {
    HELD_READY,        /* may be handled */
    HELD_TO_CHECK,     /* a Submit whose check is not handed over yet */
    HELD_CHECKING,     /* its check is with a worker */
} held_state;

typedef struct {
    uint64_t seq;                          /* arrival number, > 0: the check's job id */
    held_state state;
    bool is_peer;                          /* from the peer socket: a PeerFrame */
    size_t n_parts;                        /* a message is 2 parts: routing id, frame */
    zmq_msg_t rid;                         /* the routing id part */
    zmq_msg_t data;                        /* the frame part (carries the ZAP User-Id) */
    int fd;                                /* the connection's socket (ZMQ_SRCFD), -1 if unknown */
    Referral__V1__ClientFrame *frame;      /* decoded at arrival (client); NULL if it did not */
    Referral__V1__PeerFrame *peer_frame;   /* decoded at arrival (peer); NULL if it did not */
    const Referral__V1__Envelope *checked; /* the envelope whose signature is checked */
    wire_err decode_err;                   /* why not */
    char decode_why[256];
    ingress_check chk;                     /* a Submit's signature check */
} held;

typedef struct held_frames held_frames;

/* A ring of cap frames. NULL when out of memory. */
held_frames *inbound_new(size_t cap);

/* Release every held frame and the ring. Call after verifier_destroy().
 * NULL-safe; sets *ib to NULL. */
void inbound_destroy(held_frames **ib);

/* Read up to max frames from router (the client socket, or the peer socket
 * when is_peer) without blocking, decode each and, for a Submit or a
 * Forward whose signature must be checked here, note the key to check with
 * (key_of: false when no check is wanted). Returns how many were read;
 * *is_more is set when the read stopped for lack of room or max (frames may
 * still wait). */
typedef bool (*inbound_key_fn)(const void *ctx, const Referral__V1__Envelope *env,
                               bool is_forward, uint8_t key[32]);
size_t inbound_read(held_frames *ib, void *router, bool is_peer, size_t max,
                    const wire_limits *limits, inbound_key_fn key_of, const void *ctx,
                    bool *is_more);

/* Hand waiting checks to the workers, in order, until their pipe is full.
 * Returns how many were handed over. */
size_t inbound_dispatch(held_frames *ib, verifier *v);

/* Take every verdict the workers sent back. Returns how many. */
size_t inbound_collect(held_frames *ib, verifier *v);

/* The oldest frame if it is ready, else NULL (borrowed until
 * inbound_pop()). */
held *inbound_head(held_frames *ib);

/* Release the oldest frame. */
void inbound_pop(held_frames *ib);

/* Frames held. */
size_t inbound_count(const held_frames *ib);

/* Might frames of routing id rid still wait, held here or unread in the
 * socket (the last read stopped before the socket was empty)? */
bool inbound_may_hold(const held_frames *ib, const uint8_t *rid, size_t rid_len);

/* Are frames of routing id rid held here (read, not yet handled)? */
bool inbound_holds(const held_frames *ib, const uint8_t *rid, size_t rid_len);

/* How many reads of the client socket have ended because it was empty.
 * A connection's frames that arrived before the monitor reported it
 * closed are all read once this count has grown past its value at that
 * report: the close is reported after them, but they may still sit in the
 * socket when the report is read. */
uint64_t inbound_drains(const held_frames *ib);

#endif
