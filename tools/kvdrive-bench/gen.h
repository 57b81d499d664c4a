/* SPDX-License-Identifier: MIT */
/*
 * Synthetic decode traces (`kvdrive-bench gen`, docs/trace-format.md) with
 * the structure real attention has: attention sinks, a local window, topic
 * segments, needles retrieved by stretches of decode steps, queries that
 * drift from step to step and correlate from layer to layer; and, on
 * demand, what trained models add: RoPE, outlier channels, heavy-tailed key
 * norms, several switching targets, GQA heads that want different blocks
 * (presets: gen-cmd.c, docs/trace-format.md).
 *
 * The model, in a latent space per kv head g shared by all layers (every
 * direction below is a random unit vector of R^head_dim):
 *  - dictionaries: a sink direction s_g, topic directions T_g[0..topics),
 *    needle directions N_g[0..needles), orthonormal as far as head_dim
 *    allows (no chance alignment between them);
 *  - a positional direction p_g[j] per token j, an AR(1) walk
 *    p[j] = normalize(rho p[j-1] + sqrt(1 - rho^2) e_j) kept orthogonal to
 *    s_g, rho chosen so that the local logit of a key falls by about 2 over
 *    `window` tokens (correlation 1 - 2 / newest-token logit at lag window);
 *  - the text: after the sinks, segments of topic_span tokens on average
 *    (uniform in [span/2, 3 span/2]), each of one topic (another one than the
 *    previous segment's); needle spans of needle_len tokens in the prompt,
 *    one in each equal part of the prompt between the sinks and the last
 *    `window` prompt tokens; needle i retrieved by a stretch of needle_steps
 *    decode steps centred in the i-th equal part of the steps;
 *  - keys, unit vectors scaled by sqrt(head_dim) (elements about N(0, 1)):
 *      sink token       normalize(s + 0.1 e)
 *      needle token     normalize(0.9 N[i] + 0.3 p[j] + 0.32 e)
 *      other token      normalize(0.2 T[topic(j)] + 0.75 p[j] + 0.63 e)
 *    with e fresh N(0, I/head_dim) noise for each token and layer (the
 *    noise takes the weight of a part that is switched off);
 *  - values N(0, 1), those of the sinks times 0.1 (sinks carry little);
 *  - queries of decode step t, layer l, query head h (group g): a content
 *    direction c_{l,h}(t) that starts near a random topic of g and drifts,
 *    c(t) = normalize(c(t-1) + drift * n), n ~ N(0, I/head_dim), replaced by
 *    1.5 N_g[i] during the stretch of needle i;
 *      fresh_{l,h}(t) = normalize(0.55 s + 0.55 p[prompt + t] + 0.63 C)
 *      q_0 = fresh_0,  q_l = normalize(layer_corr q_{l-1}
 *                                      + sqrt(1 - layer_corr^2) fresh_l)
 *    times scale. So the logit q.k / sqrt(head_dim) is scale times a
 *    cosine: with scale 20 about 11 for a sink (9 while a needle is
 *    retrieved), 8 for the newest token, 14 for a needle being retrieved,
 *    2.5 for a token of the head's topic, and noise of about
 *    scale / sqrt(head_dim) on every token.
 * Each layer and kv head then gets its own random signed permutation of the
 * dimensions (applied to its keys and its queries alike, so logits do not
 * change): layers do not share raw key coordinates.
 *
 * Realistic extras (issue 13), each off by default (the trace above is then
 * unchanged, byte for byte):
 *  - RoPE (rope_theta > 0), as in Llama and Hugging Face (rotate_half): dim
 *    i pairs with dim i + head_dim/2 and turns by the angle
 *    pos * theta^(-2i/head_dim), i < head_dim/2; every key at its token j,
 *    every query of step t at prompt + t. The latent space is laid out by
 *    these pairs, as trained models use them, from the lowest frequency:
 *      the sink pair  the last pair holds s alone (no cross-talk with the
 *                     content as the pairs turn);
 *      content band   the next head_dim/16 pairs (up to head_dim/8 when the
 *                     topics and needles need them): T[], N[], the query's
 *                     content walk and its drift live there only, so that a
 *                     content match survives long distances (the mean cos
 *                     of the band's turn, head_dim 128: 0.97 at 32K and 0.74
 *                     at 100K tokens for theta 500000, 0.55 at 4K for 10000);
 *      outlier pairs  the next outlier_channels pairs (below);
 *      local band     the pairs that turn by at least 1/(16 window) rad per
 *                     token: a fixed unit vector u_g, pair i weighted
 *                     a_i = 1/(1 + (w_i window/2)^2) (normalised, random
 *                     phases), replaces the AR(1) walk in keys and queries.
 *                     The local logit is then RoPE's own decay,
 *                     scale w_local b_local sum_i a_i cos(w_i (m - j)): 0.67
 *                     of its peak at lag window, 0.45 at 2, 0.23 at 4
 *                     windows, then an oscillation of about 0.15;
 *      the rest       noise only.
 *    The signed permutation is then one of the pairs within the content
 *    band and within the outlier pairs (every pair keeps its frequency), a
 *    sign per pair, applied BEFORE RoPE: the written keys keep RoPE's own
 *    pairing and frequencies.
 *  - Outlier channels (outlier_channels N <= head_dim/8, outlier_scale X):
 *    N latent dims of each layer and kv head (with RoPE the first dim of
 *    each outlier pair, low frequency: its sign holds for the first
 *    ~80K tokens at theta 500000) are, in every key, sign X (1 + 0.15 n),
 *    n ~ N(0, 1) per token, X in normal key elements (about N(0, 1)); in
 *    every query sign scale / sqrt(head_dim), a normal query element. Each
 *    adds a near-constant logit scale X / head_dim, jittering by 15 %.
 *  - Key norms: with norm_tail X every non-sink key is multiplied by
 *    exp(X n - X^2/2), n ~ N(0, 1) per token and layer (mean 1, heavy
 *    tailed; logits scale with it); with sink_norm X the sink keys are X
 *    times longer and the queries' component along s divided by X: the
 *    sink logit stays about 11, made by the norm.
 *  - Retrieval: needle_targets K needles at once (the content part is the
 *    normalised sum of their directions: each gets 1/sqrt(K) of it). With
 *    switch_every 0, stretch i (as above) retrieves needles i .. i+K-1
 *    (mod needles); with switch_every S every step retrieves, and every S
 *    steps the K targets are drawn again at random (another set than the
 *    last where there is one).
 *  - Head divergence X: each query head, with probability X, has its own
 *    targets in every layer: with stretches, stretch i retrieves needle
 *    i + r (r uniform per head); with switching, its own draws. (Topics are
 *    drawn per query head and layer already.) The heads of a GQA group
 *    then want different blocks.
 * meta.json records the options, the preset, where the needles are, and
 * which needles every query head retrieves at which step ("retrieval").
 *
 * Random numbers: xoshiro256** streams, each seeded by splitmix64 from
 * (seed, purpose, layer, head), normals by Box-Muller; the same options and
 * seed give byte-identical files (on one platform: libm is used for the
 * normals) whatever the order of the work.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "trace.h"

struct kvb_gen_opts {
        struct kvb_trace_meta shape;
        uint64_t seed;
        uint32_t sinks;         /* attention-sink tokens at the start */
        uint32_t window;        /* local window (tokens); 0: none */
        uint32_t topics;        /* topic directions per kv head; 0: none */
        uint32_t topic_span;    /* mean tokens of a topic segment */
        uint32_t needles;       /* needle spans in the prompt */
        uint32_t needle_len;    /* tokens of a needle */
        uint32_t needle_steps;  /* decode steps retrieving one needle; 0: steps / needles / 2 */
        double drift;           /* per-step random walk of the query's content */
        double layer_corr;      /* in [0, 1] */
        double scale;           /* norm of a query = the largest possible logit */
        /* Realistic extras (issue 13): 0 / 1 / NULL keep the trace above. */
        double rope_theta;      /* RoPE base: Llama 2 10000, Llama 3 500000; 0: off */
        uint32_t outlier_channels; /* massive-activation channels per layer and kv head */
        double outlier_scale;   /* their magnitude in keys, in normal key elements */
        double norm_tail;       /* sigma of the lognormal factor on key norms; 0: off */
        double sink_norm;       /* norm of a sink key over an ordinary key's */
        uint32_t needle_targets; /* needles retrieved at once */
        uint32_t switch_every;  /* 0: stretches; S: new random targets every S steps */
        double head_divergence; /* chance that a query head has its own targets */
        const char *preset;     /* the preset applied first (static string), or NULL */
};

