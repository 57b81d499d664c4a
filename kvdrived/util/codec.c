/* SPDX-License-Identifier: MIT */
#include "codec.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "kernels.h"

#define ZSTD_LEVEL 1
#define FLAG_STORED 0x01u

/* enum kvc_dtype, without pulling the client header into the daemon's util. */
enum { DT_F16 = 1, DT_BF16 = 2, DT_F32 = 3, DT_FP8 = 4 };

static const char *const names[KVD_CODEC_ID_MAX] = {
        [KVD_CODEC_ID_NONE] = "none",
        [KVD_CODEC_ID_ZSTD] = "zstd",
        [KVD_CODEC_ID_FP8] = "fp8",
        [KVD_CODEC_ID_INT8] = "int8",
        [KVD_CODEC_ID_INT4] = "int4",
};

/* Header: u8 codec, u8 version, u8 dtype, u8 flags, u32 reserved (0),
 * u64 raw length; little-endian. */
struct hdr {
        uint8_t codec, version, dtype, flags;
        uint64_t raw;
};

static void hdr_put(uint8_t *p, const struct hdr *h)
{
        memset(p, 0, KVD_CODEC_HEADER_BYTES);
        p[0] = h->codec;
        p[1] = h->version;
        p[2] = h->dtype;
        p[3] = h->flags;
        for (int i = 0; i < 8; i++)
                p[8 + i] = (uint8_t)(h->raw >> (8 * i));
}

static int hdr_get(const uint8_t *p, size_t len, enum kvd_codec c, struct hdr *h)
{
        if (len < KVD_CODEC_HEADER_BYTES)
                return -EBADMSG;
        h->codec = p[0];
        h->version = p[1];
        h->dtype = p[2];
        h->flags = p[3];
        h->raw = 0;
        for (int i = 0; i < 8; i++)
                h->raw |= (uint64_t)p[8 + i] << (8 * i);
        if (h->codec != c || h->version != KVD_CODEC_VERSION ||
            p[4] || p[5] || p[6] || p[7] || (h->flags & ~FLAG_STORED))
                return -EBADMSG;
        return 0;
}

int kvd_codec_by_name(const char *name, enum kvd_codec *ret)
{
        if (!name)
                return -EINVAL;
        for (int i = 0; i < KVD_CODEC_ID_MAX; i++) {
                if (!strcmp(name, names[i])) {
                        *ret = (enum kvd_codec)i;
                        return 0;
                }
        }
        return -EINVAL;
}

const char *kvd_codec_name(enum kvd_codec c)
{
        return (unsigned)c < KVD_CODEC_ID_MAX ? names[c] : NULL;
}

int kvd_codec_lossless(enum kvd_codec c)
{
        return c == KVD_CODEC_ID_NONE || c == KVD_CODEC_ID_ZSTD;
}

static size_t elem_size(uint32_t dtype)
{
        switch (dtype) {
        case DT_F16:
        case DT_BF16:
                return 2;
        case DT_F32:
                return 4;
        default:
                return 1;
        }
}

/* Elements of one plane (K or V), 0 if the shape is unusable. */
static size_t plane_elems(const struct kvd_codec_shape *s)
{
        if (!s || !s->kv_heads || !s->head_dim || !s->block_tokens ||
            s->kv_heads > 4096 || s->head_dim > 65536 || s->block_tokens > 1u << 20)
                return 0;
        return (size_t)s->kv_heads * s->head_dim * s->block_tokens;
}

static size_t quant_groups(const struct kvd_codec_shape *s)
{
        /* K: per head and channel; V: per head and token. */
        return (size_t)s->kv_heads * s->head_dim + (size_t)s->kv_heads * s->block_tokens;
}

static size_t quant_bytes(enum kvd_codec c, size_t n)
{
        return c == KVD_CODEC_ID_INT4 ? (n + 1) / 2 : n;
}

/* Encoded size of a lossy codec for shape s (raw elements 2 * plane). */
static size_t lossy_size(enum kvd_codec c, const struct kvd_codec_shape *s)
{
        size_t n = plane_elems(s);

        if (c == KVD_CODEC_ID_FP8)
                return KVD_CODEC_HEADER_BYTES + 2 * n;
        return KVD_CODEC_HEADER_BYTES + quant_groups(s) * 2 * sizeof(float) +
               2 * quant_bytes(c, n);
}

