/* SPDX-License-Identifier: MIT */
/*
 * Which needles each query head retrieves at each decode step (gen.h:
 * needle_targets, switch_every, head_divergence): the generator's queries and
 * meta.json's "retrieval" both come from here.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "gen-internal.h"
#include "gen.h"

bool kvb_gen_own_targets(const struct kvb_gen_opts *o, uint32_t qh)
{
        struct rng r;

        if (qh == KVB_GEN_SHARED || o->needles == 0 || !(o->head_divergence > 0))
                return false;
        rng_init(&r, o->seed, RNG_DIVERGE, qh, 0);
        return rng_unit(&r) < o->head_divergence;
}

void gen_sched_init(struct gen_sched *s, const struct kvb_gen_opts *o, uint32_t qh)
{
        bool own = kvb_gen_own_targets(o, qh);

        s->o = o;
        s->ns = needle_steps(o);
        s->sregion = o->needles > 0 ? o->shape.steps / o->needles : 0;
        s->shift = 0;
        s->period = UINT32_MAX;
        s->n = 0;
        rng_init(&s->r, o->seed, RNG_TARGETS, own ? qh + 1 : 0, 0);
        if (own && o->switch_every == 0)
                s->shift = rng_below(&s->r, o->needles);
}

static bool in_set(const uint32_t *set, uint32_t n, uint32_t x)
{
        for (uint32_t i = 0; i < n; i++)
                if (set[i] == x)
                        return true;
        return false;
}

static void sort_set(uint32_t *set, uint32_t n)
{
        for (uint32_t i = 1; i < n; i++)
                for (uint32_t j = i; j > 0 && set[j - 1] > set[j]; j--) {
                        uint32_t t = set[j];

                        set[j] = set[j - 1];
                        set[j - 1] = t;
                }
}

/* The next period's targets: K needles at random, another set than the
 * last one's where there is one. */
static void sched_draw(struct gen_sched *s)
{
        uint32_t k = s->o->needle_targets, n = s->o->needles, prev[KVB_GEN_MAX_TARGETS], had = s->n, x;

        memcpy(prev, s->set, sizeof(prev));
        for (uint32_t i = 0; i < k; i++) {
                do
                        x = rng_below(&s->r, n);
                while (in_set(s->set, i, x));
                s->set[i] = x;
        }
        sort_set(s->set, k);
        if (had == k && n > k && memcmp(prev, s->set, k * sizeof(*prev)) == 0) {
                uint32_t slot = rng_below(&s->r, k);

                do
                        x = rng_below(&s->r, n);
                while (in_set(s->set, k, x));
                s->set[slot] = x;
                sort_set(s->set, k);
        }
        s->n = k;
}

uint32_t gen_sched_at(struct gen_sched *s, uint32_t t)
{
        const struct kvb_gen_opts *o = s->o;
        uint32_t n = o->needles, i, start;

        if (n == 0)
                return s->n = 0;
        if (o->switch_every > 0) {
                while (s->period != t / o->switch_every) {
                        s->period = s->period == UINT32_MAX ? 0 : s->period + 1;
                        sched_draw(s);
                }
                return s->n;
        }
        i = t / s->sregion;
        s->n = 0;
        if (i >= n)
                return 0;
        start = i * s->sregion + (s->sregion - s->ns) / 2;
        if (t < start || t - start >= s->ns)
                return 0;
        for (uint32_t k = 0; k < o->needle_targets; k++)
                s->set[k] = (i + s->shift + k) % n;
        sort_set(s->set, o->needle_targets);
        return s->n = o->needle_targets;
}

uint32_t kvb_gen_targets(const struct kvb_gen_opts *o, uint32_t qh, uint32_t t, uint32_t *ret)
{
        struct gen_sched s;
        uint32_t n;

        gen_sched_init(&s, o, qh);
        n = gen_sched_at(&s, t);
        memcpy(ret, s.set, n * sizeof(*ret));
        return n;
}

void gen_first_runs(const struct kvb_gen_opts *o, struct kvb_gen_needle *nd)
{
        struct gen_sched s;

        gen_sched_init(&s, o, KVB_GEN_SHARED);
        for (uint32_t t = 0; t < o->shape.steps; t++) {
                uint32_t n = gen_sched_at(&s, t);

                for (uint32_t i = 0; i < o->needles; i++) {
                        bool on = in_set(s.set, n, i);

                        if (on && nd[i].steps == 0)
                                nd[i].step = t;
                        if (on && nd[i].step + nd[i].steps == t)
                                nd[i].steps++;
                }
        }
}
