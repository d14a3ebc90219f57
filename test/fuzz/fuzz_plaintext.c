/* Fuzz target: wire_decode_plaintext (what a sealed body opens to; a
 * sender can put anything there). */
#include "fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Referral__V1__BodyPlaintext *p = NULL;
    char why[FUZZ_WHY_BYTES] = "";
    wire_err e = wire_decode_plaintext(data, size, NULL, &p, why, sizeof why);
    fuzz_check_contract("wire_decode_plaintext", e, p, why);
    wire_free(p);
    return 0;
}
