/* SPDX-License-Identifier: MIT */
/*
 * Synthetic decode traces (`kvdrive-bench gen`, docs/trace-format.md) with
 * the structure real attention has: attention sinks, a local window, topic
 * segments, needles retrieved by stretches of decode steps, queries that
 * drift from step to step and correlate from layer to layer.
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
 * Random numbers: xoshiro256** streams, each seeded by splitmix64 from
 * (seed, purpose, layer, head), normals by Box-Muller; the same options and
 * seed give byte-identical files (on one platform: libm is used for the
 * normals) whatever the order of the work.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

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
};

/* The defaults of `kvdrive-bench gen` (docs/trace-format.md). */
struct kvb_gen_opts kvb_gen_opts_default(void);

/* A needle: tokens [token, token + len) of every head, retrieved by decode
 * steps [step, step + steps). */
struct kvb_gen_needle {
        uint32_t token, len;
        uint32_t step, steps;
};

/* Checks o: 0 or -EINVAL with err naming the option. */
int kvb_gen_check(const struct kvb_gen_opts *o, char *err, size_t errlen);

/* Where the needles of o are: fills ret[0..o->needles). 0 or -EINVAL. */
int kvb_gen_needles(const struct kvb_gen_opts *o, struct kvb_gen_needle *ret, char *err, size_t errlen);

/* Writes the trace of o into dir (trace.h's writer; meta.json also records
 * the options under "generator" and the needles under "needles").
 * 0 or -errno with err set. */
int kvb_gen(const struct kvb_gen_opts *o, const char *dir, char *err, size_t errlen);
