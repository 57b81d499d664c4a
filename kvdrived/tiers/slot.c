/* SPDX-License-Identifier: MIT */
#include "slot.h"

#include <isa-l/crc.h>

#include "codec.h"

uint32_t kvd_slot_crc(const void *p, size_t n)
{
        return crc32_iscsi((unsigned char *)p, (int)n, ~0u);
}

void kvd_extent_header_seal(struct kvd_extent_header *h)
{
        h->crc = kvd_slot_crc(h, offsetof(struct kvd_extent_header, crc));
}

void kvd_slot_header_seal(struct kvd_slot_header *h)
{
        h->header_crc = kvd_slot_crc(h, offsetof(struct kvd_slot_header, header_crc));
}

bool kvd_extent_header_valid(const struct kvd_extent_header *h)
{
        return h->magic == KVD_EXTENT_MAGIC && h->version == KVD_FORMAT_VERSION &&
               h->crc == kvd_slot_crc(h, offsetof(struct kvd_extent_header, crc));
}

static bool header_crc_ok(const struct kvd_slot_header *h)
{
        return h->header_crc == kvd_slot_crc(h, offsetof(struct kvd_slot_header, header_crc));
}

bool kvd_slot_header_valid(const struct kvd_slot_header *h, uint64_t extent_gen)
{
        return h->magic == KVD_SLOT_MAGIC && h->version == KVD_SLOT_VERSION && header_crc_ok(h) &&
               h->extent_generation == extent_gen;
}

bool kvd_slot_header_torn(const struct kvd_slot_header *h)
{
        return h->magic == KVD_SLOT_MAGIC && !header_crc_ok(h);
}

bool kvd_slot_header_recoverable(const struct kvd_slot_header *h, uint64_t extent_gen, uint32_t slot_bytes)
{
        /* In 64 bits: a payload_len near 4 GiB must not wrap to fit. */
        return kvd_slot_header_valid(h, extent_gen) &&
               (uint64_t)h->payload_len + KVD_SLOT_HDR_BYTES <= slot_bytes;
}

bool kvd_slot_matches(const struct kvd_slot_header *h, uint64_t extent_gen, uint64_t key_hi, uint64_t key_lo,
                      uint32_t layer, const void *payload, uint32_t len)
{
        return h->codec == KVD_CODEC_NONE && kvd_slot_matches_any(h, extent_gen, key_hi, key_lo, layer, payload, len, len);
}

void kvd_slot_codec_shape(const struct kvd_slot_header *h, struct kvd_codec_shape *ret)
{
        *ret = (struct kvd_codec_shape){ .dtype = h->ns_dtype, .kv_heads = h->ns_kv_heads,
                                         .head_dim = h->ns_head_dim, .block_tokens = h->ns_block_tokens };
}

uint32_t kvd_slot_stored_len(unsigned codec, const struct kvd_slot_header *h, uint32_t raw)
{
        struct kvd_codec_shape shape;
        size_t n;

        kvd_slot_codec_shape(h, &shape);
        n = kvd_codec_block_len((enum kvd_codec)codec, &shape, raw);
        return n <= UINT32_MAX ? (uint32_t)n : 0;
}

bool kvd_slot_payload_len_ok(const struct kvd_slot_header *h, uint32_t raw)
{
        uint32_t n = kvd_slot_stored_len(h->codec, h, raw);

        if (n == 0)
                return false;
        return kvd_codec_lossless((enum kvd_codec)h->codec) && h->codec != KVD_CODEC_NONE ? h->payload_len <= n
                                                                                          : h->payload_len == n;
}

bool kvd_slot_matches_any(const struct kvd_slot_header *h, uint64_t extent_gen, uint64_t key_hi, uint64_t key_lo,
                          uint32_t layer, const void *payload, uint32_t cap, uint32_t raw)
{
        return kvd_slot_header_valid(h, extent_gen) && h->key_hi == key_hi && h->key_lo == key_lo &&
               h->layer == layer && h->payload_len <= cap && kvd_slot_payload_len_ok(h, raw) &&
               h->payload_crc == kvd_slot_crc(payload, h->payload_len);
}
