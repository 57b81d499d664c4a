/* SPDX-License-Identifier: MIT */
#include "cache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "log.h"
#include "macro.h"

#define MAX_CLASSES 64

struct lru {
        uint32_t head, tail;    /* head: least recently used */
};

/* A Put waiting for another Put of the same key. A PENDING block is in no
 * LRU list, so its lru_prev holds the head of its waiter list. */
struct waiter {
        kvd_pending_fn fn;
        void *ctx;
        uint32_t item;
        uint32_t next;          /* waiter index, 0: end */
};

struct kvd_cache {
        const struct kvd_config *cfg;
        struct kvd_host *host;
        struct kvd_tier *host_tier;
        struct kvd_index *index;
        struct kvd_ns *ns;      /* cfg->max_namespaces */
        uint32_t n_ns;
        struct lru lru[MAX_CLASSES]; /* READY, unpinned host blocks per class */
        int evict_rr;           /* class to take from next when not our own */
        uint64_t hits, misses, evictions, puts, gets;
        struct waiter *waiters; /* [0] unused */
        uint32_t n_waiters, cap_waiters, free_waiter;
};

static struct kvd_block *blk(const struct kvd_cache *c, uint32_t id)
{
        return kvd_index_block(c->index, id);
}

static void lru_unlink(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);
        struct lru *l = &c->lru[b->klass];

        if (b->lru_prev != KVD_ID_NONE)
                blk(c, b->lru_prev)->lru_next = b->lru_next;
        else
                l->head = b->lru_next;
        if (b->lru_next != KVD_ID_NONE)
                blk(c, b->lru_next)->lru_prev = b->lru_prev;
        else
                l->tail = b->lru_prev;
        b->lru_prev = b->lru_next = KVD_ID_NONE;
}

static void lru_push_mru(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);
        struct lru *l = &c->lru[b->klass];

        b->lru_next = KVD_ID_NONE;
        b->lru_prev = l->tail;
        if (l->tail != KVD_ID_NONE)
                blk(c, l->tail)->lru_next = id;
        else
                l->head = id;
        l->tail = id;
}

int kvd_cache_new(const struct kvd_config *cfg, struct kvd_cache **ret)
{
        struct kvd_cache *c;
        uint64_t expected;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->cfg = cfg;
        c->ns = calloc(cfg->max_namespaces, sizeof(*c->ns));
        if (!c->ns) {
                r = -ENOMEM;
                goto err;
        }
        r = kvd_host_new(cfg, &c->host);
        if (r < 0)
                goto err;
        c->host_tier = kvd_host_tier(c->host);
        /* A 16 KiB block is small for KV (one layer, all heads, 16+ tokens). */
        expected = cfg->index_blocks ? cfg->index_blocks : cfg->host_bytes / (16u << 10);
        r = kvd_index_new(expected, &c->index);
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
        kvd_index_free(c->index);
        free(c->waiters);
        if (c->host_tier)
                c->host_tier->ops->destroy(c->host_tier);
        free(c->ns);
        free(c);
        return NULL;
}

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
        uint64_t bytes;
        struct kvd_ns *ns;
        int r, klass;

        if (!name || !*name || strlen(name) >= KVD_NS_NAME_MAX)
                return -EINVAL;
        r = kvd_geometry_block_bytes(g, &bytes);
        if (r < 0)
                return -EINVAL;
        if (g->layers > 65536)
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
        klass = c->host_tier->ops->class_for(c->host_tier, bytes);
        if (klass < 0)
                return klass == -E2BIG ? -E2BIG : -ENOSPC;
        ns = &c->ns[c->n_ns];
        *ns = (struct kvd_ns){ .id = c->n_ns, .geometry = *g, .block_bytes = bytes, .klass = klass };
        memcpy(ns->name, name, strlen(name) + 1);
        c->n_ns++;
        log_info("namespace %u '%s': %u layers, %u kv heads, head dim %u, dtype %u, %u tokens/block, "
                 "%llu bytes/block", ns->id, ns->name, g->layers, g->kv_heads, g->head_dim, g->dtype,
                 g->block_tokens, (unsigned long long)bytes);
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

/* Drops a block from the index and frees its page. */
static void drop(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);

        if (b->state == KVD_BLOCK_READY)
                c->ns[b->ns].blocks--;
        c->host_tier->ops->free(c->host_tier, b->loc);
        kvd_index_remove(c->index, id);
}

