/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode, policy kvdrive (issue 5), on the public residency
 * manager of libkvclient (kvdrive/sparse.h) and the daemon's scheduler:
 *
 *  - the device budget is one cache where blocks stay by decayed attention
 *    score (blocks that keep winning stay; the current layer's are pinned);
 *  - overlap: a layer's misses are fetched while it attends the blocks that
 *    were already resident (most of them: consecutive steps choose mostly
 *    the same blocks), and the two partial attentions merge exactly through
 *    their log-sum-exp, so the misses cost I/O wait only when they take
 *    longer than attention over the hits;
 *  - prediction: the blocks ranked just below the top-k this step are the
 *    likeliest newcomers next step (queries drift); they are staged from SSD
 *    into the daemon's host memory (a Prefetch, SSD -> host only: no device
 *    slot and no client copy is spent on a guess), so that next step's miss
 *    is a host-memory copy instead of an SSD read. How many: the depth the
 *    daemon's adaptive scheduler gives for this client's measured compute
 *    time per layer (kvc_set_compute_hint()), at most --stage of top-k
 *    (default 0: on the 2-core machines here it costs more daemon CPU and
 *    SSD reads than it saves; docs/bench/decode/README.md). --stage-layer
 *    adds layer l+1's predicted top-k, scored at layer l;
 *  - every layer reports the blocks it used to the daemon (heat);
 *  - completion through shared memory: each miss counts on its (sequence,
 *    layer) counter of the client's counter page, and the layer waits on the
 *    counter, not on the reply message (read later, when the group is next
 *    used).
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <kvdrive/client.h>
#include <kvdrive/sparse.h>

#include "bench.h"
#include "decode.h"

/* The compute time per layer the daemon is told: the client's mean time per
 * layer spent on anything but waiting for I/O. */
static void tell_compute(struct client *cl)
{
        uint64_t busy = cl->res.select_ns + cl->res.attn_ns + cl->res.compute_ns;

        if (cl->layers_done > 0)
                (void)kvc_set_compute_hint(cl->c, (uint32_t)(busy / cl->layers_done / 1000) + 1);
        cl->layers_done++;
}

/* How many blocks a staging may take: the scheduler's depth, at most cap
 * (the cap alone before the first answer). */
static uint32_t stage_want(const struct client *cl, uint32_t cap)
{
        int d = kvc_prefetch_depth(cl->c);

        return d >= 0 && (uint32_t)d < cap ? (uint32_t)d : cap;
}

/*
 * Stages into the daemon's host memory the candidates of layer l whose
 * scores are in cl->scores: the best want of them that are not chosen
 * (cl->scores[b] = -inf) and not in the device cache. which: 0 for the
 * next step's guesses, 1 for the next layer's; one staging of each kind per
 * layer is in flight at a time (a new one waits for the SSD to catch up).
 */
static int stage(struct client *cl, struct seqstate *sq, uint32_t which, uint32_t l, uint32_t n, uint32_t want)
{
        const struct run *run = cl->run;
        uint64_t *id = &sq->stage_id[which * run->layers + l];
        uint32_t m = 0, c;
        int r;

        if (want == 0)
                return 0;
        if (*id) {
                r = kvc_poll(cl->c);
                if (r < 0)
                        return daemon_fail(cl, "poll", r);
                if (!kvc_done(cl->c, *id))
                        return 0;
                r = kvc_wait(cl->c, *id, 0);
                if (r < 0)
                        return daemon_fail(cl, "stage", r);
                *id = 0;
        }
        c = kvk_topk(cl->scores, n, want, 0, 0, cl->sel2);
        for (uint32_t j = 0; j < c; j++) {
                struct kvc_key key;

                if (cl->scores[cl->sel2[j]] == -INFINITY)
                        continue;
                kvc_key_private(&sq->id, cl->sel2[j], &key);
                if (kvc_residency_lookup(sq->res, &key, l) >= 0)
                        continue;
                cl->refs[m++] = (struct kvc_block_ref){ .key = key, .layer = l };
        }
        cl->res.staged_blocks += m;
        if (m == 0)
                return 0;
        r = kvc_prefetch_submit(cl->c, cl->ns, cl->refs, m,
                                sq->stage_st + (size_t)(which * run->layers + l) * run->kmax, id);
        return r < 0 ? daemon_fail(cl, "stage submit", r) : 0;
}

/* Next step: the blocks of layer l ranked just below this step's top-k. */
static int stage_next_step(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t n)
{
        if (n <= sq->nsel)
                return 0;
        for (uint32_t i = 0; i < sq->nsel; i++)
                cl->scores[sq->sel[i]] = -INFINITY;
        return stage(cl, sq, 0, l, n, stage_want(cl, (uint32_t)(cl->run->o.stage * sq->nsel)));
}

/* Next layer: layer l+1's top-k as layer l's query, mapped into layer l+1's
 * key space, predicts it (sparse's prediction), scored now. */
