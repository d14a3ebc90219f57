/*
 * seal: sealing and opening of bodies (seal.h). It must never leave a
 * content key or shared secret in memory it frees, and never return
 * plaintext that failed authentication.
 */
#include "seal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include "digest.h"
#include "pemkey.h"
#include "referral.pb-c.h"

#define NONCE_BYTES 12
#define TAG_BYTES 16
#define KEY_BYTES 32
#define KEY_ID_BYTES 16
#define MAX_SEALED (1u << 20)

static const size_t buckets[] = {1u << 10, 4u << 10, 16u << 10, 64u << 10, 256u << 10,
                                 768u << 10};

bool seal_keypair(uint8_t pub[SEAL_PUBLIC_BYTES], uint8_t sec[SEAL_SECRET_BYTES])
{
    return pemkey_generate(EVP_PKEY_X25519, pub, sec);
}

bool seal_secret_save_pem(const char *path, const uint8_t sec[SEAL_SECRET_BYTES], char *why,
                          size_t why_len)
{
    return pemkey_save(path, EVP_PKEY_X25519, sec, why, why_len);
}

bool seal_secret_load_pem(const char *path, uint8_t sec[SEAL_SECRET_BYTES],
                          uint8_t pub[SEAL_PUBLIC_BYTES], char *why, size_t why_len)
{
    return pemkey_load(path, EVP_PKEY_X25519, sec, pub, why, why_len);
}

static size_t varint_len(size_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Padding length p >= 1 such that len + 1 + varint_len(p) + p == bucket. */
size_t seal_padded_size(size_t len)
{
    for (size_t i = 0; i < sizeof buckets / sizeof buckets[0]; i++) {
        if (buckets[i] < len + 4)
            continue;
        return buckets[i];
    }
    return 0;
}

static size_t padding_for(size_t len, size_t bucket)
{
    for (size_t k = 1; k <= 3; k++) {
        size_t p = bucket - len - 1 - k;
        if (p >= 1 && varint_len(p) == k)
            return p;
    }
    return 0;
}

static void fill_sealed_shape(Referral__V1__SealedBody *sb, Referral__V1__WrappedKey *keys,
                              Referral__V1__WrappedKey **ptrs, const seal_recipient *r, size_t n,
                              uint8_t *zeros, size_t ct_len)
{
    referral__v1__sealed_body__init(sb);
    sb->nonce.data = zeros;
    sb->nonce.len = NONCE_BYTES;
    sb->ciphertext.data = zeros;
    sb->ciphertext.len = ct_len;
    for (size_t i = 0; i < n; i++) {
        referral__v1__wrapped_key__init(&keys[i]);
        keys[i].agency_id = (char *)(uintptr_t)r[i].agency_id;
        keys[i].recipient_key_id.data = zeros;
        keys[i].recipient_key_id.len = KEY_ID_BYTES;
        keys[i].ephemeral_public.data = zeros;
        keys[i].ephemeral_public.len = SEAL_PUBLIC_BYTES;
        keys[i].nonce.data = zeros;
        keys[i].nonce.len = NONCE_BYTES;
        keys[i].wrapped_key.data = zeros;
        keys[i].wrapped_key.len = KEY_BYTES + TAG_BYTES;
        ptrs[i] = &keys[i];
    }
    sb->keys = ptrs;
    sb->n_keys = n;
}

size_t seal_sealed_size(size_t len, const seal_recipient *r, size_t n)
{
    size_t padded = seal_padded_size(len);
    if (padded == 0 || n == 0 || n > SEAL_MAX_RECIPIENTS)
        return 0;
    Referral__V1__SealedBody sb;
    Referral__V1__WrappedKey keys[SEAL_MAX_RECIPIENTS];
    Referral__V1__WrappedKey *ptrs[SEAL_MAX_RECIPIENTS];
    static uint8_t one[1] = {1};   /* the size of bytes fields ignores their content */
    fill_sealed_shape(&sb, keys, ptrs, r, n, one, padded + TAG_BYTES);
    return referral__v1__sealed_body__get_packed_size(&sb);
}

static bool aead(bool is_encrypt, const uint8_t key[KEY_BYTES], const uint8_t nonce[NONCE_BYTES],
                 const uint8_t aad[DIGEST_BYTES], const uint8_t *in, size_t len, uint8_t *out,
                 uint8_t tag[TAG_BYTES])
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;
    bool ok = c != NULL &&
              EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce, is_encrypt ? 1 : 0) == 1 &&
              EVP_CipherUpdate(c, NULL, &n, aad, DIGEST_BYTES) == 1 &&
              EVP_CipherUpdate(c, out, &n, in, (int)len) == 1;
    if (ok && !is_encrypt)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, tag) == 1;
    ok = ok && EVP_CipherFinal_ex(c, out + n, &m) == 1;
    if (ok && is_encrypt)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, tag) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok;
}

