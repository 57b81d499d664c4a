/* SPDX-License-Identifier: MIT */
/*
 * kvk-cuda-selftest: runs every CUDA kernel of kernels-cuda.h on random
 * blocks and compares it with the CPU kernel of kernels.h (exact for
 * summaries, top-k and copies, and for the merge's edge cases; relative L2
 * error, or ulp for the merge, for the rest), and every selection method's
 * summaries and scores (kvk_cuda_method_*) with kvk_method_summary() and
 * kvk_method_scores(). Exits 0 when all agree, 1 when one does not, 77
 * (skip) without a CUDA device (after the host-side argument checks, which
 * need none).
 */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels-cuda.h"

#define SKIP 77

static int failures;

#define CHECK(cond, ...)                                                \
        do {                                                            \
                if (!(cond)) {                                          \
                        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
                        fprintf(stderr, __VA_ARGS__);                   \
                        fputc('\n', stderr);                            \
                        failures++;                                     \
                }                                                       \
        } while (0)

#define CUDA_OK(call)                                                   \
        do {                                                            \
                cudaError_t e_ = (call);                                \
                if (e_ != cudaSuccess) {                                \
                        fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e_)); \
                        exit(1);                                        \
                }                                                       \
        } while (0)

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return (float)(rng >> 40) / (float)(1u << 23) - 1.0f;
}

static void *dev_copy(const void *src, size_t bytes)
{
        void *d;

        CUDA_OK(cudaMalloc(&d, bytes ? bytes : 1));
        if (bytes)
                CUDA_OK(cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice));
        return d;
}

static void host_copy(void *dst, const void *d, size_t bytes)
{
        CUDA_OK(cudaMemcpy(dst, d, bytes, cudaMemcpyDeviceToHost));
}