static int stage_next_layer(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t n)
{
        const struct run *run = cl->run;
        const float *q = cl->q;
        uint32_t np;

        if (l + 1 >= run->layers)
                return 0;
        if (run->xmap) {
                map_query(run, l, cl->q, cl->q0);
                q = cl->q0;
        }
        np = select_blocks(cl, l + 1, q, n, sq->pred);
        /* Only the predicted top-k are candidates, best score first. */
        for (uint32_t j = 0, b = 0; b < n; b++) {
                if (j < np && sq->pred[j] == b)
                        j++;
                else
                        cl->scores[b] = -INFINITY;
        }
        return stage(cl, sq, 1, l + 1, n, stage_want(cl, (uint32_t)(run->o.stage_layer * np)));
}

static uint32_t counter_of(const struct client *cl, const struct seqstate *sq, uint32_t l)
{
        return (uint32_t)(sq - cl->seqs) * cl->run->layers + l;
}

int kvdrive_prepare(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t t, uint32_t n)
{
        const struct run *run = cl->run;
        uint32_t ctr = counter_of(cl, sq, l);
        /* The manager's clock ticks once per layer: a block another layer
         * read two layers ago is fresher than one this layer read last step. */
        uint32_t tick = t * run->layers + l;
        struct kvc_block_score *sc = cl->scores_out;
        uint32_t m = 0, hits = 0;
        bool miss;
        int slot;

        if (sq == &cl->seqs[0])
                tell_compute(cl);
        if (sq->demand_unreaped) {
                /* The last Gets' replies: their items all counted already. */
                if (group_wait(cl, &sq->demand, false) < 0)
                        return -1;
                sq->demand_unreaped = false;
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
                slot = kvc_residency_acquire(sq->res, &sc[i].key, l, tick, &miss);
                if (slot < 0)
                        return child_fail(cl, "residency: %s", kvc_strerror(slot));
                (void)kvc_residency_score(sq->res, &sc[i].key, l, sc[i].mass, tick);
                sq->sel_slot[i] = sq->slot0 + (uint32_t)slot;
                sq->sel_miss[i] = miss;
                if (miss) {
                        cl->refs[m] = (struct kvc_block_ref){ .key = sc[i].key, .layer = l,
                                                              .slot = sq->slot0 + (uint32_t)slot, .counter = ctr + 1 };
                        cl->blkid[m++] = sq->sel[i];
                } else {
                        hits++;
                }
        }
        cl->res.dev_hits += hits;
        cl->res.dev_misses += m;
        cl->res.got_blocks += m;
        if (group_submit(cl, &sq->demand, false, cl->refs, cl->blkid, m, run->group_reqs) < 0)
                return -1;
        sq->ctr_target[l] += m;
        if (run->o.report_scores)
                (void)kvc_report_scores(cl->c, cl->ns, sc, sq->nsel); /* a hint: losing one costs nothing */
        if (stage_next_step(cl, sq, l, n) < 0)
                return -1;
        return run->o.stage_layer > 0 ? stage_next_layer(cl, sq, l, n) : 0;
}

/* Attention over the hits and the tail while the misses land, then over the
 * misses; the two partial results merge exactly. */
int kvdrive_attend(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t tail_valid, bool rec, uint32_t t)
{
        const struct run *run = cl->run;
        uint32_t k = 0;

        for (uint32_t i = 0; i < sq->nsel; i++)
                if (!sq->sel_miss[i]) {
                        cl->ptrs[k] = slot_ptr(cl, sq->sel_slot[i]);
                        cl->valid[k++] = run->T;
                }
        cl->ptrs[k] = slot_ptr(cl, sq->tail0 + l);
        cl->valid[k++] = tail_valid;
        if (attend(cl, k, cl->out, cl->out_lse) < 0)
                return -1;

        if (sq->demand.n_req > 0) {
                uint32_t ctr = counter_of(cl, sq, l);
                uint64_t t0 = bench_now_ns();
                int r;

                cl->res.miss_layers++;
                cl->res.hidden_layers += kvc_counter_wait(cl->ctr, ctr, sq->ctr_target[l], 0) == 0;
                r = kvc_counter_wait(cl->ctr, ctr, sq->ctr_target[l], WAIT_MS);
                cl->res.wait_ns += bench_now_ns() - t0;
                if (r < 0)
                        return daemon_fail(cl, "wait for the layer's misses", r);
                sq->demand_unreaped = true;
                if (kvc_counter_failed(cl->ctr, ctr) != 0) {
                        /* A miss failed: the reply says which and why. */
                        if (group_wait(cl, &sq->demand, false) < 0)
                                return -1;
                        sq->demand_unreaped = false;
                }
        }
        k = 0;
        for (uint32_t i = 0; i < sq->nsel; i++)
                if (sq->sel_miss[i]) {
                        cl->ptrs[k] = slot_ptr(cl, sq->sel_slot[i]);
                        cl->valid[k++] = run->T;
                }
        if (k > 0) {
                int r;

                if (attend(cl, k, cl->part, cl->plse) < 0)
                        return -1;
                /* Two partials: fp32 loses nothing measurable here (the
                 * e2e-decode accuracy and the bench's figures are those of
                 * the double merge to 1e-6; docs/decisions.md). */
                r = kvk_lse_merge(&run->shape, cl->out, cl->out_lse, cl->part, cl->plse);
                if (r < 0)
                        return child_fail(cl, "merge: %s", strerror(-r));
        }
        if (rec)
                record(cl, t, l, sq->sel, sq->nsel, false, cl->out);
        return 0;
}
