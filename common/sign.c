/*
 * sign: Ed25519 with domain separation (sign.h). It must never sign or
 * verify bytes without their domain prefix.
 */
#include "sign.h"

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

static bool raw_sign(const uint8_t sec[SIGN_SECRET_BYTES], const uint8_t *msg, size_t len,
                     uint8_t sig[SIGN_BYTES])
{
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, sec, SIGN_SECRET_BYTES);
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
    EVP_PKEY *k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, SIGN_PUBLIC_BYTES);
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
