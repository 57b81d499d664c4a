/* SPDX-License-Identifier: MIT */
/*
 * kvk-bench: throughput of kvk_decode_attention() on each CPU back end, in
 * GB/s of K and V bytes read (every selected block's K and V, once per call).
 *
 *   kvk-bench [n_blocks [block_tokens [dtype [seconds]]]]
 *
 * Defaults: 256 blocks of 16 tokens (4096 tokens), f16, 1 s per back end, in
 * a Llama-3-8B layer shape (8 kv heads, 32 query heads, head_dim 128).
 *
 *   kvk-bench scores [n_blocks [reps [kv_heads q_heads head_dim]]]
 *   kvk-bench methods [n_blocks [reps]]
 *
 * times kvk_block_scores() over n_blocks summaries (default 4096 blocks,
 * 15 reps, 8/32/128) on each back end and prints the median, minimum and
 * maximum ms per call and the GB/s of summaries read at the median. The
 * summaries (8 KiB per block at the default shape, 32 MiB for 4096) come from
 * random blocks, the query is uniform in [-1, 1) (both signs, a few zeros).
 *
 *   kvk-bench attn [n_blocks [reps [kv_heads q_heads head_dim [block_tokens]]]]
 *
 * times kvk_decode_attention() over n_blocks selected blocks (default 410,
 * 21 reps, 8/32/128, 16 tokens, f16: 64 KiB per block, 25.6 MiB per call) on
 * each back end and prints the median, minimum and maximum ms per call and
 * the GB/s of K/V read at the median, and the median thread CPU time per
 * call (lower than the wall time when other processes share the core). The selected blocks are every other
 * block of a pool twice that size, in a shuffled order (a selection is
 * scattered), so that the hardware prefetcher does not see one stream.
 *
 *   kvk-bench merge [reps [q_heads head_dim [merges]]]
 *
 * times kvk_lse_merge() (default 21 reps of 1024 merges each, 32 query
 * heads of 128 dims) on each back end and prints the median, minimum and
 * maximum ms per rep, ns per merge and the GB/s of out arrays read and
 * written (3 per merge). Each rep merges 8 partials (random out in [-1, 1),
 * lse in [-4, 4)) in turn into one accumulator: 144 KiB at the default
 * shape, in L2 as it is where a decoder merges the output of the attention
 * it has just run.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

#define MAX_REPS 101

static double now(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint32_t rnd(uint64_t *st)
{
        *st = *st * 6364136223846793005ull + 1442695040888963407ull;
        return (uint32_t)(*st >> 33);
}

static float frand(uint64_t *st)
{
        return (float)rnd(st) / 2147483648.0f - 1.0f;
}

static int bench(const char *backend, const struct kvk_shape *s, const float *q,
                 const void *const *blocks, const uint32_t *valid, uint32_t n, double seconds,
                 float *out)
{
        size_t bytes = kvk_block_bytes(s) * n;
        double t0, t;
        unsigned long iters = 0;
        int r;

        r = kvk_set_backend(backend);
        if (r < 0) {
                printf("%-7s unavailable (%s)\n", backend, strerror(-r));
                return 0;
        }
        r = kvk_decode_attention(s, q, blocks, valid, n, out, NULL);      /* warm up */
        if (r < 0)
                return r;
        t0 = now();
        do {
                r = kvk_decode_attention(s, q, blocks, valid, n, out, NULL);
                if (r < 0)
                        return r;
                iters++;
                t = now() - t0;
        } while (t < seconds);
        printf("%-7s %8.2f GB/s  %8.1f us/call  %10.0f tokens/s  (%lu calls)\n",
               kvk_backend_name(), (double)bytes * (double)iters / t / 1e9, t / (double)iters * 1e6,
               (double)n * s->block_tokens * (double)iters / t, iters);
        return 0;
}

static int cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;

        return x < y ? -1 : x > y;
}

/* CPU time of the calling thread: on a shared machine, wall time also counts
 * the time other processes held the core. */
