/*
 * inbound: the ring of client frames in arrival order (inbound.h). Slots
 * never move, so a job handed to a worker can point into its frame; a
 * slot is released only from the head, after its frame was handled.
 *
 * It must never let a frame overtake one that arrived before it, never
 * mark a check done that no worker made, and never free what a worker may
 * still read.
 */
#include "inbound.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

struct held_frames {
    held *items;
    size_t cap;
    size_t head;            /* index of the oldest */
    size_t count;
    size_t n_to_check;      /* frames in HELD_TO_CHECK */
    bool is_unread;         /* the last read of the client socket stopped before it was empty */
    uint64_t n_drains;      /* reads of the client socket that found it empty */
    uint64_t next_seq;
};

held_frames *inbound_new(size_t cap)
{
    held_frames *ib = calloc(1, sizeof *ib);
    if (ib == NULL)
        return NULL;
    ib->items = calloc(cap, sizeof *ib->items);
    if (ib->items == NULL) {
        free(ib);
        return NULL;
    }
    ib->cap = cap;
    ib->next_seq = 1;
    return ib;
}

static held *at(held_frames *ib, size_t k)
{
    return &ib->items[(ib->head + k) % ib->cap];
}

static void release(held *h)
{
    zmq_msg_close(&h->rid);
    zmq_msg_close(&h->data);
    wire_free(h->frame);
    wire_free(h->peer_frame);
    memset(h, 0, sizeof *h);
}

void inbound_destroy(held_frames **ibp)
{
    if (ibp == NULL || *ibp == NULL)
        return;
    held_frames *ib = *ibp;
    while (ib->count > 0)
        inbound_pop(ib);
    free(ib->items);
    free(ib);
    *ibp = NULL;
}

/* Receive one message into h; false when none waits. */
static bool receive(held *h, void *router)
{
    zmq_msg_init(&h->rid);
    zmq_msg_init(&h->data);
    if (zmq_msg_recv(&h->rid, router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&h->rid);
        zmq_msg_close(&h->data);
        return false;
    }
    h->n_parts = 1;
    bool is_more = zmq_msg_more(&h->rid);
    while (is_more) {   /* parts of one message arrive together */
        zmq_msg_t extra, *p = h->n_parts == 1 ? &h->data : &extra;
        if (p == &extra)
            zmq_msg_init(&extra);
        if (zmq_msg_recv(p, router, 0) < 0)
            break;
        is_more = zmq_msg_more(p);
        if (p == &extra)
            zmq_msg_close(&extra);
        h->n_parts++;
    }
    return true;
}

/* The envelope of a frame whose signature may need a check here. */
static const Referral__V1__Envelope *envelope_of(const held *h)
{
    if (h->frame != NULL && h->frame->body_case == REFERRAL__V1__CLIENT_FRAME__BODY_SUBMIT)
        return h->frame->submit->envelope;
    if (h->peer_frame != NULL && h->peer_frame->body_case == REFERRAL__V1__PEER_FRAME__BODY_FORWARD)
        return h->peer_frame->forward->envelope;
    return NULL;
}

