/* SPDX-License-Identifier: MIT */
/* Block keys, geometry helpers and error names of libkvclient. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <xxhash.h>

#include <kvdrive/client.h>

#include "check-main.h"

static bool key_eq(struct kvc_key a, struct kvc_key b)
{
        return a.hi == b.hi && a.lo == b.lo;
}

static void put_le(uint8_t *p, uint64_t v, unsigned bytes)
{
        for (unsigned i = 0; i < bytes; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

START_TEST(chain_known_answer)
{
        const struct kvc_key parent = { .hi = 0x0102030405060708ull, .lo = 0x1112131415161718ull };
        const uint32_t tokens[3] = { 1, 0xdeadbeef, 70000 };
        uint8_t buf[16 + 3 * 4];
        struct kvc_key k;
        XXH128_hash_t h;

        put_le(buf, parent.hi, 8);
        put_le(buf + 8, parent.lo, 8);
        for (unsigned i = 0; i < 3; i++)
                put_le(buf + 16 + 4 * i, tokens[i], 4);
        h = XXH3_128bits(buf, sizeof(buf));
        kvc_key_chain(&parent, tokens, 3, &k);
        ck_assert_uint_eq(k.hi, h.high64);
        ck_assert_uint_eq(k.lo, h.low64);

        /* First block: the parent is 16 zero bytes. */
        memset(buf, 0, 16);
        h = XXH3_128bits(buf, sizeof(buf));
        kvc_key_chain(NULL, tokens, 3, &k);
        ck_assert_uint_eq(k.hi, h.high64);
        ck_assert_uint_eq(k.lo, h.low64);
}
END_TEST

START_TEST(chain_long_input_known_answer)
{
        /* More tokens than the library hashes in one chunk. */
        uint32_t tokens[1000];
        uint8_t buf[16 + sizeof(tokens)] = { 0 };
        struct kvc_key k;
        XXH128_hash_t h;

        for (unsigned i = 0; i < 1000; i++) {
                tokens[i] = i * 2654435761u;
                put_le(buf + 16 + 4 * i, tokens[i], 4);
        }
        h = XXH3_128bits(buf, sizeof(buf));
        kvc_key_chain(NULL, tokens, 1000, &k);
        ck_assert_uint_eq(k.hi, h.high64);
        ck_assert_uint_eq(k.lo, h.low64);
}
END_TEST

START_TEST(chain_deterministic)
{
        const uint32_t tokens[4] = { 10, 20, 30, 40 };
        const struct kvc_key zero = { 0, 0 };
        struct kvc_key a, b, c;

        kvc_key_chain(NULL, tokens, 4, &a);
        kvc_key_chain(NULL, tokens, 4, &b);
        kvc_key_chain(&zero, tokens, 4, &c);
        ck_assert(key_eq(a, b));
        ck_assert(key_eq(a, c));
        kvc_key_chain(&a, tokens, 4, &b);
        ck_assert(!key_eq(a, b));
        kvc_key_chain(NULL, tokens, 3, &c);
        ck_assert(!key_eq(a, c));
}
END_TEST

START_TEST(prefix_chain_shares_prefix)
{
        uint32_t t1[16], t2[16];
        struct kvc_key k1[4], k2[4], manual;

        for (unsigned i = 0; i < 16; i++)
                t1[i] = t2[i] = 1000 + i;
        t2[9] = 7;      /* block 2 of 4-token blocks */
        ck_assert_int_eq(kvc_key_prefix_chain(t1, 16, 4, k1, 4), 4);
        ck_assert_int_eq(kvc_key_prefix_chain(t2, 16, 4, k2, 4), 4);
        ck_assert(key_eq(k1[0], k2[0]));
        ck_assert(key_eq(k1[1], k2[1]));
        for (unsigned i = 2; i < 4; i++)
                ck_assert(!key_eq(k1[i], k2[i]));

        /* Block i chains block i-1. */
        kvc_key_chain(NULL, t1, 4, &manual);
        ck_assert(key_eq(manual, k1[0]));
        kvc_key_chain(&k1[2], t1 + 12, 4, &manual);
        ck_assert(key_eq(manual, k1[3]));
}
END_TEST

START_TEST(prefix_chain_counts)
{
        uint32_t t[16] = { 0 };
        struct kvc_key k[8];
        const struct kvc_key sentinel = { 0x5a5a5a5a5a5a5a5aull, 0xa5a5a5a5a5a5a5a5ull };

        for (unsigned i = 0; i < 8; i++)
                k[i] = sentinel;
        /* A partial last block has no key. */
        ck_assert_int_eq(kvc_key_prefix_chain(t, 10, 4, k, 8), 2);
        ck_assert(key_eq(k[2], sentinel));
        ck_assert_int_eq(kvc_key_prefix_chain(t, 3, 4, k, 8), 0);
        ck_assert_int_eq(kvc_key_prefix_chain(t, 0, 4, k, 8), 0);
        ck_assert_int_eq(kvc_key_prefix_chain(NULL, 0, 4, NULL, 0), 0);
        /* Capped at max; nothing written beyond. */
        ck_assert_int_eq(kvc_key_prefix_chain(t, 16, 2, k, 3), 3);
        ck_assert(key_eq(k[3], sentinel));
        ck_assert_int_eq(kvc_key_prefix_chain(t, 16, 1, k, 0), 0);
        ck_assert_int_eq(kvc_key_prefix_chain(t, 16, 16, k, 8), 1);
        ck_assert_int_eq(kvc_key_prefix_chain(t, 16, 0, k, 8), -EINVAL);
        ck_assert_int_eq(kvc_key_prefix_chain(NULL, 16, 4, k, 8), -EINVAL);
        ck_assert_int_eq(kvc_key_prefix_chain(t, 16, 4, NULL, 8), -EINVAL);
}
END_TEST

