/*
 * test_crypto: sign.c and seal.c on their own.
 *
 * Signatures: round trips, every byte of the envelope's signing input
 * (header, body, signature, domain) matters, and the signing input is
 * exactly the one docs/protocol.md fixes (checked against a plain EVP
 * verify of bytes built here). Key files: PKCS#8 PEM, mode 0600, refused
 * when others can read them. Sealing: round trips for one and several
 * readers, every way a body can fail to open gets its own code, the size
 * known before sealing is the size made, and padded plaintexts are
 * canonical BodyPlaintexts that wire_decode_plaintext accepts, at every
 * bucket edge including the lengths a naive padding rule cannot fill.
 *
 * test_interop.c checks the same code against an independent (Python)
 * implementation; this file checks behaviour and error paths.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "digest.h"
#include "referral.pb-c.h"
#include "seal.h"
#include "sign.h"
#include "wire.h"

#define ENVELOPE_DOMAIN "referral.v1 envelope"

static const uint8_t header_bytes[] = "\x08\x01\x12\x10header-bytes-as-sent";
static const uint8_t body_bytes[] = "sealed body bytes, any length";

/* ---- helpers -------------------------------------------------------------- */

static bool raw_ed25519_verify(const uint8_t pub[32], const uint8_t *msg, size_t len,
                               const uint8_t sig[64])
{
    EVP_PKEY *k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, 32);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = k != NULL && ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k) == 1 &&
              EVP_DigestVerify(ctx, sig, 64, msg, len) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(k);
    return ok;
}

