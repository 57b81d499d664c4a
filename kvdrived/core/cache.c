/* SPDX-License-Identifier: MIT */
#include "cache.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "host.h"
#include "log.h"
#include "macro.h"
#include "slab.h"
#include "ssd.h"

/* Demotions started to make host room, at most, before a Put waits. */
#define MAX_EVICT_WRITES 64
/* Heat eviction looks at this many of the least recent entries. */
#define HEAT_SAMPLE 16
/* Heat a Get adds, against attention mass reported in [0, 1] per step. */
#define DEMAND_HEAT 0.05f
/* Speculative next-layer loads in flight, at most. */
#define MAX_SPEC_LOADS 16

struct lru {
        uint32_t head, tail;    /* head: least recently used */
};

/* A request item waiting for an event (see cache.h). */
struct waiter {
        kvd_wait_fn fn;
        void *ctx;
        uint32_t item;
        uint32_t next;          /* waiter index, 0: end */
};

/* Context of an SSD write or read of one block. */
struct ssd_ctx {
        struct kvd_cache *c;
        uint32_t id;
        kvd_wait_fn fn;         /* durable Put waiting for the write, or NULL */
        void *fn_ctx;
        uint32_t item;
        bool speculative;       /* a next-layer guess: counted in spec_inflight */
};

struct kvd_cache {
        const struct kvd_config *cfg;
        struct kvd_host *host;
        struct kvd_tier *host_tier;
        struct kvd_ssd *ssd;    /* NULL without an SSD tier */
        uint32_t hdr;           /* bytes of slot header heading each host page */
        struct kvd_tier *ssd_tier;
        struct kvd_index *index;
        struct kvd_ns *ns;      /* cfg->max_namespaces */
        uint32_t n_ns;
        struct lru lru[KVD_SLAB_MAX_CLASSES];     /* host copies that may go */
        struct lru ssd_lru[KVD_SLAB_MAX_CLASSES]; /* SSD copies that may go */
        int evict_rr, ssd_evict_rr;
        uint32_t evict_writes;  /* demotions in flight that free host room */
        struct waiter *waiters; /* [0] unused */
        uint32_t n_waiters, cap_waiters, free_waiter;
        uint32_t space_head, space_tail; /* waiters for host room, FIFO */
        bool waking_space;
        bool stopping;          /* kvd_cache_quiesce() ran: no new waits */
        uint64_t hits, misses, evictions, puts, gets;
        uint64_t ssd_hits, ssd_misses, ssd_evictions, demotions, promotions, dropped;
        uint64_t spec_promotions, scores;
        uint32_t spec_inflight; /* speculative loads in flight */
        struct timespec t0;     /* the heat clock starts here */
};

static struct kvd_block *blk(const struct kvd_cache *c, uint32_t id)
{
        return kvd_index_block(c->index, id);
}

/* ---- heat --------------------------------------------------------------- */

static uint32_t clock_ms(const struct kvd_cache *c)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint32_t)((ts.tv_sec - c->t0.tv_sec) * 1000 + (ts.tv_nsec - c->t0.tv_nsec) / 1000000);
}

/* A block's heat now: its decayed attention mass plus demand. */
static float heat_now(const struct kvd_cache *c, const struct kvd_block *b, uint32_t now)
{
        float age = (float)(now - b->heat_ms) / (float)c->cfg->heat_half_life_ms;

        return b->heat == 0.0f ? 0.0f : b->heat * exp2f(-age);
}

static void heat_add(struct kvd_cache *c, struct kvd_block *b, float mass)
{
        uint32_t now = clock_ms(c);

        b->heat = heat_now(c, b, now) + mass;
        b->heat_ms = now;
}

/* ---- LRU lists ---------------------------------------------------------- */

/* One block sits on up to two lists: its host class's and its SSD class's. */
static uint32_t *link_prev(struct kvd_block *b, bool ssd)
{
        return ssd ? &b->ssd_prev : &b->lru_prev;
}

static uint32_t *link_next(struct kvd_block *b, bool ssd)
{
        return ssd ? &b->ssd_next : &b->lru_next;
}

static void lru_unlink(struct kvd_cache *c, struct lru *l, uint32_t id, bool ssd)
{
        struct kvd_block *b = blk(c, id);
        uint32_t prev = *link_prev(b, ssd), next = *link_next(b, ssd);

        if (prev != KVD_ID_NONE)
                *link_next(blk(c, prev), ssd) = next;
        else
                l->head = next;
        if (next != KVD_ID_NONE)
                *link_prev(blk(c, next), ssd) = prev;
        else
                l->tail = prev;
        *link_prev(b, ssd) = *link_next(b, ssd) = KVD_ID_NONE;
}

