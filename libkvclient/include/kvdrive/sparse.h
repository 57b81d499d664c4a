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
 *  - kvc_sparse, below, is the whole decode policy on top of them.
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

/* ---- kvc_sparse: the attention-aware decode policy --------------------
 *
 * A decoder that keeps only some KV blocks of each layer in its device pool
 * drives this once per layer and step (docs/engine-integration.md; a whole
 * engine: examples/sparse-engine.c):
 *
 *     kvc_sparse_begin_layer(seq, l, scores, n, &plan);   // its scores of the n stored blocks
 *     attend over plan->slots[i] where plan->resident[i], and the tail
 *     kvc_sparse_wait_layer(seq, -1);                      // the rest have landed
 *     attend over the others, merge the two (kvk_lse_merge)
 *     kvc_sparse_end_layer(seq, masses);                   // their attention mass, or NULL
 *
 * The library picks the top-k blocks (plus the first `sink` and the last
 * `local`), keeps the blocks that attention keeps using resident in the
 * sequence's device slots (by decayed score, the layer's own pinned), sends
 * one Get for the misses with the layer's completion counter, and stages
 * guesses into the daemon's host memory within the scheduler's depth. When
 * there is little to overlap the plan says so (plan->two_pass false: wait
 * first, then attend all in one pass): few misses, or misses that land
 * sooner than a second pass costs, as the engine's calls show (how long it
 * attends a block: begin_layer to wait_layer in two passes, wait_layer to
 * end_layer in one; how long misses take to land). A layer that could go
 * either way goes the way that has cost the engine less per chosen block,
 * begin_layer to end_layer, and one in eight tries the other way.
 *
 * The engine computes the scores (block summaries against the query) on
 * its own device, with the kvk_* kernels, their CUDA twins or its own; it
 * writes the newest token of each layer into the layer's tail slot, and
 * says when the tail block is full (kvc_sparse_tail_full()): the library
 * Puts it under the sequence's key for that block.
 *
 * Pool slots: a kvc_sparse uses slots [slot0, slot0 + kvc_sparse_pool_slots())
 * of the pool: per sequence, `budget` slots for chosen blocks, then one tail
 * slot per layer. It owns the client's counter page (kvc_counters_create()):
 * an engine that uses kvc_sparse does not register one itself.
 *
 * Not thread-safe: a kvc_sparse, its sequences and its client belong to one
 * thread at a time. Errors are those of client.h; -EBUSY when a layer of the
 * sequence is begun and not ended, or every slot of the sequence is pinned
 * (its budget is smaller than a layer's top-k).
 */
typedef struct kvc_sparse kvc_sparse;
typedef struct kvc_sparse_seq kvc_sparse_seq;

enum kvc_sparse_flags {
        /* end_layer's masses go to the daemon (heat), every report_every steps */
        KVC_SPARSE_REPORT_SCORES = 1u << 0,
};

/* Options of kvc_sparse_open(): zero it, set size, then what you need. */
struct kvc_sparse_opts {
        size_t size;                    /* sizeof(struct kvc_sparse_opts) */
        uint32_t layers;                /* of the namespace */
        uint32_t block_tokens;          /* of the namespace (prefix keys chain this many tokens a block) */
        uint32_t max_seqs;              /* sequences open at once (>= 1) */
        uint32_t slot0;                 /* first pool slot it uses */
        uint32_t budget;                /* device slots per sequence for chosen blocks (>= 1) */
        double topk;                    /* share of a layer's stored blocks chosen, (0, 1] */
        uint32_t topk_max;              /* at most this many per layer (0: budget) */
        uint32_t sink, local;           /* always chosen: the first sink, the last local stored blocks */
        float half_life_layers;         /* a block's score halves every this many layers (0: 1) */
        double stage;                   /* next-step guesses staged per layer, at most this x top-k (0: none) */
        uint32_t split_min;             /* two passes only from this many misses (0: 16) */
        uint32_t overlap_us;            /* ... and when they could hide more than this (0: 50 us) */
        uint32_t flags;                 /* enum kvc_sparse_flags */
        /* With KVC_SPARSE_REPORT_SCORES: a layer's masses go to the daemon
         * at every this many of its ends (0: 8). In the struct's tail
         * padding: its size is that of the version without it. */
        uint32_t report_every;
        /* A dynamic budget (0: off, the top-k above). In (0, 1]: the scores
         * are estimated attention masses (kvk_method_scores() of a mass
         * method, such as KVK_METHOD_DEFAULT), and a layer takes the sink and
         * local blocks, then blocks by score until the scores taken sum to
         * mass_target (kvk_select_mass()); `topk` and `topk_max` are then the
         * most it may take. Appended: a caller built against the struct
         * without it passes the smaller size (KVC_SPARSE_OPTS_SIZE_V1) and
         * gets 0. */
        float mass_target;
};

