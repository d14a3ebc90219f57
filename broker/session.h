/*
 * session: the client sessions a broker knows, each bound to one
 * connection and one key.
 *
 * A session is keyed by the ZeroMQ routing id the ROUTER gave its
 * connection, and remembers that connection's socket (ZMQ_SRCFD at Hello)
 * and its CURVE key (ZAP User-Id). libzmq hands a routing id to one
 * connection at a time, but a client may choose its own (ZMQ_ROUTING_ID)
 * and take one a departed connection used; so the loop ends a session as
 * soon as a frame arrives on its routing id from another socket or key,
 * and when its connection is reported disconnected. Only routing ids the
 * ROUTER assigns (session_is_broker_rid) may open a session.
 *
 * Lifecycle and moves (asserted in session_assert_move):
 *
 *   (free) --open (Hello)--> OPEN
 *   OPEN --Hello again, same connection and key--> OPEN (credit reset)
 *   OPEN --close--> (free)   disconnected, replaced, evicted, idle, revoked,
 *                            send failed, stopped reading
 *
 * Closing a session moves the deliveries it still holds (session_track)
 * to the table's orphans; the loop returns each to its queue in the next
 * turn, if it is still in the same flight (same return deadline).
 *
 * Limits: the table holds cap sessions; one agency holds at most
 * max_per_agency (its oldest makes room for a new one); when the table is
 * full, a new agency's Hello takes the oldest session of the agency that
 * holds the most, if that agency holds two or more; only when every
 * session belongs to a different agency is a Hello refused (BUSY).
 * Each session remembers at most max_flights deliveries (a ring: the
 * oldest are forgotten, and return by their ack timeout instead).
 */
#ifndef REF_BROKER_SESSION_H
#define REF_BROKER_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ids.h"

#define SESSION_RID_MAX 256
#define SESSION_BROKER_RID_BYTES 5    /* libzmq ROUTER-assigned: 0x00 + 32-bit counter */

/* One delivery a session holds: the message and the return deadline of
 * the flight it was given in (its token: a later flight has another). */
typedef struct {
    uint8_t id[IDS_BYTES];
    uint64_t due_at_ms;
} session_flight;

typedef struct {
    bool is_used;
    uint64_t serial;                  /* unique in this process, ascending: age order */
    uint8_t rid[SESSION_RID_MAX];     /* ZeroMQ routing id */
    size_t rid_len;
    int fd;                           /* the connection's socket (ZMQ_SRCFD), -1 unknown */
    char agency[IDS_NAME_MAX + 1];    /* the identity the session runs as (its CURVE key's) */
    uint8_t key_id[16];               /* key id of the connection's CURVE key */
    uint32_t credit;                  /* deliveries the client will take */
    uint64_t last_seen_ms;            /* monotonic */
    bool is_gone;                     /* its connection closed: no more deliveries; it ends
                                         once the frames it sent before are handled */
    uint64_t gone_drain;              /* inbound_drains() when is_gone was set */
    uint64_t gone_at_ms;              /* monotonic, when is_gone was set */
    session_flight *flights;          /* owned ring of max_flights, allocated on first use */
    size_t n_flights, head_flight;
} session;

typedef struct {
    session *items;
    size_t cap;
    size_t count;
    size_t next_rr;                   /* where the next delivery round starts */
    size_t max_per_agency;            /* sessions one agency may hold */
    size_t max_flights;               /* deliveries remembered per session */
    uint64_t next_serial;
    session_flight *orphans;          /* held by closed sessions: return next turn */
    size_t n_orphans, cap_orphans;
} session_table;

/* Allocate a table of cap sessions, each agency limited to cap and each
 * session remembering 1024 deliveries until session_table_limits. False
 * when out of memory (session_table_free cleans up). */
bool session_table_init(session_table *t, size_t cap);
void session_table_free(session_table *t);

/* Set the per-agency cap (1..cap) and deliveries remembered per session. */
void session_table_limits(session_table *t, size_t max_per_agency, size_t max_flights);

/* Is rid one the ROUTER assigned (5 bytes, first 0)? A client that sets
 * ZMQ_ROUTING_ID usually chooses another; libzmq does let it choose this
 * shape too, so this is hygiene, not the security boundary. */
bool session_is_broker_rid(const uint8_t *rid, size_t rid_len);

/* The session of routing id rid, or NULL. */
session *session_find(session_table *t, const uint8_t *rid, size_t rid_len);

/* The open session of connection socket fd (fd >= 0), or NULL: not one
 * whose connection is gone, as a new connection may have its fd. */
session *session_find_fd(session_table *t, int fd);

/* Is this frame's connection (socket fd, key) the one s belongs to? */
bool session_is_connection(const session *s, int fd, const char *agency,
                           const uint8_t key_id[16]);

/* Room for a new session of agency, at now_ms:
 *   SESSION_ROOM_FREE      a free slot (*victim NULL);
 *   SESSION_ROOM_EVICT     close *victim first: at the agency's cap (or in
 *                          a full table), its oldest session that is gone
 *                          or silent for more than silent_ms; in a full
 *                          table where the agency has none such, the oldest
 *                          of the agency holding the most, if two or more;
 *   SESSION_ROOM_AGENCY_FULL  the agency holds its cap of live sessions
 *                          (none gone or silent): refuse, evict nobody, so
 *                          that clients beyond the cap cannot evict each
 *                          other in turn for ever;
 *   SESSION_ROOM_TABLE_FULL   full, every session another agency's. */
typedef enum {
    SESSION_ROOM_FREE,
    SESSION_ROOM_EVICT,
    SESSION_ROOM_AGENCY_FULL,
    SESSION_ROOM_TABLE_FULL,
} session_room_result;
session_room_result session_room(const session_table *t, const char *agency, uint64_t now_ms,
                                 uint64_t silent_ms, session **victim);

/* Open a session in a free slot. NULL when there is none or rid_len is out
 * of range (call session_room first). */
session *session_open(session_table *t, const uint8_t *rid, size_t rid_len, const char *agency,
                      const uint8_t key_id[16], int fd, uint64_t now_ms);

/* Close s (NULL or free: nothing). Its flights move to the orphans; if
 * that list cannot grow they are forgotten and return by ack timeout. */
void session_close(session_table *t, session *s);

/* Remember that s holds message id in the flight due at due_at_ms. */
void session_track(session_table *t, session *s, const uint8_t id[IDS_BYTES],
                   uint64_t due_at_ms);

/* s settled id: forget it. */
void session_untrack(const session_table *t, session *s, const uint8_t id[IDS_BYTES]);

/* s extended id's flight (IN_PROGRESS): its new return deadline. */
void session_retrack(const session_table *t, session *s, const uint8_t id[IDS_BYTES],
                     uint64_t due_at_ms);

/* Close sessions silent since before now_ms - idle_ms, except those for
 * which may_speak(ctx, s) says frames from them may still wait unread or
 * unhandled (a turn cut short, a paused broker); returns how many. */
size_t session_expire_idle(session_table *t, uint64_t now_ms, uint64_t idle_ms,
                           bool (*may_speak)(const void *ctx, const session *s),
                           const void *ctx);

/* The broker could not hear anyone until now_ms (it did not run): count
 * every session's silence from now_ms. */
void session_heard_all(session_table *t, uint64_t now_ms);

#endif