static void lru_push(struct kvd_cache *c, struct lru *l, uint32_t id, bool ssd)
{
        struct kvd_block *b = blk(c, id);

        *link_next(b, ssd) = KVD_ID_NONE;
        *link_prev(b, ssd) = l->tail;
        if (l->tail != KVD_ID_NONE)
                *link_next(blk(c, l->tail), ssd) = id;
        else
                l->head = id;
        l->tail = id;
}

static bool host_evictable(const struct kvd_block *b)
{
        return b->state == KVD_BLOCK_READY && b->loc != KVD_LOC_NONE && b->pins == 0 &&
               !(b->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_WRITING));
}

static bool ssd_evictable(const struct kvd_block *b)
{
        return b->state == KVD_BLOCK_READY && b->ssd_loc != KVD_LOC_NONE &&
               !(b->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_WRITING));
}

/* Puts block id on exactly the LRU lists it belongs to; `touch` moves it to
 * the most recent end of the ones it stays on. */
static void lru_update(struct kvd_cache *c, uint32_t id, bool touch)
{
        struct kvd_block *b = blk(c, id);
        bool in_h = b->flags & KVD_BLOCK_IN_HLRU, want_h = host_evictable(b);
        bool in_s = b->flags & KVD_BLOCK_IN_SLRU, want_s = ssd_evictable(b);

        if (in_h && (!want_h || touch)) {
                lru_unlink(c, &c->lru[b->klass], id, false);
                b->flags &= ~KVD_BLOCK_IN_HLRU;
                in_h = false;
        }
        if (want_h && !in_h) {
                lru_push(c, &c->lru[b->klass], id, false);
                b->flags |= KVD_BLOCK_IN_HLRU;
        }
        if (in_s && (!want_s || touch)) {
                lru_unlink(c, &c->ssd_lru[b->ssd_klass], id, true);
                b->flags &= ~KVD_BLOCK_IN_SLRU;
                in_s = false;
        }
        if (want_s && !in_s) {
                lru_push(c, &c->ssd_lru[b->ssd_klass], id, true);
                b->flags |= KVD_BLOCK_IN_SLRU;
        }
}

/* ---- waiters ------------------------------------------------------------ */

static int waiter_new(struct kvd_cache *c, kvd_wait_fn fn, void *ctx, uint32_t item, uint32_t *ret)
{
        uint32_t w = c->free_waiter;

        if (w) {
                c->free_waiter = c->waiters[w].next;
        } else {
                if (c->n_waiters + 1 >= c->cap_waiters) {
                        uint32_t cap = c->cap_waiters ? c->cap_waiters * 2 : 64;
                        struct waiter *nw = realloc(c->waiters, cap * sizeof(*nw));

                        if (!nw)
                                return -ENOMEM;
                        c->waiters = nw;
                        c->cap_waiters = cap;
                }
                w = ++c->n_waiters;
        }
        c->waiters[w] = (struct waiter){ fn, ctx, item, 0 };
        *ret = w;
        return 0;
}

/* Block waiters hang off lru_prev of a PENDING or LOADING block. */
static int wait_on_block(struct kvd_cache *c, uint32_t id, kvd_wait_fn fn, void *ctx, uint32_t item)
{
        struct kvd_block *b = blk(c, id);
        uint32_t w;
        int r = waiter_new(c, fn, ctx, item, &w);

        if (r < 0)
                return r;
        c->waiters[w].next = b->lru_prev;
        b->lru_prev = w;
        return 0;
}

static uint32_t take_block_waiters(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);
        uint32_t head = b->lru_prev;

        b->lru_prev = KVD_ID_NONE;
        return head;
}

/* Runs a taken list, once the block's new state is in place: a callback may
 * complete a request, whose owner may then touch the cache again. */
static void wake(struct kvd_cache *c, uint32_t w, bool ok)
{
        while (w) {
                struct waiter x = c->waiters[w];

                c->waiters[w].next = c->free_waiter;
                c->free_waiter = w;
                x.fn(x.ctx, x.item, ok);
                w = x.next;
        }
}

int kvd_cache_wait_pending(struct kvd_cache *c, uint32_t id, kvd_wait_fn fn, void *ctx, uint32_t item)
{
        assert(blk(c, id)->state == KVD_BLOCK_PENDING);
        return wait_on_block(c, id, fn, ctx, item);
}

int kvd_cache_wait_space(struct kvd_cache *c, kvd_wait_fn fn, void *ctx, uint32_t item)
{
        uint32_t w;
        int r;

        if (c->stopping)
                return -ECANCELED;
        r = waiter_new(c, fn, ctx, item, &w);
        if (r < 0)
                return r;
        if (c->space_tail)
                c->waiters[c->space_tail].next = w;
        else
                c->space_head = w;
        c->space_tail = w;
        return 0;
}

/* Host room may have been made: let the waiters try again, oldest first,
 * until one has to wait again (the rest would too). */
