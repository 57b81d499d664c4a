/* SPDX-License-Identifier: MIT */
/*
 * The cache: namespaces, the block index, and the tiers behind it (host
 * DRAM, optional SSD), with placement and eviction. Plain C structs only: no
 * protocol types here. Event-loop thread only.
 *
 * A block is READY when some tier holds a whole, acknowledged copy. Its host
 * copy is "clean" when the SSD holds the same bytes, "dirty" otherwise.
 * When the host needs room, the least recently used block goes: a clean one
 * just loses its host copy; a dirty one is written to SSD first (demotion)
 * if the SSD tier runs and admits it, else it is dropped (counted). When the
 * SSD needs room its least recently used slot goes the same way.
 *
 * Waiting: a request item that cannot proceed yet (the key is being stored
 * by another Put, the block is being loaded from SSD, or host room is being
 * made by demotions in flight) registers a kvd_wait_fn and is called back
 * exactly once, on this thread, when it should try again (ok) or give up.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "access.h"
#include "config.h"
#include "index.h"
#include "tier.h"

#define KVD_NS_NAME_MAX 128
/* The deepest model has 126 layers; a cap bounds the work of one request
 * (a Lookup or Delete visits every layer of every key). */
#define KVD_NS_MAX_LAYERS 1024


struct kvd_geometry {
        uint32_t layers;
        uint32_t kv_heads;
        uint32_t head_dim;
        uint32_t dtype;         /* 1 f16, 2 bf16, 3 f32, 4 fp8 */
        uint32_t block_tokens;
};

struct kvd_tenant;

/*
 * A namespace, known by (owner, name). It lives while a session has joined
 * it, a request uses it, or a block of it exists (kvd_cache_ns_hold() and
 * the index count those); then it goes and its id may be reused.
 */
struct kvd_ns {
        uint32_t id;
        char name[KVD_NS_NAME_MAX];
        struct kvd_geometry geometry;
        uint8_t fingerprint[KVD_FINGERPRINT_MAX]; /* what computed its bytes: part of its identity */
        uint8_t fingerprint_len;
        uint64_t block_bytes;
        int klass;              /* host size class */
        int ssd_klass;          /* SSD size class, -1 without SSD */
        uint32_t host_charge;   /* host bytes a block costs its owner's quota */
        uint32_t ssd_charge;    /* SSD bytes likewise */
        uint64_t blocks;        /* READY blocks */
        uint32_t owner;         /* the uid that owns it */
        bool in_use;            /* this table entry is a namespace */
        bool dropped;           /* kvd_cache_ns_drop(): going, its blocks with it */
        uint32_t refs;          /* sessions joined + requests in flight */
        uint64_t records;       /* index records of it, in any state */
        struct kvd_tenant *tenant; /* its owner's usage and quota */
};

/* One uid's usage against its quota. */
struct kvd_tenant_stats {
        uint32_t uid;
        struct kvd_quota quota;
        uint64_t host_bytes, ssd_bytes, pool_bytes;
        uint32_t namespaces;
        uint64_t quota_evictions;       /* own blocks pushed out to stay within quota */
        uint64_t quota_refusals;        /* items and registrations refused for quota */
};

struct kvd_cache_stats {
        struct kvd_tier_usage host;
        uint64_t hits, misses, evictions;       /* host: served, not in host, copies dropped */
        uint64_t puts, gets;
        uint64_t index_capacity, index_entries, index_bytes;
        uint32_t index_bytes_per_block;
        bool have_ssd;
        struct kvd_tier_usage ssd;
        uint64_t ssd_hits, ssd_misses, ssd_evictions;   /* loaded from SSD, found nowhere, slots dropped */
        uint64_t demotions, promotions, dropped;        /* host->SSD writes, SSD->host loads, blocks lost */
        uint64_t ssd_reads, ssd_writes, ssd_read_bytes, ssd_write_bytes;
        uint64_t ssd_busy_ns;           /* time with SSD I/O in flight */
        struct kvd_tier_latency ssd_read_lat, ssd_write_lat;
        uint64_t ssd_read_errors, ssd_write_errors, crc_failures;
        bool ssd_full;
        bool ssd_damaged;       /* see tiers/ssd.h */
        char ssd_condition[96];
        uint64_t spec_promotions, scores;
        uint64_t remote_fetches, remote_promotions;     /* Gets asked of the remote tier, blocks it gave */
        const char *eviction;   /* "heat" or "lru" */
};

/* Called once: ok = the awaited event happened (try again), !ok = give up. */
typedef void (*kvd_wait_fn)(void *ctx, uint32_t item, bool ok);

struct kvd_cache;

