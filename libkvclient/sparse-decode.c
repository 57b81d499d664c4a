/* SPDX-License-Identifier: MIT */
/*
 * kvc_sparse: the attention-aware decode policy (kvdrive/sparse.h) on the
 * public API only: the residency manager decides which block sits in which
 * device slot, one Get per layer brings the misses and counts them on the
 * layer's completion counter, Prefetches stage guesses into the daemon's
 * host memory within the scheduler's depth, and kvk_topk() chooses.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kvdrive/client.h>
#include <kvdrive/sparse.h>

#include "client-internal.h"
#include "kernels.h"

#define DEFAULT_SPLIT_MIN 16u
#define DEFAULT_REPORT_EVERY 8u
#define DEFAULT_OVERLAP_NS 50000u
#define EWMA_SHIFT 3                    /* estimates move 1/8 of the way to each sample */
#define WAIT_SLICE_MS 20                /* between looks at the replies, when misses are late */

/* A Get of a sequence whose reply is not read yet. */
struct sp_get {
        uint64_t id;
        uint32_t layer;
        bool landed;                    /* its layer's wait saw every item in: nothing copies any more */
};

struct kvc_sparse_seq {
        kvc_sparse *sp;
        uint32_t index;                 /* its slots and counters */
        bool open;
        uint32_t keys;                  /* enum kvc_sparse_keys */
        struct kvc_key id;              /* private keys */
        struct kvc_key *chain;          /* prefix keys of the blocks known so far */
        uint32_t n_chain, cap_chain;
        uint32_t n_prompt;              /* full blocks of the prompt (prefix keys) */
        uint32_t *stored;               /* [layers] */
        kvc_residency *res;
        uint32_t tick;                  /* the residency clock: one tick per layer begun */
        /* the layer begun, if any */
        bool layer_open;
        int layer_failed;               /* what wait_layer said when a miss failed (-EIO, a refusal) */
        struct kvc_sparse_plan plan;
        uint32_t *blocks, *slots;       /* [kmax] */
        struct kvc_key *sel_keys;       /* [kmax] the chosen blocks' keys */
        uint8_t *resident;              /* [kmax] */
        uint8_t *status;                /* [layers][kmax] the misses' Get items, per layer: a late
                                         * reply writes its own layer's */
        uint32_t *miss_of;              /* [kmax] plan index of each miss */
        uint32_t *ctr_target, *ctr_failed; /* [layers] counts the layer's counter should reach */
        struct sp_get *reqs;
        uint32_t n_reqs, cap_reqs;
        uint64_t *stage_id;             /* [layers] a staging in flight, 0 none */
        uint8_t *stage_st;              /* [layers][kmax] */
        uint64_t *tail_put;             /* [layers] the tail's Put in flight, 0 none */
        uint32_t *ended;                /* [layers] layers ended: when to report the masses */
        uint8_t *tail_st;               /* [layers] */
        uint64_t t_begun, t_submit, t_waited; /* the open layer's: begin_layer returned, Gets sent, wait returned */
        bool either;                    /* the open layer could have gone one pass or two */
};

struct kvc_sparse {
        kvc_client *c;
        uint32_t ns;
        kvc_pool *pool;
        struct kvc_sparse_opts o;
        uint32_t kmax, max_items, block_tokens;
        kvc_counters *ctr;
        struct kvc_sparse_seq *seqs;    /* [max_seqs] */
        /* scratch, grown as layers grow */
        float *sc;
        uint32_t *idx;
        uint32_t cap;
        struct kvc_block_ref *refs;     /* [kmax] */
        struct kvc_block_score *scores; /* [kmax] */
        uint64_t t_open, layers_begun;
        uint64_t overlap_ns;
        /* What the engine's calls measure: ns to attend one block, ns for a
         * layer's misses to land (0: not measured yet). */
        uint64_t block_ns, land_ns;
        /* ns per chosen block from begin_layer to end_layer of the layers
         * that could go either way, one pass [0] or two [1] (0: none yet) */
        uint64_t way_ns[2];
        uint64_t rng;                   /* which of them try the other way */
        struct kvc_sparse_stats st;
};

static void ewma(uint64_t *est, uint64_t sample)
{
        *est = *est ? *est - (*est >> EWMA_SHIFT) + (sample >> EWMA_SHIFT) : sample;
}

/*
 * Two passes (attend what is resident while the misses land, then the
 * rest, and merge) can pay only when the misses would otherwise be waited
 * for and the first pass is long enough to hide them: split_min misses or
 * more, and min(landing time, the first pass) above overlap_ns. Whether
 * they do pay depends on what the overlap costs: nothing much on a GPU,
 * but on CPU attention the daemon's copies and the engine's attention
 * share cores and memory. So a layer that could go either way (*either)
 * takes the way whose layers cost less per chosen block so far, begin to
 * end as the engine's calls show it, and one in eight tries the other way,
 * so that a change (the tier the misses come from, the load) is seen.
 */
