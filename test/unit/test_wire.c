/*
 * test_wire: the one decoder of untrusted bytes (common/wire.c).
 *
 * Proves that every message of the schema survives pack, unpack and pack
 * again byte for byte; that a valid frame of every kind decodes; and that
 * bad input of every kind (truncated, random, mutated, oversized,
 * non-canonical, bad ids, other versions, missing bodies, inconsistent
 * headers, memory bombs) is refused with the right wire_err and a sentence
 * for a person, never a crash. Run under ASan/UBSan it also proves that
 * nothing leaks: every test frees what it decodes.
 *
 * Usage: test_wire PATH/TO/referral.proto (the schema is read to check that
 * every message it declares is covered by the round-trip table).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "utf8.h"
#include "wire.h"
#include "wire_samples.h"

static const char *schema_path;   /* argv[1] */

#define WHY_BYTES 256
#define NOTICE_CAP_BYTES (64u << 10)   /* wire.c's fixed cap on a Notice */

/* ---- helpers --------------------------------------------------------------- */

static uint8_t *pack_sample(const char *name, size_t *len)
{
    const sample *s = sample_find(name);
    if (s == NULL)
        fail_msg("no sample named %s in wire_samples.c", name);
    uint8_t *bytes = s->pack(len);
    assert_non_null(bytes);
    return bytes;
}

/* The sample named name, unpacked into a message the caller owns (change
 * it, then hand it to repack_and_decode, which frees it). */
static void *sample_message(const char *name)
{
    const sample *s = sample_find(name);
    assert_non_null(s);
    size_t len;
    uint8_t *bytes = pack_sample(name, &len);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(sample_decoder_descriptor(s->decoder), NULL, len, bytes);
    free(bytes);
    assert_non_null(m);
    return m;
}

static void set_string(char **field, const char *value)
{
    if (*field != NULL && *field != protobuf_c_empty_string)
        free(*field);
    *field = strdup(value);
    assert_non_null(*field);
}

static void set_bytes(ProtobufCBinaryData *field, size_t len, uint8_t fill)
{
    free(field->data);
    field->data = NULL;
    field->len = len;
    if (len > 0) {
        field->data = malloc(len);
        assert_non_null(field->data);
        memset(field->data, fill, len);
    }
}

/* The envelope a decoded message of decoder d carries, or NULL. */
static const Referral__V1__Envelope *envelope_in(sample_decoder d, const void *msg)
{
    if (msg == NULL)
        return NULL;
    switch (d) {
    case SAMPLE_CLIENT_FRAME: {
        const Referral__V1__ClientFrame *f = msg;
        if (f->body_case == REFERRAL__V1__CLIENT_FRAME__BODY_SUBMIT && f->submit != NULL)
            return f->submit->envelope;
        return NULL;
    }
    case SAMPLE_BROKER_FRAME: {
        const Referral__V1__BrokerFrame *f = msg;
        if (f->body_case == REFERRAL__V1__BROKER_FRAME__BODY_DELIVERY && f->delivery != NULL &&
            f->delivery->payload_case == REFERRAL__V1__DELIVERY__PAYLOAD_ENVELOPE)
            return f->delivery->envelope;
        return NULL;
    }
    case SAMPLE_PEER_FRAME: {
        const Referral__V1__PeerFrame *f = msg;
        if (f->body_case == REFERRAL__V1__PEER_FRAME__BODY_FORWARD && f->forward != NULL)
            return f->forward->envelope;
        return NULL;
    }
    case SAMPLE_ENVELOPE:
        return msg;
    default:
        return NULL;
    }
}

/* Call the decoder d. *out goes in as the caller set it (so a test can see
 * whether an error clears it) and comes back as the decoder left it. */
static wire_err call_decoder(sample_decoder d, const uint8_t *buf, size_t len,
                             const wire_limits *limits, void **out, char *why, size_t why_len)
{
    switch (d) {
    case SAMPLE_CLIENT_FRAME: {
        Referral__V1__ClientFrame *m = *out;
        wire_err e = wire_decode_client_frame(buf, len, limits, &m, why, why_len);
        *out = m;
        return e;
    }
    case SAMPLE_BROKER_FRAME: {
        Referral__V1__BrokerFrame *m = *out;
        wire_err e = wire_decode_broker_frame(buf, len, limits, &m, why, why_len);
        *out = m;
        return e;
    }
    case SAMPLE_PEER_FRAME: {
        Referral__V1__PeerFrame *m = *out;
        wire_err e = wire_decode_peer_frame(buf, len, limits, &m, why, why_len);
        *out = m;
        return e;
    }
    case SAMPLE_ENVELOPE: {
        Referral__V1__Envelope *m = *out;
        wire_err e = wire_decode_envelope(buf, len, limits, &m, why, why_len);
        *out = m;
        return e;
    }
    case SAMPLE_NOTICE: {
        Referral__V1__Notice *m = *out;
        wire_err e = wire_decode_notice(buf, len, limits, &m, why, why_len);
        *out = m;
        return e;
    }
    case SAMPLE_PLAINTEXT: {
        Referral__V1__BodyPlaintext *m = *out;
        wire_err e = wire_decode_plaintext(buf, len, limits, &m, why, why_len);
        *out = m;
        return e;
    }
    case SAMPLE_ADMIN_REQUEST: {   /* a fixed size cap: limits do not apply */
        Referral__V1__AdminRequest *m = *out;
        wire_err e = wire_decode_admin_request(buf, len, &m, why, why_len);
        *out = m;
        return e;
    }
    case SAMPLE_ADMIN_REPLY: {
        Referral__V1__AdminReply *m = *out;
        wire_err e = wire_decode_admin_reply(buf, len, &m, why, why_len);
        *out = m;
        return e;
    }
    case SAMPLE_DECODER_COUNT:
        break;
    }
    fail_msg("no decoder %d", (int)d);
    return WIRE_MALFORMED;
}

/* Check the wire.h contract of a decode result: a message exactly on
 * WIRE_OK, and a sentence on every error. */
static void check_contract(const char *what, wire_err e, const void *out, const char *why)
{
    if (e == WIRE_OK && out == NULL)
        fail_msg("%s: WIRE_OK without a message", what);
    if (e != WIRE_OK && out != NULL)
        fail_msg("%s: %s with a message", what, wire_strerror(e));
    if (e != WIRE_OK && why[0] == '\0')
        fail_msg("%s: %s without a sentence in why", what, wire_strerror(e));
}

/* Decode the header of env as ingress does, check the contract, free it. */
static wire_err decode_header_of(const Referral__V1__Envelope *env, char *why, size_t why_len)
{
    Referral__V1__RoutingHeader *h = NULL;
    why[0] = '\0';
    wire_err e = wire_decode_header(env, NULL, &h, why, why_len);
    check_contract("wire_decode_header", e, h, why);
    wire_free(h);
    return e;
}

/* Decode buf with d (limits NULL: the defaults), check the contract, and
 * free what was decoded. A decoded envelope also has its header decoded
 * (under the same contract), as a receiver would. why gets the sentence. */