/* A fresh private directory for key files (removed by remove_dir). */
static void make_dir(char dir[64])
{
    snprintf(dir, 64, "/tmp/test-crypto-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void remove_dir(const char *dir, const char *const *names, size_t n)
{
    char path[128];
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    assert_int_equal(rmdir(dir), 0);
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint8_t *buf = malloc(1 << 16);
    assert_non_null(buf);
    *len = fread(buf, 1, 1 << 16, f);
    fclose(f);
    return buf;
}

/* A canonical serialised BodyPlaintext with a case file, no padding, of
 * exactly target bytes (the narrative is sized to fit). *narrative_len
 * gets the narrative's length. Caller frees. */
static uint8_t *case_plaintext(size_t target, size_t *narrative_len)
{
    char *text = malloc(target + 1);
    assert_non_null(text);
    memset(text, 'n', target);
    Referral__V1__CaseFile cf = REFERRAL__V1__CASE_FILE__INIT;
    cf.category = REFERRAL__V1__CASE_CATEGORY__CASE_CATEGORY_PSYCHOLOGICAL_SUPPORT;
    Referral__V1__BodyPlaintext p = REFERRAL__V1__BODY_PLAINTEXT__INIT;
    p.body_case = REFERRAL__V1__BODY_PLAINTEXT__BODY_CASE_FILE;
    p.case_file = &cf;
    /* Varint lengths jump at 128 and 16384: try the requested_action field
     * (one more tag) when the narrative alone cannot hit target. */
    for (size_t extra = 0; extra < 3; extra++) {
        cf.requested_action = extra == 0 ? (char *)"" : (extra == 1 ? (char *)"a" : (char *)"ab");
        for (size_t nl = target > 16 ? target - 16 : 0; nl <= target; nl++) {
            text[nl] = '\0';
            cf.narrative = text;
            size_t size = referral__v1__body_plaintext__get_packed_size(&p);
            text[nl] = 'n';
            if (size != target)
                continue;
            text[nl] = '\0';
            uint8_t *out = malloc(size ? size : 1);
            assert_non_null(out);
            assert_int_equal(referral__v1__body_plaintext__pack(&p, out), size);
            *narrative_len = nl;
            free(text);
            return out;
        }
    }
    fail_msg("no case file of exactly %zu bytes", target);
    return NULL;
}

/* ---- signatures ------------------------------------------------------------ */

static void envelope_signature_round_trips(void **state)
{
    (void)state;
    uint8_t pub[SIGN_PUBLIC_BYTES], sec[SIGN_SECRET_BYTES], sig[SIGN_BYTES];
    assert_true(sign_keypair(pub, sec));
    assert_true(sign_envelope(sec, header_bytes, sizeof header_bytes, body_bytes,
                              sizeof body_bytes, sig));
    assert_true(sign_verify_envelope(pub, header_bytes, sizeof header_bytes, body_bytes,
                                     sizeof body_bytes, sig));
    /* Ed25519 is deterministic. */
    uint8_t again[SIGN_BYTES];
    assert_true(sign_envelope(sec, header_bytes, sizeof header_bytes, body_bytes,
                              sizeof body_bytes, again));
    assert_memory_equal(sig, again, SIGN_BYTES);
    /* Empty header and body are still signable. */
    assert_true(sign_envelope(sec, NULL, 0, NULL, 0, sig));
    assert_true(sign_verify_envelope(pub, NULL, 0, NULL, 0, sig));
}

static void envelope_signing_input_is_the_documented_bytes(void **state)
{
    (void)state;
    uint8_t pub[SIGN_PUBLIC_BYTES], sec[SIGN_SECRET_BYTES], sig[SIGN_BYTES];
    assert_true(sign_keypair(pub, sec));
    assert_true(sign_envelope(sec, header_bytes, sizeof header_bytes, body_bytes,
                              sizeof body_bytes, sig));
    /* "referral.v1 envelope" 0x00 | uint32 BE hlen | header | SHA-256(body) */
    uint8_t input[sizeof ENVELOPE_DOMAIN + 4 + sizeof header_bytes + DIGEST_BYTES];
    size_t at = 0;
    memcpy(input, ENVELOPE_DOMAIN, sizeof ENVELOPE_DOMAIN);   /* with its NUL */
    at += sizeof ENVELOPE_DOMAIN;
    uint32_t hlen = sizeof header_bytes;
    input[at++] = (uint8_t)(hlen >> 24);
    input[at++] = (uint8_t)(hlen >> 16);
    input[at++] = (uint8_t)(hlen >> 8);
    input[at++] = (uint8_t)hlen;
    memcpy(input + at, header_bytes, sizeof header_bytes);
    at += sizeof header_bytes;
    assert_true(digest_sha256(body_bytes, sizeof body_bytes, input + at));
    at += DIGEST_BYTES;
    assert_int_equal(at, sizeof input);
    assert_true(raw_ed25519_verify(pub, input, sizeof input, sig));

    /* And sign_detached is domain || 0x00 || msg. */
    static const uint8_t notice[] = "a notice";
    assert_true(sign_detached(sec, "referral.v1 notice", notice, sizeof notice, sig));
    uint8_t dinput[sizeof "referral.v1 notice" + sizeof notice];
    memcpy(dinput, "referral.v1 notice", sizeof "referral.v1 notice");
    memcpy(dinput + sizeof "referral.v1 notice", notice, sizeof notice);
    assert_true(raw_ed25519_verify(pub, dinput, sizeof dinput, sig));
}

static void flipped_bit_in_header_body_or_signature_fails(void **state)
{
    (void)state;
    uint8_t pub[SIGN_PUBLIC_BYTES], sec[SIGN_SECRET_BYTES], sig[SIGN_BYTES];
    assert_true(sign_keypair(pub, sec));
    assert_true(sign_envelope(sec, header_bytes, sizeof header_bytes, body_bytes,
                              sizeof body_bytes, sig));
    uint8_t h[sizeof header_bytes], b[sizeof body_bytes], s[SIGN_BYTES];
    for (size_t i = 0; i < sizeof h; i++) {
        memcpy(h, header_bytes, sizeof h);
        h[i] ^= (uint8_t)(1u << (i % 8));
        assert_false(sign_verify_envelope(pub, h, sizeof h, body_bytes, sizeof body_bytes, sig));
    }
    for (size_t i = 0; i < sizeof b; i++) {
        memcpy(b, body_bytes, sizeof b);
        b[i] ^= (uint8_t)(1u << (i % 8));
        assert_false(sign_verify_envelope(pub, header_bytes, sizeof header_bytes, b, sizeof b,
                                          sig));
    }
    for (size_t i = 0; i < SIGN_BYTES; i++) {
        memcpy(s, sig, SIGN_BYTES);
        s[i] ^= (uint8_t)(1u << (i % 8));
        assert_false(sign_verify_envelope(pub, header_bytes, sizeof header_bytes, body_bytes,
                                          sizeof body_bytes, s));
    }
    /* Moving bytes between header and body changes the length prefix. */
    assert_false(sign_verify_envelope(pub, header_bytes, sizeof header_bytes - 1, body_bytes,
                                      sizeof body_bytes, sig));
    /* Another key does not verify it. */
    uint8_t pub2[SIGN_PUBLIC_BYTES], sec2[SIGN_SECRET_BYTES];
    assert_true(sign_keypair(pub2, sec2));
    assert_false(sign_verify_envelope(pub2, header_bytes, sizeof header_bytes, body_bytes,
                                      sizeof body_bytes, sig));
}

static void signature_for_one_domain_fails_in_another(void **state)
{
    (void)state;
    uint8_t pub[SIGN_PUBLIC_BYTES], sec[SIGN_SECRET_BYTES], sig[SIGN_BYTES];
    static const uint8_t msg[] = "directory bytes";
    assert_true(sign_keypair(pub, sec));
    assert_true(sign_detached(sec, "referral.v1 directory", msg, sizeof msg, sig));
    assert_true(sign_verify(pub, "referral.v1 directory", msg, sizeof msg, sig));
    assert_false(sign_verify(pub, "referral.v1 notice", msg, sizeof msg, sig));
    assert_false(sign_verify(pub, "referral.v1 directory ", msg, sizeof msg, sig));
    assert_false(sign_verify(pub, "", msg, sizeof msg, sig));
    assert_false(sign_verify(pub, "referral.v1 directory", msg, sizeof msg - 1, sig));
    /* The NUL separator keeps domain and message apart: "ab" || 0 || "c"
     * is not "a" || 0 || "bc". */
    assert_true(sign_detached(sec, "ab", (const uint8_t *)"c", 1, sig));
    assert_false(sign_verify(pub, "a", (const uint8_t *)"bc", 2, sig));
    /* An envelope signature is not a detached signature of its header. */
    assert_true(sign_envelope(sec, msg, sizeof msg, body_bytes, sizeof body_bytes, sig));
    assert_false(sign_verify(pub, ENVELOPE_DOMAIN, msg, sizeof msg, sig));
    /* Empty messages are signable. */
    assert_true(sign_detached(sec, "referral.v1 notice", NULL, 0, sig));
    assert_true(sign_verify(pub, "referral.v1 notice", NULL, 0, sig));
}

static void key_id_is_stable_and_is_sha256_prefix(void **state)
{
    (void)state;
    uint8_t pub[SIGN_PUBLIC_BYTES], sec[SIGN_SECRET_BYTES];
    uint8_t id1[SIGN_KEY_ID_BYTES], id2[SIGN_KEY_ID_BYTES], d[DIGEST_BYTES];
    assert_true(sign_keypair(pub, sec));
    sign_key_id(pub, id1);
    sign_key_id(pub, id2);
    assert_memory_equal(id1, id2, SIGN_KEY_ID_BYTES);
    assert_true(digest_sha256(pub, sizeof pub, d));
    assert_memory_equal(id1, d, SIGN_KEY_ID_BYTES);
    uint8_t pub2[SIGN_PUBLIC_BYTES];
    assert_true(sign_keypair(pub2, sec));
    sign_key_id(pub2, id2);
    assert_memory_not_equal(id1, id2, SIGN_KEY_ID_BYTES);
    /* A fixed key has a fixed id (SHA-256 of 32 zero bytes). */
    static const uint8_t zero[32];
    static const uint8_t zero_id[16] = {0x66, 0x68, 0x7a, 0xad, 0xf8, 0x62, 0xbd, 0x77,
                                        0x6c, 0x8f, 0xc1, 0x8b, 0x8e, 0x9f, 0x8e, 0x20};
    sign_key_id(zero, id1);
    assert_memory_equal(id1, zero_id, 16);
}

/* ---- key files ------------------------------------------------------------- */

static void sign_key_file_round_trips_with_mode_0600(void **state)
{
    (void)state;
    char dir[64], path[128], why[512] = "";
    make_dir(dir);
    snprintf(path, sizeof path, "%s/a.sign.pem", dir);
    uint8_t pub[SIGN_PUBLIC_BYTES], sec[SIGN_SECRET_BYTES];
    uint8_t pub2[SIGN_PUBLIC_BYTES], sec2[SIGN_SECRET_BYTES];
    assert_true(sign_keypair(pub, sec));
    assert_true(sign_secret_save_pem(path, sec, why, sizeof why));
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    size_t len;
    uint8_t *text = read_file(path, &len);
    assert_true(len > 28 && memcmp(text, "-----BEGIN PRIVATE KEY-----", 27) == 0);  /* PKCS#8 */
    free(text);
    assert_true(sign_secret_load_pem(path, sec2, pub2, why, sizeof why));
    assert_memory_equal(sec, sec2, SIGN_SECRET_BYTES);
    assert_memory_equal(pub, pub2, SIGN_PUBLIC_BYTES);
    /* The loaded key signs what the old public key verifies. */
    uint8_t sig[SIGN_BYTES];
    assert_true(sign_detached(sec2, "referral.v1 notice", body_bytes, sizeof body_bytes, sig));
    assert_true(sign_verify(pub, "referral.v1 notice", body_bytes, sizeof body_bytes, sig));

    /* Saving over a world-readable file leaves it 0600. */
    assert_int_equal(chmod(path, 0644), 0);
    assert_true(sign_secret_save_pem(path, sec, why, sizeof why));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    static const char *const names[] = {"a.sign.pem"};
    remove_dir(dir, names, 1);
}

static void key_file_readable_by_others_is_refused(void **state)
{
    (void)state;
    char dir[64], path[128], why[512] = "";
    make_dir(dir);
    snprintf(path, sizeof path, "%s/a.sign.pem", dir);
    uint8_t pub[SIGN_PUBLIC_BYTES], sec[SIGN_SECRET_BYTES];
    assert_true(sign_keypair(pub, sec));
    assert_true(sign_secret_save_pem(path, sec, why, sizeof why));
    static const mode_t bad[] = {0644, 0640, 0604, 0660};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(chmod(path, bad[i]), 0);
        why[0] = '\0';
        assert_false(sign_secret_load_pem(path, sec, pub, why, sizeof why));
        assert_non_null(strstr(why, path));        /* names the file */
        assert_non_null(strstr(why, "chmod 600")); /* and the fix */
    }
    static const char *const names[] = {"a.sign.pem"};
    remove_dir(dir, names, 1);
}

static void key_file_errors_name_the_file(void **state)
{
    (void)state;
    char dir[64], path[128], why[512] = "";
    make_dir(dir);
    uint8_t pub[32], sec[32];

    /* Missing. */
    snprintf(path, sizeof path, "%s/missing.pem", dir);
    assert_false(sign_secret_load_pem(path, sec, pub, why, sizeof why));
    assert_non_null(strstr(why, path));

    /* A sealing key is not a signing key, and the reverse. */
    snprintf(path, sizeof path, "%s/b.seal.pem", dir);
    assert_true(seal_keypair(pub, sec));
    assert_true(seal_secret_save_pem(path, sec, why, sizeof why));
    why[0] = '\0';
    assert_false(sign_secret_load_pem(path, sec, pub, why, sizeof why));
    assert_non_null(strstr(why, path));
    snprintf(path, sizeof path, "%s/a.sign.pem", dir);
    assert_true(sign_keypair(pub, sec));
    assert_true(sign_secret_save_pem(path, sec, why, sizeof why));
    why[0] = '\0';
    assert_false(seal_secret_load_pem(path, sec, pub, why, sizeof why));
    assert_non_null(strstr(why, path));

    /* Not PEM at all. */
    snprintf(path, sizeof path, "%s/junk.pem", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "not a key\n", 10), 10);
    close(fd);
    why[0] = '\0';
    assert_false(sign_secret_load_pem(path, sec, pub, why, sizeof why));
    assert_non_null(strstr(why, path));

    /* A directory that does not exist. */
    snprintf(path, sizeof path, "%s/no/such/dir.pem", dir);
    why[0] = '\0';
    assert_false(sign_secret_save_pem(path, sec, why, sizeof why));
    assert_non_null(strstr(why, path));

    static const char *const names[] = {"b.seal.pem", "a.sign.pem", "junk.pem"};
    remove_dir(dir, names, 3);
}

