/*
 * keys: key files of an identity (keys.h). Secrets are written 0600 and
 * never read from a file others can read; nothing here logs a secret.
 */
#include "keys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>
#include <openssl/crypto.h>
#include <zmq.h>

#include "seal.h"
#include "sign.h"

static void path_of(char *out, size_t n, const char *dir, const char *id, const char *ext)
{
    snprintf(out, n, "%s/%s.%s", dir, id, ext);
}

void keys_to_z85(const uint8_t key[32], char out[41])
{
    zmq_z85_encode(out, key, 32);
}

bool keys_from_z85(const char *z85, uint8_t out[32])
{
    return z85 != NULL && strlen(z85) == 40 && zmq_z85_decode(out, z85) != NULL;
}

bool keys_from_hex32(const char *hex, uint8_t out[32])
{
    return ids_from_hex_len(hex, out, 32);
}

void keys_wipe(keys_identity *id)
{
    OPENSSL_cleanse(id, sizeof *id);
}

/* Create path (which must not exist) with mode, write text, fsync. */
static bool write_new_file(const char *path, const char *text, mode_t mode, char *why,
                           size_t why_len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0) {
        snprintf(why, why_len, "cannot create %s: %s", path, strerror(errno));
        return false;
    }
    size_t len = strlen(text);
    bool ok = fchmod(fd, mode) == 0 && write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok)
        snprintf(why, why_len, "cannot write %s: %s", path, strerror(errno));
    return ok;
}

static bool read_small_file(const char *path, bool is_secret, char *buf, size_t cap, char *why,
                            size_t why_len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(why, why_len, "cannot open %s: %s", path, strerror(errno));
        return false;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || (is_secret && (st.st_mode & 077) != 0)) {
        snprintf(why, why_len, "%s is readable by group or others (mode %03o); run chmod 600 %s",
                 path, (unsigned)(st.st_mode & 0777), path);
        close(fd);
        return false;
    }
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n < 0 || (size_t)n >= cap - 1) {
        snprintf(why, why_len, "cannot read %s: %s", path, n < 0 ? strerror(errno) : "too large");
        return false;
    }
    buf[n] = '\0';
    return true;
}

/* The four files of an identity, in the order they are published: the
 * secrets first, the public summary (which names them) last. */
static const char *const key_exts[] = {"sign.pem", "seal.pem", "curve", "pub.json"};
#define KEY_FILES 4

static void remove_files(char (*paths)[600], size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (paths[i][0] != '\0')
            unlink(paths[i]);
}

/* Write the four files as temporary files in dir (same file system, so
 * the rename is atomic), each fsynced. */