static wire_err decode_with(sample_decoder d, const uint8_t *buf, size_t len,
                            const wire_limits *limits, char *why, size_t why_len)
{
    void *out = NULL;
    why[0] = '\0';
    wire_err e = call_decoder(d, buf, len, limits, &out, why, why_len);
    check_contract(sample_decoder_name(d), e, out, why);
    const Referral__V1__Envelope *env = out != NULL ? envelope_in(d, out) : NULL;
    if (env != NULL && wire_check_envelope(env, limits, why, why_len) == WIRE_OK) {
        char header_why[WHY_BYTES];
        (void)decode_header_of(env, header_why, sizeof header_why);
    }
    wire_free(out);
    return e;
}

static wire_err decode(sample_decoder d, const uint8_t *buf, size_t len)
{
    char why[WHY_BYTES];
    return decode_with(d, buf, len, NULL, why, sizeof why);
}

/* Pack m, free it, and decode the bytes with d. */
static wire_err repack_and_decode(sample_decoder d, void *m)
{
    size_t len;
    uint8_t *bytes = wire_pack(m, &len);
    assert_non_null(bytes);
    wire_free(m);
    wire_err e = decode(d, bytes, len);
    free(bytes);
    return e;
}

static void assert_wire_err(wire_err got, wire_err want, const char *what)
{
    if (got != want)
        fail_msg("%s: got %s, want %s", what, wire_strerror(got), wire_strerror(want));
}

/* ---- every message of the schema round-trips ------------------------------ */

/* Every message declared in referral.proto; schema_table_lists_every_message
 * fails when one is added without an entry here. */
static const ProtobufCMessageDescriptor *const schema_messages[] = {
    &referral__v1__routing_header__descriptor,
    &referral__v1__envelope__descriptor,
    &referral__v1__wrapped_key__descriptor,
    &referral__v1__sealed_body__descriptor,
    &referral__v1__body_plaintext__descriptor,
    &referral__v1__case_file__descriptor,
    &referral__v1__subject__descriptor,
    &referral__v1__safe_contact_rule__descriptor,
    &referral__v1__guardian__descriptor,
    &referral__v1__risk_assessment__descriptor,
    &referral__v1__legal_basis__descriptor,
    &referral__v1__sharing_limits__descriptor,
    &referral__v1__attachment__descriptor,
    &referral__v1__case_update__descriptor,
    &referral__v1__receipt__descriptor,
    &referral__v1__emergency_contact__descriptor,
    &referral__v1__alert__descriptor,
    &referral__v1__notice__descriptor,
    &referral__v1__signed_notice__descriptor,
    &referral__v1__trace_event__descriptor,
    &referral__v1__client_frame__descriptor,
    &referral__v1__hello__descriptor,
    &referral__v1__submit__descriptor,
    &referral__v1__credit__descriptor,
    &referral__v1__settle__descriptor,
    &referral__v1__status_query__descriptor,
    &referral__v1__trace_query__descriptor,
    &referral__v1__ping__descriptor,
    &referral__v1__broker_frame__descriptor,
    &referral__v1__welcome__descriptor,
    &referral__v1__submit_reply__descriptor,
    &referral__v1__delivery__descriptor,
    &referral__v1__attempt_copy__descriptor,
    &referral__v1__settle_reply__descriptor,
    &referral__v1__status_reply__descriptor,
    &referral__v1__trace_reply__descriptor,
    &referral__v1__pong__descriptor,
    &referral__v1__error_reply__descriptor,
    &referral__v1__peer_frame__descriptor,
    &referral__v1__peer_hello__descriptor,
    &referral__v1__forward__descriptor,
    &referral__v1__hop_ack__descriptor,
    &referral__v1__heartbeat__descriptor,
    &referral__v1__directory_agency__descriptor,
    &referral__v1__directory_broker__descriptor,
    &referral__v1__directory__descriptor,
    &referral__v1__signed_directory__descriptor,
    &referral__v1__admin_request__descriptor,
    &referral__v1__admin_reply__descriptor,
};
#define SCHEMA_MESSAGES (sizeof schema_messages / sizeof schema_messages[0])

#define FILL_REPEATED 2

static bool is_in_schema_table(const char *short_name)
{
    for (size_t i = 0; i < SCHEMA_MESSAGES; i++) {
        if (strcmp(schema_messages[i]->short_name, short_name) == 0)
            return true;
    }
    return false;
}

static void schema_table_lists_every_message(void **state)
{
    (void)state;
    if (schema_path == NULL)
        fail_msg("give the path of referral.proto as the first argument");
    FILE *f = fopen(schema_path, "r");
    if (f == NULL)
        fail_msg("cannot open %s", schema_path);
    char line[1024];
    size_t declared = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        const char *p = line + strspn(line, " \t");
        char name[128];
        if (strncmp(p, "message ", 8) != 0 || sscanf(p + 8, "%127[A-Za-z0-9_]", name) != 1)
            continue;
        declared++;
        if (!is_in_schema_table(name)) {
            fclose(f);
            fail_msg("message %s of %s is not in schema_messages[] of test_wire.c; add it",
                     name, schema_path);
        }
    }
    fclose(f);
    for (size_t i = 0; i < SCHEMA_MESSAGES; i++) {
        for (size_t j = i + 1; j < SCHEMA_MESSAGES; j++)
            assert_ptr_not_equal(schema_messages[i], schema_messages[j]);
    }
    assert_int_equal(declared, SCHEMA_MESSAGES);
}

static void *field_at(ProtobufCMessage *m, unsigned offset)
{
    return (char *)m + offset;
}

static size_t value_bytes(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: return sizeof(int32_t);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: return sizeof(uint32_t);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: return sizeof(int64_t);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: return sizeof(uint64_t);
    case PROTOBUF_C_TYPE_FLOAT: return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE: return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_ENUM: return sizeof(int);
    case PROTOBUF_C_TYPE_STRING: return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
    }
    fail_msg("field type %d is not handled", (int)type);
    return 0;
}

/* Which member of its oneof field i of d is (*pos), among how many (*n). */
static void oneof_position(const ProtobufCMessageDescriptor *d, unsigned i, unsigned *pos,
                           unsigned *n)
{
    *pos = 0;
    *n = 0;
    for (unsigned j = 0; j < d->n_fields; j++) {
        const ProtobufCFieldDescriptor *f = &d->fields[j];
        if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
            f->quantifier_offset != d->fields[i].quantifier_offset)
            continue;
        if (j < i)
            (*pos)++;
        (*n)++;
    }
}

/* How many filled variants of d it takes to set every member of its
 * largest oneof once (1 if it has none). */
static unsigned oneof_variants(const ProtobufCMessageDescriptor *d)
{
    unsigned most = 1;
    for (unsigned i = 0; i < d->n_fields; i++) {
        unsigned pos, n;
        if (d->fields[i].flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            oneof_position(d, i, &pos, &n);
            if (n > most)
                most = n;
        }
    }
    return most;
}

static ProtobufCMessage *new_filled_message(const ProtobufCMessageDescriptor *d,
                                            unsigned variant);

/* Store a non-default value of f's type at p: valid ids for strings,
 * 16-byte ids for bytes, the first non-zero value of an enum, sub-messages
 * filled in turn. index tells repeated elements apart. */
