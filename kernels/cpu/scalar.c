/* SPDX-License-Identifier: MIT */
/* Portable scalar back end: the reference the AVX2 one is checked against. */
#include <math.h>

#include "kernels-internal.h"

static void scalar_summary(const void *k, uint32_t ntok, uint32_t d, enum kvk_dtype dt,
                           float *ret_min, float *ret_max)
{
        const uint16_t *row = k;

        for (uint32_t i = 0; i < d; i++) {
                float x = kvk__load(row, i, dt);

                ret_min[i] = x;
                ret_max[i] = x;
        }
        for (uint32_t t = 1; t < ntok; t++) {
                row += d;
                for (uint32_t i = 0; i < d; i++) {
                        float x = kvk__load(row, i, dt);

                        ret_min[i] = fminf(ret_min[i], x);
                        ret_max[i] = fmaxf(ret_max[i], x);
                }
        }
}

/* The definition for one head: the fallback when the split form gives NaN. */
static float score_head(const float *qh, const float *mn, const float *mx, uint32_t d)
{
        float sum = 0.0f;

        for (uint32_t i = 0; i < d; i++)
                sum += fmaxf(qh[i] * mn[i], qh[i] * mx[i]);
        return sum;
}

/*
 * Heads h0 .. h0 + nh - 1 over n blocks, from q (row h0 of the query) split
 * by sign into qp, qn (stride d); where first, ret[b] is written, else it
 * keeps the larger of itself and the tile's maximum.
 * Up to 4 heads of one kv head share each load of mn[i], mx[i]. Per head the
 * order of the additions is the definition's and each term is rounded once
 * (qp mx + qn mn, one of the two products +-0), so the sums are bit for bit
 * those of score_head() wherever they are not NaN.
 */
static void scores_tile(const float *q, const float *qp, const float *qn, uint32_t h0,
                        uint32_t nh, uint32_t group, uint32_t d, const float *summaries,
                        size_t stride, uint32_t n, int first, float *ret)
{
        for (uint32_t b = 0; b < n; b++) {
                const float *sb = summaries + b * stride;
                float best = first ? -INFINITY : ret[b];

                for (uint32_t j0 = 0; j0 < nh;) {
                        const uint32_t g = (h0 + j0) / group;
                        const uint32_t end = (g + 1) * group - h0;      /* next kv head */
                        const uint32_t m = end - j0 < 4 ? end - j0 : 4;
                        const uint32_t k = nh - j0 < m ? nh - j0 : m;
                        const float *mn = sb + (size_t)g * 2 * d, *mx = mn + d;
                        float sum[4] = { 0.0f, 0.0f, 0.0f, 0.0f };

                        for (uint32_t i = 0; i < d; i++) {
                                for (uint32_t t = 0; t < k; t++) {
                                        sum[t] += qp[(j0 + t) * d + i] * mx[i];
                                        sum[t] += qn[(j0 + t) * d + i] * mn[i];
                                }
                        }
                        for (uint32_t t = 0; t < k; t++) {
                                float x = sum[t];

                                if (isnan(x))
                                        x = score_head(q + (size_t)(j0 + t) * d, mn, mx, d);
                                best = fmaxf(best, x);
                        }
                        j0 += k;
                }
                ret[b] = best;
        }
}

/* Query floats split by sign per tile of heads: 2 x 8 KiB of stack. */
#define QSPLIT 2048u

static void scalar_scores(const float *q, uint32_t q_heads, uint32_t group, uint32_t d,
                          const float *summaries, size_t stride, uint32_t n, float *ret)
{
        const uint32_t tile = QSPLIT / d;       /* >= 4 heads (d <= 512) */
        float qp[QSPLIT], qn[QSPLIT];

        for (uint32_t h0 = 0; h0 < q_heads; h0 += tile) {
                const uint32_t nh = q_heads - h0 < tile ? q_heads - h0 : tile;
                const float *qt = q + (size_t)h0 * d;

                /* A NaN goes to both halves (its sum is NaN, then redone). */
                for (uint32_t i = 0; i < nh * d; i++) {
                        qp[i] = qt[i] < 0.0f ? 0.0f : qt[i];
                        qn[i] = qt[i] > 0.0f ? 0.0f : qt[i];
                }
                scores_tile(qt, qp, qn, h0, nh, group, d, summaries, stride, n, h0 == 0, ret);
        }
}

/* A row of dt as fp32 (converted once, used by every head of the tile). */
static void row_f32(const uint16_t *row, uint32_t d, enum kvk_dtype dt, float *ret)
{
        for (uint32_t i = 0; i < d; i++)
                ret[i] = kvk__load(row, i, dt);
}

