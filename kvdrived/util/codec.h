/* SPDX-License-Identifier: MIT */
/*
 * Compression codecs for the cold tiers (SSD, remote).
 *
 * A codec turns one block (libkvclient's layout: K then V, each
 * [kv_heads][block_tokens][head_dim] of dtype) into an encoded buffer and
 * back. Codec ids are on-disk values (the slot header's codec field): never
 * renumber them.
 *
 *  - none: the raw bytes, no header (what every slot holds today).
 *  - zstd: lossless. The elements' bytes are split into byte planes (all
 *    high bytes, then all low bytes, for 2-byte dtypes), then zstd level 1.
 *    Any input (any length, any bytes) decodes bit-exact; an input zstd
 *    cannot shrink is stored shuffled-free as is.
 *  - fp8: lossy, f16/bf16 -> e4m3 (round to nearest even, saturating at
 *    +-448; NaN stays NaN; +-Inf becomes +-448). 2x.
 *  - int8, int4: lossy, asymmetric quantisation as in KIVI: K per channel
 *    (one scale and minimum per head and channel, across the block's
 *    tokens), V per token (per head and token, across the channels). The
 *    scales and minima are f32 in the encoded buffer. Non-finite inputs
 *    decode as the group's minimum.
 *
 * Every encoded buffer but none's starts with a 16-byte header (codec id,
 * version, dtype, flags, raw length), so decode needs only the shape to
 * check the buffer against. Library code: no logging, no global state.
 */
#ifndef KVD_CODEC_H
#define KVD_CODEC_H

#include <stddef.h>
#include <stdint.h>

enum kvd_codec {
        KVD_CODEC_ID_NONE = 0,     /* == KVD_CODEC_NONE in tiers/slot.h */
        KVD_CODEC_ID_ZSTD = 1,
        KVD_CODEC_ID_FP8 = 2,
        KVD_CODEC_ID_INT8 = 3,
        KVD_CODEC_ID_INT4 = 4,
        KVD_CODEC_ID_MAX,
};

#define KVD_CODEC_HEADER_BYTES 16u
#define KVD_CODEC_VERSION 1u

/* The block's geometry; dtype is enum kvc_dtype (1 f16, 2 bf16, 3 f32, 4 fp8). */
struct kvd_codec_shape {
        uint32_t dtype;
        uint32_t kv_heads;
        uint32_t head_dim;
        uint32_t block_tokens;
};

/* 0 and *ret the codec called name ("none", "zstd", "fp8", "int8", "int4"),
 * -EINVAL if there is none of that name (ret untouched). */
int kvd_codec_by_name(const char *name, enum kvd_codec *ret);

/* The codec's name, NULL for an unknown id. */
const char *kvd_codec_name(enum kvd_codec c);

/* true if decode(encode(x)) == x for every x. */
int kvd_codec_lossless(enum kvd_codec c);

/* The most bytes encode may write for len input bytes; 0 for an unknown codec. */
size_t kvd_codec_bound(enum kvd_codec c, size_t len);

/* The most bytes encode writes for a block of shape (len raw bytes), as a
 * tier sizes its space for it: exactly what the lossy codecs write (their
 * size is fixed by the shape), the bound for zstd, len for none; 0 if c
 * cannot take the block (a lossy codec and a dtype other than f16/bf16, or
 * len not the block's bytes). */
size_t kvd_codec_block_len(enum kvd_codec c, const struct kvd_codec_shape *shape, size_t len);

/*
 * Encodes len bytes at src into dst (cap bytes). Returns 0 and *ret_len,
 * -EINVAL for an unknown codec or a shape the codec cannot take (lossy
 * codecs need dtype f16 or bf16 and len == the block bytes of shape),
 * -ENOBUFS if cap is short (cap >= kvd_codec_bound() always suffices),
 * -ENOMEM. Deterministic: the same input gives the same bytes.
 */
int kvd_codec_encode(enum kvd_codec c, const struct kvd_codec_shape *shape,
                     const void *src, size_t len, void *dst, size_t cap, size_t *ret_len);

/*
 * Raw length recorded in an encoded buffer: 0 and *ret_raw, -EBADMSG if the
 * header is not one of c's. For none, the raw length is len.
 */
int kvd_codec_raw_len(enum kvd_codec c, const void *src, size_t len, size_t *ret_raw);

/*
 * Decodes len encoded bytes at src into dst (cap bytes). Returns 0 and
 * *ret_len (the raw length), -EBADMSG for a corrupt or truncated buffer or
 * one that does not match c and shape, -ENOBUFS if cap is short, -ENOMEM.
 * Never reads outside src or writes outside dst.
 */
int kvd_codec_decode(enum kvd_codec c, const struct kvd_codec_shape *shape,
                     const void *src, size_t len, void *dst, size_t cap, size_t *ret_len);

/* e4m3 conversions (exposed for the tests and the bench). */
uint8_t kvd_f32_to_e4m3(float f);
float kvd_e4m3_to_f32(uint8_t b);

#endif
