/* Fuzz target: store_msg_decode (broker/store.c), a message record read
 * back from the broker's store. */
#include "fuzz_target.h"

#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    store_msg m;
    char why[FUZZ_WHY_BYTES] = "";
    bool ok = store_msg_decode(data, size, &m, why, sizeof why);
    fuzz_check_why("store_msg_decode", ok, why);
    if (ok) {
        /* What decodes encodes back to the same bytes. */
        uint8_t again[STORE_MSG_RECORD_MAX];
        if (store_msg_encode(&m, again) != size || memcmp(again, data, size) != 0) {
            fprintf(stderr, "store_msg_decode: a record that does not encode back\n");
            abort();
        }
    }
    return 0;
}
