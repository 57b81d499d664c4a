/* SPDX-License-Identifier: MIT */
/*
 * Replays inputs through a fuzz target without libFuzzer: every file given,
 * and every file in every directory given. For meson test (the committed
 * corpus and crash inputs, in every build) and for reproducing a crash in a
 * gcc or TSan build. Exits 0 if every input ran; a crash is a crash.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        return 0;
}

static int run_file(const char *path)
{
        FILE *f = fopen(path, "rb");
        uint8_t *buf = NULL;
        long n;

        if (!f || fseek(f, 0, SEEK_END) < 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) < 0) {
                fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
                if (f)
                        fclose(f);
                return -1;
        }
        buf = malloc(n ? (size_t)n : 1);
        if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
                fprintf(stderr, "replay: cannot read %s\n", path);
                free(buf);
                fclose(f);
                return -1;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(buf, (size_t)n);
        free(buf);
        return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
        return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
        unsigned ran = 0, failed = 0;

        LLVMFuzzerInitialize(&argc, &argv);
        for (int i = 1; i < argc; i++) {
                struct dirent **ents;
                struct stat st;
                int n;

                if (stat(argv[i], &st) < 0) {
                        fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
                        failed++;
                        continue;
                }
                if (!S_ISDIR(st.st_mode)) {
                        failed += run_file(argv[i]) < 0;
                        ran++;
                        continue;
                }
                n = scandir(argv[i], &ents, NULL, by_name);
                for (int k = 0; k < n; k++) {
                        char path[4096];

                        if (ents[k]->d_name[0] != '.') {
                                snprintf(path, sizeof(path), "%s/%s", argv[i], ents[k]->d_name);
                                failed += run_file(path) < 0;
                                ran++;
                        }
                        free(ents[k]);
                }
                free(ents);
        }
        printf("replayed %u inputs, %u unreadable\n", ran, failed);
        return failed || ran == 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
