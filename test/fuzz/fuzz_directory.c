/* Fuzz target: a directory file. wire_decode_signed_directory and
 * wire_decode_directory on the same bytes (as if the signature had
 * verified, to reach every entry check), then directory_parse with a fixed
 * root key, as a broker loads the file. */
#include "directory.h"
#include "fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[FUZZ_WHY_BYTES] = "";
    Referral__V1__SignedDirectory *sd = NULL;
    wire_err e = wire_decode_signed_directory(data, size, NULL, &sd, why, sizeof why);
    fuzz_check_contract("wire_decode_signed_directory", e, sd, why);
    if (sd != NULL) {
        Referral__V1__Directory *d = NULL;
        why[0] = '\0';
        e = wire_decode_directory(sd->directory.data, sd->directory.len, NULL, &d, why,
                                  sizeof why);
        fuzz_check_contract("wire_decode_directory", e, d, why);
        wire_free(d);
    }
    wire_free(sd);
    Referral__V1__Directory *d = NULL;
    why[0] = '\0';
    e = wire_decode_directory(data, size, NULL, &d, why, sizeof why);
    fuzz_check_contract("wire_decode_directory", e, d, why);
    wire_free(d);

    static const uint8_t root[32] = {1, 2, 3, 4, 5, 6, 7, 8};
    directory *dir = NULL;
    why[0] = '\0';
    directory_err de = directory_parse(data, size, root, 0, 0, &dir, why, sizeof why);
    if ((de == DIRECTORY_OK) != (dir != NULL) || (de != DIRECTORY_OK && why[0] == '\0'))
        abort();
    directory_destroy(&dir);
    return 0;
}