static bool write_temporaries(const char *dir, const keys_identity *k, const char *z85_pub,
                              const char *z85_sec, char (*tmp)[600], char *why, size_t why_len)
{
    for (size_t i = 0; i < KEY_FILES; i++)
        snprintf(tmp[i], 600, "%s/.%s.%s.tmp-%ld", dir, k->id, key_exts[i], (long)getpid());
    remove_files(tmp, KEY_FILES);   /* left by an earlier run that died */
    if (!sign_secret_save_pem(tmp[0], k->sign_secret, why, why_len) ||
        !seal_secret_save_pem(tmp[1], k->seal_secret, why, why_len))
        return false;
    char text[512];
    snprintf(text, sizeof text, "public %s\nsecret %s\n", z85_pub, z85_sec);
    bool ok = write_new_file(tmp[2], text, 0600, why, why_len);
    OPENSSL_cleanse(text, sizeof text);
    if (!ok)
        return false;
    uint8_t key_id[SIGN_KEY_ID_BYTES];
    char hex_sign[65], hex_seal[65], hex_id[33];
    sign_key_id(k->sign_public, key_id);
    json_object *j = json_object_new_object();
    json_object_object_add(j, "id", json_object_new_string(k->id));
    json_object_object_add(j, "sign_public",
                           json_object_new_string(ids_hex(k->sign_public, 32, hex_sign)));
    json_object_object_add(j, "seal_public",
                           json_object_new_string(ids_hex(k->seal_public, 32, hex_seal)));
    json_object_object_add(j, "curve_public", json_object_new_string(z85_pub));
    json_object_object_add(j, "sign_key_id", json_object_new_string(ids_hex(key_id, 16, hex_id)));
    const char *js =
        json_object_to_json_string_ext(j, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t n = js != NULL ? strlen(js) + 2 : 0;
    char *pub = n > 0 ? malloc(n) : NULL;
    if (pub != NULL)
        snprintf(pub, n, "%s\n", js);
    json_object_put(j);
    if (pub == NULL) {
        snprintf(why, why_len, "no memory for %s", tmp[3]);
        return false;
    }
    ok = write_new_file(tmp[3], pub, 0644, why, why_len);
    free(pub);
    return ok;
}

bool keys_generate(const char *dir, const char *id, bool force, keys_identity *out, char *why,
                   size_t why_len)
{
    memset(out, 0, sizeof *out);
    if (!ids_is_valid_name(id)) {
        snprintf(why, why_len, "\"%s\" is not a valid id (1-64 characters of a-z 0-9 . _ -)", id);
        return false;
    }
    snprintf(out->id, sizeof out->id, "%s", id);
    /* Every path is checked before anything is written: without force, one
     * existing file means nothing changes at all. */
    char path[KEY_FILES][600], tmp[KEY_FILES][600];
    for (size_t i = 0; i < KEY_FILES; i++) {
        path_of(path[i], sizeof path[i], dir, id, key_exts[i]);
        struct stat st;
        if (!force && lstat(path[i], &st) == 0) {
            snprintf(why, why_len, "%s exists; nothing was written (use --force to replace "
                     "all four key files of %s, which makes bodies sealed for the old key "
                     "unreadable)", path[i], id);
            return false;
        }
        if (!force && errno != ENOENT) {
            snprintf(why, why_len, "cannot check %s: %s", path[i], strerror(errno));
            return false;
        }
    }
    char z85_pub[41], z85_sec[41];
    if (!sign_keypair(out->sign_public, out->sign_secret) ||
        !seal_keypair(out->seal_public, out->seal_secret) ||
        zmq_curve_keypair(z85_pub, z85_sec) != 0 || !keys_from_z85(z85_pub, out->curve_public) ||
        !keys_from_z85(z85_sec, out->curve_secret)) {
        snprintf(why, why_len, "key generation failed (OpenSSL or libzmq without CURVE)");
        return false;
    }
    memset(tmp, 0, sizeof tmp);
    bool ok = write_temporaries(dir, out, z85_pub, z85_sec, tmp, why, why_len);
    OPENSSL_cleanse(z85_sec, sizeof z85_sec);
    /* Publish: rename over the old files with force; otherwise link, which
     * fails if a file appeared since the check (and what was linked is
     * taken back, so nothing changes). */
    size_t done = 0;
    for (; ok && done < KEY_FILES; done++) {
        int rc = force ? rename(tmp[done], path[done]) : link(tmp[done], path[done]);
        if (rc != 0) {
            snprintf(why, why_len, "cannot create %s: %s%s", path[done], strerror(errno),
                     errno == EEXIST ? "; nothing was written (use --force to replace it)" : "");
            ok = false;
            break;
        }
        if (force)
            tmp[done][0] = '\0';   /* renamed: nothing left to remove */
    }
    if (!ok && !force)
        remove_files(path, done);
    remove_files(tmp, KEY_FILES);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (ok && (dfd < 0 || fsync(dfd) != 0)) {
        snprintf(why, why_len, "cannot sync directory %s: %s", dir, strerror(errno));
        ok = false;
    }
    if (dfd >= 0)
        close(dfd);
    return ok;
}

bool keys_load(const char *dir, const char *id, keys_identity *out, char *why, size_t why_len)
{
    memset(out, 0, sizeof *out);
    if (!ids_is_valid_name(id)) {
        snprintf(why, why_len, "\"%s\" is not a valid id", id);
        return false;
    }
    snprintf(out->id, sizeof out->id, "%s", id);
    char path[600], text[512];
    path_of(path, sizeof path, dir, id, "sign.pem");
    if (!sign_secret_load_pem(path, out->sign_secret, out->sign_public, why, why_len))
        return false;
    path_of(path, sizeof path, dir, id, "seal.pem");
    if (!seal_secret_load_pem(path, out->seal_secret, out->seal_public, why, why_len))
        return false;
    path_of(path, sizeof path, dir, id, "curve");
    if (!read_small_file(path, true, text, sizeof text, why, why_len))
        return false;
    char pub[64] = "", sec[64] = "";
    bool ok = sscanf(text, "public %63s secret %63s", pub, sec) == 2 &&
              keys_from_z85(pub, out->curve_public) && keys_from_z85(sec, out->curve_secret);
    OPENSSL_cleanse(text, sizeof text);
    OPENSSL_cleanse(sec, sizeof sec);
    if (!ok)
        snprintf(why, why_len, "%s is not a CURVE key file (expected lines \"public Z85\" and "
                 "\"secret Z85\")", path);
    return ok;
}

static bool get_key_field(json_object *j, const char *name, bool is_z85, uint8_t out[32],
                          const char *path, char *why, size_t why_len)
{
    json_object *v;
    const char *s = json_object_object_get_ex(j, name, &v) ? json_object_get_string(v) : NULL;
    bool ok = s != NULL && (is_z85 ? keys_from_z85(s, out) : keys_from_hex32(s, out));
    if (!ok)
        snprintf(why, why_len, "%s: \"%s\" is missing or not %s", path, name,
                 is_z85 ? "a 40-character Z85 key" : "64 hex digits");
    return ok;
}

bool keys_load_public(const char *path, keys_public *out, char *why, size_t why_len)
{
    memset(out, 0, sizeof *out);
    char text[4096];
    if (!read_small_file(path, false, text, sizeof text, why, why_len))
        return false;
    json_object *j = json_tokener_parse(text);
    if (j == NULL || !json_object_is_type(j, json_type_object)) {
        snprintf(why, why_len, "%s is not a JSON object", path);
        json_object_put(j);
        return false;
    }
    json_object *v;
    const char *id = json_object_object_get_ex(j, "id", &v) ? json_object_get_string(v) : NULL;
    bool ok = ids_is_valid_name(id);
    if (!ok)
        snprintf(why, why_len, "%s: \"id\" is missing or not a valid id", path);
    else
        snprintf(out->id, sizeof out->id, "%s", id);
    ok = ok && get_key_field(j, "sign_public", false, out->sign_public, path, why, why_len) &&
         get_key_field(j, "seal_public", false, out->seal_public, path, why, why_len) &&
         get_key_field(j, "curve_public", true, out->curve_public, path, why, why_len);
    json_object_put(j);
    return ok;
}

bool keys_parse_sign_public(const char *spec, uint8_t out[32], char *why, size_t why_len)
{
    if (keys_from_hex32(spec, out))
        return true;
    keys_public pub;
    if (!keys_load_public(spec, &pub, why, why_len))
        return false;
    memcpy(out, pub.sign_public, 32);
    return true;
}