static bool want_two_pass(kvc_sparse *sp, uint32_t n_resident, uint32_t n_missing, bool *either)
{
        uint64_t first;
        bool best;

        *either = false;
        if (n_missing < sp->o.split_min)
                return false;
        if (sp->block_ns && sp->land_ns) {
                first = sp->block_ns * n_resident;
                if ((sp->land_ns < first ? sp->land_ns : first) <= sp->overlap_ns)
                        return false;
        }
        *either = true;
        if (!sp->way_ns[1] || !sp->way_ns[0])
                return !sp->way_ns[1];
        best = sp->way_ns[1] < sp->way_ns[0];
        /* xorshift64: which layers explore */
        sp->rng ^= sp->rng << 13;
        sp->rng ^= sp->rng >> 7;
        sp->rng ^= sp->rng << 17;
        return (sp->rng & 7) == 0 ? !best : best;
}

static uint64_t now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

_public_ uint64_t kvc_sparse_pool_slots(const struct kvc_sparse_opts *o)
{
        return o ? (uint64_t)o->max_seqs * ((uint64_t)o->budget + o->layers) : 0;
}

_Static_assert(offsetof(struct kvc_sparse_opts, mass_target) == KVC_SPARSE_OPTS_SIZE_V1,
               "mass_target must follow the fields of the first version");

/* o's mass_target, 0 for a caller built before it. */
static float mass_target_of(const struct kvc_sparse_opts *o)
{
        return o->size >= offsetof(struct kvc_sparse_opts, mass_target) + sizeof(o->mass_target) ? o->mass_target : 0;
}

static bool opts_valid(const struct kvc_sparse_opts *o)
{
        return o && o->size >= KVC_SPARSE_OPTS_SIZE_V1 && o->layers > 0 && o->max_seqs > 0 && o->budget > 0 &&
               o->budget <= KVC_RESIDENCY_MAX_SLOTS && o->topk > 0 && o->topk <= 1 && o->stage >= 0 &&
               isfinite(o->half_life_layers) && o->half_life_layers >= 0 &&
               (uint64_t)o->max_seqs * o->layers <= KVC_COUNTERS_MAX &&
               (mass_target_of(o) == 0 || (mass_target_of(o) > 0 && mass_target_of(o) <= 1));
}

static void seq_release(struct kvc_sparse_seq *q)
{
        q->res = kvc_residency_free(q->res);
        free(q->chain);
        q->chain = NULL;
        q->n_chain = q->cap_chain = 0;
        free(q->reqs);
        q->reqs = NULL;
        q->n_reqs = q->cap_reqs = 0;
        q->open = false;
}

static void seq_free_arrays(struct kvc_sparse_seq *q)
{
        free(q->stored);
        free(q->blocks);
        free(q->sel_keys);
        free(q->slots);
        free(q->resident);
        free(q->status);
        free(q->miss_of);
        free(q->ctr_target);
        free(q->ctr_failed);
        free(q->stage_id);
        free(q->stage_st);
        free(q->tail_put);
        free(q->tail_st);
        free(q->ended);
}

_public_ kvc_sparse *kvc_sparse_close(kvc_sparse *sp)
{
        if (!sp)
                return NULL;
        for (uint32_t i = 0; sp->seqs && i < sp->o.max_seqs; i++) {
                if (sp->seqs[i].open)
                        (void)kvc_sparse_seq_end(&sp->seqs[i]);
                seq_free_arrays(&sp->seqs[i]);
        }
        free(sp->seqs);
        kvc_counters_free(sp->ctr);
        free(sp->sc);
        free(sp->idx);
        free(sp->refs);
        free(sp->scores);
        free(sp);
        return NULL;
}

