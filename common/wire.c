/*
 * wire: bounded decoding and validation of untrusted frames (wire.h).
 *
 * This file must never hand out a message it has not fully checked, never
 * assert on input, and never allocate more than the caller's budget while
 * decoding. Every rule a field must satisfy is written once, here.
 */
#include "wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "utf8.h"

const wire_limits wire_default_limits = {
    .max_frame_bytes = 1u << 20,
    .max_body_bytes = 800u << 10,   /* the largest sealed body, 792,386 bytes, fits */
    .budget_bytes = 8u << 20,
};

#define NAME_TEXT_MAX 64u
#define MAX_TRACE_EVENTS 256u
#define MAX_NOTICE_BYTES (64u << 10)

const char *wire_strerror(wire_err e)
{
    switch (e) {
    case WIRE_OK: return "ok";
    case WIRE_TOO_LARGE: return "too-large";
    case WIRE_MALFORMED: return "malformed";
    case WIRE_OVER_BUDGET: return "over-budget";
    case WIRE_NONCANONICAL: return "non-canonical";
    case WIRE_VERSION: return "version-mismatch";
    case WIRE_INVALID: return "invalid-field";
    case WIRE_NO_MEMORY: return "no-memory";
    }
    return "unknown";
}

Referral__V1__ResultCode wire_result_code(wire_err e)
{
    switch (e) {
    case WIRE_OK: return REFERRAL__V1__RESULT_CODE__RESULT_OK;
    case WIRE_TOO_LARGE: return REFERRAL__V1__RESULT_CODE__RESULT_TOO_LARGE;
    case WIRE_VERSION: return REFERRAL__V1__RESULT_CODE__RESULT_VERSION_MISMATCH;
    case WIRE_INVALID: return REFERRAL__V1__RESULT_CODE__RESULT_INVALID_FIELD;
    case WIRE_NO_MEMORY: return REFERRAL__V1__RESULT_CODE__RESULT_BUSY;
    case WIRE_OVER_BUDGET:
    case WIRE_NONCANONICAL:
    case WIRE_MALFORMED: return REFERRAL__V1__RESULT_CODE__RESULT_MALFORMED;
    }
    return REFERRAL__V1__RESULT_CODE__RESULT_MALFORMED;
}

__attribute__((format(printf, 4, 5)))
static wire_err fail(char *why, size_t why_len, wire_err e, const char *fmt, ...)
{
    if (why != NULL && why_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_len, fmt, ap);
        va_end(ap);
    }
    return e;
}

/* ---- bounded unpack ------------------------------------------------------ */

typedef struct {
    size_t used;
    size_t budget;
    bool is_exceeded;
} budget;

static void *budget_alloc(void *data, size_t size)
{
    budget *b = data;
    if (size > b->budget - b->used) {
        b->is_exceeded = true;
        return NULL;
    }
    void *p = malloc(size == 0 ? 1 : size);
    if (p != NULL)
        b->used += size;
    return p;
}

static void budget_free(void *data, void *p)
{
    (void)data;
    free(p);   /* the budget only limits the decode itself */
}

/* ---- every string is UTF-8 ------------------------------------------------ */

/* Messages nest at most this deep (the schema has no recursive types; a
 * bound keeps the walk safe whatever a future schema does). */
#define MAX_NESTING 16

static wire_err check_utf8_field(const char *s, const ProtobufCMessageDescriptor *desc,
                                 const ProtobufCFieldDescriptor *f, char *why, size_t why_len)
{
    if (s == NULL || utf8_is_valid(s, strlen(s)))
        return WIRE_OK;
    return fail(why, why_len, WIRE_INVALID, "%s.%s is not valid UTF-8", desc->short_name,
                f->name);
}

/* Walk every string field of m, and of every message inside it, through
 * the protobuf-c descriptors: one rule for every message the schema has
 * or will have. */
static wire_err check_strings(const ProtobufCMessage *m, unsigned depth, char *why,
                              size_t why_len)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    if (depth > MAX_NESTING)
        return fail(why, why_len, WIRE_INVALID, "%s is nested more than %u deep",
                    desc->short_name, MAX_NESTING);
    const char *base = (const char *)m;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0 &&
            *(const uint32_t *)(const void *)(base + f->quantifier_offset) != f->id)
            continue;   /* another member of the oneof is set */
        size_t n = 1;
        const void *const *items = (const void *const *)(const void *)(base + f->offset);
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *)(const void *)(base + f->quantifier_offset);
            items = *(const void *const *const *)(const void *)(base + f->offset);
        }
        for (size_t k = 0; k < n && items != NULL; k++) {
            if (items[k] == NULL)
                continue;
            wire_err e = f->type == PROTOBUF_C_TYPE_STRING
                             ? check_utf8_field(items[k], desc, f, why, why_len)
                             : check_strings(items[k], depth + 1, why, why_len);
            if (e != WIRE_OK)
                return e;
        }
    }
    return WIRE_OK;
}

