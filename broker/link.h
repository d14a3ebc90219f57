/*
 * link: one ZeroMQ socket the broker sends on, with the frames waiting for
 * the turn's commit and those held for a peer whose pipe is full: a ROUTER
 * (the client socket, the peer socket; each frame names its peer's routing
 * id) or a DEALER (the link to one peer broker; routing id empty).
 *
 * The loop queues frames during a turn (link_queue) and, after the commit
 * that makes them true, flushes every link (link_flush). Each link keeps
 * its own frames, its own held state and its own limits, so one slow or
 * full link (or peer) never delays another. What a frame means to the
 * rest of the broker is the owner's business, told through link_ops:
 *
 *   is_wanted     a frame that is no longer wanted (a delivery taken for a
 *                 session that has ended) is dropped, not sent
 *   on_sent       a delivery left for a live connection (count its attempt)
 *   on_lost       a delivery that will not be sent (return it to its queue)
 *   on_peer_gone  a peer is gone (EHOSTUNREACH) or stopped reading for
 *                 max_hold_ms or max_held_frames: every frame for it was
 *                 dropped (its deliveries through on_lost) before the call
 *
 * Nothing is dropped silently, and frames to one peer keep their order: a
 * frame never overtakes one held before it for the same peer.
 */
#ifndef REF_BROKER_LINK_H
#define REF_BROKER_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ids.h"

#define LINK_RID_MAX 256

/* One frame waiting to go out after the turn's commit. */
typedef struct {
    uint8_t rid[LINK_RID_MAX];    /* the peer's routing id */
    size_t rid_len;
    uint8_t *data;                /* owned: freed once sent or dropped */
    size_t len;
    bool is_delivery;             /* the owner hears of it through on_sent / on_lost */
    uint8_t message_id[IDS_BYTES];
    uint32_t attempt;             /* a delivery's attempt number, counted once sent */
    uint64_t session_serial;      /* a delivery goes only to the session it was taken for */
    uint64_t held_since_ms;       /* 0, or when the peer's pipe was first full */
} link_frame;

typedef struct {
    bool (*is_wanted)(void *ctx, const link_frame *f);
    void (*on_sent)(void *ctx, const link_frame *f);
    void (*on_lost)(void *ctx, const link_frame *f);
    void (*on_peer_gone)(void *ctx, const uint8_t *rid, size_t rid_len, const char *why);
} link_ops;

typedef struct {
    const char *name;             /* for logs: "clients", a peer broker's id */
    void *socket;                 /* borrowed ROUTER (ZMQ_ROUTER_MANDATORY set) or DEALER */
    uint32_t max_hold_ms;         /* a peer whose pipe stays full this long is gone */
    uint32_t max_held_frames;     /* ... or with this many frames held */
    link_ops ops;
    void *ctx;                    /* passed to ops */
    link_frame *out;              /* owned: queued, then held frames, in order */
    size_t n_out, cap_out;
} broker_link;

/* Set up l on socket (borrowed). No allocation until the first frame. */
void link_init(broker_link *l, const char *name, void *socket, uint32_t max_hold_ms,
               uint32_t max_held_frames, const link_ops *ops, void *ctx);

/* Free every frame still queued or held (deliveries through on_lost). */
void link_free(broker_link *l);

/* Queue data (takes ownership) for the peer rid. Returns the frame, for
 * the caller to mark a delivery, valid until the next link call; NULL when
 * out of memory (data is freed then). */
link_frame *link_queue(broker_link *l, const uint8_t *rid, size_t rid_len, uint8_t *data,
                       size_t len);

/* A session on rid ended: drop its deliveries (those taken for session
 * serial; freed without on_lost, since the session's owner takes them
 * back) and, when is_all (its connection is gone), every reply for rid. */
void link_drop(broker_link *l, const uint8_t *rid, size_t rid_len, bool is_all, uint64_t serial);

/* Free every frame without telling the owner (it has taken their
 * messages back already). */
void link_clear(broker_link *l);

/* Send what can be sent now, in order (see the top of this file). */
void link_flush(broker_link *l, uint64_t now_ms);

/* Frames held for full pipes after the last flush. */
size_t link_held(const broker_link *l);

#endif
