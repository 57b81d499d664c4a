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
 *  - a SHARED tier (a remote store that other machines read and write
 *    too) is not allocated from: a block is found there by its identity
 *    (its namespace's identity, key and layer, as a slot header names
 *    them), never at a location of ours. It puts, gets and probes blocks,
 *    asynchronously, and may not have what it once took (other machines,
 *    expiry, its own eviction): a get that finds nothing usable is a miss.
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

#define KVD_TIER_LAT_BUCKETS 32

/* I/Os by how long they took, submission to completion: hist[b] counts
 * [2^(b-1), 2^b) us (b = 0: under 1 us; the last: longer). */
struct kvd_tier_latency {
        uint64_t hist[KVD_TIER_LAT_BUCKETS];
        uint64_t sum_ns;
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
        struct kvd_tier_latency read_lat, write_lat;    /* storage tiers: successful reads, writes */
        uint64_t recover_headers_read;  /* slot headers read at start-up */
        bool recovered_from_checkpoint; /* the index came from a checkpoint */
        uint32_t recover_dirty_extents; /* of them, written since it: their slot headers read */
        uint64_t checkpoints;           /* written while serving */
        uint64_t checkpoint_gather_ns;  /* the last one's time on the event loop */
        uint64_t journal_appends;       /* extents journaled before their first write since one */
        /* shared tiers */
        uint64_t hits, misses;          /* gets that found the block (verified) / nothing usable */
        uint64_t write_skips;           /* puts refused: busy, too large, down */
        uint64_t probes, probe_hits;    /* blocks asked by exists() / found */
        uint64_t map_refreshes;         /* its routing was fetched again */
};

/* One node of a tier made of several (a cluster). */
struct kvd_tier_node_stats {
        char addr[64];
        bool up;
        uint32_t slots;                 /* the share of the keys it serves (hash slots) */
        uint64_t requests, hits, misses, read_bytes, write_bytes;
        uint64_t errors, timeouts, moved, ask;
        uint64_t latency_us_sum, latency_us_max;
        uint64_t latency_hist[KVD_TIER_LAT_BUCKETS]; /* [b]: answered in [2^(b-1), 2^b) us */
};

/* An I/O's end: 0, -EBADMSG (the bytes are not the block: torn, corrupt,
 * another block's), -EIO (short), or the I/O's -errno. */
typedef void (*kvd_tier_cb)(void *ctx, int result);

/* recover()'s callback for every valid slot it finds: return true to keep
 * it (it is then claimed), false to free it. */
typedef bool (*kvd_tier_recover_fn)(void *ctx, const struct kvd_slot_header *h, uint32_t loc, int klass);

/* checkpoint()'s source of the blocks a storage tier holds: fills the next
 * one's identity (as kvd_block_header() does), its slot and a small id of
 * its namespace; false when there are no more. */
typedef bool (*kvd_tier_ckpt_fn)(void *ctx, struct kvd_slot_header *ret_h, uint32_t *ret_loc, uint32_t *ret_ns);

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
        /* The payload bytes a block of raw bytes of the namespace id names
         * (its ns_* fields) takes here, encoded as the tier stores it (its
         * slot class is class_for() of that); NULL: raw. */
        uint32_t (*stored_len)(const struct kvd_tier *t, const struct kvd_slot_header *id, uint32_t raw);
        /* Makes the writes done so far to where loc lives durable. */
        void (*sync)(struct kvd_tier *t, uint32_t loc, enum kvd_prio prio, kvd_tier_cb cb, void *ctx);
        /* Frees loc so that what it held never comes back (replaces free()). */
        void (*discard)(struct kvd_tier *t, uint32_t loc);
        /* Rebuilds the allocator from what the tier holds (start-up); the
         * slots kept, or -errno. */
        int64_t (*recover)(struct kvd_tier *t, kvd_tier_recover_fn fn, void *ctx);
        void (*stats)(const struct kvd_tier *t, struct kvd_tier_stats *ret);
        /* At a clean stop: drains, makes every write durable, then records
         * the blocks next() gives so that the next recover() need not scan
         * (optional). 0 or -errno. */
        int (*checkpoint)(struct kvd_tier *t, kvd_tier_ckpt_fn next, void *ctx);
        /* While serving: gathers the blocks next() gives, a bounded number
         * per loop turn (so next() and ctx must stay good until the next
         * checkpoint_start() or checkpoint()), then writes them off the
         * event loop (optional). 0 started, -EBUSY the last one is still
         * being gathered or written, or -errno. */
        int (*checkpoint_start)(struct kvd_tier *t, kvd_tier_ckpt_fn next, void *ctx);
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

        /* ---- shared tiers: blocks by identity (id: a slot header naming
         * the namespace, key, layer and payload_len; the tier fills in and
         * seals the rest). 0 when started (cb will run), else -errno and
         * nothing happens: -EBUSY too much in flight, -EMSGSIZE too large,
         * -EHOSTDOWN it is not there at all. */
        /* Stores len bytes of payload (which stays untouched until cb). */
        int (*put)(struct kvd_tier *t, const struct kvd_slot_header *id, const void *payload, uint32_t len,
                   kvd_tier_cb cb, void *ctx);
        /* Fetches the block into payload (len bytes); cb's result 0 only if
         * it is that block, intact: -ENOENT it is not there, -EBADMSG it is
         * not the block (never copied out as good), other -errno. */
        int (*get)(struct kvd_tier *t, const struct kvd_slot_header *id, void *payload, uint32_t len,
                   enum kvd_prio prio, kvd_tier_cb cb, void *ctx);
        /* Asks in one round whether it has blocks (key, layer) of ids[i]
         * (the namespace of ids[0] for all): ret[i] = 1 if so. */
        int (*exists)(struct kvd_tier *t, const struct kvd_slot_header *ns, const uint64_t (*keys)[2],
                      const uint32_t *layers, uint32_t n, uint8_t *ret, kvd_tier_cb cb, void *ctx);
        /* Its nodes (up to max into ret); returns how many it has. */
        unsigned (*nodes)(const struct kvd_tier *t, struct kvd_tier_node_stats *ret, unsigned max);
};

struct kvd_tier {
        const struct kvd_tier_ops *ops;
};
