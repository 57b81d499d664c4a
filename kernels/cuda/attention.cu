/* SPDX-License-Identifier: MIT */
/*
 * Decode attention over selected blocks, split-K style: one thread block per
 * (selected block, query head) computes the block's partial softmax (its max
 * logit m, sum l of exp(logit - m), and sum of exp(logit - m) v) into the
 * workspace; a second kernel merges the partials of each head with the
 * online-softmax rule, and a third (optional) turns them into per-block
 * attention mass.
 *
 * Workspace layout (floats): partials [n_sel][q_heads][2 + head_dim]
 * (m, l, acc[head_dim]), then lse [q_heads].
 */
#include "common.cuh"

#define ATT_THREADS 128
#define ATT_CHUNK 128           /* tokens whose logits sit in shared memory at once */
#define ATT_COLS (KVK_MAX_HEAD_DIM / ATT_THREADS)
#define MERGE_THREADS 128
#define MASS_THREADS 128

static size_t partial_floats(const struct kvk_shape *s)
{
        return 2 + (size_t)s->head_dim;
}

template <int DT>
__global__ void __launch_bounds__(ATT_THREADS)
partial_kernel(const float *q, const void *const *blocks, const uint32_t *valid, uint32_t q_heads,
               uint32_t group, uint32_t kv_heads, uint32_t block_tokens, uint32_t d, float scale,
               float *ws)
{
        __shared__ float sq[KVK_MAX_HEAD_DIM];
        __shared__ float sp[ATT_CHUNK];
        const uint32_t b = blockIdx.x, h = blockIdx.y, g = h / group;
        const uint32_t tid = threadIdx.x, lane = tid % KVK_WARP, warp = tid / KVK_WARP;
        const uint32_t nwarps = ATT_THREADS / KVK_WARP;
        const uint32_t nt = min(valid[b], block_tokens);
        const uint16_t *k = static_cast<const uint16_t *>(blocks[b]) +
                            (size_t)g * block_tokens * d;
        const uint16_t *v = k + (size_t)kv_heads * block_tokens * d;
        float *out = ws + ((size_t)b * q_heads + h) * (2 + d);
        float acc[ATT_COLS];
        float m = -INFINITY, l = 0.0f;

        for (uint32_t i = tid; i < d; i += ATT_THREADS)
                sq[i] = q[(size_t)h * d + i];
        for (int c = 0; c < ATT_COLS; c++)
                acc[c] = 0.0f;
        __syncthreads();

        for (uint32_t c0 = 0; c0 < nt; c0 += ATT_CHUNK) {
                const uint32_t cn = min(ATT_CHUNK, nt - c0);
                float cm = -INFINITY, mn, corr;

                /* Logits: a warp per token, lanes across head_dim. */
                for (uint32_t t = warp; t < cn; t += nwarps) {
                        const uint16_t *kr = k + (size_t)(c0 + t) * d;
                        float dot = 0.0f;

                        for (uint32_t i = lane; i < d; i += KVK_WARP)
                                dot += sq[i] * kvk_ld<DT>(kr, i);
                        dot = kvk_warp_sum(dot);
                        if (lane == 0)
                                sp[t] = dot * scale;
                }
                __syncthreads();

                for (uint32_t t = 0; t < cn; t++)
                        cm = fmaxf(cm, sp[t]);
                mn = fmaxf(m, cm);
                corr = expf(m - mn);    /* 0 on the first chunk (m = -inf) */
                l *= corr;
                for (int c = 0; c < ATT_COLS; c++)
                        acc[c] *= corr;
                m = mn;
                __syncthreads();        /* everyone has read the logits */

                for (uint32_t t = tid; t < cn; t += ATT_THREADS)
                        sp[t] = expf(sp[t] - m);
                __syncthreads();

                /* A thread per column: the warp reads consecutive elements of a V row. */
                for (uint32_t t = 0; t < cn; t++) {
                        const uint16_t *vr = v + (size_t)(c0 + t) * d;
                        const float p = sp[t];

                        l += p;
                        for (int c = 0; c < ATT_COLS; c++) {
                                uint32_t i = tid + c * ATT_THREADS;

                                if (i < d)
                                        acc[c] += p * kvk_ld<DT>(vr, i);
                        }
                }
                __syncthreads();        /* before the next chunk overwrites sp */
        }

        if (tid == 0) {
                out[0] = m;
                out[1] = l;
        }
        for (int c = 0; c < ATT_COLS; c++) {
                uint32_t i = tid + c * ATT_THREADS;

                if (i < d)
                        out[2 + i] = acc[c];
        }
}

