/* SPDX-License-Identifier: MIT */
/*
 * The contract every storage tier fills (docs/decisions.md, "The tier
 * contract"). The cache reaches a tier through these ops only (in the
 * spirit of SPDK's bdev_module.h: the generic layer never calls a backend
 * by name); tiers/tiers.c makes the tiers a configuration asks for, and the
 * cache holds them in order, fastest first.
 *
 * A tier stores fixed-size blocks in "size classes" (block size rounded up
 * to 4 KiB) and hands out opaque 32-bit locations. There are two kinds:
 *  - a MEMORY tier (host DRAM) holds the bytes itself: ptr() gives a
 *    location's page, which transfer workers copy into and out of;
 *  - a STORAGE tier (SSD; a remote store) moves bytes between one of its
 *    locations and a memory tier's page, asynchronously: read(), write(),
 *    sync(); its completions come through an fd it registers with the
 *    event loop (watch()), and run their callbacks on the loop's thread.
 * An op a kind does not have is NULL. All calls happen on the event-loop
 * thread; only the bytes behind a memory location are touched by transfer
 * workers.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "prio.h"
#include "slot.h"

#define KVD_LOC_NONE UINT32_MAX

struct kvd_tier;
struct kvd_loop;

struct kvd_tier_usage {
        uint64_t capacity_bytes;
        uint64_t used_bytes;
        uint64_t blocks;
};

/* What a storage tier reports (Stats, the scheduler's link rates). */
struct kvd_tier_stats {
        uint64_t capacity_bytes, used_bytes, blocks;
        uint64_t reads, writes, read_bytes, write_bytes;
        uint64_t read_errors, write_errors, crc_failures;
        uint32_t inflight, queued;
        uint64_t busy_ns;       /* time with I/O in flight (as the loop saw it) */
        bool full;              /* it refused more space (ENOSPC) */
        bool damaged;           /* it cannot be trusted to keep what it is given */
        char condition[96];     /* "ok" or what is wrong */
};

/* An I/O's end: 0, -EBADMSG (the bytes are not the block: torn, corrupt,
 * another block's), -EIO (short), or the I/O's -errno. */
typedef void (*kvd_tier_cb)(void *ctx, int result);

/* recover()'s callback for every valid slot it finds: return true to keep
 * it (it is then claimed), false to free it. */
typedef bool (*kvd_tier_recover_fn)(void *ctx, const struct kvd_slot_header *h, uint32_t loc, int klass);

struct kvd_tier_ops {
        const char *name;

        /* ---- every tier: the allocator */
        /* Returns a size class id for blocks of `bytes`, or -errno. */
        int (*class_for)(struct kvd_tier *t, uint64_t bytes);
        /* Allocates one block of class; -ENOSPC when full (the caller evicts). */
        int (*alloc)(struct kvd_tier *t, int klass, uint32_t *ret_loc);
        void (*free)(struct kvd_tier *t, uint32_t loc);
        void (*usage)(const struct kvd_tier *t, struct kvd_tier_usage *ret);
        /* Finishes what is in flight (callbacks run), then frees. */
        struct kvd_tier *(*destroy)(struct kvd_tier *t);

        /* ---- memory tiers */
        /* The page at loc; the bytes of a page of class klass; whether a
         * block of klass fits without eviction; the whole pool (for I/O
         * buffer registration). */
        void *(*ptr)(const struct kvd_tier *t, uint32_t loc);
        uint32_t (*class_bytes)(const struct kvd_tier *t, int klass);
        bool (*can_alloc)(const struct kvd_tier *t, int klass);
        void (*region)(const struct kvd_tier *t, void **ret_base, uint64_t *ret_len);

        /* ---- storage tiers */
        /* Writes page (a memory tier's: the slot header built from tmpl,
         * then len payload bytes) to loc; dsync: durable once cb says 0. */
        void (*write)(struct kvd_tier *t, uint32_t loc, const struct kvd_slot_header *tmpl, void *page,
                      uint32_t len, bool dsync, enum kvd_prio prio, kvd_tier_cb cb, void *ctx);
        /* Reads loc into page and checks it is the block (key, layer) of len
         * payload bytes, intact. */
        void (*read)(struct kvd_tier *t, uint32_t loc, void *page, uint32_t len, uint64_t key_hi, uint64_t key_lo,
                     uint32_t layer, enum kvd_prio prio, kvd_tier_cb cb, void *ctx);
        /* Makes the writes done so far to where loc lives durable. */
        void (*sync)(struct kvd_tier *t, uint32_t loc, enum kvd_prio prio, kvd_tier_cb cb, void *ctx);
        /* Frees loc so that what it held never comes back (replaces free()). */
        void (*discard)(struct kvd_tier *t, uint32_t loc);
        /* Rebuilds the allocator from what the tier holds (start-up); the
         * slots kept, or -errno. */
        int64_t (*recover)(struct kvd_tier *t, kvd_tier_recover_fn fn, void *ctx);
        void (*stats)(const struct kvd_tier *t, struct kvd_tier_stats *ret);
        /* Registers its completion fd with the event loop. 0 or -errno. */
        int (*watch)(struct kvd_tier *t, struct kvd_loop *l);
        /* Submits what was queued (the loop calls it before it sleeps). */
        void (*flush)(struct kvd_tier *t);
        /* Runs everything queued and in flight to its end. */
        void (*drain)(struct kvd_tier *t);
        /* The periodic health check (about once a second): true while the
         * tier is not damaged; damaged() says it without checking. */
        bool (*check)(struct kvd_tier *t);
        bool (*damaged)(const struct kvd_tier *t);
};

struct kvd_tier {
        const struct kvd_tier_ops *ops;
};