static void fill_value(const ProtobufCFieldDescriptor *f, void *p, unsigned index,
                       unsigned variant)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: *(int32_t *)p = -7 - (int32_t)index; break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: *(uint32_t *)p = 300 + index; break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: *(int64_t *)p = -1767225600000 - (int64_t)index; break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: *(uint64_t *)p = 1767225600000u + index; break;
    case PROTOBUF_C_TYPE_FLOAT: *(float *)p = 1.5f + (float)index; break;
    case PROTOBUF_C_TYPE_DOUBLE: *(double *)p = 2.5 + index; break;
    case PROTOBUF_C_TYPE_BOOL: *(protobuf_c_boolean *)p = 1; break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *e = f->descriptor;
        unsigned k = 0;
        while (k < e->n_values && e->values[k].value == 0)
            k++;
        if (k == e->n_values)
            fail_msg("enum %s has no non-zero value", e->name);
        *(int *)p = e->values[k].value;
        break;
    }
    case PROTOBUF_C_TYPE_STRING:
        *(char **)p = strdup(index == 0 ? "qd.police" : "qd.hotline.12355");
        assert_non_null(*(char **)p);
        break;
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData *b = p;
        b->len = 16;
        b->data = malloc(16);
        assert_non_null(b->data);
        for (unsigned k = 0; k < 16; k++)
            b->data[k] = (uint8_t)(0xa0 + 16 * index + k);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        *(ProtobufCMessage **)p = new_filled_message(f->descriptor, variant);
        break;
    }
}

/* A message of d with every field set to a non-default value; repeated
 * fields get FILL_REPEATED elements; of each oneof, member variant (mod its
 * size) is set. Owned by the caller (protobuf_c_message_free_unpacked with
 * the default allocator frees it). The schema has no recursion, so this
 * ends. */
static ProtobufCMessage *new_filled_message(const ProtobufCMessageDescriptor *d,
                                            unsigned variant)
{
    ProtobufCMessage *m = malloc(d->sizeof_message);
    assert_non_null(m);
    protobuf_c_message_init(d, m);
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            unsigned pos, n;
            oneof_position(d, i, &pos, &n);
            if (pos != variant % n)
                continue;
            *(uint32_t *)field_at(m, f->quantifier_offset) = f->id;
            fill_value(f, field_at(m, f->offset), 0, variant);
        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t size = value_bytes(f->type);
            char *array = calloc(FILL_REPEATED, size);
            assert_non_null(array);
            for (unsigned k = 0; k < FILL_REPEATED; k++)
                fill_value(f, array + k * size, k, variant);
            *(size_t *)field_at(m, f->quantifier_offset) = FILL_REPEATED;
            *(void **)field_at(m, f->offset) = array;
        } else {
            if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
                f->type != PROTOBUF_C_TYPE_MESSAGE)
                *(protobuf_c_boolean *)field_at(m, f->quantifier_offset) = 1;
            fill_value(f, field_at(m, f->offset), 0, variant);
        }
    }
    return m;
}

static void schema_messages_round_trip_byte_for_byte(void **state)
{
    (void)state;
    for (size_t i = 0; i < SCHEMA_MESSAGES; i++) {
        const ProtobufCMessageDescriptor *d = schema_messages[i];
        for (unsigned v = 0; v < oneof_variants(d); v++) {
            ProtobufCMessage *m = new_filled_message(d, v);
            assert_true(protobuf_c_message_check(m));
            size_t len, again_len;
            uint8_t *bytes = wire_pack(m, &len);
            assert_non_null(bytes);
            ProtobufCMessage *back = protobuf_c_message_unpack(d, NULL, len, bytes);
            if (back == NULL)
                fail_msg("%s (variant %u) does not unpack after packing", d->name, v);
            uint8_t *again = wire_pack(back, &again_len);
            assert_non_null(again);
            if (again_len != len || memcmp(again, bytes, len) != 0)
                fail_msg("%s (variant %u) re-packs to other bytes (%zu, not %zu)", d->name, v,
                         again_len, len);
            free(again);
            free(bytes);
            protobuf_c_message_free_unpacked(back, NULL);
            protobuf_c_message_free_unpacked(m, NULL);
        }
    }
}

/* ---- valid frames decode ---------------------------------------------------- */

static void every_sample_decodes(void **state)
{
    (void)state;
    for (size_t i = 0; i < samples_count; i++) {
        const sample *s = &samples[i];
        size_t len;
        uint8_t *bytes = s->pack(&len);
        assert_non_null(bytes);
        void *out = NULL;
        char why[WHY_BYTES] = "";
        wire_err e = call_decoder(s->decoder, bytes, len, NULL, &out, why, sizeof why);
        if (e != WIRE_OK)
            fail_msg("sample %s: %s: %s", s->name, wire_strerror(e), why);
        const Referral__V1__Envelope *env = envelope_in(s->decoder, out);
        if (env != NULL) {
            e = wire_check_envelope(env, NULL, why, sizeof why);
            if (e == WIRE_OK)
                e = decode_header_of(env, why, sizeof why);
            if (e != WIRE_OK)
                fail_msg("sample %s: its envelope: %s: %s", s->name, wire_strerror(e), why);
        }
        wire_free(out);
        free(bytes);
    }
}

