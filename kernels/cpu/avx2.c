/* SPDX-License-Identifier: MIT */
/*
 * AVX2 + FMA back end. Compiled without a global -mavx2: every function that
 * uses AVX2 says so with a target attribute, and dispatch.c only installs
 * this table on a CPU that has the instructions.
 *
 * Rows of K or V are first converted to fp32 in a small buffer on the stack
 * (F16C for fp16 where the CPU has it, shifts for bf16), then the arithmetic
 * runs on fp32 rows. The conversion costs one extra pass over L1-resident
 * data and keeps one copy of every kernel for both dtypes and for CPUs
 * without F16C. The decode attention's fused loop (fold, F16C table only)
 * is the exception: it converts straight from the block, once per element.
 */
#include <immintrin.h>
#include <math.h>

#include "kernels-internal.h"

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX2_F16C __attribute__((target("avx2,fma,f16c")))

/* Rows converted per pass: the buffer is 8 * KVK_MAX_HEAD_DIM floats. */
#define ROWS 8u

typedef void (*f16_row_fn)(const uint16_t *src, size_t n, float *dst);

/* Masks of the first r lanes: load 8 ints from mask_tab + 8 - r. */
static const int32_t mask_tab[16] = { -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0 };

static AVX2 inline __m256i tail_mask(uint32_t r)
{
        return _mm256_loadu_si256((const __m256i *)(mask_tab + 8 - r));
}

static AVX2 inline float hsum(__m256 v)
{
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
}

static AVX2_F16C void f16_row_f16c(const uint16_t *src, size_t n, float *dst)
{
        size_t i = 0;

        for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(dst + i,
                                 _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
        for (; i < n; i++)
                dst[i] = kvk__h2f(src[i]);
}

static void f16_row_soft(const uint16_t *src, size_t n, float *dst)
{
        for (size_t i = 0; i < n; i++)
                dst[i] = kvk__h2f(src[i]);
}

static AVX2 void bf16_row(const uint16_t *src, size_t n, float *dst)
{
        size_t i = 0;

        for (; i + 8 <= n; i += 8) {
                __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));

                _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)));
        }
        for (; i < n; i++)
                dst[i] = kvk__bf2f(src[i]);
}

static AVX2 inline void to_f32(f16_row_fn f16, enum kvk_dtype dt, const uint16_t *src, size_t n,
                               float *dst)
{
        if (dt == KVK_F16)
                f16(src, n, dst);
        else
                bf16_row(src, n, dst);
}

static AVX2 inline void summary_impl(f16_row_fn f16, const void *k, uint32_t ntok, uint32_t d,
                                     enum kvk_dtype dt, float *ret_min, float *ret_max)
{
        float tmp[ROWS * KVK_MAX_HEAD_DIM] __attribute__((aligned(32)));
        const uint16_t *rows = k;
        __m256i m = tail_mask(d % 8);

        for (uint32_t t0 = 0; t0 < ntok; t0 += ROWS) {
                uint32_t n = ntok - t0 < ROWS ? ntok - t0 : ROWS;
                uint32_t i = 0;

                to_f32(f16, dt, rows + (size_t)t0 * d, (size_t)n * d, tmp);
                if (t0 == 0) {
                        memcpy(ret_min, tmp, d * sizeof(float));
                        memcpy(ret_max, tmp, d * sizeof(float));
                }
                for (; i + 8 <= d; i += 8) {
                        __m256 lo = _mm256_loadu_ps(ret_min + i);
                        __m256 hi = _mm256_loadu_ps(ret_max + i);

                        for (uint32_t t = 0; t < n; t++) {
                                __m256 x = _mm256_loadu_ps(tmp + t * d + i);

                                lo = _mm256_min_ps(lo, x);
                                hi = _mm256_max_ps(hi, x);
                        }
                        _mm256_storeu_ps(ret_min + i, lo);
                        _mm256_storeu_ps(ret_max + i, hi);
                }
                if (i < d) {
                        __m256 lo = _mm256_maskload_ps(ret_min + i, m);
                        __m256 hi = _mm256_maskload_ps(ret_max + i, m);

                        for (uint32_t t = 0; t < n; t++) {
                                __m256 x = _mm256_maskload_ps(tmp + t * d + i, m);

                                lo = _mm256_min_ps(lo, x);
                                hi = _mm256_max_ps(hi, x);
                        }
                        _mm256_maskstore_ps(ret_min + i, m, lo);
                        _mm256_maskstore_ps(ret_max + i, m, hi);
                }
        }
}

/* The definition for one head (mul, mul, max, add): the fallback when the
 * split form gives NaN. */
static AVX2 float score_head(const float *qh, const float *mn, const float *mx, uint32_t d,
                             __m256i m)
{
        __m256 acc = _mm256_setzero_ps();
        uint32_t i = 0;

        for (; i + 8 <= d; i += 8) {
                __m256 qv = _mm256_loadu_ps(qh + i);
                __m256 a = _mm256_mul_ps(qv, _mm256_loadu_ps(mn + i));
                __m256 b = _mm256_mul_ps(qv, _mm256_loadu_ps(mx + i));

                acc = _mm256_add_ps(acc, _mm256_max_ps(a, b));
        }
        if (i < d) {
                /* Masked lanes read 0: 0 * 0 adds nothing. */
                __m256 qv = _mm256_maskload_ps(qh + i, m);
                __m256 a = _mm256_mul_ps(qv, _mm256_maskload_ps(mn + i, m));
                __m256 b = _mm256_mul_ps(qv, _mm256_maskload_ps(mx + i, m));

                acc = _mm256_add_ps(acc, _mm256_max_ps(a, b));
        }
        return hsum(acc);
}

