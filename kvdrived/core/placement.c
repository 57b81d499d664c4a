/* SPDX-License-Identifier: MIT */
/*
 * Placement: which copy leaves a full tier. Every tenant keeps its blocks'
 * copies in use order, one list per size class and tier; a block's heat is
 * its decayed attention mass plus demand, and its heat_ms the time of its
 * last use. The tier's victim is the oldest head among the tenants' lists
 * (or, with heat eviction, the coldest of the HEAT_SAMPLE least recent of
 * that list); a tenant over its quota takes its own oldest instead.
 */
#include <math.h>

#include "cache-internal.h"
#include "clock.h"

/* Heat eviction looks at this many of the least recent entries. */
#define HEAT_SAMPLE 16
/* Half-lives a heat may be scaled up by before it is re-based (float range). */
#define HEAT_RESCALE_MAX 60.0f

/* ---- heat --------------------------------------------------------------- */

static uint32_t clock_ms(const struct kvd_cache *c)
{
        return (uint32_t)((kvd_now_ns() - c->t0_ns) / 1000000);
}

/* A block's heat now: its decayed attention mass plus demand. */
static float heat_now(const struct kvd_cache *c, const struct kvd_block *b, uint32_t now)
{
        float age = (float)(now - b->heat_ms) / (float)c->cfg->heat_half_life_ms;

        return b->heat == 0.0f ? 0.0f : b->heat * exp2f(-age);
}

/*
 * heat_ms doubles as the time of the block's last use (see touch_block()), which
 * orders the lists of different tenants against each other, so a score
 * must not move it: the mass is scaled up to the block's time base instead
 * (exact: decay is a factor), unless that would leave float's range.
 */
void kvd_heat_add(struct kvd_cache *c, struct kvd_block *b, float mass)
{
        uint32_t now = clock_ms(c);
        float age = (float)(now - b->heat_ms) / (float)c->cfg->heat_half_life_ms;

        if (age <= HEAT_RESCALE_MAX) {
                b->heat += mass * exp2f(age);
        } else {
                b->heat = heat_now(c, b, now) + mass;
                b->heat_ms = now;
        }
}

/* The block was used: its heat re-based to now, which stamps the use. */
static void touch_block(struct kvd_cache *c, struct kvd_block *b)
{
        uint32_t now = clock_ms(c);

        b->heat = heat_now(c, b, now);
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
void kvd_lru_update(struct kvd_cache *c, uint32_t id, bool touch)
{
        struct kvd_block *b = blk(c, id);
        const struct kvd_ns *ns = &c->ns[b->ns];        /* its size classes: the record keeps none */
        struct kvd_tenant *t = ns->tenant;
        bool in_h = b->flags & KVD_BLOCK_IN_HLRU, want_h = host_evictable(b);
        bool in_s = b->flags & KVD_BLOCK_IN_SLRU, want_s = ssd_evictable(b);

        if (touch)
                touch_block(c, b);
        if (in_h && (!want_h || touch)) {
                lru_unlink(c, &t->lru[ns->klass], id, false);
                b->flags &= ~KVD_BLOCK_IN_HLRU;
                in_h = false;
        }
        if (want_h && !in_h) {
                lru_push(c, &t->lru[ns->klass], id, false);
                b->flags |= KVD_BLOCK_IN_HLRU;
        }
        if (in_s && (!want_s || touch)) {
                lru_unlink(c, &t->ssd_lru[ns->ssd_klass], id, true);
                b->flags &= ~KVD_BLOCK_IN_SLRU;
                in_s = false;
        }
        if (want_s && !in_s) {
                lru_push(c, &t->ssd_lru[ns->ssd_klass], id, true);
                b->flags |= KVD_BLOCK_IN_SLRU;
        }
}

/* Keeps in *best the list whose head was used longest ago (heat_ms wraps:
 * compare differences). */
static void keep_older(const struct kvd_cache *c, struct lru *l, struct lru **best, uint32_t *best_ms)
{
        uint32_t ms;

        if (l->head == KVD_ID_NONE)
                return;
        ms = blk(c, l->head)->heat_ms;
        if (!*best || (int32_t)(ms - *best_ms) < 0) {
                *best = l;
                *best_ms = ms;
        }
}

/* The list of the tenant whose class-klass list starts with the least
 * recently used block of the tier (lists are in use order and every use
 * stamps heat_ms), or NULL if every tenant's list of klass is empty. */
static struct lru *oldest_list(const struct kvd_cache *c, int klass, bool ssd)
{
        struct lru *best = NULL;
        uint32_t best_ms = 0;

        for (uint32_t i = 0; i < c->n_tenants; i++)
                keep_older(c, ssd ? &c->tenants[i]->ssd_lru[klass] : &c->tenants[i]->lru[klass], &best, &best_ms);
        return best;
}

/* The least recently used copy of tenant t (any class) in its tier, or
 * NULL if t has none that may go. */
static struct lru *tenant_oldest_list(const struct kvd_cache *c, struct kvd_tenant *t, bool ssd)
{
        struct lru *best = NULL;
        uint32_t best_ms = 0;

        for (int k = 0; k < KVD_SLAB_MAX_CLASSES; k++)
                keep_older(c, ssd ? &t->ssd_lru[k] : &t->lru[k], &best, &best_ms);
        return best;
}

/* The entry of list l to evict: with LRU eviction its least recent entry;
 * with heat eviction the coldest of its HEAT_SAMPLE least recent ones, so
 * that blocks attention keeps using stay even when others were touched
 * later (sampling, as Redis approximates LFU). */
static uint32_t pick_in(const struct kvd_cache *c, const struct lru *l, bool ssd)
{
        uint32_t id = l->head, best, now;
        float best_heat;

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

/* The block to evict for room in class klass of a tier: from klass's
 * lists first, else from the other classes in turn; KVD_ID_NONE if there
 * is nothing that may go. */
uint32_t kvd_pick_victim(const struct kvd_cache *c, int klass, int *rr, bool ssd)
{
        struct lru *l = oldest_list(c, klass, ssd);

        for (int i = 0; !l && i < KVD_SLAB_MAX_CLASSES; i++) {
                int k = (*rr + i) % KVD_SLAB_MAX_CLASSES;

                l = oldest_list(c, k, ssd);
                if (l)
                        *rr = (k + 1) % KVD_SLAB_MAX_CLASSES;
        }
        return l ? pick_in(c, l, ssd) : KVD_ID_NONE;
}

/* The block of tenant t to evict to keep t within its quota, or
 * KVD_ID_NONE. */
uint32_t kvd_pick_own_victim(const struct kvd_cache *c, struct kvd_tenant *t, bool ssd)
{
        struct lru *l = tenant_oldest_list(c, t, ssd);

        return l ? pick_in(c, l, ssd) : KVD_ID_NONE;
}
