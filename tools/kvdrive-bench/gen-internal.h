/* SPDX-License-Identifier: MIT */
/*
 * Private to the generator (gen.c, gen-targets.c): its random numbers and
 * the needle targets of every step. gen.h has the model.
 */
#pragma once

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gen.h"

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
        RNG_NORMS,
        RNG_OUTLIERS,
        RNG_TARGETS,
        RNG_DIVERGE,
        RNG_PHASES,
};

struct rng {
        uint64_t s[4];          /* xoshiro256** */
        bool have_spare;        /* Box-Muller makes normals in pairs */
        float spare;
};

static inline uint64_t splitmix64(uint64_t *x)
{
        uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static inline void rng_init(struct rng *r, uint64_t seed, uint32_t purpose, uint32_t a, uint32_t b)
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
static inline uint32_t rng_below(struct rng *r, uint32_t n)
{
        return (uint32_t)(((rng_next(r) >> 32) * n) >> 32);
}

/* Uniform in [0, 1). */
static inline double rng_unit(struct rng *r)
{
        return (double)(rng_next(r) >> 11) * 0x1p-53;
}

/* N(0, 1) by Box-Muller, in float (the tails end near 5.8 sigma, plenty
 * here): one 64-bit draw gives two 24-bit uniforms and two normals. */
static inline float rng_normal(struct rng *r)
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
static inline void rng_normals(struct rng *r, float *v, size_t n, double sigma)
{
        for (size_t i = 0; i < n; i++)
                v[i] = (float)(sigma * rng_normal(r));
}

/* Decode steps of a needle's stretch (switch_every 0). */
static inline uint32_t needle_steps(const struct kvb_gen_opts *o)
{
        uint32_t n;

        if (o->needle_steps > 0 || o->needles == 0)
                return o->needle_steps;
        n = o->shape.steps / o->needles / 2;
        return n > 0 ? n : 1;
}

/* Which needles one query head retrieves, step by step (gen.h). */
struct gen_sched {
        const struct kvb_gen_opts *o;
        uint32_t sregion, ns;   /* switch_every 0: the stretches */
        uint32_t shift;         /* and the first needle of stretch i, i + shift */
        struct rng r;           /* switch_every S: the draws */
        uint32_t period;        /* of the set: t / S; UINT32_MAX before the first */
        uint32_t n, set[KVB_GEN_MAX_TARGETS];
};

/* s for query head qh (KVB_GEN_SHARED: the heads without their own). */
void gen_sched_init(struct gen_sched *s, const struct kvb_gen_opts *o, uint32_t qh);

/* The targets at step t into s->set, ascending; returns their count. With
 * switch_every, t must not go back from one call to the next. */
uint32_t gen_sched_at(struct gen_sched *s, uint32_t t);

/* With switch_every: the first run of steps of each needle in the shared
 * targets, into nd[].step, nd[].steps (0, 0 where none). */
void gen_first_runs(const struct kvb_gen_opts *o, struct kvb_gen_needle *nd);