/* The four horizontal sums of v0..v3, in lanes 0..3. */
static AVX2 inline __m128 hsum4(__m256 v0, __m256 v1, __m256 v2, __m256 v3)
{
        __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));

        return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/*
 * Sums of K <= 4 query heads (rows of q, stride d) of one kv head over one
 * block, in lanes 0..K-1 of the result (the other lanes -inf). Since
 * mn <= mx, max(q mn, q mx) = min(q, 0) mn + max(q, 0) mx: per 8 columns and
 * head, one query load, a min and a max, two FMAs into separate accumulators
 * (negative and positive parts, which also hides the FMA latency); each row
 * of the summary is loaded once for the K heads. min/max take 0 as their
 * first operand so that a NaN (and -0) query element passes through to both.
 * K is a constant after inlining.
 */
static AVX2 inline __attribute__((always_inline)) __m128
sums_k(const uint32_t K, const float *q, const float *mn, const float *mx, uint32_t d,
       __m256i m)
{
        const __m256 z = _mm256_setzero_ps();
        __m256 an[4], ap[4];
        uint32_t i = 0;

        for (uint32_t t = 0; t < 4; t++)
                an[t] = ap[t] = z;
        for (; i + 8 <= d; i += 8) {
                __m256 n0 = _mm256_loadu_ps(mn + i), x0 = _mm256_loadu_ps(mx + i);

                for (uint32_t t = 0; t < K; t++) {
                        __m256 qv = _mm256_loadu_ps(q + t * d + i);

                        an[t] = _mm256_fmadd_ps(_mm256_min_ps(z, qv), n0, an[t]);
                        ap[t] = _mm256_fmadd_ps(_mm256_max_ps(z, qv), x0, ap[t]);
                }
        }
        if (i < d) {
                /* Masked lanes read 0: 0 * 0 adds nothing. */
                __m256 n0 = _mm256_maskload_ps(mn + i, m), x0 = _mm256_maskload_ps(mx + i, m);

                for (uint32_t t = 0; t < K; t++) {
                        __m256 qv = _mm256_maskload_ps(q + t * d + i, m);

                        an[t] = _mm256_fmadd_ps(_mm256_min_ps(z, qv), n0, an[t]);
                        ap[t] = _mm256_fmadd_ps(_mm256_max_ps(z, qv), x0, ap[t]);
                }
        }
        __m128 v = hsum4(_mm256_add_ps(an[0], ap[0]), _mm256_add_ps(an[1], ap[1]),
                         _mm256_add_ps(an[2], ap[2]), _mm256_add_ps(an[3], ap[3]));

        if (K < 4) {
                static const int32_t keep[8] = { -1, -1, -1, 0, 0, 0, 0, 0 };
                __m128 lanes = _mm_loadu_ps((const float *)(keep + 3 - K));

                v = _mm_blendv_ps(_mm_set1_ps(-INFINITY), v, lanes);
        }
        return v;
}

/* Blocks ahead whose summary rows are prefetched (1-4 measure the same). */
#define PF_BLOCKS 2

static AVX2 void avx2_scores(const float *q, uint32_t q_heads, uint32_t group, uint32_t d,
                             const float *summaries, size_t stride, uint32_t n, float *ret)
{
        const __m256i m = tail_mask(d % 8);

        for (uint32_t b = 0; b < n; b++) {
                const float *sb = summaries + b * stride;
                __m128 best = _mm_set1_ps(-INFINITY);

                for (uint32_t h = 0; h < q_heads;) {
                        const uint32_t g = h / group, end = (g + 1) * group;
                        const uint32_t k = end - h < 4 ? end - h : 4;
                        const float *mn = sb + (size_t)g * 2 * d, *mx = mn + d;
                        const float *qh = q + (size_t)h * d;
                        __m128 v;

                        if (h % group == 0 && b + PF_BLOCKS < n) {
                                const char *pf = (const char *)(mn + PF_BLOCKS * stride);

                                for (uint32_t o = 0; o < 2 * d * sizeof(float); o += 64)
                                        _mm_prefetch(pf + o, _MM_HINT_T0);
                        }

                        switch (k) {
                        case 4: v = sums_k(4, qh, mn, mx, d, m); break;
                        case 3: v = sums_k(3, qh, mn, mx, d, m); break;
                        case 2: v = sums_k(2, qh, mn, mx, d, m); break;
                        default: v = sums_k(1, qh, mn, mx, d, m); break;
                        }
                        if (__builtin_expect(_mm_movemask_ps(_mm_cmpunord_ps(v, v)) != 0, 0)) {
                                float x[4];

                                _mm_storeu_ps(x, v);
                                for (uint32_t t = 0; t < k; t++)
                                        if (isnan(x[t]))
                                                x[t] = score_head(qh + (size_t)t * d, mn, mx, d,
                                                                  m);
                                v = _mm_loadu_ps(x);
                        }
                        best = _mm_max_ps(v, best);     /* a NaN lane keeps best */
                        h += k;
                }
                best = _mm_max_ps(best, _mm_movehl_ps(best, best));
                best = _mm_max_ss(best, _mm_movehdup_ps(best));
                ret[b] = _mm_cvtss_f32(best);
        }
}

/* q . k for one query row, two accumulators to hide the FMA latency. */
static AVX2 inline float dot1(const float *q, const float *k, uint32_t d, __m256i m)
{
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        uint32_t i = 0;

        for (; i + 16 <= d; i += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(k + i + 8), a1);
        }
        for (; i + 8 <= d; i += 8)
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a0);
        if (i < d)
                a1 = _mm256_fmadd_ps(_mm256_maskload_ps(q + i, m), _mm256_maskload_ps(k + i, m),
                                     a1);
        return hsum(_mm256_add_ps(a0, a1));
}