_public_ int kvc_sparse_open(kvc_client *c, uint32_t ns, kvc_pool *p, const struct kvc_sparse_opts *o,
                             kvc_sparse **ret)
{
        kvc_sparse *sp;
        uint32_t layers;
        int err;

        if (!c || !p || !ret || !opts_valid(o))
                return -EINVAL;
        if ((uint64_t)o->slot0 + kvc_sparse_pool_slots(o) > kvc_pool_slot_count(p))
                return -EINVAL;
        sp = calloc(1, sizeof(*sp));
        if (!sp)
                return -ENOMEM;
        sp->c = c;
        sp->ns = ns;
        sp->pool = p;
        memcpy(&sp->o, o, o->size < sizeof(sp->o) ? o->size : sizeof(sp->o));
        sp->o.mass_target = mass_target_of(o);
        sp->o.size = sizeof(sp->o);
        if (sp->o.half_life_layers == 0)
                sp->o.half_life_layers = 1.0f;
        if (sp->o.split_min == 0)
                sp->o.split_min = DEFAULT_SPLIT_MIN;
        if (sp->o.report_every == 0)
                sp->o.report_every = DEFAULT_REPORT_EVERY;
        sp->overlap_ns = sp->o.overlap_us ? (uint64_t)sp->o.overlap_us * 1000 : DEFAULT_OVERLAP_NS;
        layers = o->layers;
        sp->kmax = o->topk_max && o->topk_max < o->budget ? o->topk_max : o->budget;
        sp->block_tokens = o->block_tokens;
        sp->max_items = kvc_max_items(c) ? kvc_max_items(c) : 1;
        sp->t_open = now_ns();
        sp->rng = 0x9e3779b97f4a7c15ull;
        sp->seqs = calloc(o->max_seqs, sizeof(*sp->seqs));
        sp->refs = calloc(sp->kmax, sizeof(*sp->refs));
        sp->scores = calloc(sp->kmax, sizeof(*sp->scores));
        err = -ENOMEM;
        if (!sp->seqs || !sp->refs || !sp->scores)
                goto err;
        for (uint32_t i = 0; i < o->max_seqs; i++) {
                struct kvc_sparse_seq *q = &sp->seqs[i];

                q->sp = sp;
                q->index = i;
                q->stored = calloc(layers, sizeof(*q->stored));
                q->blocks = calloc(sp->kmax, sizeof(*q->blocks));
                q->sel_keys = calloc(sp->kmax, sizeof(*q->sel_keys));
                q->slots = calloc(sp->kmax, sizeof(*q->slots));
                q->resident = calloc(sp->kmax, 1);
                q->status = calloc((size_t)layers * sp->kmax, 1);
                q->miss_of = calloc(sp->kmax, sizeof(*q->miss_of));
                q->ctr_target = calloc(layers, sizeof(*q->ctr_target));
                q->ctr_failed = calloc(layers, sizeof(*q->ctr_failed));
                q->stage_id = calloc(layers, sizeof(*q->stage_id));
                q->stage_st = calloc((size_t)layers * sp->kmax, 1);
                q->tail_put = calloc(layers, sizeof(*q->tail_put));
                q->tail_st = calloc(layers, 1);
                q->ended = calloc(layers, sizeof(*q->ended));
                if (!q->stored || !q->blocks || !q->sel_keys || !q->slots || !q->resident || !q->status || !q->miss_of ||
                    !q->ctr_target || !q->ctr_failed || !q->stage_id || !q->stage_st || !q->tail_put ||
                    !q->tail_st || !q->ended)
                        goto err;
        }
        err = kvc_counters_create(c, o->max_seqs * layers, &sp->ctr);
        if (err < 0)
                goto err;
        *ret = sp;
        return 0;
err:
        kvc_sparse_close(sp);
        return err;
}

/* ---- sequences ------------------------------------------------------- */

static int chain_push(struct kvc_sparse_seq *q, const struct kvc_key *k)
{
        if (q->n_chain == q->cap_chain) {
                uint32_t cap = q->cap_chain ? q->cap_chain * 2 : 64;
                struct kvc_key *v = realloc(q->chain, sizeof(*v) * cap);

                if (!v)
                        return -ENOMEM;
                q->chain = v;
                q->cap_chain = cap;
        }
        q->chain[q->n_chain++] = *k;
        return 0;
}

_public_ int kvc_sparse_seq_begin(kvc_sparse *sp, const struct kvc_sparse_seq_opts *o, kvc_sparse_seq **ret)
{
        struct kvc_residency_opts ro;
        struct kvc_sparse_seq *q = NULL;
        uint32_t T;
        int err;

        if (!sp || !o || o->size < sizeof(*o) || !ret || o->keys > KVC_SPARSE_KEYS_PREFIX ||
            (o->keys == KVC_SPARSE_KEYS_PREFIX && o->n_tokens && !o->tokens))
                return -EINVAL;
        for (uint32_t i = 0; i < sp->o.max_seqs && !q; i++)
                if (!sp->seqs[i].open)
                        q = &sp->seqs[i];
        if (!q)
                return -EBUSY;
        ro = (struct kvc_residency_opts){ .size = sizeof(ro), .slots = sp->o.budget, .layers = sp->o.layers,
                                          .half_life_steps = sp->o.half_life_layers };
        err = kvc_residency_new(&ro, &q->res);
        if (err < 0)
                return err;
        q->keys = o->keys;
        q->tick = 0;
        q->layer_open = false;
        q->n_prompt = 0;
        memset(q->stored, 0, sizeof(*q->stored) * sp->o.layers);
        memset(q->ctr_target, 0, sizeof(*q->ctr_target) * sp->o.layers);
        memset(q->stage_id, 0, sizeof(*q->stage_id) * sp->o.layers);
        memset(q->tail_put, 0, sizeof(*q->tail_put) * sp->o.layers);
        memset(q->ended, 0, sizeof(*q->ended) * sp->o.layers);
        /* The counters of this sequence go on from where its last user left them. */
        for (uint32_t l = 0; l < sp->o.layers; l++) {
                q->ctr_target[l] = kvc_counter_done(sp->ctr, q->index * sp->o.layers + l);
                q->ctr_failed[l] = kvc_counter_failed(sp->ctr, q->index * sp->o.layers + l);
        }
        if (o->keys == KVC_SPARSE_KEYS_PRIVATE) {
                err = kvc_key_sequence_new(&q->id);
        } else {
                /* The block size is the namespace's: the pool's slot holds one. */
                T = sp->block_tokens;
                err = 0;
                if (!T)
                        err = -EINVAL;
                for (size_t b = 0; err == 0 && (b + 1) * T <= o->n_tokens; b++) {
                        struct kvc_key k;

                        kvc_key_chain(b ? &q->chain[b - 1] : NULL, o->tokens + b * T, T, &k);
                        err = chain_push(q, &k);
                }
                q->n_prompt = q->n_chain;
        }
        if (err < 0) {
                seq_release(q);
                return err;
        }
        q->open = true;
        *ret = q;
        return 0;
}