static wire_err unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len,
                       size_t cap, size_t budget_bytes, ProtobufCMessage **out, char *why,
                       size_t why_len)
{
    *out = NULL;
    if (len > cap)
        return fail(why, why_len, WIRE_TOO_LARGE, "%s of %zu bytes is over the limit of %zu bytes",
                    desc->short_name, len, cap);
    if (buf == NULL && len > 0)
        return fail(why, why_len, WIRE_MALFORMED, "%s: no bytes", desc->short_name);
    budget b = {.used = 0, .budget = budget_bytes, .is_exceeded = false};
    ProtobufCAllocator alloc = {.alloc = budget_alloc, .free = budget_free, .allocator_data = &b};
    static const uint8_t empty[1];
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &alloc, len, buf != NULL ? buf : empty);
    if (m == NULL) {
        if (b.is_exceeded)
            return fail(why, why_len, WIRE_OVER_BUDGET,
                        "%s of %zu bytes needs more than %zu bytes of memory to decode",
                        desc->short_name, len, budget_bytes);
        return fail(why, why_len, WIRE_MALFORMED, "%zu bytes are not a valid %s",
                    len, desc->short_name);
    }
    size_t again = protobuf_c_message_get_packed_size(m);
    if (again != len) {
        protobuf_c_message_free_unpacked(m, NULL);
        return fail(why, why_len, WIRE_NONCANONICAL,
                    "%s re-encodes to %zu bytes, not the %zu received: a string with an "
                    "embedded NUL or a non-canonical encoding", desc->short_name, again, len);
    }
    /* Same size is not enough: a negative enum sent in 5 bytes re-encodes
     * in 10 and can hide a string cut at a NUL. Compare the bytes. */
    uint8_t *canonical = malloc(len > 0 ? len : 1);
    if (canonical == NULL) {
        protobuf_c_message_free_unpacked(m, NULL);
        return fail(why, why_len, WIRE_NO_MEMORY, "no memory to re-encode a %s of %zu bytes",
                    desc->short_name, len);
    }
    bool is_same = protobuf_c_message_pack(m, canonical) == len &&
                   (len == 0 || memcmp(canonical, buf, len) == 0);
    free(canonical);
    if (!is_same) {
        protobuf_c_message_free_unpacked(m, NULL);
        return fail(why, why_len, WIRE_NONCANONICAL,
                    "%s does not re-encode to the %zu bytes received: a string with an "
                    "embedded NUL or a non-canonical encoding", desc->short_name, len);
    }
    wire_err e = check_strings(m, 0, why, why_len);
    if (e != WIRE_OK) {
        protobuf_c_message_free_unpacked(m, NULL);
        return e;
    }
    *out = m;
    return WIRE_OK;
}

void wire_free(void *msg)
{
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
}

uint8_t *wire_pack(const void *msg, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n == 0 ? 1 : n);
    if (buf == NULL)
        return NULL;
    *len = protobuf_c_message_pack(msg, buf);
    return buf;
}


/* Unpack buf as desc (cap, budget), then run check on it: the message is
 * handed out only if both pass. The pattern every wire_decode_* follows. */
typedef wire_err (*check_fn)(const void *msg, const wire_limits *limits, char *why,
                             size_t why_len);

static wire_err decode_checked(const ProtobufCMessageDescriptor *desc, const uint8_t *buf,
                               size_t len, size_t cap, size_t budget_bytes, check_fn check,
                               const wire_limits *limits, void **out, char *why, size_t why_len)
{
    ProtobufCMessage *m = NULL;
    *out = NULL;
    wire_err e = unpack(desc, buf, len, cap, budget_bytes, &m, why, why_len);
    if (e != WIRE_OK)
        return e;
    if (m == NULL)   /* never: unpack sets m on WIRE_OK (said for the optimiser) */
        return fail(why, why_len, WIRE_MALFORMED, "%s could not be decoded", desc->short_name);
    if (check != NULL && (e = check(m, limits, why, why_len)) != WIRE_OK) {
        wire_free(m);
        return e;
    }
    *out = m;
    return WIRE_OK;
}

/* ---- field rules ---------------------------------------------------------- */

static bool is_enum_known(const ProtobufCEnumDescriptor *d, int value)
{
    return value != 0 && protobuf_c_enum_descriptor_get_value(d, value) != NULL;
}

static wire_err check_id(const ProtobufCBinaryData *id, const char *what, bool may_be_empty,
                         char *why, size_t why_len)
{
    if (id->len == IDS_BYTES || (may_be_empty && id->len == 0))
        return WIRE_OK;
    return fail(why, why_len, WIRE_INVALID, "%s must be %u bytes, not %zu", what, IDS_BYTES,
                id->len);
}

static wire_err check_name(const char *s, const char *what, bool may_be_empty, char *why,
                           size_t why_len)
{
    if (may_be_empty && (s == NULL || s[0] == '\0'))
        return WIRE_OK;
    if (ids_is_valid_name(s))
        return WIRE_OK;
    return fail(why, why_len, WIRE_INVALID,
                "%s is not a valid id (1-64 characters of a-z 0-9 . _ -, starting and "
                "ending with a letter or digit)", what);
}

static wire_err check_text(const char *s, size_t max, const char *what, char *why,
                           size_t why_len)
{
    if (s != NULL && strnlen(s, max + 1) > max)
        return fail(why, why_len, WIRE_TOO_LARGE, "%s is longer than %zu bytes", what, max);
    return WIRE_OK;
}

static wire_err check_enum(const ProtobufCEnumDescriptor *d, int value, const char *what,
                           char *why, size_t why_len)
{
    if (is_enum_known(d, value))
        return WIRE_OK;
    return fail(why, why_len, WIRE_INVALID, "%s has no valid value (got %d)", what, value);
}

static wire_err check_version(Referral__V1__ProtocolVersion v, char *why, size_t why_len)
{
    if (v == REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1)
        return WIRE_OK;
    return fail(why, why_len, WIRE_VERSION,
                "protocol version %d is not spoken here; this side speaks version 1", (int)v);
}

#define TRY(expr) do { wire_err e_ = (expr); if (e_ != WIRE_OK) return e_; } while (0)

