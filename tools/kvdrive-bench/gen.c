/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench gen: a synthetic decode trace (gen.h has the model,
 * docs/trace-format.md the format). kvb_gen() is the core and needs nothing
 * of the other subcommands, so tests link this file (and gen-cmd.c, the
 * options and presets) alone.
 */
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen-internal.h"
#include "gen.h"
#include "kernels.h"
#include "trace.h"

/* Mixing weights of the model (gen.h). Query: sink, local, content. */
#define W_SINK 0.55
#define W_LOCAL 0.55
#define W_CONTENT 0.63
/* Ordinary key: topic, local; the rest is noise. */
#define B_TOPIC 0.2
#define B_LOCAL 0.75
/* Needle key: needle, local; the rest is noise. */
#define B_NEEDLE 0.9
#define B_NEEDLE_LOCAL 0.3
/* Sink key noise, sink value scale, start of a query's content walk. */
#define SINK_NOISE 0.1
#define SINK_VALUE 0.1
#define CONTENT_NOISE 0.3
/* A query retrieving a needle weighs its content part this much more. */
#define NEEDLE_BOOST 1.5
/* The local logit falls by this much over `window` tokens. */
#define WINDOW_DROP 2.0
/* RoPE's local band: the pairs that turn by at least 1/(LOCAL_REACH window)
 * rad per token. */
#define LOCAL_REACH 16.0
/* Outlier channels: the keys' jitter, the queries' weight (in normal query
 * elements). */
#define OUTLIER_JITTER 0.15
#define OUTLIER_QUERY 1.0

/* ---- vectors -------------------------------------------------------------- */

static void normalize(float *v, uint32_t d)
{
        double s = 0;

        for (uint32_t i = 0; i < d; i++)
                s += (double)v[i] * v[i];
        if (s == 0) {
                v[0] = 1;
                return;
        }
        s = 1.0 / sqrt(s);
        for (uint32_t i = 0; i < d; i++)
                v[i] = (float)(v[i] * s);
}

static void rand_unit(struct rng *r, float *v, uint32_t d)
{
        rng_normals(r, v, d, 1.0);
        normalize(v, d);
}

/* ---- options -------------------------------------------------------------- */

struct kvb_gen_opts kvb_gen_opts_default(void)
{
        return (struct kvb_gen_opts){
                .shape = { .layers = 4, .kv_heads = 8, .q_heads = 32, .head_dim = 128, .tokens = 32768, .steps = 64 },
                .seed = 1,
                .sinks = 4,
                .window = 64,
                .topics = 8,
                .topic_span = 512,
                .needles = 4,
                .needle_len = 16,
                .needle_steps = 0,
                .drift = 0.05,
                .layer_corr = 0.8,
                .scale = 20.0,
                .rope_theta = 0,
                .outlier_channels = 0,
                .outlier_scale = 6.0,
                .norm_tail = 0,
                .sink_norm = 1.0,
                .needle_targets = 1,
                .switch_every = 0,
                .head_divergence = 0,
                .preset = NULL,
        };
}

/* The options of issue 13 (gen.h). */
static int check_extras(const struct kvb_gen_opts *o, char *err, size_t errlen)
{
        uint32_t d = o->shape.head_dim, max_targets;

        if (!(o->rope_theta == 0 || (o->rope_theta > 1 && o->rope_theta <= 1e9)))
                return kvb_fail(err, errlen, -EINVAL, "gen: --rope-theta must be 0 (off) or in (1, 1e9]");
        if (o->rope_theta > 0 && (d % 2 != 0 || d < 8))
                return kvb_fail(err, errlen, -EINVAL,
                                "gen: --rope-theta needs an even --head-dim of at least 8 (not %" PRIu32 ")", d);
        if (o->outlier_channels > d / 8)
                return kvb_fail(err, errlen, -EINVAL,
                                "gen: --outlier-channels must be at most head_dim / 8 (%" PRIu32 ")", d / 8);
        if (!(o->outlier_scale > 0 && o->outlier_scale <= 100))
                return kvb_fail(err, errlen, -EINVAL, "gen: --outlier-scale must be in (0, 100]");
        if (!(o->norm_tail >= 0 && o->norm_tail <= 3))
                return kvb_fail(err, errlen, -EINVAL, "gen: --norm-tail must be in [0, 3]");
        if (!(o->sink_norm >= 1 && o->sink_norm <= 100))
                return kvb_fail(err, errlen, -EINVAL, "gen: --sink-norm must be in [1, 100]");
        max_targets = o->needles > 0 && o->needles < KVB_GEN_MAX_TARGETS ? o->needles : KVB_GEN_MAX_TARGETS;
        if (o->needle_targets < 1 || o->needle_targets > max_targets)
                return kvb_fail(err, errlen, -EINVAL,
                                "gen: --needle-targets must be in [1, %" PRIu32 "] (at most the needles, %u)",
                                max_targets, KVB_GEN_MAX_TARGETS);
        if (o->switch_every > o->shape.steps)
                return kvb_fail(err, errlen, -EINVAL,
                                "gen: --switch-every must be at most the steps (%" PRIu32 ")", o->shape.steps);
        if (!(o->head_divergence >= 0 && o->head_divergence <= 1))
                return kvb_fail(err, errlen, -EINVAL, "gen: --head-divergence must be in [0, 1]");
        return 0;
}