size_t kvd_codec_bound(enum kvd_codec c, size_t len)
{
        switch (c) {
        case KVD_CODEC_ID_NONE:
                return len;
        case KVD_CODEC_ID_ZSTD:
                /* The stored fallback caps it at the raw length. */
                return KVD_CODEC_HEADER_BYTES + len;
        case KVD_CODEC_ID_FP8:
        case KVD_CODEC_ID_INT8:
        case KVD_CODEC_ID_INT4:
                /* Never more than the raw f16 block plus the header. */
                return KVD_CODEC_HEADER_BYTES + len + len / 2 + 64;
        default:
                return 0;
        }
}

static int lossy_check(enum kvd_codec c, const struct kvd_codec_shape *s, size_t raw);

size_t kvd_codec_block_len(enum kvd_codec c, const struct kvd_codec_shape *shape, size_t len)
{
        switch (c) {
        case KVD_CODEC_ID_NONE:
        case KVD_CODEC_ID_ZSTD:
                return kvd_codec_bound(c, len);
        case KVD_CODEC_ID_FP8:
        case KVD_CODEC_ID_INT8:
        case KVD_CODEC_ID_INT4:
                return lossy_check(c, shape, len) == 0 ? lossy_size(c, shape) : 0;
        default:
                return 0;
        }
}

/* ---- zstd over byte planes ---- */

/* Byte j of element i goes to plane j; a tail of len % es bytes stays last. */
static void shuffle(const uint8_t *src, size_t len, size_t es, uint8_t *dst)
{
        size_t n = len / es;

        for (size_t j = 0; j < es; j++) {
                uint8_t *p = dst + j * n;
                for (size_t i = 0; i < n; i++)
                        p[i] = src[i * es + j];
        }
        memcpy(dst + n * es, src + n * es, len - n * es);
}

static void unshuffle(const uint8_t *src, size_t len, size_t es, uint8_t *dst)
{
        size_t n = len / es;

        for (size_t j = 0; j < es; j++) {
                const uint8_t *p = src + j * n;
                for (size_t i = 0; i < n; i++)
                        dst[i * es + j] = p[i];
        }
        memcpy(dst + n * es, src + n * es, len - n * es);
}

static int zstd_encode(const struct kvd_codec_shape *shape, const uint8_t *src, size_t len,
                       uint8_t *dst, size_t cap, size_t *ret_len)
{
        size_t es = shape ? elem_size(shape->dtype) : 1;
        struct hdr h = { KVD_CODEC_ID_ZSTD, KVD_CODEC_VERSION, shape ? (uint8_t)shape->dtype : 0, 0, len };
        uint8_t *tmp = NULL;
        size_t z;
        int r = 0;

        if (cap < KVD_CODEC_HEADER_BYTES)
                return -ENOBUFS;
        if (es > 1) {
                tmp = malloc(len ? len : 1);
                if (!tmp)
                        return -ENOMEM;
                shuffle(src, len, es, tmp);
        }
        z = ZSTD_compress(dst + KVD_CODEC_HEADER_BYTES, cap - KVD_CODEC_HEADER_BYTES,
                          tmp ? tmp : src, len, ZSTD_LEVEL);
        if (ZSTD_isError(z) || z >= len) {
                /* Incompressible (or cap short for zstd's frame): store raw. */
                if (cap - KVD_CODEC_HEADER_BYTES < len) {
                        r = -ENOBUFS;
                        goto out;
                }
                memcpy(dst + KVD_CODEC_HEADER_BYTES, src, len);
                h.flags = FLAG_STORED;
                z = len;
        }
        hdr_put(dst, &h);
        *ret_len = KVD_CODEC_HEADER_BYTES + z;
out:
        free(tmp);
        return r;
}

static int zstd_decode(const struct kvd_codec_shape *shape, const uint8_t *src, size_t len,
                       uint8_t *dst, size_t cap, size_t *ret_len)
{
        struct hdr h;
        const uint8_t *body = src + KVD_CODEC_HEADER_BYTES;
        size_t blen, es, z;
        uint8_t *tmp = NULL;
        int r;

        r = hdr_get(src, len, KVD_CODEC_ID_ZSTD, &h);
        if (r < 0)
                return r;
        blen = len - KVD_CODEC_HEADER_BYTES;
        /* The header's length must agree with the body before cap counts. */
        if (h.flags & FLAG_STORED) {
                if (blen != h.raw)
                        return -EBADMSG;
                if (h.raw > cap)
                        return -ENOBUFS;
                memcpy(dst, body, blen);
                *ret_len = blen;
                return 0;
        }
        /* The dtype in the header decides the planes (it was the writer's). */
        es = elem_size(h.dtype);
        if (shape && shape->dtype && h.dtype != shape->dtype)
                return -EBADMSG;
        if (ZSTD_getFrameContentSize(body, blen) != h.raw)
                return -EBADMSG;
        if (h.raw > cap)
                return -ENOBUFS;
        if (es > 1) {
                tmp = malloc(h.raw ? h.raw : 1);
                if (!tmp)
                        return -ENOMEM;
        }
        z = ZSTD_decompress(tmp ? tmp : dst, h.raw, body, blen);
        if (ZSTD_isError(z) || z != h.raw) {
                r = -EBADMSG;
                goto out;
        }
        if (tmp)
                unshuffle(tmp, h.raw, es, dst);
        *ret_len = h.raw;
out:
        free(tmp);
        return r;
}

