/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode: one decode step, and what the policies share to
 * take it: the trace's K/V and queries, request groups, block selection,
 * the tail block, attention (the kernels run on the run's device,
 * decode-device.h).
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kvdrive/client.h>

#include "bench.h"
#include "decode.h"
#include "kernels.h"
#include "trace.h"

#define SPIN_NS 60000ull        /* the last part of --compute-us is spun, not slept */

/* ---- trace geometry -------------------------------------------------- */

/* Copies the K and V of tokens [from, to) of block b of layer l from the
 * trace into dst, a block laid out as the kernels and the cache want it. */
void copy_tokens(const struct run *run, uint32_t l, uint32_t b, uint32_t from, uint32_t to, void *dst)
{
        const struct kvb_trace_meta *m = run->m;
        uint16_t *k = dst, *v = k + (size_t)m->kv_heads * run->T * m->head_dim;
        uint32_t off = from - b * run->T;

        for (uint32_t h = 0; h < m->kv_heads; h++) {
                size_t d = ((size_t)h * run->T + off) * m->head_dim, s = kvb_kv_index(m, l, h, from);

                memcpy(k + d, run->tr->k + s, (size_t)(to - from) * m->head_dim * 2);
                memcpy(v + d, run->tr->v + s, (size_t)(to - from) * m->head_dim * 2);
        }
}

void load_query(const struct run *run, uint32_t step, uint32_t l, float *dst)
{
        const uint16_t *src = run->tr->q + kvb_q_index(run->m, step, l, 0);

        for (size_t i = 0; i < run->qd; i++)
                dst[i] = kvk_f16_to_f32(src[i]);
}

/* Top-k of a layer with n stored blocks. */
uint32_t k_of(const struct run *run, uint32_t n)
{
        uint32_t k;

        if (n == 0)
                return 0;
        k = (uint32_t)ceil(run->topk * n - 1e-9);
        if (k < 1)
                k = 1;
        if (k > n)
                k = n;
        return k < run->kmax ? k : run->kmax;
}

/* ---- request groups, selection ------------------------------------- */

int group_init(struct group *g, uint32_t cap)
{
        g->cap = cap ? cap : 1;
        g->status = calloc(g->cap, 1);
        g->blk = calloc(g->cap, sizeof(*g->blk));
        return g->status && g->blk ? 0 : -ENOMEM;
}

void group_free(struct group *g)
{
        free(g->status);
        free(g->blk);
}

/*
 * Submits n Gets (put: Puts) of refs as at most max_req requests of at
 * least --batch items (the last may be smaller). refs' blocks are named in
 * blk for messages. The group must be idle.
 */
int group_submit(struct client *cl, struct group *g, bool put, const struct kvc_block_ref *refs,
                 const uint32_t *blk, uint32_t n, uint32_t max_req)
{
        uint32_t per = (n + max_req - 1) / (max_req ? max_req : 1);

        g->n_req = 0;
        if (n == 0)
                return 0;
        if (n > g->cap)
                return child_fail(cl, "internal: %u items for a group of %u", n, g->cap);
        if (per < cl->run->o.batch)
                per = cl->run->o.batch;
        if (per > cl->max_items)
                per = cl->max_items;
        g->layer = refs[0].layer;
        memcpy(g->blk, blk, sizeof(*blk) * n);
        for (uint32_t first = 0; first < n; first += per) {
                uint32_t cnt = n - first < per ? n - first : per;
                int r;

                if (g->n_req == MAX_GROUP)
                        return child_fail(cl, "internal: a fetch of %u blocks needs too many requests", n);
                r = put ? kvc_put_submit(cl->c, cl->ns, cl->pool, refs + first, cnt, g->status + first,
                                         &g->id[g->n_req])
                        : kvc_get_submit(cl->c, cl->ns, cl->pool, refs + first, cnt, g->status + first,
                                         &g->id[g->n_req]);
                if (r < 0)
                        return daemon_fail(cl, put ? "put submit" : "get submit", r);
                g->first[g->n_req] = first;
                g->count[g->n_req] = cnt;
                g->n_req++;
        }
        return 0;
}

