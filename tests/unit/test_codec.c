/* SPDX-License-Identifier: MIT */
/* The cold tiers' codecs (util/codec.c): lossless round trips bit-exact on
 * any bytes, lossy ones within their error bounds, corrupt input refused. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check-main.h"
#include "codec.h"
#include "kernels.h"

static const struct kvd_codec_shape f16_shape = { .dtype = 1, .kv_heads = 2, .head_dim = 64, .block_tokens = 16 };
static const struct kvd_codec_shape bf16_shape = { .dtype = 2, .kv_heads = 2, .head_dim = 64, .block_tokens = 16 };

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return rng;
}

static double gauss(void)
{
        double u = ((double)(next() >> 11) + 0.5) / 9007199254740992.0;
        double v = ((double)(next() >> 11) + 0.5) / 9007199254740992.0;
        return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static size_t block_bytes(const struct kvd_codec_shape *s)
{
        return 2u * s->kv_heads * s->head_dim * s->block_tokens * 2u;
}

/* A K/V-like f16/bf16 block: gaussian with a few outlier channels. */
static uint8_t *kv_block(const struct kvd_codec_shape *s)
{
        size_t n = block_bytes(s) / 2;
        uint16_t *p = malloc(n * 2);

        for (size_t i = 0; i < n; i++) {
                float x = (float)gauss() * ((i % s->head_dim) % 17 == 3 ? 20.0f : 1.0f);
                p[i] = s->dtype == 1 ? kvk_f32_to_f16(x) : kvk_f32_to_bf16(x);
        }
        return (uint8_t *)p;
}

static void round_trip(enum kvd_codec c, const struct kvd_codec_shape *s, const uint8_t *src, size_t len)
{
        size_t cap = kvd_codec_bound(c, len), n = 0, m = 0, raw = 0;
        uint8_t *enc = malloc(cap + 1), *dec = malloc(len + 1);

        ck_assert_int_eq(kvd_codec_encode(c, s, src, len, enc, cap, &n), 0);
        ck_assert_uint_le(n, cap);
        ck_assert_int_eq(kvd_codec_raw_len(c, enc, n, &raw), 0);
        ck_assert_uint_eq(raw, len);
        ck_assert_int_eq(kvd_codec_decode(c, s, enc, n, dec, len, &m), 0);
        ck_assert_uint_eq(m, len);
        ck_assert(len == 0 || memcmp(src, dec, len) == 0);
        free(enc);
        free(dec);
}

START_TEST(names)
{
        enum kvd_codec c = KVD_CODEC_ID_MAX;

        ck_assert_int_eq(kvd_codec_by_name("zstd", &c), 0);
        ck_assert_int_eq(c, KVD_CODEC_ID_ZSTD);
        ck_assert_int_eq(kvd_codec_by_name("none", &c), 0);
        ck_assert_int_eq(c, 0);
        ck_assert_int_eq(kvd_codec_by_name("gzip", &c), -EINVAL);
        ck_assert_int_eq(kvd_codec_by_name("", &c), -EINVAL);
        ck_assert_int_eq(c, 0);
        for (int i = 0; i < KVD_CODEC_ID_MAX; i++) {
                ck_assert_int_eq(kvd_codec_by_name(kvd_codec_name(i), &c), 0);
                ck_assert_int_eq(c, i);
        }
        ck_assert_ptr_null(kvd_codec_name(KVD_CODEC_ID_MAX));
        /* On-disk ids: never renumbered. */
        ck_assert_int_eq(KVD_CODEC_ID_ZSTD, 1);
        ck_assert_int_eq(KVD_CODEC_ID_FP8, 2);
        ck_assert_int_eq(KVD_CODEC_ID_INT8, 3);
        ck_assert_int_eq(KVD_CODEC_ID_INT4, 4);
}
END_TEST

START_TEST(lossless_any_bytes)
{
        static const size_t lens[] = { 0, 1, 2, 3, 7, 4095, 4097, 65536, 65537 };
        const struct kvd_codec_shape *shapes[] = { NULL, &f16_shape, &bf16_shape };
        struct kvd_codec_shape f32 = f16_shape;
        uint8_t *buf = malloc(65537);

        f32.dtype = 3;
        for (size_t i = 0; i < 65537; i++)
                buf[i] = (uint8_t)next();
        for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
                for (size_t k = 0; k < 3; k++) {
                        round_trip(KVD_CODEC_ID_ZSTD, shapes[k], buf, lens[l]);
                        round_trip(KVD_CODEC_ID_NONE, shapes[k], buf, lens[l]);
                }
                round_trip(KVD_CODEC_ID_ZSTD, &f32, buf, lens[l]);
        }
        /* Incompressible: stored, at most the header more than the input. */
        {
                size_t n = 0;
                uint8_t *enc = malloc(kvd_codec_bound(KVD_CODEC_ID_ZSTD, 65536));
                ck_assert_int_eq(kvd_codec_encode(KVD_CODEC_ID_ZSTD, &f16_shape, buf, 65536, enc,
                                                  kvd_codec_bound(KVD_CODEC_ID_ZSTD, 65536), &n), 0);
                ck_assert_uint_le(n, 65536 + KVD_CODEC_HEADER_BYTES);
                free(enc);
        }
        free(buf);
}
END_TEST

