/*
 * config: referrald's configuration file (INI, parsed by Debian's inih).
 *
 * Every key, its unit and its default is listed in etc/referrald.example.ini,
 * which is the reference. An unknown section or key, a value out of range,
 * or a missing required key is an error that names the line: a typo must
 * never silently leave a default in force.
 */
#ifndef REF_BROKER_CONFIG_H
#define REF_BROKER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ids.h"
#include "log.h"
#include "policy.h"

#define CONFIG_MAX_PEERS 32
#define CONFIG_MAX_ROUTES 256
#define CONFIG_MAX_STALL_ALERT_TO 8

/* [peers]: a broker this one keeps a link to, and where it listens. */
typedef struct {
    char id[IDS_NAME_MAX + 1];
    char endpoint[256];
} config_peer;

/* [routes]: traffic for broker `to` goes through peer `via`. */
typedef struct {
    char to[IDS_NAME_MAX + 1];
    char via[IDS_NAME_MAX + 1];
} config_route;

typedef struct {
    /* [broker] */
    char id[IDS_NAME_MAX + 1];        /* required: this broker's id */
    char listen[256];                 /* required: ZeroMQ endpoint for clients */
    char data_dir[512];               /* required: LMDB store directory */
    log_level log_level;

    /* [trust] */
    char directory[512];              /* required: the signed directory file */
    char trust_root[512];             /* required: root public key, hex or .pub.json path */
    char key_dir[512];                /* required: holds ID.sign.pem, ID.seal.pem, ID.curve */

    /* [limits] */
    uint32_t max_frame_bytes;
    uint32_t max_body_bytes;
    uint32_t max_batch;               /* frames read in one loop turn (one commit) */
    uint32_t verify_workers;          /* signature-check threads; 0: one per core less one */
    uint32_t max_pending_checks;      /* frames held while their signatures are checked */
    uint32_t max_turn_ms;             /* handling frames stops after this, so deadlines fire */
    uint32_t max_hold_ms;             /* a peer whose pipe stays full this long is gone */
    uint32_t max_held_frames;         /* ... or that has this many frames held for it */
    uint32_t max_sessions;
    uint32_t max_sessions_per_agency; /* an agency's oldest session makes room beyond this */
    uint32_t max_credit;              /* per session */
    uint64_t max_ttl_ms;              /* expires_at may be at most this far ahead */
    uint64_t clock_skew_ms;           /* created_at window; added to dedup lifetime */
    uint64_t session_idle_ms;         /* a silent session is forgotten after this */

    /* [store] */
    uint64_t map_size_bytes;
    uint32_t high_water_percent;      /* refuse submissions above this use of the map */
    uint64_t min_free_disk_bytes;     /* refuse submissions when the disk has less */

    /* [delivery] */
    uint64_t ack_timeout_ms;          /* unsettled deliveries return to the queue after this */
    uint64_t max_nak_delay_ms;
    uint64_t notice_ttl_ms;           /* how long a notice to a sender is kept for delivery */
    uint32_t max_deadlines_per_turn;

    /* [retention] (docs/operations.md "Retention") */
    uint64_t body_grace_ms;           /* a final message's sealed body is kept this long */
    uint64_t keep_ms;                 /* final records, trace, quarantine are kept this long */
    uint32_t retention_max_per_turn;  /* the sweep removes at most this many items a turn */
    uint64_t sweep_interval_ms;       /* a finished sweep pass starts again after this */

    /* [admin] (admin.h) */
    char admin_socket[256];           /* ipc path of the operators' socket; "": DATA_DIR/admin.sock */
    bool admin_group_access;          /* the socket file is 0660 (else 0600) */

    /* [policy.NAME] sections (policy.h); built-in defaults fill the gaps */
    policy_set policies;

    /* [metrics] */
    char metrics_listen[64];          /* HTTP address:port for Prometheus; empty: off */
    bool metrics_allow_remote;        /* a non-loopback metrics_listen is refused without it */
    /* [federation], [peers], [routes] (docs/federation.md) */
    char peer_listen[256];            /* endpoint peer brokers connect to; empty: none */
    uint32_t peer_window;             /* forwards in flight per link awaiting hop acks */
    uint32_t heartbeat_ms;            /* a heartbeat on every link this often */
    uint32_t peer_timeout_ms;         /* a link heard nothing from for this long is down */
    uint32_t stall_ms;                /* queued work and no hop ack for this long: stalled */
    char stall_alert_to[512];         /* agencies alerted when a link stalls (comma list) */
    config_peer peers[CONFIG_MAX_PEERS];
    size_t n_peers;
    config_route routes[CONFIG_MAX_ROUTES];
    size_t n_routes;
    char default_route[IDS_NAME_MAX + 1];   /* via this peer when no route names the broker */
} config;

/* The peer named id, or NULL. */
const config_peer *config_peer_find(const config *cfg, const char *id);

/* Fill cfg with every default (required keys empty). */
void config_defaults(config *cfg);

/*
 * Read path into cfg (which config_load first resets to defaults). Returns
 * true on success; on failure false, with a sentence naming the file, the
 * line and the problem in err (size err_len).
 */
bool config_load(const char *path, config *cfg, char *err, size_t err_len);

#endif
