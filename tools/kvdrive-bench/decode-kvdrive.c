/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode, policy kvdrive (first cut, issue 5), built on the
 * public residency manager of libkvclient (kvdrive/sparse.h): the device
 * pool's budget is one cache where blocks stay by decayed attention score
 * (blocks that keep winning stay), and while layer l computes, the blocks
 * predicted for layer l+1 that are not resident are already on their way
 * into it. A guess enters with score 0, so a wrong one is the first to go;
 * the manager pins what the current layer reads, so neither a prefetch nor
 * a miss can take it. Every layer reports the blocks it used to the daemon
 * (kvc_report_scores), whose heat keeps them in host memory over SSD.
 *
 * Left for the full policy: the attention mass itself as the score,
 * per-layer completions through shared memory instead of one reply per
 * request, and an adaptive prefetch depth.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include <kvdrive/client.h>
#include <kvdrive/sparse.h>

#include "decode.h"

int kvdrive_prepare(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t t, uint32_t n)
{
        const struct run *run = cl->run;
        struct kvc_block_score *sc = cl->scores_out;
        uint32_t m = 0, hits = 0;
        bool miss;
        int slot;

        /* The prefetch issued at the previous layer lands first. */
        if (sq->pref_live[0]) {
                if (group_wait(cl, &sq->pref[0], false) < 0)
                        return -1;
                sq->pref_live[0] = false;
        }
        if (kvc_residency_begin_layer(sq->res) < 0)
                return -1;
        sq->nsel = select_blocks(cl, l, cl->q, n, sq->sel);
        /* Pin the resident ones first, so that no miss below evicts them. */
        for (uint32_t i = 0; i < sq->nsel; i++) {
                kvc_key_private(&sq->id, sq->sel[i], &sc[i].key);
                sc[i].layer = l;
                sc[i].mass = 1.0f / (float)sq->nsel;
                (void)kvc_residency_pin(sq->res, &sc[i].key, l);
        }
        for (uint32_t i = 0; i < sq->nsel; i++) {
                slot = kvc_residency_acquire(sq->res, &sc[i].key, l, t, &miss);
                if (slot < 0)
                        return child_fail(cl, "residency: %s", kvc_strerror(slot));
                (void)kvc_residency_score(sq->res, &sc[i].key, l, sc[i].mass, t);
                if (miss) {
                        cl->refs[m] = (struct kvc_block_ref){ sc[i].key, l, sq->slot0 + (uint32_t)slot, 0 };
                        cl->blkid[m++] = sq->sel[i];
                } else {
                        hits++;
                }
                sq->sel_slot[i] = sq->slot0 + (uint32_t)slot;
        }
        cl->res.dev_hits += hits;
        cl->res.dev_misses += m;
        cl->res.got_blocks += m;
        if (group_submit(cl, &sq->demand, false, cl->refs, cl->blkid, m, run->group_reqs) < 0)
                return -1;
        (void)kvc_report_scores(cl->c, cl->ns, sc, sq->nsel); /* a hint: losing one costs nothing */

        /* Predict the next layer (or layer 0 of the next step) and fetch what
         * is not resident while this layer computes. */
        if (l + 1 < run->layers || t + 1 < run->steps) {
                uint32_t nl = (l + 1) % run->layers, np, mp = 0;
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
                        struct kvc_key key;

                        kvc_key_private(&sq->id, sq->pred[j], &key);
                        slot = kvc_residency_acquire(sq->res, &key, nl, t, &miss);
                        if (slot == -EBUSY)
                                break;          /* everything pinned: the rest on demand */
                        if (slot < 0)
                                return child_fail(cl, "residency: %s", kvc_strerror(slot));
                        if (!miss)
                                continue;
                        cl->refs[mp] = (struct kvc_block_ref){ key, nl, sq->slot0 + (uint32_t)slot, 0 };
                        sq->pred[mp++] = sq->pred[j];
                }
                if (group_submit(cl, &sq->pref[0], false, cl->refs, sq->pred, mp, run->group_reqs) < 0)
                        return -1;
                sq->pref_live[0] = mp > 0;
                cl->res.got_blocks += mp;
        }
        return 0;
}
