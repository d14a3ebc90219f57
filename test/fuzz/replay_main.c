/*
 * replay_main: main() for a fuzz target built without a fuzzing engine.
 *
 * Usage: TARGET CORPUS_DIR. Feeds the empty input and then every regular
 * file in CORPUS_DIR (not its subfolders) to LLVMFuzzerTestOneInput(), so
 * that the seed corpus, and any crash input saved there, runs in every
 * build under the sanitizers. Exit status: 0 when every input ran; 1 when
 * an input could not be read (a crash aborts the program instead); 77
 * (meson: skipped) when the folder is missing or holds no input, so a
 * missing corpus is never counted as a pass.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_target.h"

#define EXIT_SKIPPED 77

/* Read the whole file at path into a new buffer (caller frees); NULL with
 * errno set on failure. */
static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    struct stat st;
    uint8_t *buf = NULL;
    if (fstat(fileno(f), &st) == 0 && st.st_size >= 0) {
        *len = (size_t)st.st_size;
        buf = malloc(*len > 0 ? *len : 1);
        if (buf != NULL && fread(buf, 1, *len, f) != *len) {
            free(buf);
            buf = NULL;
            errno = EIO;
        }
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 1;
    }
    const char *dir_path = argv[1];
    DIR *dir = opendir(dir_path);
    if (dir == NULL) {
        fprintf(stderr, "%s: no corpus at %s (%s); skipped\n", argv[0], dir_path,
                strerror(errno));
        return EXIT_SKIPPED;
    }

    static const uint8_t empty[1];
    LLVMFuzzerTestOneInput(empty, 0);

    size_t n_run = 0, n_failed = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        size_t path_len = strlen(dir_path) + 1 + strlen(entry->d_name) + 1;
        char *path = malloc(path_len);
        if (path == NULL) {
            n_failed++;
            break;
        }
        snprintf(path, path_len, "%s/%s", dir_path, entry->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            free(path);
            continue;
        }
        size_t len = 0;
        uint8_t *data = read_file(path, &len);
        if (data == NULL) {
            fprintf(stderr, "%s: cannot read %s (%s)\n", argv[0], path, strerror(errno));
            n_failed++;
        } else {
            LLVMFuzzerTestOneInput(data, len);
            n_run++;
            free(data);
        }
        free(path);
    }
    closedir(dir);

    if (n_failed > 0)
        return 1;
    if (n_run == 0) {
        fprintf(stderr, "%s: corpus %s holds no input; skipped\n", argv[0], dir_path);
        return EXIT_SKIPPED;
    }
    printf("replayed %zu inputs from %s\n", n_run, dir_path);
    return 0;
}