/*
 * Reads the replies of the sequence's Gets and forgets those requests:
 * those that have arrived (kvc_poll() first), and waits for the others unless they are of
 * another layer than `layer` and landed (no copy of theirs is running, and
 * their status bytes are their layer's). layer UINT32_MAX: wait for all.
 * Returns how many Gets of `layer` are left; the first error of one of
 * them (a refusal of a whole Get) goes to *ret_err. A reply comes after
 * all of its items are counted, and a refused Get counted none, so once
 * no Get of a layer is left its counter is final.
 */
static uint32_t reap(struct kvc_sparse_seq *q, uint32_t layer, bool block, int *ret_err)
{
        kvc_client *c = q->sp->c;
        uint32_t kept = 0, left = 0;

        for (uint32_t i = 0; i < q->n_reqs; i++) {
                struct sp_get *g = &q->reqs[i];
                bool wait = layer == UINT32_MAX || (block && (!g->landed || g->layer == layer));
                int r;

                if (!kvc_done(c, g->id) && !wait) {
                        q->reqs[kept++] = *g;
                        left += g->layer == layer;
                        continue;
                }
                r = kvc_wait(c, g->id, -1);
                if (r < 0 && (g->layer == layer || layer == UINT32_MAX) && ret_err && *ret_err == 0)
                        *ret_err = r;
        }
        q->n_reqs = kept;
        return left;
}

static int wait_tail(struct kvc_sparse_seq *q, uint32_t l)
{
        kvc_sparse *sp = q->sp;
        uint64_t t0;
        int r;

        if (!q->tail_put[l])
                return 0;
        t0 = now_ns();
        r = kvc_wait(sp->c, q->tail_put[l], -1);
        sp->st.wait_ns += now_ns() - t0;
        q->tail_put[l] = 0;
        if (r < 0)
                return r;
        return q->tail_st[l] == KVC_ITEM_OK || q->tail_st[l] == KVC_ITEM_EXISTS ? 0 : -EIO;
}

_public_ int kvc_sparse_seq_end(kvc_sparse_seq *q)
{
        int err = 0;

        if (!q || !q->open)
                return 0;
        for (uint32_t l = 0; l < q->sp->o.layers; l++) {
                int r = wait_tail(q, l);

                if (r < 0 && err == 0)
                        err = r;
                if (q->stage_id[l]) {
                        (void)kvc_wait(q->sp->c, q->stage_id[l], -1);
                        q->stage_id[l] = 0;
                }
        }
        {
                int r = 0;

                (void)reap(q, UINT32_MAX, true, &r);
                if (r < 0 && err == 0)
                        err = -EIO;
        }
        seq_release(q);
        return err;
}

_public_ int kvc_sparse_seq_key(const kvc_sparse_seq *q, uint32_t b, struct kvc_key *ret)
{
        if (!q || !ret || !q->open)
                return -EINVAL;
        if (q->keys == KVC_SPARSE_KEYS_PRIVATE) {
                kvc_key_private(&q->id, b, ret);
                return 0;
        }
        if (b >= q->n_chain)
                return -ERANGE;
        *ret = q->chain[b];
        return 0;
}

_public_ int kvc_sparse_seq_cached(kvc_sparse_seq *q)
{
        kvc_sparse *sp;
        uint32_t *prefix, done = 0;
        int err = 0;

        if (!q || !q->open)
                return -EINVAL;
        sp = q->sp;
        if (q->keys != KVC_SPARSE_KEYS_PREFIX)
                return 0;
        prefix = calloc(sp->o.layers, sizeof(*prefix));
        if (!prefix)
                return -ENOMEM;
        /* A chain in pieces of max-items keys: a piece counts only when the
         * ones before it were cached whole. */
        while (done < q->n_prompt) {
                uint32_t n = q->n_prompt - done < sp->max_items ? q->n_prompt - done : sp->max_items, min = n;

                err = kvc_lookup(sp->c, sp->ns, q->chain + done, n, prefix, sp->o.layers);
                if (err < 0)
                        break;
                for (uint32_t l = 0; l < sp->o.layers; l++)
                        min = prefix[l] < min ? prefix[l] : min;
                done += min;
                if (min < n)
                        break;
        }
        free(prefix);
        return err < 0 ? err : (int)done;
}

