/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode, policy lru: the top-k blocks through a device
 * block cache of --budget slots (all layers) with LRU replacement; misses
 * are fetched on demand.
 */
#include <stddef.h>
#include <stdint.h>

#include <kvdrive/client.h>

#include "decode.h"

static void lru_unlink(struct seqstate *sq, uint32_t e)
{
        struct lru_ent *x = &sq->ent[e];

        if (x->prev != NONE)
                sq->ent[x->prev].next = x->next;
        else
                sq->head = x->next;
        if (x->next != NONE)
                sq->ent[x->next].prev = x->prev;
        else
                sq->tail = x->prev;
}

static void lru_touch(struct seqstate *sq, uint32_t e)
{
        if (sq->head == e)
                return;
        lru_unlink(sq, e);
        sq->ent[e].prev = NONE;
        sq->ent[e].next = sq->head;
        sq->ent[sq->head].prev = e;
        sq->head = e;
}

int lru_prepare(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t n)
{
        const struct run *run = cl->run;
        uint32_t *map = sq->map + (size_t)l * run->max_blocks, m = 0;

        sq->nsel = select_blocks(cl, l, cl->q, n, sq->sel);
        /* Hits first: they become most recent, so that no victim below is
         * one of this layer's blocks (the cache holds at least top-k). */
        for (uint32_t i = 0; i < sq->nsel; i++)
                if (map[sq->sel[i]] != NONE)
                        lru_touch(sq, map[sq->sel[i]]);
        for (uint32_t i = 0; i < sq->nsel; i++) {
                uint32_t b = sq->sel[i], e = map[b];

                if (e == NONE) {
                        struct lru_ent *x;

                        e = sq->tail;
                        x = &sq->ent[e];
                        if (x->block != NONE)
                                sq->map[(size_t)x->layer * run->max_blocks + x->block] = NONE;
                        x->layer = l;
                        x->block = b;
                        map[b] = e;
                        lru_touch(sq, e);
                        cl->refs[m] = (struct kvc_block_ref){ .layer = l, .slot = sq->slot0 + e };
                        kvc_key_private(&sq->id, b, &cl->refs[m].key);
                        cl->blkid[m++] = b;
                }
                sq->sel_slot[i] = sq->slot0 + e;
        }
        cl->res.dev_hits += sq->nsel - m;
        cl->res.dev_misses += m;
        cl->res.got_blocks += m;
        return group_submit(cl, &sq->demand, false, cl->refs, cl->blkid, m, run->group_reqs);
}
