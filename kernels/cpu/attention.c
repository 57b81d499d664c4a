/* SPDX-License-Identifier: MIT */
/*
 * The CPU kernels' algorithms: argument checks, loops over heads and blocks,
 * and the online softmax. The arithmetic of the inner loops is the back
 * end's (struct kvk_ops).
 */
#include <errno.h>
#include <math.h>

#include "kernels-internal.h"

bool kvk_shape_valid(const struct kvk_shape *s)
{
        return s && (s->dtype == KVK_F16 || s->dtype == KVK_BF16) &&
               s->kv_heads >= 1 && s->kv_heads <= KVK_MAX_KV_HEADS &&
               s->q_heads >= 1 && s->q_heads <= KVK_MAX_Q_HEADS &&
               s->q_heads % s->kv_heads == 0 &&
               s->head_dim >= 1 && s->head_dim <= KVK_MAX_HEAD_DIM &&
               s->block_tokens >= 1 && s->block_tokens <= KVK_MAX_BLOCK_TOKENS;
}

size_t kvk_block_bytes(const struct kvk_shape *s)
{
        if (!kvk_shape_valid(s))
                return 0;
        return 2 * (size_t)s->kv_heads * s->block_tokens * s->head_dim * sizeof(uint16_t);
}

size_t kvk_summary_floats(const struct kvk_shape *s)
{
        if (!kvk_shape_valid(s))
                return 0;
        return (size_t)s->kv_heads * 2 * s->head_dim;
}

/* Elements from the K of kv head g to the K of head g + 1, and from K to V. */
static size_t head_elems(const struct kvk_shape *s)
{
        return (size_t)s->block_tokens * s->head_dim;
}

static size_t kv_elems(const struct kvk_shape *s)
{
        return s->kv_heads * head_elems(s);
}

int kvk_block_summary(const struct kvk_shape *s, const void *block, uint32_t valid_tokens,
                      float *ret_summary)
{
        const struct kvk_ops *ops = kvk__ops();
        const uint16_t *k = block;

        if (!kvk_shape_valid(s) || !block || !ret_summary || valid_tokens == 0 ||
            valid_tokens > s->block_tokens)
                return -EINVAL;

        for (uint32_t g = 0; g < s->kv_heads; g++) {
                float *mn = ret_summary + (size_t)g * 2 * s->head_dim;

                ops->summary(k + g * head_elems(s), valid_tokens, s->head_dim, s->dtype, mn,
                             mn + s->head_dim);
        }
        return 0;
}

int kvk_block_scores(const struct kvk_shape *s, const float *q, const float *summaries,
                     uint32_t n_blocks, float *ret_scores)
{
        const struct kvk_ops *ops = kvk__ops();
        size_t stride = kvk_summary_floats(s);

        if (!kvk_shape_valid(s) || !q || !summaries || !ret_scores)
                return -EINVAL;

        if (n_blocks > 0)
                ops->scores(q, s->q_heads, s->q_heads / s->kv_heads, s->head_dim, summaries,
                            stride, n_blocks, ret_scores);
        return 0;
}

static int check_blocks(const struct kvk_shape *s, const float *q, const void *const *blocks,
                        const uint32_t *valid_tokens, uint32_t n, const void *ret)
{
        uint64_t total = 0;

        if (!kvk_shape_valid(s) || !q || !blocks || !valid_tokens || !ret)
                return -EINVAL;
        for (uint32_t b = 0; b < n; b++) {
                if (!blocks[b] || valid_tokens[b] > s->block_tokens)
                        return -EINVAL;
                total += valid_tokens[b];
        }
        return total > 0 ? 0 : -EINVAL;
}

/*
 * Running softmax state of one tile of nh <= KVK_HTILE query heads of kv
 * head g: max logit m, sum of exp(logit - m) l, and (when acc is not NULL)
 * the sum of exp(logit - m) v in acc (nh rows of head_dim).
 */
