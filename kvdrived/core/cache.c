/* SPDX-License-Identifier: MIT */
#include "cache.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cache-internal.h"
#include "clock.h"
#include "log.h"
#include "macro.h"

/* Demotions started to make host room, at most, before a Put waits. */
#define MAX_EVICT_WRITES 64
/* Heat a Get adds, against attention mass reported in [0, 1] per step. */
#define DEMAND_HEAT 0.05f
/* Speculative next-layer loads in flight, at most. */
#define MAX_SPEC_LOADS 16

/* Context of an SSD write or read of one block. */
struct ssd_ctx {
        struct kvd_cache *c;
        uint32_t id;
        kvd_wait_fn fn;         /* durable Put waiting for the write, or NULL */
        void *fn_ctx;
        uint32_t item;
        bool speculative;       /* a next-layer guess: counted in spec_inflight */
        bool durable;           /* a write with RWF_DSYNC, or a sync */
};

/* ---- set-up ------------------------------------------------------------- */

int kvd_cache_new(const struct kvd_config *cfg, struct kvd_cache **ret)
{
        struct kvd_cache *c;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->cfg = cfg;
        c->t0_ns = kvd_now_ns();
        /* With an SSD tier, host pages are laid out like SSD slots (header,
         * then payload), so one I/O moves a block: see tiers/ssd.h. */
        c->hdr = cfg->ssd_bytes ? KVD_SLOT_HDR_BYTES : 0;
        c->ns = calloc(cfg->max_namespaces, sizeof(*c->ns));
        if (!c->ns) {
                r = -ENOMEM;
                goto err;
        }
        r = kvd_tiers_new(cfg, c->tiers);
        if (r < 0)
                goto err;
        c->n_tiers = (unsigned)r;
        c->host_tier = c->tiers[0];
        for (unsigned i = 1; i < c->n_tiers; i++) {
                if (c->tiers[i]->ops->read)
                        c->ssd_tier = c->tiers[i];
                else if (c->tiers[i]->ops->get)
                        c->remote_tier = c->tiers[i];
        }
        /* The index grows with use; index-blocks only presizes it. */
        r = kvd_index_new(cfg->index_blocks, &c->index);
        if (r < 0)
                goto err;
        r = kvd_cache_recover(c);
        if (r < 0)
                goto err;
        *ret = c;
        return 0;
err:
        kvd_cache_free(c);
        return r;
}

struct kvd_cache *kvd_cache_free(struct kvd_cache *c)
{
        if (!c)
                return NULL;
        /* The storage tiers first: their callbacks still use the index and
         * the host pages. */
        for (unsigned i = c->n_tiers; i-- > 1;)
                c->tiers[i]->ops->destroy(c->tiers[i]);
        kvd_index_free(c->index);
        free(c->waiters);
        if (c->host_tier)
                c->host_tier->ops->destroy(c->host_tier);
        for (uint32_t i = 0; i < c->n_tenants; i++)
                free(c->tenants[i]);
        free(c->tenants);
        free(c->ns);
        free(c);
        return NULL;
}

int kvd_cache_watch(struct kvd_cache *c, struct kvd_loop *l)
{
        for (unsigned i = 0; i < c->n_tiers; i++) {
                int r = c->tiers[i]->ops->watch ? c->tiers[i]->ops->watch(c->tiers[i], l) : 0;

                if (r < 0)
                        return r;
        }
        return 0;
}

void kvd_cache_flush(struct kvd_cache *c)
{
        for (unsigned i = 1; i < c->n_tiers; i++)
                c->tiers[i]->ops->flush(c->tiers[i]);
}

bool kvd_cache_has_ssd(const struct kvd_cache *c)
{
        return c->ssd_tier != NULL;
}

bool kvd_cache_ssd_damaged(const struct kvd_cache *c)
{
        return c->ssd_tier && !kvd_cache_ssd_ok(c);
}

void kvd_cache_tick(struct kvd_cache *c)
{
        if (kvd_cache_ssd_ok(c) && c->ssd_tier->ops->check(c->ssd_tier))
                kvd_cache_interval_checkpoint(c);
}

void kvd_cache_host_region(const struct kvd_cache *c, void **ret_base, uint64_t *ret_len,
                           uint64_t *ret_extent_bytes)
{
        c->host_tier->ops->region(c->host_tier, ret_base, ret_len);
        *ret_extent_bytes = c->cfg->host_extent_bytes;
}

/* ---- dropping copies ---------------------------------------------------- */

/* Host pages and SSD slots are charged to the block's owner. */
static int host_alloc(struct kvd_cache *c, const struct kvd_ns *ns, uint32_t *ret_loc)
{
        int r = c->host_tier->ops->alloc(c->host_tier, ns->klass, ret_loc);

        if (r == 0)
                ns->tenant->st.host_bytes += ns->host_charge;
        return r;
}