/* The size of struct kvc_sparse_opts before mass_target. */
#define KVC_SPARSE_OPTS_SIZE_V1 80u

/* Pool slots a kvc_sparse with options o uses: max_seqs * (budget + layers). */
uint64_t kvc_sparse_pool_slots(const struct kvc_sparse_opts *o);

/*
 * Creates the policy for namespace ns (registered on c) over pool p
 * (kvc_pool_create() or kvc_pool_register_cuda()), whose slots must hold a
 * block of ns. Registers the counter page. Returns 0, -EINVAL (a bad option,
 * the pool too small, max_seqs * layers over KVC_COUNTERS_MAX), -ENOMEM, or
 * the daemon's error. c and p must outlive it; close it with
 * kvc_sparse_close().
 */
int kvc_sparse_open(kvc_client *c, uint32_t ns, kvc_pool *p, const struct kvc_sparse_opts *o,
                    kvc_sparse **ret);

/* Ends every sequence still open (kvc_sparse_seq_end()) and frees. Accepts
 * NULL; returns NULL. */
kvc_sparse *kvc_sparse_close(kvc_sparse *sp);

enum kvc_sparse_keys {
        KVC_SPARSE_KEYS_PRIVATE = 0,    /* a random sequence id: blocks are this sequence's own */
        KVC_SPARSE_KEYS_PREFIX = 1,     /* chained over the token ids: equal prefixes share blocks */
};

/* Options of kvc_sparse_seq_begin(). */
struct kvc_sparse_seq_opts {
        size_t size;                    /* sizeof(struct kvc_sparse_seq_opts) */
        uint32_t keys;                  /* enum kvc_sparse_keys */
        const uint32_t *tokens;         /* PREFIX: the prompt's token ids (copied) */
        size_t n_tokens;
};

/*
 * Opens a sequence. With prefix keys, block i's key chains the keys of
 * blocks 0..i-1 and its tokens (kvc_key_prefix_chain()), so that a prompt
 * another process stored is found (kvc_sparse_seq_cached()). The sequence
 * has no stored block until kvc_sparse_seq_set_stored() or
 * kvc_sparse_tail_full() says so. Returns 0, -EINVAL, -EBUSY (max_seqs
 * open), -ENOMEM.
 */
int kvc_sparse_seq_begin(kvc_sparse *sp, const struct kvc_sparse_seq_opts *o, kvc_sparse_seq **ret);

/* Waits for the sequence's tail Puts, forgets its residency and frees it
 * (its blocks stay in the cache). Returns 0 or the error of a tail Put;
 * accepts NULL. */
int kvc_sparse_seq_end(kvc_sparse_seq *seq);

/* Key of block b of the sequence (all layers share it): 0, or -ERANGE for a
 * prefix-keyed block whose tokens the sequence does not know yet. */
int kvc_sparse_seq_key(const kvc_sparse_seq *seq, uint32_t b, struct kvc_key *ret);

/*
 * Blocks of the prompt that the cache holds for every layer (a prefix
 * another process or an earlier request stored): the engine need not
 * compute them. Prefix keys only (private: 0). Returns the count or -errno.
 */
int kvc_sparse_seq_cached(kvc_sparse_seq *seq);

/* Blocks [0, n) of every layer are stored (the engine Put them with
 * kvc_sparse_seq_key(), or they were cached). 0 or -EINVAL. */
int kvc_sparse_seq_set_stored(kvc_sparse_seq *seq, uint32_t n);

/* Stored blocks of layer (the block being filled not included). */
uint32_t kvc_sparse_seq_stored(const kvc_sparse_seq *seq, uint32_t layer);

