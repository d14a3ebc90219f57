/*
 * seal: sealing and opening of bodies (seal.h). It must never leave a
 * content key or shared secret in memory it frees, and never return
 * plaintext that failed authentication.
 */
#include "seal.h"

#include <assert.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <sodium.h>

#include "digest.h"
#include "ids.h"
#include "pemkey.h"
#include "referral.pb-c.h"
#include "sign.h"

#define NONCE_BYTES 12
#define TAG_BYTES 16
#define KEY_BYTES 32
#define KEY_ID_BYTES 16
#define MAX_SEALED (1u << 20)
#define OPEN_BUDGET (4u << 20)   /* heap the SealedBody decoder may use */

static const size_t buckets[] = {1u << 10, 4u << 10, 16u << 10, 64u << 10, 256u << 10,
                                 SEAL_MAX_BUCKET};

/* Write a sentence into why (which may be NULL) and return e. */
static seal_err fail(char *why, size_t why_len, seal_err e, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static seal_err fail(char *why, size_t why_len, seal_err e, const char *fmt, ...)
{
    if (why != NULL && why_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_len, fmt, ap);
        va_end(ap);
    }
    return e;
}

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

/* Padding length p >= 1 with len + 1 + varint_len(p) + p == bucket, or 0 if
 * there is none: bucket - len - 1 of 129 or 16386 cannot be split into a
 * varint and that many bytes, and such a plaintext goes to the next bucket. */
static size_t padding_for(size_t len, size_t bucket)
{
    if (bucket < len + 4)
        return 0;
    for (size_t k = 1; k <= 3; k++) {
        size_t p = bucket - len - 1 - k;
        if (p >= 1 && varint_len(p) == k)
            return p;
    }
    return 0;
}

/* The smallest bucket that len bytes can be padded to exactly. Below
 * SEAL_MAX_PLAINTEXT there always is one (the largest bucket is at least
 * 16388 bytes larger, a gap any padding field fills). */
