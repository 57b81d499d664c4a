/* SPDX-License-Identifier: MIT */
/*
 * Private to kvdrived/core/: the cache's state, shared by cache.c (blocks,
 * tiers, eviction) and ns.c (namespaces and their owners' quotas).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cache.h"
#include "index.h"
#include "slab.h"
#include "tiers.h"

struct lru {
        uint32_t head, tail;    /* head: least recently used */
};

/*
 * A uid that owns namespaces or device pools: its usage against its quota,
 * and the LRU lists of its blocks' copies per size class (one list per
 * tenant, so that a tenant over quota evicts its own blocks; the tier's
 * least recent block is the oldest head among the tenants' lists).
 */
struct kvd_tenant {
        struct kvd_tenant_stats st;     /* uid, quota, usage */
        uint64_t host_leaving;          /* of host_bytes: demotions that will free it */
        uint32_t index;                 /* in kvd_cache.tenants */
        struct lru lru[KVD_SLAB_MAX_CLASSES];     /* host copies that may go */
        struct lru ssd_lru[KVD_SLAB_MAX_CLASSES]; /* SSD copies that may go */
};

/* A request item waiting for an event (see cache.h). */
struct waiter {
        kvd_wait_fn fn;
        void *ctx;
        uint32_t item;
        bool quota;             /* waits for its owner's quota, not the tier */
        uint32_t next;          /* waiter index, 0: end */
};

struct kvd_cache {
        const struct kvd_config *cfg;
        /* The tiers, fastest first (tiers/tiers.h): tiers[0] is the host
         * tier (memory), then the SSD tier if there is one (storage). */
        struct kvd_tier *tiers[KVD_MAX_TIERS];
        unsigned n_tiers;
        struct kvd_tier *host_tier;     /* tiers[0] */
        struct kvd_tier *ssd_tier;      /* NULL without an SSD tier */
        struct kvd_tier *remote_tier;   /* NULL without a remote tier */
        uint32_t hdr;           /* bytes of slot header heading each host page */
        struct kvd_index *index;
        struct kvd_ns *ns;      /* cfg->max_namespaces entries */
        uint32_t n_ns;          /* in use */
        struct kvd_tenant **tenants;
        uint32_t n_tenants, cap_tenants;
        int evict_rr, ssd_evict_rr;
        uint32_t evict_writes;  /* demotions in flight that free host room */
        struct waiter *waiters; /* [0] unused */
        uint32_t n_waiters, cap_waiters, free_waiter;
        uint32_t space_head, space_tail; /* waiters for host room, FIFO */
        uint32_t space_waiting;          /* on that list */
        bool waking_space;
        bool stopping;          /* kvd_cache_quiesce() ran: no new waits */
        uint64_t hits, misses, evictions, puts, gets;
        uint64_t ssd_hits, ssd_misses, ssd_evictions, demotions, promotions, dropped;
        uint64_t spec_promotions, scores;
        uint64_t remote_fetches, remote_promotions; /* Gets asked of the remote tier, blocks it gave */
        uint32_t spec_inflight; /* speculative loads in flight */
        uint64_t recover_skipped_ns, recover_skipped_quota; /* blocks left out at start */
        bool recovered;         /* kvd_cache_recover() ran whole: the index may be checkpointed */
        uint64_t ckpt_last_ns;  /* the last checkpoint while serving began (or recovery ended) */
        /* Where the SSD tier's gathering of one is in the index (it takes
         * loop turns); two, so a start refused while one is under way
         * does not reset it (recover.c). */
        struct kvd_ckpt_walk {
                struct kvd_cache *c;
                uint32_t id;
        } ckpt_walk[2];
        unsigned ckpt_walk_cur;
        uint64_t t0_ns;         /* the heat clock starts here */
};

static inline struct kvd_block *blk(const struct kvd_cache *c, uint32_t id)
{
        return kvd_index_block(c->index, id);
}

static inline struct kvd_tenant *owner_of(const struct kvd_cache *c, const struct kvd_block *b)
{
        return c->ns[b->ns].tenant;
}