/* ---- e4m3 ---- */

uint8_t kvd_f32_to_e4m3(float f)
{
        uint8_t sign = signbit(f) ? 0x80 : 0;
        float a = fabsf(f), q;
        int e;

        if (isnan(f))
                return sign | 0x7f;
        if (a >= 448.0f)
                return sign | 0x7e;     /* saturate, Inf included */
        if (a < 0x1p-6f) {
                /* Subnormals: steps of 2^-9; 8 steps is the smallest normal. */
                q = nearbyintf(a * 512.0f);
                return sign | (uint8_t)q;
        }
        frexpf(a, &e);
        e -= 1;                         /* a = 1.m * 2^e, e in [-6, 8] */
        q = nearbyintf(ldexpf(a, 3 - e)); /* in [8, 16] */
        if (q >= 16.0f) {
                q = 8.0f;
                e++;
        }
        if (e > 8 || (e == 8 && q > 14.0f))
                return sign | 0x7e;
        return sign | (uint8_t)((e + 7) << 3) | (uint8_t)((int)q - 8);
}

float kvd_e4m3_to_f32(uint8_t b)
{
        int e = (b >> 3) & 0xf, m = b & 7;
        float v;

        if (e == 15 && m == 7)
                v = NAN;
        else if (e == 0)
                v = ldexpf((float)m, -9);
        else
                v = ldexpf(1.0f + (float)m / 8.0f, e - 7);
        return (b & 0x80) ? -v : v;
}

/* Conversion tables, built once (pthread_once) and read-only after: f16 ->
 * f32, f16 and bf16 -> e4m3, e4m3 -> f16 and bf16. 576 KiB. */
static struct {
        float f16[65536];
        uint8_t e4m3_of[2][65536];
        uint16_t from_e4m3[2][256];
} *tab;
static pthread_once_t tab_once = PTHREAD_ONCE_INIT;

static void tab_init(void)
{
        tab = malloc(sizeof(*tab));
        if (!tab)
                return;
        for (uint32_t i = 0; i < 65536; i++) {
                tab->f16[i] = kvk_f16_to_f32((uint16_t)i);
                tab->e4m3_of[0][i] = kvd_f32_to_e4m3(tab->f16[i]);
                tab->e4m3_of[1][i] = kvd_f32_to_e4m3(kvk_bf16_to_f32((uint16_t)i));
        }
        for (uint32_t i = 0; i < 256; i++) {
                tab->from_e4m3[0][i] = kvk_f32_to_f16(kvd_e4m3_to_f32((uint8_t)i));
                tab->from_e4m3[1][i] = kvk_f32_to_bf16(kvd_e4m3_to_f32((uint8_t)i));
        }
}

static int tables(void)
{
        pthread_once(&tab_once, tab_init);
        return tab ? 0 : -ENOMEM;
}

static float load(uint32_t dtype, const uint8_t *p, size_t i)
{
        uint16_t h;

        memcpy(&h, p + 2 * i, 2);
        return dtype == DT_F16 ? tab->f16[h] : kvk_bf16_to_f32(h);
}

static void store(uint32_t dtype, uint8_t *p, size_t i, float f)
{
        uint16_t h = dtype == DT_F16 ? kvk_f32_to_f16(f) : kvk_f32_to_bf16(f);

        memcpy(p + 2 * i, &h, 2);
}

static void fp8_encode(uint32_t dtype, const uint8_t *src, size_t n, uint8_t *dst)
{
        const uint8_t *t = tab->e4m3_of[dtype == DT_BF16];

        for (size_t i = 0; i < n; i++) {
                uint16_t h;
                memcpy(&h, src + 2 * i, 2);
                dst[i] = t[h];
        }
}

static void fp8_decode(uint32_t dtype, const uint8_t *src, size_t n, uint8_t *dst)
{
        const uint16_t *t = tab->from_e4m3[dtype == DT_BF16];

        for (size_t i = 0; i < n; i++)
                memcpy(dst + 2 * i, &t[src[i]], 2);
}