static void seal_key_file_round_trips_with_mode_0600(void **state)
{
    (void)state;
    char dir[64], path[128], why[512] = "";
    make_dir(dir);
    snprintf(path, sizeof path, "%s/a.seal.pem", dir);
    uint8_t pub[SEAL_PUBLIC_BYTES], sec[SEAL_SECRET_BYTES];
    uint8_t pub2[SEAL_PUBLIC_BYTES], sec2[SEAL_SECRET_BYTES];
    assert_true(seal_keypair(pub, sec));
    assert_true(seal_secret_save_pem(path, sec, why, sizeof why));
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_true(seal_secret_load_pem(path, sec2, pub2, why, sizeof why));
    assert_memory_equal(sec, sec2, SEAL_SECRET_BYTES);
    assert_memory_equal(pub, pub2, SEAL_PUBLIC_BYTES);
    assert_int_equal(chmod(path, 0644), 0);
    assert_false(seal_secret_load_pem(path, sec2, pub2, why, sizeof why));
    assert_non_null(strstr(why, path));
    static const char *const names[] = {"a.seal.pem"};
    remove_dir(dir, names, 1);
}

/* ---- sealing --------------------------------------------------------------- */

typedef struct {
    const char *id;
    uint8_t pub[SEAL_PUBLIC_BYTES], sec[SEAL_SECRET_BYTES];
} reader;

static void make_readers(reader *rd, seal_recipient *r, size_t n)
{
    static const char *const ids[] = {"qd.police.shibei", "qd.youth-league", "qd.edu.bureau",
                                      "sh.12355.desk"};
    assert_true(n <= 4);
    for (size_t i = 0; i < n; i++) {
        rd[i].id = ids[i];
        assert_true(seal_keypair(rd[i].pub, rd[i].sec));
        r[i].agency_id = rd[i].id;
        r[i].seal_public = rd[i].pub;
    }
}

static void header_digest(const char *label, uint8_t d[32])
{
    assert_true(digest_sha256(label, strlen(label), d));
}

/* Seal a case file for the first n readers, open it as each, decode it. */
static void round_trip(size_t n)
{
    reader rd[4];
    seal_recipient r[4];
    make_readers(rd, r, n);
    uint8_t hd[32], *sealed = NULL, *plain = NULL;
    size_t slen = 0, plen = 0, nl = 0;
    char why[256] = "";
    header_digest("header of envelope 1", hd);
    uint8_t *pt = case_plaintext(300, &nl);
    assert_int_equal(seal_body(pt, 300, hd, r, n, &sealed, &slen, why, sizeof why), SEAL_OK);
    assert_int_equal(slen, seal_sealed_size(300, r, n));
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(seal_open(sealed, slen, hd, rd[i].id, rd[i].sec, rd[i].pub, &plain,
                                   &plen, why, sizeof why),
                         SEAL_OK);
        assert_int_equal(plen, 1024);
        assert_memory_equal(plain, pt, 300);   /* the unpadded bytes come first */
        Referral__V1__BodyPlaintext *p = NULL;
        assert_int_equal(wire_decode_plaintext(plain, plen, NULL, &p, why, sizeof why), WIRE_OK);
        assert_non_null(p->case_file);
        assert_int_equal(strlen(p->case_file->narrative), nl);
        assert_int_equal(p->padding.len, 1024 - 300 - 3);
        wire_free(p);
        free(plain);
    }
    /* Each wrapped key is named and sized as docs/protocol.md says. */
    Referral__V1__SealedBody *sb = referral__v1__sealed_body__unpack(NULL, slen, sealed);
    assert_non_null(sb);
    assert_int_equal(sb->nonce.len, 12);
    assert_int_equal(sb->ciphertext.len, 1024 + 16);
    assert_int_equal(sb->n_keys, n);
    for (size_t i = 0; i < n; i++) {
        uint8_t d[32];
        assert_true(digest_sha256(rd[i].pub, 32, d));
        assert_string_equal(sb->keys[i]->agency_id, rd[i].id);
        assert_int_equal(sb->keys[i]->recipient_key_id.len, 16);
        assert_memory_equal(sb->keys[i]->recipient_key_id.data, d, 16);
        assert_int_equal(sb->keys[i]->ephemeral_public.len, 32);
        assert_int_equal(sb->keys[i]->nonce.len, 12);
        assert_int_equal(sb->keys[i]->wrapped_key.len, 48);
        for (size_t j = 0; j < i; j++)   /* a fresh ephemeral key per reader */
            assert_memory_not_equal(sb->keys[i]->ephemeral_public.data,
                                    sb->keys[j]->ephemeral_public.data, 32);
    }
    referral__v1__sealed_body__free_unpacked(sb, NULL);
    free(sealed);
    free(pt);
}

static void sealed_body_opens_for_one_reader(void **state)
{
    (void)state;
    round_trip(1);
}

static void sealed_body_opens_for_each_of_three_readers(void **state)
{
    (void)state;
    round_trip(3);
}

static void sealing_twice_gives_different_bytes(void **state)
{
    (void)state;
    reader rd[1];
    seal_recipient r[1];
    make_readers(rd, r, 1);
    uint8_t hd[32], *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    header_digest("h", hd);
    assert_int_equal(seal_body(body_bytes, 10, hd, r, 1, &a, &alen, NULL, 0), SEAL_OK);
    assert_int_equal(seal_body(body_bytes, 10, hd, r, 1, &b, &blen, NULL, 0), SEAL_OK);
    assert_int_equal(alen, blen);
    assert_memory_not_equal(a, b, alen);
    free(a);
    free(b);
}

/* A body sealed for readers 0..2 of four; reader 3 is left out. */
typedef struct {
    reader rd[4];
    seal_recipient r[4];
    uint8_t hd[32];
    uint8_t *sealed;
    size_t slen;
} sealed_fixture;

static void seal_fixture(sealed_fixture *f)
{
    make_readers(f->rd, f->r, 4);
    header_digest("header of envelope 1", f->hd);
    char why[256] = "";
    f->sealed = NULL;
    assert_int_equal(seal_body(body_bytes, sizeof body_bytes, f->hd, f->r, 3, &f->sealed,
                               &f->slen, why, sizeof why),
                     SEAL_OK);
}

static seal_err open_as(const sealed_fixture *f, const uint8_t *sealed, size_t len,
                        const uint8_t hd[32], size_t who, char *why, size_t why_len)
{
    uint8_t *plain = (uint8_t *)1;   /* must be reset to NULL on failure */
    size_t plen = 99;
    why[0] = '\0';
    seal_err e = seal_open(sealed, len, hd, f->rd[who].id, f->rd[who].sec, f->rd[who].pub,
                           &plain, &plen, why, why_len);
    if (e == SEAL_OK) {
        assert_non_null(plain);
        free(plain);
    } else {
        assert_null(plain);
        assert_int_equal(plen, 0);
        assert_true(why[0] != '\0');   /* every failure says why */
    }
    return e;
}

