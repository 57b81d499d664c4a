/* SPDX-License-Identifier: MIT */
/*
 * kvk_lse_merge() (kernels/kernels.h) against a double-precision reference
 * on every back end this CPU runs: random partials, attention split at every
 * point and merged back, the infinities and NaN of the edges, and thousands
 * of sequential merges.
 */
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels-ref.h"

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

static Suite *merge_suite(void)
{
        Suite *s = suite_create("kernels-merge");
        TCase *tc = tcase_create("merge");

        tcase_set_timeout(tc, 120);
        tcase_add_loop_test(tc, lse_merge_matches_reference, 0, N_BACKENDS);
        tcase_add_loop_test(tc, lse_merge_splits_attention, 0, N_BACKENDS);
        tcase_add_loop_test(tc, lse_merge_infinities_and_nan, 0, N_BACKENDS);
        tcase_add_loop_test(tc, lse_merge_many_sequential, 0, N_BACKENDS);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(merge_suite)