/* Adding a body to a frame's oneof without a sample for it fails here. */
static void samples_cover_every_body_of_every_frame(void **state)
{
    (void)state;
    static const sample_decoder with_bodies[] = {SAMPLE_CLIENT_FRAME, SAMPLE_BROKER_FRAME,
                                                 SAMPLE_PEER_FRAME, SAMPLE_PLAINTEXT};
    for (size_t k = 0; k < sizeof with_bodies / sizeof with_bodies[0]; k++) {
        const ProtobufCMessageDescriptor *d = sample_decoder_descriptor(with_bodies[k]);
        for (unsigned i = 0; i < d->n_fields; i++) {
            const ProtobufCFieldDescriptor *body = &d->fields[i];
            if (!(body->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
                continue;
            bool is_covered = false;
            for (size_t j = 0; j < samples_count && !is_covered; j++) {
                if (samples[j].decoder != with_bodies[k])
                    continue;
                ProtobufCMessage *m = sample_message(samples[j].name);
                is_covered = *(uint32_t *)field_at(m, body->quantifier_offset) == body->id;
                wire_free(m);
            }
            if (!is_covered)
                fail_msg("no sample in wire_samples.c is a %s with body %s", d->short_name,
                         body->name);
        }
    }
}

/* ---- truncated, random and mutated input ------------------------------------ */

static void every_strict_prefix_is_refused(void **state)
{
    (void)state;
    for (size_t i = 0; i < samples_count; i++) {
        const sample *s = &samples[i];
        size_t len;
        uint8_t *bytes = s->pack(&len);
        assert_non_null(bytes);
        for (size_t n = 0; n < len; n++) {
            /* A copy of exactly n bytes, so ASan sees any read past the end. */
            uint8_t *prefix = malloc(n == 0 ? 1 : n);
            assert_non_null(prefix);
            memcpy(prefix, bytes, n);
            wire_err e = decode(s->decoder, prefix, n);
            if (s->is_every_prefix_invalid && e == WIRE_OK)
                fail_msg("sample %s cut to %zu of %zu bytes decodes", s->name, n, len);
            free(prefix);
        }
        free(bytes);
    }

    /* And every prefix of a header, inside an otherwise valid envelope. */
    Referral__V1__Envelope *env = sample_message("envelope");
    ProtobufCBinaryData header = env->header;
    for (size_t n = 0; n < header.len; n++) {
        char why[WHY_BYTES];
        env->header.len = n;
        if (decode_header_of(env, why, sizeof why) == WIRE_OK)
            fail_msg("header cut to %zu of %zu bytes decodes", n, header.len);
    }
    env->header = header;
    wire_free(env);
}

static uint64_t rng_state;

static uint64_t rng_next(void)   /* xorshift64*: the same bytes on every run */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

#define RANDOM_BUFFERS 3000
#define RANDOM_MAX_BYTES 300

static void random_bytes_are_refused(void **state)
{
    (void)state;
    rng_state = 0x5eed0f5eed0f5eedull;
    uint8_t *buf = malloc(RANDOM_MAX_BYTES);
    assert_non_null(buf);
    Referral__V1__Envelope *env = sample_message("envelope");
    ProtobufCBinaryData header = env->header;
    for (int i = 0; i < RANDOM_BUFFERS; i++) {
        size_t len = (size_t)(rng_next() % RANDOM_MAX_BYTES);
        for (size_t k = 0; k < len; k++)
            buf[k] = (uint8_t)rng_next();
        for (int d = 0; d < SAMPLE_DECODER_COUNT; d++) {
            if (decode((sample_decoder)d, buf, len) == WIRE_OK)
                fail_msg("random buffer %d (%zu bytes) decodes as %s", i, len,
                         sample_decoder_name((sample_decoder)d));
        }
        char why[WHY_BYTES];
        env->header = (ProtobufCBinaryData){.len = len, .data = buf};
        if (decode_header_of(env, why, sizeof why) == WIRE_OK)
            fail_msg("random buffer %d (%zu bytes) decodes as a header", i, len);
    }
    env->header = header;
    wire_free(env);
    free(buf);
}

/* Each byte of each sample replaced in turn: whatever the decoder says,
 * it keeps its contract (and ASan/UBSan see no fault). */
static void mutated_samples_keep_the_contract(void **state)
{
    (void)state;
    static const uint8_t masks[] = {0xff, 0x01, 0x80};
    for (size_t i = 0; i < samples_count; i++) {
        size_t len;
        uint8_t *bytes = samples[i].pack(&len);
        assert_non_null(bytes);
        for (size_t k = 0; k < len; k++) {
            for (size_t j = 0; j < sizeof masks; j++) {
                bytes[k] ^= masks[j];
                (void)decode(samples[i].decoder, bytes, len);
                bytes[k] ^= masks[j];
            }
        }
        free(bytes);
    }
}

/* ---- sizes ---------------------------------------------------------------- */

static void frames_over_the_size_cap_are_too_large(void **state)
{
    (void)state;
    for (size_t i = 0; i < samples_count; i++) {
        const sample *s = &samples[i];
        if (s->decoder == SAMPLE_NOTICE || s->decoder == SAMPLE_ADMIN_REQUEST ||
            s->decoder == SAMPLE_ADMIN_REPLY)
            continue;   /* a fixed cap, below */
        size_t len;
        uint8_t *bytes = s->pack(&len);
        assert_non_null(bytes);
        wire_limits limits = wire_default_limits;
        size_t *cap = s->decoder == SAMPLE_PLAINTEXT ? &limits.max_body_bytes
                                                     : &limits.max_frame_bytes;
        char why[WHY_BYTES];
        *cap = len;
        assert_wire_err(decode_with(s->decoder, bytes, len, &limits, why, sizeof why), WIRE_OK,
                        s->name);
        *cap = len - 1;
        assert_wire_err(decode_with(s->decoder, bytes, len, &limits, why, sizeof why),
                        WIRE_TOO_LARGE, s->name);
        free(bytes);
    }

    /* The defaults: one byte over 1 MiB is refused before it is parsed. */
    size_t huge = wire_default_limits.max_frame_bytes + 1;
    uint8_t *zeros = calloc(1, huge);
    assert_non_null(zeros);
    assert_wire_err(decode(SAMPLE_CLIENT_FRAME, zeros, huge), WIRE_TOO_LARGE, "1 MiB + 1");
    assert_wire_err(decode(SAMPLE_NOTICE, zeros, NOTICE_CAP_BYTES + 1), WIRE_TOO_LARGE,
                    "notice over 64 KiB");
    assert_wire_err(decode(SAMPLE_ADMIN_REQUEST, zeros, 4096 + 1), WIRE_TOO_LARGE,
                    "admin request over 4 KiB");
    free(zeros);
}

static void envelope_parts_over_their_caps_are_too_large(void **state)
{
    (void)state;
    char why[WHY_BYTES];
    Referral__V1__Envelope *env = sample_message("envelope");
    set_bytes(&env->header, WIRE_MAX_HEADER_BYTES + 1, 0x08);
    assert_wire_err(wire_check_envelope(env, NULL, why, sizeof why), WIRE_TOO_LARGE,
                    "envelope with a 4097-byte header");
    assert_wire_err(decode_header_of(env, why, sizeof why), WIRE_TOO_LARGE,
                    "a 4097-byte header");
    assert_wire_err(repack_and_decode(SAMPLE_ENVELOPE, env), WIRE_TOO_LARGE,
                    "stored envelope with a 4097-byte header");

    env = sample_message("envelope");
    set_bytes(&env->sealed_body, wire_default_limits.max_body_bytes + 1, 0xc1);
    assert_wire_err(repack_and_decode(SAMPLE_ENVELOPE, env), WIRE_TOO_LARGE,
                    "sealed body over 768 KiB");
}

/* BrokerFrame{version 1, trace{200 empty TraceEvents}}: 405 bytes that
 * would unpack into 200 structs. */
static void many_empty_submessages_exceed_a_small_budget(void **state)
{
    (void)state;
    enum { EVENTS = 200 };
    uint8_t frame[2 + 3 + 2 * EVENTS];
    size_t n = 0;
    frame[n++] = 0x08;                         /* version */
    frame[n++] = 0x01;
    frame[n++] = 0x3a;                         /* trace (7, length-delimited) */
    frame[n++] = (uint8_t)(0x80 | ((2 * EVENTS) & 0x7f));
    frame[n++] = (uint8_t)((2 * EVENTS) >> 7);
    for (int i = 0; i < EVENTS; i++) {
        frame[n++] = 0x1a;                     /* events (3), empty */
        frame[n++] = 0x00;
    }
    assert_int_equal(n, sizeof frame);

    char why[WHY_BYTES];
    wire_limits small = wire_default_limits;
    small.budget_bytes = 4096;
    assert_wire_err(decode_with(SAMPLE_BROKER_FRAME, frame, n, &small, why, sizeof why),
                    WIRE_OVER_BUDGET, "200 empty events with a 4 KiB budget");
    /* Within the default budget it decodes, and is refused for what it is. */
    assert_wire_err(decode(SAMPLE_BROKER_FRAME, frame, n), WIRE_INVALID,
                    "200 empty events with the default budget");
}

/* ---- canonical encoding and ids ------------------------------------------- */

static void agency_id_with_embedded_nul_is_noncanonical(void **state)
{
    (void)state;
    static const uint8_t with_nul[] = {
        0x08, 0x01,                                     /* version 1 */
        0x12, 0x0d,                                     /* hello, 13 bytes */
        0x0a, 0x0b,                                     /* agency_id, 11 bytes */
        'q', 'd', '.', 'p', 'o', 'l', 'i', 'c', 'e', 0x00, 'x',
    };
    static const uint8_t without[] = {
        0x08, 0x01, 0x12, 0x0b, 0x0a, 0x09, 'q', 'd', '.', 'p', 'o', 'l', 'i', 'c', 'e',
    };
    assert_wire_err(decode(SAMPLE_CLIENT_FRAME, without, sizeof without), WIRE_OK,
                    "hello qd.police");
    assert_wire_err(decode(SAMPLE_CLIENT_FRAME, with_nul, sizeof with_nul), WIRE_NONCANONICAL,
                    "hello \"qd.police\\0x\"");
}

/* ---- UTF-8 ------------------------------------------------------------------ */

static void utf8_validity_follows_rfc_3629(void **state)
{
    (void)state;
    static const char *const valid[] = {
        "", "qd.police", "\xc2\xa9", "\xe5\xad\xa9\xe5\xad\x90", "\xf0\x9f\x98\x80",
        "\xef\xbf\xbf", "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf", "\xee\x80\x80",
    };
    static const char *const invalid[] = {
        "\x80", "\xbf", "a\xff", "\xc0\x80", "\xc1\xbf",         /* stray, overlong */
        "\xe0\x80\x80", "\xe0\x9f\xbf", "\xf0\x8f\xbf\xbf",        /* overlong */
        "\xed\xa0\x80", "\xed\xbf\xbf",                         /* surrogates */
        "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",                   /* above U+10FFFF */
        "\xe5\xad", "\xc2", "\xf0\x9f\x98", "\xe5\x41\xa9",          /* cut, bad tail */
    };
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++)
        if (!utf8_is_valid(valid[i], strlen(valid[i])))
            fail_msg("valid UTF-8 %zu refused", i);
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
        if (utf8_is_valid(invalid[i], strlen(invalid[i])))
            fail_msg("invalid UTF-8 %zu accepted", i);
    assert_true(utf8_is_valid(NULL, 0));
}

static void utf8_cut_keeps_whole_characters(void **state)
{
    (void)state;
    /* Every limit, over text of 1-, 2-, 3- and 4-byte characters. */
    static const char text[] = "a\xc2\xa9\xe5\xad\xa9\xf0\x9f\x98\x80" "b\xe5\xad\x90";
    for (size_t max = 0; max <= sizeof text; max++) {
        char buf[sizeof text];
        memcpy(buf, text, sizeof text);
        size_t n = utf8_cut(buf, max);
        assert_int_equal(n, strlen(buf));
        assert_true(n <= max);
        assert_true(n + 3 >= (max < sizeof text - 1 ? max : sizeof text - 1));
        assert_true(utf8_is_valid(buf, n));
        assert_memory_equal(buf, text, n);
    }
}

/* Pack a ClientFrame{settle{reason}} and decode it. */
static wire_err decode_settle_reason(const char *reason, char *why, size_t why_len)
{
    static uint8_t mid[16] = {1};
    Referral__V1__Settle s = REFERRAL__V1__SETTLE__INIT;
    s.message_id = (ProtobufCBinaryData){16, mid};
    s.verb = REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_REJECT;
    s.reason = (char *)(uintptr_t)reason;
    s.attempt = 1;
    Referral__V1__ClientFrame f = REFERRAL__V1__CLIENT_FRAME__INIT;
    f.version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    f.body_case = REFERRAL__V1__CLIENT_FRAME__BODY_SETTLE;
    f.settle = &s;
    size_t len;
    uint8_t *buf = wire_pack(&f, &len);
    assert_non_null(buf);
    Referral__V1__ClientFrame *out = NULL;
    wire_err e = wire_decode_client_frame(buf, len, NULL, &out, why, why_len);
    check_contract("settle", e, out, why);
    wire_free(out);
    free(buf);
    return e;
}

static void invalid_utf8_anywhere_is_an_invalid_field(void **state)
{
    (void)state;
    char why[WHY_BYTES];
    assert_wire_err(decode_settle_reason("\xe4\xb8\x8d\xe5\xb1\x9e\xe6\x88\x91\xe4\xbb\xac "
                                         "jurisdiction", why, sizeof why),
                    WIRE_OK, "a Chinese reason");
    assert_wire_err(decode_settle_reason("not ours \xff", why, sizeof why), WIRE_INVALID,
                    "a reason with 0xff");
    assert_non_null(strstr(why, "Settle.reason"));
    assert_non_null(strstr(why, "UTF-8"));
    assert_int_equal(wire_result_code(WIRE_INVALID),
                     REFERRAL__V1__RESULT_CODE__RESULT_INVALID_FIELD);
    assert_wire_err(decode_settle_reason("\xed\xa0\x80", why, sizeof why), WIRE_INVALID,
                    "a surrogate");

    /* Deeper: a narrative inside a case file inside a BodyPlaintext. */
    Referral__V1__CaseFile cf = REFERRAL__V1__CASE_FILE__INIT;
    cf.category = REFERRAL__V1__CASE_CATEGORY__CASE_CATEGORY_PSYCHOLOGICAL_SUPPORT;
    cf.narrative = (char *)"caller, 17, \xc0\xae";
    Referral__V1__BodyPlaintext p = REFERRAL__V1__BODY_PLAINTEXT__INIT;
    p.body_case = REFERRAL__V1__BODY_PLAINTEXT__BODY_CASE_FILE;
    p.case_file = &cf;
    size_t len;
    uint8_t *buf = wire_pack(&p, &len);
    assert_non_null(buf);
    assert_wire_err(decode_with(SAMPLE_PLAINTEXT, buf, len, NULL, why, sizeof why),
                    WIRE_INVALID, "an overlong narrative");
    assert_non_null(strstr(why, "CaseFile.narrative"));
    free(buf);
    cf.narrative = (char *)"caller, 17, \xe5\xad\xa9\xe5\xad\x90";
    buf = wire_pack(&p, &len);
    assert_non_null(buf);
    assert_wire_err(decode_with(SAMPLE_PLAINTEXT, buf, len, NULL, why, sizeof why), WIRE_OK,
                    "a valid narrative");
    free(buf);
}

/* The broker builds a REJECT notice's detail from the reason (delivery.c):
 * with a reason of the documented maximum, in any characters, the detail
 * is cut on a character boundary to what wire_decode_notice accepts. */
static void notice_for_a_512_byte_reject_reason_decodes(void **state)
{
    (void)state;
    static const char *const fills[] = {"x", "\xc2\xa9", "\xe5\xad\xa9", "\xf0\x9f\x98\x80"};
    for (size_t k = 0; k < 4; k++) {
        for (size_t shift = 0; shift < 4; shift++) {
            char reason[WIRE_MAX_TEXT + 1];
            size_t at = 0, step = strlen(fills[k]);
            for (; at < shift; at++)
                reason[at] = 'r';
            for (; at + step <= WIRE_MAX_TEXT; at += step)
                memcpy(reason + at, fills[k], step);
            reason[at] = '\0';
            char why[WHY_BYTES];
            assert_wire_err(decode_settle_reason(reason, why, sizeof why), WIRE_OK,
                            "a reason of the maximum length");
            /* As delivery_settle and notify_sender build it. */
            char detail[WIRE_MAX_TEXT + 64];
            snprintf(detail, sizeof detail, "refused by the recipient's client: %s", reason);
            utf8_cut(detail, WIRE_MAX_TEXT);
            assert_true(strlen(detail) <= WIRE_MAX_TEXT);
            static uint8_t id[16] = {0x01, 0x8c};
            Referral__V1__Notice n = REFERRAL__V1__NOTICE__INIT;
            n.notice_id = (ProtobufCBinaryData){16, id};
            n.kind = REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ACK_LEVEL;
            n.referral_id = (ProtobufCBinaryData){16, id};
            n.message_id = (ProtobufCBinaryData){16, id};
            n.broker_id = (char *)"broker.qingdao";
            n.about_agency = (char *)"qd.youth-league";
            n.level = REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_REJECTED;
            n.detail = detail;
            size_t len;
            uint8_t *buf = wire_pack(&n, &len);
            assert_non_null(buf);
            assert_wire_err(decode_with(SAMPLE_NOTICE, buf, len, NULL, why, sizeof why), WIRE_OK,
                            "the notice for a 512-byte reason");
            free(buf);
        }
    }
}

/* The first occurrence of text in buf, or NULL. */
static uint8_t *find_bytes(uint8_t *buf, size_t len, const char *text)
{
    size_t n = strlen(text);
    for (size_t i = 0; i + n <= len; i++) {
        if (memcmp(buf + i, text, n) == 0)
            return buf + i;
    }
    return NULL;
}

static void header_id_with_embedded_nul_is_noncanonical(void **state)
{
    (void)state;
    Referral__V1__Envelope *env = sample_message("envelope");
    Referral__V1__RoutingHeader *h = (Referral__V1__RoutingHeader *)protobuf_c_message_unpack(
        &referral__v1__routing_header__descriptor, NULL, env->header.len, env->header.data);
    assert_non_null(h);
    set_string(&h->to_agency, "qd.policeXx");
    size_t len;
    uint8_t *bytes = wire_pack(h, &len);
    wire_free(h);
    uint8_t *x = find_bytes(bytes, len, "qd.policeXx");
    assert_non_null(x);
    if (x == NULL)   /* not reached: tells the compiler's null analysis so */
        return;
    x[9] = 0x00;   /* "qd.police\0x", the string's length unchanged */
    free(env->header.data);
    env->header = (ProtobufCBinaryData){.len = len, .data = bytes};
    char why[WHY_BYTES];
    assert_wire_err(decode_header_of(env, why, sizeof why), WIRE_NONCANONICAL,
                    "to_agency \"qd.police\\0x\"");
    wire_free(env);
}

/* A NUL cut shortens the re-encoding by the bytes after the NUL; a negative
 * enum written in 5 bytes (as int32 on the wire) re-encodes in 10. Together
 * the sizes match, so only comparing the bytes finds the cut. */
static void nul_cut_hidden_by_a_negative_enum_is_noncanonical(void **state)
{
    (void)state;
    uint8_t notice[64];
    size_t n = 0;
    notice[n++] = 0x0a;                                   /* notice_id, 16 bytes */
    notice[n++] = 16;
    for (int i = 0; i < 16; i++)
        notice[n++] = (uint8_t)(0x10 + i);
    notice[n++] = 0x10;                                   /* kind UNDELIVERABLE */
    notice[n++] = 0x02;
    notice[n++] = 0x22;                                   /* message_id, 16 bytes */
    notice[n++] = 16;
    for (int i = 0; i < 16; i++)
        notice[n++] = (uint8_t)(0x30 + i);
    notice[n++] = 0x2a;                                   /* broker_id, 14 bytes */
    notice[n++] = 14;
    memcpy(notice + n, "qd.broker\0evil", 14);
    n += 14;
    static const uint8_t level_minus_1[] = {0x40, 0xff, 0xff, 0xff, 0xff, 0x0f};
    memcpy(notice + n, level_minus_1, sizeof level_minus_1);
    n += sizeof level_minus_1;
    assert_wire_err(decode(SAMPLE_NOTICE, notice, n), WIRE_NONCANONICAL,
                    "notice broker_id \"qd.broker\\0evil\" with level -1 in 5 bytes");
}

static wire_err decode_hello_as(const char *agency_id)
{
    Referral__V1__ClientFrame *f = sample_message("client-hello");
    set_string(&f->hello->agency_id, agency_id);
    return repack_and_decode(SAMPLE_CLIENT_FRAME, f);
}

static void hello_refuses_malformed_agency_ids(void **state)
{
    (void)state;
    char id_65[66], id_64[65];
    memset(id_65, 'a', 65);
    id_65[65] = '\0';
    memset(id_64, 'a', 64);
    id_64[64] = '\0';
    const char *bad[] = {"QD.police", "qd.Police", id_65, ".qd.police", "qd.police.",
                         "a..b", "", "qd police", "qd/police", "-qd", "qd_"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_wire_err(decode_hello_as(bad[i]), WIRE_INVALID, bad[i]);
    const char *good[] = {"a", "qd.police", "qd-police_2.x", id_64};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_wire_err(decode_hello_as(good[i]), WIRE_OK, good[i]);
}

static void ids_are_checked_wherever_they_appear(void **state)
{
    (void)state;
    Referral__V1__PeerFrame *peer = sample_message("peer-hello");
    set_string(&peer->hello->broker_id, "QD.broker");
    assert_wire_err(repack_and_decode(SAMPLE_PEER_FRAME, peer), WIRE_INVALID,
                    "peer hello broker QD.broker");

    Referral__V1__BrokerFrame *welcome = sample_message("broker-welcome");
    set_string(&welcome->welcome->agency_id, "a..b");
    assert_wire_err(repack_and_decode(SAMPLE_BROKER_FRAME, welcome), WIRE_INVALID,
                    "welcome agency a..b");

    Referral__V1__Envelope *env = sample_message("envelope-relayed");
    set_string(&env->hops[1], ".broker");
    assert_wire_err(repack_and_decode(SAMPLE_ENVELOPE, env), WIRE_INVALID, "hop .broker");

    Referral__V1__Notice *notice = sample_message("notice-minimal");
    set_string(&notice->broker_id, "");
    assert_wire_err(repack_and_decode(SAMPLE_NOTICE, notice), WIRE_INVALID,
                    "notice without broker_id");

    Referral__V1__ClientFrame *settle = sample_message("client-settle");
    set_bytes(&settle->settle->message_id, 15, 0x01);
    assert_wire_err(repack_and_decode(SAMPLE_CLIENT_FRAME, settle), WIRE_INVALID,
                    "settle message_id of 15 bytes");
}

/* ---- versions and bodies -------------------------------------------------- */

static void frames_of_another_version_are_refused(void **state)
{
    (void)state;
    static const char *const frames[] = {"client-ping", "broker-pong", "peer-heartbeat"};
    static const int versions[] = {0, 2, 99};
    for (size_t i = 0; i < sizeof frames / sizeof frames[0]; i++) {
        const sample *s = sample_find(frames[i]);
        assert_non_null(s);
        const ProtobufCFieldDescriptor *version = protobuf_c_message_descriptor_get_field_by_name(
            sample_decoder_descriptor(s->decoder), "version");
        assert_non_null(version);
        for (size_t k = 0; k < sizeof versions / sizeof versions[0]; k++) {
            ProtobufCMessage *m = sample_message(frames[i]);
            *(int *)field_at(m, version->offset) = versions[k];
            assert_wire_err(repack_and_decode(s->decoder, m), WIRE_VERSION, frames[i]);
        }
    }
}

static void frames_without_a_body_are_refused(void **state)
{
    (void)state;
    static const uint8_t version_only[] = {0x08, 0x01};
    assert_wire_err(decode(SAMPLE_CLIENT_FRAME, version_only, 2), WIRE_INVALID, "client frame");
    assert_wire_err(decode(SAMPLE_BROKER_FRAME, version_only, 2), WIRE_INVALID, "broker frame");
    assert_wire_err(decode(SAMPLE_PEER_FRAME, version_only, 2), WIRE_INVALID, "peer frame");
    static const uint8_t padding_only[] = {0x7a, 0x02, 0x00, 0x00};   /* padding (15) */
    assert_wire_err(decode(SAMPLE_PLAINTEXT, padding_only, sizeof padding_only), WIRE_INVALID,
                    "plaintext with padding only");
    assert_wire_err(decode(SAMPLE_PLAINTEXT, version_only, 0), WIRE_INVALID, "empty plaintext");

    Referral__V1__ClientFrame *submit = sample_message("client-submit");
    wire_free(submit->submit->envelope);
    submit->submit->envelope = NULL;
    assert_wire_err(repack_and_decode(SAMPLE_CLIENT_FRAME, submit), WIRE_INVALID,
                    "submit without an envelope");

    Referral__V1__BrokerFrame *delivery = sample_message("broker-delivery-envelope");
    wire_free(delivery->delivery->envelope);
    delivery->delivery->envelope = NULL;
    delivery->delivery->payload_case = REFERRAL__V1__DELIVERY__PAYLOAD__NOT_SET;
    assert_wire_err(repack_and_decode(SAMPLE_BROKER_FRAME, delivery), WIRE_INVALID,
                    "delivery without a payload");

    Referral__V1__PeerFrame *forward = sample_message("peer-forward");
    wire_free(forward->forward->envelope);
    forward->forward->envelope = NULL;
    assert_wire_err(repack_and_decode(SAMPLE_PEER_FRAME, forward), WIRE_INVALID,
                    "forward without an envelope");
}

/* ---- routing headers ------------------------------------------------------- */

/* The header of the sample envelope, unpacked for a test to change. */
static Referral__V1__RoutingHeader *sample_header(void)
{
    Referral__V1__Envelope *env = sample_message("envelope");
    ProtobufCMessage *h = protobuf_c_message_unpack(&referral__v1__routing_header__descriptor,
                                                    NULL, env->header.len, env->header.data);
    wire_free(env);
    assert_non_null(h);
    return (Referral__V1__RoutingHeader *)h;
}

/* Pack h (then free it) into the sample envelope and decode that header. */
static wire_err decode_changed_header(Referral__V1__RoutingHeader *h)
{
    Referral__V1__Envelope *env = sample_message("envelope");
    free(env->header.data);
    env->header.data = wire_pack(h, &env->header.len);
    assert_non_null(env->header.data);
    wire_free(h);
    char why[WHY_BYTES];
    wire_err e = decode_header_of(env, why, sizeof why);
    wire_free(env);
    return e;
}

static void header_of_another_version_is_refused(void **state)
{
    (void)state;
    static const uint32_t versions[] = {0, 2};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        Referral__V1__RoutingHeader *h = sample_header();
        h->header_version = versions[i];
        assert_wire_err(decode_changed_header(h), WIRE_VERSION, "header version 0 or 2");
    }
}

static void header_expiry_must_follow_creation(void **state)
{
    (void)state;
    Referral__V1__RoutingHeader *h = sample_header();
    h->expires_at_ms = h->created_at_ms;
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "expires == created");
    h = sample_header();
    h->expires_at_ms = h->created_at_ms - 1;
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "expires < created");
    h = sample_header();
    h->created_at_ms = 0;
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "no created_at_ms");
    h = sample_header();
    h->expires_at_ms = h->created_at_ms + 1;
    assert_wire_err(decode_changed_header(h), WIRE_OK, "expires == created + 1");
}