wire_err wire_check_envelope(const Referral__V1__Envelope *env, const wire_limits *limits,
                             char *why, size_t why_len)
{
    if (limits == NULL)
        limits = &wire_default_limits;
    if (env == NULL)
        return fail(why, why_len, WIRE_INVALID, "envelope is missing");
    if (env->header.len == 0)
        return fail(why, why_len, WIRE_INVALID, "envelope has no header");
    if (env->header.len > WIRE_MAX_HEADER_BYTES)
        return fail(why, why_len, WIRE_TOO_LARGE, "header of %zu bytes is over %u bytes",
                    env->header.len, WIRE_MAX_HEADER_BYTES);
    if (env->sealed_body.len == 0)
        return fail(why, why_len, WIRE_INVALID, "envelope has no sealed body");
    if (env->sealed_body.len > limits->max_body_bytes)
        return fail(why, why_len, WIRE_TOO_LARGE, "sealed body of %zu bytes is over %zu bytes",
                    env->sealed_body.len, limits->max_body_bytes);
    TRY(check_enum(&referral__v1__cipher_suite__descriptor, (int)env->suite, "envelope suite",
                   why, why_len));
    if (env->suite != REFERRAL__V1__CIPHER_SUITE__CIPHER_SUITE_ED25519_X25519_AES256GCM)
        return fail(why, why_len, WIRE_INVALID,
                    "cipher suite %d is reserved and not implemented; use suite 1",
                    (int)env->suite);
    if (env->signature.len != WIRE_SIGNATURE_BYTES)
        return fail(why, why_len, WIRE_INVALID, "signature must be %u bytes, not %zu",
                    WIRE_SIGNATURE_BYTES, env->signature.len);
    if (env->signer_key_id.len != WIRE_KEY_ID_BYTES)
        return fail(why, why_len, WIRE_INVALID, "signer key id must be %u bytes, not %zu",
                    WIRE_KEY_ID_BYTES, env->signer_key_id.len);
    if (env->n_hops > WIRE_MAX_HOPS)
        return fail(why, why_len, WIRE_INVALID, "envelope lists %zu hops, more than %u",
                    env->n_hops, WIRE_MAX_HOPS);
    for (size_t i = 0; i < env->n_hops; i++)
        TRY(check_name(env->hops[i], "a hop broker id", false, why, why_len));
    return WIRE_OK;
}

static wire_err check_envelope_msg(const void *m, const wire_limits *l, char *why, size_t n)
{
    return wire_check_envelope(m, l, why, n);
}

wire_err wire_decode_envelope(const uint8_t *buf, size_t len, const wire_limits *limits,
                              Referral__V1__Envelope **out, char *why, size_t why_len)
{
    if (limits == NULL)
        limits = &wire_default_limits;
    return decode_checked(&referral__v1__envelope__descriptor, buf, len, limits->max_frame_bytes,
                          limits->budget_bytes, check_envelope_msg, limits, (void **)out, why,
                          why_len);
}

static wire_err check_header(const Referral__V1__RoutingHeader *h,
                             const Referral__V1__Envelope *env, char *why, size_t why_len)
{
    if (h->header_version != 1)
        return fail(why, why_len, WIRE_VERSION,
                    "header version %u is not spoken here; this side speaks version 1",
                    h->header_version);
    TRY(check_id(&h->message_id, "message_id", false, why, why_len));
    TRY(check_id(&h->referral_id, "referral_id", false, why, why_len));
    TRY(check_id(&h->attempt_id, "attempt_id", false, why, why_len));
    TRY(check_id(&h->in_reply_to, "in_reply_to", true, why, why_len));
    TRY(check_enum(&referral__v1__message_kind__descriptor, (int)h->kind, "kind", why, why_len));
    TRY(check_name(h->from_agency, "from_agency", false, why, why_len));
    TRY(check_name(h->to_agency, "to_agency", false, why, why_len));
    if (h->n_backup_recipients > WIRE_MAX_BACKUPS)
        return fail(why, why_len, WIRE_INVALID, "%zu backup recipients, more than %u",
                    h->n_backup_recipients, WIRE_MAX_BACKUPS);
    for (size_t i = 0; i < h->n_backup_recipients; i++)
        TRY(check_name(h->backup_recipients[i], "a backup recipient", false, why, why_len));
    TRY(check_enum(&referral__v1__urgency__descriptor, (int)h->urgency, "urgency", why,
                   why_len));
    TRY(check_name(h->escalation_policy_id, "escalation_policy_id", true, why, why_len));
    if (h->created_at_ms == 0)
        return fail(why, why_len, WIRE_INVALID, "created_at_ms is missing");
    if (h->expires_at_ms <= h->created_at_ms)
        return fail(why, why_len, WIRE_INVALID, "expires_at_ms must be after created_at_ms");
    if (h->hop_limit < 1 || h->hop_limit > WIRE_MAX_HOPS)
        return fail(why, why_len, WIRE_INVALID, "hop_limit must be 1 to %u, not %u",
                    WIRE_MAX_HOPS, h->hop_limit);
    if (h->suite != env->suite)
        return fail(why, why_len, WIRE_INVALID, "header suite %d differs from envelope suite %d",
                    (int)h->suite, (int)env->suite);
    if (h->padded_size != env->sealed_body.len)
        return fail(why, why_len, WIRE_INVALID,
                    "header padded_size %u differs from the sealed body's %zu bytes",
                    h->padded_size, env->sealed_body.len);
    bool is_receipt = h->kind == REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_RECEIPT;
    /* DELIVERED (3) is the recipient's home broker's word (a signed notice
     * when the client settles), never an agency's receipt. */
    if (is_receipt && (h->receipt_level < REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_RECEIVED ||
                       h->receipt_level > REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_CLOSED))
        return fail(why, why_len, WIRE_INVALID, "a receipt's header must carry receipt_level "
                    "RECEIVED (4) to CLOSED (8), not %d; DELIVERED is asserted by the "
                    "recipient's broker", (int)h->receipt_level);
    if (is_receipt && h->in_reply_to.len == 0)
        return fail(why, why_len, WIRE_INVALID, "a receipt's header must name in_reply_to");
    if (!is_receipt && h->receipt_level != 0)
        return fail(why, why_len, WIRE_INVALID, "receipt_level is only for receipts");
    return WIRE_OK;
}

wire_err wire_decode_header(const Referral__V1__Envelope *env, const wire_limits *limits,
                            Referral__V1__RoutingHeader **out, char *why, size_t why_len)
{
    if (limits == NULL)
        limits = &wire_default_limits;
    *out = NULL;
    if (env == NULL)
        return fail(why, why_len, WIRE_INVALID, "envelope is missing");
    ProtobufCMessage *m = NULL;
    TRY(unpack(&referral__v1__routing_header__descriptor, env->header.data, env->header.len,
               WIRE_MAX_HEADER_BYTES, limits->budget_bytes, &m, why, why_len));
    if (m == NULL)   /* never: unpack sets m on WIRE_OK (said for the optimiser) */
        return fail(why, why_len, WIRE_MALFORMED, "the routing header could not be decoded");
    wire_err e = check_header((Referral__V1__RoutingHeader *)m, env, why, why_len);
    if (e != WIRE_OK) {
        wire_free(m);
        return e;
    }
    *out = (Referral__V1__RoutingHeader *)m;
    return WIRE_OK;
}

