/* SPDX-License-Identifier: MIT */
/*
 * Accuracy and summary metrics of `kvdrive-bench decode`: pure functions
 * (no I/O, no global state), unit-tested on hand-computed cases
 * (tests/unit/test_metrics.c).
 *
 * "Mass" is a block's true attention mass, as kvk_block_attention_mass()
 * computes it from full attention over all blocks: the share of the softmax
 * weight (averaged over query heads) that falls on the block's tokens.
 * Selections are arrays of distinct block indices; an index >= n is an error.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

/*
 * Attention-mass recall of a selection: sum of mass[sel[i]] over the sum of
 * all n masses, in [0, 1] (1 when every block with weight is selected).
 * Returns the recall, 0 when the total mass is 0, or -EINVAL (as a double)
 * for a NULL pointer, n == 0, an index out of range or a repeated index.
 */
double kvb_mass_recall(const float *mass, uint32_t n, const uint32_t *sel, uint32_t n_sel);

/*
 * Top-k block recall: |sel ∩ T| / k, where T is the exact top-k by mass
 * (descending mass; equal masses prefer the lower index, as kvk_topk()
 * does; NaN ranks last) and k = min(k, n). Returns it in [0, 1], or a
 * negative -errno as a double (-EINVAL as above or k == 0; -ENOMEM).
 */
double kvb_topk_recall(const float *mass, uint32_t n, const uint32_t *sel, uint32_t n_sel, uint32_t k);

/*
 * Relative L2 error of out against the reference ref (n floats):
 * ||out - ref||_2 / ||ref||_2, accumulated in double. 0 when both are all
 * zero, +inf when only ref is; NaN if either holds a NaN.
 */
double kvb_rel_l2_error(const float *out, const float *ref, size_t n);

/*
 * Nearest-rank percentile: sorts v[0, n) ascending in place and returns
 * v[ceil(p / 100 * n) - 1] (the smallest value with at least p% of the
 * values at or below it), clamped to the first value for small p. p is in
 * [0, 100]. Returns 0 for n == 0. So for 1..100, p50 is 50 and p99 is 99;
 * for 1..10, p99 is 10.
 */
double kvb_percentile(double *v, size_t n, double p);

/* Arithmetic mean of v[0, n), 0 for n == 0. */
double kvb_mean(const double *v, size_t n);

/* hits / (hits + misses), NaN when both are 0 (not applicable). */
double kvb_hit_rate(uint64_t hits, uint64_t misses);

/* count per second over ns nanoseconds, 0 when ns is 0. */
double kvb_rate(uint64_t count, uint64_t ns);

/*
 * acc/lse += part/plse: two softmax results over disjoint tokens (part
 * [heads][dim], plse [heads], as kvk_decode_attention() writes them; lse
 * -inf: empty, and a head whose plse is -inf is skipped) merged exactly
 * through their log-sum-exp, in double so that thousands of merges add no
 * error of their own. The full policy merges one partial per --batch blocks
 * (256 per layer at 128K tokens with the default 32, 8192 with --batch 1),
 * the accuracy reference one per 64 blocks; both are the exact baseline the
 * others are measured against. kvk_lse_merge() keeps its accumulator in
 * fp32, whose rounding grows with the number of merges (about 5e-8 sqrt(n)
 * relative error after n, 3.4e-6 at 4096: kernels/README.md), so it serves
 * the kvdrive policy's two partials (decode-kvdrive.c), not these.
 */
void kvb_merge_double(double *acc, double *lse, const float *part, const float *plse, uint32_t heads,
                      uint32_t dim);

/* Blocks per partial of kvb_reference_attention(). */
#define KVB_REF_CHUNK 64u

/*
 * The reference for accuracy: full attention of q over blocks[0, n) (valid
 * tokens valid[i]) into ret_ref (q_heads * head_dim floats), partials of
 * KVB_REF_CHUNK blocks merged in double so that the reference's own
 * rounding stays far below what is measured against it. Scratch from the
 * caller: part (q_heads * head_dim), plse (q_heads), acc (q_heads *
 * head_dim doubles), acc_lse (q_heads doubles). 0 or kvk's -EINVAL.
 */
int kvb_reference_attention(const struct kvk_shape *s, const float *q, const void *const *blocks,
                            const uint32_t *valid, uint32_t n, float *part, float *plse, double *acc,
                            double *acc_lse, float *ret_ref);