struct tile {
        const struct kvk_ops *ops;
        const struct kvk_shape *s;
        const float *q;         /* nh query rows */
        uint32_t nh;
        uint32_t g;
        float scale;
        float m[KVK_HTILE];
        float l[KVK_HTILE];
        float *acc;
};

static void tile_init(struct tile *t, const struct kvk_ops *ops, const struct kvk_shape *s,
                      const float *q, uint32_t h0, uint32_t nh, float *acc)
{
        *t = (struct tile){
                .ops = ops,
                .s = s,
                .q = q + (size_t)h0 * s->head_dim,
                .nh = nh,
                .g = h0 / (s->q_heads / s->kv_heads),
                .scale = 1.0f / sqrtf((float)s->head_dim),
                .acc = acc,
        };
        for (uint32_t j = 0; j < nh; j++) {
                t->m[j] = -INFINITY;
                t->l[j] = 0.0f;
        }
        if (acc)
                memset(acc, 0, (size_t)nh * s->head_dim * sizeof(float));
}

/* Logits of tokens [t0, t0 + nt) of block into sc[j * KVK_TCHUNK + t]. */
static void tile_logits(const struct tile *t, const void *block, uint32_t t0, uint32_t nt,
                        float *sc)
{
        const struct kvk_shape *s = t->s;
        const uint16_t *k = (const uint16_t *)block + t->g * head_elems(s) +
                            (size_t)t0 * s->head_dim;

        t->ops->logits(t->q, t->nh, k, nt, s->head_dim, s->dtype, t->scale, sc);
}

/* Asks for the K (and V) rows of head g of the next block while this one
 * computes: the hardware prefetcher does not follow the jumps between
 * blocks, and a decode step reads every byte once, mostly from DRAM. */
static void tile_prefetch(const struct tile *t, const void *block, uint32_t valid, bool v)
{
        const struct kvk_shape *s = t->s;
        const uint8_t *k = (const uint8_t *)((const uint16_t *)block + t->g * head_elems(s));
        const size_t bytes = (size_t)valid * s->head_dim * sizeof(uint16_t);
        const size_t to_v = kv_elems(s) * sizeof(uint16_t);

        for (size_t off = 0; off < bytes; off += 64) {
                __builtin_prefetch(k + off);
                if (v)
                        __builtin_prefetch(k + to_v + off);
        }
}

/* Folds the valid tokens of one block into the running state; with a fused
 * back end, the next block's rows (next, next_valid; NULL: none) are
 * prefetched along the way. */
static void tile_fold_block(struct tile *t, const void *block, uint32_t valid,
                            const void *next, uint32_t next_valid)
{
        const struct kvk_shape *s = t->s;
        const uint16_t *k = (const uint16_t *)block + t->g * head_elems(s);
        const uint16_t *pk = next ? (const uint16_t *)next + t->g * head_elems(s) : k;

        if (!next)
                next_valid = 0;
        if (valid > 0)
                t->ops->fold(t->q, t->nh, k, k + kv_elems(s), valid, s->head_dim, s->dtype,
                             t->scale, t->m, t->l, t->acc, pk, pk + kv_elems(s), next_valid);
        else if (next)
                tile_prefetch(t, next, next_valid, true);
}