_public_ int kvc_sparse_seq_set_stored(kvc_sparse_seq *q, uint32_t n)
{
        if (!q || !q->open || (q->keys == KVC_SPARSE_KEYS_PREFIX && n > q->n_chain))
                return -EINVAL;
        for (uint32_t l = 0; l < q->sp->o.layers; l++)
                q->stored[l] = n;
        return 0;
}

_public_ uint32_t kvc_sparse_seq_stored(const kvc_sparse_seq *q, uint32_t layer)
{
        return q && q->open && layer < q->sp->o.layers ? q->stored[layer] : 0;
}

/* ---- one layer -------------------------------------------------------- */

static int grow_scratch(kvc_sparse *sp, uint32_t n)
{
        float *sc;
        uint32_t *idx;

        if (n <= sp->cap)
                return 0;
        sc = realloc(sp->sc, sizeof(*sc) * n);
        if (!sc)
                return -ENOMEM;
        sp->sc = sc;
        idx = realloc(sp->idx, sizeof(*idx) * n);
        if (!idx)
                return -ENOMEM;
        sp->idx = idx;
        sp->cap = n;
        return 0;
}

/* Top-k of a layer of n stored blocks. */
static uint32_t k_of(const kvc_sparse *sp, uint32_t n)
{
        uint32_t k;

        if (n == 0)
                return 0;
        k = (uint32_t)ceil(sp->o.topk * n - 1e-9);
        k = k < 1 ? 1 : k > n ? n : k;
        return k < sp->kmax ? k : sp->kmax;
}

static uint32_t counter_of(const struct kvc_sparse_seq *q, uint32_t l)
{
        return q->index * q->sp->o.layers + l;
}

/* The daemon's prefetch depth, at most cap (the cap alone before it has
 * answered). */
static uint32_t depth_at_most(const kvc_sparse *sp, uint32_t cap)
{
        int d = kvc_prefetch_depth(sp->c);

        return d >= 0 && (uint32_t)d < cap ? (uint32_t)d : cap;
}

/*
 * Stages the best want blocks of layer l by sp->sc[0..n) (chosen ones set
 * to -inf) that are not resident into the daemon's host memory: one
 * Prefetch per layer in flight at a time.
 */
static int stage_host(struct kvc_sparse_seq *q, uint32_t l, uint32_t n, uint32_t want)
{
        kvc_sparse *sp = q->sp;
        uint32_t m = 0, c;
        int r;

        if (want == 0)
                return 0;
        if (q->stage_id[l]) {
                r = kvc_poll(sp->c);
                if (r < 0)
                        return r;
                if (!kvc_done(sp->c, q->stage_id[l]))
                        return 0;       /* the SSD has not caught up: no more guesses */
                (void)kvc_wait(sp->c, q->stage_id[l], 0);
                q->stage_id[l] = 0;
        }
        if (want > sp->kmax)
                want = sp->kmax;
        c = kvk_topk(sp->sc, n, want, 0, 0, sp->idx);
        for (uint32_t j = 0; j < c; j++) {
                struct kvc_key key;

                if (sp->sc[sp->idx[j]] == -INFINITY)
                        continue;
                if (kvc_sparse_seq_key(q, sp->idx[j], &key) < 0 || kvc_residency_lookup(q->res, &key, l) >= 0)
                        continue;
                sp->refs[m++] = (struct kvc_block_ref){ .key = key, .layer = l };
        }
        if (m == 0)
                return 0;
        sp->st.staged += m;
        return kvc_prefetch_submit(sp->c, sp->ns, sp->refs, m, q->stage_st + (size_t)l * sp->kmax, &q->stage_id[l]);
}

/* Unwinds a plan that could not be sent: its misses leave the residency
 * (their slots were never filled). */
static void plan_unwind(struct kvc_sparse_seq *q, uint32_t n_miss)
{
        for (uint32_t j = 0; j < n_miss; j++)
                (void)kvc_residency_drop(q->res, &q->sp->refs[j].key, q->plan.layer);
}

/* The compute time per layer the daemon is told: the engine's time since
 * the policy opened, but for waits, per layer begun. */
static void tell_compute(kvc_sparse *sp)
{
        uint64_t busy = now_ns() - sp->t_open - sp->st.wait_ns;

        if (sp->layers_begun++ > 0)
                (void)kvc_set_compute_hint(sp->c, (uint32_t)(busy / sp->layers_begun / 1000) + 1);
}