/* ---- client frames -------------------------------------------------------- */

static wire_err check_client_frame(const Referral__V1__ClientFrame *f,
                                   const wire_limits *limits, char *why, size_t why_len)
{
    TRY(check_version(f->version, why, why_len));
    switch (f->body_case) {
    case REFERRAL__V1__CLIENT_FRAME__BODY_HELLO:
        TRY(check_name(f->hello->agency_id, "hello agency_id", false, why, why_len));
        TRY(check_text(f->hello->client_name, NAME_TEXT_MAX, "client_name", why, why_len));
        return check_text(f->hello->client_version, NAME_TEXT_MAX, "client_version", why,
                          why_len);
    case REFERRAL__V1__CLIENT_FRAME__BODY_SUBMIT:
        /* The envelope's shape is checked by ingress (wire_check_envelope),
         * so that its refusal is a SubmitReply carrying the request id. */
        (void)limits;
        if (f->submit->envelope == NULL)
            return fail(why, why_len, WIRE_INVALID, "submit carries no envelope");
        return WIRE_OK;
    case REFERRAL__V1__CLIENT_FRAME__BODY_CREDIT:
        if (f->credit->grant == 0)
            return fail(why, why_len, WIRE_INVALID, "credit grant must be at least 1");
        return WIRE_OK;
    case REFERRAL__V1__CLIENT_FRAME__BODY_SETTLE:
        TRY(check_id(&f->settle->message_id, "settle message_id", false, why, why_len));
        TRY(check_enum(&referral__v1__settle_verb__descriptor, (int)f->settle->verb,
                       "settle verb", why, why_len));
        return check_text(f->settle->reason, WIRE_MAX_TEXT, "settle reason", why, why_len);
    case REFERRAL__V1__CLIENT_FRAME__BODY_STATUS:
        return check_id(&f->status->message_id, "status message_id", false, why, why_len);
    case REFERRAL__V1__CLIENT_FRAME__BODY_TRACE:
        return check_id(&f->trace->referral_id, "trace referral_id", false, why, why_len);
    case REFERRAL__V1__CLIENT_FRAME__BODY_PING:
        return WIRE_OK;
    default:
        return fail(why, why_len, WIRE_INVALID, "client frame has no body");
    }
}

static wire_err check_client_msg(const void *m, const wire_limits *l, char *why, size_t n)
{
    return check_client_frame(m, l, why, n);
}

wire_err wire_decode_client_frame(const uint8_t *buf, size_t len, const wire_limits *limits,
                                  Referral__V1__ClientFrame **out, char *why, size_t why_len)
{
    if (limits == NULL)
        limits = &wire_default_limits;
    return decode_checked(&referral__v1__client_frame__descriptor, buf, len,
                          limits->max_frame_bytes, limits->budget_bytes, check_client_msg, limits,
                          (void **)out, why, why_len);
}

uint64_t wire_client_frame_request_id(const Referral__V1__ClientFrame *f)
{
    if (f == NULL)
        return 0;
    switch (f->body_case) {
    case REFERRAL__V1__CLIENT_FRAME__BODY_SUBMIT: return f->submit->request_id;
    case REFERRAL__V1__CLIENT_FRAME__BODY_STATUS: return f->status->request_id;
    case REFERRAL__V1__CLIENT_FRAME__BODY_TRACE: return f->trace->request_id;
    default: return 0;
    }
}

uint64_t wire_peek_request_id(const uint8_t *buf, size_t len, const wire_limits *limits)
{
    if (limits == NULL)
        limits = &wire_default_limits;
    ProtobufCMessage *m = NULL;
    if (unpack(&referral__v1__client_frame__descriptor, buf, len, limits->max_frame_bytes,
               limits->budget_bytes, &m, NULL, 0) != WIRE_OK)
        return 0;
    uint64_t id = wire_client_frame_request_id((const Referral__V1__ClientFrame *)m);
    wire_free(m);
    return id;
}

/* ---- broker frames (what a client receives) ------------------------------- */

static wire_err check_code(Referral__V1__ResultCode c, char *why, size_t why_len)
{
    return check_enum(&referral__v1__result_code__descriptor, (int)c, "result code", why,
                      why_len);
}

static wire_err check_signed_notice(const Referral__V1__SignedNotice *n, char *why,
                                    size_t why_len)
{
    if (n == NULL || n->notice.len == 0)
        return fail(why, why_len, WIRE_INVALID, "signed notice is empty");
    if (n->notice.len > MAX_NOTICE_BYTES)
        return fail(why, why_len, WIRE_TOO_LARGE, "notice of %zu bytes is over %u bytes",
                    n->notice.len, MAX_NOTICE_BYTES);
    if (n->signature.len != WIRE_SIGNATURE_BYTES || n->signer_key_id.len != WIRE_KEY_ID_BYTES)
        return fail(why, why_len, WIRE_INVALID, "notice must carry a %u-byte signature and a "
                    "%u-byte signer key id", WIRE_SIGNATURE_BYTES, WIRE_KEY_ID_BYTES);
    return WIRE_OK;
}

static wire_err check_trace_event(const Referral__V1__TraceEvent *ev, char *why,
                                  size_t why_len)
{
    TRY(check_id(&ev->referral_id, "trace event referral_id", false, why, why_len));
    TRY(check_id(&ev->message_id, "trace event message_id", true, why, why_len));
    TRY(check_enum(&referral__v1__trace_event_kind__descriptor, (int)ev->kind,
                   "trace event kind", why, why_len));
    TRY(check_name(ev->broker_id, "trace event broker_id", false, why, why_len));
    TRY(check_name(ev->agency_id, "trace event agency_id", true, why, why_len));
    TRY(check_name(ev->from_agency, "trace event from_agency", true, why, why_len));
    return check_text(ev->detail, WIRE_MAX_TEXT, "trace event detail", why, why_len);
}

#define MAX_TRACE_BROKERS 16u