static int check_items(struct client *cl, const struct group *g, uint32_t first, uint32_t cnt, bool put)
{
        for (uint32_t i = first; i < first + cnt; i++) {
                switch (g->status[i]) {
                case KVC_ITEM_OK:
                        break;
                case KVC_ITEM_EXISTS:
                        if (put)
                                break;
                        /* fall through */
                default:
                        return child_fail(cl, "%s of block %u of layer %u: %s", put ? "put" : "get", g->blk[i],
                                          g->layer,
                                          g->status[i] == KVC_ITEM_MISS ? "miss (the daemon lost it: SSD tier too small?)"
                                          : g->status[i] == KVC_ITEM_NO_SPACE ? "no space in the daemon"
                                          : "copy failed");
                }
        }
        return 0;
}

/* Waits for request i of g (time counted as I/O wait) and checks its items. */
static int group_wait_one(struct client *cl, struct group *g, uint32_t i, bool put)
{
        uint64_t t0 = bench_now_ns();
        int r = kvc_wait(cl->c, g->id[i], WAIT_MS);

        cl->res.wait_ns += bench_now_ns() - t0;
        if (r < 0)
                return daemon_fail(cl, put ? "put" : "get", r);
        return check_items(cl, g, g->first[i], g->count[i], put);
}

int group_wait(struct client *cl, struct group *g, bool put)
{
        for (uint32_t i = 0; i < g->n_req; i++)
                if (group_wait_one(cl, g, i, put) < 0)
                        return -1;
        g->n_req = 0;
        return 0;
}

/* Sleeps until deadline_ns less SPIN_NS, then spins: accurate to a few
 * microseconds, and leaves the CPU to the daemon, as a GPU computing would. */
static void compute_wait(uint64_t ns)
{
        uint64_t deadline = bench_now_ns() + ns;

        if (ns > SPIN_NS) {
                struct timespec ts = {
                        .tv_sec = (time_t)((deadline - SPIN_NS) / 1000000000ull),
                        .tv_nsec = (long)((deadline - SPIN_NS) % 1000000000ull),
                };

                while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                        ;
        }
        while (bench_now_ns() < deadline)
                ;
}

void *slot_ptr(const struct client *cl, uint32_t slot)
{
        return kvc_pool_slot(cl->pool, slot);
}

int select_blocks(struct client *cl, uint32_t l, const float *q, uint32_t n, uint32_t *ret)
{
        const struct run *run = cl->run;
        uint64_t t0 = bench_now_ns();
        int k;

        if (n == 0)
                return 0;
        k = run->dev->select(cl, l, q, n, k_of(run, n), ret);
        cl->res.select_ns += bench_now_ns() - t0;
        return k;
}


/* ---- decode: the tail, attention, accuracy records -------------------- */

/* Writes token pos into layer l's tail slot (the whole known part of the
 * block when a new block starts, or at the first step). */
static int append_token(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t pos, bool first)
{
        const struct run *run = cl->run;
        uint32_t b = pos / run->T;

        if (first || pos % run->T == 0)
                return run->dev->write_tokens(cl, sq->tail0 + l, l, b, b * run->T, pos + 1);
        return run->dev->write_tokens(cl, sq->tail0 + l, l, b, pos, pos + 1);
}

void block_key(const struct client *cl, const struct seqstate *sq, uint32_t b, struct kvc_key *ret)
{
        if (cl->run->pol->block_key)
                cl->run->pol->block_key(cl, sq, b, ret);
        else
                kvc_key_private(&sq->id, b, ret);
}

/* The tail of layer l is full (block b): Put it and summarise it. */
static int put_tail(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t b, bool summarise)
{
        const struct run *run = cl->run;
        struct kvc_block_ref ref = { .layer = l, .slot = sq->tail0 + l };
        int r;

        if (summarise && run->dev->summarise(cl, ref.slot, run->T, l, b) < 0)
                return -1;
        /* The daemon reads the slot: the tokens must have landed. */
        if (run->dev->sync(cl) < 0)
                return -1;
        cl->res.put_blocks++;
        if (run->pol->tail_put)
                return run->pol->tail_put(cl, sq, l, b);
        block_key(cl, sq, b, &ref.key);
        r = kvc_put_submit(cl->c, cl->ns, cl->pool, &ref, 1, &sq->put_st[l], &sq->put_id[l]);
        return r < 0 ? daemon_fail(cl, "put submit (append)", r) : 0;
}

