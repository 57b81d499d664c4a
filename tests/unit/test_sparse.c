/* SPDX-License-Identifier: MIT */
/* Sparse-decode helpers of libkvclient: residency manager and predict merge. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include <kvdrive/sparse.h>

#include "check-main.h"

static struct kvc_key K(uint64_t i)
{
        return (struct kvc_key){ .hi = 0x1000 + i, .lo = i * 0x9e3779b97f4a7c15ull };
}

static kvc_residency *make(uint32_t slots, uint32_t layers, float half_life)
{
        struct kvc_residency_opts o = {
                .size = sizeof(o), .slots = slots, .layers = layers,
                .half_life_steps = half_life,
        };
        kvc_residency *r = NULL;

        ck_assert_int_eq(kvc_residency_new(&o, &r), 0);
        ck_assert_ptr_nonnull(r);
        return r;
}

START_TEST(hit_and_miss)
{
        kvc_residency *r = make(4, 2, 4.0f);
        struct kvc_key a = K(1), b = K(2);
        bool miss = false;
        int s;

        ck_assert_int_eq(kvc_residency_lookup(r, &a, 0), -ENOENT);
        s = kvc_residency_acquire(r, &a, 0, 0, &miss);
        ck_assert_int_eq(s, 0);
        ck_assert(miss);
        ck_assert_int_eq(kvc_residency_lookup(r, &a, 0), 0);
        /* Same key, other layer: another block. */
        ck_assert_int_eq(kvc_residency_lookup(r, &a, 1), -ENOENT);
        ck_assert_int_eq(kvc_residency_acquire(r, &a, 1, 0, &miss), 1);
        ck_assert(miss);
        ck_assert_int_eq(kvc_residency_acquire(r, &b, 0, 0, NULL), 2);
        /* Hit. */
        ck_assert_int_eq(kvc_residency_acquire(r, &a, 0, 1, &miss), 0);
        ck_assert(!miss);
        ck_assert_int_eq(kvc_residency_acquire(r, &a, 1, 1, &miss), 1);
        ck_assert(!miss);

        /* Drop frees the slot for reuse. */
        ck_assert_int_eq(kvc_residency_drop(r, &a, 1), 1);
        ck_assert_int_eq(kvc_residency_drop(r, &a, 1), -ENOENT);
        ck_assert_int_eq(kvc_residency_lookup(r, &a, 1), -ENOENT);
        ck_assert_int_eq(kvc_residency_lookup(r, &a, 0), 0);
        ck_assert_int_eq(kvc_residency_lookup(r, &b, 0), 2);
        ck_assert_int_eq(kvc_residency_acquire(r, &b, 1, 1, &miss), 1);
        ck_assert(miss);
        ck_assert_ptr_null(kvc_residency_free(r));
        ck_assert_ptr_null(kvc_residency_free(NULL));
}
END_TEST

START_TEST(eviction_lowest_decayed_score)
{
        /* Half-life 2 steps: at step 8, a mass 1.0 from step 0 is 1.0 / 2^4
         * = 0.0625 and loses to 0.1 reported at step 8. */
        kvc_residency *r = make(2, 1, 2.0f);
        struct kvc_key old = K(1), fresh = K(2), c = K(3);
        float sc = 0;
        bool miss = false;

        ck_assert_int_eq(kvc_residency_acquire(r, &old, 0, 0, NULL), 0);
        ck_assert_int_eq(kvc_residency_score(r, &old, 0, 1.0f, 0), 0);
        ck_assert_int_eq(kvc_residency_acquire(r, &fresh, 0, 8, NULL), 1);
        ck_assert_int_eq(kvc_residency_score(r, &fresh, 0, 0.1f, 8), 0);
        ck_assert_int_eq(kvc_residency_get_score(r, &old, 0, 8, &sc), 0);
        ck_assert_float_eq_tol(sc, 0.0625f, 1e-6f);

        ck_assert_int_eq(kvc_residency_begin_layer(r), 0);
        ck_assert_int_eq(kvc_residency_acquire(r, &c, 0, 8, &miss), 0);
        ck_assert(miss);
        ck_assert_int_eq(kvc_residency_lookup(r, &old, 0), -ENOENT);
        ck_assert_int_eq(kvc_residency_lookup(r, &fresh, 0), 1);
        ck_assert_int_eq(kvc_residency_lookup(r, &c, 0), 0);
        kvc_residency_free(r);
}
END_TEST

