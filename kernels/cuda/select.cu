/* SPDX-License-Identifier: MIT */
/*
 * Selection methods (kernels.h, "Selection methods") on the device: every
 * method's block summaries, and its scores: the per-head logit estimates,
 * then per head a softmax over the blocks, averaged over the heads into
 * estimated attention masses. KVK_QUEST (and KVK_QUEST_HEADS's summary) is
 * summary.cu's.
 *
 * The summaries are computed as cpu/select.c computes them, in the same
 * order per column (one thread per column runs over the tokens), so they are
 * bit for bit the CPU's: min/max of exactly converted values, rmax with its
 * products rounded separately (no FMA, as the CPU's baseline x86-64 code),
 * mean and variance in two passes in double. KVK_HYBRID's spike (the key
 * farthest from the block's mean) sums its distances over the columns in
 * another order than the CPU: only keys at equal distances up to rounding
 * could be chosen differently.
 */
#include <float.h>

#include "common.cuh"

#define MSUMMARY_THREADS 128
#define ESTIMATE_THREADS 128
#define SOFTMAX_THREADS 256
#define SHARE_THREADS 128       /* a warp per block */

/* The rows of a method's summary, per kv head. */
struct rows_of {
        uint32_t rows;          /* rows of head_dim floats */
        uint32_t mean_row;      /* the mean's row (the variance's follows) */
        bool box, rope, mean, var, spike;
};

static bool method_rows(const struct kvk_shape *s, enum kvk_method m, struct rows_of *ret)
{
        const size_t sf = kvk_method_summary_floats(s, m);

        if (!sf)
                return false;
        ret->rows = (uint32_t)(sf / ((size_t)s->kv_heads * s->head_dim));
        ret->box = m == KVK_QUEST || m == KVK_QUEST_HEADS || m == KVK_ROPE_BOUND;
        ret->rope = m == KVK_ROPE_BOUND;
        ret->mean = m == KVK_MEAN || m == KVK_GAUSS || m == KVK_HYBRID;
        ret->var = m == KVK_GAUSS || m == KVK_HYBRID;
        ret->spike = m == KVK_HYBRID;
        ret->mean_row = m == KVK_HYBRID ? 1 : 0;
        return true;
}

/* ---- summaries ----------------------------------------------------------- */

__device__ __forceinline__ double warp_sum_double(double v)
{
        for (int o = KVK_WARP / 2; o > 0; o /= 2)
                v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
}

/* kvk_block_sum() in double; scratch: KVK_WARP doubles of shared memory. */
__device__ __forceinline__ double block_sum_double(double v, double *scratch)
{
        const unsigned lane = threadIdx.x % KVK_WARP, warp = threadIdx.x / KVK_WARP;
        const unsigned nwarps = (blockDim.x + KVK_WARP - 1) / KVK_WARP;

        v = warp_sum_double(v);
        __syncthreads();
        if (lane == 0)
                scratch[warp] = v;
        __syncthreads();
        v = lane < nwarps ? scratch[lane] : 0.0;
        return warp_sum_double(v);
}


/* One thread block per (block, kv head); a thread per column, so that the
 * threads of a warp read consecutive elements of each K row. Column i < d/2
 * also reads column i + d/2 for its RoPE pair. A block with no valid token
 * gets zeros. */
template <int DT>
__global__ void method_summary_kernel(const void *const *blocks, const uint32_t *valid,
                                      uint32_t kv_heads, uint32_t block_tokens, uint32_t d,
                                      struct rows_of ro, float *out)
{
        const uint32_t b = blockIdx.x, g = blockIdx.y, half = d / 2;
        const uint32_t nt = min(valid[b], block_tokens);
        const uint16_t *k = static_cast<const uint16_t *>(blocks[b]) +
                            (size_t)g * block_tokens * d;
        float *row = out + ((size_t)b * kv_heads + g) * ro.rows * d;
        __shared__ uint32_t spike_tok;
        uint32_t skip = UINT32_MAX;