START_TEST(lossless_f16)
{
        uint8_t *b = kv_block(&f16_shape), *z = calloc(1, block_bytes(&f16_shape));
        size_t len = block_bytes(&f16_shape), n = 0;
        uint8_t *enc = malloc(kvd_codec_bound(KVD_CODEC_ID_ZSTD, len));

        round_trip(KVD_CODEC_ID_ZSTD, &f16_shape, b, len);
        round_trip(KVD_CODEC_ID_ZSTD, &f16_shape, z, len);
        ck_assert_int_eq(kvd_codec_encode(KVD_CODEC_ID_ZSTD, &f16_shape, z, len, enc,
                                          kvd_codec_bound(KVD_CODEC_ID_ZSTD, len), &n), 0);
        ck_assert_uint_lt(n, len / 10);                 /* zeros do compress */
        /* NaN and Inf patterns survive. */
        for (size_t i = 0; i < len / 2; i += 3)
                ((uint16_t *)b)[i] = (uint16_t)(0x7c00 | (i & 0x3ff));
        round_trip(KVD_CODEC_ID_ZSTD, &f16_shape, b, len);
        ck_assert_int_eq(kvd_codec_encode(KVD_CODEC_ID_ZSTD, &f16_shape, b, len, enc, 8, &n), -ENOBUFS);
        free(enc);
        free(z);
        free(b);
}
END_TEST

/* Every truncation and many bit flips of a valid buffer: an error or a
 * successful decode of the right length, never a crash (ASan catches the rest). */
static void corrupt(enum kvd_codec c, const struct kvd_codec_shape *s, const uint8_t *src, size_t len)
{
        size_t cap = kvd_codec_bound(c, len), n = 0, m;
        uint8_t *enc = malloc(cap), *dec = malloc(len), *bad = malloc(cap);
        int r;

        ck_assert_int_eq(kvd_codec_encode(c, s, src, len, enc, cap, &n), 0);
        for (size_t t = 0; t < n; t += (n > 512 ? 7 : 1)) {
                memcpy(bad, enc, t);
                r = kvd_codec_decode(c, s, bad, t, dec, len, &m);
                ck_assert(r == -EBADMSG);
        }
        for (int k = 0; k < 2000; k++) {
                size_t at = next() % n;
                memcpy(bad, enc, n);
                bad[at] ^= (uint8_t)(1u << (next() % 8));
                r = kvd_codec_decode(c, s, bad, n, dec, len, &m);
                ck_assert_msg(r == -EBADMSG || (r == 0 && m == len), "codec %d flip at %zu: %d", c, at, r);
        }
        ck_assert_int_eq(kvd_codec_decode(c, s, enc, n, dec, len - 1, &m), -ENOBUFS);
        free(bad);
        free(dec);
        free(enc);
}

START_TEST(corrupt_input)
{
        uint8_t *b = kv_block(&f16_shape);
        size_t len = block_bytes(&f16_shape);
        uint8_t *z = calloc(1, len);

        corrupt(KVD_CODEC_ID_ZSTD, &f16_shape, b, len);
        corrupt(KVD_CODEC_ID_ZSTD, &f16_shape, z, len);
        corrupt(KVD_CODEC_ID_FP8, &f16_shape, b, len);
        corrupt(KVD_CODEC_ID_INT8, &f16_shape, b, len);
        corrupt(KVD_CODEC_ID_INT4, &bf16_shape, b, len);
        /* A buffer of another codec is refused. */
        {
                size_t n, m;
                uint8_t *enc = malloc(kvd_codec_bound(KVD_CODEC_ID_FP8, len));
                ck_assert_int_eq(kvd_codec_encode(KVD_CODEC_ID_FP8, &f16_shape, b, len, enc,
                                                  kvd_codec_bound(KVD_CODEC_ID_FP8, len), &n), 0);
                ck_assert_int_eq(kvd_codec_decode(KVD_CODEC_ID_INT8, &f16_shape, enc, n, z, len, &m), -EBADMSG);
                ck_assert_int_eq(kvd_codec_decode(KVD_CODEC_ID_FP8, &bf16_shape, enc, n, z, len, &m), -EBADMSG);
                ck_assert_int_eq(kvd_codec_decode(KVD_CODEC_ID_MAX, &f16_shape, enc, n, z, len, &m), -EBADMSG);
                free(enc);
        }
        free(z);
        free(b);
}
END_TEST