/* wrap key = HKDF-SHA256(shared, salt = eph_pub || reader_pub, "referral.v1 wrap") */
static bool wrap_key(const uint8_t eph_sec_or_reader_sec[32], const uint8_t peer_pub[32],
                     const uint8_t eph_pub[32], const uint8_t reader_pub[32],
                     uint8_t out[KEY_BYTES])
{
    EVP_PKEY *mine = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, eph_sec_or_reader_sec, 32);
    EVP_PKEY *peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer_pub, 32);
    EVP_PKEY_CTX *dc = mine != NULL ? EVP_PKEY_CTX_new(mine, NULL) : NULL;
    uint8_t shared[32], zero[32] = {0}, salt[64];
    size_t slen = sizeof shared;
    bool ok = dc != NULL && peer != NULL && EVP_PKEY_derive_init(dc) == 1 &&
              EVP_PKEY_derive_set_peer(dc, peer) == 1 &&
              EVP_PKEY_derive(dc, shared, &slen) == 1 && slen == 32 &&
              CRYPTO_memcmp(shared, zero, 32) != 0;   /* refuse low-order points */
    EVP_PKEY_CTX_free(dc);
    EVP_PKEY_free(mine);
    EVP_PKEY_free(peer);
    EVP_KDF *kdf = ok ? EVP_KDF_fetch(NULL, "HKDF", NULL) : NULL;
    EVP_KDF_CTX *kc = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
    if (kc != NULL) {
        memcpy(salt, eph_pub, 32);
        memcpy(salt + 32, reader_pub, 32);
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, shared, 32),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt, 64),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (char *)"referral.v1 wrap", 16),
            OSSL_PARAM_construct_end(),
        };
        ok = EVP_KDF_derive(kc, out, KEY_BYTES, params) == 1;
    } else {
        ok = false;
    }
    EVP_KDF_CTX_free(kc);
    EVP_KDF_free(kdf);
    OPENSSL_cleanse(shared, sizeof shared);
    return ok;
}

static void key_id_of(const uint8_t pub[32], uint8_t id[KEY_ID_BYTES])
{
    uint8_t d[DIGEST_BYTES];
    digest_sha256(pub, 32, d);
    memcpy(id, d, KEY_ID_BYTES);
}