        if (ro.spike && nt > 0) {
                /* The mean of every column (row[d ...] as scratch: the mean
                 * row is rewritten below), then per token its squared
                 * distance from it; the farthest (the first of equals). */
                __shared__ double dscratch[KVK_WARP];
                double far = -1;
                uint32_t best = 0;

                for (uint32_t i = threadIdx.x; i < d; i += blockDim.x) {
                        double sum = 0;

                        for (uint32_t t = 0; t < nt; t++)
                                sum += kvk_ld<DT>(k + (size_t)t * d, i);
                        row[d + i] = (float)(sum / nt);
                }
                __syncthreads();
                for (uint32_t t = 0; t < nt; t++) {
                        double r = 0;

                        for (uint32_t i = threadIdx.x; i < d; i += blockDim.x) {
                                double x = (double)kvk_ld<DT>(k + (size_t)t * d, i) - row[d + i];

                                r += x * x;
                        }
                        r = block_sum_double(r, dscratch);
                        if (r > far) {
                                far = r;
                                best = t;
                        }
                }
                if (threadIdx.x == 0)
                        spike_tok = best;
                __syncthreads();
                skip = nt > 1 ? spike_tok : UINT32_MAX;
                for (uint32_t i = threadIdx.x; i < d; i += blockDim.x)
                        row[i] = kvk_ld<DT>(k + (size_t)spike_tok * d, i);
        } else if (ro.spike) {
                for (uint32_t i = threadIdx.x; i < d; i += blockDim.x)
                        row[i] = 0.0f;
        }

        for (uint32_t i = threadIdx.x; i < d; i += blockDim.x) {
                if (ro.box) {
                        float lo = nt ? INFINITY : 0.0f, hi = nt ? -INFINITY : 0.0f;

                        for (uint32_t t = 0; t < nt; t++) {
                                float x = kvk_ld<DT>(k + (size_t)t * d, i);

                                lo = fminf(lo, x);
                                hi = fmaxf(hi, x);
                        }
                        row[i] = lo;
                        row[d + i] = hi;
                }
                if (ro.rope) {
                        float rm = 0.0f;

                        for (uint32_t t = 0; i < half && t < nt; t++) {
                                const uint16_t *kt = k + (size_t)t * d;
                                float a = kvk_ld<DT>(kt, i), c = kvk_ld<DT>(kt, i + half);
                                float r = sqrtf(__fadd_rn(__fmul_rn(a, a), __fmul_rn(c, c)));

                                if (r > rm)     /* a NaN never wins, as on the CPU */
                                        rm = r;
                        }
                        row[2 * d + i] = rm;
                }
                if (ro.mean) {
                        const uint32_t cnt = skip < nt ? nt - 1 : nt;
                        double sum = 0, ss = 0, mu = 0;

                        for (uint32_t t = 0; t < nt; t++)
                                if (t != skip)
                                        sum += kvk_ld<DT>(k + (size_t)t * d, i);
                        if (cnt)
                                mu = sum / cnt;
                        for (uint32_t t = 0; ro.var && t < nt; t++) {
                                double x = kvk_ld<DT>(k + (size_t)t * d, i) - mu;

                                if (t != skip)
                                        ss += __dmul_rn(x, x);
                        }
                        row[ro.mean_row * d + i] = (float)mu;
                        if (ro.var)
                                row[(ro.mean_row + 1) * d + i] = cnt ? (float)(ss / cnt) : 0.0f;
                }
        }
}

extern "C" int kvk_cuda_method_summaries(const struct kvk_shape *s, enum kvk_method m,
                                         const void *const *d_blocks, const uint32_t *d_valid,
                                         uint32_t n, float *d_ret_summaries, void *stream)
{
        struct rows_of ro;

        if (!method_rows(s, m, &ro) || !d_blocks || !d_valid || !d_ret_summaries)
                return -EINVAL;
        if (m == KVK_QUEST || m == KVK_QUEST_HEADS)
                return kvk_cuda_block_summaries(s, d_blocks, d_valid, n, d_ret_summaries, stream);
        if (n == 0)
                return 0;

        dim3 grid(n, s->kv_heads);
        if (s->dtype == KVK_F16)
                method_summary_kernel<KVK_F16><<<grid, MSUMMARY_THREADS, 0, kvk_stream(stream)>>>(
                        d_blocks, d_valid, s->kv_heads, s->block_tokens, s->head_dim, ro,
                        d_ret_summaries);
        else
                method_summary_kernel<KVK_BF16><<<grid, MSUMMARY_THREADS, 0, kvk_stream(stream)>>>(
                        d_blocks, d_valid, s->kv_heads, s->block_tokens, s->head_dim, ro,
                        d_ret_summaries);
        return kvk_launch_result();
}

/* ---- estimates ------------------------------------------------------------ */

/* A lane's part of Quest's bound of q.k over the box [mn, mx]. */
__device__ __forceinline__ float box_part(const float *q, const float *mn, const float *mx,
                                          uint32_t d, uint32_t lane)
{
        float acc = 0.0f;

        for (uint32_t i = lane; i < d; i += KVK_WARP)
                acc += fmaxf(q[i] * mn[i], q[i] * mx[i]);
        return acc;
}

/* A lane's part of the RoPE-pair bound: per pair the tighter of the box and
 * the disc. */
