/*
 * peer: this broker's links to peer brokers (federation, docs/federation.md).
 *
 * Each configured peer gets an outbound link: a CURVE DEALER to the peer's
 * peer socket, over which this broker forwards what it stores for that
 * peer (store-and-forward: a message leaves the peer's queue only on the
 * peer's hop ack, sent after the peer's own durable commit) and the peer
 * answers with hop acks. Every broker also binds one peer socket (a CURVE
 * ROUTER in its own ZAP domain, broker keys only) where peers forward to
 * it; its frames go through the inbound ring like clients' (inbound.h), and
 * their hop acks go back on it after the turn's commit.
 *
 *   this broker                          peer
 *   queue "peer id" --Forward/notice-->  peer socket: ingress_forward, commit
 *   (in flight)     <--HopAck---------   (after its commit)
 *   DELIVERED here, traced RELAYED
 *
 * Both sides send a Heartbeat every heartbeat_ms whether or not data flows;
 * a link heard nothing from for peer_timeout_ms is down, and what was in
 * flight on it returns to the peer's queue at once (frames in flight are
 * assumed lost on any reconnect: only hop acks move state). ZeroMQ
 * reconnects with a doubling backoff, capped, so one dead region never
 * slows the others; a link with queued work and no hop ack for stall_ms is
 * stalled: logged as an error once, and counted.
 */
#ifndef REF_BROKER_PEER_H
#define REF_BROKER_PEER_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>
#include <lmdb.h>

#include "broker.h"
#include "inbound.h"
#include "store.h"

typedef struct peer_set peer_set;

/* Open the peer socket (if [federation] peer_listen is set) and a link to
 * each configured peer, and add their links to b->links. NULL (why
 * filled) when a socket cannot be made or a peer is not in the directory.
 * An empty configuration gives an empty set. */
peer_set *peers_open(broker *b, char *why, size_t why_len);

/* Close every socket; frames still held are dropped (their messages stay
 * queued or in flight in the store and are sent again after a restart). */
void peers_close(broker *b, peer_set **ps);

/* The peer socket (NULL without federation). */
void *peers_socket(const peer_set *ps);

/* Add the links' sockets (and their monitors) to items from index *n on;
 * items has room for peers_poll_count(). */
size_t peers_poll_count(const peer_set *ps);
void peers_poll_items(const peer_set *ps, zmq_pollitem_t *items, size_t *n);

/* Read hop acks, heartbeats and connection events on the outbound links,
 * and act on them in txn (hop acks settle their messages). */
store_err peers_read(broker *b, MDB_txn *txn, uint64_t now_ms);

/* Handle one frame a peer sent to the peer socket (from the inbound ring):
 * Forward, notice, Heartbeat, PeerHello. */
store_err peers_handle(broker *b, MDB_txn *txn, held *hf, uint64_t now_ms);

/* Take messages queued for each peer that is up, within its window, onto
 * its link. */
store_err peers_deliver(broker *b, MDB_txn *txn, uint64_t now_ms);

/* Heartbeats due, links timed out, stalls (before the turn's flush).
 * mono_ms: clock_mono_ms(), the clock every link timer runs on (wall time
 * is only for what is stored). */
void peers_tick(broker *b, uint64_t mono_ms);

/* The peer to send through towards agency's home broker, or NULL when the
 * agency is homed here (or unknown): delivery_ctx.route. */
const char *peers_route_agency(const void *b, const char *agency);

/* Announce links that stalled or moved again since the last turn to the
 * agencies of [federation] stall_alert_to (signed alerts; docs/federation.md,
 * "Operating"), in the turn's transaction. */
store_err peers_announce(broker *b, MDB_txn *txn, uint64_t now_ms);

/* Is id a peer this broker links to? */
bool peers_is_peer(const broker *b, const char *id);

/* Send a TraceQuery to peer over its link (false: no such link, or down);
 * answer a peer's TraceQuery on the peer socket (rid: its routing id). */
bool peers_send_trace_query(broker *b, const char *peer, const Referral__V1__TraceQuery *q);
void peers_send_trace_reply(broker *b, const uint8_t *rid, size_t rid_len,
                            const Referral__V1__TraceReply *r);

/* Append one object per outbound link to out (a JSON array), for the
 * admin command "peers" (docs/operations.md gives the shape): its state
 * (up, connected, stalled or down), forwards in flight and the window,
 * frames held, messages queued for it (counted up to 1000000), ms since it
 * was last heard from (null: never) and since when work waits without a
 * hop ack (0: none). Reads the peer's queue in txn. */
void peers_describe(const broker *b, MDB_txn *txn, json_object *out);

#endif