int kvb_gen_check(const struct kvb_gen_opts *o, char *err, size_t errlen)
{
        const struct kvb_trace_meta *m = &o->shape;
        uint32_t prompt, lo, hi, ns;
        int r;

        r = kvb_trace_meta_check(m, NULL, NULL, err, errlen);
        if (r < 0)
                return r;
        if (m->head_dim > KVK_MAX_HEAD_DIM || m->kv_heads > KVK_MAX_KV_HEADS || m->q_heads > KVK_MAX_Q_HEADS)
                return kvb_fail(err, errlen, -EINVAL,
                                "gen: the kernels take at most head_dim %u, kv_heads %u, q_heads %u", KVK_MAX_HEAD_DIM,
                                KVK_MAX_KV_HEADS, KVK_MAX_Q_HEADS);
        if (o->seed > INT64_MAX)
                return kvb_fail(err, errlen, -EINVAL, "gen: --seed must be at most %" PRId64, INT64_MAX);
        prompt = m->tokens - m->steps;
        if (o->sinks > prompt)
                return kvb_fail(err, errlen, -EINVAL,
                                "gen: --sinks %" PRIu32 " exceeds the prompt (%" PRIu32 " tokens)",
                                o->sinks, prompt);
        if (o->topics > 65535)
                return kvb_fail(err, errlen, -EINVAL, "gen: --topics must be at most 65535");
        if (o->topics > 0 && o->topic_span == 0)
                return kvb_fail(err, errlen, -EINVAL, "gen: --topic-span must be at least 1");
        if (o->needles > 0) {
                ns = needle_steps(o);
                if (o->needle_len == 0)
                        return kvb_fail(err, errlen, -EINVAL, "gen: --needle-len must be at least 1");
                lo = o->sinks;
                hi = prompt > o->window ? prompt - o->window : 0;
                if (hi <= lo || (uint64_t)o->needles * o->needle_len > hi - lo)
                        return kvb_fail(err, errlen, -EINVAL,
                                        "gen: %" PRIu32 " needles of %" PRIu32 " tokens do not fit between "
                                        "the sinks and the local window of the prompt (%" PRIu32 " tokens)",
                                        o->needles, o->needle_len, hi > lo ? hi - lo : 0);
                if (o->switch_every == 0 && (uint64_t)o->needles * ns > m->steps)
                        return kvb_fail(err, errlen, -EINVAL,
                                        "gen: %" PRIu32 " needles of %" PRIu32 " steps do not fit in %" PRIu32 " steps",
                                        o->needles, ns, m->steps);
        }
        if (!(o->drift >= 0 && o->drift <= 10))
                return kvb_fail(err, errlen, -EINVAL, "gen: --drift must be in [0, 10]");
        if (!(o->layer_corr >= 0 && o->layer_corr <= 1))
                return kvb_fail(err, errlen, -EINVAL, "gen: --layer-corr must be in [0, 1]");
        if (!(o->scale > 0 && o->scale <= 1000))
                return kvb_fail(err, errlen, -EINVAL, "gen: --scale must be in (0, 1000]");
        return check_extras(o, err, errlen);
}

int kvb_gen_needles(const struct kvb_gen_opts *o, struct kvb_gen_needle *ret, char *err, size_t errlen)
{
        uint32_t prompt, lo, region, sregion, ns;
        struct rng r;
        int e;

        e = kvb_gen_check(o, err, errlen);
        if (e < 0)
                return e;
        if (o->needles == 0)
                return 0;
        prompt = o->shape.tokens - o->shape.steps;
        lo = o->sinks;
        region = (prompt - o->window - lo) / o->needles;
        ns = needle_steps(o);
        sregion = o->shape.steps / o->needles;
        rng_init(&r, o->seed, RNG_NEEDLES, 0, 0);
        for (uint32_t i = 0; i < o->needles; i++) {
                ret[i].token = lo + i * region + rng_below(&r, region - o->needle_len + 1);
                ret[i].len = o->needle_len;
                if (o->switch_every == 0) {
                        ret[i].step = i * sregion + (sregion - ns) / 2;
                        ret[i].steps = ns;
                } else {
                        ret[i].step = ret[i].steps = 0;
                }
        }
        if (o->switch_every > 0)
                gen_first_runs(o, ret);
        return 0;
}

/* ---- the generator -------------------------------------------------------- */

enum token_kind {
        TOK_SINK,
        TOK_NEEDLE,
        TOK_TEXT,
};

struct gen {
        const struct kvb_gen_opts *o;
        uint32_t layers, kv_heads, q_heads, dim, tokens, steps, prompt;
        struct kvb_gen_needle *needles;
        uint8_t *kind;          /* [tokens] enum token_kind */
        uint32_t *what;         /* [tokens] topic or needle index */
        float *sink;            /* [kv_heads][dim] */
        float *topic;           /* [kv_heads][topics][dim] */
        float *needle;          /* [kv_heads][needles][dim] */
        float *local;           /* [tokens][dim]: p[j] of the kv head at hand */
        float *local_tail;      /* [kv_heads][steps][dim]: p[prompt + t] */
        uint32_t *perm;         /* [layers][kv_heads][dim] */
        float *sign;            /* [layers][kv_heads][dim] */
        double rho;             /* AR(1) coefficient of p */
        double w_sink, w_local, w_content;
        double b_topic, b_local, b_noise;       /* ordinary keys */
        double bn_needle, bn_local, bn_noise;   /* needle keys */
        float *tmp, *noise;     /* [dim] each */
        /* RoPE (gen.h): latent dims i and i + half are a pair, as written */
        bool rope;
        uint32_t half, content_pairs, local_pairs;
        uint32_t outliers;      /* outlier channels */
        double *freq;           /* [half] theta^(-2i/dim) */
        float *u;               /* [kv_heads][dim]: the local vector */
        float *rot;             /* [tokens][half][2]: cos, sin of the angles */
        float *out;             /* [dim] emit()'s */
        float *ov;              /* [outliers] the values of the outlier channels */
        float *mix;             /* [dim] the content of several targets */
};