/* ---- int8 / int4, KIVI-style ---- */

/* Group g of a plane: K groups are (head, channel) over tokens (stride
 * head_dim), V groups are (head, token) over channels (stride 1). */
struct group_iter {
        size_t base, stride, count;
};

static struct group_iter group_of(const struct kvd_codec_shape *s, int is_v, size_t g)
{
        size_t T = s->block_tokens, D = s->head_dim;

        if (!is_v) {
                size_t h = g / D, d = g % D;
                return (struct group_iter){ h * T * D + d, D, T };
        }
        return (struct group_iter){ g * D, 1, D };
}

static void put_q(enum kvd_codec c, uint8_t *q, size_t i, unsigned v)
{
        if (c == KVD_CODEC_ID_INT8) {
                q[i] = (uint8_t)v;
                return;
        }
        if (i & 1)
                q[i / 2] = (uint8_t)((q[i / 2] & 0x0f) | (v << 4));
        else
                q[i / 2] = (uint8_t)((q[i / 2] & 0xf0) | v);
}

static unsigned get_q(enum kvd_codec c, const uint8_t *q, size_t i)
{
        if (c == KVD_CODEC_ID_INT8)
                return q[i];
        return (i & 1) ? q[i / 2] >> 4 : q[i / 2] & 0x0f;
}

static void quant_plane(enum kvd_codec c, const struct kvd_codec_shape *s, int is_v,
                        const uint8_t *src, float *params, uint8_t *q)
{
        size_t groups = is_v ? (size_t)s->kv_heads * s->block_tokens : (size_t)s->kv_heads * s->head_dim;
        float levels = c == KVD_CODEC_ID_INT8 ? 255.0f : 15.0f;

        for (size_t g = 0; g < groups; g++) {
                struct group_iter it = group_of(s, is_v, g);
                float lo = INFINITY, hi = -INFINITY, scale, inv;

                for (size_t k = 0; k < it.count; k++) {
                        float x = load(s->dtype, src, it.base + k * it.stride);
                        if (isfinite(x)) {
                                lo = fminf(lo, x);
                                hi = fmaxf(hi, x);
                        }
                }
                if (!(lo <= hi))
                        lo = hi = 0.0f;
                scale = (hi - lo) / levels;
                if (!isfinite(scale))
                        scale = 0.0f;   /* range overflows f32: keep the minimum only */
                params[2 * g] = scale;
                params[2 * g + 1] = lo;
                inv = scale > 0.0f ? 1.0f / scale : 0.0f;
                for (size_t k = 0; k < it.count; k++) {
                        size_t i = it.base + k * it.stride;
                        float x = load(s->dtype, src, i), v = 0.0f;
                        if (isfinite(x) && scale > 0.0f)
                                v = fminf(fmaxf(nearbyintf((x - lo) * inv), 0.0f), levels);
                        put_q(c, q, i, (unsigned)v);
                }
        }
}

static int dequant_plane(enum kvd_codec c, const struct kvd_codec_shape *s, int is_v,
                         const float *params, const uint8_t *q, uint8_t *dst)
{
        size_t groups = is_v ? (size_t)s->kv_heads * s->block_tokens : (size_t)s->kv_heads * s->head_dim;

        for (size_t g = 0; g < groups; g++) {
                struct group_iter it = group_of(s, is_v, g);
                float scale = params[2 * g], lo = params[2 * g + 1];

                if (!isfinite(scale) || !isfinite(lo) || scale < 0.0f)
                        return -EBADMSG;
                for (size_t k = 0; k < it.count; k++) {
                        size_t i = it.base + k * it.stride;
                        store(s->dtype, dst, i, lo + (float)get_q(c, q, i) * scale);
                }
        }
        return 0;
}

static int lossy_check(enum kvd_codec c, const struct kvd_codec_shape *s, size_t raw)
{
        size_t n = plane_elems(s);

        if (!n || (s->dtype != DT_F16 && s->dtype != DT_BF16) || raw != 2 * n * 2)
                return -EINVAL;
        (void)c;
        return 0;
}