/* placement.c */
/* Adds attention mass (or demand) to block b's heat. */
void kvd_heat_add(struct kvd_cache *c, struct kvd_block *b, float mass);
/* Puts block id on exactly the LRU lists it belongs to (its owner's, of
 * its classes); touch: it was used now, to the most recent end. */
void kvd_lru_update(struct kvd_cache *c, uint32_t id, bool touch);
/* The block to evict for room in class klass of a tier (ssd: the SSD
 * tier), whoever owns it; KVD_ID_NONE if nothing may go. */
uint32_t kvd_pick_victim(const struct kvd_cache *c, int klass, int *rr, bool ssd);
/* Tenant t's block to evict to keep t within its quota, or KVD_ID_NONE. */
uint32_t kvd_pick_own_victim(const struct kvd_cache *c, struct kvd_tenant *t, bool ssd);

/* ns.c */
struct kvd_tenant *kvd_tenant_get(struct kvd_cache *c, uint32_t uid);
/* Frees t if nothing is charged to it and it owns nothing. */
void kvd_tenant_put(struct kvd_cache *c, struct kvd_tenant *t);
/* A record of namespace id was added to / removed from the index. */
void kvd_ns_record_added(struct kvd_cache *c, uint32_t id);
void kvd_ns_record_removed(struct kvd_cache *c, uint32_t id);
/* Frees namespace id if nothing holds it and it has no record. */
void kvd_ns_settle(struct kvd_cache *c, uint32_t id);

/* cache.c */
/* Deletes block id as a Delete request would: 1 if deleted or doomed. */
int kvd_cache_delete_id(struct kvd_cache *c, uint32_t id);
/* Makes PENDING block id READY (kvd_cache_put_commit() without counting a
 * Put): a copy to SSD if durable or written through, and fn for it. */
int kvd_block_commit(struct kvd_cache *c, uint32_t id, bool durable, kvd_wait_fn fn, void *ctx, uint32_t item);
/* Finishes a pending delete of a block nobody uses now. */
void kvd_block_settle(struct kvd_cache *c, uint32_t id);
/* The slot header naming block b (its identity; no crc, no magic). */
void kvd_block_header(const struct kvd_cache *c, const struct kvd_block *b, struct kvd_slot_header *ret);

/* share.c: the remote tier's policy. Block id may be worth sharing now
 * (stored, or read again): written through if it is a shared block the
 * remote tier lacks and admits. Fetches k, in no local tier, from the
 * remote tier into a new PENDING block: -EINPROGRESS with fn waiting for
 * it (called ok once it is READY, !ok if it was not there), or what
 * kvd_cache_put_reserve() gives (-EAGAIN, -EXFULL: wait for room),
 * -ENOENT when there is nothing to ask. */
void kvd_share_offer(struct kvd_cache *c, uint32_t id);
int kvd_share_fetch(struct kvd_cache *c, const struct kvd_bkey *k, kvd_wait_fn fn, void *ctx, uint32_t item);

/* waiters.c: parks item of a request on block id until it is ready (0 or
 * -ENOMEM); takes the waiters of block id (the head of their list, 0: none);
 * wakes the list headed by w, each told ok; wakes the waiters for host room
 * and quota that can go now. */
int kvd_wait_on_block(struct kvd_cache *c, uint32_t id, kvd_wait_fn fn, void *ctx, uint32_t item);
uint32_t kvd_take_block_waiters(struct kvd_cache *c, uint32_t id);
void kvd_wake(struct kvd_cache *c, uint32_t w, bool ok);
void kvd_wake_space(struct kvd_cache *c);

/* recover.c: the storage tier's blocks back into the index (start-up).
 * 0 or -errno (logged). */
int kvd_cache_recover(struct kvd_cache *c);

/* The host tier's page at loc. */
static inline void *kvd_cache_host_ptr(const struct kvd_cache *c, uint32_t loc)
{
        return c->host_tier->ops->ptr(c->host_tier, loc);
}

/* Whether the SSD tier is there and can be trusted with blocks. */
static inline bool kvd_cache_ssd_ok(const struct kvd_cache *c)
{
        return c->ssd_tier && !c->ssd_tier->ops->damaged(c->ssd_tier);
}
