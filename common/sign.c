/*
 * sign: Ed25519 with domain separation (sign.h). It must never sign or
 * verify bytes without their domain prefix.
 */
#include "sign.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "digest.h"
#include "pemkey.h"

static const char envelope_domain[] = "referral.v1 envelope";

bool sign_keypair(uint8_t pub[SIGN_PUBLIC_BYTES], uint8_t sec[SIGN_SECRET_BYTES])
{
    return pemkey_generate(EVP_PKEY_ED25519, pub, sec);
}

void sign_key_id(const uint8_t pub[SIGN_PUBLIC_BYTES], uint8_t id[SIGN_KEY_ID_BYTES])
{
    uint8_t d[DIGEST_BYTES];
    digest_sha256(pub, SIGN_PUBLIC_BYTES, d);
    memcpy(id, d, SIGN_KEY_ID_BYTES);
}

/* domain || 0x00 || parts..., in one new buffer (caller frees). */
static uint8_t *join(const char *domain, const uint8_t *a, size_t alen, const uint8_t *b,
                     size_t blen, size_t *len)
{
    size_t dlen = strlen(domain) + 1;
    *len = dlen + alen + blen;
    uint8_t *buf = malloc(*len ? *len : 1);
    if (buf == NULL)
        return NULL;
    memcpy(buf, domain, dlen);   /* includes the NUL separator */
    if (alen > 0)
        memcpy(buf + dlen, a, alen);
    if (blen > 0)
        memcpy(buf + dlen + alen, b, blen);
    return buf;
}

/*
 * Ed25519 itself is libsodium's: it signs and verifies in a half to a third
 * of OpenSSL 3.0's time on the project's machines (docs/performance.md),
 * with byte-identical signatures (Ed25519 is deterministic; test_crypto.c
 * checks both ways against OpenSSL). Its verification also refuses public
 * keys and signature points of small order, which OpenSSL accepts; no key
 * made by keygen is one. OpenSSL keeps key generation and key files.
 *
 * Signing needs the expanded secret key (seed || public key), which costs
 * about as much as a signature to derive: a small cache of expanded keys,
 * shared by every thread under a mutex, keyed by the seed (its first 32
 * bytes), round robin. Entries live until the process ends; an evicted one
 * is wiped.
 */
#define CACHE_SLOTS 32

static struct {
    pthread_mutex_t lock;
    uint8_t keys[CACHE_SLOTS][crypto_sign_ed25519_SECRETKEYBYTES];
    bool is_used[CACHE_SLOTS];
    size_t next;
} expanded = {.lock = PTHREAD_MUTEX_INITIALIZER};

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;
static bool is_sodium_ready;

static void sodium_start(void)
{
    is_sodium_ready = sodium_init() >= 0;
}

bool sodium_ready(void)
{
    pthread_once(&sodium_once, sodium_start);
    return is_sodium_ready;
}

/* The expanded secret key of seed sec into sk; false if libsodium cannot
 * start. */
static bool expanded_key(const uint8_t sec[SIGN_SECRET_BYTES],
                         uint8_t sk[crypto_sign_ed25519_SECRETKEYBYTES])
{
    if (!sodium_ready())
        return false;
    pthread_mutex_lock(&expanded.lock);
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
        if (expanded.is_used[i] && sodium_memcmp(expanded.keys[i], sec, SIGN_SECRET_BYTES) == 0) {
            memcpy(sk, expanded.keys[i], crypto_sign_ed25519_SECRETKEYBYTES);
            pthread_mutex_unlock(&expanded.lock);
            return true;
        }
    }
    pthread_mutex_unlock(&expanded.lock);
    uint8_t pk[crypto_sign_ed25519_PUBLICKEYBYTES];
    if (crypto_sign_ed25519_seed_keypair(pk, sk, sec) != 0)
        return false;
    pthread_mutex_lock(&expanded.lock);
    size_t slot = expanded.next;
    expanded.next = (expanded.next + 1) % CACHE_SLOTS;
    memcpy(expanded.keys[slot], sk, crypto_sign_ed25519_SECRETKEYBYTES);
    expanded.is_used[slot] = true;
    pthread_mutex_unlock(&expanded.lock);
    return true;
}

