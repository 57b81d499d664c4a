/* SPDX-License-Identifier: MIT */
/*
 * sparse-engine: the smallest complete inference engine on kvc_sparse
 * (kvdrive/sparse.h). Read it with docs/engine-integration.md.
 *
 * A real engine does the arithmetic below on its GPU with its own kernels
 * (or the CUDA twins in kernels/kernels-cuda.h); this one runs the CPU
 * reference kernels (kernels/kernels.h) over a synthetic model whose K and
 * V are seeded random numbers with a few "topic" blocks per layer that the
 * queries like, as real attention likes a few blocks. Everything else is
 * what a real engine does:
 *
 *   1. connect, and register a namespace whose name carries the model's
 *      fingerprint and the KV layout version (so that a changed model or
 *      layout never reads old blocks);
 *   2. create a pool: a few staging slots of its own, then the slots of
 *      kvc_sparse (kvc_sparse_pool_slots());
 *   3. prefill: ask how much of the prompt the cache holds
 *      (kvc_sparse_seq_cached()), load and summarise that, compute and Put
 *      only the rest; a second run with the same prompt computes nothing;
 *   4. decode: per step and layer, score the stored blocks from their
 *      summaries, let kvc_sparse plan, attend over what is resident (and
 *      the tail), wait for the rest, attend over it and merge, report the
 *      attention masses; write each new token into the tail and hand a
 *      full tail block over (kvc_sparse_tail_full());
 *   5. check the sparse output against full attention over every block,
 *      and print what moved and what each call cost.
 *
 *   sparse-engine [--socket PATH] [--steps N] [--prompt-tokens N] [--budget SLOTS] ...
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <xxhash.h>

#include <kvdrive/client.h>
#include <kvdrive/sparse.h>

#include "kernels.h"

/* ---- the synthetic model ------------------------------------------------ */

/*
 * Bump KV_LAYOUT_VERSION whenever this engine changes how it writes a block
 * (element order, K before V, RoPE applied or not, a quantisation scale):
 * blocks of the old layout then live in another namespace and are never
 * read as the new one. The daemon checks the geometry, not the meaning.
 */
#define KV_LAYOUT_VERSION 1

#define LAYERS 8u
#define KV_HEADS 2u
#define Q_HEADS 8u              /* GQA: 4 query heads per kv head */
#define HEAD_DIM 64u
#define BLOCK_TOKENS 16u

#define HOT_EVERY 32u           /* about one block in 32 is on the layer's topic */
#define KEY_GAIN 5.0f           /* how far a topic block's keys lean on the topic */
#define QUERY_GAIN 16.0f        /* how far the queries do */
#define QUERY_DRIFT 0.0625f     /* and how far from it they wander, per element and step */

struct model {
        const char *id;                 /* e.g. "meta-llama/Llama-3.1-8B-Instruct" */
        const char *revision;           /* of its weights (a commit id) */
        uint64_t seed;                  /* our "weights": a hash of the revision */
        struct kvk_shape shape;
        float topic[LAYERS][KV_HEADS][HEAD_DIM];        /* unit vectors */
};