static double cpu_now(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One kernel call of a benchmark: 0 or -errno. */
typedef int (*call_fn)(const void *arg);

/*
 * Times reps calls of call(arg) on backend after one warm-up call and prints
 * the median, min and max wall time, GB/s of bytes per call, the time per
 * unit (n units of unit_scale seconds, e.g. 1e-9 "ns/block") and the median
 * thread CPU time. 0 (also when the backend is unavailable: said) or -errno.
 */
static int time_reps(const char *backend, call_fn call, const void *arg, int reps, size_t bytes, uint32_t n,
                     double unit_scale, const char *unit)
{
        double t[MAX_REPS], c[MAX_REPS], t0, c0, med;
        int r = kvk_set_backend(backend);

        if (r < 0) {
                printf("%-7s unavailable (%s)\n", backend, strerror(-r));
                return 0;
        }
        r = call(arg);                                  /* warm up */
        if (r < 0)
                return r;
        for (int i = 0; i < reps; i++) {
                t0 = now();
                c0 = cpu_now();
                r = call(arg);
                c[i] = cpu_now() - c0;
                t[i] = now() - t0;
                if (r < 0)
                        return r;
        }
        qsort(t, (size_t)reps, sizeof(t[0]), cmp_double);
        qsort(c, (size_t)reps, sizeof(c[0]), cmp_double);
        med = t[reps / 2];
        printf("%-7s median %7.3f ms/call (min %7.3f, max %7.3f)  %6.2f GB/s  %6.2f %s"
               "  cpu median %7.3f ms  (%d reps)\n",
               kvk_backend_name(), med * 1e3, t[0] * 1e3, t[reps - 1] * 1e3,
               (double)bytes / med / 1e9, med / n / unit_scale, unit, c[reps / 2] * 1e3, reps);
        return 0;
}

struct scores_arg {
        const struct kvk_shape *s;
        const float *q, *sum;
        uint32_t n;
        float *sc;
};

static int call_scores(const void *arg)
{
        const struct scores_arg *a = arg;

        return kvk_block_scores(a->s, a->q, a->sum, a->n, a->sc);
}

struct method_arg {
        const struct kvk_shape *s;
        enum kvk_method m;
        const float *q, *sum;
        uint32_t n;
        float *work, *sc;
};

static int call_method(const void *arg)
{
        const struct method_arg *a = arg;

        return kvk_method_scores(a->s, a->m, a->q, a->sum, a->n, a->work, a->sc);
}

struct attn_arg {
        const struct kvk_shape *s;
        const float *q;
        const void *const *blocks;
        const uint32_t *valid;
        uint32_t n;
        float *out, *lse;
};

static int call_attn(const void *arg)
{
        const struct attn_arg *a = arg;

        return kvk_decode_attention(a->s, a->q, a->blocks, a->valid, a->n, a->out, a->lse);
}

/* kvk-bench attn [n_blocks [reps [kv_heads q_heads head_dim [block_tokens]]]] */
static int bench_attn(int argc, char **argv)
{
        struct kvk_shape s = {
                .kv_heads = 8, .q_heads = 32, .head_dim = 128, .block_tokens = 16,
                .dtype = KVK_F16,
        };
        uint32_t n = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 410;
        int reps = argc > 3 ? atoi(argv[3]) : 21;
        uint64_t st = 11;
        size_t bb, nq;
        uint16_t *pool = NULL;
        const void **blocks = NULL;
        uint32_t *valid = NULL;
        float *q = NULL, *out = NULL, *lse = NULL;
        int r = -ENOMEM;

        if (argc > 6) {
                s.kv_heads = (uint32_t)strtoul(argv[4], NULL, 10);
                s.q_heads = (uint32_t)strtoul(argv[5], NULL, 10);
                s.head_dim = (uint32_t)strtoul(argv[6], NULL, 10);
        }
        if (argc > 7)
                s.block_tokens = (uint32_t)strtoul(argv[7], NULL, 10);
        bb = kvk_block_bytes(&s);
        if (!bb || n == 0 || reps < 1 || reps > MAX_REPS) {
                fprintf(stderr, "usage: kvk-bench attn [n_blocks [reps (1-%d) "
                        "[kv_heads q_heads head_dim [block_tokens]]]]\n", MAX_REPS);
                return 2;
        }
        nq = (size_t)s.q_heads * s.head_dim;
        pool = malloc(bb * 2 * n);
        blocks = calloc(n, sizeof(*blocks));
        valid = calloc(n, sizeof(*valid));
        q = malloc(nq * sizeof(*q));
        out = malloc(nq * sizeof(*out));
        lse = malloc(s.q_heads * sizeof(*lse));
        if (!pool || !blocks || !valid || !q || !out || !lse)
                goto out;
        for (size_t i = 0; i < bb / 2 * 2 * n; i++)
                pool[i] = kvk_f32_to_f16(frand(&st));
        for (uint32_t i = 0; i < n; i++) {
                blocks[i] = (const uint8_t *)pool + (size_t)(2 * i) * bb;
                valid[i] = s.block_tokens;
        }
        for (uint32_t i = n - 1; i > 0; i--) {          /* Fisher-Yates */
                uint32_t j = rnd(&st) % (i + 1);
                const void *x = blocks[i];

                blocks[i] = blocks[j];
                blocks[j] = x;
        }
        for (size_t i = 0; i < nq; i++)
                q[i] = frand(&st);

        printf("kvk_decode_attention: %u blocks x %u tokens, kv_heads %u, q_heads %u, "
               "head_dim %u, f16, %.1f MiB of K/V per call\n",
               n, s.block_tokens, s.kv_heads, s.q_heads, s.head_dim,
               (double)(bb * n) / (1 << 20));
        {
                struct attn_arg a = { &s, q, blocks, valid, n, out, lse };

                r = time_reps("scalar", call_attn, &a, reps, bb * n, n, 1e-6, "us/block");
                if (r == 0)
                        r = time_reps("avx2", call_attn, &a, reps, bb * n, n, 1e-6, "us/block");
        }
out:
        if (r < 0)
                fprintf(stderr, "kvk-bench: %s\n", strerror(-r));
        free(lse);
        free(out);
        free(q);
        free(valid);
        free(blocks);
        free(pool);
        return r < 0 ? 1 : 0;
}

struct merge_arg {
        const struct kvk_shape *s;
        float *acc, *acc_lse;
        const float *part, *plse;       /* MERGE_PARTS partials */
        uint32_t merges;
};

#define MERGE_PARTS 8u

static int call_merge(const void *arg)
{
        const struct merge_arg *a = arg;
        const size_t qd = (size_t)a->s->q_heads * a->s->head_dim;

        for (uint32_t i = 0; i < a->merges; i++) {
                const uint32_t p = i % MERGE_PARTS;
                int r = kvk_lse_merge(a->s, a->acc, a->acc_lse, a->part + p * qd,
                                      a->plse + (size_t)p * a->s->q_heads);

                if (r < 0)
                        return r;
        }
        return 0;
}

/* kvk-bench merge [reps [q_heads head_dim [merges]]] */
static int bench_merge(int argc, char **argv)
{
        struct kvk_shape s = {
                .kv_heads = 1, .q_heads = 32, .head_dim = 128, .block_tokens = 16,
                .dtype = KVK_F16,
        };
        int reps = argc > 2 ? atoi(argv[2]) : 21;
        uint32_t merges = argc > 5 ? (uint32_t)strtoul(argv[5], NULL, 10) : 1024;
        uint64_t st = 5;
        size_t qd;
        float *acc = NULL, *acc_lse = NULL, *part = NULL, *plse = NULL;
        int r = -ENOMEM;

        if (argc > 4) {
                s.q_heads = (uint32_t)strtoul(argv[3], NULL, 10);
                s.head_dim = (uint32_t)strtoul(argv[4], NULL, 10);
        }
        if (!kvk_shape_valid(&s) || merges == 0 || reps < 1 || reps > MAX_REPS) {
                fprintf(stderr, "usage: kvk-bench merge [reps (1-%d) [q_heads head_dim "
                        "[merges]]]\n", MAX_REPS);
                return 2;
        }
        qd = (size_t)s.q_heads * s.head_dim;
        acc = malloc(qd * sizeof(*acc));
        acc_lse = malloc(s.q_heads * sizeof(*acc_lse));
        part = malloc(MERGE_PARTS * qd * sizeof(*part));
        plse = malloc(MERGE_PARTS * s.q_heads * sizeof(*plse));
        if (!acc || !acc_lse || !part || !plse)
                goto out;
        for (size_t i = 0; i < qd; i++)
                acc[i] = frand(&st);
        for (uint32_t h = 0; h < s.q_heads; h++)
                acc_lse[h] = 4.0f * frand(&st);
        for (size_t i = 0; i < MERGE_PARTS * qd; i++)
                part[i] = frand(&st);
        for (size_t i = 0; i < MERGE_PARTS * s.q_heads; i++)
                plse[i] = 4.0f * frand(&st);

        printf("kvk_lse_merge: q_heads %u, head_dim %u, %u merges per rep, %.1f KiB of partials\n",
               s.q_heads, s.head_dim, merges,
               (double)((MERGE_PARTS + 1) * (qd + s.q_heads) * sizeof(float)) / 1024);
        {
                struct merge_arg a = { &s, acc, acc_lse, part, plse, merges };
                size_t bytes = (size_t)merges * 3 * qd * sizeof(float);

                r = time_reps("scalar", call_merge, &a, reps, bytes, merges, 1e-9, "ns/merge");
                if (r == 0)
                        r = time_reps("avx2", call_merge, &a, reps, bytes, merges, 1e-9,
                                      "ns/merge");
        }
out:
        if (r < 0)
                fprintf(stderr, "kvk-bench: %s\n", strerror(-r));
        free(plse);
        free(part);
        free(acc_lse);
        free(acc);
        return r < 0 ? 1 : 0;
}

/* kvk-bench scores [n_blocks [reps [kv_heads q_heads head_dim]]] */
static int bench_scores(int argc, char **argv)
{
        struct kvk_shape s = {
                .kv_heads = 8, .q_heads = 32, .head_dim = 128, .block_tokens = 16,
                .dtype = KVK_F16,
        };
        uint32_t n = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 4096;
        int reps = argc > 3 ? atoi(argv[3]) : 15;
        uint64_t st = 7;
        size_t bb, sf, nq;
        uint16_t *blk = NULL;
        float *sum = NULL, *q = NULL, *sc = NULL;
        int r = -ENOMEM;

        if (argc > 6) {
                s.kv_heads = (uint32_t)strtoul(argv[4], NULL, 10);
                s.q_heads = (uint32_t)strtoul(argv[5], NULL, 10);
                s.head_dim = (uint32_t)strtoul(argv[6], NULL, 10);
        }
        bb = kvk_block_bytes(&s);
        sf = kvk_summary_floats(&s);
        if (!bb || n == 0 || reps < 1 || reps > MAX_REPS) {
                fprintf(stderr, "usage: kvk-bench scores [n_blocks [reps (1-%d) "
                        "[kv_heads q_heads head_dim]]]\n", MAX_REPS);
                return 2;
        }
        nq = (size_t)s.q_heads * s.head_dim;
        blk = malloc(bb);
        sum = malloc(sf * n * sizeof(*sum));
        q = malloc(nq * sizeof(*q));
        sc = malloc(n * sizeof(*sc));
        if (!blk || !sum || !q || !sc)
                goto out;
        /* A few random blocks, their summaries jittered per block so that no
         * two summaries are equal (each block's bytes are read from memory). */
        for (size_t i = 0; i < bb / 2; i++)
                blk[i] = kvk_f32_to_f16(frand(&st));
        r = kvk_block_summary(&s, blk, s.block_tokens, sum);
        if (r < 0)
                goto out;
        for (uint32_t b = 1; b < n; b++)
                for (size_t i = 0; i < sf; i++)
                        sum[b * sf + i] = sum[i] + 0.01f * frand(&st);
        for (uint32_t b = 0; b < n; b++)
                for (size_t i = 0; i < sf / 2; i++) {   /* keep min <= max */
                        float *mn = sum + b * sf + (i / s.head_dim) * 2 * s.head_dim +
                                    i % s.head_dim;

                        if (mn[0] > mn[s.head_dim]) {
                                float t = mn[0];

                                mn[0] = mn[s.head_dim];
                                mn[s.head_dim] = t;
                        }
                }
        for (size_t i = 0; i < nq; i++)
                q[i] = i % 17 == 3 ? 0.0f : frand(&st);

        printf("kvk_block_scores: %u blocks, kv_heads %u, q_heads %u, head_dim %u, "
               "%.1f MiB of summaries per call\n",
               n, s.kv_heads, s.q_heads, s.head_dim,
               (double)(sf * n * sizeof(float)) / (1 << 20));
        {
                struct scores_arg a = { &s, q, sum, n, sc };
                size_t bytes = sf * sizeof(float) * n;

                r = time_reps("scalar", call_scores, &a, reps, bytes, n, 1e-9, "ns/block");
                if (r == 0)
                        r = time_reps("avx2", call_scores, &a, reps, bytes, n, 1e-9, "ns/block");
        }
out:
        if (r < 0)
                fprintf(stderr, "kvk-bench: %s\n", strerror(-r));
        free(sc);
        free(q);
        free(sum);
        free(blk);
        return r < 0 ? 1 : 0;
}

/* kvk-bench methods [n_blocks [reps]]: kvk_method_scores() of every method
 * over n_blocks summaries (default 4096; 64 distinct random blocks, their
 * summaries repeated, so that each call reads n_blocks summaries from
 * memory), on the back end CPUID chose. */
static int bench_methods(int argc, char **argv)
{
        struct kvk_shape s = {
                .kv_heads = 8, .q_heads = 32, .head_dim = 128, .block_tokens = 16,
                .dtype = KVK_F16,
        };
        const uint32_t distinct = 64;
        uint32_t n = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 4096;
        int reps = argc > 3 ? atoi(argv[3]) : 15;
        size_t bb = kvk_block_bytes(&s), nq = (size_t)s.q_heads * s.head_dim;
        uint16_t *blk = malloc(bb * distinct);
        float *q = malloc(nq * sizeof(float)), *sc = malloc(sizeof(float) * (n ? n : 1));
        uint64_t st = 11;
        int r = 0;

        if (n == 0 || reps < 1 || reps > MAX_REPS) {
                fprintf(stderr, "usage: kvk-bench methods [n_blocks [reps (1-%d)]]\n", MAX_REPS);
                r = -EINVAL;
                goto out;
        }
        if (!blk || !q || !sc) {
                r = -ENOMEM;
                goto out;
        }
        for (size_t i = 0; i < bb / 2 * distinct; i++)
                blk[i] = kvk_f32_to_f16(frand(&st));
        for (size_t i = 0; i < nq; i++)
                q[i] = frand(&st);
        printf("kvk_method_scores: %u blocks, kv_heads %u, q_heads %u, head_dim %u, backend %s\n", n, s.kv_heads,
               s.q_heads, s.head_dim, kvk_backend_name());
        for (int m = 0; m < KVK_N_METHODS && r == 0; m++) {
                size_t sf = kvk_method_summary_floats(&s, (enum kvk_method)m);
                float *sum = malloc(sizeof(float) * sf * n);
                float *work = malloc(sizeof(float) * (kvk_method_work_floats(&s, (enum kvk_method)m, n) + 1));
                struct method_arg a = { &s, (enum kvk_method)m, q, sum, n, work, sc };

                if (!sum || !work) {
                        r = -ENOMEM;
                } else {
                        for (uint32_t b = 0; b < distinct && b < n; b++)
                                kvk_method_summary(&s, (enum kvk_method)m, blk + bb / 2 * b, s.block_tokens,
                                                   sum + sf * b);
                        for (uint32_t b = distinct; b < n; b++)
                                memcpy(sum + sf * b, sum + sf * (b % distinct), sizeof(float) * sf);
                        printf("%-12s %5zu B/block  ", kvk_method_name((enum kvk_method)m), sf * sizeof(float));
                        r = time_reps(kvk_backend_name(), call_method, &a, reps, sf * sizeof(float) * n, n, 1e-9,
                                      "ns/block");
                }
                free(sum);
                free(work);
        }
out:
        if (r < 0)
                fprintf(stderr, "kvk-bench: %s\n", strerror(-r));
        free(blk);
        free(q);
        free(sc);
        return r < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
        struct kvk_shape s = {
                .kv_heads = 8, .q_heads = 32, .head_dim = 128, .block_tokens = 16,
                .dtype = KVK_F16,
        };
        uint32_t n = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 256;
        double seconds = argc > 4 ? strtod(argv[4], NULL) : 1.0;
        uint64_t st = 42;
        size_t bb, nq;
        uint8_t *pool = NULL;
        const void **blocks = NULL;
        uint32_t *valid = NULL;
        float *q = NULL, *out = NULL;
        int r = -ENOMEM;

        if (argc > 1 && strcmp(argv[1], "scores") == 0)
                return bench_scores(argc, argv);
        if (argc > 1 && strcmp(argv[1], "methods") == 0)
                return bench_methods(argc, argv);
        if (argc > 1 && strcmp(argv[1], "attn") == 0)
                return bench_attn(argc, argv);
        if (argc > 1 && strcmp(argv[1], "merge") == 0)
                return bench_merge(argc, argv);
        if (argc > 2)
                s.block_tokens = (uint32_t)strtoul(argv[2], NULL, 10);
        if (argc > 3 && strcmp(argv[3], "bf16") == 0)
                s.dtype = KVK_BF16;
        bb = kvk_block_bytes(&s);
        if (!bb || n == 0) {
                fprintf(stderr, "usage: kvk-bench [n_blocks [block_tokens [f16|bf16 [seconds]]]]\n"
                        "       kvk-bench scores [n_blocks [reps [kv_heads q_heads head_dim]]]\n"
                        "       kvk-bench methods [n_blocks [reps]]\n"
                        "       kvk-bench attn [n_blocks [reps [kv_heads q_heads head_dim "
                        "[block_tokens]]]]\n"
                        "       kvk-bench merge [reps [q_heads head_dim [merges]]]\n");
                return 2;
        }
        nq = (size_t)s.q_heads * s.head_dim;
        pool = malloc(bb * n);
        blocks = calloc(n, sizeof(*blocks));
        valid = calloc(n, sizeof(*valid));
        q = malloc(nq * sizeof(*q));
        out = malloc(nq * sizeof(*out));
        if (!pool || !blocks || !valid || !q || !out)
                goto out;
        for (size_t i = 0; i < bb * n / 2; i++) {
                float x = frand(&st);
                uint16_t h = s.dtype == KVK_F16 ? kvk_f32_to_f16(x) : kvk_f32_to_bf16(x);

                memcpy(pool + 2 * i, &h, 2);
        }
        for (uint32_t i = 0; i < n; i++) {
                blocks[i] = pool + (size_t)i * bb;
                valid[i] = s.block_tokens;
        }
        for (size_t i = 0; i < nq; i++)
                q[i] = frand(&st);

        printf("kvk_decode_attention: %u blocks x %u tokens, kv_heads %u, q_heads %u, head_dim %u, "
               "%s, %.1f MiB of K/V per call\n",
               n, s.block_tokens, s.kv_heads, s.q_heads, s.head_dim,
               s.dtype == KVK_F16 ? "f16" : "bf16", (double)(bb * n) / (1 << 20));
        r = bench("scalar", &s, q, blocks, valid, n, seconds, out);
        if (r == 0)
                r = bench("avx2", &s, q, blocks, valid, n, seconds, out);
out:
        if (r < 0)
                fprintf(stderr, "kvk-bench: %s\n", strerror(-r));
        free(out);
        free(q);
        free(valid);
        free(blocks);
        free(pool);
        return r < 0 ? 1 : 0;
}
