/*
 * test_interop: the C crypto agrees byte for byte with docs/protocol.md as
 * an independent implementation (Python's cryptography package, in
 * test/integration/harness.py) reads it: a body sealed in Python opens in
 * C, an envelope signed in Python verifies in C, and the reverse
 * directions hold for C's own seal and sign.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "digest.h"
#include "interop_vectors.h"
#include "seal.h"
#include "sign.h"
#include "wire.h"

static void python_sealed_body_opens_in_c(void **state)
{
    (void)state;
    uint8_t digest[32];
    digest_sha256(vec_header, sizeof vec_header, digest);
    uint8_t *plain = NULL;
    size_t len = 0;
    char why[256] = "";
    seal_err e = seal_open(vec_sealed, sizeof vec_sealed, digest, "qd.police", vec_seal_secret,
                           vec_seal_public, &plain, &len, why, sizeof why);
    assert_int_equal(e, SEAL_OK);
    Referral__V1__BodyPlaintext *p = NULL;
    assert_int_equal(wire_decode_plaintext(plain, len, NULL, &p, why, sizeof why), WIRE_OK);
    assert_non_null(p->case_file);
    assert_string_equal(p->case_file->narrative, "interop: sealed in Python, opened in C");
    wire_free(p);
    free(plain);
    /* The same size rule on both sides. */
    seal_recipient r = {.agency_id = "qd.police", .seal_public = vec_seal_public};
    assert_int_equal(seal_sealed_size(sizeof vec_plaintext_unpadded, &r, 1), sizeof vec_sealed);
}

static void moved_or_altered_body_does_not_open(void **state)
{
    (void)state;
    uint8_t digest[32], *plain = NULL;
    size_t len;
    char why[256] = "";
    memset(digest, 0, sizeof digest);   /* another header */
    assert_int_equal(seal_open(vec_sealed, sizeof vec_sealed, digest, "qd.police",
                               vec_seal_secret, vec_seal_public, &plain, &len, why, sizeof why),
                     SEAL_BAD);
    assert_null(plain);
    digest_sha256(vec_header, sizeof vec_header, digest);
    uint8_t copy[sizeof vec_sealed];
    memcpy(copy, vec_sealed, sizeof copy);
    copy[40] ^= 1;
    seal_err e = seal_open(copy, sizeof copy, digest, "qd.police", vec_seal_secret,
                           vec_seal_public, &plain, &len, why, sizeof why);
    assert_true(e == SEAL_BAD || e == SEAL_MALFORMED || e == SEAL_NOT_FOR_US);
    assert_null(plain);
    assert_int_equal(seal_open(vec_sealed, sizeof vec_sealed, digest, "qd.school",
                               vec_seal_secret, vec_seal_public, &plain, &len, why, sizeof why),
                     SEAL_NOT_FOR_US);
}

static void python_signature_verifies_in_c(void **state)
{
    (void)state;
    assert_true(sign_verify_envelope(vec_sign_public, vec_header, sizeof vec_header, vec_sealed,
                                     sizeof vec_sealed, vec_signature));
    uint8_t body[sizeof vec_sealed];
    memcpy(body, vec_sealed, sizeof body);
    body[7] ^= 0x80;
    assert_false(sign_verify_envelope(vec_sign_public, vec_header, sizeof vec_header, body,
                                      sizeof body, vec_signature));
    assert_false(sign_verify_envelope(vec_sign_public, vec_header, sizeof vec_header - 1,
                                      vec_sealed, sizeof vec_sealed, vec_signature));
}

static void c_seal_and_sign_round_trip(void **state)
{
    (void)state;
    uint8_t pub[32], sec[32], spub[32], ssec[32], digest[32], sig[64];
    assert_true(seal_keypair(pub, sec));
    assert_true(sign_keypair(spub, ssec));
    digest_sha256(vec_header, sizeof vec_header, digest);
    seal_recipient r[2] = {{"qd.police", pub}, {"qd.school", vec_seal_public}};
    uint8_t *sealed = NULL, *plain = NULL;
    size_t slen, plen;
    char why[256] = "";
    assert_int_equal(seal_body(vec_plaintext_unpadded, sizeof vec_plaintext_unpadded, digest, r,
                               2, &sealed, &slen, why, sizeof why), SEAL_OK);
    assert_int_equal(slen, seal_sealed_size(sizeof vec_plaintext_unpadded, r, 2));
    assert_int_equal(seal_open(sealed, slen, digest, "qd.police", sec, pub, &plain, &plen, why,
                               sizeof why), SEAL_OK);
    assert_int_equal(plen, 1024);   /* the first bucket */
    assert_memory_equal(plain, vec_plaintext_unpadded, sizeof vec_plaintext_unpadded);
    free(plain);
    assert_int_equal(seal_open(sealed, slen, digest, "qd.school", vec_seal_secret,
                               vec_seal_public, &plain, &plen, why, sizeof why), SEAL_OK);
    free(plain);
    assert_true(sign_envelope(ssec, vec_header, sizeof vec_header, sealed, slen, sig));
    assert_true(sign_verify_envelope(spub, vec_header, sizeof vec_header, sealed, slen, sig));
    assert_false(sign_verify(spub, "referral.v1 notice", vec_header, sizeof vec_header, sig));
    free(sealed);
    /* Too large, duplicate readers. */
    assert_int_equal(seal_padded_size(800u << 10), 0);
    seal_recipient dup[2] = {{"qd.police", pub}, {"qd.police", pub}};
    assert_int_equal(seal_body(vec_plaintext_unpadded, 10, digest, dup, 2, &sealed, &slen, why,
                               sizeof why), SEAL_FAILED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(python_sealed_body_opens_in_c),
        cmocka_unit_test(moved_or_altered_body_does_not_open),
        cmocka_unit_test(python_signature_verifies_in_c),
        cmocka_unit_test(c_seal_and_sign_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
