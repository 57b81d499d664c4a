/* SPDX-License-Identifier: MIT */
/*
 * The block index: one record per cached block, found by (namespace, key128,
 * layer) through an open-addressing hash table (linear probing, backward-
 * shift deletion, no tombstones). Records live in fixed chunks, so a
 * record's address and its 32-bit id stay valid until it is removed; ids are
 * what other structures (LRU lists, transfer batches) hold.
 *
 * Memory (issue 16: <= 64 B per block at 10^6 blocks): a record is 56 B; a
 * table slot is 4 B, the id alone, with the id's unused high bits (while ids
 * are small: 12 of them at 10^6 blocks) holding a tag from the key's hash,
 * so most probes of other keys do not load their record. The table starts
 * at 1024 slots (or the hint) and grows by a quarter at a load of 0.8 (any
 * size: the home slot is a multiply-shift of the hash, not a mask), so it
 * costs 5-6.25 B per block; record chunks and the chunk array are allocated
 * as ids are first used. kvd_index_bytes() counts what is allocated, so the
 * per-block figure is measured (docs/bench/footprint.md, docs/decisions.md).
 * Event-loop thread only: no locking.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define KVD_ID_NONE 0u

enum kvd_block_state {
        KVD_BLOCK_FREE = 0,
        KVD_BLOCK_PENDING,      /* being stored: not readable, not evictable */
        KVD_BLOCK_READY,
};

enum kvd_block_flags {
        KVD_BLOCK_DOOMED = 1u << 0,     /* delete once nothing uses it */
        KVD_BLOCK_LOADING = 1u << 1,    /* its host page is being read from SSD */
        KVD_BLOCK_WRITING = 1u << 2,    /* its SSD slot is being written */
        KVD_BLOCK_IN_HLRU = 1u << 3,    /* on its host class's LRU list */
        KVD_BLOCK_IN_SLRU = 1u << 4,    /* on its SSD class's LRU list */
        KVD_BLOCK_EVICT = 1u << 5,      /* free the host copy once written */
        KVD_BLOCK_STAGED = 1u << 6,     /* just loaded from SSD: not a host hit */
        KVD_BLOCK_NO_SSD = 1u << 7,     /* an SSD write of it failed: never demote it */
};

/* A block and the remote tier (a store shared with other machines). */
enum kvd_block_rflags {
        KVD_BLOCK_SHARED = 1u << 0,     /* a prefix-chain block: it may leave the machine */
        KVD_BLOCK_REMOTE = 1u << 1,     /* the remote tier has it (we wrote it, or it came from there) */
        KVD_BLOCK_RPUT = 1u << 2,       /* being written to the remote tier (holds a pin) */
        KVD_BLOCK_RGET = 1u << 3,       /* PENDING: being fetched from the remote tier */
};

struct kvd_bkey {
        uint64_t hi, lo;
        uint32_t ns;
        uint32_t layer;
};

/* The record's narrow fields, and what bounds them: a key outside these is
 * refused by the index (never truncated into another block's key). */
#define KVD_BLOCK_NS_BITS 12    /* namespace ids < max-namespaces <= 4096 */
#define KVD_BLOCK_LAYER_BITS 13 /* layers < KVD_NS_MAX_LAYERS (1024), with room */
#define KVD_BLOCK_PINS_MAX UINT16_MAX

/* 56 B. The host and SSD size classes are not kept: they are the
 * namespace's (kvd_ns.klass, .ssd_klass), fixed while any of its blocks
 * exist. */
struct kvd_block {
        uint64_t key_hi, key_lo;
        uint32_t ns : KVD_BLOCK_NS_BITS;
        uint32_t layer : KVD_BLOCK_LAYER_BITS;
        uint32_t state : 2;     /* enum kvd_block_state */
        uint32_t rflags : 4;    /* enum kvd_block_rflags: the shared (remote) tier */
        uint32_t synced : 1;    /* its SSD copy is on stable storage (RWF_DSYNC, or fdatasync since) */
        uint16_t pins;          /* copies to clients in flight; refused at KVD_BLOCK_PINS_MAX */
        uint8_t flags;          /* enum kvd_block_flags */
        uint8_t reads;          /* saturating: SSD and remote admission (admit-reads <= 255) */
        uint32_t loc;           /* host page, KVD_LOC_NONE if not in host */
        uint32_t ssd_loc;       /* SSD slot, KVD_LOC_NONE if not on SSD */
        /* Host LRU links (ids); the waiter list while PENDING or LOADING
         * (never on the host LRU then); the free-list link when FREE. */
        uint32_t lru_prev, lru_next;
        uint32_t ssd_prev, ssd_next; /* SSD LRU links */
        float heat;             /* attention mass + demand, decayed to heat_ms */
        uint32_t heat_ms;       /* cache clock of the last update */
};

struct kvd_index;

/* expected: initial capacity hint in blocks. */
int kvd_index_new(uint64_t expected, struct kvd_index **ret);
struct kvd_index *kvd_index_free(struct kvd_index *idx);

/* Id of the block with key k, or KVD_ID_NONE (also for a key no record can
 * hold). */
uint32_t kvd_index_find(const struct kvd_index *idx, const struct kvd_bkey *k);

/* Inserts a FREE-state record for k and returns its id (state is set by the
 * caller). -EEXIST (with *ret_id set to the existing id), -EINVAL (k's ns or
 * layer does not fit the record: see KVD_BLOCK_*_BITS; nothing changes),
 * -ENOSPC (4 Gi slots) or -ENOMEM. */
int kvd_index_insert(struct kvd_index *idx, const struct kvd_bkey *k, uint32_t *ret_id);

/* Removes block id from the table and recycles its record. */
void kvd_index_remove(struct kvd_index *idx, uint32_t id);

struct kvd_block *kvd_index_block(const struct kvd_index *idx, uint32_t id);

/* Every id in use is below this (ids start at 1): for walking all records;
 * a record with state KVD_BLOCK_FREE is not in use. */
uint32_t kvd_index_id_end(const struct kvd_index *idx);

uint64_t kvd_index_count(const struct kvd_index *idx);
uint64_t kvd_index_capacity(const struct kvd_index *idx);
/* All metadata bytes allocated: records (whole chunks), the chunk array, the
 * table and the index struct itself (not the allocator's own overhead). */
uint64_t kvd_index_bytes(const struct kvd_index *idx);
/* kvd_index_bytes() / live blocks, rounded up; 0 when the index is empty. */
uint32_t kvd_index_bytes_per_block(const struct kvd_index *idx);
