/* SPDX-License-Identifier: MIT */
/*
 * kvk-bench: throughput of kvk_decode_attention() on each CPU back end, in
 * GB/s of K and V bytes read (every selected block's K and V, once per call).
 *
 *   kvk-bench [n_blocks [block_tokens [dtype [seconds]]]]
 *
 * Defaults: 256 blocks of 16 tokens (4096 tokens), f16, 1 s per back end, in
 * a Llama-3-8B layer shape (8 kv heads, 32 query heads, head_dim 128).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

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

        if (argc > 2)
                s.block_tokens = (uint32_t)strtoul(argv[2], NULL, 10);
        if (argc > 3 && strcmp(argv[3], "bf16") == 0)
                s.dtype = KVK_BF16;
        bb = kvk_block_bytes(&s);
        if (!bb || n == 0) {
                fprintf(stderr, "usage: kvk-bench [n_blocks [block_tokens [f16|bf16 [seconds]]]]\n");
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
