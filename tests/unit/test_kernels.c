/* SPDX-License-Identifier: MIT */
/*
 * The CPU kernels (kernels/kernels.h) against plain double-precision
 * references written here, on every back end this CPU can run: each
 * back-end-dependent test is a loop test over "scalar", "avx2" and
 * "avx2-nof16c" (the AVX2 ones are skipped on a CPU without AVX2/FMA).
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

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
static bool use_backend(int i)
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

static void rng_seed(uint64_t s)
{
        rng_state = s * 0x9e3779b97f4a7c15ull + 1;
}

static uint64_t rnd64(void)
{
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}

static uint32_t rnd32(void)
{
        return (uint32_t)(rnd64() >> 32);
}

/* Uniform in [-1, 1). */
static double urand(void)
{
        return (double)(rnd64() >> 11) * 0x1p-52 - 1.0;
}

static void *xmalloc(size_t n)
{
        void *p = malloc(n ? n : 1);

        ck_assert_ptr_nonnull(p);
        return p;
}

/* Independent decoders (ldexp, no bit tricks shared with the library). */
static double ref_f16(uint16_t h)
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

static double ref_bf16(uint16_t h)
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

static double ref_elem(const struct kvk_shape *s, uint16_t h)
{
        return s->dtype == KVK_F16 ? ref_f16(h) : ref_bf16(h);
}

static uint16_t enc(const struct kvk_shape *s, float f)
{
        return s->dtype == KVK_F16 ? kvk_f32_to_f16(f) : kvk_f32_to_bf16(f);
}

/* Element (g, t, i) of the K (kv = 0) or V (kv = 1) of a block. */
static double ref_kv(const struct kvk_shape *s, const uint16_t *block, int kv, uint32_t g,
                     uint32_t t, uint32_t i)
{
        size_t at = (((size_t)kv * s->kv_heads + g) * s->block_tokens + t) * s->head_dim + i;

        return ref_elem(s, block[at]);
}

/* n random blocks in one allocation: K values times kscale, V in [-1, 1]. A
 * few K columns carry an offset, as real keys have outlier channels. */