static void reader_not_listed_is_not_for_us(void **state)
{
    (void)state;
    sealed_fixture f;
    char why[256];
    seal_fixture(&f);
    assert_int_equal(open_as(&f, f.sealed, f.slen, f.hd, 3, why, sizeof why), SEAL_NOT_FOR_US);
    assert_non_null(strstr(why, f.rd[3].id));
    /* A listed agency with another (say, rotated) key is not it either. */
    uint8_t pub[32], sec[32], *plain = NULL;
    size_t plen = 0;
    assert_true(seal_keypair(pub, sec));
    assert_int_equal(seal_open(f.sealed, f.slen, f.hd, f.rd[0].id, sec, pub, &plain, &plen, why,
                               sizeof why),
                     SEAL_NOT_FOR_US);
    /* Nor is another agency holding a listed agency's key. */
    assert_int_equal(seal_open(f.sealed, f.slen, f.hd, f.rd[3].id, f.rd[0].sec, f.rd[0].pub,
                               &plain, &plen, why, sizeof why),
                     SEAL_NOT_FOR_US);
    assert_null(plain);
    free(f.sealed);
}

static void tampered_ciphertext_is_bad(void **state)
{
    (void)state;
    sealed_fixture f;
    char why[256];
    seal_fixture(&f);
    Referral__V1__SealedBody *sb = referral__v1__sealed_body__unpack(NULL, f.slen, f.sealed);
    assert_non_null(sb);
    /* Flip one bit at the start, the middle, and in the tag. */
    size_t at[] = {0, sb->ciphertext.len / 2, sb->ciphertext.len - 1};
    for (size_t i = 0; i < 3; i++) {
        sb->ciphertext.data[at[i]] ^= 0x01;
        uint8_t *buf = malloc(f.slen);
        assert_non_null(buf);
        assert_int_equal(referral__v1__sealed_body__pack(sb, buf), f.slen);
        assert_int_equal(open_as(&f, buf, f.slen, f.hd, 1, why, sizeof why), SEAL_BAD);
        free(buf);
        sb->ciphertext.data[at[i]] ^= 0x01;
    }
    /* The body nonce too. */
    sb->nonce.data[0] ^= 0x80;
    uint8_t *buf = malloc(f.slen);
    assert_non_null(buf);
    referral__v1__sealed_body__pack(sb, buf);
    assert_int_equal(open_as(&f, buf, f.slen, f.hd, 0, why, sizeof why), SEAL_BAD);
    free(buf);
    referral__v1__sealed_body__free_unpacked(sb, NULL);
    free(f.sealed);
}

static void tampered_wrapped_key_is_bad(void **state)
{
    (void)state;
    sealed_fixture f;
    char why[256];
    seal_fixture(&f);
    Referral__V1__SealedBody *sb = referral__v1__sealed_body__unpack(NULL, f.slen, f.sealed);
    assert_non_null(sb);
    uint8_t *buf = malloc(f.slen);
    assert_non_null(buf);
    /* Each part of reader 1's wrapped key: the wrapped bytes, the tag, the
     * nonce, the ephemeral public key. Reader 0 still opens it. */
    ProtobufCBinaryData *parts[] = {&sb->keys[1]->wrapped_key, &sb->keys[1]->wrapped_key,
                                    &sb->keys[1]->nonce, &sb->keys[1]->ephemeral_public};
    size_t at[] = {0, 47, 5, 31};
    for (size_t i = 0; i < 4; i++) {
        parts[i]->data[at[i]] ^= 0x04;
        referral__v1__sealed_body__pack(sb, buf);
        assert_int_equal(open_as(&f, buf, f.slen, f.hd, 1, why, sizeof why), SEAL_BAD);
        assert_int_equal(open_as(&f, buf, f.slen, f.hd, 0, why, sizeof why), SEAL_OK);
        parts[i]->data[at[i]] ^= 0x04;
    }
    /* Reader 0's wrapped key swapped into reader 1's slot (agency id and
     * key id kept): it was made for another public key. */
    ProtobufCBinaryData keep_eph = sb->keys[1]->ephemeral_public, keep_n = sb->keys[1]->nonce,
                        keep_w = sb->keys[1]->wrapped_key;
    sb->keys[1]->ephemeral_public = sb->keys[0]->ephemeral_public;
    sb->keys[1]->nonce = sb->keys[0]->nonce;
    sb->keys[1]->wrapped_key = sb->keys[0]->wrapped_key;
    referral__v1__sealed_body__pack(sb, buf);
    assert_int_equal(open_as(&f, buf, f.slen, f.hd, 1, why, sizeof why), SEAL_BAD);
    sb->keys[1]->ephemeral_public = keep_eph;
    sb->keys[1]->nonce = keep_n;
    sb->keys[1]->wrapped_key = keep_w;
    /* A low-order ephemeral key (all zeros) is refused, not used. */
    memset(sb->keys[1]->ephemeral_public.data, 0, 32);
    referral__v1__sealed_body__pack(sb, buf);
    assert_int_equal(open_as(&f, buf, f.slen, f.hd, 1, why, sizeof why), SEAL_BAD);
    free(buf);
    referral__v1__sealed_body__free_unpacked(sb, NULL);
    free(f.sealed);
}

static void body_moved_to_another_envelope_is_bad(void **state)
{
    (void)state;
    sealed_fixture f;
    char why[256];
    seal_fixture(&f);
    uint8_t other[32];
    header_digest("header of envelope 2", other);
    for (size_t who = 0; who < 3; who++)
        assert_int_equal(open_as(&f, f.sealed, f.slen, other, who, why, sizeof why), SEAL_BAD);
    assert_int_equal(open_as(&f, f.sealed, f.slen, f.hd, 2, why, sizeof why), SEAL_OK);
    free(f.sealed);
}

