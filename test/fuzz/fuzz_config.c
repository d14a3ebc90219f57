/* Fuzz target: config_load (broker/config.c), the broker's INI file, read
 * from a temporary file holding the input. It must accept the file or
 * refuse it with a sentence naming the line, never crash. */
#include "fuzz_target.h"

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[4096];
    fuzz_write_temp(data, size, path, sizeof path);
    config *cfg = malloc(sizeof *cfg);
    if (cfg == NULL)
        abort();
    char err[FUZZ_WHY_BYTES] = "";
    bool ok = config_load(path, cfg, err, sizeof err);
    unlink(path);
    fuzz_check_why("config_load", ok, err);
    free(cfg);
    return 0;
}
