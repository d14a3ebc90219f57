/*
 * wire_samples: one valid, encoded example of every frame kind that the
 * decoders in common/wire.h accept, for the unit tests (test_wire.c) and
 * the fuzz seed corpora (test/fuzz/make_corpus.c).
 *
 * Each sample is built from protobuf-c structs and packed with wire_pack(),
 * so it is canonical and passes every rule of wire.c: 16-byte ids, valid
 * agency and broker ids, known enum values, a header that matches its
 * envelope. Tests that need a broken frame unpack a sample, change one
 * field and pack it again.
 */
#ifndef REF_TEST_WIRE_SAMPLES_H
#define REF_TEST_WIRE_SAMPLES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire.h"

/* The decoder a sample is meant for (and its fuzz target). */
typedef enum {
    SAMPLE_CLIENT_FRAME,   /* wire_decode_client_frame */
    SAMPLE_BROKER_FRAME,   /* wire_decode_broker_frame */
    SAMPLE_PEER_FRAME,     /* wire_decode_peer_frame */
    SAMPLE_ENVELOPE,       /* wire_decode_envelope, then wire_decode_header */
    SAMPLE_NOTICE,         /* wire_decode_notice */
    SAMPLE_PLAINTEXT,      /* wire_decode_plaintext */
    SAMPLE_ADMIN_REQUEST,  /* wire_decode_admin_request (fixed size cap, no limits) */
    SAMPLE_ADMIN_REPLY,    /* wire_decode_admin_reply (fixed size cap, no limits) */
    SAMPLE_DECODER_COUNT,
} sample_decoder;

typedef struct {
    const char *name;                  /* "client-hello"; a corpus file name */
    sample_decoder decoder;
    /* True if the last field encoded is one the decoder requires, so that
     * every strict prefix of the sample must be refused. False for samples
     * that end in optional fields (a prefix may then be a valid message). */
    bool is_every_prefix_invalid;
    uint8_t *(*pack)(size_t *len);     /* new buffer, caller frees with free() */
} sample;

extern const sample samples[];
extern const size_t samples_count;

/* Length of the sealed body of every sample envelope (= header padded_size). */
#define SAMPLE_BODY_BYTES 64u

/* "client-frame", "broker-frame", ...: the fuzz target and corpus folder. */
const char *sample_decoder_name(sample_decoder d);

/* The protobuf-c descriptor of the message a decoder reads. */
const ProtobufCMessageDescriptor *sample_decoder_descriptor(sample_decoder d);

/* The sample named name, or NULL. */
const sample *sample_find(const char *name);

#endif