static void malformed_sealed_bodies_are_refused(void **state)
{
    (void)state;
    sealed_fixture f;
    char why[256];
    seal_fixture(&f);
    /* Not protobuf. */
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(open_as(&f, junk, sizeof junk, f.hd, 0, why, sizeof why), SEAL_MALFORMED);
    /* Empty: no nonce. */
    assert_int_equal(open_as(&f, NULL, 0, f.hd, 0, why, sizeof why), SEAL_MALFORMED);
    /* Truncated. */
    assert_int_equal(open_as(&f, f.sealed, f.slen - 1, f.hd, 0, why, sizeof why),
                     SEAL_MALFORMED);
    /* Wrong lengths. */
    Referral__V1__SealedBody *sb = referral__v1__sealed_body__unpack(NULL, f.slen, f.sealed);
    assert_non_null(sb);
    uint8_t *buf = malloc(f.slen + 64);
    assert_non_null(buf);
    sb->nonce.len = 11;
    size_t n = referral__v1__sealed_body__pack(sb, buf);
    assert_int_equal(open_as(&f, buf, n, f.hd, 0, why, sizeof why), SEAL_MALFORMED);
    sb->nonce.len = 12;
    size_t keep = sb->ciphertext.len;
    sb->ciphertext.len = 15;
    n = referral__v1__sealed_body__pack(sb, buf);
    assert_int_equal(open_as(&f, buf, n, f.hd, 0, why, sizeof why), SEAL_MALFORMED);
    sb->ciphertext.len = keep;
    sb->keys[0]->wrapped_key.len = 47;
    n = referral__v1__sealed_body__pack(sb, buf);
    assert_int_equal(open_as(&f, buf, n, f.hd, 0, why, sizeof why), SEAL_MALFORMED);
    sb->keys[0]->wrapped_key.len = 48;
    sb->keys[0]->ephemeral_public.len = 31;
    n = referral__v1__sealed_body__pack(sb, buf);
    assert_int_equal(open_as(&f, buf, n, f.hd, 0, why, sizeof why), SEAL_MALFORMED);
    sb->keys[0]->ephemeral_public.len = 32;
    free(buf);
    referral__v1__sealed_body__free_unpacked(sb, NULL);

    /* More than 32 wrapped keys. */
    size_t big_len = f.slen + 33 * 2;
    uint8_t *big = malloc(big_len);
    assert_non_null(big);
    memcpy(big, f.sealed, f.slen);
    for (size_t i = 0; i < 33; i++) {
        big[f.slen + 2 * i] = 0x1a;   /* field 3, length-delimited: an empty WrappedKey */
        big[f.slen + 2 * i + 1] = 0x00;
    }
    assert_int_equal(open_as(&f, big, big_len, f.hd, 0, why, sizeof why), SEAL_MALFORMED);
    free(big);

    /* A megabyte of empty wrapped keys would cost tens of megabytes to
     * decode: refused within the decode budget. */
    big_len = 1u << 20;
    big = malloc(big_len);
    assert_non_null(big);
    for (size_t i = 0; i < big_len; i += 2) {
        big[i] = 0x1a;
        big[i + 1] = 0x00;
    }
    assert_int_equal(open_as(&f, big, big_len, f.hd, 0, why, sizeof why), SEAL_MALFORMED);
    free(big);

    /* Over 1 MiB is not decoded at all. */
    big_len = (1u << 20) + 1;
    big = calloc(big_len, 1);
    assert_non_null(big);
    assert_int_equal(open_as(&f, big, big_len, f.hd, 0, why, sizeof why), SEAL_TOO_LARGE);
    free(big);
    free(f.sealed);
}

static void bad_recipient_lists_are_refused(void **state)
{
    (void)state;
    reader rd[4];
    seal_recipient r[4];
    make_readers(rd, r, 4);
    uint8_t hd[32], *out = (uint8_t *)1;
    size_t olen = 99;
    char why[256];
    header_digest("h", hd);
    /* None. */
    assert_int_equal(seal_body(body_bytes, 10, hd, r, 0, &out, &olen, why, sizeof why),
                     SEAL_FAILED);
    assert_null(out);
    assert_int_equal(seal_sealed_size(10, r, 0), 0);
    /* Too many. */
    seal_recipient many[SEAL_MAX_RECIPIENTS + 1];
    for (size_t i = 0; i <= SEAL_MAX_RECIPIENTS; i++)
        many[i] = r[0];
    assert_int_equal(seal_sealed_size(10, many, SEAL_MAX_RECIPIENTS + 1), 0);
    assert_int_equal(seal_body(body_bytes, 10, hd, many, SEAL_MAX_RECIPIENTS + 1, &out, &olen,
                               why, sizeof why),
                     SEAL_FAILED);
    /* Twice the same agency. */
    seal_recipient dup[2] = {r[1], r[1]};
    why[0] = '\0';
    assert_int_equal(seal_body(body_bytes, 10, hd, dup, 2, &out, &olen, why, sizeof why),
                     SEAL_FAILED);
    assert_non_null(strstr(why, "twice"));
    /* An id outside the grammar, and none. */
    seal_recipient bad[2] = {r[0], {"Not An Id", rd[1].pub}};
    assert_int_equal(seal_body(body_bytes, 10, hd, bad, 2, &out, &olen, why, sizeof why),
                     SEAL_FAILED);
    bad[1].agency_id = "";
    assert_int_equal(seal_body(body_bytes, 10, hd, bad, 2, &out, &olen, why, sizeof why),
                     SEAL_FAILED);
    /* A low-order public key (all zeros): no shared secret. */
    static const uint8_t zero[32];
    seal_recipient weak[1] = {{"qd.police", zero}};
    why[0] = '\0';
    assert_int_equal(seal_body(body_bytes, 10, hd, weak, 1, &out, &olen, why, sizeof why),
                     SEAL_FAILED);
    assert_non_null(strstr(why, "qd.police"));
    assert_null(out);
    assert_int_equal(olen, 0);
    /* 32 distinct readers is the maximum and works. */
    char names[SEAL_MAX_RECIPIENTS][16];
    for (size_t i = 0; i < SEAL_MAX_RECIPIENTS; i++) {
        snprintf(names[i], sizeof names[i], "agency.%zu", i);
        many[i].agency_id = names[i];
        many[i].seal_public = rd[i % 4].pub;
    }
    assert_int_equal(seal_body(body_bytes, 10, hd, many, SEAL_MAX_RECIPIENTS, &out, &olen, why,
                               sizeof why),
                     SEAL_OK);
    assert_int_equal(olen, seal_sealed_size(10, many, SEAL_MAX_RECIPIENTS));
    free(out);
}

/* ---- sizes and padding ----------------------------------------------------- */

static void sealed_size_is_known_before_sealing(void **state)
{
    (void)state;
    reader rd[3];
    seal_recipient r[3];
    make_readers(rd, r, 3);
    uint8_t hd[32];
    header_digest("h", hd);
    static const size_t sizes[] = {0,         1,         1000,      1020,      1021,      1022,
                                   1023,      1024,      894,       893,       895,       3966,
                                   4092,      4093,      5000,      16254,     16380,     16381,
                                   49149,     65406,     65532,     245757,    262014,    245756,
                                   262015,    770043,    770044,    769914};
    uint8_t *pt = calloc(SEAL_MAX_PLAINTEXT, 1);
    assert_non_null(pt);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        for (size_t n = 1; n <= 3; n += 2) {
            size_t expect = seal_sealed_size(sizes[i], r, n);
            uint8_t *out = NULL, *plain = NULL;
            size_t olen = 0, plen = 0;
            char why[256] = "";
            seal_err e = seal_body(pt, sizes[i], hd, r, n, &out, &olen, why, sizeof why);
            if (e != SEAL_OK)
                fail_msg("seal_body of %zu bytes for %zu readers: %s", sizes[i], n, why);
            assert_int_not_equal(expect, 0);
            assert_int_equal(olen, expect);
            assert_int_equal(seal_open(out, olen, hd, rd[0].id, rd[0].sec, rd[0].pub, &plain,
                                       &plen, why, sizeof why),
                             SEAL_OK);
            assert_int_equal(plen, seal_padded_size(sizes[i]));
            assert_true(plen >= sizes[i] + 4);
            free(plain);
            free(out);
        }
    }
    free(pt);
}

