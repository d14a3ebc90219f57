/*
 * wire: the one door through which untrusted bytes become messages.
 *
 * Every frame that arrives from a socket (client, peer or broker frames)
 * and every header inside an envelope is decoded here, in three steps:
 *   1. a size cap before anything is parsed;
 *   2. protobuf-c unpack with an allocator that has a byte budget, so a
 *      small frame cannot make the decoder allocate without bound;
 *   3. re-measuring the decoded message (a string cut at an embedded NUL,
 *      or a non-canonical encoding, no longer has the size received),
 *      checking that every string field, at any depth, is valid UTF-8
 *      (WIRE_INVALID otherwise: RESULT_INVALID_FIELD), and
 *      explicit validation of every field the code relies on: versions,
 *      required fields, id lengths and grammar, enum ranges, counts.
 * Only a message that passed all three is handed out. What fails gets a
 * wire_err and a sentence for a person in the caller's buffer.
 *
 * Ownership: a decoded message belongs to the caller, who frees it with
 * wire_free(). Nothing here keeps a pointer into the input buffer.
 *
 * Encoding: wire_pack() serialises any message into a new buffer.
 */
#ifndef REF_WIRE_H
#define REF_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "referral.pb-c.h"

typedef enum {
    WIRE_OK = 0,
    WIRE_TOO_LARGE,      /* over the size cap, or a field over its limit */
    WIRE_MALFORMED,      /* not a protobuf message of the expected type */
    WIRE_OVER_BUDGET,    /* decoding would need more memory than allowed */
    WIRE_NONCANONICAL,   /* a string with an embedded NUL, or re-encoding differs */
    WIRE_VERSION,        /* a protocol or header version not spoken here */
    WIRE_INVALID,        /* a field is missing, out of range or a bad id */
    WIRE_NO_MEMORY,      /* the host is out of memory */
} wire_err;

/* Limits of one decode. */
typedef struct {
    size_t max_frame_bytes;    /* whole frame; larger is WIRE_TOO_LARGE */
    size_t max_body_bytes;     /* Envelope.sealed_body */
    size_t budget_bytes;       /* heap the decoder may use for one frame */
} wire_limits;

/* Defaults: 1 MiB frames, 800 KiB bodies, 8 MiB decode budget. A body
 * of the largest bucket sealed for 32 readers with 64-character ids is
 * 792,386 bytes (docs/protocol.md, section 4), so every bucket fits. */
extern const wire_limits wire_default_limits;

#define WIRE_MAX_HEADER_BYTES 4096u
#define WIRE_MAX_HOPS 16u
#define WIRE_MAX_BACKUPS 16u
#define WIRE_MAX_KEYS 32u
#define WIRE_MAX_TEXT 512u            /* reasons, details, client names */
#define WIRE_SIGNATURE_BYTES 64u
#define WIRE_KEY_ID_BYTES 16u

/* A stable short name for an error ("too-large", "malformed", ...). */
const char *wire_strerror(wire_err e);

/* The ResultCode a receiver reports for a decode error. */
Referral__V1__ResultCode wire_result_code(wire_err e);

/*
 * Decode and validate one frame of the named kind. On WIRE_OK *out is set
 * and owned by the caller (wire_free). On error *out is NULL and why (size
 * why_len, may be NULL) holds a sentence naming the problem. limits NULL
 * means wire_default_limits.
 *
 * A decoded ClientFrame with a Submit is only checked to carry an
 * envelope: the receiver checks its shape with wire_check_envelope() and
 * decodes its header with wire_decode_header(), so that it can answer a
 * bad envelope with a reply that carries the request id.
 */
wire_err wire_decode_client_frame(const uint8_t *buf, size_t len, const wire_limits *limits,
                                  Referral__V1__ClientFrame **out, char *why, size_t why_len);

/* The request_id of a Submit, StatusQuery or TraceQuery frame f (borrowed;
 * may be NULL), 0 for other frames. */
uint64_t wire_client_frame_request_id(const Referral__V1__ClientFrame *f);

/* The request_id of the client frame in buf (len bytes, borrowed, untrusted)
 * when it decodes through the same door as wire_decode_client_frame() but
 * failed its field rules (another version, a bad id): so that the
 * ErrorReply refusing it can name the request. 0 when it does not decode
 * or carries none. */
uint64_t wire_peek_request_id(const uint8_t *buf, size_t len, const wire_limits *limits);

wire_err wire_decode_broker_frame(const uint8_t *buf, size_t len, const wire_limits *limits,
                                  Referral__V1__BrokerFrame **out, char *why, size_t why_len);