/* Creates the host tier and, when cfg->ssd_bytes, the SSD tier (and rebuilds
 * the index from it). The SSD directories are claimed first, so that a
 * daemon that may not use them stops before it maps its host memory. */
int kvd_cache_new(const struct kvd_config *cfg, struct kvd_cache **ret);
/* First step of a stop, once no session is left: items waiting for host
 * room give up, later waits are refused, and SSD I/O in flight runs to its
 * end (its callbacks may still hand copies to the transfer engine, which
 * must outlive this call). */
void kvd_cache_quiesce(struct kvd_cache *c);

/* Before a clean stop: writes every dirty host block the SSD tier admits to
 * SSD while it has free space (no eviction), so a restart finds them.
 * Returns the number of writes started; kvd_cache_free() waits for them. */
uint64_t kvd_cache_write_back(struct kvd_cache *c);

/* Last step of a clean stop, after kvd_cache_write_back(): the SSD I/O runs
 * to its end, then the SSD tier's index checkpoint is written (so that the
 * next start need not scan the slot headers: tiers/ssd-checkpoint.h), if
 * recovery had run whole and the tier is not damaged. Failure is logged:
 * the next start scans. Nothing may be asked of the tiers after it. */
void kvd_cache_checkpoint(struct kvd_cache *c);

/* What kvd_cache_ns_evict() did, added up over its slices. */
struct kvd_evict_result {
        uint64_t freed;         /* copies freed at once: clean host copies, SSD copies of host-resident blocks */
        uint64_t demoting;      /* dirty host copies being written to SSD, freed once written */
        uint64_t dropped;       /* blocks lost: no other tier holds or takes them */
        uint64_t busy;          /* copies in use (pinned, being loaded or written): left where they are */
};

/*
 * An operator's evict: drops namespace id's copies from one tier (ssd:
 * the SSD tier, else the host tier), in slices as kvd_cache_ns_purge()
 * (up to budget index records from *cursor, 0 to start; true once done).
 * From host, as making room would: a clean copy goes, a dirty one is
 * demoted if the SSD tier runs and admits it (the SSD may evict for it),
 * else its block is dropped. From SSD: a block with a host copy keeps it
 * (dirty again), one without is dropped. Counted in *res.
 */
bool kvd_cache_ns_evict(struct kvd_cache *c, uint32_t id, bool ssd, uint64_t *cursor, uint32_t budget,
                        struct kvd_evict_result *res);

/* Copies per namespace: host[i] and ssd[i] (arrays of kvd_cache_ns_slots()
 * entries, the caller's) count namespace i's READY blocks with a host copy
 * and with an SSD copy. Visits every index record. */
void kvd_cache_ns_copies(const struct kvd_cache *c, uint64_t *host, uint64_t *ssd);

/* Finishes SSD I/O in flight (callbacks run) and frees. Accepts NULL. */
struct kvd_cache *kvd_cache_free(struct kvd_cache *c);

/* Registers the tiers' file descriptors (the SSD tier's completions) with
 * the event loop. 0 or -errno. */
struct kvd_loop;
int kvd_cache_watch(struct kvd_cache *c, struct kvd_loop *l);
/* Submits queued SSD I/O (one system call); call before sleeping. */
void kvd_cache_flush(struct kvd_cache *c);
bool kvd_cache_has_ssd(const struct kvd_cache *c);
/* The SSD tier is damaged (tiers/ssd.h): durable Puts cannot be had. */
bool kvd_cache_ssd_damaged(const struct kvd_cache *c);
/* About once a second from the loop: the SSD tier's damage check, and
 * every ssd-checkpoint-interval seconds its index checkpoint while serving
 * (gathered now, written off the loop: tiers/ssd-interval.c). */
void kvd_cache_tick(struct kvd_cache *c);
/* The checkpoint part of kvd_cache_tick(): starts one if it is time. */
void kvd_cache_interval_checkpoint(struct kvd_cache *c);

/* The host tier's memory (for the CUDA backend to page-lock) and its extent
 * size (no host page crosses a multiple of it). */
void kvd_cache_host_region(const struct kvd_cache *c, void **ret_base, uint64_t *ret_len,
                           uint64_t *ret_extent_bytes);

/* A namespace name: 1 to KVD_NS_NAME_MAX - 1 bytes of printable ASCII
 * (no NUL, no control characters: names go into logs and JSON). */
bool kvd_ns_name_valid(const char *name, size_t len);

/* Block size of g: 2 * kv_heads * head_dim * block_tokens * dtype size.
 * -EINVAL for a zero field or an unknown dtype, -EOVERFLOW past 4 GiB. */