static uint16_t *make_blocks(const struct kvk_shape *s, uint32_t n, double kscale,
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

static float *make_query(const struct kvk_shape *s, double scale)
{
        size_t n = (size_t)s->q_heads * s->head_dim;
        float *q = xmalloc(n * sizeof(float));

        for (size_t i = 0; i < n; i++)
                q[i] = (float)(scale * urand());
        return q;
}

static bool all_bytes(const void *p, size_t n, uint8_t v)
{
        for (size_t i = 0; i < n; i++)
                if (((const uint8_t *)p)[i] != v)
                        return false;
        return true;
}

static double rel_l2(const float *got, const double *want, size_t n)
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

/* ---- conversions -------------------------------------------------------- */

START_TEST(f16_all_values_round_trip)
{
        for (uint32_t h = 0; h < 65536; h++) {
                float f = kvk_f16_to_f32((uint16_t)h);
                double want = ref_f16((uint16_t)h);

                if (isnan(want)) {
                        uint32_t u;

                        EXPECT(isnan(f));
                        memcpy(&u, &f, 4);
                        EXPECT((u >> 31) == (h >> 15));
                        EXPECT(((u >> 13) & 0x3ff) == (h & 0x3ff));  /* payload kept */
                } else {
                        EXPECT((double)f == want);
                        EXPECT((!!signbit(f)) == (!!(h & 0x8000)));
                }
                EXPECT((kvk_f32_to_f16(f)) == (h));
        }
}
END_TEST

START_TEST(bf16_all_values_round_trip)
{
        for (uint32_t h = 0; h < 65536; h++) {
                float f = kvk_bf16_to_f32((uint16_t)h);
                double want = ref_bf16((uint16_t)h);

                if (isnan(want))
                        EXPECT(isnan(f));
                else
                        EXPECT((double)f == want);
                EXPECT((kvk_f32_to_bf16(f)) == (h));
        }
}
END_TEST

START_TEST(f16_rounding_edge_cases)
{
        static const struct {
                float f;
                uint16_t h;
        } cases[] = {
                { 0.0f, 0x0000 },
                { -0.0f, 0x8000 },
                { 1.0f, 0x3c00 },
                { -2.0f, 0xc000 },
                { 1.0f + 0x1p-11f, 0x3c00 },            /* tie: to even (down) */
                { 1.0f + 3 * 0x1p-11f, 0x3c02 },        /* tie: to even (up) */
                { 1.0f + 0x1p-11f + 0x1p-20f, 0x3c01 }, /* just above the tie */
                { 65504.0f, 0x7bff },                   /* largest finite */
                { 65519.0f, 0x7bff },
                { 65520.0f, 0x7c00 },                   /* tie with 65536: to even = inf */
                { 65536.0f, 0x7c00 },
                { 1e10f, 0x7c00 },
                { -1e10f, 0xfc00 },
                { INFINITY, 0x7c00 },
                { -INFINITY, 0xfc00 },
                { 0x1p-14f, 0x0400 },                   /* smallest normal */
                { 0x1p-24f, 0x0001 },                   /* smallest subnormal */
                { -0x1p-24f, 0x8001 },
                { 0x1p-25f, 0x0000 },                   /* tie: to even (zero) */
                { 0x1p-25f + 0x1p-40f, 0x0001 },
                { 3 * 0x1p-25f, 0x0002 },               /* 1.5 ulp: to even (2) */
                { 5 * 0x1p-25f, 0x0002 },               /* 2.5 ulp: to even (2) */
                { 1023.5f * 0x1p-24f, 0x0400 },         /* largest subnormal rounds up to normal */
                { 1022.5f * 0x1p-24f, 0x03fe },
                { 0x1p-30f, 0x0000 },
                { 0x1p-149f, 0x0000 },                  /* f32 subnormal */
                { -0x1p-149f, 0x8000 },
                { 0x1.ffcp-15f, 0x0400 },               /* rounds into the normal range */
        };
        uint16_t h;

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                h = kvk_f32_to_f16(cases[i].f);
                EXPECT_MSG(h == cases[i].h, "case %zu: %a -> 0x%04x, want 0x%04x", i,
                              (double)cases[i].f, h, cases[i].h);
        }
        h = kvk_f32_to_f16(NAN);
        EXPECT((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
        h = kvk_f32_to_f16(-NAN);
        EXPECT((h & 0xfc00) == 0xfc00 && (h & 0x3ff) != 0);
        /* A NaN whose payload lives only in the dropped bits stays a NaN. */
        uint32_t u = 0x7f800001u;
        float f;
        memcpy(&f, &u, 4);
        h = kvk_f32_to_f16(f);
        EXPECT((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
        h = kvk_f32_to_bf16(f);
        EXPECT((h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0);
}
END_TEST

/* Property check on random floats: the result is a nearest representable
 * value, ties go to the even one, and beyond the largest finite value the
 * result is inf exactly when round-to-nearest-even says so. */
static void check_rne(double x, uint16_t h, double (*dec)(uint16_t), double max_finite,
                      double overflow_at)
{
        double ax = fabs(x);
        uint16_t mag = h & 0x7fff;

        EXPECT((!!(h & 0x8000)) == (x < 0 || (x == 0 && signbit(x))));
        if (ax >= overflow_at) {
                EXPECT(isinf(dec(mag)));
                return;
        }
        double v = dec(mag);
        EXPECT_MSG(isfinite(v) && v <= max_finite, "%a -> 0x%04x", x, h);
        double dv = fabs(ax - v);
        if (mag > 0)
                EXPECT(dv <= fabs(ax - dec(mag - 1)));
        if (dec(mag + 1) <= max_finite) {
                double up = fabs(ax - dec(mag + 1));

                EXPECT_MSG(dv <= up, "%a -> 0x%04x not nearest", x, h);
                if (dv == up)
                        EXPECT_MSG((mag & 1) == 0, "%a -> 0x%04x tie not even", x, h);
        }
        if (mag > 0 && dv == fabs(ax - dec(mag - 1)))
                EXPECT_MSG((mag & 1) == 0, "%a -> 0x%04x tie not even", x, h);
}

START_TEST(f32_to_f16_and_bf16_random_rne)
{
        rng_seed(7);
        for (int i = 0; i < 400000; i++) {
                /* Exponents that cover subnormal, normal and overflowing halves,
                 * and, half the time, mantissas sitting exactly on a tie. */
                uint32_t u = (rnd32() & 0x80000000u) | ((uint32_t)(95 + rnd32() % 50) << 23) |
                             (rnd32() & 0x7fffffu);
                float f;

                if (i & 1)
                        u = (u & ~0x1fffu) | 0x1000u;   /* f16 tie in the normal range */
                memcpy(&f, &u, 4);
                check_rne(f, kvk_f32_to_f16(f), ref_f16, 65504.0, 65520.0);

                u = rnd32();
                if ((u & 0x7f800000u) == 0x7f800000u)
                        continue;
                if (i & 1)
                        u = (u & ~0xffffu) | 0x8000u;   /* bf16 tie */
                memcpy(&f, &u, 4);
                check_rne(f, kvk_f32_to_bf16(f), ref_bf16, 0x1.fep127,
                          0x1.ffp127 /* tie between max and 2^128: to even = inf */);
        }
}
END_TEST

/* ---- summaries and scores --------------------------------------------- */

START_TEST(summary_matches_reference)
{
        if (!use_backend(_i))
                return;
        rng_seed(11);
        for (int si = 0; si < N_SHAPES; si++) {
                const struct kvk_shape *s = &shapes[si];
                const size_t sf = kvk_summary_floats(s);
                const void *ptr[1];
                uint16_t *blk = make_blocks(s, 1, 1.0, ptr);
                float *sum = xmalloc(sf * sizeof(float));

                for (uint32_t valid = 1; valid <= s->block_tokens;
                     valid = valid == s->block_tokens ? valid + 1
                             : valid + 1 + valid / 2 < s->block_tokens ? valid + 1 + valid / 2
                             : s->block_tokens) {
                        ck_assert_int_eq(kvk_block_summary(s, blk, valid, sum), 0);
                        for (uint32_t g = 0; g < s->kv_heads; g++)
                                for (uint32_t i = 0; i < s->head_dim; i++) {
                                        double lo = INFINITY, hi = -INFINITY;

                                        for (uint32_t t = 0; t < valid; t++) {
                                                double x = ref_kv(s, blk, 0, g, t, i);

                                                lo = fmin(lo, x);
                                                hi = fmax(hi, x);
                                        }
                                        EXPECT((double)sum[(2 * g) * s->head_dim + i] == lo);
                                        EXPECT((double)sum[(2 * g + 1) * s->head_dim + i] == hi);
                                }
                }
                free(sum);
                free(blk);
        }
}
END_TEST

/* Scores from random summaries (min <= max) against queries of mixed signs
 * with exact zeros and -0, on shapes with head_dim tails (not a multiple of 8
 * or 16), group 1 and groups that are not a multiple of 4; an infinite
 * summary column under a query of the sign that does not pick it. */
START_TEST(scores_mixed_signs_and_edge_shapes)
{
        static const struct kvk_shape es[] = {
                { .kv_heads = 8, .q_heads = 32, .head_dim = 128, .block_tokens = 16, .dtype = KVK_F16 },
                { .kv_heads = 3, .q_heads = 3, .head_dim = 13, .block_tokens = 1, .dtype = KVK_F16 },
                { .kv_heads = 2, .q_heads = 10, .head_dim = 9, .block_tokens = 1, .dtype = KVK_F16 },
                { .kv_heads = 1, .q_heads = 7, .head_dim = 17, .block_tokens = 1, .dtype = KVK_F16 },
                { .kv_heads = 4, .q_heads = 12, .head_dim = 1, .block_tokens = 1, .dtype = KVK_F16 },
                { .kv_heads = 2, .q_heads = 16, .head_dim = 24, .block_tokens = 1, .dtype = KVK_F16 },
                { .kv_heads = 1, .q_heads = 9, .head_dim = 512, .block_tokens = 1, .dtype = KVK_F16 },
        };
        if (!use_backend(_i))
                return;
        rng_seed(17);
        for (size_t si = 0; si < sizeof(es) / sizeof(es[0]); si++) {
                const struct kvk_shape *s = &es[si];
                const uint32_t n = 37, d = s->head_dim, group = s->q_heads / s->kv_heads;
                const size_t sf = kvk_summary_floats(s);
                float *sum = xmalloc(n * sf * sizeof(float));
                float *sc = xmalloc(n * sizeof(float));
                float *q = make_query(s, 1.0);

                for (size_t i = 0; i < (size_t)s->q_heads * d; i++) {
                        uint32_t r = rnd32() % 8;

                        if (r == 0)
                                q[i] = 0.0f;
                        else if (r == 1)
                                q[i] = -0.0f;
                }
                for (uint32_t b = 0; b < n; b++)
                        for (uint32_t g = 0; g < s->kv_heads; g++)
                                for (uint32_t i = 0; i < d; i++) {
                                        float *mn = sum + b * sf + (size_t)g * 2 * d + i;
                                        float x = (float)(3.0 * urand()), y = (float)urand();

                                        /* Some all-positive and all-negative columns. */
                                        if (i % 5 == 1)
                                                x = fabsf(x) + 0.5f;
                                        else if (i % 5 == 2)
                                                x = -fabsf(x) - 0.5f;
                                        mn[0] = x;
                                        mn[d] = x + fabsf(y) * (b % 3 == 0 ? 0.0f : 1.0f);
                                }
                /* Block 1: min -inf (max +inf) in column 0 of every kv head,
                 * where every query head is positive (negative): finite. */
                for (uint32_t h = 0; h < s->q_heads; h++)
                        q[(size_t)h * d] = 0.75f;
                for (uint32_t g = 0; g < s->kv_heads; g++)
                        sum[sf + (size_t)g * 2 * d] = -INFINITY;
                ck_assert_int_eq(kvk_block_scores(s, q, sum, n, sc), 0);

                for (uint32_t b = 0; b < n; b++) {
                        const float *sb = sum + b * sf;
                        double want = -INFINITY, mag = 0;

                        for (uint32_t h = 0; h < s->q_heads; h++) {
                                const float *mn = sb + (size_t)(h / group) * 2 * d;
                                const float *mx = mn + d;
                                double acc = 0, accmag = 0;

                                for (uint32_t i = 0; i < d; i++) {
                                        double qd = q[h * d + i];

                                        acc += qd > 0 ? qd * mx[i] : qd < 0 ? qd * mn[i] : 0.0;
                                        if (qd != 0)
                                                accmag += fabs(qd) *
                                                          fmax(fabs(mn[i]), fabs(mx[i]));
                                }
                                want = fmax(want, acc);
                                mag = fmax(mag, accmag);
                        }
                        EXPECT_MSG(isfinite(sc[b]) && fabs(sc[b] - want) <= 1e-5 * mag,
                                   "shape %zu block %u: %g vs %g", si, b, (double)sc[b], want);
                }
                free(q);
                free(sc);
                free(sum);
        }
}
END_TEST

START_TEST(scores_match_reference_and_bound_every_token)
{
        if (!use_backend(_i))
                return;
        rng_seed(12);
        for (int si = 0; si < N_SHAPES; si++) {
                const struct kvk_shape *s = &shapes[si];
                const uint32_t n = 50, group = s->q_heads / s->kv_heads;
                const size_t sf = kvk_summary_floats(s);
                const void **ptr = xmalloc(n * sizeof(*ptr));
                uint16_t *pool = make_blocks(s, n, 1.0, ptr);
                uint32_t *valid = xmalloc(n * sizeof(uint32_t));
                float *sum = xmalloc(n * sf * sizeof(float));
                float *sc = xmalloc(n * sizeof(float));
                float *q = make_query(s, 1.0);

                for (uint32_t b = 0; b < n; b++) {
                        valid[b] = b == n - 1 ? 1 + rnd32() % s->block_tokens : s->block_tokens;
                        ck_assert_int_eq(kvk_block_summary(s, ptr[b], valid[b], sum + b * sf), 0);
                }
                ck_assert_int_eq(kvk_block_scores(s, q, sum, n, sc), 0);

                for (uint32_t b = 0; b < n; b++) {
                        const float *sb = sum + b * sf;
                        double want = -INFINITY, mag = 0;

                        for (uint32_t h = 0; h < s->q_heads; h++) {
                                const float *mn = sb + (size_t)(h / group) * 2 * s->head_dim;
                                const float *mx = mn + s->head_dim;
                                double acc = 0, accmag = 0;

                                for (uint32_t i = 0; i < s->head_dim; i++) {
                                        double qd = q[h * s->head_dim + i];

                                        acc += fmax(qd * mn[i], qd * mx[i]);
                                        accmag += fabs(qd) * fmax(fabs(mn[i]), fabs(mx[i]));
                                }
                                want = fmax(want, acc);
                                mag = fmax(mag, accmag);
                        }
                        EXPECT_MSG(fabs(sc[b] - want) <= 1e-5 * mag, "block %u: %g vs %g", b,
                                      (double)sc[b], want);

                        /* The bound: no token of the block beats its score. */
                        for (uint32_t h = 0; h < s->q_heads; h++)
                                for (uint32_t t = 0; t < valid[b]; t++) {
                                        double dot = 0;

                                        for (uint32_t i = 0; i < s->head_dim; i++)
                                                dot += q[h * s->head_dim + i] *
                                                       ref_kv(s, ptr[b], 0, h / group, t, i);
                                        EXPECT_MSG(sc[b] >= dot - 1e-5 * mag,
                                                      "block %u head %u token %u: %g < %g", b, h,
                                                      t, (double)sc[b], dot);
                                }
                }
                free(q);
                free(sc);
                free(sum);
                free(valid);
                free(pool);
                free(ptr);
        }
}
END_TEST

/* ---- attention ---------------------------------------------------------- */

/* Reference attention over blocks[0..n): out [q_heads][head_dim], lse, and
 * per-block mass (each may be NULL). */
static void ref_attention(const struct kvk_shape *s, const float *q, const void *const *blocks,
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

/* tol: relative L2 error allowed on the outputs (fp32 accumulation does
 * much better than the 1e-3 the harness needs, so the normal cases ask more). */
static void check_attention(const struct kvk_shape *s, uint32_t n, double qscale, double kscale,
                            double tol)
{
        const size_t nq = (size_t)s->q_heads * s->head_dim;
        const void **ptr = xmalloc(n * sizeof(*ptr));
        const void **sel = xmalloc(n * sizeof(*sel));
        uint16_t *pool = make_blocks(s, n, kscale, ptr);
        uint32_t *valid = xmalloc(n * sizeof(uint32_t)), *svalid = xmalloc(n * sizeof(uint32_t));
        float *q = make_query(s, qscale);
        float *out = xmalloc(nq * sizeof(float)), *lse = xmalloc(s->q_heads * sizeof(float));
        float *mass = xmalloc(n * sizeof(float));
        double *rout = xmalloc(nq * sizeof(double)), *rlse = xmalloc(s->q_heads * sizeof(double));
        double *rmass = xmalloc(n * sizeof(double));
        uint32_t nsel = 0;
        double err, total = 0;

        for (uint32_t b = 0; b < n; b++)
                valid[b] = b == n - 1 ? 1 + rnd32() % s->block_tokens : s->block_tokens;

        /* Full attention, with lse. */
        ck_assert_int_eq(kvk_full_attention(s, q, ptr, valid, n, out, lse), 0);
        ref_attention(s, q, ptr, valid, n, rout, rlse, rmass);
        err = rel_l2(out, rout, nq);
        ck_assert_msg(err < tol, "full attention rel L2 %g", err);
        for (uint32_t h = 0; h < s->q_heads; h++)
                EXPECT_MSG(fabs(lse[h] - rlse[h]) <= 1e-5 * fmax(1.0, fabs(rlse[h])),
                              "lse[%u] %g vs %g", h, (double)lse[h], rlse[h]);

        /* Attention mass. */
        ck_assert_int_eq(kvk_block_attention_mass(s, q, ptr, valid, n, mass), 0);
        for (uint32_t b = 0; b < n; b++) {
                EXPECT_MSG(fabs(mass[b] - rmass[b]) <= 1e-5, "mass[%u] %g vs %g", b,
                              (double)mass[b], rmass[b]);
                total += mass[b];
        }
        ck_assert_msg(fabs(total - 1.0) < 1e-4, "masses sum to %g", total);

        /* A sparse selection, in scrambled order, without lse. */
        for (uint32_t b = 0; b < n; b++)
                if (rnd32() % 3 == 0 || b == n - 1) {
                        sel[nsel] = ptr[b];
                        svalid[nsel++] = valid[b];
                }
        for (uint32_t i = nsel; i > 1; i--) {
                uint32_t j = rnd32() % i;
                const void *tp = sel[i - 1];
                uint32_t tv = svalid[i - 1];

                sel[i - 1] = sel[j];
                svalid[i - 1] = svalid[j];
                sel[j] = tp;
                svalid[j] = tv;
        }
        ck_assert_int_eq(kvk_decode_attention(s, q, sel, svalid, nsel, out, NULL), 0);
        ref_attention(s, q, sel, svalid, nsel, rout, NULL, NULL);
        err = rel_l2(out, rout, nq);
        ck_assert_msg(err < tol, "sparse attention rel L2 %g", err);

        /* Two halves merged through their lse give the whole. */
        if (n >= 2) {
                uint32_t h1 = n / 2;
                float *o2 = xmalloc(nq * sizeof(float)), *l2 = xmalloc(s->q_heads * sizeof(float));
                double *merged = xmalloc(nq * sizeof(double));

                ck_assert_int_eq(kvk_decode_attention(s, q, ptr, valid, h1, out, lse), 0);
                ck_assert_int_eq(kvk_decode_attention(s, q, ptr + h1, valid + h1, n - h1, o2, l2),
                                 0);
                for (uint32_t h = 0; h < s->q_heads; h++) {
                        double m = fmax(lse[h], l2[h]);
                        double w1 = exp(lse[h] - m), w2 = exp(l2[h] - m);

                        for (uint32_t i = 0; i < s->head_dim; i++)
                                merged[h * s->head_dim + i] =
                                        (w1 * out[h * s->head_dim + i] + w2 * o2[h * s->head_dim + i]) /
                                        (w1 + w2);
                }
                ref_attention(s, q, ptr, valid, n, rout, NULL, NULL);
                double num = 0, den = 0;
                for (size_t i = 0; i < nq; i++) {
                        num += (merged[i] - rout[i]) * (merged[i] - rout[i]);
                        den += rout[i] * rout[i];
                }
                ck_assert_msg(sqrt(num / den) < tol, "merged halves rel L2 %g", sqrt(num / den));
                free(merged);
                free(l2);
                free(o2);
        }

        free(rmass);
        free(rlse);
        free(rout);
        free(mass);
        free(lse);
        free(out);
        free(q);
        free(svalid);
        free(valid);
        free(pool);
        free(sel);
        free(ptr);
}

START_TEST(attention_matches_reference)
{
        static const uint32_t nblocks[N_SHAPES] = { 37, 20, 25, 30, 41, 60, 6 };

        if (!use_backend(_i))
                return;
        rng_seed(13);
        for (int si = 0; si < N_SHAPES; si++) {
                /* Flat softmax, peaked softmax. */
                check_attention(&shapes[si], nblocks[si], 1.0, 1.0, 1e-4);
                check_attention(&shapes[si], nblocks[si], 4.0, 2.0, 1e-4);
        }
}
END_TEST

/* Shapes for the AVX2 fused attention's edges: head_dim not a multiple of 8
 * or 16 (masked tails), groups 1, 2, 3, 7 and 8 (tiles of 4, 2, 1 heads),
 * blocks of more than 16 tokens (chunks, a last chunk of one token), both
 * dtypes. */
static const struct kvk_shape edge_shapes[] = {
        { .kv_heads = 2, .q_heads = 16, .head_dim = 20, .block_tokens = 16, .dtype = KVK_F16 },
        { .kv_heads = 3, .q_heads = 3, .head_dim = 13, .block_tokens = 16, .dtype = KVK_BF16 },
        { .kv_heads = 1, .q_heads = 8, .head_dim = 72, .block_tokens = 33, .dtype = KVK_F16 },
        { .kv_heads = 2, .q_heads = 6, .head_dim = 9, .block_tokens = 5, .dtype = KVK_F16 },
        { .kv_heads = 1, .q_heads = 2, .head_dim = 136, .block_tokens = 16, .dtype = KVK_BF16 },
        { .kv_heads = 2, .q_heads = 14, .head_dim = 128, .block_tokens = 16, .dtype = KVK_F16 },
        { .kv_heads = 4, .q_heads = 4, .head_dim = 1, .block_tokens = 3, .dtype = KVK_F16 },
};

START_TEST(attention_edge_shapes)
{
        static const uint32_t ns[] = { 1, 2, 9 };

        if (!use_backend(_i))
                return;
        rng_seed(17);
        for (size_t si = 0; si < sizeof(edge_shapes) / sizeof(edge_shapes[0]); si++) {
                const struct kvk_shape *s = &edge_shapes[si];

                /* n_sel 1, 2, 9, the last block partly valid (check_attention). */
                for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
                        check_attention(s, ns[ni], 1.0, 1.0, 1e-4);
                        check_attention(s, ns[ni], 4.0, 2.0, 1e-4);
                }

                /* Every block with a random number of valid tokens, 0 included. */
                const uint32_t n = 7;
                const size_t nq = (size_t)s->q_heads * s->head_dim;
                const void *ptr[7];
                uint32_t valid[7];
                uint16_t *pool = make_blocks(s, n, 1.5, ptr);
                float *q = make_query(s, 2.0);
                float *out = xmalloc(nq * sizeof(float)), *lse = xmalloc(s->q_heads * sizeof(float));
                double *rout = xmalloc(nq * sizeof(double));
                double *rlse = xmalloc(s->q_heads * sizeof(double));
                double err;

                for (uint32_t b = 0; b < n; b++)
                        valid[b] = rnd32() % (s->block_tokens + 1);
                valid[3] = 1 + rnd32() % s->block_tokens;
                ck_assert_int_eq(kvk_decode_attention(s, q, ptr, valid, n, out, lse), 0);
                ref_attention(s, q, ptr, valid, n, rout, rlse, NULL);
                err = rel_l2(out, rout, nq);
                ck_assert_msg(err < 1e-4, "shape %zu: random valid counts rel L2 %g", si, err);
                for (uint32_t h = 0; h < s->q_heads; h++)
                        EXPECT_MSG(fabs(lse[h] - rlse[h]) <= 1e-5 * fmax(1.0, fabs(rlse[h])),
                                   "shape %zu: lse[%u] %g vs %g", si, h, (double)lse[h], rlse[h]);
                free(rlse);
                free(rout);
                free(lse);
                free(out);
                free(q);
                free(pool);
        }
}
END_TEST

START_TEST(attention_large_logits_stay_finite)
{
        /* Logits in the thousands: exp() would overflow without the running max. */
        const struct kvk_shape s = { .kv_heads = 2, .q_heads = 8, .head_dim = 64,
                                     .block_tokens = 16, .dtype = KVK_F16 };

        if (!use_backend(_i))
                return;
        rng_seed(14);
        check_attention(&s, 12, 30.0, 30.0, 1e-3);
}
END_TEST

START_TEST(attention_one_token_and_empty_blocks)
{
        const struct kvk_shape s = { .kv_heads = 2, .q_heads = 8, .head_dim = 128,
                                     .block_tokens = 16, .dtype = KVK_F16 };
        const size_t nq = (size_t)s.q_heads * s.head_dim;
        const void *ptr[3];
        uint16_t *pool;
        float *q, out[8 * 128], lse[8], mass[3];
        const uint32_t valid[3] = { 0, 1, 0 };

        if (!use_backend(_i))
                return;
        rng_seed(15);
        pool = make_blocks(&s, 3, 1.0, ptr);
        q = make_query(&s, 1.0);
        /* One valid token: the output is its V, the lse its logit. */
        ck_assert_int_eq(kvk_decode_attention(&s, q, ptr, valid, 3, out, lse), 0);
        for (uint32_t h = 0; h < s.q_heads; h++) {
                double dot = 0;

                for (uint32_t i = 0; i < s.head_dim; i++) {
                        EXPECT((double)out[h * s.head_dim + i] ==
                                  ref_kv(&s, ptr[1], 1, h / 4, 0, i));
                        dot += q[h * s.head_dim + i] * ref_kv(&s, ptr[1], 0, h / 4, 0, i);
                }
                ck_assert(fabs(lse[h] - dot / sqrt(128.0)) < 1e-5 * fmax(1, fabs(lse[h])));
        }
        ck_assert_int_eq(kvk_block_attention_mass(&s, q, ptr, valid, 3, mass), 0);
        ck_assert(mass[0] == 0.0f && mass[2] == 0.0f);
        ck_assert(fabs(mass[1] - 1.0) < 1e-6);
        (void)nq;
        free(q);
        free(pool);
}
END_TEST

START_TEST(backends_agree)
{
        /* The same inputs through scalar and AVX2 give the same results up to
         * fp32 summation order. */
        const struct kvk_shape *s = &shapes[0];
        const uint32_t n = 64;
        const size_t nq = (size_t)s->q_heads * s->head_dim, sf = kvk_summary_floats(s);
        const void **ptr;
        uint16_t *pool;
        uint32_t *valid;
        float *q, *o[2], *m[2], *sum[2], *sc[2];

        if (kvk_set_backend("avx2") == -ENOTSUP)
                return;
        ptr = xmalloc(n * sizeof(*ptr));
        valid = xmalloc(n * sizeof(uint32_t));
        rng_seed(16);
        pool = make_blocks(s, n, 1.0, ptr);
        q = make_query(s, 2.0);
        for (uint32_t b = 0; b < n; b++)
                valid[b] = b == n - 1 ? 5 : s->block_tokens;
        for (int k = 0; k < 2; k++) {
                ck_assert_int_eq(kvk_set_backend(k ? "avx2" : "scalar"), 0);
                o[k] = xmalloc(nq * sizeof(float));
                m[k] = xmalloc(n * sizeof(float));
                sum[k] = xmalloc(n * sf * sizeof(float));
                sc[k] = xmalloc(n * sizeof(float));
                ck_assert_int_eq(kvk_decode_attention(s, q, ptr, valid, n, o[k], NULL), 0);
                ck_assert_int_eq(kvk_block_attention_mass(s, q, ptr, valid, n, m[k]), 0);
                for (uint32_t b = 0; b < n; b++)
                        EXPECT(kvk_block_summary(s, ptr[b], valid[b], sum[k] + b * sf) == 0);
                ck_assert_int_eq(kvk_block_scores(s, q, sum[k], n, sc[k]), 0);
        }
        ck_assert_mem_eq(sum[0], sum[1], n * sf * sizeof(float));
        for (size_t i = 0; i < nq; i++)
                EXPECT(fabsf(o[0][i] - o[1][i]) <= 1e-5f * (1 + fabsf(o[0][i])));
        for (uint32_t b = 0; b < n; b++) {
                EXPECT(fabsf(m[0][b] - m[1][b]) <= 1e-6f);
                EXPECT(fabsf(sc[0][b] - sc[1][b]) <= 1e-5f * (1 + fabsf(sc[0][b])));
        }
        for (int k = 0; k < 2; k++) {
                free(o[k]);
                free(m[k]);
                free(sum[k]);
                free(sc[k]);
        }
        free(q);
        free(valid);
        free(pool);
        free(ptr);
}
END_TEST

/* ---- merge of partial results -------------------------------------------- */

/* The exact merge (double) of B = (b, lb) into A = (a, *la), one head of d:
 * the definition of kernels.h, -inf on either side included. */
static void ref_merge_head(double *a, double *la, const float *b, double lb, uint32_t d)
{
        double m, wa, wb;

        if (lb == -INFINITY)
                return;
        if (*la == -INFINITY) {
                for (uint32_t i = 0; i < d; i++)
                        a[i] = b[i];
                *la = lb;
                return;
        }
        m = fmax(*la, lb);
        wa = exp(*la - m);
        wb = exp(lb - m);
        for (uint32_t i = 0; i < d; i++)
                a[i] = (wa * a[i] + wb * b[i]) / (wa + wb);
        *la = m + log(wa + wb);
}

static uint32_t f32_bits(float f)
{
        uint32_t u;

        memcpy(&u, &f, sizeof(u));
        return u;
}

static bool same_bits(const float *a, const float *b, size_t n)
{
        return memcmp(a, b, n * sizeof(float)) == 0;
}

/*
 * Random partials merged once, against the exact merge of the same fp32
 * inputs: each element within 3 ulp of the scale of its terms
 * (wA |outA| + wB |outB|) / (wA + wB) (2-3 ulp seen), each lse within 1 ulp
 * of max(1, |lse|) (0.6 seen).
 * The lse of A and B are far apart (the weight of one underflows), close,
 * equal, or anywhere in [-40, 40].
 */
START_TEST(lse_merge_matches_reference)
{
        const double ulp = FLT_EPSILON;

        if (!use_backend(_i))
                return;
        rng_seed(31);
        for (int si = 0; si < N_SHAPES; si++) {
                const struct kvk_shape *s = &shapes[si];
                const uint32_t d = s->head_dim, nh = s->q_heads;
                const size_t nq = (size_t)nh * d;
                float *a = xmalloc(nq * sizeof(float)), *b = xmalloc(nq * sizeof(float));
                float *la = xmalloc(nh * sizeof(float)), *lb = xmalloc(nh * sizeof(float));
                double *ra = xmalloc(nq * sizeof(double)), *rla = xmalloc(nh * sizeof(double));
                double *scale = xmalloc(nq * sizeof(double));

                for (int trial = 0; trial < 20; trial++) {
                        for (uint32_t h = 0; h < nh; h++) {
                                static const double gaps[] = { 0, 1e-6, 0.5, 3, 17, 87, 104, 300 };
                                double gap = rnd32() % 3 ? 80 * urand() : gaps[rnd32() % 8];

                                la[h] = (float)(40 * urand());
                                lb[h] = (float)(la[h] + (rnd32() % 2 ? gap : -gap));
                                rla[h] = la[h];
                        }
                        for (size_t i = 0; i < nq; i++) {
                                a[i] = (float)(trial % 2 ? 100 * urand() : urand());
                                b[i] = (float)urand();
                                ra[i] = a[i];
                        }
                        /* The scale each element's rounding is measured by. */
                        for (uint32_t h = 0; h < nh; h++) {
                                double m = fmax(la[h], lb[h]);
                                double wa = exp(la[h] - m), wb = exp(lb[h] - m);

                                for (size_t at = (size_t)h * d; at < (size_t)(h + 1) * d; at++)
                                        scale[at] = (wa * fabs(a[at]) + wb * fabs(b[at])) / (wa + wb);
                        }
                        for (uint32_t h = 0; h < nh; h++)
                                ref_merge_head(ra + (size_t)h * d, rla + h, b + (size_t)h * d, lb[h], d);
                        ck_assert_int_eq(kvk_lse_merge(s, a, la, b, lb), 0);
                        for (uint32_t h = 0; h < nh; h++) {
                                EXPECT_MSG(fabs(la[h] - rla[h]) <= ulp * fmax(1.0, fabs(rla[h])),
                                           "shape %d head %u: lse %.9g, want %.9g", si, h,
                                           (double)la[h], rla[h]);
                                for (uint32_t i = 0; i < d; i++) {
                                        const size_t at = (size_t)h * d + i;

                                        EXPECT_MSG(fabs(a[at] - ra[at]) <= 3 * ulp * scale[at],
                                                   "shape %d head %u [%u]: %.9g, want %.9g "
                                                   "(scale %g)", si, h, i, (double)a[at], ra[at],
                                                   scale[at]);
                                }
                        }
                }
                free(scale);
                free(rla);
                free(ra);
                free(lb);
                free(la);
                free(b);
                free(a);
        }
}
END_TEST

/*
 * Attention split over blocks [0, i) and [i, n), the two results merged,
 * equals attention over all n blocks (the double reference) to < 1e-5
 * relative L2 error, lse to 1e-5; for every split point, merged either way
 * round; and three partials merged into a fresh accumulator (lse -inf, out
 * NaN: what it holds does not matter).
 */
static void check_split_attention(const struct kvk_shape *s, uint32_t n, double qscale,
                                  double kscale)
{
        const size_t nq = (size_t)s->q_heads * s->head_dim;
        const void **ptr = xmalloc(n * sizeof(*ptr));
        uint16_t *pool = make_blocks(s, n, kscale, ptr);
        uint32_t *valid = xmalloc(n * sizeof(uint32_t));
        float *q = make_query(s, qscale);
        float *o1 = xmalloc(nq * sizeof(float)), *l1 = xmalloc(s->q_heads * sizeof(float));
        float *o2 = xmalloc(nq * sizeof(float)), *l2 = xmalloc(s->q_heads * sizeof(float));
        double *rout = xmalloc(nq * sizeof(double)), *rlse = xmalloc(s->q_heads * sizeof(double));
        double err;

        for (uint32_t b = 0; b < n; b++)
                valid[b] = b == n - 1 ? 1 + rnd32() % s->block_tokens : s->block_tokens;
        ref_attention(s, q, ptr, valid, n, rout, rlse, NULL);

        for (uint32_t i = 1; i < n; i++) {
                for (int way = 0; way < 2; way++) {
                        /* way 0: [i, n) into [0, i); way 1: [0, i) into [i, n). */
                        const uint32_t a0 = way ? i : 0, an = way ? n - i : i;
                        const uint32_t b0 = way ? 0 : i, bn = way ? i : n - i;

                        ck_assert_int_eq(kvk_decode_attention(s, q, ptr + a0, valid + a0, an, o1, l1),
                                         0);
                        ck_assert_int_eq(kvk_decode_attention(s, q, ptr + b0, valid + b0, bn, o2, l2),
                                         0);
                        ck_assert_int_eq(kvk_lse_merge(s, o1, l1, o2, l2), 0);
                        err = rel_l2(o1, rout, nq);
                        ck_assert_msg(err < 1e-5, "split at %u of %u (way %d): rel L2 %g", i, n,
                                      way, err);
                        for (uint32_t h = 0; h < s->q_heads; h++)
                                EXPECT_MSG(fabs(l1[h] - rlse[h]) <= 1e-5 * fmax(1.0, fabs(rlse[h])),
                                           "split at %u: lse[%u] %g vs %g", i, h, (double)l1[h],
                                           rlse[h]);
                }
        }

        if (n >= 3) {
                const uint32_t cut[4] = { 0, n / 3, n / 3 + 1, n };

                for (size_t k = 0; k < nq; k++)
                        o1[k] = NAN;
                for (uint32_t h = 0; h < s->q_heads; h++)
                        l1[h] = -INFINITY;
                for (int p = 0; p < 3; p++) {
                        ck_assert_int_eq(kvk_decode_attention(s, q, ptr + cut[p], valid + cut[p],
                                                              cut[p + 1] - cut[p], o2, l2), 0);
                        ck_assert_int_eq(kvk_lse_merge(s, o1, l1, o2, l2), 0);
                }
                err = rel_l2(o1, rout, nq);
                ck_assert_msg(err < 1e-5, "three partials into a fresh accumulator: rel L2 %g", err);
                for (uint32_t h = 0; h < s->q_heads; h++)
                        EXPECT(fabs(l1[h] - rlse[h]) <= 1e-5 * fmax(1.0, fabs(rlse[h])));
        }

        free(rlse);
        free(rout);
        free(l2);
        free(o2);
        free(l1);
        free(o1);
        free(q);
        free(valid);
        free(pool);
        free(ptr);
}

START_TEST(lse_merge_splits_attention)
{
        static const uint32_t nblocks[N_SHAPES] = { 9, 7, 8, 9, 11, 13, 4 };

        if (!use_backend(_i))
                return;
        rng_seed(32);
        for (int si = 0; si < N_SHAPES; si++) {
                /* Flat softmax, peaked softmax. */
                check_split_attention(&shapes[si], nblocks[si], 1.0, 1.0);
                check_split_attention(&shapes[si], nblocks[si], 4.0, 2.0);
        }
}
END_TEST

/* n bytes that end where a PROT_NONE page begins, so that a kernel reading or
 * writing past them faults; guard_free() unmaps them. */
static void *guarded(size_t n)
{
        const size_t pg = (size_t)sysconf(_SC_PAGESIZE), len = (n + pg - 1) / pg * pg + pg;
        uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

        ck_assert(m != MAP_FAILED);
        ck_assert_int_eq(mprotect(m + len - pg, pg, PROT_NONE), 0);
        return m + len - pg - n;
}

static void guard_free(void *p, size_t n)
{
        const size_t pg = (size_t)sysconf(_SC_PAGESIZE), len = (n + pg - 1) / pg * pg + pg;

        munmap((uint8_t *)p + n + pg - len, len);
}

/* The edges, each in its own head of one call (15 heads: a full vector of 8
 * and a tail of 7; head_dim 9: a tail), the other heads normal; every array
 * ends at a guard page (the vector tails read and write only what is
 * theirs). */
START_TEST(lse_merge_infinities_and_nan)
{
        const struct kvk_shape s = { .kv_heads = 1, .q_heads = 15, .head_dim = 9,
                                     .block_tokens = 16, .dtype = KVK_BF16 };
        enum { D = 9, H = 15 };
        const float inf = INFINITY, nan = NAN;
        /* lse of A and B per head; what is expected is checked below. */
        const float lsa[H] = { 1.5f, nan, -inf, -inf, nan, 2.0f, inf, 2.0f, -inf, 0.0f, -150.0f,
                               3.0f, 0.0f, -1.0f, 1e-3f };
        const float lsb[H] = { -inf, -inf, 4.0f, -inf, 2.0f, nan, 2.0f, inf, nan, -200.0f, 50.0f,
                               3.0f, -200.0f, 0.5f, -20.0f };
        float *a = guarded(sizeof(float) * H * D), *b = guarded(sizeof(float) * H * D);
        float *la = guarded(sizeof(float) * H), *lb = guarded(sizeof(float) * H);
        float a0[H * D], la0[H];

        if (!use_backend(_i))
                goto out;
        rng_seed(33);
        for (int i = 0; i < H * D; i++) {
                a[i] = (float)urand();
                b[i] = (float)urand();
        }
        for (int i = 0; i < D; i++) {
                a[1 * D + i] = nan;             /* A unchanged even when it is NaN */
                a[2 * D + i] = i % 2 ? nan : inf;       /* a fresh accumulator: anything */
                a[3 * D + i] = nan;
                b[11 * D + i] = a[11 * D + i];  /* equal halves */
        }
        b[12 * D + 4] = nan;    /* weight e^-200 = 0, still propagates */
        memcpy(la, lsa, sizeof(lsa));
        memcpy(lb, lsb, sizeof(lsb));
        memcpy(a0, a, sizeof(a0));
        memcpy(la0, la, sizeof(la0));
        ck_assert_int_eq(kvk_lse_merge(&s, a, la, b, lb), 0);

        /* B empty: A as it was, bit for bit (finite, NaN, -inf). */
        ck_assert(same_bits(a, a0, D) && f32_bits(la[0]) == f32_bits(la0[0]));
        ck_assert(same_bits(a + D, a0 + D, D) && isnan(la[1]));
        ck_assert(same_bits(a + 3 * D, a0 + 3 * D, D) && la[3] == -inf);
        /* A empty: B's, bit for bit, even B's NaN lse. */
        ck_assert(same_bits(a + 2 * D, b + 2 * D, D) && la[2] == 4.0f);
        ck_assert(same_bits(a + 8 * D, b + 8 * D, D) && isnan(la[8]));
        /* A NaN, B NaN, A +inf, B +inf: the head is NaN. */
        for (int h = 4; h <= 7; h++) {
                ck_assert_msg(isnan(la[h]), "head %d: lse %g", h, (double)la[h]);
                for (int i = 0; i < D; i++)
                        EXPECT_MSG(isnan(a[h * D + i]), "head %d [%d] = %g", h, i,
                                   (double)a[h * D + i]);
        }
        /* Far apart: the other side's weight underflows to 0 exactly. */
        ck_assert(same_bits(a + 9 * D, a0 + 9 * D, D) && la[9] == 0.0f);
        ck_assert(same_bits(a + 10 * D, b + 10 * D, D) && la[10] == 50.0f);
        /* Equal halves: the same out, lse + log 2. */
        ck_assert(same_bits(a + 11 * D, b + 11 * D, D));
        ck_assert(fabs(la[11] - (3.0 + log(2.0))) <= 4 * FLT_EPSILON);
        /* A NaN element of B with weight 0: NaN there, A elsewhere. */
        for (int i = 0; i < D; i++)
                EXPECT(i == 4 ? isnan(a[12 * D + i]) : a[12 * D + i] == a0[12 * D + i]);
        ck_assert(la[12] == 0.0f);
        /* Normal heads beside all that; a small lse keeps B's tiny share
         * (1e-3 + log1p(e^-20.001), not 1e-3). */
        for (int h = 13; h < H; h++) {
                double ra[D], rl = la0[h];

                for (int i = 0; i < D; i++)
                        ra[i] = a0[h * D + i];
                ref_merge_head(ra, &rl, b + h * D, lb[h], D);
                for (int i = 0; i < D; i++)
                        EXPECT(fabs(a[h * D + i] - ra[i]) <= 1e-6);
                ck_assert_msg(fabs(la[h] - rl) <= 2 * FLT_EPSILON * fabs(rl), "head %d: lse %.9g, "
                              "want %.9g", h, (double)la[h], rl);
        }
        /* B untouched. */
        ck_assert(same_bits(lb, lsb, H));
out:
        guard_free(lb, sizeof(float) * H);
        guard_free(la, sizeof(float) * H);
        guard_free(b, sizeof(float) * H * D);
        guard_free(a, sizeof(float) * H * D);
}
END_TEST

/*
 * Many sequential merges into one fp32 accumulator, against the exact
 * (double) merge of the same partials: 32 heads x 128, 4096 partials whose
 * outs share a common part (as attention outputs of one query do) plus
 * noise, their lse anywhere in [-8, 8] + the log of a token count. The
 * error after n merges stays below ERR_BOUND(n) = 2e-7 * sqrt(n) for out
 * (relative L2) and 4e-7 * sqrt(n) * max(1, |lse|) for lse; measured (both
 * back ends): README.md.
 */
#define MERGES 4096u

START_TEST(lse_merge_many_sequential)
{
        const struct kvk_shape *s = &shapes[0];
        const uint32_t d = s->head_dim, nh = s->q_heads;
        const size_t nq = (size_t)nh * d;
        float *acc, *lse, *part, *plse, *common;
        double *racc, *rlse, worst = 0, worst_lse = 0;

        if (!use_backend(_i))
                return;
        acc = xmalloc(nq * sizeof(float));
        lse = xmalloc(nh * sizeof(float));
        part = xmalloc(nq * sizeof(float));
        plse = xmalloc(nh * sizeof(float));
        common = xmalloc(nq * sizeof(float));
        racc = xmalloc(nq * sizeof(double));
        rlse = xmalloc(nh * sizeof(double));
        rng_seed(34);
        for (size_t i = 0; i < nq; i++) {
                common[i] = (float)urand();
                acc[i] = NAN;
        }
        for (uint32_t h = 0; h < nh; h++)
                lse[h] = rlse[h] = -INFINITY;
        for (uint32_t n = 1; n <= MERGES; n++) {
                for (size_t i = 0; i < nq; i++)
                        part[i] = common[i] + (float)(0.5 * urand());
                for (uint32_t h = 0; h < nh; h++)
                        plse[h] = (float)(8 * urand() + log(16.0 * (1 + rnd32() % 64)));
                ck_assert_int_eq(kvk_lse_merge(s, acc, lse, part, plse), 0);
                for (uint32_t h = 0; h < nh; h++)
                        ref_merge_head(racc + (size_t)h * d, rlse + h, part + (size_t)h * d,
                                       plse[h], d);
                if ((n & (n - 1)) == 0) {       /* at powers of 2 */
                        const double err = rel_l2(acc, racc, nq), bound = 2e-7 * sqrt((double)n);

                        ck_assert_msg(err <= bound, "after %u merges: rel L2 %g > %g", n, err,
                                      bound);
                        for (uint32_t h = 0; h < nh; h++) {
                                const double e = fabs(lse[h] - rlse[h]) / fmax(1.0, fabs(rlse[h]));

                                EXPECT_MSG(e <= 4e-7 * sqrt((double)n),
                                           "after %u merges: lse[%u] %.9g vs %.9g", n, h,
                                           (double)lse[h], rlse[h]);
                                worst_lse = fmax(worst_lse, e / sqrt((double)n));
                        }
                        worst = fmax(worst, err / sqrt((double)n));
                }
        }
        printf("# %s: after n merges, rel L2 <= %.3g sqrt(n), lse <= %.3g sqrt(n) max(1, |lse|)\n",
               backends[_i], worst, worst_lse);
        free(rlse);
        free(racc);
        free(common);
        free(plse);
        free(part);
        free(lse);
        free(acc);
}
END_TEST

/* ---- top-k ----------------------------------------------------------- */

static const float *cmp_scores;

static float key_of(uint32_t i)
{
        return isnan(cmp_scores[i]) ? -INFINITY : cmp_scores[i];
}

static int by_rank(const void *a, const void *b)
{
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
        float kx = key_of(x), ky = key_of(y);

        if (kx != ky)
                return kx > ky ? -1 : 1;
        return x < y ? -1 : (x > y);
}

static int by_index(const void *a, const void *b)
{
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

        return x < y ? -1 : (x > y);
}

/* Reference: full sort by rank of the non-forced blocks. */
static uint32_t ref_topk(const float *scores, uint32_t n, uint32_t k, uint32_t sink,
                         uint32_t local, uint32_t *ret)
{
        uint32_t *cand = xmalloc(n * sizeof(uint32_t)), nc = 0, out = 0;

        k = k < n ? k : n;
        sink = sink < k ? sink : k;
        local = local < k - sink ? local : k - sink;
        for (uint32_t i = 0; i < sink; i++)
                ret[out++] = i;
        for (uint32_t i = n - local; i < n; i++)
                ret[out++] = i;
        for (uint32_t i = sink; i < n - local; i++)
                cand[nc++] = i;
        cmp_scores = scores;
        qsort(cand, nc, sizeof(uint32_t), by_rank);
        for (uint32_t i = 0; out < k; i++)
                ret[out++] = cand[i];
        qsort(ret, out, sizeof(uint32_t), by_index);
        free(cand);
        return out;
}

START_TEST(topk_matches_reference)
{
        static const uint32_t ns[] = { 0, 1, 2, 5, 17, 100, 1000, 3000, 16384 };

        rng_seed(17);
        for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
                const uint32_t n = ns[ni];
                float *sc = xmalloc(n * sizeof(float));
                uint32_t *got = xmalloc((n + 1) * sizeof(uint32_t));
                uint32_t *want = xmalloc((n + 1) * sizeof(uint32_t));

                for (int variant = 0; variant < 3; variant++) {
                        /* Distinct scores; heavy ties; ties plus NaN, inf, -0. */
                        for (uint32_t i = 0; i < n; i++) {
                                sc[i] = variant == 0 ? (float)urand()
                                                     : (float)(rnd32() % 7) - 3.0f;
                                if (variant == 2 && rnd32() % 10 == 0) {
                                        static const float odd[] = { NAN, INFINITY, -INFINITY,
                                                                     -0.0f, 0.0f };
                                        sc[i] = odd[rnd32() % 5];
                                }
                        }
                        const uint32_t ks[] = { 0, 1, 3, n / 10, n / 2, n - (n > 0), n, n + 5 };
                        for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
                                const uint32_t sinks[][2] = { { 0, 0 }, { 1, 0 }, { 0, 4 },
                                                              { 2, 8 }, { 100, 100 } };

                                for (size_t fi = 0; fi < 5; fi++) {
                                        uint32_t k = ks[ki], sk = sinks[fi][0], lo = sinks[fi][1];
                                        uint32_t cw = ref_topk(sc, n, k, sk, lo, want);
                                        uint32_t cg = kvk_topk(sc, n, k, sk, lo, got);

                                        EXPECT(cg == (k < n ? k : n));
                                        EXPECT(cg == cw);
                                        EXPECT_MSG(memcmp(got, want, cg * sizeof(uint32_t)) == 0,
                                                      "n=%u k=%u sink=%u local=%u variant=%d", n,
                                                      k, sk, lo, variant);
                                }
                        }
                }
                free(want);
                free(got);
                free(sc);
        }
}
END_TEST

START_TEST(topk_forcing_and_ties)
{
        const float sc[8] = { 0, 5, 5, 1, 5, 9, 0, 0 };
        uint32_t idx[8];

        /* Ties at 5: lower indices first. */
        ck_assert_uint_eq(kvk_topk(sc, 8, 3, 0, 0, idx), 3);
        ck_assert_uint_eq(idx[0], 1);
        ck_assert_uint_eq(idx[1], 2);
        ck_assert_uint_eq(idx[2], 5);
        /* Sink 1 and local 2 forced, one place left: the 9. */
        ck_assert_uint_eq(kvk_topk(sc, 8, 4, 1, 2, idx), 4);
        ck_assert_uint_eq(idx[0], 0);
        ck_assert_uint_eq(idx[1], 5);
        ck_assert_uint_eq(idx[2], 6);
        ck_assert_uint_eq(idx[3], 7);
        /* Forced blocks beyond k: sinks first, then the most recent. */
        ck_assert_uint_eq(kvk_topk(sc, 8, 3, 2, 5, idx), 3);
        ck_assert_uint_eq(idx[0], 0);
        ck_assert_uint_eq(idx[1], 1);
        ck_assert_uint_eq(idx[2], 7);
        ck_assert_uint_eq(kvk_topk(NULL, 8, 3, 0, 0, idx), 0);
        ck_assert_uint_eq(kvk_topk(sc, 8, 3, 0, 0, NULL), 0);
}
END_TEST

/* ---- gather / scatter ------------------------------------------------ */

START_TEST(gather_scatter_exact)
{
        const uint32_t n = 9;
        const size_t bb = 4096 + 6;     /* not a multiple of anything nice */
        uint8_t *src = xmalloc(n * bb), *stage = xmalloc(n * bb), *dst = xmalloc(n * bb);
        const void *srcs[9];
        void *dsts[9];

        rng_seed(18);
        for (size_t i = 0; i < n * bb; i++)
                src[i] = (uint8_t)rnd32();
        for (uint32_t i = 0; i < n; i++) {
                srcs[i] = src + (size_t)((i * 4) % n) * bb;     /* a permutation */
                dsts[i] = dst + (size_t)((i * 4) % n) * bb;
        }
        ck_assert_int_eq(kvk_gather(stage, srcs, n, bb), 0);
        for (uint32_t i = 0; i < n; i++)
                EXPECT(memcmp(stage + i * bb, srcs[i], bb) == 0);
        memset(dst, 0, n * bb);
        ck_assert_int_eq(kvk_scatter(dsts, stage, n, bb), 0);
        ck_assert_mem_eq(dst, src, n * bb);

        /* A NULL among the pointers: nothing copied. */
        memset(stage, 0xaa, n * bb);
        srcs[5] = NULL;
        ck_assert_int_eq(kvk_gather(stage, srcs, n, bb), -EINVAL);
        ck_assert(all_bytes(stage, n * bb, 0xaa));
        dsts[8] = NULL;
        ck_assert_int_eq(kvk_scatter(dsts, stage, n, bb), -EINVAL);
        ck_assert_int_eq(kvk_gather(NULL, srcs, 0, bb), 0);
        free(dst);
        free(stage);
        free(src);
}
END_TEST

/* ---- arguments, back-end choice ---------------------------------------- */

START_TEST(bad_arguments_leave_outputs_untouched)
{
        struct kvk_shape s = { .kv_heads = 2, .q_heads = 8, .head_dim = 64, .block_tokens = 16,
                               .dtype = KVK_F16 };
        const void *ptr[2];
        uint16_t *pool;
        float *q, out[8 * 64], lse[8], sum[2 * 2 * 64], mass[2];
        uint32_t valid[2] = { 16, 16 };

        rng_seed(19);
        pool = make_blocks(&s, 2, 1.0, ptr);
        q = make_query(&s, 1.0);
        memset(out, 0x5a, sizeof(out));
        memset(lse, 0x5a, sizeof(lse));
        memset(sum, 0x5a, sizeof(sum));
        memset(mass, 0x5a, sizeof(mass));

        ck_assert(kvk_shape_valid(&s));
        ck_assert_uint_eq(kvk_block_bytes(&s), 2 * 2 * 16 * 64 * 2);
        ck_assert_uint_eq(kvk_summary_floats(&s), 2 * 2 * 64);
        ck_assert_int_eq(kvk_block_summary(&s, ptr[0], 0, sum), -EINVAL);
        ck_assert_int_eq(kvk_block_summary(&s, ptr[0], 17, sum), -EINVAL);
        ck_assert_int_eq(kvk_block_summary(&s, NULL, 1, sum), -EINVAL);
        valid[1] = 17;
        ck_assert_int_eq(kvk_decode_attention(&s, q, ptr, valid, 2, out, lse), -EINVAL);
        ck_assert_int_eq(kvk_block_attention_mass(&s, q, ptr, valid, 2, mass), -EINVAL);
        valid[0] = valid[1] = 0;
        ck_assert_int_eq(kvk_decode_attention(&s, q, ptr, valid, 2, out, lse), -EINVAL);
        ck_assert_int_eq(kvk_decode_attention(&s, q, ptr, valid, 0, out, lse), -EINVAL);
        valid[0] = 16;
        ck_assert_int_eq(kvk_decode_attention(&s, NULL, ptr, valid, 2, out, lse), -EINVAL);
        ck_assert_int_eq(kvk_lse_merge(&s, NULL, lse, q, mass), -EINVAL);
        ck_assert_int_eq(kvk_lse_merge(&s, out, NULL, q, mass), -EINVAL);
        ck_assert_int_eq(kvk_lse_merge(&s, out, lse, NULL, mass), -EINVAL);
        ck_assert_int_eq(kvk_lse_merge(&s, out, lse, q, NULL), -EINVAL);
        ck_assert_int_eq(kvk_lse_merge(NULL, out, lse, q, mass), -EINVAL);

        struct kvk_shape bad[] = { s, s, s, s, s, s, s };
        bad[0].q_heads = 7;                     /* not a multiple of kv_heads */
        bad[1].head_dim = 0;
        bad[2].head_dim = KVK_MAX_HEAD_DIM + 1;
        bad[3].dtype = 3;                       /* f32 blocks: not supported */
        bad[4].kv_heads = 0;
        bad[5].block_tokens = 0;
        bad[6].q_heads = 0;
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                ck_assert(!kvk_shape_valid(&bad[i]));
                ck_assert_uint_eq(kvk_block_bytes(&bad[i]), 0);
                ck_assert_int_eq(kvk_block_summary(&bad[i], ptr[0], 1, sum), -EINVAL);
                ck_assert_int_eq(kvk_block_scores(&bad[i], q, sum, 1, mass), -EINVAL);
                ck_assert_int_eq(kvk_decode_attention(&bad[i], q, ptr, valid, 2, out, lse),
                                 -EINVAL);
                ck_assert_int_eq(kvk_block_attention_mass(&bad[i], q, ptr, valid, 2, mass),
                                 -EINVAL);
                ck_assert_int_eq(kvk_lse_merge(&bad[i], out, lse, q, q), -EINVAL);
        }
        ck_assert(!kvk_shape_valid(NULL));

        ck_assert(all_bytes(out, sizeof(out), 0x5a));
        ck_assert(all_bytes(sum, sizeof(sum), 0x5a));
        ck_assert(all_bytes(lse, sizeof(lse), 0x5a));
        ck_assert(all_bytes(mass, sizeof(mass), 0x5a));
        free(q);
        free(pool);
}
END_TEST

START_TEST(backend_choice)
{
        bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");

        ck_assert_int_eq(unsetenv("KVK_FORCE_SCALAR"), 0);
        ck_assert_int_eq(kvk_set_backend("auto"), 0);
        ck_assert_str_eq(kvk_backend_name(), avx2 ? "avx2" : "scalar");
        ck_assert_int_eq(setenv("KVK_FORCE_SCALAR", "1", 1), 0);
        ck_assert_int_eq(kvk_set_backend("auto"), 0);
        ck_assert_str_eq(kvk_backend_name(), "scalar");
        ck_assert_int_eq(setenv("KVK_FORCE_SCALAR", "0", 1), 0);
        ck_assert_int_eq(kvk_set_backend("auto"), 0);
        ck_assert_str_eq(kvk_backend_name(), avx2 ? "avx2" : "scalar");
        ck_assert_int_eq(kvk_set_backend("scalar"), 0);
        ck_assert_str_eq(kvk_backend_name(), "scalar");
        ck_assert_int_eq(kvk_set_backend("avx2"), avx2 ? 0 : -ENOTSUP);
        ck_assert_int_eq(kvk_set_backend("sse9"), -EINVAL);
        ck_assert_int_eq(kvk_set_backend(NULL), -EINVAL);
}
END_TEST

static Suite *kernels_suite(void)
{
        Suite *s = suite_create("kernels");
        TCase *tc = tcase_create("conversions");

        tcase_add_test(tc, f16_all_values_round_trip);
        tcase_add_test(tc, bf16_all_values_round_trip);
        tcase_add_test(tc, f16_rounding_edge_cases);
        tcase_add_test(tc, f32_to_f16_and_bf16_random_rne);
        suite_add_tcase(s, tc);

        tc = tcase_create("kernels");
        tcase_set_timeout(tc, 120);
        tcase_add_loop_test(tc, summary_matches_reference, 0, N_BACKENDS);
        tcase_add_loop_test(tc, scores_match_reference_and_bound_every_token, 0, N_BACKENDS);
        tcase_add_loop_test(tc, scores_mixed_signs_and_edge_shapes, 0, N_BACKENDS);
        tcase_add_loop_test(tc, attention_matches_reference, 0, N_BACKENDS);
        tcase_add_loop_test(tc, attention_large_logits_stay_finite, 0, N_BACKENDS);
        tcase_add_loop_test(tc, attention_edge_shapes, 0, N_BACKENDS);
        tcase_add_loop_test(tc, attention_one_token_and_empty_blocks, 0, N_BACKENDS);
        tcase_add_test(tc, backends_agree);
        suite_add_tcase(s, tc);

        tc = tcase_create("merge");
        tcase_set_timeout(tc, 120);
        tcase_add_loop_test(tc, lse_merge_matches_reference, 0, N_BACKENDS);
        tcase_add_loop_test(tc, lse_merge_splits_attention, 0, N_BACKENDS);
        tcase_add_loop_test(tc, lse_merge_infinities_and_nan, 0, N_BACKENDS);
        tcase_add_loop_test(tc, lse_merge_many_sequential, 0, N_BACKENDS);
        suite_add_tcase(s, tc);

        tc = tcase_create("selection");
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, topk_matches_reference);
        tcase_add_test(tc, topk_forcing_and_ties);
        tcase_add_test(tc, gather_scatter_exact);
        suite_add_tcase(s, tc);

        tc = tcase_create("api");
        tcase_add_test(tc, bad_arguments_leave_outputs_untouched);
        tcase_add_test(tc, backend_choice);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(kernels_suite)
