/* SPDX-License-Identifier: MIT */
/* What the trace and generator tests share: temporary trace directories. */
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check-main.h"

#define ERRLEN 512

static inline void make_tmpdir(char *buf, size_t size)
{
        const char *tmp = getenv("TMPDIR");

        snprintf(buf, size, "%s/kvb-trace-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        ck_assert_ptr_nonnull(mkdtemp(buf));
}

/* Removes dir and the files in it (one level: traces have no subfolders). */
static inline void rm_dir(const char *dir)
{
        DIR *d = opendir(dir);
        struct dirent *e;
        char path[4096];

        if (!d)
                return;
        while ((e = readdir(d))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                        continue;
                snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
                unlink(path);
        }
        closedir(d);
        rmdir(dir);
}

static inline void path_in(char *buf, size_t size, const char *dir, const char *name)
{
        snprintf(buf, size, "%s/%s", dir, name);
}

static inline void write_text(const char *dir, const char *name, const char *text)
{
        char path[4096];
        FILE *f;

        path_in(path, sizeof(path), dir, name);
        f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(fputs(text, f) >= 0, 1);
        ck_assert_int_eq(fclose(f), 0);
}

static inline void *read_file(const char *path, size_t *ret_len)
{
        struct stat st;
        char *buf;
        int fd = open(path, O_RDONLY | O_CLOEXEC);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fstat(fd, &st), 0);
        buf = malloc(st.st_size ? (size_t)st.st_size : 1);
        ck_assert_ptr_nonnull(buf);
        ck_assert_int_eq(read(fd, buf, (size_t)st.st_size), st.st_size);
        close(fd);
        *ret_len = (size_t)st.st_size;
        return buf;
}

