/* Fuzz target: an ID.curve file (keys_load in common/keys.c), the input
 * written as the CURVE file of a test identity whose two PEM files were
 * made once, by keys_generate, in a temporary folder removed at exit. */
#include "fuzz_target.h"

#include <fcntl.h>

#include "keys.h"

#define FUZZ_ID "fuzz.test-fixture"

static char key_dir[4096];

static void key_path(char *out, size_t n, const char *ext)
{
    snprintf(out, n, "%s/%s.%s", key_dir, FUZZ_ID, ext);
}

static void remove_key_dir(void)
{
    static const char *const exts[] = {"sign.pem", "seal.pem", "curve", "pub.json"};
    char path[4200];
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        key_path(path, sizeof path, exts[i]);
        unlink(path);
    }
    rmdir(key_dir);
}

static void make_key_dir(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(key_dir, sizeof key_dir, "%s/referral-fuzz-keys-XXXXXX",
             tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    keys_identity id;
    char why[FUZZ_WHY_BYTES] = "";
    if (mkdtemp(key_dir) == NULL || !keys_generate(key_dir, FUZZ_ID, false, &id, why, sizeof why)) {
        fprintf(stderr, "fuzz-curve-key: cannot make test keys in %s: %s\n", key_dir, why);
        abort();
    }
    keys_wipe(&id);
    atexit(remove_key_dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (key_dir[0] == '\0')
        make_key_dir();
    char path[4200];
    key_path(path, sizeof path, "curve");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || (size > 0 && write(fd, data, size) != (ssize_t)size) || close(fd) != 0) {
        fprintf(stderr, "fuzz-curve-key: cannot write %s\n", path);
        abort();
    }
    keys_identity id;
    char why[FUZZ_WHY_BYTES] = "";
    bool ok = keys_load(key_dir, FUZZ_ID, &id, why, sizeof why);
    fuzz_check_why("keys_load", ok, why);
    keys_wipe(&id);
    return 0;
}
