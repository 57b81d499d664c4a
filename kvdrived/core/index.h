/* SPDX-License-Identifier: MIT */
/*
 * The block index: one record per cached block, found by (namespace, key128,
 * layer) through an open-addressing hash table (linear probing, backward-
 * shift deletion, no tombstones). Records live in fixed chunks, so a
 * record's address and its 32-bit id stay valid until it is removed; ids are
 * what other structures (LRU lists, transfer batches) hold.
 *
 * Memory: the table starts at 1024 slots (or the hint) and doubles at a load
 * of 0.75; record chunks and the chunk array are allocated as ids are first
 * used. kvd_index_bytes() counts what is allocated, so the per-block figure
 * is measured: sizeof(struct kvd_block), plus 8-21 B of table, plus the last
 * chunk's unused records.
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

struct kvd_block {
        uint64_t key_hi, key_lo;
        uint16_t ns;
        uint16_t pins;          /* copies to clients in flight */
        uint32_t layer;
        uint32_t loc;           /* host page, KVD_LOC_NONE if not in host */
        uint32_t ssd_loc;       /* SSD slot, KVD_LOC_NONE if not on SSD */
        /* Host LRU links (ids); the waiter list while PENDING or LOADING
         * (never on the host LRU then); the free-list link when FREE. */
        uint32_t lru_prev, lru_next;
        uint32_t ssd_prev, ssd_next; /* SSD LRU links */
        uint8_t state;
        uint8_t flags;
        uint8_t klass;          /* host size class */
        uint8_t ssd_klass;
        uint8_t reads;          /* saturating: SSD admission */
        uint8_t synced;         /* its SSD copy is on stable storage (RWF_DSYNC, or fdatasync since) */
        uint8_t rflags;         /* enum kvd_block_rflags: the shared (remote) tier */
        uint8_t pad;
        float heat;             /* attention mass + demand, decayed to heat_ms */
        uint32_t heat_ms;       /* cache clock of the last update */
};

struct kvd_index;

/* expected: initial capacity hint in blocks. */
int kvd_index_new(uint64_t expected, struct kvd_index **ret);
struct kvd_index *kvd_index_free(struct kvd_index *idx);

/* Id of the block with key k, or KVD_ID_NONE. */
uint32_t kvd_index_find(const struct kvd_index *idx, const struct kvd_bkey *k);

/* Inserts a FREE-state record for k and returns its id (state is set by the
 * caller). -EEXIST (with *ret_id set to the existing id) or -ENOMEM. */
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
