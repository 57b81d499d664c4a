/* SPDX-License-Identifier: MIT */
/*
 * kvkernels: CPU kernels of the sparse decode workload (block summaries,
 * block scores, top-k selection, decode attention, the merge of partial
 * attention results, gather/scatter).
 * CUDA twins of the same kernels are declared in kernels-cuda.h.
 *
 * Data layout (fixed; the CUDA twins use the same):
 *
 *  - Elements are IEEE fp16 or bf16 (enum kvk_dtype), stored as uint16_t in
 *    host byte order. Queries, summaries, scores and outputs are fp32.
 *  - One BLOCK holds one layer, all kv heads, block_tokens tokens: exactly the
 *    bytes the cache stores. K comes first, then V; each is laid out
 *    [kv_heads][block_tokens][head_dim] of dtype, so
 *        block bytes = 2 * kv_heads * block_tokens * head_dim * 2
 *    and the V of kv head g starts kv_heads * block_tokens * head_dim
 *    elements after the K of kv head g. A partially filled block (the last
 *    one of a sequence) has valid_tokens < block_tokens: tokens
 *    [0, valid_tokens) of every head are valid, the rest is ignored (its
 *    bytes are never read as numbers, so they may hold anything).
 *  - The query of one decode step and one layer is fp32 [q_heads][head_dim].
 *    GQA: q_heads = kv_heads * group; query head h reads kv head h / group.
 *  - A block SUMMARY (as in Quest) is fp32 [kv_heads][2][head_dim]: for each
 *    kv head, the element-wise minimum (row 0) then maximum (row 1) of K over
 *    the block's valid tokens. n summaries are stored back to back.
 *
 * Scores: the score of a block is
 *     max over query heads h of  sum_d max(q[h][d] * min[g][d], q[h][d] * max[g][d])
 * with g = h / group. It is an upper bound of the raw dot product q_h . k
 * for every valid token k of the block and every query head h. It is NOT
 * scaled by 1/sqrt(head_dim): divide by sqrt(head_dim) to bound the attention
 * logit. Ranking (kvk_topk) does not depend on the scale.
 *
 * Attention: logits are q_h . k / sqrt(head_dim), softmax over all valid
 * tokens of the given blocks, output = softmax . V, accumulated in fp32 with
 * a running maximum (online softmax), so no logit overflows exp().
 *
 * Conventions (STYLE.md): functions that act return 0 (or a count) on success
 * and -errno on failure (-EINVAL for a bad shape or argument); ret_* outputs
 * are untouched on failure. The caller owns every buffer; no function
 * allocates, keeps a pointer past its return, logs, or blocks; the kernels use
 * up to about 20 KiB of stack. Every function is thread-safe (reentrant)
 * except kvk_set_backend().
 *
 * Back ends: an AVX2+FMA implementation (fp16 loaded with F16C when the CPU
 * has it) and a portable scalar one, chosen once at run time from CPUID.
 * KVK_FORCE_SCALAR=1 in the environment forces the scalar one. Both give the
 * same results up to fp32 rounding (the summation order differs).
 */
#ifndef KVK_KERNELS_H
#define KVK_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Values match the project's dtype numbering (proto Dtype, enum kvc_dtype). */
enum kvk_dtype {
        KVK_F16 = 1,
        KVK_BF16 = 2,
};

/* Limits of a valid shape (kvk_shape_valid()). */
#define KVK_MAX_HEAD_DIM 512u
#define KVK_MAX_KV_HEADS 1024u
#define KVK_MAX_Q_HEADS 8192u
#define KVK_MAX_BLOCK_TOKENS 65536u

/* The geometry of one layer's blocks and of the query. Valid when dtype is
 * known, every count is at least 1 and at most its KVK_MAX_*, and q_heads is
 * a multiple of kv_heads. */
struct kvk_shape {
        uint32_t kv_heads;
        uint32_t q_heads;
        uint32_t head_dim;
        uint32_t block_tokens;
        enum kvk_dtype dtype;
};

/* True when s is non-NULL and valid. */
bool kvk_shape_valid(const struct kvk_shape *s);

/* Bytes of one block of s (K and V), 0 when s is invalid. */
size_t kvk_block_bytes(const struct kvk_shape *s);

/* Floats of one block summary of s (kv_heads * 2 * head_dim), 0 when s is
 * invalid. */
size_t kvk_summary_floats(const struct kvk_shape *s);

/*
 * Scalar conversions. f16 -> f32 and bf16 -> f32 are exact. f32 -> f16 and
 * f32 -> bf16 round to nearest, ties to even; values too large become
 * +-inf, values too small become (signed) subnormals or zero. A NaN stays a
 * NaN of the same sign and keeps the top bits of its payload (quiet or
 * signalling), so every f16 and bf16 bit pattern survives a round trip
 * through f32 unchanged.
 */