static void gen_free(struct gen *g)
{
        free(g->needles);
        free(g->kind);
        free(g->what);
        free(g->sink);
        free(g->topic);
        free(g->needle);
        free(g->local);
        free(g->local_tail);
        free(g->perm);
        free(g->sign);
        free(g->tmp);
        free(g->noise);
        free(g->freq);
        free(g->u);
        free(g->rot);
        free(g->out);
        free(g->ov);
        free(g->mix);
}

static void *alloc_n(size_t n, size_t size)
{
        return calloc(n ? n : 1, size);
}

static void gen_weights(struct gen *g)
{
        const struct kvb_gen_opts *o = g->o;
        double n, x_local, c;

        g->w_sink = o->sinks > 0 ? W_SINK : 0;
        g->w_local = o->window > 0 ? W_LOCAL : 0;
        g->w_content = W_CONTENT;
        n = sqrt(g->w_sink * g->w_sink + g->w_local * g->w_local + g->w_content * g->w_content);
        g->w_sink /= n;
        g->w_local /= n;
        g->w_content /= n;

        g->b_topic = o->topics > 0 ? B_TOPIC : 0;
        g->b_local = o->window > 0 ? B_LOCAL : 0;
        g->b_noise = sqrt(1 - g->b_topic * g->b_topic - g->b_local * g->b_local);
        g->bn_needle = B_NEEDLE;
        g->bn_local = o->window > 0 ? B_NEEDLE_LOCAL : 0;
        g->bn_noise = sqrt(1 - g->bn_needle * g->bn_needle - g->bn_local * g->bn_local);

        /* Largest local logit x: the correlation at lag `window` is 1 - 2/x,
         * so the logit drops by WINDOW_DROP; at least 1/e when the scale is
         * too small for that. */
        g->rho = 0;
        if (o->window > 0) {
                x_local = o->scale * g->w_local * g->b_local;
                c = x_local > 0 ? 1 - WINDOW_DROP / x_local : 0;
                if (c < exp(-1))
                        c = exp(-1);
                g->rho = pow(c, 1.0 / o->window);
        }
}

/* The text: which tokens are sinks, needles, and of which topic the rest. */
static void gen_text(struct gen *g)
{
        const struct kvb_gen_opts *o = g->o;
        uint32_t j = o->sinks, prev = UINT32_MAX;
        struct rng r;

        for (uint32_t t = 0; t < o->sinks; t++)
                g->kind[t] = TOK_SINK;
        rng_init(&r, o->seed, RNG_TOPICS, 0, 0);
        while (j < g->tokens) {
                uint32_t len = 1, c = 0;

                if (o->topics > 0) {
                        len = o->topic_span / 2 + rng_below(&r, o->topic_span + 1);
                        if (len == 0)
                                len = 1;
                        if (o->topics > 1 && prev != UINT32_MAX) {
                                c = rng_below(&r, o->topics - 1);
                                c += c >= prev;
                        } else {
                                c = rng_below(&r, o->topics);
                        }
                        prev = c;
                } else {
                        len = g->tokens - j;
                }
                for (uint32_t t = j; t < g->tokens && t < j + len; t++) {
                        g->kind[t] = TOK_TEXT;
                        g->what[t] = c;
                }
                j = len > g->tokens - j ? g->tokens : j + len;
        }
        for (uint32_t i = 0; i < o->needles; i++)
                for (uint32_t t = g->needles[i].token; t < g->needles[i].token + g->needles[i].len; t++) {
                        g->kind[t] = TOK_NEEDLE;
                        g->what[t] = i;
                }
}

/* v minus its projection on the unit vector u. */
static void project_out(float *v, const float *u, uint32_t d)
{
        double dot = 0;

        for (uint32_t i = 0; i < d; i++)
                dot += (double)v[i] * u[i];
        for (uint32_t i = 0; i < d; i++)
                v[i] = (float)(v[i] - dot * u[i]);
}

/* Direction k of kv head h's dictionary: the sink, the topics, the needles. */
static float *dict_dir(const struct gen *g, uint32_t h, uint32_t k)
{
        const struct kvb_gen_opts *o = g->o;
        uint32_t d = g->dim;

        if (k == 0)
                return g->sink + (size_t)h * d;
        if (k <= o->topics)
                return g->topic + ((size_t)h * o->topics + k - 1) * d;
        return g->needle + ((size_t)h * o->needles + k - 1 - o->topics) * d;
}

/* ---- RoPE and outlier channels (gen.h) ------------------------------------ */

/* Pairs of the content band (topics, needles): head_dim/16, up to
 * head_dim/8 for a larger dictionary, at least 1. */
static uint32_t content_pairs(const struct kvb_gen_opts *o)
{
        uint32_t half = o->shape.head_dim / 2, lo = half / 8 > 0 ? half / 8 : 1, hi = half / 4 > lo ? half / 4 : lo;
        uint64_t need = ((uint64_t)o->topics + o->needles + 1) / 2;

        return need < lo ? lo : need > hi ? hi : (uint32_t)need;
}

/* With RoPE the latent pairs are, from the highest frequency: local, noise
 * only, outliers, content, and the sink's own pair (the lowest frequency). */
static uint32_t content_lo(const struct gen *g)
{
        return g->half - 1 - g->content_pairs;
}

/* The latent dim of outlier channel k (RoPE: the first dim of its pair). */
static uint32_t outlier_dim(const struct gen *g, uint32_t k)
{
        return g->rope ? content_lo(g) - g->outliers + k : g->dim - g->outliers + k;
}