seal_err seal_body(const uint8_t *plaintext, size_t len, const uint8_t header_digest[32],
                   const seal_recipient *r, size_t n, uint8_t **out, size_t *out_len, char *why,
                   size_t why_len)
{
    *out = NULL;
    size_t padded = seal_padded_size(len);
    if (padded == 0) {
        snprintf(why, why_len, "body of %zu bytes is larger than the largest bucket (%u bytes)",
                 len, SEAL_MAX_PLAINTEXT);
        return SEAL_TOO_LARGE;
    }
    if (n == 0 || n > SEAL_MAX_RECIPIENTS) {
        snprintf(why, why_len, "a body needs 1 to %d readers, not %zu", SEAL_MAX_RECIPIENTS, n);
        return SEAL_FAILED;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(r[i].agency_id, r[j].agency_id) == 0) {
                snprintf(why, why_len, "reader %s is listed twice", r[i].agency_id);
                return SEAL_FAILED;
            }
    size_t pad = padding_for(len, padded);
    uint8_t *plain = malloc(padded), *ct = malloc(padded + TAG_BYTES);
    uint8_t content_key[KEY_BYTES], nonce[NONCE_BYTES];
    uint8_t eph_pub[SEAL_MAX_RECIPIENTS][32], eph_sec[32], wnonce[SEAL_MAX_RECIPIENTS][NONCE_BYTES];
    uint8_t wrapped[SEAL_MAX_RECIPIENTS][KEY_BYTES + TAG_BYTES], kids[SEAL_MAX_RECIPIENTS][16];
    seal_err e = SEAL_OK;
    if (plain == NULL || ct == NULL || pad == 0 || RAND_bytes(content_key, KEY_BYTES) != 1 ||
        RAND_bytes(nonce, NONCE_BYTES) != 1) {
        e = SEAL_FAILED;
        goto done;
    }
    /* plaintext || field 15 (tag 0x7a) || varint(pad) || pad zero bytes */
    memcpy(plain, plaintext, len);
    size_t at = len;
    plain[at++] = 0x7a;
    for (size_t v = pad; ; v >>= 7) {
        plain[at++] = (uint8_t)(v >= 0x80 ? (v & 0x7f) | 0x80 : v);
        if (v < 0x80)
            break;
    }
    memset(plain + at, 0, pad);
    if (!aead(true, content_key, nonce, header_digest, plain, padded, ct, ct + padded)) {
        e = SEAL_FAILED;
        goto done;
    }
    for (size_t i = 0; i < n && e == SEAL_OK; i++) {
        uint8_t wk[KEY_BYTES];
        if (!seal_keypair(eph_pub[i], eph_sec) || RAND_bytes(wnonce[i], NONCE_BYTES) != 1 ||
            !wrap_key(eph_sec, r[i].seal_public, eph_pub[i], r[i].seal_public, wk) ||
            !aead(true, wk, wnonce[i], header_digest, content_key, KEY_BYTES, wrapped[i],
                  wrapped[i] + KEY_BYTES))
            e = SEAL_FAILED;
        key_id_of(r[i].seal_public, kids[i]);
        OPENSSL_cleanse(wk, sizeof wk);
    }
    if (e == SEAL_OK) {
        Referral__V1__SealedBody sb;
        Referral__V1__WrappedKey keys[SEAL_MAX_RECIPIENTS];
        Referral__V1__WrappedKey *ptrs[SEAL_MAX_RECIPIENTS];
        fill_sealed_shape(&sb, keys, ptrs, r, n, nonce, padded + TAG_BYTES);
        sb.nonce.data = nonce;
        sb.ciphertext.data = ct;
        for (size_t i = 0; i < n; i++) {
            keys[i].recipient_key_id.data = kids[i];
            keys[i].ephemeral_public.data = eph_pub[i];
            keys[i].nonce.data = wnonce[i];
            keys[i].wrapped_key.data = wrapped[i];
        }
        *out_len = referral__v1__sealed_body__get_packed_size(&sb);
        *out = malloc(*out_len);
        if (*out == NULL)
            e = SEAL_FAILED;
        else
            referral__v1__sealed_body__pack(&sb, *out);
    }
done:
    if (e == SEAL_FAILED && why != NULL && why[0] == '\0')
        snprintf(why, why_len, "sealing failed (OpenSSL or out of memory)");
    OPENSSL_cleanse(content_key, sizeof content_key);
    OPENSSL_cleanse(eph_sec, sizeof eph_sec);
    if (plain != NULL)
        OPENSSL_cleanse(plain, padded);
    free(plain);
    free(ct);
    return e;
}