static bool raw_sign(const uint8_t sec[SIGN_SECRET_BYTES], const uint8_t *msg, size_t len,
                     uint8_t sig[SIGN_BYTES])
{
    uint8_t sk[crypto_sign_ed25519_SECRETKEYBYTES];
    bool ok = expanded_key(sec, sk) &&
              crypto_sign_ed25519_detached(sig, NULL, msg, len, sk) == 0;
    sodium_memzero(sk, sizeof sk);
    return ok;
}

static bool raw_verify(const uint8_t pub[SIGN_PUBLIC_BYTES], const uint8_t *msg, size_t len,
                       const uint8_t sig[SIGN_BYTES])
{
    return sodium_ready() && crypto_sign_ed25519_verify_detached(sig, msg, len, pub) == 0;
}

bool sign_detached(const uint8_t sec[SIGN_SECRET_BYTES], const char *domain, const uint8_t *msg,
                   size_t len, uint8_t sig[SIGN_BYTES])
{
    size_t n;
    uint8_t *buf = join(domain, msg, len, NULL, 0, &n);
    bool ok = buf != NULL && raw_sign(sec, buf, n, sig);
    free(buf);
    return ok;
}

bool sign_verify(const uint8_t pub[SIGN_PUBLIC_BYTES], const char *domain, const uint8_t *msg,
                 size_t len, const uint8_t sig[SIGN_BYTES])
{
    size_t n;
    uint8_t *buf = join(domain, msg, len, NULL, 0, &n);
    bool ok = buf != NULL && raw_verify(pub, buf, n, sig);
    free(buf);
    return ok;
}

/* The envelope's signing input (docs/protocol.md):
 * domain 0x00 | uint32 BE len(header) | header | SHA-256(body). */
static uint8_t *envelope_input(const uint8_t *header, size_t hlen, const uint8_t *body,
                               size_t blen, size_t *len)
{
    if (hlen > UINT32_MAX)
        return NULL;
    size_t dlen = sizeof envelope_domain;   /* with its NUL: the separator */
    *len = dlen + 4 + hlen + DIGEST_BYTES;
    uint8_t *buf = malloc(*len), *p = buf;
    if (buf == NULL)
        return NULL;
    memcpy(p, envelope_domain, dlen);
    p += dlen;
    *p++ = (uint8_t)(hlen >> 24);
    *p++ = (uint8_t)(hlen >> 16);
    *p++ = (uint8_t)(hlen >> 8);
    *p++ = (uint8_t)hlen;
    if (hlen > 0)
        memcpy(p, header, hlen);
    if (!digest_sha256(body, blen, p + hlen)) {
        free(buf);
        return NULL;
    }
    return buf;
}

bool sign_envelope(const uint8_t sec[SIGN_SECRET_BYTES], const uint8_t *header, size_t hlen,
                   const uint8_t *body, size_t blen, uint8_t sig[SIGN_BYTES])
{
    size_t n;
    uint8_t *buf = envelope_input(header, hlen, body, blen, &n);
    bool ok = buf != NULL && raw_sign(sec, buf, n, sig);
    free(buf);
    return ok;
}

bool sign_verify_envelope(const uint8_t pub[SIGN_PUBLIC_BYTES], const uint8_t *header,
                          size_t hlen, const uint8_t *body, size_t blen,
                          const uint8_t sig[SIGN_BYTES])
{
    size_t n;
    uint8_t *buf = envelope_input(header, hlen, body, blen, &n);
    bool ok = buf != NULL && raw_verify(pub, buf, n, sig);
    free(buf);
    return ok;
}

bool sign_secret_save_pem(const char *path, const uint8_t sec[SIGN_SECRET_BYTES], char *why,
                          size_t why_len)
{
    return pemkey_save(path, EVP_PKEY_ED25519, sec, why, why_len);
}

bool sign_secret_load_pem(const char *path, uint8_t sec[SIGN_SECRET_BYTES],
                          uint8_t pub[SIGN_PUBLIC_BYTES], char *why, size_t why_len)
{
    return pemkey_load(path, EVP_PKEY_ED25519, sec, pub, why, why_len);
}
