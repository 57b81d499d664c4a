/* SPDX-License-Identifier: MIT */
/*
 * Private to kernels/cpu: the table each CPU back end (scalar.c, avx2.c)
 * fills, and the inline scalar conversions they share.
 *
 * The drivers (attention.c) own the algorithms: argument checks, the loops
 * over heads and blocks, the online softmax. A back end only provides the
 * inner loops over tokens and head_dim, so that both back ends run the same
 * algorithm and differ only in how fast the arithmetic goes.
 */
#pragma once

#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* Tokens per call of logits()/accum(): the driver keeps one chunk of logits
 * per query head on its stack. */
#define KVK_TCHUNK 16u

/* Query heads per call of logits()/accum() (a GQA group is cut in tiles of
 * at most this many heads, so that a K or V row is read once per tile). */
#define KVK_HTILE 4u

struct kvk_ops {
        const char *name;

        /* Element-wise min and max over ntok rows of k (ntok >= 1; rows of d
         * elements of dt, back to back) into ret_min[d], ret_max[d]. */
        void (*summary)(const void *k, uint32_t ntok, uint32_t d, enum kvk_dtype dt,
                        float *ret_min, float *ret_max);

        /* Scores of n blocks (kernels.h): ret[b] from the summary at
         * summaries + b * stride, for the query q (q_heads rows of d, GQA
         * group). The back end owns the loops over blocks and heads: it may
         * split q by sign (since mn <= mx, max(q mn, q mx) = max(q, 0) mx +
         * min(q, 0) mn, one of the two products being +-0) and score several
         * heads of a kv head per load of the summary. Wherever that form gives
         * a NaN sum (an infinite summary times a zero), the head is scored
         * by the definition instead; a NaN head sum is skipped by the max. */
        void (*scores)(const float *q, uint32_t q_heads, uint32_t group, uint32_t d,
                       const float *summaries, size_t stride, uint32_t n, float *ret);

        /* ret[j * KVK_TCHUNK + t] = scale * (q[j] . k[t]) for the nh <= KVK_HTILE
         * query rows q (stride d) and the ntok <= KVK_TCHUNK rows k of dt. */
        void (*logits)(const float *q, uint32_t nh, const void *k, uint32_t ntok, uint32_t d,
                       enum kvk_dtype dt, float scale, float *ret);

        /* acc[j][:] += sum_t p[j * KVK_TCHUNK + t] * v[t][:] for the nh rows of
         * acc (stride d) and the ntok rows v of dt. */
        void (*accum)(float *acc, uint32_t nh, const float *p, const void *v, uint32_t ntok,
                      uint32_t d, enum kvk_dtype dt);

        /* Optional (NULL: the driver calls logits() and accum() and runs the
         * online softmax itself). Folds ntok >= 1 tokens of one block (K rows
         * k, V rows v: ntok rows of d elements of dt each) into the running
         * softmax state of nh <= KVK_HTILE query heads (rows of q, stride d):
         * per head j, m[j] the maximum logit so far (-inf before the first
         * token), l[j] the sum of exp(logit - m[j]), acc[j][:] (stride d) the
         * sum of exp(logit - m[j]) v. The driver's algorithm, fused: logit =
         * scale * (q . k), the maximum raised once per KVK_TCHUNK tokens.
         * pk, pv: the K and V rows of the block that comes next (pn rows of d;
         * pn = 0: none), prefetched a few rows at a time while this one
         * computes. */
        void (*fold)(const float *q, uint32_t nh, const void *k, const void *v, uint32_t ntok,
                     uint32_t d, enum kvk_dtype dt, float scale, float *m, float *l,
                     float *acc, const void *pk, const void *pv, uint32_t pn);

        /* The weights of kvk_lse_merge() for n heads (merge.c): from the
         * lse of A and B, the larger one weighs 1 and the other
         * w = e^-|la - lb|, both divided by 1 + w: ret_ca[h], ret_cb[h];
         * ret_lse[h] = max(la, lb) + log1p(w). Meaningful where la[h] and
         * lb[h] are both finite (the driver handles the other heads itself
         * and ignores what is written for them). */
        void (*merge_weights)(const float *la, const float *lb, uint32_t n, float *ret_ca,
                              float *ret_cb, float *ret_lse);

        /* a[i] = ca * a[i] + cb * b[i] for i < d: one head of
         * kvk_lse_merge(). */
        void (*blend)(float *a, const float *b, uint32_t d, float ca, float cb);

        /* Per-head logit estimates (unscaled, kernels.h "Selection
         * methods") of one kv head's summary rows (row r at rows + r * d,
         * the method's rows) for nh query heads (rows of q, stride d):
         * ret[j]. m is KVK_QUEST_HEADS (the box bound), KVK_ROPE_BOUND,
         * KVK_MEAN, KVK_GAUSS (inv2sd = 1 / (2 sqrt(d))) or KVK_HYBRID:
         * ret[j] the Gaussian estimate of the bulk (rows 1, 2), ret2[j] q.spike
         * (row 0); select.c combines the two. ret2 is used by KVK_HYBRID only. */
        void (*estimate)(enum kvk_method m, const float *q, uint32_t nh, uint32_t d, const float *rows,
                         float inv2sd, float *ret, float *ret2);

        /* x[r][i] = e^(x[r][i] - shift[i]) for n rows of width floats
         * (x <= shift; -inf gives 0). */
        void (*exp_rows)(float *x, uint32_t n, uint32_t width, const float *shift);
};

extern const struct kvk_ops kvk__ops_scalar;
/* AVX2 + FMA; fp16 with F16C, or (the second table) without it. */
extern const struct kvk_ops kvk__ops_avx2;
extern const struct kvk_ops kvk__ops_avx2_nof16c;

/* The table in use (dispatch.c): chosen once, never NULL. */
const struct kvk_ops *kvk__ops(void);

static inline uint32_t kvk__f32_bits(float f)
{
        uint32_t u;

        memcpy(&u, &f, sizeof(u));
        return u;
}

static inline float kvk__bits_f32(uint32_t u)
{
        float f;

        memcpy(&f, &u, sizeof(f));
        return f;
}

static inline float kvk__h2f(uint16_t h)
{
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
        uint32_t exp = (h >> 10) & 0x1fu;
        uint32_t mant = h & 0x3ffu;

        if (exp == 0x1f)        /* inf, NaN: keep the payload */
                return kvk__bits_f32(sign | 0x7f800000u | (mant << 13));
        if (exp == 0) {         /* zero, subnormal: mant * 2^-24, exact */
                float f = (float)mant * 0x1p-24f;
                return sign ? -f : f;
        }
        return kvk__bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

static inline float kvk__bf2f(uint16_t h)
{
        return kvk__bits_f32((uint32_t)h << 16);
}

/* Element i of a row of dt. */
static inline float kvk__load(const void *row, uint32_t i, enum kvk_dtype dt)
{
        uint16_t h = ((const uint16_t *)row)[i];

        return dt == KVK_F16 ? kvk__h2f(h) : kvk__bf2f(h);
}
