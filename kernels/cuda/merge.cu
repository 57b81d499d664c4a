/* SPDX-License-Identifier: MIT */
/*
 * kvk_cuda_lse_merge(): the twin of kvk_lse_merge() (cpu/merge.c), the same
 * edge cases and weights: one thread block per head; every thread reads the
 * head's two lse, computes the weights itself and blends its columns; thread
 * 0 writes the new lse once all have read the old one.
 */
#include "common.cuh"

#define MERGE_THREADS 128

__global__ void __launch_bounds__(MERGE_THREADS)
lse_merge_kernel(float *out, float *lse, const float *part_out, const float *part_lse, uint32_t d)
{
        const uint32_t h = blockIdx.x, tid = threadIdx.x;
        const float la = lse[h], lb = part_lse[h];
        float *a = out + (size_t)h * d;
        const float *b = part_out + (size_t)h * d;
        float nl;

        __syncthreads();        /* everyone has read lse[h] */
        if (lb == -INFINITY)
                return;
        if (la == -INFINITY) {
                for (uint32_t i = tid; i < d; i += MERGE_THREADS)
                        a[i] = b[i];
                nl = lb;
        } else if (isnan(la) || isnan(lb) || la == INFINITY || lb == INFINITY) {
                for (uint32_t i = tid; i < d; i += MERGE_THREADS)
                        a[i] = NAN;
                nl = NAN;
        } else {
                /* The larger lse weighs 1, the other w = e^-|la - lb|; both / (1 + w). */
                const float w = expf(-fabsf(la - lb)), inv = 1.0f / (1.0f + w);
                const float ca = la >= lb ? inv : w * inv, cb = la >= lb ? w * inv : inv;

                for (uint32_t i = tid; i < d; i += MERGE_THREADS)
                        a[i] = fmaf(ca, a[i], cb * b[i]);
                nl = fmaxf(la, lb) + log1pf(w);
        }
        if (tid == 0)
                lse[h] = nl;
}

extern "C" int kvk_cuda_lse_merge(const struct kvk_shape *s, float *d_out, float *d_lse,
                                  const float *d_part_out, const float *d_part_lse, void *stream)
{
        if (!kvk_shape_valid(s) || !d_out || !d_lse || !d_part_out || !d_part_lse)
                return -EINVAL;
        lse_merge_kernel<<<s->q_heads, MERGE_THREADS, 0, kvk_stream(stream)>>>(
                d_out, d_lse, d_part_out, d_part_lse, s->head_dim);
        return kvk_launch_result();
}
