/* SPDX-License-Identifier: MIT */
/*
 * On-disk format of the SSD tier (version 1). Little-endian, as the hosts
 * we run on. Each SSD file is a run of extents; each extent starts with a
 * 4 KiB extent header and holds equal slots; each slot is a 4 KiB slot
 * header followed by the block's payload, padded to 4 KiB. The disk alone
 * says what it holds: a restarted daemon rebuilds its index from it.
 *
 * A slot is valid only if its header's magic, version and header crc are
 * right, its extent generation equals its extent header's (so slots of an
 * extent's earlier life, at other slot sizes, never resurface), and — when
 * read — its payload matches payload_crc. Anything else is a miss.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVD_SLOT_HDR_BYTES   4096u
#define KVD_EXTENT_HDR_BYTES 4096u
#define KVD_SLOT_MAGIC       0x534b564bu /* "KVKS" */
#define KVD_EXTENT_MAGIC     0x454b564bu /* "KVKE" */
#define KVD_FORMAT_VERSION   2u /* of extent headers */
/* Of slot headers: 2 names its namespace's owner, 3 its fingerprint too
 * (slots of an older version are not recovered: the cache forgets them). */
#define KVD_SLOT_VERSION     3u
#define KVD_CODEC_NONE       0u /* enum kvd_codec (util/codec.h): the payload's encoding */
#define KVD_FINGERPRINT_MAX  64u
/* kvd_slot_header.flags */
#define KVD_SLOT_SHARED      1u /* a prefix-chain block: it may be shared through the remote tier */

struct kvd_extent_header {
        uint32_t magic;
        uint16_t version;
        uint16_t reserved;
        uint32_t slot_bytes;            /* slot header + padded payload */
        uint32_t reserved2;
        uint64_t generation;            /* bumped each time the extent is (re)assigned */
        uint32_t crc;                   /* crc32c of the bytes before it */
};

struct kvd_slot_header {
        uint32_t magic;
        uint16_t version;
        uint16_t codec;                 /* enum kvd_codec: how the payload is encoded */
        uint64_t generation;            /* global write sequence: the newest copy wins */
        uint64_t extent_generation;
        uint64_t key_hi, key_lo;
        uint32_t layer;
        uint32_t payload_len;           /* bytes of payload (the block, encoded by codec) */
        uint32_t payload_crc;           /* crc32c of the payload as stored */
        /* The namespace by identity, not by id: ids are per daemon run. */
        uint32_t ns_layers, ns_kv_heads, ns_head_dim, ns_dtype, ns_block_tokens;
        char ns_name[128];
        uint32_t ns_owner;              /* uid owning the namespace (v2) */
        uint8_t ns_fingerprint_len;     /* v3: what computed the bytes (RegisterNamespace.fingerprint) */
        uint8_t flags;                  /* KVD_SLOT_* */
        uint8_t reserved3[2];
        uint8_t ns_fingerprint[KVD_FINGERPRINT_MAX];
        uint32_t header_crc;            /* crc32c of the bytes before it */
};

_Static_assert(sizeof(struct kvd_slot_header) <= KVD_SLOT_HDR_BYTES, "slot header fits its page");

/*
 * The format's pure checks (tiers/slot.c): no I/O, no state, so that the
 * SSD tier, its recovery and the fuzzers (tests/fuzz/) share one version of
 * them. Every check reads only the struct it is given.
 */
/* crc32c (Castagnoli, ISA-L), seeded with ~0 as the format uses it. */
uint32_t kvd_slot_crc(const void *p, size_t n);

/* Sets h->crc / h->header_crc over the bytes before it. */
void kvd_extent_header_seal(struct kvd_extent_header *h);
void kvd_slot_header_seal(struct kvd_slot_header *h);

/* Whether h is an extent header of this format (magic, version) with a good
 * crc. Its slot size is the allocator's to judge (tiers/ssd.c). */
bool kvd_extent_header_valid(const struct kvd_extent_header *h);

/* Whether h is a slot header of this format with a good header crc,
 * written in the extent's current life (extent_gen, from its header). */
bool kvd_slot_header_valid(const struct kvd_slot_header *h, uint64_t extent_gen);

/* Whether h carries the slot magic but a bad header crc: a torn or damaged
 * header (counted as a crc failure), unlike a slot never written or wiped. */
bool kvd_slot_header_torn(const struct kvd_slot_header *h);

/* Recovery's check of one slot of an extent of slot_bytes slots: valid (as
 * above) and its payload fits the slot after the header. */
bool kvd_slot_header_recoverable(const struct kvd_slot_header *h, uint64_t extent_gen, uint32_t slot_bytes);

/* A read's check: the slot is valid, uncompressed, holds block (key_hi,
 * key_lo, layer) of len bytes, and payload (len bytes) matches its crc. */
bool kvd_slot_matches(const struct kvd_slot_header *h, uint64_t extent_gen, uint64_t key_hi, uint64_t key_lo,
                      uint32_t layer, const void *payload, uint32_t len);

/*
 * Encoded payloads (codec != none). A codec's block geometry is the
 * namespace's, as the header names it (ns_dtype, ns_kv_heads, ns_head_dim,
 * ns_block_tokens): kvd_slot_codec_shape().
 */
struct kvd_codec_shape;
void kvd_slot_codec_shape(const struct kvd_slot_header *h, struct kvd_codec_shape *ret);

/* The payload bytes a block of raw bytes of h's namespace takes stored
 * with codec (at most, for a lossless codec's); 0 if the codec cannot take
 * it (it is then stored raw). */
uint32_t kvd_slot_stored_len(unsigned codec, const struct kvd_slot_header *h, uint32_t raw);

/* Whether h's payload_len is one the codec it names can have written for a
 * block of raw bytes of its namespace (none: exactly raw). */
bool kvd_slot_payload_len_ok(const struct kvd_slot_header *h, uint32_t raw);

/* The read's check for any codec: as kvd_slot_matches(), but the payload
 * is payload_len bytes (at most cap: the buffer), encoded by a codec this
 * build knows, of a length that codec writes for raw bytes. */
bool kvd_slot_matches_any(const struct kvd_slot_header *h, uint64_t extent_gen, uint64_t key_hi, uint64_t key_lo,
                          uint32_t layer, const void *payload, uint32_t cap, uint32_t raw);
