/* Fuzz target: an ID.pub.json public key file (common/keys.c), through
 * keys_load_public and keys_parse_sign_public (which takes such a file's
 * path when the text is not 64 hex digits); and the input as that text. */
#include "fuzz_target.h"

#include "keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[4096];
    fuzz_write_temp(data, size, path, sizeof path);
    keys_public pub;
    uint8_t sign_public[32];
    char why[FUZZ_WHY_BYTES] = "";
    bool ok = keys_load_public(path, &pub, why, sizeof why);
    fuzz_check_why("keys_load_public", ok, why);
    why[0] = '\0';
    ok = keys_parse_sign_public(path, sign_public, why, sizeof why);
    unlink(path);
    fuzz_check_why("keys_parse_sign_public", ok, why);

    /* The same bytes as a pinned key in hex or Z85 (up to the first NUL). */
    char *text = malloc(size + 1);
    if (text == NULL)
        abort();
    memcpy(text, data, size);
    text[size] = '\0';
    (void)keys_from_hex32(text, sign_public);
    (void)keys_from_z85(text, sign_public);
    free(text);
    return 0;
}