static void host_release(struct kvd_cache *c, const struct kvd_ns *ns, uint32_t loc)
{
        c->host_tier->ops->free(c->host_tier, loc);
        ns->tenant->st.host_bytes -= ns->host_charge;
}

static void free_host_copy(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);

        host_release(c, &c->ns[b->ns], b->loc);
        b->loc = KVD_LOC_NONE;
        b->flags &= ~KVD_BLOCK_EVICT;
        kvd_lru_update(c, id, false);
}

static void free_ssd_copy(struct kvd_cache *c, uint32_t id, bool invalidate)
{
        struct kvd_block *b = blk(c, id);
        const struct kvd_ns *ns = &c->ns[b->ns];

        ns->tenant->st.ssd_bytes -= ns->ssd_charge;
        b->synced = 0;
        if (invalidate)
                c->ssd_tier->ops->discard(c->ssd_tier, b->ssd_loc);
        else
                c->ssd_tier->ops->free(c->ssd_tier, b->ssd_loc);
        b->ssd_loc = KVD_LOC_NONE;
        kvd_lru_update(c, id, false);
}

/* Removes a block and frees every copy. invalidate: also wipe its SSD
 * header, so that a deleted block stays deleted across a restart. */
static void drop(struct kvd_cache *c, uint32_t id, bool invalidate)
{
        struct kvd_block *b = blk(c, id);
        uint32_t ns;

        assert(!(b->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_WRITING)) && b->pins == 0);
        if (b->loc != KVD_LOC_NONE)
                free_host_copy(c, id);
        if (b->ssd_loc != KVD_LOC_NONE)
                free_ssd_copy(c, id, invalidate);
        kvd_lru_update(c, id, false);
        if (b->state == KVD_BLOCK_READY)
                c->ns[b->ns].blocks--;
        ns = b->ns;
        kvd_index_remove(c->index, id);
        kvd_ns_record_removed(c, ns);
}

void kvd_block_header(const struct kvd_cache *c, const struct kvd_block *b, struct kvd_slot_header *ret)
{
        const struct kvd_ns *ns = &c->ns[b->ns];

        *ret = (struct kvd_slot_header){
                .key_hi = b->key_hi, .key_lo = b->key_lo, .layer = b->layer,
                .payload_len = (uint32_t)ns->block_bytes,
                .ns_layers = ns->geometry.layers, .ns_kv_heads = ns->geometry.kv_heads,
                .ns_head_dim = ns->geometry.head_dim, .ns_dtype = ns->geometry.dtype,
                .ns_block_tokens = ns->geometry.block_tokens, .ns_owner = ns->owner,
                .ns_fingerprint_len = ns->fingerprint_len,
                .flags = (b->rflags & KVD_BLOCK_SHARED) ? KVD_SLOT_SHARED : 0,
        };
        memcpy(ret->ns_name, ns->name, sizeof(ret->ns_name));
        memcpy(ret->ns_fingerprint, ns->fingerprint, ns->fingerprint_len);
}

/* A block no request uses any more: finish a pending delete. */
void kvd_block_settle(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);

        if ((b->flags & KVD_BLOCK_DOOMED) && b->pins == 0 &&
            !(b->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_WRITING)))
                drop(c, id, true);
        else
                kvd_lru_update(c, id, false);
}

/* ---- SSD writes (demotion, write-through, durable Puts) ------------------ */

/* Evicts SSD copy victim: a block that still has its host copy just
 * becomes dirty again; one that has not is gone (counted). */
static void evict_ssd_copy(struct kvd_cache *c, uint32_t victim)
{
        c->ssd_evictions++;
        if (blk(c, victim)->loc != KVD_LOC_NONE) {
                free_ssd_copy(c, victim, false);
        } else {
                drop(c, victim, false);
                c->dropped++;
        }
}

/* An SSD slot for a block of ns, charged to its owner. With may_evict,
 * evicting: first the owner's own coldest SSD copies while it is over its
 * SSD quota, then the tier's coldest while the tier is full. -EDQUOT when
 * the owner's quota cannot take it, -ENOSPC when the tier cannot. */
