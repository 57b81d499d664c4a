/* SPDX-License-Identifier: MIT */
/* Private to kernels/cuda: element loads, reductions, error mapping. */
#pragma once

#include <errno.h>
#include <math.h>
#include <stdint.h>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels-cuda.h"

#define KVK_WARP 32

static inline cudaStream_t kvk_stream(void *stream)
{
        return static_cast<cudaStream_t>(stream);
}

/* 0 if the last launch went out, -errno otherwise. */
static inline int kvk_launch_result(void)
{
        cudaError_t e = cudaGetLastError();

        if (e == cudaSuccess)
                return 0;
        if (e == cudaErrorInvalidValue || e == cudaErrorInvalidConfiguration)
                return -EINVAL;
        return -EIO;
}

/* Element i of a row of dtype DT (KVK_F16 or KVK_BF16), as fp32. */
template <int DT>
__device__ __forceinline__ float kvk_ld(const uint16_t *row, uint32_t i)
{
        uint16_t u = row[i];

        if (DT == KVK_F16)
                return __half2float(__ushort_as_half(u));
        return __uint_as_float((uint32_t)u << 16);
}

__device__ __forceinline__ float kvk_warp_sum(float v)
{
        for (int o = KVK_WARP / 2; o > 0; o /= 2)
                v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
}

__device__ __forceinline__ float kvk_warp_max(float v)
{
        for (int o = KVK_WARP / 2; o > 0; o /= 2)
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
}

/* Sum (or max) over the thread block; every thread gets the result.
 * scratch: KVK_WARP floats of shared memory, free again on return. */
__device__ __forceinline__ float kvk_block_sum(float v, float *scratch)
{
        const unsigned lane = threadIdx.x % KVK_WARP, warp = threadIdx.x / KVK_WARP;
        const unsigned nwarps = (blockDim.x + KVK_WARP - 1) / KVK_WARP;

        v = kvk_warp_sum(v);
        __syncthreads();
        if (lane == 0)
                scratch[warp] = v;
        __syncthreads();
        v = lane < nwarps ? scratch[lane] : 0.0f;
        return kvk_warp_sum(v);
}

__device__ __forceinline__ float kvk_block_max(float v, float *scratch)
{
        const unsigned lane = threadIdx.x % KVK_WARP, warp = threadIdx.x / KVK_WARP;
        const unsigned nwarps = (blockDim.x + KVK_WARP - 1) / KVK_WARP;

        v = kvk_warp_max(v);
        __syncthreads();
        if (lane == 0)
                scratch[warp] = v;
        __syncthreads();
        v = lane < nwarps ? scratch[lane] : -INFINITY;
        return kvk_warp_max(v);
}
