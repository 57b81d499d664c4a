/* SPDX-License-Identifier: MIT */
/* Gather blocks into one staging buffer and scatter them back. */
#include <errno.h>

#include "kernels-internal.h"

int kvk_gather(void *dst, const void *const *srcs, uint32_t n, size_t block_bytes)
{
        if (n == 0)
                return 0;
        if (!dst || !srcs)
                return -EINVAL;
        for (uint32_t i = 0; i < n; i++)
                if (!srcs[i])
                        return -EINVAL;

        for (uint32_t i = 0; i < n; i++)
                memcpy((uint8_t *)dst + i * block_bytes, srcs[i], block_bytes);
        return 0;
}

int kvk_scatter(void *const *dsts, const void *src, uint32_t n, size_t block_bytes)
{
        if (n == 0)
                return 0;
        if (!dsts || !src)
                return -EINVAL;
        for (uint32_t i = 0; i < n; i++)
                if (!dsts[i])
                        return -EINVAL;

        for (uint32_t i = 0; i < n; i++)
                memcpy(dsts[i], (const uint8_t *)src + i * block_bytes, block_bytes);
        return 0;
}
