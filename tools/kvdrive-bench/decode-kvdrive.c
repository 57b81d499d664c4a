/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode, policy kvdrive: the engine side of libkvclient's
 * kvc_sparse (kvdrive/sparse.h), and nothing else of the policy here. Per
 * layer the client scores the stored blocks against their summaries,
 * kvc_sparse plans (top-k, which are resident, one Get for the misses on
 * the layer's counter, staged guesses), and the client attends: the
 * resident blocks and the tail while the misses land, then the misses,
 * merging the two exactly through their log-sum-exp — or, when the plan
 * says there is little to overlap, waits first and attends once.
 * --stage-layer adds layer l+1's predicted scores (kvc_sparse_stage()).
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kvdrive/client.h>
#include <kvdrive/sparse.h>

#include "bench.h"
#include "decode.h"
#include "kernels.h"

struct kv_client {
        kvc_sparse *sp;
        float *pred;                    /* the next layer's predicted scores */
        float *masses;                  /* --report-scores: even shares of a layer's blocks */
};

struct kv_seq {
        kvc_sparse_seq *seq;
        const struct kvc_sparse_plan *plan;
};

static void kv_size(struct run *run)
{
        /* The cache holds at least one layer's top-k. */
        run->policy_slots = run->budget_slots > run->kmax ? run->budget_slots : run->kmax;
        if (run->kmax > run->budget_slots)
                fprintf(stderr, "kvdrive-bench decode: note: kvdrive's cache is top-k (%u slots), above the "
                        "budget's %u\n", run->kmax, run->budget_slots);
}

static bool kv_predicts(const struct decode_opts *o)
{
        return o->stage_layer > 0 && o->predict == PRED_MAPPED;
}

static int kv_client_init(struct client *cl)
{
        const struct run *run = cl->run;
        struct kvc_sparse_opts so = {
                .size = sizeof(so), .layers = run->layers, .block_tokens = run->T, .max_seqs = run->o.seqs,
                .slot0 = run->ring_slots, .budget = run->policy_slots, .topk = run->topk, .topk_max = run->kmax,
                .sink = run->o.sink, .local = run->o.local,
                /* in layers: recency first, as the cache holds about the
                 * working set; a block that keeps being chosen outlasts one
                 * chosen once */
                .half_life_layers = 1.0f, .stage = run->o.stage,
                .split_min = run->o.one_pass ? UINT32_MAX : 0,
                .flags = run->o.report_scores ? KVC_SPARSE_REPORT_SCORES : 0,
                .mass_target = (float)run->o.mass_target,
        };
        struct kv_client *x = calloc(1, sizeof(*x));
        int r;

        if (!x)
                return child_fail(cl, "out of memory");
        cl->pol = x;
        x->pred = calloc(run->max_blocks + 1, sizeof(float));
        x->masses = calloc(run->kmax ? run->kmax : 1, sizeof(float));
        if (!x->pred || !x->masses)
                return child_fail(cl, "out of memory");
        r = kvc_sparse_open(cl->c, cl->ns, cl->pool, &so, &x->sp);
        return r < 0 ? daemon_fail(cl, "kvc_sparse_open", r) : 0;
}

static void kv_client_free(struct client *cl)
{
        struct kv_client *x = cl->pol;

        if (!x)
                return;
        kvc_sparse_close(x->sp);
        free(x->pred);
        free(x->masses);
        free(x);
        cl->pol = NULL;
}

static int kv_seq_init(struct client *cl, struct seqstate *sq)
{
        struct kv_client *kc = cl->pol;
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PRIVATE };
        struct kv_seq *x = calloc(1, sizeof(*x));
        int r;

        if (!x)
                return child_fail(cl, "out of memory");
        sq->pol = x;
        r = kvc_sparse_seq_begin(kc->sp, &so, &x->seq);
        if (r < 0)
                return daemon_fail(cl, "kvc_sparse_seq_begin", r);
        /* The prefill (decode-client.c, with these keys) stores the prompt's full blocks. */
        r = kvc_sparse_seq_set_stored(x->seq, cl->run->prompt / cl->run->T);
        if (r < 0)
                return child_fail(cl, "kvc_sparse_seq_set_stored: %s", kvc_strerror(r));
        /* kvc_sparse lays a sequence out as the bench does: its cache, then
         * one tail slot per layer. */
        if (kvc_sparse_tail_slot(x->seq, 0) != (int)sq->tail0)
                return child_fail(cl, "internal: kvc_sparse's tail slot is not the bench's");
        return 0;
}