int kvd_geometry_block_bytes(const struct kvd_geometry *g, uint64_t *ret);

/*
 * Finds namespace (owner, name) and checks it has geometry g, or creates
 * it when create is set. *ret_created tells which. -EINVAL bad geometry or
 * name, -EEXIST it exists with another geometry, -ENOENT it does not exist
 * (and !create), -EDQUOT owner at its namespace quota, -ENOSPC the table is
 * full (max-namespaces), -E2BIG block larger than an extent, -ENOMEM.
 * Nothing changes on error. The caller holds it (kvd_cache_ns_hold()) to
 * keep it: a namespace nobody holds and with no blocks goes.
 */
int kvd_cache_ns_register(struct kvd_cache *c, const char *name, const struct kvd_geometry *g, uint32_t owner,
                          bool create, uint32_t *ret_id, bool *ret_created);
/* A namespace's identity: (owner, name), and what must match to join it. */
struct kvd_ns_ident {
        const char *name;
        const struct kvd_geometry *geometry;
        uint32_t owner;
        const uint8_t *fingerprint;     /* fingerprint_len bytes, at most KVD_FINGERPRINT_MAX */
        size_t fingerprint_len;
};

/* kvd_cache_ns_register() with a fingerprint: another fingerprint under
 * the same (owner, name) is -EEXIST like another geometry; one too long is
 * -EINVAL. kvd_cache_ns_register() is this with none. */
int kvd_cache_ns_register_ident(struct kvd_cache *c, const struct kvd_ns_ident *ident, bool create,
                                uint32_t *ret_id, bool *ret_created);
/* The namespace at id, NULL if that table entry is free. */
const struct kvd_ns *kvd_cache_ns(const struct kvd_cache *c, uint32_t id);
/* Size of the namespace table (ids are below it); namespaces in use. */
uint32_t kvd_cache_ns_slots(const struct kvd_cache *c);
uint32_t kvd_cache_ns_count(const struct kvd_cache *c);
/* A session joined, or a request started on, namespace id; and its end. */
void kvd_cache_ns_hold(struct kvd_cache *c, uint32_t id);
void kvd_cache_ns_release(struct kvd_cache *c, uint32_t id);

/*
 * Drops namespace id: it is no longer found by name, new requests on it
 * fail, and its blocks go, in slices: call kvd_cache_ns_purge() until it
 * returns true (each call looks at up to budget index records from
 * *cursor, 0 to start, and adds the blocks it deleted to *deleted). Blocks in use go once released. The namespace
 * itself goes once nobody holds it and its last block is gone.
 */
void kvd_cache_ns_drop(struct kvd_cache *c, uint32_t id);
bool kvd_cache_ns_purge(struct kvd_cache *c, uint32_t id, uint64_t *cursor, uint32_t budget, uint64_t *deleted);

/* Charges bytes of device pools to uid's quota: 0, or -EDQUOT (nothing
 * charged) when it would go over; -ENOMEM. Uncharge gives them back. */
int kvd_cache_pool_charge(struct kvd_cache *c, uint32_t uid, uint64_t bytes);
void kvd_cache_pool_uncharge(struct kvd_cache *c, uint32_t uid, uint64_t bytes);

/* Usage of uid (zeros and its quota if it has none). */
void kvd_cache_tenant(const struct kvd_cache *c, uint32_t uid, struct kvd_tenant_stats *ret);
/* Tenants with any usage, in no order: up to max into ret; returns how
 * many there are. */
uint32_t kvd_cache_tenants(const struct kvd_cache *c, struct kvd_tenant_stats *ret, uint32_t max);

/* The config's quotas changed (reload): every tenant takes its new quota.
 * Usage over a lowered quota stays (nothing is evicted for it); new
 * charges are refused until usage is under it again. */
void kvd_cache_quotas_refresh(struct kvd_cache *c);

/*
 * Starts storing k: 0 with a PENDING block and its host page to fill;
 * -EEXIST cached (*ret_id set); -EINPROGRESS another Put is storing it
 * (*ret_id set; wait with kvd_cache_wait_pending()); -EAGAIN host room is being made, or
 * -EXFULL the owner's host quota is full of blocks in use (wait with
 * kvd_cache_wait_space()); -EDQUOT a block does not fit the owner's quota;
 * -ENOSPC nothing can be evicted; -ENOMEM.
 */
int kvd_cache_put_reserve(struct kvd_cache *c, const struct kvd_bkey *k, uint32_t *ret_id,
                          void **ret_host);
