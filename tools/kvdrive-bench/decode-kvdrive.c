/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode, policy kvdrive (first cut, issue 5): lru's device
 * block cache, so blocks attention keeps choosing stay resident across
 * steps, plus sparse's prediction, so that while layer l computes, layer
 * l+1's predicted top-k blocks that are NOT resident are already on their
 * way — into a separate bank of top-k slots, so that wrong guesses never
 * push useful blocks out of the cache; a right guess is adopted into the
 * cache by a slot-to-slot copy. Only misses move (lru's bytes), and the
 * predicted ones before they are needed (sparse's overlap). Every layer reports the blocks it used to the daemon
 * (kvc_report_scores), whose heat keeps them in host memory over SSD.
 *
 * The cache keeps the blocks attention chose most often lately (a score
 * halved every 2 steps), not the most recent ones: the working set of a
 * step (all layers' top-k) is larger than the cache, and LRU then thrashes.
 *
 * Left for the full policy (issue 5): the attention mass itself as the
 * score, per-layer completions through shared memory instead of one reply
 * per request, and an adaptive prefetch depth.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>

#include <kvdrive/client.h>

#include "decode.h"

/* A cache entry's score: how often attention chose its block, decayed by
 * half every 2 steps, so blocks that keep winning stay. */
static float entry_score(const struct seqstate *sq, uint32_t e, uint32_t t)
{
        uint32_t age = t - sq->ent_step[e];

        return age > 60 ? 0.0f : sq->ent_score[e] * exp2f(-0.5f * (float)age);
}

/* Cache entry of (layer, block); if absent, the entry with the lowest score
 * that this layer has not chosen (stamp) is taken. Returns the entry and
 * whether it was a miss (then *ref is filled). */
static uint32_t take_entry(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t b, uint32_t t,
                           uint32_t stamp, bool *ret_miss, struct kvc_block_ref *ref)
{
        const struct run *run = cl->run;
        uint32_t *map = sq->map + (size_t)l * run->max_blocks, e = map[b], cap = run->policy_slots - run->kmax;
        struct lru_ent *x;
        float best = 1e30f;

        *ret_miss = e == NONE;
        if (e != NONE && sq->ent_stamp[e] == stamp)
                return e; /* already counted for this layer */
        if (e == NONE) {
                for (uint32_t i = 0; i < cap; i++) {
                        float sc;

                        if (sq->ent[i].block == NONE) {
                                e = i;
                                break;
                        }
                        if (sq->ent_stamp[i] == stamp)
                                continue;
                        sc = entry_score(sq, i, t);
                        if (sc < best) {
                                best = sc;
                                e = i;
                        }
                }
                x = &sq->ent[e];
                if (x->block != NONE)
                        sq->map[(size_t)x->layer * run->max_blocks + x->block] = NONE;
                x->layer = l;
                x->block = b;
                map[b] = e;
                sq->ent_score[e] = 0.0f;
                *ref = (struct kvc_block_ref){ .layer = l, .slot = sq->slot0 + e };
                kvc_key_private(&sq->id, b, &ref->key);
        }
        sq->ent_score[e] = entry_score(sq, e, t) + 1.0f;
        sq->ent_step[e] = t;
        sq->ent_stamp[e] = stamp;
        return e;
}

int kvdrive_prepare(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t t, uint32_t n)
{
        const struct run *run = cl->run;
        uint32_t *map = sq->map + (size_t)l * run->max_blocks, m = 0, hits = 0, kmax = run->kmax;
        uint32_t bank0 = sq->slot0 + run->policy_slots - kmax, *bank = sq->bank[0];
        struct kvc_block_score *sc = cl->scores_out;
        bool miss, bank_live = false;

        /* The prefetch issued at the previous layer lands first. */
        if (sq->pref_live[0]) {
                if (group_wait(cl, &sq->pref[0], false) < 0)
                        return -1;
                sq->pref_live[0] = false;
                bank_live = sq->bank_layer == l;
        }
        sq->nsel = select_blocks(cl, l, cl->q, n, sq->sel);
        sq->epoch++;
        if (bank_live)
                for (uint32_t j = 0; j < kmax && bank[j] != NONE; j++) {
                        sq->stamp[bank[j]] = sq->epoch;
                        sq->where[bank[j]] = j;
                }
        /* Hits first, stamped as this layer's, so no victim below is one of
         * this layer's blocks. */
        sq->ent_epoch++;
        for (uint32_t i = 0; i < sq->nsel; i++)
                if (map[sq->sel[i]] != NONE)
                        take_entry(cl, sq, l, sq->sel[i], t, sq->ent_epoch, &miss, NULL);
        for (uint32_t i = 0; i < sq->nsel; i++) {
                uint32_t b = sq->sel[i], e = take_entry(cl, sq, l, b, t, sq->ent_epoch, &miss, &cl->refs[m]);

                if (!miss) {
                        hits++;
                } else if (bank_live && sq->stamp[b] == sq->epoch) {
                        /* Predicted right: adopt the prefetched copy into the
                         * cache (a device-to-device copy on a GPU). */
                        memcpy(slot_ptr(cl, sq->slot0 + e), slot_ptr(cl, bank0 + sq->where[b]), run->block_bytes);
                        hits++;
                } else {
                        cl->blkid[m++] = b;
                }
                sq->sel_slot[i] = sq->slot0 + e;
                sc[i] = (struct kvc_block_score){ .layer = l, .mass = 1.0f / (float)sq->nsel };
                kvc_key_private(&sq->id, b, &sc[i].key);
        }
        cl->res.dev_hits += hits;
        cl->res.dev_misses += m;
        cl->res.got_blocks += m;
        if (group_submit(cl, &sq->demand, false, cl->refs, cl->blkid, m, run->group_reqs) < 0)
                return -1;
        (void)kvc_report_scores(cl->c, cl->ns, sc, sq->nsel); /* a hint: losing one costs nothing */

        /* Predict the next layer (or layer 0 of the next step) and fetch the
         * predicted blocks the cache lacks into the bank while this layer
         * computes. Wrong guesses stay in the bank and never push useful
         * blocks out of the cache. */
        if (l + 1 < run->layers || t + 1 < run->steps) {
                uint32_t nl = (l + 1) % run->layers, np, mp = 0, *nmap = sq->map + (size_t)nl * run->max_blocks;
                uint32_t n2 = (run->prompt + (l + 1 < run->layers ? t : t + 1)) / run->T;
                const float *q = cl->q;

                if (l + 1 == run->layers) {
                        load_query(run, t, 0, cl->q0);
                        q = cl->q0;
                } else if (run->xmap) {
                        map_query(run, l, cl->q, cl->q0);
                        q = cl->q0;
                }
                np = select_blocks(cl, nl, q, n2, sq->pred);
                for (uint32_t j = 0; j < np; j++) {
                        uint32_t b = sq->pred[j];

                        if (nmap[b] != NONE)
                                continue;       /* already resident */
                        bank[mp] = b;
                        cl->refs[mp] = (struct kvc_block_ref){ .layer = nl, .slot = bank0 + mp };
                        kvc_key_private(&sq->id, b, &cl->refs[mp].key);
                        sq->pred[mp++] = b;
                }
                for (uint32_t j = mp; j < kmax; j++)
                        bank[j] = NONE;
                sq->bank_layer = nl;
                if (group_submit(cl, &sq->pref[0], false, cl->refs, sq->pred, mp, run->group_reqs) < 0)
                        return -1;
                sq->pref_live[0] = mp > 0;
                cl->res.got_blocks += mp;
        }
        return 0;
}