static int ssd_alloc_slot(struct kvd_cache *c, const struct kvd_ns *ns, bool may_evict, uint32_t *ret_loc)
{
        struct kvd_tenant *t = ns->tenant;
        int r;

        while (t->st.ssd_bytes + ns->ssd_charge > t->st.quota.ssd_bytes) {
                uint32_t victim = may_evict && ns->ssd_charge <= t->st.quota.ssd_bytes
                                          ? kvd_pick_own_victim(c, t, true) : KVD_ID_NONE;

                if (victim == KVD_ID_NONE) {
                        t->st.quota_refusals++;
                        return -EDQUOT;
                }
                t->st.quota_evictions++;
                evict_ssd_copy(c, victim);
        }
        for (;;) {
                uint32_t victim;

                r = c->ssd_tier->ops->alloc(c->ssd_tier, ns->ssd_klass, ret_loc);
                if (r != -ENOSPC || !may_evict)
                        break;
                victim = kvd_pick_victim(c, ns->ssd_klass, &c->ssd_evict_rr, true);
                if (victim == KVD_ID_NONE)
                        return -ENOSPC;
                evict_ssd_copy(c, victim);
        }
        if (r == 0)
                t->st.ssd_bytes += ns->ssd_charge;
        return r;
}

static void write_done(void *ctx, int r)
{
        struct ssd_ctx *x = ctx;
        struct kvd_cache *c = x->c;
        struct kvd_block *b = blk(c, x->id);
        bool evict = b->flags & KVD_BLOCK_EVICT;
        /* Durable Puts of this key that found it being written. */
        uint32_t waiters = kvd_take_block_waiters(c, x->id);

        b->flags &= ~(KVD_BLOCK_WRITING | KVD_BLOCK_EVICT);
        b->synced = r == 0 && x->durable;
        if (evict) {
                c->evict_writes--;
                owner_of(c, b)->host_leaving -= c->ns[b->ns].host_charge;
        }
        if (r < 0) {
                /* It stays in host memory; making room drops it next time
                 * rather than retrying a drive that fails. */
                log_debug("SSD tier: writing a block failed (%s); it stays in host memory", strerror(-r));
                b->flags |= KVD_BLOCK_NO_SSD;
                free_ssd_copy(c, x->id, false);
        } else {
                c->demotions++;
        }
        if (evict && r == 0 && b->pins == 0 && !(b->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_DOOMED))) {
                free_host_copy(c, x->id);
                c->evictions++;
        }
        if (x->fn)
                x->fn(x->fn_ctx, x->item, r == 0);
        kvd_block_settle(c, x->id);
        kvd_wake(c, waiters, r == 0);
        free(x);
        kvd_wake_space(c);
}

/* A sync of a block's SSD copy ended (kvd_cache_put_durable()). */
static void sync_done(void *ctx, int r)
{
        struct ssd_ctx *x = ctx;
        struct kvd_cache *c = x->c;
        struct kvd_block *b = blk(c, x->id);
        uint32_t waiters = kvd_take_block_waiters(c, x->id);

        b->flags &= ~KVD_BLOCK_WRITING;
        if (r == 0)
                b->synced = 1;
        else
                log_warning("SSD tier: syncing a block for a durable Put failed: %s", strerror(-r));
        kvd_block_settle(c, x->id);
        kvd_wake(c, waiters, r == 0);
        free(x);
        kvd_wake_space(c);
}

/* Writes block id's host copy to a new SSD slot (may_evict: making room for
 * it on SSD). evict: free the host copy once written (demotion). Returns 0
 * (write_done will run, and fn with it), or -errno when no write started. */
static int start_write(struct kvd_cache *c, uint32_t id, bool durable, bool evict, bool may_evict, kvd_wait_fn fn,
                       void *ctx, uint32_t item)
{
        struct kvd_block *b = blk(c, id);
        const struct kvd_ns *ns = &c->ns[b->ns];
        struct kvd_slot_header tmpl;
        struct ssd_ctx *x;
        uint32_t loc;
        int r;

        assert(b->loc != KVD_LOC_NONE && b->ssd_loc == KVD_LOC_NONE && !(b->flags & KVD_BLOCK_WRITING));
        x = malloc(sizeof(*x));
        if (!x)
                return -ENOMEM;
        r = ssd_alloc_slot(c, ns, may_evict, &loc);
        if (r < 0) {
                free(x);
                return r;
        }
        *x = (struct ssd_ctx){ .c = c, .id = id, .fn = fn, .fn_ctx = ctx, .item = item, .durable = durable };
        b->ssd_loc = loc;
        b->flags |= KVD_BLOCK_WRITING | (evict ? KVD_BLOCK_EVICT : 0);
        if (evict) {
                c->evict_writes++;
                ns->tenant->host_leaving += ns->host_charge;
        }
        kvd_lru_update(c, id, false);
        kvd_block_header(c, b, &tmpl);
        c->ssd_tier->ops->write(c->ssd_tier, loc, &tmpl, kvd_cache_host_ptr(c, b->loc), (uint32_t)ns->block_bytes,
                                durable, durable || fn ? KVD_PRIO_DEMAND : KVD_PRIO_BACKGROUND, write_done, x);
        return 0;
}