/* v without its part outside pairs [lo, hi) (RoPE). */
static void pairs_only(const struct gen *g, float *v, uint32_t lo, uint32_t hi)
{
        for (uint32_t i = 0; i < g->half; i++)
                if (i < lo || i >= hi)
                        v[i] = v[i + g->half] = 0;
}

static void content_only(const struct gen *g, float *v)
{
        pairs_only(g, v, content_lo(g), g->half - 1);
}

/* Frequencies, the angles of every position, the local band and its vector
 * u of each kv head. */
static void gen_rope(struct gen *g)
{
        const struct kvb_gen_opts *o = g->o;
        uint32_t d = g->dim, half = g->half, free_pairs = content_lo(g) - g->outliers, n = 0;
        double sum = 0;

        for (uint32_t i = 0; i < half; i++)
                g->freq[i] = pow(o->rope_theta, -2.0 * i / d);
        for (uint32_t j = 0; j < g->tokens; j++)
                for (uint32_t i = 0; i < half; i++) {
                        double s, c;

                        sincos((double)j * g->freq[i], &s, &c);
                        g->rot[((size_t)j * half + i) * 2] = (float)c;
                        g->rot[((size_t)j * half + i) * 2 + 1] = (float)s;
                }
        if (o->window > 0)
                while (n < free_pairs && g->freq[n] >= 1.0 / (LOCAL_REACH * o->window))
                        n++;
        g->local_pairs = n;
        for (uint32_t i = 0; i < n; i++)
                sum += 1 / (1 + pow(g->freq[i] * o->window / 2, 2));
        for (uint32_t h = 0; h < g->kv_heads; h++) {
                float *u = g->u + (size_t)h * d;
                struct rng r;

                /* A low-pass spectrum: u.R(m - j)u falls smoothly with the lag. */
                rng_init(&r, o->seed, RNG_PHASES, h, 0);
                for (uint32_t i = 0; i < n; i++) {
                        double a = sqrt(1 / (1 + pow(g->freq[i] * o->window / 2, 2)) / sum), s, c;

                        sincos(2 * M_PI * rng_unit(&r), &s, &c);
                        u[i] = (float)(a * c);
                        u[i + half] = (float)(a * s);
                }
        }
}

/* Shuffles p[lo, hi). */
static void shuffle(struct rng *r, uint32_t *p, uint32_t lo, uint32_t hi)
{
        for (uint32_t i = hi - 1; hi > lo && i > lo; i--) {
                uint32_t k = lo + rng_below(r, i - lo + 1), t = p[i];

                p[i] = p[k];
                p[k] = t;
        }
}

/* One layer and kv head's permutation with RoPE: of the pairs, within the
 * content and within the outlier pairs (each keeps its band), one sign a
 * pair. */
static void rope_perm(const struct gen *g, struct rng *r, uint32_t *p, float *sign)
{
        uint32_t half = g->half, lo = content_lo(g);

        for (uint32_t i = 0; i < half; i++)
                p[i] = i;
        shuffle(r, p, lo, half - 1);
        shuffle(r, p, lo - g->outliers, lo);
        for (uint32_t i = 0; i < half; i++) {
                p[i + half] = p[i] + half;
                sign[i] = sign[i + half] = (rng_next(r) >> 63) ? -1.0f : 1.0f;
        }
}

static void gen_dicts(struct gen *g)
{
        const struct kvb_gen_opts *o = g->o;
        uint32_t d = g->dim, n = 1 + o->topics + o->needles, room = g->rope ? 1 + 2 * g->content_pairs : d;

        for (uint32_t h = 0; h < g->kv_heads; h++) {
                struct rng r;

                /* Orthonormal (Gram-Schmidt) as far as head_dim (with RoPE:
                 * the content band) allows: no chance alignment between the
                 * sink, topics and needles. */
                rng_init(&r, o->seed, RNG_DICT, h, 0);
                for (uint32_t k = 0; k < n; k++) {
                        float *v = dict_dir(g, h, k);

                        rand_unit(&r, v, d);
                        if (g->rope && k == 0)
                                pairs_only(g, v, g->half - 1, g->half);
                        else if (g->rope)
                                content_only(g, v);
                        for (uint32_t j = 0; j < k && k < room; j++)
                                project_out(v, dict_dir(g, h, j), d);
                        normalize(v, d);
                }
        }
        for (uint32_t l = 0; l < g->layers; l++)
                for (uint32_t h = 0; h < g->kv_heads; h++) {
                        size_t base = ((size_t)l * g->kv_heads + h) * d;
                        uint32_t *p = g->perm + base;
                        struct rng r;

                        rng_init(&r, o->seed, RNG_PERM, l, h);
                        if (g->rope) {
                                rope_perm(g, &r, p, g->sign + base);
                                continue;
                        }
                        for (uint32_t i = 0; i < d; i++)
                                p[i] = i;
                        for (uint32_t i = d - 1; i > 0; i--) {
                                uint32_t k = rng_below(&r, i + 1), t = p[i];

                                p[i] = p[k];
                                p[k] = t;
                        }
                        for (uint32_t i = 0; i < d; i++)
                                g->sign[base + i] = (rng_next(&r) >> 63) ? -1.0f : 1.0f;
                }
}