/* A list of broker ids (visited, brokers, unanswered): at most 16 names. */
static wire_err check_names(char *const *names, size_t n, const char *what, char *why,
                            size_t why_len)
{
    if (n > MAX_TRACE_BROKERS)
        return fail(why, why_len, WIRE_INVALID, "%s lists %zu brokers, more than %u", what, n,
                    MAX_TRACE_BROKERS);
    for (size_t i = 0; i < n; i++)
        TRY(check_name(names[i], what, false, why, why_len));
    return WIRE_OK;
}

static wire_err check_trace_reply(const Referral__V1__TraceReply *r, char *why, size_t why_len)
{
    TRY(check_code(r->code, why, why_len));
    if (r->n_events > MAX_TRACE_EVENTS)
        return fail(why, why_len, WIRE_INVALID, "trace reply has %zu events, more than %u",
                    r->n_events, MAX_TRACE_EVENTS);
    for (size_t i = 0; i < r->n_events; i++)
        TRY(check_trace_event(r->events[i], why, why_len));
    TRY(check_names(r->brokers, r->n_brokers, "trace reply brokers", why, why_len));
    return check_names(r->unanswered, r->n_unanswered, "trace reply unanswered", why, why_len);
}

/* An escalation copy: the sender's envelope, and the broker's labels. */
static wire_err check_copy(const Referral__V1__AttemptCopy *c, const wire_limits *limits,
                           char *why, size_t why_len)
{
    TRY(check_id(&c->attempt_id, "copy attempt_id", false, why, why_len));
    if (c->envelope == NULL)
        return fail(why, why_len, WIRE_INVALID, "copy has no envelope");
    TRY(wire_check_envelope(c->envelope, limits, why, why_len));
    TRY(check_name(c->broker_id, "copy broker_id", false, why, why_len));
    TRY(check_name(c->original_recipient, "copy original_recipient", false, why, why_len));
    return check_text(c->reason, WIRE_MAX_TEXT, "copy reason", why, why_len);
}

static wire_err check_broker_frame(const Referral__V1__BrokerFrame *f,
                                   const wire_limits *limits, char *why, size_t why_len)
{
    TRY(check_version(f->version, why, why_len));
    switch (f->body_case) {
    case REFERRAL__V1__BROKER_FRAME__BODY_WELCOME:
        TRY(check_name(f->welcome->broker_id, "welcome broker_id", false, why, why_len));
        return check_name(f->welcome->agency_id, "welcome agency_id", false, why, why_len);
    case REFERRAL__V1__BROKER_FRAME__BODY_SUBMIT_REPLY:
        TRY(check_id(&f->submit_reply->message_id, "submit reply message_id", true, why,
                     why_len));
        TRY(check_code(f->submit_reply->code, why, why_len));
        return check_text(f->submit_reply->detail, WIRE_MAX_TEXT, "detail", why, why_len);
    case REFERRAL__V1__BROKER_FRAME__BODY_DELIVERY: {
        const Referral__V1__Delivery *d = f->delivery;
        TRY(check_id(&d->message_id, "delivery message_id", false, why, why_len));
        if (d->attempt == 0)
            return fail(why, why_len, WIRE_INVALID, "delivery attempt must be at least 1");
        TRY(check_enum(&referral__v1__urgency__descriptor, (int)d->urgency, "delivery urgency",
                       why, why_len));
        if (d->payload_case == REFERRAL__V1__DELIVERY__PAYLOAD_ENVELOPE)
            return wire_check_envelope(d->envelope, limits, why, why_len);
        if (d->payload_case == REFERRAL__V1__DELIVERY__PAYLOAD_NOTICE)
            return check_signed_notice(d->notice, why, why_len);
        if (d->payload_case == REFERRAL__V1__DELIVERY__PAYLOAD_COPY)
            return check_copy(d->copy, limits, why, why_len);
        return fail(why, why_len, WIRE_INVALID, "delivery has no payload");
    }
    case REFERRAL__V1__BROKER_FRAME__BODY_SETTLE_REPLY:
        TRY(check_id(&f->settle_reply->message_id, "settle reply message_id", false, why,
                     why_len));
        TRY(check_code(f->settle_reply->code, why, why_len));
        return check_text(f->settle_reply->detail, WIRE_MAX_TEXT, "detail", why, why_len);
    case REFERRAL__V1__BROKER_FRAME__BODY_STATUS:
        TRY(check_id(&f->status->message_id, "status message_id", false, why, why_len));
        TRY(check_code(f->status->code, why, why_len));
        return check_text(f->status->detail, WIRE_MAX_TEXT, "detail", why, why_len);
    case REFERRAL__V1__BROKER_FRAME__BODY_TRACE:
        return check_trace_reply(f->trace, why, why_len);
    case REFERRAL__V1__BROKER_FRAME__BODY_PONG:
        return WIRE_OK;
    case REFERRAL__V1__BROKER_FRAME__BODY_ERROR:
        TRY(check_code(f->error->code, why, why_len));
        return check_text(f->error->detail, WIRE_MAX_TEXT, "detail", why, why_len);
    default:
        return fail(why, why_len, WIRE_INVALID, "broker frame has no body");
    }
}

static wire_err check_broker_msg(const void *m, const wire_limits *l, char *why, size_t n)
{
    return check_broker_frame(m, l, why, n);
}

wire_err wire_decode_broker_frame(const uint8_t *buf, size_t len, const wire_limits *limits,
                                  Referral__V1__BrokerFrame **out, char *why, size_t why_len)
{
    if (limits == NULL)
        limits = &wire_default_limits;
    return decode_checked(&referral__v1__broker_frame__descriptor, buf, len,
                          limits->max_frame_bytes, limits->budget_bytes, check_broker_msg, limits,
                          (void **)out, why, why_len);
}

/* ---- peer frames ---------------------------------------------------------- */