static void wake_space(struct kvd_cache *c)
{
        if (c->waking_space)
                return; /* a retry freed room: the loop below goes on anyway */
        c->waking_space = true;
        while (c->space_head) {
                uint32_t w = c->space_head, tail_before;
                struct waiter x = c->waiters[w];

                c->space_head = x.next;
                if (!c->space_head)
                        c->space_tail = 0;
                c->waiters[w].next = c->free_waiter;
                c->free_waiter = w;
                tail_before = c->space_tail;
                x.fn(x.ctx, x.item, true);
                if (c->space_tail != tail_before)
                        break;  /* it queued itself again: no room yet */
        }
        c->waking_space = false;
}

void kvd_cache_quiesce(struct kvd_cache *c)
{
        c->stopping = true;
        while (c->space_head) {
                uint32_t w = c->space_head;
                struct waiter x = c->waiters[w];

                c->space_head = x.next;
                if (!c->space_head)
                        c->space_tail = 0;
                c->waiters[w].next = c->free_waiter;
                c->free_waiter = w;
                x.fn(x.ctx, x.item, false);
        }
        if (c->ssd)
                kvd_ssd_drain(c->ssd);
}

/* ---- set-up ------------------------------------------------------------- */

static bool recover_slot(void *ctx, const struct kvd_slot_header *h, uint32_t loc, int klass);

