/* Fuzz target: wire_decode_broker_frame (what the client library does with
 * every frame from its broker), then the header of a delivered envelope. */
#include "fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Referral__V1__BrokerFrame *f = NULL;
    char why[FUZZ_WHY_BYTES] = "";
    wire_err e = wire_decode_broker_frame(data, size, NULL, &f, why, sizeof why);
    fuzz_check_contract("wire_decode_broker_frame", e, f, why);
    if (f != NULL && f->body_case == REFERRAL__V1__BROKER_FRAME__BODY_DELIVERY &&
        f->delivery->payload_case == REFERRAL__V1__DELIVERY__PAYLOAD_ENVELOPE)
        fuzz_envelope_and_header(f->delivery->envelope);
    wire_free(f);
    return 0;
}