/* p[j] of kv head h for every token: an AR(1) walk of unit vectors. */
static void gen_local(struct gen *g, uint32_t h)
{
        uint32_t d = g->dim;
        double a = g->rho, b = sqrt(1 - g->rho * g->rho);
        const float *sink = g->o->sinks > 0 && d > 1 ? g->sink + (size_t)h * d : NULL;
        struct rng r;

        rng_init(&r, g->o->seed, RNG_LOCAL, h, 0);
        for (uint32_t j = 0; j < g->tokens; j++) {
                float *cur = g->local + (size_t)j * d;

                if (j == 0) {
                        rng_normals(&r, cur, d, 1.0);
                } else {
                        const float *prev = cur - d;

                        rng_normals(&r, cur, d, b / sqrt(d));
                        for (uint32_t i = 0; i < d; i++)
                                cur[i] = (float)(cur[i] + a * prev[i]);
                }
                /* Orthogonal to the sink, so that the sink logit holds steady. */
                if (sink)
                        project_out(cur, sink, d);
                normalize(cur, d);
        }
        memcpy(g->local_tail + (size_t)h * g->steps * d, g->local + (size_t)g->prompt * d,
               (size_t)g->steps * d * sizeof(float));
}

/* v (unit, latent) times scale, the outlier channels set to ov[] (NULL:
 * none), permuted for (l, kv head h), turned for position pos (RoPE), as
 * fp16. */
static void emit(struct gen *g, uint32_t l, uint32_t h, const float *v, double scale, const float *ov, uint32_t pos,
                 uint16_t *out)
{
        size_t base = ((size_t)l * g->kv_heads + h) * g->dim;
        const uint32_t *p = g->perm + base;
        const float *s = g->sign + base;
        float *w = g->out;

        for (uint32_t i = 0; i < g->dim; i++)
                w[p[i]] = (float)(s[i] * scale * v[i]);
        for (uint32_t k = 0; ov && k < g->outliers; k++) {
                uint32_t i = outlier_dim(g, k);

                w[p[i]] = s[i] * ov[k];
        }
        if (g->rope) {
                const float *cs = g->rot + (size_t)pos * g->dim;

                for (uint32_t i = 0; i < g->half; i++) {
                        float x = w[i], y = w[i + g->half], c = cs[2 * i], sn = cs[2 * i + 1];

                        w[i] = x * c - y * sn;
                        w[i + g->half] = x * sn + y * c;
                }
        }
        for (uint32_t i = 0; i < g->dim; i++)
                out[i] = kvk_f32_to_f16(w[i]);
}

static void gen_key(struct gen *g, struct rng *r, uint32_t h, uint32_t j, float *k)
{
        const struct kvb_gen_opts *o = g->o;
        uint32_t d = g->dim;
        const float *loc = g->rope ? g->u + (size_t)h * d : g->local + (size_t)j * d, *dir;
        double bd, bl, bn;

        rng_normals(r, g->noise, d, 1.0 / sqrt(d));
        switch (g->kind[j]) {
        case TOK_SINK:
                dir = g->sink + (size_t)h * d;
                bd = 1;
                bl = 0;
                bn = SINK_NOISE;
                break;
        case TOK_NEEDLE:
                dir = g->needle + ((size_t)h * o->needles + g->what[j]) * d;
                bd = g->bn_needle;
                bl = g->bn_local;
                bn = g->bn_noise;
                break;
        default:
                dir = o->topics > 0 ? g->topic + ((size_t)h * o->topics + g->what[j]) * d : g->sink;
                bd = g->b_topic;
                bl = g->b_local;
                bn = g->b_noise;
                break;
        }
        for (uint32_t i = 0; i < d; i++)
                k[i] = (float)(bd * dir[i] + bn * g->noise[i] + (bl > 0 ? bl * loc[i] : 0));
        normalize(k, d);
}

static int gen_kv(struct gen *g, struct kvb_trace_writer *w, char *err, size_t errlen)
{
        const struct kvb_gen_opts *o = g->o;
        size_t slab = (size_t)g->tokens * g->dim;
        uint16_t *ks, *vs;
        double kscale = sqrt(g->dim);
        int r = 0;

        ks = alloc_n(slab, sizeof(*ks));
        vs = alloc_n(slab, sizeof(*vs));
        if (!ks || !vs) {
                r = kvb_fail(err, errlen, -ENOMEM, "gen: out of memory");
                goto out_free;
        }
        for (uint32_t h = 0; h < g->kv_heads; h++) {
                if (o->window > 0 && !g->rope)
                        gen_local(g, h);
                for (uint32_t l = 0; l < g->layers; l++) {
                        struct rng kr, vr, nr, outr;

                        rng_init(&kr, o->seed, RNG_KEYS, l, h);
                        rng_init(&vr, o->seed, RNG_VALUES, l, h);
                        rng_init(&nr, o->seed, RNG_NORMS, l, h);
                        rng_init(&outr, o->seed, RNG_OUTLIERS, l, h);
                        for (uint32_t j = 0; j < g->tokens; j++) {
                                uint16_t *vo = vs + (size_t)j * g->dim;
                                double vscale = g->kind[j] == TOK_SINK ? SINK_VALUE : 1.0, norm = kscale;

                                gen_key(g, &kr, h, j, g->tmp);
                                if (g->kind[j] == TOK_SINK && o->sink_norm != 1)
                                        norm *= o->sink_norm;
                                else if (g->kind[j] != TOK_SINK && o->norm_tail > 0)
                                        norm *= exp(o->norm_tail * rng_normal(&nr) - o->norm_tail * o->norm_tail / 2);
                                for (uint32_t k = 0; k < g->outliers; k++)
                                        g->ov[k] = (float)(o->outlier_scale * (1 + OUTLIER_JITTER * rng_normal(&outr)));
                                emit(g, l, h, g->tmp, norm, g->outliers ? g->ov : NULL, j, ks + (size_t)j * g->dim);
                                for (uint32_t i = 0; i < g->dim; i++)
                                        vo[i] = kvk_f32_to_f16((float)(vscale * rng_normal(&vr)));
                        }
                        r = kvb_trace_writer_put(w, KVB_TRACE_K, kvb_kv_index(&o->shape, l, h, 0), ks, slab, err,
                                                 errlen);
                        if (r < 0)
                                goto out_free;
                        r = kvb_trace_writer_put(w, KVB_TRACE_V, kvb_kv_index(&o->shape, l, h, 0), vs, slab, err,
                                                 errlen);
                        if (r < 0)
                                goto out_free;
                }
        }
out_free:
        free(ks);
        free(vs);
        return r;
}

