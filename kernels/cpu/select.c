/* SPDX-License-Identifier: MIT */
/*
 * Selection methods (kernels.h, "Selection methods"): the summaries each
 * method keeps and the estimated attention mass of a block under a query.
 * KVK_QUEST is kvk_block_summary() / kvk_block_scores(); the others are
 * portable C written so that the compiler vectorises the inner loops over
 * head_dim (they are memory-bound: one pass over the summaries per head).
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "kernels-internal.h"

static const struct method {
        const char *name;
        uint32_t rows;          /* rows of head_dim floats per kv head */
        bool pairs;             /* needs an even head_dim (RoPE pairs) */
} methods[KVK_N_METHODS] = {
        [KVK_QUEST] = { "quest", 2, false },
        [KVK_QUEST_HEADS] = { "quest-heads", 2, false },
        [KVK_ROPE_BOUND] = { "rope-bound", 3, true },
        [KVK_MEAN] = { "mean", 1, false },
        [KVK_GAUSS] = { "gauss", 2, false },
        [KVK_HYBRID] = { "hybrid", 3, false },
};

/* Rows of a summary, by what they hold. */
enum { R_MIN, R_MAX, R_RMAX };

/* The row of the mean (then the variance) in m's summary. */
static uint32_t mean_row(enum kvk_method m)
{
        return m == KVK_HYBRID ? 1 : 0;
}

const char *kvk_method_name(enum kvk_method m)
{
        return (unsigned)m < KVK_N_METHODS ? methods[m].name : NULL;
}

int kvk_method_from_name(const char *name)
{
        for (int m = 0; name && m < KVK_N_METHODS; m++)
                if (strcmp(name, methods[m].name) == 0)
                        return m;
        return -EINVAL;
}

static uint32_t rows_of(const struct kvk_shape *s, enum kvk_method m)
{
        if (!kvk_shape_valid(s) || (unsigned)m >= KVK_N_METHODS || (methods[m].pairs && s->head_dim % 2))
                return 0;
        return methods[m].rows;
}

size_t kvk_method_summary_floats(const struct kvk_shape *s, enum kvk_method m)
{
        uint32_t rows = rows_of(s, m);

        return rows ? (size_t)rows * s->kv_heads * s->head_dim : 0;
}

size_t kvk_method_work_floats(const struct kvk_shape *s, enum kvk_method m, uint32_t n)
{
        /* A row of estimates per block (KVK_HYBRID's in two terms: the
         * bulk's and the spike's), then three rows of per-head sums. */
        return rows_of(s, m) && m != KVK_QUEST ? ((size_t)n + 3) * s->q_heads * (m == KVK_HYBRID ? 2 : 1) : 0;
}

static float elem(const uint16_t *k, size_t i, enum kvk_dtype dt)
{
        return dt == KVK_F16 ? kvk_f16_to_f32(k[i]) : kvk_bf16_to_f32(k[i]);
}

/* Mean and variance over ntok rows but row skip (UINT32_MAX: none; all of
 * them when ntok is 1), two passes in double: a block's keys may share a
 * large offset, as outlier channels do. */
static void mean_var(const uint16_t *k, uint32_t ntok, uint32_t d, enum kvk_dtype dt, float *mean, float *var,
                     uint32_t skip)
{
        uint32_t n = ntok > 1 && skip < ntok ? ntok - 1 : ntok;

        if (ntok == 1)
                skip = UINT32_MAX;
        for (uint32_t i = 0; i < d; i++) {
                double s = 0, ss = 0, mu;

                for (uint32_t t = 0; t < ntok; t++)
                        if (t != skip)
                                s += elem(k, (size_t)t * d + i, dt);
                mu = s / n;
                for (uint32_t t = 0; t < ntok; t++) {
                        double x = elem(k, (size_t)t * d + i, dt) - mu;

                        if (t != skip)
                                ss += x * x;
                }
                mean[i] = (float)mu;
                if (var)
                        var[i] = (float)(ss / n);
        }
}

/* The row farthest from the mean of the ntok rows (the first of equals)
 * into spike; its index. mean: scratch of d floats. */