static uint64_t splitmix(uint64_t *s)
{
        uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* A seed for one thing the model computes, from what it depends on. */
static uint64_t seed_of(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
        uint64_t s = seed ^ (a * 0xd6e8feb86659fd93ull);

        s = splitmix(&s) ^ (b * 0x9e3779b97f4a7c15ull);
        s = splitmix(&s) ^ c;
        return splitmix(&s);
}

/* Uniform in [-1, 1). */
static float uniform(uint64_t *s)
{
        return (float)((double)(splitmix(s) >> 11) * 0x1p-52 - 1.0);
}

static void model_init(struct model *m, const char *id, const char *revision)
{
        m->id = id;
        m->revision = revision;
        m->seed = XXH3_64bits(revision, strlen(revision));
        m->shape = (struct kvk_shape){ .kv_heads = KV_HEADS, .q_heads = Q_HEADS, .head_dim = HEAD_DIM,
                                       .block_tokens = BLOCK_TOKENS, .dtype = KVK_F16 };
        for (uint32_t l = 0; l < LAYERS; l++) {
                for (uint32_t g = 0; g < KV_HEADS; g++) {
                        uint64_t s = seed_of(m->seed, 1, l, g);
                        float *u = m->topic[l][g], norm = 0;

                        for (uint32_t d = 0; d < HEAD_DIM; d++) {
                                u[d] = uniform(&s);
                                norm += u[d] * u[d];
                        }
                        for (uint32_t d = 0; d < HEAD_DIM; d++)
                                u[d] /= sqrtf(norm);
                }
        }
}

/*
 * K and V of the token at position pos (token id tok) at one layer, written
 * into token slot t of a block (kernels.h's layout: K then V, each
 * [kv_heads][block_tokens][head_dim] of fp16). What a real model computes
 * from the whole prefix depends here only on the position and the token:
 * either way, a block's key (which chains every token before it) names its
 * content.
 */
static void token_kv(const struct model *m, uint32_t layer, uint64_t pos, uint32_t tok, void *block, uint32_t t)
{
        uint16_t *k = block, *v = k + (size_t)KV_HEADS * BLOCK_TOKENS * HEAD_DIM;
        uint64_t hot_seed = seed_of(m->seed, 2, layer, pos / BLOCK_TOKENS);
        bool hot = hot_seed % HOT_EVERY == 0;
        uint64_t s = seed_of(m->seed, 3, ((uint64_t)layer << 40) | pos, tok);

        for (uint32_t g = 0; g < KV_HEADS; g++) {
                size_t at = ((size_t)g * BLOCK_TOKENS + t) * HEAD_DIM;

                for (uint32_t d = 0; d < HEAD_DIM; d++) {
                        float key = uniform(&s) + (hot ? KEY_GAIN * m->topic[layer][g][d] : 0.0f);

                        k[at + d] = kvk_f32_to_f16(key);
                        v[at + d] = kvk_f32_to_f16(uniform(&s));
                }
        }
}

/* The whole block b of a layer: tokens [b * BLOCK_TOKENS, +n) of tokens[]. */
static void make_block(const struct model *m, uint32_t layer, uint32_t b, const uint32_t *tokens, uint32_t n,
                       void *block)
{
        for (uint32_t t = 0; t < n; t++) {
                uint64_t pos = (uint64_t)b * BLOCK_TOKENS + t;

                token_kv(m, layer, pos, tokens[pos], block, t);
        }
}

/* The query of one layer at one decode step: fp32 [q_heads][head_dim]. */
static void make_query(const struct model *m, uint32_t layer, uint32_t step, float *q)
{
        for (uint32_t h = 0; h < Q_HEADS; h++) {
                uint64_t s = seed_of(m->seed, 4, ((uint64_t)layer << 32) | step, h);
                const float *u = m->topic[layer][h / (Q_HEADS / KV_HEADS)];

                for (uint32_t d = 0; d < HEAD_DIM; d++)
                        q[h * HEAD_DIM + d] = QUERY_GAIN * (u[d] + QUERY_DRIFT * uniform(&s));
        }
}

/* The token "sampled" at position pos (a real engine samples the logits). */
static uint32_t next_token(const struct model *m, uint64_t pos, uint32_t prev)
{
        return (uint32_t)(seed_of(m->seed, 5, pos, prev) % 128000);
}

/*
 * The namespace name: which model computed the blocks, and how they are
 * laid out. The fingerprint hashes everything that changes the K and V a
 * token gets: the model id, its weights' revision, their dtype, the tensor
 * parallel layout and this process's rank in it (a rank holds its own kv
 * heads). A new revision, dtype or layout is a new namespace: old blocks
 * are never hits. The daemon keys blocks by (namespace, key, layer) only.
 */
static int namespace_name(const struct model *m, uint32_t tp_size, uint32_t tp_rank, char *buf, size_t size)
{
        char identity[512];
        XXH128_hash_t h;
        int n;

        n = snprintf(identity, sizeof(identity), "model=%s\nrevision=%s\nweights=f16\nkv=f16\ntp=%u/%u\n", m->id,
                     m->revision, tp_size, tp_rank);
        if (n < 0 || (size_t)n >= sizeof(identity))
                return -ENAMETOOLONG;
        h = XXH3_128bits(identity, (size_t)n);
        /* 1..127 printable bytes: the id's last part, the hash, the version. */
        n = snprintf(buf, size, "%.48s@%016" PRIx64 "%016" PRIx64 "/kv%u",
                     strrchr(m->id, '/') ? strrchr(m->id, '/') + 1 : m->id, (uint64_t)h.high64,
                     (uint64_t)h.low64, KV_LAYOUT_VERSION);
        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* ---- the engine --------------------------------------------------------- */

#define STAGING_SLOTS 64u       /* the engine's own slots, before kvc_sparse's */
#define WAIT_MS 10000           /* misses that take longer than this fail the step */

struct options {
        const char *socket;
        uint32_t steps, prompt_tokens, budget, check_every;
        double topk;
        const char *model_revision;
        uint64_t prompt_seed;
        bool no_report;
};

/* Where a layer's time goes (report()). */
struct timing {
        uint64_t begin_ns, wait_ns, end_ns;     /* in kvc_sparse */
        uint64_t begin_miss_ns, miss_layers;    /* of those, layers that sent a Get */
        uint64_t scores_ns, attn_ns, mass_ns;   /* in the engine's kernels */
        uint64_t layers;
};

struct engine {
        const struct options *o;
        struct model m;
        kvc_client *c;
        uint32_t ns;
        uint64_t block_bytes;
        kvc_pool *pool;
        kvc_sparse *sp;
        kvc_sparse_seq *seq;
        uint32_t *tokens;               /* prompt + generated: [max_tokens] */
        uint64_t n_tokens, max_tokens;
        uint32_t max_blocks;
        size_t summary_floats;
        float *summaries;               /* [layers][max_blocks][summary_floats], kept by the engine */
        float *score_work;              /* kvk_method_scores()'s scratch */
        uint32_t tail_n;                /* tokens in the tail block (every layer's) */
        /* one layer's scratch */
        float q[Q_HEADS * HEAD_DIM];                    /* its query */
        float out[Q_HEADS * HEAD_DIM], lse[Q_HEADS];    /* its attention (pass 1) */
        float out2[Q_HEADS * HEAD_DIM], lse2[Q_HEADS];  /* pass 2 */
        float *scores, *mass, *part_mass;
        const void **ptrs;
        uint32_t *valid, *which;
        uint8_t *first_pass;
        /* the reference: full attention over every block, recomputed */
        void *ref_blocks;
        float ref_out[Q_HEADS * HEAD_DIM];
        double err_max, err_sum;
        uint32_t err_n, failed_layers;
        struct timing tm;
};

static uint64_t now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Prints what failed (the daemon's words too) and returns err. */
static int fail(const struct engine *e, const char *what, int err)
{
        const char *daemon = e->c ? kvc_last_error(e->c) : "";

        fprintf(stderr, "sparse-engine: %s: %s%s%s%s\n", what, kvc_strerror(err), *daemon ? " (daemon: " : "",
                daemon, *daemon ? ")" : "");
        return err;
}

static float *summary_of(const struct engine *e, uint32_t layer, uint32_t b)
{
        return e->summaries + ((size_t)layer * e->max_blocks + b) * e->summary_floats;
}

static int engine_open(struct engine *e, const struct options *o)
{
        const struct kvc_geometry g = { .layers = LAYERS, .kv_heads = KV_HEADS, .head_dim = HEAD_DIM,
                                        .dtype = KVC_DTYPE_F16, .block_tokens = BLOCK_TOKENS };
        struct kvc_sparse_opts so = {
                .size = sizeof(so),
                .layers = LAYERS,
                .block_tokens = BLOCK_TOKENS,
                .max_seqs = 1,
                .slot0 = STAGING_SLOTS,
                .budget = o->budget,
                .topk = o->topk,
                .sink = 1,                      /* the first block: attention sinks */
                .local = 2,                     /* the last two: recent context */
                .flags = o->no_report ? 0 : KVC_SPARSE_REPORT_SCORES,   /* heat for the daemon */
        };
        char name[128];
        int r;

        e->o = o;
        model_init(&e->m, "kvdrive/synthetic-8l", o->model_revision);
        r = namespace_name(&e->m, 1, 0, name, sizeof(name));
        if (r < 0)
                return fail(e, "namespace name", r);
        r = kvc_connect(o->socket, "sparse-engine", &e->c);
        if (r < 0)
                return fail(e, "connect (kvdrived running? --socket)", r);
        r = kvc_register_namespace(e->c, name, &g, &e->ns, &e->block_bytes);
        if (r < 0)
                return fail(e, "register namespace", r);
        r = kvc_pool_create(e->c, (uint32_t)(STAGING_SLOTS + kvc_sparse_pool_slots(&so)), e->block_bytes, &e->pool);
        if (r < 0)
                return fail(e, "pool", r);
        r = kvc_sparse_open(e->c, e->ns, e->pool, &so, &e->sp);
        if (r < 0)
                return fail(e, "kvc_sparse_open", r);
        printf("namespace: %s (block %" PRIu64 " bytes), pool %u slots: %u staging, %" PRIu64 " kvc_sparse\n", name,
               e->block_bytes, kvc_pool_slot_count(e->pool), STAGING_SLOTS, kvc_sparse_pool_slots(&so));

        e->max_tokens = (uint64_t)o->prompt_tokens + o->steps;
        e->max_blocks = (uint32_t)(e->max_tokens / BLOCK_TOKENS) + 1;
        /* The selection method engines should use (kernels.h, "Selection
         * methods"): each block's summary, and its estimated attention mass. */
        e->summary_floats = kvk_method_summary_floats(&e->m.shape, KVK_METHOD_DEFAULT);
        e->score_work = calloc(kvk_method_work_floats(&e->m.shape, KVK_METHOD_DEFAULT, e->max_blocks) + 1,
                               sizeof(float));
        e->tokens = calloc(e->max_tokens, sizeof(*e->tokens));
        e->summaries = calloc((size_t)LAYERS * e->max_blocks * e->summary_floats, sizeof(float));
        e->scores = calloc(e->max_blocks, sizeof(float));
        e->mass = calloc(e->max_blocks + 1, sizeof(float));
        e->part_mass = calloc(e->max_blocks + 1, sizeof(float));
        e->ptrs = calloc(e->max_blocks + 1, sizeof(*e->ptrs));
        e->valid = calloc(e->max_blocks + 1, sizeof(*e->valid));
        e->which = calloc(e->max_blocks + 1, sizeof(*e->which));
        e->first_pass = calloc(e->max_blocks + 1, 1);
        e->ref_blocks = calloc(e->max_blocks, e->block_bytes);
        if (!e->tokens || !e->summaries || !e->score_work || !e->scores || !e->mass || !e->part_mass || !e->ptrs ||
            !e->valid || !e->which || !e->first_pass || !e->ref_blocks)
                return fail(e, "memory", -ENOMEM);
        return 0;
}

static void engine_close(struct engine *e)
{
        if (e->seq)
                (void)kvc_sparse_seq_end(e->seq);
        kvc_sparse_close(e->sp);
        kvc_pool_free(e->pool);
        kvc_disconnect(e->c);
        free(e->tokens);
        free(e->summaries);
        free(e->score_work);
        free(e->scores);
        free(e->mass);
        free(e->part_mass);
        free(e->ptrs);
        free(e->valid);
        free(e->which);
        free(e->first_pass);
        free(e->ref_blocks);
}

/* ---- prefill ------------------------------------------------------------ */

/*
 * Blocks [b0, b0 + n) of every layer, n <= STAGING_SLOTS: a Get of those the
 * cache holds (b < cached), then the summaries the engine keeps; whatever
 * was not loaded (or not cached) is computed, summarised and Put.
 * *computed gets a 1 for each block of which some layer was computed.
 */
static int prefill_chunk(struct engine *e, uint32_t b0, uint32_t n, uint32_t cached, uint8_t *computed)
{
        struct kvc_block_ref refs[STAGING_SLOTS];
        uint8_t st[STAGING_SLOTS];
        int r;

        for (uint32_t l = 0; l < LAYERS; l++) {
                uint32_t m = 0, n_get = b0 + n <= cached ? n : cached > b0 ? cached - b0 : 0;

                for (uint32_t i = 0; i < n; i++) {
                        refs[i] = (struct kvc_block_ref){ .layer = l, .slot = i };
                        r = kvc_sparse_seq_key(e->seq, b0 + i, &refs[i].key);
                        if (r < 0)
                                return fail(e, "key", r);
                        st[i] = KVC_ITEM_MISS;
                }
                if (n_get) {
                        r = kvc_get(e->c, e->ns, e->pool, refs, n_get, st);
                        if (r < 0)
                                return fail(e, "prefill get", r);
                }
                /* Compute what the cache did not give, and Put it. */
                for (uint32_t i = 0; i < n; i++) {
                        if (st[i] == KVC_ITEM_OK)
                                continue;
                        make_block(&e->m, l, b0 + i, e->tokens, BLOCK_TOKENS, kvc_pool_slot(e->pool, i));
                        computed[b0 + i] = 1;
                        refs[m++] = refs[i];
                }
                for (uint32_t i = 0; i < n; i++)
                        (void)kvk_method_summary(&e->m.shape, KVK_METHOD_DEFAULT, kvc_pool_slot(e->pool, i),
                                                 BLOCK_TOKENS, summary_of(e, l, b0 + i));
                if (m == 0)
                        continue;
                r = kvc_put(e->c, e->ns, e->pool, refs, m, st);
                if (r < 0)
                        return fail(e, "prefill put", r);
                for (uint32_t i = 0; i < m; i++)
                        if (st[i] != KVC_ITEM_OK && st[i] != KVC_ITEM_EXISTS)
                                return fail(e, "prefill put: a block was not stored (host tier full, quota?)", -ENOSPC);
        }
        return 0;
}

static int prefill(struct engine *e)
{
        const struct options *o = e->o;
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PREFIX };
        uint32_t full = o->prompt_tokens / BLOCK_TOKENS, n_computed = 0, chunk;
        uint8_t *computed;
        uint64_t s = o->prompt_seed;
        int cached, r;

        for (uint32_t i = 0; i < o->prompt_tokens; i++)
                e->tokens[i] = (uint32_t)(splitmix(&s) % 128000);
        e->n_tokens = o->prompt_tokens;
        /* Prefix keys: block i's key chains the tokens of blocks 0..i. */
        so.tokens = e->tokens;
        so.n_tokens = o->prompt_tokens;
        r = kvc_sparse_seq_begin(e->sp, &so, &e->seq);
        if (r < 0)
                return fail(e, "kvc_sparse_seq_begin", r);
        cached = kvc_sparse_seq_cached(e->seq);
        if (cached < 0)
                return fail(e, "kvc_sparse_seq_cached", cached);
        computed = calloc(full + 1, 1);
        if (!computed)
                return fail(e, "memory", -ENOMEM);
        /* A chunk is at most the staging slots, and what one request may carry. */
        chunk = kvc_max_items(e->c) < STAGING_SLOTS ? kvc_max_items(e->c) : STAGING_SLOTS;
        for (uint32_t b = 0; b < full; b += chunk) {
                r = prefill_chunk(e, b, full - b < chunk ? full - b : chunk, (uint32_t)cached, computed);
                if (r < 0)
                        goto out;
        }
        for (uint32_t b = 0; b < full; b++)
                n_computed += computed[b];
        r = kvc_sparse_seq_set_stored(e->seq, full);
        if (r < 0) {
                fail(e, "kvc_sparse_seq_set_stored", r);
                goto out;
        }
        /* The prompt's last, partial block goes into every layer's tail. */
        e->tail_n = o->prompt_tokens % BLOCK_TOKENS;
        for (uint32_t l = 0; l < LAYERS && e->tail_n; l++) {
                int slot = kvc_sparse_tail_slot(e->seq, l);

                if (slot < 0) {
                        r = fail(e, "tail slot", slot);
                        goto out;
                }
                make_block(&e->m, l, full, e->tokens, e->tail_n, kvc_pool_slot(e->pool, (uint32_t)slot));
        }
        printf("prompt: %u tokens, %u full blocks: %d cached, %u computed, %u tokens in the tail\n", o->prompt_tokens,
               full, cached, n_computed, e->tail_n);
        r = 0;
out:
        free(computed);
        return r;
}

/* ---- decode ------------------------------------------------------------- */

enum pass {
        PASS_HERE,              /* what is resident now, and the tail: marks them in first_pass */
        PASS_LANDED,            /* what landed since PASS_HERE */
        PASS_ALL,               /* everything resident, and the tail */
};

/*
 * Lists the blocks of the plan to read in a pass into e->ptrs and e->valid,
 * with their plan index in e->which (plan->n for the tail). A block whose
 * Get failed stays non-resident and is left out. Returns the count.
 */
static uint32_t pass_blocks(struct engine *e, const struct kvc_sparse_plan *plan, enum pass pass)
{
        uint32_t n = 0;

        for (uint32_t i = 0; i < plan->n; i++) {
                if (pass == PASS_HERE)
                        e->first_pass[i] = plan->resident[i];
                if (!plan->resident[i] || (pass == PASS_LANDED && e->first_pass[i]))
                        continue;
                e->ptrs[n] = kvc_pool_slot(e->pool, plan->slots[i]);
                e->valid[n] = BLOCK_TOKENS;
                e->which[n++] = i;
        }
        if (pass != PASS_LANDED) {
                e->ptrs[n] = kvc_pool_slot(e->pool, plan->tail_slot);
                e->valid[n] = e->tail_n + 1;            /* the new token is in it */
                e->which[n++] = plan->n;
        }
        return n;
}

static int attend(struct engine *e, uint32_t n, float *out, float *lse)
{
        uint64_t t0 = now_ns();
        int r = kvk_decode_attention(&e->m.shape, e->q, e->ptrs, e->valid, n, out, lse);

        e->tm.attn_ns += now_ns() - t0;
        return r < 0 ? fail(e, "attention", r) : 0;
}

/*
 * The attention mass of each chosen block (0 for one that failed to load),
 * for kvc_sparse_end_layer(): one more pass here; a GPU engine gets them
 * from its attention launch (kvk_cuda_decode_attention()'s d_ret_mass).
 */
static int masses(struct engine *e, const struct kvc_sparse_plan *plan)
{
        uint32_t n = pass_blocks(e, plan, PASS_ALL);
        uint64_t t0 = now_ns();
        int r = kvk_block_attention_mass(&e->m.shape, e->q, e->ptrs, e->valid, n, e->part_mass);

        e->tm.mass_ns += now_ns() - t0;
        if (r < 0)
                return fail(e, "attention mass", r);
        memset(e->mass, 0, sizeof(float) * plan->n);
        for (uint32_t j = 0; j < n; j++)
                if (e->which[j] < plan->n)
                        e->mass[e->which[j]] = e->part_mass[j];
        return 0;
}

/* Full attention over every stored block and the tail, recomputed from the
 * model, against e->out: what a real engine cannot afford, to show the error. */
static int check_layer(struct engine *e, uint32_t layer)
{
        uint32_t n = kvc_sparse_seq_stored(e->seq, layer);
        double diff = 0, norm = 0;
        int r;

        for (uint32_t b = 0; b <= n; b++) {
                void *block = (char *)e->ref_blocks + (size_t)b * e->block_bytes;

                e->valid[b] = b < n ? BLOCK_TOKENS : e->tail_n + 1;
                e->ptrs[b] = block;
                make_block(&e->m, layer, b, e->tokens, e->valid[b], block);
        }
        r = kvk_full_attention(&e->m.shape, e->q, e->ptrs, e->valid, n + 1, e->ref_out, NULL);
        if (r < 0)
                return fail(e, "full attention", r);
        for (uint32_t i = 0; i < Q_HEADS * HEAD_DIM; i++) {
                diff += ((double)e->out[i] - e->ref_out[i]) * ((double)e->out[i] - e->ref_out[i]);
                norm += (double)e->ref_out[i] * e->ref_out[i];
        }
        diff = sqrt(diff / norm);
        e->err_max = diff > e->err_max ? diff : e->err_max;
        e->err_sum += diff;
        e->err_n++;
        return 0;
}

/* One layer of one decode step: the loop of docs/engine-integration.md. */
static int decode_layer(struct engine *e, uint32_t layer, uint32_t step, bool check)
{
        const struct kvc_sparse_plan *plan;
        uint32_t n_stored = kvc_sparse_seq_stored(e->seq, layer), n;
        uint64_t pos = e->n_tokens - 1, t0;
        int slot, r, w;

        /* The new token's query, and its K and V into the layer's tail block
         * (kvc_sparse_tail_slot() waits until the last full tail is copied out). */
        make_query(&e->m, layer, step, e->q);
        slot = kvc_sparse_tail_slot(e->seq, layer);
        if (slot < 0)
                return fail(e, "tail slot", slot);
        token_kv(&e->m, layer, pos, e->tokens[pos], kvc_pool_slot(e->pool, (uint32_t)slot), e->tail_n);

        /* 1. Scores of the stored blocks, from the summaries the engine keeps. */
        t0 = now_ns();
        r = kvk_method_scores(&e->m.shape, KVK_METHOD_DEFAULT, e->q, summary_of(e, layer, 0), n_stored,
                              e->score_work, e->scores);
        e->tm.scores_ns += now_ns() - t0;
        if (r < 0)
                return fail(e, "scores", r);

        /* 2. The plan: the chosen blocks, their slots, which are resident; the
         *    misses are already on their way. */
        t0 = now_ns();
        r = kvc_sparse_begin_layer(e->seq, layer, e->scores, n_stored, &plan);
        t0 = now_ns() - t0;
        if (r < 0)
                return fail(e, "kvc_sparse_begin_layer", r);
        e->tm.begin_ns += t0;
        if (plan->n_missing) {
                e->tm.begin_miss_ns += t0;
                e->tm.miss_layers++;
        }

        /* 3. Many misses: attend over what is here while they land. */
        if (plan->two_pass) {
                n = pass_blocks(e, plan, PASS_HERE);
                r = attend(e, n, e->out, e->lse);
                if (r < 0)
                        goto end;
        }

        /* 4. Wait for the misses (a counter in shared memory: no message). */
        t0 = now_ns();
        w = kvc_sparse_wait_layer(e->seq, WAIT_MS);
        e->tm.wait_ns += now_ns() - t0;
        if (w == -EIO) {
                /* A block could not be loaded: its resident flag stays 0, we
                 * attend without it, and kvc_sparse fetches it again next time. */
                e->failed_layers++;
        } else if (w < 0) {
                r = fail(e, "kvc_sparse_wait_layer", w);
                goto end;
        }

        /* 5. Attend over the rest and merge, or over everything at once. */
        if (plan->two_pass) {
                n = pass_blocks(e, plan, PASS_LANDED);
                if (n > 0) {
                        r = attend(e, n, e->out2, e->lse2);
                        if (r < 0)
                                goto end;
                        /* Exact, through the two partials' log-sum-exp. */
                        r = kvk_lse_merge(&e->m.shape, e->out, e->lse, e->out2, e->lse2);
                        if (r < 0)
                                goto end;
                }
        } else {
                n = pass_blocks(e, plan, PASS_ALL);
                r = attend(e, n, e->out, e->lse);
                if (r < 0)
                        goto end;
        }

        /* 6. The masses keep the blocks attention uses resident. */
        r = masses(e, plan);
end:
        t0 = now_ns();
        (void)kvc_sparse_end_layer(e->seq, r == 0 ? e->mass : NULL);
        e->tm.end_ns += now_ns() - t0;
        e->tm.layers++;
        if (r == 0 && check)
                r = check_layer(e, layer);
        return r;
}

/*
 * The tail block of every layer is full: summarise it (it becomes a stored
 * block the next steps score) and hand it to kvc_sparse, which Puts it
 * under the prefix key of its tokens.
 */
static int tail_full(struct engine *e)
{
        const uint32_t *tokens = e->tokens + e->n_tokens - BLOCK_TOKENS;

        for (uint32_t l = 0; l < LAYERS; l++) {
                uint32_t b = kvc_sparse_seq_stored(e->seq, l);
                int slot = kvc_sparse_tail_slot(e->seq, l), r;

                if (slot < 0)
                        return fail(e, "tail slot", slot);
                r = kvk_method_summary(&e->m.shape, KVK_METHOD_DEFAULT, kvc_pool_slot(e->pool, (uint32_t)slot),
                                       BLOCK_TOKENS, summary_of(e, l, b));
                if (r == 0)
                        r = kvc_sparse_tail_full(e->seq, l, tokens);
                if (r < 0)
                        return fail(e, "kvc_sparse_tail_full", r);
        }
        e->tail_n = 0;
        return 0;
}

static int decode(struct engine *e)
{
        const struct options *o = e->o;

        for (uint32_t step = 0; step < o->steps; step++) {
                bool check = o->check_every && step % o->check_every == 0;
                uint64_t pos = e->n_tokens;

                /* The token this step feeds in: a real engine sampled it from
                 * the last step's logits. */
                e->tokens[pos] = next_token(&e->m, pos, pos ? e->tokens[pos - 1] : 0);
                e->n_tokens++;
                for (uint32_t l = 0; l < LAYERS; l++) {
                        int r = decode_layer(e, l, step, check);

                        if (r < 0)
                                return r;
                }
                if (++e->tail_n == BLOCK_TOKENS) {
                        int r = tail_full(e);

                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

/* ---- main --------------------------------------------------------------- */

static int daemon_bytes(struct engine *e, uint64_t *ret_in, uint64_t *ret_out)
{
        struct kvc_stats *s;
        int r = kvc_stats_get(e->c, &s);

        if (r < 0)
                return fail(e, "stats", r);
        *ret_in = s->bytes_in;
        *ret_out = s->bytes_out;
        kvc_stats_free(s);
        return 0;
}

static double per_layer(uint64_t ns, uint64_t layers)
{
        return layers ? (double)ns / (double)layers : 0;
}

static void report(struct engine *e, const uint64_t *in, const uint64_t *out)
{
        const struct timing *t = &e->tm;
        struct kvc_sparse_stats st;

        kvc_sparse_get_stats(e->sp, &st);
        printf("decode: %u steps x %u layers, budget %u slots, top-k %.3g of the stored blocks\n", e->o->steps, LAYERS,
               e->o->budget, e->o->topk);
        if (e->err_n)
                printf("check: %u layers against full attention: relative error max %.2e, mean %.2e\n", e->err_n,
                       e->err_max, e->err_sum / e->err_n);
        printf("kvc_sparse: %" PRIu64 " layers, %" PRIu64 " blocks chosen: %" PRIu64 " resident, %" PRIu64
               " fetched (%.1f%% hits); %" PRIu64 " two-pass layers, %" PRIu64 " hidden; %" PRIu64
               " tail puts; %u layers lost a block\n",
               st.layers, st.chosen, st.hits, st.misses, st.chosen ? 100.0 * (double)st.hits / (double)st.chosen : 0,
               st.two_pass_layers, st.hidden_layers, st.tail_puts, e->failed_layers);
        printf("moved: prefill %.2f MiB in, %.2f MiB out; decode %.2f MiB in, %.2f MiB out\n",
               (double)(in[1] - in[0]) / 1048576, (double)(out[1] - out[0]) / 1048576,
               (double)(in[2] - in[1]) / 1048576, (double)(out[2] - out[1]) / 1048576);
        printf("per layer (ns): begin_layer %.0f (%.0f with misses, %" PRIu64 " layers; %.0f without), "
               "wait_layer %.0f, end_layer %.0f%s\n",
               per_layer(t->begin_ns, t->layers), per_layer(t->begin_miss_ns, t->miss_layers), t->miss_layers,
               per_layer(t->begin_ns - t->begin_miss_ns, t->layers - t->miss_layers), per_layer(t->wait_ns, t->layers),
               per_layer(t->end_ns, t->layers), e->o->no_report ? " (no scores reported)" : "");
        printf("engine per layer (ns): scores %.0f, attention %.0f, masses %.0f (up to %u blocks, %s kernels)\n",
               per_layer(t->scores_ns, t->layers), per_layer(t->attn_ns, t->layers), per_layer(t->mass_ns, t->layers),
               (uint32_t)(e->n_tokens / BLOCK_TOKENS), kvk_backend_name());
}

static void usage(FILE *f)
{
        fprintf(f, "usage: sparse-engine [options]\n"
                   "  --socket PATH          kvdrived's socket (default: the usual search, README.md)\n"
                   "  --steps N              decode steps (default 64)\n"
                   "  --prompt-tokens N      prompt length (default 4103: 256 blocks and 7 tokens)\n"
                   "  --budget SLOTS         device slots for chosen blocks (default 256)\n"
                   "  --topk SHARE           share of a layer's blocks chosen, (0, 1] (default 0.0625)\n"
                   "  --check-every N        compare with full attention every N steps (default 16, 0: never)\n"
                   "  --prompt-seed N        which prompt (default 1)\n"
                   "  --model-revision STR   which weights (default r1): another namespace\n"
                   "  --no-report            end_layer reports no scores to the daemon\n");
}

static int parse_u32(const char *s, uint32_t min, uint32_t *ret)
{
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno || end == s || *end || v < min || v > UINT32_MAX / 2)
                return -EINVAL;
        *ret = (uint32_t)v;
        return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
        static const struct option longopts[] = {
                { "socket", required_argument, NULL, 's' },
                { "steps", required_argument, NULL, 'n' },
                { "prompt-tokens", required_argument, NULL, 'p' },
                { "budget", required_argument, NULL, 'b' },
                { "topk", required_argument, NULL, 'k' },
                { "check-every", required_argument, NULL, 'c' },
                { "prompt-seed", required_argument, NULL, 'S' },
                { "model-revision", required_argument, NULL, 'm' },
                { "no-report", no_argument, NULL, 'R' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        uint32_t seed;
        char *end;
        int c, r = 0;

        *o = (struct options){ .steps = 64, .prompt_tokens = 4103, .budget = 256, .topk = 0.0625, .check_every = 16,
                               .model_revision = "r1", .prompt_seed = 1 };
        while (r == 0 && (c = getopt_long(argc, argv, "s:h", longopts, NULL)) != -1) {
                switch (c) {
                case 's':
                        o->socket = optarg;
                        break;
                case 'n':
                        r = parse_u32(optarg, 0, &o->steps);
                        break;
                case 'p':
                        r = parse_u32(optarg, 1, &o->prompt_tokens);
                        break;
                case 'b':
                        r = parse_u32(optarg, 1, &o->budget);
                        break;
                case 'k':
                        o->topk = strtod(optarg, &end);
                        r = *end || !(o->topk > 0 && o->topk <= 1) ? -EINVAL : 0;
                        break;
                case 'c':
                        r = parse_u32(optarg, 0, &o->check_every);
                        break;
                case 'S':
                        r = parse_u32(optarg, 0, &seed);
                        o->prompt_seed = seed;
                        break;
                case 'm':
                        o->model_revision = optarg;
                        break;
                case 'R':
                        o->no_report = true;
                        break;
                case 'h':
                        usage(stdout);
                        exit(EXIT_SUCCESS);
                default:
                        r = -EINVAL;
                }
        }
        if (r < 0 || optind < argc) {
                usage(stderr);
                return -EINVAL;
        }
        return 0;
}

int main(int argc, char **argv)
{
        struct options o;
        struct engine e = { 0 };
        uint64_t in[3], out[3];
        int r;

        if (parse_options(argc, argv, &o) < 0)
                return EXIT_FAILURE;
        r = engine_open(&e, &o);
        if (r == 0)
                r = daemon_bytes(&e, &in[0], &out[0]);
        if (r == 0)
                r = prefill(&e);
        if (r == 0)
                r = daemon_bytes(&e, &in[1], &out[1]);
        if (r == 0)
                r = decode(&e);
        /* The last tail Puts land before the sequence ends. */
        if (r == 0) {
                r = kvc_sparse_seq_end(e.seq);
                e.seq = NULL;
                if (r < 0)
                        fail(&e, "kvc_sparse_seq_end", r);
        }
        if (r == 0)
                r = daemon_bytes(&e, &in[2], &out[2]);
        if (r == 0)
                report(&e, in, out);
        engine_close(&e);
        return r == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
