/* Fuzz target: the escalation record decoder (broker/escalate.c, through
 * its test-only entry point escalate_record_check). */
#include "fuzz_target.h"

#include "escalate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[FUZZ_WHY_BYTES] = "";
    bool ok = escalate_record_check(data, size, why, sizeof why);
    fuzz_check_why("escalate_record_check", ok, why);
    return 0;
}