static wire_err check_peer_frame(const Referral__V1__PeerFrame *f, const wire_limits *limits,
                                 char *why, size_t why_len)
{
    TRY(check_version(f->version, why, why_len));
    switch (f->body_case) {
    case REFERRAL__V1__PEER_FRAME__BODY_HELLO:
        return check_name(f->hello->broker_id, "peer hello broker_id", false, why, why_len);
    case REFERRAL__V1__PEER_FRAME__BODY_FORWARD:
        return wire_check_envelope(f->forward->envelope, limits, why, why_len);
    case REFERRAL__V1__PEER_FRAME__BODY_HOP_ACK:
        TRY(check_id(&f->hop_ack->message_id, "hop ack message_id", false, why, why_len));
        TRY(check_code(f->hop_ack->code, why, why_len));
        return check_text(f->hop_ack->detail, WIRE_MAX_TEXT, "detail", why, why_len);
    case REFERRAL__V1__PEER_FRAME__BODY_HEARTBEAT:
        return WIRE_OK;
    case REFERRAL__V1__PEER_FRAME__BODY_TRACE_QUERY:
        TRY(check_id(&f->trace_query->referral_id, "trace referral_id", false, why, why_len));
        return check_names(f->trace_query->visited, f->trace_query->n_visited,
                           "trace query visited", why, why_len);
    case REFERRAL__V1__PEER_FRAME__BODY_TRACE_REPLY:
        return check_trace_reply(f->trace_reply, why, why_len);
    case REFERRAL__V1__PEER_FRAME__BODY_NOTICE:
        return check_signed_notice(f->notice, why, why_len);
    case REFERRAL__V1__PEER_FRAME__BODY_ERROR:
        TRY(check_code(f->error->code, why, why_len));
        return check_text(f->error->detail, WIRE_MAX_TEXT, "detail", why, why_len);
    default:
        return fail(why, why_len, WIRE_INVALID, "peer frame has no body");
    }
}

static wire_err check_peer_msg(const void *m, const wire_limits *l, char *why, size_t n)
{
    return check_peer_frame(m, l, why, n);
}

wire_err wire_decode_peer_frame(const uint8_t *buf, size_t len, const wire_limits *limits,
                                Referral__V1__PeerFrame **out, char *why, size_t why_len)
{
    if (limits == NULL)
        limits = &wire_default_limits;
    return decode_checked(&referral__v1__peer_frame__descriptor, buf, len,
                          limits->max_frame_bytes, limits->budget_bytes, check_peer_msg, limits,
                          (void **)out, why, why_len);
}

/* ---- notices and plaintexts ---------------------------------------------- */

#define MAX_ALERT_CONTACTS 16u
#define MAX_ALERT_COPIES 16u

/* An escalation alert inside a notice: what a desk shows a person. */
static wire_err check_alert(const Referral__V1__Alert *a, char *why, size_t why_len)
{
    TRY(check_id(&a->referral_id, "alert referral_id", false, why, why_len));
    TRY(check_id(&a->message_id, "alert message_id", false, why, why_len));
    TRY(check_enum(&referral__v1__alert_kind__descriptor, (int)a->kind, "alert kind", why,
                   why_len));
    TRY(check_text(a->policy_id, IDS_NAME_MAX, "alert policy_id", why, why_len));
    TRY(check_name(a->broker_id, "alert broker_id", false, why, why_len));
    TRY(check_text(a->detail, WIRE_MAX_TEXT, "alert detail", why, why_len));
    TRY(check_enum(&referral__v1__urgency__descriptor, (int)a->urgency, "alert urgency", why,
                   why_len));
    TRY(check_name(a->to_agency, "alert to_agency", true, why, why_len));
    if (a->n_emergency_contacts > MAX_ALERT_CONTACTS || a->n_copied_to > MAX_ALERT_COPIES)
        return fail(why, why_len, WIRE_INVALID, "alert names at most %u contacts and %u copies",
                    MAX_ALERT_CONTACTS, MAX_ALERT_COPIES);
    for (size_t i = 0; i < a->n_emergency_contacts; i++) {
        TRY(check_text(a->emergency_contacts[i]->label, 128, "contact label", why, why_len));
        TRY(check_text(a->emergency_contacts[i]->phone, 64, "contact phone", why, why_len));
    }
    for (size_t i = 0; i < a->n_copied_to; i++)
        TRY(check_name(a->copied_to[i], "alert copied_to", false, why, why_len));
    return WIRE_OK;
}

static wire_err check_notice(const Referral__V1__Notice *n, char *why, size_t why_len)
{
    TRY(check_id(&n->notice_id, "notice_id", false, why, why_len));
    TRY(check_enum(&referral__v1__notice_kind__descriptor, (int)n->kind, "notice kind", why,
                   why_len));
    TRY(check_id(&n->referral_id, "notice referral_id", true, why, why_len));
    TRY(check_id(&n->message_id, "notice message_id", false, why, why_len));
    TRY(check_name(n->broker_id, "notice broker_id", false, why, why_len));
    TRY(check_name(n->about_agency, "notice about_agency", true, why, why_len));
    TRY(check_text(n->detail, WIRE_MAX_TEXT, "notice detail", why, why_len));
    return n->alert != NULL ? check_alert(n->alert, why, why_len) : WIRE_OK;
}

static wire_err check_notice_msg(const void *m, const wire_limits *l, char *why, size_t n)
{
    (void)l;
    return check_notice(m, why, n);
}

wire_err wire_decode_notice(const uint8_t *buf, size_t len, const wire_limits *limits,
                            Referral__V1__Notice **out, char *why, size_t why_len)
{
    if (limits == NULL)
        limits = &wire_default_limits;
    return decode_checked(&referral__v1__notice__descriptor, buf, len, MAX_NOTICE_BYTES,
                          limits->budget_bytes, check_notice_msg, limits, (void **)out, why,
                          why_len);
}

static wire_err check_plaintext_msg(const void *m, const wire_limits *l, char *why, size_t n)
{
    (void)l;
    if (((const Referral__V1__BodyPlaintext *)m)->body_case ==
        REFERRAL__V1__BODY_PLAINTEXT__BODY__NOT_SET)
        return fail(why, n, WIRE_INVALID, "sealed body holds no content");
    return WIRE_OK;
}

