/* SPDX-License-Identifier: MIT */
/*
 * The cache's waiters (cache.h, "waits"): request items parked until a
 * block they need is ready, or until there is host room or quota, woken on
 * the event-loop thread in the order they came.
 */
#include <errno.h>
#include <stdlib.h>

#include "cache-internal.h"
#include "macro.h"

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
        c->waiters[w] = (struct waiter){ .fn = fn, .ctx = ctx, .item = item };
        *ret = w;
        return 0;
}

/* Block waiters hang off lru_prev of a PENDING or LOADING block. */
int kvd_wait_on_block(struct kvd_cache *c, uint32_t id, kvd_wait_fn fn, void *ctx, uint32_t item)
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

uint32_t kvd_take_block_waiters(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);
        uint32_t head = b->lru_prev;

        b->lru_prev = KVD_ID_NONE;
        return head;
}

/* Runs a taken list, once the block's new state is in place: a callback may
 * complete a request, whose owner may then touch the cache again. */
void kvd_wake(struct kvd_cache *c, uint32_t w, bool ok)
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
        return kvd_wait_on_block(c, id, fn, ctx, item);
}

int kvd_cache_wait_space(struct kvd_cache *c, int why, kvd_wait_fn fn, void *ctx, uint32_t item)
{
        uint32_t w;
        int r;

        if (c->stopping)
                return -ECANCELED;
        r = waiter_new(c, fn, ctx, item, &w);
        if (r < 0)
                return r;
        c->waiters[w].quota = why == -EXFULL;
        if (c->space_tail)
                c->waiters[c->space_tail].next = w;
        else
                c->space_head = w;
        c->space_tail = w;
        c->space_waiting++;
        return 0;
}

/*
 * Host room may have been made: let the waiters try again, oldest first.
 * One that has to wait for the tier again stops the round (the rest would
 * too); one that waits for its owner's quota does not (the next may belong
 * to someone else). Each waiter is tried at most once per round.
 */
void kvd_wake_space(struct kvd_cache *c)
{
        uint32_t round;

        if (c->waking_space)
                return; /* a retry freed room: the loop below goes on anyway */
        c->waking_space = true;
        for (round = c->space_waiting; round > 0 && c->space_head; round--) {
                uint32_t w = c->space_head, tail_before;
                struct waiter x = c->waiters[w];

                c->space_head = x.next;
                if (!c->space_head)
                        c->space_tail = 0;
                c->space_waiting--;
                c->waiters[w].next = c->free_waiter;
                c->free_waiter = w;
                tail_before = c->space_tail;
                x.fn(x.ctx, x.item, true);
                if (c->space_tail != tail_before && !c->waiters[c->space_tail].quota)
                        break;  /* it queued itself again: no room in the tier yet */
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
                c->space_waiting--;
                c->waiters[w].next = c->free_waiter;
                c->free_waiter = w;
                x.fn(x.ctx, x.item, false);
        }
        for (unsigned i = 1; i < c->n_tiers; i++)
                c->tiers[i]->ops->drain(c->tiers[i]);
}