/* Folds the valid tokens of one block into the running state. */
static void tile_add_block(struct tile *t, const void *block, uint32_t valid)
{
        const struct kvk_shape *s = t->s;
        const uint32_t d = s->head_dim;
        float sc[KVK_HTILE * KVK_TCHUNK];

        for (uint32_t t0 = 0; t0 < valid; t0 += KVK_TCHUNK) {
                uint32_t nt = valid - t0 < KVK_TCHUNK ? valid - t0 : KVK_TCHUNK;

                tile_logits(t, block, t0, nt, sc);
                for (uint32_t j = 0; j < t->nh; j++) {
                        float *sj = sc + j * KVK_TCHUNK;
                        float cm = sj[0];

                        for (uint32_t i = 1; i < nt; i++)
                                cm = sj[i] > cm ? sj[i] : cm;
                        if (cm > t->m[j]) {
                                /* New maximum: rescale what was summed so far. */
                                float c = expf(t->m[j] - cm);

                                if (t->acc && t->l[j] > 0.0f) {
                                        float *aj = t->acc + (size_t)j * d;

                                        for (uint32_t i = 0; i < d; i++)
                                                aj[i] *= c;
                                }
                                t->l[j] *= c;
                                t->m[j] = cm;
                        }
                        for (uint32_t i = 0; i < nt; i++) {
                                sj[i] = expf(sj[i] - t->m[j]);
                                t->l[j] += sj[i];
                        }
                }
                if (t->acc) {
                        const uint16_t *v = (const uint16_t *)block + kv_elems(s) +
                                            t->g * head_elems(s) + (size_t)t0 * d;

                        t->ops->accum(t->acc, t->nh, sc, v, nt, d, s->dtype);
                }
        }
}

/* Sum over the valid tokens of block of exp(logit - lse[j]), all heads of the tile. */
static float tile_block_mass(const struct tile *t, const void *block, uint32_t valid,
                             const float *lse)
{
        float sc[KVK_HTILE * KVK_TCHUNK];
        float sum = 0.0f;

        for (uint32_t t0 = 0; t0 < valid; t0 += KVK_TCHUNK) {
                uint32_t nt = valid - t0 < KVK_TCHUNK ? valid - t0 : KVK_TCHUNK;

                tile_logits(t, block, t0, nt, sc);
                for (uint32_t j = 0; j < t->nh; j++)
                        for (uint32_t i = 0; i < nt; i++)
                                sum += expf(sc[j * KVK_TCHUNK + i] - lse[j]);
        }
        return sum;
}

/* Tiles of a GQA group: KVK_HTILE heads at a time, the rest one by one
 * (each back end has a fast path for exactly KVK_HTILE heads). */
static uint32_t tile_heads(uint32_t left)
{
        return left >= KVK_HTILE ? KVK_HTILE : 1;
}

/* Tiles folded block by block (fused back ends): the state of up to this
 * many tiles lives on the stack. */
#define BAND_TILES 64u

/* Blocks ahead whose rows are prefetched (1-3 measured the same). */
#define PF_AHEAD 1u

static void finish_tile(const struct tile *t, uint32_t h0, float *acc, float *ret_lse)
{
        for (uint32_t j = 0; j < t->nh; j++) {
                float inv = 1.0f / t->l[j];
                float *aj = acc + (size_t)j * t->s->head_dim;

                for (uint32_t i = 0; i < t->s->head_dim; i++)
                        aj[i] *= inv;
                if (ret_lse)
                        ret_lse[h0 + j] = t->m[j] + logf(t->l[j]);
        }
}

/*
 * With a fused back end: bands of up to BAND_TILES tiles (all heads at the
 * usual shapes), and in a band the blocks in the outer loop, so that each
 * block (K then V of all kv heads, contiguous) is read as a whole while the
 * next one is prefetched, kv head by kv head, along the way. Reading one kv
 * head of every block before the next kv head (the loop order below) ran
 * 1.3-1.6x slower from DRAM: the same bytes, in 4 KiB pieces 64 KiB apart.
 */
static void attention_by_block(const struct kvk_ops *ops, const struct kvk_shape *s,
                               const float *q, const void *const *blocks,
                               const uint32_t *valid_tokens, uint32_t n_sel, float *ret_out,
                               float *ret_lse)
{
        const uint32_t group = s->q_heads / s->kv_heads;
        struct tile tl[BAND_TILES];
        uint32_t th0[BAND_TILES];

        for (uint32_t h = 0; h < s->q_heads;) {
                uint32_t nt = 0;

                for (; nt < BAND_TILES && h < s->q_heads; nt++) {
                        const uint32_t nh = tile_heads((h / group + 1) * group - h);

                        th0[nt] = h;
                        tile_init(&tl[nt], ops, s, q, h, nh, ret_out + (size_t)h * s->head_dim);
                        h += nh;
                }
                for (uint32_t b = 0; b < n_sel; b++) {
                        const bool last = b + PF_AHEAD >= n_sel;

                        for (uint32_t i = 0; i < nt; i++) {
                                /* The first tile of a kv head prefetches its rows. */
                                const bool pf = !last && (i == 0 || tl[i].g != tl[i - 1].g);

                                tile_fold_block(&tl[i], blocks[b], valid_tokens[b],
                                                pf ? blocks[b + PF_AHEAD] : NULL,
                                                pf ? valid_tokens[b + PF_AHEAD] : 0);
                        }
                }
                for (uint32_t i = 0; i < nt; i++)
                        finish_tile(&tl[i], th0[i], tl[i].acc, ret_lse);
        }
}