static bool admitted(const struct kvd_cache *c, const struct kvd_block *b)
{
        return b->reads >= c->cfg->ssd_admit_reads && !(b->flags & KVD_BLOCK_NO_SSD);
}

uint64_t kvd_cache_write_back(struct kvd_cache *c)
{
        uint64_t started = 0;

        if (!kvd_cache_ssd_ok(c))
                return 0;
        for (uint32_t t = 0; t < c->n_tenants; t++)
                for (int k = 0; k < KVD_SLAB_MAX_CLASSES; k++) {
                        uint32_t id = c->tenants[t]->lru[k].head;

                        while (id != KVD_ID_NONE) {
                                struct kvd_block *b = blk(c, id);
                                uint32_t next = b->lru_next;

                                /* Only free space (evicting one copy to save another gains
                                 * nothing); a tenant at its SSD quota is skipped. */
                                if (b->ssd_loc == KVD_LOC_NONE && admitted(c, b)) {
                                        int r = start_write(c, id, false, false, false, NULL, NULL, 0);

                                        if (r == -ENOSPC)
                                                return started;
                                        started += r == 0;
                                }
                                id = next;
                        }
                }
        return started;
}

/* Drops block id's host copy for an operator's evict (kvd_cache_ns_evict()). */
static void evict_host_admin(struct kvd_cache *c, uint32_t id, struct kvd_evict_result *res)
{
        struct kvd_block *b = blk(c, id);

        if (b->pins || (b->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_WRITING))) {
                res->busy++;
                return;
        }
        if (b->ssd_loc != KVD_LOC_NONE) {
                free_host_copy(c, id);
                c->evictions++;
                res->freed++;
                return;
        }
        /* No cap on demotions in flight here: the SSD tier queues them, and
         * the operator asked for all of them. */
        if (kvd_cache_ssd_ok(c) && admitted(c, b) && start_write(c, id, false, true, true, NULL, NULL, 0) == 0) {
                res->demoting++;
                return;
        }
        drop(c, id, false);
        c->evictions++;
        c->dropped++;
        res->dropped++;
}

static void evict_ssd_admin(struct kvd_cache *c, uint32_t id, struct kvd_evict_result *res)
{
        struct kvd_block *b = blk(c, id);

        if (b->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_WRITING) || (b->loc == KVD_LOC_NONE && b->pins)) {
                res->busy++;
                return;
        }
        if (b->loc != KVD_LOC_NONE)
                res->freed++;
        else
                res->dropped++;
        evict_ssd_copy(c, id);
}

bool kvd_cache_ns_evict(struct kvd_cache *c, uint32_t id, bool ssd, uint64_t *cursor, uint32_t budget,
                        struct kvd_evict_result *res)
{
        uint64_t end = kvd_index_id_end(c->index);
        uint64_t i = *cursor ? *cursor : 1;

        if (ssd && !c->ssd_tier)
                return true;
        for (; i < end && budget > 0; i++, budget--) {
                const struct kvd_block *b = blk(c, (uint32_t)i);

                if (b->state != KVD_BLOCK_READY || b->ns != id || (b->flags & KVD_BLOCK_DOOMED))
                        continue;
                if (ssd && b->ssd_loc != KVD_LOC_NONE)
                        evict_ssd_admin(c, (uint32_t)i, res);
                else if (!ssd && b->loc != KVD_LOC_NONE)
                        evict_host_admin(c, (uint32_t)i, res);
        }
        *cursor = i;
        if (i >= end)
                kvd_wake_space(c);
        return i >= end;
}

void kvd_cache_ns_copies(const struct kvd_cache *c, uint64_t *host, uint64_t *ssd)
{
        uint64_t end = kvd_index_id_end(c->index);

        memset(host, 0, sizeof(*host) * c->cfg->max_namespaces);
        memset(ssd, 0, sizeof(*ssd) * c->cfg->max_namespaces);
        for (uint64_t i = 1; i < end; i++) {
                const struct kvd_block *b = blk(c, (uint32_t)i);

                if (b->state != KVD_BLOCK_READY)
                        continue;
                host[b->ns] += b->loc != KVD_LOC_NONE;
                ssd[b->ns] += b->ssd_loc != KVD_LOC_NONE;
        }
}

/* Evicts host copy victim: a clean one is dropped at once, a dirty one
 * admitted to SSD is demoted (room comes when the write ends: -EAGAIN if
 * too many demotions are in flight already), any other is dropped
 * (counted). 0 when the copy is gone or going. */