/* The content part of a query retrieving set[0..n): the needle, or the
 * normalised sum of the needles. */
static const float *target_content(struct gen *g, uint32_t h, const uint32_t *set, uint32_t n)
{
        const struct kvb_gen_opts *o = g->o;
        uint32_t d = g->dim;

        if (n == 1)
                return g->needle + ((size_t)h * o->needles + set[0]) * d;
        memset(g->mix, 0, d * sizeof(*g->mix));
        for (uint32_t k = 0; k < n; k++) {
                const float *nv = g->needle + ((size_t)h * o->needles + set[k]) * d;

                for (uint32_t i = 0; i < d; i++)
                        g->mix[i] += nv[i];
        }
        normalize(g->mix, d);
        return g->mix;
}

static int gen_queries(struct gen *g, struct kvb_trace_writer *w, char *err, size_t errlen)
{
        const struct kvb_gen_opts *o = g->o;
        uint32_t d = g->dim, group = g->q_heads / g->kv_heads, kt = o->needle_targets;
        size_t n = (size_t)g->steps * g->layers * g->q_heads * d;
        double corr = o->layer_corr, fresh_w = sqrt(1 - corr * corr), sink_cut = 1 - 1 / o->sink_norm;
        /* With RoPE the content walk lives in the content band: the same
         * step sizes over fewer dims. */
        double band = g->rope ? sqrt((double)d / (2 * g->content_pairs)) : 1;
        float *prev = NULL, *c = NULL, *f = NULL, *qo = NULL, *qov = NULL;
        uint32_t *tset = NULL, *tn = NULL;
        uint16_t *qs = NULL;
        int r = 0;

        qs = alloc_n(n, sizeof(*qs));
        prev = alloc_n((size_t)g->steps * d, sizeof(*prev));
        c = alloc_n(d, sizeof(*c));
        f = alloc_n(d, sizeof(*f));
        qo = alloc_n(d, sizeof(*qo));
        qov = alloc_n(g->outliers, sizeof(*qov));
        tset = alloc_n((size_t)g->steps * kt, sizeof(*tset));
        tn = alloc_n(g->steps, sizeof(*tn));
        if (!qs || !prev || !c || !f || !qo || !qov || !tset || !tn) {
                r = kvb_fail(err, errlen, -ENOMEM, "gen: out of memory");
                goto out_free;
        }
        for (uint32_t k = 0; k < g->outliers; k++)
                qov[k] = (float)(OUTLIER_QUERY * o->scale / sqrt(d));
        for (uint32_t qh = 0; qh < g->q_heads; qh++) {
                uint32_t h = qh / group;
                const float *sink = g->sink + (size_t)h * d;
                struct gen_sched sc;

                gen_sched_init(&sc, o, qh);
                for (uint32_t t = 0; t < g->steps; t++) {
                        tn[t] = gen_sched_at(&sc, t);
                        memcpy(tset + (size_t)t * kt, sc.set, tn[t] * sizeof(*tset));
                }
                for (uint32_t l = 0; l < g->layers; l++) {
                        struct rng rr;

                        rng_init(&rr, o->seed, RNG_QUERIES, l, qh);
                        /* The content walk starts near one of the head's topics. */
                        rng_normals(&rr, c, d, (o->topics > 0 ? CONTENT_NOISE / sqrt(d) : 1.0) * band);
                        if (o->topics > 0) {
                                const float *tp = g->topic + ((size_t)h * o->topics + rng_below(&rr, o->topics)) * d;

                                for (uint32_t i = 0; i < d; i++)
                                        c[i] += tp[i];
                        }
                        if (g->rope)
                                content_only(g, c);
                        normalize(c, d);
                        for (uint32_t t = 0; t < g->steps; t++) {
                                const float *loc = g->rope ? g->u + (size_t)h * d
                                                           : g->local_tail + ((size_t)h * g->steps + t) * d;
                                const float *content = c, *qv;
                                float *q = prev + (size_t)t * d;
                                double wc;

                                if (t > 0 && o->drift > 0) {
                                        rng_normals(&rr, f, d, o->drift / sqrt(d) * band);
                                        if (g->rope)
                                                content_only(g, f);
                                        for (uint32_t i = 0; i < d; i++)
                                                c[i] += f[i];
                                        normalize(c, d);
                                }
                                wc = g->w_content;
                                if (tn[t] > 0) {
                                        content = target_content(g, h, tset + (size_t)t * kt, tn[t]);
                                        wc = g->w_content * NEEDLE_BOOST;
                                }
                                for (uint32_t i = 0; i < d; i++)
                                        f[i] = (float)(g->w_sink * sink[i] + wc * content[i] +
                                                       (g->w_local > 0 ? g->w_local * loc[i] : 0));
                                normalize(f, d);
                                if (l == 0) {
                                        memcpy(q, f, d * sizeof(*q));
                                } else {
                                        for (uint32_t i = 0; i < d; i++)
                                                q[i] = (float)(corr * q[i] + fresh_w * f[i]);
                                        normalize(q, d);
                                }
                                qv = q;
                                if (sink_cut > 0 && o->sinks > 0) {
                                        /* A large-norm sink: its logit from the key's norm, not the query. */
                                        double dot = 0;

                                        for (uint32_t i = 0; i < d; i++)
                                                dot += (double)q[i] * sink[i];
                                        for (uint32_t i = 0; i < d; i++)
                                                qo[i] = (float)(q[i] - sink_cut * dot * sink[i]);
                                        qv = qo;
                                }
                                emit(g, l, h, qv, o->scale, g->outliers ? qov : NULL, g->prompt + t,
                                     qs + kvb_q_index(&o->shape, t, l, qh));
                        }
                }
        }
        r = kvb_trace_writer_put(w, KVB_TRACE_Q, 0, qs, n, err, errlen);
out_free:
        free(qs);
        free(prev);
        free(c);
        free(f);
        free(qo);
        free(qov);
        free(tset);
        free(tn);
        return r;
}

