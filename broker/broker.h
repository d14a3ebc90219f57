/*
 * broker: the state of one running referrald, shared by loop.c (the event
 * loop, loop.h), ingress.c (submissions, ingress.h), trust.c (the
 * directory) and broker.c (start and stop, for main.c and unit tests). Each module declares what it
 * offers in its own header; this one holds only the shared state.
 */
#ifndef REF_BROKER_BROKER_H
#define REF_BROKER_BROKER_H

#include <signal.h>
#include <stdbool.h>

#include "config.h"
#include "delivery.h"
#include "directory.h"
#include "escalate.h"
#include "keys.h"
#include "link.h"
#include "session.h"
#include "store.h"
#include "wire.h"

#define BROKER_MAX_LINKS 64

/* Exit codes of referrald (documented in --help and docs/operations.md). */
enum {
    BROKER_EXIT_OK = 0,
    BROKER_EXIT_USAGE = 2,        /* bad arguments or configuration */
    BROKER_EXIT_STORE = 3,        /* the store cannot be opened, or a commit failed */
    BROKER_EXIT_TRANSPORT = 4,    /* ZeroMQ cannot bind, or lacks CURVE */
    BROKER_EXIT_TRUST = 5,        /* keys or the directory are missing, invalid or stale */
};


typedef struct broker_s {
    config cfg;
    store *st;
    void *zctx;
    void *router;                 /* client ROUTER socket (CURVE server) */
    void *zap;                    /* ZAP handler socket, bound before any CURVE socket */
    directory *dir;               /* the current signed directory */
    uint8_t trust_root[32];       /* pinned root public key */
    keys_identity keys;           /* this broker's keys */
    session_table sessions;
    delivery_ctx dc;
    escalate_ctx ec;              /* escalation and the origin's watchdog (escalate.h) */
    wire_limits limits;

    broker_link clients;                 /* the client ROUTER's frames for after the commit */
    broker_link *links[BROKER_MAX_LINKS]; /* every link the loop serves: clients first, peers next */
    size_t n_links;
    uint8_t (*lost)[IDS_BYTES];   /* deliveries whose send failed: return next turn */
    size_t n_lost, cap_lost;
    struct sent_delivery {        /* deliveries that left: count their attempt next turn */
        uint8_t id[IDS_BYTES];
        uint32_t attempt;
    } *sent;
    size_t n_sent, cap_sent;
    void *monitor;                /* the ROUTER's socket monitor: disconnects end sessions */
    size_t n_gone;                /* sessions whose connection closed, not yet ended (at most) */
    struct verifier *verifier;    /* signature checks on worker threads (verify.h) */
    struct held_frames *held;     /* frames in arrival order, some awaiting checks (loop.c) */
    struct peer_set *peers;       /* links to peer brokers (peer.h); empty without federation */
    struct retention *retention;  /* the background sweep (retention.h) */
    struct admin *admin;          /* the operators' socket (admin.h) */
    struct trace_set *traces;     /* trace queries waiting for peer brokers (trace.h) */

    uint64_t next_due_ms;         /* earliest deadline, UINT64_MAX if none */
    uint64_t next_escalation_ms;  /* earliest escalation deadline: a turn's frames stop there */
    bool is_busy;                 /* more work waits: poll without sleeping */
    uint64_t checked_ms;          /* monotonic, the last notice_stall() (loop.c) */
    bool is_holding;              /* a link holds frames for a full pipe: poll briefly */
    volatile sig_atomic_t *stop;  /* set by SIGTERM / SIGINT */
    volatile sig_atomic_t *reload; /* set by SIGHUP: load the directory again */
} broker;

/* Start a broker from a checked configuration (copied into b->cfg) as
 * referrald does (broker.c): open the store, the session table, load this
 * broker's keys and the directory, return in-flight deliveries to their
 * queues, bind the ZAP handler and then the CURVE ROUTER on cfg->listen.
 * Each failure is logged with its fix. Returns BROKER_EXIT_OK, or the
 * BROKER_EXIT_* code to exit with; either way b is owned by the caller
 * until broker_close() (which accepts a half-opened broker). b->stop and
 * b->reload point at flags nobody sets until the caller points them at its
 * own. The loop is not running yet: loop_run(), or loop_open() and
 * loop_turn() (loop.h). */
int broker_open(broker *b, const config *cfg);

/* Close everything broker_open() opened (after loop_run() or loop_close()
 * returned). Safe on a broker whose broker_open() failed. */
void broker_close(broker *b);

/* Load the directory file named in the configuration, refusing one older
 * than the version this store has used; on success replace b->dir and
 * record the version (a commit). Returns false with why filled on refusal
 * (b->dir is then unchanged). *fault is STORE_OK unless the store failed
 * (a failed commit included): then the broker must exit BROKER_EXIT_STORE. */
bool broker_load_directory(broker *b, store_err *fault, char *why, size_t why_len);


#endif