static void kv_seq_free(struct client *cl, struct seqstate *sq)
{
        struct kv_seq *x = sq->pol;

        (void)cl;
        if (!x)
                return;
        kvc_sparse_seq_end(x->seq);
        free(x);
        sq->pol = NULL;
}

static void kv_block_key(const struct client *cl, const struct seqstate *sq, uint32_t b, struct kvc_key *ret)
{
        const struct kv_seq *x = sq->pol;

        (void)cl;
        (void)kvc_sparse_seq_key(x->seq, b, ret);
}

/* Layer l+1's scores predicted at layer l (its query mapped into layer
 * l+1's key space) go to kvc_sparse as guesses to stage. */
static int stage_next_layer(struct client *cl, struct kv_seq *x, uint32_t l, uint32_t n)
{
        const struct run *run = cl->run;
        struct kv_client *kc = cl->pol;
        uint64_t t0 = bench_now_ns();
        int r;

        if (l + 1 >= run->layers || n == 0)
                return 0;
        map_query(run, l, cl->q, cl->q0);
        if (run->dev->scores(cl, l + 1, cl->q0, n, kc->pred) < 0)
                return -1;
        cl->res.select_ns += bench_now_ns() - t0;
        r = kvc_sparse_stage(x->seq, l + 1, kc->pred, n);
        return r < 0 ? daemon_fail(cl, "stage the next layer", r) : 0;
}

static int kv_prepare(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t t, uint32_t n)
{
        const struct run *run = cl->run;
        struct kv_seq *x = sq->pol;
        uint64_t t0 = bench_now_ns();
        int r;

        (void)t;
        if (n > 0 && run->dev->scores(cl, l, cl->q, n, cl->scores) < 0)
                return -1;
        r = kvc_sparse_begin_layer(x->seq, l, cl->scores, n, &x->plan);
        cl->res.select_ns += bench_now_ns() - t0;
        if (r < 0)
                return daemon_fail(cl, "kvc_sparse_begin_layer", r);
        sq->nsel = x->plan->n;
        memcpy(sq->sel, x->plan->blocks, sizeof(*sq->sel) * x->plan->n);
        cl->res.dev_hits += x->plan->n - x->plan->n_missing;
        cl->res.dev_misses += x->plan->n_missing;
        cl->res.got_blocks += x->plan->n_missing;
        return run->o.stage_layer > 0 ? stage_next_layer(cl, x, l, n) : 0;
}

/* Attends the chosen blocks whose resident flag is want (and the tail,
 * with_tail) into the device's OUT, or PART (decode-device.h); *ret_k gets
 * how many blocks. */
static int attend_some(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t tail_valid, bool want,
                       bool with_tail, bool part, uint32_t *ret_k)
{
        const struct run *run = cl->run;
        const struct kvc_sparse_plan *p = ((struct kv_seq *)sq->pol)->plan;
        uint32_t k = 0;

        for (uint32_t i = 0; i < p->n; i++)
                if (!p->resident[i] == !want) {
                        cl->ptrs[k] = slot_ptr(cl, p->slots[i]);
                        cl->valid[k++] = run->T;
                }
        if (with_tail) {
                cl->ptrs[k] = slot_ptr(cl, sq->tail0 + l);
                cl->valid[k++] = tail_valid;
        }
        *ret_k = k;
        return k ? attend(cl, k, part) : 0;
}

static int kv_wait(struct client *cl, struct kv_seq *x)
{
        uint64_t t0 = bench_now_ns();
        int r = kvc_sparse_wait_layer(x->seq, WAIT_MS);

        cl->res.wait_ns += bench_now_ns() - t0;
        if (r == -EIO)
                return child_fail(cl, "a block of layer %u could not be loaded (the daemon lost it: SSD tier too "
                                  "small?)", x->plan->layer);
        return r < 0 ? daemon_fail(cl, "wait for the layer's misses", r) : 0;
}