int kvd_cache_new(const struct kvd_config *cfg, struct kvd_cache **ret)
{
        struct kvd_cache *c;
        uint64_t expected;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->cfg = cfg;
        clock_gettime(CLOCK_MONOTONIC, &c->t0);
        /* With an SSD tier, host pages are laid out like SSD slots (header,
         * then payload), so one I/O moves a block: see tiers/ssd.h. */
        c->hdr = cfg->ssd_bytes ? KVD_SLOT_HDR_BYTES : 0;
        c->ns = calloc(cfg->max_namespaces, sizeof(*c->ns));
        if (!c->ns) {
                r = -ENOMEM;
                goto err;
        }
        /* The SSD directories first: a daemon that may not have them (another
         * holds them, one is missing) stops before it maps and mlocks memory. */
        if (cfg->ssd_bytes) {
                r = kvd_ssd_new(cfg, &c->ssd);
                if (r < 0)
                        goto err;
        }
        r = kvd_host_new(cfg, &c->host);
        if (r < 0)
                goto err;
        c->host_tier = kvd_host_tier(c->host);
        /* A 16 KiB block is small for KV (one layer, all heads, 16+ tokens). */
        expected = cfg->index_blocks ? cfg->index_blocks : (cfg->host_bytes + cfg->ssd_bytes) / (16u << 10);
        r = kvd_index_new(expected, &c->index);
        if (r < 0)
                goto err;
        if (cfg->ssd_bytes) {
                struct timespec t0, t1;
                int64_t kept;

                kvd_ssd_attach_host(c->ssd, c->host);
                c->ssd_tier = kvd_ssd_tier(c->ssd);
                clock_gettime(CLOCK_MONOTONIC, &t0);
                kept = kvd_ssd_recover(c->ssd, recover_slot, c);
                clock_gettime(CLOCK_MONOTONIC, &t1);
                if (kept < 0) {
                        r = (int)kept;
                        log_error("SSD tier: recovery failed: %s", strerror(-r));
                        goto err;
                }
                log_info("SSD tier: recovered %" PRId64 " blocks in %u namespaces in %.3f s", kept, c->n_ns,
                         (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
        }
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
        kvd_ssd_free(c->ssd);   /* its callbacks still use the index */
        kvd_index_free(c->index);
        free(c->waiters);
        if (c->host_tier)
                c->host_tier->ops->destroy(c->host_tier);
        free(c->ns);
        free(c);
        return NULL;
}

int kvd_cache_ssd_fd(const struct kvd_cache *c)
{
        return c->ssd ? kvd_ssd_fd(c->ssd) : -1;
}

void kvd_cache_ssd_reap(struct kvd_cache *c)
{
        if (c->ssd)
                kvd_ssd_reap(c->ssd);
}

void kvd_cache_flush(struct kvd_cache *c)
{
        if (c->ssd)
                kvd_ssd_flush(c->ssd);
}

bool kvd_cache_has_ssd(const struct kvd_cache *c)
{
        return c->ssd != NULL;
}

bool kvd_cache_ssd_damaged(const struct kvd_cache *c)
{
        return c->ssd && kvd_ssd_damaged(c->ssd);
}

void kvd_cache_tick(struct kvd_cache *c)
{
        if (c->ssd && !kvd_ssd_damaged(c->ssd))
                kvd_ssd_check(c->ssd);
}

void kvd_cache_host_region(const struct kvd_cache *c, void **ret_base, uint64_t *ret_len,
                           uint64_t *ret_extent_bytes)
{
        kvd_host_region(c->host, ret_base, ret_len);
        *ret_extent_bytes = c->cfg->host_extent_bytes;
}

/* ---- namespaces --------------------------------------------------------- */

int kvd_geometry_block_bytes(const struct kvd_geometry *g, uint64_t *ret)
{
        static const uint32_t dtype_size[] = { [1] = 2, [2] = 2, [3] = 4, [4] = 1 };
        uint64_t b;

        if (!g->layers || !g->kv_heads || !g->head_dim || !g->block_tokens ||
            g->dtype >= ARRAY_SIZE(dtype_size) || !dtype_size[g->dtype])
                return -EINVAL;
        b = 2ull * g->kv_heads * g->head_dim;
        if (b > UINT32_MAX || b * g->block_tokens > UINT32_MAX ||
            b * g->block_tokens * dtype_size[g->dtype] > UINT32_MAX)
                return -EOVERFLOW;
        *ret = b * g->block_tokens * dtype_size[g->dtype];
        return 0;
}

int kvd_cache_ns_register(struct kvd_cache *c, const char *name, const struct kvd_geometry *g,
                          uint32_t *ret_id, bool *ret_created)
{
        int r, klass, ssd_klass = -1;
        uint64_t bytes;
        struct kvd_ns *ns;

        if (!name || !*name || strlen(name) >= KVD_NS_NAME_MAX)
                return -EINVAL;
        r = kvd_geometry_block_bytes(g, &bytes);
        if (r < 0 || g->layers > 65536)
                return -EINVAL;
        for (uint32_t i = 0; i < c->n_ns; i++) {
                if (strcmp(c->ns[i].name, name) != 0)
                        continue;
                if (memcmp(&c->ns[i].geometry, g, sizeof(*g)) != 0)
                        return -EEXIST;
                *ret_id = c->ns[i].id;
                *ret_created = false;
                return 0;
        }
        if (c->n_ns == c->cfg->max_namespaces)
                return -ENOSPC;
        klass = c->host_tier->ops->class_for(c->host_tier, bytes + c->hdr);
        if (klass >= 0 && c->ssd_tier)
                ssd_klass = c->ssd_tier->ops->class_for(c->ssd_tier, bytes);
        if (klass < 0 || ssd_klass < -1)
                return (klass == -E2BIG || ssd_klass == -E2BIG) ? -E2BIG : -ENOSPC;
        ns = &c->ns[c->n_ns];
        *ns = (struct kvd_ns){ .id = c->n_ns, .geometry = *g, .block_bytes = bytes, .klass = klass,
                               .ssd_klass = ssd_klass };
        memcpy(ns->name, name, strlen(name) + 1);
        c->n_ns++;
        log_info("namespace %u '%s': %u layers, %u kv heads, head dim %u, dtype %u, %u tokens/block, "
                 "%" PRIu64 " bytes/block", ns->id, ns->name, g->layers, g->kv_heads, g->head_dim, g->dtype,
                 g->block_tokens, bytes);
        *ret_id = ns->id;
        *ret_created = true;
        return 0;
}

const struct kvd_ns *kvd_cache_ns(const struct kvd_cache *c, uint32_t id)
{
        return id < c->n_ns ? &c->ns[id] : NULL;
}

uint32_t kvd_cache_ns_count(const struct kvd_cache *c)
{
        return c->n_ns;
}

/* ---- dropping copies ---------------------------------------------------- */

static void free_host_copy(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);

        c->host_tier->ops->free(c->host_tier, b->loc);
        b->loc = KVD_LOC_NONE;
        b->flags &= ~KVD_BLOCK_EVICT;
        lru_update(c, id, false);
}

static void free_ssd_copy(struct kvd_cache *c, uint32_t id, bool invalidate)
{
        struct kvd_block *b = blk(c, id);

        if (invalidate)
                kvd_ssd_discard(c->ssd, b->ssd_loc);
        else
                c->ssd_tier->ops->free(c->ssd_tier, b->ssd_loc);
        b->ssd_loc = KVD_LOC_NONE;
        lru_update(c, id, false);
}

/* Removes a block and frees every copy. invalidate: also wipe its SSD
 * header, so that a deleted block stays deleted across a restart. */
static void drop(struct kvd_cache *c, uint32_t id, bool invalidate)
{
        struct kvd_block *b = blk(c, id);

        assert(!(b->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_WRITING)) && b->pins == 0);
        if (b->loc != KVD_LOC_NONE)
                free_host_copy(c, id);
        if (b->ssd_loc != KVD_LOC_NONE)
                free_ssd_copy(c, id, invalidate);
        lru_update(c, id, false);
        if (b->state == KVD_BLOCK_READY)
                c->ns[b->ns].blocks--;
        kvd_index_remove(c->index, id);
}

/* A block no request uses any more: finish a pending delete. */
static void settle(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);

        if ((b->flags & KVD_BLOCK_DOOMED) && b->pins == 0 &&
            !(b->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_WRITING)))
                drop(c, id, true);
        else
                lru_update(c, id, false);
}