static void bucket_edges(void **state)
{
    (void)state;
    /* At least 4 bytes of room, else the next bucket. */
    assert_int_equal(seal_padded_size(0), 1024);
    assert_int_equal(seal_padded_size(1), 1024);
    assert_int_equal(seal_padded_size(1000), 1024);
    assert_int_equal(seal_padded_size(1020), 1024);
    assert_int_equal(seal_padded_size(1021), 4096);
    assert_int_equal(seal_padded_size(1022), 4096);
    assert_int_equal(seal_padded_size(1023), 4096);
    assert_int_equal(seal_padded_size(1024), 4096);
    assert_int_equal(seal_padded_size(5000), 16384);
    assert_int_equal(seal_padded_size(65532), 65536);
    assert_int_equal(seal_padded_size(65533), 262144);
    assert_int_equal(seal_padded_size(262140), 262144);
    assert_int_equal(seal_padded_size(262141), 786432);
    assert_int_equal(seal_padded_size(SEAL_MAX_PLAINTEXT), 786432);
    assert_int_equal(SEAL_MAX_PLAINTEXT, 770044);
    /* A padding field cannot take up exactly 130 (or 16387) bytes: tag,
     * then a 1-byte varint and up to 127 bytes or a 2-byte varint and at
     * least 128. Such a plaintext goes to the next bucket. */
    assert_int_equal(seal_padded_size(1024 - 130), 4096);
    assert_int_equal(seal_padded_size(1024 - 129), 1024);
    assert_int_equal(seal_padded_size(1024 - 131), 1024);
    assert_int_equal(seal_padded_size(4096 - 130), 16384);
    assert_int_equal(seal_padded_size(65536 - 16387), 262144);
    assert_int_equal(seal_padded_size(65536 - 16386), 65536);
    assert_int_equal(seal_padded_size(262144 - 16387), 786432);
    assert_int_equal(seal_padded_size(262144 - 130), 786432);
    /* The largest bucket has no next one: the plaintext limit is set below
     * its first hole (786432 - 16387), so there is no length that fails
     * between two lengths that work. */
    assert_int_equal(seal_padded_size(786432 - 16388), 786432);
    assert_int_equal(seal_padded_size(786432 - 16387), 0);
    assert_int_equal(seal_padded_size(786432 - 130), 0);
    assert_int_equal(seal_padded_size(786428), 0);
}

/* Every length, against the rule as docs/protocol.md states it, computed
 * here independently: up to 770,044 bytes, the smallest bucket at least 4
 * bytes larger in which 0x7a, varint(n) and n >= 1 bytes fill the rest
 * exactly. */
static size_t varint_bytes(size_t v)
{
    size_t k = 1;
    for (; v >= 0x80; v >>= 7)
        k++;
    return k;
}

static void every_length_pads_by_the_documented_rule(void **state)
{
    (void)state;
    static const size_t buckets[] = {1024, 4096, 16384, 65536, 262144, 786432};
    size_t unpaddable = 0, last_ok = 0;
    for (size_t len = 0; len <= 786432; len++) {
        size_t expect = 0;
        for (size_t b = 0; b < 6 && expect == 0 && len <= 770044; b++) {
            if (buckets[b] < len + 4)
                continue;
            size_t rest = buckets[b] - len - 1;
            for (size_t n = rest > 3 ? rest - 3 : 1; n < rest && expect == 0; n++)
                if (n + varint_bytes(n) == rest)
                    expect = buckets[b];
        }
        if (expect == 0 && len <= SEAL_MAX_PLAINTEXT)
            unpaddable++;
        if (expect != 0)
            last_ok = len;
        if (seal_padded_size(len) != expect)
            fail_msg("length %zu pads to %zu, not %zu", len, seal_padded_size(len), expect);
    }
    assert_int_equal(unpaddable, 0);   /* no holes */
    assert_int_equal(last_ok, SEAL_MAX_PLAINTEXT);
}

static void too_large_plaintext_is_refused(void **state)
{
    (void)state;
    reader rd[1];
    seal_recipient r[1];
    make_readers(rd, r, 1);
    uint8_t hd[32], *out = (uint8_t *)1;
    size_t olen = 99;
    char why[256] = "";
    header_digest("h", hd);
    /* Above SEAL_MAX_PLAINTEXT (including the two lengths that no padding
     * field could fill in the largest bucket), and absurd lengths. */
    static const size_t sizes[] = {770045, 786428, 786429, 786432, 800000, 786432 - 130,
                                   786432 - 16387, (size_t)-1, (size_t)-3};
    uint8_t *pt = calloc(800000, 1);
    assert_non_null(pt);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        assert_int_equal(seal_padded_size(sizes[i]), 0);
        assert_int_equal(seal_sealed_size(sizes[i], r, 1), 0);
        if (sizes[i] > 800000)
            continue;   /* only the size functions for lengths no buffer has */
        why[0] = '\0';
        assert_int_equal(seal_body(pt, sizes[i], hd, r, 1, &out, &olen, why, sizeof why),
                         SEAL_TOO_LARGE);
        assert_null(out);
        assert_non_null(strstr(why, "770044"));   /* the limit, not "out of memory" */
        assert_null(strstr(why, "memory"));
    }
    free(pt);
}

/* The lengths the property tests (here and test_padding.py) seal and open:
 * every length up to 70,000 (the buckets of 1, 4, 16 and 64 KiB with both
 * of their holes), and around the larger buckets' edges and holes. */
static const struct {
    size_t first, last;
} seal_ranges[] = {
    {0, 70000},
    {262144 - 16387 - 64, 262144 - 16387 + 64},
    {262144 - 130 - 64, 262144 + 64},
    {SEAL_MAX_PLAINTEXT - 200, SEAL_MAX_PLAINTEXT},
};

static size_t read_varint(const uint8_t *p, size_t *at)
{
    size_t v = 0;
    for (unsigned shift = 0; shift < 28; shift += 7) {
        uint8_t b = p[(*at)++];
        v |= (size_t)(b & 0x7f) << shift;
        if (b < 0x80)
            break;
    }
    return v;
}

/* Property: every length in seal_ranges seals to the size announced
 * before sealing, opens again, and opens to the plaintext followed by
 * exactly one padding field (0x7a, shortest varint n, n zero bytes) that
 * ends on the bucket. */
static void every_length_around_every_bucket_seals_and_opens(void **state)
{
    (void)state;
    reader rd[1];
    seal_recipient r[1];
    make_readers(rd, r, 1);
    uint8_t hd[32];
    header_digest("property", hd);
    uint8_t *pt = malloc(SEAL_MAX_PLAINTEXT);
    assert_non_null(pt);
    for (size_t i = 0; i < SEAL_MAX_PLAINTEXT; i++)
        pt[i] = (uint8_t)(i * 131 + 7);
    uint8_t *zeros = calloc(SEAL_MAX_BUCKET, 1);
    assert_non_null(zeros);
    size_t sealed_count = 0;
    for (size_t k = 0; k < sizeof seal_ranges / sizeof seal_ranges[0]; k++) {
        for (size_t len = seal_ranges[k].first; len <= seal_ranges[k].last; len++) {
            uint8_t *sealed = NULL, *plain = NULL;
            size_t slen = 0, plen = 0;
            char why[256] = "";
            size_t padded = seal_padded_size(len);
            if (seal_body(pt, len, hd, r, 1, &sealed, &slen, why, sizeof why) != SEAL_OK)
                fail_msg("length %zu does not seal: %s", len, why);
            assert_int_equal(slen, seal_sealed_size(len, r, 1));
            if (seal_open(sealed, slen, hd, rd[0].id, rd[0].sec, rd[0].pub, &plain, &plen, why,
                          sizeof why) != SEAL_OK)
                fail_msg("length %zu does not open: %s", len, why);
            assert_int_equal(plen, padded);
            assert_true(len == 0 || memcmp(plain, pt, len) == 0);
            size_t at = len;
            assert_int_equal(plain[at++], 0x7a);
            size_t start = at, n = read_varint(plain, &at);
            assert_int_equal(at - start, varint_bytes(n));   /* shortest varint */
            assert_true(n >= 1);
            if (at + n != padded)
                fail_msg("length %zu: padding of %zu ends at %zu, not %zu", len, n, at + n,
                         padded);
            if (memcmp(plain + at, zeros, padded - at) != 0)
                fail_msg("length %zu: padding bytes are not all zero", len);
            free(plain);
            free(sealed);
            sealed_count++;
        }
    }
    assert_true(sealed_count > 70000);
    free(zeros);
    free(pt);
}

/* With the default limits every bucket is usable: the largest plaintext,
 * sealed for the most readers with the longest ids, fits max_body_bytes,
 * and its envelope (with the largest header) fits max_frame_bytes. */