static int kv_attend(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t n, uint32_t tail_valid, bool rec,
                     uint32_t t)
{
        const struct run *run = cl->run;
        struct kv_client *kc = cl->pol;
        struct kv_seq *x = sq->pol;
        uint32_t k;

        (void)n;
        if (x->plan->n_missing > 0)
                cl->res.miss_layers++;
        if (!x->plan->two_pass) {
                /* Little to overlap: wait, then one pass over everything. */
                if (kv_wait(cl, x) < 0)
                        return -1;
                for (uint32_t i = 0; i < x->plan->n; i++) {
                        cl->ptrs[i] = slot_ptr(cl, x->plan->slots[i]);
                        cl->valid[i] = run->T;
                }
                cl->ptrs[x->plan->n] = slot_ptr(cl, sq->tail0 + l);
                cl->valid[x->plan->n] = tail_valid;
                if (attend(cl, x->plan->n + 1, false) < 0)
                        return -1;
        } else {
                /* Which were resident before the wait (it sets the others). */
                for (uint32_t i = 0; i < x->plan->n; i++)
                        cl->sel2[i] = x->plan->resident[i];
                /* The resident blocks and the tail while the misses land. */
                if (attend_some(cl, sq, l, tail_valid, true, true, false, &k) < 0)
                        return -1;
                if (kv_wait(cl, x) < 0)
                        return -1;
                /* Now resident: the ones that were missing (their flags changed). */
                k = 0;
                for (uint32_t i = 0; i < x->plan->n; i++)
                        if (!cl->sel2[i]) {
                                cl->ptrs[k] = slot_ptr(cl, x->plan->slots[i]);
                                cl->valid[k++] = run->T;
                        }
                if (k > 0) {
                        if (attend(cl, k, true) < 0)
                                return -1;
                        /* Two partials: fp32 (kvk_lse_merge()) loses nothing
                         * measurable here (docs/decisions.md). */
                        if (merge_out(cl) < 0)
                                return -1;
                }
        }
        if (rec && record(cl, t, l, sq->sel, sq->nsel, false) < 0)
                return -1;
        if (run->o.report_scores)
                for (uint32_t i = 0; i < x->plan->n; i++)
                        kc->masses[i] = 1.0f / (float)x->plan->n;
        return kvc_sparse_end_layer(x->seq, run->o.report_scores ? kc->masses : NULL) < 0 ? -1 : 0;
}

static int kv_tail_put(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t b)
{
        struct kv_seq *x = sq->pol;
        int r;

        if (kvc_sparse_seq_stored(x->seq, l) != b)
                return child_fail(cl, "internal: layer %u's tail is block %u, kvc_sparse's %u", l, b,
                                  kvc_sparse_seq_stored(x->seq, l));
        r = kvc_sparse_tail_full(x->seq, l, NULL);
        return r < 0 ? daemon_fail(cl, "put (append)", r) : 0;
}

static int kv_tail_wait(struct client *cl, struct seqstate *sq, uint32_t l)
{
        struct kv_seq *x = sq->pol;
        uint64_t t0 = bench_now_ns();
        int r = kvc_sparse_tail_slot(x->seq, l);

        cl->res.wait_ns += bench_now_ns() - t0;
        return r < 0 ? daemon_fail(cl, "put (append)", r) : 0;
}

static void kv_finish(struct client *cl)
{
        struct kv_client *kc = cl->pol;
        struct kvc_sparse_stats st;

        kvc_sparse_get_stats(kc->sp, &st);
        cl->res.hidden_layers = st.hidden_layers;
        cl->res.two_pass_layers = st.two_pass_layers;
        cl->res.staged_blocks = st.staged;
}

const struct decode_policy decode_kvdrive = {
        .name = "kvdrive",
        .size = kv_size,
        .predicts = kv_predicts,
        .client_init = kv_client_init,
        .client_free = kv_client_free,
        .seq_init = kv_seq_init,
        .seq_free = kv_seq_free,
        .block_key = kv_block_key,
        .prepare = kv_prepare,
        .attend = kv_attend,
        .tail_put = kv_tail_put,
        .tail_wait = kv_tail_wait,
        .finish = kv_finish,
};