/* ---- SSD writes (demotion, write-through, durable Puts) ------------------ */

/* The entry to evict from klass's list (else from the other classes in
 * turn; KVD_ID_NONE if every list is empty): with LRU eviction its least
 * recent entry; with heat eviction the coldest of its HEAT_SAMPLE least
 * recent ones, so that blocks attention keeps using stay even when others
 * were touched later (sampling, as Redis approximates LFU). */
static uint32_t pick_victim(const struct kvd_cache *c, const struct lru *lists, int klass, int *rr, bool ssd)
{
        uint32_t id = KVD_ID_NONE, best, now;
        float best_heat;

        if (lists[klass].head != KVD_ID_NONE) {
                id = lists[klass].head;
        } else {
                for (int i = 0; i < KVD_SLAB_MAX_CLASSES; i++) {
                        int k = (*rr + i) % KVD_SLAB_MAX_CLASSES;

                        if (lists[k].head != KVD_ID_NONE) {
                                *rr = (k + 1) % KVD_SLAB_MAX_CLASSES;
                                id = lists[k].head;
                                break;
                        }
                }
        }
        if (id == KVD_ID_NONE || c->cfg->eviction == KVD_EVICT_LRU)
                return id;
        now = clock_ms(c);
        best = id;
        best_heat = heat_now(c, blk(c, id), now);
        for (int n = 1; n < HEAT_SAMPLE; n++) {
                float h;

                id = *link_next(blk(c, id), ssd);
                if (id == KVD_ID_NONE)
                        break;
                h = heat_now(c, blk(c, id), now);
                if (h < best_heat) {
                        best = id;
                        best_heat = h;
                }
        }
        return best;
}

/* An SSD slot of klass; with may_evict, evicting the coldest SSD copies: a
 * block that still has its host copy just becomes dirty again; one that has
 * not is gone (counted). */
static int ssd_alloc_slot(struct kvd_cache *c, int klass, bool may_evict, uint32_t *ret_loc)
{
        for (;;) {
                int r = c->ssd_tier->ops->alloc(c->ssd_tier, klass, ret_loc);
                uint32_t victim;

                if (r != -ENOSPC || !may_evict)
                        return r;
                victim = pick_victim(c, c->ssd_lru, klass, &c->ssd_evict_rr, true);
                if (victim == KVD_ID_NONE)
                        return -ENOSPC;
                c->ssd_evictions++;
                if (blk(c, victim)->loc != KVD_LOC_NONE) {
                        free_ssd_copy(c, victim, false);
                } else {
                        drop(c, victim, false);
                        c->dropped++;
                }
        }
}

static void write_done(void *ctx, int r)
{
        struct ssd_ctx *x = ctx;
        struct kvd_cache *c = x->c;
        struct kvd_block *b = blk(c, x->id);
        bool evict = b->flags & KVD_BLOCK_EVICT;

        b->flags &= ~(KVD_BLOCK_WRITING | KVD_BLOCK_EVICT);
        if (evict)
                c->evict_writes--;
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
        settle(c, x->id);
        free(x);
        wake_space(c);
}

/* Writes block id's host copy to a new SSD slot (may_evict: making room for
 * it on SSD). evict: free the host copy once written (demotion). Returns 0
 * (write_done will run, and fn with it), or -errno when no write started. */
static int start_write(struct kvd_cache *c, uint32_t id, bool durable, bool evict, bool may_evict, kvd_wait_fn fn,
                       void *ctx, uint32_t item)
{
        struct kvd_block *b = blk(c, id);
        const struct kvd_ns *ns = &c->ns[b->ns];
        struct kvd_slot_header tmpl = { 0 };
        struct ssd_ctx *x;
        uint32_t loc;
        int r;

        assert(b->loc != KVD_LOC_NONE && b->ssd_loc == KVD_LOC_NONE && !(b->flags & KVD_BLOCK_WRITING));
        x = malloc(sizeof(*x));
        if (!x)
                return -ENOMEM;
        r = ssd_alloc_slot(c, ns->ssd_klass, may_evict, &loc);
        if (r < 0) {
                free(x);
                return r;
        }
        *x = (struct ssd_ctx){ .c = c, .id = id, .fn = fn, .fn_ctx = ctx, .item = item };
        b->ssd_loc = loc;
        b->ssd_klass = (uint8_t)ns->ssd_klass;
        b->flags |= KVD_BLOCK_WRITING | (evict ? KVD_BLOCK_EVICT : 0);
        if (evict)
                c->evict_writes++;
        lru_update(c, id, false);
        tmpl.key_hi = b->key_hi;
        tmpl.key_lo = b->key_lo;
        tmpl.layer = b->layer;
        tmpl.ns_layers = ns->geometry.layers;
        tmpl.ns_kv_heads = ns->geometry.kv_heads;
        tmpl.ns_head_dim = ns->geometry.head_dim;
        tmpl.ns_dtype = ns->geometry.dtype;
        tmpl.ns_block_tokens = ns->geometry.block_tokens;
        memcpy(tmpl.ns_name, ns->name, sizeof(tmpl.ns_name));
        kvd_ssd_write(c->ssd, loc, &tmpl, kvd_host_ptr(c->host, b->loc), (uint32_t)ns->block_bytes, durable,
                      durable || fn ? KVD_SSD_DEMAND : KVD_SSD_BACKGROUND, write_done, x);
        return 0;
}