static int lossy_encode(enum kvd_codec c, const struct kvd_codec_shape *s, const uint8_t *src,
                        size_t len, uint8_t *dst, size_t cap, size_t *ret_len)
{
        struct hdr h = { (uint8_t)c, KVD_CODEC_VERSION, (uint8_t)s->dtype, 0, len };
        size_t n = plane_elems(s), out = lossy_size(c, s);
        uint8_t *body = dst + KVD_CODEC_HEADER_BYTES;
        int r = lossy_check(c, s, len);

        if (r == 0)
                r = tables();
        if (r < 0)
                return r;
        if (cap < out)
                return -ENOBUFS;
        if (c == KVD_CODEC_ID_FP8) {
                fp8_encode(s->dtype, src, 2 * n, body);
        } else {
                size_t kg = (size_t)s->kv_heads * s->head_dim;
                float *params = malloc(quant_groups(s) * 2 * sizeof(float));
                uint8_t *q = body + quant_groups(s) * 2 * sizeof(float);

                if (!params)
                        return -ENOMEM;
                memset(q, 0, 2 * quant_bytes(c, n));
                quant_plane(c, s, 0, src, params, q);
                quant_plane(c, s, 1, src + 2 * n, params + 2 * kg, q + quant_bytes(c, n));
                memcpy(body, params, quant_groups(s) * 2 * sizeof(float));
                free(params);
        }
        hdr_put(dst, &h);
        *ret_len = out;
        return 0;
}

static int lossy_decode(enum kvd_codec c, const struct kvd_codec_shape *s, const uint8_t *src,
                        size_t len, uint8_t *dst, size_t cap, size_t *ret_len)
{
        struct hdr h;
        size_t n = plane_elems(s);
        const uint8_t *body = src + KVD_CODEC_HEADER_BYTES;
        int r;

        r = hdr_get(src, len, c, &h);
        if (r == 0)
                r = tables();
        if (r < 0)
                return r;
        if (h.flags || h.dtype != s->dtype || lossy_check(c, s, h.raw) < 0 ||
            len != lossy_size(c, s))
                return -EBADMSG;
        if (cap < h.raw)
                return -ENOBUFS;
        if (c == KVD_CODEC_ID_FP8) {
                fp8_decode(s->dtype, body, 2 * n, dst);
        } else {
                size_t kg = (size_t)s->kv_heads * s->head_dim, pb = quant_groups(s) * 2 * sizeof(float);
                float *params = malloc(pb);
                const uint8_t *q = body + pb;

                if (!params)
                        return -ENOMEM;
                memcpy(params, body, pb);       /* body is not float-aligned */
                r = dequant_plane(c, s, 0, params, q, dst);
                if (r == 0)
                        r = dequant_plane(c, s, 1, params + 2 * kg, q + quant_bytes(c, n), dst + 2 * n);
                free(params);
                if (r < 0)
                        return r;
        }
        *ret_len = h.raw;
        return 0;
}

int kvd_codec_encode(enum kvd_codec c, const struct kvd_codec_shape *shape,
                     const void *src, size_t len, void *dst, size_t cap, size_t *ret_len)
{
        switch (c) {
        case KVD_CODEC_ID_NONE:
                if (cap < len)
                        return -ENOBUFS;
                memcpy(dst, src, len);
                *ret_len = len;
                return 0;
        case KVD_CODEC_ID_ZSTD:
                return zstd_encode(shape, src, len, dst, cap, ret_len);
        case KVD_CODEC_ID_FP8:
        case KVD_CODEC_ID_INT8:
        case KVD_CODEC_ID_INT4:
                if (!shape)
                        return -EINVAL;
                return lossy_encode(c, shape, src, len, dst, cap, ret_len);
        default:
                return -EINVAL;
        }
}

int kvd_codec_decode(enum kvd_codec c, const struct kvd_codec_shape *shape,
                     const void *src, size_t len, void *dst, size_t cap, size_t *ret_len)
{
        switch (c) {
        case KVD_CODEC_ID_NONE:
                if (cap < len)
                        return -ENOBUFS;
                memcpy(dst, src, len);
                *ret_len = len;
                return 0;
        case KVD_CODEC_ID_ZSTD:
                return zstd_decode(shape, src, len, dst, cap, ret_len);
        case KVD_CODEC_ID_FP8:
        case KVD_CODEC_ID_INT8:
        case KVD_CODEC_ID_INT4:
                if (!shape)
                        return -EBADMSG;
                return lossy_decode(c, shape, src, len, dst, cap, ret_len);
        default:
                return -EBADMSG;
        }
}

int kvd_codec_raw_len(enum kvd_codec c, const void *src, size_t len, size_t *ret_raw)
{
        struct hdr h;
        int r;

        if (c == KVD_CODEC_ID_NONE) {
                *ret_raw = len;
                return 0;
        }
        r = hdr_get(src, len, c, &h);
        if (r < 0)
                return r;
        *ret_raw = h.raw;
        return 0;
}