static void largest_body_for_most_readers_fits_default_limits(void **state)
{
    (void)state;
    reader rd[4];
    seal_recipient r[4], many[SEAL_MAX_RECIPIENTS];
    make_readers(rd, r, 4);
    char names[SEAL_MAX_RECIPIENTS][65];
    for (size_t i = 0; i < SEAL_MAX_RECIPIENTS; i++) {
        memset(names[i], 'a', 64);
        snprintf(names[i] + 58, 7, "%06zu", i);   /* 64 characters, unique */
        many[i].agency_id = names[i];
        many[i].seal_public = rd[i % 4].pub;
    }
    size_t largest = seal_sealed_size(SEAL_MAX_PLAINTEXT, many, SEAL_MAX_RECIPIENTS);
    print_message("largest sealed body: %zu bytes (max_body_bytes %zu)\n", largest,
                  wire_default_limits.max_body_bytes);
    assert_int_equal(largest, 792386);   /* docs/protocol.md states this sum */
    assert_true(largest <= wire_default_limits.max_body_bytes);

    uint8_t hd[32], *sealed = NULL;
    size_t slen = 0;
    char why[256] = "";
    header_digest("h", hd);
    uint8_t *pt = calloc(SEAL_MAX_PLAINTEXT, 1);
    assert_non_null(pt);
    assert_int_equal(seal_body(pt, SEAL_MAX_PLAINTEXT, hd, many, SEAL_MAX_RECIPIENTS, &sealed,
                               &slen, why, sizeof why),
                     SEAL_OK);
    assert_int_equal(slen, largest);
    static uint8_t header[WIRE_MAX_HEADER_BYTES], sig[64], kid[16];
    Referral__V1__Envelope env = REFERRAL__V1__ENVELOPE__INIT;
    env.header = (ProtobufCBinaryData){sizeof header, header};
    env.sealed_body = (ProtobufCBinaryData){slen, sealed};
    env.signature = (ProtobufCBinaryData){sizeof sig, sig};
    env.signer_key_id = (ProtobufCBinaryData){sizeof kid, kid};
    env.suite = REFERRAL__V1__CIPHER_SUITE__CIPHER_SUITE_ED25519_X25519_AES256GCM;
    assert_int_equal(wire_check_envelope(&env, NULL, why, sizeof why), WIRE_OK);
    /* A Submit frame around it: the envelope plus a few dozen bytes. */
    assert_true(referral__v1__envelope__get_packed_size(&env) + 64 <=
                wire_default_limits.max_frame_bytes);
    free(sealed);
    free(pt);
}

/* The padded plaintext is a canonical BodyPlaintext at every edge:
 * wire_decode_plaintext re-encodes and compares the bytes. */
static void padded_case_files_decode_at_every_edge(void **state)
{
    (void)state;
    reader rd[2];
    seal_recipient r[2];
    make_readers(rd, r, 2);
    uint8_t hd[32];
    header_digest("h", hd);
    static const size_t sizes[] = {10,    100,   1000,  1020,  1021,  1024,  893,   894,
                                   895,   966,   3966,  4092,  5000,  16254, 16380, 16381,
                                   49149, 49150, 65406, 65532, 245757, 262014,
                                   262140, 262141, 770044};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t nl = 0, slen = 0, plen = 0;
        uint8_t *pt = case_plaintext(sizes[i], &nl), *sealed = NULL, *plain = NULL;
        char why[256] = "";
        assert_int_equal(seal_body(pt, sizes[i], hd, r, 2, &sealed, &slen, why, sizeof why),
                         SEAL_OK);
        assert_int_equal(seal_open(sealed, slen, hd, rd[1].id, rd[1].sec, rd[1].pub, &plain,
                                   &plen, why, sizeof why),
                         SEAL_OK);
        Referral__V1__BodyPlaintext *p = NULL;
        wire_err e = wire_decode_plaintext(plain, plen, NULL, &p, why, sizeof why);
        if (e != WIRE_OK)
            fail_msg("padded case file of %zu bytes (%zu padded): %s", sizes[i], plen, why);
        assert_int_equal(p->body_case, REFERRAL__V1__BODY_PLAINTEXT__BODY_CASE_FILE);
        assert_int_equal(strlen(p->case_file->narrative), nl);
        assert_int_equal(p->case_file->category,
                         REFERRAL__V1__CASE_CATEGORY__CASE_CATEGORY_PSYCHOLOGICAL_SUPPORT);
        assert_int_equal(referral__v1__body_plaintext__get_packed_size(p), plen);
        assert_true(p->padding.len >= 1);
        wire_free(p);
        free(plain);
        free(sealed);
        free(pt);
    }
}

/* An optional argument runs only the tests whose names match it (a
 * cmocka pattern such as "*seals_and_opens"). */
/* ---- the key-object cache (sign.c) ------------------------------------------- */

#define CACHE_KEYS 48          /* more than the cache holds: evictions happen */
#define CACHE_THREADS 4

static uint8_t cache_pub[CACHE_KEYS][SIGN_PUBLIC_BYTES], cache_sec[CACHE_KEYS][SIGN_SECRET_BYTES];
static uint8_t cache_sig[CACHE_KEYS][SIGN_BYTES];

static void *verify_all(void *arg)
{
    size_t bad = 0, start = (size_t)(uintptr_t)arg;
    for (size_t round = 0; round < 20; round++) {
        for (size_t j = 0; j < CACHE_KEYS; j++) {
            size_t i = (start + j * 7 + round) % CACHE_KEYS;
            uint8_t msg[8] = {(uint8_t)i};
            /* Its own signature verifies; a neighbour's key does not. */
            bad += !sign_verify(cache_pub[i], "test", msg, sizeof msg, cache_sig[i]);
            bad += sign_verify(cache_pub[(i + 1) % CACHE_KEYS], "test", msg, sizeof msg,
                               cache_sig[i]);
        }
    }
    return (void *)(uintptr_t)bad;
}

static void *sign_all(void *arg)
{
    size_t bad = 0;
    (void)arg;
    for (size_t round = 0; round < 10; round++) {
        for (size_t i = 0; i < CACHE_KEYS; i++) {
            uint8_t msg[8] = {(uint8_t)i}, sig[SIGN_BYTES];
            bad += !sign_detached(cache_sec[i], "test", msg, sizeof msg, sig);
            bad += memcmp(sig, cache_sig[i], SIGN_BYTES) != 0;   /* Ed25519 is deterministic */
        }
    }
    return (void *)(uintptr_t)bad;
}

/* Key objects are cached and shared by threads: with more keys than slots,
 * signing and verifying from several threads at once (evicting each
 * other's keys) gives exactly the results of fresh keys. */
static void key_cache_is_right_across_threads_and_evictions(void **state)
{
    (void)state;
    for (size_t i = 0; i < CACHE_KEYS; i++) {
        assert_true(sign_keypair(cache_pub[i], cache_sec[i]));
        uint8_t msg[8] = {(uint8_t)i};
        assert_true(sign_detached(cache_sec[i], "test", msg, sizeof msg, cache_sig[i]));
    }
    pthread_t t[CACHE_THREADS + 1];
    for (size_t i = 0; i < CACHE_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, verify_all, (void *)(uintptr_t)i), 0);
    assert_int_equal(pthread_create(&t[CACHE_THREADS], NULL, sign_all, NULL), 0);
    size_t bad = 0;
    for (size_t i = 0; i <= CACHE_THREADS; i++) {
        void *r;
        assert_int_equal(pthread_join(t[i], &r), 0);
        bad += (size_t)(uintptr_t)r;
    }
    assert_int_equal(bad, 0);
}

/* ---- libsodium against OpenSSL --------------------------------------------- */