/* Appends [from, to) to the "retrieved" runs of needle i, or extends the
 * last run where it ends at from. */
static int needle_run(json_t *needles, uint32_t i, uint32_t from, uint32_t to)
{
        json_t *runs = json_object_get(json_array_get(needles, i), "retrieved");
        json_t *last = json_array_get(runs, json_array_size(runs) - 1);

        if (!runs)
                return -1;
        if (last && json_integer_value(json_array_get(last, 1)) == from)
                return json_array_set_new(last, 1, json_integer(to));
        return json_array_append_new(runs, json_pack("[I, I]", (json_int_t)from, (json_int_t)to));
}

/* The targets of query head qh (KVB_GEN_SHARED: of the heads without their
 * own) as runs of steps [{"from", "to", "needles"}]; those of the shared
 * targets also go into each needle's "retrieved" (needles may be NULL). */
static json_t *schedule_json(const struct gen *g, uint32_t qh, json_t *needles)
{
        json_t *runs = json_array(), *set = NULL;
        uint32_t from = 0, n = 0, cur[KVB_GEN_MAX_TARGETS];
        struct gen_sched s;

        if (!runs)
                return NULL;
        gen_sched_init(&s, g->o, qh);
        for (uint32_t t = 0; t <= g->steps; t++) {
                uint32_t m = t < g->steps ? gen_sched_at(&s, t) : 0;

                if (t < g->steps && m == n && memcmp(s.set, cur, m * sizeof(*cur)) == 0)
                        continue;
                if (n > 0) {
                        set = json_array();
                        for (uint32_t k = 0; set && k < n; k++)
                                if (json_array_append_new(set, json_integer(cur[k])) < 0 ||
                                    (needles && needle_run(needles, cur[k], from, t) < 0))
                                        goto err;
                        if (!set || json_array_append_new(runs, json_pack("{s:I, s:I, s:o}", "from", (json_int_t)from,
                                                                          "to", (json_int_t)t, "needles", set)) < 0)
                                goto err_runs;
                        set = NULL;
                }
                from = t;
                n = m;
                memcpy(cur, s.set, m * sizeof(*cur));
        }
        return runs;
err:
        json_decref(set);
err_runs:
        json_decref(runs);
        return NULL;
}

/* "retrieval": the targets of every step, shared and per query head. */
static json_t *retrieval_json(const struct gen *g, json_t *needles)
{
        const struct kvb_gen_opts *o = g->o;
        json_t *rj = json_object(), *heads = json_array(), *runs;

        if (!rj || !heads)
                goto err;
        runs = schedule_json(g, KVB_GEN_SHARED, needles);
        if (!runs || json_object_set_new(rj, "shared", runs) < 0)
                goto err;
        for (uint32_t qh = 0; qh < g->q_heads; qh++) {
                if (!kvb_gen_own_targets(o, qh))
                        continue;
                runs = schedule_json(g, qh, NULL);
                if (!runs || json_array_append_new(heads, json_pack("{s:I, s:o}", "q_head", (json_int_t)qh,
                                                                    "schedule", runs)) < 0)
                        goto err;
        }
        if (json_object_set_new(rj, "heads", heads) < 0) {
                heads = NULL;
                goto err;
        }
        return rj;
err:
        json_decref(heads);
        json_decref(rj);
        return NULL;
}

