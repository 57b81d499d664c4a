/* SPDX-License-Identifier: MIT */
/* Block index: against a reference model through inserts, removes and growth. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "check-main.h"
#include "index.h"

static uint64_t rng = 88172645463325252ull;

static uint64_t next_rand(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return rng;
}

START_TEST(insert_find_remove)
{
        struct kvd_index *idx;
        struct kvd_bkey k = { 1, 2, 3, 4 }, k2 = k;
        uint32_t id, id2;

        ck_assert_int_eq(kvd_index_new(0, &idx), 0);
        ck_assert_uint_eq(kvd_index_find(idx, &k), KVD_ID_NONE);
        ck_assert_int_eq(kvd_index_insert(idx, &k, &id), 0);
        ck_assert_uint_ne(id, KVD_ID_NONE);
        ck_assert_uint_eq(kvd_index_find(idx, &k), id);
        ck_assert_int_eq(kvd_index_insert(idx, &k, &id2), -EEXIST);
        ck_assert_uint_eq(id2, id);
        /* Each of ns, layer and both key halves distinguishes a block. */
        k2.layer = 5;
        ck_assert_uint_eq(kvd_index_find(idx, &k2), KVD_ID_NONE);
        k2 = k;
        k2.ns = 9;
        ck_assert_uint_eq(kvd_index_find(idx, &k2), KVD_ID_NONE);
        k2 = k;
        k2.lo = 7;
        ck_assert_uint_eq(kvd_index_find(idx, &k2), KVD_ID_NONE);
        kvd_index_remove(idx, id);
        ck_assert_uint_eq(kvd_index_find(idx, &k), KVD_ID_NONE);
        ck_assert_uint_eq(kvd_index_count(idx), 0);
        kvd_index_free(idx);
}
END_TEST

/* Random inserts and removes, checked against a plain array; crosses several
 * table growths and exercises backward-shift deletion in long runs. */
START_TEST(model_check)
{
        enum { N = 200000 };
        struct kvd_index *idx;
        struct kvd_bkey *keys = calloc(N, sizeof(*keys));
        uint32_t *ids = calloc(N, sizeof(*ids));
        bool *live = calloc(N, sizeof(*live));
        uint64_t n_live = 0;

        ck_assert_int_eq(kvd_index_new(16, &idx), 0);
        for (int i = 0; i < N; i++)
                /* few distinct key values: many equal hashes' neighbours */
                keys[i] = (struct kvd_bkey){ next_rand() % 5000, (uint64_t)i, (uint32_t)(i % 3), (uint32_t)(i % 7) };
        for (int round = 0; round < 3; round++) {
                for (int i = 0; i < N; i++) {
                        if (!live[i] && next_rand() % 2) {
                                ck_assert_int_eq(kvd_index_insert(idx, &keys[i], &ids[i]), 0);
                                kvd_index_block(idx, ids[i])->loc = (uint32_t)i;
                                live[i] = true;
                                n_live++;
                        } else if (live[i] && next_rand() % 3 == 0) {
                                kvd_index_remove(idx, ids[i]);
                                live[i] = false;
                                n_live--;
                        }
                }
                ck_assert_uint_eq(kvd_index_count(idx), n_live);
                for (int i = 0; i < N; i++) {
                        uint32_t id = kvd_index_find(idx, &keys[i]);

                        if (live[i]) {
                                ck_assert_uint_eq(id, ids[i]);
                                ck_assert_uint_eq(kvd_index_block(idx, id)->loc, (uint32_t)i);
                        } else {
                                ck_assert_uint_eq(id, KVD_ID_NONE);
                        }
                }
        }
        ck_assert_uint_ge(kvd_index_capacity(idx) * 3, kvd_index_count(idx) * 4);
        ck_assert_uint_le(kvd_index_bytes_per_block(idx), 96);
        kvd_index_free(idx);
        free(keys);
        free(ids);
        free(live);
}
END_TEST

/* The figure is measured from what is allocated: nothing per block when
 * empty, and at 10^6 blocks one record plus a table that grew from its
 * small start (2^21 slots at a load of 0.48, so 16.8 B) plus a part chunk. */
START_TEST(footprint_measured)
{
        const uint32_t n = 1000000;
        struct kvd_index *idx;
        uint32_t *ids = calloc(n, sizeof(*ids));
        uint64_t cap0;

        ck_assert_ptr_nonnull(ids);
        ck_assert_int_eq(kvd_index_new(0, &idx), 0);
        cap0 = kvd_index_capacity(idx);
        ck_assert_uint_le(cap0, 1024);
        ck_assert_uint_eq(kvd_index_bytes_per_block(idx), 0);
        ck_assert_uint_gt(kvd_index_bytes(idx), 0);
        for (uint32_t i = 0; i < n; i++) {
                struct kvd_bkey k = { next_rand(), next_rand(), i & 7, i % 80 };

                ck_assert_int_eq(kvd_index_insert(idx, &k, &ids[i]), 0);
        }
        ck_assert_uint_eq(kvd_index_count(idx), n);
        /* Grew with use: the smallest power of two that keeps load <= 0.75. */
        ck_assert_uint_gt(kvd_index_capacity(idx), cap0);
        ck_assert_uint_eq(kvd_index_capacity(idx), UINT64_C(1) << 21);
        ck_assert_uint_le(kvd_index_bytes_per_block(idx), sizeof(struct kvd_block) + 18);
        ck_assert_uint_ge(kvd_index_bytes(idx), (uint64_t)n * sizeof(struct kvd_block));
        for (uint32_t i = 0; i < n; i++)
                kvd_index_remove(idx, ids[i]);
        ck_assert_uint_eq(kvd_index_bytes_per_block(idx), 0);
        kvd_index_free(idx);
        free(ids);
}
END_TEST

static Suite *index_suite(void)
{
        Suite *s = suite_create("index");
        TCase *tc = tcase_create("index");

        tcase_add_test(tc, insert_find_remove);
        tcase_add_test(tc, model_check);
        tcase_add_test(tc, footprint_measured);
        tcase_set_timeout(tc, 120);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(index_suite)
