/*
 * zap: the ZeroMQ authentication handler for CURVE connections.
 *
 * libzmq admits any client that knows a CURVE server's public key unless a
 * ZAP handler is bound, so zap_open() binds inproc://zeromq.zap.01 before
 * any CURVE socket exists, and fails closed: a request it cannot read, a
 * key that is not in the directory or is revoked, gets status 400. The
 * admitted connection's User-Id is "AGENCY#KEYID" (the agency id and the
 * hex key id of its CURVE key) on the client socket, and "broker:ID#KEYID"
 * on the peer socket (ZAP domain ZAP_DOMAIN_PEERS), which admits broker
 * keys only; the loop reads it from every message and
 * re-checks it against the current directory, so a directory that revokes
 * or replaces a key cuts off connections already open.
 *
 * The handler runs in the broker's loop (the same thread): if the loop
 * stops, nobody is admitted.
 */
#ifndef REF_BROKER_ZAP_H
#define REF_BROKER_ZAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "directory.h"
#include "ids.h"
#include "log.h"

#define ZAP_DOMAIN_PEERS "referral.peers"   /* ZMQ_ZAP_DOMAIN of the peer socket */
/* ZMQ_ZAP_DOMAIN of the operators' ipc socket (admin.h): the NULL mechanism
 * is admitted there alone, as user "operator"; the file's permissions are
 * its authentication. */
#define ZAP_DOMAIN_ADMIN "referral.admin"
#define ZAP_BROKER_PREFIX "broker:"          /* User-Id of a peer: "broker:ID#KEYID" */
#define ZAP_USER_ID_MAX (sizeof ZAP_BROKER_PREFIX + IDS_NAME_MAX + 1 + 32 + 1)

#define ZAP_MAX_FRAMES 8     /* frames of a request kept; a longer one is refused */
#define ZAP_NOTE_BYTES 320   /* a decision's log line */

/* One frame of a ZAP request (borrowed bytes). */
typedef struct {
    const uint8_t *data;
    size_t size;
} zap_frame;

/* What to answer one ZAP request, and what to log about it. */
typedef struct {
    const char *status_code;         /* "200" or "400" (static) */
    const char *status_text;         /* "OK", or why it was refused (static) */
    char user_id[ZAP_USER_ID_MAX];   /* the admitted identity; "" when refused */
    zap_frame request_id;            /* to echo back: frames[1], or empty */
    log_level note_level;            /* level of note */
    char note[ZAP_NOTE_BYTES];       /* the line to log; "" for none */
} zap_decision;

/* Decide one ZAP request against d, without any I/O (zap_handle() does the
 * socket work around it, the fuzz target calls it on arbitrary frames).
 * frames holds the first min(n, ZAP_MAX_FRAMES) of the request's n frames:
 * version, request id, domain, address, routing id, mechanism, then the
 * mechanism's credentials. Borrowed; out->request_id points into them. */
void zap_decide(const zap_frame *frames, size_t n, const directory *d, zap_decision *out);

/* Create and bind the ZAP socket in zctx. NULL on failure (errno set). */
void *zap_open(void *zctx);

/* Answer every pending ZAP request (non-blocking) against d. Returns how
 * many were answered. */
int zap_handle(void *zap, const directory *d);

/* Split a User-Id into agency id and key id; false if malformed. */
bool zap_parse_user_id(const char *user_id, char agency[IDS_NAME_MAX + 1], uint8_t key_id[16]);

/* The key id of a CURVE public key: first 16 bytes of its SHA-256. */
void zap_curve_key_id(const uint8_t curve_public[32], uint8_t key_id[16]);

/* Split a peer's User-Id ("broker:ID#KEYID") into broker id and key id;
 * false if it is not a peer's. */
bool zap_parse_peer_id(const char *user_id, char broker[IDS_NAME_MAX + 1], uint8_t key_id[16]);

/* Is the broker with this CURVE key id still admitted by d? */
bool zap_is_peer_still_valid(const directory *d, const char *broker, const uint8_t key_id[16]);

/* Is the agency with this CURVE key id still admitted by d? */
bool zap_is_still_valid(const directory *d, const char *agency, const uint8_t key_id[16]);

#endif