static int evict_host_copy(struct kvd_cache *c, uint32_t victim)
{
        struct kvd_block *b = blk(c, victim);

        if (b->ssd_loc != KVD_LOC_NONE) {
                free_host_copy(c, victim);
                c->evictions++;
                return 0;
        }
        /* Never into a damaged tier: the block is dropped, counted. */
        if (kvd_cache_ssd_ok(c) && admitted(c, b)) {
                if (c->evict_writes >= MAX_EVICT_WRITES)
                        return -EAGAIN;
                if (start_write(c, victim, false, true, true, NULL, NULL, 0) == 0)
                        return 0;
        }
        drop(c, victim, false);
        c->evictions++;
        c->dropped++;
        return 0;
}

/*
 * Frees host room for a block of ns. First its owner's quota: while the
 * block would take the owner over it, the owner's own least recently used
 * copies go (never anybody else's); -EXFULL when all its copies are in use
 * (they are released soon: wait), -EDQUOT when the block is larger than the
 * quota. Then the tier: its least recently used copies go, whoever owns
 * them; -EAGAIN when every page is pinned or demotions are in flight (wait),
 * -ENOSPC when the tier is empty and still has no room.
 */
static int make_room(struct kvd_cache *c, const struct kvd_ns *ns)
{
        struct kvd_tenant *t = ns->tenant;
        int r;

        if (ns->host_charge > t->st.quota.host_bytes) {
                t->st.quota_refusals++;
                return -EDQUOT;
        }
        while (t->st.host_bytes - t->host_leaving + ns->host_charge > t->st.quota.host_bytes) {
                uint32_t victim = kvd_pick_own_victim(c, t, false);

                if (victim == KVD_ID_NONE)
                        return -EXFULL;
                r = evict_host_copy(c, victim);
                if (r < 0)
                        return -EXFULL;
                t->st.quota_evictions++;
        }
        while (!c->host_tier->ops->can_alloc(c->host_tier, ns->klass)) {
                uint32_t victim = kvd_pick_victim(c, ns->klass, &c->evict_rr, false);

                if (victim == KVD_ID_NONE) {
                        struct kvd_tier_usage u;

                        /* Nothing evictable: every page is pinned by a copy in
                         * flight, loading from SSD, or being demoted. All of
                         * those end on their own and wake the space waiters:
                         * wait for them. Only an empty tier is out of room. */
                        c->host_tier->ops->usage(c->host_tier, &u);
                        return c->evict_writes > 0 || u.blocks > 0 ? -EAGAIN : -ENOSPC;
                }
                r = evict_host_copy(c, victim);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- Put ---------------------------------------------------------------- */

int kvd_cache_put_reserve(struct kvd_cache *c, const struct kvd_bkey *k, uint32_t *ret_id,
                          void **ret_host)
{
        const struct kvd_ns *ns = &c->ns[k->ns];
        struct kvd_block *b;
        uint32_t id, loc;
        int r;

        id = kvd_index_find(c->index, k);
        if (id != KVD_ID_NONE) {
                *ret_id = id;
                return blk(c, id)->state == KVD_BLOCK_PENDING ? -EINPROGRESS : -EEXIST;
        }
        r = make_room(c, ns);
        if (r < 0)
                return r;
        r = host_alloc(c, ns, &loc);
        if (r < 0)
                return r;
        r = kvd_index_insert(c->index, k, &id);
        if (r < 0) {
                host_release(c, ns, loc);
                return r;
        }
        kvd_ns_record_added(c, k->ns);
        b = blk(c, id);
        b->state = KVD_BLOCK_PENDING;
        b->loc = loc;
        *ret_id = id;
        *ret_host = (uint8_t *)kvd_cache_host_ptr(c, loc) + c->hdr;
        return 0;
}

int kvd_cache_put_commit(struct kvd_cache *c, uint32_t id, unsigned flags, kvd_wait_fn fn, void *ctx,
                         uint32_t item)
{
        c->puts++;
        if (flags & KVD_PUT_SHARED)
                blk(c, id)->rflags |= KVD_BLOCK_SHARED;
        return kvd_block_commit(c, id, flags & KVD_PUT_DURABLE, fn, ctx, item);
}

int kvd_block_commit(struct kvd_cache *c, uint32_t id, bool durable, kvd_wait_fn fn, void *ctx, uint32_t item)
{
        struct kvd_block *b = blk(c, id);
        uint32_t waiters;
        int r = 0;

        assert(b->state == KVD_BLOCK_PENDING);
        waiters = kvd_take_block_waiters(c, id);
        b->state = KVD_BLOCK_READY;
        c->ns[b->ns].blocks++;
        kvd_lru_update(c, id, true);
        /* A damaged tier makes nothing durable: a durable Put fails (the
         * block stays in host memory); write-through stops (see cache.h). */
        if (c->ssd_tier && durable && !kvd_cache_ssd_ok(c)) {
                r = -EIO;
        } else if (kvd_cache_ssd_ok(c) && (durable || c->cfg->ssd_write_through)) {
                r = start_write(c, id, durable, false, true, fn, ctx, item);
                r = r == 0 ? 1 : r;
        }
        /* Worth sharing: to the remote tier (when it admits it). */
        kvd_share_offer(c, id);
        kvd_wake(c, waiters, true);
        /* A Put that raced a drop of its namespace: stored, then deleted. */
        if (c->ns[b->ns].dropped)
                kvd_cache_delete_id(c, id);
        /* It may go now: room for Puts waiting on its owner's quota. */
        kvd_wake_space(c);
        return r;
}

int kvd_cache_put_durable(struct kvd_cache *c, uint32_t id, kvd_wait_fn fn, void *ctx, uint32_t item)
{
        struct kvd_block *b = blk(c, id);
        struct ssd_ctx *x;
        int r;

        assert(b->state == KVD_BLOCK_READY);
        if (!kvd_cache_ssd_ok(c) || (b->flags & KVD_BLOCK_DOOMED))
                return -EIO;
        if (b->flags & KVD_BLOCK_WRITING)
                return kvd_wait_on_block(c, id, fn, ctx, item) == 0 ? 1 : -ENOMEM;
        if (b->ssd_loc != KVD_LOC_NONE && b->synced)
                return 0;
        if (b->ssd_loc == KVD_LOC_NONE) {
                /* In host memory only (LOADING needs an SSD copy): write it. */
                r = start_write(c, id, true, false, true, NULL, NULL, 0);
                if (r < 0)
                        return r;
                return kvd_wait_on_block(c, id, fn, ctx, item) == 0 ? 1 : -ENOMEM;
        }
        /* On SSD, but written without RWF_DSYNC (a demotion, or found at
         * start-up): an fdatasync makes it durable. */
        x = malloc(sizeof(*x));
        if (!x || kvd_wait_on_block(c, id, fn, ctx, item) < 0) {
                free(x);
                return -ENOMEM;
        }
        *x = (struct ssd_ctx){ .c = c, .id = id, .durable = true };
        b->flags |= KVD_BLOCK_WRITING;
        kvd_lru_update(c, id, false);
        c->ssd_tier->ops->sync(c->ssd_tier, b->ssd_loc, KVD_PRIO_DEMAND, sync_done, x);
        return 1;
}

void kvd_cache_put_abort(struct kvd_cache *c, uint32_t id)
{
        uint32_t waiters;

        assert(blk(c, id)->state == KVD_BLOCK_PENDING);
        waiters = kvd_take_block_waiters(c, id);
        drop(c, id, false);
        kvd_wake(c, waiters, false);
        kvd_wake_space(c);
}

/* ---- Get ---------------------------------------------------------------- */

static void load_done(void *ctx, int r)
{
        struct ssd_ctx *x = ctx;
        struct kvd_cache *c = x->c;
        struct kvd_block *b = blk(c, x->id);
        uint32_t waiters = kvd_take_block_waiters(c, x->id);

        b->flags &= ~KVD_BLOCK_LOADING;
        if (x->speculative)
                c->spec_inflight--;
        if (r == 0) {
                c->promotions++;
                c->ssd_hits++;
                if (waiters)
                        b->flags |= KVD_BLOCK_STAGED;
                kvd_lru_update(c, x->id, true);
        } else {
                /* Torn, corrupt or gone: never served. Its space is reclaimed
                 * and its header wiped so a restart does not bring it back. */
                log_warning("SSD tier: block unreadable (%s): dropped", strerror(-r));
                free_host_copy(c, x->id);
                free_ssd_copy(c, x->id, true);
                c->ssd_misses++;
                if (b->pins == 0 && !(b->flags & KVD_BLOCK_WRITING)) {
                        drop(c, x->id, false);
                        c->dropped++;
                } else {
                        b->flags |= KVD_BLOCK_DOOMED;
                }
        }
        kvd_wake(c, waiters, r == 0);
        if (r == 0)
                kvd_block_settle(c, x->id);
        free(x);
        kvd_wake_space(c);
}

/*
 * Stages SSD-only block id into a host page: reads it at prio, with fn (if
 * any) waiting for it. may_evict: make room by eviction (a client asked);
 * else only free host memory is used (a guess must not push out what is
 * in use). 0 when the read was started, else -errno and nothing changed.
 */
static int start_load(struct kvd_cache *c, uint32_t id, enum kvd_prio prio, bool may_evict, kvd_wait_fn fn,
                      void *ctx, uint32_t item)
{
        struct kvd_block *b = blk(c, id);
        const struct kvd_ns *ns = &c->ns[b->ns];
        struct ssd_ctx *x;
        uint32_t loc;
        int r;

        /* LOADING first, so that making room (which may evict SSD copies to
         * demote others) cannot take this very block. */
        b->flags |= KVD_BLOCK_LOADING;
        kvd_lru_update(c, id, false);
        x = malloc(sizeof(*x));
        if (!x)
                r = -ENOMEM;
        else if (may_evict)
                r = make_room(c, ns);
        else
                r = c->host_tier->ops->can_alloc(c->host_tier, ns->klass) &&
                    ns->tenant->st.host_bytes + ns->host_charge <= ns->tenant->st.quota.host_bytes ? 0 : -ENOSPC;
        if (r == 0)
                r = host_alloc(c, ns, &loc);
        if (r == 0 && fn) {
                r = kvd_wait_on_block(c, id, fn, ctx, item);
                if (r < 0)
                        host_release(c, ns, loc);
        }
        if (r < 0) {
                b->flags &= ~KVD_BLOCK_LOADING;
                kvd_lru_update(c, id, false);
                free(x);
                return r;
        }
        b->loc = loc;
        *x = (struct ssd_ctx){ .c = c, .id = id, .speculative = prio == KVD_PRIO_SPECULATIVE };
        if (x->speculative)
                c->spec_inflight++;
        c->ssd_tier->ops->read(c->ssd_tier, b->ssd_loc, kvd_cache_host_ptr(c, loc), (uint32_t)ns->block_bytes,
                               b->key_hi, b->key_lo, b->layer, prio, load_done, x);
        return 0;
}

/* Layer l's block was just asked for: layer l+1's block of the same key is
 * likely next. If it is on SSD only, stage it into free host memory. */
static void promote_next_layer(struct kvd_cache *c, const struct kvd_block *b)
{
        struct kvd_bkey k = { b->key_hi, b->key_lo, b->ns, b->layer + 1 };
        const struct kvd_block *n;
        uint32_t id;

        if (!c->ssd_tier || !c->cfg->promote_next_layer || c->spec_inflight >= MAX_SPEC_LOADS ||
            k.layer >= c->ns[b->ns].geometry.layers)
                return;
        id = kvd_index_find(c->index, &k);
        if (id == KVD_ID_NONE)
                return;
        n = blk(c, id);
        if (n->state != KVD_BLOCK_READY || n->loc != KVD_LOC_NONE || n->ssd_loc == KVD_LOC_NONE ||
            (n->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_DOOMED | KVD_BLOCK_WRITING)))
                return;
        if (start_load(c, id, KVD_PRIO_SPECULATIVE, false, NULL, NULL, 0) == 0)
                c->spec_promotions++;
}

int kvd_cache_get_pin(struct kvd_cache *c, const struct kvd_bkey *k, unsigned flags, kvd_wait_fn fn,
                      void *ctx, uint32_t item, uint32_t *ret_id, void **ret_host)
{
        bool prefetch = flags & KVD_GET_PREFETCH;
        uint32_t id = kvd_index_find(c->index, k);
        struct kvd_block *b;
        int r;

        /* Being fetched from the remote tier for another request. */
        if (id != KVD_ID_NONE && (b = blk(c, id))->state == KVD_BLOCK_PENDING && (b->rflags & KVD_BLOCK_RGET))
                return kvd_wait_on_block(c, id, fn, ctx, item) == 0 ? -EINPROGRESS : -ENOMEM;
        if (id == KVD_ID_NONE || (b = blk(c, id))->state != KVD_BLOCK_READY || (b->flags & KVD_BLOCK_DOOMED)) {
                c->misses++;
                if (c->ssd_tier)
                        c->ssd_misses++;
                /* Host, SSD, then the remote tier: a shared block only. */
                if (id == KVD_ID_NONE && (flags & KVD_GET_SHARED))
                        return kvd_share_fetch(c, k, fn, ctx, item);
                return -ENOENT;
        }
        if (b->flags & KVD_BLOCK_LOADING)
                return kvd_wait_on_block(c, id, fn, ctx, item) == 0 ? -EINPROGRESS : -ENOMEM;
        if (b->loc != KVD_LOC_NONE) {
                if (b->pins == KVD_BLOCK_PINS_MAX)
                        return -EBUSY;
                b->pins++;
                if (b->reads < UINT8_MAX)
                        b->reads++;
                if (b->flags & KVD_BLOCK_STAGED)
                        b->flags &= ~KVD_BLOCK_STAGED; /* counted as an SSD hit */
                else
                        c->hits++;
                kvd_heat_add(c, b, DEMAND_HEAT);
                kvd_lru_update(c, id, true);
                promote_next_layer(c, b);
                kvd_share_offer(c, id); /* read often enough to be shared now? */
                *ret_id = id;
                *ret_host = (uint8_t *)kvd_cache_host_ptr(c, b->loc) + c->hdr;
                return 0;
        }
        /* On SSD only: stage it in host, then the waiter pins it. */
        r = start_load(c, id, prefetch ? KVD_PRIO_PREFETCH : KVD_PRIO_DEMAND, true, fn, ctx, item);
        if (r < 0)
                return r;
        c->misses++;
        promote_next_layer(c, b);
        return -EINPROGRESS;
}

int kvd_cache_score(struct kvd_cache *c, const struct kvd_bkey *k, float mass)
{
        uint32_t id = kvd_index_find(c->index, k);
        struct kvd_block *b;

        if (id == KVD_ID_NONE || (b = blk(c, id))->state != KVD_BLOCK_READY || !(mass >= 0.0f && mass <= 1.0f))
                return 0;
        kvd_heat_add(c, b, mass);
        c->scores++;
        return 1;
}

void kvd_cache_unpin(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);

        assert(b->state == KVD_BLOCK_READY && b->pins > 0);
        c->gets++;
        b->pins--;
        kvd_block_settle(c, id);
        if (b->pins == 0)
                kvd_wake_space(c);
}

