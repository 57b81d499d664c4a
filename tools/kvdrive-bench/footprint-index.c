/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench footprint, the index's own cost: builds the daemon's block
 * index in this process (the same code, kvdrived/core/index.c) with N random
 * keys and times what the daemon does with it on every request: finds of
 * keys that are there (a Get, a Lookup hit) and of keys that are not (a Put,
 * a Lookup miss). Also the longest single insert, which is a table growth:
 * the event loop stalls that long.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"
#include "index.h"

#define ROUNDS 5

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next_rand(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return rng;
}

static struct kvd_bkey key_of(uint64_t seed, uint64_t i)
{
        uint64_t x = seed ^ (i * 0x9e3779b97f4a7c15ull);

        /* a bijection of i: distinct keys, spread over both halves */
        x ^= x >> 31;
        x *= 0xbf58476d1ce4e5b9ull;
        x ^= x >> 29;
        return (struct kvd_bkey){ x, i, 0, (uint32_t)(i % 80) };
}

/* ns per find of keys[order[0..n)] (present) or of absent keys. */
static double time_finds(const struct kvd_index *idx, const uint32_t *order, uint64_t n, uint64_t seed,
                         uint32_t *ret_found)
{
        uint64_t t0 = bench_now_ns();
        uint32_t found = 0;

        for (uint64_t i = 0; i < n; i++) {
                struct kvd_bkey k = key_of(seed, order[i]);

                found += kvd_index_find(idx, &k) != KVD_ID_NONE;
        }
        *ret_found = found;
        return (double)(bench_now_ns() - t0) / (double)n;
}

int bench_footprint_index(uint64_t n)
{
        double present[ROUNDS], absent[ROUNDS], pr[2], ab[2];
        uint64_t worst = 0, t_build;
        struct kvd_index *idx = NULL;
        uint32_t *order = malloc(n * sizeof(*order)), found;
        int ret = -ENOMEM;

        if (!order || kvd_index_new(0, &idx) < 0)
                goto out;
        t_build = bench_now_ns();
        for (uint64_t i = 0; i < n; i++) {
                struct kvd_bkey k = key_of(1, i);
                uint64_t t = bench_now_ns(), d;
                uint32_t id;

                if (kvd_index_insert(idx, &k, &id) < 0)
                        goto out;
                d = bench_now_ns() - t;
                worst = d > worst ? d : worst;
        }
        t_build = bench_now_ns() - t_build;
        /* Random order: each find is a cache miss, as in the daemon. */
        for (uint64_t i = 0; i < n; i++)
                order[i] = (uint32_t)i;
        for (uint64_t i = n - 1; i > 0; i--) {
                uint64_t j = next_rand() % (i + 1);
                uint32_t t = order[i];

                order[i] = order[j];
                order[j] = t;
        }
        ret = -EIO;
        for (int r = 0; r < ROUNDS; r++) {
                present[r] = time_finds(idx, order, n, 1, &found);
                if (found != n)
                        goto out;
                absent[r] = time_finds(idx, order, n, 2, &found);
                if (found != 0)
                        goto out;
        }
        pr[0] = pr[1] = present[0];
        ab[0] = ab[1] = absent[0];
        for (int r = 1; r < ROUNDS; r++) {
                pr[0] = present[r] < pr[0] ? present[r] : pr[0];
                pr[1] = present[r] > pr[1] ? present[r] : pr[1];
                ab[0] = absent[r] < ab[0] ? absent[r] : ab[0];
                ab[1] = absent[r] > ab[1] ? absent[r] : ab[1];
        }
        printf("index (in process, %" PRIu64 " keys, %" PRIu64 " slots): find present %.1f ns (%.1f-%.1f), "
               "absent %.1f ns (%.1f-%.1f), median of %d rounds; insert %.1f ns mean, longest %.2f ms\n",
               n, kvd_index_capacity(idx), bench_median(present, ROUNDS), pr[0], pr[1],
               bench_median(absent, ROUNDS), ab[0], ab[1], ROUNDS, (double)t_build / (double)n,
               (double)worst / 1e6);
        ret = 0;
out:
        kvd_index_free(idx);
        free(order);
        return ret;
}
