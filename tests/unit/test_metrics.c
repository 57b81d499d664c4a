/* SPDX-License-Identifier: MIT */
/*
 * Metrics of kvdrive-bench decode (tools/kvdrive-bench/metrics.h) on small
 * hand-computed cases, and one case end to end from the kernels' masses.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "check-main.h"
#include "kernels.h"
#include "../../tools/kvdrive-bench/metrics.h"

#define EPS 1e-9

START_TEST(test_mass_recall)
{
        const float mass[3] = { 0.5f, 0.3f, 0.2f };
        const float unnorm[3] = { 2, 1, 1 };
        const float zero[3] = { 0, 0, 0 };
        const uint32_t s02[] = { 0, 2 }, all[] = { 2, 0, 1 }, s1[] = { 1 }, bad[] = { 3 }, dup[] = { 1, 1 };

        ck_assert_double_eq_tol(kvb_mass_recall(mass, 3, s02, 2), 0.7, 1e-7);
        ck_assert_double_eq_tol(kvb_mass_recall(mass, 3, all, 3), 1.0, EPS);
        ck_assert_double_eq_tol(kvb_mass_recall(mass, 3, NULL, 0), 0.0, EPS);
        /* Masses need not sum to 1: the share of the total counts. */
        ck_assert_double_eq_tol(kvb_mass_recall(unnorm, 3, s1, 1), 0.25, EPS);
        ck_assert_double_eq_tol(kvb_mass_recall(zero, 3, s1, 1), 0.0, EPS);
        ck_assert_double_eq(kvb_mass_recall(mass, 3, bad, 1), -EINVAL);
        ck_assert_double_eq(kvb_mass_recall(mass, 3, dup, 2), -EINVAL);
        ck_assert_double_eq(kvb_mass_recall(NULL, 3, s1, 1), -EINVAL);
        ck_assert_double_eq(kvb_mass_recall(mass, 0, NULL, 0), -EINVAL);
}
END_TEST

START_TEST(test_topk_recall)
{
        const float mass[3] = { 0.1f, 0.6f, 0.3f };     /* top-2: {1, 2} */
        const float tie[3] = { 0.4f, 0.2f, 0.4f };      /* top-1: {0} (lower index wins) */
        const float withnan[3] = { NAN, 0.1f, 0.2f };   /* NaN ranks last: top-2 {1, 2} */
        const uint32_t s01[] = { 0, 1 }, s12[] = { 2, 1 }, s0[] = { 0 }, s2[] = { 2 }, bad[] = { 7 };

        ck_assert_double_eq_tol(kvb_topk_recall(mass, 3, s01, 2, 2), 0.5, EPS);
        ck_assert_double_eq_tol(kvb_topk_recall(mass, 3, s12, 2, 2), 1.0, EPS);
        ck_assert_double_eq_tol(kvb_topk_recall(mass, 3, s0, 1, 1), 0.0, EPS);
        ck_assert_double_eq_tol(kvb_topk_recall(mass, 3, NULL, 0, 2), 0.0, EPS);
        /* k beyond n is n: every block is in the top-3. */
        ck_assert_double_eq_tol(kvb_topk_recall(mass, 3, s01, 2, 5), 2.0 / 3.0, EPS);
        ck_assert_double_eq_tol(kvb_topk_recall(tie, 3, s0, 1, 1), 1.0, EPS);
        ck_assert_double_eq_tol(kvb_topk_recall(tie, 3, s2, 1, 1), 0.0, EPS);
        ck_assert_double_eq_tol(kvb_topk_recall(tie, 3, s2, 1, 2), 0.5, EPS);
        ck_assert_double_eq_tol(kvb_topk_recall(withnan, 3, s12, 2, 2), 1.0, EPS);
        ck_assert_double_eq(kvb_topk_recall(mass, 3, bad, 1, 1), -EINVAL);
        ck_assert_double_eq(kvb_topk_recall(mass, 3, s0, 1, 0), -EINVAL);
}
END_TEST

START_TEST(test_rel_l2_error)
{
        const float a[2] = { 1, 1 }, b[2] = { 1, 2 }, z[2] = { 0, 0 }, e0[2] = { 1, 0 }, e1[2] = { 0, 1 };
        const float n[2] = { NAN, 0 };

        ck_assert_double_eq(kvb_rel_l2_error(b, b, 2), 0.0);
        /* ||(0, -1)|| / ||(1, 2)|| = 1 / sqrt(5) */
        ck_assert_double_eq_tol(kvb_rel_l2_error(a, b, 2), 1.0 / sqrt(5.0), EPS);
        ck_assert_double_eq_tol(kvb_rel_l2_error(e0, e1, 2), sqrt(2.0), EPS);
        ck_assert_double_eq(kvb_rel_l2_error(z, z, 2), 0.0);
        ck_assert(isinf(kvb_rel_l2_error(a, z, 2)));
        ck_assert(isnan(kvb_rel_l2_error(n, b, 2)));
        ck_assert_double_eq(kvb_rel_l2_error(a, b, 0), 0.0);
}
END_TEST