static void header_hop_limit_is_1_to_16(void **state)
{
    (void)state;
    static const struct {
        uint32_t hop_limit;
        wire_err want;
    } cases[] = {{0, WIRE_INVALID}, {1, WIRE_OK}, {16, WIRE_OK}, {17, WIRE_INVALID}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Referral__V1__RoutingHeader *h = sample_header();
        h->hop_limit = cases[i].hop_limit;
        char what[32];
        snprintf(what, sizeof what, "hop_limit %u", cases[i].hop_limit);
        assert_wire_err(decode_changed_header(h), cases[i].want, what);
    }
}

static void header_ids_must_be_16_bytes(void **state)
{
    (void)state;
    Referral__V1__RoutingHeader *h = sample_header();
    set_bytes(&h->message_id, 15, 0x01);
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "message_id of 15 bytes");
    h = sample_header();
    set_bytes(&h->referral_id, 17, 0x01);
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "referral_id of 17 bytes");
    h = sample_header();
    set_bytes(&h->attempt_id, 0, 0x01);
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "no attempt_id");
    h = sample_header();
    set_bytes(&h->in_reply_to, 8, 0x01);
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "in_reply_to of 8 bytes");
    h = sample_header();
    set_bytes(&h->in_reply_to, 16, 0x01);
    assert_wire_err(decode_changed_header(h), WIRE_OK, "in_reply_to of 16 bytes");
}

