/*
 * sign: Ed25519 with domain separation (sign.h). It must never sign or
 * verify bytes without their domain prefix.
 */
#include "sign.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

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
 * Key objects, made once per key: importing a raw Ed25519 key costs about
 * as much as the signature itself (docs/performance.md). A small cache per
 * kind, shared by every thread under a mutex; a hit takes a reference, so
 * the key is used outside the lock and freed by whoever drops the last
 * reference. Replacement is round robin. The cached objects live until the
 * process ends (reachable: leak checkers do not report them).
 */
#define CACHE_SLOTS 32

typedef struct {
    pthread_mutex_t lock;
    uint8_t keys[CACHE_SLOTS][SIGN_PUBLIC_BYTES];
    EVP_PKEY *objects[CACHE_SLOTS];
    size_t next;
} key_cache;

static key_cache private_keys = {.lock = PTHREAD_MUTEX_INITIALIZER};
static key_cache public_keys = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* A reference to the key object of raw (32 bytes), from the cache or new;
 * NULL when OpenSSL fails. EVP_PKEY_free() it after use. */
static EVP_PKEY *key_object(key_cache *c, const uint8_t raw[32], bool is_private)
{
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
        if (c->objects[i] != NULL && CRYPTO_memcmp(c->keys[i], raw, 32) == 0 &&
            EVP_PKEY_up_ref(c->objects[i]) == 1) {
            EVP_PKEY *k = c->objects[i];
            pthread_mutex_unlock(&c->lock);
            return k;
        }
    }
    pthread_mutex_unlock(&c->lock);
    EVP_PKEY *k = is_private
                      ? EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw, 32)
                      : EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, raw, 32);
    if (k == NULL || EVP_PKEY_up_ref(k) != 1)
        return k;   /* not cached: the caller's reference alone */
    pthread_mutex_lock(&c->lock);
    size_t slot = c->next;
    c->next = (c->next + 1) % CACHE_SLOTS;
    EVP_PKEY *old = c->objects[slot];
    c->objects[slot] = k;
    memcpy(c->keys[slot], raw, 32);
    pthread_mutex_unlock(&c->lock);
    EVP_PKEY_free(old);   /* the cache's reference; users may still hold theirs */
    return k;
}

static bool raw_sign(const uint8_t sec[SIGN_SECRET_BYTES], const uint8_t *msg, size_t len,
                     uint8_t sig[SIGN_BYTES])
{
    EVP_PKEY *k = key_object(&private_keys, sec, true);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t n = SIGN_BYTES;
    bool ok = k != NULL && ctx != NULL && EVP_DigestSignInit(ctx, NULL, NULL, NULL, k) == 1 &&
              EVP_DigestSign(ctx, sig, &n, msg, len) == 1 && n == SIGN_BYTES;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(k);
    return ok;
}

static bool raw_verify(const uint8_t pub[SIGN_PUBLIC_BYTES], const uint8_t *msg, size_t len,
                       const uint8_t sig[SIGN_BYTES])
{
    EVP_PKEY *k = key_object(&public_keys, pub, false);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = k != NULL && ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k) == 1 &&
              EVP_DigestVerify(ctx, sig, SIGN_BYTES, msg, len) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(k);
    return ok;
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