/* ---- lookups, deletes, stats, recovery ------------------------------------ */

bool kvd_cache_contains(const struct kvd_cache *c, const struct kvd_bkey *k)
{
        uint32_t id = kvd_index_find(c->index, k);

        return id != KVD_ID_NONE && blk(c, id)->state == KVD_BLOCK_READY &&
               !(blk(c, id)->flags & KVD_BLOCK_DOOMED);
}

int kvd_cache_delete(struct kvd_cache *c, const struct kvd_bkey *k)
{
        uint32_t id = kvd_index_find(c->index, k);

        return id == KVD_ID_NONE ? 0 : kvd_cache_delete_id(c, id);
}

int kvd_cache_delete_id(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);

        if (b->state != KVD_BLOCK_READY || (b->flags & KVD_BLOCK_DOOMED))
                return 0;
        if (b->pins > 0 || (b->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_WRITING))) {
                b->flags |= KVD_BLOCK_DOOMED;
                kvd_lru_update(c, id, false);
                return 1;
        }
        drop(c, id, true);
        kvd_wake_space(c);
        return 1;
}

void kvd_cache_stats(const struct kvd_cache *c, struct kvd_cache_stats *ret)
{
        *ret = (struct kvd_cache_stats){
                .hits = c->hits, .misses = c->misses, .evictions = c->evictions,
                .puts = c->puts, .gets = c->gets,
                .index_capacity = kvd_index_capacity(c->index),
                .index_entries = kvd_index_count(c->index),
                .index_bytes = kvd_index_bytes(c->index),
                .index_bytes_per_block = kvd_index_bytes_per_block(c->index),
                .have_ssd = c->ssd_tier != NULL,
                .ssd_hits = c->ssd_hits, .ssd_misses = c->ssd_misses, .ssd_evictions = c->ssd_evictions,
                .demotions = c->demotions, .promotions = c->promotions, .dropped = c->dropped,
                .spec_promotions = c->spec_promotions, .scores = c->scores,
                .remote_fetches = c->remote_fetches, .remote_promotions = c->remote_promotions,
                .eviction = c->cfg->eviction == KVD_EVICT_LRU ? "lru" : "heat",
        };
        c->host_tier->ops->usage(c->host_tier, &ret->host);
        if (c->ssd_tier) {
                struct kvd_tier_stats ss;

                c->ssd_tier->ops->stats(c->ssd_tier, &ss);
                ret->ssd = (struct kvd_tier_usage){ ss.capacity_bytes, ss.used_bytes, ss.blocks };
                ret->ssd_reads = ss.reads;
                ret->ssd_writes = ss.writes;
                ret->ssd_read_bytes = ss.read_bytes;
                ret->ssd_busy_ns = ss.busy_ns;
                ret->ssd_read_lat = ss.read_lat;
                ret->ssd_write_lat = ss.write_lat;
                ret->ssd_write_bytes = ss.write_bytes;
                ret->ssd_read_errors = ss.read_errors;
                ret->ssd_write_errors = ss.write_errors;
                ret->crc_failures = ss.crc_failures;
                ret->ssd_full = ss.full;
                ret->ssd_damaged = ss.damaged;
                memcpy(ret->ssd_condition, ss.condition, sizeof(ret->ssd_condition));
        }
}