/* The options and the needles, recorded in meta.json for whoever replays. */
static json_t *gen_json(const struct gen *g)
{
        const struct kvb_gen_opts *o = g->o;
        json_t *root = json_object(), *gj = json_object(), *nj = json_array(), *rj = NULL;

        if (!root || !gj || !nj)
                goto err;
        if (json_object_set_new(gj, "tool", json_string("kvdrive-bench gen")) < 0 ||
            json_object_set_new(gj, "seed", json_integer((json_int_t)o->seed)) < 0 ||
            json_object_set_new(gj, "sinks", json_integer(o->sinks)) < 0 ||
            json_object_set_new(gj, "window", json_integer(o->window)) < 0 ||
            json_object_set_new(gj, "topics", json_integer(o->topics)) < 0 ||
            json_object_set_new(gj, "topic_span", json_integer(o->topic_span)) < 0 ||
            json_object_set_new(gj, "needles", json_integer(o->needles)) < 0 ||
            json_object_set_new(gj, "needle_len", json_integer(o->needle_len)) < 0 ||
            json_object_set_new(gj, "needle_steps", json_integer(needle_steps(o))) < 0 ||
            json_object_set_new(gj, "drift", json_real(o->drift)) < 0 ||
            json_object_set_new(gj, "layer_corr", json_real(o->layer_corr)) < 0 ||
            json_object_set_new(gj, "scale", json_real(o->scale)) < 0 ||
            json_object_set_new(gj, "rope_theta", json_real(o->rope_theta)) < 0 ||
            json_object_set_new(gj, "outlier_channels", json_integer(o->outlier_channels)) < 0 ||
            json_object_set_new(gj, "outlier_scale", json_real(o->outlier_scale)) < 0 ||
            json_object_set_new(gj, "norm_tail", json_real(o->norm_tail)) < 0 ||
            json_object_set_new(gj, "sink_norm", json_real(o->sink_norm)) < 0 ||
            json_object_set_new(gj, "needle_targets", json_integer(o->needle_targets)) < 0 ||
            json_object_set_new(gj, "switch_every", json_integer(o->switch_every)) < 0 ||
            json_object_set_new(gj, "head_divergence", json_real(o->head_divergence)) < 0 ||
            json_object_set_new(gj, "preset", o->preset ? json_string(o->preset) : json_null()) < 0)
                goto err;
        for (uint32_t i = 0; i < o->needles; i++) {
                json_t *e = json_pack("{s:I, s:I, s:I, s:I, s:[]}", "token", (json_int_t)g->needles[i].token, "len",
                                      (json_int_t)g->needles[i].len, "step", (json_int_t)g->needles[i].step,
                                      "steps", (json_int_t)g->needles[i].steps, "retrieved");

                if (!e || json_array_append_new(nj, e) < 0)
                        goto err;
        }
        rj = retrieval_json(g, nj);
        if (!rj)
                goto err;
        if (json_object_set_new(root, "generator", gj) < 0) {
                gj = NULL;
                goto err;
        }
        gj = NULL;
        if (json_object_set_new(root, "needles", nj) < 0) {
                nj = NULL;
                goto err;
        }
        nj = NULL;
        if (json_object_set_new(root, "retrieval", rj) < 0) {
                rj = NULL;
                goto err;
        }
        return root;
err:
        json_decref(gj);
        json_decref(nj);
        json_decref(rj);
        json_decref(root);
        return NULL;
}

int kvb_gen(const struct kvb_gen_opts *o, const char *dir, char *err, size_t errlen)
{
        struct kvb_trace_writer *w = NULL;
        struct gen g = { .o = o };
        json_t *extra = NULL;
        size_t d;
        int r;

        if (!o || !dir)
                return kvb_fail(err, errlen, -EINVAL, "gen: no options or directory");
        r = kvb_gen_check(o, err, errlen);
        if (r < 0)
                return r;
        g.layers = o->shape.layers;
        g.kv_heads = o->shape.kv_heads;
        g.q_heads = o->shape.q_heads;
        g.dim = d = o->shape.head_dim;
        g.tokens = o->shape.tokens;
        g.steps = o->shape.steps;
        g.prompt = g.tokens - g.steps;
        g.needles = alloc_n(o->needles, sizeof(*g.needles));
        g.kind = alloc_n(g.tokens, sizeof(*g.kind));
        g.what = alloc_n(g.tokens, sizeof(*g.what));
        g.sink = alloc_n((size_t)g.kv_heads * d, sizeof(float));
        g.topic = alloc_n((size_t)g.kv_heads * o->topics * d, sizeof(float));
        g.needle = alloc_n((size_t)g.kv_heads * o->needles * d, sizeof(float));
        g.local = alloc_n(o->rope_theta > 0 ? 0 : (size_t)g.tokens * d, sizeof(float));
        g.local_tail = alloc_n((size_t)g.kv_heads * g.steps * d, sizeof(float));
        g.perm = alloc_n((size_t)g.layers * g.kv_heads * d, sizeof(*g.perm));
        g.sign = alloc_n((size_t)g.layers * g.kv_heads * d, sizeof(*g.sign));
        g.tmp = alloc_n(d, sizeof(float));
        g.noise = alloc_n(d, sizeof(float));
        g.rope = o->rope_theta > 0;
        g.half = g.dim / 2;
        g.outliers = o->outlier_channels;
        g.content_pairs = content_pairs(o);
        g.freq = alloc_n(g.rope ? g.half : 0, sizeof(*g.freq));
        g.u = alloc_n(g.rope ? (size_t)g.kv_heads * d : 0, sizeof(float));
        g.rot = alloc_n(g.rope ? (size_t)g.tokens * d : 0, sizeof(float));
        g.out = alloc_n(d, sizeof(float));
        g.ov = alloc_n(g.outliers, sizeof(float));
        g.mix = alloc_n(d, sizeof(float));
        if (!g.needles || !g.kind || !g.what || !g.sink || !g.topic || !g.needle || !g.local || !g.local_tail ||
            !g.perm || !g.sign || !g.tmp || !g.noise || !g.freq || !g.u || !g.rot || !g.out || !g.ov || !g.mix) {
                r = kvb_fail(err, errlen, -ENOMEM, "gen: out of memory");
                goto out;
        }
        r = kvb_gen_needles(o, g.needles, err, errlen);
        if (r < 0)
                goto out;
        if (g.rope)
                gen_rope(&g);
        gen_weights(&g);
        gen_text(&g);
        gen_dicts(&g);
        extra = gen_json(&g);
        if (!extra) {
                r = kvb_fail(err, errlen, -ENOMEM, "gen: out of memory");
                goto out;
        }
        r = kvb_trace_writer_open(dir, &o->shape, &w, err, errlen);
        if (r < 0)
                goto out;
        r = gen_kv(&g, w, err, errlen);
        if (r < 0)
                goto out;
        r = gen_queries(&g, w, err, errlen);
        if (r < 0)
                goto out;
        r = kvb_trace_writer_finish(w, extra, err, errlen);
out:
        kvb_trace_writer_free(w);
        json_decref(extra);
        gen_free(&g);
        return r;
}