static void header_padded_size_must_match_the_body(void **state)
{
    (void)state;
    Referral__V1__RoutingHeader *h = sample_header();
    h->padded_size = SAMPLE_BODY_BYTES - 1;
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "padded_size one short");
    h = sample_header();
    h->padded_size = SAMPLE_BODY_BYTES + 1;
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "padded_size one over");
}

static void header_suite_must_match_the_envelope(void **state)
{
    (void)state;
    Referral__V1__RoutingHeader *h = sample_header();
    h->suite = REFERRAL__V1__CIPHER_SUITE__CIPHER_SUITE_SM2_SM3_SM4;
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "header suite 2, envelope suite 1");
    h = sample_header();
    h->suite = REFERRAL__V1__CIPHER_SUITE__CIPHER_SUITE_UNSPECIFIED;
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "header without a suite");
}

static void header_kind_urgency_and_agencies_are_required(void **state)
{
    (void)state;
    Referral__V1__RoutingHeader *h = sample_header();
    h->kind = REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_UNSPECIFIED;
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "no kind");
    h = sample_header();
    h->urgency = (Referral__V1__Urgency)99;
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "urgency 99");
    h = sample_header();
    set_string(&h->from_agency, "");
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "no from_agency");
    h = sample_header();
    set_string(&h->backup_recipients[0], "Qd.police");
    assert_wire_err(decode_changed_header(h), WIRE_INVALID, "backup Qd.police");
}