wire_err wire_decode_peer_frame(const uint8_t *buf, size_t len, const wire_limits *limits,
                                Referral__V1__PeerFrame **out, char *why, size_t why_len);

/* Decode a serialised Envelope (as stored) and check its shape. */
wire_err wire_decode_envelope(const uint8_t *buf, size_t len, const wire_limits *limits,
                              Referral__V1__Envelope **out, char *why, size_t why_len);

/*
 * Decode the RoutingHeader carried in env->header and check it against the
 * envelope (suite, padded size) and the rules of docs/protocol.md: ids of
 * IDS_BYTES, kind, urgency and suite known, valid agency ids, created and
 * expiry times ordered, hop limit 1..16. env is borrowed.
 */
wire_err wire_decode_header(const Referral__V1__Envelope *env, const wire_limits *limits,
                            Referral__V1__RoutingHeader **out, char *why, size_t why_len);

/* Decode a serialised Notice (from a SignedNotice) and check it. */
wire_err wire_decode_notice(const uint8_t *buf, size_t len, const wire_limits *limits,
                            Referral__V1__Notice **out, char *why, size_t why_len);

/* Decode a SignedDirectory file's bytes (signature not checked here: see
 * directory.h), and the Directory inside it with every agency and broker
 * entry checked: valid unique ids, 32-byte keys, known kinds, 16-byte
 * revoked key ids. */
wire_err wire_decode_signed_directory(const uint8_t *buf, size_t len, const wire_limits *limits,
                                      Referral__V1__SignedDirectory **out, char *why,
                                      size_t why_len);
wire_err wire_decode_directory(const uint8_t *buf, size_t len, const wire_limits *limits,
                               Referral__V1__Directory **out, char *why, size_t why_len);

/* Decode a serialised BodyPlaintext (what a sealed body opens to). */
wire_err wire_decode_plaintext(const uint8_t *buf, size_t len, const wire_limits *limits,
                               Referral__V1__BodyPlaintext **out, char *why, size_t why_len);

/* Check the shape of an envelope that is already decoded (as a part of a
 * frame): sizes, counts and hop ids. Used by the frame decoders; public for
 * code that builds envelopes. */
wire_err wire_check_envelope(const Referral__V1__Envelope *env, const wire_limits *limits,
                             char *why, size_t why_len);

/* The admin socket (docs/operations.md, "The admin socket"): a request as
 * the broker reads it (at most 4 KiB; a known version, a command, an id of
 * 0 or 16 bytes, texts valid UTF-8 within their limits), and a reply as
 * referralctl reads it (its JSON at most 16 MiB). */
wire_err wire_decode_admin_request(const uint8_t *buf, size_t len,
                                   Referral__V1__AdminRequest **out, char *why, size_t why_len);
wire_err wire_decode_admin_reply(const uint8_t *buf, size_t len, Referral__V1__AdminReply **out,
                                 char *why, size_t why_len);

/* Free a message returned by any wire_decode_* (NULL is fine). */
void wire_free(void *msg);

/* Serialise msg into a new buffer (caller frees with free()); *len gets its
 * size. Returns NULL only when out of memory. */
uint8_t *wire_pack(const void *msg, size_t *len);

/* What a Delivery carries: the payload's field number in the schema. */
typedef enum {
    WIRE_PAYLOAD_ENVELOPE = 4,    /* an Envelope addressed to the agency */
    WIRE_PAYLOAD_NOTICE = 5,      /* a SignedNotice */
    WIRE_PAYLOAD_COPY = 6,        /* an AttemptCopy made by escalation */
} wire_payload;

/*
 * Pack a BrokerFrame{version 1, delivery{message_id, attempt, urgency,
 * payload}} whose payload is already serialised (as kind says), without
 * decoding it again. The result is
 * the canonical encoding protobuf-c would produce. Returns a new buffer
 * (caller frees with free()) and its size in *len; NULL when out of memory.
 */
uint8_t *wire_pack_delivery(const uint8_t message_id[16], uint32_t attempt, uint32_t urgency,
                            wire_payload kind, const uint8_t *payload, size_t payload_len,
                            size_t *len);

/*
 * Pack a ClientFrame{version 1, submit{request_id, envelope}} whose
 * envelope is already serialised (env, env_len), without decoding it: the
 * canonical encoding protobuf-c would produce. Returns a new buffer (caller
 * frees with free()) and its size in *len; NULL when out of memory.
 */
uint8_t *wire_pack_submit(uint64_t request_id, const uint8_t *env, size_t env_len, size_t *len);

#endif
