/* SPDX-License-Identifier: MIT */
/* Private to libkvclient (and its unit test): the counter page. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvdrive/client.h"

struct kvc_counters {
        _Atomic uint32_t *done;         /* n words at the start of the mapping */
        _Atomic uint32_t *failed;       /* n words right after done */
        size_t map_bytes;               /* 2 * n * 4, rounded up to a page */
        uint32_t n;
};

/* Whether a counter at done has reached target, modulo 2^32: true while
 * done is at most 2^31 - 1 past target. */
static inline bool kvc__counter_reached(uint32_t done, uint32_t target)
{
        return (int32_t)(done - target) >= 0;
}
