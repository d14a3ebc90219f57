/* Fuzz target: seal_open on a sealed body from an envelope (what the
 * recipient's client does with bytes a broker handed it). Authentication
 * fails for almost every input; the target checks that parsing and the
 * search for the reader's key never misbehave, and that nothing but
 * SEAL_OK yields a plaintext. */
#include <string.h>

#include "fuzz_target.h"
#include "seal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Any key pair will do: the reader's public key only names its slot. */
    static const uint8_t secret[32] = {9, 8, 7, 6, 5, 4, 3, 2, 1};
    static const uint8_t public_key[32] = {0x42, 0x42, 0x42, 0x42};
    uint8_t digest[32] = {0};
    uint8_t *plain = NULL;
    size_t plain_len = 0;
    char why[FUZZ_WHY_BYTES] = "";
    seal_err e = seal_open(data, size, digest, "qd.police", secret, public_key, &plain,
                           &plain_len, why, sizeof why);
    if ((e == SEAL_OK) != (plain != NULL) || (e != SEAL_OK && why[0] == '\0'))
        abort();
    free(plain);
    return 0;
}
