/* Fuzz target: the records of libreferral's state directory
 * (client-lib/state.c, through its test-only entry point
 * state_record_check). The first byte picks the record kind
 * (state_record_kind, modulo their number), the rest is the record. */
#include "fuzz_target.h"

#include "state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    state_record_kind kind = (state_record_kind)(data[0] % STATE_RECORD_KINDS);
    (void)state_record_check(kind, data + 1, size - 1);
    return 0;
}