int kvk_decode_attention(const struct kvk_shape *s, const float *q, const void *const *blocks,
                         const uint32_t *valid_tokens, uint32_t n_sel, float *ret_out,
                         float *ret_lse)
{
        const struct kvk_ops *ops = kvk__ops();
        const uint32_t group = s ? s->q_heads / (s->kv_heads ? s->kv_heads : 1) : 0;
        int r;

        r = check_blocks(s, q, blocks, valid_tokens, n_sel, ret_out);
        if (r < 0)
                return r;
        if (ops->fold) {
                attention_by_block(ops, s, q, blocks, valid_tokens, n_sel, ret_out, ret_lse);
                return 0;
        }

        for (uint32_t g = 0; g < s->kv_heads; g++) {
                for (uint32_t h0 = g * group, nh; h0 < (g + 1) * group; h0 += nh) {
                        float *acc = ret_out + (size_t)h0 * s->head_dim;
                        struct tile t;

                        nh = tile_heads((g + 1) * group - h0);
                        tile_init(&t, ops, s, q, h0, nh, acc);
                        for (uint32_t b = 0; b < n_sel; b++) {
                                if (b + 1 < n_sel)
                                        tile_prefetch(&t, blocks[b + 1], valid_tokens[b + 1], true);
                                tile_add_block(&t, blocks[b], valid_tokens[b]);
                        }
                        finish_tile(&t, h0, acc, ret_lse);
                }
        }
        return 0;
}

int kvk_full_attention(const struct kvk_shape *s, const float *q, const void *const *blocks,
                       const uint32_t *valid_tokens, uint32_t n_blocks, float *ret_out,
                       float *ret_lse)
{
        return kvk_decode_attention(s, q, blocks, valid_tokens, n_blocks, ret_out, ret_lse);
}

int kvk_block_attention_mass(const struct kvk_shape *s, const float *q,
                             const void *const *blocks, const uint32_t *valid_tokens,
                             uint32_t n, float *ret_mass)
{
        const struct kvk_ops *ops = kvk__ops();
        const uint32_t group = s ? s->q_heads / (s->kv_heads ? s->kv_heads : 1) : 0;
        int r;

        r = check_blocks(s, q, blocks, valid_tokens, n, ret_mass);
        if (r < 0)
                return r;

        memset(ret_mass, 0, (size_t)n * sizeof(float));
        for (uint32_t g = 0; g < s->kv_heads; g++) {
                for (uint32_t h0 = g * group, nh; h0 < (g + 1) * group; h0 += nh) {
                        float lse[KVK_HTILE];
                        struct tile t;

                        /* Two passes: the normaliser first, then each block's share. */
                        nh = tile_heads((g + 1) * group - h0);
                        tile_init(&t, ops, s, q, h0, nh, NULL);
                        for (uint32_t b = 0; b < n; b++)
                                tile_add_block(&t, blocks[b], valid_tokens[b]);
                        for (uint32_t j = 0; j < nh; j++)
                                lse[j] = t.m[j] + logf(t.l[j]);
                        for (uint32_t b = 0; b < n; b++)
                                ret_mass[b] += tile_block_mass(&t, blocks[b], valid_tokens[b],
                                                               lse) / (float)s->q_heads;
                }
        }
        return 0;
}
