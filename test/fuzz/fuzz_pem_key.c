/* Fuzz target: the PEM secret key files (common/pemkey.c through
 * sign_secret_load_pem and seal_secret_load_pem): the input as an
 * ID.sign.pem and as an ID.seal.pem (a temporary file of mode 0600). */
#include "fuzz_target.h"

#include "seal.h"
#include "sign.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[4096];
    fuzz_write_temp(data, size, path, sizeof path);
    uint8_t sign_sec[SIGN_SECRET_BYTES], sign_pub[SIGN_PUBLIC_BYTES];
    uint8_t seal_sec[SEAL_SECRET_BYTES], seal_pub[SEAL_PUBLIC_BYTES];
    char why[FUZZ_WHY_BYTES] = "";
    bool ok = sign_secret_load_pem(path, sign_sec, sign_pub, why, sizeof why);
    fuzz_check_why("sign_secret_load_pem", ok, why);
    why[0] = '\0';
    ok = seal_secret_load_pem(path, seal_sec, seal_pub, why, sizeof why);
    unlink(path);
    fuzz_check_why("seal_secret_load_pem", ok, why);
    return 0;
}
