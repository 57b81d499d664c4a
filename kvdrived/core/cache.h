/* SPDX-License-Identifier: MIT */
/*
 * The cache: namespaces, the block index and the tiers behind them, with
 * placement and eviction. Plain C structs only: no protocol types here.
 * Event-loop thread only.
 *
 * Block life: put_reserve() makes a PENDING block with a host page that a
 * transfer fills; put_commit() makes it READY (readable, evictable) or
 * put_abort() drops it. get_pin() pins a READY block while a transfer reads
 * it (pinned blocks are never evicted); unpin() releases it.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "index.h"
#include "tier.h"

#define KVD_NS_NAME_MAX 128

struct kvd_geometry {
        uint32_t layers;
        uint32_t kv_heads;
        uint32_t head_dim;
        uint32_t dtype;         /* 1 f16, 2 bf16, 3 f32, 4 fp8 */
        uint32_t block_tokens;
};

struct kvd_ns {
        uint32_t id;
        char name[KVD_NS_NAME_MAX];
        struct kvd_geometry geometry;
        uint64_t block_bytes;
        int klass;              /* host size class */
        uint64_t blocks;        /* READY blocks */
};

struct kvd_cache_stats {
        struct kvd_tier_usage host;
        uint64_t hits, misses, evictions;
        uint64_t puts, gets;
        uint64_t index_capacity, index_entries, index_bytes;
        uint32_t index_bytes_per_block;
};

struct kvd_cache;

int kvd_cache_new(const struct kvd_config *cfg, struct kvd_cache **ret);
struct kvd_cache *kvd_cache_free(struct kvd_cache *c);

/* Block size of g: 2 * kv_heads * head_dim * block_tokens * dtype size.
 * -EINVAL for a zero field or an unknown dtype, -EOVERFLOW past 4 GiB. */
int kvd_geometry_block_bytes(const struct kvd_geometry *g, uint64_t *ret);

/*
 * Registers name with geometry g, or joins it if it exists with the same
 * geometry (*ret_created = false). -EINVAL bad geometry or name, -EEXIST
 * name exists with another geometry, -E2BIG block larger than a host
 * extent, -ENOSPC too many namespaces. Nothing changes on error.
 */
int kvd_cache_ns_register(struct kvd_cache *c, const char *name, const struct kvd_geometry *g,
                          uint32_t *ret_id, bool *ret_created);
const struct kvd_ns *kvd_cache_ns(const struct kvd_cache *c, uint32_t id);
uint32_t kvd_cache_ns_count(const struct kvd_cache *c);

/* 0: a PENDING block and its host page; -EEXIST: cached; -EINPROGRESS:
 * being stored by another Put (*ret_id set: wait for it with
 * kvd_cache_wait_pending()); -ENOSPC: nothing evictable; -ENOMEM. */
int kvd_cache_put_reserve(struct kvd_cache *c, const struct kvd_bkey *k, uint32_t *ret_id,
                          void **ret_host);
void kvd_cache_put_commit(struct kvd_cache *c, uint32_t id);
void kvd_cache_put_abort(struct kvd_cache *c, uint32_t id);

/* Called once when a PENDING block is committed (true) or aborted (false). */
typedef void (*kvd_pending_fn)(void *ctx, uint32_t item, bool committed);

/* Registers fn(ctx, item, ...) to run when PENDING block id resolves, so a
 * second Put of a key is acknowledged only once the first one's bytes are
 * readable. 0 or -ENOMEM. */
int kvd_cache_wait_pending(struct kvd_cache *c, uint32_t id, kvd_pending_fn fn, void *ctx, uint32_t item);

/* 0: READY block pinned, *ret_host its bytes; -ENOENT: miss (counted). */
int kvd_cache_get_pin(struct kvd_cache *c, const struct kvd_bkey *k, uint32_t *ret_id,
                      void **ret_host);
void kvd_cache_unpin(struct kvd_cache *c, uint32_t id);

/* True if k is READY (no hit/miss counted, no recency change). */
bool kvd_cache_contains(const struct kvd_cache *c, const struct kvd_bkey *k);

/* Deletes a READY block (pinned ones go when unpinned). 1 if deleted or
 * doomed, 0 if absent or still being stored. */
int kvd_cache_delete(struct kvd_cache *c, const struct kvd_bkey *k);

void kvd_cache_stats(const struct kvd_cache *c, struct kvd_cache_stats *ret);