/* The defaults of `kvdrive-bench gen` (docs/trace-format.md). */
struct kvb_gen_opts kvb_gen_opts_default(void);

/* The most needles retrieved at once. */
#define KVB_GEN_MAX_TARGETS 64u

/* The query head number that stands for the shared targets (the heads that
 * do not diverge) in kvb_gen_targets(). */
#define KVB_GEN_SHARED UINT32_MAX

/* A needle: tokens [token, token + len) of every head, retrieved by decode
 * steps [step, step + steps) (with switch_every: the first run of steps of
 * the shared targets that retrieves it; 0, 0 if none). */
struct kvb_gen_needle {
        uint32_t token, len;
        uint32_t step, steps;
};

/* Checks o: 0 or -EINVAL with err naming the option. */
int kvb_gen_check(const struct kvb_gen_opts *o, char *err, size_t errlen);

/* Where the needles of o are: fills ret[0..o->needles). 0 or -EINVAL. */
int kvb_gen_needles(const struct kvb_gen_opts *o, struct kvb_gen_needle *ret, char *err, size_t errlen);

/* The needles that query head qh (every layer; KVB_GEN_SHARED: the heads
 * without their own) retrieves at decode step t: writes them, ascending,
 * into ret[0..o->needle_targets) and returns how many (0: none, the query
 * follows its topic). o must pass kvb_gen_check(). Costs O(t / switch_every). */
uint32_t kvb_gen_targets(const struct kvb_gen_opts *o, uint32_t qh, uint32_t t, uint32_t *ret);

/* Whether query head qh has its own targets (head_divergence). */
bool kvb_gen_own_targets(const struct kvb_gen_opts *o, uint32_t qh);

/* Sets *o to the defaults with the preset name applied (o->preset = its
 * name): 0, or -EINVAL with err listing the presets. */
int kvb_gen_preset(const char *name, struct kvb_gen_opts *o, char *err, size_t errlen);

/* Prints the presets, one a line with what each is, to f. */
void kvb_gen_presets_print(FILE *f);

/* The name of preset i (and what it is, in *ret_what when not NULL), NULL
 * past the last: the zoo in order. Static strings. */
const char *kvb_gen_preset_name(size_t i, const char **ret_what);

/* Writes the trace of o into dir (trace.h's writer; meta.json also records
 * the options under "generator", the needles under "needles" and the
 * targets of every step under "retrieval", docs/trace-format.md).
 * 0 or -errno with err set. */
int kvb_gen(const struct kvb_gen_opts *o, const char *dir, char *err, size_t errlen);