START_TEST(eviction_without_decay_keeps_higher)
{
        /* Same masses, looked at at step 0: 1.0 beats 0.1, the 0.1 goes. */
        kvc_residency *r = make(2, 1, 2.0f);
        struct kvc_key a = K(1), b = K(2), c = K(3);

        kvc_residency_acquire(r, &a, 0, 0, NULL);
        kvc_residency_acquire(r, &b, 0, 0, NULL);
        ck_assert_int_eq(kvc_residency_score(r, &a, 0, 1.0f, 0), 0);
        ck_assert_int_eq(kvc_residency_score(r, &b, 0, 0.1f, 0), 0);
        kvc_residency_begin_layer(r);
        ck_assert_int_eq(kvc_residency_acquire(r, &c, 0, 0, NULL), 1);
        ck_assert_int_eq(kvc_residency_lookup(r, &b, 0), -ENOENT);
        ck_assert_int_eq(kvc_residency_lookup(r, &a, 0), 0);
        kvc_residency_free(r);
}
END_TEST

START_TEST(pinned_never_evicted)
{
        kvc_residency *r = make(4, 1, 1.0f);
        struct kvc_key k[6];
        bool miss;

        for (int i = 0; i < 6; i++)
                k[i] = K((uint64_t)i);
        for (int i = 0; i < 4; i++)
                ck_assert_int_eq(kvc_residency_acquire(r, &k[i], 0, 0, NULL), i);
        /* All four acquired this epoch: all pinned. */
        ck_assert_int_eq(kvc_residency_acquire(r, &k[4], 0, 0, &miss), -EBUSY);
        ck_assert_int_eq(kvc_residency_lookup(r, &k[4], 0), -ENOENT);

        /* New layer: pin 0, 1, 3; give the unpinned 2 the highest score. */
        ck_assert_int_eq(kvc_residency_score(r, &k[2], 0, 100.0f, 0), 0);
        ck_assert_int_eq(kvc_residency_begin_layer(r), 0);
        ck_assert_int_eq(kvc_residency_pin(r, &k[0], 0), 0);
        ck_assert_int_eq(kvc_residency_pin(r, &k[1], 0), 1);
        ck_assert_int_eq(kvc_residency_pin(r, &k[3], 0), 3);
        ck_assert_int_eq(kvc_residency_pin(r, &k[5], 0), -ENOENT);
        miss = false;
        ck_assert_int_eq(kvc_residency_acquire(r, &k[4], 0, 1, &miss), 2);
        ck_assert(miss);
        ck_assert_int_eq(kvc_residency_lookup(r, &k[2], 0), -ENOENT);
        /* k[4] is now pinned by its acquire: every slot is pinned. */
        miss = false;
        ck_assert_int_eq(kvc_residency_acquire(r, &k[5], 0, 1, &miss), -EBUSY);
        ck_assert(!miss);
        /* A hit still works while everything is pinned. */
        ck_assert_int_eq(kvc_residency_acquire(r, &k[0], 0, 1, &miss), 0);
        ck_assert(!miss);
        /* Next epoch unpins: the lowest score (all 0, lowest slot) goes. */
        kvc_residency_begin_layer(r);
        ck_assert_int_eq(kvc_residency_acquire(r, &k[5], 0, 2, &miss), 0);
        ck_assert(miss);
        kvc_residency_free(r);
}
END_TEST