/* q[j] . k for four query rows (stride d) sharing one k row. */
static AVX2 inline void dot4(const float *q, const float *k, uint32_t d, __m256i m, float *ret)
{
        const float *q1 = q + d, *q2 = q + 2 * d, *q3 = q + 3 * d;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        uint32_t i = 0;

        for (; i + 8 <= d; i += 8) {
                __m256 kv = _mm256_loadu_ps(k + i);

                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), kv, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + i), kv, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + i), kv, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + i), kv, a3);
        }
        if (i < d) {
                __m256 kv = _mm256_maskload_ps(k + i, m);

                a0 = _mm256_fmadd_ps(_mm256_maskload_ps(q + i, m), kv, a0);
                a1 = _mm256_fmadd_ps(_mm256_maskload_ps(q1 + i, m), kv, a1);
                a2 = _mm256_fmadd_ps(_mm256_maskload_ps(q2 + i, m), kv, a2);
                a3 = _mm256_fmadd_ps(_mm256_maskload_ps(q3 + i, m), kv, a3);
        }
        ret[0] = hsum(a0);
        ret[1] = hsum(a1);
        ret[2] = hsum(a2);
        ret[3] = hsum(a3);
}

static AVX2 inline void logits_impl(f16_row_fn f16, const float *q, uint32_t nh, const void *k,
                                    uint32_t ntok, uint32_t d, enum kvk_dtype dt, float scale,
                                    float *ret)
{
        float tmp[ROWS * KVK_MAX_HEAD_DIM] __attribute__((aligned(32)));
        const uint16_t *rows = k;
        __m256i m = tail_mask(d % 8);

        for (uint32_t t0 = 0; t0 < ntok; t0 += ROWS) {
                uint32_t n = ntok - t0 < ROWS ? ntok - t0 : ROWS;

                to_f32(f16, dt, rows + (size_t)t0 * d, (size_t)n * d, tmp);
                for (uint32_t t = 0; t < n; t++) {
                        const float *kr = tmp + t * d;
                        float r[KVK_HTILE];

                        if (nh == 4) {
                                dot4(q, kr, d, m, r);
                        } else {
                                for (uint32_t j = 0; j < nh; j++)
                                        r[j] = dot1(q + (size_t)j * d, kr, d, m);
                        }
                        for (uint32_t j = 0; j < nh; j++)
                                ret[j * KVK_TCHUNK + t0 + t] = r[j] * scale;
                }
        }
}

/* acc[:, i..i+8) += sum_t p[:, t] v[t, i..i+8) for one 8-column slice; full
 * is a constant after inlining, so the common case has no masked access. */
static AVX2 inline void accum_slice(float *acc, uint32_t nh, const float *p, const float *v,
                                    uint32_t n, uint32_t d, uint32_t i, __m256i m, int full)
{
        if (nh == 4) {
                float *r1 = acc + d, *r2 = acc + 2 * d, *r3 = acc + 3 * d;
                __m256 a0 = full ? _mm256_loadu_ps(acc + i) : _mm256_maskload_ps(acc + i, m);
                __m256 a1 = full ? _mm256_loadu_ps(r1 + i) : _mm256_maskload_ps(r1 + i, m);
                __m256 a2 = full ? _mm256_loadu_ps(r2 + i) : _mm256_maskload_ps(r2 + i, m);
                __m256 a3 = full ? _mm256_loadu_ps(r3 + i) : _mm256_maskload_ps(r3 + i, m);

                for (uint32_t t = 0; t < n; t++) {
                        const float *vr = v + t * d + i;
                        __m256 x = full ? _mm256_loadu_ps(vr) : _mm256_maskload_ps(vr, m);

                        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + t), x, a0);
                        a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + KVK_TCHUNK + t), x, a1);
                        a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + 2 * KVK_TCHUNK + t), x, a2);
                        a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + 3 * KVK_TCHUNK + t), x, a3);
                }
                if (full) {
                        _mm256_storeu_ps(acc + i, a0);
                        _mm256_storeu_ps(r1 + i, a1);
                        _mm256_storeu_ps(r2 + i, a2);
                        _mm256_storeu_ps(r3 + i, a3);
                } else {
                        _mm256_maskstore_ps(acc + i, m, a0);
                        _mm256_maskstore_ps(r1 + i, m, a1);
                        _mm256_maskstore_ps(r2 + i, m, a2);
                        _mm256_maskstore_ps(r3 + i, m, a3);
                }
                return;
        }
        for (uint32_t j = 0; j < nh; j++) {
                float *rj = acc + (size_t)j * d;
                const float *pj = p + j * KVK_TCHUNK;
                __m256 a = full ? _mm256_loadu_ps(rj + i) : _mm256_maskload_ps(rj + i, m);

                for (uint32_t t = 0; t < n; t++) {
                        const float *vr = v + t * d + i;
                        __m256 x = full ? _mm256_loadu_ps(vr) : _mm256_maskload_ps(vr, m);

                        a = _mm256_fmadd_ps(_mm256_broadcast_ss(pj + t), x, a);
                }
                if (full)
                        _mm256_storeu_ps(rj + i, a);
                else
                        _mm256_maskstore_ps(rj + i, m, a);
        }
}

static AVX2 inline void accum_impl(f16_row_fn f16, float *acc, uint32_t nh, const float *p,
                                   const void *v, uint32_t ntok, uint32_t d, enum kvk_dtype dt)
{
        float tmp[ROWS * KVK_MAX_HEAD_DIM] __attribute__((aligned(32)));
        const uint16_t *rows = v;
        __m256i m = tail_mask(d % 8);

        for (uint32_t t0 = 0; t0 < ntok; t0 += ROWS) {
                uint32_t n = ntok - t0 < ROWS ? ntok - t0 : ROWS;
                uint32_t i = 0;

                to_f32(f16, dt, rows + (size_t)t0 * d, (size_t)n * d, tmp);
                for (; i + 8 <= d; i += 8)
                        accum_slice(acc, nh, p + t0, tmp, n, d, i, m, 1);
                if (i < d)
                        accum_slice(acc, nh, p + t0, tmp, n, d, i, m, 0);
        }
}

