/* SPDX-License-Identifier: MIT */
/* Gather/scatter of whole blocks: grid (block, slice of the block). */
#include "common.cuh"

#define COPY_THREADS 256
#define COPY_SLICE (64u * 1024u)        /* bytes per thread block */

static __device__ void copy_slice(uint8_t *dst, const uint8_t *src, size_t bytes)
{
        const size_t begin = (size_t)blockIdx.y * COPY_SLICE;
        const size_t end = min(bytes, begin + COPY_SLICE);

        if (begin >= end)
                return;
        dst += begin;
        src += begin;
        const size_t len = end - begin;
        if ((((uintptr_t)dst | (uintptr_t)src | len) & 15) == 0) {
                uint4 *d4 = reinterpret_cast<uint4 *>(dst);
                const uint4 *s4 = reinterpret_cast<const uint4 *>(src);

                for (size_t i = threadIdx.x; i < len / 16; i += blockDim.x)
                        d4[i] = s4[i];
        } else {
                for (size_t i = threadIdx.x; i < len; i += blockDim.x)
                        dst[i] = src[i];
        }
}

__global__ void gather_kernel(uint8_t *dst, const void *const *srcs, size_t bytes)
{
        copy_slice(dst + (size_t)blockIdx.x * bytes, static_cast<const uint8_t *>(srcs[blockIdx.x]),
                   bytes);
}

__global__ void scatter_kernel(void *const *dsts, const uint8_t *src, size_t bytes)
{
        copy_slice(static_cast<uint8_t *>(dsts[blockIdx.x]), src + (size_t)blockIdx.x * bytes,
                   bytes);
}

static int copy_grid(uint32_t n, size_t block_bytes, dim3 *ret)
{
        size_t slices = (block_bytes + COPY_SLICE - 1) / COPY_SLICE;

        if (slices > 65535)
                return -EINVAL;
        *ret = dim3(n, (unsigned)slices);
        return 0;
}

extern "C" int kvk_cuda_gather(void *d_dst, const void *const *d_srcs, uint32_t n,
                               size_t block_bytes, void *stream)
{
        dim3 grid;

        if (n == 0 || block_bytes == 0)
                return 0;
        if (!d_dst || !d_srcs || copy_grid(n, block_bytes, &grid) < 0)
                return -EINVAL;
        gather_kernel<<<grid, COPY_THREADS, 0, kvk_stream(stream)>>>(static_cast<uint8_t *>(d_dst),
                                                                    d_srcs, block_bytes);
        return kvk_launch_result();
}

extern "C" int kvk_cuda_scatter(void *const *d_dsts, const void *d_src, uint32_t n,
                                size_t block_bytes, void *stream)
{
        dim3 grid;

        if (n == 0 || block_bytes == 0)
                return 0;
        if (!d_dsts || !d_src || copy_grid(n, block_bytes, &grid) < 0)
                return -EINVAL;
        scatter_kernel<<<grid, COPY_THREADS, 0, kvk_stream(stream)>>>(
                d_dsts, static_cast<const uint8_t *>(d_src), block_bytes);
        return kvk_launch_result();
}
