/* Fuzz target: wire_decode_admin_request (what the broker's operators'
 * socket reads from whoever may connect to it). */
#include "fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Referral__V1__AdminRequest *r = NULL;
    char why[FUZZ_WHY_BYTES] = "";
    wire_err e = wire_decode_admin_request(data, size, &r, why, sizeof why);
    fuzz_check_contract("wire_decode_admin_request", e, r, why);
    wire_free(r);
    return 0;
}
