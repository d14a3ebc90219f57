/* Fuzz target: wire_decode_peer_frame (what a broker does with every frame
 * from a federation peer), then the header of a forwarded envelope. */
#include "fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Referral__V1__PeerFrame *f = NULL;
    char why[FUZZ_WHY_BYTES] = "";
    wire_err e = wire_decode_peer_frame(data, size, NULL, &f, why, sizeof why);
    fuzz_check_contract("wire_decode_peer_frame", e, f, why);
    if (f != NULL && f->body_case == REFERRAL__V1__PEER_FRAME__BODY_FORWARD)
        fuzz_envelope_and_header(f->forward->envelope);
    wire_free(f);
    return 0;
}