/* ---- contract details ---------------------------------------------------- */

/* wire.h: "On error *out is NULL" even if the caller left it set. */
static void decoders_clear_out_on_error(void **state)
{
    (void)state;
    static const uint8_t garbage[] = {0xff};
    static int sentinel;
    for (int d = 0; d < SAMPLE_DECODER_COUNT; d++) {
        void *out = &sentinel;
        char why[WHY_BYTES] = "";
        wire_err e = call_decoder((sample_decoder)d, garbage, sizeof garbage, NULL, &out, why,
                                  sizeof why);
        assert_int_not_equal(e, WIRE_OK);
        if (out != NULL)
            fail_msg("%s decoder leaves *out set after %s", sample_decoder_name((sample_decoder)d),
                     wire_strerror(e));
    }
    Referral__V1__RoutingHeader *h = (Referral__V1__RoutingHeader *)&sentinel;
    char why[WHY_BYTES] = "";
    assert_int_not_equal(wire_decode_header(NULL, NULL, &h, why, sizeof why), WIRE_OK);
    assert_null(h);
}

static void decoders_accept_no_why_buffer(void **state)
{
    (void)state;
    static const uint8_t garbage[] = {0xff};
    for (int d = 0; d < SAMPLE_DECODER_COUNT; d++) {
        void *out = NULL;
        assert_int_not_equal(call_decoder((sample_decoder)d, garbage, sizeof garbage, NULL, &out,
                                          NULL, 0),
                             WIRE_OK);
        wire_free(out);
    }
}