__device__ __forceinline__ float rope_part(const float *q, const float *mn, const float *mx,
                                           const float *rmax, uint32_t d, uint32_t lane)
{
        const uint32_t h = d / 2;
        float acc = 0.0f;

        for (uint32_t i = lane; i < h; i += KVK_WARP) {
                float box = fmaxf(q[i] * mn[i], q[i] * mx[i]) +
                            fmaxf(q[i + h] * mn[i + h], q[i + h] * mx[i + h]);
                float disc = sqrtf(q[i] * q[i] + q[i + h] * q[i + h]) * rmax[i];

                acc += fminf(box, disc);
        }
        return acc;
}

/* q.mean + sum_d q[d]^2 var[d] * inv2sd (var NULL: q.mean), summed over the
 * warp: every lane gets it. */
__device__ __forceinline__ float gauss_est(const float *q, const float *mean, const float *var,
                                           uint32_t d, uint32_t lane, float inv2sd)
{
        float mu = 0.0f, sg = 0.0f;

        for (uint32_t i = lane; i < d; i += KVK_WARP) {
                mu += q[i] * mean[i];
                if (var)
                        sg += q[i] * q[i] * var[i];
        }
        mu = kvk_warp_sum(mu);
        if (!var)
                return mu;
        return mu + kvk_warp_sum(sg) * inv2sd;
}

/* An estimate as the softmax takes it: over sqrt(d), NaN as -inf (says
 * nothing), +inf as the largest finite logit (cpu/select.c's). */
__device__ __forceinline__ float clamp_logit(float e, float sd)
{
        return isnan(e) ? -INFINITY : e > FLT_MAX ? FLT_MAX : e / sd;
}

/* One thread block per block; a warp per query head at a time (as
 * score_kernel). Writes est[b][h], the estimate of head h divided by
 * sqrt(head_dim), NaN as -inf and +inf as FLT_MAX (cpu/select.c). */
template <int M>
__global__ void estimate_kernel(const float *q, const float *summaries, uint32_t q_heads,
                                uint32_t group, uint32_t kv_heads, uint32_t rows, uint32_t d,
                                float sd, float inv2sd, float lrest, float *est)
{
        const uint32_t b = blockIdx.x;
        const uint32_t lane = threadIdx.x % KVK_WARP, warp = threadIdx.x / KVK_WARP;
        const uint32_t nwarps = blockDim.x / KVK_WARP;
        const float *sb = summaries + (size_t)b * kv_heads * rows * d;

        for (uint32_t h = warp; h < q_heads; h += nwarps) {
                const float *row = sb + (size_t)(h / group) * rows * d;
                const float *qh = q + (size_t)h * d;
                float e;

                if (M == KVK_QUEST_HEADS) {
                        e = kvk_warp_sum(box_part(qh, row, row + d, d, lane));
                } else if (M == KVK_ROPE_BOUND) {
                        e = kvk_warp_sum(rope_part(qh, row, row + d, row + 2 * d, d, lane));
                } else if (M == KVK_MEAN) {
                        e = gauss_est(qh, row, NULL, d, lane, inv2sd);
                } else if (M == KVK_GAUSS) {
                        e = gauss_est(qh, row, row + d, d, lane, inv2sd);
                } else {        /* KVK_HYBRID, below */
                        e = 0.0f;
                }
                if (M == KVK_HYBRID) {
                        /* As cpu/select.c: each term clamped on its own, the
                         * bulk's weighted by T - 1, then log(e^gs + e^sp) (the
                         * CPU adds the two after the exp: the same mass). */
                        float sp = clamp_logit(gauss_est(qh, row, NULL, d, lane, inv2sd), sd);
                        float gs = clamp_logit(gauss_est(qh, row + d, row + 2 * d, d, lane, inv2sd), sd) + lrest;
                        float top = fmaxf(sp, gs);

                        if (lane == 0)
                                est[(size_t)b * q_heads + h] =
                                        top == -INFINITY ? top : top + logf(expf(gs - top) + expf(sp - top));
                } else if (lane == 0) {
                        est[(size_t)b * q_heads + h] = clamp_logit(e, sd);
                }
        }
}

/* ---- the softmax per head, and the masses ------------------------------ */

/* One thread block per query head h: top[h] = max over the blocks of
 * est[b][h], w[h] = 1 / (q_heads * sum_b exp(est[b][h] - top[h])) (the sum in
 * double, as on the CPU), or w[h] = 0 when no estimate is finite (the head
 * says nothing). */