static bool admitted(const struct kvd_cache *c, const struct kvd_block *b)
{
        return b->reads >= c->cfg->ssd_admit_reads && !(b->flags & KVD_BLOCK_NO_SSD);
}

uint64_t kvd_cache_write_back(struct kvd_cache *c)
{
        uint64_t started = 0;

        if (!c->ssd || kvd_ssd_damaged(c->ssd))
                return 0;
        for (int k = 0; k < KVD_SLAB_MAX_CLASSES; k++) {
                uint32_t id = c->lru[k].head;

                while (id != KVD_ID_NONE) {
                        struct kvd_block *b = blk(c, id);
                        uint32_t next = b->lru_next;

                        if (b->ssd_loc == KVD_LOC_NONE && admitted(c, b)) {
                                /* Only free space: evicting one copy to save another gains nothing. */
                                if (start_write(c, id, false, false, false, NULL, NULL, 0) < 0)
                                        return started;
                                started++;
                        }
                        id = next;
                }
        }
        return started;
}

/* Frees host room for klass: least recently used copies go first; a clean
 * one is dropped at once, a dirty one admitted to SSD is demoted (room comes
 * when the write ends: -EAGAIN), any other is dropped (counted). */
static int make_room(struct kvd_cache *c, int klass)
{
        while (!kvd_host_can_alloc(c->host, klass)) {
                uint32_t victim = pick_victim(c, c->lru, klass, &c->evict_rr, false);
                struct kvd_block *b;

                if (victim == KVD_ID_NONE) {
                        struct kvd_tier_usage u;

                        /* Nothing evictable: every page is pinned by a copy in
                         * flight, loading from SSD, or being demoted. All of
                         * those end on their own and wake the space waiters:
                         * wait for them. Only an empty tier is out of room. */
                        c->host_tier->ops->usage(c->host_tier, &u);
                        return c->evict_writes > 0 || u.blocks > 0 ? -EAGAIN : -ENOSPC;
                }
                b = blk(c, victim);
                if (b->ssd_loc != KVD_LOC_NONE) {
                        free_host_copy(c, victim);
                        c->evictions++;
                        continue;
                }
                /* Never into a damaged tier: the block is dropped, counted. */
                if (c->ssd && admitted(c, b) && !kvd_ssd_damaged(c->ssd)) {
                        if (c->evict_writes >= MAX_EVICT_WRITES)
                                return -EAGAIN;
                        if (start_write(c, victim, false, true, true, NULL, NULL, 0) == 0)
                                continue;
                }
                drop(c, victim, false);
                c->evictions++;
                c->dropped++;
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
                if (blk(c, id)->state != KVD_BLOCK_PENDING)
                        return -EEXIST;
                *ret_id = id;
                return -EINPROGRESS;
        }
        r = make_room(c, ns->klass);
        if (r < 0)
                return r;
        r = c->host_tier->ops->alloc(c->host_tier, ns->klass, &loc);
        if (r < 0)
                return r;
        r = kvd_index_insert(c->index, k, &id);
        if (r < 0) {
                c->host_tier->ops->free(c->host_tier, loc);
                return r;
        }
        b = blk(c, id);
        b->state = KVD_BLOCK_PENDING;
        b->klass = (uint8_t)ns->klass;
        b->loc = loc;
        *ret_id = id;
        *ret_host = (uint8_t *)kvd_host_ptr(c->host, loc) + c->hdr;
        return 0;
}

int kvd_cache_put_commit(struct kvd_cache *c, uint32_t id, bool durable, kvd_wait_fn fn, void *ctx,
                         uint32_t item)
{
        struct kvd_block *b = blk(c, id);
        uint32_t waiters;
        int r = 0;

        assert(b->state == KVD_BLOCK_PENDING);
        waiters = take_block_waiters(c, id);
        b->state = KVD_BLOCK_READY;
        c->ns[b->ns].blocks++;
        c->puts++;
        lru_update(c, id, true);
        /* A damaged tier makes nothing durable: a durable Put fails (the
         * block stays in host memory); write-through stops (see cache.h). */
        if (c->ssd && durable && kvd_ssd_damaged(c->ssd)) {
                r = -EIO;
        } else if (c->ssd && (durable || c->cfg->ssd_write_through) && !kvd_ssd_damaged(c->ssd)) {
                r = start_write(c, id, durable, false, true, fn, ctx, item);
                r = r == 0 ? 1 : r;
        }
        wake(c, waiters, true);
        return r;
}

