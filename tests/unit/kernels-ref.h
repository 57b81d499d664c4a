/* SPDX-License-Identifier: MIT */
/*
 * What the CPU kernels' tests share (test_kernels.c, test_kernels_merge.c):
 * the back ends to loop over, seeded random data, blocks and queries, and
 * the double-precision references of the kernels.h definitions.
 */
#pragma once

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#include "check-main.h"

/* ck_assert() reports every passing check to the parent process (a write
 * per call in fork mode): loops over millions of values use EXPECT, which
 * only calls into Check on failure. */
#define EXPECT(cond)                                                    \
        do {                                                            \
                if (!(cond))                                            \
                        ck_abort_msg("%s:%d: failed: %s", __FILE__, __LINE__, #cond); \
        } while (0)
#define EXPECT_MSG(cond, ...)                                           \
        do {                                                            \
                if (!(cond))                                            \
                        ck_abort_msg(__VA_ARGS__);                      \
        } while (0)

static const char *const backends[] = { "scalar", "avx2", "avx2-nof16c" };
#define N_BACKENDS ((int)(sizeof(backends) / sizeof(backends[0])))

/* Switches to backends[i]; false (test passes vacuously) where the CPU lacks it. */
static inline bool use_backend(int i)
{
        int r = kvk_set_backend(backends[i]);

        if (r == -ENOTSUP)
                return false;
        ck_assert_int_eq(r, 0);
        ck_assert_str_eq(kvk_backend_name(), i == 0 ? "scalar" : "avx2");
        return true;
}

/* ---- random numbers, data ---------------------------------------------- */

static uint64_t rng_state;

static inline void rng_seed(uint64_t s)
{
        rng_state = s * 0x9e3779b97f4a7c15ull + 1;
}

static inline uint64_t rnd64(void)
{
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}

static inline uint32_t rnd32(void)
{
        return (uint32_t)(rnd64() >> 32);
}

/* Uniform in [-1, 1). */
static inline double urand(void)
{
        return (double)(rnd64() >> 11) * 0x1p-52 - 1.0;
}

static inline void *xmalloc(size_t n)
{
        void *p = malloc(n ? n : 1);

        ck_assert_ptr_nonnull(p);
        return p;
}

/* Independent decoders (ldexp, no bit tricks shared with the library). */
static inline double ref_f16(uint16_t h)
{
        int e = (h >> 10) & 0x1f, m = h & 0x3ff;
        double v;

        if (e == 0x1f)
                v = m ? NAN : INFINITY;
        else if (e == 0)
                v = ldexp(m, -24);
        else
                v = ldexp(1024 + m, e - 25);
        return (h & 0x8000) ? -v : v;
}

static inline double ref_bf16(uint16_t h)
{
        int e = (h >> 7) & 0xff, m = h & 0x7f;
        double v;

        if (e == 0xff)
                v = m ? NAN : INFINITY;
        else if (e == 0)
                v = ldexp(m, -133);
        else
                v = ldexp(128 + m, e - 134);
        return (h & 0x8000) ? -v : v;
}

static inline double ref_elem(const struct kvk_shape *s, uint16_t h)
{
        return s->dtype == KVK_F16 ? ref_f16(h) : ref_bf16(h);
}

static inline uint16_t enc(const struct kvk_shape *s, float f)
{
        return s->dtype == KVK_F16 ? kvk_f32_to_f16(f) : kvk_f32_to_bf16(f);
}

/* Element (g, t, i) of the K (kv = 0) or V (kv = 1) of a block. */
static inline double ref_kv(const struct kvk_shape *s, const uint16_t *block, int kv, uint32_t g,
                     uint32_t t, uint32_t i)
{
        size_t at = (((size_t)kv * s->kv_heads + g) * s->block_tokens + t) * s->head_dim + i;

        return ref_elem(s, block[at]);
}

/* n random blocks in one allocation: K values times kscale, V in [-1, 1]. A
 * few K columns carry an offset, as real keys have outlier channels. */
static inline uint16_t *make_blocks(const struct kvk_shape *s, uint32_t n, double kscale,
                             const void **ret_ptrs)
{
        size_t bb = kvk_block_bytes(s), half = bb / 4;
        uint16_t *pool = xmalloc(bb * n);

        for (uint32_t b = 0; b < n; b++) {
                uint16_t *blk = pool + b * bb / 2;

                for (size_t e = 0; e < half; e++) {
                        double x = kscale * urand();

                        if (e % s->head_dim == 1)
                                x += 2.0 * kscale;
                        blk[e] = enc(s, (float)x);
                        blk[half + e] = enc(s, (float)urand());
                }
                ret_ptrs[b] = blk;
        }
        return pool;
}

static inline float *make_query(const struct kvk_shape *s, double scale)
{
        size_t n = (size_t)s->q_heads * s->head_dim;
        float *q = xmalloc(n * sizeof(float));

        for (size_t i = 0; i < n; i++)
                q[i] = (float)(scale * urand());
        return q;
}

static inline bool all_bytes(const void *p, size_t n, uint8_t v)
{
        for (size_t i = 0; i < n; i++)
                if (((const uint8_t *)p)[i] != v)
                        return false;
        return true;
}

static inline double rel_l2(const float *got, const double *want, size_t n)
{
        double num = 0, den = 0;

        for (size_t i = 0; i < n; i++) {
                num += (got[i] - want[i]) * (got[i] - want[i]);
                den += want[i] * want[i];
        }
        return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Shapes the kernels are checked on: GQA group 4 with head_dim 128 and 64,
 * MHA, odd groups and head_dims (tails of the vector loops), both dtypes. */
static const struct kvk_shape shapes[] = {
        { .kv_heads = 8, .q_heads = 32, .head_dim = 128, .block_tokens = 16, .dtype = KVK_F16 },
        { .kv_heads = 2, .q_heads = 8, .head_dim = 64, .block_tokens = 32, .dtype = KVK_F16 },
        { .kv_heads = 2, .q_heads = 8, .head_dim = 128, .block_tokens = 16, .dtype = KVK_BF16 },
        { .kv_heads = 4, .q_heads = 4, .head_dim = 64, .block_tokens = 16, .dtype = KVK_F16 },
        { .kv_heads = 1, .q_heads = 6, .head_dim = 100, .block_tokens = 7, .dtype = KVK_F16 },
        { .kv_heads = 3, .q_heads = 15, .head_dim = 3, .block_tokens = 5, .dtype = KVK_BF16 },
        { .kv_heads = 1, .q_heads = 2, .head_dim = 512, .block_tokens = 40, .dtype = KVK_F16 },
};
#define N_SHAPES ((int)(sizeof(shapes) / sizeof(shapes[0])))

/* Reference attention over blocks[0..n): out [q_heads][head_dim], lse, and
 * per-block mass (each may be NULL). */
static inline void ref_attention(const struct kvk_shape *s, const float *q, const void *const *blocks,
                          const uint32_t *valid, uint32_t n, double *out, double *lse,
                          double *mass)
{
        const uint32_t group = s->q_heads / s->kv_heads, d = s->head_dim;
        const double scale = 1.0 / sqrt((double)d);
        size_t tokens = 0;

        for (uint32_t b = 0; b < n; b++)
                tokens += valid[b];
        double *lg = xmalloc(tokens * sizeof(double));

        if (mass)
                memset(mass, 0, n * sizeof(double));
        for (uint32_t h = 0; h < s->q_heads; h++) {
                const uint32_t g = h / group;
                double m = -INFINITY, l = 0;
                size_t at = 0;

                for (uint32_t b = 0; b < n; b++)
                        for (uint32_t t = 0; t < valid[b]; t++) {
                                double dot = 0;

                                for (uint32_t i = 0; i < d; i++)
                                        dot += q[h * d + i] * ref_kv(s, blocks[b], 0, g, t, i);
                                lg[at] = dot * scale;
                                m = fmax(m, lg[at++]);
                        }
                for (size_t j = 0; j < tokens; j++)
                        l += exp(lg[j] - m);
                if (lse)
                        lse[h] = m + log(l);
                if (out)
                        for (uint32_t i = 0; i < d; i++)
                                out[h * d + i] = 0;
                at = 0;
                for (uint32_t b = 0; b < n; b++)
                        for (uint32_t t = 0; t < valid[b]; t++) {
                                double p = exp(lg[at++] - m) / l;

                                if (mass)
                                        mass[b] += p / s->q_heads;
                                if (out)
                                        for (uint32_t i = 0; i < d; i++)
                                                out[h * d + i] += p * ref_kv(s, blocks[b], 1, g, t, i);
                        }
        }
        free(lg);
}