START_TEST(e4m3)
{
        /* Every e4m3 value but NaN converts back to itself. */
        for (int b = 0; b < 256; b++) {
                float f = kvd_e4m3_to_f32((uint8_t)b);
                if ((b & 0x7f) == 0x7f) {
                        ck_assert(isnan(f));
                        continue;
                }
                ck_assert_int_eq(kvd_f32_to_e4m3(f), b);
        }
        ck_assert_int_eq(kvd_f32_to_e4m3(448.0f), 0x7e);
        ck_assert_int_eq(kvd_f32_to_e4m3(1e6f), 0x7e);
        ck_assert_int_eq(kvd_f32_to_e4m3(-INFINITY), 0xfe);
        ck_assert_int_eq(kvd_f32_to_e4m3(INFINITY), 0x7e);
        ck_assert_int_eq(kvd_f32_to_e4m3(NAN) & 0x7f, 0x7f);
        /* Ties to even: 1 + 1/16 lies between 1 and 1 + 1/8. */
        ck_assert_int_eq(kvd_f32_to_e4m3(1.0625f), 0x38);
        ck_assert_int_eq(kvd_f32_to_e4m3(1.1875f), 0x3a);
        ck_assert_int_eq(kvd_f32_to_e4m3(0x1p-10f), 0x00);     /* half the smallest subnormal */
}
END_TEST

static uint8_t *lossy_rt(enum kvd_codec c, const struct kvd_codec_shape *s, const uint8_t *b, size_t *ret_n)
{
        size_t len = block_bytes(s), cap = kvd_codec_bound(c, len), n = 0, m = 0, n2 = 0;
        uint8_t *enc = malloc(cap), *enc2 = malloc(cap), *dec = malloc(len);

        ck_assert_int_eq(kvd_codec_encode(c, s, b, len, enc, cap, &n), 0);
        ck_assert_int_eq(kvd_codec_encode(c, s, b, len, enc2, cap, &n2), 0);
        ck_assert_uint_eq(n, n2);
        ck_assert(memcmp(enc, enc2, n) == 0);           /* deterministic */
        ck_assert_int_eq(kvd_codec_decode(c, s, enc, n, dec, len, &m), 0);
        ck_assert_uint_eq(m, len);
        *ret_n = n;
        free(enc2);
        free(enc);
        return dec;
}

static float val(const struct kvd_codec_shape *s, const uint8_t *p, size_t i)
{
        uint16_t h;

        memcpy(&h, p + 2 * i, 2);
        return s->dtype == 1 ? kvk_f16_to_f32(h) : kvk_bf16_to_f32(h);
}

START_TEST(fp8_bound)
{
        const struct kvd_codec_shape *shapes[] = { &f16_shape, &bf16_shape };

        for (int k = 0; k < 2; k++) {
                const struct kvd_codec_shape *s = shapes[k];
                uint8_t *b = kv_block(s), *d;
                size_t n, elems = block_bytes(s) / 2;

                d = lossy_rt(KVD_CODEC_ID_FP8, s, b, &n);
                ck_assert_uint_eq(n, KVD_CODEC_HEADER_BYTES + elems);
                for (size_t i = 0; i < elems; i++) {
                        float x = val(s, b, i), y = val(s, d, i);
                        if (fabsf(x) >= 0x1p-6f && fabsf(x) <= 448.0f)
                                ck_assert_float_le(fabsf(y - x), fabsf(x) * 0x1p-4f * 1.01f);
                        else if (fabsf(x) < 0x1p-6f)
                                ck_assert_float_le(fabsf(y - x), 0x1p-10f * 1.01f);
                }
                free(d);
                free(b);
        }
}
END_TEST

/* Max abs error <= scale / 2 per group (plus the output's own rounding). */
static void int_bound(enum kvd_codec c, const struct kvd_codec_shape *s)
{
        uint8_t *b = kv_block(s), *d;
        size_t n, T = s->block_tokens, D = s->head_dim, H = s->kv_heads, P = H * T * D;
        float levels = c == KVD_CODEC_ID_INT8 ? 255.0f : 15.0f;
        float ulp = s->dtype == 1 ? 0x1p-11f : 0x1p-8f;

        d = lossy_rt(c, s, b, &n);
        ck_assert_uint_lt(n, block_bytes(s));
        for (int v = 0; v < 2; v++) {
                size_t groups = v ? H * T : H * D, count = v ? D : T;
                for (size_t g = 0; g < groups; g++) {
                        size_t base = v ? P + g * D : (g / D) * T * D + g % D, stride = v ? 1 : D;
                        float lo = INFINITY, hi = -INFINITY, scale;
                        for (size_t k = 0; k < count; k++) {
                                float x = val(s, b, base + k * stride);
                                lo = fminf(lo, x);
                                hi = fmaxf(hi, x);
                        }
                        scale = (hi - lo) / levels;
                        for (size_t k = 0; k < count; k++) {
                                size_t i = base + k * stride;
                                float x = val(s, b, i), y = val(s, d, i);
                                ck_assert_float_le(fabsf(y - x), scale / 2 * 1.001f + fabsf(x + scale) * ulp + 1e-7f);
                        }
                }
        }
        free(d);
        free(b);
}

