/* SPDX-License-Identifier: MIT */
/*
 * TO BE REPLACED by kvk_cuda_lse_merge() (kernels/kernels-cuda.h, branch
 * h/merge): delete this file and its lines in tools/meson.build, and call
 * that in decode-dev-cuda.c. Until then, the merge of two partial attention
 * results through their log-sum-exp on the device (decode-dev-cuda.h).
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>

#include <cuda_runtime.h>

#include "decode-dev-cuda.h"

#define MERGE_THREADS 128

/* One thread block per head, a thread per column. */
__global__ void bench_merge_kernel(float *out, float *lse, const float *part, const float *plse, uint32_t d)
{
        const uint32_t h = blockIdx.x;
        const float a = lse[h], b = plse[h];
        float *o = out + (size_t)h * d;
        const float *p = part + (size_t)h * d;
        float m, wa, wb, sum;

        /* a and b are the same in every thread: the branches are uniform. */
        __syncthreads();        /* everyone has read lse[h] before it changes */
        if (b == -INFINITY)
                return;
        if (isnan(a) || isnan(b) || a == INFINITY || b == INFINITY) {
                for (uint32_t i = threadIdx.x; i < d; i += blockDim.x)
                        o[i] = NAN;
                if (threadIdx.x == 0)
                        lse[h] = NAN;
                return;
        }
        if (a == -INFINITY) {
                for (uint32_t i = threadIdx.x; i < d; i += blockDim.x)
                        o[i] = p[i];
                if (threadIdx.x == 0)
                        lse[h] = b;
                return;
        }
        m = fmaxf(a, b);
        wa = expf(a - m);
        wb = expf(b - m);
        sum = wa + wb;
        for (uint32_t i = threadIdx.x; i < d; i += blockDim.x)
                o[i] = (wa * o[i] + wb * p[i]) / sum;
        if (threadIdx.x == 0)
                lse[h] = m + logf(sum);
}

extern "C" int bench_cuda_lse_merge(const struct kvk_shape *s, float *d_out, float *d_lse, const float *d_part_out,
                                    const float *d_part_lse, void *stream)
{
        cudaError_t e;

        if (!kvk_shape_valid(s) || !d_out || !d_lse || !d_part_out || !d_part_lse)
                return -EINVAL;
        bench_merge_kernel<<<s->q_heads, MERGE_THREADS, 0, static_cast<cudaStream_t>(stream)>>>(
                d_out, d_lse, d_part_out, d_part_lse, s->head_dim);
        e = cudaGetLastError();
        if (e == cudaSuccess)
                return 0;
        return e == cudaErrorInvalidValue || e == cudaErrorInvalidConfiguration ? -EINVAL : -EIO;
}
