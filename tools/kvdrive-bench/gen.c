/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench gen: a synthetic decode trace (gen.h has the model,
 * docs/trace-format.md the format). kvb_gen() is the core and needs nothing
 * of the other subcommands, so tests link this file alone; bench_gen() only
 * parses options.
 */
#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
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

/* ---- random numbers ------------------------------------------------------ */

/* Purposes of the streams: each (purpose, a, b) has its own sequence. */
enum {
        RNG_TOPICS = 1,
        RNG_NEEDLES,
        RNG_DICT,
        RNG_PERM,
        RNG_LOCAL,
        RNG_KEYS,
        RNG_VALUES,
        RNG_QUERIES,
};

struct rng {
        uint64_t s[4];          /* xoshiro256** */
        bool have_spare;        /* Box-Muller makes normals in pairs */
        float spare;
};

static uint64_t splitmix64(uint64_t *x)
{
        uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static void rng_init(struct rng *r, uint64_t seed, uint32_t purpose, uint32_t a, uint32_t b)
{
        uint64_t x = seed, k;

        k = splitmix64(&x) ^ purpose;
        k = splitmix64(&k) ^ a;
        k = splitmix64(&k) ^ b;
        for (int i = 0; i < 4; i++)
                r->s[i] = splitmix64(&k);
        r->have_spare = false;
        r->spare = 0;
}

static inline uint64_t rotl(uint64_t x, int k)
{
        return (x << k) | (x >> (64 - k));
}

static inline uint64_t rng_next(struct rng *r)
{
        uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = rotl(s[3], 45);
        return out;
}

/* Uniform in [0, n) (multiply-shift; the bias is below 2^-32 n). */
static uint32_t rng_below(struct rng *r, uint32_t n)
{
        return (uint32_t)(((rng_next(r) >> 32) * n) >> 32);
}

/* N(0, 1) by Box-Muller, in float (the tails end near 5.8 sigma, plenty
 * here): one 64-bit draw gives two 24-bit uniforms and two normals. */
static float rng_normal(struct rng *r)
{
        uint64_t x;
        float u1, u2, rad, s, c;

        if (r->have_spare) {
                r->have_spare = false;
                return r->spare;
        }
        x = rng_next(r);
        u1 = (float)((x >> 40) + 1) * 0x1p-24f;        /* (0, 1]: logf() is finite */
        u2 = (float)((x >> 16) & 0xffffffu) * 0x1p-24f;
        rad = sqrtf(-2.0f * logf(u1));
        sincosf(2.0f * (float)M_PI * u2, &s, &c);
        r->spare = rad * s;
        r->have_spare = true;
        return rad * c;
}

/* v[0..n) = sigma * N(0, 1). */
static void rng_normals(struct rng *r, float *v, size_t n, double sigma)
{
        for (size_t i = 0; i < n; i++)
                v[i] = (float)(sigma * rng_normal(r));
}

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
        };
}

static uint32_t needle_steps(const struct kvb_gen_opts *o)
{
        uint32_t n;

        if (o->needle_steps > 0 || o->needles == 0)
                return o->needle_steps;
        n = o->shape.steps / o->needles / 2;
        return n > 0 ? n : 1;
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
                if ((uint64_t)o->needles * ns > m->steps)
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
        return 0;
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
                ret[i].step = i * sregion + (sregion - ns) / 2;
                ret[i].steps = ns;
        }
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