seal_err seal_open(const uint8_t *sealed, size_t len, const uint8_t header_digest[32],
                   const char *agency_id, const uint8_t seal_secret[SEAL_SECRET_BYTES],
                   const uint8_t seal_public[SEAL_PUBLIC_BYTES], uint8_t **plaintext,
                   size_t *plain_len, char *why, size_t why_len)
{
    *plaintext = NULL;
    if (len > MAX_SEALED) {
        snprintf(why, why_len, "sealed body of %zu bytes is too large", len);
        return SEAL_MALFORMED;
    }
    Referral__V1__SealedBody *sb = referral__v1__sealed_body__unpack(NULL, len, sealed);
    if (sb == NULL) {
        snprintf(why, why_len, "sealed body is not a SealedBody");
        return SEAL_MALFORMED;
    }
    seal_err e = SEAL_OK;
    if (sb->nonce.len != NONCE_BYTES || sb->ciphertext.len < TAG_BYTES ||
        sb->n_keys > SEAL_MAX_RECIPIENTS) {
        snprintf(why, why_len, "sealed body has a bad nonce, ciphertext or key count");
        e = SEAL_MALFORMED;
    }
    uint8_t my_kid[KEY_ID_BYTES];
    key_id_of(seal_public, my_kid);
    const Referral__V1__WrappedKey *mine = NULL;
    for (size_t i = 0; e == SEAL_OK && i < sb->n_keys; i++) {
        const Referral__V1__WrappedKey *k = sb->keys[i];
        if (k->agency_id != NULL && strcmp(k->agency_id, agency_id) == 0 &&
            k->recipient_key_id.len == KEY_ID_BYTES &&
            memcmp(k->recipient_key_id.data, my_kid, KEY_ID_BYTES) == 0)
            mine = k;
    }
    if (e == SEAL_OK && mine == NULL) {
        snprintf(why, why_len, "the body is not sealed for %s with this sealing key", agency_id);
        e = SEAL_NOT_FOR_US;
    }
    if (e == SEAL_OK && (mine->ephemeral_public.len != 32 || mine->nonce.len != NONCE_BYTES ||
                         mine->wrapped_key.len != KEY_BYTES + TAG_BYTES)) {
        snprintf(why, why_len, "the wrapped key for %s is malformed", agency_id);
        e = SEAL_MALFORMED;
    }
    uint8_t wk[KEY_BYTES], content_key[KEY_BYTES];
    size_t n = e == SEAL_OK ? sb->ciphertext.len - TAG_BYTES : 0;
    if (e == SEAL_OK) {
        if (!wrap_key(seal_secret, mine->ephemeral_public.data, mine->ephemeral_public.data,
                      seal_public, wk) ||
            !aead(false, wk, mine->nonce.data, header_digest, mine->wrapped_key.data, KEY_BYTES,
                  content_key, mine->wrapped_key.data + KEY_BYTES)) {
            snprintf(why, why_len, "the wrapped key does not open: altered, or this body "
                     "belongs to another envelope");
            e = SEAL_BAD;
        }
    }
    if (e == SEAL_OK) {
        *plaintext = malloc(n ? n : 1);
        if (*plaintext == NULL) {
            e = SEAL_FAILED;
        } else if (!aead(false, content_key, sb->nonce.data, header_digest, sb->ciphertext.data,
                         n, *plaintext, sb->ciphertext.data + n)) {
            OPENSSL_cleanse(*plaintext, n);
            free(*plaintext);
            *plaintext = NULL;
            snprintf(why, why_len, "the body does not authenticate: altered, or moved from "
                     "another envelope");
            e = SEAL_BAD;
        } else {
            *plain_len = n;
        }
    }
    OPENSSL_cleanse(wk, sizeof wk);
    OPENSSL_cleanse(content_key, sizeof content_key);
    referral__v1__sealed_body__free_unpacked(sb, NULL);
    return e;
}