static uint32_t spike_row(const uint16_t *k, uint32_t ntok, uint32_t d, enum kvk_dtype dt, float *mean, float *spike)
{
        uint32_t best = 0;
        double far = -1;

        mean_var(k, ntok, d, dt, mean, NULL, UINT32_MAX);
        for (uint32_t t = 0; t < ntok; t++) {
                double r = 0;

                for (uint32_t i = 0; i < d; i++) {
                        double x = elem(k, (size_t)t * d + i, dt) - mean[i];

                        r += x * x;
                }
                if (r > far) {
                        far = r;
                        best = t;
                }
        }
        for (uint32_t i = 0; i < d; i++)
                spike[i] = elem(k, (size_t)best * d + i, dt);
        return best;
}

static void pair_rmax(const uint16_t *k, uint32_t ntok, uint32_t d, enum kvk_dtype dt, float *rmax)
{
        uint32_t h = d / 2;

        for (uint32_t i = 0; i < d; i++)
                rmax[i] = 0;
        for (uint32_t t = 0; t < ntok; t++)
                for (uint32_t i = 0; i < h; i++) {
                        float a = elem(k, (size_t)t * d + i, dt), b = elem(k, (size_t)t * d + i + h, dt);
                        float r = sqrtf(a * a + b * b);

                        if (r > rmax[i])
                                rmax[i] = r;
                }
}

int kvk_method_summary(const struct kvk_shape *s, enum kvk_method m, const void *block,
                       uint32_t valid_tokens, float *ret_summary)
{
        const struct kvk_ops *ops = kvk__ops();
        uint32_t rows = rows_of(s, m), d;
        const uint16_t *k = block;

        if (!rows || !block || !ret_summary || valid_tokens == 0 || valid_tokens > s->block_tokens)
                return -EINVAL;
        d = s->head_dim;
        for (uint32_t g = 0; g < s->kv_heads; g++) {
                const uint16_t *kg = k + (size_t)g * s->block_tokens * d;
                float *row = ret_summary + (size_t)g * rows * d;

                uint32_t skip = UINT32_MAX;

                if (m == KVK_QUEST || m == KVK_QUEST_HEADS || m == KVK_ROPE_BOUND)
                        ops->summary(kg, valid_tokens, d, s->dtype, row + R_MIN * d, row + R_MAX * d);
                if (m == KVK_ROPE_BOUND)
                        pair_rmax(kg, valid_tokens, d, s->dtype, row + R_RMAX * d);
                if (m == KVK_HYBRID)
                        skip = spike_row(kg, valid_tokens, d, s->dtype, row + d, row);
                if (m == KVK_MEAN || m == KVK_GAUSS || m == KVK_HYBRID)
                        mean_var(kg, valid_tokens, d, s->dtype, row + mean_row(m) * d,
                                 m == KVK_MEAN ? NULL : row + (mean_row(m) + 1) * d, skip);
        }
        return 0;
}

/* An estimate as the softmax takes it: times 1/sqrt(d), NaN as -inf (says
 * nothing), +inf as the largest finite logit. */
static float clamp_logit(float e, float isd)
{
        return isnan(e) ? -INFINITY : e > FLT_MAX ? FLT_MAX : e * isd;
}