/*
 * Fused decode attention (the fold op): per chunk of up to KVK_TCHUNK tokens,
 * the logits of NH query heads, the online-softmax update and P.V, without
 * a conversion buffer. Each K and V element is loaded and converted to fp32
 * once (F16C or a shift, straight from the block) and used by all NH heads:
 *
 *  - logits: 8 accumulators, NH heads x TT = 8 / NH tokens, one FMA per head
 *    and token per 8 columns; the 8 sums are reduced together (one vector of
 *    logits, lane u * NH + j = token u, head j), so the chunk's logits are
 *    token-major: lg[t * NH + j];
 *  - softmax: max, exp and sum on those vectors (exp8(), a polynomial), m
 *    and l kept in the same lane layout;
 *  - P.V: 8 accumulators, NH heads x SL = 8 / NH slices of 8 columns, one V
 *    row slice converted per token for all NH heads.
 *
 * NH and DT are constants after inlining (fold_nh() instantiates them).
 */
#define AI __attribute__((always_inline)) inline

/* 8 elements of DT as fp32. */
static AVX2_F16C AI __m256 ld8(const uint32_t DT, const uint16_t *p)
{
        __m128i x = _mm_loadu_si128((const __m128i *)p);

        if (DT == KVK_F16)
                return _mm256_cvtph_ps(x);
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(x), 16));
}

/* The first r (1..7) elements, the other lanes +0; reads only those r. */
static AVX2_F16C AI __m256 ld_tail(const uint32_t DT, const uint16_t *p, uint32_t r)
{
        uint16_t b[8] = { 0 };

        memcpy(b, p, r * sizeof(uint16_t));
        return ld8(DT, b);
}

/*
 * e^x in 8 lanes: x = n ln2 + r with |r| <= ln2 / 2, e^r by the polynomial
 * of Cephes' expf (about 1 ulp), times 2^n. Below -87.33 (-inf included)
 * the result is +0 (e^x < 2^-126 there); a NaN stays a NaN. Inputs here are
 * logit - max <= 0.
 */
static AVX2 AI __m256 exp8(__m256 x)
{
        const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.3762626647949f);
        const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
        __m256 n, r, p;
        __m256i e;

        x = _mm256_max_ps(lo, _mm256_min_ps(hi, x));   /* NaN passes: 2nd operand */
        n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
        p = _mm256_set1_ps(1.9875691500e-4f);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
        p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
        p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
        e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
                              23);
        return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* Lane i = the horizontal sum of a[i]. */
static AVX2 AI __m256 hsum8(const __m256 *a)
{
        __m256 x = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        __m256 y = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));

        return _mm256_add_ps(_mm256_permute2f128_ps(x, y, 0x20),
                             _mm256_permute2f128_ps(x, y, 0x31));
}

/* Every lane gets the max (add: the sum) over the lanes of its head (lanes
 * j, j + NH, j + 2 NH, ...). */
static AVX2 AI __m256 fold_lanes(const uint32_t NH, __m256 v, const int add)
{
        __m256 w = _mm256_permute2f128_ps(v, v, 1);

        v = add ? _mm256_add_ps(v, w) : _mm256_max_ps(v, w);
        if (NH <= 2) {
                w = _mm256_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2));
                v = add ? _mm256_add_ps(v, w) : _mm256_max_ps(v, w);
        }
        if (NH == 1) {
                w = _mm256_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1));
                v = add ? _mm256_add_ps(v, w) : _mm256_max_ps(v, w);
        }
        return v;
}

/* Logits of tokens t0 .. t0 + TT - 1 of the chunk k (nt valid rows), scaled,
 * lane u * NH + j; lanes of tokens >= nt are -inf (their K is not read: they
 * reuse the last valid row). r = d % 8, m its lane mask. */
static AVX2_F16C AI __m256 logits8(const uint32_t NH, const uint32_t DT, const float *q,
                                   const uint16_t *k, uint32_t t0, uint32_t nt, uint32_t d,
                                   uint32_t r, __m256i m, __m256 scale)
{
        const uint32_t TT = 8 / NH;
        const uint16_t *kr[8];
        __m256 a[8];
        uint32_t i = 0;

        for (uint32_t u = 0; u < TT; u++)
                kr[u] = k + (size_t)(t0 + u < nt ? t0 + u : nt - 1) * d;
        for (uint32_t x = 0; x < 8; x++)
                a[x] = _mm256_setzero_ps();
        for (; i + 8 <= d; i += 8) {
                __m256 kx[8];

                for (uint32_t u = 0; u < TT; u++)
                        kx[u] = ld8(DT, kr[u] + i);
                for (uint32_t j = 0; j < NH; j++) {
                        __m256 qv = _mm256_loadu_ps(q + (size_t)j * d + i);

                        for (uint32_t u = 0; u < TT; u++)
                                a[u * NH + j] = _mm256_fmadd_ps(qv, kx[u], a[u * NH + j]);
                }
        }
        if (r) {
                __m256 kx[8];

                for (uint32_t u = 0; u < TT; u++)
                        kx[u] = ld_tail(DT, kr[u] + i, r);
                for (uint32_t j = 0; j < NH; j++) {
                        __m256 qv = _mm256_maskload_ps(q + (size_t)j * d + i, m);

                        for (uint32_t u = 0; u < TT; u++)
                                a[u * NH + j] = _mm256_fmadd_ps(qv, kx[u], a[u * NH + j]);
                }
        }
        __m256 s = _mm256_mul_ps(hsum8(a), scale);
        if (t0 + TT > nt) {
                static const int32_t tok[3][8] = {
                        { 0, 1, 2, 3, 4, 5, 6, 7 },     /* NH 1 */
                        { 0, 0, 1, 1, 2, 2, 3, 3 },     /* NH 2 */
                        { 0, 0, 0, 0, 1, 1, 1, 1 },     /* NH 4 */
                };
                __m256i tk = _mm256_loadu_si256((const __m256i *)tok[NH == 1 ? 0 : NH == 2 ? 1 : 2]);
                __m256i ok = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(nt - t0)), tk);

                s = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), s, _mm256_castsi256_ps(ok));
        }
        return s;
}

/* acc[j][i .. i + 8 SL) += sum_{t < nt} p[t * NH + j] v[t][i .. i + 8 SL) for
 * the NH heads; r != 0: one masked slice of r columns (SL is then 1). */