wire_err wire_decode_plaintext(const uint8_t *buf, size_t len, const wire_limits *limits,
                               Referral__V1__BodyPlaintext **out, char *why, size_t why_len)
{
    if (limits == NULL)
        limits = &wire_default_limits;
    return decode_checked(&referral__v1__body_plaintext__descriptor, buf, len,
                          limits->max_body_bytes, limits->budget_bytes, check_plaintext_msg,
                          limits, (void **)out, why, why_len);
}

/* ---- directory ------------------------------------------------------------ */

#define MAX_DIRECTORY_BYTES (16u << 20)
#define MAX_DIRECTORY_ENTRIES 100000u

static wire_err check_key32(const ProtobufCBinaryData *k, const char *what, const char *id,
                            char *why, size_t why_len)
{
    if (k->len == 32)
        return WIRE_OK;
    return fail(why, why_len, WIRE_INVALID, "%s of %s must be 32 bytes, not %zu", what, id,
                k->len);
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* True if the n ids contain a duplicate. Sorts ids (a scratch array). */
static bool has_duplicate(char **copy, size_t n, const char **dup)
{
    qsort(copy, n, sizeof *copy, compare_strings);
    bool is_dup = false;
    for (size_t i = 1; i < n && !is_dup; i++) {
        if (strcmp(copy[i - 1], copy[i]) == 0) {
            *dup = copy[i];
            is_dup = true;
        }
    }
    return is_dup;
}

static wire_err check_directory(const Referral__V1__Directory *d, char *why, size_t why_len)
{
    if (d->version == 0)
        return fail(why, why_len, WIRE_INVALID, "directory version is missing");
    if (d->expires_at_ms <= d->issued_at_ms)
        return fail(why, why_len, WIRE_INVALID, "directory expires before it was issued");
    if (d->n_agencies > MAX_DIRECTORY_ENTRIES || d->n_brokers > MAX_DIRECTORY_ENTRIES)
        return fail(why, why_len, WIRE_TOO_LARGE, "directory has too many entries");
    size_t n = d->n_agencies + d->n_brokers;
    char **ids = malloc((n ? n : 1) * sizeof *ids);
    if (ids == NULL)
        return fail(why, why_len, WIRE_NO_MEMORY, "no memory to check the directory");
    wire_err e = WIRE_OK;
    for (size_t i = 0; e == WIRE_OK && i < d->n_agencies; i++) {
        const Referral__V1__DirectoryAgency *a = d->agencies[i];
        ids[i] = a->id;
        e = check_name(a->id, "directory agency id", false, why, why_len);
        if (e == WIRE_OK)
            e = check_enum(&referral__v1__agency_kind__descriptor, (int)a->kind, "agency kind",
                           why, why_len);
        if (e == WIRE_OK)
            e = check_name(a->home_broker, "agency home_broker", false, why, why_len);
        if (e == WIRE_OK)
            e = check_key32(&a->sign_public, "sign_public", a->id, why, why_len);
        if (e == WIRE_OK)
            e = check_key32(&a->seal_public, "seal_public", a->id, why, why_len);
        if (e == WIRE_OK)
            e = check_key32(&a->curve_public, "curve_public", a->id, why, why_len);
        if (e == WIRE_OK && a->n_backup_agencies > WIRE_MAX_BACKUPS)
            e = fail(why, why_len, WIRE_INVALID, "agency %s has more than %u backups", a->id,
                     WIRE_MAX_BACKUPS);
        for (size_t j = 0; e == WIRE_OK && j < a->n_backup_agencies; j++)
            e = check_name(a->backup_agencies[j], "backup agency", false, why, why_len);
        if (e == WIRE_OK)
            e = check_name(a->supervisor_desk, "supervisor_desk", true, why, why_len);
        if (e == WIRE_OK)
            e = check_name(a->regional_centre, "regional_centre", true, why, why_len);
        if (e == WIRE_OK)
            e = check_text(a->name, WIRE_MAX_TEXT, "agency name", why, why_len);
    }
    for (size_t i = 0; e == WIRE_OK && i < d->n_brokers; i++) {
        const Referral__V1__DirectoryBroker *b = d->brokers[i];
        ids[d->n_agencies + i] = b->id;
        e = check_name(b->id, "directory broker id", false, why, why_len);
        if (e == WIRE_OK)
            e = check_text(b->endpoint, 255, "broker endpoint", why, why_len);
        if (e == WIRE_OK)
            e = check_key32(&b->sign_public, "sign_public", b->id, why, why_len);
        if (e == WIRE_OK)
            e = check_key32(&b->curve_public, "curve_public", b->id, why, why_len);
    }
    for (size_t i = 0; e == WIRE_OK && i < d->n_revoked_key_ids; i++) {
        if (d->revoked_key_ids[i].len != WIRE_KEY_ID_BYTES)
            e = fail(why, why_len, WIRE_INVALID, "revoked key ids must be %u bytes",
                     WIRE_KEY_ID_BYTES);
    }
    const char *dup = NULL;
    if (e == WIRE_OK && has_duplicate(ids, n, &dup))
        e = fail(why, why_len, WIRE_INVALID, "id %s appears twice in the directory", dup);
    free(ids);
    return e;
}

static wire_err check_directory_msg(const void *m, const wire_limits *l, char *why, size_t n)
{
    (void)l;
    return check_directory(m, why, n);
}

wire_err wire_decode_directory(const uint8_t *buf, size_t len, const wire_limits *limits,
                               Referral__V1__Directory **out, char *why, size_t why_len)
{
    return decode_checked(&referral__v1__directory__descriptor, buf, len, MAX_DIRECTORY_BYTES,
                          8 * (size_t)MAX_DIRECTORY_BYTES, check_directory_msg, limits,
                          (void **)out, why, why_len);
}

static wire_err check_signed_directory_msg(const void *m, const wire_limits *l, char *why,
                                           size_t n)
{
    (void)l;
    const Referral__V1__SignedDirectory *sd = m;
    if (sd->directory.len == 0)
        return fail(why, n, WIRE_INVALID, "the file holds no directory");
    if (sd->signature.len != WIRE_SIGNATURE_BYTES)
        return fail(why, n, WIRE_INVALID, "the directory is not signed (signature of %zu bytes); "
                    "sign it with referralctl directory sign", sd->signature.len);
    if (sd->signer_key_id.len != WIRE_KEY_ID_BYTES)
        return fail(why, n, WIRE_INVALID, "directory signer key id must be %u bytes",
                    WIRE_KEY_ID_BYTES);
    return WIRE_OK;
}

wire_err wire_decode_signed_directory(const uint8_t *buf, size_t len, const wire_limits *limits,
                                      Referral__V1__SignedDirectory **out, char *why,
                                      size_t why_len)
{
    return decode_checked(&referral__v1__signed_directory__descriptor, buf, len,
                          MAX_DIRECTORY_BYTES + 1024, 2 * (size_t)MAX_DIRECTORY_BYTES,
                          check_signed_directory_msg, limits, (void **)out, why, why_len);
}

/* ---- hand-packed delivery frame ------------------------------------------ */

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Field tags: (number << 3) | wire type (0 varint, 2 length-delimited). */
#define TAG(num, type) ((uint8_t)((num) << 3 | (type)))

uint8_t *wire_pack_delivery(const uint8_t message_id[16], uint32_t attempt, uint32_t urgency,
                            wire_payload kind, const uint8_t *payload, size_t payload_len,
                            size_t *len)
{
    /* Delivery: 1 message_id, 2 attempt, 3 urgency, 4 envelope | 5 notice | 6 copy.
     * Zero-valued scalars are omitted, as proto3 encoders do. */
    size_t inner = 1 + 1 + 16;
    if (attempt != 0)
        inner += 1 + varint_len(attempt);
    if (urgency != 0)
        inner += 1 + varint_len(urgency);
    inner += 1 + varint_len(payload_len) + payload_len;
    size_t total = 2 + 1 + varint_len(inner) + inner;   /* version, delivery */
    uint8_t *buf = malloc(total), *p = buf;
    if (buf == NULL)
        return NULL;
    *p++ = TAG(1, 0);
    *p++ = 1;
    *p++ = TAG(4, 2);
    p = put_varint(p, inner);
    *p++ = TAG(1, 2);
    *p++ = 16;
    memcpy(p, message_id, 16);
    p += 16;
    if (attempt != 0) {
        *p++ = TAG(2, 0);
        p = put_varint(p, attempt);
    }
    if (urgency != 0) {
        *p++ = TAG(3, 0);
        p = put_varint(p, urgency);
    }
    *p++ = TAG((unsigned)kind, 2);
    p = put_varint(p, payload_len);
    if (payload_len > 0)
        memcpy(p, payload, payload_len);
    p += payload_len;
    *len = (size_t)(p - buf);
    return buf;
}

uint8_t *wire_pack_submit(uint64_t request_id, const uint8_t *env, size_t env_len, size_t *len)
{
    /* Submit: 1 request_id, 2 envelope; zero-valued scalars are omitted. */
    size_t inner = (request_id != 0 ? 1 + varint_len(request_id) : 0) + 1 +
                   varint_len(env_len) + env_len;
    size_t total = 2 + 1 + varint_len(inner) + inner;   /* version, submit */
    uint8_t *buf = malloc(total), *p = buf;
    if (buf == NULL)
        return NULL;
    *p++ = TAG(1, 0);
    *p++ = 1;
    *p++ = TAG(3, 2);
    p = put_varint(p, inner);
    if (request_id != 0) {
        *p++ = TAG(1, 0);
        p = put_varint(p, request_id);
    }
    *p++ = TAG(2, 2);
    p = put_varint(p, env_len);
    if (env_len > 0)
        memcpy(p, env, env_len);
    p += env_len;
    *len = (size_t)(p - buf);
    return buf;
}

/* ---- the admin socket ------------------------------------------------------ */

#define MAX_ADMIN_REQUEST_BYTES 4096u
#define MAX_ADMIN_REPLY_BYTES (16u << 20)
#define MAX_ADMIN_COMMAND 32u

static wire_err check_admin_request(const void *m, const wire_limits *l, char *why, size_t n)
{
    (void)l;
    const Referral__V1__AdminRequest *r = m;
    TRY(check_version(r->version, why, n));
    TRY(check_text(r->operator_name, IDS_NAME_MAX, "operator_name", why, n));
    TRY(check_text(r->command, MAX_ADMIN_COMMAND, "command", why, n));
    if (r->command[0] == '\0')
        return fail(why, n, WIRE_INVALID, "admin request has no command");
    if (r->id.len != 0 && r->id.len != IDS_BYTES)
        return fail(why, n, WIRE_INVALID, "admin request id must be empty or %d bytes",
                    IDS_BYTES);
    return check_text(r->reason, WIRE_MAX_TEXT, "reason", why, n);
}

wire_err wire_decode_admin_request(const uint8_t *buf, size_t len,
                                   Referral__V1__AdminRequest **out, char *why, size_t why_len)
{
    return decode_checked(&referral__v1__admin_request__descriptor, buf, len,
                          MAX_ADMIN_REQUEST_BYTES, wire_default_limits.budget_bytes,
                          check_admin_request, &wire_default_limits, (void **)out, why, why_len);
}

static wire_err check_admin_reply(const void *m, const wire_limits *l, char *why, size_t n)
{
    (void)l;
    const Referral__V1__AdminReply *r = m;
    TRY(check_version(r->version, why, n));
    TRY(check_code(r->code, why, n));
    TRY(check_text(r->detail, WIRE_MAX_TEXT, "detail", why, n));
    return check_text(r->json, MAX_ADMIN_REPLY_BYTES, "json", why, n);
}

wire_err wire_decode_admin_reply(const uint8_t *buf, size_t len, Referral__V1__AdminReply **out,
                                 char *why, size_t why_len)
{
    return decode_checked(&referral__v1__admin_reply__descriptor, buf, len,
                          MAX_ADMIN_REPLY_BYTES + 4096u, MAX_ADMIN_REPLY_BYTES * 4u,
                          check_admin_reply, &wire_default_limits, (void **)out, why, why_len);
}