size_t seal_padded_size(size_t len)
{
    if (len > SEAL_MAX_PLAINTEXT)   /* also keeps len + 4 from wrapping */
        return 0;
    for (size_t i = 0; i < sizeof buckets / sizeof buckets[0]; i++)
        if (padding_for(len, buckets[i]) != 0)
            return buckets[i];
    assert(!"every length up to SEAL_MAX_PLAINTEXT has a bucket");
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

typedef enum { WRAP_OK, WRAP_ZERO_SHARED, WRAP_FAILED } wrap_result;

/* X25519 is libsodium's: on raw keys it needs no key objects, which cost
 * OpenSSL 3.0 as much again as the multiplication (docs/performance.md).
 * Results are RFC 7748's, as OpenSSL's (test_crypto.c checks both). */
static void ephemeral_keypair(uint8_t pub[32], uint8_t sec[32])
{
    randombytes_buf(sec, 32);
    crypto_scalarmult_base(pub, sec);
}

/* HKDF, fetched from OpenSSL's provider once per process (a fetch is a
 * registry lookup per call otherwise). */
static EVP_KDF *hkdf;
static pthread_once_t hkdf_once = PTHREAD_ONCE_INIT;

static void hkdf_fetch(void)
{
    hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
}

/* wrap key = HKDF-SHA256(shared, salt = eph_pub || reader_pub, "referral.v1 wrap"),
 * shared = X25519(my_sec, peer_pub): the ephemeral secret and the reader's
 * public key when sealing, the reader's secret and the ephemeral public key
 * when opening. WRAP_ZERO_SHARED: peer_pub is a low-order point. */
static wrap_result wrap_key(const uint8_t my_sec[32], const uint8_t peer_pub[32],
                            const uint8_t eph_pub[32], const uint8_t reader_pub[32],
                            uint8_t out[KEY_BYTES])
{
    uint8_t shared[32] = {0}, salt[64];
    if (!sodium_ready())
        return WRAP_FAILED;
    /* crypto_scalarmult fails on an all-zero result: a low-order peer key. */
    wrap_result r = crypto_scalarmult(shared, my_sec, peer_pub) == 0 ? WRAP_OK
                                                                     : WRAP_ZERO_SHARED;
    pthread_once(&hkdf_once, hkdf_fetch);
    EVP_KDF_CTX *kc = r == WRAP_OK && hkdf != NULL ? EVP_KDF_CTX_new(hkdf) : NULL;
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
        if (EVP_KDF_derive(kc, out, KEY_BYTES, params) != 1)
            r = WRAP_FAILED;
    } else if (r == WRAP_OK) {
        r = WRAP_FAILED;
    }
    EVP_KDF_CTX_free(kc);
    OPENSSL_cleanse(shared, sizeof shared);
    return r;
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
    assert(out != NULL && out_len != NULL && header_digest != NULL);
    *out = NULL;
    *out_len = 0;
    if (why != NULL && why_len > 0)
        why[0] = '\0';
    size_t padded = seal_padded_size(len);
    if (padded == 0)
        return fail(why, why_len, SEAL_TOO_LARGE,
                    "body of %zu bytes is too large: at most %u bytes can be sealed (the "
                    "largest bucket, %u bytes, less room for the padding field); shorten "
                    "the narrative or send attachments separately", len, SEAL_MAX_PLAINTEXT,
                    SEAL_MAX_BUCKET);
    if (plaintext == NULL && len > 0)
        return fail(why, why_len, SEAL_FAILED, "no plaintext bytes given for a body of %zu bytes",
                    len);
    if (r == NULL || n == 0 || n > SEAL_MAX_RECIPIENTS)
        return fail(why, why_len, SEAL_FAILED, "a body needs 1 to %d readers, not %zu",
                    SEAL_MAX_RECIPIENTS, r == NULL ? 0 : n);
    for (size_t i = 0; i < n; i++) {
        if (!ids_is_valid_name(r[i].agency_id))
            return fail(why, why_len, SEAL_FAILED, "reader %zu has no valid agency id (\"%.64s\")",
                        i, r[i].agency_id != NULL ? r[i].agency_id : "");
        if (r[i].seal_public == NULL)
            return fail(why, why_len, SEAL_FAILED, "reader %s has no sealing public key",
                        r[i].agency_id);
        for (size_t j = 0; j < i; j++)
            if (strcmp(r[i].agency_id, r[j].agency_id) == 0)
                return fail(why, why_len, SEAL_FAILED, "reader %s is listed twice",
                            r[i].agency_id);
    }
    size_t pad = padding_for(len, padded);
    assert(pad != 0);   /* seal_padded_size chose a bucket that has one */
    uint8_t *plain = malloc(padded), *ct = malloc(padded + TAG_BYTES);
    uint8_t content_key[KEY_BYTES], nonce[NONCE_BYTES];
    uint8_t eph_pub[SEAL_MAX_RECIPIENTS][32], eph_sec[32], wnonce[SEAL_MAX_RECIPIENTS][NONCE_BYTES];
    uint8_t wrapped[SEAL_MAX_RECIPIENTS][KEY_BYTES + TAG_BYTES], kids[SEAL_MAX_RECIPIENTS][16];
    seal_err e = SEAL_OK;
    if (plain == NULL || ct == NULL) {
        e = fail(why, why_len, SEAL_FAILED, "no memory to seal a body of %zu bytes", padded);
        goto done;
    }
    if (RAND_bytes(content_key, KEY_BYTES) != 1 || RAND_bytes(nonce, NONCE_BYTES) != 1) {
        e = fail(why, why_len, SEAL_FAILED, "the random generator failed (OpenSSL RAND_bytes)");
        goto done;
    }
    /* plaintext || field 15 (tag 0x7a) || varint(pad) || pad zero bytes */
    if (len > 0)
        memcpy(plain, plaintext, len);
    size_t at = len;
    plain[at++] = 0x7a;
    for (size_t v = pad; ; v >>= 7) {
        plain[at++] = (uint8_t)(v >= 0x80 ? (v & 0x7f) | 0x80 : v);
        if (v < 0x80)
            break;
    }
    memset(plain + at, 0, pad);
    assert(at + pad == padded);
    if (!aead(true, content_key, nonce, header_digest, plain, padded, ct, ct + padded)) {
        e = fail(why, why_len, SEAL_FAILED, "AES-256-GCM encryption failed (OpenSSL)");
        goto done;
    }
    for (size_t i = 0; i < n && e == SEAL_OK; i++) {
        uint8_t wk[KEY_BYTES];
        wrap_result w = WRAP_FAILED;
        if (!sodium_ready() || RAND_bytes(wnonce[i], NONCE_BYTES) != 1) {
            e = fail(why, why_len, SEAL_FAILED, "cannot make an ephemeral X25519 key");
            break;
        }
        ephemeral_keypair(eph_pub[i], eph_sec);
        if ((w = wrap_key(eph_sec, r[i].seal_public, eph_pub[i], r[i].seal_public, wk)) ==
                 WRAP_ZERO_SHARED)
            e = fail(why, why_len, SEAL_FAILED, "the sealing public key of %s is not usable "
                     "(a low-order X25519 point); fix its entry in the directory",
                     r[i].agency_id);
        else if (w != WRAP_OK || !aead(true, wk, wnonce[i], header_digest, content_key,
                                       KEY_BYTES, wrapped[i], wrapped[i] + KEY_BYTES))
            e = fail(why, why_len, SEAL_FAILED, "cannot wrap the content key for %s (OpenSSL)",
                     r[i].agency_id);
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
        size_t size = referral__v1__sealed_body__get_packed_size(&sb);
        *out = malloc(size);
        if (*out == NULL) {
            e = fail(why, why_len, SEAL_FAILED, "no memory for a sealed body of %zu bytes", size);
        } else {
            referral__v1__sealed_body__pack(&sb, *out);
            *out_len = size;
        }
    }
done:
    OPENSSL_cleanse(content_key, sizeof content_key);
    OPENSSL_cleanse(eph_sec, sizeof eph_sec);
    if (plain != NULL)
        OPENSSL_cleanse(plain, padded);
    free(plain);
    free(ct);
    return e;
}