/* Waits for the tail's Put: the block must be readable before a later
 * step selects it, and the slot free for the next block's tokens. */
static int wait_tail(struct client *cl, struct seqstate *sq, uint32_t l)
{
        uint64_t t0 = bench_now_ns();
        int r;

        if (cl->run->pol->tail_wait)
                return cl->run->pol->tail_wait(cl, sq, l);
        r = kvc_wait(cl->c, sq->put_id[l], WAIT_MS);

        cl->res.wait_ns += bench_now_ns() - t0;
        sq->put_id[l] = 0;
        if (r < 0)
                return daemon_fail(cl, "put (append)", r);
        if (sq->put_st[l] != KVC_ITEM_OK && sq->put_st[l] != KVC_ITEM_EXISTS)
                return child_fail(cl, "put of a new block of layer %u: %s", l,
                                  sq->put_st[l] == KVC_ITEM_NO_SPACE ? "no space in the daemon" : "failed");
        return 0;
}


int attend(struct client *cl, uint32_t n, bool part)
{
        uint64_t t0 = bench_now_ns();
        int r = cl->run->dev->attend(cl, n, part);

        cl->res.attn_ns += bench_now_ns() - t0;
        return r;
}

int merge_out(struct client *cl)
{
        return cl->run->dev->merge_out(cl);
}

int acc_reset(struct client *cl)
{
        return cl->run->dev->acc_reset(cl);
}

int acc_merge(struct client *cl)
{
        return cl->run->dev->acc_merge(cl);
}

int acc_out(struct client *cl)
{
        return cl->run->dev->acc_out(cl);
}

/* Attention over the selected blocks (in their slots) and the tail. */
int attend_selected(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t tail_valid, bool rec, uint32_t t)
{
        const struct run *run = cl->run;

        if (group_wait(cl, &sq->demand, false) < 0)
                return -1;
        for (uint32_t i = 0; i < sq->nsel; i++) {
                cl->ptrs[i] = slot_ptr(cl, sq->sel_slot[i]);
                cl->valid[i] = run->T;
        }
        cl->ptrs[sq->nsel] = slot_ptr(cl, sq->tail0 + l);
        cl->valid[sq->nsel] = tail_valid;
        if (attend(cl, sq->nsel + 1, false) < 0)
                return -1;
        if (rec && record(cl, t, l, sq->sel, sq->nsel, false) < 0)
                return -1;
        return 0;
}

/* ---- one decode step -------------------------------------------------- */

int decode_step(struct client *cl, uint32_t t)
{
        const struct run *run = cl->run;
        const struct decode_policy *pol = run->pol;
        uint32_t pos = run->prompt + t, n = pos / run->T, tail_valid = pos % run->T + 1, seqs = run->o.seqs;
        bool filled = tail_valid == run->T, rec = run->o.acc_every && t % run->o.acc_every == 0;

        for (uint32_t l = 0; l < run->layers; l++) {
                uint64_t t0;

                load_query(run, t, l, cl->q);
                if (run->dev->set_query(cl) < 0)
                        return -1;
                for (uint32_t s = 0; s < seqs; s++)
                        if (append_token(cl, &cl->seqs[s], l, pos, t == 0) < 0)
                                return -1;
                /* Every sequence's fetches go out before anyone waits. */
                for (uint32_t s = 0; pol->prepare && s < seqs; s++)
                        if (pol->prepare(cl, &cl->seqs[s], l, t, n) < 0)
                                return -1;
                for (uint32_t s = 0; s < seqs; s++)
                        if (pol->attend(cl, &cl->seqs[s], l, n, tail_valid, rec && s == 0, t) < 0)
                                return -1;
                if (filled)
                        for (uint32_t s = 0; s < seqs; s++)
                                if (put_tail(cl, &cl->seqs[s], l, n, s == 0) < 0)
                                        return -1;
                t0 = bench_now_ns();
                compute_wait((uint64_t)run->o.compute_us * 1000);
                cl->res.compute_ns += bench_now_ns() - t0;
                if (filled)
                        for (uint32_t s = 0; s < seqs; s++)
                                if (wait_tail(cl, &cl->seqs[s], l) < 0)
                                        return -1;
        }
        return 0;
}
