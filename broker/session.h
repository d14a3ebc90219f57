/*
 * session: the client connections a broker knows, by ZeroMQ routing id.
 *
 * A session exists from a successful Hello until the client is silent for
 * session_idle_ms, a send to it fails, or it says Hello again. The table
 * has a fixed capacity from configuration; a Hello beyond it is refused
 * with RESULT_BUSY. Credit is per session and capped by max_credit.
 */
#ifndef REF_BROKER_SESSION_H
#define REF_BROKER_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ids.h"

#define SESSION_RID_MAX 256

typedef struct {
    bool is_used;
    uint8_t rid[SESSION_RID_MAX];     /* ZeroMQ routing id */
    size_t rid_len;
    char agency[IDS_NAME_MAX + 1];    /* the identity the session runs as (its CURVE key's) */
    uint8_t key_id[16];               /* key id of the connection's CURVE key */
    uint32_t credit;                  /* deliveries the client will take */
    uint64_t last_seen_ms;            /* monotonic */
} session;

typedef struct {
    session *items;
    size_t cap;
    size_t count;
    size_t next_rr;                   /* where the next delivery round starts */
} session_table;

/* Allocate a table of cap sessions. False when out of memory. */
bool session_table_init(session_table *t, size_t cap);
void session_table_free(session_table *t);

/* The session of routing id rid, or NULL. */
session *session_find(session_table *t, const uint8_t *rid, size_t rid_len);

/* Start (or restart) the session of rid as agency. NULL when full. */
session *session_open(session_table *t, const uint8_t *rid, size_t rid_len, const char *agency,
                      uint64_t now_ms);

void session_close(session_table *t, session *s);

/* Close sessions silent since before now_ms - idle_ms; returns how many. */
size_t session_expire_idle(session_table *t, uint64_t now_ms, uint64_t idle_ms);

#endif
