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

static float scalar_score(const float *q, uint32_t q_heads, uint32_t group, uint32_t d,
                          const float *summary)
{
        float best = -INFINITY;

        for (uint32_t h = 0; h < q_heads; h++) {
                const float *mn = summary + (size_t)(h / group) * 2 * d;
                const float *mx = mn + d;
                const float *qh = q + (size_t)h * d;
                float sum = 0.0f;

                for (uint32_t i = 0; i < d; i++)
                        sum += fmaxf(qh[i] * mn[i], qh[i] * mx[i]);
                best = fmaxf(best, sum);
        }
        return best;
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

const struct kvk_ops kvk__ops_scalar = {
        .name = "scalar",
        .summary = scalar_summary,
        .score = scalar_score,
        .logits = scalar_logits,
        .accum = scalar_accum,
};