/* OpenSSL's Ed25519 signature of domain || 0x00 || msg with seed sec. */
static void openssl_sign(const uint8_t sec[32], const char *domain, const uint8_t *msg,
                         size_t len, uint8_t sig[SIGN_BYTES])
{
    size_t dlen = strlen(domain) + 1, n = SIGN_BYTES;
    uint8_t *buf = malloc(dlen + len + 1);
    assert_non_null(buf);
    memcpy(buf, domain, dlen);
    memcpy(buf + dlen, msg, len);
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, sec, 32);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_non_null(k);
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, NULL, NULL, k), 1);
    assert_int_equal(EVP_DigestSign(ctx, sig, &n, buf, dlen + len), 1);
    assert_int_equal(n, SIGN_BYTES);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(k);
    free(buf);
}

/* sign.c (libsodium) signs exactly as OpenSSL does and accepts OpenSSL's
 * signatures, for many keys and message lengths; one flipped bit in
 * message, signature or key is refused. */
static void signatures_match_openssl_both_ways(void **state)
{
    (void)state;
    uint8_t msg[300];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (uint8_t)(i * 131u + 7u);
    for (size_t len = 0; len <= sizeof msg; len += 23) {
        uint8_t pub[SIGN_PUBLIC_BYTES], sec[SIGN_SECRET_BYTES];
        uint8_t ours[SIGN_BYTES], theirs[SIGN_BYTES];
        assert_true(sign_keypair(pub, sec));
        openssl_sign(sec, "referral.v1 notice", msg, len, theirs);
        assert_true(sign_detached(sec, "referral.v1 notice", msg, len, ours));
        assert_memory_equal(ours, theirs, SIGN_BYTES);
        assert_true(sign_verify(pub, "referral.v1 notice", msg, len, theirs));
        theirs[len % SIGN_BYTES] ^= 0x01;
        assert_false(sign_verify(pub, "referral.v1 notice", msg, len, theirs));
        theirs[len % SIGN_BYTES] ^= 0x01;
        if (len > 0) {
            msg[len - 1] ^= 0x80;
            assert_false(sign_verify(pub, "referral.v1 notice", msg, len, theirs));
            msg[len - 1] ^= 0x80;
        }
        pub[len % SIGN_PUBLIC_BYTES] ^= 0x04;
        assert_false(sign_verify(pub, "referral.v1 notice", msg, len, theirs));
    }
}

/* RFC 8032, section 7.1, TEST 1 (the empty message), as OpenSSL
 * computes them: the reference the test above compares with is right. */
static void openssl_reference_matches_rfc8032(void **state)
{
    (void)state;
    static const uint8_t sec1[32] = {
        0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
        0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
        0x1c, 0xae, 0x7f, 0x60};
    static const uint8_t sig1[64] = {
        0xe5, 0x56, 0x43, 0x00, 0xc3, 0x60, 0xac, 0x72, 0x90, 0x86, 0xe2, 0xcc, 0x80, 0x6e,
        0x82, 0x8a, 0x84, 0x87, 0x7f, 0x1e, 0xb8, 0xe5, 0xd9, 0x74, 0xd8, 0x73, 0xe0, 0x65,
        0x22, 0x49, 0x01, 0x55, 0x5f, 0xb8, 0x82, 0x15, 0x90, 0xa3, 0x3b, 0xac, 0xc6, 0x1e,
        0x39, 0x70, 0x1c, 0xf9, 0xb4, 0x6b, 0xd2, 0x5b, 0xf5, 0xf0, 0x59, 0x5b, 0xbe, 0x24,
        0x65, 0x51, 0x41, 0x43, 0x8e, 0x7a, 0x10, 0x0b};
    uint8_t sig[SIGN_BYTES];
    size_t n = SIGN_BYTES;
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, sec1, 32);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, NULL, NULL, k), 1);
    assert_int_equal(EVP_DigestSign(ctx, sig, &n, (const uint8_t *)"", 0), 1);
    assert_memory_equal(sig, sig1, SIGN_BYTES);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(k);
}

/* RFC 7748, section 6.1: libsodium (what seal.c uses) and OpenSSL agree
 * on the X25519 shared secret of Alice and Bob, and it is the RFC's. */
static void x25519_matches_openssl_and_rfc7748(void **state)
{
    (void)state;
    static const char *const alice_sec =
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    static const char *const alice_pub =
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    static const char *const bob_pub =
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
    static const char *const shared =
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
    uint8_t a[32], ap[32], bp[32], want[32], got[32], pub[32];
    assert_int_equal(sodium_hex2bin(a, 32, alice_sec, 64, NULL, NULL, NULL), 0);
    assert_int_equal(sodium_hex2bin(ap, 32, alice_pub, 64, NULL, NULL, NULL), 0);
    assert_int_equal(sodium_hex2bin(bp, 32, bob_pub, 64, NULL, NULL, NULL), 0);
    assert_int_equal(sodium_hex2bin(want, 32, shared, 64, NULL, NULL, NULL), 0);
    assert_true(sodium_ready());
    assert_int_equal(crypto_scalarmult_base(pub, a), 0);
    assert_memory_equal(pub, ap, 32);
    assert_int_equal(crypto_scalarmult(got, a, bp), 0);
    assert_memory_equal(got, want, 32);
    EVP_PKEY *mine = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, a, 32);
    EVP_PKEY *peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, bp, 32);
    EVP_PKEY_CTX *dc = EVP_PKEY_CTX_new(mine, NULL);
    size_t n = sizeof got;
    memset(got, 0, sizeof got);
    assert_int_equal(EVP_PKEY_derive_init(dc), 1);
    assert_int_equal(EVP_PKEY_derive_set_peer(dc, peer), 1);
    assert_int_equal(EVP_PKEY_derive(dc, got, &n), 1);
    assert_memory_equal(got, want, 32);
    EVP_PKEY_CTX_free(dc);
    EVP_PKEY_free(mine);
    EVP_PKEY_free(peer);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(key_cache_is_right_across_threads_and_evictions),
        cmocka_unit_test(signatures_match_openssl_both_ways),
        cmocka_unit_test(openssl_reference_matches_rfc8032),
        cmocka_unit_test(x25519_matches_openssl_and_rfc7748),
        cmocka_unit_test(envelope_signature_round_trips),
        cmocka_unit_test(envelope_signing_input_is_the_documented_bytes),
        cmocka_unit_test(flipped_bit_in_header_body_or_signature_fails),
        cmocka_unit_test(signature_for_one_domain_fails_in_another),
        cmocka_unit_test(key_id_is_stable_and_is_sha256_prefix),
        cmocka_unit_test(sign_key_file_round_trips_with_mode_0600),
        cmocka_unit_test(key_file_readable_by_others_is_refused),
        cmocka_unit_test(key_file_errors_name_the_file),
        cmocka_unit_test(seal_key_file_round_trips_with_mode_0600),
        cmocka_unit_test(sealed_body_opens_for_one_reader),
        cmocka_unit_test(sealed_body_opens_for_each_of_three_readers),
        cmocka_unit_test(sealing_twice_gives_different_bytes),
        cmocka_unit_test(reader_not_listed_is_not_for_us),
        cmocka_unit_test(tampered_ciphertext_is_bad),
        cmocka_unit_test(tampered_wrapped_key_is_bad),
        cmocka_unit_test(body_moved_to_another_envelope_is_bad),
        cmocka_unit_test(malformed_sealed_bodies_are_refused),
        cmocka_unit_test(bad_recipient_lists_are_refused),
        cmocka_unit_test(sealed_size_is_known_before_sealing),
        cmocka_unit_test(bucket_edges),
        cmocka_unit_test(every_length_pads_by_the_documented_rule),
        cmocka_unit_test(too_large_plaintext_is_refused),
        cmocka_unit_test(padded_case_files_decode_at_every_edge),
        cmocka_unit_test(every_length_around_every_bucket_seals_and_opens),
        cmocka_unit_test(largest_body_for_most_readers_fits_default_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