static void gen_dicts(struct gen *g)
{
        const struct kvb_gen_opts *o = g->o;
        uint32_t d = g->dim, n = 1 + o->topics + o->needles;

        for (uint32_t h = 0; h < g->kv_heads; h++) {
                struct rng r;

                /* Orthonormal (Gram-Schmidt) as far as head_dim allows: no
                 * chance alignment between the sink, topics and needles. */
                rng_init(&r, o->seed, RNG_DICT, h, 0);
                for (uint32_t k = 0; k < n; k++) {
                        float *v = dict_dir(g, h, k);

                        rand_unit(&r, v, d);
                        for (uint32_t j = 0; j < k && k < d; j++)
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

/* v (unit, latent) times scale, permuted for (l, kv head h), as fp16. */
static void emit(const struct gen *g, uint32_t l, uint32_t h, const float *v, double scale, uint16_t *out)
{
        size_t base = ((size_t)l * g->kv_heads + h) * g->dim;
        const uint32_t *p = g->perm + base;
        const float *s = g->sign + base;

        for (uint32_t i = 0; i < g->dim; i++)
                out[p[i]] = kvk_f32_to_f16((float)(s[i] * scale * v[i]));
}

static void gen_key(struct gen *g, struct rng *r, uint32_t h, uint32_t j, float *k)
{
        const struct kvb_gen_opts *o = g->o;
        uint32_t d = g->dim;
        const float *loc = g->local + (size_t)j * d, *dir;
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
                if (o->window > 0)
                        gen_local(g, h);
                for (uint32_t l = 0; l < g->layers; l++) {
                        struct rng kr, vr;

                        rng_init(&kr, o->seed, RNG_KEYS, l, h);
                        rng_init(&vr, o->seed, RNG_VALUES, l, h);
                        for (uint32_t j = 0; j < g->tokens; j++) {
                                uint16_t *vo = vs + (size_t)j * g->dim;
                                double vscale = g->kind[j] == TOK_SINK ? SINK_VALUE : 1.0;

                                gen_key(g, &kr, h, j, g->tmp);
                                emit(g, l, h, g->tmp, kscale, ks + (size_t)j * g->dim);
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

static int gen_queries(struct gen *g, struct kvb_trace_writer *w, char *err, size_t errlen)
{
        const struct kvb_gen_opts *o = g->o;
        uint32_t d = g->dim, group = g->q_heads / g->kv_heads;
        size_t n = (size_t)g->steps * g->layers * g->q_heads * d;
        double corr = o->layer_corr, fresh_w = sqrt(1 - corr * corr);
        float *prev = NULL, *c = NULL, *f = NULL;
        uint16_t *qs = NULL;
        int r = 0;

        qs = alloc_n(n, sizeof(*qs));
        prev = alloc_n((size_t)g->steps * d, sizeof(*prev));
        c = alloc_n(d, sizeof(*c));
        f = alloc_n(d, sizeof(*f));
        if (!qs || !prev || !c || !f) {
                r = kvb_fail(err, errlen, -ENOMEM, "gen: out of memory");
                goto out_free;
        }
        for (uint32_t qh = 0; qh < g->q_heads; qh++) {
                uint32_t h = qh / group;
                const float *sink = g->sink + (size_t)h * d;

                for (uint32_t l = 0; l < g->layers; l++) {
                        struct rng rr;

                        rng_init(&rr, o->seed, RNG_QUERIES, l, qh);
                        /* The content walk starts near one of the head's topics. */
                        rng_normals(&rr, c, d, o->topics > 0 ? CONTENT_NOISE / sqrt(d) : 1.0);
                        if (o->topics > 0) {
                                const float *tp = g->topic + ((size_t)h * o->topics + rng_below(&rr, o->topics)) * d;

                                for (uint32_t i = 0; i < d; i++)
                                        c[i] += tp[i];
                        }
                        normalize(c, d);
                        for (uint32_t t = 0; t < g->steps; t++) {
                                const float *loc = g->local_tail + ((size_t)h * g->steps + t) * d, *content = c;
                                float *q = prev + (size_t)t * d;
                                double wc;

                                if (t > 0 && o->drift > 0) {
                                        rng_normals(&rr, f, d, o->drift / sqrt(d));
                                        for (uint32_t i = 0; i < d; i++)
                                                c[i] += f[i];
                                        normalize(c, d);
                                }
                                wc = g->w_content;
                                for (uint32_t i = 0; i < o->needles; i++)
                                        if (t >= g->needles[i].step && t - g->needles[i].step < g->needles[i].steps) {
                                                content = g->needle + ((size_t)h * o->needles + i) * d;
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
                                emit(g, l, h, q, o->scale, qs + kvb_q_index(&o->shape, t, l, qh));
                        }
                }
        }
        r = kvb_trace_writer_put(w, KVB_TRACE_Q, 0, qs, n, err, errlen);
out_free:
        free(qs);
        free(prev);
        free(c);
        free(f);
        return r;
}

/* The options and the needles, recorded in meta.json for whoever replays. */
static json_t *gen_json(const struct gen *g)
{
        const struct kvb_gen_opts *o = g->o;
        json_t *root = json_object(), *gj = json_object(), *nj = json_array();

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
            json_object_set_new(gj, "scale", json_real(o->scale)) < 0)
                goto err;
        for (uint32_t i = 0; i < o->needles; i++) {
                json_t *e = json_pack("{s:I, s:I, s:I, s:I}", "token", (json_int_t)g->needles[i].token, "len",
                                      (json_int_t)g->needles[i].len, "step", (json_int_t)g->needles[i].step,
                                      "steps", (json_int_t)g->needles[i].steps);

                if (!e || json_array_append_new(nj, e) < 0)
                        goto err;
        }
        if (json_object_set_new(root, "generator", gj) < 0) {
                gj = NULL;
                goto err;
        }
        gj = NULL;
        if (json_object_set_new(root, "needles", nj) < 0) {
                nj = NULL;
                goto err;
        }
        return root;
err:
        json_decref(gj);
        json_decref(nj);
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
        g.local = alloc_n((size_t)g.tokens * d, sizeof(float));
        g.local_tail = alloc_n((size_t)g.kv_heads * g.steps * d, sizeof(float));
        g.perm = alloc_n((size_t)g.layers * g.kv_heads * d, sizeof(*g.perm));
        g.sign = alloc_n((size_t)g.layers * g.kv_heads * d, sizeof(*g.sign));
        g.tmp = alloc_n(d, sizeof(float));
        g.noise = alloc_n(d, sizeof(float));
        if (!g.needles || !g.kind || !g.what || !g.sink || !g.topic || !g.needle || !g.local || !g.local_tail ||
            !g.perm || !g.sign || !g.tmp || !g.noise) {
                r = kvb_fail(err, errlen, -ENOMEM, "gen: out of memory");
                goto out;
        }
        r = kvb_gen_needles(o, g.needles, err, errlen);
        if (r < 0)
                goto out;
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

/* ---- the command ---------------------------------------------------------- */

enum opt_type {
        OPT_U32,
        OPT_U64,
        OPT_DOUBLE,
};

/* Every knob of `kvdrive-bench gen`: the --help text and the parser. */
static const struct gen_option {
        const char *name, *arg;
        enum opt_type type;
        size_t offset;
        const char *help;
} gen_options[] = {
        { "layers", "N", OPT_U32, offsetof(struct kvb_gen_opts, shape.layers), "layers" },
        { "kv-heads", "N", OPT_U32, offsetof(struct kvb_gen_opts, shape.kv_heads), "kv heads" },
        { "q-heads", "N", OPT_U32, offsetof(struct kvb_gen_opts, shape.q_heads),
          "query heads, a multiple of kv-heads (GQA)" },
        { "head-dim", "N", OPT_U32, offsetof(struct kvb_gen_opts, shape.head_dim), "dimensions of a head" },
        { "tokens", "N", OPT_U32, offsetof(struct kvb_gen_opts, shape.tokens), "tokens: prompt + decode steps" },
        { "steps", "N", OPT_U32, offsetof(struct kvb_gen_opts, shape.steps), "decode steps (< tokens)" },
        { "seed", "N", OPT_U64, offsetof(struct kvb_gen_opts, seed), "random seed (same options and seed: same bytes)" },
        { "sinks", "N", OPT_U32, offsetof(struct kvb_gen_opts, sinks),
          "attention sinks: first tokens, attended by every query" },
        { "window", "N", OPT_U32, offsetof(struct kvb_gen_opts, window),
          "local window: logits fall by ~2 over the last N tokens (0: off)" },
        { "topics", "N", OPT_U32, offsetof(struct kvb_gen_opts, topics),
          "topics per kv head; key = its segment's topic + noise (0: off)" },
        { "topic-span", "N", OPT_U32, offsetof(struct kvb_gen_opts, topic_span),
          "topic segment length, uniform in [N/2, 3N/2] tokens" },
        { "needles", "N", OPT_U32, offsetof(struct kvb_gen_opts, needles),
          "needle spans in the prompt, each retrieved by a stretch of steps" },
        { "needle-len", "N", OPT_U32, offsetof(struct kvb_gen_opts, needle_len), "tokens of a needle" },
        { "needle-steps", "N", OPT_U32, offsetof(struct kvb_gen_opts, needle_steps),
          "steps retrieving one needle (0: steps / needles / 2)" },
        { "drift", "X", OPT_DOUBLE, offsetof(struct kvb_gen_opts, drift),
          "query drift: c[t] = normalize(c[t-1] + X N(0, I/head_dim))" },
        { "layer-corr", "X", OPT_DOUBLE, offsetof(struct kvb_gen_opts, layer_corr),
          "layer correlation: q[l+1] = X q[l] + sqrt(1-X^2) fresh" },
        { "scale", "S", OPT_DOUBLE, offsetof(struct kvb_gen_opts, scale),
          "query norm: logit = S cos(q, k); sinks ~0.5 S, needles ~0.7 S" },
};

#define N_GEN_OPTIONS (sizeof(gen_options) / sizeof(gen_options[0]))

static void gen_usage(FILE *f)
{
        struct kvb_gen_opts d = kvb_gen_opts_default();

        fprintf(f, "Usage: kvdrive-bench gen --out DIR [options]\n\n"
                   "Writes a synthetic decode trace (docs/trace-format.md) into DIR: attention\n"
                   "sinks, a local window, topic segments, needles, drifting and layer-correlated\n"
                   "queries. Deterministic: the same options and seed give the same bytes.\n\n"
                   "  --out DIR            the trace directory (created if missing; required)\n");
        for (size_t i = 0; i < N_GEN_OPTIONS; i++) {
                const struct gen_option *op = &gen_options[i];
                const char *p = (const char *)&d + op->offset;
                char name[40], def[40];

                snprintf(name, sizeof(name), "--%s %s", op->name, op->arg);
                if (op->type == OPT_U32)
                        snprintf(def, sizeof(def), "%" PRIu32, *(const uint32_t *)(const void *)p);
                else if (op->type == OPT_U64)
                        snprintf(def, sizeof(def), "%" PRIu64, *(const uint64_t *)(const void *)p);
                else
                        snprintf(def, sizeof(def), "%g", *(const double *)(const void *)p);
                fprintf(f, "  %-20s %s (default %s)\n", name, op->help, def);
        }
        fprintf(f, "  %-20s this text\n", "--help");
}

static int parse_value(const struct gen_option *op, const char *s, struct kvb_gen_opts *o)
{
        char *p = (char *)o + op->offset, *end;

        errno = 0;
        if (op->type == OPT_DOUBLE) {
                double v = strtod(s, &end);

                if (errno || end == s || *end || !isfinite(v))
                        return -EINVAL;
                *(double *)(void *)p = v;
                return 0;
        }
        if (*s < '0' || *s > '9')
                return -EINVAL;
        {
                unsigned long long v = strtoull(s, &end, 10);

                if (errno || *end)
                        return -EINVAL;
                if (op->type == OPT_U32) {
                        if (v > UINT32_MAX)
                                return -ERANGE;
                        *(uint32_t *)(void *)p = (uint32_t)v;
                } else {
                        *(uint64_t *)(void *)p = v;
                }
        }
        return 0;
}

static double now_s(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int bench_gen(int argc, char **argv)
{
        enum { OPT_OUT = 'o', OPT_HELP = 'h', OPT_TABLE = 256 };
        struct option longopts[N_GEN_OPTIONS + 3];
        struct kvb_gen_opts o = kvb_gen_opts_default();
        const char *out = NULL;
        char err[512], kv[32], q[32];
        double t0, secs, kv_mib, q_mib;
        size_t kv_elems, q_elems;
        int c, r;

        for (size_t i = 0; i < N_GEN_OPTIONS; i++)
                longopts[i] = (struct option){ gen_options[i].name, required_argument, NULL, OPT_TABLE + (int)i };
        longopts[N_GEN_OPTIONS] = (struct option){ "out", required_argument, NULL, OPT_OUT };
        longopts[N_GEN_OPTIONS + 1] = (struct option){ "help", no_argument, NULL, OPT_HELP };
        longopts[N_GEN_OPTIONS + 2] = (struct option){ 0 };

        while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
                if (c == OPT_OUT) {
                        out = optarg;
                } else if (c == OPT_HELP) {
                        gen_usage(stdout);
                        return EXIT_SUCCESS;
                } else if (c >= OPT_TABLE && c < OPT_TABLE + (int)N_GEN_OPTIONS) {
                        const struct gen_option *op = &gen_options[c - OPT_TABLE];

                        if (parse_value(op, optarg, &o) < 0) {
                                fprintf(stderr, "kvdrive-bench gen: bad --%s '%s': expected %s\n", op->name, optarg,
                                        op->type == OPT_DOUBLE ? "a number" : "an unsigned integer");
                                return BENCH_EXIT_USAGE;
                        }
                } else {
                        gen_usage(stderr);
                        return BENCH_EXIT_USAGE;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "kvdrive-bench gen: unexpected argument '%s'\n", argv[optind]);
                return BENCH_EXIT_USAGE;
        }
        if (!out) {
                fprintf(stderr, "kvdrive-bench gen: --out DIR is required\n");
                gen_usage(stderr);
                return BENCH_EXIT_USAGE;
        }
        r = kvb_gen_check(&o, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench gen: %s\n", err);
                return BENCH_EXIT_USAGE;
        }
        t0 = now_s();
        r = kvb_gen(&o, out, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench gen: %s\n", err);
                return EXIT_FAILURE;
        }
        secs = now_s() - t0;
        kvb_trace_meta_check(&o.shape, &kv_elems, &q_elems, NULL, 0);
        kv_mib = (double)kv_elems * 2 / (1 << 20);
        q_mib = (double)q_elems * 2 / (1 << 20);
        snprintf(kv, sizeof(kv), "%.1f MiB", kv_mib);
        snprintf(q, sizeof(q), "%.2f MiB", q_mib);
        printf("gen: %s: %" PRIu32 " layers, %" PRIu32 "/%" PRIu32 " kv/q heads, head_dim %" PRIu32 ", %" PRIu32
               " tokens (%" PRIu32 " prompt + %" PRIu32 " steps); k.bin %s, v.bin %s, q.bin %s; %.2f s\n",
               out, o.shape.layers, o.shape.kv_heads, o.shape.q_heads, o.shape.head_dim, o.shape.tokens,
               o.shape.tokens - o.shape.steps, o.shape.steps, kv, kv, q, secs);
        return EXIT_SUCCESS;
}
