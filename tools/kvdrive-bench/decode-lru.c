/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode, policy lru: the top-k blocks through a device
 * block cache of --budget slots (all layers) with LRU replacement; misses
 * are fetched on demand.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <kvdrive/client.h>

#include "decode.h"

struct lru_ent {
        uint32_t layer, block;          /* NONE: empty */
        uint32_t prev, next;
};

/* A sequence's cache: one entry per policy slot, in use order. */
struct lru_seq {
        uint32_t *map;                  /* [layers][max_blocks] -> cache slot, NONE */
        struct lru_ent *ent;
        uint32_t head, tail;            /* most / least recently used */
};

static void lru_size(struct run *run)
{
        run->policy_slots = run->budget_slots > run->kmax ? run->budget_slots : run->kmax;
        if (run->kmax > run->budget_slots)
                fprintf(stderr, "kvdrive-bench decode: note: lru's cache is top-k (%u slots), above the "
                        "budget's %u\n", run->kmax, run->budget_slots);
}

static int lru_seq_init(struct client *cl, struct seqstate *sq)
{
        const struct run *run = cl->run;
        uint32_t cap = run->policy_slots;
        struct lru_seq *x = calloc(1, sizeof(*x));

        if (!x)
                return child_fail(cl, "out of memory");
        sq->pol = x;
        x->map = malloc(sizeof(uint32_t) * run->layers * run->max_blocks);
        x->ent = calloc(cap, sizeof(*x->ent));
        if (!x->map || !x->ent)
                return child_fail(cl, "out of memory");
        for (size_t i = 0; i < (size_t)run->layers * run->max_blocks; i++)
                x->map[i] = NONE;
        for (uint32_t e = 0; e < cap; e++)
                x->ent[e] = (struct lru_ent){ NONE, NONE, e ? e - 1 : NONE, e + 1 < cap ? e + 1 : NONE };
        x->head = 0;
        x->tail = cap - 1;
        return 0;
}

static void lru_seq_free(struct client *cl, struct seqstate *sq)
{
        struct lru_seq *x = sq->pol;

        (void)cl;
        if (!x)
                return;
        free(x->map);
        free(x->ent);
        free(x);
        sq->pol = NULL;
}

static void lru_unlink(struct lru_seq *x, uint32_t e)
{
        struct lru_ent *y = &x->ent[e];

        if (y->prev != NONE)
                x->ent[y->prev].next = y->next;
        else
                x->head = y->next;
        if (y->next != NONE)
                x->ent[y->next].prev = y->prev;
        else
                x->tail = y->prev;
}

static void lru_touch(struct lru_seq *x, uint32_t e)
{
        if (x->head == e)
                return;
        lru_unlink(x, e);
        x->ent[e].prev = NONE;
        x->ent[e].next = x->head;
        x->ent[x->head].prev = e;
        x->head = e;
}

static int lru_prepare(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t t, uint32_t n)
{
        const struct run *run = cl->run;
        struct lru_seq *x = sq->pol;
        uint32_t *map = x->map + (size_t)l * run->max_blocks, m = 0;
        int r;

        (void)t;
        r = select_blocks(cl, l, cl->q, n, sq->sel);
        if (r < 0)
                return -1;
        sq->nsel = (uint32_t)r;
        /* Hits first: they become most recent, so that no victim below is
         * one of this layer's blocks (the cache holds at least top-k). */
        for (uint32_t i = 0; i < sq->nsel; i++)
                if (map[sq->sel[i]] != NONE)
                        lru_touch(x, map[sq->sel[i]]);
        for (uint32_t i = 0; i < sq->nsel; i++) {
                uint32_t b = sq->sel[i], e = map[b];

                if (e == NONE) {
                        struct lru_ent *y;

                        e = x->tail;
                        y = &x->ent[e];
                        if (y->block != NONE)
                                x->map[(size_t)y->layer * run->max_blocks + y->block] = NONE;
                        y->layer = l;
                        y->block = b;
                        map[b] = e;
                        lru_touch(x, e);
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

static int lru_attend(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t n, uint32_t tail_valid,
                      bool rec, uint32_t t)
{
        (void)n;
        return attend_selected(cl, sq, l, tail_valid, rec, t);
}

const struct decode_policy decode_lru = {
        .name = "lru",
        .size = lru_size,
        .seq_init = lru_seq_init,
        .seq_free = lru_seq_free,
        .prepare = lru_prepare,
        .attend = lru_attend,
};