START_TEST(scores_decay_across_steps)
{
        kvc_residency *r = make(2, 1, 4.0f);
        struct kvc_key a = K(7), z = K(8);
        float sc = -1;

        kvc_residency_acquire(r, &a, 0, 10, NULL);
        ck_assert_int_eq(kvc_residency_get_score(r, &a, 0, 10, &sc), 0);
        ck_assert_float_eq(sc, 0.0f);
        ck_assert_int_eq(kvc_residency_score(r, &a, 0, 2.0f, 10), 0);
        kvc_residency_get_score(r, &a, 0, 14, &sc);
        ck_assert_float_eq_tol(sc, 1.0f, 1e-6f);
        kvc_residency_get_score(r, &a, 0, 12, &sc);
        ck_assert_float_eq_tol(sc, 1.41421356f, 1e-5f);
        /* Accumulates: 2 * 2^-2 + 1 at step 18. */
        ck_assert_int_eq(kvc_residency_score(r, &a, 0, 1.0f, 18), 0);
        kvc_residency_get_score(r, &a, 0, 18, &sc);
        ck_assert_float_eq_tol(sc, 1.5f, 1e-6f);
        kvc_residency_get_score(r, &a, 0, 22, &sc);
        ck_assert_float_eq_tol(sc, 0.75f, 1e-6f);
        /* An older step is counted as the last one: no growth. */
        ck_assert_int_eq(kvc_residency_score(r, &a, 0, 0.5f, 3), 0);
        kvc_residency_get_score(r, &a, 0, 18, &sc);
        ck_assert_float_eq_tol(sc, 2.0f, 1e-6f);
        kvc_residency_get_score(r, &a, 0, 5, &sc);
        ck_assert_float_eq_tol(sc, 2.0f, 1e-6f);

        ck_assert_int_eq(kvc_residency_score(r, &z, 0, 1.0f, 18), -ENOENT);
        ck_assert_int_eq(kvc_residency_get_score(r, &z, 0, 18, &sc), -ENOENT);
        ck_assert_float_eq_tol(sc, 2.0f, 1e-6f); /* untouched */
        kvc_residency_free(r);
}
END_TEST

START_TEST(many_blocks_churn)
{
        /* Exercises probing and backward-shift deletion: every resident
         * block must stay findable while others are evicted. */
        kvc_residency *r = make(64, 4, 8.0f);
        uint32_t step = 0;

        for (uint64_t i = 0; i < 5000; i++, step++) {
                struct kvc_key k = K(i % 300);
                uint32_t layer = (uint32_t)(i % 4);
                bool miss;
                int s;

                if (i % 16 == 0)
                        kvc_residency_begin_layer(r);
                s = kvc_residency_acquire(r, &k, layer, step, &miss);
                ck_assert_int_ge(s, 0);
                ck_assert_int_lt(s, 64);
                ck_assert_int_eq(kvc_residency_lookup(r, &k, layer), s);
                kvc_residency_score(r, &k, layer, (float)(i % 7) / 7.0f, step);
                if (i % 97 == 0)
                        ck_assert_int_eq(kvc_residency_drop(r, &k, layer), s);
        }
        /* Slot numbers of resident blocks are distinct. */
        {
                bool seen[64] = { false };
                int resident = 0;

                for (uint64_t i = 0; i < 300; i++) {
                        for (uint32_t l = 0; l < 4; l++) {
                                struct kvc_key k = K(i);
                                int s = kvc_residency_lookup(r, &k, l);

                                if (s == -ENOENT)
                                        continue;
                                ck_assert_int_ge(s, 0);
                                ck_assert(!seen[s]);
                                seen[s] = true;
                                resident++;
                        }
                }
                ck_assert_int_le(resident, 64);
                ck_assert_int_ge(resident, 63);
        }
        kvc_residency_free(r);
}
END_TEST