START_TEST(int_bounds)
{
        struct kvd_codec_shape odd = { .dtype = 1, .kv_heads = 3, .head_dim = 5, .block_tokens = 7 };

        int_bound(KVD_CODEC_ID_INT8, &f16_shape);
        int_bound(KVD_CODEC_ID_INT4, &f16_shape);
        int_bound(KVD_CODEC_ID_INT8, &bf16_shape);
        int_bound(KVD_CODEC_ID_INT4, &bf16_shape);
        int_bound(KVD_CODEC_ID_INT4, &odd);             /* an odd element count packs a half byte */
}
END_TEST

START_TEST(lossy_refuses)
{
        struct kvd_codec_shape f32 = f16_shape;
        size_t len = block_bytes(&f16_shape), n;
        uint8_t *b = kv_block(&f16_shape), *enc = malloc(kvd_codec_bound(KVD_CODEC_ID_INT8, len));

        f32.dtype = 3;
        for (int c = KVD_CODEC_ID_FP8; c <= KVD_CODEC_ID_INT4; c++) {
                size_t cap = kvd_codec_bound(c, len);
                ck_assert_int_eq(kvd_codec_encode(c, &f32, b, len, enc, cap, &n), -EINVAL);
                ck_assert_int_eq(kvd_codec_encode(c, &f16_shape, b, len - 2, enc, cap, &n), -EINVAL);
                ck_assert_int_eq(kvd_codec_encode(c, NULL, b, len, enc, cap, &n), -EINVAL);
                ck_assert_int_eq(kvd_codec_encode(c, &f16_shape, b, len, enc, 100, &n), -ENOBUFS);
        }
        /* Non-finite values do not poison a group. */
        ((uint16_t *)b)[5] = 0x7e00;
        ((uint16_t *)b)[64] = 0x7c00;
        free(lossy_rt(KVD_CODEC_ID_INT8, &f16_shape, b, &n));
        free(enc);
        free(b);
}
END_TEST

/* What a tier sizes its slots by: exactly what the lossy codecs write, the
 * bound for zstd, 0 where the codec cannot take the block. */
START_TEST(block_len)
{
        const struct kvd_codec_shape f32 = { .dtype = 3, .kv_heads = 2, .head_dim = 64, .block_tokens = 16 };
        size_t len = block_bytes(&f16_shape);
        uint8_t *b = kv_block(&f16_shape), *enc = malloc(kvd_codec_bound(KVD_CODEC_ID_INT4, len));

        ck_assert_ptr_nonnull(enc);
        for (enum kvd_codec c = KVD_CODEC_ID_FP8; c <= KVD_CODEC_ID_INT4; c++) {
                size_t n;

                ck_assert_int_eq(kvd_codec_encode(c, &f16_shape, b, len, enc, kvd_codec_bound(c, len), &n), 0);
                ck_assert_uint_eq(kvd_codec_block_len(c, &f16_shape, len), n);
                ck_assert_uint_lt(n, len);
                ck_assert_uint_eq(kvd_codec_block_len(c, &f32, block_bytes(&f32)), 0);
                ck_assert_uint_eq(kvd_codec_block_len(c, &f16_shape, len - 2), 0);
        }
        ck_assert_uint_eq(kvd_codec_block_len(KVD_CODEC_ID_NONE, &f32, 1000), 1000);
        ck_assert_uint_eq(kvd_codec_block_len(KVD_CODEC_ID_ZSTD, &f16_shape, len), kvd_codec_bound(KVD_CODEC_ID_ZSTD, len));
        ck_assert_uint_eq(kvd_codec_block_len(KVD_CODEC_ID_MAX, &f16_shape, len), 0);
        free(enc);
        free(b);
}
END_TEST

static Suite *codec_suite(void)
{
        Suite *s = suite_create("codec");
        TCase *tc = tcase_create("codec");

        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, names);
        tcase_add_test(tc, lossless_any_bytes);
        tcase_add_test(tc, lossless_f16);
        tcase_add_test(tc, corrupt_input);
        tcase_add_test(tc, e4m3);
        tcase_add_test(tc, fp8_bound);
        tcase_add_test(tc, int_bounds);
        tcase_add_test(tc, lossy_refuses);
        tcase_add_test(tc, block_len);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(codec_suite)