float kvk_f16_to_f32(uint16_t h);
uint16_t kvk_f32_to_f16(float f);
float kvk_bf16_to_f32(uint16_t h);
uint16_t kvk_f32_to_bf16(float f);

/*
 * Summary of one block: writes kvk_summary_floats(s) floats to ret_summary
 * (layout above) from the K of tokens [0, valid_tokens) of block.
 * Returns 0, or -EINVAL if s is invalid, a pointer is NULL or valid_tokens is
 * not in [1, block_tokens].
 */
int kvk_block_summary(const struct kvk_shape *s, const void *block, uint32_t valid_tokens,
                      float *ret_summary);

/*
 * Scores of n_blocks blocks from their summaries (n_blocks summaries back to
 * back) against the query q (fp32 [q_heads][head_dim]): ret_scores[i] is the
 * unscaled upper bound defined above. Returns 0, or -EINVAL if s is invalid
 * or a pointer is NULL (n_blocks == 0 is a no-op).
 */
int kvk_block_scores(const struct kvk_shape *s, const float *q, const float *summaries,
                     uint32_t n_blocks, float *ret_scores);

/*
 * Top-k block selection. Chooses min(k, n) of the n blocks and writes their
 * indices to ret_idx (room for min(k, n) entries), sorted ascending. The
 * first sink_blocks and the last local_blocks blocks are always chosen and
 * count toward k (if they alone exceed k, sink blocks win, then the most
 * recent local blocks). The remaining places go to the other blocks with the
 * highest scores; equal scores prefer the lower index; a NaN score ranks as
 * -inf. Runs in O(n log k) time and uses no memory but ret_idx.
 * Returns the number of indices written, min(k, n) (0 when scores or ret_idx
 * is NULL).
 */
uint32_t kvk_topk(const float *scores, uint32_t n, uint32_t k, uint32_t sink_blocks,
                  uint32_t local_blocks, uint32_t *ret_idx);

/*
 * Decode attention of one layer and one step over the valid tokens of n_sel
 * blocks: blocks[i] points to block i (layout above) with valid_tokens[i]
 * valid tokens (0 is allowed: the block is skipped). The blocks' order does
 * not matter beyond fp32 rounding. For every query head h:
 *     ret_out[h][:] = sum_t softmax_t(q_h . k_t / sqrt(head_dim)) v_t
 *     ret_lse[h]    = log sum_t exp(q_h . k_t / sqrt(head_dim))   (natural log)
 * ret_out has q_heads * head_dim floats; ret_lse has q_heads floats or is
 * NULL. Two partial results over disjoint token sets merge exactly with
 * their lse (out = (e^lse1 out1 + e^lse2 out2) / (e^lse1 + e^lse2)).
 * Returns 0, or -EINVAL if s is invalid, a pointer is NULL, a valid_tokens[i]
 * exceeds block_tokens, or there is no valid token at all.
 */
int kvk_decode_attention(const struct kvk_shape *s, const float *q, const void *const *blocks,
                         const uint32_t *valid_tokens, uint32_t n_sel, float *ret_out,
                         float *ret_lse);

/*
 * Full (dense) attention: kvk_decode_attention() over all n_blocks blocks of
 * the sequence, in order. Same arguments, returns and ownership; a separate
 * name so that harness code says which one it means.
 */
int kvk_full_attention(const struct kvk_shape *s, const float *q, const void *const *blocks,
                       const uint32_t *valid_tokens, uint32_t n_blocks, float *ret_out,
                       float *ret_lse);

/*
 * Attention mass of each of n blocks (same arguments as
 * kvk_decode_attention()): ret_mass[i] = (1 / q_heads) * sum over query
 * heads h of the share of h's softmax weight (over all valid tokens of the n
 * blocks) that falls on block i's tokens. The masses sum to 1 (up to
 * rounding); a block with no valid token gets 0. Used for the
 * attention-mass recall of a selection (pass all blocks, sum the masses of
 * the chosen ones) and as the heat reported to the daemon.
 * Returns 0 or -EINVAL, like kvk_decode_attention().
 */
int kvk_block_attention_mass(const struct kvk_shape *s, const float *q,
                             const void *const *blocks, const uint32_t *valid_tokens,
                             uint32_t n, float *ret_mass);

