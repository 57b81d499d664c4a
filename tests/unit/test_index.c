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
        ck_assert_uint_ge(kvd_index_capacity(idx) * 4, kvd_index_count(idx) * 5);
        ck_assert_uint_le(kvd_index_bytes_per_block(idx), 96);
        kvd_index_free(idx);
        free(keys);
        free(ids);
        free(live);
}
END_TEST

/* Every key inserted so far is found, with its own id, and keys never
 * inserted are not. */
static void check_all(const struct kvd_index *idx, const struct kvd_bkey *keys, const uint32_t *ids,
                      const bool *live, uint32_t n)
{
        for (uint32_t i = 0; i < n; i++) {
                struct kvd_bkey absent = keys[i];

                ck_assert_uint_eq(kvd_index_find(idx, &keys[i]), live[i] ? ids[i] : KVD_ID_NONE);
                absent.hi = ~absent.hi;
                ck_assert_uint_eq(kvd_index_find(idx, &absent), KVD_ID_NONE);
        }
}

/* The table grows by a quarter (non-power-of-two sizes) and the slots' tags
 * shrink as ids pass each power of two: after every such change, every key
 * is still found. */
START_TEST(growth_finds_every_key)
{
        enum { N = 150000 };
        struct kvd_bkey *keys = calloc(N, sizeof(*keys));
        uint32_t *ids = calloc(N, sizeof(*ids));
        bool *live = calloc(N, sizeof(*live));
        unsigned resizes = 0, widenings = 0;
        struct kvd_index *idx;
        uint64_t cap;

        ck_assert_int_eq(kvd_index_new(0, &idx), 0);
        cap = kvd_index_capacity(idx);
        for (uint32_t i = 0; i < N; i++) {
                keys[i] = (struct kvd_bkey){ next_rand(), next_rand(), i % 5, i % 61 };
                ck_assert_int_eq(kvd_index_insert(idx, &keys[i], &ids[i]), 0);
                live[i] = true;
                if (kvd_index_capacity(idx) != cap) {
                        /* by a quarter, at a load of 0.8 */
                        ck_assert_uint_eq(kvd_index_capacity(idx), cap + cap / 4);
                        ck_assert_uint_eq(i, cap * 4 / 5);
                        cap = kvd_index_capacity(idx);
                        resizes++;
                        if (resizes % 4 == 1 || cap > 100000)
                                check_all(idx, keys, ids, live, i + 1);
                }
                if (ids[i] >= 4096 && (ids[i] & (ids[i] - 1)) == 0) {
                        widenings++;
                        check_all(idx, keys, ids, live, i + 1);
                }
        }
        ck_assert_uint_ge(resizes, 20);
        ck_assert_uint_ge(widenings, 5);        /* 2^12 .. 2^17 */
        check_all(idx, keys, ids, live, N);
        kvd_index_free(idx);
        free(keys);
        free(ids);
        free(live);
}
END_TEST

/* Removal in a grown table at its load limit, where runs are long and
 * wrap past the last slot: after each backward shift every remaining key
 * is found. Several key sets, so that runs cross the wrap in some. */
START_TEST(remove_backward_shift_grown)
{
        enum { N = 1280 };      /* 0.8 x 1600: the table grew twice, from 1024 to 1600 */
        struct kvd_bkey keys[N];
        uint32_t ids[N], order[N];
        bool live[N];

        for (int set = 0; set < 8; set++) {
                struct kvd_index *idx;

                ck_assert_int_eq(kvd_index_new(0, &idx), 0);
                for (uint32_t i = 0; i < N; i++) {
                        keys[i] = (struct kvd_bkey){ next_rand(), next_rand(), 1, i % 3 };
                        ck_assert_int_eq(kvd_index_insert(idx, &keys[i], &ids[i]), 0);
                        live[i] = true;
                        order[i] = i;
                }
                ck_assert_uint_eq(kvd_index_capacity(idx), 1600);
                for (uint32_t i = N - 1; i > 0; i--) {
                        uint32_t j = (uint32_t)(next_rand() % (i + 1)), t = order[i];

                        order[i] = order[j];
                        order[j] = t;
                }
                for (uint32_t i = 0; i < N; i++) {
                        kvd_index_remove(idx, ids[order[i]]);
                        live[order[i]] = false;
                        ck_assert_uint_eq(kvd_index_count(idx), N - 1 - i);
                        if (i % 8 == 0 || i > N - 40)
                                check_all(idx, keys, ids, live, N);
                        /* a removed key's record is reused by the next insert */
                        if (i % 97 == 0) {
                                ck_assert_int_eq(kvd_index_insert(idx, &keys[order[i]], &ids[order[i]]), 0);
                                ck_assert_uint_eq(kvd_index_find(idx, &keys[order[i]]), ids[order[i]]);
                                kvd_index_remove(idx, ids[order[i]]);
                        }
                }
                check_all(idx, keys, ids, live, N);
                ck_assert_uint_eq(kvd_index_capacity(idx), 1600);
                kvd_index_free(idx);
        }
}
END_TEST

