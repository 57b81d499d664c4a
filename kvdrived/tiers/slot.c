/* SPDX-License-Identifier: MIT */
#include "slot.h"

#include <isa-l/crc.h>

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
        return kvd_slot_header_valid(h, extent_gen) && h->codec == KVD_CODEC_NONE && h->key_hi == key_hi &&
               h->key_lo == key_lo && h->layer == layer && h->payload_len == len &&
               h->payload_crc == kvd_slot_crc(payload, len);
}