START_TEST(predict_merge_order)
{
        const uint32_t prev[] = { 5, 1, 9, 3 };
        const uint32_t pred[] = { 7, 3, 8, 5, 7 };
        uint32_t out[16], n = 99;

        ck_assert_int_eq(kvc_predict_merge(prev, 4, pred, 5, 16, out, &n), 0);
        /* Both (prediction order): 3, 5; predicted only: 7, 8; last step only: 1, 9. */
        ck_assert_uint_eq(n, 6);
        ck_assert_uint_eq(out[0], 3);
        ck_assert_uint_eq(out[1], 5);
        ck_assert_uint_eq(out[2], 7);
        ck_assert_uint_eq(out[3], 8);
        ck_assert_uint_eq(out[4], 1);
        ck_assert_uint_eq(out[5], 9);

        /* Cap. */
        ck_assert_int_eq(kvc_predict_merge(prev, 4, pred, 5, 3, out, &n), 0);
        ck_assert_uint_eq(n, 3);
        ck_assert_uint_eq(out[0], 3);
        ck_assert_uint_eq(out[1], 5);
        ck_assert_uint_eq(out[2], 7);
        ck_assert_int_eq(kvc_predict_merge(prev, 4, pred, 5, 1, out, &n), 0);
        ck_assert_uint_eq(n, 1);
        ck_assert_uint_eq(out[0], 3);
        ck_assert_int_eq(kvc_predict_merge(prev, 4, pred, 5, 0, NULL, &n), 0);
        ck_assert_uint_eq(n, 0);
}
END_TEST

START_TEST(predict_merge_one_side_and_dups)
{
        const uint32_t dup[] = { 4, 4, 2, 4, 2 };
        uint32_t out[8], n = 99;

        ck_assert_int_eq(kvc_predict_merge(NULL, 0, dup, 5, 8, out, &n), 0);
        ck_assert_uint_eq(n, 2);
        ck_assert_uint_eq(out[0], 4);
        ck_assert_uint_eq(out[1], 2);
        ck_assert_int_eq(kvc_predict_merge(dup, 5, NULL, 0, 8, out, &n), 0);
        ck_assert_uint_eq(n, 2);
        ck_assert_uint_eq(out[0], 4);
        ck_assert_uint_eq(out[1], 2);
        ck_assert_int_eq(kvc_predict_merge(dup, 5, dup, 5, 8, out, &n), 0);
        ck_assert_uint_eq(n, 2);
        ck_assert_int_eq(kvc_predict_merge(NULL, 0, NULL, 0, 8, out, &n), 0);
        ck_assert_uint_eq(n, 0);
}
END_TEST

