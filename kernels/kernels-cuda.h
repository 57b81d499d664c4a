/* SPDX-License-Identifier: MIT */
/*
 * CUDA twins of the kernels of kernels.h: the same data layout, score
 * definition and results (up to fp32 rounding). Built into the static library
 * kvkernels_cuda only where meson found nvcc (kernels_cuda_dep); nothing here
 * is compiled otherwise, and code that must run without a GPU never calls it.
 *
 * Conventions:
 *  - d_* pointers are device memory (or memory the device can address:
 *    managed, or mapped pinned host memory). Arrays of block pointers
 *    (d_blocks, d_srcs, d_dsts) are themselves device arrays of device
 *    pointers. The caller owns every buffer.
 *  - stream is a cudaStream_t passed as void * (NULL: the legacy default
 *    stream), so that this header needs no CUDA header. Every function only
 *    enqueues work: buffers must stay valid until the stream reaches it.
 *  - Returns 0 (or a count) once the work is enqueued, -EINVAL for a bad
 *    shape or argument (checked on the host; nothing is enqueued), -EIO when
 *    a launch fails. Errors of the kernels themselves show up on the stream.
 *  - Values in device arrays cannot be checked on the host: a valid-token
 *    count above block_tokens is clamped to block_tokens.
 *  - Device code is built for sm_90 (H100/H200), with compute_90 PTX for
 *    newer GPUs.
 */
#ifndef KVK_KERNELS_CUDA_H
#define KVK_KERNELS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Summaries of n blocks: d_ret_summaries[i * kvk_summary_floats(s) ...] is
 * the summary of the block at d_blocks[i] over its d_valid[i] tokens, as
 * kvk_block_summary() computes it. A block with 0 valid tokens gets an
 * all-zero summary (score 0).
 */
int kvk_cuda_block_summaries(const struct kvk_shape *s, const void *const *d_blocks,
                             const uint32_t *d_valid, uint32_t n, float *d_ret_summaries,
                             void *stream);

/* Scores of n blocks from their summaries, as kvk_block_scores(). */
int kvk_cuda_block_scores(const struct kvk_shape *s, const float *d_q, const float *d_summaries,
                          uint32_t n, float *d_ret_scores, void *stream);

/*
 * Selection methods (kernels.h, "Selection methods"), the twins of
 * kvk_method_summary() and kvk_method_scores().
 *
 * kvk_cuda_method_summaries(): as kvk_cuda_block_summaries() for method m:
 * d_ret_summaries[i * kvk_method_summary_floats(s, m) ...] is the method-m
 * summary of the block at d_blocks[i] over its d_valid[i] tokens, bit for
 * bit what kvk_method_summary() writes (min, max and rmax exactly; mean and
 * variance are computed in double in the same order). KVK_QUEST and
 * KVK_QUEST_HEADS are kvk_cuda_block_summaries(). A block with 0 valid tokens
 * gets an all-zero summary. -EINVAL also when kvk_method_summary_floats(s, m)
 * is 0 (an unknown method, or a RoPE-pair method with an odd head_dim).
 */
int kvk_cuda_method_summaries(const struct kvk_shape *s, enum kvk_method m,
                              const void *const *d_blocks, const uint32_t *d_valid, uint32_t n,
                              float *d_ret_summaries, void *stream);

/* Bytes of device scratch kvk_cuda_method_scores() needs for n blocks:
 * (n + 2) * q_heads floats; 0 for KVK_QUEST, or when s or m is invalid. */
size_t kvk_cuda_method_work_bytes(const struct kvk_shape *s, enum kvk_method m, uint32_t n);

/*
 * Scores of n blocks from their method-m summaries, as kvk_method_scores():
 * for KVK_QUEST the bounds of kvk_cuda_block_scores(); for every other method
 * the estimated attention masses (in [0, 1], summing to 1 over the n blocks,
 * up to fp32 rounding; a query head with no finite estimate adds nothing).
 * Three kernels: the per-(block, head) logit estimates into d_work, per head
 * the maximum and the sum of exp over the blocks (in double), per block the
 * mean of its shares. d_work holds kvk_cuda_method_work_bytes(s, m, n) bytes
 * (may be NULL when that is 0 or n is 0), owned by the caller, not to be
 * shared by two launches in flight at once. -EINVAL as
 * kvk_cuda_method_summaries(), or for a NULL pointer.
 */
int kvk_cuda_method_scores(const struct kvk_shape *s, enum kvk_method m, const float *d_q,
                           const float *d_summaries, uint32_t n, void *d_work,
                           float *d_ret_scores, void *stream);

/*
 * Top-k selection of kvk_topk() (same sink/local forcing, tie-breaking and
 * ascending output) on the device, in one thread block (n up to tens of
 * thousands of blocks is what it is sized for). Returns the number of indices
 * that will be written to d_ret_idx, min(k, n), or -errno.
 */
int kvk_cuda_topk(const float *d_scores, uint32_t n, uint32_t k, uint32_t sink_blocks,
                  uint32_t local_blocks, uint32_t *d_ret_idx, void *stream);

/* Bytes of device workspace kvk_cuda_decode_attention() needs for n_sel
 * blocks, 0 when s is invalid. */
size_t kvk_cuda_attention_workspace(const struct kvk_shape *s, uint32_t n_sel);

/*
 * Decode attention over n_sel selected blocks, as kvk_decode_attention():
 * d_ret_out [q_heads][head_dim], d_ret_lse [q_heads] (may be NULL), and,
 * when d_ret_mass is not NULL, the blocks' attention mass [n_sel] as
 * kvk_block_attention_mass() computes it. One thread block per (selected
 * block, query head) computes a partial softmax into d_workspace
 * (kvk_cuda_attention_workspace() bytes, owned by the caller, not to be
 * shared by two launches in flight at once); a second kernel merges the
 * partials. The blocks must hold at least one valid token in all.
 */
int kvk_cuda_decode_attention(const struct kvk_shape *s, const float *d_q,
                              const void *const *d_blocks, const uint32_t *d_valid,
                              uint32_t n_sel, void *d_workspace, size_t workspace_bytes,
                              float *d_ret_out, float *d_ret_lse, float *d_ret_mass,
                              void *stream);

/*
 * Merges the partial result B (d_part_out, d_part_lse) into A (d_out, d_lse)
 * in place, as kvk_lse_merge() does (the same edge cases: B with lse -inf
 * leaves A's head as it is, A with lse -inf takes B's, a NaN or +inf lse
 * makes the head NaN; the same fp32 weights, up to the rounding of the
 * device's expf and log1pf). One thread block per query head.
 */
int kvk_cuda_lse_merge(const struct kvk_shape *s, float *d_out, float *d_lse,
                       const float *d_part_out, const float *d_part_lse, void *stream);

/* Gather n blocks of block_bytes into d_dst back to back, and the reverse. */
int kvk_cuda_gather(void *d_dst, const void *const *d_srcs, uint32_t n, size_t block_bytes,
                    void *stream);
int kvk_cuda_scatter(void *const *d_dsts, const void *d_src, uint32_t n, size_t block_bytes,
                     void *stream);

#ifdef __cplusplus
}
#endif

#endif
