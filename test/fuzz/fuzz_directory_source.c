/* Fuzz target: directory_source_build (tools/directory_source.c), the JSON
 * source of the directory that `referralctl directory sign` reads. The
 * input is parsed as referralctl parses its file (json-c, a JSON object
 * only); "keys" files are looked for in an empty temporary folder (so a
 * relative name is missing, never another file), made once and removed at
 * exit. What builds is packed and decoded as referralctl checks it before
 * signing. */
#include "fuzz_target.h"

#include <json-c/json.h>

#include "directory_source.h"

static char base[4096];

static void remove_base(void)
{
    rmdir(base);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (base[0] == '\0') {
        const char *tmp = getenv("TMPDIR");
        snprintf(base, sizeof base, "%s/referral-fuzz-dir-XXXXXX",
                 tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
        if (mkdtemp(base) == NULL) {
            fprintf(stderr, "fuzz-directory-source: cannot make %s\n", base);
            abort();
        }
        atexit(remove_base);
    }
    json_tokener *tok = json_tokener_new();
    if (tok == NULL)
        abort();
    json_object *root = size > 0 && size <= INT32_MAX
                            ? json_tokener_parse_ex(tok, (const char *)data, (int)size)
                            : NULL;
    json_tokener_free(tok);
    if (root == NULL || !json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        return 0;
    }
    char why[FUZZ_WHY_BYTES] = "";
    Referral__V1__Directory *d = directory_source_build(root, base, why, sizeof why);
    json_object_put(root);
    fuzz_check_why("directory_source_build", d != NULL, why);
    if (d != NULL) {
        size_t len;
        uint8_t *bytes = wire_pack(d, &len);
        directory_source_free(d);
        if (bytes == NULL)
            abort();
        Referral__V1__Directory *check = NULL;
        why[0] = '\0';
        wire_err e = wire_decode_directory(bytes, len, NULL, &check, why, sizeof why);
        fuzz_check_contract("wire_decode_directory", e, check, why);
        wire_free(check);
        free(bytes);
    }
    return 0;
}
