/* SPDX-License-Identifier: MIT */
/*
 * The contract every storage tier fills (host DRAM now; SSD and remote
 * later). A tier stores fixed-size blocks in "size classes" (block size
 * rounded up to 4 KiB) and hands out opaque 32-bit locations. All calls
 * happen on the event-loop thread; only the bytes behind a location are
 * touched by transfer workers.
 */
#pragma once

#include <stdint.h>

#define KVD_LOC_NONE UINT32_MAX

struct kvd_tier;

struct kvd_tier_usage {
        uint64_t capacity_bytes;
        uint64_t used_bytes;
        uint64_t blocks;
};

struct kvd_tier_ops {
        const char *name;
        /* Returns a size class id for blocks of `bytes`, or -errno. */
        int (*class_for)(struct kvd_tier *t, uint64_t bytes);
        /* Allocates one block of class; -ENOSPC when full (the caller evicts). */
        int (*alloc)(struct kvd_tier *t, int klass, uint32_t *ret_loc);
        void (*free)(struct kvd_tier *t, uint32_t loc);
        void (*usage)(const struct kvd_tier *t, struct kvd_tier_usage *ret);
        struct kvd_tier *(*destroy)(struct kvd_tier *t);
};

struct kvd_tier {
        const struct kvd_tier_ops *ops;
};
