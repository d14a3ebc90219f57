/*
 * link: frames out of one ROUTER socket, after the commit (link.h). The
 * queue is one array in send order; frames a full pipe keeps are moved to
 * its front, in order, for the next flush.
 *
 * It must never send a frame before the commit that makes it true (the
 * loop flushes only after it), reorder frames for one peer, or drop a
 * delivery without telling the owner.
 */
#include "link.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

void link_init(broker_link *l, const char *name, void *socket, uint32_t max_hold_ms,
               uint32_t max_held_frames, const link_ops *ops, void *ctx)
{
    memset(l, 0, sizeof *l);
    l->name = name;
    l->socket = socket;
    l->max_hold_ms = max_hold_ms;
    l->max_held_frames = max_held_frames;
    l->ops = *ops;
    l->ctx = ctx;
}

static void drop_frame(broker_link *l, link_frame *f, bool is_lost)
{
    if (f->data == NULL)
        return;
    if (is_lost && f->is_delivery)
        l->ops.on_lost(l->ctx, f);
    free(f->data);
    f->data = NULL;
}

void link_free(broker_link *l)
{
    for (size_t i = 0; i < l->n_out; i++)
        drop_frame(l, &l->out[i], true);
    free(l->out);
    l->out = NULL;
    l->n_out = l->cap_out = 0;
}

link_frame *link_queue(broker_link *l, const uint8_t *rid, size_t rid_len, uint8_t *data,
                       size_t len)
{
    if (rid_len > LINK_RID_MAX) {
        free(data);
        return NULL;
    }
    if (l->n_out == l->cap_out) {
        size_t cap = l->cap_out == 0 ? 64 : l->cap_out * 2;
        link_frame *p = realloc(l->out, cap * sizeof *p);
        if (p == NULL) {
            free(data);
            return NULL;
        }
        l->out = p;
        l->cap_out = cap;
    }
    link_frame *f = &l->out[l->n_out++];
    memset(f, 0, sizeof *f);
    if (rid_len > 0)
        memcpy(f->rid, rid, rid_len);
    f->rid_len = rid_len;
    f->data = data;
    f->len = len;
    return f;
}

static bool is_for(const link_frame *f, const uint8_t *rid, size_t rid_len)
{
    return f->data != NULL && f->rid_len == rid_len && memcmp(f->rid, rid, rid_len) == 0;
}

void link_drop(broker_link *l, const uint8_t *rid, size_t rid_len, bool is_all, uint64_t serial)
{
    for (size_t i = 0; i < l->n_out; i++) {
        link_frame *f = &l->out[i];
        if (is_for(f, rid, rid_len) && (f->is_delivery ? f->session_serial == serial : is_all))
            drop_frame(l, f, false);
    }
}

/* The peer rid is gone: drop every frame for it, held or not yet tried
 * (its deliveries through on_lost), then tell the owner. */
static void give_up(broker_link *l, const uint8_t *peer, size_t peer_len, const char *why)
{
    uint8_t rid[LINK_RID_MAX];
    memcpy(rid, peer, peer_len);   /* peer points into a frame dropped below */
    for (size_t i = 0; i < l->n_out; i++)
        if (is_for(&l->out[i], rid, peer_len))
            drop_frame(l, &l->out[i], true);
    l->ops.on_peer_gone(l->ctx, rid, peer_len, why);
}

/* Is an earlier frame for f's peer held (kept frames are out[0..kept))? */
static bool is_behind_held(const broker_link *l, size_t kept, const link_frame *f)
{
    for (size_t k = 0; k < kept; k++)
        if (is_for(&l->out[k], f->rid, f->rid_len))
            return true;
    return false;
}

/* Try to send f; 0 sent, else the errno (EAGAIN: the peer's pipe is full). */
static int send_frame(broker_link *l, const link_frame *f)
{
    if (f->rid_len > 0 && zmq_send(l->socket, f->rid, f->rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return errno;
    if (zmq_send(l->socket, f->data, f->len, ZMQ_DONTWAIT) < 0)
        return errno;
    return 0;
}

void link_flush(broker_link *l, uint64_t now_ms)
{
    size_t kept = 0;
    for (size_t i = 0; i < l->n_out; i++) {
        link_frame *f = &l->out[i];
        if (f->data == NULL)
            continue;   /* dropped with its peer or its session */
        if (!l->ops.is_wanted(l->ctx, f)) {
            drop_frame(l, f, false);
            continue;
        }
        int err = is_behind_held(l, kept, f) ? EAGAIN : send_frame(l, f);
        if (err == 0) {
            if (f->is_delivery)
                l->ops.on_sent(l->ctx, f);
            drop_frame(l, f, false);
            continue;
        }
        if (err != EAGAIN) {
            give_up(l, f->rid, f->rid_len, zmq_strerror(err));
            continue;
        }
        if (f->held_since_ms == 0)
            f->held_since_ms = now_ms;
        if (now_ms - f->held_since_ms > l->max_hold_ms || kept >= l->max_held_frames) {
            give_up(l, f->rid, f->rid_len, "peer stopped reading");
            continue;
        }
        if (kept != i) {   /* move it forward; the old slot must not free it again */
            l->out[kept] = *f;
            f->data = NULL;
        }
        kept++;
    }
    size_t n = 0;   /* compact: frames dropped after being kept are gone */
    for (size_t k = 0; k < kept; k++)
        if (l->out[k].data != NULL)
            l->out[n++] = l->out[k];
    l->n_out = n;
}

void link_clear(broker_link *l)
{
    for (size_t i = 0; i < l->n_out; i++)
        drop_frame(l, &l->out[i], false);
    l->n_out = 0;
}

size_t link_held(const broker_link *l)
{
    return l->n_out;
}