/*
 * Selection methods (docs/bench/decode/README.md, "Block selection", measures them): the
 * summary a block keeps and how a query scores it. A method's summary is
 * fp32 [kv_heads][rows][head_dim] with the rows of its kind, n summaries
 * back to back (kvk_method_summary_floats() floats each):
 *
 *  - KVK_QUEST: rows min, max (Quest): the summary and scores of
 *    kvk_block_summary() and kvk_block_scores(): the upper bound of q.k,
 *    the maximum over the query heads of a GQA group.
 *  - KVK_QUEST_HEADS: the same summary; per query head the bound, taken as
 *    an estimate of the block's logit, then the estimated MASS below.
 *  - KVK_ROPE_BOUND: rows min, max, rmax: rmax[i] (i < head_dim / 2, the
 *    rest 0) is the largest norm over the block's keys of the RoPE pair
 *    (k[i], k[i + head_dim/2]) (Llama's rotate-half pairing). Per pair the
 *    bound is min(the box bound of its two dims, |q pair| rmax[i]): a bound
 *    of q.k at least as tight as Quest's (equal with no RoPE structure,
 *    tighter where RoPE spins a pair inside the block). Then the MASS.
 *  - KVK_MEAN: row mean (ShadowKV's landmark): estimate q.mean. MASS.
 *  - KVK_GAUSS: rows mean, var (per-dimension population variance of K
 *    over the block): the log-mean-exp of the logits of keys ~ N(mean,
 *    diag var), q.mean + sum_d q[d]^2 var[d] / (2 sqrt(head_dim))
 *    (unscaled). MASS.
 *  - KVK_HYBRID: rows spike, mean, var: spike is the block's key farthest
 *    from the block's mean (the first of equals), mean and var those of
 *    the other keys (of the one key when the block has one). A block as a
 *    Gaussian bulk of block_tokens - 1 keys plus one explicit key, so that
 *    a single sharp key (an attention sink, a large-norm key, a needle's
 *    peak) is not averaged away: with T = block_tokens, g KVK_GAUSS's
 *    estimate over the bulk and p = q.spike, the estimate is
 *    sqrt(d) log(((T - 1) e^(g / sqrt(d)) + e^(p / sqrt(d))) / T)
 *    (the block taken as full; only a sequence's last block is not, and it
 *    is attended anyway). MASS. The default (KVK_METHOD_DEFAULT).
 *
 * MASS: from the per-head logit estimates e[b][h] (unscaled, as q.k), the
 * estimated share of head h's attention on block b is
 * softmax_b(e[b][h] / sqrt(head_dim)); the score of block b is the mean of
 * that share over all query heads. So these scores are estimated attention
 * masses: in [0, 1], summing to 1 over the n blocks scored together, and
 * comparable with kvk_block_attention_mass(); they feed kvk_topk() (a fixed
 * budget) or kvk_select_mass() (a dynamic one) alike.
 */
enum kvk_method {
        KVK_QUEST = 0,
        KVK_QUEST_HEADS,
        KVK_ROPE_BOUND,
        KVK_MEAN,
        KVK_GAUSS,
        KVK_HYBRID,
        KVK_N_METHODS
};

/* The method engines should use unless they measured better on their model
 * (docs/decisions.md says why this one). */
#define KVK_METHOD_DEFAULT KVK_HYBRID

/* The name of m ("quest", "quest-heads", "rope-bound", "mean", "gauss",
 * "hybrid"), NULL for an unknown one. Static strings. */
const char *kvk_method_name(enum kvk_method m);

/* The method named name, or -EINVAL. */
int kvk_method_from_name(const char *name);

/* Floats of one block summary of method m, 0 when s or m is invalid (or
 * KVK_ROPE_BOUND with an odd head_dim: RoPE pairs need an even one). */
size_t kvk_method_summary_floats(const struct kvk_shape *s, enum kvk_method m);

/* Floats of scratch memory kvk_method_scores() needs for n blocks. */
size_t kvk_method_work_floats(const struct kvk_shape *s, enum kvk_method m, uint32_t n);

/*
 * Summary of one block for method m (layout above) from the K of tokens
 * [0, valid_tokens) of block. KVK_QUEST and KVK_QUEST_HEADS write what
 * kvk_block_summary() writes. Returns 0, or -EINVAL as kvk_block_summary()
 * and when kvk_method_summary_floats(s, m) is 0.
 */
int kvk_method_summary(const struct kvk_shape *s, enum kvk_method m, const void *block,
                       uint32_t valid_tokens, float *ret_summary);

/*
 * Scores of n_blocks blocks for the query q (fp32 [q_heads][head_dim]) from
 * their method-m summaries: for KVK_QUEST the bounds of kvk_block_scores(),
 * for every other method the estimated masses (above). work holds
 * kvk_method_work_floats(s, m, n_blocks) floats (NULL when that is 0).
 * Returns 0, or -EINVAL (s, m or a pointer; nothing written); n_blocks ==
 * 0 is a no-op.
 */
