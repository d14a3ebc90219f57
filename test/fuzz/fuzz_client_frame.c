/* Fuzz target: wire_decode_client_frame, then the envelope of a Submit as
 * ingress checks it (what a broker does with every client's frame). */
#include "fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Referral__V1__ClientFrame *f = NULL;
    char why[FUZZ_WHY_BYTES] = "";
    wire_err e = wire_decode_client_frame(data, size, NULL, &f, why, sizeof why);
    fuzz_check_contract("wire_decode_client_frame", e, f, why);
    if (f != NULL && f->body_case == REFERRAL__V1__CLIENT_FRAME__BODY_SUBMIT)
        fuzz_envelope_and_header(f->submit->envelope);
    wire_free(f);
    return 0;
}