/* Evicts least recently used blocks until klass can allocate: from its own
 * class first, else from the other classes in turn (freeing whole extents).
 * -ENOSPC when everything left is pinned or being stored. */
static int make_room(struct kvd_cache *c, int klass)
{
        int n_classes = kvd_host_class_count(c->host);

        while (!kvd_host_can_alloc(c->host, klass)) {
                int victim_class = -1;

                if (c->lru[klass].head != KVD_ID_NONE) {
                        victim_class = klass;
                } else {
                        for (int i = 0; i < n_classes; i++) {
                                int k = (c->evict_rr + i) % n_classes;

                                if (c->lru[k].head != KVD_ID_NONE) {
                                        victim_class = k;
                                        c->evict_rr = (k + 1) % n_classes;
                                        break;
                                }
                        }
                }
                if (victim_class < 0)
                        return -ENOSPC;
                uint32_t victim = c->lru[victim_class].head;

                lru_unlink(c, victim);
                drop(c, victim);
                c->evictions++;
        }
        return 0;
}

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
        *ret_host = kvd_host_ptr(c->host, loc);
        return 0;
}

int kvd_cache_wait_pending(struct kvd_cache *c, uint32_t id, kvd_pending_fn fn, void *ctx, uint32_t item)
{
        struct kvd_block *b = blk(c, id);
        uint32_t w = c->free_waiter;

        assert(b->state == KVD_BLOCK_PENDING);
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
        c->waiters[w] = (struct waiter){ fn, ctx, item, b->lru_prev };
        b->lru_prev = w;
        return 0;
}

/* Takes the waiter list off a PENDING block before its state changes. */
static uint32_t take_waiters(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);
        uint32_t head = b->lru_prev;

        b->lru_prev = KVD_ID_NONE;
        return head;
}

/* Runs the waiters once the block's new state is in place; a callback may
 * complete a request, and its owner may then touch the cache again. */
static void wake_waiters(struct kvd_cache *c, uint32_t w, bool committed)
{
        while (w) {
                struct waiter x = c->waiters[w];

                c->waiters[w].next = c->free_waiter;
                c->free_waiter = w;
                x.fn(x.ctx, x.item, committed);
                w = x.next;
        }
}

void kvd_cache_put_commit(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);
        uint32_t waiters;

        assert(b->state == KVD_BLOCK_PENDING);
        waiters = take_waiters(c, id);
        b->state = KVD_BLOCK_READY;
        c->ns[b->ns].blocks++;
        c->puts++;
        lru_push_mru(c, id);
        wake_waiters(c, waiters, true);
}

void kvd_cache_put_abort(struct kvd_cache *c, uint32_t id)
{
        uint32_t waiters;

        assert(blk(c, id)->state == KVD_BLOCK_PENDING);
        waiters = take_waiters(c, id);
        drop(c, id);
        wake_waiters(c, waiters, false);
}

int kvd_cache_get_pin(struct kvd_cache *c, const struct kvd_bkey *k, uint32_t *ret_id,
                      void **ret_host)
{
        uint32_t id = kvd_index_find(c->index, k);
        struct kvd_block *b;

        if (id == KVD_ID_NONE || (b = blk(c, id))->state != KVD_BLOCK_READY ||
            (b->flags & KVD_BLOCK_DOOMED)) {
                c->misses++;
                return -ENOENT;
        }
        if (b->pins == UINT16_MAX)
                return -EBUSY;
        if (b->pins++ == 0)
                lru_unlink(c, id);
        c->hits++;
        *ret_id = id;
        *ret_host = kvd_host_ptr(c->host, b->loc);
        return 0;
}

void kvd_cache_unpin(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);

        assert(b->state == KVD_BLOCK_READY && b->pins > 0);
        c->gets++;
        if (--b->pins > 0)
                return;
        if (b->flags & KVD_BLOCK_DOOMED)
                drop(c, id);
        else
                lru_push_mru(c, id);
}

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
        if (b->pins > 0) {
                b->flags |= KVD_BLOCK_DOOMED;
                return 1;
        }
        lru_unlink(c, id);
        drop(c, id);
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
                .index_bytes_per_block = kvd_index_bytes_per_block(),
        };
        c->host_tier->ops->usage(c->host_tier, &ret->host);
}
