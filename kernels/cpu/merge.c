/* SPDX-License-Identifier: MIT */
/*
 * kvk_lse_merge(): two partial softmax results merged through their
 * log-sum-exp. The driver decides per head (the edge cases, the weights);
 * the back end's blend op does the arithmetic over head_dim.
 */
#include <errno.h>
#include <math.h>

#include "kernels-internal.h"

static void fill_nan(float *a, uint32_t d)
{
        for (uint32_t i = 0; i < d; i++)
                a[i] = NAN;
}

/* Heads whose weights are computed per call of merge_weights (3 x 256 B
 * of stack). */
#define MERGE_HEADS 64u

/*
 * One head: a, *lse_a (A) absorb b, lse_b (B), with the weights ca, cb and
 * the new lse that merge_weights gave for it (used only when both lse are
 * finite). The larger lse weighs 1 and the other w = e^-|lse_a - lse_b| in
 * [0, 1] (an exp that cannot overflow); both are divided by 1 + w, so that
 * the blend is one FMA per element, and the new lse is max + log1p(w),
 * exact where w is tiny.
 */
static void merge_head(const struct kvk_ops *ops, float *a, float *lse_a, const float *b,
                       float lse_b, uint32_t d, float ca, float cb, float lse)
{
        const float la = *lse_a;

        if (lse_b == -INFINITY)
                return;
        if (la == -INFINITY) {
                memcpy(a, b, (size_t)d * sizeof(float));
                *lse_a = lse_b;
                return;
        }
        if (isnan(la) || isnan(lse_b) || la == INFINITY || lse_b == INFINITY) {
                fill_nan(a, d);
                *lse_a = NAN;
                return;
        }
        ops->blend(a, b, d, ca, cb);
        *lse_a = lse;
}

int kvk_lse_merge(const struct kvk_shape *s, float *out, float *lse, const float *part_out,
                  const float *part_lse)
{
        const struct kvk_ops *ops = kvk__ops();
        float ca[MERGE_HEADS], cb[MERGE_HEADS], nl[MERGE_HEADS];

        if (!kvk_shape_valid(s) || !out || !lse || !part_out || !part_lse)
                return -EINVAL;

        for (uint32_t h0 = 0; h0 < s->q_heads; h0 += MERGE_HEADS) {
                const uint32_t nh = s->q_heads - h0 < MERGE_HEADS ? s->q_heads - h0 : MERGE_HEADS;

                ops->merge_weights(lse + h0, part_lse + h0, nh, ca, cb, nl);
                for (uint32_t j = 0; j < nh; j++) {
                        const size_t at = (size_t)(h0 + j) * s->head_dim;

                        merge_head(ops, out + at, lse + h0 + j, part_out + at, part_lse[h0 + j],
                                   s->head_dim, ca[j], cb[j], nl[j]);
                }
        }
        return 0;
}
