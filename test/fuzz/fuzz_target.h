/*
 * fuzz_target: what every fuzz target in this folder shares.
 *
 * Each target is one LLVMFuzzerTestOneInput() that feeds arbitrary bytes to
 * one decoder (of common/wire.h, or of a file or stored record read back),
 * frees what it decoded, and aborts when the decoder breaks its contract (a
 * message exactly on WIRE_OK, a sentence in why on every error), so that
 * libFuzzer reports it as a crash. Built with libFuzzer, the engine supplies
 * main(); otherwise replay_main.c does and replays a corpus folder.
 */
#ifndef REF_TEST_FUZZ_TARGET_H
#define REF_TEST_FUZZ_TARGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* A decoder that answers true or false: false must come with a sentence. */
static inline void fuzz_check_why(const char *decoder, bool ok, const char *why)
{
    if (!ok && why[0] == '\0') {
        fprintf(stderr, "%s: failed without a sentence in why\n", decoder);
        abort();
    }
}

/* For decoders that read a file: write data to a new file (mode 0600, made
 * by mkstemp in $TMPDIR or /tmp) and put its name in path (size path_len).
 * The caller unlinks it. Aborts when the file cannot be written, so that a
 * full disk is never mistaken for a pass. */
static inline void fuzz_write_temp(const uint8_t *data, size_t size, char *path, size_t path_len)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(path, path_len, "%s/referral-fuzz-XXXXXX",
             tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    int fd = mkstemp(path);
    size_t done = 0;
    while (fd >= 0 && done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    if (fd < 0 || done != size || close(fd) != 0) {
        fprintf(stderr, "fuzz: cannot write a temporary file %s\n", path);
        abort();
    }
}

#endif
