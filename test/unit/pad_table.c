/*
 * pad-table: print seal_padded_size() for every plaintext length from 0 to
 * the largest bucket + 16, run-length encoded, one line per run:
 *     FIRST LAST PADDED
 * (PADDED 0: cannot be sealed). test_padding.py compares it with the
 * independent Python implementation (test/integration/harness.py).
 */
#include <stdio.h>

#include "seal.h"

int main(void)
{
    size_t first = 0, current = seal_padded_size(0);
    for (size_t len = 1; len <= SEAL_MAX_BUCKET + 16u; len++) {
        size_t p = seal_padded_size(len);
        if (p == current)
            continue;
        printf("%zu %zu %zu\n", first, len - 1, current);
        first = len;
        current = p;
    }
    printf("%zu %u %zu\n", first, SEAL_MAX_BUCKET + 16u, current);
    return 0;
}
