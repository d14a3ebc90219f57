/* Fuzz target: wire_decode_envelope (a stored envelope read back), then
 * wire_decode_header on every envelope that decodes. */
#include "fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Referral__V1__Envelope *env = NULL;
    char why[FUZZ_WHY_BYTES] = "";
    wire_err e = wire_decode_envelope(data, size, NULL, &env, why, sizeof why);
    fuzz_check_contract("wire_decode_envelope", e, env, why);
    if (env != NULL) {
        Referral__V1__RoutingHeader *h = NULL;
        why[0] = '\0';
        e = wire_decode_header(env, NULL, &h, why, sizeof why);
        fuzz_check_contract("wire_decode_header", e, h, why);
        wire_free(h);
    }
    wire_free(env);
    return 0;
}
