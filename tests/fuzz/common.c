/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz.h"

const uint32_t fuzz_memfd_sizes[8] = { 16384, 4096, 65536, 1u << 20, 8192, 32768, 0, 2u << 20 };

void fuzz_fail(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        fputs("fuzz: invariant broken: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        abort();
}