/* wire_pack_delivery writes by hand what protobuf-c would pack. */
static void pack_delivery_matches_protobuf_c(void **state)
{
    (void)state;
    static const char *const deliveries[] = {"broker-delivery-envelope",
                                             "broker-delivery-notice"};
    static const uint32_t attempts[] = {0, 1, 300, 70000};
    static const uint32_t urgencies[] = {0, 4};
    for (size_t i = 0; i < 2; i++) {
        for (size_t a = 0; a < sizeof attempts / sizeof attempts[0]; a++) {
            for (size_t u = 0; u < sizeof urgencies / sizeof urgencies[0]; u++) {
                Referral__V1__BrokerFrame *f = sample_message(deliveries[i]);
                Referral__V1__Delivery *d = f->delivery;
                d->attempt = attempts[a];
                d->urgency = (Referral__V1__Urgency)urgencies[u];
                bool is_notice = d->payload_case == REFERRAL__V1__DELIVERY__PAYLOAD_NOTICE;
                size_t payload_len, want_len, got_len;
                uint8_t *payload = is_notice ? wire_pack(d->notice, &payload_len)
                                             : wire_pack(d->envelope, &payload_len);
                uint8_t *want = wire_pack(f, &want_len);
                uint8_t *got = wire_pack_delivery(d->message_id.data, attempts[a], urgencies[u],
                                                  is_notice ? WIRE_PAYLOAD_NOTICE
                                                            : WIRE_PAYLOAD_ENVELOPE,
                                                  payload, payload_len, &got_len);
                assert_non_null(payload);
                assert_non_null(want);
                assert_non_null(got);
                assert_int_equal(got_len, want_len);
                assert_memory_equal(got, want, want_len);
                free(got);
                free(want);
                free(payload);
                wire_free(f);
            }
        }
    }
}

/* wire_pack_submit writes by hand what protobuf-c would pack. */
static void pack_submit_matches_protobuf_c(void **state)
{
    (void)state;
    static const uint64_t request_ids[] = {0, 1, 127, 128, 300, UINT64_MAX};
    for (size_t i = 0; i < sizeof request_ids / sizeof request_ids[0]; i++) {
        Referral__V1__ClientFrame *f = sample_message("client-submit");
        f->submit->request_id = request_ids[i];
        size_t env_len, want_len, got_len;
        uint8_t *env = wire_pack(f->submit->envelope, &env_len);
        uint8_t *want = wire_pack(f, &want_len);
        assert_non_null(env);
        assert_non_null(want);
        uint8_t *got = wire_pack_submit(request_ids[i], env, env_len, &got_len);
        assert_non_null(got);
        assert_int_equal(got_len, want_len);
        assert_memory_equal(got, want, want_len);
        free(got);
        free(want);
        free(env);
        wire_free(f);
    }
}

int main(int argc, char **argv)
{
    schema_path = argc > 1 ? argv[1] : NULL;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(schema_table_lists_every_message),
        cmocka_unit_test(schema_messages_round_trip_byte_for_byte),
        cmocka_unit_test(every_sample_decodes),
        cmocka_unit_test(samples_cover_every_body_of_every_frame),
        cmocka_unit_test(every_strict_prefix_is_refused),
        cmocka_unit_test(random_bytes_are_refused),
        cmocka_unit_test(mutated_samples_keep_the_contract),
        cmocka_unit_test(frames_over_the_size_cap_are_too_large),
        cmocka_unit_test(envelope_parts_over_their_caps_are_too_large),
        cmocka_unit_test(many_empty_submessages_exceed_a_small_budget),
        cmocka_unit_test(agency_id_with_embedded_nul_is_noncanonical),
        cmocka_unit_test(header_id_with_embedded_nul_is_noncanonical),
        cmocka_unit_test(nul_cut_hidden_by_a_negative_enum_is_noncanonical),
        cmocka_unit_test(hello_refuses_malformed_agency_ids),
        cmocka_unit_test(ids_are_checked_wherever_they_appear),
        cmocka_unit_test(frames_of_another_version_are_refused),
        cmocka_unit_test(frames_without_a_body_are_refused),
        cmocka_unit_test(header_of_another_version_is_refused),
        cmocka_unit_test(header_expiry_must_follow_creation),
        cmocka_unit_test(header_hop_limit_is_1_to_16),
        cmocka_unit_test(header_ids_must_be_16_bytes),
        cmocka_unit_test(header_padded_size_must_match_the_body),
        cmocka_unit_test(header_suite_must_match_the_envelope),
        cmocka_unit_test(header_kind_urgency_and_agencies_are_required),
        cmocka_unit_test(decoders_clear_out_on_error),
        cmocka_unit_test(utf8_validity_follows_rfc_3629),
        cmocka_unit_test(utf8_cut_keeps_whole_characters),
        cmocka_unit_test(invalid_utf8_anywhere_is_an_invalid_field),
        cmocka_unit_test(notice_for_a_512_byte_reject_reason_decodes),
        cmocka_unit_test(decoders_accept_no_why_buffer),
        cmocka_unit_test(pack_delivery_matches_protobuf_c),
        cmocka_unit_test(pack_submit_matches_protobuf_c),
    };
    return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
