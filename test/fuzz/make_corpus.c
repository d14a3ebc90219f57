/*
 * make_corpus: write the seed corpora of the fuzz targets.
 *
 * Usage: make_corpus OUT_DIR. Writes every sample of test/unit/wire_samples.c
 * to OUT_DIR/<target>/<sample name> (creating the folders), where <target>
 * is the fuzz target of its decoder ("client-frame", ...). The corpora in
 * test/fuzz/corpus are made with it and committed; regenerate them after a
 * schema change with: ninja -C BUILD fuzz-corpus
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "wire_samples.h"

static int make_dir(const char *path)
{
    if (mkdir(path, 0777) == 0 || errno == EEXIST)
        return 0;
    fprintf(stderr, "make_corpus: cannot create %s: %s\n", path, strerror(errno));
    return -1;
}

static int write_sample(const char *out_dir, const sample *s)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", out_dir, sample_decoder_name(s->decoder));
    if (make_dir(path) != 0)
        return -1;
    snprintf(path, sizeof path, "%s/%s/%s", out_dir, sample_decoder_name(s->decoder), s->name);
    size_t len;
    uint8_t *bytes = s->pack(&len);
    if (bytes == NULL) {
        fprintf(stderr, "make_corpus: out of memory packing %s\n", s->name);
        return -1;
    }
    FILE *f = fopen(path, "wb");
    int rc = 0;
    if (f == NULL || fwrite(bytes, 1, len, f) != len) {
        fprintf(stderr, "make_corpus: cannot write %s: %s\n", path, strerror(errno));
        rc = -1;
    }
    if (f != NULL && fclose(f) != 0 && rc == 0) {
        fprintf(stderr, "make_corpus: cannot write %s: %s\n", path, strerror(errno));
        rc = -1;
    }
    free(bytes);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
        return 1;
    }
    if (make_dir(argv[1]) != 0)
        return 1;
    for (size_t i = 0; i < samples_count; i++) {
        if (write_sample(argv[1], &samples[i]) != 0)
            return 1;
    }
    printf("wrote %zu samples under %s\n", samples_count, argv[1]);
    return 0;
}