START_TEST(bad_arguments)
{
        struct kvc_residency_opts o = { .size = sizeof(o), .slots = 4, .layers = 2,
                                        .half_life_steps = 2.0f };
        kvc_residency *r = (kvc_residency *)0x1, *good;
        struct kvc_key k = K(1);
        uint32_t out[4], n = 77;
        const uint32_t one[] = { 1 };
        float sc = 3.0f;
        bool miss = true;

        ck_assert_int_eq(kvc_residency_new(NULL, &r), -EINVAL);
        ck_assert_int_eq(kvc_residency_new(&o, NULL), -EINVAL);
        o.size = sizeof(size_t) + 2 * sizeof(uint32_t); /* no half_life_steps */
        ck_assert_int_eq(kvc_residency_new(&o, &r), -EINVAL);
        o.size = 0;
        ck_assert_int_eq(kvc_residency_new(&o, &r), -EINVAL);
        o.size = sizeof(o);
        o.slots = 0;
        ck_assert_int_eq(kvc_residency_new(&o, &r), -EINVAL);
        o.slots = KVC_RESIDENCY_MAX_SLOTS + 1;
        ck_assert_int_eq(kvc_residency_new(&o, &r), -EINVAL);
        o.slots = 4;
        o.layers = 0;
        ck_assert_int_eq(kvc_residency_new(&o, &r), -EINVAL);
        o.layers = 2;
        o.half_life_steps = 0.0f;
        ck_assert_int_eq(kvc_residency_new(&o, &r), -EINVAL);
        o.half_life_steps = -1.0f;
        ck_assert_int_eq(kvc_residency_new(&o, &r), -EINVAL);
        o.half_life_steps = NAN;
        ck_assert_int_eq(kvc_residency_new(&o, &r), -EINVAL);
        o.half_life_steps = INFINITY;
        ck_assert_int_eq(kvc_residency_new(&o, &r), -EINVAL);
        ck_assert_ptr_eq(r, (kvc_residency *)0x1); /* untouched */

        good = make(4, 2, 2.0f);
        ck_assert_int_eq(kvc_residency_lookup(NULL, &k, 0), -EINVAL);
        ck_assert_int_eq(kvc_residency_lookup(good, NULL, 0), -EINVAL);
        ck_assert_int_eq(kvc_residency_lookup(good, &k, 2), -EINVAL);
        ck_assert_int_eq(kvc_residency_acquire(NULL, &k, 0, 0, &miss), -EINVAL);
        ck_assert_int_eq(kvc_residency_acquire(good, NULL, 0, 0, &miss), -EINVAL);
        ck_assert_int_eq(kvc_residency_acquire(good, &k, 2, 0, &miss), -EINVAL);
        ck_assert(miss); /* untouched */
        ck_assert_int_eq(kvc_residency_begin_layer(NULL), -EINVAL);
        ck_assert_int_eq(kvc_residency_pin(good, &k, 5), -EINVAL);
        ck_assert_int_eq(kvc_residency_drop(good, &k, 5), -EINVAL);
        ck_assert_int_eq(kvc_residency_acquire(good, &k, 1, 0, NULL), 0);
        ck_assert_int_eq(kvc_residency_score(good, &k, 1, -1.0f, 0), -EINVAL);
        ck_assert_int_eq(kvc_residency_score(good, &k, 1, NAN, 0), -EINVAL);
        ck_assert_int_eq(kvc_residency_score(good, &k, 1, INFINITY, 0), -EINVAL);
        ck_assert_int_eq(kvc_residency_score(good, &k, 2, 1.0f, 0), -EINVAL);
        ck_assert_int_eq(kvc_residency_get_score(good, &k, 1, 0, NULL), -EINVAL);
        ck_assert_int_eq(kvc_residency_get_score(good, &k, 1, 0, &sc), 0);
        ck_assert_float_eq(sc, 0.0f);
        kvc_residency_free(good);

        ck_assert_int_eq(kvc_predict_merge(one, 1, one, 1, 4, out, NULL), -EINVAL);
        ck_assert_int_eq(kvc_predict_merge(NULL, 1, one, 1, 4, out, &n), -EINVAL);
        ck_assert_int_eq(kvc_predict_merge(one, 1, NULL, 1, 4, out, &n), -EINVAL);
        ck_assert_int_eq(kvc_predict_merge(one, 1, one, 1, 4, NULL, &n), -EINVAL);
        ck_assert_uint_eq(n, 77); /* untouched */
}
END_TEST

static Suite *sparse_suite(void)
{
        Suite *s = suite_create("sparse");
        TCase *tc = tcase_create("residency");

        tcase_add_test(tc, hit_and_miss);
        tcase_add_test(tc, eviction_lowest_decayed_score);
        tcase_add_test(tc, eviction_without_decay_keeps_higher);
        tcase_add_test(tc, pinned_never_evicted);
        tcase_add_test(tc, scores_decay_across_steps);
        tcase_add_test(tc, many_blocks_churn);
        tcase_add_test(tc, bad_arguments);
        suite_add_tcase(s, tc);

        tc = tcase_create("predict");
        tcase_add_test(tc, predict_merge_order);
        tcase_add_test(tc, predict_merge_one_side_and_dups);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(sparse_suite)