static AVX2_F16C AI void pv_slices(const uint32_t NH, const uint32_t SL, const uint32_t DT,
                                   float *acc, const float *p, const uint16_t *v, uint32_t nt,
                                   uint32_t d, uint32_t i, uint32_t r, __m256i m)
{
        __m256 a[8];

        for (uint32_t j = 0; j < NH; j++)
                for (uint32_t s = 0; s < SL; s++) {
                        float *at = acc + (size_t)j * d + i + 8 * s;

                        a[j * SL + s] = r ? _mm256_maskload_ps(at, m) : _mm256_loadu_ps(at);
                }
        for (uint32_t t = 0; t < nt; t++) {
                const uint16_t *vr = v + (size_t)t * d + i;
                __m256 pj[4];

                for (uint32_t j = 0; j < NH; j++)
                        pj[j] = _mm256_broadcast_ss(p + t * NH + j);
                for (uint32_t s = 0; s < SL; s++) {
                        __m256 x = r ? ld_tail(DT, vr, r) : ld8(DT, vr + 8 * s);

                        for (uint32_t j = 0; j < NH; j++)
                                a[j * SL + s] = _mm256_fmadd_ps(pj[j], x, a[j * SL + s]);
                }
        }
        for (uint32_t j = 0; j < NH; j++)
                for (uint32_t s = 0; s < SL; s++) {
                        float *at = acc + (size_t)j * d + i + 8 * s;

                        if (r)
                                _mm256_maskstore_ps(at, m, a[j * SL + s]);
                        else
                                _mm256_storeu_ps(at, a[j * SL + s]);
                }
}

/* Asks for rows [a, b) of the next block's K and V (b <= pn). */
static inline void pf_rows(const uint16_t *pk, const uint16_t *pv, uint32_t a, uint32_t b,
                           uint32_t d)
{
        const char *ck = (const char *)(pk + (size_t)a * d), *cv = (const char *)(pv + (size_t)a * d);
        const size_t bytes = (size_t)(b - a) * d * sizeof(uint16_t);

        for (size_t o = 0; o < bytes; o += 64) {
                _mm_prefetch(ck + o, _MM_HINT_T0);
                _mm_prefetch(cv + o, _MM_HINT_T0);
        }
}

static AVX2_F16C AI void fold_nh(const uint32_t NH, const uint32_t DT, const float *q,
                                 const uint16_t *k, const uint16_t *v, uint32_t ntok,
                                 uint32_t d, float scale, float *m_io, float *l_io, float *acc,
                                 const uint16_t *pk, const uint16_t *pv, uint32_t pn)
{
        const uint32_t TT = 8 / NH, SL = 8 / NH, r = d % 8;
        const __m256i msk = tail_mask(r);
        const __m256 sc = _mm256_set1_ps(scale);
        float lg[KVK_TCHUNK * KVK_HTILE] __attribute__((aligned(32)));
        float tmp[8] __attribute__((aligned(32)));
        __m256 m, l;

        for (uint32_t x = 0; x < 8; x++)
                tmp[x] = m_io[x % NH];
        m = _mm256_load_ps(tmp);
        for (uint32_t x = 0; x < 8; x++)
                tmp[x] = l_io[x % NH];
        l = _mm256_load_ps(tmp);

        for (uint32_t c0 = 0; c0 < ntok; c0 += KVK_TCHUNK) {
                const uint32_t nt = ntok - c0 < KVK_TCHUNK ? ntok - c0 : KVK_TCHUNK;
                const uint32_t nv = (nt + TT - 1) / TT;
                const uint16_t *kc = k + (size_t)c0 * d, *vc = v + (size_t)c0 * d;
                __m256 bm = _mm256_set1_ps(-INFINITY), ps = _mm256_setzero_ps(), grow;
                uint32_t i = 0;

                for (uint32_t x = 0; x < nv; x++) {
                        __m256 s = logits8(NH, DT, q, kc, x * TT, nt, d, r, msk, sc);
                        /* The next block's rows of these tokens: the prefetches
                         * spread over the compute, not one burst that would
                         * fill the miss buffers and stall the loads. */
                        const uint32_t pa = c0 + x * TT, pb = pa + TT;

                        if (pa < pn)
                                pf_rows(pk, pv, pa, pb < pn ? pb : pn, d);

                        _mm256_store_ps(lg + 8 * x, s);
                        bm = _mm256_max_ps(s, bm);
                }
                bm = fold_lanes(NH, bm, 0);
                /* A new maximum: rescale what was summed so far (as the
                 * driver does; from m = -inf the factor is 0 on zeros). */
                grow = _mm256_cmp_ps(bm, m, _CMP_GT_OQ);
                if (_mm256_movemask_ps(grow)) {
                        __m256 c = _mm256_blendv_ps(_mm256_set1_ps(1.0f),
                                                    exp8(_mm256_sub_ps(m, bm)), grow);

                        l = _mm256_mul_ps(l, c);
                        m = _mm256_blendv_ps(m, bm, grow);
                        _mm256_store_ps(tmp, c);
                        for (uint32_t j = 0; j < NH; j++) {
                                const __m256 cj = _mm256_set1_ps(tmp[j]);
                                float *aj = acc + (size_t)j * d;
                                uint32_t x = 0;

                                if (tmp[j] == 1.0f)
                                        continue;
                                for (; x + 8 <= d; x += 8)
                                        _mm256_storeu_ps(aj + x,
                                                         _mm256_mul_ps(_mm256_loadu_ps(aj + x), cj));
                                if (r)
                                        _mm256_maskstore_ps(aj + x, msk,
                                                            _mm256_mul_ps(_mm256_maskload_ps(aj + x, msk),
                                                                          cj));
                        }
                }
                for (uint32_t x = 0; x < nv; x++) {
                        __m256 p = exp8(_mm256_sub_ps(_mm256_load_ps(lg + 8 * x), m));

                        _mm256_store_ps(lg + 8 * x, p);
                        ps = _mm256_add_ps(ps, p);
                }
                l = _mm256_add_ps(l, fold_lanes(NH, ps, 1));

                for (; i + 8 * SL <= d; i += 8 * SL)
                        pv_slices(NH, SL, DT, acc, lg, vc, nt, d, i, 0, msk);
                for (; i + 8 <= d; i += 8)
                        pv_slices(NH, 1, DT, acc, lg, vc, nt, d, i, 0, msk);
                if (r)
                        pv_slices(NH, 1, DT, acc, lg, vc, nt, d, i, r, msk);
        }

        if (pn > ntok)
                pf_rows(pk, pv, ntok, pn, d);   /* the next block has more rows */
        _mm256_store_ps(tmp, m);
        for (uint32_t j = 0; j < NH; j++)
                m_io[j] = tmp[j];
        _mm256_store_ps(tmp, l);
        for (uint32_t j = 0; j < NH; j++)
                l_io[j] = tmp[j];
}