int kvk_method_scores(const struct kvk_shape *s, enum kvk_method m, const float *q,
                      const float *summaries, uint32_t n_blocks, float *work, float *ret_scores)
{
        const struct kvk_ops *ops = kvk__ops();
        uint32_t rows = rows_of(s, m), d, group, w;
        size_t stride;
        float sd, isd, inv2sd, lrest, *top, *z, *hw;

        if (!rows || !q || !summaries || !ret_scores || (m != KVK_QUEST && !work && n_blocks))
                return -EINVAL;
        if (m == KVK_QUEST)
                return kvk_block_scores(s, q, summaries, n_blocks, ret_scores);
        if (n_blocks == 0)
                return 0;
        d = s->head_dim;
        group = s->q_heads / s->kv_heads;
        stride = kvk_method_summary_floats(s, m);
        sd = sqrtf((float)d);
        isd = 1.0f / sd;
        inv2sd = 0.5f / sd;
        /* The bulk's weight: T - 1 keys (none in a block of one). */
        lrest = m != KVK_HYBRID ? 0 : s->block_tokens > 1 ? logf((float)(s->block_tokens - 1)) : -INFINITY;
        /* The estimates: a row per block, work[b][h] (each summary is read
         * once for the heads of its group, and every pass below runs along
         * rows). KVK_HYBRID's block of T keys, a Gaussian bulk of T - 1
         * (log-mean-exp gs) and one spike (logit sp), has the mass
         * (T - 1) e^gs + e^sp up to the factor 1/T that all blocks share:
         * its row holds gs + log(T - 1) for every head, then sp for every
         * head, added up after the exp. */
        w = s->q_heads * (m == KVK_HYBRID ? 2u : 1u);
        for (uint32_t b = 0; b < n_blocks; b++) {
                const float *sb = summaries + b * stride;
                float *e = work + (size_t)b * w;

                for (uint32_t g = 0; g < s->kv_heads; g++) {
                        const float *row = sb + (size_t)g * rows * d, *qg = q + (size_t)g * group * d;

                        for (uint32_t h0 = 0; h0 < group; h0 += KVK_HTILE) {
                                uint32_t nh = group - h0 < KVK_HTILE ? group - h0 : KVK_HTILE, h = g * group + h0;

                                ops->estimate(m, qg + (size_t)h0 * d, nh, d, row, inv2sd, e + h,
                                              m == KVK_HYBRID ? e + s->q_heads + h : NULL);
                        }
                }
                for (uint32_t i = 0; i < s->q_heads; i++)
                        e[i] = clamp_logit(e[i], isd) + lrest;
                for (uint32_t i = s->q_heads; i < w; i++)
                        e[i] = clamp_logit(e[i], isd);
        }
        /* Per head: a softmax over the blocks (shifted by the head's largest
         * term), averaged over the heads into the scores. */
        top = work + (size_t)n_blocks * w;
        z = top + w;
        hw = z + w;
        for (uint32_t i = 0; i < w; i++)
                top[i] = -INFINITY;
        for (uint32_t b = 0; b < n_blocks; b++)
                for (uint32_t i = 0; i < w; i++)
                        top[i] = work[(size_t)b * w + i] > top[i] ? work[(size_t)b * w + i] : top[i];
        for (uint32_t h = 0; h < s->q_heads; h++) {
                if (m == KVK_HYBRID)
                        top[h] = top[s->q_heads + h] = fmaxf(top[h], top[s->q_heads + h]);
                if (top[h] == -INFINITY)        /* no finite estimate: the head says nothing */
                        top[h] = m == KVK_HYBRID ? (top[s->q_heads + h] = 0) : 0;
        }
        ops->exp_rows(work, n_blocks, w, top);
        for (uint32_t h = 0; h < s->q_heads; h++)
                z[h] = 0;
        for (uint32_t b0 = 0; b0 < n_blocks; b0 += 64) {        /* float sums, 64 rows at a time */
                for (uint32_t h = 0; h < s->q_heads; h++)
                        hw[h] = 0;
                for (uint32_t b = b0; b < n_blocks && b < b0 + 64; b++) {
                        const float *e = work + (size_t)b * w;

                        for (uint32_t h = 0; h < s->q_heads; h++)
                                hw[h] += e[h];
                        for (uint32_t h = s->q_heads; h < w; h++)
                                hw[h - s->q_heads] += e[h];
                }
                for (uint32_t h = 0; h < s->q_heads; h++)
                        z[h] += hw[h];
        }
        for (uint32_t h = 0; h < s->q_heads; h++)
                hw[h] = z[h] > 0 ? 1.0f / (z[h] * (float)s->q_heads) : 0;
        for (uint32_t b = 0; b < n_blocks; b++) {
                const float *e = work + (size_t)b * w;
                float acc = 0;

                for (uint32_t i = 0; i < s->q_heads; i++)
                        acc += e[i] * hw[i];
                for (uint32_t i = s->q_heads; i < w; i++)
                        acc += e[i] * hw[i - s->q_heads];
                ret_scores[b] = acc;
        }
        return 0;
}