START_TEST(private_keys)
{
        const struct kvc_key s1 = { 1, 2 }, s2 = { 1, 3 };
        struct kvc_key a, b, c, d, chain;
        uint8_t buf[40];
        XXH128_hash_t h;

        kvc_key_private(&s1, 0, &a);
        kvc_key_private(&s1, 0, &b);
        ck_assert(key_eq(a, b));
        kvc_key_private(&s1, 1, &c);
        ck_assert(!key_eq(a, c));
        kvc_key_private(&s2, 0, &d);
        ck_assert(!key_eq(a, d));

        /* Known answer: tag, seq (hi, lo) and index, little-endian. */
        memcpy(buf, "kvdrive-private", 16);
        put_le(buf + 16, s1.hi, 8);
        put_le(buf + 24, s1.lo, 8);
        put_le(buf + 32, 1, 8);
        h = XXH3_128bits(buf, sizeof(buf));
        ck_assert_uint_eq(c.hi, h.high64);
        ck_assert_uint_eq(c.lo, h.low64);

        /* Not the prefix key of the same bytes read as a chain. */
        kvc_key_chain(&s1, NULL, 0, &chain);
        ck_assert(!key_eq(chain, a));
}
END_TEST

START_TEST(sequence_new_random)
{
        struct kvc_key a, b;

        ck_assert_int_eq(kvc_key_sequence_new(&a), 0);
        ck_assert_int_eq(kvc_key_sequence_new(&b), 0);
        ck_assert(!key_eq(a, b));
        ck_assert_int_eq(kvc_key_sequence_new(NULL), -EINVAL);
}
END_TEST

START_TEST(geometry)
{
        struct kvc_geometry g = {
                .layers = 32, .kv_heads = 8, .head_dim = 128,
                .dtype = KVC_DTYPE_F16, .block_tokens = 16,
        };

        ck_assert_uint_eq(kvc_dtype_size(KVC_DTYPE_F16), 2);
        ck_assert_uint_eq(kvc_dtype_size(KVC_DTYPE_BF16), 2);
        ck_assert_uint_eq(kvc_dtype_size(KVC_DTYPE_F32), 4);
        ck_assert_uint_eq(kvc_dtype_size(KVC_DTYPE_FP8), 1);
        ck_assert_uint_eq(kvc_dtype_size((enum kvc_dtype)0), 0);
        ck_assert_uint_eq(kvc_dtype_size((enum kvc_dtype)99), 0);

        ck_assert_uint_eq(kvc_block_bytes(&g), 2u * 8 * 128 * 16 * 2);
        g.dtype = KVC_DTYPE_FP8;
        ck_assert_uint_eq(kvc_block_bytes(&g), 2u * 8 * 128 * 16);
        g.dtype = 0;
        ck_assert_uint_eq(kvc_block_bytes(&g), 0);
        g.dtype = KVC_DTYPE_F32;
        g.block_tokens = 0;
        ck_assert_uint_eq(kvc_block_bytes(&g), 0);
        g.block_tokens = 16;
        g.layers = 0;
        ck_assert_uint_eq(kvc_block_bytes(&g), 0);
        ck_assert_uint_eq(kvc_block_bytes(NULL), 0);
        /* Every factor at its maximum overflows 64 bits: invalid, not wrapped. */
        g = (struct kvc_geometry){ 1, UINT32_MAX, UINT32_MAX, KVC_DTYPE_F32, UINT32_MAX };
        ck_assert_uint_eq(kvc_block_bytes(&g), 0);
}
END_TEST

START_TEST(error_names)
{
        ck_assert_str_eq(kvc_strerror(-ENOENT), strerror(ENOENT));
        ck_assert_str_eq(kvc_strerror(-KVC_E_NO_POOL), "Unknown pool");
        ck_assert_str_eq(kvc_strerror(-KVC_E_NS_CONFLICT),
                         "Namespace exists with another geometry");
        ck_assert_str_ne(kvc_strerror(-KVC_E_INTERNAL), kvc_strerror(-KVC_E_LIMIT));
        for (int e = KVC_E_MALFORMED; e < KVC_E_MAX; e++)
                ck_assert_str_ne(kvc_strerror(-e), "Unknown daemon error");
        ck_assert_str_eq(kvc_strerror(-KVC_E_MAX), "Unknown daemon error");
        ck_assert_ptr_nonnull(kvc_strerror(-123456));
        ck_assert_ptr_nonnull(kvc_strerror(-9999));
        ck_assert_ptr_nonnull(kvc_strerror(INT32_MIN));
}
END_TEST

static Suite *keys_suite(void)
{
        Suite *s = suite_create("keys");
        TCase *tc = tcase_create("keys");

        tcase_add_test(tc, chain_known_answer);
        tcase_add_test(tc, chain_long_input_known_answer);
        tcase_add_test(tc, chain_deterministic);
        tcase_add_test(tc, prefix_chain_shares_prefix);
        tcase_add_test(tc, prefix_chain_counts);
        tcase_add_test(tc, private_keys);
        tcase_add_test(tc, sequence_new_random);
        tcase_add_test(tc, geometry);
        tcase_add_test(tc, error_names);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(keys_suite)