/* The record keeps ns in 12 bits and layer in 13: a key beyond them is
 * refused, and never found as the block whose key it would truncate to. */
START_TEST(narrow_fields_refused)
{
        struct kvd_index *idx;
        struct kvd_bkey k = { 5, 6, 7, 8 }, wide;
        uint32_t id, id2;

        ck_assert_int_eq(kvd_index_new(0, &idx), 0);
        ck_assert_int_eq(kvd_index_insert(idx, &k, &id), 0);
        wide = k;
        wide.layer += 1u << KVD_BLOCK_LAYER_BITS;
        ck_assert_uint_eq(kvd_index_find(idx, &wide), KVD_ID_NONE);
        ck_assert_int_eq(kvd_index_insert(idx, &wide, &id2), -EINVAL);
        wide = k;
        wide.ns += 1u << KVD_BLOCK_NS_BITS;
        ck_assert_uint_eq(kvd_index_find(idx, &wide), KVD_ID_NONE);
        ck_assert_int_eq(kvd_index_insert(idx, &wide, &id2), -EINVAL);
        ck_assert_uint_eq(kvd_index_count(idx), 1);
        /* the largest of each fits */
        wide = (struct kvd_bkey){ 5, 6, (1u << KVD_BLOCK_NS_BITS) - 1, (1u << KVD_BLOCK_LAYER_BITS) - 1 };
        ck_assert_int_eq(kvd_index_insert(idx, &wide, &id2), 0);
        ck_assert_uint_eq(kvd_index_block(idx, id2)->ns, wide.ns);
        ck_assert_uint_eq(kvd_index_block(idx, id2)->layer, wide.layer);
        ck_assert_uint_eq(kvd_index_find(idx, &wide), id2);
        ck_assert_uint_eq(kvd_index_find(idx, &k), id);
        kvd_index_free(idx);
}
END_TEST

/* The figure is measured from what is allocated: nothing per block when
 * empty, and at 10^6 blocks (issue 16) at most 64 B: a 56-B record, a table
 * of 4-B slots that grew by quarters from its small start (1 291 785 slots,
 * a load of 0.77: 5.2 B), and a part chunk. */
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
        ck_assert_uint_eq(sizeof(struct kvd_block), 56);
        /* Grew with use, and sits between 0.64 and 0.8 full. */
        ck_assert_uint_gt(kvd_index_capacity(idx), cap0);
        ck_assert_uint_eq(kvd_index_capacity(idx), 1291785);
        ck_assert_uint_le(kvd_index_bytes_per_block(idx), 64);
        ck_assert_uint_ge(kvd_index_bytes(idx), (uint64_t)n * (sizeof(struct kvd_block) + 4));
        for (uint32_t i = 0; i < n; i++)
                kvd_index_remove(idx, ids[i]);
        ck_assert_uint_eq(kvd_index_bytes_per_block(idx), 0);
        kvd_index_free(idx);
        free(ids);
}
END_TEST

/* A hint presizes the table for that many blocks at the load limit. */
START_TEST(hint_presizes)
{
        struct kvd_index *idx;

        ck_assert_int_eq(kvd_index_new(100000, &idx), 0);
        ck_assert_uint_eq(kvd_index_capacity(idx), 125000);
        for (uint32_t i = 0; i < 100000; i++) {
                struct kvd_bkey k = { next_rand(), i, 0, 0 };
                uint32_t id;

                ck_assert_int_eq(kvd_index_insert(idx, &k, &id), 0);
        }
        ck_assert_uint_eq(kvd_index_capacity(idx), 125000);
        kvd_index_free(idx);
}
END_TEST

static Suite *index_suite(void)
{
        Suite *s = suite_create("index");
        TCase *tc = tcase_create("index");

        tcase_add_test(tc, insert_find_remove);
        tcase_add_test(tc, model_check);
        tcase_add_test(tc, growth_finds_every_key);
        tcase_add_test(tc, remove_backward_shift_grown);
        tcase_add_test(tc, narrow_fields_refused);
        tcase_add_test(tc, footprint_measured);
        tcase_add_test(tc, hint_presizes);
        tcase_set_timeout(tc, 120);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(index_suite)