_public_ int kvc_sparse_begin_layer(kvc_sparse_seq *q, uint32_t layer, const float *scores, uint32_t n_blocks,
                                    const struct kvc_sparse_plan **ret_plan)
{
        kvc_sparse *sp;
        uint32_t k, m = 0, ctr, slot0;
        uint8_t *st;
        int err;

        if (!q || !q->open || !ret_plan || (n_blocks && !scores))
                return -EINVAL;
        sp = q->sp;
        if (layer >= sp->o.layers || n_blocks > q->stored[layer])
                return -EINVAL;
        if (q->layer_open)
                return -EBUSY;
        err = grow_scratch(sp, n_blocks + 1);
        if (err < 0)
                return err;
        tell_compute(sp);
        /* The replies of earlier Gets: those that came, and those of Gets
         * that may still copy into the sequence's slots (not seen landing)
         * or that used this layer's status bytes. */
        if (q->n_reqs) {
                (void)kvc_poll(sp->c);
                (void)reap(q, layer, true, NULL);
        }
        ctr = counter_of(q, layer);
        /* No Get of the layer is in flight: the counter is where this plan
         * starts from, whatever happened to misses nobody waited for
         * (kvc_sparse_end_layer() dropped them) or to a Get refused whole. */
        q->ctr_target[layer] = kvc_counter_done(sp->ctr, ctr);
        q->ctr_failed[layer] = kvc_counter_failed(sp->ctr, ctr);
        slot0 = sp->o.slot0 + q->index * (sp->o.budget + sp->o.layers);
        q->tick++;
        (void)kvc_residency_begin_layer(q->res);
        if (sp->o.mass_target > 0)
                k = kvk_select_mass(scores, n_blocks, sp->o.mass_target, 1, k_of(sp, n_blocks), sp->o.sink,
                                    sp->o.local, q->blocks);
        else
                k = kvk_topk(scores, n_blocks, k_of(sp, n_blocks), sp->o.sink, sp->o.local, q->blocks);
        /* Pin the resident ones first, so that no miss below evicts them;
         * only the others need the acquire (one lookup per hit, not two). */
        for (uint32_t i = 0; i < k; i++) {
                int slot;

                (void)kvc_sparse_seq_key(q, q->blocks[i], &q->sel_keys[i]);
                slot = kvc_residency_pin(q->res, &q->sel_keys[i], layer);
                q->resident[i] = slot >= 0;
                if (slot >= 0)
                        q->slots[i] = slot0 + (uint32_t)slot;
        }
        for (uint32_t i = 0; i < k; i++) {
                const struct kvc_key key = q->sel_keys[i];
                bool miss;
                int slot;

                if (q->resident[i])
                        continue;
                slot = kvc_residency_acquire(q->res, &key, layer, q->tick, &miss);
                if (slot < 0) {
                        q->plan.layer = layer;
                        plan_unwind(q, m);
                        return slot;
                }
                q->slots[i] = slot0 + (uint32_t)slot;
                q->resident[i] = !miss;
                if (miss) {
                        sp->refs[m] = (struct kvc_block_ref){ .key = key, .layer = layer, .slot = q->slots[i],
                                                              .counter = ctr + 1 };
                        q->miss_of[m++] = i;
                }
        }
        /* A Get refused whole fills no status: its items read as failed. */
        st = q->status + (size_t)layer * sp->kmax;
        memset(st, KVC_ITEM_ERROR, m);
        /* One Get per max-items misses, each counted on the layer's counter. */
        for (uint32_t first = 0; first < m; first += sp->max_items) {
                uint32_t cnt = m - first < sp->max_items ? m - first : sp->max_items;
                uint64_t id;

                if (q->n_reqs == q->cap_reqs) {
                        uint32_t cap = q->cap_reqs ? q->cap_reqs * 2 : 8;
                        struct sp_get *v = realloc(q->reqs, sizeof(*v) * cap);

                        if (!v)
                                err = -ENOMEM;
                        else {
                                q->reqs = v;
                                q->cap_reqs = cap;
                        }
                }
                if (err == 0)
                        err = kvc_get_submit(sp->c, sp->ns, sp->pool, sp->refs + first, cnt, st + first, &id);
                if (err < 0) {
                        /* What went counts on the counter all the same. */
                        q->ctr_target[layer] += first;
                        q->plan.layer = layer;
                        plan_unwind(q, m);
                        return err;
                }
                q->reqs[q->n_reqs++] = (struct sp_get){ .id = id, .layer = layer };
        }
        q->ctr_target[layer] += m;
        q->t_submit = now_ns();
        q->plan = (struct kvc_sparse_plan){
                .layer = layer, .n = k, .blocks = q->blocks, .slots = q->slots, .resident = q->resident,
                .n_missing = m, .two_pass = want_two_pass(sp, k - m, m, &q->either),
                .tail_slot = slot0 + sp->o.budget + layer,
        };
        q->layer_open = true;
        q->layer_failed = 0;
        sp->st.layers++;
        sp->st.chosen += k;
        sp->st.hits += k - m;
        sp->st.misses += m;
        sp->st.two_pass_layers += q->plan.two_pass;
        /* Next step's likeliest newcomers: ranked just below this top-k. */
        if (sp->o.stage > 0 && n_blocks > k) {
                memcpy(sp->sc, scores, sizeof(*scores) * n_blocks);
                for (uint32_t i = 0; i < k; i++)
                        sp->sc[q->blocks[i]] = -INFINITY;
                (void)stage_host(q, layer, n_blocks, depth_at_most(sp, (uint32_t)(sp->o.stage * k)));
        }
        *ret_plan = &q->plan;
        q->t_begun = now_ns();
        q->t_waited = 0;
        return 0;
}