#define FOLD_NH(name, NH, DT)                                                                  \
        static AVX2_F16C __attribute__((noinline)) void name(                                  \
                const float *q, const uint16_t *k, const uint16_t *v, uint32_t ntok,           \
                uint32_t d, float scale, float *m, float *l, float *acc, const uint16_t *pk,   \
                const uint16_t *pv, uint32_t pn)                                               \
        {                                                                                      \
                fold_nh(NH, DT, q, k, v, ntok, d, scale, m, l, acc, pk, pv, pn);               \
        }

FOLD_NH(fold4_f16, 4, KVK_F16)
FOLD_NH(fold2_f16, 2, KVK_F16)
FOLD_NH(fold1_f16, 1, KVK_F16)
FOLD_NH(fold4_bf16, 4, KVK_BF16)
FOLD_NH(fold2_bf16, 2, KVK_BF16)
FOLD_NH(fold1_bf16, 1, KVK_BF16)

/* Tiles of 4, 2 or 1 heads (a tile of 3 is cut in 2 + 1). */
static AVX2_F16C void avx2_fold(const float *q, uint32_t nh, const void *k, const void *v,
                                uint32_t ntok, uint32_t d, enum kvk_dtype dt, float scale,
                                float *m, float *l, float *acc, const void *pk, const void *pv,
                                uint32_t pn)
{
        for (uint32_t j = 0, w; j < nh; j += w) {
                const float *qj = q + (size_t)j * d;
                float *aj = acc + (size_t)j * d;

                w = nh - j >= 4 ? 4 : nh - j >= 2 ? 2 : 1;
                if (j > 0)
                        pn = 0;         /* asked for by the first */
                if (dt == KVK_F16) {
                        if (w == 4)
                                fold4_f16(qj, k, v, ntok, d, scale, m + j, l + j, aj, pk, pv, pn);
                        else if (w == 2)
                                fold2_f16(qj, k, v, ntok, d, scale, m + j, l + j, aj, pk, pv, pn);
                        else
                                fold1_f16(qj, k, v, ntok, d, scale, m + j, l + j, aj, pk, pv, pn);
                } else {
                        if (w == 4)
                                fold4_bf16(qj, k, v, ntok, d, scale, m + j, l + j, aj, pk, pv, pn);
                        else if (w == 2)
                                fold2_bf16(qj, k, v, ntok, d, scale, m + j, l + j, aj, pk, pv, pn);
                        else
                                fold1_bf16(qj, k, v, ntok, d, scale, m + j, l + j, aj, pk, pv, pn);
                }
        }
}

/*
 * log(1 + w) for w in [0, 1] in 8 lanes: u = 1 + w rounded, log(u) by the
 * polynomial of Cephes' logf (about 1 ulp) on u or u / 2 (whichever lies in
 * [sqrt(1/2), sqrt(2))), plus (w - (u - 1)) / u, what the rounding of 1 + w
 * lost (so that a tiny w is not lost: log1p(w) = w there).
 */
static AVX2 AI __m256 log1p8(__m256 w)
{
        const __m256 one = _mm256_set1_ps(1.0f);
        const __m256 u = _mm256_add_ps(one, w);
        const __m256 big = _mm256_cmp_ps(u, _mm256_set1_ps(1.41421356237f), _CMP_GT_OQ);
        const __m256 e = _mm256_and_ps(big, one);       /* 1 where halved */
        const __m256 x = _mm256_blendv_ps(u, _mm256_mul_ps(u, _mm256_set1_ps(0.5f)), big);
        const __m256 z = _mm256_sub_ps(x, one);
        const __m256 zz = _mm256_mul_ps(z, z);
        __m256 p = _mm256_set1_ps(7.0376836292e-2f), y;

        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-1.1514610310e-1f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.1676998740e-1f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-1.2420140846e-1f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.4249322787e-1f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-1.6668057665e-1f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.0000714765e-1f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-2.4999993993e-1f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(3.3333331174e-1f));
        y = _mm256_mul_ps(_mm256_mul_ps(p, z), zz);
        y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
        y = _mm256_fnmadd_ps(zz, _mm256_set1_ps(0.5f), y);
        y = _mm256_add_ps(y, _mm256_div_ps(_mm256_sub_ps(w, _mm256_sub_ps(u, one)), u));
        return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(z, y));
}

/* merge_weights for 8 heads per turn (the definition in kernels-internal.h);
 * the last turn reads and writes only the heads that are left. */
static AVX2 void avx2_merge_weights(const float *la, const float *lb, uint32_t n, float *ret_ca,
                                    float *ret_cb, float *ret_lse)
{
        const __m256 one = _mm256_set1_ps(1.0f);
        const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));

        for (uint32_t h = 0; h < n; h += 8) {
                const __m256i m = tail_mask(n - h < 8 ? n - h : 8);
                const __m256 a = _mm256_maskload_ps(la + h, m), b = _mm256_maskload_ps(lb + h, m);
                const __m256 ge = _mm256_cmp_ps(a, b, _CMP_GE_OQ);
                const __m256 w = exp8(_mm256_sub_ps(_mm256_setzero_ps(),
                                                    _mm256_and_ps(abs, _mm256_sub_ps(a, b))));
                const __m256 inv = _mm256_div_ps(one, _mm256_add_ps(one, w));
                const __m256 winv = _mm256_mul_ps(w, inv);

                _mm256_maskstore_ps(ret_ca + h, m, _mm256_blendv_ps(winv, inv, ge));
                _mm256_maskstore_ps(ret_cb + h, m, _mm256_blendv_ps(inv, winv, ge));
                _mm256_maskstore_ps(ret_lse + h, m, _mm256_add_ps(_mm256_max_ps(a, b), log1p8(w)));
        }
}