/*
 * Makes a PENDING block READY. With KVD_PUT_DURABLE (and an SSD tier), or when the
 * tier writes through, the block is also written to SSD (RWF_DSYNC when
 * durable) and fn(ctx, item, ok) runs when that write ends. Returns 1 if fn
 * will be called, 0 if there is nothing to wait for, -errno if no write
 * could be started (the block is READY in host all the same). A damaged SSD
 * tier: durable gets -EIO; write-through writes nothing (0).
 */
/* kvd_cache_put_commit()'s flags (true: durable, as before). */
enum {
        KVD_PUT_DURABLE = 1u << 0,
        KVD_PUT_SHARED = 1u << 1,       /* a prefix-chain block: write it through to the remote tier */
};
int kvd_cache_put_commit(struct kvd_cache *c, uint32_t id, unsigned flags, kvd_wait_fn fn, void *ctx,
                          uint32_t item);
void kvd_cache_put_abort(struct kvd_cache *c, uint32_t id);
/*
 * A durable Put found block id stored (-EEXIST from put_reserve): 0 if its
 * SSD copy is durable already, 1 if fn(ctx, item, ok) will be called once
 * it may be (a durable write or an fdatasync started, or a write in flight
 * awaited: then try again), -EIO if it cannot be made durable (no or a
 * damaged SSD tier, being deleted), other -errno.
 */
int kvd_cache_put_durable(struct kvd_cache *c, uint32_t id, kvd_wait_fn fn, void *ctx, uint32_t item);
int kvd_cache_wait_pending(struct kvd_cache *c, uint32_t id, kvd_wait_fn fn, void *ctx, uint32_t item);

/*
 * Starts loading k for a client: 0 with the block pinned in host and
 * *ret_host its bytes; -EINPROGRESS it is being read from SSD (fn registered:
 * called when it is in host, then call get_pin again); -EAGAIN / -EXFULL
 * host room is being made (wait_space); -ENOENT miss; -ENOSPC no host room;
 * -EDQUOT over the owner's quota; -ENOMEM.
 * KVD_GET_PREFETCH (true, as before): reads from SSD at the lower priority.
 * KVD_GET_SHARED: k is a prefix-chain key: a block in no local tier is
 * asked of the remote tier (-EINPROGRESS, fn called when it came, or not).
 */
enum {
        KVD_GET_PREFETCH = 1u << 0,
        KVD_GET_SHARED = 1u << 1,
};
int kvd_cache_get_pin(struct kvd_cache *c, const struct kvd_bkey *k, unsigned flags, kvd_wait_fn fn,
                      void *ctx, uint32_t item, uint32_t *ret_id, void **ret_host);
void kvd_cache_unpin(struct kvd_cache *c, uint32_t id);

/* Adds attention mass (in [0, 1]) a client measured on block k to its heat.
 * 1 if k is cached, 0 if not (or mass is out of range). */
int kvd_cache_score(struct kvd_cache *c, const struct kvd_bkey *k, float mass);

/* Registers fn for when host room may have been made: why is the -EAGAIN
 * (the tier) or -EXFULL (the owner's quota) that sent the caller here.
 * 0, -ECANCELED (stopping) or -ENOMEM. */
int kvd_cache_wait_space(struct kvd_cache *c, int why, kvd_wait_fn fn, void *ctx, uint32_t item);

/* True if k is READY in some tier (no hit/miss counted, no recency change). */
bool kvd_cache_contains(const struct kvd_cache *c, const struct kvd_bkey *k);

/* Deletes a READY block from every tier (one in use goes when released).
 * 1 if deleted or doomed, 0 if absent or still being stored. */
int kvd_cache_delete(struct kvd_cache *c, const struct kvd_bkey *k);

void kvd_cache_stats(const struct kvd_cache *c, struct kvd_cache_stats *ret);

/* The remote tier (a store shared with other machines), if there is one. */
bool kvd_cache_has_remote(const struct kvd_cache *c);
/*
 * Asks the remote tier, in one round, whether it has blocks (keys[i],
 * layers[i]) of namespace ns: ret[i] = 1 if so, once cb(ctx, 0) runs (a
 * key it could not answer for is 0). 0 when asked, -ENODEV without a
 * remote tier, -errno.
 */
int kvd_cache_remote_probe(struct kvd_cache *c, uint32_t ns, const uint64_t (*keys)[2], const uint32_t *layers,
                           uint32_t n, uint8_t *ret, kvd_tier_cb cb, void *ctx);
/* The remote tier's figures and up to max of its nodes'; the number of
 * nodes, or -ENODEV without a remote tier. */
int kvd_cache_remote_stats(const struct kvd_cache *c, struct kvd_tier_stats *ret,
                           struct kvd_tier_node_stats *nodes, unsigned max);