/* One layer's plan, owned by the sequence, valid until kvc_sparse_end_layer(). */
struct kvc_sparse_plan {
        uint32_t layer;
        uint32_t n;                     /* blocks chosen */
        const uint32_t *blocks;         /* [n] their indices, ascending */
        const uint32_t *slots;          /* [n] the pool slots that hold (or will hold) them */
        const uint8_t *resident;        /* [n] 1: in its slot now; 0: read after kvc_sparse_wait_layer() */
        uint32_t n_missing;             /* of n, on their way */
        int two_pass;                   /* worth attending the resident ones while the rest land */
        uint32_t tail_slot;             /* the layer's block being filled */
};

/*
 * Plans layer of seq from scores[0..n_blocks) (the engine's, one per stored
 * block, higher is better; NaN ranks last): chooses the blocks, pins the
 * resident ones, and sends one Get for the rest. Returns 0 with *ret_plan,
 * -EINVAL (n_blocks above the layer's stored blocks, a bad argument),
 * -EBUSY, -ENOMEM, or the error of the submit. Nothing is pinned on error.
 */
int kvc_sparse_begin_layer(kvc_sparse_seq *seq, uint32_t layer, const float *scores, uint32_t n_blocks,
                           const struct kvc_sparse_plan **ret_plan);

/*
 * Waits until the plan's missing blocks are in their slots (the layer's
 * counter: no message; while they are late, it looks at the replies every
 * 20 ms). Returns 0; -ETIMEDOUT (timeout_ms, -1 forever); -EIO if a block
 * could not be loaded, or the daemon's error if it refused a Get whole
 * (-KVC_E_LIMIT, -KVC_E_DENIED, -KVC_E_NO_NAMESPACE after a drop, ...):
 * the failed blocks' resident flags stay 0 and they are fetched again next
 * time (attend without them or fail the step), and a second call says the
 * same; -ECONNRESET and the like if the daemon is gone; -EINVAL.
 */
int kvc_sparse_wait_layer(kvc_sparse_seq *seq, int timeout_ms);

/*
 * Ends the layer: masses (may be NULL) holds the plan's n attention masses
 * (kvk_block_attention_mass()), which keep used blocks resident and, with
 * KVC_SPARSE_REPORT_SCORES, reach the daemon in one fire-and-forget message.
 * Unpins the layer's blocks. A miss not seen landing (no wait, or one that
 * timed out) is not resident: it is fetched again when next chosen.
 * 0 or -EINVAL (no layer begun).
 */
int kvc_sparse_end_layer(kvc_sparse_seq *seq, const float *masses);

/* The tail slot of layer, for the engine to write its newest token into,
 * once the layer's previous tail Put has copied it out (this waits for
 * it). Returns the slot, or -errno (the Put's error). */
int kvc_sparse_tail_slot(kvc_sparse_seq *seq, uint32_t layer);

/*
 * The tail of layer holds a whole block now: it becomes the layer's next
 * stored block and is Put under its key (tokens: its block_tokens token
 * ids for prefix keys, NULL for private ones). The Put runs in the
 * background; kvc_sparse_tail_slot() waits for it. 0 or -errno.
 */
int kvc_sparse_tail_full(kvc_sparse_seq *seq, uint32_t layer, const uint32_t *tokens);

/*
 * Prediction: scores of layer's stored blocks computed ahead (e.g. at the
 * layer before, from its query mapped into this layer's key space). The
 * best of them that are not resident are staged: into free device slots of
 * the sequence when it has any (never evicting), else into the daemon's
 * host memory (a Prefetch), at most the daemon's prefetch depth. A hint:
 * 0, or -errno of the submit.
 */
int kvc_sparse_stage(kvc_sparse_seq *seq, uint32_t layer, const float *scores, uint32_t n_blocks);

/* What a kvc_sparse did, since it was opened. */
struct kvc_sparse_stats {
        uint64_t layers;                /* layers planned */
        uint64_t chosen, hits, misses;  /* blocks chosen; of those resident / fetched */
        uint64_t two_pass_layers;       /* plans that advised two passes */
        uint64_t hidden_layers;         /* layers with misses that had landed when waited for */
        uint64_t staged;                /* blocks staged (host memory or free slots) */
        uint64_t tail_puts;
        uint64_t wait_ns;               /* in kvc_sparse_wait_layer() and tail waits */
};

void kvc_sparse_get_stats(const kvc_sparse *sp, struct kvc_sparse_stats *ret);

#ifdef __cplusplus
}
#endif

#endif
