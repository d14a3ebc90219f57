/*
 * fuzz_target: what every fuzz target in this folder shares.
 *
 * Each target is one LLVMFuzzerTestOneInput() that feeds arbitrary bytes to
 * one decoder of common/wire.h, frees what it decoded, and aborts when the
 * decoder breaks its contract (a message exactly on WIRE_OK, a sentence in
 * why on every error), so that libFuzzer reports it as a crash. Built with
 * libFuzzer, the engine supplies main(); otherwise replay_main.c does and
 * replays a corpus folder.
 */
#ifndef REF_TEST_FUZZ_TARGET_H
#define REF_TEST_FUZZ_TARGET_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "wire.h"

#define FUZZ_WHY_BYTES 256

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static inline void fuzz_check_contract(const char *decoder, wire_err e, const void *out,
                                       const char *why)
{
    if ((e == WIRE_OK) != (out != NULL)) {
        fprintf(stderr, "%s: %s with%s a message\n", decoder, wire_strerror(e),
                out != NULL ? "" : "out");
        abort();
    }
    if (e != WIRE_OK && why[0] == '\0') {
        fprintf(stderr, "%s: %s without a sentence in why\n", decoder, wire_strerror(e));
        abort();
    }
}

/* What a receiver does next with an envelope it got in a frame: check its
 * shape, then decode its header (env borrowed; NULL is fine). */
static inline void fuzz_envelope_and_header(const Referral__V1__Envelope *env)
{
    char why[FUZZ_WHY_BYTES] = "";
    if (env == NULL || wire_check_envelope(env, NULL, why, sizeof why) != WIRE_OK)
        return;
    Referral__V1__RoutingHeader *h = NULL;
    wire_err e = wire_decode_header(env, NULL, &h, why, sizeof why);
    fuzz_check_contract("wire_decode_header", e, h, why);
    wire_free(h);
}

#endif
