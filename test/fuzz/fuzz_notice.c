/* Fuzz target: wire_decode_notice (the bytes inside a SignedNotice). */
#include "fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Referral__V1__Notice *n = NULL;
    char why[FUZZ_WHY_BYTES] = "";
    wire_err e = wire_decode_notice(data, size, NULL, &n, why, sizeof why);
    fuzz_check_contract("wire_decode_notice", e, n, why);
    wire_free(n);
    return 0;
}
