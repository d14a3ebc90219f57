/* Fuzz target: wire_decode_admin_reply (what referralctl and
 * referral-trace read from the socket they were pointed at). */
#include "fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Referral__V1__AdminReply *r = NULL;
    char why[FUZZ_WHY_BYTES] = "";
    wire_err e = wire_decode_admin_reply(data, size, &r, why, sizeof why);
    fuzz_check_contract("wire_decode_admin_reply", e, r, why);
    wire_free(r);
    return 0;
}