/* One thread block per query head: merges the n_sel partials. */
__global__ void merge_kernel(const float *ws, uint32_t n_sel, uint32_t q_heads, uint32_t d,
                             float *lse_ws, float *out, float *lse)
{
        __shared__ float scratch[KVK_WARP];
        const uint32_t h = blockIdx.x, tid = threadIdx.x;
        const size_t stride = (size_t)q_heads * (2 + d);
        const float *p = ws + (size_t)h * (2 + d);
        float gm = -INFINITY, gl = 0.0f;

        for (uint32_t b = tid; b < n_sel; b += blockDim.x)
                gm = fmaxf(gm, p[b * stride]);
        gm = kvk_block_max(gm, scratch);
        for (uint32_t b = tid; b < n_sel; b += blockDim.x)
                gl += p[b * stride + 1] * expf(p[b * stride] - gm);
        gl = kvk_block_sum(gl, scratch);

        for (uint32_t i = tid; i < d; i += blockDim.x) {
                float a = 0.0f;

                for (uint32_t b = 0; b < n_sel; b++)
                        a += p[b * stride + 2 + i] * expf(p[b * stride] - gm);
                out[(size_t)h * d + i] = a / gl;
        }
        if (tid == 0) {
                lse_ws[h] = gm + logf(gl);
                if (lse)
                        lse[h] = lse_ws[h];
        }
}

/* A thread per selected block: its share of each head's softmax weight. */
__global__ void mass_kernel(const float *ws, const float *lse_ws, uint32_t n_sel, uint32_t q_heads,
                            uint32_t d, float *mass)
{
        const uint32_t b = blockIdx.x * blockDim.x + threadIdx.x;
        const float *p = ws + (size_t)b * q_heads * (2 + d);
        float sum = 0.0f;

        if (b >= n_sel)
                return;
        for (uint32_t h = 0; h < q_heads; h++) {
                const float *ph = p + (size_t)h * (2 + d);

                if (ph[1] > 0.0f)
                        sum += ph[1] * expf(ph[0] - lse_ws[h]);
        }
        mass[b] = sum / (float)q_heads;
}

extern "C" size_t kvk_cuda_attention_workspace(const struct kvk_shape *s, uint32_t n_sel)
{
        if (!kvk_shape_valid(s))
                return 0;
        return ((size_t)n_sel * s->q_heads * partial_floats(s) + s->q_heads) * sizeof(float);
}

extern "C" int kvk_cuda_decode_attention(const struct kvk_shape *s, const float *d_q,
                                         const void *const *d_blocks, const uint32_t *d_valid,
                                         uint32_t n_sel, void *d_workspace,
                                         size_t workspace_bytes, float *d_ret_out,
                                         float *d_ret_lse, float *d_ret_mass, void *stream)
{
        cudaStream_t st = kvk_stream(stream);
        float *ws = static_cast<float *>(d_workspace);
        float *lse_ws;
        int r;

        if (!kvk_shape_valid(s) || !d_q || !d_blocks || !d_valid || n_sel == 0 || !d_workspace ||
            !d_ret_out || workspace_bytes < kvk_cuda_attention_workspace(s, n_sel))
                return -EINVAL;
        lse_ws = ws + (size_t)n_sel * s->q_heads * partial_floats(s);

        dim3 grid(n_sel, s->q_heads);
        const uint32_t group = s->q_heads / s->kv_heads;
        const float scale = 1.0f / sqrtf((float)s->head_dim);
        if (s->dtype == KVK_F16)
                partial_kernel<KVK_F16><<<grid, ATT_THREADS, 0, st>>>(
                        d_q, d_blocks, d_valid, s->q_heads, group, s->kv_heads, s->block_tokens,
                        s->head_dim, scale, ws);
        else
                partial_kernel<KVK_BF16><<<grid, ATT_THREADS, 0, st>>>(
                        d_q, d_blocks, d_valid, s->q_heads, group, s->kv_heads, s->block_tokens,
                        s->head_dim, scale, ws);
        r = kvk_launch_result();
        if (r < 0)
                return r;

        merge_kernel<<<s->q_heads, MERGE_THREADS, 0, st>>>(ws, n_sel, s->q_heads, s->head_dim,
                                                           lse_ws, d_ret_out, d_ret_lse);
        r = kvk_launch_result();
        if (r < 0 || !d_ret_mass)
                return r;

        mass_kernel<<<(n_sel + MASS_THREADS - 1) / MASS_THREADS, MASS_THREADS, 0, st>>>(
                ws, lse_ws, n_sel, s->q_heads, s->head_dim, d_ret_mass);
        return kvk_launch_result();
}