/* ---- opening: a decode with a heap budget -------------------------------- */

typedef struct {
    size_t used;
    bool is_exceeded;
} open_budget;

static void *budget_alloc(void *data, size_t size)
{
    open_budget *b = data;
    if (size > OPEN_BUDGET - b->used) {
        b->is_exceeded = true;
        return NULL;
    }
    void *p = malloc(size == 0 ? 1 : size);
    if (p != NULL)
        b->used += size;
    return p;
}

static void budget_free(void *data, void *p)
{
    (void)data;
    free(p);
}

seal_err seal_open(const uint8_t *sealed, size_t len, const uint8_t header_digest[32],
                   const char *agency_id, const uint8_t seal_secret[SEAL_SECRET_BYTES],
                   const uint8_t seal_public[SEAL_PUBLIC_BYTES], uint8_t **plaintext,
                   size_t *plain_len, char *why, size_t why_len)
{
    assert(plaintext != NULL && plain_len != NULL && header_digest != NULL &&
           agency_id != NULL && seal_secret != NULL && seal_public != NULL);
    *plaintext = NULL;
    *plain_len = 0;
    if (len > MAX_SEALED)
        return fail(why, why_len, SEAL_TOO_LARGE,
                    "sealed body of %zu bytes is over the limit of %u bytes", len, MAX_SEALED);
    if (sealed == NULL && len > 0)
        return fail(why, why_len, SEAL_MALFORMED, "sealed body: no bytes");
    static const uint8_t empty[1];
    open_budget b = {.used = 0, .is_exceeded = false};
    ProtobufCAllocator alloc = {.alloc = budget_alloc, .free = budget_free, .allocator_data = &b};
    Referral__V1__SealedBody *sb =
        referral__v1__sealed_body__unpack(&alloc, len, sealed != NULL ? sealed : empty);
    if (sb == NULL) {
        if (b.is_exceeded)
            return fail(why, why_len, SEAL_MALFORMED, "sealed body of %zu bytes needs more than "
                        "%u bytes of memory to decode", len, OPEN_BUDGET);
        return fail(why, why_len, SEAL_MALFORMED, "%zu bytes are not a valid SealedBody", len);
    }
    seal_err e = SEAL_OK;
    if (sb->nonce.len != NONCE_BYTES || sb->ciphertext.len < TAG_BYTES ||
        sb->n_keys > SEAL_MAX_RECIPIENTS)
        e = fail(why, why_len, SEAL_MALFORMED, "sealed body has a nonce of %zu bytes (not %d), "
                 "a ciphertext of %zu bytes (at least %d) and %zu wrapped keys (at most %d)",
                 sb->nonce.len, NONCE_BYTES, sb->ciphertext.len, TAG_BYTES, sb->n_keys,
                 SEAL_MAX_RECIPIENTS);
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
    if (e == SEAL_OK && mine == NULL)
        e = fail(why, why_len, SEAL_NOT_FOR_US,
                 "the body is not sealed for %s with this sealing key", agency_id);
    if (e == SEAL_OK && (mine->ephemeral_public.len != 32 || mine->nonce.len != NONCE_BYTES ||
                         mine->wrapped_key.len != KEY_BYTES + TAG_BYTES))
        e = fail(why, why_len, SEAL_MALFORMED, "the wrapped key for %s is malformed (ephemeral "
                 "key, nonce or wrapped key of the wrong length)", agency_id);
    uint8_t wk[KEY_BYTES], content_key[KEY_BYTES];
    size_t n = e == SEAL_OK ? sb->ciphertext.len - TAG_BYTES : 0;
    if (e == SEAL_OK) {
        wrap_result w = wrap_key(seal_secret, mine->ephemeral_public.data,
                                 mine->ephemeral_public.data, seal_public, wk);
        if (w == WRAP_FAILED)
            e = fail(why, why_len, SEAL_FAILED, "cannot derive the wrapping key (OpenSSL)");
        else if (w != WRAP_OK ||
                 !aead(false, wk, mine->nonce.data, header_digest, mine->wrapped_key.data,
                       KEY_BYTES, content_key, mine->wrapped_key.data + KEY_BYTES))
            e = fail(why, why_len, SEAL_BAD, "the wrapped key for %s does not open: altered, or "
                     "this body belongs to another envelope", agency_id);
    }
    if (e == SEAL_OK) {
        *plaintext = malloc(n ? n : 1);
        if (*plaintext == NULL) {
            e = fail(why, why_len, SEAL_FAILED, "no memory to open a body of %zu bytes", n);
        } else if (!aead(false, content_key, sb->nonce.data, header_digest, sb->ciphertext.data,
                         n, *plaintext, sb->ciphertext.data + n)) {
            OPENSSL_cleanse(*plaintext, n);
            free(*plaintext);
            *plaintext = NULL;
            e = fail(why, why_len, SEAL_BAD, "the body does not authenticate: altered, or moved "
                     "from another envelope");
        } else {
            *plain_len = n;
        }
    }
    OPENSSL_cleanse(wk, sizeof wk);
    OPENSSL_cleanse(content_key, sizeof content_key);
    referral__v1__sealed_body__free_unpacked(sb, &alloc);
    return e;
}

size_t seal_readers(const uint8_t *sealed, size_t len, char names[][SEAL_READER_NAME_MAX + 1],
                    size_t max)
{
    if (len > MAX_SEALED || (sealed == NULL && len > 0))
        return 0;
    static const uint8_t empty[1];
    open_budget b = {.used = 0, .is_exceeded = false};
    ProtobufCAllocator alloc = {.alloc = budget_alloc, .free = budget_free, .allocator_data = &b};
    Referral__V1__SealedBody *sb =
        referral__v1__sealed_body__unpack(&alloc, len, sealed != NULL ? sealed : empty);
    if (sb == NULL)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < sb->n_keys && i < SEAL_MAX_RECIPIENTS && n < max; i++) {
        const char *a = sb->keys[i]->agency_id;
        if (a != NULL && a[0] != '\0' && strlen(a) <= SEAL_READER_NAME_MAX)
            snprintf(names[n++], SEAL_READER_NAME_MAX + 1, "%s", a);
    }
    referral__v1__sealed_body__free_unpacked(sb, &alloc);
    return n;
}
