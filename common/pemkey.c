/*
 * pemkey: raw keys in PEM files (pemkey.h). A secret file is created with
 * mode 0600 before anything is written to it, and never read when others
 * could read it.
 */
#include "pemkey.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

bool pemkey_generate(int type, uint8_t pub[32], uint8_t sec[32])
{
    EVP_PKEY *k = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(type, NULL);
    size_t n = 32, m = 32;
    bool ok = ctx != NULL && EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_keygen(ctx, &k) == 1 &&
              EVP_PKEY_get_raw_private_key(k, sec, &n) == 1 && n == 32 &&
              EVP_PKEY_get_raw_public_key(k, pub, &m) == 1 && m == 32;
    EVP_PKEY_free(k);
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

bool pemkey_public(int type, const uint8_t sec[32], uint8_t pub[32])
{
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(type, NULL, sec, 32);
    size_t n = 32;
    bool ok = k != NULL && EVP_PKEY_get_raw_public_key(k, pub, &n) == 1 && n == 32;
    EVP_PKEY_free(k);
    return ok;
}

bool pemkey_save(const char *path, int type, const uint8_t sec[32], char *why, size_t why_len)
{
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(type, NULL, sec, 32);
    if (k == NULL) {
        snprintf(why, why_len, "cannot make a key for %s", path);
        return false;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    FILE *f = fd >= 0 && fchmod(fd, 0600) == 0 ? fdopen(fd, "w") : NULL;
    if (f == NULL) {
        snprintf(why, why_len, "cannot create %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        EVP_PKEY_free(k);
        return false;
    }
    bool ok = PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) == 1 && fflush(f) == 0 &&
              fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    EVP_PKEY_free(k);
    if (!ok)
        snprintf(why, why_len, "cannot write %s: %s", path, strerror(errno));
    return ok;
}

bool pemkey_load(const char *path, int type, uint8_t sec[32], uint8_t pub[32], char *why,
                 size_t why_len)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(why, why_len, "cannot open %s: %s", path, strerror(errno));
        return false;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || (st.st_mode & 077) != 0) {
        snprintf(why, why_len, "%s is readable by group or others (mode %03o); run chmod 600 %s",
                 path, (unsigned)(st.st_mode & 0777), path);
        fclose(f);
        return false;
    }
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    size_t n = 32, m = 32;
    bool ok = k != NULL && EVP_PKEY_get_id(k) == type &&
              EVP_PKEY_get_raw_private_key(k, sec, &n) == 1 && n == 32 &&
              EVP_PKEY_get_raw_public_key(k, pub, &m) == 1 && m == 32;
    EVP_PKEY_free(k);
    if (!ok)
        snprintf(why, why_len, "%s is not a PEM %s private key", path,
                 type == EVP_PKEY_ED25519 ? "Ed25519" : "X25519");
    return ok;
}
