/* SPDX-License-Identifier: MIT */
/*
 * libkvclient sparse-decode helpers: pure client-side bookkeeping for a
 * decoder that keeps only some KV blocks of each layer in its device pool.
 *
 *  - The residency manager decides which block, named by (key, layer), sits
 *    in which slot of a device pool (see kvc_pool_create()). It never talks
 *    to the daemon: on a miss the caller fills the returned slot itself
 *    (kvc_get() or kvc_get_submit()).
 *  - kvc_predict_merge() builds the candidate list of the next fetch.
 *
 * Conventions are those of client.h: 0 or a non-negative value on success,
 * -errno on failure, ret_* untouched on failure, destructors take NULL and
 * return NULL, no logging. A kvc_residency is not thread-safe.
 */
#ifndef KVDRIVE_SPARSE_H
#define KVDRIVE_SPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <kvdrive/client.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvc_residency kvc_residency;

/*
 * Options of kvc_residency_new(). Set size to sizeof(struct
 * kvc_residency_opts); later versions only append fields, and a caller built
 * against this version keeps working.
 */
struct kvc_residency_opts {
        size_t size;
        uint32_t slots;          /* device-pool slots managed, 1..KVC_RESIDENCY_MAX_SLOTS */
        uint32_t layers;         /* model layers; a block's layer is < layers */
        float half_life_steps;   /* attention mass halves every this many decode steps (> 0) */
};

/* Largest slot count a residency manager accepts. */
#define KVC_RESIDENCY_MAX_SLOTS (1u << 24)

/*
 * Creates a residency manager of o->slots empty slots. Returns 0 and the
 * manager in *ret, which the caller frees with kvc_residency_free();
 * -EINVAL if o or ret is NULL, o->size is smaller than this version's
 * struct, slots is 0 or above KVC_RESIDENCY_MAX_SLOTS, layers is 0 or
 * half_life_steps is not a finite positive number; -ENOMEM.
 */
int kvc_residency_new(const struct kvc_residency_opts *o, kvc_residency **ret);

/* Frees r (NULL is fine). Returns NULL. */
kvc_residency *kvc_residency_free(kvc_residency *r);

/*
 * Slot of the resident block (key, layer): the slot (>= 0), -ENOENT if the
 * block is not resident, -EINVAL on a NULL argument or layer >= layers.
 * Changes nothing (no pin, no score).
 */
int kvc_residency_lookup(const kvc_residency *r, const struct kvc_key *key, uint32_t layer);

/*
 * Starts a pinning epoch: unpins every block pinned since the previous call
 * (O(1)). Call it once before each layer's attention; every block acquired
 * or pinned afterwards stays pinned, and is never evicted, until the next
 * call. This is how the manager guarantees that a block the current layer
 * reads is not overwritten under it. Returns 0, or -EINVAL if r is NULL.
 */
int kvc_residency_begin_layer(kvc_residency *r);

/*
 * Pins the resident block (key, layer) until the next
 * kvc_residency_begin_layer(), e.g. a hit the current layer will read
 * without acquiring it. Returns its slot, -ENOENT if it is not resident,
 * -EINVAL on a bad argument.
 */
int kvc_residency_pin(kvc_residency *r, const struct kvc_key *key, uint32_t layer);

/*
 * Makes (key, layer) resident and pins it for the current epoch. Returns its
 * slot (>= 0) and sets *ret_miss (if not NULL) to false on a hit, or to true
 * on a miss: the block then got a free slot or, when none is free, the slot
 * of the unpinned resident block with the lowest decayed score at step (ties:
 * the lowest slot), and the caller must fill that slot before reading it. A
 * new block starts with score 0 at step. The victim search scans all slots:
 * O(slots) per miss once the pool is full, O(1) for a hit.
 * Returns -EBUSY if every slot is pinned, -EINVAL on a bad argument;
 * nothing changes on failure.
 */
int kvc_residency_acquire(kvc_residency *r, const struct kvc_key *key, uint32_t layer,
                          uint32_t step, bool *ret_miss);

/*
 * Adds attention mass to the resident block (key, layer) at decode step
 * step. A block's score is the sum of the masses reported for it, each
 * halved every half_life_steps steps since it was reported:
 * score(s) = sum mass_i * 2^-((s - step_i) / half_life_steps). A step older
 * than the block's last one counts as that last step (scores never grow by
 * going back). Returns 0, -ENOENT if the block is not resident, -EINVAL on a
 * bad argument or a mass that is negative or not finite.
 */
int kvc_residency_score(kvc_residency *r, const struct kvc_key *key, uint32_t layer,
                        float mass, uint32_t step);

/*
 * Decayed score of the resident block (key, layer) at step into *ret_score.
 * Returns 0, -ENOENT if not resident, -EINVAL on a bad argument.
 */
int kvc_residency_get_score(const kvc_residency *r, const struct kvc_key *key,
                            uint32_t layer, uint32_t step, float *ret_score);

/*
 * Forgets the resident block (key, layer) and frees its slot, pinned or not:
 * call it when the fill of a missed slot failed, or when the block was
 * deleted. Returns the freed slot, -ENOENT if not resident, -EINVAL on a bad
 * argument.
 */
int kvc_residency_drop(kvc_residency *r, const struct kvc_key *key, uint32_t layer);

/*
 * Candidate blocks of the next fetch for one layer: the union of the blocks
 * that layer selected at the previous step (temporal locality) and the
 * blocks predicted for it from the previous layer's query (InfiniGen's
 * observation), deduplicated and capped at k. Order: blocks in both lists
 * first, then those only predicted, then those only selected last step; each
 * group keeps the order of its source list (prediction order for the first
 * group), so a list ranked best first gives a ranked result. Blocks are any
 * uint32_t ids (block indices). prev_step_sel may be NULL if n_prev is 0,
 * next_layer_pred if n_pred is 0, ret if k is 0.
 * Writes at most k ids to ret and their number to *ret_n; returns 0, or
 * -EINVAL on a NULL pointer that is not allowed. Runs in
 * O((n_prev + n_pred) * (n_prev + k)): meant for per-layer lists of at most
 * a few thousand blocks; allocates nothing.
 */
int kvc_predict_merge(const uint32_t *prev_step_sel, uint32_t n_prev,
                      const uint32_t *next_layer_pred, uint32_t n_pred, uint32_t k,
                      uint32_t *ret, uint32_t *ret_n);

#ifdef __cplusplus
}
#endif

#endif