void kvd_cache_put_abort(struct kvd_cache *c, uint32_t id)
{
        uint32_t waiters;

        assert(blk(c, id)->state == KVD_BLOCK_PENDING);
        waiters = take_block_waiters(c, id);
        drop(c, id, false);
        wake(c, waiters, false);
        wake_space(c);
}

/* ---- Get ---------------------------------------------------------------- */

static void load_done(void *ctx, int r)
{
        struct ssd_ctx *x = ctx;
        struct kvd_cache *c = x->c;
        struct kvd_block *b = blk(c, x->id);
        uint32_t waiters = take_block_waiters(c, x->id);

        b->flags &= ~KVD_BLOCK_LOADING;
        if (x->speculative)
                c->spec_inflight--;
        if (r == 0) {
                c->promotions++;
                c->ssd_hits++;
                if (waiters)
                        b->flags |= KVD_BLOCK_STAGED;
                lru_update(c, x->id, true);
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
        wake(c, waiters, r == 0);
        if (r == 0)
                settle(c, x->id);
        free(x);
        wake_space(c);
}

/*
 * Stages SSD-only block id into a host page: reads it at prio, with fn (if
 * any) waiting for it. may_evict: make room by eviction (a client asked);
 * else only free host memory is used (a guess must not push out what is
 * in use). 0 when the read was started, else -errno and nothing changed.
 */
static int start_load(struct kvd_cache *c, uint32_t id, enum kvd_ssd_prio prio, bool may_evict, kvd_wait_fn fn,
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
        lru_update(c, id, false);
        x = malloc(sizeof(*x));
        r = !x ? -ENOMEM : may_evict ? make_room(c, ns->klass) : kvd_host_can_alloc(c->host, ns->klass) ? 0 : -ENOSPC;
        if (r == 0)
                r = c->host_tier->ops->alloc(c->host_tier, ns->klass, &loc);
        if (r == 0 && fn) {
                r = wait_on_block(c, id, fn, ctx, item);
                if (r < 0)
                        c->host_tier->ops->free(c->host_tier, loc);
        }
        if (r < 0) {
                b->flags &= ~KVD_BLOCK_LOADING;
                lru_update(c, id, false);
                free(x);
                return r;
        }
        b->loc = loc;
        *x = (struct ssd_ctx){ .c = c, .id = id, .speculative = prio == KVD_SSD_SPECULATIVE };
        if (x->speculative)
                c->spec_inflight++;
        kvd_ssd_read(c->ssd, b->ssd_loc, kvd_host_ptr(c->host, loc), (uint32_t)ns->block_bytes, b->key_hi,
                     b->key_lo, b->layer, prio, load_done, x);
        return 0;
}

/* Layer l's block was just asked for: layer l+1's block of the same key is
 * likely next. If it is on SSD only, stage it into free host memory. */
static void promote_next_layer(struct kvd_cache *c, const struct kvd_block *b)
{
        struct kvd_bkey k = { b->key_hi, b->key_lo, b->ns, b->layer + 1 };
        const struct kvd_block *n;
        uint32_t id;

        if (!c->ssd || !c->cfg->promote_next_layer || c->spec_inflight >= MAX_SPEC_LOADS ||
            k.layer >= c->ns[b->ns].geometry.layers)
                return;
        id = kvd_index_find(c->index, &k);
        if (id == KVD_ID_NONE)
                return;
        n = blk(c, id);
        if (n->state != KVD_BLOCK_READY || n->loc != KVD_LOC_NONE || n->ssd_loc == KVD_LOC_NONE ||
            (n->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_DOOMED | KVD_BLOCK_WRITING)))
                return;
        if (start_load(c, id, KVD_SSD_SPECULATIVE, false, NULL, NULL, 0) == 0)
                c->spec_promotions++;
}

int kvd_cache_get_pin(struct kvd_cache *c, const struct kvd_bkey *k, bool prefetch, kvd_wait_fn fn,
                      void *ctx, uint32_t item, uint32_t *ret_id, void **ret_host)
{
        uint32_t id = kvd_index_find(c->index, k);
        struct kvd_block *b;
        int r;

        if (id == KVD_ID_NONE || (b = blk(c, id))->state != KVD_BLOCK_READY || (b->flags & KVD_BLOCK_DOOMED)) {
                c->misses++;
                if (c->ssd)
                        c->ssd_misses++;
                return -ENOENT;
        }
        if (b->flags & KVD_BLOCK_LOADING)
                return wait_on_block(c, id, fn, ctx, item) == 0 ? -EINPROGRESS : -ENOMEM;
        if (b->loc != KVD_LOC_NONE) {
                if (b->pins == UINT16_MAX)
                        return -EBUSY;
                b->pins++;
                if (b->reads < UINT8_MAX)
                        b->reads++;
                if (b->flags & KVD_BLOCK_STAGED)
                        b->flags &= ~KVD_BLOCK_STAGED; /* counted as an SSD hit */
                else
                        c->hits++;
                heat_add(c, b, DEMAND_HEAT);
                lru_update(c, id, true);
                promote_next_layer(c, b);
                *ret_id = id;
                *ret_host = (uint8_t *)kvd_host_ptr(c->host, b->loc) + c->hdr;
                return 0;
        }
        /* On SSD only: stage it in host, then the waiter pins it. */
        r = start_load(c, id, prefetch ? KVD_SSD_PREFETCH : KVD_SSD_DEMAND, true, fn, ctx, item);
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
        heat_add(c, b, mass);
        c->scores++;
        return 1;
}