static double rel_l2(const float *a, const float *b, size_t n)
{
        double num = 0, den = 0;

        for (size_t i = 0; i < n; i++) {
                num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
                den += (double)b[i] * b[i];
        }
        return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void run_shape(const struct kvk_shape *s, uint32_t n)
{
        const size_t bb = kvk_block_bytes(s), sf = kvk_summary_floats(s);
        const size_t nq = (size_t)s->q_heads * s->head_dim;
        uint16_t *pool = malloc(bb * n);
        const void **blocks = malloc(n * sizeof(*blocks));
        void **dblocks = malloc(n * sizeof(*dblocks));
        uint32_t *valid = malloc(n * sizeof(*valid));
        float *q = malloc(nq * sizeof(float));
        float *sum = malloc(n * sf * sizeof(float)), *gsum = malloc(n * sf * sizeof(float));
        float *sc = malloc(n * sizeof(float)), *gsc = malloc(n * sizeof(float));
        uint32_t *idx = malloc(n * sizeof(uint32_t)), *gidx = malloc(n * sizeof(uint32_t));
        float *out = malloc(nq * sizeof(float)), *gout = malloc(nq * sizeof(float));
        float *lse = malloc(s->q_heads * sizeof(float)), *glse = malloc(s->q_heads * sizeof(float));
        float *mass = malloc(n * sizeof(float)), *gmass = malloc(n * sizeof(float));
        uint8_t *back = malloc(bb * n);
        size_t wsb = kvk_cuda_attention_workspace(s, n);
        uint8_t *dpool, *dstage;
        void **dptrs;
        uint32_t *dvalid, *didx;
        float *dq, *dsum, *dsc, *dout, *dlse, *dmass;
        void *dws;
        int r, k;

        if (!pool || !blocks || !dblocks || !valid || !q || !sum || !gsum || !sc || !gsc || !idx ||
            !gidx || !out || !gout || !lse || !glse || !mass || !gmass || !back) {
                fprintf(stderr, "out of memory\n");
                exit(1);
        }
        for (size_t i = 0; i < bb * n / 2; i++)
                pool[i] = s->dtype == KVK_F16 ? kvk_f32_to_f16(frand()) : kvk_f32_to_bf16(frand());
        for (size_t i = 0; i < nq; i++)
                q[i] = frand();
        dpool = dev_copy(pool, bb * n);
        for (uint32_t i = 0; i < n; i++) {
                blocks[i] = (const uint8_t *)pool + i * bb;
                dblocks[i] = dpool + i * bb;
                valid[i] = i + 1 == n ? 1 + s->block_tokens / 3 : s->block_tokens;
        }
        dptrs = dev_copy(dblocks, n * sizeof(*dblocks));
        dvalid = dev_copy(valid, n * sizeof(*valid));
        dq = dev_copy(q, nq * sizeof(float));
        CUDA_OK(cudaMalloc((void **)&dsum, n * sf * sizeof(float)));
        CUDA_OK(cudaMalloc((void **)&dsc, n * sizeof(float)));
        CUDA_OK(cudaMalloc((void **)&didx, n * sizeof(uint32_t)));
        CUDA_OK(cudaMalloc((void **)&dout, nq * sizeof(float)));
        CUDA_OK(cudaMalloc((void **)&dlse, s->q_heads * sizeof(float)));
        CUDA_OK(cudaMalloc((void **)&dmass, n * sizeof(float)));
        CUDA_OK(cudaMalloc(&dws, wsb));
        CUDA_OK(cudaMalloc((void **)&dstage, bb * n));

        /* Summaries: min/max of exactly converted values, so exact. */
        for (uint32_t i = 0; i < n; i++)
                CHECK(kvk_block_summary(s, blocks[i], valid[i], sum + i * sf) == 0, "summary");
        CHECK(kvk_cuda_block_summaries(s, (const void *const *)dptrs, dvalid, n, dsum, NULL) == 0,
              "cuda summaries");
        host_copy(gsum, dsum, n * sf * sizeof(float));
        CHECK(memcmp(sum, gsum, n * sf * sizeof(float)) == 0, "summaries differ");

        kvk_block_scores(s, q, sum, n, sc);
        CHECK(kvk_cuda_block_scores(s, dq, dsum, n, dsc, NULL) == 0, "cuda scores");
        host_copy(gsc, dsc, n * sizeof(float));
        CHECK(rel_l2(gsc, sc, n) < 1e-5, "scores rel err %g", rel_l2(gsc, sc, n));

        /* Top-k from the same scores (the CPU ones, uploaded), with ties. */
        for (uint32_t i = 0; i < n; i++)
                sc[i] = roundf(sc[i] * 4.0f) / 4.0f;
        CUDA_OK(cudaMemcpy(dsc, sc, n * sizeof(float), cudaMemcpyHostToDevice));
        for (uint32_t kk = 0; kk <= n; kk += 1 + n / 7) {
                uint32_t want = kvk_topk(sc, n, kk, 2, 3, idx);

                k = kvk_cuda_topk(dsc, n, kk, 2, 3, didx, NULL);
                CHECK(k == (int)want, "topk count %d != %u", k, want);
                if (k > 0) {
                        host_copy(gidx, didx, (size_t)k * sizeof(uint32_t));
                        CHECK(memcmp(idx, gidx, (size_t)k * sizeof(uint32_t)) == 0,
                              "topk k=%u differs", kk);
                }
        }

        r = kvk_decode_attention(s, q, blocks, valid, n, out, lse);
        CHECK(r == 0, "cpu attention %d", r);
        kvk_block_attention_mass(s, q, blocks, valid, n, mass);
        r = kvk_cuda_decode_attention(s, dq, (const void *const *)dptrs, dvalid, n, dws, wsb, dout,
                                      dlse, dmass, NULL);
        CHECK(r == 0, "cuda attention %d", r);
        host_copy(gout, dout, nq * sizeof(float));
        host_copy(glse, dlse, s->q_heads * sizeof(float));
        host_copy(gmass, dmass, n * sizeof(float));
        CHECK(rel_l2(gout, out, nq) < 1e-4, "attention rel err %g", rel_l2(gout, out, nq));
        CHECK(rel_l2(glse, lse, s->q_heads) < 1e-5, "lse rel err %g",
              rel_l2(glse, lse, s->q_heads));
        CHECK(rel_l2(gmass, mass, n) < 1e-4, "mass rel err %g", rel_l2(gmass, mass, n));

        /* Attention over the first third and the rest, merged on the device,
         * against the CPU's attention over all n. */
        if (n >= 2) {
                const uint32_t h1 = n / 3 ? n / 3 : 1;
                float *dout2, *dlse2;

                CUDA_OK(cudaMalloc((void **)&dout2, nq * sizeof(float)));
                CUDA_OK(cudaMalloc((void **)&dlse2, s->q_heads * sizeof(float)));
                r = kvk_cuda_decode_attention(s, dq, (const void *const *)dptrs, dvalid, h1, dws,
                                              wsb, dout, dlse, NULL, NULL);
                CHECK(r == 0, "cuda attention [0, %u): %d", h1, r);
                r = kvk_cuda_decode_attention(s, dq, (const void *const *)(dptrs + h1), dvalid + h1,
                                              n - h1, dws, wsb, dout2, dlse2, NULL, NULL);
                CHECK(r == 0, "cuda attention [%u, %u): %d", h1, n, r);
                r = kvk_cuda_lse_merge(s, dout, dlse, dout2, dlse2, NULL);
                CHECK(r == 0, "cuda merge %d", r);
                host_copy(gout, dout, nq * sizeof(float));
                host_copy(glse, dlse, s->q_heads * sizeof(float));
                CHECK(rel_l2(gout, out, nq) < 1e-4, "split attention merged: rel err %g",
                      rel_l2(gout, out, nq));
                CHECK(rel_l2(glse, lse, s->q_heads) < 1e-5, "split attention merged: lse rel err %g",
                      rel_l2(glse, lse, s->q_heads));
                cudaFree(dlse2);
                cudaFree(dout2);
        }

        /* Gather the blocks in reverse order, scatter them back in order. */
        for (uint32_t i = 0; i < n; i++)
                dblocks[i] = dpool + (size_t)(n - 1 - i) * bb;
        CUDA_OK(cudaMemcpy(dptrs, dblocks, n * sizeof(*dblocks), cudaMemcpyHostToDevice));
        CHECK(kvk_cuda_gather(dstage, (const void *const *)dptrs, n, bb, NULL) == 0, "gather");
        host_copy(back, dstage, bb * n);
        for (uint32_t i = 0; i < n; i++)
                CHECK(memcmp(back + i * bb, (uint8_t *)pool + (size_t)(n - 1 - i) * bb, bb) == 0,
                      "gather block %u", i);
        CUDA_OK(cudaMemset(dpool, 0, bb * n));
        CHECK(kvk_cuda_scatter(dptrs, dstage, n, bb, NULL) == 0, "scatter");
        host_copy(back, dpool, bb * n);
        CHECK(memcmp(back, pool, bb * n) == 0, "scatter");
        CUDA_OK(cudaDeviceSynchronize());

        printf("shape kv=%u q=%u d=%u T=%u %s n=%u: %s\n", s->kv_heads, s->q_heads, s->head_dim,
               s->block_tokens, s->dtype == KVK_F16 ? "f16" : "bf16", n,
               failures ? "FAILURES" : "ok");

        cudaFree(dstage);
        cudaFree(dws);
        cudaFree(dmass);
        cudaFree(dlse);
        cudaFree(dout);
        cudaFree(didx);
        cudaFree(dsc);
        cudaFree(dsum);
        cudaFree(dq);
        cudaFree(dvalid);
        cudaFree(dptrs);
        cudaFree(dpool);
        free(back);
        free(gmass);
        free(mass);
        free(glse);
        free(lse);
        free(gout);
        free(out);
        free(gidx);
        free(idx);
        free(gsc);
        free(sc);
        free(gsum);
        free(sum);
        free(q);
        free(valid);
        free(dblocks);
        free(blocks);
        free(pool);
}

static uint32_t bits(float f)
{
        uint32_t u;

        memcpy(&u, &f, sizeof(u));
        return u;
}

/*
 * kvk_cuda_lse_merge() against kvk_lse_merge() on random partials of q_heads
 * x head_dim with every edge case in some heads (lse -inf on one side or
 * both, NaN, +inf, far apart): the edge heads bit for bit (copies, A kept,
 * NaN), the others within 8 ulp of the scale of their terms (the device's
 * expf and log1pf round differently). Then the time of one merge at this
 * shape (informational: the median of 11 runs of 1000 launches).
 */
static void run_merge(uint32_t q_heads, uint32_t head_dim)
{
        const struct kvk_shape s = { .kv_heads = 1, .q_heads = q_heads, .head_dim = head_dim,
                                     .block_tokens = 16, .dtype = KVK_F16 };
        static const float edge[][2] = {
                { 1.5f, -INFINITY }, { NAN, -INFINITY }, { -INFINITY, 4.0f },
                { -INFINITY, -INFINITY }, { NAN, 2.0f }, { 2.0f, NAN }, { INFINITY, 2.0f },
                { 2.0f, INFINITY }, { -INFINITY, NAN }, { 0.0f, -200.0f }, { -150.0f, 50.0f },
        };
        const size_t ne = sizeof(edge) / sizeof(edge[0]), nq = (size_t)q_heads * head_dim;
        float *a = malloc(nq * sizeof(float)), *b = malloc(nq * sizeof(float));
        float *la = malloc(q_heads * sizeof(float)), *lb = malloc(q_heads * sizeof(float));
        float *ga = malloc(nq * sizeof(float)), *gla = malloc(q_heads * sizeof(float));
        float *scale = malloc(nq * sizeof(float));
        float *da, *db, *dla, *dlb;
        double t[11];
        int bad = 0;

        if (!a || !b || !la || !lb || !ga || !gla || !scale) {
                fprintf(stderr, "out of memory\n");
                exit(1);
        }
        for (size_t i = 0; i < nq; i++) {
                a[i] = frand();
                b[i] = frand();
                scale[i] = fabsf(a[i]) + fabsf(b[i]);
        }
        for (uint32_t h = 0; h < q_heads; h++) {
                la[h] = h < ne ? edge[h][0] : 30.0f * frand();
                lb[h] = h < ne ? edge[h][1] : la[h] + (h % 4 == 0 ? 0.0f : 20.0f * frand());
        }
        da = dev_copy(a, nq * sizeof(float));
        db = dev_copy(b, nq * sizeof(float));
        dla = dev_copy(la, q_heads * sizeof(float));
        dlb = dev_copy(lb, q_heads * sizeof(float));
        CHECK(kvk_cuda_lse_merge(&s, da, dla, db, dlb, NULL) == 0, "cuda merge");
        CHECK(kvk_cuda_lse_merge(&s, da, NULL, db, dlb, NULL) == -EINVAL, "cuda merge NULL");
        host_copy(ga, da, nq * sizeof(float));
        host_copy(gla, dla, q_heads * sizeof(float));
        CHECK(kvk_lse_merge(&s, a, la, b, lb) == 0, "cpu merge");
        for (uint32_t h = 0; h < q_heads && bad < 5; h++) {
                const bool exact = h < ne;
                bool ok = exact ? bits(gla[h]) == bits(la[h]) || (isnan(gla[h]) && isnan(la[h]))
                                : fabsf(gla[h] - la[h]) <= 8 * 0x1p-23f * fmaxf(1.0f, fabsf(la[h]));

                for (uint32_t i = 0; i < head_dim; i++) {
                        const size_t at = (size_t)h * head_dim + i;

                        if (exact)
                                ok = ok && (bits(ga[at]) == bits(a[at]) ||
                                            (isnan(ga[at]) && isnan(a[at])));
                        else
                                ok = ok && fabsf(ga[at] - a[at]) <= 8 * 0x1p-23f * scale[at];
                }
                if (!ok)
                        bad++;
                CHECK(ok, "merge %ux%u: head %u (lse %g, %g) differs: lse %g vs %g", q_heads,
                      head_dim, h, (double)(h < ne ? edge[h][0] : 0), (double)(h < ne ? edge[h][1] : 0),
                      (double)gla[h], (double)la[h]);
        }

        /* Time: the same merge over and over (finite lse, so every head blends). */
        for (uint32_t h = 0; h < q_heads; h++)
                la[h] = lb[h] = 1.0f;
        CUDA_OK(cudaMemcpy(dla, la, q_heads * sizeof(float), cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(dlb, lb, q_heads * sizeof(float), cudaMemcpyHostToDevice));
        for (int rep = 0; rep < 11; rep++) {
                cudaEvent_t e0, e1;
                float ms = 0;

                CUDA_OK(cudaEventCreate(&e0));
                CUDA_OK(cudaEventCreate(&e1));
                CUDA_OK(cudaEventRecord(e0, NULL));
                for (int i = 0; i < 1000; i++)
                        kvk_cuda_lse_merge(&s, da, dla, db, dlb, NULL);
                CUDA_OK(cudaEventRecord(e1, NULL));
                CUDA_OK(cudaEventSynchronize(e1));
                CUDA_OK(cudaEventElapsedTime(&ms, e0, e1));
                t[rep] = ms * 1e3;      /* ns per launch: ms * 1e6 / 1000 */
                cudaEventDestroy(e1);
                cudaEventDestroy(e0);
        }
        for (int i = 1; i < 11; i++)            /* insertion sort, 11 values */
                for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
                        double x = t[j];

                        t[j] = t[j - 1];
                        t[j - 1] = x;
                }
        printf("merge %ux%u: %s; %.0f ns per merge (median of 11 x 1000 launches, min %.0f)\n",
               q_heads, head_dim, bad ? "FAILURES" : "ok", t[5], t[0]);

        cudaFree(dlb);
        cudaFree(dla);
        cudaFree(db);
        cudaFree(da);
        free(scale);
        free(gla);
        free(ga);
        free(lb);
        free(la);
        free(b);
        free(a);
}

/* Row r of method m's summary holds a mean or a variance (computed in
 * double, so compared by rel L2), not a min, max, rmax or spike key (exact). */
static bool row_approx(enum kvk_method m, uint32_t r)
{
        return m == KVK_MEAN || m == KVK_GAUSS || (m == KVK_HYBRID && r >= 1);
}

/*
 * Every selection method on n random blocks of s (the last one partly valid,
 * block 1 empty when n > 2): kvk_cuda_method_summaries() against
 * kvk_method_summary() (min/max/rmax bit for bit, mean/var by rel L2; the
 * empty block all zeros), then kvk_cuda_method_scores() from the device's
 * summaries against kvk_method_scores() from the CPU's (rel L2; the masses
 * in [0, 1], summing to 1). Then again with query head 0 all NaN: that head
 * says nothing, the masses sum to (q_heads - 1) / q_heads. A RoPE-pair
 * method with an odd head_dim must be refused (-EINVAL) by both.
 */
static void run_select(const struct kvk_shape *s, uint32_t n)
{
        const size_t bb = kvk_block_bytes(s), nq = (size_t)s->q_heads * s->head_dim;
        const size_t smax = kvk_method_summary_floats(s, KVK_QUEST) / 2 * 5;    /* 5 rows */
        uint16_t *pool = malloc(bb * n);
        void **dblocks = malloc(n * sizeof(*dblocks));
        uint32_t *valid = malloc(n * sizeof(*valid));
        float *q = malloc(nq * sizeof(float)), *q0 = malloc(nq * sizeof(float));
        float *sum = malloc(n * smax * sizeof(float)), *gsum = malloc(n * smax * sizeof(float));
        float *sc = malloc(n * sizeof(float)), *gsc = malloc(n * sizeof(float));
        float *work = malloc((kvk_method_work_floats(s, KVK_HYBRID, n) + 1) * sizeof(float));  /* the most */
        uint8_t *dpool;
        void **dptrs, *dwork;
        uint32_t *dvalid;
        float *dq, *dsum, *dsc;
        const int failures0 = failures;

        if (!pool || !dblocks || !valid || !q || !q0 || !sum || !gsum || !sc || !gsc || !work) {
                fprintf(stderr, "out of memory\n");
                exit(1);
        }
        for (size_t i = 0; i < bb * n / 2; i++)
                pool[i] = s->dtype == KVK_F16 ? kvk_f32_to_f16(frand()) : kvk_f32_to_bf16(frand());
        /* Column 3 of every key shares a large offset (an outlier channel:
         * the variance must not cancel). */
        for (uint32_t i = 0; i < n; i++)
                for (uint32_t g = 0; g < s->kv_heads; g++)
                        for (uint32_t t = 0; t < s->block_tokens; t++) {
                                size_t at = i * bb / 2 + ((size_t)g * s->block_tokens + t) * s->head_dim + 3;
                                float x = 40.0f + 0.25f * frand();

                                pool[at] = s->dtype == KVK_F16 ? kvk_f32_to_f16(x) : kvk_f32_to_bf16(x);
                        }
        for (size_t i = 0; i < nq; i++)
                q0[i] = q[i] = frand();
        dpool = dev_copy(pool, bb * n);
        for (uint32_t i = 0; i < n; i++) {
                dblocks[i] = dpool + i * bb;
                valid[i] = i + 1 == n ? 1 + s->block_tokens / 3 : n > 2 && i == 1 ? 0 : s->block_tokens;
        }
        dptrs = dev_copy(dblocks, n * sizeof(*dblocks));
        dvalid = dev_copy(valid, n * sizeof(*valid));
        dq = dev_copy(q, nq * sizeof(float));
        CUDA_OK(cudaMalloc((void **)&dsum, n * smax * sizeof(float)));
        CUDA_OK(cudaMalloc((void **)&dsc, n * sizeof(float)));
        CUDA_OK(cudaMalloc(&dwork, kvk_cuda_method_work_bytes(s, KVK_MEAN, n) + 1));

        for (int mi = 0; mi < KVK_N_METHODS; mi++) {
                const enum kvk_method m = (enum kvk_method)mi;
                const size_t sf = kvk_method_summary_floats(s, m);
                const uint32_t rows = sf ? (uint32_t)(sf / ((size_t)s->kv_heads * s->head_dim)) : 0;
                const char *name = kvk_method_name(m);
                size_t exact_diff = 0;
                double num = 0, den = 0, total = 0;
                int r;

                if (!sf) {      /* odd head_dim, RoPE pairs */
                        r = kvk_cuda_method_summaries(s, m, (const void *const *)dptrs, dvalid, n, dsum, NULL);
                        CHECK(r == -EINVAL, "%s: cuda summaries with head_dim %u: %d", name, s->head_dim, r);
                        r = kvk_cuda_method_scores(s, m, dq, dsum, n, dwork, dsc, NULL);
                        CHECK(r == -EINVAL, "%s: cuda scores with head_dim %u: %d", name, s->head_dim, r);
                        CHECK(kvk_cuda_method_work_bytes(s, m, n) == 0, "%s: work bytes", name);
                        continue;
                }
                for (uint32_t i = 0; i < n; i++) {
                        if (valid[i] == 0)
                                memset(sum + i * sf, 0, sf * sizeof(float));
                        else
                                CHECK(kvk_method_summary(s, m, (const uint8_t *)pool + i * bb, valid[i],
                                                         sum + i * sf) == 0, "%s: summary", name);
                }
                r = kvk_cuda_method_summaries(s, m, (const void *const *)dptrs, dvalid, n, dsum, NULL);
                CHECK(r == 0, "%s: cuda summaries %d", name, r);
                host_copy(gsum, dsum, n * sf * sizeof(float));
                for (size_t i = 0; i < n * sf; i++) {
                        const uint32_t row = (uint32_t)(i / s->head_dim % rows);

                        if (row_approx(m, row)) {
                                num += ((double)gsum[i] - sum[i]) * ((double)gsum[i] - sum[i]);
                                den += (double)sum[i] * sum[i];
                        } else if (bits(gsum[i]) != bits(sum[i])) {
                                exact_diff++;
                        }
                }
                CHECK(exact_diff == 0, "%s: %zu min/max/rmax floats differ", name, exact_diff);
                CHECK(sqrt(num / (den > 0 ? den : 1)) < 1e-5, "%s: mean/var rel err %g", name,
                      sqrt(num / (den > 0 ? den : 1)));
                if (n > 2)
                        for (size_t i = 0; i < sf; i++)
                                CHECK(gsum[sf + i] == 0.0f, "%s: empty block's summary [%zu] = %g", name, i,
                                      (double)gsum[sf + i]);

                for (int nan_head = 0; nan_head < 2; nan_head++) {
                        if (nan_head) {
                                for (uint32_t i = 0; i < s->head_dim; i++)
                                        q[i] = NAN;
                                CUDA_OK(cudaMemcpy(dq, q, s->head_dim * sizeof(float), cudaMemcpyHostToDevice));
                        }
                        r = kvk_method_scores(s, m, q, sum, n, work, sc);
                        CHECK(r == 0, "%s: cpu scores %d", name, r);
                        CUDA_OK(cudaMemset(dsc, 0xff, n * sizeof(float)));      /* NaN: all written? */
                        r = kvk_cuda_method_scores(s, m, dq, dsum, n, dwork, dsc, NULL);
                        CHECK(r == 0, "%s: cuda scores %d", name, r);
                        host_copy(gsc, dsc, n * sizeof(float));
                        CHECK(rel_l2(gsc, sc, n) < 1e-5, "%s%s: scores rel err %g", name,
                              nan_head ? " (NaN head)" : "", rel_l2(gsc, sc, n));
                        if (m == KVK_QUEST)
                                continue;
                        total = 0;
                        for (uint32_t i = 0; i < n; i++) {
                                CHECK(gsc[i] >= 0.0f && gsc[i] <= 1.0f, "%s: mass[%u] = %g", name, i,
                                      (double)gsc[i]);
                                total += gsc[i];
                        }
                        CHECK(fabs(total - (nan_head ? (double)(s->q_heads - 1) / s->q_heads : 1.0)) < 1e-5,
                              "%s%s: masses sum to %.9g", name, nan_head ? " (NaN head)" : "", total);
                }
                memcpy(q, q0, nq * sizeof(float));      /* the query again, as it was */
                CUDA_OK(cudaMemcpy(dq, q, nq * sizeof(float), cudaMemcpyHostToDevice));
        }
        CUDA_OK(cudaDeviceSynchronize());
        printf("select kv=%u q=%u d=%u T=%u %s n=%u: %s\n", s->kv_heads, s->q_heads, s->head_dim,
               s->block_tokens, s->dtype == KVK_F16 ? "f16" : "bf16", n,
               failures > failures0 ? "FAILURES" : "ok");

        cudaFree(dwork);
        cudaFree(dsc);
        cudaFree(dsum);
        cudaFree(dq);
        cudaFree(dvalid);
        cudaFree(dptrs);
        cudaFree(dpool);
        free(work);
        free(gsc);
        free(sc);
        free(gsum);
        free(sum);
        free(q0);
        free(q);
        free(valid);
        free(dblocks);
        free(pool);
}

/* Arguments the selection twins must refuse on the host (no GPU needed:
 * nothing is enqueued, the pointers are never dereferenced). */
static void check_select_args(void)
{
        const struct kvk_shape s = { .kv_heads = 2, .q_heads = 4, .head_dim = 64, .block_tokens = 16,
                                     .dtype = KVK_F16 };
        const struct kvk_shape bad = { .kv_heads = 2, .q_heads = 3, .head_dim = 64, .block_tokens = 16,
                                       .dtype = KVK_F16 };
        const struct kvk_shape odd = { .kv_heads = 1, .q_heads = 1, .head_dim = 9, .block_tokens = 4,
                                       .dtype = KVK_BF16 };
        static float fake[64];
        const void *const *blocks = (const void *const *)(void *)fake;
        const uint32_t *valid = (const uint32_t *)(void *)fake;
        const enum kvk_method none = KVK_N_METHODS;

        CHECK(kvk_cuda_method_summaries(NULL, KVK_MEAN, blocks, valid, 1, fake, NULL) == -EINVAL, "NULL shape");
        CHECK(kvk_cuda_method_summaries(&bad, KVK_MEAN, blocks, valid, 1, fake, NULL) == -EINVAL, "bad shape");
        CHECK(kvk_cuda_method_summaries(&s, none, blocks, valid, 1, fake, NULL) == -EINVAL, "bad method");
        CHECK(kvk_cuda_method_summaries(&odd, KVK_ROPE_BOUND, blocks, valid, 1, fake, NULL) == -EINVAL,
              "odd head_dim, RoPE pairs");
        CHECK(kvk_cuda_method_summaries(&s, KVK_GAUSS, NULL, valid, 1, fake, NULL) == -EINVAL, "NULL blocks");
        CHECK(kvk_cuda_method_summaries(&s, KVK_GAUSS, blocks, NULL, 1, fake, NULL) == -EINVAL, "NULL valid");
        CHECK(kvk_cuda_method_summaries(&s, KVK_HYBRID, blocks, valid, 1, NULL, NULL) == -EINVAL, "NULL out");
        CHECK(kvk_cuda_method_summaries(&s, KVK_QUEST, blocks, valid, 1, NULL, NULL) == -EINVAL, "NULL out");
        CHECK(kvk_cuda_method_summaries(&s, KVK_MEAN, blocks, valid, 0, fake, NULL) == 0, "n = 0");

        CHECK(kvk_cuda_method_work_bytes(&s, KVK_QUEST, 10) == 0, "work bytes, quest");
        CHECK(kvk_cuda_method_work_bytes(&s, KVK_GAUSS, 10) == 12 * 4 * sizeof(float), "work bytes, gauss");
        CHECK(kvk_cuda_method_work_bytes(&s, none, 10) == 0, "work bytes, bad method");
        CHECK(kvk_cuda_method_work_bytes(&bad, KVK_GAUSS, 10) == 0, "work bytes, bad shape");
        CHECK(kvk_cuda_method_work_bytes(&odd, KVK_ROPE_BOUND, 10) == 0, "work bytes, odd head_dim");
        CHECK(kvk_cuda_method_work_bytes(&odd, KVK_HYBRID, 10) == 12 * sizeof(float), "work bytes, hybrid");

        CHECK(kvk_cuda_method_scores(NULL, KVK_MEAN, fake, fake, 1, fake, fake, NULL) == -EINVAL, "NULL shape");
        CHECK(kvk_cuda_method_scores(&bad, KVK_MEAN, fake, fake, 1, fake, fake, NULL) == -EINVAL, "bad shape");
        CHECK(kvk_cuda_method_scores(&s, none, fake, fake, 1, fake, fake, NULL) == -EINVAL, "bad method");
        CHECK(kvk_cuda_method_scores(&odd, KVK_ROPE_BOUND, fake, fake, 1, fake, fake, NULL) == -EINVAL,
              "odd head_dim, RoPE pairs");
        CHECK(kvk_cuda_method_scores(&s, KVK_MEAN, NULL, fake, 1, fake, fake, NULL) == -EINVAL, "NULL q");
        CHECK(kvk_cuda_method_scores(&s, KVK_MEAN, fake, NULL, 1, fake, fake, NULL) == -EINVAL, "NULL summaries");
        CHECK(kvk_cuda_method_scores(&s, KVK_MEAN, fake, fake, 1, NULL, fake, NULL) == -EINVAL, "NULL work");
        CHECK(kvk_cuda_method_scores(&s, KVK_MEAN, fake, fake, 1, fake, NULL, NULL) == -EINVAL, "NULL scores");
        CHECK(kvk_cuda_method_scores(&s, KVK_QUEST, fake, fake, 1, fake, NULL, NULL) == -EINVAL, "NULL scores");
        CHECK(kvk_cuda_method_scores(&s, KVK_MEAN, fake, fake, 0, NULL, fake, NULL) == 0, "n = 0, no work");
}

int main(void)
{
        const struct kvk_shape shapes[] = {
                { .kv_heads = 8, .q_heads = 32, .head_dim = 128, .block_tokens = 16,
                  .dtype = KVK_F16 },
                { .kv_heads = 2, .q_heads = 2, .head_dim = 64, .block_tokens = 200,
                  .dtype = KVK_BF16 },
                { .kv_heads = 1, .q_heads = 8, .head_dim = 500, .block_tokens = 7,
                  .dtype = KVK_F16 },
        };
        const uint32_t nblocks[] = { 300, 40, 3000 };
        /* GQA; head_dim not a multiple of 32 (groups of 3); an odd one (the
         * RoPE-pair methods refused); a wide one over many blocks. */
        const struct kvk_shape sel_shapes[] = {
                { .kv_heads = 8, .q_heads = 32, .head_dim = 128, .block_tokens = 16,
                  .dtype = KVK_F16 },
                { .kv_heads = 2, .q_heads = 6, .head_dim = 50, .block_tokens = 37,
                  .dtype = KVK_BF16 },
                { .kv_heads = 1, .q_heads = 8, .head_dim = 45, .block_tokens = 7,
                  .dtype = KVK_F16 },
                { .kv_heads = 4, .q_heads = 4, .head_dim = 500, .block_tokens = 3,
                  .dtype = KVK_BF16 },
        };
        const uint32_t sel_blocks[] = { 300, 40, 500, 2000 };
        int ndev = 0;

        /* Host-side argument checks first: they need no GPU. */
        check_select_args();
        if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
                if (failures)
                        return 1;
                printf("no CUDA device: skipped\n");
                return SKIP;
        }
        for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
                run_shape(&shapes[i], nblocks[i]);
        for (size_t i = 0; i < sizeof(sel_shapes) / sizeof(sel_shapes[0]); i++)
                run_select(&sel_shapes[i], sel_blocks[i]);
        run_merge(32, 128);
        run_merge(13, 9);
        run_merge(8192, 512);
        return failures ? 1 : 0;
}