size_t inbound_read(held_frames *ib, void *router, bool is_peer, size_t max,
                    const wire_limits *limits, inbound_key_fn key_of, const void *ctx,
                    bool *is_more)
{
    size_t n = 0;
    *is_more = false;
    if (!is_peer)
        ib->is_unread = false;   /* is_unread speaks of the client socket */
    while (n < max && ib->count < ib->cap) {
        held *h = at(ib, ib->count);
        memset(h, 0, sizeof *h);
        if (!receive(h, router)) {
            if (!is_peer)
                ib->n_drains++;
            return n;
        }
        h->seq = ib->next_seq++;
        h->state = HELD_READY;
        h->fd = -1;
        ib->count++;
        n++;
        if (h->n_parts != 2)
            continue;   /* answered MALFORMED when handled */
        /* The connection's socket, which binds a session to it (session.h);
         * libzmq marks ZMQ_SRCFD deprecated but keeps it, -1 if unknown. */
        h->fd = zmq_msg_get(&h->data, ZMQ_SRCFD);
        h->is_peer = is_peer;
        h->decode_err = is_peer
            ? wire_decode_peer_frame(zmq_msg_data(&h->data), zmq_msg_size(&h->data), limits,
                                     &h->peer_frame, h->decode_why, sizeof h->decode_why)
            : wire_decode_client_frame(zmq_msg_data(&h->data), zmq_msg_size(&h->data), limits,
                                       &h->frame, h->decode_why, sizeof h->decode_why);
        h->checked = h->decode_err == WIRE_OK ? envelope_of(h) : NULL;
        if (h->checked != NULL && key_of(ctx, h->checked, is_peer, h->chk.public_key)) {
            h->state = HELD_TO_CHECK;
            ib->n_to_check++;
        }
    }
    *is_more = true;
    if (!is_peer)
        ib->is_unread = true;
    return n;
}

size_t inbound_dispatch(held_frames *ib, verifier *v)
{
    size_t n = 0;
    for (size_t k = 0; k < ib->count && ib->n_to_check > 0; k++) {
        held *h = at(ib, k);
        if (h->state != HELD_TO_CHECK)
            continue;
        const Referral__V1__Envelope *env = h->checked;
        verify_job job = {
            .id = h->seq,
            .public_key = h->chk.public_key,
            .header = env->header.data,
            .header_len = env->header.len,
            .body = env->sealed_body.data,
            .body_len = env->sealed_body.len,
            .signature = env->signature.data,
        };
        if (!verifier_submit(v, &job))
            break;   /* the workers' pipe is full: the rest next turn */
        h->state = HELD_CHECKING;
        ib->n_to_check--;
        n++;
    }
    return n;
}

size_t inbound_collect(held_frames *ib, verifier *v)
{
    size_t n = 0;
    uint64_t id;
    bool is_valid;
    while (verifier_result(v, &id, &is_valid)) {
        n++;
        if (ib->count == 0 || id < at(ib, 0)->seq || id - at(ib, 0)->seq >= ib->count)
            continue;   /* not ours (cannot happen: slots wait for their checks) */
        held *h = at(ib, (size_t)(id - at(ib, 0)->seq));
        assert(h->seq == id && h->state == HELD_CHECKING);
        h->chk.is_checked = true;
        h->chk.is_valid = is_valid;
        h->state = HELD_READY;
    }
    return n;
}

held *inbound_head(held_frames *ib)
{
    if (ib->count == 0)
        return NULL;
    held *h = at(ib, 0);
    return h->state == HELD_READY ? h : NULL;
}

void inbound_pop(held_frames *ib)
{
    assert(ib->count > 0);
    held *h = at(ib, 0);
    if (h->state == HELD_TO_CHECK)
        ib->n_to_check--;
    release(h);
    ib->head = (ib->head + 1) % ib->cap;
    ib->count--;
}

size_t inbound_count(const held_frames *ib)
{
    return ib->count;
}

uint64_t inbound_drains(const held_frames *ib)
{
    return ib->n_drains;
}


bool inbound_may_hold(const held_frames *ib, const uint8_t *rid, size_t rid_len)
{
    return ib->is_unread || inbound_holds(ib, rid, rid_len);
}

bool inbound_holds(const held_frames *ib, const uint8_t *rid, size_t rid_len)
{
    for (size_t k = 0; k < ib->count; k++) {
        const held *h = &ib->items[(ib->head + k) % ib->cap];
        if (zmq_msg_size((zmq_msg_t *)&h->rid) == rid_len &&
            memcmp(zmq_msg_data((zmq_msg_t *)&h->rid), rid, rid_len) == 0)
            return true;
    }
    return false;
}
