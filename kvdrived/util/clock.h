/* SPDX-License-Identifier: MIT */
/* The daemon's one clock: CLOCK_MONOTONIC, in nanoseconds. */
#pragma once

#include <stdint.h>
#include <time.h>

static inline uint64_t kvd_now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