__global__ void softmax_kernel(const float *est, uint32_t n, uint32_t q_heads, float *top,
                               float *w)
{
        __shared__ float scratch[KVK_WARP];
        __shared__ double dscratch[KVK_WARP];
        const uint32_t h = blockIdx.x;
        float m = -INFINITY;
        double z = 0;

        for (uint32_t b = threadIdx.x; b < n; b += blockDim.x)
                m = fmaxf(m, est[(size_t)b * q_heads + h]);
        m = kvk_block_max(m, scratch);
        if (m == -INFINITY) {           /* the same for every thread */
                if (threadIdx.x == 0) {
                        top[h] = m;
                        w[h] = 0.0f;
                }
                return;
        }
        for (uint32_t b = threadIdx.x; b < n; b += blockDim.x)
                z += expf(est[(size_t)b * q_heads + h] - m);
        z = block_sum_double(z, dscratch);
        if (threadIdx.x == 0) {
                top[h] = m;
                w[h] = (float)(1.0 / (z * q_heads));
        }
}

/* A warp per block b: ret[b] = sum over heads of b's share of the head. */
__global__ void share_kernel(const float *est, uint32_t n, uint32_t q_heads, const float *top,
                             const float *w, float *ret)
{
        const uint32_t lane = threadIdx.x % KVK_WARP;
        const uint32_t b = blockIdx.x * (blockDim.x / KVK_WARP) + threadIdx.x / KVK_WARP;
        const float *e = est + (size_t)b * q_heads;
        float acc = 0.0f;

        if (b >= n)                     /* the whole warp */
                return;
        for (uint32_t h = lane; h < q_heads; h += KVK_WARP)
                if (w[h] != 0.0f)       /* else top[h] is -inf: e - top would be NaN */
                        acc += expf(e[h] - top[h]) * w[h];
        acc = kvk_warp_sum(acc);
        if (lane == 0)
                ret[b] = acc;
}

extern "C" size_t kvk_cuda_method_work_bytes(const struct kvk_shape *s, enum kvk_method m,
                                             uint32_t n)
{
        if (!kvk_method_summary_floats(s, m) || m == KVK_QUEST)
                return 0;
        return ((size_t)n + 2) * s->q_heads * sizeof(float);
}

extern "C" int kvk_cuda_method_scores(const struct kvk_shape *s, enum kvk_method m,
                                      const float *d_q, const float *d_summaries, uint32_t n,
                                      void *d_work, float *d_ret_scores, void *stream)
{
        struct rows_of ro;
        cudaStream_t st = kvk_stream(stream);
        float *est, *top, *w, sd, lrest;
        uint32_t group;
        int r;

        if (!method_rows(s, m, &ro) || !d_q || !d_summaries || !d_ret_scores ||
            (m != KVK_QUEST && !d_work && n))
                return -EINVAL;
        if (m == KVK_QUEST)
                return kvk_cuda_block_scores(s, d_q, d_summaries, n, d_ret_scores, stream);
        if (n == 0)
                return 0;

        est = static_cast<float *>(d_work);
        top = est + (size_t)n * s->q_heads;
        w = top + s->q_heads;
        group = s->q_heads / s->kv_heads;
        sd = sqrtf((float)s->head_dim);
        lrest = s->block_tokens > 1 ? logf((float)(s->block_tokens - 1)) : -INFINITY;
#define ESTIMATE(M)                                                                        \
        estimate_kernel<M><<<n, ESTIMATE_THREADS, 0, st>>>(d_q, d_summaries, s->q_heads, group, \
                                                           s->kv_heads, ro.rows, s->head_dim, sd, \
                                                           0.5f / sd, lrest, est)
        switch (m) {
        case KVK_QUEST_HEADS:
                ESTIMATE(KVK_QUEST_HEADS);
                break;
        case KVK_ROPE_BOUND:
                ESTIMATE(KVK_ROPE_BOUND);
                break;
        case KVK_MEAN:
                ESTIMATE(KVK_MEAN);
                break;
        case KVK_GAUSS:
                ESTIMATE(KVK_GAUSS);
                break;
        default:
                ESTIMATE(KVK_HYBRID);
                break;
        }
#undef ESTIMATE
        r = kvk_launch_result();
        if (r < 0)
                return r;
        softmax_kernel<<<s->q_heads, SOFTMAX_THREADS, 0, st>>>(est, n, s->q_heads, top, w);
        r = kvk_launch_result();
        if (r < 0)
                return r;
        share_kernel<<<n / (SHARE_THREADS / KVK_WARP) + (n % (SHARE_THREADS / KVK_WARP) != 0),
                       SHARE_THREADS, 0, st>>>(est, n, s->q_heads, top, w, d_ret_scores);
        return kvk_launch_result();
}