/*
 * Waits for the layer's counter to reach the plan's target. A Get the
 * daemon refused whole (E_LIMIT, E_DENIED, its namespace dropped) never
 * moves the counter, so the wait goes in slices, and between them reads
 * the replies: once every Get has replied, the counter is final and the
 * target becomes what it counted. *refused: the refusal, if any.
 */
static int wait_counter(struct kvc_sparse_seq *q, uint32_t ctr, int timeout_ms, int *refused)
{
        kvc_sparse *sp = q->sp;
        uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : now_ns() + (uint64_t)timeout_ms * 1000000;

        for (;;) {
                uint64_t now = now_ns(), left = deadline > now ? deadline - now : 0;
                int slice = WAIT_SLICE_MS, r;

                if (left < (uint64_t)WAIT_SLICE_MS * 1000000)
                        slice = (int)(left / 1000000);
                r = kvc_counter_wait(sp->ctr, ctr, q->ctr_target[q->plan.layer], slice);
                if (r != -ETIMEDOUT)
                        return r;
                r = kvc_poll(sp->c);
                if (r < 0)
                        return r;
                if (reap(q, q->plan.layer, false, refused) == 0) {
                        q->ctr_target[q->plan.layer] = kvc_counter_done(sp->ctr, ctr);
                        return 0;
                }
                if (now_ns() >= deadline)
                        return -ETIMEDOUT;
        }
}

_public_ int kvc_sparse_wait_layer(kvc_sparse_seq *q, int timeout_ms)
{
        kvc_sparse *sp;
        uint32_t ctr, failed;
        uint64_t t0;
        const uint8_t *st;
        bool landed;
        int r, refused = 0;

        if (!q || !q->open || !q->layer_open)
                return -EINVAL;
        sp = q->sp;
        t0 = now_ns();
        /* The first pass's length: the engine's time per block. */
        if (q->plan.two_pass && q->plan.n > q->plan.n_missing)
                ewma(&sp->block_ns, (t0 - q->t_begun) / (q->plan.n - q->plan.n_missing));
        if (q->plan.n_missing == 0) {
                q->t_waited = now_ns();
                return q->layer_failed;
        }
        ctr = counter_of(q, q->plan.layer);
        landed = kvc_counter_wait(sp->ctr, ctr, q->ctr_target[q->plan.layer], 0) == 0;
        if (landed)
                sp->st.hidden_layers++;
        r = landed ? 0 : wait_counter(q, ctr, timeout_ms, &refused);
        q->t_waited = now_ns();
        sp->st.wait_ns += q->t_waited - t0;
        if (r < 0)
                return r;
        /* How long misses take to land (at most this long when they had). */
        if (!refused)
                ewma(&sp->land_ns, (landed ? t0 : q->t_waited) - q->t_submit);
        failed = kvc_counter_failed(sp->ctr, ctr);
        if (failed == q->ctr_failed[q->plan.layer] && !refused) {
                for (uint32_t j = 0; j < q->plan.n_missing; j++)
                        q->resident[q->miss_of[j]] = 1;
                for (uint32_t i = 0; i < q->n_reqs; i++)
                        if (q->reqs[i].layer == q->plan.layer)
                                q->reqs[i].landed = true;
                q->plan.n_missing = 0;
                return 0;
        }
        /* Some failed: the replies say which. They leave the residency, so
         * that the next plan fetches them again. */
        q->ctr_failed[q->plan.layer] = failed;
        (void)reap(q, q->plan.layer, true, NULL);
        st = q->status + (size_t)q->plan.layer * sp->kmax;
        for (uint32_t j = 0; j < q->plan.n_missing; j++) {
                uint32_t i = q->miss_of[j];

                if (st[j] == KVC_ITEM_OK)
                        q->resident[i] = 1;
                else
                        (void)kvc_residency_drop(q->res, &q->sel_keys[i], q->plan.layer);
        }
        /* Settled: a second wait says the same and changes nothing. */
        q->plan.n_missing = 0;
        q->layer_failed = refused ? refused : -EIO;
        return q->layer_failed;
}