/* a = ca a + cb b, one FMA per element (kvk_lse_merge()); two vectors per
 * turn, the tail masked. */
static AVX2 void avx2_blend(float *a, const float *b, uint32_t d, float ca, float cb)
{
        const __m256 va = _mm256_set1_ps(ca), vb = _mm256_set1_ps(cb);
        uint32_t i = 0;

        for (; i + 16 <= d; i += 16) {
                __m256 x0 = _mm256_mul_ps(vb, _mm256_loadu_ps(b + i));
                __m256 x1 = _mm256_mul_ps(vb, _mm256_loadu_ps(b + i + 8));

                _mm256_storeu_ps(a + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(a + i), x0));
                _mm256_storeu_ps(a + i + 8, _mm256_fmadd_ps(va, _mm256_loadu_ps(a + i + 8), x1));
        }
        for (; i + 8 <= d; i += 8)
                _mm256_storeu_ps(a + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(a + i),
                                                        _mm256_mul_ps(vb, _mm256_loadu_ps(b + i))));
        if (i < d) {
                const __m256i m = tail_mask(d - i);
                __m256 x = _mm256_mul_ps(vb, _mm256_maskload_ps(b + i, m));

                _mm256_maskstore_ps(a + i, m, _mm256_fmadd_ps(va, _mm256_maskload_ps(a + i, m), x));
        }
}

/* The two tables differ only in how they convert fp16 rows. */

static AVX2 void avx2_summary(const void *k, uint32_t ntok, uint32_t d, enum kvk_dtype dt,
                              float *ret_min, float *ret_max)
{
        summary_impl(f16_row_f16c, k, ntok, d, dt, ret_min, ret_max);
}

static AVX2 void avx2_logits(const float *q, uint32_t nh, const void *k, uint32_t ntok,
                             uint32_t d, enum kvk_dtype dt, float scale, float *ret)
{
        logits_impl(f16_row_f16c, q, nh, k, ntok, d, dt, scale, ret);
}

static AVX2 void avx2_accum(float *acc, uint32_t nh, const float *p, const void *v,
                            uint32_t ntok, uint32_t d, enum kvk_dtype dt)
{
        accum_impl(f16_row_f16c, acc, nh, p, v, ntok, d, dt);
}

static AVX2 void soft_summary(const void *k, uint32_t ntok, uint32_t d, enum kvk_dtype dt,
                              float *ret_min, float *ret_max)
{
        summary_impl(f16_row_soft, k, ntok, d, dt, ret_min, ret_max);
}

static AVX2 void soft_logits(const float *q, uint32_t nh, const void *k, uint32_t ntok,
                             uint32_t d, enum kvk_dtype dt, float scale, float *ret)
{
        logits_impl(f16_row_soft, q, nh, k, ntok, d, dt, scale, ret);
}

static AVX2 void soft_accum(float *acc, uint32_t nh, const float *p, const void *v,
                            uint32_t ntok, uint32_t d, enum kvk_dtype dt)
{
        accum_impl(f16_row_soft, acc, nh, p, v, ntok, d, dt);
}

/* ---- selection estimates (select.c) ---------------------------------- */

/* Loads 8 floats at p, or the first r < 8 (the rest 0) with mask m. */
static AVX2 AI __m256 ld8f(const float *p, uint32_t r, __m256i m)
{
        return r >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m);
}

/* Quest's bound of one head: sum max(q mn, q mx) over d. Masked lanes read
 * 0 and add 0. */
static AVX2 float box8(const float *q, const float *mn, const float *mx, uint32_t d)
{
        __m256 acc = _mm256_setzero_ps();

        for (uint32_t i = 0; i < d; i += 8) {
                uint32_t r = d - i;
                __m256i m = tail_mask(r < 8 ? r : 8);
                __m256 qv = ld8f(q + i, r, m);

                acc = _mm256_add_ps(acc, _mm256_max_ps(_mm256_mul_ps(qv, ld8f(mn + i, r, m)),
                                                       _mm256_mul_ps(qv, ld8f(mx + i, r, m))));
        }
        return hsum(acc);
}

/* The RoPE-pair bound of one head: per pair the smaller of the box bound
 * and |q pair| rmax. */
static AVX2 float rope8(const float *q, const float *mn, const float *mx, const float *rmax, uint32_t d)
{
        __m256 acc = _mm256_setzero_ps();
        uint32_t h = d / 2;

        for (uint32_t i = 0; i < h; i += 8) {
                uint32_t r = h - i;
                __m256i m = tail_mask(r < 8 ? r : 8);
                __m256 q0 = ld8f(q + i, r, m), q1 = ld8f(q + h + i, r, m);
                __m256 b0 = _mm256_max_ps(_mm256_mul_ps(q0, ld8f(mn + i, r, m)), _mm256_mul_ps(q0, ld8f(mx + i, r, m)));
                __m256 b1 = _mm256_max_ps(_mm256_mul_ps(q1, ld8f(mn + h + i, r, m)),
                                          _mm256_mul_ps(q1, ld8f(mx + h + i, r, m)));
                __m256 disc = _mm256_mul_ps(_mm256_sqrt_ps(_mm256_fmadd_ps(q0, q0, _mm256_mul_ps(q1, q1))),
                                            ld8f(rmax + i, r, m));

                acc = _mm256_add_ps(acc, _mm256_min_ps(_mm256_add_ps(b0, b1), disc));
        }
        return hsum(acc);
}

