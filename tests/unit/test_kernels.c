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

#include "kernels-ref.h"
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