START_TEST(test_percentiles)
{
        double v[100], w[10], one = 7;

        /* 1..100 in a scrambled order (37 is coprime with 100). */
        for (int i = 0; i < 100; i++)
                v[i] = (double)((i * 37) % 100 + 1);
        ck_assert_double_eq(kvb_percentile(v, 100, 50), 50);
        ck_assert_double_eq(kvb_percentile(v, 100, 99), 99);
        ck_assert_double_eq(kvb_percentile(v, 100, 100), 100);
        ck_assert_double_eq(kvb_percentile(v, 100, 1), 1);
        ck_assert_double_eq(kvb_percentile(v, 100, 0), 1);
        ck_assert_double_eq(kvb_percentile(v, 100, 99.5), 100);
        ck_assert_double_eq(kvb_percentile(v, 100, 90.1), 91);
        for (int i = 0; i < 10; i++)
                w[i] = 10 - i;
        ck_assert_double_eq(kvb_percentile(w, 10, 50), 5);
        ck_assert_double_eq(kvb_percentile(w, 10, 99), 10);
        ck_assert_double_eq(kvb_percentile(w, 10, 10), 1);
        ck_assert_double_eq(kvb_percentile(w, 10, 11), 2);
        ck_assert_double_eq(kvb_percentile(&one, 1, 99), 7);
        ck_assert_double_eq(kvb_percentile(NULL, 0, 50), 0);
        ck_assert_double_eq_tol(kvb_mean(v, 100), 50.5, EPS);
        ck_assert_double_eq(kvb_mean(NULL, 0), 0);
}
END_TEST

START_TEST(test_rates)
{
        ck_assert_double_eq_tol(kvb_hit_rate(3, 1), 0.75, EPS);
        ck_assert_double_eq_tol(kvb_hit_rate(0, 5), 0.0, EPS);
        ck_assert(isnan(kvb_hit_rate(0, 0)));
        ck_assert_double_eq_tol(kvb_rate(100, 2000000000ull), 50.0, EPS);
        ck_assert_double_eq(kvb_rate(100, 0), 0.0);
}
END_TEST

/* Three one-token blocks, one head of one dimension, q = 1, keys 0, 1, 2:
 * the logits are the keys, so the masses are 1, e, e^2 over 1 + e + e^2. */
START_TEST(test_from_kernel_masses)
{
        const struct kvk_shape s = { 1, 1, 1, 1, KVK_F16 };
        uint16_t blk[3][2];
        const void *blocks[3] = { blk[0], blk[1], blk[2] };
        const uint32_t valid[3] = { 1, 1, 1 }, top[] = { 2 }, top2[] = { 1, 2 }, s0[] = { 0 };
        const double e = exp(1.0), z = 1 + e + e * e;
        float q = 1, mass[3];

        for (int i = 0; i < 3; i++) {
                blk[i][0] = kvk_f32_to_f16((float)i); /* K */
                blk[i][1] = kvk_f32_to_f16(1.0f);      /* V */
        }
        ck_assert_int_eq(kvk_block_attention_mass(&s, &q, blocks, valid, 3, mass), 0);
        ck_assert_double_eq_tol(mass[0], 1 / z, 1e-6);
        ck_assert_double_eq_tol(mass[2], e * e / z, 1e-6);
        ck_assert_double_eq_tol(kvb_mass_recall(mass, 3, top, 1), e * e / z, 1e-6);      /* 0.665 */
        ck_assert_double_eq_tol(kvb_mass_recall(mass, 3, top2, 2), (e + e * e) / z, 1e-6); /* 0.910 */
        ck_assert_double_eq_tol(kvb_topk_recall(mass, 3, top2, 2, 2), 1.0, EPS);
        ck_assert_double_eq_tol(kvb_topk_recall(mass, 3, s0, 1, 1), 0.0, EPS);
}
END_TEST

static Suite *metrics_suite(void)
{
        Suite *s = suite_create("metrics");
        TCase *tc = tcase_create("metrics");

        tcase_add_test(tc, test_mass_recall);
        tcase_add_test(tc, test_topk_recall);
        tcase_add_test(tc, test_rel_l2_error);
        tcase_add_test(tc, test_percentiles);
        tcase_add_test(tc, test_rates);
        tcase_add_test(tc, test_from_kernel_masses);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(metrics_suite)