_public_ int kvc_sparse_end_layer(kvc_sparse_seq *q, const float *masses)
{
        kvc_sparse *sp;
        uint32_t n = 0;
        bool report;

        if (!q || !q->open || !q->layer_open)
                return -EINVAL;
        sp = q->sp;
        /* The daemon's heat halves in seconds: a layer's masses every few of
         * its steps keep it, at a fraction of the messages and of the
         * daemon's work (on a small machine, a core the engine shares). */
        report = (sp->o.flags & KVC_SPARSE_REPORT_SCORES) && masses &&
                 q->ended[q->plan.layer]++ % sp->o.report_every == 0;
        /* Misses not seen landing (the engine did not wait, or gave up):
         * not resident, fetched again next time. Their Gets are reaped
         * before anything else is planned into their slots. */
        for (uint32_t j = 0; j < q->plan.n_missing; j++)
                (void)kvc_residency_drop(q->res, &q->sel_keys[q->miss_of[j]], q->plan.layer);
        for (uint32_t i = 0; i < q->plan.n; i++) {
                float mass = masses ? masses[i] : 1.0f / (float)q->plan.n;

                if (!(mass >= 0) || !isfinite(mass))
                        mass = 0;
                (void)kvc_residency_score(q->res, &q->sel_keys[i], q->plan.layer, mass, q->tick);
                if (report)
                        sp->scores[n++] = (struct kvc_block_score){ .key = q->sel_keys[i], .layer = q->plan.layer,
                                                                    .mass = mass > 1 ? 1 : mass };
        }
        if (n)
                (void)kvc_report_scores(sp->c, sp->ns, sp->scores, n); /* a hint: losing one costs nothing */
        /* One pass: waited, then attended every block. */
        if (!q->plan.two_pass && q->t_waited && q->plan.n)
                ewma(&sp->block_ns, (now_ns() - q->t_waited) / q->plan.n);
        /* What the way taken cost, if the layer could have gone the other. */
        if (q->either && q->t_waited && !q->layer_failed)
                ewma(&sp->way_ns[q->plan.two_pass ? 1 : 0], (now_ns() - q->t_begun) / q->plan.n);
        q->layer_open = false;
        return 0;
}

/* ---- the tail, staging, stats ---------------------------------------- */

_public_ int kvc_sparse_tail_slot(kvc_sparse_seq *q, uint32_t layer)
{
        kvc_sparse *sp;
        int r;

        if (!q || !q->open || layer >= q->sp->o.layers)
                return -EINVAL;
        sp = q->sp;
        r = wait_tail(q, layer);
        if (r < 0)
                return r;
        return (int)(sp->o.slot0 + q->index * (sp->o.budget + sp->o.layers) + sp->o.budget + layer);
}

_public_ int kvc_sparse_tail_full(kvc_sparse_seq *q, uint32_t layer, const uint32_t *tokens)
{
        kvc_sparse *sp;
        struct kvc_block_ref ref;
        uint32_t b;
        int r;

        if (!q || !q->open || layer >= q->sp->o.layers)
                return -EINVAL;
        sp = q->sp;
        b = q->stored[layer];
        if (q->keys == KVC_SPARSE_KEYS_PREFIX && b >= q->n_chain) {
                struct kvc_key k;

                if (!tokens || b > q->n_chain)
                        return -EINVAL;
                kvc_key_chain(b ? &q->chain[b - 1] : NULL, tokens, sp->block_tokens, &k);
                r = chain_push(q, &k);
                if (r < 0)
                        return r;
        }
        r = wait_tail(q, layer);
        if (r < 0)
                return r;
        ref = (struct kvc_block_ref){ .layer = layer };
        (void)kvc_sparse_seq_key(q, b, &ref.key);
        ref.slot = sp->o.slot0 + q->index * (sp->o.budget + sp->o.layers) + sp->o.budget + layer;
        r = kvc_put_submit(sp->c, sp->ns, sp->pool, &ref, 1, &q->tail_st[layer], &q->tail_put[layer]);
        if (r < 0)
                return r;
        q->stored[layer] = b + 1;
        sp->st.tail_puts++;
        return 0;
}

_public_ int kvc_sparse_stage(kvc_sparse_seq *q, uint32_t layer, const float *scores, uint32_t n_blocks)
{
        kvc_sparse *sp;
        int r;

        if (!q || !q->open || layer >= q->sp->o.layers || (n_blocks && !scores) || n_blocks > q->stored[layer])
                return -EINVAL;
        sp = q->sp;
        r = grow_scratch(sp, n_blocks + 1);
        if (r < 0)
                return r;
        memcpy(sp->sc, scores, sizeof(*scores) * n_blocks);
        return stage_host(q, layer, n_blocks, depth_at_most(sp, k_of(sp, n_blocks)));
}

_public_ void kvc_sparse_get_stats(const kvc_sparse *sp, struct kvc_sparse_stats *ret)
{
        if (sp && ret)
                *ret = sp->st;
}
