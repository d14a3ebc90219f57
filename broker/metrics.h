/*
 * metrics: referrald's counters and gauges, served in the Prometheus text
 * format (version 0.0.4) at http://[metrics] listen/metrics by
 * libmicrohttpd on a thread of its own. Off unless [metrics] listen is set;
 * only a loopback address unless [metrics] allow_remote = true.
 *
 * Threads: the loop thread only counts (C11 atomics, relaxed: each counter
 * is exact, a scrape may see one counter a turn ahead of another) and
 * publishes snapshots; the HTTP thread only reads. The HTTP thread never
 * touches LMDB: queue figures come from a snapshot that the loop takes
 * inside its own turn's transaction when a scrape asks for one
 * (metrics_wants_queues), at most once a second. A scrape waits for that
 * snapshot at most METRICS_SNAPSHOT_WAIT_MS and is otherwise answered with
 * the previous one (its age is a metric of its own).
 *
 * The counters are process-wide, like the log level: one referrald is one
 * broker, and the hooks stay one line wherever they are (no context to
 * pass). They start at 0 at each start of the process.
 *
 * Federation links have figures per peer (metrics_peer_*), labelled with
 * the peer's broker id from [peers]: checked as an id when the
 * configuration loads ([a-z0-9._-], nothing to escape), and a fixed set
 * once the broker runs (at most CONFIG_MAX_PEERS).
 *
 * What must never happen here: a scrape that blocks the loop, a metric
 * that claims a feature not built (escalation has none yet), or a label
 * value taken from outside (every label is one of a fixed set).
 */
#ifndef REF_BROKER_METRICS_H
#define REF_BROKER_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"
#include "referral.pb-c.h"
#include "store.h"

/* How long a scrape waits for the loop's fresh queue snapshot. */
#define METRICS_SNAPSHOT_WAIT_MS 2000

/*
 * Parse a listen address "IPV4:PORT" or "[IPV6]:PORT" (numeric only, no
 * names, port 1..65535) into *addr (*addr_len bytes). *is_loopback tells
 * whether it is 127.0.0.0/8 or ::1. False when text is not such an address.
 */
bool metrics_parse_listen(const char *text, struct sockaddr_storage *addr, socklen_t *addr_len,
                          bool *is_loopback);

/*
 * Start the HTTP server when cfg->metrics_listen is set (nothing to do
 * otherwise). False (logged, with the fix) when the address cannot be
 * bound: the broker then exits BROKER_EXIT_TRANSPORT. Call once, before
 * the loop runs.
 */
bool metrics_start(const config *cfg);

/* Stop the HTTP server (waits for a scrape in progress). Safe to call
 * when it was never started. */
void metrics_stop(void);

/* ---- hooks on the loop thread: one call where the thing happens ------- */

/* A SubmitReply with code left (is_duplicate: OK for a message stored
 * before). */
void metrics_count_submission(Referral__V1__ResultCode code, bool is_duplicate);

/* A new message of kind was stored; for a receipt, level is the level its
 * routing header asserts. */
void metrics_count_stored(Referral__V1__MessageKind kind, Referral__V1__AckLevel level);

/* A delivery frame (attempt 1, or a redelivery) left for a live connection. */
void metrics_count_delivery(uint32_t attempt);

/* A Settle with verb was answered with code. */
void metrics_count_settle(Referral__V1__SettleVerb verb, Referral__V1__ResultCode code);

/* A referral expired before delivery (UNDELIVERABLE; its sender is told). */
void metrics_count_undeliverable(void);

/* An escalation step was taken (action: policy_action, or 5 when its
 * condition no longer held); an alert or stand-down notice of an AlertKind
 * was queued for one agency. */
void metrics_count_escalation_step(int action);
void metrics_count_alert(int kind, bool is_stand_down);

/* A turn acted on n escalation deadlines, the latest worst_late_ms after
 * its due time. */
void metrics_observe_escalations(uint32_t n, uint64_t worst_late_ms);

/* A monotonic time in microseconds, for metrics_observe_commit. */
uint64_t metrics_clock_us(void);

/* The turn's commit, begun at started_us, succeeded. */
void metrics_observe_commit(uint64_t started_us);

/* End of a turn: sessions open, frames held for signature checks (the
 * inbound ring), and checks out at the worker threads. */
void metrics_observe_turn(size_t sessions_open, size_t checks_pending, size_t checks_in_flight);

/* ---- federation links (peer.c): one call where the thing happens ---- */

/* A link to peer (a [peers] id, borrowed: copied) exists; its figures start
 * at 0. Adding a peer already known does nothing; above CONFIG_MAX_PEERS
 * peers the rest go uncounted. Call on the loop thread, before counting
 * for that peer. */
void metrics_peer_add(const char *peer);

/* Each turn's tick, per link: is it up (connected and heard from within
 * peer_timeout_ms), is it stalled (work waiting, no hop ack for stall_ms),
 * and how many forwards await their hop ack. */
void metrics_observe_peer(const char *peer, bool is_up, bool is_stalled, size_t in_flight);

/* The link went down (a disconnect, or silence for peer_timeout_ms). */
void metrics_count_peer_down(const char *peer);

/* The stall detector fired for the link (logged `link stalled`). */
void metrics_count_peer_stall(const char *peer);

/* A stored message (a forward or a notice) was handed to the link; a
 * resend after a link went down counts again. */
void metrics_count_peer_forward(const char *peer);

/* A hop ack with code settled a forward in flight on the link. */
void metrics_count_peer_hop_ack(const char *peer, Referral__V1__ResultCode code);

/* Has a scrape asked for a fresh queue snapshot? */
bool metrics_wants_queues(void);

/* Take the queue snapshot inside the turn's transaction (reads only) and
 * publish it to the HTTP thread. Cost: one walk of the queue index, about
 * 0.3 ms per 10,000 queued messages, at most once a second while scraped. */
void metrics_observe_queues(store *st, MDB_txn *txn, uint64_t now_ms);

#endif