int kvk_method_scores(const struct kvk_shape *s, enum kvk_method m, const float *q,
                      const float *summaries, uint32_t n_blocks, float *work, float *ret_scores);

/*
 * A dynamic budget: chooses, from n blocks with estimated masses mass[]
 * (kvk_method_scores() of a MASS method), the forced blocks of kvk_topk()
 * (sink_blocks first, local_blocks last) and then the other blocks in
 * decreasing mass until the chosen blocks' masses sum to at least target,
 * with at least k_min and at most k_max blocks in all. The indices go to
 * ret_idx (room for min(k_max, n)), sorted ascending, as kvk_topk() writes
 * them; equal masses prefer the lower index, NaN ranks as -inf. No memory
 * but ret_idx; O(n log k_max). Returns the number chosen (0 when mass or
 * ret_idx is NULL).
 */
uint32_t kvk_select_mass(const float *mass, uint32_t n, float target, uint32_t k_min, uint32_t k_max,
                         uint32_t sink_blocks, uint32_t local_blocks, uint32_t *ret_idx);

/*
 * Merges the partial attention result B (part_out, part_lse) into the
 * accumulated result A (out, lse) in place, for q_heads heads of head_dim
 * floats (the outputs of kvk_decode_attention(): out [q_heads][head_dim],
 * lse [q_heads], natural log; only q_heads and head_dim of s are used, s
 * must be valid). When A and B are softmax results over disjoint token sets,
 * A becomes the result over their union. Per head h:
 *     m = max(lseA, lseB); wA = e^(lseA - m); wB = e^(lseB - m)
 *     outA = (wA outA + wB outB) / (wA + wB);  lseA = m + log(wA + wB)
 * computed in fp32 (one weight is 1, the other e^-|lseA - lseB|; lse is
 * m + log1p of it). The edges, in this order:
 *  - lseB = -inf (B attended no token): head h of A is left as it is, bit
 *    for bit, whatever it holds (NaN included);
 *  - lseA = -inf (A is empty: a fresh accumulator starts at lse = -inf, its
 *    out may hold anything, NaN included): head h of A becomes B's, copied
 *    bit for bit; so both -inf stay -inf;
 *  - otherwise a NaN or +inf lse on either side (no finite attention gives
 *    one) makes lseA and every element of outA NaN for that head, so that a
 *    broken partial is never hidden in a finite-looking result;
 *  - a NaN or inf element of outA or outB with both lse finite propagates as
 *    IEEE arithmetic does (to that element), even where its weight rounds to
 *    0 (0 * inf is NaN).
 * Each element of outA ends within 3 ulp of (wA |outA| + wB |outB|) /
 * (wA + wB) of the exact merge of the fp32 inputs, lseA within 1 ulp of
 * max(1, |lseA|). Sequential merges add their rounding: after n merges into
 * one accumulator the relative error is about 5e-8 sqrt(n) on out and
 * 1e-7 sqrt(n) max(1, |lse|) on lse (README.md), so an accumulator of
 * thousands of partials is better kept in double.
 * out, lse, part_out and part_lse must not overlap.
 * Returns 0, or -EINVAL if s is invalid or a pointer is NULL (nothing
 * changed).
 */
int kvk_lse_merge(const struct kvk_shape *s, float *out, float *lse, const float *part_out,
                  const float *part_lse);

/*
 * Copies n blocks of block_bytes each: gather packs srcs[0..n) back to back
 * into dst (n * block_bytes bytes, e.g. a staging buffer); scatter unpacks
 * src into dsts[0..n). Buffers must not overlap. Returns 0, or -EINVAL when
 * a pointer (one of the n included) is NULL, before copying anything.
 */
int kvk_gather(void *dst, const void *const *srcs, uint32_t n, size_t block_bytes);
int kvk_scatter(void *const *dsts, const void *src, uint32_t n, size_t block_bytes);

/* Name of the back end the kernels use now: "avx2" or "scalar". Static. */
const char *kvk_backend_name(void);

/*
 * Test and benchmark hook: switches the back end of the whole process to
 * "scalar", "avx2" or "auto" (CPUID and KVK_FORCE_SCALAR, as at start-up);
 * "avx2-nof16c" is the AVX2 back end as it runs on a CPU without F16C (fp16
 * converted in scalar code; its kvk_backend_name() is "avx2"). Not to be
 * called while another thread runs a kernel. Returns 0, -EINVAL for an
 * unknown name, or -ENOTSUP when the CPU lacks AVX2 or FMA.
 */
int kvk_set_backend(const char *name);

#ifdef __cplusplus
}
#endif

#endif
