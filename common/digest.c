/* digest: SHA-256 one-shot (digest.h). */
#include "digest.h"

#include <openssl/evp.h>

bool digest_sha256(const void *data, size_t len, uint8_t out[DIGEST_BYTES])
{
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == DIGEST_BYTES;
}
