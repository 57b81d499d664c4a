/* SPDX-License-Identifier: MIT */
/* Block summaries (element-wise min/max of K) and block scores. */
#include "common.cuh"

#define SUMMARY_THREADS 128
#define SCORE_THREADS 128

/* One thread block per (block, kv head); a thread per column, so that the
 * threads of a warp read consecutive elements of each K row. */
template <int DT>
__global__ void summary_kernel(const void *const *blocks, const uint32_t *valid, uint32_t kv_heads,
                               uint32_t block_tokens, uint32_t d, float *out)
{
        const uint32_t b = blockIdx.x, g = blockIdx.y;
        const uint32_t nt = min(valid[b], block_tokens);
        const uint16_t *k = static_cast<const uint16_t *>(blocks[b]) +
                            (size_t)g * block_tokens * d;
        float *mn = out + ((size_t)b * kv_heads + g) * 2 * d;
        float *mx = mn + d;

        for (uint32_t i = threadIdx.x; i < d; i += blockDim.x) {
                float lo = nt ? INFINITY : 0.0f, hi = nt ? -INFINITY : 0.0f;

                for (uint32_t t = 0; t < nt; t++) {
                        float x = kvk_ld<DT>(k + (size_t)t * d, i);

                        lo = fminf(lo, x);
                        hi = fmaxf(hi, x);
                }
                mn[i] = lo;
                mx[i] = hi;
        }
}

/* One thread block per block; a warp per query head at a time. */
__global__ void score_kernel(const float *q, const float *summaries, uint32_t q_heads,
                             uint32_t group, uint32_t kv_heads, uint32_t d, float *out)
{
        __shared__ float scratch[KVK_WARP];
        const uint32_t b = blockIdx.x;
        const uint32_t lane = threadIdx.x % KVK_WARP, warp = threadIdx.x / KVK_WARP;
        const uint32_t nwarps = blockDim.x / KVK_WARP;
        const float *sb = summaries + (size_t)b * kv_heads * 2 * d;
        float best = -INFINITY;

        for (uint32_t h = warp; h < q_heads; h += nwarps) {
                const float *mn = sb + (size_t)(h / group) * 2 * d, *mx = mn + d;
                const float *qh = q + (size_t)h * d;
                float sum = 0.0f;

                for (uint32_t i = lane; i < d; i += KVK_WARP)
                        sum += fmaxf(qh[i] * mn[i], qh[i] * mx[i]);
                best = fmaxf(best, kvk_warp_sum(sum));
        }
        best = kvk_block_max(best, scratch);
        if (threadIdx.x == 0)
                out[b] = best;
}

extern "C" int kvk_cuda_block_summaries(const struct kvk_shape *s, const void *const *d_blocks,
                                        const uint32_t *d_valid, uint32_t n,
                                        float *d_ret_summaries, void *stream)
{
        if (!kvk_shape_valid(s) || !d_blocks || !d_valid || !d_ret_summaries)
                return -EINVAL;
        if (n == 0)
                return 0;

        dim3 grid(n, s->kv_heads);
        if (s->dtype == KVK_F16)
                summary_kernel<KVK_F16><<<grid, SUMMARY_THREADS, 0, kvk_stream(stream)>>>(
                        d_blocks, d_valid, s->kv_heads, s->block_tokens, s->head_dim,
                        d_ret_summaries);
        else
                summary_kernel<KVK_BF16><<<grid, SUMMARY_THREADS, 0, kvk_stream(stream)>>>(
                        d_blocks, d_valid, s->kv_heads, s->block_tokens, s->head_dim,
                        d_ret_summaries);
        return kvk_launch_result();
}

extern "C" int kvk_cuda_block_scores(const struct kvk_shape *s, const float *d_q,
                                     const float *d_summaries, uint32_t n, float *d_ret_scores,
                                     void *stream)
{
        if (!kvk_shape_valid(s) || !d_q || !d_summaries || !d_ret_scores)
                return -EINVAL;
        if (n == 0)
                return 0;

        score_kernel<<<n, SCORE_THREADS, 0, kvk_stream(stream)>>>(
                d_q, d_summaries, s->q_heads, s->q_heads / s->kv_heads, s->kv_heads, s->head_dim,
                d_ret_scores);
        return kvk_launch_result();
}