static AVX2 float meanvar8(const float *q, const float *mean, const float *var, uint32_t d, float inv2sd)
{
        __m256 mu = _mm256_setzero_ps(), sg = _mm256_setzero_ps();

        for (uint32_t i = 0; i < d; i += 8) {
                uint32_t r = d - i;
                __m256i m = tail_mask(r < 8 ? r : 8);
                __m256 qv = ld8f(q + i, r, m);

                mu = _mm256_fmadd_ps(qv, ld8f(mean + i, r, m), mu);
                if (var)
                        sg = _mm256_fmadd_ps(_mm256_mul_ps(qv, qv), ld8f(var + i, r, m), sg);
        }
        return hsum(mu) + hsum(sg) * inv2sd;
}

/* meanvar8() of NH heads at once, and (spike not NULL) the dot product of
 * each with spike into ret2: each load of the summary rows serves all the
 * heads, and the sums end in hsum4(). */
static AVX2 AI void meanvar_nh(const uint32_t NH, const float *q, uint32_t d, const float *mean, const float *var,
                               const float *spike, float inv2sd, float *ret, float *ret2)
{
        __m256 mu[KVK_HTILE], sg[KVK_HTILE], sp[KVK_HTILE];
        uint32_t i = 0;

        for (uint32_t j = 0; j < NH; j++)
                mu[j] = sg[j] = sp[j] = _mm256_setzero_ps();
        for (; i < d; i += 8) {
                __m256i m = tail_mask(d - i < 8 ? d - i : 8);
                const bool full = i + 8 <= d;
                __m256 mv = full ? _mm256_loadu_ps(mean + i) : _mm256_maskload_ps(mean + i, m);
                __m256 vv = !var ? _mm256_setzero_ps() : full ? _mm256_loadu_ps(var + i) : _mm256_maskload_ps(var + i, m);
                __m256 pv = !spike ? _mm256_setzero_ps() : full ? _mm256_loadu_ps(spike + i)
                                                                : _mm256_maskload_ps(spike + i, m);

                for (uint32_t j = 0; j < NH; j++) {
                        const float *qj = q + (size_t)j * d + i;
                        __m256 qv = full ? _mm256_loadu_ps(qj) : _mm256_maskload_ps(qj, m);

                        mu[j] = _mm256_fmadd_ps(qv, mv, mu[j]);
                        if (var)
                                sg[j] = _mm256_fmadd_ps(_mm256_mul_ps(qv, qv), vv, sg[j]);
                        if (spike)
                                sp[j] = _mm256_fmadd_ps(qv, pv, sp[j]);
                }
        }
        {
                float fa[4], fb[4], fc[4];

                _mm_storeu_ps(fa, hsum4(mu[0], mu[1], mu[2], mu[3]));
                _mm_storeu_ps(fb, hsum4(sg[0], sg[1], sg[2], sg[3]));
                _mm_storeu_ps(fc, hsum4(sp[0], sp[1], sp[2], sp[3]));
                for (uint32_t j = 0; j < NH; j++) {
                        ret[j] = fa[j] + fb[j] * inv2sd;
                        if (spike)
                                ret2[j] = fc[j];
                }
        }
}

static AVX2 void avx2_estimate(enum kvk_method m, const float *q, uint32_t nh, uint32_t d, const float *rows,
                               float inv2sd, float *ret, float *ret2)
{
        if (nh == KVK_HTILE && m == KVK_MEAN) {
                meanvar_nh(KVK_HTILE, q, d, rows, NULL, NULL, 0, ret, NULL);
                return;
        }
        if (nh == KVK_HTILE && m == KVK_GAUSS) {
                meanvar_nh(KVK_HTILE, q, d, rows, rows + d, NULL, inv2sd, ret, NULL);
                return;
        }
        if (nh == KVK_HTILE && m == KVK_HYBRID) {
                meanvar_nh(KVK_HTILE, q, d, rows + d, rows + 2 * d, rows, inv2sd, ret, ret2);
                return;
        }
        for (uint32_t j = 0; j < nh; j++) {
                const float *qj = q + (size_t)j * d;

                switch (m) {
                case KVK_QUEST_HEADS:
                        ret[j] = box8(qj, rows, rows + d, d);
                        break;
                case KVK_ROPE_BOUND:
                        ret[j] = rope8(qj, rows, rows + d, rows + 2 * d, d);
                        break;
                case KVK_MEAN:
                        ret[j] = meanvar8(qj, rows, NULL, d, 0);
                        break;
                case KVK_GAUSS:
                        ret[j] = meanvar8(qj, rows, rows + d, d, inv2sd);
                        break;
                case KVK_HYBRID:
                        ret[j] = meanvar8(qj, rows + d, rows + 2 * d, d, inv2sd);
                        ret2[j] = meanvar8(qj, rows, NULL, d, 0);
                        break;
                default:
                        ret[j] = NAN;
                }
        }
}

static AVX2 void avx2_exp_rows(float *x, uint32_t n, uint32_t width, const float *shift)
{
        for (uint32_t r = 0; r < n; r++, x += width) {
                uint32_t i = 0;

                for (; i + 8 <= width; i += 8)
                        _mm256_storeu_ps(x + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(shift + i))));
                for (; i < width; i++)
                        x[i] = expf(x[i] - shift[i]);
        }
}

const struct kvk_ops kvk__ops_avx2 = {
        .name = "avx2",
        .summary = avx2_summary,
        .scores = avx2_scores,
        .logits = avx2_logits,
        .accum = avx2_accum,
        .fold = avx2_fold,
        .merge_weights = avx2_merge_weights,
        .blend = avx2_blend,
        .estimate = avx2_estimate,
        .exp_rows = avx2_exp_rows,
};

const struct kvk_ops kvk__ops_avx2_nof16c = {
        .name = "avx2",
        .summary = soft_summary,
        .scores = avx2_scores,
        .logits = soft_logits,
        .accum = soft_accum,
        .merge_weights = avx2_merge_weights,
        .blend = avx2_blend,
        .estimate = avx2_estimate,
        .exp_rows = avx2_exp_rows,
};
