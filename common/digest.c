/* digest: SHA-256 (digest.h). */
#include "digest.h"

#include <pthread.h>

#include <openssl/evp.h>

/* SHA-256, fetched from OpenSSL's provider once per process: EVP_sha256()
 * fetches it again at every call, which costs as much as hashing a few
 * hundred bytes. NULL (and every digest false) if OpenSSL cannot. */
static EVP_MD *sha256;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

bool digest_sha256(const void *data, size_t len, uint8_t out[DIGEST_BYTES])
{
    return digest_sha256_parts(&(digest_part){data, len}, 1, out);
}

bool digest_sha256_parts(const digest_part *parts, size_t n, uint8_t out[DIGEST_BYTES])
{
    pthread_once(&sha256_once, sha256_fetch);
    EVP_MD_CTX *ctx = sha256 != NULL ? EVP_MD_CTX_new() : NULL;
    unsigned int got = 0;
    bool ok = ctx != NULL && EVP_DigestInit_ex2(ctx, sha256, NULL) == 1;
    for (size_t i = 0; ok && i < n; i++)
        ok = parts[i].len == 0 || EVP_DigestUpdate(ctx, parts[i].data, parts[i].len) == 1;
    ok = ok && EVP_DigestFinal_ex(ctx, out, &got) == 1 && got == DIGEST_BYTES;
    EVP_MD_CTX_free(ctx);
    return ok;
}