void kvd_cache_unpin(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);

        assert(b->state == KVD_BLOCK_READY && b->pins > 0);
        c->gets++;
        b->pins--;
        settle(c, id);
        if (b->pins == 0)
                wake_space(c);
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
        struct kvd_block *b;

        if (id == KVD_ID_NONE)
                return 0;
        b = blk(c, id);
        if (b->state != KVD_BLOCK_READY || (b->flags & KVD_BLOCK_DOOMED))
                return 0;
        if (b->pins > 0 || (b->flags & (KVD_BLOCK_LOADING | KVD_BLOCK_WRITING))) {
                b->flags |= KVD_BLOCK_DOOMED;
                lru_update(c, id, false);
                return 1;
        }
        drop(c, id, true);
        wake_space(c);
        return 1;
}

static bool recover_slot(void *ctx, const struct kvd_slot_header *h, uint32_t loc, int klass)
{
        struct kvd_cache *c = ctx;
        struct kvd_geometry g = { h->ns_layers, h->ns_kv_heads, h->ns_head_dim, h->ns_dtype, h->ns_block_tokens };
        char name[KVD_NS_NAME_MAX];
        struct kvd_bkey k;
        struct kvd_block *b;
        bool created;
        uint32_t ns, id;

        memcpy(name, h->ns_name, sizeof(name));
        name[sizeof(name) - 1] = '\0';
        if (kvd_cache_ns_register(c, name, &g, &ns, &created) < 0 || c->ns[ns].ssd_klass != klass ||
            c->ns[ns].block_bytes != h->payload_len || h->layer >= g.layers)
                return false;
        k = (struct kvd_bkey){ h->key_hi, h->key_lo, ns, h->layer };
        /* A second copy of a key (left by a crash between writing a new copy
         * and freeing an old one) holds the same bytes: keep the first. */
        if (kvd_index_insert(c->index, &k, &id) < 0)
                return false;
        b = blk(c, id);
        b->state = KVD_BLOCK_READY;
        b->klass = (uint8_t)c->ns[ns].klass;
        b->ssd_klass = (uint8_t)klass;
        b->ssd_loc = loc;
        c->ns[ns].blocks++;
        lru_update(c, id, false);
        return true;
}

void kvd_cache_stats(const struct kvd_cache *c, struct kvd_cache_stats *ret)
{
        *ret = (struct kvd_cache_stats){
                .hits = c->hits, .misses = c->misses, .evictions = c->evictions,
                .puts = c->puts, .gets = c->gets,
                .index_capacity = kvd_index_capacity(c->index),
                .index_entries = kvd_index_count(c->index),
                .index_bytes = kvd_index_bytes(c->index),
                .index_bytes_per_block = kvd_index_bytes_per_block(),
                .have_ssd = c->ssd != NULL,
                .ssd_hits = c->ssd_hits, .ssd_misses = c->ssd_misses, .ssd_evictions = c->ssd_evictions,
                .demotions = c->demotions, .promotions = c->promotions, .dropped = c->dropped,
                .spec_promotions = c->spec_promotions, .scores = c->scores,
                .eviction = c->cfg->eviction == KVD_EVICT_LRU ? "lru" : "heat",
        };
        c->host_tier->ops->usage(c->host_tier, &ret->host);
        if (c->ssd) {
                struct kvd_ssd_stats ss;

                kvd_ssd_stats(c->ssd, &ss);
                ret->ssd = (struct kvd_tier_usage){ ss.capacity_bytes, ss.used_bytes, ss.blocks };
                ret->ssd_reads = ss.reads;
                ret->ssd_writes = ss.writes;
                ret->ssd_read_bytes = ss.read_bytes;
                ret->ssd_busy_ns = ss.busy_ns;
                ret->ssd_write_bytes = ss.write_bytes;
                ret->ssd_read_errors = ss.read_errors;
                ret->ssd_write_errors = ss.write_errors;
                ret->crc_failures = ss.crc_failures;
                ret->ssd_full = ss.full;
                ret->ssd_damaged = ss.damaged;
                memcpy(ret->ssd_condition, ss.condition, sizeof(ret->ssd_condition));
        }
}