static void scalar_logits(const float *q, uint32_t nh, const void *k, uint32_t ntok,
                          uint32_t d, enum kvk_dtype dt, float scale, float *ret)
{
        const uint16_t *rows = k;
        float kr[KVK_MAX_HEAD_DIM];

        for (uint32_t t = 0; t < ntok; t++) {
                row_f32(rows + (size_t)t * d, d, dt, kr);
                for (uint32_t j = 0; j < nh; j++) {
                        const float *qj = q + (size_t)j * d;
                        float sum = 0.0f;

                        for (uint32_t i = 0; i < d; i++)
                                sum += qj[i] * kr[i];
                        ret[j * KVK_TCHUNK + t] = sum * scale;
                }
        }
}

static void scalar_accum(float *acc, uint32_t nh, const float *p, const void *v, uint32_t ntok,
                         uint32_t d, enum kvk_dtype dt)
{
        const uint16_t *rows = v;
        float vr[KVK_MAX_HEAD_DIM];

        for (uint32_t t = 0; t < ntok; t++) {
                row_f32(rows + (size_t)t * d, d, dt, vr);
                for (uint32_t j = 0; j < nh; j++) {
                        const float pj = p[j * KVK_TCHUNK + t];
                        float *aj = acc + (size_t)j * d;

                        for (uint32_t i = 0; i < d; i++)
                                aj[i] += pj * vr[i];
                }
        }
}

static void scalar_merge_weights(const float *la, const float *lb, uint32_t n, float *ret_ca,
                                 float *ret_cb, float *ret_lse)
{
        for (uint32_t h = 0; h < n; h++) {
                /* la - lb may round to +-inf (far apart): w is then 0. */
                const float w = expf(-fabsf(la[h] - lb[h])), inv = 1.0f / (1.0f + w);

                ret_ca[h] = la[h] >= lb[h] ? inv : w * inv;
                ret_cb[h] = la[h] >= lb[h] ? w * inv : inv;
                ret_lse[h] = fmaxf(la[h], lb[h]) + log1pf(w);
        }
}

static void scalar_blend(float *a, const float *b, uint32_t d, float ca, float cb)
{
        for (uint32_t i = 0; i < d; i++)
                a[i] = ca * a[i] + cb * b[i];
}

/* ---- selection estimates (select.c) ---------------------------------- */

/* Quest's bound of q.k over the box [mn, mx]. */
static float box_bound(const float *q, const float *mn, const float *mx, uint32_t d)
{
        float acc = 0;

        for (uint32_t i = 0; i < d; i++)
                acc += fmaxf(q[i] * mn[i], q[i] * mx[i]);
        return acc;
}

/* The RoPE-pair bound: per pair the tighter of the box and the disc. */
static float rope_bound(const float *q, const float *mn, const float *mx, const float *rmax, uint32_t d)
{
        uint32_t h = d / 2;
        float acc = 0;

        for (uint32_t i = 0; i < h; i++) {
                float box = fmaxf(q[i] * mn[i], q[i] * mx[i]) + fmaxf(q[i + h] * mn[i + h], q[i + h] * mx[i + h]);
                float disc = sqrtf(q[i] * q[i] + q[i + h] * q[i + h]) * rmax[i];

                acc += fminf(box, disc);
        }
        return acc;
}

static float mean_var(const float *q, const float *mean, const float *var, uint32_t d, float inv2sd)
{
        float mu = 0, sg = 0;

        for (uint32_t i = 0; i < d; i++) {
                mu += q[i] * mean[i];
                if (var)
                        sg += q[i] * q[i] * var[i];
        }
        return mu + sg * inv2sd;
}

static void scalar_estimate(enum kvk_method m, const float *q, uint32_t nh, uint32_t d, const float *rows,
                            float inv2sd, float *ret, float *ret2)
{
        for (uint32_t j = 0; j < nh; j++) {
                const float *qj = q + (size_t)j * d;

                switch (m) {
                case KVK_QUEST_HEADS:
                        ret[j] = box_bound(qj, rows, rows + d, d);
                        break;
                case KVK_ROPE_BOUND:
                        ret[j] = rope_bound(qj, rows, rows + d, rows + 2 * d, d);
                        break;
                case KVK_MEAN:
                        ret[j] = mean_var(qj, rows, NULL, d, 0);
                        break;
                case KVK_GAUSS:
                        ret[j] = mean_var(qj, rows, rows + d, d, inv2sd);
                        break;
                case KVK_HYBRID:
                        ret[j] = mean_var(qj, rows + d, rows + 2 * d, d, inv2sd);
                        ret2[j] = mean_var(qj, rows, NULL, d, 0);
                        break;
                default:
                        ret[j] = NAN;
                }
        }
}

static void scalar_exp_rows(float *x, uint32_t n, uint32_t width, const float *shift)
{
        for (uint32_t r = 0; r < n; r++, x += width)
                for (uint32_t i = 0; i < width; i++)
                        x[i] = expf(x[i] - shift[i]);
}

const struct kvk_ops kvk__ops_scalar = {
        .name = "scalar",
        .summary = scalar_summary,
        .scores = scalar_scores,
        .logits = scalar_logits,
        .accum = scalar_accum,
        .merge_weights = scalar_merge_weights,
        .blend = scalar_blend,
        .estimate = scalar_estimate,
        .exp_rows = scalar_exp_rows,
};
