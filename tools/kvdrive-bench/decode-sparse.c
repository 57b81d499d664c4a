/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode, policy sparse (InfiniGen-style): the real top-k of
 * each layer is attended; the next layer's top-k, predicted from this
 * layer's query, is prefetched while this layer computes, and what the
 * prediction missed is fetched on demand (decode.c's header comment).
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kvdrive/client.h>

#include "bench.h"
#include "decode.h"
#include "kernels.h"
#include "trace.h"

/* A sequence's state: two banks of kmax slots, the one this layer reads
 * and the one the next layer's prefetch lands in. */
struct sparse_seq {
        uint32_t *bank[2];              /* block held by each slot of a bank, NONE */
        struct group pref[2];
        bool pref_live[2];
        uint32_t *pred;
        uint32_t *stamp, *where, epoch; /* membership scratch */
};

static void sparse_size(struct run *run)
{
        run->policy_slots = 2 * (run->kmax ? run->kmax : 1);
        if (run->policy_slots > run->budget_slots)
                fprintf(stderr, "kvdrive-bench decode: note: sparse needs %u slots (2 x top-k), above the "
                        "budget's %u\n", run->policy_slots, run->budget_slots);
}

static bool sparse_predicts(const struct decode_opts *o)
{
        return o->predict == PRED_MAPPED;
}

static int sparse_seq_init(struct client *cl, struct seqstate *sq)
{
        uint32_t kmax = cl->run->kmax ? cl->run->kmax : 1, mb = cl->run->max_blocks;
        struct sparse_seq *x = calloc(1, sizeof(*x));

        if (!x)
                return child_fail(cl, "out of memory");
        sq->pol = x;
        x->pred = calloc(kmax, sizeof(uint32_t));
        x->stamp = calloc(mb, sizeof(uint32_t));
        x->where = calloc(mb, sizeof(uint32_t));
        if (!x->pred || !x->stamp || !x->where)
                return child_fail(cl, "out of memory");
        for (int b = 0; b < 2; b++) {
                x->bank[b] = malloc(sizeof(uint32_t) * kmax);
                if (!x->bank[b] || group_init(&x->pref[b], kmax) < 0)
                        return child_fail(cl, "out of memory");
                for (uint32_t j = 0; j < kmax; j++)
                        x->bank[b][j] = NONE;
        }
        return 0;
}

static void sparse_seq_free(struct client *cl, struct seqstate *sq)
{
        struct sparse_seq *x = sq->pol;

        (void)cl;
        if (!x)
                return;
        for (int b = 0; b < 2; b++) {
                free(x->bank[b]);
                group_free(&x->pref[b]);
        }
        free(x->pred);
        free(x->stamp);
        free(x->where);
        free(x);
        sq->pol = NULL;
}

/*
 * Layer l of step t: takes the prefetch issued at the previous layer,
 * selects the real top-k, fetches what the prediction missed, and issues
 * the prefetch of the next layer's predicted top-k into the other bank.
 */
static int sparse_prepare(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t t, uint32_t n)
{
        const struct run *run = cl->run;
        struct sparse_seq *x = sq->pol;
        uint64_t gl = (uint64_t)t * run->layers + l;
        uint32_t bank = (uint32_t)(gl & 1), kmax = run->kmax, base = sq->slot0 + bank * kmax, *blk = x->bank[bank];
        uint32_t nfree = 0, m = 0, *freel = cl->sel2;
        int r;

        if (x->pref_live[bank]) {
                if (group_wait(cl, &x->pref[bank], false) < 0)
                        return -1;
                x->pref_live[bank] = false;
        } else {
                for (uint32_t j = 0; j < kmax; j++)
                        blk[j] = NONE;
        }
        r = select_blocks(cl, l, cl->q, n, sq->sel);
        if (r < 0)
                return -1;
        sq->nsel = (uint32_t)r;
        x->epoch++;
        for (uint32_t i = 0; i < sq->nsel; i++) {
                x->stamp[sq->sel[i]] = x->epoch;
                x->where[sq->sel[i]] = NONE;
        }
        for (uint32_t j = 0; j < kmax; j++) {
                if (blk[j] != NONE && x->stamp[blk[j]] == x->epoch)
                        x->where[blk[j]] = j;
                else
                        freel[nfree++] = j;
        }
        for (uint32_t i = 0, f = 0; i < sq->nsel; i++) {
                uint32_t b = sq->sel[i];

                if (x->where[b] == NONE) {      /* not predicted: fetch it now */
                        uint32_t j = freel[f++];

                        blk[j] = b;
                        x->where[b] = j;
                        cl->refs[m] = (struct kvc_block_ref){ .layer = l, .slot = base + j };
                        kvc_key_private(&sq->id, b, &cl->refs[m].key);
                        cl->blkid[m++] = b;
                }
                sq->sel_slot[i] = base + x->where[b];
        }
        cl->res.dev_hits += sq->nsel - m;
        cl->res.dev_misses += m;
        cl->res.got_blocks += m;
        if (group_submit(cl, &sq->demand, false, cl->refs, cl->blkid, m, run->group_reqs) < 0)
                return -1;

        /* Predict the next layer (of this step, or layer 0 of the next) and
         * fetch it while this layer computes. */
        if (l + 1 < run->layers || t + 1 < run->steps) {
                uint32_t nl = (l + 1) % run->layers, other = bank ^ 1, obase = sq->slot0 + other * kmax;
                uint32_t n2 = (run->prompt + (l + 1 < run->layers ? t : t + 1)) / run->T, np;
                const float *q = cl->q;

                if (l + 1 == run->layers) {
                        load_query(run, t, 0, cl->q0);
                        q = cl->q0;
                } else if (run->xmap) {
                        uint64_t t0 = bench_now_ns();

                        map_query(run, l, cl->q, cl->q0);
                        q = cl->q0;
                        cl->res.select_ns += bench_now_ns() - t0;
                }
                r = select_blocks(cl, nl, q, n2, x->pred);
                if (r < 0)
                        return -1;
                np = (uint32_t)r;
                for (uint32_t j = 0; j < kmax; j++) {
                        x->bank[other][j] = j < np ? x->pred[j] : NONE;
                        if (j < np) {
                                cl->refs[j] = (struct kvc_block_ref){ .layer = nl, .slot = obase + j };
                                kvc_key_private(&sq->id, x->pred[j], &cl->refs[j].key);
                        }
                }
                if (group_submit(cl, &x->pref[other], false, cl->refs, x->pred, np, run->group_reqs) < 0)
                        return -1;
                x->pref_live[other] = np > 0;
                cl->res.got_blocks += np;
        }
        return 0;
}

static int sparse_attend(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t n, uint32_t tail_valid,
                         bool rec, uint32_t t)
{
        (void)n;
        return attend_selected(cl, sq, l, tail_valid, rec, t);
}

const struct decode_policy decode_sparse = {
        .name = "sparse",
        .size = sparse_size,
        .predicts = sparse_predicts,
        .seq_init = sparse_seq_init,
        .seq_free = sparse_seq_free,
        .prepare = sparse_prepare,
        .attend = sparse_attend,
};
